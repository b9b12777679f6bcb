//! Reading frames from a tree link: what one read brought (the parent's link is read and handled
//! a budget at a time), or everything a child's link has (handled together).

use crate::link::Link;
use crate::wire::{Msg, WireError};

#[derive(Default)]
pub struct Inbox {
    /// Each message with the size of its frame.
    pub msgs: Vec<(Msg, usize)>,
    /// A frame failed authentication or decoding; nothing after it was read.
    pub rejected: Option<WireError>,
    /// The peer closed the link, or reading failed.
    pub closed: bool,
    /// The read budget ran out: more may be waiting.
    pub more: bool,
}

/// One budgeted read and the frames it completed. `parse_after_error`: when reading fails, still
/// take the complete frames already buffered.
pub fn read(link: &mut Link, parse_after_error: bool) -> Inbox {
    let mut inbox = Inbox::default();
    match link.fill() {
        Ok(more) => inbox.more = more,
        Err(_) => {
            inbox.closed = true;
            if !parse_after_error {
                return inbox;
            }
        }
    }
    loop {
        match link.next_msg() {
            Ok(Some(m)) => inbox.msgs.push((m, link.last_frame_len)),
            Ok(None) => break,
            Err(e) => {
                inbox.rejected = Some(e);
                break;
            }
        }
    }
    inbox.closed |= link.eof;
    inbox
}

/// Everything a child's link has now; `closed` also when a frame was rejected (the link is
/// dropped then).
pub fn read_child(link: &mut Link) -> Inbox {
    let mut all = Inbox::default();
    loop {
        let one = read(link, true);
        all.msgs.extend(one.msgs);
        let rejected = one.rejected.is_some();
        if rejected {
            all.rejected = one.rejected;
        }
        if one.closed || rejected || !one.more {
            all.closed = one.closed || rejected;
            return all;
        }
    }
}
