//! Message transport over RDMA send/receive, with credit-based flow control.
//!
//! The verbs specifics (queue pairs, registered slots, completion queue) sit behind [`RdmaLink`], so
//! the protocol here is tested with [`MockFabric`], an in-memory link that is as strict as hardware
//! about flow control: a send with no receive posted at the peer fails (an RNR error), it does not
//! wait. [`crate::verbs_link::VerbsLink`] is the verbs-backed link (never run on hardware).
//!
//! Protocol, per pair of peers: each side posts `recv_depth` (= D + 1) receive slots of `slot_size`
//! bytes for the other. D of them are data credits (one credit = one slot free at the peer); the
//! extra slot is for a credit-only chunk, of which at most one per direction is unacknowledged.
//! A message is cut into chunks of `slot_size - 12` bytes, each with a 12-byte header:
//!
//! ```text
//! flags u8 (FIRST=1, LAST=2, CREDIT=4) | reserved u8 | credits u16 LE | ctrl_seen u32 LE | total u32 LE
//! ```
//!
//! `credits` returns data slots the sender has reposted since its last chunk; `ctrl_seen` counts the
//! credit-only chunks it has received from us so far, which acknowledges our control slot. A
//! credit-only chunk (flag CREDIT, no payload) is sent when we owe credits and our previous one is
//! acknowledged. It always returns at least one credit, so two peers that fill each other's slots at
//! once still make progress; and it creates no debt itself, so two idle peers never ping-pong.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::transport::{Transport, TransportError};

pub const CHUNK_HEADER: usize = 12;
const FIRST: u8 = 1;
const LAST: u8 = 2;
const CREDIT: u8 = 4;
/// Largest message accepted from a peer; as for TCP frames, a guard against a corrupt length.
pub const MAX_MESSAGE: usize = 64 << 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Completion {
    /// A receive slot filled with `len` bytes from `peer`.
    Recv { peer: u32, slot: u32, len: usize },
    /// A send buffer is free again.
    Sent { peer: u32 },
    /// A work request failed (e.g. RNR retry exceeded, remote access error).
    Failed { peer: u32, why: String },
}

/// What a verbs connection set (one RC queue pair per peer, registered slots, one CQ) provides.
pub trait RdmaLink {
    /// Bytes per receive slot and per send buffer.
    fn slot_size(&self) -> usize;
    /// Receive slots posted per peer at setup; both ends of a pair use the same depth.
    fn recv_depth(&self) -> u32;
    /// Peers this link has queue pairs to.
    fn peers(&self) -> Vec<u32>;
    /// Send buffers currently free; `post_send` needs one.
    fn send_capacity(&self) -> usize;
    /// Sends `data` (at most `slot_size` bytes) to `peer`.
    fn post_send(&mut self, peer: u32, data: &[u8]) -> Result<(), TransportError>;
    /// Copies out the contents of a completed receive.
    fn read_slot(&self, peer: u32, slot: u32, len: usize) -> Vec<u8>;
    /// Gives a receive slot back to the hardware.
    fn repost_recv(&mut self, peer: u32, slot: u32) -> Result<(), TransportError>;
    /// Completions, waiting up to `timeout` for the first one.
    fn poll(&mut self, timeout: Duration) -> Result<Vec<Completion>, TransportError>;
}

#[derive(Default)]
struct PeerState {
    /// Data slots free at the peer for us.
    credits: u32,
    /// Data slots of the peer's chunks we reposted and have not announced yet.
    owed: u32,
    /// Credit-only chunks we sent, and how many of them the peer has acknowledged (wrapping).
    ctrl_sent: u32,
    ctrl_acked: u32,
    /// Credit-only chunks received from the peer (wrapping).
    ctrl_seen: u32,
    partial: Option<(usize, Vec<u8>)>,
}

impl PeerState {
    fn may_send_control(&self) -> bool {
        self.ctrl_sent == self.ctrl_acked
    }
}

pub struct RdmaTransport<L: RdmaLink> {
    link: L,
    peers: HashMap<u32, PeerState>,
    ready: VecDeque<(u32, Vec<u8>)>,
    timeout: Duration,
}

