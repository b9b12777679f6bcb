//! The start-up collectives over RDMA, with TCP as the fallback (one vertex of the daemon tree:
//! the front end is member 0, node `n` member `n + 1`, as in [`crate::fabric`]).
//!
//! Right after the launch message, each member opens its end of the links to its tree
//! neighbours ([`Link`]: real verbs queue pairs, or the test-only simulated link) and sends its
//! connection data to its parent over TCP; a parent answers each child with its own. With every
//! neighbour's data in, a [`Carrier`] thread brings the links up (blocking connects stay off the
//! event loop). The bring-up results are combined up the tree and the front end's decision comes
//! down ([`fabrics::startup::Agreement`]): RDMA for the whole job only if every member brought its
//! links up; otherwise the whole job keeps TCP, and the decision names the first member that
//! failed and why ("no RDMA device", "verbs unavailable: ...").
//!
//! Two collectives use the links: the inventory exchange, and the ranks' first PMI/PMIx fence
//! (the wire-up "modex"): its contributions up and its result down. Their messages go through a
//! [`Relay`]: numbered per tree edge and kept, so that a link error in the middle of either
//! collective moves the whole job to TCP (a `Fallback` flooded over TCP, every member re-sending
//! what its neighbours have not delivered) and the collective finishes there. A member whose
//! ranks do not fence within [`FENCE_WAIT`] of the exchange's end (a program that is not MPI)
//! moves the job off the links the same way, so the links are not held for nothing.
//!
//! A member is done with its links once the exchange and the first fence are over for it (or the
//! job moved to TCP and every neighbour knows); "done" goes up the tree over TCP, the front end
//! sends "release" down, and every member gives its links back. Later fences, gets, output,
//! signals and exits use TCP only, so the launcher does not compete with the application.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fabrics::carrier::{Carrier, CarrierEvent};
use fabrics::collective::Tree;
use fabrics::sim_link::{SimConfig, SimEndpoint};
use fabrics::startup::{AgreeMsg, AgreeOut, Agreement, Decision, Relay, RelayOut, RelayPath};
use fabrics::verbs_link::{QpInfo, VerbsLink, VerbsLinkConfig};

use crate::wire::{FallbackCause, Msg, RdmaStep};

/// How long any wait inside the RDMA transport (credits, send buffers) may take.
const TRANSPORT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long after the exchange's end a member with ranks keeps its links for their first fence
/// when none of them has connected to PMI or PMIx (a program that is not MPI).
pub const FENCE_WAIT: Duration = Duration::from_secs(5);

/// The same once a local rank connected to PMI or PMIx: it is an MPI program, whose first fence
/// comes once its MPI_Init has done the rest of its work (slow under load).
pub const FENCE_WAIT_PMI: Duration = Duration::from_secs(30);

/// Which link the members bring up.
#[derive(Clone, Debug)]
pub enum LinkKind {
    /// Verbs queue pairs on this port.
    Verbs(VerbsLinkConfig),
    /// The simulated inter-process link (test-only, [`crate::spec::SIM_RDMA_ENV`]), also over
    /// TCP at this address for peers on other hosts.
    Simulated(Option<std::net::IpAddr>),
}

/// One member's end of its links before they are up: what it tells its neighbours, and how
/// they come up. The rest of the start-up does not know which kind it drives.
enum Link {
    Sim(SimEndpoint, Vec<u8>),
    /// The queue pairs (in INIT) and each neighbour's queue-pair info.
    Verbs(Box<VerbsLink>, HashMap<u32, QpInfo>),
}

impl Link {
    fn open(kind: LinkKind, me: u32, peers: &[u32]) -> Result<Link, String> {
        match kind {
            LinkKind::Simulated(ip) => SimEndpoint::open_on(me, ip).map(|(ep, data)| Link::Sim(ep, data)).map_err(|e| e.to_string()),
            LinkKind::Verbs(cfg) => VerbsLink::open(cfg, peers).map(|(l, infos)| Link::Verbs(Box::new(l), infos)).map_err(|e| e.to_string()),
        }
    }

