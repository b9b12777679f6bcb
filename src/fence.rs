//! The PMI fence as a tree collective over the daemon overlay, for one tree vertex (a daemon or
//! the front end). No I/O: the event loops feed contributions in and send what comes out.
//!
//! Up: a daemon waits for its own ranks (the engine's `FenceReady`) and for every child subtree
//! that has ranks, merges the puts and sends one contribution to its parent. The front end is the
//! root: once its participating children have contributed, the fence is complete and the merged
//! set goes down once per edge (`FenceDone`), each daemon relaying it to its participating
//! children and answering its own ranks.
//!
//! Subtrees without ranks never enter a fence (their engines have no rank to wait for), so they
//! are left out of the participant lists: everyone derives the same lists from the process map.
//!
//! Merge order is the vertex's own puts first, then its children's contributions in node order;
//! a later value for a key replaces an earlier one. PMI leaves two ranks putting one key
//! undefined, so any fixed order is right; a fixed one makes every node see the same value.

use crate::tree;
use std::collections::{BTreeMap, HashMap};

/// Key-value pairs put since the previous fence.
pub type Puts = Vec<(String, String)>;

/// Bytes of frame room kept for the message around the puts (variant tag, sequence number,
/// length prefixes are counted per pair below).
const FRAME_OVERHEAD: usize = 1024;
/// The largest merged fence data that still fits one tree frame ([`crate::wire::MAX_FRAME`]).
pub const MAX_FENCE_BYTES: usize = crate::wire::MAX_FRAME - FRAME_OVERHEAD;
/// Per-pair encoding overhead: two varint length prefixes of up to 5 bytes each.
const PAIR_OVERHEAD: usize = 10;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FenceError {
    #[error("node {node} sent data for PMI fence {got} while fence {expected} is in progress on {at}; the daemons disagree about the fence sequence (mixed rlaunch versions?)")]
    WrongSeq { at: String, node: u32, got: u64, expected: u64 },
    #[error("the ranks on {at} entered PMI fence {got} while fence {expected} is in progress; internal error between the PMI engine and the fence")]
    WrongLocalSeq { at: String, got: u64, expected: u64 },
    #[error("node {node} contributed to PMI fence {seq} twice (seen on {at}); internal error in the fence relay")]
    Duplicate { at: String, node: u32, seq: u64 },
    #[error("node {node} sent PMI fence data to {at}, which is not its parent or has no ranks below it; internal error in the fence relay")]
    NotAParticipant { at: String, node: u32 },
    #[error("the local ranks entered PMI fence {seq} on {at}, which runs no ranks; internal error")]
    NoLocalRanks { at: String, seq: u64 },
    #[error("PMI fence {got} completed from above while {at} waits for fence {expected}; the daemons disagree about the fence sequence")]
    WrongDone { at: String, got: u64, expected: u64 },
    #[error("PMI fence {seq}: the key-value data put by the ranks below {at} reached {bytes} bytes, over the {MAX_FENCE_BYTES}-byte limit of one tree message; rerun with --pmi-lazy so values are fetched on demand instead of broadcast")]
    TooLarge { at: String, seq: u64, bytes: usize },
}

/// The fence state of one tree vertex. Fences are strictly sequential: the next one cannot start
/// anywhere before the current one completed everywhere, because every rank waits in it.
#[derive(Debug, Clone)]
pub struct Fence {
    /// For messages: "node 3" or "the front end".
    at: String,
    has_local: bool,
    /// Participating children, ascending.
    children: Vec<u32>,
    /// Fence in progress (the engine numbers fences from 1).
    seq: u64,
    local: Option<Puts>,
    from_children: BTreeMap<u32, Puts>,
    /// The contribution went up (or, at the root, the fence completed) and `done` is awaited.
    sent: bool,
}

/// What a vertex does when its subtree's contribution is complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    pub seq: u64,
    /// This subtree's puts, merged. At the root: the whole job's, to send down.
    pub puts: Puts,
}

impl Fence {
    /// `has_local`: this vertex runs ranks (never the front end). `children`: the child nodes
    /// whose subtrees run ranks ([`participants`]).
    pub fn new(at: impl Into<String>, has_local: bool, mut children: Vec<u32>) -> Self {
        children.sort_unstable();
        children.dedup();
        Fence {
            at: at.into(),
            has_local,
            children,
            seq: 1,
            local: None,
            from_children: BTreeMap::new(),
            sent: false,
        }
    }

