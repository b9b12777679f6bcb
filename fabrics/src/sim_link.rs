//! [`SimLink`]: a simulated [`RdmaLink`] between processes, over Unix stream sockets on one host
//! and TCP between hosts (an endpoint opened with an address listens on both; a peer tries the
//! Unix socket first, then TCP).
//!
//! There is no RDMA device on the machines rlaunch is developed on, and [`crate::rdma::MockFabric`]
//! lives in one address space. `SimLink` lets separate processes (rlaunch's daemons in tests) run
//! [`crate::rdma::RdmaTransport`] against each other with the semantics of reliable-connected
//! send/receive that the protocol depends on:
//!
//! - **RNR**: the receive slots live at the receiver. A send that arrives when the receiver has no
//!   receive posted for this sender is refused (a NAK goes back) and completes at the sender as
//!   [`Completion::Failed`]; the pair's "queue pair" is then in the error state and every later send
//!   on it fails, as on hardware after the RNR retries run out.
//! - **Completions in order**: one socket per peer carries its sends in order; receives complete in
//!   arrival order, and a send completes ([`Completion::Sent`]) when the receiver acknowledged it.
//! - **Limited slots and buffers**: `depth` receive slots of `slot_size` bytes per peer, and
//!   `send_bufs` send buffers shared by all peers that stay in use until the acknowledgement.
//!
//! Like an HCA, a per-peer reader thread accepts or refuses arriving sends without the owner
//! polling; the owner sees the results through [`RdmaLink::poll`].
//!
//! Frames on a socket are `kind u8 | len u32 LE | bytes`. Bring-up: both ends send a hello with
//! their member index, slot size and depth, and refuse a peer whose parameters differ (a real
//! queue pair would fail later with length errors). [`SimLink::establish`] exchanges the connection
//! data (an abstract Unix socket name per member) over any [`Transport`], as
//! [`crate::verbs_link::VerbsLink::establish`] exchanges queue-pair numbers.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::net::{IpAddr, TcpListener, TcpStream};
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::rdma::{Completion, RdmaLink};
use crate::transport::{Transport, TransportError};

const HELLO: u8 = 0;
const DATA: u8 = 1;
const ACK: u8 = 2;
const NAK: u8 = 3;
const MAGIC: &[u8; 4] = b"RLSM";
const HELLO_LEN: usize = 4 + 4 + 4 + 4;
const CONNECT_MAGIC: &[u8; 4] = b"RLSC";
const REFUSE_MAGIC: &[u8; 4] = b"RLSR";

/// What every member of one link set must agree on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimConfig {
    pub slot_size: usize,
    /// Receive slots posted per peer.
    pub depth: u32,
    /// Send buffers shared by all peers.
    pub send_bufs: usize,
    /// Bounds the bring-up (hello, accepting peers).
    pub connect_timeout: Duration,
}

impl Default for SimConfig {
    /// The same shape as [`crate::verbs_link::VerbsLinkConfig`]'s defaults would give a tree link.
    fn default() -> Self {
        SimConfig { slot_size: 4096, depth: 8, send_bufs: 16, connect_timeout: Duration::from_secs(10) }
    }
}

/// Counters of one link, for tests and reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Sends posted by this member.
    pub sends: u64,
    /// Sends from peers refused here because no receive was posted.
    pub rnr_refused: u64,
}

#[derive(Default)]
struct Shared {
    /// peer -> our receive slots posted for it, in the order they will be filled.
    posted: HashMap<u32, VecDeque<u32>>,
    /// (peer, slot) -> contents of a completed receive.
    slots: HashMap<(u32, u32), Vec<u8>>,
    cq: VecDeque<Completion>,
    /// peer -> our sends to it not yet acknowledged.
    unacked: HashMap<u32, u32>,
    /// peer -> why its queue pair is in the error state.
    broken: HashMap<u32, String>,
    stats: SimStats,
}

type Sync = Arc<(Mutex<Shared>, Condvar)>;

fn lock(s: &Sync) -> MutexGuard<'_, Shared> {
    // A reader thread cannot panic while holding the lock; a poisoned lock still has consistent data.
    s.0.lock().unwrap_or_else(|e| e.into_inner())
}

fn rdma_err(peer: u32, why: impl Into<String>) -> TransportError {
    TransportError::Rdma { peer, why: why.into() }
}

/// One peer connection of a link: a Unix socket (same host) or TCP (another host).
#[derive(Debug)]
pub enum SimStream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl From<UnixStream> for SimStream {
    fn from(s: UnixStream) -> SimStream {
        SimStream::Unix(s)
    }
}

