//! Multi-node behaviour of the real binary: on the 8-node namespace cluster (scripts/cluster, found
//! through RLAUNCH_CLUSTER_STATE; skipped with a printed reason without it), and on hundreds of
//! local "nodes" (`--launcher local`, no cluster needed).
//!
//! Every 8-node case runs in three tree shapes (module per case, one test per shape): fan-out 32
//! (every daemon a child of the front end), fan-out 2 (depth 3: inner daemons relay), and fan-out
//! 2 with tree spawn (inner daemons also start their children).

#[path = "common/cluster.rs"]
mod cluster;
mod common;

use cluster::{alive, listening, listening_ports, Cluster, NodeScratch, RECORD};
use common::Output;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How long after a kill everything must be gone, on every node.
const CLEANUP: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    Flat,
    Fanout2,
    Fanout2TreeSpawn,
    /// Fan-out 1 with tree spawn: 8 nodes in a chain, depth 7.
    Chain,
}

impl Shape {
    fn args(self) -> Vec<String> {
        let a: &[&str] = match self {
            Shape::Flat => &[],
            Shape::Fanout2 => &["--fanout", "2"],
            Shape::Fanout2TreeSpawn => &["--fanout", "2", "--tree-spawn"],
            Shape::Chain => &["--fanout", "1", "--tree-spawn"],
        };
        a.iter().map(|s| s.to_string()).collect()
    }

    /// The tree depth 8 nodes get in this shape.
    fn depth(self) -> u64 {
        match self {
            Shape::Flat => 1,
            Shape::Chain => 7,
            _ => 3,
        }
    }
}

/// One test per tree shape for `$case(shape)`.
macro_rules! every_shape {
    ($name:ident, $case:ident) => {
        mod $name {
            #[test]
            fn fanout_32() {
                super::$case(concat!(stringify!($name), "::fanout_32"), super::Shape::Flat)
            }
            #[test]
            fn fanout_2() {
                super::$case(concat!(stringify!($name), "::fanout_2"), super::Shape::Fanout2)
            }
            #[test]
            fn fanout_2_tree_spawn() {
                super::$case(concat!(stringify!($name), "::fanout_2_tree_spawn"), super::Shape::Fanout2TreeSpawn)
            }
        }
    };
    // A case that takes how daemons start, too: `every_shape!(name, case, Agent)`.
    ($name:ident, $case:ident, $via:ident) => {
        mod $name {
            #[test]
            fn fanout_32() {
                super::$case(concat!(stringify!($name), "::fanout_32"), super::Via::$via, super::Shape::Flat)
            }
            #[test]
            fn fanout_2() {
                super::$case(concat!(stringify!($name), "::fanout_2"), super::Via::$via, super::Shape::Fanout2)
            }
            #[test]
            fn fanout_2_tree_spawn() {
                super::$case(concat!(stringify!($name), "::fanout_2_tree_spawn"), super::Via::$via, super::Shape::Fanout2TreeSpawn)
            }
        }
    };
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    Agent,
    Ssh,
}

fn via_args(c: &Cluster, via: Via) -> Vec<String> {
    match via {
        Via::Agent => c.agent_args(),
        Via::Ssh => c.ssh_args(),
    }
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn sh(code: &str) -> Vec<String> {
    strs(&["sh", "-c", code])
}

/// A hostfile of the cluster's 8 nodes with `slots` each.
fn hostfile(s: &NodeScratch, c: &Cluster, slots: u32) -> String {
    let text: String = c.nodes.iter().map(|n| format!("{n} slots={slots}\n")).collect();
    s.file("hosts", &text).display().to_string()
}

/// `launcher options, -f hosts, shape options, --report report.json, rest...`
fn job(c: &Cluster, s: &NodeScratch, via: Via, shape: Shape, rest: &[String]) -> Vec<String> {
    let mut a = via_args(c, via);
    a.extend(strs(&["-f", &hostfile(s, c, 4), "--report", "report.json"]));
    a.extend(shape.args());
    a.extend(rest.iter().cloned());
    a
}

fn count_by_line(o: &Output) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for l in o.stdout_lines() {
        *m.entry(l.to_string()).or_insert(0) += 1;
    }
    m
}

/// Lines rlaunch itself printed (the front end's and the daemons' messages).
fn rlaunch_lines(o: &Output) -> Vec<&str> {
    o.stderr_lines().into_iter().filter(|l| l.starts_with("rlaunch")).collect()
}

/// Report checks every successful 8-node job must pass: the tree has the shape asked for, each
/// daemon ran on its own node, and every daemon got the same launch message, relayed or not.
fn check_report(s: &NodeScratch, c: &Cluster, shape: Shape, o: &Output) {
    let r = s.report();
    assert_eq!(r["outcome"], "success", "{o}\nreport: {r:#}");
    assert_eq!(r["tree_depth"].as_u64(), Some(shape.depth()), "{shape:?}: report: {r:#}");
    let nodes = r["nodes"].as_array().expect("nodes in the report");
    assert_eq!(nodes.len(), 8);
    let first = nodes[0]["launch_bytes"].as_u64().unwrap_or(0);
    assert!(first > 0, "no launch bytes recorded: {r:#}");
    for (i, n) in nodes.iter().enumerate() {
        assert_eq!(n["name"], c.nodes[i].as_str());
        assert_eq!(n["hostname"], c.nodes[i].as_str(), "{shape:?}: the daemon of {} ran elsewhere: {n:#}", c.nodes[i]);
        assert_eq!(n["state"], "done", "{n:#}");
        assert_eq!(n["launch_bytes"].as_u64(), Some(first), "{shape:?}: daemons got launch messages of different sizes: {r:#}");
    }
}

// ---------------------------------------------------------------------------------------------
// Where ranks run.

fn hostname_8x4(test: &str, via: Via, shape: Shape) {
    let Some(c) = Cluster::get(test) else { return };
    let s = NodeScratch::new("hostname");
    let o = s.run(job(&c, &s, via, shape, &strs(&["-np", "32", "hostname"])));
    o.expect_code(0);
    assert_eq!(o.stderr, "", "{shape:?}: nothing on stderr:\n{o}");
    let want: BTreeMap<String, usize> = c.nodes.iter().map(|n| (n.clone(), 4)).collect();
    assert_eq!(count_by_line(&o), want, "{via:?} {shape:?}: each node's own hostname 4 times:\n{o}");
    check_report(&s, &c, shape, &o);
    s.assert_no_leftovers(Some(&c), CLEANUP);
}

every_shape!(hostname_8x4_agent, hostname_8x4, Agent);
every_shape!(hostname_8x4_ssh, hostname_8x4, Ssh);

