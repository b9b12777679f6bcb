//! Issue 4: unmodified MPICH programs, and raw PMI-1 / PMI-2 clients, under rlaunch's PMI server.
//!
//! The C programs in tests/programs are compiled at test time (MPI ones with `mpicc.mpich`, the
//! raw PMI clients with `cc`) into the cargo target dir, which the namespace cluster's nodes see
//! too. Without a compiler the affected tests say so and pass; multi-node tests need the cluster
//! (`RLAUNCH_CLUSTER_STATE`, from `scripts/cluster up 8`).

mod common;

use common::mpi::{self, expect_clean_success, expect_one_rank_line, parse_rank_line, rlaunch_lines, serial};
use common::Scratch;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

const MPI_PROGRAMS: &[&str] =
    &["mpi_hello", "mpi_allreduce", "mpi_ring", "mpi_barrier", "mpi_abort", "mpi_crash", "mpi_appnum", "mpi_no_finalize", "mpi_binding", "mpi_env"];
const PMI_PROGRAMS: &[&str] = &["pmi_modex", "pmi2_client"];
/// Processes of a failed job must be gone this soon after rlaunch exits.
const CLEANUP: Duration = Duration::from_secs(5);

struct Built {
    dir: PathBuf,
    /// Why the MPI programs are missing, if they are.
    mpi_missing: Option<String>,
    pmi_missing: Option<String>,
}

fn built() -> &'static Built {
    static B: OnceLock<Built> = OnceLock::new();
    B.get_or_init(|| {
        let (dir, mpi_missing) = mpi::compile_all("mpicc.mpich", "mpich-programs", MPI_PROGRAMS, "install mpich and libmpich-dev");
        if mpi_missing.is_none() {
            // The second executable of the MPMD test: same program, another file.
            let _ = std::fs::copy(dir.join("mpi_appnum"), dir.join("mpi_appnum_b"));
        }
        let pmi_missing = PMI_PROGRAMS.iter().find_map(|p| mpi::compile("cc", &dir, p, "install gcc").err());
        Built { dir, mpi_missing, pmi_missing }
    })
}

/// The path of an MPI test program, or None after printing why the test is skipped.
fn mpi(name: &str) -> Option<String> {
    let b = built();
    if let Some(why) = &b.mpi_missing {
        eprintln!("SKIP: MPICH programs unavailable: {why}");
        return None;
    }
    Some(b.dir.join(name).to_string_lossy().into_owned())
}

fn pmi_prog(name: &str) -> Option<String> {
    let b = built();
    if let Some(why) = &b.pmi_missing {
        eprintln!("SKIP: raw PMI clients unavailable: {why}");
        return None;
    }
    Some(b.dir.join(name).to_string_lossy().into_owned())
}

fn np(n: u32) -> Vec<String> {
    vec!["-np".into(), n.to_string()]
}

fn with(mut a: Vec<String>, more: &[&str]) -> Vec<String> {
    a.extend(more.iter().map(|s| s.to_string()));
    a
}

const SIZES: [u32; 3] = [1, 4, 16];

// ---------------------------------------------------------------------------------------------
// One node

/// MPICH ranks are bound before exec (Hydra's binding is not needed): after MPI_Init each one's own
/// CPU list is what `--report-bindings` said, bound to a core or not at all.
#[test]
fn mpich_ranks_run_bound() {
    let _serial = serial();
    let Some(p) = mpi("mpi_binding") else { return };
    for bind in ["core", "none"] {
        let s = Scratch::new("mpich-binding");
        let o = s.run(with(np(2), &["--bind-to", bind, "--report-bindings", &p]));
        if bind == "core" && o.code == Some(2) {
            return eprintln!("SKIP: fewer than 2 cores here:\n{o}");
        }
        mpi::expect_reported_bindings(&o, 2);
    }
}

#[test]
fn hello_every_rank_once_with_the_right_identity() {
    let _serial = serial();
    let Some(p) = mpi("mpi_hello") else { return };
    let host = common::hostname();
    for n in SIZES {
        let s = Scratch::new("hello");
        let o = s.run(with(np(n), &[&p]));
        mpi::expect_hellos(&o, n, &host);
    }
}

