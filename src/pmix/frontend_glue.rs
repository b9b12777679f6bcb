//! PMIx at the front end: the root of the PMIx fence tree and the turning point of direct-modex
//! messages between subtrees. Included from `frontend.rs` as a child module so it can reach the
//! front end's state. Reports (abort, leaving without finalize) arrive as `PmiReport`s and are
//! handled with PMI's.

use super::{Frontend, Outcome};
use crate::fence::Fence;
use crate::wire::Msg;
use mio::Token;

#[derive(Default)]
pub(super) struct FrontPmix {
    fence: Option<Fence>,
}

impl Frontend {
    /// A PMIx message from the direct child on link `t`. Returns other messages back.
    pub(super) fn pmix_msg(&mut self, t: Token, msg: Msg) -> Option<Msg> {
        match msg {
            Msg::PmixFence { seq, puts } => {
                let node = self.links.get(&t).and_then(|l| l.peer_link())?;
                self.pmix_fence(node, seq, puts);
                None
            }
            Msg::PmixDmodexReq { node: to, .. } | Msg::PmixDmodexResp { to, .. } => {
                self.pmix_send_towards(to, &msg);
                None
            }
            other => Some(other),
        }
    }

    fn pmix_fence(&mut self, node: u32, seq: u64, puts: Vec<(String, String)>) {
        let (fanout, nnodes) = (self.plan.launch.fanout, self.plan.nodes.len() as u32);
        let map = &self.plan.map;
        let fence = self.pmix.fence.get_or_insert_with(|| {
            let children = crate::fence::participants(None, fanout, nnodes, |n| !map.ranks_on(n).is_empty());
            Fence::new("the front end", false, children)
        });
        match fence.child(node, seq, puts) {
            Ok(None) => {}
            Ok(Some(ready)) => {
                let _ = fence.done(ready.seq);
                let kids = fence.children().to_vec();
                let msg = Msg::PmixFenceDone { seq: ready.seq, puts: ready.puts };
                for l in self.links.values_mut() {
                    if l.peer_link().is_some_and(|n| kids.contains(&n)) {
                        l.send(&msg);
                        let _ = l.flush();
                    }
                }
            }
            Err(e) => {
                if !self.terminating {
                    eprintln!("rlaunch: PMIx: {e}");
                }
                self.fail(Outcome::LaunchFailed, crate::exitcode::LAUNCH_FAILED);
            }
        }
    }

    /// Down the link whose subtree holds node `to`.
    fn pmix_send_towards(&mut self, to: u32, msg: &Msg) {
        let fanout = self.plan.launch.fanout;
        if let Some(l) = self.links.values_mut().find(|l| l.peer_link().is_some_and(|n| crate::tree::in_subtree(n, to, fanout))) {
            l.send(msg);
            let _ = l.flush();
        }
    }
}