/// Every daemon binds its own ranks from its own topology: 2 ranks per node bound to cores, and
/// each rank's `Cpus_allowed_list` on its node is what `--report-bindings` printed for it there
/// (the report names the node the rank really ran on).
fn bound_on_every_node(test: &str, shape: Shape) {
    let Some(c) = Cluster::get(test) else { return };
    let s = NodeScratch::new("bindings");
    let code = "echo $RLAUNCH_RANK $(hostname) $(sed -n 's/^Cpus_allowed_list:[[:space:]]*//p' /proc/self/status)";
    let o = s.run(job(&c, &s, Via::Agent, shape, &[strs(&["-np", "16", "--map-by", "ppr:2:node", "--bind-to", "core", "--report-bindings"]), sh(code)].concat()));
    if o.code == Some(2) && o.stderr.contains("need 2 cores") {
        return eprintln!("SKIP: the nodes have fewer than 2 cores:\n{o}");
    }
    o.expect_code(0);
    for line in o.stdout_lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let (rank, host, cpus) = (f[0], f[1], f[2]);
        let want = format!("rlaunch: rank {rank} on {host}: bound to CPUs {cpus} ");
        assert!(o.stderr.lines().any(|l| l.starts_with(&want)), "{shape:?}: rank {rank} runs on {host} with CPUs {cpus}, which is not what was reported:\n{o}");
    }
    assert_eq!(o.stdout_lines().len(), 16, "{o}");
    // A placement no node can give is refused by the daemons (the front end cannot know their
    // CPUs): one usage error naming a node, and no rank started anywhere.
    let o = s.run(job(&c, &s, Via::Agent, shape, &[strs(&["-np", "8", "--map-by", "ppr:1:node:PE=100000"]), sh("touch $D/ran.$RLAUNCH_RANK")].concat()));
    o.expect_usage_error("PE=100000 asks for 100000 cores per rank");
    assert!(o.stderr.starts_with("rlaunch: node n"), "the line names the node:\n{o}");
    assert!((0..8).all(|r| !s.path(&format!("ran.{r}")).exists()), "a rank started:\n{o}");
    // Without the exchange the daemons refuse themselves; still one line. (In deeper trees a
    // launch that fails while daemons are still joining waits for them: not this test's matter.)
    if shape == Shape::Flat {
        let o = s.run(job(&c, &s, Via::Agent, shape, &[strs(&["--fabric", "off", "-np", "8", "--map-by", "ppr:1:node:PE=100000"]), sh("touch $D/ran.$RLAUNCH_RANK")].concat()));
        o.expect_usage_error("PE=100000 asks for 100000 cores per rank");
        assert!((0..8).all(|r| !s.path(&format!("ran.{r}")).exists()), "a rank started:\n{o}");
    }
    s.assert_no_leftovers(Some(&c), CLEANUP);
}

every_shape!(bound_on_every_node_agent, bound_on_every_node);

/// `--map-by node` deals ranks out one node at a time; `--rank-by node` also numbers them so.
/// Each rank says where it really ran, which checks the map every daemon computed on its own
/// against the front end's (in the report).
fn map_by_node(test: &str, shape: Shape) {
    let Some(c) = Cluster::get(test) else { return };
    let s = NodeScratch::new("mapbynode");
    let o =
        s.run(job(&c, &s, Via::Agent, shape, &[strs(&["-np", "12", "--map-by", "node"]), sh("echo $RLAUNCH_RANK $(hostname)")].concat()));
    o.expect_code(0);
    let ran: BTreeMap<u32, String> = o
        .stdout_lines()
        .iter()
        .map(|l| {
            let (r, h) = l.split_once(' ').unwrap_or_else(|| panic!("odd line {l:?}:\n{o}"));
            (r.parse().unwrap(), h.to_string())
        })
        .collect();
    assert_eq!(ran.len(), 12, "{o}");
    let mut per_node: Vec<usize> = c.nodes.iter().map(|n| ran.values().filter(|h| *h == n).count()).collect();
    assert_eq!(per_node, [2, 2, 2, 2, 1, 1, 1, 1], "{shape:?}: 12 ranks round-robin over 8 nodes of 4 slots:\n{o}");
    let r = s.report();
    for (rank, host) in &ran {
        assert_eq!(
            r["ranks"][*rank as usize]["host"],
            host.as_str(),
            "rank {rank} ran on {host}, not where the front end's map says: {r:#}"
        );
    }
    check_report(&s, &c, shape, &o);

    let s = NodeScratch::new("rankbynode");
    let o = s.run(job(
        &c,
        &s,
        Via::Agent,
        shape,
        &[strs(&["-np", "16", "--map-by", "node", "--rank-by", "node"]), sh("echo $RLAUNCH_RANK $(hostname)")].concat(),
    ));
    o.expect_code(0);
    per_node = vec![0; 8];
    for l in o.stdout_lines() {
        let (r, h) = l.split_once(' ').unwrap();
        let r: usize = r.parse().unwrap();
        assert_eq!(h, c.nodes[r % 8], "{shape:?}: rank {r} belongs on node {} round-robin:\n{o}", c.nodes[r % 8]);
        per_node[r % 8] += 1;
    }
    assert_eq!(per_node, [2; 8], "{o}");
    s.assert_no_leftovers(Some(&c), CLEANUP);
}
every_shape!(map_by_node_round_robin, map_by_node);

/// Two programs over the 8 nodes: ranks 0-11 (n1-n3) run one, 12-31 (n4-n8) the other.
fn mpmd(test: &str, shape: Shape) {
    let Some(c) = Cluster::get(test) else { return };
    let s = NodeScratch::new("mpmd");
    let rest = [
        strs(&["-np", "12"]),
        sh("echo A $RLAUNCH_RANK $RLAUNCH_APPNUM $RLAUNCH_SIZE $(hostname)"),
        strs(&[":", "-np", "20", "sh", "-c", "echo B $RLAUNCH_RANK $RLAUNCH_APPNUM $RLAUNCH_SIZE $(hostname)"]),
    ]
    .concat();
    let o = s.run(job(&c, &s, Via::Agent, shape, &rest));
    o.expect_code(0);
    let mut seen = [false; 32];
    for l in o.stdout_lines() {
        let f: Vec<&str> = l.split(' ').collect();
        assert_eq!(f.len(), 5, "odd line {l:?}:\n{o}");
        let rank: usize = f[1].parse().unwrap();
        let (prog, app) = if rank < 12 { ("A", "0") } else { ("B", "1") };
        assert_eq!(&f[..], &[prog, f[1], app, "32", c.nodes[rank / 4].as_str()], "{shape:?}: rank {rank}:\n{o}");
        assert!(!std::mem::replace(&mut seen[rank], true), "rank {rank} twice:\n{o}");
    }
    assert!(seen.iter().all(|&x| x), "{shape:?}: missing ranks:\n{o}");
    check_report(&s, &c, shape, &o);
    s.assert_no_leftovers(Some(&c), CLEANUP);
}
every_shape!(mpmd_across_nodes, mpmd);

