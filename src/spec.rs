//! What a job is, as data every side shares: the front end builds it, the launch message carries
//! it, each daemon reads it. No I/O and no behaviour beyond small derived answers, so that the
//! wire codec ([`crate::wire`]) depends on nothing but this file.

use fabrics::endpoints::{AssignError, FabricChoice};
use fabrics::placement::{BindTo, MapObj, Policy};
use fabrics::topology::ObjKind;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Lost nodes (issue 17): the spares, and how a silent tree link is told from an idle one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeLossSpec {
    /// `--spare N`: the last N nodes of the node list run a daemon but no rank, so that a lost
    /// node's ranks have somewhere to go.
    pub spares: u32,
    /// A tree link that carried nothing for this long gets a heartbeat probe (`--heartbeat`).
    pub heartbeat_ms: u32,
    /// A tree link whose probes went unanswered for this long is lost (`--heartbeat-timeout`):
    /// the peer's node is down or its network is.
    pub silence_ms: u32,
}

impl Default for NodeLossSpec {
    fn default() -> Self {
        NodeLossSpec { spares: 0, heartbeat_ms: 1000, silence_ms: 5000 }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StdinTarget {
    None,
    All,
    Rank(u32),
}

impl StdinTarget {
    /// Whether `rank` gets a stdin pipe.
    pub fn reaches(self, rank: u32) -> bool {
        match self {
            StdinTarget::None => false,
            StdinTarget::All => true,
            StdinTarget::Rank(r) => r == rank,
        }
    }
}

/// Exit status of one rank as seen by its daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RankStatus {
    Exited(i32),
    Signaled(i32),
    /// The program could not be started at all (errno).
    SpawnFailed(i32),
    /// The program could not be started because its working directory is not usable on the
    /// node (errno).
    NoWorkdir(i32),
}

impl RankStatus {
    pub fn is_success(self) -> bool {
        matches!(self, RankStatus::Exited(0))
    }
    /// The shell convention: the exit code, or 128+N for signal N.
    pub fn exit_code(self) -> i32 {
        match self {
            RankStatus::Exited(c) => c,
            RankStatus::Signaled(s) => 128 + s,
            RankStatus::SpawnFailed(_) | RankStatus::NoWorkdir(_) => crate::exitcode::USAGE,
        }
    }
}

/// One MPMD application context. Only what is needed to start its ranks; never per-rank data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppContext {
    pub argv: Vec<String>,
    /// Environment changes for this context: `(name, Some(value))` sets, `(name, None)` unsets.
    pub env: Vec<(String, Option<String>)>,
    pub cwd: String,
    /// Fixed width on the wire: 64 and 4096 ranks must cost the same bytes.
    #[serde(with = "fixed_opt_u32")]
    pub np: Option<u32>,
    /// Its own nodes (Open MPI's per-context `-H`), or with `--map-by seq` the node of each of
    /// its ranks: indices into the launch's node list. `None`: every node.
    pub nodes: Option<Vec<u32>>,
    /// Hydra's per-context `-envnone`/`-envlist`: this context's ranks on other nodes do not get
    /// the job's copy of rlaunch's environment (`Launch::env`), only `env` above.
    pub without_job_env: bool,
}

/// One node of the job's node list, as every daemon sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEntry {
    pub name: String,
    pub user: Option<String>,
    pub slots: u32,
    pub max_slots: Option<u32>,
}

/// How a daemon starts its children in tree-spawn mode: the same launch agent the front end would
/// use (empty = local fork/exec).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeSpawn {
    pub agent: Vec<String>,
    /// In-process ssh options when the daemons start their children over ssh.
    pub ssh: Option<SshSpec>,
}

/// The ssh options a tree-spawning daemon needs (paths as seen on every node).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshSpec {
    pub port: u16,
    pub identity: Option<String>,
    pub identities_only: bool,
    pub known_hosts: Option<String>,
    pub connect_timeout_ms: u32,
}

/// The process-management interface the ranks of a job get. One per job: a rank never sees both
/// variable sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Interface {
    /// rlaunch's PMI-1/PMI-2 server (MPICH, MVAPICH, Intel MPI).
    Pmi,
    /// libpmix's server (Open MPI).
    Pmix,
}

