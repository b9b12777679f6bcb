//! This node's placement: the topology read while the launch message travels, every local rank's
//! CPUs and GPUs computed once when it arrives, the `--report-bindings` lines sent up before any
//! rank starts, and a request that cannot be met here refused as a usage error naming the node.

use super::effect::Effect;
use super::say::say;
use crate::binding;
use crate::job::JobView;
use crate::wire::{Msg, NodeFault};
use fabrics::placement::RankPlace;
use fabrics::Topology;

#[derive(Default)]
pub struct Binding {
    topo: Option<Result<Topology, String>>,
    /// Local ranks' places, in local-rank order; empty while unknown or unbound by necessity.
    places: Vec<RankPlace>,
}

impl Binding {
    pub fn discover(&mut self) {
        if self.topo.is_none() {
            self.topo = Some(Topology::discover_system().map_err(|e| e.to_string()));
        }
    }

    /// Places the local ranks. `Err` holds the effects of a refusal: the ranks must not start.
    pub fn on_launch(&mut self, job: &JobView) -> Result<Vec<Effect>, Vec<Effect>> {
        let node = job.node().unwrap_or_default();
        let spec = &job.launch().placement;
        if job.local_ranks().is_empty() {
            return Ok(Vec::new());
        }
        self.discover();
        let refuse = |why: String| vec![Effect::Up(Msg::NodeFailed { node, fault: NodeFault::Unsatisfiable(why) })];
        let topo = match self.topo.as_ref().expect("discovered above") {
            Ok(t) => t,
            // Only the default asked for nothing in particular: it may run unbound.
            Err(e) if !spec.asked() => {
                say(Some(node), format_args!("cannot read the CPU topology ({e}); ranks run unbound"));
                return Ok(Vec::new());
            }
            Err(e) => return Err(refuse(format!("cannot read this node's CPU topology for placement: {e}"))),
        };
        match binding::place_node(spec, topo, job.local_ranks(), &[]) {
            Ok(p) => self.places = p,
            Err(e) => return Err(refuse(e.to_string())),
        }
        if !spec.report {
            return Ok(Vec::new());
        }
        let ranks = self.places.iter().map(|p| (p.rank, binding::describe(topo, p))).collect();
        Ok(vec![Effect::Up(Msg::Bindings { node, ranks })])
    }

    /// The CPUs local rank `li` must be bound to (None: leave it the daemon's affinity).
    pub fn cpus(&self, li: usize) -> Option<Vec<u32>> {
        self.places.get(li).filter(|p| p.bound).map(|p| p.cpus.iter().collect())
    }

    /// What libpmix tells Open MPI about bound local ranks: `(rank, PMIX_CPUSET,
    /// PMIX_LOCALITY_STRING)`; unbound ranks have neither, which Open MPI reads as "not bound".
    pub fn pmix_locality(&self) -> Vec<(u32, String, String)> {
        let Some(Ok(topo)) = self.topo.as_ref() else { return Vec::new() };
        self.places.iter().filter(|p| p.bound).map(|p| (p.rank, p.cpus.to_string(), binding::locality_string(topo, &p.cpus))).collect()
    }

    /// Local rank `li`'s GPU variables; `user_set` says whether the user set a name with `-x`.
    pub fn env(&self, li: usize, user_set: &dyn Fn(&str) -> bool) -> Vec<(String, String)> {
        match (self.places.get(li), self.topo.as_ref()) {
            (Some(p), Some(Ok(t))) => binding::gpu_env(t, p, user_set),
            _ => Vec::new(),
        }
    }
}
