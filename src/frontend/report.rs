//! The `--report` JSON: the map, every rank's status, every node's daemon (with its sensors' state
//! changes), phase timings and the fabric that ran. Pure: the loop hands in what it knows, this file shapes it.

use super::daemons::{Daemons, NodeState};
use crate::timeline::{self, Aligned, NamedMarks};
use super::ranks::Ranks;
use super::verdict::Verdict;
use super::fabric::RootFabric;
use super::lost::NodeLoss;
use super::images::RootImages;
use crate::job::JobView;
use crate::sig::signal_name;
use crate::spec::RankStatus;
use serde_json::json;
use std::time::Instant;

/// Milliseconds from the start of rlaunch to each phase.
#[derive(Default, serde::Serialize)]
pub struct Timings {
    pub daemons_started_ms: Option<f64>,
    pub daemons_connected_ms: Option<f64>,
    pub launch_sent_ms: Option<f64>,
    pub ranks_started_ms: Option<f64>,
    pub ranks_exited_ms: Option<f64>,
    pub total_ms: Option<f64>,
}

impl Timings {
    /// The first time every rank runs.
    pub fn daemons_started(&mut self, all_started: bool, t0: Instant) {
        if all_started {
            self.daemons_started_ms = ms_since(t0);
        }
    }

    pub fn ranks_started(&mut self, all_running: bool, t0: Instant) {
        if all_running && self.ranks_started_ms.is_none() {
            self.ranks_started_ms = ms_since(t0);
        }
    }
}

pub fn ms_since(t0: Instant) -> Option<f64> {
    Some(t0.elapsed().as_secs_f64() * 1000.0)
}

/// What the report is made of.
pub struct ReportInput<'a> {
    pub job: &'a JobView,
    pub command_line: &'a [String],
    pub daemons: &'a Daemons,
    pub ranks: &'a Ranks,
    pub verdict: &'a Verdict,
    pub exit_code: i32,
    pub timings: &'a Timings,
    pub fabric: &'a RootFabric,
    pub lost: &'a NodeLoss,
    pub images: &'a RootImages,
    /// `--max-restarts`: every restart, and the generation the job ended in.
    pub restarts: (&'a [super::restart::Restart], u32),
}

/// The `-v` summary at the end of a job: the front end's phases, then the nodes' timeline.
pub fn summary_lines(r: &ReportInput) -> Vec<String> {
    let nodes: Vec<(String, NamedMarks)> = r.daemons.iter().enumerate().map(|(i, d)| (r.job.node_name(i as u32), named_marks(d))).filter(|(_, m)| !m.is_empty()).collect();
    std::iter::once(summary_line(r)).chain(timeline::summary(&nodes)).chain(r.images.summary()).collect()
}

/// A node's marks on the front end's clock, once it sent them.
fn node_timeline(d: &NodeState) -> Option<Aligned> {
    timeline::align(d.marks.as_ref()?, d.hello_ms?)
}

/// Everything known of a node's launch, by name: the front end's marks, then its daemon's.
fn named_marks(d: &NodeState) -> NamedMarks {
    let own = d.start_ms.map(|ms| ("start_requested", ms)).into_iter().chain(d.ssh_ms.iter().copied());
    let daemon = node_timeline(d).map(|a| a.phases.into_iter().map(|(p, ms)| (p.name(), ms)).collect::<Vec<_>>()).unwrap_or_default();
    own.chain(daemon).collect()
}

fn summary_line(r: &ReportInput) -> String {
    let t = r.timings;
    format!(
        "rlaunch: {} ranks on {} node(s), fan-out {}: daemons connected {:.1} ms, ranks started {:.1} ms, ranks exited {:.1} ms, total {:.1} ms",
        r.ranks.len(),
        r.daemons.len(),
        r.job.launch().fanout,
        t.daemons_connected_ms.unwrap_or(f64::NAN),
        t.ranks_started_ms.unwrap_or(f64::NAN),
        t.ranks_exited_ms.unwrap_or(f64::NAN),
        t.total_ms.unwrap_or(f64::NAN)
    )
}

/// A node's timeline in milliseconds since rlaunch started: the front end's own marks (start
/// asked for, hello arrived) and the daemon's phases; each rank's spawn and PMI init.
fn timeline_json(d: &NodeState) -> serde_json::Value {
    let mut t = serde_json::Map::new();
    t.insert("start_requested_ms".into(), json!(d.start_ms));
    t.insert("hello_received_ms".into(), json!(d.hello_ms));
    for (name, ms) in &d.ssh_ms {
        t.insert(format!("{name}_ms"), json!(ms));
    }
    if let Some(a) = node_timeline(d) {
        for (phase, ms) in &a.phases {
            t.insert(format!("{}_ms", phase.name()), json!(ms));
        }
        let ranks: Vec<_> = a.ranks.iter().map(|(rank, spawn, init)| json!({"rank": rank, "spawn_ms": spawn, "pmi_init_ms": init})).collect();
        t.insert("ranks".into(), json!(ranks));
    }
    serde_json::Value::Object(t)
}

