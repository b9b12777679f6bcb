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
use crate::discover::Inventory;
use crate::verbs_link::VerbsLinkConfig;

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

/// The RDMA port a member's start-up links use, from its own inventory: the first usable port in
/// the endpoint assignment's order (the port its ranks would get first), or why there is none,
/// in the words the `-v` line shows ("no RDMA device", "verbs unavailable: libibverbs.so.1 not
/// found ...", "mlx5_0:1 is down").
pub fn startup_port(inv: &Inventory) -> Result<VerbsLinkConfig, String> {
    if inv.ib.is_empty() {
        return Err("no RDMA device".into());
    }
    let nics = crate::endpoints::rdma_nics(0, inv, &[]).map_err(|e| match e {
        crate::endpoints::AssignError::NoRdma { why, .. } => why,
        other => other.to_string(),
    })?;
    let nic = nics.into_iter().find(|n| n.rdma.is_some()).ok_or("no usable RDMA port")?;
    let port = nic.rdma.ok_or("no usable RDMA port")?;
    // `enum ibv_mtu`: 1 = 256 ... 5 = 4096; an unknown MTU (no verbs answer) takes 1024, which
    // every IB and RoCE port carries.
    let mtu_enum = match nic.mtu {
        4096.. => 5,
        2048.. => 4,
        1024.. => 3,
        512.. => 2,
        256.. => 1,
        _ => 3,
    };
    Ok(VerbsLinkConfig {
        device: port.device,
        port: port.port,
        gid_index: port.gid_index,
        lid: port.lid,
        mtu_enum,
        slot_size: 4096,
        recv_depth: 8,
        send_bufs: 16,
    })
}

/// The data path of one member's start-up collectives, with the failover to the out-of-band
/// transport that lets a collective interrupted by a link error finish there.
///
/// Every message a member sends to a tree neighbour is numbered per directed edge (`k` = 0, 1,
/// ...) and kept until the links are released. A receiver delivers message `k` of a neighbour
/// only when it has delivered `0..k` already, from whichever path brought them, and drops the
/// rest as duplicates: both paths are ordered, so nothing is ever delivered twice or out of order.
///
/// Failover: a member that learns of a failure (its own link error or timeout, or a
/// [`RelayOut::Fallback`] from a neighbour) tells every neighbour once, with how many of that
/// neighbour's messages it has delivered; from then on it sends over the out-of-band transport
/// only. When a neighbour's `Fallback` reaches it, it re-sends that neighbour's messages from the
/// neighbour's count on, and only then anything new for it (held meanwhile), so the receiver
/// never sees a gap. The links themselves stay until the release (a message may still arrive over
/// them; it is a duplicate or the next one, never a gap). Flooding reaches every member, because
/// each member forwards the news to all its neighbours when it first hears it.
#[derive(Debug)]
pub struct Relay {
    me: u32,
    peers: Vec<u32>,
    /// Per peer: every message sent to it, index = its number.
    sent: BTreeMap<u32, Vec<Vec<u8>>>,
    /// Per peer: messages from it delivered here.
    got: BTreeMap<u32, u64>,
    path: RelayPath,
    /// Peers whose `Fallback` arrived (after the failover only).
    heard: Vec<u32>,
    failover: Option<(u32, String)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayPath {
    /// Over the RDMA links.
    Rdma,
    /// Over the out-of-band transport, numbered, after a failover.
    Oob,
    /// The links are gone (released, or never brought up): plain out-of-band messages.
    Plain,
}

/// What the owner must do for a [`Relay`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RelayOut {
    /// Message `k` to `to` over the RDMA link.
    Rdma { to: u32, k: u64, data: Vec<u8> },
    /// Message `k` to `to` out of band.
    Oob { to: u32, k: u64, data: Vec<u8> },
    /// To `to` out of band, unnumbered (no link any more).
    Plain { to: u32, data: Vec<u8> },
    /// Out of band to `to`: the failover, first seen at member `origin` for `why`; `got` of
    /// `to`'s messages were delivered here.
    Fallback { to: u32, origin: u32, why: String, got: u64 },
    /// A message from `from`, in order, once.
    Deliver { from: u32, data: Vec<u8> },
    /// This member switched to the out-of-band transport because of `origin`'s failure.
    Switched { origin: u32, why: String },
}

impl Relay {
    /// Member `me` with its tree neighbours, on the RDMA links.
    pub fn new(me: u32, peers: Vec<u32>) -> Relay {
        let sent = peers.iter().map(|&p| (p, Vec::new())).collect();
        let got = peers.iter().map(|&p| (p, 0)).collect();
        Relay { me, peers, sent, got, path: RelayPath::Rdma, heard: Vec::new(), failover: None }
    }

