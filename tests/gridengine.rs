//! rlaunch inside real Grid Engine jobs (issue 12): Son of Grid Engine 8.1.9 on the namespace
//! cluster, brought up by `scripts/sge-cluster up` (scripts/test does it). Inside a `qsub -pe` job
//! rlaunch takes the job's hosts and slots from `PE_HOSTFILE` and starts the daemons of the other
//! hosts through `qrsh -inherit`, so they are tasks of the job; its own host's daemon is forked.
//!
//! The real-cluster tests are skipped, with a line saying so, when no Grid Engine cluster is up.
//! The last two tests need no cluster: a fake `qrsh` and `blaunch` on PATH behave like the real
//! ones (run the command line through a shell, stdin passed on) on this machine.
//!
//! Everything a job writes goes under the target dir, which every node sees (their /tmp is
//! private). Each job's processes are found by a marker in their environment (the ranks) and by
//! the path of a hard link to rlaunch in the job's dir (the front end and its daemons, whose
//! default path is the front end's).

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A job may take this long from submission to its end.
const JOB_LIMIT: Duration = Duration::from_secs(120);

fn skip(test: &str, why: &str) {
    // Past the harness's capture: a skipped test must say so in a plain `cargo test` run.
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

/// The running Grid Engine cluster: its clients' environment (`sge.env`).
struct Sge {
    env: Vec<(String, String)>,
}

impl Sge {
    fn get(test: &str) -> Option<Sge> {
        if !nix::unistd::geteuid().is_root() {
            skip(test, "not root: the Grid Engine cluster's clients run inside its nodes' namespaces");
            return None;
        }
        let state = std::env::var("RLAUNCH_SGE_STATE").unwrap_or_else(|_| "/run/rlaunch-cluster/sge".into());
        let Ok(text) = std::fs::read_to_string(Path::new(&state).join("sge.env")) else {
            skip(test, &format!("no Grid Engine cluster is up in {state} (scripts/sge-cluster up on a namespace cluster; scripts/test does it)"));
            return None;
        };
        let env = text
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Some(Sge { env })
    }

    /// A Grid Engine client run on n1, a submit host.
    fn client(&self, program: &str) -> Command {
        let mut c = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cluster"));
        c.args(["exec", "n1"]).arg(Path::new("/usr/lib/gridengine").join(program));
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    /// Submits `script` to the parallel environment `pe` with `slots` slots and waits for the job
    /// to end. Returns the job id; a job still there after [`JOB_LIMIT`] is deleted and fails the test.
    fn run_job(&self, job: &JobDir, pe: &str, slots: u32, script: &str) -> String {
        let id = self.submit(job, pe, slots, script);
        let guard = Qdel { sge: self, id: id.clone() };
        let gone = common::poll_until(JOB_LIMIT, || !self.exists(&id));
        assert!(gone, "job {id} still there after {JOB_LIMIT:?}; its output: {}", job.read("out.txt"));
        std::mem::forget(guard);
        id
    }

    fn submit(&self, job: &JobDir, pe: &str, slots: u32, script: &str) -> String {
        let path = job.dir.join("job.sh");
        std::fs::write(&path, format!("#!/bin/sh\ncd {}\n{script}\n", job.dir.display())).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        let out = self
            .client("qsub")
            .args(["-terse", "-N", "rlaunch-test", "-pe", pe, &slots.to_string(), "-v"])
            .arg(format!("{}={}", MARK, job.mark))
            .arg("-o")
            .arg(job.dir.join("out.txt"))
            .arg("-e")
            .arg(job.dir.join("err.txt"))
            .arg(&path)
            .output()
            .expect("qsub runs");
        assert!(out.status.success(), "qsub failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn exists(&self, id: &str) -> bool {
        self.client("qstat").args(["-j", id]).output().map(|o| o.status.success()).unwrap_or(false)
    }

    /// `qacct -j ID`'s records as (host, exit status) pairs, once at least `records` are there
    /// (accounting is flushed every second).
    fn accounting(&self, id: &str, records: usize) -> Vec<(String, String)> {
        let mut got = Vec::new();
        common::poll_until(Duration::from_secs(15), || {
            let out = self.client("qacct").args(["-j", id]).output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            got = text
                .split("==============================================================")
                .filter_map(|rec| {
                    let field = |name: &str| rec.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()));
                    Some((field("hostname")?, field("exit_status")?))
                })
                .collect();
            got.len() >= records
        });
        got
    }
}

/// Deletes a job when a test ends before it did, so a failed assertion leaves nothing running.
struct Qdel<'a> {
    sge: &'a Sge,
    id: String,
}

impl Drop for Qdel<'_> {
    fn drop(&mut self) {
        let _ = self.sge.client("qdel").arg(&self.id).output();
    }
}

