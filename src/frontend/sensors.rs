//! The nodes' sensors at the front end: every state change a daemon sends up ([`Msg::Sensor`]) is
//! recorded for the `--report`, said on stderr (degrading and failed always, returns to ok and
//! unknown sources with `-v`), and, when it changes how healthy its node is, becomes a typed
//! [`HealthEvent`] in the node's health timeline (in the report too), for whatever acts on it.
//! Nothing acts on it yet: ranks are not moved off a node, so the line says "no action".

use super::effect::Effect;
use crate::spec::SensorState;
use crate::wire::Msg;
use serde_json::json;
use std::collections::BTreeMap;

/// One recorded state change of one sensor.
#[derive(Clone, Debug, PartialEq)]
struct Recorded {
    /// Milliseconds since rlaunch started, when the front end heard of it.
    t_ms: f64,
    sensor: String,
    state: SensorState,
    reading: Option<f64>,
    reason: String,
}

/// A node's health changed: the worst state among its sensors (unknown counts as ok) moved.
/// What migration will consume: typed, never the text of a line.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthEvent {
    pub node: u32,
    /// Ok, Degrading or Failed.
    pub health: SensorState,
    /// The sensor whose change moved it, its reading and reason.
    pub sensor: String,
    pub reading: Option<f64>,
    pub reason: String,
    pub t_ms: f64,
}

#[derive(Default)]
pub struct NodeSensors {
    /// By node: every change, in arrival order.
    changes: BTreeMap<u32, Vec<Recorded>>,
    /// By node: each sensor's current state.
    states: BTreeMap<u32, BTreeMap<String, SensorState>>,
    /// Every change of a node's health, in order: what migration will read (from an index of
    /// its own), and the report's per-node health timeline.
    health: Vec<HealthEvent>,
}

/// Worst first: Failed, Degrading, then Ok (Unknown says nothing of the node).
fn health(states: &BTreeMap<String, SensorState>) -> SensorState {
    let has = |s| states.values().any(|&v| v == s);
    if has(SensorState::Failed) {
        SensorState::Failed
    } else if has(SensorState::Degrading) {
        SensorState::Degrading
    } else {
        SensorState::Ok
    }
}

impl NodeSensors {
    /// A `Msg::Sensor` from a daemon, `t_ms` after rlaunch started. Other messages are ignored.
    /// `names`: the job's nodes.
    pub fn on_msg(&mut self, names: &[String], msg: Msg, t_ms: Option<f64>) -> Vec<Effect> {
        let Msg::Sensor { node, sensor, state, reading, reason } = msg else { return Vec::new() };
        let Some(name) = names.get(node as usize) else {
            return vec![Effect::Say(format!("rlaunch: a sensor report for node index {node}, which is not in the job; ignored"))];
        };
        let t_ms = t_ms.unwrap_or(0.0);
        let reading = reading.map(|v| v.0);
        let states = self.states.entry(node).or_default();
        let before = health(states);
        states.insert(sensor.clone(), state);
        let after = health(states);
        self.changes.entry(node).or_default().push(Recorded { t_ms, sensor: sensor.clone(), state, reading, reason: reason.clone() });
        let shown = reading.map_or(String::new(), |r| format!(" (reading {})", trim(r)));
        let head = format!("rlaunch: node {name}: sensor {sensor} {state}{shown}: {reason}");
        if after != before {
            self.health.push(HealthEvent { node, health: after, sensor, reading, reason, t_ms });
        }
        match state {
            SensorState::Degrading | SensorState::Failed => vec![Effect::Say(format!("{head}; no action (rlaunch does not move ranks off a node yet)"))],
            SensorState::Ok | SensorState::Unknown => vec![Effect::Detail(1, head)],
        }
    }

    /// Every node health change so far, oldest first.
    pub fn health_events(&self) -> &[HealthEvent] {
        &self.health
    }

