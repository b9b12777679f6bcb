//! Inside a Slurm allocation: one `srun` step starts a daemon on every node, so that Slurm tracks,
//! accounts and kills them. The daemons learn their node rank by rendezvous with the front end.

use super::common::{hand_over, prepare, DaemonProcess, StartError};
use crate::nodes::Node;
use std::process::Command;

/// The srun command line that starts one daemon per node of `nodes` inside the allocation.
/// `--overlap`: later job steps (the user's own srun calls) must not wait for this one.
/// `-n` explicitly: an inherited SLURM_NTASKS would otherwise win over `--ntasks-per-node`.
/// `--input=all`: every daemon reads the same bootstrap line.
pub fn srun_argv(srun: &str, nodes: &[Node], daemon_path: &str) -> Vec<String> {
    let n = nodes.len().to_string();
    let list: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    vec![
        srun.to_string(),
        "--overlap".into(),
        "-N".into(),
        n.clone(),
        "-n".into(),
        n,
        "--ntasks-per-node=1".into(),
        format!("--nodelist={}", list.join(",")),
        "--kill-on-bad-exit=1".into(),
        "--cpu-bind=none".into(),
        "--mpi=none".into(),
        "--input=all".into(),
        "--job-name=rlaunch-daemons".into(),
        daemon_path.to_string(),
        "__daemon".into(),
    ]
}

/// Runs the srun step for every node of `nodes` and writes `bootstrap` (one line, naming no node)
/// to its stdin, which srun copies to every daemon.
pub fn start(srun: &str, nodes: &[Node], daemon_path: &str, bootstrap: &str) -> Result<DaemonProcess, StartError> {
    let argv = srun_argv(srun, nodes, daemon_path);
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    prepare(&mut cmd);
    let child = cmd.spawn().map_err(|source| StartError::Agent { agent: srun.to_string(), node: "all nodes".into(), source })?;
    hand_over(child, "all nodes", bootstrap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn srun_line_starts_one_daemon_per_node() {
        let nodes: Vec<Node> = ["n1", "n2", "n3"].iter().map(|n| Node { name: n.to_string(), user: None, slots: 4, max_slots: None }).collect();
        let argv = srun_argv("srun", &nodes, "/opt/rlaunch");
        let line = argv.join(" ");
        assert!(line.starts_with("srun --overlap -N 3 -n 3 --ntasks-per-node=1 --nodelist=n1,n2,n3 --kill-on-bad-exit=1"), "{line}");
        assert!(line.ends_with("--input=all --job-name=rlaunch-daemons /opt/rlaunch __daemon"), "{line}");
    }
}