impl<L: RdmaLink> RdmaTransport<L> {
    /// `timeout` bounds every wait for a message or for credits.
    pub fn new(link: L, timeout: Duration) -> Result<Self, TransportError> {
        let depth = link.recv_depth();
        if depth < 2 || link.slot_size() <= CHUNK_HEADER {
            return Err(TransportError::Rdma {
                peer: 0,
                why: format!("link has depth {depth} and slot size {}; need depth >= 2 and slots over {CHUNK_HEADER} bytes", link.slot_size()),
            });
        }
        let peers = link
            .peers()
            .into_iter()
            .map(|p| {
                (
                    p,
                    PeerState {
                        credits: depth - 1,
                        ..Default::default()
                    },
                )
            })
            .collect();
        Ok(RdmaTransport {
            link,
            peers,
            ready: VecDeque::new(),
            timeout,
        })
    }

    pub fn link(&self) -> &L {
        &self.link
    }

    fn post(
        &mut self,
        peer: u32,
        flags: u8,
        total: usize,
        payload: &[u8],
        deadline: Instant,
    ) -> Result<(), TransportError> {
        while self.link.send_capacity() == 0 {
            self.progress(deadline)?;
        }
        let st = self
            .peers
            .get_mut(&peer)
            .ok_or(TransportError::NoLink { peer })?;
        let ret = st.owed.min(u32::from(u16::MAX));
        let mut chunk = Vec::with_capacity(CHUNK_HEADER + payload.len());
        chunk.push(flags);
        chunk.push(0);
        chunk.extend_from_slice(&(ret as u16).to_le_bytes());
        chunk.extend_from_slice(&st.ctrl_seen.to_le_bytes());
        chunk.extend_from_slice(&(total as u32).to_le_bytes());
        chunk.extend_from_slice(payload);
        self.link.post_send(peer, &chunk)?;
        st.owed -= ret;
        if flags & CREDIT != 0 {
            st.ctrl_sent = st.ctrl_sent.wrapping_add(1);
        } else {
            st.credits -= 1;
        }
        Ok(())
    }

    fn post_control(&mut self, peer: u32, deadline: Instant) -> Result<(), TransportError> {
        while self.link.send_capacity() == 0 {
            self.progress(deadline)?;
        }
        // `progress` may have sent this peer's credits meanwhile.
        if self
            .peers
            .get(&peer)
            .is_some_and(|s| s.owed >= 1 && s.may_send_control())
        {
            self.post(peer, CREDIT, 0, &[], deadline)?;
        }
        Ok(())
    }

    /// Sends credit-only chunks to peers owed at least `threshold` data slots.
    fn flush_credits(&mut self, threshold: u32, deadline: Instant) -> Result<(), TransportError> {
        let owed: Vec<u32> = self
            .peers
            .iter()
            .filter(|(_, s)| s.owed >= threshold.max(1) && s.may_send_control())
            .map(|(p, _)| *p)
            .collect();
        for p in owed {
            // Waiting for a send buffer inside `post` runs `progress`, which may have flushed this
            // peer already: check again.
            let due = |s: &PeerState| s.owed >= threshold.max(1) && s.may_send_control();
            if self.peers.get(&p).is_some_and(due) {
                self.post_control(p, deadline)?;
            }
        }
        Ok(())
    }

