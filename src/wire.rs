//! The front end ↔ daemon ↔ daemon wire: framing, authentication and the message set.
//!
//! No I/O happens here: [`Sealer::seal`] turns a message into bytes, [`Opener::open`] takes bytes that
//! arrived and returns whole messages (or `None` while a frame is partial). The event loops own the
//! sockets.
//!
//! Frame layout (all integers little-endian):
//!
//! | bytes | field                                                                    |
//! |-------|--------------------------------------------------------------------------|
//! | 4     | `len`: number of bytes after this field                                  |
//! | 1     | `version` ([`PROTOCOL_VERSION`])                                         |
//! | 1     | `dir`: 0 = towards the leaves (down), 1 = towards the front end (up)     |
//! | 4     | `link`: node rank of the child end of this tree edge                    |
//! | 8     | `seq`: per link and direction, starts at 0, +1 per frame                 |
//! | n     | payload: [`Msg`] encoded with postcard                                   |
//! | 32    | HMAC-SHA256(job key, version‖dir‖link‖seq‖payload)                       |
//!
//! postcard was chosen because it encodes structs positionally (field order is the numeric key, enum
//! variant index is the numeric message type, no names on the wire), uses varints, and has a stable
//! written specification; serde keeps the message definitions in one place for both ends.
//!
//! The MAC covers direction and link so that a frame captured on one edge cannot be replayed on another
//! edge or reflected back; the strictly increasing sequence number defeats replay on the same edge.

use crate::spec::{AppContext, FabricSpec, NodeEntry, NodeLossSpec, PlacementSpec, PmiSpec, PortRange, RankStatus, SensorSpec, SensorState, SensorValue, StdinTarget, TreeSpawn};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// 2: `Launch` carries the PMI options (no longer bootstrap-line flags) and a node's failure is a
/// typed [`NodeFault`]. 4: `Launch` carries the sensors (`--sensors`, `--sensor`) and the
/// lost-node options ([`NodeLossSpec`]). 5: `Launch` carries the image options.
pub const PROTOCOL_VERSION: u8 = 5;
/// Large enough for a 1 MiB output chunk plus framing many times over, small enough that a corrupt
/// length cannot make a daemon allocate gigabytes.
pub const MAX_FRAME: usize = 16 << 20;
pub const KEY_LEN: usize = 32;
const MAC_LEN: usize = 32;
const HEADER_LEN: usize = 4 + 1 + 1 + 4 + 8;

pub type JobKey = [u8; KEY_LEN];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Dir {
    Down = 0,
    Up = 1,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("frame too short ({0} bytes)")]
    TooShort(usize),
    #[error("protocol version {0} (this rlaunch speaks {PROTOCOL_VERSION}); use the same rlaunch build on every node")]
    Version(u8),
    #[error("frame authentication failed (forged, corrupted or from another job)")]
    BadMac,
    #[error("frame direction {0} is wrong for this link")]
    Direction(u8),
    #[error("frame for link {got} arrived on link {expected}")]
    Link { expected: u32, got: u32 },
    #[error("replayed or reordered frame: sequence {got}, expected {expected}")]
    Sequence { expected: u64, got: u64 },
    #[error("undecodable message: {0}")]
    Decode(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// The launch message: the application context only. Its size depends on the programs, environment
/// and node list, never on the number of ranks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Launch {
    pub job_id: String,
    pub apps: Vec<AppContext>,
    /// Sent as runs of numbered names (`n001`..`n256` is one run), so that regular node lists
    /// cost the same bytes whatever their length.
    #[serde(with = "node_runs")]
    pub nodes: Vec<NodeEntry>,
    pub policy: launchers::map::MapPolicy,
    pub fanout: u32,
    pub stdin: StdinTarget,
    /// Milliseconds between SIGTERM and SIGKILL when ranks are terminated.
    pub kill_grace_ms: u32,
    /// Job-wide environment for every rank, applied before each context's own `env`. Empty when
    /// the daemons inherit the front end's environment (local start).
    pub env: Vec<(String, Option<String>)>,
    /// Set when daemons start their own children (tree spawn).
    pub tree_spawn: Option<TreeSpawn>,
    /// `--fabric`, `--nic`, `--nic-env`, `--inventory` (see `crate::fabric`).
    pub fabric: FabricSpec,
    /// `--mpi`, `--pmi-port`, `--pmi-lazy`: what the ranks' PMI or PMIx server does.
    pub pmi: PmiSpec,
    /// `--bind-to`, `--map-by` inside a node, `--gpus-per-rank`, `--report-bindings`.
    pub placement: PlacementSpec,
    /// Lost nodes: `--spare`, `--heartbeat`, `--heartbeat-timeout`.
    pub node_loss: NodeLossSpec,
    /// `--sensors`, `--sensor CMD` and their settings; `None` (one byte) when no sensor is on.
    pub sensors: Option<SensorSpec>,
    /// Recovery images (issue 17): `--image-max`, `--image-copies`, `--image-dir`, ...
    pub image: crate::spec::ImageSpec,
}

