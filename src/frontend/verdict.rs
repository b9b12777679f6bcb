//! The exit-status contract of `rlaunch --help` as one pure state machine: typed failures come
//! in, and out come the exit status, the one line to print and whether the ranks must be
//! terminated (SIGTERM, then SIGKILL after the grace period) or killed at once.
//!
//! Which failure wins is decided here and nowhere else (cargo-nextest orders its cancel reasons
//! the same way): the first failure decides the status, with one exception — a second interrupt
//! outranks a rank failure, because the user asked for everything to be killed and 130 says so.
//! A rank failure counts only while the job is still running: once rlaunch itself terminates the
//! ranks, their deaths by SIGTERM are consequences, not causes, and print nothing.

use crate::exitcode;
use crate::sig::signal_name;
use crate::spec::RankStatus;
use std::time::Duration;

/// Exit status when a rank broke the PMI protocol or left without finalize after init: the
/// rank's own status (0, or the SIGTERM rlaunch sent) would not say that anything went wrong.
pub const PMI_FAILURE_EXIT: i32 = 1;
/// Exit status after a second interrupt: 128 + SIGINT, what a shell reports for ctrl-C.
pub const INTERRUPTED_EXIT: i32 = 128 + libc::SIGINT;
/// Exit status when the reader of rlaunch's stdout or stderr went away (`| head`): 128 + SIGPIPE,
/// what a shell reports for a pipeline member that wrote into a closed pipe.
pub const OUTPUT_CLOSED_EXIT: i32 = 128 + libc::SIGPIPE;
/// Exit status when the controlling terminal hung up: 128 + SIGHUP.
pub const HANGUP_EXIT: i32 = 128 + libc::SIGHUP;

/// How the job ended, in the report's words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Running,
    RankFailed,
    LaunchFailed,
    TimedOut,
    Killed,
    /// rlaunch's own output went away (closed pipe, hung-up terminal) or could not be written.
    OutputLost,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Running => "success",
            Outcome::RankFailed => "rank-failed",
            Outcome::LaunchFailed => "launch-failed",
            Outcome::TimedOut => "timeout",
            Outcome::Killed => "killed",
            Outcome::OutputLost => "output-lost",
        }
    }

    /// Whether a later outcome replaces this one as the reason the job ended.
    fn yields_to(self, later: Outcome) -> bool {
        self == Outcome::Running || (self == Outcome::RankFailed && later == Outcome::Killed)
    }
}

/// Everything that can end a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// A rank exited with a non-zero status, was killed by a signal, or could not be started.
    RankExit { rank: u32, status: RankStatus },
    /// A rank exited with status 0 after PMI init without PMI finalize.
    Unfinalized { rank: u32 },
    /// A rank called PMI/PMIx abort (`MPI_Abort`).
    Abort { rank: u32, code: i32, message: String },
    /// A rank (or an unidentified process on `node`) broke the PMI protocol.
    ProtocolError { rank: Option<u32>, node: u32, message: String },
    /// A node's daemon could not be started or did not join in time.
    LaunchFailed { node: u32, why: String },
    /// The link to a joined node broke; `more` nodes below it are lost with it.
    LinkLost { node: u32, why: String, more: Vec<u32> },
    /// Something failed on a node outside any rank.
    NodeFault { node: u32, why: String },
    /// The PMI or PMIx fence tree broke at the front end.
    FenceError { message: String },
    /// The nodes answered that the user's request cannot be met (`--nic`, `--fabric`): exit 2.
    Unsatisfiable { message: String },
    /// The fabric exchange failed.
    FabricError { message: String },
    /// `--timeout` expired.
    Timeout { after: Duration },
    /// A second SIGINT within the window.
    SecondInterrupt,
    /// The reader of rlaunch's stdout or stderr is gone (EPIPE): ended like a pipeline member.
    OutputClosed,
    /// rlaunch's controlling terminal hung up (SIGHUP, and the terminal or output is gone).
    Hangup,
    /// Writing the ranks' output failed otherwise (ENOSPC, EIO); `stream` names where it went.
    OutputError { stream: String, error: String },
}

