//! The front end's event loop: one owner of the job's state. Sockets, the signal pipe, daemon
//! stderr pipes and the stdin reader are events; handlers update the bookkeeping, ask the
//! services, and carry out the effects they return. Every failure goes to the [`Verdict`], every
//! line to the [`Reporter`].

use super::carriers::{Carriers, StartInfo};
use super::daemons::Daemons;
use super::effect::Effect;
use super::fabric::RootFabric;
use super::lost::{self, How, NodeLoss};
use super::images::RootImages;
use super::interrupts::{self, Interrupts};
use super::pmi::RootPmi;
use super::ranks::{JobFacts, Ranks};
use super::recovery::{JobState, Recovery};
use super::report::{ms_since, report_json, summary_lines, ReportInput, Timings};
use super::rendezvous::Rendezvous;
use super::reporter::{OutputStyle, Progress, Reporter};
use super::sinks::Sinks;
use super::traces::StackTraces;
use super::verdict::{fmt_secs, Action, Failure, Outcome, Verdict};
use crate::binding;
use crate::plan::JobPlan;
use crate::job::JobView;
use crate::link::{self, Inbox};
use crate::links::Links;
use crate::sig::SignalPipe;
use crate::spec::{RankStatus, StdinTarget};
use crate::token::{self, Source};
use crate::tree::{Hop, Router};
use crate::wire::{self, Bootstrap, Msg, NodeFault};
use anyhow::{Context, Result};
use launchers::start::{GroupStarter, NodeStarter, Starter};
use mio::{Events, Interest, Poll, Token, Waker};
use std::io;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// After a kill, how long to wait for daemons to report before giving up on them.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// At the end, how long daemons get to exit on Shutdown before their carriers are killed.
const EXIT_WAIT: Duration = Duration::from_secs(3);

struct Frontend {
    plan: JobPlan,
    job: JobView,
    poll: Poll,
    listener: mio::net::TcpListener,
    links: Links,
    signals: SignalPipe,
    daemons: Daemons,
    carriers: Carriers,
    ranks: Ranks,
    verdict: Verdict,
    recovery: Recovery,
    reporter: Reporter,
    sinks: Sinks,
    timings: Timings,
    pmi: RootPmi,
    fabric: RootFabric,
    images: RootImages,
    stdin: Option<Receiver<Vec<u8>>>,
    /// Links that may hold more input than one read took.
    ready: Vec<Token>,
    rendezvous: Rendezvous,
    traces: StackTraces,
    lost: NodeLoss,
    kill_sent_at: Option<Instant>,
    interrupts: Interrupts,
}

