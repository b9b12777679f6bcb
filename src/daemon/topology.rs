//! The node's hardware topology for its ranks: the daemon exports it once as hwloc XML
//! ([`fabrics::hwloc`]) and each rank gets `HWLOC_XMLFILE` (that file) and `HWLOC_THISSYSTEM=1`
//! (the file is this very machine: binding still works), so that hwloc in every rank (MPICH's
//! MPI_Init, any hwloc user) reads one small file instead of walking sysfs and its plugins. At
//! 64 MPICH ranks on 2 cores that was most of the ranks' system time.
//!
//! Only MPICH programs get it (as `--mpi auto` detects them; Open MPI takes the topology libpmix
//! shares instead), two or more on the node: a single rank
//! gains nothing (its one discovery against the daemon's), and for anything else (`/bin/true`)
//! the export in the daemon was pure cost: 256 `/bin/true` took 13% longer with it. A user who
//! set any `HWLOC_*` variable (environment or `-x`) configures hwloc and gets neither variable.
//! The export runs in a thread from the launch message on, while the fabric exchange and the PMI
//! set-up go on; the ranks start once it is written.

use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use fabrics::hwloc::{export_xml, ExportError, LIBHWLOC};

use crate::job::JobView;
use crate::pmix::Detected;

/// Which local ranks get the exported topology, by local rank: those whose user set no
/// `HWLOC_*` variable and whose program reads it (`mpi(app)`, by context: [`reads_topology`]),
/// when there are two or more ranks here.
pub fn wanted(job: &JobView, inherited: &dyn Fn(&str) -> bool, mpi: &mut dyn FnMut(u32) -> bool) -> Vec<bool> {
    let users = crate::fabric::user_sets(job, "HWLOC_", inherited);
    let several = users.len() >= 2;
    users.into_iter().zip(job.local_ranks()).map(|(set, &r)| several && !set && mpi(job.map().rank(r).app)).collect()
}

/// The MPI library context `app`'s program links, as `--mpi auto` reads it (ELF `DT_NEEDED`,
/// found through the ranks' PATH from their working directory).
pub fn program_mpi(job: &JobView, app: u32) -> Detected {
    let launch = job.launch();
    let a = &launch.apps[app as usize];
    let job_env = if a.without_job_env { &[][..] } else { &launch.env[..] };
    // The context's own -x comes last and wins, as it does for the rank.
    let path = match a.env.iter().rev().chain(job_env.iter().rev()).find(|(n, _)| n == "PATH") {
        Some((_, v)) => v.clone(),
        None => std::env::var("PATH").ok(),
    };
    let cwd = if a.cwd.is_empty() { std::env::current_dir().unwrap_or_default() } else { PathBuf::from(&a.cwd) };
    let Some(program) = a.argv.first() else { return Detected::Unknown("no program".into()) };
    match crate::pmix::resolve_program(program, &cwd, path.as_deref()) {
        Some(p) => crate::pmix::detect_file(&p),
        None => Detected::Unknown(format!("'{program}' is not in PATH")),
    }
}

/// Whether a program of that MPI gets the topology: MPICH and its ABI kin load hwloc in
/// MPI_Init. Open MPI adopts the topology libpmix shares (`daemon::pmix`), which leaves the file
/// unread.
pub fn reads_topology(d: &Detected) -> bool {
    matches!(d, Detected::Mpich(_))
}

/// The file of node `node` of job `job_id` in `dir` (next to its endpoint table).
pub fn xml_path(dir: &Path, job_id: &str, node: u32) -> PathBuf {
    dir.join(format!("rlaunch-{job_id}-{node}.xml"))
}

enum State {
    Idle,
    Exporting(JoinHandle<Result<Vec<u8>, ExportError>>),
    /// Written and claimed (see [`crate::claim`]): removed when this goes.
    Written { path: PathBuf, _lock: std::fs::File },
    /// Not wanted, or the export failed: the ranks discover for themselves.
    Done,
}

pub struct TopologyExport {
    state: State,
}

impl Default for TopologyExport {
    fn default() -> Self {
        TopologyExport { state: State::Idle }
    }
}

impl TopologyExport {
    /// Starts the export in the background (once).
    pub fn start(&mut self) {
        if matches!(self.state, State::Idle) {
            let t = std::thread::Builder::new().name("hwloc-export".into()).spawn(|| export_xml(LIBHWLOC));
            self.state = t.map_or(State::Done, State::Exporting);
        }
    }

    /// The ranks are about to start: waits for the export and writes it to `path` when a rank
    /// gets it (`any`). A failure is `Err(why)` and leaves the ranks without the variables.
    pub fn finish(&mut self, any: bool, path: PathBuf) -> Result<(), String> {
        let state = std::mem::replace(&mut self.state, State::Done);
        let handle = match state {
            State::Exporting(h) if any => h,
            // Not wanted: the thread is left to end on its own; nothing waits for it.
            State::Exporting(_) | State::Idle | State::Done => return Ok(()),
            w @ State::Written { .. } => {
                self.state = w;
                return Ok(());
            }
        };
        let xml = match handle.join() {
            Ok(Ok(xml)) => xml,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("the hwloc export thread panicked".into()),
        };
        write_private(&path, &xml).map_err(|e| format!("writing {}: {e}", path.display()))?;
        match crate::claim::hold(&path) {
            Ok(lock) => {
                self.state = State::Written { path, _lock: lock };
                Ok(())
            }
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(format!("locking {}: {e}", path.display()))
            }
        }
    }

    /// The written file, for the guard and the ranks' variables.
    pub fn path(&self) -> Option<&Path> {
        match &self.state {
            State::Written { path, .. } => Some(path),
            _ => None,
        }
    }

    /// The variables a rank that gets the topology gets.
    pub fn env(&self) -> Vec<(String, String)> {
        self.path().map_or_else(Vec::new, |p| {
            vec![("HWLOC_XMLFILE".into(), p.to_string_lossy().into_owned()), ("HWLOC_THISSYSTEM".into(), "1".into())]
        })
    }
}