/// Node lists as runs: consecutive nodes named `PREFIX<number>` (numbers consecutive, the same
/// zero padding, slots and user) travel as one run with fixed-width numbers.
mod node_runs {
    use super::NodeEntry;
    use serde::{de::Error as _, Deserialize, Deserializer, Serialize, Serializer};

    /// Guards the expansion of a corrupt or hostile run.
    const MAX_NODES: u64 = 1 << 20;
    /// `width` for a name without a trailing number.
    const NO_NUMBER: u8 = u8::MAX;

    #[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
    struct Run {
        prefix: String,
        /// Digits of zero padding; 0 = unpadded; NO_NUMBER = the name is just `prefix`.
        width: u8,
        first: [u8; 4],
        count: [u8; 4],
        slots: [u8; 4],
        max_slots: Option<[u8; 4]>,
        user: Option<String>,
    }

    fn split(name: &str) -> Option<(&str, &str, u32)> {
        let cut = name.trim_end_matches(|c: char| c.is_ascii_digit()).len();
        let digits = &name[cut..];
        let n: u32 = digits.parse().ok()?;
        Some((&name[..cut], digits, n))
    }

    fn format(prefix: &str, width: u8, n: u32) -> String {
        match width {
            0 => format!("{prefix}{n}"),
            w => format!("{prefix}{n:0w$}", w = w as usize),
        }
    }

    fn compress(nodes: &[NodeEntry]) -> Vec<Run> {
        let mut runs: Vec<Run> = Vec::new();
        for n in nodes {
            let slots = n.slots.to_le_bytes();
            let max_slots = n.max_slots.map(u32::to_le_bytes);
            if let (Some(last), Some((prefix, _, num))) = (runs.last_mut(), split(&n.name)) {
                let first = u32::from_le_bytes(last.first);
                let count = u32::from_le_bytes(last.count);
                let extends = last.width != NO_NUMBER
                    && last.prefix == prefix
                    && first.checked_add(count) == Some(num)
                    && format(prefix, last.width, num) == n.name
                    && last.slots == slots
                    && last.max_slots == max_slots
                    && last.user == n.user;
                if extends {
                    last.count = (count + 1).to_le_bytes();
                    continue;
                }
            }
            let (prefix, width, first) = match split(&n.name) {
                Some((prefix, _, num)) if format(prefix, 0, num) == n.name => (prefix, 0, num),
                Some((prefix, digits, num)) if digits.len() < NO_NUMBER as usize => (prefix, digits.len() as u8, num),
                _ => (n.name.as_str(), NO_NUMBER, 0),
            };
            runs.push(Run {
                prefix: prefix.to_string(),
                width,
                first: first.to_le_bytes(),
                count: 1u32.to_le_bytes(),
                slots,
                max_slots,
                user: n.user.clone(),
            });
        }
        runs
    }

