//! A node's CPU and device topology from sysfs: packages, dies, clusters, cores, hardware threads,
//! L3 groups, NUMA nodes, and the PCI devices placement cares about (GPUs, NICs, RDMA devices).
//!
//! Reading goes through [`SysfsRead`] with a root given by the caller, as fabric discovery does, so
//! fixture trees test it. The CPUs this process may use (its affinity, which already reflects Slurm
//! and cgroup cpusets) are a parameter too; only [`Topology::discover_system`] asks the kernel.
//!
//! Attributes that older kernels or virtual machines lack (`die_id`, `cluster_id`, caches, NUMA
//! nodes, a device's `numa_node`) fall back to "one of them"; a file that exists but cannot be read
//! or parsed is an error naming it, because a wrong topology would silently bind ranks badly.
//!
//! The value travels in every daemon's inventory (serde, postcard: a few bytes per CPU), so the
//! front end and every daemon see every node's topology; its format is covered by the launcher's
//! wire protocol version, as the rest of [`crate::Inventory`] is.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cpuset::CpuSet;
use crate::discover::{DirSysfs, SysfsRead};

#[cfg(test)]
pub(crate) mod fixture;

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: cannot parse {value:?} as {what}")]
    Parse {
        path: PathBuf,
        value: String,
        what: &'static str,
    },
    #[error("no online CPU found under {root}/devices/system/cpu; is sysfs mounted there?")]
    NoCpus { root: PathBuf },
    #[error("none of the CPUs this process may use ({allowed}) is online ({online})")]
    EmptyUniverse { allowed: CpuSet, online: CpuSet },
    #[error("sched_getaffinity failed: {0}")]
    Affinity(#[source] nix::Error),
}

/// One online hardware thread and the objects it belongs to. Ids are the kernel's except `core`
/// and `l3`, which are dense indices into [`Topology::cores`] and [`Topology::l3`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cpu {
    pub id: u32,
    pub package: u32,
    pub die: u32,
    pub cluster: u32,
    pub core: u32,
    pub l3: Option<u32>,
    pub numa: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum GpuVendor {
    Nvidia,
    Amd,
    Intel,
}

