//! Node sensors: what a daemon learns about the health of its node while the job runs.
//!
//! Two halves, kept apart so that the decision is tested without a machine:
//! - [`read`] does the I/O: it reads the built-in sources (thermal zones, EDAC counters,
//!   `/proc/meminfo`, the job's NICs, `/proc/loadavg`) under a root that tests point at a fixture
//!   tree, and returns raw [`Reading`]s;
//! - [`Engine`] is pure: readings in, state changes out. It keeps one [`Machine`] per sensor (the
//!   hysteresis) and the baselines of the counters (EDAC, NIC errors), and classifies each reading
//!   against the [`Thresholds`].
//!
//! A user sensor (a command run by the daemon) is classified here too, from its exit status; the
//! daemon runs it.

pub mod read;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

pub use read::read_builtins;

/// What a sensor says of its node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum State {
    Ok,
    /// Still working, but heading for a failure (hot, memory errors, short of memory, NIC errors).
    Degrading,
    /// Not fit to run the job (past a critical trip point, uncorrected memory errors, link down).
    Failed,
    /// The source cannot be read, or a user sensor gave no answer: nothing is known.
    Unknown,
}

impl State {
    /// Ok < Degrading < Failed; Unknown says nothing and ranks with Ok.
    fn severity(self) -> u8 {
        match self {
            State::Ok | State::Unknown => 0,
            State::Degrading => 1,
            State::Failed => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            State::Ok => "ok",
            State::Degrading => "degrading",
            State::Failed => "failed",
            State::Unknown => "unknown",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How many samples in a row must agree before a sensor returns to a better state (or to
/// unknown). Bad news counts at once; a flapping reading therefore changes the state once and
/// stays there until it has been steady for this long.
pub const SETTLE: u32 = 3;

/// The state machine of one sensor, with its hysteresis.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Machine {
    /// `None` until the first sample.
    state: Option<State>,
    /// Consecutive samples that disagree with `state` without being worse.
    streak: u32,
}

impl Machine {
    pub fn state(&self) -> Option<State> {
        self.state
    }

    /// One sample; the new state when it changes. The first sample sets the state and counts as
    /// a change unless it is `Ok` (a healthy node is the default, nothing to say).
    pub fn step(&mut self, sample: State) -> Option<State> {
        let Some(cur) = self.state else {
            self.state = Some(sample);
            return (sample != State::Ok).then_some(sample);
        };
        if sample == cur {
            self.streak = 0;
            return None;
        }
        if sample.severity() > cur.severity() {
            self.state = Some(sample);
            self.streak = 0;
            return Some(sample);
        }
        self.streak += 1;
        if self.streak < SETTLE {
            return None;
        }
        self.state = Some(sample);
        self.streak = 0;
        Some(sample)
    }
}

/// The limits of the built-in sensors. Each has a flag (`--sensor-*`) and a documented default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    /// Degrading within this many °C of a zone's lowest `hot` or `critical` trip point.
    pub temp_margin_c: f64,
    /// Degrading when MemAvailable is below this floor; failed below a quarter of it.
    pub mem_floor: MemFloor,
    /// Degrading when the 1-minute load average is above this many times the online CPUs.
    pub load_factor: f64,
    /// Degrading once this many corrected memory errors were counted since the first sample.
    pub edac_ce: u64,
    /// Degrading when a NIC counts this many new errors and drops between two samples.
    pub nic_errors: u64,
}

/// Every value comes from a flag that refuses NaN.
impl Eq for Thresholds {}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds { temp_margin_c: 5.0, mem_floor: MemFloor::Percent(5.0), load_factor: 4.0, edac_ce: 10, nic_errors: 100 }
    }
}

/// `--sensor-mem-floor`: an amount, or a share of MemTotal.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum MemFloor {
    Bytes(u64),
    Percent(f64),
}

impl Eq for MemFloor {}

impl MemFloor {
    fn bytes(self, total: u64) -> u64 {
        match self {
            MemFloor::Bytes(b) => b,
            MemFloor::Percent(p) => (total as f64 * p / 100.0) as u64,
        }
    }
}

