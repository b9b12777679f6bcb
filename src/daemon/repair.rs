//! Lost nodes on a daemon (issue 17): tree repair. When the link to
//! its parent breaks or goes silent, the daemon reconnects to its nearest live ancestor (the
//! addresses came down the tree in `Msg::NodeAncestors`) with an authenticated
//! `Msg::NodeRejoin` instead of ending its ranks; only when no ancestor answers, the front end
//! included, is it cut off. When a child's link breaks or its heartbeat probes go unanswered,
//! the front end hears of it.

use crate::job::JobView;
use crate::link::{self, flush_blocking, Link};
use crate::links::{Ancestors, Links};
use crate::wire::{Dir, JobKey, Msg, NodeFault};
use mio::Registry;
use std::io;
use std::time::{Duration, Instant};

/// How long one ancestor gets to take the connection, and then to answer it.
const TRY: Duration = Duration::from_secs(2);

/// Why a child's link was lost: it closed (the daemon died), or its heartbeat probes went
/// unanswered (`timed_out`: the node or its network is down).
pub fn child_fault(links: &Links, timed_out: bool) -> NodeFault {
    match links.beat().filter(|_| timed_out) {
        Some(b) => NodeFault::Silent { ms: b.silence_ms() },
        None => NodeFault::LinkLost,
    }
}

/// What the parent sent about the tree: where the ancestors listen; `Msg::NodeGone` from the
/// front end: route around that node (closing its link if it is a child here) and pass the word
/// down; `Msg::Replace`: a spare took a lost node's place, and the map says so from now on.
pub fn parent_msg(links: &mut Links, job: Option<&mut JobView>, msg: Msg, registry: &Registry) {
    match msg {
        Msg::NodeAncestors { chain } => links.set_ancestors_above(chain),
        Msg::NodeGone { node } => links.gone(node, registry),
        Msg::Replace { node, by, host } => {
            if let Some(job) = job {
                job.replace(node, by, &host);
            }
            links.down(&Msg::Replace { node, by, host });
        }
        Msg::NodeRelocate { node, closed } => {
            if let Some(job) = job {
                job.relocate(node, &closed);
            }
            links.down(&Msg::NodeRelocate { node, closed });
        }
        _ => {}
    }
}

/// The parent link is lost: reconnects to the nearest live ancestor. Returns the messages that
/// came on the new link after the ancestor's answer, or None when no ancestor answered (the front
/// end itself was the parent, or is gone too) or the daemon is ending anyway (`live` false): the
/// daemon is cut off.
pub fn rejoin(live: bool, links: &mut Links, key: JobKey, node: u32, registry: &Registry) -> Option<Vec<Msg>> {
    let lost = links.router().live_parent(node).filter(|_| live)?;
    links.lose_node(lost, registry);
    for at in links.router().rejoin_candidates() {
        let Some(addr) = links.ancestor_addr(at).map(str::to_string) else { continue };
        match try_one(&addr, key, node, lost) {
            Ok((link, chain, msgs)) => {
                links.replace_parent(link, at, chain, registry).ok()?;
                return Some(msgs);
            }
            // Gone too (or not taking us): the next one up.
            Err(_) => {
                if let Some(a) = at {
                    links.lose_node(a, registry);
                }
            }
        }
    }
    None
}

/// Connects to the ancestor at `addr`, says who this is and which parent it lost, and waits for
/// the ancestor's `Msg::NodeAncestors`.
fn try_one(addr: &str, key: JobKey, node: u32, lost: u32) -> io::Result<(Link, Ancestors, Vec<Msg>)> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let sa: std::net::SocketAddr = addr.parse().map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("bad address {addr}")))?;
    let stream = std::net::TcpStream::connect_timeout(&sa, TRY)?;
    stream.set_nodelay(true).ok();
    stream.set_nonblocking(true)?;
    let mut link = Link::new(mio::net::TcpStream::from_std(stream), key, Dir::Up, Some(node));
    link.send(&Msg::NodeRejoin { node, lost, pid: std::process::id() });
    flush_blocking(&mut link, TRY);
    let deadline = Instant::now() + TRY;
    loop {
        let inbox = link::read(&mut link, true);
        let mut msgs = inbox.msgs.into_iter().map(|(m, _)| m);
        match msgs.next() {
            Some(Msg::NodeAncestors { chain }) => return Ok((link, chain, msgs.collect())),
            Some(other) => return Err(io::Error::other(format!("unexpected answer {other:?}"))),
            None => {}
        }
        if inbox.closed || inbox.rejected.is_some() {
            return Err(io::Error::from(io::ErrorKind::ConnectionRefused));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::from(io::ErrorKind::TimedOut));
        }
        let mut fds = [PollFd::new(link.stream.as_fd(), PollFlags::POLLIN)];
        let ms = PollTimeout::try_from(left.as_millis().min(60_000) as i32).unwrap_or(PollTimeout::MAX);
        // Signals (the ranks' SIGCHLD) interrupt the wait: wait again.
        match poll(&mut fds, ms) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}
