//! Every flag, defined once: the clap table renders `--help`, `man/rlaunch.1` and the shell
//! completions. Choice flags are parsed into their types here, by value parsers, so a bad value is
//! a usage error before anything else runs and no later step parses a string again.

use super::error::{usage, UsageError};
use crate::pmix::MpiFlag;
use crate::spec::{RestartScope, StdinTarget};
use clap::{ArgAction, CommandFactory, Parser};
use fabrics::endpoints::FabricChoice;
use fabrics::placement::{BindTo, MapObj, MapPolicy};
use fabrics::topology::ObjKind;
use launchers::map::{MapBy, RankBy};
use launchers::LauncherKind;
use std::fmt::Display;
use std::path::PathBuf;
use std::str::FromStr;

pub const CONTRACT: &str = "\
EXIT STATUS:
  0    every rank exited with status 0
  N    the status of the first rank that failed; 128+N if it was killed by signal N
  2    bad command line or input (unknown flag, -np 0, missing or non-executable program,
       bad -x, unwritable --output-dir); one line on stderr says what is wrong
  124  --timeout expired; every rank was killed
  125  rlaunch itself failed (a daemon could not be started or reached, a link broke), or the
       job's output could not be written (one line names the stream or file and the error)
  129  the terminal or session rlaunch writes to hung up; every rank was terminated
  141  rlaunch's standard output or error was closed (the reader of a pipe exited); every rank
       was terminated, nothing is printed

FAILURES:
  When a rank fails, rlaunch prints one line naming the rank, its pid and node and the cause,
  sends SIGTERM to every other rank's process group, then SIGKILL after a grace period (2 s).
  MPI_Abort(comm, N) ends the job with status N (1 when N is a multiple of 256). A rank that
  breaks the PMI protocol, or exits with status 0 after MPI_Init without MPI_Finalize, fails
  the job with status 1.
  A node is lost when its daemon dies or nothing comes over its link for --heartbeat-timeout;
  its children reconnect to their nearest live ancestor. A lost node whose ranks still run ends
  the job (exit 125, one line naming it and why); a spare (--spare) or a node whose ranks had
  ended is one line, and the job goes on.

RESTARTS (--max-restarts N, --restart-scope rank|job):
  A rank that exits non-zero or is killed by a signal is restarted instead of ending the job,
  with one line saying so (\"rlaunch: rank 3 (n2) killed by SIGKILL; restarting it (1 of 3)\").
  Rank scope: the rank alone starts again on its node, same binding and environment, while the
  others go on; N counts restarts of each rank. Job scope: every rank is stopped (SIGTERM, then
  SIGKILL after the grace period) and all start again with a fresh PMI key-value space or PMIx
  namespace named after the new generation; N counts restarts of the job. Not restarted: exit
  status 0, MPI_Abort, a program that cannot start, anything after ctrl-C, --timeout or another
  failure, and a restarted rank (or job) that fails again within 1 s of running again (one line
  says so). When N is spent, the job ends as without restarts, plus one line saying so. Output
  of every run of a rank is tagged as that rank's; --report lists every restart (time, ranks,
  node, scope, reason, generation, milliseconds until running again) and the final generation;
  the ranks in it are the last generation's. A restarted rank gets no stdin that came before.

SIGNALS:
  SIGINT, SIGTERM, SIGHUP, SIGUSR1 and SIGUSR2 sent to rlaunch are forwarded to every rank.
  A second SIGINT (ctrl-C) within 5 s kills every rank with SIGKILL (exit 130).
  Each rank runs in its own process group; a rank's children are killed when it exits.
  Descendants that left it (setsid, daemonizing) are killed when the job ends: each daemon is
  their subreaper, and where cgroup v2 is writable the ranks run in a cgroup of the job.
  If rlaunch dies, even by SIGKILL, its daemons and every rank are gone within 5 s.

