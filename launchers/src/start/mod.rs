//! How a daemon gets started on a node. One module per way:
//!
//! - [`local`]: fork/exec on this machine;
//! - [`agent`]: an rsh-like launch agent, `AGENT... HOST 'exec DAEMON __daemon'`;
//! - [`batch`]: inside a Grid Engine or LSF job, their agent (`qrsh -inherit`, `blaunch`) for every
//!   node but this one, whose daemon is forked;
//! - [`ssh`]: in-process ssh (libssh2), one thread per node;
//! - [`srun`]: one Slurm step that starts every node's daemon at once.
//!
//! The first four start one node's daemon per call ([`NodeStarter`], [`start`]); srun starts all
//! of them with one call ([`GroupStarter`], [`start_group`]). [`Starter`] is either, so a caller
//! that holds one cannot ask a group starter for a single node or the other way round.
//!
//! Every backend hands back a [`DaemonProcess`] (see [`common`]): something whose stdin carries the
//! bootstrap line (and then stays open, so the daemon sees EOF when this side dies) and whose
//! stderr is the daemon's, for error reports.

pub mod agent;
pub mod batch;
pub mod common;
pub mod local;
pub mod srun;
pub mod ssh;

pub use common::{last_words, no_notify, remote_command, shell_quote, DaemonProcess, KillSwitch, Notify, PhaseClock, StartError, StartPhases, Waiter};
pub use ssh::{SshOptions, UnknownHostKey};

use crate::nodes::Node;

/// How the daemons of a job start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Starter {
    /// One start per node, by the front end or (tree spawn) by a parent daemon.
    Each(NodeStarter),
    /// One start for every node at once; the daemons learn their node by rendezvous.
    Group(GroupStarter),
}

impl Starter {
    /// Whether one start call starts every node's daemon (the bootstrap then names no node).
    pub fn is_group(&self) -> bool {
        matches!(self, Starter::Group(_))
    }

    /// [`NodeStarter::failure_hint`]; a group start has none.
    pub fn failure_hint(&self, said: &str) -> &'static str {
        match self {
            Starter::Each(s) => s.failure_hint(said),
            Starter::Group(_) => "",
        }
    }
}

/// Starts one node's daemon per call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeStarter {
    /// Fork/exec the daemon on this machine.
    Local,
    /// Run `argv... HOST 'DAEMON __daemon'`, like Open MPI's rsh agent.
    Agent { argv: Vec<String> },
    /// In-process ssh (libssh2) from a thread per node.
    Ssh(SshOptions),
    /// Inside a Grid Engine or LSF job: the batch system's agent `argv` (see [`batch`]) for every
    /// node but `here` (this machine's name), whose daemon is forked.
    Batch { system: batch::BatchSystem, argv: Vec<String>, here: String },
}

impl NodeStarter {
    /// Appended to the error line of a daemon whose carrier ended before it joined, having `said`
    /// this: what to do when the words are a batch system's refusal, else "".
    pub fn failure_hint(&self, said: &str) -> &'static str {
        match self {
            NodeStarter::Batch { system, .. } => batch::refusal_hint(*system, said),
            _ => "",
        }
    }
}

/// Starts every node's daemon with one call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupStarter {
    /// Inside a Slurm allocation: one `srun` step, so that Slurm tracks, accounts and kills the
    /// daemons.
    Srun { srun: String },
}

/// Starts the daemon for `node` and writes `bootstrap` (one line) to its stdin. `notify` is called
/// whenever a backend learns of the daemon's end away from the caller's loop (see [`Notify`]).
pub fn start(starter: &NodeStarter, node: &Node, daemon_path: &str, bootstrap: &str, notify: &Notify) -> Result<DaemonProcess, StartError> {
    match starter {
        NodeStarter::Local => local::start(&node.name, daemon_path, bootstrap),
        NodeStarter::Agent { argv } => agent::start(argv, node, daemon_path, bootstrap),
        // This machine's own daemon is forked, as mpirun and mpiexec do: `-H localhost` or the
        // launch node in a host file needs no ssh server here.
        NodeStarter::Ssh(_) if node.user.is_none() && is_this_machine(&node.name) => local::start(&node.name, daemon_path, bootstrap),
        NodeStarter::Ssh(opts) => ssh::start(opts, node, daemon_path, bootstrap, notify.clone()),
        NodeStarter::Batch { argv, here, .. } => batch::start(argv, here, node, daemon_path, bootstrap),
    }
}

