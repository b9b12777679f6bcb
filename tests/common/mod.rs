//! Shared helpers for the integration tests: run the real `rlaunch` binary with a deadline, a scratch
//! directory per test, polling with deadlines (never fixed sleeps), and a guard that finds every
//! process a test started (by a unique marker in its environment) and kills what is left.
//!
//! Every process of a test inherits `RLAUNCH_TEST_MARK=<unique>` from the front end (rlaunch passes
//! its environment to the daemon and the ranks), so `/proc/*/environ` tells which processes belong to
//! which test even when the tests run in parallel.
#![allow(dead_code)]

pub mod iterate;
pub mod mpi;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const MARK_VAR: &str = "RLAUNCH_TEST_MARK";
/// No single test job may run longer than this; a hang is a failure, not a stuck CI run.
pub const JOB_DEADLINE: Duration = Duration::from_secs(60);

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_rlaunch")
}

pub fn hostname() -> String {
    nix::unistd::gethostname().expect("gethostname").to_string_lossy().into_owned()
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A per-test scratch directory (exported to the ranks as `$D`) and process marker. Dropping it
/// kills any process still carrying the marker and removes the directory.
pub struct Scratch {
    pub dir: PathBuf,
    pub mark: String,
}

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let mark = format!("rlt-{}-{n}-{name}", std::process::id());
        let dir = std::env::temp_dir().join(&mark);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating the scratch dir");
        Scratch { dir, mark }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `rlaunch ARGS...` with the marker and `D=<scratch dir>` in its environment, stdin from
    /// /dev/null, run in the scratch dir.
    pub fn cmd<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut c = Command::new(bin());
        c.args(args).env(MARK_VAR, &self.mark).env("D", &self.dir).current_dir(&self.dir).stdin(Stdio::null());
        c
    }

    /// Runs `rlaunch ARGS...` to completion (bounded by [`JOB_DEADLINE`]).
    pub fn run<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        Job::start(self.cmd(args), None).wait()
    }

    /// Like [`Scratch::run`], feeding `input` to rlaunch's stdin.
    pub fn run_with_stdin<I, S>(&self, args: I, input: Vec<u8>) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        Job::start(self.cmd(args), Some(input)).wait()
    }

    pub fn spawn<I, S>(&self, args: I) -> Job
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        Job::start(self.cmd(args), None)
    }

    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_else(|e| panic!("reading {}: {e}", self.path(name).display()))
    }

    /// Waits until every named file exists in the scratch dir.
    pub fn wait_files(&self, names: &[String], within: Duration) {
        let ok = poll_until(within, || names.iter().all(|n| self.path(n).exists()));
        if !ok {
            let missing: Vec<&String> = names.iter().filter(|n| !self.path(n).exists()).collect();
            panic!("files {missing:?} did not appear in {} within {within:?}", self.dir.display());
        }
    }

    /// Live (non-zombie) processes that carry this test's marker.
    pub fn leftovers(&self) -> Vec<(u32, String)> {
        marked_processes(&self.mark)
    }

    /// Fails unless every marked process is gone within `within`.
    pub fn assert_no_leftovers(&self, within: Duration) {
        if !poll_until(within, || self.leftovers().is_empty()) {
            panic!("processes left behind after {within:?}: {:?}", self.leftovers());
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for (pid, _) in marked_processes(&self.mark) {
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Calls `cond` every 10 ms until it holds or `within` has passed; returns whether it held.
pub fn poll_until(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Every live process whose environment holds `RLAUNCH_TEST_MARK=mark`, with its command line.
pub fn marked_processes(mark: &str) -> Vec<(u32, String)> {
    let needle = format!("{MARK_VAR}={mark}");
    other_pids().filter(|&pid| has_env(pid, &needle)).filter_map(|pid| Some((pid, live_cmdline(pid)?))).collect()
}

/// Every process but this one.
pub fn other_pids() -> impl Iterator<Item = u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .filter(move |&pid| pid != me)
}

/// Whether `pid`'s environment holds exactly `var` (`NAME=value`).
pub fn has_env(pid: u32, var: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| env.split(|&b| b == 0).any(|v| v == var.as_bytes()))
}

/// The command line of `pid` while it lives; `None` once it is gone or a zombie (dead, only its
/// parent's wait is missing: pid 1 in a container may never reap).
pub fn live_cmdline(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
    if matches!(state, Some('Z') | Some('X') | None) {
        return None;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    Some(String::from_utf8_lossy(&cmdline).replace('\0', " ").trim().to_string())
}

/// What a finished rlaunch run produced.
#[derive(Debug)]
pub struct Output {
    /// The exit code, or None if rlaunch itself was killed by a signal.
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Output {
    pub fn stdout_lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }

    pub fn stderr_lines(&self) -> Vec<&str> {
        self.stderr.lines().collect()
    }

    /// Asserts the exit code, showing everything rlaunch said when it differs.
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, Some(code), "unexpected exit status; output:\n{self}");
        self
    }

    /// Bad input: exit 2 and exactly one line on stderr (no panic, no backtrace), containing `needle`.
    pub fn expect_usage_error(&self, needle: &str) {
        self.expect_code(2);
        let lines = self.stderr_lines();
        assert_eq!(lines.len(), 1, "expected one line on stderr; output:\n{self}");
        assert!(lines[0].starts_with("rlaunch: "), "the line must start with 'rlaunch: '; output:\n{self}");
        assert!(lines[0].contains(needle), "the line must mention {needle:?}; output:\n{self}");
        assert!(!self.stderr.contains("panicked"), "panic on bad input:\n{self}");
        assert!(self.stdout.is_empty(), "nothing on stdout for bad input:\n{self}");
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cut = |s: &str| -> String {
            if s.len() > 4000 {
                format!("{}... ({} bytes)", &s[..s.floor_char_boundary_compat(4000)], s.len())
            } else {
                s.to_string()
            }
        };
        write!(
            f,
            "  exit code {:?}, signal {:?}, {:?}\n  --- stdout ---\n{}\n  --- stderr ---\n{}",
            self.code,
            self.signal,
            self.elapsed,
            cut(&self.stdout),
            cut(&self.stderr)
        )
    }
}

trait FloorBoundary {
    fn floor_char_boundary_compat(&self, i: usize) -> usize;
}

impl FloorBoundary for str {
    fn floor_char_boundary_compat(&self, mut i: usize) -> usize {
        while i > 0 && !self.is_char_boundary(i) {
            i -= 1;
        }
        i
    }
}

/// A running rlaunch front end, with its output collected by threads.
pub struct Job {
    pub child: Child,
    out: Option<JoinHandle<Vec<u8>>>,
    err: Option<JoinHandle<Vec<u8>>>,
    started: Instant,
}

fn collect(mut r: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

impl Job {
    pub fn start(mut cmd: Command, input: Option<Vec<u8>>) -> Job {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        if input.is_some() {
            cmd.stdin(Stdio::piped());
        }
        let started = Instant::now();
        let mut child = cmd.spawn().expect("starting rlaunch");
        if let Some(data) = input {
            let mut w = child.stdin.take().expect("stdin pipe");
            std::thread::spawn(move || {
                let _ = w.write_all(&data);
            });
        }
        let out = Some(collect(child.stdout.take().expect("stdout pipe")));
        let err = Some(collect(child.stderr.take().expect("stderr pipe")));
        Job { child, out, err, started }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({}, {sig}) failed: {}", self.pid(), std::io::Error::last_os_error());
    }

    /// Whether rlaunch is still running (without reaping it).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for rlaunch to exit within [`JOB_DEADLINE`].
    pub fn wait(self) -> Output {
        self.wait_within(JOB_DEADLINE)
    }

    /// Waits for rlaunch to exit within `within`; past that, kills it and fails the test.
    pub fn wait_within(mut self, within: Duration) -> Output {
        use std::os::unix::process::ExitStatusExt;
        let deadline = Instant::now() + within;
        let status = loop {
            match self.child.try_wait().expect("waiting for rlaunch") {
                Some(s) => break Some(s),
                None if Instant::now() >= deadline => break None,
                None => std::thread::sleep(Duration::from_millis(5)),
            }
        };
        let elapsed = self.started.elapsed();
        let Some(status) = status else {
            let _ = self.child.kill();
            let _ = self.child.wait();
            // The pipes may be held by ranks that outlive the front end; don't wait for them.
            panic!("rlaunch did not exit within {within:?} (killed it)");
        };
        let stdout = String::from_utf8_lossy(&self.out.take().unwrap().join().unwrap()).into_owned();
        let stderr = String::from_utf8_lossy(&self.err.take().unwrap().join().unwrap()).into_owned();
        Output { code: status.code(), signal: status.signal(), stdout, stderr, elapsed }
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Writes an executable shell script into `dir` and returns its path.
pub fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("writing a script");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    p
}

/// Shell code that keeps a rank alive until it is signalled, without busy-waiting and without a
/// fixed sleep: `wait` returns as soon as a trapped signal arrives, so the trap runs at once.
pub const IDLE: &str = "while :; do sleep 1000 & wait $!; done";
