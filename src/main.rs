//! rlaunch: the front end (`rlaunch [OPTIONS] PROGRAM ...`) and, in hidden mode, the per-node daemon
//! (`rlaunch __daemon`). Both are one binary so that a node needs only one file installed.
//!
//! This file only dispatches: the command line is parsed and resolved into a plan by [`cli`], the
//! plan is run by [`frontend`], and errors become exit codes here.

mod binding;
mod claim;
mod cli;
mod daemon;
mod exitcode;
mod fabric;
mod fence;
mod heartbeat;
mod frontend;
mod images;
mod job;
mod link;
mod links;
mod output;
mod plan;
mod proctree;
mod pmi;
mod pmix;
mod sig;
mod spec;
mod startup_rdma;
mod timeline;
mod token;
mod tree;
mod wire;

use anyhow::Result;
use std::time::Instant;

fn main() {
    let t0 = Instant::now();
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if args.first().is_some_and(|a| a == "__daemon") {
        daemon::main(t0);
    }
    let code = match front_end(args, t0) {
        Ok(code) => code,
        Err(e) => match e.downcast_ref::<cli::UsageError>() {
            Some(cli::UsageError::Display(text)) => {
                frontend::print(text);
                exitcode::SUCCESS
            }
            Some(cli::UsageError::Msg(m)) => {
                frontend::say(&format!("rlaunch: {m}"));
                exitcode::USAGE
            }
            None => {
                frontend::say(&format!("rlaunch: {e:#}"));
                exitcode::LAUNCH_FAILED
            }
        },
    };
    std::process::exit(code);
}

fn front_end(args: Vec<std::ffi::OsString>, t0: Instant) -> Result<i32> {
    let args = cli::to_strings(args)?;
    let cwd = std::env::current_dir()?;
    let args = cli::expand_context_files(&args, &cwd)?;
    let args = cli::expand_tune(&args, &cwd)?;
    let parsed = cli::parse(&args)?;
    if let Some(what) = parsed.global.generate {
        cli::generate(what, &mut std::io::stdout().lock())?;
        return Ok(exitcode::SUCCESS);
    }
    let plan = cli::resolve(&parsed, &cli::Env::current(t0)?)?;
    for warning in &plan.warnings {
        frontend::say(&format!("rlaunch: {warning}"));
    }
    if plan.verbose > 0 {
        for note in &plan.notes {
            frontend::say(&format!("rlaunch: {note}"));
        }
    }
    if plan.dry_run {
        frontend::print(&cli::describe(&plan));
        return Ok(exitcode::SUCCESS);
    }
    match plan.report_pid.as_deref() {
        Some("-") => frontend::print(&format!("{}\n", std::process::id())),
        Some("+") => frontend::say(&std::process::id().to_string()),
        Some(file) => std::fs::write(file, format!("{}\n", std::process::id())).map_err(|e| cli::UsageError::Msg(format!("--report-pid {file}: cannot write it: {e}")))?,
        None => {}
    }
    if plan.display_map {
        print!("{}", cli::describe(&plan));
    }
    if plan.verbose > 0 {
        frontend::say(&format!("rlaunch: ranks get {} ({})", plan.launch.pmi.interface, plan.mpi_reason));
    }
    frontend::run(plan)
}
