//! Claims on per-job files and directories that outlive a SIGKILLed daemon (endpoint tables in
//! /dev/shm, libpmix's working directories in /tmp): the daemon holds a shared `flock` while it
//! uses one, the kernel drops that lock when the daemon dies however it dies, and a later daemon
//! sweeps what is old and unclaimed. The age keeps a sweep from racing a daemon between creating
//! a path and locking it.

use std::io;
use std::path::Path;
use std::time::Duration;

/// A path older than this that nobody holds is a leftover.
pub const STALE_AFTER: Duration = Duration::from_secs(60);

/// Takes a shared claim on `path` (a file or a directory) for as long as the returned handle
/// lives.
pub fn hold(path: &Path) -> io::Result<std::fs::File> {
    flock(path, libc::LOCK_SH)
}

/// Whether nobody holds `path`: takes an exclusive claim for as long as the returned handle
/// lives, or fails (`WouldBlock`) while a daemon holds it.
pub fn take_if_unheld(path: &Path) -> io::Result<std::fs::File> {
    flock(path, libc::LOCK_EX)
}

fn flock(path: &Path, how: libc::c_int) -> io::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path)?;
    // SAFETY: flock on a descriptor we own; the lock goes with `f`.
    if unsafe { libc::flock(f.as_raw_fd(), how | libc::LOCK_NB) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(f)
}

/// Whether the directory entry was last modified at least `age` ago (false when unknown).
pub fn older_than(e: &std::fs::DirEntry, age: Duration) -> bool {
    e.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok()).is_some_and(|a| a >= age)
}