    /// The children that get `FenceDone` from this vertex.
    pub fn children(&self) -> &[u32] {
        &self.children
    }

    /// The fence in progress.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Whether this vertex runs ranks of its own.
    pub fn has_local(&self) -> bool {
        self.has_local
    }

    /// The engine's `FenceReady`: every local rank entered fence `seq`.
    pub fn local(&mut self, seq: u64, puts: Puts) -> Result<Option<Ready>, FenceError> {
        if !self.has_local {
            return Err(FenceError::NoLocalRanks { at: self.at.clone(), seq });
        }
        if seq != self.seq || self.sent || self.local.is_some() {
            return Err(FenceError::WrongLocalSeq {
                at: self.at.clone(),
                got: seq,
                expected: if self.sent { self.seq + 1 } else { self.seq },
            });
        }
        self.local = Some(puts);
        self.try_complete()
    }

    /// A child's `Fence` message: its subtree's merged puts for fence `seq`.
    pub fn child(&mut self, node: u32, seq: u64, puts: Puts) -> Result<Option<Ready>, FenceError> {
        if self.children.binary_search(&node).is_err() {
            return Err(FenceError::NotAParticipant { at: self.at.clone(), node });
        }
        if seq != self.seq || self.sent {
            return Err(FenceError::WrongSeq {
                at: self.at.clone(),
                node,
                got: seq,
                expected: if self.sent { self.seq + 1 } else { self.seq },
            });
        }
        if self.from_children.contains_key(&node) {
            return Err(FenceError::Duplicate { at: self.at.clone(), node, seq });
        }
        self.from_children.insert(node, puts);
        self.try_complete()
    }

    /// Fence `seq` completed above: the next fence may begin. The caller relays the merged set to
    /// [`Fence::children`] and hands it to its engine when it runs ranks.
    /// The front end's fence (PMI and PMIx alike): the children of the root that run ranks.
    pub fn root(children: Vec<u32>) -> Self {
        Fence::new("the front end", false, children)
    }

    /// At the root: child `node`'s contribution. When it was the last one the fence is complete
    /// job-wide; the merged set is returned to be sent down to [`Fence::children`].
    pub fn root_contribution(&mut self, node: u32, seq: u64, puts: Puts) -> Result<Option<Ready>, FenceError> {
        let ready = self.child(node, seq, puts)?;
        if let Some(r) = &ready {
            self.done(r.seq)?;
        }
        Ok(ready)
    }

    pub fn done(&mut self, seq: u64) -> Result<(), FenceError> {
        if !self.sent || seq != self.seq {
            return Err(FenceError::WrongDone { at: self.at.clone(), got: seq, expected: self.seq });
        }
        self.sent = false;
        self.seq += 1;
        Ok(())
    }

    fn try_complete(&mut self) -> Result<Option<Ready>, FenceError> {
        if (self.has_local && self.local.is_none()) || self.from_children.len() < self.children.len() {
            return Ok(None);
        }
        let mut parts = Vec::with_capacity(1 + self.from_children.len());
        parts.extend(self.local.take());
        parts.extend(std::mem::take(&mut self.from_children).into_values());
        self.sent = true;
        let puts = merge(parts);
        let bytes = encoded_size(&puts);
        if bytes > MAX_FENCE_BYTES {
            return Err(FenceError::TooLarge { at: self.at.clone(), seq: self.seq, bytes });
        }
        Ok(Some(Ready { seq: self.seq, puts }))
    }
}

/// Concatenates in order, keeping each key once at the position of its first appearance with
/// its last value.
pub fn merge(parts: Vec<Puts>) -> Puts {
    let total: usize = parts.iter().map(Vec::len).sum();
    if parts.len() == 1 {
        // One part: the engine already made the keys unique.
        return parts.into_iter().next().unwrap_or_default();
    }
    let mut out: Puts = Vec::with_capacity(total);
    let mut index: HashMap<String, usize> = HashMap::with_capacity(total);
    for part in parts {
        for (k, v) in part {
            match index.get(&k) {
                Some(&i) => out[i].1 = v,
                None => {
                    index.insert(k.clone(), out.len());
                    out.push((k, v));
                }
            }
        }
    }
    out
}

/// An upper bound of the postcard size of `puts`.
pub fn encoded_size(puts: &Puts) -> usize {
    puts.iter().map(|(k, v)| k.len() + v.len() + PAIR_OVERHEAD).sum::<usize>() + 5
}

