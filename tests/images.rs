//! Recovery images (issue 17) end to end: tests/programs/iterate.c, built with gcc against
//! librlaunch_image, saves its state every iteration and loads it on start; rlaunch's daemons
//! keep the images, copy them to partner daemons, write them to --image-dir, ask for them
//! (--image-interval) and say what went wrong. Restarting ranks is the restart helper's (their
//! tests reuse iterate.c); here a second process of the same rank (a shell running iterate twice)
//! stands for a restarted one: it gets the same image socket.

#[path = "common/cluster.rs"]
mod cluster;
mod common;

use cluster::{Cluster, NodeScratch};
use common::iterate::{checksums, iterate, undisturbed};
use common::{Output, Scratch};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn report(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("the --report file")).expect("JSON")
}

fn rlaunch_lines(o: &Output) -> Vec<&str> {
    o.stderr_lines().into_iter().filter(|l| l.starts_with("rlaunch")).collect()
}

#[test]
fn a_program_using_the_api_runs_alone() {
    let out = Command::new(iterate()).args(["4", "0", "64"]).env_remove("RLAUNCH_IMAGE_FD").env_remove("RLAUNCH_RANK").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("rank 0 fresh start restarts 0"), "a load outside rlaunch finds nothing:\n{text}");
    assert!(text.contains("rank 0 standalone: not running under rlaunch"), "a save says it did nothing:\n{text}");
    assert!(text.contains("rank 0 checksum "), "{text}");
}

#[test]
fn a_second_process_of_a_rank_resumes_from_its_image_with_the_same_result() {
    let s = Scratch::new("img-resume");
    let prog = iterate().display().to_string();
    for scope in ["rank", "job"] {
        // The first process stops after 3 iterations; the second loads and runs to 6. For the job
        // scope every rank's first process ends first (and the front end has had time to say
        // that epoch 2 is complete), else the latest complete epoch may be an older one.
        let wait = "touch $D/$S.$RLAUNCH_RANK; while [ $(ls $D | grep -c ^$S) -lt 3 ]; do sleep 0.05; done; sleep 0.5";
        let script = format!("S={scope}; {prog} 3 0 200 {scope} && {wait} && {prog} 6 0 200 {scope}");
        let o = s.run(["-np", "3", "--report", "r.json", "sh", "-c", &script]);
        o.expect_code(0);
        for r in 0..3 {
            let restored = o.stdout_lines().iter().any(|l| l.starts_with(&format!("rank {r} restored epoch ")));
            assert!(restored, "rank {r} did not resume ({scope} scope):\n{o}");
        }
        {
            for r in 0..3 {
                assert!(o.stdout.contains(&format!("rank {r} restored epoch 2 ")), "{scope} scope: epoch 2 (the rank's latest, complete):\n{o}");
            }
        }
        let sums: BTreeMap<u32, String> = checksums(&o);
        assert_eq!(sums, undisturbed(3, &["6", "0", "200"]), "a resumed run ends as an undisturbed one ({scope} scope):\n{o}");
        let img = &report(&s.path("r.json"))["images"];
        let e5 = img["epochs"].as_array().unwrap().iter().find(|e| e["epoch"] == 5).unwrap_or_else(|| panic!("{img:#}"));
        assert_eq!(e5["complete"], true, "{img:#}");
        assert_eq!(e5["ranks"], 3);
        assert_eq!(img["latest_complete"], 5, "{img:#}");
    }
    s.assert_no_leftovers(std::time::Duration::from_secs(5));
}

#[test]
fn a_rank_loads_another_ranks_image_also_from_another_node() {
    let s = Scratch::new("img-neighbor");
    let prog = iterate().display().to_string();
    // Two daemons on this machine: rank 1 (node 0) reads rank 2 (node 1) through node 1's daemon.
    let o = s.run(strs(&["--launcher", "local", "-H", "a:2,b:2", "-np", "4", "--report", "r.json", &prog, "5", "0", "3000", "job", "neighbor"]));
    o.expect_code(0);
    let own = checksums(&o);
    assert_eq!(own.len(), 4, "{o}");
    for r in 0..4u32 {
        let other = (r + 1) % 4;
        let line = format!("rank {r} sees rank {other} epoch 4 checksum {}", own[&other]);
        assert!(o.stdout.contains(&line), "missing {line:?}:\n{o}");
    }
    // Two nodes: every image is also on the partner node.
    let img = &report(&s.path("r.json"))["images"];
    assert_eq!(img["copies"], 2, "{img:#}");
    let two = img["epochs"].as_array().unwrap().iter().filter(|e| e["copies"] == 2 && e["nodes"] == serde_json::json!([0, 1])).count();
    assert!(two >= 4, "the partner copies of epochs 0-3 at least (the last may still travel as the job ends): {img:#}");
}

