//! Where a launch spends its time, node by node (`--report` and `-v`).
//!
//! A daemon marks each phase on its own monotonic clock, whose zero is the start of its process,
//! and sends the marks up once its ranks are done ([`crate::wire::Msg::Timeline`]). Nodes' clocks
//! are not comparable, so the front end anchors each node's marks on the hello: the daemon knows
//! when it sent it, the front end when it arrived, and the difference (which hides the one-way
//! latency of a link, well under a millisecond on a LAN) moves every mark onto the front end's
//! clock. Pure: the loops own the clocks and hand in instants.

use serde::{Deserialize, Serialize};
use std::time::Instant;

/// A daemon's launch phases, in the order they normally happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// The daemon's process began: the zero of its clock.
    DaemonStart,
    /// Its hello went to its parent: the anchor of its clock on the front end's.
    Hello,
    LaunchReceived,
    /// The process map is computed from the launch message.
    MapComputed,
    /// The node's own fabrics and topology are known (started before the launch arrives).
    FabricDiscovered,
    /// The fabric exchange is over (or not wanted) and the endpoint table written: PMI or PMIx
    /// set-up can begin.
    FabricReady,
    FirstSpawn,
    LastSpawn,
    /// A local rank's first PMI request or PMIx connection (its MPI_Init reached the server).
    FirstPmiInit,
    LastPmiInit,
    /// A PMI or PMIx fence completed here.
    FirstFence,
    LastFence,
    /// Every local rank exited and its output was sent.
    RanksExited,
}

impl Phase {
    pub const ALL: [Phase; 13] = [
        Phase::DaemonStart,
        Phase::Hello,
        Phase::LaunchReceived,
        Phase::MapComputed,
        Phase::FabricDiscovered,
        Phase::FabricReady,
        Phase::FirstSpawn,
        Phase::LastSpawn,
        Phase::FirstPmiInit,
        Phase::LastPmiInit,
        Phase::FirstFence,
        Phase::LastFence,
        Phase::RanksExited,
    ];

    /// The report's key.
    pub fn name(self) -> &'static str {
        match self {
            Phase::DaemonStart => "daemon_start",
            Phase::Hello => "hello",
            Phase::LaunchReceived => "launch_received",
            Phase::MapComputed => "map_computed",
            Phase::FabricDiscovered => "fabric_discovered",
            Phase::FabricReady => "fabric_ready",
            Phase::FirstSpawn => "first_spawn",
            Phase::LastSpawn => "last_spawn",
            Phase::FirstPmiInit => "first_pmi_init",
            Phase::LastPmiInit => "last_pmi_init",
            Phase::FirstFence => "first_fence",
            Phase::LastFence => "last_fence",
            Phase::RanksExited => "ranks_exited",
        }
    }

    /// The `Last*` phases move with every new mark; the others keep the first.
    fn keeps_latest(self) -> bool {
        matches!(self, Phase::LastSpawn | Phase::LastPmiInit | Phase::LastFence)
    }
}

/// What a daemon's services tell its recorder (as an effect: they own no clock).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mark {
    /// A local rank's first PMI request or PMIx connection.
    PmiInit(u32),
    /// A PMI or PMIx fence completed here.
    Fence,
}

/// One rank's marks, in microseconds on its daemon's clock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RankMarks {
    pub rank: u32,
    pub spawn_us: Option<u64>,
    pub pmi_init_us: Option<u64>,
}

/// What a daemon sends up: its marks in microseconds since its process started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMarks {
    pub phases: Vec<(Phase, u64)>,
    pub ranks: Vec<RankMarks>,
}

impl NodeMarks {
    pub fn at(&self, phase: Phase) -> Option<u64> {
        self.phases.iter().find(|(p, _)| *p == phase).map(|&(_, us)| us)
    }
}

/// A daemon's recorder.
#[derive(Debug)]
pub struct Recorder {
    t0: Instant,
    marks: NodeMarks,
}

