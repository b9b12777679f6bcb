//! Issue 17: `--max-restarts N` and `--restart-scope rank|job`. A failed rank is started again
//! (rank scope: alone, on its node; job scope: every rank, as the next generation with fresh
//! PMI/PMIx state) until the budget is spent; aborts, launch failures, ctrl-C and timeouts are
//! never restarted, and a restart that fails again at once does not loop.
//!
//! Programs: small shell scripts that read `RLAUNCH_RESTARTS` / `RLAUNCH_GENERATION` (crash on
//! the first start only), and tests/programs/mpi_restart.c under MPICH and Open MPI (compiled at
//! test time; without a compiler those tests say so and pass). Multi-node tests need the
//! namespace cluster (`RLAUNCH_CLUSTER_STATE`).

#[path = "common/cluster.rs"]
mod cluster;
mod common;

use cluster::{Cluster, NodeScratch};
use common::mpi::{self, rlaunch_lines, serial};
use common::{iterate, poll_until, Job, Output, Scratch};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Rank RANK is killed by SIGKILL on its first start; every run of every rank says who it is.
fn crash_first(rank: u32) -> String {
    format!(
        "echo \"rank $RLAUNCH_RANK restarts $RLAUNCH_RESTARTS generation $RLAUNCH_GENERATION on $(hostname)\"; \
         if [ \"$RLAUNCH_RESTARTS\" = 0 ] && [ \"$RLAUNCH_RANK\" = {rank} ]; then kill -9 $$; fi; sleep 0.5; echo \"rank $RLAUNCH_RANK done\""
    )
}

fn report(path: PathBuf) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(&path).expect("the --report file")).expect("the report is JSON")
}

fn count(o: &Output, line: &str) -> usize {
    o.stdout.lines().filter(|l| *l == line).count()
}

fn restart_lines(o: &Output) -> Vec<String> {
    rlaunch_lines(o).into_iter().filter(|l| l.contains("restart")).collect()
}

// ---------------------------------------------------------------------------------------------
// One node, shell programs

