//! What one run of rlaunch will do, decided before anything starts: the output of
//! [`crate::cli::resolve`] and the input of [`crate::frontend::run`]. Pure data, no behaviour, so
//! that resolution is tested by looking at values and the front end never looks at flags.

use crate::wire::Launch;
use launchers::map::ProcMap;
use launchers::nodes::Node;
use launchers::start::Starter;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Everything the front end needs to run one job, and what `--dry-run` prints instead.
pub struct JobPlan {
    /// The message every daemon gets: application contexts, nodes, map policy, fabric and PMI.
    pub launch: Launch,
    pub nodes: Vec<Node>,
    pub map: ProcMap,
    pub starter: Starter,
    pub daemon_path: String,
    pub timeout: Option<Duration>,
    /// Open MPI's `--get-stack-traces`: at the timeout, print every running rank's stack first.
    pub get_stack_traces: bool,
    pub launch_timeout: Duration,
    pub tag_output: bool,
    /// Hydra's `-prepend-pattern`, expanded for each rank (`tag_output` is then set).
    pub prefixes: Option<Vec<String>>,
    /// Files for the ranks' output (`--output-dir`, `--output-filename`, `-outfile-pattern`, ...).
    pub output_files: Option<crate::output::OutputFiles>,
    /// `-print-all-exitcodes`: every rank's exit status on stderr at the end.
    pub print_all_exitcodes: bool,
    /// `--timestamp-output`.
    pub timestamp_output: bool,
    /// `--merge-stderr-to-stdout`.
    pub merge_stderr: bool,
    pub report: Option<PathBuf>,
    pub verbose: u8,
    /// Never show launch progress.
    pub quiet: bool,
    /// Listen on loopback only: every daemon runs on this machine.
    pub loopback: bool,
    pub command_line: Vec<String>,
    pub t0: Instant,
    /// `--dry-run`: print the map (nodes, map, `launch.apps`) and start nothing.
    pub dry_run: bool,
    /// `--display-map`: print the map as `--dry-run` does, then run.
    pub display_map: bool,
    /// Options given but not carried out by rlaunch (placement; launcher-level MCA parameters),
    /// for `--verbose` to say once each.
    pub notes: Vec<String>,
    /// What the command line asked for that cannot be done but does not stop the job (`-x` of an
    /// unset variable, as Open MPI warns): said on stderr before anything starts.
    pub warnings: Vec<String>,
    /// Open MPI's `--report-pid`: a file, or `-` (stdout) or `+` (stderr).
    pub report_pid: Option<String>,
    /// `MPIEXEC_PORT_RANGE`: the ports the front end and daemons listen on.
    pub ports: Option<crate::spec::PortRange>,
    /// `--bind-address`: where the front end listens for its daemons.
    pub bind_address: Option<std::net::IpAddr>,
    /// Why the ranks get `launch.pmi.interface`, for `--verbose`.
    pub mpi_reason: String,
    /// `--max-restarts`, `--restart-scope`: what the front end does when a rank fails.
    pub restarts: crate::spec::RestartSpec,
}
