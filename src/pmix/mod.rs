//! PMIx for Open MPI ranks: each daemon becomes a PMIx server through libpmix's server API (as
//! Slurm's mpi/pmix plugin does), so unmodified Open MPI 4.1 programs run under rlaunch.
//! Facts: ../shared/docs/pmi.md (PMIx section).
//!
//! - [`ffi`]: the only unsafe code, libpmix loaded at run time; its module callbacks become
//!   [`ffi::Upcall`]s handed to the daemon's event loop.
//! - [`engine`]: the per-node state machine (no I/O): which clients connected and finalized, the
//!   PMIx fence as a tree collective (each node contributes one opaque blob; the concatenation
//!   comes back), direct-modex requests between nodes, aborts.
//! - [`elf`]: `--mpi auto` reads the program's `DT_NEEDED` libraries.
//! - This file: the choice of interface, the job description given to libpmix, the rank
//!   environment. `server.rs` (the daemon side) and `frontend_glue.rs` (the fence root and
//!   request routing at the front end) carry out the engine's decisions.

pub mod elf;
pub mod engine;
pub mod ffi;

use launchers::map::ProcMap;
use std::path::{Path, PathBuf};

/// Variables the front end must not forward to remote ranks and a daemon must not pass on from
/// its own environment: they would point a rank at another job's PMIx server. `PMIX_MCA_*` are
/// user settings and stay.
pub fn is_stale_pmix_var(name: &str) -> bool {
    name.starts_with("PMIX_") && !name.starts_with("PMIX_MCA_")
}

/// The inherited variables (`names`, e.g. the daemon's own environment when rlaunch runs under
/// another launcher) that a rank of `interface` must not see: the other interface's set, and a
/// stale PMIx server's address in any case. One interface per rank.
pub fn scrub<'a>(interface: Interface, names: impl Iterator<Item = &'a str>) -> Vec<String> {
    names.filter(|n| is_stale_pmix_var(n) || (interface == Interface::Pmix && n.starts_with("PMI_"))).map(str::to_string).collect()
}

/// `--mpi`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MpiFlag {
    Pmi,
    Pmix,
    Auto,
}

impl std::str::FromStr for MpiFlag {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pmi" => Ok(MpiFlag::Pmi),
            "pmix" => Ok(MpiFlag::Pmix),
            "auto" => Ok(MpiFlag::Auto),
            _ => Err("expected pmi, pmix or auto".into()),
        }
    }
}

pub use crate::spec::Interface;

/// What a program's linked libraries say about its MPI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Detected {
    /// Open MPI (or a direct libpmix client): the named library.
    OpenMpi(String),
    /// MPICH or an MPICH-ABI MPI (or a direct PMI client): the named library.
    Mpich(String),
    /// No MPI library linked, or the program could not be read (why).
    Unknown(String),
}

/// The `--mpi auto` rule on a program's `DT_NEEDED` list. Open MPI ships `libmpi.so.40` (3.x to
/// 5.x; `.20` in 2.x) with `libopen-pal`/`libopen-rte` and the `libmpi_*` bindings; MPICH ships
/// `libmpich*` and, like Intel MPI and MVAPICH, the MPICH ABI `libmpi.so.12` / `libmpifort.so.12`.
/// Open MPI wins if both appear (such a program is broken anyway, and PMIx is what it would need).
pub fn classify(needed: &[String]) -> Detected {
    let soname = |l: &str| l.split(".so").next().unwrap_or(l).to_string();
    let is_ompi = |l: &str| {
        let base = soname(l);
        l.starts_with("libmpi.so.40")
            || l.starts_with("libmpi.so.20")
            || base == "libopen-pal"
            || base == "libopen-rte"
            || base == "libpmix"
            || (base.starts_with("libmpi_") && !l.contains(".so.12"))
    };
    let is_mpich = |l: &str| {
        let base = soname(l);
        base.starts_with("libmpich")
            || l.starts_with("libmpi.so.12")
            || l.starts_with("libmpifort.so.12")
            || base == "libpmi"
            || base == "libpmi2"
    };
    if let Some(l) = needed.iter().find(|l| is_ompi(l)) {
        return Detected::OpenMpi(l.clone());
    }
    if let Some(l) = needed.iter().find(|l| is_mpich(l)) {
        return Detected::Mpich(l.clone());
    }
    Detected::Unknown("it links no known MPI library".into())
}

