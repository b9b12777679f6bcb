//! Issue 7: unmodified Open MPI programs under rlaunch's PMIx server (libpmix in every daemon).
//!
//! The MPI programs in tests/programs are compiled at test time with `mpicc.openmpi` into the
//! cargo target dir (which the namespace cluster's nodes see too). Without the compiler the tests
//! say so and pass; multi-node tests need the cluster (`RLAUNCH_CLUSTER_STATE`, from
//! `scripts/cluster up 8`). Open MPI refuses to run as root unless told it may: the tests export
//! OMPI_ALLOW_RUN_AS_ROOT=1 and OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 to the ranks with `-x`.

mod common;

use common::mpi::{self, expect_clean_success, expect_one_rank_line, rlaunch_lines, serial};
use common::Scratch;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

const PROGRAMS: &[&str] = &["mpi_hello", "mpi_allreduce", "mpi_ring", "mpi_barrier", "mpi_abort", "mpi_crash", "mpi_no_finalize", "mpi_binding"];
const SIZES: [u32; 3] = [1, 4, 16];
const CLEANUP: Duration = Duration::from_secs(5);

struct Built {
    dir: PathBuf,
    missing: Option<String>,
}

fn built() -> &'static Built {
    static B: OnceLock<Built> = OnceLock::new();
    B.get_or_init(|| {
        let (dir, missing) = mpi::compile_all("mpicc.openmpi", "openmpi-programs", PROGRAMS, "install openmpi-bin and libopenmpi-dev");
        Built { dir, missing }
    })
}

/// The path of an Open MPI test program, or None after printing why the test is skipped.
fn ompi(name: &str) -> Option<String> {
    let b = built();
    if let Some(why) = &b.missing {
        eprintln!("SKIP: Open MPI programs unavailable: {why}");
        return None;
    }
    Some(b.dir.join(name).to_string_lossy().into_owned())
}

