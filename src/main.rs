//! rlaunch: the front end (`rlaunch [OPTIONS] PROGRAM ...`) and, in hidden mode, the per-node daemon
//! (`rlaunch __daemon`). Both are one binary so that a node needs only one file installed.

mod claim;
mod cli;
mod daemon;
mod exitcode;
mod fabric;
mod fence;
mod frontend;
mod job;
mod link;
mod links;
mod output;
mod pmi;
mod pmix;
mod sig;
mod spec;
mod token;
mod tree;
mod wire;

use anyhow::{Context, Result};
use launchers::map::{MapBy, ProcMap, RankBy};
use launchers::nodes::Node;
use launchers::start::{NodeStarter, Starter};
use std::time::{Duration, Instant};

fn main() {
    let t0 = Instant::now();
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if args.first().is_some_and(|a| a == "__guard") {
        daemon::guard_main();
    }
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
    let fabric_spec = fabric::spec_from_flags(&g.fabric, g.nic.as_deref(), g.nic_env, g.inventory, g.json).map_err(cli::UsageError::Msg)?;
    // --inventory starts no rank: nothing reads stdin.
    let stdin = if g.inventory { spec::StdinTarget::None } else { cli::parse_stdin(&g.stdin)? };
    if !(g.launch_timeout.is_finite() && g.launch_timeout > 0.0) {
        return Err(cli::UsageError::Msg(format!("--launch-timeout {}: expected a positive number of seconds", g.launch_timeout)).into());
    }
    let launch_timeout = Duration::from_secs_f64(g.launch_timeout);
    if g.fanout == 0 {
        return Err(cli::UsageError::Msg("--fanout 0: the fan-out must be at least 1".into()).into());
    }
    let timeout = match g.timeout {
        Some(t) if !(t.is_finite() && t > 0.0) => {
            return Err(cli::UsageError::Msg(format!("--timeout {t}: expected a positive number of seconds")).into())
        }
        Some(t) => Some(Duration::from_secs_f64(t)),
        None => None,
    };
    let cwd = std::env::current_dir().context("reading the current directory")?;
    let lookup = |k: &str| std::env::var(k).ok();
    let apps = if g.inventory { fabric::inventory_apps(&cwd) } else { cli::app_contexts(&parsed, &cwd, &lookup)? };

    let nodes_plan = resolve_nodes(g)?;
    let nodes = nodes_plan.nodes;
    let policy = nodes_plan.policy;
    let local_only = nodes_plan.local;
    if local_only {
        for a in &apps {
            let path = a.env.iter().find(|(k, _)| k == "PATH").and_then(|(_, v)| v.clone()).or_else(|| lookup("PATH"));
            cli::check_program(&a.argv[0], std::path::Path::new(&a.cwd), path.as_deref())?;
        }
    }
    if let Some(dir) = &g.output_dir {
        cli::check_output_dir(dir)?;
    }
    let np: Vec<Option<u32>> = apps.iter().map(|a| a.np).collect();
    let map = launchers::map::compute_map_for_nodes(&nodes, &np, &policy).map_err(|e| cli::UsageError::Msg(e.to_string()))?;
    if let spec::StdinTarget::Rank(r) = stdin {
        if r >= map.size() {
            return Err(cli::UsageError::Msg(format!("--stdin {r}: the job has only {} ranks (0-{})", map.size(), map.size() - 1)).into());
        }
    }
    if g.dry_run {
        print!("{}", describe_map(&map, &nodes, &apps));
        return Ok(exitcode::SUCCESS);
    }
    let mpi_flag: pmix::MpiFlag = g.mpi.parse().map_err(cli::UsageError::Msg)?;
    let path_env = lookup("PATH");
    let programs: Vec<pmix::AppProgram> = apps
        .iter()
        .map(|a| pmix::AppProgram {
            program: &a.argv[0],
            cwd: std::path::Path::new(&a.cwd),
            path: a.env.iter().find(|(k, _)| k == "PATH").and_then(|(_, v)| v.as_deref()).or(path_env.as_deref()),
        })
        .collect();
    let (interface, why) = pmix::choose(mpi_flag, &programs).map_err(cli::UsageError::Msg)?;
    if g.verbose > 0 {
        eprintln!("rlaunch: ranks get {interface} ({why})");
    }
    let job_id = format!("rl-{}", &wire::hex(&wire::random_key()?)[..8]);
    let launch = wire::Launch {
        job_id: job_id.clone(),
        apps,
        nodes: nodes
            .iter()
            .map(|n| spec::NodeEntry { name: n.name.clone(), user: n.user.clone(), slots: n.slots, max_slots: n.max_slots })
            .collect(),
        policy,
        fanout: g.fanout,
        stdin,
        kill_grace_ms: 2000,
        // A local daemon inherits this environment; a remote one gets it in the launch message.
        env: if local_only { Vec::new() } else { forwarded_env(std::env::vars()) },
        tree_spawn: tree_spawn(g.tree_spawn, &nodes_plan.starter),
        fabric: fabric_spec,
        pmi: spec::PmiSpec { interface, port: g.pmi_port, lazy: g.pmi_lazy },
    };
    let daemon_path = match &g.daemon_path {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("finding rlaunch's own path")?.to_string_lossy().into_owned(),
    };
    let plan = frontend::Plan {
        job_id,
        launch,
        nodes,
        map,
        starter: nodes_plan.starter,
        daemon_path,
        timeout,
        launch_timeout,
        tag_output: g.tag_output,
        output_dir: g.output_dir.clone(),
        report: g.report.clone(),
        verbose: g.verbose,
        quiet: g.quiet,
        loopback: local_only,
        command_line: args.clone(),
        t0,
    };
    frontend::run(plan)
}