#[test]
fn an_image_over_the_limit_is_refused_with_one_line_and_the_job_goes_on() {
    let s = Scratch::new("img-max");
    let prog = iterate().display().to_string();
    let o = s.run(strs(&["-np", "2", "--image-max", "1K", "--report", "r.json", &prog, "3", "0", "4096"]));
    o.expect_code(0);
    let lines = rlaunch_lines(&o);
    for r in 0..2 {
        let said: Vec<&&str> = lines.iter().filter(|l| l.starts_with(&format!("rlaunch: rank {r} on ")) && l.contains("exceeds --image-max 1.0 KiB")).collect();
        assert_eq!(said.len(), 1, "one line for rank {r} though it tried 3 times:\n{o}");
        assert!(o.stdout.contains(&format!("rank {r} image refused: ")), "rli_save returned RLI_ETOOBIG:\n{o}");
    }
    assert_eq!(checksums(&o).len(), 2, "the job went on:\n{o}");
    let img = &report(&s.path("r.json"))["images"];
    assert_eq!(img["epochs"], serde_json::json!([]), "{img:#}");
    assert_eq!(img["refused"][0]["count"], 3, "{img:#}");
    assert!(s.run(["--image-max", "12Q", "true"]).stderr.contains("--image-max 12Q"));
}

