//! A process's descendants, from `/proc/<pid>/task/*/children`: the daemon's end-of-job sweep
//! kills them, and its `--pmi-port` listener accepts connections only from them.

use std::collections::HashSet;

/// Every descendant of `root`, except those `spare` says and their descendants. A pid that the
/// reader's pid namespace cannot see reads as 0: never a target.
pub fn descendants(root: u32, spare: impl Fn(u32) -> bool, children_of: impl Fn(u32) -> Vec<u32>) -> Vec<u32> {
    let mut found = Vec::new();
    let mut seen = HashSet::new();
    let mut stack = children_of(root);
    while let Some(p) = stack.pop() {
        if p > 1 && p != root && !spare(p) && seen.insert(p) {
            found.push(p);
            stack.extend(children_of(p));
        }
    }
    found
}

/// The children of every thread of `pid` (empty when it is gone).
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    let lists = tasks.flatten().filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok()).collect::<Vec<_>>();
    lists.iter().flat_map(|l| l.split_whitespace()).filter_map(|p| p.parse().ok()).collect()
}

/// Whether this process or one of its descendants holds the socket with this inode (an entry of
/// `/proc/net/tcp`).
pub fn descendant_holds_socket(inode: u64) -> bool {
    let target = format!("socket:[{inode}]");
    let me = std::process::id();
    std::iter::once(me).chain(descendants(me, |_| false, children_of)).any(|pid| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|fds| fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == target.as_str())))
            .unwrap_or(false)
    })
}
