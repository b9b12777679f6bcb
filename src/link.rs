//! One authenticated tree edge on a non-blocking socket: buffered frames in and out. The event loops
//! own links; this type only moves bytes between the socket and the codec.

use crate::wire::{Dir, JobKey, Msg, Opener, Sealer, WireError};
use std::io::{self, Read, Write};

/// Bytes read from a socket per call to [`Link::fill`], so one busy link cannot starve the others.
pub const READ_BUDGET: usize = 1 << 20;

pub struct Link {
    pub stream: mio::net::TcpStream,
    sealer: Sealer,
    opener: Opener,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    out_off: usize,
    pub bytes_out: u64,
    /// Size in bytes of the last frame returned by [`Link::next_msg`].
    pub last_frame_len: usize,
    pub eof: bool,
}

impl Link {
    /// `send_dir`/`link` describe the frames we write; incoming frames travel the other way.
    pub fn new(stream: mio::net::TcpStream, key: JobKey, send_dir: Dir, link: Option<u32>) -> Self {
        let recv_dir = match send_dir {
            Dir::Down => Dir::Up,
            Dir::Up => Dir::Down,
        };
        Link {
            stream,
            sealer: Sealer::new(key, send_dir, link.unwrap_or(u32::MAX)),
            opener: Opener::new(key, recv_dir, link),
            inbuf: Vec::new(),
            outbuf: Vec::new(),
            out_off: 0,
            bytes_out: 0,
            last_frame_len: 0,
            eof: false,
        }
    }

    /// The node rank of the child end, once known (fixed by its first authenticated frame).
    pub fn peer_link(&self) -> Option<u32> {
        self.opener.link()
    }

    /// Starts both directions afresh as link `link` (sequence numbers from 0): after a rendezvous,
    /// the daemon that joined as an unknown node continues on the same connection as its real node.
    pub fn rebind(&mut self, key: JobKey, send_dir: Dir, link: u32) {
        let recv_dir = match send_dir {
            Dir::Down => Dir::Up,
            Dir::Up => Dir::Down,
        };
        self.sealer = Sealer::new(key, send_dir, link);
        self.opener = Opener::new(key, recv_dir, Some(link));
    }

    /// Fixes the link id used on outgoing frames, once the peer has said who it is.
    pub fn set_link(&mut self, key: JobKey, send_dir: Dir, link: u32) {
        self.sealer = Sealer::new(key, send_dir, link);
    }

    /// Queues a message and returns the frame size in bytes.
    pub fn send(&mut self, msg: &Msg) -> usize {
        let frame = self.sealer.seal(msg);
        let n = frame.len();
        self.queue_raw(&frame);
        n
    }

    fn queue_raw(&mut self, bytes: &[u8]) {
        if self.out_off > 0 && self.out_off == self.outbuf.len() {
            self.outbuf.clear();
            self.out_off = 0;
        }
        self.outbuf.extend_from_slice(bytes);
        self.bytes_out += bytes.len() as u64;
    }

    pub fn pending_out(&self) -> usize {
        self.outbuf.len() - self.out_off
    }