/// Where `program` resolves, as exec would find it.
pub fn resolve_program(program: &str, cwd: &Path, path: Option<&str>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if program.contains('/') {
        return Some(cwd.join(program));
    }
    path.unwrap_or("/usr/local/bin:/usr/bin:/bin")
        .split(':')
        .map(|d| if d.is_empty() { cwd.to_path_buf() } else { cwd.join(d) })
        .map(|d| d.join(program))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// Reads as much of `file` as [`elf::needed`] asks for and classifies it.
pub fn detect_file(file: &Path) -> Detected {
    use std::io::Read;
    /// Past this, the program is not worth reading for a guess (the dynamic section of real
    /// programs is within the first few MiB).
    const LIMIT: u64 = 256 << 20;
    let mut f = match std::fs::File::open(file) {
        Ok(f) => f,
        Err(e) => return Detected::Unknown(format!("cannot read {}: {e}", file.display())),
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let mut data = Vec::new();
    let mut want = 64 * 1024u64;
    loop {
        let target = want.min(len).min(LIMIT);
        if (data.len() as u64) < target {
            let mut more = Vec::new();
            if let Err(e) = (&mut f).take(target - data.len() as u64).read_to_end(&mut more) {
                return Detected::Unknown(format!("cannot read {}: {e}", file.display()));
            }
            if more.is_empty() {
                return Detected::Unknown(format!("{} is shorter than its headers say", file.display()));
            }
            data.extend_from_slice(&more);
        }
        match elf::needed(&data, len) {
            Ok(libs) => return classify(&libs),
            Err(elf::ElfError::NeedMore(n)) if n <= LIMIT && n > data.len() as u64 => want = n,
            Err(elf::ElfError::NotElf) => return Detected::Unknown(format!("{} is not an ELF program (a script?)", file.display())),
            Err(e) => return Detected::Unknown(format!("{}: {e}", file.display())),
        }
    }
}

/// One application context as `--mpi auto` sees it: its program, where it runs from, its PATH.
pub struct AppProgram<'a> {
    pub program: &'a str,
    pub cwd: &'a Path,
    pub path: Option<&'a str>,
}

/// The interface for a job, a note for `--verbose` saying why, and whether the ranks speak PMI
/// or PMIx (`--mpi pmi|pmix`, or an MPI library found), which makes job scope the default restart.
pub fn choose(flag: MpiFlag, apps: &[AppProgram<'_>]) -> Result<(Interface, String, bool), String> {
    let detected: Vec<Detected> = match flag {
        MpiFlag::Pmi => return Ok((Interface::Pmi, "--mpi pmi".into(), true)),
        MpiFlag::Pmix => return Ok((Interface::Pmix, "--mpi pmix".into(), true)),
        MpiFlag::Auto => apps
            .iter()
            .map(|a| match resolve_program(a.program, a.cwd, a.path) {
                Some(p) => detect_file(&p),
                None => Detected::Unknown(format!("'{}' is not in PATH here", a.program)),
            })
            .collect(),
    };
    let speaks_mpi = detected.iter().any(|d| !matches!(d, Detected::Unknown(_)));
    decide(apps.iter().map(|a| a.program).zip(detected.iter())).map(|(i, why)| (i, why, speaks_mpi))
}

/// The `--mpi auto` decision over the detected contexts (pure).
pub fn decide<'a>(apps: impl Iterator<Item = (&'a str, &'a Detected)>) -> Result<(Interface, String), String> {
    let mut ompi = None;
    let mut mpich = None;
    let mut unknown = Vec::new();
    for (program, d) in apps {
        match d {
            Detected::OpenMpi(l) => ompi = ompi.or(Some((program, l.clone()))),
            Detected::Mpich(l) => mpich = mpich.or(Some((program, l.clone()))),
            Detected::Unknown(why) => unknown.push(format!("{program}: {why}")),
        }
    }
    match (ompi, mpich) {
        (Some((p, l)), Some((q, m))) => Err(format!(
            "'{p}' is an Open MPI program ({l}) and '{q}' an MPICH one ({m}); one job cannot serve both (they cannot talk to each other); run them as separate jobs"
        )),
        (Some((p, l)), None) => Ok((Interface::Pmix, format!("--mpi auto: PMIx, '{p}' links {l}"))),
        (None, Some((p, l))) => Ok((Interface::Pmi, format!("--mpi auto: PMI, '{p}' links {l}"))),
        (None, None) => Ok((Interface::Pmi, format!("--mpi auto: PMI (no MPI library detected: {})", unknown.join("; ")))),
    }
}

/// The job as libpmix is told about it, from one node's point of view. Pure: built from the
/// node list and the process map that every daemon computes alike.
#[derive(Debug, Clone)]
pub struct JobLayout {
    pub nspace: String,
    /// This daemon's node.
    pub node: u32,
    /// Host name of every node as libpmix sees it: the node-list names, made unique (a name
    /// listed twice, as when several daemons share a machine, gets `~2`, `~3`…).
    pub names: Vec<String>,
    /// Nodes that run ranks, ascending: the order of the node map and the proc map.
    pub hosting: Vec<u32>,
    pub size: u32,
    pub universe: u32,
    pub num_apps: u32,
}

impl JobLayout {
    pub fn new(nspace: &str, node_names: &[String], slots: &[u32], map: &ProcMap, node: u32) -> JobLayout {
        let mut seen: std::collections::HashMap<&str, u32> = std::collections::HashMap::new();
        let names = node_names
            .iter()
            .map(|n| {
                let c = seen.entry(n.as_str()).or_insert(0);
                *c += 1;
                if *c == 1 {
                    n.clone()
                } else {
                    format!("{n}~{c}")
                }
            })
            .collect();
        let hosting = (0..map.num_nodes()).filter(|&n| !map.ranks_on(n).is_empty()).collect();
        let slot_sum: u32 = slots.iter().fold(0u32, |a, &s| a.saturating_add(s));
        JobLayout {
            nspace: nspace.to_string(),
            node,
            names,
            hosting,
            size: map.size(),
            universe: slot_sum.max(map.size()),
            num_apps: map.num_apps().max(1),
        }
    }

    /// Input to `PMIx_generate_regex`: the hosting nodes' names, comma-separated.
    pub fn node_map_input(&self) -> String {
        self.hosting.iter().map(|&n| self.names[n as usize].as_str()).collect::<Vec<_>>().join(",")
    }

    /// Input to `PMIx_generate_ppn`: each hosting node's ranks as ranges, `;` between nodes.
    pub fn proc_map_input(&self, map: &ProcMap) -> String {
        self.hosting.iter().map(|&n| ranges(map.ranks_on(n))).collect::<Vec<_>>().join(";")
    }

    /// `PMIX_LOCAL_PEERS`: this node's ranks, a plain comma list.
    pub fn local_peers(&self, map: &ProcMap) -> String {
        map.ranks_on(self.node).iter().map(u32::to_string).collect::<Vec<_>>().join(",")
    }

    pub fn hostname(&self, node: u32) -> &str {
        &self.names[node as usize]
    }
}

/// `[0,1,2,5,7,8]` → `0-2,5,7-8`.
fn ranges(ranks: &[u32]) -> String {
    let mut out = Vec::new();
    let mut i = 0;
    while i < ranks.len() {
        let start = ranks[i];
        let mut end = start;
        while i + 1 < ranks.len() && ranks[i + 1] == end.wrapping_add(1) {
            i += 1;
            end = ranks[i];
        }
        out.push(if start == end { start.to_string() } else { format!("{start}-{end}") });
        i += 1;
    }
    out.join(",")
}

/// What one rank's info says about it (`PMIX_PROC_INFO_ARRAY`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankInfo {
    pub rank: u32,
    pub local_rank: u16,
    pub node_rank: u16,
    pub node: u32,
    pub app: u32,
    pub app_rank: u32,
}