impl fmt::Display for Interface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Interface::Pmi => "PMI",
            Interface::Pmix => "PMIx",
        })
    }
}

/// `--mpi`, `--pmi-port` and `--pmi-lazy`, resolved: how every daemon serves its ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PmiSpec {
    pub interface: Interface,
    /// PMI ranks find their server through `PMI_PORT` instead of an inherited `PMI_FD`.
    pub port: bool,
    /// Fences carry no data; values are fetched from their node on a miss (PMI), or Open MPI's
    /// asynchronous modex (PMIx).
    pub lazy: bool,
    /// Hydra's `-usize`: the universe size the ranks are told (MPI_UNIVERSE_SIZE, for
    /// MPI_Comm_spawn), instead of the job's size (PMI) or its slots (PMIx).
    pub universe: Option<u32>,
}

impl Default for PmiSpec {
    fn default() -> Self {
        PmiSpec { interface: Interface::Pmi, port: false, lazy: false, universe: None }
    }
}

/// Hydra's `MPIEXEC_PORT_RANGE=LOW:HIGH`: the TCP ports the front end and the daemons listen on
/// (for sites whose firewalls open only those between nodes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRange {
    pub low: u16,
    pub high: u16,
}

impl std::str::FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("'{s}': expected LOW:HIGH, two ports from 1 to 65535 with LOW <= HIGH");
        let (l, h) = s.trim().split_once(':').ok_or_else(bad)?;
        let (low, high): (u16, u16) = (l.parse().map_err(|_| bad())?, h.parse().map_err(|_| bad())?);
        if low == 0 || low > high {
            return Err(bad());
        }
        Ok(PortRange { low, high })
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.low, self.high)
    }
}

/// How `--inventory` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum InventoryFormat {
    Text,
    Json,
}

/// The user's fabric request; travels in the launch message so every daemon applies the same rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FabricSpec {
    /// `None` = `--fabric off`: no inventory exchange, no table, ranks start at once.
    pub choice: Option<FabricChoice>,
    /// `--nic`: exactly these NICs, in this order (empty = the documented default order).
    pub nics: Vec<String>,
    /// `--nic-env`: also set the variables UCX, NCCL and libfabric read.
    pub nic_env: bool,
    /// `--inventory`: gather and print, start no rank.
    pub inventory: Option<InventoryFormat>,
    /// The transport of the start-up collectives (the inventory exchange).
    pub startup: StartupTransport,
}

impl Default for FabricSpec {
    fn default() -> Self {
        FabricSpec { choice: Some(FabricChoice::Auto), nics: Vec::new(), nic_env: false, inventory: None, startup: StartupTransport::Tcp }
    }
}

/// Test-only: makes every node report a simulated RDMA port, so the start-up collectives run over
/// `fabrics::sim_link` between the daemons (over Unix sockets between the daemons of one host,
/// over TCP between hosts). `1` = every node; `fail:N` = node index N's bring-up fails, so the
/// job falls back to TCP; `break:N` = node N's link breaks at its first send of the inventory
/// exchange, `break-fence:N` at its first send of the first PMI/PMIx fence (the collective then
/// finishes over TCP). Read by the front end, which puts the mode in the launch message.
pub const SIM_RDMA_ENV: &str = "RLAUNCH_TEST_SIM_RDMA";

/// How the start-up collectives travel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StartupTransport {
    /// The daemons' TCP links.
    Tcp,
    /// Verbs queue pairs on every member's first usable RDMA port, when every member has one
    /// (else TCP, said on `-v`).
    Rdma,
    /// RDMA was asked for, but the front end (the tree's root) has no link, so nobody tries:
    /// why, for `-v` and the report.
    NoRootLink(String),
    /// Simulated RDMA links (test-only, [`SIM_RDMA_ENV`]); node `fail`'s bring-up fails on
    /// purpose, node `broken`'s link breaks in the exchange, node `broken_fence`'s in the fence.
    Simulated { fail: Option<u32>, broken: Option<u32>, broken_fence: Option<u32> },
}

impl StartupTransport {
    /// Whether the members bring links up.
    pub fn tries(&self) -> bool {
        matches!(self, StartupTransport::Rdma | StartupTransport::Simulated { .. })
    }

