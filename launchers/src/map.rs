//! The process map: which rank runs on which node, as a pure function of slots, counts and policy.

use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use crate::nodes::Node;

/// Largest job [`compute_map`] builds. Without a bound, a typo like `-np 4000000000 --oversubscribe`
/// would try to allocate tens of gigabytes before anything could report the mistake.
pub const MAX_RANKS: u32 = 1 << 24;

/// How many ranks go to each node (`--map-by`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MapBy {
    /// Fill each node's slots before moving to the next.
    Slot,
    /// One rank per node in turn, skipping nodes whose slots are full.
    Node,
    /// Exactly N ranks per node (`ppr:N:node`, `-N/--ppn N`), filling nodes in order.
    PprNode(u32),
    /// Hydra's placement (`-hosts`, `-ppn N`, `-rr`): each node in turn takes a block of
    /// consecutive ranks (N, or its slots without N) and the blocks wrap around the node list
    /// until every rank is placed; ranks are numbered in that order. Only max_slots limits it.
    Cycle(Option<u32>),
    /// Open MPI's `seq`: each application context lists the node of each of its ranks
    /// ([`AppRequest::nodes`], from the host file's lines in order).
    Seq,
}

/// How ranks are numbered once placed (`--rank-by`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RankBy {
    /// Consecutive ranks on one node.
    Slot,
    /// Consecutive ranks on consecutive nodes, round-robin.
    Node,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MapPolicy {
    pub map_by: MapBy,
    pub rank_by: RankBy,
    pub oversubscribe: bool,
}

impl Default for MapPolicy {
    fn default() -> Self {
        MapPolicy {
            map_by: MapBy::Slot,
            rank_by: RankBy::Slot,
            oversubscribe: false,
        }
    }
}

/// A `--map-by` / `--rank-by` value that is not understood.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyParseError {
    #[error("unknown --map-by value '{0}'; use slot, node or ppr:N:node")]
    MapBy(String),
    #[error("invalid count in --map-by '{0}'; use ppr:N:node with N a whole number of at least 1")]
    PprCount(String),
    #[error("unsupported --map-by '{0}': only ppr:N:node is supported, not sockets or cores")]
    PprUnit(String),
    #[error("unknown --rank-by value '{0}'; use slot or node")]
    RankBy(String),
}

impl FromStr for MapBy {
    type Err = PolicyParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        match lower.as_str() {
            "slot" => return Ok(MapBy::Slot),
            "node" => return Ok(MapBy::Node),
            _ => {}
        }
        let mut parts = lower.split(':');
        if parts.next() != Some("ppr") {
            return Err(PolicyParseError::MapBy(s.to_string()));
        }
        let (Some(count), Some(unit), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(PolicyParseError::MapBy(s.to_string()));
        };
        if unit != "node" {
            return Err(PolicyParseError::PprUnit(s.to_string()));
        }
        match count.parse::<u32>() {
            Ok(n) if n >= 1 && count.bytes().all(|b| b.is_ascii_digit()) => Ok(MapBy::PprNode(n)),
            _ => Err(PolicyParseError::PprCount(s.to_string())),
        }
    }
}

impl FromStr for RankBy {
    type Err = PolicyParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "slot" => Ok(RankBy::Slot),
            "node" => Ok(RankBy::Node),
            _ => Err(PolicyParseError::RankBy(s.to_string())),
        }
    }
}

impl fmt::Display for MapBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MapBy::Slot => f.write_str("slot"),
            MapBy::Node => f.write_str("node"),
            MapBy::PprNode(n) => write!(f, "ppr:{n}:node"),
            MapBy::Cycle(Some(n)) => write!(f, "hydra -ppn {n}"),
            MapBy::Cycle(None) => f.write_str("hydra -hosts"),
            MapBy::Seq => f.write_str("seq"),
        }
    }
}

impl fmt::Display for RankBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RankBy::Slot => f.write_str("slot"),
            RankBy::Node => f.write_str("node"),
        }
    }
}

/// Where one rank runs.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RankPlace {
    /// Index into the node list given to [`compute_map`].
    pub node: u32,
    /// Position among the ranks on that node, in global-rank order.
    pub local_rank: u32,
    /// MPMD context (0 for a single program).
    pub app: u32,
}

/// The result of [`compute_map`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ProcMap {
    ranks: Vec<RankPlace>,
    by_node: Vec<Vec<u32>>,
    app_starts: Vec<u32>,
}

impl ProcMap {
    pub fn size(&self) -> u32 {
        self.ranks.len() as u32
    }

    /// Nodes given, including ones with 0 ranks.
    pub fn num_nodes(&self) -> u32 {
        self.by_node.len() as u32
    }

    /// # Panics
    /// If `r >= self.size()`, like slice indexing; use [`ProcMap::get`] for untrusted ranks.
    pub fn rank(&self, r: u32) -> &RankPlace {
        &self.ranks[r as usize]
    }

    pub fn get(&self, r: u32) -> Option<&RankPlace> {
        self.ranks.get(r as usize)
    }

    /// Index = global rank.
    pub fn ranks(&self) -> &[RankPlace] {
        &self.ranks
    }

    /// Global ranks on `node`, ascending (= local rank order); empty for an unknown node.
    pub fn ranks_on(&self, node: u32) -> &[u32] {
        self.by_node
            .get(node as usize)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    pub fn num_apps(&self) -> u32 {
        self.app_starts.len().saturating_sub(1) as u32
    }

    /// Ranks of MPMD context `app`; empty past the last context.
    pub fn app_ranks(&self, app: u32) -> Range<u32> {
        let a = app as usize;
        match (self.app_starts.get(a), self.app_starts.get(a + 1)) {
            (Some(&start), Some(&end)) => start..end,
            _ => self.size()..self.size(),
        }
    }

    /// PMI `PMI_process_mapping` in vector form `(vector,(start,count,ppn),...)`.
    ///
    /// MPICH decodes it by walking the triples (nodes start..start+count-1, ppn consecutive ranks
    /// each) and repeating the list until every rank has a node, so cyclic maps collapse to one
    /// period. `None` when the map cannot be said this way: MPICH treats node ids as 0..max, so a
    /// node with no ranks before a node with ranks would become a phantom node, and a wrong map
    /// breaks shared memory where a missing one only costs start-up time.
    ///
    /// PMI servers limit value lengths (about 1 KiB); the caller must also omit a string too long
    /// for its transport rather than cut it.
    pub fn pmi_process_mapping(&self) -> Option<String> {
        if self.ranks.is_empty() {
            return None;
        }
        let used = self.by_node.iter().take_while(|r| !r.is_empty()).count();
        if self.by_node[used..].iter().any(|r| !r.is_empty()) {
            return None;
        }
        let triples = self.triples();
        let seq: Vec<u32> = self.ranks.iter().map(|p| p.node).collect();
        let keep = if triples[0].0 == 0 {
            shortest_repeating_prefix(&triples, &seq)
        } else {
            // MPICH restarts later passes at the first triple that starts at node 0; with none
            // at the front that is not a plain repetition, so spell out every rank.
            triples.len()
        };
        let body: Vec<String> = triples[..keep]
            .iter()
            .map(|(s, c, p)| format!("({s},{c},{p})"))
            .collect();
        Some(format!("(vector,{})", body.join(",")))
    }

    /// Maximal runs of consecutive ranks on one node, merged into `(start, count, ppn)` triples
    /// wherever the runs sit on consecutive nodes with equal lengths.
    fn triples(&self) -> Vec<(u32, u32, u32)> {
        let mut runs: Vec<(u32, u32)> = Vec::new();
        for place in &self.ranks {
            match runs.last_mut() {
                Some((node, len)) if *node == place.node => *len += 1,
                _ => runs.push((place.node, 1)),
            }
        }
        let mut triples: Vec<(u32, u32, u32)> = Vec::new();
        for (node, len) in runs {
            match triples.last_mut() {
                Some((start, count, ppn))
                    if *ppn == len && start.checked_add(*count) == Some(node) =>
                {
                    *count += 1
                }
                _ => triples.push((node, 1, len)),
            }
        }
        triples
    }
}

/// Fewest leading triples whose decoding, repeated, gives `seq`. Periods of `seq` come from its
/// border chain (KMP failure function) so this stays linear; a period is usable only where it
/// ends exactly on a triple boundary.
fn shortest_repeating_prefix(triples: &[(u32, u32, u32)], seq: &[u32]) -> usize {
    let n = seq.len();
    let mut fail = vec![0usize; n];
    let mut k = 0;
    for i in 1..n {
        while k > 0 && seq[i] != seq[k] {
            k = fail[k - 1];
        }
        if seq[i] == seq[k] {
            k += 1;
        }
        fail[i] = k;
    }
    let mut ends = Vec::with_capacity(triples.len());
    let mut total = 0usize;
    for &(_, count, ppn) in triples {
        total += count as usize * ppn as usize;
        ends.push(total);
    }
    let mut border = fail[n - 1];
    loop {
        let period = n - border;
        if let Ok(i) = ends.binary_search(&period) {
            return i + 1;
        }
        if border == 0 {
            return triples.len();
        }
        border = fail[border - 1];
    }
}

/// A node as named in a message: its name when known, else its index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeLabel {
    pub index: u32,
    pub name: Option<String>,
}

