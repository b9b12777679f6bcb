//! The daemon as a child subreaper (`PR_SET_CHILD_SUBREAPER`): a rank's descendant that left the
//! rank's process group (`setsid cmd &`, a daemonizing helper) and lost its parent is adopted by
//! the daemon instead of init, and at the end of the job the daemon kills every descendant it
//! has, found through `/proc/<pid>/task/*/children`, walking again until none is left. Its own
//! helpers (the guard, tree-spawn agents), other nodes' daemons and what they started are spared.

use super::guard::Guard;
use super::tree_spawn::TreeSpawn;
use crate::proctree::{children_of, descendants};
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// How long the end-of-job sweep may take at most (a descendant that forks faster than it is
/// killed cannot hold the daemon forever).
const SWEEP_FOR: Duration = Duration::from_secs(2);

/// Makes this process the reaper of its orphaned descendants; false where the kernel refuses.
pub fn become_subreaper() -> bool {
    // SAFETY: prctl(2) with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0 }
}

/// Another node's daemon (started below this one by tree spawn, then orphaned by its agent)
/// ends its own job and sweeps its own descendants.
fn is_daemon(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.split(|&b| b == 0).any(|a| a == b"__daemon"))
}


/// At the end of the job: [`kill_all`] but the guard and the tree-spawn agents.
pub fn kill_all_but(guard: &Guard, tree_spawn: &TreeSpawn) {
    kill_all(&guard.pid().into_iter().chain(tree_spawn.pids()).collect());
}

/// SIGKILLs every descendant of this daemon but `keep`'s, and reaps its own children among them,
/// until none is left (or [`SWEEP_FOR`] passed).
pub fn kill_all(keep: &HashSet<u32>) {
    let me = std::process::id();
    let until = Instant::now() + SWEEP_FOR;
    loop {
        let found = descendants(me, |p| keep.contains(&p) || is_daemon(p), children_of);
        if found.is_empty() || Instant::now() >= until {
            return;
        }
        for &p in &found {
            // SAFETY: plain kill(2) of a process this daemon descends to.
            unsafe { libc::kill(p as libc::pid_t, libc::SIGKILL) };
        }
        // The killed children stay listed until reaped; their orphans come to this daemon.
        for p in children_of(me).into_iter().filter(|p| !keep.contains(p)) {
            // SAFETY: waitpid(2) on our own child, without blocking.
            unsafe { libc::waitpid(p as libc::pid_t, std::ptr::null_mut(), libc::WNOHANG) };
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_every_level_and_spares_what_is_kept() {
        // 1 -> {2, 3, 9}; 2 -> {4}; 4 -> {5}; 9 (kept) -> {10}.
        let tree = |p: u32| match p {
            1 => vec![2, 3, 9],
            2 => vec![4],
            4 => vec![5],
            9 => vec![10],
            _ => vec![],
        };
        let spare = |p: u32| p == 9;
        let mut got = descendants(1, spare, tree);
        got.sort();
        assert_eq!(got, vec![2, 3, 4, 5]);
        assert!(descendants(5, spare, tree).is_empty());
        // Invisible pids (0) and the root itself are never targets.
        assert_eq!(descendants(7, spare, |p| if p == 7 { vec![0, 7, 8] } else { vec![] }), vec![8]);
    }

    #[test]
    fn a_walk_of_this_process_finds_a_child_and_its_child() {
        let mut c = std::process::Command::new("sh").args(["-c", "sleep 30 & wait"]).spawn().unwrap();
        let me = std::process::id();
        // The sleep, once sh started it, found below this process.
        let grandchild = (0..500).find_map(|_| {
            let d = descendants(me, |_| false, children_of);
            let g = children_of(c.id()).into_iter().find(|g| d.contains(&c.id()) && d.contains(g));
            std::thread::sleep(Duration::from_millis(10));
            g
        });
        if let Some(g) = grandchild {
            unsafe { libc::kill(g as libc::pid_t, libc::SIGKILL) };
        }
        let _ = c.kill();
        let _ = c.wait();
        assert!(grandchild.is_some(), "the child's child is found through /proc");
        assert!(!descendants(me, |p| p == c.id(), children_of).contains(&c.id()));
    }
}
