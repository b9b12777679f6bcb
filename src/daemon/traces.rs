//! Open MPI's `--get-stack-traces`: when the front end asks (the job's `--timeout` expired), the
//! stack of every rank still running here, each taken by a debugger on a thread of its own
//! (attaching and reading symbols can take seconds), sent up, then `TracesDone`.

use super::effect::Effect;
use crate::wire::Msg;
use launchers::start::Notify;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;

#[derive(Default)]
pub struct Traces {
    rx: Option<mpsc::Receiver<Msg>>,
    pending: usize,
}

impl Traces {
    /// Relays the request to `children` and starts one tracer per live `(rank, pid)`.
    pub fn start(&mut self, node: u32, live: Vec<(u32, u32)>, children: Vec<u32>, notify: &Notify) -> Vec<Effect> {
        let mut fx = vec![Effect::DownTo(children, Msg::StackTraces)];
        if self.rx.is_some() {
            return fx;
        }
        let (tx, rx) = mpsc::channel();
        self.pending = live.len();
        self.rx = Some(rx);
        for (rank, pid) in live {
            let (tx, notify) = (tx.clone(), notify.clone());
            std::thread::spawn(move || {
                let _ = tx.send(Msg::StackTrace { rank, pid, text: stack_of(pid) });
                notify();
            });
        }
        if self.pending == 0 {
            fx.push(Effect::Up(Msg::TracesDone { node }));
        }
        fx
    }

    /// The stacks taken since the last call, and `TracesDone` after the last one.
    pub fn drain(&mut self, node: u32) -> Vec<Effect> {
        let Some(rx) = &self.rx else { return Vec::new() };
        let mut fx: Vec<Effect> = rx.try_iter().map(Effect::Up).collect();
        if !fx.is_empty() {
            self.pending = self.pending.saturating_sub(fx.len());
            if self.pending == 0 {
                fx.push(Effect::Up(Msg::TracesDone { node }));
            }
        }
        fx
    }
}

/// The first tracer found on PATH: elfutils' eu-stack (fast), else gdb.
fn tracer(pid: u32) -> Option<Command> {
    let found = |name: &str| std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| Path::new(&d).join(name).is_file()));
    let pid = pid.to_string();
    if found("eu-stack") {
        let mut c = Command::new("eu-stack");
        c.args(["-p", &pid]);
        Some(c)
    } else if found("gdb") {
        let mut c = Command::new("gdb");
        c.args(["-batch", "-nx", "-q", "-p", &pid, "-ex", "thread apply all bt"]);
        Some(c)
    } else {
        None
    }
}

fn stack_of(pid: u32) -> String {
    let Some(mut cmd) = tracer(pid) else {
        return "no stack: neither eu-stack (elfutils) nor gdb is installed on this node".into();
    };
    let mut child = match cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn() {
        Ok(c) => c,
        Err(e) => return format!("no stack: running the tracer: {e}"),
    };
    // Read to EOF rather than wait: the daemon reaps every child of its own (its subreaper sweep),
    // so the tracer's exit status may be gone before this thread could ask for it.
    let mut err = child.stderr.take().expect("piped");
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let mut text = String::new();
    let _ = child.stdout.take().expect("piped").read_to_string(&mut text);
    let err = err.join().unwrap_or_default();
    let _ = child.wait();
    // gdb's chatter about attaching and detaching is not the stack.
    let chatter = ["[Inferior", "[Thread debugging", "Using host libthread_db"];
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty() && !chatter.iter().any(|c| l.starts_with(c))).collect();
    match lines.is_empty() {
        true => format!("no stack: {}", err.lines().last().unwrap_or("the tracer printed nothing")),
        false => lines.join("\n"),
    }
}