impl Drop for TopologyExport {
    fn drop(&mut self) {
        if let Some(p) = self.path() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Written whole under a temporary name, then renamed: a rank never reads half a file.
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension(format!("xml.tmp.{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    let written = f.write_all(data).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::fixture;
    use crate::spec::AppContext;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("rlaunch-topology-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn app(np: u32, env: &[(&str, &str)]) -> AppContext {
        let env = env.iter().map(|(k, v)| (k.to_string(), Some(v.to_string()))).collect();
        AppContext { argv: vec!["a".into()], env, cwd: "/".into(), np: Some(np), nodes: None, without_job_env: false }
    }

    fn all_mpi(_: u32) -> bool {
        true
    }

    #[test]
    fn every_local_rank_gets_it_unless_its_user_configures_hwloc() {
        let none = |_: &str| false;
        let job = fixture::view(fixture::launch("j", 1, 4, vec![app(4, &[])]), 0);
        assert_eq!(wanted(&job, &none, &mut all_mpi), vec![true; 4]);
        // A user's own HWLOC_ setting wins: in the daemon's environment, -x, or the job's copy.
        assert_eq!(wanted(&job, &|p| p == "HWLOC_", &mut all_mpi), vec![false; 4]);
        let job = fixture::view(fixture::launch("j", 1, 4, vec![app(2, &[("HWLOC_XMLFILE", "/mine.xml")]), app(2, &[])]), 0);
        assert_eq!(wanted(&job, &none, &mut all_mpi), vec![false, false, true, true]);
        let mut l = fixture::launch("j", 1, 4, vec![app(4, &[])]);
        l.env.push(("HWLOC_COMPONENTS".into(), Some("linux".into())));
        assert_eq!(wanted(&fixture::view(l, 0), &none, &mut all_mpi), vec![false; 4]);
    }

    #[test]
    fn a_single_local_rank_or_a_program_without_mpi_gets_nothing() {
        let none = |_: &str| false;
        let job = fixture::view(fixture::launch("j", 2, 1, vec![app(2, &[])]), 1);
        assert_eq!(wanted(&job, &none, &mut all_mpi), vec![false]);
        let job = fixture::view(fixture::launch("j", 1, 4, vec![app(2, &[]), app(2, &[])]), 0);
        assert_eq!(wanted(&job, &none, &mut |app| app == 1), vec![false, false, true, true]);
    }

    #[test]
    fn only_hwloc_names_count() {
        let job = fixture::view(fixture::launch("j", 1, 2, vec![app(2, &[("HWLOCX", "1"), ("UCX_TLS", "tcp")])]), 0);
        assert_eq!(wanted(&job, &|_: &str| false, &mut all_mpi), vec![true, true]);
    }

    #[test]
    fn programs_are_read_as_mpi_auto_reads_them() {
        let mut a = app(2, &[]);
        a.argv = vec!["true".into()];
        let job = fixture::view(fixture::launch("j", 1, 2, vec![a]), 0);
        assert!(matches!(program_mpi(&job, 0), Detected::Unknown(_)), "/bin/true links no MPI library");
        let mut a = app(2, &[]);
        a.argv = vec!["/nonexistent/prog".into()];
        let job = fixture::view(fixture::launch("j", 1, 2, vec![a]), 0);
        assert!(matches!(program_mpi(&job, 0), Detected::Unknown(_)), "an unreadable program is no MPI program");
        // A context's -x PATH is where its program is looked for.
        let mut a = app(2, &[("PATH", "/nonexistent")]);
        a.argv = vec!["true".into()];
        let job = fixture::view(fixture::launch("j", 1, 2, vec![a]), 0);
        assert_eq!(program_mpi(&job, 0), Detected::Unknown("'true' is not in PATH".into()));
        assert!(reads_topology(&Detected::Mpich("libmpich.so.12".into())));
        assert!(!reads_topology(&Detected::OpenMpi("libmpi.so.40".into())));
    }

    #[test]
    fn written_once_whole_private_and_removed_when_dropped() {
        let dir = scratch("written");
        let path = xml_path(&dir, "j1", 3);
        assert!(path.ends_with("rlaunch-j1-3.xml"));
        let mut t = TopologyExport { state: State::Exporting(std::thread::spawn(|| Ok(b"<topology/>".to_vec()))) };
        t.finish(true, path.clone()).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"<topology/>");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(t.env(), vec![("HWLOC_XMLFILE".to_string(), path.to_string_lossy().into_owned()), ("HWLOC_THISSYSTEM".to_string(), "1".to_string())]);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "no temporary left");
        t.finish(true, dir.join("other.xml")).unwrap();
        assert_eq!(t.path(), Some(path.as_path()), "a second finish changes nothing");
        drop(t);
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn unwanted_or_failed_exports_give_no_file_and_no_variables() {
        let dir = scratch("unwanted");
        let path = xml_path(&dir, "j2", 0);
        let mut t = TopologyExport { state: State::Exporting(std::thread::spawn(|| Ok(b"x".to_vec()))) };
        t.finish(false, path.clone()).unwrap();
        assert!(t.env().is_empty() && !path.exists());
        let failed = || Err(ExportError::Call { lib: "libhwloc.so.15".into(), call: "hwloc_topology_load" });
        let mut t = TopologyExport { state: State::Exporting(std::thread::spawn(failed)) };
        let e = t.finish(true, path.clone()).unwrap_err();
        assert!(e.contains("hwloc_topology_load"), "{e}");
        assert!(t.env().is_empty() && !path.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
