//! The placement engine: a node's [`Topology`], a [`Policy`] and the ranks that run on the node give
//! every rank its CPUs, GPUs and NIC. Pure: every daemon and the front end compute the same answer
//! from the same inputs, so the front end can show bindings before anything starts.
//!
//! The grammar and the defaults are Open MPI's (PRRTE's `--map-by`/`--bind-to`), with Hydra's
//! spellings where they differ:
//!
//! - The unit is a core (its usable hardware threads), or a hardware thread with
//!   `--use-hwthread-cpus` / `--map-by hwthread` / `:HWTCPUS`. Each rank takes `PE` units (1).
//! - `--map-by slot|node|core|hwthread` takes units in logical order; `l3cache|numa|package`
//!   (`socket`) deals ranks round-robin over those objects; `ppr:N:obj` puts N ranks on each object
//!   in turn (object-major). `:span` only changes how ranks spread over nodes (evenly, numbered node by node: see the
//!   binary's resolve), not inside one.
//!   `--rank-by OBJ` hands the mapped places to the ranks round-robin over those objects.
//! - `--bind-to` widens a rank's units to the objects containing them. The default is core (the
//!   rank's units) when the node's ranks fit its units, otherwise none, as Open MPI does; `PE=n`
//!   alone binds each rank to its n units.
//! - A bind to cores or threads with more ranks than units is an error when asked for explicitly;
//!   `--bind-to l3cache|numa|package` lets ranks share an object.
//! - GPUs: each rank gets `gpus_per_rank` GPUs, least used first, then nearest (same NUMA node as
//!   its CPUs, then sharing local CPUs), then in PCI order; so none is shared while enough exist.
//! - NIC: among the candidates the fabric layer found usable, the nearest to the rank's GPUs (or its
//!   CPUs when it has none), spread round-robin among equally near ones.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::cpuset::CpuSet;
use crate::topology::{ObjKind, Topology};

/// Where `--map-by` puts ranks inside a node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MapObj {
    /// `slot` and `node`: inside a node both take units in order.
    #[default]
    Slot,
    HwThread,
    Core,
    L3,
    Numa,
    Package,
    /// `ppr:N:obj`: N ranks per object.
    Ppr(u32, ObjKind),
}

/// The parsed `--map-by` value: inside-node object and the modifiers placement uses.
/// `oversubscribe` is the node-level modifier, parsed here so there is one grammar.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapPolicy {
    pub obj: MapObj,
    /// The text before the modifiers named `node` (round-robin over nodes) rather than a slot.
    pub by_node: bool,
    pub pe: Option<u32>,
    pub span: bool,
    pub hwtcpus: bool,
    pub oversubscribe: Option<bool>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("unknown --map-by object '{0}'; use slot, node, hwthread, core, l3cache, numa, package (socket) or ppr:N:OBJ")]
    MapObject(String),
    #[error("ppr:{0}: expected ppr:N:OBJ with N a whole number of at least 1 and OBJ one of node, package (socket), numa, l3cache, core, hwthread")]
    Ppr(String),
    #[error("PE={0}: expected a whole number of CPUs of at least 1")]
    Pe(String),
    #[error("unknown --map-by modifier '{0}'; rlaunch knows PE=n, SPAN, OVERSUBSCRIBE, NOOVERSUBSCRIBE and HWTCPUS")]
    Modifier(String),
    #[error("unknown --bind-to value '{0}'; use none, hwthread, core, l3cache, numa, package (socket) or user:CPUS,CPUS (Hydra, '+' joins CPUs)")]
    BindTo(String),
    #[error("--bind-to user:{0}: expected CPU lists like 0+1,2+3 or 0-3,4-7 separated by ','")]
    UserList(String),
}

fn obj_kind(s: &str) -> Option<ObjKind> {
    Some(match s.to_ascii_lowercase().as_str() {
        "hwthread" => ObjKind::HwThread,
        "core" => ObjKind::Core,
        "l3cache" => ObjKind::L3,
        "numa" => ObjKind::Numa,
        "package" | "socket" => ObjKind::Package,
        "node" => ObjKind::Node,
        _ => return None,
    })
}

