//! What every way of starting a daemon shares: the handle it returns ([`DaemonProcess`]), how its
//! end is learnt ([`Waiter`]), its errors, and the hand-over of the bootstrap line.
//!
//! The backends import this file and nothing else of `start`, and this file imports none of them,
//! so that the parent module can dispatch to backends without any file importing one that imports it.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Called by a backend whose daemon ends off the caller's event loop (the in-process ssh thread),
/// right after the exit status can be read from its [`Waiter`]. A caller wires its poll's waker to
/// it; child processes need none, since SIGCHLD already wakes the loops.
pub type Notify = Arc<dyn Fn() + Send + Sync>;

/// A [`Notify`] for callers that learn of ends some other way (a timer, or only child processes).
pub fn no_notify() -> Notify {
    Arc::new(|| {})
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
    /// When each step of the start happened, for backends whose steps happen in this process
    /// (in-process ssh); a child process's steps are its own and not seen here.
    pub phases: Option<PhaseClock>,
}

/// When each step of an in-process ssh start ended; `None` for a step not reached (yet). Times
/// are this process's monotonic clock, comparable with the front end's own `Instant`s.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StartPhases {
    /// The start thread began (before the host name is resolved).
    pub began: Option<Instant>,
    /// The TCP connection to the node's sshd is up.
    pub connected: Option<Instant>,
    /// Key exchange done and the host key accepted.
    pub keys_exchanged: Option<Instant>,
    pub authenticated: Option<Instant>,
    /// The server accepted the exec request: from here the remote shell starts the daemon.
    pub exec_sent: Option<Instant>,
}

/// A start's [`StartPhases`] as its backend fills them in, readable at any time from any thread.
#[derive(Clone, Debug, Default)]
pub struct PhaseClock(Arc<Mutex<StartPhases>>);

impl PhaseClock {
    pub fn get(&self) -> StartPhases {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets one step's time to now.
    pub(crate) fn mark(&self, step: fn(&mut StartPhases) -> &mut Option<Instant>) {
        let mut p = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *step(&mut p) = Some(Instant::now());
    }
}

/// How to learn that a started daemon (or the agent carrying it) ended.
pub enum Waiter {
    Child(Child),
    /// A backend that runs on a thread of its own (in-process ssh): it sends the exit status once;
    /// dropping `kill` asks it to close its session.
    Thread { status: std::sync::mpsc::Receiver<i32>, kill: Option<KillSwitch>, done: Option<i32> },
}

/// Dropping it asks a start thread to end: the channel says so, and the byte written to the
/// thread's wake pipe makes a thread asleep in `poll` look at once instead of at its next tick.
pub struct KillSwitch {
    tx: Option<std::sync::mpsc::Sender<()>>,
    wake: std::fs::File,
}

impl KillSwitch {
    pub fn new(tx: std::sync::mpsc::Sender<()>, wake: std::fs::File) -> KillSwitch {
        KillSwitch { tx: Some(tx), wake }
    }
}

impl Drop for KillSwitch {
    fn drop(&mut self) {
        // Disconnect before the wake: a thread woken first could find the channel still open
        // and go back to sleep.
        self.tx = None;
        let _ = (&self.wake).write(&[1]);
    }
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

/// The line of a carrier's stderr that says why it ended: its last non-empty line. A remote
/// login shell may print its own noise first (profile scripts, a tool rehashing its shims); the
/// command that failed speaks last.
pub fn last_words(stderr: &str) -> &str {
    stderr.lines().map(str::trim).rfind(|l| !l.is_empty()).unwrap_or("")
}

/// Quotes one word for a POSIX shell: the remote side of ssh and agents runs the command through one.
pub fn shell_quote(word: &str) -> String {
    if !word.is_empty() && word.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b)) {
        return word.to_string();
    }
    format!("'{}'", word.replace('\'', "'\\''"))
}

/// The command line that runs the daemon on the far side of an agent or an ssh session.
pub fn remote_command(daemon_path: &str) -> String {
    // exec: no shell stays behind to report the daemon's death ("Killed") or to hold its pipes.
    format!("exec {} __daemon", shell_quote(daemon_path))
}

/// Pipes and process-group set-up for a carrier started as a child process (daemon, agent, srun).
pub(crate) fn prepare(cmd: &mut Command) {
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

/// Writes the bootstrap line into a started carrier's stdin and keeps the pipes the front end needs.
pub(crate) fn hand_over(mut child: Child, node: &str, bootstrap: &str) -> Result<DaemonProcess, StartError> {
    let mut stdin = child.stdin.take();
    if let Some(s) = stdin.as_mut() {
        if let Err(source) = s.write_all(bootstrap.as_bytes()).and_then(|_| s.flush()) {
            if source.kind() == std::io::ErrorKind::BrokenPipe {
                // The carrier is gone already (an agent that could not resolve the host): its
                // exit status and stderr, read when it is reaped, say why.
                stdin = None;
            } else {
                let _ = child.kill();
                let _ = child.wait();
                return Err(StartError::Bootstrap { node: node.to_string(), source });
            }
        }
    }
    let stderr = child.stderr.take().map(std::os::fd::OwnedFd::from);
    Ok(DaemonProcess { waiter: Waiter::Child(child), stdin: stdin.map(|s| Box::new(s) as Box<dyn Write + Send>), stderr, phases: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_kill_switch_disconnects_then_wakes() {
        use std::io::Read;
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let mut fds = [0; 2];
        // SAFETY: pipe fills both slots; each is owned once below.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let (mut r, w) = unsafe {
            use std::os::fd::FromRawFd;
            (std::fs::File::from_raw_fd(fds[0]), std::fs::File::from_raw_fd(fds[1]))
        };
        let k = KillSwitch::new(tx, w);
        assert!(matches!(rx.try_recv(), Err(std::sync::mpsc::TryRecvError::Empty)));
        drop(k);
        // The byte is there, and by then the channel already says "ended".
        let mut b = [0u8; 4];
        assert_eq!(r.read(&mut b).unwrap(), 1);
        assert!(matches!(rx.try_recv(), Err(std::sync::mpsc::TryRecvError::Disconnected)));
    }

    #[test]
    fn phases_are_marked_and_read_from_any_clone() {
        let clock = PhaseClock::default();
        assert_eq!(clock.get(), StartPhases::default());
        let before = Instant::now();
        let other = clock.clone();
        std::thread::spawn(move || other.mark(|p| &mut p.connected)).join().unwrap();
        let p = clock.get();
        assert!(p.connected.is_some_and(|t| t >= before));
        assert_eq!((p.began, p.keys_exchanged, p.authenticated, p.exec_sent), (None, None, None, None));
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("/usr/bin/rlaunch"), "/usr/bin/rlaunch");
        assert_eq!(shell_quote("/a b/it's"), "'/a b/it'\\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}

#[cfg(test)]
mod last_words_tests {
    use super::last_words;

    #[test]
    fn the_failing_command_speaks_last() {
        let shell_noise = "rm: cannot remove '/root/.pyenv/shims/tmp.x': No such file or directory\n\
                           pyenv: cannot rehash: /root/.pyenv/shims isn't writable\n\
                           bash: line 1: /nonexistent: No such file or directory\n\
                           rlaunch not found on n6 at /nonexistent (use --daemon-path to name it there)\n\n";
        assert_eq!(last_words(shell_noise), "rlaunch not found on n6 at /nonexistent (use --daemon-path to name it there)");
        assert_eq!(last_words("  \n"), "");
        assert_eq!(last_words("one line"), "one line");
    }
}
