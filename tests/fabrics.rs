//! The fabric exchange end to end with the real binary: endpoint tables ("instant on" ring over
//! TCP endpoints read from the table only), one table file per node shared by its ranks,
//! `--inventory` (text and JSON), impossible `--nic`/`--fabric` requests, `--nic-env`, and what
//! `--report`/`-v` say. 8-node cases run on the namespace cluster (RLAUNCH_CLUSTER_STATE) and are
//! skipped with a printed reason without it.

#[path = "common/cluster.rs"]
mod cluster;
mod common;

use cluster::{Cluster, NodeScratch};
use common::{Output, Scratch};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// tests/programs/ring_endpoints.c, compiled once into a directory the nodes also see.
fn ring_program() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs/ring_endpoints.c");
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fabrics");
        std::fs::create_dir_all(&dir).expect("creating the program dir");
        let out = dir.join(format!("ring_endpoints-{}", std::process::id()));
        let st = std::process::Command::new("cc")
            .args(["-O2", "-Wall", "-Werror", "-o"])
            .arg(&out)
            .arg(&src)
            .status()
            .expect("running cc (install a C compiler: scripts/install-deps)");
        assert!(st.success(), "compiling {} failed", src.display());
        out
    })
}

/// One `rank ...` line of the ring program.
#[derive(Debug)]
struct RankLine {
    node: u32,
    local: u32,
    nic: String,
    endpoint: String,
    table: String,
    dev_ino: String,
    files: i32,
}

fn rank_lines(out: &Output) -> BTreeMap<u32, RankLine> {
    let mut m = BTreeMap::new();
    for l in out.stdout_lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.first() != Some(&"rank") || f.len() != 18 {
            continue;
        }
        let rank: u32 = f[1].parse().unwrap();
        m.insert(
            rank,
            RankLine {
                node: f[3].parse().unwrap(),
                local: f[5].parse().unwrap(),
                nic: f[7].to_string(),
                endpoint: f[9].to_string(),
                table: f[11].to_string(),
                dev_ino: format!("{}/{}", f[13], f[15]),
                files: f[17].parse().unwrap(),
            },
        );
    }
    m
}

/// Every rank ran, the token went around, and the ranks of each node used one and the same table
/// file (same path, same device and inode) that no other node's ranks used. `one_host`: all nodes
/// share this machine's /dev/shm (`--launcher local`); otherwise each node's directory must hold
/// exactly one table of this job.
fn check_ring(out: &Output, size: u32, per_node: u32, one_host: bool) -> BTreeMap<u32, RankLine> {
    out.expect_code(0);
    assert!(
        out.stdout
            .contains(&format!("ring ok size {size} token {size}")),
        "the token did not go around:\n{out}"
    );
    let lines = rank_lines(out);
    assert_eq!(lines.len(), size as usize, "one line per rank:\n{out}");
    let mut by_node: BTreeMap<u32, Vec<&RankLine>> = BTreeMap::new();
    for l in lines.values() {
        by_node.entry(l.node).or_default().push(l);
    }
    for (node, ls) in &by_node {
        assert_eq!(ls.len() as u32, per_node, "node {node}:\n{out}");
        let first = ls[0];
        assert!(
            first.table.starts_with("/dev/shm/rlaunch-rl-")
                && first.table.ends_with(&format!("-{node}.tbl")),
            "{first:?}"
        );
        for l in ls {
            assert_eq!(
                (&l.table, &l.dev_ino),
                (&first.table, &first.dev_ino),
                "node {node}'s ranks must share one table file:\n{out}"
            );
            if !one_host {
                assert_eq!(l.files, 1, "exactly one table of this job per node:\n{out}");
            }
        }
        let locals: Vec<u32> = ls.iter().map(|l| l.local).collect();
        assert_eq!(locals.iter().copied().max().unwrap() + 1, per_node);
    }
    let tables: std::collections::BTreeSet<&String> = lines.values().map(|l| &l.table).collect();
    assert_eq!(tables.len(), by_node.len(), "one table path per node");
    if one_host {
        let files: std::collections::BTreeSet<&String> =
            lines.values().map(|l| &l.dev_ino).collect();
        assert_eq!(
            files.len(),
            by_node.len(),
            "one file per node, not one per rank:\n{out}"
        );
        assert!(
            lines
                .values()
                .all(|l| l.files >= 1 && l.files as usize <= by_node.len()),
            "{out}"
        );
    }
    lines
}

