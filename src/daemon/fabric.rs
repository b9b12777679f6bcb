//! The launch-time fabric exchange ([`NodeFabric`]) as a service: its [`Step`]s become effects,
//! and the ranks start ([`Effect::StartRanks`]) once the endpoint table is written (at once with
//! `--fabric off`). It places the local ranks first ([`Binding`]), and the ranks start with what
//! both decided (their CPUs and GPUs, their NIC). A placement this node cannot give is refused
//! by the front end once the exchange brings it every node's topology; with `--fabric off` the
//! node refuses itself, at once.
//!
//! The exchange's messages travel over the daemon links, or over RDMA links brought up for the
//! start-up only ([`crate::startup_rdma`]) when the launch asks for it and every member manages;
//! so do the first PMI/PMIx fence's messages, which [`Fabric::carry`] takes out of the daemon's
//! effects (and its delivered ones come back as [`Effect::Deliver`]).
//!
//! Besides the fabric's variables the ranks get the node's hardware topology, exported once
//! ([`super::topology`]) while the exchange runs, and, when the whole job is on this
//! node, UCX's transports ([`crate::fabric::ucx_tls`]). Both come from this node's own knowledge
//! and the launch message, never from the exchange.

use std::sync::Arc;

use super::binding::Binding;
use super::effect::Effect;
use super::topology::{self, TopologyExport};
use crate::pmix::Detected;
use crate::fabric::{NodeFabric, Step};
use crate::job::JobView;
use crate::spec::StartupTransport;
use crate::startup_rdma::{first_fence, Faults, LinkKind, Out, Payload, StartupRdma};
use crate::timeline::Mark;
use crate::tree::{Hop, Topology};
use crate::wire::{FallbackCause, Msg, RdmaStep};

pub struct Fabric {
    inner: NodeFabric,
    binding: Binding,
    /// This node's refusal of the placement, held while the exchange runs: the front end refuses
    /// the job once it has every node's topology (one line, before anything starts), so the
    /// node still takes part; should the ranks be started anyway, the refusal goes instead.
    refused: Option<Vec<Effect>>,
    node: u32,
    /// The RDMA start-up, when the launch asks for it.
    rdma: Option<StartupRdma>,
    /// Wakes the daemon's loop from the RDMA carrier thread.
    wake: Arc<dyn Fn() + Send + Sync>,
    /// This host's address on the tree, for the simulated link's TCP side.
    ip: Option<std::net::IpAddr>,
    topology: TopologyExport,
    /// Which local ranks get the topology, and where it goes (known from the launch).
    topology_wanted: Vec<bool>,
    topology_path: std::path::PathBuf,
    /// `UCX_TLS` for the local ranks whose user set no `UCX_*` (by local rank).
    ucx: Vec<Option<&'static str>>,
    /// Every local rank's variables, once the ranks may start.
    env: Vec<Vec<(String, String)>>,
}

impl Fabric {
    pub fn new(node: u32, topo: &Topology, wake: Arc<dyn Fn() + Send + Sync>) -> Fabric {
        Fabric {
            inner: NodeFabric::new(node, topo),
            binding: Binding::default(),
            refused: None,
            node,
            rdma: None,
            wake,
            ip: None,
            topology: TopologyExport::default(),
            topology_wanted: Vec::new(),
            topology_path: std::path::PathBuf::new(),
            ucx: Vec::new(),
            env: Vec::new(),
        }
    }

    /// This host's address on the tree.
    pub fn on_ip(mut self, ip: Option<std::net::IpAddr>) -> Fabric {
        self.ip = ip;
        self
    }

    /// Reads this host's fabrics and CPU topology; called while the launch message travels.
    pub fn discover(&mut self) {
        self.binding.discover();
        self.inner.discover();
    }