ENVIRONMENT OF EACH RANK:
  RLAUNCH_RANK, RLAUNCH_SIZE, RLAUNCH_LOCAL_RANK, RLAUNCH_LOCAL_SIZE, RLAUNCH_NODE_RANK,
  RLAUNCH_NUM_NODES, RLAUNCH_JOBID, RLAUNCH_APPNUM, plus rlaunch's own environment and -x values.
  RLAUNCH_RESTARTS (how often this rank's process was restarted; 0 on its first start) and
  RLAUNCH_GENERATION (the job's generation: 0, +1 per job-scope restart).
  PWD is the rank's working directory; SSH_* variables reach a rank only through -x.
  RLAUNCH_ENDPOINTS (the node's endpoint table, see rlaunch-endpoints(7)), RLAUNCH_NIC (the rank's
  NIC) and RLAUNCH_FABRIC (tcp or rdma), unless --fabric off.
  MPI programs (as --mpi auto reads them) get what their daemon knows, each left out for a rank
  whose user set any variable of that library (environment or -x): with two or more MPICH ranks
  on a node, HWLOC_XMLFILE (the node's hwloc topology, exported once by its daemon) and
  HWLOC_THISSYSTEM=1; when the whole job is on one node, UCX_TLS=^sysv,tcp (^tcp when /dev/shm
  has less than 16 MiB free per rank).

SENSORS (--sensors, --sensor CMD):
  Each daemon samples its node every --sensor-interval SECS (default 5) on a thread of its own;
  a sensor's state is ok, degrading, failed or unknown. Only a change of state travels to the
  front end: degrading and failed are one line each on stderr (ok again, and a source that
  cannot be read, with -v), and --report lists every change per node (nodes[].sensors: time,
  sensor, state, reading, reason, and the node's health: its worst sensor). Bad news counts at
  once; a return to a better state (or to unknown) needs 3 samples in a row that agree, so a
  flapping reading changes the state once. rlaunch does not move ranks off a node yet: a
  degrading or failed node changes nothing in the job (the line says no action).
  Built-in sensors (--sensors), read under / (sysfs and procfs):
  thermal:ZONE    /sys/class/thermal/thermal_zone*/temp against trip_point_*_temp of type
                  passive, hot and critical: degrading within --sensor-temp-margin C (5) of the
                  lowest hot or critical trip point, or at a passive one (CPUs throttled);
                  failed at a critical one; unknown for a zone without such trip points
  edac:MC         /sys/devices/system/edac/mc/mc*/ce_count and ue_count, counted from the first
                  sample: degrading at --sensor-edac-ce N (10) corrected errors, failed at one
                  uncorrected error
  memory          MemAvailable in /proc/meminfo: degrading below --sensor-mem-floor SIZE|PCT%
                  (5% of MemTotal), failed below a quarter of it
  nic:NAME        the NICs the node's ranks were given (RLAUNCH_NIC), from the fabric exchange
                  on: /sys/class/net/NAME/operstate and carrier (failed when down),
                  statistics/rx_errors + tx_errors + rx_dropped (degrading at --sensor-nic-errors N
                  (100) new between two samples); an RDMA port DEV:PORT: its state (failed unless
                  ACTIVE) and error counters under /sys/class/infiniband/DEV/ports/PORT
  load            the 1-minute load average in /proc/loadavg: degrading above --sensor-load-factor
                  F (4) times the CPUs in /sys/devices/system/cpu/online
  A source that is missing or unreadable (no EDAC driver, no thermal zone) is said once, with
  -v, and the sensor stays unknown.
  User sensors (--sensor CMD, repeatable): CMD runs as sh -c CMD on every node each interval,
  in a process group of its own, with RLAUNCH_NODE_RANK, RLAUNCH_NODE_NAME and RLAUNCH_JOBID
  set, stdin and stderr /dev/null. Exit status 0 is ok, 1 degrading, 2 failed, any other
  unknown; the first line of its stdout is the reason. A CMD still running when its interval is
  over is killed (its process group) and counts as unknown; it never holds up the daemon.

RECOVERY IMAGES (man 3 rlaunch_image):
  A rank saves images of its state through librlaunch_image (rli_save, or rli_poll when
  --image-interval asks); its daemon keeps them in memory, copies them to --image-copies - 1
  partner daemons and, with --image-dir, to disk. A restarted rank loads its image (rli_load):
  the latest epoch every rank saved, or its own latest. Each rank gets RLAUNCH_IMAGE_FD.

MPMD:
  rlaunch -np 2 ./a : -np 3 ./b x y   runs ranks 0-1 as ./a and ranks 2-4 as ./b x y.
  After ':' only per-program options may appear (-n/-np, -x, --wdir, -env, -H).

NODES:
  Without --hostfile or --host, ranks run on this machine (slots = CPUs, more ranks allowed).
  With a node list, daemons start over ssh (or --launch-agent) in a tree of fan-out --fanout;
  asking for more ranks than slots is an error unless --oversubscribe.
  Inside a batch job the job's nodes are used: Slurm (SLURM_JOB_NODELIST, one srun step), PBS
  (PBS_NODEFILE), Grid Engine (JOB_ID with PE_HOSTFILE: HOST SLOTS per line; NSLOTS is not
  needed) and LSF (LSB_JOBID with LSB_DJOB_HOSTFILE, else LSB_MCPU_HOSTS). Grid Engine daemons
  start through qrsh -inherit (the PE needs control_slaves TRUE) and LSF daemons through
  blaunch, so the job tracks them, where those are on PATH, else over ssh; the daemon of the
  front end's own host is forked. PBS daemons start over ssh (pbsdsh cannot give a daemon a
  private stdin for the job key). A node list must be part of the job's nodes.
  The front end listens for its daemons only on the address they are told to use (the one this
  machine reaches the nodes from, or --bind-address), and says only the first rejected frame.
  Remote ranks get rlaunch's environment except HOSTNAME, HOST, DISPLAY, XAUTHORITY, PWD,
  OLDPWD, SHLVL, _, SSH_*, and other launchers' variables (PMI_*, PMIX_*, OMPI_*, SLURM_*,
  RLAUNCH_*).

Single-dash long options (-np, -wdir, -timeout, ...) are accepted as in mpirun.

COMPATIBILITY, OPEN MPI (mpirun):
  --mca K V, -mca K V, --gmca K V   every rank gets OMPI_MCA_K=V (before -x, which wins); -v names
                                    launcher-level ones (plm_, rmaps_, oob_, ...) as unused by rlaunch
  rmaps_base_oversubscribe, orte_default_hostfile (prte_default_hostfile)
                                    read by rlaunch as Open MPI reads them: --mca, else
                                    OMPI_MCA_* (PRTE_MCA_*) in the environment
  -c N                              as -np N
  --allow-run-as-root               accepted; rlaunch needs no such permission
  --npernode N, --pernode           N (1) ranks per node, as --ppn N
  --nooversubscribe                 never more ranks than slots, also on this machine alone
  -bynode                           --map-by node (Open MPI's older spelling)
  --map-by P:OVERSUBSCRIBE, :NOOVERSUBSCRIBE, :SPAN, :PE=n, :HWTCPUS
                                    modifiers of --map-by; SPAN balances the ranks over the
                                    nodes (as --map-by node, numbered node by node) before each
                                    node places its own; PE=n and HWTCPUS are placement (below)
  --display-map                     print the map (as --dry-run) on stdout, then run
  --output-filename DIR[:nojobid,nocopy]
                                    DIR/1/rank.N/stdout and stderr (N zero-padded to the digits
                                    of the job size), as Open MPI 4.1; also on the terminal
                                    unless nocopy; files are byte-exact, untagged
  --merge-stderr-to-stdout          a rank's stderr goes where its stdout goes
  --timestamp-output                each line on the terminal starts with the local time, as
                                    ctime(3) writes it (before -l's tag); files stay exact
  --prefix DIR                      ranks get DIR/bin first in PATH, DIR/lib in LD_LIBRARY_PATH
  --pmixmca K V                     every rank gets PMIX_MCA_K=V (Open MPI 5)
  --prtemca K V                     PRRTE's; rlaunch has none, -v names them as unused
  --report-pid FILE|-|+             rlaunch's pid to FILE, stdout (-) or stderr (+), first
  --output tag,timestamp,merge-stderr,dir=DIR,nocopy
                                    Open MPI 5's spelling of -l, --timestamp-output,
                                    --merge-stderr-to-stdout and --output-filename DIR[:nocopy]
  --display map,allocation,bind     --display-map (map, allocation), --report-bindings (bind)
  -bysocket, -bycore, -byslot       --map-by socket, core, slot (older Open MPI)
  -npersocket N                     --map-by ppr:N:package (older Open MPI)
  --bind-to-core, --bind-to-socket, --bind-to-none
                                    --bind-to core, socket, none (older Open MPI)
  --bind-to X:overload-allowed, :if-supported, :REPORT, :ordered
                                    more ranks than cores share them; a binding the node cannot
                                    give leaves ranks unbound; as --report-bindings; (as given)
  --bind-to board                   one board per node: all of the node's CPUs
  -rf FILE                          --rankfile FILE
  --display-allocation, --display-devel-map
                                    --display-map
  --debug-daemons                   -vv
  --nolocal                         no ranks on the machine rlaunch runs on (also Intel MPI)
  --hetero-nodes, --noprefix, --leave-session-attached, --report-child-jobs-separately
                                    accepted: what rlaunch always does
  -am FILE[,FILE]                   the files' `name = value` lines, as --mca name value given
                                    first (Open MPI's aggregate MCA parameter files)
  --tune FILE[,FILE]                the files' -x VAR[=VALUE] and --mca/-mca K V words, as if given
                                    first on the command line (whose own values win); any other
                                    word in them is an error, as in Open MPI
  --host a,b                        one slot per host named without a count; more ranks than
                                    slots is an error (unless --oversubscribe)
  -np 1 -H a ./m : -np 4 -H b:4 ./w per-context hosts: when a context after ':' has its own -H,
                                    each context's ranks fill the free slots of its own hosts
                                    (the job's nodes are all of them, or the host file's);
                                    a context without -H uses every node
  --map-by seq                      rank i on the host of the i-th line of --hostfile (or entry
                                    of --host); one rank per line, counts do not matter

COMPATIBILITY, MPICH HYDRA AND INTEL MPI (mpiexec):
  -genv VAR VALUE, -genv VAR=VALUE  every rank gets VAR=VALUE (before -x, which wins)
  -env VAR VALUE                    the ranks of this context (also after ':') get VAR=VALUE
  -genvall, -envall                 the ranks get rlaunch's environment: rlaunch's default
  -genvnone, -genvlist A,B          ranks on other nodes get none of rlaunch's environment, or
                                    only A and B (and -genv/-x values); on this machine ranks
                                    inherit it all, as Hydra's forked proxies do
  -envnone, -envlist A,B            the same for one context (also after ':'): its ranks on other
                                    nodes get none, or only A and B, of rlaunch's environment;
                                    -envall gives a context all of it under -genvnone
  -hosts a,b, -hosts a:2,b:4        each host in turn takes its count of consecutive ranks (1
                                    without a count), wrapping around: -hosts a,b -n 4 gives a
                                    ranks 0,2 and b ranks 1,3 (Open MPI's --host is an error there)
  -ppn N, -perhost N                each node in turn takes N consecutive ranks, wrapping around
                                    (rlaunch's --ppn N and Open MPI's --npernode N refuse more
                                    than N per node)
  -rr                               round-robin: -ppn 1
  -f, -machinefile, -hostfile, -machine FILE
                                    the host file (as --hostfile); more ranks than its slots is
                                    an error, where Hydra wraps around
  -launcher K, -bootstrap K         ssh (rlaunch's ssh; without a host list the job runs here),
                                    rsh, fork (every daemon here), slurm, pbs, sge (qrsh -inherit),
                                    lsf (blaunch; sge and lsf without a host list: the job's
                                    hosts inside its job, else here); rlaunch's own --launcher
                                    keeps its names
  -launcher-exec P, -bootstrap-exec P
                                    daemons start through P (ssh or rsh), as --launch-agent P
  -iface NAME                       the NIC, as --nic NAME
  -l, -prepend-rank                 prefix output lines with \"[RANK] \", as --tag-output
  -prepend-pattern P                prefix output lines with P: %r rank, %h host, %g 0, %% a '%'
  -print-rank-map                   as --display-map
  -outfile-pattern P, -errfile-pattern P
                                    each rank's stdout (stderr) appended to the file P names:
                                    %r rank, %h host, %g 0 (one process group), %% a '%'
  -s RANK|all|none                  which rank reads stdin, as --stdin
  -disable-x                        no X11 forwarding: what rlaunch always does
  -demux poll|select                accepted: rlaunch multiplexes output with its own loop
  -path DIR                         DIR first in the ranks' PATH (where programs are found)
  HYDRA_HOST_FILE, HYDRA_LAUNCHER, HYDRA_LAUNCHER_EXEC
                                    read when the command line gives no host list or launcher
  MPIEXEC_TIMEOUT=SECS              as --timeout SECS when --timeout is not given (Open MPI's
                                    mpirun reads it too)
  MPIEXEC_PORT_RANGE=LOW:HIGH (or MPICH_PORT_RANGE)
                                    the front end and the daemons listen for each other only on
                                    these TCP ports (for firewalls between nodes)
  -print-all-exitcodes              at the end, one line per rank on stderr with its exit status
  -usize N, -usize SYSTEM           the universe size ranks are told (MPI_UNIVERSE_SIZE), or the
                                    slots of the job's nodes; without it, the job's size (PMI)
  Exit status with several failing ranks: Hydra reports the highest, rlaunch the first.

PLACEMENT (both families; each node's own topology, within the CPUs its daemon may use):
  --map-by core|hwthread|slot|node  a node's ranks take cores (hardware threads) in order;
                                    --map-by l3cache|numa|package (socket) deals them round-robin
                                    over those objects, ppr:N:OBJ puts N on each in turn (ranks
                                    still fill each node's slots first)
  --map-by ...:PE=n, --cpus-per-proc n (--cpus-per-rank)
                                    n cores per rank, each rank bound to its n cores
  --bind-to none|hwthread|core|l3cache|numa|package (socket), -bind-to core:N (Hydra: PE=N),
  -bind-to user:0+1,2+3 (Hydra: the CPUs of each local rank in turn; Intel: -binding)
                                    default as Open MPI: core when a node's ranks fit its cores,
                                    otherwise none (none with --launcher local and several
                                    nodes); more ranks than cores with --bind-to core or PE=n is
                                    an error naming the node
  --use-hwthread-cpus               hardware threads are the unit instead of cores
  --gpus-per-rank N                 N GPUs per rank, same NUMA node first, not shared while
                                    enough exist: CUDA_VISIBLE_DEVICES (with CUDA_DEVICE_ORDER=
                                    PCI_BUS_ID), ROCR_VISIBLE_DEVICES, ZE_AFFINITY_MASK,
                                    RLAUNCH_GPUS (PCI addresses)
  --report-bindings                 one line per rank on stderr before the ranks start: rank,
                                    node, CPU list, picture ([BB/..][../..]: packages, cores,
                                    B = a hardware thread the rank may use); --dry-run shows the
                                    same from this machine's topology
  Ranks are bound before exec (MPICH needs no HYDRA binding); the NIC of each rank is the
  nearest to its GPUs or CPUs (RLAUNCH_NIC, and UCX_NET_DEVICES/NCCL_IB_HCA with --nic-env).
  --rank-by hwthread|core|l3cache|numa|package (socket): a node's ranks, in order, take its
  mapped places round-robin over those objects (--map-by package --rank-by core: ranks 0 and 1
  on package 0).
  --rankfile FILE, -rf FILE         Open MPI's rank file: lines `rank N=HOST slot=SPEC`, HOST a
                                    name or +nK (the K-th node), SPEC CPUs as the kernel numbers
                                    them (0-3) or package:cores in logical order (1:0-2, or
                                    0:0-1,1:0-1); every rank 0..N-1 needs a line, runs on its
                                    host, bound to its slot; without a node list the file's hosts
                                    are the job's

COMPATIBILITY, CRAY PALS (mpiexec on HPE Cray systems; placement, see PLACEMENT):
  --cpu-bind none|core|numa|socket|thread
                                    as --bind-to none|core|numa|package|hwthread
  --cpu-bind depth, -d N, --depth N each rank on its own N CPUs (as --cpus-per-proc N)
  --cpu-bind list:C:C..., mask:M:M...
                                    local rank i on the i-th CPU list (0-3,8) or hex mask, cyclically
  --gpu-bind list:G:G...            local rank i gets the i-th GPU list, cyclically
  -ppn N                            as Hydra's -ppn

APPLICATION FILES (both families):
  --app FILE (Open MPI), -configfile FILE (Hydra, Intel MPI), given last in place of the
  program: FILE holds one application context per line (-np 2 ./a x), as if joined by ':'.

NOT SUPPORTED (one line names the option and says why or what to use instead):
  -enable-x, -ckpointlib (BLCR), Intel's -trace, -gtool and -check_mpi, -gdb, --debug, -xterm,
  -disable-auto-cleanup, --preload-binary, --preload-files, -ompi-server, --personality, --xml.";

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
    #[arg(short = 'n', short_alias = 'c', long = "np", value_name = "N", visible_alias = "n")]
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

    /// With --timeout: when it expires, print the stack of every rank still running (with
    /// eu-stack or gdb on its node) before ending them
    #[arg(long = "get-stack-traces")]
    pub get_stack_traces: bool,

    /// Prefix every output line with "[RANK] "
    #[arg(short = 'l', long = "tag-output", alias = "prepend-rank")]
    pub tag_output: bool,

    /// Write each rank's output to DIR/rank.N.stdout and DIR/rank.N.stderr instead of the terminal
    #[arg(long = "output-dir", value_name = "DIR")]
    pub output_dir: Option<PathBuf>,

    /// Open MPI: DIR/1/rank.N/stdout and stderr (N zero-padded), also shown on the terminal;
    /// DIR:nojobid leaves out the 1/, DIR:nocopy the terminal
    #[arg(long = "output-filename", value_name = "DIR", conflicts_with_all = ["output_dir", "outfile_pattern", "errfile_pattern"], hide_short_help = true)]
    pub output_filename: Option<String>,

    /// Hydra: each rank's stdout to the file PATTERN names (%r rank, %h host, %g 0, %% a '%')
    #[arg(long = "outfile-pattern", value_name = "PATTERN", conflicts_with = "output_dir", hide_short_help = true)]
    pub outfile_pattern: Option<String>,

    /// Hydra: each rank's stderr to the file PATTERN names (%r rank, %h host, %g 0, %% a '%')
    #[arg(long = "errfile-pattern", value_name = "PATTERN", conflicts_with = "output_dir", hide_short_help = true)]
    pub errfile_pattern: Option<String>,

    /// Open MPI: each output line on the terminal starts with the local time (as ctime(3) writes
    /// it); files stay byte-exact
    #[arg(long = "timestamp-output", hide_short_help = true)]
    pub timestamp_output: bool,

    /// Open MPI: a rank's stderr goes where its stdout goes (rlaunch's stdout, or the stdout file)
    #[arg(long = "merge-stderr-to-stdout", hide_short_help = true)]
    pub merge_stderr_to_stdout: bool,

    /// Hydra: at the end, every rank's exit status on stderr, one line each (rlaunch's own exit
    /// status stays the first failure's)
    #[arg(long = "print-all-exitcodes", hide_short_help = true)]
    pub print_all_exitcodes: bool,

    /// Which rank reads rlaunch's standard input: a rank number, "all" or "none"
    #[arg(short = 's', long, value_name = "RANK|all|none", default_value = "0", value_parser = stdin_target)]
    pub stdin: StdinTarget,

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

    /// Where ranks go: slot (fill each node's slots in order), node (round-robin), ppr:N:node; inside
    /// a node: core, hwthread, l3cache, numa, package (socket), ppr:N:OBJ; modifiers :PE=n, :SPAN,
    /// :OVERSUBSCRIBE
    #[arg(long = "map-by", value_name = "POLICY", default_value = "slot", value_parser = typed::<MapByFlag>)]
    pub map_by: MapByFlag,

    /// N ranks per node (the same as --map-by ppr:N:node)
    #[arg(short = 'N', long = "ppn", alias = "npernode", value_name = "N")]
    pub ppn: Option<u32>,

    /// How placed ranks are numbered: slot (consecutive on a node) or node (round-robin over nodes);
    /// hwthread, core, l3cache, numa, package: by slot, and inside a node round-robin over those
    /// [default: node with --map-by node, as in Open MPI; slot otherwise]
    #[arg(long = "rank-by", value_name = "POLICY", value_parser = typed::<RankByFlag>)]
    pub rank_by: Option<RankByFlag>,

    /// Allow more ranks than slots (max_slots stays a hard limit)
    #[arg(long)]
    pub oversubscribe: bool,

    /// How daemons start: local (every daemon on this machine, whatever the node names), ssh
    /// (in-process, the default with a node list), agent (--launch-agent), slurm (one srun step,
    /// the default inside a Slurm allocation), pbs (inside a PBS job: nodes from PBS_NODEFILE,
    /// daemons over ssh), sge (inside a Grid Engine job: qrsh -inherit, else ssh), lsf (inside an
    /// LSF job: blaunch, else ssh)
    #[arg(long, value_name = "KIND", value_parser = typed::<LauncherKind>)]
    pub launcher: Option<LauncherKind>,

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

    /// The address the front end listens on for its daemons (they are told to connect there)
    /// [default: the address this machine reaches the nodes from, when they share one]
    #[arg(long = "bind-address", value_name = "ADDR")]
    pub bind_address: Option<std::net::IpAddr>,

    /// Let daemons start their own children (tree spawn) instead of the front end starting them all
    #[arg(long = "tree-spawn")]
    pub tree_spawn: bool,

    /// Path of the rlaunch binary on the nodes [default: this binary's path]
    #[arg(long = "daemon-path", value_name = "PATH")]
    pub daemon_path: Option<String>,

    /// Fail the job when a node's daemon has not connected after SECS seconds
    #[arg(long = "launch-timeout", value_name = "SECS", default_value = "30")]
    pub launch_timeout: f64,

    // Lost nodes (issue 17).
    /// Keep the last N nodes of the host list or allocation as spares: their daemons start, they
    /// get no ranks, and a lost node is replaced by one of them
    #[arg(long = "spare", value_name = "N", default_value = "0")]
    pub spare: u32,

    /// Send a heartbeat (a TCP keepalive probe) on a tree link that carried nothing for SECS
    /// seconds, and one each SECS after that (whole seconds)
    #[arg(long = "heartbeat", value_name = "SECS", default_value = "1")]
    pub heartbeat: f64,

    /// Declare a node lost when its tree link's heartbeat went unanswered for SECS seconds (the
    /// node or its network is down; a daemon that dies closes its link and is lost at once)
    #[arg(long = "heartbeat-timeout", value_name = "SECS", default_value = "5")]
    pub heartbeat_timeout: f64,

    /// Never show launch progress
    #[arg(short = 'q', long)]
    pub quiet: bool,

    /// PMI: ranks reach rlaunch's PMI server by connecting to PMI_PORT (loopback TCP, rank named by
    /// PMI_ID) instead of inheriting a socket as PMI_FD; only the node's ranks and their
    /// descendants may connect
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
        value_parser = typed::<MpiFlag>,
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
^ucx is no selection). They also get HWLOC_PLUGINS_BLACKLIST=hwloc_xml_libxml: hwloc loads its \
plugins in every rank, though the topology comes from libpmix, and the libxml2 one alone brings \
libxml2, ICU and libstdc++ (hwloc then reads XML with its own parser); a HWLOC_PLUGINS_BLACKLIST, \
HWLOC_LIBXML, HWLOC_LIBXML_IMPORT or HWLOC_LIBXML_EXPORT of yours (environment or -x) wins. And they \
get OMPI_MCA_ess=pmi, OMPI_MCA_state=app and OMPI_MCA_errmgr=default_app, the run-time components \
every rank under rlaunch ends up with, so that none opens the other eleven; each of yours (environment, \
-x, --mca, or a line in an MCA parameter file above) wins.\n\
With --pmi-lazy, Open MPI ranks use their asynchronous modex (OMPI_MCA_pmix_base_async_modex=1, \
OMPI_MCA_pmix_base_collect_data=0): fences carry no data and each peer's data is fetched from its node \
on first use. Open MPI's own developers call skipping the fence unsupported (openpmix issue 2904), so it \
is not the default; rlaunch registers every rank with libpmix before any starts and has the ranks use \
libpmix's in-memory store, which removed the hangs and \"PML add procs failed\" errors Open MPI 4.1.4 \
showed in this mode (none in 200 jobs)."
    )]
    pub mpi: MpiFlag,

    /// Restart a failed rank (non-zero exit or signal) up to N times instead of ending the job; with
    /// --restart-scope rank N counts per rank, with job it counts restarts of the whole job. Aborts
    /// (MPI_Abort), ranks that cannot start, ctrl-C and --timeout are never restarted; a restarted
    /// rank that fails again within 1 s is not restarted again. 0: the first failure ends the job
    #[arg(long = "max-restarts", value_name = "N", help_heading = "Recovery")]
    pub max_restarts: Option<u32>,

    /// What a restart starts again: rank (only the failed rank, on its node with its binding; the
    /// others go on) or job (every rank is stopped, then all start again with a fresh PMI/PMIx
    /// generation; what MPI programs need) [default: job when the ranks use PMI or PMIx, as --mpi
    /// pmi|pmix says or --mpi auto finds an MPI library; else rank]
    #[arg(long = "restart-scope", value_name = "rank|job", value_parser = typed::<RestartScope>, help_heading = "Recovery")]
    pub restart_scope: Option<RestartScope>,

    /// Open MPI (PRRTE): restart failed ranks; --max-restarts 1 unless --max-restarts says otherwise
    #[arg(long = "enable-recovery", help_heading = "Recovery")]
    pub enable_recovery: bool,

    /// Network for rank endpoints: auto (RDMA when every node has an active port, else TCP), tcp,
    /// rdma, or off (no inventory exchange, no endpoint table)
    #[arg(long, value_name = "auto|tcp|rdma|off", default_value = "auto", value_parser = typed::<FabricFlag>)]
    pub fabric: FabricFlag,

    /// Use exactly these NICs (interface names, RDMA devices or DEVICE:PORT); local rank l gets the
    /// (l mod count)-th. A name missing on any node is an error naming that node
    #[arg(long, alias = "iface", value_name = "NAME[,NAME]")]
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

    /// Open MPI: set MCA parameter KEY to VALUE in every rank (OMPI_MCA_KEY=VALUE); also --gmca
    #[arg(long = "mca", alias = "gmca", value_name = "KEY VALUE", action = ArgAction::Append, allow_hyphen_values = true, hide_short_help = true)]
    pub mca: Vec<String>,

    /// Hydra: set VAR to VALUE in every rank (-genv VAR VALUE or -genv VAR=VALUE)
    #[arg(long = "genv", value_name = "VAR VALUE", action = ArgAction::Append, allow_hyphen_values = true, hide_short_help = true)]
    pub genv: Vec<String>,

    /// Hydra: set VAR to VALUE in this application context's ranks (-env VAR VALUE or -env VAR=VALUE)
    #[arg(long = "env", value_name = "VAR VALUE", action = ArgAction::Append, allow_hyphen_values = true, hide_short_help = true)]
    pub env: Vec<String>,

    /// Hydra: pass rlaunch's whole environment to the ranks (also -envall), rlaunch's default
    #[arg(long = "genvall", alias = "envall", hide_short_help = true)]
    pub genvall: bool,

    /// Hydra: ranks on other nodes get none of rlaunch's environment, only -genv/-x values (on this
    /// machine they inherit it, as under Hydra)
    #[arg(long, conflicts_with_all = ["genvall", "genvlist"], hide_short_help = true)]
    pub genvnone: bool,

    /// Hydra: ranks on other nodes get only these variables of rlaunch's environment (on this
    /// machine they inherit all of it, as under Hydra)
    #[arg(long, value_name = "VAR,VAR", conflicts_with = "genvall", hide_short_help = true)]
    pub genvlist: Option<String>,

    /// Hydra: this context's ranks on other nodes get none of rlaunch's environment, only -env and
    /// -x values (on this machine they inherit it, as under Hydra)
    #[arg(long, conflicts_with = "envlist", hide_short_help = true)]
    pub envnone: bool,

    /// Hydra: this context's ranks get these variables of rlaunch's environment, and on other
    /// nodes no others
    #[arg(long, value_name = "VAR,VAR", hide_short_help = true)]
    pub envlist: Option<String>,

    /// Open MPI: files (comma-separated) of -x and --mca options, as if given first on the command
    /// line (the command line's own win)
    #[arg(long, value_name = "FILE[,FILE]", hide_short_help = true)]
    pub tune: Option<String>,

    /// Open MPI: aggregate MCA parameter files (comma-separated) of `name = value` lines, as if
    /// each were --mca name value before the command line's own
    #[arg(long = "am", value_name = "FILE[,FILE]", hide_short_help = true)]
    pub am: Option<String>,

    /// Hydra: no X11 forwarding, which is what rlaunch does anyway (-enable-x is refused)
    #[arg(long = "disable-x", hide_short_help = true)]
    pub disable_x: bool,

    /// Open MPI 5: set PMIx MCA parameter KEY to VALUE in every rank (PMIX_MCA_KEY=VALUE)
    #[arg(long = "pmixmca", value_name = "KEY VALUE", action = ArgAction::Append, allow_hyphen_values = true, hide_short_help = true)]
    pub pmixmca: Vec<String>,

    /// Open MPI 5: a PRRTE MCA parameter; rlaunch has no PRRTE, so it is unused (-v says so)
    #[arg(long = "prtemca", value_name = "KEY VALUE", action = ArgAction::Append, allow_hyphen_values = true, hide_short_help = true)]
    pub prtemca: Vec<String>,

    /// Open MPI: write rlaunch's pid to FILE, or to stdout (-) or stderr (+), before the job starts
    #[arg(long = "report-pid", value_name = "FILE|-|+", hide_short_help = true)]
    pub report_pid: Option<String>,

    /// Open MPI 5: output options, comma-separated: tag (as -l), timestamp, merge-stderr,
    /// dir=DIR or file=DIR (as --output-filename DIR), nocopy
    #[arg(long = "output", value_name = "LIST", hide_short_help = true)]
    pub output: Option<String>,

    /// Open MPI 5: what to show before running, comma-separated: map, allocation (as
    /// --display-map), bind (as --report-bindings)
    #[arg(long = "display", value_name = "LIST", hide_short_help = true)]
    pub display: Option<String>,

    /// Open MPI, Intel MPI: no ranks on the machine rlaunch runs on (only on the other nodes)
    #[arg(long, hide_short_help = true)]
    pub nolocal: bool,

    /// Hydra: each output line starts with PATTERN (%r rank, %h host, %g 0, %% a '%'), as -l
    /// does with "[%r] "
    #[arg(long = "prepend-pattern", value_name = "PATTERN", hide_short_help = true)]
    pub prepend_pattern: Option<String>,

    /// Hydra: DIR first in the ranks' PATH, where their program is looked up
    #[arg(long, value_name = "DIR", hide_short_help = true)]
    pub path: Option<PathBuf>,

    /// Accepted, changing nothing: what rlaunch always does. Open MPI's --hetero-nodes (each node's
    /// topology is its own), --noprefix (no automatic --prefix), --leave-session-attached,
    /// --report-child-jobs-separately; Hydra's -demux (rlaunch's own I/O loop)
    #[arg(long = "hetero-nodes", hide_short_help = true)]
    pub hetero_nodes: bool,

    #[arg(long = "noprefix", hide = true)]
    pub noprefix: bool,

    #[arg(long = "leave-session-attached", hide = true)]
    pub leave_session_attached: bool,

    #[arg(long = "report-child-jobs-separately", hide = true)]
    pub report_child_jobs_separately: bool,

    #[arg(long = "demux", value_name = "poll|select", hide = true)]
    pub demux: Option<String>,

    /// Open MPI: accepted for scripts run as root; rlaunch needs no such permission
    #[arg(long = "allow-run-as-root", hide_short_help = true)]
    pub allow_run_as_root: bool,

    /// Open MPI: one rank per node (--npernode 1)
    #[arg(long = "pernode", conflicts_with = "ppn", hide_short_help = true)]
    pub pernode: bool,

    /// Open MPI: never more ranks than slots, also on this machine alone (slots = CPUs)
    #[arg(long = "nooversubscribe", conflicts_with = "oversubscribe", hide_short_help = true)]
    pub nooversubscribe: bool,

    /// Open MPI: print the map (as --dry-run prints it), then run the job (Intel: -print-rank-map)
    #[arg(long = "display-map", alias = "print-rank-map", hide_short_help = true)]
    pub display_map: bool,

    /// Open MPI: prepend DIR/bin to the ranks' PATH and DIR/lib to their LD_LIBRARY_PATH
    #[arg(long, value_name = "DIR", hide_short_help = true)]
    pub prefix: Option<PathBuf>,

    /// Hydra: nodes as a list h1,h2 or h1:2,h2:4; without counts ranks go round-robin and wrap around
    #[arg(long, value_name = "LIST", conflicts_with_all = ["host", "hostfile"], hide_short_help = true)]
    pub hosts: Option<String>,

    /// Hydra -ppn N, -perhost N: each node in turn takes N consecutive ranks, wrapping around
    #[arg(long, value_name = "N", conflicts_with_all = ["ppn", "pernode", "rr"], hide_short_help = true)]
    pub perhost: Option<u32>,

    /// Open MPI (old spelling): --map-by node
    #[arg(long, hide_short_help = true)]
    pub bynode: bool,

    /// Hydra: round-robin, one rank per node in turn, wrapping around (-perhost 1)
    #[arg(long, hide_short_help = true)]
    pub rr: bool,

    /// Hydra -launcher, Intel -bootstrap: how daemons start: ssh, rsh, fork (this machine), slurm, pbs, sge, lsf
    #[arg(long, value_name = "KIND", value_parser = typed::<Bootstrap>, conflicts_with_all = ["launcher", "launch_agent"], hide_short_help = true)]
    pub bootstrap: Option<Bootstrap>,

    /// Hydra -launcher-exec, Intel -bootstrap-exec: the ssh or rsh command daemons start through
    #[arg(long = "bootstrap-exec", value_name = "PATH", conflicts_with_all = ["launcher", "launch_agent"], hide_short_help = true)]
    pub bootstrap_exec: Option<String>,

    /// Bind each rank to: none, hwthread, core, l3cache, numa, package (socket), user:0+1,2+3
    /// (Hydra; Intel: -binding) [default: core when a node's ranks fit its cores, else none]
    #[arg(long = "bind-to", alias = "binding", value_name = "WHAT", value_parser = typed::<BindToFlag>)]
    pub bind_to: Option<BindToFlag>,

    /// Print each rank's CPUs (and GPUs) with a picture of its node on stderr before it starts
    #[arg(long = "report-bindings")]
    pub report_bindings: bool,

    /// The largest image one rank may save (rli_save), in bytes or with K, M, G (powers of 1024);
    /// a larger one is refused with one line naming the rank, and the job goes on
    #[arg(long = "image-max", value_name = "SIZE", default_value = "256M", value_parser = byte_size, help_heading = "Recovery images (man 3 rlaunch_image)")]
    pub image_max: u64,

    /// How many daemons hold each rank's image: its own and the next N-1 nodes' (partners), so
    /// that a lost node does not lose it [default: 2 with two or more nodes, else 1]
    #[arg(long = "image-copies", value_name = "N", value_parser = clap::value_parser!(u32).range(1..), help_heading = "Recovery images (man 3 rlaunch_image)")]
    pub image_copies: Option<u32>,

    /// Each daemon also writes its ranks' images to DIR/NAME/rankR.epochE.img (NAME: the first
    /// program's file name); a later job with the same DIR loads from there when no daemon holds one
    #[arg(long = "image-dir", value_name = "DIR", help_heading = "Recovery images (man 3 rlaunch_image)")]
    pub image_dir: Option<PathBuf>,

    /// Ask every rank for an image every SECS seconds; a rank answers at its next rli_poll
    #[arg(long = "image-interval", value_name = "SECS", help_heading = "Recovery images (man 3 rlaunch_image)")]
    pub image_interval: Option<f64>,

    /// A rank that has not answered an image request after SECS seconds is named in one line; the
    /// job goes on with the previous complete epoch
    #[arg(long = "image-timeout", value_name = "SECS", default_value = "10", help_heading = "Recovery images (man 3 rlaunch_image)")]
    pub image_timeout: f64,

    /// CPUs (cores, or hardware threads with --use-hwthread-cpus) per rank, as --map-by :PE=N
    #[arg(long = "cpus-per-proc", alias = "cpus-per-rank", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub cpus_per_proc: Option<u32>,

    /// Hardware threads, not cores, are the CPUs ranks are mapped and bound to
    #[arg(long = "use-hwthread-cpus")]
    pub use_hwthread_cpus: bool,

    /// GPUs per rank, nearest its CPUs first (CUDA_VISIBLE_DEVICES, ROCR_VISIBLE_DEVICES,
    /// ZE_AFFINITY_MASK, RLAUNCH_GPUS)
    #[arg(long = "gpus-per-rank", alias = "gpus-per-proc", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub gpus_per_rank: Option<u32>,

    /// Open MPI's rank file: each rank's host and CPUs (`rank N=HOST slot=SPEC` lines)
    #[arg(long, value_name = "FILE", hide_short_help = true)]
    pub rankfile: Option<PathBuf>,

    /// Placement (Cray PALS mpiexec): none, core, numa, socket, thread, depth (each rank on its
    /// --depth CPUs), list:CPUS:CPUS... or mask:M:M... (local rank i on the i-th, cyclically)
    #[arg(long = "cpu-bind", value_name = "HOW", value_parser = typed::<CpuBind>, hide_short_help = true)]
    pub cpu_bind: Option<CpuBind>,

    /// Placement (Cray PALS mpiexec -d N): CPUs per rank, as --cpus-per-proc N
    #[arg(short = 'd', long = "depth", value_name = "N", conflicts_with = "cpus_per_proc", value_parser = clap::value_parser!(u32).range(1..), hide_short_help = true)]
    pub depth: Option<u32>,

    /// Placement (Cray PALS, Slurm): list:G:G... gives local rank i the i-th GPU list, cyclically
    #[arg(long = "gpu-bind", value_name = "list:G:G...", value_parser = typed::<GpuBind>, hide_short_help = true)]
    pub gpu_bind: Option<GpuBind>,

    /// Hydra: the universe size the ranks are told (MPI_UNIVERSE_SIZE): N, or SYSTEM for the
    /// slots of the job's nodes [default: the job's size]
    #[arg(long, value_name = "N|SYSTEM", value_parser = typed::<Usize>, hide_short_help = true)]
    pub usize: Option<Usize>,

    /// Open MPI --app FILE, Hydra -configfile FILE: application contexts from FILE, one per line
    /// (`-np 2 ./a x`; `#` comments); given last, in place of the program
    #[arg(long, visible_alias = "configfile", value_name = "FILE", hide_short_help = true)]
    pub app: Option<PathBuf>,

    /// Watch each node's health with the built-in sensors: thermal zones, EDAC memory errors,
    /// MemAvailable, the job's NICs, load (SENSORS in --help); a change of state is one line on
    /// stderr and goes into the --report
    #[arg(long)]
    pub sensors: bool,

    /// A user sensor: CMD runs with `sh -c` on every node each --sensor-interval; exit status 0 ok,
    /// 1 degrading, 2 failed, anything else (or no answer within the interval: killed) unknown; the
    /// first line of its output is the reason; repeatable
    #[arg(long = "sensor", value_name = "CMD", action = ArgAction::Append, allow_hyphen_values = true)]
    pub sensor: Vec<String>,

    /// Seconds between two samples of the sensors (fractions allowed), also the time a user sensor
    /// has to answer [default: 5]
    #[arg(long = "sensor-interval", value_name = "SECS")]
    pub sensor_interval: Option<f64>,

    /// With --sensors: a thermal zone within C degrees Celsius of its hot or critical trip point is
    /// degrading (at a passive one too: the CPUs are throttled), at its critical one failed
    /// [default: 5]
    #[arg(long = "sensor-temp-margin", value_name = "C", hide_short_help = true)]
    pub sensor_temp_margin: Option<f64>,

    /// With --sensors: MemAvailable below SIZE (512M, 2G) or PCT of MemTotal (5%) is degrading,
    /// below a quarter of it failed [default: 5%]
    #[arg(long = "sensor-mem-floor", value_name = "SIZE|PCT%", value_parser = typed::<fabrics::sensors::MemFloor>, hide_short_help = true)]
    pub sensor_mem_floor: Option<fabrics::sensors::MemFloor>,

    /// With --sensors: a 1-minute load average above F times the node's online CPUs is degrading
    /// [default: 4]
    #[arg(long = "sensor-load-factor", value_name = "F", hide_short_help = true)]
    pub sensor_load_factor: Option<f64>,

    /// With --sensors: N corrected memory errors (EDAC) on a memory controller since the job
    /// started are degrading; one uncorrected error is failed [default: 10]
    #[arg(long = "sensor-edac-ce", value_name = "N", value_parser = clap::value_parser!(u64).range(1..), hide_short_help = true)]
    pub sensor_edac_ce: Option<u64>,

    /// With --sensors: N new errors and drops (rx_errors, tx_errors, rx_dropped; an RDMA port's
    /// error counters) on one of the job's NICs between two samples are degrading; a link down
    /// (operstate, carrier, port state) is failed [default: 100]
    #[arg(long = "sensor-nic-errors", value_name = "N", value_parser = clap::value_parser!(u64).range(1..), hide_short_help = true)]
    pub sensor_nic_errors: Option<u64>,

    /// Generate documentation: "man", or completions for "bash", "zsh", "fish", "elvish", "powershell"
    #[arg(long, value_name = "WHAT", hide = true, value_parser = typed::<Generate>)]
    pub generate: Option<Generate>,

    /// The program to run and its arguments
    #[arg(value_name = "PROGRAM", trailing_var_arg = true, allow_hyphen_values = true)]
    pub program: Vec<String>,
}

/// Options that may appear after a ':' (they belong to one application context).
pub const PER_APP: &[&str] = &["np", "export", "wdir", "program", "env", "genvall", "host", "envnone", "envlist"];

/// Options whose value is two words, `KEY VALUE`, which normalize joins into one `KEY=VALUE`; `true`
/// where the Hydra form `KEY=VALUE` as one word is also accepted.
pub const PAIRS: &[(&str, bool)] = &[("mca", false), ("genv", true), ("env", true), ("pmixmca", false), ("prtemca", false)];

/// Options of the other launchers that rlaunch does not carry out, with the one line it says
/// instead of "unknown option" (after the option as written).
pub const WONT: &[(&str, &str)] = &[
    ("ckpointlib", "BLCR checkpointing is gone; rlaunch does not checkpoint jobs"),
    ("ckpoint-prefix", "BLCR checkpointing is gone; rlaunch does not checkpoint jobs"),
    ("ckpoint-interval", "BLCR checkpointing is gone; rlaunch does not checkpoint jobs"),
    ("enable-x", "rlaunch does not forward X11 connections"),
    ("trace", "Intel Trace Collector preloading is not supported; set LD_PRELOAD with -genv"),
    ("gtool", "Intel MPI tool launching is not supported; wrap the program yourself"),
    ("disable-auto-cleanup", "rlaunch ends the whole job at the first failure; it cannot leave the other ranks running"),
    ("preload-binary", "rlaunch does not copy programs to the nodes; put the program on a shared file system"),
    ("preload-files", "rlaunch does not copy files to the nodes; put them on a shared file system"),
    ("gdb", "rlaunch does not start debuggers itself; run one as the program (rlaunch -np 2 gdb -batch -ex run --args ./app)"),
    ("debug", "rlaunch does not start a parallel debugger; run one as the program, or see --get-stack-traces"),
    ("xterm", "rlaunch does not open terminal windows; use --output-filename to get each rank's output apart"),
    ("check_mpi", "Intel's correctness checker is not supported; set LD_PRELOAD with -genv"),
    ("ompi-server", "rlaunch has no Open MPI name server for MPI_Publish_name"),
    ("personality", "rlaunch runs Open MPI and MPICH programs as they are; no personality is needed"),
    ("xml", "rlaunch does not write XML output; see --report for JSON"),
    ("info", "prints MPICH's build configuration; rlaunch --version says which rlaunch this is"),
    ("tv", "rlaunch does not start TotalView; run the debugger as the program, or see --get-stack-traces"),
    ("debugger", "rlaunch does not start a parallel debugger; run one as the program, or see --get-stack-traces"),
    ("with-ft", "ULFM fault tolerance is not supported; --max-restarts restarts failed ranks instead"),
];

/// Other spellings of rlaunch's options (with one dash or two), replaced by rlaunch's words:
/// Open MPI's older mapping and binding options, short names, Open MPI 5's `--display`.
pub const EXPANSIONS: &[(&str, &[&str])] = &[
    ("bysocket", &["--map-by", "socket"]),
    ("bycore", &["--map-by", "core"]),
    ("byslot", &["--map-by", "slot"]),
    ("bind-to-core", &["--bind-to", "core"]),
    ("bind-to-socket", &["--bind-to", "socket"]),
    ("bind-to-none", &["--bind-to", "none"]),
    ("rf", &["--rankfile"]),
    ("display-allocation", &["--display-map"]),
    ("display-devel-map", &["--display-map"]),
    ("display-devel-allocation", &["--display-map"]),
    ("machine", &["--hostfile"]),
    // Open MPI's daemon debugging: rlaunch's daemons say what they do at -vv.
    ("debug-daemons", &["--verbose", "--verbose"]),
];

/// Other launchers' options that take a value and stand for rlaunch's `--map-by` with it: the
/// value goes where `{}` is (Open MPI's `-npersocket N` is `--map-by ppr:N:package`).
pub const MAP_BY_WITH_VALUE: &[(&str, &str)] = &[("npersocket", "ppr:{}:package")];

/// Single-dash spellings that are another family's option: Hydra's `-launcher` takes Hydra's names
/// (`--bootstrap`), while rlaunch's own `--launcher` keeps its own; Hydra's `-ppn` wraps around
/// (`--perhost`), while rlaunch's `--ppn` is `ppr:N:node`.
pub const SINGLE_DASH_RENAMES: &[(&str, &str)] = &[("launcher", "bootstrap"), ("launcher-exec", "bootstrap-exec"), ("ppn", "perhost")];

/// A flag value its type rejects; `Display` is the reason alone, without flag or value, which
/// [`super::parse`] puts in front as `--flag VALUE: reason`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadValue(pub String);

/// The value parser of every choice flag: the type's own `FromStr`, its error as the reason.
fn typed<T: FromStr>(s: &str) -> Result<T, BadValue>
where
    T::Err: Display,
{
    s.parse().map_err(|e: T::Err| BadValue(e.to_string()))
}

/// `--image-max`: `4096`, `64K`, `256M`, `1G` (powers of 1024; `KiB`, `MB` and the like too).
pub fn byte_size(s: &str) -> Result<u64, BadValue> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(digits);
    let bad = || BadValue("expected a size in bytes, or with K, M or G (256M)".into());
    let n: u64 = n.parse().map_err(|_| bad())?;
    let shift = match unit.trim().to_ascii_uppercase().trim_end_matches('B').trim_end_matches('I') {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        _ => return Err(bad()),
    };
    n.checked_mul(1 << shift).filter(|&b| b > 0 && b < u32::MAX as u64).ok_or_else(|| BadValue("expected more than 0 and less than 4G".into()))
}

fn stdin_target(s: &str) -> Result<StdinTarget, BadValue> {
    match s {
        "none" => Ok(StdinTarget::None),
        "all" => Ok(StdinTarget::All),
        n => n.parse::<u32>().map(StdinTarget::Rank).map_err(|_| BadValue("expected a rank number, 'all' or 'none'".into())),
    }
}

/// `--fabric`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FabricFlag {
    Auto,
    Tcp,
    Rdma,
    Off,
}

impl FabricFlag {
    /// `None` for `off`: no inventory exchange and no endpoint table.
    pub fn choice(self) -> Option<FabricChoice> {
        match self {
            FabricFlag::Auto => Some(FabricChoice::Auto),
            FabricFlag::Tcp => Some(FabricChoice::Tcp),
            FabricFlag::Rdma => Some(FabricChoice::Rdma),
            FabricFlag::Off => None,
        }
    }
}

impl FromStr for FabricFlag {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(FabricFlag::Auto),
            "tcp" => Ok(FabricFlag::Tcp),
            "rdma" => Ok(FabricFlag::Rdma),
            "off" => Ok(FabricFlag::Off),
            _ => Err("expected auto, tcp, rdma or off".into()),
        }
    }
}

/// `--map-by POLICY[:MODIFIER]...`: the node-level policy (which node a rank runs on) and the
/// placement inside each node, both from one grammar (`fabrics::placement::MapPolicy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapByFlag {
    pub policy: MapBy,
    /// The object inside a node, `PE=n`, `SPAN`, `HWTCPUS`, and `:OVERSUBSCRIBE` (`Some(true)`) or
    /// `:NOOVERSUBSCRIBE` (`Some(false)`).
    pub place: MapPolicy,
}

