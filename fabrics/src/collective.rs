//! A k-ary tree barrier/allgather as a pure state machine.
//!
//! Members `0..P` form a tree by index alone (parent of `i` is `(i-1)/k`, children `k*i+1 ..= k*i+k`),
//! so every daemon knows its neighbours without any exchange. Up phase: a member waits for its own
//! start and one message from each child, then sends its subtree's contributions to its parent.
//! Down phase: the root, having everything, sends the full result to its children, who forward it.
//! Latency is about `2 * ceil(log_k P)` message times; `k >= P-1` gives a star.
//!
//! The machine is fed events ([`Collective::start`], [`Collective::on_message`]) and returns
//! [`Action`]s; it does no I/O, so transports and tests drive it alike.

use std::collections::BTreeMap;
use std::ops::Range;

/// Shape of the tree; `size` members, each with up to `arity` children.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tree {
    size: u32,
    arity: u32,
}

impl Tree {
    pub fn new(size: u32, arity: u32) -> Result<Tree, CollectiveError> {
        if size == 0 || arity == 0 {
            return Err(CollectiveError::BadTree { size, arity });
        }
        Ok(Tree { size, arity })
    }

    pub fn size(&self) -> u32 {
        self.size
    }

    pub fn arity(&self) -> u32 {
        self.arity
    }

    pub fn parent(&self, i: u32) -> Option<u32> {
        (i > 0 && i < self.size).then(|| (i - 1) / self.arity)
    }

    pub fn children(&self, i: u32) -> Range<u32> {
        let (k, n) = (u64::from(self.arity), u64::from(self.size));
        let lo = (u64::from(i) * k + 1).min(n);
        let hi = (u64::from(i) * k + k + 1).min(n);
        lo as u32..hi as u32
    }

    /// Whether `m` lies in the subtree rooted at `root` (walks up from `m`: O(depth)).
    pub fn in_subtree(&self, root: u32, mut m: u32) -> bool {
        if m >= self.size {
            return false;
        }
        loop {
            if m == root {
                return true;
            }
            if m < root {
                return false;
            }
            match self.parent(m) {
                Some(p) => m = p,
                None => return false,
            }
        }
    }

    /// Members in the subtree rooted at `root`: descendants at each level form one contiguous range.
    pub fn subtree_size(&self, root: u32) -> u32 {
        let (k, n) = (u64::from(self.arity), u64::from(self.size));
        let (mut lo, mut hi) = (u64::from(root), u64::from(root) + 1);
        let mut total = 0u64;
        while lo < n {
            hi = hi.min(n);
            total += hi - lo;
            lo = lo * k + 1;
            hi = (hi - 1) * k + k + 1;
        }
        total as u32
    }

    /// Number of edges from the root to the deepest member.
    pub fn height(&self) -> u32 {
        let mut h = 0;
        let mut m = self.size - 1;
        while let Some(p) = self.parent(m) {
            m = p;
            h += 1;
        }
        h
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Barrier,
    Allgather,
}

/// What travels along tree edges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Allgather up phase: the contributions of the sender's subtree, `(member, data)`.
    Up {
        epoch: u64,
        entries: Vec<(u32, Vec<u8>)>,
    },
    /// Barrier up phase: only how many members of the subtree have arrived.
    UpCount { epoch: u64, count: u32 },
    /// Down phase: every member's data in member order (empty for a barrier).
    Down { epoch: u64, data: Vec<Vec<u8>> },
}

impl Message {
    pub fn epoch(&self) -> u64 {
        match self {
            Message::Up { epoch, .. }
            | Message::UpCount { epoch, .. }
            | Message::Down { epoch, .. } => *epoch,
        }
    }

