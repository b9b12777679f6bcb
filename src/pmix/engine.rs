//! One node's PMIx state machine. No I/O and no libpmix: the daemon feeds it libpmix's upcalls and
//! the tree's messages and carries out the returned [`Out`]s. Generic over the two kinds of
//! pending libpmix callback (`Op`: status only; `Mx`: status and data), so tests use plain values.
//!
//! - Fence: libpmix calls the host's `fence_nb` once per node, after all its local participants
//!   arrived, with the node's opaque blob. The blob goes up the tree as this node's contribution
//!   to a [`Fence`] (the same collective as the PMI fence, separate sequence) and the merged set
//!   comes back down; the callback then gets the concatenation of every node's blob. Only fences
//!   over the whole namespace are supported (that is what Open MPI's init and finalize use).
//! - Direct modex: libpmix asks for a remote rank's data; the request travels to the rank's node,
//!   whose daemon asks its libpmix (`PMIx_server_dmodex_request`, which waits for the rank to
//!   commit) and sends the blob back.
//! - Abort ends the job with the rank's status and message (a `PmiReport`); a rank that
//!   connected and then exited without finalize is reported like a PMI rank that vanished.

use super::ffi::{ProcId, PMIX_ERR_NOT_FOUND, PMIX_ERR_NOT_SUPPORTED, PMIX_RANK_WILDCARD, PMIX_SUCCESS};
use crate::fence::{Fence, FenceError, Puts};
use crate::wire::{Msg, PmiReportKind};
use std::collections::{BTreeMap, HashMap};

/// What the daemon does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Out<Op, Mx> {
    /// Complete a status-only libpmix callback.
    Op(Op, i32),
    /// Complete a data callback.
    Modex(Mx, i32, Vec<u8>),
    /// Send to the parent (this subtree's fence contribution).
    Up(Msg),
    /// Send to these children (a completed fence, passed on).
    Down(Vec<u32>, Msg),
    /// Send towards the node the message names (`PmixDmodexReq.node` / `PmixDmodexResp.to`).
    Route(Msg),
    /// Call `PMIx_server_dmodex_request` for local `rank`; feed the answer to
    /// [`Engine::dmodex_data`] with `token`.
    AskLocal { rank: u32, token: u64 },
    /// A `PmiReport` for the front end.
    Report { rank: Option<u32>, kind: PmiReportKind, message: String },
    /// A broken invariant between daemons: report it and end the job.
    Fail(String),
}

#[derive(Debug, Default, Clone, Copy)]
struct Client {
    connected: bool,
    finalized: bool,
    aborted: bool,
}

pub struct Engine<Op, Mx> {
    nspace: String,
    node: u32,
    /// "node 3 (n4)", for messages.
    at: String,
    /// Node of every rank of the job.
    rank_node: Vec<u32>,
    clients: BTreeMap<u32, Client>,
    fence: Fence,
    fence_wait: Option<Mx>,
    next_token: u64,
    /// Our requests to other nodes, by token.
    asked: HashMap<u64, Mx>,
    /// Requests from other nodes handed to our libpmix: token → (node, its request id).
    serving: HashMap<u64, (u32, u64)>,
    _op: std::marker::PhantomData<Op>,
}

impl<Op, Mx> Engine<Op, Mx> {
    /// `rank_node[r]`: the node of rank `r`. `fence_children`: the child nodes whose subtrees run
    /// ranks (`crate::fence::participants`).
    pub fn new(nspace: &str, node: u32, at: String, rank_node: Vec<u32>, fence_children: Vec<u32>) -> Self {
        let clients: BTreeMap<u32, Client> =
            rank_node.iter().enumerate().filter(|(_, &n)| n == node).map(|(r, _)| (r as u32, Client::default())).collect();
        let fence = Fence::new(at.clone(), !clients.is_empty(), fence_children);
        Engine {
            nspace: nspace.to_string(),
            node,
            at,
            rank_node,
            clients,
            fence,
            fence_wait: None,
            next_token: 1,
            asked: HashMap::new(),
            serving: HashMap::new(),
            _op: std::marker::PhantomData,
        }
    }

