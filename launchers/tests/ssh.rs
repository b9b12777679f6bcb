//! The in-process ssh starter against real sshds: the namespace test cluster (scripts/cluster)
//! for everything that needs a server, a silent local listener for the handshake timeout.
//!
//! The "daemons" here are small shell scripts written under CARGO_TARGET_TMPDIR, which the nodes
//! see because the build tree is shared with them (their /tmp is not).

use launchers::nodes::Node;
use launchers::start::ssh::{SshOptions, UnknownHostKey, CONNECT_FAILED};
use launchers::start::{no_notify, start, DaemonProcess, NodeStarter};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

struct Cluster {
    state: PathBuf,
    node: String,
    other: String,
}

/// The cluster from RLAUNCH_CLUSTER_STATE, or None after saying why the test is skipped.
fn cluster(test: &str) -> Option<Cluster> {
    let skip = |why: String| {
        eprintln!("SKIPPED {test}: {why}");
        None
    };
    let Some(state) = std::env::var_os("RLAUNCH_CLUSTER_STATE").map(PathBuf::from) else {
        return skip("RLAUNCH_CLUSTER_STATE is unset (start a cluster with scripts/cluster up 8 and source its env file)".into());
    };
    let hosts = match std::fs::read_to_string(state.join("hosts")) {
        Ok(h) => h,
        Err(e) => return skip(format!("no cluster in {}: {e}", state.display())),
    };
    let names: Vec<String> = hosts.lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect();
    if names.len() < 2 {
        return skip(format!("{} names fewer than 2 nodes", state.join("hosts").display()));
    }
    let up = std::net::ToSocketAddrs::to_socket_addrs(&(names[0].as_str(), 22))
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok());
    if !up {
        return skip(format!("the sshd of {} does not answer: is the cluster up?", names[0]));
    }
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    if tmp.starts_with("/tmp") || tmp.starts_with("/dev/shm") {
        return skip(format!("{} is node-private; use a CARGO_TARGET_DIR on the shared tree", tmp.display()));
    }
    Some(Cluster { state, node: names[0].clone(), other: names[1].clone() })
}

impl Cluster {
    fn opts(&self) -> SshOptions {
        SshOptions {
            identity: Some(self.state.join("id_ed25519")),
            identities_only: true,
            known_hosts: Some(self.state.join("known_hosts")),
            connect_timeout: Duration::from_secs(5),
            ..SshOptions::default()
        }
    }
    fn node(&self) -> Node {
        Node { name: self.node.clone(), user: Some("root".into()), slots: 1, max_slots: None }
    }
}