// ---------------------------------------------------------------------------------------------
// The front end listens only where its daemons connect (issue 14, item 7).

#[test]
fn the_front_end_listens_only_on_the_address_its_daemons_use() {
    let Some(c) = Cluster::get("the_front_end_listens_only_on_the_address_its_daemons_use") else { return };
    let s = NodeScratch::new("fe-listen");
    let run = |extra: &[&str]| {
        let mut args = strs(extra);
        args.extend([strs(&["-np", "8"]), sh("sleep 2")].concat());
        let mut j = s.spawn(job(&c, &s, Via::Ssh, Shape::Flat, &args));
        let mut seen = Vec::new();
        common::poll_until(Duration::from_secs(20), || {
            seen = listening(j.pid() as u32);
            !seen.is_empty() || !j.running()
        });
        j.wait().expect_code(0);
        seen
    };
    let every = |addr: &str| addr.bytes().all(|b| b == b'0');
    let seen = run(&[]);
    assert!(!seen.is_empty() && !seen.iter().any(|(a, _)| every(a)), "the front end listens on every address: {seen:?}");
    // --bind-address 0.0.0.0 asks for every address, and the daemons still find it.
    let seen = run(&["--bind-address", "0.0.0.0"]);
    assert!(seen.iter().any(|(a, _)| every(a)), "{seen:?}");
    s.assert_no_leftovers(Some(&c), CLEANUP);
}

// ---------------------------------------------------------------------------------------------
// Hydra's environment options reach ranks on other nodes as Hydra's do.

#[test]
fn hydra_environment_options_per_job_and_per_context() {
    let Some(c) = Cluster::get("hydra_environment_options_per_job_and_per_context") else { return };
    let s = NodeScratch::new("hydra-env");
    let echo = |tag: &str| sh(&format!("echo {tag} ${{RL_JOB_A-none}} ${{RL_JOB_B-none}}"));
    // Four contexts of 4 ranks, one node each (4 slots per node): every rank is remote.
    let run = |global: &[&str]| {
        let rest = [
            strs(global),
            strs(&["-np", "4", "-envnone"]),
            echo("none"),
            strs(&[":", "-np", "4", "-envlist", "RL_JOB_A"]),
            echo("list"),
            strs(&[":", "-np", "4", "-envall"]),
            echo("all"),
            strs(&[":", "-np", "4"]),
            echo("plain"),
        ]
        .concat();
        let mut cmd = s.cmd(job(&c, &s, Via::Ssh, Shape::Flat, &rest));
        cmd.env("RL_JOB_A", "a").env("RL_JOB_B", "b");
        let o = common::Job::start(cmd, None).wait();
        o.expect_code(0);
        let got = count_by_line(&o);
        got.into_iter().map(|(l, n)| format!("{l} x{n}")).collect::<Vec<_>>()
    };
    assert_eq!(run(&[]), ["all a b x4", "list a none x4", "none none none x4", "plain a b x4"]);
    assert_eq!(run(&["-genvnone"]), ["all a b x4", "list a none x4", "none none none x4", "plain none none x4"]);
    assert_eq!(run(&["-genvlist", "RL_JOB_B"]), ["all a b x4", "list a none x4", "none none none x4", "plain none b x4"]);
    s.assert_no_leftovers(Some(&c), CLEANUP);
}

// ---------------------------------------------------------------------------------------------
// The launch message does not grow with the job.

fn launch_bytes(s: &NodeScratch) -> Vec<u64> {
    s.report()["nodes"].as_array().unwrap().iter().map(|n| n["launch_bytes"].as_u64().unwrap()).collect()
}

/// 64 and 4096 ranks of /bin/true, really started on the same 8 nodes (through a depth-3 tree, so
/// relayed messages count too), send every daemon the same number of bytes.
#[test]
fn launch_bytes_do_not_depend_on_the_rank_count() {
    let Some(c) = Cluster::get("launch_bytes_do_not_depend_on_the_rank_count") else { return };
    let mut per_run = Vec::new();
    for np in ["64", "4096"] {
        let s = NodeScratch::new("bytes");
        let args = job(&c, &s, Via::Agent, Shape::Fanout2, &strs(&["-np", np, "--oversubscribe", "/bin/true"]));
        // 4096 processes on a small, busy machine: allow for it.
        let o = s.run_within(args, Duration::from_secs(300));
        o.expect_code(0);
        let r = s.report();
        assert_eq!(r["size"].as_u64(), Some(np.parse().unwrap()));
        assert!(r["ranks"].as_array().unwrap().iter().all(|x| x["exit_code"] == 0), "every rank ran and exited 0");
        per_run.push(launch_bytes(&s));
    }
    assert!(per_run[0].iter().all(|&b| b > 0), "{per_run:?}");
    assert_eq!(
        per_run[0], per_run[1],
        "launch bytes per daemon (n1..n8) for 64 ranks, then 4096 ranks: the launch message must not grow with the rank count"
    );
}

/// `count` local "nodes" named node001.. with one slot each: a hostfile-only cluster whose
/// daemons all run here (`--launcher local`); node identity comes from the front end only.
fn local_nodes(s: &NodeScratch, count: u32) -> Vec<String> {
    let text: String = (1..=count).map(|i| format!("node{i:03}\n")).collect();
    let hosts = s.file("hosts", &text);
    strs(&["--launcher", "local", "-f", &hosts.display().to_string(), "--fanout", "4", "--report", "report.json"])
}

