//! Drop-in: real mpirun/mpiexec lines run unchanged (issue 12). The corpus in tests/dropin/corpus.txt
//! holds launcher lines from public job scripts and docs, each with its source; every one goes
//! through `rlaunch --dry-run` and must give the map it records, or its one-line refusal. The other
//! tests run jobs with the compatibility spellings and check what the ranks get.

mod common;

use common::Scratch;
use std::path::Path;
use std::process::Command;

struct Entry {
    src: String,
    run: String,
    /// `Ok(text of the first --dry-run line)` or `Err(text of the refusal)`.
    expect: Result<String, String>,
}

fn corpus() -> Vec<Entry> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dropin");
    let text = std::fs::read_to_string(root.join("corpus.txt")).expect("tests/dropin/corpus.txt");
    let hosts = root.join("hosts").to_string_lossy().into_owned();
    let hosts256 = root.join("hosts256").to_string_lossy().into_owned();
    let mut out = Vec::new();
    let (mut src, mut run) = (None, None);
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let (key, value) = line.split_once(": ").unwrap_or_else(|| panic!("corpus line without a key: {line}"));
        match key {
            "src" => src = Some(value.to_string()),
            "run" => run = Some(value.replace("@HOSTS256@", &hosts256).replace("@HOSTS@", &hosts).replace("@DIR@", &root.to_string_lossy())),
            "map" | "refuse" => {
                let expect = if key == "map" { Ok(value.to_string()) } else { Err(value.to_string()) };
                let (src, run) = (src.take().expect("src before map"), run.take().expect("run before map"));
                out.push(Entry { src, run, expect });
            }
            _ => panic!("unknown corpus key {key:?}"),
        }
    }
    out
}

/// `rlaunch --dry-run` of one corpus line. The words after the launcher's name go through an
/// appfile (`--app`), which splits them as the shell would for these lines (blanks, quotes).
fn dry_run(line: &str, dir: &Path) -> std::process::Output {
    let (launcher, rest) = line.split_once(' ').unwrap_or((line, ""));
    assert!(["mpirun", "mpiexec", "mpiexec.hydra"].iter().any(|l| launcher.ends_with(l)), "not a launcher line: {line}");
    let file = dir.join("line");
    std::fs::write(&file, rest).expect("writing the line");
    let mut cmd = Command::new(common::bin());
    cmd.arg("--dry-run").arg("--app").arg(&file);
    for (k, _) in std::env::vars() {
        if ["SLURM_", "PBS_", "HYDRA_", "MPIEXEC_", "OMPI_"].iter().any(|p| k.starts_with(p)) {
            cmd.env_remove(k);
        }
    }
    cmd.env("OMP_NUM_THREADS", "1").env("OMP_PLACES", "cores").env("OMP_PROC_BIND", "close").env("LD_LIBRARY_PATH", "/usr/lib");
    cmd.output().expect("running rlaunch")
}

#[test]
fn corpus_lines_parse_to_their_recorded_plan() {
    let entries = corpus();
    let s = Scratch::new("dropin-corpus");
    assert!(entries.len() >= 80, "the corpus has {} lines", entries.len());
    let mut wrong = Vec::new();
    let mut accepted = 0;
    for e in &entries {
        let out = dry_run(&e.run, &s.dir);
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let first = stdout.lines().next().unwrap_or_default();
        let ok = match &e.expect {
            Ok(map) => out.status.code() == Some(0) && first.starts_with("rlaunch: ") && first.contains(map.as_str()),
            Err(refusal) => out.status.code() == Some(2) && stderr.lines().count() == 1 && stderr.contains(refusal.as_str()),
        };
        accepted += usize::from(out.status.code() == Some(0));
        if !ok {
            wrong.push(format!("{}\n  {}\n  expected {:?}; got {:?}: {first}{stderr}", e.src, e.run, e.expect, out.status.code()));
        }
    }
    assert!(wrong.is_empty(), "{} of {} corpus lines differ from the record:\n{}", wrong.len(), entries.len(), wrong.join("\n"));
    eprintln!("corpus: {accepted} of {} lines accepted", entries.len());
}

