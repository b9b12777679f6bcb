//! The per-node daemon (`rlaunch __daemon`): reads its bootstrap line on stdin, joins the tree,
//! receives the application context, computes the process map itself, starts and supervises its
//! local ranks, and relays traffic for the daemons below it.
//!
//! One event loop owns all state. Sockets, pipes and signals are events; handlers change state and
//! queue frames; nothing runs on another thread.

use crate::link::{flush_blocking, Link};
use crate::output::LineBuffer;
use crate::sig::SignalPipe;
use crate::tree;
use crate::spec::{RankStatus, StdinTarget};
use crate::wire::{Bootstrap, Dir, Launch, Msg, NodeFault, Stream};
use anyhow::{anyhow, bail, Context, Result};
use mio::unix::pipe::{Receiver, Sender};
use mio::{Events, Interest, Poll, Token};
use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

const PARENT: Token = Token(0);
const LISTENER: Token = Token(1);
const SIGNALS: Token = Token(2);
const BOOT_STDIN: Token = Token(3);
const CHILD_BASE: usize = 1 << 20;
const RANK_BASE: usize = 1 << 24;
/// Stop reading rank output while this much is queued towards the parent: the ranks then block on
/// their pipes instead of the daemon growing without bound.
const HIGH_WATER: usize = 8 << 20;
/// After a rank was reaped, how long its pipes may stay open (held by an escaped descendant) before
/// the daemon stops waiting for them.
const PIPE_DRAIN: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// PMI for the local ranks (sockets, engine, fence vertex) lives in its own file.
#[path = "pmi/daemon_glue.rs"]
mod pmi_glue;

/// PMIx for the local ranks (libpmix server, upcalls, PMIx fence and direct modex).
#[path = "pmix/server.rs"]
mod pmix_glue;

/// The launch-time fabric exchange and endpoint table (`crate::fabric`).
#[path = "fabric/daemon_glue.rs"]
mod fabric_glue;

fn rank_token(local: usize, what: usize) -> Token {
    Token(RANK_BASE + local * 4 + what)
}

struct LocalRank {
    rank: u32,
    pid: u32,
    out: Option<Receiver>,
    err: Option<Receiver>,
    out_lines: LineBuffer,
    err_lines: LineBuffer,
    stdin: Option<Sender>,
    stdin_buf: Vec<u8>,
    stdin_eof: bool,
    status: Option<RankStatus>,
    reaped_at: Option<Instant>,
    reported: bool,
}

struct ChildLink {
    link: Link,
    node: Option<u32>,
}

struct Daemon {
    boot: Bootstrap,
    poll: Poll,
    parent: Link,
    listener: Option<mio::net::TcpListener>,
    children: HashMap<Token, ChildLink>,
    next_child_token: usize,
    launch: Option<Box<Launch>>,
    map: Option<launchers::map::ProcMap>,
    /// Stdin chunks (an empty one is EOF) that came before the ranks were started.
    held_stdin: Vec<Vec<u8>>,
    listen_port: u16,
    /// Tree spawn: the daemons (or agents) this daemon started, by node.
    spawned: Vec<(u32, launchers::start::DaemonProcess)>,
    /// Tree spawn: children that joined at some point.
    ever_joined: std::collections::HashSet<u32>,
    /// Exit codes of reaped children that are not ranks (tree-spawn agents), by pid.
    other_exits: HashMap<u32, i32>,
    ranks: Vec<LocalRank>,
    by_pid: HashMap<u32, usize>,
    /// Rank pipes that may hold more data than one read took (edge-triggered polling).
    ready: VecDeque<Token>,
    kill_at: Option<Instant>,
    stop_spawning: bool,
    node_done_sent: bool,
    orphaned: bool,
    shutdown: bool,
    signals: SignalPipe,
    launch_bytes: u32,
    pmi: Option<pmi_glue::DaemonPmi>,
    pmix: pmix_glue::DaemonPmix,
    fabric: crate::fabric::NodeFabric,
    /// Pipe to this daemon's guard process (`rlaunch __guard`), started with the first rank.
    guard: Option<std::process::ChildStdin>,
}

/// Entry point of `rlaunch __daemon`. Never returns.
pub fn main() -> ! {
    let code = match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rlaunch daemon on {}: {e:#}", hostname());
            crate::exitcode::LAUNCH_FAILED
        }
    };
    std::process::exit(code)
}

pub fn hostname() -> String {
    launchers::local_hostname()
}

