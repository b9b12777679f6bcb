//! PMI-1/PMI-2 for the local ranks: their sockets ([`PmiHost`]), this node's vertex of the fence
//! tree ([`Fence`]) and, with `--pmi-lazy`, fetching keys other nodes hold.

use super::effect::Effect;
use crate::timeline::Mark;
use crate::fence::{Fence, FenceError, Ready};
use crate::job::JobView;
use crate::pmi::host::{EnvOps, Mode, PmiHost, Prepared};
use crate::pmi::{Action, JobInfo};
use crate::wire::{Msg, PmiReportKind};
use anyhow::{Context, Result};
use mio::Registry;
use std::collections::HashSet;

/// Descriptors the daemon holds per local rank: stdout, stderr, stdin, the PMI and image sockets.
const FDS_PER_RANK: u64 = 5;
/// Descriptors for everything else: tree links, listeners, signal pipe, epoll.
const FDS_BASE: u64 = 256;

/// PMI of one daemon; serves nothing until [`Pmi::setup`], just before the ranks start.
pub struct Pmi {
    node: u32,
    active: Option<Active>,
    /// The job's generation (job-scope restarts): part of the KVS name from 1 on.
    generation: u32,
}

struct Active {
    host: PmiHost,
    fence: Fence,
    lazy: bool,
    /// Keys this node asked the front end for and has not had answered (`--pmi-lazy`).
    fetching: HashSet<String>,
}

/// Raises the soft open-file limit towards the hard one when the ranks of this node need more
/// than it allows: at the common soft limit of 1024 a daemon runs out at about 250 ranks. The
/// ranks inherit the higher soft limit, which is harmless (it stays below the hard limit).
fn ensure_fd_room(local_ranks: usize) {
    let need = FDS_BASE + FDS_PER_RANK * local_ranks as u64;
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 || lim.rlim_cur >= need {
            return;
        }
        lim.rlim_cur = need.min(lim.rlim_max);
        // Failure leaves the old limit; spawning then fails with EMFILE, which is reported.
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
}

impl Pmi {
    pub fn new(node: u32) -> Pmi {
        Pmi { node, active: None, generation: 0 }
    }

    /// A job restart: the old ranks' sockets, keys and fence state go; [`Pmi::setup`] starts
    /// generation `generation` with a KVS of its own name and fences from the start.
    pub fn restart(&mut self, generation: u32) {
        self.active = None;
        self.generation = generation;
    }

    /// The KVS name of `job_id` in `generation`: a restarted job's ranks must not mistake the
    /// old generation's keys for theirs.
    pub fn kvsname(job_id: &str, generation: u32) -> String {
        match generation {
            0 => job_id.to_string(),
            g => format!("{job_id}-g{g}"),
        }
    }

    /// Before the first rank starts: the engine for this node's ranks and the fence vertex.
    pub fn setup(&mut self, job: &JobView, registry: &Registry) -> Result<()> {
        let launch = job.launch();
        let node = self.node;
        ensure_fd_room(job.local_ranks().len());
        let mut info = JobInfo::from_map(&Pmi::kvsname(&launch.job_id, self.generation), job.map(), node);
        if let Some(u) = launch.pmi.universe {
            info.universe_size = u;
        }
        let mode = if launch.pmi.port { Mode::Port } else { Mode::Fd };
        let mut host = PmiHost::new(info, mode, registry).context("opening the PMI_PORT listener")?;
        let lazy = launch.pmi.lazy;
        host.set_lazy(lazy);
        let at = format!("node {node} ({})", launchers::local_hostname());
        let fence = Fence::new(at, job.has_ranks(node), job.fence_children().to_vec());
        self.active = Some(Active { host, fence, lazy, fetching: HashSet::new() });
        Ok(())
    }

    /// `rank`'s PMI socket and variables; drop the [`Prepared`] once the rank is spawned.
    pub fn prepare(&mut self, rank: u32, registry: &Registry) -> Result<Option<(EnvOps, Prepared)>> {
        let Some(a) = self.active.as_mut() else { return Ok(None) };
        let prepared = a.host.prepare_env(rank, registry).with_context(|| format!("creating the PMI socket of rank {rank}"))?;
        Ok(Some(prepared))
    }

