//! The command line: one clap definition of every flag (it renders `--help`, `man/rlaunch.1` and the
//! shell completions), mpirun-style argument normalisation, and resolution into a job plan.
//!
//! Parsing happens in two steps, as in ripgrep: [`parse`] only looks at the words (no I/O), and
//! [`resolve`] checks them against the system (programs, directories, CPU count).

use crate::spec::{AppContext, StdinTarget};
use anyhow::Result;
use clap::{ArgAction, CommandFactory, FromArgMatches, Parser};
use std::ffi::OsString;
use std::path::PathBuf;

pub const CONTRACT: &str = "\
EXIT STATUS:
  0    every rank exited with status 0
  N    the status of the first rank that failed; 128+N if it was killed by signal N
  2    bad command line or input (unknown flag, -np 0, missing or non-executable program,
       bad -x, unwritable --output-dir); one line on stderr says what is wrong
  124  --timeout expired; every rank was killed
  125  rlaunch itself failed (a daemon could not be started or reached, a link broke)

FAILURES:
  When a rank fails, rlaunch prints one line naming the rank, its pid and node and the cause,
  sends SIGTERM to every other rank's process group, then SIGKILL after a grace period (2 s).
  MPI_Abort(comm, N) ends the job with status N (1 when N is a multiple of 256). A rank that
  breaks the PMI protocol, or exits with status 0 after MPI_Init without MPI_Finalize, fails
  the job with status 1.

SIGNALS:
  SIGINT, SIGTERM, SIGHUP, SIGUSR1 and SIGUSR2 sent to rlaunch are forwarded to every rank.
  A second SIGINT (ctrl-C) within 5 s kills every rank with SIGKILL (exit 130).
  Each rank runs in its own process group; a rank's children are killed when it exits.
  If rlaunch dies, even by SIGKILL, its daemons and every rank are gone within 5 s.

ENVIRONMENT OF EACH RANK:
  RLAUNCH_RANK, RLAUNCH_SIZE, RLAUNCH_LOCAL_RANK, RLAUNCH_LOCAL_SIZE, RLAUNCH_NODE_RANK,
  RLAUNCH_NUM_NODES, RLAUNCH_JOBID, RLAUNCH_APPNUM, plus rlaunch's own environment and -x values.
  RLAUNCH_ENDPOINTS (the node's endpoint table, see rlaunch-endpoints(7)), RLAUNCH_NIC (the rank's
  NIC) and RLAUNCH_FABRIC (tcp or rdma), unless --fabric off.

MPMD:
  rlaunch -np 2 ./a : -np 3 ./b x y   runs ranks 0-1 as ./a and ranks 2-4 as ./b x y.
  After ':' only per-program options may appear (-n/-np, -x, --wdir).

NODES:
  Without --hostfile or --host, ranks run on this machine (slots = CPUs, more ranks allowed).
  With a node list, daemons start over ssh (or --launch-agent) in a tree of fan-out --fanout;
  asking for more ranks than slots is an error unless --oversubscribe.
  Remote ranks get rlaunch's environment except HOSTNAME, HOST, DISPLAY, XAUTHORITY, PWD,
  OLDPWD, SHLVL, _, SSH_*, and other launchers' variables (PMI_*, PMIX_*, OMPI_*, SLURM_*,
  RLAUNCH_*).

Single-dash long options (-np, -wdir, -timeout, ...) are accepted as in mpirun.";

#[derive(Parser, Debug, Clone)]
#[command(
    name = "rlaunch",
    version,
    about = "A fast, fabric-aware parallel job launcher (mpirun/mpiexec replacement)",
    long_about = "rlaunch starts PROGRAM as a parallel job of ranks. It starts one short-lived daemon per \
node, sends it the application context, and each daemon starts and supervises its own ranks.",
    after_long_help = CONTRACT,
    override_usage = "rlaunch [OPTIONS] PROGRAM [ARGS]... [: [OPTIONS] PROGRAM [ARGS]...]...",
    disable_help_subcommand = true,
    max_term_width = 100
)]
pub struct Cli {
    /// Number of ranks to start [default: the number of slots; on one node, the CPU count]
    #[arg(short = 'n', long = "np", value_name = "N", visible_alias = "n")]
    pub np: Option<u32>,

