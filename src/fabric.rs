//! The launcher side of the `fabrics` crate: every daemon's inventory is allgathered over the daemon
//! tree, each daemon assigns endpoints with the same pure rule, writes one endpoint table per node
//! and only then starts its ranks with `RLAUNCH_ENDPOINTS` pointing at it.
//!
//! The exchange is one [`fabrics::Collective`] allgather over the existing overlay: member 0 is the
//! front end (it contributes nothing), node `n` is member `n + 1`, which is exactly the parent rule
//! of [`crate::tree`], so collective messages travel on the daemon links as [`Msg::Fabric`] frames.
//! Up: each daemon sends its subtree's inventories once (one entry per node, never per rank). The
//! front end, holding all of them, runs [`fabrics::assign`] first, so that an impossible `--nic` or
//! `--fabric` is one error line before any rank exists; only then does the full set go down.
//! An inventory carries its node's CPU topology, so every daemon also gives each rank of every
//! node the NIC nearest its CPUs or GPUs ([`crate::binding`]), the same answer everywhere.
//!
//! [`NodeFabric`] (daemon) and [`FrontGather`] (front end) are state machines that return what to
//! send; the event loops own the sockets. The only I/O here is discovery, the port range test and
//! the table file, each in a named function.
//!
//! Port reservation happens after the launch message, when the map says how many ranks the node
//! has: reserving a fixed-size range up front would either waste ports or need a second round when
//! a node gets more ranks than the guess. The range is bind-tested, not locked; its place is derived
//! from the job id and node index (see [`port_slice`]) so that daemons of one job sharing a host
//! (`--launcher local` with several nodes) test disjoint ranges.
//!
//! [`Msg::Fabric`]: crate::wire::Msg::Fabric

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use fabrics::collective::{Action, Collective, Kind, Message, Tree};
use fabrics::discover::{
    GidType, IbDevice, IbPort, LinkLayer, NetIf, NodeType, OperState, PhysState, PortState,
};
use fabrics::endpoints::{
    assign, reserve_port_base, reserve_port_base_in, Fabric, FabricChoice, Nic,
    NicKind, DEFAULT_PORT_RANGE,
};
use fabrics::table::{table_path, EndpointTable, RankPlace, TableWriter};
use fabrics::{Assignment, Inventory};
use launchers::map::ProcMap;


use crate::binding;
use crate::spec::{choice_name, FabricSpec, InventoryFormat, PlacementSpec};
use crate::tree::Topology;
use crate::wire::Launch;

/// Collectives of one job are told apart by epoch; this exchange happens once per job.
const EPOCH: u64 = 1;
/// The smallest port slice a node tests first: enough for small jobs, and 798 slices fit the range.
const MIN_SLICE: u32 = 16;

pub fn fabric_name(f: Fabric) -> &'static str {
    match f {
        Fabric::Tcp => "tcp",
        Fabric::Rdma => "rdma",
    }
}

// ---------------------------------------------------------------------------------------------
// Ports.

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The sub-range of `range` node `node` of job `job_id` tests first: slices `max(max_local, 16)`
/// ports wide, consecutive nodes on consecutive slices from a job-derived start. Distinct nodes of
/// one job get disjoint slices (while there are fewer nodes per host than slices), so daemons
/// sharing a host never pick overlapping ranges; distinct jobs start at unrelated slices.
pub fn port_slice(
    job_id: &str,
    node: u32,
    max_local: u32,
    range: RangeInclusive<u16>,
) -> Option<RangeInclusive<u16>> {
    let (start, end) = (u64::from(*range.start()), u64::from(*range.end()));
    if end < start {
        return None;
    }
    let span = end - start + 1;
    let width = u64::from(max_local.max(MIN_SLICE));
    if width > span {
        return None;
    }
    let slices = span / width;
    let slot = (fnv1a(job_id) % slices + u64::from(node) % slices) % slices;
    let lo = start + slot * width;
    Some(lo as u16..=(lo + width - 1) as u16)
}

/// Descriptors the daemon holds besides the bind-test's sockets.
const FDS_SPARE: u64 = 64;

/// Raises the soft open-file limit towards `need`, at most to the hard limit. Returns the soft
/// limit now in force.
pub fn raise_open_files(need: u64) -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return u64::MAX;
        }
        if lim.rlim_cur >= need {
            return lim.rlim_cur;
        }
        let old = lim.rlim_cur;
        lim.rlim_cur = need.min(lim.rlim_max);
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            return old;
        }
        lim.rlim_cur
    }
}

/// Bind-tests `count` consecutive ports for this node's ranks: in its slice first, then anywhere in
/// the default range.
fn reserve_ports(job_id: &str, node: u32, count: u32, max_local: u32) -> Result<u16, String> {
    let count16 = u16::try_from(count)
        .map_err(|_| format!("{count} ranks on one node need more TCP ports than exist"))?;
    // The bind-test holds one descriptor per port: at the common soft limit of 1024 it ran out
    // and blamed the ports.
    let need = u64::from(count) + FDS_SPARE;
    let have = raise_open_files(need);
    if have < need {
        return Err(format!("bind-testing {count} TCP ports needs {need} open files; the open-file limit is {have} (ulimit -Hn)"));
    }
    if let Some(slice) = port_slice(job_id, node, max_local, DEFAULT_PORT_RANGE) {
        if let Ok(base) = reserve_port_base_in(count16, slice) {
            return Ok(base);
        }
    }
    reserve_port_base(count16).map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------------------------
// What the daemon hands its ranks.

/// The directory of the table files: shared memory when the host has it.
pub fn table_dir() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// Removes tables and topology files (and half-written temporaries) that daemons killed without cleanup (SIGKILL,
/// power loss of the job) left in `dir`: rlaunch files older than `older_than` whose lock nobody
/// holds. Files of other users are skipped (the sticky /dev/shm refuses the unlink). Returns
/// what was removed.
pub fn sweep_stale_tables(dir: &Path, older_than: std::time::Duration) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return removed };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // Endpoint tables and the hwloc topology exports (daemon::topology) beside them.
        let table = name.ends_with(".tbl") || name.ends_with(".xml");
        let temp = name.contains(".tbl.tmp.") || name.contains(".xml.tmp.");
        if !name.starts_with("rlaunch-") || !(table || temp) || !crate::claim::older_than(&e, older_than) {
            continue;
        }
        let path = e.path();
        // A temporary has no lock: it is never renamed into place once this old.
        let _claim = if table {
            let Ok(c) = crate::claim::take_if_unheld(&path) else { continue };
            Some(c)
        } else {
            None
        };
        if std::fs::remove_file(&path).is_ok() {
            removed.push(path);
        }
    }
    removed
}

/// Variables UCX, NCCL and libfabric read to pick a NIC, for `--nic-env`: the rank's own NIC, in
/// each library's syntax (`=name` is NCCL's exact match; `dev:port` is what UCX and NCCL take).
pub fn nic_env(fabric: Fabric, nic: &Nic) -> Vec<(&'static str, String)> {
    let mut v = Vec::new();
    match (&nic.rdma, fabric) {
        (Some(r), Fabric::Rdma) => {
            let port = format!("{}:{}", r.device, r.port);
            v.push(("UCX_NET_DEVICES", port.clone()));
            v.push(("NCCL_IB_HCA", format!("={port}")));
            if nic.kind == NicKind::Roce {
                v.push(("NCCL_IB_GID_INDEX", r.gid_index.to_string()));
            }
            if !nic.ifname.is_empty() {
                v.push(("NCCL_SOCKET_IFNAME", format!("={}", nic.ifname)));
            }
            v.push(("FI_PROVIDER", "verbs".into()));
        }
        _ => {
            v.push(("UCX_NET_DEVICES", nic.ifname.clone()));
            v.push(("NCCL_SOCKET_IFNAME", format!("={}", nic.ifname)));
            // TCP was chosen (or forced): keep NCCL off InfiniBand it might otherwise find.
            v.push(("NCCL_IB_DISABLE", "1".into()));
            v.push(("FI_PROVIDER", "tcp".into()));
            v.push(("FI_TCP_IFACE", nic.ifname.clone()));
        }
    }
    v
}

/// For each local rank of `job`, whether its user set a variable whose name starts with `prefix`:
/// in the job's copy of the environment, its context's `-x`, or (`inherited(prefix)`) the
/// daemon's own environment. A variable rlaunch would give is then left to the user entirely.
pub fn user_sets(job: &crate::job::JobView, prefix: &str, inherited: &dyn Fn(&str) -> bool) -> Vec<bool> {
    let launch = job.launch();
    let map = job.map();
    let from_daemon = inherited(prefix);
    job.local_ranks()
        .iter()
        .map(|&r| {
            let app = &launch.apps[map.rank(r).app as usize];
            let job_env = if app.without_job_env { &[][..] } else { &launch.env[..] };
            from_daemon || job_env.iter().chain(app.env.iter()).any(|(k, _)| k.starts_with(prefix))
        })
        .collect()
}

/// Whether the daemon's own environment has a variable whose name starts with `prefix`.
pub fn inherited_prefix(prefix: &str) -> bool {
    std::env::vars_os().any(|(k, _)| k.to_str().is_some_and(|k| k.starts_with(prefix)))
}

