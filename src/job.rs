//! One job as a vertex of the tree sees it: the launch message, the process map computed from it
//! once, this vertex's place in the tree and its local ranks. Built once per daemon when `Launch`
//! arrives (and once at the front end) and passed by reference to every service, so that no
//! service recomputes the map or the fence participants.

use crate::fence;
use crate::tree::{Router, Topology};
use crate::wire::Launch;
use launchers::map::{AppRequest, MapError, ProcMap};

pub struct JobView {
    launch: Box<Launch>,
    map: ProcMap,
    router: Router,
    /// The children of this vertex whose subtree runs ranks: who takes part in fences below it.
    fence_children: Vec<u32>,
    /// Lost nodes replaced by spares (`Msg::Replace`): node -> the spare's daemon that runs its
    /// ranks now (issue 17).
    replaced: std::collections::BTreeMap<u32, u32>,
}

/// The process map every daemon computes from the launch message alone.
pub fn compute_map(launch: &Launch) -> Result<ProcMap, MapError> {
    let slots: Vec<(u32, Option<u32>)> = launch.nodes.iter().map(|n| (n.slots, n.max_slots)).collect();
    let apps: Vec<AppRequest> = launch.apps.iter().map(|a| AppRequest { np: a.np, nodes: a.nodes.clone() }).collect();
    launchers::map::compute_map_with_spares(&slots, &apps, &launch.policy, launch.node_loss.spares)
}

impl JobView {
    /// A daemon's view: node `node` of the job. A launch whose map cannot be computed comes back
    /// with the error: the daemon still relays it and starts its children.
    pub fn for_node(launch: Box<Launch>, node: u32) -> Result<JobView, (Box<Launch>, MapError)> {
        match compute_map(&launch) {
            Ok(map) => Ok(Self::build(launch, map, Some(node))),
            Err(e) => Err((launch, e)),
        }
    }

    /// The front end's view, with the map it computed while checking the command line.
    pub fn for_front_end(launch: Box<Launch>, map: ProcMap) -> JobView {
        Self::build(launch, map, None)
    }

    fn build(launch: Box<Launch>, map: ProcMap, me: Option<u32>) -> JobView {
        let topo = Topology::new(launch.nodes.len() as u32, launch.fanout);
        let fence_children =
            fence::participants(me, &topo, |n| n < map.num_nodes() && !map.ranks_on(n).is_empty());
        JobView { router: Router::new(topo, me), launch, map, fence_children, replaced: Default::default() }
    }

    /// "Node `node` is now host `host`": the spare whose daemon is node `by` took the lost node's
    /// place. Every vertex applies the same message and so computes the same map: node `node`'s
    /// entry names `host`, its ranks are run by `by`'s daemon, and fences and routes follow.
    pub fn replace(&mut self, node: u32, by: u32, host: &str) {
        if node as usize >= self.launch.nodes.len() || by as usize >= self.launch.nodes.len() || node == by {
            return;
        }
        self.launch.nodes[node as usize].name = host.to_string();
        self.replaced.insert(node, by);
        self.router.lose(node);
        self.refence();
    }

    /// Node `node` is lost and no spare takes its place: its ranks go to the free slots of the
    /// other working nodes (`launchers::map::relocate`; `closed`: every lost node, which takes
    /// none), the same on every vertex. False when they do not fit (nothing changes).
    pub fn relocate(&mut self, node: u32, closed: &[u32]) -> bool {
        let slots: Vec<(u32, Option<u32>)> = self.launch.nodes.iter().map(|n| (n.slots, n.max_slots)).collect();
        let Some(map) = launchers::map::relocate(&self.map, &slots, &[node], closed, self.launch.node_loss.spares) else { return false };
        self.map = map;
        self.router.lose(node);
        self.refence();
        true
    }

    fn refence(&mut self) {
        // Fence participants in the repaired tree: every daemon that runs ranks marks its live
        // ancestors up to this vertex.
        let n = self.topology().nnodes();
        let mut busy = vec![false; n as usize];
        for d in (0..n).filter(|&d| !self.router.is_lost(d)) {
            if !self.map_node_of(d).is_some_and(|m| m < self.map.num_nodes() && !self.map.ranks_on(m).is_empty()) {
                continue;
            }
            let mut cur = Some(d);
            while let Some(c) = cur.filter(|&c| !busy[c as usize]) {
                busy[c as usize] = true;
                cur = self.router.live_parent(c);
            }
        }
        self.fence_children = self.router.children().into_iter().filter(|&c| busy[c as usize]).collect();
    }

    /// The map node whose ranks daemon `daemon` runs: its own, or the lost node it replaced
    /// (None: a daemon whose node was replaced by a spare).
    pub fn map_node_of(&self, daemon: u32) -> Option<u32> {
        if self.replaced.contains_key(&daemon) {
            return None;
        }
        Some(self.replaced.iter().find(|(_, &by)| by == daemon).map_or(daemon, |(&n, _)| n))
    }

    /// The daemon that runs map node `node`'s ranks.
    pub fn daemon_of(&self, node: u32) -> u32 {
        self.replaced.get(&node).copied().unwrap_or(node)
    }

    pub fn launch(&self) -> &Launch {
        &self.launch
    }

    pub fn map(&self) -> &ProcMap {
        &self.map
    }

    pub fn topology(&self) -> &Topology {
        self.router.topology()
    }

    /// This vertex: None at the front end.
    pub fn node(&self) -> Option<u32> {
        self.router.me()
    }

