//! `rlaunch __guard`, a daemon's watchman, and the daemon's handle to it.

use super::say::say;
use std::io::{self, Read, Write};

/// `rlaunch __guard`: reads the process-group ids of the daemon's ranks from stdin, one per line
/// (and `file PATH` lines: the daemon's endpoint table), and when that pipe closes, because the
/// daemon ended in any way (even SIGKILL), it kills every one of those groups and removes those
/// files unless something still holds them (a daemon that ended normally removed them already). A
/// rank dies with its daemon through its parent-death signal; this takes the rank's own children
/// with it.
pub fn main() -> ! {
    for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: setting a signal to SIG_IGN has no handler to be unsafe about.
        unsafe { libc::signal(s, libc::SIG_IGN) };
    }
    let mut groups = Vec::new();
    let mut files = Vec::new();
    let mut cgroups = Vec::new();
    let mut text = String::new();
    let _ = io::stdin().read_to_string(&mut text);
    for line in text.lines() {
        if let Some(path) = line.strip_prefix(FILE) {
            files.push(std::path::PathBuf::from(path));
        } else if let Some(dir) = line.strip_prefix(CGROUP) {
            cgroups.push(std::path::PathBuf::from(dir));
        } else if let Ok(g) = line.trim().parse::<i32>() {
            if g > 1 {
                groups.push(g);
            }
        }
    }
    for g in groups {
        // SAFETY: plain kill(2); ESRCH for groups that are already gone is expected.
        unsafe { libc::kill(-g, libc::SIGKILL) };
    }
    for dir in cgroups {
        super::cgroup::kill_and_remove(&dir);
    }
    for f in files {
        remove_unheld(&f);
    }
    std::process::exit(0)
}

const FILE: &str = "file ";
const CGROUP: &str = "cgroup ";

/// Removes `path` once nobody holds it. The dead daemon's claim goes with it, but its descriptors
/// may close just after the pipe that woke the guard: a claim still held a moment later is
/// someone else's, and the file stays.
fn remove_unheld(path: &std::path::Path) {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        match crate::claim::take_if_unheld(path) {
            Ok(_claim) => {
                let _ = std::fs::remove_file(path);
                return;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && std::time::Instant::now() < until => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            // Gone already (the daemon ended normally and removed it), or held.
            Err(_) => return,
        }
    }
}

/// The daemon's end: the guard's stdin, once the first rank started it. Dropping it (the daemon
/// exits) is what sets the guard off.
#[derive(Default)]
pub struct Guard {
    stdin: Option<std::process::ChildStdin>,
    pid: Option<u32>,
    /// The job's cgroup on this node, made with the first rank (see `cgroup.rs`).
    cgroup: Option<super::cgroup::JobCgroup>,
    cgroup_tried: bool,
}

impl Guard {
    /// Tells the guard about a rank's process group, starting the guard with the first one.
    pub fn watch(&mut self, node: u32, pgid: u32) {
        self.tell(node, &pgid.to_string());
    }

    /// The guard process, once started.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// The `cgroup.procs` path each rank writes itself into, once the job's cgroup exists here
    /// (made on the first call, and told to the guard process so that it ends the cgroup if the
    /// daemon dies first).
    pub fn job_cgroup(&mut self, job_id: &str, node: u32) -> Option<std::ffi::CString> {
        if !std::mem::replace(&mut self.cgroup_tried, true) {
            self.cgroup = super::cgroup::JobCgroup::create(job_id, node);
            if let Some(dir) = self.cgroup.as_ref().and_then(|c| c.dir().to_str().map(str::to_string)).filter(|d| !d.contains('\n')) {
                self.tell(node, &format!("{CGROUP}{dir}"));
            }
        }
        self.cgroup.as_ref().map(|c| c.procs().clone())
    }

    /// Tells the guard to remove `path` (the node's endpoint table) if the daemon dies first.
    pub fn remove_at_end(&mut self, node: u32, path: &std::path::Path) {
        if let Some(p) = path.to_str().filter(|p| !p.contains('\n')) {
            self.tell(node, &format!("{FILE}{p}"));
        }
    }

    fn tell(&mut self, node: u32, line: &str) {
        if self.stdin.is_none() {
            let exe = std::env::current_exe().unwrap_or_else(|_| std::path::PathBuf::from("/proc/self/exe"));
            let child = std::process::Command::new(exe)
                .arg("__guard")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn();
            match child {
                Ok(mut c) => {
                    self.stdin = c.stdin.take();
                    self.pid = Some(c.id());
                    // Reaped by pid like any other child of the daemon; the handle is not needed.
                    std::mem::forget(c);
                }
                Err(e) => {
                    say(Some(node), format_args!("cannot start the guard process ({e}); a rank's children may outlive a killed daemon"));
                    return;
                }
            }
        }
        if let Some(g) = self.stdin.as_mut() {
            let _ = writeln!(g, "{line}");
        }
    }
}
