//! The per-node endpoint table: a file in shared memory (`/dev/shm/rlaunch-<job>-<node>.tbl`) that the
//! daemon writes once and its ranks map read-only to find every peer.
//!
//! Layout (all integers little-endian, offsets from the start of the file, strings NUL-padded and
//! always NUL-terminated); `man 7 rlaunch-endpoints` has the C structs:
//!
//! ```text
//! header (96 bytes)   magic "RLNCHTBL", version, sizes, counts, section offsets, file size, CRC-32
//! nodes  [node_count] node rank, local ranks, first_nic, nic_count, port_base, hostname[256]
//! nics   [nic_count]  kind, IB port, GID index, LID, GID type, IP, GID, MAC, GUIDs, ifname, ibdev
//! ranks  [rank_count] node, local_rank
//! ```
//!
//! Rank `r`'s endpoint: `n = nodes[ranks[r].node]`, `nic = nics[n.first_nic + ranks[r].local_rank %
//! n.nic_count]`, `port = n.port_base + ranks[r].local_rank`. Readers step through records by the
//! sizes in the header, so a later version can append fields to a record without breaking them.
//! Encoding and decoding ([`encode`], [`TableView`]) are pure; only the writer and reader touch files.

use std::fs::{File, OpenOptions};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use crate::discover::{Gid, GidType, LinkLayer};
use crate::endpoints::{Assignment, Endpoint, Fabric, Nic, NicKind, NodePlan, RdmaPort};

pub const MAGIC: [u8; 8] = *b"RLNCHTBL";
pub const VERSION: u32 = 1;
pub const HEADER_SIZE: usize = 96;
pub const NODE_RECORD_SIZE: usize = 288;
pub const NIC_RECORD_SIZE: usize = 192;
pub const RANK_RECORD_SIZE: usize = 8;
/// Field widths including the terminating NUL.
pub const HOSTNAME_LEN: usize = 256;
pub const IFNAME_LEN: usize = 16;
pub const IBDEV_LEN: usize = 64;
const MAC_LEN: usize = 20;

/// Where a node's table lives: `<dir>/rlaunch-<jobid>-<node>.tbl`.
pub fn table_path(dir: &Path, jobid: &str, node: u32) -> PathBuf {
    dir.join(format!("rlaunch-{jobid}-{node}.tbl"))
}

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}: not an rlaunch endpoint table (bad magic); was it written by another program?"
    )]
    BadMagic { path: PathBuf },
    #[error("{path}: table version {found}, this rlaunch reads version {supported}; use the same rlaunch build for daemon and ranks")]
    Version {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("{path}: checksum mismatch (stored {stored:08x}, computed {computed:08x}); the file was modified or partly written")]
    Checksum {
        path: PathBuf,
        stored: u32,
        computed: u32,
    },
    #[error("{path}: corrupt table: {why}")]
    Corrupt { path: PathBuf, why: String },
    #[error("{what} {value:?} is longer than the table's {max} bytes; shorten it")]
    FieldTooLong {
        what: &'static str,
        value: String,
        max: usize,
    },
    #[error("rank {rank} is placed on node {node}, local rank {local_rank}, which the assignment does not have")]
    BadPlacement {
        rank: u32,
        node: u32,
        local_rank: u32,
    },
    #[error("rank {rank} is out of range: the table holds {count} ranks")]
    NoSuchRank { rank: u32, count: u32 },
}

/// Where a rank runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RankPlace {
    pub node: u32,
    pub local_rank: u32,
}

/// Ranks numbered node by node: node 0's ranks first, then node 1's, ...
pub fn block_placement(local_ranks: &[u32]) -> Vec<RankPlace> {
    local_ranks
        .iter()
        .enumerate()
        .flat_map(|(node, &n)| {
            (0..n).map(move |l| RankPlace {
                node: node as u32,
                local_rank: l,
            })
        })
        .collect()
}

/// What a table holds, before encoding or after decoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointTable {
    pub fabric: Fabric,
    /// The node whose daemon wrote this file.
    pub this_node: u32,
    pub nodes: Vec<NodePlan>,
    pub ranks: Vec<RankPlace>,
}

impl EndpointTable {
    /// Checks that every rank sits on an existing node and local rank.
    pub fn new(
        assignment: &Assignment,
        this_node: u32,
        ranks: Vec<RankPlace>,
    ) -> Result<Self, TableError> {
        for (r, p) in ranks.iter().enumerate() {
            let ok = assignment
                .nodes
                .get(p.node as usize)
                .is_some_and(|n| p.local_rank < n.local_ranks);
            if !ok {
                return Err(TableError::BadPlacement {
                    rank: r as u32,
                    node: p.node,
                    local_rank: p.local_rank,
                });
            }
        }
        Ok(EndpointTable {
            fabric: assignment.fabric,
            this_node,
            nodes: assignment.nodes.clone(),
            ranks,
        })
    }