impl Recorder {
    /// A daemon whose process started at `t0` and whose hello went just now.
    pub fn joined(t0: Instant) -> Recorder {
        let mut r = Recorder { t0, marks: NodeMarks { phases: vec![(Phase::DaemonStart, 0)], ranks: Vec::new() } };
        r.mark(Phase::Hello, Instant::now());
        r
    }

    pub fn apply(&mut self, mark: Mark, at: Instant) {
        match mark {
            Mark::PmiInit(rank) => self.pmi_init(rank, at),
            Mark::Fence => self.fence(at),
        }
    }

    /// The ranks are done: the last phase, and every mark, to send up.
    pub fn finish(&mut self) -> NodeMarks {
        self.mark(Phase::RanksExited, Instant::now());
        self.marks.clone()
    }

    fn us(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.t0).as_micros() as u64
    }

    pub fn mark(&mut self, phase: Phase, at: Instant) {
        let us = self.us(at);
        match self.marks.phases.iter_mut().find(|(p, _)| *p == phase) {
            Some(m) if phase.keeps_latest() => m.1 = m.1.max(us),
            Some(_) => {}
            None => self.marks.phases.push((phase, us)),
        }
    }

    fn rank(&mut self, rank: u32) -> &mut RankMarks {
        let i = match self.marks.ranks.iter().position(|r| r.rank == rank) {
            Some(i) => i,
            None => {
                self.marks.ranks.push(RankMarks { rank, spawn_us: None, pmi_init_us: None });
                self.marks.ranks.len() - 1
            }
        };
        &mut self.marks.ranks[i]
    }

    pub fn spawned(&mut self, rank: u32, at: Instant) {
        let us = self.us(at);
        self.rank(rank).spawn_us.get_or_insert(us);
        self.mark(Phase::FirstSpawn, at);
        self.mark(Phase::LastSpawn, at);
    }

    /// The rank's first PMI request or PMIx connection; later ones are no news.
    pub fn pmi_init(&mut self, rank: u32, at: Instant) {
        let us = self.us(at);
        if self.rank(rank).pmi_init_us.is_none() {
            self.rank(rank).pmi_init_us = Some(us);
            self.mark(Phase::FirstPmiInit, at);
            self.mark(Phase::LastPmiInit, at);
        }
    }

    pub fn fence(&mut self, at: Instant) {
        self.mark(Phase::FirstFence, at);
        self.mark(Phase::LastFence, at);
    }

    #[cfg(test)]
    pub fn marks(&self) -> &NodeMarks {
        &self.marks
    }
}

/// A node's marks on the front end's clock: milliseconds since rlaunch started.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Aligned {
    pub phases: Vec<(Phase, f64)>,
    pub ranks: Vec<(u32, Option<f64>, Option<f64>)>,
}

/// `marks` of a daemon whose hello reached the front end `hello_ms` after rlaunch started. None
/// when the daemon recorded no hello (it cannot be anchored).
pub fn align(marks: &NodeMarks, hello_ms: f64) -> Option<Aligned> {
    let hello_us = marks.at(Phase::Hello)?;
    let at = |us: u64| hello_ms + (us as f64 - hello_us as f64) / 1000.0;
    let mut phases: Vec<(Phase, f64)> = marks.phases.iter().map(|&(p, us)| (p, at(us))).collect();
    phases.sort_by_key(|(p, _)| Phase::ALL.iter().position(|q| q == p));
    let ranks = marks.ranks.iter().map(|r| (r.rank, r.spawn_us.map(at), r.pmi_init_us.map(at))).collect();
    Some(Aligned { phases, ranks })
}

/// The front end's own marks of a node, before its daemon's phases.
pub const FRONT_END_MARKS: [&str; 5] = ["start_requested", "ssh_connected", "ssh_keys_exchanged", "ssh_authenticated", "ssh_exec_sent"];

