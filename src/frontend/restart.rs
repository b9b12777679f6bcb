//! The restart policy of `--max-restarts` and `--restart-scope` as one pure state machine: a
//! failed rank or a lost node comes in, and out comes what to do about it — restart the rank(s)
//! on their node, restart the whole job as the next generation, give up with one line, or leave
//! it to the [`super::verdict::Verdict`] as if there were no restarts. The front end asks it
//! before the verdict.
//!
//! What N counts: with rank scope, restarts of each rank (PRRTE counts restarts per process);
//! with job scope, restarts of the job (one job restart counts once, whatever number of ranks
//! failed). What is never restarted: a rank that exited with 0, an abort (the application's own
//! decision: the verdict ends the job before its exit arrives), a rank that could not be started
//! (no such program, no working directory: it would fail the same way again), and anything
//! after the job began to end (ctrl-C, `--timeout`, another failure): [`Policy::close`].
//!
//! Aborts in job scope: MPI libraries abort a rank whose peer died (MPICH's "Endpoint timeout"
//! in MPI_Init, Open MPI's lost connection), and that abort may reach the front end before the
//! peer's death does. So with job scope an abort is held for [`ABORT_HOLD`]: when another rank's
//! failure (not an abort, not the aborting rank's own exit) comes meanwhile, that failure is the
//! cause and the job is restarted; otherwise the abort stands and ends the job, unrestarted.
//!
//! Restart loops: a rank restarted (or a job restarted) that fails again before it was running
//! again for [`QUICK_REFAILURE`] is not restarted again; one line says so and the job ends with
//! that failure's status. A program that cannot get past its start then costs one restart, not
//! the whole budget in a tight loop.

use crate::sig::signal_name;
use crate::spec::{RankStatus, RestartScope, RestartSpec};
use std::time::Duration;

/// A restarted rank (or job) that fails again sooner than this after it was running again is not
/// restarted again. One second: longer than any start-up failure (a missing library, a bad
/// input file, a crash in MPI_Init), shorter than any computation worth restarting.
pub const QUICK_REFAILURE: Duration = Duration::from_secs(1);

/// How long a job-scope abort waits for news of an earlier failure (see the module's text).
/// Exits travel as fast as aborts; half a second covers a loaded tree.
pub const ABORT_HOLD: Duration = Duration::from_millis(500);

/// What the front end tells the policy; `at` is the time since rlaunch started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// A rank ended with `status` while the job was running.
    RankFailed { rank: u32, status: RankStatus, at: Duration },
    /// A rank called PMI/PMIx abort (MPI_Abort).
    Aborted { rank: u32, at: Duration },
    /// Node `node` is gone, with these ranks that had not ended. Fed by lost-node detection
    /// (issue 17's `nodes` part), which lands after this.
    #[cfg_attr(not(test), allow(dead_code))]
    NodeLost { node: u32, ranks: Vec<u32>, at: Duration },
}

/// What to do about an [`Input`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Not the policy's to decide: the verdict records the failure as without restarts.
    Pass,
    /// The death is a consequence of a job restart under way, or of an abort being held: neither
    /// a failure nor a restart.
    Ignore,
    /// An abort held for [`ABORT_HOLD`]: [`Policy::abort_due`] says when it stands.
    Hold,
    /// Start these ranks again on `node`, each as `(rank, restarts)`; `line` for stderr.
    RestartRanks { ranks: Vec<(u32, u32)>, node: u32, line: String },
    /// Stop every rank, then start them all again as `generation`; `line` for stderr.
    RestartJob { generation: u32, line: String },
    /// The verdict records the failure as without restarts, and `line` says why it was not
    /// restarted.
    GiveUp { line: String },
}

/// One restart, for the report.
#[derive(Clone, Debug, PartialEq)]
pub struct Restart {
    pub at: Duration,
    /// The ranks restarted (job scope: the one that failed).
    pub ranks: Vec<u32>,
    pub node: Option<u32>,
    pub scope: RestartScope,
    pub reason: String,
    /// The generation the job runs as after this restart (0 for rank scope).
    pub generation: u32,
    /// When the restarted ranks were all running again.
    pub running_again: Option<Duration>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Failures may be restarted.
    Open,
    /// Job scope: every rank is being stopped for `generation`.
    Stopping(u32),
    /// No more restarts: the job is ending.
    Closed,
}