pub fn run(plan: JobPlan) -> Result<i32> {
    let key = wire::random_key().context("generating the job key")?;
    let ip = listen_ip(&plan);
    let mut listener = crate::link::listen(ip, plan.ports).with_context(|| format!("opening the front end's listening socket on {ip}"))?;
    let listen_port = listener.local_addr()?.port();
    let poll = Poll::new()?;
    poll.registry().register(&mut listener, token::LISTENER, Interest::READABLE)?;
    let mut signals = SignalPipe::new(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGUSR1, libc::SIGUSR2, libc::SIGCHLD])?;
    poll.registry().register(&mut signals.rx, token::SIGNALS, Interest::READABLE)?;
    let job = JobView::for_front_end(Box::new(plan.launch.clone()), plan.map.clone());
    // --inventory starts no rank, whatever the placeholder map says.
    let size = if job.launch().fabric.inventory.is_some() { 0 } else { job.map().size() as usize };
    let waker = Arc::new(Waker::new(poll.registry(), token::WAKE)?);
    let stdin = match job.launch().stdin {
        StdinTarget::None => None,
        _ => Some(super::stdin::spawn_reader(waker.clone())?),
    };
    let style = OutputStyle { tag: plan.tag_output, prefixes: plan.prefixes.clone(), files: plan.output_files.clone(), merge_stderr: plan.merge_stderr, timestamp: plan.timestamp_output, quiet: plan.quiet, verbose: plan.verbose };
    let mut fe = Frontend {
        links: Links::new(Router::new(*job.topology(), None), key),
        daemons: Daemons::new(*job.topology(), job.launch().nodes.iter().map(|n| n.name.clone()).collect()),
        fabric: RootFabric::new(&job, ip, { let w = waker.clone(); Arc::new(move || { let _ = w.wake(); }) }),
        ranks: Ranks::new(size),
        reporter: Reporter::new(style),
        sinks: Sinks::watch(poll.registry()),
        carriers: Carriers::new(StartInfo {
            nodes: plan.nodes.clone(),
            daemon_path: plan.daemon_path.clone(),
            key,
            loopback: plan.loopback,
            listen_port,
            listen_ip: Some(ip).filter(|ip| !ip.is_unspecified()),
            ports: plan.ports,
            notify: Arc::new(move || {
                let _ = waker.wake();
            }),
        }),
        verdict: Verdict::default(),
        recovery: Recovery::new(plan.restarts, &job),
        timings: Timings::default(),
        pmi: RootPmi::default(),
        ready: Vec::new(),
        rendezvous: Rendezvous::default(),
        traces: StackTraces::new(plan.get_stack_traces),
        lost: NodeLoss::new(&job),
        kill_sent_at: None,
        interrupts: Interrupts::default(),
        images: RootImages::new(&job, Instant::now()),
        job,
        poll,
        listener,
        signals,
        stdin,
        plan,
    };
    fe.daemons.start_clocks(Instant::now(), fe.plan.starter.is_group());
    fe.links.set_beat(crate::heartbeat::Beat::new(&fe.job.launch().node_loss));
    match fe.plan.starter.clone() {
        Starter::Group(g) => fe.start_group(&g),
        Starter::Each(s) => {
            for node in fe.job.topology().children_of(None) {
                let addr = fe.carriers.front_end_addr(node);
                fe.start_daemon(&s, node, addr);
            }
        }
    }
    fe.event_loop()
}

/// What a node's daemon gets when it joins: the launch, or, when the job began to end before
/// (another node failed to start), `Terminate`: it has nothing to run and confirms at once.
/// Where the front end listens: only on the address its daemons are told to connect to (one
/// machine: loopback; `--bind-address`; else the source address of the routes to the nodes that
/// connect to it, when they share one), so that nobody else on the network reaches it. Nodes
/// reached from several addresses leave it listening on all of them.
fn listen_ip(plan: &JobPlan) -> std::net::IpAddr {
    use std::net::{IpAddr, Ipv4Addr};
    if plan.loopback {
        return Ipv4Addr::LOCALHOST.into();
    }
    if let Some(ip) = plan.bind_address {
        return ip;
    }
    // Only the front end's children connect to it (a route lookup per node of a large job would
    // add to the start-up); with one group start every daemon meets it first (rendezvous).
    let n = plan.nodes.len() as u32;
    let direct = if plan.starter.is_group() { 0..n } else { crate::tree::Topology::new(n, plan.launch.fanout).children_of(None) };
    let mut ips: Vec<IpAddr> = direct.filter_map(|i| launchers::start::route_source_ip(&plan.nodes[i as usize].name)?.parse().ok()).collect();
    ips.sort();
    ips.dedup();
    match ips[..] {
        [one] => one,
        _ => Ipv4Addr::UNSPECIFIED.into(),
    }
}

fn first_message(terminating: bool, launch: &crate::wire::Launch) -> Msg {
    if terminating {
        Msg::Terminate
    } else {
        Msg::Launch(Box::new(launch.clone()))
    }
}