impl GpuVendor {
    fn from_pci(vendor: u32) -> Option<GpuVendor> {
        match vendor {
            0x10de => Some(GpuVendor::Nvidia),
            0x1002 => Some(GpuVendor::Amd),
            0x8086 => Some(GpuVendor::Intel),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            GpuVendor::Nvidia => "nvidia",
            GpuVendor::Amd => "amd",
            GpuVendor::Intel => "intel",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gpu {
    /// PCI address (`0000:17:00.0`).
    pub pci: String,
    pub vendor: GpuVendor,
    /// Position among this vendor's GPUs in PCI order: what `CUDA_VISIBLE_DEVICES` (with
    /// `CUDA_DEVICE_ORDER=PCI_BUS_ID`), `ROCR_VISIBLE_DEVICES` and `ZE_AFFINITY_MASK` count.
    pub ordinal: u32,
    pub numa: Option<u32>,
    pub local_cpus: CpuSet,
}

/// A network device with a PCI (or other bus) parent: a netdev from `class/net` or an RDMA device
/// from `class/infiniband`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetDevice {
    pub name: String,
    pub rdma: bool,
    pub numa: Option<u32>,
    pub local_cpus: CpuSet,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NumaNode {
    pub id: u32,
    pub cpus: CpuSet,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "WireTopology", try_from = "WireTopology")]
pub struct Topology {
    /// Online CPUs by id.
    pub cpus: Vec<Cpu>,
    /// Hardware threads of each core, cores in logical order (package, die, cluster, first CPU).
    pub cores: Vec<CpuSet>,
    pub l3: Vec<CpuSet>,
    pub numa: Vec<NumaNode>,
    /// The CPUs this process may use, within the online ones.
    pub universe: CpuSet,
    pub gpus: Vec<Gpu>,
    pub nets: Vec<NetDevice>,
}

/// What travels: cores (their threads) and, per run of consecutive cores that share them, the
/// package, die, cluster, L3 group and NUMA node; per-CPU records are rebuilt on arrival. A
/// 256-thread node costs well under a kilobyte, against about 12 bytes per CPU as records.
#[derive(Serialize, Deserialize)]
struct WireTopology {
    cores: Vec<CpuSet>,
    runs: Vec<CoreRun>,
    l3: Vec<CpuSet>,
    numa: Vec<NumaNode>,
    universe: CpuSet,
    gpus: Vec<Gpu>,
    nets: Vec<NetDevice>,
}

/// `count` consecutive cores; core `k` of the run is in cluster `cluster + k * cluster_step` (x86
/// reports one cluster per core, so runs would otherwise be one core long).
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct CoreRun {
    count: u32,
    package: u32,
    die: u32,
    cluster: u32,
    cluster_step: u32,
    l3: Option<u32>,
    numa: Option<u32>,
}

impl CoreRun {
    /// Takes the next core into this run when it fits.
    fn extend(&mut self, next: &CoreRun) -> bool {
        let same = (self.package, self.die, self.l3, self.numa) == (next.package, next.die, next.l3, next.numa);
        let Some(step) = next.cluster.checked_sub(self.cluster) else { return false };
        if !same {
            return false;
        }
        if self.count == 1 {
            self.cluster_step = step;
        } else if u64::from(step) != u64::from(self.cluster_step) * u64::from(self.count) {
            return false;
        }
        self.count += 1;
        true
    }
}

impl From<Topology> for WireTopology {
    fn from(t: Topology) -> WireTopology {
        let mut runs: Vec<CoreRun> = Vec::new();
        for (i, core) in t.cores.iter().enumerate() {
            let Some(c) = core.first().and_then(|id| t.cpu(id)) else { continue };
            let run = CoreRun { count: 1, package: c.package, die: c.die, cluster: c.cluster, cluster_step: 0, l3: c.l3, numa: c.numa };
            if !runs.last_mut().is_some_and(|last| last.extend(&run)) {
                runs.push(run);
            }
            debug_assert!(core.iter().all(|id| t.cpu(id).is_some_and(|x| x.core == i as u32)));
        }
        WireTopology { cores: t.cores, runs, l3: t.l3, numa: t.numa, universe: t.universe, gpus: t.gpus, nets: t.nets }
    }
}

impl TryFrom<WireTopology> for Topology {
    type Error = String;
    fn try_from(w: WireTopology) -> Result<Topology, String> {
        let described: u64 = w.runs.iter().map(|r| u64::from(r.count)).sum();
        if described != w.cores.len() as u64 {
            return Err(format!("topology describes {described} cores but lists {}", w.cores.len()));
        }
        let mut cpus = Vec::new();
        let mut core = 0u32;
        for r in &w.runs {
            for k in 0..r.count {
                let cluster = r.cluster.wrapping_add(k.wrapping_mul(r.cluster_step));
                for id in w.cores[core as usize].iter() {
                    cpus.push(Cpu { id, package: r.package, die: r.die, cluster, core, l3: r.l3, numa: r.numa });
                }
                core += 1;
            }
        }
        cpus.sort_by_key(|c| c.id);
        if cpus.windows(2).any(|w| w[0].id == w[1].id) {
            return Err("a CPU is listed in two cores".into());
        }
        Ok(Topology { cpus, cores: w.cores, l3: w.l3, numa: w.numa, universe: w.universe, gpus: w.gpus, nets: w.nets })
    }
}

/// The objects placement maps onto and binds to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ObjKind {
    HwThread,
    Core,
    L3,
    Numa,
    Package,
    /// The whole node.
    Node,
}

impl ObjKind {
    pub fn name(self) -> &'static str {
        match self {
            ObjKind::HwThread => "hwthread",
            ObjKind::Core => "core",
            ObjKind::L3 => "l3cache",
            ObjKind::Numa => "numa",
            ObjKind::Package => "package",
            ObjKind::Node => "node",
        }
    }
}

impl Topology {
    /// Reads the topology under a sysfs root; `allowed` is the CPUs this process may use.
    pub fn discover(root: &Path, allowed: &CpuSet) -> Result<Topology, TopologyError> {
        Self::discover_from(&DirSysfs::new(root), allowed)
    }

    pub fn discover_from(fs: &dyn SysfsRead, allowed: &CpuSet) -> Result<Topology, TopologyError> {
        let r = Rd { fs };
        let online = match r.parsed("devices/system/cpu/online", "a CPU list", CpuSet::parse_list)? {
            Some(s) => s,
            None => CpuSet::from_iter(
                r.list("devices/system/cpu")?
                    .iter()
                    .filter_map(|n| n.strip_prefix("cpu")?.parse::<u32>().ok()),
            ),
        };
        if online.is_empty() {
            return Err(TopologyError::NoCpus { root: fs.describe() });
        }
        let universe = allowed.intersection(&online);
        if universe.is_empty() {
            return Err(TopologyError::EmptyUniverse { allowed: allowed.clone(), online });
        }
        let numa = read_numa(&r, &online)?;
        let cpus = read_cpus(&r, &online, &numa)?;
        let (cpus, cores, l3) = cpus.finish();
        let gpus = read_gpus(&r, &numa)?;
        let mut nets = read_nets(&r, "class/net", false, &numa)?;
        nets.extend(read_nets(&r, "class/infiniband", true, &numa)?);
        Ok(Topology { cpus, cores, l3, numa, universe, gpus, nets })
    }