impl fmt::Display for NodeLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(name) => f.write_str(name),
            None => write!(f, "node {}", self.index),
        }
    }
}

/// Per-node counts for a message, e.g. `n1: 4, n2: 4`, shortened after 8 nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeCounts(pub Vec<(NodeLabel, u32)>);

const SHOWN_NODES: usize = 8;

impl fmt::Display for NodeCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (label, count)) in self.0.iter().take(SHOWN_NODES).enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{label}: {count}")?;
        }
        if self.0.len() > SHOWN_NODES {
            write!(f, ", and {} more nodes", self.0.len() - SHOWN_NODES)?;
        }
        Ok(())
    }
}

/// Why no map could be made. `Display` is the whole one-line message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    #[error("no hosts to run on; give --host or --hostfile, or run inside a Slurm or PBS job")]
    NoNodes,
    #[error("too many nodes ({0}); at most 4294967295 are supported")]
    TooManyNodes(usize),
    #[error("no program to run; give a program after the options")]
    NoApps,
    #[error(
        "--spare {spares} keeps {spares} of the job's {nodes} nodes as spares and leaves none \
         for ranks; give more hosts or a smaller --spare"
    )]
    NoNodesBesideSpares { nodes: u64, spares: u32 },
    #[error(
        "-np 0 for program {app}; give -np 1 or more, or leave -np out to fill the free slots"
    )]
    ZeroNp { app: u32 },
    #[error("programs {first} and {second} both leave out -np; give -np to all but one of them")]
    TwoOpen { first: u32, second: u32 },
    #[error(
        "program {app} has no -np and no slots are left for it (the others take {taken} of \
         {capacity}); give it -np, use --oversubscribe with -np, or add hosts"
    )]
    NothingLeft { app: u32, taken: u64, capacity: u64 },
    #[error("ppr:0:node places no ranks; use ppr:N:node with N of at least 1")]
    ZeroPpr,
    #[error(
        "requested {requested} ranks but ppr:{ppr}:node on {nodes} nodes places at most \
         {capacity}; raise N in ppr:N:node or add hosts"
    )]
    PprTooSmall {
        requested: u64,
        ppr: u32,
        nodes: u32,
        capacity: u64,
    },
    #[error(
        "ppr:{ppr}:node puts {count} ranks on {node} which has {slots} slots; use \
         --oversubscribe, a smaller ppr or hosts with more slots"
    )]
    PprOverSlots {
        ppr: u32,
        count: u32,
        node: NodeLabel,
        slots: u32,
    },
    #[error(
        "ppr:{ppr}:node puts {count} ranks on {node} but its max_slots is {max_slots}; use a \
         smaller ppr or raise max_slots"
    )]
    PprOverMax {
        ppr: u32,
        count: u32,
        node: NodeLabel,
        max_slots: u32,
    },
    #[error(
        "requested {requested} ranks but only {available} slots were found ({per_node}); use \
         --oversubscribe or more hosts"
    )]
    NotEnoughSlots {
        requested: u64,
        available: u64,
        per_node: NodeCounts,
    },
    #[error(
        "requested {requested} ranks but max_slots allows only {limit} ({per_node}); add hosts \
         or raise max_slots"
    )]
    OverMaxSlots {
        requested: u64,
        limit: u64,
        per_node: NodeCounts,
    },
    #[error("requested {requested} ranks; rlaunch runs at most {max} ranks in one job", max = MAX_RANKS)]
    TooManyRanks { requested: u64 },
    #[error(
        "--map-by seq: program {app} asks for {requested} ranks but its host list has {listed} \
         entries; list one host per rank or lower -np"
    )]
    SeqTooShort { app: u32, requested: u64, listed: u64 },
    #[error("--map-by seq: program {app} has no host list; seq needs a host file or --host list")]
    SeqWithoutHosts { app: u32 },
    #[error("program {app}'s host list names node {node}, which is not in the job")]
    UnknownAppNode { app: u32, node: u32 },
    #[error(
        "program {app} asks for {requested} ranks but its hosts have {available} free slots \
         ({per_node}); use --oversubscribe, give it more hosts or lower -np"
    )]
    AppNotEnoughSlots {
        app: u32,
        requested: u64,
        available: u64,
        per_node: NodeCounts,
    },
}

impl MapError {
    /// Replaces node indices in the message with host names (`names[i]` names node i).
    pub fn with_node_names(mut self, names: &[String]) -> Self {
        let name = |label: &mut NodeLabel| {
            if let Some(n) = names.get(label.index as usize) {
                label.name = Some(n.clone());
            }
        };
        match &mut self {
            MapError::PprOverSlots { node, .. } | MapError::PprOverMax { node, .. } => name(node),
            MapError::NotEnoughSlots { per_node, .. }
            | MapError::OverMaxSlots { per_node, .. }
            | MapError::AppNotEnoughSlots { per_node, .. } => {
                per_node.0.iter_mut().for_each(|(label, _)| name(label))
            }
            _ => {}
        }
        self
    }
}

/// [`compute_map_apps`] for a node list, naming hosts in error messages.
pub fn compute_map_for_nodes(
    nodes: &[Node],
    apps: &[AppRequest],
    policy: &MapPolicy,
) -> Result<ProcMap, MapError> {
    let slots: Vec<(u32, Option<u32>)> = nodes.iter().map(|n| (n.slots, n.max_slots)).collect();
    compute_map_apps(&slots, apps, policy).map_err(|e| {
        let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
        e.with_node_names(&names)
    })
}

/// One application context as [`compute_map_apps`] sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppRequest {
    /// `-np`; `None`: the free slots of its nodes (with [`MapBy::Seq`]: its whole list).
    pub np: Option<u32>,
    /// The context's own nodes (Open MPI's per-context `-H`), as indices into the node list; with
    /// [`MapBy::Seq`], the node of each rank in order. `None`: every node of the job.
    pub nodes: Option<Vec<u32>>,
}

/// The process map when contexts have their own nodes (per-context `-H`) or the job maps by
/// [`MapBy::Seq`]; otherwise exactly [`compute_map`].
///
/// Contexts are placed in order. A context with its own nodes fills their free slots (the slots
/// earlier contexts left) in node-list order, or round-robin with `--map-by node`; with
/// oversubscribe, ranks beyond go round-robin over its nodes still under max_slots. A context
/// without its own nodes is placed the same way over every node. Ranks are numbered context by
/// context, within one by `rank_by`.
pub fn compute_map_apps(
    node_slots: &[(u32, Option<u32>)],
    apps: &[AppRequest],
    policy: &MapPolicy,
) -> Result<ProcMap, MapError> {
    if policy.map_by != MapBy::Seq && apps.iter().all(|a| a.nodes.is_none()) {
        let np: Vec<Option<u32>> = apps.iter().map(|a| a.np).collect();
        return compute_map(node_slots, &np, policy);
    }
    if node_slots.is_empty() {
        return Err(MapError::NoNodes);
    }
    let nodes = u32::try_from(node_slots.len()).map_err(|_| MapError::TooManyNodes(node_slots.len()))?;
    if apps.is_empty() {
        return Err(MapError::NoApps);
    }
    let soft: Vec<u64> = node_slots.iter().map(|&(s, m)| u64::from(m.map_or(s, |m| s.min(m)))).collect();
    let hard: Vec<Option<u64>> = node_slots.iter().map(|&(_, m)| m.map(u64::from)).collect();
    let mut used = vec![0u64; soft.len()];
    let mut order: Vec<u32> = Vec::new();
    let mut counts = Vec::with_capacity(apps.len());
    let all: Vec<u32> = (0..nodes).collect();
    for (a, req) in apps.iter().enumerate() {
        let app = a as u32;
        if req.np == Some(0) {
            return Err(MapError::ZeroNp { app });
        }
        let list = req.nodes.as_deref();
        if let Some(&node) = list.into_iter().flatten().find(|&&n| n >= nodes) {
            return Err(MapError::UnknownAppNode { app, node });
        }
        let start = order.len();
        if policy.map_by == MapBy::Seq {
            let list = list.ok_or(MapError::SeqWithoutHosts { app })?;
            let n = req.np.map_or(list.len() as u64, u64::from);
            if n > list.len() as u64 {
                return Err(MapError::SeqTooShort { app, requested: n, listed: list.len() as u64 });
            }
            order.extend_from_slice(&list[..n as usize]);
        } else {
            let mut cand: Vec<u32> = list.map_or_else(|| all.clone(), <[u32]>::to_vec);
            let mut seen = vec![false; soft.len()];
            cand.retain(|&n| !std::mem::replace(&mut seen[n as usize], true));
            let free: Vec<u64> = cand.iter().map(|&n| soft[n as usize].saturating_sub(used[n as usize])).collect();
            let capacity: u64 = free.iter().sum();
            let total = match req.np {
                Some(n) => u64::from(n),
                None if capacity == 0 => {
                    return Err(MapError::NothingLeft { app, taken: used.iter().sum(), capacity: soft.iter().sum() })
                }
                None => capacity,
            };
            if order.len() as u64 + total > u64::from(MAX_RANKS) {
                return Err(MapError::TooManyRanks { requested: order.len() as u64 + total });
            }
            let within = total.min(capacity);
            let mut per = if policy.map_by == MapBy::Node {
                round_robin(within, &free.iter().copied().map(Some).collect::<Vec<_>>()).unwrap_or_else(|| fill_in_order(within, &free))
            } else {
                fill_in_order(within, &free)
            };
            if total > within {
                if !policy.oversubscribe {
                    return Err(MapError::AppNotEnoughSlots {
                        app,
                        requested: total,
                        available: capacity,
                        per_node: NodeCounts(cand.iter().zip(&free).map(|(&n, &f)| (NodeLabel { index: n, name: None }, f as u32)).collect()),
                    });
                }
                let room: Vec<Option<u64>> =
                    cand.iter().zip(&per).map(|(&n, &p)| hard[n as usize].map(|h| h.saturating_sub(used[n as usize] + p))).collect();
                let more = round_robin(total - within, &room).ok_or_else(|| over_max(total, &hard))?;
                per.iter_mut().zip(more).for_each(|(p, m)| *p += m);
            }
            let mut per_node = vec![0u64; soft.len()];
            for (&n, &p) in cand.iter().zip(&per) {
                per_node[n as usize] = p;
            }
            order.extend(number_ranks(&per_node, policy.rank_by, total as usize));
        }
        for &n in &order[start..] {
            used[n as usize] += 1;
        }
        counts.push((order.len() - start) as u64);
    }
    Ok(build_map(&order, &counts, soft.len()))
}