    pub fn on_event(&mut self, ev: &mio::event::Event, registry: &Registry) -> Vec<Effect> {
        let Some(a) = self.active.as_mut() else { return Vec::new() };
        let closed = ev.is_read_closed() || ev.is_error();
        let actions = a.host.on_event(ev.token(), ev.is_readable(), ev.is_writable(), closed, registry);
        self.actions(actions)
    }

    /// Whether a PMI socket has input left over from a budgeted read.
    pub fn busy(&self) -> bool {
        self.active.as_ref().is_some_and(|a| a.host.more())
    }

    pub fn read_more(&mut self, registry: &Registry) -> Vec<Effect> {
        let Some(a) = self.active.as_mut() else { return Vec::new() };
        if !a.host.more() {
            return Vec::new();
        }
        let actions = a.host.read_more(registry);
        self.actions(actions)
    }

    /// Before a reaped rank's exit is reported: its last PMI words (abort, closing) go first.
    pub fn rank_exited(&mut self, rank: u32, registry: &Registry) -> Vec<Effect> {
        let Some(a) = self.active.as_mut() else { return Vec::new() };
        let actions = a.host.rank_exited(rank, registry);
        self.actions(actions)
    }

    fn report(&self, rank: Option<u32>, kind: PmiReportKind, message: String) -> Effect {
        Effect::Up(Msg::PmiReport { rank, node: self.node, kind, message })
    }

    fn actions(&mut self, actions: Vec<Action>) -> Vec<Effect> {
        let mut out = Vec::new();
        for a in actions {
            match a {
                // The host writes replies itself.
                Action::Send { .. } => {}
                Action::FenceReady { seq, puts } => {
                    let Some(p) = self.active.as_mut() else { break };
                    // Lazy: the puts stay here and are fetched by whoever misses them.
                    let puts = if p.lazy { Vec::new() } else { puts };
                    out.extend(fence_step(p.fence.local(seq, puts)));
                }
                Action::Abort { rank, code, message } => out.push(self.report(Some(rank), PmiReportKind::Abort { code }, message)),
                Action::ProtocolError { rank, message, .. } => out.push(self.report(rank, PmiReportKind::ProtocolError, message)),
                Action::Warning { rank, message } => out.push(self.report(rank, PmiReportKind::Warning, message)),
                Action::Vanished { rank, message } => out.push(self.report(Some(rank), PmiReportKind::Unfinalized, message)),
                Action::Fetch { key } => {
                    let Some(p) = self.active.as_mut() else { break };
                    if p.fetching.insert(key.clone()) {
                        out.push(Effect::Up(Msg::KvsGet { from: self.node, key, round: 0 }));
                    }
                }
                Action::Initialized { rank, .. } => out.push(Effect::Mark(Mark::PmiInit(rank))),
                // The engine keeps this state itself; the daemon needs nothing more.
                Action::Finalized { .. } => {}
            }
        }
        out
    }

    /// A `Fence` message from child `node`.
    pub fn fence_from_child(&mut self, node: u32, seq: u64, puts: Vec<(String, String)>) -> Vec<Effect> {
        let r = match self.active.as_mut() {
            Some(p) => p.fence.child(node, seq, puts),
            None => Err(FenceError::NotAParticipant { at: format!("node {}", self.node), node }),
        };
        fence_step(r)
    }

    /// `FenceDone` from the parent: pass it on, then answer the local ranks.
    pub fn fence_done(&mut self, seq: u64, puts: Vec<(String, String)>, registry: &Registry) -> Vec<Effect> {
        let Some(p) = self.active.as_mut() else { return Vec::new() };
        if let Err(e) = p.fence.done(seq) {
            return vec![Effect::Fault(e.to_string())];
        }
        let mut out = vec![Effect::Mark(Mark::Fence)];
        let kids = p.fence.children().to_vec();
        if !kids.is_empty() {
            out.push(Effect::DownTo(kids, Msg::FenceDone { seq, puts: puts.clone() }));
        }
        if p.fence.has_local() {
            let actions = p.host.fence_done(seq, puts, registry);
            out.extend(self.actions(actions));
        }
        out
    }