    /// This host: `/sys` and this process's affinity.
    pub fn discover_system() -> Result<Topology, TopologyError> {
        Self::discover(Path::new("/sys"), &own_affinity()?)
    }

    pub fn cpu(&self, id: u32) -> Option<&Cpu> {
        self.cpus.binary_search_by_key(&id, |c| c.id).ok().map(|i| &self.cpus[i])
    }

    /// The CPUs of every object of a kind, within the universe, empty ones left out, in logical
    /// order (by the position of their first core).
    pub fn objects(&self, kind: ObjKind) -> Vec<CpuSet> {
        let key = |c: &Cpu| -> Option<(u32, u32)> {
            match kind {
                ObjKind::HwThread => Some((c.id, 0)),
                ObjKind::Core => Some((c.core, 0)),
                ObjKind::L3 => c.l3.map(|l| (l, 0)),
                ObjKind::Numa => c.numa.map(|n| (n, 0)),
                ObjKind::Package => Some((c.package, 0)),
                ObjKind::Node => Some((0, 0)),
            }
        };
        // Objects group CPUs by key; their order is that of the first core they contain.
        let mut groups: BTreeMap<(u32, u32), CpuSet> = BTreeMap::new();
        for c in self.cpus.iter().filter(|c| self.universe.contains(c.id)) {
            if let Some(k) = key(c) {
                groups.entry(k).or_default().insert(c.id);
            }
        }
        let mut out: Vec<CpuSet> = groups.into_values().collect();
        out.sort_by_key(|s| self.logical_pos(s));
        out
    }

    /// Objects of a kind holding at least one usable CPU: what `ppr:N:obj` multiplies N by.
    pub fn count(&self, kind: ObjKind) -> usize {
        self.objects(kind).len()
    }

    /// Usable hardware threads in logical order: cores in order, threads by id within a core.
    pub fn logical_cpus(&self) -> Vec<u32> {
        self.cores
            .iter()
            .flat_map(|c| c.iter())
            .filter(|c| self.universe.contains(*c))
            .collect()
    }

    fn logical_pos(&self, s: &CpuSet) -> (u32, u32) {
        s.iter()
            .filter_map(|id| self.cpu(id))
            .map(|c| (c.core, c.id))
            .min()
            .unwrap_or((u32::MAX, u32::MAX))
    }

    /// The NUMA nodes a set of CPUs touches.
    pub fn numa_of(&self, cpus: &CpuSet) -> Vec<u32> {
        let mut v: Vec<u32> = cpus.iter().filter_map(|id| self.cpu(id)?.numa).collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// The CPUs this process may use.
pub fn own_affinity() -> Result<CpuSet, TopologyError> {
    let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
        .map_err(TopologyError::Affinity)?;
    Ok((0..nix::sched::CpuSet::count())
        .filter(|i| set.is_set(*i).unwrap_or(false))
        .map(|i| i as u32)
        .collect())
}

// ---------------------------------------------------------------------------------------------
// Reading.

struct Rd<'a> {
    fs: &'a dyn SysfsRead,
}

impl Rd<'_> {
    fn path(&self, rel: &str) -> PathBuf {
        self.fs.describe().join(rel)
    }

