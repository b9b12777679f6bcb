//! Starting daemons over ssh in-process, with libssh2 (the `ssh2` crate) instead of an `ssh` child.
//!
//! One thread per node owns the session and does blocking I/O while it connects and
//! authenticates, then polls the socket with a short tick so a kill is honoured promptly. The
//! daemon's stderr is copied into an OS pipe, so the front end polls it like a child's stderr; a
//! failure to reach the node becomes one line in that pipe naming the node, then status 255.
//!
//! Host keys follow what `ssh` does by default when it cannot ask anybody (BatchMode): a known host
//! with a different key of the same type is refused, and so is an unknown host unless
//! [`UnknownHostKey::Accept`] is chosen. The front end has no terminal to ask on per node (and 256
//! prompts would help nobody), and silently trusting a new key would make a one-time typo in a
//! hostfile a lasting man-in-the-middle opening; clusters usually ship `/etc/ssh/ssh_known_hosts`,
//! and the refusal says how to add a key. Accepting never writes a file: a launcher that edits the
//! user's known_hosts behind their back surprises people.

use super::common::{remote_command, DaemonProcess, KillSwitch, Notify, PhaseClock, StartError, Waiter};
use crate::nodes::Node;
use base64::Engine as _;
use ssh2::{Channel, CheckResult, ErrorCode, KnownHostFileKind, MethodType, Session};
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// What to do with a host whose key is in no known_hosts file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum UnknownHostKey {
    /// Like `ssh -o BatchMode=yes` with the default `StrictHostKeyChecking=ask`: refuse.
    #[default]
    Refuse,
    /// Like `StrictHostKeyChecking=accept-new`, except that nothing is written.
    Accept,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SshOptions {
    pub port: u16,
    /// Bounds the TCP connect and each blocking step of the handshake and authentication.
    pub connect_timeout: Duration,
    /// Used when the node has no `user@`; else the local user name, as `ssh` does.
    pub user: Option<String>,
    /// Tried after the agent and before `~/.ssh/id_*`.
    pub identity: Option<PathBuf>,
    /// Only `identity` is tried, as `IdentitiesOnly yes` (no agent, no default keys).
    pub identities_only: bool,
    /// Used instead of the default files (`~/.ssh/known_hosts{,2}`, `/etc/ssh/ssh_known_hosts{,2}`),
    /// as `UserKnownHostsFile=FILE GlobalKnownHostsFile=/dev/null` would.
    pub known_hosts: Option<PathBuf>,
    pub unknown_host: UnknownHostKey,
}

impl Default for SshOptions {
    fn default() -> Self {
        SshOptions {
            port: 22,
            connect_timeout: Duration::from_secs(10),
            user: None,
            identity: None,
            identities_only: false,
            known_hosts: None,
            unknown_host: UnknownHostKey::Refuse,
        }
    }
}

/// Status reported when the node could not be reached, as `ssh` itself exits with.
pub const CONNECT_FAILED: i32 = 255;
/// Status reported after `kill`: what a killed `ssh` child would report (128 + SIGKILL).
const KILLED: i32 = 128 + 9;
/// How long the session thread sleeps at most while the daemon runs. A kill, a stdin write and
/// the socket all wake it at once; the tick only bounds a wait that none of them would end (a
/// libssh2 state this code did not foresee), so it can be long.
const TICK: Duration = Duration::from_secs(1);

/// Starts `daemon_path __daemon` on `node` over ssh and returns at once; a thread does the rest.
/// The thread calls `notify` once it has ended, however it ends, after sending its exit status.
pub fn start(opts: &SshOptions, node: &Node, daemon_path: &str, bootstrap: &str, notify: Notify) -> Result<DaemonProcess, StartError> {
    let fail = |source: io::Error| StartError::Ssh { node: node.name.clone(), source };
    let (err_r, err_w) = pipe(false).map_err(fail)?;
    // Non-blocking both ways: a writer never waits on the session thread, which drains it itself.
    let (wake_r, wake_w) = pipe(true).map_err(fail)?;
    let kill_wake = File::from(wake_w.try_clone().map_err(fail)?);
    let (status_tx, status_rx) = mpsc::channel();
    let (kill_tx, kill_rx) = mpsc::channel::<()>();
    let (stdin_tx, stdin_rx) = mpsc::channel::<Vec<u8>>();
    let job = Job {
        node: node.name.clone(),
        user: node.user.clone().or_else(|| opts.user.clone()).or_else(|| local_user().0).unwrap_or_else(|| "root".into()),
        opts: opts.clone(),
        daemon_path: daemon_path.to_string(),
        bootstrap: bootstrap.as_bytes().to_vec(),
        err: ErrSink(Some(File::from(err_w))),
        kill: kill_rx,
        stdin: stdin_rx,
        wake: File::from(wake_r),
        phases: PhaseClock::default(),
    };
    let phases = job.phases.clone();
    std::thread::Builder::new()
        .name(format!("ssh-{}", node.name))
        .spawn(move || {
            // Locals drop in reverse order: the sender goes first, then notify runs, so even a
            // panicking session wakes its caller to a waiter that reads the end (as status -1).
            let _wake = CallOnDrop(notify);
            let status = status_tx;
            job.phases.mark(|p| &mut p.began);
            let code = job.run();
            let _ = status.send(code);
        })
        .map_err(fail)?;
    Ok(DaemonProcess {
        waiter: Waiter::Thread { status: status_rx, kill: Some(KillSwitch::new(kill_tx, kill_wake)), done: None },
        stdin: Some(Box::new(SshStdin { tx: Some(stdin_tx), wake: File::from(wake_w) })),
        stderr: Some(err_r),
        phases: Some(phases),
    })
}