    /// Export VAR (from rlaunch's environment) or set VAR=VALUE in every rank; repeatable
    #[arg(short = 'x', long = "export", value_name = "VAR[=VALUE]", action = ArgAction::Append)]
    pub export: Vec<String>,

    /// Working directory of the ranks [default: the current directory]
    #[arg(long = "wdir", visible_alias = "wd", value_name = "DIR")]
    pub wdir: Option<PathBuf>,

    /// Kill the whole job after SECS seconds (fractions allowed) and exit with 124
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<f64>,

    /// Prefix every output line with "[RANK] "
    #[arg(short = 'l', long = "tag-output")]
    pub tag_output: bool,

    /// Write each rank's output to DIR/rank.N.stdout and DIR/rank.N.stderr instead of the terminal
    #[arg(long = "output-dir", value_name = "DIR")]
    pub output_dir: Option<PathBuf>,

    /// Which rank reads rlaunch's standard input: a rank number, "all" or "none"
    #[arg(long, value_name = "RANK|all|none", default_value = "0")]
    pub stdin: String,

    /// Print the process map (which rank runs where) and exit without starting anything
    #[arg(long = "dry-run")]
    pub dry_run: bool,

    /// Write a JSON report (job, map, per-rank exit status, launch phase timings) to FILE
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,

    /// Say more about what rlaunch does (phase timings; repeat for more)
    #[arg(short = 'v', long, action = ArgAction::Count)]
    pub verbose: u8,

    /// Read nodes and slots from FILE (lines like `node01`, `node01 slots=4 max_slots=8`, `node01:4`,
    /// `user@node01 slots=4`; `#` comments)
    #[arg(short = 'f', long = "hostfile", visible_aliases = ["machinefile"], value_name = "FILE")]
    pub hostfile: Option<PathBuf>,

    /// Nodes and slots as a list: h1:2,h2,user@h3:4
    #[arg(short = 'H', long = "host", value_name = "LIST")]
    pub host: Option<String>,

    /// Where ranks go: slot (fill each node's slots in order), node (round-robin), ppr:N:node
    #[arg(long = "map-by", value_name = "POLICY", default_value = "slot")]
    pub map_by: String,

    /// N ranks per node (the same as --map-by ppr:N:node)
    #[arg(short = 'N', long = "ppn", value_name = "N")]
    pub ppn: Option<u32>,

    /// How placed ranks are numbered: slot (consecutive on a node) or node (round-robin over nodes)
    /// [default: node with --map-by node, as in Open MPI; slot otherwise]
    #[arg(long = "rank-by", value_name = "POLICY")]
    pub rank_by: Option<String>,

    /// Allow more ranks than slots (max_slots stays a hard limit)
    #[arg(long)]
    pub oversubscribe: bool,

    /// How daemons start: local (every daemon on this machine, whatever the node names), ssh
    /// (in-process, the default with a node list), agent (--launch-agent), slurm (one srun step,
    /// the default inside a Slurm allocation), pbs (inside a PBS job: nodes from PBS_NODEFILE,
    /// daemons over ssh)
    #[arg(long, value_name = "KIND")]
    pub launcher: Option<String>,

    /// ssh: use only this private key (as `ssh -i FILE -o IdentitiesOnly=yes`) [default: the ssh
    /// agent, then ~/.ssh/id_ed25519, id_ecdsa, id_rsa]
    #[arg(long = "ssh-identity", value_name = "FILE")]
    pub ssh_identity: Option<PathBuf>,

    /// ssh: check host keys against FILE only [default: ~/.ssh/known_hosts and
    /// /etc/ssh/ssh_known_hosts]; unknown or changed host keys are refused
    #[arg(long = "ssh-known-hosts", value_name = "FILE")]
    pub ssh_known_hosts: Option<PathBuf>,

    /// ssh: port of the nodes' ssh servers
    #[arg(long = "ssh-port", value_name = "PORT")]
    pub ssh_port: Option<u16>,

    /// Start daemons with an rsh-like command, run as `CMD ARGS... HOST 'DAEMON __daemon'`
    /// (e.g. "ssh -x", "ip netns exec"-style wrappers); implies --launcher agent
    #[arg(long = "launch-agent", value_name = "CMD ARGS")]
    pub launch_agent: Option<String>,

    /// Tree fan-out: the front end starts and talks to at most K daemons; each daemon to K children
    #[arg(long, value_name = "K", default_value = "32")]
    pub fanout: u32,