    pub fn serialize<S: Serializer>(nodes: &[NodeEntry], s: S) -> Result<S::Ok, S::Error> {
        compress(nodes).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<NodeEntry>, D::Error> {
        let runs = Vec::<Run>::deserialize(d)?;
        let total: u64 = runs.iter().map(|r| u32::from_le_bytes(r.count) as u64).sum();
        if total > MAX_NODES {
            return Err(D::Error::custom(format!("node list of {total} nodes exceeds {MAX_NODES}")));
        }
        let mut out = Vec::with_capacity(total as usize);
        for r in runs {
            let first = u32::from_le_bytes(r.first);
            for i in 0..u32::from_le_bytes(r.count) {
                let name = if r.width == NO_NUMBER { r.prefix.clone() } else { format(&r.prefix, r.width, first + i) };
                out.push(NodeEntry {
                    name,
                    user: r.user.clone(),
                    slots: u32::from_le_bytes(r.slots),
                    max_slots: r.max_slots.map(u32::from_le_bytes),
                });
            }
        }
        Ok(out)
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use proptest::prelude::*;

        fn node(name: &str, slots: u32) -> NodeEntry {
            NodeEntry { name: name.into(), user: None, slots, max_slots: None }
        }

        fn round_trip(nodes: Vec<NodeEntry>) -> Vec<NodeEntry> {
            let bytes = postcard::to_allocvec(&compress(&nodes)).unwrap();
            deserialize(&mut postcard::Deserializer::from_bytes(&bytes)).unwrap()
        }

        #[test]
        fn regular_lists_are_one_run() {
            let a: Vec<NodeEntry> = (1..=16).map(|i| node(&format!("v{i:03}"), 4)).collect();
            let b: Vec<NodeEntry> = (1..=256).map(|i| node(&format!("v{i:03}"), 4)).collect();
            assert_eq!(compress(&a).len(), 1);
            assert_eq!(postcard::to_allocvec(&compress(&a)).unwrap().len(), postcard::to_allocvec(&compress(&b)).unwrap().len());
            let c: Vec<NodeEntry> = (8..=12).map(|i| node(&format!("n{i}"), 1)).collect();
            assert_eq!(compress(&c).len(), 1);
            assert_eq!(round_trip(c.clone()), c);
        }

        #[test]
        fn irregular_names_survive() {
            let nodes = vec![node("login", 2), node("n01", 1), node("n2", 1), node("n03", 1), node("10.0.0.5", 3), node("a9b", 1), node("a9b", 1)];
            assert_eq!(round_trip(nodes.clone()), nodes);
        }

        proptest! {
            #[test]
            fn any_list_round_trips(names in proptest::collection::vec("[a-c]{0,2}[0-9]{0,3}", 1..40), slots in 1u32..5) {
                let nodes: Vec<NodeEntry> = names.iter().filter(|n| !n.is_empty()).map(|n| node(n, slots)).collect();
                prop_assert_eq!(round_trip(nodes.clone()), nodes);
            }
        }
    }
}

/// Every message of the protocol. The variant index is the numeric message type: append new
/// variants at the end and bump [`PROTOCOL_VERSION`] when an existing one changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    /// Daemon → parent, first frame on a new link.
    /// `addr` is filled in by the parent that accepted the link (the address it saw), so that the
    /// front end can tell this daemon's children where to connect.
    Hello { node: u32, pid: u32, listen_port: u16, hostname: String, addr: Option<String> },
    /// Parent → daemon: what to run. Relayed unchanged down the tree.
    Launch(Box<Launch>),
    /// Daemon → up: complete lines (or a final unterminated piece) of one rank's stream.
    Output { rank: u32, stream: Stream, data: Vec<u8> },
    /// Daemon → up: the local ranks started, as `(rank, pid)`. Upward messages may list ranks; only the
    /// launch message must not grow with the rank count.
    Started { node: u32, pids: Vec<(u32, u32)>, launch_bytes: u32 },
    RankExit { rank: u32, pid: u32, status: RankStatus },
    /// Daemon → up: every local rank exited and its output was sent.
    NodeDone { node: u32 },
    /// Daemon → up: something went wrong on `node` outside any rank (relayed as is).
    NodeFailed { node: u32, fault: NodeFault },
    /// Front end → down: bytes for the stdin of the targeted rank(s). Empty data = EOF.
    Stdin { data: Vec<u8> },
    /// Front end → down: deliver this signal to every rank's process group.
    Signal { signum: i32 },
    /// Front end → down: terminate all ranks now (SIGTERM, then SIGKILL after the grace period).
    Terminate,
    /// Front end → down: SIGKILL every rank now.
    Kill,
    /// Front end → down: the job is over, exit.
    Shutdown,
    /// Front end → a daemon that joined with node [`Bootstrap::ANY_NODE`]: its node rank, and where
    /// its parent listens (`None`: the front end itself, on this connection).
    Assign { node: u32, parent: Option<String> },
    /// Front end → a joining daemon: it is not part of this job.
    Refuse { message: String },
    /// Daemon → up: something a rank did over PMI that the front end reports (relayed as is).
    PmiReport { rank: Option<u32>, node: u32, kind: PmiReportKind, message: String },
    /// Daemon → parent: its subtree's puts for PMI fence `seq` (only keys put since the previous
    /// fence), merged; sent once every rank of the subtree entered the fence. Data, not a rank list.
    Fence { seq: u64, puts: Vec<(String, String)> },
    /// Parent → down: fence `seq` completed job-wide; `puts` = every subtree's contribution, merged.
    FenceDone { seq: u64, puts: Vec<(String, String)> },
    /// `--pmi-lazy`, daemon → up to the front end (`round` 0): node `from` needs `key` (a get
    /// missed after a fence). The front end then sends it down to every node as query `round`;
    /// each node with ranks answers once with `KvsValue`.
    KvsGet { from: u32, key: String, round: u64 },
    /// `--pmi-lazy`: a node's answer to query `round` (None: not here), up to the front end; and
    /// the front end's verdict for node `to` (None: no node has the key), down the path to `to`.
    KvsValue { to: u32, key: String, value: Option<String>, round: u64 },
    /// PMIx (`crate::pmix`), daemon → parent: its subtree's blobs for PMIx fence `seq`, merged
    /// like `Fence` (key: the node, value: base64 of libpmix's opaque contribution). A sequence of
    /// its own: PMIx fences are not PMI fences.
    PmixFence { seq: u64, puts: Vec<(String, String)> },
    /// PMIx, parent → down: fence `seq` completed; every node's blob.
    PmixFenceDone { seq: u64, puts: Vec<(String, String)> },
    /// PMIx direct modex: node `from` asks the daemon of `node` for rank `rank`'s data (`id`
    /// names the request at `from`). Goes up until `node` is below, then down.
    PmixDmodexReq { from: u32, node: u32, rank: u32, id: u64 },
    /// The answer to a `PmixDmodexReq` (`status`: a PMIx status), routed like it to node `to`.
    PmixDmodexResp { to: u32, id: u64, status: i32, data: Vec<u8> },
    /// The launch-time fabric exchange (`crate::fabric`): a `fabrics::collective::Message`, up
    /// (a subtree's node inventories, once) or down (every node's, once).
    Fabric { data: Vec<u8> },
    /// Front end → down (`--get-stack-traces`, its `--timeout` expired): take the stack of every
    /// rank still running.
    StackTraces,
    /// Daemon → up: one rank's stack, as the debugger printed it (or why there is none).
    StackTrace { rank: u32, pid: u32, text: String },
    /// Daemon → up: every stack of `node` was sent.
    TracesDone { node: u32 },
    /// `--report-bindings`, daemon → up, before its ranks start: each local rank and where it
    /// runs (CPU list and picture), for the front end to print.
    Bindings { node: u32, ranks: Vec<(u32, String)> },
    /// Bringing up the start-up collectives' RDMA links (`crate::startup_rdma`), between tree
    /// neighbours only.
    Rdma(RdmaStep),
    /// Daemon → up, just before `NodeDone`: when this daemon reached each launch phase, on its
    /// own clock (`crate::timeline`).
    Timeline { node: u32, marks: crate::timeline::NodeMarks },
    // Lost nodes and tree repair (issue 17, "nodes").
    /// Parent daemon → a child that joined: where the child's ancestors above this parent listen,
    /// the front end (None) first. The child adds its parent (the address it connected to) and
    /// reconnects to the nearest live one of them when its parent is lost.
    NodeAncestors { chain: Vec<(Option<u32>, String)> },
    /// A daemon whose parent (`lost`) is gone → the ancestor it reconnected to, first frame on
    /// the new link (the job key authenticates it like a hello).
    NodeRejoin { node: u32, lost: u32, pid: u32 },
    /// The ancestor daemon `at` → up: `node` reconnected to it, finding `lost` gone on the way.
    NodeRejoined { node: u32, at: u32, lost: Vec<u32> },
    /// Front end → down: `node` is lost; every daemon routes around it and closes its link to it.
    NodeGone { node: u32 },
    /// Front end → down: node `node` is now run by the daemon of node `by` (a spare), whose host
    /// is `host`: every daemon recomputes the map with it.
    Replace { node: u32, by: u32, host: String },
    /// Front end → down: node `node` is lost, no spare takes its place, and its ranks go to the
    /// free slots of the other nodes (`closed`, every lost node, takes none): every daemon
    /// recomputes the map the same way.
    NodeRelocate { node: u32, closed: Vec<u32> },
    /// Daemon → up, only when one of `node`'s sensors changes state (`crate::spec::SensorSpec`):
    /// the sensor (`thermal:thermal_zone0`, `memory`, `command:CMD`...), its new state, the
    /// number it was decided on and one line for a person.
    Sensor { node: u32, sensor: String, state: SensorState, reading: Option<SensorValue>, reason: String },
    // Recovery images (issue 17, `crate::images`).
    /// Front end → every daemon (`--image-interval`): ask every local rank for an image; `epoch`
    /// numbers the round.
    ImageRequest { epoch: u64 },
    /// Front end → every daemon: every rank saved an image of `epoch` (job-scope loads use the
    /// latest such epoch).
    ImageComplete { epoch: u64 },
    /// Daemon → up: `node` holds rank `rank`'s image of `epoch` (`bytes` long): its own rank's or a
    /// partner's copy.
    ImageStored { rank: u32, epoch: u64, node: u32, bytes: u64 },
    /// Daemon → up: rank `rank` tried to save an image of `bytes`, over the `limit`.
    ImageRefused { rank: u32, node: u32, bytes: u64, limit: u64 },
    /// Daemon → up: rank `rank` did not answer the request of round `epoch` within the timeout.
    ImageTimedOut { rank: u32, node: u32, epoch: u64 },
    /// Daemon `from` → partner daemon `to` (routed like any node-to-node message): a piece of
    /// rank `rank`'s image of `epoch`, `total` bytes long, starting at `offset`.
    ImageCopy { to: u32, from: u32, rank: u32, epoch: u64, total: u64, offset: u64, data: Vec<u8> },
    /// Daemon `from` → daemon `to`: send me rank `rank`'s image (`job`: of the latest complete
    /// epoch you know; else its latest); `id` names the request at `from`.
    ImageFetch { to: u32, from: u32, id: u64, rank: u32, job: bool },
    /// The answer to `ImageFetch`, in pieces like `ImageCopy`; `epoch` None: not here.
    ImageFetched { to: u32, id: u64, epoch: Option<u64>, total: u64, offset: u64, data: Vec<u8> },
    // Restarts (issue 17, `--max-restarts`).
    /// Front end → towards `node` (rank scope): start these ranks of `node` again, each as
    /// `(rank, restarts)`, where `restarts` is its `RLAUNCH_RESTARTS`.
    RestartRanks { node: u32, ranks: Vec<(u32, u32)> },
    /// Front end → down (job scope): end every rank (the terminate path) for a restart as
    /// `generation`; each daemon answers `RestartStopped` once its ranks are all reported.
    RestartStop { generation: u32 },
    /// Daemon → up: every local rank is gone; the node waits for `RestartJob`.
    RestartStopped { node: u32, generation: u32 },
    /// Front end → down, once every node stopped: start every rank again as `generation`, with a
    /// fresh PMI key-value space or PMIx namespace named after it.
    RestartJob { generation: u32 },
}