    fn ours(&self, p: &ProcId) -> Option<u32> {
        (p.nspace == self.nspace && self.clients.contains_key(&p.rank)).then_some(p.rank)
    }

    pub fn connected(&mut self, proc: &ProcId, op: Op) -> Vec<Out<Op, Mx>> {
        match self.ours(proc) {
            Some(r) => {
                self.clients.get_mut(&r).expect("checked").connected = true;
                vec![Out::Op(op, PMIX_SUCCESS)]
            }
            // Not a rank rlaunch started here: libpmix should never let it in.
            None => vec![Out::Op(op, PMIX_ERR_NOT_FOUND)],
        }
    }

    pub fn finalized(&mut self, proc: &ProcId, op: Op) -> Vec<Out<Op, Mx>> {
        if let Some(r) = self.ours(proc) {
            self.clients.get_mut(&r).expect("checked").finalized = true;
        }
        vec![Out::Op(op, PMIX_SUCCESS)]
    }

    /// `PMIx_Abort` from a local rank: the whole job ends with `status` (whatever `procs` it
    /// named: rlaunch runs one job). The client is released at once; the front end kills it.
    pub fn abort(&mut self, proc: &ProcId, status: i32, message: &str, op: Op) -> Vec<Out<Op, Mx>> {
        let rank = self.ours(proc);
        if let Some(r) = rank {
            self.clients.get_mut(&r).expect("checked").aborted = true;
        }
        // Open MPI says "N/A" when MPI_Abort gave no text; the front end's line says enough then.
        let message = match message.trim() {
            "N/A" => String::new(),
            m => m.to_string(),
        };
        vec![Out::Report { rank, kind: PmiReportKind::Abort { code: status }, message }, Out::Op(op, PMIX_SUCCESS)]
    }

    /// Whether `procs` names every rank of the job.
    fn whole_job(&self, procs: &[ProcId]) -> bool {
        if procs.iter().any(|p| p.nspace != self.nspace) {
            return false;
        }
        if procs.iter().any(|p| p.rank == PMIX_RANK_WILDCARD) {
            return true;
        }
        let mut seen = vec![false; self.rank_node.len()];
        for p in procs {
            if let Some(s) = seen.get_mut(p.rank as usize) {
                *s = true;
            }
        }
        seen.iter().all(|&s| s)
    }

    /// libpmix's `fence_nb`: this node's local participants all arrived with `data`.
    pub fn fence(&mut self, procs: &[ProcId], data: &[u8], done: Mx) -> Vec<Out<Op, Mx>> {
        if !self.whole_job(procs) {
            return vec![
                Out::Report {
                    rank: None,
                    kind: PmiReportKind::Warning,
                    message: format!(
                        "a PMIx fence over {} of the job's {} ranks was refused: rlaunch runs fences over the whole job only",
                        procs.len(),
                        self.rank_node.len()
                    ),
                },
                Out::Modex(done, PMIX_ERR_NOT_SUPPORTED, Vec::new()),
            ];
        }
        if self.fence_wait.is_some() {
            return vec![Out::Fail(format!(
                "libpmix on {} started PMIx fence {} before the previous one completed; internal error",
                self.at,
                self.fence.seq() + 1
            ))];
        }
        self.fence_wait = Some(done);
        let seq = self.fence.seq();
        let r = self.fence.local(seq, vec![super::encode_blob(self.node, data)]);
        self.step(r)
    }

    /// A child's `PmixFence`.
    pub fn child_fence(&mut self, node: u32, seq: u64, puts: Puts) -> Vec<Out<Op, Mx>> {
        let r = self.fence.child(node, seq, puts);
        self.step(r)
    }