#[test]
fn genv_env_and_mca_reach_the_ranks_and_display_map_prints_the_map_first() {
    let s = Scratch::new("dropin-env");
    let out = s.run([
        "-genv", "GA", "1", "-genv", "GB=2", "-mca", "btl", "^openib", "--display-map", "-n", "1", "-env", "CTX", "a", "sh", "-c",
        "echo $GA $GB $OMPI_MCA_btl $CTX",
        ":", "-n", "1", "-env", "CTX=b", "sh", "-c", "sleep 0.2; echo $GA $GB $OMPI_MCA_btl $CTX",
    ]);
    out.expect_code(0);
    let lines = out.stdout_lines();
    assert!(lines[0].starts_with("rlaunch: 2 ranks on 1 node"), "{out}");
    assert!(lines.contains(&"1 2 ^openib a") && lines.contains(&"1 2 ^openib b"), "{out}");
}

#[test]
fn placement_options_are_carried_out_and_reported() {
    let s = Scratch::new("dropin-bind");
    let out = s.run(["-v", "--bind-to", "core", "--report-bindings", "-np", "1", "true"]);
    out.expect_code(0);
    assert!(!out.stderr.contains("not applied"), "{out}");
    assert_eq!(out.stderr.lines().filter(|l| l.starts_with("rlaunch: rank 0 on ") && l.contains(": bound to CPUs ")).count(), 1, "{out}");
    let out = s.run(["--bind-to", "core", "-np", "1", "true"]);
    out.expect_code(0);
    assert!(out.stderr.is_empty(), "binding without --report-bindings says nothing: {out}");
}

#[test]
fn mpiexec_timeout_kills_the_job_with_124() {
    let s = Scratch::new("dropin-timeout");
    let mut cmd = s.cmd(["-np", "1", "sleep", "30"]);
    cmd.env("MPIEXEC_TIMEOUT", "0.5");
    let out = common::Job::start(cmd, None).wait();
    out.expect_code(124);
}

#[test]
fn huge_timeouts_are_one_line_usage_errors() {
    let s = Scratch::new("dropin-huge");
    s.run(["--timeout", "1e20", "true"]).expect_usage_error("--timeout 1e20");
    s.run(["--timeout", "1e19", "true"]).expect_usage_error("--timeout 1e19");
    s.run(["--launch-timeout", "1e30", "true"]).expect_usage_error("--launch-timeout 1e30");
}

#[test]
fn app_and_configfile_files_are_mpmd_contexts() {
    let s = Scratch::new("dropin-app");
    std::fs::write(s.path("appfile"), "# Open MPI appfile\n-np 2 sh -c 'echo a $RLAUNCH_RANK'\n-np 1 sh -c 'sleep 0.2; echo b $RLAUNCH_RANK'\n").unwrap();
    for opt in ["--app", "-configfile"] {
        let out = s.run(["-x", "A=1", opt, "appfile"]);
        out.expect_code(0);
        let mut lines = out.stdout_lines();
        lines.sort();
        assert_eq!(lines, ["a 0", "a 1", "b 2"], "{opt}: {out}");
    }
    s.run(["--app", "appfile", "true"]).expect_usage_error("--app appfile: give it last, in place of the program");
}

#[test]
fn hydra_ppn_wraps_around_the_hosts_in_a_real_job() {
    let s = Scratch::new("dropin-ppn");
    // -launcher fork: every daemon runs here, whatever the host names.
    let out = s.run(["-launcher", "fork", "-hosts", "a,b", "-ppn", "2", "-n", "6", "-l", "sh", "-c", "echo $RLAUNCH_NODE_RANK $RLAUNCH_LOCAL_RANK"]);
    out.expect_code(0);
    let mut lines = out.stdout_lines();
    lines.sort();
    assert_eq!(lines, ["[0] 0 0", "[1] 0 1", "[2] 1 0", "[3] 1 1", "[4] 0 2", "[5] 0 3"], "{out}");
}

#[test]
fn started_as_mpirun_or_mpiexec_it_behaves_the_same() {
    let s = Scratch::new("dropin-names");
    for name in ["mpirun", "mpiexec"] {
        let link = s.path(name);
        std::os::unix::fs::symlink(common::bin(), &link).expect("symlink");
        let mut cmd = Command::new(&link);
        cmd.args(["-genv", "V", "x", "-np", "2", "sh", "-c", "echo $V $RLAUNCH_SIZE"]);
        cmd.env(common::MARK_VAR, &s.mark).current_dir(&s.dir).stdin(std::process::Stdio::null());
        let out = common::Job::start(cmd, None).wait();
        out.expect_code(0);
        assert_eq!(out.stdout_lines(), ["x 2", "x 2"], "{name}: {out}");
    }
}
