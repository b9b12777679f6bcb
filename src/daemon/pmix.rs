//! PMIx for the local ranks of a job that gets it (Open MPI): this node's libpmix server, its
//! upcalls, the PMIx fence and direct modex over the tree ([`Engine`]).
//!
//! Threads: libpmix calls the module callbacks on its own progress thread. `ffi` turns each into
//! an [`Upcall`] and this file's sink puts it on a channel and wakes the event loop
//! ([`crate::token::WAKE`]); the loop hands it to [`Pmix::on_wake`]. No job state is shared
//! between the threads. The registrations of the job and of every local rank complete the same
//! way, one after the other, so the loop never waits for libpmix. `PMIx_server_init` itself, which
//! blocks, runs on a thread of its own from the launch on (see [`Pmix::begin`]).

use super::binding::Binding;
use super::effect::Effect;
use crate::timeline::Mark;
use crate::job::JobView;
use crate::pmix::engine::{Engine, Out};
use crate::pmix::ffi::{self, CallError, InFlight, InfoArray, Lib, ModexDone, OpDone, Upcall, Val};
use crate::pmix::JobLayout;
use crate::spec::Interface;
use crate::wire::Msg;
use anyhow::{anyhow, Context, Result};
use mio::Waker;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// How long one registration with libpmix may take before the node gives up on the job.
const REGISTER_WAIT: Duration = Duration::from_secs(30);

/// How long a job that ends while libpmix is starting waits for that start, to stop the server
/// cleanly.
const INIT_DRAIN: Duration = Duration::from_secs(2);

/// Environment changes, in order: `Some` sets, `None` unsets.
type EnvOps = Vec<(String, Option<String>)>;

/// PMIx state of one daemon.
pub struct Pmix {
    node: u32,
    /// libpmix's `PMIx_server_init`, running on its own thread until `active` takes over.
    starting: Option<Starting>,
    active: Option<Active>,
    /// The fabric exchange is over: the ranks start once every registration completed.
    ranks_wanted: bool,
    /// The server failed (and said so): no second start for this job.
    gave_up: bool,
    /// Tree messages that arrived before this node's server was up and its ranks registered (a
    /// fast neighbour's direct modex request, a child's fence contribution): replayed then.
    /// `Some(node)`: from that child.
    early: Vec<(Option<u32>, Msg)>,
    /// What the user set of Open MPI's MCA parameters, computed once (see `user_mca`).
    user_mca: Option<UserMca>,
}

/// Whether `msg` is PMIx traffic between daemons (handled by [`Pmix::tree_msg`]).
pub fn is_tree_msg(msg: &Msg) -> bool {
    matches!(msg, Msg::PmixFence { .. } | Msg::PmixFenceDone { .. } | Msg::PmixDmodexReq { .. } | Msg::PmixDmodexResp { .. })
}

/// What the user decided about the Open MPI MCA parameters rlaunch would otherwise give PMIx
/// ranks, from the rank's environment (`env`: the changes to the daemon's own, which for a local
/// start is the user's, as the rank gets them so far) and Open MPI's MCA parameter files. MPMD
/// contexts with different `-x` sets are rare enough that the first rank's answer stands for the
/// node.
#[derive(Debug, Clone, PartialEq, Eq)]
struct UserMca {
    /// A PML or MTL is named (see [`crate::pmix::openmpi_user_chose_pml`]).
    pml: bool,
    /// The frameworks of [`crate::pmix::OPENMPI_RTE_COMPONENTS`] the user set.
    rte: Vec<&'static str>,
}