impl std::str::FromStr for MemFloor {
    type Err = String;
    /// `5%`, `512M`, `2G`, `1048576` (bytes); K, M, G, T are powers of 1024.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let bad = || format!("'{s}': expected a percentage of the node's memory (5%) or an amount (512M, 2G)");
        if let Some(p) = s.strip_suffix('%') {
            let p: f64 = p.trim().parse().map_err(|_| bad())?;
            return if (0.0..=100.0).contains(&p) { Ok(MemFloor::Percent(p)) } else { Err(bad()) };
        }
        let (num, mult) = match s.char_indices().last() {
            Some((i, c)) if c.is_ascii_alphabetic() => {
                let m = match c.to_ascii_uppercase() {
                    'K' => 1u64 << 10,
                    'M' => 1 << 20,
                    'G' => 1 << 30,
                    'T' => 1 << 40,
                    _ => return Err(bad()),
                };
                (&s[..i], m)
            }
            _ => (s, 1),
        };
        let n: f64 = num.trim().parse().map_err(|_| bad())?;
        if !(n >= 0.0 && n.is_finite()) {
            return Err(bad());
        }
        Ok(MemFloor::Bytes((n * mult as f64) as u64))
    }
}

impl fmt::Display for MemFloor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemFloor::Percent(p) => write!(f, "{p}% of MemTotal"),
            MemFloor::Bytes(b) => write!(f, "{} MiB", b >> 20),
        }
    }
}

/// A thermal zone's trip point kinds that matter here (`active` ones only start fans).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trip {
    /// The kernel throttles the CPUs from here on.
    Passive,
    Hot,
    Critical,
}

/// How a NIC's link looks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    Up,
    Down,
}

/// How a user sensor's command ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Exited(i32),
    /// Still running after its interval: killed.
    TimedOut,
    /// It could not be started, or ended without a status (killed by a signal): why.
    Broken(String),
}

/// One raw reading of one source. `sensor` names are stable across samples: they key the state.
#[derive(Clone, Debug, PartialEq)]
pub enum Reading {
    /// `thermal:ZONE`: temperature and trip points, in millidegrees Celsius.
    Thermal { zone: String, kind: String, temp_mc: i64, trips: Vec<(Trip, i64)> },
    /// `edac:MC`: corrected and uncorrected error counts of a memory controller.
    Edac { mc: String, ce: u64, ue: u64 },
    /// `memory`: from /proc/meminfo, in KiB.
    Memory { available_kib: u64, total_kib: u64 },
    /// `nic:NAME`: link state and the sum of its error and drop counters.
    Nic { name: String, link: Link, why_down: String, errors: u64 },
    /// `load`: the 1-minute load average and the online CPUs.
    Load { load1: f64, cpus: u32 },
    /// `command:CMD`: a user sensor's answer (first line of its stdout).
    Command { command: String, outcome: Outcome, line: String },
    /// A source that cannot be read.
    Missing { sensor: String, why: String },
}

impl Reading {
    pub fn sensor(&self) -> String {
        match self {
            Reading::Thermal { zone, .. } => format!("thermal:{zone}"),
            Reading::Edac { mc, .. } => format!("edac:{mc}"),
            Reading::Memory { .. } => "memory".into(),
            Reading::Nic { name, .. } => format!("nic:{name}"),
            Reading::Load { .. } => "load".into(),
            Reading::Command { command, .. } => format!("command:{command}"),
            Reading::Missing { sensor, .. } => sensor.clone(),
        }
    }
}

/// A sensor's state changed: what travels up the tree and into the report.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub sensor: String,
    pub state: State,
    /// The number the state was decided on (°C, MiB available, errors, load, exit status), when
    /// there is one.
    pub reading: Option<f64>,
    /// One line for a person.
    pub reason: String,
}

/// One sample's verdict on one sensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub state: State,
    pub reading: Option<f64>,
    pub reason: String,
}