fn args(n: u32, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> =
        ["-x", "OMPI_ALLOW_RUN_AS_ROOT=1", "-x", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1", "-np"].iter().map(|s| s.to_string()).collect();
    a.push(n.to_string());
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

// ---------------------------------------------------------------------------------------------
// One node

#[test]
fn hello_every_rank_once_with_the_right_identity() {
    let _serial = serial();
    let Some(p) = ompi("mpi_hello") else { return };
    let host = common::hostname();
    for n in SIZES {
        let s = Scratch::new("ompi-hello");
        let o = s.run(args(n, &[&p]));
        mpi::expect_hellos(&o, n, &host);
    }
}

/// Ranks are bound before exec: each one's own CPU list (sched_getaffinity) is what
/// `--report-bindings` said, and Open MPI, asked to report its binding, draws the same picture.
#[test]
fn ranks_run_bound_and_open_mpi_draws_the_same_picture() {
    let _serial = serial();
    let Some(p) = ompi("mpi_binding") else { return };
    for bind in ["core", "none"] {
        let s = Scratch::new("ompi-binding");
        let o = s.run(args(2, &["-x", "OMPI_MCA_hwloc_base_report_bindings=1", "--bind-to", bind, "--report-bindings", &p]));
        if bind == "core" && o.code == Some(2) {
            return eprintln!("SKIP: fewer than 2 cores here:\n{o}");
        }
        let pictures = mpi::expect_reported_bindings(&o, 2);
        for (r, pic) in pictures {
            let ompi_line = o.stderr.lines().find(|l| l.contains(&format!("MCW rank {r} bound to "))).unwrap_or_else(|| panic!("Open MPI did not report rank {r}:\n{o}"));
            assert!(ompi_line.ends_with(&format!(": {pic}")), "--bind-to {bind}: Open MPI draws rank {r} otherwise than {pic}:\n{o}");
        }
    }
}

/// libpmix hands a bound rank its binding as Open MPI reads it: PMIX_CPUSET (the CPU list) and
/// PMIX_LOCALITY_STRING (NUMA node, package, L3, cores, threads); an unbound rank gets neither.
#[test]
fn pmix_tells_each_rank_its_cpuset_and_locality() {
    let _serial = serial();
    if ompi("mpi_hello").is_none() {
        return;
    }
    let pmix = "/usr/lib/x86_64-linux-gnu/pmix2";
    let dir = built().dir.clone();
    let flags = [&format!("-I{pmix}/include")[..], &format!("-L{pmix}/lib"), "-lpmix", &format!("-Wl,-rpath,{pmix}/lib")];
    if let Err(e) = mpi::compile_with("cc", &flags, &dir, "pmix_locality", "install libpmix-dev") {
        return eprintln!("SKIP: no PMIx client: {e}");
    }
    let prog = dir.join("pmix_locality").to_string_lossy().into_owned();
    let s = Scratch::new("pmix-locality");
    let o = s.run(["--mpi", "pmix", "-np", "1", "--bind-to", "core", "--report-bindings", &prog]);
    o.expect_code(0);
    let list = o.stderr.split("bound to CPUs ").nth(1).and_then(|r| r.split(' ').next()).unwrap_or_else(|| panic!("{o}"));
    let line = o.stdout.lines().find(|l| l.starts_with("locality 0 ")).unwrap_or_else(|| panic!("{o}"));
    let fields: Vec<&str> = line.split(' ').collect();
    assert_eq!(fields[2], list, "PMIX_CPUSET:\n{o}");
    assert!(fields[3].starts_with("NM0:SK0:") && fields[3].contains(":CR0:HT"), "PMIX_LOCALITY_STRING {}:\n{o}", fields[3]);
    let o = s.run(["--mpi", "pmix", "-np", "1", "--bind-to", "none", &prog]);
    o.expect_code(0);
    assert_eq!(o.stdout.trim(), "locality 0 - -", "{o}");
}

/// The daemon's libpmix shares the node's hwloc topology: every rank adopts it from shared memory
/// instead of discovering it (Open MPI says which with hwloc_base_verbose).
#[test]
fn ranks_adopt_the_daemons_topology_from_shared_memory() {
    let _serial = serial();
    let Some(p) = ompi("mpi_hello") else { return };
    let s = Scratch::new("ompi-topo");
    let o = s.run(args(4, &["-x", "OMPI_MCA_hwloc_base_verbose=2", &p]));
    o.expect_code(0);
    assert_eq!(o.stdout_lines().len(), 4, "{o}");
    assert_eq!(o.stderr.matches("hwloc:base: topology in shared memory").count(), 4, "each rank should adopt the shared topology:\n{o}");
    assert!(!o.stderr.contains("discovering topology"), "a rank discovered the topology itself:\n{o}");
}

/// What `show` printed in each of 2 PMIx ranks, run with `extra` options and `env` added to
/// rlaunch's environment. The test process's own variables starting with `clear` (a developer's
/// shell) are removed first: they must not decide the answer.
fn pmix_rank_lines(s: &Scratch, clear: &str, show: &[&str], extra: &[&str], env: &[(&str, &str)]) -> Vec<String> {
    let mut a = vec!["-np".to_string(), "2".into(), "--mpi".into(), "pmix".into()];
    a.extend(extra.iter().chain(show.iter()).map(|x| x.to_string()));
    let mut c = s.cmd(a);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with(clear)) {
        c.env_remove(k);
    }
    c.envs(env.iter().copied());
    let o = common::Job::start(c, None).wait();
    o.expect_code(0);
    o.stdout_lines().iter().map(|l| l.to_string()).collect()
}

/// No RDMA device here, so the job's fabric is TCP: Open MPI ranks are told ob1 (what Open MPI
/// would pick, without probing absent hardware), unless the user chose a PML/MTL, or with
/// `--fabric off`. Needs libpmix only.
#[test]
fn tcp_jobs_name_ob1_unless_the_user_chose() {
    let _serial = serial();
    if ompi("mpi_hello").is_none() {
        return;
    }
    let s = Scratch::new("ompi-pml");
    let show = ["sh", "-c", "echo pml=${OMPI_MCA_pml-unset} mtl=${OMPI_MCA_mtl-unset}"];
    let run = |extra: &[&str], env: &[(&str, &str)]| pmix_rank_lines(&s, "OMPI_MCA_", &show, extra, env);
    let both = |l: &str| vec![l.to_string(), l.to_string()];
    assert_eq!(run(&[], &[]), both("pml=ob1 mtl=unset"));
    assert_eq!(run(&["-x", "OMPI_MCA_pml=ucx"], &[]), both("pml=ucx mtl=unset"));
    assert_eq!(run(&[], &[("OMPI_MCA_mtl", "psm2")]), both("pml=unset mtl=psm2"));
    assert_eq!(run(&[], &[("OMPI_MCA_pml", "^ucx")]), both("pml=ob1 mtl=unset"), "an exclusion is no choice");
    assert_eq!(run(&["--fabric", "off"], &[]), both("pml=unset mtl=unset"));
}

/// PMIx ranks leave out hwloc's libxml2 plugin, unless the user decided about plugins or libxml2
/// (environment or `-x`, including an empty value), and Open MPI still starts with it left out.
#[test]
fn pmix_ranks_skip_hwlocs_libxml_plugin_unless_the_user_chose() {
    let _serial = serial();
    let Some(hello) = ompi("mpi_hello") else { return };
    let s = Scratch::new("ompi-hwloc-plugins");
    let show = ["sh", "-c", "echo bl=${HWLOC_PLUGINS_BLACKLIST-unset}"];
    let run = |extra: &[&str], env: &[(&str, &str)]| pmix_rank_lines(&s, "HWLOC_", &show, extra, env);
    let both = |l: &str| vec![l.to_string(), l.to_string()];
    assert_eq!(run(&[], &[]), both("bl=hwloc_xml_libxml"));
    assert_eq!(run(&["-x", "HWLOC_PLUGINS_BLACKLIST=hwloc_gl"], &[]), both("bl=hwloc_gl"));
    assert_eq!(run(&[], &[("HWLOC_PLUGINS_BLACKLIST", "")]), both("bl="), "an empty value is a choice");
    assert_eq!(run(&[], &[("HWLOC_LIBXML_IMPORT", "1")]), both("bl=unset"));
    assert_eq!(run(&["-x", "HWLOC_LIBXML=1"], &[]), both("bl=unset"));
    let o = common::Job::start(s.cmd(args(4, &[&hello])), None).wait();
    o.expect_code(0);
    assert_eq!(o.stdout_lines().iter().filter(|l| l.starts_with("hello from rank ")).count(), 4);
}

/// PMIx ranks are told Open MPI's run-time components (ess, state, errmgr) unless the user set
/// them (environment, `-x` or `--mca`, even empty), and Open MPI starts with them.
#[test]
fn pmix_ranks_get_their_rte_components_unless_the_user_set_them() {
    let _serial = serial();
    let Some(hello) = ompi("mpi_hello") else { return };
    let s = Scratch::new("ompi-rte");
    let show = ["sh", "-c", "echo ess=${OMPI_MCA_ess-unset} state=${OMPI_MCA_state-unset} errmgr=${OMPI_MCA_errmgr-unset}"];
    let run = |extra: &[&str], env: &[(&str, &str)]| pmix_rank_lines(&s, "OMPI_MCA_", &show, extra, env);
    let both = |l: &str| vec![l.to_string(), l.to_string()];
    assert_eq!(run(&[], &[]), both("ess=pmi state=app errmgr=default_app"));
    assert_eq!(run(&["-x", "OMPI_MCA_ess=env"], &[]), both("ess=env state=app errmgr=default_app"));
    assert_eq!(run(&["--mca", "errmgr", "x"], &[]), both("ess=pmi state=app errmgr=x"));
    assert_eq!(run(&[], &[("OMPI_MCA_state", "")]), both("ess=pmi state= errmgr=default_app"), "an empty value is a choice");
    let o = common::Job::start(s.cmd(args(4, &[&hello])), None).wait();
    o.expect_code(0);
    assert_eq!(o.stdout_lines().iter().filter(|l| l.starts_with("hello from rank ")).count(), 4);
}

/// A SIGKILLed daemon cannot remove its PMIx directory (libpmix's shared-memory store and the
/// topology): the next PMIx job on the node sweeps such leftovers, and leaves a directory alone
/// while a daemon holds it.
#[test]
fn pmix_leftovers_of_killed_daemons_are_swept() {
    use std::os::fd::AsRawFd;
    let _serial = serial();
    let Some(p) = ompi("mpi_hello") else { return };
    let base = std::env::temp_dir();
    let old = std::time::SystemTime::now() - Duration::from_secs(3600);
    let make = |name: String| {
        let d = base.join(name);
        std::fs::create_dir_all(d.join("pmix_dstor_ds21_1")).unwrap();
        std::fs::write(d.join("hwloc.sm"), vec![0u8; 4096]).unwrap();
        std::fs::File::open(&d).unwrap().set_modified(old).unwrap();
        d
    };
    let dead = make(format!("rlaunch-pmix-rl-test{}dead-0", std::process::id()));
    let held = make(format!("rlaunch-pmix-rl-test{}held-0", std::process::id()));
    let lock = std::fs::File::open(&held).unwrap();
    // SAFETY: flock on a descriptor this test owns.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_SH) }, 0);
    let s = Scratch::new("ompi-sweep");
    let o = s.run(args(2, &[&p]));
    expect_clean_success(&o);
    let gone = !dead.exists();
    let kept = held.exists();
    drop(lock);
    let _ = std::fs::remove_dir_all(&held);
    let _ = std::fs::remove_dir_all(&dead);
    assert!(gone, "{} should have been swept", dead.display());
    assert!(kept, "{} is locked (in use) and must stay", held.display());
}

#[test]
fn auto_detects_open_mpi_and_explains_it() {
    let _serial = serial();
    let Some(p) = ompi("mpi_hello") else { return };
    let s = Scratch::new("ompi-auto");
    let o = s.run(args(2, &["-v", &p]));
    o.expect_code(0);
    assert!(o.stderr.contains("ranks get PMIx (--mpi auto: PMIx, '") && o.stderr.contains("links libmpi.so.40"), "{o}");
    // Forced PMI: Open MPI finds no PMIx server and each rank is a singleton, which mpi_hello
    // catches against RLAUNCH_SIZE.
    let o = s.run(args(2, &["--mpi", "pmi", &p]));
    assert_ne!(o.code, Some(0), "{o}");
    assert!(o.stderr.contains("MPI says size 1 but RLAUNCH_SIZE=2"), "{o}");
}

#[test]
fn allreduce_sum_is_verified() {
    let _serial = serial();
    let Some(p) = ompi("mpi_allreduce") else { return };
    for n in SIZES {
        let s = Scratch::new("ompi-allreduce");
        let o = s.run(args(n, &[&p]));
        expect_clean_success(&o);
        let want = format!("allreduce ok: sum={} over {n} ranks", n * (n + 1) / 2);
        assert!(o.stdout.contains(&want), "n={n}: want {want:?}:\n{o}");
    }
}

#[test]
fn ring_token_goes_around() {
    let _serial = serial();
    let Some(p) = ompi("mpi_ring") else { return };
    for n in SIZES {
        let s = Scratch::new("ompi-ring");
        let o = s.run(args(n, &[&p]));
        expect_clean_success(&o);
        let want = format!("ring ok: token {} went around {n} ranks", n * (n - 1) / 2);
        assert!(o.stdout.contains(&want), "n={n}: want {want:?}:\n{o}");
    }
}

#[test]
fn barrier_in_a_loop() {
    let _serial = serial();
    let Some(p) = ompi("mpi_barrier") else { return };
    for n in SIZES {
        let s = Scratch::new("ompi-barrier");
        let o = s.run(args(n, &[&p, "20"]));
        expect_clean_success(&o);
        assert!(o.stdout.contains(&format!("barrier ok: 20 iterations on {n} ranks")), "n={n}:\n{o}");
    }
}

#[test]
fn mpi_abort_ends_the_job_with_its_code_and_names_the_rank() {
    let _serial = serial();
    let Some(p) = ompi("mpi_abort") else { return };
    for n in SIZES {
        let s = Scratch::new("ompi-abort");
        let o = s.run(args(n, &[&p, "1"]));
        o.expect_code(7);
        expect_one_rank_line(&o, 1.min(n - 1), "abort");
        s.assert_no_leftovers(CLEANUP);
    }
}

#[test]
fn crash_is_one_line_and_exit_139() {
    let _serial = serial();
    let Some(p) = ompi("mpi_crash") else { return };
    for n in SIZES {
        let s = Scratch::new("ompi-crash");
        let o = s.run(args(n, &[&p, "1"]));
        o.expect_code(139);
        expect_one_rank_line(&o, 1.min(n - 1), "killed by signal 11 (SIGSEGV)");
        s.assert_no_leftovers(CLEANUP);
    }
}

#[test]
fn exit_zero_without_finalize_is_a_failure() {
    let _serial = serial();
    let Some(p) = ompi("mpi_no_finalize") else { return };
    let s = Scratch::new("ompi-nofin");
    let o = s.run(args(4, &[&p]));
    assert_ne!(o.code, Some(0), "{o}");
    let lines = rlaunch_lines(&o);
    assert_eq!(lines.len(), 1, "{o}");
    assert!(lines[0].contains("without") && lines[0].contains("inaliz"), "{o}");
    s.assert_no_leftovers(CLEANUP);
}

#[test]
fn lazy_modex_runs_the_same_programs() {
    let _serial = serial();
    let (Some(h), Some(a)) = (ompi("mpi_hello"), ompi("mpi_allreduce")) else { return };
    let s = Scratch::new("ompi-lazy");
    let o = s.run(args(8, &["--pmi-lazy", &h]));
    expect_clean_success(&o);
    assert_eq!(o.stdout_lines().len(), 8, "{o}");
    let o = s.run(args(8, &["--pmi-lazy", &a]));
    expect_clean_success(&o);
    assert!(o.stdout.contains("allreduce ok: sum=36 over 8 ranks"), "{o}");
}

/// Two libpmix races that a lazy (async modex) job used to hit about 1 time in 40 each: a rank
/// asking for rank 0's data while its peers were still being registered waited forever, and a
/// local peer's committed key came back "Not found" from the shared-memory store ("PML add procs
/// failed"). Many short jobs in a row, each within the normal deadline.
#[test]
fn lazy_jobs_neither_hang_nor_miss_a_peer() {
    let _serial = serial();
    let Some(r) = ompi("mpi_ring") else { return };
    let s = Scratch::new("ompi-lazy-repeat");
    for i in 0..30 {
        let o = s.run(args(8, &["--pmi-lazy", &r]));
        expect_clean_success(&o);
        assert!(o.stdout.contains("ring ok: token 28 went around 8 ranks"), "job {i}:\n{o}");
    }
}

/// Several daemons on this machine (local "nodes"): the PMIx fence and direct modex cross the
/// daemon tree, eager and lazy, flat and deep.
#[test]
fn local_daemons_fence_and_direct_modex_across_the_tree() {
    let _serial = serial();
    let (Some(h), Some(a), Some(r)) = (ompi("mpi_hello"), ompi("mpi_allreduce"), ompi("mpi_ring")) else { return };
    let s = Scratch::new("ompi-tree");
    let hostfile = s.path("hosts");
    // Four names, four daemons (a repeated name would merge into one node).
    std::fs::write(&hostfile, "a slots=2\nb slots=2\nc slots=2\nd slots=2\n").unwrap();
    let hf = hostfile.to_string_lossy().into_owned();
    for fanout in ["32", "2"] {
        for lazy in [false, true] {
            let mut extra = vec!["--launcher", "local", "--hostfile", hf.as_str(), "--fanout", fanout];
            if lazy {
                extra.push("--pmi-lazy");
            }
            let with = |prog: &str| {
                let mut e = extra.clone();
                e.push(prog);
                s.run(args(8, &e))
            };
            let o = with(&h);
            expect_clean_success(&o);
            assert_eq!(o.stdout_lines().len(), 8, "fanout {fanout} lazy {lazy}:\n{o}");
            let o = with(&a);
            expect_clean_success(&o);
            assert!(o.stdout.contains("allreduce ok: sum=36 over 8 ranks"), "fanout {fanout} lazy {lazy}:\n{o}");
            let o = with(&r);
            expect_clean_success(&o);
            assert!(o.stdout.contains("ring ok: token 28 went around 8 ranks"), "fanout {fanout} lazy {lazy}:\n{o}");
        }
    }
}

/// An MPICH program and an Open MPI program in the same test run, each getting its interface.
#[test]
fn mpich_and_open_mpi_programs_side_by_side() {
    let _serial = serial();
    let Some(o_prog) = ompi("mpi_allreduce") else { return };
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("openmpi-side-mpich");
    std::fs::create_dir_all(&dir).unwrap();
    if let Err(e) = mpi::compile("mpicc.mpich", &dir, "mpi_allreduce", "install mpich and libmpich-dev") {
        eprintln!("SKIP (MPICH half): {e}");
        return;
    }
    let m_prog = dir.join("mpi_allreduce").to_string_lossy().into_owned();
    let s = Scratch::new("ompi-side");
    for p in [&o_prog, &m_prog] {
        let o = s.run(args(4, &[p]));
        expect_clean_success(&o);
        assert!(o.stdout.contains("allreduce ok: sum=10 over 4 ranks"), "{p}:\n{o}");
    }
    // One job cannot hold both.
    let o = s.run(args(2, &[&o_prog, ":", "-np", "2", &m_prog]));
    o.expect_usage_error("one job cannot serve both");
}

/// Without libpmix (a test-only override points the loader at nothing): a non-MPI job runs, an
/// Open MPI job fails with one line saying what to install.
#[test]
fn without_libpmix_only_open_mpi_jobs_fail_with_one_line() {
    let _serial = serial();
    let s = Scratch::new("ompi-nolib");
    let mut c = s.cmd(["-np", "2", "true"]);
    c.env("RLAUNCH_PMIX_LIBRARY", "/nonexistent/libpmix.so.2");
    common::Job::start(c, None).wait().expect_code(0);
    // Forcing PMIx on a non-MPI program needs the library too.
    let Some(p) = ompi("mpi_hello") else { return };
    for n in [1u32, 4] {
        let mut c = s.cmd(args(n, &[&p]));
        c.env("RLAUNCH_PMIX_LIBRARY", "/nonexistent/libpmix.so.2");
        let o = common::Job::start(c, None).wait();
        assert_ne!(o.code, Some(0), "{o}");
        let lines = rlaunch_lines(&o);
        assert_eq!(lines.len(), 1, "one line:\n{o}");
        assert!(lines[0].contains("apt-get install libpmix2"), "{o}");
        assert!(o.stdout.is_empty(), "no rank ran:\n{o}");
    }
}

// ---------------------------------------------------------------------------------------------
// The namespace cluster: 8 nodes × 4 ranks, through the launch agent.

fn cluster() -> Option<Vec<String>> {
    let hosts = mpi::cluster_hosts()?;
    let hosts = hosts.as_path();
    let agent = mpi::node_exec();
    // /tmp is private to each node: the ranks run in the shared target dir.
    let wdir = env!("CARGO_TARGET_TMPDIR");
    let hf = s_tmp_hostfile(hosts);
    Some(["--launch-agent", &agent.to_string_lossy(), "--hostfile", &hf, "--wdir", wdir].iter().map(|s| s.to_string()).collect())
}

/// The cluster's host list with 4 slots per node.
fn s_tmp_hostfile(hosts: &Path) -> String {
    let text = std::fs::read_to_string(hosts).unwrap_or_default();
    let body: String = text.lines().map(str::trim).filter(|l| !l.is_empty()).take(8).map(|h| format!("{h} slots=4\n")).collect();
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("openmpi-hosts-{}", std::process::id()));
    std::fs::write(&path, body).expect("writing the hostfile");
    path.to_string_lossy().into_owned()
}