/// The policy's state. Names come in at construction, so that its lines need no lookups.
#[derive(Debug)]
pub struct Policy {
    spec: RestartSpec,
    /// Each rank's node, and each node's name.
    rank_node: Vec<u32>,
    node_names: Vec<String>,
    /// Restarts per rank (rank scope; job scope: every rank's is the generation).
    restarts: Vec<u32>,
    /// When each restarted rank was running again (None: not restarted, or not running yet).
    running_since: Vec<Option<Duration>>,
    generation: u32,
    /// Job scope: when the latest job restart was running again (None: none, or not yet).
    job_since: Option<Duration>,
    phase: Phase,
    /// Job scope: an abort waiting for news of an earlier failure (rank, when).
    held_abort: Option<(u32, Duration)>,
    log: Vec<Restart>,
}

/// `1.5 s`, `0.2 s`, `12 ms`: a short time for a line.
fn secs(d: Duration) -> String {
    if d < Duration::from_millis(100) {
        return format!("{} ms", d.as_millis());
    }
    format!("{:.1} s", d.as_secs_f64())
}

fn cause(status: RankStatus) -> String {
    match status {
        RankStatus::Exited(c) => format!("exited with status {c}"),
        RankStatus::Signaled(s) => format!("killed by {}", signal_name(s)),
        RankStatus::SpawnFailed(_) | RankStatus::NoWorkdir(_) => "could not be started".into(),
    }
}

impl Policy {
    pub fn new(spec: RestartSpec, rank_node: Vec<u32>, node_names: Vec<String>) -> Policy {
        let size = rank_node.len();
        Policy {
            spec,
            rank_node,
            node_names,
            restarts: vec![0; size],
            running_since: vec![None; size],
            generation: 0,
            job_since: None,
            phase: Phase::Open,
            held_abort: None,
            log: Vec::new(),
        }
    }

    pub fn scope(&self) -> RestartScope {
        self.spec.scope
    }

    /// The job's generation: 0, +1 per job restart.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Times `rank`'s process was restarted (its `RLAUNCH_RESTARTS`).
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn restarts_of(&self, rank: u32) -> u32 {
        self.restarts.get(rank as usize).copied().unwrap_or(0)
    }

    /// Every restart so far, in order.
    pub fn log(&self) -> &[Restart] {
        &self.log
    }

    /// A job restart is stopping the ranks: their deaths and last words are no news.
    pub fn stopping(&self) -> Option<u32> {
        match self.phase {
            Phase::Stopping(g) => Some(g),
            _ => None,
        }
    }

    /// The job is ending (interrupt, timeout, abort, another failure): nothing more is restarted.
    pub fn close(&mut self) {
        self.phase = Phase::Closed;
    }

    fn node_name(&self, node: u32) -> String {
        self.node_names.get(node as usize).cloned().unwrap_or_else(|| format!("node {node}"))
    }

    fn rank_host(&self, rank: u32) -> String {
        self.rank_node.get(rank as usize).map_or_else(|| "?".into(), |&n| self.node_name(n))
    }

    pub fn decide(&mut self, input: Input) -> Decision {
        match self.phase {
            Phase::Closed => return Decision::Pass,
            Phase::Stopping(_) => return Decision::Ignore,
            Phase::Open => {}
        }
        let success = matches!(&input, Input::RankFailed { status, .. } if status.is_success());
        let d = match input {
            Input::Aborted { rank, at } => self.aborted(rank, at),
            // The aborting rank's own exit follows its abort.
            Input::RankFailed { rank, .. } if self.held_abort.is_some_and(|(r, _)| r == rank) => Decision::Ignore,
            Input::RankFailed { rank, status, at } => self.rank_failed(rank, status, at),
            Input::NodeLost { node, ranks, at } => self.node_lost(node, ranks, at),
        };
        if !matches!(d, Decision::Hold | Decision::Ignore) && !success {
            // A failure came before the held abort stood: it is the cause, the abort its effect.
            self.held_abort = None;
        }
        if matches!(d, Decision::GiveUp { .. }) || (d == Decision::Pass && !success) {
            // The verdict ends the job now: later deaths are its consequences.
            self.close();
        }
        d
    }

