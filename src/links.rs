//! The tree links of one vertex (a daemon or the front end) as one set: the parent link (daemons
//! only) and the accepted child links, before and after each says which node it is. Messages go
//! out by [`Hop`] or by target node through the vertex's [`Router`]; nothing outside this file
//! walks the links to find a next hop.

use crate::heartbeat::Beat;
use crate::link::{flush_blocking, Link};
use crate::token;
use crate::tree::{Hop, Router};
use crate::wire::{Dir, JobKey, Launch, Msg};
use mio::{Interest, Registry, Token};
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::time::Duration;

pub struct Links {
    router: Router,
    key: JobKey,
    parent: Option<Link>,
    /// Accepted connections by token, with the node each said it is once it joined.
    accepted: HashMap<Token, (Link, Option<u32>)>,
    /// Joined child nodes and their tokens.
    joined: BTreeMap<u32, Token>,
    next: usize,
    /// Frames rejected on child links (anyone on the network can connect): only the first is
    /// said at once, the count at the end.
    rejected: usize,
    /// Heartbeats, once the launch said how often (issue 17).
    beat: Option<Beat>,
    /// A daemon's ancestors and where they listen, the front end (None) first and its parent
    /// last: where it reconnects when its parent is lost (tree repair).
    ancestors: Ancestors,
}

/// Ancestors and where they listen, the front end (None) first.
pub type Ancestors = Vec<(Option<u32>, String)>;

impl Links {
    pub fn new(router: Router, key: JobKey) -> Links {
        Links { router, key, parent: None, accepted: HashMap::new(), joined: BTreeMap::new(), next: 0, rejected: 0, beat: None, ancestors: Vec::new() }
    }

    pub fn router(&self) -> &Router {
        &self.router
    }

    /// A daemon's parent link, registered under [`token::PARENT`].
    pub fn set_parent(&mut self, mut link: Link, registry: &Registry) -> io::Result<()> {
        registry.register(&mut link.stream, token::PARENT, Interest::READABLE | Interest::WRITABLE)?;
        if let Some(b) = self.beat {
            let _ = b.arm(&link.stream);
        }
        // The address this daemon connected to is where its parent listens.
        let parent = self.router.me().and_then(|me| self.router.live_parent(me));
        if let Ok(addr) = link.stream.peer_addr() {
            self.ancestors.retain(|(n, _)| *n != parent);
            self.ancestors.push((parent, addr.to_string()));
        }
        self.parent = Some(link);
        Ok(())
    }

    /// This vertex's own address on its parent link: where the parent (and, on one network,
    /// the children) reach this host.
    pub fn parent_local_ip(&self) -> Option<std::net::IpAddr> {
        self.parent.as_ref()?.stream.local_addr().ok().map(|a| a.ip())
    }

    /// Tree repair: the parent link is now `link`, to the ancestor `at` (None: the front end),
    /// which said its own ancestors are `chain`. The old parent link is dropped.
    pub fn replace_parent(&mut self, link: Link, at: Option<u32>, chain: Ancestors, registry: &Registry) -> io::Result<()> {
        if let Some(mut old) = self.parent.take() {
            let _ = registry.deregister(&mut old.stream);
        }
        self.ancestors = chain;
        if let Some(me) = self.router.me() {
            // Whatever lies between is gone: this vertex's parent is now `at`.
            for b in Router::new(*self.router.topology(), at).between(me) {
                self.router.lose(b);
            }
        }
        self.set_parent(link, registry)?;
        // The children's ancestors changed with this one's.
        self.down(&Msg::NodeAncestors { chain: self.ancestors.clone() });
        Ok(())
    }

    /// The parent said where the ancestors above it listen (`Msg::NodeAncestors`).
    pub fn set_ancestors_above(&mut self, chain: Ancestors) {
        let parent = self.ancestors.pop();
        self.ancestors = chain;
        self.ancestors.extend(parent);
    }

    /// Where ancestor `node` (None: the front end) listens, if known.
    pub fn ancestor_addr(&self, node: Option<u32>) -> Option<&str> {
        self.ancestors.iter().find(|(n, _)| *n == node).map(|(_, a)| a.as_str())
    }

    /// `node` is lost: routes skip it from now on and its link, if it is a child here, is
    /// closed (its own children reconnect above it). True when that is news.
    pub fn lose_node(&mut self, node: u32, registry: &Registry) -> bool {
        if let Some(t) = self.joined.get(&node).copied() {
            if let Some((mut l, _)) = self.accepted.remove(&t) {
                let _ = registry.deregister(&mut l.stream);
                let _ = l.stream.shutdown(std::net::Shutdown::Both);
            }
            self.joined.remove(&node);
        }
        self.router.lose(node)
    }

    /// `node` is lost, and every vertex below is told so (`Msg::NodeGone`).
    pub fn gone(&mut self, node: u32, registry: &Registry) {
        self.lose_node(node, registry);
        self.down(&Msg::NodeGone { node });
    }

