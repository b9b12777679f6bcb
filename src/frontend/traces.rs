//! Open MPI's `--get-stack-traces`: when `--timeout` expires, the ranks are ended only after every
//! node sent the stacks of its running ranks, or after [`TRACE_WAIT`] (a debugger that hangs must
//! not keep the job alive).

use super::effect::Effect;
use crate::job::JobView;
use crate::wire::Msg;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

pub const TRACE_WAIT: Duration = Duration::from_secs(20);

#[derive(Default)]
pub struct StackTraces {
    wanted: bool,
    asked_at: Option<Instant>,
    /// Nodes whose stacks are not all in.
    pending: BTreeSet<u32>,
    /// What ends the ranks, sent once the stacks are in.
    held: Option<Msg>,
}

impl StackTraces {
    pub fn new(wanted: bool) -> StackTraces {
        StackTraces { wanted, ..StackTraces::default() }
    }

    /// At the timeout, with `end` about to go down to `nodes` (those still running): the request
    /// to send instead, once per job, keeping `end` for later. `None`: send `end` now.
    pub fn hold(&mut self, end: Msg, nodes: Vec<u32>) -> Option<Msg> {
        if !self.wanted || self.asked_at.is_some() || nodes.is_empty() {
            return None;
        }
        self.asked_at = Some(Instant::now());
        self.pending = nodes.into_iter().collect();
        self.held = Some(end);
        Some(Msg::StackTraces)
    }

    /// One rank's stack, as rlaunch prints it.
    pub fn show(job: &JobView, rank: u32, pid: u32, text: &str) -> Effect {
        let node = job.map().get(rank).map_or_else(|| "?".to_string(), |p| job.node_name(p.node));
        let body: Vec<String> = text.lines().map(|l| format!("    {l}")).collect();
        Effect::Say(format!("rlaunch: stack of rank {rank} (pid {pid} on {node}) at the timeout:\n{}", body.join("\n")))
    }

    /// `node` sent all its stacks: the held end once every node did.
    pub fn done(&mut self, node: u32) -> Vec<Effect> {
        self.pending.remove(&node);
        match self.pending.is_empty() {
            true => self.held.take().map(Effect::End).into_iter().collect(),
            false => Vec::new(),
        }
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.held.as_ref().and(self.asked_at).map(|t| t + TRACE_WAIT)
    }

    /// The held end when the nodes took too long.
    pub fn expired(&mut self, now: Instant) -> Vec<Effect> {
        match self.deadline().is_some_and(|d| now >= d) {
            true => self.held.take().map(Effect::End).into_iter().collect(),
            false => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_end_waits_for_every_node_or_the_deadline() {
        let mut t = StackTraces::new(false);
        assert_eq!(t.hold(Msg::Terminate, vec![0]), None, "not asked for");
        let mut t = StackTraces::new(true);
        assert_eq!(t.hold(Msg::Terminate, vec![]), None, "nothing runs");
        let mut t = StackTraces::new(true);
        assert_eq!(t.hold(Msg::Terminate, vec![0, 2]), Some(Msg::StackTraces));
        assert_eq!(t.hold(Msg::Kill, vec![0, 2]), None, "asked once");
        assert!(t.done(2).is_empty());
        assert!(matches!(t.done(0)[..], [Effect::End(Msg::Terminate)]));
        assert_eq!(t.deadline(), None);

        let mut t = StackTraces::new(true);
        t.hold(Msg::Terminate, vec![1]);
        let d = t.deadline().unwrap();
        assert!(t.expired(d - Duration::from_millis(1)).is_empty());
        assert!(matches!(t.expired(d)[..], [Effect::End(Msg::Terminate)]));
        assert!(t.done(1).is_empty(), "ended already");
    }
}
