//! Starting the local ranks. What to run for a rank is a pure [`CommandSpec`], built from the job
//! and the variables the services give; [`spawn`] runs one, and [`spawn_ranks`] runs them all.

use super::binding::Binding;
use super::effect::Effect;
use super::fabric::Fabric;
use super::guard::Guard;
use super::images::Images;
use super::pmi::Pmi;
use super::pmix::Pmix;
use super::ranks::Ranks;
use super::restart::Restarts;
use crate::job::JobView;
use crate::spec::{Interface, RankStatus};
use crate::wire::Msg;
use super::exec::{candidates, Exec, Failure, Launcher, Started};
use anyhow::{Context, Result};
use mio::Registry;
use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

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

/// The daemon's environment as every rank starts from it, built once per batch: `NAME=value`
/// entries by name, without the variables of the daemon's own ssh session (they describe that
/// login, not the job: only the ones the job sets explicitly reach a rank).
struct BaseEnv(Vec<(Vec<u8>, CString)>);

impl BaseEnv {
    fn of(vars: impl Iterator<Item = (std::ffi::OsString, std::ffi::OsString)>) -> BaseEnv {
        BaseEnv(
            vars.filter(|(k, _)| !k.as_bytes().starts_with(b"SSH_"))
                .filter_map(|(k, v)| {
                    let kv = [k.as_bytes(), b"=", v.as_bytes()].concat();
                    Some((k.into_vec(), CString::new(kv).ok()?))
                })
                .collect(),
        )
    }

    /// A rank's environment: the base with `ops` applied (of two changes to one name the later
    /// wins) and `PWD` last; and its `PATH` (for the program's search).
    fn with(&self, ops: &EnvOps, pwd: Option<&str>) -> (RankEnv, Option<Vec<u8>>) {
        let mut last: HashMap<&[u8], Option<&str>> = HashMap::with_capacity(ops.len() + 1);
        for (k, v) in ops {
            last.insert(k.as_bytes(), v.as_deref());
        }
        if let Some(p) = pwd {
            last.insert(b"PWD", Some(p));
        }
        let mut ptrs = Vec::with_capacity(self.0.len() + last.len() + 1);
        let mut path = None;
        for (k, kv) in &self.0 {
            if !last.contains_key(k.as_slice()) {
                if k == b"PATH" {
                    path = Some(kv.as_bytes()[5..].to_vec());
                }
                ptrs.push(kv.as_ptr());
            }
        }
        let mut own = Vec::with_capacity(last.len());
        // In the order of each name's first change, with its last value.
        for k in ops.iter().map(|(k, _)| k.as_str()).chain(pwd.map(|_| "PWD")) {
            if let Some(Some(v)) = last.remove(k.as_bytes()) {
                if k == "PATH" {
                    path = Some(v.as_bytes().to_vec());
                }
                // A NUL cannot come from a command line or an environment.
                if let Ok(c) = CString::new(format!("{k}={v}")) {
                    own.push(c);
                }
            }
        }
        ptrs.extend(own.iter().map(|c| c.as_ptr()));
        ptrs.push(std::ptr::null());
        (RankEnv { _own: own, ptrs }, path)
    }
}

/// `envp` for one rank: pointers into the [`BaseEnv`] and into its own entries.
struct RankEnv {
    _own: Vec<CString>,
    ptrs: Vec<*const libc::c_char>,
}

/// A program and the `PATH` it is searched in (None: unset).
type SearchKey = (String, Option<Vec<u8>>);

/// What a batch of starts computes once, not per rank: the base environment, the program's
/// search, `PWD`, the launcher (stack, /dev/null, signal set).
struct Batch {
    base: BaseEnv,
    launcher: Launcher,
    /// The paths to try for the last program searched.
    search: Option<(SearchKey, Vec<CString>)>,
    /// cwd → PWD, for the last directory.
    pwd: Option<(Option<String>, Option<String>)>,
}

impl Batch {
    fn new() -> std::io::Result<Batch> {
        Ok(Batch { base: BaseEnv::of(std::env::vars_os()), launcher: Launcher::new()?, search: None, pwd: None })
    }

    /// Starts one rank. `keep_fds`: the PMI and image socket ends the rank inherits.
    fn start(&mut self, spec: &CommandSpec, keep_fds: [Option<RawFd>; 2], cgroup: Option<&CStr>) -> Result<Started, Failure> {
        if self.pwd.as_ref().map_or(true, |(c, _)| *c != spec.cwd) {
            self.pwd = Some((spec.cwd.clone(), rank_pwd(spec.cwd.as_deref())));
        }
        let pwd = self.pwd.as_ref().and_then(|(_, p)| p.as_deref());
        let (env, path) = self.base.with(&spec.env, pwd);
        let key = (spec.program.clone(), path);
        if self.search.as_ref().map_or(true, |(k, _)| *k != key) {
            let c = candidates(&spec.program, key.1.as_deref());
            self.search = Some((key, c));
        }
        let candidates = self.search.as_ref().map_or(&[][..], |(_, c)| &c[..]);
        let argv: Vec<CString> = std::iter::once(&spec.program).chain(&spec.args).filter_map(|a| CString::new(a.as_str()).ok()).collect();
        let argv_p: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).chain([std::ptr::null()]).collect();
        let cwd = spec.cwd.as_deref().and_then(|d| CString::new(d).ok());
        let mask = spec.cpus.as_deref().map(cpu_mask);
        self.launcher.start(&Exec {
            candidates,
            argv: &argv_p,
            envp: &env.ptrs,
            cwd: cwd.as_deref(),
            stdin: spec.stdin,
            mask: mask.as_deref(),
            cgroup_procs: cgroup,
            keep_fds,
        })
    }
}