    /// Let daemons start their own children (tree spawn) instead of the front end starting them all
    #[arg(long = "tree-spawn")]
    pub tree_spawn: bool,

    /// Path of the rlaunch binary on the nodes [default: this binary's path]
    #[arg(long = "daemon-path", value_name = "PATH")]
    pub daemon_path: Option<String>,

    /// Fail the job when a node's daemon has not connected after SECS seconds
    #[arg(long = "launch-timeout", value_name = "SECS", default_value = "30")]
    pub launch_timeout: f64,

    /// Never show launch progress
    #[arg(short = 'q', long)]
    pub quiet: bool,

    /// PMI: ranks reach rlaunch's PMI server by connecting to PMI_PORT (loopback TCP, rank named by
    /// PMI_ID) instead of inheriting a socket as PMI_FD
    #[arg(long = "pmi-port")]
    pub pmi_port: bool,

    /// PMI: fences carry no key-value data; a get of a key put on another node fetches it from
    /// that node (one tree round trip per missed key; pays off when ranks read few of the keys)
    #[arg(long = "pmi-lazy")]
    pub pmi_lazy: bool,

    /// Process-management interface for the ranks: pmi, pmix or auto
    #[arg(
        long = "mpi",
        value_name = "pmi|pmix|auto",
        default_value = "auto",
        long_help = "Process-management interface the ranks get; each rank gets exactly one, never both variable \
sets (an MPI library that finds two may pick the wrong one).\n\
pmi: rlaunch's PMI-1/PMI-2 server (MPICH, MVAPICH, Intel MPI): PMI_FD or PMI_PORT, PMI_RANK, PMI_SIZE.\n\
pmix: a PMIx server in each daemon through libpmix (Open MPI 4.x and 5.x): PMIX_NAMESPACE, PMIX_RANK, \
PMIX_SERVER_URI*, OMPI_MCA_schizo=^orte and OMPI_COMM_WORLD_*. libpmix.so.2 is loaded when a job needs it; \
without it such a job fails with a line saying what to install (apt-get install libpmix2).\n\
auto (default): the front end reads each program's linked libraries (ELF DT_NEEDED, nothing is run): \
libmpi.so.40/.20, libopen-pal, libopen-rte or libmpi_* (Open MPI) or libpmix choose pmix; libmpich*, \
libmpi.so.12 or libmpifort.so.12 (MPICH ABI) or libpmi/libpmi2 choose pmi; anything else (scripts, \
static or non-MPI programs, a program not found here) gets pmi. Open MPI and MPICH programs cannot share \
one job. Give --mpi pmix for an Open MPI program started through a script or an interpreter (mpi4py).\n\
Open MPI ranks adopt the node's hardware topology from their daemon's libpmix (shared memory) instead \
of each discovering it. When the job's fabric is TCP (see --fabric), they also get OMPI_MCA_pml=ob1, \
the transport Open MPI picks there anyway, so that no rank probes for absent InfiniBand/Omni-Path \
hardware; an OMPI_MCA_pml or OMPI_MCA_mtl of yours (environment or -x) or a pml/mtl selection in \
/etc/openmpi/openmpi-mca-params.conf or ~/.openmpi/mca-params.conf wins (an exclusion list such as \
^ucx is no selection).\n\
With --pmi-lazy, Open MPI ranks use their asynchronous modex (OMPI_MCA_pmix_base_async_modex=1, \
OMPI_MCA_pmix_base_collect_data=0): fences carry no data and each peer's data is fetched from its node \
on first use. Open MPI's own developers call skipping the fence unsupported (openpmix issue 2904), so it \
is not the default; rlaunch registers every rank with libpmix before any starts and has the ranks use \
libpmix's in-memory store, which removed the hangs and \"PML add procs failed\" errors Open MPI 4.1.4 \
showed in this mode (none in 200 jobs)."
    )]
    pub mpi: String,

    /// Network for rank endpoints: auto (RDMA when every node has an active port, else TCP), tcp,
    /// rdma, or off (no inventory exchange, no endpoint table)
    #[arg(long, value_name = "auto|tcp|rdma|off", default_value = "auto")]
    pub fabric: String,

    /// Use exactly these NICs (interface names, RDMA devices or DEVICE:PORT); local rank l gets the
    /// (l mod count)-th. A name missing on any node is an error naming that node
    #[arg(long, value_name = "NAME[,NAME]")]
    pub nic: Option<String>,

    /// Also set UCX_NET_DEVICES, NCCL_SOCKET_IFNAME, NCCL_IB_HCA, FI_PROVIDER (and friends) to each
    /// rank's NIC; a variable given with -x is left alone
    #[arg(long = "nic-env")]
    pub nic_env: bool,

    /// Start a daemon on every node, print each node's network devices (interfaces, RDMA ports,
    /// state, speed, addresses, GID/LID) as one table, and exit; runs no program
    #[arg(long)]
    pub inventory: bool,

    /// With --inventory: print JSON instead of a table
    #[arg(long)]
    pub json: bool,

    /// Generate documentation: "man", or completions for "bash", "zsh", "fish", "elvish", "powershell"
    #[arg(long, value_name = "WHAT", hide = true)]
    pub generate: Option<String>,

    /// The program to run and its arguments
    #[arg(value_name = "PROGRAM", trailing_var_arg = true, allow_hyphen_values = true)]
    pub program: Vec<String>,
}

