//! rsh-like launch agents (`ssh -x`, `ip netns exec`, a site wrapper), run as
//! `AGENT... [USER@]HOST 'exec DAEMON __daemon'`, like Open MPI's rsh agent.

use super::common::{hand_over, prepare, remote_command, DaemonProcess, StartError};
use crate::nodes::Node;
use std::process::Command;

/// Runs the agent for `node` and writes `bootstrap` (one line) to its stdin, which the agent
/// carries to the daemon.
pub fn start(argv: &[String], node: &Node, daemon_path: &str, bootstrap: &str) -> Result<DaemonProcess, StartError> {
    let target = match &node.user {
        Some(u) => format!("{u}@{}", node.name),
        None => node.name.clone(),
    };
    let spawned = match argv.split_first() {
        Some((program, args)) => {
            let mut cmd = Command::new(program);
            cmd.args(args).arg(&target).arg(remote_command(daemon_path));
            prepare(&mut cmd);
            cmd.spawn()
        }
        None => Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "the launch agent command is empty")),
    };
    let child = spawned.map_err(|source| StartError::Agent { agent: argv.join(" "), node: node.name.clone(), source })?;
    hand_over(child, &node.name, bootstrap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_gets_host_and_command_line() {
        // `sh -c 'echo "$0 $1" >&2' HOST CMD` stands in for an rsh-like agent: it reports its argv.
        let argv: Vec<String> = vec!["sh".into(), "-c".into(), "read l; echo \"$0|$1|$l\" >&2".into()];
        let node = Node { name: "n7".into(), user: Some("bob".into()), slots: 1, max_slots: None };
        let mut p = start(&argv, &node, "/opt/x y/rlaunch", "BOOT\n").unwrap();
        drop(p.stdin.take());
        let mut err = String::new();
        let mut f = std::fs::File::from(p.stderr.take().unwrap());
        std::io::Read::read_to_string(&mut f, &mut err).unwrap();
        while p.waiter.try_wait().is_none() {
            std::thread::yield_now();
        }
        assert_eq!(err.trim(), "bob@n7|exec '/opt/x y/rlaunch' __daemon|BOOT");
    }

    #[test]
    fn missing_agent_is_a_clear_error() {
        let node = Node { name: "n1".into(), user: None, slots: 1, max_slots: None };
        let e = start(&["/nonexistent/agent".into()], &node, "rlaunch", "x\n").err().unwrap().to_string();
        assert!(e.starts_with("cannot run launch agent '/nonexistent/agent' for node n1:"), "{e}");
        let e = start(&[], &node, "rlaunch", "x\n").err().unwrap().to_string();
        assert!(e.starts_with("cannot run launch agent '' for node n1: the launch agent command is empty"), "{e}");
    }
}
