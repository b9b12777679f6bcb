//! The daemon's side of the fabric exchange (`crate::fabric`): feeds the launch message and
//! `Msg::Fabric` frames to [`NodeFabric`](crate::fabric::NodeFabric), routes what it returns onto
//! the tree links, and starts the ranks once the endpoint table is written.

use super::Daemon;
use crate::fabric::Step;
use crate::wire::Msg;

impl Daemon {
    /// After the launch message: contribute this node's inventory. Ranks start in
    /// [`Daemon::fabric_apply`] once every inventory is here (at once with `--fabric off`).
    pub(super) fn fabric_launch(&mut self) {
        let step = match self.launch.as_deref() {
            Some(l) => self.fabric.on_launch(l),
            None => return,
        };
        self.fabric_apply(step);
    }

    /// A `Msg::Fabric` from the child daemon of `from_child`, or from the parent (`None`).
    pub(super) fn fabric_msg(&mut self, from_child: Option<u32>, data: Vec<u8>) {
        let step = self.fabric.on_message(from_child, &data);
        self.fabric_apply(step);
    }

    fn fabric_apply(&mut self, step: Step) {
        if let Some(up) = step.up {
            self.parent.send(&Msg::Fabric { data: up });
        }
        for (node, data) in step.down {
            if let Some(c) = self.children.values_mut().find(|c| c.node == Some(node)) {
                c.link.send(&Msg::Fabric { data });
                let _ = c.link.flush();
            }
        }
        if let Some(e) = step.error {
            self.node_error(e);
            self.terminate_all();
            return;
        }
        if step.start_ranks {
            if let Err(e) = self.start_ranks() {
                self.node_error(format!("{e:#}"));
                self.terminate_all();
            }
        }
    }

    /// The node is not done while its ranks wait for the table (unless the job is ending).
    pub(super) fn fabric_holds_ranks(&self) -> bool {
        self.fabric.holds_ranks() && !self.stop_spawning
    }
}