#[test]
fn rank_scope_restarts_only_the_failed_rank_with_its_output_tagged() {
    let s = Scratch::new("rst-rank");
    let host = common::hostname();
    let rep = s.path("report.json");
    let o = s.run(["-np", "3", "-l", "--max-restarts", "2", "--report", rep.to_str().unwrap(), "sh", "-c", &crash_first(1)]);
    o.expect_code(0);
    assert_eq!(rlaunch_lines(&o), [format!("rlaunch: rank 1 ({host}) killed by SIGKILL; restarting it (1 of 2)")], "{o}");
    // Both runs of rank 1 are tagged as rank 1; the others ran once.
    assert_eq!(count(&o, &format!("[1] rank 1 restarts 0 generation 0 on {host}")), 1, "{o}");
    assert_eq!(count(&o, &format!("[1] rank 1 restarts 1 generation 0 on {host}")), 1, "{o}");
    for r in [0, 2] {
        assert_eq!(count(&o, &format!("[{r}] rank {r} restarts 0 generation 0 on {host}")), 1, "{o}");
    }
    for r in 0..3 {
        assert_eq!(count(&o, &format!("[{r}] rank {r} done")), 1, "{o}");
    }
    let j = report(rep);
    assert_eq!(j["outcome"], "success");
    assert_eq!(j["generation"], 0);
    let restarts = j["restarts"].as_array().expect("a restarts list");
    assert_eq!(restarts.len(), 1, "{j}");
    let r = &restarts[0];
    assert_eq!((r["ranks"].clone(), r["node"].clone(), r["scope"].clone(), r["reason"].clone()), (serde_json::json!([1]), serde_json::json!(0), serde_json::json!("rank"), serde_json::json!("killed by SIGKILL")));
    assert!(r["running_again_ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{r}");
    assert!(j["ranks"].as_array().unwrap().iter().all(|r| r["exit_code"] == 0), "the last run of each rank: {j}");
    s.assert_no_leftovers(Duration::from_secs(5));
}

#[test]
fn job_scope_restarts_every_rank_as_generation_1() {
    let s = Scratch::new("rst-job");
    let host = common::hostname();
    let rep = s.path("report.json");
    let o = s.run(["-np", "3", "-l", "--max-restarts", "1", "--restart-scope", "job", "--report", rep.to_str().unwrap(), "sh", "-c", &crash_first(2)]);
    o.expect_code(0);
    assert_eq!(rlaunch_lines(&o), [format!("rlaunch: rank 2 ({host}) killed by SIGKILL; restarting the job (1 of 1, generation 1)")], "{o}");
    for r in 0..3 {
        assert_eq!(count(&o, &format!("[{r}] rank {r} restarts 1 generation 1 on {host}")), 1, "{o}");
        assert_eq!(count(&o, &format!("[{r}] rank {r} done")), 1, "only generation 1 got to the end:\n{o}");
    }
    let j = report(rep);
    assert_eq!((j["outcome"].clone(), j["generation"].clone()), (serde_json::json!("success"), serde_json::json!(1)));
    let restarts = j["restarts"].as_array().unwrap();
    assert_eq!(restarts.len(), 1, "{j}");
    assert_eq!((restarts[0]["scope"].clone(), restarts[0]["generation"].clone(), restarts[0]["ranks"].clone()), (serde_json::json!("job"), serde_json::json!(1), serde_json::json!([2])));
    s.assert_no_leftovers(Duration::from_secs(5));
}

#[test]
fn a_spent_budget_ends_the_job_with_the_failure_and_one_line() {
    for (scope, spent) in [("rank", "rank 2 was restarted 2 times"), ("job", "the job was restarted 2 times")] {
        let s = Scratch::new("rst-spent");
        let rep = s.path("report.json");
        // Runs past the restart-loop guard each time, then fails.
        let prog = "sleep 1.2; [ $RLAUNCH_RANK = 2 ] && exit 7; sleep 2";
        let o = s.run(["-np", "3", "--max-restarts", "2", "--restart-scope", scope, "--report", rep.to_str().unwrap(), "sh", "-c", prog]);
        o.expect_code(7);
        let lines = rlaunch_lines(&o);
        assert_eq!(lines.iter().filter(|l| l.contains("restarting")).count(), 2, "{o}");
        assert!(lines.iter().any(|l| l.starts_with("rlaunch: rank 2 (pid ") && l.contains(") exited with status 7")), "the verdict's own line:\n{o}");
        assert_eq!(lines.last().map(String::as_str), Some(format!("rlaunch: restart budget (2) spent: {spent} (--max-restarts)").as_str()), "{o}");
        let j = report(rep);
        assert_eq!((j["outcome"].clone(), j["exit_code"].clone(), j["restarts"].as_array().unwrap().len()), (serde_json::json!("rank-failed"), serde_json::json!(7), 2), "{j}");
        s.assert_no_leftovers(Duration::from_secs(5));
    }
}

#[test]
fn a_restart_that_fails_again_at_once_does_not_loop() {
    for (scope, said) in [("rank", "after its restart; not restarting it again"), ("job", "after the job's restart; not restarting the job again")] {
        let s = Scratch::new("rst-loop");
        let t = Instant::now();
        let o = s.run(["-np", "3", "--max-restarts", "1000", "--restart-scope", scope, "sh", "-c", "[ $RLAUNCH_RANK = 1 ] && exit 3; sleep 3"]);
        o.expect_code(3);
        assert!(t.elapsed() < Duration::from_secs(30), "bounded: {:?}", t.elapsed());
        let lines = restart_lines(&o);
        assert_eq!(lines.len(), 2, "one restart, then the line that stops the loop:\n{o}");
        assert!(lines[1].starts_with(&format!("rlaunch: rank 1 ({}) failed again ", common::hostname())) && lines[1].ends_with(said), "{o}");
        s.assert_no_leftovers(Duration::from_secs(5));
    }
}

#[test]
fn launch_failures_timeouts_and_interrupts_are_never_restarted() {
    let s = Scratch::new("rst-never");
    // A program that cannot start would fail the same way again.
    let o = s.run(["-np", "2", "--max-restarts", "3", "/nonexistent/program"]);
    o.expect_code(2);
    assert!(restart_lines(&o).is_empty(), "{o}");
    // --timeout ends the job; the ranks it kills are not restarted.
    let o = s.run(["-np", "2", "--max-restarts", "3", "--timeout", "1", "sleep", "30"]);
    o.expect_code(124);
    assert!(restart_lines(&o).is_empty(), "{o}");
    // ctrl-C: forwarded, the ranks die of it, and that is the job's end.
    let job = s.spawn(["-np", "2", "--max-restarts", "3", "sh", "-c", "touch $D/up.$RLAUNCH_RANK; exec sleep 30"]);
    s.wait_files(&["up.0".into(), "up.1".into()], Duration::from_secs(20));
    job.signal(libc::SIGINT);
    let o = job.wait();
    o.expect_code(130);
    assert!(restart_lines(&o).is_empty(), "{o}");
    s.assert_no_leftovers(Duration::from_secs(5));
}

#[test]
fn a_restarted_rank_reads_stdin_from_where_the_job_is() {
    let s = Scratch::new("rst-stdin");
    let prog = "cat; echo \"end of input $RLAUNCH_RESTARTS\"; [ $RLAUNCH_RESTARTS = 0 ] && kill -9 $$; true";
    let o = Job::start(s.cmd(["-np", "1", "-l", "--max-restarts", "1", "sh", "-c", prog]), Some(b"hi\n".to_vec())).wait_within(Duration::from_secs(20));
    o.expect_code(0);
    // The input went to the first process; the second sees its end at once instead of waiting.
    assert_eq!(o.stdout_lines(), ["[0] hi", "[0] end of input 0", "[0] end of input 1"], "{o}");
}

#[test]
fn every_rank_learns_its_restarts_and_generation_also_without_restarts() {
    let s = Scratch::new("rst-env");
    let o = s.run(["-np", "2", "-l", "sh", "-c", "echo $RLAUNCH_RESTARTS/$RLAUNCH_GENERATION"]);
    o.expect_code(0);
    assert_eq!(count(&o, "[0] 0/0") + count(&o, "[1] 0/0"), 2, "{o}");
}

#[test]
fn the_scope_defaults_to_job_for_mpi_and_rank_otherwise() {
    // Without an MPI library found the scope is the rank's: shown by the line.
    let s = Scratch::new("rst-default");
    let o = s.run(["-np", "2", "--max-restarts", "1", "sh", "-c", &crash_first(0)]);
    o.expect_code(0);
    assert!(restart_lines(&o)[0].ends_with("restarting it (1 of 1)"), "{o}");
    // --mpi pmi says the ranks speak PMI: the job's.
    let o = s.run(["-np", "2", "--max-restarts", "1", "--mpi", "pmi", "sh", "-c", &crash_first(0)]);
    o.expect_code(0);
    assert!(restart_lines(&o)[0].ends_with("restarting the job (1 of 1, generation 1)"), "{o}");
    // Open MPI's spelling: one restart.
    let o = s.run(["-np", "2", "--enable-recovery", "sh", "-c", &crash_first(1)]);
    o.expect_code(0);
    assert!(restart_lines(&o)[0].ends_with("restarting it (1 of 1)"), "{o}");
}

// ---------------------------------------------------------------------------------------------
// MPI: job scope re-initialises MPI in fresh processes

struct Built {
    dir: PathBuf,
    missing: Option<String>,
}

fn built(compiler: &'static str, subdir: &'static str, install: &'static str, cell: &'static OnceLock<Built>) -> &'static Built {
    cell.get_or_init(|| {
        let (dir, missing) = mpi::compile_all(compiler, subdir, &["mpi_restart", "mpi_abort"], install);
        Built { dir, missing }
    })
}

