//! PMIx in the daemon: the parts of `Daemon` that run this node's libpmix server for a job whose
//! ranks get PMIx (Open MPI). Included from `daemon.rs` as a child module so it can reach the
//! daemon's state; the daemon calls in from a few hooks (job start, rank start, events, tree
//! messages, rank exit).
//!
//! Threads: libpmix calls the module callbacks on its own progress thread. `ffi` turns each into
//! an [`Upcall`] and this file's sink puts it on a channel and wakes the event loop
//! ([`PMIX_WAKE`]); the loop hands it to the [`Engine`] and completes the callback. No job state
//! is shared between the threads.

use super::Daemon;
use crate::pmix::engine::{Engine, Out};
use crate::pmix::ffi::{self, InfoArray, Lib, ModexDone, OpDone, Upcall, Val};
use crate::pmix::JobLayout;
use crate::wire::{Launch, Msg};
use anyhow::{anyhow, Context, Result};
use mio::{Token, Waker};
use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// The event-loop token of the upcall waker.
pub(super) const PMIX_WAKE: Token = Token(8);
/// How long a registration with libpmix may take before the node gives up on the job.
const REGISTER_WAIT: Duration = Duration::from_secs(30);

/// PMIx state of one daemon.
#[derive(Default)]
pub(super) struct DaemonPmix {
    active: Option<Active>,
    /// Tree messages that arrived before this node's server was up (a fast neighbour's direct
    /// modex request, a child's fence contribution): replayed once it is. `Some(node)`: from
    /// that child.
    early: Vec<(Option<u32>, Msg)>,
    /// Inherited variables no rank of this job gets, computed once.
    scrub: Option<Vec<String>>,
    /// Whether the user picked Open MPI's PML or MTL, computed once (see `user_chose_pml`).
    user_chose_pml: Option<bool>,
}

/// Whether the rank's environment as `cmd` will pass it (the daemon's own, which for a local
/// start is the user's, plus `-x` and forwarded variables) or an Open MPI MCA parameter file
/// names a PML or MTL. MPMD contexts with different `-x` sets are rare enough that the first
/// rank's answer stands for the node.
fn user_chose_pml(cmd: &std::process::Command) -> bool {
    let inherited: Vec<(String, String)> = std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))).collect();
    let set: Vec<(String, Option<String>)> =
        cmd.get_envs().map(|(k, v)| (k.to_string_lossy().into_owned(), v.map(|v| v.to_string_lossy().into_owned()))).collect();
    let vars = inherited
        .iter()
        .filter(|(n, _)| !set.iter().any(|(k, _)| k == n))
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .chain(set.iter().filter_map(|(k, v)| Some((k.as_str(), v.as_deref()?))));
    let mut files: Vec<PathBuf> = vec![PathBuf::from("/etc/openmpi/openmpi-mca-params.conf")];
    if let Some(home) = std::env::var_os("HOME") {
        files.push(PathBuf::from(home).join(".openmpi/mca-params.conf"));
    }
    let texts: Vec<String> = files.iter().filter_map(|f| std::fs::read_to_string(f).ok()).collect();
    crate::pmix::openmpi_user_chose_pml(vars, &texts)
}

struct Active {
    lib: &'static Lib,
    engine: Engine<OpDone, ModexDone>,
    rx: mpsc::Receiver<Upcall>,
    _waker: Arc<Waker>,
    layout: JobLayout,
    map: launchers::map::ProcMap,
    dir: PathBuf,
    /// Held while `dir` is in use, so that other daemons' sweeps leave it alone.
    _dir_lock: std::fs::File,
    lazy: bool,
}

