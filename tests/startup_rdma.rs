//! The start-up collectives over RDMA, end to end with the real binary on one machine: several
//! local "nodes" (`--launcher local`) whose daemons, with the test-only setting
//! RLAUNCH_TEST_SIM_RDMA, report a simulated RDMA port and run the inventory exchange and the
//! ranks' first PMI/PMIx fence over simulated RDMA links between them (`fabrics::sim_link`); a
//! bring-up failure on one node sends the whole job to TCP; `--fabric tcp` never tries; without
//! the setting the real verbs path is tried and, with no RDMA device here, falls back with one
//! `-v` line; a link that breaks in the middle of the exchange or of the first fence moves the
//! job to TCP and the collective finishes there; ranks that never fence (not MPI) get the links
//! released after the wait; MPICH and Open MPI jobs run on top. On the namespace cluster
//! (RLAUNCH_CLUSTER_STATE; skipped with a printed reason without it) the simulated link cannot
//! cross the nodes' network namespaces, so there the fallback runs for real.

#[path = "common/cluster.rs"]
mod cluster;
mod common;

use cluster::{Cluster, NodeScratch};
use common::{mpi, Job, Output, Scratch};
use std::path::Path;
use std::time::Duration;

const SIM: &str = "RLAUNCH_TEST_SIM_RDMA";

/// Each rank waits until its daemon has released its simulated links (their sockets carry the
/// daemon's pid in their names), then prints its rank.
const RELEASED: &str = r#"for i in $(seq 200); do grep -q "@rlaunch-sim-$PPID-" /proc/net/unix || { echo released $RLAUNCH_RANK; exit 0; }; sleep 0.05; done; echo held $RLAUNCH_RANK; exit 1"#;

fn run(s: &Scratch, sim: Option<&str>, extra: &[&str]) -> Output {
    let hosts = s.path("hosts");
    std::fs::write(&hosts, (1..=6).map(|i| format!("node{i:03}\n")).collect::<String>()).unwrap();
    let mut args: Vec<String> = ["--launcher", "local", "-f", &hosts.display().to_string(), "--fanout", "2", "-np", "6", "-v", "--report", "report.json"]
        .iter()
        .map(|a| a.to_string())
        .collect();
    args.extend(extra.iter().map(|a| a.to_string()));
    args.extend(["sh", "-c", RELEASED].iter().map(|a| a.to_string()));
    let mut cmd = s.cmd(args);
    match sim {
        Some(v) => cmd.env(SIM, v),
        None => cmd.env_remove(SIM),
    };
    Job::start(cmd, None).wait_within(Duration::from_secs(60))
}

fn report(s: &Scratch) -> serde_json::Value {
    serde_json::from_str(&s.read("report.json")).expect("report.json")
}

fn ranks_released(o: &Output) {
    let mut lines = o.stdout_lines();
    lines.sort();
    let want: Vec<String> = (0..6).map(|r| format!("released {r}")).collect();
    assert_eq!(lines, want, "every rank ran, after its daemon released its links:\n{o}");
}

#[test]
fn every_node_up_runs_the_inventory_exchange_over_simulated_rdma() {
    let s = Scratch::new("rdma-sim");
    let o = run(&s, Some("1"), &[]);
    o.expect_code(0);
    ranks_released(&o);
    assert!(o.stderr.contains("rlaunch: RDMA start-up links up on every node in "), "{o}");
    assert!(o.stderr.contains("rlaunch: inventory allgather over rdma (simulated) in "), "{o}");
    assert!(!o.stderr.contains("over TCP"), "{o}");
    let r = report(&s);
    let st = &r["startup_collectives"];
    assert_eq!(st["inventory_allgather"]["transport"], "rdma (simulated)", "{st:#}");
    assert!(st["inventory_allgather"]["ms"].as_f64().is_some_and(|ms| ms > 0.0), "{st:#}");
    assert!(st["rdma_bring_up"]["ms"].as_f64().is_some(), "{st:#}");
    assert!(st["rdma_bring_up"]["fallback"].is_null(), "{st:#}");
    // `sh` never fences: the links went after the wait, and nothing fell back.
    assert!(st["first_fence"]["transport"].is_null(), "{st:#}");
    assert_eq!(st["first_fence"]["links_released_unused"]["why"], "no rank connected to PMI or PMIx within 5 s of starting", "{st:#}");
    assert!(st["inventory_allgather"]["fell_back"].is_null(), "{st:#}");
    assert!(o.stderr.contains("rlaunch: RDMA start-up links released: on node "), "{o}");
    // The endpoint assignment is unchanged: the nodes' inventories have no RDMA port.
    assert_eq!(r["fabric"], "tcp");
}