/// `--rank-by POLICY`: rlaunch's slot or node (which node's ranks are consecutive), or one of
/// Open MPI's objects inside a node (ranks slot by slot, and inside each node round-robin over
/// those objects).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RankByFlag {
    pub policy: RankBy,
    pub object: Option<ObjKind>,
}

impl FromStr for RankByFlag {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let base = s.split(':').next().unwrap_or(s).to_ascii_lowercase();
        let object = match base.as_str() {
            "hwthread" => ObjKind::HwThread,
            "core" => ObjKind::Core,
            "l3cache" => ObjKind::L3,
            "numa" => ObjKind::Numa,
            "package" | "socket" => ObjKind::Package,
            "l1cache" | "l2cache" | "board" => {
                return Err(format!("rlaunch ranks inside a node by hwthread, core, l3cache, numa or package (socket), not {base}"))
            }
            _ => return s.parse::<RankBy>().map(|policy| RankByFlag { policy, object: None }).map_err(|e| e.to_string()),
        };
        Ok(RankByFlag { policy: RankBy::Slot, object: Some(object) })
    }
}

impl FromStr for MapByFlag {
    type Err = String;
    /// Modifiers follow the policy (`ppr:2:node:PE=4`, `slot:OVERSUBSCRIBE`) or stand alone
    /// (`:OVERSUBSCRIBE`, policy slot). Objects inside a node (`core`, `package`, `ppr:2:numa`)
    /// fill each node's slots in order, then place the node's ranks on those objects; with `SPAN`
    /// the nodes get balanced shares instead (see `allocation_request`).
    fn from_str(s: &str) -> Result<Self, String> {
        // Open MPI's seq: rank i on the host of the i-th host file line; its modifiers as slot's.
        let (head, rest) = s.split_once(':').unwrap_or((s, ""));
        if head.eq_ignore_ascii_case("seq") {
            let place: MapPolicy = if rest.is_empty() { MapPolicy::default() } else { format!("slot:{rest}").parse().map_err(|e: fabrics::placement::PolicyError| e.to_string())? };
            return Ok(MapByFlag { policy: MapBy::Seq, place });
        }
        let place: MapPolicy = s.parse().map_err(|e: fabrics::placement::PolicyError| e.to_string())?;
        let policy = match place.obj {
            MapObj::Ppr(n, ObjKind::Node) => MapBy::PprNode(n),
            _ if place.by_node => MapBy::Node,
            _ => MapBy::Slot,
        };
        Ok(MapByFlag { policy, place })
    }
}