fn mpich(name: &str) -> Option<String> {
    static B: OnceLock<Built> = OnceLock::new();
    let b = built("mpicc.mpich", "restart-mpich", "install mpich and libmpich-dev", &B);
    program(b, name, "MPICH")
}

fn openmpi(name: &str) -> Option<String> {
    static B: OnceLock<Built> = OnceLock::new();
    let b = built("mpicc.openmpi", "restart-openmpi", "install openmpi-bin and libopenmpi-dev", &B);
    program(b, name, "Open MPI")
}

fn program(b: &Built, name: &str, family: &str) -> Option<String> {
    if let Some(why) = &b.missing {
        eprintln!("SKIP: {family} programs unavailable: {why}");
        return None;
    }
    Some(b.dir.join(name).to_string_lossy().into_owned())
}

const OMPI_ROOT: [&str; 4] = ["-x", "OMPI_ALLOW_RUN_AS_ROOT=1", "-x", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1"];

/// Rank 1 crashes after MPI_Init in generation 0; generation 1 computes the right sum.
fn expect_mpi_restart(o: &Output, n: u32) {
    o.expect_code(0);
    let sum = n * (n + 1) / 2;
    assert_eq!(o.stdout.lines().filter(|l| l.starts_with("restart ok")).collect::<Vec<_>>(), [format!("restart ok: generation 1, restarts 1, sum {sum} over {n} ranks")], "{o}");
    assert!(!o.stderr.contains("FAIL"), "{o}");
    let lines = restart_lines(o);
    assert_eq!(lines.len(), 1, "{o}");
    assert!(lines[0].contains("killed by SIGSEGV; restarting the job (1 of 2, generation 1)"), "{o}");
}

#[test]
fn mpich_job_scope_restart_reinitialises_mpi() {
    let _serial = serial();
    let Some(p) = mpich("mpi_restart") else { return };
    for lazy in [false, true] {
        let s = Scratch::new("rst-mpich");
        let mut args = vec!["-np", "4", "--max-restarts", "2"];
        if lazy {
            args.push("--pmi-lazy");
        }
        args.push(&p);
        let o = s.run(&args);
        expect_mpi_restart(&o, 4);
        s.assert_no_leftovers(Duration::from_secs(5));
    }
}

#[test]
fn open_mpi_job_scope_restart_gets_a_fresh_pmix_namespace() {
    let _serial = serial();
    let Some(p) = openmpi("mpi_restart") else { return };
    let s = Scratch::new("rst-ompi");
    let o = s.run(OMPI_ROOT.iter().copied().chain(["-np", "4", "--max-restarts", "2", &p]));
    expect_mpi_restart(&o, 4);
    s.assert_no_leftovers(Duration::from_secs(5));
}

#[test]
fn open_mpi_restarts_twice_each_time_in_a_namespace_of_its_own() {
    let _serial = serial();
    let Some(p) = openmpi("mpi_restart") else { return };
    let s = Scratch::new("rst-ompi-twice");
    let rep = s.path("report.json");
    // Rank 2 crashes in generations 0 and 1 (the second time 1.5 s in, past the loop guard).
    let o = s.run(OMPI_ROOT.iter().copied().chain(["-np", "3", "--max-restarts", "2", "--report", rep.to_str().unwrap(), &p, "2", "2", "1.5"]));
    o.expect_code(0);
    assert_eq!(o.stdout.lines().filter(|l| l.starts_with("restart ok")).collect::<Vec<_>>(), ["restart ok: generation 2, restarts 2, sum 6 over 3 ranks"], "{o}");
    assert_eq!(restart_lines(&o).len(), 2, "{o}");
    let j = report(rep);
    assert_eq!((j["generation"].clone(), j["restarts"].as_array().unwrap().len()), (serde_json::json!(2), 2), "{j}");
    s.assert_no_leftovers(Duration::from_secs(5));
}

/// The MPI families: compiler, what provides it, the options their jobs need.
const FAMILIES: [(&str, &str, &[&str]); 2] =
    [("mpicc.mpich", "install mpich and libmpich-dev", &[]), ("mpicc.openmpi", "install openmpi-bin and libopenmpi-dev", &OMPI_ROOT)];

/// tests/programs/mpi_iterate.c (MPI with the recovery-image API) built with `compiler`.
fn mpi_iterate(compiler: &str, install: &str) -> Option<String> {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("restart-{compiler}"));
    std::fs::create_dir_all(&dir).expect("creating the program dir");
    let include = Path::new(env!("CARGO_MANIFEST_DIR")).join("fabrics/image/include");
    let lib = iterate::static_lib();
    let extra = ["-I", include.to_str().unwrap(), lib.to_str().unwrap(), "-lpthread", "-ldl", "-lm"];
    match mpi::compile_with(compiler, &extra, &dir, "mpi_iterate", install) {
        Ok(()) => Some(dir.join("mpi_iterate").to_string_lossy().into_owned()),
        Err(why) => {
            eprintln!("SKIP: mpi_iterate with {compiler}: {why}");
            None
        }
    }
}