    pub fn path(&self) -> RelayPath {
        self.path
    }

    /// The failure that moved this member off the links: its origin member and why.
    pub fn failover(&self) -> Option<(u32, &str)> {
        self.failover.as_ref().map(|(m, w)| (*m, w.as_str()))
    }

    /// After a failover: whether every neighbour's `Fallback` arrived, so everything this member
    /// sends travels out of band and it needs its links no more. Always true otherwise.
    pub fn settled(&self) -> bool {
        self.path != RelayPath::Oob || self.peers.iter().all(|p| self.heard.contains(p))
    }

    /// `data` for neighbour `to`.
    pub fn send(&mut self, to: u32, data: Vec<u8>) -> Vec<RelayOut> {
        if self.path == RelayPath::Plain || !self.peers.contains(&to) {
            return vec![RelayOut::Plain { to, data }];
        }
        let log = self.sent.entry(to).or_default();
        let k = log.len() as u64;
        log.push(data.clone());
        match self.path {
            RelayPath::Rdma => vec![RelayOut::Rdma { to, k, data }],
            // Held until `to`'s count arrives: the re-sending from it carries this one too.
            RelayPath::Oob if !self.heard.contains(&to) => Vec::new(),
            _ => vec![RelayOut::Oob { to, k, data }],
        }
    }

    /// Message `k` from `from`, over either path.
    pub fn receive(&mut self, from: u32, k: u64, data: Vec<u8>) -> Option<RelayOut> {
        let got = self.got.get_mut(&from)?;
        // Both paths are ordered and every sender re-sends from our count: `k > got` cannot
        // happen, and `k < got` was delivered already.
        if k != *got {
            return None;
        }
        *got += 1;
        Some(RelayOut::Deliver { from, data })
    }

    /// This member's own failure (a link error, a timeout): the failover starts here.
    pub fn fail(&mut self, why: String) -> Vec<RelayOut> {
        let me = self.me;
        self.switch(me, why)
    }

    fn switch(&mut self, origin: u32, why: String) -> Vec<RelayOut> {
        if self.path != RelayPath::Rdma {
            return Vec::new();
        }
        self.path = RelayPath::Oob;
        self.failover = Some((origin, why.clone()));
        let mut out = vec![RelayOut::Switched { origin, why: why.clone() }];
        out.extend(self.peers.iter().map(|&to| RelayOut::Fallback { to, origin, why: why.clone(), got: self.got[&to] }));
        out
    }

    /// Neighbour `from`'s `Fallback`: switch if this is the first news of the failure, then
    /// re-send `from` what it has not delivered.
    pub fn on_fallback(&mut self, from: u32, origin: u32, why: String, got: u64) -> Vec<RelayOut> {
        if self.path == RelayPath::Plain || !self.peers.contains(&from) || self.heard.contains(&from) {
            return Vec::new();
        }
        let mut out = self.switch(origin, why);
        self.heard.push(from);
        let log = self.sent.get(&from).map_or(&[][..], Vec::as_slice);
        let from_k = (got as usize).min(log.len());
        out.extend(log[from_k..].iter().enumerate().map(|(i, d)| RelayOut::Oob { to: from, k: (from_k + i) as u64, data: d.clone() }));
        out
    }