/// Runs a hostname-style job on `count` local nodes and checks it; returns the launch bytes.
fn hostname_on_local_nodes(count: u32) -> Vec<u64> {
    let s = NodeScratch::new("localnodes");
    let mut a = local_nodes(&s, count);
    a.extend(sh("echo $RLAUNCH_RANK $RLAUNCH_NODE_RANK $RLAUNCH_NUM_NODES"));
    let o = s.run_within(a, Duration::from_secs(120));
    o.expect_code(0);
    assert_eq!(o.stderr, "", "{o}");
    let mut lines: Vec<&str> = o.stdout_lines();
    lines.sort_by_key(|l| l.split(' ').next().and_then(|r| r.parse::<u32>().ok()));
    let want: Vec<String> = (0..count).map(|r| format!("{r} {r} {count}")).collect();
    assert_eq!(lines, want, "{count} nodes of one slot: rank r on node r:\n{o}");
    let r = s.report();
    let depth = r["tree_depth"].as_u64().unwrap();
    let expect_depth = if count == 256 { 4 } else { 2 };
    assert_eq!(depth, expect_depth, "{count} nodes, fan-out 4");
    let nodes = r["nodes"].as_array().unwrap();
    assert!(nodes.iter().all(|n| n["state"] == "done"), "{r:#}");
    let bytes = launch_bytes(&s);
    assert!(bytes.iter().all(|&b| b > 0 && b == bytes[0]), "every daemon, at every depth, gets the same launch message: {bytes:?}");
    s.assert_no_leftovers(None, CLEANUP);
    bytes
}

/// 256 daemons in a 4-ary tree of depth 4 on this machine run a job correctly.
#[test]
fn local_nodes_256_fanout_4_depth_4() {
    hostname_on_local_nodes(16);
    hostname_on_local_nodes(256);
}

/// From 16 to 256 nodes with regular names, each daemon's launch message stays the same size:
/// the node list must travel in a form that does not grow with the node count.
#[test]
fn launch_bytes_same_for_16_and_256_nodes() {
    let small = hostname_on_local_nodes(16);
    let large = hostname_on_local_nodes(256);
    assert_eq!(small[0], large[0], "launch bytes per daemon with 16 nodes (node001-node016), then 256 nodes (node001-node256)");
}

// ---------------------------------------------------------------------------------------------
// Authentication.

