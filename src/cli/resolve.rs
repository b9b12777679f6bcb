//! The high step of the command line, as ripgrep's high args: [`resolve`] checks the parsed words
//! against the system (programs, directories, the allocation, the programs' MPI) and decides
//! everything about the run, as one [`JobPlan`].

use super::error::{usage, UsageError};
use super::flags::{BindToFlag, Bootstrap, Cli, CpuBind, FabricFlag, Usize};
use super::parse::Parsed;
use crate::output::OutputFiles;
use crate::plan::JobPlan;
use crate::spec::{self, AppContext, FabricSpec, InventoryFormat, StdinTarget};
use crate::{pmix, wire};
use anyhow::{Context, Result};
use launchers::start::{NodeStarter, Starter};
use launchers::map::MapBy;
use launchers::{AllocationRequest, LauncherKind};
use fabrics::placement::{BindTo, Policy};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What resolution reads from the process it runs in, gathered once so that tests can build one.
pub struct Env {
    /// rlaunch's environment (variables whose name or value is not UTF-8 are left out).
    pub vars: Vec<(String, String)>,
    pub cwd: PathBuf,
    /// This binary, the default `--daemon-path`; an error matters only when that default is used.
    pub exe: std::io::Result<PathBuf>,
    /// When rlaunch started, for the report's timings.
    pub t0: Instant,
}

impl Env {
    pub fn current(t0: Instant) -> Result<Env> {
        let vars = std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))).collect();
        let cwd = std::env::current_dir().context("reading the current directory")?;
        Ok(Env { vars, cwd, exe: std::env::current_exe(), t0 })
    }

    pub fn var(&self, name: &str) -> Option<String> {
        self.vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }
}

/// Decides the whole run from the parsed command line. Usage errors are [`UsageError`]s.
pub fn resolve(parsed: &Parsed, env: &Env) -> Result<JobPlan> {
    let g = &parsed.global;
    let mut fabric = spec_from_flags(g.fabric, g.nic.as_deref(), g.nic_env, g.inventory, g.json).map_err(UsageError::Msg)?;
    let sim = env.vars.iter().find(|(k, _)| k == crate::spec::SIM_RDMA_ENV).map(|(_, v)| v.as_str());
    fabric.startup = crate::spec::StartupTransport::for_job(fabric.choice, sim).map_err(UsageError::Msg)?;
    crate::startup_rdma::check_root_link(&mut fabric.startup);
    // --inventory starts no rank: nothing reads stdin.
    let stdin = if g.inventory { StdinTarget::None } else { g.stdin };
    let launch_timeout = positive_seconds("--launch-timeout", g.launch_timeout)?;
    if g.fanout == 0 {
        return Err(usage("--fanout 0: the fan-out must be at least 1").into());
    }
    let node_loss = node_loss(g)?;
    let timeout = match (g.timeout, env.var("MPIEXEC_TIMEOUT")) {
        (Some(t), _) => Some(positive_seconds("--timeout", t)?),
        // Hydra's (and the MPICH test suite's) way to give the timeout.
        (None, Some(v)) => Some(
            v.trim()
                .parse::<f64>()
                .map_err(|_| usage(format!("MPIEXEC_TIMEOUT={v}: expected a positive number of seconds")))
                .and_then(|t| positive_seconds("MPIEXEC_TIMEOUT", t))?,
        ),
        (None, None) => None,
    };
    if g.get_stack_traces && timeout.is_none() {
        return Err(usage("--get-stack-traces: the stacks are taken when --timeout (or MPIEXEC_TIMEOUT) expires; give one").into());
    }
    let lookup = |k: &str| env.var(k);
    // Hydra reads both names; MPICH ranks read them for their own sockets too (they inherit them).
    let ports = match ["MPIEXEC_PORT_RANGE", "MPICH_PORT_RANGE"].iter().find_map(|v| env.var(v).filter(|s| !s.trim().is_empty()).map(|s| (v, s))) {
        Some((var, v)) => Some(v.parse::<spec::PortRange>().map_err(|e| usage(format!("{var}={v}: {e}")))?),
        None => None,
    };
    let mut warnings = Vec::new();
    let apps = if g.inventory { inventory_apps(&env.cwd) } else { app_contexts(parsed, &env.cwd, &lookup, &env.vars, &mut warnings)? };

    let mut request = allocation_request(g, launch_timeout, env)?;
    let own = super::mapping::Own::read(parsed, &mut request, &lookup)?;
    let mut alloc = launchers::allocate(&request, &lookup).map_err(|e| usage(e.to_string()))?;
    if g.nolocal {
        drop_this_machine(&mut alloc.nodes)?;
    }
    let mut apps = apps;
    own.assign(&mut apps, &request, &alloc.nodes)?;
    let global_path = env.var("PATH");
    if alloc.local {
        for a in &apps {
            check_program(&a.argv[0], Path::new(&a.cwd), app_path(a, &global_path))?;
        }
    }
    if let Some(dir) = &g.output_dir {
        check_output_dir(dir)?;
    }
    if let Some(file) = g.report.as_ref().filter(|f| f.is_dir()) {
        return Err(usage(format!("--report {}: is a directory (a file is expected)", file.display())).into());
    }
    let super::mapping::Mapped { map, allocation_slots, trimmed } = super::mapping::map(&mut apps, &mut alloc.nodes, &alloc.policy, g.inventory, g.spare)?;
    let prefixes = g.prepend_pattern.as_ref().map(|p| {
        map.ranks().iter().enumerate().map(|(r, place)| crate::output::expand_pattern(p, r as u32, &alloc.nodes[place.node as usize].name)).collect()
    });
    if let StdinTarget::Rank(r) = stdin {
        if r >= map.size() {
            return Err(usage(format!("--stdin {r}: the job has only {} ranks (0-{})", map.size(), map.size() - 1)).into());
        }
    }
    let programs: Vec<pmix::AppProgram> = apps
        .iter()
        .map(|a| pmix::AppProgram { program: &a.argv[0], cwd: Path::new(&a.cwd), path: app_path(a, &global_path) })
        .collect();
    let (interface, mpi_reason, speaks_mpi) = pmix::choose(g.mpi, &programs).map_err(UsageError::Msg)?;
    let job_id = format!("rl-{}", &wire::hex(&wire::random_key()?)[..8]);
    let apps_program = apps[0].argv[0].clone();
    let launch = wire::Launch {
        job_id,
        apps,
        nodes: alloc
            .nodes
            .iter()
            .map(|n| spec::NodeEntry { name: n.name.clone(), user: n.user.clone(), slots: n.slots, max_slots: n.max_slots })
            .collect(),
        policy: alloc.policy,
        fanout: g.fanout,
        stdin,
        kill_grace_ms: 2000,
        // A local daemon inherits this environment; a remote one gets it in the launch message.
        env: if alloc.local { Vec::new() } else { propagated_env(g, &env.vars)? },
        tree_spawn: tree_spawn(g.tree_spawn, &alloc.starter),
        fabric,
        pmi: spec::PmiSpec {
            interface,
            port: g.pmi_port,
            lazy: g.pmi_lazy,
            universe: match g.usize {
                Some(Usize::Count(n)) => Some(n),
                Some(Usize::System) => Some(allocation_slots),
                None if trimmed && interface == spec::Interface::Pmix => Some(allocation_slots.max(map.size())),
                None => None,
            },
        },
        placement: placement(g, alloc.local && alloc.nodes.len() > 1, own.rank_file())?,
        node_loss,
        sensors: super::sensors::spec(g, env.var(spec::SENSOR_ROOT_ENV))?,
        image: image_spec(g, (alloc.nodes.len() as u32).saturating_sub(node_loss.spares), &apps_program)?,
    };
    let daemon_path = match (&g.daemon_path, &env.exe) {
        (Some(p), _) => p.clone(),
        (None, Ok(exe)) => exe.to_string_lossy().into_owned(),
        (None, Err(e)) => return Err(anyhow::anyhow!("finding rlaunch's own path: {e}")),
    };
    if alloc.local && !g.dry_run {
        check_local_placement(&launch.placement, &map, &alloc.nodes)?;
    }
    let output_files = output_files(g, &map, &alloc.nodes)?;
    Ok(JobPlan {
        launch,
        nodes: alloc.nodes,
        map,
        starter: alloc.starter,
        daemon_path,
        timeout,
        get_stack_traces: g.get_stack_traces,
        launch_timeout,
        tag_output: g.tag_output || g.prepend_pattern.is_some(),
        prefixes,
        output_files,
        merge_stderr: g.merge_stderr_to_stdout,
        timestamp_output: g.timestamp_output,
        print_all_exitcodes: g.print_all_exitcodes,
        report: g.report.clone(),
        verbose: g.verbose,
        quiet: g.quiet,
        loopback: alloc.local,
        command_line: parsed.words.clone(),
        t0: env.t0,
        dry_run: g.dry_run,
        display_map: g.display_map,
        notes: mca_note(&g.mca).into_iter().chain(prte_note(&g.prtemca)).collect(),
        warnings,
        report_pid: g.report_pid.clone(),
        ports,
        bind_address: g.bind_address,
        mpi_reason,
        restarts: restart_spec(g.max_restarts, g.enable_recovery, g.restart_scope, speaks_mpi),
    })
}

