//! Node sensors (`--sensors`, `--sensor CMD`) through the real binary: a user sensor that turns
//! degrading, one that hangs, a built-in sensor reading a fixture tree (the test-only
//! `RLAUNCH_TEST_SENSOR_ROOT`), and on the namespace cluster a sensor that is degrading on one
//! node only. The engine's decisions themselves are tested in `fabrics::sensors`.

#[path = "common/cluster.rs"]
mod cluster;
mod common;

use cluster::{Cluster, NodeScratch};
use common::{script, Output, Scratch};
use std::time::Duration;

/// rlaunch's own lines about sensors.
fn sensor_lines(o: &Output) -> Vec<&str> {
    o.stderr_lines().into_iter().filter(|l| l.starts_with("rlaunch: node ") && l.contains(": sensor ")).collect()
}

/// The report's sensor changes of node `i`: (sensor, state, reading, reason).
fn changes(report: &serde_json::Value, i: usize) -> Vec<(String, String, Option<f64>, String)> {
    report["nodes"][i]["sensors"]["changes"]
        .as_array()
        .expect("a changes list")
        .iter()
        .map(|c| (c["sensor"].as_str().unwrap().to_string(), c["state"].as_str().unwrap().to_string(), c["reading"].as_f64(), c["reason"].as_str().unwrap().to_string()))
        .collect()
}

fn report(s: &Scratch) -> serde_json::Value {
    serde_json::from_str(&s.read("report.json")).expect("the report is JSON")
}

/// A user sensor that says ok for about a second, then degrading (and marks when it did, so that
/// the rank can end once the change had time to travel).
#[test]
fn a_user_sensor_turning_degrading_is_reported_once() {
    let s = Scratch::new("sensor-degrading");
    let sensor = script(
        &s.dir,
        "fan.sh",
        r#"now=$(date +%s%N)
[ -f "$D/t0" ] || echo $now > "$D/t0"
if [ $(( (now - $(cat "$D/t0")) / 1000000 )) -lt 1000 ]; then echo "fans fine"; exit 0; fi
touch "$D/degraded"
echo "fan 2 stopped on $RLAUNCH_NODE_NAME"
exit 1"#,
    );
    let rank = r#"i=0; while [ ! -f "$D/degraded" ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done; sleep 1"#;
    let o = s.run(["-np", "2", "--sensor", sensor.to_str().unwrap(), "--sensor-interval", "0.1", "--report", "report.json", "sh", "-c", rank]);
    o.expect_code(0);
    let name = format!("command:{}", sensor.display());
    let lines = sensor_lines(&o);
    assert_eq!(lines.len(), 1, "one line for one change: {lines:?}\n{}", o.stderr);
    assert!(lines[0].contains(&format!("sensor {name} degrading (reading 1): fan 2 stopped on ")), "{}", lines[0]);
    assert!(lines[0].ends_with("no action (rlaunch does not move ranks off a node yet)"), "{}", lines[0]);
    let r = report(&s);
    let got = changes(&r, 0);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!((got[0].0.as_str(), got[0].1.as_str(), got[0].2), (name.as_str(), "degrading", Some(1.0)));
    assert!(got[0].3.starts_with("fan 2 stopped on "), "{got:?}");
    assert_eq!(r["nodes"][0]["sensors"]["health"], "degrading");
    assert_eq!(r["nodes"][0]["sensors"]["health_changes"][0]["sensor"], name.as_str());
    // The job itself went on: every rank ran to its end.
    assert_eq!(r["outcome"], "success", "{r}");
    s.assert_no_leftovers(Duration::from_secs(5));
}