/// Rank 1 crashes at iteration 15 of 30 in generation 0; generation 1 resumes from the latest
/// complete epoch's images and ends with the closed form.
fn expect_mpi_iterate(o: &Output, n: u64) {
    o.expect_code(0);
    let want = n * (n + 1) / 2 * 465;
    let ok: Vec<&str> = o.stdout.lines().filter(|l| l.starts_with("mpi_iterate ok")).collect();
    assert_eq!(ok.len(), 1, "{o}");
    assert!(ok[0].starts_with(&format!("mpi_iterate ok: acc {want}, resumed at iteration ")) && ok[0].ends_with(", generation 1"), "{o}");
    let resumed: u32 = ok[0].split("iteration ").nth(1).and_then(|r| r.split(',').next()).and_then(|r| r.parse().ok()).unwrap();
    assert!(resumed > 0, "generation 1 started from an image, not from the beginning:\n{o}");
    assert!(!o.stderr.contains("FAIL"), "{o}");
}

#[test]
fn mpi_programs_using_images_resume_after_a_job_scope_restart() {
    let _serial = serial();
    for (compiler, install, extra) in FAMILIES {
        let Some(p) = mpi_iterate(compiler, install) else { continue };
        let s = Scratch::new("rst-mpi-iterate");
        let o = s.run(extra.iter().copied().chain(["-np", "4", "--max-restarts", "1", &p]));
        expect_mpi_iterate(&o, 4);
        s.assert_no_leftovers(Duration::from_secs(5));
    }
}