/// `--spare`, `--heartbeat`, `--heartbeat-timeout`. The timeout must leave room for a few
/// heartbeats, or a busy but healthy link would be declared lost.
fn node_loss(g: &Cli) -> Result<spec::NodeLossSpec, UsageError> {
    let beat = positive_seconds("--heartbeat", g.heartbeat)?;
    let silence = positive_seconds("--heartbeat-timeout", g.heartbeat_timeout)?;
    if silence < beat * 2 {
        return Err(usage(format!(
            "--heartbeat-timeout {}: must be at least twice --heartbeat ({}), or an idle link looks lost",
            g.heartbeat_timeout, g.heartbeat
        )));
    }
    let ms = |d: Duration| d.as_millis().clamp(1, u32::MAX as u128) as u32;
    Ok(spec::NodeLossSpec { spares: g.spare, heartbeat_ms: ms(beat), silence_ms: ms(silence) })
}

/// `--image-*`: the copies default to 2 when there is a second node to hold them, and are
/// never more than the nodes; the dir is made absolute (daemons run elsewhere) and gets the
/// job's folder.
fn image_spec(g: &Cli, nodes: u32, program: &str) -> Result<spec::ImageSpec, UsageError> {
    let copies = g.image_copies.unwrap_or(2).min(nodes.max(1));
    let interval_ms = match g.image_interval {
        Some(s) => Some(positive_seconds("--image-interval", s)?.as_millis() as u64),
        None => None,
    };
    let timeout_ms = positive_seconds("--image-timeout", g.image_timeout)?.as_millis() as u64;
    let dir = match &g.image_dir {
        Some(d) if d.exists() && !d.is_dir() => return Err(usage(format!("--image-dir {}: is not a directory", d.display()))),
        Some(d) => {
            let abs = std::env::current_dir().map(|c| c.join(d)).unwrap_or_else(|_| d.clone());
            Some(crate::images::dir::job_dir(&abs, program).display().to_string())
        }
        None => None,
    };
    Ok(spec::ImageSpec { max: g.image_max, copies, dir, interval_ms, timeout_ms })
}

/// `--max-restarts`, `--enable-recovery` (PRRTE's spelling: one restart unless `--max-restarts`
/// says otherwise) and `--restart-scope`, whose default is the job when the ranks speak PMI or
/// PMIx (MPI programs can only be restarted together) and the rank otherwise.
fn restart_spec(max: Option<u32>, enable_recovery: bool, scope: Option<spec::RestartScope>, speaks_mpi: bool) -> spec::RestartSpec {
    let max = max.unwrap_or(if enable_recovery { 1 } else { 0 });
    let scope = scope.unwrap_or(if speaks_mpi { spec::RestartScope::Job } else { spec::RestartScope::Rank });
    spec::RestartSpec { max, scope }
}

/// The longest timeout accepted: beyond it deadlines would overflow the clock.
const MAX_SECONDS: f64 = 1e9;

fn positive_seconds(flag: &str, secs: f64) -> Result<Duration, UsageError> {
    if secs.is_finite() && secs > 0.0 && secs <= MAX_SECONDS {
        Ok(Duration::from_secs_f64(secs))
    } else if secs > MAX_SECONDS {
        Err(usage(format!("{flag} {secs:e}: expected at most {MAX_SECONDS:e} seconds (about 31 years)")))
    } else {
        Err(usage(format!("{flag} {secs}: expected a positive number of seconds")))
    }
}

/// Where the ranks' output goes besides (or instead of) the terminal.
fn output_files(g: &Cli, map: &launchers::map::ProcMap, nodes: &[launchers::nodes::Node]) -> Result<Option<OutputFiles>, UsageError> {
    if let Some(dir) = &g.output_dir {
        return Ok(Some(OutputFiles::Dir(dir.clone())));
    }
    if let Some(spec) = &g.output_filename {
        return OutputFiles::open_mpi(spec, map.size()).map(Some).map_err(|e| usage(format!("--output-filename {spec}: {e}")));
    }
    if g.outfile_pattern.is_none() && g.errfile_pattern.is_none() {
        return Ok(None);
    }
    let hosts = map.ranks().iter().map(|p| nodes[p.node as usize].name.clone()).collect();
    Ok(Some(OutputFiles::Pattern { out: g.outfile_pattern.clone(), err: g.errfile_pattern.clone(), hosts }))
}

/// The placement request, checked for contradictions; whether a node can meet it is its daemon's
/// to say (it knows its own CPUs). `shared_host`: several of the job's daemons run on this machine
/// (`--launcher local` with several nodes); each places its ranks without knowing the others', so
/// the default there is no binding instead of every node's first rank on the same core.
fn placement(g: &Cli, shared_host: bool, rank_file: Option<&[super::rankfile::Line]>) -> Result<spec::PlacementSpec, UsageError> {
    if rank_file.is_some() && (g.bind_to.is_some() || g.cpu_bind.is_some() || g.map_by.place.pe.is_some() || g.cpus_per_proc.is_some() || g.depth.is_some()) {
        return Err(usage("--rankfile gives each rank its CPUs (slot=); drop --bind-to, --cpu-bind, PE=n, --cpus-per-proc and --depth"));
    }
    let mut map = g.map_by.place;
    // Cray PALS's --cpu-bind, in --bind-to's terms (depth: each rank on its --depth CPUs).
    let cray = match &g.cpu_bind {
        _ if g.bind_to.is_some() => None,
        None => None,
        Some(CpuBind::Level(l)) => Some(BindToFlag::new(l.parse().map_err(|e: fabrics::placement::PolicyError| usage(e.to_string()))?)),
        Some(CpuBind::Depth) => Some(BindToFlag::new(BindTo::Core)),
        Some(CpuBind::Sets(sets)) => {
            let list: Vec<String> = sets.iter().map(|s| s.iter().map(u32::to_string).collect::<Vec<_>>().join("+")).collect();
            Some(BindToFlag::new(format!("user:{}", list.join(",")).parse().map_err(|e: fabrics::placement::PolicyError| usage(format!("--cpu-bind: {e}")))?))
        }
    };
    let bind = g.bind_to.clone().or(cray);
    let (overload, if_supported, report_too) = bind.as_ref().map_or((false, false, false), |b| (b.overload, b.if_supported, b.report));
    let given = [
        map.pe.map(|n| (format!("--map-by :PE={n}"), n)),
        g.cpus_per_proc.map(|n| (format!("--cpus-per-proc {n}"), n)),
        g.depth.map(|n| (format!("--depth {n}"), n)),
        bind.as_ref().and_then(|b| b.per_rank.map(|n| (format!("--bind-to {}:{n}", b.bind), n))),
    ];
    let given: Vec<(String, u32)> = given.into_iter().flatten().collect();
    if let Some((a, n)) = given.first() {
        if let Some((b, _)) = given.iter().find(|(_, m)| m != n) {
            return Err(usage(format!("{a} and {b} ask for different CPUs per rank; give one")));
        }
        map.pe = Some(*n);
    }
    if map.pe.is_some() && matches!(bind.as_ref().map(|b| &b.bind), Some(BindTo::Cpus(_))) {
        return Err(usage("--bind-to user:... gives each rank its CPUs; it cannot be combined with PE=n or --cpus-per-proc"));
    }
    let bind = match bind.map(|b| b.bind) {
        None if shared_host && map.pe.is_none() => Some(BindTo::None),
        b => b,
    };
    let rank_by = g.rank_by.and_then(|r| r.object);
    if g.gpus_per_rank.is_some() && g.gpu_bind.is_some() {
        return Err(usage("--gpus-per-rank and --gpu-bind both choose the ranks' GPUs; give one"));
    }
    let gpu_lists = g.gpu_bind.as_ref().map(|b| b.0.clone()).unwrap_or_default();
    let rank_slots = rank_file.map(|lines| lines.iter().map(|l| (l.rank, l.slot.clone())).collect()).unwrap_or_default();
    let policy = Policy { map, bind, hwthreads: g.use_hwthread_cpus, gpus_per_rank: g.gpus_per_rank.unwrap_or(0), gpu_lists, rank_slots, rank_by, overload, if_supported };
    Ok(spec::PlacementSpec { policy, report: g.report_bindings || report_too })
}