/// The process map of a job whose last `spares` nodes are spares (`--spare N`): their daemons
/// run but they get no rank, so that a lost node's ranks have somewhere to go. The ranks are
/// placed on the other nodes exactly as [`compute_map_apps`] places them there; the spares are
/// in the map as nodes without ranks. A context's own node list must not name a spare.
pub fn compute_map_with_spares(
    node_slots: &[(u32, Option<u32>)],
    apps: &[AppRequest],
    policy: &MapPolicy,
    spares: u32,
) -> Result<ProcMap, MapError> {
    if spares == 0 {
        return compute_map_apps(node_slots, apps, policy);
    }
    let working = node_slots.len().checked_sub(spares as usize).filter(|&n| n > 0);
    let Some(working) = working else {
        return Err(MapError::NoNodesBesideSpares { nodes: node_slots.len() as u64, spares });
    };
    let mut map = compute_map_apps(&node_slots[..working], apps, policy)?;
    map.by_node.resize(node_slots.len(), Vec::new());
    Ok(map)
}

/// Where the ranks of lost nodes (`moving`) go when no spare takes their place (issue 17): the
/// free slots (slots, capped by max_slots, minus the ranks already there) of the other working
/// nodes, in node order, the lost ranks in rank order. Nodes in `closed` (every lost node) and
/// the spares (the last `spares` nodes, left to replace whole nodes) take none. Every daemon
/// computes the same from the same map. `None` when the free slots cannot take them all: the
/// job cannot go on without the lost nodes.
pub fn relocate(map: &ProcMap, node_slots: &[(u32, Option<u32>)], moving: &[u32], closed: &[u32], spares: u32) -> Option<ProcMap> {
    let working = node_slots.len().saturating_sub(spares as usize);
    let mut free: Vec<u64> = (0..map.num_nodes() as usize)
        .map(|n| {
            let usable = n < working && !moving.contains(&(n as u32)) && !closed.contains(&(n as u32));
            let soft = node_slots.get(n).map_or(0, |&(s, m)| u64::from(m.map_or(s, |m| s.min(m))));
            if usable {
                soft.saturating_sub(map.ranks_on(n as u32).len() as u64)
            } else {
                0
            }
        })
        .collect();
    let mut order: Vec<u32> = map.ranks.iter().map(|p| p.node).collect();
    let mut next = 0usize;
    for place in order.iter_mut().filter(|n| moving.contains(n)) {
        while next < free.len() && free[next] == 0 {
            next += 1;
        }
        let slot = free.get_mut(next)?;
        *slot -= 1;
        *place = next as u32;
    }
    let counts: Vec<u64> = (0..map.num_apps()).map(|a| map.app_ranks(a).len() as u64).collect();
    Some(build_map(&order, &counts, map.num_nodes() as usize))
}

/// Computes the process map: a pure, deterministic function.
///
/// `node_slots[i]` is (slots, max_slots) of node i. `app_np[a]` is `-np` of MPMD context a; `None`
/// means every slot the other contexts leave (with ppr: ppr × nodes minus the rest), and at most
/// one context may leave it out. Ranks are numbered context by context. `map_by` decides how many
/// ranks each node gets; `rank_by` decides their numbering; local ranks follow global order.
/// With oversubscribe, ranks beyond the slots are spread round-robin over the nodes still under
/// max_slots, which is never exceeded.
pub fn compute_map(
    node_slots: &[(u32, Option<u32>)],
    app_np: &[Option<u32>],
    policy: &MapPolicy,
) -> Result<ProcMap, MapError> {
    if node_slots.is_empty() {
        return Err(MapError::NoNodes);
    }
    let nodes =
        u32::try_from(node_slots.len()).map_err(|_| MapError::TooManyNodes(node_slots.len()))?;
    if app_np.is_empty() {
        return Err(MapError::NoApps);
    }
    if policy.map_by == MapBy::Seq {
        let apps: Vec<AppRequest> = app_np.iter().map(|&np| AppRequest { np, nodes: None }).collect();
        return compute_map_apps(node_slots, &apps, policy);
    }
    if matches!(policy.map_by, MapBy::PprNode(0) | MapBy::Cycle(Some(0))) {
        return Err(MapError::ZeroPpr);
    }
    // Slots usable without oversubscribing: a max_slots below slots caps them too.
    let soft: Vec<u64> = node_slots
        .iter()
        .map(|&(s, m)| u64::from(m.map_or(s, |m| s.min(m))))
        .collect();
    let hard: Vec<Option<u64>> = node_slots.iter().map(|&(_, m)| m.map(u64::from)).collect();
    let capacity: u64 = match policy.map_by {
        MapBy::PprNode(n) => u64::from(n) * u64::from(nodes),
        // Seq never gets here (see the top): it needs per-context lists.
        MapBy::Slot | MapBy::Node | MapBy::Seq => soft.iter().sum(),
        // One round of blocks: the default size of a job without -np.
        MapBy::Cycle(block) => soft.iter().map(|&s| block.map_or(s.max(1), u64::from)).sum(),
    };

    let counts = resolve_app_counts(app_np, capacity)?;
    let total: u64 = counts.iter().sum();
    if total > u64::from(MAX_RANKS) {
        return Err(MapError::TooManyRanks { requested: total });
    }

    let label = |i: usize| NodeLabel {
        index: i as u32,
        name: None,
    };
    let cycle = match policy.map_by {
        MapBy::Cycle(block) => {
            let blocks: Vec<u64> = soft.iter().map(|&s| block.map_or(s.max(1), u64::from)).collect();
            Some(cycle_order(&blocks, total as usize))
        }
        _ => None,
    };
    let per_node: Vec<u64> = match policy.map_by {
        MapBy::Cycle(_) => {
            let mut per = vec![0u64; soft.len()];
            cycle.iter().flatten().for_each(|&n| per[n as usize] += 1);
            if per.iter().zip(&hard).any(|(&c, h)| h.is_some_and(|h| c > h)) {
                return Err(over_max(total, &hard));
            }
            per
        }
        MapBy::PprNode(ppr) => {
            if total > capacity {
                return Err(MapError::PprTooSmall {
                    requested: total,
                    ppr,
                    nodes,
                    capacity,
                });
            }
            let per = fill_in_order(total, &vec![u64::from(ppr); soft.len()]);
            for (i, &count) in per.iter().enumerate() {
                if let Some(max) = hard[i] {
                    if count > max {
                        return Err(MapError::PprOverMax {
                            ppr,
                            count: count as u32,
                            node: label(i),
                            max_slots: max as u32,
                        });
                    }
                }
                if count > soft[i] && !policy.oversubscribe {
                    return Err(MapError::PprOverSlots {
                        ppr,
                        count: count as u32,
                        node: label(i),
                        slots: soft[i] as u32,
                    });
                }
            }
            per
        }
        MapBy::Slot | MapBy::Node | MapBy::Seq => {
            let within = total.min(capacity);
            let soft_caps: Vec<Option<u64>> = soft.iter().copied().map(Some).collect();
            let mut per = if policy.map_by == MapBy::Slot {
                fill_in_order(within, &soft)
            } else {
                round_robin(within, &soft_caps).unwrap_or_else(|| fill_in_order(within, &soft))
            };
            let extra = total - within;
            if extra > 0 {
                if !policy.oversubscribe {
                    return Err(MapError::NotEnoughSlots {
                        requested: total,
                        available: capacity,
                        per_node: NodeCounts(
                            soft.iter()
                                .enumerate()
                                .map(|(i, &s)| (label(i), s as u32))
                                .collect(),
                        ),
                    });
                }
                let room: Vec<Option<u64>> = hard
                    .iter()
                    .zip(&per)
                    .map(|(h, &p)| h.map(|h| h.saturating_sub(p)))
                    .collect();
                let Some(more) = round_robin(extra, &room) else {
                    return Err(over_max(total, &hard));
                };
                per.iter_mut().zip(more).for_each(|(p, m)| *p += m);
            }
            per
        }
    };

    let order = cycle.unwrap_or_else(|| number_ranks(&per_node, policy.rank_by, total as usize));
    Ok(build_map(&order, &counts, per_node.len()))
}

