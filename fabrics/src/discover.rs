//! Fabric discovery from sysfs (InfiniBand/RoCE ports and Ethernet interfaces).
//!
//! Reading goes through [`SysfsRead`] with a configurable root, so the same code runs on `/sys` and on
//! fixture trees. Parsing of individual attribute files is done by pure `parse_*` functions.
//! A single malformed attribute never aborts discovery: it becomes an "unknown" value plus a line in
//! [`Inventory::warnings`], because one odd device must not stop a whole job from launching.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::verbs::VerbsStatus;

/// Errors that stop discovery as a whole (a missing or unreadable sysfs, not one bad attribute).
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error("cannot list {path}: {source}; is sysfs mounted at {root}?")]
    NoSysfs {
        root: PathBuf,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("getifaddrs failed on this host: {0}; interface addresses are unknown")]
    IfAddrs(#[source] nix::Error),
}

/// What one host has, as discovered by its daemon. Sent in every daemon's join message, so it keeps
/// only parsed values (no raw strings, no empty GID slots).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    pub hostname: String,
    /// First TCP port of the range this node's ranks listen on (`port_base + local_rank`);
    /// 0 until the daemon reserved one with [`crate::endpoints::reserve_port_base`].
    pub port_base: u16,
    pub ib: Vec<IbDevice>,
    pub net: Vec<NetIf>,
    pub verbs: VerbsStatus,
    /// Attributes that could not be parsed, as "path: why" lines.
    pub warnings: Vec<String>,
    /// CPUs, caches, NUMA nodes and devices, for placement on every node; `None` where sysfs did
    /// not give one (the reason is in `warnings`).
    pub topology: Option<crate::topology::Topology>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IbDevice {
    pub name: String,
    pub node_type: NodeType,
    pub node_guid: u64,
    pub sys_image_guid: u64,
    pub fw_ver: String,
    /// Software RoCE (rxe) only: the netdev it sits on.
    pub parent: Option<String>,
    pub ports: Vec<IbPort>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IbPort {
    pub port: u8,
    pub state: PortState,
    pub phys_state: PhysState,
    pub lid: u16,
    pub sm_lid: u16,
    pub lmc: u8,
    pub rate: Option<Rate>,
    pub link_layer: LinkLayer,
    /// Non-zero GID entries only.
    pub gids: Vec<GidEntry>,
    /// Active MTU in bytes: only verbs knows it, so it stays `None` unless verbs loaded.
    pub active_mtu: Option<u32>,
}

impl IbPort {
    pub fn is_active(&self) -> bool {
        matches!(self.state, PortState::Active | PortState::ActiveDefer)
    }

    fn gid0(&self) -> Option<&GidEntry> {
        self.gids.iter().find(|g| g.index == 0)
    }

    /// Port GUID = low 64 bits of GID 0.
    pub fn port_guid(&self) -> Option<u64> {
        self.gid0().map(|g| g.gid.interface_id())
    }

    /// Subnet prefix = high 64 bits of GID 0.
    pub fn subnet_prefix(&self) -> Option<u64> {
        self.gid0().map(|g| g.gid.subnet_prefix())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GidEntry {
    pub index: u16,
    pub gid: Gid,
    /// `None` when the kernel answered EINVAL (unused entry or no type support).
    pub gid_type: Option<GidType>,
    /// `None` for IB GIDs (the kernel answers EINVAL there).
    pub netdev: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Gid(pub [u8; 16]);

impl Gid {
    pub fn is_zero(&self) -> bool {
        self.0.iter().all(|b| *b == 0)
    }

    pub fn subnet_prefix(&self) -> u64 {
        u64::from_be_bytes(self.0[..8].try_into().unwrap_or_default())
    }

    pub fn interface_id(&self) -> u64 {
        u64::from_be_bytes(self.0[8..].try_into().unwrap_or_default())
    }

    /// The IPv4 address of an IPv4-mapped GID (`::ffff:a.b.c.d`), the form RoCE uses for IPv4.
    pub fn ipv4_mapped(&self) -> Option<Ipv4Addr> {
        let g = &self.0;
        if g[..10].iter().all(|b| *b == 0) && g[10] == 0xff && g[11] == 0xff {
            Some(Ipv4Addr::new(g[12], g[13], g[14], g[15]))
        } else {
            None
        }
    }

    pub fn is_link_local(&self) -> bool {
        self.0[0] == 0xfe && (self.0[1] & 0xc0) == 0x80
    }
}

impl fmt::Display for Gid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, pair) in self.0.chunks(2).enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{:02x}{:02x}", pair[0], pair[1])?;
        }
        Ok(())
    }
}