    /// After the launch message: place the local ranks, then contribute this node's inventory.
    pub fn on_launch(&mut self, job: &JobView) -> Vec<Effect> {
        // Both only for MPI programs: their world is the job (see `ucx_tls`), and for anything
        // else the export would be pure cost.
        let mut detected: Vec<Option<Detected>> = vec![None; job.launch().apps.len()];
        let mut mpi = |app: u32| detected[app as usize].get_or_insert_with(|| topology::program_mpi(job, app)).clone();
        self.topology_wanted = topology::wanted(job, &crate::fabric::inherited_prefix, &mut |app| topology::reads_topology(&mpi(app)));
        if self.topology_wanted.contains(&true) {
            self.topology.start();
        }
        let local = job.local_ranks().len() as u32;
        let tls = crate::fabric::ucx_tls(local == job.map().size(), local, shm_free());
        let users = crate::fabric::user_sets(job, "UCX_", &crate::fabric::inherited_prefix);
        let apps = job.local_ranks().iter().map(|&r| job.map().rank(r).app);
        self.ucx = users.into_iter().zip(apps).map(|(set, app)| tls.filter(|_| !set && !matches!(mpi(app), Detected::Unknown(_)))).collect();
        self.topology_path = topology::xml_path(&crate::fabric::table_dir(), &job.launch().job_id, self.node);
        let mut fx = match self.binding.on_launch(job) {
            Ok(fx) => fx,
            // Without the exchange nobody else can refuse: at once, before any rank starts.
            Err(refused) if !job.launch().fabric.gathers() => return refused,
            Err(refused) => {
                self.refused = Some(refused);
                Vec::new()
            }
        };
        if job.launch().fabric.gathers() && job.launch().fabric.startup.tries() {
            let (kind, faults) = self.link_kind(job);
            // The first fence runs where the node or a node below it runs ranks.
            let fence_needed = job.launch().fabric.inventory.is_none() && (!job.local_ranks().is_empty() || !job.fence_children().is_empty());
            let (rdma, outs) = StartupRdma::start(job.topology().collective_tree(), self.node + 1, kind, fence_needed, faults, self.wake.clone());
            self.rdma = Some(rdma);
            fx.extend(self.carry_out(outs));
        }
        let step = self.inner.on_launch(job);
        let step = self.route(step);
        fx.extend(self.out(step));
        fx
    }

    /// This node's kind of link, or why it has none; and the test setting's faults.
    fn link_kind(&self, job: &JobView) -> (Result<LinkKind, String>, Faults) {
        match &job.launch().fabric.startup {
            StartupTransport::Simulated { fail, broken, broken_fence } => {
                let env = crate::spec::SIM_RDMA_ENV;
                let me = Some(self.node);
                let faults = Faults {
                    bring_up: (*fail == me).then(|| format!("simulated bring-up failure ({env}=fail:{})", self.node)),
                    link: if *broken == me {
                        Some((FallbackCause::LinkInExchange, format!("simulated link failure ({env}=break:{})", self.node)))
                    } else {
                        (*broken_fence == me).then(|| (FallbackCause::LinkInFence, format!("simulated link failure ({env}=break-fence:{})", self.node)))
                    },
                };
                (Ok(LinkKind::Simulated(self.ip)), faults)
            }
            _ => (self.inner.startup_port().map(LinkKind::Verbs), Faults::default()),
        }
    }

    /// The exchange's messages onto the RDMA start-up when there is one, else the TCP links.
    fn route(&mut self, step: Step) -> Vec<Effect> {
        let Some(rdma) = self.rdma.as_mut() else { return effects(step) };
        let mut outs = Vec::new();
        if let (Some(data), Some(p)) = (step.up.clone(), rdma.parent()) {
            outs.extend(rdma.send(p, Payload::Fabric(data)));
        }
        for (node, data) in &step.down {
            outs.extend(rdma.send(node + 1, Payload::Fabric(data.clone())));
        }
        // This node's part of the exchange is over (the ranks start now).
        if step.start_ranks || step.error.is_some() {
            outs.extend(rdma.exchange_over());
        }
        let mut fx = self.carry_out(outs);
        fx.extend(effects(Step { up: None, down: Vec::new(), ..step }));
        fx
    }

    /// The daemon's effects on their way out: the first fence's messages go through the RDMA
    /// start-up while it holds the links; the fence's end here (its result arrived and went on
    /// to the children, both in `fx`) lets the links go.
    pub fn carry(&mut self, fx: Vec<Effect>) -> Vec<Effect> {
        let Some(rdma) = self.rdma.as_mut().filter(|r| !r.released()) else { return fx };
        let (mut out, mut outs, mut fence_over) = (Vec::with_capacity(fx.len()), Vec::new(), false);
        for e in fx {
            match e {
                Effect::Up(m) if first_fence(&m) && rdma.parent().is_some() => outs.extend(rdma.send(rdma.parent().unwrap_or_default(), Payload::Msg(m))),
                Effect::DownTo(kids, m) if first_fence(&m) => kids.into_iter().for_each(|k| outs.extend(rdma.send(k + 1, Payload::Msg(m.clone())))),
                e => {
                    fence_over |= e == Effect::Mark(Mark::Fence);
                    if matches!(e, Effect::Mark(Mark::PmiInit(_))) {
                        rdma.rank_uses_pmi();
                    }
                    out.push(e);
                }
            }
        }
        if fence_over {
            outs.extend(rdma.fence_over());
        }
        out.extend(self.carry_out(outs));
        out
    }

