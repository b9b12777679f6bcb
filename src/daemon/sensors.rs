//! The node's sensors (`--sensors`, `--sensor CMD`) as a service: a sampler thread reads the
//! built-in sources and runs the user sensors every interval, on its own timer, and hands each
//! round of readings to the loop through a channel and the loop's waker (as libpmix's upcalls
//! come, see [`super::pmix`]). The loop feeds them to the pure engine ([`Engine`]) here and sends
//! a [`Msg::Sensor`] up for every state change, nothing otherwise.
//!
//! A user sensor runs as `sh -c CMD` in a process group of its own, under a small shell that
//! writes CMD's exit status on a pipe of its own: the daemon's loop reaps every child of the
//! daemon (`waitpid(-1)`), so the status could not be waited for here. A command that has not
//! answered when its interval is over is killed (its process group) and counts as unknown; the
//! sampler, not the loop, waits for it, so a hung sensor never holds the daemon.

use super::effect::Effect;
use super::fabric::Fabric;
use super::say::say;
use crate::job::JobView;
use crate::spec::{SensorSpec, SensorValue};
use crate::wire::Msg;
use fabrics::sensors::{read_builtins, Engine, Outcome, Reading};
use launchers::start::Notify;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A user sensor's reason: its first line, cut here.
const MAX_REASON: usize = 400;

#[derive(Default)]
pub struct Sensors {
    active: Option<Active>,
}

struct Active {
    engine: Engine,
    rounds: mpsc::Receiver<Vec<Reading>>,
    /// To the sampler: the job's NICs on this node, once known.
    nics: mpsc::Sender<Vec<String>>,
}

impl Sensors {
    /// At the launch: starts sampling when the job has sensors. Returns no effect (the first
    /// round comes through the waker).
    pub fn start(&mut self, job: &JobView, notify: &Notify) -> Vec<Effect> {
        let (Some(spec), Some(node)) = (job.launch().sensors.clone(), job.node()) else { return Vec::new() };
        if self.active.is_some() {
            return Vec::new();
        }
        let (tx, rounds) = mpsc::channel();
        let (nics, nics_rx) = mpsc::channel();
        let env = vec![
            ("RLAUNCH_NODE_RANK".to_string(), node.to_string()),
            ("RLAUNCH_NODE_NAME".to_string(), job.node_name(node)),
            ("RLAUNCH_JOBID".to_string(), job.launch().job_id.clone()),
        ];
        let thresholds = spec.thresholds.clone();
        let notify = notify.clone();
        let started = std::thread::Builder::new().name("sensors".into()).spawn(move || sample_loop(&spec, &env, &nics_rx, &tx, &notify));
        match started {
            Ok(_) => self.active = Some(Active { engine: Engine::new(thresholds), rounds, nics }),
            // The job runs on; the node's sensors are what is lost, and the line says so.
            Err(e) => say(Some(node), format_args!("cannot start the sensor thread ({e}); no sensor watches this node")),
        }
        Vec::new()
    }

    /// The fabric exchange is over: the NICs the local ranks were given (`RLAUNCH_NIC`) are the
    /// ones the NIC sensor watches.
    pub fn job_nics(&mut self, local_ranks: usize, fabric: &Fabric) {
        let Some(a) = &self.active else { return };
        let mut nics: Vec<String> = (0..local_ranks as u32).filter_map(|l| fabric.rank_env(l).iter().find(|(k, _)| k == "RLAUNCH_NIC").map(|(_, v)| v.clone())).collect();
        nics.sort();
        nics.dedup();
        let _ = a.nics.send(nics);
    }

    /// The rounds sampled since the last call: one `Msg::Sensor` up per state change.
    pub fn on_wake(&mut self, node: u32) -> Vec<Effect> {
        let Some(a) = &mut self.active else { return Vec::new() };
        let rounds: Vec<Vec<Reading>> = a.rounds.try_iter().collect();
        rounds
            .iter()
            .flat_map(|r| a.engine.sample(r))
            .map(|c| Effect::Up(Msg::Sensor { node, sensor: c.sensor, state: c.state, reading: c.reading.filter(|v| v.is_finite()).map(SensorValue), reason: c.reason }))
            .collect()
    }
}

