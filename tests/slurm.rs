//! rlaunch inside real Slurm allocations (issue 5), on the namespace cluster with
//! `scripts/slurm-cluster up` (the test runner brings it up and exports SLURM_CONF), and inside a
//! PBS-style environment over ssh.
//!
//! Skipped, with a message, when no Slurm cluster is up. Everything a batch job writes goes to the
//! target dir, which every node sees (their /tmp is private).

#[path = "common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn slurm_conf() -> Option<String> {
    let conf = std::env::var("SLURM_CONF").ok().filter(|c| Path::new(c).exists()).or_else(|| {
        let c = "/run/rlaunch-cluster/slurm/slurm.conf";
        Path::new(c).exists().then(|| c.to_string())
    });
    if conf.is_none() {
        eprintln!("SKIP: no Slurm cluster is up (scripts/slurm-cluster up; scripts/test does it)");
    }
    conf
}

/// A directory for one test under the shared target dir.
fn shared_dir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("slurm-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn mpi_hello(dir: &Path) -> Option<PathBuf> {
    let out = dir.join("mpi_hello");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs/mpi_hello.c");
    match Command::new("mpicc.mpich").arg("-o").arg(&out).arg(&src).status() {
        Ok(s) if s.success() => Some(out),
        _ => {
            eprintln!("SKIP (MPI part): mpicc.mpich is not available");
            None
        }
    }
}

fn slurm(conf: &str, prog: &str) -> Command {
    let mut c = Command::new(prog);
    c.env("SLURM_CONF", conf);
    // The test's own environment may come from an allocation; a job must not inherit it.
    for (k, _) in std::env::vars() {
        if k.starts_with("SLURM_") && k != "SLURM_CONF" {
            c.env_remove(k);
        }
    }
    c
}

/// Submits `script` with `args` and waits for the job to leave the queue. Returns the job id.
fn sbatch_wait(conf: &str, dir: &Path, args: &[&str], script: &str) -> String {
    let path = dir.join("job.sh");
    std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = slurm(conf, "sbatch")
        .args(["--parsable", "-o"])
        .arg(dir.join("out.txt"))
        .args(args)
        .arg(&path)
        .output()
        .expect("sbatch runs");
    assert!(out.status.success(), "sbatch failed: {}", String::from_utf8_lossy(&out.stderr));
    let id = String::from_utf8_lossy(&out.stdout).trim().split(';').next().unwrap().to_string();
    let gone = common::poll_until(Duration::from_secs(90), || {
        let q = slurm(conf, "squeue").args(["-h", "-j", &id]).output().unwrap();
        String::from_utf8_lossy(&q.stdout).trim().is_empty()
    });
    assert!(gone, "job {id} still queued or running after 90 s");
    id
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_default()
}

#[test]
fn batch_script_without_hostfile_runs_on_every_node() {
    let Some(conf) = slurm_conf() else { return };
    let dir = shared_dir("batch");
    let hello = mpi_hello(&dir);
    let bin = common::bin();
    let mut script = format!(
        "cd {d}\n{bin} --report {d}/rep.json hostname > {d}/hosts.txt; echo rc=$? > {d}/rc1\n",
        d = dir.display()
    );
    if let Some(h) = &hello {
        script.push_str(&format!("{bin} {} > {d}/hello.txt 2>&1; echo rc=$? > {d}/rc2\n", h.display(), d = dir.display()));
    }
    sbatch_wait(&conf, &dir, &["-N", "3"], &script);
    assert_eq!(read(&dir, "rc1").trim(), "rc=0", "job output: {}", read(&dir, "out.txt"));
    let mut hosts: Vec<String> = read(&dir, "hosts.txt").lines().map(str::to_string).collect();
    hosts.sort();
    assert_eq!(hosts.len(), 3, "one rank per allocated task: {hosts:?}");
    hosts.dedup();
    assert_eq!(hosts.len(), 3, "each node once: {hosts:?}");
    let rep: serde_json::Value = serde_json::from_str(&read(&dir, "rep.json")).unwrap();
    assert_eq!(rep["outcome"], "success");
    assert_eq!(rep["nodes"].as_array().unwrap().len(), 3);
    if hello.is_some() {
        assert_eq!(read(&dir, "rc2").trim(), "rc=0", "mpi_hello: {}", read(&dir, "hello.txt"));
        assert_eq!(read(&dir, "hello.txt").matches("hello from rank").count(), 3, "{}", read(&dir, "hello.txt"));
    }
}

