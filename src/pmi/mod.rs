//! PMI-1 ("simple") and PMI-2 server engine for one node's daemon.
//!
//! The engine does no I/O: the daemon feeds it the bytes each rank wrote to its PMI socket and
//! carries out the returned [`Action`]s (write reply bytes, run the cross-node fence, end the job).
//! Both wire protocols share one key-value space, one fence and one set of node attributes, so a
//! job may mix PMI-1 and PMI-2 clients. Protocol facts: ../shared/docs/pmi.md.
//!
//! Daemon contract:
//! - Give each rank a socket and `PMI_RANK`, `PMI_SIZE` plus either `PMI_FD` (then
//!   `connect(conn, Some(rank))`) or `PMI_PORT` and `PMI_ID=<global rank>` (then
//!   `connect(conn, None)`; the client names its rank with `initack` / `fullinit`).
//! - Feed every read to `input`, EOF to `disconnect`, and carry out the actions in order.
//! - On `FenceReady` from every node, merge the nodes' puts (node order; a later value for the
//!   same key wins) and call `fence_done(seq, merged)` on every node.
//! - `Abort`, `ProtocolError` and `Vanished` end the job; later disconnects of killed ranks stay
//!   quiet. `Vanished` (closed after init without finalize) is worth its own report only when
//!   the rank then exits with status 0: a crash explains itself.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

pub mod host;
mod pmi1;
mod pmi2;
#[cfg(test)]
mod transcript_tests;

/// A PMI-1 client reads replies into a 1024-byte buffer (MPICH `PMIU_MAXLINE`), so a reply line
/// including its newline must fit; requests are held to the same size because the client builds
/// them in the same buffer.
pub const PMI1_LINE_MAX: usize = 1024;
/// Advertised in `maxes`. MPICH limits usable value length to 1024 − kvsname_max − keylen_max − 30,
/// so a small number here leaves more room for values.
pub const KVSNAME_MAX: usize = 64;
/// Key length limit of both MPICH clients (PMI-2 `PMI2_MAX_KEYLEN`).
pub const KEYLEN_MAX: usize = 64;
/// Value length limit of both MPICH clients; a PMI-2 client rejects a reply value longer than this.
pub const VALLEN_MAX: usize = 1024;
/// Distinct keys one rank may put over the job. MPICH puts a handful per rank (values over
/// ~800 bytes become `-seg-i/n` chunks); the cap bounds daemon memory at about 4.4 MiB per rank.
pub const MAX_KEYS_PER_RANK: usize = 4096;
/// A PMI-2 message starts with its length as 6 ASCII characters.
pub const PMI2_HEADER_LEN: usize = 6;
/// The MPICH PMI-2 client cannot build a message longer than 64 KiB (`PMII_MAX_COMMAND_LEN`).
pub const PMI2_FRAME_MAX: usize = 64 * 1024;
/// Largest incomplete input kept per connection: one PMI-2 message with its header (a PMI-1 line
/// is smaller). More than this without a complete message is a protocol error, never growth.
pub const MAX_BUFFERED_INPUT: usize = PMI2_HEADER_LEN + PMI2_FRAME_MAX;
/// A PMI-1 `mcmd=spawn … endcmd` block; MPICH builds each block in one 1024-byte buffer, and a
/// generous cap keeps a client that never sends `endcmd` from growing the daemon.
pub const MCMD_MAX: usize = 64 * 1024;
/// Replies one connection may have outstanding at once (PMI-2 threads may each wait on a node
/// attribute); more is a runaway client, and each waiter holds memory.
pub const MAX_PENDING_PER_CONN: usize = 64;
/// Node attributes on one node (MPICH puts one or two).
pub const MAX_NODE_ATTRS: usize = 4096;
/// Names in the job-local name service.
pub const MAX_PUBLISHED_NAMES: usize = 1024;
/// `MPI_MAX_PORT_NAME` in MPICH is 256: a longer port string could not be handed back to MPI.
pub const PORT_MAX: usize = 256;
/// Command names are short words; a longer one is garbage, not a command from a newer client.
pub const CMD_NAME_MAX: usize = 64;
/// MPICH sends a pointer (`%p`) as `thrid`; the cap bounds the echo in replies.
pub const THRID_MAX: usize = 64;

/// The daemon's handle for one PMI socket.
pub type ConnId = u32;

/// The multiply-rotate hash of rustc (FxHash): SipHash was the largest single cost of a PMI
/// request after the syscalls, several lookups per request. Flooding the tables with colliding
/// keys needs a rank of the job, which can only slow its own job.
#[derive(Default, Clone, Copy)]
pub struct FxHasher {
    hash: u64,
}

const FX_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(FX_SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("8-byte chunk")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(last));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64);
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(i as u64);
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    fn finish(&self) -> u64 {
        self.hash
    }
}

/// Maps and sets of the PMI engine and host, hashed with [`FxHasher`].
pub type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;
pub type FxSet<K> = HashSet<K, BuildHasherDefault<FxHasher>>;

/// What the engine needs to know about the job and this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobInfo {
    /// e.g. "rl-1a2b3c"; sanitised by [`PmiServer::new`] to ≤ 63 bytes of `[A-Za-z0-9._-]`.
    pub kvsname: String,
    /// Job size.
    pub size: u32,
    pub universe_size: u32,
    /// Index = global rank -> MPMD app number.
    pub appnum_of: Vec<u32>,
    /// Global ranks on this node (ascending).
    pub local_ranks: Vec<u32>,
    /// `PMI_process_mapping` vector form, None = omit.
    pub process_mapping: Option<String>,
    pub node_count: u32,
}

/// What the daemon must do after feeding the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Reply bytes to write to that connection, in order.
    Send {
        conn: ConnId,
        bytes: Vec<u8>,
    },
    /// All local ranks entered the fence (PMI-1 barrier_in / PMI-2 kvs-fence). `puts` = the keys put on
    /// this node since the previous fence (only those travel). The daemon runs the tree collective and
    /// later calls `fence_done` with every node's puts merged.
    FenceReady {
        seq: u64,
        puts: Vec<(String, String)>,
    },
    /// The daemon ends the job with this code.
    Abort {
        rank: u32,
        code: i32,
        message: String,
    },
    Finalized {
        rank: u32,
    },
    Initialized {
        rank: u32,
        version: (u8, u8),
    },
    /// The client broke the protocol: the daemon reports it (one line naming the rank) and fails the job.
    /// The engine ignores that connection from then on.
    ProtocolError {
        conn: ConnId,
        rank: Option<u32>,
        message: String,
    },
    /// Worth one log line, but the job goes on: the client asked for something rlaunch does not
    /// offer (spawn, an unknown command) and got an error reply it can handle.
    Warning {
        rank: Option<u32>,
        message: String,
    },
    /// The rank closed its PMI connection after init without finalize or abort: its peers would
    /// wait for it forever, so the job fails. Kept apart from `ProtocolError` because the daemon
    /// knows more once the rank is reaped: a crash is reported as the crash, and only an exit
    /// with status 0 needs this said (`message`).
    Vanished {
        rank: u32,
        message: String,
    },
    /// Lazy mode ([`PmiServer::set_lazy`]): a get after a fence missed `key` here. The daemon
    /// fetches it from the node that has it and calls [`PmiServer::fetched`]; the rank's reply
    /// waits until then. Emitted per waiting get; the daemon may merge requests for one key.
    Fetch {
        key: String,
    },
}