/// A frame in the wire format of src/wire.rs (len, version 1, dir, link, seq, postcard payload,
/// HMAC-SHA256 over version‖dir‖link‖seq‖payload), well-formed but keyed with `key`.
fn frame(key: &[u8; 32], dir: u8, link: u32, seq: u64, payload: &[u8]) -> Vec<u8> {
    use hmac::{Hmac, Mac};
    let mut body = vec![1u8, dir];
    body.extend_from_slice(&link.to_le_bytes());
    body.extend_from_slice(&seq.to_le_bytes());
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(&body);
    mac.update(payload);
    body.extend_from_slice(payload);
    body.extend_from_slice(&mac.finalize().into_bytes());
    let mut out = (body.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

/// `Msg::RankExit { rank: 0, pid: 1, status: RankStatus::Exited(3) }` in postcard: variant 4,
/// varints 0 and 1, variant 0, zigzag(3) = 6. Were it believed, the job would fail with status 3.
const FORGED_RANK_EXIT: [u8; 5] = [4, 0, 1, 0, 6];

/// Sends `bytes` to `addr` and waits (bounded) for the peer to close the connection, which is
/// what it does with a link whose frame it rejected.
fn send_and_wait_close(addr: std::net::SocketAddr, bytes: &[u8]) -> bool {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.write_all(bytes).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 256];
    matches!(s.read(&mut buf), Ok(0))
}

/// Forged frames sent to the front end's and to an inner daemon's listening port are rejected
/// and logged; the job runs on and ends normally.
#[test]
fn forged_frames_are_rejected_and_the_job_goes_on() {
    let Some(c) = Cluster::get("forged_frames_are_rejected_and_the_job_goes_on") else { return };
    let s = NodeScratch::new("forged");
    let code = format!(r#"{RECORD}; while [ ! -e "$D/go" ]; do sleep 0.05; done; hostname"#);
    let job_ = s.spawn(job(&c, &s, Via::Agent, Shape::Fanout2, &[strs(&["-np", "32"]), sh(&code)].concat()));
    let recs = s.wait_records(32, Duration::from_secs(30));

    let mut key = [0u8; 32];
    getrandom::getrandom(&mut key).unwrap();
    let fe_listen = listening(job_.pid() as u32);
    assert_eq!(fe_listen.len(), 1, "the front end listens on one port: {fe_listen:?}");
    // /proc/net/tcp writes an IPv4 address as the host-order hex of its network-order bytes.
    let ip = u32::from_str_radix(&fe_listen[0].0, 16).expect("an IPv4 listener").to_ne_bytes();
    let fe = std::net::SocketAddr::from((ip, fe_listen[0].1));
    // Up the edge of node 0 (n1), as its daemon would send.
    assert!(send_and_wait_close(fe, &frame(&key, 1, 0, 0, &FORGED_RANK_EXIT)), "the front end kept a link whose frame was forged");

    // n1 is an inner node at fan-out 2 (its children are n3 and n4): its daemon listens.
    let n1_daemon = recs.values().find(|(_, _, h)| h == &c.nodes[0]).map(|r| r.1).unwrap();
    let d_ports = listening_ports(n1_daemon);
    assert_eq!(d_ports.len(), 1, "the daemon of {} (pid {n1_daemon}) listens on one port: {d_ports:?}", c.nodes[0]);
    let d = std::net::SocketAddr::new(c.addr(&c.nodes[0]), d_ports[0]);
    // Up the edge of node 2 (n3), as that child would send.
    assert!(send_and_wait_close(d, &frame(&key, 1, 2, 0, &FORGED_RANK_EXIT)), "the daemon kept a link whose frame was forged");

    std::fs::write(s.path("go"), "").unwrap();
    let o = job_.wait();
    o.expect_code(0);
    let want: BTreeMap<String, usize> = c.nodes.iter().map(|n| (n.clone(), 4)).collect();
    assert_eq!(count_by_line(&o), want, "{o}");
    let lines = o.stderr_lines();
    assert_eq!(lines.len(), 2, "one line per rejected frame and nothing else:\n{o}");
    assert!(lines.iter().all(|l| l.contains("rejected") && l.contains("authentication failed")), "{o}");
    assert!(lines.iter().any(|l| l.starts_with("rlaunch: ")), "the front end says it rejected a frame:\n{o}");
    assert!(lines.iter().any(|l| l.starts_with("rlaunch daemon on node 0")), "n1's daemon says it rejected a frame:\n{o}");
    assert_eq!(s.report()["outcome"], "success");
    s.assert_no_leftovers(Some(&c), CLEANUP);
}

// ---------------------------------------------------------------------------------------------
// Failures: what is said, and what is left.

/// Starts 32 idle ranks (each a single process) and waits until all of them run.
fn idle_job(c: &Cluster, s: &NodeScratch, via: Via, shape: Shape) -> (common::Job, BTreeMap<u32, (u32, u32, String)>) {
    let code = format!("{RECORD}; exec sleep 1000");
    let j = s.spawn(job(c, s, via, shape, &[strs(&["-np", "32"]), sh(&code)].concat()));
    let recs = s.wait_records(32, Duration::from_secs(30));
    (j, recs)
}

/// Fails unless nothing of the test is alive `CLEANUP` after `since`.
fn assert_gone_by(s: &NodeScratch, c: &Cluster, since: Instant) {
    let left = (since + CLEANUP).saturating_duration_since(Instant::now());
    s.assert_no_leftovers(Some(c), left);
}

/// kill -9 of n3's daemon ends the job: one line naming n3, exit 125, and no rank or daemon left
/// anywhere (n3's ranks die with their daemon; the others are terminated).
fn kill_daemon(test: &str, shape: Shape) {
    let Some(c) = Cluster::get(test) else { return };
    let s = NodeScratch::new("killdaemon");
    let (j, recs) = idle_job(&c, &s, Via::Agent, shape);
    let n3 = &c.nodes[2];
    let daemon = recs.values().find(|(_, _, h)| h == n3).map(|r| r.1).unwrap();
    let cmd = std::fs::read_to_string(format!("/proc/{daemon}/cmdline")).unwrap_or_default();
    assert!(cmd.contains("__daemon"), "pid {daemon} (parent of a rank on {n3}) is not a daemon: {cmd:?}");
    let t = Instant::now();
    unsafe { libc::kill(daemon as i32, libc::SIGKILL) };
    let o = j.wait_within(Duration::from_secs(30));
    o.expect_code(125);
    let lines = rlaunch_lines(&o);
    assert_eq!(lines.len(), 1, "{shape:?}: a one-line report:\n{o}");
    assert!(lines[0].contains(&format!("node {n3} ")), "{shape:?}: the line names {n3}:\n{o}");
    assert_gone_by(&s, &c, t);
}
every_shape!(kill_9_of_one_daemon, kill_daemon);

/// Like `kill_daemon`, but each rank has a child of its own (a shell running a command, the
/// commonest rank there is): the daemon that would kill the rank's process group is gone, so
/// something else must.
#[test]
fn kill_9_of_one_daemon_leaves_no_rank_children() {
    let Some(c) = Cluster::get("kill_9_of_one_daemon_leaves_no_rank_children") else { return };
    let s = NodeScratch::new("killdaemonkids");
    let code = format!("{RECORD}; sleep 1000; true");
    let j = s.spawn(job(&c, &s, Via::Agent, Shape::Flat, &[strs(&["-np", "32"]), sh(&code)].concat()));
    let recs = s.wait_records(32, Duration::from_secs(30));
    let daemon = recs.values().find(|(_, _, h)| h == &c.nodes[2]).map(|r| r.1).unwrap();
    let t = Instant::now();
    unsafe { libc::kill(daemon as i32, libc::SIGKILL) };
    let o = j.wait_within(Duration::from_secs(30));
    o.expect_code(125);
    assert_gone_by(&s, &c, t);
}

/// kill -9 of the front end: every daemon and rank on every node is gone within 5 s.
fn kill_front_end(test: &str, via: Via, shape: Shape) {
    let Some(c) = Cluster::get(test) else { return };
    let s = NodeScratch::new("killfe");
    let (j, recs) = idle_job(&c, &s, via, shape);
    let daemons: Vec<u32> = recs.values().map(|r| r.1).collect();
    assert!(daemons.iter().all(|&d| alive(d)), "every daemon runs before the kill");
    let t = Instant::now();
    j.signal(libc::SIGKILL);
    assert_gone_by(&s, &c, t);
    let o = j.wait_within(Duration::from_secs(10));
    assert_eq!(o.signal, Some(libc::SIGKILL), "{o}");
}
/// Issue 14 item 4 on every node: a rank's descendants that left its process group (`setsid`, a
/// daemonizing helper whose own child is left behind) are gone when the job ends.
fn escaped_descendants(test: &str, shape: Shape) {
    let Some(c) = Cluster::get(test) else { return };
    let s = NodeScratch::new("escape");
    let code = "setsid sleep 99 & setsid sh -c 'sleep 98 & wait' </dev/null >/dev/null 2>&1 & echo forked";
    let o = s.run(job(&c, &s, Via::Ssh, shape, &[strs(&["-np", "32"]), sh(code)].concat()));
    o.expect_code(0);
    assert_eq!(o.stdout_lines().iter().filter(|l| **l == "forked").count(), 32, "{o}");
    s.assert_no_leftovers(Some(&c), Duration::from_secs(3));
}
every_shape!(escaped_descendants_are_killed_on_every_node, escaped_descendants);

/// A rank that cannot start ends the job while daemons deeper in the tree are still joining
/// (`--fabric off`: ranks start at once): nodes nobody will start any more are not waited for.
#[test]
fn a_failure_during_the_launch_does_not_wait_for_nodes_never_started() {
    let Some(c) = Cluster::get("a_failure_during_the_launch_does_not_wait_for_nodes_never_started") else { return };
    let s = NodeScratch::new("earlyfail");
    let o = s.run(job(&c, &s, Via::Ssh, Shape::Fanout2, &strs(&["--fabric", "off", "-np", "32", "/nonexistent/prog"])));
    o.expect_code(2);
    assert!(o.elapsed < Duration::from_secs(5), "took {:?}:\n{o}", o.elapsed);
    let lines = rlaunch_lines(&o);
    assert_eq!(lines.len(), 1, "one line, no node 'did not confirm':\n{o}");
    assert!(lines[0].contains("cannot start '/nonexistent/prog'"), "{o}");
    s.assert_no_leftovers(Some(&c), CLEANUP);
}

/// Issue 14 item 3: clean-up does not grow with the tree's depth; at depth 3 and 7 everything is
/// gone within 3 s of a kill -9 of the front end or of an inner daemon.
const DEEP_CLEANUP: Duration = Duration::from_secs(3);

fn deep_cleanup(test: &str, shape: Shape, kill_front_end: bool) {
    let Some(c) = Cluster::get(test) else { return };
    let s = NodeScratch::new("deepkill");
    let (j, recs) = idle_job(&c, &s, Via::Ssh, shape);
    let t = if kill_front_end {
        let t = Instant::now();
        j.signal(libc::SIGKILL);
        t
    } else {
        // n2's daemon: inner in both shapes (n4, n5 below it at fan-out 2; n3..n8 in the chain).
        let n2 = &c.nodes[1];
        let daemon = recs.values().find(|(_, _, h)| h == n2).map(|r| r.1).unwrap();
        let t = Instant::now();
        unsafe { libc::kill(daemon as i32, libc::SIGKILL) };
        let o = j.wait_within(Duration::from_secs(30));
        let took = t.elapsed();
        o.expect_code(125);
        assert!(took < DEEP_CLEANUP, "{shape:?}: rlaunch took {took:?} after the kill to end:\n{o}");
        t
    };
    let left = (t + DEEP_CLEANUP).saturating_duration_since(Instant::now());
    s.assert_no_leftovers(Some(&c), left);
}

/// The same on one machine: 8 local nodes (`--launcher local`) in a tree of fan-out `fanout`
/// with tree spawn, no cluster needed.
fn deep_cleanup_local(fanout: &str, kill_front_end: bool) {
    let s = NodeScratch::new("deepkill-local");
    let hosts = s.file("hosts", &(1..=8).map(|i| format!("node{i} slots=2\n")).collect::<String>());
    let code = "echo $RLAUNCH_NODE_RANK $PPID > $D/rec.$RLAUNCH_RANK; exec sleep 1000";
    let args = [strs(&["--launcher", "local", "-f", &hosts.display().to_string(), "--fanout", fanout, "--tree-spawn", "-np", "16"]), sh(code)].concat();
    let j = s.spawn(args);
    let recs: Vec<String> = (0..16).map(|r| format!("rec.{r}")).collect();
    assert!(common::poll_until(Duration::from_secs(30), || recs.iter().all(|f| s.path(f).exists())), "ranks did not start");
    let t = Instant::now();
    if kill_front_end {
        j.signal(libc::SIGKILL);
    } else {
        // Node 1's daemon is inner at fan-out 2 and 1 alike.
        let daemon = recs
            .iter()
            .filter_map(|f| std::fs::read_to_string(s.path(f)).ok())
            .find_map(|l| l.trim().strip_prefix("1 ").and_then(|p| p.parse::<i32>().ok()))
            .expect("a rank on node 1");
        unsafe { libc::kill(daemon, libc::SIGKILL) };
        let o = j.wait_within(Duration::from_secs(30));
        let took = t.elapsed();
        o.expect_code(125);
        assert!(took < DEEP_CLEANUP, "fan-out {fanout}: rlaunch took {took:?} after the kill to end:\n{o}");
    }
    s.assert_no_leftovers(None, (t + DEEP_CLEANUP).saturating_duration_since(Instant::now()));
}

#[test]
fn local_nodes_kill_9_cleans_up_within_3_s_at_depth_3_and_7() {
    for fanout in ["2", "1"] {
        deep_cleanup_local(fanout, true);
        deep_cleanup_local(fanout, false);
    }
}

#[test]
fn kill_9_of_the_front_end_depth_3_cleans_up_within_3_s() {
    deep_cleanup("kill_9_of_the_front_end_depth_3_cleans_up_within_3_s", Shape::Fanout2TreeSpawn, true)
}

#[test]
fn kill_9_of_the_front_end_depth_7_cleans_up_within_3_s() {
    deep_cleanup("kill_9_of_the_front_end_depth_7_cleans_up_within_3_s", Shape::Chain, true)
}

#[test]
fn kill_9_of_an_inner_daemon_depth_3_cleans_up_within_3_s() {
    deep_cleanup("kill_9_of_an_inner_daemon_depth_3_cleans_up_within_3_s", Shape::Fanout2TreeSpawn, false)
}

#[test]
fn kill_9_of_an_inner_daemon_depth_7_cleans_up_within_3_s() {
    deep_cleanup("kill_9_of_an_inner_daemon_depth_7_cleans_up_within_3_s", Shape::Chain, false)
}

every_shape!(kill_9_of_the_front_end_agent, kill_front_end, Agent);
every_shape!(kill_9_of_the_front_end_ssh, kill_front_end, Ssh);

/// A node at an unused cluster address does not answer: with a short --launch-timeout the job
/// fails fast, naming it, and leaves nothing on the nodes that did start.
fn unreachable(test: &str, shape: Shape) {
    let Some(c) = Cluster::get(test) else { return };
    let s = NodeScratch::new("unreachable");
    let dead = "10.231.0.99";
    let mut text: String = c.nodes[..7].iter().map(|n| format!("{n} slots=4\n")).collect();
    text.push_str(&format!("{dead} slots=4\n"));
    let hosts = s.file("hosts-dead", &text);
    let mut a = c.ssh_args();
    // --timeout: should the dead node be taken for a live one, the test fails soon, not at its deadline.
    a.extend(strs(&["-f", &hosts.display().to_string(), "--launch-timeout", "3", "--timeout", "15", "-np", "32"]));
    a.extend(shape.args());
    a.extend(sh("exec sleep 1000"));
    let o = s.run_within(a, Duration::from_secs(30));
    o.expect_code(125);
    assert!(o.elapsed < Duration::from_secs(3 + 10), "fails within the launch timeout, not after a hang: {o}");
    let lines = rlaunch_lines(&o);
    assert!(lines.iter().any(|l| l.contains(&format!("node {dead}:"))), "{shape:?}: a line names {dead}:\n{o}");
    assert!(!o.stderr.contains("panicked"), "{o}");
    s.assert_no_leftovers(Some(&c), CLEANUP);
}
every_shape!(unreachable_node_fails_fast, unreachable);

/// A missing daemon binary: the first node that was tried is named with the path, and every
/// other one counted (named too while few: see `HELD_LAUNCH_LINES`).
fn daemon_missing(test: &str, via: Via, shape: Shape) {
    let Some(c) = Cluster::get(test) else { return };
    let s = NodeScratch::new("nodaemon");
    let o = s.run(job(&c, &s, via, shape, &strs(&["--daemon-path", "/nonexistent", "-np", "32", "hostname"])));
    o.expect_code(125);
    assert!(o.stdout.is_empty(), "{o}");
    let lines = rlaunch_lines(&o);
    let named: Vec<&String> = c.nodes.iter().filter(|n| lines.iter().any(|l| l.contains(&format!("on node {n}:")))).collect();
    let counted: usize = lines
        .iter()
        .filter_map(|l| l.strip_prefix("rlaunch: cannot launch on ")?.split(" more nodes either").next()?.parse::<usize>().ok())
        .sum();
    // The front end starts its direct children; nodes below them are never tried.
    let tried = if shape == Shape::Flat { 8 } else { 2 };
    assert_eq!(named.len() + counted, tried, "{via:?} {shape:?}: each tried node named or counted:\n{o}");
    assert!(lines.len() <= 3, "{via:?} {shape:?}: 8 bad nodes are not 8 lines:\n{o}");
    for l in &lines {
        assert!(l.contains("/nonexistent") || !l.contains("cannot launch on node"), "the line says which path is missing: {l}\n{o}");
    }
    s.assert_no_leftovers(Some(&c), CLEANUP);
}
every_shape!(daemon_missing_agent_names_the_node, daemon_missing, Agent);
every_shape!(daemon_missing_ssh_names_the_node, daemon_missing, Ssh);

// ---------------------------------------------------------------------------------------------
// Input errors and --dry-run: nothing is started, so no cluster is needed.

fn eight_nodes(s: &NodeScratch) -> PathBuf {
    s.file("hosts", &(1..=8).map(|i| format!("n{i} slots=4\n")).collect::<String>())
}

#[test]
fn bad_hostfile_line_names_file_and_line() {
    let s = NodeScratch::new("badhosts");
    s.file("hosts", "n1 slots=4\n# comment\n\nn2:4\nuser@n3 slots=4\nn4 slots=4 max_slots=8\nn5 slot=4\n");
    let o = s.run(strs(&["-f", "hosts", "-np", "4", "hostname"]));
    o.expect_usage_error("hosts:7: expected 'slots=N', got 'slot=4'");
}

#[test]
fn more_ranks_than_slots_says_where_the_slots_are() {
    let s = NodeScratch::new("slots");
    let hosts = eight_nodes(&s).display().to_string();
    let o = s.run(strs(&["-f", &hosts, "-np", "33", "hostname"]));
    o.expect_usage_error("33");
    let line = o.stderr.trim();
    assert!(line.contains("32 slots"), "{o}");
    for i in 1..=8 {
        assert!(line.contains(&format!("n{i}: 4")), "n{i} and its slots:\n{o}");
    }
    assert!(line.contains("--oversubscribe"), "says how to allow it:\n{o}");
    let o = s.run(strs(&["-f", &hosts, "-np", "33", "--oversubscribe", "--dry-run", "hostname"]));
    o.expect_code(0);
}

/// `rlaunch: N ranks on M nodes`, then `node I NAME (slots S): ranks A-B,C PROG ARGS; ranks ...`.
fn parse_dry_run(o: &Output) -> Vec<(String, Vec<(u32, String)>)> {
    let mut nodes = Vec::new();
    for l in o.stdout_lines().iter().skip(1) {
        let (head, body) = l.split_once("): ").unwrap_or_else(|| panic!("odd line {l:?}:\n{o}"));
        let name = head.split(' ').nth(2).unwrap().to_string();
        let mut ranks = Vec::new();
        if body != "no ranks" {
            for part in body.split("; ") {
                let rest = part.strip_prefix("ranks ").unwrap_or_else(|| panic!("odd part {part:?}:\n{o}"));
                let (list, prog) = rest.split_once(' ').unwrap();
                for range in list.split(',') {
                    let (a, b) = range.split_once('-').unwrap_or((range, range));
                    for r in a.parse::<u32>().unwrap()..=b.parse::<u32>().unwrap() {
                        ranks.push((r, prog.to_string()));
                    }
                }
            }
        }
        nodes.push((name, ranks));
    }
    nodes
}

#[test]
fn dry_run_prints_the_map_per_node() {
    let s = NodeScratch::new("dryrun");
    let hosts = eight_nodes(&s).display().to_string();
    let o = s.run(strs(&["-f", &hosts, "--dry-run", "-np", "10", "--map-by", "node", "hostname", ":", "-np", "3", "uname", "-n"]));
    o.expect_code(0);
    assert_eq!(o.stderr, "", "{o}");
    assert_eq!(o.stdout_lines()[0], "rlaunch: 13 ranks on 8 nodes", "{o}");
    let map = parse_dry_run(&o);
    let names: Vec<&str> = map.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["n1", "n2", "n3", "n4", "n5", "n6", "n7", "n8"], "{o}");
    let counts: Vec<usize> = map.iter().map(|(_, r)| r.len()).collect();
    assert_eq!(counts, [2, 2, 2, 2, 2, 1, 1, 1], "13 ranks round-robin:\n{o}");
    let mut all: Vec<(u32, String)> = map.into_iter().flat_map(|(_, r)| r).collect();
    all.sort();
    let want: Vec<(u32, String)> = (0..13).map(|r| (r, if r < 10 { "hostname".to_string() } else { "uname -n".to_string() })).collect();
    assert_eq!(all, want, "every rank once, with its program:\n{o}");
    // Nothing was started: no node name here resolves, and no process of the test is left.
    s.assert_no_leftovers(None, Duration::ZERO);
}

/// Issue 14 item 12: a rank's `PWD` is its working directory on every node (never the daemon's
/// login directory), and no `SSH_*` variable of the daemon's session reaches it.
#[test]
fn ranks_get_their_own_pwd_and_no_ssh_variables() {
    let s = NodeScratch::new("pwdssh");
    std::fs::create_dir_all(s.path("work")).unwrap();
    let work = s.path("work").display().to_string();
    let mut a = local_nodes(&s, 3);
    a.extend(strs(&["--wdir", &work]));
    a.extend(sh("env > $D/env.$RLAUNCH_RANK"));
    let mut cmd = s.cmd(a);
    cmd.env("PWD", "/").env("SSH_CONNECTION", "10.0.0.1 22 10.0.0.2 22").env("SSH_CLIENT", "10.0.0.1 22 22");
    common::Job::start(cmd, None).wait_within(Duration::from_secs(60)).expect_code(0);
    for r in 0..3 {
        let text = std::fs::read_to_string(s.path(&format!("env.{r}"))).unwrap();
        assert!(text.lines().any(|l| l == format!("PWD={work}")), "rank {r}: PWD must be {work}:\n{text}");
        let ssh: Vec<&str> = text.lines().filter(|l| l.starts_with("SSH_")).collect();
        assert!(ssh.is_empty(), "rank {r}: no SSH_* variable may reach a rank: {ssh:?}");
    }
}


/// Issue 14 item 3: after kill -9 of the front end of a `--tree-spawn` tree of local daemons, a
/// lost link is passed down at once and the grace period runs once, on every node in parallel:
/// ranks that ignore SIGTERM (so that each wait lasts the whole grace period) are all gone within
/// 3 s at depth 3 and at depth 7.
fn tree_cleanup_after_front_end_kill(nodes: u32, fanout: &str, depth: u64) {
    tree_cleanup_after_kill(nodes, fanout, depth, false);
}

/// The same tree; `interior`: kill -9 of the second daemon (an interior one) instead of the front
/// end: rlaunch exits 125, and no rank below it outlives it by more than 3 s.
fn tree_cleanup_after_kill(nodes: u32, fanout: &str, depth: u64, interior: bool) {
    let s = NodeScratch::new("treekill");
    let text: String = (1..=nodes).map(|i| format!("node{i:03}\n")).collect();
    let hosts = s.file("hosts", &text);
    let mut a = strs(&["--launcher", "local", "-f", &hosts.display().to_string(), "--fanout", fanout, "--tree-spawn"]);
    a.extend(sh(&format!("trap '' TERM; {RECORD}; exec sleep 1000")));
    let j = s.spawn(a);
    let recs = s.wait_records(nodes as usize, Duration::from_secs(60));
    let daemons: std::collections::BTreeSet<u32> = recs.values().map(|r| r.1).collect();
    assert_eq!(daemons.len(), nodes as usize, "one daemon per node");
    // The tree's depth: a daemon's parent chain of daemons.
    let parent_of = |pid: u32| -> u32 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.rsplit(')').next().and_then(|r| r.split_whitespace().nth(1)).and_then(|p| p.parse().ok()).unwrap_or(0)
    };
    let deepest = daemons
        .iter()
        .map(|&d| {
            let mut n = 1;
            let mut p = parent_of(d);
            while p > 1 {
                if daemons.contains(&p) {
                    n += 1;
                }
                p = parent_of(p);
            }
            n
        })
        .max()
        .unwrap();
    assert_eq!(deepest, depth, "{nodes} nodes at --fanout {fanout}");
    let t = Instant::now();
    if interior {
        let second = recs.values().map(|r| r.1).find(|&d| daemons.contains(&parent_of(d))).unwrap();
        unsafe { libc::kill(second as i32, libc::SIGKILL) };
        j.wait_within(Duration::from_secs(30)).expect_code(125);
    } else {
        j.signal(libc::SIGKILL);
    }
    s.assert_no_leftovers(None, Duration::from_secs(3).saturating_sub(t.elapsed()));
}

