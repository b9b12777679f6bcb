//! Message transports between tree members, and the driver that runs a [`Collective`] over one.
//!
//! A [`Transport`] moves whole messages (byte vectors) between member indices. Implementations:
//! [`MemTransport`] (in-process channels, for tests), [`TcpTransport`] (one TCP connection per tree
//! edge) and [`crate::rdma::RdmaTransport`] (verbs send/receive, through a link abstraction).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::collective::{Action, Collective, CollectiveError, Message, Tree};

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("member {peer} at {addr}: {source}")]
    Io {
        peer: u32,
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("no message within {0:?}; a peer daemon may have died or be unreachable")]
    Timeout(Duration),
    #[error("member {peer} closed the connection; its daemon probably exited, check its log")]
    Closed { peer: u32 },
    #[error("member {peer} is not a neighbour of this member in the tree; there is no link to it")]
    NoLink { peer: u32 },
    #[error("member {peer} sent a {len}-byte frame, more than the {max}-byte limit; it is not an rlaunch daemon of this version")]
    FrameTooLarge { peer: u32, len: usize, max: usize },
    #[error("could not connect to member {peer} at {addr} within {waited:?}: {source}; is its daemon running and the port open?")]
    Connect {
        peer: u32,
        addr: SocketAddr,
        waited: Duration,
        #[source]
        source: io::Error,
    },
    #[error("children {missing:?} did not connect within {waited:?}; their daemons may have failed to start")]
    ChildrenMissing { missing: Vec<u32>, waited: Duration },
    #[error("{addrs} addresses for a tree of {size} members; pass one address per member")]
    AddressCount { addrs: usize, size: u32 },
    #[error("RDMA link to member {peer}: {why}")]
    Rdma { peer: u32, why: String },
}

/// Moves whole messages between members of a tree.
pub trait Transport {
    fn send(&mut self, peer: u32, bytes: &[u8]) -> Result<(), TransportError>;
    /// The next message from any peer.
    fn recv(&mut self) -> Result<(u32, Vec<u8>), TransportError>;
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Collective(#[from] CollectiveError),
}

/// Drives `collective` to completion over `transport` and returns every member's data in order.
pub fn run_collective<T: Transport + ?Sized>(
    transport: &mut T,
    collective: &mut Collective,
    contribution: Vec<u8>,
) -> Result<Vec<Vec<u8>>, RunError> {
    let mut actions = collective.start(contribution)?;
    loop {
        let mut result = None;
        for a in actions {
            match a {
                Action::Send { to, msg } => transport.send(to, &msg.encode())?,
                Action::Complete(data) => result = Some(data),
            }
        }
        // Sends are issued before returning so the children get the down message.
        if let Some(data) = result {
            return Ok(data);
        }
        let (from, bytes) = transport.recv()?;
        actions = collective.on_message(from, Message::decode(&bytes)?)?;
    }
}

/// Barrier: returns once every member has entered.
pub fn run_barrier<T: Transport + ?Sized>(
    transport: &mut T,
    collective: &mut Collective,
) -> Result<(), RunError> {
    run_collective(transport, collective, Vec::new()).map(|_| ())
}

// ---------------------------------------------------------------------------------------------
// In memory.

/// A transport over in-process channels: every member can reach every other.
pub struct MemTransport {
    me: u32,
    peers: Vec<Sender<(u32, Vec<u8>)>>,
    inbox: Receiver<(u32, Vec<u8>)>,
    timeout: Duration,
}

/// `size` connected endpoints; `recv` gives up after `timeout` so a broken test fails, not hangs.
pub fn mem_network(size: u32, timeout: Duration) -> Vec<MemTransport> {
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..size).map(|_| mpsc::channel()).unzip();
    rxs.into_iter()
        .enumerate()
        .map(|(i, inbox)| MemTransport {
            me: i as u32,
            peers: txs.clone(),
            inbox,
            timeout,
        })
        .collect()
}

