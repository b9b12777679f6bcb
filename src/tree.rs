//! The daemon overlay tree and how messages find their way through it, computed from node rank
//! alone so that every daemon and the front end agree without talking.
//!
//! The shape is [`fabrics::collective::Tree`], the same one the fabric exchange runs on: tree
//! member 0 is the front end and node rank `n` is member `n + 1`, so the parent of member `t` is
//! `(t - 1) / k` and the front end has nodes `0..k` as direct children.
//!
//! [`Router`] answers PRRTE's "routed" question for one vertex: which of my links is the next hop
//! towards node N. It does no I/O; [`crate::links::Links`] sends on the hop it names.

use fabrics::collective::Tree;
use std::collections::BTreeSet;
use std::ops::Range;

/// The tree of one job: `nnodes` daemons below the front end, fan-out `fanout`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Topology {
    tree: Tree,
}

impl Topology {
    /// A fan-out of 0 is treated as 1 (a chain), as the command line never allows 0.
    pub fn new(nnodes: u32, fanout: u32) -> Topology {
        let tree = Tree::new(nnodes.saturating_add(1), fanout.max(1)).expect("size and arity are at least 1");
        Topology { tree }
    }

    pub fn nnodes(&self) -> u32 {
        self.tree.size() - 1
    }

    /// The same tree as a collective's member tree (member = node + 1, the front end is 0).
    pub fn collective_tree(&self) -> Tree {
        self.tree
    }

    /// The parent daemon of `node`; None when its parent is the front end.
    pub fn parent_of(&self, node: u32) -> Option<u32> {
        self.tree.parent(node.saturating_add(1)).and_then(|p| p.checked_sub(1))
    }

    /// Children of `parent` (None = the front end).
    pub fn children_of(&self, parent: Option<u32>) -> Range<u32> {
        let member = parent.map_or(0, |n| n.saturating_add(1));
        if member >= self.tree.size() {
            return 0..0;
        }
        let r = self.tree.children(member);
        r.start.saturating_sub(1)..r.end.saturating_sub(1)
    }

    /// Whether `node` is `ancestor` or lies below it.
    pub fn in_subtree(&self, ancestor: u32, node: u32) -> bool {
        self.tree.in_subtree(ancestor.saturating_add(1), node.saturating_add(1))
    }

    /// Depth of the tree below the front end (1 = every daemon is a direct child, 0 = no node).
    pub fn depth(&self) -> u32 {
        // The last node is the deepest: members are numbered level by level.
        let Some(mut node) = self.nnodes().checked_sub(1) else { return 0 };
        let mut d = 1;
        while let Some(p) = self.parent_of(node) {
            d += 1;
            node = p;
        }
        d
    }
}

/// The link a message for some node leaves on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hop {
    /// Up, towards the front end (also: the node is not in this job's tree at all).
    Parent,
    /// Down the link to this child node, whose subtree holds the target.
    Child(u32),
    /// The target is this vertex.
    Local,
}

/// Next-hop routing for one vertex of the tree: the front end (`me` None) or node `me`.
///
/// Lost nodes (issue 17) are skipped: a node whose parent is lost hangs below its nearest live
/// ancestor (tree repair), so every vertex that knows the same lost set routes the same way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Router {
    topo: Topology,
    me: Option<u32>,
    lost: BTreeSet<u32>,
}

impl Router {
    pub fn new(topo: Topology, me: Option<u32>) -> Router {
        Router { topo, me, lost: BTreeSet::new() }
    }

    pub fn topology(&self) -> &Topology {
        &self.topo
    }

    /// This vertex: None for the front end.
    pub fn me(&self) -> Option<u32> {
        self.me
    }

    /// `node` is gone from the tree; true when that is news.
    pub fn lose(&mut self, node: u32) -> bool {
        node < self.topo.nnodes() && Some(node) != self.me && self.lost.insert(node)
    }

    pub fn is_lost(&self, node: u32) -> bool {
        self.lost.contains(&node)
    }

    pub fn lost(&self) -> &BTreeSet<u32> {
        &self.lost
    }

    /// The nearest ancestor of `node` that is not lost: its parent in the repaired tree (None =
    /// the front end).
    pub fn live_parent(&self, node: u32) -> Option<u32> {
        let mut up = self.topo.parent_of(node);
        while let Some(p) = up.filter(|p| self.lost.contains(p)) {
            up = self.topo.parent_of(p);
        }
        up
    }

    /// The live child nodes of this vertex: its own, and those of lost nodes below it that now
    /// hang here.
    pub fn children(&self) -> Vec<u32> {
        let mut out = Vec::new();
        let mut stack: Vec<u32> = self.topo.children_of(self.me).collect();
        while let Some(c) = stack.pop() {
            if self.lost.contains(&c) {
                stack.extend(self.topo.children_of(Some(c)));
            } else {
                out.push(c);
            }
        }
        out.sort_unstable();
        out
    }

