//! Tree spawn (PRRTE's `remote_spawn`): a daemon starts the daemons of its child nodes the way the
//! front end would have, and reports a child that ended before it joined as a launch failure.

use super::effect::Effect;
use crate::tree::Router;
use crate::wire::{Bootstrap, Launch, Msg, NodeFault};
use launchers::start::{DaemonProcess, NodeStarter, Notify, SshOptions};
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::time::Duration;

#[derive(Default)]
pub struct TreeSpawn {
    /// The daemons (or agents) this daemon started, by node.
    spawned: Vec<(u32, DaemonProcess)>,
    /// Children that joined at some point.
    ever_joined: HashSet<u32>,
    /// Exit codes of reaped children that are not ranks (agents), by pid.
    other_exits: HashMap<u32, i32>,
}

/// How this daemon starts its children, from the launch message.
fn starter(launch: &Launch) -> Option<NodeStarter> {
    let ts = launch.tree_spawn.as_ref()?;
    Some(match (&ts.ssh, ts.agent.is_empty()) {
        (Some(o), _) => NodeStarter::Ssh(SshOptions {
            port: o.port,
            identity: o.identity.as_ref().map(std::path::PathBuf::from),
            identities_only: o.identities_only,
            known_hosts: o.known_hosts.as_ref().map(std::path::PathBuf::from),
            connect_timeout: Duration::from_millis(o.connect_timeout_ms as u64),
            ..Default::default()
        }),
        (None, true) => NodeStarter::Local,
        (None, false) => NodeStarter::Agent { argv: ts.agent.clone() },
    })
}

impl TreeSpawn {
    /// Starts this daemon's children (when the launch asks for tree spawn), pointed at
    /// `listen_port` here. `notify` wakes the loop when an ssh thread sees its daemon end.
    pub fn start(&mut self, launch: &Launch, router: &Router, boot: &Bootstrap, listen_port: u16, notify: &Notify) -> Vec<Effect> {
        let Some(starter) = starter(launch) else { return Vec::new() };
        let daemon_path = match std::env::current_exe() {
            Ok(p) => p.to_string_lossy().into_owned(),
            Err(e) => {
                let fault = NodeFault::Internal(format!("tree spawn: cannot find this daemon's path: {e}"));
                return vec![Effect::Up(Msg::NodeFailed { node: boot.node, fault })];
            }
        };
        let mut out = Vec::new();
        for child in router.children() {
            let n = &launch.nodes[child as usize];
            let node = launchers::nodes::Node { name: n.name.clone(), user: n.user.clone(), slots: n.slots, max_slots: n.max_slots };
            let ip = if starter == NodeStarter::Local {
                "127.0.0.1".to_string()
            } else {
                launchers::start::route_source_ip(&n.name).unwrap_or_else(|| "127.0.0.1".into())
            };
            let child_boot = Bootstrap {
                key: boot.key,
                parent: format!("{}:{listen_port}", launchers::start::bracket_v6(&ip)),
                node: child,
                nnodes: boot.nnodes,
                fanout: boot.fanout,
                job_id: boot.job_id.clone(),
                ports: boot.ports,
            };
            match launchers::start::start(&starter, &node, &daemon_path, &child_boot.to_line(), notify) {
                Ok(p) => self.spawned.push((child, p)),
                Err(e) => out.push(Effect::Up(Msg::NodeFailed { node: child, fault: NodeFault::LaunchFailed(e.to_string()) })),
            }
        }
        out
    }

    /// Some child's daemon or agent is still watched.
    /// The child processes that carry the children's daemons (agents), which the daemon's sweep
    /// of escaped descendants spares.
    pub fn pids(&self) -> impl Iterator<Item = u32> + '_ {
        self.spawned.iter().filter_map(|(_, p)| p.waiter.pid())
    }

    pub fn watching(&self) -> bool {
        !self.spawned.is_empty()
    }

    /// A reaped child process that was not a rank.
    pub fn exited(&mut self, pid: u32, code: i32) {
        if self.watching() {
            self.other_exits.insert(pid, code);
        }
    }

    /// A child's daemon (or its agent) ended: before it joined, that is a launch failure.
    /// `joined`: the children whose links are up now.
    pub fn check(&mut self, joined: impl Iterator<Item = u32>) -> Vec<Effect> {
        // A child that joined once and then died is a lost link (reported as such), not a launch
        // failure: remember every child that ever joined.
        self.ever_joined.extend(joined);
        let mut failed = Vec::new();
        let (joined, others) = (&self.ever_joined, &mut self.other_exits);
        self.spawned.retain_mut(|(node, p)| {
            // The daemon reaps every child of this process, agents included: look their status up.
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
                failed.push((*node, code, launchers::start::last_words(&err).to_string()));
            }
            false
        });
        failed
            .into_iter()
            .map(|(node, code, err)| {
                let what = if err.is_empty() { String::new() } else { format!(": {err}") };
                let fault = NodeFault::LaunchFailed(format!("daemon exited early with status {code}{what}"));
                Effect::Up(Msg::NodeFailed { node, fault })
            })
            .collect()
    }
}