#[test]
fn ring_on_one_node_reads_only_the_table() {
    let s = Scratch::new("ring1");
    let out = s.run(["-np", "4", ring_program().to_str().unwrap()]);
    let lines = check_ring(&out, 4, 4, true);
    // Consecutive ports from one base: rank l listens on port_base + l.
    let ports: Vec<u32> = lines
        .values()
        .map(|l| l.endpoint.rsplit(':').next().unwrap().parse().unwrap())
        .collect();
    assert!(ports.windows(2).all(|w| w[1] == w[0] + 1), "{ports:?}");
    assert!(ports[0] >= 20000 && ports[3] <= 32767, "{ports:?}");
    // The daemon removes the table when the job ends.
    let table = &lines[&0].table;
    assert!(
        !Path::new(table).exists(),
        "{table} is left behind after the job"
    );
    s.assert_no_leftovers(std::time::Duration::from_secs(5));
}

#[test]
fn ring_of_one_rank_connects_to_itself() {
    let s = Scratch::new("ring-single");
    let out = s.run(["-np", "1", ring_program().to_str().unwrap()]);
    check_ring(&out, 1, 1, true);
}

#[test]
fn local_nodes_sharing_a_host_get_disjoint_ports_and_their_own_tables() {
    // Four "nodes" on this machine (--launcher local): four daemons, four tables, one port range
    // each, and the ring still closes.
    let s = Scratch::new("ring-localnodes");
    let out = s.run([
        "--launcher",
        "local",
        "-H",
        "a:3,b:3,c:3,d:3",
        "-np",
        "12",
        ring_program().to_str().unwrap(),
    ]);
    let lines = check_ring(&out, 12, 3, true);
    let mut ports: Vec<u32> = lines
        .values()
        .map(|l| l.endpoint.rsplit(':').next().unwrap().parse().unwrap())
        .collect();
    ports.sort();
    ports.dedup();
    assert_eq!(
        ports.len(),
        12,
        "two ranks were given the same port:\n{out}"
    );
}

fn cluster_hosts(s: &NodeScratch, slots: u32) -> String {
    let text: String = (1..=8).map(|i| format!("n{i} slots={slots}\n")).collect();
    s.file("hosts", &text).display().to_string()
}

fn cluster_ring(test: &str, extra: &[&str]) {
    let Some(c) = Cluster::get(test) else { return };
    let s = NodeScratch::new(test);
    let hosts = cluster_hosts(&s, 4);
    let mut args: Vec<String> = c.agent_args();
    args.extend(
        ["-f", &hosts, "-np", "32", "--report"]
            .iter()
            .map(|a| a.to_string()),
    );
    args.push(s.path("report.json").display().to_string());
    args.extend(extra.iter().map(|a| a.to_string()));
    args.push(ring_program().display().to_string());
    let out = s.run(&args);
    let lines = check_ring(&out, 32, 4, false);
    for l in lines.values() {
        assert_eq!(l.nic, "eth0");
        assert!(
            l.endpoint.starts_with(&format!("10.231.0.{}:", l.node + 1)),
            "{l:?}"
        );
    }
    let r = s.report();
    assert_eq!(r["fabric"], "tcp", "{r}");
    assert_eq!(r["fabric_detail"]["nodes"].as_array().unwrap().len(), 8);
    s.assert_no_leftovers(Some(&c), std::time::Duration::from_secs(5));
}

#[test]
fn ring_on_8_namespace_nodes() {
    cluster_ring("ring_on_8_namespace_nodes", &[]);
}

#[test]
fn ring_on_8_namespace_nodes_through_a_deep_tree() {
    // Fan-out 2: inner daemons combine their subtrees' inventories and relay the full set down.
    cluster_ring(
        "ring_on_8_namespace_nodes_through_a_deep_tree",
        &["--fanout", "2"],
    );
}