    /// The mode for a job: RDMA unless the user forced TCP (`--fabric tcp`) or turned the
    /// exchange off, simulated only with the test setting.
    pub fn for_job(choice: Option<FabricChoice>, test_setting: Option<&str>) -> Result<StartupTransport, String> {
        let mode = match test_setting {
            None => StartupTransport::Rdma,
            Some(v) => {
                let node = |prefix: &str| v.trim().strip_prefix(prefix).and_then(|n| n.parse::<u32>().ok());
                let sim = |fail, broken, broken_fence| StartupTransport::Simulated { fail, broken, broken_fence };
                match (v.trim(), node("fail:"), node("break:"), node("break-fence:")) {
                    ("1", ..) => sim(None, None, None),
                    (_, Some(n), _, _) => sim(Some(n), None, None),
                    (_, _, Some(n), _) => sim(None, Some(n), None),
                    (_, _, _, Some(n)) => sim(None, None, Some(n)),
                    _ => return Err(format!("{SIM_RDMA_ENV}={v}: expected 1, fail:NODE_INDEX, break:NODE_INDEX or break-fence:NODE_INDEX (a test-only setting)")),
                }
            }
        };
        Ok(match choice {
            Some(FabricChoice::Auto | FabricChoice::Rdma) => mode,
            _ => StartupTransport::Tcp,
        })
    }
}

impl FabricSpec {
    /// Whether the daemons exchange inventories at all.
    pub fn gathers(&self) -> bool {
        self.inventory.is_some() || self.choice.is_some()
    }

    /// The flag to blame in an assignment error, as the user typed it.
    pub fn flag(&self, e: &AssignError) -> String {
        match e {
            AssignError::NoSuchNic { .. } | AssignError::NicUnusable { .. } if !self.nics.is_empty() => {
                format!("--nic {}", self.nics.join(","))
            }
            _ => format!("--fabric {}", choice_name(self.choice)),
        }
    }
}

/// `--fabric`'s word for a choice.
pub fn choice_name(c: Option<FabricChoice>) -> &'static str {
    match c {
        None => "off",
        Some(FabricChoice::Auto) => "auto",
        Some(FabricChoice::Tcp) => "tcp",
        Some(FabricChoice::Rdma) => "rdma",
    }
}

/// Placement: `--map-by`'s inside-node part, `--bind-to`, `--use-hwthread-cpus`,
/// `--gpus-per-rank` (the engine's [`Policy`]), and `--report-bindings`. Job-wide, as in Open MPI:
/// every context's ranks on a node are placed together. A few bytes, whatever the job size.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementSpec {
    pub policy: Policy,
    pub report: bool,
}

impl PlacementSpec {
    /// Whether the user asked anything of placement (beyond which node a rank runs on): what
    /// `--dry-run` shows bindings for, and what a node without a readable topology must refuse
    /// rather than run unbound.
    pub fn asked(&self) -> bool {
        let p = &self.policy;
        self.report
            || !matches!(p.bind, None | Some(BindTo::None))
            || p.map.pe.is_some()
            || p.map.hwtcpus
            || p.hwthreads
            || p.gpus_per_rank > 0
            || !p.gpu_lists.is_empty()
            || !p.rank_slots.is_empty()
            || p.rank_by.is_some()
            || !matches!(p.map.obj, MapObj::Slot | MapObj::Ppr(_, ObjKind::Node))
    }
}

/// What a sensor says of its node (see [`fabrics::sensors`]); travels in `Msg::Sensor`.
pub use fabrics::sensors::State as SensorState;

/// Test-only: the root under which the daemons' built-in sensors read `sys/` and `proc/` instead
/// of `/` (a fixture tree). Read by the front end, which puts it in the launch message.
pub const SENSOR_ROOT_ENV: &str = "RLAUNCH_TEST_SENSOR_ROOT";

/// A sensor's reading (°C, MiB, errors, load, exit status): always a finite number, which makes
/// it comparable as the messages that carry it are.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SensorValue(pub f64);

impl Eq for SensorValue {}

