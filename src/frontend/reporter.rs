//! Everything the user sees from the front end goes through here: rlaunch's own lines on stderr,
//! the ranks' output (tagged, or into `--output-dir` files), what daemons print after they
//! joined, the launch progress line, `--inventory` text and the `--report` file. Nothing else in
//! the front end prints.

use crate::output::{tag_lines, LineBuffer, OutputFiles};
use crate::wire::Stream;
use super::verdict::Failure;
use std::collections::{HashMap, HashSet};
use std::io::{self, IsTerminal, Write};
use std::time::{Duration, Instant};

/// Launches shorter than this never show a progress line.
const PROGRESS_AFTER: Duration = Duration::from_secs(1);

/// How the ranks' output is shown.
pub struct OutputStyle {
    /// `--tag-output`: every line starts with `[rank] `.
    pub tag: bool,
    /// Hydra's `-prepend-pattern`: each rank's own line prefix instead of `[rank] ` (with `tag`).
    pub prefixes: Option<Vec<String>>,
    /// `--output-dir`, `--output-filename`, `-outfile-pattern`/`-errfile-pattern`: files instead
    /// of (or besides) the terminal.
    pub files: Option<OutputFiles>,
    /// `--merge-stderr-to-stdout`: a rank's stderr goes where its stdout goes.
    pub merge_stderr: bool,
    /// `--timestamp-output`: each line on the terminal starts with the local time.
    pub timestamp: bool,
    /// `--quiet`: never a progress line.
    pub quiet: bool,
    /// `-v` count.
    pub verbose: u8,
}

/// Counts the progress line shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub total_nodes: usize,
    pub started: usize,
    pub connected: usize,
    pub ranks: usize,
    pub running: usize,
}

pub struct Reporter {
    style: OutputStyle,
    files: HashMap<(u32, Stream), std::fs::File>,
    stdout_broken: bool,
    stderr_broken: bool,
    /// `--output-dir` files whose write failed.
    broken_files: HashSet<(u32, Stream)>,
    /// Tagged output: each rank stream's partial line.
    held: HashMap<(u32, Stream), LineBuffer>,
    bar: Option<indicatif::ProgressBar>,
    progress_done: bool,
}

/// One of rlaunch's own lines on stderr, also before any job exists (usage errors, `-v`).
pub fn say(text: &str) {
    let _ = writeln!(io::stderr().lock(), "{text}");
}

/// What rlaunch prints on stdout when it runs no job (`--dry-run`, `--help`).
pub fn print(text: &str) {
    let mut out = io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|_| out.flush());
}

fn write_flushed(out: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    out.write_all(bytes)?;
    out.flush()
}

/// A failed write to rlaunch's stdout or stderr: a closed pipe ends the job like a pipeline
/// member, anything else (ENOSPC, EIO) is said.
fn write_failure(stream: &str, e: &io::Error) -> Failure {
    match e.raw_os_error() {
        Some(libc::EPIPE) => Failure::OutputClosed,
        _ => Failure::OutputError { stream: stream.to_string(), error: e.to_string() },
    }
}

impl Reporter {
    pub fn new(style: OutputStyle) -> Reporter {
        Reporter {
            style,
            files: HashMap::new(),
            stdout_broken: false,
            stderr_broken: false,
            broken_files: HashSet::new(),
            held: HashMap::new(),
            bar: None,
            progress_done: false,
        }
    }

    /// One of rlaunch's own lines (already starting with "rlaunch: ").
    pub fn line(&mut self, text: &str) {
        match &self.bar {
            Some(pb) => pb.suspend(|| say(text)),
            None => say(text),
        }
    }

    /// A line shown only at verbosity `level` (`-v` = 1) or above.
    pub fn detail(&mut self, level: u8, text: &str) {
        if self.style.verbose >= level {
            self.line(text);
        }
    }