pub fn rank_infos(map: &ProcMap) -> Vec<RankInfo> {
    map.ranks()
        .iter()
        .enumerate()
        .map(|(r, p)| {
            let r = r as u32;
            let lr = p.local_rank.min(u16::MAX as u32) as u16;
            RankInfo { rank: r, local_rank: lr, node_rank: lr, node: p.node, app: p.app, app_rank: r - map.app_ranks(p.app).start }
        })
        .collect()
}

/// Open MPI 4.1 variables to add to a PMIx rank's environment, on top of what
/// `PMIx_server_setup_fork` returns. `lazy`: Open MPI's asynchronous modex (no data in the
/// init fence; peers are fetched on first use through direct modex).
pub fn openmpi_env(map: &ProcMap, rank: u32, lazy: bool) -> Vec<(String, String)> {
    let p = map.rank(rank);
    let mut v = vec![
        // Without this Open MPI 4.1 takes a foreign PMIx server for a singleton start: every rank
        // says "0 of 1" (schizo/orte claims the launch, pmi.md).
        ("OMPI_MCA_schizo".to_string(), "^orte".to_string()),
        // What mpirun gives its ranks, read by applications and scripts (device selection by
        // local rank, for one); Open MPI itself takes everything from PMIx.
        ("OMPI_COMM_WORLD_SIZE".into(), map.size().to_string()),
        ("OMPI_COMM_WORLD_RANK".into(), rank.to_string()),
        ("OMPI_COMM_WORLD_LOCAL_RANK".into(), p.local_rank.to_string()),
        ("OMPI_COMM_WORLD_LOCAL_SIZE".into(), map.ranks_on(p.node).len().to_string()),
        ("OMPI_COMM_WORLD_NODE_RANK".into(), p.local_rank.to_string()),
        ("OMPI_UNIVERSE_SIZE".into(), map.size().to_string()),
        ("OMPI_APP_CTX_NUM_PROCS".into(), map.app_ranks(p.app).len().to_string()),
    ];
    if lazy {
        v.push(("OMPI_MCA_pmix_base_async_modex".into(), "1".into()));
        v.push(("OMPI_MCA_pmix_base_collect_data".into(), "0".into()));
    }
    v
}

