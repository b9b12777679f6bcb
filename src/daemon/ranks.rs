//! The local rank table (PRRTE's odls, minus the spawning): each rank's output pipes, read with
//! line buffering and back-pressure, its stdin, its exit status, and the timers that end a job
//! (SIGTERM, then SIGKILL after the grace period; giving up on pipes an escaped descendant holds).

use super::effect::Effect;
use crate::output::LineBuffer;
use crate::spec::RankStatus;
use crate::token::{self, Pipe};
use crate::wire::{Msg, Stream};
use mio::unix::pipe::{Receiver, Sender};
use mio::{Interest, Registry};
use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

/// Stop reading rank output while this much is queued towards the parent: the ranks then block on
/// their pipes instead of the daemon growing without bound.
pub const HIGH_WATER: usize = 8 << 20;
/// After a rank was reaped, how long its pipes may stay open (held by an escaped descendant) before
/// the daemon stops waiting for them.
const PIPE_DRAIN: Duration = Duration::from_secs(2);
/// Bytes read from one rank pipe per turn, so that one chatty rank cannot starve the others.
const READ_TURN: usize = 256 * 1024;

struct LocalRank {
    rank: u32,
    pid: u32,
    out: Option<Receiver>,
    err: Option<Receiver>,
    out_lines: LineBuffer,
    err_lines: LineBuffer,
    stdin: Option<Sender>,
    stdin_buf: Vec<u8>,
    stdin_eof: bool,
    status: Option<RankStatus>,
    reaped_at: Option<Instant>,
    reported: bool,
}

impl LocalRank {
    fn new(rank: u32, pid: u32) -> LocalRank {
        LocalRank {
            rank,
            pid,
            out: None,
            err: None,
            // The rank's bytes go up exactly; only the front end may add a newline (when it tags).
            out_lines: LineBuffer::exact(),
            err_lines: LineBuffer::exact(),
            stdin: None,
            stdin_buf: Vec::new(),
            stdin_eof: false,
            status: None,
            reaped_at: None,
            reported: false,
        }
    }
}

#[derive(Default)]
pub struct Ranks {
    ranks: Vec<LocalRank>,
    by_pid: HashMap<u32, usize>,
    /// Rank pipes that may hold more data than one read took (edge-triggered polling).
    ready: VecDeque<(usize, Pipe)>,
    kill_at: Option<Instant>,
    stop_spawning: bool,
    /// The ranks were spawned (or spawning was given up): stdin goes to them from now on.
    started: bool,
    /// Stdin chunks (an empty one is EOF) that came before the ranks were started.
    held_stdin: Vec<Vec<u8>>,
    /// Stdin ended (EOF delivered): a rank started after that gets none.
    stdin_closed: bool,
    /// One read buffer for every pipe: a fresh zeroed 64 KiB per read was a third of the daemon's
    /// instructions in a PMI modex (callgrind).
    buf: Vec<u8>,
}

impl Ranks {
    /// No more ranks are started: the job is ending or failing.
    pub fn stop_spawning(&self) -> bool {
        self.stop_spawning
    }

    /// A spawned rank: its pipes are read and written from now on.
    pub fn add(&mut self, rank: u32, child: super::exec::Started, registry: &Registry) -> io::Result<()> {
        let pid = child.pid;
        let idx = self.ranks.len();
        let mut r = LocalRank::new(rank, pid);
        r.out = Some(Receiver::from(child.stdout));
        r.err = Some(Receiver::from(child.stderr));
        // A restarted rank gets stdin from where the job is: nothing more once it ended.
        r.stdin = child.stdin.filter(|_| !self.stdin_closed).map(Sender::from);
        if let Some(p) = r.out.as_mut() {
            p.set_nonblocking(true)?;
            registry.register(p, token::rank_pipe(idx, Pipe::Stdout), Interest::READABLE)?;
        }
        if let Some(p) = r.err.as_mut() {
            p.set_nonblocking(true)?;
            registry.register(p, token::rank_pipe(idx, Pipe::Stderr), Interest::READABLE)?;
        }
        if let Some(s) = r.stdin.as_mut() {
            s.set_nonblocking(true)?;
            registry.register(s, token::rank_pipe(idx, Pipe::Stdin), Interest::WRITABLE)?;
        }
        self.by_pid.insert(pid, idx);
        self.ranks.push(r);
        Ok(())
    }