    /// A not-yet-joined link `t` brought `Msg::NodeRejoin` from `node`, whose parent was lost:
    /// it joins here when this vertex is its nearest live ancestor (the nodes between are lost
    /// then), and learns where this vertex's own ancestors listen. Ok: the nodes found lost;
    /// Err: `node` does not belong here (a node declared lost, say), and the link is closed.
    pub fn accept_rejoin(&mut self, t: Token, node: u32, registry: &Registry) -> Result<Vec<u32>, u32> {
        let below = match self.router.me() {
            None => node < self.router.topology().nnodes(),
            Some(me) => me != node && self.router.topology().in_subtree(me, node),
        };
        if !below || self.router.is_lost(node) {
            self.remove(t, registry);
            return Err(node);
        }
        let between = self.router.between(node);
        for &b in &between {
            self.lose_node(b, registry);
        }
        if let Some(old) = self.joined.get(&node).copied().filter(|&old| old != t) {
            // Its earlier link here (a reconnect after a silence): the new one replaces it.
            if let Some((mut l, _)) = self.accepted.remove(&old) {
                let _ = registry.deregister(&mut l.stream);
            }
        }
        self.join(t, node);
        self.send(Hop::Child(node), &Msg::NodeAncestors { chain: self.ancestors.clone() });
        Ok(between)
    }

    /// Heartbeat probes on every link from now on (and on those that come later).
    pub fn set_beat(&mut self, beat: Beat) {
        self.beat = Some(beat);
        for (l, _) in self.accepted.values() {
            let _ = beat.arm(&l.stream);
        }
        if let Some(p) = self.parent.as_ref() {
            let _ = beat.arm(&p.stream);
        }
    }

    pub fn beat(&self) -> Option<&Beat> {
        self.beat.as_ref()
    }

    pub fn parent_mut(&mut self) -> Option<&mut Link> {
        self.parent.as_mut()
    }

    /// Stops watching the parent link (a daemon whose parent is gone, or that was told to end by
    /// a signal): what is queued or sent later is still written whenever the socket takes it.
    pub fn mute_parent(&mut self, registry: &Registry) {
        if let Some(l) = self.parent.as_mut() {
            let _ = registry.deregister(&mut l.stream);
        }
    }

    /// Takes every connection waiting on `listener` as a not-yet-joined child link.
    pub fn accept(&mut self, listener: &mio::net::TcpListener, registry: &Registry) {
        loop {
            match listener.accept() {
                Ok((mut s, _)) => {
                    s.set_nodelay(true).ok();
                    if let Some(b) = self.beat {
                        let _ = b.arm(&s);
                    }
                    let t = token::link(self.next);
                    self.next += 1;
                    if registry.register(&mut s, t, Interest::READABLE | Interest::WRITABLE).is_ok() {
                        self.accepted.insert(t, (Link::new(s, self.key, Dir::Down, None), None));
                    }
                }
                // WouldBlock ends the batch; any other error drops that one connection attempt.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => break,
            }
        }
    }

    /// The child link `t` said it is `node`: from now on frames to it carry its link id, and the
    /// node's traffic goes this way.
    pub fn join(&mut self, t: Token, node: u32) {
        if let Some((l, at)) = self.accepted.get_mut(&t) {
            l.set_link(self.key, Dir::Down, node);
            *at = Some(node);
            self.joined.insert(node, t);
        }
    }

    /// A daemon's child link `t`, not joined yet, brought `msg`. When it is the hello of a child
    /// of this node, the link joins as that node: the hello gets the address the child came from
    /// (where its own children will connect) and the child gets the launch, when it came already.
    /// Ok(None): not a hello; Err(node): a hello of a node that is not a child here.
    /// A `Msg::NodeRejoin` (tree repair) joins as its node too, when it belongs here, and
    /// becomes the `Msg::NodeRejoined` that tells the front end.
    pub fn child_hello(&mut self, t: Token, msg: &mut Msg, peer_ip: Option<&str>, launch: Option<&Launch>, registry: &Registry) -> Result<Option<u32>, u32> {
        if let Msg::NodeRejoin { node, .. } = *msg {
            let lost = self.accept_rejoin(t, node, registry)?;
            let at = self.router.me().expect("a daemon's links");
            *msg = Msg::NodeRejoined { node, at, lost };
            return Ok(Some(node));
        }
        let Msg::Hello { node, addr, listen_port, .. } = msg else { return Ok(None) };
        if !self.router.is_child(*node) {
            return Err(*node);
        }
        self.join(t, *node);
        if addr.is_none() && *listen_port != 0 {
            *addr = peer_ip.map(str::to_string);
        }
        let node = *node;
        self.send(Hop::Child(node), &Msg::NodeAncestors { chain: self.ancestors.clone() });
        if let Some(l) = launch {
            self.send(Hop::Child(node), &Msg::Launch(Box::new(l.clone())));
        }
        Ok(Some(node))
    }

    /// After a rendezvous: the connection continues as `node`'s link, both directions afresh.
    pub fn rejoin(&mut self, t: Token, node: u32) {
        if let Some((l, at)) = self.accepted.get_mut(&t) {
            l.rebind(self.key, Dir::Down, node);
            *at = Some(node);
            self.joined.insert(node, t);
        }
    }