    fn connect_data(&self, peer: u32) -> Vec<u8> {
        match self {
            Link::Sim(_, data) => data.clone(),
            Link::Verbs(_, infos) => infos.get(&peer).map(QpInfo::encode).unwrap_or_default(),
        }
    }

    /// Starts the carrier thread, which brings the links to `peers` up from their connection
    /// data; `abort` ends a wait for a neighbour that gave up.
    fn bring_up(self, peers: Vec<u32>, remote: HashMap<u32, Vec<u8>>, abort: Arc<AtomicBool>, wake: Arc<dyn Fn() + Send + Sync>) -> Carrier {
        match self {
            Link::Sim(ep, _) => Carrier::bring_up(move || ep.connect_unless(SimConfig::default(), &peers, &remote, &abort), TRANSPORT_TIMEOUT, wake),
            Link::Verbs(mut link, _) => Carrier::bring_up(
                move || {
                    let mut infos = HashMap::new();
                    for p in &peers {
                        let info = remote.get(p).and_then(|d| QpInfo::decode(d));
                        let info = info.ok_or(fabrics::transport::TransportError::Rdma { peer: *p, why: "sent no queue-pair info".into() })?;
                        infos.insert(*p, info);
                    }
                    link.connect(&infos)?;
                    Ok(*link)
                },
                TRANSPORT_TIMEOUT,
                wake,
            ),
        }
    }
}

/// A start-up collective's message: the inventory exchange's bytes, or a first-fence message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    Fabric(Vec<u8>),
    Msg(Msg),
}

impl Payload {
    /// `0 | bytes` or `1 | postcard(Msg)`.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Payload::Fabric(d) => [&[0u8][..], d].concat(),
            Payload::Msg(m) => {
                let mut b = vec![1u8];
                b.extend(postcard::to_allocvec(m).unwrap_or_default());
                b
            }
        }
    }

    pub fn decode(b: &[u8]) -> Result<Payload, String> {
        match b.split_first() {
            Some((0, d)) => Ok(Payload::Fabric(d.to_vec())),
            Some((1, m)) => postcard::from_bytes(m).map(Payload::Msg).map_err(|e| format!("a start-up message that does not decode: {e}")),
            _ => Err("an empty or unknown start-up message".into()),
        }
    }

    fn cause(&self) -> FallbackCause {
        match self {
            Payload::Fabric(_) => FallbackCause::LinkInExchange,
            Payload::Msg(_) => FallbackCause::LinkInFence,
        }
    }
}

/// Whether `m` belongs to the first PMI or PMIx fence (the one that travels over the links).
pub fn first_fence(m: &Msg) -> bool {
    matches!(m, Msg::Fence { seq: 1, .. } | Msg::FenceDone { seq: 1, .. } | Msg::PmixFence { seq: 1, .. } | Msg::PmixFenceDone { seq: 1, .. })
}

/// What the owner must do.
#[derive(Debug, PartialEq, Eq)]
pub enum Out {
    /// Over TCP to tree neighbour `to` (a member).
    Tcp { to: u32, msg: Msg },
    /// To send over TCP as the ordinary message (the links are not used).
    Plain { to: u32, payload: Payload },
    /// Arrived from member `from`, in order, once.
    Deliver { from: u32, payload: Payload },
    /// The whole job's bring-up decision reached this member.
    Decided(Decision),
    /// This member moved to TCP because of member `origin`'s failure.
    Switched { origin: u32, why: String, cause: FallbackCause },
    /// Something that cannot be: the job fails with this line.
    Failed(String),
}

/// Faults injected by the test-only setting ([`crate::spec::SIM_RDMA_ENV`]), each with the
/// reason to give.
#[derive(Default)]
pub struct Faults {
    /// The bring-up fails.
    pub bring_up: Option<String>,
    /// The link breaks at this member's first send of that collective.
    pub link: Option<(FallbackCause, String)>,
}

