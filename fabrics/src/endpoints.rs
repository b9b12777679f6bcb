//! Endpoint assignment: from every node's inventory to every rank's NIC, TCP port and RDMA address.
//!
//! [`assign`] is a pure function of its inputs, so the launcher, each daemon and each rank compute the
//! same answer from the same inventories. The rules:
//!
//! - **Port**: rank with local rank `l` on node `n` listens on `port_base(n) + l`.
//! - **NIC**: `nics(n)[l % nics(n).len()]`, where `nics(n)` is the node's usable NIC list, ordered
//!   RDMA-capable first, then physical, then virtual interfaces (names sorted within each group).
//!   With a NIC filter the list is exactly the filter, in the order the user gave.
//!   [`NodePlan::choose_nics`] may then rewrite the list so that the same rule yields per-rank
//!   choices (placement's nearest NIC).
//! - **TCP usable**: not loopback, up (or `unknown`), with a routable address (IPv4 other than
//!   169.254/16, or IPv6 other than fe80::/10). A single-node job falls back to loopback.
//! - **RDMA usable**: port ACTIVE, link layer InfiniBand or Ethernet (RoCE), verbs not reported
//!   unavailable. IB uses GID index 0; RoCE prefers a RoCE v2 IPv4-mapped GID, then RoCE v2, then
//!   v1 IPv4-mapped, then any.
//! - **auto**: RDMA only when every node has at least one usable RDMA port, else TCP.

use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};

