//! Fixture sysfs trees for topology and placement tests, written into a temporary directory in the
//! layout the kernel uses, so they go through the same reading code as `/sys`.

use std::path::Path;

use tempfile::TempDir;

use super::Topology;
use crate::cpuset::CpuSet;

pub struct Fixture {
    dir: TempDir,
    online: Vec<u32>,
}

impl Fixture {
    pub fn new() -> Fixture {
        Fixture { dir: tempfile::tempdir().unwrap(), online: Vec::new() }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, rel: &str, content: &str) {
        let p = self.dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    /// One online CPU. `die: None` leaves `die_id` out, as kernels before 5.2 do.
    #[allow(clippy::too_many_arguments)]
    pub fn cpu(&mut self, id: u32, package: u32, die: Option<u32>, cluster: u32, core_id: u32, siblings: &str, l3: Option<&str>) {
        let t = format!("devices/system/cpu/cpu{id}/topology");
        self.write(&format!("{t}/physical_package_id"), &format!("{package}\n"));
        if let Some(d) = die {
            self.write(&format!("{t}/die_id"), &format!("{d}\n"));
        }
        self.write(&format!("{t}/cluster_id"), &format!("{cluster}\n"));
        self.write(&format!("{t}/core_id"), &format!("{core_id}\n"));
        self.write(&format!("{t}/thread_siblings_list"), &format!("{siblings}\n"));
        let c = format!("devices/system/cpu/cpu{id}/cache");
        self.write(&format!("{c}/index0/level"), "1\n");
        self.write(&format!("{c}/index0/type"), "Data\n");
        self.write(&format!("{c}/index0/shared_cpu_list"), &format!("{siblings}\n"));
        if let Some(l3) = l3 {
            self.write(&format!("{c}/index3/level"), "3\n");
            self.write(&format!("{c}/index3/type"), "Unified\n");
            self.write(&format!("{c}/index3/shared_cpu_list"), &format!("{l3}\n"));
        }
        self.online.push(id);
        let online = CpuSet::from_iter(self.online.iter().copied()).to_string();
        self.write("devices/system/cpu/online", &format!("{online}\n"));
    }

    pub fn node(&self, id: u32, cpus: &str) {
        self.write(&format!("devices/system/node/node{id}/cpulist"), &format!("{cpus}\n"));
    }

    pub fn pci(&self, addr: &str, class: u32, vendor: u32, numa: i32, local: &str) {
        let d = format!("bus/pci/devices/{addr}");
        self.write(&format!("{d}/class"), &format!("0x{class:06x}\n"));
        self.write(&format!("{d}/vendor"), &format!("0x{vendor:04x}\n"));
        self.write(&format!("{d}/numa_node"), &format!("{numa}\n"));
        self.write(&format!("{d}/local_cpulist"), &format!("{local}\n"));
    }

    /// A netdev (`class` = `class/net`) or RDMA device (`class/infiniband`), with `device` linking to
    /// a PCI device when given.
    pub fn net(&self, class: &str, name: &str, pci: Option<&str>) {
        let dir = self.dir.path().join(class).join(name);
        std::fs::create_dir_all(&dir).unwrap();
        if let Some(addr) = pci {
            std::os::unix::fs::symlink(self.dir.path().join("bus/pci/devices").join(addr), dir.join("device")).unwrap();
        }
    }

    pub fn topology(&self) -> Topology {
        self.topology_with(&CpuSet::from_iter(self.online.iter().copied()))
    }

    pub fn topology_with(&self, allowed: &CpuSet) -> Topology {
        Topology::discover(self.root(), allowed).unwrap()
    }
}

/// 2 packages x 2 NUMA nodes x 8 cores x SMT2, one L3 per NUMA node; CPUs numbered as Linux does
/// on x86 (first threads of all cores, then their siblings).
pub fn big_node() -> Fixture {
    let mut f = Fixture::new();
    for id in 0..64 {
        let core = id % 32;
        let (package, group) = (core / 16, core / 8);
        let l3 = format!("{}-{},{}-{}", group * 8, group * 8 + 7, group * 8 + 32, group * 8 + 39);
        f.cpu(id, package, Some(0), core, core % 16, &format!("{core},{}", core + 32), Some(&l3));
    }
    for n in 0..4 {
        f.node(n, &format!("{}-{},{}-{}", n * 8, n * 8 + 7, n * 8 + 32, n * 8 + 39));
    }
    f
}

/// One package, 4 cores x SMT2 numbered pairwise, no NUMA directory, an integrated Intel GPU.
pub fn laptop() -> Fixture {
    let mut f = Fixture::new();
    for id in 0..8 {
        let core = id / 2;
        f.cpu(id, 0, Some(0), core, core, &format!("{}-{}", core * 2, core * 2 + 1), Some("0-7"));
    }
    f.pci("0000:00:02.0", 0x030000, 0x8086, -1, "0-7");
    f.pci("0000:00:1f.3", 0x040300, 0x8086, -1, "0-7");
    f.pci("0000:00:14.3", 0x028000, 0x8086, -1, "0-7");
    f.net("class/net", "wlan0", Some("0000:00:14.3"));
    f.net("class/net", "lo", None);
    f
}

/// 2 packages (one NUMA node each) x 8 cores x SMT2; 8 NVIDIA GPUs, 4 Ethernet NICs and 4 RDMA
/// devices, half on each node.
pub fn gpu_node() -> Fixture {
    let mut f = Fixture::new();
    for id in 0..32 {
        let core = id % 16;
        let package = core / 8;
        let l3 = if package == 0 { "0-7,16-23" } else { "8-15,24-31" };
        f.cpu(id, package, Some(0), core, core % 8, &format!("{core},{}", core + 16), Some(l3));
    }
    f.node(0, "0-7,16-23");
    f.node(1, "8-15,24-31");
    for g in 0..8u32 {
        let node = g / 4;
        let local = if node == 0 { "0-7,16-23" } else { "8-15,24-31" };
        f.pci(&format!("0000:{:02x}:00.0", 0x10 + g * 0x10), 0x030200, 0x10de, node as i32, local);
    }
    for n in 0..4u32 {
        let node = n / 2;
        let local = if node == 0 { "0-7,16-23" } else { "8-15,24-31" };
        let addr = format!("0000:{:02x}:00.0", 0x90 + n * 0x10);
        f.pci(&addr, 0x020000, 0x15b3, node as i32, local);
        f.net("class/net", &format!("eth{n}"), Some(&addr));
        f.net("class/infiniband", &format!("mlx5_{n}"), Some(&addr));
    }
    f.net("class/net", "lo", None);
    f
}

/// 16 cores without SMT in 4 clusters; the kernel numbers CPUs round-robin over clusters, there is
/// one L3 and no `die_id` (as on many ARM servers).
pub fn arm_node() -> Fixture {
    let mut f = Fixture::new();
    for id in 0..16 {
        f.cpu(id, 0, None, (id % 4) * 100, id, &id.to_string(), Some("0-15"));
    }
    f.node(0, "0-15");
    f
}
