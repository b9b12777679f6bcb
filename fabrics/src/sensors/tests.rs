//! Fixture trees for every built-in sensor (read → engine, the way a daemon runs them), and the
//! state machine's hysteresis as properties.

use super::*;
use proptest::prelude::*;
use std::path::Path;

/// A fixture root: files written relative to it.
struct Root(tempfile::TempDir);

impl Root {
    fn new() -> Root {
        Root(tempfile::tempdir().unwrap())
    }
    fn path(&self) -> &Path {
        self.0.path()
    }
    fn put(&self, rel: &str, text: &str) {
        let p = self.0.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    fn remove(&self, rel: &str) {
        let p = self.0.path().join(rel);
        if p.is_dir() {
            std::fs::remove_dir_all(p).unwrap();
        } else {
            std::fs::remove_file(p).unwrap();
        }
    }
    /// A plain healthy node: one thermal zone, one memory controller, 8 GiB, eth0, 4 CPUs idle.
    fn healthy() -> Root {
        let r = Root::new();
        r.put("sys/class/thermal/thermal_zone0/type", "x86_pkg_temp\n");
        r.put("sys/class/thermal/thermal_zone0/temp", "45000\n");
        r.put("sys/class/thermal/thermal_zone0/trip_point_0_type", "active\n");
        r.put("sys/class/thermal/thermal_zone0/trip_point_0_temp", "50000\n");
        r.put("sys/class/thermal/thermal_zone0/trip_point_1_type", "hot\n");
        r.put("sys/class/thermal/thermal_zone0/trip_point_1_temp", "90000\n");
        r.put("sys/class/thermal/thermal_zone0/trip_point_2_type", "critical\n");
        r.put("sys/class/thermal/thermal_zone0/trip_point_2_temp", "100000\n");
        r.put("sys/devices/system/edac/mc/mc0/ce_count", "7\n");
        r.put("sys/devices/system/edac/mc/mc0/ue_count", "0\n");
        r.put("proc/meminfo", "MemTotal:        8388608 kB\nMemFree:         1000000 kB\nMemAvailable:    4194304 kB\n");
        r.put("sys/class/net/eth0/operstate", "up\n");
        r.put("sys/class/net/eth0/carrier", "1\n");
        r.put("sys/class/net/eth0/statistics/rx_errors", "0\n");
        r.put("sys/class/net/eth0/statistics/tx_errors", "0\n");
        r.put("sys/class/net/eth0/statistics/rx_dropped", "3\n");
        r.put("proc/loadavg", "0.50 0.40 0.30 1/200 1234\n");
        r.put("sys/devices/system/cpu/online", "0-3\n");
        r
    }
}

fn nics() -> Vec<String> {
    vec!["eth0".to_string()]
}

/// One sample of the fixture through the engine.
fn sample(e: &mut Engine, r: &Root) -> Vec<Change> {
    e.sample(&read_builtins(r.path(), Some(&nics())))
}

fn states(changes: &[Change]) -> Vec<(&str, State)> {
    changes.iter().map(|c| (c.sensor.as_str(), c.state)).collect()
}

#[test]
fn a_healthy_node_says_nothing() {
    let r = Root::healthy();
    let mut e = Engine::new(Thresholds::default());
    for _ in 0..5 {
        assert_eq!(sample(&mut e, &r), vec![]);
    }
    let all: Vec<_> = e.states().collect();
    assert_eq!(all, vec![("edac:mc0", State::Ok), ("load", State::Ok), ("memory", State::Ok), ("nic:eth0", State::Ok), ("thermal:thermal_zone0", State::Ok)]);
}

#[test]
fn temperature_crossing_a_trip_point() {
    let r = Root::healthy();
    let mut e = Engine::new(Thresholds::default());
    assert_eq!(sample(&mut e, &r), vec![]);
    // 84.9 °C: more than 5 °C below the hot trip point.
    r.put("sys/class/thermal/thermal_zone0/temp", "84900\n");
    assert_eq!(sample(&mut e, &r), vec![]);
    r.put("sys/class/thermal/thermal_zone0/temp", "85000\n");
    let c = sample(&mut e, &r);
    assert_eq!(states(&c), vec![("thermal:thermal_zone0", State::Degrading)]);
    assert_eq!(c[0].reading, Some(85.0));
    assert!(c[0].reason.contains("x86_pkg_temp") && c[0].reason.contains("90.0 °C"), "{}", c[0].reason);
    r.put("sys/class/thermal/thermal_zone0/temp", "100000\n");
    assert_eq!(states(&sample(&mut e, &r)), vec![("thermal:thermal_zone0", State::Failed)]);
    // Cooling down: failed stays until SETTLE samples agree, then the last one's state.
    r.put("sys/class/thermal/thermal_zone0/temp", "60000\n");
    for _ in 1..SETTLE {
        assert_eq!(sample(&mut e, &r), vec![]);
    }
    assert_eq!(states(&sample(&mut e, &r)), vec![("thermal:thermal_zone0", State::Ok)]);
}

#[test]
fn the_margin_flag_moves_the_degrading_point_and_passive_trips_count() {
    let r = Root::healthy();
    r.put("sys/class/thermal/thermal_zone0/temp", "80000\n");
    let mut e = Engine::new(Thresholds { temp_margin_c: 10.0, ..Thresholds::default() });
    assert_eq!(states(&sample(&mut e, &r)), vec![("thermal:thermal_zone0", State::Degrading)]);
    let r = Root::healthy();
    r.put("sys/class/thermal/thermal_zone0/trip_point_0_type", "passive\n");
    r.put("sys/class/thermal/thermal_zone0/temp", "50000\n");
    let mut e = Engine::new(Thresholds::default());
    let c = sample(&mut e, &r);
    assert_eq!(states(&c), vec![("thermal:thermal_zone0", State::Degrading)]);
    assert!(c[0].reason.contains("throttled"), "{}", c[0].reason);
}

#[test]
fn edac_counts_rising() {
    let r = Root::healthy();
    let mut e = Engine::new(Thresholds { edac_ce: 3, ..Thresholds::default() });
    // 7 corrected errors before the job: the baseline, not a reason.
    assert_eq!(sample(&mut e, &r), vec![]);
    r.put("sys/devices/system/edac/mc/mc0/ce_count", "9\n");
    assert_eq!(sample(&mut e, &r), vec![]);
    r.put("sys/devices/system/edac/mc/mc0/ce_count", "10\n");
    let c = sample(&mut e, &r);
    assert_eq!(states(&c), vec![("edac:mc0", State::Degrading)]);
    assert_eq!(c[0].reading, Some(3.0));
    // Counted since the start: no new errors do not make the memory good again.
    for _ in 0..2 * SETTLE {
        assert_eq!(sample(&mut e, &r), vec![]);
    }
    r.put("sys/devices/system/edac/mc/mc0/ue_count", "1\n");
    let c = sample(&mut e, &r);
    assert_eq!(states(&c), vec![("edac:mc0", State::Failed)]);
    assert!(c[0].reason.contains("uncorrected"), "{}", c[0].reason);
}

#[test]
fn memory_falling_below_the_floor() {
    let r = Root::healthy();
    let mut e = Engine::new(Thresholds { mem_floor: "1G".parse().unwrap(), ..Thresholds::default() });
    assert_eq!(sample(&mut e, &r), vec![]);
    r.put("proc/meminfo", "MemTotal:        8388608 kB\nMemAvailable:    1048576 kB\n");
    assert_eq!(sample(&mut e, &r), vec![], "exactly at the floor is not below it");
    r.put("proc/meminfo", "MemTotal:        8388608 kB\nMemAvailable:    1048575 kB\n");
    let c = sample(&mut e, &r);
    assert_eq!(states(&c), vec![("memory", State::Degrading)]);
    assert_eq!(c[0].reading, Some(1023.0));
    r.put("proc/meminfo", "MemTotal:        8388608 kB\nMemAvailable:    200000 kB\n");
    assert_eq!(states(&sample(&mut e, &r)), vec![("memory", State::Failed)]);
    // The default floor is 5% of MemTotal.
    let mut e = Engine::new(Thresholds::default());
    r.put("proc/meminfo", "MemTotal:        8388608 kB\nMemAvailable:    420000 kB\n");
    assert_eq!(sample(&mut e, &r), vec![]);
    r.put("proc/meminfo", "MemTotal:        8388608 kB\nMemAvailable:    419000 kB\n");
    assert_eq!(states(&sample(&mut e, &r)), vec![("memory", State::Degrading)]);
}

#[test]
fn link_going_down_and_errors_rising() {
    let r = Root::healthy();
    let mut e = Engine::new(Thresholds { nic_errors: 10, ..Thresholds::default() });
    assert_eq!(sample(&mut e, &r), vec![]);
    // Errors and drops between two samples, not since boot.
    r.put("sys/class/net/eth0/statistics/rx_dropped", "12\n");
    assert_eq!(sample(&mut e, &r), vec![], "9 new");
    r.put("sys/class/net/eth0/statistics/rx_errors", "4\n");
    r.put("sys/class/net/eth0/statistics/tx_errors", "6\n");
    let c = sample(&mut e, &r);
    assert_eq!(states(&c), vec![("nic:eth0", State::Degrading)]);
    assert_eq!(c[0].reading, Some(10.0));
    r.put("sys/class/net/eth0/operstate", "down\n");
    r.remove("sys/class/net/eth0/carrier");
    let c = sample(&mut e, &r);
    assert_eq!(states(&c), vec![("nic:eth0", State::Failed)]);
    assert!(c[0].reason.contains("link down (operstate down)"), "{}", c[0].reason);
    // No carrier with an operstate that does not say so.
    let r = Root::healthy();
    let mut e = Engine::new(Thresholds::default());
    r.put("sys/class/net/eth0/carrier", "0\n");
    r.put("sys/class/net/eth0/operstate", "unknown\n");
    assert_eq!(states(&sample(&mut e, &r)), vec![("nic:eth0", State::Failed)]);
}

#[test]
fn an_rdma_port_leaving_active_is_down() {
    let r = Root::healthy();
    r.put("sys/class/infiniband/mlx5_0/ports/1/state", "4: ACTIVE\n");
    r.put("sys/class/infiniband/mlx5_0/ports/1/counters/symbol_error", "0\n");
    let mut e = Engine::new(Thresholds::default());
    let nics = vec!["mlx5_0:1".to_string()];
    assert_eq!(e.sample(&read_builtins(r.path(), Some(&nics))), vec![]);
    r.put("sys/class/infiniband/mlx5_0/ports/1/state", "1: DOWN\n");
    let c = e.sample(&read_builtins(r.path(), Some(&nics)));
    assert_eq!(states(&c), vec![("nic:mlx5_0:1", State::Failed)]);
    assert!(c[0].reason.contains("1: DOWN"), "{}", c[0].reason);
}

#[test]
fn load_far_above_the_cpus() {
    let r = Root::healthy();
    let mut e = Engine::new(Thresholds::default());
    r.put("proc/loadavg", "16.00 3.0 1.0 1/200 1234\n");
    assert_eq!(sample(&mut e, &r), vec![], "4 × 4 CPUs is the limit");
    r.put("proc/loadavg", "16.01 3.0 1.0 1/200 1234\n");
    let c = sample(&mut e, &r);
    assert_eq!(states(&c), vec![("load", State::Degrading)]);
    assert_eq!(c[0].reading, Some(16.01));
    let mut e = Engine::new(Thresholds { load_factor: 5.0, ..Thresholds::default() });
    assert_eq!(sample(&mut e, &r), vec![]);
}

#[test]
fn a_missing_source_says_so_once_and_stays_unknown() {
    let r = Root::healthy();
    r.remove("sys/devices/system/edac");
    r.remove("sys/class/thermal/thermal_zone0/temp");
    let mut e = Engine::new(Thresholds::default());
    let c = sample(&mut e, &r);
    assert_eq!(states(&c), vec![("thermal:thermal_zone0", State::Unknown), ("edac", State::Unknown)]);
    assert!(c[1].reason.contains("sys/devices/system/edac/mc") && c[1].reason.contains("no EDAC driver"), "{}", c[1].reason);
    assert!(c[0].reason.starts_with("cannot read ") && c[0].reason.ends_with("(os error 2)"), "{}", c[0].reason);
    for _ in 0..10 {
        assert_eq!(sample(&mut e, &r), vec![]);
    }
    // A source that goes away later: unknown after it stayed away SETTLE samples.
    r.remove("proc/meminfo");
    for _ in 1..SETTLE {
        assert_eq!(sample(&mut e, &r), vec![]);
    }
    assert_eq!(states(&sample(&mut e, &r)), vec![("memory", State::Unknown)]);
    // A zone without a trip point has nothing to compare with.
    let r = Root::healthy();
    for i in 0..3 {
        r.remove(&format!("sys/class/thermal/thermal_zone0/trip_point_{i}_type"));
    }
    let mut e = Engine::new(Thresholds::default());
    assert_eq!(states(&sample(&mut e, &r)), vec![("thermal:thermal_zone0", State::Unknown)]);
    // The NIC sensor waits until the job's NICs are known, and says when there is none.
    let mut e = Engine::new(Thresholds::default());
    assert!(e.sample(&read_builtins(r.path(), None)).iter().all(|c| !c.sensor.starts_with("nic")));
    assert_eq!(states(&e.sample(&read_builtins(r.path(), Some(&[])))), vec![("nic", State::Unknown)]);
    assert_eq!(states(&e.sample(&read_builtins(r.path(), Some(&["eth9".to_string()])))), vec![("nic:eth9", State::Unknown)]);
}

#[test]
fn a_flapping_sensor_changes_once() {
    let r = Root::healthy();
    let mut e = Engine::new(Thresholds::default());
    let mut changes = Vec::new();
    for i in 0..20 {
        let t = if i % 2 == 1 { "88000\n" } else { "60000\n" };
        r.put("sys/class/thermal/thermal_zone0/temp", t);
        changes.extend(sample(&mut e, &r));
    }
    assert_eq!(states(&changes), vec![("thermal:thermal_zone0", State::Degrading)]);
    r.put("sys/class/thermal/thermal_zone0/temp", "60000\n");
    for _ in 0..SETTLE {
        changes.extend(sample(&mut e, &r));
    }
    assert_eq!(states(&changes), vec![("thermal:thermal_zone0", State::Degrading), ("thermal:thermal_zone0", State::Ok)]);
}

#[test]
fn user_sensor_exit_statuses() {
    let mut e = Engine::new(Thresholds::default());
    let cmd = |outcome: Outcome, line: &str| vec![Reading::Command { command: "check".into(), outcome, line: line.into() }];
    assert_eq!(e.sample(&cmd(Outcome::Exited(0), "fine")), vec![]);
    let c = e.sample(&cmd(Outcome::Exited(1), "GPU 3 at 91 C"));
    assert_eq!(c, vec![Change { sensor: "command:check".into(), state: State::Degrading, reading: Some(1.0), reason: "GPU 3 at 91 C".into() }]);
    assert_eq!(states(&e.sample(&cmd(Outcome::Exited(2), ""))), vec![("command:check", State::Failed)]);
    let mut e = Engine::new(Thresholds::default());
    let c = e.sample(&cmd(Outcome::TimedOut, ""));
    assert_eq!(states(&c), vec![("command:check", State::Unknown)]);
    assert!(c[0].reason.contains("killed"));
    let mut e = Engine::new(Thresholds::default());
    let c = e.sample(&cmd(Outcome::Exited(7), "huh"));
    assert_eq!((c[0].state, c[0].reason.as_str()), (State::Unknown, "exit status 7 (0 ok, 1 degrading, 2 failed): huh"));
}

#[test]
fn memory_floor_values() {
    assert_eq!("5%".parse::<MemFloor>(), Ok(MemFloor::Percent(5.0)));
    assert_eq!("512M".parse::<MemFloor>(), Ok(MemFloor::Bytes(512 << 20)));
    assert_eq!("2g".parse::<MemFloor>(), Ok(MemFloor::Bytes(2 << 30)));
    assert_eq!("1.5K".parse::<MemFloor>(), Ok(MemFloor::Bytes(1536)));
    assert_eq!("4096".parse::<MemFloor>(), Ok(MemFloor::Bytes(4096)));
    for bad in ["", "x", "120%", "-1G", "5P", "%"] {
        assert!(bad.parse::<MemFloor>().is_err(), "{bad}");
    }
}

fn any_state() -> impl Strategy<Value = State> {
    prop_oneof![Just(State::Ok), Just(State::Degrading), Just(State::Failed), Just(State::Unknown)]
}

proptest! {
    /// Bad news changes the state at the sample it arrives; anything else only after SETTLE
    /// samples in a row that disagree with the state without being worse, and then to the last.
    #[test]
    fn the_machine_changes_exactly_when_it_should(samples in proptest::collection::vec(any_state(), 1..80)) {
        let mut m = Machine::default();
        let mut state: Option<State> = None;
        let mut streak = 0u32;
        for (i, &s) in samples.iter().enumerate() {
            let got = m.step(s);
            match state {
                None => {
                    prop_assert_eq!(got, (s != State::Ok).then_some(s), "first sample {}", i);
                    state = Some(s);
                }
                Some(cur) if s == cur => {
                    prop_assert_eq!(got, None);
                    streak = 0;
                }
                Some(cur) if s.severity() > cur.severity() => {
                    prop_assert_eq!(got, Some(s), "worse at sample {}", i);
                    state = Some(s);
                    streak = 0;
                }
                Some(_) => {
                    streak += 1;
                    if streak >= SETTLE {
                        prop_assert_eq!(got, Some(s), "settled at sample {}", i);
                        state = Some(s);
                        streak = 0;
                    } else {
                        prop_assert_eq!(got, None, "sample {} before settling", i);
                    }
                }
            }
            prop_assert_eq!(m.state(), state);
        }
    }

    /// A reading that alternates between two states changes the state at most once after the
    /// first sample, whatever the pair and however long it flaps.
    #[test]
    fn flapping_changes_at_most_once(a in any_state(), b in any_state(), n in 2usize..60) {
        let mut m = Machine::default();
        m.step(a);
        let changes = (1..n).filter(|i| m.step(if i % 2 == 1 { b } else { a }).is_some()).count();
        prop_assert!(changes <= 1, "{} changes", changes);
    }

    /// A steady input is the state after at most SETTLE samples, and then nothing changes.
    #[test]
    fn a_steady_input_settles(history in proptest::collection::vec(any_state(), 0..20), s in any_state()) {
        let mut m = Machine::default();
        history.iter().for_each(|&h| { m.step(h); });
        for _ in 0..SETTLE {
            m.step(s);
        }
        prop_assert_eq!(m.state(), Some(s));
        for _ in 0..10 {
            prop_assert_eq!(m.step(s), None);
        }
    }

    /// Whatever the memory readings, the engine never reports a state the sensor already has,
    /// and its reported states follow the floor.
    #[test]
    fn memory_changes_are_real(avail in proptest::collection::vec(0u64..2_000_000, 1..40)) {
        let mut e = Engine::new(Thresholds { mem_floor: MemFloor::Bytes(1 << 30), ..Thresholds::default() });
        let mut last = State::Ok;
        for a in avail {
            for c in e.sample(&[Reading::Memory { available_kib: a, total_kib: 4_000_000 }]) {
                prop_assert_ne!(c.state, last);
                let want = if a * 1024 < (1 << 28) { State::Failed } else if a * 1024 < (1 << 30) { State::Degrading } else { State::Ok };
                prop_assert_eq!(c.state, want);
                last = c.state;
            }
        }
    }

    /// A hotter zone is never in a better state, whatever its trip points and the margin.
    #[test]
    fn hotter_is_never_better(a in 0i64..150_000, b in 0i64..150_000, hot in 1i64..150_000, crit in 1i64..150_000, passive in proptest::option::of(1i64..150_000), margin in 0.0f64..20.0) {
        let mut trips = vec![(Trip::Hot, hot), (Trip::Critical, crit)];
        trips.extend(passive.map(|p| (Trip::Passive, p)));
        let (lo, hi) = (a.min(b), a.max(b));
        let s = |t: i64| thermal("z", "", t, &trips, margin).state;
        prop_assert!(s(lo).severity() <= s(hi).severity(), "{} °mC: {:?}, {} °mC: {:?}", lo, s(lo), hi, s(hi));
        prop_assert_eq!(s(hi.max(crit)), State::Failed);
    }

    /// NIC error counters: rising by fewer than the limit per sample never degrades a link that
    /// is up, whatever the total.
    #[test]
    fn slow_nic_errors_stay_ok(steps in proptest::collection::vec(0u64..10, 1..40)) {
        let mut e = Engine::new(Thresholds { nic_errors: 10, ..Thresholds::default() });
        let mut total = 1_000_000u64;
        for s in steps {
            total += s;
            let c = e.sample(&[Reading::Nic { name: "eth0".into(), link: Link::Up, why_down: String::new(), errors: total }]);
            prop_assert_eq!(c, vec![]);
        }
    }
}
