//! The processes that carry the daemons the front end started: a local daemon, a launch agent
//! (`ssh`), an in-process ssh session, or the one srun step that starts every node's daemon. The
//! front end keeps each one's stderr (it says why a daemon never joined) and notices when it ends.

use super::daemons::Daemons;
use super::reporter::Reporter;
use crate::token;
use crate::wire::{Bootstrap, JobKey, Launch};
use launchers::nodes::Node;
use launchers::start::{bracket_v6, DaemonProcess, GroupStarter, NodeStarter, Notify, StartError, Starter};
use mio::unix::pipe::Receiver;
use mio::{Events, Interest, Poll, Registry};
use std::collections::BTreeMap;
use std::io::Read;
use std::time::{Duration, Instant};

/// How much of a daemon's stderr is kept for the error line of a daemon that never joined.
const STDERR_KEEP: usize = 64 * 1024;

struct Carrier {
    process: DaemonProcess,
    stderr: Option<Receiver>,
    kept: Vec<u8>,
    exit: Option<i32>,
}

/// What every daemon the front end starts needs to find it.
pub struct StartInfo {
    pub nodes: Vec<Node>,
    pub daemon_path: String,
    pub key: JobKey,
    /// Every daemon runs on this machine: the front end listens on loopback.
    pub loopback: bool,
    pub listen_port: u16,
    /// The one address the front end listens on, when it is not every address.
    pub listen_ip: Option<std::net::IpAddr>,
    pub ports: Option<crate::spec::PortRange>,
    /// Wakes the loop when a start thread (in-process ssh) learns that its daemon ended.
    pub notify: Notify,
}

/// Carriers by node; one srun step is kept as node 0's.
pub struct Carriers {
    info: StartInfo,
    by_node: BTreeMap<u32, Carrier>,
}

impl Carriers {
    pub fn new(info: StartInfo) -> Carriers {
        Carriers { info, by_node: BTreeMap::new() }
    }

    /// The address a daemon on `node` should connect to when its parent is the front end.
    pub fn front_end_addr(&self, node: u32) -> String {
        if self.info.loopback {
            return format!("127.0.0.1:{}", self.info.listen_port);
        }
        if let Some(ip) = self.info.listen_ip {
            return format!("{}:{}", bracket_v6(&ip.to_string()), self.info.listen_port);
        }
        let ip = launchers::start::route_source_ip(&self.info.nodes[node as usize].name).unwrap_or_else(|| "127.0.0.1".into());
        format!("{}:{}", bracket_v6(&ip), self.info.listen_port)
    }

    fn bootstrap(&self, launch: &Launch, parent: String, node: u32) -> String {
        let (key, nnodes, fanout, job_id) = (self.info.key, launch.nodes.len() as u32, launch.fanout, launch.job_id.clone());
        Bootstrap { key, parent, node, nnodes, fanout, job_id, ports: self.info.ports }.to_line()
    }

    /// Starts node `node`'s daemon, pointed at `parent`, and hands it its bootstrap line.
    pub fn start(&mut self, starter: &NodeStarter, launch: &Launch, node: u32, parent: String, registry: &Registry) -> Result<(), StartError> {
        let boot = self.bootstrap(launch, parent, node);
        let n = &self.info.nodes[node as usize];
        let p = launchers::start::start(starter, n, &self.info.daemon_path, &boot, &self.info.notify)?;
        self.keep(node, p, registry);
        Ok(())
    }

    /// When each step of `node`'s in-process ssh start ended, on the front end's clock.
    pub fn start_phases(&self, node: u32) -> Option<launchers::start::StartPhases> {
        Some(self.by_node.get(&node)?.process.phases.as_ref()?.get())
    }

    /// Starts every node's daemon with one command (srun); kept as node 0's carrier.
    pub fn start_group(&mut self, starter: &GroupStarter, launch: &Launch, registry: &Registry) -> Result<(), StartError> {
        let boot = self.bootstrap(launch, self.front_end_addr(0), Bootstrap::ANY_NODE);
        let p = launchers::start::start_group(starter, &self.info.nodes, &self.info.daemon_path, &boot, &self.info.notify)?;
        self.keep(0, p, registry);
        Ok(())
    }