    /// The file's content, `None` when it does not exist.
    fn opt(&self, rel: &str) -> Result<Option<String>, TopologyError> {
        match self.fs.read(rel) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(TopologyError::Read { path: self.path(rel), source }),
        }
    }

    fn parsed<T>(
        &self,
        rel: &str,
        what: &'static str,
        f: impl FnOnce(&str) -> Option<T>,
    ) -> Result<Option<T>, TopologyError> {
        let Some(s) = self.opt(rel)? else { return Ok(None) };
        match f(&s) {
            Some(v) => Ok(Some(v)),
            None => Err(TopologyError::Parse {
                path: self.path(rel),
                value: s.trim().to_string(),
                what,
            }),
        }
    }

    fn list(&self, rel: &str) -> Result<Vec<String>, TopologyError> {
        match self.fs.list(rel) {
            Ok(mut v) => {
                v.sort();
                Ok(v)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(source) => Err(TopologyError::Read { path: self.path(rel), source }),
        }
    }

    /// A signed id where the kernel writes -1 for "none" (package, die, NUMA node).
    fn id(&self, rel: &str) -> Result<Option<u32>, TopologyError> {
        Ok(self.parsed(rel, "an integer id", |s| s.trim().parse::<i64>().ok())?
            .and_then(|v| u32::try_from(v).ok()))
    }

    fn hex(&self, rel: &str) -> Result<Option<u32>, TopologyError> {
        self.parsed(rel, "a hexadecimal number", |s| {
            let s = s.trim();
            u32::from_str_radix(s.strip_prefix("0x").unwrap_or(s), 16).ok()
        })
    }
}

fn read_numa(r: &Rd<'_>, online: &CpuSet) -> Result<Vec<NumaNode>, TopologyError> {
    let mut out = Vec::new();
    for name in r.list("devices/system/node")? {
        let Some(id) = name.strip_prefix("node").and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let rel = format!("devices/system/node/{name}/cpulist");
        let cpus = r.parsed(&rel, "a CPU list", CpuSet::parse_list)?.unwrap_or_default();
        let cpus = cpus.intersection(online);
        // Memory-only nodes (CXL, HBM) have no CPUs to bind to.
        if !cpus.is_empty() {
            out.push(NumaNode { id, cpus });
        }
    }
    out.sort_by_key(|n| n.id);
    // A kernel without NUMA support has no node directory: the whole machine is one node.
    if out.is_empty() {
        out.push(NumaNode { id: 0, cpus: online.clone() });
    }
    Ok(out)
}

/// Per-CPU facts before cores and L3 groups get dense indices.
struct RawCpu {
    id: u32,
    package: u32,
    die: u32,
    cluster: u32,
    siblings: CpuSet,
    l3: Option<CpuSet>,
    numa: Option<u32>,
}

struct RawCpus {
    rows: Vec<RawCpu>,
}

fn read_cpus(r: &Rd<'_>, online: &CpuSet, numa: &[NumaNode]) -> Result<RawCpus, TopologyError> {
    let mut rows = Vec::new();
    for id in online.iter() {
        let t = format!("devices/system/cpu/cpu{id}/topology");
        let package = r.id(&format!("{t}/physical_package_id"))?.unwrap_or(0);
        let die = r.id(&format!("{t}/die_id"))?.unwrap_or(0);
        let cluster = r.id(&format!("{t}/cluster_id"))?.unwrap_or(0);
        // Siblings define the core: core_id repeats across packages and dies.
        let siblings = r
            .parsed(&format!("{t}/thread_siblings_list"), "a CPU list", CpuSet::parse_list)?
            .map(|s| s.intersection(online))
            .filter(|s| s.contains(id))
            .unwrap_or_else(|| CpuSet::from_iter([id]));
        let l3 = read_l3(r, id)?.map(|s| s.intersection(online));
        let node = numa.iter().find(|n| n.cpus.contains(id)).map(|n| n.id);
        rows.push(RawCpu { id, package, die, cluster, siblings, l3, numa: node });
    }
    Ok(RawCpus { rows })
}

fn read_l3(r: &Rd<'_>, id: u32) -> Result<Option<CpuSet>, TopologyError> {
    let base = format!("devices/system/cpu/cpu{id}/cache");
    for idx in r.list(&base)? {
        if !idx.starts_with("index") {
            continue;
        }
        let level = r.parsed(&format!("{base}/{idx}/level"), "a cache level", |s| s.trim().parse::<u32>().ok())?;
        let kind = r.opt(&format!("{base}/{idx}/type"))?.unwrap_or_default();
        if level == Some(3) && kind.trim() != "Instruction" {
            return r.parsed(&format!("{base}/{idx}/shared_cpu_list"), "a CPU list", CpuSet::parse_list);
        }
    }
    Ok(None)
}