/// Whether a node's name is this machine: `localhost`, a loopback address, or its host name
/// (with or without a domain).
pub fn is_this_machine(name: &str) -> bool {
    ["localhost", "127.0.0.1", "::1"].contains(&name) || batch::is_here(name, &crate::nodes::local_hostname())
}

/// Starts every node's daemon with one command and writes `bootstrap` (naming no node) to it.
/// The notify hook is taken so that both start calls look alike to callers; srun is a child
/// process, whose end SIGCHLD already reports, so no group backend calls it.
pub fn start_group(starter: &GroupStarter, nodes: &[Node], daemon_path: &str, bootstrap: &str, _notify: &Notify) -> Result<DaemonProcess, StartError> {
    match starter {
        GroupStarter::Srun { srun } => srun::start(srun, nodes, daemon_path, bootstrap),
    }
}

/// `[v6]` for an IPv6 address, so that `:port` can follow it.
pub fn bracket_v6(ip: &str) -> String {
    if ip.contains(':') && !ip.starts_with('[') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    }
}

/// The local address the kernel would use to reach `host`: the address a daemon there can use to
/// reach us. A UDP connect sends no packet; it only picks the route.
pub fn route_source_ip(host: &str) -> Option<String> {
    use std::net::ToSocketAddrs;
    let target = (host, 9).to_socket_addrs().ok()?.next()?;
    let bind = if target.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    let s = std::net::UdpSocket::bind(bind).ok()?;
    s.connect(target).ok()?;
    Some(s.local_addr().ok()?.ip().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v6_addresses_are_bracketed() {
        assert_eq!(bracket_v6("fe80::1"), "[fe80::1]");
        assert_eq!(bracket_v6("10.0.0.1"), "10.0.0.1");
        assert_eq!(bracket_v6("[::1]"), "[::1]");
    }
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn route_to_loopback_comes_from_loopback() {
        assert_eq!(route_source_ip("127.0.0.1").as_deref(), Some("127.0.0.1"));
        assert_eq!(route_source_ip("no-such-host.invalid"), None);
    }

    #[test]
    fn kinds() {
        assert!(Starter::Group(GroupStarter::Srun { srun: "srun".into() }).is_group());
        assert!(!Starter::Each(NodeStarter::Local).is_group());
    }

    /// The ssh thread ends at once when the node cannot be resolved; the notify hook must have run
    /// by the time its status can be read, so a loop woken by it finds the status.
    #[test]
    fn ssh_end_is_notified_after_the_status_is_sent() {
        let calls = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = std::sync::mpsc::channel();
        let seen = calls.clone();
        let notify: Notify = Arc::new(move || {
            seen.fetch_add(1, Ordering::SeqCst);
            let _ = tx.send(());
        });
        let node = Node { name: "no-such-host.invalid".into(), user: Some("u".into()), slots: 1, max_slots: None };
        let opts = SshOptions { connect_timeout: std::time::Duration::from_secs(2), ..Default::default() };
        let mut p = start(&NodeStarter::Ssh(opts), &node, "/opt/rlaunch", "BOOT\n", &notify).unwrap();
        rx.recv_timeout(std::time::Duration::from_secs(30)).expect("the ssh thread called notify");
        assert_eq!(p.waiter.try_wait(), Some(ssh::CONNECT_FAILED));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let mut err = String::new();
        std::io::Read::read_to_string(&mut std::fs::File::from(p.stderr.take().unwrap()), &mut err).unwrap();
        assert!(err.starts_with("cannot resolve host name no-such-host.invalid"), "{err}");
        // The timeline shows where it stopped: begun, never connected.
        let phases = p.phases.as_ref().expect("in-process ssh records its phases").get();
        assert!(phases.began.is_some());
        assert_eq!(phases.connected, None);
    }
}
