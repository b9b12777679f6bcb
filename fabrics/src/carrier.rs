//! [`Carrier`]: an [`RdmaTransport`] on its own thread, so that a launcher's single event loop can
//! use RDMA links without blocking: the loop queues sends and picks up arrived messages, and the
//! thread calls a wake function (e.g. a `mio::Waker`) whenever it has something for the loop.
//!
//! The thread is the only owner of the link; [`Carrier::release`] stops it and waits until the
//! link is released (queue pairs, registered memory, sockets of a simulated link); dropping the
//! carrier stops it without waiting.

use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::rdma::{RdmaLink, RdmaTransport};
use crate::transport::TransportError;

/// What the carrier hands to its owner.
#[derive(Debug, PartialEq, Eq)]
pub enum CarrierEvent {
    /// The bring-up is over: the link is up, or why not (then the thread has ended).
    Up(Result<(), String>),
    Message { from: u32, bytes: Vec<u8> },
    /// Every send queued before [`Carrier::flush`] has been posted.
    Flushed,
    /// The link failed; nothing more will come. The carrier stays usable only for release.
    Failed(String),
}

enum Cmd {
    Send(u32, Vec<u8>),
    Flush,
    Break(String),
}

pub struct Carrier {
    cmds: Option<Sender<Cmd>>,
    events: Receiver<CarrierEvent>,
    thread: Option<JoinHandle<()>>,
}

/// How long the thread waits for a message before looking at its queued sends again.
const SLICE: Duration = Duration::from_millis(2);

impl Carrier {
    /// Starts the thread, which first brings the link up with `bring_up` (blocking calls such as
    /// [`crate::sim_link::SimEndpoint::connect`] belong there, not on the event loop) and reports
    /// [`CarrierEvent::Up`]. `timeout` bounds every wait inside the transport (credits, buffers).
    pub fn bring_up<L, F>(bring_up: F, timeout: Duration, wake: Arc<dyn Fn() + Send + Sync>) -> Carrier
    where
        L: RdmaLink + 'static,
        F: FnOnce() -> Result<L, TransportError> + Send + 'static,
    {
        let (ctx, crx) = mpsc::channel();
        let (etx, erx) = mpsc::channel();
        let w = wake.clone();
        let up_tx = etx.clone();
        let spawned = std::thread::Builder::new().name("rdma-carrier".into()).spawn(move || {
            match bring_up().and_then(|link| RdmaTransport::new(link, timeout)) {
                Ok(t) => {
                    let _ = etx.send(CarrierEvent::Up(Ok(())));
                    w();
                    run(t, crx, etx, w);
                }
                Err(e) => {
                    let _ = etx.send(CarrierEvent::Up(Err(e.to_string())));
                    w();
                }
            }
        });
        let thread = match spawned {
            Ok(t) => Some(t),
            Err(e) => {
                let _ = up_tx.send(CarrierEvent::Up(Err(format!("starting the carrier thread: {e}"))));
                wake();
                None
            }
        };
        Carrier { cmds: Some(ctx), events: erx, thread }
    }

    /// Queues `bytes` for `peer`; a failure comes back as [`CarrierEvent::Failed`].
    pub fn send(&self, peer: u32, bytes: Vec<u8>) {
        if let Some(c) = &self.cmds {
            let _ = c.send(Cmd::Send(peer, bytes));
        }
    }

    /// Asks for [`CarrierEvent::Flushed`] once every send queued so far has been posted (the data
    /// is then on its way even if this side's link goes later).
    pub fn flush(&self) {
        if let Some(c) = &self.cmds {
            let _ = c.send(Cmd::Flush);
        }
    }

    /// Fault injection for tests: after the sends queued so far, the link fails here as a verbs
    /// error would ([`CarrierEvent::Failed`] with `why`). From then on this end neither sends nor
    /// delivers: what peers send is taken off the link (so they never block) and lost, as on a
    /// link that broke in one direction only, which is what makes the peers' data need
    /// re-sending.
    pub fn break_link(&self, why: String) {
        if let Some(c) = &self.cmds {
            let _ = c.send(Cmd::Break(why));
        }
    }

    /// The next event, if any, without waiting.
    pub fn try_event(&self) -> Option<CarrierEvent> {
        match self.events.try_recv() {
            Ok(e) => Some(e),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => None,
        }
    }