/// Every daemon of a job on this machine sees this machine's topology and affinity: a placement
/// one of them would refuse is refused here, before any daemon (and on another node, any rank)
/// starts. A `--dry-run` shows the refusal instead. An unreadable topology is left for the
/// daemon to report.
fn check_local_placement(spec: &spec::PlacementSpec, map: &launchers::map::ProcMap, nodes: &[launchers::nodes::Node]) -> Result<(), UsageError> {
    if !spec.asked() {
        return Ok(());
    }
    let Ok(topo) = fabrics::Topology::discover_system() else { return Ok(()) };
    for (i, n) in nodes.iter().enumerate() {
        let ranks = map.ranks_on(i as u32);
        if ranks.is_empty() {
            continue;
        }
        if let Err(e) = crate::binding::place_node(spec, &topo, ranks, &[]) {
            return Err(usage(format!("node {}: {e}", n.name)));
        }
    }
    Ok(())
}

/// An Open MPI MCA parameter as Open MPI reads it: `--mca KEY VALUE` (the last one), else
/// `OMPI_MCA_KEY` (or PRRTE's `PRTE_MCA_KEY`) in the environment.
fn mca_param(g: &Cli, env: &Env, key: &str) -> Option<String> {
    g.mca
        .iter()
        .rev()
        .find_map(|kv| kv.split_once('=').filter(|(k, _)| *k == key).map(|(_, v)| v.to_string()))
        .or_else(|| env.var(&format!("OMPI_MCA_{key}")))
        .or_else(|| env.var(&format!("PRTE_MCA_{key}")))
}

fn truthy(v: &str) -> bool {
    matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "t" | "y")
}

/// MCA parameters of the launcher's frameworks that rlaunch itself reads.
const READ_MCA: &[&str] = &["rmaps_base_oversubscribe", "orte_default_hostfile", "prte_default_hostfile"];

/// Open MPI's launcher-level MCA frameworks (ORTE/PRRTE: starting daemons, mapping, routing):
/// the ranks get these parameters like any other, but rlaunch itself does not read them.
const LAUNCHER_MCA: &[&str] = &["plm", "ras", "rmaps", "oob", "orte", "prte", "odls", "routed", "errmgr", "ess", "rtc", "schizo", "state", "filem", "iof", "grpcomm"];

fn mca_note(mca: &[String]) -> Option<String> {
    let keys: Vec<&str> = mca
        .iter()
        .map(|kv| kv.split_once('=').map_or(kv.as_str(), |(k, _)| k))
        .filter(|k| LAUNCHER_MCA.iter().any(|f| k.split('_').next() == Some(f)) && !READ_MCA.contains(k))
        .collect();
    (!keys.is_empty()).then(|| {
        format!("--mca {}: launcher (ORTE/PRRTE) parameters; the ranks get them, rlaunch does not use them", keys.join(", "))
    })
}

/// `--nolocal`: the job's nodes without the machine rlaunch runs on (the starter's own test: its
/// host name with or without a domain, or a loopback name).
fn drop_this_machine(nodes: &mut Vec<launchers::nodes::Node>) -> Result<(), UsageError> {
    nodes.retain(|n| !launchers::start::is_this_machine(&n.name));
    if nodes.is_empty() {
        return Err(usage(format!("--nolocal: every node of the job is this machine ({}); give other hosts", launchers::local_hostname())));
    }
    Ok(())
}

/// Open MPI 5's `--prtemca`: PRRTE's parameters, which nothing in rlaunch reads.
fn prte_note(prtemca: &[String]) -> Option<String> {
    let keys: Vec<&str> = prtemca.iter().map(|kv| kv.split_once('=').map_or(kv.as_str(), |(k, _)| k)).collect();
    (!keys.is_empty()).then(|| format!("--prtemca {}: PRRTE parameters; rlaunch has no PRRTE, so they are not used", keys.join(", ")))
}

/// Hydra's `-launcher`/`-launcher-exec` (Intel's `-bootstrap`/`-bootstrap-exec`, or
/// `HYDRA_LAUNCHER`/`HYDRA_LAUNCHER_EXEC`) as rlaunch's launcher kind and launch agent.
/// Hydra's ssh launcher with no host list runs the job here, so `-launcher ssh` without nodes is
/// rlaunch's default rather than its ssh launcher (which needs nodes). Likewise `-launcher sge`
/// and `-launcher lsf` without nodes: inside the batch job its detection gives the same launcher,
/// outside it the job runs here.
fn bootstrap(kind: Option<Bootstrap>, exec: Option<&str>, has_nodes: bool) -> Result<(Option<LauncherKind>, Option<String>), UsageError> {
    Ok(match (kind, exec) {
        (None, None) => (None, None),
        (Some(Bootstrap::Ssh), None) => (has_nodes.then_some(LauncherKind::Ssh), None),
        (Some(Bootstrap::Rsh), None) => (None, Some("rsh".to_string())),
        (None | Some(Bootstrap::Ssh | Bootstrap::Rsh), Some(exec)) => (None, Some(exec.to_string())),
        (Some(Bootstrap::Fork), None) => (Some(LauncherKind::Local), None),
        (Some(Bootstrap::Slurm), None) => (Some(LauncherKind::Slurm), None),
        (Some(Bootstrap::Pbs), None) => (Some(LauncherKind::Pbs), None),
        (Some(Bootstrap::Sge), None) => (has_nodes.then_some(LauncherKind::Sge), None),
        (Some(Bootstrap::Lsf), None) => (has_nodes.then_some(LauncherKind::Lsf), None),
        (Some(k), Some(exec)) => {
            let name = format!("{k:?}").to_lowercase();
            return Err(usage(format!(
                "-launcher-exec {exec}: only the ssh and rsh launchers start daemons through a command, not {name}; drop -launcher-exec"
            )));
        }
    })
}

/// The PATH a context's program is looked up in: its own `-x PATH=...`, else rlaunch's.
fn app_path<'a>(app: &'a AppContext, global: &'a Option<String>) -> Option<&'a str> {
    app.env.iter().find(|(k, _)| k == "PATH").and_then(|(_, v)| v.as_deref()).or(global.as_deref())
}

