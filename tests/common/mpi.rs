//! What the MPI test files (mpich.rs, openmpi.rs) share: compiling the C programs of
//! tests/programs at test time, the checks on rlaunch's own stderr lines, one-job-at-a-time, and
//! the namespace cluster's node list.

use super::Output;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Compiles tests/programs/NAME.c with `compiler` into `dir/NAME`: into a temporary name first,
/// then renamed, so concurrent test runs never see half a binary. `install` says what provides
/// the compiler.
pub fn compile(compiler: &str, dir: &Path, name: &str, install: &str) -> Result<(), String> {
    compile_with(compiler, &[], dir, name, install)
}

/// [`compile`] with more compiler arguments after the source (include paths, libraries).
pub fn compile_with(compiler: &str, extra: &[&str], dir: &Path, name: &str, install: &str) -> Result<(), String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs").join(format!("{name}.c"));
    let tmp = dir.join(format!(".{name}.{}", std::process::id()));
    let out = Command::new(compiler)
        .args(["-O1", "-o"])
        .arg(&tmp)
        .arg(&src)
        .args(extra)
        .output()
        .map_err(|e| format!("{compiler} not runnable: {e} ({install}: scripts/install-deps)"))?;
    if !out.status.success() {
        return Err(format!("{compiler} {} failed:\n{}", src.display(), String::from_utf8_lossy(&out.stderr)));
    }
    std::fs::rename(&tmp, dir.join(name)).map_err(|e| format!("renaming {}: {e}", tmp.display()))
}

/// Compiles every program of `names` into the target's `subdir`: the directory, and why the set
/// is unusable (the first failure), if it is.
pub fn compile_all(compiler: &str, subdir: &str, names: &[&str], install: &str) -> (PathBuf, Option<String>) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(subdir);
    std::fs::create_dir_all(&dir).expect("creating the program dir");
    let missing = names.iter().find_map(|p| compile(compiler, &dir, p, install).err());
    (dir, missing)
}

/// A job of tests/programs/mpi_binding.c run with `--report-bindings`: every rank's own CPU list
/// (`binding R LIST`, from sched_getaffinity after MPI_Init) equals the list rlaunch reported for
/// it. Returns each rank's reported picture.
pub fn expect_reported_bindings(o: &Output, n: u32) -> std::collections::BTreeMap<u32, String> {
    o.expect_code(0);
    let mut pictures = std::collections::BTreeMap::new();
    for r in 0..n {
        let prefix = format!("rlaunch: rank {r} on ");
        let line = o.stderr.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("no report line for rank {r}:\n{o}"));
        let what = line.split_once(": ").and_then(|(_, rest)| rest.split_once(": ")).map(|(_, w)| w).unwrap();
        let list = what.strip_prefix("bound to CPUs ").or_else(|| what.strip_prefix("not bound (CPUs ")).unwrap().split([' ', ')']).next().unwrap();
        let own = format!("binding {r} {list}");
        assert!(o.stdout.lines().any(|l| l == own), "rank {r} reports another binding than rlaunch ({list}):\n{o}");
        pictures.insert(r, what.rsplit(' ').next().unwrap().to_string());
    }
    pictures
}

/// MPI ranks busy-poll: two MPI jobs of one test file at once on a 2-core machine starve each
/// other into timeouts inside MPI_Init. The tests of a file take this lock and run one at a time.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The lines rlaunch itself wrote to stderr.
pub fn rlaunch_lines(o: &Output) -> Vec<String> {
    o.stderr.lines().filter(|l| l.starts_with("rlaunch: ")).map(str::to_string).collect()
}

pub fn expect_clean_success(o: &Output) {
    o.expect_code(0);
    assert!(rlaunch_lines(o).is_empty(), "rlaunch complained about a good job:\n{o}");
    assert!(!o.stderr.contains("FAIL"), "a program reported a failure:\n{o}");
}

/// A clean job of tests/programs/mpi_hello.c: every rank said hello once, with the right rank,
/// size and host.
pub fn expect_hellos(o: &Output, n: u32, host: &str) {
    expect_clean_success(o);
    let mut got: Vec<&str> = o.stdout_lines();
    got.sort();
    let mut want: Vec<String> = (0..n).map(|r| format!("hello from rank {r} of {n} on {host}")).collect();
    want.sort();
    assert_eq!(got, want, "n={n}:\n{o}");
}

/// `rlaunch: rank R (pid P on HOST) REST` → (R, P, HOST, REST).
pub fn parse_rank_line(line: &str) -> Option<(u32, u32, String, String)> {
    let rest = line.strip_prefix("rlaunch: ")?;
    let rest = rest.strip_prefix("PMI protocol error from ").unwrap_or(rest);
    let rest = rest.strip_prefix("rank ")?;
    let (rank, rest) = rest.split_once(" (pid ")?;
    let (pid, rest) = rest.split_once(" on ")?;
    let (host, rest) = rest.split_once(')')?;
    Some((rank.parse().ok()?, pid.parse().ok()?, host.to_string(), rest.trim_start_matches([':', ' ']).to_string()))
}

/// Exactly one line from rlaunch, about `rank`, with a real pid, containing `needle`.
pub fn expect_one_rank_line(o: &Output, rank: u32, needle: &str) {
    let lines = rlaunch_lines(o);
    assert_eq!(lines.len(), 1, "expected one line from rlaunch:\n{o}");
    let (r, pid, _host, rest) = parse_rank_line(&lines[0]).unwrap_or_else(|| panic!("not a rank line: {:?}\n{o}", lines[0]));
    assert_eq!(r, rank, "the line names the wrong rank:\n{o}");
    assert!(pid > 0, "the line has no pid:\n{o}");
    assert!(rest.contains(needle), "the line should say {needle:?}:\n{o}");
}

/// The live namespace cluster's host list (/run/rlaunch-cluster/hosts), or None after printing
/// why the multi-node tests are skipped.
pub fn cluster_hosts() -> Option<PathBuf> {
    if std::env::var_os("RLAUNCH_CLUSTER_STATE").is_none() {
        eprintln!("SKIP: RLAUNCH_CLUSTER_STATE is unset (start a cluster with scripts/cluster up 8 and source its env file)");
        return None;
    }
    let hosts = PathBuf::from("/run/rlaunch-cluster/hosts");
    if !hosts.exists() {
        eprintln!("SKIP: {} does not exist; the cluster is not up", hosts.display());
        return None;
    }
    Some(hosts)
}

/// The launch agent that enters a cluster node (scripts/node-exec).
pub fn node_exec() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/node-exec")
}