/// `--sensors`, `--sensor CMD`, `--sensor-interval` and the thresholds: what every daemon watches
/// on its node, and how often. Absent from the launch (`None`) when no sensor is on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SensorSpec {
    /// The built-in sensors (thermal, EDAC, memory, the job's NICs, load).
    pub builtins: bool,
    /// User sensors, each run with `sh -c` every interval.
    pub commands: Vec<String>,
    pub interval_ms: u32,
    pub thresholds: fabrics::sensors::Thresholds,
    /// [`SENSOR_ROOT_ENV`]; `None`: `/`.
    pub root: Option<String>,
}

/// `Option<u32>` as a presence byte and four little-endian bytes, whatever the value.
mod fixed_opt_u32 {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<u32>, s: S) -> Result<S::Ok, S::Error> {
        v.map(u32::to_le_bytes).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        Ok(Option::<[u8; 4]>::deserialize(d)?.map(u32::from_le_bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdin_targets() {
        assert!(StdinTarget::All.reaches(3) && !StdinTarget::None.reaches(0));
        assert!(StdinTarget::Rank(2).reaches(2) && !StdinTarget::Rank(2).reaches(1));
    }

    #[test]
    fn placement_is_asked_for_only_beyond_the_node_level() {
        let spec = |map: &str, bind: Option<&str>| PlacementSpec {
            policy: Policy { map: map.parse().unwrap(), bind: bind.map(|b| b.parse().unwrap()), ..Policy::default() },
            report: false,
        };
        assert!(!spec("node", None).asked() && !spec("ppr:2:node", Some("none")).asked() && !spec("slot:SPAN", None).asked());
        assert!(spec("core", None).asked() && spec("slot:PE=2", None).asked() && spec("slot", Some("numa")).asked());
        assert!(PlacementSpec { report: true, ..PlacementSpec::default() }.asked());
    }

    #[test]
    fn np_costs_the_same_bytes_whatever_its_value() {
        let app = |np| AppContext { argv: vec!["a".into()], env: Vec::new(), cwd: "/".into(), np, nodes: None, without_job_env: false };
        let small = postcard::to_allocvec(&app(Some(1))).unwrap();
        let large = postcard::to_allocvec(&app(Some(4096))).unwrap();
        assert_eq!(small.len(), large.len());
    }
}

/// Recovery images (`--image-*`), resolved: what every daemon does with its ranks' images.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSpec {
    /// `--image-max`: the largest image a rank may save, in bytes.
    pub max: u64,
    /// `--image-copies`: how many daemons hold each image (the rank's own and its partners).
    pub copies: u32,
    /// `--image-dir`, absolute, with the job's name: where each daemon also writes its ranks'
    /// images (`crate::images::dir`).
    pub dir: Option<String>,
    /// `--image-interval` in milliseconds: how often every rank is asked for an image.
    pub interval_ms: Option<u64>,
    /// `--image-timeout` in milliseconds: how long a rank has to answer a request.
    pub timeout_ms: u64,
}

impl ImageSpec {
    /// 256 MiB.
    pub const DEFAULT_MAX: u64 = 256 << 20;
    pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
}

impl Default for ImageSpec {
    fn default() -> Self {
        ImageSpec { max: Self::DEFAULT_MAX, copies: 1, dir: None, interval_ms: None, timeout_ms: Self::DEFAULT_TIMEOUT_MS }
    }
}

/// `--restart-scope`: what a restart starts again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartScope {
    /// Only the failed rank, on its node, with the same binding; the others go on.
    Rank,
    /// Every rank, after all were stopped, with a fresh PMI/PMIx generation.
    Job,
}

impl RestartScope {
    pub fn name(self) -> &'static str {
        match self {
            RestartScope::Rank => "rank",
            RestartScope::Job => "job",
        }
    }
}

impl std::str::FromStr for RestartScope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "rank" => Ok(RestartScope::Rank),
            "job" => Ok(RestartScope::Job),
            _ => Err("expected rank or job".into()),
        }
    }
}

/// `--max-restarts`, `--restart-scope`: how the front end answers a failed rank.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestartSpec {
    /// Rank scope: restarts per rank; job scope: restarts of the job. 0: the first failure ends
    /// the job.
    pub max: u32,
    pub scope: RestartScope,
}

impl Default for RestartSpec {
    fn default() -> Self {
        RestartSpec { max: 0, scope: RestartScope::Rank }
    }
}