/// Forwarded to remote ranks (rlaunch forwards no `RLAUNCH_*` variable there).
const MARK: &str = "GRIDENGINE_TEST_MARK";

/// A job's directory under the shared target dir, with a hard link to rlaunch (`bin`) so that
/// the front end and every daemon show the directory in their command lines.
struct JobDir {
    dir: PathBuf,
    bin: PathBuf,
    mark: String,
}

impl JobDir {
    fn new(name: &str) -> JobDir {
        let mark = format!("rlaunch-ge-{name}-{}", std::process::id());
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(&mark);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let bin = dir.join("rlaunch");
        std::fs::hard_link(common::bin(), &bin).or_else(|_| std::fs::copy(common::bin(), &bin).map(|_| ())).unwrap();
        JobDir { dir, bin, mark }
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    /// Live processes of this job: ranks (by marker) and rlaunch front end or daemons (by path).
    fn processes(&self) -> Vec<(u32, String)> {
        let path = self.bin.to_string_lossy().into_owned();
        let marker = format!("{MARK}={}", self.mark);
        common::other_pids()
            .filter_map(|pid| {
                let cmdline = common::live_cmdline(pid)?;
                (common::has_env(pid, &marker) || cmdline.starts_with(&path)).then_some((pid, cmdline))
            })
            .collect()
    }
}

impl Drop for JobDir {
    fn drop(&mut self) {
        for (pid, _) in self.processes() {
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `HOST SLOTS` of a `PE_HOSTFILE` copy.
fn pe_hosts(text: &str) -> Vec<(String, u32)> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.to_string(), w.next()?.parse().ok()?))
        })
        .collect()
}

/// The shell words that print, for a rank, `HOST LOCAL_SIZE PARENT GRANDPARENT` of its daemon.
const RANK_REPORT: &str = r#"d=$(ps -o ppid= -p $$); p=$(ps -o ppid= -p $d); g=$(ps -o ppid= -p $p); echo "$(hostname) $RLAUNCH_LOCAL_SIZE $(ps -o comm= -p $p) $(ps -o comm= -p $g)""#;

/// Every rank prints a line; rank 2 exits 7, once ranks 0 and 1 have printed theirs (the first
/// failure ends the others, which must not be before they printed).
const FAIL_LAST: &str = r#"echo out $RLAUNCH_RANK; touch done.$RLAUNCH_RANK; [ $RLAUNCH_RANK = 2 ] || exit 0; i=0; while [ ! -e done.0 ] || [ ! -e done.1 ]; do i=$((i + 1)); [ $i -lt 600 ] || exit 9; sleep 0.1; done; exit 7"#;

#[test]
fn a_job_without_host_options_runs_on_its_hosts_with_its_slots_and_qrsh_started_daemons() {
    let Some(sge) = Sge::get("a_job_without_host_options_runs_on_its_hosts") else { return };
    let job = JobDir::new("hosts");
    let bin = job.bin.display();
    let script = format!(
        "cp \"$PE_HOSTFILE\" pe_hostfile; hostname > master\n\
         {bin} -l sh -c '{report}' > ranks.txt 2> err1.txt; echo $? > rc1\n\
         {bin} -np 3 sh -c '{fail}' > out2.txt 2> err2.txt; echo $? > rc2\n\
         {bin} --tree-spawn --fanout 1 --map-by node -np 3 -l hostname > tree.txt 2> err3.txt; echo $? > rc3",
        report = RANK_REPORT.replace('\'', "'\\''"),
        fail = FAIL_LAST.replace('\'', "'\\''"),
    );
    let id = sge.run_job(&job, "rlaunch", 6, &script);
    assert_eq!(job.read("rc1").trim(), "0", "{}{}", job.read("err1.txt"), job.read("err.txt"));
    let hosts = pe_hosts(&job.read("pe_hostfile"));
    let master = job.read("master").trim().to_string();
    assert!(hosts.len() >= 2 && hosts.iter().map(|h| h.1).sum::<u32>() == 6, "{hosts:?}");
    // One rank per slot of every host; its local size is the host's slots.
    let ranks = job.read("ranks.txt");
    assert_eq!(ranks.lines().count(), 6, "{ranks}");
    for (host, slots) in &hosts {
        let on: Vec<&str> = ranks.lines().filter(|l| l.split_whitespace().nth(1) == Some(host.as_str())).collect();
        assert_eq!(on.len() as u32, *slots, "{host}: {ranks}");
        for line in on {
            let w: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(w[2], slots.to_string(), "{line}");
            // The master host's daemon is the front end's child; every other one is a task that
            // Grid Engine started: qrsh_starter under the execd's sge_shepherd.
            if *host == master {
                assert_eq!(w[3], "rlaunch", "{line}");
            } else {
                assert_eq!((w[3], w[4]), ("qrsh_starter", "sge_shepherd"), "{line}");
            }
        }
    }
    // Output and the first failing rank's exit status come back.
    assert_eq!(job.read("rc2").trim(), "7", "{}", job.read("err2.txt"));
    let mut out2: Vec<String> = job.read("out2.txt").lines().map(String::from).collect();
    out2.sort();
    assert_eq!(out2, ["out 0", "out 1", "out 2"]);
    assert!(job.read("err2.txt").contains("rank 2"), "{}", job.read("err2.txt"));
    // Tree spawn: a daemon started by qrsh -inherit starts the next host's through it in turn.
    assert_eq!(job.read("rc3").trim(), "0", "{}", job.read("err3.txt"));
    let tree: Vec<String> = job.read("tree.txt").lines().map(String::from).collect();
    let want: Vec<String> = hosts.iter().take(3).enumerate().map(|(r, h)| format!("[{r}] {}", h.0)).collect();
    let mut got = tree.clone();
    got.sort();
    assert_eq!(got, want, "one rank on each of the first 3 hosts: {tree:?}");
    // Grid Engine accounted the daemons as tasks of the job on every other host (each run that
    // had a daemon there adds one).
    let others: Vec<&String> = hosts.iter().map(|h| &h.0).filter(|h| **h != master).collect();
    let records = sge.accounting(&id, others.len());
    for host in others {
        assert!(records.iter().any(|(h, status)| h == host && status == "0"), "no task record for {host} in qacct -j {id}: {records:?}");
    }
}

