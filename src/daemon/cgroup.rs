//! A cgroup v2 per job and node, where the hierarchy is writable: every rank enters it before
//! exec, and `cgroup.kill` at the end (by the daemon, or by its guard when the daemon was
//! SIGKILLed) ends whatever is still in it. Nothing a rank starts can leave a cgroup without
//! privileges, so this catches descendants that escaped both the process group (setsid, a
//! daemonizing helper) and, once the daemon is gone, its subreaper sweep. Without a writable
//! cgroup v2 (kernel before 5.14, a read-only mount, no delegation) rlaunch relies on the
//! subreaper alone.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub struct JobCgroup {
    dir: PathBuf,
    /// `cgroup.procs` of `dir`, for the rank to write itself into between fork and exec.
    procs: CString,
}

impl JobCgroup {
    /// `rlaunch-JOB-NODE-PID` under this daemon's own cgroup; `None` where that cannot be made.
    pub fn create(job_id: &str, node: u32) -> Option<JobCgroup> {
        let mount = cgroup2_mount(&std::fs::read_to_string("/proc/self/mountinfo").ok()?)?;
        let own = own_cgroup(&std::fs::read_to_string("/proc/self/cgroup").ok()?)?;
        let name = format!("rlaunch-{job_id}-{node}-{}", std::process::id());
        let dir = mount.join(own.trim_start_matches('/')).join(name);
        std::fs::create_dir(&dir).ok()?;
        // cgroup.kill came with Linux 5.14; without it the cgroup could not end anything.
        if !dir.join("cgroup.kill").exists() {
            let _ = std::fs::remove_dir(&dir);
            return None;
        }
        let procs = CString::new(dir.join("cgroup.procs").as_os_str().as_bytes()).ok()?;
        Some(JobCgroup { dir, procs })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// For the child between clone and exec: moves the calling process into the cgroup.
    /// Async-signal-safe (open, write, close); a failure leaves the rank where it was.
    pub fn enter_from_child(procs: &std::ffi::CStr) {
        // SAFETY: open/write/close on a path prepared before clone; all async-signal-safe.
        unsafe {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd >= 0 {
                libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
            }
        }
    }

    pub fn procs(&self) -> &CString {
        &self.procs
    }
}

impl Drop for JobCgroup {
    fn drop(&mut self) {
        kill_and_remove(&self.dir);
    }
}

/// Ends every process in the cgroup `dir` and removes it once it is empty (bounded wait).
pub fn kill_and_remove(dir: &Path) {
    let _ = std::fs::write(dir.join("cgroup.kill"), "1");
    let until = Instant::now() + Duration::from_secs(1);
    while std::fs::read_to_string(dir.join("cgroup.events")).is_ok_and(|e| e.lines().any(|l| l == "populated 1")) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = std::fs::remove_dir(dir);
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on a
/// hybrid system), from `/proc/self/mountinfo`.
fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let mount = left.split_whitespace().nth(4)?;
        (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount))
    })
}

/// This process's cgroup v2 path (`0::/path` in `/proc/self/cgroup`).
fn own_cgroup(cgroup: &str) -> Option<String> {
    cgroup.lines().find_map(|l| l.strip_prefix("0::")).map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_v2_mount_and_own_path() {
        let hybrid = "25 24 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                      33 25 0:29 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n\
                      34 25 0:30 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert_eq!(cgroup2_mount(hybrid), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(cgroup2_mount("34 25 0:30 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"), None);
        assert_eq!(own_cgroup("4:memory:/x\n0::/user.slice/job\n").as_deref(), Some("/user.slice/job"));
        assert_eq!(own_cgroup("4:memory:/x\n"), None);
    }

    #[test]
    fn a_job_cgroup_ends_what_entered_it() {
        let Some(cg) = JobCgroup::create("rl-test", 0) else { return };
        let mut child = std::process::Command::new("sleep").arg("100").spawn().unwrap();
        std::fs::write(cg.dir().join("cgroup.procs"), child.id().to_string()).unwrap();
        let dir = cg.dir().to_path_buf();
        drop(cg);
        assert!(matches!(child.wait().map(|s| std::os::unix::process::ExitStatusExt::signal(&s)), Ok(Some(libc::SIGKILL))));
        assert!(!dir.exists(), "the cgroup is removed");
    }
}