/// The map from the node of each global rank and the ranks of each context, in order.
fn build_map(order: &[u32], counts: &[u64], nodes: usize) -> ProcMap {
    let mut by_node: Vec<Vec<u32>> = vec![Vec::new(); nodes];
    let mut ranks = Vec::with_capacity(order.len());
    let mut app_starts = Vec::with_capacity(counts.len() + 1);
    let mut next_start = 0u64;
    let mut app = 0usize;
    app_starts.push(0);
    for (rank, &node) in order.iter().enumerate() {
        while next_start + counts[app] <= rank as u64 {
            next_start += counts[app];
            app += 1;
            app_starts.push(next_start as u32);
        }
        let on_node = &mut by_node[node as usize];
        ranks.push(RankPlace {
            node,
            local_rank: on_node.len() as u32,
            app: app as u32,
        });
        on_node.push(rank as u32);
    }
    while app_starts.len() < counts.len() + 1 {
        next_start += counts[app_starts.len() - 1];
        app_starts.push(next_start as u32);
    }
    ProcMap {
        ranks,
        by_node,
        app_starts,
    }
}

fn resolve_app_counts(app_np: &[Option<u32>], capacity: u64) -> Result<Vec<u64>, MapError> {
    let mut open: Option<u32> = None;
    let mut fixed: u64 = 0;
    for (a, np) in app_np.iter().enumerate() {
        let a = a as u32;
        match np {
            Some(0) => return Err(MapError::ZeroNp { app: a }),
            Some(n) => fixed += u64::from(*n),
            None => match open {
                Some(first) => return Err(MapError::TwoOpen { first, second: a }),
                None => open = Some(a),
            },
        }
    }
    let left = match open {
        Some(app) if capacity <= fixed => {
            return Err(MapError::NothingLeft {
                app,
                taken: fixed,
                capacity,
            });
        }
        Some(_) => capacity - fixed,
        None => 0,
    };
    Ok(app_np.iter().map(|np| np.map_or(left, u64::from)).collect())
}

/// Fills node 0 up to its cap, then node 1, and so on. `amount <= sum(caps)` is the caller's job;
/// anything beyond is dropped.
fn fill_in_order(amount: u64, caps: &[u64]) -> Vec<u64> {
    let mut left = amount;
    caps.iter()
        .map(|&cap| {
            let take = cap.min(left);
            left -= take;
            take
        })
        .collect()
}