/// Every sensor of one node: readings in, changes out. No I/O.
#[derive(Debug, Default)]
pub struct Engine {
    thresholds: Thresholds,
    machines: BTreeMap<String, Machine>,
    /// First values of the counters that count from the start (EDAC).
    baselines: BTreeMap<String, (u64, u64)>,
    /// Previous value of the counters that count per interval (NIC errors).
    previous: BTreeMap<String, u64>,
}

impl Engine {
    pub fn new(thresholds: Thresholds) -> Engine {
        Engine { thresholds, ..Engine::default() }
    }

    /// One round of readings (every source once); the sensors whose state changed. A sensor seen
    /// in an earlier round and absent from this one counts as missing.
    pub fn sample(&mut self, readings: &[Reading]) -> Vec<Change> {
        let mut seen = std::collections::BTreeSet::new();
        let mut verdicts: Vec<(String, Verdict)> = Vec::new();
        for r in readings {
            let sensor = r.sensor();
            if !seen.insert(sensor.clone()) {
                continue;
            }
            let v = self.classify(&sensor, r);
            verdicts.push((sensor, v));
        }
        let gone: Vec<String> = self.machines.keys().filter(|k| !seen.contains(*k)).cloned().collect();
        for sensor in gone {
            verdicts.push((sensor, Verdict { state: State::Unknown, reading: None, reason: "no longer present".into() }));
        }
        let mut changes = Vec::new();
        for (sensor, v) in verdicts {
            let m = self.machines.entry(sensor.clone()).or_default();
            if let Some(state) = m.step(v.state) {
                // The verdict of this sample explains a new state reached at once; after a settle
                // the last sample is the one that agrees with it.
                changes.push(Change { sensor, state, reading: v.reading, reason: v.reason });
            }
        }
        changes
    }

    /// The state of every sensor sampled so far.
    pub fn states(&self) -> impl Iterator<Item = (&str, State)> {
        self.machines.iter().filter_map(|(k, m)| Some((k.as_str(), m.state()?)))
    }

    fn classify(&mut self, sensor: &str, r: &Reading) -> Verdict {
        let t = &self.thresholds;
        match r {
            Reading::Thermal { zone, kind, temp_mc, trips } => thermal(zone, kind, *temp_mc, trips, t.temp_margin_c),
            Reading::Edac { mc, ce, ue } => {
                let base = self.baselines.entry(sensor.to_string()).or_insert((*ce, *ue));
                // Counters reset by hand (`reset_counters`) start a new baseline.
                if *ce < base.0 || *ue < base.1 {
                    *base = (*ce, *ue);
                }
                let (dce, due) = (ce - base.0, ue - base.1);
                if due > 0 {
                    Verdict { state: State::Failed, reading: Some(due as f64), reason: format!("{mc}: {due} uncorrected memory error(s) since the job started") }
                } else if dce >= t.edac_ce.max(1) {
                    Verdict { state: State::Degrading, reading: Some(dce as f64), reason: format!("{mc}: {dce} corrected memory errors since the job started (limit {})", t.edac_ce.max(1)) }
                } else {
                    Verdict { state: State::Ok, reading: Some(dce as f64), reason: format!("{mc}: {dce} corrected memory errors since the job started") }
                }
            }
            Reading::Memory { available_kib, total_kib } => {
                let (avail, floor) = (available_kib * 1024, t.mem_floor.bytes(total_kib * 1024));
                let mib = (avail >> 20) as f64;
                let text = format!("MemAvailable {} MiB, floor {} MiB ({})", avail >> 20, floor >> 20, t.mem_floor);
                let state = if avail < floor / 4 {
                    State::Failed
                } else if avail < floor {
                    State::Degrading
                } else {
                    State::Ok
                };
                Verdict { state, reading: Some(mib), reason: text }
            }
            Reading::Nic { name, link, why_down, errors } => {
                let prev = self.previous.insert(sensor.to_string(), *errors);
                // A counter that went back (driver reload) starts again from its new value.
                let new = prev.map_or(0, |p| errors.saturating_sub(p));
                match link {
                    Link::Down => Verdict { state: State::Failed, reading: Some(new as f64), reason: format!("{name}: link down ({why_down})") },
                    Link::Up if new >= t.nic_errors.max(1) => Verdict {
                        state: State::Degrading,
                        reading: Some(new as f64),
                        reason: format!("{name}: {new} new errors and drops since the last sample (limit {})", t.nic_errors.max(1)),
                    },
                    Link::Up => Verdict { state: State::Ok, reading: Some(new as f64), reason: format!("{name}: link up, {new} new errors and drops") },
                }
            }
            Reading::Load { load1, cpus } => {
                let limit = t.load_factor * (*cpus).max(1) as f64;
                let state = if *load1 > limit { State::Degrading } else { State::Ok };
                Verdict { state, reading: Some(*load1), reason: format!("load average {load1:.2} on {cpus} CPUs (limit {limit:.1})") }
            }
            Reading::Command { outcome, line, .. } => command(outcome, line),
            Reading::Missing { why, .. } => Verdict { state: State::Unknown, reading: None, reason: why.clone() },
        }
    }
}