#[test]
fn a_bring_up_failure_on_one_node_sends_the_whole_job_to_tcp() {
    let s = Scratch::new("rdma-fail");
    // Node index 3 (node004) sits in the middle of the fan-out 2 tree: a parent and a child.
    let o = run(&s, Some("fail:3"), &[]);
    o.expect_code(0);
    ranks_released(&o);
    let why: Vec<&str> = o.stderr_lines().into_iter().filter(|l| l.contains("RDMA could not start")).collect();
    assert_eq!(
        why,
        ["rlaunch: start-up collectives over TCP: RDMA could not start on node node004: simulated bring-up failure (RLAUNCH_TEST_SIM_RDMA=fail:3)"],
        "one line naming the node and the reason:\n{o}"
    );
    assert!(o.stderr.contains("rlaunch: inventory allgather over tcp in "), "{o}");
    let st = &report(&s)["startup_collectives"];
    assert_eq!(st["inventory_allgather"]["transport"], "tcp", "{st:#}");
    assert_eq!(st["rdma_bring_up"]["fallback"]["node"], "node node004", "{st:#}");
}

#[test]
fn fabric_tcp_never_tries_rdma() {
    let s = Scratch::new("rdma-forced-tcp");
    let o = run(&s, Some("1"), &["--fabric", "tcp"]);
    o.expect_code(0);
    ranks_released(&o);
    assert!(!o.stderr.contains("RDMA"), "{o}");
    let st = &report(&s)["startup_collectives"];
    assert_eq!(st["inventory_allgather"]["transport"], "tcp", "{st:#}");
    assert!(st["rdma_bring_up"].is_null(), "no bring-up at all: {st:#}");
}

/// Without the setting the real path is tried: this machine has no RDMA device (nor does any
/// node of it), so the job runs on TCP and `-v` says where RDMA could not start, and why.
#[test]
fn without_an_rdma_device_the_job_falls_back_to_tcp_with_one_line() {
    let s = Scratch::new("rdma-none");
    let o = run(&s, None, &[]);
    o.expect_code(0);
    ranks_released(&o);
    let why: Vec<&str> = o.stderr_lines().into_iter().filter(|l| l.contains("RDMA could not start")).collect();
    let host = String::from_utf8(std::process::Command::new("hostname").output().unwrap().stdout).unwrap();
    assert_eq!(why, [format!("rlaunch: start-up collectives over TCP: RDMA could not start on the front end ({}): no RDMA device", host.trim())], "{o}");
    assert!(o.stderr.contains("rlaunch: inventory allgather over tcp in "), "{o}");
    let st = &report(&s)["startup_collectives"];
    assert_eq!(st["inventory_allgather"]["transport"], "tcp", "{st:#}");
    assert_eq!(st["rdma_bring_up"]["fallback"]["why"], "no RDMA device", "{st:#}");
}

#[test]
fn a_bad_test_setting_is_one_line() {
    let s = Scratch::new("rdma-bad");
    run(&s, Some("yes"), &[]).expect_usage_error("RLAUNCH_TEST_SIM_RDMA=yes: expected 1, fail:NODE_INDEX, break:NODE_INDEX or break-fence:NODE_INDEX");
}

/// Node index 2 (node003: a child of node001, with a child of its own) loses its link right after
/// its first exchange message went onto it: the messages its neighbours send it over the link
/// are lost, and the exchange finishes over TCP from each side's count.
#[test]
fn a_link_failing_during_the_exchange_finishes_it_over_tcp() {
    let s = Scratch::new("rdma-break");
    let o = run(&s, Some("break:2"), &[]);
    o.expect_code(0);
    ranks_released(&o);
    let why: Vec<&str> = o.stderr_lines().into_iter().filter(|l| l.contains("finishes over TCP")).collect();
    assert_eq!(
        why,
        ["rlaunch: node node003: the RDMA link failed: simulated link failure (RLAUNCH_TEST_SIM_RDMA=break:2); the inventory allgather finishes over TCP"],
        "{o}"
    );
    let st = &report(&s)["startup_collectives"];
    assert_eq!(st["inventory_allgather"]["transport"], "tcp", "{st:#}");
    assert_eq!(st["inventory_allgather"]["fell_back"]["node"], "node node003", "{st:#}");
    assert!(st["rdma_bring_up"]["fallback"].is_null(), "the links did come up: {st:#}");
    s.assert_no_leftovers(Duration::from_secs(5));
}