    /// The report's `sensors` object of one node: its health now, the health changes, and every
    /// sensor's state change, in order.
    pub fn node_json(&self, node: u32) -> serde_json::Value {
        let changes: Vec<_> = self
            .changes
            .get(&node)
            .into_iter()
            .flatten()
            .map(|c| json!({"t_ms": c.t_ms, "sensor": c.sensor, "state": c.state.name(), "reading": c.reading, "reason": c.reason}))
            .collect();
        let timeline: Vec<_> = self
            .health_events()
            .iter()
            .filter(|e| e.node == node)
            .map(|e| json!({"t_ms": e.t_ms, "health": e.health.name(), "sensor": e.sensor, "reading": e.reading, "reason": e.reason}))
            .collect();
        let now = self.states.get(&node).map_or(SensorState::Ok, health);
        json!({"health": now.name(), "health_changes": timeline, "changes": changes})
    }
}

/// 1.0 as "1", 85.25 as "85.25".
fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::SensorValue;

    fn msg(node: u32, sensor: &str, state: SensorState, reading: Option<f64>) -> Msg {
        Msg::Sensor { node, sensor: sensor.into(), state, reading: reading.map(SensorValue), reason: "why".into() }
    }

    fn lines(fx: &[Effect]) -> Vec<String> {
        fx.iter()
            .map(|e| match e {
                Effect::Say(l) => format!("say {l}"),
                Effect::Detail(n, l) => format!("v{n} {l}"),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn changes_are_said_recorded_and_become_health_events() {
        let job: Vec<String> = (0..4).map(|i| format!("n{i}")).collect();
        let mut s = NodeSensors::default();
        let fx = s.on_msg(&job, msg(3, "edac", SensorState::Unknown, None), Some(10.0));
        assert_eq!(lines(&fx), vec!["v1 rlaunch: node n3: sensor edac unknown: why"]);
        assert_eq!(s.health_events(), &[], "an unknown source says nothing of the node");
        let fx = s.on_msg(&job, msg(3, "command:check", SensorState::Degrading, Some(1.0)), Some(20.5));
        assert_eq!(lines(&fx), vec!["say rlaunch: node n3: sensor command:check degrading (reading 1): why; no action (rlaunch does not move ranks off a node yet)"]);
        s.on_msg(&job, msg(3, "thermal:thermal_zone0", SensorState::Failed, Some(101.25)), Some(30.0));
        // The node is failed while one sensor says so, whatever the others do.
        s.on_msg(&job, msg(3, "command:check", SensorState::Ok, Some(0.0)), Some(40.0));
        let ev: Vec<(u32, SensorState, &str)> = s.health_events().iter().map(|e| (e.node, e.health, e.sensor.as_str())).collect();
        assert_eq!(ev, vec![(3, SensorState::Degrading, "command:check"), (3, SensorState::Failed, "thermal:thermal_zone0")]);
        assert_eq!(s.node_json(3)["health"], "failed");
        let fx = s.on_msg(&job, msg(3, "thermal:thermal_zone0", SensorState::Ok, Some(60.0)), Some(50.0));
        assert_eq!(lines(&fx), vec!["v1 rlaunch: node n3: sensor thermal:thermal_zone0 ok (reading 60): why"]);
        assert_eq!(s.health_events().last().map(|e| e.health), Some(SensorState::Ok));
        let j = s.node_json(3);
        assert_eq!(j["health"], "ok");
        assert_eq!(j["health_changes"].as_array().unwrap().len(), 3);
        assert_eq!(j["changes"].as_array().unwrap().len(), 5);
        assert_eq!(j["changes"][1], json!({"t_ms": 20.5, "sensor": "command:check", "state": "degrading", "reading": 1.0, "reason": "why"}));
        assert_eq!(s.node_json(0), json!({"health": "ok", "health_changes": [], "changes": []}));
        assert!(lines(&s.on_msg(&job, msg(9, "x", SensorState::Failed, None), None))[0].contains("not in the job"));
    }
}