/// The out-of-band part of the RDMA start-up ([`Msg::Rdma`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RdmaStep {
    /// A member's connection data for its link (or why it has none).
    Connect(Vec<u8>),
    /// A `fabrics::startup::AgreeMsg`: a subtree's bring-up verdict (up) or the decision (down).
    Agree(Vec<u8>),
    /// Child to parent: the sender's subtree is done with its links (every send posted).
    Done,
    /// Parent to child: everyone is done; release the links.
    Release,
    /// Message `k` of a start-up collective on this tree edge, over TCP after a failover
    /// (`fabrics::startup::Relay`; duplicates of what the link brought are dropped by `k`).
    Data { k: u64, data: Vec<u8> },
    /// The failover, first seen at member `origin` for `why` (and `cause`); the sender delivered
    /// `got` of the receiver's messages: the receiver re-sends from there over TCP.
    Fallback { origin: u32, why: String, cause: FallbackCause, got: u64 },
}

/// Why the start-up collectives left the RDMA links before the release ([`RdmaStep::Fallback`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FallbackCause {
    /// A link failed while the member ran the inventory exchange.
    LinkInExchange,
    /// A link failed while the member ran the first PMI/PMIx fence.
    LinkInFence,
    /// The member's ranks did not enter a fence in time (a non-MPI program, most likely).
    NoFence,
}