#[test]
fn tasks_per_node_give_the_slots_and_more_ranks_is_an_error() {
    let Some(conf) = slurm_conf() else { return };
    let dir = shared_dir("slots");
    let bin = common::bin();
    let script = format!(
        "{bin} -l sh -c 'echo $RLAUNCH_LOCAL_RANK/$RLAUNCH_LOCAL_SIZE' > {d}/ranks.txt; echo rc=$? > {d}/rc1\n\
         {bin} -np 7 true 2> {d}/err.txt; echo rc=$? > {d}/rc2\n",
        d = dir.display()
    );
    sbatch_wait(&conf, &dir, &["-N", "3", "--ntasks-per-node=2"], &script);
    assert_eq!(read(&dir, "rc1").trim(), "rc=0", "{}", read(&dir, "out.txt"));
    let ranks = read(&dir, "ranks.txt");
    assert_eq!(ranks.lines().count(), 6, "{ranks}");
    assert!(ranks.lines().all(|l| l.ends_with("/2")), "{ranks}");
    assert_eq!(read(&dir, "rc2").trim(), "rc=2");
    let err = read(&dir, "err.txt");
    assert!(err.contains("requested 7 ranks but only 6 slots"), "{err}");
}

/// Inside an allocation each node's daemon binds its ranks within the CPUs Slurm lets it use: every
/// rank's `Cpus_allowed_list` on its node is what `--report-bindings` printed for it.
#[test]
fn ranks_are_bound_inside_an_allocation() {
    let Some(conf) = slurm_conf() else { return };
    let dir = shared_dir("bind");
    let bin = common::bin();
    let script = format!(
        "{bin} --bind-to core --report-bindings sh -c 'echo $RLAUNCH_RANK $(hostname) $(sed -n \"s/^Cpus_allowed_list:[[:space:]]*//p\" /proc/self/status)' > {d}/ranks.txt 2> {d}/report.txt; echo rc=$? > {d}/rc\n",
        d = dir.display()
    );
    sbatch_wait(&conf, &dir, &["-N", "2", "--ntasks-per-node=2"], &script);
    let report = read(&dir, "report.txt");
    if read(&dir, "rc").trim() == "rc=2" && report.contains("need 2 cores") {
        return eprintln!("SKIP: the nodes have fewer than 2 cores: {report}");
    }
    assert_eq!(read(&dir, "rc").trim(), "rc=0", "{}{report}", read(&dir, "out.txt"));
    let ranks = read(&dir, "ranks.txt");
    assert_eq!(ranks.lines().count(), 4, "{ranks}");
    for line in ranks.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let want = format!("rlaunch: rank {} on {}: bound to CPUs {} ", f[0], f[1], f[2]);
        assert!(report.lines().any(|l| l.starts_with(&want)), "rank line {line:?} differs from the report:\n{report}");
    }
}

#[test]
fn salloc_style_front_end_on_the_host() {
    let Some(conf) = slurm_conf() else { return };
    let out = slurm(&conf, "salloc")
        .args(["-N", "2", "--quiet", common::bin(), "-l", "hostname"])
        .output()
        .expect("salloc runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "salloc: {} {}", text, String::from_utf8_lossy(&out.stderr));
    assert_eq!(text.lines().count(), 2, "{text}");
}

/// Cancels a job when a test ends early, so a failed assertion leaves no job running.
struct JobGuard<'a> {
    conf: &'a str,
    id: String,
}