/// `--bind-to WHAT`: the engine's [`BindTo`], and Hydra's `core:N` / `hwthread:N` (N of them per
/// rank, as `PE=N`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindToFlag {
    pub bind: BindTo,
    pub per_rank: Option<u32>,
    /// Open MPI's `:overload-allowed`, `:if-supported` and `:REPORT` modifiers.
    pub overload: bool,
    pub if_supported: bool,
    pub report: bool,
}

impl BindToFlag {
    pub fn new(bind: BindTo) -> BindToFlag {
        BindToFlag { bind, per_rank: None, overload: false, if_supported: false, report: false }
    }
}

impl FromStr for BindToFlag {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.split(':').next().is_some_and(|o| o.eq_ignore_ascii_case("user")) {
            return Ok(BindToFlag::new(s.parse().map_err(|e: fabrics::placement::PolicyError| e.to_string())?));
        }
        let mut parts = s.split(':');
        let obj = parts.next().unwrap_or_default();
        // One board per node: bound to it is bound to all of the node's CPUs.
        let bind: BindTo = if obj.eq_ignore_ascii_case("board") { BindTo::None } else { obj.parse().map_err(|e: fabrics::placement::PolicyError| e.to_string())? };
        let mut flag = BindToFlag::new(bind);
        for m in parts {
            match m.to_ascii_lowercase().as_str() {
                "overload-allowed" => flag.overload = true,
                "if-supported" => flag.if_supported = true,
                "report" => flag.report = true,
                // Open MPI's ordered binds in mapping order, which is what rlaunch does anyway.
                "ordered" => {}
                n => match (&flag.bind, n.parse::<u32>().ok().filter(|n| *n >= 1)) {
                    (BindTo::Core | BindTo::HwThread, Some(n)) => flag.per_rank = Some(n),
                    _ => {
                        return Err(format!(
                            "'{m}' after '{obj}:': rlaunch takes core:N or hwthread:N (N per rank, as Hydra does) or Open MPI's modifiers overload-allowed, if-supported, ordered, REPORT"
                        ))
                    }
                },
            }
        }
        Ok(flag)
    }
}

