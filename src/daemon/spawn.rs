//! Starting the local ranks. What to run for a rank is a pure [`CommandSpec`], built from the job
//! and the variables the services give; [`spawn`] runs one, and [`spawn_ranks`] runs them all.

use super::binding::Binding;
use super::effect::Effect;
use super::fabric::Fabric;
use super::guard::Guard;
use super::pmi::Pmi;
use super::pmix::Pmix;
use super::ranks::Ranks;
use crate::job::JobView;
use crate::pmi::host::Prepared;
use crate::spec::{Interface, RankStatus};
use crate::wire::Msg;
use anyhow::Result;
use mio::Registry;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Environment changes, in order: `Some` sets, `None` unsets; of two changes to one name, the
/// later wins.
pub type EnvOps = Vec<(String, Option<String>)>;

/// Everything about one rank's process that can be decided without starting it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandSpec {
    pub program: String,
    pub args: Vec<String>,
    /// Changes to the daemon's own environment, applied in order.
    pub env: EnvOps,
    /// None: the daemon's own working directory.
    pub cwd: Option<String>,
    /// Whether the rank reads the front end's stdin (a pipe), or /dev/null.
    pub stdin: bool,
    /// The CPUs it is bound to before exec (None: it inherits the daemon's affinity).
    pub cpus: Option<Vec<u32>>,
}

impl CommandSpec {
    /// Local rank `li` of `job`: its program and context, the job's and its context's `-x`
    /// variables, the `RLAUNCH_*` set and `fabric_env`. PMI or PMIx come on top
    /// ([`CommandSpec::add_interface`]).
    pub fn for_rank(job: &JobView, li: usize, fabric_env: &[(String, String)]) -> CommandSpec {
        let launch = job.launch();
        let map = job.map();
        let local = job.local_ranks();
        let rank = local[li];
        let place = map.rank(rank);
        let app = &launch.apps[place.app as usize];
        let job_env = if app.without_job_env { &[][..] } else { &launch.env[..] };
        let mut env: EnvOps = job_env.iter().chain(app.env.iter()).cloned().collect();
        let own = [
            ("RLAUNCH_RANK", rank.to_string()),
            ("RLAUNCH_SIZE", map.size().to_string()),
            ("RLAUNCH_LOCAL_RANK", li.to_string()),
            ("RLAUNCH_LOCAL_SIZE", local.len().to_string()),
            ("RLAUNCH_NODE_RANK", job.node().unwrap_or_default().to_string()),
            ("RLAUNCH_NUM_NODES", launch.nodes.len().to_string()),
            ("RLAUNCH_JOBID", launch.job_id.clone()),
            ("RLAUNCH_APPNUM", place.app.to_string()),
        ];
        env.extend(own.into_iter().map(|(k, v)| (k.to_string(), Some(v))));
        env.extend(fabric_env.iter().map(|(k, v)| (k.clone(), Some(v.clone()))));
        CommandSpec {
            program: app.argv[0].clone(),
            args: app.argv[1..].to_vec(),
            env,
            cwd: (!app.cwd.is_empty()).then(|| app.cwd.clone()),
            stdin: launch.stdin.reaches(rank),
            cpus: None,
        }
    }

    /// Placement's part: the CPUs to bind to and the GPU variables, which come after the user's
    /// `-x` values (`--gpus-per-rank` is the more specific request), except the ones `gpu_env`
    /// leaves to the user.
    pub fn bind(&mut self, binding: &Binding, li: usize) {
        let env = binding.env(li, &|k| self.env.iter().any(|(n, v)| n == k && v.is_some()) || std::env::var_os(k).is_some());
        self.env.extend(env.into_iter().map(|(k, v)| (k, Some(v))));
        self.cpus = binding.cpus(li);
    }

    /// The interface's variables (`vars`, given the changes so far) and the removal of the
    /// inherited ones no rank of this interface may see (`scrub`), in the order that keeps both:
    /// PMI's set names only `PMI_*` and goes first; PMIx's goes last, since libpmix's variables
    /// include names the scrub removes.
    pub fn add_interface(&mut self, interface: Interface, scrub: &[String], vars: impl FnOnce(&[(String, Option<String>)]) -> Result<EnvOps>) -> Result<()> {
        let unset = scrub.iter().map(|k| (k.clone(), None));
        match interface {
            Interface::Pmi => {
                let v = vars(&self.env)?;
                self.env.extend(v);
                self.env.extend(unset);
            }
            Interface::Pmix => {
                self.env.extend(unset);
                let v = vars(&self.env)?;
                self.env.extend(v);
            }
        }
        Ok(())
    }
}