fn usage_err(msg: impl Into<String>) -> anyhow::Error {
    cli::UsageError::Msg(msg.into()).into()
}

/// Where the ranks run and how daemons get there, from the command line.
fn resolve_nodes(g: &cli::Cli) -> Result<launchers::AllocationPlan> {
    let map_by: MapBy = g.map_by.parse().map_err(|e| usage_err(format!("--map-by {}: {e}", g.map_by)))?;
    let rank_by: Option<RankBy> = match &g.rank_by {
        Some(r) => Some(r.parse().map_err(|e| usage_err(format!("--rank-by {r}: {e}")))?),
        None => None,
    };
    let launcher = match &g.launcher {
        Some(k) => Some(k.parse::<launchers::LauncherKind>().map_err(|e| usage_err(format!("--launcher {k}: {e}")))?),
        None => None,
    };
    let req = launchers::AllocationRequest {
        hostfile: g.hostfile.clone(),
        host: g.host.clone(),
        launcher,
        launch_agent: g.launch_agent.clone(),
        map_by,
        rank_by,
        ppn: g.ppn,
        oversubscribe: g.oversubscribe,
        ssh_port: g.ssh_port,
        ssh_identity: g.ssh_identity.clone(),
        ssh_known_hosts: g.ssh_known_hosts.clone(),
        launch_timeout: Duration::from_secs_f64(g.launch_timeout),
        cwd: std::env::current_dir()?,
    };
    let env = |k: &str| std::env::var(k).ok();
    launchers::allocate(&req, &env).map_err(|e| usage_err(e.to_string()))
}

/// What a daemon needs to start its children the way the front end would have.
fn tree_spawn(wanted: bool, starter: &Starter) -> Option<spec::TreeSpawn> {
    if !wanted {
        return None;
    }
    match starter {
        Starter::Each(NodeStarter::Local) => Some(spec::TreeSpawn { agent: Vec::new(), ssh: None }),
        Starter::Each(NodeStarter::Agent { argv }) => Some(spec::TreeSpawn { agent: argv.clone(), ssh: None }),
        Starter::Each(NodeStarter::Ssh(o)) => Some(spec::TreeSpawn {
            agent: Vec::new(),
            ssh: Some(spec::SshSpec {
                port: o.port,
                identity: o.identity.as_ref().map(|p| p.to_string_lossy().into_owned()),
                identities_only: o.identities_only,
                known_hosts: o.known_hosts.as_ref().map(|p| p.to_string_lossy().into_owned()),
                connect_timeout_ms: o.connect_timeout.as_millis().min(u32::MAX as u128) as u32,
            }),
        }),
        // One srun step already starts every daemon: there is nothing for daemons to start.
        Starter::Group(_) => None,
    }
}

/// Variables that describe this host or this session, or belong to another launcher, and so must
/// not be copied to ranks on other nodes.
fn forwarded_env(vars: impl Iterator<Item = (String, String)>) -> Vec<(String, Option<String>)> {
    const DROP: &[&str] = &["HOSTNAME", "HOST", "DISPLAY", "XAUTHORITY", "PWD", "OLDPWD", "SHLVL", "_"];
    const DROP_PREFIX: &[&str] = &["SSH_", "PMI_", "PMIX_", "OMPI_", "SLURM_", "RLAUNCH_"];
    vars.filter(|(k, _)| !DROP.contains(&k.as_str()) && !DROP_PREFIX.iter().any(|p| k.starts_with(p)))
        .map(|(k, v)| (k, Some(v)))
        .collect()
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
fn describe_map(map: &ProcMap, nodes: &[Node], apps: &[spec::AppContext]) -> String {
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
    fn forwarded_env_drops_host_and_launcher_variables() {
        let vars = ["PATH=/bin", "HOSTNAME=a", "SSH_AUTH_SOCK=x", "PMI_FD=3", "LD_LIBRARY_PATH=/l", "SLURM_JOB_ID=1", "_=/x"];
        let got = super::forwarded_env(vars.iter().map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        }));
        let names: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["PATH", "LD_LIBRARY_PATH"]);
    }

    #[test]
    fn ranges() {
        assert_eq!(super::fmt_ranges(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
        assert_eq!(super::fmt_ranges(&[]), "");
    }
}