/// Options that may appear after a ':' (they belong to one application context).
const PER_APP: &[&str] = &["np", "export", "wdir", "program"];

#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("{0}")]
    Msg(String),
    /// --help / --version: print and exit 0.
    #[error("{0}")]
    Display(String),
}

fn usage(msg: impl Into<String>) -> UsageError {
    UsageError::Msg(msg.into())
}

/// What the words on the command line ask for.
#[derive(Debug)]
pub struct Parsed {
    pub global: Cli,
    /// One per MPMD context: its own -np, -x, --wdir and program.
    pub apps: Vec<Cli>,
}

struct OptInfo {
    takes_value: bool,
}

fn lookup_long(cmd: &clap::Command, name: &str) -> Option<OptInfo> {
    cmd.get_arguments().find_map(|a| {
        let matches = a.get_long() == Some(name) || a.get_all_aliases().is_some_and(|v| v.contains(&name));
        matches.then(|| OptInfo { takes_value: a.get_action().takes_values() })
    })
}

fn lookup_short(cmd: &clap::Command, c: char) -> Option<OptInfo> {
    cmd.get_arguments().find_map(|a| (a.get_short() == Some(c)).then(|| OptInfo { takes_value: a.get_action().takes_values() }))
}

/// Splits argv at ':' into application segments and rewrites each into a form clap parses: single-dash
/// long options become double-dash, and `--` goes before the program so that everything after it
/// belongs to the program.
pub fn normalize(cmd: &clap::Command, args: &[String]) -> Result<Vec<Vec<String>>, UsageError> {
    let mut segments = vec![Vec::new()];
    let mut i = 0;
    let mut in_program = false;
    while i < args.len() {
        let a = &args[i];
        let seg = segments.last_mut().unwrap();
        i += 1;
        if a == ":" {
            segments.push(Vec::new());
            in_program = false;
            continue;
        }
        if in_program {
            seg.push(a.clone());
            continue;
        }
        if a == "--" {
            seg.push(a.clone());
            in_program = true;
            continue;
        }
        if let Some(long) = a.strip_prefix("--") {
            let (name, has_eq) = match long.split_once('=') {
                Some((n, _)) => (n, true),
                None => (long, false),
            };
            let Some(o) = lookup_long(cmd, name) else {
                return Err(usage(format!("unknown option '--{name}'; see 'rlaunch --help'")));
            };
            seg.push(a.clone());
            if !has_eq && o.takes_value && i < args.len() {
                seg.push(args[i].clone());
                i += 1;
            }
            continue;
        }
        if a.len() > 1 && a.starts_with('-') {
            let body = &a[1..];
            let (name, has_eq) = match body.split_once('=') {
                Some((n, _)) => (n, true),
                None => (body, false),
            };
            if name.chars().count() > 1 {
                if let Some(o) = lookup_long(cmd, name) {
                    seg.push(format!("-{a}"));
                    if !has_eq && o.takes_value && i < args.len() {
                        seg.push(args[i].clone());
                        i += 1;
                    }
                    continue;
                }
            }
            // A cluster of short flags; the first that takes a value swallows the rest or the next word.
            // Each flag goes to clap as a word of its own: given a cluster like `-n4` whose value
            // is not itself a flag letter, clap would take the whole word for the hyphen-allowing
            // PROGRAM.
            for (pos, c) in body.char_indices() {
                match lookup_short(cmd, c) {
                    Some(o) if o.takes_value => {
                        seg.push(format!("-{c}"));
                        let rest = &body[pos + c.len_utf8()..];
                        if !rest.is_empty() {
                            seg.push(rest.strip_prefix('=').unwrap_or(rest).to_string());
                        } else if i < args.len() {
                            seg.push(args[i].clone());
                            i += 1;
                        }
                        break;
                    }
                    Some(_) => seg.push(format!("-{c}")),
                    None => return Err(usage(format!("unknown option '-{c}' in '{a}'; see 'rlaunch --help'"))),
                }
            }
            continue;
        }
        // The first plain word is the program.
        seg.push("--".into());
        seg.push(a.clone());
        in_program = true;
    }
    Ok(segments)
}