fn allocation_request(g: &Cli, launch_timeout: Duration, env: &Env) -> Result<AllocationRequest, UsageError> {
    let host = g.hosts.clone().or_else(|| g.host.clone());
    // Hydra reads its host file and launcher from the environment when the command line names none.
    // Open MPI reads its default host file from an MCA parameter.
    let default_hostfile = || {
        env.var("HYDRA_HOST_FILE")
            .or_else(|| mca_param(g, env, "orte_default_hostfile"))
            .or_else(|| mca_param(g, env, "prte_default_hostfile"))
            .map(PathBuf::from)
    };
    let hostfile = g.hostfile.clone().or_else(|| host.is_none().then(default_hostfile).flatten());
    let (launcher, launch_agent) = if g.launcher.is_some() || g.launch_agent.is_some() {
        (g.launcher, g.launch_agent.clone())
    } else if g.bootstrap.is_some() || g.bootstrap_exec.is_some() {
        bootstrap(g.bootstrap, g.bootstrap_exec.as_deref(), host.is_some() || hostfile.is_some())?
    } else {
        let kind = env
            .var("HYDRA_LAUNCHER")
            .map(|v| v.parse::<Bootstrap>().map_err(|e| usage(format!("HYDRA_LAUNCHER={v}: {e}"))))
            .transpose()?;
        bootstrap(kind, env.var("HYDRA_LAUNCHER_EXEC").as_deref(), host.is_some() || hostfile.is_some())?
    };
    let no_oversubscribe = g.nooversubscribe || g.map_by.place.oversubscribe == Some(false);
    // Hydra's placement: blocks of -ppn N (-rr: 1) ranks, or of each -hosts entry's count, in turn.
    let block = g.perhost.map(Some).or(g.rr.then_some(Some(1))).or(g.hosts.as_ref().map(|_| None));
    // Open MPI's :SPAN, "load balance the processes across the allocation": as many ranks on
    // each node as --map-by node would give, numbered node by node; inside each node they go to
    // its objects as the object policy says.
    let span = g.map_by.place.span && g.map_by.policy == MapBy::Slot;
    let map_by = match (block, g.bynode) {
        (Some(b), _) => MapBy::Cycle(b),
        (None, true) => MapBy::Node,
        (None, false) if span => MapBy::Node,
        (None, false) => g.map_by.policy,
    };
    Ok(AllocationRequest {
        hostfile,
        host,
        launcher,
        launch_agent,
        map_by,
        rank_by: g.rank_by.map(|r| r.policy).or(span.then_some(launchers::map::RankBy::Slot)),
        ppn: if g.pernode { Some(1) } else { g.ppn },
        oversubscribe: !no_oversubscribe
            && (g.oversubscribe || g.map_by.place.oversubscribe == Some(true) || mca_param(g, env, "rmaps_base_oversubscribe").is_some_and(|v| truthy(&v))),
        no_oversubscribe,
        ssh_port: g.ssh_port,
        ssh_identity: g.ssh_identity.clone(),
        ssh_known_hosts: g.ssh_known_hosts.clone(),
        launch_timeout,
        cwd: env.cwd.clone(),
    })
}

/// Checks the fabric flags against each other (no I/O).
pub fn spec_from_flags(fabric: FabricFlag, nic: Option<&str>, nic_env: bool, inventory: bool, json: bool) -> Result<FabricSpec, String> {
    let choice = fabric.choice();
    let nics: Vec<String> = match nic {
        None => Vec::new(),
        Some(list) => {
            let names: Vec<String> = list.split(',').map(|s| s.trim().to_string()).collect();
            if names.iter().any(String::is_empty) {
                return Err(format!("--nic {list}: empty NIC name; give names separated by commas, e.g. --nic eth0,eth1"));
            }
            names
        }
    };
    if choice.is_none() && !inventory && (!nics.is_empty() || nic_env) {
        let flag = if nics.is_empty() { "--nic-env" } else { "--nic" };
        return Err(format!("{flag} needs endpoint assignment; drop --fabric off"));
    }
    if json && !inventory {
        return Err("--json only changes the output of --inventory; add --inventory or drop --json".into());
    }
    let inventory = inventory.then_some(if json { InventoryFormat::Json } else { InventoryFormat::Text });
    Ok(FabricSpec { choice, nics, nic_env, inventory, ..FabricSpec::default() })
}

/// Where `--inventory` needs an application context to satisfy the map (no rank is ever started):
/// `true` exists on every system and passes the program checks.
pub fn inventory_apps(cwd: &Path) -> Vec<AppContext> {
    vec![AppContext { argv: vec!["true".into()], env: Vec::new(), cwd: cwd.to_string_lossy().into_owned(), np: None, nodes: None, without_job_env: false }]
}