fn user_mca(env: &[(String, Option<String>)]) -> UserMca {
    let inherited: Vec<(String, String)> = std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))).collect();
    // The last change of each name is the one the rank sees.
    let set: BTreeMap<&str, Option<&str>> = env.iter().map(|(k, v)| (k.as_str(), v.as_deref())).collect();
    let vars: Vec<(&str, &str)> = inherited
        .iter()
        .filter(|(n, _)| !set.contains_key(n.as_str()))
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .chain(set.iter().filter_map(|(k, v)| Some((*k, (*v)?))))
        .collect();
    let mut files: Vec<PathBuf> = vec![PathBuf::from("/etc/openmpi/openmpi-mca-params.conf")];
    if let Some(home) = std::env::var_os("HOME") {
        files.push(PathBuf::from(home).join(".openmpi/mca-params.conf"));
    }
    let texts: Vec<String> = files.iter().filter_map(|f| std::fs::read_to_string(f).ok()).collect();
    UserMca {
        pml: crate::pmix::openmpi_user_chose_pml(vars.iter().copied(), &texts),
        rte: crate::pmix::OPENMPI_RTE_COMPONENTS
            .iter()
            .map(|(fw, _)| *fw)
            .filter(|fw| crate::pmix::openmpi_user_set(fw, vars.iter().copied(), &texts))
            .collect(),
    }
}

/// Where the registrations with libpmix stand. Step 0 is the job's namespace, step `k` local
/// rank `k - 1`; the step's number is its completion token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Registration {
    Waiting { step: usize, deadline: Instant },
    Done,
}

struct Active {
    lib: &'static Lib,
    engine: Engine<OpDone, ModexDone>,
    rx: mpsc::Receiver<Upcall>,
    layout: JobLayout,
    dir: PathBuf,
    /// Held while `dir` is in use, so that other daemons' sweeps leave it alone.
    _dir_lock: std::fs::File,
    lazy: bool,
    /// Bound local ranks' `PMIX_CPUSET` and `PMIX_LOCALITY_STRING`, by rank.
    locality: Vec<(u32, String, String)>,
    registration: Registration,
    /// The job's generation (job-scope restarts): in the registrations' completion tokens, so
    /// that a late completion of the previous generation's is not taken for this one's.
    generation: u32,
    /// What libpmix may still read of the registrations: dropped after `server_finalize`.
    _in_flight: Vec<InFlight>,
}

