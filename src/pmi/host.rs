//! The daemon's side of the PMI engine: one socket per local rank, bytes in and out on the
//! daemon's mio loop, replies written without blocking. Everything that needs the tree (fences,
//! aborts, errors) goes back to the daemon as [`Action`]s.
//!
//! Two ways for a rank to find its server: `PMI_FD` (default), an end of a socketpair inherited
//! across exec, and `PMI_PORT` (`--pmi-port`), a loopback TCP listener the rank connects to,
//! naming its rank with `PMI_ID`.

use super::{Action, ConnId, FxMap, JobInfo, PmiServer};
use mio::{Interest, Registry, Token};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
#[cfg(test)]
use std::os::unix::process::CommandExt;

/// PMI's tokens are `crate::token::pmi(k)`: the listener is 0, connection `c` is `c + 1`.
const LISTENER_TOKEN: usize = 0;
/// Bytes read from one PMI socket per event: a rank that writes without pause cannot starve the
/// rest of the loop. The remainder is read on the next round ([`PmiHost::more`]).
const READ_BUDGET: usize = 256 * 1024;
/// One read's room: more than any PMI-1 line or PMI-2 message a client writes at once.
const READ_CHUNK: usize = 16 * 1024;
/// Reply bytes queued for a rank that does not read them. An honest client reads every reply
/// before its next request, so this is generous; past it the rank is broken.
const MAX_QUEUED_OUT: usize = 16 << 20;
/// Connections accepted in `PMI_PORT` mode beyond the local rank count: a stray connector must
/// not exhaust the daemon.
const EXTRA_PORT_CONNS: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `PMI_FD`: an inherited socketpair end.
    Fd,
    /// `PMI_PORT=127.0.0.1:port` and `PMI_ID=<rank>`.
    Port,
}

enum Sock {
    Unix(mio::net::UnixStream),
    Tcp(mio::net::TcpStream),
}

impl Sock {
    fn source(&mut self) -> &mut dyn mio::event::Source {
        match self {
            Sock::Unix(s) => s,
            Sock::Tcp(s) => s,
        }
    }
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Sock::Unix(s) => s.read(buf),
            Sock::Tcp(s) => s.read(buf),
        }
    }
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sock::Unix(s) => s.write(buf),
            Sock::Tcp(s) => s.write(buf),
        }
    }
}

struct Conn {
    sock: Sock,
    out: Vec<u8>,
    off: usize,
    /// Read hit its budget: more may be waiting (edge-triggered polling will not say so again).
    more: bool,
    /// Registered for writability too: only while replies wait for room in the socket.
    /// Otherwise every reply the rank reads would wake the daemon's poll for nothing.
    watch_write: bool,
}

/// What the daemon keeps until the rank is spawned: the child's end of the socketpair, open in
/// the daemon until `spawn` has duplicated it into the child.
pub struct Prepared {
    child_end: Option<std::os::unix::net::UnixStream>,
}

impl Prepared {
    /// The rank's end of the socketpair, to keep open across exec in that rank only.
    pub fn child_fd(&self) -> Option<RawFd> {
        self.child_end.as_ref().map(|e| e.as_raw_fd())
    }

