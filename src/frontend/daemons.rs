//! What the front end knows about each node's daemon: started, joined, done, lost, and when its
//! `--launch-timeout` started to run, and what it reported of its node (launch timeline, sensors
//! in [`super::sensors`]). Pure bookkeeping over the tree; the processes themselves are in
//! [`super::carriers`].

use super::effect::Effect;
use super::reporter::Progress;
use super::sensors::NodeSensors;
use crate::wire::Msg;
use crate::tree::Topology;
use launchers::start::{bracket_v6, StartPhases};
use std::time::{Duration, Instant};

#[derive(Debug, Default, Clone)]
pub struct NodeState {
    /// The start command ran (or the group step covers it).
    pub started: bool,
    /// The daemon said hello: it is in the tree.
    pub joined: bool,
    /// Every rank of the node is reported and its output sent.
    pub done: bool,
    /// Given up on: never started, never joined, or its link broke.
    pub lost: bool,
    pub pid: u32,
    pub hostname: String,
    /// The address its link came from: where its children connect.
    pub addr: Option<String>,
    pub listen_port: u16,
    /// Rendezvous: a joining daemon was given this node.
    pub assigned: bool,
    /// When this node's --launch-timeout started to run.
    pub launch_clock: Option<Instant>,
    pub launch_bytes: u32,
    /// Milliseconds since rlaunch started: its start was asked for, and its hello arrived.
    pub start_ms: Option<f64>,
    pub hello_ms: Option<f64>,
    /// Its launch phases on its own clock (`crate::timeline`), sent when its ranks are done.
    pub marks: Option<crate::timeline::NodeMarks>,
    /// Its in-process ssh start's steps (`ssh_connected`, ...), in milliseconds since rlaunch
    /// started.
    pub ssh_ms: Vec<(&'static str, f64)>,
}

pub struct Daemons {
    topo: Topology,
    nodes: Vec<NodeState>,
    /// The node list's names, for rendezvous.
    names: Vec<String>,
    sensors: NodeSensors,
}

impl Daemons {
    pub fn new(topo: Topology, names: Vec<String>) -> Daemons {
        Daemons { nodes: vec![NodeState::default(); topo.nnodes() as usize], topo, names, sensors: NodeSensors::default() }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn get(&self, node: u32) -> Option<&NodeState> {
        self.nodes.get(node as usize)
    }

    pub fn get_mut(&mut self, node: u32) -> Option<&mut NodeState> {
        self.nodes.get_mut(node as usize)
    }

    pub fn iter(&self) -> impl Iterator<Item = &NodeState> {
        self.nodes.iter()
    }

    /// The clocks that run from the start: every node's when one group step starts them all,
    /// otherwise the front end's own children's.
    pub fn start_clocks(&mut self, now: Instant, group: bool) {
        for n in 0..self.nodes.len() as u32 {
            if group || self.topo.parent_of(n).is_none() {
                self.nodes[n as usize].launch_clock = Some(now);
            }
        }
    }

    /// `node` joined: its children's starts can begin, so their clocks run from now. A deep tree
    /// on a busy machine then fails only the node that is really silent.
    pub fn start_children_clocks(&mut self, node: u32, now: Instant) {
        for k in self.topo.children_of(Some(node)) {
            self.nodes[k as usize].launch_clock.get_or_insert(now);
        }
    }

    /// Nodes whose launch timeout ran out without a hello.
    pub fn late(&self, now: Instant, timeout: Duration) -> Vec<u32> {
        self.waiting().filter(|&n| self.nodes[n as usize].launch_clock.is_some_and(|c| now >= c + timeout)).collect()
    }

    /// The earliest launch deadline still running.
    pub fn next_launch_deadline(&self, timeout: Duration) -> Option<Instant> {
        self.waiting().filter_map(|n| self.nodes[n as usize].launch_clock).map(|c| c + timeout).min()
    }

    /// Nodes not joined and not given up on.
    pub fn waiting(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.nodes.len() as u32).filter(|&n| !self.nodes[n as usize].joined && !self.nodes[n as usize].lost)
    }

    /// A node that cannot be launched takes its subtree with it: nobody will start those.
    pub fn lose_subtree(&mut self, top: u32) {
        for n in 0..self.nodes.len() as u32 {
            if self.topo.in_subtree(top, n) {
                self.nodes[n as usize].lost = true;
            }
        }
    }

    /// `Started`: the size of the launch message as `node` received it.
    pub fn launched(&mut self, node: u32, launch_bytes: u32) {
        if let Some(d) = self.nodes.get_mut(node as usize).filter(|_| launch_bytes > 0) {
            d.launch_bytes = launch_bytes;
        }
    }

    /// What a daemon reports of its node, `t_ms` after rlaunch started: its launch timeline, or
    /// a sensor's change of state.
    pub fn node_report(&mut self, msg: Msg, t_ms: Option<f64>) -> Vec<Effect> {
        match msg {
            Msg::Timeline { node, marks } => self.timeline(node, marks),
            m => self.sensors.on_msg(&self.names, m, t_ms),
        }
    }

    /// Every node's sensor changes and health.
    pub fn sensors(&self) -> &NodeSensors {
        &self.sensors
    }

    /// `Timeline`: when `node`'s daemon reached each launch phase, on its clock.
    pub fn timeline(&mut self, node: u32, marks: crate::timeline::NodeMarks) -> Vec<super::effect::Effect> {
        if let Some(d) = self.nodes.get_mut(node as usize) {
            d.marks = Some(marks);
        }
        Vec::new()
    }

