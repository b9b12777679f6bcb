//! The front end's side of `--max-restarts`: every rank failure goes through the restart
//! [`Policy`] before the verdict, and its decisions become effects — the restart messages to the
//! daemons, the job's bookkeeping (the rank's status and pid forgotten, its node not done), and
//! for a job restart the wait for every node to stop before the next generation starts with the
//! front end's PMI state reset.
//!
//! Stale news: a node that was told to restart may have said `NodeDone` before it heard; until
//! its `Started` arrives (links keep order), a `NodeDone` from it is from before the restart.

use super::daemons::Daemons;
use super::effect::Effect;
use super::pmi::RootPmi;
use super::ranks::Ranks;
use super::restart::{Decision, Input, Policy, Restart};
use super::verdict::Failure;
use crate::job::JobView;
use crate::spec::{RestartScope, RestartSpec};
use crate::wire::Msg;
use std::collections::BTreeSet;
use std::time::Duration;

pub struct Recovery {
    policy: Policy,
    /// Nodes told to restart ranks that have not sent `Started` since.
    awaiting: BTreeSet<u32>,
    /// Job scope: the nodes whose ranks are all gone for the generation under way.
    stopped: BTreeSet<u32>,
    /// An abort held by the policy, for the verdict if it stands.
    held: Option<Failure>,
}

/// The job state a decision changes.
pub struct JobState<'a> {
    pub ranks: &'a mut Ranks,
    pub daemons: &'a mut Daemons,
    /// The verdict already ends the job: nothing is restarted.
    pub ending: bool,
    /// Since rlaunch started.
    pub at: Duration,
}

impl<'a> JobState<'a> {
    pub fn of(ranks: &'a mut Ranks, daemons: &'a mut Daemons, ending: bool, t0: std::time::Instant) -> JobState<'a> {
        JobState { ranks, daemons, ending, at: t0.elapsed() }
    }
}

impl Recovery {
    pub fn new(spec: RestartSpec, job: &JobView) -> Recovery {
        let rank_node = job.map().ranks().iter().map(|p| p.node).collect();
        let names = (0..job.launch().nodes.len() as u32).map(|n| job.node_name(n)).collect();
        Recovery { policy: Policy::new(spec, rank_node, names), awaiting: BTreeSet::new(), stopped: BTreeSet::new(), held: None }
    }

    pub fn log(&self) -> &[Restart] {
        self.policy.log()
    }

    pub fn generation(&self) -> u32 {
        self.policy.generation()
    }

    /// A job restart is stopping the ranks: what they still say (PMI reports, fences) is dropped.
    pub fn stopping(&self) -> bool {
        self.policy.stopping().is_some()
    }

    /// The user interrupted or terminated the job: nothing more is restarted.
    pub fn close(&mut self) {
        self.policy.close();
    }

    /// What the ranks' PMI reports mean (`fx`, as [`RootPmi::report`] words them): an abort may
    /// be held for a moment, as the effect of a crash whose news is on its way.
    pub fn screen(&mut self, fx: Vec<Effect>, ending: bool, at: Duration) -> Vec<Effect> {
        let mut out = Vec::new();
        for e in fx {
            match e {
                Effect::Fail(f @ Failure::Abort { rank, .. }) if !ending => match self.policy.decide(Input::Aborted { rank, at }) {
                    Decision::Hold => _ = self.held.get_or_insert(f),
                    Decision::Ignore => {}
                    _ => out.push(Effect::Fail(f)),
                },
                e => out.push(e),
            }
        }
        out
    }

    /// A held abort that stands now goes to the verdict.
    pub fn due(&mut self, now: Duration) -> Vec<Effect> {
        match self.policy.abort_due(now) {
            Some(_) => self.held.take().map(Effect::Fail).into_iter().collect(),
            None => Vec::new(),
        }
    }

    /// When a held abort stands, if one is held.
    pub fn deadline(&self) -> Option<Duration> {
        self.policy.abort_deadline()
    }

    /// An abort is held: the job is not over, whatever the nodes say.
    pub fn holding(&self) -> bool {
        self.held.is_some()
    }

    /// A `NodeDone` from `node` that predates a restart it was told of.
    pub fn stale_done(&self, node: u32) -> bool {
        self.awaiting.contains(&node)
    }