    /// Makes the rank's end of the socketpair survive `exec` in the child `cmd` starts (and only
    /// there). Call after any `pre_exec` that must run first.
    #[cfg(test)]
    pub fn apply(&self, cmd: &mut std::process::Command) {
        let Some(end) = self.child_end.as_ref() else { return };
        let fd: RawFd = end.as_raw_fd();
        // SAFETY: fcntl is async-signal-safe; the fd is open in the child (fork copies it).
        unsafe {
            cmd.pre_exec(move || {
                // The socketpair is close-on-exec like every fd Rust opens; the rank's end
                // must survive exec, and only in this one child.
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

/// Environment changes for a rank, in order: `Some` sets, `None` unsets.
pub type EnvOps = Vec<(String, Option<String>)>;

pub struct PmiHost {
    server: PmiServer,
    mode: Mode,
    size: u32,
    conns: FxMap<ConnId, Conn>,
    next_conn: ConnId,
    listener: Option<mio::net::TcpListener>,
    port: u16,
    /// Connections with unread input left by the read budget.
    more: Vec<ConnId>,
    /// The read buffer, kept: zeroing a fresh one per read was most of the daemon's
    /// instructions per request.
    buf: Vec<u8>,
    local_count: usize,
    /// `--pmi-port` connections refused because another user's process made them.
    refused: usize,
}

/// Who made a `--pmi-port` connection (the listener is IPv4 loopback only).
#[derive(Debug, PartialEq, Eq)]
enum Peer {
    /// A process of this daemon's tree: one of its ranks or their descendants.
    Job,
    /// Another user's process.
    OtherUser(u32),
    /// The job's user, but no process of this job (another job, a stray shell).
    Stranger,
}

/// Finds the peer's socket in `/proc/net/tcp` (its `uid` column is the socket's owner) and then
/// its holder among this daemon's descendants. Unknown (no such row) counts as the job's: the
/// kernel always lists a live connection, so that is a connection already gone.
fn classify_peer(peer: std::net::SocketAddr, me: std::net::SocketAddr) -> Peer {
    let (std::net::SocketAddr::V4(p), std::net::SocketAddr::V4(m)) = (peer, me) else { return Peer::Job };
    let hex = |a: std::net::SocketAddrV4| format!("{:08X}:{:04X}", u32::from_ne_bytes(a.ip().octets()), a.port());
    let (local, remote) = (hex(p), hex(m));
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else { return Peer::Job };
    let row = table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 9 && f[1] == local && f[2] == remote).then(|| Some((f[7].parse::<u32>().ok()?, f[9].parse::<u64>().ok()?))).flatten()
    });
    let Some((uid, inode)) = row else { return Peer::Job };
    // SAFETY: getuid(2) cannot fail.
    if uid != unsafe { libc::getuid() } {
        Peer::OtherUser(uid)
    } else if crate::proctree::descendant_holds_socket(inode) {
        Peer::Job
    } else {
        Peer::Stranger
    }
}

impl PmiHost {
    /// `PMI_PORT` mode opens the listener here, so a failure is reported before any rank starts.
    pub fn new(job: JobInfo, mode: Mode, registry: &Registry) -> io::Result<Self> {
        let size = job.size;
        let local_count = job.local_ranks.len();
        let mut host = PmiHost {
            server: PmiServer::new(job),
            mode,
            size,
            conns: FxMap::default(),
            next_conn: 0,
            listener: None,
            port: 0,
            more: Vec::new(),
            buf: vec![0; READ_CHUNK],
            local_count,
            refused: 0,
        };
        if mode == Mode::Port {
            let mut l = mio::net::TcpListener::bind("127.0.0.1:0".parse().expect("literal address"))?;
            host.port = l.local_addr()?.port();
            registry.register(&mut l, crate::token::pmi(LISTENER_TOKEN), Interest::READABLE)?;
            host.listener = Some(l);
        }
        Ok(host)
    }

    /// Sets up `rank`'s PMI environment on `cmd`. Keep the returned value alive until
    /// `cmd.spawn()` returned, then drop it.
    #[cfg(test)]
    pub fn prepare(&mut self, rank: u32, cmd: &mut std::process::Command, registry: &Registry) -> io::Result<Prepared> {
        let (env, prepared) = self.prepare_env(rank, registry)?;
        for (k, v) in env {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        prepared.apply(cmd);
        Ok(prepared)
    }

    /// `rank`'s PMI environment. Keep the returned [`Prepared`] alive until the rank is spawned
    /// (with [`Prepared::apply`] on its command), then drop it.
    pub fn prepare_env(&mut self, rank: u32, registry: &Registry) -> io::Result<(EnvOps, Prepared)> {
        // Another launcher's variables (rlaunch started under srun or mpiexec) must not lead the
        // client to the wrong server.
        let mut env: EnvOps =
            ["PMI_FD", "PMI_PORT", "PMI_ID", "PMI_SPAWNED", "PMI_JOBID", "PMI_RANK", "PMI_SIZE"].iter().map(|k| (k.to_string(), None)).collect();
        let mut set = |k: &str, v: String| env.push((k.to_string(), Some(v)));
        set("PMI_RANK", rank.to_string());
        set("PMI_SIZE", self.size.to_string());
        set("PMI_JOBID", self.server.kvsname().to_string());
        match self.mode {
            Mode::Port => {
                set("PMI_PORT", format!("127.0.0.1:{}", self.port));
                set("PMI_ID", rank.to_string());
                Ok((env, Prepared { child_end: None }))
            }
            Mode::Fd => {
                let (mine, theirs) = std::os::unix::net::UnixStream::pair()?;
                mine.set_nonblocking(true)?;
                set("PMI_FD", theirs.as_raw_fd().to_string());
                let conn = self.add_conn(Sock::Unix(mio::net::UnixStream::from_std(mine)), registry)?;
                self.server.connect(conn, Some(rank));
                Ok((env, Prepared { child_end: Some(theirs) }))
            }
        }
    }

    fn add_conn(&mut self, mut sock: Sock, registry: &Registry) -> io::Result<ConnId> {
        let conn = self.next_conn;
        self.next_conn += 1;
        registry.register(sock.source(), Self::token(conn), Interest::READABLE)?;
        self.conns.insert(conn, Conn { sock, out: Vec::new(), off: 0, more: false, watch_write: false });
        Ok(conn)
    }

    fn token(conn: ConnId) -> Token {
        crate::token::pmi(LISTENER_TOKEN + 1 + conn as usize)
    }

    /// A readiness event on a PMI token. Returns the actions the daemon must carry out (replies
    /// are already written or queued). `closed`: the event says the peer hung up or errored, so
    /// the socket is read to its end.
    pub fn on_event(&mut self, token: Token, readable: bool, writable: bool, closed: bool, registry: &Registry) -> Vec<Action> {
        let crate::token::Source::Pmi(k) = crate::token::classify(token) else { return Vec::new() };
        if k == LISTENER_TOKEN {
            return self.accept(registry);
        }
        let conn = (k - LISTENER_TOKEN - 1) as ConnId;
        let mut out = Vec::new();
        if writable {
            self.flush(conn, registry, &mut out);
        }
        if readable || closed {
            self.read(conn, closed, registry, &mut out);
        }
        out
    }

    /// Whether some connection still holds unread input (call [`PmiHost::read_more`] soon).
    pub fn more(&self) -> bool {
        !self.more.is_empty()
    }

    /// Continues reads cut short by the budget.
    pub fn read_more(&mut self, registry: &Registry) -> Vec<Action> {
        let mut out = Vec::new();
        for conn in std::mem::take(&mut self.more) {
            self.read(conn, false, registry, &mut out);
        }
        out
    }

    /// Fence `seq` completed across the job.
    pub fn fence_done(&mut self, seq: u64, puts: Vec<(String, String)>, registry: &Registry) -> Vec<Action> {
        let actions = self.server.fence_done(seq, puts);
        self.perform(actions, registry)
    }

    /// `rank` was reaped: whatever it wrote before exiting is read now, so its abort or its
    /// closing is known before its exit status is reported.
    pub fn rank_exited(&mut self, rank: u32, registry: &Registry) -> Vec<Action> {
        let conns: Vec<ConnId> = self.conns.keys().copied().filter(|&c| self.server.rank_of(c) == Some(rank)).collect();
        let mut out = Vec::new();
        for c in conns {
            self.read(c, true, registry, &mut out);
        }
        out
    }

    /// See [`PmiServer::set_lazy`].
    pub fn set_lazy(&mut self, lazy: bool) {
        self.server.set_lazy(lazy);
    }

    /// This node's value of `key`, for another node's fetch.
    pub fn lookup(&self, key: &str) -> Option<&str> {
        self.server.lookup(key)
    }

    /// The answer to a [`Action::Fetch`].
    pub fn fetched(&mut self, key: String, value: Option<String>, registry: &Registry) -> Vec<Action> {
        let actions = self.server.fetched(key, value);
        self.perform(actions, registry)
    }

    #[cfg(test)]
    fn is_bound(&self, rank: u32) -> bool {
        self.conns.keys().any(|&c| self.server.rank_of(c) == Some(rank))
    }

    #[cfg(test)]
    fn is_initialized(&self, rank: u32) -> bool {
        self.server.is_initialized(rank)
    }

    /// Takes the waiting connections; a refusal is said once (through the front end's reporter,
    /// as a warning), the count of later ones is not.
    fn accept(&mut self, registry: &Registry) -> Vec<Action> {
        let mut out = Vec::new();
        loop {
            let Some(l) = self.listener.as_ref() else { return out };
            match l.accept() {
                Ok((s, peer)) => {
                    let who = s.local_addr().map_or(Peer::Job, |me| classify_peer(peer, me));
                    if who != Peer::Job {
                        // Not the job's: dropped, never a job abort; said once.
                        if self.refused == 0 {
                            let whose = match who {
                                Peer::OtherUser(uid) => format!("uid {uid} (not the job's user)"),
                                _ => "a process that is none of this node's ranks or their descendants".to_string(),
                            };
                            out.push(Action::Warning { rank: None, message: format!("refused a --pmi-port connection from {whose}") });
                        }
                        self.refused += 1;
                        continue;
                    }
                    if self.conns.len() >= self.local_count + EXTRA_PORT_CONNS {
                        // Dropping closes it: more connections than ranks is not a PMI client.
                        continue;
                    }
                    if let Ok(conn) = self.add_conn(Sock::Tcp(s), registry) {
                        self.server.connect(conn, None);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return out,
            }
        }
    }

    /// `--pmi-port`: once every local rank has named itself on a connection, nobody else may
    /// connect; the listener is closed.
    fn close_listener_when_all_named(&mut self, registry: &Registry) {
        if self.listener.is_none() {
            return;
        }
        let named: std::collections::HashSet<u32> = self.conns.keys().filter_map(|&c| self.server.rank_of(c)).collect();
        if named.len() >= self.local_count {
            if let Some(mut l) = self.listener.take() {
                let _ = registry.deregister(&mut l);
            }
        }
    }

    /// Reads what the rank wrote. Without `to_end` a short read ends it: the socket was empty
    /// then, and later data raises a new edge. A hang-up does not raise one when it came with the
    /// data, hence `to_end` when the event reported it, and after the rank was reaped.
    fn read(&mut self, conn: ConnId, to_end: bool, registry: &Registry, out: &mut Vec<Action>) {
        let mut buf = std::mem::take(&mut self.buf);
        self.read_with(conn, to_end, &mut buf, registry, out);
        self.buf = buf;
    }

    fn read_with(&mut self, conn: ConnId, to_end: bool, buf: &mut [u8], registry: &Registry, out: &mut Vec<Action>) {
        let mut total = 0;
        loop {
            let Some(c) = self.conns.get_mut(&conn) else { return };
            c.more = false;
            match c.sock.read(buf) {
                Ok(0) => {
                    self.close(conn, registry, out);
                    return;
                }
                Ok(n) => {
                    total += n;
                    let actions = self.server.input(conn, &buf[..n]);
                    let rest = self.perform(actions, registry);
                    out.extend(rest);
                    self.close_listener_when_all_named(registry);
                    if n < buf.len() && !to_end {
                        // Not asking again saves a syscall per request, a good part of the
                        // daemon's cost of a PMI-1 get.
                        return;
                    }
                    if total >= READ_BUDGET {
                        if let Some(c) = self.conns.get_mut(&conn) {
                            c.more = true;
                            self.more.push(conn);
                        }
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // A reset is the rank going away, like EOF.
                Err(_) => {
                    self.close(conn, registry, out);
                    return;
                }
            }
        }
    }

    fn close(&mut self, conn: ConnId, registry: &Registry, out: &mut Vec<Action>) {
        if let Some(mut c) = self.conns.remove(&conn) {
            let _ = registry.deregister(c.sock.source());
        }
        self.more.retain(|&c| c != conn);
        out.extend(self.server.disconnect(conn));
    }

    /// Writes `Send`s, one write per connection however many replies it got in a row, returns
    /// the rest.
    fn perform(&mut self, actions: Vec<Action>, registry: &Registry) -> Vec<Action> {
        let mut rest = Vec::new();
        let mut unflushed: Option<ConnId> = None;
        for a in actions {
            match a {
                Action::Send { conn, bytes } => {
                    if let Some(prev) = unflushed.filter(|&p| p != conn) {
                        self.flush(prev, registry, &mut rest);
                    }
                    let Some(c) = self.conns.get_mut(&conn) else { continue };
                    if c.off > 0 && c.off == c.out.len() {
                        c.out.clear();
                        c.off = 0;
                    }
                    c.out.extend_from_slice(&bytes);
                    unflushed = Some(conn);
                }
                other => rest.push(other),
            }
        }
        if let Some(conn) = unflushed {
            self.flush(conn, registry, &mut rest);
        }
        rest
    }

    fn flush(&mut self, conn: ConnId, registry: &Registry, out: &mut Vec<Action>) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        while c.off < c.out.len() {
            match c.sock.write(&c.out[c.off..]) {
                Ok(0) => break,
                Ok(n) => c.off += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    // The rank closed its end: nobody reads the replies. Its EOF comes by read.
                    c.out.clear();
                    c.off = 0;
                    break;
                }
            }
        }
        let waiting = c.off < c.out.len();
        if waiting != c.watch_write {
            let interest = if waiting { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
            if registry.reregister(c.sock.source(), Self::token(conn), interest).is_ok() {
                c.watch_write = waiting;
            }
        }
        if c.out.len() - c.off > MAX_QUEUED_OUT {
            // Never read its replies: treat it as gone rather than grow without bound.
            self.close(conn, registry, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::FromRawFd;

    fn job(size: u32, local: &[u32]) -> JobInfo {
        JobInfo {
            kvsname: "rl-host".into(),
            size,
            universe_size: size,
            appnum_of: vec![0; size as usize],
            local_ranks: local.to_vec(),
            process_mapping: Some(format!("(vector,(0,1,{size}))")),
            node_count: 1,
        }
    }

    fn env_of(cmd: &std::process::Command, key: &str) -> Option<String> {
        cmd.get_envs().find(|(k, _)| *k == key).and_then(|(_, v)| v.map(|v| v.to_string_lossy().into_owned()))
    }

    fn poll_until<F: FnMut(&mut PmiHost, &mio::Poll) -> bool>(host: &mut PmiHost, poll: &mut mio::Poll, mut f: F) -> Vec<Action> {
        let mut events = mio::Events::with_capacity(64);
        let mut all = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !f(host, poll) {
            assert!(std::time::Instant::now() < deadline, "timed out; actions so far {all:?}");
            poll.poll(&mut events, Some(std::time::Duration::from_millis(50))).unwrap();
            for ev in events.iter() {
                all.extend(host.on_event(ev.token(), ev.is_readable(), ev.is_writable(), ev.is_read_closed() || ev.is_error(), poll.registry()));
            }
            all.extend(host.read_more(poll.registry()));
        }
        all
    }

    #[test]
    fn fd_mode_sets_the_environment_and_serves_the_socket() {
        let mut poll = mio::Poll::new().unwrap();
        let mut host = PmiHost::new(job(2, &[0, 1]), Mode::Fd, poll.registry()).unwrap();
        let mut cmd = std::process::Command::new("true");
        cmd.env("PMI_PORT", "stale:1");
        let prepared = host.prepare(1, &mut cmd, poll.registry()).unwrap();
        assert_eq!(env_of(&cmd, "PMI_RANK").as_deref(), Some("1"));
        assert_eq!(env_of(&cmd, "PMI_SIZE").as_deref(), Some("2"));
        assert_eq!(env_of(&cmd, "PMI_JOBID").as_deref(), Some("rl-host"));
        assert_eq!(env_of(&cmd, "PMI_PORT"), None, "another launcher's PMI_PORT is removed");
        let fd: RawFd = env_of(&cmd, "PMI_FD").unwrap().parse().unwrap();
        // Play the client on the child's end (a dup, so dropping `prepared` is harmless).
        let dup = unsafe { libc::dup(fd) };
        assert!(dup >= 0);
        drop(prepared);
        let mut client = unsafe { std::os::unix::net::UnixStream::from_raw_fd(dup) };
        client.write_all(b"cmd=init pmi_version=1 pmi_subversion=1\ncmd=barrier_in\n").unwrap();
        let actions = poll_until(&mut host, &mut poll, |h, _| h.is_initialized(1));
        assert!(actions.iter().any(|a| matches!(a, Action::Initialized { rank: 1, .. })), "{actions:?}");
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while !got.ends_with(b"rc=0\n") {
            let n = client.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, b"cmd=response_to_init pmi_version=1 pmi_subversion=1 rc=0\n");
        drop(client);
        // EOF after init without finalize: the engine says so.
        let actions = poll_until(&mut host, &mut poll, |h, _| h.conns.is_empty());
        assert!(actions.iter().any(|a| matches!(a, Action::Vanished { rank: 1, .. })), "{actions:?}");
    }

    #[test]
    fn port_mode_names_the_rank_by_initack() {
        let mut poll = mio::Poll::new().unwrap();
        let mut host = PmiHost::new(job(4, &[2, 3]), Mode::Port, poll.registry()).unwrap();
        let mut cmd = std::process::Command::new("true");
        cmd.env("PMI_FD", "9");
        let _p = host.prepare(3, &mut cmd, poll.registry()).unwrap();
        assert_eq!(env_of(&cmd, "PMI_FD"), None, "another launcher's PMI_FD is removed");
        assert_eq!(env_of(&cmd, "PMI_ID").as_deref(), Some("3"));
        let port = env_of(&cmd, "PMI_PORT").unwrap();
        assert!(port.starts_with("127.0.0.1:"), "{port}");
        let mut client = std::net::TcpStream::connect(&port).unwrap();
        client.set_nonblocking(true).unwrap();
        client.write_all(b"cmd=initack pmiid=3\n").unwrap();
        let want = "cmd=initack\ncmd=set size=4\ncmd=set rank=3\ncmd=set debug=0\n";
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        poll_until(&mut host, &mut poll, |_, _| {
            if let Ok(n) = client.read(&mut buf) {
                got.extend_from_slice(&buf[..n]);
            }
            got.len() >= want.len()
        });
        assert_eq!(String::from_utf8_lossy(&got), want);
    }

    /// Issue 14 item 6: once every local rank has named itself, the `--pmi-port` listener closes.
    #[test]
    fn port_mode_closes_the_listener_once_every_local_rank_connected() {
        let mut poll = mio::Poll::new().unwrap();
        let mut host = PmiHost::new(job(4, &[2, 3]), Mode::Port, poll.registry()).unwrap();
        let mut cmd = std::process::Command::new("true");
        let _p = host.prepare(3, &mut cmd, poll.registry()).unwrap();
        let port = env_of(&cmd, "PMI_PORT").unwrap();
        let mut clients = Vec::new();
        for id in [2, 3] {
            let mut c = std::net::TcpStream::connect(&port).unwrap();
            c.write_all(format!("cmd=initack pmiid={id}\n").as_bytes()).unwrap();
            clients.push(c);
            poll_until(&mut host, &mut poll, |h, _| h.is_bound(id));
        }
        assert!(host.listener.is_none(), "the listener is closed");
        // Nobody reaches the server any more. The freed port may be another process's by now
        // (tests run side by side), so a connect that succeeds must not become ours.
        let before = host.conns.len();
        let late = std::net::TcpStream::connect(&port);
        let mut events = mio::Events::with_capacity(8);
        poll.poll(&mut events, Some(std::time::Duration::from_millis(100))).unwrap();
        for ev in events.iter() {
            host.on_event(ev.token(), ev.is_readable(), ev.is_writable(), ev.is_read_closed() || ev.is_error(), poll.registry());
        }
        assert_eq!(host.conns.len(), before, "a connection after the close reached the server (connect: {late:?})");
    }

    /// Issue 14 item 6: a `--pmi-port` connection from another user's process is dropped, and
    /// the job goes on (root only: the other user is made with setpriv).
    #[test]
    fn port_mode_refuses_another_users_connection() {
        if unsafe { libc::getuid() } != 0 || !std::path::Path::new("/usr/bin/setpriv").exists() {
            return;
        }
        let mut poll = mio::Poll::new().unwrap();
        let mut host = PmiHost::new(job(4, &[2, 3]), Mode::Port, poll.registry()).unwrap();
        let mut cmd = std::process::Command::new("true");
        let _p = host.prepare(3, &mut cmd, poll.registry()).unwrap();
        let port = env_of(&cmd, "PMI_PORT").unwrap().rsplit(':').next().unwrap().to_string();
        let code = format!("exec 3<>/dev/tcp/127.0.0.1/{port}; echo 'cmd=initack pmiid=3' >&3; cat <&3 > /dev/null 2>&1; echo closed");
        let mut other = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "bash", "-c", &code])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        poll_until(&mut host, &mut poll, |h, _| h.refused == 1);
        let mut out = String::new();
        other.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        assert_eq!(out, "closed\n", "the connection is closed at once");
        other.wait().unwrap();
        assert!(host.conns.is_empty() && !host.is_initialized(3), "rank 3's place is still free");
    }

    /// Issue 14 item 6: the job's user, but a process outside the daemon's tree (another job, a
    /// stray shell) cannot take a rank's place either.
    #[test]
    fn port_mode_refuses_a_process_outside_the_job() {
        let mut poll = mio::Poll::new().unwrap();
        let mut host = PmiHost::new(job(4, &[2, 3]), Mode::Port, poll.registry()).unwrap();
        let mut cmd = std::process::Command::new("true");
        let _p = host.prepare(3, &mut cmd, poll.registry()).unwrap();
        let port = env_of(&cmd, "PMI_PORT").unwrap().rsplit(':').next().unwrap().to_string();
        // The outer shell exits at once: the connecting one is nobody's descendant here.
        let dir = std::env::temp_dir().join(format!("rlaunch-stranger-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let done = dir.join("closed");
        let code = format!("(exec 3<>/dev/tcp/127.0.0.1/{port}; echo 'cmd=initack pmiid=3' >&3; cat <&3 > /dev/null 2>&1; touch {}) &", done.display());
        std::process::Command::new("bash").args(["-c", &code]).status().unwrap();
        let said = poll_until(&mut host, &mut poll, |h, _| h.refused == 1);
        let warning = Action::Warning { rank: None, message: "refused a --pmi-port connection from a process that is none of this node's ranks or their descendants".into() };
        assert_eq!(said, vec![warning], "said once, through the front end's reporter");
        let closed = (0..500).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(10));
            done.exists()
        });
        let _ = std::fs::remove_dir_all(&dir);
        assert!(closed, "the stranger's connection is closed at once");
        assert!(host.conns.is_empty() && !host.is_initialized(3), "rank 3's place is still free");
    }

    /// Sockets are watched for writability only while replies wait for room: a rank that reads
    /// its replies late still gets every one of them, in order.
    #[test]
    fn replies_that_do_not_fit_the_socket_are_written_when_the_rank_reads() {
        let mut poll = mio::Poll::new().unwrap();
        let mut host = PmiHost::new(job(1, &[0]), Mode::Fd, poll.registry()).unwrap();
        let mut cmd = std::process::Command::new("true");
        let prepared = host.prepare(0, &mut cmd, poll.registry()).unwrap();
        let fd: RawFd = env_of(&cmd, "PMI_FD").unwrap().parse().unwrap();
        let dup = unsafe { libc::dup(fd) };
        assert!(dup >= 0);
        drop(prepared);
        let client = unsafe { std::os::unix::net::UnixStream::from_raw_fd(dup) };
        // Far more reply bytes than a socketpair buffers, all asked for before reading any.
        const N: usize = 40_000;
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = done.clone();
        let rank = std::thread::spawn(move || {
            let mut w = &client;
            let mut all = Vec::new();
            for i in 0..N {
                all.extend_from_slice(format!("cmd=get kvsname=rl-host key=k{i}\n").as_bytes());
            }
            w.write_all(&all).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(200));
            let mut got = Vec::new();
            let mut buf = [0u8; 64 * 1024];
            let mut r = &client;
            while got.iter().filter(|&&b| b == b'\n').count() < N {
                let n = r.read(&mut buf).unwrap();
                assert!(n > 0, "the daemon closed the connection");
                got.extend_from_slice(&buf[..n]);
            }
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            // The socket stays open: its EOF would close the connection under the test.
            (String::from_utf8(got).unwrap(), client)
        });
        poll_until(&mut host, &mut poll, |_, _| done.load(std::sync::atomic::Ordering::SeqCst));
        let (got, _client) = rank.join().unwrap();
        let lines: Vec<&str> = got.lines().collect();
        assert_eq!(lines.len(), N);
        for (i, l) in lines.iter().enumerate() {
            assert_eq!(*l, format!("cmd=get_result rc=-1 msg=key_k{i}_not_found value=unknown"));
        }
        assert!(!host.conns[&0].watch_write, "writability is no longer watched once all is written");
    }

    #[test]
    fn fd_survives_exec_only_in_its_own_child() {
        // Real execs: rank 1 can write to its PMI_FD, and rank 0's end (still open here, as it
        // would be while the daemon starts the next rank) did not leak into rank 1.
        let poll = mio::Poll::new().unwrap();
        let mut host = PmiHost::new(job(2, &[0, 1]), Mode::Fd, poll.registry()).unwrap();
        let mut cmd0 = std::process::Command::new("true");
        let p0 = host.prepare(0, &mut cmd0, poll.registry()).unwrap();
        let fd0 = env_of(&cmd0, "PMI_FD").unwrap();
        // bash: dash cannot redirect to a descriptor above 9.
        let mut cmd = std::process::Command::new("bash");
        let script = format!("printf 'cmd=get_maxes\\n' >&$PMI_FD && if [ -e /proc/$$/fd/{fd0} ]; then echo leaked; else echo ok; fi");
        cmd.args(["-c", &script]);
        let p1 = host.prepare(1, &mut cmd, poll.registry()).unwrap();
        let out = cmd.output().unwrap();
        drop((p0, p1));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n", "{}", String::from_utf8_lossy(&out.stderr));
        let c = host.conns.get_mut(&1).unwrap();
        let mut buf = [0u8; 64];
        let n = c.sock.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"cmd=get_maxes\n");
    }
}
