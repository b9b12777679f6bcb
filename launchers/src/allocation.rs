//! Where a job's nodes come from and how its daemons start, decided in one place: [`allocate`]
//! takes what the command line asked for ([`AllocationRequest`]) and the environment (a lookup
//! closure, as [`crate::slurm::detect_slurm`] takes) and returns the nodes, the [`Starter`] and the
//! map policy ([`AllocationPlan`]).
//!
//! The rules, in order: a node list comes from `--hostfile` or `--host` (not both); inside a
//! Slurm, PBS, Grid Engine or LSF job the allocation supplies the nodes, and a node list given by
//! hand must be a subset of it; the launcher is the one asked for, else an agent if
//! `--launch-agent` is given, else the resource manager's, else ssh with a node list, else local;
//! with no node list at all the job runs on one implicit local node whose slots are its CPUs.
//!
//! I/O: reads the hostfile and the PBS, Grid Engine and LSF host files, looks for `qrsh` and
//! `blaunch` in the `PATH` directories, and reads this machine's name and CPU count. Every message
//! is one line naming the flag, file or node at fault.

use crate::map::{MapBy, MapPolicy, RankBy};
use crate::nodes::{local_hostname, parse_host_list, parse_hostfile, Node, NodeListError};
use crate::batch::{detect_grid_engine, detect_lsf};
use crate::pbs::detect_pbs;
use crate::slurm::{detect_slurm, SlurmError};
use crate::start::batch::{self, BatchSystem};
use crate::start::{GroupStarter, NodeStarter, SshOptions, Starter};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// `--launcher`: how daemons start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LauncherKind {
    /// Every daemon on this machine, whatever the node names.
    Local,
    /// In-process ssh.
    Ssh,
    /// `--launch-agent`.
    Agent,
    /// One srun step inside a Slurm allocation.
    Slurm,
    /// Inside a PBS job: nodes from `PBS_NODEFILE`, daemons over ssh.
    Pbs,
    /// Inside a Grid Engine job: nodes from `PE_HOSTFILE`, daemons through `qrsh -inherit` where
    /// `qrsh` is on `PATH`, else over ssh.
    Sge,
    /// Inside an LSF job: nodes from `LSB_DJOB_HOSTFILE` or `LSB_MCPU_HOSTS`, daemons through
    /// `blaunch` where it is on `PATH`, else over ssh.
    Lsf,
}

impl LauncherKind {
    pub const ALL: [LauncherKind; 7] =
        [LauncherKind::Local, LauncherKind::Ssh, LauncherKind::Agent, LauncherKind::Slurm, LauncherKind::Pbs, LauncherKind::Sge, LauncherKind::Lsf];

    pub fn name(self) -> &'static str {
        match self {
            LauncherKind::Local => "local",
            LauncherKind::Ssh => "ssh",
            LauncherKind::Agent => "agent",
            LauncherKind::Slurm => "slurm",
            LauncherKind::Pbs => "pbs",
            LauncherKind::Sge => "sge",
            LauncherKind::Lsf => "lsf",
        }
    }
}

impl fmt::Display for LauncherKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A `--launcher` value that names no launcher; `Display` is the reason, without the flag.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("expected local, ssh, agent, slurm, pbs, sge or lsf")]
pub struct UnknownLauncher;

impl FromStr for LauncherKind {
    type Err = UnknownLauncher;
    fn from_str(s: &str) -> Result<Self, UnknownLauncher> {
        LauncherKind::ALL.into_iter().find(|k| k.name() == s).ok_or(UnknownLauncher)
    }
}

