//! Issue 13: ranks are really bound. Each rank prints its own `Cpus_allowed_list` from
//! `/proc/self/status`; it must equal what `--report-bindings` printed for it, for several policies.
//! Expectations are derived from this machine's CPUs (the tests run on 2 CPUs and on larger hosts).

mod common;

use common::Scratch;
use std::collections::BTreeMap;

/// The CPU ids in a kernel list (`0-2,5`).
fn cpu_list(s: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => out.extend(a.parse::<u32>().unwrap()..=b.parse::<u32>().unwrap()),
            None => out.push(part.parse().unwrap()),
        }
    }
    out
}

/// This test's own allowed CPUs (the daemon inherits them).
fn own_cpus() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).unwrap().trim().to_string()
}

/// Cores among this process's CPUs (distinct thread-sibling sets).
fn own_cores() -> usize {
    let mut cores = std::collections::BTreeSet::new();
    for c in cpu_list(&own_cpus()) {
        let sib = std::fs::read_to_string(format!("/sys/devices/system/cpu/cpu{c}/topology/thread_siblings_list")).unwrap_or_else(|_| c.to_string());
        cores.insert(sib.trim().to_string());
    }
    cores.len()
}

/// Runs a job whose ranks print `RANK CPUS`, with `--report-bindings`; returns (reported, actual)
/// CPU lists per rank, and whether each rank was reported bound.
fn run(s: &Scratch, opts: &[&str]) -> (BTreeMap<u32, (String, bool)>, BTreeMap<u32, String>) {
    let mut args: Vec<&str> = opts.to_vec();
    args.extend(["--report-bindings", "sh", "-c", "echo $RLAUNCH_RANK $(sed -n 's/^Cpus_allowed_list:[[:space:]]*//p' /proc/self/status)"]);
    let out = s.run(&args);
    out.expect_code(0);
    let mut reported = BTreeMap::new();
    for line in out.stderr.lines() {
        let rest = line.strip_prefix("rlaunch: rank ").unwrap_or_else(|| panic!("unexpected stderr line: {line}"));
        let (rank, rest) = rest.split_once(" on ").unwrap();
        let (_, what) = rest.split_once(": ").unwrap();
        let (bound, list) = if let Some(r) = what.strip_prefix("bound to CPUs ") {
            (true, r.split(' ').next().unwrap())
        } else {
            (false, what.strip_prefix("not bound (CPUs ").unwrap().split(')').next().unwrap())
        };
        assert!(what.ends_with(']'), "a picture ends the line: {line}");
        reported.insert(rank.parse().unwrap(), (list.to_string(), bound));
    }
    let actual = out.stdout.lines().map(|l| l.split_once(' ').unwrap()).map(|(r, c)| (r.parse().unwrap(), c.to_string())).collect();
    (reported, actual)
}

fn assert_same(reported: &BTreeMap<u32, (String, bool)>, actual: &BTreeMap<u32, String>, n: u32) {
    assert_eq!(reported.len(), n as usize, "one report line per rank: {reported:?}");
    for (r, cpus) in actual {
        assert_eq!(&reported[r].0, cpus, "rank {r}: reported {:?}, runs on {cpus}", reported[r]);
    }
    assert_eq!(actual.len(), n as usize);
}

#[test]
fn bind_to_core_gives_each_rank_its_own_core() {
    if own_cores() < 2 {
        return eprintln!("skipped: fewer than 2 cores here");
    }
    let s = Scratch::new("bind-core");
    let (reported, actual) = run(&s, &["-np", "2", "--bind-to", "core"]);
    assert_same(&reported, &actual, 2);
    let (a, b) = (cpu_list(&actual[&0]), cpu_list(&actual[&1]));
    assert!(a.iter().all(|c| !b.contains(c)), "ranks share CPUs: {a:?} {b:?}");
    assert!(reported.values().all(|(_, bound)| *bound));
    assert_ne!(actual[&0], own_cpus(), "a bound rank does not keep every CPU");
}

