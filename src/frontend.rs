//! The front end's event loop: starts the daemons, sends the launch message, prints output, forwards
//! stdin and signals, applies the exit-status contract, and writes the report.
//!
//! All job state lives in [`Frontend`] and is changed only by the loop. The one other thread reads
//! stdin (it may be a regular file, which cannot be polled) and posts chunks through a channel.

use crate::link::{flush_blocking, Link};
use crate::output::tag_lines;
use crate::sig::{signal_name, SignalPipe};
use crate::tree;
use crate::spec::{RankStatus, StdinTarget};
use crate::wire::{self, Bootstrap, Dir, JobKey, Msg, NodeFault, Stream};
use crate::exitcode;
use anyhow::{Context, Result};
use launchers::start::{DaemonProcess, GroupStarter, NodeStarter, Starter};
use mio::{Events, Interest, Poll, Token, Waker};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

/// The root of the launch-time fabric exchange (`crate::fabric`).
#[path = "fabric/frontend_glue.rs"]
mod fabric_glue;

const LISTENER: Token = Token(0);
const SIGNALS: Token = Token(1);
const WAKER: Token = Token(2);
const LINK_BASE: usize = 1 << 20;
const STDERR_BASE: usize = 1 << 24;
/// A second ctrl-C within this window kills everything.
const SECOND_INTERRUPT: Duration = Duration::from_secs(5);
/// After a kill, how long to wait for daemons to report before giving up on them.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// PMI at the root: fence completion, lazy key lookups, PMI failure reports.
#[path = "pmi/frontend_glue.rs"]
mod pmi_glue;

/// PMIx at the root: its fence and direct-modex routing.
#[path = "pmix/frontend_glue.rs"]
mod pmix_glue;

/// Everything the loop needs to run one job, decided by `crate::cli::resolve`.
pub use crate::plan::JobPlan as Plan;

#[derive(Default)]
struct DaemonState {
    proc_: Option<DaemonProcess>,
    stderr: Option<mio::unix::pipe::Receiver>,
    stderr_buf: Vec<u8>,
    started: bool,
    hello: bool,
    done: bool,
    lost: bool,
    pid: u32,
    hostname: String,
    addr: Option<String>,
    /// Rendezvous: a joining daemon was given this node.
    assigned: bool,
    /// When this node's --launch-timeout started to run.
    launch_clock: Option<Instant>,
    listen_port: u16,
    launch_bytes: u32,
    exit: Option<i32>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Running,
    RankFailed,
    LaunchFailed,
    TimedOut,
    Killed,
}

struct Frontend {
    plan: Plan,
    key: JobKey,
    poll: Poll,
    listener: mio::net::TcpListener,
    listen_port: u16,
    links: HashMap<Token, Link>,
    next_token: usize,
    daemons: Vec<DaemonState>,
    rank_pid: Vec<u32>,
    rank_status: Vec<Option<RankStatus>>,
    exited: u32,
    first_failure: Option<u32>,
    exit_code: i32,
    outcome: Outcome,
    terminating: bool,
    kill_sent_at: Option<Instant>,
    interrupted_at: Option<Instant>,
    signals: SignalPipe,
    stdin_rx: Option<std::sync::mpsc::Receiver<Vec<u8>>>,
    stdout_broken: bool,
    out_files: HashMap<(u32, Stream), std::fs::File>,
    timings: Timings,
    ready: Vec<Token>,
    /// Rendezvous: daemons (by link) waiting for their parent to join before they are placed.
    pending_assign: Vec<(Token, u32)>,
    progress: Option<indicatif::ProgressBar>,
    progress_done: bool,
    pmi: pmi_glue::FrontPmi,
    pmix: pmix_glue::FrontPmix,
    fabric: crate::fabric::FrontGather,
}

#[derive(Default, serde::Serialize)]
struct Timings {
    daemons_started_ms: Option<f64>,
    daemons_connected_ms: Option<f64>,
    launch_sent_ms: Option<f64>,
    ranks_started_ms: Option<f64>,
    ranks_exited_ms: Option<f64>,
    total_ms: Option<f64>,
}

fn ms_since(t0: Instant) -> Option<f64> {
    Some(t0.elapsed().as_secs_f64() * 1000.0)
}

