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

/// The chunks read so far; after EOF (the empty chunk, returned last) the reader is dropped.
pub fn take(reader: &mut Option<Receiver<Vec<u8>>>) -> Vec<Vec<u8>> {
    let chunks: Vec<Vec<u8>> = reader.as_ref().map(|rx| rx.try_iter().collect()).unwrap_or_default();
    if chunks.last().is_some_and(|c| c.is_empty()) {
        *reader = None;
    }
    chunks
}