    /// Handles completions arriving before `deadline`.
    fn progress(&mut self, deadline: Instant) -> Result<(), TransportError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(TransportError::Timeout(self.timeout));
        }
        for c in self.link.poll(left.min(Duration::from_millis(50)))? {
            match c {
                Completion::Sent { .. } => {}
                Completion::Failed { peer, why } => return Err(TransportError::Rdma { peer, why }),
                Completion::Recv { peer, slot, len } => {
                    let bytes = self.link.read_slot(peer, slot, len);
                    self.link.repost_recv(peer, slot)?;
                    self.on_chunk(peer, &bytes)?;
                }
            }
        }
        let depth = self.link.recv_depth();
        self.flush_credits(depth / 2, deadline)
    }

    fn on_chunk(&mut self, peer: u32, b: &[u8]) -> Result<(), TransportError> {
        let bad = |why: String| TransportError::Rdma { peer, why };
        let depth = self.link.recv_depth();
        let st = self
            .peers
            .get_mut(&peer)
            .ok_or(TransportError::NoLink { peer })?;
        if b.len() < CHUNK_HEADER {
            return Err(bad(format!(
                "{}-byte chunk, shorter than its header",
                b.len()
            )));
        }
        let flags = b[0];
        let ret = u16::from_le_bytes([b[2], b[3]]);
        let ctrl_seen = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        let total = u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize;
        st.credits += u32::from(ret);
        if st.credits > depth - 1 {
            return Err(bad(format!(
                "returned credits exceed the {} data slots we own at the peer",
                depth - 1
            )));
        }
        if ctrl_seen.wrapping_sub(st.ctrl_acked) > st.ctrl_sent.wrapping_sub(st.ctrl_acked) {
            return Err(bad("acknowledges credit-only chunks we never sent".into()));
        }
        st.ctrl_acked = ctrl_seen;
        if flags & CREDIT != 0 {
            st.ctrl_seen = st.ctrl_seen.wrapping_add(1);
            return Ok(());
        }
        st.owed += 1;
        let payload = &b[CHUNK_HEADER..];
        if flags & FIRST != 0 {
            if st.partial.is_some() {
                return Err(bad(
                    "a new message started before the previous one ended".into()
                ));
            }
            if total > MAX_MESSAGE {
                return Err(bad(format!(
                    "{total}-byte message, over the {MAX_MESSAGE}-byte limit"
                )));
            }
            st.partial = Some((total, Vec::with_capacity(total)));
        }
        let Some((total, buf)) = st.partial.as_mut() else {
            return Err(bad(
                "a continuation chunk arrived with no message started".into()
            ));
        };
        buf.extend_from_slice(payload);
        if buf.len() > *total {
            return Err(bad(format!(
                "message longer than its announced {total} bytes"
            )));
        }
        if flags & LAST != 0 {
            let (total, buf) = st.partial.take().unwrap_or_default();
            if buf.len() != total {
                return Err(bad(format!(
                    "message ended at {} of its announced {total} bytes",
                    buf.len()
                )));
            }
            self.ready.push_back((peer, buf));
        }
        Ok(())
    }
}

impl<L: RdmaLink> RdmaTransport<L> {
    /// The next whole message if one arrives within `wait` (`None` if not): for owners that poll
    /// while doing other work, where [`Transport::recv`] would block.
    pub fn recv_within(&mut self, wait: Duration) -> Result<Option<(u32, Vec<u8>)>, TransportError> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(m) = self.ready.pop_front() {
                return Ok(Some(m));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            self.flush_credits(1, Instant::now() + self.timeout)?;
            match self.progress(deadline) {
                // Only this short wait is over, not the transport's patience.
                Err(TransportError::Timeout(_)) => return Ok(self.ready.pop_front()),
                r => r?,
            }
        }
    }
}

impl<L: RdmaLink> Transport for RdmaTransport<L> {
    fn send(&mut self, peer: u32, bytes: &[u8]) -> Result<(), TransportError> {
        if !self.peers.contains_key(&peer) {
            return Err(TransportError::NoLink { peer });
        }
        if bytes.len() > MAX_MESSAGE {
            return Err(TransportError::Rdma {
                peer,
                why: format!(
                    "{}-byte message over the {MAX_MESSAGE}-byte limit",
                    bytes.len()
                ),
            });
        }
        let deadline = Instant::now() + self.timeout;
        let per_chunk = self.link.slot_size() - CHUNK_HEADER;
        let n = bytes.len().div_ceil(per_chunk).max(1);
        for i in 0..n {
            let payload =
                &bytes[(i * per_chunk).min(bytes.len())..((i + 1) * per_chunk).min(bytes.len())];
            // While waiting, return what we owe: the peer may be waiting for credits from us too.
            while self.peers.get(&peer).map_or(0, |s| s.credits) == 0 {
                self.flush_credits(1, deadline)?;
                self.progress(deadline)?;
            }
            let flags = if i == 0 { FIRST } else { 0 } | if i + 1 == n { LAST } else { 0 };
            self.post(peer, flags, bytes.len(), payload, deadline)?;
        }
        Ok(())
    }

