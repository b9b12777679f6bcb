//! Which node each rank runs on, beyond the node-level policy: Open MPI's per-context `-H`,
//! `--map-by seq` and rank files give contexts their own node lists, and nodes the map leaves
//! without ranks are dropped (no daemon starts there).

use super::error::{usage, UsageError};
use super::parse::Parsed;
use super::rankfile::{self, Host};
use crate::spec::AppContext;
use launchers::map::{MapBy, MapPolicy, ProcMap};
use launchers::nodes::Node;
use launchers::AllocationRequest;

/// What the command line says about contexts' own nodes.
pub struct Own {
    /// Per-context `-H` lists, when a context after the first has one.
    hosts: Option<Vec<Option<String>>>,
    /// `--rankfile`: its name and lines.
    rank_file: Option<(String, Vec<rankfile::Line>)>,
}

impl Own {
    /// Reads them before the allocation, to which they add: the job's nodes are every context's
    /// hosts together, or without a node list the rank file's; a rank file maps as `seq`.
    pub fn read(parsed: &Parsed, request: &mut AllocationRequest, env: &dyn Fn(&str) -> Option<String>) -> Result<Own, UsageError> {
        let g = &parsed.global;
        let rank_file = match &g.rankfile {
            Some(f) => {
                let name = f.display().to_string();
                let text = std::fs::read_to_string(f).map_err(|e| usage(format!("--rankfile {name}: cannot read it: {e}")))?;
                let lines = rankfile::parse(&text).map_err(|e| usage(format!("--rankfile {name}: {e}")))?;
                if request.host.is_none() && request.hostfile.is_none() && !in_batch_job(env) {
                    let mut names: Vec<&str> = lines.iter().filter_map(|l| match &l.host { Host::Name(n) => Some(n.as_str()), _ => None }).collect();
                    names.dedup();
                    request.host = (!names.is_empty()).then(|| names.join(","));
                }
                request.map_by = MapBy::Seq;
                Some((name, lines))
            }
            None => None,
        };
        let hosts = context_hosts(parsed);
        if let Some(lists) = &hosts {
            let all: Vec<&str> = lists.iter().flatten().map(String::as_str).collect();
            request.host = (!all.is_empty()).then(|| all.join(","));
        }
        Ok(Own { hosts, rank_file })
    }

    pub fn rank_file(&self) -> Option<&[rankfile::Line]> {
        self.rank_file.as_ref().map(|(_, l)| l.as_slice())
    }

    /// After the allocation: each context's own nodes, as indices into `nodes`.
    pub fn assign(&self, apps: &mut [AppContext], request: &AllocationRequest, nodes: &[Node]) -> Result<(), UsageError> {
        if let Some(lists) = &self.hosts {
            for (a, list) in apps.iter_mut().zip(lists) {
                if let Some(list) = list {
                    a.nodes = Some(node_indices(&list_sequence(list)?, nodes, &format!("-H {list}"))?);
                }
            }
        }
        if let Some((name, lines)) = &self.rank_file {
            let what = format!("--rankfile {name}");
            let mut names = Vec::new();
            for l in lines {
                names.push(match &l.host {
                    Host::Name(n) => n.clone(),
                    Host::Index(k) => nodes
                        .get(*k as usize)
                        .map(|n| n.name.clone())
                        .ok_or_else(|| usage(format!("{what}: rank {} is on +n{k}, but the job has {} nodes", l.rank, nodes.len())))?,
                });
            }
            split_sequence(apps, node_indices(&names, nodes, &what)?);
        } else if request.map_by == MapBy::Seq {
            seq_nodes(apps, request, nodes)?;
        }
        Ok(())
    }
}

/// The map, and what dropping empty nodes changed.
pub struct Mapped {
    pub map: ProcMap,
    /// The allocation's slots before nodes without ranks were dropped: `-usize SYSTEM`, and Open
    /// MPI's universe (MPI_UNIVERSE_SIZE is the allocation's slots there).
    pub allocation_slots: u32,
    pub trimmed: bool,
}

/// Computes the map; nodes it leaves without ranks get no daemon, as under Hydra (`-np 1` with a
/// 4-node host file starts one), unless `keep_all` (`--inventory` runs no rank and wants them all).
/// The last `spares` nodes are spares (`--spare`): kept after the others, with no ranks.
pub fn map(apps: &mut [AppContext], nodes: &mut Vec<Node>, policy: &MapPolicy, keep_all: bool, spares: u32) -> Result<Mapped, UsageError> {
    if spares == 0 {
        return map_working(apps, nodes, policy, keep_all);
    }
    let Some(working) = nodes.len().checked_sub(spares as usize).filter(|&n| n > 0) else {
        return Err(usage(launchers::map::MapError::NoNodesBesideSpares { nodes: nodes.len() as u64, spares }.to_string()));
    };
    if let Some(a) = apps.iter().find(|a| a.nodes.as_ref().is_some_and(|l| l.iter().any(|&n| n as usize >= working))) {
        let spare_names: Vec<&str> = nodes[working..].iter().map(|n| n.name.as_str()).collect();
        return Err(usage(format!("{}: its hosts include a spare ({}); spares run no ranks (--spare {spares})", a.argv[0], spare_names.join(", "))));
    }
    let spare_nodes = nodes.split_off(working);
    let names: Vec<&str> = spare_nodes.iter().map(|n| n.name.as_str()).collect();
    let mut mapped = map_working(apps, nodes, policy, keep_all)
        .map_err(|e| usage(format!("{e} (--spare {spares} keeps {} out of the map)", names.join(", "))))?;
    let slots: Vec<(u32, Option<u32>)> = nodes.iter().chain(&spare_nodes).map(|n| (n.slots, n.max_slots)).collect();
    nodes.extend(spare_nodes);
    let requests: Vec<launchers::map::AppRequest> = apps.iter().map(|a| launchers::map::AppRequest { np: a.np, nodes: a.nodes.clone() }).collect();
    // The same engine the daemons run on the launch message, so that every side agrees.
    mapped.map = launchers::map::compute_map_with_spares(&slots, &requests, policy, spares).map_err(|e| usage(e.to_string()))?;
    Ok(mapped)
}