/// What a daemon needs to start its children the way the front end would have.
fn tree_spawn(wanted: bool, starter: &Starter) -> Option<spec::TreeSpawn> {
    if !wanted {
        return None;
    }
    match starter {
        Starter::Each(NodeStarter::Local) => Some(spec::TreeSpawn { agent: Vec::new(), ssh: None }),
        Starter::Each(NodeStarter::Agent { argv }) => Some(spec::TreeSpawn { agent: argv.clone(), ssh: None }),
        // A daemon is never on the front end's machine, so its children all go through the agent.
        Starter::Each(NodeStarter::Batch { argv, .. }) => Some(spec::TreeSpawn { agent: argv.clone(), ssh: None }),
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

/// What ranks on other nodes get of rlaunch's environment: [`forwarded_env`], or with Hydra's
/// `-genvnone` nothing, with `-genvlist A,B` only those.
fn propagated_env(g: &Cli, vars: &[(String, String)]) -> Result<Vec<(String, Option<String>)>, UsageError> {
    if g.genvnone {
        return Ok(Vec::new());
    }
    let Some(list) = &g.genvlist else { return Ok(forwarded_env(vars.iter().cloned())) };
    let names: Vec<&str> = list.split(',').map(str::trim).collect();
    if let Some(bad) = names.iter().find(|n| !valid_name(n)) {
        return Err(usage(format!("-genvlist {list}: '{bad}' is not a valid environment variable name")));
    }
    Ok(vars.iter().filter(|(k, _)| names.contains(&k.as_str())).map(|(k, v)| (k.clone(), Some(v.clone()))).collect())
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

fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.starts_with(|c: char| c.is_ascii_digit()) && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A `KEY=VALUE` that normalize joined from `-mca KEY VALUE`, `-genv VAR VALUE` or `-env`: the
/// variable it sets (`prefix` + KEY) and its value.
fn pair_var(flag: &str, prefix: &str, kv: &str) -> Result<(String, Option<String>), UsageError> {
    let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
    let name = format!("{prefix}{key}");
    if !valid_name(&name) {
        return Err(usage(format!("{flag} {key}: '{name}' is not a valid environment variable name")));
    }
    Ok((name, Some(value.to_string())))
}

/// `--prefix DIR` (Open MPI): DIR/bin first in PATH and DIR/lib first in LD_LIBRARY_PATH, on top
/// of the context's own or rlaunch's values.
fn prefix_vars(dir: &Path, env: &[(String, Option<String>)], lookup: &dyn Fn(&str) -> Option<String>) -> Vec<(String, Option<String>)> {
    [("PATH", "bin"), ("LD_LIBRARY_PATH", "lib")]
        .into_iter()
        .map(|(var, sub)| {
            let old = env.iter().rev().find(|(k, _)| k == var).and_then(|(_, v)| v.clone()).or_else(|| lookup(var));
            let first = dir.join(sub).to_string_lossy().into_owned();
            let value = match old.filter(|o| !o.is_empty()) {
                Some(o) => format!("{first}:{o}"),
                None => first,
            };
            (var.to_string(), Some(value))
        })
        .collect()
}

/// `-x VAR` or `-x VAR=value` → (VAR, value). A bare VAR takes rlaunch's own value; `None` when
/// it has none (Open MPI warns and runs the job without it, and so does rlaunch).
pub fn parse_export(spec: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<(String, Option<String>), UsageError> {
    let (name, value) = match spec.split_once('=') {
        Some((n, v)) => (n, Some(v.to_string())),
        None => (spec, None),
    };
    if !valid_name(name) {
        return Err(usage(format!("-x {spec}: '{name}' is not a valid environment variable name")));
    }
    Ok((name.to_string(), value.or_else(|| lookup(name))))
}

/// Checks that `program` can be executed from `cwd` using `path` the way execvp would, and returns a
/// message naming it when it cannot.
pub fn check_program(program: &str, cwd: &std::path::Path, path: Option<&str>) -> Result<(), UsageError> {
    use std::os::unix::fs::PermissionsExt;
    let candidates: Vec<PathBuf> = if program.contains('/') {
        vec![cwd.join(program)]
    } else {
        path.unwrap_or("/usr/local/bin:/usr/bin:/bin")
            .split(':')
            .map(|d| if d.is_empty() { cwd.to_path_buf() } else { cwd.join(d) })
            .map(|d| d.join(program))
            .collect()
    };
    let mut not_exec = None;
    for c in &candidates {
        if let Ok(m) = std::fs::metadata(c) {
            if m.is_file() && m.permissions().mode() & 0o111 != 0 {
                return Ok(());
            }
            not_exec = Some(c.clone());
        }
    }
    match not_exec {
        Some(p) if p.is_dir() => Err(usage(format!("program '{program}' is a directory ({})", p.display()))),
        Some(p) => Err(usage(format!("program '{program}' is not executable ({}); check its permissions", p.display()))),
        None if program.contains('/') => Err(usage(format!("program '{program}' not found (looked in {})", cwd.display()))),
        None => Err(usage(format!("program '{program}' not found in PATH"))),
    }
}

/// Builds the application contexts from the parsed segments.
pub fn app_contexts(
    parsed: &Parsed,
    cwd: &std::path::Path,
    lookup: &dyn Fn(&str) -> Option<String>,
    vars: &[(String, String)],
    warnings: &mut Vec<String>,
) -> Result<Vec<AppContext>, UsageError> {
    let mut out = Vec::new();
    for (i, a) in parsed.apps.iter().enumerate() {
        // Global -x values apply to every context; a context's own come after and win.
        // In order, later wins: Open MPI's --mca, Hydra's -genv, -x, Hydra's per-context -env.
        let g = &parsed.global;
        let mut sets = Vec::new();
        for kv in &g.mca {
            sets.push(pair_var("--mca", "OMPI_MCA_", kv)?);
        }
        for kv in &g.pmixmca {
            sets.push(pair_var("--pmixmca", "PMIX_MCA_", kv)?);
        }
        for kv in &g.genv {
            sets.push(pair_var("-genv", "", kv)?);
        }
        let exports = if i == 0 { a.export.clone() } else { g.export.iter().chain(a.export.iter()).cloned().collect() };
        for x in &exports {
            match parse_export(x, lookup)? {
                (k, Some(v)) => sets.push((k, Some(v))),
                (k, None) => {
                    let w = format!("warning: -x {k}: {k} is not set in rlaunch's environment; the ranks do not get it");
                    if !warnings.contains(&w) {
                        warnings.push(w);
                    }
                }
            }
        }
        for kv in &a.env {
            sets.push(pair_var("-env", "", kv)?);
        }
        if let Some(dir) = &g.prefix {
            let vars = prefix_vars(dir, &sets, lookup);
            sets.extend(vars);
        }
        if let Some(dir) = &g.path {
            let old = sets.iter().rev().find(|(k, _)| k == "PATH").and_then(|(_, v)| v.clone()).or_else(|| lookup("PATH"));
            let first = dir.to_string_lossy().into_owned();
            sets.push(("PATH".into(), Some(old.filter(|o| !o.is_empty()).map_or(first.clone(), |o| format!("{first}:{o}")))));
        }
        // Hydra's per-context environment: its own list of rlaunch's variables (set first, so
        // that -x and -env still win), or all of them under a job-wide -genvnone.
        let mut without_job_env = a.envnone;
        if let Some(list) = &a.envlist {
            let mut own = Vec::new();
            for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                if !valid_name(name) {
                    return Err(usage(format!("-envlist {list}: '{name}' is not a valid environment variable name")));
                }
                own.extend(lookup(name).map(|v| (name.to_string(), Some(v))));
            }
            sets.splice(0..0, own);
            without_job_env = true;
        } else if i > 0 && a.genvall && (g.genvnone || g.genvlist.is_some()) {
            sets.splice(0..0, forwarded_env(vars.iter().cloned()));
        }
        let mut env: Vec<(String, Option<String>)> = Vec::new();
        for (k, v) in sets {
            env.retain(|(n, _)| n != &k);
            env.push((k, v));
        }
        let np = a.np;
        if np == Some(0) {
            return Err(usage("-np 0: the number of ranks must be at least 1"));
        }
        let wdir = match a.wdir.as_ref().or(if i > 0 { parsed.global.wdir.as_ref() } else { None }) {
            Some(w) => {
                let w = if w.is_absolute() { w.clone() } else { cwd.join(w) };
                if !w.is_dir() {
                    return Err(usage(format!("--wdir {}: not a directory", w.display())));
                }
                w
            }
            None => cwd.to_path_buf(),
        };
        out.push(AppContext { argv: a.program.clone(), env, cwd: wdir.to_string_lossy().into_owned(), np, nodes: None, without_job_env });
    }
    Ok(out)
}

/// Checks that `dir` exists or can be created, and that a file can be written in it.
pub fn check_output_dir(dir: &std::path::Path) -> Result<(), UsageError> {
    std::fs::create_dir_all(dir).map_err(|e| usage(format!("--output-dir {}: cannot create it: {e}", dir.display())))?;
    let probe = dir.join(format!(".rlaunch-probe-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| usage(format!("--output-dir {}: not writable: {e}", dir.display())))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fabrics::endpoints::FabricChoice;

    #[test]
    fn exports() {
        let env = |k: &str| (k == "HOME").then(|| "/root".to_string());
        assert_eq!(parse_export("A=b=c", &env).unwrap(), ("A".into(), Some("b=c".into())));
        assert_eq!(parse_export("HOME", &env).unwrap(), ("HOME".into(), Some("/root".into())));
        assert_eq!(parse_export("NOPE", &env).unwrap(), ("NOPE".into(), None));
        assert!(parse_export("1A=x", &env).unwrap_err().to_string().contains("not a valid"));
        assert!(parse_export("=x", &env).is_err());
    }

    #[test]
    fn program_checks() {
        let cwd = std::env::temp_dir();
        assert!(check_program("sh", &cwd, Some("/bin:/usr/bin")).is_ok());
        let e = check_program("no-such-prog-xyz", &cwd, Some("/bin")).unwrap_err().to_string();
        assert_eq!(e, "program 'no-such-prog-xyz' not found in PATH");
        let dir = std::env::temp_dir().join(format!("rlaunch-cli-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let plain = dir.join("plain");
        std::fs::write(&plain, b"").unwrap();
        std::fs::set_permissions(&plain, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        let e = check_program("./plain", &dir, None).unwrap_err().to_string();
        assert!(e.contains("is not executable"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn flags() {
        use FabricFlag::{Auto, Off, Tcp};
        assert_eq!(spec_from_flags(Auto, None, false, false, false).unwrap(), FabricSpec::default());
        let s = spec_from_flags(Tcp, Some("eth0, eth1"), true, false, false).unwrap();
        assert_eq!((s.choice, s.nics.clone(), s.nic_env), (Some(FabricChoice::Tcp), vec!["eth0".to_string(), "eth1".into()], true));
        assert!("ib".parse::<FabricFlag>().unwrap_err().contains("expected auto, tcp, rdma or off"));
        assert!(spec_from_flags(Auto, Some("a,,b"), false, false, false).unwrap_err().contains("empty NIC name"));
        assert!(spec_from_flags(Off, Some("eth0"), false, false, false).unwrap_err().starts_with("--nic needs"));
        assert!(spec_from_flags(Off, None, true, false, false).unwrap_err().starts_with("--nic-env needs"));
        assert!(spec_from_flags(Auto, None, false, false, true).unwrap_err().contains("--json only"));
        assert_eq!(spec_from_flags(Off, None, false, true, true).unwrap().inventory, Some(InventoryFormat::Json));
        assert!(spec_from_flags(Off, None, false, true, false).unwrap().gathers());
    }

    #[test]
    fn forwarded_env_drops_host_and_launcher_variables() {
        let vars = ["PATH=/bin", "HOSTNAME=a", "SSH_AUTH_SOCK=x", "PMI_FD=3", "LD_LIBRARY_PATH=/l", "SLURM_JOB_ID=1", "_=/x"];
        let got = forwarded_env(vars.iter().map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        }));
        let names: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["PATH", "LD_LIBRARY_PATH"]);
    }

    fn env(vars: &[(&str, &str)]) -> Env {
        Env {
            vars: vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            cwd: std::env::temp_dir(),
            exe: Ok(PathBuf::from("/opt/rlaunch")),
            t0: Instant::now(),
        }
    }

    fn plan(words: &[&str], env: &Env) -> Result<JobPlan> {
        let words: Vec<String> = words.iter().map(|w| w.to_string()).collect();
        resolve(&super::super::parse::parse(&words)?, env)
    }

    fn usage_text(r: Result<JobPlan>) -> String {
        match r {
            Ok(_) => panic!("expected a usage error"),
            Err(e) => match e.downcast::<UsageError>() {
                Ok(UsageError::Msg(m)) => m,
                other => panic!("not a usage message: {other:?}"),
            },
        }
    }

    #[test]
    fn a_local_job_inherits_the_environment_and_listens_on_loopback() {
        let e = env(&[("PATH", "/bin:/usr/bin"), ("HOSTNAME", "x")]);
        let p = plan(&["-np", "3", "--stdin", "all", "-x", "A=1", "--timeout", "1.5", "sh", "-c", "true"], &e).unwrap();
        assert_eq!(p.map.size(), 3);
        assert_eq!(p.starter, Starter::Each(NodeStarter::Local));
        assert!(p.loopback && p.launch.env.is_empty() && p.launch.tree_spawn.is_none());
        assert_eq!(p.launch.stdin, StdinTarget::All);
        assert_eq!(p.launch.apps[0].env, vec![("A".to_string(), Some("1".to_string()))]);
        assert_eq!(p.launch.pmi.interface, spec::Interface::Pmi);
        assert_eq!(p.timeout, Some(Duration::from_millis(1500)));
        assert_eq!(p.launch_timeout, Duration::from_secs(30));
        assert_eq!(p.daemon_path, "/opt/rlaunch");
        assert!(p.launch.job_id.starts_with("rl-") && p.launch.job_id.len() == 11, "{}", p.launch.job_id);
        assert_eq!(p.command_line[..2], ["-np".to_string(), "3".to_string()]);
        assert!(!p.dry_run);
    }

    #[test]
    fn a_remote_job_gets_the_forwarded_environment_and_tree_spawn_settings() {
        let e = env(&[("PATH", "/bin"), ("HOSTNAME", "x"), ("LANG", "C")]);
        let p = plan(&["--host", "n1:2,n2:2", "--tree-spawn", "--ssh-port", "2222", "--daemon-path", "/x/rl", "--dry-run", "no-such-program-here"], &e).unwrap();
        // Programs are not checked here: they live on the nodes.
        assert!(!p.loopback && p.dry_run);
        assert_eq!(p.daemon_path, "/x/rl");
        assert_eq!(p.launch.env, vec![("PATH".to_string(), Some("/bin".to_string())), ("LANG".into(), Some("C".into()))]);
        let ssh = p.launch.tree_spawn.as_ref().and_then(|t| t.ssh.as_ref()).expect("ssh tree spawn");
        assert_eq!(ssh.port, 2222);
        assert_eq!(p.nodes.len(), 2);
        assert_eq!(p.map.size(), 4);
    }

    #[test]
    fn spares_are_the_last_nodes_and_get_no_ranks() {
        let e = env(&[("PATH", "/bin")]);
        let p = plan(&["--host", "n1:2,n2:2,n3:2", "--spare", "1", "-np", "4", "--dry-run", "x"], &e).unwrap();
        assert_eq!(p.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["n1", "n2", "n3"]);
        assert_eq!(p.launch.node_loss.spares, 1);
        assert!(p.map.ranks_on(2).is_empty());
        assert_eq!(p.map, crate::job::compute_map(&p.launch).unwrap(), "the daemons compute the same map");
        // A node without ranks is dropped, a spare is kept.
        let p = plan(&["--host", "n1:2,n2:2,n3:2", "--spare", "1", "-np", "2", "--dry-run", "x"], &e).unwrap();
        assert_eq!(p.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["n1", "n3"]);
        assert_eq!(p.map, crate::job::compute_map(&p.launch).unwrap());
        assert_eq!(
            usage_text(plan(&["--host", "n1:2,n2:2,n3:2", "--spare", "1", "-np", "5", "x"], &e)),
            "requested 5 ranks but only 4 slots were found (n1: 2, n2: 2); use --oversubscribe or more hosts (--spare 1 keeps n3 out of the map)"
        );
        assert_eq!(
            usage_text(plan(&["--host", "n1:2,n2:2", "--spare", "2", "x"], &e)),
            "--spare 2 keeps 2 of the job's 2 nodes as spares and leaves none for ranks; give more hosts or a smaller --spare"
        );
        assert_eq!(usage_text(plan(&["--heartbeat", "2", "--heartbeat-timeout", "3", "true"], &e)), "--heartbeat-timeout 3: must be at least twice --heartbeat (2), or an idle link looks lost");
        let p = plan(&["--heartbeat", "0.5", "--heartbeat-timeout", "2", "true"], &e).unwrap();
        assert_eq!((p.launch.node_loss.heartbeat_ms, p.launch.node_loss.silence_ms), (500, 2000));
    }

    #[test]
    fn resolution_errors_are_usage_errors() {
        let e = env(&[("PATH", "/bin:/usr/bin")]);
        assert_eq!(usage_text(plan(&["-np", "2", "--stdin", "5", "true"], &e)), "--stdin 5: the job has only 2 ranks (0-1)");
        assert_eq!(usage_text(plan(&["--fanout", "0", "true"], &e)), "--fanout 0: the fan-out must be at least 1");
        assert_eq!(usage_text(plan(&["--timeout", "-1", "true"], &e)), "--timeout -1: expected a positive number of seconds");
        assert_eq!(usage_text(plan(&["--launch-timeout", "0", "true"], &e)), "--launch-timeout 0: expected a positive number of seconds");
        assert_eq!(usage_text(plan(&["--fabric", "off", "--nic", "eth0", "true"], &e)), "--nic needs endpoint assignment; drop --fabric off");
        assert_eq!(usage_text(plan(&["--launcher", "ssh", "true"], &e)), "--launcher ssh needs nodes: give --hostfile or --host");
        assert_eq!(usage_text(plan(&["no-such-program-xyz"], &e)), "program 'no-such-program-xyz' not found in PATH");
    }

    #[test]
    fn inventory_runs_true_and_reads_no_stdin() {
        let p = plan(&["--inventory", "--json"], &env(&[("PATH", "/bin:/usr/bin")])).unwrap();
        assert_eq!(p.launch.apps[0].argv, ["true"]);
        assert_eq!(p.launch.stdin, StdinTarget::None);
        assert_eq!(p.launch.fabric.inventory, Some(InventoryFormat::Json));
    }

    #[test]
    fn the_daemon_path_is_needed_only_without_daemon_path() {
        let mut e = env(&[("PATH", "/bin:/usr/bin")]);
        e.exe = Err(std::io::Error::from(std::io::ErrorKind::NotFound));
        assert!(plan(&["--daemon-path", "/x", "true"], &e).is_ok());
        let err = plan(&["true"], &e).err().unwrap().to_string();
        assert!(err.starts_with("finding rlaunch's own path: "), "{err}");
    }

    fn app_env(p: &JobPlan, app: usize) -> Vec<(String, String)> {
        p.launch.apps[app].env.iter().map(|(k, v)| (k.clone(), v.clone().unwrap_or_default())).collect()
    }

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn mca_genv_x_and_env_set_variables_in_that_order() {
        let e = env(&[("PATH", "/bin:/usr/bin")]);
        let p = plan(&["-mca", "btl", "^openib", "-genv", "A", "1", "-x", "A=2", "-n", "1", "-env", "B", "3", "true", ":", "-n", "1", "-env", "B=4", "true"], &e).unwrap();
        assert_eq!(app_env(&p, 0), kv(&[("OMPI_MCA_btl", "^openib"), ("A", "2"), ("B", "3")]));
        assert_eq!(app_env(&p, 1), kv(&[("OMPI_MCA_btl", "^openib"), ("A", "2"), ("B", "4")]));
        assert_eq!(usage_text(plan(&["-genv", "1A", "x", "true"], &e)), "-genv 1A: '1A' is not a valid environment variable name");
    }

    #[test]
    fn prefix_puts_its_bin_and_lib_first() {
        let e = env(&[("PATH", "/bin:/usr/bin")]);
        let p = plan(&["--prefix", "/opt/ompi", "true"], &e).unwrap();
        assert_eq!(app_env(&p, 0), kv(&[("PATH", "/opt/ompi/bin:/bin:/usr/bin"), ("LD_LIBRARY_PATH", "/opt/ompi/lib")]));
    }

    #[test]
    fn hydra_hosts_wrap_around_without_counts_and_fill_slots_with_them() {
        let e = env(&[("PATH", "/bin")]);
        let p = plan(&["-hosts", "a,b", "-n", "4", "x"], &e).unwrap();
        assert_eq!(p.map.ranks_on(0), [0, 2]);
        assert_eq!(p.map.ranks_on(1), [1, 3]);
        let p = plan(&["-hosts", "a:2,b:2", "-n", "4", "x"], &e).unwrap();
        assert_eq!(p.map.ranks_on(0), [0, 1]);
        // Open MPI's --host: one slot per host, more ranks is an error.
        assert!(usage_text(plan(&["--host", "a,b", "-n", "4", "x"], &e)).starts_with("requested 4 ranks but only 2 slots"));
        let p = plan(&["-hosts", "a,b,c", "-ppn", "2", "-n", "4", "x"], &e).unwrap();
        assert_eq!((p.map.ranks_on(0), p.map.ranks_on(1)), (&[0, 1][..], &[2, 3][..]));
        let p = plan(&["-rr", "--host", "a:2,b:2", "-n", "2", "x"], &e).unwrap();
        assert_eq!(p.map.ranks_on(1), [1]);
        let p = plan(&["-bynode", "--host", "a:2,b:2", "-n", "2", "x"], &e).unwrap();
        assert_eq!(p.map.ranks_on(1), [1]);
        // Hydra's -ppn and -hosts counts wrap around; rlaunch's --ppn refuses.
        let p = plan(&["-hosts", "a,b", "-ppn", "2", "-n", "6", "x"], &e).unwrap();
        assert_eq!((p.map.ranks_on(0), p.map.ranks_on(1)), (&[0, 1, 4, 5][..], &[2, 3][..]));
        let p = plan(&["-hosts", "a:2,b:1", "-n", "5", "x"], &e).unwrap();
        assert_eq!((p.map.ranks_on(0), p.map.ranks_on(1)), (&[0, 1, 3, 4][..], &[2][..]));
        let p = plan(&["-ppn", "1", "-n", "2", "true"], &e).unwrap();
        assert_eq!(p.map.ranks_on(0), [0, 1]);
        assert!(usage_text(plan(&["--host", "a,b", "--ppn", "2", "-n", "6", "x"], &e)).contains("ppr:2:node"));
    }

    #[test]
    fn oversubscription_spellings() {
        let e = env(&[("PATH", "/bin")]);
        assert!(plan(&["--host", "a", "-n", "2", "--map-by", ":OVERSUBSCRIBE", "x"], &e).is_ok());
        assert!(plan(&["--host", "a", "-n", "2", "--map-by", "slot:oversubscribe:SPAN", "x"], &e).is_ok());
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let many = (cpus + 1).to_string();
        assert!(plan(&["-n", &many, "true"], &e).is_ok());
        for refuse in [&["--nooversubscribe"][..], &["--map-by", "slot:NOOVERSUBSCRIBE"]] {
            let words: Vec<&str> = refuse.iter().copied().chain(["-n", &many, "true"]).collect();
            assert!(usage_text(plan(&words, &e)).contains("slots were found"), "{refuse:?}");
        }
        let p = plan(&["--pernode", "--host", "a:4,b:4", "x"], &e).unwrap();
        assert_eq!(p.map.size(), 2);
    }

    #[test]
    fn hydra_launchers_and_their_environment() {
        let e = env(&[("PATH", "/bin")]);
        let starter = |words: &[&str], e: &Env| plan(words, e).unwrap().starter;
        let agent = |argv: &[&str]| Starter::Each(NodeStarter::Agent { argv: argv.iter().map(|a| a.to_string()).collect() });
        assert_eq!(starter(&["-launcher", "rsh", "--host", "a", "x"], &e), agent(&["rsh"]));
        assert_eq!(starter(&["-launcher", "ssh", "-launcher-exec", "/usr/bin/ssh", "--host", "a", "x"], &e), agent(&["/usr/bin/ssh"]));
        assert_eq!(starter(&["-bootstrap-exec", "/usr/bin/ssh", "--host", "a", "x"], &e), agent(&["/usr/bin/ssh"]));
        assert_eq!(starter(&["-bootstrap", "fork", "--host", "a,b", "true"], &e), Starter::Each(NodeStarter::Local));
        assert!(matches!(starter(&["-launcher", "ssh", "--host", "a", "x"], &e), Starter::Each(NodeStarter::Ssh(_))));
        // Hydra's ssh launcher without a host list runs here.
        assert_eq!(starter(&["-bootstrap", "ssh", "-np", "2", "true"], &e), Starter::Each(NodeStarter::Local));
        assert_eq!(
            usage_text(plan(&["-launcher", "slurm", "-launcher-exec", "/x/srun", "true"], &e)),
            "-launcher-exec /x/srun: only the ssh and rsh launchers start daemons through a command, not slurm; drop -launcher-exec"
        );
        let hydra = env(&[("PATH", "/bin"), ("HYDRA_LAUNCHER", "rsh")]);
        assert_eq!(starter(&["--host", "a", "x"], &hydra), agent(&["rsh"]));
        // The command line wins over the environment.
        assert!(matches!(starter(&["--launcher", "ssh", "--host", "a", "x"], &hydra), Starter::Each(NodeStarter::Ssh(_))));
        let bad = env(&[("PATH", "/bin"), ("HYDRA_LAUNCHER", "ll")]);
        assert!(usage_text(plan(&["true"], &bad)).starts_with("HYDRA_LAUNCHER=ll: expected ssh, rsh, fork, slurm, pbs, sge or lsf"));
    }

    #[test]
    fn hydra_sge_and_lsf_launchers_use_the_jobs_agent_inside_it_and_run_here_outside() {
        use std::os::unix::fs::PermissionsExt;
        let e = env(&[("PATH", "/bin")]);
        let starter = |words: &[&str], e: &Env| plan(words, e).unwrap().starter;
        assert_eq!(starter(&["-bootstrap", "lsf", "true"], &e), Starter::Each(NodeStarter::Local));
        assert_eq!(starter(&["-launcher", "sge", "-np", "2", "true"], &e), Starter::Each(NodeStarter::Local));
        let text = usage_text(plan(&["-bootstrap", "sge", "-hosts", "a", "true"], &e));
        assert!(text.contains("--launcher sge: not inside a Grid Engine parallel job"), "{text}");
        let dir = std::env::temp_dir().join(format!("rlaunch-resolve-sge-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("qrsh"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(dir.join("qrsh"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(dir.join("pe"), "g1 2 all.q@g1 UNDEFINED\ng2 2 all.q@g2 UNDEFINED\n").unwrap();
        // Only the scratch dir: this machine may have a real qrsh in /bin.
        let path = dir.to_string_lossy().into_owned();
        let job = env(&[("PATH", &path), ("JOB_ID", "7"), ("PE_HOSTFILE", dir.join("pe").to_str().unwrap())]);
        let qrsh = vec![dir.join("qrsh").to_string_lossy().into_owned(), "-inherit".to_string()];
        let system = launchers::start::batch::BatchSystem::GridEngine;
        let batch = Starter::Each(NodeStarter::Batch { system, argv: qrsh, here: launchers::local_hostname() });
        for words in [&["-bootstrap", "sge", "true"][..], &["-launcher", "sge", "-hosts", "g2", "true"], &["true"]] {
            assert_eq!(starter(words, &job), batch, "{words:?}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn hydra_host_file_is_read_when_no_hosts_are_given() {
        let file = std::env::temp_dir().join(format!("rlaunch-hydra-hosts-{}", std::process::id()));
        std::fs::write(&file, "h1:2\nh2:2\n").unwrap();
        let e = env(&[("PATH", "/bin"), ("HYDRA_HOST_FILE", file.to_str().unwrap())]);
        let p = plan(&["-n", "4", "x"], &e).unwrap();
        assert_eq!(p.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["h1", "h2"]);
        let p = plan(&["--host", "z", "x"], &e).unwrap();
        assert_eq!(p.nodes[0].name, "z");
        let _ = std::fs::remove_file(file);
    }

    #[test]
    fn open_mpi_reads_oversubscription_and_the_default_hostfile_from_mca_parameters() {
        let e = env(&[("PATH", "/bin")]);
        assert!(usage_text(plan(&["--host", "a", "-np", "2", "x"], &e)).contains("slots were found"));
        let p = plan(&["--mca", "rmaps_base_oversubscribe", "yes", "--host", "a", "-np", "2", "x"], &e).unwrap();
        assert!(p.notes.is_empty(), "{:?}", p.notes);
        let over = env(&[("PATH", "/bin"), ("OMPI_MCA_rmaps_base_oversubscribe", "1")]);
        assert!(plan(&["--host", "a", "-np", "2", "x"], &over).is_ok());
        assert!(usage_text(plan(&["--mca", "rmaps_base_oversubscribe", "0", "--host", "a", "-np", "2", "x"], &over)).contains("slots were found"));
        let file = std::env::temp_dir().join(format!("rlaunch-ompi-hosts-{}", std::process::id()));
        std::fs::write(&file, "h1 slots=2\n").unwrap();
        let e = env(&[("PATH", "/bin"), ("OMPI_MCA_orte_default_hostfile", file.to_str().unwrap())]);
        assert_eq!(plan(&["x"], &e).unwrap().nodes[0].name, "h1");
        let _ = std::fs::remove_file(file);
    }

    #[test]
    fn genvnone_and_genvlist_limit_what_remote_ranks_get() {
        let e = env(&[("PATH", "/bin"), ("LANG", "C"), ("A", "1")]);
        let remote = |extra: &[&str]| {
            let words: Vec<&str> = extra.iter().copied().chain(["--host", "n1", "x"]).collect();
            plan(&words, &e).map(|p| p.launch.env)
        };
        assert_eq!(remote(&[]).unwrap().len(), 3);
        assert_eq!(remote(&["-genvnone"]).unwrap(), []);
        assert_eq!(remote(&["-genvlist", "A,LANG"]).unwrap(), [("LANG".to_string(), Some("C".to_string())), ("A".into(), Some("1".into()))]);
        assert_eq!(usage_text(remote(&["-genvlist", "A,,B"]).map(|_| unreachable!())), "-genvlist A,,B: '' is not a valid environment variable name");
        // Local ranks inherit rlaunch's environment whatever the flag, as under Hydra.
        assert!(plan(&["-genvnone", "true"], &e).unwrap().launch.env.is_empty());
    }

    #[test]
    fn mpiexec_timeout_is_the_default_timeout_and_huge_timeouts_are_refused() {
        let e = env(&[("PATH", "/bin"), ("MPIEXEC_TIMEOUT", "30")]);
        assert_eq!(plan(&["true"], &e).unwrap().timeout, Some(Duration::from_secs(30)));
        assert_eq!(plan(&["--timeout", "5", "true"], &e).unwrap().timeout, Some(Duration::from_secs(5)));
        let bad = env(&[("PATH", "/bin"), ("MPIEXEC_TIMEOUT", "soon")]);
        assert_eq!(usage_text(plan(&["true"], &bad)), "MPIEXEC_TIMEOUT=soon: expected a positive number of seconds");
        let e = env(&[("PATH", "/bin")]);
        assert_eq!(usage_text(plan(&["--timeout", "1e20", "true"], &e)), "--timeout 1e20: expected at most 1e9 seconds (about 31 years)");
        assert_eq!(usage_text(plan(&["--timeout", "1e19", "true"], &e)), "--timeout 1e19: expected at most 1e9 seconds (about 31 years)");
        assert_eq!(usage_text(plan(&["--launch-timeout", "1e30", "true"], &e)), "--launch-timeout 1e30: expected at most 1e9 seconds (about 31 years)");
        assert_eq!(plan(&["--timeout", "1e9", "true"], &e).unwrap().timeout, Some(Duration::from_secs(1_000_000_000)));
    }

    #[test]
    fn span_balances_ranks_over_the_nodes_numbered_node_by_node() {
        let e = env(&[("PATH", "/bin")]);
        let p = plan(&["--dry-run", "-H", "a:4,b:4", "-np", "5", "--map-by", "package:span", "true"], &e).unwrap();
        assert_eq!((p.map.ranks_on(0), p.map.ranks_on(1)), (&[0, 1, 2][..], &[3, 4][..]));
        let p = plan(&["--dry-run", "-H", "a:4,b:4", "-np", "5", "--map-by", "package", "true"], &e).unwrap();
        assert_eq!(p.map.ranks_on(0), [0, 1, 2, 3], "without span a node's slots fill first");
        let p = plan(&["--dry-run", "-H", "a:4,b:4", "-np", "4", "--map-by", "core:span", "--rank-by", "node", "true"], &e).unwrap();
        assert_eq!(p.map.ranks_on(0), [0, 2], "an explicit --rank-by still decides the numbering");
    }

    #[test]
    fn prrte_parameters_are_named_as_unused_and_pmix_ones_reach_the_ranks() {
        let e = env(&[("PATH", "/bin")]);
        let p = plan(&["--prtemca", "plm_ssh_agent", "rsh", "--pmixmca", "ptl_base_if_include", "lo", "true"], &e).unwrap();
        assert_eq!(p.notes, ["--prtemca plm_ssh_agent: PRRTE parameters; rlaunch has no PRRTE, so they are not used"]);
        assert!(app_env(&p, 0).contains(&("PMIX_MCA_ptl_base_if_include".to_string(), "lo".to_string())), "{:?}", app_env(&p, 0));
    }

    #[test]
    fn placement_options_become_the_launch_policy() {
        let e = env(&[("PATH", "/bin")]);
        // --dry-run: a real run would first check the request against this machine's CPUs and GPUs.
        let p = plan(&["--dry-run", "--bind-to", "core", "--map-by", "ppr:1:node:PE=2", "--report-bindings", "--gpus-per-rank", "1", "true"], &e).unwrap();
        let pl = &p.launch.placement;
        assert!(pl.report);
        assert_eq!((pl.policy.bind.clone(), pl.policy.map.pe, pl.policy.gpus_per_rank), (Some(BindTo::Core), Some(2), 1));
        assert!(p.notes.is_empty(), "{:?}", p.notes);
        assert_eq!(plan(&["--dry-run", "--cpus-per-proc", "2", "-bind-to", "core:2", "true"], &e).unwrap().launch.placement.policy.map.pe, Some(2));
        assert!(usage_text(plan(&["--map-by", ":PE=100000", "true"], &e)).contains("PE=100000 asks for 100000 cores per rank"), "checked here for a job on this machine");
        assert_eq!(usage_text(plan(&["--cpus-per-proc", "2", "--map-by", "core:PE=4", "true"], &e)), "--map-by :PE=4 and --cpus-per-proc 2 ask for different CPUs per rank; give one");
        assert!(usage_text(plan(&["--rankfile", "/nonexistent/rf", "true"], &e)).starts_with("--rankfile /nonexistent/rf: cannot read it"));
        assert!(usage_text(plan(&["--bind-to", "user:0", "--cpus-per-proc", "2", "true"], &e)).contains("cannot be combined"));
        assert_eq!(plan(&["--bind-to", "none", "true"], &e).unwrap().launch.placement.policy.bind, Some(BindTo::None));
        assert_eq!(plan(&["true"], &e).unwrap().launch.placement.policy.bind, None, "Open MPI's default");
        let local = |more: &[&str]| plan(&[&["--launcher", "local", "--host", "a:2,b:2"], more, &["true"]].concat(), &e).unwrap().launch.placement.policy.bind;
        assert_eq!(local(&[]), Some(BindTo::None), "daemons sharing this machine do not bind by default");
        assert_eq!(local(&["--bind-to", "core"]), Some(BindTo::Core));
        let p = plan(&["-mca", "plm_rsh_args", "-p 22", "-mca", "btl", "self", "-mca", "orte_base_help_aggregate", "0", "true"], &e).unwrap();
        assert_eq!(p.notes, ["--mca plm_rsh_args, orte_base_help_aggregate: launcher (ORTE/PRRTE) parameters; the ranks get them, rlaunch does not use them"]);
        assert!(plan(&["--display-map", "true"], &e).unwrap().display_map);
        let p = plan(&["--map-by", "core", "--rank-by", "core", "-np", "2", "true"], &e).unwrap();
        assert!(p.notes.is_empty(), "{:?}", p.notes);
        assert_eq!(p.launch.placement.policy.rank_by, Some(fabrics::topology::ObjKind::Core));
        assert_eq!(p.launch.placement.policy.map.obj, fabrics::placement::MapObj::Core);
    }
}