impl SimStream {
    fn try_clone(&self) -> io::Result<SimStream> {
        Ok(match self {
            SimStream::Unix(s) => SimStream::Unix(s.try_clone()?),
            SimStream::Tcp(s) => SimStream::Tcp(s.try_clone()?),
        })
    }

    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            SimStream::Unix(s) => s.set_read_timeout(t),
            SimStream::Tcp(s) => s.set_read_timeout(t),
        }
    }

    fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            SimStream::Unix(s) => s.set_nonblocking(on),
            SimStream::Tcp(s) => s.set_nonblocking(on),
        }
    }

    fn shutdown(&self) -> io::Result<()> {
        match self {
            SimStream::Unix(s) => s.shutdown(std::net::Shutdown::Both),
            SimStream::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
        }
    }
}

impl Read for SimStream {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        match self {
            SimStream::Unix(s) => s.read(b),
            SimStream::Tcp(s) => s.read(b),
        }
    }
}

impl Write for SimStream {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            SimStream::Unix(s) => s.write(b),
            SimStream::Tcp(s) => s.write(b),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            SimStream::Unix(s) => s.flush(),
            SimStream::Tcp(s) => s.flush(),
        }
    }
}

fn write_frame(s: &mut SimStream, kind: u8, bytes: &[u8]) -> io::Result<()> {
    let mut f = Vec::with_capacity(5 + bytes.len());
    f.push(kind);
    f.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    f.extend_from_slice(bytes);
    // One write per frame under the peer's writer lock: ACKs from the reader thread and DATA from
    // the owner never interleave.
    s.write_all(&f)
}

fn read_frame(s: &mut SimStream, max: usize) -> io::Result<(u8, Vec<u8>)> {
    let mut h = [0u8; 5];
    s.read_exact(&mut h)?;
    let len = u32::from_le_bytes([h[1], h[2], h[3], h[4]]) as usize;
    if len > max {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{len}-byte frame over the {max}-byte slot")));
    }
    let mut b = vec![0; len];
    s.read_exact(&mut b)?;
    Ok((h[0], b))
}

pub struct SimLink {
    me: u32,
    cfg: SimConfig,
    in_flight: usize,
    writers: HashMap<u32, Arc<Mutex<SimStream>>>,
    shared: Sync,
    readers: Vec<JoinHandle<()>>,
}

impl SimLink {
    /// Member `me`'s link over connected `streams`, one per peer, in any order: each end's hello
    /// says which peer it is. The peers found must be exactly `peers`.
    pub fn from_streams(
        me: u32,
        cfg: SimConfig,
        peers: &[u32],
        streams: Vec<SimStream>,
    ) -> Result<SimLink, TransportError> {
        let mut hello = Vec::with_capacity(HELLO_LEN);
        hello.extend_from_slice(MAGIC);
        hello.extend_from_slice(&me.to_le_bytes());
        hello.extend_from_slice(&(cfg.slot_size as u32).to_le_bytes());
        hello.extend_from_slice(&cfg.depth.to_le_bytes());
        let mut by_peer = HashMap::new();
        for mut s in streams {
            let io = |e: io::Error| rdma_err(me, format!("bring-up: {e}"));
            s.set_read_timeout(Some(cfg.connect_timeout)).map_err(io)?;
            write_frame(&mut s, HELLO, &hello).map_err(io)?;
            let (kind, h) = read_frame(&mut s, HELLO_LEN).map_err(io)?;
            if kind != HELLO || h.len() != HELLO_LEN || &h[..4] != MAGIC {
                return Err(rdma_err(me, "bring-up: the other end is not a simulated RDMA link"));
            }
            let word = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
            let (peer, slot, depth) = (word(4), word(8), word(12));
            if !peers.contains(&peer) {
                return Err(rdma_err(peer, format!("bring-up: member {peer} is not a peer of member {me}")));
            }
            if slot as usize != cfg.slot_size || depth != cfg.depth {
                return Err(rdma_err(
                    peer,
                    format!("bring-up: slots of {slot} bytes x {depth} there, {} x {} here", cfg.slot_size, cfg.depth),
                ));
            }
            s.set_read_timeout(None).map_err(io)?;
            if by_peer.insert(peer, s).is_some() {
                return Err(rdma_err(peer, "bring-up: two connections from one peer"));
            }
        }
        if let Some(p) = peers.iter().find(|p| !by_peer.contains_key(p)) {
            return Err(rdma_err(*p, "bring-up: no connection from this peer"));
        }
        let shared: Sync = Arc::default();
        {
            let mut st = lock(&shared);
            for p in peers {
                st.posted.insert(*p, (0..cfg.depth).collect());
            }
        }
        let mut writers = HashMap::new();
        let mut readers = Vec::new();
        for (peer, s) in by_peer {
            let reader = s.try_clone().map_err(|e| rdma_err(peer, format!("bring-up: {e}")))?;
            let writer = Arc::new(Mutex::new(s));
            let (w, sh) = (writer.clone(), shared.clone());
            let max = cfg.slot_size;
            readers.push(std::thread::spawn(move || reader_loop(peer, reader, w, sh, max)));
            writers.insert(peer, writer);
        }
        Ok(SimLink { me, cfg, in_flight: 0, writers, shared, readers })
    }