/// The sampler thread: a round every interval until the daemon drops its end of the channel.
fn sample_loop(spec: &SensorSpec, env: &[(String, String)], nics_rx: &mpsc::Receiver<Vec<String>>, tx: &mpsc::Sender<Vec<Reading>>, notify: &Notify) {
    let root = spec.root.as_ref().map_or_else(|| PathBuf::from("/"), PathBuf::from);
    let interval = Duration::from_millis(spec.interval_ms.max(1) as u64);
    let mut nics: Option<Vec<String>> = None;
    let mut next = Instant::now();
    loop {
        if let Some(n) = nics_rx.try_iter().last() {
            nics = Some(n);
        }
        let mut round = if spec.builtins { read_builtins(&root, nics.as_deref()) } else { Vec::new() };
        round.extend(run_commands(&spec.commands, env, interval));
        if tx.send(round).is_err() {
            return;
        }
        notify();
        next += interval;
        let now = Instant::now();
        match next.checked_duration_since(now) {
            Some(wait) => std::thread::sleep(wait),
            // A round that took longer than the interval (user sensors that hung): the next now.
            None => next = now,
        }
    }
}

/// A started user sensor.
struct Running {
    command: String,
    pid: u32,
    stdout: OwnedFd,
    status: OwnedFd,
    out: Vec<u8>,
    code: Vec<u8>,
    stdout_eof: bool,
    status_eof: bool,
}

/// Runs every user sensor at once and waits for their answers for at most `limit`.
fn run_commands(commands: &[String], env: &[(String, String)], limit: Duration) -> Vec<Reading> {
    let deadline = Instant::now() + limit;
    let mut running = Vec::new();
    let mut out = Vec::new();
    for c in commands {
        match start(c, env) {
            Ok(r) => running.push(r),
            Err(e) => out.push(Reading::Command { command: c.clone(), outcome: Outcome::Broken(format!("cannot run sh: {e}")), line: String::new() }),
        }
    }
    loop {
        let waiting: Vec<usize> = (0..running.len()).filter(|&i| !running[i].answered()).collect();
        let now = Instant::now();
        if waiting.is_empty() || now >= deadline {
            break;
        }
        let mut fds: Vec<libc::pollfd> = Vec::new();
        let mut who = Vec::new();
        for &i in &waiting {
            let r = &running[i];
            for (fd, eof, which) in [(&r.stdout, r.stdout_eof, 0), (&r.status, r.status_eof, 1)] {
                if !eof {
                    fds.push(libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 });
                    who.push((i, which));
                }
            }
        }
        let ms = deadline.saturating_duration_since(now).as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: poll(2) on descriptors owned by `running`, which outlives the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n < 0 {
            continue;
        }
        for (p, &(i, which)) in fds.iter().zip(&who) {
            if p.revents != 0 {
                running[i].read_more(which);
            }
        }
    }
    for mut r in running {
        let outcome = match std::str::from_utf8(&r.code).ok().and_then(|s| s.trim().parse::<i32>().ok()) {
            // What the command printed before it ended is in the pipe: take it now.
            Some(code) if r.code.ends_with(b"\n") => {
                r.read_more(0);
                Outcome::Exited(code)
            }
            _ if r.status_eof => Outcome::Broken("ended without an exit status (killed by a signal?)".into()),
            _ => {
                // The status pipe is open, so its shell lives and `pid` is still its process group.
                // SAFETY: kill(2) on the process group this sampler started.
                unsafe { libc::kill(-(r.pid as libc::pid_t), libc::SIGKILL) };
                Outcome::TimedOut
            }
        };
        out.push(Reading::Command { command: r.command.clone(), outcome, line: first_line(&r.out) });
    }
    out
}

impl Running {
    fn answered(&self) -> bool {
        self.code.ends_with(b"\n") || self.status_eof
    }

    /// Reads what is there on stdout (0) or the status pipe (1), without blocking.
    fn read_more(&mut self, which: u8) {
        let (fd, buf, eof) = match which {
            0 => (&self.stdout, &mut self.out, &mut self.stdout_eof),
            _ => (&self.status, &mut self.code, &mut self.status_eof),
        };
        let mut chunk = [0u8; 4096];
        loop {
            // SAFETY: read(2) into a buffer of ours from a descriptor `self` owns.
            let k = unsafe { libc::read(fd.as_raw_fd(), chunk.as_mut_ptr().cast(), chunk.len()) };
            match k {
                0 => {
                    *eof = true;
                    return;
                }
                // Only the first line matters; the rest is read to keep the pipe from filling.
                k if k > 0 && buf.len() < MAX_REASON * 4 => buf.extend_from_slice(&chunk[..k as usize]),
                k if k > 0 => {}
                _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {}
                _ => return,
            }
        }
    }
}

