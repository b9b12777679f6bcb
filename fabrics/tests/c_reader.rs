//! The C structs in man/rlaunch-endpoints.7 are the contract for C readers: this test compiles them
//! (taken from the man page itself) into a small reader and checks it finds what the Rust reader
//! finds. Skipped, loudly, only when no C compiler exists.

use std::path::Path;
use std::process::Command;

use fabrics::discover::{parse_gid, GidType, LinkLayer};
use fabrics::endpoints::{Assignment, Fabric, Nic, NicKind, NodePlan, RdmaPort};
use fabrics::table::{block_placement, EndpointTable, TableReader, TableWriter};

fn man_structs() -> String {
    let man = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../man/rlaunch-endpoints.7"),
    )
    .unwrap();
    let mut out = String::new();
    let mut in_code = false;
    for line in man.lines() {
        match line {
            ".ft CW" => in_code = true,
            ".ft" => in_code = false,
            l if in_code && !l.starts_with('.') => {
                out.push_str(&l.replace("\\-", "-").replace("\\e", "\\"));
                out.push('\n');
            }
            _ => {}
        }
    }
    // The lookup example in the man page is pseudo-code; keep only the struct definitions.
    let start = out.find("struct rlaunch_tbl_header").unwrap();
    let end = out.rfind("};").unwrap() + 2;
    out[start..end].to_string()
}

const READER: &str = r#"
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>

STRUCTS

_Static_assert(sizeof(struct rlaunch_tbl_header) == 96, "header");
_Static_assert(sizeof(struct rlaunch_tbl_node) == 288, "node");
_Static_assert(sizeof(struct rlaunch_tbl_nic) == 192, "nic");
_Static_assert(sizeof(struct rlaunch_tbl_rank) == 8, "rank");

static uint32_t crc32_ieee(const uint8_t *p, size_t n) {
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1)));
    }
    return c ^ 0xFFFFFFFFu;
}

int main(int argc, char **argv) {
    int fd = open(argv[1], O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) return 2;
    const uint8_t *base = mmap(NULL, st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) return 3;
    const struct rlaunch_tbl_header *h = (const void *)base;
    if (memcmp(h->magic, "RLNCHTBL", 8) != 0 || h->version != 1 || h->file_size != (uint64_t)st.st_size) return 4;
    if (crc32_ieee(base + h->header_size, st.st_size - h->header_size) != h->body_crc32) return 5;
    for (uint32_t r = 0; r < h->rank_count; r++) {
        const struct rlaunch_tbl_rank *rk = (const void *)(base + h->rank_offset + (uint64_t)r * h->rank_record_size);
        const struct rlaunch_tbl_node *nd = (const void *)(base + h->node_offset + (uint64_t)rk->node * h->node_record_size);
        const struct rlaunch_tbl_nic *nic = (const void *)(base + h->nic_offset
            + (uint64_t)(nd->first_nic + rk->local_rank % nd->nic_count) * h->nic_record_size);
        printf("%u %s %u %s %s %u %u %u.%u.%u.%u %u\n", r, nd->hostname, nd->port_base + rk->local_rank,
               nic->ifname, nic->ibdev[0] ? nic->ibdev : "-", nic->kind, nic->gid_index,
               nic->ip[0], nic->ip[1], nic->ip[2], nic->ip[3], nic->mtu);
    }
    return 0;
}
"#;

fn table() -> EndpointTable {
    let tcp = |name: &str, ip: [u8; 4]| Nic {
        kind: NicKind::Tcp,
        ifname: name.into(),
        ip: Some(std::net::Ipv4Addr::from(ip).into()),
        mac: vec![2, 0, 0, 0, 0, 1],
        mtu: 1500,
        speed_mbps: None,
        rdma: None,
    };
    let mut roce = tcp("ens1f0np0", [10, 0, 0, 5]);
    roce.kind = NicKind::Roce;
    roce.mtu = 4096;
    roce.rdma = Some(RdmaPort {
        device: "mlx5_0".into(),
        port: 1,
        link_layer: LinkLayer::Ethernet,
        lid: 0,
        gid_index: 3,
        gid: parse_gid("0000:0000:0000:0000:0000:ffff:0a00:0005").unwrap(),
        gid_type: Some(GidType::RoceV2),
        port_guid: 1,
        subnet_prefix: 2,
    });
    let a = Assignment {
        fabric: Fabric::Rdma,
        nodes: vec![
            NodePlan {
                node: 0,
                hostname: "alpha".into(),
                local_ranks: 3,
                port_base: 20100,
                nics: vec![roce, tcp("eth1", [192, 0, 2, 1])],
            },
            NodePlan {
                node: 1,
                hostname: "beta.example".into(),
                local_ranks: 2,
                port_base: 25000,
                nics: vec![tcp("eth0", [192, 0, 2, 2])],
            },
        ],
    };
    EndpointTable::new(&a, 0, block_placement(&[3, 2])).unwrap()
}

#[test]
fn c_structs_from_the_man_page_read_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    if Command::new(&cc).arg("--version").output().is_err() {
        eprintln!("SKIPPED: no C compiler ({cc}) to check the man page's structs");
        return;
    }
    let src = dir.path().join("reader.c");
    std::fs::write(&src, READER.replace("STRUCTS", &man_structs())).unwrap();
    let exe = dir.path().join("reader");
    let out = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Werror", "-o"])
        .arg(&exe)
        .arg(&src)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "C reader does not compile:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let path = dir.path().join("rlaunch-j1-0.tbl");
    let t = table();
    TableWriter::write(&path, &t).unwrap();
    let out = Command::new(&exe).arg(&path).output().unwrap();
    assert!(
        out.status.success(),
        "C reader refused the table: exit {:?}",
        out.status.code()
    );
    let c_lines: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();

    let reader = TableReader::open(&path).unwrap();
    let rust_lines: Vec<String> = (0..5)
        .map(|r| {
            let e = reader.endpoint_of(r).unwrap();
            let ip = match e.ip {
                Some(std::net::IpAddr::V4(v4)) => v4.to_string(),
                _ => "0.0.0.0".into(),
            };
            let kind = match e.nic.kind {
                NicKind::Tcp => 1,
                NicKind::Ib => 2,
                NicKind::Roce => 3,
            };
            let rdma = e.nic.rdma.as_ref();
            format!(
                "{r} {} {} {} {} {kind} {} {ip} {}",
                e.host,
                e.port,
                e.nic.ifname,
                rdma.map_or("-", |x| x.device.as_str()),
                rdma.map_or(0, |x| x.gid_index),
                e.nic.mtu
            )
        })
        .collect();
    assert_eq!(c_lines, rust_lines);
    assert_eq!(
        c_lines[2],
        "2 alpha 20102 ens1f0np0 mlx5_0 3 3 10.0.0.5 4096"
    );
}
