//! Using RDMA for the start-up collectives only when every member brought its links up: a pure
//! state machine for the launcher's event loops.
//!
//! [`Agreement`]: every member tries to bring up its RDMA links (to its tree parent and children)
//! and reports the result; reports are combined up the tree (the failure of the lowest member
//! wins, so every run names the same node) and the root's [`Decision`] goes down. The whole tree
//! then runs its collectives over RDMA, or all of it over the out-of-band transport (TCP): a job
//! never fails because RDMA could not start. The agreement's messages travel out of band.
//!
//! Releasing the links afterwards must wait until nobody needs them: a member that is done may
//! still be returning credits (see [`crate::rdma`]), and a send to a released queue pair fails.
//! rlaunch gathers "done" up the tree and sends "release" down (its `startup_rdma` module).

use std::collections::BTreeMap;

use crate::collective::Tree;

/// The combined bring-up result of a subtree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Ready,
    /// The lowest-numbered member of the subtree that could not bring its links up, and why.
    Failed { member: u32, why: String },
}

/// What the whole tree uses for its start-up collectives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Rdma,
    /// Out of band, because of this member's failure.
    Fallback { member: u32, why: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgreeMsg {
    /// Child to parent: its subtree's verdict.
    Report(Verdict),
    /// Parent to child.
    Decide(Decision),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AgreeError {
    #[error("bad start-up agreement message: {0}")]
    Decode(String),
    #[error("member {from} sent {what}, which member {me} does not expect from it")]
    Unexpected { me: u32, from: u32, what: &'static str },
}

impl AgreeMsg {
    /// `tag u8 | member u32 LE | why` (tag 1 report ready, 2 report failed, 3 decide RDMA,
    /// 4 decide fallback).
    pub fn encode(&self) -> Vec<u8> {
        let (tag, fail) = match self {
            AgreeMsg::Report(Verdict::Ready) => (1, None),
            AgreeMsg::Report(Verdict::Failed { member, why }) => (2, Some((member, why))),
            AgreeMsg::Decide(Decision::Rdma) => (3, None),
            AgreeMsg::Decide(Decision::Fallback { member, why }) => (4, Some((member, why))),
        };
        let mut b = vec![tag];
        if let Some((m, why)) = fail {
            b.extend_from_slice(&m.to_le_bytes());
            b.extend_from_slice(why.as_bytes());
        }
        b
    }

    pub fn decode(b: &[u8]) -> Result<AgreeMsg, AgreeError> {
        let fail = || -> Result<(u32, String), AgreeError> {
            let m = b.get(1..5).ok_or_else(|| AgreeError::Decode(format!("{} bytes, a failure needs 5", b.len())))?;
            let why = String::from_utf8(b[5..].to_vec()).map_err(|e| AgreeError::Decode(e.to_string()))?;
            Ok((u32::from_le_bytes([m[0], m[1], m[2], m[3]]), why))
        };
        let plain = |m: AgreeMsg| if b.len() == 1 { Ok(m) } else { Err(AgreeError::Decode(format!("{} bytes after tag {}", b.len() - 1, b[0]))) };
        match b.first() {
            Some(1) => plain(AgreeMsg::Report(Verdict::Ready)),
            Some(2) => fail().map(|(member, why)| AgreeMsg::Report(Verdict::Failed { member, why })),
            Some(3) => plain(AgreeMsg::Decide(Decision::Rdma)),
            Some(4) => fail().map(|(member, why)| AgreeMsg::Decide(Decision::Fallback { member, why })),
            Some(t) => Err(AgreeError::Decode(format!("unknown tag {t}"))),
            None => Err(AgreeError::Decode("empty message".into())),
        }
    }
}

/// What a member's event loop must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgreeOut {
    Send { to: u32, msg: AgreeMsg },
    /// This member's part is over: use this for the start-up collectives.
    Decided(Decision),
}

pub struct Agreement {
    tree: Tree,
    me: u32,
    own: Option<Verdict>,
    children: BTreeMap<u32, Verdict>,
    reported: bool,
    decided: Option<Decision>,
}

fn worse(a: Verdict, b: Verdict) -> Verdict {
    match (a, b) {
        (Verdict::Ready, v) | (v, Verdict::Ready) => v,
        (Verdict::Failed { member: m1, why: w1 }, Verdict::Failed { member: m2, why: w2 }) => {
            if m1 <= m2 {
                Verdict::Failed { member: m1, why: w1 }
            } else {
                Verdict::Failed { member: m2, why: w2 }
            }
        }
    }
}

impl Agreement {
    pub fn new(tree: Tree, me: u32) -> Agreement {
        Agreement { tree, me, own: None, children: BTreeMap::new(), reported: false, decided: None }
    }

    pub fn decided(&self) -> Option<&Decision> {
        self.decided.as_ref()
    }

    /// This member's own bring-up result (its links to parent and children).
    pub fn local(&mut self, result: Result<(), String>) -> Vec<AgreeOut> {
        if self.own.is_some() {
            return Vec::new();
        }
        self.own = Some(match result {
            Ok(()) => Verdict::Ready,
            Err(why) => Verdict::Failed { member: self.me, why },
        });
        self.advance()
    }

    pub fn on_message(&mut self, from: u32, msg: AgreeMsg) -> Result<Vec<AgreeOut>, AgreeError> {
        let unexpected = |what| AgreeError::Unexpected { me: self.me, from, what };
        match msg {
            AgreeMsg::Report(v) => {
                if !self.tree.children(self.me).contains(&from) {
                    return Err(unexpected("a report (it is not a child)"));
                }
                if self.children.insert(from, v).is_some() {
                    return Err(unexpected("a second report"));
                }
                Ok(self.advance())
            }
            AgreeMsg::Decide(d) => {
                if self.tree.parent(self.me) != Some(from) {
                    return Err(unexpected("a decision (it is not the parent)"));
                }
                if self.decided.is_some() {
                    return Err(unexpected("a second decision"));
                }
                Ok(self.decide(d))
            }
        }
    }

    fn advance(&mut self) -> Vec<AgreeOut> {
        let all_children = self.tree.children(self.me).len() == self.children.len();
        let Some(own) = self.own.clone().filter(|_| all_children && !self.reported) else { return Vec::new() };
        self.reported = true;
        let v = self.children.values().cloned().fold(own, worse);
        match self.tree.parent(self.me) {
            Some(p) => vec![AgreeOut::Send { to: p, msg: AgreeMsg::Report(v) }],
            None => self.decide(match v {
                Verdict::Ready => Decision::Rdma,
                Verdict::Failed { member, why } => Decision::Fallback { member, why },
            }),
        }
    }

    fn decide(&mut self, d: Decision) -> Vec<AgreeOut> {
        self.decided = Some(d.clone());
        let mut out: Vec<AgreeOut> =
            self.tree.children(self.me).map(|c| AgreeOut::Send { to: c, msg: AgreeMsg::Decide(d.clone()) }).collect();
        out.push(AgreeOut::Decided(d));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    /// Runs the agreement of a whole tree with messages delivered in `order`-driven interleaving;
    /// `fail` gives members whose bring-up fails.
    fn agree(size: u32, arity: u32, fail: &[u32], seed: u64) -> Vec<Decision> {
        let tree = Tree::new(size, arity).unwrap();
        let mut ms: Vec<Agreement> = (0..size).map(|i| Agreement::new(tree, i)).collect();
        let mut wire: VecDeque<(u32, u32, Vec<u8>)> = VecDeque::new();
        let mut decided = vec![None; size as usize];
        let handle = |i: u32, out: Vec<AgreeOut>, wire: &mut VecDeque<_>, decided: &mut Vec<Option<Decision>>| {
            for o in out {
                match o {
                    AgreeOut::Send { to, msg } => wire.push_back((i, to, msg.encode())),
                    AgreeOut::Decided(d) => {
                        assert!(decided[i as usize].replace(d).is_none(), "member {i} decided twice");
                    }
                }
            }
        };
        // Members report in a seed-dependent order.
        let mut order: Vec<u32> = (0..size).collect();
        let mut s = seed;
        for i in (1..order.len()).rev() {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            order.swap(i, (s >> 33) as usize % (i + 1));
        }
        for i in order {
            let r = if fail.contains(&i) { Err(format!("no device on {i}")) } else { Ok(()) };
            let out = ms[i as usize].local(r);
            handle(i, out, &mut wire, &mut decided);
            // Deliver some of what is queued between local results.
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            for _ in 0..((s >> 40) as usize % 3) {
                if let Some((from, to, b)) = wire.pop_front() {
                    let out = ms[to as usize].on_message(from, AgreeMsg::decode(&b).unwrap()).unwrap();
                    handle(to, out, &mut wire, &mut decided);
                }
            }
        }
        while let Some((from, to, b)) = wire.pop_front() {
            let out = ms[to as usize].on_message(from, AgreeMsg::decode(&b).unwrap()).unwrap();
            handle(to, out, &mut wire, &mut decided);
        }
        decided.into_iter().map(|d| d.expect("every member decides")).collect()
    }

    #[test]
    fn all_ready_means_rdma_everywhere() {
        for (size, arity) in [(1, 2), (2, 2), (9, 2), (33, 4), (40, 64)] {
            assert!(agree(size, arity, &[], 7).iter().all(|d| *d == Decision::Rdma), "P={size}");
        }
    }

    #[test]
    fn one_failure_anywhere_means_fallback_everywhere_naming_it() {
        let want = Decision::Fallback { member: 5, why: "no device on 5".into() };
        assert!(agree(9, 2, &[5], 3).iter().all(|d| *d == want));
        // Several failures: the lowest member is named, whatever order they happen in.
        let want = Decision::Fallback { member: 2, why: "no device on 2".into() };
        assert!(agree(12, 3, &[11, 2, 7], 11).iter().all(|d| *d == want));
        let root = Decision::Fallback { member: 0, why: "no device on 0".into() };
        assert!(agree(4, 2, &[0], 1).iter().all(|d| *d == root));
    }

    proptest! {
        #[test]
        fn every_member_reaches_the_same_decision(size in 1u32..40, arity in 1u32..6, seed in any::<u64>(), fails in proptest::collection::vec(0u32..40, 0..4)) {
            let fails: Vec<u32> = fails.into_iter().filter(|f| *f < size).collect();
            let ds = agree(size, arity, &fails, seed);
            let want = match fails.iter().min() {
                None => Decision::Rdma,
                Some(m) => Decision::Fallback { member: *m, why: format!("no device on {m}") },
            };
            prop_assert!(ds.iter().all(|d| *d == want));
        }

        #[test]
        fn decode_never_panics(b in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Ok(m) = AgreeMsg::decode(&b) {
                prop_assert_eq!(AgreeMsg::decode(&m.encode()).unwrap(), m);
            }
        }
    }

    #[test]
    fn messages_from_the_wrong_members_are_errors() {
        let tree = Tree::new(7, 2).unwrap();
        let mut a = Agreement::new(tree, 1);
        assert!(a.on_message(0, AgreeMsg::Report(Verdict::Ready)).is_err(), "the parent does not report to us");
        assert!(a.on_message(3, AgreeMsg::Decide(Decision::Rdma)).is_err(), "a child does not decide");
        assert!(a.on_message(3, AgreeMsg::Report(Verdict::Ready)).unwrap().is_empty());
        assert!(a.on_message(3, AgreeMsg::Report(Verdict::Ready)).is_err(), "twice");
        assert_eq!(a.local(Ok(())), vec![], "child 4 has not reported");
        assert_eq!(
            a.on_message(4, AgreeMsg::Report(Verdict::Ready)).unwrap(),
            vec![AgreeOut::Send { to: 0, msg: AgreeMsg::Report(Verdict::Ready) }]
        );
        assert!(AgreeMsg::decode(&[2, 1]).is_err());
        assert!(AgreeMsg::decode(&[1, 0]).is_err());
        assert!(AgreeMsg::decode(&[]).is_err());
    }
}
