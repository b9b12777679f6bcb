//! The front end as the root of the launch-time fabric exchange ([`crate::fabric`]): it checks
//! the request against every node's inventory before sending the full set down, prints
//! `--inventory`, and fails the job with exit 2 when the request cannot be met.
//!
//! With the RDMA start-up ([`crate::startup_rdma`]) the front end is the root of the bring-up
//! agreement and of the first fence's tree too: it decides, says on `-v` which transport each
//! start-up collective used (or why not RDMA, naming the node), and times them for `--report`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fabrics::startup::Decision;

use super::effect::Effect;
use super::pmi::RootPmi;
use super::verdict::Failure;
use crate::fabric::FrontGather;
use crate::job::JobView;
use crate::spec::StartupTransport;
use crate::startup_rdma::{first_fence, front_end_link, rdma_name, Faults, LinkKind, Out, Payload, StartupRdma};
use crate::tree::Hop;
use crate::wire::{FallbackCause, Msg, RdmaStep};

pub struct RootFabric {
    gather: FrontGather,
    names: Vec<String>,
    rdma: Option<StartupRdma>,
    simulated: bool,
    /// Where the exchange's time starts: the decision with the RDMA start-up (the held messages go
    /// out then), else the first message at the front end.
    exchange_from: Option<Instant>,
    exchange_took: Option<Duration>,
    /// The first fence: its first contribution here, and its time to the result going down.
    fence_from: Option<Instant>,
    fence_took: Option<Duration>,
    /// Whether the links carried the first fence to its end here.
    fence_on_links: bool,
    /// Why nobody tried RDMA: the front end has no link ([`StartupTransport::NoRootLink`]).
    no_root_link: Option<String>,
}