/// What the verdict needs to know about the job to word its lines.
pub trait Facts {
    /// "rank 3 (pid 1234 on n01)".
    fn rank_label(&self, rank: u32) -> String;
    /// The host a rank runs on, and the program it runs.
    fn rank_host(&self, rank: u32) -> String;
    fn rank_program(&self, rank: u32) -> String;
    /// The working directory a rank was given (empty: the daemon's own).
    fn rank_dir(&self, _rank: u32) -> String {
        String::new()
    }
    fn node_name(&self, node: u32) -> String;
    /// Ranks with no exit status yet.
    fn running(&self) -> usize;
}

/// What the event loop does after a failure was recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Nothing,
    /// Send `Terminate` to every daemon (SIGTERM, grace period, SIGKILL).
    Terminate,
    /// Send `Kill` to every daemon (SIGKILL now).
    Kill,
}

/// One recorded failure's consequences.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The one line to print on stderr, if any.
    pub line: Option<String>,
    pub action: Action,
}

#[derive(Debug)]
pub struct Verdict {
    outcome: Outcome,
    code: i32,
    first_failed_rank: Option<u32>,
    terminating: bool,
    /// Nodes that could not be launched after the first, whose line was said at once: their
    /// names and lines, said at the end ([`Verdict::closing_lines`]).
    launch_failed: Vec<(String, String)>,
    /// The first node that could not be launched was said.
    launch_failure_said: bool,
}

/// At the end, up to this many held launch failures get a line each; more get one line with a
/// count (a host file of 32 bad names must not print 32 lines).
pub const HELD_LAUNCH_LINES: usize = 2;

impl Default for Verdict {
    fn default() -> Self {
        Verdict { outcome: Outcome::Running, code: exitcode::SUCCESS, first_failed_rank: None, terminating: false, launch_failed: Vec::new(), launch_failure_said: false }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// An abort code as an exit status: its low 8 bits, as exit(3) would give, but never 0, since an
/// abort must not look like success.
pub fn abort_exit_code(code: i32) -> i32 {
    match code & 0xff {
        0 => PMI_FAILURE_EXIT,
        c => c,
    }
}

/// `-print-all-exitcodes`: every rank's exit status, one line each in rank order (rlaunch's own
/// exit status stays the first failure's). A rank that never reported says so.
pub fn all_exit_codes(statuses: impl Iterator<Item = Option<RankStatus>>, facts: &dyn Facts) -> Vec<String> {
    statuses
        .enumerate()
        .map(|(rank, status)| {
            let rank = rank as u32;
            let what = match status {
                Some(RankStatus::Exited(c)) => format!("exit status {c}"),
                Some(RankStatus::Signaled(s)) => format!("killed by signal {s} ({}), exit status {}", signal_name(s), 128 + s),
                Some(RankStatus::SpawnFailed(errno)) => format!("not started: {}", std::io::Error::from_raw_os_error(errno)),
                Some(RankStatus::NoWorkdir(errno)) => format!("not started: its working directory: {}", std::io::Error::from_raw_os_error(errno)),
                None => "no exit status (its node was lost)".to_string(),
            };
            format!("rlaunch: rank {rank} on {}: {what}", facts.rank_host(rank))
        })
        .collect()
}

/// `600 s`, `1.5 s`.
pub fn fmt_secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0} s")
    } else {
        format!("{s} s")
    }
}

impl Verdict {
    pub fn outcome(&self) -> Outcome {
        self.outcome
    }

    /// Whether rlaunch has started ending the job (termination or kill sent).
    pub fn terminating(&self) -> bool {
        self.terminating
    }

    pub fn first_failed_rank(&self) -> Option<u32> {
        self.first_failed_rank
    }

    /// The exit status so far. `all_reported`: every rank's status arrived; a job that ended with
    /// no failure but with ranks unaccounted for is rlaunch's own failure.
    pub fn exit_code(&self, all_reported: bool) -> i32 {
        if self.outcome == Outcome::Running && !all_reported {
            return exitcode::LAUNCH_FAILED;
        }
        self.code
    }

    fn settle(&mut self, outcome: Outcome, code: i32) {
        if self.outcome.yields_to(outcome) {
            self.outcome = outcome;
            self.code = code;
        }
    }