    /// Writes what the socket takes without blocking.
    pub fn flush(&mut self) -> io::Result<()> {
        while self.out_off < self.outbuf.len() {
            match self.stream.write(&self.outbuf[self.out_off..]) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => self.out_off += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        if self.out_off == self.outbuf.len() {
            self.outbuf.clear();
            self.out_off = 0;
        } else if self.out_off > (1 << 20) {
            self.outbuf.drain(..self.out_off);
            self.out_off = 0;
        }
        Ok(())
    }

    /// Reads up to [`READ_BUDGET`] bytes. Returns true when more may be waiting (budget used up).
    pub fn fill(&mut self) -> io::Result<bool> {
        let mut buf = [0u8; 64 * 1024];
        let mut total = 0;
        while total < READ_BUDGET {
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(false);
                }
                Ok(n) => {
                    self.inbuf.extend_from_slice(&buf[..n]);
                    total += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    pub fn next_msg(&mut self) -> Result<Option<Msg>, WireError> {
        let before = self.inbuf.len();
        let msg = self.opener.open(&mut self.inbuf)?;
        self.last_frame_len = before - self.inbuf.len();
        Ok(msg)
    }
}

/// Writes out what is queued, waiting at most `timeout`: the last words before a process exits.
pub fn flush_blocking(link: &mut Link, timeout: std::time::Duration) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let deadline = std::time::Instant::now() + timeout;
    while link.pending_out() > 0 {
        if link.flush().is_err() || link.pending_out() == 0 {
            return;
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return;
        }
        let mut fds = [PollFd::new(link.stream.as_fd(), PollFlags::POLLOUT)];
        let ms = PollTimeout::try_from(left.as_millis().min(60_000) as i32).unwrap_or(PollTimeout::MAX);
        if poll(&mut fds, ms).is_err() {
            return;
        }
    }
}

// Reading frames from a link: what one read brought (a daemon reads its parent's link and handles
// it a budget at a time), or everything a child's link has (handled together).

#[derive(Default)]
pub struct Inbox {
    /// Each message with the size of its frame.
    pub msgs: Vec<(Msg, usize)>,
    /// A frame failed authentication or decoding; nothing after it was read.
    pub rejected: Option<WireError>,
    /// The peer closed the link, or reading failed.
    pub closed: bool,
    /// Why reading failed, when it did (not for a plain close).
    pub read_error: Option<String>,
    /// The read budget ran out: more may be waiting.
    pub more: bool,
    /// Reading failed because the peer's kernel stopped answering the link's heartbeat probes
    /// (`ETIMEDOUT`): its node or its network is down.
    pub timed_out: bool,
}

/// One budgeted read and the frames it completed. `parse_after_error`: when reading fails, still
/// take the complete frames already buffered.
pub fn read(link: &mut Link, parse_after_error: bool) -> Inbox {
    let mut inbox = Inbox::default();
    match link.fill() {
        Ok(more) => inbox.more = more,
        Err(e) => {
            inbox.closed = true;
            inbox.timed_out = e.kind() == io::ErrorKind::TimedOut;
            inbox.read_error = Some(e.to_string());
            if !parse_after_error {
                return inbox;
            }
        }
    }
    loop {
        match link.next_msg() {
            Ok(Some(m)) => inbox.msgs.push((m, link.last_frame_len)),
            Ok(None) => break,
            Err(e) => {
                inbox.rejected = Some(e);
                break;
            }
        }
    }
    inbox.closed |= link.eof;
    inbox
}

/// Everything a child's link has now; `closed` also when a frame was rejected (the link is
/// dropped then).
pub fn read_child(link: &mut Link) -> Inbox {
    let mut all = Inbox::default();
    loop {
        let one = read(link, true);
        all.msgs.extend(one.msgs);
        let rejected = one.rejected.is_some();
        all.read_error = all.read_error.or(one.read_error);
        all.timed_out |= one.timed_out;
        if rejected {
            all.rejected = one.rejected;
        }
        if one.closed || rejected || !one.more {
            all.closed = one.closed || rejected;
            return all;
        }
    }
}

/// A listener on `ip`: on any free port, or on the first free one of `ports`
/// (`MPIEXEC_PORT_RANGE`), so that a site's firewall can open just those between nodes.
pub fn listen(ip: std::net::IpAddr, ports: Option<crate::spec::PortRange>) -> io::Result<mio::net::TcpListener> {
    let Some(range) = ports else {
        return mio::net::TcpListener::bind(std::net::SocketAddr::new(ip, 0));
    };
    for port in range.low..=range.high {
        match mio::net::TcpListener::bind(std::net::SocketAddr::new(ip, port)) {
            Ok(l) => return Ok(l),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(io::ErrorKind::AddrInUse, format!("every port of MPIEXEC_PORT_RANGE={range} on {ip} is in use")))
}