impl RootFabric {
    /// `ip`: where the front end's children reach it.
    pub fn new(job: &JobView, ip: std::net::IpAddr, wake: Arc<dyn Fn() + Send + Sync>) -> RootFabric {
        let names: Vec<String> = job.launch().nodes.iter().map(|n| n.name.clone()).collect();
        let gather = FrontGather::new(job.launch(), job.map(), names.clone());
        let fabric = &job.launch().fabric;
        let simulated = matches!(fabric.startup, StartupTransport::Simulated { .. });
        let fence_needed = fabric.inventory.is_none() && !job.fence_children().is_empty();
        // The root sends nothing first: its children's connection data starts its part.
        let rdma = (fabric.startup.tries() && fabric.gathers()).then(|| {
            let kind = match fabric.startup {
                StartupTransport::Simulated { .. } => Ok(LinkKind::Simulated(Some(ip))),
                _ => front_end_link(),
            };
            StartupRdma::start(job.topology().collective_tree(), 0, kind, fence_needed, Faults::default(), wake).0
        });
        let no_root_link = match &fabric.startup {
            StartupTransport::NoRootLink(why) if fabric.gathers() => Some(why.clone()),
            _ => None,
        };
        RootFabric { gather, names, rdma, simulated, exchange_from: None, exchange_took: None, fence_from: None, fence_took: None, fence_on_links: false, no_root_link }
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
            0 => format!("the front end ({})", launchers::local_hostname()),
            m => format!("node {}", self.names.get(m as usize - 1).cloned().unwrap_or_else(|| format!("#{}", m - 1))),
        }
    }

    /// The transport of the links, as the report and `-v` say it.
    fn links_name(&self) -> &'static str {
        rdma_name(self.simulated)
    }

    /// The front end's effects on their way out, and the fence contributions on their way in
    /// (whichever path brought them: they go to the root fence in `pmi` here): the first fence
    /// is timed, and its result goes down over the links while the start-up holds them.
    pub fn carry(&mut self, fx: Vec<Effect>, pmi: &mut RootPmi, job: &JobView) -> Vec<Effect> {
        let mut out = Vec::with_capacity(fx.len());
        let mut outs = Vec::new();
        for e in fx {
            match e {
                Effect::Deliver(n, m) => {
                    if first_fence(&m) {
                        self.fence_from.get_or_insert_with(Instant::now);
                    }
                    let fx = pmi.fence_from_child(job, n, m);
                    out.extend(self.carry(fx, pmi, job));
                }
                Effect::DownTo(kids, m) if first_fence(&m) => {
                    self.fence_took = self.fence_from.map(|t| t.elapsed());
                    let (on_links, name) = match self.rdma.as_ref() {
                        Some(r) if r.on_links() => (true, self.links_name()),
                        _ => (false, "tcp"),
                    };
                    self.fence_on_links = on_links;
                    let took = self.fence_took.unwrap_or_default().as_secs_f64() * 1e3;
                    let pmi = if matches!(m, Msg::PmixFenceDone { .. }) { "PMIx" } else { "PMI" };
                    out.push(Effect::Detail(1, format!("rlaunch: first {pmi} fence over {name} in {took:.1} ms")));
                    match self.rdma.as_mut().filter(|r| !r.released()) {
                        Some(rdma) => {
                            kids.into_iter().for_each(|k| outs.extend(rdma.send(k + 1, Payload::Msg(m.clone()))));
                            outs.extend(rdma.fence_over());
                        }
                        None => out.push(Effect::DownTo(kids, m)),
                    }
                }
                e => out.push(e),
            }
        }
        out.extend(self.carry_out(outs, 0.0));
        out
    }

    fn carry_out(&mut self, outs: Vec<Out>, now_ms: f64) -> Vec<Effect> {
        let mut fx = Vec::new();
        for o in outs {
            match o {
                Out::Tcp { to, msg } => fx.push(Effect::Send(Hop::Child(to - 1), msg)),
                Out::Plain { to, payload: Payload::Fabric(data) } => fx.push(Effect::Send(Hop::Child(to - 1), Msg::Fabric { data })),
                Out::Plain { to, payload: Payload::Msg(m) } => fx.push(Effect::Send(Hop::Child(to - 1), m)),
                Out::Deliver { from, payload: Payload::Fabric(data) } => fx.extend(self.on_message(from - 1, &data, now_ms)),
                Out::Deliver { from, payload: Payload::Msg(m) } => fx.push(Effect::Deliver(from - 1, m)),
                Out::Decided(d) => {
                    self.exchange_from = Some(Instant::now());
                    let took = self.rdma.as_ref().and_then(StartupRdma::decided_after).unwrap_or_default();
                    let line = match &d {
                        Decision::Rdma => format!(
                            "rlaunch: RDMA start-up links up on every node in {:.1} ms ({})",
                            took.as_secs_f64() * 1e3,
                            if self.simulated { "simulated links" } else { "verbs queue pairs" }
                        ),
                        Decision::Fallback { member, why } => format!(
                            "rlaunch: start-up collectives over TCP: RDMA could not start on {}: {why}",
                            self.member_name(*member)
                        ),
                    };
                    fx.push(Effect::Detail(1, line));
                }
                Out::Switched { origin, why, cause } => {
                    let at = self.member_name(origin);
                    let line = match cause {
                        FallbackCause::NoFence => format!("rlaunch: RDMA start-up links released: on {at}, {why}; later traffic stays on TCP"),
                        FallbackCause::LinkInExchange => format!("rlaunch: {at}: {why}; the inventory allgather finishes over TCP"),
                        FallbackCause::LinkInFence => format!("rlaunch: {at}: {why}; the first PMI/PMIx fence finishes over TCP"),
                    };
                    fx.push(Effect::Detail(1, line));
                }
                Out::Failed(why) => fx.push(Effect::Fail(Failure::FabricError { message: why })),
            }
        }
        fx
    }

    /// `"startup_collectives"` in the report: which transport each start-up collective used
    /// (`fell_back`: the node whose failure moved it to TCP, and why), and its time.
    pub fn report_startup(&self) -> serde_json::Value {
        let decision = self.rdma.as_ref().and_then(StartupRdma::decision);
        let ms = |d: Option<Duration>| d.map(|d| (d.as_secs_f64() * 1e4).round() / 10.0);
        let fallback = match decision {
            Some(Decision::Fallback { member, why }) => serde_json::json!({"node": self.member_name(*member), "why": why}),
            _ => serde_json::Value::Null,
        };
        let bring_up = match (&self.rdma, &self.no_root_link) {
            (Some(r), _) => serde_json::json!({"ms": ms(r.decided_after()), "fallback": fallback}),
            (None, Some(why)) => serde_json::json!({"ms": 0.0, "fallback": {"node": self.member_name(0), "why": why}}),
            (None, None) => serde_json::Value::Null,
        };
        let failover = self.rdma.as_ref().and_then(StartupRdma::failover);
        let fell_back = |causes: &[FallbackCause]| match failover {
            Some((origin, why, cause)) if causes.contains(&cause) => serde_json::json!({"node": self.member_name(origin), "why": why}),
            _ => serde_json::Value::Null,
        };
        let on_rdma = decision == Some(&Decision::Rdma);
        let exchange_fell = fell_back(&[FallbackCause::LinkInExchange]);
        let exchange_transport = if on_rdma && exchange_fell.is_null() { self.links_name() } else { "tcp" };
        let fence_fell = fell_back(&[FallbackCause::LinkInExchange, FallbackCause::LinkInFence]);
        let fence_transport = match self.fence_took {
            None => serde_json::Value::Null,
            Some(_) if on_rdma && self.fence_on_links && fence_fell.is_null() => self.links_name().into(),
            Some(_) => "tcp".into(),
        };
        let released_early = match failover {
            Some((origin, why, FallbackCause::NoFence)) => serde_json::json!({"node": self.member_name(origin), "why": why}),
            _ => serde_json::Value::Null,
        };
        serde_json::json!({
            "inventory_allgather": {"transport": exchange_transport, "ms": ms(self.exchange_took), "fell_back": exchange_fell},
            "first_fence": {"transport": fence_transport, "ms": ms(self.fence_took), "fell_back": fence_fell, "links_released_unused": released_early},
            "rdma_bring_up": bring_up,
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
                step.down.into_iter().for_each(|(child, data)| outs.extend(rdma.send(child + 1, Payload::Fabric(data))));
                Vec::new()
            }
            None => step.down.into_iter().map(|(child, data)| Effect::Send(Hop::Child(child), Msg::Fabric { data })).collect(),
        };
        if waiting_before && !self.gather.waiting() {
            self.exchange_took = self.exchange_from.map(|t| t.elapsed());
            let name = match self.rdma.as_ref() {
                Some(r) if r.on_links() => self.links_name(),
                _ => "tcp",
            };
            let took = self.exchange_took.unwrap_or_default().as_secs_f64() * 1e3;
            if let Some(why) = &self.no_root_link {
                out.push(Effect::Detail(1, format!("rlaunch: start-up collectives over TCP: RDMA could not start on {}: {why}", self.member_name(0))));
            }
            out.push(Effect::Detail(1, format!("rlaunch: inventory allgather over {name} in {took:.1} ms")));
            if let Some(rdma) = self.rdma.as_mut() {
                outs.extend(rdma.exchange_over());
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
