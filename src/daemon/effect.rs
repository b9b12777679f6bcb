//! What the daemon's services ask of its loop. A service gets the job and an input, changes its
//! own state, and returns effects; only the loop ([`super::node`]) touches the tree links and the
//! rank table, and it carries the effects out in the order they were returned.

use crate::spec::RankStatus;
use crate::tree::Hop;
use crate::wire::Msg;

#[derive(Debug, PartialEq)]
pub enum Effect {
    /// To the parent.
    Up(Msg),
    /// On one hop; dropped when that link is not up.
    Send(Hop, Msg),
    /// Towards a node other than this one: down the child subtree that holds it, else up.
    Towards(u32, Msg),
    /// Down the child subtree that holds the node; dropped when no child holds it.
    Below(u32, Msg),
    /// To these children (those that joined).
    DownTo(Vec<u32>, Msg),
    /// Down every child link (after a tree repair, adopted children too).
    Down(Msg),
    /// Something failed on this node outside any rank: report `NodeFailed` (internal) and
    /// terminate the local ranks.
    Fault(String),
    /// The endpoint table is written (or not wanted): set up the ranks' PMI or PMIx.
    StartRanks,
    /// PMI or PMIx is ready for the local ranks: spawn them.
    SpawnRanks,
    /// For the launch timeline.
    Mark(crate::timeline::Mark),
    /// A tree message that came over the start-up's RDMA links, from the child daemon of this
    /// node, or from the parent (`None`): handled as if its TCP link had brought it.
    Deliver(Option<u32>, Msg),
    /// A rank was reaped and its output drained: its last PMI words, then its exit, go up.
    RankExit { rank: u32, pid: u32, status: RankStatus },
    /// Restarts: start these local ranks again (rank scope).
    Respawn(Vec<u32>),
    /// Restarts: end every local rank for a job restart (SIGTERM, then SIGKILL after the grace).
    StopRanks,
    /// Restarts: start every local rank again as this generation, with fresh PMI/PMIx state.
    NewGeneration(u32),
}
