//! The namespace test cluster (scripts/cluster) as the multi-node tests see it, and a scratch
//! directory that the nodes can see.
//!
//! Why not `common::Scratch`: its directory is under /tmp, which is private to every node, and its
//! marker variable (`RLAUNCH_TEST_MARK`) is one of the `RLAUNCH_*` variables the front end never
//! forwards to remote ranks. Here the directory lives under CARGO_TARGET_TMPDIR (the build tree is
//! shared with the nodes, like an NFS home), ranks are marked by [`NODE_MARK_VAR`], which is
//! forwarded, and daemons are marked by their path: each scratch dir holds a hard link to the
//! rlaunch binary and the front end is run through it, so every daemon (whose default path is the
//! front end's own) shows the scratch dir in its command line on every node. The nodes share the
//! machine's PID namespace, so /proc on the host sees every process of every node; the UTS
//! namespace of a process tells which node it is on.
#![allow(dead_code)]

use crate::common::{poll_until, Job, Output, MARK_VAR};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Forwarded to remote ranks (unlike `RLAUNCH_*`), so ranks on every node carry it.
pub const NODE_MARK_VAR: &str = "MULTINODE_TEST_MARK";

/// A live cluster of at least 8 nodes.
pub struct Cluster {
    pub state: PathBuf,
    pub nodes: Vec<String>,
    /// `scripts/node-exec`, the nsenter-based rsh-like agent.
    pub agent: PathBuf,
    /// UTS namespace of each node's init process, to tell on which node a process runs.
    uts: Vec<(String, String)>,
}

