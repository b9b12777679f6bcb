//! What the front end's services ask the event loop to do. Services return these; only the loop
//! owns the links and the reporter.

use super::verdict::Failure;
use crate::tree::Hop;
use crate::wire::Msg;

#[derive(Debug)]
pub enum Effect {
    /// On one hop (a direct child).
    Send(Hop, Msg),
    /// Down every child link.
    Down(Msg),
    /// To the direct children among these nodes.
    DownTo(Vec<u32>, Msg),
    /// Down the child link whose subtree holds this node.
    Towards(u32, Msg),
    /// A first-fence contribution from direct child `node` (over TCP or the start-up's RDMA
    /// links), for the root fence.
    Deliver(u32, Msg),
    /// Record a failure with the verdict (which may end the job).
    Fail(Failure),
    /// One of rlaunch's own lines on stderr.
    Say(String),
    /// A line shown only at this verbosity (`-v` = 1) or above.
    Detail(u8, String),
    /// `--inventory` output for stdout.
    Inventory(String),
    /// End the ranks now with this message (`Terminate` or `Kill`) and start waiting for the
    /// daemons to confirm.
    End(Msg),
    /// This node is lost: every vertex routes around it from now on (`Msg::NodeGone`).
    Lose(u32),
    /// Node `node` was lost with these `ranks` still running and restarts allowed: a spare
    /// takes its place ("node k is now host X" to every vertex), or its ranks go to the other
    /// nodes' free slots, and the restart policy decides (`failure` when it does not restart).
    NodeLost { node: u32, to: super::lost::Takeover, ranks: Vec<u32>, failure: Failure },
}