/// Open MPI's transport choice when the job's fabric is TCP (no node has an RDMA device, or
/// `--fabric tcp`): `OMPI_MCA_pml=ob1`, the PML Open MPI 4.1 selects there anyway (TCP and
/// shared memory), named up front so that each rank skips probing the cm/psm/psm2/ofi/ucx
/// components for hardware that is absent. The PSM probes alone sleep 2 x 100 ms in every rank.
/// `user_chose`: the user picked a PML or MTL (environment or MCA parameter file); theirs wins.
pub fn openmpi_fabric_env(fabric: Option<fabrics::Fabric>, user_chose: bool) -> Vec<(String, String)> {
    if fabric == Some(fabrics::Fabric::Tcp) && !user_chose {
        vec![("OMPI_MCA_pml".to_string(), "ob1".to_string())]
    } else {
        Vec::new()
    }
}

/// The variables by which a user decides which of hwloc's plugins a process loads, or whether
/// hwloc parses XML with libxml2: one of them in a rank's environment turns
/// [`hwloc_plugin_env`] off.
pub const HWLOC_PLUGIN_CHOICES: [&str; 4] = ["HWLOC_PLUGINS_BLACKLIST", "HWLOC_LIBXML", "HWLOC_LIBXML_IMPORT", "HWLOC_LIBXML_EXPORT"];

/// `HWLOC_PLUGINS_BLACKLIST=hwloc_xml_libxml` for a PMIx rank, unless `user_chose` (one of
/// [`HWLOC_PLUGIN_CHOICES`] is in its environment). Open MPI adopts the daemon's topology from
/// libpmix's shared memory, yet hwloc loads every plugin first; the libxml2 one brings libxml2,
/// ICU, liblzma and libstdc++ into each rank: leaving it out takes a 2-rank `mpi_hello`'s ranks
/// from 42.3 M to 34.8 M instructions each (callgrind), with fewer mappings and page faults too.
/// Without it hwloc reads and writes XML with its own parser, which takes every file hwloc
/// exports; nothing else about the topology changes.
pub fn hwloc_plugin_env(user_chose: bool) -> Vec<(String, String)> {
    if user_chose {
        Vec::new()
    } else {
        vec![("HWLOC_PLUGINS_BLACKLIST".to_string(), "hwloc_xml_libxml".to_string())]
    }
}

/// Whether the user picked Open MPI's point-to-point transport: an `OMPI_MCA_pml`/`OMPI_MCA_mtl`
/// variable among the rank's `vars`, or a `pml`/`mtl` line in one of the MCA parameter files'
/// `texts` (`/etc/openmpi/openmpi-mca-params.conf`, `$HOME/.openmpi/mca-params.conf`), that
/// selects a component. An exclusion list (`^ucx`, which Debian's own file has) is no choice,
/// unless it excludes ob1 itself.
pub fn openmpi_user_chose_pml<'a>(vars: impl IntoIterator<Item = (&'a str, &'a str)>, texts: &[String]) -> bool {
    let selects = |key: &str, value: &str| {
        let value = value.trim();
        match value.strip_prefix('^') {
            Some(excluded) => key == "pml" && excluded.split(',').any(|c| c.trim() == "ob1"),
            None => !value.is_empty(),
        }
    };
    let by_env = vars.into_iter().any(|(n, v)| n.strip_prefix("OMPI_MCA_").is_some_and(|k| (k == "pml" || k == "mtl") && selects(k, v)));
    let by_file = ["pml", "mtl"].iter().any(|k| mca_file_values(texts, k).any(|v| selects(k, v)));
    by_env || by_file
}

/// The values the MCA parameter files' `texts` give `key` (`key = value` lines, `#` comments).
fn mca_file_values<'a>(texts: &'a [String], key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    texts.iter().flat_map(|t| t.lines()).filter_map(move |l| {
        let l = l.trim();
        let (k, v) = l.split_once('=')?;
        (!l.starts_with('#') && k.trim() == key).then_some(v)
    })
}