/// Issue 15: the launch timeline has each rank's PMI init and the node's fences, after its spawn.
#[test]
fn report_timeline_has_pmi_init_and_fences() {
    let _serial = serial();
    let Some(p) = mpi("mpi_allreduce") else { return };
    let s = Scratch::new("timeline");
    let o = s.run(with(np(4), &["--report", "report.json", &p]));
    expect_clean_success(&o);
    let rep: serde_json::Value = serde_json::from_str(&s.read("report.json")).unwrap();
    let t = &rep["nodes"][0]["timeline"];
    let at = |k: &str| t[k].as_f64().unwrap_or_else(|| panic!("{k} missing: {t}"));
    assert!(at("first_spawn_ms") <= at("first_pmi_init_ms") && at("first_pmi_init_ms") <= at("last_pmi_init_ms"), "{t}");
    assert!(at("last_pmi_init_ms") <= at("first_fence_ms") && at("first_fence_ms") <= at("last_fence_ms"), "{t}");
    assert!(at("last_fence_ms") <= at("ranks_exited_ms"), "{t}");
    for r in t["ranks"].as_array().unwrap() {
        assert!(r["spawn_ms"].as_f64().unwrap() <= r["pmi_init_ms"].as_f64().unwrap(), "{t}");
    }
}

#[test]
fn allreduce_sum_is_verified() {
    let _serial = serial();
    let Some(p) = mpi("mpi_allreduce") else { return };
    for n in SIZES {
        let s = Scratch::new("allreduce");
        let o = s.run(with(np(n), &[&p]));
        expect_clean_success(&o);
        let want = format!("allreduce ok: sum={} over {n} ranks", n * (n + 1) / 2);
        assert!(o.stdout.contains(&want), "n={n}: want {want:?}:\n{o}");
    }
}

#[test]
fn ring_token_goes_around() {
    let _serial = serial();
    let Some(p) = mpi("mpi_ring") else { return };
    for n in SIZES {
        let s = Scratch::new("ring");
        let o = s.run(with(np(n), &[&p]));
        expect_clean_success(&o);
        let want = format!("ring ok: token {} went around {n} ranks", n * (n - 1) / 2);
        assert!(o.stdout.contains(&want), "n={n}: want {want:?}:\n{o}");
    }
}

#[test]
fn barrier_in_a_loop() {
    let _serial = serial();
    let Some(p) = mpi("mpi_barrier") else { return };
    for n in SIZES {
        let s = Scratch::new("barrier");
        let o = s.run(with(np(n), &[&p, "20"]));
        expect_clean_success(&o);
        assert!(o.stdout.contains(&format!("barrier ok: 20 iterations on {n} ranks")), "n={n}:\n{o}");
    }
}

#[test]
fn mpi_abort_ends_the_job_with_its_code_and_names_the_rank() {
    let _serial = serial();
    let Some(p) = mpi("mpi_abort") else { return };
    for n in SIZES {
        let s = Scratch::new("abort");
        let o = s.run(with(np(n), &[&p, "1"]));
        o.expect_code(7);
        if n == 1 {
            // MPICH alone in its world exits with the code without telling PMI (checked with
            // strace): the exit status is all there is to report.
            expect_one_rank_line(&o, 0, "exited with status 7");
        } else {
            expect_one_rank_line(&o, 1, "called abort with code 7");
        }
        s.assert_no_leftovers(CLEANUP);
    }
}

#[test]
fn crash_is_one_line_and_exit_139() {
    let _serial = serial();
    let Some(p) = mpi("mpi_crash") else { return };
    for n in SIZES {
        let s = Scratch::new("crash");
        let o = s.run(with(np(n), &[&p, "1"]));
        o.expect_code(139);
        expect_one_rank_line(&o, 1.min(n - 1), "killed by signal 11 (SIGSEGV)");
        s.assert_no_leftovers(CLEANUP);
    }
}

#[test]
fn mpmd_two_executables_share_one_world_with_their_appnums() {
    let _serial = serial();
    let (Some(a), Some(b)) = (mpi("mpi_appnum"), mpi("mpi_appnum_b")) else { return };
    for n in [2u32, 4, 16] {
        let s = Scratch::new("mpmd");
        let (na, nb) = (n / 2, n - n / 2);
        let args: Vec<String> = with(np(na), &[&a, "0", ":"]).into_iter().chain(with(np(nb), &[&b, "1"])).collect();
        let o = s.run(args);
        expect_clean_success(&o);
        let want = format!("appnum ok: {n} ranks, {na} of app 0, {nb} of app 1");
        assert!(o.stdout.contains(&want), "want {want:?}:\n{o}");
    }
}

