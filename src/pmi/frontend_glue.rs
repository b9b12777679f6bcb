//! PMI at the front end: the root of the fence tree, the `--pmi-lazy` key directory, and the
//! one-line reports of what ranks did over PMI (abort, protocol errors, leaving without
//! finalize). Included from `frontend.rs` as a child module so it can reach the front end's state.

use super::{Frontend, Outcome};
use crate::fence::{Directory, Fence, Lookup};
use crate::spec::RankStatus;
use crate::wire::{Msg, PmiReportKind};
use mio::Token;
use std::collections::HashSet;

/// Exit status when a rank broke the PMI protocol or left without finalize after init: the
/// rank's own status (0, or the SIGTERM rlaunch sent) would not say that anything went wrong.
pub const PMI_FAILURE_EXIT: i32 = 1;
/// Report lines are one line: a rank's abort message is cut to this many characters.
const MESSAGE_MAX: usize = 512;

#[derive(Default)]
pub(super) struct FrontPmi {
    fence: Option<Fence>,
    directory: Option<Directory>,
    /// Ranks that closed PMI after init without finalize; their exit with status 0 is a failure.
    unfinalized: HashSet<u32>,
}

/// Keeps a rank-supplied message on one line and bounded.
fn one_line(s: &str) -> String {
    let mut out: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).take(MESSAGE_MAX).collect();
    if s.chars().count() > MESSAGE_MAX {
        out.push_str("...");
    }
    out.trim().to_string()
}

/// An abort code as an exit status: its low 8 bits, as exit(3) would give, but never 0, since an
/// abort must not look like success.
pub fn abort_exit_code(code: i32) -> i32 {
    match code & 0xff {
        0 => PMI_FAILURE_EXIT,
        c => c,
    }
}

impl Frontend {
    fn rank_label(&self, rank: u32) -> String {
        let pid = self.rank_pid.get(rank as usize).copied().unwrap_or(0);
        let host = self.plan.map.get(rank).map(|p| self.node_name(p.node)).unwrap_or_else(|| "?".into());
        format!("rank {rank} (pid {pid} on {host})")
    }

    fn root_fence(&mut self) -> &mut Fence {
        let (fanout, nnodes) = (self.plan.launch.fanout, self.plan.nodes.len() as u32);
        let map = &self.plan.map;
        self.pmi.fence.get_or_insert_with(|| {
            let children = crate::fence::participants(None, fanout, nnodes, |n| !map.ranks_on(n).is_empty());
            Fence::new("the front end", false, children)
        })
    }

    /// A `Fence` message from the direct child on link `t`.
    pub(super) fn pmi_fence(&mut self, t: Token, seq: u64, puts: Vec<(String, String)>) {
        let Some(node) = self.links.get(&t).and_then(|l| l.peer_link()) else { return };
        let step = self.root_fence().child(node, seq, puts);
        match step {
            Ok(None) => {}
            Ok(Some(ready)) => {
                let fence = self.root_fence();
                let _ = fence.done(ready.seq);
                let kids = fence.children().to_vec();
                if let Some(d) = self.pmi.directory.as_mut() {
                    d.fence_done();
                }
                let msg = Msg::FenceDone { seq: ready.seq, puts: ready.puts };
                self.send_to_nodes(&kids, &msg);
            }
            Err(e) => {
                if !self.terminating {
                    eprintln!("rlaunch: {e}");
                }
                self.fail(Outcome::LaunchFailed, crate::exitcode::LAUNCH_FAILED);
            }
        }
    }

    /// Sends to the direct children among `nodes`.
    fn send_to_nodes(&mut self, nodes: &[u32], msg: &Msg) {
        for l in self.links.values_mut() {
            if l.peer_link().is_some_and(|n| nodes.contains(&n)) {
                l.send(msg);
                let _ = l.flush();
            }
        }
    }

    fn directory(&mut self) -> &mut Directory {
        let map = &self.plan.map;
        self.pmi.directory.get_or_insert_with(|| {
            let answering = (0..map.num_nodes()).filter(|&n| !map.ranks_on(n).is_empty()).count() as u32;
            Directory::new(answering)
        })
    }

    /// `--pmi-lazy`: node `from` missed `key`.
    pub(super) fn pmi_kvs_get(&mut self, from: u32, key: String) {
        if !self.plan.launch.pmi.lazy {
            return;
        }
        match self.directory().request(from, &key) {
            Lookup::Known { value } => self.send_kvs_value(from, key, Some(value)),
            Lookup::Joined => {}
            Lookup::Ask { round } => {
                let kids = self.root_fence().children().to_vec();
                self.send_to_nodes(&kids, &Msg::KvsGet { from, key, round });
            }
        }
    }

