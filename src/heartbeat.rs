//! Heartbeats on the tree links (issue 17): how a link to a node that is down, or whose network
//! is, is told from an idle one. A TCP link to a dead node stays open and silent; so every link
//! that carried nothing for `--heartbeat` gets a small frame, and a link on which nothing at all
//! arrived for `--heartbeat-timeout` is lost. Busy links carry no heartbeat: any frame is one.
//! Pure: the links' clocks go in, what to do comes out.

use crate::spec::NodeLossSpec;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Beat {
    /// Send a heartbeat on a link that carried nothing for this long.
    pub every: Duration,
    /// A link on which nothing arrived for this long is lost.
    pub silence: Duration,
}

impl Beat {
    pub fn new(spec: &NodeLossSpec) -> Beat {
        Beat { every: Duration::from_millis(spec.heartbeat_ms.into()), silence: Duration::from_millis(spec.silence_ms.into()) }
    }

    /// What a link whose last frame in and out were at `last_in`, `last_out` needs at `now`.
    /// Silence counts only once the peer is `beating` (it sent a heartbeat): a daemon still
    /// starting on a loaded machine is not lost.
    pub fn due(&self, last_in: Instant, last_out: Instant, beating: bool, now: Instant) -> Due {
        if beating && now >= last_in + self.silence {
            Due::Lost
        } else if now >= last_out + self.every {
            Due::Send
        } else {
            Due::Nothing
        }
    }

    /// When that link next needs something.
    pub fn next(&self, last_in: Instant, last_out: Instant, beating: bool) -> Instant {
        let beat = last_out + self.every;
        if beating {
            (last_in + self.silence).min(beat)
        } else {
            beat
        }
    }

    /// The timeout in whole milliseconds, for the line that says why a node was lost.
    pub fn silence_ms(&self) -> u32 {
        self.silence.as_millis().min(u32::MAX as u128) as u32
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Due {
    Nothing,
    /// Nothing went out for a while: send a heartbeat.
    Send,
    /// Nothing came in for the timeout: the link is lost.
    Lost,
}

/// "no heartbeat for 5 s": why a silent node was lost.
pub fn silent_why(ms: u32) -> String {
    let secs = f64::from(ms) / 1000.0;
    if ms % 1000 == 0 {
        format!("no heartbeat for {secs:.0} s")
    } else {
        format!("no heartbeat for {secs} s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn beat() -> Beat {
        Beat::new(&NodeLossSpec { spares: 0, heartbeat_ms: 1000, silence_ms: 5000 })
    }

    #[test]
    fn idle_links_beat_and_silent_ones_are_lost() {
        let t0 = Instant::now();
        let b = beat();
        assert_eq!(b.due(t0, t0, true, t0 + Duration::from_millis(999)), Due::Nothing);
        assert_eq!(b.due(t0, t0, true, t0 + Duration::from_secs(1)), Due::Send);
        // A busy sender never beats, but still notices a silent peer.
        let now = t0 + Duration::from_secs(5);
        assert_eq!(b.due(t0, now, true, now), Due::Lost);
        // A peer that never beat is still starting: it gets heartbeats, it is not lost.
        assert_eq!(b.due(t0, t0, false, now), Due::Send);
        assert_eq!(b.due(t0, now, false, now), Due::Nothing);
        assert_eq!(b.next(t0, t0, true), t0 + Duration::from_secs(1));
        assert_eq!(b.next(t0, t0 + Duration::from_secs(9), true), t0 + Duration::from_secs(5));
        assert_eq!(b.next(t0, t0 + Duration::from_secs(9), false), t0 + Duration::from_secs(10));
        assert_eq!(silent_why(5000), "no heartbeat for 5 s");
        assert_eq!(silent_why(2500), "no heartbeat for 2.5 s");
    }

    proptest! {
        /// Nothing is due before `next`, and something is due at it.
        #[test]
        fn next_is_when_something_is_due(every in 1u64..5000, extra in 0u64..5000, din in 0u64..20000, dout in 0u64..20000, beating: bool) {
            let t0 = Instant::now();
            let b = Beat { every: Duration::from_millis(every), silence: Duration::from_millis(every * 2 + extra) };
            let (last_in, last_out) = (t0 + Duration::from_millis(din), t0 + Duration::from_millis(dout));
            let at = b.next(last_in, last_out, beating);
            prop_assert_ne!(b.due(last_in, last_out, beating, at), Due::Nothing);
            if let Some(before) = at.checked_sub(Duration::from_millis(1)) {
                if before >= last_in.max(last_out) {
                    prop_assert_eq!(b.due(last_in, last_out, beating, before), Due::Nothing);
                }
            }
        }
    }
}