/// A sensor that flaps between ok and degrading on every sample changes state once: bad news at
/// once, a return only after several samples in a row agree.
#[test]
fn a_flapping_user_sensor_changes_state_once() {
    let s = Scratch::new("sensor-flapping");
    let sensor = script(
        &s.dir,
        "flap.sh",
        r#"n=$(cat "$D/n" 2>/dev/null || echo 0); echo $((n+1)) > "$D/n"
if [ $((n % 2)) -eq 1 ]; then echo "flap $n"; exit 1; fi
echo steady; exit 0"#,
    );
    // The sensor rewrites its counter: a read may find it empty.
    let rank = r#"i=0; while [ $i -lt 400 ]; do n=$(cat "$D/n" 2>/dev/null); [ "${n:-0}" -ge 12 ] && break; sleep 0.05; i=$((i+1)); done; sleep 0.5"#;
    let o = s.run(["-np", "1", "-v", "--sensor", sensor.to_str().unwrap(), "--sensor-interval", "0.1", "--report", "report.json", "sh", "-c", rank]);
    o.expect_code(0);
    let samples: u32 = s.read("n").trim().parse().unwrap();
    assert!(samples >= 12, "{samples} samples");
    let got = changes(&report(&s), 0);
    assert_eq!(got.iter().map(|c| c.1.as_str()).collect::<Vec<_>>(), vec!["degrading"], "{samples} samples: {got:?}");
    assert_eq!(got[0].3, "flap 1");
    assert_eq!(sensor_lines(&o).len(), 1, "{}", o.stderr);
}

/// A sensor that never answers is killed after its interval, counts as unknown (said once, with
/// -v), and neither holds up the job nor survives it.
#[test]
fn a_hung_user_sensor_is_killed_and_unknown() {
    let s = Scratch::new("sensor-hung");
    let hang = format!("echo started; exec sleep 300 # {}", s.mark);
    let o = s.run(["-np", "1", "-v", "--sensor", &hang, "--sensor-interval", "0.3", "--report", "report.json", "sh", "-c", "sleep 2; echo done"]);
    o.expect_code(0);
    assert_eq!(o.stdout_lines(), vec!["done"]);
    // On time: the job is its rank's 2 s plus the start and end, not held by the sensor.
    assert!(o.elapsed < Duration::from_secs(15), "took {:?}", o.elapsed);
    let lines = sensor_lines(&o);
    assert_eq!(lines.len(), 1, "said once: {lines:?}");
    assert!(lines[0].contains(&format!("sensor command:{hang} unknown: no answer within the sensor interval; killed")), "{}", lines[0]);
    let got = changes(&report(&s), 0);
    assert_eq!(got.iter().map(|c| c.1.as_str()).collect::<Vec<_>>(), vec!["unknown"], "{got:?}");
    // Killed each interval (its process group), and nothing is left once the job ended.
    let sleepers = std::process::Command::new("pgrep").args(["-f", &format!("sleep 300 # {}", s.mark)]).output().expect("pgrep").stdout;
    assert!(sleepers.is_empty(), "sensor processes left: {}", String::from_utf8_lossy(&sleepers));
    s.assert_no_leftovers(Duration::from_secs(5));
}