    pub fn endpoint_of(&self, rank: u32) -> Option<Endpoint> {
        let p = self.ranks.get(rank as usize)?;
        crate::endpoints::endpoint_in(&self.nodes, p.node, p.local_rank)
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding.

fn put_str(buf: &mut [u8], what: &'static str, s: &str) -> Result<(), TableError> {
    // One byte stays NUL so C readers can use the field as a string.
    if s.len() >= buf.len() || s.as_bytes().contains(&0) {
        return Err(TableError::FieldTooLong {
            what,
            value: s.to_string(),
            max: buf.len() - 1,
        });
    }
    buf[..s.len()].copy_from_slice(s.as_bytes());
    Ok(())
}

fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn count(n: usize, what: &str) -> Result<u32, TableError> {
    u32::try_from(n).map_err(|_| TableError::Corrupt {
        path: PathBuf::new(),
        why: format!("{n} {what} do not fit a 32-bit count"),
    })
}

fn encode_nic(rec: &mut [u8], nic: &Nic) -> Result<(), TableError> {
    rec[0] = match nic.kind {
        NicKind::Tcp => 1,
        NicKind::Ib => 2,
        NicKind::Roce => 3,
    };
    if let Some(r) = &nic.rdma {
        rec[1] = r.port;
        put_u16(rec, 2, r.gid_index);
        put_u16(rec, 4, r.lid);
        rec[6] = match r.gid_type {
            None => 0,
            Some(GidType::IbRoceV1) => 1,
            Some(GidType::RoceV2) => 2,
        };
        rec[32..48].copy_from_slice(&r.gid.0);
        rec[69] = match r.link_layer {
            LinkLayer::Unknown => 0,
            LinkLayer::InfiniBand => 1,
            LinkLayer::Ethernet => 2,
        };
        put_u64(rec, 72, r.port_guid);
        put_u64(rec, 80, r.subnet_prefix);
        put_str(
            &mut rec[104..104 + IBDEV_LEN],
            "RDMA device name",
            &r.device,
        )?;
    }
    match nic.ip {
        None => rec[7] = 0,
        Some(IpAddr::V4(v4)) => {
            rec[7] = 4;
            rec[16..20].copy_from_slice(&v4.octets());
        }
        Some(IpAddr::V6(v6)) => {
            rec[7] = 6;
            rec[16..32].copy_from_slice(&v6.octets());
        }
    }
    put_u32(rec, 8, nic.mtu);
    put_u32(rec, 12, nic.speed_mbps.unwrap_or(0));
    if nic.mac.len() > MAC_LEN {
        return Err(TableError::FieldTooLong {
            what: "hardware address of",
            value: nic.ifname.clone(),
            max: MAC_LEN,
        });
    }
    rec[48..48 + nic.mac.len()].copy_from_slice(&nic.mac);
    rec[68] = nic.mac.len() as u8;
    put_str(&mut rec[88..88 + IFNAME_LEN], "interface name", &nic.ifname)?;
    Ok(())
}

/// Encodes a table into the bytes of the file.
pub fn encode(t: &EndpointTable) -> Result<Vec<u8>, TableError> {
    encode_with_sizes(t, NODE_RECORD_SIZE, NIC_RECORD_SIZE, RANK_RECORD_SIZE)
}

/// Record sizes are parameters so tests can play a newer writer with longer records.
fn encode_with_sizes(
    t: &EndpointTable,
    node_sz: usize,
    nic_sz: usize,
    rank_sz: usize,
) -> Result<Vec<u8>, TableError> {
    let nic_total: usize = t.nodes.iter().map(|n| n.nics.len()).sum();
    let node_off = HEADER_SIZE;
    let nic_off = node_off + t.nodes.len() * node_sz;
    let rank_off = nic_off + nic_total * nic_sz;
    let size = rank_off + t.ranks.len() * rank_sz;
    let mut b = vec![0u8; size];

    b[0..8].copy_from_slice(&MAGIC);
    put_u32(&mut b, 8, VERSION);
    put_u32(&mut b, 12, HEADER_SIZE as u32);
    put_u32(&mut b, 16, node_sz as u32);
    put_u32(&mut b, 20, nic_sz as u32);
    put_u32(&mut b, 24, rank_sz as u32);
    put_u32(
        &mut b,
        28,
        match t.fabric {
            Fabric::Tcp => 1,
            Fabric::Rdma => 2,
        },
    );
    put_u32(&mut b, 32, count(t.nodes.len(), "nodes")?);
    put_u32(&mut b, 36, count(nic_total, "NICs")?);
    put_u32(&mut b, 40, count(t.ranks.len(), "ranks")?);
    put_u32(&mut b, 44, t.this_node);
    put_u64(&mut b, 48, node_off as u64);
    put_u64(&mut b, 56, nic_off as u64);
    put_u64(&mut b, 64, rank_off as u64);
    put_u64(&mut b, 72, size as u64);

    let mut first_nic = 0usize;
    for (i, n) in t.nodes.iter().enumerate() {
        let rec = &mut b[node_off + i * node_sz..node_off + (i + 1) * node_sz];
        put_u32(rec, 0, n.node);
        put_u32(rec, 4, n.local_ranks);
        put_u32(rec, 8, first_nic as u32);
        put_u32(rec, 12, n.nics.len() as u32);
        put_u16(rec, 16, n.port_base);
        put_str(&mut rec[24..24 + HOSTNAME_LEN], "hostname", &n.hostname)?;
        for (k, nic) in n.nics.iter().enumerate() {
            let at = nic_off + (first_nic + k) * nic_sz;
            encode_nic(&mut b[at..at + nic_sz], nic)?;
        }
        first_nic += n.nics.len();
    }
    for (r, p) in t.ranks.iter().enumerate() {
        let at = rank_off + r * rank_sz;
        put_u32(&mut b, at, p.node);
        put_u32(&mut b, at + 4, p.local_rank);
    }
    let crc = crc32fast::hash(&b[HEADER_SIZE..]);
    put_u32(&mut b, 80, crc);
    Ok(b)
}

// ---------------------------------------------------------------------------------------------
// Decoding.

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or_default())
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default())
}