/// Why a node failed ([`Msg::NodeFailed`]). The front end decides on the kind, never on the text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeFault {
    /// The node's daemon could not be started, or ended before it joined (tree spawn): why.
    LaunchFailed(String),
    /// The link to the node's daemon broke; seen by its parent daemon.
    LinkLost,
    /// Something failed on the node outside any rank (PMI fence, fabric exchange, spawning).
    Internal(String),
    /// The user's request cannot be met on this node (placement: `--bind-to`, `PE=n`,
    /// `--gpus-per-rank`): a usage error, exit 2.
    Unsatisfiable(String),
    /// The heartbeat probes on the link to the node's daemon went unanswered for this many
    /// milliseconds (`--heartbeat-timeout`): the node or its network is down. Seen by its parent
    /// daemon.
    Silent { ms: u32 },
}

/// What a [`Msg::PmiReport`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PmiReportKind {
    /// The rank called PMI abort with this exit code; the job ends with it.
    Abort { code: i32 },
    /// The rank broke the PMI protocol; the job fails.
    ProtocolError,
    /// Worth a line, the job goes on.
    Warning,
    /// The rank closed its PMI connection after init without finalize; a failure even if it
    /// then exits with status 0.
    Unfinalized,
}

fn mac_for(key: &JobKey, version: u8, dir: Dir, link: u32, seq: u64, payload: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(&[version, dir as u8]);
    mac.update(&link.to_le_bytes());
    mac.update(&seq.to_le_bytes());
    mac.update(payload);
    mac
}

/// Writes frames for one direction of one link.
pub struct Sealer {
    key: JobKey,
    dir: Dir,
    link: u32,
    seq: u64,
}

impl Sealer {
    pub fn new(key: JobKey, dir: Dir, link: u32) -> Self {
        Sealer { key, dir, link, seq: 0 }
    }