/// Room UCX's shared-memory transport needs per local rank in /dev/shm, with margin: its
/// receive FIFO and segments came to 4.3 MB per rank with UCX 1.13's defaults.
pub const UCX_SHM_PER_RANK: u64 = 16 << 20;

/// `UCX_TLS` for the ranks of a job that lives on this one node (`all_local`): nothing leaves
/// the node, so UCX need not open its TCP transport, whose probing of every network interface
/// was most of UCX's start-up in each rank (3242 system calls of an MPICH rank's 4060, 1354
/// without it). SysV shared memory goes too when /dev/shm has room (`shm_free` bytes) for the
/// POSIX transport instead: every rank attaching every peer's SysV segment takes the kernel's
/// one IPC lock (64 x 64 shmat/shmdt), and with more ranks than cores the ranks queued on it
/// (a third of 64 MPICH ranks sat in shmget for over a second on 2 cores). Jobs across nodes
/// get nothing: UCX's own choice among the fabrics stands.
pub fn ucx_tls(all_local: bool, local_ranks: u32, shm_free: Option<u64>) -> Option<&'static str> {
    if !all_local || local_ranks == 0 {
        return None;
    }
    let room = shm_free.is_some_and(|free| free >= u64::from(local_ranks) * UCX_SHM_PER_RANK);
    Some(if room { "^sysv,tcp" } else { "^tcp" })
}

/// Every local rank's fabric variables, in local-rank order. A variable the user set with `-x`
/// (`user_env`) is left alone: an explicit choice beats `--nic-env`.
pub fn rank_envs(
    table: &EndpointTable,
    path: &Path,
    nic_env_on: bool,
    user_env: &dyn Fn(u32) -> Vec<String>,
) -> Vec<Vec<(String, String)>> {
    let node = table.this_node;
    let Some(plan) = table.nodes.get(node as usize) else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(plan.local_ranks as usize);
    for l in 0..plan.local_ranks {
        let mut env = vec![(
            "RLAUNCH_ENDPOINTS".to_string(),
            path.to_string_lossy().into_owned(),
        )];
        if let Some(ep) = fabrics::endpoints::endpoint_in(&table.nodes, node, l) {
            env.push(("RLAUNCH_NIC".into(), ep.nic.label()));
            env.push(("RLAUNCH_FABRIC".into(), fabric_name(table.fabric).into()));
            if nic_env_on {
                let mine = user_env(l);
                for (k, v) in nic_env(table.fabric, &ep.nic) {
                    if !mine.iter().any(|m| m == k) {
                        env.push((k.to_string(), v));
                    }
                }
            }
        }
        out.push(env);
    }
    out
}

/// Placement's NIC choice: every node's ranks placed on that node's topology (from its
/// inventory), each given the usable NIC nearest its GPUs or CPUs. Every daemon computes the same,
/// as it has the same inventories. A node without topology, or whose placement fails (its own
/// daemon refuses the job then), keeps the round-robin rule.
fn nearest_nics(a: &mut Assignment, invs: &[Inventory], placement: &PlacementSpec, node_ranks: &[Vec<u32>]) {
    for (plan, (inv, ranks)) in a.nodes.iter_mut().zip(invs.iter().zip(node_ranks)) {
        let Some(topo) = inv.topology.as_ref() else { continue };
        let names: Vec<&str> = plan.nics.iter().map(|n| n.rdma.as_ref().map_or(n.ifname.as_str(), |r| r.device.as_str())).collect();
        let Ok(places) = binding::place_node(placement, topo, ranks, &names) else { continue };
        let choice: Option<Vec<usize>> = places.iter().map(|p| p.nic).collect();
        if let Some(choice) = choice {
            plan.choose_nics(&choice);
        }
    }
}

/// The first node (in node order) whose topology cannot give its ranks the placement asked for,
/// as `node NAME: why`. Nodes without a topology in their inventory are left to their daemon.
fn placement_refusal(invs: &[Inventory], placement: &PlacementSpec, node_ranks: &[Vec<u32>], name: impl Fn(u32) -> String) -> Option<String> {
    invs.iter().zip(node_ranks).enumerate().find_map(|(n, (inv, ranks))| {
        let topo = inv.topology.as_ref().filter(|_| !ranks.is_empty())?;
        binding::place_node(placement, topo, ranks, &[]).err().map(|e| format!("node {}: {e}", name(n as u32)))
    })
}

fn node_ranks(map: &ProcMap) -> Vec<Vec<u32>> {
    (0..map.num_nodes()).map(|n| map.ranks_on(n).to_vec()).collect()
}

fn placements(map: &ProcMap) -> Vec<RankPlace> {
    map.ranks()
        .iter()
        .map(|p| RankPlace {
            node: p.node,
            local_rank: p.local_rank,
        })
        .collect()
}

fn local_counts(map: &ProcMap) -> Vec<u32> {
    (0..map.num_nodes())
        .map(|n| map.ranks_on(n).len() as u32)
        .collect()
}

fn decode_inventories(blobs: &[Vec<u8>]) -> Result<Vec<Inventory>, String> {
    // Blob 0 is the front end's (empty) contribution; nodes follow in node order.
    blobs
        .iter()
        .skip(1)
        .enumerate()
        .map(|(n, b)| postcard::from_bytes::<Inventory>(b).map_err(|e| format!("the inventory of node {n} is undecodable ({e}); use the same rlaunch build on every node")))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Routing collective actions onto tree links.

/// What a state machine asks its event loop to do.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Step {
    /// `Msg::Fabric` payload for the parent link.
    pub up: Option<Vec<u8>>,
    /// `Msg::Fabric` payloads for child links, by node.
    pub down: Vec<(u32, Vec<u8>)>,
    /// Daemon: the table is written (or not wanted); start the ranks now.
    pub start_ranks: bool,
    /// Front end: print this on stdout (`--inventory`).
    pub print: Option<String>,
    /// The user asked for something the nodes cannot give (exit 2).
    pub usage_error: Option<String>,
    /// Something broke (exit 125).
    pub error: Option<String>,
}

impl Step {
    fn error(e: impl Into<String>) -> Step {
        Step {
            error: Some(e.into()),
            ..Step::default()
        }
    }
}

/// Splits collective actions into link sends and the final result.
fn route(tree: &Tree, me: u32, actions: Vec<Action>, step: &mut Step) -> Option<Vec<Vec<u8>>> {
    let mut done = None;
    for a in actions {
        match a {
            Action::Send { to, msg } if tree.parent(me) == Some(to) => step.up = Some(msg.encode()),
            // Members below the front end are nodes shifted by one.
            Action::Send { to, msg } => step.down.push((to - 1, msg.encode())),
            Action::Complete(data) => done = Some(data),
        }
    }
    done
}

// ---------------------------------------------------------------------------------------------
// Daemon.

struct JobCtx {
    spec: FabricSpec,
    placement: PlacementSpec,
    job_id: String,
    counts: Vec<u32>,
    node_ranks: Vec<Vec<u32>>,
    places: Vec<RankPlace>,
    /// `-x` names per local rank (its MPMD context's).
    user_env: Vec<Vec<String>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NodeState {
    Idle,
    Gathering,
    Ready,
    Failed,
}

/// One daemon's part: discovery, port range, contribution, assignment, table, rank environment.
pub struct NodeFabric {
    node: u32,
    tree: Option<Tree>,
    coll: Option<Collective>,
    discovered: Option<Result<Inventory, String>>,
    job: Option<JobCtx>,
    state: NodeState,
    table: Option<PathBuf>,
    env: Vec<Vec<(String, String)>>,
    assignment: Option<Assignment>,
    dir: PathBuf,
    /// Held while the table exists: see [`sweep_stale_tables`].
    lock: Option<std::fs::File>,
}

impl NodeFabric {
    /// Node `node` of the job's daemon tree (the exchange runs on that very tree).
    pub fn new(node: u32, topo: &Topology) -> NodeFabric {
        let tree = Some(topo.collective_tree());
        let coll = tree.and_then(|t| Collective::new(t, node + 1, Kind::Allgather, EPOCH).ok());
        NodeFabric {
            node,
            tree,
            coll,
            discovered: None,
            job: None,
            state: NodeState::Idle,
            table: None,
            env: Vec::new(),
            assignment: None,
            dir: table_dir(),
            lock: None,
        }
    }

    /// Reads this host's fabrics (sysfs, getifaddrs, verbs). Called right after the daemon's hello,
    /// so it overlaps the launch message's trip.
    pub fn discover(&mut self) {
        if self.discovered.is_none() {
            self.discovered = Some(Inventory::discover_system().map_err(|e| e.to_string()));
            // Tables of daemons that were killed would otherwise stay in memory until reboot.
            sweep_stale_tables(&self.dir, crate::claim::STALE_AFTER);
        }
    }

    /// The port this node's start-up RDMA links use, from its own inventory, or why it has none.
    pub fn startup_port(&self) -> Result<fabrics::verbs_link::VerbsLinkConfig, String> {
        match &self.discovered {
            Some(Ok(inv)) => fabrics::startup::startup_port(inv),
            Some(Err(e)) => Err(format!("fabric discovery failed: {e}")),
            None => Err("fabric discovery did not run".into()),
        }
    }