fn first_line(out: &[u8]) -> String {
    let s = String::from_utf8_lossy(out);
    let line = s.lines().next().unwrap_or("").trim();
    match line.char_indices().nth(MAX_REASON) {
        Some((i, _)) => format!("{}...", &line[..i]),
        None => line.to_string(),
    }
}

/// Starts `sh -c CMD` under a shell that writes CMD's exit status to descriptor 3 (closed for
/// CMD itself), in a process group of its own.
fn start(command: &str, env: &[(String, String)]) -> std::io::Result<Running> {
    let (status_r, status_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)?;
    let w = status_w.as_raw_fd();
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", "sh -c \"$1\" 3>&-; echo $? >&3", "rlaunch-sensor", command])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0);
    // SAFETY: dup2(2) is async-signal-safe; `w` stays open until spawn returns.
    unsafe {
        cmd.pre_exec(move || match libc::dup2(w, 3) {
            -1 => Err(std::io::Error::last_os_error()),
            _ => Ok(()),
        });
    }
    let mut child = cmd.spawn()?;
    drop(status_w);
    let stdout: OwnedFd = child.stdout.take().expect("piped").into();
    nix::fcntl::fcntl(stdout.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK))?;
    // Not waited for: the loop reaps it (see the top of this file).
    let pid = child.id();
    drop(child);
    Ok(Running { command: command.to_string(), pid, stdout, status: status_r, out: Vec::new(), code: Vec::new(), stdout_eof: false, status_eof: false })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(cmd: &str, limit_ms: u64) -> (Outcome, String, Duration) {
        let t = Instant::now();
        let mut r = run_commands(&[cmd.to_string()], &[("RLAUNCH_NODE_NAME".into(), "n3".into())], Duration::from_millis(limit_ms));
        let took = t.elapsed();
        match r.pop() {
            Some(Reading::Command { outcome, line, .. }) => (outcome, line, took),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn exit_status_and_first_line() {
        assert_eq!(one("echo fine; echo more", 5000).0, Outcome::Exited(0));
        let (o, line, _) = one("echo \"GPU hot on $RLAUNCH_NODE_NAME\"; exit 1", 5000);
        assert_eq!((o, line.as_str()), (Outcome::Exited(1), "GPU hot on n3"));
        assert_eq!(one("exit 2", 5000).0, Outcome::Exited(2));
        assert_eq!(one("exit 9", 5000).0, Outcome::Exited(9));
        // Descriptor 3 is the wrapper's, not the command's.
        assert_eq!(one("echo 0 >&3", 5000).0, Outcome::Exited(2));
        let (o, _, _) = one("kill -9 $PPID", 5000);
        assert!(matches!(o, Outcome::Broken(_)), "{o:?}");
    }

    #[test]
    fn a_hung_command_is_killed_at_its_limit() {
        let dir = tempfile_dir();
        let marker = format!("{dir}/alive");
        let (o, _, took) = one(&format!("echo started; sleep 30; touch {marker}"), 300);
        assert_eq!(o, Outcome::TimedOut);
        assert!(took < Duration::from_secs(5), "{took:?}");
        // Its whole process group went: the sleep never gets to the touch.
        std::thread::sleep(Duration::from_millis(100));
        let sleepers = std::process::Command::new("pgrep").args(["-f", &marker]).output().map(|o| o.stdout).unwrap_or_default();
        assert!(sleepers.is_empty(), "left running: {}", String::from_utf8_lossy(&sleepers));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_command_leaving_its_output_open_still_answers() {
        // A background child keeps stdout open; the exit status comes anyway.
        let (o, line, took) = one("(sleep 3 &) ; echo bg; exit 1", 2000);
        assert_eq!((o, line.as_str()), (Outcome::Exited(1), "bg"));
        assert!(took < Duration::from_secs(2), "{took:?}");
    }

    fn tempfile_dir() -> String {
        let d = std::env::temp_dir().join(format!("rlaunch-sensor-test-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d.to_string_lossy().into_owned()
    }
}