    /// What a rank's end means (`failure`, as [`RootPmi::exit_failure`] words it): a restart, or
    /// the verdict's.
    pub fn rank_ended(&mut self, failure: Failure, s: JobState<'_>) -> Vec<Effect> {
        // Whatever the ranks a job restart stops do on their way out is a consequence of it.
        if self.policy.stopping().is_some() {
            return Vec::new();
        }
        let Failure::RankExit { rank, status } = failure else { return vec![Effect::Fail(failure)] };
        // A restart needs the whole job to be in the tree: a node that has not joined yet would
        // start the old generation.
        let whole = self.policy.scope() == RestartScope::Rank || s.daemons.all_joined();
        if status.is_success() {
            return vec![Effect::Fail(failure)];
        }
        if s.ending || !whole {
            self.policy.close();
            return vec![Effect::Fail(failure)];
        }
        let d = self.policy.decide(Input::RankFailed { rank, status, at: s.at });
        if self.policy.abort_deadline().is_none() {
            // Not held any more: a restart made it a consequence, or the job ends with this failure.
            self.held = None;
        }
        match d {
            Decision::Pass => vec![Effect::Fail(failure)],
            Decision::Ignore | Decision::Hold => Vec::new(),
            Decision::GiveUp { line } => vec![Effect::Fail(failure), Effect::Say(line)],
            Decision::RestartRanks { ranks, node, line } => self.restart_ranks(ranks, node, line, s),
            Decision::RestartJob { generation, line } => self.stop_job(generation, line, s),
        }
    }

    /// Node `node` is lost with `ranks` unfinished: restarted like failed ranks (rank scope: on
    /// `runs_on`, the daemon of the spare that replaced it), or the job; `failure` is the
    /// verdict's when not. Fed by lost-node detection (src/frontend/lost.rs).
    pub fn node_lost(&mut self, node: u32, runs_on: u32, ranks: Vec<u32>, failure: Failure, s: JobState<'_>) -> Vec<Effect> {
        if s.ending || self.policy.stopping().is_some() {
            return if s.ending { vec![Effect::Fail(failure)] } else { Vec::new() };
        }
        match self.policy.decide(Input::NodeLost { node, ranks, at: s.at }) {
            Decision::Pass => vec![Effect::Fail(failure)],
            Decision::Ignore | Decision::Hold => Vec::new(),
            Decision::GiveUp { line } => vec![Effect::Fail(failure), Effect::Say(line)],
            Decision::RestartRanks { ranks, line, .. } => self.restart_ranks(ranks, runs_on, line, s),
            Decision::RestartJob { generation, line } => self.stop_job(generation, line, s),
        }
    }

    fn restart_ranks(&mut self, ranks: Vec<(u32, u32)>, node: u32, line: String, s: JobState<'_>) -> Vec<Effect> {
        for &(r, _) in &ranks {
            s.ranks.restarting(r);
        }
        if let Some(d) = s.daemons.get_mut(node) {
            d.done = false;
        }
        self.awaiting.insert(node);
        vec![Effect::Say(line), Effect::Towards(node, Msg::RestartRanks { node, ranks })]
    }

    fn stop_job(&mut self, generation: u32, line: String, s: JobState<'_>) -> Vec<Effect> {
        self.stopped.clear();
        for n in 0..s.daemons.len() as u32 {
            let d = s.daemons.get_mut(n).expect("node of the job");
            if !d.lost {
                d.done = false;
                self.awaiting.insert(n);
            }
        }
        vec![Effect::Say(line), Effect::Down(Msg::RestartStop { generation })]
    }

    /// `RestartStopped` from `node`: once every node stopped, the next generation starts, with the
    /// front end's PMI state as new.
    pub fn node_stopped(&mut self, node: u32, generation: u32, pmi: &mut RootPmi, s: JobState<'_>) -> Vec<Effect> {
        if self.policy.stopping() != Some(generation) {
            return Vec::new();
        }
        self.stopped.insert(node);
        let all = (0..s.daemons.len() as u32).all(|n| self.stopped.contains(&n) || s.daemons.get(n).is_some_and(|d| d.lost));
        if !all {
            return Vec::new();
        }
        let Some(g) = self.policy.all_stopped() else { return Vec::new() };
        *pmi = RootPmi::default();
        s.ranks.restarting_all();
        vec![Effect::Detail(1, format!("rlaunch: every rank stopped; starting them again as generation {g}")), Effect::Down(Msg::RestartJob { generation: g })]
    }