    fn recv(&mut self) -> Result<(u32, Vec<u8>), TransportError> {
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Some(m) = self.ready.pop_front() {
                return Ok(m);
            }
            // About to wait: return every slot we owe so no peer stalls on us.
            self.flush_credits(1, deadline)?;
            self.progress(deadline)?;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// In-memory link.

#[derive(Default)]
struct FabricState {
    /// (receiver, sender) -> receive slots posted and empty.
    posted: HashMap<(u32, u32), VecDeque<u32>>,
    /// (receiver, sender, slot) -> contents.
    slots: HashMap<(u32, u32, u32), Vec<u8>>,
    cq: HashMap<u32, VecDeque<Completion>>,
    /// Sends that found no receive posted: a flow-control bug in the sender.
    rnr: u64,
    sends: u64,
}

/// Every member connected to every other, in memory, for tests of [`RdmaTransport`].
#[derive(Clone)]
pub struct MockFabric {
    inner: Arc<(Mutex<FabricState>, Condvar)>,
    size: u32,
    slot_size: usize,
    depth: u32,
    send_bufs: usize,
}

impl MockFabric {
    pub fn new(size: u32, slot_size: usize, depth: u32, send_bufs: usize) -> MockFabric {
        let mut st = FabricState::default();
        for r in 0..size {
            for s in (0..size).filter(|s| *s != r) {
                st.posted.insert((r, s), (0..depth).collect());
            }
            st.cq.insert(r, VecDeque::new());
        }
        MockFabric {
            inner: Arc::new((Mutex::new(st), Condvar::new())),
            size,
            slot_size,
            depth,
            send_bufs,
        }
    }

    pub fn link(&self, me: u32) -> MockLink {
        MockLink {
            me,
            fabric: self.clone(),
            in_flight: 0,
        }
    }

    /// Sends that hit a peer with no receive posted.
    pub fn rnr_errors(&self) -> u64 {
        self.lock().rnr
    }

    pub fn sends(&self) -> u64 {
        self.lock().sends
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FabricState> {
        // A test thread that panicked while holding the lock leaves consistent data behind.
        self.inner.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct MockLink {
    me: u32,
    fabric: MockFabric,
    in_flight: usize,
}

impl RdmaLink for MockLink {
    fn slot_size(&self) -> usize {
        self.fabric.slot_size
    }

    fn recv_depth(&self) -> u32 {
        self.fabric.depth
    }

    fn peers(&self) -> Vec<u32> {
        (0..self.fabric.size).filter(|p| *p != self.me).collect()
    }

    fn send_capacity(&self) -> usize {
        self.fabric.send_bufs - self.in_flight
    }

    fn post_send(&mut self, peer: u32, data: &[u8]) -> Result<(), TransportError> {
        let err = |why: &str| {
            Err(TransportError::Rdma {
                peer,
                why: why.into(),
            })
        };
        if data.len() > self.fabric.slot_size {
            return err("local length error: send larger than the peer's receive slot");
        }
        if self.in_flight >= self.fabric.send_bufs {
            return err("no free send buffer");
        }
        let mut st = self.fabric.lock();
        st.sends += 1;
        let Some(slot) = st
            .posted
            .get_mut(&(peer, self.me))
            .and_then(|q| q.pop_front())
        else {
            st.rnr += 1;
            return err("receiver not ready: no receive posted at the peer (RNR)");
        };
        st.slots.insert((peer, self.me, slot), data.to_vec());
        st.cq.entry(peer).or_default().push_back(Completion::Recv {
            peer: self.me,
            slot,
            len: data.len(),
        });
        st.cq
            .entry(self.me)
            .or_default()
            .push_back(Completion::Sent { peer });
        self.in_flight += 1;
        self.fabric.inner.1.notify_all();
        Ok(())
    }

    fn read_slot(&self, peer: u32, slot: u32, len: usize) -> Vec<u8> {
        let st = self.fabric.lock();
        st.slots
            .get(&(self.me, peer, slot))
            .map(|d| d[..len.min(d.len())].to_vec())
            .unwrap_or_default()
    }

    fn repost_recv(&mut self, peer: u32, slot: u32) -> Result<(), TransportError> {
        let mut st = self.fabric.lock();
        st.slots.remove(&(self.me, peer, slot));
        st.posted
            .entry((self.me, peer))
            .or_default()
            .push_back(slot);
        Ok(())
    }

    fn poll(&mut self, timeout: Duration) -> Result<Vec<Completion>, TransportError> {
        let deadline = Instant::now() + timeout;
        let mut st = self.fabric.lock();
        loop {
            let q = st.cq.entry(self.me).or_default();
            if !q.is_empty() {
                let out: Vec<Completion> = q.drain(..).collect();
                self.in_flight -= out
                    .iter()
                    .filter(|c| matches!(c, Completion::Sent { .. }))
                    .count();
                return Ok(out);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(Vec::new());
            }
            st = self
                .fabric
                .inner
                .1
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collective::{Collective, Kind, Tree};
    use crate::transport::run_collective;

    const T: Duration = Duration::from_secs(20);

    #[test]
    fn mock_is_strict_about_flow_control() {
        let f = MockFabric::new(2, 32, 2, 8);
        let mut a = f.link(0);
        a.post_send(1, b"one").unwrap();
        a.post_send(1, b"two").unwrap();
        assert!(
            a.post_send(1, b"three").is_err(),
            "only two receives posted"
        );
        assert_eq!(f.rnr_errors(), 1);
        assert!(a.post_send(1, &[0; 33]).is_err());
    }

    #[test]
    fn fragments_and_reassembles_beyond_the_receive_depth() {
        let f = MockFabric::new(2, 24, 3, 2);
        let msgs: Vec<Vec<u8>> = (0..40).map(|i| (0..(i * 7) as u8).collect()).collect();
        let m2 = msgs.clone();
        let mut a = RdmaTransport::new(f.link(0), T).unwrap();
        let mut b = RdmaTransport::new(f.link(1), T).unwrap();
        let sender = std::thread::spawn(move || {
            for m in &m2 {
                a.send(1, m).unwrap();
            }
            // Stay alive to answer credits until the receiver has everything.
            let (from, done) = a.recv().unwrap();
            assert_eq!((from, done.as_slice()), (1, &b"done"[..]));
        });
        for m in &msgs {
            assert_eq!(b.recv().unwrap(), (0, m.clone()));
        }
        b.send(0, b"done").unwrap();
        sender.join().unwrap();
        assert_eq!(f.rnr_errors(), 0);
    }

    #[test]
    fn both_sides_flooding_each_other_do_not_deadlock() {
        let f = MockFabric::new(2, 16, 2, 1);
        let hs: Vec<_> = (0..2u32)
            .map(|me| {
                let link = f.link(me);
                std::thread::spawn(move || {
                    let mut t = RdmaTransport::new(link, T).unwrap();
                    let peer = 1 - me;
                    for i in 0..30u32 {
                        t.send(
                            peer,
                            &[me as u8; 20]
                                .iter()
                                .chain(&i.to_le_bytes())
                                .copied()
                                .collect::<Vec<_>>(),
                        )
                        .unwrap();
                    }
                    for i in 0..30u32 {
                        let (from, m) = t.recv().unwrap();
                        assert_eq!(from, peer);
                        assert_eq!(&m[20..], &i.to_le_bytes());
                    }
                    // A last exchange so neither side leaves while the other still needs credits.
                    t.send(peer, b"bye").unwrap();
                    assert_eq!(t.recv().unwrap().1, b"bye");
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(f.rnr_errors(), 0);
    }

    #[test]
    fn allgather_over_rdma_mock() {
        for (size, arity) in [(1u32, 2u32), (2, 2), (9, 2), (16, 4), (12, 32), (40, 64)] {
            let f = MockFabric::new(size, 40, 2, 2);
            let tree = Tree::new(size, arity).unwrap();
            let hs: Vec<_> = (0..size)
                .map(|i| {
                    let link = f.link(i);
                    std::thread::spawn(move || {
                        let mut t = RdmaTransport::new(link, T).unwrap();
                        let mut c = Collective::new(tree, i, Kind::Allgather, 3).unwrap();
                        run_collective(&mut t, &mut c, vec![i as u8; 50 + i as usize]).unwrap()
                    })
                })
                .collect();
            let want: Vec<Vec<u8>> = (0..size).map(|i| vec![i as u8; 50 + i as usize]).collect();
            for h in hs {
                assert_eq!(h.join().unwrap(), want, "P={size} k={arity}");
            }
            assert_eq!(f.rnr_errors(), 0);
        }
    }

    /// A link that replays scripted chunks, for protocol violations a correct peer never sends.
    struct Scripted {
        chunks: VecDeque<Vec<u8>>,
        last: Vec<u8>,
    }

    impl RdmaLink for Scripted {
        fn slot_size(&self) -> usize {
            64
        }
        fn recv_depth(&self) -> u32 {
            4
        }
        fn peers(&self) -> Vec<u32> {
            vec![1]
        }
        fn send_capacity(&self) -> usize {
            1
        }
        fn post_send(&mut self, _: u32, _: &[u8]) -> Result<(), TransportError> {
            Ok(())
        }
        fn read_slot(&self, _: u32, _: u32, _: usize) -> Vec<u8> {
            self.last.clone()
        }
        fn repost_recv(&mut self, _: u32, _: u32) -> Result<(), TransportError> {
            Ok(())
        }
        fn poll(&mut self, _: Duration) -> Result<Vec<Completion>, TransportError> {
            match self.chunks.pop_front() {
                Some(c) => {
                    let len = c.len();
                    self.last = c;
                    Ok(vec![Completion::Recv {
                        peer: 1,
                        slot: 0,
                        len,
                    }])
                }
                None => Ok(vec![]),
            }
        }
    }

    fn chunk(flags: u8, credits: u16, total: u32, payload: &[u8]) -> Vec<u8> {
        let mut c = vec![flags, 0];
        c.extend_from_slice(&credits.to_le_bytes());
        c.extend_from_slice(&0u32.to_le_bytes());
        c.extend_from_slice(&total.to_le_bytes());
        c.extend_from_slice(payload);
        c
    }

    fn recv_script(chunks: Vec<Vec<u8>>) -> Result<(u32, Vec<u8>), TransportError> {
        let link = Scripted {
            chunks: chunks.into(),
            last: Vec::new(),
        };
        RdmaTransport::new(link, Duration::from_millis(200))
            .unwrap()
            .recv()
    }

    #[test]
    fn protocol_violations_are_errors() {
        assert_eq!(
            recv_script(vec![chunk(FIRST, 0, 3, b"ab"), chunk(LAST, 0, 3, b"c")]).unwrap(),
            (1, b"abc".to_vec())
        );
        let why = |r: Result<_, TransportError>| r.unwrap_err().to_string();
        assert!(why(recv_script(vec![chunk(LAST, 0, 3, b"abc")])).contains("no message started"));
        assert!(why(recv_script(vec![
            chunk(FIRST, 0, 3, b"ab"),
            chunk(FIRST, 0, 3, b"c")
        ]))
        .contains("before the previous one ended"));
        assert!(why(recv_script(vec![chunk(FIRST | LAST, 0, 2, b"abc")]))
            .contains("longer than its announced 2"));
        assert!(why(recv_script(vec![chunk(FIRST | LAST, 0, 4, b"abc")]))
            .contains("ended at 3 of its announced 4"));
        assert!(why(recv_script(vec![chunk(FIRST | LAST, 1, 1, b"a")]))
            .contains("exceed the 3 data slots"));
        let mut ack = chunk(FIRST | LAST, 0, 1, b"a");
        ack[4] = 1;
        assert!(why(recv_script(vec![ack])).contains("never sent"));
        assert!(why(recv_script(vec![vec![1, 2, 3]])).contains("shorter than its header"));
        assert!(why(recv_script(vec![chunk(FIRST, 0, u32::MAX, b"")])).contains("limit"));
        assert!(matches!(
            recv_script(vec![]),
            Err(TransportError::Timeout(_))
        ));
    }

    #[test]
    fn idle_peers_do_not_ping_pong_credits() {
        let f = MockFabric::new(2, 64, 2, 4);
        let short = Duration::from_millis(100);
        let mut a = RdmaTransport::new(f.link(0), short).unwrap();
        let mut b = RdmaTransport::new(f.link(1), short).unwrap();
        a.send(1, b"hello").unwrap();
        assert_eq!(b.recv().unwrap(), (0, b"hello".to_vec()));
        for _ in 0..3 {
            assert!(matches!(a.recv(), Err(TransportError::Timeout(_))));
            assert!(matches!(b.recv(), Err(TransportError::Timeout(_))));
        }
        assert_eq!(
            f.sends(),
            2,
            "one data chunk and one credit return, nothing after"
        );
        // The returned credit lets a send go out again at once.
        a.send(1, b"again").unwrap();
        assert_eq!(b.recv().unwrap(), (0, b"again".to_vec()));
    }

    #[test]
    fn bad_link_parameters_are_refused() {
        let f = MockFabric::new(2, 12, 2, 1);
        assert!(RdmaTransport::new(f.link(0), T).is_err());
        let f = MockFabric::new(2, 64, 1, 1);
        assert!(RdmaTransport::new(f.link(0), T).is_err());
    }
}