    /// Whether `node` is a direct child of this vertex in the repaired tree.
    pub fn is_child(&self, node: u32) -> bool {
        node < self.topo.nnodes() && !self.lost.contains(&node) && Some(node) != self.me && self.live_parent(node) == self.me
    }

    /// Where this daemon reconnects when its parent link is lost, nearest first: every ancestor
    /// not known to be lost, then the front end (None). The caller marks its parent lost first.
    pub fn rejoin_candidates(&self) -> Vec<Option<u32>> {
        let Some(me) = self.me else { return Vec::new() };
        let mut out = Vec::new();
        let mut up = self.topo.parent_of(me);
        while let Some(p) = up {
            if !self.lost.contains(&p) {
                out.push(Some(p));
            }
            up = self.topo.parent_of(p);
        }
        out.push(None);
        out
    }

    /// The nodes strictly between this vertex and `node` below it on the tree's path: when
    /// `node` reconnects here, they are the ones it found gone.
    pub fn between(&self, node: u32) -> Vec<u32> {
        let mut out = Vec::new();
        let mut up = self.topo.parent_of(node);
        while up != self.me {
            match up {
                Some(p) => {
                    out.push(p);
                    up = self.topo.parent_of(p);
                }
                None => return Vec::new(),
            }
        }
        out
    }