/// What the command line says about nodes, launchers and placement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllocationRequest {
    pub hostfile: Option<PathBuf>,
    /// `--host h1:2,h2`.
    pub host: Option<String>,
    pub launcher: Option<LauncherKind>,
    /// `--launch-agent "CMD ARGS"`, split at whitespace.
    pub launch_agent: Option<String>,
    pub map_by: MapBy,
    /// `None`: node with `--map-by node` (as in Open MPI), slot otherwise.
    pub rank_by: Option<RankBy>,
    /// `--ppn N`, the same as `--map-by ppr:N:node`, and winning over it.
    pub ppn: Option<u32>,
    pub oversubscribe: bool,
    /// Open MPI's `--nooversubscribe`: also the implicit local node refuses more ranks than CPUs.
    pub no_oversubscribe: bool,
    pub ssh_port: Option<u16>,
    /// Also means that only this key is tried (`IdentitiesOnly yes`).
    pub ssh_identity: Option<PathBuf>,
    pub ssh_known_hosts: Option<PathBuf>,
    /// `--launch-timeout`; it also bounds each blocking ssh step.
    pub launch_timeout: Duration,
    /// Where a relative `--launch-agent` path is taken from.
    pub cwd: PathBuf,
}

/// Where the ranks run and how daemons get there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllocationPlan {
    pub nodes: Vec<Node>,
    pub starter: Starter,
    pub policy: MapPolicy,
    /// Every daemon runs on this machine (the local launcher).
    pub local: bool,
}

/// The longest one blocking ssh step may take, however long `--launch-timeout` is.
const SSH_STEP_LIMIT: Duration = Duration::from_secs(30);

/// Why no plan could be made. Every one is a usage error: the command line or the job
/// environment must change.
#[derive(Debug, thiserror::Error)]
pub enum AllocationError {
    #[error("--ppn 0: the number of ranks per node must be at least 1")]
    ZeroPpn,
    #[error("--hostfile and --host cannot be combined; use one of them")]
    HostfileAndHost,
    #[error("--hostfile {path}: {source}")]
    Hostfile { path: String, source: std::io::Error },
    #[error(transparent)]
    NodeList(#[from] NodeListError),
    #[error("--launch-agent: empty command")]
    EmptyAgent,
    #[error("reading the Slurm allocation: {0}")]
    Slurm(SlurmError),
    #[error("reading the PBS allocation: {0}")]
    Pbs(NodeListError),
    #[error("reading the Grid Engine or LSF allocation: {0}")]
    Batch(NodeListError),
    #[error("--launcher agent needs --launch-agent CMD")]
    AgentNeedsCommand,
    #[error("--launch-agent cannot be combined with --launcher {0}")]
    AgentWithLauncher(LauncherKind),
    #[error("--launcher slurm: not inside a Slurm allocation (SLURM_JOB_ID is not set); use salloc or sbatch")]
    NotInSlurm,
    #[error("--launcher pbs: not inside a PBS job (PBS_JOBID and PBS_NODEFILE are not set)")]
    NotInPbs,
    #[error("--launcher sge: not inside a Grid Engine parallel job (JOB_ID and PE_HOSTFILE are not set); submit with qsub -pe")]
    NotInSge,
    #[error("--launcher lsf: not inside an LSF job (LSB_JOBID is not set); submit with bsub")]
    NotInLsf,
    #[error(
        "node {node} is not part of {allocation} (its nodes: {nodes}); inside an allocation a node list must be a subset of it"
    )]
    NotInAllocation { node: String, allocation: String, nodes: String },
    #[error("node {node} has {slots} slots in {allocation}, but the node list asks for {asked}")]
    MoreSlotsThanAllocated { node: String, allocation: String, slots: u32, asked: u32 },
    #[error("--launcher {0} needs nodes: give --hostfile or --host")]
    NeedsNodes(LauncherKind),
}

/// A resource manager's allocation, as the subset check names it.
struct Allocation {
    /// "Slurm job 42", "PBS job 7.server".
    name: String,
    nodes: Vec<Node>,
}