/// The kernel's CPU mask for `cpus` (an array of `unsigned long`), built before clone (nothing
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

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// What spawning the ranks uses of the daemon, for the length of the call.
pub struct Spawner<'a> {
    /// Only these local ranks (a rank-scope restart); None: all of them.
    pub only: Option<Vec<u32>>,
    /// Each rank's `RLAUNCH_RESTARTS` and `RLAUNCH_GENERATION`.
    pub restarts: &'a Restarts,
    pub job: &'a JobView,
    pub registry: &'a Registry,
    pub ranks: &'a mut Ranks,
    pub guard: &'a mut Guard,
    pub pmi: &'a mut Pmi,
    pub pmix: &'a mut Pmix,
    pub images: &'a mut Images,
    pub fabric: &'a Fabric,
    /// Size of the launch frame, for `Started`.
    pub launch_bytes: u32,
    pub timeline: &'a mut crate::timeline::Recorder,
}

/// Spawns the local ranks (PMI or PMIx set up already), until one cannot be started or the job
/// is ending. Returns `Started`; an error means the node failed (and no `Started` goes up).
pub fn spawn_ranks(s: Spawner<'_>) -> Result<Vec<Effect>> {
    let Spawner { only, restarts, job, registry, ranks, guard, pmi, pmix, images, fabric, launch_bytes, timeline } = s;
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
        guard.remove_at_end(file);
    }
    let mut batch = Batch::new().with_context(|| format!("preparing to start the ranks on node {node}"))?;
    for (li, &rank) in job.local_ranks().iter().enumerate() {
        if ranks.stop_spawning() {
            break;
        }
        if only.as_ref().is_some_and(|o| !o.contains(&rank)) {
            continue;
        }
        let mut spec = CommandSpec::for_rank(job, li, fabric.rank_env(li as u32));
        spec.env.extend(restarts.env(rank));
        spec.bind(fabric.binding(), li);
        let mut pmi_end = None;
        spec.add_interface(interface, &scrub, |env| match interface {
            Interface::Pmi => Ok(pmi.prepare(rank, registry)?.map_or_else(Vec::new, |(vars, end)| {
                pmi_end = Some(end);
                vars
            })),
            Interface::Pmix => pmix.rank_env(job, rank, env, fabric.chosen()),
        })?;
        // Made here, per start, so that a restarted rank gets a fresh one.
        let image_end = images.prepare(job, rank, registry).with_context(|| format!("creating the image socket of rank {rank} on node {node}"))?;
        spec.env.push((rlaunch_image::client::FD_VAR.to_string(), Some(image_end.as_raw_fd().to_string())));
        let cgroup = guard.job_cgroup(&job.launch().job_id, node);
        let started = batch.start(&spec, [pmi_end.as_ref().and_then(|p| p.child_fd()), Some(image_end.as_raw_fd())], cgroup.as_deref());
        // The rank has its copies of the PMI and image socket ends (or never will): close ours.
        drop((pmi_end, image_end));
        match started {
            Ok(child) => {
                timeline.spawned(rank, std::time::Instant::now());
                let pid = child.pid;
                guard.watch(pid);
                ranks.add(rank, child, registry)?;
                pids.push((rank, pid));
            }
            // A directory missing on this node is its fault, not the program's: say which.
            Err(Failure::Workdir(errno)) if errno == libc::ENOENT || errno == libc::ENOTDIR => ranks.add_unstarted(rank, RankStatus::NoWorkdir(errno)),
            Err(Failure::Workdir(errno) | Failure::Start(errno)) => ranks.add_failed(rank, errno),
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
    fn pwd_is_the_ranks_directory() {
        assert_eq!(rank_pwd(Some("/tmp")).as_deref(), Some("/tmp"));
    }

    fn env_of(base: &BaseEnv, ops: &EnvOps, pwd: Option<&str>) -> (Vec<String>, Option<String>) {
        let (env, path) = base.with(ops, pwd);
        let vars = env.ptrs.iter().take_while(|p| !p.is_null()).map(|&p| unsafe { CStr::from_ptr(p) }.to_str().unwrap().to_string()).collect();
        (vars, path.map(|p| String::from_utf8(p).unwrap()))
    }

    #[test]
    fn a_ranks_environment_is_the_daemons_with_the_later_change_winning() {
        let vars = [("PATH", "/d"), ("KEEP", "k"), ("SSH_CONNECTION", "x"), ("GONE", "g"), ("OVER", "o")];
        let base = BaseEnv::of(vars.iter().map(|(k, v)| (k.into(), v.into())));
        let ops = vec![set("OVER", "1"), unset("GONE"), set("NEW", "n"), set("OVER", "2"), set("SSH_AUTH_SOCK", "job's")];
        let (env, path) = env_of(&base, &ops, Some("/w"));
        assert_eq!(env, ["PATH=/d", "KEEP=k", "OVER=2", "NEW=n", "SSH_AUTH_SOCK=job's", "PWD=/w"], "no ssh session variable but the job's");
        assert_eq!(path.as_deref(), Some("/d"));
        let (env, path) = env_of(&base, &vec![set("PATH", "/mine"), set("PWD", "/user")], None);
        assert_eq!(env, ["KEEP=k", "GONE=g", "OVER=o", "PATH=/mine", "PWD=/user"]);
        assert_eq!(path.as_deref(), Some("/mine"), "the program is searched in the rank's PATH");
        assert_eq!(env_of(&base, &vec![unset("PATH")], None).1, None);
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
