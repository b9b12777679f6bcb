//! The start-up collectives over RDMA, with TCP as the fallback (one vertex of the daemon tree:
//! the front end is member 0, node `n` member `n + 1`, as in [`crate::fabric`]).
//!
//! Right after the launch message, each member sends its link's connection data to its parent
//! over TCP; a parent answers each child with its own. With every neighbour's data in, a
//! [`Carrier`] thread brings the links up (blocking connects stay off the event loop). The
//! bring-up results are combined up the tree and the front end's decision comes down
//! ([`fabrics::startup::Agreement`]): RDMA for the whole job only if every member brought its
//! links up; otherwise the whole job keeps TCP, and the decision names the first member that
//! failed and why. Fabric-exchange messages produced before the decision are held, then go
//! over the chosen transport. When a member's exchange is over it tells its neighbours over TCP;
//! once it has heard the same from all of them it releases its links
//! ([`fabrics::startup::Release`]): later traffic stays on the TCP links.
//!
//! A link that fails while the exchange runs over it fails the job with one line: the
//! collective's messages already sent over RDMA cannot be replayed over TCP by one member alone,
//! and the job has started nothing yet, so failing now is safe and says why.
//!
//! Only the simulated link ([`fabrics::sim_link`], test-only, [`crate::spec::SIM_RDMA_ENV`]) is
//! wired in; with the real `VerbsLink` the connection data would be its queue-pair infos.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fabrics::carrier::{Carrier, CarrierEvent};
use fabrics::collective::Tree;
use fabrics::sim_link::{SimConfig, SimEndpoint};
use fabrics::startup::{AgreeMsg, AgreeOut, Agreement, Decision};

use crate::wire::{Msg, RdmaStep};

/// How long any wait inside the RDMA transport (credits, send buffers) may take.
const TRANSPORT_TIMEOUT: Duration = Duration::from_secs(30);

/// What the owner must do.
#[derive(Debug, PartialEq, Eq)]
pub enum Out {
    /// Over TCP to tree neighbour `to` (a member).
    Tcp { to: u32, msg: Msg },
    /// A fabric-exchange message to send over TCP (this job does not use RDMA).
    FabricTcp { to: u32, data: Vec<u8> },
    /// A fabric-exchange message that came over RDMA from member `from`.
    FabricIn { from: u32, data: Vec<u8> },
    /// The whole job's decision reached this member.
    Decided(Decision),
    /// The link failed while the exchange ran over it.
    Failed(String),
}

/// Faults injected by the test-only setting ([`crate::spec::SIM_RDMA_ENV`]), each with the
/// reason to give.
#[derive(Default)]
pub struct Faults {
    /// The bring-up fails.
    pub bring_up: Option<String>,
    /// The link fails once the exchange runs over it.
    pub link: Option<String>,
}

pub struct StartupRdma {
    parent: Option<u32>,
    peers: Vec<u32>,
    endpoint: Option<SimEndpoint>,
    /// This member's connection data, or why it has no link.
    own: Result<Vec<u8>, String>,
    remote: HashMap<u32, Vec<u8>>,
    bring_up_started: bool,
    carrier: Option<Carrier>,
    agreement: Agreement,
    children: Vec<u32>,
    /// Children whose subtrees are done with their links.
    children_done: Vec<u32>,
    /// This member's carrier has posted every send of its exchange.
    flushed: bool,
    reported_done: bool,
    held: Vec<(u32, Vec<u8>)>,
    /// This member's start-up collectives are over.
    finished: bool,
    /// The injected link failure, if any.
    link_fault: Option<String>,
    /// Set when a neighbour's bring-up failed: ours stops waiting for its connection.
    peer_gave_up: Arc<AtomicBool>,
    wake: Arc<dyn Fn() + Send + Sync>,
    started: Instant,
    decided_after: Option<Duration>,
}