/// Decides nodes, starter and map policy; see the module documentation for the rules.
pub fn allocate(req: &AllocationRequest, env: &dyn Fn(&str) -> Option<String>) -> Result<AllocationPlan, AllocationError> {
    let policy = |oversubscribe| -> Result<MapPolicy, AllocationError> {
        let map_by = match req.ppn {
            Some(0) => return Err(AllocationError::ZeroPpn),
            Some(n) => MapBy::PprNode(n),
            None => req.map_by,
        };
        let rank_by = match req.rank_by {
            Some(r) => r,
            None if map_by == MapBy::Node => RankBy::Node,
            None => RankBy::Slot,
        };
        Ok(MapPolicy { map_by, rank_by, oversubscribe })
    };
    // Checked before anything is read, as the command line's own mistake.
    policy(req.oversubscribe)?;
    let listed = match (&req.hostfile, &req.host) {
        (Some(_), Some(_)) => return Err(AllocationError::HostfileAndHost),
        (Some(path), None) => {
            let display = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|source| AllocationError::Hostfile { path: display.clone(), source })?;
            Some(parse_hostfile(&display, &text)?)
        }
        (None, Some(list)) => Some(parse_host_list(list)?),
        (None, None) => None,
    };
    let agent = req.launch_agent.as_deref().map(|a| agent_argv(a, &req.cwd)).transpose()?;
    let slurm = detect_slurm(env).map_err(AllocationError::Slurm)?;
    let pbs = if slurm.is_none() { detect_pbs(env).map_err(AllocationError::Pbs)? } else { None };
    let allocation = match (slurm, pbs) {
        (Some(s), _) => Some((LauncherKind::Slurm, Allocation { name: format!("Slurm job {}", s.job_id), nodes: s.nodes })),
        (None, Some(p)) => Some((LauncherKind::Pbs, Allocation { name: format!("PBS job {}", p.job_id), nodes: p.nodes })),
        (None, None) => match detect_grid_engine(env).map_err(AllocationError::Batch)? {
            Some(b) => Some((LauncherKind::Sge, Allocation { name: b.name, nodes: b.nodes })),
            None => detect_lsf(env).map_err(AllocationError::Batch)?.map(|b| (LauncherKind::Lsf, Allocation { name: b.name, nodes: b.nodes })),
        },
    };
    let inside = allocation.as_ref().map(|(k, _)| *k);
    let kind = match (req.launcher, &agent) {
        (Some(LauncherKind::Agent), None) => return Err(AllocationError::AgentNeedsCommand),
        (Some(k), Some(_)) if k != LauncherKind::Agent => return Err(AllocationError::AgentWithLauncher(k)),
        (Some(LauncherKind::Slurm), _) if inside != Some(LauncherKind::Slurm) => return Err(AllocationError::NotInSlurm),
        (Some(LauncherKind::Pbs), _) if inside != Some(LauncherKind::Pbs) => return Err(AllocationError::NotInPbs),
        (Some(LauncherKind::Sge), _) if inside != Some(LauncherKind::Sge) => return Err(AllocationError::NotInSge),
        (Some(LauncherKind::Lsf), _) if inside != Some(LauncherKind::Lsf) => return Err(AllocationError::NotInLsf),
        (Some(k), _) => k,
        (None, Some(_)) => LauncherKind::Agent,
        (None, None) => match inside {
            Some(manager) => manager,
            None if listed.is_some() => LauncherKind::Ssh,
            None => LauncherKind::Local,
        },
    };
    let starter = match kind {
        LauncherKind::Local => Starter::Each(NodeStarter::Local),
        LauncherKind::Agent => Starter::Each(NodeStarter::Agent { argv: agent.ok_or(AllocationError::AgentNeedsCommand)? }),
        LauncherKind::Slurm => Starter::Group(GroupStarter::Srun { srun: "srun".into() }),
        // PBS: TM's pbsdsh cannot carry a private bootstrap line on stdin, so daemons start over
        // ssh (see the man page).
        LauncherKind::Ssh | LauncherKind::Pbs => Starter::Each(NodeStarter::Ssh(ssh_options(req))),
        // Grid Engine and LSF: their own agent where it is installed, so that the job tracks its
        // daemons (see crate::start::batch); a site without it still has ssh.
        LauncherKind::Sge | LauncherKind::Lsf => {
            let system = if kind == LauncherKind::Sge { BatchSystem::GridEngine } else { BatchSystem::Lsf };
            match batch::agent_argv(system, env("PATH").as_deref()) {
                Some(argv) => Starter::Each(NodeStarter::Batch { system, argv, here: local_hostname() }),
                None => Starter::Each(NodeStarter::Ssh(ssh_options(req))),
            }
        }
    };
    let local = kind == LauncherKind::Local;
    // The local launcher runs every daemon here, so an allocation elsewhere has no say.
    let allocation = allocation.filter(|_| !local).map(|(_, a)| a);
    let nodes = match (listed, allocation) {
        (Some(nodes), Some(alloc)) => {
            check_subset(&nodes, &alloc, req.oversubscribe)?;
            Some(nodes)
        }
        (Some(nodes), None) => Some(nodes),
        (None, Some(alloc)) => Some(alloc.nodes),
        (None, None) => None,
    };
    match nodes {
        Some(nodes) => Ok(AllocationPlan { nodes, starter, policy: policy(req.oversubscribe)?, local }),
        None if local => {
            // One implicit local node: its slots are its CPUs, and asking for more is allowed, as
            // on a laptop.
            let cpus = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
            let nodes = vec![Node { name: local_hostname(), user: None, slots: cpus, max_slots: None }];
            Ok(AllocationPlan { nodes, starter, policy: policy(!req.no_oversubscribe)?, local })
        }
        None => Err(AllocationError::NeedsNodes(kind)),
    }
}

