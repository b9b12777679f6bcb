//! The daemon's event loop. It owns the poll, the tree links, the listener, the signal pipe, the
//! job (built once when the launch message arrives) and the services; it turns each readiness
//! event into a call to one service and carries out the [`Effect`]s the service returns. Other
//! threads (libpmix's upcalls, tree spawn's ssh, stack tracers) only wake it.

use super::adopted;
use super::boot::{self, Joined};
use super::effect::Effect;
use super::fabric::Fabric;
use super::guard::Guard;
use super::images::Images;
use super::pmi::Pmi;
use super::pmix::{self, Pmix};
use super::ranks::Ranks;
use super::repair;
use super::restart::{self, Restarts};
use super::say::say;
use super::sensors::Sensors;
use super::spawn::{self, Spawner};
use super::traces::Traces;
use super::tree_spawn::TreeSpawn;
use crate::job::JobView;
use crate::link::{self, Inbox};
use crate::links::Links;
use crate::sig::SignalPipe;
use crate::timeline::{Phase, Recorder};
use crate::spec::StdinTarget;
use crate::token::{self, Source};
use crate::wire::{Bootstrap, Launch, Msg, NodeFault};
use anyhow::{Context, Result};
use launchers::start::Notify;
use mio::event::Event;
use mio::{Events, Poll, Token, Waker};
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The job as far as this daemon knows it.
enum Job {
    /// No launch message yet.
    Waiting,
    /// The launch message came, but the process map could not be computed from it.
    Broken(Box<Launch>),
    Ready(JobView),
}

impl Job {
    fn launch(&self) -> Option<&Launch> {
        match self {
            Job::Waiting => None,
            Job::Broken(l) => Some(l),
            Job::Ready(j) => Some(j.launch()),
        }
    }

    fn view(&self) -> Option<&JobView> {
        match self {
            Job::Ready(j) => Some(j),
            _ => None,
        }
    }

    fn view_mut(&mut self) -> Option<&mut JobView> {
        match self {
            Job::Ready(j) => Some(j),
            _ => None,
        }
    }

    /// The node of the one rank that reads stdin, when there is one and it is known.
    fn stdin_node(&self) -> Option<u32> {
        match self.launch()?.stdin {
            StdinTarget::Rank(r) => self.view()?.node_of_rank(r),
            _ => None,
        }
    }
}

pub struct Daemon {
    node: u32,
    boot: Bootstrap,
    listen_port: u16,
    poll: Poll,
    links: Links,
    listener: Option<mio::net::TcpListener>,
    signals: SignalPipe,
    job: Job,
    /// Size of the launch frame as it arrived, reported in `Started`.
    launch_bytes: u32,
    ranks: Ranks,
    tree_spawn: TreeSpawn,
    pmi: Pmi,
    pmix: Pmix,
    fabric: Fabric,
    traces: Traces,
    sensors: Sensors,
    images: Images,
    restarts: Restarts,
    timeline: Recorder,
    /// One waker for every other thread (mio allows one per poll): libpmix's progress thread and
    /// the ssh threads of tree spawn.
    waker: Arc<Waker>,
    /// The ssh threads' side of `waker`.
    notify: Notify,
    /// Last: dropping it when the daemon ends sets the guard off.
    guard: Guard,
    node_done_sent: bool,
    orphaned: bool,
    shutdown: bool,
}

/// Joins the tree and builds the daemon: the guard, the links and the services, before any
/// event is handled.
fn assemble(t0: Instant) -> Result<Daemon> {
    let guard = Guard::start(); // First: it is a fork of this process (see guard.rs).
    let Joined { boot, poll, links, listener, listen_port, signals } = boot::join()?;
    let timeline = Recorder::joined(t0); // The hello went: the anchor of this daemon's clock.
    let node = boot.node;
    let waker = Arc::new(Waker::new(poll.registry(), token::WAKE).context("creating the loop's waker")?);
    let w = waker.clone();
    let notify: Notify = Arc::new(move || {
        let _ = w.wake();
    });
    let fabric = Fabric::new(node, links.router().topology(), notify.clone()).on_ip(links.parent_local_ip());
    Ok(Daemon {
        waker,
        notify,
        node,
        boot,
        listen_port,
        poll,
        links,
        listener,
        signals,
        job: Job::Waiting,
        launch_bytes: 0,
        ranks: Ranks::default(),
        tree_spawn: TreeSpawn::default(),
        pmi: Pmi::new(node),
        pmix: Pmix::new(node),
        fabric,
        traces: Traces::default(),
        sensors: Sensors::default(),
        images: Images::new(node),
        restarts: Restarts::new(node),
        timeline,
        guard,
        node_done_sent: false,
        orphaned: false,
        shutdown: false,
    })
}