impl Transport for MemTransport {
    fn send(&mut self, peer: u32, bytes: &[u8]) -> Result<(), TransportError> {
        let tx = self
            .peers
            .get(peer as usize)
            .ok_or(TransportError::NoLink { peer })?;
        tx.send((self.me, bytes.to_vec()))
            .map_err(|_| TransportError::Closed { peer })
    }

    fn recv(&mut self) -> Result<(u32, Vec<u8>), TransportError> {
        self.inbox
            .recv_timeout(self.timeout)
            .map_err(|_| TransportError::Timeout(self.timeout))
    }
}

// ---------------------------------------------------------------------------------------------
// TCP.

/// Frames are `len u32 LE | bytes`. The limit keeps a stray connection from making us allocate
/// gigabytes; 64 MiB covers an allgather of 64 KiB from 1000 daemons.
pub const DEFAULT_MAX_FRAME: usize = 64 << 20;
const HELLO_MAGIC: [u8; 4] = *b"RLTC";
const HELLO_LEN: usize = 4 + 8 + 4;

#[derive(Clone, Debug)]
pub struct TcpConfig {
    /// Identifies the job: a connection with another job id is dropped, so a leftover daemon of an
    /// earlier run cannot join this tree.
    pub job: u64,
    pub connect_timeout: Duration,
    pub recv_timeout: Duration,
    pub max_frame: usize,
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            job: 0,
            connect_timeout: Duration::from_secs(30),
            recv_timeout: Duration::from_secs(300),
            max_frame: DEFAULT_MAX_FRAME,
        }
    }
}

/// Binds a listener for [`TcpTransport::connect`] (SO_REUSEADDR so a restarted daemon can rebind).
pub fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

/// One TCP connection to the parent and to each child; a reader thread per connection feeds a
/// single inbox, so `recv` sees messages from all neighbours in arrival order.
pub struct TcpTransport {
    me: u32,
    links: HashMap<u32, TcpStream>,
    inbox: Receiver<(u32, Result<Vec<u8>, TransportError>)>,
    readers: Vec<JoinHandle<()>>,
    timeout: Duration,
}

fn write_frame(s: &mut TcpStream, bytes: &[u8]) -> io::Result<()> {
    let len = u32::try_from(bytes.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "message over 4 GiB"))?;
    s.write_all(&len.to_le_bytes())?;
    s.write_all(bytes)
}

fn hello(job: u64, me: u32) -> [u8; HELLO_LEN] {
    let mut h = [0u8; HELLO_LEN];
    h[..4].copy_from_slice(&HELLO_MAGIC);
    h[4..12].copy_from_slice(&job.to_le_bytes());
    h[12..].copy_from_slice(&me.to_le_bytes());
    h
}

/// The member index in a hello, if it is one for `job`.
pub fn parse_hello(h: &[u8; HELLO_LEN], job: u64) -> Option<u32> {
    (h[..4] == HELLO_MAGIC && h[4..12] == job.to_le_bytes())
        .then(|| u32::from_le_bytes([h[12], h[13], h[14], h[15]]))
}

fn connect_retrying(
    peer: u32,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream, TransportError> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(10);
    loop {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(
            |source| TransportError::Io {
                peer,
                addr: addr.to_string(),
                source,
            },
        )?;
        let left = timeout
            .saturating_sub(start.elapsed())
            .max(Duration::from_millis(1));
        match s.connect_timeout(&addr.into(), left) {
            Ok(()) => return Ok(s.into()),
            // The parent may not be listening yet: it starts at its own pace.
            Err(source) if start.elapsed() >= timeout => {
                return Err(TransportError::Connect {
                    peer,
                    addr,
                    waited: start.elapsed(),
                    source,
                })
            }
            Err(_) => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(500));
            }
        }
    }
}