    /// `tag u8 | epoch u64 | body`, little-endian; blobs are `len u32 | bytes`.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        let blob = |b: &mut Vec<u8>, d: &[u8]| {
            b.extend_from_slice(&(d.len() as u32).to_le_bytes());
            b.extend_from_slice(d);
        };
        match self {
            Message::Up { epoch, entries } => {
                b.push(1);
                b.extend_from_slice(&epoch.to_le_bytes());
                b.extend_from_slice(&(entries.len() as u32).to_le_bytes());
                for (m, d) in entries {
                    b.extend_from_slice(&m.to_le_bytes());
                    blob(&mut b, d);
                }
            }
            Message::UpCount { epoch, count } => {
                b.push(2);
                b.extend_from_slice(&epoch.to_le_bytes());
                b.extend_from_slice(&count.to_le_bytes());
            }
            Message::Down { epoch, data } => {
                b.push(3);
                b.extend_from_slice(&epoch.to_le_bytes());
                b.extend_from_slice(&(data.len() as u32).to_le_bytes());
                for d in data {
                    blob(&mut b, d);
                }
            }
        }
        b
    }

    pub fn decode(bytes: &[u8]) -> Result<Message, CollectiveError> {
        let mut r = Cursor { b: bytes, at: 0 };
        let tag = r.u8()?;
        let epoch = r.u64()?;
        let msg = match tag {
            1 => {
                let n = r.u32()?;
                // Each entry needs at least 8 bytes: reject counts the buffer cannot hold before
                // allocating for them.
                r.need(n as usize * 8)?;
                let mut entries = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    let m = r.u32()?;
                    entries.push((m, r.blob()?));
                }
                Message::Up { epoch, entries }
            }
            2 => Message::UpCount {
                epoch,
                count: r.u32()?,
            },
            3 => {
                let n = r.u32()?;
                r.need(n as usize * 4)?;
                let mut data = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    data.push(r.blob()?);
                }
                Message::Down { epoch, data }
            }
            t => return Err(CollectiveError::Decode(format!("unknown message tag {t}"))),
        };
        if r.at != bytes.len() {
            return Err(CollectiveError::Decode(format!(
                "{} trailing bytes",
                bytes.len() - r.at
            )));
        }
        Ok(msg)
    }
}

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn need(&self, n: usize) -> Result<(), CollectiveError> {
        if self.b.len().saturating_sub(self.at) < n {
            return Err(CollectiveError::Decode(format!(
                "truncated message: {} bytes, needs {} more at {}",
                self.b.len(),
                n,
                self.at
            )));
        }
        Ok(())
    }
    fn take(&mut self, n: usize) -> Result<&[u8], CollectiveError> {
        self.need(n)?;
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, CollectiveError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, CollectiveError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().unwrap_or_default(),
        ))
    }
    fn u64(&mut self) -> Result<u64, CollectiveError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().unwrap_or_default(),
        ))
    }
    fn blob(&mut self) -> Result<Vec<u8>, CollectiveError> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Send {
        to: u32,
        msg: Message,
    },
    /// The collective finished here: every member's data in member order (empty for a barrier).
    Complete(Vec<Vec<u8>>),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CollectiveError {
    #[error(
        "a tree needs at least one member and arity 1 or more (got {size} members, arity {arity})"
    )]
    BadTree { size: u32, arity: u32 },
    #[error("member {me} is outside the tree of {size} members")]
    NotAMember { me: u32, size: u32 },
    #[error("member {me}: message from {from} {why}; a daemon from another job or an older run is talking to us")]
    Unexpected { me: u32, from: u32, why: String },
    #[error(
        "member {me}: message from {from} is for epoch {got}, this collective is epoch {expected}"
    )]
    WrongEpoch {
        me: u32,
        from: u32,
        got: u64,
        expected: u64,
    },
    #[error("member {me}: bad contents from {from}: {why}")]
    BadContents { me: u32, from: u32, why: String },
    #[error("member {me}: start called twice")]
    AlreadyStarted { me: u32 },
    #[error("cannot decode collective message: {0}")]
    Decode(String),
}

/// One member's part in one collective operation.
#[derive(Debug)]
pub struct Collective {
    tree: Tree,
    me: u32,
    kind: Kind,
    epoch: u64,
    started: bool,
    mine: Option<Vec<u8>>,
    /// Per child: its subtree's entries (allgather) or count (barrier, stored as empty entries).
    from_children: BTreeMap<u32, Vec<(u32, Vec<u8>)>>,
    sent_up: bool,
    done: bool,
}