/// The children of `parent` (None = the front end) whose subtree runs at least one rank.
/// `has_ranks(n)` says whether node `n` runs ranks.
pub fn participants(parent: Option<u32>, topo: &tree::Topology, has_ranks: impl Fn(u32) -> bool) -> Vec<u32> {
    let nnodes = topo.nnodes();
    let mut busy = vec![false; nnodes as usize];
    // Walk up from every node with ranks, marking its ancestors, so the cost is nodes × depth.
    for n in 0..nnodes {
        if !has_ranks(n) {
            continue;
        }
        let mut cur = Some(n);
        while let Some(c) = cur {
            if busy[c as usize] {
                break;
            }
            busy[c as usize] = true;
            cur = topo.parent_of(c);
        }
    }
    topo.children_of(parent).filter(|&c| busy[c as usize]).collect()
}

/// `--pmi-lazy` at the front end: fences carry no data, and a get that misses on a node becomes
/// a query the front end sends to every node; the first node that has the key answers for all
/// who asked, and when every node said "not here" the key is missing.
///
/// Queries are numbered (`round`) so that an answer still on its way from an earlier query for
/// the same key cannot be counted towards a later one.
#[derive(Debug, Default)]
pub struct Directory {
    /// Nodes that answer every query (the nodes running ranks).
    answering: u32,
    next_round: u64,
    open: HashMap<String, Query>,
    /// Found values, until the next fence (a key may be put again after it).
    cache: HashMap<String, String>,
}

#[derive(Debug)]
struct Query {
    round: u64,
    askers: Vec<u32>,
    answers: u32,
}

/// What the front end does with a lookup request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Already known: answer `to` now.
    Known { value: String },
    /// A query for this key is under way; the asker was added to it.
    Joined,
    /// Send query `round` for the key to every node.
    Ask { round: u64 },
}

/// A finished query: tell these nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub askers: Vec<u32>,
    pub value: Option<String>,
}

impl Directory {
    pub fn new(answering: u32) -> Self {
        Directory { answering, next_round: 1, ..Default::default() }
    }

    pub fn request(&mut self, from: u32, key: &str) -> Lookup {
        if let Some(v) = self.cache.get(key) {
            return Lookup::Known { value: v.clone() };
        }
        if let Some(q) = self.open.get_mut(key) {
            if !q.askers.contains(&from) {
                q.askers.push(from);
            }
            return Lookup::Joined;
        }
        let round = self.next_round;
        self.next_round += 1;
        self.open.insert(key.to_string(), Query { round, askers: vec![from], answers: 0 });
        Lookup::Ask { round }
    }

    /// One node's answer to query `round`.
    pub fn answer(&mut self, round: u64, key: &str, value: Option<String>) -> Option<Verdict> {
        let q = self.open.get_mut(key).filter(|q| q.round == round)?;
        q.answers += 1;
        match value {
            Some(v) => {
                let q = self.open.remove(key)?;
                self.cache.insert(key.to_string(), v.clone());
                Some(Verdict { askers: q.askers, value: Some(v) })
            }
            None if q.answers >= self.answering => {
                let q = self.open.remove(key)?;
                Some(Verdict { askers: q.askers, value: None })
            }
            None => None,
        }
    }