    /// What the RDMA start-up asked for, as effects (members are nodes shifted by one).
    fn carry_out(&mut self, outs: Vec<Out>) -> Vec<Effect> {
        let parent = self.rdma.as_ref().and_then(StartupRdma::parent);
        let to_member = |to: u32, msg: Msg| if Some(to) == parent { Effect::Up(msg) } else { Effect::Send(Hop::Child(to - 1), msg) };
        let mut fx = Vec::new();
        for o in outs {
            match o {
                Out::Tcp { to, msg } => fx.push(to_member(to, msg)),
                Out::Plain { to, payload: Payload::Fabric(data) } => fx.push(to_member(to, Msg::Fabric { data })),
                Out::Plain { to, payload: Payload::Msg(m) } => fx.push(to_member(to, m)),
                Out::Deliver { from, payload: Payload::Fabric(data) } => {
                    let from_child = (Some(from) != parent).then(|| from - 1);
                    let step = self.inner.on_message(from_child, &data);
                    let step = self.route(step);
                    fx.extend(self.out(step));
                }
                Out::Deliver { from, payload: Payload::Msg(m) } => fx.push(Effect::Deliver((Some(from) != parent).then(|| from - 1), m)),
                // The front end says which transport the job used, and any failover.
                Out::Decided(_) | Out::Switched { .. } => {}
                Out::Failed(why) => fx.push(Effect::Fault(why)),
            }
        }
        fx
    }

    /// A `Msg::Fabric` or `Msg::Rdma` from the child daemon of `from_child`, or from the parent
    /// (`None`).
    pub fn tree_msg(&mut self, from_child: Option<u32>, msg: Msg) -> Vec<Effect> {
        match msg {
            Msg::Fabric { data } => self.on_message(from_child, &data),
            Msg::Rdma(step) => self.on_rdma(from_child, step),
            _ => Vec::new(),
        }
    }

    /// A `Msg::Rdma` from the child daemon of `from_child`, or from the parent (`None`).
    fn on_rdma(&mut self, from_child: Option<u32>, step: RdmaStep) -> Vec<Effect> {
        let Some(rdma) = self.rdma.as_mut() else { return Vec::new() };
        let Some(from) = from_child.map(|c| c + 1).or(rdma.parent()) else { return Vec::new() };
        let outs = rdma.on_tcp(from, step);
        self.carry_out(outs)
    }

    /// The RDMA carrier thread woke the loop.
    pub fn on_wake(&mut self) -> Vec<Effect> {
        let Some(rdma) = self.rdma.as_mut() else { return Vec::new() };
        let outs = rdma.on_wake();
        self.carry_out(outs)
    }

    /// What leaves the service: the held refusal instead of starting the ranks, and before they
    /// start, their variables.
    fn out(&mut self, fx: Vec<Effect>) -> Vec<Effect> {
        let fx = self.unless_refused(fx);
        if fx.contains(&Effect::StartRanks) {
            self.prepare_env();
        }
        fx
    }

    /// Every local rank's variables: the fabric's, and the topology for those that get it.
    fn prepare_env(&mut self) {
        let any = self.topology_wanted.iter().any(|&w| w);
        if let Err(e) = self.topology.finish(any, std::mem::take(&mut self.topology_path)) {
            // The ranks discover the topology for themselves, as they would without rlaunch.
            super::say::say(Some(self.node), format_args!("the ranks discover the hardware topology themselves: {e}"));
        }
        let topo = self.topology.env();
        self.env = (0..self.topology_wanted.len())
            .map(|l| {
                let mut env = self.inner.rank_env(l as u32).to_vec();
                if self.topology_wanted[l] {
                    env.extend(topo.iter().cloned());
                }
                if let Some(tls) = self.ucx.get(l).copied().flatten() {
                    env.push(("UCX_TLS".into(), tls.into()));
                }
                env
            })
            .collect();
    }