impl JobInfo {
    /// The job as node `node` of `map` sees it. `PMI_process_mapping` is left out when the map
    /// cannot say it or it is longer than a PMI value may be: MPICH then finds its node peers by
    /// hostname, slower but right, where a cut value would break shared memory.
    pub fn from_map(kvsname: &str, map: &launchers::map::ProcMap, node: u32) -> JobInfo {
        JobInfo {
            kvsname: kvsname.to_string(),
            size: map.size(),
            universe_size: map.size(),
            appnum_of: map.ranks().iter().map(|p| p.app).collect(),
            local_ranks: map.ranks_on(node).to_vec(),
            process_mapping: map.pmi_process_mapping().filter(|m| m.len() <= VALLEN_MAX),
            node_count: map.num_nodes(),
        }
    }
}

/// Who a message is about: a rank once known, else the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    Rank(u32),
    Conn(ConnId),
}

impl fmt::Display for Who {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Who::Rank(r) => write!(f, "rank {r}"),
            Who::Conn(c) => write!(f, "pmi connection {c} (rank not yet known)"),
        }
    }
}

/// Everything the engine reports, as text for [`Action::ProtocolError`] and [`Action::Warning`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PmiError {
    #[error("{who} wrote bytes that are neither a PMI-1 line nor a PMI-2 message to its PMI socket; the program must not use the PMI_FD descriptor itself")]
    NotPmi { who: Who },
    #[error("{who} sent a PMI-1 line longer than {PMI1_LINE_MAX} bytes; its PMI client library does not match rlaunch (PMI-1.1 and PMI-2.0 are served)")]
    LineTooLong { who: Who },
    #[error("{who} sent a multi-line PMI command longer than {MCMD_MAX} bytes without `endcmd`; its PMI client library is broken")]
    McmdTooLong { who: Who },
    #[error("{who} sent PMI-2 length header {header:?}, which is not a decimal number; the client lost message framing")]
    BadFrameHeader { who: Who, header: String },
    #[error("{who} announced a {len}-byte PMI-2 message, over the {PMI2_FRAME_MAX}-byte limit; the client lost message framing")]
    FrameTooLong { who: Who, len: usize },
    #[error("{who} sent an empty PMI-2 message; the client lost message framing")]
    EmptyFrame { who: Who },
    #[error("{who} sent a PMI message that is not UTF-8 text; hex-encode binary keys and values")]
    NotUtf8 { who: Who },
    #[error("{who} sent PMI-1 token {token:?} without `=`; PMI-1 messages are `key=value` words separated by spaces")]
    MalformedToken { who: Who, token: String },
    #[error("{who} sent a PMI message that does not start with `cmd=`")]
    MissingCmd { who: Who },
    #[error("{who} sent a PMI command name longer than {CMD_NAME_MAX} bytes; the client is not speaking PMI")]
    CmdTooLong { who: Who },
    #[error("{who} sent a PMI-2 `thrid` longer than {THRID_MAX} bytes")]
    ThridTooLong { who: Who },
    #[error("{who} sent PMI command `{cmd}` without the required `{field}=` field")]
    MissingField {
        who: Who,
        cmd: String,
        field: &'static str,
    },
    #[error("{who} sent PMI command `{cmd}` with {field}={value:?}, which is not a valid number")]
    BadNumber {
        who: Who,
        cmd: String,
        field: &'static str,
        value: String,
    },
    #[error("pmi connection {conn} sent `{cmd}` before naming its rank; PMI_PORT clients must send `cmd=initack pmiid=<PMI_ID>` (PMI-1) or `fullinit` with `pmirank=` (PMI-2) first")]
    RankUnknown { conn: ConnId, cmd: String },
    #[error("{who} claims rank {rank}, which this node does not run; check PMI_ID / PMI_RANK in the process environment")]
    RankNotLocal { who: Who, rank: u32 },
    #[error("{who} claims rank {rank}, which another PMI connection already holds; check that PMI_ID / PMI_RANK differ per process")]
    RankTaken { who: Who, rank: u32 },
    #[error("rank {rank} named itself rank {claimed} in PMI; check PMI_ID / PMI_RANK in the process environment")]
    RankMismatch { rank: u32, claimed: u32 },
    #[error("{who} asked for PMI version {version}.{subversion}; rlaunch serves PMI 1.1 and 2.0, so link the program against an MPI built for one of those")]
    BadVersion {
        who: Who,
        version: String,
        subversion: String,
    },
    #[error("rank {rank} sent PMI command `{cmd}` after PMI finalize")]
    AfterFinalize { rank: u32, cmd: String },
    #[error("rank {rank} entered the PMI barrier/fence again before the previous one completed")]
    DuplicateFence { rank: u32 },
    #[error("rank {rank} sent PMI command `{cmd}` while waiting in a PMI-1 barrier; PMI-1 allows one request at a time")]
    BusyInBarrier { rank: u32, cmd: String },
    #[error("rank {rank} put more than {MAX_KEYS_PER_RANK} distinct PMI keys; the application floods the key-value space")]
    TooManyKeys { rank: u32 },
    #[error("{who} used an empty PMI key")]
    EmptyKey { who: Who },
    #[error("{who} used a {len}-byte PMI key; the limit is {KEYLEN_MAX}")]
    KeyTooLong { who: Who, len: usize },
    #[error("{who} put a {len}-byte PMI value; the limit is {VALLEN_MAX}")]
    ValueTooLong { who: Who, len: usize },
    #[error("{who} used a {len}-byte port or service name; the limit is {PORT_MAX}")]
    NameTooLong { who: Who, len: usize },
    #[error("{who} has more than {MAX_PENDING_PER_CONN} PMI requests waiting for replies")]
    TooManyPending { who: Who },
    #[error("{who} put more than {MAX_NODE_ATTRS} PMI node attributes on this node")]
    TooManyNodeAttrs { who: Who },
    #[error("{who} published more than {MAX_PUBLISHED_NAMES} PMI service names")]
    TooManyNames { who: Who },
    #[error("rank {rank} closed its PMI connection without PMI finalize; it exited without MPI_Finalize or crashed")]
    ClosedBeforeFinalize { rank: u32 },
    #[error("{who} sent unknown PMI command `{cmd}`; it got an error reply (rlaunch serves PMI 1.1 and 2.0)")]
    UnknownCommand { who: Who, cmd: String },
    #[error("{who} asked for PMI `{cmd}`, which rlaunch does not support; it got an error reply")]
    Unsupported { who: Who, cmd: String },
    #[error("{who} called MPI_Comm_spawn (PMI spawn); rlaunch does not start processes at run time, so the call fails")]
    SpawnUnsupported { who: Who },
    #[error("{who} asked for PMI key {key:?}, whose value cannot travel in a PMI-1 reply (too long, or holds a space or newline); it got key-not-found")]
    NotRepresentable { who: Who, key: String },
    #[error("fence_done for fence {seq}, but the fence in progress is {expected:?}; the daemon mixed up fences (ignored)")]
    UnexpectedFenceDone { seq: u64, expected: Option<u64> },
}