    fn step(&mut self, r: Result<Option<crate::fence::Ready>, FenceError>) -> Vec<Out<Op, Mx>> {
        match r {
            Ok(Some(ready)) => vec![Out::Up(Msg::PmixFence { seq: ready.seq, puts: ready.puts })],
            Ok(None) => Vec::new(),
            Err(e) => vec![Out::Fail(pmix_fence_text(&e))],
        }
    }

    /// `PmixFenceDone` from the parent: pass it on, then release the local fence.
    pub fn fence_done(&mut self, seq: u64, puts: Puts) -> Vec<Out<Op, Mx>> {
        if let Err(e) = self.fence.done(seq) {
            return vec![Out::Fail(pmix_fence_text(&e))];
        }
        let mut out = Vec::new();
        let kids = self.fence.children().to_vec();
        let blob = self.fence.has_local().then(|| super::decode_blobs(&self.at, seq, &puts));
        if !kids.is_empty() {
            out.push(Out::Down(kids, Msg::PmixFenceDone { seq, puts }));
        }
        match (blob, self.fence_wait.take()) {
            (Some(Ok(data)), Some(done)) => out.push(Out::Modex(done, PMIX_SUCCESS, data)),
            (Some(Err(e)), done) => {
                if let Some(done) = done {
                    out.push(Out::Modex(done, super::ffi::PMIX_ERROR, Vec::new()));
                }
                out.push(Out::Fail(e.to_string()));
            }
            (Some(Ok(_)), None) => {
                out.push(Out::Fail(format!("PMIx fence {seq} completed on {} before its ranks entered it; internal error", self.at)))
            }
            (None, _) => {}
        }
        out
    }

    /// libpmix's `direct_modex`: a local client wants `proc`'s data, which lives elsewhere.
    pub fn direct_modex(&mut self, proc: &ProcId, done: Mx) -> Vec<Out<Op, Mx>> {
        let owner = (proc.nspace == self.nspace).then(|| self.rank_node.get(proc.rank as usize).copied()).flatten();
        let Some(node) = owner else {
            return vec![Out::Modex(done, PMIX_ERR_NOT_FOUND, Vec::new())];
        };
        let id = self.token();
        self.asked.insert(id, done);
        vec![Out::Route(Msg::PmixDmodexReq { from: self.node, node, rank: proc.rank, id })]
    }

    /// A `PmixDmodexReq` that arrived at its node: ask the local libpmix.
    pub fn dmodex_request(&mut self, from: u32, rank: u32, id: u64) -> Vec<Out<Op, Mx>> {
        if !self.clients.contains_key(&rank) {
            let msg = Msg::PmixDmodexResp { to: from, id, status: PMIX_ERR_NOT_FOUND, data: Vec::new() };
            return vec![Out::Route(msg)];
        }
        let token = self.token();
        self.serving.insert(token, (from, id));
        vec![Out::AskLocal { rank, token }]
    }

    /// Our libpmix answered `AskLocal { token }` (or the call failed: pass its status).
    pub fn dmodex_data(&mut self, token: u64, status: i32, data: Vec<u8>) -> Vec<Out<Op, Mx>> {
        match self.serving.remove(&token) {
            Some((to, id)) => vec![Out::Route(Msg::PmixDmodexResp { to, id, status, data })],
            None => Vec::new(),
        }
    }

    /// A `PmixDmodexResp` for one of our requests.
    pub fn dmodex_reply(&mut self, id: u64, status: i32, data: Vec<u8>) -> Vec<Out<Op, Mx>> {
        match self.asked.remove(&id) {
            Some(done) => vec![Out::Modex(done, status, data)],
            None => Vec::new(),
        }
    }

    /// A local rank was reaped (before its exit is reported).
    pub fn rank_exited(&mut self, rank: u32) -> Vec<Out<Op, Mx>> {
        let Some(c) = self.clients.get(&rank).copied() else { return Vec::new() };
        if c.connected && !c.finalized && !c.aborted {
            return vec![Out::Report {
                rank: Some(rank),
                kind: PmiReportKind::Unfinalized,
                message: "connected to PMIx and exited without finalizing it (MPI_Finalize was not called)".into(),
            }];
        }
        Vec::new()
    }

