//! A soak: many launches in a row, one after another as a job script's loop would run them, must
//! each succeed and leave nothing behind — no process, no endpoint table, no PMIx directory — and
//! must hand every rank the same descriptors (nothing leaks into ranks from earlier jobs).

mod common;

use common::Scratch;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const LAUNCHES: usize = 300;

#[test]
fn three_hundred_launches_in_a_row_leave_nothing_behind() {
    let s = Scratch::new("soak");
    // The rank shell's own descriptors, by job shape.
    let mut fds: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let mut jobs = Vec::new();
    for i in 0..LAUNCHES {
        // Two shapes: one daemon, and three daemons of one job on this machine (a tree).
        let (shape, mut args) = if i % 3 == 2 {
            ("three daemons", vec!["--launcher", "local", "--host", "soak-a,soak-b,soak-c", "--fanout", "2", "-np", "3"])
        } else {
            ("one daemon", vec!["-np", "2"])
        };
        // The shell counts its own descriptors by globbing: no pipe of its own is open meanwhile.
        args.extend(["--report", "report.json", "sh", "-c", "set -- /proc/$$/fd/*; echo $#"]);
        let o = s.run(&args);
        o.expect_code(0);
        let lines: Vec<&str> = o.stdout.lines().collect();
        assert_eq!(lines.len(), if shape == "one daemon" { 2 } else { 3 }, "launch {i}: {o}");
        assert!(o.stderr.is_empty(), "launch {i}: {o}");
        fds.entry(shape).or_default().extend(lines.iter().map(|l| l.trim().to_string()));
        let report: serde_json::Value = serde_json::from_str(&s.read("report.json")).expect("report");
        let job = report["job_id"].as_str().expect("job id").to_string();
        // What each job's daemons made is gone when rlaunch has exited.
        let left: Vec<String> = ["/dev/shm", &std::env::temp_dir().to_string_lossy()]
            .iter()
            .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(&job))
            .collect();
        assert!(left.is_empty(), "launch {i} (job {job}) left {left:?}");
        jobs.push(job);
    }
    assert_eq!(jobs.iter().collect::<BTreeSet<_>>().len(), LAUNCHES, "every job has its own id");
    for (shape, seen) in &fds {
        assert_eq!(seen.len(), 1, "{shape}: ranks saw different descriptor counts over {LAUNCHES} launches: {seen:?}");
    }
    s.assert_no_leftovers(Duration::from_secs(5));
}
