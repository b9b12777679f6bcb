//! The daemon's side of `--max-restarts`: the front end decides, the daemon carries out. Rank
//! scope: start the named ranks again on this node, through the same spawn path as at the launch
//! (same binding, same environment, a fresh PMI socket). Job scope: end every local rank (the
//! terminate path), say `RestartStopped` once all are reported, and on `RestartJob` start them all
//! again as the next generation with fresh PMI/PMIx state. Every rank learns how often it was
//! restarted (`RLAUNCH_RESTARTS`) and the job's generation (`RLAUNCH_GENERATION`).

use super::effect::Effect;
use super::pmi::Pmi;
use super::pmix::Pmix;
use super::ranks::Ranks;
use crate::job::JobView;
use crate::wire::Msg;
use std::collections::HashMap;

#[derive(Debug, Default)]
pub struct Restarts {
    node: u32,
    generation: u32,
    /// Rank scope: the restart count of each restarted rank (others: the generation).
    counts: HashMap<u32, u32>,
    /// Job scope: from `RestartStop` until `RestartJob`: the generation being prepared, and
    /// whether `RestartStopped` went up.
    stopping: Option<(u32, bool)>,
}

impl Restarts {
    pub fn new(node: u32) -> Restarts {
        Restarts { node, ..Restarts::default() }
    }

    /// The environment `rank` gets on top of the job's.
    pub fn env(&self, rank: u32) -> [(String, Option<String>); 2] {
        let n = self.counts.get(&rank).copied().unwrap_or(self.generation);
        [("RLAUNCH_RESTARTS".into(), Some(n.to_string())), ("RLAUNCH_GENERATION".into(), Some(self.generation.to_string()))]
    }

    /// A restart message from the parent; `children`: this daemon's, which `RestartStop` and
    /// `RestartJob` go on to first.
    pub fn on_msg(&mut self, msg: Msg, children: Vec<u32>) -> Vec<Effect> {
        let mut out = Vec::new();
        if matches!(msg, Msg::RestartStop { .. } | Msg::RestartJob { .. }) && !children.is_empty() {
            out.push(Effect::DownTo(children, msg.clone()));
        }
        out.extend(self.act(msg));
        out
    }

    fn act(&mut self, msg: Msg) -> Vec<Effect> {
        match msg {
            Msg::RestartRanks { node, ranks } if node != self.node => vec![Effect::Below(node, Msg::RestartRanks { node, ranks })],
            Msg::RestartRanks { ranks, .. } => {
                self.counts.extend(ranks.iter().copied());
                vec![Effect::Respawn(ranks.into_iter().map(|(r, _)| r).collect())]
            }
            Msg::RestartStop { generation } => {
                self.stopping = Some((generation, false));
                vec![Effect::StopRanks]
            }
            Msg::RestartJob { generation } => {
                if self.stopping.take().map(|(g, _)| g) != Some(generation) {
                    return vec![Effect::Fault(format!("told to start generation {generation} without having stopped for it; internal error"))];
                }
                self.generation = generation;
                self.counts.clear();
                vec![Effect::NewGeneration(generation)]
            }
            _ => Vec::new(),
        }
    }

    /// Job scope, once every local rank is reported: `RestartStopped`, once.
    pub fn stopped(&mut self, all_reported: bool) -> Option<Msg> {
        match self.stopping.as_mut() {
            Some((generation, said @ false)) if all_reported => {
                *said = true;
                Some(Msg::RestartStopped { node: self.node, generation: *generation })
            }
            _ => None,
        }
    }

    /// Between `RestartStop` and `RestartJob` the node is not done, whatever its ranks did.
    pub fn holds_done(&self) -> bool {
        self.stopping.is_some()
    }
}

/// `RestartJob` reached this node (every node stopped): ranks may start again, with PMI and PMIx
/// as new for generation `generation`; then the ranks start as at the launch.
pub fn new_generation(generation: u32, ranks: &mut Ranks, pmi: &mut Pmi, pmix: &mut Pmix, job: Option<&JobView>) -> Vec<Effect> {
    ranks.resume();
    pmi.restart(generation);
    let mut fx = job.map_or(Vec::new(), |job| pmix.restart(job, generation));
    fx.push(Effect::StartRanks);
    fx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(r: &Restarts, rank: u32) -> (String, String) {
        let [(_, n), (_, g)] = r.env(rank);
        (n.unwrap(), g.unwrap())
    }

    #[test]
    fn rank_scope_respawns_here_or_passes_on() {
        let mut r = Restarts::new(2);
        assert_eq!(env(&r, 5), ("0".into(), "0".into()), "a first start says so too");
        let other = Msg::RestartRanks { node: 4, ranks: vec![(9, 1)] };
        assert_eq!(r.on_msg(other.clone(), vec![3, 4]), vec![Effect::Below(4, other)]);
        assert_eq!(r.on_msg(Msg::RestartRanks { node: 2, ranks: vec![(5, 2)] }, vec![3]), vec![Effect::Respawn(vec![5])]);
        assert_eq!(env(&r, 5), ("2".into(), "0".into()));
        assert_eq!(env(&r, 6), ("0".into(), "0".into()));
    }

    #[test]
    fn job_scope_stops_says_so_once_and_starts_the_next_generation() {
        let mut r = Restarts::new(0);
        let stop = Msg::RestartStop { generation: 1 };
        assert_eq!(r.on_msg(stop.clone(), vec![1, 2]), vec![Effect::DownTo(vec![1, 2], stop), Effect::StopRanks]);
        assert!(r.holds_done());
        assert_eq!(r.stopped(false), None);
        assert_eq!(r.stopped(true), Some(Msg::RestartStopped { node: 0, generation: 1 }));
        assert_eq!(r.stopped(true), None);
        assert!(r.holds_done(), "until the next generation starts");
        assert_eq!(r.on_msg(Msg::RestartJob { generation: 1 }, Vec::new()), vec![Effect::NewGeneration(1)]);
        assert!(!r.holds_done());
        assert_eq!(env(&r, 3), ("1".into(), "1".into()));
        assert!(matches!(r.on_msg(Msg::RestartJob { generation: 2 }, Vec::new()).as_slice(), [Effect::Fault(_)]));
    }
}
