//! Signals as events: each handled signal writes its number into a pipe that the event loop polls,
//! so no job state is ever touched from a signal handler.

use std::io::Read;
use std::os::unix::net::UnixStream;

pub struct SignalPipe {
    pub rx: mio::net::UnixStream,
}

impl SignalPipe {
    pub fn new(signals: &[i32]) -> std::io::Result<SignalPipe> {
        let (rx, tx) = UnixStream::pair()?;
        rx.set_nonblocking(true)?;
        tx.set_nonblocking(true)?;
        // The write end lives as long as the process: handlers may run until exit.
        let fd = std::os::fd::IntoRawFd::into_raw_fd(tx);
        for &s in signals {
            let byte = s as u8;
            // SAFETY: the handler only calls write(2) on a non-blocking descriptor, which is
            // async-signal-safe; a full pipe drops the byte, and the loop drains often.
            unsafe {
                signal_hook::low_level::register(s, move || {
                    libc::send(fd, &byte as *const u8 as *const libc::c_void, 1, libc::MSG_DONTWAIT);
                })?;
            }
        }
        Ok(SignalPipe { rx: mio::net::UnixStream::from_std(rx) })
    }

    /// Signals received since the last call, in arrival order (duplicates kept).
    pub fn drain(&mut self) -> Vec<i32> {
        let mut out = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            match self.rx.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend(buf[..n].iter().map(|&b| b as i32)),
                Err(_) => break,
            }
        }
        out
    }
}

pub fn signal_name(sig: i32) -> String {
    nix::sys::signal::Signal::try_from(sig)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| format!("signal {sig}"))
}
