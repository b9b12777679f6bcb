//! The front end's stdin reader. Standard input may be a regular file, which cannot be polled, so
//! a thread reads it and posts chunks through a bounded channel, waking the loop
//! ([`crate::token::WAKE`]).

use mio::Waker;
use std::io::{self, Read};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;

/// Chunks in flight: a fast stdin cannot outrun a rank that reads slowly by more than this.
const CHANNEL_DEPTH: usize = 16;
const CHUNK: usize = 64 * 1024;

/// Starts the reader; an empty chunk is EOF and the last one sent.
pub fn spawn_reader(waker: Arc<Waker>) -> io::Result<Receiver<Vec<u8>>> {
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
            // The loop holds the waker too, so its eventfd (and a wake-up not yet collected)
            // outlives this thread.
            let _ = waker.wake();
            if n == 0 {
                return;
            }
        }
    })?;
    Ok(rx)
}