/// How a connection frames its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Nothing decisive seen yet.
    Detect,
    /// PMI-1 lines (also PMI-2's opening `cmd=init pmi_version=2`).
    Line,
    /// PMI-2 length-prefixed messages.
    Framed,
}

#[derive(Debug)]
struct Conn {
    rank: Option<u32>,
    mode: Mode,
    buf: Vec<u8>,
    /// A protocol error was reported: input is dropped from then on.
    dead: bool,
    /// Set by `connect` when the rank it named cannot be used; reported on first input because
    /// `connect` returns no actions.
    pending_error: Option<PmiError>,
    /// PMI-1 `mcmd=` block being collected: its `key=value` lines and their total size.
    mcmd: Option<(Vec<(String, String)>, usize)>,
    /// Requests waiting for a deferred reply (fence, node attribute).
    pending: usize,
    /// A PMI-1 client waits for `barrier_out` and may send nothing but `abort`.
    in_v1_barrier: bool,
}

impl Conn {
    fn new(rank: Option<u32>) -> Self {
        Conn {
            rank,
            mode: Mode::Detect,
            buf: Vec::new(),
            dead: false,
            pending_error: None,
            mcmd: None,
            pending: 0,
            in_v1_barrier: false,
        }
    }
}

#[derive(Debug, Default)]
struct RankState {
    conn: Option<ConnId>,
    initialized: bool,
    finalized: bool,
    aborted: bool,
    keys: FxSet<String>,
}

/// How to answer a rank once the fence completes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum FenceReply {
    V1,
    V2 { thrid: Option<String> },
}

#[derive(Debug)]
struct FenceEntry {
    rank: u32,
    conn: ConnId,
    reply: FenceReply,
}

/// How to answer a get that waits for a fetched value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum GetReply {
    V1,
    V2 { thrid: Option<String> },
}

#[derive(Debug)]
struct FetchWaiter {
    conn: ConnId,
    key: String,
    reply: GetReply,
}

#[derive(Debug)]
struct AttrWaiter {
    conn: ConnId,
    key: String,
    thrid: Option<String>,
}

/// The PMI server of one node.
#[derive(Debug)]
pub struct PmiServer {
    job: JobInfo,
    conns: FxMap<ConnId, Conn>,
    ranks: FxMap<u32, RankState>,
    /// What gets read: every fence's merged puts plus this node's puts since (local gets of a
    /// key put before the fence need not wait for it).
    kvs: FxMap<String, String>,
    /// Puts on this node since the last FenceReady, in order, last value per key.
    epoch_puts: Vec<(String, String)>,
    epoch_index: FxMap<String, usize>,
    fence_seq: u64,
    fence_entries: Vec<FenceEntry>,
    /// FenceReady was emitted for `fence_seq` and fence_done has not come yet.
    fence_outstanding: bool,
    node_attrs: FxMap<String, String>,
    attr_waiters: Vec<AttrWaiter>,
    names: FxMap<String, String>,
    /// An abort or protocol error was reported: the daemon is ending the job, so ranks it kills
    /// closing their connections is expected, not news.
    ending: bool,
    /// Fences carry no data; a get that misses after a fence asks the daemon to fetch the key.
    lazy: bool,
    fetch_waiters: Vec<FetchWaiter>,
    /// Keys in `kvs` that came from another node by fetch: forgotten at the next fence, since
    /// their owner may put a new value before it.
    fetched_keys: FxSet<String>,
}

/// Keeps the kvsname safe inside both wire formats (no space, `;`, `=` or newline) and within
/// the advertised `kvsname_max`. Only clients ever see it, so rewriting it is harmless.
fn sanitize_kvsname(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .take(KVSNAME_MAX - 1)
        .collect();
    if s.is_empty() {
        s.push_str("rlaunch");
    }
    s
}

/// A value can be sent in a PMI-1 line only if it ends at the next space and cannot start a new line.
fn v1_safe(value: &str) -> bool {
    !value.bytes().any(|b| b == b' ' || b == b'\n' || b == 0)
}

impl PmiServer {
    pub fn new(mut job: JobInfo) -> Self {
        job.kvsname = sanitize_kvsname(&job.kvsname);
        let ranks = job
            .local_ranks
            .iter()
            .map(|&r| (r, RankState::default()))
            .collect();
        PmiServer {
            job,
            conns: FxMap::default(),
            ranks,
            kvs: FxMap::default(),
            epoch_puts: Vec::new(),
            epoch_index: FxMap::default(),
            fence_seq: 1,
            fence_entries: Vec::new(),
            fence_outstanding: false,
            node_attrs: FxMap::default(),
            attr_waiters: Vec::new(),
            names: FxMap::default(),
            ending: false,
            lazy: false,
            fetch_waiters: Vec::new(),
            fetched_keys: FxSet::default(),
        }
    }

    /// Lazy mode: the daemon ships nothing at fences (it may drop `FenceReady`'s puts) and a get
    /// that misses after the first fence becomes [`Action::Fetch`] instead of "not found".
    pub fn set_lazy(&mut self, lazy: bool) {
        self.lazy = lazy;
    }

    /// A value this node's ranks put, for another node's fetch (lazy mode). Values fetched from
    /// elsewhere are not handed on: their owner answers for them.
    pub fn lookup(&self, key: &str) -> Option<&str> {
        if self.fetched_keys.contains(key) {
            return None;
        }
        self.kvs_get(key)
    }