impl TcpTransport {
    /// Connects member `me` to its tree neighbours: dials the parent at `addrs[parent]`, and accepts
    /// one connection from each child on `listener` (which must already be bound at `addrs[me]`).
    pub fn connect(
        me: u32,
        tree: &Tree,
        listener: TcpListener,
        addrs: &[SocketAddr],
        cfg: &TcpConfig,
    ) -> Result<TcpTransport, TransportError> {
        if addrs.len() != tree.size() as usize {
            return Err(TransportError::AddressCount {
                addrs: addrs.len(),
                size: tree.size(),
            });
        }
        let mut links = HashMap::new();
        let io_err =
            |peer: u32, addr: String| move |source| TransportError::Io { peer, addr, source };
        if let Some(parent) = tree.parent(me) {
            let addr = addrs[parent as usize];
            let mut s = connect_retrying(parent, addr, cfg.connect_timeout)?;
            s.set_nodelay(true)
                .map_err(io_err(parent, addr.to_string()))?;
            s.write_all(&hello(cfg.job, me))
                .map_err(io_err(parent, addr.to_string()))?;
            links.insert(parent, s);
        }
        let mut missing: Vec<u32> = tree.children(me).collect();
        let me_addr = addrs[me as usize].to_string();
        listener
            .set_nonblocking(true)
            .map_err(io_err(me, me_addr.clone()))?;
        let start = Instant::now();
        while !missing.is_empty() {
            if start.elapsed() >= cfg.connect_timeout {
                return Err(TransportError::ChildrenMissing {
                    missing,
                    waited: start.elapsed(),
                });
            }
            let (mut s, from) = match listener.accept() {
                Ok(c) => c,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                Err(e) => return Err(io_err(me, me_addr.clone())(e)),
            };
            // A connection that does not say hello promptly, or names another job or a member that
            // is not our child, is dropped: it cannot be one of ours.
            let _ = s.set_nonblocking(false);
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut h = [0u8; HELLO_LEN];
            if s.read_exact(&mut h).is_err() {
                continue;
            }
            let Some(child) = parse_hello(&h, cfg.job) else {
                continue;
            };
            let Some(pos) = missing.iter().position(|c| *c == child) else {
                continue;
            };
            missing.remove(pos);
            s.set_read_timeout(None)
                .map_err(io_err(child, from.to_string()))?;
            s.set_nodelay(true)
                .map_err(io_err(child, from.to_string()))?;
            links.insert(child, s);
        }
        let (tx, inbox) = mpsc::channel();
        let mut readers = Vec::new();
        for (&peer, s) in &links {
            let stream = s.try_clone().map_err(io_err(peer, String::new()))?;
            let tx = tx.clone();
            let max = cfg.max_frame;
            readers.push(std::thread::spawn(move || read_loop(peer, stream, tx, max)));
        }
        Ok(TcpTransport {
            me,
            links,
            inbox,
            readers,
            timeout: cfg.recv_timeout,
        })
    }

    pub fn me(&self) -> u32 {
        self.me
    }
}

fn read_loop(
    peer: u32,
    mut s: TcpStream,
    tx: Sender<(u32, Result<Vec<u8>, TransportError>)>,
    max: usize,
) {
    let addr = s.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    loop {
        let mut len = [0u8; 4];
        let res = match s.read_exact(&mut len) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                Err(TransportError::Closed { peer })
            }
            Err(source) => Err(TransportError::Io {
                peer,
                addr: addr.clone(),
                source,
            }),
            Ok(()) => {
                let n = u32::from_le_bytes(len) as usize;
                if n > max {
                    Err(TransportError::FrameTooLarge { peer, len: n, max })
                } else {
                    let mut buf = vec![0u8; n];
                    match s.read_exact(&mut buf) {
                        Ok(()) => Ok(buf),
                        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                            Err(TransportError::Closed { peer })
                        }
                        Err(source) => Err(TransportError::Io {
                            peer,
                            addr: addr.clone(),
                            source,
                        }),
                    }
                }
            }
        };
        let stop = res.is_err();
        if tx.send((peer, res)).is_err() || stop {
            return;
        }
    }
}

impl Transport for TcpTransport {
    fn send(&mut self, peer: u32, bytes: &[u8]) -> Result<(), TransportError> {
        let s = self
            .links
            .get_mut(&peer)
            .ok_or(TransportError::NoLink { peer })?;
        write_frame(s, bytes).map_err(|source| TransportError::Io {
            peer,
            addr: s.peer_addr().map(|a| a.to_string()).unwrap_or_default(),
            source,
        })
    }