impl Drop for Active {
    fn drop(&mut self) {
        // Pending callbacks are dropped silently after this (ffi rule 4).
        let _ = self.lib.server_finalize();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Removes a directory when dropped, unless kept.
struct DirGuard(Option<PathBuf>);

impl DirGuard {
    fn keep(mut self) -> PathBuf {
        self.0.take().unwrap_or_default()
    }
}

impl Drop for DirGuard {
    fn drop(&mut self) {
        if let Some(d) = self.0.take() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

impl Daemon {
    /// Whether this job's ranks get PMIx.
    pub(super) fn pmix_job(&self) -> bool {
        self.launch.as_ref().is_some_and(|l| l.pmi.interface == crate::spec::Interface::Pmix)
    }

    /// Before the first rank starts: load libpmix, start the server, register the job.
    pub(super) fn pmix_setup(&mut self, map: &launchers::map::ProcMap, launch: &Launch) -> Result<()> {
        let node = self.boot.node;
        let lib = ffi::load().map_err(|e| anyhow!("{e}"))?;
        let names: Vec<String> = launch.nodes.iter().map(|n| n.name.clone()).collect();
        let slots: Vec<u32> = launch.nodes.iter().map(|n| n.slots).collect();
        let layout = JobLayout::new(&launch.job_id, &names, &slots, map, node);
        // Per job and node: libpmix puts its rendezvous files and shared-memory store here, so
        // two jobs (or two daemons of one job on one machine) never meet.
        let base = std::env::temp_dir();
        // What SIGKILLed daemons of earlier jobs left (their shared-memory store and topology).
        crate::pmix::sweep_stale_dirs(&base, crate::claim::STALE_AFTER);
        let dir = crate::pmix::job_dir(&base, &launch.job_id, node);
        let _ = std::fs::remove_dir_all(&dir);
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .with_context(|| format!("creating the PMIx directory {}", dir.display()))?;
        }
        // Removed again if setup fails before `Active` owns it.
        let dir_guard = DirGuard(Some(dir.clone()));
        let dir_lock = crate::claim::hold(&dir).with_context(|| format!("locking the PMIx directory {}", dir.display()))?;
        let (tx, rx) = mpsc::channel::<Upcall>();
        let waker = Arc::new(Waker::new(self.poll.registry(), PMIX_WAKE).context("creating the PMIx waker")?);
        let w = waker.clone();
        let sink: ffi::Sink = Box::new(move |u| {
            tx.send(u).map_err(|e| e.0)?;
            let _ = w.wake();
            Ok(())
        });
        let dir_s = dir.to_string_lossy().into_owned();
        let mut init = lib.info_list();
        init.add("pmix.srvr.tmpdir", Val::Str(&dir_s))?;
        init.add("pmix.sys.tmpdir", Val::Str(&dir_s))?;
        // The node's name as the job knows it, so libpmix finds itself in the node map.
        init.add("pmix.hname", Val::Str(layout.hostname(node)))?;
        init.add("pmix.nodeid", Val::U32(node))?;
        // PMIX_SERVER_SHARE_TOPOLOGY: libpmix discovers the node's hwloc topology once and hands
        // it to the ranks in shared memory (an hwloc.sm file in `dir`). Open MPI 4.1 adopts it
        // instead of discovering the topology in every rank, which is most of MPI_Init's CPU
        // time on a full node: 64 ranks on 2 cores here went from 1.7 s to 1.1 s. A libpmix
        // older than 4 ignores the key and the ranks discover for themselves, as before.
        init.add("pmix.srvr.share", Val::Bool(true))?;
        let init = init.into_array()?;
        lib.server_init(&init, sink).with_context(|| format!("starting the PMIx server (libpmix {})", lib.version()))?;
        let at = format!("node {node} ({})", super::hostname());
        let rank_node: Vec<u32> = map.ranks().iter().map(|p| p.node).collect();
        let has_ranks = |n: u32| !map.ranks_on(n).is_empty();
        let children = crate::fence::participants(Some(node), self.boot.fanout, self.boot.nnodes, has_ranks);
        let engine = Engine::new(&launch.job_id, node, at, rank_node, children);
        let lazy = launch.pmi.lazy;
        let active = Active { lib, engine, rx, _waker: waker, layout, map: map.clone(), dir: dir_guard.keep(), _dir_lock: dir_lock, lazy };
        let info = job_info(&active).context("describing the job to libpmix")?;
        let nlocal = map.ranks_on(node).len() as u32;
        lib.register_nspace(&launch.job_id, nlocal, &info, REGISTER_WAIT).context("registering the job with libpmix")?;
        drop(info);
        // Every local rank is registered before the first one starts. libpmix (4.2.2) defers a
        // client's request for a peer's data while "not all registered" and does not look at
        // that request again when the last registration arrives: with ranks registered one by
        // one as they were spawned, a fast rank that asked for an early rank's data (Open MPI's
        // async modex checks rank 0's PML) waited forever, about 1 job in 40 here.
        for &rank in map.ranks_on(node) {
            lib.register_client(&launch.job_id, rank, REGISTER_WAIT).with_context(|| format!("registering rank {rank} with libpmix"))?;
        }
        self.pmix.active = Some(active);
        for (from, msg) in std::mem::take(&mut self.pmix.early) {
            self.pmix_tree_msg(from, msg);
        }
        Ok(())
    }

    /// Called for every rank: a PMIx rank gets its PMIx environment; any rank loses what this
    /// daemon inherited of the interface it does not use (see `crate::pmix::scrub`).
    pub(super) fn pmix_prepare(&mut self, rank: u32, cmd: &mut std::process::Command) -> Result<()> {
        let interface = self.launch.as_ref().map_or(crate::spec::Interface::Pmi, |l| l.pmi.interface);
        let scrub = self.pmix.scrub.get_or_insert_with(|| {
            let names: Vec<String> = std::env::vars_os().filter_map(|(k, _)| k.into_string().ok()).collect();
            crate::pmix::scrub(interface, names.iter().map(String::as_str))
        });
        for k in scrub.iter() {
            cmd.env_remove(k);
        }
        let Some(a) = self.pmix.active.as_ref() else { return Ok(()) };
        let ns = a.layout.nspace.clone();
        let vars = a.lib.setup_fork(&ns, rank).with_context(|| format!("preparing the PMIx environment of rank {rank}"))?;
        for (k, v) in vars {
            // The client picks its data store from this list (libpmix offers "ds21,ds12,hash").
            // With the shared-memory ds21, a rank's PMIx_Get for a local peer's committed key
            // came back "Not found" now and then (5 jobs in 200 of 8 ranks under Open MPI's
            // async modex: "PML add procs failed"); with the in-memory hash store, whose answers
            // come through the server, 200 in 200 passed and start-up time did not change
            // measurably (64 ranks, eager and lazy).
            let v = if k == "PMIX_GDS_MODULE" { "hash".to_string() } else { v };
            cmd.env(k, v);
        }
        for (k, v) in crate::pmix::openmpi_env(&a.map, rank, a.lazy) {
            cmd.env(k, v);
        }
        let user_chose = *self.pmix.user_chose_pml.get_or_insert_with(|| user_chose_pml(cmd));
        for (k, v) in crate::pmix::openmpi_fabric_env(self.fabric.chosen(), user_chose) {
            cmd.env(k, v);
        }
        Ok(())
    }

    /// The upcall waker fired: run every queued upcall.
    pub(super) fn on_pmix_wake(&mut self) {
        loop {
            let Some(a) = self.pmix.active.as_mut() else { return };
            let Ok(u) = a.rx.try_recv() else { return };
            let e = &mut a.engine;
            let outs = match u {
                Upcall::Connected { proc, done } => e.connected(&proc, done),
                Upcall::Finalized { proc, done } => e.finalized(&proc, done),
                Upcall::Abort { proc, status, message, done } => e.abort(&proc, status, &message, done),
                Upcall::Fence { procs, data, done, .. } => e.fence(&procs, &data, done),
                Upcall::DirectModex { proc, done } => e.direct_modex(&proc, done),
                Upcall::DmodexData { token, status, data } => e.dmodex_data(token, status, data),
            };
            self.pmix_run(outs);
        }
    }

    /// A PMIx tree message (from the parent: `from` None; from child node `from`). Returns it
    /// back when it is not a PMIx message.
    pub(super) fn pmix_tree_msg(&mut self, from: Option<u32>, msg: Msg) -> Option<Msg> {
        let is_pmix =
            matches!(msg, Msg::PmixFence { .. } | Msg::PmixFenceDone { .. } | Msg::PmixDmodexReq { .. } | Msg::PmixDmodexResp { .. });
        if !is_pmix {
            return Some(msg);
        }
        // A message just passing through needs no server here.
        if let Msg::PmixDmodexReq { node: target, .. } | Msg::PmixDmodexResp { to: target, .. } = &msg {
            if *target != self.boot.node {
                self.pmix_route(msg);
                return None;
            }
        }
        let Some(a) = self.pmix.active.as_mut() else {
            self.pmix.early.push((from, msg));
            return None;
        };
        let e = &mut a.engine;
        let outs = match msg {
            Msg::PmixFence { seq, puts } => match from {
                Some(node) => e.child_fence(node, seq, puts),
                None => vec![Out::Fail(format!("node {}: a PMIx fence contribution came from the parent; internal error", self.boot.node))],
            },
            Msg::PmixFenceDone { seq, puts } => e.fence_done(seq, puts),
            Msg::PmixDmodexReq { from, rank, id, .. } => e.dmodex_request(from, rank, id),
            Msg::PmixDmodexResp { id, status, data, .. } => e.dmodex_reply(id, status, data),
            _ => Vec::new(),
        };
        self.pmix_run(outs);
        None
    }

    /// Before a reaped rank's exit is reported.
    pub(super) fn pmix_rank_exited(&mut self, rank: u32) {
        let Some(a) = self.pmix.active.as_mut() else { return };
        let outs = a.engine.rank_exited(rank);
        self.pmix_run(outs);
    }

    /// Sends a direct-modex message towards its node: handled here, down the child subtree that
    /// holds the node, or up.
    fn pmix_route(&mut self, msg: Msg) {
        let target = match &msg {
            Msg::PmixDmodexReq { node, .. } => *node,
            Msg::PmixDmodexResp { to, .. } => *to,
            _ => return,
        };
        if target == self.boot.node {
            let _ = self.pmix_tree_msg(None, msg);
            return;
        }
        let fanout = self.boot.fanout;
        if let Some(c) = self.children.values_mut().find(|c| c.node.is_some_and(|n| crate::tree::in_subtree(n, target, fanout))) {
            c.link.send(&msg);
            let _ = c.link.flush();
            return;
        }
        self.parent.send(&msg);
    }

    fn pmix_run(&mut self, outs: Vec<Out<OpDone, ModexDone>>) {
        for o in outs {
            match o {
                Out::Op(op, status) => op.complete(status),
                Out::Modex(mx, status, data) => mx.complete(status, data),
                Out::Up(msg) => {
                    self.parent.send(&msg);
                }
                Out::Down(kids, msg) => {
                    for c in self.children.values_mut() {
                        if c.node.is_some_and(|n| kids.contains(&n)) {
                            c.link.send(&msg);
                            let _ = c.link.flush();
                        }
                    }
                }
                Out::Route(msg) => self.pmix_route(msg),
                Out::AskLocal { rank, token } => {
                    let Some(a) = self.pmix.active.as_mut() else { return };
                    if let Err(e) = a.lib.dmodex_request(&a.layout.nspace, rank, token) {
                        let outs = a.engine.dmodex_data(token, e.status, Vec::new());
                        self.pmix_run(outs);
                    }
                }
                Out::Report { rank, kind, message } => {
                    let node = self.boot.node;
                    self.parent.send(&Msg::PmiReport { rank, node, kind, message });
                }
                Out::Fail(message) => {
                    self.node_error(message);
                    self.terminate_all();
                }
            }
        }
    }
}

/// The job description for `PMIx_server_register_nspace` (what worked with libpmix 4.2.2, see
/// pmi.md): maps, sizes, this node's peers, and every rank's placement.
fn job_info(a: &Active) -> Result<InfoArray, ffi::CallError> {
    let (lib, l, map) = (a.lib, &a.layout, &a.map);
    let node_map = lib.generate_regex(&l.node_map_input())?;
    let proc_map = lib.generate_ppn(&l.proc_map_input(map))?;
    let local = map.ranks_on(l.node);
    let mut info = lib.info_list();
    info.add("pmix.univ.size", Val::U32(l.universe))?;
    info.add("pmix.job.size", Val::U32(l.size))?;
    info.add("pmix.max.size", Val::U32(l.universe))?;
    info.add("pmix.jobid", Val::Str(&l.nspace))?;
    info.add("pmix.num.nodes", Val::U32(l.hosting.len() as u32))?;
    info.add("pmix.job.napps", Val::U32(l.num_apps))?;
    info.add("pmix.nmap", Val::Regex(&node_map))?;
    info.add("pmix.pmap", Val::Regex(&proc_map))?;
    info.add("pmix.local.size", Val::U32(local.len() as u32))?;
    info.add("pmix.node.size", Val::U32(local.len() as u32))?;
    info.add("pmix.lpeers", Val::Str(&l.local_peers(map)))?;
    if let Some(&first) = local.first() {
        info.add("pmix.lldr", Val::Rank(first))?;
    }
    for app in 0..l.num_apps {
        let ranks = map.app_ranks(app);
        let mut a = lib.info_list();
        a.add("pmix.appnum", Val::U32(app))?;
        a.add("pmix.app.size", Val::U32(ranks.len() as u32))?;
        a.add("pmix.aldr", Val::Rank(ranks.start))?;
        let a = a.into_array()?;
        info.add("pmix.app.arr", Val::Array(&a))?;
    }
    for r in crate::pmix::rank_infos(map) {
        let mut p = lib.info_list();
        // The rank comes first: that is how libpmix tells whose array this is.
        p.add("pmix.rank", Val::Rank(r.rank))?;
        p.add("pmix.lrank", Val::U16(r.local_rank))?;
        p.add("pmix.nrank", Val::U16(r.node_rank))?;
        p.add("pmix.hname", Val::Str(l.hostname(r.node)))?;
        p.add("pmix.nodeid", Val::U32(r.node))?;
        p.add("pmix.appnum", Val::U32(r.app))?;
        p.add("pmix.grank", Val::Rank(r.rank))?;
        p.add("pmix.apprank", Val::Rank(r.app_rank))?;
        let p = p.into_array()?;
        info.add("pmix.pdata", Val::Array(&p))?;
    }
    info.into_array()
}