/// A CPU list as the kernel writes one (`0-3,8,10-11`): the CPU numbers in order, each once.
pub fn parse_cpu_list(s: &str) -> Result<Vec<u32>, String> {
    let mut cpus = Vec::new();
    for part in s.split(',') {
        let bad = || format!("'{part}' in CPU list '{s}': expected N or N-M with N <= M (e.g. 0-3,8)");
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (u32, u32) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
        if a > b || b >= 1 << 16 {
            return Err(bad());
        }
        cpus.extend(a..=b);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// Cray PALS's `--cpu-bind`: a binding level, or explicit CPU sets per local rank.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CpuBind {
    /// `none`, `core`, `numa`, `socket`, `thread` in `--bind-to`'s names.
    Level(&'static str),
    /// `depth`: each rank on its own `--depth` consecutive CPUs.
    Depth,
    /// `list:0-3:4-7` or `mask:0xf:0xf0`: local rank i on the i-th set, cyclically.
    Sets(Vec<Vec<u32>>),
}

impl FromStr for CpuBind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let level = match s {
            "none" => Some("none"),
            "core" => Some("core"),
            "numa" => Some("numa"),
            "socket" => Some("package"),
            "thread" => Some("hwthread"),
            _ => None,
        };
        if let Some(l) = level {
            return Ok(CpuBind::Level(l));
        }
        if s == "depth" {
            return Ok(CpuBind::Depth);
        }
        let sets: Result<Vec<Vec<u32>>, String> = if let Some(lists) = s.strip_prefix("list:") {
            lists.split(':').map(parse_cpu_list).collect()
        } else if let Some(masks) = s.strip_prefix("mask:") {
            masks.split(':').map(parse_cpu_mask).collect()
        } else {
            return Err("expected none, core, numa, socket, thread, depth, list:CPUS:CPUS... or mask:M:M...".into());
        };
        sets.map(CpuBind::Sets)
    }
}

