//! How a daemon gets started on a node: the local backend (fork/exec), and rsh-like launch agents
//! (`ssh -x`, `ip netns exec`, a site wrapper): `AGENT... HOST COMMAND-LINE`.
//!
//! Every backend hands back a [`DaemonProcess`]: a local process whose stdin carries the bootstrap
//! line (and then stays open, so the daemon sees EOF when this side dies) and whose stderr is the
//! daemon's, for error reports.

use crate::nodes::Node;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Starter {
    /// Fork/exec the daemon on this machine.
    Local,
    /// Run `argv... HOST 'DAEMON __daemon'`, like Open MPI's rsh agent.
    Agent { argv: Vec<String> },
    /// In-process ssh (libssh2) from a thread per node; see [`crate::ssh`].
    Ssh(crate::ssh::SshOptions),
    /// Inside a Slurm allocation: one `srun` step starts a daemon on every node, so that Slurm
    /// tracks, accounts and kills them. Daemons learn their node rank by rendezvous.
    Srun { srun: String },
}

impl Starter {
    /// Whether one start call starts every node's daemon (the bootstrap then names no node).
    pub fn is_group(&self) -> bool {
        matches!(self, Starter::Srun { .. })
    }
}

/// The srun command line that starts one daemon per node of `nodes` inside the allocation.
/// `--overlap`: later job steps (the user's own srun calls) must not wait for this one.
/// `-n` explicitly: an inherited SLURM_NTASKS would otherwise win over `--ntasks-per-node`.
/// `--input=all`: every daemon reads the same bootstrap line.
pub fn srun_argv(srun: &str, nodes: &[Node], daemon_path: &str) -> Vec<String> {
    let n = nodes.len().to_string();
    let list: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    vec![
        srun.to_string(),
        "--overlap".into(),
        "-N".into(),
        n.clone(),
        "-n".into(),
        n,
        "--ntasks-per-node=1".into(),
        format!("--nodelist={}", list.join(",")),
        "--kill-on-bad-exit=1".into(),
        "--cpu-bind=none".into(),
        "--mpi=none".into(),
        "--input=all".into(),
        "--job-name=rlaunch-daemons".into(),
        daemon_path.to_string(),
        "__daemon".into(),
    ]
}

/// Starts every node's daemon with one command (see [`Starter::is_group`]).
pub fn start_group(starter: &Starter, nodes: &[Node], daemon_path: &str, bootstrap: &str) -> Result<DaemonProcess, StartError> {
    let Starter::Srun { srun } = starter else {
        unreachable!("start_group is only called for group starters");
    };
    let argv = srun_argv(srun, nodes, daemon_path);
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    prepare(&mut cmd);
    let child = cmd.spawn().map_err(|source| StartError::Agent { agent: srun.clone(), node: "all nodes".into(), source })?;
    hand_over(child, "all nodes", bootstrap)
}

/// Writes the bootstrap line into a started carrier's stdin and keeps the pipes the front end needs.
fn hand_over(mut child: Child, node: &str, bootstrap: &str) -> Result<DaemonProcess, StartError> {
    let mut stdin = child.stdin.take();
    if let Some(s) = stdin.as_mut() {
        if let Err(source) = s.write_all(bootstrap.as_bytes()).and_then(|_| s.flush()) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(StartError::Bootstrap { node: node.to_string(), source });
        }
    }
    let stderr = child.stderr.take().map(std::os::fd::OwnedFd::from);
    Ok(DaemonProcess { waiter: Waiter::Child(child), stdin: stdin.map(|s| Box::new(s) as Box<dyn Write + Send>), stderr })
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot run launch agent '{agent}' for node {node}: {source}")]
    Agent { agent: String, node: String, source: std::io::Error },
    #[error("cannot start the daemon '{path}' on this node: {source}")]
    Local { path: String, source: std::io::Error },
    #[error("cannot send the bootstrap line to the daemon of node {node}: {source}")]
    Bootstrap { node: String, source: std::io::Error },
    #[error("cannot start the ssh session for node {node} on this machine: {source}")]
    Ssh { node: String, source: std::io::Error },
}

/// A started daemon, seen from the front end.
pub struct DaemonProcess {
    pub waiter: Waiter,
    /// Kept open for the life of the job: closing it tells the daemon its starter is gone.
    pub stdin: Option<Box<dyn Write + Send>>,
    /// The daemon's stderr (or the agent's), readable and pollable.
    pub stderr: Option<std::os::fd::OwnedFd>,
}

/// How to learn that a started daemon (or the agent carrying it) ended.
pub enum Waiter {
    Child(Child),
    /// A backend that runs on a thread of its own (in-process ssh): it sends the exit status once;
    /// dropping `kill` asks it to close its session.
    Thread { status: std::sync::mpsc::Receiver<i32>, kill: Option<std::sync::mpsc::Sender<()>>, done: Option<i32> },
}