    /// The answer to [`Action::Fetch`]: replies to every get waiting for `key` (None: no node
    /// has it, the gets report "not found").
    pub fn fetched(&mut self, key: String, value: Option<String>) -> Vec<Action> {
        let mut out = Vec::new();
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.fetch_waiters)
            .into_iter()
            .partition(|w| w.key == key);
        self.fetch_waiters = waiting;
        if let Some(v) = &value {
            // A local put since the fetch started is newer than the fetched value: keep it.
            if !self.kvs.contains_key(&key) {
                self.kvs.insert(key.clone(), v.clone());
                self.fetched_keys.insert(key.clone());
            }
        }
        let current = self.kvs.get(&key).cloned().or(value);
        for w in ready {
            let Some(c) = self.conns.get_mut(&w.conn) else { continue };
            if c.dead {
                continue;
            }
            c.pending = c.pending.saturating_sub(1);
            match &w.reply {
                GetReply::V1 => pmi1::get_reply(self, w.conn, &key, current.as_deref(), &mut out),
                GetReply::V2 { thrid } => pmi2::found_reply(
                    self,
                    w.conn,
                    &mut out,
                    "kvs-get-response",
                    thrid.as_deref(),
                    &key,
                    current.as_deref(),
                ),
            }
        }
        out
    }

    /// Lazy mode, a get missed: Ok(true) when the reply now waits for [`PmiServer::fetched`].
    /// Before the first fence completed nobody else's puts are due, so a miss is final.
    fn defer_get(
        &mut self,
        conn: ConnId,
        key: &str,
        reply: GetReply,
        out: &mut Vec<Action>,
    ) -> Result<bool, PmiError> {
        if !self.lazy || self.fence_seq == 1 {
            return Ok(false);
        }
        self.add_pending(conn)?;
        self.fetch_waiters.push(FetchWaiter {
            conn,
            key: key.to_string(),
            reply,
        });
        out.push(Action::Fetch {
            key: key.to_string(),
        });
        Ok(true)
    }

    /// The kvsname clients see (after sanitising).
    pub fn kvsname(&self) -> &str {
        &self.job.kvsname
    }

    /// PMI_FD mode: rank is known when the socket is created. PMI_PORT mode: None until `initack pmiid=`.
    /// A connection id reused without `disconnect` starts afresh.
    pub fn connect(&mut self, conn: ConnId, rank: Option<u32>) {
        self.drop_conn(conn);
        self.conns.insert(conn, Conn::new(None));
        if let Some(r) = rank {
            if let Err(e) = self.bind_rank(conn, r) {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.pending_error = Some(e);
                }
            }
        }
    }

    /// Feeds bytes read from `conn`; any split of the byte stream gives the same actions.
    /// Input for a connection never announced with `connect` is taken as PMI_PORT mode.
    pub fn input(&mut self, conn: ConnId, bytes: &[u8]) -> Vec<Action> {
        let mut out = Vec::new();
        let c = self.conns.entry(conn).or_insert_with(|| Conn::new(None));
        if c.dead {
            return out;
        }
        if let Some(e) = c.pending_error.take() {
            self.fail(conn, e, &mut out);
            return out;
        }
        let mut buf = std::mem::take(&mut c.buf);
        buf.extend_from_slice(bytes);
        let mut pos = 0;
        while let Some(mode) = self.conns.get(&conn).filter(|c| !c.dead).map(|c| c.mode) {
            let rest = &buf[pos..];
            let step = match mode {
                Mode::Detect => self.detect(conn, rest),
                Mode::Line => self.next_line(conn, rest, &mut out),
                Mode::Framed => self.next_frame(conn, rest, &mut out),
            };
            match step {
                Ok(Some(used)) => pos += used,
                Ok(None) => break,
                Err(e) => {
                    self.fail(conn, e, &mut out);
                    break;
                }
            }
        }
        buf.drain(..pos);
        if let Some(c) = self.conns.get_mut(&conn) {
            if c.dead {
                c.buf = Vec::new();
            } else if buf.len() > MAX_BUFFERED_INPUT {
                // Each step consumes every complete message, so this is one unfinished message
                // that is already over every limit.
                let who = self.who(conn);
                self.fail(
                    conn,
                    PmiError::FrameTooLong {
                        who,
                        len: buf.len(),
                    },
                    &mut out,
                );
            } else {
                c.buf = buf;
            }
        }
        out
    }

    /// EOF on `conn`: nothing happens unless the rank was initialised and neither finalised nor
    /// aborted, because then its peers would wait for it forever. Once the job is ending (an
    /// abort or protocol error was reported) closing is expected and stays quiet.
    pub fn disconnect(&mut self, conn: ConnId) -> Vec<Action> {
        let mut out = Vec::new();
        let Some(c) = self.conns.get(&conn) else {
            return out;
        };
        if let (Some(rank), false, false) = (c.rank, c.dead, self.ending) {
            if let Some(rs) = self.ranks.get(&rank) {
                if rs.initialized && !rs.finalized && !rs.aborted {
                    self.ending = true;
                    out.push(Action::Vanished {
                        rank,
                        message: PmiError::ClosedBeforeFinalize { rank }.to_string(),
                    });
                }
            }
        }
        self.drop_conn(conn);
        out
    }

    /// The daemon finished fence `seq`; `all_puts` = every node's puts of that epoch, merged.
    /// Answers every rank waiting in the fence.
    pub fn fence_done(&mut self, seq: u64, all_puts: Vec<(String, String)>) -> Vec<Action> {
        let mut out = Vec::new();
        if !self.fence_outstanding || seq != self.fence_seq {
            let expected = self.fence_outstanding.then_some(self.fence_seq);
            out.push(Action::Warning {
                rank: None,
                message: PmiError::UnexpectedFenceDone { seq, expected }.to_string(),
            });
            return out;
        }
        for k in self.fetched_keys.drain() {
            self.kvs.remove(&k);
        }
        for (k, v) in all_puts {
            self.kvs.insert(k, v);
        }
        let mut entries = std::mem::take(&mut self.fence_entries);
        entries.sort_by_key(|e| e.rank);
        for e in entries {
            let Some(c) = self.conns.get_mut(&e.conn) else {
                continue;
            };
            if c.dead || c.rank != Some(e.rank) {
                continue;
            }
            c.pending = c.pending.saturating_sub(1);
            let bytes = match &e.reply {
                FenceReply::V1 => {
                    c.in_v1_barrier = false;
                    b"cmd=barrier_out\n".to_vec()
                }
                FenceReply::V2 { thrid } => {
                    pmi2::frame("kvs-fence-response", thrid.as_deref(), &[("rc", "0")])
                }
            };
            out.push(Action::Send {
                conn: e.conn,
                bytes,
            });
        }
        self.fence_outstanding = false;
        self.fence_seq += 1;
        out
    }

    /// The rank a connection speaks for, once known.
    pub fn rank_of(&self, conn: ConnId) -> Option<u32> {
        self.conns.get(&conn).and_then(|c| c.rank)
    }

    pub fn is_finalized(&self, rank: u32) -> bool {
        self.ranks.get(&rank).is_some_and(|r| r.finalized)
    }

    #[cfg(test)]
    pub fn is_initialized(&self, rank: u32) -> bool {
        self.ranks.get(&rank).is_some_and(|r| r.initialized)
    }

    // ---- framing ----

    /// Decides the framing from the first bytes: `cmd=` / `mcmd=` is PMI-1 style (PMI-2 clients
    /// open with a PMI-1 `init` too); a digit or space starts a PMI-2 length header.
    fn detect(&mut self, conn: ConnId, rest: &[u8]) -> Result<Option<usize>, PmiError> {
        let Some(&first) = rest.first() else {
            return Ok(None);
        };
        let mode = if first == b'\n' {
            // A blank line can only be PMI-1 framing; PMI-1 ignores it.
            Mode::Line
        } else if first.is_ascii_digit() || first == b' ' {
            Mode::Framed
        } else {
            let n = rest.len().min(5);
            let prefix_of = |word: &[u8]| word.len() >= n && word[..n] == rest[..n];
            if rest.starts_with(b"cmd=") || rest.starts_with(b"mcmd=") {
                Mode::Line
            } else if prefix_of(b"cmd=") || prefix_of(b"mcmd=") {
                return Ok(None);
            } else {
                return Err(PmiError::NotPmi {
                    who: self.who(conn),
                });
            }
        };
        if let Some(c) = self.conns.get_mut(&conn) {
            c.mode = mode;
        }
        Ok(Some(0))
    }

    fn next_line(
        &mut self,
        conn: ConnId,
        rest: &[u8],
        out: &mut Vec<Action>,
    ) -> Result<Option<usize>, PmiError> {
        match rest.iter().position(|&b| b == b'\n') {
            Some(nl) if nl < PMI1_LINE_MAX => {
                pmi1::handle_line(self, conn, &rest[..nl], out)?;
                Ok(Some(nl + 1))
            }
            Some(_) => Err(PmiError::LineTooLong {
                who: self.who(conn),
            }),
            None if rest.len() >= PMI1_LINE_MAX => Err(PmiError::LineTooLong {
                who: self.who(conn),
            }),
            None => Ok(None),
        }
    }

    fn next_frame(
        &mut self,
        conn: ConnId,
        rest: &[u8],
        out: &mut Vec<Action>,
    ) -> Result<Option<usize>, PmiError> {
        if rest.len() < PMI2_HEADER_LEN {
            return Ok(None);
        }
        let len = pmi2::parse_header(&rest[..PMI2_HEADER_LEN]).ok_or_else(|| {
            PmiError::BadFrameHeader {
                who: self.who(conn),
                header: String::from_utf8_lossy(&rest[..PMI2_HEADER_LEN]).into_owned(),
            }
        })?;
        if len == 0 {
            return Err(PmiError::EmptyFrame {
                who: self.who(conn),
            });
        }
        if len > PMI2_FRAME_MAX {
            return Err(PmiError::FrameTooLong {
                who: self.who(conn),
                len,
            });
        }
        if rest.len() < PMI2_HEADER_LEN + len {
            return Ok(None);
        }
        pmi2::handle_frame(
            self,
            conn,
            &rest[PMI2_HEADER_LEN..PMI2_HEADER_LEN + len],
            out,
        )?;
        Ok(Some(PMI2_HEADER_LEN + len))
    }

    // ---- shared state used by both protocols ----

    fn who(&self, conn: ConnId) -> Who {
        match self.conns.get(&conn).and_then(|c| c.rank) {
            Some(r) => Who::Rank(r),
            None => Who::Conn(conn),
        }
    }

    fn conn_mut(&mut self, conn: ConnId) -> Option<&mut Conn> {
        self.conns.get_mut(&conn)
    }

    /// Reports a protocol error and stops listening to the connection.
    fn fail(&mut self, conn: ConnId, e: PmiError, out: &mut Vec<Action>) {
        let rank = self.conns.get(&conn).and_then(|c| c.rank);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.dead = true;
        }
        self.ending = true;
        self.attr_waiters.retain(|w| w.conn != conn);
        self.fetch_waiters.retain(|w| w.conn != conn);
        out.push(Action::ProtocolError {
            conn,
            rank,
            message: e.to_string(),
        });
    }

    fn warn(&self, conn: ConnId, e: PmiError, out: &mut Vec<Action>) {
        let rank = self.conns.get(&conn).and_then(|c| c.rank);
        out.push(Action::Warning {
            rank,
            message: e.to_string(),
        });
    }

    fn drop_conn(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.remove(&conn) {
            if let Some(rs) = c.rank.and_then(|r| self.ranks.get_mut(&r)) {
                if rs.conn == Some(conn) {
                    rs.conn = None;
                }
            }
        }
        self.attr_waiters.retain(|w| w.conn != conn);
        self.fetch_waiters.retain(|w| w.conn != conn);
    }

    /// Ties `rank` to `conn`; a rank belongs to one live connection at a time.
    fn bind_rank(&mut self, conn: ConnId, rank: u32) -> Result<(), PmiError> {
        let who = self.who(conn);
        let current = self.conns.get(&conn).and_then(|c| c.rank);
        match current {
            Some(r) if r == rank => return Ok(()),
            Some(r) => {
                return Err(PmiError::RankMismatch {
                    rank: r,
                    claimed: rank,
                })
            }
            None => {}
        }
        let Some(rs) = self.ranks.get(&rank) else {
            return Err(PmiError::RankNotLocal { who, rank });
        };
        if let Some(other) = rs.conn {
            if other != conn && self.conns.contains_key(&other) {
                return Err(PmiError::RankTaken { who, rank });
            }
        }
        if let Some(rs) = self.ranks.get_mut(&rank) {
            rs.conn = Some(conn);
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.rank = Some(rank);
        }
        Ok(())
    }

    /// The rank a command needs, refusing commands after finalize.
    fn require_rank(&self, conn: ConnId, cmd: &str) -> Result<u32, PmiError> {
        let rank =
            self.conns
                .get(&conn)
                .and_then(|c| c.rank)
                .ok_or_else(|| PmiError::RankUnknown {
                    conn,
                    cmd: cmd.to_string(),
                })?;
        Ok(rank)
    }

    fn check_not_finalized(&self, conn: ConnId, cmd: &str) -> Result<(), PmiError> {
        if let Some(rank) = self.conns.get(&conn).and_then(|c| c.rank) {
            if self.is_finalized(rank) {
                return Err(PmiError::AfterFinalize {
                    rank,
                    cmd: cmd.to_string(),
                });
            }
        }
        Ok(())
    }

    fn appnum(&self, rank: u32) -> u32 {
        self.job.appnum_of.get(rank as usize).copied().unwrap_or(0)
    }

    fn mark_initialized(&mut self, rank: u32, version: (u8, u8), out: &mut Vec<Action>) {
        if let Some(rs) = self.ranks.get_mut(&rank) {
            if !rs.initialized {
                rs.initialized = true;
                out.push(Action::Initialized { rank, version });
            }
        }
    }

    fn mark_finalized(&mut self, rank: u32, out: &mut Vec<Action>) {
        if let Some(rs) = self.ranks.get_mut(&rank) {
            if !rs.finalized {
                rs.finalized = true;
                out.push(Action::Finalized { rank });
            }
        }
    }

    fn mark_aborted(&mut self, rank: u32, code: i32, message: String, out: &mut Vec<Action>) {
        if let Some(rs) = self.ranks.get_mut(&rank) {
            rs.aborted = true;
        }
        self.ending = true;
        out.push(Action::Abort {
            rank,
            code,
            message,
        });
    }

    fn check_key(who: Who, key: &str) -> Result<(), PmiError> {
        if key.is_empty() {
            return Err(PmiError::EmptyKey { who });
        }
        if key.len() > KEYLEN_MAX {
            return Err(PmiError::KeyTooLong {
                who,
                len: key.len(),
            });
        }
        Ok(())
    }

    /// A KVS put: visible to local gets at once, and queued to travel with the next fence.
    fn kvs_put(&mut self, rank: u32, key: &str, value: &str) -> Result<(), PmiError> {
        let who = Who::Rank(rank);
        Self::check_key(who, key)?;
        if value.len() > VALLEN_MAX {
            return Err(PmiError::ValueTooLong {
                who,
                len: value.len(),
            });
        }
        let Some(rs) = self.ranks.get_mut(&rank) else {
            return Err(PmiError::RankNotLocal { who, rank });
        };
        if !rs.keys.contains(key) {
            if rs.keys.len() >= MAX_KEYS_PER_RANK {
                return Err(PmiError::TooManyKeys { rank });
            }
            rs.keys.insert(key.to_string());
        }
        self.kvs.insert(key.to_string(), value.to_string());
        self.fetched_keys.remove(key);
        match self.epoch_index.get(key) {
            Some(&i) => self.epoch_puts[i].1 = value.to_string(),
            None => {
                self.epoch_index
                    .insert(key.to_string(), self.epoch_puts.len());
                self.epoch_puts.push((key.to_string(), value.to_string()));
            }
        }
        Ok(())
    }

    fn kvs_get(&self, key: &str) -> Option<&str> {
        self.kvs.get(key).map(String::as_str)
    }

    /// Counts a deferred reply against the connection's cap.
    fn add_pending(&mut self, conn: ConnId) -> Result<(), PmiError> {
        let who = self.who(conn);
        let c = self
            .conn_mut(conn)
            .ok_or(PmiError::TooManyPending { who })?;
        if c.pending >= MAX_PENDING_PER_CONN {
            return Err(PmiError::TooManyPending { who });
        }
        c.pending += 1;
        Ok(())
    }

    /// A rank enters the fence; the last local rank in makes it FenceReady. Every job, one node
    /// or many, goes through FenceReady so the daemon treats all alike.
    fn enter_fence(
        &mut self,
        rank: u32,
        conn: ConnId,
        reply: FenceReply,
        out: &mut Vec<Action>,
    ) -> Result<(), PmiError> {
        if self.fence_entries.iter().any(|e| e.rank == rank) {
            return Err(PmiError::DuplicateFence { rank });
        }
        self.add_pending(conn)?;
        if reply == FenceReply::V1 {
            if let Some(c) = self.conn_mut(conn) {
                c.in_v1_barrier = true;
            }
        }
        self.fence_entries.push(FenceEntry { rank, conn, reply });
        if !self.fence_outstanding && self.fence_entries.len() == self.ranks.len() {
            self.fence_outstanding = true;
            self.epoch_index.clear();
            let puts = std::mem::take(&mut self.epoch_puts);
            out.push(Action::FenceReady {
                seq: self.fence_seq,
                puts,
            });
        }
        Ok(())
    }

    fn put_node_attr(&mut self, conn: ConnId, key: &str, value: &str) -> Result<(), PmiError> {
        let who = self.who(conn);
        Self::check_key(who, key)?;
        if value.len() > VALLEN_MAX {
            return Err(PmiError::ValueTooLong {
                who,
                len: value.len(),
            });
        }
        if !self.node_attrs.contains_key(key) && self.node_attrs.len() >= MAX_NODE_ATTRS {
            return Err(PmiError::TooManyNodeAttrs { who });
        }
        self.node_attrs.insert(key.to_string(), value.to_string());
        Ok(())
    }

    /// Answers every `info-getnodeattr wait=TRUE` waiting for `key`.
    fn wake_attr_waiters(&mut self, key: &str, out: &mut Vec<Action>) {
        let Some(value) = self.node_attrs.get(key).cloned() else {
            return;
        };
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.attr_waiters)
            .into_iter()
            .partition(|w| w.key == key);
        self.attr_waiters = waiting;
        for w in ready {
            if let Some(c) = self.conns.get_mut(&w.conn) {
                c.pending = c.pending.saturating_sub(1);
                out.push(Action::Send {
                    conn: w.conn,
                    bytes: pmi2::getnodeattr_reply(w.thrid.as_deref(), Some(&value)),
                });
            }
        }
    }

    /// Job-local name service: Ok(false) when the name is already taken.
    fn publish(&mut self, conn: ConnId, name: &str, port: &str) -> Result<bool, PmiError> {
        let who = self.who(conn);
        for s in [name, port] {
            if s.len() > PORT_MAX {
                return Err(PmiError::NameTooLong { who, len: s.len() });
            }
        }
        if self.names.contains_key(name) {
            return Ok(false);
        }
        if self.names.len() >= MAX_PUBLISHED_NAMES {
            return Err(PmiError::TooManyNames { who });
        }
        self.names.insert(name.to_string(), port.to_string());
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn job(size: u32, local: &[u32]) -> JobInfo {
        JobInfo {
            kvsname: "rl-test".into(),
            size,
            universe_size: size,
            appnum_of: vec![0; size as usize],
            local_ranks: local.to_vec(),
            process_mapping: Some(format!("(vector,(0,1,{size}))")),
            node_count: 1,
        }
    }

    /// Everything the actions send, as text (the PMI-1 and PMI-2 engine tests).
    pub(crate) fn text(actions: &[Action]) -> String {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send { bytes, .. } => Some(String::from_utf8_lossy(bytes).into_owned()),
                _ => None,
            })
            .collect()
    }

    pub(crate) fn has_error(actions: &[Action], needle: &str) -> bool {
        actions.iter().any(|a| matches!(a, Action::ProtocolError { message, .. } if message.contains(needle)))
    }

    pub(crate) fn has_warning(actions: &[Action], needle: &str) -> bool {
        actions.iter().any(|a| matches!(a, Action::Warning { message, .. } if message.contains(needle)))
    }

    fn sends(actions: &[Action]) -> Vec<(ConnId, String)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send { conn, bytes } => {
                    Some((*conn, String::from_utf8_lossy(bytes).into_owned()))
                }
                _ => None,
            })
            .collect()
    }

    fn errors(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::ProtocolError { message, .. } => Some(message.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn job_info_from_map() {
        use launchers::map::{compute_map, MapBy, MapPolicy, RankBy};
        let pol = |map_by| MapPolicy { map_by, rank_by: RankBy::Slot, oversubscribe: false };
        // MPMD: 3 ranks of app 0 then 3 of app 1 over two 3-slot nodes.
        let map = compute_map(&[(3, None), (3, None)], &[Some(3), Some(3)], &pol(MapBy::Slot)).unwrap();
        let j = JobInfo::from_map("rl-x", &map, 1);
        assert_eq!((j.size, j.universe_size, j.node_count), (6, 6, 2));
        assert_eq!(j.appnum_of, vec![0, 0, 0, 1, 1, 1]);
        assert_eq!(j.local_ranks, vec![3, 4, 5]);
        assert_eq!(j.process_mapping.as_deref(), Some("(vector,(0,2,3))"));
        // Ranks spread so unevenly that the vector form is longer than a PMI value: omitted.
        let slots: Vec<(u32, Option<u32>)> = (0..400).map(|i| (1 + i % 2, None)).collect();
        let map = compute_map(&slots, &[Some(600)], &pol(MapBy::Slot)).unwrap();
        assert!(map.pmi_process_mapping().is_some_and(|m| m.len() > VALLEN_MAX));
        assert_eq!(JobInfo::from_map("rl-x", &map, 0).process_mapping, None);
    }

    /// A PMI-2 request as the MPICH client frames it: length left-aligned in 6 characters.
    fn v2(body: &str) -> Vec<u8> {
        format!("{:<6}{body}", body.len()).into_bytes()
    }

    /// A PMI-2 reply as the server frames it: length right-aligned.
    fn v2s(body: &str) -> String {
        format!("{:>6}{body}", body.len())
    }

    /// Two local ranks (0 on conn 1, PMI-1; 1 on conn 2, PMI-2) of a 4-rank job in lazy mode,
    /// past their first fence.
    fn lazy_server() -> PmiServer {
        let mut s = PmiServer::new(job(4, &[0, 1]));
        s.set_lazy(true);
        s.connect(1, Some(0));
        s.connect(2, Some(1));
        s.input(1, b"cmd=init pmi_version=1 pmi_subversion=1\n");
        s.input(2, b"cmd=init pmi_version=2 pmi_subversion=0\n");
        s.input(2, &v2("cmd=fullinit;threaded=FALSE;"));
        s.input(1, b"cmd=put kvsname=rl-test key=mine value=here\n");
        s.input(1, b"cmd=barrier_in\n");
        s.input(2, &v2("cmd=kvs-fence;thrid=7;"));
        assert!(sends(&s.fence_done(1, vec![])).len() == 2);
        s
    }

    fn fetches(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Fetch { key } => Some(key.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn lazy_miss_before_the_first_fence_is_final() {
        let mut s = PmiServer::new(job(2, &[0]));
        s.set_lazy(true);
        s.connect(1, Some(0));
        let a = s.input(1, b"cmd=get kvsname=rl-test key=k\n");
        assert!(fetches(&a).is_empty());
        assert_eq!(
            sends(&a)[0].1,
            "cmd=get_result rc=-1 msg=key_k_not_found value=unknown\n"
        );
    }

    #[test]
    fn lazy_miss_after_a_fence_waits_for_the_fetch() {
        let mut s = lazy_server();
        // Both protocols miss the same key: the reply waits, the daemon is asked to fetch.
        let a = s.input(1, b"cmd=get kvsname=rl-test key=far\n");
        assert_eq!((fetches(&a), sends(&a)), (vec!["far".to_string()], vec![]));
        let a = s.input(2, &v2("cmd=kvs-get;thrid=9;key=far;"));
        assert_eq!((fetches(&a), sends(&a)), (vec!["far".to_string()], vec![]));
        let a = s.fetched("far".into(), Some("v;1".into()));
        assert_eq!(
            sends(&a),
            vec![
                (1, "cmd=get_result rc=0 msg=success value=v;1\n".into()),
                (2, v2s("cmd=kvs-get-response;thrid=9;found=TRUE;value=v;;1;rc=0;")),
            ]
        );
        // Cached until the next fence: a second get is answered at once.
        let a = s.input(1, b"cmd=get kvsname=rl-test key=far\n");
        assert!(fetches(&a).is_empty());
        assert_eq!(sends(&a)[0].1, "cmd=get_result rc=0 msg=success value=v;1\n");
        // Another node asking this one: only its own puts are offered.
        assert_eq!(s.lookup("mine"), Some("here"));
        assert_eq!(s.lookup("far"), None);
        // After the next fence the fetched value is forgotten (its owner may have changed it).
        s.input(1, b"cmd=barrier_in\n");
        s.input(2, &v2("cmd=kvs-fence;thrid=8;"));
        s.fence_done(2, vec![]);
        let a = s.input(1, b"cmd=get kvsname=rl-test key=far\n");
        assert_eq!(fetches(&a), vec!["far".to_string()]);
    }

    #[test]
    fn lazy_fetch_of_a_missing_key_is_not_found_and_not_remembered() {
        let mut s = lazy_server();
        s.input(1, b"cmd=get kvsname=rl-test key=nowhere\n");
        s.input(2, &v2("cmd=kvs-get;key=nowhere;"));
        let a = s.fetched("nowhere".into(), None);
        assert_eq!(
            sends(&a),
            vec![
                (1, "cmd=get_result rc=-1 msg=key_nowhere_not_found value=unknown\n".into()),
                (2, v2s("cmd=kvs-get-response;found=FALSE;rc=0;")),
            ]
        );
        let a = s.input(1, b"cmd=get kvsname=rl-test key=nowhere\n");
        assert_eq!(fetches(&a), vec!["nowhere".to_string()]);
    }

    #[test]
    fn lazy_waiters_of_a_closed_connection_are_dropped_and_local_puts_win() {
        let mut s = lazy_server();
        s.input(2, &v2("cmd=kvs-get;key=contest;"));
        s.input(1, b"cmd=get kvsname=rl-test key=contest\n");
        s.disconnect(2);
        // A local rank put the key while the fetch was under way: its value is newer.
        s.input(1, b"cmd=put kvsname=rl-test key=contest value=local\n");
        let a = s.fetched("contest".into(), Some("remote".into()));
        assert_eq!(
            sends(&a),
            vec![(1, "cmd=get_result rc=0 msg=success value=local\n".into())]
        );
        assert_eq!(s.lookup("contest"), Some("local"));
    }

    #[test]
    fn kvsname_is_sanitised_and_bounded() {
        let mut j = job(1, &[0]);
        j.kvsname = format!("a b;c={}", "x".repeat(100));
        let s = PmiServer::new(j);
        assert_eq!(s.kvsname().len(), KVSNAME_MAX - 1);
        assert!(s.kvsname().starts_with("a_b_c_x"));
        let mut j = job(1, &[0]);
        j.kvsname = String::new();
        assert_eq!(PmiServer::new(j).kvsname(), "rlaunch");
    }

    #[test]
    fn garbage_first_bytes_are_a_protocol_error_and_conn_goes_quiet() {
        let mut s = PmiServer::new(job(1, &[0]));
        s.connect(1, Some(0));
        let a = s.input(1, b"GET / HTTP/1.1\r\n");
        assert_eq!(errors(&a).len(), 1);
        assert!(errors(&a)[0].contains("rank 0"), "{a:?}");
        assert!(s.input(1, b"cmd=get_maxes\n").is_empty());
    }

    #[test]
    fn detection_waits_for_enough_bytes() {
        let mut s = PmiServer::new(job(1, &[0]));
        s.connect(1, Some(0));
        assert!(s.input(1, b"c").is_empty());
        assert!(s.input(1, b"m").is_empty());
        assert!(s.input(1, b"d=get_maxes").is_empty());
        let a = s.input(1, b"\n");
        assert_eq!(
            sends(&a),
            vec![(
                1,
                "cmd=maxes kvsname_max=64 keylen_max=64 vallen_max=1024\n".into()
            )]
        );
        let mut s = PmiServer::new(job(1, &[0]));
        s.connect(2, Some(0));
        assert!(s.input(2, b"mc").is_empty());
        assert_eq!(errors(&s.input(2, b"x")).len(), 1);
    }

    #[test]
    fn connect_with_foreign_rank_fails_on_first_input() {
        let mut s = PmiServer::new(job(4, &[0, 1]));
        s.connect(7, Some(3));
        let a = s.input(7, b"cmd=init pmi_version=1 pmi_subversion=1\n");
        assert_eq!(errors(&a).len(), 1);
        assert!(errors(&a)[0].contains("claims rank 3"), "{a:?}");
        assert!(sends(&a).is_empty());
    }

    #[test]
    fn two_connections_cannot_share_a_rank() {
        let mut s = PmiServer::new(job(2, &[0, 1]));
        s.connect(1, Some(0));
        s.connect(2, Some(0));
        let a = s.input(2, b"cmd=get_maxes\n");
        assert!(errors(&a)[0].contains("already holds"), "{a:?}");
        // After the first holder disconnects, a new connection may take the rank.
        assert!(s.disconnect(1).is_empty());
        s.connect(3, Some(0));
        assert!(errors(&s.input(3, b"cmd=get_maxes\n")).is_empty());
    }

    #[test]
    fn disconnect_before_finalize_matters_only_after_init() {
        let mut s = PmiServer::new(job(2, &[0, 1]));
        s.connect(1, Some(0));
        s.connect(2, Some(1));
        assert!(
            s.disconnect(1).is_empty(),
            "never initialised: a non-MPI program"
        );
        s.input(2, b"cmd=init pmi_version=1 pmi_subversion=1\n");
        let a = s.disconnect(2);
        assert_eq!(a.len(), 1);
        assert!(
            matches!(&a[0], Action::Vanished { rank: 1, message } if message.contains("rank 1 closed its PMI connection without PMI finalize")),
            "{a:?}"
        );
    }

    #[test]
    fn once_the_job_is_ending_disconnects_are_quiet() {
        for ender in [&b"cmd=abort exitcode=2\n"[..], &b"cmd=bogus\xff\n"[..]] {
            let mut s = PmiServer::new(job(3, &[0, 1, 2]));
            for r in 0..3 {
                s.connect(r, Some(r));
                s.input(r, b"cmd=init pmi_version=1 pmi_subversion=1\n");
            }
            let a = s.input(0, ender);
            assert!(
                matches!(
                    a.last(),
                    Some(Action::Abort { .. } | Action::ProtocolError { .. })
                ),
                "{a:?}"
            );
            assert!(s.disconnect(1).is_empty());
            assert!(s.disconnect(2).is_empty());
        }
        // A crash reports the first rank only.
        let mut s = PmiServer::new(job(2, &[0, 1]));
        for r in 0..2 {
            s.connect(r, Some(r));
            s.input(r, b"cmd=init pmi_version=1 pmi_subversion=1\n");
        }
        assert!(matches!(
            &s.disconnect(1)[..],
            [Action::Vanished { rank: 1, .. }]
        ));
        assert!(s.disconnect(0).is_empty());
    }

    #[test]
    fn disconnect_after_abort_or_finalize_is_quiet() {
        let mut s = PmiServer::new(job(2, &[0, 1]));
        s.connect(1, Some(0));
        s.connect(2, Some(1));
        s.input(
            1,
            b"cmd=init pmi_version=1 pmi_subversion=1\ncmd=finalize\n",
        );
        assert!(s.is_finalized(0));
        assert!(s.disconnect(1).is_empty());
        s.input(
            2,
            b"cmd=init pmi_version=1 pmi_subversion=1\ncmd=abort exitcode=3\n",
        );
        assert!(s.disconnect(2).is_empty());
    }

    #[test]
    fn fence_done_with_wrong_seq_is_a_warning_and_changes_nothing() {
        let mut s = PmiServer::new(job(1, &[0]));
        s.connect(1, Some(0));
        let a = s.fence_done(1, vec![]);
        assert!(matches!(&a[..], [Action::Warning { .. }]), "{a:?}");
        let a = s.input(1, b"cmd=barrier_in\n");
        assert_eq!(
            a,
            vec![Action::FenceReady {
                seq: 1,
                puts: vec![]
            }]
        );
        let a = s.fence_done(2, vec![]);
        assert!(matches!(&a[..], [Action::Warning { .. }]), "{a:?}");
        let a = s.fence_done(1, vec![]);
        assert_eq!(sends(&a), vec![(1, "cmd=barrier_out\n".into())]);
        // The next fence has the next sequence number.
        assert_eq!(
            s.input(1, b"cmd=barrier_in\n"),
            vec![Action::FenceReady {
                seq: 2,
                puts: vec![]
            }]
        );
    }

    #[test]
    fn fence_carries_only_this_epochs_puts_last_value_wins() {
        let mut s = PmiServer::new(job(2, &[0, 1]));
        s.connect(1, Some(0));
        s.connect(2, Some(1));
        s.input(1, b"cmd=put kvsname=rl-test key=a value=1\n");
        s.input(2, b"cmd=put kvsname=rl-test key=b value=2\n");
        s.input(1, b"cmd=put kvsname=rl-test key=a value=3\n");
        assert!(s.input(1, b"cmd=barrier_in\n").is_empty());
        let a = s.input(2, b"cmd=barrier_in\n");
        assert_eq!(
            a,
            vec![Action::FenceReady {
                seq: 1,
                puts: vec![("a".into(), "3".into()), ("b".into(), "2".into())]
            }]
        );
        let a = s.fence_done(
            1,
            vec![
                ("a".into(), "3".into()),
                ("b".into(), "2".into()),
                ("z".into(), "9".into()),
            ],
        );
        assert_eq!(
            sends(&a),
            vec![
                (1, "cmd=barrier_out\n".into()),
                (2, "cmd=barrier_out\n".into())
            ]
        );
        let a = s.input(1, b"cmd=get kvsname=rl-test key=z\n");
        assert_eq!(sends(&a)[0].1, "cmd=get_result rc=0 msg=success value=9\n");
        s.input(1, b"cmd=barrier_in\n");
        let a = s.input(2, b"cmd=barrier_in\n");
        assert_eq!(
            a,
            vec![Action::FenceReady {
                seq: 2,
                puts: vec![]
            }]
        );
    }

    #[test]
    fn fence_reply_skips_a_rank_that_disconnected() {
        let mut s = PmiServer::new(job(2, &[0, 1]));
        s.connect(1, Some(0));
        s.connect(2, Some(1));
        s.input(1, b"cmd=barrier_in\n");
        s.input(2, b"cmd=barrier_in\n");
        s.disconnect(1);
        let a = s.fence_done(1, vec![]);
        assert_eq!(sends(&a), vec![(2, "cmd=barrier_out\n".into())]);
    }

    #[test]
    fn too_many_keys_is_a_protocol_error() {
        let mut s = PmiServer::new(job(1, &[0]));
        s.connect(1, Some(0));
        for i in 0..MAX_KEYS_PER_RANK {
            let a = s.input(
                1,
                format!("cmd=put kvsname=rl-test key=k{i} value=v\n").as_bytes(),
            );
            assert!(errors(&a).is_empty());
        }
        // Overwriting an existing key is not a new key.
        assert!(errors(&s.input(1, b"cmd=put kvsname=rl-test key=k0 value=w\n")).is_empty());
        let a = s.input(1, b"cmd=put kvsname=rl-test key=one-too-many value=v\n");
        assert_eq!(sends(&a)[0].1, "cmd=put_result rc=-1 msg=too_many_keys\n");
        assert!(errors(&a)[0].contains("more than 4096 distinct"), "{a:?}");
    }

    #[test]
    fn buffered_input_is_bounded() {
        let mut s = PmiServer::new(job(1, &[0]));
        s.connect(1, Some(0));
        let a = s.input(1, &[b'x'; 10]);
        assert_eq!(errors(&a).len(), 1);
        let mut s = PmiServer::new(job(1, &[0]));
        s.connect(1, Some(0));
        let mut line = b"cmd=put kvsname=rl-test key=k value=".to_vec();
        line.extend(vec![b'v'; PMI1_LINE_MAX]);
        let a = s.input(1, &line);
        assert!(errors(&a)[0].contains("longer than 1024"), "{a:?}");
        assert!(s.conns[&1].buf.is_empty());
    }
}