/// Says why a test is skipped, past the test harness's output capture: a skip must be visible in
/// a plain `cargo test` run, not only when the test fails.
pub fn skip(test: &str, why: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

impl Cluster {
    /// The cluster named by RLAUNCH_CLUSTER_STATE, or None after printing why `test` is skipped.
    pub fn get(test: &str) -> Option<Cluster> {
        let no = |why: String| {
            skip(test, &why);
            None
        };
        let Some(state) = std::env::var_os("RLAUNCH_CLUSTER_STATE").map(PathBuf::from) else {
            return no(
                "RLAUNCH_CLUSTER_STATE is unset (scripts/test exports it; or run scripts/cluster up 8 and source its env file)".into()
            );
        };
        if !state.join(".rlaunch-cluster").exists() {
            return no(format!("no cluster in {} (scripts/cluster up 8 makes one)", state.display()));
        }
        if !nix::unistd::geteuid().is_root() {
            return no("not root: the launch agent enters the nodes' namespaces".into());
        }
        let hosts = match std::fs::read_to_string(state.join("hosts")) {
            Ok(h) => h,
            Err(e) => return no(format!("cannot read {}: {e}", state.join("hosts").display())),
        };
        let nodes: Vec<String> = hosts.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
        if nodes.len() < 8 {
            return no(format!("the cluster in {} has {} nodes; these tests need 8", state.display(), nodes.len()));
        }
        let nodes: Vec<String> = nodes.into_iter().take(8).collect();
        let mut uts = Vec::new();
        for n in &nodes {
            let pidfile = state.join("pids").join(format!("{n}.init"));
            let pid = std::fs::read_to_string(&pidfile).ok().and_then(|s| s.split_whitespace().next().map(String::from));
            let ns = pid.and_then(|p| std::fs::read_link(format!("/proc/{p}/ns/uts")).ok());
            match ns {
                Some(ns) => uts.push((n.clone(), ns.to_string_lossy().into_owned())),
                None => return no(format!("node {n} is down ({} names no live process); restart the cluster", pidfile.display())),
            }
        }
        let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
        if tmp.starts_with("/tmp") || tmp.starts_with("/dev/shm") {
            return no(format!("{} is private to each node; use a CARGO_TARGET_DIR on the shared tree", tmp.display()));
        }
        let agent = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/node-exec");
        Some(Cluster { state, nodes, agent, uts })
    }

    /// Options that start daemons through `scripts/node-exec`.
    pub fn agent_args(&self) -> Vec<String> {
        vec!["--launch-agent".into(), self.agent.display().to_string()]
    }

    /// Options that start daemons with the in-process ssh client and the cluster's own key and
    /// known_hosts (the user's ~/.ssh is never involved).
    pub fn ssh_args(&self) -> Vec<String> {
        vec![
            "--launcher".into(),
            "ssh".into(),
            // The view path: daemons that start their own children (tree spawn) read these files
            // on the nodes, whose /tmp is private.
            "--ssh-identity".into(),
            "/run/rlaunch-cluster/id_ed25519".into(),
            "--ssh-known-hosts".into(),
            "/run/rlaunch-cluster/known_hosts".into(),
        ]
    }

    /// Which node `pid` runs on ("host" when it is in none of them).
    pub fn node_of(&self, pid: u32) -> String {
        let ns = std::fs::read_link(format!("/proc/{pid}/ns/uts")).map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
        self.uts.iter().find(|(_, u)| *u == ns).map_or_else(|| "host".to_string(), |(n, _)| n.clone())
    }

    /// The address of `node` (from /etc/hosts, where scripts/cluster puts the names).
    pub fn addr(&self, node: &str) -> std::net::IpAddr {
        use std::net::ToSocketAddrs;
        (node, 0).to_socket_addrs().ok().and_then(|mut a| a.next()).unwrap_or_else(|| panic!("cannot resolve {node}")).ip()
    }
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A per-test directory on the tree the nodes share (exported to the ranks as `$D`), holding the
/// rlaunch binary the test runs; dropping it kills whatever the test left and removes it.
pub struct NodeScratch {
    pub dir: PathBuf,
    pub mark: String,
    pub exe: PathBuf,
}

/// A process the test started, wherever it runs.
#[derive(Debug, Clone)]
pub struct Proc {
    pub pid: u32,
    pub cmdline: String,
}

impl NodeScratch {
    pub fn new(name: &str) -> NodeScratch {
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let mark = format!("mn-{}-{n}-{name}", std::process::id());
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("multinode").join(&mark);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating the scratch dir");
        let exe = dir.join("rlaunch");
        // A hard link keeps /proc/self/exe (the daemons' default path) inside the scratch dir; a
        // copy is the fallback when the target dir is on another file system.
        if std::fs::hard_link(crate::common::bin(), &exe).is_err() {
            std::fs::copy(crate::common::bin(), &exe).expect("copying the rlaunch binary into the scratch dir");
        }
        NodeScratch { dir, mark, exe }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).expect("writing a scratch file");
        p
    }

    pub fn cmd<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut c = Command::new(&self.exe);
        c.args(args)
            .env(MARK_VAR, &self.mark)
            .env(NODE_MARK_VAR, &self.mark)
            .env("D", &self.dir)
            .current_dir(&self.dir)
            .stdin(Stdio::null());
        c
    }

    pub fn run<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        Job::start(self.cmd(args), None).wait()
    }

    pub fn run_within<I, S>(&self, args: I, within: Duration) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        Job::start(self.cmd(args), None).wait_within(within)
    }

    pub fn spawn<I, S>(&self, args: I) -> Job
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        Job::start(self.cmd(args), None)
    }

    /// The JSON report written by `--report <dir>/report.json`.
    pub fn report(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.path("report.json")).expect("reading the --report file");
        serde_json::from_str(&text).expect("the report is JSON")
    }

    /// Live processes of this test on any node: ranks (marked in their environment) and
    /// daemons, agents and front ends (running the scratch dir's binary).
    pub fn leftovers(&self) -> Vec<Proc> {
        let needle = format!("{NODE_MARK_VAR}={}", self.mark);
        let dir = self.dir.to_string_lossy().into_owned();
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir("/proc") else { return out };
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            if pid == std::process::id() || !alive(pid) {
                continue;
            }
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ").trim().to_string();
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            if cmdline.contains(&dir) || env.split(|&b| b == 0).any(|v| v == needle.as_bytes()) {
                out.push(Proc { pid, cmdline });
            }
        }
        out
    }

    /// Fails unless nothing of this test runs on any node (or the host) within `within`.
    pub fn assert_no_leftovers(&self, cluster: Option<&Cluster>, within: Duration) {
        if !poll_until(within, || self.leftovers().is_empty()) {
            let left: Vec<String> = self
                .leftovers()
                .iter()
                .map(|p| format!("pid {} on {}: {}", p.pid, cluster.map_or_else(|| "?".into(), |c| c.node_of(p.pid)), p.cmdline))
                .collect();
            panic!("processes left behind after {within:?}:\n  {}", left.join("\n  "));
        }
    }

    /// Per-rank records written by [`RECORD`]: rank → (pid, parent pid, hostname).
    pub fn records(&self) -> BTreeMap<u32, (u32, u32, String)> {
        let mut out = BTreeMap::new();
        for e in std::fs::read_dir(&self.dir).expect("listing the scratch dir").flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rank) = name.strip_prefix("rec.").and_then(|r| r.parse::<u32>().ok()) else { continue };
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            let f: Vec<&str> = text.split_whitespace().collect();
            if f.len() == 3 {
                out.insert(rank, (f[0].parse().unwrap_or(0), f[1].parse().unwrap_or(0), f[2].to_string()));
            }
        }
        out
    }

    /// Waits until `n` ranks have written their [`RECORD`].
    pub fn wait_records(&self, n: usize, within: Duration) -> BTreeMap<u32, (u32, u32, String)> {
        if !poll_until(within, || self.records().len() >= n) {
            panic!("only {} of {n} ranks wrote their record in {} within {within:?}", self.records().len(), self.dir.display());
        }
        self.records()
    }
}