fn read_bootstrap() -> Result<Bootstrap> {
    // Byte by byte: anything after the line must stay in stdin (it is watched for EOF later).
    let mut line = Vec::new();
    let mut stdin = io::stdin().lock();
    let mut b = [0u8; 1];
    loop {
        match stdin.read(&mut b) {
            Ok(0) => bail!("standard input closed before the bootstrap line (start daemons through rlaunch, not by hand)"),
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) => {
                line.push(b[0]);
                if line.len() > 4096 {
                    bail!("bootstrap line too long");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("reading the bootstrap line"),
        }
    }
    let text = String::from_utf8_lossy(&line);
    Bootstrap::parse(&text).ok_or_else(|| anyhow!("malformed bootstrap line (is the same rlaunch version installed on every node?)"))
}

fn connect_parent(addr: &str) -> Result<std::net::TcpStream> {
    use std::net::ToSocketAddrs;
    let addrs: Vec<_> = addr.to_socket_addrs().with_context(|| format!("resolving parent address {addr}"))?.collect();
    let mut last = None;
    for a in addrs {
        match std::net::TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(anyhow!("cannot connect to parent {addr}: {}", last.map(|e| e.to_string()).unwrap_or_else(|| "no address".into())))
}

fn run() -> Result<i32> {
    // The daemon must outlive nothing: if the process that started it dies, terminate (handled as
    // an orphan event below). Ignoring errors: not every platform has the call.
    let signals = SignalPipe::new(&[libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGHUP])?;
    let mut boot = read_bootstrap()?;
    let poll = Poll::new()?;
    // A daemon started by a resource manager (one srun step for all nodes) does not know its node
    // rank: it must listen before it asks, since its parent-to-be cannot be told its port otherwise.
    let rendezvous = boot.node == Bootstrap::ANY_NODE;
    let mut listener = None;
    let mut listen_port = 0;
    if rendezvous || !tree::children_of(Some(boot.node), boot.fanout, boot.nnodes).is_empty() {
        let l = mio::net::TcpListener::bind("0.0.0.0:0".parse().unwrap()).context("listening for child daemons")?;
        listen_port = l.local_addr()?.port();
        listener = Some(l);
    }
    let stream = if rendezvous {
        let (node, stream) = rendezvous_join(&boot, listen_port)?;
        boot.node = node;
        stream
    } else {
        connect_parent(&boot.parent)?
    };
    stream.set_nodelay(true).ok();
    stream.set_nonblocking(true)?;
    let mut parent = Link::new(mio::net::TcpStream::from_std(stream), boot.key, Dir::Up, Some(boot.node));
    poll.registry().register(&mut parent.stream, PARENT, Interest::READABLE | Interest::WRITABLE)?;
    if let Some(l) = listener.as_mut() {
        poll.registry().register(l, LISTENER, Interest::READABLE)?;
    }
    let fabric = crate::fabric::NodeFabric::new(boot.node, boot.nnodes, boot.fanout);
    let mut d = Daemon {
        boot,
        poll,
        parent,
        listener,
        children: HashMap::new(),
        next_child_token: CHILD_BASE,
        launch: None,
        map: None,
        held_stdin: Vec::new(),
        listen_port,
        spawned: Vec::new(),
        other_exits: HashMap::new(),
        ever_joined: std::collections::HashSet::new(),
        ranks: Vec::new(),
        by_pid: HashMap::new(),
        ready: VecDeque::new(),
        kill_at: None,
        stop_spawning: false,
        node_done_sent: false,
        orphaned: false,
        shutdown: false,
        signals,
        launch_bytes: 0,
        pmi: None,
        pmix: Default::default(),
        fabric,
        guard: None,
    };
    d.poll.registry().register(&mut d.signals.rx, SIGNALS, Interest::READABLE)?;
    // The bootstrap stdin stays open for the life of whatever started us (a pipe from the front end,
    // an ssh channel): its EOF means that process is gone. Regular files cannot be polled; skip those.
    let stdin_fd = 0;
    let _ = d.poll.registry().register(&mut mio::unix::SourceFd(&stdin_fd), BOOT_STDIN, Interest::READABLE);
    d.parent.send(&Msg::Hello {
        node: d.boot.node,
        pid: std::process::id(),
        listen_port,
        hostname: hostname(),
        addr: None,
    });
    d.parent.flush().ok();
    // While the launch message travels: it is needed as soon as that arrives.
    d.fabric.discover();
    d.event_loop()
}

/// The name this node goes by in the front end's node list, as the resource manager knows it.
fn node_identity() -> String {
    std::env::var("SLURMD_NODENAME").ok().filter(|s| !s.is_empty()).unwrap_or_else(hostname)
}

/// Asks the front end which node this is and where to connect. Returns the node rank and a
/// connected stream to the parent (the front end's own stream when it is the parent).
fn rendezvous_join(boot: &Bootstrap, listen_port: u16) -> Result<(u32, std::net::TcpStream)> {
    let mut stream = connect_parent(&boot.parent)?;
    stream.set_read_timeout(Some(CONNECT_TIMEOUT))?;
    let mut sealer = crate::wire::Sealer::new(boot.key, Dir::Up, Bootstrap::ANY_NODE);
    let mut opener = crate::wire::Opener::new(boot.key, Dir::Down, Some(Bootstrap::ANY_NODE));
    let name = node_identity();
    let hello = Msg::Hello { node: Bootstrap::ANY_NODE, pid: std::process::id(), listen_port, hostname: name.clone(), addr: None };
    stream.write_all(&sealer.seal(&hello))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(msg) = opener.open(&mut buf)? {
            match msg {
                Msg::Assign { node, parent: None } => return Ok((node, stream)),
                Msg::Assign { node, parent: Some(addr) } => return Ok((node, connect_parent(&addr)?)),
                Msg::Refuse { message } => bail!("the front end refused node '{name}': {message}"),
                other => bail!("unexpected message while joining: {other:?}"),
            }
        }
        let n = stream.read(&mut chunk).context("waiting for the front end to assign this node")?;
        if n == 0 {
            bail!("the front end closed the connection before assigning node '{name}'");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// `rlaunch __guard`: a daemon's watchman. It reads the process-group ids of the daemon's ranks
/// from stdin, one per line, and when that pipe closes, because the daemon ended in any way
/// (even SIGKILL), it kills every one of those groups. A rank dies with its daemon through its
/// parent-death signal; this takes the rank's own children with it.
pub fn guard_main() -> ! {
    for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: setting a signal to SIG_IGN has no handler to be unsafe about.
        unsafe { libc::signal(s, libc::SIG_IGN) };
    }
    let mut groups = Vec::new();
    let mut text = String::new();
    let _ = io::stdin().read_to_string(&mut text);
    for line in text.lines() {
        if let Ok(g) = line.trim().parse::<i32>() {
            if g > 1 {
                groups.push(g);
            }
        }
    }
    for g in groups {
        // SAFETY: plain kill(2); ESRCH for groups that are already gone is expected.
        unsafe { libc::kill(-g, libc::SIGKILL) };
    }
    std::process::exit(0)
}

impl Daemon {
    /// Tells the guard about a rank's process group, starting the guard with the first one.
    fn guard_group(&mut self, pgid: u32) {
        if self.guard.is_none() {
            let exe = std::env::current_exe().unwrap_or_else(|_| std::path::PathBuf::from("/proc/self/exe"));
            let child = std::process::Command::new(exe)
                .arg("__guard")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn();
            match child {
                Ok(mut c) => {
                    self.guard = c.stdin.take();
                    // Reaped by pid in reap() like any other child; the handle is not needed.
                    std::mem::forget(c);
                }
                Err(e) => {
                    eprintln!("rlaunch daemon on node {}: cannot start the guard process ({e}); a rank's children may outlive a killed daemon", self.boot.node);
                    return;
                }
            }
        }
        if let Some(g) = self.guard.as_mut() {
            let _ = writeln!(g, "{pgid}");
        }
    }

    fn event_loop(&mut self) -> Result<i32> {
        let mut events = Events::with_capacity(1024);
        loop {
            if self.shutdown {
                return Ok(self.finish());
            }
            if self.orphaned && self.all_ranks_done() {
                return Ok(crate::exitcode::LAUNCH_FAILED);
            }
            let timeout = self.next_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e.into());
                }
            }
            for ev in events.iter() {
                match ev.token() {
                    PARENT => {
                        if ev.is_writable() && self.parent.flush().is_err() {
                            self.parent_lost();
                        }
                        if ev.is_readable() {
                            self.read_parent();
                        }
                    }
                    LISTENER => self.accept_children(),
                    SIGNALS => self.on_signals(),
                    BOOT_STDIN => self.on_boot_stdin(),
                    pmix_glue::PMIX_WAKE => self.on_pmix_wake(),
                    t if crate::pmi::host::PmiHost::owns(t) => self.on_pmi_event(ev),
                    t if t.0 >= RANK_BASE => {
                        let what = (t.0 - RANK_BASE) % 4;
                        if what == 2 {
                            self.write_stdin((t.0 - RANK_BASE) / 4);
                        } else {
                            self.ready.push_back(t);
                        }
                    }
                    t => self.on_child(t, ev.is_readable(), ev.is_writable()),
                }
            }
            self.drain_ready();
            self.pmi_read_more();
            if !self.spawned.is_empty() {
                self.check_spawned();
            }
            self.check_timers();
            self.check_done();
            if self.parent.flush().is_err() {
                self.parent_lost();
            }
        }
    }

    fn next_timeout(&self) -> Option<Duration> {
        if (!self.ready.is_empty() && self.parent.pending_out() < HIGH_WATER) || self.pmi_busy() {
            return Some(Duration::ZERO);
        }
        let mut t: Option<Instant> = self.kill_at;
        // Tree spawn over in-process ssh: its threads report by channel, which wakes nobody.
        if self.spawned.iter().any(|(_, p)| p.waiter.pid().is_none()) {
            t = Some(Instant::now() + Duration::from_millis(50));
        }
        for r in &self.ranks {
            if let (Some(at), false) = (r.reaped_at, r.reported) {
                let d = at + PIPE_DRAIN;
                t = Some(t.map_or(d, |x| x.min(d)));
            }
        }
        t.map(|at| at.saturating_duration_since(Instant::now()) + Duration::from_millis(1))
    }

    fn read_parent(&mut self) {
        loop {
            match self.parent.fill() {
                Ok(more) => {
                    loop {
                        match self.parent.next_msg() {
                            Ok(Some(msg)) => {
                                let len = self.parent.last_frame_len;
                                self.on_parent_msg(msg, len);
                            }
                            Ok(None) => break,
                            Err(e) => {
                                eprintln!("rlaunch daemon on node {}: rejected frame from parent: {e}", self.boot.node);
                                self.parent_lost();
                                return;
                            }
                        }
                    }
                    if self.parent.eof {
                        self.parent_lost();
                        return;
                    }
                    if !more {
                        return;
                    }
                }
                Err(_) => {
                    self.parent_lost();
                    return;
                }
            }
        }
    }

    fn parent_lost(&mut self) {
        if self.orphaned || self.shutdown {
            return;
        }
        self.orphaned = true;
        let _ = self.poll.registry().deregister(&mut self.parent.stream);
        self.terminate_all();
    }

    fn on_boot_stdin(&mut self) {
        let mut buf = [0u8; 256];
        // SAFETY: fd 0 is ours for the life of the process; a plain read on it is fine.
        let n = unsafe { libc::read(0, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
        if n == 0 || (n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock) {
            let stdin_fd = 0;
            let _ = self.poll.registry().deregister(&mut mio::unix::SourceFd(&stdin_fd));
            // Whoever started us is gone (front end, ssh client, agent): no one can collect our ranks.
            if !self.shutdown {
                self.parent_lost();
            }
        }
    }

    fn on_parent_msg(&mut self, msg: Msg, frame_len: usize) {
        match msg {
            Msg::Launch(launch) => {
                if self.launch.is_some() {
                    return;
                }
                self.launch_bytes = frame_len as u32;
                let relay = Msg::Launch(launch.clone());
                for c in self.children.values_mut() {
                    if c.node.is_some() {
                        c.link.send(&relay);
                        let _ = c.link.flush();
                    }
                }
                self.launch = Some(launch);
                self.spawn_children();
                // Ranks start once the endpoint table is written (crate::fabric).
                self.fabric_launch();
            }
            Msg::Stdin { data } => {
                self.deliver_stdin(&data);
                let target = self.launch.as_ref().map(|l| l.stdin);
                let relay = Msg::Stdin { data };
                self.relay_down(&relay, target);
            }
            Msg::Signal { signum } => {
                self.signal_all(signum);
                self.relay_down(&Msg::Signal { signum }, None);
            }
            Msg::Terminate => {
                self.terminate_all();
                self.relay_down(&Msg::Terminate, None);
            }
            Msg::Kill => {
                self.signal_all(libc::SIGKILL);
                self.stop_spawning = true;
                self.relay_down(&Msg::Kill, None);
            }
            Msg::Shutdown => {
                self.relay_down(&Msg::Shutdown, None);
                self.shutdown = true;
            }
            Msg::FenceDone { seq, puts } => self.pmi_fence_done(seq, puts),
            m @ (Msg::PmixFenceDone { .. } | Msg::PmixDmodexReq { .. } | Msg::PmixDmodexResp { .. }) => {
                let _ = self.pmix_tree_msg(None, m);
            }
            Msg::KvsGet { from, key, round } => self.pmi_kvs_query(from, key, round),
            Msg::KvsValue { to, key, value, round } => self.pmi_kvs_value(to, key, value, round),
            Msg::Fabric { data } => self.fabric_msg(None, data),
            other => {
                eprintln!("rlaunch daemon on node {}: unexpected message from parent: {other:?}", self.boot.node);
            }
        }
    }

    /// Sends a message to the children whose subtree needs it (`stdin` routes to the rank's node).
    fn relay_down(&mut self, msg: &Msg, stdin: Option<StdinTarget>) {
        let target_node = match (stdin, &self.launch) {
            (Some(StdinTarget::Rank(r)), Some(l)) => self.node_of_rank(l, r),
            _ => None,
        };
        for c in self.children.values_mut() {
            let Some(node) = c.node else { continue };
            if let Some(t) = target_node {
                if !tree::in_subtree(node, t, self.boot.fanout) {
                    continue;
                }
            }
            c.link.send(msg);
            let _ = c.link.flush();
        }
    }

    fn node_of_rank(&self, _launch: &Launch, rank: u32) -> Option<u32> {
        let map = self.map.as_ref()?;
        (rank < map.size()).then(|| map.rank(rank).node)
    }

    /// Tree spawn: start this daemon's children, pointed at this daemon.
    fn spawn_children(&mut self) {
        let Some(launch) = self.launch.clone() else { return };
        let Some(ts) = &launch.tree_spawn else { return };
        let starter = match (&ts.ssh, ts.agent.is_empty()) {
            (Some(o), _) => launchers::start::NodeStarter::Ssh(launchers::start::SshOptions {
                port: o.port,
                identity: o.identity.as_ref().map(std::path::PathBuf::from),
                identities_only: o.identities_only,
                known_hosts: o.known_hosts.as_ref().map(std::path::PathBuf::from),
                connect_timeout: Duration::from_millis(o.connect_timeout_ms as u64),
                ..Default::default()
            }),
            (None, true) => launchers::start::NodeStarter::Local,
            (None, false) => launchers::start::NodeStarter::Agent { argv: ts.agent.clone() },
        };
        let daemon_path = match std::env::current_exe() {
            Ok(p) => p.to_string_lossy().into_owned(),
            Err(e) => {
                self.node_error(format!("tree spawn: cannot find this daemon's path: {e}"));
                return;
            }
        };
        for child in tree::children_of(Some(self.boot.node), self.boot.fanout, self.boot.nnodes) {
            let n = &launch.nodes[child as usize];
            let node = launchers::nodes::Node { name: n.name.clone(), user: n.user.clone(), slots: n.slots, max_slots: n.max_slots };
            let ip = if starter == launchers::start::NodeStarter::Local {
                "127.0.0.1".to_string()
            } else {
                launchers::start::route_source_ip(&n.name).unwrap_or_else(|| "127.0.0.1".into())
            };
            let ip = if ip.contains(':') { format!("[{ip}]") } else { ip };
            let boot = Bootstrap {
                key: self.boot.key,
                parent: format!("{ip}:{}", self.listen_port),
                node: child,
                nnodes: self.boot.nnodes,
                fanout: self.boot.fanout,
                job_id: self.boot.job_id.clone(),
            };
            match launchers::start::start(&starter, &node, &daemon_path, &boot.to_line(), &launchers::start::no_notify()) {
                Ok(p) => self.spawned.push((child, p)),
                Err(e) => {
                    self.parent.send(&Msg::NodeFailed { node: child, fault: NodeFault::LaunchFailed(e.to_string()) });
                }
            }
        }
    }

    /// Tree spawn: a child's daemon (or its agent) ended. Before it joined, that is a launch failure.
    fn check_spawned(&mut self) {
        // A child that joined once and then died is a lost link (reported as such), not a launch
        // failure: remember every child that ever joined.
        self.ever_joined.extend(self.children.values().filter_map(|c| c.node));
        let joined = self.ever_joined.clone();
        let mut failed = Vec::new();
        let others = &mut self.other_exits;
        self.spawned.retain_mut(|(node, p)| {
            // reap() collects every child of this process, agents included: look their status up.
            let code = match p.waiter.pid() {
                Some(pid) => others.remove(&pid),
                // In-process carriers (ssh threads) report through their waiter.
                None => p.waiter.try_wait(),
            };
            let Some(code) = code else { return true };
            if !joined.contains(node) {
                let mut err = String::new();
                if let Some(fd) = p.stderr.take() {
                    let _ = nix::fcntl::fcntl(std::os::fd::AsRawFd::as_raw_fd(&fd), nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK));
                    let _ = std::fs::File::from(fd).read_to_string(&mut err);
                }
                failed.push((*node, code, err.trim().to_string()));
            }
            false
        });
        for (node, code, err) in failed {
            let what = if err.is_empty() { String::new() } else { format!(": {err}") };
            self.parent.send(&Msg::NodeFailed { node, fault: NodeFault::LaunchFailed(format!("daemon exited early with status {code}{what}")) });
        }
    }

    fn node_error(&mut self, message: String) {
        let node = self.boot.node;
        self.parent.send(&Msg::NodeFailed { node, fault: NodeFault::Internal(message) });
    }

    fn start_ranks(&mut self) -> Result<()> {
        let launch = self.launch.clone().expect("launch present");
        let map = crate::job::compute_map(&launch).map_err(|e| anyhow!("computing the process map: {e}"))?;
        self.map = Some(map.clone());
        // One interface per job: PMIx ranks get no PMI socket or variables, and the reverse.
        if self.pmix_job() {
            self.pmix_setup(&map, &launch)?;
        } else {
            self.pmi_setup(&map, &launch)?;
        }
        let node = self.boot.node;
        let local: Vec<u32> = map.ranks_on(node).to_vec();
        let local_size = local.len();
        let mut pids = Vec::with_capacity(local_size);
        for (li, &rank) in local.iter().enumerate() {
            if self.stop_spawning {
                break;
            }
            let place = map.rank(rank);
            let app = &launch.apps[place.app as usize];
            let mut cmd = std::process::Command::new(&app.argv[0]);
            cmd.args(&app.argv[1..]);
            for (k, v) in launch.env.iter().chain(app.env.iter()) {
                match v {
                    Some(v) => cmd.env(k, v),
                    None => cmd.env_remove(k),
                };
            }
            cmd.env("RLAUNCH_RANK", rank.to_string())
                .env("RLAUNCH_SIZE", map.size().to_string())
                .env("RLAUNCH_LOCAL_RANK", li.to_string())
                .env("RLAUNCH_LOCAL_SIZE", local_size.to_string())
                .env("RLAUNCH_NODE_RANK", node.to_string())
                .env("RLAUNCH_NUM_NODES", launch.nodes.len().to_string())
                .env("RLAUNCH_JOBID", &launch.job_id)
                .env("RLAUNCH_APPNUM", place.app.to_string());
            cmd.envs(self.fabric.rank_env(li as u32).iter().map(|(k, v)| (k, v)));
            if !app.cwd.is_empty() {
                cmd.current_dir(&app.cwd);
            }
            let gets_stdin = match launch.stdin {
                StdinTarget::None => false,
                StdinTarget::All => true,
                StdinTarget::Rank(r) => r == rank,
            };
            cmd.stdin(if gets_stdin { std::process::Stdio::piped() } else { std::process::Stdio::null() });
            cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
            let daemon_pid = std::process::id() as libc::pid_t;
            // SAFETY: only async-signal-safe calls between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    // Own process group: signals reach the rank and everything it starts, and the
                    // terminal's ctrl-C goes to the front end only, which forwards it. Own session
                    // too (which makes the group): with scheduler autogroups each session gets a
                    // fair CPU share, and busy-polling MPI ranks left in the caller's session
                    // share one slice with everything else there (MPI_Barrier ran 2.5x slower
                    // than under Hydra, which does the same). setpgid is the fallback.
                    if libc::setsid() == -1 {
                        libc::setpgid(0, 0);
                    }
                    // Die with the daemon even if it is SIGKILLed.
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    if libc::getppid() != daemon_pid {
                        libc::_exit(137);
                    }
                    Ok(())
                });
            }
            let pmi_end = self.pmi_prepare(rank, &mut cmd)?;
            self.pmix_prepare(rank, &mut cmd)?;
            let spawned = cmd.spawn();
            // The rank has its copy of the PMI socket end (or never will): close ours.
            drop(pmi_end);
            match spawned {
                Ok(mut child) => {
                    let pid = child.id();
                    // Also from this side, so signals sent right after spawn find the group.
                    unsafe { libc::setpgid(pid as libc::pid_t, pid as libc::pid_t) };
                    self.guard_group(pid);
                    let idx = self.ranks.len();
                    let mut out = child.stdout.take().map(Receiver::from);
                    let mut err = child.stderr.take().map(Receiver::from);
                    let mut stdin = child.stdin.take().map(Sender::from);
                    if let Some(r) = out.as_mut() {
                        r.set_nonblocking(true)?;
                        self.poll.registry().register(r, rank_token(idx, 0), Interest::READABLE)?;
                    }
                    if let Some(r) = err.as_mut() {
                        r.set_nonblocking(true)?;
                        self.poll.registry().register(r, rank_token(idx, 1), Interest::READABLE)?;
                    }
                    if let Some(s) = stdin.as_mut() {
                        s.set_nonblocking(true)?;
                        self.poll.registry().register(s, rank_token(idx, 2), Interest::WRITABLE)?;
                    }
                    // The Child handle is dropped: reaping is done by pid in on_sigchld.
                    std::mem::forget(child);
                    self.by_pid.insert(pid, idx);
                    self.ranks.push(LocalRank {
                        rank,
                        pid,
                        out,
                        err,
                        out_lines: LineBuffer::default(),
                        err_lines: LineBuffer::default(),
                        stdin,
                        stdin_buf: Vec::new(),
                        stdin_eof: false,
                        status: None,
                        reaped_at: None,
                        reported: false,
                    });
                    pids.push((rank, pid));
                }
                Err(e) => {
                    let errno = e.raw_os_error().unwrap_or(libc::ENOENT);
                    self.ranks.push(LocalRank {
                        rank,
                        pid: 0,
                        out: None,
                        err: None,
                        out_lines: LineBuffer::default(),
                        err_lines: LineBuffer::default(),
                        stdin: None,
                        stdin_buf: Vec::new(),
                        stdin_eof: true,
                        status: Some(RankStatus::SpawnFailed(errno)),
                        reaped_at: Some(Instant::now()),
                        reported: false,
                    });
                    // No point starting the rest: the job is failing.
                    self.stop_spawning = true;
                }
            }
        }
        self.parent.send(&Msg::Started { node, pids, launch_bytes: self.launch_bytes });
        for chunk in std::mem::take(&mut self.held_stdin) {
            self.deliver_stdin(&chunk);
        }
        // Children may have exited before we registered for SIGCHLD-driven reaping of their pid.
        self.reap();
        Ok(())
    }

    fn drain_ready(&mut self) {
        let mut rounds = self.ready.len();
        while rounds > 0 && self.parent.pending_out() < HIGH_WATER {
            rounds -= 1;
            let Some(t) = self.ready.pop_front() else { break };
            let idx = (t.0 - RANK_BASE) / 4;
            let what = (t.0 - RANK_BASE) % 4;
            if self.read_rank_pipe(idx, what) {
                self.ready.push_back(t);
            }
        }
    }

    /// Reads a bounded amount from one rank pipe; true when more may be waiting.
    fn read_rank_pipe(&mut self, idx: usize, what: usize) -> bool {
        let mut buf = [0u8; 64 * 1024];
        let mut total = 0;
        let r = &mut self.ranks[idx];
        let (pipe, lines, stream) = if what == 0 {
            (&mut r.out, &mut r.out_lines, Stream::Stdout)
        } else {
            (&mut r.err, &mut r.err_lines, Stream::Stderr)
        };
        let Some(p) = pipe.as_mut() else { return false };
        let mut eof = false;
        let mut more = false;
        let mut data = Vec::new();
        loop {
            match p.read(&mut buf) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    data.extend(lines.push(&buf[..n]));
                    total += n;
                    if total >= 256 * 1024 {
                        more = true;
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    eof = true;
                    break;
                }
            }
        }
        if eof {
            data.extend(lines.finish());
            if let Some(mut p) = pipe.take() {
                let _ = self.poll.registry().deregister(&mut p);
            }
        }
        let rank = r.rank;
        if !data.is_empty() {
            self.parent.send(&Msg::Output { rank, stream, data });
        }
        more
    }

    fn deliver_stdin(&mut self, data: &[u8]) {
        // Ranks start only after the fabric exchange, and stdin may arrive first: keep it for them.
        if self.map.is_none() && !self.stop_spawning {
            self.held_stdin.push(data.to_vec());
            return;
        }
        for i in 0..self.ranks.len() {
            let r = &mut self.ranks[i];
            if r.stdin.is_none() || r.stdin_eof {
                continue;
            }
            if data.is_empty() {
                r.stdin_eof = true;
            } else {
                r.stdin_buf.extend_from_slice(data);
            }
            self.write_stdin(i);
        }
    }

    fn write_stdin(&mut self, idx: usize) {
        let r = &mut self.ranks[idx];
        let Some(s) = r.stdin.as_mut() else { return };
        let mut closed = false;
        while !r.stdin_buf.is_empty() {
            match s.write(&r.stdin_buf) {
                Ok(n) => {
                    r.stdin_buf.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    // The rank closed its stdin or exited: drop what it will never read.
                    closed = true;
                    break;
                }
            }
        }
        if closed || (r.stdin_eof && r.stdin_buf.is_empty()) {
            if let Some(mut s) = r.stdin.take() {
                let _ = self.poll.registry().deregister(&mut s);
            }
            r.stdin_buf.clear();
        }
    }

    fn on_signals(&mut self) {
        for s in self.signals.drain() {
            match s {
                libc::SIGCHLD => self.reap(),
                // Slurm's scancel, a dying session, or an admin: nobody will collect the ranks.
                _ => {
                    self.parent_lost();
                }
            }
        }
        // SIGCHLD bytes may be coalesced; reaping is cheap and idempotent.
        self.reap();
    }

    fn reap(&mut self) {
        use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => self.rank_exited(pid.as_raw() as u32, RankStatus::Exited(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => self.rank_exited(pid.as_raw() as u32, RankStatus::Signaled(sig as i32)),
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    }

    fn rank_exited(&mut self, pid: u32, status: RankStatus) {
        let Some(&idx) = self.by_pid.get(&pid) else {
            if !self.spawned.is_empty() {
                self.other_exits.insert(pid, status.exit_code());
            }
            return;
        };
        let r = &mut self.ranks[idx];
        r.status = Some(status);
        r.reaped_at = Some(Instant::now());
        // A rank's descendants die with it: anything left in its process group is killed now.
        unsafe { libc::kill(-(pid as libc::pid_t), libc::SIGKILL) };
        if let Some(mut s) = r.stdin.take() {
            let _ = self.poll.registry().deregister(&mut s);
        }
        // Output may still sit in the pipes: read it before reporting the exit.
        self.ready.push_back(rank_token(idx, 0));
        self.ready.push_back(rank_token(idx, 1));
    }

    fn live_pids(&self) -> Vec<u32> {
        self.ranks.iter().filter(|r| r.status.is_none() && r.pid != 0).map(|r| r.pid).collect()
    }

    fn signal_all(&mut self, signum: i32) {
        for pid in self.live_pids() {
            unsafe { libc::kill(-(pid as libc::pid_t), signum) };
        }
    }

    fn terminate_all(&mut self) {
        self.stop_spawning = true;
        self.signal_all(libc::SIGTERM);
        if self.kill_at.is_none() {
            let grace = self.launch.as_ref().map_or(2000, |l| l.kill_grace_ms);
            self.kill_at = Some(Instant::now() + Duration::from_millis(grace as u64));
        }
    }

    fn check_timers(&mut self) {
        let now = Instant::now();
        if let Some(at) = self.kill_at {
            if now >= at {
                self.signal_all(libc::SIGKILL);
                self.kill_at = None;
            }
        }
        for i in 0..self.ranks.len() {
            let r = &mut self.ranks[i];
            if r.reported {
                continue;
            }
            let Some(at) = r.reaped_at else { continue };
            let pipes_open = r.out.is_some() || r.err.is_some();
            if pipes_open && now < at + PIPE_DRAIN {
                continue;
            }
            if pipes_open {
                // Held open by a descendant that left the rank's process group: stop waiting.
                let mut data = r.out_lines.finish();
                let mut edata = r.err_lines.finish();
                if let Some(mut p) = r.out.take() {
                    let _ = self.poll.registry().deregister(&mut p);
                }
                if let Some(mut p) = r.err.take() {
                    let _ = self.poll.registry().deregister(&mut p);
                }
                let rank = r.rank;
                if !data.is_empty() {
                    self.parent.send(&Msg::Output { rank, stream: Stream::Stdout, data: std::mem::take(&mut data) });
                }
                if !edata.is_empty() {
                    self.parent.send(&Msg::Output { rank, stream: Stream::Stderr, data: std::mem::take(&mut edata) });
                }
            }
            let r = &mut self.ranks[i];
            r.reported = true;
            let msg = Msg::RankExit { rank: r.rank, pid: r.pid, status: r.status.expect("reaped rank has a status") };
            // Its abort or unfinalized exit must reach the front end before its exit status.
            if let Msg::RankExit { rank, .. } = msg {
                self.pmi_rank_exited(rank);
                self.pmix_rank_exited(rank);
            }
            self.parent.send(&msg);
        }
    }

    fn all_ranks_done(&self) -> bool {
        self.ranks.iter().all(|r| r.reported)
    }

    fn check_done(&mut self) {
        if self.node_done_sent || self.launch.is_none() || !self.all_ranks_done() || self.fabric_holds_ranks() {
            return;
        }
        // Ranks not started because spawning stopped still count as done.
        self.node_done_sent = true;
        let node = self.boot.node;
        self.parent.send(&Msg::NodeDone { node });
    }

    fn accept_children(&mut self) {
        let Some(l) = self.listener.as_ref() else { return };
        loop {
            match l.accept() {
                Ok((mut s, _)) => {
                    s.set_nodelay(true).ok();
                    let t = Token(self.next_child_token);
                    self.next_child_token += 1;
                    if self.poll.registry().register(&mut s, t, Interest::READABLE | Interest::WRITABLE).is_ok() {
                        let link = Link::new(s, self.boot.key, Dir::Down, None);
                        self.children.insert(t, ChildLink { link, node: None });
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => break,
            }
        }
    }

    fn on_child(&mut self, t: Token, readable: bool, writable: bool) {
        let Some(c) = self.children.get_mut(&t) else { return };
        if writable {
            let _ = c.link.flush();
        }
        if !readable {
            return;
        }
        let mut up: Vec<Msg> = Vec::new();
        let mut lost = false;
        loop {
            let more = match c.link.fill() {
                Ok(m) => m,
                Err(_) => {
                    lost = true;
                    false
                }
            };
            loop {
                match c.link.next_msg() {
                    Ok(Some(msg)) => up.push(msg),
                    Ok(None) => break,
                    Err(e) => {
                        eprintln!("rlaunch daemon on node {}: rejected frame from a child: {e}", self.boot.node);
                        lost = true;
                        break;
                    }
                }
            }
            if c.link.eof || lost || !more {
                lost |= c.link.eof;
                break;
            }
        }
        let peer_ip = c.link.stream.peer_addr().ok().map(|a| a.ip().to_string());
        for msg in up {
            let mut msg = msg;
            if let Msg::Hello { node, addr, listen_port, .. } = &mut msg {
                let c = self.children.get_mut(&t).unwrap();
                if c.node.is_none() {
                    let expected = tree::children_of(Some(self.boot.node), self.boot.fanout, self.boot.nnodes);
                    if !expected.contains(node) {
                        eprintln!("rlaunch daemon on node {}: node {node} is not a child of this daemon; dropping it", self.boot.node);
                        lost = true;
                        break;
                    }
                    c.node = Some(*node);
                    c.link.set_link(self.boot.key, Dir::Down, *node);
                    if addr.is_none() && *listen_port != 0 {
                        *addr = peer_ip.clone();
                    }
                    if let Some(l) = &self.launch {
                        c.link.send(&Msg::Launch(l.clone()));
                        let _ = c.link.flush();
                    }
                }
            }
            // The fabric exchange combines a subtree's inventories here.
            if let Msg::Fabric { data } = msg {
                if let Some(node) = self.children.get(&t).and_then(|c| c.node) {
                    self.fabric_msg(Some(node), data);
                }
                continue;
            }
            // A subtree's fence contribution is combined here, not relayed.
            if let Msg::Fence { seq, puts } = msg {
                if let Some(node) = self.children.get(&t).and_then(|c| c.node) {
                    self.pmi_fence_from_child(node, seq, puts);
                }
                continue;
            }
            // PMIx fence contributions are combined here; direct-modex traffic is routed.
            let msg = match self.children.get(&t).and_then(|c| c.node) {
                Some(node) => match self.pmix_tree_msg(Some(node), msg) {
                    Some(m) => m,
                    None => continue,
                },
                None => msg,
            };
            self.parent.send(&msg);
        }
        if lost {
            if let Some(mut c) = self.children.remove(&t) {
                let _ = self.poll.registry().deregister(&mut c.link.stream);
                if let Some(node) = c.node {
                    if !self.shutdown {
                        self.parent.send(&Msg::NodeFailed { node, fault: NodeFault::LinkLost });
                    }
                }
            }
        }
        let _ = self.parent.flush();
    }

    fn finish(&mut self) -> i32 {
        // All ranks are done when the front end sends Shutdown; make sure of it anyway.
        self.signal_all(libc::SIGKILL);
        // Stops libpmix and removes its directory.
        drop(std::mem::take(&mut self.pmix));
        for c in self.children.values_mut() {
            flush_blocking(&mut c.link, Duration::from_secs(2));
        }
        flush_blocking(&mut self.parent, Duration::from_secs(2));
        crate::exitcode::SUCCESS
    }
}