/// Calls its hook when dropped: the session thread's last act, on every way out of it.
struct CallOnDrop(Notify);

impl Drop for CallOnDrop {
    fn drop(&mut self) {
        (self.0)();
    }
}

/// The daemon's stdin as seen from the front end: bytes are queued for the session thread, and
/// dropping it sends EOF on the channel, as closing a child's stdin pipe would.
struct SshStdin {
    tx: Option<mpsc::Sender<Vec<u8>>>,
    wake: File,
}

impl Write for SshStdin {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let tx = self.tx.as_ref().ok_or_else(|| io::Error::from(io::ErrorKind::BrokenPipe))?;
        tx.send(buf.to_vec()).map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the ssh session has ended"))?;
        let _ = (&self.wake).write(&[1]);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for SshStdin {
    fn drop(&mut self) {
        self.tx = None;
        let _ = (&self.wake).write(&[1]);
    }
}

fn pipe(nonblocking: bool) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    let flags = libc::O_CLOEXEC | if nonblocking { libc::O_NONBLOCK } else { 0 };
    // SAFETY: pipe2 fills both slots on success; each fd is then owned exactly once.
    unsafe {
        if libc::pipe2(fds.as_mut_ptr(), flags) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])))
    }
}

/// The local user's name and home directory from the password database, as `ssh` uses them
/// (not `$HOME`, which may point elsewhere under sudo).
fn local_user() -> (Option<String>, Option<PathBuf>) {
    let mut buf = vec![0 as libc::c_char; 16384];
    // SAFETY: getpwuid_r writes into `pw` and `buf` only; strings are read before `buf` drops.
    unsafe {
        let mut pw: libc::passwd = std::mem::zeroed();
        let mut out: *mut libc::passwd = std::ptr::null_mut();
        if libc::getpwuid_r(libc::getuid(), &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) != 0 || out.is_null() {
            return (None, std::env::var_os("HOME").map(PathBuf::from));
        }
        let s = |p: *const libc::c_char| {
            (!p.is_null()).then(|| std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()).filter(|s| !s.is_empty())
        };
        (s(pw.pw_name), s(pw.pw_dir).map(PathBuf::from).or_else(|| std::env::var_os("HOME").map(PathBuf::from)))
    }
}

/// Where the daemon's stderr and our own failure lines go; a reader that went away is not an
/// error worth stopping the session for.
struct ErrSink(Option<File>);

impl ErrSink {
    fn put(&mut self, data: &[u8]) {
        if let Some(f) = self.0.as_mut() {
            if f.write_all(data).is_err() {
                self.0 = None;
            }
        }
    }
    fn line(&mut self, text: &str) {
        self.put(format!("{text}\n").as_bytes());
    }
}

/// The parsed known_hosts files of one set of paths. Shared by every session of this process:
/// each node's thread would otherwise read and parse the same files, which with a cluster-wide
/// file of thousands of lines costs more than the key exchange itself.
struct KnownHosts {
    names: Vec<String>,
    entries: Vec<KnownEntry>,
}

/// What a file looked like when it was parsed (device, inode, mtime, size): a file that changed
/// is parsed again.
type Stamp = Option<(u64, u64, i64, i64, u64)>;

fn stamp(p: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino(), m.mtime(), m.mtime_nsec(), m.len()))
}

/// By the files looked at (and whether they were named by the user), the last parse of them.
type KnownHostsCache = Vec<(Vec<(PathBuf, Stamp)>, bool, Arc<KnownHosts>)>;
static KNOWN_HOSTS: Mutex<KnownHostsCache> = Mutex::new(Vec::new());

/// The parsed known_hosts `paths` (`explicit`: named by the user, so an unreadable one is said),
/// from the cache while none of the files changed.
fn known_hosts_of(paths: &[PathBuf], explicit: bool) -> Arc<KnownHosts> {
    let key: Vec<(PathBuf, Stamp)> = paths.iter().map(|p| (p.clone(), stamp(p))).collect();
    // Held while parsing: the other nodes' threads wait for this parse instead of repeating it.
    let mut cache = KNOWN_HOSTS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, _, kh)) = cache.iter().find(|(k, x, _)| *k == key && *x == explicit) {
        return kh.clone();
    }
    let mut names = Vec::new();
    let mut entries = Vec::new();
    for (p, _) in &key {
        let name = p.display().to_string();
        // A missing file is the normal case for most of the defaults; say which were looked at.
        if let Ok(text) = std::fs::read_to_string(p) {
            entries.extend(parse_known_hosts(&text, &name));
            names.push(name);
        } else if explicit {
            names.push(format!("{name} (unreadable)"));
        }
    }
    let kh = Arc::new(KnownHosts { names, entries });
    cache.retain(|(k, x, _)| !(*x == explicit && k.iter().map(|(p, _)| p).eq(key.iter().map(|(p, _)| p))));
    cache.push((key, explicit, kh.clone()));
    kh
}

struct Job {
    node: String,
    user: String,
    opts: SshOptions,
    daemon_path: String,
    bootstrap: Vec<u8>,
    err: ErrSink,
    kill: mpsc::Receiver<()>,
    stdin: mpsc::Receiver<Vec<u8>>,
    wake: File,
    phases: PhaseClock,
}

/// A connected, authenticated session running the daemon.
struct Running {
    sess: Session,
    chan: Channel,
    fd: RawFd,
    addr: SocketAddr,
}