/// The report's `restarts`: when (ms since rlaunch started), which ranks on which node, the
/// scope, why, the generation after it, and how long until the ranks ran again.
fn restarts_json(log: &[super::restart::Restart]) -> serde_json::Value {
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    let entries: Vec<_> = log
        .iter()
        .map(|r| {
            json!({
                "at_ms": ms(r.at), "ranks": r.ranks, "node": r.node, "scope": r.scope.name(),
                "reason": r.reason, "generation": r.generation,
                "running_again_ms": r.running_again.map(|t| ms(t.saturating_sub(r.at))),
            })
        })
        .collect();
    json!(entries)
}

pub fn report_json(r: &ReportInput) -> String {
    let (job, launch, map) = (r.job, r.job.launch(), r.job.map());
    let ranks: Vec<_> = (0..r.ranks.len() as u32)
        .map(|rank| {
            let p = map.rank(rank);
            let st = r.ranks.status(rank);
            let status = match st {
                Some(RankStatus::Exited(c)) => json!({"exited": c}),
                Some(RankStatus::Signaled(s)) => json!({"signaled": s, "signal_name": signal_name(s)}),
                Some(RankStatus::SpawnFailed(e) | RankStatus::NoWorkdir(e)) => json!({"spawn_failed": std::io::Error::from_raw_os_error(e).to_string()}),
                None => json!(null),
            };
            json!({
                "rank": rank, "node": p.node, "host": launch.nodes[p.node as usize].name,
                "local_rank": p.local_rank, "app": p.app, "pid": r.ranks.pid(rank),
                "status": status,
                "exit_code": st.map(|s| s.exit_code()),
            })
        })
        .collect();
    let nodes: Vec<_> = r
        .daemons
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let n = &launch.nodes[i];
            json!({
                "node": i, "name": n.name, "slots": n.slots,
                "hostname": d.hostname, "daemon_pid": d.pid, "address": d.addr,
                "launch_bytes": d.launch_bytes, "ranks": map.ranks_on(i as u32),
                "state": if d.done { "done" } else if d.lost { "lost" } else { "unknown" },
                "timeline": timeline_json(d),
                "sensors": r.daemons.sensors().node_json(i as u32),
            })
        })
        .collect();
    let apps: Vec<_> = launch
        .apps
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let range = map.app_ranks(i as u32);
            json!({"app": i, "argv": a.argv, "cwd": a.cwd, "ranks": [range.start, range.end]})
        })
        .collect();
    let v = json!({
        "rlaunch_version": env!("CARGO_PKG_VERSION"),
        "job_id": launch.job_id,
        "command": r.command_line,
        "size": r.ranks.len(),
        "outcome": r.verdict.outcome().name(),
        "exit_code": r.exit_code,
        "first_failed_rank": r.verdict.first_failed_rank(),
        "fanout": launch.fanout,
        "tree_depth": job.topology().depth(),
        "apps": apps,
        "nodes": nodes,
        "ranks": ranks,
        "timings": r.timings,
        "fabric": r.fabric.gather().report_fabric(),
        "fabric_detail": r.fabric.gather().report_detail(),
        "startup_collectives": r.fabric.report_startup(),
        "nodes_lost": nodes_lost_json(r),
        "tree_repairs": tree_repairs_json(r),
        "spares": spares_json(r),
        "images": r.images.report(),
        "generation": r.restarts.1,
        "restarts": restarts_json(r.restarts.0),
    });
    serde_json::to_string_pretty(&v).expect("json") + "\n"
}

/// `nodes_lost`: each lost node, when (ms since rlaunch started), how it was detected, why, and
/// what became of it.
fn nodes_lost_json(r: &ReportInput) -> serde_json::Value {
    let name = |n: u32| r.lost.name(n);
    let lost: Vec<_> = r
        .lost
        .lost
        .iter()
        .map(|l| {
            json!({
                "node": l.node, "host": name(l.node), "at_ms": l.at_ms, "detected_by": l.how.name(), "why": l.why,
                "had_ranks": l.had_ranks, "ended_job": l.ended_job,
                "replaced_by": l.replaced_by.map(|b| json!({"node": b, "host": name(b)})),
            })
        })
        .collect();
    json!(lost)
}

/// `tree_repairs`: each daemon that reconnected above a lost parent, and where.
fn tree_repairs_json(r: &ReportInput) -> serde_json::Value {
    let name = |n: u32| r.lost.name(n);
    let repairs: Vec<_> = r
        .lost
        .rejoins
        .iter()
        .map(|j| {
            let at = j.at.map_or_else(|| "front end".to_string(), name);
            json!({"node": j.node, "host": name(j.node), "reconnected_to": j.at, "reconnected_to_host": at, "at_ms": j.at_ms, "found_lost": j.lost})
        })
        .collect();
    json!(repairs)
}

/// `spares`: the `--spare` nodes and their state (free, lost, or replacing a lost node).
fn spares_json(r: &ReportInput) -> serde_json::Value {
    let name = |n: u32| r.lost.name(n);
    let spares: Vec<_> = r
        .lost
        .spares()
        .into_iter()
        .map(|(s, lost, replacing)| {
            let state = match (lost, replacing) {
                (true, _) => "lost",
                (false, Some(_)) => "replacing",
                (false, None) => "free",
            };
            json!({"node": s, "host": name(s), "state": state, "replacing": replacing})
        })
        .collect();
    json!(spares)
}