fn clap_error(e: clap::Error) -> UsageError {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => UsageError::Display(e.render().to_string()),
        _ => {
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("invalid command line").trim_start_matches("error: ").to_string();
            usage(format!("{first}; see 'rlaunch --help'"))
        }
    }
}

pub fn parse(args: &[String]) -> Result<Parsed, UsageError> {
    let mut cmd = Cli::command();
    // Building adds the automatic --help/--version arguments, so that normalize knows them.
    cmd.build();
    let segments = normalize(&cmd, args)?;
    let mut apps = Vec::new();
    let mut global = None;
    for (i, seg) in segments.iter().enumerate() {
        let mut argv = vec!["rlaunch".to_string()];
        argv.extend(seg.iter().cloned());
        let matches = Cli::command().try_get_matches_from(argv).map_err(clap_error)?;
        let cli = Cli::from_arg_matches(&matches).map_err(clap_error)?;
        if i > 0 {
            for arg in Cli::command().get_arguments() {
                let id = arg.get_id().as_str();
                if matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine) && !PER_APP.contains(&id) {
                    return Err(usage(format!(
                        "option --{id} applies to the whole job; put it before the first program, not after ':'"
                    )));
                }
            }
        }
        if cli.inventory && !cli.program.is_empty() {
            return Err(usage(format!("--inventory runs no program; drop '{}' or --inventory", cli.program.join(" "))));
        }
        if cli.generate.is_none() && !cli.inventory && cli.program.is_empty() {
            return Err(usage(if segments.len() > 1 {
                format!("no program given in application context {} (between ':' separators)", i + 1)
            } else {
                "no program given; usage: rlaunch [OPTIONS] PROGRAM [ARGS]...".to_string()
            }));
        }
        if global.is_none() {
            global = Some(cli.clone());
        }
        apps.push(cli);
    }
    Ok(Parsed { global: global.expect("at least one segment"), apps })
}

pub fn parse_stdin(s: &str) -> Result<StdinTarget, UsageError> {
    match s {
        "none" => Ok(StdinTarget::None),
        "all" => Ok(StdinTarget::All),
        n => n
            .parse::<u32>()
            .map(StdinTarget::Rank)
            .map_err(|_| usage(format!("--stdin {n}: expected a rank number, 'all' or 'none'"))),
    }
}