impl Frontend {
    fn event_loop(&mut self) -> Result<i32> {
        let mut events = Events::with_capacity(1024);
        loop {
            if self.finished() {
                return Ok(self.finish());
            }
            if let Err(e) = self.poll.poll(&mut events, self.next_timeout()) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e.into());
                }
            }
            for ev in events.iter() {
                match token::classify(ev.token()) {
                    Source::Fixed(token::LISTENER) => self.links.accept(&self.listener, self.poll.registry()),
                    Source::Fixed(token::SIGNALS) => self.on_signals(),
                    Source::Fixed(token::SINKS) => self.check_sinks(),
                    // The stdin reader posted, or a start thread saw its daemon end.
                    Source::Fixed(token::WAKE) => {
                        self.on_stdin();
                        self.reap_carriers();
                        let fx = self.fabric.on_wake(ms_since(self.plan.t0).unwrap_or(0.0));
                        self.apply(fx);
                    }
                    Source::DaemonStderr(node) => {
                        let joined = self.daemons.get(node).is_some_and(|d| d.joined);
                        self.carriers.read_stderr(node, joined, self.poll.registry(), &mut self.reporter);
                    }
                    Source::Link(_) => {
                        if ev.is_writable() {
                            if let Some(l) = self.links.child_mut(ev.token()) {
                                let _ = l.flush();
                            }
                        }
                        if ev.is_readable() && !self.ready.contains(&ev.token()) {
                            self.ready.push(ev.token());
                        }
                    }
                    _ => {}
                }
            }
            for t in std::mem::take(&mut self.ready) {
                if self.read_link(t) {
                    self.ready.push(t);
                }
            }
            self.check_timers();
            let _ = self.links.flush();
        }
    }

    fn next_timeout(&self) -> Option<Duration> {
        if !self.ready.is_empty() {
            return Some(Duration::ZERO);
        }
        let now = Instant::now();
        let job_deadline = self.plan.timeout.filter(|_| self.verdict.outcome() == super::verdict::Outcome::Running).map(|t| self.plan.t0 + t);
        let kill_wait = self.kill_sent_at.map(|t| t + KILL_WAIT);
        let held = self.recovery.deadline().map(|d| self.plan.t0 + d);
        [job_deadline, self.daemons.next_launch_deadline(self.plan.launch_timeout), kill_wait, self.reporter.progress_due(self.plan.t0), self.traces.deadline(), held, self.images.deadline(), self.lost.next_deadline()]
            .into_iter()
            .flatten()
            .min()
            .map(|d| d.saturating_duration_since(now))
    }

    /// Reads one link; returns true when it may hold more.
    fn read_link(&mut self, t: Token) -> bool {
        let Some(l) = self.links.child_mut(t) else { return false };
        let Inbox { msgs, rejected, closed, read_error, more, timed_out } = link::read(l, true);
        let peer_ip = l.stream.peer_addr().ok().map(|a| a.ip().to_string());
        if let Some(e) = rejected.as_ref().filter(|_| self.links.note_rejected()) {
            self.reporter.line(&format!("rlaunch: rejected a frame from a daemon: {e}"));
        }
        for (m, _) in msgs {
            self.on_msg(t, m, peer_ip.as_deref());
        }
        let silent = self.links.beat().filter(|_| timed_out).map(|b| How::Silent { ms: b.silence_ms() });
        let broken = silent.or(rejected.map(|e| How::LinkBroken(format!("rejected frame: {e}")))).or(read_error.map(How::LinkBroken)).or_else(|| closed.then_some(How::LinkClosed));
        if let Some(how) = broken {
            if let Some(node) = self.links.remove(t, self.poll.registry()) {
                let fx = self.node_loss(|l, cx| l.lose(node, how, cx));
                self.apply(fx);
            }
            return false;
        }
        more
    }

    fn on_msg(&mut self, t: Token, msg: Msg, peer_ip: Option<&str>) {
        let from = self.links.node_of(t);
        let effects = match msg {
            Msg::Hello { node: Bootstrap::ANY_NODE, listen_port, hostname, .. } => {
                let ctx = (&mut self.links, &mut self.daemons, self.job.topology());
                let refused = self.rendezvous.arrive(t, &hostname, listen_port, peer_ip, ctx, self.poll.registry());
                refused.into_iter().map(Effect::Say).collect()
            }
            Msg::Hello { node, pid, listen_port, hostname, addr } => {
                self.on_hello(t, node, pid, listen_port, hostname, addr.or_else(|| peer_ip.map(str::to_string)));
                Vec::new()
            }
            Msg::Started { node, pids, launch_bytes } => {
                self.ranks.started(&pids);
                self.daemons.launched(node, launch_bytes);
                self.timings.ranks_started(self.ranks.all_running(), self.plan.t0);
                self.recovery.node_started(node, &pids, self.ranks.all_running(), self.plan.t0.elapsed())
            }
            Msg::NodeDone { node } if self.recovery.stale_done(node) => Vec::new(),
            Msg::PmiReport { .. } | Msg::Fence { .. } | Msg::PmixFence { .. } | Msg::KvsGet { .. } | Msg::KvsValue { .. } if self.recovery.stopping() => Vec::new(),
            Msg::RestartStopped { node, generation } => {
                let fx = self.recovery.node_stopped(node, generation, &mut self.pmi, JobState::of(&mut self.ranks, &mut self.daemons, false, self.plan.t0));
                if fx.iter().any(|e| matches!(e, Effect::DownTo(_, Msg::RestartJob { .. }))) {
                    self.images.new_generation();
                }
                fx
            }
            Msg::Output { rank, stream, data } => self.reporter.output(rank, stream, &data).map(Effect::Fail).into_iter().collect(),
            Msg::RankExit { rank, status, .. } => self.rank_exit(rank, status),
            m @ (Msg::Timeline { .. } | Msg::Sensor { .. }) => self.daemons.node_report(m, ms_since(self.plan.t0)),
            Msg::NodeDone { node } => self.daemons.finished(node),
            Msg::StackTrace { rank, pid, text } => vec![StackTraces::show(&self.job, rank, pid, &text)],
            Msg::TracesDone { node } => self.traces.done(node),
            Msg::NodeFailed { node, fault } => self.node_failed(node, fault),
            Msg::PmiReport { rank, node, kind, message } => {
                let fx = self.pmi.report(&self.job, rank, node, kind, &message);
                self.recovery.screen(fx, self.verdict.terminating(), self.plan.t0.elapsed())
            }
            m @ (Msg::Fence { .. } | Msg::PmixFence { .. }) => from.map_or(Vec::new(), |n| vec![Effect::Deliver(n, m)]),
            Msg::KvsGet { from, key, .. } => self.pmi.kvs_get(&self.job, from, key),
            Msg::KvsValue { key, value, round, .. } => self.pmi.kvs_value(key, value, round),
            // Direct modex turns here between subtrees.
            m @ (Msg::PmixDmodexReq { node: to, .. } | Msg::PmixDmodexResp { to, .. }) => vec![Effect::Towards(to, m)],
            Msg::Fabric { data } => from.map_or(Vec::new(), |n| self.fabric.on_message(n, &data, ms_since(self.plan.t0).unwrap_or(0.0))),
            Msg::Rdma(step) => from.map_or(Vec::new(), |n| self.fabric.on_rdma(n, step, ms_since(self.plan.t0).unwrap_or(0.0))),
            Msg::NodeRejoin { node, .. } => self.links.accept_rejoin(t, node, self.poll.registry()).map_or(Vec::new(), |lost| self.node_loss(|l, cx| l.rejoined(node, None, lost, cx))),
            Msg::NodeRejoined { node, at, lost } => self.node_loss(|l, cx| l.rejoined(node, Some(at), lost, cx)),
            Msg::Bindings { node, ranks } => ranks.iter().map(|(r, text)| Effect::Say(format!("rlaunch: {}", binding::report_line(*r, &self.job.node_name(node), text)))).collect(),
            m if crate::images::is_image_msg(&m) => self.images.on_msg(&self.job, m, ms_since(self.plan.t0).unwrap_or(0.0)),
            other => vec![Effect::Say(format!("rlaunch: unexpected message from a daemon: {other:?}"))],
        };
        self.apply(effects);
    }

    fn on_hello(&mut self, t: Token, node: u32, pid: u32, listen_port: u16, hostname: String, addr: Option<String>) {
        if self.daemons.get(node).map_or(true, |d| d.joined) {
            self.reporter.line(&format!("rlaunch: ignoring an unexpected hello from node index {node}"));
            return;
        }
        // A direct child's hello comes on its own link; deeper nodes' are relayed by their parents.
        if self.job.topology().parent_of(node).is_none() {
            if self.links.child_mut(t).and_then(|l| l.peer_link()) != Some(node) {
                return;
            }
            self.links.join(t, node);
            let frame = self.links.send(Hop::Child(node), &first_message(self.verdict.terminating(), self.job.launch()));
            self.daemons.get_mut(node).expect("checked above").launch_bytes = frame as u32;
        }
        let d = self.daemons.get_mut(node).expect("checked above");
        (d.joined, d.pid, d.hostname, d.addr, d.listen_port, d.hello_ms) = (true, pid, hostname, addr, listen_port, ms_since(self.plan.t0));
        self.reporter.detail(2, &format!("rlaunch: daemon of node {} connected (pid {pid})", self.job.node_name(node)));
        if self.daemons.all_joined() {
            self.timings.daemons_connected_ms = ms_since(self.plan.t0);
            self.timings.launch_sent_ms = self.timings.daemons_connected_ms;
        }
        self.on_stdin();
        if self.rendezvous.waiting() {
            self.rendezvous.place(&mut self.links, &self.daemons, self.job.topology(), self.poll.registry());
        }
        self.daemons.start_children_clocks(node, Instant::now());
        // Unless daemons start their own children (tree spawn) or were all started at once
        // (srun), the front end starts the children of every daemon, pointed at that daemon.
        if let (None, Starter::Each(starter)) = (&self.job.launch().tree_spawn, self.plan.starter.clone()) {
            let parent = self.daemons.listen_addr(node).expect("joined above");
            // Once the job is ending nobody starts them: not waited for, not reported.
            for k in self.job.topology().children_of(Some(node)) {
                if self.verdict.terminating() { self.daemons.lose_subtree(k) } else { self.start_daemon(&starter, k, parent.clone()) }
            }
        }
    }

    fn start_daemon(&mut self, starter: &NodeStarter, node: u32, parent: String) {
        let asked = ms_since(self.plan.t0); // A forked daemon may run before the start returns.
        match self.carriers.start(starter, self.job.launch(), node, parent, self.poll.registry()) {
            Ok(()) => self.daemons.started(node, asked),
            Err(e) => self.launch_failure(node, e.to_string()),
        }
        self.timings.daemons_started(self.daemons.all_started(), self.plan.t0);
    }

    /// One command starts every daemon (srun); they join by rendezvous.
    fn start_group(&mut self, starter: &GroupStarter) {
        let start_ms = ms_since(self.plan.t0);
        let failed = self.carriers.start_group(starter, self.job.launch(), self.poll.registry()).err();
        for n in self.daemons.waiting().collect::<Vec<_>>() {
            match &failed {
                None => self.daemons.started(n, start_ms),
                Some(e) => self.launch_failure(n, e.to_string()),
            }
        }
        self.timings.daemons_started(self.daemons.all_started(), self.plan.t0);
    }

    fn on_signals(&mut self) {
        for s in self.signals.drain() {
            if interrupts::ends_job(s) {
                self.recovery.close(); // The user ends the job: its ranks' deaths are not failures.
            }
            let fx = self.interrupts.on_signal(s, Instant::now());
            self.apply(fx);
        }
        self.check_sinks(); // After SIGHUP: the terminal may be gone.
        self.reap_carriers();
    }

    /// The terminal hung up or the reader of stdout/stderr is gone: the job ends.
    fn check_sinks(&mut self) {
        if let Some(f) = self.sinks.gone() {
            self.fail(f);
        }
    }

    /// Until every daemon is connected, stdin stays in the bounded channel: a daemon that is not
    /// in the tree yet would miss it, and the reader thread waits meanwhile.
    fn on_stdin(&mut self) {
        if self.daemons.waiting().next().is_none() {
            super::stdin::take(&mut self.stdin).into_iter().for_each(|data| self.links.down(&Msg::Stdin { data }));
        }
    }

    fn check_timers(&mut self) {
        let p = Progress { ranks: self.ranks.len(), running: self.ranks.running_count(), ..self.daemons.progress() };
        self.reporter.progress(p, self.ranks.all_running() || self.verdict.terminating(), self.plan.t0);
        let now = Instant::now();
        if let Some(after) = self.plan.timeout.filter(|&t| now >= self.plan.t0 + t) {
            self.fail(Failure::Timeout { after });
        }
        let late = self.traces.expired(now).into_iter().chain(self.recovery.due(now.saturating_duration_since(self.plan.t0))).chain(self.images.tick(now)).collect();
        self.apply(late);
        for n in self.daemons.late(now, self.plan.launch_timeout) {
            if !self.daemons.get(n).is_some_and(|d| d.lost) {
                self.launch_failure(n, format!("no answer within {} (--launch-timeout)", fmt_secs(self.plan.launch_timeout)));
            }
        }
        if self.kill_sent_at.is_some_and(|t| now >= t + KILL_WAIT) {
            for n in self.daemons.unfinished() {
                self.reporter.line(&format!("rlaunch: node {} did not confirm its ranks ended; giving up on it", self.job.node_name(n)));
                self.daemons.get_mut(n).expect("node of the job").lost = true;
            }
        }
        let fx = self.node_loss(|l, cx| l.check(cx));
        self.apply(fx);
        self.reap_carriers();
    }

    /// A carrier that ended before its daemon joined explains why the node cannot be launched.
    fn reap_carriers(&mut self) {
        for (node, why) in self.carriers.early_exits(&self.plan.starter, &self.daemons, self.poll.registry(), &mut self.reporter) {
            self.launch_failure(node, why);
        }
    }

    fn rank_exit(&mut self, rank: u32, status: RankStatus) -> Vec<Effect> {
        if !self.ranks.exited(rank, status) {
            return Vec::new();
        }
        let ended = self.reporter.rank_done(rank).map(Effect::Fail);
        if self.ranks.all_reported() {
            self.timings.ranks_exited_ms = ms_since(self.plan.t0);
        }
        let s = JobState::of(&mut self.ranks, &mut self.daemons, self.verdict.terminating() || self.verdict.outcome() != Outcome::Running, self.plan.t0);
        ended.into_iter().chain(self.recovery.rank_ended(self.pmi.exit_failure(rank, status), s)).collect()
    }

    fn node_failed(&mut self, node: u32, fault: NodeFault) -> Vec<Effect> {
        let joined = self.daemons.get(node).map_or(true, |d| d.joined);
        match fault {
            NodeFault::LinkLost => self.node_loss(|l, cx| l.lose(node, How::LinkClosed, cx)),
            NodeFault::Silent { ms } => self.node_loss(|l, cx| l.lose(node, How::Silent { ms }, cx)),
            // Raised by a tree-spawning parent: this node never joined.
            NodeFault::LaunchFailed(why) | NodeFault::Internal(why) if !joined => {
                self.launch_failure(node, why);
                Vec::new()
            }
            NodeFault::LaunchFailed(why) => vec![Effect::Fail(Failure::NodeFault { node, why: format!("cannot launch: {why}") })],
            NodeFault::Internal(why) => vec![Effect::Fail(Failure::NodeFault { node, why })],
            NodeFault::Unsatisfiable(why) => vec![Effect::Fail(Failure::Unsatisfiable { message: format!("node {}: {why}", self.job.node_name(node)) })],
        }
    }

    fn launch_failure(&mut self, node: u32, why: String) {
        // Nodes below it were never going to be started by anyone.
        self.daemons.lose_subtree(node);
        self.fail(Failure::LaunchFailed { node, why });
    }

    /// Asks the lost-node service, lending it what it looks at.
    fn node_loss(&mut self, f: impl FnOnce(&mut NodeLoss, &mut lost::Ctx) -> Vec<Effect>) -> Vec<Effect> {
        let cx = &mut lost::Ctx { job: &self.job, ranks: &self.ranks, daemons: &mut self.daemons, router: self.links.router(), terminating: self.verdict.terminating(), restarts: self.plan.restarts.max > 0, now: Instant::now(), t0: self.plan.t0 };
        f(&mut self.lost, cx)
    }

    fn fail(&mut self, failure: Failure) {
        let timeout = matches!(failure, Failure::Timeout { .. });
        let d = self.verdict.record(failure, &JobFacts { job: &self.job, ranks: &self.ranks });
        if let Some(line) = d.line {
            self.reporter.line(&line);
        }
        let msg = match d.action {
            Action::Nothing => return,
            Action::Terminate => Msg::Terminate,
            Action::Kill => Msg::Kill,
        };
        // --get-stack-traces: the ranks' stacks first, then the end (see traces.rs).
        let running = self.daemons.unfinished().into_iter().filter(|&n| self.daemons.get(n).is_some_and(|d| d.joined)).collect();
        match self.traces.hold(msg.clone(), running).filter(|_| timeout) {
            Some(ask) => self.links.down(&ask),
            None => self.apply(vec![Effect::End(msg)]),
        }
    }

    fn apply(&mut self, effects: Vec<Effect>) {
        for e in self.fabric.carry(effects, &mut self.pmi, &self.job) {
            match e {
                Effect::Deliver(..) => {} // Taken to the root fence by `carry`.
                Effect::Send(hop, msg) => _ = self.links.send(hop, &msg),
                Effect::Down(msg) => self.links.down(&msg),
                Effect::DownTo(nodes, msg) => self.links.down_to(&nodes, &msg),
                Effect::Towards(node, msg) => _ = self.links.towards(node, &msg),
                Effect::Fail(f) => self.fail(f),
                Effect::Say(line) => self.reporter.line(&line),
                Effect::End(msg) => {
                    self.links.down(&msg);
                    self.kill_sent_at = Some(Instant::now());
                }
                Effect::Detail(level, line) => self.reporter.detail(level, &line),
                Effect::Lose(node) => self.links.gone(node, self.poll.registry()),
                Effect::NodeLost { node, to, ranks, failure } => {
                    let (mut fx, groups) = lost::take_over(node, to, ranks, &mut self.job, &mut self.links, &self.daemons);
                    for (on, ranks) in groups {
                        fx.extend(self.recovery.node_lost(node, on, ranks, failure.clone(), JobState::of(&mut self.ranks, &mut self.daemons, self.verdict.terminating(), self.plan.t0)));
                    }
                    self.apply(fx);
                }
                Effect::Inventory(text) => {
                    if let Some(f) = self.reporter.inventory(&text) {
                        self.fail(f);
                    }
                }
            }
        }
    }

    fn finished(&self) -> bool {
        // Daemons with no rank to wait for report done before the fabric exchange ends.
        self.daemons.all_accounted() && !self.recovery.holding() && !(self.fabric.gather().waiting() && self.verdict.outcome() == super::verdict::Outcome::Running)
    }

    fn finish(&mut self) -> i32 {
        if let Some(f) = self.reporter.end_output() {
            self.fail(f);
        }
        self.reporter.clear_progress();
        for l in closing_lines(self.plan.print_all_exitcodes, &self.job, &self.ranks, &self.links).into_iter().chain(self.verdict.closing_lines()) {
            self.reporter.line(&l);
        }
        self.links.down(&Msg::Shutdown);
        self.links.flush_blocking(Duration::from_secs(2));
        self.daemons.note_ssh(|n| self.carriers.start_phases(n), self.plan.t0);
        self.carriers.wait_all(EXIT_WAIT, &mut self.poll);
        self.timings.total_ms = ms_since(self.plan.t0);
        let exit_code = self.verdict.exit_code(self.ranks.all_reported());
        let input = ReportInput {
            job: &self.job,
            command_line: &self.plan.command_line,
            daemons: &self.daemons,
            ranks: &self.ranks,
            verdict: &self.verdict,
            exit_code,
            timings: &self.timings,
            fabric: &self.fabric,
            lost: &self.lost,
            images: &self.images,
            restarts: (self.recovery.log(), self.recovery.generation()),
        };
        let (summary, json) = (summary_lines(&input), self.plan.report.as_ref().map(|_| report_json(&input)));
        summary.iter().for_each(|line| self.reporter.detail(1, line));
        if let (Some(path), Some(json)) = (self.plan.report.clone(), json) {
            self.reporter.write_report(&path, &json);
        }
        exit_code
    }
}

/// What the front end says as the job ends: every rank's exit status (`-print-all-exitcodes`) and
/// how many frames were rejected after the first.
fn closing_lines(print_all_exitcodes: bool, job: &JobView, ranks: &Ranks, links: &Links) -> Vec<String> {
    let mut lines = Vec::new();
    if print_all_exitcodes {
        lines.extend(super::ranks::all_exit_codes(job, ranks));
    }
    lines.extend(links.rejected_summary().into_iter().map(|l| format!("rlaunch: {l}")));
    lines
}