pub fn run(plan: Plan) -> Result<i32> {
    let key = wire::random_key().context("generating the job key")?;
    let bind = if plan.loopback { "127.0.0.1:0" } else { "0.0.0.0:0" };
    let mut listener = mio::net::TcpListener::bind(bind.parse().unwrap()).context("opening the front end's listening socket")?;
    let listen_port = listener.local_addr()?.port();
    let poll = Poll::new()?;
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut signals = SignalPipe::new(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGUSR1, libc::SIGUSR2, libc::SIGCHLD])?;
    poll.registry().register(&mut signals.rx, SIGNALS, Interest::READABLE)?;
    // --inventory starts no rank, whatever the placeholder map says.
    let size = if plan.launch.fabric.inventory.is_some() { 0 } else { plan.map.size() as usize };
    let nnodes = plan.nodes.len();
    let mut fe = Frontend {
        key,
        poll,
        listener,
        listen_port,
        links: HashMap::new(),
        next_token: LINK_BASE,
        daemons: (0..nnodes).map(|_| DaemonState::default()).collect(),
        rank_pid: vec![0; size],
        rank_status: vec![None; size],
        exited: 0,
        first_failure: None,
        exit_code: exitcode::SUCCESS,
        outcome: Outcome::Running,
        terminating: false,
        kill_sent_at: None,
        interrupted_at: None,
        signals,
        stdin_rx: None,
        stdout_broken: false,
        out_files: HashMap::new(),
        timings: Timings::default(),
        ready: Vec::new(),
        pmi: Default::default(),
        pmix: Default::default(),
        pending_assign: Vec::new(),
        progress: None,
        progress_done: false,
        fabric: crate::fabric::FrontGather::new(&plan.launch, &plan.map, plan.nodes.iter().map(|n| n.name.clone()).collect()),
        plan,
    };
    fe.start_stdin_reader()?;
    let now = Instant::now();
    for (n, d) in fe.daemons.iter_mut().enumerate() {
        // srun starts every daemon at once; otherwise only the front end's own children start now.
        if fe.plan.starter.is_group() || tree::parent_of(n as u32, fe.plan.launch.fanout).is_none() {
            d.launch_clock = Some(now);
        }
    }
    match fe.plan.starter.clone() {
        Starter::Group(group) => fe.start_group(&group),
        Starter::Each(starter) => {
            let direct = tree::children_of(None, fe.plan.launch.fanout, nnodes as u32);
            for node in direct {
                let addr = fe.parent_addr_for(node);
                fe.start_daemon(&starter, node, addr);
            }
        }
    }
    fe.event_loop()
}

