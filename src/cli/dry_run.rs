//! `--dry-run`: the process map as text, one line per node, then (with `--report-bindings` or any
//! placement option) every rank's binding as `--report-bindings` would print it. Bindings come from
//! this machine's topology: exact for a job on this machine, for other nodes what they would get
//! were they like it (Open MPI assumes the same), and the text says which.

use crate::binding;
use crate::plan::JobPlan;
use fabrics::Topology;

/// Compact rank ranges: [0,1,2,5,7,8] -> "0-2,5,7-8".
fn fmt_ranges(ranks: &[u32]) -> String {
    let mut out = Vec::new();
    let mut i = 0;
    while i < ranks.len() {
        let start = ranks[i];
        let mut end = start;
        while i + 1 < ranks.len() && ranks[i + 1] == end + 1 {
            i += 1;
            end = ranks[i];
        }
        out.push(if start == end { start.to_string() } else { format!("{start}-{end}") });
        i += 1;
    }
    out.join(",")
}

/// The `--dry-run` text: a summary line, then one line per node.
pub fn describe_map(plan: &JobPlan) -> String {
    let (map, nodes, apps) = (&plan.map, &plan.nodes, &plan.launch.apps);
    let mut s = format!(
        "rlaunch: {} rank{} on {} node{}\n",
        map.size(),
        if map.size() == 1 { "" } else { "s" },
        nodes.len(),
        if nodes.len() == 1 { "" } else { "s" }
    );
    for (i, n) in nodes.iter().enumerate() {
        let ranks = map.ranks_on(i as u32);
        let mut parts = Vec::new();
        for (a, app) in apps.iter().enumerate() {
            let mine: Vec<u32> = ranks.iter().copied().filter(|&r| map.rank(r).app == a as u32).collect();
            if !mine.is_empty() {
                parts.push(format!("ranks {} {}", fmt_ranges(&mine), app.argv.join(" ")));
            }
        }
        let spare = i + plan.launch.node_loss.spares as usize >= nodes.len();
        if spare {
            parts.push("spare, no ranks (--spare)".into());
        } else if parts.is_empty() {
            parts.push("no ranks".into());
        }
        s.push_str(&format!("node {i} {} (slots {}): {}\n", n.name, n.slots, parts.join("; ")));
    }
    s
}

/// The `--dry-run` and `--display-map` text: the map, then the bindings when placement was asked
/// about (this machine's topology is read here).
pub fn describe(plan: &JobPlan) -> String {
    let mut s = describe_map(plan);
    let spec = &plan.launch.placement;
    if spec.asked() {
        s.push_str(&describe_bindings(plan, Topology::discover_system().map_err(|e| e.to_string())));
    }
    s
}

/// Every rank's binding on a node like this machine (`topo`), one line each, under a line saying
/// whose topology it is; a placement a node would refuse is shown as that node's refusal.
pub fn describe_bindings(plan: &JobPlan, topo: Result<Topology, String>) -> String {
    let here = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_else(|_| "this machine".into());
    let mut s = if plan.loopback {
        format!("bindings on this machine ({here}):\n")
    } else {
        format!("bindings if every node were like this machine ({here}); each node places its ranks on its own CPUs:\n")
    };
    let topo = match topo {
        Ok(t) => t,
        Err(e) => return s + &format!("cannot read this machine's topology: {e}\n"),
    };
    for (i, n) in plan.nodes.iter().enumerate() {
        let ranks = plan.map.ranks_on(i as u32);
        if ranks.is_empty() {
            continue;
        }
        match binding::place_node(&plan.launch.placement, &topo, ranks, &[]) {
            Ok(places) => {
                for p in &places {
                    s.push_str(&binding::report_line(p.rank, &n.name, &binding::describe(&topo, p)));
                    s.push('\n');
                }
            }
            Err(e) => s.push_str(&format!("node {} would refuse the job: {e}\n", n.name)),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn ranges() {
        assert_eq!(super::fmt_ranges(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
        assert_eq!(super::fmt_ranges(&[]), "");
    }
}
