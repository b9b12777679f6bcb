//! rlaunch: the front end (`rlaunch [OPTIONS] PROGRAM ...`) and, in hidden mode, the per-node daemon
//! (`rlaunch __daemon`). Both are one binary so that a node needs only one file installed.

mod cli;
mod daemon;
mod exitcode;
mod frontend;
mod link;
mod output;
mod sig;
mod tree;
mod wire;

use anyhow::{Context, Result};
use launchers::map::{MapBy, MapPolicy, ProcMap, RankBy};
use launchers::nodes::Node;
use std::time::{Duration, Instant};

fn main() {
    let t0 = Instant::now();
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if args.first().is_some_and(|a| a == "__daemon") {
        daemon::main();
    }
    let code = match front_end(args, t0) {
        Ok(code) => code,
        Err(e) => match e.downcast_ref::<cli::UsageError>() {
            Some(cli::UsageError::Display(text)) => {
                print!("{text}");
                exitcode::SUCCESS
            }
            Some(cli::UsageError::Msg(m)) => {
                eprintln!("rlaunch: {m}");
                exitcode::USAGE
            }
            None => {
                eprintln!("rlaunch: {e:#}");
                exitcode::LAUNCH_FAILED
            }
        },
    };
    std::process::exit(code);
}

fn front_end(args: Vec<std::ffi::OsString>, t0: Instant) -> Result<i32> {
    let args = cli::to_strings(args)?;
    let parsed = cli::parse(&args)?;
    let g = &parsed.global;
    if let Some(what) = &g.generate {
        cli::generate(what, &mut std::io::stdout().lock())?;
        return Ok(exitcode::SUCCESS);
    }
    let stdin = cli::parse_stdin(&g.stdin)?;
    let timeout = match g.timeout {
        Some(t) if !(t.is_finite() && t > 0.0) => {
            return Err(cli::UsageError::Msg(format!("--timeout {t}: expected a positive number of seconds")).into())
        }
        Some(t) => Some(Duration::from_secs_f64(t)),
        None => None,
    };
    let cwd = std::env::current_dir().context("reading the current directory")?;
    let lookup = |k: &str| std::env::var(k).ok();
    let apps = cli::app_contexts(&parsed, &cwd, &lookup)?;

    // Where the ranks run. One implicit local node: its slots are its CPUs, and asking for more is
    // allowed, as on a laptop.
    let cpus = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
    let nodes = vec![Node { name: daemon::hostname(), user: None, slots: cpus, max_slots: None }];
    let policy = MapPolicy { map_by: MapBy::Slot, rank_by: RankBy::Slot, oversubscribe: true };
    let local_only = true;

    if local_only {
        for a in &apps {
            let path = a.env.iter().find(|(k, _)| k == "PATH").and_then(|(_, v)| v.clone()).or_else(|| lookup("PATH"));
            cli::check_program(&a.argv[0], std::path::Path::new(&a.cwd), path.as_deref())?;
        }
    }
    if let Some(dir) = &g.output_dir {
        cli::check_output_dir(dir)?;
    }
    let slots: Vec<(u32, Option<u32>)> = nodes.iter().map(|n| (n.slots, n.max_slots)).collect();
    let np: Vec<Option<u32>> = apps.iter().map(|a| a.np).collect();
    let map = launchers::map::compute_map(&slots, &np, &policy).map_err(|e| cli::UsageError::Msg(e.to_string()))?;
    if let wire::StdinTarget::Rank(r) = stdin {
        if r >= map.size() {
            return Err(cli::UsageError::Msg(format!("--stdin {r}: the job has only {} ranks (0-{})", map.size(), map.size() - 1)).into());
        }
    }
    if g.dry_run {
        print!("{}", describe_map(&map, &nodes, &apps));
        return Ok(exitcode::SUCCESS);
    }
    let job_id = format!("rl-{}", &wire::hex(&wire::random_key()?)[..8]);
    let launch = wire::Launch {
        job_id: job_id.clone(),
        apps,
        nodes: nodes
            .iter()
            .map(|n| wire::NodeEntry { name: n.name.clone(), user: n.user.clone(), slots: n.slots, max_slots: n.max_slots })
            .collect(),
        policy,
        fanout: 32,
        stdin,
        kill_grace_ms: 2000,
    };
    let daemon_path = std::env::current_exe().context("finding rlaunch's own path")?.to_string_lossy().into_owned();
    let plan = frontend::Plan {
        job_id,
        launch,
        nodes,
        map,
        starter: launchers::start::Starter::Local,
        daemon_path,
        timeout,
        launch_timeout: Duration::from_secs(30),
        tag_output: g.tag_output,
        output_dir: g.output_dir.clone(),
        report: g.report.clone(),
        verbose: g.verbose,
        loopback: local_only,
        command_line: args.clone(),
        t0,
    };
    frontend::run(plan)
}

/// Compact rank ranges: [0,1,2,5,7,8] -> "0-2,5,7-8".
fn fmt_ranges(ranks: &[u32]) -> String {
    let mut out = Vec::new();
    let mut i = 0;
    while i < ranks.len() {
        let start = ranks[i];
        let mut end = start;
        while i + 1 < ranks.len() && ranks[i + 1] == end + 1 {
            i += 1;
            end = ranks[i];
        }
        out.push(if start == end { start.to_string() } else { format!("{start}-{end}") });
        i += 1;
    }
    out.join(",")
}

/// The `--dry-run` text: one line per node.
fn describe_map(map: &ProcMap, nodes: &[Node], apps: &[wire::AppContext]) -> String {
    let mut s = format!(
        "rlaunch: {} rank{} on {} node{}\n",
        map.size(),
        if map.size() == 1 { "" } else { "s" },
        nodes.len(),
        if nodes.len() == 1 { "" } else { "s" }
    );
    for (i, n) in nodes.iter().enumerate() {
        let ranks = map.ranks_on(i as u32);
        let mut parts = Vec::new();
        for (a, app) in apps.iter().enumerate() {
            let mine: Vec<u32> = ranks.iter().copied().filter(|&r| map.rank(r).app == a as u32).collect();
            if !mine.is_empty() {
                parts.push(format!("ranks {} {}", fmt_ranges(&mine), app.argv.join(" ")));
            }
        }
        if parts.is_empty() {
            parts.push("no ranks".into());
        }
        s.push_str(&format!("node {i} {} (slots {}): {}\n", n.name, n.slots, parts.join("; ")));
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn ranges() {
        assert_eq!(super::fmt_ranges(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
        assert_eq!(super::fmt_ranges(&[]), "");
    }
}
