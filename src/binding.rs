//! Placement as the launcher uses it: the `fabrics::placement` engine applied to one node's ranks,
//! and what comes of a rank's place: the `--report-bindings` text, the GPU variables. Pure, so
//! that a daemon (its own ranks), the fabric exchange (every node's nearest NIC) and `--dry-run`
//! (this machine's topology) compute the same thing.

use fabrics::placement::{self, PlaceError, RankPlace};
use fabrics::topology::{GpuVendor, Topology};

use crate::spec::PlacementSpec;

/// The places of `ranks` (one node's, in local-rank order) on a node with `topo`; `nics` are the
/// NIC candidates (names) the fabric exchange found usable there, empty when it does not matter.
pub fn place_node(spec: &PlacementSpec, topo: &Topology, ranks: &[u32], nics: &[&str]) -> Result<Vec<RankPlace>, PlaceError> {
    placement::place(topo, &spec.policy, ranks, nics)
}

/// What `--report-bindings` says of a rank after its rank and node: `bound to CPUs 0-1 [BB/..]`.
pub fn describe(topo: &Topology, p: &RankPlace) -> String {
    let what = if p.bound { format!("bound to CPUs {}", p.cpus) } else { format!("not bound (CPUs {})", p.cpus) };
    let gpus: Vec<&str> = p.gpus.iter().filter_map(|g| topo.gpus.get(*g)).map(|g| g.pci.as_str()).collect();
    let gpus = if gpus.is_empty() { String::new() } else { format!(", GPUs {}", gpus.join(",")) };
    format!("{what}{gpus} {}", placement::picture(topo, &p.cpus))
}

/// Open MPI's locality string for a bound rank (`PMIX_LOCALITY_STRING`): for NUMA nodes (`NM`),
/// packages (`SK`), L3 groups (`L3`), cores (`CR`) and hardware threads (`HT`), the indices of
/// those the rank's CPUs touch, in the node's logical order, as `NM0:SK0:L30:CR0-1:HT0-3`. Open
/// MPI only intersects the lists of two local peers, so any numbering the node's ranks share
/// works; levels the topology lacks (L1, L2) are left out, as hwloc leaves out what it lacks.
pub fn locality_string(topo: &Topology, cpus: &fabrics::CpuSet) -> String {
    use fabrics::topology::ObjKind;
    let levels = [("NM", ObjKind::Numa), ("SK", ObjKind::Package), ("L3", ObjKind::L3), ("CR", ObjKind::Core), ("HT", ObjKind::HwThread)];
    let mut parts = Vec::new();
    for (tag, kind) in levels {
        let hit: fabrics::CpuSet = topo.objects(kind).iter().enumerate().filter(|(_, o)| o.intersects(cpus)).map(|(i, _)| i as u32).collect();
        if !hit.is_empty() {
            parts.push(format!("{tag}{hit}"));
        }
    }
    parts.join(":")
}

/// A node's topology in one line, for `--inventory`: `2 packages, 4 NUMA nodes, 4 L3, 32 cores,
/// 64 hardware threads, usable CPUs 0-63, 8 GPUs (nvidia)`.
pub fn summary(topo: &Topology) -> String {
    use fabrics::topology::ObjKind;
    let plural = |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    let mut s = [
        plural(topo.count(ObjKind::Package), "package", "packages"),
        plural(topo.count(ObjKind::Numa), "NUMA node", "NUMA nodes"),
        format!("{} L3", topo.count(ObjKind::L3)),
        plural(topo.count(ObjKind::Core), "core", "cores"),
        plural(topo.count(ObjKind::HwThread), "hardware thread", "hardware threads"),
        format!("usable CPUs {}", topo.universe),
        plural(topo.gpus.len(), "GPU", "GPUs"),
    ]
    .join(", ");
    let mut vendors: Vec<&str> = topo.gpus.iter().map(|g| g.vendor.name()).collect();
    vendors.dedup();
    if !vendors.is_empty() {
        s.push_str(&format!(" ({})", vendors.join(", ")));
    }
    s
}

/// One `--report-bindings` line.
pub fn report_line(rank: u32, node: &str, text: &str) -> String {
    format!("rank {rank} on {node}: {text}")
}

