//! Starting one process the way glibc's posix_spawn does: `clone(CLONE_VM | CLONE_VFORK)` on a
//! stack of its own. `fork` (what `Command` falls back to once `pre_exec` is used) copied the
//! daemon's page tables for every rank, the child then threw the copy away at exec, and every page
//! the daemon wrote afterwards took a copy-on-write fault: at 256 ranks that was most of the
//! daemon's time. Here the child shares the daemon's memory while the daemon's thread waits for
//! its exec, so it does only raw system calls on data prepared before (nothing allocates, no lock
//! is taken), and tells what failed through that shared memory instead of an error pipe.

use libc::{c_char, c_int, c_ulong, c_void};
use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};

/// Bytes of the child's stack: it runs a few system calls and no library code but their wrappers.
const STACK: usize = 128 * 1024;

/// Why a process did not start (errno).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Its working directory cannot be entered.
    Workdir(i32),
    /// Anything else: pipes, binding, exec.
    Start(i32),
}

/// A started process: its pid and the daemon's ends of its pipes.
pub struct Started {
    pub pid: u32,
    pub stdin: Option<OwnedFd>,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// One process to start. Pointer arrays end with a null pointer.
pub struct Exec<'a> {
    /// The paths exec tries in order ([`candidates`]).
    pub candidates: &'a [CString],
    pub argv: &'a [*const c_char],
    pub envp: &'a [*const c_char],
    pub cwd: Option<&'a CStr>,
    /// A pipe for stdin, or /dev/null.
    pub stdin: bool,
    /// The kernel's CPU mask to bind to before exec.
    pub mask: Option<&'a [c_ulong]>,
    /// `cgroup.procs` of the job's cgroup, entered before exec.
    pub cgroup_procs: Option<&'a CStr>,
    /// Inherited descriptors the program keeps (the PMI socket end, the image socket end).
    pub keep_fds: [Option<RawFd>; 2],
}

/// What every start of one batch shares: the child's stack, /dev/null, the signals the daemon
/// handles (the child must not run a handler on the daemon's memory). Every signal stays blocked
/// in the calling thread while a launcher exists: a handler must not run in a child that shares
/// the daemon's memory, and blocking once per batch saves two system calls per start. Signals
/// wait until the batch is over, which the event loop would make them do anyway.
pub struct Launcher {
    stack: Stack,
    null: OwnedFd,
    handled: Vec<c_int>,
    daemon_pid: libc::pid_t,
    /// The mask to restore.
    old_mask: libc::sigset_t,
}

/// Where the child gave up (`STAGE_*`) and errno, written by the child, read after it exec'd or
/// exited.
const STAGE_NONE: i32 = 0;
const STAGE_WORKDIR: i32 = 1;
const STAGE_START: i32 = 2;

/// Everything the child reads, as raw pointers into the parent's (suspended) frame.
struct ChildArgs {
    candidates: *const *const c_char,
    n_candidates: usize,
    argv: *const *const c_char,
    /// `/bin/sh`, a free slot for the script's path, `argv[1..]`, null (execvp's ENOEXEC rule).
    script_argv: *mut *const c_char,
    envp: *const *const c_char,
    cwd: *const c_char,
    mask: *const c_ulong,
    mask_bytes: usize,
    cgroup: *const c_char,
    fds: [c_int; 3],
    keep_fds: [c_int; 2],
    handled: *const c_int,
    n_handled: usize,
    daemon_pid: libc::pid_t,
    stage: AtomicI32,
    errno: AtomicI32,
}