    /// Whether the daemon must hold its ranks (and must not report the node done) for the table.
    pub fn holds_ranks(&self) -> bool {
        self.state == NodeState::Gathering
            && self
                .job
                .as_ref()
                .is_some_and(|j| j.spec.inventory.is_none())
    }

    /// The fabric variables of local rank `l` (empty with `--fabric off` or in inventory mode).
    pub fn rank_env(&self, l: u32) -> &[(String, String)] {
        self.env.get(l as usize).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The job's fabric, the same on every node (None before the exchange, with `--fabric off`
    /// and in inventory mode).
    pub fn chosen(&self) -> Option<fabrics::Fabric> {
        self.assignment.as_ref().map(|a| a.fabric)
    }

    #[cfg(test)]
    pub fn assignment(&self) -> Option<&Assignment> {
        self.assignment.as_ref()
    }

    /// The node's endpoint table, once written.
    pub fn table_path(&self) -> Option<&Path> {
        self.table.as_deref()
    }

    /// The launch message arrived: reserve ports, contribute the inventory.
    pub fn on_launch(&mut self, job: &crate::job::JobView) -> Step {
        if self.state != NodeState::Idle {
            return Step::default();
        }
        let launch = job.launch();
        let spec = launch.fabric.clone();
        if !spec.gathers() {
            self.state = NodeState::Ready;
            return Step {
                start_ranks: true,
                ..Step::default()
            };
        }
        let map = job.map();
        let counts = local_counts(map);
        let user_env = map
            .ranks_on(self.node)
            .iter()
            .map(|&r| {
                let app = &launch.apps[map.rank(r).app as usize];
                app.env.iter().map(|(k, _)| k.clone()).collect()
            })
            .collect();
        let mine = counts.get(self.node as usize).copied().unwrap_or(0);
        let max_local = counts.iter().copied().max().unwrap_or(0);
        self.discover();
        let mut inv = match self.discovered.take().expect("discovered above") {
            Ok(inv) => inv,
            Err(e) => return self.fail(format!(
                "fabric discovery failed: {e}; use --fabric off to launch without endpoint tables"
            )),
        };
        if mine > 0 && spec.inventory.is_none() {
            match reserve_ports(&launch.job_id, self.node, mine, max_local) {
                Ok(base) => inv.port_base = base,
                Err(e) => {
                    return self.fail(format!("cannot reserve TCP ports for {mine} ranks: {e}"))
                }
            }
        }
        self.job = Some(JobCtx {
            spec,
            placement: launch.placement.clone(),
            job_id: launch.job_id.clone(),
            counts,
            node_ranks: node_ranks(map),
            places: placements(map),
            user_env,
        });
        let bytes = match postcard::to_allocvec(&inv) {
            Ok(b) => b,
            Err(e) => return self.fail(format!("encoding this node's inventory: {e}")),
        };
        let (Some(coll), Some(tree)) = (self.coll.as_mut(), self.tree) else {
            return self.fail("the fabric exchange has no tree (fan-out 0?)".to_string());
        };
        self.state = NodeState::Gathering;
        let mut step = Step::default();
        match coll.start(bytes) {
            Ok(actions) => {
                route(&tree, self.node + 1, actions, &mut step);
                step
            }
            Err(e) => self.fail(format!("fabric exchange: {e}")),
        }
    }

    /// A `Msg::Fabric` from a child (`Some(node)`) or from the parent (`None`).
    pub fn on_message(&mut self, from_child: Option<u32>, data: &[u8]) -> Step {
        if self.state == NodeState::Failed {
            return Step::default();
        }
        let (Some(coll), Some(tree)) = (self.coll.as_mut(), self.tree) else {
            return Step::error("fabric message, but this daemon has no fabric exchange");
        };
        let me = self.node + 1;
        let from = match from_child {
            Some(n) => n + 1,
            None => tree.parent(me).unwrap_or(0),
        };
        let msg = match Message::decode(data) {
            Ok(m) => m,
            Err(e) => return self.fail(format!("fabric exchange: {e}")),
        };
        let actions = match coll.on_message(from, msg) {
            Ok(a) => a,
            Err(e) => return self.fail(format!("fabric exchange: {e}")),
        };
        let mut step = Step::default();
        if let Some(blobs) = route(&tree, me, actions, &mut step) {
            match self.complete(&blobs) {
                Ok(()) => {
                    step.start_ranks = self
                        .job
                        .as_ref()
                        .is_some_and(|j| j.spec.inventory.is_none())
                }
                Err(e) => {
                    let mut s = self.fail(e);
                    s.down = step.down;
                    return s;
                }
            }
        }
        step
    }

    fn fail(&mut self, e: String) -> Step {
        self.state = NodeState::Failed;
        Step::error(e)
    }

    /// Every inventory is here: assign, write the table, compute the ranks' variables.
    fn complete(&mut self, blobs: &[Vec<u8>]) -> Result<(), String> {
        let Some(job) = self.job.as_ref() else {
            return Err("fabric table arrived before the launch message".into());
        };
        if job.spec.inventory.is_some() {
            self.state = NodeState::Ready;
            return Ok(());
        }
        let invs = decode_inventories(blobs)?;
        let choice = job.spec.choice.unwrap_or(FabricChoice::Auto);
        let mut a = assign(&invs, &job.counts, choice, &job.spec.nics)
            .map_err(|e| format!("{}: {e}", job.spec.flag(&e)))?;
        nearest_nics(&mut a, &invs, &job.placement, &job.node_ranks);
        let table =
            EndpointTable::new(&a, self.node, job.places.clone()).map_err(|e| e.to_string())?;
        let path = table_path(&self.dir, &job.job_id, self.node);
        if table
            .nodes
            .get(self.node as usize)
            .is_some_and(|n| n.local_ranks > 0)
        {
            TableWriter::write(&path, &table)
                .map_err(|e| format!("writing the endpoint table: {e}"))?;
            self.table = Some(path.clone());
            self.lock = Some(
                crate::claim::hold(&path)
                    .map_err(|e| format!("locking the endpoint table {}: {e}", path.display()))?,
            );
        }
        let names = &job.user_env;
        self.env = rank_envs(&table, &path, job.spec.nic_env, &|l| {
            names.get(l as usize).cloned().unwrap_or_default()
        });
        self.assignment = Some(a);
        self.state = NodeState::Ready;
        Ok(())
    }

    /// Removes the table file (the job is over or never started).
    pub fn remove_table(&mut self) {
        if let Some(p) = self.table.take() {
            let _ = std::fs::remove_file(p);
        }
        self.lock = None;
    }
}

impl Drop for NodeFabric {
    fn drop(&mut self) {
        self.remove_table();
    }
}

// ---------------------------------------------------------------------------------------------
// Front end.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FrontState {
    Off,
    Gathering,
    Done,
    Failed,
}

/// The root of the exchange: checks the request against every node before anything starts, sends
/// the full set down, prints `--inventory`, and says what was chosen (`-v`, `--report`).
pub struct FrontGather {
    spec: FabricSpec,
    placement: PlacementSpec,
    node_ranks: Vec<Vec<u32>>,
    tree: Option<Tree>,
    coll: Option<Collective>,
    counts: Vec<u32>,
    names: Vec<String>,
    state: FrontState,
    gathered_ms: Option<f64>,
    assignment: Option<Assignment>,
}

impl FrontGather {
    /// `names`: the node names of the node list, for `--inventory`.
    pub fn new(launch: &Launch, map: &ProcMap, names: Vec<String>) -> FrontGather {
        let spec = launch.fabric.clone();
        let nnodes = names.len() as u32;
        let mut g = FrontGather {
            spec,
            placement: launch.placement.clone(),
            node_ranks: node_ranks(map),
            tree: None,
            coll: None,
            counts: local_counts(map),
            names,
            state: FrontState::Off,
            gathered_ms: None,
            assignment: None,
        };
        if !g.spec.gathers() {
            return g;
        }
        let tree = Some(Topology::new(nnodes, launch.fanout).collective_tree());
        let coll = tree.and_then(|t| Collective::new(t, 0, Kind::Allgather, EPOCH).ok());
        if let (Some(t), Some(mut c)) = (tree, coll) {
            // The root's own start never completes the exchange: every node is below it.
            if c.start(Vec::new()).is_ok() {
                g.tree = Some(t);
                g.coll = Some(c);
                g.state = FrontState::Gathering;
            }
        }
        g
    }

    /// Whether the job must not end yet because the exchange is still running.
    pub fn waiting(&self) -> bool {
        self.state == FrontState::Gathering
    }