/// A hexadecimal CPU mask (`0xf0` or `f0`): the CPUs whose bits are set.
fn parse_cpu_mask(m: &str) -> Result<Vec<u32>, String> {
    let hex = m.strip_prefix("0x").or_else(|| m.strip_prefix("0X")).unwrap_or(m);
    let bad = || format!("'{m}': expected a hexadecimal CPU mask such as 0xf0");
    if hex.is_empty() || hex.len() > 64 {
        return Err(bad());
    }
    let mut cpus = Vec::new();
    for (i, c) in hex.chars().rev().enumerate() {
        let digit = c.to_digit(16).ok_or_else(bad)?;
        cpus.extend((0..4).filter(|b| digit & (1 << b) != 0).map(|b| (i * 4) as u32 + b));
    }
    if cpus.is_empty() {
        return Err(format!("'{m}': the mask selects no CPU"));
    }
    Ok(cpus)
}

/// `--gpu-bind list:0:1,2:3`: local rank i gets the i-th GPU list, cyclically.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuBind(pub Vec<Vec<u32>>);

impl FromStr for GpuBind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let lists = s.strip_prefix("list:").ok_or("expected list:G:G... (GPU numbers, local rank i takes the i-th)")?;
        lists.split(':').map(parse_cpu_list).collect::<Result<_, _>>().map(GpuBind)
    }
}