    /// Where a message for `target` goes from here.
    pub fn next_hop(&self, target: u32) -> Hop {
        if Some(target) == self.me {
            return Hop::Local;
        }
        if target >= self.topo.nnodes() || self.lost.contains(&target) {
            return Hop::Parent;
        }
        let below = match self.me {
            None => true,
            Some(me) => self.topo.in_subtree(me, target),
        };
        if !below {
            return Hop::Parent;
        }
        // Walk up from the target to the child of this vertex on its path: O(depth).
        let mut cur = target;
        loop {
            let up = self.live_parent(cur);
            if up == self.me {
                return Hop::Child(cur);
            }
            match up {
                Some(p) => cur = p,
                None => return Hop::Parent,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn children_of(parent: Option<u32>, fanout: u32, nnodes: u32) -> Range<u32> {
        Topology::new(nnodes, fanout).children_of(parent)
    }

    fn parent_of(node: u32, fanout: u32) -> Option<u32> {
        Topology::new(node + 1, fanout).parent_of(node)
    }

    #[test]
    fn small_trees() {
        assert_eq!(children_of(None, 2, 7), 0..2);
        assert_eq!(children_of(Some(0), 2, 7), 2..4);
        assert_eq!(children_of(Some(1), 2, 7), 4..6);
        assert_eq!(children_of(Some(2), 2, 7), 6..7);
        assert_eq!(children_of(Some(3), 2, 7), 7..7);
        assert_eq!(children_of(Some(9), 2, 7), 0..0);
        assert_eq!(parent_of(0, 2), None);
        assert_eq!(parent_of(5, 2), Some(1));
        let depth = |n, k| Topology::new(n, k).depth();
        assert_eq!(depth(8, 2), 3);
        assert_eq!(depth(256, 4), 4);
        assert_eq!(depth(1, 32), 1);
        assert_eq!(depth(0, 32), 0);
        let t = Topology::new(7, 2);
        assert!(t.in_subtree(0, 6) && !t.in_subtree(1, 6) && t.in_subtree(2, 6) && !t.in_subtree(6, 2));
    }

    #[test]
    fn routes_in_a_binary_tree_of_seven() {
        // FE -> 0,1; 0 -> 2,3; 1 -> 4,5; 2 -> 6.
        let topo = Topology::new(7, 2);
        let fe = Router::new(topo, None);
        assert_eq!(fe.next_hop(6), Hop::Child(0));
        assert_eq!(fe.next_hop(5), Hop::Child(1));
        assert_eq!(fe.next_hop(1), Hop::Child(1));
        assert_eq!(fe.next_hop(7), Hop::Parent, "not a node of the job");
        let n0 = Router::new(topo, Some(0));
        assert_eq!(n0.next_hop(0), Hop::Local);
        assert_eq!(n0.next_hop(6), Hop::Child(2));
        assert_eq!(n0.next_hop(3), Hop::Child(3));
        assert_eq!(n0.next_hop(4), Hop::Parent);
        assert_eq!(n0.next_hop(1), Hop::Parent);
        let n6 = Router::new(topo, Some(6));
        assert_eq!(n6.next_hop(2), Hop::Parent);
        assert!(n6.children().is_empty());
        assert!(n0.is_child(3) && !n0.is_child(6));
    }

    #[test]
    fn a_lost_inner_node_s_children_hang_below_its_parent() {
        // FE -> 0,1; 0 -> 2,3; 1 -> 4,5; 2 -> 6. Node 0 is lost.
        let topo = Topology::new(7, 2);
        let mut fe = Router::new(topo, None);
        assert!(fe.lose(0) && !fe.lose(0));
        assert_eq!(fe.children(), [1, 2, 3]);
        assert_eq!(fe.next_hop(6), Hop::Child(2));
        assert_eq!(fe.next_hop(0), Hop::Parent, "a lost node is unreachable");
        assert!(fe.is_child(3) && !fe.is_child(0) && !fe.is_child(6));
        let mut n6 = Router::new(topo, Some(6));
        n6.lose(2);
        assert_eq!(n6.rejoin_candidates(), [Some(0), None]);
        n6.lose(0);
        assert_eq!(n6.rejoin_candidates(), [None]);
        let n1 = Router::new(topo, Some(1));
        assert_eq!(n1.between(5), Vec::<u32>::new());
        assert_eq!(fe.between(6), [2, 0]);
        assert_eq!(Router::new(topo, Some(0)).between(6), [2]);
    }

    proptest! {
        #[test]
        fn every_node_is_child_of_its_parent(n in 1u32..2000, k in 1u32..40) {
            let mut seen = vec![0u32; n as usize];
            for p in std::iter::once(None).chain((0..n).map(Some)) {
                for c in children_of(p, k, n) {
                    prop_assert_eq!(parent_of(c, k), p);
                    seen[c as usize] += 1;
                }
            }
            prop_assert!(seen.iter().all(|&s| s == 1));
        }

        /// Following next hops from any vertex reaches any node, each hop one tree edge, in at
        /// most twice the depth.
        #[test]
        fn next_hops_reach_every_node(n in 1u32..300, k in 1u32..9, from in 0u32..300, to in 0u32..300) {
            let topo = Topology::new(n, k);
            let (from, to) = (from % n, to % n);
            let mut at = Some(from);
            let mut hops = 0;
            loop {
                let hop = Router::new(topo, at).next_hop(to);
                match hop {
                    Hop::Local => break,
                    Hop::Parent => { prop_assert!(at.is_some(), "the front end has no parent"); at = topo.parent_of(at.unwrap()); }
                    Hop::Child(c) => { prop_assert_eq!(topo.parent_of(c), at); at = Some(c); }
                }
                hops += 1;
                prop_assert!(hops <= 2 * topo.depth() + 1);
            }
            prop_assert_eq!(at, Some(to));
        }

        /// With any set of lost nodes, next hops from any live vertex reach any live node, each
        /// hop an edge of the repaired tree (a node below its nearest live ancestor), and the
        /// live children of all vertices are every live node once.
        #[test]
        fn repaired_routes_reach_every_live_node(n in 1u32..200, k in 1u32..6, lost in proptest::collection::vec(0u32..200, 0..20), from in 0u32..200, to in 0u32..200) {
            let topo = Topology::new(n, k);
            let lost: BTreeSet<u32> = lost.into_iter().map(|x| x % n).collect();
            let router = |at: Option<u32>| { let mut r = Router::new(topo, at); for &l in &lost { r.lose(l); } r };
            let live: Vec<u32> = (0..n).filter(|x| !lost.contains(x)).collect();
            let mut seen = vec![0u32; n as usize];
            for v in std::iter::once(None).chain(live.iter().copied().map(Some)) {
                for c in router(v).children() {
                    prop_assert_eq!(router(None).live_parent(c), v);
                    seen[c as usize] += 1;
                }
            }
            for x in 0..n { prop_assert_eq!(seen[x as usize], u32::from(!lost.contains(&x))); }
            if live.is_empty() { return Ok(()); }
            let (from, to) = (live[from as usize % live.len()], live[to as usize % live.len()]);
            let mut at = Some(from);
            let mut hops = 0;
            loop {
                match router(at).next_hop(to) {
                    Hop::Local => break,
                    Hop::Parent => { prop_assert!(at.is_some()); at = router(None).live_parent(at.unwrap()); }
                    Hop::Child(c) => { prop_assert_eq!(router(None).live_parent(c), at); prop_assert!(router(at).is_child(c)); at = Some(c); }
                }
                hops += 1;
                prop_assert!(hops <= 2 * topo.depth() + 1);
            }
            prop_assert_eq!(at, Some(to));
            // A daemon whose parent is lost reconnects to its repaired-tree parent first.
            let mut r = router(Some(to));
            if let Some(p) = topo.parent_of(to) { r.lose(p); }
            let mut all = router(None);
            if let Some(p) = topo.parent_of(to) { all.lose(p); }
            prop_assert_eq!(r.rejoin_candidates().first().copied(), Some(all.live_parent(to)));
            // What it finds gone on the way is what lies between it and that ancestor.
            let mut anc = Router::new(topo, all.live_parent(to));
            for b in anc.between(to) { anc.lose(b); }
            prop_assert!(anc.is_child(to));
        }

        #[test]
        fn depth_is_the_longest_path(n in 1u32..500, k in 1u32..9) {
            let topo = Topology::new(n, k);
            let longest = (0..n).map(|mut x| { let mut d = 1; while let Some(p) = topo.parent_of(x) { d += 1; x = p; } d }).max().unwrap();
            prop_assert_eq!(topo.depth(), longest);
        }
    }
}