#[test]
fn exit_zero_without_finalize_after_init_is_a_failure() {
    let _serial = serial();
    let Some(p) = mpi("mpi_no_finalize") else { return };
    for n in [1u32, 4] {
        let s = Scratch::new("nofin");
        let o = s.run(with(np(n), &[&p]));
        o.expect_code(1);
        expect_one_rank_line(&o, n - 1, "exited with status 0 after MPI_Init (PMI init) without MPI_Finalize");
        s.assert_no_leftovers(CLEANUP);
    }
}

#[test]
fn pmi_port_mode_serves_mpich() {
    let _serial = serial();
    let Some(p) = mpi("mpi_allreduce") else { return };
    let s = Scratch::new("port");
    let o = s.run(with(np(4), &["--pmi-port", &p]));
    expect_clean_success(&o);
    assert!(o.stdout.contains("allreduce ok: sum=10 over 4 ranks"), "{o}");
}

#[test]
fn pmi_modex_raw_pmi1_client() {
    let _serial = serial();
    let Some(p) = pmi_prog("pmi_modex") else { return };
    for n in SIZES {
        for lazy in [false, true] {
            let s = Scratch::new("modex");
            let mut a = np(n);
            if lazy {
                a.push("--pmi-lazy".into());
            }
            let o = s.run(with(a, &[&p]));
            expect_clean_success(&o);
            assert!(o.stdout.contains(&format!("pmi_modex ok: {n} ranks")), "n={n} lazy={lazy}:\n{o}");
        }
    }
}

#[test]
fn pmi2_client_raw_pmi2() {
    let _serial = serial();
    let Some(p) = pmi_prog("pmi2_client") else { return };
    for n in SIZES {
        let s = Scratch::new("pmi2");
        let o = s.run(with(np(n), &[&p]));
        expect_clean_success(&o);
        let want = format!("pmi2_client ok: {n} ranks exchanged keys, process mapping (vector,(0,1,{n}))");
        assert!(o.stdout.contains(&want), "want {want:?}:\n{o}");
    }
}

#[test]
fn garbage_on_the_pmi_socket_is_a_protocol_error_naming_the_rank() {
    let _serial = serial();
    let s = Scratch::new("garbage");
    // Rank 2 writes something that is not PMI to its PMI socket, then waits to be killed.
    let code = format!(
        "if [ \"$PMI_RANK\" = 2 ]; then echo 'GET / HTTP/1.0' >&\"$PMI_FD\"; fi; {}",
        common::IDLE
    );
    // bash: dash cannot redirect to a descriptor above 9.
    let o = s.run(with(np(4), &["bash", "-c", &code]));
    o.expect_code(1);
    expect_one_rank_line(&o, 2, "neither a PMI-1 line nor a PMI-2 message");
    s.assert_no_leftovers(CLEANUP);
}

#[test]
fn raw_pmi1_abort_message_reaches_the_report_line() {
    let _serial = serial();
    let s = Scratch::new("abortmsg");
    let code = format!(
        "if [ \"$PMI_RANK\" = 0 ]; then printf 'cmd=init pmi_version=1 pmi_subversion=1\\ncmd=abort exitcode=9 message=out of cheese\\n' >&\"$PMI_FD\"; fi; {}",
        common::IDLE
    );
    let o = s.run(with(np(3), &["bash", "-c", &code]));
    o.expect_code(9);
    expect_one_rank_line(&o, 0, "called abort with code 9: out of cheese");
    s.assert_no_leftovers(CLEANUP);
}

#[test]
fn unknown_pmi_command_is_a_warning_and_the_job_goes_on() {
    let _serial = serial();
    let s = Scratch::new("warn");
    let code = "printf 'cmd=init pmi_version=1 pmi_subversion=1\\ncmd=frobnicate\\ncmd=finalize\\n' >&\"$PMI_FD\"";
    let o = s.run(with(np(1), &["bash", "-c", code]));
    o.expect_code(0);
    let lines = rlaunch_lines(&o);
    assert_eq!(lines.len(), 1, "{o}");
    assert!(lines[0].starts_with("rlaunch: warning: PMI on "), "{o}");
    assert!(lines[0].contains("rank 0") && lines[0].contains("frobnicate"), "{o}");
}