/// A node's marks by name, in milliseconds since rlaunch started: the front end's own (from
/// [`FRONT_END_MARKS`]) and its daemon's phases.
pub type NamedMarks = Vec<(&'static str, f64)>;

/// The `-v` line: for each mark, when the last node reached it (the launch's critical path),
/// and which node that was when there is more than one.
pub fn summary(nodes: &[(String, NamedMarks)]) -> Option<String> {
    let mut parts = Vec::new();
    for name in FRONT_END_MARKS.into_iter().chain(Phase::ALL.iter().map(|p| p.name())) {
        let at = |marks: &NamedMarks| marks.iter().find(|(n, _)| *n == name).map(|&(_, ms)| ms);
        let last = nodes.iter().filter_map(|(n, m)| at(m).map(|ms| (n, ms))).max_by(|a, b| a.1.total_cmp(&b.1));
        if let Some((node, ms)) = last {
            let who = if nodes.len() > 1 { format!(" ({node})") } else { String::new() };
            parts.push(format!("{name} {ms:.1}{who}"));
        }
    }
    (!parts.is_empty()).then(|| format!("rlaunch: timeline, ms since start, last node to get there: {}", parts.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn first_phases_keep_the_first_mark_and_last_phases_the_latest() {
        let t0 = Instant::now();
        let mut r = Recorder { t0, marks: NodeMarks { phases: vec![(Phase::DaemonStart, 0)], ranks: Vec::new() } };
        r.mark(Phase::LaunchReceived, t0 + Duration::from_millis(2));
        r.mark(Phase::LaunchReceived, t0 + Duration::from_millis(9));
        r.spawned(3, t0 + Duration::from_millis(4));
        r.spawned(4, t0 + Duration::from_millis(6));
        r.spawned(3, t0 + Duration::from_millis(8));
        let m = r.marks();
        assert_eq!(m.at(Phase::LaunchReceived), Some(2000));
        assert_eq!(m.at(Phase::FirstSpawn), Some(4000));
        assert_eq!(m.at(Phase::LastSpawn), Some(8000));
        assert_eq!(m.ranks[0], RankMarks { rank: 3, spawn_us: Some(4000), pmi_init_us: None });
    }

    #[test]
    fn a_rank_is_initialized_once() {
        let t0 = Instant::now();
        let mut r = Recorder { t0, marks: NodeMarks { phases: vec![(Phase::DaemonStart, 0)], ranks: Vec::new() } };
        r.pmi_init(1, t0 + Duration::from_millis(5));
        r.pmi_init(1, t0 + Duration::from_millis(7));
        r.pmi_init(0, t0 + Duration::from_millis(6));
        assert_eq!(r.marks().at(Phase::FirstPmiInit), Some(5000));
        assert_eq!(r.marks().at(Phase::LastPmiInit), Some(6000));
        assert_eq!(r.marks().ranks.iter().find(|x| x.rank == 1).unwrap().pmi_init_us, Some(5000));
    }

    #[test]
    fn marks_move_onto_the_front_ends_clock_at_the_hello() {
        let marks = NodeMarks { phases: vec![(Phase::DaemonStart, 0), (Phase::LaunchReceived, 3000), (Phase::Hello, 1000)], ranks: vec![RankMarks { rank: 0, spawn_us: Some(5500), pmi_init_us: None }] };
        let a = align(&marks, 10.0).unwrap();
        assert_eq!(a.phases, vec![(Phase::DaemonStart, 9.0), (Phase::Hello, 10.0), (Phase::LaunchReceived, 12.0)]);
        assert_eq!(a.ranks, vec![(0, Some(14.5), None)]);
        assert_eq!(align(&NodeMarks::default(), 1.0), None);
    }

    #[test]
    fn the_summary_names_the_last_node_per_phase() {
        let a: NamedMarks = vec![("hello", 3.0), ("ranks_exited", 9.0)];
        let b: NamedMarks = vec![("ranks_exited", 8.0), ("ssh_connected", 1.0), ("hello", 5.0)];
        let line = summary(&[("n1".into(), a.clone()), ("n2".into(), b)]).unwrap();
        assert_eq!(line, "rlaunch: timeline, ms since start, last node to get there: ssh_connected 1.0 (n2), hello 5.0 (n2), ranks_exited 9.0 (n1)");
        assert_eq!(summary(&[("n1".into(), a)]).unwrap(), "rlaunch: timeline, ms since start, last node to get there: hello 3.0, ranks_exited 9.0");
        assert_eq!(summary(&[]), None);
    }
}