    /// Stops the thread and waits until it released the link; queued sends are still carried
    /// out first.
    pub fn release(mut self) {
        self.cmds = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Carrier {
    /// Stops the thread without waiting for it: it may be inside a bring-up or a send that takes
    /// up to its timeout, and an event loop must not block on that. The thread releases the link
    /// as it ends.
    fn drop(&mut self) {
        self.cmds = None;
    }
}

fn run<L: RdmaLink>(
    mut t: RdmaTransport<L>,
    cmds: Receiver<Cmd>,
    events: Sender<CarrierEvent>,
    wake: Arc<dyn Fn() + Send + Sync>,
) {
    let fail = |why: String| {
        let _ = events.send(CarrierEvent::Failed(why));
        wake();
    };
    let mut broken = false;
    loop {
        loop {
            match cmds.try_recv() {
                Ok(Cmd::Send(..)) if broken => {}
                Ok(Cmd::Break(why)) => {
                    if !std::mem::replace(&mut broken, true) {
                        let _ = events.send(CarrierEvent::Failed(why));
                        wake();
                    }
                }
                Ok(Cmd::Send(peer, bytes)) => {
                    if let Err(e) = crate::transport::Transport::send(&mut t, peer, &bytes) {
                        return fail(e.to_string());
                    }
                }
                Ok(Cmd::Flush) => {
                    let _ = events.send(CarrierEvent::Flushed);
                    wake();
                }
                Err(TryRecvError::Empty) => break,
                // Released: the owner is done with the link.
                Err(TryRecvError::Disconnected) => return,
            }
        }
        match t.recv_within(SLICE) {
            Ok(Some(_)) if broken => {}
            Ok(Some((from, bytes))) => {
                if events.send(CarrierEvent::Message { from, bytes }).is_err() {
                    return;
                }
                wake();
            }
            Ok(None) => {}
            Err(_) if broken => return,
            Err(e) => return fail(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rdma::MockFabric;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    fn wait_event(c: &Carrier) -> CarrierEvent {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(e) = c.try_event() {
                return e;
            }
            assert!(Instant::now() < deadline, "no event");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn messages_cross_and_the_owner_is_woken() {
        let f = MockFabric::new(2, 24, 2, 1);
        let woken = Arc::new(AtomicUsize::new(0));
        let w = woken.clone();
        let wake: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
            w.fetch_add(1, Ordering::Relaxed);
        });
        let (la, lb) = (f.link(0), f.link(1));
        let a = Carrier::bring_up(move || Ok(la), Duration::from_secs(5), wake.clone());
        let b = Carrier::bring_up(move || Ok(lb), Duration::from_secs(5), wake);
        assert_eq!(wait_event(&a), CarrierEvent::Up(Ok(())));
        assert_eq!(wait_event(&b), CarrierEvent::Up(Ok(())));
        let msgs: Vec<Vec<u8>> = (0..20).map(|i| vec![i as u8; i * 9]).collect();
        for m in &msgs {
            a.send(1, m.clone());
        }
        for m in &msgs {
            assert_eq!(wait_event(&b), CarrierEvent::Message { from: 0, bytes: m.clone() });
        }
        b.send(0, b"back".to_vec());
        b.flush();
        assert_eq!(wait_event(&a), CarrierEvent::Message { from: 1, bytes: b"back".to_vec() });
        assert_eq!(wait_event(&b), CarrierEvent::Flushed);
        assert!(woken.load(Ordering::Relaxed) >= 23);
        assert_eq!(f.rnr_errors(), 0);
        a.release();
        b.release();
    }

    #[test]
    fn a_link_error_is_reported_once_and_ends_the_thread() {
        let f = MockFabric::new(2, 24, 2, 1);
        let l = f.link(0);
        let a = Carrier::bring_up(move || Ok(l), Duration::from_secs(5), Arc::new(|| {}));
        assert_eq!(wait_event(&a), CarrierEvent::Up(Ok(())));
        a.send(7, b"nobody".to_vec());
        assert!(matches!(wait_event(&a), CarrierEvent::Failed(why) if why.contains("member 7")));
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(a.try_event(), None);
    }

    #[test]
    fn a_broken_link_fails_once_and_swallows_what_peers_send() {
        let f = MockFabric::new(2, 24, 2, 1);
        let (la, lb) = (f.link(0), f.link(1));
        let a = Carrier::bring_up(move || Ok(la), Duration::from_secs(5), Arc::new(|| {}));
        let b = Carrier::bring_up(move || Ok(lb), Duration::from_secs(5), Arc::new(|| {}));
        assert_eq!(wait_event(&a), CarrierEvent::Up(Ok(())));
        assert_eq!(wait_event(&b), CarrierEvent::Up(Ok(())));
        a.send(1, b"before".to_vec());
        a.break_link("injected".into());
        a.send(1, b"after".to_vec());
        assert_eq!(wait_event(&b), CarrierEvent::Message { from: 0, bytes: b"before".to_vec() });
        assert_eq!(wait_event(&a), CarrierEvent::Failed("injected".into()));
        // More than the peer's credits: none blocks, none arrives.
        for i in 0..10u8 {
            b.send(0, vec![i; 30]);
        }
        b.flush();
        assert_eq!(wait_event(&b), CarrierEvent::Flushed);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(a.try_event(), None);
        assert_eq!(b.try_event(), None, "nothing after the break arrived");
        a.release();
        b.release();
    }

    #[test]
    fn a_failed_bring_up_is_one_event() {
        let f = MockFabric::new(2, 8, 2, 1);
        // Slots too small for the chunk header: the transport refuses the link.
        let l = f.link(0);
        let a = Carrier::bring_up(move || Ok(l), Duration::from_secs(5), Arc::new(|| {}));
        assert!(matches!(wait_event(&a), CarrierEvent::Up(Err(why)) if why.contains("slot size 8")));
        let b = Carrier::bring_up(
            || -> Result<crate::rdma::MockLink, _> { Err(TransportError::Rdma { peer: 3, why: "no device".into() }) },
            Duration::from_secs(5),
            Arc::new(|| {}),
        );
        assert!(matches!(wait_event(&b), CarrierEvent::Up(Err(why)) if why.contains("member 3: no device")));
        b.release();
    }
}