enum Ended {
    Exited(i32),
    Killed,
    Lost(String),
}

impl Job {
    fn run(mut self) -> i32 {
        let running = match self.open() {
            Ok(r) => r,
            Err(reason) => {
                self.err.line(&reason);
                return CONNECT_FAILED;
            }
        };
        let ended = self.pump(&running);
        let _ = running.sess.disconnect(None, "rlaunch is done", None);
        match ended {
            Ended::Exited(code) => {
                if let Some(why) = exit_explanation(code, &self.node, &self.daemon_path) {
                    self.err.line(&why);
                }
                code
            }
            Ended::Killed => KILLED,
            Ended::Lost(why) => {
                self.err.line(&format!("ssh connection to {} ({}) lost: {why}", self.node, running.addr));
                CONNECT_FAILED
            }
        }
    }

    fn killed(&self) -> bool {
        !matches!(self.kill.try_recv(), Err(mpsc::TryRecvError::Empty))
    }

    /// Connect, handshake, check the host key, authenticate, start the daemon and hand it the
    /// bootstrap line; each failure is the one line the user sees.
    fn open(&mut self) -> Result<Running, String> {
        let node = self.node.clone();
        if node.contains('\0') || self.user.contains('\0') {
            return Err(format!("cannot connect to {}: the host or user name contains a NUL byte", node.escape_debug()));
        }
        let timeout = self.opts.connect_timeout;
        let port = self.opts.port;
        let addrs: Vec<SocketAddr> = match (node.as_str(), port).to_socket_addrs() {
            Ok(a) => a.collect(),
            Err(e) => return Err(format!("cannot resolve host name {node}: {}", io_reason(&e, timeout))),
        };
        let mut last = format!("cannot resolve host name {node}: no address");
        let mut conn = None;
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, timeout) {
                Ok(s) => {
                    conn = Some((s, addr));
                    break;
                }
                Err(e) => last = format!("cannot connect to {node} ({addr}): {}", io_reason(&e, timeout)),
            }
            if self.killed() {
                return Err(format!("connecting to {node} was cancelled"));
            }
        }
        let (tcp, addr) = conn.ok_or(last)?;
        self.phases.mark(|p| &mut p.connected);
        let _ = tcp.set_nodelay(true);
        let fd = tcp.as_raw_fd();
        let ctx = |what: &str, e: &ssh2::Error| -> String {
            if is_timeout(e) {
                format!("no ssh answer from {node} ({addr}) within {} while {what}", secs(timeout))
            } else {
                format!("ssh session with {node} ({addr}) failed while {what}: {}", e.message())
            }
        };
        let mut sess = Session::new().map_err(|e| ctx("setting up", &e))?;
        sess.set_tcp_stream(tcp);
        sess.set_timeout(timeout.as_millis().clamp(1, u32::MAX as u128) as u32);

        let known = self.known_hosts();
        let (files, entries) = (&known.names, &known.entries);
        let ip = addr.ip().to_string();
        let hits: Vec<bool> =
            entries.iter().map(|e| entry_matches(&sess, e, &node, port) || entry_matches(&sess, e, &ip, port)).collect();
        let known_types: Vec<&str> = entries
            .iter()
            .zip(&hits)
            .filter(|(e, hit)| e.marker == Marker::None && **hit)
            .map(|(e, _)| e.key_type.as_str())
            .collect();
        // libssh2 offers ECDSA before Ed25519; a host known only by its Ed25519 key would then
        // look changed. Ask first for the key types we can check, as ssh does.
        if let Ok(supported) = sess.supported_algs(MethodType::HostKey) {
            let _ = sess.method_pref(MethodType::HostKey, &hostkey_prefs(&known_types, &supported));
        }
        sess.handshake().map_err(|e| ctx("exchanging keys", &e))?;

        let Some((blob, _)) = sess.host_key() else {
            return Err(format!("ssh session with {node} ({addr}) failed: the server sent no host key"));
        };
        let fingerprint = sess
            .host_key_hash(ssh2::HashType::Sha256)
            .map(|h| format!("SHA256:{}", base64::engine::general_purpose::STANDARD_NO_PAD.encode(h)))
            .unwrap_or_default();
        match judge(entries, &hits, blob) {
            HostKeyVerdict::Trusted => {}
            HostKeyVerdict::Unknown if self.opts.unknown_host == UnknownHostKey::Accept => {}
            verdict => return Err(host_key_message(&verdict, &node, blob_key_type(blob).unwrap_or("?"), &fingerprint, files)),
        }
        self.phases.mark(|p| &mut p.keys_exchanged);

        self.authenticate(&sess, addr)?;
        self.phases.mark(|p| &mut p.authenticated);

        let mut chan = sess.channel_session().map_err(|e| ctx("opening a channel", &e))?;
        chan.exec(&remote_command(&self.daemon_path)).map_err(|e| ctx("starting the daemon", &e))?;
        self.phases.mark(|p| &mut p.exec_sent);
        chan.write_all(&self.bootstrap)
            .and_then(|_| chan.flush())
            .map_err(|e| format!("cannot send the bootstrap line to the daemon of {node}: {e}"))?;
        self.bootstrap.clear();
        sess.set_blocking(false);
        Ok(Running { sess, chan, fd, addr })
    }

    /// The entries of every known_hosts file in force, and the files' names for messages.
    fn known_hosts(&self) -> Arc<KnownHosts> {
        let paths: Vec<PathBuf> = match &self.opts.known_hosts {
            Some(p) => vec![p.clone()],
            None => {
                let mut v = Vec::new();
                if let Some(home) = local_user().1 {
                    v.push(home.join(".ssh/known_hosts"));
                    v.push(home.join(".ssh/known_hosts2"));
                }
                v.push("/etc/ssh/ssh_known_hosts".into());
                v.push("/etc/ssh/ssh_known_hosts2".into());
                v
            }
        };
        known_hosts_of(&paths, self.opts.known_hosts.is_some())
    }

    /// Agent identities, then the explicit identity, then the default key files, as `ssh` does.
    fn authenticate(&self, sess: &Session, addr: SocketAddr) -> Result<(), String> {
        let user = &self.user;
        let node = &self.node;
        let timeout_msg = || format!("no ssh answer from {node} ({addr}) within {} while authenticating", secs(self.opts.connect_timeout));
        let mut tried: Vec<String> = Vec::new();
        if !self.opts.identities_only {
            if let Ok(mut agent) = sess.agent() {
                if agent.connect().is_ok() && agent.list_identities().is_ok() {
                    let ids = agent.identities().unwrap_or_default();
                    if !ids.is_empty() {
                        tried.push(format!("agent ({} key{})", ids.len(), if ids.len() == 1 { "" } else { "s" }));
                    }
                    for id in ids {
                        match agent.userauth(user, &id) {
                            Ok(()) => return Ok(()),
                            Err(e) if is_timeout(&e) => return Err(timeout_msg()),
                            Err(_) => {}
                        }
                    }
                    let _ = agent.disconnect();
                }
            }
        }
        let mut files: Vec<PathBuf> = self.opts.identity.iter().cloned().collect();
        if !self.opts.identities_only {
            if let Some(home) = local_user().1 {
                for k in ["id_ed25519", "id_ecdsa", "id_rsa"] {
                    files.push(home.join(".ssh").join(k));
                }
            }
        }
        for key in files {
            if !key.exists() {
                if self.opts.identity.as_deref() == Some(key.as_path()) {
                    tried.push(format!("{} (missing)", key.display()));
                }
                continue;
            }
            let public = PathBuf::from(format!("{}.pub", key.display()));
            let public = public.exists().then_some(public);
            match sess.userauth_pubkey_file(user, public.as_deref(), &key, None) {
                Ok(()) => return Ok(()),
                Err(e) if is_timeout(&e) => return Err(timeout_msg()),
                Err(e) if e.code() == ErrorCode::Session(libssh2_sys::LIBSSH2_ERROR_FILE) => {
                    tried.push(format!("{} (unreadable or needs a passphrase: load it into ssh-agent)", key.display()))
                }
                Err(_) => tried.push(key.display().to_string()),
            }
        }
        Err(auth_refused_message(node, user, &tried))
    }

    /// Moves bytes until the daemon's command ends, the connection drops or we are killed.
    fn pump(&mut self, r: &Running) -> Ended {
        let mut chan = r.chan.clone();
        let mut out: Vec<u8> = Vec::new();
        let mut stdin_open = true;
        let mut eof_sent = false;
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            if self.killed() {
                let _ = chan.send_eof();
                let _ = chan.close();
                return Ended::Killed;
            }
            let mut drain = [0u8; 64];
            while matches!((&self.wake).read(&mut drain), Ok(n) if n > 0) {}
            loop {
                match self.stdin.try_recv() {
                    Ok(chunk) => out.extend_from_slice(&chunk),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        stdin_open = false;
                        break;
                    }
                }
            }
            while !out.is_empty() {
                match chan.write(&out) {
                    Ok(n) => {
                        out.drain(..n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    // The daemon closed its stdin or is gone; its exit status says which.
                    Err(_) => {
                        out.clear();
                        stdin_open = false;
                    }
                }
            }
            if out.is_empty() && !stdin_open && !eof_sent {
                match chan.send_eof() {
                    Ok(()) => eof_sent = true,
                    Err(e) if e.code() == ErrorCode::Session(libssh2_sys::LIBSSH2_ERROR_EAGAIN) => {}
                    Err(_) => eof_sent = true,
                }
            }
            // Reading one stream can queue the other's packets inside libssh2, where no socket
            // event announces them: go round until neither stream has anything.
            let mut progress = true;
            while progress {
                progress = false;
                for stream_id in [1, 0] {
                    let mut s = chan.stream(stream_id);
                    loop {
                        match s.read(&mut buf) {
                            Ok(0) => break,
                            // stdout is not the daemon's channel to the front end (that is its TCP link).
                            Ok(n) if stream_id == 1 => {
                                self.err.put(&buf[..n]);
                                progress = true;
                            }
                            Ok(_) => progress = true,
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(e) => return Ended::Lost(e.to_string()),
                        }
                    }
                }
            }
            if chan.eof() {
                return self.finish(r, &mut chan);
            }
            let want_out = !out.is_empty() || matches!(r.sess.block_directions(), ssh2::BlockDirections::Outbound | ssh2::BlockDirections::Both);
            wait(r.fd, want_out, self.wake.as_raw_fd());
        }
    }

    /// After the daemon's EOF: wait for the server's close, which follows its exit status.
    fn finish(&mut self, r: &Running, chan: &mut Channel) -> Ended {
        loop {
            match chan.wait_close() {
                Ok(()) => break,
                Err(e) if e.code() == ErrorCode::Session(libssh2_sys::LIBSSH2_ERROR_EAGAIN) => {}
                Err(e) => return Ended::Lost(e.message().to_string()),
            }
            if self.killed() {
                return Ended::Killed;
            }
            wait(r.fd, false, self.wake.as_raw_fd());
        }
        let signal = chan.exit_signal().ok().and_then(|s| s.exit_signal);
        match signal {
            Some(name) => Ended::Exited(128 + signal_number(&name).unwrap_or(0)),
            None => Ended::Exited(chan.exit_status().unwrap_or(CONNECT_FAILED)),
        }
    }
}