fn map_working(apps: &mut [AppContext], nodes: &mut Vec<Node>, policy: &MapPolicy, keep_all: bool) -> Result<Mapped, UsageError> {
    let compute = |apps: &[AppContext], nodes: &[Node]| {
        let requests: Vec<launchers::map::AppRequest> = apps.iter().map(|a| launchers::map::AppRequest { np: a.np, nodes: a.nodes.clone() }).collect();
        launchers::map::compute_map_for_nodes(nodes, &requests, policy).map_err(|e| usage(e.to_string()))
    };
    let mut map = compute(apps, nodes)?;
    let allocation_slots = nodes.iter().fold(0u32, |a, n| a.saturating_add(n.slots));
    if keep_all || (0..nodes.len() as u32).all(|n| !map.ranks_on(n).is_empty()) {
        return Ok(Mapped { map, allocation_slots, trimmed: false });
    }
    let mut index = vec![None; nodes.len()];
    let mut kept = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        if !map.ranks_on(i as u32).is_empty() {
            index[i] = Some(kept.len() as u32);
            kept.push(node.clone());
        }
    }
    for list in apps.iter_mut().filter_map(|a| a.nodes.as_mut()) {
        *list = list.iter().filter_map(|&n| index[n as usize]).collect();
    }
    *nodes = kept;
    map = compute(apps, nodes)?;
    Ok(Mapped { map, allocation_slots, trimmed: true })
}

/// Open MPI's per-context `-H`: when a context after the first names its own hosts, every
/// context's `-H` (the first one's stands before the first program) is its own. `None` otherwise:
/// a `-H` before the first program is the job's.
fn context_hosts(parsed: &Parsed) -> Option<Vec<Option<String>>> {
    if !parsed.apps.iter().skip(1).any(|a| a.host.is_some()) {
        return None;
    }
    Some(parsed.apps.iter().enumerate().map(|(i, a)| if i == 0 { parsed.global.host.clone() } else { a.host.clone() }).collect())
}

/// The hosts of a `-H` list in order, an entry `a:2` twice.
fn list_sequence(list: &str) -> Result<Vec<String>, UsageError> {
    let mut names = Vec::new();
    for item in list.split(',') {
        for n in launchers::nodes::parse_host_list(item).map_err(|e| usage(format!("-H {list}: {e}")))? {
            names.extend(std::iter::repeat(n.name).take(n.slots as usize));
        }
    }
    Ok(names)
}

/// Names to indices into the job's node list; a name outside it is the user's mistake.
fn node_indices(names: &[String], nodes: &[Node], what: &str) -> Result<Vec<u32>, UsageError> {
    names
        .iter()
        .map(|name| {
            nodes.iter().position(|n| &n.name == name).map(|i| i as u32).ok_or_else(|| {
                usage(format!("{what}: host {name} is not one of the job's nodes ({})", nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>().join(", ")))
            })
        })
        .collect()
}

/// `--map-by seq`: rank i on the host of the i-th line of the host file (or entry of the --host
/// list); contexts take their -np entries in turn, one without -np the rest.
fn seq_nodes(apps: &mut [AppContext], request: &AllocationRequest, nodes: &[Node]) -> Result<(), UsageError> {
    let (names, what) = match (&request.hostfile, &request.host) {
        (Some(f), _) => {
            let text = std::fs::read_to_string(f).map_err(|e| usage(format!("--hostfile {}: cannot read it: {e}", f.display())))?;
            (launchers::nodes::hostfile_sequence(&f.display().to_string(), &text).map_err(|e| usage(e.to_string()))?, format!("--hostfile {}", f.display()))
        }
        (None, Some(list)) => (list_sequence(list)?, format!("--host {list}")),
        // The map says that seq has no list to follow.
        (None, None) => return Ok(()),
    };
    split_sequence(apps, node_indices(&names, nodes, &what)?);
    Ok(())
}

/// One node per rank, in rank order, dealt to the contexts: -np entries each, the rest to one
/// without -np.
fn split_sequence(apps: &mut [AppContext], seq: Vec<u32>) {
    let mut seq = seq.into_iter();
    for a in apps.iter_mut().filter(|a| a.nodes.is_none()) {
        a.nodes = Some(match a.np {
            Some(n) => seq.by_ref().take(n as usize).collect(),
            None => seq.by_ref().collect(),
        });
    }
}

/// Inside a Slurm, PBS, Grid Engine or LSF job: its nodes are the job's, whatever else says.
fn in_batch_job(env: &dyn Fn(&str) -> Option<String>) -> bool {
    ["SLURM_JOB_ID", "PBS_JOBID", "PBS_NODEFILE", "PE_HOSTFILE", "LSB_JOBID"].iter().any(|v| env(v).is_some_and(|s| !s.is_empty()))
}

