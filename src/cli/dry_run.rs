//! `--dry-run`: the process map as text, one line per node.

use crate::plan::JobPlan;

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
        if parts.is_empty() {
            parts.push("no ranks".into());
        }
        s.push_str(&format!("node {i} {} (slots {}): {}\n", n.name, n.slots, parts.join("; ")));
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