    pub fn seal(&mut self, msg: &Msg) -> Vec<u8> {
        let payload = postcard::to_allocvec(msg).expect("messages always serialize");
        let seq = self.seq;
        self.seq += 1;
        let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + MAC_LEN);
        let len = (HEADER_LEN - 4 + payload.len() + MAC_LEN) as u32;
        out.extend_from_slice(&len.to_le_bytes());
        out.push(PROTOCOL_VERSION);
        out.push(self.dir as u8);
        out.extend_from_slice(&self.link.to_le_bytes());
        out.extend_from_slice(&seq.to_le_bytes());
        out.extend_from_slice(&payload);
        let tag = mac_for(&self.key, PROTOCOL_VERSION, self.dir, self.link, seq, &payload).finalize().into_bytes();
        out.extend_from_slice(&tag);
        out
    }
}

/// Reads frames for one direction of one link. `link` may be left open (`None`) on a freshly accepted
/// connection: the first authenticated frame fixes it.
pub struct Opener {
    key: JobKey,
    dir: Dir,
    link: Option<u32>,
    next_seq: u64,
}

impl Opener {
    pub fn new(key: JobKey, dir: Dir, link: Option<u32>) -> Self {
        Opener { key, dir, link, next_seq: 0 }
    }

    pub fn link(&self) -> Option<u32> {
        self.link
    }

    /// Takes one whole frame off the front of `buf` if there is one. Errors are final for the link:
    /// a stream that failed authentication cannot be resynchronised.
    pub fn open(&mut self, buf: &mut Vec<u8>) -> Result<Option<Msg>, WireError> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_le_bytes(buf[0..4].try_into().unwrap()) as usize;
        if len > MAX_FRAME {
            return Err(WireError::TooLarge(len));
        }
        if len < HEADER_LEN - 4 + MAC_LEN {
            return Err(WireError::TooShort(len));
        }
        if buf.len() < 4 + len {
            return Ok(None);
        }
        let frame: Vec<u8> = buf.drain(..4 + len).collect();
        let version = frame[4];
        let dir = frame[5];
        if dir != self.dir as u8 {
            return Err(WireError::Direction(dir));
        }
        let link = u32::from_le_bytes(frame[6..10].try_into().unwrap());
        let seq = u64::from_le_bytes(frame[10..18].try_into().unwrap());
        let payload = &frame[HEADER_LEN..frame.len() - MAC_LEN];
        let tag = &frame[frame.len() - MAC_LEN..];
        // Authenticate before trusting any header field. The MAC covers the version byte as
        // sent, so a stranger's frame is a forgery whatever version it claims, and a frame of
        // this job from another rlaunch build is named as such.
        mac_for(&self.key, version, self.dir, link, seq, payload)
            .verify_slice(tag)
            .map_err(|_| WireError::BadMac)?;
        if version != PROTOCOL_VERSION {
            return Err(WireError::Version(version));
        }
        if let Some(expected) = self.link {
            if expected != link {
                return Err(WireError::Link { expected, got: link });
            }
        }
        if seq != self.next_seq {
            return Err(WireError::Sequence { expected: self.next_seq, got: seq });
        }
        let msg: Msg = postcard::from_bytes(payload).map_err(|e| WireError::Decode(e.to_string()))?;
        self.link = Some(link);
        self.next_seq += 1;
        Ok(Some(msg))
    }
}

pub fn random_key() -> std::io::Result<JobKey> {
    let mut k = [0u8; KEY_LEN];
    getrandom::getrandom(&mut k).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(k)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex_key(s: &str) -> Option<JobKey> {
    if s.len() != KEY_LEN * 2 {
        return None;
    }
    let mut k = [0u8; KEY_LEN];
    for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
        let h = std::str::from_utf8(chunk).ok()?;
        k[i] = u8::from_str_radix(h, 16).ok()?;
    }
    Some(k)
}

/// The first line a daemon reads on its standard input: how to find its parent and who it is. The key
/// travels only here (a pipe or an ssh channel), never on a command line or in an environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bootstrap {
    pub key: JobKey,
    pub parent: String,
    pub node: u32,
    pub nnodes: u32,
    pub fanout: u32,
    pub job_id: String,
    /// Where a daemon's listener for its children must be (`MPIEXEC_PORT_RANGE`).
    pub ports: Option<PortRange>,
}

impl Bootstrap {
    pub const MAGIC: &'static str = "RLAUNCH-BOOT3";
    /// In `node`: the daemon does not know its node rank and asks the front end (rendezvous), which
    /// answers with [`Msg::Assign`]. Also the link id used until then.
    pub const ANY_NODE: u32 = u32::MAX;

    pub fn to_line(&self) -> String {
        format!(
            "{} {} {} {} {} {} {} {}\n",
            Self::MAGIC,
            hex(&self.key),
            self.parent,
            self.node,
            self.nnodes,
            self.fanout,
            self.job_id,
            self.ports.map_or_else(|| "-".to_string(), |p| p.to_string()),
        )
    }