/// Open MPI 4's run-time components that a rank started by rlaunch's PMIx server always ends up
/// with: `ess` pmi (it finds its job through PMIx), `state` app and `errmgr` default_app (it is an
/// application process, not mpirun or an orted). Named up front, each rank opens one component of
/// each framework instead of all fifteen (hnp, orted, tool, slurm, singleton...): 11 fewer shared
/// objects per rank, 34.8 M to 33.0 M instructions per rank of a 2-rank `mpi_hello` (callgrind)
/// and 7% less CPU time for 16 ranks. Open MPI 5 has no such frameworks in its ranks and ignores
/// the names.
pub const OPENMPI_RTE_COMPONENTS: [(&str, &str); 3] = [("ess", "pmi"), ("state", "app"), ("errmgr", "default_app")];

/// `OMPI_MCA_<framework>=<component>` of [`OPENMPI_RTE_COMPONENTS`], except for the frameworks
/// in `user_set` (a value of the user's wins).
pub fn openmpi_rte_env(user_set: &[&str]) -> Vec<(String, String)> {
    OPENMPI_RTE_COMPONENTS.iter().filter(|(fw, _)| !user_set.contains(fw)).map(|(fw, c)| (format!("OMPI_MCA_{fw}"), c.to_string())).collect()
}

/// Whether the user set Open MPI's MCA parameter `key`: an `OMPI_MCA_<key>` among `vars`
/// (even empty), or a `key = ...` line in the MCA parameter files' `texts`.
pub fn openmpi_user_set<'a>(key: &str, vars: impl IntoIterator<Item = (&'a str, &'a str)>, texts: &[String]) -> bool {
    vars.into_iter().any(|(n, _)| n.strip_prefix("OMPI_MCA_") == Some(key)) || mca_file_values(texts, key).next().is_some()
}

/// The per-job, per-node directory libpmix works in (rendezvous files, data store, topology).
pub fn job_dir(base: &Path, job_id: &str, node: u32) -> PathBuf {
    base.join(format!("{DIR_PREFIX}{job_id}-{node}"))
}

const DIR_PREFIX: &str = "rlaunch-pmix-";

/// Removes the PMIx directories in `base` that daemons killed without cleanup (SIGKILL) left:
/// `rlaunch-pmix-*` older than `older_than` that no daemon holds. Another user's directories are
/// skipped (no permission). Returns what was removed.
pub fn sweep_stale_dirs(base: &Path, older_than: std::time::Duration) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(base) else { return removed };
    for e in entries.flatten() {
        let ours = e.file_name().to_string_lossy().starts_with(DIR_PREFIX) && e.file_type().is_ok_and(|t| t.is_dir());
        if !ours || !crate::claim::older_than(&e, older_than) {
            continue;
        }
        let path = e.path();
        let Ok(_claim) = crate::claim::take_if_unheld(&path) else { continue };
        if std::fs::remove_dir_all(&path).is_ok() {
            removed.push(path);
        }
    }
    removed
}

/// A fence contribution on the tree: key = the node, value = base64 of libpmix's blob (the
/// tree's fence carries text pairs, see `crate::fence`).
pub fn encode_blob(node: u32, data: &[u8]) -> (String, String) {
    use base64::Engine as _;
    (node.to_string(), base64::engine::general_purpose::STANDARD.encode(data))
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("PMIx fence {seq}: the contribution of node {key} is not valid base64 (seen on {at}); the daemons disagree about the PMIx fence format (mixed rlaunch versions?)")]
pub struct BlobError {
    pub at: String,
    pub seq: u64,
    pub key: String,
}

/// The concatenation of every node's blob, in the fence's merge order.
pub fn decode_blobs(at: &str, seq: u64, puts: &[(String, String)]) -> Result<Vec<u8>, BlobError> {
    use base64::Engine as _;
    let mut out = Vec::new();
    for (k, v) in puts {
        let b = base64::engine::general_purpose::STANDARD.decode(v).map_err(|_| BlobError { at: at.to_string(), seq, key: k.clone() })?;
        out.extend_from_slice(&b);
    }
    Ok(out)
}


#[cfg(test)]
mod tests {
    use super::*;
    use launchers::map::{compute_map, MapBy, MapPolicy, RankBy};
    use proptest::prelude::*;

    fn map(slots: &[u32], np: u32, by: MapBy) -> ProcMap {
        let s: Vec<(u32, Option<u32>)> = slots.iter().map(|&s| (s, None)).collect();
        let rank_by = if by == MapBy::Node { RankBy::Node } else { RankBy::Slot };
        compute_map(&s, &[Some(np)], &MapPolicy { map_by: by, rank_by, oversubscribe: true }).unwrap()
    }