fn wait(sock: RawFd, writable: bool, wake: RawFd) {
    let mut fds = [
        libc::pollfd { fd: sock, events: libc::POLLIN | if writable { libc::POLLOUT } else { 0 }, revents: 0 },
        libc::pollfd { fd: wake, events: libc::POLLIN, revents: 0 },
    ];
    // SAFETY: fds is a valid array of two pollfd for the duration of the call.
    unsafe {
        libc::poll(fds.as_mut_ptr(), 2, TICK.as_millis() as libc::c_int);
    }
}

fn is_timeout(e: &ssh2::Error) -> bool {
    e.code() == ErrorCode::Session(libssh2_sys::LIBSSH2_ERROR_TIMEOUT)
}

fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{} s", s as u64)
    } else {
        format!("{s:.1} s")
    }
}

/// An I/O error as a lowercase fragment: "connection refused", not "Connection refused (os error 111)".
fn io_reason(e: &io::Error, timeout: Duration) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => return "connection refused".into(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => return format!("no answer within {}", secs(timeout)),
        _ => {}
    }
    let text = e.to_string();
    let text = match text.find(" (os error") {
        Some(i) => &text[..i],
        None => &text,
    };
    let mut c = text.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => "unknown error".into(),
    }
}

/// What an exit status of the remote command means when the shell, not the daemon, chose it.
fn exit_explanation(code: i32, node: &str, daemon_path: &str) -> Option<String> {
    match code {
        127 => Some(format!("rlaunch not found on {node} at {daemon_path} (use --daemon-path to name it there)")),
        126 => Some(format!("rlaunch at {daemon_path} on {node} cannot be run (not executable there?; use --daemon-path)")),
        _ => None,
    }
}