    pub fn parse(line: &str) -> Option<Bootstrap> {
        let mut it = line.split_ascii_whitespace();
        if it.next()? != Self::MAGIC {
            return None;
        }
        let key = unhex_key(it.next()?)?;
        let parent = it.next()?.to_string();
        let node = it.next()?.parse().ok()?;
        let nnodes = it.next()?.parse().ok()?;
        let fanout = it.next()?.parse().ok()?;
        let job_id = it.next()?.to_string();
        let ports = match it.next()? {
            "-" => None,
            p => Some(p.parse().ok()?),
        };
        if it.next().is_some() {
            return None;
        }
        Some(Bootstrap { key, parent, node, nnodes, fanout, job_id, ports })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(b: u8) -> JobKey {
        [b; KEY_LEN]
    }

    fn sample_launch(np: u32) -> Msg {
        Msg::Launch(Box::new(Launch {
            job_id: "rl-1234".into(),
            apps: vec![AppContext {
                argv: vec!["./a".into(), "x".into()],
                env: vec![("A".into(), Some("1".into())), ("B".into(), None)],
                cwd: "/tmp".into(),
                np: Some(np),
                nodes: None,
                without_job_env: false,
            }],
            nodes: vec![NodeEntry { name: "n1".into(), user: None, slots: 4, max_slots: None }],
            policy: launchers::map::MapPolicy {
                map_by: launchers::map::MapBy::Slot,
                rank_by: launchers::map::RankBy::Slot,
                oversubscribe: true,
            },
            fanout: 32,
            stdin: StdinTarget::Rank(0),
            kill_grace_ms: 2000,
            env: vec![("PATH".into(), Some("/bin".into()))],
            tree_spawn: None,
            fabric: FabricSpec::default(),
            pmi: PmiSpec::default(),
            placement: PlacementSpec::default(),
            node_loss: NodeLossSpec::default(),
            sensors: None,
            image: crate::spec::ImageSpec::default(),
        }))
    }

    #[test]
    fn round_trip_and_partial_frames() {
        let mut s = Sealer::new(key(1), Dir::Up, 3);
        let mut o = Opener::new(key(1), Dir::Up, None);
        let msgs = vec![
            Msg::Hello { node: 3, pid: 42, listen_port: 5000, hostname: "h".into(), addr: None },
            Msg::Output { rank: 7, stream: Stream::Stderr, data: b"x\n".to_vec() },
            Msg::NodeDone { node: 3 },
            Msg::Sensor { node: 3, sensor: "thermal:thermal_zone0".into(), state: SensorState::Degrading, reading: Some(SensorValue(96.5)), reason: "hot".into() },
        ];
        let bytes: Vec<u8> = msgs.iter().flat_map(|m| s.seal(m)).collect();
        let mut buf = Vec::new();
        let mut got = Vec::new();
        // Byte-at-a-time delivery must produce the same messages.
        for b in bytes {
            buf.push(b);
            while let Some(m) = o.open(&mut buf).unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, msgs);
        assert_eq!(o.link(), Some(3));
        assert!(buf.is_empty());
    }

    #[test]
    fn forged_frame_is_rejected() {
        let mut s = Sealer::new(key(9), Dir::Down, 0);
        let mut o = Opener::new(key(1), Dir::Down, Some(0));
        let mut buf = s.seal(&Msg::Kill);
        assert_eq!(o.open(&mut buf), Err(WireError::BadMac));
    }

    #[test]
    fn tampered_payload_is_rejected() {
        let mut s = Sealer::new(key(1), Dir::Down, 0);
        let mut o = Opener::new(key(1), Dir::Down, Some(0));
        let mut buf = s.seal(&Msg::Signal { signum: 2 });
        let n = buf.len();
        buf[n - 33] ^= 1;
        assert_eq!(o.open(&mut buf), Err(WireError::BadMac));
    }

    #[test]
    fn replay_is_rejected() {
        let mut s = Sealer::new(key(1), Dir::Down, 0);
        let mut o = Opener::new(key(1), Dir::Down, Some(0));
        let frame = s.seal(&Msg::Terminate);
        let mut buf = frame.clone();
        assert_eq!(o.open(&mut buf).unwrap(), Some(Msg::Terminate));
        let mut again = frame;
        assert_eq!(o.open(&mut again), Err(WireError::Sequence { expected: 1, got: 0 }));
    }

    #[test]
    fn frame_from_other_link_or_direction_is_rejected() {
        let mut s = Sealer::new(key(1), Dir::Up, 4);
        let mut o = Opener::new(key(1), Dir::Up, Some(5));
        let mut buf = s.seal(&Msg::NodeDone { node: 4 });
        assert_eq!(o.open(&mut buf), Err(WireError::Link { expected: 5, got: 4 }));
        let mut s = Sealer::new(key(1), Dir::Down, 5);
        let mut o = Opener::new(key(1), Dir::Up, Some(5));
        let mut buf = s.seal(&Msg::Kill);
        assert_eq!(o.open(&mut buf), Err(WireError::Direction(0)));
    }

    #[test]
    fn oversized_length_is_rejected_before_allocation() {
        let mut o = Opener::new(key(1), Dir::Up, None);
        let mut buf = ((MAX_FRAME + 1) as u32).to_le_bytes().to_vec();
        assert_eq!(o.open(&mut buf), Err(WireError::TooLarge(MAX_FRAME + 1)));
    }

    #[test]
    fn launch_size_does_not_depend_on_rank_count() {
        let mut s = Sealer::new(key(1), Dir::Down, 0);
        let a = s.seal(&sample_launch(64)).len();
        let b = s.seal(&sample_launch(4000)).len();
        // varint: 64 and 4000 both take 2 bytes.
        assert_eq!(a, b);
    }

    /// A frame sealed as protocol `version` (the MAC covers the version byte as sent).
    fn sealed_as(key: JobKey, version: u8) -> Vec<u8> {
        let mut bytes = Sealer::new(key, Dir::Up, 1).seal(&Msg::NodeDone { node: 1 });
        bytes[4] = version;
        let cut = bytes.len() - MAC_LEN;
        let (body, tag) = bytes.split_at_mut(cut);
        let payload = &body[HEADER_LEN..];
        tag.copy_from_slice(&mac_for(&key, version, Dir::Up, 1, 0, payload).finalize().into_bytes());
        bytes
    }

    #[test]
    fn another_build_is_named_and_a_stranger_is_a_forgery_whatever_its_version() {
        let mut frame = sealed_as(key(1), PROTOCOL_VERSION - 1);
        assert_eq!(Opener::new(key(1), Dir::Up, None).open(&mut frame), Err(WireError::Version(PROTOCOL_VERSION - 1)));
        let mut frame = sealed_as(key(2), PROTOCOL_VERSION - 1);
        assert_eq!(Opener::new(key(1), Dir::Up, None).open(&mut frame), Err(WireError::BadMac));
        let mut frame = sealed_as(key(1), PROTOCOL_VERSION);
        assert_eq!(Opener::new(key(1), Dir::Up, None).open(&mut frame), Ok(Some(Msg::NodeDone { node: 1 })));
    }

    #[test]
    fn bootstrap_line_round_trips() {
        let b = Bootstrap { key: key(0xab), parent: "10.0.0.1:4000".into(), node: 7, nnodes: 9, fanout: 2, job_id: "rl-x".into(), ports: None };
        assert_eq!(Bootstrap::parse(&b.to_line()), Some(b.clone()));
        let b = Bootstrap { ports: Some(PortRange { low: 9000, high: 9010 }), ..b };
        assert_eq!(Bootstrap::parse(&b.to_line()), Some(b));
        assert_eq!(Bootstrap::parse("RLAUNCH-BOOT3 zz 1:2 0 1 2 j -"), None);
        assert_eq!(Bootstrap::parse(&format!("RLAUNCH-BOOT3 {} 1:2 0 1 2 j 9:8", hex(&key(1)))), None);
        assert_eq!(Bootstrap::parse(&format!("RLAUNCH-BOOT2 {} 1:2 0 1 2 j", hex(&key(1)))), None);
        // An older rlaunch's line (with flags) is refused, not misread.
        let old = format!("RLAUNCH-BOOT1 {} 1:2 0 1 2 j 0", hex(&key(1)));
        assert_eq!(Bootstrap::parse(&old), None);
        assert_eq!(Bootstrap::parse("garbage"), None);
    }

    proptest! {
        #[test]
        fn output_round_trips(rank in any::<u32>(), data in proptest::collection::vec(any::<u8>(), 0..2048), split in 0usize..4096) {
            let mut s = Sealer::new(key(2), Dir::Up, 1);
            let mut o = Opener::new(key(2), Dir::Up, Some(1));
            let msg = Msg::Output { rank, stream: Stream::Stdout, data };
            let bytes = s.seal(&msg);
            let cut = split.min(bytes.len());
            let mut buf = bytes[..cut].to_vec();
            let first = o.open(&mut buf).unwrap();
            if cut < bytes.len() { prop_assert_eq!(first, None); buf.extend_from_slice(&bytes[cut..]); prop_assert_eq!(o.open(&mut buf).unwrap(), Some(msg)); }
            else { prop_assert_eq!(first, Some(msg)); }
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut o = Opener::new(key(2), Dir::Up, None);
            let mut buf = bytes;
            let _ = o.open(&mut buf);
        }
    }
}