#[test]
fn mpi_abort_is_never_restarted() {
    let _serial = serial();
    let Some(p) = mpich("mpi_abort") else { return };
    let s = Scratch::new("rst-abort");
    let o = s.run(["-np", "3", "--max-restarts", "5", &p]);
    o.expect_code(7);
    assert!(rlaunch_lines(&o).iter().any(|l| l.contains("called abort with code 7")), "{o}");
    assert!(restart_lines(&o).is_empty(), "{o}");
}

// ---------------------------------------------------------------------------------------------
// With recovery images (tests/programs/iterate.c): a rank killed mid-run resumes from its image

/// The pid of rank `rank`'s process running `prog` in this test, if there is one now.
fn rank_pid(s: &Scratch, rank: u32, prog: &str) -> Option<u32> {
    let want = format!("RLAUNCH_RANK={rank}");
    common::marked_processes(&s.mark).into_iter().map(|(pid, _)| pid).find(|&pid| {
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        cmd.starts_with(prog.as_bytes()) && env.split(|&b| b == 0).any(|v| v == want.as_bytes())
    })
}

#[test]
fn a_rank_killed_mid_run_resumes_from_its_image_with_the_undisturbed_checksum() {
    let prog = iterate::iterate().display().to_string();
    for scope in ["rank", "job"] {
        let s = Scratch::new("rst-iterate");
        let rep = s.path("report.json");
        // 30 iterations of 60 ms, 4 KiB of state; rank 2 is killed well past the loop guard.
        let args = ["30", "60", "4096", scope];
        let job = s.spawn(["-np", "4", "--max-restarts", "2", "--restart-scope", scope, "--report", rep.to_str().unwrap(), &prog].into_iter().chain(args));
        let mut victim = None;
        assert!(poll_until(Duration::from_secs(20), || {
            victim = rank_pid(&s, 2, &prog);
            victim.is_some()
        }));
        std::thread::sleep(Duration::from_millis(1100));
        // SAFETY: plain kill(2) of the rank's process, which this test started.
        unsafe { libc::kill(victim.unwrap() as libc::pid_t, libc::SIGKILL) };
        let o = job.wait();
        o.expect_code(0);
        assert_eq!(iterate::checksums(&o), iterate::undisturbed(4, &args[..3]), "{scope} scope: the same result as an undisturbed run:\n{o}");
        let restored: Vec<&str> = o.stdout.lines().filter(|l| l.contains(" restored epoch ")).collect();
        match scope {
            "rank" => assert!(restored.len() == 1 && restored[0].starts_with("rank 2 restored epoch ") && restored[0].ends_with(" restarts 1"), "{o}"),
            _ => assert_eq!(restored.len(), 4, "every rank resumes from the latest complete epoch:\n{o}"),
        }
        let j = report(rep);
        let restarts = j["restarts"].as_array().unwrap();
        assert_eq!(restarts.len(), 1, "{j}");
        assert_eq!((restarts[0]["scope"].as_str(), restarts[0]["reason"].as_str()), (Some(scope), Some("killed by SIGKILL")), "{j}");
        assert!(restarts[0]["running_again_ms"].as_f64().is_some(), "{j}");
        s.assert_no_leftovers(Duration::from_secs(5));
    }
}