/// An MPI allreduce (MPICH through PMI, Open MPI through PMIx) on 3 local nodes whose start-up
/// exchange and first fence ran over the simulated RDMA links (`sim`: the test setting), and
/// the report's `startup_collectives`.
fn mpi_job_on_simulated_startup(compiler: &str, family: &str, sim: &str) -> Option<(Output, serde_json::Value)> {
    let _one_at_a_time = mpi::serial();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("startup-rdma-{family}"));
    std::fs::create_dir_all(&dir).unwrap();
    if let Err(why) = mpi::compile(compiler, &dir, "mpi_allreduce", "install MPICH and Open MPI") {
        eprintln!("skipped: {why}");
        return None;
    }
    let s = Scratch::new(&format!("rdma-{family}"));
    let hosts = s.path("hosts");
    std::fs::write(&hosts, "node001 slots=2\nnode002 slots=2\nnode003 slots=2\n").unwrap();
    let prog = dir.join("mpi_allreduce").display().to_string();
    let args = ["--launcher", "local", "-f", &hosts.display().to_string(), "--fanout", "1", "-np", "6", "-v", "--report", "report.json", &prog];
    let mut cmd = s.cmd(args);
    cmd.env(SIM, sim);
    let o = Job::start(cmd, None).wait_within(Duration::from_secs(120));
    o.expect_code(0);
    assert!(o.stdout.contains("allreduce ok: sum=21 over 6 ranks"), "{o}");
    let st = report(&s)["startup_collectives"].clone();
    Some((o, st))
}

fn mpi_fence_over_simulated_rdma(compiler: &str, family: &str, pmi: &str) {
    let Some((o, st)) = mpi_job_on_simulated_startup(compiler, family, "1") else { return };
    assert_eq!(st["inventory_allgather"]["transport"], "rdma (simulated)", "{st:#}");
    assert_eq!(st["first_fence"]["transport"], "rdma (simulated)", "{st:#}");
    assert!(st["first_fence"]["ms"].as_f64().is_some(), "{st:#}");
    assert!(o.stderr.contains(&format!("rlaunch: first {pmi} fence over rdma (simulated) in ")), "{o}");
}

/// Node index 1 (in the middle of the fan-out 1 chain) loses its link at its first fence message.
fn mpi_fence_finishes_over_tcp(compiler: &str, family: &str) {
    let Some((o, st)) = mpi_job_on_simulated_startup(compiler, family, "break-fence:1") else { return };
    assert_eq!(st["inventory_allgather"]["transport"], "rdma (simulated)", "{st:#}");
    assert_eq!(st["first_fence"]["transport"], "tcp", "{st:#}");
    assert_eq!(st["first_fence"]["fell_back"]["node"], "node node002", "{st:#}");
    let why: Vec<&str> = o.stderr_lines().into_iter().filter(|l| l.contains("finishes over TCP")).collect();
    assert_eq!(
        why,
        ["rlaunch: node node002: the RDMA link failed: simulated link failure (RLAUNCH_TEST_SIM_RDMA=break-fence:1); the first PMI/PMIx fence finishes over TCP".to_string()],
        "{o}"
    );
}

#[test]
fn mpich_on_simulated_rdma_startup() {
    mpi_fence_over_simulated_rdma("mpicc.mpich", "mpich", "PMI");
}

#[test]
fn openmpi_on_simulated_rdma_startup() {
    mpi_fence_over_simulated_rdma("mpicc.openmpi", "openmpi", "PMIx");
}

#[test]
fn mpich_fence_cut_mid_way_finishes_over_tcp() {
    mpi_fence_finishes_over_tcp("mpicc.mpich", "mpich-cut");
}

#[test]
fn openmpi_fence_cut_mid_way_finishes_over_tcp() {
    mpi_fence_finishes_over_tcp("mpicc.openmpi", "openmpi-cut");
}