/// Hydra's `-usize`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usize {
    Count(u32),
    /// The slots of the job's nodes.
    System,
}

impl FromStr for Usize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "SYSTEM" | "system" => Ok(Usize::System),
            "INFINITE" | "infinite" => Err("an unlimited universe is not supported; give a number or SYSTEM".into()),
            n => n.parse().ok().filter(|&n| n >= 1).map(Usize::Count).ok_or_else(|| "expected a number of at least 1, or SYSTEM".into()),
        }
    }
}

/// Hydra's `-launcher` / Intel's `-bootstrap`: how daemons start, in that family's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bootstrap {
    /// rlaunch's in-process ssh, or the `-bootstrap-exec` command.
    Ssh,
    /// `rsh`, or the `-bootstrap-exec` command, as a launch agent.
    Rsh,
    /// Every daemon on this machine (rlaunch's `local`).
    Fork,
    Slurm,
    Pbs,
    /// Grid Engine: `qrsh -inherit` inside its job.
    Sge,
    /// LSF: `blaunch` inside its job.
    Lsf,
}

impl FromStr for Bootstrap {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ssh" => Ok(Bootstrap::Ssh),
            "rsh" => Ok(Bootstrap::Rsh),
            "fork" => Ok(Bootstrap::Fork),
            "slurm" => Ok(Bootstrap::Slurm),
            "pbs" => Ok(Bootstrap::Pbs),
            "sge" => Ok(Bootstrap::Sge),
            "lsf" => Ok(Bootstrap::Lsf),
            _ => Err("expected ssh, rsh, fork, slurm, pbs, sge or lsf (the names of -launcher and -bootstrap)".into()),
        }
    }
}

