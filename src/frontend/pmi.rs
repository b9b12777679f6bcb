//! PMI and PMIx at the root of the tree: the front end completes their fences (one root-fence
//! helper, [`Fence::root_contribution`], for both), runs the `--pmi-lazy` key directory, turns
//! direct-modex traffic between subtrees, and turns what ranks did over PMI (abort, protocol
//! errors, leaving without finalize, warnings) into verdict failures and lines.

use super::effect::Effect;
use super::verdict::Failure;
use crate::fence::{Directory, Fence, FenceError, Lookup, Puts};
use crate::job::JobView;
use crate::spec::RankStatus;
use crate::wire::{Msg, PmiReportKind};
use std::collections::HashSet;

/// Report lines are one line: a rank's abort message is cut to this many characters.
const MESSAGE_MAX: usize = 512;

/// Keeps a rank-supplied message on one line and bounded.
fn one_line(s: &str) -> String {
    let mut out: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).take(MESSAGE_MAX).collect();
    if s.chars().count() > MESSAGE_MAX {
        out.push_str("...");
    }
    out.trim().to_string()
}

/// Which fence tree a contribution belongs to: PMI and PMIx fences are numbered apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FenceKind {
    Pmi,
    Pmix,
}

#[derive(Default)]
pub struct RootPmi {
    pmi_fence: Option<Fence>,
    pmix_fence: Option<Fence>,
    directory: Option<Directory>,
    /// Ranks that closed PMI after init without finalize; their exit with status 0 is a failure.
    unfinalized: HashSet<u32>,
}

impl RootPmi {
    /// A `Fence` or `PmixFence` from direct child `node`, whichever path brought it.
    pub fn fence_from_child(&mut self, job: &JobView, node: u32, msg: Msg) -> Vec<Effect> {
        match msg {
            Msg::Fence { seq, puts } => self.fence(job, FenceKind::Pmi, node, seq, puts),
            Msg::PmixFence { seq, puts } => self.fence(job, FenceKind::Pmix, node, seq, puts),
            _ => Vec::new(),
        }
    }

    /// A fence contribution from direct child `node`.
    pub fn fence(&mut self, job: &JobView, kind: FenceKind, node: u32, seq: u64, puts: Puts) -> Vec<Effect> {
        let slot = match kind {
            FenceKind::Pmi => &mut self.pmi_fence,
            FenceKind::Pmix => &mut self.pmix_fence,
        };
        let fence = slot.get_or_insert_with(|| Fence::root(job.fence_children().to_vec()));
        match fence.root_contribution(node, seq, puts) {
            Ok(None) => Vec::new(),
            Ok(Some(ready)) => {
                let kids = fence.children().to_vec();
                let msg = match kind {
                    FenceKind::Pmi => {
                        // Values may change after a fence: lazily fetched ones are stale now.
                        if let Some(d) = self.directory.as_mut() {
                            d.fence_done();
                        }
                        Msg::FenceDone { seq: ready.seq, puts: ready.puts }
                    }
                    FenceKind::Pmix => Msg::PmixFenceDone { seq: ready.seq, puts: ready.puts },
                };
                vec![Effect::DownTo(kids, msg)]
            }
            Err(e) => vec![Effect::Fail(Failure::FenceError { message: fence_message(kind, &e) })],
        }
    }

    /// `--pmi-lazy`: node `from` missed `key`.
    pub fn kvs_get(&mut self, job: &JobView, from: u32, key: String) -> Vec<Effect> {
        if !job.launch().pmi.lazy {
            return Vec::new();
        }
        let answering = (0..job.map().num_nodes()).filter(|&n| job.has_ranks(n)).count() as u32;
        match self.directory.get_or_insert_with(|| Directory::new(answering)).request(from, &key) {
            Lookup::Known { value } => vec![kvs_value(from, key, Some(value))],
            Lookup::Joined => Vec::new(),
            Lookup::Ask { round } => vec![Effect::DownTo(job.fence_children().to_vec(), Msg::KvsGet { from, key, round })],
        }
    }

    /// `--pmi-lazy`: one node's answer to query `round`.
    pub fn kvs_value(&mut self, key: String, value: Option<String>, round: u64) -> Vec<Effect> {
        let Some(v) = self.directory.as_mut().and_then(|d| d.answer(round, &key, value)) else { return Vec::new() };
        v.askers.into_iter().map(|to| kvs_value(to, key.clone(), v.value.clone())).collect()
    }

    /// A `PmiReport` from node `node`'s daemon.
    pub fn report(&mut self, job: &JobView, rank: Option<u32>, node: u32, kind: PmiReportKind, message: &str) -> Vec<Effect> {
        let message = one_line(message);
        match kind {
            // Always printed, not only with -v: MPICH's normal traffic never causes one, and when
            // one comes it explains an MPI error the program reports in its own, vaguer words (a
            // failed MPI_Comm_spawn, a value too long for PMI-1).
            PmiReportKind::Warning => {
                let host = job.node_name(node);
                let line = match rank {
                    Some(r) => format!("rlaunch: warning: PMI on {host}, rank {r}: {message}"),
                    None => format!("rlaunch: warning: PMI on {host}: {message}"),
                };
                vec![Effect::Say(line)]
            }
            PmiReportKind::Unfinalized => {
                self.unfinalized.extend(rank);
                Vec::new()
            }
            PmiReportKind::Abort { code } => match rank {
                Some(rank) => vec![Effect::Fail(Failure::Abort { rank, code, message })],
                None => Vec::new(),
            },
            PmiReportKind::ProtocolError => vec![Effect::Fail(Failure::ProtocolError { rank, node, message })],
        }
    }