    /// `Started` from `node`: its restarted ranks run again (`-v` says how soon).
    pub fn node_started(&mut self, node: u32, pids: &[(u32, u32)], all_running: bool, at: Duration) -> Vec<Effect> {
        self.awaiting.remove(&node);
        let ranks: Vec<u32> = pids.iter().map(|&(r, _)| r).collect();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let mut fx: Vec<Effect> = self
            .policy
            .started(&ranks, at)
            .into_iter()
            .map(|(r, d)| Effect::Detail(1, format!("rlaunch: rank {r} is running again ({:.1} ms after its failure)", ms(d))))
            .collect();
        if all_running && self.awaiting.is_empty() {
            let g = self.policy.generation();
            fx.extend(self.policy.job_started(at).map(|d| Effect::Detail(1, format!("rlaunch: every rank is running again as generation {g} ({:.1} ms after the failure)", ms(d)))));
        }
        fx
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::fixture;
    use crate::spec::{AppContext, RankStatus};

    /// 4 nodes of 2 ranks, fan-out 2: FE -> 0,1; 0 -> 2,3.
    fn job() -> JobView {
        let app = AppContext { argv: vec!["a".into()], env: Vec::new(), cwd: "/".into(), np: Some(8), nodes: None, without_job_env: false };
        let launch = fixture::launch("rl-rec", 4, 2, vec![app]);
        let map = crate::job::compute_map(&launch).unwrap();
        JobView::for_front_end(Box::new(launch), map)
    }

    struct World {
        job: JobView,
        ranks: Ranks,
        daemons: Daemons,
    }

    impl World {
        fn new() -> World {
            let job = job();
            let mut daemons = Daemons::new(*job.topology(), (0..4).map(|n| format!("n{n}")).collect());
            for n in 0..4 {
                daemons.get_mut(n).unwrap().joined = true;
            }
            let mut ranks = Ranks::new(8);
            ranks.started(&(0..8).map(|r| (r, 100 + r)).collect::<Vec<_>>());
            World { job, ranks, daemons }
        }

        fn state(&mut self, ending: bool) -> JobState<'_> {
            JobState { ranks: &mut self.ranks, daemons: &mut self.daemons, ending, at: Duration::from_secs(5) }
        }

        fn exit(&mut self, rec: &mut Recovery, rank: u32, status: RankStatus) -> Vec<Effect> {
            self.ranks.exited(rank, status);
            let s = self.state(false);
            rec.rank_ended(Failure::RankExit { rank, status }, s)
        }
    }

    fn spec(max: u32, scope: RestartScope) -> RestartSpec {
        RestartSpec { max, scope }
    }

    #[test]
    fn without_restarts_a_failure_is_the_verdicts() {
        let mut w = World::new();
        let mut rec = Recovery::new(spec(0, RestartScope::Rank), &w.job);
        let fx = w.exit(&mut rec, 5, RankStatus::Exited(3));
        assert!(matches!(fx.as_slice(), [Effect::Fail(Failure::RankExit { rank: 5, .. })]), "{fx:?}");
        let fx = rec.screen(vec![Effect::Fail(Failure::Abort { rank: 1, code: 7, message: String::new() })], false, Duration::ZERO);
        assert!(matches!(fx.as_slice(), [Effect::Fail(Failure::Abort { .. })]), "{fx:?}");
        assert!(!rec.holding() && !rec.stale_done(2));
    }

    #[test]
    fn a_rank_restart_reopens_its_node_until_it_started_again() {
        let mut w = World::new();
        let mut rec = Recovery::new(spec(1, RestartScope::Rank), &w.job);
        w.daemons.get_mut(2).unwrap().done = true;
        let fx = w.exit(&mut rec, 5, RankStatus::Signaled(libc::SIGKILL));
        assert!(matches!(&fx[..], [Effect::Say(l), Effect::Towards(2, Msg::RestartRanks { node: 2, ranks })] if l.ends_with("restarting it (1 of 1)") && ranks == &[(5, 1)]), "{fx:?}");
        assert_eq!((w.ranks.status(5), w.ranks.pid(5)), (None, 0), "forgotten until it starts again");
        assert!(!w.daemons.get(2).unwrap().done && rec.stale_done(2));
        let fx = rec.node_started(2, &[(5, 300)], true, Duration::from_secs(6));
        assert!(matches!(&fx[..], [Effect::Detail(1, l)] if l.starts_with("rlaunch: rank 5 is running again (1000.0 ms")), "{fx:?}");
        assert!(!rec.stale_done(2));
        assert_eq!(rec.log()[0].running_again, Some(Duration::from_secs(6)));
    }