#[test]
fn pmi_environment_of_a_rank() {
    let _serial = serial();
    let s = Scratch::new("env");
    let o = s.run(with(np(2), &["sh", "-c", "echo \"$PMI_RANK $PMI_SIZE ${PMI_JOBID:+jobid} ${PMI_FD:+fd} ${PMI_PORT:+port}\""]));
    o.expect_code(0);
    let mut lines = o.stdout_lines();
    lines.sort();
    assert_eq!(lines, vec!["0 2 jobid fd ", "1 2 jobid fd "], "{o}");
    let o = s.run(with(np(1), &["--pmi-port", "sh", "-c", "echo \"$PMI_ID ${PMI_FD:-nofd} $PMI_PORT\""]));
    o.expect_code(0);
    assert!(o.stdout.starts_with("0 nofd 127.0.0.1:"), "{o}");
    // Tree spawn with fan-out 1: node c's daemon is started by node b's, which must pass the PMI
    // options on.
    let o = s.run(with(
        local_nodes_list("a:1,b:1,c:1", 1),
        &["--tree-spawn", "--pmi-port", "-np", "3", "sh", "-c", "echo \"$PMI_RANK ${PMI_PORT:+port}${PMI_FD:+fd}\""],
    ));
    o.expect_code(0);
    let mut lines = o.stdout_lines();
    lines.sort();
    assert_eq!(lines, vec!["0 port", "1 port", "2 port"], "{o}");
}

/// What an MPICH rank gets from its daemon besides PMI: the node's topology as hwloc XML (with two
/// or more ranks on the node, and libhwloc on it) and, when the whole job is on one node, UCX's
/// transports without TCP. Each is left out for a rank whose user set any variable of that
/// library, in rlaunch's environment or with -x; the file is gone once the job is.
#[test]
fn ranks_get_the_topology_and_ucx_transports_unless_the_user_set_their_own() {
    let _serial = serial();
    let Some(p) = mpi("mpi_env") else { return };
    let s = Scratch::new("rankenv");
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut a: Vec<&str> = args.to_vec();
        a.push(&p);
        let mut c = s.cmd(a);
        // The developer's own HWLOC_*/UCX_* must not decide the answer.
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("HWLOC_") || k.starts_with("UCX_")) {
            c.env_remove(k);
        }
        c.envs(env.iter().copied());
        let o = common::Job::start(c, None).wait();
        o.expect_code(0);
        let mut lines: Vec<Vec<String>> = o.stdout_lines().iter().map(|l| l.split(' ').map(str::to_string).collect()).collect();
        lines.sort();
        lines
    };
    let lines = run(&["-np", "2"], &[]);
    assert_eq!(lines.len(), 2, "{lines:?}");
    let tls = lines[0][2].clone();
    assert!(tls == "^sysv,tcp" || tls == "^tcp", "one node: UCX without TCP, got {lines:?}");
    let hwloc = lines[0][0] != "-";
    if hwloc {
        let xml = &lines[0][0];
        assert!(xml.starts_with("/dev/shm/rlaunch-rl-") && xml.ends_with("-0.xml"), "{lines:?}");
        assert_eq!((lines[0][1].as_str(), lines[0][3].as_str()), ("1", "<?xml"), "{lines:?}");
        assert_eq!(lines[0], lines[1], "one file for the node's ranks");
        assert!(!std::path::Path::new(xml).exists(), "{xml} outlived its job");
    } else {
        eprintln!("no libhwloc.so.15 here: the topology half is not checked");
    }
    let none = || vec!["-".to_string(), "-".into(), tls.clone(), "-".into()];
    // A single rank on its node gains nothing from the export.
    assert_eq!(run(&["-np", "1"], &[]), vec![none()]);
    // The user's own settings win, wherever they come from.
    assert_eq!(run(&["-np", "2", "-x", "HWLOC_COMPONENTS=linux"], &[]), vec![none(), none()]);
    for l in run(&["-np", "2"], &[("HWLOC_XMLFILE", "/nonexistent.xml")]) {
        assert_eq!(l[..3], ["/nonexistent.xml", "-", &tls], "{l:?}");
    }
    for l in run(&["-np", "2", "-x", "UCX_TLS=self,sm"], &[]) {
        assert_eq!(l[2], "self,sm", "{l:?}");
    }
    for l in run(&["-np", "2"], &[("UCX_NET_DEVICES", "lo")]) {
        assert_eq!(l[2], "-", "{l:?}");
        assert_eq!(l[0] != "-", hwloc, "{l:?}");
    }
    // Not an MPI program: nothing.
    let o = s.run(["-np", "2", "sh", "-c", "echo ${HWLOC_XMLFILE:--} ${UCX_TLS:--}"]);
    o.expect_code(0);
    assert_eq!(o.stdout_lines(), vec!["- -", "- -"], "{o}");
    // Across nodes UCX's own choice stands; each node's two ranks still share its topology.
    let across = run(&with(local_nodes_list("a:2,b:2", 2), &["-np", "4"]).iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    assert_eq!(across.len(), 4, "{across:?}");
    for l in &across {
        assert_eq!(l[2], "-", "{across:?}");
        assert_eq!(l[0] != "-", hwloc, "{across:?}");
    }
}