    fn aborted(&mut self, rank: u32, at: Duration) -> Decision {
        let restartable = self.spec.scope == RestartScope::Job && self.generation < self.spec.max;
        if !restartable {
            return Decision::Pass;
        }
        self.held_abort.get_or_insert((rank, at));
        Decision::Hold
    }

    /// When a held abort stands, if one is held.
    pub fn abort_deadline(&self) -> Option<Duration> {
        self.held_abort.map(|(_, at)| at + ABORT_HOLD)
    }

    /// The rank whose held abort stands at `now` (the job then ends with it: nothing more is
    /// restarted).
    pub fn abort_due(&mut self, now: Duration) -> Option<u32> {
        let (rank, at) = self.held_abort?;
        if now < at + ABORT_HOLD {
            return None;
        }
        self.held_abort = None;
        self.close();
        Some(rank)
    }

    fn rank_failed(&mut self, rank: u32, status: RankStatus, at: Duration) -> Decision {
        if self.spec.max == 0 || status.is_success() || matches!(status, RankStatus::SpawnFailed(_) | RankStatus::NoWorkdir(_)) || rank as usize >= self.restarts.len() {
            return Decision::Pass;
        }
        let who = format!("rank {rank} ({})", self.rank_host(rank));
        let why = cause(status);
        match self.spec.scope {
            RestartScope::Rank => {
                let done = self.restarts[rank as usize];
                if done > 0 {
                    if let Some(quick) = self.quick(self.running_since[rank as usize], at) {
                        return Decision::GiveUp { line: format!("rlaunch: {who} failed again {} after its restart; not restarting it again", secs(quick)) };
                    }
                }
                if done >= self.spec.max {
                    return Decision::GiveUp { line: self.spent(&format!("rank {rank} was restarted {done} time{}", plural(done))) };
                }
                let n = self.restart_rank(rank, at, why.clone());
                let line = format!("rlaunch: {who} {why}; restarting it ({n} of {})", self.spec.max);
                Decision::RestartRanks { ranks: vec![(rank, n)], node: self.rank_node[rank as usize], line }
            }
            RestartScope::Job => self.restart_job(vec![rank], self.rank_node.get(rank as usize).copied(), &who, why, at),
        }
    }

    fn node_lost(&mut self, node: u32, ranks: Vec<u32>, at: Duration) -> Decision {
        let ranks: Vec<u32> = ranks.into_iter().filter(|&r| (r as usize) < self.restarts.len()).collect();
        if self.spec.max == 0 || ranks.is_empty() {
            return Decision::Pass;
        }
        let name = self.node_name(node);
        match self.spec.scope {
            RestartScope::Rank => {
                if let Some(&r) = ranks.iter().find(|&&r| self.restarts[r as usize] >= self.spec.max) {
                    let done = self.restarts[r as usize];
                    return Decision::GiveUp { line: self.spent(&format!("rank {r} was restarted {done} time{}", plural(done))) };
                }
                let restarted: Vec<(u32, u32)> = ranks.iter().map(|&r| (r, self.count_restart(r))).collect();
                // One line and one report entry for the node.
                self.log.push(Restart { at, ranks: ranks.clone(), node: Some(node), scope: RestartScope::Rank, reason: "node lost".into(), generation: 0, running_again: None });
                let most = restarted.iter().map(|&(_, n)| n).max().unwrap_or(1);
                let line = format!("rlaunch: node {name} was lost with {} rank{}; restarting them ({most} of {})", ranks.len(), plural(ranks.len() as u32), self.spec.max);
                Decision::RestartRanks { ranks: restarted, node, line }
            }
            RestartScope::Job => self.restart_job(ranks, Some(node), &format!("node {name}"), "was lost".into(), at),
        }
    }

    /// Counts a restart of `rank`; returns its new restart count.
    fn count_restart(&mut self, rank: u32) -> u32 {
        let i = rank as usize;
        self.restarts[i] += 1;
        self.running_since[i] = None;
        self.restarts[i]
    }

    /// Counts a restart of `rank` and logs it; returns its new restart count.
    fn restart_rank(&mut self, rank: u32, at: Duration, reason: String) -> u32 {
        let node = self.rank_node.get(rank as usize).copied();
        self.log.push(Restart { at, ranks: vec![rank], node, scope: RestartScope::Rank, reason, generation: 0, running_again: None });
        self.count_restart(rank)
    }