#[test]
fn a_later_job_starts_from_the_image_dir() {
    let s = Scratch::new("img-dir");
    let prog = iterate().display().to_string();
    let o = s.run(strs(&["-np", "2", "--image-dir", "saved", &prog, "3", "0", "300"]));
    o.expect_code(0);
    let mut files: Vec<String> = std::fs::read_dir(s.path("saved/iterate")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    files.sort();
    assert_eq!(files, ["epoch2.complete", "rank0.epoch2.img", "rank1.epoch2.img"], "the last complete epoch, written atomically; older ones removed");
    let o = s.run(strs(&["-np", "2", "--image-dir", "saved", &prog, "7", "0", "300"]));
    o.expect_code(0);
    for r in 0..2 {
        assert!(o.stdout.contains(&format!("rank {r} restored epoch 2 ")), "a new job starts from the dir:\n{o}");
    }
    assert_eq!(checksums(&o), undisturbed(2, &["7", "0", "300"]), "{o}");
    // Without the dir, a new job starts afresh.
    let o = s.run(strs(&["-np", "2", &prog, "2", "0", "300"]));
    assert_eq!(o.stdout.matches("fresh start").count(), 2, "{o}");
}

#[test]
fn interval_requests_reach_ranks_that_poll_and_name_those_that_do_not() {
    let s = Scratch::new("img-interval");
    let prog = iterate().display().to_string();
    let o = s.run(strs(&["-np", "2", "--image-interval", "0.2", "--report", "r.json", &prog, "12", "100", "64", "job", "poll"]));
    o.expect_code(0);
    assert!(o.stdout.contains("rank 0 sent an image at iteration") && o.stdout.contains("rank 1 sent an image at iteration"), "{o}");
    assert!(rlaunch_lines(&o).is_empty(), "{o}");
    let img = &report(&s.path("r.json"))["images"];
    assert!(img["requests"].as_u64().unwrap() >= 2, "{img:#}");
    assert!(img["latest_complete"].is_u64(), "the provider's images make complete epochs: {img:#}");

    let o = s.run(strs(&["-np", "2", "--image-interval", "0.2", "--image-timeout", "0.3", "--report", "r.json", &prog, "12", "100", "64", "job", "none"]));
    o.expect_code(0);
    let lines = rlaunch_lines(&o);
    for r in 0..2 {
        let said = lines.iter().filter(|l| l.starts_with(&format!("rlaunch: rank {r} on ")) && l.contains("did not answer image request")).count();
        assert_eq!(said, 1, "one line per rank that never polls:\n{o}");
    }
    assert_eq!(checksums(&o).len(), 2, "the job finishes normally:\n{o}");
    let img = &report(&s.path("r.json"))["images"];
    assert!(img["timeouts"].as_array().unwrap().len() >= 2, "{img:#}");
}

#[test]
fn image_flags_are_checked() {
    let s = Scratch::new("img-flags");
    s.run(["--image-interval", "0", "true"]).expect_usage_error("--image-interval 0");
    s.run(["--image-timeout", "-1", "true"]).expect_usage_error("--image-timeout -1");
    s.run(["--image-copies", "0", "true"]).expect_code(2);
    std::fs::write(s.path("plain"), "").unwrap();
    s.run(["--image-dir", "plain", "true"]).expect_usage_error("--image-dir plain: is not a directory");
}

#[test]
fn partner_copies_live_on_another_node_of_the_cluster() {
    let test = "partner_copies_live_on_another_node_of_the_cluster";
    let Some(c) = Cluster::get(test) else { return };
    let s = NodeScratch::new("img-partner");
    let prog = iterate().display().to_string();
    let hosts = s.file("hosts", &c.nodes.iter().take(3).map(|n| format!("{n} slots=2\n")).collect::<String>());
    let mut args = c.agent_args();
    // Images of two pieces (1 MiB each on the tree links).
    args.extend(strs(&["-f", hosts.to_str().unwrap(), "--fanout", "2", "-np", "6", "--report", "report.json", &prog, "3", "0", "1500000"]));
    let o = s.run(&args);
    o.expect_code(0);
    assert_eq!(checksums(&o).len(), 6, "{o}");
    let r = s.report();
    let img = &r["images"];
    assert_eq!(img["copies"], 2, "{img:#}");
    let hosts_of = |e: &serde_json::Value| -> Vec<String> { e["nodes"].as_array().unwrap().iter().map(|n| r["nodes"][n.as_u64().unwrap() as usize]["hostname"].as_str().unwrap().to_string()).collect() };
    let e0 = &img["epochs"][0];
    assert_eq!(e0["copies"], 2, "every image of epoch 0 on two nodes: {img:#}");
    assert_eq!(hosts_of(e0), c.nodes[..3].to_vec(), "held by the daemons of three different hosts: {img:#}");
}

/// The rank side of [`the_rust_client_saves_and_loads_under_rlaunch`]: rlaunch runs this test
/// binary, filtered to this test, as each rank.
#[test]
#[ignore = "run as a rank by the_rust_client_saves_and_loads_under_rlaunch"]
fn rust_rank() {
    use rlaunch_image::client::{self, Client};
    use rlaunch_image::proto::Scope;
    let mut c = Client::from_env().expect("a usable RLAUNCH_IMAGE_FD").expect("run under rlaunch");
    let rank: u32 = std::env::var("RLAUNCH_RANK").unwrap().parse().unwrap();
    let first = c.load(Scope::Rank).unwrap();
    c.save(7, format!("state of {rank}").as_bytes()).unwrap();
    let mine = c.load(Scope::Rank).unwrap().expect("the image just saved");
    let too_big = c.save(8, &vec![0; 4096]);
    println!(
        "RUST rank {rank} first {:?} loaded {} {:?} restarts {} too big {}",
        first.map(|i| i.epoch),
        mine.epoch,
        String::from_utf8_lossy(&mine.data),
        client::restarts(),
        matches!(too_big, Err(client::Error::TooBig { len: 4096 }))
    );
}

#[test]
fn the_rust_client_saves_and_loads_under_rlaunch() {
    let s = Scratch::new("img-rust");
    let exe = std::env::current_exe().unwrap().display().to_string();
    let o = s.run(strs(&["-np", "2", "--image-max", "1K", &exe, "--ignored", "--exact", "rust_rank", "--nocapture", "--test-threads", "1"]));
    o.expect_code(0);
    for r in 0..2 {
        let line = format!("RUST rank {r} first None loaded 7 \"state of {r}\" restarts 0 too big true");
        assert!(o.stdout.contains(&line), "missing {line:?}:\n{o}");
    }
}
