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
    /// The batch job the line ran in, as its environment (`env:` in the corpus).
    env: Vec<(String, String)>,
    /// `Ok(text of the first --dry-run line)` or `Err(text of the refusal)`.
    expect: Result<String, String>,
}

fn corpus() -> Vec<Entry> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dropin");
    let text = std::fs::read_to_string(root.join("corpus.txt")).expect("tests/dropin/corpus.txt");
    let hosts = root.join("hosts").to_string_lossy().into_owned();
    let hosts256 = root.join("hosts256").to_string_lossy().into_owned();
    let mut out = Vec::new();
    let subst = |v: &str| v.replace("@HOSTS256@", &hosts256).replace("@HOSTS@", &hosts).replace("@DIR@", &root.to_string_lossy());
    let (mut src, mut run, mut env) = (None, None, Vec::new());
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let (key, value) = line.split_once(": ").unwrap_or_else(|| panic!("corpus line without a key: {line}"));
        match key {
            "src" => src = Some(value.to_string()),
            "run" => run = Some(subst(value)),
            "env" => {
                env = value
                    .split_whitespace()
                    .map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), subst(v))).unwrap_or_else(|| panic!("env: without K=V: {kv}")))
                    .collect()
            }
            "map" | "refuse" => {
                let expect = if key == "map" { Ok(value.to_string()) } else { Err(value.to_string()) };
                let (src, run) = (src.take().expect("src before map"), run.take().expect("run before map"));
                out.push(Entry { src, run, env: std::mem::take(&mut env), expect });
            }
            _ => panic!("unknown corpus key {key:?}"),
        }
    }
    out
}