#[test]
fn job_is_first_task_leaves_the_master_host_no_task_and_its_daemon_is_forked() {
    let Some(sge) = Sge::get("job_is_first_task_leaves_the_master_host_no_task") else { return };
    let job = JobDir::new("first");
    let script = format!(
        "qrsh -inherit \"$(hostname)\" true 2> self_err; echo $? > self_rc\n\
         {bin} -l hostname > hosts.txt 2> err1.txt; echo $? > rc1",
        bin = job.bin.display()
    );
    sge.run_job(&job, "rlaunch-first", 3, &script);
    // What qrsh -inherit to the master host would meet: the refusal rlaunch avoids.
    assert_ne!(job.read("self_rc").trim(), "0", "qrsh -inherit to the master host was accepted: {}", job.read("self_err"));
    assert_eq!(job.read("rc1").trim(), "0", "{}{}", job.read("err1.txt"), job.read("err.txt"));
    let mut hosts: Vec<String> = job.read("hosts.txt").lines().map(|l| l.split_whitespace().nth(1).unwrap_or("").to_string()).collect();
    hosts.sort();
    hosts.dedup();
    assert_eq!(hosts.len(), 3, "one rank on each of 3 hosts: {}", job.read("hosts.txt"));
}

#[test]
fn a_pe_that_refuses_tasks_gives_one_line_per_host_that_says_what_to_do() {
    let Some(sge) = Sge::get("a_pe_that_refuses_tasks_gives_one_line_per_host") else { return };
    let job = JobDir::new("loose");
    let script = format!("hostname > master; {bin} hostname > out1.txt 2> err1.txt; echo $? > rc1", bin = job.bin.display());
    sge.run_job(&job, "rlaunch-loose", 3, &script);
    assert_eq!(job.read("rc1").trim(), "125", "{}", job.read("err1.txt"));
    let err = job.read("err1.txt");
    let master = job.read("master").trim().to_string();
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("rlaunch: cannot launch on node ")).collect();
    assert_eq!(lines.len(), 2, "one line per other host: {err}");
    for l in lines {
        assert!(!l.contains(&format!("node {master}:")), "the master host's daemon is forked: {l}");
        assert!(l.contains("didn't accept task") && l.contains("control_slaves TRUE") && l.contains("--launcher ssh"), "{l}");
    }
}

#[test]
fn qdel_leaves_nothing_running() {
    let Some(sge) = Sge::get("qdel_leaves_nothing_running") else { return };
    let job = JobDir::new("qdel");
    let script = format!("{bin} sh -c 'touch up.$RLAUNCH_RANK; exec sleep 300'", bin = job.bin.display());
    let id = sge.submit(&job, "rlaunch", 4, &script);
    let guard = Qdel { sge: &sge, id: id.clone() };
    let up = common::poll_until(JOB_LIMIT, || (0..4).all(|r| job.dir.join(format!("up.{r}")).exists()));
    assert!(up, "ranks did not start: {}{}", job.read("out.txt"), job.read("err.txt"));
    let ranks = || job.processes().iter().filter(|(_, c)| c == "sleep 300").count();
    assert!(common::poll_until(Duration::from_secs(10), || ranks() == 4), "{:?}", job.processes());
    let daemons = job.processes().iter().filter(|(_, c)| c.starts_with(&*job.bin.to_string_lossy()) && c.ends_with(" __daemon")).count();
    assert!(daemons >= 2, "a daemon per host: {:?}", job.processes());
    let out = sge.client("qdel").arg(&id).output().unwrap();
    assert!(out.status.success(), "qdel: {}", String::from_utf8_lossy(&out.stderr));
    let clean = common::poll_until(Duration::from_secs(30), || job.processes().is_empty());
    assert!(clean, "left after qdel: {:?}", job.processes());
    drop(guard);
}