impl Launcher {
    pub fn new() -> io::Result<Launcher> {
        // SAFETY: open(2) of a constant path; the result is checked before it is owned.
        let null = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if null == -1 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor just opened and owned by nothing else.
        let null = unsafe { OwnedFd::from_raw_fd(null) };
        let (stack, handled) = (Stack::new()?, handled_signals());
        // SAFETY: sigset_t is plain data; sigfillset and pthread_sigmask only write the sets given.
        let old_mask = unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
            old
        };
        Ok(Launcher { stack, null, handled, daemon_pid: std::process::id() as libc::pid_t, old_mask })
    }

    /// Starts `e`: own session (process group), parent-death signal, the daemon's signal
    /// dispositions and mask reset, bound, in the job's cgroup, stdout and stderr piped.
    pub fn start(&mut self, e: &Exec<'_>) -> Result<Started, Failure> {
        let errno = |err: io::Error| Failure::Start(err.raw_os_error().unwrap_or(libc::EIO));
        let (out_r, out_w) = pipe().map_err(errno)?;
        let (err_r, err_w) = pipe().map_err(errno)?;
        let (in_r, in_w) = if e.stdin { pipe().map(|(r, w)| (Some(r), Some(w))).map_err(errno)? } else { (None, None) };
        let cands: Vec<*const c_char> = e.candidates.iter().map(|c| c.as_ptr()).collect();
        let mut script_argv: Vec<*const c_char> = Vec::with_capacity(e.argv.len() + 2);
        script_argv.extend([c"/bin/sh".as_ptr(), std::ptr::null()]);
        script_argv.extend(e.argv.iter().skip(1));
        let args = ChildArgs {
            candidates: cands.as_ptr(),
            n_candidates: cands.len(),
            argv: e.argv.as_ptr(),
            script_argv: script_argv.as_mut_ptr(),
            envp: e.envp.as_ptr(),
            cwd: e.cwd.map_or(std::ptr::null(), CStr::as_ptr),
            mask: e.mask.map_or(std::ptr::null(), <[c_ulong]>::as_ptr),
            mask_bytes: e.mask.map_or(0, std::mem::size_of_val),
            cgroup: e.cgroup_procs.map_or(std::ptr::null(), CStr::as_ptr),
            fds: [in_r.as_ref().unwrap_or(&self.null).as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()],
            keep_fds: e.keep_fds.map(|f| f.unwrap_or(-1)),
            handled: self.handled.as_ptr(),
            n_handled: self.handled.len(),
            daemon_pid: self.daemon_pid,
            stage: AtomicI32::new(STAGE_NONE),
            errno: AtomicI32::new(0),
        };
        // SAFETY: the stack is ours alone (one start at a time: `&mut self`), `args` and
        // everything it points to outlive the call, which returns only after the child's exec or
        // exit (CLONE_VFORK). Signals are blocked (see `Launcher`); the child unblocks them after
        // resetting the handlers.
        let pid = unsafe { libc::clone(child, self.stack.top(), libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD, std::ptr::addr_of!(args) as *mut c_void) };
        if pid == -1 {
            return Err(Failure::Start(io::Error::last_os_error().raw_os_error().unwrap_or(libc::EAGAIN)));
        }
        let stage = args.stage.load(Ordering::SeqCst);
        if stage != STAGE_NONE {
            // It exited already (the daemon was suspended until then): collect it here, so
            // that no stray pid reaches the reaper.
            // SAFETY: waitpid(2) on our own child that has exited.
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
            let errno = args.errno.load(Ordering::SeqCst);
            return Err(if stage == STAGE_WORKDIR { Failure::Workdir(errno) } else { Failure::Start(errno) });
        }
        drop((out_w, err_w, in_r));
        Ok(Started { pid: pid as u32, stdin: in_w, stdout: out_r, stderr: err_r })
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved in `new` for this thread.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.old_mask, std::ptr::null_mut()) };
    }
}

/// The signals with a handler in this process now (`signal_hook`'s, libpmix's).
fn handled_signals() -> Vec<c_int> {
    (1..=libc::SIGRTMAX())
        .filter(|&s| s != libc::SIGKILL && s != libc::SIGSTOP)
        .filter(|&s| {
            // SAFETY: sigaction(2) only reads the disposition into `old`.
            let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
            (unsafe { libc::sigaction(s, std::ptr::null(), &mut old) } == 0) && old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN
        })
        .collect()
}

/// The paths `execvp` would try for `program` with `path` (the rank's `PATH`, None: unset): a
/// name with a slash as it is; otherwise each `PATH` entry (empty: the working directory), in
/// order, glibc's default when unset.
pub fn candidates(program: &str, path: Option<&[u8]>) -> Vec<CString> {
    if program.is_empty() {
        return Vec::new();
    }
    if program.contains('/') {
        return CString::new(program).into_iter().collect();
    }
    path.unwrap_or(b"/bin:/usr/bin")
        .split(|&b| b == b':')
        .filter_map(|dir| {
            let mut p = dir.to_vec();
            if !dir.is_empty() {
                p.push(b'/');
            }
            p.extend_from_slice(program.as_bytes());
            CString::new(p).ok()
        })
        .collect()
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as c_int; 2];
    // SAFETY: pipe2(2) writes two descriptors into `fds`, owned by nothing else once it succeeded.
    unsafe {
        if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok((OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])))
    }
}