impl Waiter {
    /// The exit status (128+N for signal N) once the daemon or its carrier has ended.
    pub fn try_wait(&mut self) -> Option<i32> {
        match self {
            Waiter::Child(c) => {
                use std::os::unix::process::ExitStatusExt;
                match c.try_wait() {
                    Ok(Some(st)) => Some(st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0))),
                    Ok(None) => None,
                    Err(_) => Some(-1),
                }
            }
            Waiter::Thread { status, done, .. } => {
                if done.is_none() {
                    match status.try_recv() {
                        Ok(code) => *done = Some(code),
                        Err(std::sync::mpsc::TryRecvError::Disconnected) => *done = Some(-1),
                        Err(std::sync::mpsc::TryRecvError::Empty) => {}
                    }
                }
                *done
            }
        }
    }

    /// The local process id, when the daemon's carrier is a child process.
    pub fn pid(&self) -> Option<u32> {
        match self {
            Waiter::Child(c) => Some(c.id()),
            Waiter::Thread { .. } => None,
        }
    }

    /// Ends the daemon's carrier now (the daemon sees its stdin close and cleans up).
    pub fn kill(&mut self) {
        match self {
            Waiter::Child(c) => {
                let _ = c.kill();
                let _ = c.wait();
            }
            Waiter::Thread { kill, .. } => {
                kill.take();
            }
        }
    }
}

/// Quotes one word for a POSIX shell: the remote side of ssh and agents runs the command through one.
pub fn shell_quote(word: &str) -> String {
    if !word.is_empty() && word.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b)) {
        return word.to_string();
    }
    format!("'{}'", word.replace('\'', "'\\''"))
}

/// The command line that runs the daemon on the far side of an agent.
pub fn remote_command(daemon_path: &str) -> String {
    // exec: no shell stays behind to report the daemon's death ("Killed") or to hold its pipes.
    format!("exec {} __daemon", shell_quote(daemon_path))
}

fn prepare(cmd: &mut Command) {
    cmd.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            // Own process group: the user's ctrl-C reaches the front end, which forwards it.
            libc::setpgid(0, 0);
            // If the front end dies, even by SIGKILL, the local daemon or agent hears of it.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
}

/// Starts the daemon for `node` and writes `bootstrap` (one line) to its stdin.
pub fn start(starter: &Starter, node: &Node, daemon_path: &str, bootstrap: &str) -> Result<DaemonProcess, StartError> {
    let child = match starter {
        Starter::Ssh(opts) => return crate::ssh::start(opts, node, daemon_path, bootstrap),
        Starter::Local => {
            let mut cmd = Command::new(daemon_path);
            cmd.arg("__daemon");
            prepare(&mut cmd);
            cmd.spawn().map_err(|source| StartError::Local { path: daemon_path.to_string(), source })?
        }
        Starter::Srun { .. } => unreachable!("group starters start through start_group"),
        Starter::Agent { argv } => {
            let target = match &node.user {
                Some(u) => format!("{u}@{}", node.name),
                None => node.name.clone(),
            };
            let mut cmd = Command::new(&argv[0]);
            cmd.args(&argv[1..]).arg(&target).arg(remote_command(daemon_path));
            prepare(&mut cmd);
            cmd.spawn().map_err(|source| StartError::Agent { agent: argv.join(" "), node: node.name.clone(), source })?
        }
    };
    hand_over(child, &node.name, bootstrap)
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
    fn route_to_loopback_comes_from_loopback() {
        assert_eq!(route_source_ip("127.0.0.1").as_deref(), Some("127.0.0.1"));
        assert_eq!(route_source_ip("no-such-host.invalid"), None);
    }

    #[test]
    fn srun_line_starts_one_daemon_per_node() {
        let nodes: Vec<Node> = ["n1", "n2", "n3"].iter().map(|n| Node { name: n.to_string(), user: None, slots: 4, max_slots: None }).collect();
        let argv = srun_argv("srun", &nodes, "/opt/rlaunch");
        let line = argv.join(" ");
        assert!(line.starts_with("srun --overlap -N 3 -n 3 --ntasks-per-node=1 --nodelist=n1,n2,n3 --kill-on-bad-exit=1"), "{line}");
        assert!(line.ends_with("--input=all --job-name=rlaunch-daemons /opt/rlaunch __daemon"), "{line}");
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("/usr/bin/rlaunch"), "/usr/bin/rlaunch");
        assert_eq!(shell_quote("/a b/it's"), "'/a b/it'\\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn agent_gets_host_and_command_line() {
        // `sh -c 'echo "$0 $1" >&2' HOST CMD` stands in for an rsh-like agent: it reports its argv.
        let starter = Starter::Agent { argv: vec!["sh".into(), "-c".into(), "read l; echo \"$0|$1|$l\" >&2".into()] };
        let node = Node { name: "n7".into(), user: Some("bob".into()), slots: 1, max_slots: None };
        let mut p = start(&starter, &node, "/opt/x y/rlaunch", "BOOT\n").unwrap();
        drop(p.stdin.take());
        let mut err = String::new();
        let mut f = std::fs::File::from(p.stderr.take().unwrap());
        std::io::Read::read_to_string(&mut f, &mut err).unwrap();
        while p.waiter.try_wait().is_none() {
            std::thread::yield_now();
        }
        assert_eq!(err.trim(), "bob@n7|exec '/opt/x y/rlaunch' __daemon|BOOT");
    }

    #[test]
    fn missing_agent_is_a_clear_error() {
        let starter = Starter::Agent { argv: vec!["/nonexistent/agent".into()] };
        let node = Node { name: "n1".into(), user: None, slots: 1, max_slots: None };
        let e = start(&starter, &node, "rlaunch", "x\n").err().unwrap().to_string();
        assert!(e.starts_with("cannot run launch agent '/nonexistent/agent' for node n1:"), "{e}");
    }
}