/// A fresh directory for one test's scripts and marker files, on the tree the nodes share.
fn workdir(test: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("ssh-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn script(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p.display().to_string()
}

/// Reads `fd` until EOF or until `until` appears in what was read, failing the test at `deadline`.
fn read_stderr(fd: &OwnedFd, until: Option<&str>, deadline: Instant) -> String {
    let mut out = Vec::new();
    let mut f = std::fs::File::from(fd.try_clone().unwrap());
    loop {
        if until.is_some_and(|u| String::from_utf8_lossy(&out).contains(u)) {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "timed out reading stderr; got so far: {:?}", String::from_utf8_lossy(&out));
        let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(1000) as i32) };
        if pfd.revents == 0 {
            continue;
        }
        let mut buf = [0u8; 4096];
        match f.read(&mut buf).unwrap() {
            0 => break,
            n => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn wait_status(p: &mut DaemonProcess, deadline: Instant) -> i32 {
    loop {
        if let Some(code) = p.waiter.try_wait() {
            return code;
        }
        assert!(Instant::now() < deadline, "the session thread did not report an exit status in time");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs a daemon that ends by itself; returns its status and all of its stderr.
fn run(opts: &SshOptions, node: &Node, daemon_path: &str, boot: &str) -> (i32, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut p = start(&NodeStarter::Ssh(opts.clone()), node, daemon_path, boot, &no_notify()).unwrap();
    let err = p.stderr.take().unwrap();
    let text = read_stderr(&err, None, deadline);
    (wait_status(&mut p, deadline), text)
}

#[test]
fn bootstrap_stderr_and_exit_status_travel() {
    let Some(c) = cluster("bootstrap_stderr_and_exit_status_travel") else { return };
    let dir = workdir("plumbing");
    let daemon = script(&dir, "daemon", r#"read l; echo "got:$l on $(hostname) as $(id -un) args:$*" >&2; exit 3"#);
    let (code, err) = run(&c.opts(), &c.node(), &daemon, "BOOT key=abc\n");
    assert_eq!(err, format!("got:BOOT key=abc on {} as root args:__daemon\n", c.node));
    assert_eq!(code, 3);
}

#[test]
fn every_step_of_the_start_is_timed_in_order() {
    let Some(c) = cluster("every_step_of_the_start_is_timed_in_order") else { return };
    let dir = workdir("phases");
    let daemon = script(&dir, "daemon", "read l; exit 0");
    let before = Instant::now();
    let deadline = before + Duration::from_secs(30);
    let mut p = start(&NodeStarter::Ssh(c.opts()), &c.node(), &daemon, "B\n", &no_notify()).unwrap();
    assert_eq!(wait_status(&mut p, deadline), 0);
    let ph = p.phases.as_ref().expect("in-process ssh records its phases").get();
    let steps = [ph.began, ph.connected, ph.keys_exchanged, ph.authenticated, ph.exec_sent];
    assert!(steps.iter().all(Option::is_some), "a step is missing: {ph:?}");
    let times: Vec<Instant> = steps.iter().flatten().copied().collect();
    assert!(times[0] >= before && times.windows(2).all(|w| w[0] <= w[1]), "steps out of order: {ph:?}");
}

#[test]
fn a_daemon_killed_by_a_signal_reports_128_plus_n() {
    let Some(c) = cluster("a_daemon_killed_by_a_signal_reports_128_plus_n") else { return };
    let dir = workdir("signal");
    // exec: the signal must end the command sshd started, not a child of it.
    let daemon = script(&dir, "daemon", "read l; exec sh -c 'kill -TERM $$'");
    assert_eq!(run(&c.opts(), &c.node(), &daemon, "B\n"), (143, String::new()));
}

#[test]
fn stdin_writes_reach_the_daemon_and_dropping_it_is_eof() {
    let Some(c) = cluster("stdin_writes_reach_the_daemon_and_dropping_it_is_eof") else { return };
    let dir = workdir("stdin");
    let daemon = script(&dir, "daemon", r#"read l; read m; echo "$l|$m" >&2; cat >/dev/null; echo eof >&2"#);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut p = start(&NodeStarter::Ssh(c.opts()), &c.node(), &daemon, "BOOT\n", &no_notify()).unwrap();
    let err = p.stderr.take().unwrap();
    let mut stdin = p.stdin.take().unwrap();
    stdin.write_all(b"more\n").unwrap();
    assert_eq!(read_stderr(&err, Some("\n"), deadline), "BOOT|more\n");
    // Still running: only the EOF below ends it.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(p.waiter.try_wait(), None);
    drop(stdin);
    assert_eq!(read_stderr(&err, None, deadline), "eof\n");
    assert_eq!(wait_status(&mut p, deadline), 0);
}

#[test]
fn kill_ends_the_session_promptly_and_the_daemon_sees_eof() {
    let Some(c) = cluster("kill_ends_the_session_promptly_and_the_daemon_sees_eof") else { return };
    let dir = workdir("kill");
    let done = dir.join("done");
    let daemon = script(&dir, "daemon", &format!("read l; echo up >&2; cat >/dev/null; echo gone > '{}'", done.display()));
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut p = start(&NodeStarter::Ssh(c.opts()), &c.node(), &daemon, "BOOT\n", &no_notify()).unwrap();
    let err = p.stderr.take().unwrap();
    let _stdin = p.stdin.take();
    assert_eq!(read_stderr(&err, Some("up\n"), deadline), "up\n");
    let t = Instant::now();
    p.waiter.kill();
    let code = wait_status(&mut p, Instant::now() + Duration::from_secs(2));
    assert!(t.elapsed() < Duration::from_secs(1), "kill took {:?}", t.elapsed());
    assert_eq!(code, 137);
    let gone_by = Instant::now() + Duration::from_secs(5);
    while !done.exists() {
        assert!(Instant::now() < gone_by, "the remote daemon did not see EOF within 5 s of the kill");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_wrong_key_is_an_auth_error_naming_the_node() {
    let Some(c) = cluster("a_wrong_key_is_an_auth_error_naming_the_node") else { return };
    let dir = workdir("wrongkey");
    let key = dir.join("wrong_ed25519");
    let made = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status();
    if !made.is_ok_and(|s| s.success()) {
        eprintln!("SKIPPED a_wrong_key_is_an_auth_error_naming_the_node: ssh-keygen cannot make a key");
        return;
    }
    let opts = SshOptions { identity: Some(key.clone()), ..c.opts() };
    let (code, err) = run(&opts, &c.node(), "/bin/true", "BOOT\n");
    assert_eq!(err, format!("authentication refused by {} for user root (tried: {})\n", c.node, key.display()));
    assert_eq!(code, CONNECT_FAILED);
    let opts = SshOptions { identity: Some(dir.join("absent")), ..c.opts() };
    let (code, err) = run(&opts, &c.node(), "/bin/true", "BOOT\n");
    assert!(err.contains(&format!("(tried: {} (missing))", dir.join("absent").display())), "{err}");
    assert_eq!(code, CONNECT_FAILED);
}

#[test]
fn a_closed_port_is_a_connect_error_naming_node_and_address() {
    let Some(c) = cluster("a_closed_port_is_a_connect_error_naming_node_and_address") else { return };
    let opts = SshOptions { port: 1, ..c.opts() };
    let (code, err) = run(&opts, &c.node(), "/bin/true", "BOOT\n");
    let ip = std::net::ToSocketAddrs::to_socket_addrs(&(c.node.as_str(), 1)).unwrap().next().unwrap();
    assert_eq!(err, format!("cannot connect to {} ({ip}): connection refused\n", c.node));
    assert_eq!(code, CONNECT_FAILED);
}

#[test]
fn a_missing_daemon_is_status_127_naming_the_node() {
    let Some(c) = cluster("a_missing_daemon_is_status_127_naming_the_node") else { return };
    let (code, err) = run(&c.opts(), &c.node(), "/nonexistent/rlaunch", "BOOT\n");
    assert_eq!(code, 127);
    let last = err.lines().last().unwrap_or_default();
    assert_eq!(last, format!("rlaunch not found on {} at /nonexistent/rlaunch (use --daemon-path to name it there)", c.node));
}

#[test]
fn host_keys_changed_unknown_and_accepted() {
    let Some(c) = cluster("host_keys_changed_unknown_and_accepted") else { return };
    let dir = workdir("hostkeys");
    let daemon = script(&dir, "daemon", "read l; exit 5");
    let known = std::fs::read_to_string(c.state.join("known_hosts")).unwrap();
    // The other node's key filed under this node's name: what a reinstalled node looks like.
    let other_key = known
        .lines()
        .find(|l| l.split(',').next() == Some(c.other.as_str()) || l.split_whitespace().next() == Some(c.other.as_str()))
        .and_then(|l| l.split_whitespace().nth(2))
        .expect("the other node's key in known_hosts");
    let wrong = dir.join("known_hosts_wrong");
    std::fs::write(&wrong, format!("# stale\n{} ssh-ed25519 {other_key}\n", c.node)).unwrap();
    let (code, err) = run(&SshOptions { known_hosts: Some(wrong.clone()), ..c.opts() }, &c.node(), &daemon, "B\n");
    assert!(err.starts_with(&format!("host key of {} does not match {}:2 ", c.node, wrong.display())), "{err}");
    assert_eq!(code, CONNECT_FAILED);

    let empty = dir.join("known_hosts_empty");
    std::fs::write(&empty, "").unwrap();
    let opts = SshOptions { known_hosts: Some(empty.clone()), ..c.opts() };
    let (code, err) = run(&opts, &c.node(), &daemon, "B\n");
    assert!(err.starts_with(&format!("host key of {} is not known (not in {})", c.node, empty.display())), "{err}");
    assert_eq!(code, CONNECT_FAILED);

    let opts = SshOptions { unknown_host: UnknownHostKey::Accept, ..opts };
    assert_eq!(run(&opts, &c.node(), &daemon, "B\n"), (5, String::new()));
    // Accepting never writes the file.
    assert_eq!(std::fs::read_to_string(&empty).unwrap(), "");
}

#[test]
fn a_silent_server_is_a_timeout_naming_the_node() {
    // Needs no cluster: a local listener that accepts TCP and never speaks ssh. Not 127.0.0.1,
    // which names this machine, whose daemon is forked without ssh.
    let listener = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let opts = SshOptions { port: addr.port(), connect_timeout: Duration::from_millis(500), ..SshOptions::default() };
    let node = Node { name: "127.0.0.2".into(), user: None, slots: 1, max_slots: None };
    let t = Instant::now();
    let (code, err) = run(&opts, &node, "/bin/true", "BOOT\n");
    assert_eq!(err, format!("no ssh answer from 127.0.0.2 ({addr}) within 0.5 s while exchanging keys\n"));
    assert_eq!(code, CONNECT_FAILED);
    assert!(t.elapsed() < Duration::from_secs(5), "took {:?}", t.elapsed());
}

/// Runs in a child test process (see below), so that SSH_AUTH_SOCK is set before any thread reads
/// the environment; ignored on its own.
#[test]
#[ignore = "run by agent_keys_are_tried_first with an agent socket in its environment"]
fn agent_helper() {
    let Ok(want) = std::env::var("RLAUNCH_SSH_AGENT_TEST") else { return };
    let Some(c) = cluster("agent_helper") else { panic!("the cluster went away") };
    let dir = workdir("agent-helper");
    let daemon = script(&dir, "daemon", "read l; exit 4");
    let opts = SshOptions { identity: None, identities_only: false, ..c.opts() };
    let (code, err) = run(&opts, &c.node(), &daemon, "B\n");
    if want == "refused" {
        assert!(err.starts_with(&format!("authentication refused by {} for user root (tried: agent (1 key)", c.node)), "{err}");
        assert_eq!(code, CONNECT_FAILED);
    } else {
        assert_eq!((code, err.as_str()), (4, ""));
    }
}

#[test]
fn agent_keys_are_tried_first() {
    let Some(c) = cluster("agent_keys_are_tried_first") else { return };
    let dir = workdir("agent");
    let wrong = dir.join("wrong_ed25519");
    let keygen = std::process::Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&wrong).status();
    // The socket lives in this machine's /tmp: only this process talks to it, and socket paths are short.
    let sock = std::env::temp_dir().join(format!("rlaunch-ssh-test-agent-{}", std::process::id()));
    let _ = std::fs::remove_file(&sock);
    let agent = std::process::Command::new("ssh-agent").arg("-D").arg("-a").arg(&sock).stdout(std::process::Stdio::null()).spawn();
    let (Ok(made), Ok(mut agent)) = (keygen, agent) else {
        eprintln!("SKIPPED agent_keys_are_tried_first: needs ssh-keygen and ssh-agent");
        return;
    };
    assert!(made.success());
    let up_by = Instant::now() + Duration::from_secs(5);
    while !sock.exists() {
        assert!(Instant::now() < up_by, "ssh-agent did not create {}", sock.display());
        std::thread::sleep(Duration::from_millis(10));
    }
    let add = |key: &Path| {
        let out = std::process::Command::new("ssh-add").arg(key).env("SSH_AUTH_SOCK", &sock).output().unwrap();
        assert!(out.status.success(), "ssh-add {}: {}", key.display(), String::from_utf8_lossy(&out.stderr));
    };
    let helper = |want: &str| {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "agent_helper", "--ignored", "--nocapture", "--test-threads=1"])
            .env("SSH_AUTH_SOCK", &sock)
            .env("RLAUNCH_SSH_AGENT_TEST", want)
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success() && text.contains("1 passed"), text)
    };
    add(&wrong);
    let refused = helper("refused");
    // The right key second: every agent identity is offered, not only the first.
    add(&c.state.join("id_ed25519"));
    let accepted = helper("ok");
    let _ = agent.kill();
    let _ = agent.wait();
    let _ = std::fs::remove_file(&sock);
    assert!(refused.0, "{}", refused.1);
    assert!(accepted.0, "{}", accepted.1);
}