    /// Bring-up over an out-of-band transport reaching every peer: [`SimEndpoint::open`], the
    /// connection data to and from every peer, [`SimEndpoint::connect`].
    pub fn establish(
        me: u32,
        cfg: SimConfig,
        peers: &[u32],
        oob: &mut dyn Transport,
    ) -> Result<SimLink, TransportError> {
        let (ep, data) = SimEndpoint::open(me)?;
        for p in peers {
            oob.send(*p, &data)?;
        }
        let mut remote = HashMap::new();
        while remote.len() < peers.len() {
            let (from, b) = oob.recv()?;
            if !peers.contains(&from) {
                return Err(rdma_err(from, "bring-up: connection data from a member that is not a peer"));
            }
            remote.insert(from, b);
        }
        ep.connect(cfg, peers, &remote)
    }

    pub fn me(&self) -> u32 {
        self.me
    }

    pub fn stats(&self) -> SimStats {
        lock(&self.shared).stats
    }
}

/// One member's half of a bring-up: a listening abstract Unix socket whose name is the connection
/// data peers need (what a queue pair's number, LID and GID are for verbs), and optionally a TCP
/// listener for peers on other hosts.
pub struct SimEndpoint {
    me: u32,
    listener: UnixListener,
    tcp: Option<TcpListener>,
}

impl SimEndpoint {
    /// Listens; returns the connection data to send to every peer.
    pub fn open(me: u32) -> Result<(SimEndpoint, Vec<u8>), TransportError> {
        Self::open_on(me, None)
    }

