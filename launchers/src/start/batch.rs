//! Inside a Grid Engine or LSF job: daemons start through the batch system's own rsh-like agent,
//! Grid Engine's `qrsh -inherit HOST CMD` or LSF's `blaunch HOST CMD`, so that they are tasks of
//! the job: the batch system runs them under its own process (Grid Engine's `sge_shepherd`),
//! accounts them (`qacct -j`), signals them and kills them with the job.
//!
//! Both agents carry their stdin to the remote command up to EOF (qrsh unless given `-nostdin`,
//! blaunch unless given `-n`) and run the command line through the user's shell, as rsh does. The
//! bootstrap line with the job key therefore travels exactly as with any launch agent: on the
//! agent's stdin, never on a command line or in the environment. For qrsh this is what
//! tests/gridengine.rs measures on a real Son of Grid Engine 8.1.9 cluster; for blaunch it is
//! what IBM's blaunch reference says (`-n`: "standard input is taken from /dev/null"), untested
//! here for want of LSF.
//!
//! The daemon of the node the front end runs on is forked here instead of going through the
//! agent: the front end is already a process of the job, and Grid Engine refuses a task on the
//! job's master host when the parallel environment says `job_is_first_task TRUE` and grants that
//! host one slot (as Open MPI does, which never qrsh-es to its own node).

use super::common::{DaemonProcess, StartError};
use crate::nodes::Node;
use std::path::Path;

/// The batch systems whose agent rlaunch uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchSystem {
    GridEngine,
    Lsf,
}

impl BatchSystem {
    /// The agent's program name, looked up on `PATH`.
    pub fn program(self) -> &'static str {
        match self {
            BatchSystem::GridEngine => "qrsh",
            BatchSystem::Lsf => "blaunch",
        }
    }

    /// The agent's command line before `HOST CMD`, with `program` the path found for it.
    /// `-inherit`: a task of the running job on one of its hosts, not a new job.
    fn argv(self, program: &Path) -> Vec<String> {
        let program = program.to_string_lossy().into_owned();
        match self {
            BatchSystem::GridEngine => vec![program, "-inherit".into()],
            BatchSystem::Lsf => vec![program],
        }
    }
}

/// The agent argv for `system` when its program is an executable file in one of `path`'s
/// directories (the `PATH` value), else `None`: the caller then starts daemons over ssh.
/// The path found is absolute, so a daemon's own children (tree spawn) use the same program.
pub fn agent_argv(system: BatchSystem, path: Option<&str>) -> Option<Vec<String>> {
    use std::os::unix::fs::PermissionsExt;
    let found = path?
        .split(':')
        .filter(|dir| dir.starts_with('/'))
        .map(|dir| Path::new(dir).join(system.program()))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))?;
    Some(system.argv(&found))
}

/// Whether the job's host name `node` is this machine, named `here`: the same name, or one of
/// them the other with a domain (`n01` and `n01.cluster`), since a batch system may list either.
pub fn is_here(node: &str, here: &str) -> bool {
    let with_domain = |long: &str, short: &str| long.strip_prefix(short).is_some_and(|rest| rest.starts_with('.'));
    node == here || with_domain(node, here) || with_domain(here, node)
}

/// What to do, for the error line of a daemon whose agent ended before it joined having `said`
/// this (its last words): "" when the words are not the batch system refusing the task.
pub fn refusal_hint(system: BatchSystem, said: &str) -> &'static str {
    match system {
        // qrsh's words when the execd refuses a task: the PE does not allow tasks
        // (control_slaves FALSE) or the host has no slot left for one.
        BatchSystem::GridEngine if said.contains("didn't accept task") => {
            "; the job's parallel environment must allow qrsh -inherit (control_slaves TRUE) with a slot for it on that host, or give --launcher ssh"
        }
        _ => "",
    }
}