    fn keep(&mut self, node: u32, mut process: DaemonProcess, registry: &Registry) {
        let stderr = process.stderr.take().map(|e| {
            let mut r = Receiver::from(e);
            let _ = r.set_nonblocking(true);
            let _ = registry.register(&mut r, token::daemon_stderr(node), Interest::READABLE);
            r
        });
        self.by_node.insert(node, Carrier { process, stderr, kept: Vec::new(), exit: None });
    }

    /// Reads what the carrier of `node` wrote to stderr. Before the daemon joined it explains
    /// failures and is kept for the error line; afterwards it goes to the user as it comes.
    pub fn read_stderr(&mut self, node: u32, joined: bool, registry: &Registry, reporter: &mut Reporter) {
        let Some(c) = self.by_node.get_mut(&node) else { return };
        let Some(r) = c.stderr.as_mut() else { return };
        let mut buf = [0u8; 4096];
        loop {
            match r.read(&mut buf) {
                Ok(0) => {
                    if let Some(mut r) = c.stderr.take() {
                        let _ = registry.deregister(&mut r);
                    }
                    break;
                }
                Ok(n) if joined => reporter.daemon_stderr(&buf[..n]),
                Ok(n) => {
                    if c.kept.len() < STDERR_KEEP {
                        c.kept.extend_from_slice(&buf[..n]);
                    }
                }
                Err(_) => break,
            }
        }
    }

    /// What the carrier of `node` said last before it ended, for its one error line: `": text"`
    /// or "". With `-v` everything it said follows.
    pub fn why(&mut self, node: u32, registry: &Registry, reporter: &mut Reporter) -> String {
        self.read_stderr(node, false, registry, reporter);
        let text = self.by_node.get(&node).map(|c| String::from_utf8_lossy(&c.kept).into_owned()).unwrap_or_default();
        let last = launchers::start::last_words(&text);
        if text.trim() != last {
            let name = self.info.nodes.get(node as usize).map_or("?", |n| n.name.as_str());
            for l in text.lines().filter(|l| !l.trim().is_empty()) {
                reporter.detail(1, &format!("rlaunch: the start of {name}'s daemon said: {l}"));
            }
        }
        if last.is_empty() {
            String::new()
        } else {
            format!(": {last}")
        }
    }

    /// Carriers that ended since the last call, with their exit status.
    /// Carriers that ended before their daemon joined, each with the launch failure to record:
    /// why the node cannot be launched (the start's last words and a hint). After a group start
    /// (srun) ended, every node that has not joined by then never will.
    pub fn early_exits(&mut self, starter: &Starter, daemons: &Daemons, registry: &Registry, reporter: &mut Reporter) -> Vec<(u32, String)> {
        let mut out = Vec::new();
        for (node, code) in self.ended() {
            if starter.is_group() {
                let what = self.why(0, registry, reporter);
                out.extend(daemons.waiting().map(|n| (n, format!("the daemon step ended with status {code} before this node joined{what}"))));
                continue;
            }
            let d = daemons.get(node).expect("node of the job");
            if !d.joined && !d.lost && !daemons.all_done() {
                let what = self.why(node, registry, reporter);
                out.push((node, format!("daemon exited early with status {code}{what}{}", starter.failure_hint(&what))));
            }
        }
        out
    }

    pub fn ended(&mut self) -> Vec<(u32, i32)> {
        let mut out = Vec::new();
        for (&node, c) in self.by_node.iter_mut() {
            if c.exit.is_none() {
                if let Some(code) = c.process.waiter.try_wait() {
                    c.exit = Some(code);
                    out.push((node, code));
                }
            }
        }
        out
    }

    /// At the end of the job: daemons exit on Shutdown; wait for the carriers (at most `wait` in
    /// all), then kill the stragglers.
    pub fn wait_all(&mut self, wait: Duration, poll: &mut Poll) {
        let deadline = Instant::now() + wait;
        for c in self.by_node.values_mut() {
            loop {
                match c.process.waiter.try_wait() {
                    Some(_) => break,
                    None if Instant::now() < deadline => {
                        let _ = poll.poll(&mut Events::with_capacity(8), Some(Duration::from_millis(5)));
                    }
                    None => {
                        c.process.waiter.kill();
                        break;
                    }
                }
            }
        }
        self.by_node.clear();
    }
}