/// `--launch-agent "CMD ARGS"` as an argv. Daemons that start their own children (tree spawn) run
/// elsewhere: a relative agent path must not depend on their working directory.
fn agent_argv(text: &str, cwd: &Path) -> Result<Vec<String>, AllocationError> {
    let mut argv: Vec<String> = text.split_whitespace().map(str::to_string).collect();
    let first = argv.first_mut().ok_or(AllocationError::EmptyAgent)?;
    if first.contains('/') && !first.starts_with('/') {
        *first = cwd.join(&*first).to_string_lossy().into_owned();
    }
    Ok(argv)
}

/// Inside an allocation, a node list given by hand may only name its nodes, with no more slots
/// than it grants unless oversubscription is allowed.
fn check_subset(nodes: &[Node], alloc: &Allocation, oversubscribe: bool) -> Result<(), AllocationError> {
    for n in nodes {
        match alloc.nodes.iter().find(|a| a.name == n.name) {
            None => {
                return Err(AllocationError::NotInAllocation {
                    node: n.name.clone(),
                    allocation: alloc.name.clone(),
                    nodes: alloc.nodes.iter().map(|a| a.name.as_str()).collect::<Vec<_>>().join(","),
                })
            }
            Some(a) if n.slots > a.slots && !oversubscribe => {
                return Err(AllocationError::MoreSlotsThanAllocated {
                    node: n.name.clone(),
                    allocation: alloc.name.clone(),
                    slots: a.slots,
                    asked: n.slots,
                })
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn ssh_options(req: &AllocationRequest) -> SshOptions {
    let mut opts = SshOptions::default();
    if let Some(p) = req.ssh_port {
        opts.port = p;
    }
    if let Some(id) = &req.ssh_identity {
        opts.identity = Some(id.clone());
        opts.identities_only = true;
    }
    opts.known_hosts = req.ssh_known_hosts.clone();
    opts.connect_timeout = req.launch_timeout.min(SSH_STEP_LIMIT);
    opts
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn request() -> AllocationRequest {
        AllocationRequest {
            hostfile: None,
            host: None,
            launcher: None,
            launch_agent: None,
            map_by: MapBy::Slot,
            rank_by: None,
            ppn: None,
            oversubscribe: false,
            no_oversubscribe: false,
            ssh_port: None,
            ssh_identity: None,
            ssh_known_hosts: None,
            launch_timeout: Duration::from_secs(60),
            cwd: PathBuf::from("/work"),
        }
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    fn no_env() -> impl Fn(&str) -> Option<String> {
        env_of(&[])
    }

    fn slurm_env() -> impl Fn(&str) -> Option<String> {
        env_of(&[("SLURM_JOB_ID", "42"), ("SLURM_JOB_NODELIST", "n[1-3]"), ("SLURM_TASKS_PER_NODE", "2(x3)")])
    }

    fn names(p: &AllocationPlan) -> Vec<(&str, u32)> {
        p.nodes.iter().map(|n| (n.name.as_str(), n.slots)).collect()
    }

    fn err(req: &AllocationRequest, env: &dyn Fn(&str) -> Option<String>) -> String {
        allocate(req, env).unwrap_err().to_string()
    }

    #[test]
    fn nothing_given_is_one_local_node_that_may_be_oversubscribed() {
        let p = allocate(&request(), &no_env()).unwrap();
        assert_eq!(p.nodes.len(), 1);
        assert_eq!(p.nodes[0].name, local_hostname());
        assert!(p.nodes[0].slots >= 1);
        assert_eq!(p.starter, Starter::Each(NodeStarter::Local));
        assert!(p.local);
        assert_eq!(p.policy, MapPolicy { map_by: MapBy::Slot, rank_by: RankBy::Slot, oversubscribe: true });
    }

    #[test]
    fn no_oversubscribe_holds_the_local_node_to_its_cpus() {
        let p = allocate(&AllocationRequest { no_oversubscribe: true, ..request() }, &no_env()).unwrap();
        assert!(p.local && !p.policy.oversubscribe);
    }

    #[test]
    fn a_node_list_starts_over_ssh_with_the_ssh_flags() {
        let req = AllocationRequest {
            host: Some("h1:2,bob@h2".into()),
            ssh_port: Some(2222),
            ssh_identity: Some("/k/id".into()),
            ssh_known_hosts: Some("/k/known".into()),
            ..request()
        };
        let p = allocate(&req, &no_env()).unwrap();
        assert_eq!(names(&p), [("h1", 2), ("h2", 1)]);
        assert_eq!(p.nodes[1].user.as_deref(), Some("bob"));
        assert!(!p.local);
        assert!(!p.policy.oversubscribe);
        let Starter::Each(NodeStarter::Ssh(o)) = &p.starter else { panic!("{:?}", p.starter) };
        assert_eq!((o.port, o.identities_only), (2222, true));
        assert_eq!(o.identity.as_deref(), Some(Path::new("/k/id")));
        assert_eq!(o.known_hosts.as_deref(), Some(Path::new("/k/known")));
        // The launch timeout bounds each step, up to the limit.
        assert_eq!(o.connect_timeout, SSH_STEP_LIMIT);
        let p = allocate(&AllocationRequest { launch_timeout: Duration::from_secs(5), ..req }, &no_env()).unwrap();
        let Starter::Each(NodeStarter::Ssh(o)) = &p.starter else { panic!() };
        assert_eq!(o.connect_timeout, Duration::from_secs(5));
    }

    #[test]
    fn hostfile_is_read_and_named_in_errors() {
        let dir = std::env::temp_dir().join(format!("launchers-alloc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("hosts");
        std::fs::write(&good, "n1 slots=4\nn2:2\n").unwrap();
        let p = allocate(&AllocationRequest { hostfile: Some(good.clone()), ..request() }, &no_env()).unwrap();
        assert_eq!(names(&p), [("n1", 4), ("n2", 2)]);
        let bad = dir.join("bad");
        std::fs::write(&bad, "n1 slot=4\n").unwrap();
        let e = err(&AllocationRequest { hostfile: Some(bad.clone()), ..request() }, &no_env());
        assert_eq!(e, format!("{}:1: expected 'slots=N', got 'slot=4'", bad.display()));
        let missing = dir.join("missing");
        let e = err(&AllocationRequest { hostfile: Some(missing.clone()), ..request() }, &no_env());
        assert!(e.starts_with(&format!("--hostfile {}: ", missing.display())), "{e}");
        let e = err(&AllocationRequest { hostfile: Some(good), host: Some("n1".into()), ..request() }, &no_env());
        assert_eq!(e, "--hostfile and --host cannot be combined; use one of them");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn inside_slurm_the_allocation_gives_nodes_and_one_srun_step() {
        let p = allocate(&request(), &slurm_env()).unwrap();
        assert_eq!(names(&p), [("n1", 2), ("n2", 2), ("n3", 2)]);
        assert_eq!(p.starter, Starter::Group(GroupStarter::Srun { srun: "srun".into() }));
        assert!(!p.local && !p.policy.oversubscribe);
        // A subset by hand, started over ssh if asked.
        let req = AllocationRequest { host: Some("n2:2,n3".into()), launcher: Some(LauncherKind::Ssh), ..request() };
        let p = allocate(&req, &slurm_env()).unwrap();
        assert_eq!(names(&p), [("n2", 2), ("n3", 1)]);
        assert!(matches!(p.starter, Starter::Each(NodeStarter::Ssh(_))));
    }

    #[test]
    fn inside_an_allocation_a_node_list_must_be_a_subset() {
        let req = AllocationRequest { host: Some("n1,zz9".into()), ..request() };
        assert_eq!(
            err(&req, &slurm_env()),
            "node zz9 is not part of Slurm job 42 (its nodes: n1,n2,n3); inside an allocation a node list must be a subset of it"
        );
        let req = AllocationRequest { host: Some("n1:3".into()), ..request() };
        assert_eq!(err(&req, &slurm_env()), "node n1 has 2 slots in Slurm job 42, but the node list asks for 3");
        let p = allocate(&AllocationRequest { oversubscribe: true, ..req.clone() }, &slurm_env()).unwrap();
        assert_eq!(names(&p), [("n1", 3)]);
        // The local launcher runs everything here: the allocation is not consulted.
        let p = allocate(&AllocationRequest { host: Some("a,b".into()), launcher: Some(LauncherKind::Local), ..request() }, &slurm_env()).unwrap();
        assert_eq!(names(&p), [("a", 1), ("b", 1)]);
        assert!(p.local);
        // ... and without a node list it is the one implicit node, not the allocation's.
        let p = allocate(&AllocationRequest { launcher: Some(LauncherKind::Local), ..request() }, &slurm_env()).unwrap();
        assert_eq!(p.nodes.len(), 1);
        assert_eq!(p.nodes[0].name, local_hostname());
    }

    #[test]
    fn inside_pbs_nodes_come_from_the_node_file_and_daemons_over_ssh() {
        let dir = std::env::temp_dir().join(format!("launchers-alloc-pbs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("nodefile");
        std::fs::write(&file, "p1\np1\np2\n").unwrap();
        let path = file.to_string_lossy().into_owned();
        let env = env_of(&[("PBS_JOBID", "7.server"), ("PBS_NODEFILE", &path)]);
        let p = allocate(&request(), &env).unwrap();
        assert_eq!(names(&p), [("p1", 2), ("p2", 1)]);
        assert!(matches!(p.starter, Starter::Each(NodeStarter::Ssh(_))));
        let e = err(&AllocationRequest { host: Some("p3".into()), ..request() }, &env);
        assert!(e.starts_with("node p3 is not part of PBS job 7.server (its nodes: p1,p2)"), "{e}");
        // Slurm wins when both are set; its allocation is the one checked.
        let both = |k: &str| slurm_env()(k).or_else(|| env(k));
        assert_eq!(allocate(&request(), &both).unwrap().starter, Starter::Group(GroupStarter::Srun { srun: "srun".into() }));
        let e = err(&request(), &env_of(&[("PBS_JOBID", "7.server")]));
        assert!(e.starts_with("reading the PBS allocation: "), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn inside_grid_engine_or_lsf_without_their_agent_nodes_come_from_the_job_and_daemons_over_ssh() {
        let dir = std::env::temp_dir().join(format!("launchers-alloc-batch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pe_hostfile");
        std::fs::write(&file, "g1 2 all.q@g1 UNDEFINED\ng2 1 all.q@g2 UNDEFINED\n").unwrap();
        let path = file.to_string_lossy().into_owned();
        let sge = env_of(&[("JOB_ID", "42"), ("PE_HOSTFILE", &path), ("NSLOTS", "3")]);
        let p = allocate(&request(), &sge).unwrap();
        assert_eq!(names(&p), [("g1", 2), ("g2", 1)]);
        assert!(matches!(p.starter, Starter::Each(NodeStarter::Ssh(_))));
        assert!(!p.local);
        let e = err(&AllocationRequest { host: Some("g3".into()), ..request() }, &sge);
        assert!(e.starts_with("node g3 is not part of Grid Engine job 42 (its nodes: g1,g2)"), "{e}");
        let lsf = env_of(&[("LSB_JOBID", "9"), ("LSB_MCPU_HOSTS", "l1 4 l2 4")]);
        let p = allocate(&request(), &lsf).unwrap();
        assert_eq!(names(&p), [("l1", 4), ("l2", 4)]);
        assert!(matches!(p.starter, Starter::Each(NodeStarter::Ssh(_))));
        let e = err(&request(), &env_of(&[("LSB_JOBID", "9")]));
        assert!(e.starts_with("reading the Grid Engine or LSF allocation: LSB_DJOB_HOSTFILE (or LSB_MCPU_HOSTS) is not set"), "{e}");
        // The local launcher does not consult them.
        assert!(allocate(&AllocationRequest { launcher: Some(LauncherKind::Local), ..request() }, &lsf).unwrap().local);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn inside_grid_engine_or_lsf_daemons_start_through_qrsh_or_blaunch_where_installed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("launchers-alloc-agents-{}", std::process::id()));
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        for agent in ["qrsh", "blaunch"] {
            std::fs::write(bin.join(agent), "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(bin.join(agent), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let file = dir.join("pe_hostfile");
        std::fs::write(&file, "g1 2 all.q@g1 UNDEFINED\ng2 1 all.q@g2 UNDEFINED\n").unwrap();
        let (pe, path) = (file.to_string_lossy().into_owned(), format!("/nonexistent:{}", bin.display()));
        let sge = env_of(&[("JOB_ID", "42"), ("PE_HOSTFILE", &pe), ("PATH", &path)]);
        let p = allocate(&request(), &sge).unwrap();
        assert_eq!(names(&p), [("g1", 2), ("g2", 1)]);
        let qrsh = bin.join("qrsh").to_string_lossy().into_owned();
        let system = BatchSystem::GridEngine;
        assert_eq!(p.starter, Starter::Each(NodeStarter::Batch { system, argv: vec![qrsh, "-inherit".into()], here: local_hostname() }));
        // Asked for by name; ssh on request; a node list is a subset of the job's.
        assert_eq!(allocate(&AllocationRequest { launcher: Some(LauncherKind::Sge), ..request() }, &sge).unwrap().starter, p.starter);
        let ssh = allocate(&AllocationRequest { launcher: Some(LauncherKind::Ssh), ..request() }, &sge).unwrap();
        assert!(matches!(ssh.starter, Starter::Each(NodeStarter::Ssh(_))));
        let e = err(&AllocationRequest { host: Some("g1,g9".into()), ..request() }, &sge);
        assert!(e.starts_with("node g9 is not part of Grid Engine job 42"), "{e}");
        let lsf = env_of(&[("LSB_JOBID", "9"), ("LSB_MCPU_HOSTS", "l1 4 l2 4"), ("PATH", &path)]);
        let p = allocate(&AllocationRequest { launcher: Some(LauncherKind::Lsf), ..request() }, &lsf).unwrap();
        let blaunch = bin.join("blaunch").to_string_lossy().into_owned();
        let system = BatchSystem::Lsf;
        assert_eq!(p.starter, Starter::Each(NodeStarter::Batch { system, argv: vec![blaunch], here: local_hostname() }));
        // Each only inside its own kind of job.
        let e = err(&AllocationRequest { launcher: Some(LauncherKind::Sge), ..request() }, &lsf);
        assert_eq!(e, "--launcher sge: not inside a Grid Engine parallel job (JOB_ID and PE_HOSTFILE are not set); submit with qsub -pe");
        let e = err(&AllocationRequest { launcher: Some(LauncherKind::Lsf), host: Some("a".into()), ..request() }, &sge);
        assert_eq!(e, "--launcher lsf: not inside an LSF job (LSB_JOBID is not set); submit with bsub");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_broken_slurm_environment_is_named() {
        let e = err(&request(), &env_of(&[("SLURM_JOB_ID", "42")]));
        assert!(e.starts_with("reading the Slurm allocation: "), "{e}");
    }

    #[test]
    fn launcher_and_agent_combinations() {
        let e = err(&AllocationRequest { launcher: Some(LauncherKind::Agent), host: Some("a".into()), ..request() }, &no_env());
        assert_eq!(e, "--launcher agent needs --launch-agent CMD");
        for k in [LauncherKind::Local, LauncherKind::Ssh, LauncherKind::Slurm, LauncherKind::Pbs, LauncherKind::Sge, LauncherKind::Lsf] {
            let req = AllocationRequest { launcher: Some(k), launch_agent: Some("ssh -x".into()), ..request() };
            assert_eq!(err(&req, &no_env()), format!("--launch-agent cannot be combined with --launcher {k}"));
        }
        let e = err(&AllocationRequest { launcher: Some(LauncherKind::Slurm), ..request() }, &no_env());
        assert_eq!(e, "--launcher slurm: not inside a Slurm allocation (SLURM_JOB_ID is not set); use salloc or sbatch");
        let e = err(&AllocationRequest { launcher: Some(LauncherKind::Pbs), ..request() }, &slurm_env());
        assert_eq!(e, "--launcher pbs: not inside a PBS job (PBS_JOBID and PBS_NODEFILE are not set)");
        let e = err(&AllocationRequest { launcher: Some(LauncherKind::Ssh), ..request() }, &no_env());
        assert_eq!(e, "--launcher ssh needs nodes: give --hostfile or --host");
        let e = err(&AllocationRequest { launch_agent: Some("  ".into()), ..request() }, &no_env());
        assert_eq!(e, "--launch-agent: empty command");
    }

    #[test]
    fn an_agent_implies_the_agent_launcher_with_an_absolute_path() {
        let req = AllocationRequest { launch_agent: Some("bin/agent -q".into()), host: Some("a".into()), ..request() };
        let p = allocate(&req, &no_env()).unwrap();
        assert_eq!(p.starter, Starter::Each(NodeStarter::Agent { argv: vec!["/work/bin/agent".into(), "-q".into()] }));
        let req = AllocationRequest { launch_agent: Some("ssh -x".into()), ..req };
        let p = allocate(&req, &no_env()).unwrap();
        assert_eq!(p.starter, Starter::Each(NodeStarter::Agent { argv: vec!["ssh".into(), "-x".into()] }));
        // Inside Slurm an explicit agent still wins over srun, with the allocation's nodes.
        let p = allocate(&AllocationRequest { host: None, ..req }, &slurm_env()).unwrap();
        assert!(matches!(p.starter, Starter::Each(NodeStarter::Agent { .. })));
        assert_eq!(p.nodes.len(), 3);
    }

    #[test]
    fn map_policy() {
        let p = allocate(&AllocationRequest { map_by: MapBy::Node, host: Some("a".into()), ..request() }, &no_env()).unwrap();
        assert_eq!((p.policy.map_by, p.policy.rank_by), (MapBy::Node, RankBy::Node));
        let req = AllocationRequest { map_by: MapBy::Node, rank_by: Some(RankBy::Slot), ppn: Some(3), ..request() };
        let p = allocate(&req, &no_env()).unwrap();
        assert_eq!((p.policy.map_by, p.policy.rank_by), (MapBy::PprNode(3), RankBy::Slot));
        let e = err(&AllocationRequest { ppn: Some(0), ..request() }, &no_env());
        assert_eq!(e, "--ppn 0: the number of ranks per node must be at least 1");
    }

    #[test]
    fn launcher_names() {
        for k in LauncherKind::ALL {
            assert_eq!(k.name().parse::<LauncherKind>(), Ok(k));
        }
        assert_eq!("rsh".parse::<LauncherKind>().unwrap_err().to_string(), "expected local, ssh, agent, slurm, pbs, sge or lsf");
    }
}