    /// A rank's output as its daemon forwards it: whole lines, or a piece of a line at its end or
    /// past the 1 MiB bound. A write that fails comes back as the failure that ends the job (the
    /// loop records it); that stream or file is not written again.
    pub fn output(&mut self, rank: u32, stream: Stream, data: &[u8]) -> Option<Failure> {
        let stream = if self.style.merge_stderr { Stream::Stdout } else { stream };
        let key = (rank, stream);
        let path = self.style.files.as_ref().and_then(|f| f.path(rank, stream));
        // Files hold the rank's bytes exactly, whatever --tag-output says.
        let failure = path.and_then(|p| self.write_file(&p, key, data));
        if !self.style.files.as_ref().map_or(true, |f| f.on_terminal(stream)) {
            return failure;
        }
        let bytes = if self.style.tag || self.style.timestamp {
            // A tag starts each line: a partial line waits here for the rest of it.
            let lines = self.held.entry(key).or_default().push(data);
            tag_lines(&self.prefix(rank), &lines)
        } else {
            // Untagged: the bytes as the rank wrote them.
            data.to_vec()
        };
        failure.or_else(|| self.deliver(stream, &bytes))
    }

    fn write_file(&mut self, path: &std::path::Path, key: (u32, Stream), data: &[u8]) -> Option<Failure> {
        if self.broken_files.contains(&key) || data.is_empty() {
            return None;
        }
        let file = match self.files.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => Ok(e.into_mut()),
            std::collections::hash_map::Entry::Vacant(v) => path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|_| std::fs::OpenOptions::new().append(true).create(true).open(path))
                .map(|f| v.insert(f)),
        };
        let error = match file.and_then(|f| f.write_all(data)) {
            Ok(()) => return None,
            Err(e) => e,
        };
        self.files.remove(&key);
        self.broken_files.insert(key);
        Some(Failure::OutputError { stream: path.display().to_string(), error: error.to_string() })
    }

    /// What starts each line on the terminal: `--timestamp-output`'s local time (as ctime(3)
    /// writes it) and `-l`'s `[rank] `.
    fn prefix(&self, rank: u32) -> Vec<u8> {
        let mut p = if self.style.timestamp { format!("{} ", crate::output::ctime_now()) } else { String::new() };
        match self.style.prefixes.as_ref().and_then(|v| v.get(rank as usize)) {
            Some(own) if self.style.tag => p.push_str(own),
            _ if self.style.tag => p.push_str(&format!("[{rank}] ")),
            _ => {}
        }
        p.into_bytes()
    }

    /// A rank ended: the end of its output. Only tagged output adds newlines: a tagged last line
    /// without one gets one (so the next tag starts a line), as does each tagged piece of a line
    /// longer than the 1 MiB bound. Untagged output and `--output-dir` files are byte-exact.
    pub fn rank_done(&mut self, rank: u32) -> Option<Failure> {
        let mut failure = None;
        for stream in [Stream::Stdout, Stream::Stderr] {
            let rest = match self.held.remove(&(rank, stream)) {
                Some(mut lines) => tag_lines(&self.prefix(rank), &lines.finish()),
                None => continue,
            };
            failure = failure.or(self.deliver(stream, &rest));
        }
        failure
    }

    /// At the end of the job, the end of every rank's output that did not get its [`Reporter::rank_done`].
    pub fn end_output(&mut self) -> Option<Failure> {
        let ranks: HashSet<u32> = self.held.keys().map(|&(r, _)| r).collect();
        ranks.into_iter().fold(None, |f, r| f.or(self.rank_done(r)))
    }

    fn deliver(&mut self, stream: Stream, bytes: &[u8]) -> Option<Failure> {
        if bytes.is_empty() {
            return None;
        }
        // The progress line lives on stderr: take it off the screen while job output is written.
        match self.bar.clone() {
            Some(pb) => pb.suspend(|| self.write_stream(stream, bytes)),
            None => self.write_stream(stream, bytes),
        }
    }

    /// What a daemon writes to its stderr after it joined, passed through as it comes. rlaunch's
    /// own diagnostics: a failure to show them does not end the job.
    pub fn daemon_stderr(&mut self, bytes: &[u8]) {
        let _ = self.write_stream(Stream::Stderr, bytes);
    }

    /// `--inventory`'s table or JSON.
    pub fn inventory(&mut self, text: &str) -> Option<Failure> {
        self.write_stream(Stream::Stdout, text.as_bytes())
    }

    /// Writes to rlaunch's stdout or stderr. The first error on a stream is returned as a
    /// failure (a closed pipe as [`Failure::OutputClosed`]) and the stream is written no more.
    fn write_stream(&mut self, stream: Stream, bytes: &[u8]) -> Option<Failure> {
        let (broken, name) = match stream {
            Stream::Stdout => (&mut self.stdout_broken, "standard output"),
            Stream::Stderr => (&mut self.stderr_broken, "standard error"),
        };
        if *broken {
            return None;
        }
        let result = match stream {
            Stream::Stdout => write_flushed(&mut io::stdout().lock(), bytes),
            Stream::Stderr => write_flushed(&mut io::stderr().lock(), bytes),
        };
        let e = result.err()?;
        *broken = true;
        Some(write_failure(name, &e))
    }

    /// Launch progress on a terminal, for launches that take more than about a second; gone once
    /// every rank runs (`launched`), and never shown with --quiet or when stderr is not a terminal.
    pub fn progress(&mut self, p: Progress, launched: bool, since: Instant) {
        if self.progress_done {
            return;
        }
        if launched {
            self.progress_done = true;
            self.clear_progress();
            return;
        }
        if self.bar.is_none() {
            if self.style.quiet || since.elapsed() < PROGRESS_AFTER || !io::stderr().is_terminal() {
                return;
            }
            let pb = indicatif::ProgressBar::new_spinner();
            pb.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            pb.enable_steady_tick(Duration::from_millis(120));
            self.bar = Some(pb);
        }
        if let Some(pb) = &self.bar {
            pb.set_message(format!(
                "rlaunch: daemons started {}/{t}, connected {}/{t}, ranks running {}/{}",
                p.started,
                p.connected,
                p.running,
                p.ranks,
                t = p.total_nodes
            ));
        }
    }

    /// When the progress line may have to appear, if it has not been decided yet: the loop wakes
    /// then even if nothing else happens.
    pub fn progress_due(&self, since: Instant) -> Option<Instant> {
        (!self.progress_done && self.bar.is_none() && !self.style.quiet).then_some(since + PROGRESS_AFTER).filter(|&t| t > Instant::now())
    }

    pub fn clear_progress(&mut self) {
        if let Some(pb) = self.bar.take() {
            pb.finish_and_clear();
        }
    }

    /// `--report FILE`.
    pub fn write_report(&mut self, path: &std::path::Path, json: &str) {
        if let Err(e) = std::fs::write(path, json) {
            self.line(&format!("rlaunch: cannot write the report {}: {e}", path.display()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_dir_gets_each_ranks_streams_in_their_own_files_appended_in_order() {
        let dir = std::env::temp_dir().join(format!("rlaunch-reporter-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let style = OutputStyle { tag: true, prefixes: None, files: Some(OutputFiles::Dir(dir.clone())), merge_stderr: false, timestamp: false, quiet: true, verbose: 0 };
        let mut r = Reporter::new(style);
        r.output(3, Stream::Stdout, b"a\n");
        r.output(3, Stream::Stderr, b"e\n");
        r.output(3, Stream::Stdout, b"b\n");
        // Files hold the rank's bytes: no tag, whatever --tag-output says.
        assert_eq!(std::fs::read(dir.join("rank.3.stdout")).unwrap(), b"a\nb\n");
        assert_eq!(std::fs::read(dir.join("rank.3.stderr")).unwrap(), b"e\n");
        std::fs::remove_dir_all(&dir).unwrap();
        // --merge-stderr-to-stdout: stderr goes to the stdout file.
        let style = OutputStyle { tag: false, prefixes: None, files: Some(OutputFiles::Dir(dir.clone())), merge_stderr: true, timestamp: false, quiet: true, verbose: 0 };
        let mut r = Reporter::new(style);
        r.output(1, Stream::Stdout, b"a\n");
        r.output(1, Stream::Stderr, b"e");
        assert_eq!(std::fs::read(dir.join("rank.1.stdout")).unwrap(), b"a\ne");
        assert!(!dir.join("rank.1.stderr").exists());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn no_progress_line_is_due_when_quiet_or_once_launched() {
        let t0 = Instant::now();
        let quiet = Reporter::new(OutputStyle { tag: false, prefixes: None, files: None, merge_stderr: false, timestamp: false, quiet: true, verbose: 0 });
        assert_eq!(quiet.progress_due(t0), None);
        let mut r = Reporter::new(OutputStyle { tag: false, prefixes: None, files: None, merge_stderr: false, timestamp: false, quiet: false, verbose: 0 });
        assert_eq!(r.progress_due(t0), Some(t0 + PROGRESS_AFTER));
        r.progress(Progress::default(), true, t0);
        assert_eq!(r.progress_due(t0), None);
    }
}
