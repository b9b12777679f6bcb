//! The daemon's watchman: a process forked when the daemon starts, and the daemon's handle to it.

use super::say::say;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The guard's life: reads the process-group ids of the daemon's ranks from its pipe, one per line
/// (and `file PATH` lines: the daemon's endpoint table; `cgroup DIR`: the job's cgroup), and when
/// the pipe closes, because the daemon ended in any way (even SIGKILL), it kills every one of those
/// groups, ends the cgroups and removes those files unless something still holds them (a daemon
/// that ended normally removed them already). A rank dies with its daemon through its parent-death
/// signal; this takes the rank's own children with it.
fn watch(pipe: std::fs::File) -> ! {
    for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: setting a signal to SIG_IGN has no handler to be unsafe about.
        unsafe { libc::signal(s, libc::SIG_IGN) };
    }
    let mut groups = Vec::new();
    let mut files = Vec::new();
    let mut cgroups = Vec::new();
    let text = read_until_closed(pipe);
    for line in String::from_utf8_lossy(&text).lines() {
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
    // SAFETY: _exit(2): nothing of the daemon's (atexit handlers, buffers) is the guard's to run.
    unsafe { libc::_exit(0) }
}

/// Everything the daemon wrote, once it closed its end. The guard does not wake for each line: after
/// a wake-up it reads what is there and then pauses for [`GATHER`] (a spawn batch's lines arrive
/// in a few reads, not one per rank), and an idle guard sleeps until data or the hang-up comes
/// (with hundreds of daemons on one host, timed wake-ups would add up).
fn read_until_closed(mut pipe: std::fs::File) -> Vec<u8> {
    let mut text = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    // SAFETY: fcntl(2) on the guard's own descriptor (its open file, not the daemon's end).
    unsafe { libc::fcntl(pipe.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    loop {
        loop {
            match pipe.read(&mut chunk) {
                Ok(0) => return text,
                Ok(n) => text.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // WouldBlock: nothing more now. Anything else: the pipe is unusable; act now.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => return text,
            }
        }
        let mut pfd = libc::pollfd { fd: pipe.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: poll(2) on one descriptor of ours.
        unsafe { libc::poll(&mut pfd, 1, -1) };
        if pfd.revents & libc::POLLHUP == 0 {
            std::thread::sleep(GATHER);
        }
    }
}

/// How long the guard lets lines gather after one woke it (see [`read_until_closed`]); a daemon
/// that ends during that pause is noticed this much later at most.
const GATHER: std::time::Duration = std::time::Duration::from_millis(50);

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

/// The daemon's end: the write end of the guard's pipe. Dropping it (the daemon exits) is what
/// sets the guard off.
#[derive(Default)]
pub struct Guard {
    pipe: Option<std::fs::File>,
    pid: Option<u32>,
    /// The job's cgroup on this node, made with the first rank (see `cgroup.rs`).
    cgroup: Option<super::cgroup::JobCgroup>,
    cgroup_tried: bool,
}

impl Guard {
    /// Forks the guard. Call while the daemon has one thread: the guard then runs ordinary code
    /// (it allocates, reads files) in its copy of the daemon, which is only sound in a fork of a
    /// single-threaded process. A fork costs a fraction of what exec'ing this binary again did
    /// (its loading and glibc's start-up, about 0.9 ms per daemon here), and being there from the
    /// start, it misses no rank. Early also means the daemon has written little memory yet: after
    /// the fork, each page it writes that the guard still shares is copied once.
    pub fn start() -> Guard {
        let mut fds = [0; 2];
        // SAFETY: pipe2(2) writes two new descriptors, owned from here on.
        let (r, w) = unsafe {
            if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) == -1 {
                return Guard::failed(io::Error::last_os_error());
            }
            (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))
        };
        // SAFETY: fork(2) of a single-threaded process (see above); the child never returns.
        match unsafe { libc::fork() } {
            -1 => Guard::failed(io::Error::last_os_error()),
            0 => {
                drop(w);
                become_guard(r)
            }
            pid => Guard { pipe: Some(std::fs::File::from(w)), pid: Some(pid as u32), ..Guard::default() },
        }
    }

    fn failed(e: io::Error) -> Guard {
        say(None, format_args!("cannot start the guard process ({e}); a rank's children may outlive a killed daemon"));
        Guard::default()
    }

    /// Tells the guard about a rank's process group.
    pub fn watch(&mut self, pgid: u32) {
        self.tell(&pgid.to_string());
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
                self.tell(&format!("{CGROUP}{dir}"));
            }
        }
        self.cgroup.as_ref().map(|c| c.procs().clone())
    }

    /// Tells the guard to remove `path` (the node's endpoint table) if the daemon dies first.
    pub fn remove_at_end(&mut self, path: &std::path::Path) {
        if let Some(p) = path.to_str().filter(|p| !p.contains('\n')) {
            self.tell(&format!("{FILE}{p}"));
        }
    }

    fn tell(&mut self, line: &str) {
        if let Some(g) = self.pipe.as_mut() {
            // One write per line: a daemon killed between two writes leaves no half line.
            let _ = g.write_all(format!("{line}\n").as_bytes());
        }
    }
}

/// In the forked child: only the pipe stays open (the daemon's sockets, its stdin and stdout
/// must not be held by a process that outlives it), its command line says what it is, and it
/// watches.
fn become_guard(pipe: OwnedFd) -> ! {
    // SAFETY: plain descriptor and signal calls on this process's own state.
    unsafe {
        // The daemon's SIGCHLD handler writes to a pipe that is closed below.
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        let fd = pipe.as_raw_fd();
        if libc::dup2(fd, 0) == -1 || null < 0 || libc::dup2(null, 1) == -1 || libc::dup2(null, 2) == -1 {
            libc::_exit(1);
        }
        std::mem::forget(pipe);
        if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) != 0 {
            for fd in 3..65536 {
                libc::close(fd);
            }
        }
        libc::prctl(libc::PR_SET_NAME, c"rlaunch-guard".as_ptr());
    }
    rename_cmdline();
    watch(unsafe { std::fs::File::from_raw_fd(0) })
}

/// `rlaunch __guard` instead of `rlaunch __daemon` in /proc/PID/cmdline (what `ps` and every tool
/// that looks for daemons read), written over the copy of the daemon's arguments this process has.
fn rename_cmdline() {
    // arg_start and arg_end are fields 48 and 49 of /proc/self/stat (after the parenthesised name).
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return };
    let Some((_, rest)) = stat.rsplit_once(") ") else { return };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let (Some(start), Some(end)) = (fields.get(45).and_then(|v| v.parse::<usize>().ok()), fields.get(46).and_then(|v| v.parse::<usize>().ok())) else { return };
    if end <= start {
        return;
    }
    // SAFETY: [arg_start, arg_end) is this process's own argument block, readable and writable.
    let args = unsafe { std::slice::from_raw_parts_mut(start as *mut u8, end - start) };
    let from = b"\0__daemon";
    if let Some(at) = args.windows(from.len()).position(|w| w == from) {
        args[at..at + from.len()].copy_from_slice(b"\0__guard\0");
    }
}
