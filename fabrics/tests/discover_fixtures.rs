mod common;

use std::net::{IpAddr, Ipv4Addr};

use fabrics::discover::{GidType, LinkLayer, NodeType, OperState, PhysState, PortState, Rate};
use fabrics::{IfAddr, Inventory};

fn v4(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn ib_hca_with_one_port_down() {
    let (_t, root) = common::sysfs("ib-hca");
    let addrs = [
        IfAddr::new("ib0", v4("192.168.100.1"), 24),
        IfAddr::new("eno1", v4("10.1.0.1"), 16),
    ];
    let inv = Inventory::discover(&root, &addrs).unwrap();
    assert!(inv.warnings.is_empty(), "{:?}", inv.warnings);
    assert_eq!(inv.ib.len(), 1);
    let d = &inv.ib[0];
    assert_eq!(d.name, "mlx5_0");
    assert_eq!(d.node_type, NodeType::Ca);
    assert_eq!(d.node_guid, 0xb83f_d203_00a4_1c2e);
    assert_eq!(d.fw_ver, "16.35.2000");
    assert_eq!(d.ports.len(), 2);
    let (p1, p2) = (&d.ports[0], &d.ports[1]);
    assert_eq!(
        (p1.port, p1.state, p1.phys_state),
        (1, PortState::Active, PhysState::LinkUp)
    );
    assert!(p1.is_active());
    assert_eq!((p1.lid, p1.sm_lid), (0x1a, 1));
    assert_eq!(
        p1.rate,
        Some(Rate {
            mbps: 100_000,
            width: 4,
            speed: Some("EDR".into())
        })
    );
    assert_eq!(p1.link_layer, LinkLayer::InfiniBand);
    assert_eq!(p1.gids.len(), 1, "the all-zero GID 1 is dropped");
    assert_eq!(p1.port_guid(), Some(0xb83f_d203_00a4_1c2e));
    assert_eq!(p1.subnet_prefix(), Some(0xfe80_0000_0000_0000));
    assert_eq!(p1.gids[0].gid_type, None, "IB GIDs have no type file here");
    assert_eq!(
        (p2.state, p2.phys_state),
        (PortState::Down, PhysState::Polling)
    );
    assert!(!p2.is_active());

    let names: Vec<_> = inv.net.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["eno1", "ib0", "lo"]);
    let ib0 = &inv.net[1];
    assert_eq!(ib0.if_type, 32);
    assert_eq!(ib0.mac.len(), 20);
    assert_eq!(
        ib0.rdma_device.as_deref(),
        Some("mlx5_0"),
        "found through device/infiniband"
    );
    assert!(!ib0.is_virtual);
    assert_eq!(ib0.addrs.len(), 1);
    let eno1 = &inv.net[0];
    assert_eq!(eno1.rdma_device, None);
    assert_eq!(eno1.speed_mbps, Some(1000));
    assert_eq!(eno1.addrs[0].ip, v4("10.1.0.1"));
    let lo = &inv.net[2];
    assert!(lo.loopback && lo.is_virtual);
    assert_eq!(lo.speed_mbps, None);
}

#[test]
fn roce_nic_gid_table() {
    let (_t, root) = common::sysfs("roce");
    let inv = Inventory::discover(&root, &[IfAddr::new("ens1f0np0", v4("10.0.0.5"), 24)]).unwrap();
    assert!(inv.warnings.is_empty(), "{:?}", inv.warnings);
    let p = &inv.ib[0].ports[0];
    assert_eq!(p.link_layer, LinkLayer::Ethernet);
    assert_eq!(p.lid, 0);
    assert_eq!(p.rate.as_ref().map(|r| r.mbps), Some(25_000));
    let idx: Vec<u16> = p.gids.iter().map(|g| g.index).collect();
    assert_eq!(idx, [0, 1, 2, 3], "zero entries 4 and 5 are dropped");
    let types: Vec<_> = p.gids.iter().map(|g| g.gid_type).collect();
    assert_eq!(
        types,
        [
            Some(GidType::IbRoceV1),
            Some(GidType::RoceV2),
            Some(GidType::IbRoceV1),
            Some(GidType::RoceV2)
        ]
    );
    assert!(p
        .gids
        .iter()
        .all(|g| g.netdev.as_deref() == Some("ens1f0np0")));
    assert_eq!(
        p.gids[3].gid.ipv4_mapped(),
        Some(Ipv4Addr::new(10, 0, 0, 5))
    );
    assert_eq!(p.gids[1].gid.ipv4_mapped(), None);

    let ens = inv.net.iter().find(|n| n.name == "ens1f0np0").unwrap();
    assert_eq!(ens.rdma_device.as_deref(), Some("mlx5_0"));
    assert_eq!(
        (ens.mtu, ens.speed_mbps, ens.operstate),
        (9000, Some(25_000), OperState::Up)
    );
    let docker = inv.net.iter().find(|n| n.name == "docker0").unwrap();
    assert!(docker.is_virtual && !docker.loopback);
    assert_eq!(docker.operstate, OperState::Down);
}

