//! The front end as the root of the launch-time fabric exchange ([`crate::fabric`]): it checks
//! the request against every node's inventory before sending the full set down, prints
//! `--inventory`, and fails the job with exit 2 when the request cannot be met.
//!
//! With the RDMA start-up ([`crate::startup_rdma`]) the front end is the root of the bring-up
//! agreement too: it decides, says on `-v` which transport the exchange used (or why not RDMA,
//! naming the node), and times the exchange for `--report`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fabrics::startup::Decision;

use super::effect::Effect;
use super::verdict::Failure;
use crate::fabric::FrontGather;
use crate::job::JobView;
use crate::spec::StartupTransport;
use crate::startup_rdma::{transport_name, Faults, Out, StartupRdma};
use crate::tree::Hop;
use crate::wire::{Msg, RdmaStep};

pub struct RootFabric {
    gather: FrontGather,
    names: Vec<String>,
    rdma: Option<StartupRdma>,
    /// Where the exchange's time starts: the decision with the RDMA start-up (the held messages go
    /// out then), else the first message at the front end.
    exchange_from: Option<Instant>,
    exchange_took: Option<Duration>,
}

impl RootFabric {
    pub fn new(job: &JobView, wake: Arc<dyn Fn() + Send + Sync>) -> RootFabric {
        let names: Vec<String> = job.launch().nodes.iter().map(|n| n.name.clone()).collect();
        let gather = FrontGather::new(job.launch(), job.map(), names.clone());
        let fabric = &job.launch().fabric;
        // The root sends nothing first: its children's connection data starts its part.
        let rdma = (fabric.startup != StartupTransport::Tcp && fabric.gathers())
            .then(|| StartupRdma::start(job.topology().collective_tree(), 0, Faults::default(), wake).0);
        RootFabric { gather, names, rdma, exchange_from: None, exchange_took: None }
    }

    pub fn gather(&self) -> &FrontGather {
        &self.gather
    }

    /// A `Msg::Rdma` from direct child `node`.
    pub fn on_rdma(&mut self, node: u32, step: RdmaStep, now_ms: f64) -> Vec<Effect> {
        let Some(rdma) = self.rdma.as_mut() else { return Vec::new() };
        let outs = rdma.on_tcp(node + 1, step);
        self.carry_out(outs, now_ms)
    }

    /// The RDMA carrier thread woke the loop.
    pub fn on_wake(&mut self, now_ms: f64) -> Vec<Effect> {
        let Some(rdma) = self.rdma.as_mut() else { return Vec::new() };
        let outs = rdma.on_wake();
        self.carry_out(outs, now_ms)
    }

    fn member_name(&self, member: u32) -> String {
        match member {
            0 => "the front end".into(),
            m => format!("node {}", self.names.get(m as usize - 1).cloned().unwrap_or_else(|| format!("#{}", m - 1))),
        }
    }

    fn carry_out(&mut self, outs: Vec<Out>, now_ms: f64) -> Vec<Effect> {
        let mut fx = Vec::new();
        for o in outs {
            match o {
                Out::Tcp { to, msg } => fx.push(Effect::Send(Hop::Child(to - 1), msg)),
                Out::FabricTcp { to, data } => fx.push(Effect::Send(Hop::Child(to - 1), Msg::Fabric { data })),
                Out::FabricIn { from, data } => fx.extend(self.on_message(from - 1, &data, now_ms)),
                Out::Decided(d) => {
                    self.exchange_from = Some(Instant::now());
                    let took = self.rdma.as_ref().and_then(StartupRdma::decided_after).unwrap_or_default();
                    let line = match &d {
                        Decision::Rdma => format!("rlaunch: RDMA start-up links up on every node in {:.1} ms (simulated links)", took.as_secs_f64() * 1e3),
                        Decision::Fallback { member, why } => format!(
                            "rlaunch: start-up collectives over TCP: RDMA could not start on {}: {why}",
                            self.member_name(*member)
                        ),
                    };
                    fx.push(Effect::Detail(1, line));
                }
                Out::Failed(why) => fx.push(Effect::Fail(Failure::FabricError { message: why })),
            }
        }
        fx
    }

    /// `"startup_collectives"` in the report: which transport each start-up collective used, and
    /// its time.
    pub fn report_startup(&self) -> serde_json::Value {
        let decision = self.rdma.as_ref().and_then(StartupRdma::decision);
        let ms = |d: Option<Duration>| d.map(|d| (d.as_secs_f64() * 1e4).round() / 10.0);
        let fallback = match decision {
            Some(Decision::Fallback { member, why }) => serde_json::json!({"node": self.member_name(*member), "why": why}),
            _ => serde_json::Value::Null,
        };
        serde_json::json!({
            "inventory_allgather": {"transport": transport_name(decision), "ms": ms(self.exchange_took)},
            "rdma_bring_up": self.rdma.as_ref().map(|r| serde_json::json!({"ms": ms(r.decided_after()), "fallback": fallback})),
        })
    }

    /// A `Msg::Fabric` from direct child `node` (over TCP or RDMA), `now_ms` into the job.
    pub fn on_message(&mut self, node: u32, data: &[u8], now_ms: f64) -> Vec<Effect> {
        let chosen_before = self.gather.fabric().is_some();
        self.exchange_from.get_or_insert_with(Instant::now);
        let waiting_before = self.gather.waiting();
        let step = self.gather.on_message(node, data, now_ms);
        let mut outs = Vec::new();
        let mut out: Vec<Effect> = match self.rdma.as_mut() {
            Some(rdma) => {
                step.down.into_iter().for_each(|(child, data)| outs.extend(rdma.fabric_out(child + 1, data)));
                Vec::new()
            }
            None => step.down.into_iter().map(|(child, data)| Effect::Send(Hop::Child(child), Msg::Fabric { data })).collect(),
        };
        if waiting_before && !self.gather.waiting() {
            self.exchange_took = self.exchange_from.map(|t| t.elapsed());
            let name = transport_name(self.rdma.as_ref().and_then(StartupRdma::decision));
            let took = self.exchange_took.unwrap_or_default().as_secs_f64() * 1e3;
            out.push(Effect::Detail(1, format!("rlaunch: inventory allgather over {name} in {took:.1} ms")));
            if let Some(rdma) = self.rdma.as_mut() {
                outs.extend(rdma.done());
            }
        }
        out.extend(self.carry_out(outs, now_ms));
        if !chosen_before && self.gather.fabric().is_some() {
            out.extend(self.gather.verbose_line().map(|l| Effect::Detail(1, l)));
        }
        out.extend(step.print.map(Effect::Inventory));
        // Bad input found only once the nodes answered: still the user's to fix, so exit 2.
        out.extend(step.usage_error.map(|message| Effect::Fail(Failure::Unsatisfiable { message })));
        out.extend(step.error.map(|message| Effect::Fail(Failure::FabricError { message })));
        out
    }
}