#[test]
fn default_binds_to_cores_when_ranks_fit_and_not_otherwise() {
    let s = Scratch::new("bind-default");
    let (reported, actual) = run(&s, &["-np", "1"]);
    assert_same(&reported, &actual, 1);
    assert!(reported[&0].1, "one rank fits: bound");
    let many = own_cores() as u32 + 1;
    let (reported, actual) = run(&s, &["-np", &many.to_string()]);
    assert_same(&reported, &actual, many);
    assert!(actual.values().all(|c| *c == own_cpus()), "more ranks than cores: unbound, every CPU: {actual:?}");
    assert!(reported.values().all(|(_, bound)| !bound));
}

#[test]
fn bind_to_none_leaves_every_cpu() {
    let s = Scratch::new("bind-none");
    let (reported, actual) = run(&s, &["-np", "2", "--bind-to", "none"]);
    assert_same(&reported, &actual, 2);
    assert!(actual.values().all(|c| *c == own_cpus()));
}

#[test]
fn pe_binds_a_rank_to_that_many_cores() {
    if own_cores() < 2 {
        return eprintln!("skipped: fewer than 2 cores here");
    }
    let s = Scratch::new("bind-pe");
    let (reported, actual) = run(&s, &["-np", "1", "--map-by", "slot:PE=2"]);
    assert_same(&reported, &actual, 1);
    assert!(cpu_list(&actual[&0]).len() >= 2, "{actual:?}");
    // --cpus-per-proc is the same request; the dry run shows the same line.
    let (reported2, _) = run(&s, &["-np", "1", "--cpus-per-proc", "2"]);
    assert_eq!(reported2, reported);
    let dry = s.run(["--dry-run", "-np", "1", "--cpus-per-proc", "2", "--report-bindings", "true"]);
    dry.expect_code(0);
    assert!(dry.stdout.contains(&format!(": bound to CPUs {} ", actual[&0])), "{}", dry.stdout);
}

#[test]
fn more_ranks_than_cores_with_bind_to_core_is_one_usage_error() {
    let s = Scratch::new("bind-too-many");
    let n = own_cores() + 1;
    let out = s.run(["-np", &n.to_string(), "--bind-to", "core", "sh", "-c", "touch $D/ran.$RLAUNCH_RANK"]);
    out.expect_usage_error("--bind-to none");
    assert!(out.stderr.contains(&format!("{n} ranks with --bind-to core need {n} cores")), "{}", out.stderr);
    assert!(std::fs::read_dir(&s.dir).unwrap().next().is_none(), "no rank may start");
    let out = s.run(["-np", "1", "--map-by", ":PE=100000", "true"]);
    out.expect_usage_error("PE=100000 asks for 100000 cores per rank");
}

/// Hydra's `-bind-to user:...`: each local rank gets its list in turn; a CPU the daemon may not use
/// is one line naming the rank, the CPUs and what is allowed.
#[test]
fn user_cpu_lists_bind_and_cpus_outside_the_allowed_set_are_refused() {
    let s = Scratch::new("bind-user");
    let first = cpu_list(&own_cpus())[0];
    let (reported, actual) = run(&s, &["-np", "2", "-bind-to", &format!("user:{first}")]);
    assert_same(&reported, &actual, 2);
    assert!(actual.values().all(|c| *c == first.to_string()), "{actual:?}");
    let out = s.run(["-np", "1", "--bind-to", "user:100000", "true"]);
    out.expect_usage_error(&format!("rank 0: --bind-to user:100000 includes CPUs 100000, outside those rlaunch may use here ({})", own_cpus()));
}

#[test]
fn gpus_requested_where_there_are_none_is_one_usage_error() {
    let has_gpu = std::fs::read_dir("/sys/bus/pci/devices").is_ok_and(|mut d| {
        d.any(|e| e.is_ok_and(|e| std::fs::read_to_string(e.path().join("class")).is_ok_and(|c| c.starts_with("0x03"))))
    });
    if has_gpu {
        return eprintln!("skipped: this machine has a display device");
    }
    let s = Scratch::new("bind-gpu");
    s.run(["-np", "1", "--gpus-per-rank", "1", "true"]).expect_usage_error("this node has no GPU");
}
