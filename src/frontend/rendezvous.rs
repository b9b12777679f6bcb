//! Rendezvous: a daemon started by a resource manager (one srun step for all nodes) does not know
//! its node rank. It connects to the front end, says its node name, and is told which node it is
//! and where its parent listens — once that parent has joined.

use super::daemons::Daemons;
use crate::link::flush_blocking;
use crate::links::Links;
use crate::tree::Topology;
use crate::wire::Msg;
use mio::{Registry, Token};
use std::time::Duration;

#[derive(Default)]
pub struct Rendezvous {
    /// Daemons (by link) placed on a node whose parent has not joined yet.
    pending: Vec<(Token, u32)>,
}

impl Rendezvous {
    /// The daemon on link `t` calls itself `name`. Returns the line to print when no node of
    /// that name is waiting (the daemon is refused).
    pub fn arrive(
        &mut self,
        t: Token,
        name: &str,
        listen_port: u16,
        peer_ip: Option<&str>,
        (links, daemons, topo): (&mut Links, &mut Daemons, &Topology),
        registry: &Registry,
    ) -> Option<String> {
        let Some(node) = daemons.pick_for(name) else {
            if let Some(l) = links.child_mut(t) {
                l.send(&Msg::Refuse { message: format!("no unassigned node named '{name}' in this job") });
                flush_blocking(l, Duration::from_millis(500));
            }
            links.remove(t, registry);
            return Some(format!("rlaunch: a daemon on '{name}' joined, but no node of that name is waiting; ignoring it"));
        };
        let d = daemons.get_mut(node).expect("picked from the table");
        (d.assigned, d.listen_port, d.addr) = (true, listen_port, peer_ip.map(str::to_string));
        self.pending.push((t, node));
        self.place(links, daemons, topo, registry);
        None
    }

    /// Whether daemons wait for their parents.
    pub fn waiting(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Sends every waiting daemon whose parent is now known where to go.
    pub fn place(&mut self, links: &mut Links, daemons: &Daemons, topo: &Topology, registry: &Registry) {
        for (t, node) in std::mem::take(&mut self.pending) {
            let parent = match topo.parent_of(node) {
                None => None,
                Some(p) => match daemons.listen_addr(p) {
                    Some(addr) => Some(addr),
                    None => {
                        self.pending.push((t, node));
                        continue;
                    }
                },
            };
            let direct = parent.is_none();
            let Some(l) = links.child_mut(t) else { continue };
            l.send(&Msg::Assign { node, parent });
            if direct {
                // The same connection continues as this node's link, both directions from seq 0.
                let _ = l.flush();
                links.rejoin(t, node);
            } else {
                flush_blocking(l, Duration::from_secs(2));
                links.remove(t, registry);
            }
        }
    }
}