    fn token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        t
    }
}

/// The PMI fence's error text, told as a PMIx fence.
fn pmix_fence_text(e: &FenceError) -> String {
    format!("PMIx: {}", e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type E = Engine<u32, u32>;

    fn wild(ns: &str) -> Vec<ProcId> {
        vec![ProcId { nspace: ns.into(), rank: PMIX_RANK_WILDCARD }]
    }

    fn p(ns: &str, rank: u32) -> ProcId {
        ProcId { nspace: ns.into(), rank }
    }

    #[test]
    fn connect_finalize_and_exit_without_report() {
        let mut e = E::new("ns", 0, "node 0".into(), vec![0, 0, 1], vec![]);
        assert_eq!(e.connected(&p("ns", 1), 10), vec![Out::Op(10, 0)]);
        assert_eq!(e.finalized(&p("ns", 1), 11), vec![Out::Op(11, 0)]);
        assert!(e.rank_exited(1).is_empty());
        // A rank of another node, or of another namespace, is not ours.
        assert_eq!(e.connected(&p("ns", 2), 12), vec![Out::Op(12, PMIX_ERR_NOT_FOUND)]);
        assert_eq!(e.connected(&p("other", 0), 13), vec![Out::Op(13, PMIX_ERR_NOT_FOUND)]);
    }

    #[test]
    fn exit_after_connect_without_finalize_is_reported() {
        let mut e = E::new("ns", 0, "node 0".into(), vec![0, 0], vec![]);
        e.connected(&p("ns", 0), 1);
        let out = e.rank_exited(0);
        assert!(matches!(&out[..], [Out::Report { rank: Some(0), kind: PmiReportKind::Unfinalized, .. }]), "{out:?}");
        // Never connected (not an MPI program, or died first): nothing to say.
        assert!(e.rank_exited(1).is_empty());
    }

    #[test]
    fn abort_reports_status_and_releases_the_client() {
        let mut e = E::new("ns", 0, "node 0".into(), vec![0], vec![]);
        e.connected(&p("ns", 0), 1);
        let out = e.abort(&p("ns", 0), 7, "boom", 2);
        assert_eq!(out, vec![Out::Report { rank: Some(0), kind: PmiReportKind::Abort { code: 7 }, message: "boom".into() }, Out::Op(2, 0)]);
        // The abort explains the exit: no second report.
        assert!(e.rank_exited(0).is_empty());
        let out = e.abort(&p("ns", 0), 3, "N/A", 4);
        assert!(matches!(&out[0], Out::Report { message, kind: PmiReportKind::Abort { code: 3 }, .. } if message.is_empty()), "{out:?}");
    }

    #[test]
    fn leaf_fence_goes_up_and_completes_with_every_blob() {
        let mut e = E::new("ns", 1, "node 1".into(), vec![0, 1], vec![]);
        let out = e.fence(&wild("ns"), b"mine", 5);
        let Out::Up(Msg::PmixFence { seq: 1, puts }) = &out[0] else { panic!("{out:?}") };
        assert_eq!(puts, &vec![super::super::encode_blob(1, b"mine")]);
        let all = vec![super::super::encode_blob(0, b"theirs-"), super::super::encode_blob(1, b"mine")];
        let out = e.fence_done(1, all);
        assert_eq!(out, vec![Out::Modex(5, PMIX_SUCCESS, b"theirs-mine".to_vec())]);
        // The next fence is numbered 2 everywhere.
        let out = e.fence(&wild("ns"), b"", 6);
        assert!(matches!(&out[0], Out::Up(Msg::PmixFence { seq: 2, .. })), "{out:?}");
    }

    #[test]
    fn inner_node_merges_children_and_relays_the_result() {
        let mut e = E::new("ns", 0, "node 0".into(), vec![0, 1, 2], vec![1, 2]);
        assert!(e.fence(&wild("ns"), b"a", 1).is_empty());
        assert!(e.child_fence(2, 1, vec![super::super::encode_blob(2, b"c")]).is_empty());
        let out = e.child_fence(1, 1, vec![super::super::encode_blob(1, b"b")]);
        let Out::Up(Msg::PmixFence { seq: 1, puts }) = &out[0] else { panic!("{out:?}") };
        // Own blob first, then the children in node order.
        assert_eq!(super::super::decode_blobs("t", 1, puts).unwrap(), b"abc");
        let out = e.fence_done(1, puts.clone());
        assert!(matches!(&out[0], Out::Down(kids, Msg::PmixFenceDone { seq: 1, .. }) if kids == &vec![1, 2]), "{out:?}");
        assert_eq!(out[1], Out::Modex(1, PMIX_SUCCESS, b"abc".to_vec()));
    }

    #[test]
    fn fences_over_part_of_the_job_are_refused() {
        let mut e = E::new("ns", 0, "node 0".into(), vec![0, 1], vec![]);
        let out = e.fence(&[p("ns", 0)], b"", 9);
        assert!(matches!(out.last(), Some(Out::Modex(9, PMIX_ERR_NOT_SUPPORTED, _))), "{out:?}");
        // Every rank listed one by one is the whole job.
        let out = e.fence(&[p("ns", 1), p("ns", 0)], b"", 10);
        assert!(matches!(&out[0], Out::Up(_)), "{out:?}");
    }

    #[test]
    fn protocol_breaks_fail_the_job() {
        let mut e = E::new("ns", 0, "node 0".into(), vec![0, 1], vec![1]);
        assert!(matches!(&e.child_fence(1, 2, vec![])[..], [Out::Fail(m)] if m.starts_with("PMIx:")));
        assert!(matches!(&e.fence_done(1, vec![])[..], [Out::Fail(_)]));
        e.fence(&wild("ns"), b"", 1);
        assert!(matches!(&e.fence(&wild("ns"), b"", 2)[..], [Out::Fail(_)]));
        // A corrupt blob from above fails the local fence and the job.
        let mut e = E::new("ns", 0, "node 0".into(), vec![0], vec![]);
        e.fence(&wild("ns"), b"", 3);
        let out = e.fence_done(1, vec![("0".into(), "%%".into())]);
        assert!(matches!(&out[..], [Out::Modex(3, s, _), Out::Fail(_)] if *s != PMIX_SUCCESS), "{out:?}");
    }

    #[test]
    fn direct_modex_round_trip_between_two_engines() {
        let mut a = E::new("ns", 0, "node 0".into(), vec![0, 1], vec![]);
        let mut b = E::new("ns", 1, "node 1".into(), vec![0, 1], vec![]);
        let out = a.direct_modex(&p("ns", 1), 77);
        let [Out::Route(Msg::PmixDmodexReq { from: 0, node: 1, rank: 1, id })] = &out[..] else { panic!("{out:?}") };
        let out = b.dmodex_request(0, 1, *id);
        let [Out::AskLocal { rank: 1, token }] = &out[..] else { panic!("{out:?}") };
        let out = b.dmodex_data(*token, PMIX_SUCCESS, b"blob".to_vec());
        let [Out::Route(Msg::PmixDmodexResp { to: 0, id: rid, status: 0, data })] = &out[..] else { panic!("{out:?}") };
        assert_eq!(rid, id);
        assert_eq!(a.dmodex_reply(*rid, 0, data.clone()), vec![Out::Modex(77, 0, b"blob".to_vec())]);
        // A second answer for the same request is ignored.
        assert!(a.dmodex_reply(*rid, 0, vec![]).is_empty());
        assert!(b.dmodex_data(*token, 0, vec![]).is_empty());
    }

    #[test]
    fn direct_modex_for_unknown_procs_is_not_found() {
        let mut a = E::new("ns", 0, "node 0".into(), vec![0, 1], vec![]);
        assert_eq!(a.direct_modex(&p("ns", 9), 1), vec![Out::Modex(1, PMIX_ERR_NOT_FOUND, vec![])]);
        assert_eq!(a.direct_modex(&p("other", 1), 2), vec![Out::Modex(2, PMIX_ERR_NOT_FOUND, vec![])]);
        // A request for a rank that is not on this node is answered "not found" at once.
        let out = a.dmodex_request(1, 1, 42);
        assert_eq!(out, vec![Out::Route(Msg::PmixDmodexResp { to: 1, id: 42, status: PMIX_ERR_NOT_FOUND, data: vec![] })]);
    }

    proptest! {
        /// A whole tree of engines, blobs arriving in any order, several fences: every node gets
        /// the same concatenation, which holds each node's blob exactly once.
        #[test]
        fn tree_fence_gives_every_node_every_blob(nnodes in 1u32..9, fanout in 1u32..4, seed in any::<u64>(), mask in proptest::collection::vec(any::<bool>(), 9)) {
            let with: Vec<bool> = (0..nnodes).map(|n| n == 0 || mask[n as usize]).collect();
            // One rank per node that runs ranks.
            let rank_node: Vec<u32> = (0..nnodes).filter(|&n| with[n as usize]).collect();
            let has = |n: u32| with[n as usize];
            let mut root = Fence::new("fe", false, crate::fence::participants(None, &crate::tree::Topology::new(nnodes, fanout), has));
            let mut es: Vec<E> = (0..nnodes)
                .map(|n| E::new("ns", n, format!("node {n}"), rank_node.clone(), crate::fence::participants(Some(n), &crate::tree::Topology::new(nnodes, fanout), has)))
                .collect();
            let mut rng = seed;
            for round in 1..=3u64 {
                let mut order: Vec<u32> = (0..nnodes).filter(|&n| has(n)).collect();
                for i in (1..order.len()).rev() {
                    rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    order.swap(i, (rng >> 33) as usize % (i + 1));
                }
                // (from node, message up)
                let mut up: Vec<(u32, Msg)> = Vec::new();
                for n in order {
                    for o in es[n as usize].fence(&wild("ns"), format!("<{n}.{round}>").as_bytes(), n) {
                        match o { Out::Up(m) => up.push((n, m)), other => prop_assert!(false, "{:?}", other) }
                    }
                }
                let mut done = None;
                while let Some((from, Msg::PmixFence { seq, puts })) = up.pop() {
                    match crate::tree::Topology::new(nnodes, fanout).parent_of(from) {
                        None => if let Some(r) = root.child(from, seq, puts).unwrap() { done = Some(r) },
                        Some(parent) => for o in es[parent as usize].child_fence(from, seq, puts) {
                            match o { Out::Up(m) => up.push((parent, m)), other => prop_assert!(false, "{:?}", other) }
                        },
                    }
                }
                let ready = done.expect("the root completes");
                root.done(ready.seq).unwrap();
                let mut down: Vec<u32> = root.children().to_vec();
                let mut got = BTreeMap::new();
                while let Some(n) = down.pop() {
                    for o in es[n as usize].fence_done(ready.seq, ready.puts.clone()) {
                        match o {
                            Out::Down(kids, _) => down.extend(kids),
                            Out::Modex(who, 0, data) => { got.insert(who, data); }
                            other => prop_assert!(false, "{:?}", other),
                        }
                    }
                }
                prop_assert_eq!(got.len(), rank_node.len());
                let first = got.values().next().unwrap().clone();
                let text = String::from_utf8(first.clone()).unwrap();
                for n in &rank_node {
                    let blob = format!("<{n}.{round}>");
                    prop_assert_eq!(text.matches(&blob).count(), 1);
                }
                prop_assert!(got.values().all(|d| *d == first));
            }
        }
    }
}