    fn recv(&mut self) -> Result<(u32, Vec<u8>), TransportError> {
        match self.inbox.recv_timeout(self.timeout) {
            Ok((peer, res)) => res.map(|b| (peer, b)),
            Err(RecvTimeoutError::Timeout) => Err(TransportError::Timeout(self.timeout)),
            // Every reader thread ended after reporting its error; nothing more can arrive.
            Err(RecvTimeoutError::Disconnected) => Err(TransportError::Timeout(Duration::ZERO)),
        }
    }
}

impl Drop for TcpTransport {
    fn drop(&mut self) {
        for s in self.links.values() {
            let _ = s.shutdown(Shutdown::Both);
        }
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collective::Kind;
    use std::net::Ipv4Addr;

    fn run_all<T: Transport + Send + 'static>(
        ts: Vec<T>,
        arity: u32,
        kind: Kind,
    ) -> Vec<Vec<Vec<u8>>> {
        let size = ts.len() as u32;
        let tree = Tree::new(size, arity).unwrap();
        let handles: Vec<_> = ts
            .into_iter()
            .enumerate()
            .map(|(i, mut t)| {
                std::thread::spawn(move || {
                    let mut c = Collective::new(tree, i as u32, kind, 1).unwrap();
                    run_collective(&mut t, &mut c, vec![i as u8; i % 5]).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    #[test]
    fn mem_allgather_and_barrier() {
        for (size, arity) in [(1, 2), (2, 2), (13, 2), (64, 4), (64, 32), (20, 64)] {
            let want: Vec<Vec<u8>> = (0..size).map(|i| vec![i as u8; i % 5]).collect();
            for r in run_all(
                mem_network(size as u32, Duration::from_secs(20)),
                arity,
                Kind::Allgather,
            ) {
                assert_eq!(r, want, "P={size} k={arity}");
            }
            let tree = Tree::new(size as u32, arity).unwrap();
            let hs: Vec<_> = mem_network(size as u32, Duration::from_secs(20))
                .into_iter()
                .enumerate()
                .map(|(i, mut t)| {
                    std::thread::spawn(move || {
                        run_barrier(
                            &mut t,
                            &mut Collective::new(tree, i as u32, Kind::Barrier, 9).unwrap(),
                        )
                    })
                })
                .collect();
            for h in hs {
                h.join().unwrap().unwrap();
            }
        }
    }

    #[test]
    fn mem_barrier_times_out_when_a_member_never_comes() {
        let mut ts = mem_network(3, Duration::from_millis(100));
        let tree = Tree::new(3, 2).unwrap();
        let mut c = Collective::new(tree, 0, Kind::Barrier, 1).unwrap();
        let err = run_barrier(&mut ts[0], &mut c).unwrap_err();
        assert!(
            matches!(err, RunError::Transport(TransportError::Timeout(_))),
            "{err}"
        );
    }

    fn tcp_members(
        size: u32,
        arity: u32,
        job: u64,
    ) -> Vec<std::thread::JoinHandle<Result<Vec<Vec<u8>>, String>>> {
        let listeners: Vec<TcpListener> = (0..size)
            .map(|_| bind_listener((Ipv4Addr::LOCALHOST, 0).into()).unwrap())
            .collect();
        let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
        let tree = Tree::new(size, arity).unwrap();
        listeners
            .into_iter()
            .enumerate()
            .map(|(i, l)| {
                let addrs = addrs.clone();
                std::thread::spawn(move || {
                    let cfg = TcpConfig {
                        job,
                        connect_timeout: Duration::from_secs(20),
                        recv_timeout: Duration::from_secs(20),
                        ..Default::default()
                    };
                    let mut t = TcpTransport::connect(i as u32, &tree, l, &addrs, &cfg)
                        .map_err(|e| e.to_string())?;
                    let mut c = Collective::new(tree, i as u32, Kind::Allgather, 1).unwrap();
                    run_collective(&mut t, &mut c, format!("host{i}").into_bytes())
                        .map_err(|e| e.to_string())
                })
            })
            .collect()
    }

    #[test]
    fn tcp_allgather_on_loopback() {
        for (size, arity) in [(1, 2), (7, 2), (16, 4), (9, 32)] {
            let want: Vec<Vec<u8>> = (0..size).map(|i| format!("host{i}").into_bytes()).collect();
            for h in tcp_members(size, arity, 77) {
                assert_eq!(h.join().unwrap().unwrap(), want, "P={size} k={arity}");
            }
        }
    }

    #[test]
    fn tcp_rejects_other_jobs_and_reports_missing_children() {
        let tree = Tree::new(2, 2).unwrap();
        let l0 = bind_listener((Ipv4Addr::LOCALHOST, 0).into()).unwrap();
        let addrs = vec![l0.local_addr().unwrap(), (Ipv4Addr::LOCALHOST, 9).into()];
        // A stranger from job 2 connects and says it is member 1.
        let mut stranger = TcpStream::connect(addrs[0]).unwrap();
        stranger.write_all(&hello(2, 1)).unwrap();
        let cfg = TcpConfig {
            job: 1,
            connect_timeout: Duration::from_millis(300),
            ..Default::default()
        };
        let err = TcpTransport::connect(0, &tree, l0, &addrs, &cfg)
            .err()
            .unwrap();
        assert!(
            matches!(err, TransportError::ChildrenMissing { ref missing, .. } if missing == &[1]),
            "{err}"
        );
    }

    #[test]
    fn tcp_peer_death_is_reported_as_closed() {
        let tree = Tree::new(2, 2).unwrap();
        let l0 = bind_listener((Ipv4Addr::LOCALHOST, 0).into()).unwrap();
        let l1 = bind_listener((Ipv4Addr::LOCALHOST, 0).into()).unwrap();
        let addrs = vec![l0.local_addr().unwrap(), l1.local_addr().unwrap()];
        let a2 = addrs.clone();
        let cfg = TcpConfig {
            job: 5,
            connect_timeout: Duration::from_secs(10),
            recv_timeout: Duration::from_secs(10),
            ..Default::default()
        };
        let c2 = cfg.clone();
        let child = std::thread::spawn(move || {
            drop(TcpTransport::connect(1, &tree, l1, &a2, &c2).unwrap())
        });
        let mut root = TcpTransport::connect(0, &tree, l0, &addrs, &cfg).unwrap();
        child.join().unwrap();
        assert!(matches!(
            root.recv(),
            Err(TransportError::Closed { peer: 1 })
        ));
        assert!(matches!(
            root.send(3, b"x"),
            Err(TransportError::NoLink { peer: 3 })
        ));
    }

    #[test]
    fn tcp_oversized_frame_is_refused() {
        let tree = Tree::new(2, 2).unwrap();
        let l0 = bind_listener((Ipv4Addr::LOCALHOST, 0).into()).unwrap();
        let addrs = vec![l0.local_addr().unwrap(), (Ipv4Addr::LOCALHOST, 9).into()];
        let a0 = addrs[0];
        let child = std::thread::spawn(move || {
            let mut s = TcpStream::connect(a0).unwrap();
            s.write_all(&hello(5, 1)).unwrap();
            s.write_all(&(1u32 << 30).to_le_bytes()).unwrap();
            std::thread::sleep(Duration::from_millis(200));
        });
        let cfg = TcpConfig {
            job: 5,
            max_frame: 1024,
            recv_timeout: Duration::from_secs(10),
            ..Default::default()
        };
        let mut root = TcpTransport::connect(0, &tree, l0, &addrs, &cfg).unwrap();
        assert!(matches!(
            root.recv(),
            Err(TransportError::FrameTooLarge {
                peer: 1,
                max: 1024,
                ..
            })
        ));
        child.join().unwrap();
    }

    #[test]
    fn hello_roundtrip() {
        assert_eq!(parse_hello(&hello(42, 7), 42), Some(7));
        assert_eq!(parse_hello(&hello(42, 7), 43), None);
        let mut h = hello(1, 1);
        h[0] = b'X';
        assert_eq!(parse_hello(&h, 1), None);
    }
}