pub struct StartupRdma {
    parent: Option<u32>,
    peers: Vec<u32>,
    children: Vec<u32>,
    link: Option<Link>,
    /// Why this member has no link, if so.
    own: Result<(), String>,
    remote: HashMap<u32, Vec<u8>>,
    bring_up_started: bool,
    carrier: Option<Carrier>,
    agreement: Agreement,
    relay: Relay,
    /// What the first failover's origin was doing.
    cause: Option<FallbackCause>,
    held: Vec<(u32, Payload)>,
    exchange_over: bool,
    /// This member takes part in the first fence (it or its subtree runs ranks).
    fence_needed: bool,
    fence_over: bool,
    fence_deadline: Option<Instant>,
    exchange_end: Option<Instant>,
    /// A local rank connected to PMI or PMIx.
    pmi_seen: bool,
    /// Children whose subtrees are done with their links.
    children_done: Vec<u32>,
    done_asked: bool,
    flushed: bool,
    reported_done: bool,
    released: bool,
    link_fault: Option<(FallbackCause, String)>,
    /// Set when a neighbour's bring-up failed: ours stops waiting for its connection.
    peer_gave_up: Arc<AtomicBool>,
    wake: Arc<dyn Fn() + Send + Sync>,
    started: Instant,
    decided_after: Option<Duration>,
}

impl StartupRdma {
    /// Member `me` starts with its kind of link, or why it has none (`kind`), and the test
    /// setting's `faults` if any. `fence_needed`: it takes part in the ranks' first fence. `wake`
    /// wakes the owner's event loop from the carrier thread.
    pub fn start(tree: Tree, me: u32, kind: Result<LinkKind, String>, fence_needed: bool, faults: Faults, wake: Arc<dyn Fn() + Send + Sync>) -> (StartupRdma, Vec<Out>) {
        let parent = tree.parent(me);
        let peers: Vec<u32> = parent.into_iter().chain(tree.children(me)).collect();
        let (link, own) = match faults.bring_up.map_or(kind, Err).and_then(|k| Link::open(k, me, &peers)) {
            Ok(l) => (Some(l), Ok(())),
            Err(why) => (None, Err(why)),
        };
        let mut s = StartupRdma {
            parent,
            peers: peers.clone(),
            children: tree.children(me).collect(),
            link,
            own,
            remote: HashMap::new(),
            bring_up_started: false,
            carrier: None,
            agreement: Agreement::new(tree, me),
            relay: Relay::new(me, peers),
            cause: None,
            held: Vec::new(),
            exchange_over: false,
            fence_needed,
            fence_over: false,
            fence_deadline: None,
            exchange_end: None,
            pmi_seen: false,
            children_done: Vec::new(),
            done_asked: false,
            flushed: false,
            reported_done: false,
            released: false,
            link_fault: faults.link,
            peer_gave_up: Arc::default(),
            wake,
            started: Instant::now(),
            decided_after: None,
        };
        let mut out: Vec<Out> = parent.map(|p| Out::Tcp { to: p, msg: Msg::Rdma(RdmaStep::Connect(s.connect_data(p))) }).into_iter().collect();
        // No link here: that is this member's part of the agreement, at once (its neighbours
        // still get its refusal as connection data, so nobody waits for it).
        if let Err(why) = s.own.clone() {
            out.extend(s.local(Err(why)));
        }
        out.extend(s.maybe_bring_up());
        (s, out)
    }