fn thermal(zone: &str, kind: &str, temp_mc: i64, trips: &[(Trip, i64)], margin_c: f64) -> Verdict {
    let c = |mc: i64| mc as f64 / 1000.0;
    let name = if kind.is_empty() { zone.to_string() } else { format!("{zone} ({kind})") };
    let lowest = |want: &[Trip]| trips.iter().filter(|(k, _)| want.contains(k)).map(|&(_, t)| t).min();
    let critical = lowest(&[Trip::Critical]);
    let hot = lowest(&[Trip::Hot, Trip::Critical]);
    let passive = lowest(&[Trip::Passive]);
    let temp = c(temp_mc);
    let reading = Some(temp);
    if let Some(crit) = critical.filter(|&t| temp_mc >= t) {
        return Verdict { state: State::Failed, reading, reason: format!("{name} at {temp:.1} °C, at or above its critical trip point {:.1} °C", c(crit)) };
    }
    if let Some(h) = hot.filter(|&t| temp >= c(t) - margin_c) {
        return Verdict { state: State::Degrading, reading, reason: format!("{name} at {temp:.1} °C, within {margin_c} °C of its trip point {:.1} °C", c(h)) };
    }
    if let Some(p) = passive.filter(|&t| temp_mc >= t) {
        return Verdict { state: State::Degrading, reading, reason: format!("{name} at {temp:.1} °C, at or above its passive trip point {:.1} °C (the CPUs are throttled)", c(p)) };
    }
    if hot.is_none() && passive.is_none() {
        return Verdict { state: State::Unknown, reading, reason: format!("{name} has no passive, hot or critical trip point to compare with") };
    }
    Verdict { state: State::Ok, reading, reason: format!("{name} at {temp:.1} °C") }
}

/// A user sensor's exit status: 0 ok, 1 degrading, 2 failed, anything else unknown.
fn command(outcome: &Outcome, line: &str) -> Verdict {
    let said = |what: &str| if line.is_empty() { what.to_string() } else { line.to_string() };
    match outcome {
        Outcome::Exited(0) => Verdict { state: State::Ok, reading: Some(0.0), reason: said("exit status 0") },
        Outcome::Exited(1) => Verdict { state: State::Degrading, reading: Some(1.0), reason: said("exit status 1") },
        Outcome::Exited(2) => Verdict { state: State::Failed, reading: Some(2.0), reason: said("exit status 2") },
        Outcome::Exited(c) => Verdict { state: State::Unknown, reading: Some(*c as f64), reason: format!("exit status {c} (0 ok, 1 degrading, 2 failed){}", if line.is_empty() { String::new() } else { format!(": {line}") }) },
        Outcome::TimedOut => Verdict { state: State::Unknown, reading: None, reason: "no answer within the sensor interval; killed".into() },
        Outcome::Broken(why) => Verdict { state: State::Unknown, reading: None, reason: why.clone() },
    }
}

#[cfg(test)]
mod tests;