/// On the namespace cluster the simulated link crosses the nodes' network namespaces over TCP
/// (a Unix socket cannot): 8 nodes, a fan-out 2 tree of links up, the exchange over them; then
/// the same with one node's bring-up failing, where the whole job falls back to TCP at once (no
/// member waits out its connect timeout for a neighbour that gave up).
#[test]
fn on_the_namespace_cluster_the_simulated_links_cross_nodes_and_fall_back_at_once() {
    let test = "on_the_namespace_cluster_the_simulated_links_cross_nodes_and_fall_back_at_once";
    let Some(c) = Cluster::get(test) else { return };
    let s = NodeScratch::new("rdma-cluster");
    let hosts = s.file("hosts", &(1..=8).map(|i| format!("n{i} slots=2\n")).collect::<String>());
    let job = |sim: &str| {
        let mut args = c.agent_args();
        args.extend(["-f", &hosts.display().to_string(), "-np", "16", "--fanout", "2", "-v", "--report", "report.json", "sh", "-c", "echo ran"].map(String::from));
        let mut cmd = s.cmd(args);
        cmd.env(SIM, sim);
        let o = Job::start(cmd, None).wait_within(Duration::from_secs(60));
        o.expect_code(0);
        assert_eq!(o.stdout_lines().len(), 16, "{o}");
        (o, s.report()["startup_collectives"].clone())
    };
    let (o, st) = job("1");
    assert_eq!(st["inventory_allgather"]["transport"], "rdma (simulated)", "{st:#}\n{o}");
    assert!(st["rdma_bring_up"]["fallback"].is_null(), "{st:#}");
    let (o, st) = job("fail:5");
    let why: Vec<&str> = o.stderr_lines().into_iter().filter(|l| l.contains("RDMA could not start")).collect();
    assert_eq!(why, ["rlaunch: start-up collectives over TCP: RDMA could not start on node n6: simulated bring-up failure (RLAUNCH_TEST_SIM_RDMA=fail:5)"], "{o}");
    assert_eq!(st["inventory_allgather"]["transport"], "tcp", "{st:#}");
    let ms = st["rdma_bring_up"]["ms"].as_f64().unwrap();
    assert!(ms < 5000.0, "the fallback took {ms} ms: someone waited for a connection that could not come");
}

/// MPICH (PMI) and Open MPI (PMIx) on 4 namespace-cluster nodes with the simulated links: the
/// first fence runs over them across the nodes.
#[test]
fn on_the_namespace_cluster_mpi_jobs_fence_over_the_simulated_links() {
    let test = "on_the_namespace_cluster_mpi_jobs_fence_over_the_simulated_links";
    let Some(c) = Cluster::get(test) else { return };
    let _one_at_a_time = mpi::serial();
    for (compiler, family, pmi) in [("mpicc.mpich", "mpich", "PMI"), ("mpicc.openmpi", "openmpi", "PMIx")] {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("startup-rdma-cluster-{family}"));
        std::fs::create_dir_all(&dir).unwrap();
        if let Err(why) = mpi::compile(compiler, &dir, "mpi_allreduce", "install MPICH and Open MPI") {
            eprintln!("skipped {family}: {why}");
            continue;
        }
        let s = NodeScratch::new(&format!("rdma-cluster-{family}"));
        let hosts = s.file("hosts", &(1..=4).map(|i| format!("n{i} slots=2\n")).collect::<String>());
        let prog = dir.join("mpi_allreduce").display().to_string();
        let mut args = c.agent_args();
        args.extend(["-f", &hosts.display().to_string(), "-np", "8", "--fanout", "2", "-v", "--report", "report.json", &prog].map(String::from));
        let mut cmd = s.cmd(args);
        cmd.env(SIM, "1");
        let o = Job::start(cmd, None).wait_within(Duration::from_secs(120));
        o.expect_code(0);
        assert!(o.stdout.contains("allreduce ok: sum=36 over 8 ranks"), "{o}");
        let st = &s.report()["startup_collectives"];
        assert_eq!(st["inventory_allgather"]["transport"], "rdma (simulated)", "{family}: {st:#}");
        assert_eq!(st["first_fence"]["transport"], "rdma (simulated)", "{family}: {st:#}");
        assert!(o.stderr.contains(&format!("rlaunch: first {pmi} fence over rdma (simulated) in ")), "{o}");
    }
}