/// Shell code for a rank: records "pid parent-pid hostname" in `$D/rec.$RLAUNCH_RANK`, written to a
/// temporary name first so that a reader never sees half a record.
pub const RECORD: &str = r#"echo $$ $PPID $(hostname) > "$D/.rec.$RLAUNCH_RANK" && mv "$D/.rec.$RLAUNCH_RANK" "$D/rec.$RLAUNCH_RANK""#;

impl Drop for NodeScratch {
    fn drop(&mut self) {
        for p in self.leftovers() {
            unsafe { libc::kill(p.pid as libc::pid_t, libc::SIGKILL) };
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether `pid` exists and is not a zombie (a dead process its parent has not reaped yet).
pub fn alive(pid: u32) -> bool {
    crate::common::live_cmdline(pid).is_some()
}

/// TCP ports `pid` listens on, from its socket fds and its network namespace's /proc/PID/net/tcp*.
pub fn listening_ports(pid: u32) -> Vec<u16> {
    listening(pid).into_iter().map(|(_, port)| port).collect()
}

/// `(local address as /proc/net/tcp* writes it, port)` of every TCP socket `pid` listens on; an
/// address of only zeros is every address.
pub fn listening(pid: u32) -> Vec<(String, u16)> {
    let mut inodes = Vec::new();
    if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for fd in fds.flatten() {
            let target = std::fs::read_link(fd.path()).map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
            if let Some(ino) = target.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
                inodes.push(ino.to_string());
            }
        }
    }
    let mut ports = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // Columns: sl local_address rem_address st ... inode (10th); st 0A = LISTEN.
            if f.len() > 9 && f[3] == "0A" && inodes.iter().any(|i| i == f[9]) {
                if let Some((addr, port)) = f[1].rsplit_once(':').and_then(|(a, p)| Some((a.to_string(), u16::from_str_radix(p, 16).ok()?))) {
                    ports.push((addr, port));
                }
            }
        }
    }
    ports
}
