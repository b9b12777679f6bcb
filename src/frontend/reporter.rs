//! Everything the user sees from the front end goes through here: rlaunch's own lines on stderr,
//! the ranks' output (tagged, or into `--output-dir` files), what daemons print after they
//! joined, the launch progress line, `--inventory` text and the `--report` file. Nothing else in
//! the front end prints.

use crate::output::tag_lines;
use crate::wire::Stream;
use std::collections::HashMap;
use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Launches shorter than this never show a progress line.
const PROGRESS_AFTER: Duration = Duration::from_secs(1);

/// How the ranks' output is shown.
pub struct OutputStyle {
    /// `--tag-output`: every line starts with `[rank] `.
    pub tag: bool,
    /// `--output-dir`: `rank.N.stdout` / `rank.N.stderr` there instead of the terminal.
    pub dir: Option<PathBuf>,
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

pub fn output_file_name(rank: u32, stream: Stream) -> String {
    match stream {
        Stream::Stdout => format!("rank.{rank}.stdout"),
        Stream::Stderr => format!("rank.{rank}.stderr"),
    }
}

impl Reporter {
    pub fn new(style: OutputStyle) -> Reporter {
        Reporter { style, files: HashMap::new(), stdout_broken: false, bar: None, progress_done: false }
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

    /// Whole lines of one rank's stream.
    pub fn output(&mut self, rank: u32, stream: Stream, data: &[u8]) {
        if let Some(dir) = &self.style.dir {
            let path = dir.join(output_file_name(rank, stream));
            let file = match self.files.entry((rank, stream)) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    match std::fs::OpenOptions::new().append(true).create(true).open(&path) {
                        Ok(f) => v.insert(f),
                        Err(e) => {
                            self.line(&format!("rlaunch: cannot write {}: {e}", path.display()));
                            return;
                        }
                    }
                }
            };
            let _ = file.write_all(data);
            return;
        }
        let bytes = if self.style.tag { tag_lines(format!("[{rank}] ").as_bytes(), data) } else { data.to_vec() };
        // The progress line lives on stderr: take it off the screen while job output is written.
        match self.bar.clone() {
            Some(pb) => pb.suspend(|| self.write_stream(stream, &bytes)),
            None => self.write_stream(stream, &bytes),
        }
    }

    /// What a daemon writes to its stderr after it joined, passed through as it comes.
    pub fn daemon_stderr(&mut self, bytes: &[u8]) {
        self.write_stream(Stream::Stderr, bytes);
    }

    /// `--inventory`'s table or JSON.
    pub fn inventory(&mut self, text: &str) {
        self.write_stream(Stream::Stdout, text.as_bytes());
    }

    fn write_stream(&mut self, stream: Stream, bytes: &[u8]) {
        match stream {
            Stream::Stdout => {
                if self.stdout_broken {
                    return;
                }
                let mut out = io::stdout().lock();
                if out.write_all(bytes).and_then(|_| out.flush()).is_err() {
                    // A closed pipe (`| head`) must not take the job down; output is dropped.
                    self.stdout_broken = true;
                }
            }
            Stream::Stderr => {
                let _ = io::stderr().lock().write_all(bytes);
            }
        }
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
        let style = OutputStyle { tag: true, dir: Some(dir.clone()), quiet: true, verbose: 0 };
        let mut r = Reporter::new(style);
        r.output(3, Stream::Stdout, b"a\n");
        r.output(3, Stream::Stderr, b"e\n");
        r.output(3, Stream::Stdout, b"b\n");
        // Files hold the rank's bytes: no tag, whatever --tag-output says.
        assert_eq!(std::fs::read(dir.join("rank.3.stdout")).unwrap(), b"a\nb\n");
        assert_eq!(std::fs::read(dir.join("rank.3.stderr")).unwrap(), b"e\n");
        assert_eq!(output_file_name(0, Stream::Stderr), "rank.0.stderr");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn no_progress_line_is_due_when_quiet_or_once_launched() {
        let t0 = Instant::now();
        let quiet = Reporter::new(OutputStyle { tag: false, dir: None, quiet: true, verbose: 0 });
        assert_eq!(quiet.progress_due(t0), None);
        let mut r = Reporter::new(OutputStyle { tag: false, dir: None, quiet: false, verbose: 0 });
        assert_eq!(r.progress_due(t0), Some(t0 + PROGRESS_AFTER));
        r.progress(Progress::default(), true, t0);
        assert_eq!(r.progress_due(t0), None);
    }
}
