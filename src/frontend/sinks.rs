//! rlaunch's own stdout and stderr, watched for a reader that went away while the job is silent
//! (`| head` already exited, the ssh client died): a write would fail with EPIPE, but a job that
//! writes nothing would never find out. epoll reports an error or hang-up on a descriptor
//! whatever interest it was registered with, so both are registered and every such event (and
//! every SIGHUP) asks [`Sinks::gone`].

use super::verdict::Failure;
use mio::unix::SourceFd;
use mio::{Interest, Registry};

pub struct Sinks {
    /// Whether the front end started with a controlling terminal.
    had_tty: bool,
}

impl Sinks {
    pub fn watch(registry: &Registry) -> Sinks {
        for fd in [libc::STDOUT_FILENO, libc::STDERR_FILENO] {
            // Regular files and /dev/null cannot be registered, and never go away.
            let _ = registry.register(&mut SourceFd(&fd), crate::token::SINKS, Interest::READABLE);
        }
        Sinks { had_tty: has_controlling_tty() }
    }

    /// How the job must end because its output or terminal is gone, if it is: a pipe without a
    /// reader is a closed output; a hung-up terminal, or a controlling terminal that is no more,
    /// a hang-up.
    pub fn gone(&self) -> Option<Failure> {
        let mut closed = false;
        for fd in [libc::STDOUT_FILENO, libc::STDERR_FILENO] {
            let mut p = libc::pollfd { fd, events: libc::POLLOUT, revents: 0 };
            // SAFETY: poll(2) on one valid pollfd, without waiting.
            if unsafe { libc::poll(&mut p, 1, 0) } != 1 || p.revents & libc::POLLNVAL != 0 {
                continue;
            }
            if p.revents & libc::POLLHUP != 0 {
                return Some(Failure::Hangup);
            }
            closed |= p.revents & libc::POLLERR != 0;
        }
        if self.had_tty && !has_controlling_tty() {
            return Some(Failure::Hangup);
        }
        closed.then_some(Failure::OutputClosed)
    }
}

fn has_controlling_tty() -> bool {
    std::fs::OpenOptions::new().read(true).write(true).open("/dev/tty").is_ok()
}