/// A fake batch agent: records its arguments in `$AGENT_LOG`, then runs its last argument (the
/// command line) through a shell with stdin passed on, as qrsh -inherit and blaunch do on the host.
fn fake_agent(dir: &Path, name: &str) {
    let path = dir.join(name);
    std::fs::write(&path, "#!/bin/sh\necho \"$*\" >> \"$AGENT_LOG\"\neval \"cmd=\\${$#}\"\nexec sh -c \"$cmd\"\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// rlaunch in a fake Grid Engine or LSF job whose hosts are this machine and `localhost`.
fn fake_job(s: &common::Scratch, job_env: &[(&str, String)], args: &[&str]) -> common::Output {
    let bin = s.path("bin");
    std::fs::create_dir_all(&bin).unwrap();
    fake_agent(&bin, "qrsh");
    fake_agent(&bin, "blaunch");
    let mut cmd = s.cmd(args);
    for k in ["SLURM_JOB_ID", "PBS_JOBID", "PBS_NODEFILE", "JOB_ID", "PE_HOSTFILE", "LSB_JOBID", "LSB_DJOB_HOSTFILE", "LSB_MCPU_HOSTS"] {
        cmd.env_remove(k);
    }
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    cmd.env("PATH", path).env("AGENT_LOG", s.path("agent.log"));
    cmd.envs(job_env.iter().map(|(k, v)| (*k, v)));
    common::Job::start(cmd, None).wait()
}

#[test]
fn a_fake_grid_engine_job_starts_other_hosts_through_qrsh_inherit_and_forks_its_own() {
    let s = common::Scratch::new("ge-fake-qrsh");
    let here = common::hostname();
    std::fs::write(s.path("pe_hostfile"), format!("{here} 2 all.q@{here} UNDEFINED\nlocalhost 2 all.q@localhost UNDEFINED\n")).unwrap();
    let env = [("JOB_ID", "99".to_string()), ("PE_HOSTFILE", s.path("pe_hostfile").to_string_lossy().into_owned())];
    // Rank 3 exits 5 once the others have printed (the first failure ends the others).
    let script = "echo $RLAUNCH_NODE_RANK; touch $D/done.$RLAUNCH_RANK; [ $RLAUNCH_RANK = 3 ] || exit 0; i=0; \
                  while [ ! -e $D/done.0 ] || [ ! -e $D/done.1 ] || [ ! -e $D/done.2 ]; do \
                  i=$((i + 1)); [ $i -lt 600 ] || exit 9; sleep 0.1; done; exit 5";
    let out = fake_job(&s, &env, &["-l", "sh", "-c", script]);
    out.expect_code(5);
    let mut lines = out.stdout_lines();
    lines.sort();
    assert_eq!(lines, ["[0] 0", "[1] 0", "[2] 1", "[3] 1"], "{out}");
    // One agent call, for the other host; the bootstrap line went over its stdin, not its argv.
    assert_eq!(s.read("agent.log"), format!("-inherit localhost exec {} __daemon\n", common::bin()));
    s.assert_no_leftovers(Duration::from_secs(10));
}

#[test]
fn a_fake_lsf_job_starts_other_hosts_through_blaunch_and_forks_its_own() {
    let s = common::Scratch::new("ge-fake-blaunch");
    let here = common::hostname();
    let env = [("LSB_JOBID", "7".to_string()), ("LSB_MCPU_HOSTS", format!("localhost 1 {here} 2"))];
    let out = fake_job(&s, &env, &["-l", "sh", "-c", "echo $RLAUNCH_NODE_RANK $(cat)"]);
    out.expect_code(0);
    let mut lines = out.stdout_lines();
    lines.sort();
    assert_eq!(lines, ["[0] 0", "[1] 1", "[2] 1"], "{out}");
    assert_eq!(s.read("agent.log"), format!("localhost exec {} __daemon\n", common::bin()));
    // Hydra's and Intel MPI's spelling of the same launcher.
    let out = fake_job(&s, &env, &["-bootstrap", "lsf", "-np", "3", "true"]);
    out.expect_code(0);
    assert_eq!(s.read("agent.log").lines().count(), 2, "{}", s.read("agent.log"));
    s.assert_no_leftovers(Duration::from_secs(10));
}