    /// The joined node on link `t`, if any.
    pub fn node_of(&self, t: Token) -> Option<u32> {
        self.accepted.get(&t).and_then(|(_, node)| *node)
    }

    pub fn child_mut(&mut self, t: Token) -> Option<&mut Link> {
        self.accepted.get_mut(&t).map(|(l, _)| l)
    }

    pub fn joined(&self) -> impl Iterator<Item = u32> + '_ {
        self.joined.keys().copied()
    }

    /// Closes child link `t`; returns the node it was, if it had joined.
    pub fn remove(&mut self, t: Token, registry: &Registry) -> Option<u32> {
        let (mut l, node) = self.accepted.remove(&t)?;
        let _ = registry.deregister(&mut l.stream);
        if let Some(n) = node {
            // Only when this link was still the node's (not replaced by a reconnect).
            if self.joined.get(&n) == Some(&t) {
                self.joined.remove(&n);
                self.router.lose(n);
            }
        }
        node
    }

    /// Counts a rejected frame; true for the first, the only one said when it happens.
    pub fn note_rejected(&mut self) -> bool {
        self.rejected += 1;
        self.rejected == 1
    }

    /// The line for the rejected frames not said when they came, if any.
    pub fn rejected_summary(&self) -> Option<String> {
        (self.rejected > 1).then(|| format!("rejected {} more frame(s) from unauthenticated connections", self.rejected - 1))
    }

    /// The parent is gone: mutes it and closes every child link, so that the daemons below learn
    /// at once that the tree above them is gone (they end their ranks in parallel with this
    /// vertex, not after it).
    pub fn cut_off(&mut self, registry: &Registry) {
        self.mute_parent(registry);
        for (_, (mut l, _)) in self.accepted.drain() {
            let _ = registry.deregister(&mut l.stream);
            let _ = l.stream.shutdown(std::net::Shutdown::Both);
        }
        self.joined.clear();
    }

    /// Sends on one hop; returns the frame size (0 when there is no such link).
    pub fn send(&mut self, hop: Hop, msg: &Msg) -> usize {
        let link = match hop {
            Hop::Local => None,
            Hop::Parent => self.parent.as_mut(),
            Hop::Child(n) => match self.joined.get(&n) {
                Some(t) => self.accepted.get_mut(t).map(|(l, _)| l),
                None => None,
            },
        };
        let Some(l) = link else { return 0 };
        let n = l.send(msg);
        let _ = l.flush();
        n
    }

    /// Sends towards `node` (a child subtree or up); false when `node` is this vertex.
    pub fn towards(&mut self, node: u32, msg: &Msg) -> bool {
        match self.router.next_hop(node) {
            Hop::Local => false,
            hop => {
                self.send(hop, msg);
                true
            }
        }
    }

    pub fn up(&mut self, msg: &Msg) {
        self.send(Hop::Parent, msg);
    }

    /// To every joined child.
    pub fn down(&mut self, msg: &Msg) {
        let nodes: Vec<u32> = self.joined.keys().copied().collect();
        self.down_to(&nodes, msg);
    }

    /// To the joined children among `nodes` (others are skipped: they are not direct children).
    pub fn down_to(&mut self, nodes: &[u32], msg: &Msg) {
        for &n in nodes {
            self.send(Hop::Child(n), msg);
        }
    }

    /// To the children whose subtree holds `target` (None: every child).
    pub fn down_subtree(&mut self, target: Option<u32>, msg: &Msg) {
        match target {
            None => self.down(msg),
            Some(t) => {
                if let Hop::Child(c) = self.router.next_hop(t) {
                    self.send(Hop::Child(c), msg);
                }
            }
        }
    }

    /// Writes what every link takes without blocking; the parent's error is returned (a child's
    /// shows up as a read error on its next event).
    pub fn flush(&mut self) -> io::Result<()> {
        for (l, _) in self.accepted.values_mut() {
            let _ = l.flush();
        }
        match self.parent.as_mut() {
            Some(p) => p.flush(),
            None => Ok(()),
        }
    }

    /// Bytes queued on the link towards `node` (back-pressure on image copies).
    pub fn pending_towards(&self, node: u32) -> usize {
        match self.router.next_hop(node) {
            Hop::Local => 0,
            Hop::Parent => self.pending_up(),
            Hop::Child(c) => self.joined.get(&c).and_then(|t| self.accepted.get(t)).map_or(0, |(l, _)| l.pending_out()),
        }
    }

    /// Bytes queued towards the parent (back-pressure on rank output).
    pub fn pending_up(&self) -> usize {
        self.parent.as_ref().map_or(0, Link::pending_out)
    }

    /// The last words before the process exits: everything queued, waiting at most `timeout` per
    /// link.
    pub fn flush_blocking(&mut self, timeout: Duration) {
        for (l, _) in self.accepted.values_mut() {
            flush_blocking(l, timeout);
        }
        if let Some(p) = self.parent.as_mut() {
            flush_blocking(p, timeout);
        }
    }
}