impl StartupRdma {
    /// Member `me` starts, with the test setting's `faults` if any. `wake` wakes the owner's event
    /// loop from the carrier thread.
    pub fn start(tree: Tree, me: u32, faults: Faults, wake: Arc<dyn Fn() + Send + Sync>) -> (StartupRdma, Vec<Out>) {
        let parent = tree.parent(me);
        let peers: Vec<u32> = parent.into_iter().chain(tree.children(me)).collect();
        let (endpoint, own) = match faults.bring_up {
            Some(why) => (None, Err(why)),
            None => match SimEndpoint::open(me) {
                Ok((ep, data)) => (Some(ep), Ok(data)),
                Err(e) => (None, Err(e.to_string())),
            },
        };
        let mut s = StartupRdma {
            parent,
            peers,
            endpoint,
            own,
            remote: HashMap::new(),
            bring_up_started: false,
            carrier: None,
            agreement: Agreement::new(tree, me),
            children: tree.children(me).collect(),
            children_done: Vec::new(),
            flushed: false,
            reported_done: false,
            held: Vec::new(),
            finished: false,
            link_fault: faults.link,
            peer_gave_up: Arc::default(),
            wake,
            started: Instant::now(),
            decided_after: None,
        };
        let mut out: Vec<Out> = parent.map(|p| Out::Tcp { to: p, msg: Msg::Rdma(RdmaStep::Connect(s.connect_data())) }).into_iter().collect();
        out.extend(s.maybe_bring_up());
        (s, out)
    }

    fn connect_data(&self) -> Vec<u8> {
        match &self.own {
            Ok(d) => d.clone(),
            Err(why) => SimEndpoint::refusal(why),
        }
    }

    /// The decision, once it is known here.
    pub fn decision(&self) -> Option<&Decision> {
        self.agreement.decided()
    }

    /// From the start to the decision (bring-up and agreement).
    pub fn decided_after(&self) -> Option<Duration> {
        self.decided_after
    }

    /// A [`Msg::Rdma`] from tree neighbour `from`.
    pub fn on_tcp(&mut self, from: u32, step: RdmaStep) -> Vec<Out> {
        if !self.peers.contains(&from) {
            return Vec::new();
        }
        match step {
            // A second one is the peer giving up (its bring-up failed): stop waiting for it.
            RdmaStep::Connect(data) if self.bring_up_started || self.remote.contains_key(&from) => {
                if SimEndpoint::is_refusal(&data) {
                    self.peer_gave_up.store(true, Ordering::Relaxed);
                }
                Vec::new()
            }
            RdmaStep::Connect(data) => {
                let mut out = Vec::new();
                if Some(from) != self.parent {
                    out.push(Out::Tcp { to: from, msg: Msg::Rdma(RdmaStep::Connect(self.connect_data())) });
                }
                self.remote.insert(from, data);
                out.extend(self.maybe_bring_up());
                out
            }
            RdmaStep::Agree(bytes) => match AgreeMsg::decode(&bytes).map_err(|e| e.to_string()).and_then(|m| self.agreement.on_message(from, m).map_err(|e| e.to_string())) {
                Ok(outs) => self.agreed(outs),
                Err(e) => vec![Out::Failed(format!("RDMA start-up: {e}"))],
            },
            RdmaStep::Done => {
                if self.children.contains(&from) && !self.children_done.contains(&from) {
                    self.children_done.push(from);
                }
                self.maybe_report_done()
            }
            RdmaStep::Release if Some(from) == self.parent => self.release_all(),
            RdmaStep::Release => Vec::new(),
        }
    }