    /// The links are gone: from now on messages go out of band, plain.
    pub fn release(&mut self) {
        self.path = RelayPath::Plain;
        self.sent.clear();
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

#[cfg(test)]
mod relay_tests {
    use super::*;
    use crate::collective::Tree;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    /// One member's channels to a neighbour: the RDMA link and the out-of-band transport, both
    /// ordered. Returns what every member delivered from each neighbour.
    #[allow(clippy::type_complexity)]
    fn run(size: u32, arity: u32, script: &[(u32, usize, u8)], failures: &[(usize, u32, bool)], seed: u64) -> (Vec<BTreeMap<u32, Vec<Vec<u8>>>>, Vec<BTreeMap<u32, Vec<Vec<u8>>>>) {
        let tree = Tree::new(size, arity).unwrap();
        let nb = |i: u32| -> Vec<u32> { tree.parent(i).into_iter().chain(tree.children(i)).collect() };
        let mut rs: Vec<Relay> = (0..size).map(|i| Relay::new(i, nb(i))).collect();
        // (from, to) -> queue; RDMA entries (k, data), out-of-band entries carry the RelayOut.
        let mut rdma: BTreeMap<(u32, u32), VecDeque<(u64, Vec<u8>)>> = BTreeMap::new();
        let mut oob: BTreeMap<(u32, u32), VecDeque<RelayOut>> = BTreeMap::new();
        let mut broken: Vec<(u32, u32)> = Vec::new();
        let mut delivered: Vec<BTreeMap<u32, Vec<Vec<u8>>>> = vec![BTreeMap::new(); size as usize];
        let mut wanted: Vec<BTreeMap<u32, Vec<Vec<u8>>>> = vec![BTreeMap::new(); size as usize];
        let mut s = seed;
        let mut rnd = move |n: usize| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (s >> 33) as usize % n.max(1)
        };
        fn apply(i: u32, outs: Vec<RelayOut>, rdma: &mut BTreeMap<(u32, u32), VecDeque<(u64, Vec<u8>)>>, oob: &mut BTreeMap<(u32, u32), VecDeque<RelayOut>>, broken: &[(u32, u32)], delivered: &mut [BTreeMap<u32, Vec<Vec<u8>>>]) {
            for o in outs {
                match o {
                    RelayOut::Rdma { to, k, data } => {
                        if !broken.contains(&(i, to)) {
                            rdma.entry((i, to)).or_default().push_back((k, data));
                        }
                    }
                    RelayOut::Oob { to, .. } | RelayOut::Fallback { to, .. } | RelayOut::Plain { to, .. } => oob.entry((i, to)).or_default().push_back(o),
                    RelayOut::Deliver { from, data } => delivered[i as usize].entry(from).or_default().push(data),
                    RelayOut::Switched { .. } => {}
                }
            }
        }
        let mut step = 0;
        let mut script: VecDeque<_> = script.iter().copied().collect();
        loop {
            for &(at, who, both) in failures {
                if at == step {
                    let who = who % size;
                    // The link of `who` breaks: to one neighbour, or to all.
                    let peers = nb(who);
                    let cut: Vec<u32> = if both { peers.clone() } else { peers.first().copied().into_iter().collect() };
                    for p in cut {
                        broken.push((who, p));
                        broken.push((p, who));
                        rdma.remove(&(who, p));
                        rdma.remove(&(p, who));
                    }
                    let outs = rs[who as usize].fail(format!("link of {who}"));
                    apply(who, outs, &mut rdma, &mut oob, &broken, &mut delivered);
                }
            }
            step += 1;
            let busy: Vec<(bool, (u32, u32))> = rdma.iter().filter(|(_, q)| !q.is_empty()).map(|(e, _)| (true, *e)).chain(oob.iter().filter(|(_, q)| !q.is_empty()).map(|(e, _)| (false, *e))).collect();
            if busy.is_empty() && script.is_empty() && failures.iter().all(|f| f.0 < step) {
                break;
            }
            if !script.is_empty() && (busy.is_empty() || rnd(3) == 0) {
                let (from, pick, byte) = script.pop_front().unwrap();
                let from = from % size;
                let peers = nb(from);
                if peers.is_empty() {
                    continue;
                }
                let to = peers[pick % peers.len()];
                let data = vec![byte, from as u8, wanted[to as usize].get(&from).map_or(0, Vec::len) as u8];
                wanted[to as usize].entry(from).or_default().push(data.clone());
                let outs = rs[from as usize].send(to, data);
                apply(from, outs, &mut rdma, &mut oob, &broken, &mut delivered);
                continue;
            }
            if busy.is_empty() {
                continue;
            }
            let (is_rdma, (from, to)) = busy[rnd(busy.len())];
            let outs = if is_rdma {
                let (k, data) = rdma.get_mut(&(from, to)).unwrap().pop_front().unwrap();
                rs[to as usize].receive(from, k, data).into_iter().collect()
            } else {
                match oob.get_mut(&(from, to)).unwrap().pop_front().unwrap() {
                    RelayOut::Oob { k, data, .. } => rs[to as usize].receive(from, k, data).into_iter().collect(),
                    RelayOut::Fallback { origin, why, got, .. } => rs[to as usize].on_fallback(from, origin, why, got),
                    RelayOut::Plain { data, .. } => vec![RelayOut::Deliver { from, data }],
                    _ => unreachable!(),
                }
            };
            apply(to, outs, &mut rdma, &mut oob, &broken, &mut delivered);
        }
        if !failures.is_empty() {
            for r in &rs {
                assert!(r.settled() && r.path() == RelayPath::Oob, "member {} did not hear of the failover", r.me);
            }
        }
        (delivered, wanted)
    }

    #[test]
    fn the_startup_port_or_why_not() {
        let mut inv = Inventory::default();
        assert_eq!(startup_port(&inv).unwrap_err(), "no RDMA device");
        inv.ib.push(crate::discover::IbDevice {
            name: "mlx5_0".into(),
            node_type: crate::discover::NodeType::Ca,
            node_guid: 1,
            sys_image_guid: 1,
            fw_ver: String::new(),
            parent: None,
            ports: Vec::new(),
        });
        inv.verbs = crate::verbs::VerbsStatus::Unavailable { reason: "libibverbs.so.1 not found".into() };
        assert_eq!(startup_port(&inv).unwrap_err(), "verbs unavailable: libibverbs.so.1 not found");
        inv.verbs = crate::verbs::VerbsStatus::Available { devices: vec!["mlx5_0".into()] };
        assert_eq!(startup_port(&inv).unwrap_err(), "no InfiniBand/RoCE device", "a device without ports");
        let port = |n: u8, state| crate::discover::IbPort {
            port: n,
            state,
            phys_state: crate::discover::PhysState::LinkUp,
            lid: 7 + u16::from(n),
            sm_lid: 1,
            lmc: 0,
            rate: None,
            link_layer: crate::discover::LinkLayer::InfiniBand,
            gids: vec![crate::discover::GidEntry { index: 0, gid: crate::discover::Gid([0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, n]), gid_type: None, netdev: None }],
            active_mtu: Some(2048),
        };
        inv.ib[0].ports = vec![port(1, crate::discover::PortState::Down)];
        assert_eq!(startup_port(&inv).unwrap_err(), "mlx5_0:1 is down");
        inv.ib[0].ports.push(port(2, crate::discover::PortState::Active));
        let cfg = startup_port(&inv).unwrap();
        assert_eq!((cfg.device.as_str(), cfg.port, cfg.lid, cfg.gid_index, cfg.mtu_enum), ("mlx5_0", 2, 9, 0, 4), "the active port, its LID, GID 0, 2048-byte MTU");
    }

    #[test]
    fn without_failure_everything_goes_over_the_links() {
        let script: Vec<(u32, usize, u8)> = (0..40).map(|i| (i % 7, i as usize, i as u8)).collect();
        let (got, want) = run(7, 2, &script, &[], 1);
        assert_eq!(got, want);
    }

    #[test]
    fn a_failure_mid_way_loses_and_repeats_nothing() {
        let script: Vec<(u32, usize, u8)> = (0..60).map(|i| (i * 3 % 9, i as usize, i as u8)).collect();
        for seed in 0..20 {
            let (got, want) = run(9, 2, &script, &[(25, 4, false)], seed);
            assert_eq!(got, want, "seed {seed}");
        }
    }

    #[test]
    fn a_late_fallback_re_sends_from_the_peers_count() {
        let mut a = Relay::new(0, vec![1]);
        let mut b = Relay::new(1, vec![0]);
        let sent: Vec<RelayOut> = (0..3).flat_map(|i| a.send(1, vec![i])).collect();
        // b got message 0 over the link; then b's link fails.
        let RelayOut::Rdma { k, data, .. } = sent[0].clone() else { panic!() };
        assert_eq!(b.receive(0, k, data.clone()), Some(RelayOut::Deliver { from: 0, data }));
        let outs = b.fail("broken".into());
        assert_eq!(outs[1], RelayOut::Fallback { to: 0, origin: 1, why: "broken".into(), got: 1 });
        assert!(!b.settled());
        // a, told, switches, tells b its count, and re-sends 1 and 2; a new message follows.
        let outs = a.on_fallback(1, 1, "broken".into(), 1);
        assert_eq!(
            outs,
            vec![
                RelayOut::Switched { origin: 1, why: "broken".into() },
                RelayOut::Fallback { to: 1, origin: 1, why: "broken".into(), got: 0 },
                RelayOut::Oob { to: 1, k: 1, data: vec![1] },
                RelayOut::Oob { to: 1, k: 2, data: vec![2] },
            ]
        );
        assert_eq!(a.send(1, vec![3]), vec![RelayOut::Oob { to: 1, k: 3, data: vec![3] }]);
        assert!(a.settled());
        // The link still brings message 1 late: it is delivered once.
        assert!(b.receive(0, 1, vec![1]).is_some());
        assert!(b.receive(0, 1, vec![1]).is_none());
        assert!(b.receive(0, 2, vec![2]).is_some());
        assert_eq!(b.failover(), Some((1, "broken")));
        b.release();
        assert_eq!(b.send(0, vec![9]), vec![RelayOut::Plain { to: 0, data: vec![9] }]);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Any tree, any traffic, link failures at any moments and members, any interleaving of
        /// the two paths: every member delivers every neighbour's messages exactly once, in order,
        /// and every member ends up off the links.
        #[test]
        fn every_message_arrives_once_in_order(
            size in 2u32..12,
            arity in 1u32..4,
            script in proptest::collection::vec((0u32..12, 0usize..8, any::<u8>()), 0..60),
            failures in proptest::collection::vec((0usize..80, 0u32..12, any::<bool>()), 0..3),
            seed in any::<u64>(),
        ) {
            let (got, want) = run(size, arity, &script, &failures, seed);
            prop_assert_eq!(got, want);
        }
    }
}
