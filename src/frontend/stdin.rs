//! The front end's stdin reader. Standard input may be a regular file, which cannot be polled, so
//! a thread reads it and posts chunks through a bounded channel, waking the loop
//! ([`crate::token::STDIN_WAKE`]).

use mio::{Registry, Waker};
use std::io::{self, Read};
use std::sync::mpsc::{sync_channel, Receiver};

/// Chunks in flight: a fast stdin cannot outrun a rank that reads slowly by more than this.
const CHANNEL_DEPTH: usize = 16;
const CHUNK: usize = 64 * 1024;

/// Starts the reader; an empty chunk is EOF and the last one sent.
pub fn spawn_reader(registry: &Registry) -> io::Result<Receiver<Vec<u8>>> {
    let waker = Waker::new(registry, crate::token::STDIN_WAKE)?;
    let (tx, rx) = sync_channel::<Vec<u8>>(CHANNEL_DEPTH);
    std::thread::Builder::new().name("stdin".into()).spawn(move || {
        let mut stdin = io::stdin().lock();
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match stdin.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => 0,
            };
            if tx.send(buf[..n].to_vec()).is_err() {
                return;
            }
            let _ = waker.wake();
            if n == 0 {
                // Dropping the waker closes its eventfd, and closing discards a wake-up the loop
                // has not collected yet: the last chunks (and EOF) would sit in the channel
                // unread. The fd lives until the front end exits.
                std::mem::forget(waker);
                return;
            }
        }
    })?;
    Ok(rx)
}