    /// The ranks this daemon runs, in local-rank order (none at the front end): its node's, or
    /// those of the lost node it replaced.
    pub fn local_ranks(&self) -> &[u32] {
        match self.node().and_then(|d| self.map_node_of(d)) {
            Some(n) if n < self.map.num_nodes() => self.map.ranks_on(n),
            _ => &[],
        }
    }

    pub fn has_ranks(&self, node: u32) -> bool {
        node < self.map.num_nodes() && !self.map.ranks_on(node).is_empty()
    }

    /// Children of this vertex that take part in fences (their subtree runs ranks).
    pub fn fence_children(&self) -> &[u32] {
        &self.fence_children
    }

    /// Node `node`'s name in the node list ("#N" for a node the job does not have).
    pub fn node_name(&self, node: u32) -> String {
        self.launch.nodes.get(node as usize).map_or_else(|| format!("#{node}"), |n| n.name.clone())
    }

    /// The node (daemon) that runs `rank`.
    pub fn node_of_rank(&self, rank: u32) -> Option<u32> {
        self.map.get(rank).map(|p| self.daemon_of(p.node))
    }
}

/// Test jobs, for the unit tests of whatever takes a [`JobView`].
#[cfg(test)]
pub mod fixture {
    use super::JobView;
    use crate::spec::{AppContext, FabricSpec, NodeEntry, PmiSpec, StdinTarget};
    use crate::wire::Launch;

    /// `nnodes` nodes of `slots` slots, fan-out 2, mapped by slot, these contexts, defaults
    /// elsewhere (no stdin, no `-x`, PMI).
    pub fn launch(job_id: &str, nnodes: u32, slots: u32, apps: Vec<AppContext>) -> Launch {
        Launch {
            job_id: job_id.into(),
            apps,
            nodes: (0..nnodes).map(|i| NodeEntry { name: format!("n{i}"), user: None, slots, max_slots: None }).collect(),
            policy: launchers::map::MapPolicy {
                map_by: launchers::map::MapBy::Slot,
                rank_by: launchers::map::RankBy::Slot,
                oversubscribe: false,
            },
            fanout: 2,
            stdin: StdinTarget::None,
            kill_grace_ms: 2000,
            env: Vec::new(),
            tree_spawn: None,
            fabric: FabricSpec::default(),
            pmi: PmiSpec::default(),
            placement: crate::spec::PlacementSpec::default(),
            node_loss: crate::spec::NodeLossSpec::default(),
            sensors: None,
            image: crate::spec::ImageSpec::default(),
        }
    }

    /// Node `node`'s view of `launch`.
    pub fn view(launch: Launch, node: u32) -> JobView {
        JobView::for_node(Box::new(launch), node).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::AppContext;

    fn launch(nnodes: u32, slots: u32, np: u32, fanout: u32) -> Box<Launch> {
        let app = AppContext { argv: vec!["true".into()], env: Vec::new(), cwd: "/".into(), np: Some(np), nodes: None, without_job_env: false };
        let mut l = fixture::launch("rl-test", nnodes, slots, vec![app]);
        l.fanout = fanout;
        Box::new(l)
    }

    #[test]
    fn daemon_and_front_end_agree_on_the_map() {
        // 7 nodes of 2 slots, 9 ranks: nodes 0-3 full, node 4 has one rank, 5 and 6 none.
        let l = launch(7, 2, 9, 2);
        let fe = JobView::for_front_end(l.clone(), compute_map(&l).unwrap());
        let n1 = JobView::for_node(l.clone(), 1).unwrap();
        let n5 = JobView::for_node(l, 5).unwrap();
        assert_eq!(fe.map(), n1.map());
        assert_eq!(n1.local_ranks(), &[2, 3]);
        assert!(fe.local_ranks().is_empty() && n5.local_ranks().is_empty());
        assert_eq!(fe.node_of_rank(8), Some(4));
        // FE -> 0,1; 1 -> 4,5: node 5's subtree has no ranks and stays out of fences.
        assert_eq!(fe.fence_children(), &[0, 1]);
        assert_eq!(n1.fence_children(), &[4]);
        assert!(n5.fence_children().is_empty());
    }

    #[test]
    fn a_spare_takes_a_lost_node_s_place_on_every_vertex() {
        // 7 nodes of 2 slots, 12 ranks, node 6 a spare; FE -> 0,1; 0 -> 2,3; 1 -> 4,5; 2 -> 6.
        let mut l = launch(7, 2, 12, 2);
        l.node_loss.spares = 1;
        let map = compute_map(&l).unwrap();
        assert!(map.ranks_on(6).is_empty());
        let mut views: Vec<JobView> = (0..7).map(|n| JobView::for_node(l.clone(), n).unwrap()).collect();
        views.push(JobView::for_front_end(l.clone(), map.clone()));
        for v in &mut views {
            v.replace(4, 6, "spare-host");
        }
        for v in &views {
            assert_eq!(v.map(), &map, "the map itself is unchanged: node 4's ranks stay node 4's");
            assert_eq!(v.node_name(4), "spare-host");
            assert_eq!(v.node_of_rank(8), Some(6));
            assert_eq!(v.node_of_rank(0), Some(0));
        }
        assert_eq!(views[6].local_ranks(), &[8, 9]);
        assert!(views[4].local_ranks().is_empty(), "the lost node runs nothing");
        // Node 6 hangs below node 2 (in node 0's subtree); node 4 is gone from node 1's fences.
        assert_eq!(views[1].fence_children(), &[5]);
        assert_eq!(views[2].fence_children(), &[6]);
        assert_eq!(views[7].fence_children(), &[0, 1]);
    }
}