impl Frontend {
    fn start_stdin_reader(&mut self) -> Result<()> {
        if self.plan.launch.stdin == StdinTarget::None {
            return Ok(());
        }
        let waker = Waker::new(self.poll.registry(), WAKER)?;
        // Bounded: a fast stdin cannot outrun a rank that reads slowly by more than this.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(16);
        std::thread::Builder::new().name("stdin".into()).spawn(move || {
            let mut stdin = io::stdin().lock();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match stdin.read(&mut buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => 0,
                };
                if tx.send(buf[..n].to_vec()).is_err() {
                    return;
                }
                let _ = waker.wake();
                if n == 0 {
                    // Dropping the waker closes its eventfd, and closing discards a wake-up the loop
                    // has not collected yet: the last chunks (and EOF) would sit in the channel
                    // unread. The fd lives until the front end exits.
                    std::mem::forget(waker);
                    return;
                }
            }
        })?;
        self.stdin_rx = Some(rx);
        Ok(())
    }

    /// The address a daemon on `node` should connect to when its parent is the front end.
    fn parent_addr_for(&self, node: u32) -> String {
        if self.plan.loopback {
            return format!("127.0.0.1:{}", self.listen_port);
        }
        let ip = launchers::start::route_source_ip(&self.plan.nodes[node as usize].name).unwrap_or_else(|| "127.0.0.1".into());
        format!("{}:{}", bracket_v6(&ip), self.listen_port)
    }

    /// One command starts every daemon (srun); they join by rendezvous. Its process and stderr are
    /// kept in node 0's record.
    fn start_group(&mut self, group: &GroupStarter) {
        let boot = Bootstrap {
            key: self.key,
            parent: self.parent_addr_for(0),
            node: Bootstrap::ANY_NODE,
            nnodes: self.plan.nodes.len() as u32,
            fanout: self.plan.launch.fanout,
            job_id: self.plan.job_id.clone(),
        };
        match launchers::start::start_group(group, &self.plan.nodes, &self.plan.daemon_path, &boot.to_line(), &launchers::start::no_notify()) {
            Ok(mut p) => {
                if let Some(e) = p.stderr.take() {
                    let mut r = mio::unix::pipe::Receiver::from(e);
                    let _ = r.set_nonblocking(true);
                    let _ = self.poll.registry().register(&mut r, Token(STDERR_BASE), Interest::READABLE);
                    self.daemons[0].stderr = Some(r);
                }
                self.daemons[0].proc_ = Some(p);
                for d in self.daemons.iter_mut() {
                    d.started = true;
                }
                self.timings.daemons_started_ms = ms_since(self.plan.t0);
            }
            Err(e) => {
                for n in 0..self.daemons.len() as u32 {
                    if !self.daemons[n as usize].lost {
                        self.launch_failure(n, format!("{e}"));
                    }
                }
            }
        }
    }

    /// A daemon that does not know its node rank (started by a resource manager) says its node name;
    /// it is told its rank and parent, or waits until its parent has joined.
    fn rendezvous(&mut self, t: Token, name: &str, listen_port: u16, peer_ip: Option<&str>) {
        let short = |s: &str| s.split('.').next().unwrap_or(s).to_string();
        let pick = (0..self.daemons.len())
            .find(|&i| !self.daemons[i].assigned && self.plan.nodes[i].name == name)
            .or_else(|| (0..self.daemons.len()).find(|&i| !self.daemons[i].assigned && short(&self.plan.nodes[i].name) == short(name)));
        let Some(node) = pick else {
            if let Some(l) = self.links.get_mut(&t) {
                l.send(&Msg::Refuse { message: format!("no unassigned node named '{name}' in this job") });
                flush_blocking(l, Duration::from_millis(500));
            }
            if let Some(mut l) = self.links.remove(&t) {
                let _ = self.poll.registry().deregister(&mut l.stream);
            }
            eprintln!("rlaunch: a daemon on '{name}' joined, but no node of that name is waiting; ignoring it");
            return;
        };
        let d = &mut self.daemons[node];
        d.assigned = true;
        d.listen_port = listen_port;
        d.addr = peer_ip.map(str::to_string);
        self.pending_assign.push((t, node as u32));
        self.assign_pending();
    }

    /// Sends every joined-but-unplaced daemon whose parent is now known where to go.
    fn assign_pending(&mut self) {
        let fanout = self.plan.launch.fanout;
        let pending = std::mem::take(&mut self.pending_assign);
        for (t, node) in pending {
            let parent = match tree::parent_of(node, fanout) {
                None => None,
                Some(p) => {
                    let pd = &self.daemons[p as usize];
                    if !pd.hello {
                        self.pending_assign.push((t, node));
                        continue;
                    }
                    Some(format!("{}:{}", bracket_v6(pd.addr.as_deref().unwrap_or("127.0.0.1")), pd.listen_port))
                }
            };
            let Some(l) = self.links.get_mut(&t) else { continue };
            let direct = parent.is_none();
            l.send(&Msg::Assign { node, parent });
            if direct {
                // The same connection continues as this node's link, both directions from seq 0.
                let _ = l.flush();
                l.rebind(self.key, Dir::Down, node);
            } else {
                flush_blocking(l, Duration::from_secs(2));
                if let Some(mut l) = self.links.remove(&t) {
                    let _ = self.poll.registry().deregister(&mut l.stream);
                }
            }
        }
    }

    fn start_daemon(&mut self, starter: &NodeStarter, node: u32, parent: String) {
        let boot = Bootstrap {
            key: self.key,
            parent,
            node,
            nnodes: self.plan.nodes.len() as u32,
            fanout: self.plan.launch.fanout,
            job_id: self.plan.job_id.clone(),
        };
        let n = &self.plan.nodes[node as usize];
        match launchers::start::start(starter, n, &self.plan.daemon_path, &boot.to_line(), &launchers::start::no_notify()) {
            Ok(mut p) => {
                if let Some(e) = p.stderr.take() {
                    let mut r = mio::unix::pipe::Receiver::from(e);
                    let _ = r.set_nonblocking(true);
                    let _ = self.poll.registry().register(&mut r, Token(STDERR_BASE + node as usize), Interest::READABLE);
                    self.daemons[node as usize].stderr = Some(r);
                }
                let d = &mut self.daemons[node as usize];
                d.proc_ = Some(p);
                d.started = true;
                if self.daemons.iter().all(|d| d.started) {
                    self.timings.daemons_started_ms = ms_since(self.plan.t0);
                }
            }
            Err(e) => {
                self.launch_failure(node, format!("{e}"));
            }
        }
    }

    fn event_loop(&mut self) -> Result<i32> {
        let mut events = Events::with_capacity(1024);
        loop {
            if self.finished() {
                return Ok(self.finish());
            }
            let timeout = self.next_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e.into());
                }
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(),
                    SIGNALS => self.on_signals(),
                    WAKER => self.on_stdin(),
                    t if t.0 >= STDERR_BASE => self.on_daemon_stderr((t.0 - STDERR_BASE) as u32),
                    t => {
                        if ev.is_writable() {
                            if let Some(l) = self.links.get_mut(&t) {
                                let _ = l.flush();
                            }
                        }
                        if ev.is_readable() && !self.ready.contains(&t) {
                            self.ready.push(t);
                        }
                    }
                }
            }
            let ready = std::mem::take(&mut self.ready);
            for t in ready {
                if self.read_link(t) {
                    self.ready.push(t);
                }
            }
            self.check_timers();
            for l in self.links.values_mut() {
                let _ = l.flush();
            }
        }
    }

    fn next_timeout(&self) -> Option<Duration> {
        if !self.ready.is_empty() {
            return Some(Duration::ZERO);
        }
        let mut deadlines = Vec::new();
        if let (Some(t), Outcome::Running) = (self.plan.timeout, self.outcome) {
            deadlines.push(self.plan.t0 + t);
        }
        for d in self.daemons.iter().filter(|d| !d.hello && !d.lost) {
            if let Some(c) = d.launch_clock {
                deadlines.push(c + self.plan.launch_timeout);
            }
        }
        if let Some(t) = self.kill_sent_at {
            deadlines.push(t + KILL_WAIT);
        }
        // Daemon processes that exited are noticed through SIGCHLD; poll now and then regardless,
        // because a SIGCHLD can arrive before the process record is stored.
        deadlines.push(Instant::now() + Duration::from_millis(500));
        deadlines.into_iter().min().map(|d| d.saturating_duration_since(Instant::now()))
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((mut s, _)) => {
                    s.set_nodelay(true).ok();
                    let t = Token(self.next_token);
                    self.next_token += 1;
                    if self.poll.registry().register(&mut s, t, Interest::READABLE | Interest::WRITABLE).is_ok() {
                        self.links.insert(t, Link::new(s, self.key, Dir::Down, None));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => break,
            }
        }
    }

    /// Reads one link; returns true when it may hold more.
    fn read_link(&mut self, t: Token) -> bool {
        let Some(l) = self.links.get_mut(&t) else { return false };
        let (more, mut broken) = match l.fill() {
            Ok(m) => (m, None),
            Err(e) => (false, Some(e.to_string())),
        };
        let mut msgs = Vec::new();
        loop {
            match l.next_msg() {
                Ok(Some(m)) => msgs.push(m),
                Ok(None) => break,
                Err(e) => {
                    eprintln!("rlaunch: rejected a frame from a daemon: {e}");
                    broken = Some(format!("rejected frame: {e}"));
                    break;
                }
            }
        }
        if l.eof && broken.is_none() {
            broken = Some("connection closed".into());
        }
        let peer_ip = l.stream.peer_addr().ok().map(|a| a.ip().to_string());
        for m in msgs {
            self.on_msg(t, m, peer_ip.as_deref());
        }
        if let Some(why) = broken {
            self.link_lost(t, &why);
            return false;
        }
        more
    }

    fn link_lost(&mut self, t: Token, why: &str) {
        let Some(mut l) = self.links.remove(&t) else { return };
        let _ = self.poll.registry().deregister(&mut l.stream);
        let Some(node) = l.peer_link() else { return };
        self.subtree_lost(node, why);
    }

    fn subtree_lost(&mut self, top: u32, why: &str) {
        let fanout = self.plan.launch.fanout;
        let affected: Vec<u32> = (0..self.daemons.len() as u32)
            .filter(|&n| tree::in_subtree(top, n, fanout) && !self.daemons[n as usize].done && !self.daemons[n as usize].lost)
            .collect();
        if affected.is_empty() {
            return;
        }
        for &n in &affected {
            self.daemons[n as usize].lost = true;
        }
        if self.outcome == Outcome::Running || self.outcome == Outcome::RankFailed && !self.terminating {
            let name = self.node_name(top);
            let running = self.running_ranks();
            let mut msg = format!("rlaunch: lost contact with the daemon on node {name} ({why})");
            if affected.len() > 1 {
                msg.push_str(&format!(", and through it with {} more node(s)", affected.len() - 1));
            }
            if running > 0 && !self.terminating {
                msg.push_str(&format!("; terminating {running} ranks"));
            }
            eprintln!("{msg}");
            self.fail(Outcome::LaunchFailed, exitcode::LAUNCH_FAILED);
        }
    }

    fn node_name(&self, node: u32) -> String {
        self.plan.nodes.get(node as usize).map(|n| n.name.clone()).unwrap_or_else(|| format!("#{node}"))
    }

    fn running_ranks(&self) -> usize {
        self.rank_status.iter().filter(|s| s.is_none()).count()
    }

    fn on_msg(&mut self, t: Token, msg: Msg, peer_ip: Option<&str>) {
        match msg {
            Msg::Hello { node: wire::Bootstrap::ANY_NODE, listen_port, hostname, .. } => {
                self.rendezvous(t, &hostname, listen_port, peer_ip);
            }
            Msg::Hello { node, pid, listen_port, hostname, addr } => {
                let direct = tree::parent_of(node, self.plan.launch.fanout).is_none();
                if (node as usize) >= self.daemons.len() || self.daemons[node as usize].hello {
                    eprintln!("rlaunch: ignoring an unexpected hello from node index {node}");
                    return;
                }
                if direct {
                    let l = self.links.get_mut(&t).expect("link exists");
                    if l.peer_link() != Some(node) {
                        return;
                    }
                    l.set_link(self.key, Dir::Down, node);
                    let frame = l.send(&Msg::Launch(Box::new(self.plan.launch.clone())));
                    let _ = l.flush();
                    self.daemons[node as usize].launch_bytes = frame as u32;
                }
                let d = &mut self.daemons[node as usize];
                d.hello = true;
                d.pid = pid;
                d.hostname = hostname;
                let addr = addr.or_else(|| peer_ip.map(str::to_string));
                d.addr = addr.clone();
                d.listen_port = listen_port;
                if self.plan.verbose > 1 {
                    eprintln!("rlaunch: daemon of node {} connected (pid {pid})", self.plan.nodes[node as usize].name);
                }
                if self.daemons.iter().all(|d| d.hello) {
                    self.timings.daemons_connected_ms = ms_since(self.plan.t0);
                    self.timings.launch_sent_ms = self.timings.daemons_connected_ms;
                }
                self.on_stdin();
                if !self.pending_assign.is_empty() {
                    self.assign_pending();
                }
                // Unless daemons start their own children (tree spawn) or were all started at once
                // (srun), the front end starts the children of every daemon, pointed at that daemon.
                let kids = tree::children_of(Some(node), self.plan.launch.fanout, self.daemons.len() as u32);
                let now = Instant::now();
                for k in kids.clone() {
                    self.daemons[k as usize].launch_clock.get_or_insert(now);
                }
                let front_starts_kids = !kids.is_empty() && self.plan.launch.tree_spawn.is_none();
                if let (true, Starter::Each(starter)) = (front_starts_kids, self.plan.starter.clone()) {
                    let parent = format!("{}:{listen_port}", bracket_v6(addr.as_deref().unwrap_or("127.0.0.1")));
                    for k in kids {
                        if !self.terminating {
                            self.start_daemon(&starter, k, parent.clone());
                        }
                    }
                }
            }
            Msg::Started { node, pids, launch_bytes } => {
                for (r, p) in pids {
                    if let Some(slot) = self.rank_pid.get_mut(r as usize) {
                        *slot = p;
                    }
                }
                if let Some(d) = self.daemons.get_mut(node as usize) {
                    if launch_bytes > 0 {
                        d.launch_bytes = launch_bytes;
                    }
                }
                if self.rank_pid.iter().all(|&p| p != 0) && self.timings.ranks_started_ms.is_none() {
                    self.timings.ranks_started_ms = ms_since(self.plan.t0);
                }
            }
            Msg::Output { rank, stream, data } => self.output(rank, stream, &data),
            Msg::RankExit { rank, pid, status } => self.rank_exit(rank, pid, status),
            Msg::NodeDone { node } => {
                if let Some(d) = self.daemons.get_mut(node as usize) {
                    d.done = true;
                }
            }
            Msg::NodeFailed { node, fault } => {
                let name = self.node_name(node);
                let joined = (node as usize) >= self.daemons.len() || self.daemons[node as usize].hello;
                match fault {
                    NodeFault::LinkLost => self.subtree_lost(node, "connection closed, seen by its parent daemon"),
                    // Raised by a tree-spawning parent: this node never joined.
                    NodeFault::LaunchFailed(why) | NodeFault::Internal(why) if !joined => self.launch_failure(node, why),
                    NodeFault::LaunchFailed(why) => {
                        eprintln!("rlaunch: node {name}: cannot launch: {why}");
                        self.fail(Outcome::LaunchFailed, exitcode::LAUNCH_FAILED);
                    }
                    NodeFault::Internal(why) => {
                        eprintln!("rlaunch: node {name}: {why}");
                        self.fail(Outcome::LaunchFailed, exitcode::LAUNCH_FAILED);
                    }
                }
            }
            Msg::PmiReport { rank, node, kind, message } => self.pmi_report(rank, node, kind, message),
            Msg::Fence { seq, puts } => self.pmi_fence(t, seq, puts),
            Msg::KvsGet { from, key, .. } => self.pmi_kvs_get(from, key),
            Msg::KvsValue { key, value, round, .. } => self.pmi_kvs_value(key, value, round),
            m @ (Msg::PmixFence { .. } | Msg::PmixDmodexReq { .. } | Msg::PmixDmodexResp { .. }) => {
                if let Some(other) = self.pmix_msg(t, m) {
                    eprintln!("rlaunch: unexpected message from a daemon: {other:?}");
                }
            }
            Msg::Fabric { data } => self.on_fabric(t, data),
            other => eprintln!("rlaunch: unexpected message from a daemon: {other:?}"),
        }
    }

    fn output(&mut self, rank: u32, stream: Stream, data: &[u8]) {
        if let Some(dir) = &self.plan.output_dir {
            let f = match self.out_files.entry((rank, stream)) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    let path = dir.join(output_file_name(rank, stream));
                    match std::fs::OpenOptions::new().append(true).create(true).open(&path) {
                        Ok(f) => v.insert(f),
                        Err(e) => {
                            eprintln!("rlaunch: cannot write {}: {e}", path.display());
                            return;
                        }
                    }
                }
            };
            let _ = f.write_all(data);
            return;
        }
        let bytes = if self.plan.tag_output { tag_lines(format!("[{rank}] ").as_bytes(), data) } else { data.to_vec() };
        // The progress line lives on stderr: take it off the screen while job output is written.
        if let Some(pb) = self.progress.clone() {
            pb.suspend(|| self.write_output(stream, &bytes));
        } else {
            self.write_output(stream, &bytes);
        }
    }

    fn write_output(&mut self, stream: Stream, bytes: &[u8]) {
        match stream {
            Stream::Stdout => {
                if self.stdout_broken {
                    return;
                }
                let mut out = io::stdout().lock();
                if out.write_all(bytes).and_then(|_| out.flush()).is_err() {
                    // A closed pipe (`| head`) must not take the job down; output is dropped.
                    self.stdout_broken = true;
                }
            }
            Stream::Stderr => {
                let mut err = io::stderr().lock();
                let _ = err.write_all(bytes);
            }
        }
    }

    fn rank_exit(&mut self, rank: u32, pid: u32, status: RankStatus) {
        let Some(slot) = self.rank_status.get_mut(rank as usize) else { return };
        if slot.is_some() {
            return;
        }
        *slot = Some(status);
        self.exited += 1;
        if self.exited as usize == self.rank_status.len() {
            self.timings.ranks_exited_ms = ms_since(self.plan.t0);
        }
        if self.pmi_rank_exit(rank, status) {
            return;
        }
        if status.is_success() || self.first_failure.is_some() || self.terminating {
            return;
        }
        self.first_failure = Some(rank);
        let node = self.plan.map.rank(rank).node;
        let host = self.node_name(node);
        let running = self.running_ranks();
        let cause = match status {
            RankStatus::Exited(c) => format!("rank {rank} (pid {pid} on {host}) exited with status {c}"),
            RankStatus::Signaled(s) => format!("rank {rank} (pid {pid} on {host}) was killed by signal {s} ({})", signal_name(s)),
            RankStatus::SpawnFailed(errno) => {
                let app = self.plan.map.rank(rank).app as usize;
                format!(
                    "rank {rank} on {host}: cannot start '{}': {}",
                    self.plan.launch.apps[app].argv[0],
                    io::Error::from_raw_os_error(errno)
                )
            }
        };
        if running > 0 {
            eprintln!("rlaunch: {cause}; terminating {running} other rank{}", if running == 1 { "" } else { "s" });
        } else {
            eprintln!("rlaunch: {cause}");
        }
        self.fail(Outcome::RankFailed, status.exit_code());
    }

    /// Records the first failure and ends the job.
    fn fail(&mut self, outcome: Outcome, code: i32) {
        if self.outcome == Outcome::Running {
            self.outcome = outcome;
            self.exit_code = code;
        }
        if !self.terminating {
            self.terminating = true;
            self.broadcast(&Msg::Terminate);
            self.kill_sent_at = Some(Instant::now());
        }
    }

    fn broadcast(&mut self, msg: &Msg) {
        for l in self.links.values_mut() {
            if l.peer_link().is_some() {
                l.send(msg);
                let _ = l.flush();
            }
        }
    }

    fn on_signals(&mut self) {
        for s in self.signals.drain() {
            match s {
                libc::SIGCHLD => {}
                libc::SIGINT => {
                    let now = Instant::now();
                    match self.interrupted_at {
                        Some(t) if now.duration_since(t) < SECOND_INTERRUPT => {
                            eprintln!("rlaunch: second interrupt; killing all {} running ranks", self.running_ranks());
                            if self.outcome == Outcome::Running || self.outcome == Outcome::RankFailed {
                                self.outcome = Outcome::Killed;
                                self.exit_code = 128 + libc::SIGINT;
                            }
                            self.terminating = true;
                            self.broadcast(&Msg::Kill);
                            self.kill_sent_at = Some(now);
                        }
                        _ => {
                            self.interrupted_at = Some(now);
                            if self.plan.verbose > 0 {
                                eprintln!("rlaunch: forwarding SIGINT to all ranks (interrupt again within 5 s to kill them)");
                            }
                            self.broadcast(&Msg::Signal { signum: s });
                        }
                    }
                }
                _ => self.broadcast(&Msg::Signal { signum: s }),
            }
        }
        self.reap_daemons();
    }

    fn reap_daemons(&mut self) {
        for node in 0..self.daemons.len() {
            let d = &mut self.daemons[node];
            let Some(p) = d.proc_.as_mut() else { continue };
            if d.exit.is_some() {
                continue;
            }
            if let Some(code) = p.waiter.try_wait() {
                d.exit = Some(code);
                if self.plan.starter.is_group() {
                    // srun ended: every node that has not joined by now never will.
                    self.on_daemon_stderr(0);
                    let err = String::from_utf8_lossy(&self.daemons[0].stderr_buf).trim().to_string();
                    let what = if err.is_empty() { String::new() } else { format!(": {err}") };
                    for n in 0..self.daemons.len() {
                        if !self.daemons[n].hello && !self.daemons[n].lost {
                            self.launch_failure(n as u32, format!("the daemon step ended with status {code} before this node joined{what}"));
                        }
                    }
                    continue;
                }
                if !d.hello && !d.lost && !self.terminating_or_done() {
                    // Its stderr says why; give the pipe a moment to be read before reporting.
                    self.on_daemon_stderr(node as u32);
                    let err = String::from_utf8_lossy(&self.daemons[node].stderr_buf).trim().to_string();
                    let what = if err.is_empty() { String::new() } else { format!(": {err}") };
                    let msg = format!("daemon exited early with status {code}{what}");
                    self.launch_failure(node as u32, msg);
                }
            }
        }
    }

    fn terminating_or_done(&self) -> bool {
        self.daemons.iter().all(|d| d.done)
    }

    fn launch_failure(&mut self, node: u32, why: String) {
        let name = self.node_name(node);
        eprintln!("rlaunch: cannot launch on node {name}: {why}");
        self.daemons[node as usize].lost = true;
        // Nodes below it were never going to be started by anyone.
        let fanout = self.plan.launch.fanout;
        for n in 0..self.daemons.len() as u32 {
            if tree::in_subtree(node, n, fanout) {
                self.daemons[n as usize].lost = true;
            }
        }
        self.fail(Outcome::LaunchFailed, exitcode::LAUNCH_FAILED);
    }

    fn on_daemon_stderr(&mut self, node: u32) {
        let mut buf = [0u8; 4096];
        let d = &mut self.daemons[node as usize];
        let Some(r) = d.stderr.as_mut() else { return };
        loop {
            match r.read(&mut buf) {
                Ok(0) => {
                    if let Some(mut r) = d.stderr.take() {
                        let _ = self.poll.registry().deregister(&mut r);
                    }
                    break;
                }
                Ok(n) => {
                    // Before the daemon joined, its stderr explains failures: keep it for the
                    // error line. Afterwards pass it through as it comes.
                    if d.hello {
                        let _ = io::stderr().write_all(&buf[..n]);
                    } else if d.stderr_buf.len() < 64 * 1024 {
                        d.stderr_buf.extend_from_slice(&buf[..n]);
                    }
                }
                Err(_) => break,
            }
        }
    }

    fn on_stdin(&mut self) {
        let Some(rx) = self.stdin_rx.as_ref() else { return };
        // Until every daemon is connected, leave the chunks in the bounded channel: a daemon that
        // is not in the tree yet would miss them, and the reader thread waits meanwhile.
        if self.daemons.iter().any(|d| !d.hello && !d.lost) {
            return;
        }
        let mut chunks = Vec::new();
        while let Ok(c) = rx.try_recv() {
            chunks.push(c);
        }
        for c in chunks {
            if c.is_empty() {
                self.stdin_rx = None;
            }
            self.broadcast(&Msg::Stdin { data: c });
        }
    }

    /// Launch progress on a terminal, for launches that take more than about a second; gone once
    /// every rank runs, and never shown with --quiet or when stderr is not a terminal.
    fn update_progress(&mut self) {
        if self.progress_done {
            return;
        }
        let total = self.daemons.len();
        let started = self.daemons.iter().filter(|d| d.started).count();
        let connected = self.daemons.iter().filter(|d| d.hello).count();
        let running = self.rank_pid.iter().filter(|&&p| p != 0).count();
        let launched = running == self.rank_pid.len() || self.terminating;
        if launched {
            self.progress_done = true;
            if let Some(pb) = self.progress.take() {
                pb.finish_and_clear();
            }
            return;
        }
        if self.progress.is_none() {
            use std::io::IsTerminal;
            if self.plan.quiet || self.plan.t0.elapsed() < Duration::from_secs(1) || !io::stderr().is_terminal() {
                return;
            }
            let pb = indicatif::ProgressBar::new_spinner();
            pb.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            pb.enable_steady_tick(Duration::from_millis(120));
            self.progress = Some(pb);
        }
        if let Some(pb) = &self.progress {
            pb.set_message(format!(
                "rlaunch: daemons started {started}/{total}, connected {connected}/{total}, ranks running {running}/{}",
                self.rank_pid.len()
            ));
        }
    }

    fn check_timers(&mut self) {
        self.update_progress();
        let now = Instant::now();
        if let (Some(t), Outcome::Running) = (self.plan.timeout, self.outcome) {
            if now >= self.plan.t0 + t {
                let running = self.running_ranks();
                eprintln!("rlaunch: job timed out after {} (--timeout); killing {running} running rank{}", fmt_secs(t), if running == 1 { "" } else { "s" });
                self.outcome = Outcome::TimedOut;
                self.exit_code = exitcode::TIMEOUT;
                self.terminating = true;
                self.broadcast(&Msg::Terminate);
                self.kill_sent_at = Some(now);
            }
        }
        {
            // Each node's clock starts when its start could begin: at once for the front end's own
            // children (and srun), when its parent joined for the others. A deep tree on a busy
            // machine then fails only the node that is really silent.
            let timeout = self.plan.launch_timeout;
            let late: Vec<u32> = (0..self.daemons.len() as u32)
                .filter(|&n| {
                    let d = &self.daemons[n as usize];
                    !d.hello && !d.lost && d.launch_clock.is_some_and(|c| now >= c + timeout)
                })
                .collect();
            for n in late {
                if !self.daemons[n as usize].lost {
                    self.launch_failure(n, format!("no answer within {} (--launch-timeout)", fmt_secs(self.plan.launch_timeout)));
                }
            }
        }
        if let Some(t) = self.kill_sent_at {
            if now >= t + KILL_WAIT {
                for n in 0..self.daemons.len() {
                    if !self.daemons[n].done && !self.daemons[n].lost {
                        eprintln!("rlaunch: node {} did not confirm its ranks ended; giving up on it", self.node_name(n as u32));
                        self.daemons[n].lost = true;
                    }
                }
            }
        }
        self.reap_daemons();
    }

    fn finished(&self) -> bool {
        // Daemons with no rank to wait for report done before the fabric exchange ends.
        self.daemons.iter().all(|d| d.done || d.lost) && !(self.fabric.waiting() && self.outcome == Outcome::Running)
    }

    fn finish(&mut self) -> i32 {
        if let Some(pb) = self.progress.take() {
            pb.finish_and_clear();
        }
        self.broadcast(&Msg::Shutdown);
        for l in self.links.values_mut() {
            flush_blocking(l, Duration::from_secs(2));
        }
        // Daemons exit on Shutdown; wait for the ones we started (bounded), then kill stragglers.
        let deadline = Instant::now() + Duration::from_secs(3);
        for d in self.daemons.iter_mut() {
            let Some(p) = d.proc_.as_mut() else { continue };
            loop {
                match p.waiter.try_wait() {
                    Some(_) => break,
                    None if Instant::now() < deadline => {
                        let _ = self.poll.poll(&mut Events::with_capacity(8), Some(Duration::from_millis(5)));
                    }
                    None => {
                        p.waiter.kill();
                        break;
                    }
                }
            }
            d.proc_ = None;
        }
        self.timings.total_ms = ms_since(self.plan.t0);
        if self.outcome == Outcome::Running && self.rank_status.iter().any(|s| s.is_none()) {
            // Every node is accounted for but some ranks never reported: only after a failure.
            self.exit_code = exitcode::LAUNCH_FAILED;
        }
        if self.plan.verbose > 0 {
            let t = &self.timings;
            eprintln!(
                "rlaunch: {} ranks on {} node(s), fan-out {}: daemons connected {:.1} ms, ranks started {:.1} ms, ranks exited {:.1} ms, total {:.1} ms",
                self.rank_status.len(),
                self.daemons.len(),
                self.plan.launch.fanout,
                t.daemons_connected_ms.unwrap_or(f64::NAN),
                t.ranks_started_ms.unwrap_or(f64::NAN),
                t.ranks_exited_ms.unwrap_or(f64::NAN),
                t.total_ms.unwrap_or(f64::NAN)
            );
        }
        if let Some(path) = self.plan.report.clone() {
            if let Err(e) = std::fs::write(&path, self.report_json()) {
                eprintln!("rlaunch: cannot write the report {}: {e}", path.display());
            }
        }
        self.exit_code
    }

    fn report_json(&self) -> String {
        use serde_json::json;
        let ranks: Vec<_> = (0..self.rank_status.len())
            .map(|r| {
                let p = self.plan.map.rank(r as u32);
                let status = match self.rank_status[r] {
                    Some(RankStatus::Exited(c)) => json!({"exited": c}),
                    Some(RankStatus::Signaled(s)) => json!({"signaled": s, "signal_name": signal_name(s)}),
                    Some(RankStatus::SpawnFailed(e)) => json!({"spawn_failed": io::Error::from_raw_os_error(e).to_string()}),
                    None => json!(null),
                };
                json!({
                    "rank": r, "node": p.node, "host": self.plan.nodes[p.node as usize].name,
                    "local_rank": p.local_rank, "app": p.app, "pid": self.rank_pid[r],
                    "status": status,
                    "exit_code": self.rank_status[r].map(|s| s.exit_code()),
                })
            })
            .collect();
        let nodes: Vec<_> = self
            .daemons
            .iter()
            .enumerate()
            .map(|(i, d)| {
                json!({
                    "node": i, "name": self.plan.nodes[i].name, "slots": self.plan.nodes[i].slots,
                    "hostname": d.hostname, "daemon_pid": d.pid, "address": d.addr,
                    "launch_bytes": d.launch_bytes, "ranks": self.plan.map.ranks_on(i as u32),
                    "state": if d.done { "done" } else if d.lost { "lost" } else { "unknown" },
                })
            })
            .collect();
        let outcome = match self.outcome {
            Outcome::Running => "success",
            Outcome::RankFailed => "rank-failed",
            Outcome::LaunchFailed => "launch-failed",
            Outcome::TimedOut => "timeout",
            Outcome::Killed => "killed",
        };
        let apps: Vec<_> = self
            .plan
            .launch
            .apps
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let r = self.plan.map.app_ranks(i as u32);
                json!({"app": i, "argv": a.argv, "cwd": a.cwd, "ranks": [r.start, r.end]})
            })
            .collect();
        let v = json!({
            "rlaunch_version": env!("CARGO_PKG_VERSION"),
            "job_id": self.plan.job_id,
            "command": self.plan.command_line,
            "size": self.rank_status.len(),
            "outcome": outcome,
            "exit_code": self.exit_code,
            "first_failed_rank": self.first_failure,
            "fanout": self.plan.launch.fanout,
            "tree_depth": tree::depth(self.daemons.len() as u32, self.plan.launch.fanout),
            "apps": apps,
            "nodes": nodes,
            "ranks": ranks,
            "timings": self.timings,
            "fabric": self.fabric.report_fabric(),
            "fabric_detail": self.fabric.report_detail(),
        });
        serde_json::to_string_pretty(&v).expect("json") + "\n"
    }
}

pub fn output_file_name(rank: u32, stream: Stream) -> String {
    match stream {
        Stream::Stdout => format!("rank.{rank}.stdout"),
        Stream::Stderr => format!("rank.{rank}.stderr"),
    }
}

fn fmt_secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0} s")
    } else {
        format!("{s} s")
    }
}

fn bracket_v6(ip: &str) -> String {
    if ip.contains(':') && !ip.starts_with('[') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    }
}