impl Collective {
    /// `epoch` tells consecutive collectives apart, so a late message from the last one is refused.
    pub fn new(tree: Tree, me: u32, kind: Kind, epoch: u64) -> Result<Collective, CollectiveError> {
        if me >= tree.size {
            return Err(CollectiveError::NotAMember {
                me,
                size: tree.size,
            });
        }
        Ok(Collective {
            tree,
            me,
            kind,
            epoch,
            started: false,
            mine: None,
            from_children: BTreeMap::new(),
            sent_up: false,
            done: false,
        })
    }

    pub fn tree(&self) -> Tree {
        self.tree
    }

    pub fn me(&self) -> u32 {
        self.me
    }

    pub fn is_complete(&self) -> bool {
        self.done
    }

    /// This member enters the collective with its contribution (ignored for a barrier).
    pub fn start(&mut self, data: Vec<u8>) -> Result<Vec<Action>, CollectiveError> {
        if self.started {
            return Err(CollectiveError::AlreadyStarted { me: self.me });
        }
        self.started = true;
        self.mine = Some(if self.kind == Kind::Barrier {
            Vec::new()
        } else {
            data
        });
        Ok(self.try_up())
    }

    pub fn on_message(&mut self, from: u32, msg: Message) -> Result<Vec<Action>, CollectiveError> {
        let unexpected = |why: &str| CollectiveError::Unexpected {
            me: self.me,
            from,
            why: why.to_string(),
        };
        let bad = |why: String| CollectiveError::BadContents {
            me: self.me,
            from,
            why,
        };
        if msg.epoch() != self.epoch {
            return Err(CollectiveError::WrongEpoch {
                me: self.me,
                from,
                got: msg.epoch(),
                expected: self.epoch,
            });
        }
        if self.done {
            return Err(unexpected("arrived after the collective completed"));
        }
        match msg {
            Message::Up { .. } | Message::UpCount { .. } => {
                if !self.tree.children(self.me).contains(&from) {
                    return Err(unexpected("is an up message but the sender is not a child"));
                }
                if self.from_children.contains_key(&from) {
                    return Err(unexpected("is a second up message from the same child"));
                }
                let expected = self.tree.subtree_size(from);
                let entries = match (msg, self.kind) {
                    (Message::UpCount { count, .. }, Kind::Barrier) => {
                        if count != expected {
                            return Err(bad(format!("subtree count {count}, expected {expected}")));
                        }
                        Vec::new()
                    }
                    (Message::Up { mut entries, .. }, Kind::Allgather) => {
                        entries.sort_by_key(|(m, _)| *m);
                        if entries.len() != expected as usize {
                            return Err(bad(format!(
                                "{} entries, its subtree has {expected} members",
                                entries.len()
                            )));
                        }
                        for w in entries.windows(2) {
                            if w[0].0 == w[1].0 {
                                return Err(bad(format!("member {} appears twice", w[0].0)));
                            }
                        }
                        if let Some((m, _)) = entries
                            .iter()
                            .find(|(m, _)| !self.tree.in_subtree(from, *m))
                        {
                            return Err(bad(format!("member {m} is not in its subtree")));
                        }
                        entries
                    }
                    _ => {
                        return Err(unexpected(
                            "is a barrier message in an allgather or the reverse",
                        ))
                    }
                };
                self.from_children.insert(from, entries);
                Ok(self.try_up())
            }
            Message::Down { data, .. } => {
                if self.tree.parent(self.me) != Some(from) {
                    return Err(unexpected(
                        "is a down message but the sender is not our parent",
                    ));
                }
                if !self.sent_up {
                    return Err(unexpected("is a down message before we sent ours up"));
                }
                let want = if self.kind == Kind::Barrier {
                    0
                } else {
                    self.tree.size as usize
                };
                if data.len() != want {
                    return Err(bad(format!(
                        "down message carries {} blobs, expected {want}",
                        data.len()
                    )));
                }
                Ok(self.finish(data))
            }
        }
    }