#[test]
fn cluster_8x4_open_mpi_programs() {
    let _serial = serial();
    let Some(base) = cluster() else { return };
    let Some(dir) = ompi("mpi_hello").map(|p| PathBuf::from(p).parent().unwrap().to_path_buf()) else { return };
    for (fanout, lazy) in [("32", false), ("2", false), ("32", true), ("2", true)] {
        let s = Scratch::new("c-ompi");
        // rlaunch ARGS for program `p` with its arguments on 8 nodes x 4.
        let run = |p: &str, more: &[&str]| {
            let mut a: Vec<String> = base.clone();
            a.extend(["--fanout", fanout].iter().map(|x| x.to_string()));
            if lazy {
                a.push("--pmi-lazy".into());
            }
            a.push(dir.join(p).to_string_lossy().into_owned());
            a.extend(more.iter().map(|x| x.to_string()));
            s.run(args(32, &a.iter().map(String::as_str).collect::<Vec<_>>()))
        };
        let o = run("mpi_hello", &[]);
        expect_clean_success(&o);
        assert_eq!(o.stdout_lines().len(), 32, "fanout {fanout} lazy {lazy}:\n{o}");
        for node in 1..=8 {
            assert_eq!(o.stdout.matches(&format!(" of 32 on n{node}\n")).count(), 4, "fanout {fanout}, node n{node}:\n{o}");
        }
        let o = run("mpi_allreduce", &[]);
        expect_clean_success(&o);
        assert!(o.stdout.contains("allreduce ok: sum=528 over 32 ranks"), "fanout {fanout} lazy {lazy}:\n{o}");
        let o = run("mpi_ring", &[]);
        expect_clean_success(&o);
        assert!(o.stdout.contains("ring ok: token 496 went around 32 ranks"), "fanout {fanout} lazy {lazy}:\n{o}");
        let o = run("mpi_barrier", &["20"]);
        expect_clean_success(&o);
        if lazy {
            continue;
        }
        let o = run("mpi_abort", &["13"]);
        o.expect_code(7);
        expect_one_rank_line(&o, 13, "abort");
        let o = run("mpi_crash", &["21"]);
        o.expect_code(139);
        expect_one_rank_line(&o, 21, "killed by signal 11 (SIGSEGV)");
    }
}
