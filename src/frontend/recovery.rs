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
    pub job: &'a JobView,
    pub ranks: &'a mut Ranks,
    pub daemons: &'a mut Daemons,
    /// The verdict already ends the job: nothing is restarted.
    pub ending: bool,
    /// Since rlaunch started.
    pub at: Duration,
}

impl<'a> JobState<'a> {
    pub fn of(job: &'a JobView, ranks: &'a mut Ranks, daemons: &'a mut Daemons, ending: bool, t0: std::time::Instant) -> JobState<'a> {
        JobState { job, ranks, daemons, ending, at: t0.elapsed() }
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
        let kids = s.job.topology().children_of(None).collect();
        vec![Effect::Say(line), Effect::DownTo(kids, Msg::RestartStop { generation })]
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
        let kids = s.job.topology().children_of(None).collect();
        vec![Effect::Detail(1, format!("rlaunch: every rank stopped; starting them again as generation {g}")), Effect::DownTo(kids, Msg::RestartJob { generation: g })]
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