/// `rlaunch --dry-run` of one corpus line. The words after the launcher's name go through an
/// appfile (`--app`), which splits them as the shell would for these lines (blanks, quotes).
fn dry_run(line: &str, env: &[(String, String)], dir: &Path) -> std::process::Output {
    let (launcher, rest) = line.split_once(' ').unwrap_or((line, ""));
    assert!(["mpirun", "mpiexec", "mpiexec.hydra"].iter().any(|l| launcher.ends_with(l)), "not a launcher line: {line}");
    let file = dir.join("line");
    std::fs::write(&file, rest).expect("writing the line");
    let mut cmd = Command::new(common::bin());
    cmd.arg("--dry-run").arg("--app").arg(&file);
    for (k, _) in std::env::vars() {
        // A batch job's own variables would change where a line's job runs.
        if ["SLURM_", "PBS_", "LSB_", "SGE_", "HYDRA_", "MPIEXEC_", "OMPI_"].iter().any(|p| k.starts_with(p)) || k == "JOB_ID" || k == "PE_HOSTFILE" {
            cmd.env_remove(k);
        }
    }
    cmd.env("OMP_NUM_THREADS", "1").env("OMP_PLACES", "cores").env("OMP_PROC_BIND", "close").env("LD_LIBRARY_PATH", "/usr/lib");
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
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
        let out = dry_run(&e.run, &e.env, &s.dir);
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
    // Issue 12's bar: at least 98% of real lines run unchanged.
    assert!(accepted * 100 >= entries.len() * 98, "only {accepted} of {} corpus lines accepted", entries.len());
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

#[test]
fn x_of_an_unset_variable_warns_and_runs_as_open_mpi_does() {
    let s = Scratch::new("dropin-x-unset");
    let mut cmd = s.cmd(["-np", "2", "-x", "RLAUNCH_TEST_UNSET", "-x", "RLAUNCH_TEST_SET", "sh", "-c", "echo ${RLAUNCH_TEST_UNSET-none} $RLAUNCH_TEST_SET"]);
    cmd.env_remove("RLAUNCH_TEST_UNSET").env("RLAUNCH_TEST_SET", "y");
    let out = common::Job::start(cmd, None).wait();
    out.expect_code(0);
    assert_eq!(out.stdout_lines(), ["none y", "none y"], "{out}");
    assert_eq!(
        out.stderr.trim_end(),
        "rlaunch: warning: -x RLAUNCH_TEST_UNSET: RLAUNCH_TEST_UNSET is not set in rlaunch's environment; the ranks do not get it",
        "{out}"
    );
}

/// A PMI-1 client in a few lines of Python: init, the universe size, finalize.
const PMI_UNIVERSE: &str = r#"
import os
f = os.fdopen(int(os.environ["PMI_FD"]), "r+b", buffering=0)
def ask(cmd):
    f.write(cmd.encode() + b"\n")
    line = b""
    while not line.endswith(b"\n"):
        line += f.read(1)
    return dict(w.split("=", 1) for w in line.decode().split())
ask("cmd=init pmi_version=1 pmi_subversion=1")
print(ask("cmd=get_universe_size")["size"], flush=True)
ask("cmd=finalize")
"#;

#[test]
fn usize_is_the_universe_size_the_ranks_are_told() {
    let s = Scratch::new("dropin-usize");
    let run = |extra: &[&str]| {
        let mut args = vec!["--mpi", "pmi"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["-np", "2", "python3", "-c", PMI_UNIVERSE]);
        let out = s.run(args);
        out.expect_code(0);
        out.stdout_lines().into_iter().map(str::to_string).collect::<Vec<_>>()
    };
    assert_eq!(run(&[]), ["2", "2"], "without -usize the universe is the job");
    assert_eq!(run(&["-usize", "16"]), ["16", "16"]);
    assert_eq!(run(&["-launcher", "fork", "-hosts", "a:3,b:5", "-usize", "SYSTEM"]), ["8", "8"], "SYSTEM is the slots of the job's nodes");
    s.run(["-usize", "INFINITE", "true"]).expect_usage_error("--usize INFINITE: an unlimited universe is not supported");
}

#[test]
fn tune_file_options_reach_the_ranks_and_the_command_line_wins() {
    let s = Scratch::new("dropin-tune");
    std::fs::write(s.path("site.conf"), "# site\n-x T1=file -x T2=file\n-mca btl tcp,self --mca pml ob1\n").unwrap();
    let out = s.run(["--tune", "site.conf", "-x", "T2=cmd", "--mca", "pml", "ucx", "-np", "1", "sh", "-c", "echo $T1 $T2 $OMPI_MCA_btl $OMPI_MCA_pml"]);
    out.expect_code(0);
    assert_eq!(out.stdout_lines(), ["file cmd tcp,self ucx"], "{out}");
    // Open MPI's aggregate MCA parameter file: name = value lines, the command line wins too.
    std::fs::write(s.path("am.conf"), "# site\nbtl = self,tcp\npml=ob1\n").unwrap();
    let out = s.run(["-am", "am.conf", "--mca", "pml", "ucx", "-np", "1", "sh", "-c", "echo $OMPI_MCA_btl $OMPI_MCA_pml"]);
    out.expect_code(0);
    assert_eq!(out.stdout_lines(), ["self,tcp ucx"], "{out}");
    std::fs::write(s.path("bad.conf"), "-np 4\n").unwrap();
    s.run(["--tune", "bad.conf", "true"]).expect_usage_error("--tune bad.conf: line 1: '-np': only -x VAR[=VALUE] and --mca KEY VALUE may appear in a tune file");
}

#[test]
fn per_context_hosts_and_map_by_seq_place_ranks_as_open_mpi_does() {
    let s = Scratch::new("dropin-ctx-hosts");
    // --launcher local: every daemon runs here, whatever the host names.
    let out = s.run([
        "--launcher", "local", "-l", "-np", "1", "-H", "a", "sh", "-c", "echo m $RLAUNCH_NODE_RANK", ":", "-np", "2", "-H", "b:2", "sh", "-c",
        "echo w $RLAUNCH_NODE_RANK",
    ]);
    out.expect_code(0);
    let mut lines = out.stdout_lines();
    lines.sort();
    assert_eq!(lines, ["[0] m 0", "[1] w 1", "[2] w 1"], "{out}");
    s.run(["--launcher", "local", "-np", "1", "-H", "a", "true", ":", "-np", "2", "-H", "b", "true"])
        .expect_usage_error("program 1 asks for 2 ranks but its hosts have 1 free slots (b: 1)");

    std::fs::write(s.path("seq-hosts"), "a\nb slots=4\n# a comment\na\n").unwrap();
    let out = s.run(["--launcher", "local", "--hostfile", "seq-hosts", "--map-by", "seq", "-l", "sh", "-c", "echo $RLAUNCH_NODE_RANK $RLAUNCH_LOCAL_RANK"]);
    out.expect_code(0);
    let mut lines = out.stdout_lines();
    lines.sort();
    assert_eq!(lines, ["[0] 0 0", "[1] 1 0", "[2] 0 1"], "one rank per line, in order: {out}");
    s.run(["--launcher", "local", "--hostfile", "seq-hosts", "--map-by", "seq", "-np", "4", "true"])
        .expect_usage_error("--map-by seq: program 0 asks for 4 ranks but its host list has 3 entries");
}

/// The local ports `pid` listens on, from `ss` (iproute2).
fn listening_ports(pid: u32) -> Vec<u16> {
    let out = Command::new("ss").args(["-Hltnp"]).output().expect("running ss (iproute2)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!("pid={pid},")))
        .filter_map(|l| l.split_whitespace().nth(3)?.rsplit(':').next()?.parse().ok())
        .collect()
}

#[test]
fn mpiexec_port_range_holds_the_front_end_and_daemon_listeners() {
    let s = Scratch::new("dropin-ports");
    let low = 20000 + (std::process::id() % 20000) as u16;
    let range = format!("{low}:{}", low + 40);
    let inside = |p: &u16| (low..=low + 40).contains(p);
    // Two nodes in a chain (fan-out 1): node 0's daemon, rank 0's parent, listens for node 1's.
    let mut cmd = s.cmd([
        "--launcher", "local", "-H", "a,b", "--fanout", "1", "-np", "2", "sh", "-c",
        "if [ $RLAUNCH_RANK = 0 ]; then ss -Hltnp | grep \"pid=$PPID,\" | awk '{print $4}'; fi; sleep 1",
    ]);
    cmd.env("MPIEXEC_PORT_RANGE", &range);
    let mut job = common::Job::start(cmd, None);
    let mut front = Vec::new();
    common::poll_until(std::time::Duration::from_secs(10), || {
        front = listening_ports(job.pid() as u32);
        !front.is_empty() || !job.running()
    });
    let out = job.wait();
    out.expect_code(0);
    assert!(!front.is_empty() && front.iter().all(inside), "the front end listens on {front:?}; range {range}");
    let daemon: Vec<u16> = out.stdout_lines().iter().filter_map(|l| l.rsplit(':').next()?.parse().ok()).collect();
    assert!(!daemon.is_empty() && daemon.iter().all(inside), "node 0's daemon listens on {daemon:?}; range {range}: {out}");

    let mut cmd = s.cmd(["-np", "1", "true"]);
    cmd.env("MPIEXEC_PORT_RANGE", "9:8");
    common::Job::start(cmd, None).wait().expect_usage_error("MPIEXEC_PORT_RANGE=9:8: '9:8': expected LOW:HIGH");
}

#[test]
fn get_stack_traces_prints_each_running_ranks_stack_at_the_timeout() {
    let s = Scratch::new("dropin-stacks");
    let out = s.run(["--timeout", "1", "--get-stack-traces", "-np", "2", "sleep", "30"]);
    out.expect_code(124);
    for r in 0..2 {
        let head = format!("rlaunch: stack of rank {r} (pid ");
        let at = out.stderr.find(&head).unwrap_or_else(|| panic!("no stack of rank {r}: {out}"));
        // gdb (scripts/install-deps installs it) names the frame the rank sleeps in.
        let block: String = out.stderr[at..].lines().skip(1).take_while(|l| l.starts_with("    ")).collect();
        assert!(block.contains("sleep"), "rank {r}'s stack: {out}");
    }
    // Without a tracer on the node, each rank's entry says so.
    let bin = s.path("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink("/bin/sleep", bin.join("sleep")).unwrap();
    let mut cmd = s.cmd(["--timeout", "1", "--get-stack-traces", "-np", "1", "sleep", "30"]);
    cmd.env("PATH", &bin);
    let out = common::Job::start(cmd, None).wait();
    out.expect_code(124);
    assert!(out.stderr.contains("no stack: neither eu-stack (elfutils) nor gdb is installed on this node"), "{out}");
    s.run(["--get-stack-traces", "true"]).expect_usage_error("--get-stack-traces: the stacks are taken when --timeout");
}

#[test]
fn open_mpi_5_lists_report_pid_pmixmca_path_and_nolocal_mean_what_they_say() {
    let s = Scratch::new("dropin-ompi5");
    // --output tag,merge-stderr: tagged lines, stderr on stdout; --display map: the map first.
    let out = s.run(["--output", "tag,merge-stderr", "--display", "map", "-np", "1", "sh", "-c", "echo out; echo err >&2"]);
    out.expect_code(0);
    let lines = out.stdout_lines();
    assert!(lines[0].starts_with("rlaunch: 1 rank on 1 node"), "{out}");
    let mut rest = lines[1..].iter().filter(|l| l.starts_with('[')).copied().collect::<Vec<_>>();
    rest.sort();
    assert_eq!(rest, ["[0] err", "[0] out"], "{out}");
    s.run(["--output", "xml", "true"]).expect_usage_error("--output xml: expected tag, timestamp, merge-stderr, dir=DIR, file=DIR or nocopy");
    // --report-pid FILE holds rlaunch's own pid, the ranks' parent's parent.
    let out = s.run(["--report-pid", "pid", "--pmixmca", "ptl_base_if_include", "lo", "-path", "/opt/x/bin", "-np", "1", "sh", "-c", "echo $PMIX_MCA_ptl_base_if_include ${PATH%%:*}"]);
    out.expect_code(0);
    assert_eq!(out.stdout_lines(), ["lo /opt/x/bin"], "{out}");
    let pid: u32 = s.read("pid").trim().parse().expect("a pid in the file");
    assert!(pid > 1);
    // --nolocal: the ranks go only to the other hosts.
    let host = common::hostname();
    let out = s.run(["--dry-run", "--nolocal", "-H", &format!("{host}:4,b:2"), "true"]);
    out.expect_code(0);
    assert!(out.stdout_lines()[0].starts_with("rlaunch: 2 ranks on 1 node"), "{out}");
    assert!(!out.stdout.contains(&format!(" {host} ")), "{out}");
    s.run(["--nolocal", "true"]).expect_usage_error("--nolocal: every node of the job is this machine");
    // What rlaunch will not do is one line naming the option and why.
    s.run(["--preload-binary", "true"]).expect_usage_error("--preload-binary: rlaunch does not copy programs to the nodes");
    s.run(["-disable-auto-cleanup", "true"]).expect_usage_error("-disable-auto-cleanup: rlaunch ends the whole job at the first failure");
    s.run(["-gdb", "true"]).expect_usage_error("-gdb: rlaunch does not start debuggers itself");
}

#[test]
fn prepend_pattern_starts_each_line_with_the_ranks_own_prefix() {
    let s = Scratch::new("dropin-prepend");
    let out = s.run(["-prepend-pattern", "%r@%h%%: ", "-np", "2", "sh", "-c", "echo a; echo b"]);
    out.expect_code(0);
    let host = common::hostname();
    let mut lines = out.stdout_lines();
    lines.sort();
    assert_eq!(lines, [format!("0@{host}%: a"), format!("0@{host}%: b"), format!("1@{host}%: a"), format!("1@{host}%: b")], "{out}");
}

#[test]
fn rankfile_puts_each_rank_on_its_host_and_cpus() {
    let s = Scratch::new("dropin-rankfile");
    let host = common::hostname();
    let cpus = fabrics::topology::own_affinity().expect("this process's CPUs");
    let all: Vec<u32> = cpus.iter().collect();
    let (a, b) = (all[0], *all.last().unwrap());
    // Reversed on purpose: rank 0 on the last CPU, rank 1 on the first.
    std::fs::write(s.path("rf"), format!("rank 1={host} slot={a}\nrank 0=localhost slot={b}\n")).unwrap();
    let out = s.run(["--rankfile", "rf", "--report-bindings", "sh", "-c", "grep Cpus_allowed_list /proc/self/status | sed \"s/^/$RLAUNCH_RANK /\""]);
    out.expect_code(0);
    let mut lines = out.stdout_lines();
    lines.sort();
    assert_eq!(lines, [format!("0 Cpus_allowed_list:\t{b}"), format!("1 Cpus_allowed_list:\t{a}")], "{out}");
    assert!(out.stderr.contains("rank 0 on ") && out.stderr.contains(&format!("bound to CPUs {b} ")), "{out}");
    std::fs::write(s.path("gap"), format!("rank 1={host} slot={a}\n")).unwrap();
    s.run(["--rankfile", "gap", "true"]).expect_usage_error("--rankfile gap: rank 0 has no line");
    s.run(["--rankfile", "rf", "--bind-to", "core", "true"]).expect_usage_error("--rankfile gives each rank its CPUs");
    s.run(["--rankfile", "rf", "-np", "3", "true"]).expect_usage_error("program 0 asks for 3 ranks but its host list has 2 entries");
}

#[test]
fn open_mpi_binding_modifiers_and_older_spellings_mean_what_they_say() {
    let s = Scratch::new("dropin-bind-mods");
    let cores = fabrics::topology::Topology::discover_system().expect("this machine's topology").objects(fabrics::topology::ObjKind::Core).len();
    let np = (cores + 1).to_string();
    // More ranks than cores: refused with --bind-to core, shared with :overload-allowed, unbound
    // with :if-supported; :REPORT reports.
    s.run(["--bind-to", "core", "-np", &np, "true"]).expect_usage_error("--bind-to core need");
    let out = s.run(["--bind-to", "core:overload-allowed:REPORT", "-np", &np, "true"]);
    out.expect_code(0);
    assert_eq!(out.stderr.matches("bound to CPUs").count(), cores + 1, "{out}");
    let out = s.run(["--bind-to", "core:if-supported", "--report-bindings", "-np", &np, "true"]);
    out.expect_code(0);
    assert_eq!(out.stderr.matches("not bound").count(), cores + 1, "{out}");
    // -npersocket N is --map-by ppr:N:package.
    let out = s.run(["--dry-run", "-npersocket", "1", "-np", "1", "true"]);
    out.expect_code(0);
    s.run(["-npersocket"]).expect_usage_error("-npersocket needs a number");
}

#[test]
fn cray_cpu_bind_lists_and_depth_bind_the_ranks() {
    let s = Scratch::new("dropin-cray");
    let cpus: Vec<u32> = fabrics::topology::own_affinity().expect("this process's CPUs").iter().collect();
    let (a, b) = (cpus[0], *cpus.last().unwrap());
    let show = "grep Cpus_allowed_list /proc/self/status | sed \"s/^/$RLAUNCH_RANK /\"";
    // list: local rank i on the i-th list: reversed here on purpose.
    let out = s.run(["-n", "2", "--cpu-bind", &format!("list:{b}:{a}"), "sh", "-c", show]);
    out.expect_code(0);
    let mut lines = out.stdout_lines();
    lines.sort();
    assert_eq!(lines, [format!("0 Cpus_allowed_list:\t{b}"), format!("1 Cpus_allowed_list:\t{a}")], "{out}");
    // depth: each rank on its own --depth CPUs (1 here: one core each).
    let out = s.run(["-n", "1", "--cpu-bind", "depth", "-d", "1", "--report-bindings", "true"]);
    out.expect_code(0);
    assert!(out.stderr.contains("bound to CPUs"), "{out}");
    s.run(["--cpu-bind", "list:0", "--bind-to", "core", "-d", "0", "true"]).expect_usage_error("--depth");
}