    fn restart_job(&mut self, ranks: Vec<u32>, node: Option<u32>, who: &str, why: String, at: Duration) -> Decision {
        if self.generation > 0 {
            if let Some(quick) = self.quick(self.job_since, at) {
                return Decision::GiveUp { line: format!("rlaunch: {who} failed again {} after the job's restart; not restarting the job again", secs(quick)) };
            }
        }
        if self.generation >= self.spec.max {
            let g = self.generation;
            return Decision::GiveUp { line: self.spent(&format!("the job was restarted {g} time{}", plural(g))) };
        }
        self.generation += 1;
        self.restarts.iter_mut().for_each(|n| *n = self.generation);
        self.job_since = None;
        self.phase = Phase::Stopping(self.generation);
        let g = self.generation;
        self.log.push(Restart { at, ranks, node, scope: RestartScope::Job, reason: why.clone(), generation: g, running_again: None });
        let line = format!("rlaunch: {who} {why}; restarting the job ({g} of {}, generation {g})", self.spec.max);
        Decision::RestartJob { generation: g, line }
    }

    /// How soon after it was running again a restarted rank or job failed, when that is too soon
    /// (or it was not even running again yet).
    fn quick(&self, since: Option<Duration>, at: Duration) -> Option<Duration> {
        let restarted_at = self.log.last().map_or(Duration::ZERO, |r| r.at);
        match since {
            None => Some(at.saturating_sub(restarted_at)),
            Some(s) if at < s + QUICK_REFAILURE => Some(at.saturating_sub(s)),
            Some(_) => None,
        }
    }

    fn spent(&self, what: &str) -> String {
        format!("rlaunch: restart budget ({}) spent: {what} (--max-restarts)", self.spec.max)
    }

    /// Job scope: every node stopped its ranks; the job starts again as the returned generation.
    pub fn all_stopped(&mut self) -> Option<u32> {
        let g = self.stopping()?;
        self.phase = Phase::Open;
        Some(g)
    }

    /// Restarted `ranks` are running again (their `Started` came): each one that was waiting for
    /// that, with the time from its failure.
    pub fn started(&mut self, ranks: &[u32], at: Duration) -> Vec<(u32, Duration)> {
        let mut again = Vec::new();
        for &r in ranks {
            let i = r as usize;
            if i < self.restarts.len() && self.restarts[i] > 0 && self.running_since[i].is_none() && self.spec.scope == RestartScope::Rank {
                self.running_since[i] = Some(at);
                if let Some(entry) = self.log.iter_mut().rev().find(|e| e.ranks.contains(&r)) {
                    entry.running_again.get_or_insert(at);
                    again.push((r, at.saturating_sub(entry.at)));
                }
            }
        }
        again
    }

    /// Job scope: every rank of the new generation is running; the time from the failure, the
    /// first time this is said for a generation.
    pub fn job_started(&mut self, at: Duration) -> Option<Duration> {
        if self.generation == 0 || self.job_since.is_some() || self.phase == Phase::Closed {
            return None;
        }
        self.job_since = Some(at);
        let entry = self.log.last_mut()?;
        entry.running_again.get_or_insert(at);
        Some(at.saturating_sub(entry.at))
    }
}