    #[test]
    fn a_job_restart_waits_for_every_node_then_starts_the_next_generation() {
        let mut w = World::new();
        let mut rec = Recovery::new(spec(2, RestartScope::Job), &w.job);
        let fx = w.exit(&mut rec, 6, RankStatus::Exited(9));
        assert!(matches!(&fx[..], [Effect::Say(_), Effect::Down(Msg::RestartStop { generation: 1 })]), "{fx:?}");
        assert!(rec.stopping() && (0..4).all(|n| rec.stale_done(n)));
        // What the stopped ranks do on their way out is no failure.
        assert!(w.exit(&mut rec, 0, RankStatus::Signaled(libc::SIGTERM)).is_empty());
        assert!(rec.screen(vec![Effect::Fail(Failure::Abort { rank: 1, code: 1, message: String::new() })], false, Duration::ZERO).is_empty());
        let mut pmi = RootPmi::default();
        for n in [0, 3, 1] {
            let s = w.state(false);
            assert!(rec.node_stopped(n, 1, &mut pmi, s).is_empty());
        }
        let s = w.state(false);
        let fx = rec.node_stopped(2, 1, &mut pmi, s);
        assert!(matches!(&fx[..], [Effect::Detail(..), Effect::Down(Msg::RestartJob { generation: 1 })]), "{fx:?}");
        assert!(!rec.stopping());
        assert_eq!((w.ranks.unreported(), w.ranks.all_running()), (8, false));
        for n in 0..4u32 {
            let pids: Vec<(u32, u32)> = (2 * n..2 * n + 2).map(|r| (r, 200 + r)).collect();
            w.ranks.started(&pids);
            let fx = rec.node_started(n, &pids, w.ranks.all_running(), Duration::from_secs(7));
            assert_eq!(fx.len(), usize::from(n == 3), "{fx:?}");
        }
        assert_eq!((rec.generation(), rec.log()[0].running_again), (1, Some(Duration::from_secs(7))));
    }

    #[test]
    fn a_held_abort_stands_unless_a_crash_explains_it() {
        let mut w = World::new();
        let mut rec = Recovery::new(spec(2, RestartScope::Job), &w.job);
        let abort = || vec![Effect::Fail(Failure::Abort { rank: 1, code: 7, message: String::new() })];
        assert!(rec.screen(abort(), false, Duration::from_secs(5)).is_empty());
        assert!(rec.holding());
        assert!(w.exit(&mut rec, 1, RankStatus::Exited(7)).is_empty(), "the aborting rank's own exit");
        assert!(rec.due(Duration::from_secs(5)).is_empty());
        let fx = rec.due(Duration::from_secs(6));
        assert!(matches!(fx.as_slice(), [Effect::Fail(Failure::Abort { rank: 1, code: 7, .. })]), "{fx:?}");
        assert!(!rec.holding());
        // A crash meanwhile: the job restarts and the abort is forgotten.
        let mut w = World::new();
        let mut rec = Recovery::new(spec(2, RestartScope::Job), &w.job);
        rec.screen(abort(), false, Duration::from_secs(5));
        let fx = w.exit(&mut rec, 4, RankStatus::Signaled(libc::SIGSEGV));
        assert!(matches!(&fx[..], [Effect::Say(_), Effect::Down(Msg::RestartStop { generation: 1 })]), "{fx:?}");
        assert!(!rec.holding() && rec.due(Duration::from_secs(60)).is_empty());
        // Once the job is ending, an abort goes to the verdict as it is.
        let fx = Recovery::new(spec(2, RestartScope::Job), &w.job).screen(abort(), true, Duration::ZERO);
        assert_eq!(fx.len(), 1);
    }

    #[test]
    fn a_lost_nodes_ranks_restart_there() {
        let mut w = World::new();
        let mut rec = Recovery::new(spec(1, RestartScope::Rank), &w.job);
        let s = w.state(false);
        let fx = rec.node_lost(3, 3, vec![6, 7], Failure::LinkLost { node: 3, why: "x".into(), more: Vec::new() }, s);
        assert!(matches!(&fx[..], [Effect::Say(_), Effect::Towards(3, Msg::RestartRanks { ranks, .. })] if ranks == &[(6, 1), (7, 1)]), "{fx:?}");
        let s = w.state(false);
        let fx = rec.node_lost(3, 3, vec![6, 7], Failure::LinkLost { node: 3, why: "x".into(), more: Vec::new() }, s);
        assert!(matches!(&fx[..], [Effect::Fail(_), Effect::Say(l)] if l.contains("restart budget (1) spent")), "{fx:?}");
    }
}