    fn maybe_bring_up(&mut self) -> Vec<Out> {
        if self.bring_up_started || self.peers.iter().any(|p| !self.remote.contains_key(p)) {
            return Vec::new();
        }
        self.bring_up_started = true;
        if let Err(why) = &self.own {
            let why = why.clone();
            return self.local(Err(why));
        }
        // A neighbour that has no link reports its own failure, which names it: the links to
        // the others still come up (they are waiting for them), and the decision will be TCP.
        let peers: Vec<u32> = self.peers.iter().copied().filter(|p| !self.remote.get(p).is_some_and(|d| SimEndpoint::is_refusal(d))).collect();
        if peers.is_empty() {
            return self.local(Ok(()));
        }
        let Some(ep) = self.endpoint.take() else { return self.local(Err("no endpoint".into())) };
        let remote = std::mem::take(&mut self.remote);
        let cfg = SimConfig::default();
        let abort = self.peer_gave_up.clone();
        self.carrier = Some(Carrier::bring_up(move || ep.connect_unless(cfg, &peers, &remote, &abort), TRANSPORT_TIMEOUT, self.wake.clone()));
        Vec::new()
    }

    fn local(&mut self, result: Result<(), String>) -> Vec<Out> {
        let outs = self.agreement.local(result);
        self.agreed(outs)
    }

    fn agreed(&mut self, outs: Vec<AgreeOut>) -> Vec<Out> {
        let mut out = Vec::new();
        for o in outs {
            match o {
                AgreeOut::Send { to, msg } => out.push(Out::Tcp { to, msg: Msg::Rdma(RdmaStep::Agree(msg.encode())) }),
                AgreeOut::Decided(d) => {
                    self.decided_after = Some(self.started.elapsed());
                    let held = std::mem::take(&mut self.held);
                    match &d {
                        Decision::Rdma if self.link_fault.is_some() => {
                            // As a verbs error would: the link goes, the owner hears why.
                            self.carrier = None;
                            let why = self.link_fault.take().unwrap_or_default();
                            out.push(Out::Failed(format!("the RDMA link of the start-up exchange failed: {why}")));
                        }
                        Decision::Rdma => held.into_iter().for_each(|(to, data)| self.via_carrier(to, data)),
                        Decision::Fallback { .. } => {
                            // Released at once: nobody will use it.
                            self.carrier = None;
                            out.extend(held.into_iter().map(|(to, data)| Out::FabricTcp { to, data }));
                        }
                    }
                    out.push(Out::Decided(d));
                }
            }
        }
        out
    }

    fn via_carrier(&mut self, to: u32, data: Vec<u8>) {
        if let Some(c) = &self.carrier {
            c.send(to, data);
        }
    }

    /// A fabric-exchange message for member `to`: held until the decision, then over the chosen
    /// transport.
    pub fn fabric_out(&mut self, to: u32, data: Vec<u8>) -> Vec<Out> {
        match self.agreement.decided() {
            None => {
                self.held.push((to, data));
                Vec::new()
            }
            Some(Decision::Rdma) => {
                self.via_carrier(to, data);
                Vec::new()
            }
            Some(Decision::Fallback { .. }) => vec![Out::FabricTcp { to, data }],
        }
    }

    /// The carrier thread woke the loop.
    pub fn on_wake(&mut self) -> Vec<Out> {
        let mut out = Vec::new();
        while let Some(ev) = self.carrier.as_ref().and_then(Carrier::try_event) {
            match ev {
                CarrierEvent::Up(Ok(())) => out.extend(self.local(Ok(()))),
                // When waiting ended because a neighbour gave up, that neighbour reports (and
                // names) the failure; this member's part did not fail.
                CarrierEvent::Up(Err(why)) => {
                    self.carrier = None;
                    // The neighbours still waiting for a connection from us stop waiting (also
                    // when we stopped because of another one: they may be waiting for us).
                    let gave_up = SimEndpoint::refusal(&why);
                    out.extend(self.peers.iter().map(|&to| Out::Tcp { to, msg: Msg::Rdma(RdmaStep::Connect(gave_up.clone())) }));
                    let secondary = self.peer_gave_up.load(Ordering::Relaxed);
                    out.extend(self.local(if secondary { Ok(()) } else { Err(why) }));
                }
                CarrierEvent::Message { from, bytes } => {
                    out.push(Out::FabricIn { from, data: bytes });
                    // One message at a time: the owner must see it (it may end this member's
                    // exchange) before a failure queued behind it is judged. The rest of the
                    // queue waits for the next wake.
                    (self.wake)();
                    break;
                }
                CarrierEvent::Flushed => {
                    self.flushed = true;
                    out.extend(self.maybe_report_done());
                }
                CarrierEvent::Failed(why) => {
                    self.carrier = None;
                    // Once every send of this member is posted, it needs the link no more (the
                    // release at the end breaks it anyway): no failure then.
                    if self.agreement.decided() == Some(&Decision::Rdma) && !self.flushed {
                        out.push(Out::Failed(format!("the RDMA link of the start-up exchange failed: {why}")));
                    }
                }
            }
        }
        out
    }