    /// A `Msg::Fabric` from the daemon of `node` (a direct child of the front end).
    pub fn on_message(&mut self, node: u32, data: &[u8], now_ms: f64) -> Step {
        let (Some(coll), Some(tree)) = (self.coll.as_mut(), self.tree) else {
            return Step::error(format!("unexpected fabric message from node {node}"));
        };
        if self.state != FrontState::Gathering {
            return Step::default();
        }
        let actions = match Message::decode(data)
            .map_err(|e| e.to_string())
            .and_then(|m| coll.on_message(node + 1, m).map_err(|e| e.to_string()))
        {
            Ok(a) => a,
            Err(e) => {
                self.state = FrontState::Failed;
                return Step::error(format!(
                    "fabric exchange with node {}: {e}",
                    self.name(node)
                ));
            }
        };
        let mut step = Step::default();
        let Some(blobs) = route(&tree, 0, actions, &mut step) else {
            return step;
        };
        self.gathered_ms = Some(now_ms);
        let invs = match decode_inventories(&blobs) {
            Ok(i) => i,
            Err(e) => {
                self.state = FrontState::Failed;
                return Step::error(e);
            }
        };
        if let Some(format) = self.spec.inventory {
            self.state = FrontState::Done;
            // Nobody waits for the full set in inventory mode: send nothing down.
            return Step {
                print: Some(match format {
                    InventoryFormat::Text => render_text(&self.names, &invs),
                    InventoryFormat::Json => render_json(&self.names, &invs),
                }),
                ..Step::default()
            };
        }
        // Every node's topology is here: a placement some node cannot give is one usage error
        // now, before anything goes down and before any rank exists anywhere.
        if let Some(e) = placement_refusal(&invs, &self.placement, &self.node_ranks, |n| self.name(n)) {
            self.state = FrontState::Failed;
            return Step { usage_error: Some(e), ..Step::default() };
        }
        let choice = self.spec.choice.unwrap_or(FabricChoice::Auto);
        match assign(&invs, &self.counts, choice, &self.spec.nics) {
            Ok(mut a) => {
                nearest_nics(&mut a, &invs, &self.placement, &self.node_ranks);
                self.assignment = Some(a);
                self.state = FrontState::Done;
                step
            }
            Err(e) => {
                self.state = FrontState::Failed;
                Step {
                    usage_error: Some(format!("{}: {e}", self.spec.flag(&e))),
                    ..Step::default()
                }
            }
        }
    }

    fn name(&self, node: u32) -> String {
        self.names
            .get(node as usize)
            .cloned()
            .unwrap_or_else(|| format!("#{node}"))
    }

    pub fn fabric(&self) -> Option<Fabric> {
        self.assignment.as_ref().map(|a| a.fabric)
    }

    /// The `-v` line: which transport and NICs, and when the exchange finished.
    pub fn verbose_line(&self) -> Option<String> {
        if !self.spec.gathers() {
            return Some("rlaunch: fabric off (--fabric off): no endpoint table".into());
        }
        let a = self.assignment.as_ref()?;
        // NIC sets grouped: "eth0 on 7 nodes, eth1 on 1 node".
        let mut groups: BTreeMap<String, usize> = BTreeMap::new();
        for n in a.nodes.iter().filter(|n| n.local_ranks > 0) {
            let labels: Vec<String> = n.nics.iter().map(Nic::label).collect();
            *groups.entry(labels.join(",")).or_default() += 1;
        }
        let nics: Vec<String> = groups
            .iter()
            .map(|(k, c)| format!("{k} on {c} node{}", if *c == 1 { "" } else { "s" }))
            .collect();
        Some(format!(
            "rlaunch: fabric {} (--fabric {}); NICs: {}; inventories of {} node(s) gathered at {:.1} ms",
            fabric_name(a.fabric),
            choice_name(self.spec.choice),
            nics.join("; "),
            a.nodes.len(),
            self.gathered_ms.unwrap_or(f64::NAN)
        ))
    }

    /// `"fabric"` in the report: `"tcp"`, `"rdma"`, or null (off, failed, inventory).
    pub fn report_fabric(&self) -> serde_json::Value {
        self.fabric()
            .map_or(serde_json::Value::Null, |f| fabric_name(f).into())
    }