    /// `fx`, with the held refusal in place of starting the ranks.
    fn unless_refused(&mut self, fx: Vec<Effect>) -> Vec<Effect> {
        if self.refused.is_none() || !fx.contains(&Effect::StartRanks) {
            return fx;
        }
        let mut out: Vec<Effect> = fx.into_iter().filter(|e| *e != Effect::StartRanks).collect();
        out.extend(self.refused.take().unwrap_or_default());
        out
    }

    /// The local ranks' places.
    pub fn binding(&self) -> &Binding {
        &self.binding
    }

    /// A `Msg::Fabric` from the child daemon of `from_child`, or from the parent (`None`).
    fn on_message(&mut self, from_child: Option<u32>, data: &[u8]) -> Vec<Effect> {
        let step = self.inner.on_message(from_child, data);
        let fx = self.route(step);
        self.out(fx)
    }

    /// The ranks wait for the table (the node is not done meanwhile, unless the job is ending).
    pub fn holds_ranks(&self) -> bool {
        self.inner.holds_ranks()
    }

    /// The variables local rank `l` gets from the fabric and the topology export.
    pub fn rank_env(&self, l: u32) -> &[(String, String)] {
        self.env.get(l as usize).map_or(&[], Vec::as_slice)
    }

    /// The node's files the ranks read (endpoint table, topology), once written: the guard
    /// removes them should the daemon be killed.
    pub fn files(&self) -> impl Iterator<Item = &std::path::Path> {
        self.inner.table_path().into_iter().chain(self.topology.path())
    }

    /// The job's fabric, once the exchange chose it.
    pub fn chosen(&self) -> Option<fabrics::Fabric> {
        self.inner.chosen()
    }
}

/// Free bytes in /dev/shm, where UCX's POSIX transport puts its segments.
fn shm_free() -> Option<u64> {
    let s = nix::sys::statvfs::statvfs("/dev/shm").ok()?;
    Some(s.blocks_available().saturating_mul(s.fragment_size()))
}

fn effects(step: Step) -> Vec<Effect> {
    let mut out = Vec::new();
    if let Some(data) = step.up {
        out.push(Effect::Up(Msg::Fabric { data }));
    }
    for (node, data) in step.down {
        out.push(Effect::Send(Hop::Child(node), Msg::Fabric { data }));
    }
    if let Some(e) = step.error {
        out.push(Effect::Fault(e));
    } else if step.start_ranks {
        out.push(Effect::StartRanks);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_refusal_goes_up_instead_of_starting_the_ranks() {
        let refusal = || Effect::Up(Msg::NodeFailed { node: 1, fault: crate::wire::NodeFault::Unsatisfiable("PE".into()) });
        let up = || Effect::Up(Msg::Fabric { data: vec![1] });
        let mut f = Fabric::new(1, &Topology::new(4, 2), Arc::new(|| {}));
        assert_eq!(f.unless_refused(vec![Effect::StartRanks]), vec![Effect::StartRanks], "nothing held");
        f.refused = Some(vec![refusal()]);
        assert_eq!(f.unless_refused(vec![up()]), vec![up()], "the exchange goes on meanwhile");
        assert_eq!(f.unless_refused(vec![up(), Effect::StartRanks]), vec![up(), refusal()]);
    }

    #[test]
    fn steps_become_effects_in_order() {
        let step = Step { up: Some(vec![1]), down: vec![(4, vec![2]), (5, vec![3])], start_ranks: true, ..Step::default() };
        assert_eq!(
            effects(step),
            vec![
                Effect::Up(Msg::Fabric { data: vec![1] }),
                Effect::Send(Hop::Child(4), Msg::Fabric { data: vec![2] }),
                Effect::Send(Hop::Child(5), Msg::Fabric { data: vec![3] }),
                Effect::StartRanks,
            ]
        );
        let failed = Step { down: vec![(4, vec![2])], error: Some("broken".into()), start_ranks: true, ..Step::default() };
        assert_eq!(
            effects(failed),
            vec![Effect::Send(Hop::Child(4), Msg::Fabric { data: vec![2] }), Effect::Fault("broken".into())],
            "an error wins over starting"
        );
    }
}