    /// This member's start-up collectives are over: once its carrier has posted every send, its
    /// subtree's `Done` goes up (see the module docs).
    pub fn done(&mut self) -> Vec<Out> {
        if self.agreement.decided() != Some(&Decision::Rdma) || self.finished {
            return Vec::new();
        }
        self.finished = true;
        match &self.carrier {
            Some(c) => {
                c.flush();
                Vec::new()
            }
            None => {
                self.flushed = true;
                self.maybe_report_done()
            }
        }
    }

    fn maybe_report_done(&mut self) -> Vec<Out> {
        if !self.flushed || self.reported_done || self.children_done.len() < self.children.len() {
            return Vec::new();
        }
        self.reported_done = true;
        match self.parent {
            Some(p) => vec![Out::Tcp { to: p, msg: Msg::Rdma(RdmaStep::Done) }],
            // The root: everyone is done.
            None => self.release_all(),
        }
    }

    /// Releases this member's links and tells its children to release theirs.
    fn release_all(&mut self) -> Vec<Out> {
        // Nobody sends data any more: waiting for the thread to give the links back is short.
        if let Some(c) = self.carrier.take() {
            c.release();
        }
        self.children.iter().map(|&to| Out::Tcp { to, msg: Msg::Rdma(RdmaStep::Release) }).collect()
    }

    /// Whether the links are still held.
    #[cfg(test)]
    pub fn holds_links(&self) -> bool {
        self.carrier.is_some()
    }

    /// The tree parent (a member), none at the root.
    pub fn parent(&self) -> Option<u32> {
        self.parent
    }
}