/// The topology file outlives a SIGKILLed daemon only until its guard sees the daemon go.
#[test]
fn a_sigkilled_daemons_topology_file_is_removed_by_its_guard() {
    let _serial = serial();
    let Some(p) = mpi("mpi_env") else { return };
    let s = Scratch::new("guardxml");
    let job = s.spawn(["-np", "2", &p, "60"]);
    let ranks = || s.leftovers().into_iter().filter(|(_, c)| c.starts_with(p.as_str())).map(|(p, _)| p).collect::<Vec<_>>();
    assert!(common::poll_until(Duration::from_secs(20), || ranks().len() == 2), "{:?}", s.leftovers());
    let environ = std::fs::read(format!("/proc/{}/environ", ranks()[0])).unwrap_or_default();
    let xml = environ.split(|&b| b == 0).find_map(|v| v.strip_prefix(b"HWLOC_XMLFILE".as_slice())?.strip_prefix(b"=".as_slice()).map(|p| String::from_utf8_lossy(p).into_owned()));
    let Some(xml) = xml.map(PathBuf::from) else {
        return eprintln!("SKIP: no libhwloc.so.15 here, no topology file");
    };
    assert!(xml.exists(), "{}", xml.display());
    let daemons: Vec<u32> = s.leftovers().into_iter().filter(|(_, c)| c.contains("__daemon")).map(|(p, _)| p).collect();
    assert_eq!(daemons.len(), 1, "{:?}", s.leftovers());
    unsafe { libc::kill(daemons[0] as i32, libc::SIGKILL) };
    assert!(common::poll_until(Duration::from_secs(5), || !xml.exists()), "{} is still there after its daemon was SIGKILLed", xml.display());
    drop(job);
}

// ---------------------------------------------------------------------------------------------
// Several daemons on this machine (`--launcher local` with a node list): the fence runs over a
// real tree of daemons, deep with `--fanout 1`, and `--pmi-lazy` fetches across nodes.

fn local_nodes_list(hosts: &str, fanout: u32) -> Vec<String> {
    with(vec![], &["--launcher", "local", "--host", hosts, "--fanout", &fanout.to_string()])
}

fn local_nodes(fanout: u32) -> Vec<String> {
    local_nodes_list("a:2,b:2,c:2,d:2", fanout)
}

#[test]
fn fence_across_local_daemons_eager_and_lazy() {
    let _serial = serial();
    let Some(p) = pmi_prog("pmi_modex") else { return };
    for fanout in [1u32, 2, 32] {
        for lazy in [false, true] {
            let s = Scratch::new("treefence");
            let mut a = local_nodes(fanout);
            if lazy {
                a.push("--pmi-lazy".into());
            }
            let o = s.run(with(a, &["-np", "8", &p]));
            expect_clean_success(&o);
            assert!(o.stdout.contains("pmi_modex ok: 8 ranks"), "fanout {fanout} lazy {lazy}:\n{o}");
        }
    }
}

#[test]
fn pmi2_and_mpich_across_local_daemons() {
    let _serial = serial();
    if let Some(p) = pmi_prog("pmi2_client") {
        let s = Scratch::new("treepmi2");
        // Tree spawn: the daemons start each other and must pass the PMI options on.
        let o = s.run(with(local_nodes(2), &["--tree-spawn", "--pmi-lazy", "-np", "8", &p]));
        expect_clean_success(&o);
        // Two ranks on each of four nodes, in order.
        assert!(o.stdout.contains("pmi2_client ok: 8 ranks exchanged keys, process mapping (vector,(0,4,2))"), "{o}");
    }
    let Some(p) = mpi("mpi_allreduce") else { return };
    for lazy in [false, true] {
        let s = Scratch::new("treempich");
        let mut a = local_nodes(1);
        if lazy {
            a.push("--pmi-lazy".into());
        }
        let o = s.run(with(a, &["-np", "8", &p]));
        expect_clean_success(&o);
        assert!(o.stdout.contains("allreduce ok: sum=36 over 8 ranks"), "lazy {lazy}:\n{o}");
    }
}

// ---------------------------------------------------------------------------------------------
// The namespace cluster: 8 nodes × 4 ranks, through the launch agent.