    /// Ends the job with `outcome` unless an earlier failure already decided it; terminates the
    /// ranks once.
    fn fail(&mut self, outcome: Outcome, code: i32, line: Option<String>) -> Decision {
        self.settle(outcome, code);
        let action = if self.terminating { Action::Nothing } else { Action::Terminate };
        self.terminating = true;
        Decision { line, action }
    }

    /// A rank failure that came after the job started ending, or after another rank's: nothing.
    fn rank_failure_counts(&self) -> bool {
        self.first_failed_rank.is_none() && !self.terminating
    }

    /// The launch failures after the first, said at the end: each line when there are few, else
    /// one line with their count and first names.
    pub fn closing_lines(&self) -> Vec<String> {
        let held = &self.launch_failed;
        if held.len() <= HELD_LAUNCH_LINES {
            return held.iter().map(|(_, line)| line.clone()).collect();
        }
        let named: Vec<&str> = held.iter().take(5).map(|(n, _)| n.as_str()).collect();
        let rest = if held.len() > named.len() { format!(" and {} more", held.len() - named.len()) } else { String::new() };
        vec![format!("rlaunch: cannot launch on {} more nodes either: {}{rest}", held.len(), named.join(", "))]
    }

    pub fn record(&mut self, failure: Failure, facts: &dyn Facts) -> Decision {
        let quiet = Decision { line: None, action: Action::Nothing };
        let running = facts.running();
        let others = if running > 0 { format!("; terminating {running} other rank{}", plural(running)) } else { String::new() };
        match failure {
            Failure::RankExit { rank, status } => {
                if status.is_success() || !self.rank_failure_counts() {
                    return quiet;
                }
                self.first_failed_rank = Some(rank);
                let cause = match status {
                    RankStatus::Exited(c) => format!("{} exited with status {c}", facts.rank_label(rank)),
                    RankStatus::Signaled(s) => format!("{} was killed by signal {s} ({})", facts.rank_label(rank), signal_name(s)),
                    RankStatus::SpawnFailed(errno) => format!(
                        "rank {rank} on {}: cannot start '{}': {}",
                        facts.rank_host(rank),
                        facts.rank_program(rank),
                        std::io::Error::from_raw_os_error(errno)
                    ),
                    RankStatus::NoWorkdir(errno) => format!(
                        "rank {rank} on {}: working directory '{}' is not usable there: {}",
                        facts.rank_host(rank),
                        facts.rank_dir(rank),
                        std::io::Error::from_raw_os_error(errno)
                    ),
                };
                self.fail(Outcome::RankFailed, status.exit_code(), Some(format!("rlaunch: {cause}{others}")))
            }
            Failure::Unfinalized { rank } => {
                if !self.rank_failure_counts() {
                    return quiet;
                }
                self.first_failed_rank = Some(rank);
                let line = format!(
                    "rlaunch: {} exited with status 0 after MPI_Init (PMI init) without MPI_Finalize (PMI finalize){others}",
                    facts.rank_label(rank)
                );
                self.fail(Outcome::RankFailed, PMI_FAILURE_EXIT, Some(line))
            }
            Failure::Abort { rank, code, message } => {
                if !self.rank_failure_counts() {
                    return quiet;
                }
                self.first_failed_rank = Some(rank);
                let text = if message.is_empty() { String::new() } else { format!(": {message}") };
                let line = format!("rlaunch: {} called abort with code {code}{text}", facts.rank_label(rank));
                self.fail(Outcome::RankFailed, abort_exit_code(code), Some(line))
            }
            Failure::ProtocolError { rank, node, message } => {
                if !self.rank_failure_counts() {
                    return quiet;
                }
                let who = match rank {
                    Some(r) => {
                        self.first_failed_rank = Some(r);
                        facts.rank_label(r)
                    }
                    None => format!("a process on {}", facts.node_name(node)),
                };
                let line = format!("rlaunch: PMI protocol error from {who}: {message}; terminating {running} ranks");
                self.fail(Outcome::RankFailed, PMI_FAILURE_EXIT, Some(line))
            }
            Failure::LaunchFailed { node, why } => {
                let name = facts.node_name(node);
                let line = format!("rlaunch: cannot launch on node {name}: {why}");
                if std::mem::replace(&mut self.launch_failure_said, true) {
                    self.launch_failed.push((name, line));
                    return self.fail(Outcome::LaunchFailed, exitcode::LAUNCH_FAILED, None);
                }
                self.fail(Outcome::LaunchFailed, exitcode::LAUNCH_FAILED, Some(line))
            }
            Failure::LinkLost { node, why, more } => {
                // After the job started ending, daemons going away is expected.
                if self.outcome != Outcome::Running {
                    return quiet;
                }
                let mut line = format!("rlaunch: lost contact with the daemon on node {} ({why})", facts.node_name(node));
                if !more.is_empty() {
                    // They cannot confirm their ranks ended: say which, so nobody waits for them.
                    let named: Vec<String> = more.iter().take(5).map(|&n| facts.node_name(n)).collect();
                    let rest = if more.len() > named.len() { format!(" and {} more", more.len() - named.len()) } else { String::new() };
                    line.push_str(&format!(
                        ", and through it with {} more node{} ({}{rest}), whose daemons end their ranks on their own",
                        more.len(),
                        plural(more.len()),
                        named.join(", ")
                    ));
                }
                if running > 0 && !self.terminating {
                    line.push_str(&format!("; terminating {running} ranks"));
                }
                self.fail(Outcome::LaunchFailed, exitcode::LAUNCH_FAILED, Some(line))
            }
            Failure::NodeFault { node, why } => {
                let line = format!("rlaunch: node {}: {why}", facts.node_name(node));
                self.fail(Outcome::LaunchFailed, exitcode::LAUNCH_FAILED, Some(line))
            }
            Failure::FenceError { message } => {
                let line = (!self.terminating).then(|| format!("rlaunch: {message}"));
                self.fail(Outcome::LaunchFailed, exitcode::LAUNCH_FAILED, line)
            }
            // Several nodes may refuse one request (placement): the first says it.
            Failure::Unsatisfiable { .. } if self.terminating => quiet,
            Failure::Unsatisfiable { message } => self.fail(Outcome::LaunchFailed, exitcode::USAGE, Some(format!("rlaunch: {message}"))),
            Failure::FabricError { message } => {
                self.fail(Outcome::LaunchFailed, exitcode::LAUNCH_FAILED, Some(format!("rlaunch: {message}")))
            }
            Failure::Timeout { after } => {
                if self.outcome != Outcome::Running {
                    return quiet;
                }
                let line =
                    format!("rlaunch: job timed out after {} (--timeout); killing {running} running rank{}", fmt_secs(after), plural(running));
                self.fail(Outcome::TimedOut, exitcode::TIMEOUT, Some(line))
            }
            Failure::SecondInterrupt => {
                self.settle(Outcome::Killed, INTERRUPTED_EXIT);
                self.terminating = true;
                Decision { line: Some(format!("rlaunch: second interrupt; killing all {running} running ranks")), action: Action::Kill }
            }
            // Nobody is left to read a line: the status says it.
            Failure::OutputClosed => self.fail(Outcome::OutputLost, OUTPUT_CLOSED_EXIT, None),
            Failure::Hangup => self.fail(Outcome::OutputLost, HANGUP_EXIT, None),
            Failure::OutputError { stream, error } => {
                let ranks = if running > 0 { format!("; terminating {running} rank{}", plural(running)) } else { String::new() };
                let line = format!("rlaunch: cannot write {stream}: {error}{ranks}");
                self.fail(Outcome::OutputLost, exitcode::LAUNCH_FAILED, Some(line))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ranks 0..size, rank r on node r / 2 ("n0", "n1", ...) with pid 100 + r.
    struct Job {
        running: usize,
    }

    impl Facts for Job {
        fn rank_label(&self, rank: u32) -> String {
            format!("rank {rank} (pid {} on {})", 100 + rank, self.rank_host(rank))
        }
        fn rank_host(&self, rank: u32) -> String {
            format!("n{}", rank / 2)
        }
        fn rank_program(&self, _rank: u32) -> String {
            "./app".into()
        }
        fn rank_dir(&self, _rank: u32) -> String {
            "/scratch/run".into()
        }
        fn node_name(&self, node: u32) -> String {
            format!("n{node}")
        }
        fn running(&self) -> usize {
            self.running
        }
    }

    fn job(running: usize) -> Job {
        Job { running }
    }

    fn exit(rank: u32, code: i32) -> Failure {
        Failure::RankExit { rank, status: RankStatus::Exited(code) }
    }

    #[test]
    fn print_all_exitcodes_lists_every_rank_in_order() {
        let st = [Some(RankStatus::Exited(0)), Some(RankStatus::Exited(3)), Some(RankStatus::Signaled(9)), Some(RankStatus::SpawnFailed(libc::ENOENT)), None];
        assert_eq!(
            all_exit_codes(st.into_iter(), &job(0)),
            [
                "rlaunch: rank 0 on n0: exit status 0",
                "rlaunch: rank 1 on n0: exit status 3",
                "rlaunch: rank 2 on n1: killed by signal 9 (SIGKILL), exit status 137",
                "rlaunch: rank 3 on n1: not started: No such file or directory (os error 2)",
                "rlaunch: rank 4 on n2: no exit status (its node was lost)",
            ]
        );
    }

    fn line(d: &Decision) -> &str {
        d.line.as_deref().unwrap_or("")
    }

    #[test]
    fn success_is_zero_and_prints_nothing() {
        let mut v = Verdict::default();
        let d = v.record(exit(0, 0), &job(3));
        assert_eq!(d, Decision { line: None, action: Action::Nothing });
        assert_eq!(v.exit_code(true), 0);
        assert_eq!(v.outcome().name(), "success");
    }

    #[test]
    fn first_failure_wins_with_its_status_and_one_line() {
        let mut v = Verdict::default();
        let d = v.record(exit(3, 7), &job(5));
        assert_eq!(line(&d), "rlaunch: rank 3 (pid 103 on n1) exited with status 7; terminating 5 other ranks");
        assert_eq!(d.action, Action::Terminate);
        // The others die of the SIGTERM rlaunch sent: no line, no new status.
        let d = v.record(Failure::RankExit { rank: 1, status: RankStatus::Signaled(libc::SIGTERM) }, &job(4));
        assert_eq!(d, Decision { line: None, action: Action::Nothing });
        let d = v.record(exit(2, 9), &job(3));
        assert_eq!(d.line, None);
        assert_eq!(v.exit_code(true), 7);
        assert_eq!(v.first_failed_rank(), Some(3));
        assert_eq!(v.outcome().name(), "rank-failed");
    }

    #[test]
    fn last_rank_failing_says_no_others() {
        let mut v = Verdict::default();
        let d = v.record(exit(0, 1), &job(1));
        assert_eq!(line(&d), "rlaunch: rank 0 (pid 100 on n0) exited with status 1; terminating 1 other rank");
        let mut v = Verdict::default();
        let d = v.record(exit(0, 1), &job(0));
        assert_eq!(line(&d), "rlaunch: rank 0 (pid 100 on n0) exited with status 1");
    }

    #[test]
    fn killed_by_signal_n_is_128_plus_n() {
        let mut v = Verdict::default();
        let d = v.record(Failure::RankExit { rank: 1, status: RankStatus::Signaled(11) }, &job(0));
        assert_eq!(line(&d), "rlaunch: rank 1 (pid 101 on n0) was killed by signal 11 (SIGSEGV)");
        assert_eq!(v.exit_code(true), 139);
    }

    #[test]
    fn a_program_that_cannot_start_is_a_usage_error() {
        let mut v = Verdict::default();
        let d = v.record(Failure::RankExit { rank: 4, status: RankStatus::SpawnFailed(libc::ENOENT) }, &job(0));
        assert_eq!(line(&d), "rlaunch: rank 4 on n2: cannot start './app': No such file or directory (os error 2)");
        assert_eq!(v.exit_code(true), exitcode::USAGE);
    }

    #[test]
    fn a_working_directory_missing_on_a_node_names_it_and_the_node() {
        let mut v = Verdict::default();
        let d = v.record(Failure::RankExit { rank: 4, status: RankStatus::NoWorkdir(libc::ENOENT) }, &job(0));
        assert_eq!(line(&d), "rlaunch: rank 4 on n2: working directory '/scratch/run' is not usable there: No such file or directory (os error 2)");
        assert_eq!(v.exit_code(true), exitcode::USAGE, "the status of a program that cannot start");
    }

    #[test]
    fn mpi_abort_ends_the_job_with_its_code() {
        let mut v = Verdict::default();
        let d = v.record(Failure::Abort { rank: 2, code: 7, message: "bad input".into() }, &job(3));
        assert_eq!(line(&d), "rlaunch: rank 2 (pid 102 on n1) called abort with code 7: bad input");
        assert_eq!(v.exit_code(true), 7);
        // The aborting rank's own exit afterwards changes nothing.
        assert_eq!(v.record(exit(2, 1), &job(2)).line, None);
        assert_eq!(v.exit_code(true), 7);
        for (code, status) in [(256, 1), (0, 1), (-1, 255), (300, 44)] {
            let mut v = Verdict::default();
            v.record(Failure::Abort { rank: 0, code, message: String::new() }, &job(0));
            assert_eq!(v.exit_code(true), status, "abort code {code}");
        }
        let mut v = Verdict::default();
        let d = v.record(Failure::Abort { rank: 0, code: 3, message: String::new() }, &job(0));
        assert_eq!(line(&d), "rlaunch: rank 0 (pid 100 on n0) called abort with code 3");
    }

    #[test]
    fn pmi_failures_are_status_1() {
        let mut v = Verdict::default();
        let d = v.record(Failure::Unfinalized { rank: 1 }, &job(2));
        assert_eq!(
            line(&d),
            "rlaunch: rank 1 (pid 101 on n0) exited with status 0 after MPI_Init (PMI init) without MPI_Finalize (PMI finalize); terminating 2 other ranks"
        );
        assert_eq!(v.exit_code(true), PMI_FAILURE_EXIT);
        let mut v = Verdict::default();
        let d = v.record(Failure::ProtocolError { rank: None, node: 3, message: "garbage".into() }, &job(4));
        assert_eq!(line(&d), "rlaunch: PMI protocol error from a process on n3: garbage; terminating 4 ranks");
        assert_eq!((v.exit_code(true), v.first_failed_rank()), (1, None));
        let mut v = Verdict::default();
        v.record(Failure::ProtocolError { rank: Some(5), node: 2, message: "x".into() }, &job(4));
        assert_eq!(v.first_failed_rank(), Some(5));
    }

    #[test]
    fn timeout_is_124_and_only_while_running() {
        let mut v = Verdict::default();
        let d = v.record(Failure::Timeout { after: Duration::from_secs(600) }, &job(4));
        assert_eq!(line(&d), "rlaunch: job timed out after 600 s (--timeout); killing 4 running ranks");
        assert_eq!(d.action, Action::Terminate);
        assert_eq!((v.exit_code(false), v.outcome().name()), (exitcode::TIMEOUT, "timeout"));
        let d = v.record(Failure::Timeout { after: Duration::from_millis(1500) }, &job(1));
        assert_eq!(d.line, None, "a job that is already ending does not time out again");
        let mut v = Verdict::default();
        v.record(exit(0, 3), &job(1));
        assert_eq!(v.record(Failure::Timeout { after: Duration::from_secs(1) }, &job(1)).line, None);
        assert_eq!(v.exit_code(true), 3);
        let mut v = Verdict::default();
        let d = v.record(Failure::Timeout { after: Duration::from_millis(1500) }, &job(1));
        assert_eq!(line(&d), "rlaunch: job timed out after 1.5 s (--timeout); killing 1 running rank");
    }

    #[test]
    fn launch_failures_are_125() {
        let mut v = Verdict::default();
        let d = v.record(Failure::LaunchFailed { node: 2, why: "no answer within 30 s (--launch-timeout)".into() }, &job(0));
        assert_eq!(line(&d), "rlaunch: cannot launch on node n2: no answer within 30 s (--launch-timeout)");
        assert_eq!((v.exit_code(false), v.outcome().name()), (exitcode::LAUNCH_FAILED, "launch-failed"));
        // The first decides, terminating once; the others' lines come at the end.
        let d = v.record(Failure::LaunchFailed { node: 3, why: "x".into() }, &job(0));
        assert_eq!((line(&d), d.action), ("", Action::Nothing));
        assert_eq!(v.closing_lines(), ["rlaunch: cannot launch on node n3: x"]);
        let mut v = Verdict::default();
        let d = v.record(Failure::NodeFault { node: 1, why: "fabric discovery failed".into() }, &job(2));
        assert_eq!(line(&d), "rlaunch: node n1: fabric discovery failed");
        assert_eq!(v.exit_code(true), 125);
        let mut v = Verdict::default();
        let d = v.record(Failure::FabricError { message: "fabric exchange: x".into() }, &job(2));
        assert_eq!((line(&d), v.exit_code(true)), ("rlaunch: fabric exchange: x", 125));
    }

    #[test]
    fn lost_links_name_the_node_and_what_went_with_it() {
        let mut v = Verdict::default();
        let d = v.record(Failure::LinkLost { node: 1, why: "connection closed".into(), more: vec![3, 4] }, &job(6));
        assert_eq!(
            line(&d),
            "rlaunch: lost contact with the daemon on node n1 (connection closed), and through it with 2 more nodes (n3, n4), whose daemons end their ranks on their own; terminating 6 ranks"
        );
        let mut v = Verdict::default();
        let d = v.record(Failure::LinkLost { node: 1, why: "x".into(), more: (2..9).collect() }, &job(0));
        assert_eq!(line(&d), "rlaunch: lost contact with the daemon on node n1 (x), and through it with 7 more nodes (n2, n3, n4, n5, n6 and 2 more), whose daemons end their ranks on their own");
        assert_eq!(v.exit_code(false), 125);
        // Once the job is ending, daemons leaving is no news.
        assert_eq!(v.record(Failure::LinkLost { node: 2, why: "x".into(), more: vec![] }, &job(0)).line, None);
        let mut v = Verdict::default();
        v.record(exit(0, 4), &job(1));
        assert_eq!(v.record(Failure::LinkLost { node: 0, why: "x".into(), more: vec![] }, &job(1)), Decision { line: None, action: Action::Nothing });
        assert_eq!(v.exit_code(true), 4);
    }

    #[test]
    fn a_request_the_nodes_cannot_meet_is_2() {
        let mut v = Verdict::default();
        let d = v.record(Failure::Unsatisfiable { message: "--nic ib9: node n1 has no NIC 'ib9'".into() }, &job(0));
        assert_eq!(line(&d), "rlaunch: --nic ib9: node n1 has no NIC 'ib9'");
        assert_eq!(v.exit_code(false), exitcode::USAGE);
        let d = v.record(Failure::Unsatisfiable { message: "node n2: PE=9 asks for 9 cores".into() }, &job(0));
        assert_eq!((d.line, d.action), (None, Action::Nothing), "a second node's refusal adds nothing");
    }

    #[test]
    fn fence_errors_print_only_before_the_job_ends() {
        let mut v = Verdict::default();
        let d = v.record(Failure::FenceError { message: "PMIx: x".into() }, &job(1));
        assert_eq!((line(&d), d.action), ("rlaunch: PMIx: x", Action::Terminate));
        assert_eq!(v.record(Failure::FenceError { message: "y".into() }, &job(1)).line, None);
        assert_eq!(v.exit_code(true), 125);
    }

    #[test]
    fn second_interrupt_kills_with_130_and_outranks_a_rank_failure() {
        let mut v = Verdict::default();
        let d = v.record(Failure::SecondInterrupt, &job(8));
        assert_eq!((line(&d), d.action), ("rlaunch: second interrupt; killing all 8 running ranks", Action::Kill));
        assert_eq!((v.exit_code(false), v.outcome().name()), (130, "killed"));
        let mut v = Verdict::default();
        v.record(exit(1, 2), &job(3));
        assert_eq!(v.record(Failure::SecondInterrupt, &job(3)).action, Action::Kill);
        assert_eq!(v.exit_code(true), 130);
        // It does not outrank a timeout or a launch failure.
        let mut v = Verdict::default();
        v.record(Failure::Timeout { after: Duration::from_secs(1) }, &job(3));
        v.record(Failure::SecondInterrupt, &job(3));
        assert_eq!(v.exit_code(false), 124);
        let mut v = Verdict::default();
        v.record(Failure::LaunchFailed { node: 0, why: "x".into() }, &job(0));
        v.record(Failure::SecondInterrupt, &job(0));
        assert_eq!(v.exit_code(false), 125);
        // And a rank failure after it changes nothing.
        let mut v = Verdict::default();
        v.record(Failure::SecondInterrupt, &job(2));
        assert_eq!(v.record(exit(0, 5), &job(1)).line, None);
        assert_eq!(v.exit_code(true), 130);
    }

    #[test]
    fn ranks_unaccounted_for_without_a_failure_are_125() {
        let v = Verdict::default();
        assert_eq!(v.exit_code(false), exitcode::LAUNCH_FAILED);
        assert_eq!(v.exit_code(true), 0);
    }

    #[test]
    fn a_closed_output_ends_the_job_like_a_pipeline_and_silently() {
        let mut v = Verdict::default();
        let d = v.record(Failure::OutputClosed, &job(4));
        assert_eq!(d, Decision { line: None, action: Action::Terminate });
        assert_eq!((v.exit_code(false), v.outcome().name()), (141, "output-lost"));
        // The ranks' deaths by SIGTERM that follow are consequences.
        assert_eq!(v.record(Failure::RankExit { rank: 0, status: RankStatus::Signaled(libc::SIGTERM) }, &job(3)).line, None);
        assert_eq!(v.exit_code(true), 141);
        let mut v = Verdict::default();
        assert_eq!(v.record(Failure::Hangup, &job(2)), Decision { line: None, action: Action::Terminate });
        assert_eq!(v.exit_code(true), 129);
        // A rank that failed first keeps its status; the job is not terminated twice.
        let mut v = Verdict::default();
        v.record(exit(1, 3), &job(2));
        assert_eq!(v.record(Failure::OutputClosed, &job(1)), Decision { line: None, action: Action::Nothing });
        assert_eq!(v.exit_code(true), 3);
    }

    #[test]
    fn an_output_write_error_is_125_with_one_line_naming_the_stream() {
        let mut v = Verdict::default();
        let error = "No space left on device (os error 28)".to_string();
        let d = v.record(Failure::OutputError { stream: "standard output".into(), error: error.clone() }, &job(2));
        assert_eq!(line(&d), "rlaunch: cannot write standard output: No space left on device (os error 28); terminating 2 ranks");
        assert_eq!(d.action, Action::Terminate);
        assert_eq!((v.exit_code(false), v.outcome().name()), (125, "output-lost"));
        let mut v = Verdict::default();
        let d = v.record(Failure::OutputError { stream: "out/rank.0.stdout".into(), error }, &job(0));
        assert_eq!(line(&d), "rlaunch: cannot write out/rank.0.stdout: No space left on device (os error 28)");
    }

    #[test]
    fn many_launch_failures_are_one_line_then_a_count() {
        let f = job(0);
        let mut v = Verdict::default();
        let fail = |v: &mut Verdict, node: u32| v.record(Failure::LaunchFailed { node, why: format!("bad {node}") }, &f).line;
        assert_eq!(fail(&mut v, 0).as_deref(), Some("rlaunch: cannot launch on node n0: bad 0"));
        assert_eq!(fail(&mut v, 1), None, "held to the end");
        assert_eq!(fail(&mut v, 2), None);
        assert_eq!(v.closing_lines(), ["rlaunch: cannot launch on node n1: bad 1", "rlaunch: cannot launch on node n2: bad 2"], "few: each line");
        for n in 3..32 {
            fail(&mut v, n);
        }
        assert_eq!(v.closing_lines(), ["rlaunch: cannot launch on 31 more nodes either: n1, n2, n3, n4, n5 and 26 more"]);
        assert_eq!(v.exit_code(true), exitcode::LAUNCH_FAILED);
    }
}