    fn connect_data(&self, peer: u32) -> Vec<u8> {
        match (&self.link, &self.own) {
            (Some(l), _) => l.connect_data(peer),
            (None, Err(why)) => SimEndpoint::refusal(why),
            (None, Ok(())) => SimEndpoint::refusal("no link"),
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

    /// The failover that moved this member to TCP: origin member, why, and what it was doing.
    pub fn failover(&self) -> Option<(u32, &str, FallbackCause)> {
        let (origin, why) = self.relay.failover()?;
        Some((origin, why, self.cause?))
    }

    /// Whether the links still carry start-up traffic (decided for RDMA, no failover, not
    /// released).
    pub fn on_links(&self) -> bool {
        self.decision() == Some(&Decision::Rdma) && self.relay.path() == RelayPath::Rdma
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
                    out.push(Out::Tcp { to: from, msg: Msg::Rdma(RdmaStep::Connect(self.connect_data(from))) });
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
            RdmaStep::Data { k, data } => {
                let d = self.relay.receive(from, k, data);
                let mut out = self.relayed(d.into_iter().collect());
                out.extend(self.maybe_done());
                out
            }
            RdmaStep::Fallback { origin, why, cause, got } => {
                if self.cause.is_none() && self.relay.path() == RelayPath::Rdma {
                    self.cause = Some(cause);
                }
                let outs = self.relay.on_fallback(from, origin, why, got);
                let mut out = self.relayed(outs);
                out.extend(self.maybe_done());
                out
            }
        }
    }

    fn maybe_bring_up(&mut self) -> Vec<Out> {
        if self.bring_up_started || self.decision().is_some() || self.peers.iter().any(|p| !self.remote.contains_key(p)) {
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
        let Some(link) = self.link.take() else { return self.local(Err("no link".into())) };
        let remote = std::mem::take(&mut self.remote);
        self.carrier = Some(link.bring_up(peers, remote, self.peer_gave_up.clone(), self.wake.clone()));
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
                    if matches!(d, Decision::Fallback { .. }) {
                        // Released at once: nobody will use it.
                        self.carrier = None;
                        self.relay.release();
                        self.released = true;
                    }
                    out.push(Out::Decided(d));
                    for (to, payload) in std::mem::take(&mut self.held) {
                        out.extend(self.send(to, payload));
                    }
                    out.extend(self.maybe_done());
                }
            }
        }
        out
    }

    /// A start-up collective's message for member `to`: held until the decision, then over the
    /// links, or over TCP after a failover or the release.
    pub fn send(&mut self, to: u32, payload: Payload) -> Vec<Out> {
        if self.agreement.decided().is_none() {
            self.held.push((to, payload));
            return Vec::new();
        }
        let cause = payload.cause();
        let outs = self.relay.send(to, payload.encode());
        let out = self.relayed(outs);
        // The injected fault: the link breaks right after this member's first send of that
        // collective went onto it.
        if self.link_fault.as_ref().is_some_and(|(c, _)| *c == cause) && self.on_links() {
            if let (Some(c), Some((_, why))) = (&self.carrier, self.link_fault.take()) {
                c.break_link(why);
            }
        }
        out
    }

    /// What the relay asked for, as outputs.
    fn relayed(&mut self, outs: Vec<RelayOut>) -> Vec<Out> {
        let mut out = Vec::new();
        for o in outs {
            match o {
                RelayOut::Rdma { to, k, data } => {
                    if let Some(c) = &self.carrier {
                        c.send(to, [&k.to_le_bytes()[..], &data].concat());
                    }
                }
                RelayOut::Oob { to, k, data } => out.push(Out::Tcp { to, msg: Msg::Rdma(RdmaStep::Data { k, data }) }),
                RelayOut::Plain { to, data } => out.push(Payload::decode(&data).map_or_else(Out::Failed, |payload| Out::Plain { to, payload })),
                RelayOut::Deliver { from, data } => out.push(Payload::decode(&data).map_or_else(Out::Failed, |payload| Out::Deliver { from, payload })),
                RelayOut::Fallback { to, origin, why, got } => {
                    let cause = self.cause.unwrap_or(FallbackCause::LinkInExchange);
                    out.push(Out::Tcp { to, msg: Msg::Rdma(RdmaStep::Fallback { origin, why, cause, got }) });
                }
                RelayOut::Switched { origin, why } => {
                    let cause = self.cause.unwrap_or(FallbackCause::LinkInExchange);
                    out.push(Out::Switched { origin, why, cause });
                }
            }
        }
        out
    }

    /// This member's own failure: the job moves to TCP.
    fn fail(&mut self, cause: FallbackCause, why: String) -> Vec<Out> {
        if self.relay.path() != RelayPath::Rdma || self.decision() != Some(&Decision::Rdma) {
            return Vec::new();
        }
        self.cause = Some(cause);
        let outs = self.relay.fail(why);
        let mut out = self.relayed(outs);
        out.extend(self.maybe_done());
        out
    }

    /// The carrier thread or the fence timer woke the loop.
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
                    let Some((k, data)) = bytes.split_first_chunk::<8>().map(|(k, d)| (u64::from_le_bytes(*k), d.to_vec())) else { continue };
                    let d = self.relay.receive(from, k, data);
                    out.extend(self.relayed(d.into_iter().collect()));
                    // One message at a time: the owner must see it (it may end this member's
                    // part) before a failure queued behind it is judged. The rest of the queue
                    // waits for the next wake.
                    (self.wake)();
                    break;
                }
                CarrierEvent::Flushed => {
                    self.flushed = true;
                    out.extend(self.maybe_report_done());
                }
                CarrierEvent::Failed(why) => {
                    // Once this member's part is over it needs the link no more (the release
                    // at the end breaks it anyway): no failover then.
                    if !self.done_asked {
                        let cause = if self.exchange_over { FallbackCause::LinkInFence } else { FallbackCause::LinkInExchange };
                        out.extend(self.fail(cause, format!("the RDMA link failed: {why}")));
                    }
                }
            }
        }
        if self.fence_deadline.is_some_and(|d| Instant::now() >= d) && !self.fence_over {
            self.fence_deadline = None;
            let why = match self.pmi_seen {
                true => format!("the ranks did not enter a PMI or PMIx fence within {} s of starting", FENCE_WAIT_PMI.as_secs()),
                false => format!("no rank connected to PMI or PMIx within {} s of starting", FENCE_WAIT.as_secs()),
            };
            out.extend(self.fail(FallbackCause::NoFence, why));
        }
        out
    }

    /// This member's part of the inventory exchange is over (its ranks may start).
    pub fn exchange_over(&mut self) -> Vec<Out> {
        if std::mem::replace(&mut self.exchange_over, true) {
            return Vec::new();
        }
        // Daemons only: the front end runs no ranks, and every node below it waits as well.
        if self.fence_needed && self.on_links() && self.parent.is_some() {
            self.exchange_end = Some(Instant::now());
            self.wait_fence(FENCE_WAIT);
        }
        self.maybe_done()
    }

    /// The fence deadline `wait` after the exchange's end, and a thread that wakes the loop then.
    fn wait_fence(&mut self, wait: Duration) {
        let Some(end) = self.exchange_end else { return };
        self.fence_deadline = Some(end + wait);
        let wake = self.wake.clone();
        let left = (end + wait).saturating_duration_since(Instant::now());
        let _ = std::thread::Builder::new().name("rdma-fence-wait".into()).spawn(move || {
            std::thread::sleep(left);
            wake();
        });
    }

    /// A local rank connected to PMI or PMIx: its first fence will come, give it longer.
    pub fn rank_uses_pmi(&mut self) {
        if self.fence_deadline.is_some() && !std::mem::replace(&mut self.pmi_seen, true) {
            self.wait_fence(FENCE_WAIT_PMI);
        }
    }

    /// The first fence is over here: its result reached this member and went on to its children.
    pub fn fence_over(&mut self) -> Vec<Out> {
        if std::mem::replace(&mut self.fence_over, true) {
            return Vec::new();
        }
        self.maybe_done()
    }

    /// Once this member needs its links no more, its carrier posts every send; then its
    /// subtree's `Done` goes up (see the module docs).
    fn maybe_done(&mut self) -> Vec<Out> {
        let over = self.exchange_over && (self.fence_over || !self.fence_needed || self.relay.failover().is_some());
        if self.done_asked || self.decision() != Some(&Decision::Rdma) || !over || !self.relay.settled() {
            return Vec::new();
        }
        self.done_asked = true;
        match &self.carrier {
            // After a failover nothing on the links is needed any more.
            Some(c) if self.relay.path() == RelayPath::Rdma => {
                c.flush();
                Vec::new()
            }
            _ => {
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
        self.released = true;
        self.relay.release();
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

    /// Whether the links were given back (or never used).
    pub fn released(&self) -> bool {
        self.released
    }

    /// The tree parent (a member), none at the root.
    pub fn parent(&self) -> Option<u32> {
        self.parent
    }
}

/// The front end's own link: its first usable RDMA port, or why it has none.
pub fn front_end_link() -> Result<LinkKind, String> {
    // Without a device there is nothing to probe (the common case): no dlopen, no sysfs walk.
    if std::fs::read_dir("/sys/class/infiniband").map_or(true, |mut d| d.next().is_none()) {
        return Err("no RDMA device".into());
    }
    let addrs = fabrics::discover::system_addrs().map_err(|e| e.to_string())?;
    let mut inv = fabrics::discover::Inventory::discover(std::path::Path::new("/sys"), &addrs).map_err(|e| e.to_string())?;
    inv.verbs = fabrics::verbs::probe().status;
    fabrics::startup::startup_port(&inv).map(LinkKind::Verbs)
}

/// The front end is the root of the start-up tree: when it has no link, RDMA cannot run for
/// the job, and no daemon needs to try (no bring-up, no agreement, nothing held): the launch
/// says so. The probe is a directory listing on machines without a device.
pub fn check_root_link(startup: &mut crate::spec::StartupTransport) {
    if *startup == crate::spec::StartupTransport::Rdma {
        if let Err(why) = front_end_link() {
            *startup = crate::spec::StartupTransport::NoRootLink(why);
        }
    }
}

/// How the report and `-v` name the transport of the links of `kind`.
pub fn rdma_name(simulated: bool) -> &'static str {
    if simulated {
        "rdma (simulated)"
    } else {
        "rdma"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// Per member: its decision, the messages it got (sender, payload), whether anything went
    /// over plain TCP or the links are still held, and the failover it saw.
    type Seen = (Option<Decision>, Vec<(u32, Payload)>, bool, Option<u32>);

    type Queue = VecDeque<(u32, u32, Msg)>;
    type Got = Vec<Vec<(u32, Payload)>>;

    struct World {
        ms: Vec<StartupRdma>,
        tcp: Queue,
        got: Got,
        plain: Vec<bool>,
    }

    impl World {
        fn handle(&mut self, i: u32, outs: Vec<Out>) {
            for o in outs {
                match o {
                    Out::Tcp { to, msg } => self.tcp.push_back((i, to, msg)),
                    Out::Plain { to, payload } => {
                        self.plain[i as usize] = true;
                        self.got[to as usize].push((i, payload));
                    }
                    Out::Deliver { from, payload } => self.got[i as usize].push((from, payload)),
                    Out::Decided(_) | Out::Switched { .. } => {}
                    Out::Failed(w) => panic!("member {i}: {w}"),
                }
            }
        }

        /// Every queued TCP message delivered, then every member woken.
        fn round(&mut self) {
            while let Some((from, to, msg)) = self.tcp.pop_front() {
                let Msg::Rdma(step) = msg else { panic!() };
                let outs = self.ms[to as usize].on_tcp(from, step);
                self.handle(to, outs);
            }
            for i in 0..self.ms.len() as u32 {
                let outs = self.ms[i as usize].on_wake();
                self.handle(i, outs);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// A whole tree of members over simulated links in one thread: TCP messages through a
    /// queue, waking by polling. Every member sends one exchange message to each neighbour
    /// (then its exchange is over), then one fence message to each neighbour (then its fence is
    /// over). `broken`: a member whose bring-up fails; `cut`: a member whose link breaks at its
    /// first send of that collective.
    fn run(size: u32, arity: u32, broken: Option<u32>, cut: Option<(u32, FallbackCause)>) -> Vec<Seen> {
        let tree = Tree::new(size, arity).unwrap();
        let mut w = World { ms: Vec::new(), tcp: VecDeque::new(), got: vec![Vec::new(); size as usize], plain: vec![false; size as usize] };
        for i in 0..size {
            let faults = Faults {
                bring_up: (broken == Some(i)).then(|| "injected".to_string()),
                link: cut.filter(|c| c.0 == i).map(|c| (c.1, "cut".to_string())),
            };
            let (m, outs) = StartupRdma::start(tree, i, Ok(LinkKind::Simulated(None)), true, faults, Arc::new(|| {}));
            w.ms.push(m);
            w.handle(i, outs);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while w.ms.iter().any(|m| m.decision().is_none()) && Instant::now() < deadline {
            w.round();
        }
        let nb = |i: u32| -> Vec<u32> { tree.parent(i).into_iter().chain(tree.children(i)).collect() };
        let fence = |i: u32, p: u32| Payload::Msg(Msg::Fence { seq: 1, puts: vec![(format!("{i}"), format!("{p}"))] });
        for i in 0..size {
            for p in nb(i) {
                let outs = w.ms[i as usize].send(p, Payload::Fabric(vec![i as u8, p as u8]));
                w.handle(i, outs);
            }
        }
        let want_n = |i: u32, n: usize| nb(i).len() * n;
        while (0..size).any(|i| w.got[i as usize].len() < want_n(i, 1)) && Instant::now() < deadline {
            w.round();
        }
        for i in 0..size {
            let outs = w.ms[i as usize].exchange_over();
            w.handle(i, outs);
            for p in nb(i) {
                let outs = w.ms[i as usize].send(p, fence(i, p));
                w.handle(i, outs);
            }
        }
        while (0..size).any(|i| w.got[i as usize].len() < want_n(i, 2)) && Instant::now() < deadline {
            w.round();
        }
        for i in 0..size {
            let outs = w.ms[i as usize].fence_over();
            w.handle(i, outs);
        }
        // Flushes, Done up the tree, Release down.
        while w.ms.iter().any(StartupRdma::holds_links) && Instant::now() < deadline {
            w.round();
        }
        (0..size as usize)
            .map(|i| {
                let mut g = w.got[i].clone();
                g.sort_by_key(|(from, p)| (*from, matches!(p, Payload::Msg(_))));
                let failover = w.ms[i].failover().map(|f| f.0);
                (w.ms[i].decision().cloned(), g, w.plain[i] || w.ms[i].holds_links(), failover)
            })
            .collect()
    }

    fn want(tree: Tree, i: u32) -> Vec<(u32, Payload)> {
        let mut want: Vec<(u32, Payload)> = Vec::new();
        for p in tree.parent(i).into_iter().chain(tree.children(i)) {
            want.push((p, Payload::Fabric(vec![p as u8, i as u8])));
            want.push((p, Payload::Msg(Msg::Fence { seq: 1, puts: vec![(format!("{p}"), format!("{i}"))] })));
        }
        want.sort_by_key(|(from, p)| (*from, matches!(p, Payload::Msg(_))));
        want
    }

    #[test]
    fn all_up_means_both_collectives_run_over_rdma_and_links_are_released() {
        let tree = Tree::new(6, 2).unwrap();
        for (i, (d, got, plain_or_held, failover)) in run(6, 2, None, None).into_iter().enumerate() {
            let i = i as u32;
            assert_eq!(d, Some(Decision::Rdma), "member {i}");
            assert_eq!(got, want(tree, i), "member {i}");
            assert!(!plain_or_held, "member {i}: nothing over plain TCP, and the links released");
            assert_eq!(failover, None);
        }
    }

    #[test]
    fn one_broken_member_sends_the_whole_job_to_tcp_naming_it() {
        let tree = Tree::new(6, 2).unwrap();
        for (i, (d, got, plain, _)) in run(6, 2, Some(4), None).into_iter().enumerate() {
            assert_eq!(d, Some(Decision::Fallback { member: 4, why: "injected".into() }), "member {i}");
            assert_eq!(got, want(tree, i as u32), "member {i}");
            assert!(plain, "member {i}: the collectives went over TCP");
        }
    }

    #[test]
    fn a_link_cut_mid_collective_finishes_it_over_tcp() {
        let tree = Tree::new(7, 2).unwrap();
        for cause in [FallbackCause::LinkInExchange, FallbackCause::LinkInFence] {
            for cut in [0, 1, 5] {
                for (i, (d, got, held, failover)) in run(7, 2, None, Some((cut, cause))).into_iter().enumerate() {
                    assert_eq!(d, Some(Decision::Rdma), "member {i}");
                    assert_eq!(got, want(tree, i as u32), "member {i}, cut {cut} {cause:?}: every message once");
                    assert!(!held, "member {i}: links released after the failover");
                    assert_eq!(failover, Some(cut), "member {i} heard of the failover");
                }
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn payload_decode_never_panics(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            if let Ok(p) = Payload::decode(&b) {
                proptest::prop_assert_eq!(Payload::decode(&p.encode()).unwrap(), p);
            }
        }
    }

    #[test]
    fn the_mode_follows_the_fabric_choice_and_the_test_setting() {
        use crate::spec::StartupTransport as T;
        use fabrics::endpoints::FabricChoice as C;
        let sim = |fail, broken, broken_fence| T::Simulated { fail, broken, broken_fence };
        assert_eq!(T::for_job(Some(C::Auto), None), Ok(T::Rdma));
        assert_eq!(T::for_job(Some(C::Rdma), None), Ok(T::Rdma));
        assert_eq!(T::for_job(Some(C::Tcp), None), Ok(T::Tcp), "--fabric tcp forces TCP");
        assert_eq!(T::for_job(Some(C::Tcp), Some("1")), Ok(T::Tcp), "also over the test setting");
        assert_eq!(T::for_job(None, Some("1")), Ok(T::Tcp), "--fabric off: no exchange at all");
        assert_eq!(T::for_job(Some(C::Auto), Some("1")), Ok(sim(None, None, None)));
        assert_eq!(T::for_job(Some(C::Auto), Some("fail:3")), Ok(sim(Some(3), None, None)));
        assert_eq!(T::for_job(Some(C::Auto), Some("break:2")), Ok(sim(None, Some(2), None)));
        assert_eq!(T::for_job(Some(C::Auto), Some("break-fence:0")), Ok(sim(None, None, Some(0))));
        assert!(T::for_job(Some(C::Auto), Some("break:x")).is_err());
        // This machine has no RDMA device: the launch says so, and nobody tries.
        if std::fs::read_dir("/sys/class/infiniband").map_or(true, |mut d| d.next().is_none()) {
            let mut t = T::Rdma;
            check_root_link(&mut t);
            assert_eq!(t, T::NoRootLink("no RDMA device".into()));
            assert!(!t.tries());
        }
        let mut t = sim(None, None, None);
        check_root_link(&mut t);
        assert!(t.tries(), "the simulated link needs no device");
    }

    #[test]
    fn payloads_round_trip() {
        for p in [Payload::Fabric(vec![1, 2]), Payload::Msg(Msg::PmixFenceDone { seq: 1, puts: vec![("a".into(), "b".into())] })] {
            assert_eq!(Payload::decode(&p.encode()).unwrap(), p);
        }
        assert!(Payload::decode(&[]).is_err());
        assert!(Payload::decode(&[7]).is_err());
        assert!(first_fence(&Msg::FenceDone { seq: 1, puts: Vec::new() }));
        assert!(!first_fence(&Msg::Fence { seq: 2, puts: Vec::new() }));
    }
}