/// The built-in thermal sensor reads the fixture tree named by the test-only variable: the rank
/// heats the zone to within 5 °C of its critical trip point, then past it.
#[test]
fn a_thermal_zone_in_a_fixture_tree_crosses_its_trip_points() {
    let s = Scratch::new("sensor-thermal");
    let root = s.path("root");
    let zone = root.join("sys/class/thermal/thermal_zone0");
    std::fs::create_dir_all(&zone).unwrap();
    for (f, v) in [("type", "x86_pkg_temp"), ("temp", "50000"), ("trip_point_0_type", "critical"), ("trip_point_0_temp", "100000")] {
        std::fs::write(zone.join(f), format!("{v}\n")).unwrap();
    }
    std::fs::create_dir_all(root.join("proc")).unwrap();
    std::fs::write(root.join("proc/meminfo"), "MemTotal: 8000000 kB\nMemAvailable: 6000000 kB\n").unwrap();
    let temp = zone.join("temp");
    let rank = format!("sleep 0.5; echo 96000 > {t}; sleep 0.6; echo 101000 > {t}; sleep 0.6", t = temp.display());
    let mut cmd = s.cmd(["-np", "1", "-v", "--sensors", "--sensor-interval", "0.1", "--report", "report.json", "sh", "-c", &rank]);
    cmd.env("RLAUNCH_TEST_SENSOR_ROOT", &root);
    let o = common::Job::start(cmd, None).wait();
    o.expect_code(0);
    let got = changes(&report(&s), 0);
    let thermal: Vec<_> = got.iter().filter(|c| c.0 == "thermal:thermal_zone0").map(|c| (c.1.as_str(), c.2)).collect();
    assert_eq!(thermal, vec![("degrading", Some(96.0)), ("failed", Some(101.0))], "{got:?}");
    let lines = sensor_lines(&o);
    assert!(lines.iter().any(|l| l.contains("sensor thermal:thermal_zone0 degrading (reading 96): thermal_zone0 (x86_pkg_temp) at 96.0 °C, within 5 °C of its trip point 100.0 °C")), "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("sensor thermal:thermal_zone0 failed (reading 101)")), "{lines:?}");
    // Sources the fixture lacks are said once each, and memory (present, plenty) not at all.
    let edac: Vec<_> = lines.iter().filter(|l| l.contains("sensor edac unknown: ") && l.contains("no EDAC driver")).collect();
    assert_eq!(edac.len(), 1, "{lines:?}");
    assert_eq!(lines.iter().filter(|l| l.contains("sensor load unknown: cannot read ")).count(), 1, "{lines:?}");
    assert!(!lines.iter().any(|l| l.contains("sensor memory")), "{lines:?}");
    // Without -v the unknown sources stay quiet; the failed zone still has its line.
    std::fs::write(&temp, "50000\n").unwrap();
    let mut cmd = s.cmd(["-np", "1", "--sensors", "--sensor-interval", "0.1", "sh", "-c", &rank]);
    cmd.env("RLAUNCH_TEST_SENSOR_ROOT", &root);
    let o = common::Job::start(cmd, None).wait();
    o.expect_code(0);
    let lines = sensor_lines(&o);
    assert!(lines.iter().all(|l| l.contains("thermal:thermal_zone0")) && lines.len() == 2, "{lines:?}");
}

#[test]
fn sensor_flags_are_checked() {
    let s = Scratch::new("sensor-flags");
    s.run(["--sensor-interval", "1", "true"]).expect_usage_error("--sensor-interval: no sensor is on");
    s.run(["--sensors", "--sensor-interval", "0", "true"]).expect_usage_error("--sensor-interval 0: expected seconds");
    s.run(["--sensors", "--sensor-mem-floor", "lots", "true"]).expect_usage_error("--sensor-mem-floor");
    s.run(["--sensor-load-factor", "2", "true"]).expect_usage_error("--sensor-load-factor: a threshold of the built-in sensors, which are off; add --sensors");
}

/// On the namespace cluster: a user sensor that is degrading on the third node only; the report
/// names that node, and no other node has a change.
#[test]
fn a_sensor_degrading_on_one_node_of_the_cluster() {
    let Some(c) = Cluster::get("a_sensor_degrading_on_one_node_of_the_cluster") else { return };
    let s = NodeScratch::new("sensor-n3");
    let third = &c.nodes[2];
    let sensor = s.file("node.sh", &format!("if [ \"$RLAUNCH_NODE_NAME\" = {third} ] && [ \"$(hostname)\" = {third} ]; then echo \"$(hostname) is hot\"; exit 1; fi\necho fine\n"));
    let hosts: String = c.nodes.iter().map(|n| format!("{n} slots=2\n")).collect();
    let hostfile = s.file("hosts", &hosts);
    let mut args = c.ssh_args();
    let sensor_cmd = format!("sh {}", sensor.display());
    args.extend(
        // Fan-out 2: the change of the third node is relayed by an inner daemon.
        ["-f", hostfile.to_str().unwrap(), "--fanout", "2", "-np", "16", "--sensor", &sensor_cmd, "--sensor-interval", "0.2", "--report", "report.json", "sh", "-c", "sleep 2"]
            .iter()
            .map(|a| a.to_string()),
    );
    let o = s.run(args);
    o.expect_code(0);
    let lines = sensor_lines(&o);
    assert_eq!(lines.len(), 1, "{lines:?}\n{}", o.stderr);
    assert!(lines[0].starts_with(&format!("rlaunch: node {third}: sensor command:{sensor_cmd} degrading (reading 1): {third} is hot;")), "{}", lines[0]);
    let r = s.report();
    for (i, n) in c.nodes.iter().enumerate() {
        let got = changes(&r, i);
        if n == third {
            assert_eq!(got.iter().map(|c| c.1.as_str()).collect::<Vec<_>>(), vec!["degrading"], "{got:?}");
            assert_eq!(r["nodes"][i]["sensors"]["health"], "degrading");
        } else {
            assert_eq!(got, vec![], "node {n}");
        }
    }
    s.assert_no_leftovers(Some(&c), Duration::from_secs(5));
}