/// `--generate`: the man page, or completions for one shell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Generate {
    Man,
    Completions(clap_complete::Shell),
}

impl FromStr for Generate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "man" => Ok(Generate::Man),
            shell => shell
                .parse()
                .map(Generate::Completions)
                .map_err(|_| "expected man, bash, zsh, fish, elvish or powershell".to_string()),
        }
    }
}

/// `rlaunch --generate WHAT`: the man page or shell completions, from the same flag table.
pub fn generate(what: Generate, out: &mut dyn std::io::Write) -> Result<(), UsageError> {
    let mut cmd = Cli::command();
    match what {
        Generate::Man => clap_mangen::Man::new(cmd).render(out).map_err(|e| usage(format!("rendering the man page: {e}"))),
        Generate::Completions(shell) => {
            clap_complete::generate(shell, &mut cmd, "rlaunch", out);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choice_values_parse_into_their_types() {
        assert_eq!(stdin_target("none").unwrap(), StdinTarget::None);
        assert_eq!(stdin_target("all").unwrap(), StdinTarget::All);
        assert_eq!(stdin_target("3").unwrap(), StdinTarget::Rank(3));
        assert_eq!(stdin_target("x").unwrap_err().to_string(), "expected a rank number, 'all' or 'none'");
        assert_eq!(typed::<FabricFlag>("rdma").unwrap().choice(), Some(FabricChoice::Rdma));
        assert_eq!(typed::<FabricFlag>("off").unwrap().choice(), None);
        assert_eq!(typed::<FabricFlag>("ib").unwrap_err().to_string(), "expected auto, tcp, rdma or off");
        assert_eq!(typed::<MpiFlag>("pmix").unwrap(), MpiFlag::Pmix);
        assert_eq!(typed::<MpiFlag>("x").unwrap_err().to_string(), "expected pmi, pmix or auto");
        assert_eq!(typed::<MapBy>("ppr:2:node").unwrap(), MapBy::PprNode(2));
        assert_eq!(typed::<LauncherKind>("agent").unwrap(), LauncherKind::Agent);
        assert_eq!(typed::<Generate>("zsh").unwrap(), Generate::Completions(clap_complete::Shell::Zsh));
        assert_eq!(typed::<Generate>("tcsh").unwrap_err().to_string(), "expected man, bash, zsh, fish, elvish or powershell");
    }

    #[test]
    fn map_by_modifiers() {
        let m = |v: &str| typed::<MapByFlag>(v).map_err(|e| e.to_string());
        let f = m("ppr:2:node:PE=4").unwrap();
        assert_eq!((f.policy, f.place.pe), (MapBy::PprNode(2), Some(4)));
        let f = m(":OVERSUBSCRIBE").unwrap();
        assert_eq!((f.policy, f.place.oversubscribe), (MapBy::Slot, Some(true)));
        let f = m("node:NOOVERSUBSCRIBE:SPAN").unwrap();
        assert_eq!((f.policy, f.place.oversubscribe, f.place.span), (MapBy::Node, Some(false), true));
        assert_eq!(m("slot:PE=x").unwrap_err(), "PE=x: expected a whole number of CPUs of at least 1");
        for (o, obj) in [("core", MapObj::Core), ("socket", MapObj::Package), ("package", MapObj::Package), ("l3cache", MapObj::L3), ("numa", MapObj::Numa), ("Core", MapObj::Core)] {
            let f = m(o).unwrap();
            assert_eq!((f.policy, f.place.obj), (MapBy::Slot, obj), "--map-by {o} fills slots, then places on {obj:?}");
        }
        let f = m("ppr:2:socket:pe=2").unwrap();
        assert_eq!((f.policy, f.place.obj, f.place.pe), (MapBy::Slot, MapObj::Ppr(2, ObjKind::Package), Some(2)));
        assert!(m("l2cache").unwrap_err().starts_with("unknown --map-by object 'l2cache'"));
        let b = |v: &str| typed::<BindToFlag>(v).map_err(|e| e.to_string());
        assert_eq!(b("core:8").unwrap(), BindToFlag { per_rank: Some(8), ..BindToFlag::new(BindTo::Core) });
        assert_eq!(b("socket").unwrap(), BindToFlag::new(BindTo::Package));
        let f = b("core:overload-allowed:if-supported:REPORT:ordered").unwrap();
        assert_eq!((f.bind, f.overload, f.if_supported, f.report), (BindTo::Core, true, true, true));
        assert!(matches!(b("user:0+1,2").unwrap().bind, BindTo::Cpus(_)));
        assert!(b("numa:2").unwrap_err().contains("core:N or hwthread:N"));
        assert_eq!(b("board").unwrap().bind, BindTo::None, "one board per node: its CPUs are all of the node's");
        assert!(b("l2cache").unwrap_err().starts_with("unknown --bind-to value 'l2cache'"));
        assert_eq!(typed::<RankByFlag>("core").unwrap(), RankByFlag { policy: RankBy::Slot, object: Some(ObjKind::Core) });
        assert_eq!(typed::<RankByFlag>("socket").unwrap().object, Some(ObjKind::Package));
        assert!(typed::<RankByFlag>("l2cache").unwrap_err().to_string().starts_with("rlaunch ranks inside a node by hwthread"));
        assert_eq!(typed::<RankByFlag>("node").unwrap(), RankByFlag { policy: RankBy::Node, object: None });
        assert_eq!(typed::<RankByFlag>("x").unwrap_err().to_string(), "unknown --rank-by value 'x'; use slot or node");
        assert_eq!(m("seq").unwrap().policy, MapBy::Seq);
        assert_eq!(typed::<Bootstrap>("fork").unwrap(), Bootstrap::Fork);
    }

    #[test]
    fn expansions_are_rlaunch_options_and_never_expand_again() {
        let cmd = Cli::command();
        for (from, words) in EXPANSIONS {
            let long = words[0].strip_prefix("--").expect("an expansion starts with an option");
            assert!(cmd.get_arguments().any(|a| a.get_long() == Some(long)), "{from}: --{long} is not an option");
            assert!(!EXPANSIONS.iter().any(|(f, _)| *f == long), "{from} expands to another expansion");
            assert!(!cmd.get_arguments().any(|a| a.get_long() == Some(from)), "{from} is an option already");
        }
    }

    #[test]
    fn cray_cpu_and_gpu_binding_values() {
        assert_eq!(typed::<CpuBind>("socket").unwrap(), CpuBind::Level("package"));
        assert_eq!(typed::<CpuBind>("depth").unwrap(), CpuBind::Depth);
        assert_eq!(typed::<CpuBind>("list:0-2,5:8").unwrap(), CpuBind::Sets(vec![vec![0, 1, 2, 5], vec![8]]));
        assert_eq!(typed::<CpuBind>("mask:0x11:f0").unwrap(), CpuBind::Sets(vec![vec![0, 4], vec![4, 5, 6, 7]]));
        assert_eq!(typed::<CpuBind>("list:3-1").unwrap_err().to_string(), "'3-1' in CPU list '3-1': expected N or N-M with N <= M (e.g. 0-3,8)");
        assert_eq!(typed::<CpuBind>("mask:0x0").unwrap_err().to_string(), "'0x0': the mask selects no CPU");
        assert!(typed::<CpuBind>("verbose").unwrap_err().to_string().starts_with("expected none, core"));
        assert_eq!(typed::<GpuBind>("list:0:1,2").unwrap(), GpuBind(vec![vec![0], vec![1, 2]]));
        assert!(typed::<GpuBind>("closest").is_err());
    }
}