/// Starts `node`'s daemon: forked when `node` is this machine (`here`), else through the agent.
pub fn start(argv: &[String], here: &str, node: &Node, daemon_path: &str, bootstrap: &str) -> Result<DaemonProcess, StartError> {
    if is_here(&node.name, here) {
        super::local::start(&node.name, daemon_path, bootstrap)
    } else {
        super::agent::start(argv, node, daemon_path, bootstrap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("launchers-start-batch-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn write_exec(path: &Path, text: &str, mode: u32) {
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn the_agent_is_found_on_path_as_an_absolute_executable() {
        let dir = scratch("path");
        let (empty, bin) = (dir.join("empty"), dir.join("bin"));
        std::fs::create_dir_all(&empty).unwrap();
        std::fs::create_dir_all(&bin).unwrap();
        let path = format!("relative:{}:{}", empty.display(), bin.display());
        assert_eq!(agent_argv(BatchSystem::GridEngine, Some(&path)), None, "no qrsh yet");
        write_exec(&bin.join("qrsh"), "#!/bin/sh\n", 0o644);
        assert_eq!(agent_argv(BatchSystem::GridEngine, Some(&path)), None, "not executable");
        write_exec(&bin.join("qrsh"), "#!/bin/sh\n", 0o755);
        write_exec(&bin.join("blaunch"), "#!/bin/sh\n", 0o755);
        let qrsh = bin.join("qrsh").to_string_lossy().into_owned();
        assert_eq!(agent_argv(BatchSystem::GridEngine, Some(&path)), Some(vec![qrsh, "-inherit".to_string()]));
        assert_eq!(agent_argv(BatchSystem::Lsf, Some(&path)), Some(vec![bin.join("blaunch").to_string_lossy().into_owned()]));
        // A directory named like the agent is not the agent; a relative PATH entry is not searched.
        std::fs::create_dir_all(empty.join("qrsh")).unwrap();
        assert_eq!(agent_argv(BatchSystem::GridEngine, Some(&format!("{}", empty.display()))), None);
        assert_eq!(agent_argv(BatchSystem::GridEngine, None), None);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_refused_task_says_what_to_do() {
        let qrsh = r#"error: executing task of job 2 failed: execution daemon on host "n2" didn't accept task"#;
        assert!(refusal_hint(BatchSystem::GridEngine, qrsh).contains("control_slaves TRUE"));
        assert_eq!(refusal_hint(BatchSystem::GridEngine, "rlaunch not found on n2"), "");
        assert_eq!(refusal_hint(BatchSystem::Lsf, qrsh), "");
    }

    #[test]
    fn this_machine_is_recognised_with_or_without_its_domain() {
        assert!(is_here("n01", "n01"));
        assert!(is_here("n01.cluster", "n01"));
        assert!(is_here("n01", "n01.cluster"));
        assert!(!is_here("n011", "n01"));
        assert!(!is_here("n01", "n02.cluster"));
        assert!(!is_here("n01-ib", "n01"));
    }

    /// The node that is this machine is forked here (the agent never runs); every other node goes
    /// through the agent, with the bootstrap line on its stdin.
    #[test]
    fn only_other_nodes_go_through_the_agent() {
        let dir = scratch("start");
        let log = dir.join("agent.log");
        let agent = dir.join("qrsh");
        // Stands in for `qrsh -inherit HOST CMD`: records its argv and what it read on stdin.
        write_exec(&agent, &format!("#!/bin/sh\nread line\necho \"$*|$line\" >> {}\n", log.display()), 0o755);
        let argv = vec![agent.to_string_lossy().into_owned(), "-inherit".into()];
        let node = |name: &str| Node { name: name.into(), user: None, slots: 1, max_slots: None };
        let mut p = start(&argv, "here", &node("there"), "/opt/rl", "BOOT\n").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while p.waiter.try_wait().is_none() {
            assert!(std::time::Instant::now() < deadline, "the stand-in agent did not end");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "-inherit there exec /opt/rl __daemon|BOOT\n");
        // `here` (with its domain): the daemon path is run directly, so a missing one is the local
        // backend's error, and the agent is not run.
        let e = start(&argv, "here.example", &node("here"), "/nonexistent/rlaunch", "BOOT\n").err().unwrap().to_string();
        assert!(e.starts_with("cannot start the daemon '/nonexistent/rlaunch' on this node"), "{e}");
        assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 1, "the agent ran once only");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