fn cluster() -> Option<Vec<String>> {
    let hosts = mpi::cluster_hosts()?;
    let agent = mpi::node_exec();
    // The scratch dir is under /tmp, which is private to each node: the ranks run in the shared
    // target dir instead.
    let wdir = env!("CARGO_TARGET_TMPDIR");
    Some(with(
        vec![],
        &[
            "--launch-agent",
            &agent.to_string_lossy(),
            "--hostfile",
            &hosts.to_string_lossy(),
            "--ppn",
            "4",
            "--oversubscribe",
            "-np",
            "32",
            "--wdir",
            wdir,
        ],
    ))
}

#[test]
fn cluster_8x4_mpich_programs() {
    let _serial = serial();
    let Some(base) = cluster() else { return };
    let Some(dir) = mpi("mpi_hello").map(|p| PathBuf::from(p).parent().unwrap().to_path_buf()) else { return };
    let prog = |n: &str| dir.join(n).to_string_lossy().into_owned();
    for fanout in ["32", "2"] {
        let a = with(base.clone(), &["--fanout", fanout]);
        let s = Scratch::new("c-hello");
        let o = s.run(with(a.clone(), &[&prog("mpi_hello")]));
        expect_clean_success(&o);
        assert_eq!(o.stdout_lines().len(), 32, "fanout {fanout}:\n{o}");
        for node in 1..=8 {
            assert_eq!(o.stdout.matches(&format!(" of 32 on n{node}\n")).count(), 4, "fanout {fanout}, node n{node}:\n{o}");
        }
        let o = s.run(with(a.clone(), &[&prog("mpi_allreduce")]));
        expect_clean_success(&o);
        assert!(o.stdout.contains("allreduce ok: sum=528 over 32 ranks"), "fanout {fanout}:\n{o}");
        let o = s.run(with(a.clone(), &[&prog("mpi_ring")]));
        expect_clean_success(&o);
        assert!(o.stdout.contains("ring ok: token 496 went around 32 ranks"), "fanout {fanout}:\n{o}");
        let o = s.run(with(a.clone(), &[&prog("mpi_barrier"), "20"]));
        expect_clean_success(&o);
        let o = s.run(with(a.clone(), &[&prog("mpi_abort"), "13"]));
        o.expect_code(7);
        expect_one_rank_line(&o, 13, "called abort with code 7");
        let o = s.run(with(a.clone(), &[&prog("mpi_crash"), "21"]));
        let lines = rlaunch_lines(&o);
        assert_eq!(lines.len(), 1, "expected one line from rlaunch:\n{o}");
        if o.code != Some(139) {
            // Across nodes a peer's MPI library may notice the dead rank (a failed connection)
            // and abort before the crash report reaches the front end; then that abort is the
            // first failure, reported the same way.
            let (_, _, _, rest) = parse_rank_line(&lines[0]).unwrap_or_else(|| panic!("not a rank line:\n{o}"));
            let code: i32 = rest
                .strip_prefix("called abort with code ")
                .and_then(|r| r.split(|c: char| !c.is_ascii_digit() && c != '-').next())
                .and_then(|c| c.parse().ok())
                .unwrap_or_else(|| panic!("neither the crash nor an abort:\n{o}"));
            assert_eq!(o.code, Some(if code & 0xff == 0 { 1 } else { code & 0xff }), "{o}");
        } else {
            expect_one_rank_line(&o, 21, "killed by signal 11 (SIGSEGV)");
        }
    }
}

#[test]
fn cluster_8x4_raw_pmi_clients_eager_and_lazy() {
    let _serial = serial();
    let Some(base) = cluster() else { return };
    let (Some(modex), Some(pmi2)) = (pmi_prog("pmi_modex"), pmi_prog("pmi2_client")) else { return };
    for fanout in ["32", "2"] {
        for lazy in [false, true] {
            let mut a = with(base.clone(), &["--fanout", fanout]);
            if lazy {
                a.push("--pmi-lazy".into());
            }
            let s = Scratch::new("c-modex");
            let o = s.run(with(a.clone(), &[&modex]));
            expect_clean_success(&o);
            assert!(o.stdout.contains("pmi_modex ok: 32 ranks"), "fanout {fanout} lazy {lazy}:\n{o}");
            let o = s.run(with(a, &[&pmi2]));
            expect_clean_success(&o);
            assert!(o.stdout.contains("process mapping (vector,(0,8,4))"), "fanout {fanout} lazy {lazy}:\n{o}");
        }
    }
}