impl Daemon {
    /// Joins the tree and runs the loop until the job is over; returns the exit code.
    pub fn run(t0: Instant) -> Result<i32> {
        let mut d = assemble(t0)?;
        // While the launch message travels: it is needed as soon as that arrives.
        d.fabric.discover();
        d.timeline.mark(Phase::FabricDiscovered, Instant::now());
        d.event_loop()
    }

    fn event_loop(&mut self) -> Result<i32> {
        let mut events = Events::with_capacity(1024);
        loop {
            if self.shutdown {
                return Ok(self.finish());
            }
            if self.orphaned && self.ranks.all_reported() {
                adopted::kill_all_but(&self.guard, &self.tree_spawn);
                return Ok(crate::exitcode::LAUNCH_FAILED);
            }
            let timeout = self.next_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e.into());
                }
            }
            for ev in events.iter() {
                self.on_event(ev);
            }
            let fx = self.ranks.drain(self.links.pending_up(), self.poll.registry());
            self.apply(fx);
            let fx = self.pmi.read_more(self.poll.registry()).into_iter().chain(self.images.pump(|n| self.links.pending_towards(n))).collect();
            self.apply(fx);
            if self.tree_spawn.watching() {
                let fx = self.tree_spawn.check(self.links.joined());
                self.apply(fx);
            }
            let now = Instant::now();
            let fx = self.ranks.check_timers(now, self.poll.registry());
            self.apply(fx);
            if let Some(job) = self.job.view() {
                let fx = self.pmix.check_timer(job, now).into_iter().chain(self.images.check_timer(now)).collect();
                self.apply(fx);
            }
            self.check_done();
            if self.links.flush().is_err() {
                self.parent_lost();
            }
        }
    }

    fn next_timeout(&self) -> Option<Duration> {
        if self.ranks.wants_read(self.links.pending_up()) || self.pmi.busy() {
            return Some(Duration::ZERO);
        }
        let now = Instant::now();
        let at = [self.ranks.next_deadline(), self.pmix.next_deadline(), self.images.next_deadline()].into_iter().flatten().min();
        at.map(|at| at.saturating_duration_since(now) + Duration::from_millis(1))
    }

    fn on_event(&mut self, ev: &Event) {
        let registry = self.poll.registry();
        let fx = match token::classify(ev.token()) {
            Source::Fixed(token::PARENT) => {
                if ev.is_writable() && self.links.flush().is_err() {
                    self.parent_lost();
                }
                if ev.is_readable() {
                    self.read_parent();
                }
                return;
            }
            Source::Fixed(token::LISTENER) => return self.listener.iter().for_each(|l| self.links.accept(l, registry)),
            Source::Fixed(token::SIGNALS) => return self.on_signals(),
            Source::Fixed(token::BOOT_STDIN) => return self.on_boot_stdin(),
            // libpmix queued an upcall, or a start thread (tree spawn over ssh) saw its daemon end;
            // the latter is looked at after every event.
            Source::Fixed(token::WAKE) => match self.job.view() {
                Some(job) => self.pmix.on_wake(job).into_iter().chain(self.traces.drain(self.node)).chain(self.fabric.on_wake()).chain(self.sensors.on_wake(self.node)).collect(),
                None => return,
            },
            Source::Pmi(_) => self.pmi.on_event(ev, registry),
            Source::Image(slot) => self.images.on_event(self.job.view(), slot, ev, registry),
            Source::RankPipe { idx, pipe } => return self.ranks.on_pipe(idx, pipe, registry),
            Source::Link(_) => return self.on_child(ev.token(), ev.is_readable(), ev.is_writable()),
            _ => return,
        };
        self.apply(fx);
    }

    /// Carries out what a service asked for, in order.
    fn apply(&mut self, effects: Vec<Effect>) {
        for e in self.fabric.carry(effects) {
            match e {
                Effect::Up(m) => self.links.up(&m),
                Effect::Send(hop, m) => _ = self.links.send(hop, &m),
                Effect::Towards(node, m) => _ = self.links.towards(node, &m),
                Effect::Below(node, m) => self.links.down_subtree(Some(node), &m),
                Effect::DownTo(nodes, m) => self.links.down_to(&nodes, &m),
                Effect::Down(m) => self.links.down(&m),
                Effect::Fault(text) => self.fault(text),
                Effect::StartRanks => self.start_ranks(),
                Effect::Mark(m) => self.timeline.apply(m, Instant::now()),
                Effect::SpawnRanks => self.spawn_ranks(None),
                Effect::Respawn(ranks) => self.spawn_ranks(Some(ranks)),
                Effect::StopRanks => self.terminate_all(),
                Effect::NewGeneration(g) => {
                    let fx = restart::new_generation(g, &mut self.ranks, &mut self.pmi, &mut self.pmix, self.job.view());
                    self.apply(fx);
                }
                Effect::Deliver(None, m) => self.on_parent_msg(m, 0),
                Effect::Deliver(child, m) => self.child_msg(child, m),
                Effect::RankExit { rank, pid, status } => {
                    // Its abort or unfinalized exit must reach the front end before its exit status.
                    let mut fx = self.pmi.rank_exited(rank, self.poll.registry());
                    fx.extend(self.pmix.rank_exited(rank));
                    self.apply(fx);
                    self.links.up(&Msg::RankExit { rank, pid, status });
                }
            }
        }
    }

    fn read_parent(&mut self) {
        loop {
            let Some(link) = self.links.parent_mut() else { return };
            let Inbox { msgs, rejected, closed, more, .. } = link::read(link, false);
            for (msg, len) in msgs {
                self.on_parent_msg(msg, len);
            }
            if let Some(e) = &rejected {
                say(Some(self.node), format_args!("rejected frame from parent: {e}"));
            }
            if rejected.is_some() || closed {
                self.parent_lost();
                return;
            }
            if !more {
                return;
            }
        }
    }

    fn on_parent_msg(&mut self, msg: Msg, frame_len: usize) {
        let registry = self.poll.registry();
        let fx = match msg {
            Msg::Launch(launch) => return self.on_launch(launch, frame_len),
            Msg::Stdin { data } => {
                self.ranks.deliver_stdin(&data, registry);
                // Only down the subtree of the one rank that reads it, when that rank is known.
                return self.links.down_subtree(self.job.stdin_node(), &Msg::Stdin { data });
            }
            Msg::Signal { signum } => {
                self.ranks.signal_all(signum);
                return self.links.down(&Msg::Signal { signum });
            }
            m @ (Msg::Terminate | Msg::Kill) => {
                match m {
                    Msg::Terminate => self.terminate_all(),
                    _ => self.ranks.kill(),
                }
                // Told to end before any launch (another node failed to start): no rank ran here.
                if self.job.launch().is_none() && !std::mem::replace(&mut self.node_done_sent, true) {
                    self.links.up(&Msg::NodeDone { node: self.node });
                }
                return self.links.down(&m);
            }
            Msg::Shutdown => {
                self.links.down(&Msg::Shutdown);
                self.shutdown = true;
                return;
            }
            m @ (Msg::NodeAncestors { .. } | Msg::NodeGone { .. } | Msg::Replace { .. } | Msg::NodeRelocate { .. }) => return repair::parent_msg(&mut self.links, self.job.view_mut(), m, registry),
            Msg::FenceDone { seq, puts } => self.pmi.fence_done(seq, puts, registry),
            m @ (Msg::PmixFenceDone { .. } | Msg::PmixDmodexReq { .. } | Msg::PmixDmodexResp { .. }) => self.pmix.tree_msg(None, m),
            Msg::KvsGet { from, key, round } => self.pmi.kvs_query(from, key, round),
            Msg::KvsValue { to, key, value, round } => self.pmi.kvs_value(to, key, value, round, registry),
            m @ (Msg::Fabric { .. } | Msg::Rdma(_)) => self.fabric.tree_msg(None, m),
            m if crate::images::is_image_msg(&m) => self.images.tree_msg(self.job.view(), m),
            Msg::StackTraces => self.traces.start(self.node, self.ranks.live(), self.links.router().children(), &self.notify),
            m @ Msg::RestartJob { .. } => {
                self.images.new_generation();
                self.restarts.on_msg(m, self.links.router().children())
            }
            m @ (Msg::RestartRanks { .. } | Msg::RestartStop { .. }) => self.restarts.on_msg(m, self.links.router().children()),
            other => return say(Some(self.node), format_args!("unexpected message from parent: {other:?}")),
        };
        self.apply(fx);
    }

    /// The launch message: pass it down, start the children's daemons (tree spawn), contribute to
    /// the fabric exchange, after which the ranks start, and start libpmix meanwhile (PMIx jobs).
    fn on_launch(&mut self, launch: Box<Launch>, frame_len: usize) {
        if self.job.launch().is_some() {
            return;
        }
        self.timeline.mark(Phase::LaunchReceived, Instant::now());
        self.launch_bytes = frame_len as u32;
        self.links.set_beat(crate::heartbeat::Beat::new(&launch.node_loss));
        self.links.down(&Msg::Launch(launch.clone()));
        let mut map_error = None;
        self.job = match JobView::for_node(launch, self.node) {
            Ok(view) => Job::Ready(view),
            Err((launch, e)) => {
                map_error = Some(e);
                Job::Broken(launch)
            }
        };
        self.timeline.mark(Phase::MapComputed, Instant::now());
        if let Some(l) = self.job.launch() {
            let fx = self.tree_spawn.start(l, self.links.router(), &self.boot, self.listen_port, &self.notify);
            self.apply(fx);
        }
        let fx = match (&self.job, map_error) {
            (Job::Ready(job), _) => [self.fabric.on_launch(job), self.pmix.begin(job, &self.waker, self.fabric.binding()), self.sensors.start(job, &self.notify)].into_iter().flatten().collect(),
            (_, Some(e)) => vec![Effect::Fault(format!("computing the process map: {e}"))],
            _ => Vec::new(),
        };
        self.apply(fx);
    }

    fn on_child(&mut self, t: Token, readable: bool, writable: bool) {
        let Some(link) = self.links.child_mut(t) else { return };
        if writable {
            let _ = link.flush();
        }
        if !readable {
            return;
        }
        let Inbox { msgs, rejected, closed, timed_out, .. } = link::read_child(link);
        let peer_ip = link.stream.peer_addr().ok().map(|a| a.ip().to_string());
        let mut lost = closed;
        if let Some(e) = rejected.filter(|_| self.links.note_rejected()) {
            say(Some(self.node), format_args!("rejected frame from a child: {e}"));
        }
        let mut node = self.links.node_of(t);
        for (mut msg, _) in msgs {
            if node.is_none() {
                match self.links.child_hello(t, &mut msg, peer_ip.as_deref(), self.job.launch(), self.poll.registry()) {
                    Ok(n) => node = n,
                    Err(n) => {
                        say(Some(self.node), format_args!("node {n} is not a child of this daemon; dropping it"));
                        lost = true;
                        break;
                    }
                }
            }
            self.child_msg(node, msg);
        }
        if lost {
            if let Some(node) = self.links.remove(t, self.poll.registry()) {
                if !self.shutdown {
                    self.links.up(&Msg::NodeFailed { node, fault: repair::child_fault(&self.links, timed_out) });
                }
            }
        }
    }

    /// A message from a child link (`node`: which child, once it said so). The fabric exchange,
    /// the PMI fence and PMIx traffic are combined or routed here; the rest goes up.
    fn child_msg(&mut self, node: Option<u32>, msg: Msg) {
        let fx = match (node, msg) {
            (Some(n), m @ (Msg::Fabric { .. } | Msg::Rdma(_))) => self.fabric.tree_msg(Some(n), m),
            (Some(n), Msg::Fence { seq, puts }) => self.pmi.fence_from_child(n, seq, puts),
            (None, Msg::Fabric { .. } | Msg::Fence { .. } | Msg::Rdma(_)) => Vec::new(),
            (Some(n), m) if pmix::is_tree_msg(&m) => self.pmix.tree_msg(Some(n), m),
            (_, m) if crate::images::is_image_msg(&m) => self.images.tree_msg(self.job.view(), m),
            (_, m) => vec![Effect::Up(m)],
        };
        self.apply(fx);
    }

    /// The parent link broke or went silent: reconnect above it (tree repair), else cut off.
    fn parent_lost(&mut self) {
        match repair::rejoin(!(self.orphaned || self.shutdown), &mut self.links, self.boot.key, self.node, self.poll.registry()) {
            Some(msgs) => msgs.into_iter().for_each(|m| self.on_parent_msg(m, 0)),
            None => self.cut_off(),
        }
    }

    fn cut_off(&mut self) {
        if self.orphaned || self.shutdown {
            return;
        }
        self.orphaned = true;
        // Nobody collects what the children would report: pass the loss down now; none rejoins here.
        self.listener = None;
        self.links.cut_off(self.poll.registry());
        self.terminate_all();
    }

    fn on_boot_stdin(&mut self) {
        // Whoever started us is gone (front end, ssh client, agent; under tree spawn, the parent).
        if super::boot::stdin_closed(self.poll.registry()) && self.job.launch().map_or(true, |l| l.tree_spawn.is_none()) {
            self.cut_off();
        }
    }

    fn on_signals(&mut self) {
        for s in self.signals.drain() {
            match s {
                libc::SIGCHLD => self.reap(),
                // Slurm's scancel, a dying session, or an admin: nobody will collect the ranks.
                _ => self.cut_off(),
            }
        }
        // SIGCHLD bytes may be coalesced; reaping is cheap and idempotent.
        self.reap();
    }

    fn reap(&mut self) {
        for (pid, status) in self.ranks.reap(self.poll.registry()) {
            self.tree_spawn.exited(pid, status.exit_code());
        }
    }

    /// The fabric exchange is over: set up PMI (then spawn), or let PMIx spawn once libpmix has
    /// registered every local rank (its server started at the launch).
    fn start_ranks(&mut self) {
        self.timeline.mark(Phase::FabricReady, Instant::now());
        let Some(job) = self.job.view() else { return };
        self.sensors.job_nics(job.local_ranks().len(), &self.fabric);
        let registry = self.poll.registry();
        let started = if Pmix::wanted(job) {
            Ok(self.pmix.want_ranks(job, &self.waker, self.fabric.binding()))
        } else {
            self.pmi.setup(job, registry).map(|()| vec![Effect::SpawnRanks])
        };
        match started {
            Ok(fx) => self.apply(fx),
            Err(e) => self.fault(format!("{e:#}")),
        }
    }

    fn spawn_ranks(&mut self, only: Option<Vec<u32>>) {
        let Some(job) = self.job.view() else { return };
        self.node_done_sent = false; // A restart: the node has ranks again.
        let s = Spawner {
            only,
            restarts: &self.restarts,
            job,
            registry: self.poll.registry(),
            ranks: &mut self.ranks,
            guard: &mut self.guard,
            pmi: &mut self.pmi,
            pmix: &mut self.pmix,
            images: &mut self.images,
            fabric: &self.fabric,
            launch_bytes: self.launch_bytes,
            timeline: &mut self.timeline,
        };
        match spawn::spawn_ranks(s) {
            Ok(fx) => {
                self.apply(fx);
                // Children may have exited before their pids were in the rank table.
                self.reap();
            }
            Err(e) => self.fault(format!("{e:#}")),
        }
    }

    /// Something failed on this node outside any rank: say so and end the job here.
    fn fault(&mut self, message: String) {
        self.links.up(&Msg::NodeFailed { node: self.node, fault: NodeFault::Internal(message) });
        self.terminate_all();
    }

    fn terminate_all(&mut self) {
        let grace = self.job.launch().map_or(2000, |l| l.kill_grace_ms);
        self.ranks.terminate(Duration::from_millis(grace as u64));
    }

    fn check_done(&mut self) {
        // The ranks wait for the fabric table or for libpmix, unless the job is ending (ranks not
        // started because spawning stopped count as done).
        let held = (self.fabric.holds_ranks() || self.pmix.holds_ranks()) && !self.ranks.stop_spawning();
        self.restarts.stopped(self.ranks.all_reported()).into_iter().for_each(|m| self.links.up(&m));
        if self.restarts.holds_done() || self.node_done_sent || self.job.launch().is_none() || !self.ranks.all_reported() || held {
            return;
        }
        self.node_done_sent = true;
        self.links.up(&Msg::Timeline { node: self.node, marks: self.timeline.finish() });
        self.links.up(&Msg::NodeDone { node: self.node });
    }

    fn finish(&mut self) -> i32 {
        // All ranks are done when the front end sends Shutdown; make sure of it anyway.
        self.ranks.signal_all(libc::SIGKILL);
        // Stops libpmix and removes its directory.
        self.pmix.finish();
        adopted::kill_all_but(&self.guard, &self.tree_spawn);
        self.links.rejected_summary().into_iter().for_each(|l| say(Some(self.node), l));
        self.links.flush_blocking(Duration::from_secs(2));
        crate::exitcode::SUCCESS
    }
}