impl Drop for JobGuard<'_> {
    fn drop(&mut self) {
        let _ = slurm(self.conf, "scancel").arg(&self.id).status();
    }
}

#[test]
fn scancel_leaves_nothing_running() {
    let Some(conf) = slurm_conf() else { return };
    let dir = shared_dir("scancel");
    let mark = format!("rlaunch-scancel-{}", std::process::id());
    let bin = common::bin();
    let script = format!("#!/bin/sh\n{bin} sh -c 'touch {d}/up.$RLAUNCH_RANK; exec sleep 300'\n", d = dir.display());
    let path = dir.join("job.sh");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // sbatch exports the submitting environment: the marker reaches the front end, and from it
    // the daemons (srun exports too) and every rank, so /proc/*/environ finds all of them.
    let out = slurm(&conf, "sbatch")
        .env(common::MARK_VAR, &mark)
        .args(["--parsable", "-N", "3", "-o"])
        .arg(dir.join("out.txt"))
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id = String::from_utf8_lossy(&out.stdout).trim().split(';').next().unwrap().to_string();
    let guard = JobGuard { conf: &conf, id: id.clone() };
    let up = common::poll_until(Duration::from_secs(60), || (0..3).all(|r| dir.join(format!("up.{r}")).exists()));
    assert!(up, "ranks did not start: {}", read(&dir, "out.txt"));
    let ranks = || common::marked_processes(&mark).into_iter().filter(|(_, c)| c.starts_with("sleep 300")).count();
    assert!(common::poll_until(Duration::from_secs(10), || ranks() == 3), "three ranks, found {}", ranks());
    let daemons = common::marked_processes(&mark).into_iter().filter(|(_, c)| c.contains("__daemon")).count();
    assert!(daemons >= 3, "the daemons carry the marker too: {:?}", common::marked_processes(&mark));
    assert!(slurm(&conf, "scancel").arg(&id).status().unwrap().success());
    let clean = common::poll_until(Duration::from_secs(15), || common::marked_processes(&mark).is_empty());
    assert!(clean, "left after scancel: {:?}", common::marked_processes(&mark));
    drop(guard);
}

#[test]
fn hostfile_inside_an_allocation_must_be_a_subset() {
    let Some(conf) = slurm_conf() else { return };
    let dir = shared_dir("subset");
    let bin = common::bin();
    let script = format!("{bin} --host n1,zz9 true 2> {d}/err.txt; echo rc=$? > {d}/rc\n", d = dir.display());
    sbatch_wait(&conf, &dir, &["-N", "2", "-w", "n1,n2"], &script);
    assert_eq!(read(&dir, "rc").trim(), "rc=2");
    let err = read(&dir, "err.txt");
    assert!(err.contains("node zz9 is not part of Slurm job"), "{err}");
}

/// PBS: nodes and slots from PBS_NODEFILE (one line per slot), daemons over ssh.
#[test]
fn pbs_environment_takes_nodes_from_the_nodefile() {
    let view = Path::new("/run/rlaunch-cluster");
    if !view.join("id_ed25519").exists() {
        eprintln!("SKIP: the namespace cluster is not up");
        return;
    }
    let dir = shared_dir("pbs");
    let nodefile = dir.join("nodefile");
    std::fs::write(&nodefile, "n1\nn1\nn2\nn2\nn3\n").unwrap();
    let out = Command::new(common::bin())
        .env("PBS_JOBID", "42.pbs")
        .env("PBS_NODEFILE", &nodefile)
        .env("PBS_O_WORKDIR", &dir)
        .env_remove("SLURM_JOB_ID")
        .args(["--ssh-identity", "/run/rlaunch-cluster/id_ed25519", "--ssh-known-hosts", "/run/rlaunch-cluster/known_hosts"])
        .args(["-l", "hostname"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text} {}", String::from_utf8_lossy(&out.stderr));
    let mut got: Vec<&str> = text.lines().collect();
    got.sort();
    assert_eq!(got, ["[0] n1", "[1] n1", "[2] n2", "[3] n2", "[4] n3"]);
}