    /// A fence completed: values may change from here on.
    pub fn fence_done(&mut self) {
        self.cache.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(pairs: &[(&str, &str)]) -> Puts {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn leaf_sends_up_its_own_puts_and_waits_for_done() {
        let mut f = Fence::new("node 3", true, vec![]);
        let r = f.local(1, p(&[("a", "1")])).unwrap();
        assert_eq!(r, Some(Ready { seq: 1, puts: p(&[("a", "1")]) }));
        // The next fence cannot be entered before this one is done.
        assert!(matches!(f.local(2, vec![]), Err(FenceError::WrongLocalSeq { expected: 2, .. })));
        assert!(matches!(f.done(2), Err(FenceError::WrongDone { .. })));
        f.done(1).unwrap();
        assert_eq!(f.seq, 2);
        assert!(matches!(f.done(2), Err(FenceError::WrongDone { .. })), "done twice");
        assert_eq!(f.local(2, vec![]).unwrap(), Some(Ready { seq: 2, puts: vec![] }));
    }

    #[test]
    fn inner_vertex_waits_for_local_and_every_participating_child() {
        let mut f = Fence::new("node 0", true, vec![5, 2]);
        assert_eq!(f.children(), &[2, 5]);
        assert_eq!(f.child(5, 1, p(&[("e", "5"), ("k", "from5")])).unwrap(), None);
        assert_eq!(f.local(1, p(&[("k", "local"), ("a", "0")])).unwrap(), None);
        let r = f.child(2, 1, p(&[("c", "2")])).unwrap().expect("complete");
        // Own puts first, then children in node order; the later value of `k` wins in place.
        assert_eq!(r.puts, p(&[("k", "from5"), ("a", "0"), ("c", "2"), ("e", "5")]));
        assert_eq!(r.seq, 1);
    }

    #[test]
    fn root_completes_without_local_ranks() {
        let mut f = Fence::new("the front end", false, vec![0, 1]);
        assert!(matches!(f.local(1, vec![]), Err(FenceError::NoLocalRanks { .. })));
        assert_eq!(f.child(1, 1, p(&[("b", "1")])).unwrap(), None);
        let r = f.child(0, 1, p(&[("a", "0")])).unwrap().unwrap();
        assert_eq!(r.puts, p(&[("a", "0"), ("b", "1")]));
        f.done(1).unwrap();
        assert_eq!(f.child(0, 2, vec![]).unwrap(), None);
    }

    #[test]
    fn wrong_duplicate_and_foreign_contributions_are_errors() {
        let mut f = Fence::new("node 0", true, vec![1, 2]);
        assert!(matches!(f.child(7, 1, vec![]), Err(FenceError::NotAParticipant { node: 7, .. })));
        assert!(matches!(f.child(1, 2, vec![]), Err(FenceError::WrongSeq { got: 2, expected: 1, .. })));
        f.child(1, 1, vec![]).unwrap();
        assert!(matches!(f.child(1, 1, vec![]), Err(FenceError::Duplicate { node: 1, seq: 1, .. })));
        let e = f.child(7, 1, vec![]).unwrap_err().to_string();
        assert!(e.contains("node 7") && e.contains("node 0"), "{e}");
    }

    #[test]
    fn too_much_data_is_an_error_naming_the_way_out() {
        let mut f = Fence::new("node 0", true, vec![]);
        let big = "x".repeat(1 << 20);
        let puts: Puts = (0..17).map(|i| (format!("k{i}"), big.clone())).collect();
        let e = f.local(1, puts).unwrap_err();
        assert!(matches!(e, FenceError::TooLarge { seq: 1, .. }));
        assert!(e.to_string().contains("--pmi-lazy"), "{e}");
    }

    #[test]
    fn participants_skip_subtrees_without_ranks() {
        // Fan-out 2, 7 nodes: front end -> 0,1; 0 -> 2,3; 1 -> 4,5; 2 -> 6.
        let ranks = |n: u32| n == 6 || n == 4;
        assert_eq!(participants(None, &crate::tree::Topology::new(7, 2), ranks), vec![0, 1]);
        assert_eq!(participants(Some(0), &crate::tree::Topology::new(7, 2), ranks), vec![2]);
        assert_eq!(participants(Some(2), &crate::tree::Topology::new(7, 2), ranks), vec![6]);
        assert_eq!(participants(Some(1), &crate::tree::Topology::new(7, 2), ranks), vec![4]);
        assert_eq!(participants(Some(3), &crate::tree::Topology::new(7, 2), ranks), Vec::<u32>::new());
        assert_eq!(participants(None, &crate::tree::Topology::new(3, 32), |n| n != 1), vec![0, 2]);
    }

    #[test]
    fn merge_encoded_size_bounds_postcard() {
        let puts = p(&[("key-1", "value"), ("k", "")]);
        let real = postcard::to_allocvec(&puts).unwrap().len();
        assert!(encoded_size(&puts) >= real);
    }

    #[test]
    fn directory_asks_once_per_key_and_answers_everyone() {
        let mut d = Directory::new(3);
        assert_eq!(d.request(0, "k"), Lookup::Ask { round: 1 });
        assert_eq!(d.request(2, "k"), Lookup::Joined);
        assert_eq!(d.request(2, "k"), Lookup::Joined);
        assert_eq!(d.answer(1, "k", None), None);
        let v = d.answer(1, "k", Some("v".into())).unwrap();
        assert_eq!(v, Verdict { askers: vec![0, 2], value: Some("v".into()) });
        // The last "not here" of that query arrives late: ignored.
        assert_eq!(d.answer(1, "k", None), None);
        assert_eq!(d.request(1, "k"), Lookup::Known { value: "v".into() });
        d.fence_done();
        assert_eq!(d.request(1, "k"), Lookup::Ask { round: 2 });
        // An answer from the old round does not count towards the new one.
        assert_eq!(d.answer(1, "k", Some("old".into())), None);
        assert_eq!(d.answer(2, "k", None), None);
        assert_eq!(d.answer(2, "k", None), None);
        assert_eq!(d.answer(2, "k", None), Some(Verdict { askers: vec![1], value: None }));
        // Not found is not remembered: the key may be put later.
        assert_eq!(d.request(1, "k"), Lookup::Ask { round: 3 });
    }

    /// Drives a whole tree of vertices with contributions arriving in any order and checks that
    /// every node ends up with every rank-owning node's puts, for several fences in a row.
    fn run_tree(nnodes: u32, fanout: u32, with_ranks: &[bool], order_seed: u64, fences: u64) -> Result<(), TestCaseError> {
        let has = |n: u32| with_ranks[n as usize];
        let mut root = Fence::new("the front end", false, participants(None, &crate::tree::Topology::new(nnodes, fanout), has));
        let mut v: Vec<Fence> = (0..nnodes)
            .map(|n| Fence::new(format!("node {n}"), has(n), participants(Some(n), &crate::tree::Topology::new(nnodes, fanout), has)))
            .collect();
        let mut rng = order_seed;
        for seq in 1..=fences {
            // Pending upward messages: (from node, ready). Locals enter in a shuffled order.
            let mut order: Vec<u32> = (0..nnodes).filter(|&n| has(n)).collect();
            for i in (1..order.len()).rev() {
                rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                order.swap(i, (rng >> 33) as usize % (i + 1));
            }
            let mut queue: Vec<(u32, Ready)> = Vec::new();
            for n in order {
                let puts = vec![(format!("k{n}-{seq}"), format!("v{n}"))];
                if let Some(r) = v[n as usize].local(seq, puts).unwrap() {
                    queue.push((n, r));
                }
            }
            let mut complete = None;
            while let Some((from, r)) = queue.pop() {
                match tree::Topology::new(nnodes, fanout).parent_of(from) {
                    None => {
                        if let Some(done) = root.child(from, r.seq, r.puts).unwrap() {
                            complete = Some(done);
                        }
                    }
                    Some(p) => {
                        if let Some(up) = v[p as usize].child(from, r.seq, r.puts).unwrap() {
                            queue.push((p, up));
                        }
                    }
                }
            }
            let done = complete.expect("the root completes");
            prop_assert_eq!(done.seq, seq);
            let mut keys: Vec<String> = done.puts.iter().map(|(k, _)| k.clone()).collect();
            keys.sort();
            let mut want: Vec<String> = (0..nnodes).filter(|&n| has(n)).map(|n| format!("k{n}-{seq}")).collect();
            want.sort();
            prop_assert_eq!(keys, want);
            // Down: every participant gets done exactly once, through its parent.
            root.done(seq).unwrap();
            let mut stack: Vec<u32> = root.children().to_vec();
            let mut reached = 0;
            while let Some(n) = stack.pop() {
                v[n as usize].done(seq).unwrap();
                reached += 1;
                stack.extend_from_slice(v[n as usize].children());
            }
            prop_assert_eq!(reached, (0..nnodes).filter(|&n| v[n as usize].has_local || !v[n as usize].children.is_empty()).count());
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn tree_fence_delivers_everything_once(
            nnodes in 1u32..40,
            fanout in 1u32..5,
            mask in proptest::collection::vec(any::<bool>(), 40),
            seed in any::<u64>(),
        ) {
            let mut with_ranks = mask[..nnodes as usize].to_vec();
            with_ranks[0] = true;
            run_tree(nnodes, fanout, &with_ranks, seed, 3)?;
        }

        #[test]
        fn merge_keeps_each_key_once_with_its_last_value(
            parts in proptest::collection::vec(proptest::collection::vec((0u8..8, 0u8..8), 0..6), 0..5)
        ) {
            let parts: Vec<Puts> = parts.iter().map(|p| {
                // Within one part keys are unique, as the engine guarantees.
                let mut seen = std::collections::HashSet::new();
                p.iter().filter(|(k, _)| seen.insert(*k)).map(|(k, v)| (format!("k{k}"), format!("v{v}"))).collect()
            }).collect();
            let merged = merge(parts.clone());
            let mut last: HashMap<String, String> = HashMap::new();
            for (k, v) in parts.iter().flatten() { last.insert(k.clone(), v.clone()); }
            prop_assert_eq!(merged.len(), last.len());
            for (k, v) in &merged { prop_assert_eq!(Some(v), last.get(k)); }
        }
    }
}