/// How the report and `-v` name the start-up transport.
pub fn transport_name(d: Option<&Decision>) -> &'static str {
    match d {
        Some(Decision::Rdma) => "rdma (simulated)",
        _ => "tcp",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// Per member: its decision, the fabric messages it got (sender, bytes), and whether it sent
    /// over TCP or still holds its links.
    type Seen = (Option<Decision>, Vec<(u32, Vec<u8>)>, bool);

    type Queue = VecDeque<(u32, u32, Msg)>;
    type Got = Vec<Vec<(u32, Vec<u8>)>>;

    /// One round of [`run`]: every queued TCP message delivered, then every member woken.
    fn round(ms: &mut [StartupRdma], tcp: &mut Queue, got: &mut Got, handle: &mut impl FnMut(u32, Vec<Out>, &mut Queue, &mut Got)) {
        while let Some((from, to, msg)) = tcp.pop_front() {
            let Msg::Rdma(step) = msg else { panic!() };
            let outs = ms[to as usize].on_tcp(from, step);
            handle(to, outs, tcp, got);
        }
        for i in 0..ms.len() as u32 {
            let outs = ms[i as usize].on_wake();
            handle(i, outs, tcp, got);
        }
    }

    /// A whole tree of members in one thread: TCP messages through a queue, fabric messages
    /// echoed, waking by polling.
    fn run(size: u32, arity: u32, broken: Option<u32>) -> Vec<Seen> {
        let tree = Tree::new(size, arity).unwrap();
        let mut tcp: VecDeque<(u32, u32, Msg)> = VecDeque::new();
        let mut ms = Vec::new();
        let mut got: Vec<Vec<(u32, Vec<u8>)>> = vec![Vec::new(); size as usize];
        let mut over_tcp = vec![false; size as usize];
        let mut handle = |i: u32, outs: Vec<Out>, tcp: &mut VecDeque<(u32, u32, Msg)>, got: &mut Vec<Vec<(u32, Vec<u8>)>>| {
            for o in outs {
                match o {
                    Out::Tcp { to, msg } => tcp.push_back((i, to, msg)),
                    Out::FabricTcp { to, data } => {
                        over_tcp[i as usize] = true;
                        got[to as usize].push((i, data));
                    }
                    Out::FabricIn { from, data } => got[i as usize].push((from, data)),
                    Out::Decided(_) => {}
                    Out::Failed(w) => panic!("member {i}: {w}"),
                }
            }
        };
        for i in 0..size {
            let faults = Faults { bring_up: (broken == Some(i)).then(|| "injected".to_string()), link: None };
            let (m, outs) = StartupRdma::start(tree, i, faults, Arc::new(|| {}));
            ms.push(m);
            handle(i, outs, &mut tcp, &mut got);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while ms.iter().any(|m| m.decision().is_none()) && Instant::now() < deadline {
            round(&mut ms, &mut tcp, &mut got, &mut handle);
            std::thread::sleep(Duration::from_millis(1));
        }
        // Every member sends one message to each neighbour, then is done.
        for i in 0..size {
            for p in tree.parent(i).into_iter().chain(tree.children(i)) {
                let outs = ms[i as usize].fabric_out(p, vec![i as u8, p as u8]);
                handle(i, outs, &mut tcp, &mut got);
            }
        }
        let want = |i: u32| tree.parent(i).into_iter().chain(tree.children(i)).count();
        while (0..size).any(|i| got[i as usize].len() < want(i)) && Instant::now() < deadline {
            for i in 0..size {
                let outs = ms[i as usize].on_wake();
                handle(i, outs, &mut tcp, &mut got);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        for i in 0..size {
            let outs = ms[i as usize].done();
            handle(i, outs, &mut tcp, &mut got);
        }
        // Flushes, Done up the tree, Release down.
        while ms.iter().any(StartupRdma::holds_links) && Instant::now() < deadline {
            round(&mut ms, &mut tcp, &mut got, &mut handle);
            std::thread::sleep(Duration::from_millis(1));
        }
        (0..size as usize)
            .map(|i| {
                let mut g = got[i].clone();
                g.sort();
                (ms[i].decision().cloned(), g, over_tcp[i] || ms[i].holds_links())
            })
            .collect()
    }

    #[test]
    fn all_up_means_the_exchange_runs_over_rdma_and_links_are_released() {
        let tree = Tree::new(6, 2).unwrap();
        for (i, (d, got, tcp_or_held)) in run(6, 2, None).into_iter().enumerate() {
            let i = i as u32;
            assert_eq!(d, Some(Decision::Rdma), "member {i}");
            let mut want: Vec<(u32, Vec<u8>)> = tree.parent(i).into_iter().chain(tree.children(i)).map(|p| (p, vec![p as u8, i as u8])).collect();
            want.sort();
            assert_eq!(got, want, "member {i}");
            assert!(!tcp_or_held, "member {i}: nothing over TCP, and the links released");
        }
    }

    #[test]
    fn one_broken_member_sends_the_whole_job_to_tcp_naming_it() {
        for (i, (d, got, over_tcp)) in run(6, 2, Some(4)).into_iter().enumerate() {
            assert_eq!(d, Some(Decision::Fallback { member: 4, why: "injected".into() }), "member {i}");
            assert!(!got.is_empty() && over_tcp, "member {i}: the exchange went over TCP");
        }
    }
}