/// The validated header fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub fabric: Fabric,
    pub node_size: usize,
    pub nic_size: usize,
    pub rank_size: usize,
    pub node_count: u32,
    pub nic_count: u32,
    pub rank_count: u32,
    pub this_node: u32,
    pub node_off: usize,
    pub nic_off: usize,
    pub rank_off: usize,
}

/// A validated table over borrowed bytes (an mmap or a buffer).
pub struct TableView<'a> {
    bytes: &'a [u8],
    path: &'a Path,
    pub header: Header,
}

impl<'a> TableView<'a> {
    /// Validates magic, version, checksum and every section bound; `path` only names the file in
    /// errors. After this, record accesses cannot go out of bounds.
    pub fn parse(bytes: &'a [u8], path: &'a Path) -> Result<TableView<'a>, TableError> {
        let corrupt = |why: String| TableError::Corrupt {
            path: path.to_path_buf(),
            why,
        };
        if bytes.len() < 8 || bytes[..8] != MAGIC {
            return Err(TableError::BadMagic {
                path: path.to_path_buf(),
            });
        }
        if bytes.len() < HEADER_SIZE {
            return Err(corrupt(format!(
                "{} bytes, shorter than the {HEADER_SIZE}-byte header",
                bytes.len()
            )));
        }
        let version = u32_at(bytes, 8);
        if version != VERSION {
            return Err(TableError::Version {
                path: path.to_path_buf(),
                found: version,
                supported: VERSION,
            });
        }
        let file_size = u64_at(bytes, 72);
        if file_size != bytes.len() as u64 {
            return Err(corrupt(format!(
                "header says {file_size} bytes, file has {}",
                bytes.len()
            )));
        }
        let header_size = u32_at(bytes, 12) as usize;
        if header_size < HEADER_SIZE || header_size > bytes.len() {
            return Err(corrupt(format!("header size {header_size} is impossible")));
        }
        let stored = u32_at(bytes, 80);
        let computed = crc32fast::hash(&bytes[header_size..]);
        if stored != computed {
            return Err(TableError::Checksum {
                path: path.to_path_buf(),
                stored,
                computed,
            });
        }
        let sizes = [
            (16, NODE_RECORD_SIZE, "node"),
            (20, NIC_RECORD_SIZE, "NIC"),
            (24, RANK_RECORD_SIZE, "rank"),
        ];
        for (at, min, what) in sizes {
            let sz = u32_at(bytes, at) as usize;
            if sz < min {
                return Err(corrupt(format!(
                    "{what} record size {sz} is below version {VERSION}'s {min}"
                )));
            }
        }
        let fabric = match u32_at(bytes, 28) {
            1 => Fabric::Tcp,
            2 => Fabric::Rdma,
            f => return Err(corrupt(format!("unknown fabric code {f}"))),
        };
        let h = Header {
            fabric,
            node_size: u32_at(bytes, 16) as usize,
            nic_size: u32_at(bytes, 20) as usize,
            rank_size: u32_at(bytes, 24) as usize,
            node_count: u32_at(bytes, 32),
            nic_count: u32_at(bytes, 36),
            rank_count: u32_at(bytes, 40),
            this_node: u32_at(bytes, 44),
            node_off: usize::try_from(u64_at(bytes, 48)).unwrap_or(usize::MAX),
            nic_off: usize::try_from(u64_at(bytes, 56)).unwrap_or(usize::MAX),
            rank_off: usize::try_from(u64_at(bytes, 64)).unwrap_or(usize::MAX),
        };
        let sections = [
            (h.node_off, h.node_count, h.node_size, "node"),
            (h.nic_off, h.nic_count, h.nic_size, "NIC"),
            (h.rank_off, h.rank_count, h.rank_size, "rank"),
        ];
        for (off, n, sz, what) in sections {
            let end = (n as usize)
                .checked_mul(sz)
                .and_then(|len| off.checked_add(len));
            if off < header_size || end.map_or(true, |e| e > bytes.len()) {
                return Err(corrupt(format!(
                    "{what} section ({n} records at offset {off}) lies outside the file"
                )));
            }
        }
        if h.this_node >= h.node_count && h.node_count > 0 {
            return Err(corrupt(format!(
                "writer node {} is not among the {} nodes",
                h.this_node, h.node_count
            )));
        }
        let view = TableView {
            bytes,
            path,
            header: h,
        };
        // Cross-references are checked once here so lookups need no error paths for them.
        for i in 0..h.node_count {
            let n = view.node_raw(i);
            let end = u64::from(n.first_nic) + u64::from(n.nic_count);
            if end > u64::from(h.nic_count) {
                return Err(corrupt(format!(
                    "node {i} names NICs {}..{end}, the table has {}",
                    n.first_nic, h.nic_count
                )));
            }
            if n.nic_count == 0 && n.local_ranks > 0 {
                return Err(corrupt(format!(
                    "node {i} has {} ranks but no NIC",
                    n.local_ranks
                )));
            }
        }
        for r in 0..h.rank_count {
            let (node, local_rank) = view.rank_raw(r);
            let ok = node < h.node_count && local_rank < view.node_raw(node).local_ranks;
            if !ok {
                return Err(corrupt(format!("rank {r} is placed on node {node}, local rank {local_rank}, which does not exist")));
            }
        }
        Ok(view)
    }

    fn rec(&self, off: usize, size: usize, i: u32) -> &'a [u8] {
        let at = off + i as usize * size;
        &self.bytes[at..at + size]
    }

    fn node_raw(&self, i: u32) -> RawNode {
        let r = self.rec(self.header.node_off, self.header.node_size, i);
        RawNode {
            node: u32_at(r, 0),
            local_ranks: u32_at(r, 4),
            first_nic: u32_at(r, 8),
            nic_count: u32_at(r, 12),
            port_base: u16_at(r, 16),
        }
    }

    fn rank_raw(&self, r: u32) -> (u32, u32) {
        let rec = self.rec(self.header.rank_off, self.header.rank_size, r);
        (u32_at(rec, 0), u32_at(rec, 4))
    }

    fn string(&self, field: &[u8], what: &str) -> Result<String, TableError> {
        let end = field
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| TableError::Corrupt {
                path: self.path.to_path_buf(),
                why: format!("{what} is not NUL-terminated"),
            })?;
        String::from_utf8(field[..end].to_vec()).map_err(|_| TableError::Corrupt {
            path: self.path.to_path_buf(),
            why: format!("{what} is not UTF-8"),
        })
    }

    pub fn hostname(&self, node: u32) -> Result<String, TableError> {
        let r = self.rec(self.header.node_off, self.header.node_size, node);
        self.string(
            &r[24..24 + HOSTNAME_LEN],
            &format!("hostname of node {node}"),
        )
    }

    fn nic(&self, i: u32) -> Result<Nic, TableError> {
        let r = self.rec(self.header.nic_off, self.header.nic_size, i);
        let corrupt = |why: String| TableError::Corrupt {
            path: self.path.to_path_buf(),
            why,
        };
        let kind = match r[0] {
            1 => NicKind::Tcp,
            2 => NicKind::Ib,
            3 => NicKind::Roce,
            k => return Err(corrupt(format!("NIC {i} has unknown kind {k}"))),
        };
        let ip = match r[7] {
            0 => None,
            4 => Some(IpAddr::V4(Ipv4Addr::new(r[16], r[17], r[18], r[19]))),
            6 => Some(IpAddr::V6(Ipv6Addr::from(
                <[u8; 16]>::try_from(&r[16..32]).unwrap_or_default(),
            ))),
            f => return Err(corrupt(format!("NIC {i} has unknown address family {f}"))),
        };
        let mac_len = usize::from(r[68]);
        if mac_len > MAC_LEN {
            return Err(corrupt(format!(
                "NIC {i} has a {mac_len}-byte hardware address"
            )));
        }
        let rdma = if kind == NicKind::Tcp {
            None
        } else {
            Some(RdmaPort {
                device: self
                    .string(&r[104..104 + IBDEV_LEN], &format!("RDMA device of NIC {i}"))?,
                port: r[1],
                link_layer: match r[69] {
                    1 => LinkLayer::InfiniBand,
                    2 => LinkLayer::Ethernet,
                    _ => LinkLayer::Unknown,
                },
                lid: u16_at(r, 4),
                gid_index: u16_at(r, 2),
                gid: Gid(<[u8; 16]>::try_from(&r[32..48]).unwrap_or_default()),
                gid_type: match r[6] {
                    1 => Some(GidType::IbRoceV1),
                    2 => Some(GidType::RoceV2),
                    _ => None,
                },
                port_guid: u64_at(r, 72),
                subnet_prefix: u64_at(r, 80),
            })
        };
        let speed = u32_at(r, 12);
        Ok(Nic {
            kind,
            ifname: self.string(
                &r[88..88 + IFNAME_LEN],
                &format!("interface name of NIC {i}"),
            )?,
            ip,
            mac: r[48..48 + mac_len].to_vec(),
            mtu: u32_at(r, 8),
            speed_mbps: (speed != 0).then_some(speed),
            rdma,
        })
    }

    /// Rank `rank`'s endpoint, derived by the NIC and port rules.
    pub fn endpoint_of(&self, rank: u32) -> Result<Endpoint, TableError> {
        if rank >= self.header.rank_count {
            return Err(TableError::NoSuchRank {
                rank,
                count: self.header.rank_count,
            });
        }
        let (node, local_rank) = self.rank_raw(rank);
        let n = self.node_raw(node);
        let nic = self.nic(n.first_nic + local_rank % n.nic_count)?;
        let port = u32::from(n.port_base) + local_rank;
        let port = u16::try_from(port).map_err(|_| TableError::Corrupt {
            path: self.path.to_path_buf(),
            why: format!(
                "node {node}: port base {} + local rank {local_rank} exceeds 65535",
                n.port_base
            ),
        })?;
        Ok(Endpoint {
            node,
            local_rank,
            host: self.hostname(node)?,
            ip: nic.ip,
            port,
            nic,
        })
    }

    /// The whole table, decoded.
    pub fn to_table(&self) -> Result<EndpointTable, TableError> {
        let mut nodes = Vec::new();
        for i in 0..self.header.node_count {
            let n = self.node_raw(i);
            let nics = (n.first_nic..n.first_nic + n.nic_count)
                .map(|k| self.nic(k))
                .collect::<Result<_, _>>()?;
            nodes.push(NodePlan {
                node: n.node,
                hostname: self.hostname(i)?,
                local_ranks: n.local_ranks,
                port_base: n.port_base,
                nics,
            });
        }
        let ranks = (0..self.header.rank_count)
            .map(|r| {
                let (node, local_rank) = self.rank_raw(r);
                RankPlace { node, local_rank }
            })
            .collect();
        Ok(EndpointTable {
            fabric: self.header.fabric,
            this_node: self.header.this_node,
            nodes,
            ranks,
        })
    }
}