    fn libs(l: &[&str]) -> Vec<String> {
        l.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn classify_by_library() {
        assert_eq!(classify(&libs(&["libmpi.so.40", "libc.so.6"])), Detected::OpenMpi("libmpi.so.40".into()));
        assert_eq!(classify(&libs(&["libmpi_mpifh.so.40"])), Detected::OpenMpi("libmpi_mpifh.so.40".into()));
        assert_eq!(classify(&libs(&["libopen-pal.so.40"])), Detected::OpenMpi("libopen-pal.so.40".into()));
        assert_eq!(classify(&libs(&["libmpich.so.12", "libc.so.6"])), Detected::Mpich("libmpich.so.12".into()));
        // The MPICH ABI name that Intel MPI and MVAPICH also use.
        assert_eq!(classify(&libs(&["libmpi.so.12"])), Detected::Mpich("libmpi.so.12".into()));
        assert_eq!(classify(&libs(&["libmpifort.so.12"])), Detected::Mpich("libmpifort.so.12".into()));
        assert_eq!(classify(&libs(&["libpmi2.so.0"])), Detected::Mpich("libpmi2.so.0".into()));
        assert!(matches!(classify(&libs(&["libc.so.6", "libmpfr.so.6"])), Detected::Unknown(_)));
        // Both: Open MPI wins.
        assert!(matches!(classify(&libs(&["libmpich.so.12", "libmpi.so.40"])), Detected::OpenMpi(_)));
    }

    #[test]
    fn decide_per_job() {
        let o = Detected::OpenMpi("libmpi.so.40".into());
        let m = Detected::Mpich("libmpich.so.12".into());
        let u = Detected::Unknown("a script".into());
        assert_eq!(decide([("a", &o), ("b", &u)].into_iter()).unwrap().0, Interface::Pmix);
        assert_eq!(decide([("a", &m)].into_iter()).unwrap().0, Interface::Pmi);
        let (i, why) = decide([("a", &u)].into_iter()).unwrap();
        assert_eq!(i, Interface::Pmi);
        assert!(why.contains("a script"), "{why}");
        let e = decide([("x", &o), ("y", &m)].into_iter()).unwrap_err();
        assert!(e.contains("'x'") && e.contains("'y'") && e.contains("separate jobs"), "{e}");
    }

    #[test]
    fn flag_parsing() {
        assert_eq!("pmix".parse::<MpiFlag>(), Ok(MpiFlag::Pmix));
        assert_eq!("auto".parse::<MpiFlag>(), Ok(MpiFlag::Auto));
        assert!("mpich".parse::<MpiFlag>().unwrap_err().contains("pmi, pmix or auto"));
    }

    #[test]
    fn detect_real_programs_when_present() {
        let cwd = Path::new("/");
        if let Some(p) = resolve_program("sh", cwd, Some("/bin:/usr/bin")) {
            assert!(matches!(detect_file(&p), Detected::Unknown(_)));
        }
        let d = detect_file(Path::new("/nonexistent/prog"));
        assert!(matches!(&d, Detected::Unknown(w) if w.contains("/nonexistent/prog")), "{d:?}");
        for (lib, ompi) in
            [("/usr/lib/x86_64-linux-gnu/openmpi/lib/libmpi_mpifh.so.40", true), ("/usr/lib/x86_64-linux-gnu/libmpich.so.12", false)]
        {
            if Path::new(lib).exists() {
                // A shared library is ELF too; its own DT_NEEDED names its MPI core.
                let d = detect_file(Path::new(lib));
                assert_eq!(matches!(d, Detected::OpenMpi(_)), ompi, "{lib}: {d:?}");
            }
        }
    }

    #[test]
    fn layout_two_nodes_block() {
        let m = map(&[4, 4], 6, MapBy::Slot);
        let names = vec!["n1".to_string(), "n2".to_string()];
        let l = JobLayout::new("rl-1", &names, &[4, 4], &m, 1);
        assert_eq!(l.node_map_input(), "n1,n2");
        assert_eq!(l.proc_map_input(&m), "0-3;4-5");
        assert_eq!(l.local_peers(&m), "4,5");
        assert_eq!(l.universe, 8);
        let infos = rank_infos(&m);
        assert_eq!(infos[5], RankInfo { rank: 5, local_rank: 1, node_rank: 1, node: 1, app: 0, app_rank: 5 });
    }

    #[test]
    fn layout_cyclic_skips_empty_nodes_and_dedups_names() {
        let m = map(&[2, 2, 2], 4, MapBy::Node);
        let names = vec!["h".to_string(), "h".to_string(), "h".to_string()];
        let l = JobLayout::new("rl-1", &names, &[2, 2, 2], &m, 0);
        // Four ranks round-robin over three nodes.
        assert_eq!(l.proc_map_input(&m), "0,3;1;2");
        assert_eq!(l.node_map_input(), "h,h~2,h~3");
        assert_eq!(l.local_peers(&m), "0,3");
        let m = map(&[2, 2, 2], 2, MapBy::Slot);
        let l = JobLayout::new("rl-1", &names, &[2, 2, 2], &m, 0);
        assert_eq!(l.hosting, vec![0]);
        assert_eq!(l.node_map_input(), "h");
    }

    #[test]
    fn sweep_takes_old_unlocked_pmix_dirs_only() {
        let base = std::env::temp_dir().join(format!("rlaunch-sweep-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(600);
        let make = |name: &str, aged: bool| {
            let d = base.join(name);
            std::fs::create_dir_all(d.join("pmix_dstor_ds21_1")).unwrap();
            std::fs::write(d.join("hwloc.sm"), b"x").unwrap();
            if aged {
                std::fs::File::open(&d).unwrap().set_modified(old).unwrap();
            }
            d
        };
        let dead = make("rlaunch-pmix-rl-dead-0", true);
        let live = make("rlaunch-pmix-rl-live-1", true);
        let young = make("rlaunch-pmix-rl-young-0", false);
        let other = make("someone-else", true);
        let held = crate::claim::hold(&live).unwrap();
        let removed = sweep_stale_dirs(&base, crate::claim::STALE_AFTER);
        assert_eq!(removed, vec![dead.clone()]);
        assert!(!dead.exists() && live.exists() && young.exists() && other.exists());
        drop(held);
        assert_eq!(sweep_stale_dirs(&base, crate::claim::STALE_AFTER), vec![live.clone()], "lock released: a leftover now");
        assert_eq!(job_dir(&base, "rl-x", 3), base.join("rlaunch-pmix-rl-x-3"));
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn rte_components_are_named_unless_the_user_set_them() {
        let all = openmpi_rte_env(&[]);
        let names: Vec<String> = all.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(names, ["OMPI_MCA_ess=pmi", "OMPI_MCA_state=app", "OMPI_MCA_errmgr=default_app"]);
        assert_eq!(openmpi_rte_env(&["ess", "errmgr"]), vec![("OMPI_MCA_state".to_string(), "app".to_string())]);
        let none: [String; 0] = [];
        assert!(openmpi_user_set("ess", [("OMPI_MCA_ess", "")], &none), "an empty value is a choice");
        assert!(!openmpi_user_set("ess", [("OMPI_MCA_ess_base_verbose", "9"), ("PRTE_MCA_ess", "x")], &none));
        let file = |t: &str| [t.to_string()];
        assert!(openmpi_user_set("state", [], &file("# site\n state = app\n")));
        assert!(!openmpi_user_set("state", [], &file("# state = app\nstate_base_verbose = 1\n")));
    }

    #[test]
    fn the_libxml_plugin_is_left_out_unless_the_user_chose() {
        assert_eq!(hwloc_plugin_env(false), vec![("HWLOC_PLUGINS_BLACKLIST".to_string(), "hwloc_xml_libxml".to_string())]);
        assert!(hwloc_plugin_env(true).is_empty());
    }

    #[test]
    fn openmpi_pml_hint_only_on_tcp_and_only_without_a_user_choice() {
        use fabrics::Fabric;
        let ob1 = vec![("OMPI_MCA_pml".to_string(), "ob1".to_string())];
        assert_eq!(openmpi_fabric_env(Some(Fabric::Tcp), false), ob1);
        assert!(openmpi_fabric_env(Some(Fabric::Tcp), true).is_empty());
        assert!(openmpi_fabric_env(Some(Fabric::Rdma), false).is_empty());
        assert!(openmpi_fabric_env(None, false).is_empty(), "--fabric off: no hint");
        let none: [String; 0] = [];
        assert!(!openmpi_user_chose_pml([("PATH", "/bin"), ("OMPI_MCA_btl", "tcp,self"), ("OMPI_MCA_pmlx", "x")], &none));
        assert!(openmpi_user_chose_pml([("OMPI_MCA_pml", "ucx")], &none));
        assert!(openmpi_user_chose_pml([("OMPI_MCA_mtl", "psm2")], &none));
        assert!(!openmpi_user_chose_pml([("OMPI_MCA_pml", "^ucx"), ("OMPI_MCA_mtl", "^ofi")], &none), "exclusions choose nothing");
        assert!(openmpi_user_chose_pml([("OMPI_MCA_pml", "^ucx,ob1")], &none), "ob1 excluded: not ours to pick");
        let file = |t: &str| [t.to_string()];
        assert!(openmpi_user_chose_pml([], &file("# site\n pml = ucx\n")));
        assert!(openmpi_user_chose_pml([], &file("mtl=psm2")));
        // Debian's /etc/openmpi/openmpi-mca-params.conf.
        let debian = "btl_base_warn_component_unused=0\nmtl = ^ofi\nbtl = ^uct,openib,ofi\npml = ^ucx\nosc = ^ucx,pt2pt\n";
        assert!(!openmpi_user_chose_pml([], &file(debian)));
        assert!(!openmpi_user_chose_pml([], &file("# pml = ucx\nbtl = ^openib\npml_ucx_verbose = 1\n")));
    }

    #[test]
    fn openmpi_env_has_the_schizo_trap_and_lazy_switches() {
        let m = map(&[4, 4], 8, MapBy::Slot);
        let e = openmpi_env(&m, 6, false);
        let get = |e: &[(String, String)], k: &str| e.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get(&e, "OMPI_MCA_schizo").as_deref(), Some("^orte"));
        assert_eq!(get(&e, "OMPI_COMM_WORLD_LOCAL_RANK").as_deref(), Some("2"));
        assert_eq!(get(&e, "OMPI_MCA_pmix_base_async_modex"), None);
        let e = openmpi_env(&m, 6, true);
        assert_eq!(get(&e, "OMPI_MCA_pmix_base_async_modex").as_deref(), Some("1"));
        assert_eq!(get(&e, "OMPI_MCA_pmix_base_collect_data").as_deref(), Some("0"));
        // Never a PMI variable: a rank gets one interface.
        assert!(e.iter().all(|(k, _)| !k.starts_with("PMI_")));
    }

    #[test]
    fn scrub_keeps_one_interface_per_rank() {
        let inherited = ["PMI_FD", "PMI_RANK", "PMIX_SERVER_URI41", "PMIX_MCA_gds", "PATH", "OMPI_MCA_btl"];
        assert_eq!(scrub(Interface::Pmix, inherited.into_iter()), ["PMI_FD", "PMI_RANK", "PMIX_SERVER_URI41"]);
        assert_eq!(scrub(Interface::Pmi, inherited.into_iter()), ["PMIX_SERVER_URI41"]);
    }

    #[test]
    fn stale_variables() {
        assert!(is_stale_pmix_var("PMIX_SERVER_URI41"));
        assert!(is_stale_pmix_var("PMIX_NAMESPACE"));
        assert!(!is_stale_pmix_var("PMIX_MCA_gds"));
        assert!(!is_stale_pmix_var("PMI_FD"));
    }

    #[test]
    fn blobs_round_trip_in_order_and_bad_ones_are_named() {
        let puts = vec![encode_blob(0, b"abc"), encode_blob(3, &[0, 255, 7])];
        assert_eq!(decode_blobs("node 0", 1, &puts).unwrap(), vec![b'a', b'b', b'c', 0, 255, 7]);
        let e = decode_blobs("node 0", 2, &[("5".into(), "!!".into())]).unwrap_err();
        assert!(e.to_string().contains("node 5") && e.to_string().contains("fence 2"), "{e}");
    }

    proptest! {
        #[test]
        fn proc_map_lists_every_rank_once_in_node_order(slots in proptest::collection::vec(1u32..5, 1..6), np in 1u32..20, cyclic in any::<bool>()) {
            let m = map(&slots, np, if cyclic { MapBy::Node } else { MapBy::Slot });
            let names: Vec<String> = (0..slots.len()).map(|i| format!("n{i}")).collect();
            let l = JobLayout::new("ns", &names, &slots, &m, 0);
            let pm = l.proc_map_input(&m);
            let per_node: Vec<&str> = pm.split(';').collect();
            prop_assert_eq!(per_node.len(), l.hosting.len());
            prop_assert_eq!(l.node_map_input().split(',').count(), l.hosting.len());
            let mut all = Vec::new();
            for (i, part) in per_node.iter().enumerate() {
                let mut mine = Vec::new();
                for r in part.split(',') {
                    match r.split_once('-') {
                        Some((a, b)) => mine.extend(a.parse::<u32>().unwrap()..=b.parse::<u32>().unwrap()),
                        None => mine.push(r.parse::<u32>().unwrap()),
                    }
                }
                prop_assert_eq!(&mine[..], m.ranks_on(l.hosting[i]));
                all.extend(mine);
            }
            all.sort_unstable();
            prop_assert_eq!(all, (0..np).collect::<Vec<_>>());
        }
    }
}