impl RawCpus {
    fn finish(self) -> (Vec<Cpu>, Vec<CpuSet>, Vec<CpuSet>) {
        // Cores: unique sibling sets, ordered by (package, die, cluster, first CPU).
        let mut core_keys: Vec<((u32, u32, u32, u32), CpuSet)> = Vec::new();
        for r in &self.rows {
            if !core_keys.iter().any(|k| k.1 == r.siblings) {
                let first = r.siblings.first().unwrap_or(r.id);
                core_keys.push(((r.package, r.die, r.cluster, first), r.siblings.clone()));
            }
        }
        core_keys.sort_by_key(|k| k.0);
        let cores: Vec<CpuSet> = core_keys.into_iter().map(|k| k.1).collect();
        let mut l3: Vec<CpuSet> = Vec::new();
        let mut cpus = Vec::new();
        for RawCpu { id, package, die, cluster, siblings, l3: cache, numa: node } in self.rows {
            let core = cores.iter().position(|c| *c == siblings).unwrap_or(0) as u32;
            let l3_idx = cache.filter(|s| !s.is_empty()).map(|s| match l3.iter().position(|g| *g == s) {
                Some(i) => i as u32,
                None => {
                    l3.push(s);
                    (l3.len() - 1) as u32
                }
            });
            cpus.push(Cpu { id, package, die, cluster, core, l3: l3_idx, numa: node });
        }
        (cpus, cores, l3)
    }
}

/// A device's NUMA node: its `numa_node`, else the node of its first local CPU.
fn device_locality(
    r: &Rd<'_>,
    dev: &str,
    numa: &[NumaNode],
) -> Result<(Option<u32>, CpuSet), TopologyError> {
    let local = r
        .parsed(&format!("{dev}/local_cpulist"), "a CPU list", CpuSet::parse_list)?
        .unwrap_or_default();
    let node = r.id(&format!("{dev}/numa_node"))?.or_else(|| {
        let first = local.first()?;
        numa.iter().find(|n| n.cpus.contains(first)).map(|n| n.id)
    });
    // Single-node machines report -1; then the device is local to that one node.
    let node = node.or_else(|| (numa.len() == 1).then(|| numa[0].id));
    Ok((node, local))
}

fn read_gpus(r: &Rd<'_>, numa: &[NumaNode]) -> Result<Vec<Gpu>, TopologyError> {
    let mut out: Vec<Gpu> = Vec::new();
    for addr in r.list("bus/pci/devices")? {
        let dev = format!("bus/pci/devices/{addr}");
        let Some(class) = r.hex(&format!("{dev}/class"))? else { continue };
        if class >> 16 != 0x03 {
            continue;
        }
        let Some(vendor) = r.hex(&format!("{dev}/vendor"))?.and_then(GpuVendor::from_pci) else {
            continue;
        };
        let (numa, local_cpus) = device_locality(r, &dev, numa)?;
        let ordinal = out.iter().filter(|g| g.vendor == vendor).count() as u32;
        out.push(Gpu { pci: addr, vendor, ordinal, numa, local_cpus });
    }
    Ok(out)
}