    /// `"fabric_detail"` in the report: the request, each node's NICs and port base, the timing.
    pub fn report_detail(&self) -> serde_json::Value {
        let nodes: Vec<serde_json::Value> = self
            .assignment
            .iter()
            .flat_map(|a| a.nodes.iter())
            .map(|n| {
                serde_json::json!({
                    "node": n.node, "hostname": n.hostname, "local_ranks": n.local_ranks,
                    "port_base": n.port_base, "nics": n.nics.iter().map(Nic::label).collect::<Vec<_>>(),
                })
            })
            .collect();
        serde_json::json!({
            "requested": choice_name(self.spec.choice),
            "nics_requested": self.spec.nics,
            "nic_env": self.spec.nic_env,
            "gathered_ms": self.gathered_ms,
            "nodes": nodes,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// `--inventory` output.

fn mac_str(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn speed_str(mbps: u32) -> String {
    if mbps >= 1000 {
        let g = f64::from(mbps) / 1000.0;
        if mbps % 1000 == 0 {
            format!("{g:.0} Gb/s")
        } else {
            format!("{g} Gb/s")
        }
    } else {
        format!("{mbps} Mb/s")
    }
}

fn operstate_str(s: OperState) -> &'static str {
    match s {
        OperState::Up => "up",
        OperState::Down => "down",
        OperState::Dormant => "dormant",
        OperState::LowerLayerDown => "lowerlayerdown",
        OperState::NotPresent => "notpresent",
        OperState::Testing => "testing",
        OperState::Unknown => "unknown",
    }
}

fn port_state_str(s: PortState) -> String {
    match s {
        PortState::Nop => "nop".into(),
        PortState::Down => "down".into(),
        PortState::Init => "init".into(),
        PortState::Armed => "armed".into(),
        PortState::Active => "active".into(),
        PortState::ActiveDefer => "active_defer".into(),
        PortState::Other(n) => format!("state {n}"),
    }
}

fn phys_state_str(s: PhysState) -> String {
    match s {
        PhysState::Sleep => "sleep".into(),
        PhysState::Polling => "polling".into(),
        PhysState::Disabled => "disabled".into(),
        PhysState::PortConfigurationTraining => "training".into(),
        PhysState::LinkUp => "linkup".into(),
        PhysState::LinkErrorRecovery => "linkerrorrecovery".into(),
        PhysState::PhyTest => "phytest".into(),
        PhysState::Other(n) => format!("phys {n}"),
    }
}

fn node_type_str(t: NodeType) -> String {
    match t {
        NodeType::Ca => "ca".into(),
        NodeType::Switch => "switch".into(),
        NodeType::Router => "router".into(),
        NodeType::Rnic => "rnic".into(),
        NodeType::Other(n) => format!("type {n}"),
    }
}

fn gid_type_str(t: Option<GidType>) -> Option<&'static str> {
    t.map(|t| match t {
        GidType::IbRoceV1 => "ib/roce-v1",
        GidType::RoceV2 => "roce-v2",
    })
}

fn guid_str(g: u64) -> String {
    format!(
        "{:04x}:{:04x}:{:04x}:{:04x}",
        g >> 48,
        (g >> 32) & 0xffff,
        (g >> 16) & 0xffff,
        g & 0xffff
    )
}

fn netif_kind(n: &NetIf) -> &'static str {
    if n.loopback {
        "loopback"
    } else if n.if_type == 32 {
        "ipoib"
    } else if n.rdma_device.is_some() {
        "ethernet+roce"
    } else if n.is_virtual {
        "ethernet (virtual)"
    } else {
        "ethernet"
    }
}

fn port_kind(p: &IbPort) -> &'static str {
    match p.link_layer {
        LinkLayer::InfiniBand => "infiniband",
        LinkLayer::Ethernet => "roce",
        LinkLayer::Unknown => "rdma (unknown link)",
    }
}

fn port_rows(d: &IbDevice) -> Vec<[String; 6]> {
    d.ports
        .iter()
        .map(|p| {
            let speed = p.rate.as_ref().map_or("-".to_string(), |r| {
                let lanes = format!(
                    "{}X{}",
                    r.width,
                    r.speed
                        .as_deref()
                        .map(|s| format!(" {s}"))
                        .unwrap_or_default()
                );
                format!("{} ({lanes})", speed_str(r.mbps))
            });
            let netdevs: Vec<String> = {
                let mut v: Vec<String> = p.gids.iter().filter_map(|g| g.netdev.clone()).collect();
                v.sort();
                v.dedup();
                v
            };
            let mut ids = Vec::new();
            if p.link_layer == LinkLayer::InfiniBand {
                ids.push(format!("lid 0x{:x}", p.lid));
            }
            for g in &p.gids {
                let t = gid_type_str(g.gid_type)
                    .map(|t| format!(" {t}"))
                    .unwrap_or_default();
                ids.push(format!("gid[{}] {}{t}", g.index, g.gid));
            }
            [
                format!("{}:{}", d.name, p.port),
                port_kind(p).to_string(),
                format!(
                    "{} ({})",
                    port_state_str(p.state),
                    phys_state_str(p.phys_state)
                ),
                speed,
                if netdevs.is_empty() {
                    "-".into()
                } else {
                    netdevs.join(" ")
                },
                if ids.is_empty() {
                    "-".into()
                } else {
                    ids.join(", ")
                },
            ]
        })
        .collect()
}

fn netif_row(n: &NetIf) -> [String; 6] {
    let mut addrs: Vec<String> = n
        .addrs
        .iter()
        .map(|a| format!("{}/{}", a.ip, a.prefix_len))
        .collect();
    if !n.mac.is_empty() && !n.loopback {
        addrs.push(mac_str(&n.mac));
    }
    [
        n.name.clone(),
        netif_kind(n).to_string(),
        operstate_str(n.operstate).to_string(),
        n.speed_mbps.map_or("-".to_string(), speed_str),
        if addrs.is_empty() {
            "-".into()
        } else {
            addrs.join(" ")
        },
        n.rdma_device
            .as_ref()
            .map_or("-".to_string(), |d| format!("rdma {d}")),
    ]
}

/// The `--inventory` table: one row per interface and per RDMA port, then verbs status and
/// discovery warnings per node.
pub fn render_text(names: &[String], invs: &[Inventory]) -> String {
    let header = [
        "NODE",
        "DEVICE",
        "KIND",
        "STATE",
        "SPEED",
        "ADDRESSES",
        "GID/LID",
    ]
    .map(String::from);
    let mut rows: Vec<[String; 7]> = vec![header];
    let mut notes = Vec::new();
    for (i, inv) in invs.iter().enumerate() {
        let node = names
            .get(i)
            .cloned()
            .unwrap_or_else(|| inv.hostname.clone());
        let with_node = |r: [String; 6]| -> [String; 7] {
            let [a, b, c, d, e, f] = r;
            [node.clone(), a, b, c, d, e, f]
        };
        for d in &inv.ib {
            rows.extend(port_rows(d).into_iter().map(with_node));
        }
        rows.extend(inv.net.iter().map(|n| with_node(netif_row(n))));
        notes.push((format!("verbs: {}", inv.verbs), node.clone()));
        if let Some(t) = &inv.topology {
            notes.push((format!("topology: {}", binding::summary(t)), node.clone()));
        }
        for w in &inv.warnings {
            notes.push((format!("warning: {w}"), node.clone()));
        }
    }
    let mut widths = [0usize; 7];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    // Identical notes (the usual case: the same verbs status everywhere) are printed once.
    let mut grouped: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (note, node) in notes {
        grouped.entry(note).or_default().push(node);
    }
    for (note, nodes) in grouped {
        let who = if nodes.len() == invs.len() && invs.len() > 1 {
            format!("all {} nodes", nodes.len())
        } else {
            nodes.join(", ")
        };
        out.push_str(&format!("{who}: {note}\n"));
    }
    out
}

/// `--inventory --json`: `{"nodes": [{"node", "name", "hostname", "verbs", "warnings", "topology",
/// "interfaces": [...], "rdma": [...]}]}` with GIDs, GUIDs and MACs as text.
pub fn render_json(names: &[String], invs: &[Inventory]) -> String {
    use serde_json::json;
    let nodes: Vec<serde_json::Value> = invs
        .iter()
        .enumerate()
        .map(|(i, inv)| {
            let interfaces: Vec<_> = inv
                .net
                .iter()
                .map(|n| {
                    json!({
                        "name": n.name, "kind": netif_kind(n), "state": operstate_str(n.operstate),
                        "mtu": n.mtu, "speed_mbps": n.speed_mbps, "mac": mac_str(&n.mac),
                        "addresses": n.addrs.iter().map(|a| format!("{}/{}", a.ip, a.prefix_len)).collect::<Vec<_>>(),
                        "loopback": n.loopback, "virtual": n.is_virtual, "if_type": n.if_type,
                        "rdma_device": n.rdma_device,
                    })
                })
                .collect();
            let rdma: Vec<_> = inv
                .ib
                .iter()
                .map(|d| {
                    let ports: Vec<_> = d
                        .ports
                        .iter()
                        .map(|p| {
                            json!({
                                "port": p.port, "kind": port_kind(p), "state": port_state_str(p.state),
                                "phys_state": phys_state_str(p.phys_state), "lid": p.lid, "sm_lid": p.sm_lid,
                                "lmc": p.lmc, "rate_mbps": p.rate.as_ref().map(|r| r.mbps),
                                "width": p.rate.as_ref().map(|r| r.width),
                                "speed": p.rate.as_ref().and_then(|r| r.speed.clone()),
                                "active_mtu": p.active_mtu,
                                "port_guid": p.port_guid().map(guid_str),
                                "gids": p.gids.iter().map(|g| json!({
                                    "index": g.index, "gid": g.gid.to_string(),
                                    "type": gid_type_str(g.gid_type), "netdev": g.netdev,
                                    "ipv4": g.gid.ipv4_mapped().map(|a| a.to_string()),
                                })).collect::<Vec<_>>(),
                            })
                        })
                        .collect();
                    json!({
                        "device": d.name, "node_type": node_type_str(d.node_type),
                        "node_guid": guid_str(d.node_guid), "sys_image_guid": guid_str(d.sys_image_guid),
                        "fw_ver": d.fw_ver, "parent": d.parent, "ports": ports,
                    })
                })
                .collect();
            json!({
                "node": i, "name": names.get(i), "hostname": inv.hostname,
                "verbs": inv.verbs.to_string(), "warnings": inv.warnings,
                "topology": inv.topology.as_ref().map(binding::summary),
                "interfaces": interfaces, "rdma": rdma,
            })
        })
        .collect();
    serde_json::to_string_pretty(&json!({ "nodes": nodes })).expect("json") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{AppContext, NodeEntry, PmiSpec, StdinTarget};
    use fabrics::discover::{Gid, GidEntry, NetAddr, Rate};
    use fabrics::table::TableReader;
    use proptest::prelude::*;
    use std::net::IpAddr;

    fn netif(name: &str, ip: Option<&str>, up: bool) -> NetIf {
        let lo = name == "lo";
        NetIf {
            name: name.into(),
            mac: if lo {
                vec![0; 6]
            } else {
                vec![2, 0, 0, 0, 0, 1]
            },
            mtu: 1500,
            speed_mbps: if lo { None } else { Some(10_000) },
            operstate: if lo {
                OperState::Unknown
            } else if up {
                OperState::Up
            } else {
                OperState::Down
            },
            if_type: if lo { 772 } else { 1 },
            loopback: lo,
            is_virtual: lo,
            rdma_device: None,
            addrs: ip
                .map(|i| {
                    vec![NetAddr {
                        ip: i.parse::<IpAddr>().unwrap(),
                        prefix_len: if lo { 8 } else { 24 },
                    }]
                })
                .unwrap_or_default(),
        }
    }

    fn inv(host: &str, ip: &str) -> Inventory {
        Inventory {
            hostname: host.into(),
            net: vec![
                netif("eth0", Some(ip), true),
                netif("lo", Some("127.0.0.1"), true),
            ],
            ..Inventory::default()
        }
    }

    /// Four CPUs on NUMA nodes 0,0,1,1 and NICs eth0 (node 0), eth1 (node 1).
    fn two_numa_inv(host: &str) -> Inventory {
        use fabrics::topology::{Cpu, NetDevice, NumaNode, Topology};
        use fabrics::CpuSet;
        let cpus = (0..4).map(|id| Cpu { id, package: 0, die: 0, cluster: 0, core: id, l3: None, numa: Some(id / 2) }).collect();
        let nic = |name: &str, numa| NetDevice { name: name.into(), rdma: false, numa: Some(numa), local_cpus: CpuSet::new() };
        let topo = Topology {
            cpus,
            cores: (0..4).map(|c| CpuSet::from_iter([c])).collect(),
            l3: Vec::new(),
            numa: (0..2).map(|n| NumaNode { id: n, cpus: CpuSet::from_iter([2 * n, 2 * n + 1]) }).collect(),
            universe: CpuSet::from_iter(0..4),
            gpus: Vec::new(),
            nets: vec![nic("eth0", 0), nic("eth1", 1)],
        };
        Inventory {
            hostname: host.into(),
            port_base: 20000,
            net: vec![netif("eth0", Some("10.0.0.1"), true), netif("eth1", Some("10.0.1.1"), true)],
            topology: Some(topo),
            ..Inventory::default()
        }
    }

    #[test]
    fn the_first_node_that_cannot_place_its_ranks_is_named() {
        let invs = [Inventory { topology: None, ..two_numa_inv("a") }, two_numa_inv("b"), two_numa_inv("c")];
        let spec = |map: &str| PlacementSpec { policy: fabrics::placement::Policy { map: map.parse().unwrap(), ..Default::default() }, report: false };
        let ranks = [vec![0, 1, 2], vec![3, 4, 5], vec![]];
        let name = |n: u32| ["a", "b", "c"][n as usize].to_string();
        let e = placement_refusal(&invs, &spec("slot:PE=2"), &ranks, name).unwrap();
        assert!(e.starts_with("node b: 3 ranks with PE=2 need 6 cores"), "{e}");
        assert_eq!(placement_refusal(&invs, &spec("slot"), &ranks, name), None);
    }

    #[test]
    fn each_rank_gets_the_nic_on_its_numa_node() {
        let invs = [two_numa_inv("a")];
        let nic_of = |map: &str, ranks: u32| -> Vec<String> {
            let mut a = assign(&invs, &[ranks], FabricChoice::Tcp, &[]).unwrap();
            let placement = PlacementSpec { policy: fabrics::placement::Policy { map: map.parse().unwrap(), ..Default::default() }, report: false };
            nearest_nics(&mut a, &invs, &placement, &[(0..ranks).collect()]);
            (0..ranks).map(|l| a.endpoint(0, l).unwrap().nic.ifname).collect()
        };
        // Ranks 0 and 1 on cores 0 and 1 (node 0), 2 and 3 on node 1: not local rank mod 2.
        assert_eq!(nic_of("core", 4), ["eth0", "eth0", "eth1", "eth1"]);
        assert_eq!(nic_of("numa", 4), ["eth0", "eth1", "eth0", "eth1"]);
        // Unbound (more ranks than cores): round-robin, as without placement.
        assert_eq!(nic_of("core", 5), ["eth0", "eth1", "eth0", "eth1", "eth0"]);
    }

    fn ib_inv() -> Inventory {
        let mut gid = [0u8; 16];
        gid[0] = 0xfe;
        gid[1] = 0x80;
        gid[8..].copy_from_slice(&0xb83f_d203_00a4_1c2fu64.to_be_bytes());
        let mut i = inv("ibhost", "10.1.0.1");
        i.ib = vec![IbDevice {
            name: "mlx5_0".into(),
            node_type: NodeType::Ca,
            node_guid: 0xb83f_d203_00a4_1c2e,
            sys_image_guid: 0xb83f_d203_00a4_1c2e,
            fw_ver: "16.35.2000".into(),
            parent: None,
            ports: vec![IbPort {
                port: 1,
                state: PortState::Active,
                phys_state: PhysState::LinkUp,
                lid: 0x1a,
                sm_lid: 1,
                lmc: 0,
                rate: Some(Rate {
                    mbps: 100_000,
                    width: 4,
                    speed: Some("EDR".into()),
                }),
                link_layer: LinkLayer::InfiniBand,
                gids: vec![GidEntry {
                    index: 0,
                    gid: Gid(gid),
                    gid_type: None,
                    netdev: None,
                }],
                active_mtu: None,
            }],
        }];
        i
    }

    /// Node `node`'s view of the job, as its daemon builds it when the launch message arrives.
    fn view(l: &Launch, node: u32) -> crate::job::JobView {
        crate::job::JobView::for_node(Box::new(l.clone()), node).unwrap()
    }

    fn launch(nnodes: u32, slots: u32, fanout: u32, spec: FabricSpec, job: &str) -> Launch {
        Launch {
            job_id: job.into(),
            apps: vec![AppContext {
                argv: vec!["true".into()],
                env: vec![("UCX_NET_DEVICES".into(), Some("mine".into()))],
                cwd: "/".into(),
                np: None,
                nodes: None,
                without_job_env: false,
            }],
            nodes: (0..nnodes)
                .map(|n| NodeEntry {
                    name: format!("h{n}"),
                    user: None,
                    slots,
                    max_slots: None,
                })
                .collect(),
            policy: launchers::map::MapPolicy {
                map_by: launchers::map::MapBy::Slot,
                rank_by: launchers::map::RankBy::Slot,
                oversubscribe: false,
            },
            fanout,
            stdin: StdinTarget::None,
            kill_grace_ms: 100,
            env: Vec::new(),
            tree_spawn: None,
            fabric: spec,
            pmi: PmiSpec::default(),
            placement: crate::spec::PlacementSpec::default(),
            node_loss: crate::spec::NodeLossSpec::default(),
            sensors: None,
            image: crate::spec::ImageSpec::default(),
        }
    }

    fn scratch(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("rlaunch-fabric-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// One front end and `invs.len()` daemons wired by the real tree rule; messages delivered in
    /// FIFO order, all of them through the state machines' public entry points.
    struct Sim {
        front: FrontGather,
        nodes: Vec<NodeFabric>,
        fanout: u32,
        started: Vec<u32>,
        front_steps: Vec<Step>,
        node_errors: Vec<(u32, String)>,
    }

    impl Sim {
        fn new(l: &Launch, invs: Vec<Inventory>, dir: &Path) -> Sim {
            let map = crate::job::compute_map(l).unwrap();
            let n = invs.len() as u32;
            let names = (0..n).map(|i| format!("h{i}")).collect();
            let nodes = invs
                .into_iter()
                .enumerate()
                .map(|(i, inv)| {
                    let mut f = NodeFabric::new(i as u32, &Topology::new(n, l.fanout));
                    f.discovered = Some(Ok(inv));
                    f.dir = dir.to_path_buf();
                    f
                })
                .collect();
            Sim {
                front: FrontGather::new(l, &map, names),
                nodes,
                fanout: l.fanout,
                started: Vec::new(),
                front_steps: Vec::new(),
                node_errors: Vec::new(),
            }
        }

        /// Launch on every node (in `order`), then deliver until quiet.
        fn run(&mut self, l: &Launch, order: &[u32]) {
            // (to: None = front end, Some(node)), from_child: Some(node) for up traffic, data
            let mut q: std::collections::VecDeque<(Option<u32>, Option<u32>, Vec<u8>)> =
                Default::default();
            let push = |q: &mut std::collections::VecDeque<_>,
                        from: Option<u32>,
                        step: &Step,
                        fanout: u32| {
                if let (Some(up), Some(n)) = (&step.up, from) {
                    q.push_back((Topology::new(n + 1, fanout).parent_of(n), Some(n), up.clone()));
                }
                for (c, d) in &step.down {
                    q.push_back((Some(*c), None, d.clone()));
                }
            };
            for &n in order {
                let step = self.nodes[n as usize].on_launch(&view(l, n));
                self.note(n, &step);
                push(&mut q, Some(n), &step, self.fanout);
            }
            while let Some((to, from, data)) = q.pop_front() {
                match to {
                    None => {
                        let step = self.front.on_message(from.unwrap(), &data, 1.0);
                        push(&mut q, None, &step, self.fanout);
                        self.front_steps.push(step);
                    }
                    Some(n) => {
                        let step = self.nodes[n as usize].on_message(from, &data);
                        self.note(n, &step);
                        push(&mut q, Some(n), &step, self.fanout);
                    }
                }
            }
        }

        fn note(&mut self, n: u32, step: &Step) {
            if step.start_ranks {
                self.started.push(n);
            }
            if let Some(e) = &step.error {
                self.node_errors.push((n, e.clone()));
            }
        }
    }

    #[test]
    fn allgather_over_the_tree_writes_one_consistent_table_per_node() {
        let dir = scratch("gather");
        for fanout in [1, 2, 3, 32] {
            let l = launch(
                7,
                3,
                fanout,
                FabricSpec {
                    nic_env: true,
                    ..FabricSpec::default()
                },
                &format!("rl-t{fanout}"),
            );
            let invs: Vec<_> = (0..7)
                .map(|n| inv(&format!("h{n}"), &format!("10.0.0.{}", n + 1)))
                .collect();
            let mut sim = Sim::new(&l, invs, &dir);
            // Children start before their parents: the collective must buffer.
            sim.run(&l, &[6, 5, 4, 3, 2, 1, 0]);
            assert!(sim.node_errors.is_empty(), "{:?}", sim.node_errors);
            let mut started = sim.started.clone();
            started.sort();
            assert_eq!(
                started,
                (0..7).collect::<Vec<_>>(),
                "every node starts its ranks exactly once (fan-out {fanout})"
            );
            assert_eq!(sim.front.fabric(), Some(Fabric::Tcp));
            let a0 = sim.nodes[0].assignment().unwrap().clone();
            for (n, f) in sim.nodes.iter().enumerate() {
                assert_eq!(
                    f.assignment(),
                    Some(&a0),
                    "node {n} computed another assignment"
                );
                assert!(!f.holds_ranks());
                let path = f.table_path().expect("a node with ranks has a table");
                assert_eq!(path, table_path(&dir, &l.job_id, n as u32));
                let r = TableReader::open(path).unwrap();
                assert_eq!(r.header().rank_count, 21);
                assert_eq!(r.header().this_node, n as u32);
                for rank in 0..21u32 {
                    let ep = r.endpoint_of(rank).unwrap();
                    assert_eq!(ep.node, rank / 3);
                    assert_eq!(ep.local_rank, rank % 3);
                    assert_eq!(
                        ep.ip,
                        Some(format!("10.0.0.{}", rank / 3 + 1).parse().unwrap())
                    );
                    assert_eq!(
                        u32::from(ep.port),
                        u32::from(a0.nodes[(rank / 3) as usize].port_base) + rank % 3
                    );
                }
                for l in 0..3 {
                    let env: Vec<(String, String)> = f.rank_env(l).to_vec();
                    let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
                    assert_eq!(
                        get("RLAUNCH_ENDPOINTS").as_deref(),
                        Some(path.to_str().unwrap())
                    );
                    assert_eq!(get("RLAUNCH_NIC").as_deref(), Some("eth0"));
                    assert_eq!(get("RLAUNCH_FABRIC").as_deref(), Some("tcp"));
                    assert_eq!(get("NCCL_SOCKET_IFNAME").as_deref(), Some("=eth0"));
                    // Set with -x in the application context: --nic-env leaves it alone.
                    assert_eq!(get("UCX_NET_DEVICES"), None);
                }
            }
            let paths: Vec<PathBuf> = sim
                .nodes
                .iter()
                .map(|f| f.table_path().unwrap().to_path_buf())
                .collect();
            drop(sim);
            assert!(
                paths.iter().all(|p| !p.exists()),
                "tables are removed with the daemon's state"
            );
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn port_bases_are_reserved_per_node_and_disjoint_on_one_host() {
        let dir = scratch("ports");
        let l = launch(4, 5, 2, FabricSpec::default(), "rl-ports");
        let invs: Vec<_> = (0..4).map(|n| inv(&format!("h{n}"), "10.0.0.1")).collect();
        let mut sim = Sim::new(&l, invs, &dir);
        sim.run(&l, &[0, 1, 2, 3]);
        let a = sim.nodes[0].assignment().unwrap();
        let mut ranges: Vec<(u16, u16)> = a
            .nodes
            .iter()
            .map(|n| (n.port_base, n.port_base + 4))
            .collect();
        assert!(ranges.iter().all(|(b, _)| *b >= 20000));
        ranges.sort();
        for w in ranges.windows(2) {
            assert!(
                w[0].1 < w[1].0,
                "overlapping port ranges on one host: {ranges:?}"
            );
        }
        drop(sim);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn impossible_nic_is_one_usage_error_naming_the_node_and_nothing_goes_down() {
        let dir = scratch("badnic");
        let spec = FabricSpec { nics: vec!["ib0".into()], ..FabricSpec::default() };
        let l = launch(3, 2, 2, spec, "rl-badnic");
        let mut invs: Vec<_> = (0..3).map(|n| inv(&format!("h{n}"), "10.0.0.1")).collect();
        invs[0].net.push(netif("ib0", Some("10.9.0.1"), true));
        invs[1].net.push(netif("ib0", Some("10.9.0.2"), true));
        let mut sim = Sim::new(&l, invs, &dir);
        sim.run(&l, &[0, 1, 2]);
        let errs: Vec<&String> = sim
            .front_steps
            .iter()
            .filter_map(|s| s.usage_error.as_ref())
            .collect();
        assert_eq!(errs.len(), 1, "{:?}", sim.front_steps);
        assert!(errs[0].starts_with("--nic ib0: "), "{}", errs[0]);
        assert!(
            errs[0].contains("h2")
                && errs[0].contains("no interface named ib0")
                && errs[0].contains("eth0, lo"),
            "{}",
            errs[0]
        );
        assert!(sim.front_steps.iter().all(|s| s.down.is_empty()));
        assert!(sim.started.is_empty());
        assert!(sim
            .nodes
            .iter()
            .all(|f| f.holds_ranks() && f.table_path().is_none()));
        assert!(
            !sim.front.waiting(),
            "a failed exchange must not keep the job alive"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn rdma_request_without_rdma_names_the_node() {
        let dir = scratch("nordma");
        let l = launch(
            2,
            1,
            32,
            FabricSpec { choice: Some(FabricChoice::Rdma), ..FabricSpec::default() },
            "rl-nordma",
        );
        let mut invs = vec![ib_inv(), inv("plain", "10.0.0.2")];
        invs[0].hostname = "h0".into();
        let mut sim = Sim::new(&l, invs, &dir);
        sim.run(&l, &[0, 1]);
        let e = sim
            .front_steps
            .iter()
            .find_map(|s| s.usage_error.clone())
            .expect("an error");
        assert!(
            e.starts_with("--fabric rdma: node plain (#1) has no usable RDMA port"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn auto_picks_rdma_only_when_every_node_has_it() {
        let dir = scratch("auto");
        let l = launch(
            2,
            2,
            32,
            FabricSpec {
                nic_env: true,
                ..FabricSpec::default()
            },
            "rl-auto",
        );
        let mut b = ib_inv();
        b.hostname = "h1".into();
        let mut sim = Sim::new(&l, vec![ib_inv(), b], &dir);
        sim.run(&l, &[1, 0]);
        assert_eq!(sim.front.fabric(), Some(Fabric::Rdma));
        assert_eq!(sim.front.report_fabric(), serde_json::json!("rdma"));
        let env = sim.nodes[1].rank_env(1).to_vec();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get("RLAUNCH_NIC").as_deref(), Some("mlx5_0:1"));
        assert_eq!(get("NCCL_IB_HCA").as_deref(), Some("=mlx5_0:1"));
        assert_eq!(get("FI_PROVIDER").as_deref(), Some("verbs"));
        drop(sim);
        let mut sim = Sim::new(&l, vec![ib_inv(), inv("h1", "10.0.0.2")], &dir);
        sim.run(&l, &[0, 1]);
        assert_eq!(sim.front.fabric(), Some(Fabric::Tcp));
        assert!(
            sim.front
                .verbose_line()
                .unwrap()
                .starts_with("rlaunch: fabric tcp (--fabric auto); NICs: eth0 on 2 nodes"),
            "{:?}",
            sim.front.verbose_line()
        );
        drop(sim);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn inventory_mode_prints_once_and_starts_nothing() {
        let dir = scratch("inv");
        let l = launch(
            5,
            1,
            2,
            FabricSpec { inventory: Some(InventoryFormat::Text), ..FabricSpec::default() },
            "rl-inv",
        );
        let invs: Vec<_> = (0..5)
            .map(|n| inv(&format!("h{n}"), &format!("10.0.0.{}", n + 1)))
            .collect();
        let mut sim = Sim::new(&l, invs, &dir);
        assert!(sim.front.waiting());
        sim.run(&l, &[4, 0, 3, 1, 2]);
        assert!(sim.started.is_empty() && sim.node_errors.is_empty());
        assert!(sim
            .nodes
            .iter()
            .all(|f| !f.holds_ranks() && f.table_path().is_none()));
        let prints: Vec<&String> = sim
            .front_steps
            .iter()
            .filter_map(|s| s.print.as_ref())
            .collect();
        assert_eq!(prints.len(), 1);
        for n in 0..5 {
            assert!(
                prints[0].contains(&format!("10.0.0.{}/24", n + 1)),
                "{}",
                prints[0]
            );
        }
        assert!(sim.front_steps.iter().all(|s| s.down.is_empty()));
        assert!(!sim.front.waiting());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn fabric_off_starts_ranks_at_once_without_table() {
        let l = launch(
            2,
            1,
            2,
            FabricSpec { choice: None, ..FabricSpec::default() },
            "rl-off",
        );
        let mut f = NodeFabric::new(0, &Topology::new(2, 2));
        let step = f.on_launch(&view(&l, 0));
        assert_eq!(
            step,
            Step {
                start_ranks: true,
                ..Step::default()
            }
        );
        assert!(f.rank_env(0).is_empty() && !f.holds_ranks());
        let map = crate::job::compute_map(&l).unwrap();
        let front = FrontGather::new(&l, &map, vec!["a".into(), "b".into()]);
        assert!(!front.waiting());
        assert_eq!(front.report_fabric(), serde_json::Value::Null);
    }

    #[test]
    fn garbage_and_strangers_are_errors_not_panics() {
        let l = launch(3, 1, 2, FabricSpec::default(), "rl-garbage");
        let map = crate::job::compute_map(&l).unwrap();
        let mut front = FrontGather::new(&l, &map, vec!["a".into(), "b".into(), "c".into()]);
        let s = front.on_message(0, b"\xff\x00junk", 0.0);
        assert!(
            s.error
                .as_deref()
                .unwrap()
                .contains("fabric exchange with node a"),
            "{s:?}"
        );
        assert!(!front.waiting());
        // Node 2 is not a child of node 1 when the fan-out is 2 (its parent is node 0).
        let mut f = NodeFabric::new(1, &Topology::new(3, 2));
        f.discovered = Some(Ok(inv("b", "10.0.0.2")));
        let _ = f.on_launch(&view(&l, 1));
        let up = Message::Up {
            epoch: EPOCH,
            entries: vec![(3, Vec::new())],
        }
        .encode();
        assert!(f.on_message(Some(2), &up).error.is_some());
        assert!(!f.holds_ranks(), "a failed node releases its ranks' hold");
    }

    #[test]
    fn discovery_failure_is_a_node_error_saying_what_to_do() {
        let l = launch(1, 1, 2, FabricSpec::default(), "rl-nodisc");
        let mut f = NodeFabric::new(0, &Topology::new(1, 2));
        f.discovered = Some(Err("cannot list /sys/class/net".into()));
        let e = f.on_launch(&view(&l, 0)).error.unwrap();
        assert!(
            e.contains("cannot list /sys/class/net") && e.contains("--fabric off"),
            "{e}"
        );
    }


    #[test]
    fn nic_variables_per_fabric() {
        let tcp = Nic {
            kind: NicKind::Tcp,
            ifname: "eth1".into(),
            ip: None,
            mac: vec![],
            mtu: 1500,
            speed_mbps: None,
            rdma: None,
        };
        let v = nic_env(Fabric::Tcp, &tcp);
        assert_eq!(
            v,
            vec![
                ("UCX_NET_DEVICES", "eth1".to_string()),
                ("NCCL_SOCKET_IFNAME", "=eth1".into()),
                ("NCCL_IB_DISABLE", "1".into()),
                ("FI_PROVIDER", "tcp".into()),
                ("FI_TCP_IFACE", "eth1".into()),
            ]
        );
        let roce = Nic {
            kind: NicKind::Roce,
            ifname: "ens1f0np0".into(),
            ip: None,
            mac: vec![],
            mtu: 4096,
            speed_mbps: None,
            rdma: Some(fabrics::endpoints::RdmaPort {
                device: "mlx5_1".into(),
                port: 1,
                link_layer: LinkLayer::Ethernet,
                lid: 0,
                gid_index: 3,
                gid: Gid::default(),
                gid_type: Some(GidType::RoceV2),
                port_guid: 0,
                subnet_prefix: 0,
            }),
        };
        let v = nic_env(Fabric::Rdma, &roce);
        assert!(v.contains(&("UCX_NET_DEVICES", "mlx5_1:1".into())));
        assert!(v.contains(&("NCCL_IB_HCA", "=mlx5_1:1".into())));
        assert!(v.contains(&("NCCL_IB_GID_INDEX", "3".into())));
        assert!(v.contains(&("NCCL_SOCKET_IFNAME", "=ens1f0np0".into())));
        assert!(v.contains(&("FI_PROVIDER", "verbs".into())));
    }

    #[test]
    fn inventory_table_and_json() {
        let names = vec!["n1".to_string(), "n2".to_string()];
        let mut b = inv("n2", "10.0.0.2");
        b.verbs = fabrics::verbs::VerbsStatus::Unavailable {
            reason: "no device".into(),
        };
        b.warnings.push("class/net/eth0/speed: junk".into());
        let text = render_text(&names, &[ib_inv(), b.clone()]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("NODE") && lines[0].ends_with("GID/LID"),
            "{text}"
        );
        let ib = lines.iter().find(|l| l.contains("mlx5_0:1")).unwrap();
        for want in [
            "n1",
            "infiniband",
            "active (linkup)",
            "100 Gb/s (4X EDR)",
            "lid 0x1a",
            "gid[0] fe80:0000:0000:0000:b83f:d203:00a4:1c2f",
        ] {
            assert!(ib.contains(want), "{want:?} missing in {ib:?}");
        }
        let eth = lines
            .iter()
            .find(|l| l.starts_with("n2") && l.contains("eth0"))
            .unwrap();
        for want in [
            "ethernet",
            "up",
            "10 Gb/s",
            "10.0.0.2/24",
            "02:00:00:00:00:01",
        ] {
            assert!(eth.contains(want), "{want:?} missing in {eth:?}");
        }
        assert!(text.contains("n1: verbs: not probed"), "{text}");
        assert!(text.contains("n2: verbs: unavailable: no device"), "{text}");
        assert!(
            text.contains("n2: warning: class/net/eth0/speed: junk"),
            "{text}"
        );
        // Columns line up: every row's DEVICE column starts at the same offset.
        let col = lines[0].find("DEVICE").unwrap();
        assert!(lines
            .iter()
            .take_while(|l| !l.contains(": verbs"))
            .all(|l| !l.as_bytes()[col - 1].is_ascii_alphanumeric()));

        let v: serde_json::Value =
            serde_json::from_str(&render_json(&names, &[ib_inv(), b])).unwrap();
        let n0 = &v["nodes"][0];
        assert_eq!(n0["name"], "n1");
        assert_eq!(n0["rdma"][0]["node_guid"], "b83f:d203:00a4:1c2e");
        assert_eq!(n0["rdma"][0]["ports"][0]["lid"], 26);
        assert_eq!(
            n0["rdma"][0]["ports"][0]["port_guid"],
            "b83f:d203:00a4:1c2f"
        );
        assert_eq!(
            n0["rdma"][0]["ports"][0]["gids"][0]["gid"],
            "fe80:0000:0000:0000:b83f:d203:00a4:1c2f"
        );
        assert_eq!(
            v["nodes"][1]["interfaces"][0]["addresses"][0],
            "10.0.0.2/24"
        );
        assert_eq!(v["nodes"][1]["verbs"], "unavailable: no device");
    }

    #[test]
    fn stale_tables_are_swept_but_locked_and_young_ones_stay() {
        let dir = scratch("sweep");
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        let mk = |name: &str, age: Option<std::time::SystemTime>| {
            let p = dir.join(name);
            let f = std::fs::File::create(&p).unwrap();
            if let Some(t) = age {
                f.set_modified(t).unwrap();
            }
            p
        };
        let dead = mk("rlaunch-rl-dead-0.tbl", Some(old));
        let temp = mk("rlaunch-rl-dead-1.tbl.tmp.4242", Some(old));
        let live = mk("rlaunch-rl-live-0.tbl", Some(old));
        let young = mk("rlaunch-rl-young-0.tbl", None);
        let other = mk("other-file.tbl", Some(old));
        let dead_xml = mk("rlaunch-rl-dead-0.xml", Some(old));
        let temp_xml = mk("rlaunch-rl-dead-1.xml.tmp.4242", Some(old));
        let live_xml = mk("rlaunch-rl-live-0.xml", Some(old));
        let held = crate::claim::hold(&live).unwrap();
        let held_xml = crate::claim::hold(&live_xml).unwrap();
        let mut removed = sweep_stale_tables(&dir, crate::claim::STALE_AFTER);
        removed.sort();
        assert_eq!(removed, vec![dead.clone(), dead_xml, temp.clone(), temp_xml]);
        assert!(live.exists() && young.exists() && other.exists() && live_xml.exists());
        drop(held_xml);
        // The daemon holding `live` dies: its lock goes with it, and the next sweep takes it.
        drop(held);
        let mut removed = sweep_stale_tables(&dir, crate::claim::STALE_AFTER);
        removed.sort();
        assert_eq!(removed, vec![live.clone(), live_xml]);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn ucx_transports_only_for_jobs_on_one_node() {
        let gib = Some(1u64 << 30);
        assert_eq!(ucx_tls(false, 8, gib), None, "a job across nodes keeps UCX's own choice");
        assert_eq!(ucx_tls(true, 0, gib), None);
        assert_eq!(ucx_tls(true, 64, gib), Some("^sysv,tcp"));
        // Too little /dev/shm for the POSIX transport: SysV stays.
        assert_eq!(ucx_tls(true, 64, Some(64 << 20)), Some("^tcp"));
        assert_eq!(ucx_tls(true, 4, Some(4 * UCX_SHM_PER_RANK)), Some("^sysv,tcp"));
        assert_eq!(ucx_tls(true, 4, None), Some("^tcp"));
    }

    #[test]
    fn the_users_own_variables_are_found_wherever_set() {
        use crate::spec::AppContext;
        let app = |np, env: &[&str]| AppContext {
            argv: vec!["a".into()],
            env: env.iter().map(|k| (k.to_string(), Some("x".to_string()))).collect(),
            cwd: "/".into(),
            np: Some(np),
            nodes: None,
            without_job_env: false,
        };
        let none = |_: &str| false;
        let view = |l| crate::job::fixture::view(l, 0);
        let l = crate::job::fixture::launch("j", 1, 4, vec![app(2, &["UCX_TLS"]), app(2, &["HWLOC_X"])]);
        assert_eq!(user_sets(&view(l.clone()), "UCX_", &none), vec![true, true, false, false]);
        assert_eq!(user_sets(&view(l.clone()), "HWLOC_", &none), vec![false, false, true, true]);
        assert_eq!(user_sets(&view(l.clone()), "UCX_", &|p| p == "UCX_"), vec![true; 4]);
        let mut l = l;
        l.env.push(("UCX_NET_DEVICES".into(), Some("eth0".into())));
        assert_eq!(user_sets(&view(l.clone()), "UCX_", &none), vec![true; 4]);
        // -envnone: the job's copy does not reach that context's ranks.
        l.apps[1].without_job_env = true;
        assert_eq!(user_sets(&view(l), "UCX_", &none), vec![true, true, false, false]);
    }

    #[test]
    fn speeds() {
        assert_eq!(speed_str(100), "100 Mb/s");
        assert_eq!(speed_str(2500), "2.5 Gb/s");
        assert_eq!(speed_str(400_000), "400 Gb/s");
    }

    proptest! {
        #[test]
        fn port_slices_of_one_job_are_disjoint_and_fit(job in "[a-z0-9-]{1,12}", nodes in 1u32..200, max_local in 1u32..300) {
            let range = DEFAULT_PORT_RANGE;
            let slices: Vec<_> = (0..nodes).map(|n| port_slice(&job, n, max_local, range.clone()).unwrap()).collect();
            let width = u32::from(*slices[0].end() - *slices[0].start()) + 1;
            prop_assert!(width >= max_local);
            let count = (u32::from(*range.end() - *range.start()) + 1) / width;
            for s in &slices {
                prop_assert!(range.contains(s.start()) && range.contains(s.end()));
            }
            // Disjoint while the nodes fit the number of slices.
            for i in 0..nodes.min(count) as usize {
                for j in 0..i {
                    let (a, b) = (&slices[i], &slices[j]);
                    prop_assert!(a.end() < b.start() || b.end() < a.start(), "{a:?} {b:?}");
                }
            }
        }
    }

    #[test]
    #[allow(clippy::reversed_empty_ranges)] // an empty range is the case under test
    fn port_slice_edge_cases() {
        assert_eq!(port_slice("j", 0, 10, 100..=99), None);
        assert_eq!(port_slice("j", 0, 100, 100..=150), None);
        assert_eq!(port_slice("j", 3, 1, 100..=115), Some(100..=115));
    }
}