#[test]
fn inventory_of_8_namespace_nodes() {
    let Some(c) = Cluster::get("inventory_of_8_namespace_nodes") else {
        return;
    };
    let s = NodeScratch::new("inventory8");
    let hosts = cluster_hosts(&s, 1);
    let mut args = c.agent_args();
    args.extend([
        "-f".to_string(),
        hosts.clone(),
        "--fanout".into(),
        "2".into(),
        "--inventory".into(),
    ]);
    let out = s.run(&args);
    out.expect_code(0);
    let lines = out.stdout_lines();
    assert!(
        lines[0].starts_with("NODE")
            && lines[0].contains("ADDRESSES")
            && lines[0].ends_with("GID/LID"),
        "{out}"
    );
    for i in 1..=8 {
        let eth = lines
            .iter()
            .find(|l| l.starts_with(&format!("n{i} ")) && l.contains("eth0"))
            .unwrap_or_else(|| panic!("no eth0 row for n{i}:\n{out}"));
        assert!(
            eth.contains(&format!("10.231.0.{i}/24")) && eth.contains(" up "),
            "{eth}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&format!("n{i} ")) && l.contains("loopback")),
            "{out}"
        );
    }
    assert!(out.stdout.contains("all 8 nodes: verbs: "), "{out}");
    assert!(!out.stdout.contains("ring"), "no program runs");

    args.push("--json".into());
    let out = s.run(&args);
    out.expect_code(0);
    let v: serde_json::Value =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}"));
    let nodes = v["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 8);
    for (i, n) in nodes.iter().enumerate() {
        assert_eq!(n["node"], i);
        assert_eq!(n["name"], format!("n{}", i + 1));
        assert_eq!(n["hostname"], format!("n{}", i + 1));
        let eth = n["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == "eth0")
            .expect("eth0");
        assert!(
            eth["addresses"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a == &serde_json::json!(format!("10.231.0.{}/24", i + 1))),
            "{eth}"
        );
        assert_eq!(n["rdma"], serde_json::json!([]));
    }
    s.assert_no_leftovers(Some(&c), std::time::Duration::from_secs(5));
}

#[test]
fn missing_nic_on_the_cluster_is_one_line_naming_the_node() {
    let Some(c) = Cluster::get("missing_nic_on_the_cluster_is_one_line_naming_the_node") else {
        return;
    };
    let s = NodeScratch::new("badnic8");
    let hosts = cluster_hosts(&s, 1);
    let mut args = c.agent_args();
    args.extend(
        [
            "-f", &hosts, "-np", "8", "--nic", "ib0", "sh", "-c", "echo ran",
        ]
        .iter()
        .map(|a| a.to_string()),
    );
    let out = s.run(&args);
    out.expect_usage_error("--nic ib0: node n1 (#0) has no interface named ib0; it has: eth0, lo");
    s.assert_no_leftovers(Some(&c), std::time::Duration::from_secs(5));
}

#[test]
fn inventory_of_this_machine_matches_sys() {
    let s = Scratch::new("inventory-local");
    let out = s.run(["--inventory", "--json"]);
    out.expect_code(0);
    let v: serde_json::Value =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}"));
    let n = &v["nodes"][0];
    assert_eq!(n["hostname"], common::hostname());
    let mut want: Vec<String> = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    want.sort();
    let got: Vec<String> = n["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, want);
    let lo = n["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "lo")
        .unwrap();
    assert_eq!(lo["loopback"], true);
    assert!(
        lo["addresses"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("127.0.0.1/8")),
        "{lo}"
    );
    for i in n["interfaces"].as_array().unwrap() {
        let name = i["name"].as_str().unwrap();
        let mtu: u64 = std::fs::read_to_string(format!("/sys/class/net/{name}/mtu"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(i["mtu"], mtu, "{name}");
        let oper = std::fs::read_to_string(format!("/sys/class/net/{name}/operstate"))
            .unwrap()
            .trim()
            .to_string();
        assert_eq!(i["state"], oper, "{name}");
    }
    // This machine has no InfiniBand in the kernel: verbs say why, and nothing is listed.
    assert!(
        n["verbs"].as_str().unwrap().starts_with("unavailable: ")
            || n["verbs"].as_str().unwrap().starts_with("available"),
        "{n}"
    );
    let text = s.run(["--inventory"]);
    text.expect_code(0);
    assert!(
        text.stdout
            .lines()
            .any(|l| l.contains(" lo ") && l.contains("loopback") && l.contains("127.0.0.1/8")),
        "{text}"
    );
    assert!(text.stderr.is_empty(), "{text}");
}

#[test]
fn missing_nic_is_one_line_naming_the_node() {
    let s = Scratch::new("badnic");
    let out = s.run(["-np", "2", "--nic", "lo,nosuch0", "sh", "-c", "echo ran"]);
    out.expect_usage_error(&format!(
        "--nic lo,nosuch0: node {} (#0) has no interface named nosuch0; it has: ",
        common::hostname()
    ));
    s.assert_no_leftovers(std::time::Duration::from_secs(5));
}

#[test]
fn rdma_without_rdma_hardware_is_refused_with_the_reason() {
    let s = Scratch::new("nordma");
    let out = s.run(["-np", "1", "--fabric", "rdma", "true"]);
    out.expect_usage_error("--fabric rdma: node ");
    assert!(
        out.stderr.contains("has no usable RDMA port") && out.stderr.contains("--fabric tcp"),
        "{out}"
    );
}

#[test]
fn report_and_verbose_say_which_fabric_ran() {
    let s = Scratch::new("report");
    let report = s.path("r.json");
    let out = s.run([
        "-v",
        "-np",
        "2",
        "--report",
        report.to_str().unwrap(),
        "true",
    ]);
    out.expect_code(0);
    assert!(
        out.stderr
            .lines()
            .any(|l| l.starts_with("rlaunch: fabric tcp (--fabric auto); NICs: ")),
        "{out}"
    );
    let r: serde_json::Value = serde_json::from_str(&s.read("r.json")).unwrap();
    assert_eq!(r["fabric"], "tcp");
    assert_eq!(r["fabric_detail"]["requested"], "auto");
    let node = &r["fabric_detail"]["nodes"][0];
    assert_eq!(node["local_ranks"], 2);
    assert!(node["port_base"].as_u64().unwrap() >= 20000, "{r}");
    assert!(r["fabric_detail"]["gathered_ms"].as_f64().unwrap() > 0.0);

    let out = s.run([
        "-np",
        "1",
        "--fabric",
        "off",
        "--report",
        report.to_str().unwrap(),
        "true",
    ]);
    out.expect_code(0);
    let r: serde_json::Value = serde_json::from_str(&s.read("r.json")).unwrap();
    assert_eq!(r["fabric"], serde_json::Value::Null);
    assert_eq!(r["fabric_detail"]["requested"], "off");
}

#[test]
fn rank_environment_names_table_nic_and_library_variables() {
    let s = Scratch::new("nicenv");
    let show = r#"echo "$RLAUNCH_LOCAL_RANK E=${RLAUNCH_ENDPOINTS:-none} N=${RLAUNCH_NIC:-none} F=${RLAUNCH_FABRIC:-none} U=${UCX_NET_DEVICES:-none} S=${NCCL_SOCKET_IFNAME:-none} P=${FI_PROVIDER:-none}""#;
    let out = s.run([
        "-np",
        "2",
        "--nic",
        "lo",
        "--nic-env",
        "-x",
        "UCX_NET_DEVICES=mine",
        "sh",
        "-c",
        show,
    ]);
    out.expect_code(0);
    for l in out.stdout_lines() {
        assert!(
            l.contains("E=/dev/shm/rlaunch-rl-") && l.contains(" N=lo F=tcp U=mine S==lo P=tcp"),
            "{out}"
        );
    }
    // Without --nic-env only rlaunch's own variables are set.
    let out = s.run(["-np", "1", "--nic", "lo", "sh", "-c", show]);
    out.expect_code(0);
    assert!(
        out.stdout.contains(" N=lo F=tcp U=none S=none P=none"),
        "{out}"
    );
    // --fabric off: nothing at all.
    let out = s.run(["-np", "1", "--fabric", "off", "sh", "-c", show]);
    out.expect_code(0);
    assert!(out.stdout.contains("E=none N=none F=none"), "{out}");
}

#[test]
fn ranks_of_a_failed_exchange_never_start() {
    // The ranks would leave a file behind if they ran; the job must end with exit 2 and no file.
    let s = Scratch::new("nostart");
    let marker = s.path("ran");
    let out = s.run([
        "-np",
        "2",
        "--nic",
        "nosuch0",
        "sh",
        "-c",
        &format!("touch {}", marker.display()),
    ]);
    out.expect_code(2);
    assert!(
        !marker.exists(),
        "a rank ran although the NIC request was impossible"
    );
}

#[test]
fn flag_errors_are_usage_errors() {
    let s = Scratch::new("flags");
    s.run(["--fabric", "ib", "true"])
        .expect_usage_error("--fabric ib: expected auto, tcp, rdma or off");
    s.run(["--json", "true"])
        .expect_usage_error("--json only changes the output of --inventory");
    s.run(["--inventory", "hostname"])
        .expect_usage_error("--inventory runs no program; drop 'hostname'");
    s.run(["--nic", "a,,b", "true"])
        .expect_usage_error("empty NIC name");
    s.run(["--fabric", "off", "--nic-env", "true"])
        .expect_usage_error("--nic-env needs endpoint assignment");
}

#[test]
fn a_sigkilled_daemons_endpoint_table_is_removed_by_its_guard() {
    let s = Scratch::new("guardtbl");
    let code = format!("echo $RLAUNCH_ENDPOINTS > $D/table.$RLAUNCH_RANK; touch $D/ready.$RLAUNCH_RANK; {}", common::IDLE);
    let job = s.spawn(["-np", "2", "--nic", "lo", "sh", "-c", &code]);
    s.wait_files(&["ready.0".to_string(), "ready.1".to_string()], std::time::Duration::from_secs(20));
    let table = PathBuf::from(s.read("table.0").trim());
    assert!(table.starts_with("/dev/shm") && table.exists(), "{}", table.display());
    let daemons: Vec<u32> = s.leftovers().into_iter().filter(|(_, c)| c.contains("__daemon")).map(|(p, _)| p).collect();
    assert_eq!(daemons.len(), 1, "{:?}", s.leftovers());
    unsafe { libc::kill(daemons[0] as i32, libc::SIGKILL) };
    let gone = common::poll_until(std::time::Duration::from_secs(5), || !table.exists());
    assert!(gone, "{} is still there after its daemon was SIGKILLed", table.display());
    drop(job);
}
