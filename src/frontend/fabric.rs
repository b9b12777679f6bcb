//! The front end as the root of the launch-time fabric exchange ([`crate::fabric`]): it checks
//! the request against every node's inventory before sending the full set down, prints
//! `--inventory`, and fails the job with exit 2 when the request cannot be met.

use super::effect::Effect;
use super::verdict::Failure;
use crate::fabric::FrontGather;
use crate::job::JobView;
use crate::tree::Hop;
use crate::wire::Msg;

pub struct RootFabric {
    gather: FrontGather,
}

impl RootFabric {
    pub fn new(job: &JobView) -> RootFabric {
        let names = job.launch().nodes.iter().map(|n| n.name.clone()).collect();
        RootFabric { gather: FrontGather::new(job.launch(), job.map(), names) }
    }

    pub fn gather(&self) -> &FrontGather {
        &self.gather
    }

    /// A `Msg::Fabric` from direct child `node`, `now_ms` into the job.
    pub fn on_message(&mut self, node: u32, data: &[u8], now_ms: f64) -> Vec<Effect> {
        let chosen_before = self.gather.fabric().is_some();
        let step = self.gather.on_message(node, data, now_ms);
        let mut out: Vec<Effect> = step.down.into_iter().map(|(child, data)| Effect::Send(Hop::Child(child), Msg::Fabric { data })).collect();
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