/// Starts one rank: its own session and process group, the parent-death signal, piped output.
/// `pmi`: the PMI socket end the rank inherits.
pub fn spawn(spec: &CommandSpec, pmi: Option<&Prepared>, cgroup: Option<std::ffi::CString>) -> std::io::Result<Child> {
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args);
    for (k, v) in &spec.env {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    // Variables of the daemon's own ssh session describe that login, not the job: only the
    // ones the job sets explicitly reach a rank.
    for (k, _) in std::env::vars_os() {
        let Some(k) = k.to_str() else { continue };
        if k.starts_with("SSH_") && !spec.env.iter().any(|(name, v)| name == k && v.is_some()) {
            cmd.env_remove(k);
        }
    }
    if let Some(d) = &spec.cwd {
        cmd.current_dir(d);
    }
    if let Some(pwd) = rank_pwd(spec.cwd.as_deref()) {
        cmd.env("PWD", pwd);
    }
    cmd.stdin(if spec.stdin { Stdio::piped() } else { Stdio::null() });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let daemon_pid = std::process::id() as libc::pid_t;
    let affinity = spec.cpus.as_deref().map(cpu_mask);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // Bound before exec, so the program's first thread and its allocations (first touch)
            // are already where they belong; MPI libraries need no binding of their own.
            if let Some(mask) = &affinity {
                let bytes = mask.len() * std::mem::size_of::<libc::c_ulong>();
                if libc::sched_setaffinity(0, bytes, mask.as_ptr().cast::<libc::cpu_set_t>()) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // Own process group: signals reach the rank and everything it starts, and the
            // terminal's ctrl-C goes to the front end only, which forwards it. Own session
            // too (which makes the group): with scheduler autogroups each session gets a
            // fair CPU share, and busy-polling MPI ranks left in the caller's session
            // share one slice with everything else there (MPI_Barrier ran 2.5x slower
            // than under Hydra, which does the same). setpgid is the fallback.
            if libc::setsid() == -1 {
                libc::setpgid(0, 0);
            }
            // Die with the daemon even if it is SIGKILLed.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if libc::getppid() != daemon_pid {
                libc::_exit(137);
            }
            if let Some(procs) = &cgroup {
                super::cgroup::JobCgroup::enter_from_child(procs);
            }
            Ok(())
        });
    }
    if let Some(p) = pmi {
        p.apply(&mut cmd);
    }
    cmd.spawn()
}

/// The kernel's CPU mask for `cpus` (an array of `unsigned long`), built before fork (nothing
/// allocates after it). As wide as the highest CPU needs (the kernel takes any length), so
/// machines with more than `CPU_SETSIZE` (1024) CPUs bind too.
fn cpu_mask(cpus: &[u32]) -> Vec<libc::c_ulong> {
    let bits = libc::c_ulong::BITS;
    let mut mask: Vec<libc::c_ulong> = vec![0; cpus.iter().max().map_or(1, |&m| (m / bits) as usize + 1)];
    for &c in cpus {
        mask[(c / bits) as usize] |= 1 << (c % bits);
    }
    mask
}

/// `PWD` for a rank started in `cwd` (None: the daemon's own directory): the directory itself, so
/// that it never names the ssh login directory. An inherited `PWD` naming the same directory (a
/// path through a symbolic link) is kept.
fn rank_pwd(cwd: Option<&str>) -> Option<String> {
    let here = std::env::current_dir().ok();
    let dir = match cwd {
        Some(d) if Path::new(d).is_absolute() => PathBuf::from(d),
        Some(d) => here?.join(d),
        None => {
            let here = here?;
            if let Some(inherited) = std::env::var_os("PWD") {
                if same_file(Path::new(&inherited), &here) {
                    return None;
                }
            }
            here
        }
    };
    Some(dir.to_string_lossy().into_owned())
}

/// Why `dir` cannot be a working directory here (errno), when it does not exist or is no directory.
fn missing_dir(dir: &str) -> Option<i32> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => None,
        Ok(_) => Some(libc::ENOTDIR),
        Err(e) => e.raw_os_error().filter(|&e| e == libc::ENOENT || e == libc::ENOTDIR),
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// What spawning the ranks uses of the daemon, for the length of the call.
pub struct Spawner<'a> {
    pub job: &'a JobView,
    pub registry: &'a Registry,
    pub ranks: &'a mut Ranks,
    pub guard: &'a mut Guard,
    pub pmi: &'a mut Pmi,
    pub pmix: &'a mut Pmix,
    pub fabric: &'a Fabric,
    /// Size of the launch frame, for `Started`.
    pub launch_bytes: u32,
    pub timeline: &'a mut crate::timeline::Recorder,
}