impl fmt::Debug for Gid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Gid({self})")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GidType {
    /// `IB/RoCE v1`
    IbRoceV1,
    /// `RoCE v2`
    RoceV2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeType {
    Ca,
    Switch,
    Router,
    Rnic,
    Other(u8),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PortState {
    Nop,
    Down,
    Init,
    Armed,
    Active,
    ActiveDefer,
    Other(u8),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PhysState {
    Sleep,
    Polling,
    Disabled,
    PortConfigurationTraining,
    LinkUp,
    LinkErrorRecovery,
    PhyTest,
    Other(u8),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinkLayer {
    InfiniBand,
    Ethernet,
    Unknown,
}

/// A port rate. `mbps` is exact: sysfs prints at most three decimals (`53.125 Gb/sec`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rate {
    pub mbps: u32,
    /// Lane count (`4X` -> 4).
    pub width: u8,
    /// `EDR`, `HDR`, ...; `None` in the older `10 Gb/sec (4X)` format.
    pub speed: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetIf {
    pub name: String,
    /// 6 bytes for Ethernet, 20 for IPoIB; empty if unreadable.
    pub mac: Vec<u8>,
    pub mtu: u32,
    /// `None` when the kernel does not know (EINVAL, or `-1`).
    pub speed_mbps: Option<u32>,
    pub operstate: OperState,
    /// ARPHRD_* value: 1 Ethernet, 32 IPoIB, 772 loopback.
    pub if_type: u16,
    pub loopback: bool,
    /// No `device` link: a software interface (bridge, veth, ifb, lo, ...).
    pub is_virtual: bool,
    /// The RDMA device that carries this netdev (RoCE or IPoIB), if any.
    pub rdma_device: Option<String>,
    pub addrs: Vec<NetAddr>,
}

impl NetIf {
    /// Up enough to carry traffic: `up`, or `unknown` as loopback and some tunnels report.
    pub fn is_up(&self) -> bool {
        matches!(self.operstate, OperState::Up | OperState::Unknown)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OperState {
    Up,
    Down,
    Dormant,
    LowerLayerDown,
    NotPresent,
    Testing,
    Unknown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetAddr {
    pub ip: IpAddr,
    pub prefix_len: u8,
}

/// One interface address as getifaddrs reports it; injectable so fixtures can supply addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IfAddr {
    pub ifname: String,
    pub ip: IpAddr,
    pub prefix_len: u8,
}

impl IfAddr {
    pub fn new(ifname: &str, ip: IpAddr, prefix_len: u8) -> Self {
        IfAddr {
            ifname: ifname.to_string(),
            ip,
            prefix_len,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pure parsers for single sysfs attributes. Each takes the file content (trailing newline allowed).

/// `1: CA` -> [`NodeType::Ca`].
pub fn parse_node_type(s: &str) -> Option<NodeType> {
    let n = leading_number(s)?;
    Some(match n {
        1 => NodeType::Ca,
        2 => NodeType::Switch,
        3 => NodeType::Router,
        4 => NodeType::Rnic,
        n => NodeType::Other(n),
    })
}

/// `4: ACTIVE` -> [`PortState::Active`].
pub fn parse_port_state(s: &str) -> Option<PortState> {
    Some(match leading_number(s)? {
        0 => PortState::Nop,
        1 => PortState::Down,
        2 => PortState::Init,
        3 => PortState::Armed,
        4 => PortState::Active,
        5 => PortState::ActiveDefer,
        n => PortState::Other(n),
    })
}

/// `5: LinkUp` -> [`PhysState::LinkUp`].
pub fn parse_phys_state(s: &str) -> Option<PhysState> {
    Some(match leading_number(s)? {
        1 => PhysState::Sleep,
        2 => PhysState::Polling,
        3 => PhysState::Disabled,
        4 => PhysState::PortConfigurationTraining,
        5 => PhysState::LinkUp,
        6 => PhysState::LinkErrorRecovery,
        7 => PhysState::PhyTest,
        n => PhysState::Other(n),
    })
}

fn leading_number(s: &str) -> Option<u8> {
    let (num, _) = s.trim().split_once(':')?;
    num.trim().parse().ok()
}

/// `b83f:d203:00a4:1c2e` -> 0xb83fd20300a41c2e.
pub fn parse_guid(s: &str) -> Option<u64> {
    let groups: Vec<&str> = s.trim().split(':').collect();
    if groups.len() != 4 {
        return None;
    }
    let mut v = 0u64;
    for g in groups {
        if g.len() != 4 {
            return None;
        }
        v = (v << 16) | u64::from(u16::from_str_radix(g, 16).ok()?);
    }
    Some(v)
}

/// `fe80:0000:0000:0000:b83f:d203:00a4:1c2f` -> 16 bytes.
pub fn parse_gid(s: &str) -> Option<Gid> {
    let groups: Vec<&str> = s.trim().split(':').collect();
    if groups.len() != 8 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, g) in groups.iter().enumerate() {
        if g.is_empty() || g.len() > 4 {
            return None;
        }
        let v = u16::from_str_radix(g, 16).ok()?;
        out[2 * i..2 * i + 2].copy_from_slice(&v.to_be_bytes());
    }
    Some(Gid(out))
}

/// `0x1a` -> 26 (hex without padding; also accepts plain decimal for robustness).
pub fn parse_lid(s: &str) -> Option<u16> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u16::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// `100 Gb/sec (4X EDR)`, `2.5 Gb/sec (1X SDR)`, older kernels' `10 Gb/sec (4X)`.
pub fn parse_rate(s: &str) -> Option<Rate> {
    let s = s.trim();
    let (num, rest) = s.split_once(' ')?;
    let rest = rest.trim_start().strip_prefix("Gb/sec")?.trim();
    let mbps = parse_gbps_as_mbps(num)?;
    let inner = rest.strip_prefix('(')?.strip_suffix(')')?;
    let mut words = inner.split_whitespace();
    let width = words.next()?.strip_suffix(['X', 'x'])?.parse().ok()?;
    let speed = words.next().map(str::to_string);
    if words.next().is_some() {
        return None;
    }
    Some(Rate { mbps, width, speed })
}

fn parse_gbps_as_mbps(num: &str) -> Option<u32> {
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty() || frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let int: u32 = int.parse().ok()?;
    let mut frac_val: u32 = if frac.is_empty() {
        0
    } else {
        frac.parse().ok()?
    };
    for _ in frac.len()..3 {
        frac_val *= 10;
    }
    int.checked_mul(1000)?.checked_add(frac_val)
}

pub fn parse_link_layer(s: &str) -> LinkLayer {
    match s.trim() {
        "InfiniBand" => LinkLayer::InfiniBand,
        "Ethernet" => LinkLayer::Ethernet,
        _ => LinkLayer::Unknown,
    }
}

pub fn parse_gid_type(s: &str) -> Option<GidType> {
    match s.trim() {
        "IB/RoCE v1" => Some(GidType::IbRoceV1),
        "RoCE v2" => Some(GidType::RoceV2),
        _ => None,
    }
}

/// `aa:bb:cc:dd:ee:ff` (or the 20-byte IPoIB form) -> bytes.
pub fn parse_mac(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if s.is_empty() {
        return Some(Vec::new());
    }
    s.split(':')
        .map(|b| {
            if b.len() == 2 {
                u8::from_str_radix(b, 16).ok()
            } else {
                None
            }
        })
        .collect()
}

/// Mb/s; `-1` (unknown) -> `None`.
pub fn parse_speed(s: &str) -> Option<u32> {
    let v: i64 = s.trim().parse().ok()?;
    u32::try_from(v).ok().filter(|v| *v > 0)
}

pub fn parse_operstate(s: &str) -> OperState {
    match s.trim() {
        "up" => OperState::Up,
        "down" => OperState::Down,
        "dormant" => OperState::Dormant,
        "lowerlayerdown" => OperState::LowerLayerDown,
        "notpresent" => OperState::NotPresent,
        "testing" => OperState::Testing,
        _ => OperState::Unknown,
    }
}

// ---------------------------------------------------------------------------------------------
// Reading.

/// Read access to a sysfs-like tree, by path relative to its root (`class/net/eth0/mtu`).
pub trait SysfsRead {
    /// File content; errors keep their OS code so EINVAL can be told apart.
    fn read(&self, rel: &str) -> io::Result<String>;
    /// Entry names of a directory, in any order.
    fn list(&self, rel: &str) -> io::Result<Vec<String>>;
    /// Whether the path exists (following symlinks).
    fn exists(&self, rel: &str) -> bool;
    /// How to name the tree in messages.
    fn describe(&self) -> PathBuf;
}

/// A real directory tree: `/sys` or a fixture.
pub struct DirSysfs {
    root: PathBuf,
}

impl DirSysfs {
    pub fn new(root: &Path) -> Self {
        DirSysfs {
            root: root.to_path_buf(),
        }
    }
}

impl SysfsRead for DirSysfs {
    fn read(&self, rel: &str) -> io::Result<String> {
        std::fs::read_to_string(self.root.join(rel))
    }

    fn list(&self, rel: &str) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(self.root.join(rel))? {
            out.push(e?.file_name().to_string_lossy().into_owned());
        }
        Ok(out)
    }

    fn exists(&self, rel: &str) -> bool {
        self.root.join(rel).exists()
    }

    fn describe(&self) -> PathBuf {
        self.root.clone()
    }
}

/// "Attribute not there" for our purposes: the file is missing, or the kernel refused with EINVAL
/// (unused GID slots, `speed` of a down link, `ndevs` of IB GIDs).
fn is_absent(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(nix::libc::EINVAL)
}

struct Reader<'a> {
    fs: &'a dyn SysfsRead,
    warnings: Vec<String>,
}

impl Reader<'_> {
    fn opt(&mut self, rel: &str) -> Option<String> {
        match self.fs.read(rel) {
            Ok(s) => Some(s),
            Err(e) if is_absent(&e) => None,
            Err(e) => {
                self.warnings
                    .push(format!("{}/{rel}: {e}", self.fs.describe().display()));
                None
            }
        }
    }

    fn parsed<T>(&mut self, rel: &str, what: &str, f: impl FnOnce(&str) -> Option<T>) -> Option<T> {
        let s = self.opt(rel)?;
        let v = f(&s);
        if v.is_none() {
            self.warnings.push(format!(
                "{}/{rel}: cannot parse {:?} as {what}; value ignored",
                self.fs.describe().display(),
                s.trim()
            ));
        }
        v
    }

    fn list_sorted(&mut self, rel: &str) -> Vec<String> {
        match self.fs.list(rel) {
            Ok(mut v) => {
                v.sort();
                v
            }
            Err(e) if is_absent(&e) => Vec::new(),
            Err(e) => {
                self.warnings
                    .push(format!("{}/{rel}: {e}", self.fs.describe().display()));
                Vec::new()
            }
        }
    }
}

/// Numeric names sort by value (`ports/10` after `ports/9`); others are skipped.
fn numeric_entries(names: Vec<String>) -> Vec<u32> {
    let mut v: Vec<u32> = names.iter().filter_map(|n| n.parse().ok()).collect();
    v.sort_unstable();
    v
}

impl Inventory {
    /// Discovers fabrics under a sysfs root (`/sys` or a fixture), with interface addresses given by
    /// the caller because they are not in sysfs. Hostname and port base are left for the daemon.
    pub fn discover(root: &Path, addrs: &[IfAddr]) -> Result<Inventory, DiscoverError> {
        Self::discover_from(&DirSysfs::new(root), addrs)
    }

    /// Like [`Inventory::discover`] over any [`SysfsRead`] (tests inject read errors this way).
    pub fn discover_from(fs: &dyn SysfsRead, addrs: &[IfAddr]) -> Result<Inventory, DiscoverError> {
        // Without class/net there is no sysfs at all; class/infiniband is legitimately absent.
        let net_names = fs
            .list("class/net")
            .map_err(|source| DiscoverError::NoSysfs {
                root: fs.describe(),
                path: fs.describe().join("class/net"),
                source,
            })?;
        let mut r = Reader {
            fs,
            warnings: Vec::new(),
        };
        let mut ib = Vec::new();
        for dev in r.list_sorted("class/infiniband") {
            ib.push(read_ib_device(&mut r, &dev));
        }
        let mut net_names = net_names;
        net_names.sort();
        let mut net = Vec::new();
        for name in net_names {
            net.push(read_netif(&mut r, &name, &ib, addrs));
        }
        Ok(Inventory {
            hostname: String::new(),
            port_base: 0,
            ib,
            net,
            verbs: VerbsStatus::NotProbed,
            warnings: r.warnings,
            topology: None,
        })
    }

    /// Discovers this host: `/sys`, getifaddrs, the hostname, verbs (for active MTUs) if it loads,
    /// and the CPU topology.
    pub fn discover_system() -> Result<Inventory, DiscoverError> {
        let addrs = system_addrs()?;
        let mut inv = Self::discover(Path::new("/sys"), &addrs)?;
        inv.hostname = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
        let probe = crate::verbs::probe();
        for (dev, port, mtu) in &probe.active_mtus {
            if let Some(p) = inv
                .ib
                .iter_mut()
                .filter(|d| &d.name == dev)
                .flat_map(|d| d.ports.iter_mut())
                .find(|p| p.port == *port)
            {
                p.active_mtu = Some(*mtu);
            }
        }
        inv.verbs = probe.status;
        match crate::topology::Topology::discover_system() {
            Ok(t) => inv.topology = Some(t),
            Err(e) => inv.warnings.push(format!("topology: {e}")),
        }
        Ok(inv)
    }

    /// Interface names, for error messages ("it has: eth0, lo").
    pub fn interface_names(&self) -> Vec<String> {
        self.net.iter().map(|n| n.name.clone()).collect()
    }
}

/// Interface addresses of this host via getifaddrs (IPv4 and IPv6 only).
pub fn system_addrs() -> Result<Vec<IfAddr>, DiscoverError> {
    let mut out = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs().map_err(DiscoverError::IfAddrs)? {
        let Some(addr) = ifa.address else { continue };
        let prefix = |mask: Option<IpAddr>| match mask {
            Some(IpAddr::V4(m)) => u32::from(m).count_ones() as u8,
            Some(IpAddr::V6(m)) => u128::from(m).count_ones() as u8,
            None => 0,
        };
        if let Some(v4) = addr.as_sockaddr_in() {
            let mask = ifa
                .netmask
                .as_ref()
                .and_then(|m| m.as_sockaddr_in())
                .map(|m| IpAddr::V4(m.ip()));
            out.push(IfAddr::new(
                &ifa.interface_name,
                IpAddr::V4(v4.ip()),
                prefix(mask),
            ));
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            let mask = ifa
                .netmask
                .as_ref()
                .and_then(|m| m.as_sockaddr_in6())
                .map(|m| IpAddr::V6(m.ip()));
            out.push(IfAddr::new(
                &ifa.interface_name,
                IpAddr::V6(v6.ip()),
                prefix(mask),
            ));
        }
    }
    Ok(out)
}

fn read_ib_device(r: &mut Reader<'_>, dev: &str) -> IbDevice {
    let base = format!("class/infiniband/{dev}");
    let node_type = r
        .parsed(&format!("{base}/node_type"), "a node type", parse_node_type)
        .unwrap_or(NodeType::Other(0));
    let node_guid = r
        .parsed(&format!("{base}/node_guid"), "a GUID", parse_guid)
        .unwrap_or(0);
    let sys_image_guid = r
        .parsed(&format!("{base}/sys_image_guid"), "a GUID", parse_guid)
        .unwrap_or(0);
    let fw_ver = r
        .opt(&format!("{base}/fw_ver"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let parent = r
        .opt(&format!("{base}/parent"))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    let mut ports = Vec::new();
    for n in numeric_entries(r.list_sorted(&format!("{base}/ports"))) {
        let Ok(port) = u8::try_from(n) else { continue };
        ports.push(read_ib_port(r, &format!("{base}/ports/{n}"), port));
    }
    IbDevice {
        name: dev.to_string(),
        node_type,
        node_guid,
        sys_image_guid,
        fw_ver,
        parent,
        ports,
    }
}

fn read_ib_port(r: &mut Reader<'_>, base: &str, port: u8) -> IbPort {
    let state = r
        .parsed(&format!("{base}/state"), "a port state", parse_port_state)
        .unwrap_or(PortState::Other(0));
    let phys_state = r
        .parsed(
            &format!("{base}/phys_state"),
            "a physical state",
            parse_phys_state,
        )
        .unwrap_or(PhysState::Other(0));
    let lid = r
        .parsed(&format!("{base}/lid"), "a LID", parse_lid)
        .unwrap_or(0);
    let sm_lid = r
        .parsed(&format!("{base}/sm_lid"), "a LID", parse_lid)
        .unwrap_or(0);
    let lmc = r
        .parsed(&format!("{base}/lid_mask_count"), "a decimal count", |s| {
            s.trim().parse().ok()
        })
        .unwrap_or(0);
    let rate = r.parsed(&format!("{base}/rate"), "a rate", parse_rate);
    let link_layer = r
        .opt(&format!("{base}/link_layer"))
        .map(|s| parse_link_layer(&s))
        .unwrap_or(LinkLayer::Unknown);
    let mut gids = Vec::new();
    for idx in numeric_entries(r.list_sorted(&format!("{base}/gids"))) {
        let Ok(index) = u16::try_from(idx) else {
            continue;
        };
        let Some(gid) = r.parsed(&format!("{base}/gids/{idx}"), "a GID", parse_gid) else {
            continue;
        };
        if gid.is_zero() {
            continue;
        }
        let gid_type = r
            .opt(&format!("{base}/gid_attrs/types/{idx}"))
            .and_then(|s| parse_gid_type(&s));
        let netdev = r
            .opt(&format!("{base}/gid_attrs/ndevs/{idx}"))
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty());
        gids.push(GidEntry {
            index,
            gid,
            gid_type,
            netdev,
        });
    }
    IbPort {
        port,
        state,
        phys_state,
        lid,
        sm_lid,
        lmc,
        rate,
        link_layer,
        gids,
        active_mtu: None,
    }
}

fn read_netif(r: &mut Reader<'_>, name: &str, ib: &[IbDevice], addrs: &[IfAddr]) -> NetIf {
    let base = format!("class/net/{name}");
    let mac = r
        .parsed(&format!("{base}/address"), "a MAC address", parse_mac)
        .unwrap_or_default();
    let mtu = r
        .parsed(&format!("{base}/mtu"), "an MTU", |s| s.trim().parse().ok())
        .unwrap_or(0);
    // speed: EINVAL (down/unsupported) is absent, -1 parses to None: both mean "unknown", no warning.
    let speed_mbps = r
        .opt(&format!("{base}/speed"))
        .and_then(|s| parse_speed(&s));
    let operstate = r
        .opt(&format!("{base}/operstate"))
        .map(|s| parse_operstate(&s))
        .unwrap_or(OperState::Unknown);
    let if_type = r
        .parsed(&format!("{base}/type"), "an interface type", |s| {
            s.trim().parse().ok()
        })
        .unwrap_or(0);
    let is_virtual = !r.fs.exists(&format!("{base}/device"));
    let loopback = if_type == 772;
    let rdma_device = rdma_device_of(r, name, &base, ib);
    let addrs = addrs
        .iter()
        .filter(|a| a.ifname == name)
        .map(|a| NetAddr {
            ip: a.ip,
            prefix_len: a.prefix_len,
        })
        .collect();
    NetIf {
        name: name.to_string(),
        mac,
        mtu,
        speed_mbps,
        operstate,
        if_type,
        loopback,
        is_virtual,
        rdma_device,
        addrs,
    }
}

/// A netdev carries RDMA if a GID names it, an rxe device has it as parent, or its PCI function
/// also has an infiniband child (`device/infiniband/<ibdev>`, which is how IPoIB and mlx5 look).
fn rdma_device_of(r: &mut Reader<'_>, name: &str, base: &str, ib: &[IbDevice]) -> Option<String> {
    for d in ib {
        let by_gid = d
            .ports
            .iter()
            .flat_map(|p| &p.gids)
            .any(|g| g.netdev.as_deref() == Some(name));
        if by_gid || d.parent.as_deref() == Some(name) {
            return Some(d.name.clone());
        }
    }
    if r.fs.exists(&format!("{base}/device/infiniband")) {
        return r
            .list_sorted(&format!("{base}/device/infiniband"))
            .into_iter()
            .next();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[test]
    fn rates_in_both_kernel_formats() {
        assert_eq!(
            parse_rate("100 Gb/sec (4X EDR)\n"),
            Some(Rate {
                mbps: 100_000,
                width: 4,
                speed: Some("EDR".into())
            })
        );
        assert_eq!(
            parse_rate("2.5 Gb/sec (1X SDR)"),
            Some(Rate {
                mbps: 2500,
                width: 1,
                speed: Some("SDR".into())
            })
        );
        assert_eq!(
            parse_rate("10 Gb/sec (4X)\n"),
            Some(Rate {
                mbps: 10_000,
                width: 4,
                speed: None
            })
        );
        assert_eq!(
            parse_rate("53.125 Gb/sec (1X HDR)").map(|r| r.mbps),
            Some(53_125)
        );
        assert_eq!(parse_rate("fast"), None);
        assert_eq!(parse_rate("10 Gb/sec"), None);
        assert_eq!(parse_rate("1.2345 Gb/sec (1X)"), None);
    }

    #[test]
    fn states_types_and_lids() {
        assert_eq!(parse_port_state("4: ACTIVE\n"), Some(PortState::Active));
        assert_eq!(parse_port_state("1: DOWN"), Some(PortState::Down));
        assert_eq!(parse_port_state("9: NEW"), Some(PortState::Other(9)));
        assert_eq!(parse_port_state("ACTIVE"), None);
        assert_eq!(parse_phys_state("5: LinkUp"), Some(PhysState::LinkUp));
        assert_eq!(parse_phys_state("3: Disabled"), Some(PhysState::Disabled));
        assert_eq!(parse_node_type("1: CA\n"), Some(NodeType::Ca));
        assert_eq!(parse_node_type("4: RNIC"), Some(NodeType::Rnic));
        assert_eq!(parse_lid("0x1a\n"), Some(26));
        assert_eq!(parse_lid("0x0"), Some(0));
        assert_eq!(parse_lid("0xzz"), None);
        assert_eq!(parse_link_layer("InfiniBand\n"), LinkLayer::InfiniBand);
        assert_eq!(parse_link_layer("Ethernet"), LinkLayer::Ethernet);
        assert_eq!(parse_link_layer("??"), LinkLayer::Unknown);
        assert_eq!(parse_gid_type("RoCE v2\n"), Some(GidType::RoceV2));
        assert_eq!(parse_gid_type("IB/RoCE v1"), Some(GidType::IbRoceV1));
    }

    #[test]
    fn guids_and_gids() {
        assert_eq!(
            parse_guid("b83f:d203:00a4:1c2e\n"),
            Some(0xb83f_d203_00a4_1c2e)
        );
        assert_eq!(parse_guid("b83f:d203:00a4"), None);
        assert_eq!(parse_guid("b83f:d203:00a4:1c2"), None);
        let g = parse_gid("fe80:0000:0000:0000:b83f:d203:00a4:1c2f\n").unwrap();
        assert_eq!(g.subnet_prefix(), 0xfe80_0000_0000_0000);
        assert_eq!(g.interface_id(), 0xb83f_d203_00a4_1c2f);
        assert!(g.is_link_local());
        assert_eq!(g.ipv4_mapped(), None);
        let m = parse_gid("0000:0000:0000:0000:0000:ffff:0a00:0005").unwrap();
        assert_eq!(m.ipv4_mapped(), Some(Ipv4Addr::new(10, 0, 0, 5)));
        assert!(parse_gid("0000:0000:0000:0000:0000:0000:0000:0000")
            .unwrap()
            .is_zero());
        assert_eq!(parse_gid("fe80::1"), None);
    }

    #[test]
    fn ethernet_attributes() {
        assert_eq!(
            parse_mac("02:fc:00:00:00:01\n"),
            Some(vec![2, 0xfc, 0, 0, 0, 1])
        );
        assert_eq!(parse_mac("02:fc:0"), None);
        assert_eq!(parse_speed("-1\n"), None);
        assert_eq!(parse_speed("25000\n"), Some(25000));
        assert_eq!(parse_operstate("up\n"), OperState::Up);
        assert_eq!(parse_operstate("unknown"), OperState::Unknown);
    }

    proptest! {
        #[test]
        fn gid_display_roundtrips(bytes in proptest::array::uniform16(any::<u8>())) {
            let g = Gid(bytes);
            prop_assert_eq!(parse_gid(&g.to_string()), Some(g));
        }

        #[test]
        fn guid_roundtrips(v in any::<u64>()) {
            let s = format!("{:04x}:{:04x}:{:04x}:{:04x}", v >> 48, (v >> 32) & 0xffff, (v >> 16) & 0xffff, v & 0xffff);
            prop_assert_eq!(parse_guid(&s), Some(v));
        }

        #[test]
        fn rate_parses_thousandths(int in 0u32..4_000_000, frac in 0u32..1000) {
            let s = format!("{int}.{frac:03} Gb/sec (4X NDR)");
            prop_assert_eq!(parse_rate(&s).map(|r| r.mbps), Some(int * 1000 + frac));
        }

        #[test]
        fn parsers_never_panic(s in ".{0,64}") {
            let _ = parse_rate(&s);
            let _ = parse_gid(&s);
            let _ = parse_guid(&s);
            let _ = parse_mac(&s);
            let _ = parse_lid(&s);
            let _ = parse_port_state(&s);
        }
    }

    /// An in-memory tree that can answer EINVAL, which plain fixture files cannot do.
    struct MemSysfs {
        files: BTreeMap<String, io::Result<String>>,
    }

    impl MemSysfs {
        fn new(entries: &[(&str, Option<&str>)]) -> Self {
            let files = entries
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        Some(s) => Ok(s.to_string()),
                        None => Err(io::Error::from_raw_os_error(nix::libc::EINVAL)),
                    };
                    (k.to_string(), v)
                })
                .collect();
            MemSysfs { files }
        }
    }

    impl SysfsRead for MemSysfs {
        fn read(&self, rel: &str) -> io::Result<String> {
            match self.files.get(rel) {
                Some(Ok(s)) => Ok(s.clone()),
                Some(Err(e)) => Err(io::Error::from_raw_os_error(e.raw_os_error().unwrap_or(0))),
                None => Err(io::ErrorKind::NotFound.into()),
            }
        }
        fn list(&self, rel: &str) -> io::Result<Vec<String>> {
            let prefix = format!("{rel}/");
            let mut out: Vec<String> = self
                .files
                .keys()
                .filter_map(|k| k.strip_prefix(&prefix))
                .map(|rest| rest.split('/').next().unwrap_or(rest).to_string())
                .collect();
            out.dedup();
            if out.is_empty() {
                return Err(io::ErrorKind::NotFound.into());
            }
            Ok(out)
        }
        fn exists(&self, rel: &str) -> bool {
            let prefix = format!("{rel}/");
            self.files
                .keys()
                .any(|k| k == rel || k.starts_with(&prefix))
        }
        fn describe(&self) -> PathBuf {
            PathBuf::from("mem")
        }
    }

    #[test]
    fn einval_means_absent_without_warnings() {
        let p = "class/infiniband/mlx5_0/ports/1";
        let fs = MemSysfs::new(&[
            ("class/infiniband/mlx5_0/node_type", Some("1: CA\n")),
            (&format!("{p}/state"), Some("4: ACTIVE\n")),
            (&format!("{p}/link_layer"), Some("InfiniBand\n")),
            (
                &format!("{p}/gids/0"),
                Some("fe80:0000:0000:0000:b83f:d203:00a4:1c2f\n"),
            ),
            (&format!("{p}/gid_attrs/types/0"), None),
            (&format!("{p}/gid_attrs/ndevs/0"), None),
            (
                &format!("{p}/gids/1"),
                Some("0000:0000:0000:0000:0000:0000:0000:0000\n"),
            ),
            (&format!("{p}/gid_attrs/types/1"), None),
            ("class/net/ib0/type", Some("32\n")),
            ("class/net/ib0/speed", None),
            ("class/net/ib0/operstate", Some("up\n")),
        ]);
        let inv = Inventory::discover_from(&fs, &[]).unwrap();
        assert!(inv.warnings.is_empty(), "{:?}", inv.warnings);
        let port = &inv.ib[0].ports[0];
        assert_eq!(port.gids.len(), 1, "all-zero GID 1 must be dropped");
        assert_eq!(port.gids[0].gid_type, None);
        assert_eq!(port.gids[0].netdev, None);
        assert_eq!(inv.net[0].speed_mbps, None);
        assert_eq!(port.port_guid(), Some(0xb83f_d203_00a4_1c2f));
    }

    #[test]
    fn bad_attribute_becomes_warning_naming_the_file() {
        let fs = MemSysfs::new(&[
            ("class/infiniband/mlx5_0/ports/1/rate", Some("very fast\n")),
            ("class/net/lo/type", Some("772\n")),
        ]);
        let inv = Inventory::discover_from(&fs, &[]).unwrap();
        assert_eq!(inv.ib[0].ports[0].rate, None);
        assert_eq!(inv.warnings.len(), 1);
        assert!(
            inv.warnings[0].contains("mem/class/infiniband/mlx5_0/ports/1/rate"),
            "{}",
            inv.warnings[0]
        );
        assert!(inv.warnings[0].contains("very fast"));
    }

    #[test]
    fn missing_sysfs_is_an_error_naming_the_root() {
        let err = Inventory::discover(Path::new("/nonexistent-rlaunch-root"), &[]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent-rlaunch-root/class/net"), "{msg}");
    }
}