    /// [`SimEndpoint::open`], also listening on TCP at `ip` (an address the peers reach this
    /// host at) for peers on other hosts, where a Unix socket cannot reach.
    pub fn open_on(me: u32, ip: Option<IpAddr>) -> Result<(SimEndpoint, Vec<u8>), TransportError> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let name = format!("rlaunch-sim-{}-{}-{me}-{nanos}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        let io = |e: io::Error| rdma_err(me, format!("bring-up: {e}"));
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).map_err(io)?;
        let listener = UnixListener::bind_addr(&addr).map_err(io)?;
        let tcp = ip.map(|ip| TcpListener::bind((ip, 0))).transpose().map_err(io)?;
        // `magic | name | \0 | ip:port` (the TCP part only with a TCP listener).
        let mut data = CONNECT_MAGIC.to_vec();
        data.extend_from_slice(name.as_bytes());
        if let Some(t) = &tcp {
            data.push(0);
            data.extend_from_slice(t.local_addr().map_err(io)?.to_string().as_bytes());
        }
        Ok((SimEndpoint { me, listener, tcp }, data))
    }

    /// The connection data of a member that cannot bring its link up: its peers fail at once,
    /// naming it, instead of waiting for a connection that never comes.
    pub fn refusal(why: &str) -> Vec<u8> {
        let mut data = REFUSE_MAGIC.to_vec();
        data.extend_from_slice(why.as_bytes());
        data
    }

    /// Whether connection data is a [`SimEndpoint::refusal`].
    pub fn is_refusal(data: &[u8]) -> bool {
        data.starts_with(REFUSE_MAGIC)
    }

    /// Connects to every peer given its connection data (of each pair the lower member dials),
    /// within `cfg.connect_timeout`. Blocks: event loops call it on another thread.
    pub fn connect(self, cfg: SimConfig, peers: &[u32], remote: &HashMap<u32, Vec<u8>>) -> Result<SimLink, TransportError> {
        self.connect_unless(cfg, peers, remote, &AtomicBool::new(false))
    }

    /// [`SimEndpoint::connect`], giving up as soon as `abort` is set (a peer said it gave up, so
    /// the connection it owes will never come).
    pub fn connect_unless(
        self,
        cfg: SimConfig,
        peers: &[u32],
        remote: &HashMap<u32, Vec<u8>>,
        abort: &AtomicBool,
    ) -> Result<SimLink, TransportError> {
        let me = self.me;
        let io = |e: io::Error| rdma_err(me, format!("bring-up: {e}"));
        let mut streams = Vec::new();
        for &p in peers {
            let b = remote.get(&p).ok_or_else(|| rdma_err(p, "bring-up: no connection data from this peer"))?;
            if b.starts_with(REFUSE_MAGIC) {
                return Err(rdma_err(p, format!("bring-up: the peer has no link: {}", String::from_utf8_lossy(&b[4..]))));
            }
            if !b.starts_with(CONNECT_MAGIC) {
                return Err(rdma_err(p, "bring-up: sent something that is not simulated-link connection data"));
            }
            if p > me {
                let mut parts = b[4..].splitn(2, |c| *c == 0);
                let name = parts.next().unwrap_or_default();
                let tcp = parts.next().and_then(|a| std::str::from_utf8(a).ok()?.parse::<std::net::SocketAddr>().ok());
                let a = SocketAddr::from_abstract_name(name).map_err(io)?;
                // Same host: the Unix socket; another host (or network namespace): TCP.
                let s = match (UnixStream::connect_addr(&a), tcp) {
                    (Ok(s), _) => Ok(SimStream::Unix(s)),
                    (Err(_), Some(t)) => TcpStream::connect_timeout(&t, cfg.connect_timeout).map(|s| {
                        let _ = s.set_nodelay(true);
                        SimStream::Tcp(s)
                    }),
                    (Err(e), None) => Err(e),
                }
                .map_err(|e| rdma_err(p, format!("bring-up: connect: {e}")))?;
                streams.push(s);
            }
        }
        let accepting = peers.iter().filter(|p| **p < me).count();
        self.listener.set_nonblocking(true).map_err(io)?;
        if let Some(t) = &self.tcp {
            t.set_nonblocking(true).map_err(io)?;
        }
        let start = Instant::now();
        let mut accepted = 0;
        while accepted < accepting {
            let tcp = || -> io::Result<SimStream> {
                let (s, _) = self.tcp.as_ref().ok_or(io::ErrorKind::WouldBlock)?.accept()?;
                let _ = s.set_nodelay(true);
                Ok(SimStream::Tcp(s))
            };
            match self.listener.accept().map(|(s, _)| SimStream::Unix(s)).or_else(|_| tcp()) {
                Ok(s) => {
                    s.set_nonblocking(false).map_err(io)?;
                    streams.push(s);
                    accepted += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if abort.load(Ordering::Relaxed) {
                        return Err(rdma_err(me, "bring-up: a peer gave up"));
                    }
                    if start.elapsed() >= cfg.connect_timeout {
                        return Err(rdma_err(me, format!("bring-up: peers did not connect within {:?}", cfg.connect_timeout)));
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => return Err(io(e)),
            }
        }
        SimLink::from_streams(me, cfg, peers, streams)
    }
}

/// The "HCA" of one peer connection: accepts sends into posted slots, refuses them without one,
/// and turns acknowledgements into send completions.
fn reader_loop(peer: u32, mut s: SimStream, w: Arc<Mutex<SimStream>>, sh: Sync, max: usize) {
    loop {
        let frame = read_frame(&mut s, max);
        let mut st = lock(&sh);
        match frame {
            Ok((DATA, bytes)) => {
                if st.broken.contains_key(&peer) {
                    continue;
                }
                let reply = match st.posted.get_mut(&peer).and_then(|q| q.pop_front()) {
                    Some(slot) => {
                        let len = bytes.len();
                        st.slots.insert((peer, slot), bytes);
                        st.cq.push_back(Completion::Recv { peer, slot, len });
                        ACK
                    }
                    None => {
                        st.stats.rnr_refused += 1;
                        st.broken.insert(peer, "a send arrived with no receive posted".into());
                        NAK
                    }
                };
                drop(st);
                let _ = write_frame(&mut w.lock().unwrap_or_else(|e| e.into_inner()), reply, &[]);
                sh.1.notify_all();
                continue;
            }
            Ok((ACK, _)) => {
                if let Some(n) = st.unacked.get_mut(&peer) {
                    *n = n.saturating_sub(1);
                }
                st.cq.push_back(Completion::Sent { peer });
            }
            Ok((NAK, _)) => {
                if let Some(n) = st.unacked.get_mut(&peer) {
                    *n = n.saturating_sub(1);
                }
                let why = "receiver not ready: no receive posted at the peer (RNR); queue pair in error state";
                st.broken.insert(peer, why.into());
                st.cq.push_back(Completion::Failed { peer, why: why.into() });
            }
            Ok((kind, _)) => {
                st.broken.insert(peer, format!("unknown frame kind {kind}"));
                let n = st.unacked.insert(peer, 0).unwrap_or(0);
                for _ in 0..n {
                    st.cq.push_back(Completion::Failed { peer, why: format!("peer sent unknown frame kind {kind}") });
                }
                sh.1.notify_all();
                return;
            }
            Err(e) => {
                // A peer that closed after all our sends were acknowledged is just done; sends
                // still in flight to it fail, as they would time out on hardware.
                let why = if e.kind() == io::ErrorKind::UnexpectedEof { "peer closed its link".to_string() } else { e.to_string() };
                let n = st.unacked.insert(peer, 0).unwrap_or(0);
                for _ in 0..n {
                    st.cq.push_back(Completion::Failed { peer, why: why.clone() });
                }
                st.broken.entry(peer).or_insert(why);
                sh.1.notify_all();
                return;
            }
        }
        drop(st);
        sh.1.notify_all();
    }
}

impl RdmaLink for SimLink {
    fn slot_size(&self) -> usize {
        self.cfg.slot_size
    }

    fn recv_depth(&self) -> u32 {
        self.cfg.depth
    }

    fn peers(&self) -> Vec<u32> {
        let mut p: Vec<u32> = self.writers.keys().copied().collect();
        p.sort_unstable();
        p
    }

    fn send_capacity(&self) -> usize {
        self.cfg.send_bufs - self.in_flight
    }

    fn post_send(&mut self, peer: u32, data: &[u8]) -> Result<(), TransportError> {
        if data.len() > self.cfg.slot_size {
            return Err(rdma_err(peer, "local length error: send larger than the peer's receive slot"));
        }
        if self.in_flight >= self.cfg.send_bufs {
            return Err(rdma_err(peer, "no free send buffer"));
        }
        let w = self.writers.get(&peer).ok_or(TransportError::NoLink { peer })?;
        {
            let mut st = lock(&self.shared);
            if let Some(why) = st.broken.get(&peer) {
                return Err(rdma_err(peer, format!("queue pair in error state: {why}")));
            }
            st.stats.sends += 1;
            *st.unacked.entry(peer).or_default() += 1;
        }
        if let Err(e) = write_frame(&mut w.lock().unwrap_or_else(|e| e.into_inner()), DATA, data) {
            let mut st = lock(&self.shared);
            if let Some(n) = st.unacked.get_mut(&peer) {
                *n = n.saturating_sub(1);
            }
            st.broken.insert(peer, e.to_string());
            return Err(rdma_err(peer, format!("send: {e}")));
        }
        self.in_flight += 1;
        Ok(())
    }

    fn read_slot(&self, peer: u32, slot: u32, len: usize) -> Vec<u8> {
        lock(&self.shared).slots.get(&(peer, slot)).map(|d| d[..len.min(d.len())].to_vec()).unwrap_or_default()
    }

    fn repost_recv(&mut self, peer: u32, slot: u32) -> Result<(), TransportError> {
        if slot >= self.cfg.depth {
            return Err(rdma_err(peer, format!("slot {slot} does not exist (depth {})", self.cfg.depth)));
        }
        let mut st = lock(&self.shared);
        st.slots.remove(&(peer, slot));
        let q = st.posted.get_mut(&peer).ok_or(TransportError::NoLink { peer })?;
        if q.contains(&slot) {
            return Err(rdma_err(peer, format!("slot {slot} is already posted")));
        }
        q.push_back(slot);
        Ok(())
    }

    fn poll(&mut self, timeout: Duration) -> Result<Vec<Completion>, TransportError> {
        let deadline = Instant::now() + timeout;
        let mut st = lock(&self.shared);
        loop {
            if !st.cq.is_empty() {
                let out: Vec<Completion> = st.cq.drain(..).collect();
                // Every Sent and Failed completion is one of our sends: its buffer is free again.
                let done = out.iter().filter(|c| !matches!(c, Completion::Recv { .. })).count();
                self.in_flight = self.in_flight.saturating_sub(done);
                return Ok(out);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(Vec::new());
            }
            st = self.shared.1.wait_timeout(st, left).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}

impl Drop for SimLink {
    /// Releasing the link closes its sockets, which ends the reader threads here and at the peers.
    fn drop(&mut self) {
        for w in self.writers.values() {
            let _ = w.lock().unwrap_or_else(|e| e.into_inner()).shutdown();
        }
        for h in self.readers.drain(..) {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collective::{Collective, Kind, Tree};
    use crate::rdma::RdmaTransport;
    use crate::transport::{mem_network, run_collective};
    use proptest::prelude::*;

    const T: Duration = Duration::from_secs(20);

    fn cfg(slot_size: usize, depth: u32, send_bufs: usize) -> SimConfig {
        SimConfig { slot_size, depth, send_bufs, connect_timeout: Duration::from_secs(5) }
    }

    /// Two linked members 0 and 1 (the hellos cross, so both ends are built at once).
    fn pair(c: SimConfig) -> (SimLink, SimLink) {
        let (x, y) = UnixStream::pair().unwrap();
        let h = std::thread::spawn(move || SimLink::from_streams(1, c, &[0], vec![y.into()]).unwrap());
        let a = SimLink::from_streams(0, c, &[1], vec![x.into()]).unwrap();
        (a, h.join().unwrap())
    }

    fn poll_until(l: &mut SimLink, n: usize) -> Vec<Completion> {
        let deadline = Instant::now() + T;
        let mut out = Vec::new();
        while out.len() < n && Instant::now() < deadline {
            out.extend(l.poll(Duration::from_millis(100)).unwrap());
        }
        out
    }

    #[test]
    fn a_send_without_a_posted_receive_fails_with_rnr_and_breaks_the_pair() {
        let (mut a, mut b) = pair(cfg(32, 2, 8));
        for m in [&b"one"[..], b"two", b"three"] {
            a.post_send(1, m).unwrap();
        }
        let got = poll_until(&mut a, 3);
        assert_eq!(got[..2], [Completion::Sent { peer: 1 }, Completion::Sent { peer: 1 }], "in order");
        assert!(matches!(&got[2], Completion::Failed { peer: 1, why } if why.contains("RNR")), "{got:?}");
        assert_eq!(b.stats().rnr_refused, 1);
        // The two that fitted arrived in order, in the slots posted first.
        let recvs = poll_until(&mut b, 2);
        assert_eq!(recvs, [Completion::Recv { peer: 0, slot: 0, len: 3 }, Completion::Recv { peer: 0, slot: 1, len: 3 }]);
        assert_eq!(b.read_slot(0, 1, 3), b"two");
        // Reposting does not repair the queue pair: as on hardware it stays in error.
        b.repost_recv(0, 0).unwrap();
        assert!(a.post_send(1, b"four").unwrap_err().to_string().contains("error state"));
        assert!(b.repost_recv(0, 0).unwrap_err().to_string().contains("already posted"));
    }

    #[test]
    fn send_buffers_and_slot_size_are_limited() {
        let (mut a, mut b) = pair(cfg(16, 4, 1));
        assert_eq!(a.send_capacity(), 1);
        a.post_send(1, b"x").unwrap();
        assert_eq!(a.send_capacity(), 0);
        assert!(a.post_send(1, b"y").unwrap_err().to_string().contains("no free send buffer"));
        assert_eq!(poll_until(&mut a, 1), [Completion::Sent { peer: 1 }]);
        assert_eq!(a.send_capacity(), 1);
        assert!(a.post_send(1, &[0; 17]).unwrap_err().to_string().contains("length"));
        assert_eq!(poll_until(&mut b, 1).len(), 1);
    }

    #[test]
    fn mismatched_parameters_and_strangers_are_refused_at_bring_up() {
        let (x, y) = UnixStream::pair().unwrap();
        let h = std::thread::spawn(move || SimLink::from_streams(1, cfg(32, 3, 1), &[0], vec![y.into()]).map(|_| ()));
        let e = SimLink::from_streams(0, cfg(32, 2, 1), &[1], vec![x.into()]).err().unwrap();
        assert!(e.to_string().contains("32 bytes x 3 there, 32 x 2 here"), "{e}");
        assert!(h.join().unwrap().is_err());
        let (x, y) = UnixStream::pair().unwrap();
        let h = std::thread::spawn(move || SimLink::from_streams(7, cfg(32, 2, 1), &[0], vec![y.into()]).map(|_| ()));
        let e = SimLink::from_streams(0, cfg(32, 2, 1), &[1], vec![x.into()]).err().unwrap();
        assert!(e.to_string().contains("member 7 is not a peer"), "{e}");
        let _ = h.join();
    }

    #[test]
    fn waiting_for_a_peer_that_gave_up_ends_at_once() {
        let (ep, _) = SimEndpoint::open(1).unwrap();
        let remote: HashMap<u32, Vec<u8>> = [(0, SimEndpoint::open(0).unwrap().1)].into();
        let abort = Arc::new(AtomicBool::new(false));
        let a = abort.clone();
        let h = std::thread::spawn(move || ep.connect_unless(cfg(32, 2, 1), &[0], &remote, &a).map(|_| ()));
        std::thread::sleep(Duration::from_millis(50));
        let t = Instant::now();
        abort.store(true, Ordering::Relaxed);
        let e = h.join().unwrap().unwrap_err();
        assert!(e.to_string().contains("a peer gave up"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(1), "not the 5 s connect timeout");
    }

    #[test]
    fn peers_whose_unix_socket_is_out_of_reach_connect_over_tcp() {
        let lo: IpAddr = std::net::Ipv4Addr::LOCALHOST.into();
        let (a, da) = SimEndpoint::open_on(0, Some(lo)).unwrap();
        let (b, db) = SimEndpoint::open_on(1, Some(lo)).unwrap();
        // As from another network namespace: b's Unix name does not exist here.
        let mut db = db;
        let zero = db.iter().position(|c| *c == 0).unwrap();
        db[zero - 1] ^= 1;
        let ra: HashMap<u32, Vec<u8>> = [(1, db)].into();
        let rb: HashMap<u32, Vec<u8>> = [(0, da)].into();
        let h = std::thread::spawn(move || b.connect(cfg(32, 2, 2), &[0], &rb).unwrap());
        let mut la = a.connect(cfg(32, 2, 2), &[1], &ra).unwrap();
        let mut lb = h.join().unwrap();
        assert!(matches!(*la.writers[&1].lock().unwrap(), SimStream::Tcp(_)), "over TCP");
        la.post_send(1, b"hi").unwrap();
        assert_eq!(poll_until(&mut lb, 1), [Completion::Recv { peer: 0, slot: 0, len: 2 }]);
        assert_eq!(lb.read_slot(0, 0, 2), b"hi");
    }

    #[test]
    fn a_peer_that_dies_fails_the_sends_in_flight() {
        let (mut a, b) = pair(cfg(32, 4, 4));
        drop(b);
        // Depending on timing the send is refused at once or completes as failed.
        if a.post_send(1, b"late").is_ok() {
            let got = poll_until(&mut a, 1);
            assert!(matches!(&got[..], [Completion::Failed { peer: 1, .. }]), "{got:?}");
        }
        assert!(a.post_send(1, b"later").is_err());
    }

    /// Every member of a tree of `size` in its own thread, each with its own `SimLink`, brought up
    /// over in-memory connection data; returns every member's allgather result.
    fn allgather(size: u32, arity: u32, c: SimConfig) -> Vec<Vec<Vec<u8>>> {
        let tree = Tree::new(size, arity).unwrap();
        let all_done = Arc::new(std::sync::Barrier::new(size as usize));
        let hs: Vec<_> = mem_network(size, T)
            .into_iter()
            .enumerate()
            .map(|(i, mut oob)| {
                let i = i as u32;
                let all_done = all_done.clone();
                std::thread::spawn(move || {
                    let peers: Vec<u32> = tree.parent(i).into_iter().chain(tree.children(i)).collect();
                    let link = SimLink::establish(i, c, &peers, &mut oob).unwrap();
                    let mut t = RdmaTransport::new(link, T).unwrap();
                    let mut coll = Collective::new(tree, i, Kind::Allgather, 1).unwrap();
                    let r = run_collective(&mut t, &mut coll, vec![i as u8; 30 + 5 * i as usize]).unwrap();
                    assert_eq!(t.link().stats().rnr_refused, 0, "member {i}: the protocol overran a peer");
                    // Links are released only once every member is done (out of band, as the
                    // daemons do): a peer may still be returning credits to us.
                    all_done.wait();
                    r
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    }

    #[test]
    fn allgather_over_sim_links_brought_up_out_of_band() {
        for (size, arity) in [(1u32, 2u32), (2, 2), (7, 2), (9, 4)] {
            let want: Vec<Vec<u8>> = (0..size).map(|i| vec![i as u8; 30 + 5 * i as usize]).collect();
            for r in allgather(size, arity, cfg(24, 2, 2)) {
                assert_eq!(r, want, "P={size} k={arity}");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        /// Any message sizes, both directions at once, any small slot size, depth and buffer count:
        /// everything arrives in order and no send is ever refused for want of a receive.
        #[test]
        fn both_directions_deliver_in_order_without_rnr(
            sizes in proptest::collection::vec(0usize..200, 1..20),
            slot in 13usize..64,
            depth in 2u32..5,
            bufs in 1usize..4,
        ) {
            let (a, b) = pair(cfg(slot, depth, bufs));
            let msgs: Vec<Vec<u8>> = sizes.iter().enumerate().map(|(i, n)| vec![i as u8; *n]).collect();
            let both_done = Arc::new(std::sync::Barrier::new(2));
            let run = |link: SimLink, peer: u32, msgs: Vec<Vec<u8>>| {
                let both_done = both_done.clone();
                std::thread::spawn(move || {
                    let mut t = RdmaTransport::new(link, T).unwrap();
                    for m in &msgs {
                        t.send(peer, m).unwrap();
                    }
                    let got: Vec<Vec<u8>> = msgs.iter().map(|_| t.recv().unwrap().1).collect();
                    // Released once both are done: the other may still be returning credits.
                    both_done.wait();
                    (got, t.link().stats().rnr_refused)
                })
            };
            let ha = run(a, 1, msgs.clone());
            let hb = run(b, 0, msgs.clone());
            let (ga, ra) = ha.join().unwrap();
            let (gb, rb) = hb.join().unwrap();
            prop_assert_eq!(&ga, &msgs);
            prop_assert_eq!(&gb, &msgs);
            prop_assert_eq!(ra + rb, 0);
        }
    }

    /// Set in the child processes of `allgather_between_processes` (this test binary, re-run).
    const CHILD_ENV: &str = "RLAUNCH_SIM_LINK_TEST_CHILD";

    #[test]
    fn allgather_between_processes() {
        // Member 0 here, members 1 and 2 in child processes; the connection data travels over TCP.
        let tree = Tree::new(3, 2).unwrap();
        let listeners: Vec<_> = (0..3).map(|_| crate::transport::bind_listener("127.0.0.1:0".parse().unwrap()).unwrap()).collect();
        let addrs: Vec<std::net::SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
        // The children bind their own (SO_REUSEADDR) once these are closed.
        let mut listeners = listeners.into_iter();
        let mine = listeners.next().unwrap();
        drop(listeners);
        let list = addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(",");
        let children: Vec<_> = (1..3)
            .map(|i| {
                std::process::Command::new(std::env::current_exe().unwrap())
                    .args(["--exact", "sim_link::tests::child_member", "--ignored", "--nocapture"])
                    .env(CHILD_ENV, format!("{i};{list}"))
                    // The harness's own lines would mix into ours; panics still go to stderr.
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let r = member(0, tree, mine, &addrs);
        let want: Vec<Vec<u8>> = (0..3).map(|i| vec![i as u8 + 1; 100 * (i + 1)]).collect();
        assert_eq!(r, want);
        for mut c in children {
            assert!(c.wait().unwrap().success(), "a child member failed");
        }
    }

    fn member(i: u32, tree: Tree, l: std::net::TcpListener, addrs: &[std::net::SocketAddr]) -> Vec<Vec<u8>> {
        let tcfg = crate::transport::TcpConfig { recv_timeout: T, ..Default::default() };
        let mut oob = crate::transport::TcpTransport::connect(i, &tree, l, addrs, &tcfg).unwrap();
        let peers: Vec<u32> = tree.parent(i).into_iter().chain(tree.children(i)).collect();
        let link = SimLink::establish(i, cfg(40, 3, 2), &peers, &mut oob).unwrap();
        let mut t = RdmaTransport::new(link, T).unwrap();
        let mut coll = Collective::new(tree, i, Kind::Allgather, 1).unwrap();
        let r = run_collective(&mut t, &mut coll, vec![i as u8 + 1; 100 * (i as usize + 1)]).unwrap();
        // Released before the TCP links: stay on TCP until the parent says everyone is done.
        let mut done = Collective::new(tree, i, Kind::Barrier, 2).unwrap();
        crate::transport::run_barrier(&mut oob, &mut done).unwrap();
        r
    }

    #[test]
    #[ignore = "a child process of allgather_between_processes"]
    fn child_member() {
        let Ok(spec) = std::env::var(CHILD_ENV) else {
            panic!("run only by allgather_between_processes, with {CHILD_ENV} set");
        };
        let (i, list) = spec.split_once(';').unwrap();
        let i: u32 = i.parse().unwrap();
        let addrs: Vec<std::net::SocketAddr> = list.split(',').map(|a| a.parse().unwrap()).collect();
        let l = crate::transport::bind_listener(addrs[i as usize]).unwrap();
        let r = member(i, Tree::new(3, 2).unwrap(), l, &addrs);
        assert_eq!(r.len(), 3);
        assert_eq!(r[i as usize], vec![i as u8 + 1; 100 * (i as usize + 1)]);
    }
}