impl FromStr for MapPolicy {
    type Err = PolicyError;
    /// Open MPI's `OBJ[:MOD...]` or `ppr:N:OBJ[:MOD...]`; modifiers alone (`:PE=2`) map by slot.
    fn from_str(s: &str) -> Result<Self, PolicyError> {
        let mut m = MapPolicy::default();
        let mut parts = s.split(':').peekable();
        let head = parts.peek().copied().unwrap_or("");
        if head.eq_ignore_ascii_case("ppr") {
            parts.next();
            let n = parts.next().unwrap_or("");
            let o = parts.next().unwrap_or("");
            let n = n.parse::<u32>().ok().filter(|n| *n >= 1);
            match (n, obj_kind(o)) {
                (Some(n), Some(kind)) => m.obj = MapObj::Ppr(n, kind),
                _ => return Err(PolicyError::Ppr(s.get(4..).unwrap_or("").to_string())),
            }
        } else if !head.contains('=') && !is_modifier(head) {
            parts.next();
            m.obj = match head.to_ascii_lowercase().as_str() {
                "" | "slot" | "by-slot" => MapObj::Slot,
                "node" => {
                    m.by_node = true;
                    MapObj::Slot
                }
                "hwthread" => MapObj::HwThread,
                "core" => MapObj::Core,
                "l3cache" => MapObj::L3,
                "numa" => MapObj::Numa,
                "package" | "socket" => MapObj::Package,
                _ => return Err(PolicyError::MapObject(head.to_string())),
            };
        }
        for part in parts {
            let upper = part.to_ascii_uppercase();
            match upper.as_str() {
                "" => {}
                "SPAN" => m.span = true,
                "OVERSUBSCRIBE" => m.oversubscribe = Some(true),
                "NOOVERSUBSCRIBE" => m.oversubscribe = Some(false),
                "HWTCPUS" => m.hwtcpus = true,
                _ if upper.starts_with("PE=") => {
                    let v = &part[3..];
                    m.pe = Some(v.parse::<u32>().ok().filter(|n| *n >= 1).ok_or_else(|| PolicyError::Pe(v.to_string()))?);
                }
                _ => return Err(PolicyError::Modifier(part.to_string())),
            }
        }
        Ok(m)
    }
}

fn is_modifier(s: &str) -> bool {
    ["SPAN", "OVERSUBSCRIBE", "NOOVERSUBSCRIBE", "HWTCPUS"].iter().any(|m| s.eq_ignore_ascii_case(m))
}

/// `--bind-to`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BindTo {
    None,
    HwThread,
    Core,
    L3,
    Numa,
    Package,
    /// Hydra's `user:0+1,2+3`: rank i of the node gets list `i mod len`.
    Cpus(Vec<CpuSet>),
}

impl FromStr for BindTo {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, PolicyError> {
        if let Some(list) = s.strip_prefix("user:") {
            let sets: Option<Vec<CpuSet>> = list
                .split(',')
                .map(|e| CpuSet::parse_list(&e.replace('+', ",")).filter(|s| !s.is_empty()))
                .collect();
            return sets.filter(|v| !v.is_empty()).map(BindTo::Cpus).ok_or_else(|| PolicyError::UserList(list.to_string()));
        }
        match obj_kind(s) {
            _ if s.eq_ignore_ascii_case("none") => Ok(BindTo::None),
            Some(ObjKind::HwThread) => Ok(BindTo::HwThread),
            Some(ObjKind::Core) => Ok(BindTo::Core),
            Some(ObjKind::L3) => Ok(BindTo::L3),
            Some(ObjKind::Numa) => Ok(BindTo::Numa),
            Some(ObjKind::Package) => Ok(BindTo::Package),
            _ => Err(PolicyError::BindTo(s.to_string())),
        }
    }
}

impl fmt::Display for BindTo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindTo::None => f.write_str("none"),
            BindTo::HwThread => f.write_str("hwthread"),
            BindTo::Core => f.write_str("core"),
            BindTo::L3 => f.write_str("l3cache"),
            BindTo::Numa => f.write_str("numa"),
            BindTo::Package => f.write_str("package"),
            BindTo::Cpus(v) => {
                let parts: Vec<String> = v.iter().map(|s| s.to_string().replace(',', "+")).collect();
                write!(f, "user:{}", parts.join(","))
            }
        }
    }
}