    /// `--pmi-lazy`: one node's answer to a query.
    pub(super) fn pmi_kvs_value(&mut self, key: String, value: Option<String>, round: u64) {
        let Some(v) = self.directory().answer(round, &key, value) else { return };
        for to in v.askers {
            self.send_kvs_value(to, key.clone(), v.value.clone());
        }
    }

    fn send_kvs_value(&mut self, to: u32, key: String, value: Option<String>) {
        let fanout = self.plan.launch.fanout;
        let msg = Msg::KvsValue { to, key, value, round: 0 };
        for l in self.links.values_mut() {
            if l.peer_link().is_some_and(|n| crate::tree::in_subtree(n, to, fanout)) {
                l.send(&msg);
                let _ = l.flush();
            }
        }
    }

    /// A `PmiReport` from a daemon. Only the first failure of a job gets its line, like any
    /// other failure; warnings always do (see [`Frontend::pmi_warning`]).
    pub(super) fn pmi_report(&mut self, rank: Option<u32>, node: u32, kind: PmiReportKind, message: String) {
        let message = one_line(&message);
        match kind {
            PmiReportKind::Warning => self.pmi_warning(rank, node, &message),
            PmiReportKind::Unfinalized => {
                if let Some(r) = rank {
                    self.pmi.unfinalized.insert(r);
                }
            }
            PmiReportKind::Abort { code } => {
                if self.first_failure.is_some() || self.terminating {
                    return;
                }
                let Some(r) = rank else { return };
                self.first_failure = Some(r);
                let text = if message.is_empty() { String::new() } else { format!(": {message}") };
                eprintln!("rlaunch: {} called abort with code {code}{text}", self.rank_label(r));
                self.fail(Outcome::RankFailed, abort_exit_code(code));
            }
            PmiReportKind::ProtocolError => {
                if self.first_failure.is_some() || self.terminating {
                    return;
                }
                let who = match rank {
                    Some(r) => {
                        self.first_failure = Some(r);
                        self.rank_label(r)
                    }
                    None => format!("a process on {}", self.node_name(node)),
                };
                let running = self.running_ranks();
                eprintln!("rlaunch: PMI protocol error from {who}: {message}; terminating {running} ranks");
                self.fail(Outcome::RankFailed, PMI_FAILURE_EXIT);
            }
        }
    }

    /// Always printed, not only with -v: MPICH's normal traffic never causes one, and when one
    /// comes it explains an MPI error the program reports in its own, vaguer words (a failed
    /// MPI_Comm_spawn, a value too long for PMI-1).
    fn pmi_warning(&mut self, rank: Option<u32>, node: u32, message: &str) {
        let host = self.node_name(node);
        match rank {
            Some(r) => eprintln!("rlaunch: warning: PMI on {host}, rank {r}: {message}"),
            None => eprintln!("rlaunch: warning: PMI on {host}: {message}"),
        }
    }

    /// Called for a rank's exit status before the generic handling. True when it was handled
    /// here: an exit with status 0 after init without finalize.
    pub(super) fn pmi_rank_exit(&mut self, rank: u32, status: RankStatus) -> bool {
        if !status.is_success() || !self.pmi.unfinalized.contains(&rank) || self.first_failure.is_some() || self.terminating {
            return false;
        }
        self.first_failure = Some(rank);
        let running = self.running_ranks();
        let rest = if running > 0 { format!("; terminating {running} other rank{}", if running == 1 { "" } else { "s" }) } else { String::new() };
        eprintln!(
            "rlaunch: {} exited with status 0 after MPI_Init (PMI init) without MPI_Finalize (PMI finalize){rest}",
            self.rank_label(rank)
        );
        self.fail(Outcome::RankFailed, PMI_FAILURE_EXIT);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abort_codes_map_to_nonzero_exit_statuses() {
        assert_eq!(abort_exit_code(7), 7);
        assert_eq!(abort_exit_code(0), PMI_FAILURE_EXIT);
        assert_eq!(abort_exit_code(256), PMI_FAILURE_EXIT);
        assert_eq!(abort_exit_code(-1), 255);
        assert_eq!(abort_exit_code(300), 44);
    }

    #[test]
    fn messages_are_kept_on_one_bounded_line() {
        assert_eq!(one_line("bad\nthing\t "), "bad thing");
        let long = "x".repeat(2000);
        assert_eq!(one_line(&long).len(), MESSAGE_MAX + 3);
    }
}