fn plural(n: u32) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: Duration = Duration::from_secs(1);

    /// 4 ranks, 2 per node, on n0 and n1.
    fn policy(max: u32, scope: RestartScope) -> Policy {
        Policy::new(RestartSpec { max, scope }, vec![0, 0, 1, 1], vec!["n0".into(), "n1".into()])
    }

    fn failed(rank: u32, status: RankStatus, secs: u64) -> Input {
        Input::RankFailed { rank, status, at: Duration::from_secs(secs) }
    }

    fn kill(rank: u32, secs: u64) -> Input {
        failed(rank, RankStatus::Signaled(libc::SIGKILL), secs)
    }

    #[test]
    fn without_restarts_everything_is_the_verdicts() {
        let mut p = policy(0, RestartScope::Rank);
        assert_eq!(p.decide(kill(2, 1)), Decision::Pass);
        assert_eq!(policy(0, RestartScope::Job).decide(failed(0, RankStatus::Exited(0), 1)), Decision::Pass);
        assert!(p.log().is_empty());
    }

    #[test]
    fn rank_scope_restarts_the_rank_on_its_node_until_the_budget_is_spent() {
        let mut p = policy(2, RestartScope::Rank);
        let d = p.decide(kill(3, 5));
        assert_eq!(d, Decision::RestartRanks { ranks: vec![(3, 1)], node: 1, line: "rlaunch: rank 3 (n1) killed by SIGKILL; restarting it (1 of 2)".into() });
        p.started(&[3], Duration::from_secs(6));
        let d = p.decide(failed(3, RankStatus::Exited(4), 10));
        assert_eq!(d, Decision::RestartRanks { ranks: vec![(3, 2)], node: 1, line: "rlaunch: rank 3 (n1) exited with status 4; restarting it (2 of 2)".into() });
        // Another rank has its own budget.
        assert!(matches!(p.decide(kill(0, 11)), Decision::RestartRanks { node: 0, .. }));
        p.started(&[3, 0], Duration::from_secs(12));
        let d = p.decide(kill(3, 20));
        assert_eq!(d, Decision::GiveUp { line: "rlaunch: restart budget (2) spent: rank 3 was restarted 2 times (--max-restarts)".into() });
        assert_eq!(p.decide(kill(1, 21)), Decision::Pass, "the job is ending");
        let log = p.log();
        assert_eq!(log.len(), 3);
        assert_eq!((log[0].ranks.clone(), log[0].node, log[0].reason.as_str(), log[0].running_again), (vec![3], Some(1), "killed by SIGKILL", Some(Duration::from_secs(6))));
        assert_eq!(p.restarts_of(3), 2);
    }

    #[test]
    fn a_rank_that_fails_again_at_once_is_not_restarted_again() {
        let mut p = policy(5, RestartScope::Rank);
        assert!(matches!(p.decide(kill(1, 3)), Decision::RestartRanks { .. }));
        p.started(&[1], Duration::from_millis(3100));
        let d = p.decide(Input::RankFailed { rank: 1, status: RankStatus::Exited(1), at: Duration::from_millis(3300) });
        assert_eq!(d, Decision::GiveUp { line: "rlaunch: rank 1 (n0) failed again 0.2 s after its restart; not restarting it again".into() });
        // Not running yet counts as at once too.
        let mut p = policy(5, RestartScope::Rank);
        p.decide(kill(1, 3));
        assert!(matches!(p.decide(kill(1, 3)), Decision::GiveUp { .. }));
        // A first failure early in the job is restarted: only restarts are held to it.
        assert!(matches!(policy(5, RestartScope::Rank).decide(Input::RankFailed { rank: 0, status: RankStatus::Exited(1), at: Duration::from_millis(10) }), Decision::RestartRanks { .. }));
    }

    #[test]
    fn job_scope_stops_everything_and_counts_job_restarts() {
        let mut p = policy(2, RestartScope::Job);
        let d = p.decide(kill(2, 5));
        assert_eq!(d, Decision::RestartJob { generation: 1, line: "rlaunch: rank 2 (n1) killed by SIGKILL; restarting the job (1 of 2, generation 1)".into() });
        assert_eq!(p.stopping(), Some(1));
        // The stopped ranks' deaths are consequences.
        assert_eq!(p.decide(failed(0, RankStatus::Signaled(libc::SIGTERM), 5)), Decision::Ignore);
        assert_eq!(p.all_stopped(), Some(1));
        assert_eq!(p.all_stopped(), None);
        assert_eq!((p.generation(), p.restarts_of(0), p.restarts_of(3)), (1, 1, 1));
        p.job_started(Duration::from_secs(6));
        assert!(matches!(p.decide(kill(0, 9)), Decision::RestartJob { generation: 2, .. }));
        p.all_stopped();
        p.job_started(Duration::from_secs(10));
        let d = p.decide(failed(1, RankStatus::Exited(3), 30));
        assert_eq!(d, Decision::GiveUp { line: "rlaunch: restart budget (2) spent: the job was restarted 2 times (--max-restarts)".into() });
        assert_eq!(p.log().iter().map(|r| (r.generation, r.running_again)).collect::<Vec<_>>(), [(1, Some(Duration::from_secs(6))), (2, Some(Duration::from_secs(10)))]);
    }

    #[test]
    fn a_job_that_fails_again_at_once_is_not_restarted_again() {
        let mut p = policy(9, RestartScope::Job);
        p.decide(kill(2, 5));
        p.all_stopped();
        p.job_started(Duration::from_secs(6));
        let d = p.decide(Input::RankFailed { rank: 0, status: RankStatus::Exited(2), at: Duration::from_millis(6500) });
        assert_eq!(d, Decision::GiveUp { line: "rlaunch: rank 0 (n0) failed again 0.5 s after the job's restart; not restarting the job again".into() });
    }

    #[test]
    fn launch_failures_and_successes_are_not_restarted() {
        let mut p = policy(3, RestartScope::Rank);
        assert_eq!(p.decide(failed(0, RankStatus::Exited(0), 1)), Decision::Pass, "a rank that ended well: no failure");
        assert!(matches!(p.decide(kill(3, 1)), Decision::RestartRanks { .. }), "and the job goes on");
        assert_eq!(p.decide(failed(1, RankStatus::SpawnFailed(libc::ENOENT), 1)), Decision::Pass);
        assert_eq!(p.decide(kill(2, 9)), Decision::Pass, "closed by the launch failure");
        let mut p = policy(3, RestartScope::Job);
        assert_eq!(p.decide(failed(1, RankStatus::NoWorkdir(libc::ENOENT), 1)), Decision::Pass);
        let mut p = policy(3, RestartScope::Rank);
        p.close();
        assert_eq!(p.decide(kill(2, 2)), Decision::Pass, "after ctrl-C, a timeout or an abort");
    }

    #[test]
    fn an_abort_is_never_restarted_but_may_be_the_effect_of_a_crash() {
        // Rank scope: the application's decision, at once.
        let mut p = policy(3, RestartScope::Rank);
        assert_eq!(p.decide(Input::Aborted { rank: 1, at: S }), Decision::Pass);
        assert_eq!(p.decide(kill(2, 2)), Decision::Pass, "the job is ending");
        // Job scope: held; the aborting rank's exit is its own; nothing else came: it stands.
        let mut p = policy(3, RestartScope::Job);
        assert_eq!(p.decide(Input::Aborted { rank: 1, at: S }), Decision::Hold);
        assert_eq!(p.decide(failed(1, RankStatus::Exited(7), 1)), Decision::Ignore);
        assert_eq!(p.abort_deadline(), Some(S + ABORT_HOLD));
        assert_eq!(p.abort_due(S), None);
        assert_eq!(p.abort_due(S + ABORT_HOLD), Some(1));
        assert_eq!(p.decide(kill(2, 2)), Decision::Pass, "closed by the abort");
        assert!(p.log().is_empty());
        // Another rank's crash meanwhile is the cause: the job restarts, the abort is forgotten.
        let mut p = policy(3, RestartScope::Job);
        assert_eq!(p.decide(Input::Aborted { rank: 0, at: S }), Decision::Hold);
        assert!(matches!(p.decide(Input::RankFailed { rank: 3, status: RankStatus::Signaled(libc::SIGSEGV), at: S + ABORT_HOLD / 2 }), Decision::RestartJob { generation: 1, .. }));
        assert_eq!((p.abort_deadline(), p.abort_due(10 * S)), (None, None));
        // With the budget spent there is nothing to wait for.
        let mut p = policy(0, RestartScope::Job);
        assert_eq!(p.decide(Input::Aborted { rank: 0, at: S }), Decision::Pass);
    }

    #[test]
    fn a_lost_node_restarts_its_ranks_together() {
        let mut p = policy(1, RestartScope::Rank);
        let d = p.decide(Input::NodeLost { node: 1, ranks: vec![2, 3], at: S });
        assert_eq!(d, Decision::RestartRanks { ranks: vec![(2, 1), (3, 1)], node: 1, line: "rlaunch: node n1 was lost with 2 ranks; restarting them (1 of 1)".into() });
        assert_eq!(p.log().len(), 1);
        assert_eq!(p.log()[0].reason, "node lost");
        p.started(&[2, 3], 2 * S);
        assert_eq!(p.log()[0].running_again, Some(2 * S));
        assert!(matches!(p.decide(Input::NodeLost { node: 1, ranks: vec![3], at: 9 * S }), Decision::GiveUp { .. }));
        let mut p = policy(1, RestartScope::Job);
        assert!(matches!(p.decide(Input::NodeLost { node: 0, ranks: vec![0, 1], at: S }), Decision::RestartJob { generation: 1, .. }));
    }

    #[derive(Debug, Clone)]
    enum Event {
        Fail { rank: u32, status: RankStatus, after_ms: u64 },
        Abort { rank: u32 },
        Lost { node: u32 },
        Close,
    }

    fn event() -> impl Strategy<Value = Event> {
        let status = prop_oneof![
            (0i32..4).prop_map(RankStatus::Exited),
            (1i32..16).prop_map(RankStatus::Signaled),
            Just(RankStatus::SpawnFailed(libc::ENOENT)),
        ];
        prop_oneof![
            8 => (0u32..4, status, 0u64..3000).prop_map(|(rank, status, after_ms)| Event::Fail { rank, status, after_ms }),
            1 => (0u32..4).prop_map(|rank| Event::Abort { rank }),
            1 => (0u32..2).prop_map(|node| Event::Lost { node }),
            1 => Just(Event::Close),
        ]
    }

    proptest! {
        /// Whatever happens: no rank is restarted more than N times, the job no more than N
        /// times, generations go up by one, nothing is restarted after the job began to end, and
        /// a launch failure is never restarted.
        #[test]
        fn the_budget_is_never_exceeded(max in 0u32..4, job in any::<bool>(), events in proptest::collection::vec(event(), 1..40)) {
            let scope = if job { RestartScope::Job } else { RestartScope::Rank };
            let mut p = policy(max, scope);
            let mut now = Duration::ZERO;
            let mut closed = false;
            let mut generation = 0;
            for e in events {
                let before = p.log().len();
                let success = matches!(e, Event::Fail { status: RankStatus::Exited(0), .. });
                let d = match e {
                    Event::Close => { p.close(); closed = true; continue }
                    Event::Fail { rank, status, after_ms } => {
                        now += Duration::from_millis(after_ms);
                        let d = p.decide(Input::RankFailed { rank, status, at: now });
                        if matches!(status, RankStatus::SpawnFailed(_)) {
                            prop_assert!(matches!(d, Decision::Pass | Decision::Ignore), "{d:?}");
                        }
                        d
                    }
                    Event::Lost { node } => p.decide(Input::NodeLost { node, ranks: vec![2 * node, 2 * node + 1], at: now }),
                    Event::Abort { rank } => {
                        let d = p.decide(Input::Aborted { rank, at: now });
                        prop_assert!(matches!(d, Decision::Pass | Decision::Hold | Decision::Ignore), "an abort restarts nothing: {d:?}");
                        d
                    }
                };
                if closed {
                    prop_assert_eq!(&d, &Decision::Pass);
                }
                match &d {
                    Decision::RestartRanks { ranks, .. } => {
                        prop_assert_eq!(scope, RestartScope::Rank);
                        for &(r, n) in ranks {
                            prop_assert!(n <= max && n == p.restarts_of(r));
                        }
                        p.started(&ranks.iter().map(|&(r, _)| r).collect::<Vec<_>>(), now + Duration::from_millis(50));
                    }
                    Decision::RestartJob { generation: g, .. } => {
                        prop_assert_eq!(*g, generation + 1);
                        generation = *g;
                        prop_assert!(generation <= max);
                        prop_assert_eq!(p.all_stopped(), Some(generation));
                        p.job_started(now + Duration::from_millis(50));
                    }
                    Decision::GiveUp { .. } => closed = true,
                    Decision::Pass => closed |= !success,
                    Decision::Ignore => prop_assert_eq!(p.log().len(), before),
                    Decision::Hold => {
                        prop_assert_eq!(p.log().len(), before);
                        // Nothing else came meanwhile: the abort stands.
                        prop_assert!(p.abort_due(now + ABORT_HOLD).is_some());
                        closed = true;
                    }
                }
                prop_assert!(p.log().len() >= before);
            }
            for r in 0..4 {
                prop_assert!(p.restarts_of(r) <= max);
            }
            prop_assert!(p.generation() <= max);
        }
    }
}