#[test]
fn tree_spawn_cleanup_after_interior_daemon_kill() {
    tree_cleanup_after_kill(7, "1", 7, true);
}

#[test]
fn tree_spawn_cleanup_after_front_end_kill_depth_3() {
    tree_cleanup_after_front_end_kill(3, "1", 3);
    tree_cleanup_after_front_end_kill(7, "2", 3);
}

#[test]
fn tree_spawn_cleanup_after_front_end_kill_depth_7() {
    tree_cleanup_after_front_end_kill(7, "1", 7);
}

/// Issue 14 item 9: one node whose name does not resolve fails the job at once with one line
/// naming it; the other nodes, told to end before any launch, confirm at once and say nothing.
#[test]
fn an_unresolvable_host_gives_one_line_at_once() {
    let s = NodeScratch::new("badhost");
    let agent = s.file(
        "agent",
        "#!/bin/sh\nnode=$1; shift\ncase $node in *.invalid) echo \"cannot resolve host name $node: Name or service not known\" >&2; exit 255;; esac\nexec sh -c \"$*\"\n",
    );
    std::fs::set_permissions(&agent, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let hosts = s.file("hosts", "node001\nnode002\nnosuchhost.invalid\n");
    let t = Instant::now();
    let o = s.run_within(strs(&["--launch-agent", &agent.display().to_string(), "-f", &hosts.display().to_string(), "true"]), Duration::from_secs(30));
    o.expect_code(125);
    assert!(t.elapsed() < Duration::from_secs(5), "took {:?}: {o}", t.elapsed());
    let lines = rlaunch_lines(&o);
    assert_eq!(lines.len(), 1, "one line: {o}");
    assert!(lines[0].contains("nosuchhost.invalid") && lines[0].contains("cannot resolve"), "the line names the host and why: {o}");
    s.assert_no_leftovers(None, CLEANUP);
}

/// Issue 14 item 7: anyone who can connect must not fill the user's terminal: of many rejected
/// frames only the first is said when it comes, and one line at the end gives the count.
#[test]
fn rejected_connections_are_logged_once_then_counted() {
    let s = NodeScratch::new("rejectlog");
    let mut a = local_nodes(&s, 2);
    a.extend(sh(&format!("{RECORD}; while [ ! -e $D/go ]; do sleep 0.05; done")));
    let j = s.spawn(a);
    s.wait_records(2, Duration::from_secs(30));
    let ports = listening_ports(j.pid() as u32);
    assert_eq!(ports.len(), 1, "the front end listens on one port: {ports:?}");
    let fe = std::net::SocketAddr::from(([127, 0, 0, 1], ports[0]));
    let key = [7u8; 32];
    for _ in 0..20 {
        assert!(send_and_wait_close(fe, &frame(&key, 1, 0, 0, &FORGED_RANK_EXIT)), "the front end kept a forged link");
    }
    std::fs::write(s.path("go"), "").unwrap();
    let o = j.wait_within(Duration::from_secs(30));
    o.expect_code(0);
    let lines = o.stderr_lines();
    assert_eq!(lines.len(), 2, "the first rejection, then the count:\n{o}");
    assert!(lines[0].contains("rejected a frame"), "{o}");
    assert!(lines[1].contains("19 more"), "{o}");
}

/// Issue 14 item 7: an interior daemon listens on the address its children are told (the one its
/// parent sees it at), not on every interface.
#[test]
fn interior_daemons_listen_on_the_tree_address_only() {
    let s = NodeScratch::new("listenaddr");
    let text: String = (1..=3).map(|i| format!("node{i:03}\n")).collect();
    let hosts = s.file("hosts", &text);
    let mut a = strs(&["--launcher", "local", "-f", &hosts.display().to_string(), "--fanout", "1"]);
    a.extend(sh(&format!("{RECORD}; while [ ! -e $D/go ]; do sleep 0.05; done")));
    let j = s.spawn(a);
    let recs = s.wait_records(3, Duration::from_secs(30));
    let mut listening = 0;
    for pid in recs.values().map(|r| r.1) {
        let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.flatten().filter_map(|e| std::fs::read_link(e.path()).ok()).map(|p| p.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let tcp = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
        for l in tcp.lines().skip(1) {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() > 9 && f[3] == "0A" && inodes.contains(&format!("socket:[{}]", f[9])) {
                listening += 1;
                assert!(!f[1].starts_with("00000000:"), "daemon {pid} listens on every interface: {l}");
            }
        }
    }
    assert_eq!(listening, 2, "the two interior daemons of a chain of three listen");
    std::fs::write(s.path("go"), "").unwrap();
    j.wait_within(Duration::from_secs(30)).expect_code(0);
}