    fn try_up(&mut self) -> Vec<Action> {
        let children = self.tree.children(self.me);
        if self.sent_up || !self.started || self.from_children.len() != children.len() {
            return Vec::new();
        }
        self.sent_up = true;
        let mut entries: Vec<(u32, Vec<u8>)> = Vec::new();
        if self.kind == Kind::Allgather {
            entries.push((self.me, self.mine.take().unwrap_or_default()));
        }
        for (_, e) in std::mem::take(&mut self.from_children) {
            entries.extend(e);
        }
        match self.tree.parent(self.me) {
            Some(parent) => {
                let msg = match self.kind {
                    Kind::Barrier => Message::UpCount {
                        epoch: self.epoch,
                        count: self.tree.subtree_size(self.me),
                    },
                    Kind::Allgather => Message::Up {
                        epoch: self.epoch,
                        entries,
                    },
                };
                vec![Action::Send { to: parent, msg }]
            }
            None => {
                // Root: children's subtrees plus itself are every member exactly once (checked on
                // arrival), so sorting by member gives member order.
                entries.sort_by_key(|(m, _)| *m);
                let data = entries.into_iter().map(|(_, d)| d).collect();
                self.finish(data)
            }
        }
    }

    fn finish(&mut self, data: Vec<Vec<u8>>) -> Vec<Action> {
        self.done = true;
        let mut out: Vec<Action> = self
            .tree
            .children(self.me)
            .map(|c| Action::Send {
                to: c,
                msg: Message::Down {
                    epoch: self.epoch,
                    data: data.clone(),
                },
            })
            .collect();
        out.push(Action::Complete(data));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    #[test]
    fn tree_shape() {
        let t = Tree::new(10, 3).unwrap();
        assert_eq!(t.parent(0), None);
        assert_eq!(t.parent(1), Some(0));
        assert_eq!(t.parent(3), Some(0));
        assert_eq!(t.parent(4), Some(1));
        assert_eq!(t.children(0), 1..4);
        assert_eq!(t.children(2), 7..10);
        assert_eq!(t.children(3), 10..10);
        assert_eq!(t.subtree_size(0), 10);
        assert_eq!(t.subtree_size(1), 4);
        assert_eq!(t.subtree_size(3), 1);
        assert!(t.in_subtree(1, 6) && !t.in_subtree(1, 7));
        assert_eq!(t.height(), 2);
        assert_eq!(Tree::new(64, 32).unwrap().height(), 2);
        assert_eq!(Tree::new(1, 2).unwrap().height(), 0);
        assert!(Tree::new(0, 2).is_err() && Tree::new(3, 0).is_err());
        let big = Tree::new(u32::MAX, u32::MAX).unwrap();
        assert_eq!(big.children(2).len(), 0, "no overflow near u32::MAX");
    }

    proptest! {
        #[test]
        fn subtree_size_matches_walk(size in 1u32..300, arity in 1u32..8, root in 0u32..300) {
            let t = Tree::new(size, arity).unwrap();
            let root = root % size;
            let walked = (0..size).filter(|m| t.in_subtree(root, *m)).count() as u32;
            prop_assert_eq!(t.subtree_size(root), walked);
        }

        #[test]
        fn messages_roundtrip(epoch in any::<u64>(), entries in proptest::collection::vec((any::<u32>(), proptest::collection::vec(any::<u8>(), 0..20)), 0..10)) {
            let data: Vec<Vec<u8>> = entries.iter().map(|(_, d)| d.clone()).collect();
            for m in [Message::Up { epoch, entries: entries.clone() }, Message::UpCount { epoch, count: entries.len() as u32 }, Message::Down { epoch, data: data.clone() }] {
                prop_assert_eq!(Message::decode(&m.encode()).unwrap(), m);
            }
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Message::decode(&bytes);
        }
    }

    #[test]
    fn decode_refuses_impossible_counts() {
        let mut b = vec![1u8];
        b.extend_from_slice(&0u64.to_le_bytes());
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Message::decode(&b),
            Err(CollectiveError::Decode(_))
        ));
        let mut m = Message::UpCount { epoch: 1, count: 2 }.encode();
        m.push(0);
        assert_eq!(
            Message::decode(&m),
            Err(CollectiveError::Decode("1 trailing bytes".into()))
        );
    }

    /// Runs P machines with in-order delivery from a queue; starts members in the given order
    /// interleaved with deliveries, so children may report before their parent has started.
    fn simulate(
        size: u32,
        arity: u32,
        kind: Kind,
        start_order: &[u32],
        shuffle: u64,
    ) -> Vec<Vec<Vec<u8>>> {
        let tree = Tree::new(size, arity).unwrap();
        let mut m: Vec<Collective> = (0..size)
            .map(|i| Collective::new(tree, i, kind, 7).unwrap())
            .collect();
        let mut queue: VecDeque<(u32, u32, Message)> = VecDeque::new();
        let mut results: Vec<Option<Vec<Vec<u8>>>> = vec![None; size as usize];
        let mut sends = 0usize;
        let mut handle = |from: u32,
                          acts: Vec<Action>,
                          queue: &mut VecDeque<_>,
                          results: &mut Vec<Option<_>>| {
            for a in acts {
                match a {
                    Action::Send { to, msg } => {
                        sends += 1;
                        queue.push_back((from, to, msg))
                    }
                    Action::Complete(d) => {
                        assert!(
                            results[from as usize].replace(d).is_none(),
                            "member {from} completed twice"
                        );
                    }
                }
            }
        };
        let mut rng = shuffle;
        for &i in start_order {
            let acts = m[i as usize]
                .start(format!("data of {i}").into_bytes())
                .unwrap();
            handle(i, acts, &mut queue, &mut results);
            // Deliver a pseudo-random number of queued messages between starts.
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            for _ in 0..(rng >> 60) {
                if let Some((from, to, msg)) = queue.pop_front() {
                    let acts = m[to as usize]
                        .on_message(from, Message::decode(&msg.encode()).unwrap())
                        .unwrap();
                    handle(to, acts, &mut queue, &mut results);
                }
            }
        }
        while let Some((from, to, msg)) = queue.pop_front() {
            let acts = m[to as usize].on_message(from, msg).unwrap();
            handle(to, acts, &mut queue, &mut results);
        }
        assert_eq!(
            sends,
            2 * (size as usize - 1),
            "one message up and one down per edge"
        );
        results
            .into_iter()
            .map(|r| r.expect("every member completes"))
            .collect()
    }

    #[test]
    fn allgather_all_sizes_and_arities() {
        for size in 1..=64u32 {
            for arity in [2, 4, 32, 64, 100] {
                let order: Vec<u32> = (0..size).rev().collect();
                let res = simulate(
                    size,
                    arity,
                    Kind::Allgather,
                    &order,
                    u64::from(size * arity),
                );
                let want: Vec<Vec<u8>> = (0..size)
                    .map(|i| format!("data of {i}").into_bytes())
                    .collect();
                for (i, r) in res.iter().enumerate() {
                    assert_eq!(r, &want, "member {i}, P={size}, k={arity}");
                }
            }
        }
    }

    #[test]
    fn barrier_all_sizes_and_arities() {
        for size in 1..=64u32 {
            for arity in [2, 4, 32] {
                let order: Vec<u32> = (0..size).collect();
                for r in simulate(size, arity, Kind::Barrier, &order, 3) {
                    assert!(r.is_empty());
                }
            }
        }
    }

    proptest! {
        #[test]
        fn allgather_any_start_order(size in 1u32..40, arity in 1u32..6, seed in any::<u64>()) {
            let mut order: Vec<u32> = (0..size).collect();
            let mut s = seed;
            for i in (1..order.len()).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
                order.swap(i, (s >> 33) as usize % (i + 1));
            }
            let res = simulate(size, arity, Kind::Allgather, &order, seed);
            let want: Vec<Vec<u8>> = (0..size).map(|i| format!("data of {i}").into_bytes()).collect();
            for r in res {
                prop_assert_eq!(&r, &want);
            }
        }
    }

    #[test]
    fn barrier_completes_only_after_everyone_entered() {
        let tree = Tree::new(3, 2).unwrap();
        let mut root = Collective::new(tree, 0, Kind::Barrier, 1).unwrap();
        assert!(root.start(Vec::new()).unwrap().is_empty());
        assert!(root
            .on_message(1, Message::UpCount { epoch: 1, count: 1 })
            .unwrap()
            .is_empty());
        assert!(!root.is_complete());
        let acts = root
            .on_message(2, Message::UpCount { epoch: 1, count: 1 })
            .unwrap();
        assert_eq!(acts.len(), 3);
        assert!(root.is_complete());
    }

    #[test]
    fn refuses_strangers_duplicates_and_old_epochs() {
        let tree = Tree::new(7, 2).unwrap();
        let mut c = Collective::new(tree, 1, Kind::Allgather, 5).unwrap();
        let up = |entries: Vec<(u32, Vec<u8>)>| Message::Up { epoch: 5, entries };
        assert!(matches!(
            c.on_message(2, up(vec![(2, vec![])])),
            Err(CollectiveError::Unexpected { .. })
        ));
        assert!(matches!(
            c.on_message(
                3,
                Message::Up {
                    epoch: 4,
                    entries: vec![(3, vec![])]
                }
            ),
            Err(CollectiveError::WrongEpoch {
                got: 4,
                expected: 5,
                ..
            })
        ));
        let err = c.on_message(3, up(vec![(5, vec![])])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "member 1: bad contents from 3: member 5 is not in its subtree"
        );
        assert!(matches!(
            c.on_message(3, up(vec![])),
            Err(CollectiveError::BadContents { .. })
        ));
        assert!(c
            .on_message(3, up(vec![(3, b"x".to_vec())]))
            .unwrap()
            .is_empty());
        assert!(matches!(
            c.on_message(3, up(vec![(3, vec![])])),
            Err(CollectiveError::Unexpected { .. })
        ));
        assert!(matches!(
            c.on_message(
                0,
                Message::Down {
                    epoch: 5,
                    data: vec![]
                }
            ),
            Err(CollectiveError::Unexpected { .. })
        ));
        assert!(matches!(
            c.on_message(4, Message::UpCount { epoch: 5, count: 1 }),
            Err(CollectiveError::Unexpected { .. })
        ));
        let acts = c.on_message(4, up(vec![(4, b"y".to_vec())])).unwrap();
        assert!(acts.is_empty(), "not started yet");
        let acts = c.start(b"me".to_vec()).unwrap();
        assert_eq!(
            acts,
            vec![Action::Send {
                to: 0,
                msg: up(vec![
                    (1, b"me".to_vec()),
                    (3, b"x".to_vec()),
                    (4, b"y".to_vec())
                ])
            }]
        );
        assert!(matches!(
            c.start(vec![]),
            Err(CollectiveError::AlreadyStarted { me: 1 })
        ));
        assert!(matches!(
            c.on_message(
                0,
                Message::Down {
                    epoch: 5,
                    data: vec![vec![]; 3]
                }
            ),
            Err(CollectiveError::BadContents { .. })
        ));
        let acts = c
            .on_message(
                0,
                Message::Down {
                    epoch: 5,
                    data: vec![vec![]; 7],
                },
            )
            .unwrap();
        assert_eq!(acts.len(), 3);
        assert!(matches!(
            c.on_message(
                0,
                Message::Down {
                    epoch: 5,
                    data: vec![vec![]; 7]
                }
            ),
            Err(CollectiveError::Unexpected { .. })
        ));
        assert!(matches!(
            Collective::new(tree, 7, Kind::Barrier, 0),
            Err(CollectiveError::NotAMember { me: 7, size: 7 })
        ));
    }
}