    /// The start of `node`'s daemon was asked for, `ms` after rlaunch started.
    pub fn started(&mut self, node: u32, ms: Option<f64>) {
        if let Some(d) = self.nodes.get_mut(node as usize) {
            (d.started, d.start_ms) = (true, ms);
        }
    }

    /// Each node's in-process ssh steps (`phases` of a node: None when not started that way), in
    /// milliseconds since `t0`, for the timeline.
    pub fn note_ssh(&mut self, phases: impl Fn(u32) -> Option<StartPhases>, t0: Instant) {
        let ms = |at: Option<Instant>| at.map(|at| at.saturating_duration_since(t0).as_secs_f64() * 1000.0);
        for (node, d) in self.nodes.iter_mut().enumerate() {
            let Some(p) = phases(node as u32) else { continue };
            let steps = [("ssh_connected", p.connected), ("ssh_keys_exchanged", p.keys_exchanged), ("ssh_authenticated", p.authenticated), ("ssh_exec_sent", p.exec_sent)];
            d.ssh_ms = steps.into_iter().filter_map(|(name, at)| Some((name, ms(at)?))).collect();
        }
    }

    /// `NodeDone`: every rank of `node` is reported.
    pub fn finished(&mut self, node: u32) -> Vec<super::effect::Effect> {
        if let Some(d) = self.nodes.get_mut(node as usize) {
            d.done = true;
        }
        Vec::new()
    }

    /// Nodes that have neither finished nor been given up on.
    pub fn unfinished(&self) -> Vec<u32> {
        (0..self.nodes.len() as u32).filter(|&n| !self.nodes[n as usize].done && !self.nodes[n as usize].lost).collect()
    }

    /// The daemon counts of the progress line.
    pub fn progress(&self) -> Progress {
        Progress {
            total_nodes: self.nodes.len(),
            started: self.nodes.iter().filter(|d| d.started).count(),
            connected: self.nodes.iter().filter(|d| d.joined).count(),
            ..Progress::default()
        }
    }

    pub fn all_started(&self) -> bool {
        self.nodes.iter().all(|d| d.started)
    }

    pub fn all_joined(&self) -> bool {
        self.nodes.iter().all(|d| d.joined)
    }

    pub fn all_accounted(&self) -> bool {
        self.nodes.iter().all(|d| d.done || d.lost)
    }

    pub fn all_done(&self) -> bool {
        self.nodes.iter().all(|d| d.done)
    }

    /// The address of `node`'s listener, for its children: `ip:port`.
    pub fn listen_addr(&self, node: u32) -> Option<String> {
        let d = self.get(node)?;
        d.joined.then(|| format!("{}:{}", bracket_v6(d.addr.as_deref().unwrap_or("127.0.0.1")), d.listen_port))
    }

    /// Rendezvous: the node a daemon that calls itself `name` becomes — the first unassigned node
    /// of that name, else of that short name (`n1` for `n1.cluster`).
    pub fn pick_for(&self, name: &str) -> Option<u32> {
        let names = &self.names;
        let short = |s: &str| s.split('.').next().unwrap_or(s).to_string();
        let free = |i: &usize| !self.nodes[*i].assigned;
        let pick = (0..self.nodes.len())
            .filter(free)
            .find(|&i| names[i] == name)
            .or_else(|| (0..self.nodes.len()).filter(free).find(|&i| short(&names[i]) == short(name)));
        pick.map(|i| i as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: u32) -> Vec<String> {
        (0..n).map(|i| format!("n{i}")).collect()
    }

    #[test]
    fn launch_clocks_run_per_level() {
        // FE -> 0,1; 0 -> 2,3; 1 -> 4.
        let mut d = Daemons::new(Topology::new(5, 2), names(5));
        let t0 = Instant::now();
        d.start_clocks(t0, false);
        let timeout = Duration::from_secs(30);
        assert_eq!(d.late(t0 + timeout, timeout), vec![0, 1]);
        d.get_mut(0).unwrap().joined = true;
        d.start_children_clocks(0, t0 + Duration::from_secs(20));
        assert_eq!(d.late(t0 + timeout, timeout), vec![1]);
        assert_eq!(d.late(t0 + Duration::from_secs(50), timeout), vec![1, 2, 3]);
        assert_eq!(d.next_launch_deadline(timeout), Some(t0 + timeout));
        let mut g = Daemons::new(Topology::new(5, 2), names(5));
        g.start_clocks(t0, true);
        assert_eq!(g.late(t0 + timeout, timeout), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn losing_a_subtree() {
        let mut d = Daemons::new(Topology::new(5, 2), names(5));
        d.lose_subtree(0);
        d.get_mut(2).unwrap().done = true;
        d.lose_subtree(1);
        assert!(d.get(4).unwrap().lost);
        assert!(d.all_accounted());
        assert!(!d.all_done());
    }

    #[test]
    fn rendezvous_picks_by_full_then_short_name() {
        let names: Vec<String> = ["n1.c", "n2", "n1.c"].iter().map(|s| s.to_string()).collect();
        let mut d = Daemons::new(Topology::new(3, 32), names);
        assert_eq!(d.pick_for("n1.c"), Some(0));
        d.get_mut(0).unwrap().assigned = true;
        assert_eq!(d.pick_for("n1"), Some(2));
        assert_eq!(d.pick_for("n2.other"), Some(1));
        assert_eq!(d.pick_for("n9"), None);
    }
}