impl Drop for Active {
    fn drop(&mut self) {
        // Pending callbacks are dropped silently after this (ffi rule 4).
        let _ = self.lib.server_finalize();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The server while `PMIx_server_init` runs on its thread: what [`Active`] is built from.
struct Starting {
    /// First: a server that came up is stopped before its directory goes.
    init: InitThread,
    rx: mpsc::Receiver<Upcall>,
    layout: JobLayout,
    dir: DirGuard,
    dir_lock: std::fs::File,
    lazy: bool,
    locality: Vec<(u32, String, String)>,
    deadline: Instant,
}

/// The thread that runs `PMIx_server_init`, and its result: the loaded library, with the server
/// up.
struct InitThread {
    handle: Option<std::thread::JoinHandle<()>>,
    done: mpsc::Receiver<Result<&'static Lib>>,
}

impl Drop for InitThread {
    fn drop(&mut self) {
        // The job ends before the server was taken over. libpmix must not be stopped while its
        // start runs, which takes tens of milliseconds; one that never returns is left to the
        // daemon's exit.
        let Some(t) = self.handle.take() else { return };
        let give_up = Instant::now() + INIT_DRAIN;
        while !t.is_finished() && Instant::now() < give_up {
            std::thread::sleep(Duration::from_millis(2));
        }
        if !t.is_finished() {
            return;
        }
        let _ = t.join();
        if let Ok(Ok(lib)) = self.done.try_recv() {
            let _ = lib.server_finalize();
        }
    }
}

/// What the server's thread needs: everything owned, since libpmix's info lists stay on it.
struct ServerInit {
    dir: String,
    hostname: String,
    node: u32,
}

impl ServerInit {
    /// Loads libpmix and starts the server; upcalls go to `sink` from then on.
    fn run(self, sink: ffi::Sink) -> Result<&'static Lib> {
        let lib = ffi::load().map_err(|e| anyhow!("{e}"))?;
        let mut init = lib.info_list();
        init.add("pmix.srvr.tmpdir", Val::Str(&self.dir))?;
        init.add("pmix.sys.tmpdir", Val::Str(&self.dir))?;
        // The node's name as the job knows it, so libpmix finds itself in the node map.
        init.add("pmix.hname", Val::Str(&self.hostname))?;
        init.add("pmix.nodeid", Val::U32(self.node))?;
        // PMIX_SERVER_SHARE_TOPOLOGY: libpmix discovers the node's hwloc topology once and hands
        // it to the ranks in shared memory (an hwloc.sm file in `dir`). Open MPI 4.1 adopts it
        // instead of discovering the topology in every rank, which is most of MPI_Init's CPU
        // time on a full node: 64 ranks on 2 cores here went from 1.7 s to 1.1 s. A libpmix
        // older than 4 ignores the key and the ranks discover for themselves, as before.
        init.add("pmix.srvr.share", Val::Bool(true))?;
        let init = init.into_array()?;
        lib.server_init(&init, sink).with_context(|| format!("starting the PMIx server (libpmix {})", lib.version()))?;
        Ok(lib)
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

/// The libpmix call and the context of registration `step`, for its error message.
fn step_call(job: &JobView, step: usize) -> (&'static str, String) {
    match step {
        0 => ("PMIx_server_register_nspace", "registering the job with libpmix".to_string()),
        k => ("PMIx_server_register_client", format!("registering rank {} with libpmix", job.local_ranks()[k - 1])),
    }
}

impl Pmix {
    pub fn new(node: u32) -> Pmix {
        Pmix { node, active: None, starting: None, ranks_wanted: false, gave_up: false, early: Vec::new(), user_mca: None }
    }

    /// Whether `job`'s ranks get PMIx.
    pub fn wanted(job: &JobView) -> bool {
        job.launch().pmi.interface == Interface::Pmix
    }

    /// At the launch (the map and the local ranks' places are known): start this node's server
    /// on a thread of its own, so that libpmix's start-up overlaps the fabric exchange (and, on
    /// nodes that got the launch early, the start of the later daemons) instead of following it.
    /// It is CPU work, ~25 ms per daemon here: loading libpmix and hwloc's plugins, and the
    /// node's hwloc topology discovery for `pmix.srvr.share` (most of it). Where daemons share
    /// the CPUs (8 namespace nodes on 2 cores) that only moves the work; on separate machines it
    /// leaves the critical path. The registrations follow on the loop as soon as the server is
    /// up; [`Pmix::want_ranks`] says when the ranks may start. Nothing for a job without PMIx.
    pub fn begin(&mut self, job: &JobView, waker: &Arc<Waker>, binding: &Binding) -> Vec<Effect> {
        // Once per job: a server that failed already said so, and is not started again.
        if !Pmix::wanted(job) || self.active.is_some() || self.starting.is_some() || self.gave_up {
            return Vec::new();
        }
        match self.start_server(job, waker, binding) {
            Ok(s) => {
                self.starting = Some(s);
                Vec::new()
            }
            Err(e) => self.failed(e),
        }
    }

    fn start_server(&mut self, job: &JobView, waker: &Arc<Waker>, binding: &Binding) -> Result<Starting> {
        let node = self.node;
        let launch = job.launch();
        let map = job.map();
        let names: Vec<String> = launch.nodes.iter().map(|n| n.name.clone()).collect();
        let slots: Vec<u32> = launch.nodes.iter().map(|n| n.slots).collect();
        let mut layout = JobLayout::new(&launch.job_id, &names, &slots, map, node);
        if let Some(u) = launch.pmi.universe {
            layout.universe = u;
        }
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
        // Removed again if the server does not come up.
        let dir_guard = DirGuard(Some(dir.clone()));
        let dir_lock = crate::claim::hold(&dir).with_context(|| format!("locking the PMIx directory {}", dir.display()))?;
        let (tx, rx) = mpsc::channel::<Upcall>();
        let w = waker.clone();
        let sink: ffi::Sink = Box::new(move |u| {
            tx.send(u).map_err(|e| e.0)?;
            let _ = w.wake();
            Ok(())
        });
        let (done_tx, done) = mpsc::channel();
        let w = waker.clone();
        let init = ServerInit { dir: dir.to_string_lossy().into_owned(), hostname: layout.hostname(node).to_string(), node };
        let thread = std::thread::Builder::new()
            .name("pmix-init".into())
            .spawn(move || {
                let _ = done_tx.send(init.run(sink));
                let _ = w.wake();
            })
            .context("starting a thread for the PMIx server's start")?;
        Ok(Starting {
            init: InitThread { handle: Some(thread), done },
            rx,
            layout,
            dir: dir_guard,
            dir_lock,
            lazy: launch.pmi.lazy,
            locality: binding.pmix_locality(),
            deadline: Instant::now() + REGISTER_WAIT,
        })
    }

    /// The fabric exchange is over: the ranks may start once libpmix has registered every one of
    /// them ([`Effect::SpawnRanks`] now if it has, else from [`Pmix::on_wake`]). Starts the
    /// server if the launch did not.
    pub fn want_ranks(&mut self, job: &JobView, waker: &Arc<Waker>, binding: &Binding) -> Vec<Effect> {
        let fx = self.begin(job, waker, binding);
        if !fx.is_empty() {
            return fx;
        }
        self.ranks_wanted = true;
        if self.ready() {
            vec![Effect::SpawnRanks]
        } else {
            Vec::new()
        }
    }

    /// The server's thread ended: begin registering the job, or give up.
    fn server_started(&mut self, job: &JobView) -> Vec<Effect> {
        let Some(mut s) = self.starting.take() else { return Vec::new() };
        let lib = match s.init.done.try_recv() {
            Ok(Ok(lib)) => lib,
            Ok(Err(e)) => return self.failed(e),
            Err(mpsc::TryRecvError::Empty) => {
                self.starting = Some(s);
                return Vec::new();
            }
            Err(mpsc::TryRecvError::Disconnected) => return self.failed(anyhow!("starting the PMIx server: its thread ended without a word; internal error")),
        };
        if let Some(t) = s.init.handle.take() {
            let _ = t.join();
        }
        let node = self.node;
        let at = format!("node {node} ({})", launchers::local_hostname());
        let rank_node: Vec<u32> = job.map().ranks().iter().map(|p| p.node).collect();
        let engine = Engine::new(&job.launch().job_id, node, at, rank_node, job.fence_children().to_vec());
        let Starting { rx, layout, dir, dir_lock, lazy, locality, .. } = s;
        let mut active = Active {
            lib,
            engine,
            rx,
            layout,
            dir: dir.keep(),
            _dir_lock: dir_lock,
            lazy,
            locality,
            registration: Registration::Waiting { step: 0, deadline: Instant::now() },
            generation: 0,
            _in_flight: Vec::new(),
        };
        // On failure `active` is dropped here: the server stops and its directory goes.
        match register_from(&mut active, job, 0) {
            Err(e) => self.failed(e),
            Ok(done) => {
                self.active = Some(active);
                if done {
                    self.all_registered()
                } else {
                    Vec::new()
                }
            }
        }
    }

    /// Every registration completed: the messages that waited for the server, then the ranks
    /// (once the fabric exchange let them start).
    fn all_registered(&mut self) -> Vec<Effect> {
        let mut out = Vec::new();
        for (from, msg) in std::mem::take(&mut self.early) {
            out.extend(self.tree_msg(from, msg));
        }
        if self.ranks_wanted {
            out.push(Effect::SpawnRanks);
        }
        out
    }

    /// The server is starting or registrations are under way: the ranks wait for them.
    pub fn holds_ranks(&self) -> bool {
        self.starting.is_some() || self.active.as_ref().is_some_and(|a| a.registration != Registration::Done)
    }

    fn ready(&self) -> bool {
        self.active.as_ref().is_some_and(|a| a.registration == Registration::Done)
    }

    /// When the server's start or the registration in flight times out.
    pub fn next_deadline(&self) -> Option<Instant> {
        if let Some(s) = &self.starting {
            return Some(s.deadline);
        }
        match self.active.as_ref()?.registration {
            Registration::Waiting { deadline, .. } => Some(deadline),
            Registration::Done => None,
        }
    }

    /// A server start or a registration that did not complete in [`REGISTER_WAIT`] fails the
    /// node.
    pub fn check_timer(&mut self, job: &JobView, now: Instant) -> Vec<Effect> {
        let late = |deadline: Instant| now >= deadline;
        let no_completion = |call| CallError { call, status: ffi::PMIX_ERROR, text: format!("no completion within {} s", REGISTER_WAIT.as_secs()) };
        if let Some(s) = &self.starting {
            if !late(s.deadline) {
                return Vec::new();
            }
            let e = anyhow::Error::new(no_completion("PMIx_server_init")).context("starting the PMIx server");
            return self.failed(e);
        }
        let Some(Registration::Waiting { step, deadline }) = self.active.as_ref().map(|a| a.registration) else { return Vec::new() };
        if !late(deadline) {
            return Vec::new();
        }
        let (call, what) = step_call(job, step);
        self.failed(anyhow::Error::new(no_completion(call)).context(what))
    }

    /// Setup failed after it started: stop the server (which removes its directory).
    fn failed(&mut self, e: anyhow::Error) -> Vec<Effect> {
        self.active = None;
        self.starting = None;
        self.gave_up = true;
        vec![Effect::Fault(format!("{e:#}"))]
    }

    /// `rank`'s PMIx variables, on top of `env` (what the rank gets so far).
    pub fn rank_env(&mut self, job: &JobView, rank: u32, env: &[(String, Option<String>)], fabric: Option<fabrics::Fabric>) -> Result<EnvOps> {
        let Some(a) = self.active.as_ref() else { return Ok(Vec::new()) };
        let vars = a.lib.setup_fork(&a.layout.nspace, rank).with_context(|| format!("preparing the PMIx environment of rank {rank}"))?;
        let mut out: EnvOps = Vec::new();
        for (k, v) in vars {
            // The client picks its data store from this list (libpmix offers "ds21,ds12,hash").
            // With the shared-memory ds21, a rank's PMIx_Get for a local peer's committed key
            // came back "Not found" now and then (5 jobs in 200 of 8 ranks under Open MPI's
            // async modex: "PML add procs failed"); with the in-memory hash store, whose answers
            // come through the server, 200 in 200 passed and start-up time did not change
            // measurably (64 ranks, eager and lazy).
            let v = if k == "PMIX_GDS_MODULE" { "hash".to_string() } else { v };
            out.push((k, Some(v)));
        }
        out.extend(crate::pmix::openmpi_env(job.map(), rank, a.lazy).into_iter().map(|(k, v)| (k, Some(v))));
        let user = self.user_mca.get_or_insert_with(|| {
            let so_far: EnvOps = env.iter().chain(out.iter()).cloned().collect();
            user_mca(&so_far)
        });
        out.extend(crate::pmix::openmpi_fabric_env(fabric, user.pml).into_iter().map(|(k, v)| (k, Some(v))));
        out.extend(crate::pmix::openmpi_rte_env(&user.rte).into_iter().map(|(k, v)| (k, Some(v))));
        // The last change of a name is the one the rank sees; an inherited one counts unless
        // removed.
        let chose_hwloc = crate::pmix::HWLOC_PLUGIN_CHOICES.iter().any(|k| match env.iter().chain(out.iter()).rev().find(|(n, _)| n == k) {
            Some((_, v)) => v.is_some(),
            None => std::env::var_os(k).is_some(),
        });
        out.extend(crate::pmix::hwloc_plugin_env(chose_hwloc).into_iter().map(|(k, v)| (k, Some(v))));
        Ok(out)
    }

    /// The upcall waker fired: run every queued upcall.
    pub fn on_wake(&mut self, job: &JobView) -> Vec<Effect> {
        let mut out = self.server_started(job);
        while let Some(u) = self.active.as_ref().and_then(|a| a.rx.try_recv().ok()) {
            if let Upcall::Registered { token, status } = u {
                out.extend(self.registered(job, token, status));
                continue;
            }
            let Some(a) = self.active.as_mut() else { break };
            let e = &mut a.engine;
            let outs = match u {
                Upcall::Connected { proc, done } => {
                    out.push(Effect::Mark(Mark::PmiInit(proc.rank)));
                    e.connected(&proc, done)
                }
                Upcall::Finalized { proc, done } => e.finalized(&proc, done),
                Upcall::Abort { proc, status, message, done } => e.abort(&proc, status, &message, done),
                Upcall::Fence { procs, data, done, .. } => e.fence(&procs, &data, done),
                Upcall::DirectModex { proc, done } => e.direct_modex(&proc, done),
                Upcall::DmodexData { token, status, data } => e.dmodex_data(token, status, data),
                Upcall::Registered { .. } => Vec::new(),
            };
            out.extend(self.run(outs));
        }
        out
    }

    /// Registration `token` completed with `status`: issue the next one, or, after the last,
    /// let the ranks start.
    fn registered(&mut self, job: &JobView, token: u64, status: i32) -> Vec<Effect> {
        let Some(a) = self.active.as_mut() else { return Vec::new() };
        let Registration::Waiting { step, .. } = a.registration else { return Vec::new() };
        if token != step_token(a.generation, step) {
            return Vec::new();
        }
        let (call, what) = step_call(job, step);
        let next = a.lib.completion(call, status).context(what).and_then(|()| register_from(a, job, step + 1));
        match next {
            Err(e) => self.failed(e),
            Ok(false) => Vec::new(),
            Ok(true) => self.all_registered(),
        }
    }

    /// A PMIx tree message (see [`is_tree_msg`]) from the parent (`from` None) or from child
    /// node `from`.
    pub fn tree_msg(&mut self, from: Option<u32>, msg: Msg) -> Vec<Effect> {
        // A message just passing through needs no server here.
        if let Msg::PmixDmodexReq { node: target, .. } | Msg::PmixDmodexResp { to: target, .. } = &msg {
            if *target != self.node {
                return self.route(msg);
            }
        }
        if !self.ready() {
            self.early.push((from, msg));
            return Vec::new();
        }
        let Some(a) = self.active.as_mut() else { return Vec::new() };
        let e = &mut a.engine;
        let mark = matches!(msg, Msg::PmixFenceDone { .. }).then_some(Effect::Mark(Mark::Fence));
        let outs = match msg {
            Msg::PmixFence { seq, puts } => match from {
                Some(node) => e.child_fence(node, seq, puts),
                None => vec![Out::Fail(format!("node {}: a PMIx fence contribution came from the parent; internal error", self.node))],
            },
            Msg::PmixFenceDone { seq, puts } => e.fence_done(seq, puts),
            Msg::PmixDmodexReq { from, rank, id, .. } => e.dmodex_request(from, rank, id),
            Msg::PmixDmodexResp { id, status, data, .. } => e.dmodex_reply(id, status, data),
            _ => Vec::new(),
        };
        mark.into_iter().chain(self.run(outs)).collect()
    }

    /// Before a reaped rank's exit is reported.
    pub fn rank_exited(&mut self, rank: u32) -> Vec<Effect> {
        let Some(a) = self.active.as_mut() else { return Vec::new() };
        let outs = a.engine.rank_exited(rank);
        self.run(outs)
    }

    /// A job restart (every local rank is gone): the old generation's namespace is deregistered
    /// and the job registered again as `nspace-g<generation>`, with fences and direct modex from
    /// the start; the ranks wait for the registrations as at the launch. The server itself stays
    /// up (its start is the slow part).
    pub fn restart(&mut self, job: &JobView, generation: u32) -> Vec<Effect> {
        self.ranks_wanted = false;
        self.early.clear();
        let Some(a) = self.active.as_mut() else { return Vec::new() };
        let node = self.node;
        let nspace = crate::daemon::pmi::Pmi::kvsname(&job.launch().job_id, generation);
        let old = std::mem::replace(&mut a.layout.nspace, nspace);
        let step = a.lib.deregister_nspace(&old).with_context(|| format!("retiring PMIx namespace {old} for the restart"));
        let at = format!("node {node} ({})", launchers::local_hostname());
        let rank_node: Vec<u32> = job.map().ranks().iter().map(|p| p.node).collect();
        a.engine = Engine::new(&a.layout.nspace, node, at, rank_node, job.fence_children().to_vec());
        a.registration = Registration::Waiting { step: 0, deadline: Instant::now() + REGISTER_WAIT };
        a.generation = generation;
        let registered = step.and_then(|flight| {
            a._in_flight.push(flight);
            register_from(a, job, 0)
        });
        match registered {
            Err(e) => self.failed(e),
            Ok(done) => {
                if done {
                    self.all_registered()
                } else {
                    Vec::new()
                }
            }
        }
    }

    /// Stops libpmix and removes its directory.
    pub fn finish(&mut self) {
        self.active = None;
        self.starting = None;
    }

    /// A direct-modex message towards its node: handled here, or sent on.
    fn route(&mut self, msg: Msg) -> Vec<Effect> {
        let target = match &msg {
            Msg::PmixDmodexReq { node, .. } => *node,
            Msg::PmixDmodexResp { to, .. } => *to,
            _ => return Vec::new(),
        };
        if target == self.node {
            return self.tree_msg(None, msg);
        }
        vec![Effect::Towards(target, msg)]
    }

    fn run(&mut self, outs: Vec<Out<OpDone, ModexDone>>) -> Vec<Effect> {
        let mut fx = Vec::new();
        for o in outs {
            match o {
                Out::Op(op, status) => op.complete(status),
                Out::Modex(mx, status, data) => mx.complete(status, data),
                Out::Up(msg) => fx.push(Effect::Up(msg)),
                Out::Down(kids, msg) => fx.push(Effect::DownTo(kids, msg)),
                Out::Route(msg) => fx.extend(self.route(msg)),
                Out::AskLocal { rank, token } => {
                    let Some(a) = self.active.as_mut() else { break };
                    if let Err(e) = a.lib.dmodex_request(&a.layout.nspace, rank, token) {
                        let outs = a.engine.dmodex_data(token, e.status, Vec::new());
                        fx.extend(self.run(outs));
                    }
                }
                Out::Report { rank, kind, message } => fx.push(Effect::Up(Msg::PmiReport { rank, node: self.node, kind, message })),
                Out::Fail(message) => fx.push(Effect::Fault(message)),
            }
        }
        fx
    }
}

/// The completion token of registration `step` in `generation`.
fn step_token(generation: u32, step: usize) -> u64 {
    ((generation as u64) << 32) | step as u64
}

/// Issues registration `step` and those after it that libpmix completes at once. Every local rank
/// is registered before the first one starts: libpmix (4.2.2) defers a client's request for a
/// peer's data while "not all registered" and does not look at that request again when the last
/// registration arrives. With ranks registered one by one as they were spawned, a fast rank that
/// asked for an early rank's data (Open MPI's async modex checks rank 0's PML) waited forever,
/// about 1 job in 40 here. True when every registration is done.
fn register_from(a: &mut Active, job: &JobView, mut step: usize) -> Result<bool> {
    let local = job.local_ranks();
    loop {
        if step > local.len() {
            a.registration = Registration::Done;
            return Ok(true);
        }
        let (_, what) = step_call(job, step);
        let flight = if step == 0 {
            let info = job_info(a, job).context("describing the job to libpmix")?;
            a.lib.register_nspace(&a.layout.nspace, local.len() as u32, info, step_token(a.generation, 0))
        } else {
            a.lib.register_client(&a.layout.nspace, local[step - 1], step_token(a.generation, step))
        }
        .context(what)?;
        let done = flight.done;
        a._in_flight.push(flight);
        if !done {
            a.registration = Registration::Waiting { step, deadline: Instant::now() + REGISTER_WAIT };
            return Ok(false);
        }
        step += 1;
    }
}

/// The job description for `PMIx_server_register_nspace` (what worked with libpmix 4.2.2, see
/// pmi.md): maps, sizes, this node's peers, and every rank's placement.
fn job_info(a: &Active, job: &JobView) -> Result<InfoArray, CallError> {
    let (lib, l, map) = (a.lib, &a.layout, job.map());
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
        // Where a local rank is bound, so Open MPI sees which peers share a core, cache,
        // package or NUMA node (its shared-memory and collective choices).
        if let Some((_, cpuset, locality)) = a.locality.iter().find(|l| l.0 == r.rank) {
            p.add("pmix.cpuset", Val::Str(cpuset))?;
            p.add("pmix.locstr", Val::Str(locality))?;
        }
        let p = p.into_array()?;
        info.add("pmix.pdata", Val::Array(&p))?;
    }
    info.into_array()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_for_other_nodes_pass_through_without_a_server() {
        let mut p = Pmix::new(1);
        let req = Msg::PmixDmodexReq { from: 1, node: 4, rank: 9, id: 7 };
        assert!(is_tree_msg(&req));
        assert_eq!(p.tree_msg(None, req.clone()), vec![Effect::Towards(4, req)]);
        assert!(!p.holds_ranks() && p.next_deadline().is_none());
    }

    #[test]
    fn a_server_that_failed_is_not_started_again_and_holds_no_rank() {
        use crate::spec::AppContext;
        let app = AppContext { argv: vec!["true".into()], env: Vec::new(), cwd: "/".into(), np: Some(2), nodes: None, without_job_env: false };
        let mut launch = crate::job::fixture::launch("rl-gave-up", 1, 2, vec![app]);
        launch.pmi.interface = Interface::Pmix;
        let job = crate::job::fixture::view(launch, 0);
        let poll = mio::Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), mio::Token(0)).unwrap());
        let mut p = Pmix::new(0);
        let fx = p.failed(anyhow!("libpmix is broken"));
        assert_eq!(fx, vec![Effect::Fault("libpmix is broken".into())]);
        assert!(p.begin(&job, &waker, &Binding::default()).is_empty());
        assert!(p.want_ranks(&job, &waker, &Binding::default()).is_empty(), "no spawn without a server");
        assert!(p.starting.is_none() && p.active.is_none() && !p.holds_ranks() && p.next_deadline().is_none());
    }

    #[test]
    fn messages_for_this_node_wait_for_the_server() {
        let mut p = Pmix::new(1);
        let fence = Msg::PmixFence { seq: 0, puts: Vec::new() };
        assert!(p.tree_msg(Some(3), fence.clone()).is_empty());
        let resp = Msg::PmixDmodexResp { to: 1, id: 7, status: 0, data: Vec::new() };
        assert!(p.tree_msg(None, resp.clone()).is_empty());
        assert_eq!(p.early, vec![(Some(3), fence), (None, resp)]);
        assert!(!is_tree_msg(&Msg::Terminate));
    }
}