/// `-x VAR` or `-x VAR=value` → (VAR, value). A bare VAR takes rlaunch's own value.
pub fn parse_export(spec: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<(String, String), UsageError> {
    let (name, value) = match spec.split_once('=') {
        Some((n, v)) => (n, Some(v.to_string())),
        None => (spec, None),
    };
    let valid = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(usage(format!("-x {spec}: '{name}' is not a valid environment variable name")));
    }
    let value = match value {
        Some(v) => v,
        None => lookup(name).ok_or_else(|| usage(format!("-x {name}: {name} is not set in rlaunch's environment; use -x {name}=VALUE")))?,
    };
    Ok((name.to_string(), value))
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
) -> Result<Vec<AppContext>, UsageError> {
    let mut out = Vec::new();
    for (i, a) in parsed.apps.iter().enumerate() {
        // Global -x values apply to every context; a context's own come after and win.
        let mut env = Vec::new();
        let exports = if i == 0 { a.export.clone() } else { parsed.global.export.iter().chain(a.export.iter()).cloned().collect() };
        for x in &exports {
            let (k, v) = parse_export(x, lookup)?;
            env.retain(|(n, _): &(String, Option<String>)| n != &k);
            env.push((k, Some(v)));
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
        out.push(AppContext { argv: a.program.clone(), env, cwd: wdir.to_string_lossy().into_owned(), np });
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

pub fn to_strings(args: Vec<OsString>) -> Result<Vec<String>, UsageError> {
    args.into_iter()
        .map(|a| a.into_string().map_err(|a| usage(format!("argument {a:?} is not valid UTF-8"))))
        .collect()
}

/// `rlaunch --generate WHAT`: the man page or shell completions, from the same flag table.
pub fn generate(what: &str, out: &mut dyn std::io::Write) -> Result<(), UsageError> {
    let cmd = Cli::command();
    match what {
        "man" => clap_mangen::Man::new(cmd).render(out).map_err(|e| usage(format!("rendering the man page: {e}"))),
        shell => {
            let sh: clap_complete::Shell = shell
                .parse()
                .map_err(|_| usage(format!("--generate {shell}: expected man, bash, zsh, fish, elvish or powershell")))?;
            let mut cmd = cmd;
            clap_complete::generate(sh, &mut cmd, "rlaunch", out);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn single_dash_long_options_and_program_boundary() {
        let p = parse(&s(&["-np", "4", "-wdir", "/tmp", "-x", "A=1", "./app", "-np", "--x"])).unwrap();
        assert_eq!(p.global.np, Some(4));
        assert_eq!(p.global.wdir, Some(PathBuf::from("/tmp")));
        assert_eq!(p.global.export, vec!["A=1"]);
        assert_eq!(p.global.program, s(&["./app", "-np", "--x"]));
    }

    #[test]
    fn forms_of_np() {
        for argv in [&["-n", "3", "a"][..], &["-np", "3", "a"], &["--np", "3", "a"], &["--np=3", "a"], &["-n3", "a"], &["--n", "3", "a"]] {
            assert_eq!(parse(&s(argv)).unwrap().global.np, Some(3), "{argv:?}");
        }
    }

    #[test]
    fn mpmd_segments() {
        let p = parse(&s(&["-l", "-np", "2", "./a", ":", "-np", "3", "./b", "x", "y"])).unwrap();
        assert_eq!(p.apps.len(), 2);
        assert_eq!(p.apps[0].program, s(&["./a"]));
        assert_eq!(p.apps[1].np, Some(3));
        assert_eq!(p.apps[1].program, s(&["./b", "x", "y"]));
        assert!(p.global.tag_output);
    }

    #[test]
    fn global_option_after_colon_is_refused() {
        let e = parse(&s(&["-np", "1", "a", ":", "--timeout", "3", "b"])).unwrap_err().to_string();
        assert!(e.contains("--timeout applies to the whole job"), "{e}");
    }

    #[test]
    fn unknown_flag_is_one_line() {
        let e = parse(&s(&["--bogus", "a"])).unwrap_err().to_string();
        assert_eq!(e, "unknown option '--bogus'; see 'rlaunch --help'");
        let e = parse(&s(&["-j", "a"])).unwrap_err().to_string();
        assert_eq!(e, "unknown option '-j' in '-j'; see 'rlaunch --help'");
        let e = parse(&s(&["--np", "x", "a"])).unwrap_err().to_string();
        assert!(!e.contains('\n') && e.contains("'x'"), "{e}");
    }

    #[test]
    fn exports() {
        let env = |k: &str| (k == "HOME").then(|| "/root".to_string());
        assert_eq!(parse_export("A=b=c", &env).unwrap(), ("A".into(), "b=c".into()));
        assert_eq!(parse_export("HOME", &env).unwrap(), ("HOME".into(), "/root".into()));
        assert!(parse_export("NOPE", &env).unwrap_err().to_string().contains("NOPE is not set"));
        assert!(parse_export("1A=x", &env).unwrap_err().to_string().contains("not a valid"));
        assert!(parse_export("=x", &env).is_err());
    }

    #[test]
    fn stdin_targets() {
        assert_eq!(parse_stdin("none").unwrap(), StdinTarget::None);
        assert_eq!(parse_stdin("all").unwrap(), StdinTarget::All);
        assert_eq!(parse_stdin("3").unwrap(), StdinTarget::Rank(3));
        assert!(parse_stdin("x").is_err());
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
}