/// The variables that hand a rank its GPUs: each vendor's own (ordinals in PCI order, with
/// `CUDA_DEVICE_ORDER=PCI_BUS_ID` so CUDA counts the same way, unless the user set it) and
/// `RLAUNCH_GPUS` (PCI addresses). Nothing for a rank without GPUs.
pub fn gpu_env(topo: &Topology, p: &RankPlace, user_set: &dyn Fn(&str) -> bool) -> Vec<(String, String)> {
    if p.gpus.is_empty() {
        return Vec::new();
    }
    let gpus: Vec<_> = p.gpus.iter().filter_map(|g| topo.gpus.get(*g)).collect();
    let ordinals = |v: GpuVendor| -> Option<String> {
        let list: Vec<String> = gpus.iter().filter(|g| g.vendor == v).map(|g| g.ordinal.to_string()).collect();
        (!list.is_empty()).then(|| list.join(","))
    };
    let mut env = Vec::new();
    if let Some(list) = ordinals(GpuVendor::Nvidia) {
        env.push(("CUDA_VISIBLE_DEVICES".to_string(), list));
        if !user_set("CUDA_DEVICE_ORDER") {
            env.push(("CUDA_DEVICE_ORDER".to_string(), "PCI_BUS_ID".to_string()));
        }
    }
    if let Some(list) = ordinals(GpuVendor::Amd) {
        env.push(("ROCR_VISIBLE_DEVICES".to_string(), list));
    }
    if let Some(list) = ordinals(GpuVendor::Intel) {
        env.push(("ZE_AFFINITY_MASK".to_string(), list));
    }
    let pci: Vec<&str> = gpus.iter().map(|g| g.pci.as_str()).collect();
    env.push(("RLAUNCH_GPUS".to_string(), pci.join(",")));
    env
}

#[cfg(test)]
mod tests {
    use super::*;
    use fabrics::topology::{Cpu, Gpu};
    use fabrics::CpuSet;

    fn node() -> Topology {
        let cpus = (0..4).map(|id| Cpu { id, package: 0, die: 0, cluster: 0, core: id, l3: None, numa: Some(id / 2) }).collect();
        let gpu = |pci: &str, vendor, ordinal, numa| Gpu { pci: pci.into(), vendor, ordinal, numa: Some(numa), local_cpus: CpuSet::new() };
        Topology {
            cpus,
            cores: (0..4).map(|c| CpuSet::from_iter([c])).collect(),
            l3: Vec::new(),
            numa: Vec::new(),
            universe: CpuSet::from_iter(0..4),
            gpus: vec![gpu("0000:01:00.0", GpuVendor::Nvidia, 0, 0), gpu("0000:02:00.0", GpuVendor::Nvidia, 1, 1), gpu("0000:03:00.0", GpuVendor::Amd, 0, 1)],
            nets: Vec::new(),
        }
    }

    #[test]
    fn report_text_and_gpu_variables() {
        let t = node();
        let spec = PlacementSpec { policy: placement::Policy { gpus_per_rank: 1, ..Default::default() }, report: true };
        let p = place_node(&spec, &t, &[0, 1, 2], &[]).unwrap();
        assert_eq!(describe(&t, &p[1]), "bound to CPUs 1, GPUs 0000:02:00.0 [./B/./.]");
        assert_eq!(report_line(1, "n1", "x"), "rank 1 on n1: x");
        let env = gpu_env(&t, &p[1], &|_| false);
        assert_eq!(env[0], ("CUDA_VISIBLE_DEVICES".into(), "1".into()));
        assert_eq!(env[1], ("CUDA_DEVICE_ORDER".into(), "PCI_BUS_ID".into()));
        assert_eq!(env.last().unwrap(), &("RLAUNCH_GPUS".into(), "0000:02:00.0".into()));
        let env = gpu_env(&t, &p[2], &|k| k == "CUDA_DEVICE_ORDER");
        assert_eq!(env, [("ROCR_VISIBLE_DEVICES".into(), "0".into()), ("RLAUNCH_GPUS".into(), "0000:03:00.0".into())]);
        let none = place_node(&PlacementSpec::default(), &t, &[0], &[]).unwrap();
        assert!(gpu_env(&t, &none[0], &|_| false).is_empty());
        assert_eq!(locality_string(&t, &p[1].cpus), "NM0:SK0:CR1:HT1", "no L3 here");
        assert_eq!(summary(&t), "1 package, 2 NUMA nodes, 0 L3, 4 cores, 4 hardware threads, usable CPUs 0-3, 3 GPUs (nvidia, amd)");
        assert_eq!(locality_string(&t, &fabrics::CpuSet::from_iter([1, 2])), "NM0-1:SK0:CR1-2:HT1-2");
    }
}