/// The child, between clone and exec: system calls only, no allocation, no panic path.
extern "C" fn child(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the parent's ChildArgs, alive and unchanged while the parent is suspended;
    // every pointer in it was prepared for exactly this. Only async-signal-safe calls follow.
    unsafe {
        let a = &*(arg as *const ChildArgs);
        for (target, &fd) in (0..).zip(a.fds.iter()) {
            // dup2 onto itself would keep close-on-exec.
            let ok = if fd == target { libc::fcntl(fd, libc::F_SETFD, 0) != -1 } else { libc::dup2(fd, target) != -1 };
            if !ok {
                fail(a, STAGE_START);
            }
        }
        if !a.cwd.is_null() && libc::chdir(a.cwd) == -1 {
            fail(a, STAGE_WORKDIR);
        }
        // The daemon's handlers would run on its memory, and it ignores SIGPIPE (as Rust does);
        // the program gets the defaults and an empty mask, as `Command` gave it.
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        for i in 0..a.n_handled {
            libc::sigaction(*a.handled.add(i), &dfl, std::ptr::null_mut());
        }
        libc::sigaction(libc::SIGPIPE, &dfl, std::ptr::null_mut());
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        // Bound before exec, so the program's first thread and its allocations (first touch)
        // are already where they belong; MPI libraries need no binding of their own.
        if !a.mask.is_null() && libc::sched_setaffinity(0, a.mask_bytes, a.mask.cast::<libc::cpu_set_t>()) == -1 {
            fail(a, STAGE_START);
        }
        // Own process group: signals reach the rank and everything it starts, and the
        // terminal's ctrl-C goes to the front end only, which forwards it. Own session too
        // (which makes the group): with scheduler autogroups each session gets a fair CPU
        // share, and busy-polling MPI ranks left in the caller's session share one slice with
        // everything else there (MPI_Barrier ran 2.5x slower than under Hydra, which does the
        // same). setpgid is the fallback. Done before the daemon resumes, so signals it sends
        // right after the start find the group.
        if libc::setsid() == -1 {
            libc::setpgid(0, 0);
        }
        // Die with the daemon even if it is SIGKILLed (and if that happened already, now).
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if libc::getppid() != a.daemon_pid {
            libc::_exit(137);
        }
        if !a.cgroup.is_null() {
            super::cgroup::JobCgroup::enter_from_child(CStr::from_ptr(a.cgroup));
        }
        // The PMI and image socket ends are close-on-exec like every descriptor the daemon
        // opens; only this child keeps them (its descriptor table is its own: no CLONE_FILES).
        for &fd in &a.keep_fds {
            if fd >= 0 && libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                fail(a, STAGE_START);
            }
        }
        // execvp's search: remember EACCES, go on past what does not exist, stop at anything
        // else; a file the kernel cannot run goes to /bin/sh.
        let (mut eacces, mut last) = (false, libc::ENOENT);
        for i in 0..a.n_candidates {
            let path = *a.candidates.add(i);
            libc::execve(path, a.argv, a.envp);
            if errno() == libc::ENOEXEC {
                *a.script_argv.add(1) = path;
                libc::execve(*a.script_argv, a.script_argv, a.envp);
            }
            last = errno();
            match last {
                libc::EACCES => eacces = true,
                libc::ENOENT | libc::ESTALE | libc::ENOTDIR | libc::ENODEV | libc::ETIMEDOUT => {}
                _ => fail(a, STAGE_START),
            }
        }
        *libc::__errno_location() = if eacces { libc::EACCES } else { last };
        fail(a, STAGE_START)
    }
}

fn errno() -> c_int {
    // SAFETY: errno of this thread (in the child: the parent thread's, unused while it waits).
    unsafe { *libc::__errno_location() }
}

/// Records errno and where it happened for the parent, and ends the child.
fn fail(a: &ChildArgs, stage: i32) -> ! {
    a.errno.store(errno(), Ordering::SeqCst);
    a.stage.store(stage, Ordering::SeqCst);
    // SAFETY: _exit(2) runs no handler of the daemon's.
    unsafe { libc::_exit(127) }
}

/// The child's stack: anonymous memory with an inaccessible lowest page, so that an overflow
/// faults instead of writing over the daemon's memory.
struct Stack {
    base: *mut c_void,
}