    /// Whether `rank` closed PMI after init without finalize (so an exit with 0 is a failure).
    pub fn left_without_finalize(&self, rank: u32) -> bool {
        self.unfinalized.contains(&rank)
    }

    /// What `rank`'s exit means for the verdict: an exit with status 0 after init without
    /// finalize is a failure of its own.
    pub fn exit_failure(&self, rank: u32, status: RankStatus) -> Failure {
        match status {
            RankStatus::Exited(0) if self.left_without_finalize(rank) => Failure::Unfinalized { rank },
            _ => Failure::RankExit { rank, status },
        }
    }
}

fn fence_message(kind: FenceKind, e: &FenceError) -> String {
    match kind {
        FenceKind::Pmi => e.to_string(),
        FenceKind::Pmix => format!("PMIx: {e}"),
    }
}

/// A lazy lookup's answer, routed down to the node that asked.
fn kvs_value(to: u32, key: String, value: Option<String>) -> Effect {
    Effect::Towards(to, Msg::KvsValue { to, key, value, round: 0 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::fixture;
    use crate::spec::AppContext;

    /// 4 nodes of 2 ranks, fan-out 2: FE -> 0,1; 0 -> 2,3.
    fn job(lazy: bool) -> JobView {
        let app = AppContext { argv: vec!["a".into()], env: Vec::new(), cwd: "/".into(), np: Some(8), nodes: None, without_job_env: false };
        let mut launch = fixture::launch("rl-t", 4, 2, vec![app]);
        launch.pmi.lazy = lazy;
        let map = crate::job::compute_map(&launch).unwrap();
        JobView::for_front_end(Box::new(launch), map)
    }

    #[test]
    fn the_root_fence_completes_once_every_child_contributed() {
        let j = job(false);
        let mut p = RootPmi::default();
        assert!(p.fence(&j, FenceKind::Pmi, 1, 1, vec![("b".into(), "1".into())]).is_empty());
        let out = p.fence(&j, FenceKind::Pmi, 0, 1, vec![("a".into(), "0".into())]);
        let [Effect::DownTo(kids, Msg::FenceDone { seq: 1, puts })] = out.as_slice() else { panic!("{out:?}") };
        assert_eq!(kids, &[0, 1]);
        assert_eq!(puts.len(), 2);
        // PMIx fences are counted apart from PMI's.
        assert!(p.fence(&j, FenceKind::Pmix, 0, 1, Vec::new()).is_empty());
        let out = p.fence(&j, FenceKind::Pmix, 1, 1, Vec::new());
        assert!(matches!(out.as_slice(), [Effect::DownTo(_, Msg::PmixFenceDone { seq: 1, .. })]), "{out:?}");
        // A node that is not a child of the front end breaks the fence: the job fails.
        let out = p.fence(&j, FenceKind::Pmix, 3, 2, Vec::new());
        let [Effect::Fail(Failure::FenceError { message })] = out.as_slice() else { panic!("{out:?}") };
        assert!(message.starts_with("PMIx: node 3 sent PMI fence data to the front end"), "{message}");
    }

    #[test]
    fn lazy_lookups_ask_every_node_once_and_answer_every_asker() {
        let j = job(true);
        let mut p = RootPmi::default();
        let out = p.kvs_get(&j, 2, "k".into());
        assert!(matches!(out.as_slice(), [Effect::DownTo(k, Msg::KvsGet { from: 2, round: 1, .. })] if k == &[0, 1]), "{out:?}");
        assert!(p.kvs_get(&j, 3, "k".into()).is_empty(), "joins the query under way");
        assert!(p.kvs_value("k".into(), None, 1).is_empty());
        let out = p.kvs_value("k".into(), Some("v".into()), 1);
        let tos: Vec<u32> = out.iter().map(|e| match e { Effect::Towards(to, Msg::KvsValue { value: Some(v), .. }) if v == "v" => *to, other => panic!("{other:?}") }).collect();
        assert_eq!(tos, [2, 3]);
        // Known now: answered at once, until the next fence.
        assert!(matches!(p.kvs_get(&j, 1, "k".into()).as_slice(), [Effect::Towards(1, _)]));
        // Without --pmi-lazy nothing is looked up.
        assert!(RootPmi::default().kvs_get(&job(false), 2, "k".into()).is_empty());
    }

    #[test]
    fn reports_become_failures_or_lines() {
        let j = job(false);
        let mut p = RootPmi::default();
        let out = p.report(&j, Some(3), 1, PmiReportKind::Abort { code: 7 }, "bad\ninput");
        assert!(matches!(out.as_slice(), [Effect::Fail(Failure::Abort { rank: 3, code: 7, message })] if message == "bad input"), "{out:?}");
        let out = p.report(&j, Some(3), 1, PmiReportKind::Warning, "unknown command");
        assert!(matches!(out.as_slice(), [Effect::Say(l)] if l == "rlaunch: warning: PMI on n1, rank 3: unknown command"), "{out:?}");
        assert!(!p.left_without_finalize(4));
        assert!(p.report(&j, Some(4), 2, PmiReportKind::Unfinalized, "").is_empty());
        assert!(p.left_without_finalize(4));
        let long = "x".repeat(2000);
        let out = p.report(&j, None, 0, PmiReportKind::ProtocolError, &long);
        assert!(matches!(out.as_slice(), [Effect::Fail(Failure::ProtocolError { rank: None, node: 0, message })] if message.len() == MESSAGE_MAX + 3));
    }
}
