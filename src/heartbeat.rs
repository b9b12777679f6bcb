//! Heartbeats on the tree links (issue 17): how a link to a node that is down, or whose network
//! is, is told from an idle one. A TCP link to a dead node stays open and silent; so every tree
//! link carries the kernel's keepalive probes once it has been idle for `--heartbeat`, and a link
//! whose probes go unanswered until `--heartbeat-timeout` fails with `ETIMEDOUT`: its node is
//! lost. Busy links carry no probe (their data is the heartbeat), and the probes are answered
//! by the peer's kernel, so a daemon that a loaded machine stalls for a few seconds is not taken
//! for a lost one (a daemon that died closes its link and is found at once).

use crate::spec::NodeLossSpec;
use std::os::fd::AsRawFd;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Beat {
    /// A link idle this long gets its first probe; probes follow each other this far apart.
    pub every: Duration,
    /// A link whose peer answered nothing for this long is lost.
    pub silence: Duration,
}

/// The keepalive settings for a [`Beat`]: `TCP_KEEPIDLE`, `TCP_KEEPINTVL` (whole seconds, at
/// least 1, as the kernel takes them) and `TCP_KEEPCNT`, so that idle + interval × count is the
/// timeout (rounded to seconds, at least one probe).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probes {
    pub idle: u32,
    pub interval: u32,
    pub count: u32,
}

impl Beat {
    pub fn new(spec: &NodeLossSpec) -> Beat {
        Beat { every: Duration::from_millis(spec.heartbeat_ms.into()), silence: Duration::from_millis(spec.silence_ms.into()) }
    }

    pub fn probes(&self) -> Probes {
        let secs = |d: Duration| (d.as_millis().div_ceil(1000)).clamp(1, i32::MAX as u128) as u32;
        let idle = secs(self.every);
        let interval = idle;
        let total = secs(self.silence).max(idle + interval);
        let count = (total - idle).div_ceil(interval).clamp(1, 127);
        Probes { idle, interval, count }
    }

    /// The timeout in whole milliseconds, for the line that says why a node was lost.
    pub fn silence_ms(&self) -> u32 {
        self.silence.as_millis().min(u32::MAX as u128) as u32
    }

    /// Turns the probes on for one link's socket.
    pub fn arm(&self, socket: &impl AsRawFd) -> std::io::Result<()> {
        let p = self.probes();
        let fd = socket.as_raw_fd();
        let set = |level: libc::c_int, name: libc::c_int, value: u32| -> std::io::Result<()> {
            let v = value as libc::c_int;
            // SAFETY: setsockopt(2) on a socket this process owns, with a c_int option value.
            let rc = unsafe { libc::setsockopt(fd, level, name, (&v as *const libc::c_int).cast(), std::mem::size_of::<libc::c_int>() as libc::socklen_t) };
            if rc == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        };
        set(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, p.idle)?;
        set(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, p.interval)?;
        set(libc::IPPROTO_TCP, libc::TCP_KEEPCNT, p.count)?;
        set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)
    }
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

    fn beat(every_ms: u32, silence_ms: u32) -> Beat {
        Beat::new(&NodeLossSpec { spares: 0, heartbeat_ms: every_ms, silence_ms })
    }

    #[test]
    fn probes_add_up_to_the_timeout() {
        assert_eq!(beat(1000, 5000).probes(), Probes { idle: 1, interval: 1, count: 4 });
        assert_eq!(beat(500, 2000).probes(), Probes { idle: 1, interval: 1, count: 1 });
        assert_eq!(beat(5000, 10000).probes(), Probes { idle: 5, interval: 5, count: 1 });
        assert_eq!(silent_why(5000), "no heartbeat for 5 s");
        assert_eq!(silent_why(2500), "no heartbeat for 2.5 s");
    }

    #[test]
    fn a_socket_takes_the_probes() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let s = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        beat(1000, 5000).arm(&s).unwrap();
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt(2) into a c_int on our own socket.
        let rc = unsafe { libc::getsockopt(s.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_KEEPCNT, (&mut v as *mut libc::c_int).cast(), &mut len) };
        assert_eq!((rc, v), (0, 4));
    }

    proptest! {
        /// Detection takes at least the timeout (never sooner than asked) and at most a second
        /// or an interval more, with at least one probe.
        #[test]
        fn detection_time_is_the_timeout(every in 1u32..20_000, extra in 0u32..60_000) {
            let b = beat(every, every * 2 + extra);
            let p = b.probes();
            let total = u64::from(p.idle + p.interval * p.count) * 1000;
            prop_assert!(p.count >= 1);
            prop_assert!(total >= u64::from(b.silence_ms()), "{p:?} {b:?}");
            prop_assert!(total <= u64::from(b.silence_ms()) + 1000 + u64::from(p.interval) * 1000, "{p:?} {b:?}");
        }
    }
}