impl Stack {
    fn new() -> io::Result<Stack> {
        // SAFETY: a fresh anonymous mapping; mprotect on its own first page.
        unsafe {
            let base = libc::mmap(std::ptr::null_mut(), STACK, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK, -1, 0);
            if base == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            let stack = Stack { base };
            if libc::mprotect(base, page_size(), libc::PROT_NONE) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(stack)
        }
    }

    /// Stacks grow down: the child starts at the end (page aligned, so 16-byte aligned).
    fn top(&self) -> *mut c_void {
        // SAFETY: one past the end of the mapping, which clone only uses as the initial sp.
        unsafe { self.base.cast::<u8>().add(STACK).cast() }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, used by no child any more (each start waited).
        unsafe { libc::munmap(self.base, STACK) };
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf(3) has no preconditions.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn the_search_is_execvps() {
        let c = |v: &[&str]| v.iter().map(|s| CString::new(*s).unwrap()).collect::<Vec<_>>();
        assert_eq!(candidates("./a.out", Some(b"/x")), c(&["./a.out"]), "a slash: no search");
        assert_eq!(candidates("prog", Some(b"/x::/y/")), c(&["/x/prog", "prog", "/y//prog"]), "empty entry: the working directory");
        assert_eq!(candidates("prog", None), c(&["/bin/prog", "/usr/bin/prog"]), "unset: glibc's default");
        assert!(candidates("", Some(b"/x")).is_empty());
    }

    fn cstrs(v: &[&str]) -> Vec<CString> {
        v.iter().map(|s| CString::new(*s).unwrap()).collect()
    }

    fn ptrs(v: &[CString]) -> Vec<*const c_char> {
        v.iter().map(|c| c.as_ptr()).chain([std::ptr::null()]).collect()
    }

    /// Starts `argv` (searched in PATH=/bin:/usr/bin) in `cwd`; its stdout and exit code.
    fn run(argv: &[&str], cwd: Option<&str>, env: &[&str]) -> Result<(String, i32), Failure> {
        let argv_c = cstrs(argv);
        let env_c = cstrs(env);
        let cwd_c = cwd.map(|c| CString::new(c).unwrap());
        let cands = candidates(argv[0], Some(b"/nonexistent:/bin:/usr/bin"));
        let mut l = Launcher::new().unwrap();
        let (argv_p, env_p) = (ptrs(&argv_c), ptrs(&env_c));
        let e = Exec { candidates: &cands, argv: &argv_p, envp: &env_p, cwd: cwd_c.as_deref(), stdin: false, mask: None, cgroup_procs: None, keep_fds: [None; 2] };
        let s = l.start(&e)?;
        let mut out = String::new();
        std::fs::File::from(s.stdout).read_to_string(&mut out).unwrap();
        let mut status = 0;
        // SAFETY: waitpid(2) on the child just started.
        unsafe { libc::waitpid(s.pid as libc::pid_t, &mut status, 0) };
        Ok((out, libc::WEXITSTATUS(status)))
    }

    #[test]
    fn a_started_program_gets_its_arguments_environment_directory_and_session() {
        let script = "echo $A $0 $1; pwd; [ $(ps -o sid= -p $$) -eq $$ ] && echo own-session";
        let (out, code) = run(&["sh", "-c", script, "x", "y"], Some("/tmp"), &["A=a", "PATH=/bin:/usr/bin"]).unwrap();
        assert_eq!(code, 0, "{out}");
        assert!(out.starts_with("a x y\n/tmp\n"), "{out}");
        assert!(out.ends_with("own-session\n") || !std::path::Path::new("/bin/ps").exists(), "{out}");
    }

    #[test]
    fn failures_say_which_errno_and_where() {
        assert_eq!(run(&["surely-not-a-program-here"], None, &[]).err(), Some(Failure::Start(libc::ENOENT)));
        assert_eq!(run(&["/etc/passwd"], None, &[]).err(), Some(Failure::Start(libc::EACCES)));
        assert_eq!(run(&["true"], Some("/surely/not/here"), &[]).err(), Some(Failure::Workdir(libc::ENOENT)));
        assert_eq!(run(&["true"], Some("/etc/passwd"), &[]).err(), Some(Failure::Workdir(libc::ENOTDIR)));
    }

    #[test]
    fn a_script_without_interpreter_line_runs_in_sh() {
        let dir = std::env::temp_dir().join(format!("rlaunch-exec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("s");
        std::fs::write(&script, "echo from-sh \"$1\"\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let r = run(&[script.to_str().unwrap(), "arg"], None, &[]);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(r.unwrap(), ("from-sh arg\n".to_string(), 0));
    }
}
