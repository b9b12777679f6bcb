//! PMI in the daemon: the parts of `Daemon` that serve the local ranks' PMI sockets and run the
//! fence over the tree. Included from `daemon.rs` as a child module so it can reach the daemon's
//! state; the daemon calls in from a few hooks (rank start, events, messages, rank exit).

use super::Daemon;
use crate::fence::Fence;
use crate::pmi::host::{Mode, PmiHost, Prepared};
use crate::pmi::{Action, JobInfo};
use crate::wire::{Msg, PmiReportKind};
use anyhow::{Context, Result};

/// PMI state of one daemon, created when its ranks are about to start.
pub(super) struct DaemonPmi {
    host: PmiHost,
    fence: Fence,
    lazy: bool,
    /// Keys this node asked the front end for and has not had answered (`--pmi-lazy`).
    fetching: std::collections::HashSet<String>,
}


/// Descriptors the daemon holds per local rank: stdout, stderr, stdin and the PMI socket.
const FDS_PER_RANK: u64 = 4;
/// Descriptors for everything else: tree links, listeners, signal pipe, epoll.
const FDS_BASE: u64 = 256;

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

impl Daemon {
    /// Before the first rank starts: the engine for this node's ranks and the fence vertex.
    pub(super) fn pmi_setup(&mut self, map: &launchers::map::ProcMap, launch: &crate::wire::Launch) -> Result<()> {
        let job_id = &launch.job_id;
        let node = self.boot.node;
        ensure_fd_room(map.ranks_on(node).len());
        let job = JobInfo::from_map(job_id, map, node);
        let mode = if launch.pmi.port { Mode::Port } else { Mode::Fd };
        let mut host = PmiHost::new(job, mode, self.poll.registry()).context("opening the PMI_PORT listener")?;
        let lazy = launch.pmi.lazy;
        host.set_lazy(lazy);
        let has_ranks = |n: u32| !map.ranks_on(n).is_empty();
        let children = crate::fence::participants(Some(node), self.boot.fanout, self.boot.nnodes, has_ranks);
        let fence = Fence::new(format!("node {node} ({})", super::hostname()), has_ranks(node), children);
        self.pmi = Some(DaemonPmi { host, fence, lazy, fetching: Default::default() });
        Ok(())
    }

    /// Gives `rank` its PMI socket and environment; drop the result once the rank is spawned.
    pub(super) fn pmi_prepare(&mut self, rank: u32, cmd: &mut std::process::Command) -> Result<Option<Prepared>> {
        let Some(p) = self.pmi.as_mut() else { return Ok(None) };
        let prepared = p.host.prepare(rank, cmd, self.poll.registry()).with_context(|| format!("creating the PMI socket of rank {rank}"))?;
        Ok(Some(prepared))
    }

    pub(super) fn on_pmi_event(&mut self, ev: &mio::event::Event) {
        let Some(p) = self.pmi.as_mut() else { return };
        let closed = ev.is_read_closed() || ev.is_error();
        let actions = p.host.on_event(ev.token(), ev.is_readable(), ev.is_writable(), closed, self.poll.registry());
        self.pmi_actions(actions);
    }

    /// Whether a PMI socket has input left over from a budgeted read.
    pub(super) fn pmi_busy(&self) -> bool {
        self.pmi.as_ref().is_some_and(|p| p.host.more())
    }

    pub(super) fn pmi_read_more(&mut self) {
        let Some(p) = self.pmi.as_mut() else { return };
        if p.host.more() {
            let actions = p.host.read_more(self.poll.registry());
            self.pmi_actions(actions);
        }
    }

    /// Before a reaped rank's exit is reported: its last PMI words (abort, closing) go first.
    pub(super) fn pmi_rank_exited(&mut self, rank: u32) {
        let Some(p) = self.pmi.as_mut() else { return };
        let actions = p.host.rank_exited(rank, self.poll.registry());
        self.pmi_actions(actions);
    }

    fn pmi_report(&mut self, rank: Option<u32>, kind: PmiReportKind, message: String) {
        let node = self.boot.node;
        self.parent.send(&Msg::PmiReport { rank, node, kind, message });
    }