#[test]
fn host_with_only_virtual_nics() {
    let (_t, root) = common::sysfs("virtual-only");
    let inv = Inventory::discover(&root, &[IfAddr::new("veth0", v4("172.17.0.2"), 16)]).unwrap();
    assert!(inv.ib.is_empty());
    assert!(inv.warnings.is_empty(), "{:?}", inv.warnings);
    assert_eq!(inv.net.len(), 3);
    assert!(inv.net.iter().all(|n| n.is_virtual));
    let br0 = inv.net.iter().find(|n| n.name == "br0").unwrap();
    assert_eq!(br0.speed_mbps, None, "-1 means unknown");
    let veth = inv.net.iter().find(|n| n.name == "veth0").unwrap();
    assert_eq!(veth.speed_mbps, Some(10_000));
}

#[test]
fn older_kernel_rate_format() {
    let (_t, root) = common::sysfs("old-kernel");
    let inv = Inventory::discover(&root, &[]).unwrap();
    assert!(inv.warnings.is_empty(), "{:?}", inv.warnings);
    let p = &inv.ib[0].ports[0];
    assert_eq!(
        p.rate,
        Some(Rate {
            mbps: 10_000,
            width: 4,
            speed: None
        })
    );
    assert_eq!(inv.ib[0].fw_ver, "");
    assert_eq!(p.lid, 3);
}

#[test]
fn inventory_is_compact_on_the_wire() {
    let (_t, root) = common::sysfs("roce");
    let inv = Inventory::discover(&root, &[IfAddr::new("ens1f0np0", v4("10.0.0.5"), 24)]).unwrap();
    let bytes = postcard::to_allocvec(&inv).unwrap();
    let back: Inventory = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(back, inv);
    // A RoCE host with three interfaces and four GIDs fits in a few hundred bytes.
    assert!(bytes.len() < 400, "inventory takes {} bytes", bytes.len());
}

#[test]
fn real_sys_finds_loopback() {
    let inv = Inventory::discover_system().unwrap();
    let lo = inv
        .net
        .iter()
        .find(|n| n.loopback)
        .expect("every Linux host has a loopback interface");
    assert_eq!(lo.if_type, 772);
    assert!(lo.is_virtual);
    assert!(
        lo.addrs.iter().any(|a| a.ip.is_loopback()),
        "getifaddrs gives lo its 127.0.0.1: {lo:?}"
    );
    assert!(!inv.hostname.is_empty());
    let shown = inv.verbs.to_string();
    assert!(
        shown.starts_with("available") || shown.starts_with("unavailable"),
        "{shown}"
    );
}

#[test]
fn assignment_over_fixture_hosts() {
    use fabrics::endpoints::{assign, Fabric, FabricChoice, NicKind};
    let (_t1, ib_root) = common::sysfs("ib-hca");
    let (_t2, roce_root) = common::sysfs("roce");
    let (_t3, virt_root) = common::sysfs("virtual-only");
    let mut ib = Inventory::discover(
        &ib_root,
        &[
            IfAddr::new("ib0", v4("192.168.100.1"), 24),
            IfAddr::new("eno1", v4("10.1.0.1"), 16),
        ],
    )
    .unwrap();
    ib.hostname = "ibhost".into();
    ib.port_base = 21000;
    let mut ib2 = ib.clone();
    ib2.hostname = "ibhost2".into();
    let a = assign(&[ib.clone(), ib2], &[2, 2], FabricChoice::Auto, &[]).unwrap();
    assert_eq!(a.fabric, Fabric::Rdma);
    assert_eq!(
        a.nodes[0].nics.len(),
        1,
        "port 2 is down and must not be used"
    );
    let e = a.endpoint(0, 1).unwrap();
    assert_eq!(e.nic.kind, NicKind::Ib);
    assert_eq!(e.nic.ifname, "ib0");
    assert_eq!(e.ip, Some(v4("192.168.100.1")));
    let r = e.nic.rdma.unwrap();
    assert_eq!((r.port, r.lid, r.gid_index), (1, 0x1a, 0));

    let mut roce =
        Inventory::discover(&roce_root, &[IfAddr::new("ens1f0np0", v4("10.0.0.5"), 24)]).unwrap();
    roce.hostname = "rocehost".into();
    roce.port_base = 22000;
    let e = assign(&[roce.clone()], &[1], FabricChoice::Rdma, &[])
        .unwrap()
        .endpoint(0, 0)
        .unwrap();
    assert_eq!(e.nic.rdma.unwrap().gid_index, 3);
    assert_eq!(e.nic.mtu, 4096, "9000-byte netdev");

    let mut virt =
        Inventory::discover(&virt_root, &[IfAddr::new("veth0", v4("172.17.0.2"), 16)]).unwrap();
    virt.hostname = "container".into();
    virt.port_base = 23000;
    let a = assign(&[ib, roce, virt], &[1, 1, 1], FabricChoice::Auto, &[]).unwrap();
    assert_eq!(a.fabric, Fabric::Tcp, "the container has no RDMA port");
    assert_eq!(a.endpoint(2, 0).unwrap().nic.ifname, "veth0");
    assert_eq!(
        a.endpoint(0, 0).unwrap().nic.ifname,
        "ib0",
        "RDMA-capable netdev first"
    );
}