fn read_nets(
    r: &Rd<'_>,
    class: &str,
    rdma: bool,
    numa: &[NumaNode],
) -> Result<Vec<NetDevice>, TopologyError> {
    let mut out = Vec::new();
    for name in r.list(class)? {
        let dev = format!("{class}/{name}/device");
        // Virtual interfaces (lo, bridges, veth) have no device and no locality.
        if !r.fs.exists(&dev) {
            continue;
        }
        let (numa, local_cpus) = device_locality(r, &dev, numa)?;
        out.push(NetDevice { name, rdma, numa, local_cpus });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::fixture::*;
    use super::*;

    #[test]
    fn two_packages_two_numa_smt2_four_l3() {
        let t = big_node().topology();
        assert_eq!(t.cpus.len(), 64);
        assert_eq!(t.cores.len(), 32);
        assert_eq!(t.count(ObjKind::Package), 2);
        assert_eq!(t.count(ObjKind::Numa), 4);
        assert_eq!(t.count(ObjKind::L3), 4);
        assert_eq!(t.count(ObjKind::Core), 32);
        assert_eq!(t.count(ObjKind::HwThread), 64);
        // Linux numbers the first threads of all cores first, the siblings after them.
        assert_eq!(t.cores[0].to_string(), "0,32");
        assert_eq!(t.objects(ObjKind::Package)[1].to_string(), "16-31,48-63");
        assert_eq!(t.objects(ObjKind::Numa)[1].to_string(), "8-15,40-47");
        assert_eq!(t.logical_cpus()[..4], [0, 32, 1, 33]);
    }

    #[test]
    fn laptop_without_numa_directory() {
        let t = laptop().topology();
        assert_eq!(t.count(ObjKind::Package), 1);
        assert_eq!(t.count(ObjKind::Core), 4);
        assert_eq!(t.count(ObjKind::Numa), 1);
        assert_eq!(t.numa[0].cpus.to_string(), "0-7");
        assert_eq!(t.gpus.len(), 1);
        assert_eq!(t.gpus[0].vendor, GpuVendor::Intel);
        assert_eq!(t.gpus[0].numa, Some(0), "numa_node -1 on a one-node machine means node 0");
    }

    #[test]
    fn cgroup_restricted_universe() {
        let f = big_node();
        let t = f.topology_with(&CpuSet::parse_list("4-11,36-43").unwrap());
        assert_eq!(t.universe.len(), 16);
        assert_eq!(t.count(ObjKind::Core), 8);
        assert_eq!(t.count(ObjKind::Numa), 2);
        assert_eq!(t.count(ObjKind::Package), 1);
        assert!(t.objects(ObjKind::Core).iter().all(|c| c.is_subset(&t.universe)));
        let err = Topology::discover(f.root(), &CpuSet::parse_list("200-201").unwrap()).unwrap_err();
        assert!(err.to_string().contains("none of the CPUs"), "{err}");
    }

    #[test]
    fn gpus_and_nics_across_numa_nodes() {
        let t = gpu_node().topology();
        assert_eq!(t.gpus.len(), 8);
        assert!(t.gpus.iter().all(|g| g.vendor == GpuVendor::Nvidia));
        assert_eq!(t.gpus.iter().map(|g| g.ordinal).collect::<Vec<_>>(), (0..8).collect::<Vec<_>>());
        assert_eq!(t.gpus.iter().filter(|g| g.numa == Some(1)).count(), 4);
        let nics: Vec<_> = t.nets.iter().filter(|n| !n.rdma).map(|n| (n.name.as_str(), n.numa)).collect();
        assert_eq!(nics, [("eth0", Some(0)), ("eth1", Some(0)), ("eth2", Some(1)), ("eth3", Some(1))]);
        assert_eq!(t.nets.iter().filter(|n| n.rdma).count(), 4);
        assert!(!t.nets.iter().any(|n| n.name == "lo"), "virtual devices have no locality");
    }

    #[test]
    fn arm_clusters() {
        let t = arm_node().topology();
        assert_eq!(t.count(ObjKind::Core), 16);
        assert_eq!(t.count(ObjKind::HwThread), 16);
        assert_eq!(t.count(ObjKind::L3), 1);
        assert_eq!(t.cpus.iter().map(|c| c.cluster).collect::<std::collections::BTreeSet<_>>().len(), 4);
        // Cores of one cluster are neighbours in logical order although the kernel interleaves them.
        assert_eq!(t.cores[..5].iter().map(|c| c.to_string()).collect::<Vec<_>>(), ["0", "4", "8", "12", "1"]);
    }

    #[test]
    fn unparseable_file_is_named() {
        let f = laptop();
        f.write("devices/system/cpu/cpu2/topology/physical_package_id", "zero\n");
        let err = Topology::discover(f.root(), &CpuSet::parse_list("0-7").unwrap()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("cpu2/topology/physical_package_id") && msg.contains("zero"), "{msg}");
    }

    #[test]
    fn missing_sysfs_is_an_error() {
        let err = Topology::discover(Path::new("/nonexistent-rlaunch"), &CpuSet::from_iter([0])).unwrap_err();
        assert!(err.to_string().contains("/nonexistent-rlaunch"), "{err}");
    }

    #[test]
    fn compact_on_the_wire() {
        let t = big_node().topology();
        let bytes = postcard::to_allocvec(&t).unwrap();
        assert!(bytes.len() < 300, "{} bytes for 64 CPUs", bytes.len());
        assert_eq!(postcard::from_bytes::<Topology>(&bytes).unwrap(), t);
        for f in [laptop(), gpu_node(), arm_node()] {
            let t = f.topology();
            assert_eq!(postcard::from_bytes::<Topology>(&postcard::to_allocvec(&t).unwrap()).unwrap(), t);
        }
        let t = Topology::discover_system().unwrap();
        assert_eq!(postcard::from_bytes::<Topology>(&postcard::to_allocvec(&t).unwrap()).unwrap(), t);
    }

    #[test]
    fn this_machine() {
        let t = Topology::discover_system().unwrap();
        assert!(!t.universe.is_empty());
        assert!(t.count(ObjKind::Core) >= 1);
        assert!(t.universe.is_subset(&t.cpus.iter().map(|c| c.id).collect()));
    }
}