    /// A rank that could not be started (errno): reported like an exit; no more ranks start.
    pub fn add_failed(&mut self, rank: u32, errno: i32) {
        self.add_unstarted(rank, RankStatus::SpawnFailed(errno));
    }

    /// A rank that could not be started, with why (`SpawnFailed`, `NoWorkdir`).
    pub fn add_unstarted(&mut self, rank: u32, status: RankStatus) {
        let mut r = LocalRank::new(rank, 0);
        r.stdin_eof = true;
        r.status = Some(status);
        r.reaped_at = Some(Instant::now());
        self.ranks.push(r);
        // No point starting the rest: the job is failing.
        self.stop_spawning = true;
    }

    /// Spawning is over: stdin that came early goes to the ranks now.
    pub fn started(&mut self, registry: &Registry) {
        self.started = true;
        for chunk in std::mem::take(&mut self.held_stdin) {
            self.deliver_stdin(&chunk, registry);
        }
    }

    /// Bytes for every rank with a stdin pipe (empty = EOF).
    pub fn deliver_stdin(&mut self, data: &[u8], registry: &Registry) {
        // Ranks start only after the fabric exchange, and stdin may arrive first: keep it for them.
        if !self.started && !self.stop_spawning {
            self.held_stdin.push(data.to_vec());
            return;
        }
        self.stdin_closed |= data.is_empty();
        for i in 0..self.ranks.len() {
            let r = &mut self.ranks[i];
            if r.stdin.is_none() || r.stdin_eof {
                continue;
            }
            if data.is_empty() {
                r.stdin_eof = true;
            } else {
                r.stdin_buf.extend_from_slice(data);
            }
            self.write_stdin(i, registry);
        }
    }

    /// A readiness event on one of rank `idx`'s pipes.
    pub fn on_pipe(&mut self, idx: usize, pipe: Pipe, registry: &Registry) {
        match pipe {
            Pipe::Stdin => self.write_stdin(idx, registry),
            _ => self.ready.push_back((idx, pipe)),
        }
    }

    fn write_stdin(&mut self, idx: usize, registry: &Registry) {
        let Some(r) = self.ranks.get_mut(idx) else { return };
        let Some(s) = r.stdin.as_mut() else { return };
        let mut closed = false;
        while !r.stdin_buf.is_empty() {
            match s.write(&r.stdin_buf) {
                Ok(n) => {
                    r.stdin_buf.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    // The rank closed its stdin or exited: drop what it will never read.
                    closed = true;
                    break;
                }
            }
        }
        if closed || (r.stdin_eof && r.stdin_buf.is_empty()) {
            if let Some(mut s) = r.stdin.take() {
                let _ = registry.deregister(&mut s);
            }
            r.stdin_buf.clear();
        }
    }

    /// Whether output waits to be read and the parent link has room for it.
    pub fn wants_read(&self, queued_up: usize) -> bool {
        !self.ready.is_empty() && queued_up < HIGH_WATER
    }

    /// Reads the pipes that are ready, a turn each, while less than [`HIGH_WATER`] is queued up
    /// (`queued_up` now, plus what this round produces).
    pub fn drain(&mut self, mut queued_up: usize, registry: &Registry) -> Vec<Effect> {
        let mut out = Vec::new();
        let mut rounds = self.ready.len();
        while rounds > 0 && queued_up < HIGH_WATER {
            rounds -= 1;
            let Some((idx, pipe)) = self.ready.pop_front() else { break };
            let (more, msg) = self.read_pipe(idx, pipe, registry);
            if let Some(msg) = msg {
                if let Msg::Output { data, .. } = &msg {
                    queued_up += data.len();
                }
                out.push(Effect::Up(msg));
            }
            if more {
                self.ready.push_back((idx, pipe));
            }
        }
        out
    }