fn auth_refused_message(node: &str, user: &str, tried: &[String]) -> String {
    if tried.is_empty() {
        format!("authentication refused by {node} for user {user} (no ssh-agent key and no ~/.ssh/id_ed25519, id_ecdsa or id_rsa to try)")
    } else {
        format!("authentication refused by {node} for user {user} (tried: {})", tried.join(", "))
    }
}

/// The number of a signal as ssh's exit-signal names it ("TERM", no "SIG").
fn signal_number(name: &str) -> Option<i32> {
    let n = match name.trim_start_matches("SIG") {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "ILL" => libc::SIGILL,
        "ABRT" => libc::SIGABRT,
        "FPE" => libc::SIGFPE,
        "KILL" => libc::SIGKILL,
        "SEGV" => libc::SIGSEGV,
        "PIPE" => libc::SIGPIPE,
        "ALRM" => libc::SIGALRM,
        "TERM" => libc::SIGTERM,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "BUS" => libc::SIGBUS,
        _ => return None,
    };
    Some(n)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Marker {
    None,
    Revoked,
    CertAuthority,
}

/// One usable line of a known_hosts file.
#[derive(Clone, Debug, PartialEq, Eq)]
struct KnownEntry {
    source: String,
    line: usize,
    marker: Marker,
    hosts: String,
    key_type: String,
    key_b64: String,
    key: Vec<u8>,
}

/// Parses known_hosts text. Lines this code cannot use (bad base64, unknown markers) are skipped
/// one by one: libssh2's own file reader stops at the first line it does not understand, which
/// would silently drop every key after, say, a security-key entry.
fn parse_known_hosts(text: &str, source: &str) -> Vec<KnownEntry> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let mut first = fields.next().unwrap_or_default();
        let marker = match first {
            "@revoked" => Marker::Revoked,
            "@cert-authority" => Marker::CertAuthority,
            m if m.starts_with('@') => continue,
            _ => Marker::None,
        };
        if marker != Marker::None {
            first = fields.next().unwrap_or_default();
        }
        let (Some(key_type), Some(key_b64)) = (fields.next(), fields.next()) else { continue };
        let Ok(key) = base64::engine::general_purpose::STANDARD.decode(key_b64) else { continue };
        out.push(KnownEntry {
            source: source.to_string(),
            line: i + 1,
            marker,
            hosts: first.to_string(),
            key_type: key_type.to_string(),
            key_b64: key_b64.to_string(),
            key,
        });
    }
    out
}

/// Whether an entry's host patterns name `host` (`[host]:port` entries, and plain names for any port),
/// including hashed `|1|salt|hash` names, by asking libssh2 about that one line and its own key.
fn entry_matches(sess: &Session, e: &KnownEntry, host: &str, port: u16) -> bool {
    may_name(&e.hosts, host) && libssh2_matches(sess, e, host, port)
}

/// Whether an entry's host list can name `host` at all. libssh2 compares plain names whole (and
/// IPv6 addresses by value), so a list whose text does not contain the name cannot match it;
/// skipping those spares a libssh2 parse per entry per node and address, which with a cluster-wide
/// `/etc/ssh/ssh_known_hosts` grows as nodes x entries. Hashed lists and IPv6 hosts are left to it.
fn may_name(hosts: &str, host: &str) -> bool {
    hosts.starts_with('|') || host.contains(':') || hosts.contains(host)
}