/// Spawns the local ranks (PMI or PMIx set up already), until one cannot be started or the job
/// is ending. Returns `Started`; an error means the node failed (and no `Started` goes up).
pub fn spawn_ranks(s: Spawner<'_>) -> Result<Vec<Effect>> {
    let Spawner { job, registry, ranks, guard, pmi, pmix, fabric, launch_bytes, timeline } = s;
    let node = job.node().unwrap_or_default();
    // One interface per job: PMIx ranks get no PMI socket or variables, and the reverse; any rank
    // loses what this daemon inherited of the interface it does not use.
    let interface = job.launch().pmi.interface;
    let inherited: Vec<String> = std::env::vars_os().filter_map(|(k, _)| k.into_string().ok()).collect();
    let scrub = crate::pmix::scrub(interface, inherited.iter().map(String::as_str));
    let mut pids = Vec::with_capacity(job.local_ranks().len());
    for file in fabric.files() {
        // The table and the topology outlive a SIGKILLed daemon otherwise (until a later job
        // sweeps them).
        guard.remove_at_end(node, file);
    }
    for (li, &rank) in job.local_ranks().iter().enumerate() {
        if ranks.stop_spawning() {
            break;
        }
        let mut spec = CommandSpec::for_rank(job, li, fabric.rank_env(li as u32));
        spec.bind(fabric.binding(), li);
        let mut pmi_end = None;
        spec.add_interface(interface, &scrub, |env| match interface {
            Interface::Pmi => Ok(pmi.prepare(rank, registry)?.map_or_else(Vec::new, |(vars, end)| {
                pmi_end = Some(end);
                vars
            })),
            Interface::Pmix => pmix.rank_env(job, rank, env, fabric.chosen()),
        })?;
        // A directory missing on this node is its fault, not the program's: say which.
        if let Some(errno) = spec.cwd.as_deref().and_then(missing_dir) {
            ranks.add_unstarted(rank, RankStatus::NoWorkdir(errno));
            continue;
        }
        let spawned = spawn(&spec, pmi_end.as_ref(), guard.job_cgroup(&job.launch().job_id, node));
        // The rank has its copy of the PMI socket end (or never will): close ours.
        drop(pmi_end);
        match spawned {
            Ok(mut child) => {
                timeline.spawned(rank, std::time::Instant::now());
                let pid = child.id();
                // Also from this side, so signals sent right after spawn find the group.
                // SAFETY: plain setpgid(2) on our own child.
                unsafe { libc::setpgid(pid as libc::pid_t, pid as libc::pid_t) };
                guard.watch(node, pid);
                ranks.add(rank, &mut child, registry)?;
                // The Child handle is dropped: reaping is done by pid.
                std::mem::forget(child);
                pids.push((rank, pid));
            }
            Err(e) => ranks.add_failed(rank, e.raw_os_error().unwrap_or(libc::ENOENT)),
        }
    }
    ranks.started(registry);
    Ok(vec![Effect::Up(Msg::Started { node, pids, launch_bytes })])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::fixture;
    use crate::spec::{AppContext, StdinTarget};

    fn set(k: &str, v: &str) -> (String, Option<String>) {
        (k.to_string(), Some(v.to_string()))
    }

    fn unset(k: &str) -> (String, Option<String>) {
        (k.to_string(), None)
    }

    /// Two nodes of two slots; context 0 (`a`, 3 ranks, in /work) and context 1 (`b x`, 1 rank).
    fn job(node: u32) -> JobView {
        let apps = vec![
            AppContext { argv: vec!["a".into()], env: vec![set("CTX", "0")], cwd: "/work".into(), np: Some(3), nodes: None, without_job_env: false },
            AppContext { argv: vec!["b".into(), "x".into()], env: vec![set("CTX", "1"), unset("GONE")], cwd: String::new(), np: Some(1), nodes: None, without_job_env: false },
        ];
        let mut launch = fixture::launch("rl-spawn", 2, 2, apps);
        launch.stdin = StdinTarget::Rank(3);
        launch.env = vec![set("JOB", "j"), set("CTX", "job")];
        fixture::view(launch, node)
    }

    #[test]
    fn a_context_without_the_job_environment_gets_only_its_own() {
        let mut j = job(1);
        let mut launch = j.launch().clone();
        launch.apps[1].without_job_env = true;
        j = fixture::view(launch, 1);
        let s = CommandSpec::for_rank(&j, 1, &[]);
        assert_eq!(s.env[..2], [set("CTX", "1"), unset("GONE")], "no JOB, no job-wide CTX");
        let s = CommandSpec::for_rank(&j, 0, &[]);
        assert_eq!(s.env[..3], [set("JOB", "j"), set("CTX", "job"), set("CTX", "0")], "context 0 keeps them");
    }

    #[test]
    fn a_rank_runs_its_context_with_the_job_variables_then_its_own() {
        let j = job(1);
        assert_eq!(j.local_ranks(), &[2, 3]);
        let fabric = vec![("RLAUNCH_FABRIC".to_string(), "tcp".to_string())];
        let s = CommandSpec::for_rank(&j, 1, &fabric);
        assert_eq!((s.program.as_str(), s.args.clone()), ("b", vec!["x".to_string()]));
        assert_eq!(s.cwd, None, "an empty cwd leaves the daemon's");
        assert!(s.stdin, "rank 3 reads stdin");
        assert_eq!(
            s.env,
            vec![
                set("JOB", "j"),
                set("CTX", "job"),
                set("CTX", "1"),
                unset("GONE"),
                set("RLAUNCH_RANK", "3"),
                set("RLAUNCH_SIZE", "4"),
                set("RLAUNCH_LOCAL_RANK", "1"),
                set("RLAUNCH_LOCAL_SIZE", "2"),
                set("RLAUNCH_NODE_RANK", "1"),
                set("RLAUNCH_NUM_NODES", "2"),
                set("RLAUNCH_JOBID", "rl-spawn"),
                set("RLAUNCH_APPNUM", "1"),
                set("RLAUNCH_FABRIC", "tcp"),
            ]
        );
        let first = CommandSpec::for_rank(&j, 0, &[]);
        assert_eq!((first.program.as_str(), first.cwd.as_deref(), first.stdin), ("a", Some("/work"), false));
    }

    #[test]
    fn cpu_masks_are_as_wide_as_the_highest_cpu() {
        assert_eq!(cpu_mask(&[0, 2]), [0b101]);
        let bits = libc::c_ulong::BITS;
        let m = cpu_mask(&[1, bits, 1030]);
        assert_eq!(m.len(), (1030 / bits) as usize + 1);
        assert_eq!(m[1], 1);
        assert_eq!(m[(1030 / bits) as usize], 1 << (1030 % bits));
    }

    #[test]
    fn a_missing_working_directory_is_found_before_spawning() {
        let dir = std::env::temp_dir();
        assert_eq!(missing_dir(dir.to_str().unwrap()), None);
        assert_eq!(missing_dir("/surely/not/here/rlaunch"), Some(libc::ENOENT));
        assert_eq!(missing_dir("/proc/self/status"), Some(libc::ENOTDIR));
        assert_eq!(rank_pwd(Some("/tmp")).as_deref(), Some("/tmp"), "PWD is the rank's directory");
    }

    #[test]
    fn pmi_goes_before_the_scrub_and_pmix_after_it() {
        let j = job(0);
        let scrub = vec!["PMIX_SERVER_URI".to_string()];
        let mut pmi = CommandSpec::for_rank(&j, 0, &[]);
        let base = pmi.env.len();
        pmi.add_interface(Interface::Pmi, &scrub, |_| Ok(vec![set("PMI_RANK", "0")])).unwrap();
        assert_eq!(pmi.env[base..], [set("PMI_RANK", "0"), unset("PMIX_SERVER_URI")]);
        let mut pmix = CommandSpec::for_rank(&j, 0, &[]);
        pmix.add_interface(Interface::Pmix, &scrub, |so_far| {
            assert_eq!(so_far.last(), Some(&unset("PMIX_SERVER_URI")), "the variables see the scrub");
            Ok(vec![set("PMIX_SERVER_URI", "new")])
        })
        .unwrap();
        assert_eq!(pmix.env[base..], [unset("PMIX_SERVER_URI"), set("PMIX_SERVER_URI", "new")]);
        let mut failing = CommandSpec::for_rank(&j, 0, &[]);
        assert!(failing.add_interface(Interface::Pmix, &scrub, |_| Err(anyhow::anyhow!("no"))).is_err());
    }
}