// ---------------------------------------------------------------------------------------------
// Namespace cluster: 4 nodes of 2 slots, fan-out 2 (n1 and n2 below the front end, n3 and n4
// below n1), the failing rank on n3.

fn cluster_job(c: &Cluster, s: &NodeScratch, rest: &[&str]) -> Vec<String> {
    let hosts = c.nodes[..4].iter().map(|n| format!("{n}:2")).collect::<Vec<_>>().join(",");
    let mut a = c.agent_args();
    a.extend(["-H".into(), hosts, "--fanout".into(), "2".into(), "-np".into(), "8".into(), "--report".into(), s.path("report.json").to_string_lossy().into_owned()]);
    a.extend(rest.iter().map(|s| s.to_string()));
    a
}

#[test]
fn multinode_rank_scope_restarts_the_rank_on_its_node() {
    let Some(c) = Cluster::get("multinode_rank_scope_restarts_the_rank_on_its_node") else { return };
    let s = NodeScratch::new("rst-mn-rank");
    let o = s.run(cluster_job(&c, &s, &["-l", "--max-restarts", "1", "sh", "-c", &crash_first(5)]));
    o.expect_code(0);
    let n3 = &c.nodes[2];
    assert_eq!(rlaunch_lines(&o), [format!("rlaunch: rank 5 ({n3}) killed by SIGKILL; restarting it (1 of 1)")], "{o}");
    assert_eq!(count(&o, &format!("[5] rank 5 restarts 1 generation 0 on {n3}")), 1, "same node:\n{o}");
    assert_eq!(o.stdout.lines().filter(|l| l.ends_with(" done")).count(), 8, "{o}");
    let j = s.report();
    assert_eq!((j["restarts"][0]["node"].clone(), j["restarts"][0]["scope"].clone()), (serde_json::json!(2), serde_json::json!("rank")));
    s.assert_no_leftovers(Some(&c), Duration::from_secs(5));
}