fn libssh2_matches(sess: &Session, e: &KnownEntry, host: &str, port: u16) -> bool {
    if host.contains('\0') {
        return false;
    }
    let Ok(mut kh) = sess.known_hosts() else { return false };
    if kh.read_str(&format!("{} {} {}", e.hosts, e.key_type, e.key_b64), KnownHostFileKind::OpenSSH).is_err() {
        return false;
    }
    matches!(kh.check_port(host, port, &e.key), CheckResult::Match)
}

/// The key type inside an SSH public key blob: its first length-prefixed string.
fn blob_key_type(blob: &[u8]) -> Option<&str> {
    let len = u32::from_be_bytes(blob.get(..4)?.try_into().ok()?) as usize;
    std::str::from_utf8(blob.get(4..4usize.checked_add(len)?)?).ok()
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum HostKeyVerdict {
    Trusted,
    Unknown,
    Changed { source: String, line: usize, key_type: String },
    Revoked { source: String, line: usize },
}

/// The host key decision, given which entries name this host (`hits`, one per entry). A revoked
/// key is refused whatever host its line names; a differing key of another type is a new key, not
/// a changed one (as ssh).
fn judge(entries: &[KnownEntry], hits: &[bool], server_key: &[u8]) -> HostKeyVerdict {
    if let Some(e) = entries.iter().find(|e| e.marker == Marker::Revoked && e.key == server_key) {
        return HostKeyVerdict::Revoked { source: e.source.clone(), line: e.line };
    }
    let server_type = blob_key_type(server_key);
    let mut changed = None;
    for (e, _) in entries.iter().zip(hits).filter(|(e, hit)| e.marker == Marker::None && **hit) {
        if e.key == server_key {
            return HostKeyVerdict::Trusted;
        }
        if changed.is_none() && server_type == Some(e.key_type.as_str()) {
            changed = Some(HostKeyVerdict::Changed { source: e.source.clone(), line: e.line, key_type: e.key_type.clone() });
        }
    }
    changed.unwrap_or(HostKeyVerdict::Unknown)
}

fn host_key_message(v: &HostKeyVerdict, node: &str, key_type: &str, fingerprint: &str, files: &[String]) -> String {
    match v {
        HostKeyVerdict::Changed { source, line, key_type } => format!(
            "host key of {node} does not match {source}:{line} (its {key_type} key is now {fingerprint}); \
             if {node} was reinstalled, remove the old key with 'ssh-keygen -R {node}'"
        ),
        HostKeyVerdict::Revoked { source, line } => {
            format!("host key of {node} ({key_type} {fingerprint}) is revoked by {source}:{line}; refusing to connect")
        }
        _ => {
            let looked = if files.is_empty() { "no known_hosts file exists".to_string() } else { format!("not in {}", files.join(", ")) };
            format!(
                "host key of {node} is not known ({looked}); check that its {key_type} key is {fingerprint}, \
                 then add it with 'ssh-keyscan -t {key_type} {node} >> ~/.ssh/known_hosts' or ssh to {node} once"
            )
        }
    }
}

/// The host key algorithms to offer: those whose key type a known_hosts entry for this host has,
/// first (in libssh2's order), then all the others.
fn hostkey_prefs(known_types: &[&str], supported: &[&str]) -> String {
    let key_type = |alg: &str| match alg {
        "rsa-sha2-512" | "rsa-sha2-256" => "ssh-rsa".to_string(),
        a => a.to_string(),
    };
    let (first, rest): (Vec<&str>, Vec<&str>) = supported.iter().partition(|a| known_types.contains(&key_type(a).as_str()));
    first.into_iter().chain(rest).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn blob(kind: &str, body: &[u8]) -> Vec<u8> {
        let mut b = (kind.len() as u32).to_be_bytes().to_vec();
        b.extend_from_slice(kind.as_bytes());
        b.extend_from_slice(&(body.len() as u32).to_be_bytes());
        b.extend_from_slice(body);
        b
    }
    fn b64(b: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(b)
    }
    fn ed(n: u8) -> Vec<u8> {
        blob("ssh-ed25519", &[n; 32])
    }

    #[test]
    fn parses_markers_comments_and_skips_bad_lines() {
        let text = format!(
            "# comment\n\nn1,10.0.0.1 ssh-ed25519 {k1} root@n1\n@revoked * ssh-ed25519 {k2}\n\
             @cert-authority *.cl ssh-ed25519 {k1}\n@frobnicate x ssh-ed25519 {k1}\nn3 ssh-ed25519 !!notbase64\n\
             n4 sk-ssh-ed25519@openssh.com {k2}\nn5\n",
            k1 = b64(&ed(1)),
            k2 = b64(&ed(2))
        );
        let e = parse_known_hosts(&text, "kh");
        let summary: Vec<(usize, Marker, &str, &str)> =
            e.iter().map(|e| (e.line, e.marker, e.hosts.as_str(), e.key_type.as_str())).collect();
        assert_eq!(
            summary,
            vec![
                (3, Marker::None, "n1,10.0.0.1", "ssh-ed25519"),
                (4, Marker::Revoked, "*", "ssh-ed25519"),
                (5, Marker::CertAuthority, "*.cl", "ssh-ed25519"),
                (8, Marker::None, "n4", "sk-ssh-ed25519@openssh.com"),
            ]
        );
        assert_eq!(e[0].key, ed(1));
        assert_eq!(e[0].source, "kh");
    }

    #[test]
    fn known_hosts_are_parsed_once_until_a_file_changes() {
        let dir = std::env::temp_dir().join(format!("rlaunch-kh-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, missing) = (dir.join("a"), dir.join("missing"));
        std::fs::write(&a, format!("n1 ssh-ed25519 {}\n", b64(&ed(1)))).unwrap();
        let first = known_hosts_of(&[a.clone(), missing.clone()], false);
        assert!(Arc::ptr_eq(&first, &known_hosts_of(&[a.clone(), missing.clone()], false)));
        assert_eq!(first.names, vec![a.display().to_string()]);
        // Named by the user, the missing file is said; that is another parse.
        let named = known_hosts_of(std::slice::from_ref(&missing), true);
        assert_eq!(named.names, vec![format!("{} (unreadable)", missing.display())]);
        // A rewritten file (another size) is read again.
        std::fs::write(&a, format!("n1 ssh-ed25519 {}\nn2 ssh-ed25519 {}\n", b64(&ed(1)), b64(&ed(2)))).unwrap();
        let again = known_hosts_of(&[a.clone(), missing.clone()], false);
        assert!(!Arc::ptr_eq(&first, &again));
        assert_eq!(again.entries.len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn key_type_from_blob() {
        assert_eq!(blob_key_type(&ed(7)), Some("ssh-ed25519"));
        assert_eq!(blob_key_type(&[0, 0, 0, 9, b'a']), None);
        assert_eq!(blob_key_type(&[0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(blob_key_type(&[]), None);
    }

    fn entries(text: &str) -> Vec<KnownEntry> {
        parse_known_hosts(text, "/k")
    }

    #[test]
    fn verdicts() {
        let (k1, k2) = (b64(&ed(1)), b64(&ed(2)));
        let rsa = b64(&blob("ssh-rsa", &[3; 64]));
        let all = [true; 4];
        let none = [false; 4];
        let e = entries(&format!("n1 ssh-ed25519 {k1}\n"));
        assert_eq!(judge(&e, &all, &ed(1)), HostKeyVerdict::Trusted);
        assert_eq!(judge(&e, &none, &ed(1)), HostKeyVerdict::Unknown);
        assert_eq!(
            judge(&e, &all, &ed(2)),
            HostKeyVerdict::Changed { source: "/k".into(), line: 1, key_type: "ssh-ed25519".into() }
        );
        // Only an RSA key on file: an Ed25519 key is new, not changed.
        let e = entries(&format!("n1 ssh-rsa {rsa}\n"));
        assert_eq!(judge(&e, &all, &ed(1)), HostKeyVerdict::Unknown);
        // A matching line anywhere wins over a stale one before it.
        let e = entries(&format!("n1 ssh-ed25519 {k2}\nn1 ssh-ed25519 {k1}\n"));
        assert_eq!(judge(&e, &all, &ed(1)), HostKeyVerdict::Trusted);
        // Revoked beats trusted, whatever host the revocation names.
        let e = entries(&format!("n1 ssh-ed25519 {k1}\n@revoked other ssh-ed25519 {k1}\n"));
        assert_eq!(judge(&e, &all, &ed(1)), HostKeyVerdict::Revoked { source: "/k".into(), line: 2 });
        // A CA line is not a host key.
        let e = entries(&format!("@cert-authority * ssh-ed25519 {k1}\n"));
        assert_eq!(judge(&e, &all, &ed(1)), HostKeyVerdict::Unknown);
    }

    #[test]
    fn libssh2_matches_plain_ported_and_hashed_names() {
        let sess = Session::new().unwrap();
        let k = b64(&ed(1));
        let e = &entries(&format!("n1,10.0.0.1 ssh-ed25519 {k}\n[n2]:2222 ssh-ed25519 {k}\n"));
        assert!(entry_matches(&sess, &e[0], "n1", 22));
        assert!(entry_matches(&sess, &e[0], "10.0.0.1", 22));
        assert!(!entry_matches(&sess, &e[0], "n11", 22));
        // libssh2 lets a plain name stand for every port (ssh would not): the same key on another
        // port of that host is still trusted, and a different one is refused as changed.
        assert!(entry_matches(&sess, &e[0], "n1", 2222));
        assert!(entry_matches(&sess, &e[1], "n2", 2222));
        assert!(!entry_matches(&sess, &e[1], "n2", 22));
        assert!(!entry_matches(&sess, &e[0], "n1\0", 22));
        // `ssh-keygen -H` form of "n3": |1|base64(salt)|base64(HMAC-SHA1(salt, "n3")).
        let hashed = &entries(&format!("|1|AAECAwQFBgcICQoLDA0ODxAREhM=|TNocrUouBQbLPMvOByaRuy/ml0Y= ssh-ed25519 {k}\n"));
        assert!(entry_matches(&sess, &hashed[0], "n3", 22));
        assert!(!entry_matches(&sess, &hashed[0], "n4", 22));
    }

    #[test]
    fn known_key_types_are_offered_first() {
        let supported = ["ecdsa-sha2-nistp256", "ssh-ed25519", "rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"];
        assert_eq!(hostkey_prefs(&["ssh-ed25519"], &supported), "ssh-ed25519,ecdsa-sha2-nistp256,rsa-sha2-512,rsa-sha2-256,ssh-rsa");
        assert_eq!(hostkey_prefs(&["ssh-rsa"], &supported), "rsa-sha2-512,rsa-sha2-256,ssh-rsa,ecdsa-sha2-nistp256,ssh-ed25519");
        assert_eq!(hostkey_prefs(&[], &supported), supported.join(","));
    }

    #[test]
    fn messages_name_the_node_and_say_what_to_do() {
        let refused = io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(io_reason(&refused, Duration::from_secs(5)), "connection refused");
        assert_eq!(io_reason(&io::Error::from(io::ErrorKind::TimedOut), Duration::from_millis(2500)), "no answer within 2.5 s");
        assert_eq!(io_reason(&io::Error::from_raw_os_error(libc::EHOSTUNREACH), Duration::from_secs(5)), "no route to host");
        assert_eq!(
            auth_refused_message("n3", "root", &["agent (1 key)".into(), "/root/.ssh/id_ed25519".into()]),
            "authentication refused by n3 for user root (tried: agent (1 key), /root/.ssh/id_ed25519)"
        );
        assert!(auth_refused_message("n3", "bob", &[]).starts_with("authentication refused by n3 for user bob (no ssh-agent key"));
        assert_eq!(
            exit_explanation(127, "n3", "/opt/rl").as_deref(),
            Some("rlaunch not found on n3 at /opt/rl (use --daemon-path to name it there)")
        );
        assert!(exit_explanation(126, "n3", "/opt/rl").unwrap().contains("cannot be run"));
        assert_eq!(exit_explanation(0, "n3", "/opt/rl"), None);
        assert_eq!(exit_explanation(3, "n3", "/opt/rl"), None);
        let changed = HostKeyVerdict::Changed { source: "/root/.ssh/known_hosts".into(), line: 4, key_type: "ssh-ed25519".into() };
        let m = host_key_message(&changed, "n3", "ssh-ed25519", "SHA256:abc", &[]);
        assert!(m.starts_with("host key of n3 does not match /root/.ssh/known_hosts:4"), "{m}");
        assert!(m.contains("ssh-keygen -R n3"), "{m}");
        let m = host_key_message(&HostKeyVerdict::Unknown, "n3", "ssh-ed25519", "SHA256:abc", &["/a".into(), "/b".into()]);
        assert!(m.starts_with("host key of n3 is not known (not in /a, /b)"), "{m}");
        assert!(m.contains("SHA256:abc") && m.contains("ssh-keyscan -t ssh-ed25519 n3"), "{m}");
    }

    #[test]
    fn signal_names() {
        assert_eq!(signal_number("TERM"), Some(15));
        assert_eq!(signal_number("SIGKILL"), Some(9));
        assert_eq!(signal_number("SEGV"), Some(11));
        assert_eq!(signal_number("WINCH"), None);
    }

    #[test]
    fn stdin_writer_queues_and_eof_on_drop() {
        let (tx, rx) = mpsc::channel();
        let (wr, ww) = pipe(true).unwrap();
        let mut w = SshStdin { tx: Some(tx), wake: File::from(ww) };
        assert_eq!(w.write(b"abc").unwrap(), 3);
        assert_eq!(rx.try_recv().unwrap(), b"abc");
        drop(w);
        assert!(matches!(rx.try_recv(), Err(mpsc::TryRecvError::Disconnected)));
        // Each write and the drop woke the session thread.
        let mut b = [0u8; 8];
        assert_eq!(File::from(wr).read(&mut b).unwrap(), 2);
    }

    proptest! {
        // The cheap filter never hides a line libssh2 would match.
        #[test]
        fn the_name_filter_only_skips_lines_that_cannot_match(
            names in proptest::collection::vec("(n1|n11|N1|10\\.0\\.0\\.1|\\[n1\\]:2222|::1|0:0::1|cafe)", 1..4),
            host in "(n1|n11|N1|10\\.0\\.0\\.1|::1|0::1|cafe|n)",
            port in prop_oneof![Just(22u16), Just(2222u16)],
        ) {
            let sess = Session::new().unwrap();
            let e = &entries(&format!("{} ssh-ed25519 {}\n", names.join(","), b64(&ed(1))))[0];
            prop_assert!(may_name(&e.hosts, &host) || !libssh2_matches(&sess, e, &host, port), "{:?} {}", names, host);
        }

        // Whatever is on file, a key is trusted only if a non-revoked, non-CA line naming the
        // host carries exactly that key, and a revoked key is never trusted.
        #[test]
        fn trust_needs_an_exact_matching_line(
            lines in proptest::collection::vec((0u8..3, 0u8..4, any::<bool>()), 0..8),
            server in 0u8..4,
        ) {
            let text: String = lines.iter().map(|(m, k, _)| {
                let marker = ["", "@revoked ", "@cert-authority "][*m as usize];
                format!("{marker}h ssh-ed25519 {}\n", b64(&ed(*k)))
            }).collect();
            let e = entries(&text);
            let hits: Vec<bool> = e.iter().map(|x| lines[x.line - 1].2).collect();
            let v = judge(&e, &hits, &ed(server));
            let revoked = lines.iter().any(|(m, k, _)| *m == 1 && *k == server);
            let exact = lines.iter().any(|(m, k, hit)| *m == 0 && *k == server && *hit);
            let other = lines.iter().any(|(m, k, hit)| *m == 0 && *k != server && *hit);
            let want = if revoked { "revoked" } else if exact { "trusted" } else if other { "changed" } else { "unknown" };
            let got = match v {
                HostKeyVerdict::Revoked { .. } => "revoked",
                HostKeyVerdict::Trusted => "trusted",
                HostKeyVerdict::Changed { .. } => "changed",
                HostKeyVerdict::Unknown => "unknown",
            };
            prop_assert_eq!(got, want);
        }
    }
}