    /// `--pmi-lazy`: the front end asks every node for `key` on behalf of node `from`. Nodes with
    /// ranks answer (found or not) so the front end knows when to give up.
    pub fn kvs_query(&self, from: u32, key: String, round: u64) -> Vec<Effect> {
        let Some(p) = self.active.as_ref() else { return Vec::new() };
        let mut out = Vec::new();
        let kids = p.fence.children().to_vec();
        let answer = p.fence.has_local().then(|| p.host.lookup(&key).map(str::to_string));
        if !kids.is_empty() {
            out.push(Effect::DownTo(kids, Msg::KvsGet { from, key: key.clone(), round }));
        }
        if let Some(value) = answer {
            out.push(Effect::Up(Msg::KvsValue { to: from, key, value, round }));
        }
        out
    }

    /// `--pmi-lazy`: an answer on its way down to node `to`.
    pub fn kvs_value(&mut self, to: u32, key: String, value: Option<String>, round: u64, registry: &Registry) -> Vec<Effect> {
        if to != self.node {
            return vec![Effect::Below(to, Msg::KvsValue { to, key, value, round })];
        }
        let Some(p) = self.active.as_mut() else { return Vec::new() };
        p.fetching.remove(&key);
        let actions = p.host.fetched(key, value, registry);
        self.actions(actions)
    }
}

/// A fence vertex result: send the subtree's contribution up, or fail the job.
fn fence_step(r: Result<Option<Ready>, FenceError>) -> Vec<Effect> {
    match r {
        Ok(Some(ready)) => vec![Effect::Up(Msg::Fence { seq: ready.seq, puts: ready.puts })],
        Ok(None) => Vec::new(),
        Err(e) => vec![Effect::Fault(e.to_string())],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::fixture;
    use crate::spec::AppContext;

    /// Three nodes of one slot, fan-out 2, 3 ranks: node 0 has one rank and child node 2.
    fn job(node: u32, lazy: bool) -> JobView {
        let app = AppContext { argv: vec!["true".into()], env: Vec::new(), cwd: String::new(), np: Some(3), nodes: None, without_job_env: false };
        let mut launch = fixture::launch("rl-pmi", 3, 1, vec![app]);
        launch.pmi.lazy = lazy;
        fixture::view(launch, node)
    }

    #[test]
    fn a_fence_from_a_child_before_setup_fails_the_node() {
        let mut p = Pmi::new(0);
        let fx = p.fence_from_child(2, 0, Vec::new());
        assert!(matches!(&fx[..], [Effect::Fault(m)] if m.contains("node 0")), "{fx:?}");
    }

    #[test]
    fn a_child_contribution_waits_for_the_local_ranks() {
        let poll = mio::Poll::new().unwrap();
        let mut p = Pmi::new(0);
        p.setup(&job(0, false), poll.registry()).unwrap();
        let fx = p.fence_from_child(2, 1, vec![("k".into(), "v".into())]);
        assert!(fx.is_empty(), "{fx:?}");
        // Node 1 is not below node 0.
        assert!(matches!(&p.fence_from_child(1, 1, Vec::new())[..], [Effect::Fault(_)]));
    }

    #[test]
    fn fence_done_goes_down_before_the_ranks_are_answered() {
        let poll = mio::Poll::new().unwrap();
        let mut p = Pmi::new(0);
        p.setup(&job(0, false), poll.registry()).unwrap();
        // Without contributions the fence is not open: finishing it is a protocol fault.
        let fx = p.fence_done(1, Vec::new(), poll.registry());
        assert!(matches!(&fx[..], [Effect::Fault(_)]), "{fx:?}");
    }

    #[test]
    fn lazy_queries_go_down_and_are_answered_here() {
        let poll = mio::Poll::new().unwrap();
        let mut p = Pmi::new(0);
        p.setup(&job(0, true), poll.registry()).unwrap();
        let fx = p.kvs_query(1, "k".into(), 3);
        assert_eq!(
            fx,
            vec![
                Effect::DownTo(vec![2], Msg::KvsGet { from: 1, key: "k".into(), round: 3 }),
                Effect::Up(Msg::KvsValue { to: 1, key: "k".into(), value: None, round: 3 }),
            ]
        );
        // An answer for node 2 passes through, down its subtree.
        let fx = p.kvs_value(2, "k".into(), None, 3, poll.registry());
        assert_eq!(fx, vec![Effect::Below(2, Msg::KvsValue { to: 2, key: "k".into(), value: None, round: 3 })]);
    }
}