/// Everything placement needs from the command line; travels in the launch message.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub map: MapPolicy,
    /// `None`: Open MPI's default (see the module documentation).
    pub bind: Option<BindTo>,
    /// `--use-hwthread-cpus`: hardware threads are the unit.
    pub hwthreads: bool,
    pub gpus_per_rank: u32,
    /// `--gpu-bind list:G:G...` (Cray PALS, Slurm): local rank i gets the GPUs of list
    /// `i mod len`, numbered as the node lists them; empty: `gpus_per_rank` decides.
    pub gpu_lists: Vec<Vec<u32>>,
    /// Open MPI's `--rankfile`: the CPUs of each listed global rank (`slot=`); non-empty means
    /// every rank of the node has its own entry.
    pub rank_slots: Vec<(u32, Slot)>,
    /// Open MPI's `--bind-to X:overload-allowed`: more ranks than units share them (bound in
    /// turn) instead of being refused.
    pub overload: bool,
    /// `--bind-to X:if-supported`: a binding the node cannot give leaves the ranks unbound
    /// instead of being refused.
    pub if_supported: bool,
    /// `--rank-by OBJ` inside a node: the node's ranks, in order, take the mapped places
    /// round-robin over those objects (None: in mapping order, Open MPI's `slot`).
    pub rank_by: Option<ObjKind>,
}

/// A rank file's `slot=`: CPUs as the kernel numbers them (`slot=0-3`), or cores of packages in
/// logical order (`slot=1:0-2`, `slot=0:0-1,1:0-1`: Open MPI's socket:core).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Slot {
    Cpus(CpuSet),
    /// `(package, its cores)` groups.
    Cores(Vec<(u32, Vec<u32>)>),
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Slot::Cpus(c) => write!(f, "slot={c}"),
            Slot::Cores(groups) => {
                let g: Vec<String> = groups.iter().map(|(p, c)| format!("{p}:{}", c.iter().map(u32::to_string).collect::<Vec<_>>().join(","))).collect();
                write!(f, "slot={}", g.join(","))
            }
        }
    }
}