#[test]
fn multinode_job_scope_restarts_every_node() {
    let Some(c) = Cluster::get("multinode_job_scope_restarts_every_node") else { return };
    let s = NodeScratch::new("rst-mn-job");
    let o = s.run(cluster_job(&c, &s, &["-l", "--max-restarts", "1", "--restart-scope", "job", "sh", "-c", &crash_first(5)]));
    o.expect_code(0);
    for r in 0..8u32 {
        let node = &c.nodes[(r / 2) as usize];
        assert_eq!(count(&o, &format!("[{r}] rank {r} restarts 1 generation 1 on {node}")), 1, "{o}");
    }
    assert_eq!(s.report()["generation"], 1);
    s.assert_no_leftovers(Some(&c), Duration::from_secs(5));
}

#[test]
fn multinode_a_rank_killed_mid_run_resumes_from_its_image() {
    let Some(c) = Cluster::get("multinode_a_rank_killed_mid_run_resumes_from_its_image") else { return };
    let prog = iterate::iterate().display().to_string();
    for scope in ["rank", "job"] {
        let s = NodeScratch::new("rst-mn-iterate");
        let args = ["30", "60", "4096", scope];
        let job = s.spawn(cluster_job(&c, &s, &["--max-restarts", "1", "--restart-scope", scope, &prog, args[0], args[1], args[2], args[3]]));
        // Rank 5 runs on n3, below n1.
        let victim = || {
            s.leftovers().into_iter().find(|p| p.cmdline.starts_with(&prog) && std::fs::read(format!("/proc/{}/environ", p.pid)).unwrap_or_default().split(|&b| b == 0).any(|v| v == b"RLAUNCH_RANK=5"))
        };
        let mut found = None;
        assert!(poll_until(Duration::from_secs(20), || {
            found = victim();
            found.is_some()
        }));
        let p = found.unwrap();
        assert_eq!(c.node_of(p.pid), c.nodes[2]);
        std::thread::sleep(Duration::from_millis(1100));
        // SAFETY: plain kill(2) of the rank's process, which this test started.
        unsafe { libc::kill(p.pid as libc::pid_t, libc::SIGKILL) };
        let o = job.wait();
        o.expect_code(0);
        assert_eq!(iterate::checksums(&o), iterate::undisturbed(8, &args[..3]), "{scope} scope:\n{o}");
        assert_eq!(s.report()["restarts"].as_array().unwrap().len(), 1);
        s.assert_no_leftovers(Some(&c), Duration::from_secs(5));
    }
}

#[test]
fn multinode_mpi_job_scope_restarts_with_the_right_answer() {
    let Some(c) = Cluster::get("multinode_mpi_job_scope_restarts_with_the_right_answer") else { return };
    let _serial = serial();
    for (p, extra) in [(mpich("mpi_restart"), &[][..]), (openmpi("mpi_restart"), &OMPI_ROOT[..])] {
        let Some(p) = p else { continue };
        let s = NodeScratch::new("rst-mn-mpi");
        let mut rest: Vec<&str> = extra.to_vec();
        rest.extend(["--max-restarts", "2", &p, "5"]);
        let o = s.run(cluster_job(&c, &s, &rest));
        o.expect_code(0);
        assert_eq!(o.stdout.lines().filter(|l| l.starts_with("restart ok")).collect::<Vec<_>>(), ["restart ok: generation 1, restarts 1, sum 36 over 8 ranks"], "{p}:\n{o}");
        assert!(poll_until(Duration::from_secs(5), || s.leftovers().is_empty()), "{:?}", s.leftovers());
    }
    // With images: generation 1 resumes where generation 0 had got to, on every node.
    for (compiler, install, extra) in FAMILIES {
        let Some(p) = mpi_iterate(compiler, install) else { continue };
        let s = NodeScratch::new("rst-mn-mpi-iterate");
        let mut rest: Vec<&str> = extra.to_vec();
        rest.extend(["--max-restarts", "1", &p, "30", "50", "5"]);
        let o = s.run(cluster_job(&c, &s, &rest));
        expect_mpi_iterate(&o, 8);
        assert!(poll_until(Duration::from_secs(5), || s.leftovers().is_empty()), "{:?}", s.leftovers());
    }
}