/// What dealing `amount` items one at a time round-robin from node 0 gives each node, skipping
/// nodes at their cap (`None` = no cap). Computed by levels rather than one by one so that it costs
/// O(nodes · log amount). `None` when the caps cannot hold `amount`.
fn round_robin(amount: u64, caps: &[Option<u64>]) -> Option<Vec<u64>> {
    let fits_at =
        |level: u64| -> u64 { caps.iter().map(|c| c.map_or(level, |c| c.min(level))).sum() };
    if caps.iter().all(Option::is_some) && fits_at(u64::MAX) < amount {
        return None;
    }
    if amount == 0 {
        return Some(vec![0; caps.len()]);
    }
    // Largest number of complete rounds that does not exceed `amount`.
    let (mut lo, mut hi) = (0u64, amount);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if fits_at(mid) <= amount {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    let level = lo;
    let mut left = amount - fits_at(level);
    Some(
        caps.iter()
            .map(|c| {
                let base = c.map_or(level, |c| c.min(level));
                if left > 0 && c.map_or(true, |c| c > level) {
                    left -= 1;
                    base + 1
                } else {
                    base
                }
            })
            .collect(),
    )
}

/// Node of each global rank, given how many ranks each node holds.
/// More ranks than the nodes' max_slots allow, with each node's limit.
fn over_max(requested: u64, hard: &[Option<u64>]) -> MapError {
    MapError::OverMaxSlots {
        requested,
        limit: hard.iter().map(|h| h.unwrap_or(0)).sum(),
        per_node: NodeCounts(
            hard.iter()
                .enumerate()
                .map(|(i, h)| (NodeLabel { index: i as u32, name: None }, h.unwrap_or(0) as u32))
                .collect(),
        ),
    }
}

/// [`MapBy::Cycle`]: the node of each rank when node i takes `blocks[i]` consecutive ranks in
/// turn, wrapping around.
fn cycle_order(blocks: &[u64], total: usize) -> Vec<u32> {
    let mut order = Vec::with_capacity(total);
    while order.len() < total {
        for (node, &b) in blocks.iter().enumerate() {
            let n = (b as usize).min(total - order.len());
            order.extend(std::iter::repeat(node as u32).take(n));
        }
    }
    order
}

fn number_ranks(per_node: &[u64], rank_by: RankBy, total: usize) -> Vec<u32> {
    let mut order = Vec::with_capacity(total);
    match rank_by {
        RankBy::Slot => {
            for (node, &count) in per_node.iter().enumerate() {
                order.extend(std::iter::repeat(node as u32).take(count as usize));
            }
        }
        RankBy::Node => {
            // Nodes drop out of the rotation once full, so each round costs only the live nodes.
            let mut live: Vec<(u32, u64)> = per_node
                .iter()
                .enumerate()
                .filter(|(_, &c)| c > 0)
                .map(|(i, &c)| (i as u32, c))
                .collect();
            while !live.is_empty() {
                for (node, left) in live.iter_mut() {
                    order.push(*node);
                    *left -= 1;
                }
                live.retain(|&(_, left)| left > 0);
            }
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hydra_cycle_takes_blocks_in_turn_and_wraps_around() {
        let pol = |b| MapPolicy { map_by: MapBy::Cycle(b), rank_by: RankBy::Slot, oversubscribe: false };
        let map = compute_map(&[(1, None), (1, None)], &[Some(5)], &pol(None)).unwrap();
        assert_eq!((map.ranks_on(0), map.ranks_on(1)), (&[0, 2, 4][..], &[1, 3][..]));
        let map = compute_map(&[(8, None), (8, None)], &[Some(6)], &pol(Some(2))).unwrap();
        assert_eq!((map.ranks_on(0), map.ranks_on(1)), (&[0, 1, 4, 5][..], &[2, 3][..]));
        let map = compute_map(&[(2, None), (3, None)], &[None], &pol(None)).unwrap();
        assert_eq!((map.ranks_on(0), map.ranks_on(1)), (&[0, 1][..], &[2, 3, 4][..]));
        let e = compute_map(&[(1, Some(1))], &[Some(2)], &pol(None)).unwrap_err();
        assert!(matches!(e, MapError::OverMaxSlots { .. }), "{e}");
        assert_eq!(compute_map(&[(1, None)], &[Some(1)], &pol(Some(0))).unwrap_err(), MapError::ZeroPpr);
    }
    use proptest::prelude::*;

    const SLOT: MapPolicy = MapPolicy {
        map_by: MapBy::Slot,
        rank_by: RankBy::Slot,
        oversubscribe: false,
    };
    const NODE: MapPolicy = MapPolicy {
        map_by: MapBy::Node,
        rank_by: RankBy::Node,
        oversubscribe: false,
    };

    fn nodes_of(map: &ProcMap) -> Vec<u32> {
        map.ranks().iter().map(|p| p.node).collect()
    }

    fn uniform(n: usize, slots: u32) -> Vec<(u32, Option<u32>)> {
        vec![(slots, None); n]
    }

    /// MPICH's decoder (`MPIR_NODEMAP_populate_ids_from_mapping`), restated independently: parse
    /// the triples, then walk them repeatedly, later passes starting at the first triple that
    /// starts at node 0 once one has been seen.
    fn decode_mapping(text: &str, size: usize) -> Option<Vec<u32>> {
        let inner = text.strip_prefix("(vector,")?.strip_suffix(')')?;
        let mut triples = Vec::new();
        for part in inner.split("),") {
            let part = part.strip_prefix('(')?.trim_end_matches(')');
            let nums: Vec<u32> = part
                .split(',')
                .map(|x| x.parse().ok())
                .collect::<Option<_>>()?;
            let [s, c, p] = nums[..] else { return None };
            triples.push((s, c, p));
        }
        if triples.iter().any(|&(_, c, p)| c == 0 || p == 0) {
            return None; // MPICH would loop forever
        }
        let mut out = Vec::with_capacity(size);
        let mut wrapped = false;
        while out.len() < size {
            let first = if wrapped {
                triples.iter().position(|t| t.0 == 0)?
            } else {
                0
            };
            for &(s, c, p) in &triples[first..] {
                if s == 0 {
                    wrapped = true;
                }
                for node in s..s + c {
                    for _ in 0..p {
                        if out.len() == size {
                            return Some(out);
                        }
                        out.push(node);
                    }
                }
            }
        }
        Some(out)
    }

    #[test]
    fn parse_map_by() {
        assert_eq!("slot".parse::<MapBy>(), Ok(MapBy::Slot));
        assert_eq!(" NODE ".parse::<MapBy>(), Ok(MapBy::Node));
        assert_eq!("ppr:4:node".parse::<MapBy>(), Ok(MapBy::PprNode(4)));
        assert_eq!("PPR:2:Node".parse::<MapBy>(), Ok(MapBy::PprNode(2)));
        assert_eq!(
            "core".parse::<MapBy>().unwrap_err().to_string(),
            "unknown --map-by value 'core'; use slot, node or ppr:N:node"
        );
        assert_eq!(
            "ppr:4".parse::<MapBy>().unwrap_err().to_string(),
            "unknown --map-by value 'ppr:4'; use slot, node or ppr:N:node"
        );
        assert_eq!(
            "ppr:4:node:pe=2".parse::<MapBy>().unwrap_err().to_string(),
            "unknown --map-by value 'ppr:4:node:pe=2'; use slot, node or ppr:N:node"
        );
        assert_eq!(
            "ppr:2:socket".parse::<MapBy>().unwrap_err().to_string(),
            "unsupported --map-by 'ppr:2:socket': only ppr:N:node is supported, not sockets or cores"
        );
        for bad in ["ppr:0:node", "ppr:x:node", "ppr:+2:node", "ppr::node"] {
            assert_eq!(
                bad.parse::<MapBy>().unwrap_err().to_string(),
                format!(
                    "invalid count in --map-by '{bad}'; use ppr:N:node with N a whole number of at least 1"
                )
            );
        }
    }

    #[test]
    fn parse_rank_by() {
        assert_eq!("Slot".parse::<RankBy>(), Ok(RankBy::Slot));
        assert_eq!("node".parse::<RankBy>(), Ok(RankBy::Node));
        assert_eq!(
            "fill".parse::<RankBy>().unwrap_err().to_string(),
            "unknown --rank-by value 'fill'; use slot or node"
        );
    }

    #[test]
    fn display_round_trips() {
        for m in [MapBy::Slot, MapBy::Node, MapBy::PprNode(3)] {
            assert_eq!(m.to_string().parse::<MapBy>(), Ok(m));
        }
        for r in [RankBy::Slot, RankBy::Node] {
            assert_eq!(r.to_string().parse::<RankBy>(), Ok(r));
        }
    }

    #[test]
    fn by_slot_fills_nodes_in_order() {
        let map = compute_map(&uniform(2, 4), &[Some(6)], &SLOT).unwrap();
        assert_eq!(nodes_of(&map), [0, 0, 0, 0, 1, 1]);
        assert_eq!(map.ranks_on(1), [4, 5]);
        assert_eq!(
            map.rank(5),
            &RankPlace {
                node: 1,
                local_rank: 1,
                app: 0
            }
        );
        assert_eq!(map.num_nodes(), 2);
    }

    #[test]
    fn by_node_round_robin() {
        let map = compute_map(&uniform(3, 4), &[Some(7)], &NODE).unwrap();
        assert_eq!(nodes_of(&map), [0, 1, 2, 0, 1, 2, 0]);
        assert_eq!(map.ranks_on(0), [0, 3, 6]);
        assert_eq!(map.rank(6).local_rank, 2);
    }

    #[test]
    fn by_node_skips_full_nodes() {
        let map = compute_map(&[(1, None), (3, None), (2, None)], &[Some(6)], &NODE).unwrap();
        assert_eq!(nodes_of(&map), [0, 1, 2, 1, 2, 1]);
    }

    #[test]
    fn map_by_node_rank_by_slot_numbers_blocks() {
        let policy = MapPolicy {
            rank_by: RankBy::Slot,
            ..NODE
        };
        let map = compute_map(&uniform(3, 4), &[Some(7)], &policy).unwrap();
        assert_eq!(nodes_of(&map), [0, 0, 0, 1, 1, 2, 2]);
    }

    #[test]
    fn map_by_slot_rank_by_node_interleaves() {
        let policy = MapPolicy {
            rank_by: RankBy::Node,
            ..SLOT
        };
        let map = compute_map(&uniform(2, 4), &[Some(6)], &policy).unwrap();
        assert_eq!(nodes_of(&map), [0, 1, 0, 1, 0, 0]);
    }

    #[test]
    fn ppr_places_n_per_node() {
        let policy = MapPolicy {
            map_by: MapBy::PprNode(2),
            ..SLOT
        };
        let map = compute_map(&uniform(3, 4), &[None], &policy).unwrap();
        assert_eq!(nodes_of(&map), [0, 0, 1, 1, 2, 2]);
        let map = compute_map(&uniform(3, 4), &[Some(3)], &policy).unwrap();
        assert_eq!(nodes_of(&map), [0, 0, 1]);
        assert_eq!(map.ranks_on(2), [] as [u32; 0]);
    }

    #[test]
    fn ppr_errors() {
        let policy = MapPolicy {
            map_by: MapBy::PprNode(2),
            ..SLOT
        };
        assert_eq!(
            compute_map(&uniform(2, 4), &[Some(5)], &policy).unwrap_err().to_string(),
            "requested 5 ranks but ppr:2:node on 2 nodes places at most 4; raise N in ppr:N:node or add hosts"
        );
        let policy = MapPolicy {
            map_by: MapBy::PprNode(3),
            ..SLOT
        };
        assert_eq!(
            compute_map(&[(4, None), (2, None)], &[None], &policy).unwrap_err().to_string(),
            "ppr:3:node puts 3 ranks on node 1 which has 2 slots; use --oversubscribe, a smaller ppr or hosts with more slots"
        );
        let over = MapPolicy {
            oversubscribe: true,
            ..policy
        };
        assert_eq!(
            nodes_of(&compute_map(&[(4, None), (2, None)], &[None], &over).unwrap()),
            [0, 0, 0, 1, 1, 1]
        );
        assert_eq!(
            compute_map(&[(4, None), (2, Some(2))], &[None], &over).unwrap_err().to_string(),
            "ppr:3:node puts 3 ranks on node 1 but its max_slots is 2; use a smaller ppr or raise max_slots"
        );
        let zero = MapPolicy {
            map_by: MapBy::PprNode(0),
            ..SLOT
        };
        assert_eq!(
            compute_map(&uniform(2, 4), &[None], &zero)
                .unwrap_err()
                .to_string(),
            "ppr:0:node places no ranks; use ppr:N:node with N of at least 1"
        );
    }

    #[test]
    fn not_enough_slots_message() {
        assert_eq!(
            compute_map(&uniform(2, 4), &[Some(10)], &SLOT).unwrap_err().to_string(),
            "requested 10 ranks but only 8 slots were found (node 0: 4, node 1: 4); use --oversubscribe or more hosts"
        );
        let nodes: Vec<Node> = ["n1", "n2"]
            .iter()
            .map(|n| Node {
                name: n.to_string(),
                user: None,
                slots: 4,
                max_slots: None,
            })
            .collect();
        assert_eq!(
            compute_map_for_nodes(&nodes, &[AppRequest { np: Some(10), nodes: None }], &SLOT).unwrap_err().to_string(),
            "requested 10 ranks but only 8 slots were found (n1: 4, n2: 4); use --oversubscribe or more hosts"
        );
    }

    #[test]
    fn long_slot_lists_are_abbreviated() {
        assert_eq!(
            compute_map(&uniform(10, 1), &[Some(11)], &SLOT).unwrap_err().to_string(),
            "requested 11 ranks but only 10 slots were found (node 0: 1, node 1: 1, node 2: 1, node 3: 1, \
             node 4: 1, node 5: 1, node 6: 1, node 7: 1, and 2 more nodes); use --oversubscribe or more hosts"
        );
    }

    #[test]
    fn oversubscribe_spreads_extra_ranks() {
        let policy = MapPolicy {
            oversubscribe: true,
            ..SLOT
        };
        let map = compute_map(&[(4, None), (1, None), (1, None)], &[Some(9)], &policy).unwrap();
        // 6 slots, 3 extra: one more on each node.
        assert_eq!(nodes_of(&map), [0, 0, 0, 0, 0, 1, 1, 2, 2]);
    }

    #[test]
    fn oversubscribe_respects_max_slots() {
        let policy = MapPolicy {
            oversubscribe: true,
            ..SLOT
        };
        let map = compute_map(&[(2, Some(2)), (2, Some(5))], &[Some(7)], &policy).unwrap();
        assert_eq!(nodes_of(&map), [0, 0, 1, 1, 1, 1, 1]);
        assert_eq!(
            compute_map(&[(2, Some(2)), (2, Some(5))], &[Some(8)], &policy).unwrap_err().to_string(),
            "requested 8 ranks but max_slots allows only 7 (node 0: 2, node 1: 5); add hosts or raise max_slots"
        );
    }

    #[test]
    fn max_below_slots_caps_slots() {
        assert_eq!(
            compute_map(&[(4, Some(2))], &[Some(3)], &SLOT).unwrap_err().to_string(),
            "requested 3 ranks but only 2 slots were found (node 0: 2); use --oversubscribe or more hosts"
        );
    }

    #[test]
    fn mpmd_contexts_own_consecutive_ranges() {
        let map = compute_map(&uniform(2, 4), &[Some(3), None, Some(2)], &SLOT).unwrap();
        assert_eq!(map.size(), 8);
        assert_eq!(map.num_apps(), 3);
        assert_eq!(map.app_ranks(0), 0..3);
        assert_eq!(map.app_ranks(1), 3..6);
        assert_eq!(map.app_ranks(2), 6..8);
        assert_eq!(map.app_ranks(3), 8..8);
        assert_eq!(map.rank(3).app, 1);
        assert_eq!(map.rank(7).app, 2);
    }

    #[test]
    fn app_count_errors() {
        assert_eq!(
            compute_map(&uniform(1, 4), &[Some(1), Some(0)], &SLOT)
                .unwrap_err()
                .to_string(),
            "-np 0 for program 1; give -np 1 or more, or leave -np out to fill the free slots"
        );
        assert_eq!(
            compute_map(&uniform(1, 4), &[None, Some(1), None], &SLOT)
                .unwrap_err()
                .to_string(),
            "programs 0 and 2 both leave out -np; give -np to all but one of them"
        );
        assert_eq!(
            compute_map(&uniform(1, 4), &[Some(4), None], &SLOT).unwrap_err().to_string(),
            "program 1 has no -np and no slots are left for it (the others take 4 of 4); give it -np, \
             use --oversubscribe with -np, or add hosts"
        );
        assert_eq!(
            compute_map(&[], &[Some(1)], &SLOT).unwrap_err().to_string(),
            "no hosts to run on; give --host or --hostfile, or run inside a Slurm or PBS job"
        );
        assert_eq!(
            compute_map(&uniform(1, 4), &[], &SLOT)
                .unwrap_err()
                .to_string(),
            "no program to run; give a program after the options"
        );
    }

    #[test]
    fn huge_jobs_are_refused() {
        let policy = MapPolicy {
            oversubscribe: true,
            ..SLOT
        };
        assert_eq!(
            compute_map(&uniform(1, 1), &[Some(u32::MAX), Some(u32::MAX)], &policy)
                .unwrap_err()
                .to_string(),
            format!(
                "requested 8589934590 ranks; rlaunch runs at most {MAX_RANKS} ranks in one job"
            )
        );
    }

    #[test]
    fn open_count_uses_all_slots() {
        let map = compute_map(&[(3, None), (5, Some(4))], &[None], &SLOT).unwrap();
        assert_eq!(map.size(), 7);
    }

    #[test]
    fn pmi_mapping_examples() {
        let cyclic = compute_map(&uniform(4, 2), &[Some(8)], &NODE).unwrap();
        assert_eq!(
            cyclic.pmi_process_mapping().as_deref(),
            Some("(vector,(0,4,1))")
        );
        let block = compute_map(&uniform(2, 4), &[Some(8)], &SLOT).unwrap();
        assert_eq!(
            block.pmi_process_mapping().as_deref(),
            Some("(vector,(0,2,4))")
        );
        let uneven = compute_map(&[(3, None), (1, None), (2, None)], &[Some(6)], &SLOT).unwrap();
        assert_eq!(
            uneven.pmi_process_mapping().as_deref(),
            Some("(vector,(0,1,3),(1,1,1),(2,1,2))")
        );
        let partial = compute_map(&uniform(4, 2), &[Some(6)], &NODE).unwrap();
        assert_eq!(
            partial.pmi_process_mapping().as_deref(),
            Some("(vector,(0,4,1))")
        );
        let skip = compute_map(&[(1, None), (3, None)], &[Some(4)], &NODE).unwrap();
        assert_eq!(nodes_of(&skip), [0, 1, 1, 1]);
        assert_eq!(
            skip.pmi_process_mapping().as_deref(),
            Some("(vector,(0,1,1),(1,1,3))")
        );
        let trailing_empty = compute_map(&uniform(3, 4), &[Some(2)], &SLOT).unwrap();
        assert_eq!(
            trailing_empty.pmi_process_mapping().as_deref(),
            Some("(vector,(0,1,2))")
        );
    }

    #[test]
    fn pmi_mapping_omitted_with_empty_node_in_between() {
        let map = compute_map(&[(0, None), (2, None)], &[Some(2)], &SLOT).unwrap();
        assert_eq!(nodes_of(&map), [1, 1]);
        assert_eq!(map.pmi_process_mapping(), None);
    }

    #[test]
    fn pmi_mapping_spells_out_when_not_periodic() {
        let policy = MapPolicy {
            rank_by: RankBy::Node,
            ..SLOT
        };
        let map = compute_map(&[(3, None), (1, None)], &[Some(4)], &policy).unwrap();
        assert_eq!(nodes_of(&map), [0, 1, 0, 0]);
        assert_eq!(
            map.pmi_process_mapping().as_deref(),
            Some("(vector,(0,2,1),(0,1,2))")
        );
        assert_eq!(
            decode_mapping("(vector,(0,2,1),(0,1,2))", 4).unwrap(),
            [0, 1, 0, 0]
        );
    }

    #[test]
    fn large_maps_stay_fast() {
        // Quadratic period search or dealing would take minutes here.
        let map = compute_map(&uniform(1000, 1000), &[Some(1_000_000)], &NODE).unwrap();
        assert_eq!(map.pmi_process_mapping().as_deref(), Some("(vector,(0,1000,1))"));
        let policy = MapPolicy { rank_by: RankBy::Node, ..SLOT };
        let lopsided = compute_map(&[(1_000_000, None), (1, None)], &[None], &policy).unwrap();
        assert_eq!(lopsided.pmi_process_mapping().as_deref(), Some("(vector,(0,2,1),(0,1,999999))"));
    }

    #[test]
    fn round_robin_matches_dealing_one_by_one() {
        let caps = [Some(1), None, Some(3), Some(0), Some(2)];
        for amount in 0..12u64 {
            let mut dealt = vec![0u64; caps.len()];
            let mut left = amount;
            while left > 0 {
                for (i, cap) in caps.iter().enumerate() {
                    if left > 0 && cap.map_or(true, |c| dealt[i] < c) {
                        dealt[i] += 1;
                        left -= 1;
                    }
                }
            }
            assert_eq!(round_robin(amount, &caps), Some(dealt), "amount {amount}");
        }
        assert_eq!(round_robin(4, &[Some(1), Some(2)]), None);
        assert_eq!(round_robin(3, &[Some(0)]), None);
    }

    /// Reference for map-by node counts: deal ranks one at a time, first within slots, then
    /// (oversubscribed) within max_slots.
    fn dealt_by_node(slots: &[(u32, Option<u32>)], total: u64) -> Vec<u64> {
        let soft: Vec<u64> = slots
            .iter()
            .map(|&(s, m)| u64::from(m.map_or(s, |m| s.min(m))))
            .collect();
        let mut per = vec![0u64; slots.len()];
        let mut left = total;
        let mut progress = true;
        while left > 0 && progress {
            progress = false;
            for i in 0..slots.len() {
                if left > 0 && per[i] < soft[i] {
                    per[i] += 1;
                    left -= 1;
                    progress = true;
                }
            }
        }
        while left > 0 {
            for i in 0..slots.len() {
                if left > 0 && slots[i].1.map_or(true, |m| per[i] < u64::from(m)) {
                    per[i] += 1;
                    left -= 1;
                }
            }
        }
        per
    }

    fn arb_nodes() -> impl Strategy<Value = Vec<(u32, Option<u32>)>> {
        prop::collection::vec(
            (0u32..6, prop::option::of(0u32..10))
                .prop_map(|(s, m)| (s, m.map(|m| m.max(s.min(3))))),
            1..7,
        )
    }

    fn arb_apps() -> impl Strategy<Value = Vec<Option<u32>>> {
        (
            prop::collection::vec(1u32..12, 1..4),
            prop::option::of(0usize..4),
        )
            .prop_map(|(mut np, open)| {
                let mut apps: Vec<Option<u32>> = np.drain(..).map(Some).collect();
                if let Some(i) = open {
                    let i = i % apps.len();
                    apps[i] = None;
                }
                apps
            })
    }

    fn arb_policy() -> impl Strategy<Value = MapPolicy> {
        (
            prop_oneof![
                Just(MapBy::Slot),
                Just(MapBy::Node),
                (1u32..5).prop_map(MapBy::PprNode)
            ],
            prop_oneof![Just(RankBy::Slot), Just(RankBy::Node)],
            any::<bool>(),
        )
            .prop_map(|(map_by, rank_by, oversubscribe)| MapPolicy {
                map_by,
                rank_by,
                oversubscribe,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn map_invariants(slots in arb_nodes(), apps in arb_apps(), policy in arb_policy()) {
            let result = compute_map(&slots, &apps, &policy);
            prop_assert_eq!(&result, &compute_map(&slots, &apps, &policy), "not deterministic");
            let Ok(map) = result else { return Ok(()) };
            let size = map.size() as usize;
            prop_assert_eq!(map.num_nodes() as usize, slots.len());

            // Every rank exactly once; local ranks 0..k-1 in global order.
            let mut seen = vec![false; size];
            for node in 0..map.num_nodes() {
                let on = map.ranks_on(node);
                prop_assert!(on.windows(2).all(|w| w[0] < w[1]));
                for (local, &r) in on.iter().enumerate() {
                    prop_assert!(!seen[r as usize]);
                    seen[r as usize] = true;
                    prop_assert_eq!(map.rank(r).node, node);
                    prop_assert_eq!(map.rank(r).local_rank as usize, local);
                }
                let (s, m) = slots[node as usize];
                let soft = m.map_or(s, |m| s.min(m));
                if !policy.oversubscribe {
                    prop_assert!(on.len() as u32 <= soft, "node {} over its slots", node);
                }
                if let Some(m) = m {
                    prop_assert!(on.len() as u32 <= m, "node {} over max_slots", node);
                }
                if let MapBy::PprNode(n) = policy.map_by {
                    prop_assert!(on.len() as u32 <= n);
                }
            }
            prop_assert!(seen.iter().all(|&s| s));

            // Contexts own consecutive ranges that tile 0..size, with the requested sizes.
            let mut next = 0;
            for (a, np) in apps.iter().enumerate() {
                let range = map.app_ranks(a as u32);
                prop_assert_eq!(range.start, next);
                if let Some(np) = np {
                    prop_assert_eq!(range.end - range.start, *np);
                }
                for r in range.clone() {
                    prop_assert_eq!(map.rank(r).app as usize, a);
                }
                next = range.end;
            }
            prop_assert_eq!(next as usize, size);

            // map-by node deals ranks round-robin.
            let counts: Vec<u64> = (0..map.num_nodes()).map(|n| map.ranks_on(n).len() as u64).collect();
            if policy.map_by == MapBy::Node {
                prop_assert_eq!(&counts, &dealt_by_node(&slots, size as u64));
            }
            // rank-by node numbers round-robin over the nodes that still have ranks.
            if policy.rank_by == RankBy::Node {
                let mut left = counts.clone();
                let mut expected = Vec::new();
                while left.iter().any(|&c| c > 0) {
                    for (i, c) in left.iter_mut().enumerate() {
                        if *c > 0 { *c -= 1; expected.push(i as u32); }
                    }
                }
                prop_assert_eq!(nodes_of(&map), expected);
            } else {
                prop_assert!(nodes_of(&map).windows(2).all(|w| w[0] <= w[1]));
            }

            // The PMI mapping, when given, decodes to exactly this map.
            if let Some(text) = map.pmi_process_mapping() {
                prop_assert_eq!(decode_mapping(&text, size), Some(nodes_of(&map)), "{}", text);
            } else {
                let first_empty = counts.iter().position(|&c| c == 0).unwrap_or(counts.len());
                prop_assert!(counts[first_empty..].iter().any(|&c| c > 0), "mapping omitted needlessly");
            }
        }

        #[test]
        fn map_fails_only_when_it_must(slots in arb_nodes(), np in 1u32..40, policy in arb_policy()) {
            let soft: u64 = slots.iter().map(|&(s, m)| u64::from(m.map_or(s, |m| s.min(m)))).sum();
            let result = compute_map(&slots, &[Some(np)], &policy);
            let np = u64::from(np);
            let fits = match policy.map_by {
                MapBy::PprNode(n) => {
                    np <= u64::from(n) * slots.len() as u64 && {
                        let per = fill_in_order(np, &vec![u64::from(n); slots.len()]);
                        per.iter().zip(&slots).all(|(&c, &(s, m))| {
                            m.map_or(true, |m| c <= u64::from(m))
                                && (policy.oversubscribe || c <= u64::from(m.map_or(s, |m| s.min(m))))
                        })
                    }
                }
                _ => np <= soft
                    || (policy.oversubscribe
                        && (slots.iter().any(|s| s.1.is_none())
                            || np <= slots.iter().map(|s| u64::from(s.1.unwrap_or(0))).sum::<u64>())),
            };
            prop_assert_eq!(result.is_ok(), fits, "{:?}", result);
        }

        #[test]
        fn mapping_of_any_sequence_decodes(seq in prop::collection::vec(0u32..4, 1..40)) {
            // Maps compute_map never makes (arbitrary interleavings) still encode exactly.
            let nodes = 4;
            let mut by_node = vec![Vec::new(); nodes];
            let ranks: Vec<RankPlace> = seq.iter().enumerate().map(|(r, &n)| {
                by_node[n as usize].push(r as u32);
                RankPlace { node: n, local_rank: by_node[n as usize].len() as u32 - 1, app: 0 }
            }).collect();
            let map = ProcMap { ranks, by_node, app_starts: vec![0, seq.len() as u32] };
            if let Some(text) = map.pmi_process_mapping() {
                prop_assert_eq!(decode_mapping(&text, seq.len()), Some(seq.clone()), "{}", text);
            }
        }
    }

    fn app(np: Option<u32>, nodes: Option<&[u32]>) -> AppRequest {
        AppRequest { np, nodes: nodes.map(<[u32]>::to_vec) }
    }

    #[test]
    fn contexts_with_their_own_nodes_fill_only_those() {
        let slots = [(2, None), (2, None), (4, None)];
        let pol = MapPolicy::default();
        let m = compute_map_apps(&slots, &[app(Some(1), Some(&[0])), app(Some(3), Some(&[1, 2]))], &pol).unwrap();
        assert_eq!(nodes_of(&m), [0, 1, 1, 2]);
        assert_eq!((m.app_ranks(0), m.app_ranks(1)), (0..1, 1..4));
        // Slots are shared: the second context gets what the first left on node 0.
        let m = compute_map_apps(&slots, &[app(Some(1), Some(&[0])), app(None, Some(&[0]))], &pol).unwrap();
        assert_eq!(nodes_of(&m), [0, 0]);
        assert_eq!(m.rank(1).local_rank, 1);
        let e = compute_map_apps(&slots, &[app(Some(2), Some(&[0])), app(Some(1), Some(&[0]))], &pol).unwrap_err();
        assert_eq!(
            e.with_node_names(&["a".into(), "b".into(), "c".into()]).to_string(),
            "program 1 asks for 1 ranks but its hosts have 0 free slots (a: 0); use --oversubscribe, give it more hosts or lower -np"
        );
        let over = MapPolicy { oversubscribe: true, ..pol };
        let m = compute_map_apps(&slots, &[app(Some(2), Some(&[0])), app(Some(3), Some(&[0, 1]))], &over).unwrap();
        assert_eq!(nodes_of(&m), [0, 0, 0, 1, 1]);
        // A context without its own nodes uses every node's free slots.
        let m = compute_map_apps(&slots, &[app(Some(1), Some(&[2])), app(None, None)], &pol).unwrap();
        assert_eq!(m.size(), 8);
        assert_eq!(m.ranks_on(2).len(), 4);
        let by_node = MapPolicy { map_by: MapBy::Node, rank_by: RankBy::Node, oversubscribe: false };
        let m = compute_map_apps(&slots, &[app(Some(3), Some(&[1, 2]))], &by_node).unwrap();
        assert_eq!(nodes_of(&m), [1, 2, 1]);
        assert_eq!(
            compute_map_apps(&slots, &[app(Some(1), Some(&[7]))], &pol).unwrap_err().to_string(),
            "program 0's host list names node 7, which is not in the job"
        );
    }

    #[test]
    fn seq_places_each_rank_on_its_line() {
        let slots = [(3, None), (1, None)];
        let seq = MapPolicy { map_by: MapBy::Seq, ..MapPolicy::default() };
        let m = compute_map_apps(&slots, &[app(None, Some(&[0, 1, 0]))], &seq).unwrap();
        assert_eq!(nodes_of(&m), [0, 1, 0]);
        assert_eq!(m.ranks().iter().map(|p| p.local_rank).collect::<Vec<_>>(), [0, 0, 1]);
        let m = compute_map_apps(&slots, &[app(Some(1), Some(&[1])), app(Some(2), Some(&[0, 0]))], &seq).unwrap();
        assert_eq!(nodes_of(&m), [1, 0, 0]);
        assert_eq!(
            compute_map_apps(&slots, &[app(Some(4), Some(&[0, 1, 0]))], &seq).unwrap_err().to_string(),
            "--map-by seq: program 0 asks for 4 ranks but its host list has 3 entries; list one host per rank or lower -np"
        );
        assert_eq!(
            compute_map(&slots, &[Some(1)], &seq).unwrap_err().to_string(),
            "--map-by seq: program 0 has no host list; seq needs a host file or --host list"
        );
    }

    proptest::proptest! {
        #[test]
        fn without_own_nodes_it_is_compute_map(slots in proptest::collection::vec(1u32..5, 1..6), np in 1u32..20, by_node: bool) {
            let s: Vec<(u32, Option<u32>)> = slots.iter().map(|&x| (x, None)).collect();
            let pol = MapPolicy { map_by: if by_node { MapBy::Node } else { MapBy::Slot }, rank_by: RankBy::Slot, oversubscribe: true };
            let a = compute_map(&s, &[Some(np)], &pol).unwrap();
            // The same request through the per-context path: every node listed.
            let all: Vec<u32> = (0..s.len() as u32).collect();
            let b = compute_map_apps(&s, &[app(Some(np), Some(&all))], &pol).unwrap();
            proptest::prop_assert_eq!(a.ranks_on(0).len() <= b.ranks_on(0).len() + s.len(), true);
            proptest::prop_assert_eq!(b.size(), np);
            let within: u32 = slots.iter().sum();
            if np <= within && !by_node {
                proptest::prop_assert_eq!(nodes_of(&a), nodes_of(&b));
            }
        }
    }

    #[test]
    fn spares_get_no_ranks_and_the_rest_is_mapped_as_without_them() {
        let slots = uniform(4, 2);
        let pol = MapPolicy::default();
        let m = compute_map_with_spares(&slots, &[app(Some(6), None)], &pol, 1).unwrap();
        assert_eq!(m.num_nodes(), 4);
        assert_eq!(nodes_of(&m), [0, 0, 1, 1, 2, 2]);
        assert!(m.ranks_on(3).is_empty());
        assert_eq!(
            compute_map_with_spares(&slots, &[app(Some(7), None)], &pol, 1).unwrap_err().to_string(),
            "requested 7 ranks but only 6 slots were found (node 0: 2, node 1: 2, node 2: 2); use --oversubscribe or more hosts"
        );
        assert_eq!(
            compute_map_with_spares(&slots, &[app(Some(1), None)], &pol, 4).unwrap_err().to_string(),
            "--spare 4 keeps 4 of the job's 4 nodes as spares and leaves none for ranks; give more hosts or a smaller --spare"
        );
        assert_eq!(compute_map_with_spares(&slots, &[app(Some(8), None)], &pol, 0).unwrap().size(), 8);
    }

    proptest::proptest! {
        /// Spares never get a rank, and the working nodes get what they get without spares.
        #[test]
        fn spares_are_excluded(slots in arb_nodes(), apps in arb_apps(), policy in arb_policy(), spares in 0u32..4) {
            let reqs: Vec<AppRequest> = apps.iter().map(|&np| app(np, None)).collect();
            let with = compute_map_with_spares(&slots, &reqs, &policy, spares);
            if spares as usize >= slots.len() && spares > 0 {
                let refused = matches!(with, Err(MapError::NoNodesBesideSpares { .. }));
                proptest::prop_assert!(refused);
                return Ok(());
            }
            let working = slots.len() - spares as usize;
            let without = compute_map_apps(&slots[..working], &reqs, &policy);
            match (with, without) {
                (Ok(a), Ok(b)) => {
                    proptest::prop_assert_eq!(a.num_nodes() as usize, slots.len());
                    proptest::prop_assert_eq!(a.ranks(), b.ranks());
                    for s in working..slots.len() {
                        proptest::prop_assert!(a.ranks_on(s as u32).is_empty());
                    }
                }
                (Err(a), Err(b)) => proptest::prop_assert_eq!(a, b),
                (a, b) => proptest::prop_assert!(false, "{:?} vs {:?}", a.map(|m| m.size()), b.map(|m| m.size())),
            }
        }
    }

    #[test]
    fn lost_ranks_go_to_free_slots_in_node_order() {
        // 4 nodes of 3 slots, node 3 a spare.
        let slots = uniform(4, 3);
        let map = compute_map_with_spares(&slots, &[app(Some(7), None)], &MapPolicy::default(), 1).unwrap();
        assert_eq!(nodes_of(&map), [0, 0, 0, 1, 1, 1, 2]);
        assert!(relocate(&map, &slots, &[0], &[], 1).is_none(), "node 2 has two free slots for three ranks; the spare is not used");
        let map = compute_map_with_spares(&slots, &[app(Some(5), None)], &MapPolicy::default(), 1).unwrap();
        assert_eq!(nodes_of(&map), [0, 0, 0, 1, 1]);
        let moved = relocate(&map, &slots, &[0], &[], 1).unwrap();
        assert_eq!(nodes_of(&moved), [1, 2, 2, 1, 1]);
        assert_eq!(moved.ranks_on(1), &[0, 3, 4]);
        assert_eq!(moved.rank(0).local_rank, 0, "local ranks follow global order on the new node");
        assert!(relocate(&map, &slots, &[0, 1], &[], 1).is_none(), "node 2 alone cannot take five ranks");
        assert_eq!(nodes_of(&relocate(&map, &slots, &[0], &[1], 1).unwrap()), [2, 2, 2, 1, 1], "a closed node takes none");
    }

    proptest::proptest! {
        /// Only the lost node's ranks move; they go to working nodes that are not lost and not
        /// spares, no node gets more than its slots (unless it had them already), and `None`
        /// only when the free slots are too few.
        #[test]
        fn relocation_moves_only_lost_ranks_into_free_slots(slots in proptest::collection::vec(1u32..5, 2..7), np in 1u32..20, lost in 0u32..7, spares in 0u32..2) {
            let s: Vec<(u32, Option<u32>)> = slots.iter().map(|&x| (x, None)).collect();
            let Ok(map) = compute_map_with_spares(&s, &[app(Some(np), None)], &MapPolicy::default(), spares) else { return Ok(()) };
            let lost = lost % s.len() as u32;
            let working = s.len() - spares as usize;
            match relocate(&map, &s, &[lost], &[], spares) {
                Some(moved) => {
                    proptest::prop_assert_eq!(moved.size(), map.size());
                    for r in 0..map.size() {
                        let (a, b) = (map.rank(r).node, moved.rank(r).node);
                        if a == lost {
                            proptest::prop_assert!(b != lost && (b as usize) < working);
                        } else {
                            proptest::prop_assert_eq!(a, b);
                        }
                    }
                    for n in 0..moved.num_nodes() {
                        let had = map.ranks_on(n).len();
                        proptest::prop_assert!(moved.ranks_on(n).len() <= had.max(slots[n as usize] as usize));
                    }
                    proptest::prop_assert!(moved.ranks_on(lost).is_empty());
                }
                None => {
                    let free: u64 = (0..working as u32).filter(|&n| n != lost).map(|n| u64::from(slots[n as usize]).saturating_sub(map.ranks_on(n).len() as u64)).sum();
                    proptest::prop_assert!(free < map.ranks_on(lost).len() as u64);
                }
            }
        }
    }
}