    fn pmi_actions(&mut self, actions: Vec<Action>) {
        for a in actions {
            match a {
                // The host writes replies itself.
                Action::Send { .. } => {}
                Action::FenceReady { seq, puts } => {
                    let Some(p) = self.pmi.as_mut() else { return };
                    // Lazy: the puts stay here and are fetched by whoever misses them.
                    let puts = if p.lazy { Vec::new() } else { puts };
                    let r = p.fence.local(seq, puts);
                    self.fence_step(r);
                }
                Action::Abort { rank, code, message } => self.pmi_report(Some(rank), PmiReportKind::Abort { code }, message),
                Action::ProtocolError { rank, message, .. } => self.pmi_report(rank, PmiReportKind::ProtocolError, message),
                Action::Warning { rank, message } => self.pmi_report(rank, PmiReportKind::Warning, message),
                Action::Vanished { rank, message } => self.pmi_report(Some(rank), PmiReportKind::Unfinalized, message),
                Action::Fetch { key } => {
                    let Some(p) = self.pmi.as_mut() else { return };
                    if p.fetching.insert(key.clone()) {
                        let from = self.boot.node;
                        self.parent.send(&Msg::KvsGet { from, key, round: 0 });
                    }
                }
                // The engine keeps this state itself; the daemon needs nothing more.
                Action::Initialized { .. } | Action::Finalized { .. } => {}
            }
        }
    }

    /// A fence vertex result: send the subtree's contribution up, or fail the job.
    fn fence_step(&mut self, r: Result<Option<crate::fence::Ready>, crate::fence::FenceError>) {
        match r {
            Ok(Some(ready)) => {
                self.parent.send(&Msg::Fence { seq: ready.seq, puts: ready.puts });
            }
            Ok(None) => {}
            Err(e) => {
                self.node_error(e.to_string());
                self.terminate_all();
            }
        }
    }

    /// A `Fence` message from child `node`.
    pub(super) fn pmi_fence_from_child(&mut self, node: u32, seq: u64, puts: Vec<(String, String)>) {
        let r = match self.pmi.as_mut() {
            Some(p) => p.fence.child(node, seq, puts),
            None => Err(crate::fence::FenceError::NotAParticipant { at: format!("node {}", self.boot.node), node }),
        };
        self.fence_step(r);
    }

    /// `FenceDone` from the parent: pass it on, then answer the local ranks.
    pub(super) fn pmi_fence_done(&mut self, seq: u64, puts: Vec<(String, String)>) {
        let Some(p) = self.pmi.as_mut() else { return };
        if let Err(e) = p.fence.done(seq) {
            self.node_error(e.to_string());
            self.terminate_all();
            return;
        }
        let kids = p.fence.children().to_vec();
        if !kids.is_empty() {
            let msg = Msg::FenceDone { seq, puts: puts.clone() };
            self.send_to_children(&kids, &msg);
        }
        let Some(p) = self.pmi.as_mut() else { return };
        if p.fence.has_local() {
            let actions = p.host.fence_done(seq, puts, self.poll.registry());
            self.pmi_actions(actions);
        }
    }

    fn send_to_children(&mut self, nodes: &[u32], msg: &Msg) {
        for c in self.children.values_mut() {
            if c.node.is_some_and(|n| nodes.contains(&n)) {
                c.link.send(msg);
                let _ = c.link.flush();
            }
        }
    }

    /// `--pmi-lazy`: the front end asks every node for `key` on behalf of node `from`. Nodes with
    /// ranks answer (found or not) so the front end knows when to give up.
    pub(super) fn pmi_kvs_query(&mut self, from: u32, key: String, round: u64) {
        let Some(p) = self.pmi.as_ref() else { return };
        let kids = p.fence.children().to_vec();
        let answer = p.fence.has_local().then(|| p.host.lookup(&key).map(str::to_string));
        if !kids.is_empty() {
            self.send_to_children(&kids, &Msg::KvsGet { from, key: key.clone(), round });
        }
        if let Some(value) = answer {
            self.parent.send(&Msg::KvsValue { to: from, key, value, round });
        }
    }

    /// `--pmi-lazy`: an answer on its way down to node `to`.
    pub(super) fn pmi_kvs_value(&mut self, to: u32, key: String, value: Option<String>, round: u64) {
        if to != self.boot.node {
            let fanout = self.boot.fanout;
            let msg = Msg::KvsValue { to, key, value, round };
            for c in self.children.values_mut() {
                if c.node.is_some_and(|n| crate::tree::in_subtree(n, to, fanout)) {
                    c.link.send(&msg);
                    let _ = c.link.flush();
                }
            }
            return;
        }
        let Some(p) = self.pmi.as_mut() else { return };
        p.fetching.remove(&key);
        let actions = p.host.fetched(key, value, self.poll.registry());
        self.pmi_actions(actions);
    }
}