use crate::discover::{Gid, GidEntry, GidType, IbDevice, IbPort, Inventory, LinkLayer, NetIf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FabricChoice {
    Auto,
    Tcp,
    Rdma,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Fabric {
    Tcp,
    Rdma,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NicKind {
    Tcp,
    Ib,
    Roce,
}

/// One usable NIC of a node, with everything a peer needs to reach a rank on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nic {
    pub kind: NicKind,
    /// The netdev carrying `ip` (empty for an IB port without IPoIB address).
    pub ifname: String,
    /// Where the rank's TCP listener is reached (also used to bootstrap RDMA connections).
    pub ip: Option<IpAddr>,
    pub mac: Vec<u8>,
    /// Bytes: netdev MTU for TCP, IB MTU for RDMA (0 = unknown: IB port without verbs).
    pub mtu: u32,
    pub speed_mbps: Option<u32>,
    pub rdma: Option<RdmaPort>,
}

impl Nic {
    /// The name a user would type in a NIC filter.
    pub fn label(&self) -> String {
        match &self.rdma {
            Some(r) => format!("{}:{}", r.device, r.port),
            None => self.ifname.clone(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RdmaPort {
    pub device: String,
    pub port: u8,
    pub link_layer: LinkLayer,
    pub lid: u16,
    pub gid_index: u16,
    pub gid: Gid,
    pub gid_type: Option<GidType>,
    pub port_guid: u64,
    pub subnet_prefix: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePlan {
    pub node: u32,
    pub hostname: String,
    pub local_ranks: u32,
    pub port_base: u16,
    /// Never empty for a node with ranks.
    pub nics: Vec<Nic>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub fabric: Fabric,
    pub nodes: Vec<NodePlan>,
}

/// Where one rank can be reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub node: u32,
    pub local_rank: u32,
    pub host: String,
    pub ip: Option<IpAddr>,
    pub port: u16,
    pub nic: Nic,
}

impl NodePlan {
    /// Gives local rank `l` the NIC `nics[choice[l]]` (placement's nearest NIC) under the table's
    /// unchanged rule `nics[l % len]`: the list becomes the shortest repeating pattern of the
    /// choices, so it grows only where locality breaks the round-robin. A choice that does not fit
    /// (wrong length, index out of range) leaves the list as it is.
    pub fn choose_nics(&mut self, choice: &[usize]) {
        if choice.len() != self.local_ranks as usize || choice.iter().any(|&c| c >= self.nics.len()) {
            return;
        }
        let Some(period) = (1..=choice.len()).find(|&p| (0..choice.len()).all(|l| choice[l] == choice[l % p])) else {
            return;
        };
        self.nics = choice[..period].iter().map(|&c| self.nics[c].clone()).collect();
    }
}

/// The NIC rule, on its own so that C readers of the table can mirror it.
pub fn nic_index(local_rank: u32, nic_count: usize) -> Option<usize> {
    (nic_count > 0).then(|| local_rank as usize % nic_count)
}

impl Assignment {
    pub fn endpoint(&self, node: u32, local_rank: u32) -> Option<Endpoint> {
        endpoint_in(&self.nodes, node, local_rank)
    }
}

/// The port and NIC rules applied to a node list (shared with the endpoint table).
pub fn endpoint_in(nodes: &[NodePlan], node: u32, local_rank: u32) -> Option<Endpoint> {
    let n = nodes.get(node as usize)?;
    if local_rank >= n.local_ranks {
        return None;
    }
    let nic = n.nics[nic_index(local_rank, n.nics.len())?].clone();
    let port = u16::try_from(u32::from(n.port_base) + local_rank).ok()?;
    Some(Endpoint {
        node,
        local_rank,
        host: n.hostname.clone(),
        ip: nic.ip,
        port,
        nic,
    })
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AssignError {
    #[error(
        "{inventories} node inventories but {counts} local rank counts; pass one count per node"
    )]
    CountMismatch { inventories: usize, counts: usize },
    #[error("{node} has no interface named {name}; it has: {available}")]
    NoSuchNic {
        node: String,
        name: String,
        available: String,
    },
    #[error("{node}: {name} cannot be used: {why}")]
    NicUnusable {
        node: String,
        name: String,
        why: String,
    },
    #[error("{node} has no usable TCP interface (up, not loopback, with a routable address); it has: {available}")]
    NoTcp { node: String, available: String },
    #[error("{node} has no usable RDMA port ({why}); use --fabric tcp or fix the port")]
    NoRdma { node: String, why: String },
    #[error("{node} has no reserved port base for {local_ranks} ranks (port_base {port_base}); the daemon must call reserve_port_base")]
    PortBase {
        node: String,
        port_base: u16,
        local_ranks: u32,
    },
}

fn node_label(i: usize, inv: &Inventory) -> String {
    if inv.hostname.is_empty() {
        format!("node #{i}")
    } else {
        format!("node {} (#{i})", inv.hostname)
    }
}

/// Computes every node's NIC list and the fabric. `nic_filter` empty = no filter.
pub fn assign(
    inventories: &[Inventory],
    local_ranks: &[u32],
    choice: FabricChoice,
    nic_filter: &[String],
) -> Result<Assignment, AssignError> {
    if inventories.len() != local_ranks.len() {
        return Err(AssignError::CountMismatch {
            inventories: inventories.len(),
            counts: local_ranks.len(),
        });
    }
    for (i, (inv, &n)) in inventories.iter().zip(local_ranks).enumerate() {
        let fits = u32::from(inv.port_base)
            .checked_add(n.saturating_sub(1))
            .is_some_and(|last| last <= 65535);
        if n > 0 && (inv.port_base == 0 || !fits) {
            return Err(AssignError::PortBase {
                node: node_label(i, inv),
                port_base: inv.port_base,
                local_ranks: n,
            });
        }
    }
    let single_node = inventories.len() == 1;
    let plan = |fabric: Fabric| -> Result<Assignment, AssignError> {
        let mut nodes = Vec::with_capacity(inventories.len());
        for (i, (inv, &n)) in inventories.iter().zip(local_ranks).enumerate() {
            let nics = match fabric {
                Fabric::Tcp => tcp_nics(i, inv, nic_filter, single_node)?,
                Fabric::Rdma => rdma_nics(i, inv, nic_filter)?,
            };
            nodes.push(NodePlan {
                node: i as u32,
                hostname: inv.hostname.clone(),
                local_ranks: n,
                port_base: inv.port_base,
                nics,
            });
        }
        Ok(Assignment { fabric, nodes })
    };
    match choice {
        FabricChoice::Tcp => plan(Fabric::Tcp),
        FabricChoice::Rdma => plan(Fabric::Rdma),
        FabricChoice::Auto => plan(Fabric::Rdma).or_else(|_| plan(Fabric::Tcp)),
    }
}

fn routable(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local() && !v4.is_unspecified(),
        IpAddr::V6(v6) => {
            !v6.is_loopback() && (v6.segments()[0] & 0xffc0) != 0xfe80 && !v6.is_unspecified()
        }
    }
}

/// IPv4 first: every launcher peer can reach it without a scope id.
fn best_ip(n: &NetIf, allow_loopback: bool) -> Option<IpAddr> {
    let ok = |ip: &IpAddr| routable(ip) || (allow_loopback && ip.is_loopback());
    let v4 = n
        .addrs
        .iter()
        .map(|a| a.ip)
        .find(|ip| ip.is_ipv4() && ok(ip));
    v4.or_else(|| n.addrs.iter().map(|a| a.ip).find(|ip| ok(ip)))
}

fn tcp_nic(n: &NetIf, ip: IpAddr) -> Nic {
    Nic {
        kind: NicKind::Tcp,
        ifname: n.name.clone(),
        ip: Some(ip),
        mac: n.mac.clone(),
        mtu: n.mtu,
        speed_mbps: n.speed_mbps,
        rdma: None,
    }
}

fn tcp_nics(
    i: usize,
    inv: &Inventory,
    filter: &[String],
    single_node: bool,
) -> Result<Vec<Nic>, AssignError> {
    let available = || inv.interface_names().join(", ");
    if !filter.is_empty() {
        let mut out = Vec::new();
        for name in filter {
            let Some(n) = inv.net.iter().find(|n| &n.name == name) else {
                return Err(AssignError::NoSuchNic {
                    node: node_label(i, inv),
                    name: name.clone(),
                    available: available(),
                });
            };
            let unusable = |why: String| AssignError::NicUnusable {
                node: node_label(i, inv),
                name: name.clone(),
                why,
            };
            if !n.is_up() {
                return Err(unusable(format!("it is {:?}", n.operstate).to_lowercase()));
            }
            // Naming lo explicitly is the user's choice, so loopback addresses count here.
            let ip =
                best_ip(n, true).ok_or_else(|| unusable("it has no usable IP address".into()))?;
            out.push(tcp_nic(n, ip));
        }
        return Ok(out);
    }
    let mut usable: Vec<(u8, &NetIf, IpAddr)> = inv
        .net
        .iter()
        .filter(|n| !n.loopback && n.is_up())
        .filter_map(|n| {
            let group = if n.rdma_device.is_some() {
                0
            } else if !n.is_virtual {
                1
            } else {
                2
            };
            best_ip(n, false).map(|ip| (group, n, ip))
        })
        .collect();
    // Stable sort keeps discovery (name) order within a group.
    usable.sort_by_key(|(g, _, _)| *g);
    let mut out: Vec<Nic> = usable
        .into_iter()
        .map(|(_, n, ip)| tcp_nic(n, ip))
        .collect();
    if out.is_empty() && single_node {
        out = inv
            .net
            .iter()
            .filter(|n| n.loopback)
            .filter_map(|n| best_ip(n, true).map(|ip| tcp_nic(n, ip)))
            .collect();
    }
    if out.is_empty() {
        return Err(AssignError::NoTcp {
            node: node_label(i, inv),
            available: available(),
        });
    }
    Ok(out)
}

/// RoCE GID preference; lower is better, `None` = not usable.
fn gid_rank(g: &GidEntry) -> u8 {
    match (g.gid_type, g.gid.ipv4_mapped().is_some()) {
        (Some(GidType::RoceV2), true) => 0,
        (Some(GidType::RoceV2), false) if !g.gid.is_link_local() => 1,
        (Some(GidType::RoceV2), false) => 2,
        (Some(GidType::IbRoceV1), true) => 3,
        _ => 4,
    }
}

/// Largest IB MTU (256..4096) that fits in the netdev MTU: what RoCE ports run at.
pub fn roce_mtu(netdev_mtu: u32) -> u32 {
    [4096, 2048, 1024, 512, 256]
        .into_iter()
        .find(|m| *m <= netdev_mtu)
        .unwrap_or(256)
}

/// Why a port cannot carry RDMA, or the NIC it gives.
fn rdma_nic(inv: &Inventory, dev: &IbDevice, p: &IbPort) -> Result<Nic, String> {
    if !p.is_active() {
        return Err(format!("{}:{} is {:?}", dev.name, p.port, p.state).to_lowercase());
    }
    let netdev_by_name = |name: &str| inv.net.iter().find(|n| n.name == name);
    let (gid, netdev, kind) = match p.link_layer {
        LinkLayer::InfiniBand => {
            let g = p
                .gids
                .iter()
                .find(|g| g.index == 0)
                .ok_or_else(|| format!("{}:{} has no GID 0", dev.name, p.port))?;
            let ipoib = inv
                .net
                .iter()
                .find(|n| n.rdma_device.as_deref() == Some(&dev.name) && n.if_type == 32);
            (g, ipoib, NicKind::Ib)
        }
        LinkLayer::Ethernet => {
            let g = p
                .gids
                .iter()
                .min_by_key(|g| (gid_rank(g), g.index))
                .ok_or_else(|| format!("{}:{} has no GID", dev.name, p.port))?;
            let netdev = g
                .netdev
                .as_deref()
                .or(dev.parent.as_deref())
                .and_then(netdev_by_name)
                .or_else(|| {
                    inv.net
                        .iter()
                        .find(|n| n.rdma_device.as_deref() == Some(&dev.name))
                });
            (g, netdev, NicKind::Roce)
        }
        LinkLayer::Unknown => {
            return Err(format!("{}:{} has an unknown link layer", dev.name, p.port))
        }
    };
    let ip = match gid.gid.ipv4_mapped() {
        Some(v4) if kind == NicKind::Roce => Some(IpAddr::V4(v4)),
        _ => netdev.and_then(|n| best_ip(n, false)),
    }
    // Without an address on the RDMA netdev, bootstrap over the node's first TCP interface.
    .or_else(|| {
        inv.net
            .iter()
            .filter(|n| !n.loopback && n.is_up())
            .find_map(|n| best_ip(n, false))
    });
    let mtu = p.active_mtu.unwrap_or(match (kind, netdev) {
        (NicKind::Roce, Some(n)) => roce_mtu(n.mtu),
        _ => 0,
    });
    Ok(Nic {
        kind,
        ifname: netdev.map(|n| n.name.clone()).unwrap_or_default(),
        ip,
        mac: netdev.map(|n| n.mac.clone()).unwrap_or_default(),
        mtu,
        speed_mbps: p.rate.as_ref().map(|r| r.mbps),
        rdma: Some(RdmaPort {
            device: dev.name.clone(),
            port: p.port,
            link_layer: p.link_layer,
            lid: p.lid,
            gid_index: gid.index,
            gid: gid.gid,
            gid_type: gid.gid_type,
            port_guid: p.port_guid().unwrap_or(0),
            subnet_prefix: p.subnet_prefix().unwrap_or(0),
        }),
    })
}

pub(crate) fn rdma_nics(i: usize, inv: &Inventory, filter: &[String]) -> Result<Vec<Nic>, AssignError> {
    if let crate::verbs::VerbsStatus::Unavailable { reason } = &inv.verbs {
        return Err(AssignError::NoRdma {
            node: node_label(i, inv),
            why: format!("verbs unavailable: {reason}"),
        });
    }
    let ports: Vec<(&IbDevice, &IbPort)> = inv
        .ib
        .iter()
        .flat_map(|d| d.ports.iter().map(move |p| (d, p)))
        .collect();
    if !filter.is_empty() {
        let mut out = Vec::new();
        for name in filter {
            // A filter entry names a device (all its ports), `device:port`, or the port's netdev.
            let matched: Vec<_> = ports
                .iter()
                .filter(|(d, p)| {
                    *name == d.name
                        || *name == format!("{}:{}", d.name, p.port)
                        || p.gids.iter().any(|g| g.netdev.as_deref() == Some(name))
                        || d.parent.as_deref() == Some(name)
                        || inv
                            .net
                            .iter()
                            .any(|n| n.name == *name && n.rdma_device.as_deref() == Some(&d.name))
                })
                .collect();
            if matched.is_empty() {
                let mut available: Vec<String> = ports
                    .iter()
                    .map(|(d, p)| format!("{}:{}", d.name, p.port))
                    .collect();
                available.extend(inv.interface_names());
                return Err(AssignError::NoSuchNic {
                    node: node_label(i, inv),
                    name: name.clone(),
                    available: available.join(", "),
                });
            }
            let mut why = Vec::new();
            let before = out.len();
            for (d, p) in matched {
                match rdma_nic(inv, d, p) {
                    Ok(nic) => out.push(nic),
                    Err(w) => why.push(w),
                }
            }
            if out.len() == before {
                return Err(AssignError::NicUnusable {
                    node: node_label(i, inv),
                    name: name.clone(),
                    why: why.join("; "),
                });
            }
        }
        return Ok(out);
    }
    let mut out = Vec::new();
    let mut why = Vec::new();
    for (d, p) in ports {
        match rdma_nic(inv, d, p) {
            Ok(nic) => out.push(nic),
            Err(w) => why.push(w),
        }
    }
    if out.is_empty() {
        let why = if why.is_empty() {
            "no InfiniBand/RoCE device".to_string()
        } else {
            why.join("; ")
        };
        return Err(AssignError::NoRdma {
            node: node_label(i, inv),
            why,
        });
    }
    Ok(out)
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    #[error("cannot reserve a range of 0 ports; a node without ranks needs no port base")]
    ZeroCount,
    #[error("no {count} consecutive free TCP ports in {start}..={end} on this host; free some ports or widen the range")]
    Exhausted { count: u16, start: u16, end: u16 },
}

/// Below Linux's default ephemeral range (32768..=60999), so outgoing connections of other
/// programs do not land on the ports between our check and the ranks' bind.
pub const DEFAULT_PORT_RANGE: RangeInclusive<u16> = 20000..=32767;

/// Finds `count` consecutive TCP ports free on this host, in [`DEFAULT_PORT_RANGE`].
/// The ports are only tested (bound, then released): another program can still take one before a
/// rank binds it, which the rank then reports.
pub fn reserve_port_base(count: u16) -> Result<u16, PortError> {
    reserve_port_base_in(count, DEFAULT_PORT_RANGE)
}

/// [`reserve_port_base`] within `range`; the search starts at an offset derived from the process id
/// so that several daemons on one host (tests, oversubscription) try different ranges first.
pub fn reserve_port_base_in(count: u16, range: RangeInclusive<u16>) -> Result<u16, PortError> {
    if count == 0 {
        return Err(PortError::ZeroCount);
    }
    let (start, end) = (u32::from(*range.start()), u32::from(*range.end()));
    let exhausted = PortError::Exhausted {
        count,
        start: *range.start(),
        end: *range.end(),
    };
    let count32 = u32::from(count);
    if end < start || end - start + 1 < count32 {
        return Err(exhausted);
    }
    let bases = end - start + 2 - count32; // number of candidate bases
    let first = std::process::id() % bases;
    let mut tried = 0;
    let mut offset = first;
    while tried < bases {
        let base = start + offset;
        match first_busy(base, count32) {
            None => return Ok(base as u16),
            Some(busy) => {
                // Every base up to the busy port would include it: skip past it.
                let skip = busy - base + 1;
                if offset + skip >= bases {
                    // Wrap to the lowest base rather than modulo, so no base below is skipped.
                    tried += bases - offset;
                    offset = 0;
                } else {
                    tried += skip;
                    offset += skip;
                }
            }
        }
    }
    Err(exhausted)
}

/// The first port of `base..base+count` that cannot be bound, holding the others meanwhile.
fn first_busy(base: u32, count: u32) -> Option<u32> {
    let mut held = Vec::with_capacity(count as usize);
    for port in base..base + count {
        match TcpListener::bind((Ipv4Addr::UNSPECIFIED, port as u16)) {
            Ok(l) => held.push(l),
            Err(_) => return Some(port),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::{NetAddr, OperState, PhysState, PortState};
    use crate::verbs::VerbsStatus;
    use proptest::prelude::*;

    fn netif(name: &str, ips: &[&str]) -> NetIf {
        NetIf {
            name: name.into(),
            mac: vec![2, 0, 0, 0, 0, 1],
            mtu: 1500,
            speed_mbps: Some(10_000),
            operstate: if name == "lo" {
                OperState::Unknown
            } else {
                OperState::Up
            },
            if_type: if name == "lo" { 772 } else { 1 },
            loopback: name == "lo",
            is_virtual: name == "lo" || name.starts_with("veth"),
            rdma_device: None,
            addrs: ips
                .iter()
                .map(|s| NetAddr {
                    ip: s.parse().unwrap(),
                    prefix_len: 24,
                })
                .collect(),
        }
    }

    fn node(host: &str, net: Vec<NetIf>) -> Inventory {
        Inventory {
            hostname: host.into(),
            port_base: 20000,
            net,
            ..Default::default()
        }
    }

    fn gid(s: &str) -> Gid {
        crate::discover::parse_gid(s).unwrap()
    }

    fn roce_node(host: &str, ip_last: u8, state: PortState) -> Inventory {
        let mut ens = netif("ens1f0np0", &[&format!("10.0.0.{ip_last}")]);
        ens.rdma_device = Some("mlx5_0".into());
        ens.mtu = 1500;
        let mapped = gid(&format!("0000:0000:0000:0000:0000:ffff:0a00:{ip_last:04x}"));
        let ll = gid("fe80:0000:0000:0000:0e42:a1ff:fe65:7e2a");
        let e = |index, gid, t| GidEntry {
            index,
            gid,
            gid_type: Some(t),
            netdev: Some("ens1f0np0".into()),
        };
        let port = IbPort {
            port: 1,
            state,
            phys_state: PhysState::LinkUp,
            lid: 0,
            sm_lid: 0,
            lmc: 0,
            rate: None,
            link_layer: LinkLayer::Ethernet,
            gids: vec![
                e(0, ll, GidType::IbRoceV1),
                e(1, ll, GidType::RoceV2),
                e(2, mapped, GidType::IbRoceV1),
                e(3, mapped, GidType::RoceV2),
            ],
            active_mtu: None,
        };
        let dev = IbDevice {
            name: "mlx5_0".into(),
            node_type: crate::discover::NodeType::Ca,
            node_guid: 1,
            sys_image_guid: 1,
            fw_ver: String::new(),
            parent: None,
            ports: vec![port],
        };
        Inventory {
            ib: vec![dev],
            ..node(
                host,
                vec![
                    ens,
                    netif("eth0", &["192.0.2.9"]),
                    netif("lo", &["127.0.0.1"]),
                ],
            )
        }
    }

    #[test]
    fn chosen_nics_keep_the_modulo_rule() {
        let invs = [node("a", vec![netif("eth0", &["10.0.0.1"]), netif("eth1", &["10.0.1.1"]), netif("eth2", &["10.0.2.1"])])];
        let mut a = assign(&invs, &[6], FabricChoice::Tcp, &[]).unwrap();
        let choice = [0, 2, 1, 0, 2, 1];
        a.nodes[0].choose_nics(&choice);
        assert_eq!(a.nodes[0].nics.len(), 3, "a period of 3 needs 3 entries");
        for (l, c) in choice.iter().enumerate() {
            assert_eq!(a.endpoint(0, l as u32).unwrap().nic.ifname, format!("eth{c}"));
        }
        a.nodes[0].choose_nics(&[0, 0, 0, 1, 1, 1]);
        assert_eq!(a.nodes[0].nics.len(), 6);
        let before = a.nodes[0].nics.clone();
        a.nodes[0].choose_nics(&[0, 9, 0, 0, 0, 0]);
        assert_eq!(a.nodes[0].nics, before, "an impossible choice changes nothing");
    }

    #[test]
    fn tcp_port_and_nic_rule() {
        let inv = node(
            "n0",
            vec![
                netif("eth0", &["192.0.2.1"]),
                netif("eth1", &["198.51.100.1"]),
                netif("lo", &["127.0.0.1"]),
            ],
        );
        let a = assign(&[inv], &[3], FabricChoice::Tcp, &[]).unwrap();
        assert_eq!(a.fabric, Fabric::Tcp);
        let e: Vec<_> = (0..3).map(|l| a.endpoint(0, l).unwrap()).collect();
        assert_eq!(
            e.iter().map(|e| e.port).collect::<Vec<_>>(),
            [20000, 20001, 20002]
        );
        assert_eq!(
            e.iter().map(|e| e.nic.ifname.as_str()).collect::<Vec<_>>(),
            ["eth0", "eth1", "eth0"]
        );
        assert_eq!(e[1].ip, Some("198.51.100.1".parse().unwrap()));
        assert!(a.endpoint(0, 3).is_none());
        assert!(a.endpoint(1, 0).is_none());
    }

    #[test]
    fn rdma_capable_then_physical_then_virtual() {
        let mut ib0 = netif("ib0", &["192.168.1.1"]);
        ib0.rdma_device = Some("mlx5_0".into());
        let inv = node(
            "n0",
            vec![
                netif("eth0", &["192.0.2.1"]),
                ib0,
                netif("veth0", &["172.17.0.2"]),
                netif("lo", &["127.0.0.1"]),
            ],
        );
        let a = assign(&[inv], &[1], FabricChoice::Tcp, &[]).unwrap();
        let names: Vec<_> = a.nodes[0].nics.iter().map(|n| n.ifname.as_str()).collect();
        assert_eq!(names, ["ib0", "eth0", "veth0"]);
    }

    #[test]
    fn unusable_interfaces_are_skipped() {
        let mut down = netif("eth1", &["192.0.2.7"]);
        down.operstate = OperState::Down;
        let inv = node(
            "n0",
            vec![
                netif("eth0", &["fe80::1", "2001:db8::5"]),
                down,
                netif("eth2", &["169.254.3.3"]),
                netif("lo", &["127.0.0.1"]),
            ],
        );
        let other = node("n1", vec![netif("eth0", &["192.0.2.2"])]);
        let a = assign(&[inv, other], &[1, 1], FabricChoice::Tcp, &[]).unwrap();
        assert_eq!(a.nodes[0].nics.len(), 1);
        assert_eq!(a.nodes[0].nics[0].ip, Some("2001:db8::5".parse().unwrap()));
    }

    #[test]
    fn loopback_only_for_single_node_jobs() {
        let lonely = node("n0", vec![netif("lo", &["127.0.0.1"])]);
        let a = assign(std::slice::from_ref(&lonely), &[2], FabricChoice::Auto, &[]).unwrap();
        assert_eq!(a.fabric, Fabric::Tcp);
        assert_eq!(
            a.endpoint(0, 1).unwrap().ip,
            Some("127.0.0.1".parse().unwrap())
        );
        let err = assign(
            &[lonely, node("n1", vec![netif("eth0", &["192.0.2.2"])])],
            &[1, 1],
            FabricChoice::Tcp,
            &[],
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "node n0 (#0) has no usable TCP interface (up, not loopback, with a routable address); it has: lo"
        );
    }

    #[test]
    fn filter_names_a_missing_interface() {
        let n3 = node(
            "n3",
            vec![netif("eth0", &["192.0.2.3"]), netif("lo", &["127.0.0.1"])],
        );
        let n0 = node("n0", vec![netif("ib0", &["192.0.2.4"])]);
        let err = assign(&[n0, n3], &[1, 1], FabricChoice::Tcp, &["ib0".into()]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "node n3 (#1) has no interface named ib0; it has: eth0, lo"
        );
    }

    #[test]
    fn filter_order_is_kept_and_down_interface_refused() {
        let inv = node(
            "n0",
            vec![netif("eth0", &["192.0.2.1"]), netif("eth1", &["192.0.2.2"])],
        );
        let a = assign(
            std::slice::from_ref(&inv),
            &[2],
            FabricChoice::Tcp,
            &["eth1".into(), "eth0".into()],
        )
        .unwrap();
        assert_eq!(a.endpoint(0, 0).unwrap().nic.ifname, "eth1");
        let mut down = inv;
        down.net[1].operstate = OperState::Down;
        let err = assign(&[down], &[1], FabricChoice::Tcp, &["eth1".into()]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "node n0 (#0): eth1 cannot be used: it is down"
        );
    }

    #[test]
    fn roce_prefers_v2_ipv4_mapped_gid() {
        let a = assign(
            &[
                roce_node("n0", 5, PortState::Active),
                roce_node("n1", 6, PortState::Active),
            ],
            &[2, 2],
            FabricChoice::Auto,
            &[],
        )
        .unwrap();
        assert_eq!(a.fabric, Fabric::Rdma);
        let e = a.endpoint(1, 1).unwrap();
        let r = e.nic.rdma.as_ref().unwrap();
        assert_eq!((r.device.as_str(), r.port, r.gid_index), ("mlx5_0", 1, 3));
        assert_eq!(r.gid_type, Some(GidType::RoceV2));
        assert_eq!(e.ip, Some("10.0.0.6".parse().unwrap()));
        assert_eq!(e.nic.ifname, "ens1f0np0");
        assert_eq!(
            e.nic.mtu, 1024,
            "RoCE on a 1500-byte netdev runs 1024-byte IB MTU"
        );
        assert_eq!(e.port, 20001);
    }

    #[test]
    fn auto_falls_back_to_tcp_when_one_node_lacks_rdma() {
        let nodes = [
            roce_node("n0", 5, PortState::Active),
            roce_node("n1", 6, PortState::Down),
        ];
        let a = assign(&nodes, &[1, 1], FabricChoice::Auto, &[]).unwrap();
        assert_eq!(a.fabric, Fabric::Tcp);
        assert_eq!(
            a.nodes[1].nics[0].ifname, "ens1f0np0",
            "RDMA-capable netdev still first for TCP"
        );
        let err = assign(&nodes, &[1, 1], FabricChoice::Rdma, &[]).unwrap_err();
        assert_eq!(err.to_string(), "node n1 (#1) has no usable RDMA port (mlx5_0:1 is down); use --fabric tcp or fix the port");
    }

    #[test]
    fn verbs_unavailable_means_no_rdma() {
        let mut n = roce_node("n0", 5, PortState::Active);
        n.verbs = VerbsStatus::Unavailable {
            reason: "libibverbs.so.1 not loadable".into(),
        };
        let err = assign(&[n.clone()], &[1], FabricChoice::Rdma, &[]).unwrap_err();
        assert!(
            err.to_string()
                .contains("verbs unavailable: libibverbs.so.1 not loadable"),
            "{err}"
        );
        assert_eq!(
            assign(&[n], &[1], FabricChoice::Auto, &[]).unwrap().fabric,
            Fabric::Tcp
        );
    }

    #[test]
    fn rdma_filter_by_device_port_or_netdev() {
        let n = roce_node("n0", 5, PortState::Active);
        for name in ["mlx5_0", "mlx5_0:1", "ens1f0np0"] {
            let a = assign(
                std::slice::from_ref(&n),
                &[1],
                FabricChoice::Rdma,
                &[name.into()],
            )
            .unwrap();
            assert_eq!(a.nodes[0].nics.len(), 1, "{name}");
        }
        let err = assign(&[n], &[1], FabricChoice::Rdma, &["mlx5_1".into()]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "node n0 (#0) has no interface named mlx5_1; it has: mlx5_0:1, ens1f0np0, eth0, lo"
        );
    }

    #[test]
    fn port_base_must_be_reserved_and_fit() {
        let mut n = node("n0", vec![netif("eth0", &["192.0.2.1"])]);
        n.port_base = 0;
        assert!(matches!(
            assign(&[n.clone()], &[1], FabricChoice::Tcp, &[]),
            Err(AssignError::PortBase { .. })
        ));
        n.port_base = 65530;
        assert!(matches!(
            assign(&[n.clone()], &[7], FabricChoice::Tcp, &[]),
            Err(AssignError::PortBase { .. })
        ));
        assert!(assign(&[n.clone()], &[6], FabricChoice::Tcp, &[]).is_ok());
        assert_eq!(
            assign(&[n], &[1, 1], FabricChoice::Tcp, &[]),
            Err(AssignError::CountMismatch {
                inventories: 1,
                counts: 2
            })
        );
    }

    #[test]
    fn roce_mtu_steps() {
        assert_eq!(roce_mtu(9000), 4096);
        assert_eq!(roce_mtu(1500), 1024);
        assert_eq!(roce_mtu(4200), 4096);
        assert_eq!(roce_mtu(100), 256);
    }

    proptest! {
        #[test]
        fn every_rank_gets_a_distinct_port_and_a_listed_nic(counts in proptest::collection::vec(0u32..40, 1..6), nics in 1usize..4) {
            let inv: Vec<Inventory> = (0..counts.len())
                .map(|i| node(&format!("n{i}"), (0..nics).map(|k| netif(&format!("eth{k}"), &[&format!("192.0.{i}.{}", k + 1)])).collect()))
                .collect();
            let a = assign(&inv, &counts, FabricChoice::Auto, &[]).unwrap();
            for (n, &c) in counts.iter().enumerate() {
                let mut ports = std::collections::BTreeSet::new();
                for l in 0..c {
                    let e = a.endpoint(n as u32, l).unwrap();
                    prop_assert!(ports.insert(e.port));
                    prop_assert_eq!(e.nic.ifname, format!("eth{}", l as usize % nics));
                }
                prop_assert!(a.endpoint(n as u32, c).is_none());
            }
        }
    }

    #[test]
    fn reserved_range_is_bindable() {
        let base = reserve_port_base(8).unwrap();
        assert!(DEFAULT_PORT_RANGE.contains(&base) && DEFAULT_PORT_RANGE.contains(&(base + 7)));
        let held: Vec<_> = (base..base + 8)
            .map(|p| TcpListener::bind((Ipv4Addr::UNSPECIFIED, p)))
            .collect();
        assert!(held.iter().all(|l| l.is_ok()));
    }

    #[test]
    fn reservation_skips_a_busy_port() {
        // A busy port p whose neighbours p-3..=p+4 are free right now: other processes on the
        // machine take ephemeral ports too, so look for such a window rather than assume it.
        let free = |q: u16| TcpListener::bind((Ipv4Addr::UNSPECIFIED, q)).is_ok();
        let (busy, p) = (0..50)
            .find_map(|_| {
                let busy = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
                let p = busy.local_addr().ok()?.port();
                (p > 3 && p < u16::MAX - 4 && (p - 3..=p + 4).filter(|&q| q != p).all(free)).then_some((busy, p))
            })
            .expect("a busy port with 7 free neighbours");
        // Only bases p-3 ..= p+1 exist in this window; all but p+1 would include the busy port.
        let base = reserve_port_base_in(4, p - 3..=p + 4).unwrap();
        assert_eq!(base, p + 1);
        let err = reserve_port_base_in(4, p - 3..=p + 3).unwrap_err();
        assert_eq!(
            err,
            PortError::Exhausted {
                count: 4,
                start: p - 3,
                end: p + 3
            }
        );
        assert_eq!(reserve_port_base(0), Err(PortError::ZeroCount));
        drop(busy);
    }
}