/// One rank's place on its node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RankPlace {
    pub rank: u32,
    /// The CPUs it may run on; the node's universe when unbound.
    pub cpus: CpuSet,
    /// Whether to set its affinity at all (unbound ranks inherit the daemon's).
    pub bound: bool,
    /// Indices into [`Topology::gpus`].
    pub gpus: Vec<usize>,
    /// Index into the NIC candidates given to [`place`].
    pub nic: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlaceError {
    #[error("PE={pe} asks for {pe} {unit}s per rank, but no {obj} here has more than {most} usable {unit}s; use PE={most} or less")]
    PeTooLarge { pe: u32, unit: &'static str, obj: &'static str, most: usize },
    #[error("{ranks} ranks {why} need {need} {unit}s, but only {have} are usable here (CPUs {allowed}); use --bind-to none, fewer ranks per node or more nodes")]
    TooFewCpus { ranks: usize, why: String, need: usize, unit: &'static str, have: usize, allowed: CpuSet },
    #[error("{ranks} ranks on this node, but ppr:{n}:{obj} allows {n} on each of its {count} {obj} objects ({max}); use fewer ranks per node or a larger N")]
    PprTooMany { ranks: usize, n: u32, obj: &'static str, count: usize, max: usize },
    #[error("ppr:{n}:{obj} {why} needs {n}x{pe} {unit}s in each {obj}, but one has only {have}; use --bind-to none, a smaller N or PE")]
    PprTooFewCpus { n: u32, pe: usize, obj: &'static str, unit: &'static str, have: usize, why: String },
    #[error("--gpus-per-rank {want}: this node has no GPU (no NVIDIA, AMD or Intel display device under /sys/bus/pci)")]
    NoGpus { want: u32 },
    #[error("--gpus-per-rank {want}: this node has only {have} GPU(s); use --gpus-per-rank {have} or less")]
    TooFewGpus { want: u32, have: usize },
    #[error("--rankfile: rank {rank} is on this node but has no line in the rank file")]
    NoSlot { rank: u32 },
    #[error("--rankfile: rank {rank} {slot}: this node has no package {package} (it has {have}); use 0 to {have} - 1")]
    NoPackage { rank: u32, slot: Slot, package: u32, have: usize },
    #[error("--rankfile: rank {rank} {slot}: package {package} has only {have} cores")]
    NoCore { rank: u32, slot: Slot, package: u32, have: usize },
    #[error("--gpu-bind: GPU {gpu} is not on this node, which has {have} GPU(s), numbered from 0; list GPUs it has")]
    NoSuchGpu { gpu: u32, have: usize },
    #[error("rank {rank}: --bind-to {given} includes CPUs {outside}, outside those rlaunch may use here ({allowed}); pick CPUs from that list")]
    CpusOutside { rank: u32, given: BindTo, outside: CpuSet, allowed: CpuSet },
}

/// Gives each rank of the node (`ranks`, in local-rank order) its CPUs, GPUs and one of `nics`
/// (the usable NICs' names, in the fabric layer's order).
pub fn place(topo: &Topology, policy: &Policy, ranks: &[u32], nics: &[&str]) -> Result<Vec<RankPlace>, PlaceError> {
    let placed = match &policy.bind {
        _ if !policy.rank_slots.is_empty() => rank_file(topo, &policy.rank_slots, ranks),
        Some(BindTo::Cpus(lists)) => user_lists(topo, lists, ranks),
        _ => map_and_bind(topo, policy, ranks),
    };
    let mut out = match placed {
        // overload-allowed: as many ranks as fit, bound, then the next as many on the same units.
        Err(PlaceError::TooFewCpus { ranks: n, need, have, .. }) if policy.overload && have > 0 && need > 0 => {
            let fit = (have * n / need).max(1);
            let mut out = Vec::with_capacity(ranks.len());
            for chunk in ranks.chunks(fit) {
                out.extend(map_and_bind(topo, policy, chunk)?);
            }
            out
        }
        Err(_) if policy.if_supported => {
            ranks.iter().map(|&rank| RankPlace { rank, cpus: topo.universe.clone(), bound: false, gpus: Vec::new(), nic: None }).collect()
        }
        r => r?,
    };
    if policy.gpu_lists.is_empty() {
        assign_gpus(topo, policy.gpus_per_rank, &mut out)?;
    } else {
        listed_gpus(topo, &policy.gpu_lists, &mut out)?;
    }
    assign_nics(topo, nics, &mut out);
    Ok(out)
}

fn user_lists(topo: &Topology, lists: &[CpuSet], ranks: &[u32]) -> Result<Vec<RankPlace>, PlaceError> {
    let given = BindTo::Cpus(lists.to_vec());
    ranks
        .iter()
        .enumerate()
        .map(|(i, &rank)| {
            let cpus = lists[i % lists.len()].clone();
            let outside = cpus.difference(&topo.universe);
            if !outside.is_empty() {
                return Err(PlaceError::CpusOutside { rank, given: given.clone(), outside, allowed: topo.universe.clone() });
            }
            Ok(RankPlace { rank, cpus, bound: true, gpus: Vec::new(), nic: None })
        })
        .collect()
}

/// `--rankfile`: each rank on the CPUs of its own line.
fn rank_file(topo: &Topology, slots: &[(u32, Slot)], ranks: &[u32]) -> Result<Vec<RankPlace>, PlaceError> {
    let packages = topo.objects(ObjKind::Package);
    ranks
        .iter()
        .map(|&rank| {
            let slot = slots.iter().find(|(r, _)| *r == rank).map(|(_, s)| s).ok_or(PlaceError::NoSlot { rank })?;
            let cpus = match slot {
                Slot::Cpus(c) => c.clone(),
                Slot::Cores(groups) => {
                    let mut set = CpuSet::default();
                    for (package, cores) in groups {
                        let pkg = packages.get(*package as usize).ok_or_else(|| PlaceError::NoPackage { rank, slot: slot.clone(), package: *package, have: packages.len() })?;
                        let in_pkg: Vec<&CpuSet> = topo.cores.iter().filter(|c| c.difference(pkg).is_empty()).collect();
                        for &c in cores {
                            let core = in_pkg.get(c as usize).ok_or_else(|| PlaceError::NoCore { rank, slot: slot.clone(), package: *package, have: in_pkg.len() })?;
                            set = set.union(core);
                        }
                    }
                    set
                }
            };
            let outside = cpus.difference(&topo.universe);
            if !outside.is_empty() || cpus.is_empty() {
                return Err(PlaceError::CpusOutside { rank, given: BindTo::Cpus(vec![cpus.clone()]), outside, allowed: topo.universe.clone() });
            }
            Ok(RankPlace { rank, cpus, bound: true, gpus: Vec::new(), nic: None })
        })
        .collect()
}

/// Units (cores or threads) as CPU sets, in logical order.
fn units(topo: &Topology, hwthreads: bool) -> Vec<CpuSet> {
    topo.objects(if hwthreads { ObjKind::HwThread } else { ObjKind::Core })
}

fn map_and_bind(topo: &Topology, policy: &Policy, ranks: &[u32]) -> Result<Vec<RankPlace>, PlaceError> {
    let map = &policy.map;
    let hw = policy.hwthreads || map.hwtcpus || map.obj == MapObj::HwThread;
    let unit = if hw { "hwthread" } else { "core" };
    let units = units(topo, hw);
    let pe = map.pe.unwrap_or(1) as usize;
    // Domains are the objects ranks are dealt to; each holds its units in order.
    let (domain_kind, per_domain) = match map.obj {
        MapObj::Slot | MapObj::Core | MapObj::HwThread => (ObjKind::Node, None),
        MapObj::L3 => (ObjKind::L3, None),
        MapObj::Numa => (ObjKind::Numa, None),
        MapObj::Package => (ObjKind::Package, None),
        MapObj::Ppr(n, kind) => (kind, Some(n)),
    };
    let mut domains: Vec<Vec<usize>> = topo
        .objects(domain_kind)
        .iter()
        .map(|d| (0..units.len()).filter(|u| units[*u].first().is_some_and(|c| d.contains(c))).collect::<Vec<_>>())
        .filter(|d| !d.is_empty())
        .collect();
    // A machine that does not report the object (no L3 in sysfs) is one object of that kind.
    if domains.is_empty() {
        domains.push((0..units.len()).collect());
    }
    let most_in_package = topo
        .objects(ObjKind::Package)
        .iter()
        .map(|p| units.iter().filter(|u| u.is_subset(p)).count())
        .max()
        .unwrap_or(0);
    if map.pe.is_some() {
        let (obj, most) = match domain_kind {
            ObjKind::Node | ObjKind::Package => ("package", most_in_package),
            k => (k.name(), domains.iter().map(Vec::len).max().unwrap_or(0)),
        };
        if pe > most {
            return Err(PlaceError::PeTooLarge { pe: pe as u32, unit, obj, most });
        }
    }
    if let Some(n) = per_domain {
        let max = n as usize * domains.len();
        if ranks.len() > max {
            return Err(PlaceError::PprTooMany { ranks: ranks.len(), n, obj: domain_kind.name(), count: domains.len(), max });
        }
    }

    let (taken, wrapped) = deal(&domains, per_domain, ranks.len(), pe);
    let taken = match policy.rank_by {
        Some(kind) => rank_order(topo, kind, &units, taken),
        None => taken,
    };
    let explicit = matches!(policy.bind, Some(BindTo::Core | BindTo::HwThread)) || (policy.bind.is_none() && map.pe.is_some());
    if wrapped && explicit {
        let why = match (&policy.bind, map.pe) {
            (Some(b), Some(p)) => format!("with --bind-to {b} and PE={p}"),
            (Some(b), None) => format!("with --bind-to {b}"),
            (None, _) => format!("with PE={pe}"),
        };
        if let Some(n) = per_domain {
            let have = domains.iter().map(Vec::len).min().unwrap_or(0);
            return Err(PlaceError::PprTooFewCpus { n, pe, obj: domain_kind.name(), unit, have, why });
        }
        return Err(PlaceError::TooFewCpus { ranks: ranks.len(), why, need: ranks.len() * pe, unit, have: units.len(), allowed: topo.universe.clone() });
    }
    let bind = match &policy.bind {
        Some(b) => b.clone(),
        None if wrapped => BindTo::None,
        None if hw => BindTo::HwThread,
        None => BindTo::Core,
    };
    // The objects a rank's units widen to, computed once (objects() walks every CPU).
    let wide = match &bind {
        BindTo::Core if hw => Some(topo.objects(ObjKind::Core)),
        BindTo::L3 => Some(topo.objects(ObjKind::L3)),
        BindTo::Numa => Some(topo.objects(ObjKind::Numa)),
        BindTo::Package => Some(topo.objects(ObjKind::Package)),
        _ => None,
    };
    Ok(ranks
        .iter()
        .zip(taken)
        .map(|(&rank, us)| {
            let own: CpuSet = us.iter().flat_map(|u| units[*u].iter()).collect();
            let cpus = match (&bind, &wide) {
                (BindTo::None | BindTo::Cpus(_), _) => topo.universe.clone(),
                (_, Some(objs)) => widen(objs, &own),
                (BindTo::HwThread, _) if !hw => us.iter().filter_map(|u| units[*u].first()).collect(),
                _ => own,
            };
            let bound = !matches!(bind, BindTo::None);
            RankPlace { rank, cpus, bound, gpus: Vec::new(), nic: None }
        })
        .collect())
}

/// Which units each rank takes: round-robin over domains (`per_domain` None) or N per domain in
/// turn; when units run out the next pass starts over, and the second value says that happened
/// (ranks share units).
fn deal(domains: &[Vec<usize>], per_domain: Option<u32>, ranks: usize, pe: usize) -> (Vec<Vec<usize>>, bool) {
    let mut wrapped = false;
    let mut next: Vec<usize> = vec![0; domains.len()];
    let mut out = Vec::with_capacity(ranks);
    let mut d = 0usize;
    for i in 0..ranks {
        if let Some(n) = per_domain {
            d = i / n as usize;
        } else {
            // The next domain (in turn) with pe free units; a new pass when none has.
            let free = |k: usize| domains[k].len().saturating_sub(next[k]) >= pe;
            match (0..domains.len()).map(|k| (d + k) % domains.len()).find(|&k| free(k)) {
                Some(k) => d = k,
                None => {
                    wrapped = true;
                    next.iter_mut().for_each(|n| *n = 0);
                }
            }
        }
        let dom = &domains[d % domains.len()];
        wrapped |= next[d] + pe > dom.len();
        let take: Vec<usize> = (0..pe).map(|k| dom[(next[d] + k) % dom.len()]).collect();
        next[d] += pe;
        out.push(take);
        if per_domain.is_none() {
            d = (d + 1) % domains.len();
        }
    }
    (out, wrapped)
}

/// Open MPI's `--rank-by OBJ`: the mapped places grouped by the object of `kind` their first CPU
/// is in (objects in logical order, places in mapping order within one), then dealt round-robin
/// over the groups, so consecutive ranks go to consecutive objects. Same places, other order.
fn rank_order(topo: &Topology, kind: ObjKind, units: &[CpuSet], taken: Vec<Vec<usize>>) -> Vec<Vec<usize>> {
    let objs = topo.objects(kind);
    let mut groups: Vec<Vec<Vec<usize>>> = vec![Vec::new(); objs.len() + 1];
    for slot in taken {
        let first = slot.first().and_then(|u| units[*u].first());
        let g = first.and_then(|c| objs.iter().position(|o| o.contains(c))).unwrap_or(objs.len());
        groups[g].push(slot);
    }
    let mut queues: Vec<std::collections::VecDeque<Vec<usize>>> = groups.into_iter().filter(|g| !g.is_empty()).map(Into::into).collect();
    let mut out = Vec::new();
    while queues.iter().any(|q| !q.is_empty()) {
        for q in queues.iter_mut() {
            out.extend(q.pop_front());
        }
    }
    out
}

/// The objects (of one kind) that contain any of `cpus`, united.
fn widen(objs: &[CpuSet], cpus: &CpuSet) -> CpuSet {
    objs.iter().filter(|o| o.intersects(cpus)).fold(CpuSet::new(), |a, o| a.union(o))
}

fn assign_gpus(topo: &Topology, per_rank: u32, places: &mut [RankPlace]) -> Result<(), PlaceError> {
    if per_rank == 0 || places.is_empty() {
        return Ok(());
    }
    if topo.gpus.is_empty() {
        return Err(PlaceError::NoGpus { want: per_rank });
    }
    if per_rank as usize > topo.gpus.len() {
        return Err(PlaceError::TooFewGpus { want: per_rank, have: topo.gpus.len() });
    }
    let mut uses = vec![0u32; topo.gpus.len()];
    for p in places.iter_mut() {
        let near = topo.numa_of(&p.cpus);
        for _ in 0..per_rank {
            let best = (0..topo.gpus.len())
                .filter(|g| !p.gpus.contains(g))
                .min_by_key(|&g| {
                    let gpu = &topo.gpus[g];
                    let dist = if gpu.numa.is_some_and(|n| near.contains(&n)) {
                        0
                    } else if gpu.local_cpus.intersects(&p.cpus) {
                        1
                    } else {
                        2
                    };
                    (uses[g], dist, g)
                });
            if let Some(g) = best {
                uses[g] += 1;
                p.gpus.push(g);
            }
        }
        p.gpus.sort_unstable();
    }
    Ok(())
}

/// `--gpu-bind list:...`: local rank i takes list `i mod len`.
fn listed_gpus(topo: &Topology, lists: &[Vec<u32>], places: &mut [RankPlace]) -> Result<(), PlaceError> {
    for (i, p) in places.iter_mut().enumerate() {
        let list = &lists[i % lists.len()];
        if let Some(&gpu) = list.iter().find(|&&g| g as usize >= topo.gpus.len()) {
            return Err(PlaceError::NoSuchGpu { gpu, have: topo.gpus.len() });
        }
        p.gpus = list.iter().map(|&g| g as usize).collect();
    }
    Ok(())
}

fn assign_nics(topo: &Topology, nics: &[&str], places: &mut [RankPlace]) {
    if nics.is_empty() {
        return;
    }
    let mut uses = vec![0u32; nics.len()];
    // Ranks bound alike (or unbound) share the answer; a node has few distinct sets.
    let mut numa: std::collections::HashMap<CpuSet, Vec<u32>> = std::collections::HashMap::new();
    for p in places.iter_mut() {
        // Near the GPUs when the rank has any: that is where its traffic starts.
        let near: Vec<u32> = if p.gpus.is_empty() {
            numa.entry(p.cpus.clone()).or_insert_with(|| topo.numa_of(&p.cpus)).clone()
        } else {
            p.gpus.iter().filter_map(|g| topo.gpus[*g].numa).collect()
        };
        let best = (0..nics.len()).min_by_key(|&i| {
            let dev = topo.nets.iter().find(|d| d.name == nics[i]);
            let dist = match dev.and_then(|d| d.numa) {
                Some(n) if near.contains(&n) => 0,
                Some(_) => 2,
                // Virtual or unknown devices: neither near nor far.
                None => 1,
            };
            (dist, uses[i], i)
        });
        if let Some(i) = best {
            uses[i] += 1;
            p.nic = Some(i);
        }
    }
}

/// A compact picture of the node for one rank, as Open MPI's `--report-bindings` draws it: one
/// bracket per package, cores separated by `/`, `B` for a thread the rank may use, `.` otherwise.
pub fn picture(topo: &Topology, cpus: &CpuSet) -> String {
    let mut out = String::new();
    let mut package = None;
    for core in &topo.cores {
        let Some(p) = core.first().and_then(|c| topo.cpu(c)).map(|c| c.package) else { continue };
        if package != Some(p) {
            if package.is_some() {
                out.push(']');
            }
            out.push('[');
            package = Some(p);
        } else {
            out.push('/');
        }
        out.extend(core.iter().map(|c| if cpus.contains(c) { 'B' } else { '.' }));
    }
    if package.is_some() {
        out.push(']');
    }
    out
}

/// How many ranks `ppr:N:obj` puts on a node with this topology.
pub fn ppr_ranks(topo: &Topology, n: u32, obj: ObjKind) -> usize {
    n as usize * topo.count(obj)
}

#[cfg(test)]
mod tests;