struct RawNode {
    #[allow(dead_code)] // kept to mirror the record; node index = position today
    node: u32,
    local_ranks: u32,
    first_nic: u32,
    nic_count: u32,
    port_base: u16,
}

// ---------------------------------------------------------------------------------------------
// Files.

pub struct TableWriter;

fn io(p: &Path) -> impl Fn(std::io::Error) -> TableError + '_ {
    move |source| TableError::Io {
        path: p.to_path_buf(),
        source,
    }
}

impl TableWriter {
    /// Writes the table next to `path` under a temporary name and renames it into place, so a rank
    /// that opens `path` sees either nothing or the complete table.
    pub fn write(path: &Path, table: &EndpointTable) -> Result<(), TableError> {
        let bytes = encode(table)?;
        let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
        tmp_name.push(format!(".tmp.{}", std::process::id()));
        let tmp = path.with_file_name(tmp_name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io(&tmp))?;
        let result = (|| {
            file.set_len(bytes.len() as u64).map_err(io(&tmp))?;
            // SAFETY: the temporary file is ours alone until the rename below.
            let mut map = unsafe { memmap2::MmapMut::map_mut(&file) }.map_err(io(&tmp))?;
            map.copy_from_slice(&bytes);
            map.flush().map_err(io(&tmp))?;
            std::fs::rename(&tmp, path).map_err(io(path))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

/// A table mapped read-only by a rank.
pub struct TableReader {
    path: PathBuf,
    map: memmap2::Mmap,
    header: Header,
}

impl TableReader {
    pub fn open(path: &Path) -> Result<TableReader, TableError> {
        let file = File::open(path).map_err(|source| TableError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        // SAFETY: tables are replaced by rename, never rewritten in place, so the mapped file does
        // not change under us.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| TableError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let header = TableView::parse(&map, path)?.header;
        Ok(TableReader {
            path: path.to_path_buf(),
            map,
            header,
        })
    }

    pub fn view(&self) -> TableView<'_> {
        TableView {
            bytes: &self.map,
            path: &self.path,
            header: self.header,
        }
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn endpoint_of(&self, rank: u32) -> Result<Endpoint, TableError> {
        self.view().endpoint_of(rank)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::Gid;
    use proptest::prelude::*;

    fn tcp_nic(name: &str, ip: &str) -> Nic {
        Nic {
            kind: NicKind::Tcp,
            ifname: name.into(),
            ip: Some(ip.parse().unwrap()),
            mac: vec![2, 0, 0, 0, 0, 9],
            mtu: 1500,
            speed_mbps: Some(25_000),
            rdma: None,
        }
    }

    fn roce_nic() -> Nic {
        Nic {
            kind: NicKind::Roce,
            ifname: "ens1f0np0".into(),
            ip: Some("10.0.0.5".parse().unwrap()),
            mac: vec![0x0c, 0x42, 0xa1, 0x65, 0x7e, 0x2a],
            mtu: 4096,
            speed_mbps: None,
            rdma: Some(RdmaPort {
                device: "mlx5_0".into(),
                port: 1,
                link_layer: LinkLayer::Ethernet,
                lid: 0,
                gid_index: 3,
                gid: crate::discover::parse_gid("0000:0000:0000:0000:0000:ffff:0a00:0005").unwrap(),
                gid_type: Some(GidType::RoceV2),
                port_guid: 0x0e42_a1ff_fe65_7e2a,
                subnet_prefix: 0xfe80_0000_0000_0000,
            }),
        }
    }

    fn sample() -> EndpointTable {
        let a = Assignment {
            fabric: Fabric::Rdma,
            nodes: vec![
                NodePlan {
                    node: 0,
                    hostname: "n0".into(),
                    local_ranks: 3,
                    port_base: 20000,
                    nics: vec![roce_nic(), tcp_nic("eth0", "192.0.2.1")],
                },
                NodePlan {
                    node: 1,
                    hostname: "n1.cluster".into(),
                    local_ranks: 2,
                    port_base: 30000,
                    nics: vec![tcp_nic("eth0", "2001:db8::1")],
                },
            ],
        };
        EndpointTable::new(&a, 1, block_placement(&[3, 2])).unwrap()
    }

    fn refresh_crc(b: &mut [u8]) {
        let crc = crc32fast::hash(&b[HEADER_SIZE..]);
        put_u32(b, 80, crc);
    }

    #[test]
    fn roundtrip_and_rules() {
        let t = sample();
        let bytes = encode(&t).unwrap();
        let v = TableView::parse(&bytes, Path::new("t")).unwrap();
        assert_eq!(v.to_table().unwrap(), t);
        let e = v.endpoint_of(1).unwrap();
        assert_eq!((e.node, e.local_rank, e.port), (0, 1, 20001));
        assert_eq!(e.nic.ifname, "eth0", "local rank 1 % 2 NICs");
        let e = v.endpoint_of(2).unwrap();
        assert_eq!(e.nic.rdma.as_ref().unwrap().gid_index, 3);
        let e = v.endpoint_of(4).unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.ip),
            ("n1.cluster", 30001, Some("2001:db8::1".parse().unwrap()))
        );
        for r in 0..5 {
            assert_eq!(Some(v.endpoint_of(r).unwrap()), t.endpoint_of(r));
        }
        assert!(matches!(
            v.endpoint_of(5),
            Err(TableError::NoSuchRank { rank: 5, count: 5 })
        ));
    }

    #[test]
    fn fixed_layout_offsets() {
        let bytes = encode(&sample()).unwrap();
        assert_eq!(&bytes[..8], b"RLNCHTBL");
        assert_eq!(u32_at(&bytes, 8), 1);
        assert_eq!(u32_at(&bytes, 32), 2, "node count");
        assert_eq!(u32_at(&bytes, 36), 3, "nic count");
        assert_eq!(u32_at(&bytes, 40), 5, "rank count");
        assert_eq!(u64_at(&bytes, 48), 96);
        assert_eq!(u64_at(&bytes, 56), 96 + 2 * 288);
        assert_eq!(u64_at(&bytes, 64), 96 + 2 * 288 + 3 * 192);
        assert_eq!(bytes.len(), 96 + 2 * 288 + 3 * 192 + 5 * 8);
        let node1 = 96 + 288;
        assert_eq!(u16_at(&bytes, node1 + 16), 30000);
        assert_eq!(&bytes[node1 + 24..node1 + 35], b"n1.cluster\0");
        let nic0 = 96 + 2 * 288;
        assert_eq!(bytes[nic0 + 7], 4);
        assert_eq!(&bytes[nic0 + 16..nic0 + 20], &[10, 0, 0, 5]);
        assert_eq!(&bytes[nic0 + 104..nic0 + 111], b"mlx5_0\0");
    }

    #[test]
    fn rejects_bad_magic_version_checksum_and_truncation() {
        let good = encode(&sample()).unwrap();
        let p = Path::new("/dev/shm/rlaunch-j-0.tbl");
        let mut b = good.clone();
        b[0] = b'X';
        assert!(matches!(
            TableView::parse(&b, p),
            Err(TableError::BadMagic { .. })
        ));
        let mut b = good.clone();
        put_u32(&mut b, 8, 2);
        let err = TableView::parse(&b, p).err().unwrap();
        assert_eq!(err.to_string(), "/dev/shm/rlaunch-j-0.tbl: table version 2, this rlaunch reads version 1; use the same rlaunch build for daemon and ranks");
        let mut b = good.clone();
        *b.last_mut().unwrap() ^= 1;
        assert!(matches!(
            TableView::parse(&b, p),
            Err(TableError::Checksum { .. })
        ));
        let b = &good[..good.len() - 8];
        assert!(matches!(
            TableView::parse(b, p),
            Err(TableError::Corrupt { .. })
        ));
        assert!(matches!(
            TableView::parse(&good[..50], p),
            Err(TableError::Corrupt { .. })
        ));
        assert!(matches!(
            TableView::parse(b"RLN", p),
            Err(TableError::BadMagic { .. })
        ));
    }

    #[test]
    fn rejects_dangling_references_even_with_valid_checksum() {
        let good = encode(&sample()).unwrap();
        let p = Path::new("t");
        let rank_off = u64_at(&good, 64) as usize;
        let mut b = good.clone();
        put_u32(&mut b, rank_off + 4 * 8, 7); // rank 4 -> node 7
        refresh_crc(&mut b);
        let err = TableView::parse(&b, p).err().unwrap();
        assert!(
            err.to_string().contains("rank 4 is placed on node 7"),
            "{err}"
        );
        let mut b = good.clone();
        put_u32(&mut b, 96 + 288 + 8, 3); // node 1's first NIC beyond the 3 NICs
        refresh_crc(&mut b);
        assert!(TableView::parse(&b, p)
            .err()
            .unwrap()
            .to_string()
            .contains("node 1 names NICs 3..4"));
        let mut b = good;
        put_u32(&mut b, 20, 100); // NIC records smaller than version 1's
        assert!(TableView::parse(&b, p)
            .err()
            .unwrap()
            .to_string()
            .contains("NIC record size 100"));
    }

    #[test]
    fn longer_records_from_a_newer_writer_still_read() {
        let t = sample();
        let bytes = encode_with_sizes(
            &t,
            NODE_RECORD_SIZE + 32,
            NIC_RECORD_SIZE + 8,
            RANK_RECORD_SIZE + 8,
        )
        .unwrap();
        let v = TableView::parse(&bytes, Path::new("t")).unwrap();
        assert_eq!(v.to_table().unwrap(), t);
    }

    #[test]
    fn overlong_strings_are_refused() {
        let mut t = sample();
        t.nodes[0].hostname = "h".repeat(HOSTNAME_LEN);
        assert!(matches!(
            encode(&t),
            Err(TableError::FieldTooLong {
                what: "hostname",
                max: 255,
                ..
            })
        ));
        let mut t = sample();
        t.nodes[1].nics[0].ifname = "a-very-long-ifname".into();
        assert!(matches!(
            encode(&t),
            Err(TableError::FieldTooLong {
                what: "interface name",
                max: 15,
                ..
            })
        ));
    }

    #[test]
    fn placement_must_exist() {
        let t = sample();
        let a = Assignment {
            fabric: t.fabric,
            nodes: t.nodes.clone(),
        };
        let err = EndpointTable::new(
            &a,
            0,
            vec![RankPlace {
                node: 1,
                local_rank: 2,
            }],
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "rank 0 is placed on node 1, local rank 2, which the assignment does not have"
        );
    }

    #[test]
    fn writer_and_reader_through_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = table_path(dir.path(), "job42", 1);
        assert!(path.ends_with("rlaunch-job42-1.tbl"));
        TableWriter::write(&path, &sample()).unwrap();
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 1, "no temporary file left behind: {left:?}");
        let r = TableReader::open(&path).unwrap();
        assert_eq!(r.header().rank_count, 5);
        assert_eq!(r.endpoint_of(3).unwrap().port, 30000);
        // Rewriting replaces the file; a reader keeps its old mapping.
        let mut t2 = sample();
        t2.nodes[1].port_base = 31000;
        TableWriter::write(&path, &t2).unwrap();
        assert_eq!(r.endpoint_of(3).unwrap().port, 30000);
        assert_eq!(
            TableReader::open(&path)
                .unwrap()
                .endpoint_of(3)
                .unwrap()
                .port,
            31000
        );
        let missing = TableReader::open(&dir.path().join("nope.tbl"))
            .err()
            .unwrap();
        assert!(missing.to_string().contains("nope.tbl"), "{missing}");
    }

    fn arb_nic() -> impl Strategy<Value = Nic> {
        (
            any::<bool>(),
            any::<[u8; 4]>(),
            any::<u16>(),
            any::<[u8; 16]>(),
            0u32..100_000,
            "[a-z0-9]{1,15}",
        )
            .prop_map(|(rdma, ip, idx, gid, speed, name)| {
                let mut n = if rdma {
                    roce_nic()
                } else {
                    tcp_nic("x", "192.0.2.1")
                };
                n.ifname = name;
                n.ip = Some(IpAddr::V4(Ipv4Addr::from(ip)));
                n.speed_mbps = (speed != 0).then_some(speed);
                if let Some(r) = n.rdma.as_mut() {
                    r.gid_index = idx;
                    r.gid = Gid(gid);
                }
                n
            })
    }

    proptest! {
        #[test]
        fn any_table_roundtrips(
            nodes in proptest::collection::vec((0u32..6, 1u16..60000, proptest::collection::vec(arb_nic(), 1..4), "[a-z][a-z0-9.-]{0,40}"), 1..6),
            this in any::<u32>(),
        ) {
            let plans: Vec<NodePlan> = nodes.into_iter().enumerate()
                .map(|(i, (lr, pb, nics, host))| NodePlan { node: i as u32, hostname: host, local_ranks: lr, port_base: pb, nics })
                .collect();
            let counts: Vec<u32> = plans.iter().map(|n| n.local_ranks).collect();
            let this = this % plans.len() as u32;
            let t = EndpointTable::new(&Assignment { fabric: Fabric::Tcp, nodes: plans }, this, block_placement(&counts)).unwrap();
            let bytes = encode(&t).unwrap();
            let v = TableView::parse(&bytes, Path::new("p")).unwrap();
            prop_assert_eq!(v.to_table().unwrap(), t.clone());
            for r in 0..t.ranks.len() as u32 {
                prop_assert_eq!(Some(v.endpoint_of(r).unwrap()), t.endpoint_of(r));
            }
        }

        #[test]
        fn parse_never_panics_on_garbage(mut bytes in proptest::collection::vec(any::<u8>(), 0..1200), fix_magic in any::<bool>()) {
            if fix_magic && bytes.len() >= 96 {
                bytes[..8].copy_from_slice(&MAGIC);
                put_u32(&mut bytes, 8, VERSION);
                let len = bytes.len() as u64;
                put_u64(&mut bytes, 72, len);
                put_u32(&mut bytes, 12, 96);
                refresh_crc(&mut bytes);
            }
            if let Ok(v) = TableView::parse(&bytes, Path::new("g")) {
                let _ = v.to_table();
                for r in 0..v.header.rank_count.min(64) {
                    let _ = v.endpoint_of(r);
                }
            }
        }
    }
}
