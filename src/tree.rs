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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Router {
    topo: Topology,
    me: Option<u32>,
}

impl Router {
    pub fn new(topo: Topology, me: Option<u32>) -> Router {
        Router { topo, me }
    }

    pub fn topology(&self) -> &Topology {
        &self.topo
    }

    /// This vertex: None for the front end.
    pub fn me(&self) -> Option<u32> {
        self.me
    }

    /// The child nodes of this vertex.
    pub fn children(&self) -> Range<u32> {
        self.topo.children_of(self.me)
    }

    /// Whether `node` is a direct child of this vertex.
    pub fn is_child(&self, node: u32) -> bool {
        self.children().contains(&node)
    }

    /// Where a message for `target` goes from here.
    pub fn next_hop(&self, target: u32) -> Hop {
        if Some(target) == self.me {
            return Hop::Local;
        }
        if target >= self.topo.nnodes() {
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
            let up = self.topo.parent_of(cur);
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

        #[test]
        fn depth_is_the_longest_path(n in 1u32..500, k in 1u32..9) {
            let topo = Topology::new(n, k);
            let longest = (0..n).map(|mut x| { let mut d = 1; while let Some(p) = topo.parent_of(x) { d += 1; x = p; } d }).max().unwrap();
            prop_assert_eq!(topo.depth(), longest);
        }
    }
}
