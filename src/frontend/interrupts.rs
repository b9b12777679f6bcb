//! What the front end does with the signals it receives (SIGINT, SIGTERM, SIGHUP, SIGUSR1/2):
//! forward them to every rank, except that a second SIGINT soon after the first kills the job,
//! as mpirun and srun do.

use super::effect::Effect;
use super::verdict::Failure;
use crate::wire::Msg;
use std::time::{Duration, Instant};

/// A second SIGINT within this time of the first kills the ranks instead of forwarding it.
const SECOND_INTERRUPT: Duration = Duration::from_secs(5);

#[derive(Default)]
pub struct Interrupts {
    /// When the last SIGINT was forwarded.
    first_at: Option<Instant>,
}

impl Interrupts {
    pub fn on_signal(&mut self, signum: i32, now: Instant) -> Vec<Effect> {
        match signum {
            libc::SIGCHLD => Vec::new(),
            libc::SIGINT if self.first_at.is_some_and(|t| now.saturating_duration_since(t) < SECOND_INTERRUPT) => vec![Effect::Fail(Failure::SecondInterrupt)],
            libc::SIGINT => {
                self.first_at = Some(now);
                vec![Effect::Detail(1, "rlaunch: forwarding SIGINT to all ranks (interrupt again within 5 s to kill them)".into()), Effect::Down(Msg::Signal { signum })]
            }
            _ => vec![Effect::Down(Msg::Signal { signum })],
        }
    }
}

/// The user (or the batch system) is ending the job: deaths of ranks from here on are not
/// failures to recover from.
pub fn ends_job(signum: i32) -> bool {
    matches!(signum, libc::SIGINT | libc::SIGTERM | libc::SIGHUP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_interrupt_within_five_seconds_kills_and_a_later_one_is_forwarded() {
        let mut i = Interrupts::default();
        let t0 = Instant::now();
        assert!(matches!(i.on_signal(libc::SIGINT, t0)[..], [Effect::Detail(1, _), Effect::Down(Msg::Signal { signum: libc::SIGINT })]));
        assert!(matches!(i.on_signal(libc::SIGINT, t0 + Duration::from_secs(1))[..], [Effect::Fail(Failure::SecondInterrupt)]));
        let mut i = Interrupts::default();
        i.on_signal(libc::SIGINT, t0);
        assert!(matches!(i.on_signal(libc::SIGINT, t0 + Duration::from_secs(6))[..], [Effect::Detail(..), Effect::Down(_)]));
    }

    #[test]
    fn other_signals_are_forwarded_and_sigchld_is_not() {
        let mut i = Interrupts::default();
        assert!(i.on_signal(libc::SIGCHLD, Instant::now()).is_empty());
        for s in [libc::SIGTERM, libc::SIGHUP, libc::SIGUSR1, libc::SIGUSR2] {
            assert!(matches!(i.on_signal(s, Instant::now())[..], [Effect::Down(Msg::Signal { signum })] if signum == s));
        }
        assert!(ends_job(libc::SIGTERM) && !ends_job(libc::SIGUSR1));
    }
}