    /// Reads a bounded amount from one rank pipe; true when more may be waiting.
    fn read_pipe(&mut self, idx: usize, pipe: Pipe, registry: &Registry) -> (bool, Option<Msg>) {
        if self.buf.is_empty() {
            self.buf = vec![0u8; 64 * 1024];
        }
        let buf = &mut self.buf;
        let mut total = 0;
        let r = &mut self.ranks[idx];
        let (p, lines, stream) = match pipe {
            Pipe::Stdout => (&mut r.out, &mut r.out_lines, Stream::Stdout),
            _ => (&mut r.err, &mut r.err_lines, Stream::Stderr),
        };
        let Some(rx) = p.as_mut() else { return (false, None) };
        let mut eof = false;
        let mut more = false;
        let mut data = Vec::new();
        loop {
            match rx.read(buf) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    data.extend(lines.push(&buf[..n]));
                    total += n;
                    if total >= READ_TURN {
                        more = true;
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    eof = true;
                    break;
                }
            }
        }
        if eof {
            data.extend(lines.finish());
            if let Some(mut rx) = p.take() {
                let _ = registry.deregister(&mut rx);
            }
        }
        let msg = (!data.is_empty()).then_some(Msg::Output { rank: r.rank, stream, data });
        (more, msg)
    }

    /// Collects every child of this process that ended. Ranks are recorded here; the others
    /// (tree-spawn agents, the guard) are returned by pid.
    pub fn reap(&mut self, registry: &Registry) -> Vec<(u32, RankStatus)> {
        use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
        let mut others = Vec::new();
        loop {
            let (pid, status) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid.as_raw() as u32, RankStatus::Exited(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid.as_raw() as u32, RankStatus::Signaled(sig as i32)),
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            };
            match self.by_pid.get(&pid) {
                Some(&idx) => self.exited(idx, status, registry),
                None => others.push((pid, status)),
            }
        }
        others
    }

    fn exited(&mut self, idx: usize, status: RankStatus, registry: &Registry) {
        let r = &mut self.ranks[idx];
        r.status = Some(status);
        r.reaped_at = Some(Instant::now());
        // A rank's descendants die with it: anything left in its process group is killed now.
        // SAFETY: plain kill(2) on the rank's process group.
        unsafe { libc::kill(-(r.pid as libc::pid_t), libc::SIGKILL) };
        if let Some(mut s) = r.stdin.take() {
            let _ = registry.deregister(&mut s);
        }
        // Output may still sit in the pipes: read it before reporting the exit.
        self.ready.push_back((idx, Pipe::Stdout));
        self.ready.push_back((idx, Pipe::Stderr));
    }

    /// `(rank, pid)` of every rank still running.
    pub fn live(&self) -> Vec<(u32, u32)> {
        self.ranks.iter().filter(|r| r.status.is_none() && r.pid != 0).map(|r| (r.rank, r.pid)).collect()
    }

    /// Sends `signum` to the process group of every rank still running.
    pub fn signal_all(&self, signum: i32) {
        for r in self.ranks.iter().filter(|r| r.status.is_none() && r.pid != 0) {
            // SAFETY: plain kill(2) on the rank's process group.
            unsafe { libc::kill(-(r.pid as libc::pid_t), signum) };
        }
    }

    /// SIGTERM now, SIGKILL after `grace`; no more ranks start.
    pub fn terminate(&mut self, grace: Duration) {
        self.stop_spawning = true;
        self.signal_all(libc::SIGTERM);
        if self.kill_at.is_none() {
            self.kill_at = Some(Instant::now() + grace);
        }
    }

    /// A job restart stopped every rank: ranks may start again, and no kill is pending.
    pub fn resume(&mut self) {
        self.stop_spawning = false;
        self.kill_at = None;
    }

    /// SIGKILL now; no more ranks start.
    pub fn kill(&mut self) {
        self.signal_all(libc::SIGKILL);
        self.stop_spawning = true;
    }

    /// When [`Ranks::check_timers`] has something to do next.
    pub fn next_deadline(&self) -> Option<Instant> {
        let drains = self.ranks.iter().filter(|r| !r.reported).filter_map(|r| r.reaped_at).map(|at| at + PIPE_DRAIN);
        drains.chain(self.kill_at).min()
    }

    /// The kill timer, and the exits to report: a reaped rank whose pipes are closed, or have
    /// been open for [`PIPE_DRAIN`] after it was reaped.
    pub fn check_timers(&mut self, now: Instant, registry: &Registry) -> Vec<Effect> {
        if self.kill_at.is_some_and(|at| now >= at) {
            self.signal_all(libc::SIGKILL);
            self.kill_at = None;
        }
        let mut out = Vec::new();
        for r in self.ranks.iter_mut().filter(|r| !r.reported) {
            let Some(at) = r.reaped_at else { continue };
            let pipes_open = r.out.is_some() || r.err.is_some();
            if pipes_open && now < at + PIPE_DRAIN {
                continue;
            }
            if pipes_open {
                // Held open by a descendant that left the rank's process group: stop waiting.
                let data = r.out_lines.finish();
                let edata = r.err_lines.finish();
                for mut p in [r.out.take(), r.err.take()].into_iter().flatten() {
                    let _ = registry.deregister(&mut p);
                }
                if !data.is_empty() {
                    out.push(Effect::Up(Msg::Output { rank: r.rank, stream: Stream::Stdout, data }));
                }
                if !edata.is_empty() {
                    out.push(Effect::Up(Msg::Output { rank: r.rank, stream: Stream::Stderr, data: edata }));
                }
            }
            r.reported = true;
            out.push(Effect::RankExit { rank: r.rank, pid: r.pid, status: r.status.expect("reaped rank has a status") });
        }
        out
    }

    /// Every rank that was started (or failed to) has had its exit reported.
    pub fn all_reported(&self) -> bool {
        self.ranks.iter().all(|r| r.reported)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdin_is_held_until_the_ranks_start_or_the_job_ends() {
        let poll = mio::Poll::new().unwrap();
        let mut r = Ranks::default();
        r.deliver_stdin(b"early", poll.registry());
        r.deliver_stdin(b"", poll.registry());
        assert_eq!(r.held_stdin, vec![b"early".to_vec(), Vec::new()]);
        r.started(poll.registry());
        assert!(r.held_stdin.is_empty());
        let mut ended = Ranks::default();
        ended.terminate(Duration::from_secs(1));
        ended.deliver_stdin(b"late", poll.registry());
        assert!(ended.held_stdin.is_empty(), "nobody will read it");
    }

    #[test]
    fn a_rank_that_could_not_start_is_reported_at_once_and_stops_the_rest() {
        let poll = mio::Poll::new().unwrap();
        let mut r = Ranks::default();
        r.add_failed(5, libc::ENOENT);
        assert!(r.stop_spawning() && !r.all_reported());
        let fx = r.check_timers(Instant::now(), poll.registry());
        assert_eq!(fx, vec![Effect::RankExit { rank: 5, pid: 0, status: RankStatus::SpawnFailed(libc::ENOENT) }]);
        assert!(r.all_reported());
        assert!(r.check_timers(Instant::now(), poll.registry()).is_empty(), "reported once");
        assert_eq!(r.next_deadline(), None);
    }

    #[test]
    fn termination_arms_the_kill_timer_once() {
        let mut r = Ranks::default();
        r.terminate(Duration::from_millis(500));
        let first = r.next_deadline().unwrap();
        r.terminate(Duration::from_secs(60));
        assert_eq!(r.next_deadline(), Some(first), "a second TERM does not move the deadline");
        let poll = mio::Poll::new().unwrap();
        assert!(r.check_timers(first, poll.registry()).is_empty());
        assert_eq!(r.next_deadline(), None);
    }
}
