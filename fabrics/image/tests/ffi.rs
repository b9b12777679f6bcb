//! The C ABI against a scripted daemon on the other end of a socketpair named by
//! RLAUNCH_IMAGE_FD (the library opens it on first use, once per process: one test here).

use rlaunch_image::ffi::*;
use rlaunch_image::proto::{self, status, Decoder, Event, Frame};
use std::io::{Read, Write};
use std::os::fd::IntoRawFd;
use std::os::raw::c_void;
use std::os::unix::net::UnixStream;

/// The next frame from the library, in order (one read may bring several).
fn next(sock: &mut UnixStream, dec: &mut (Decoder, std::collections::VecDeque<Frame>)) -> Frame {
    let mut buf = [0u8; 4096];
    loop {
        if let Some(f) = dec.1.pop_front() {
            return f;
        }
        let n = sock.read(&mut buf).unwrap();
        assert!(n > 0, "the library closed the socket");
        for e in dec.0.push(&buf[..n]).unwrap() {
            if let Event::Frame(f) = e {
                dec.1.push_back(f);
            }
        }
    }
}

extern "C" fn provider(ctx: *mut c_void, epoch: *mut u64, buf: *mut *const c_void, len: *mut usize) -> i32 {
    // SAFETY: the library passes valid pointers; ctx is the static below.
    unsafe {
        assert_eq!(*epoch, 5, "rlaunch's number of the request");
        *epoch = 50;
        *buf = ctx as *const c_void;
        *len = 4;
    }
    0
}

extern "C" fn failing(_: *mut c_void, _: *mut u64, _: *mut *const c_void, _: *mut usize) -> i32 {
    1
}

static STATE: [u8; 4] = *b"abcd";

#[test]
fn the_c_functions_against_a_scripted_daemon() {
    let (ours, mut daemon) = UnixStream::pair().unwrap();
    std::env::set_var("RLAUNCH_IMAGE_FD", ours.into_raw_fd().to_string());
    let mut dec = (Decoder::new(proto::MAX_LEN), std::collections::VecDeque::new());
    let send = |d: &mut UnixStream, f: Frame| d.write_all(&proto::encode(&f).unwrap()).unwrap();

    assert_eq!(rli_active(), 1);
    assert_eq!(rli_poll(), 0, "nothing asked");
    send(&mut daemon, Frame::Request { epoch: 5 });
    let mut polled = 0;
    for _ in 0..1000 {
        polled = rli_poll();
        if polled != 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(polled, RLI_ENOPROVIDER, "asked, but nobody to ask");
    assert_eq!(rli_set_provider(Some(failing), std::ptr::null_mut()), RLI_OK);
    assert_eq!(rli_poll(), RLI_EPROVIDER, "the request is still pending");
    assert_eq!(rli_set_provider(Some(provider), STATE.as_ptr() as *mut c_void), RLI_OK);
    let t = std::thread::spawn(move || {
        let f = next(&mut daemon, &mut dec);
        send(&mut daemon, Frame::SaveAck { status: status::OK, epoch: 50 });
        (f, daemon, dec)
    });
    assert_eq!(rli_poll(), 1, "the provider's image went");
    let (f, mut daemon, mut dec) = t.join().unwrap();
    assert_eq!(f, Frame::Save { epoch: 50, data: b"abcd".to_vec() });
    assert_eq!(rli_poll(), 0, "answered");

    // A refused save, then loads: one found, one not.
    send(&mut daemon, Frame::SaveAck { status: status::TOO_BIG, epoch: 0 });
    send(&mut daemon, Frame::LoadReply { status: status::OK, epoch: 9, data: b"xyz".to_vec() });
    send(&mut daemon, Frame::LoadReply { status: status::NONE, epoch: 0, data: Vec::new() });
    // SAFETY: valid buffers and out-pointers.
    unsafe {
        assert_eq!(rli_save(1, b"big".as_ptr().cast(), 3), RLI_ETOOBIG);
        let (mut buf, mut len, mut epoch) = (std::ptr::null_mut(), 0usize, 0u64);
        assert_eq!(rli_load(RLI_SCOPE_RANK, &mut buf, &mut len, &mut epoch), 1);
        assert_eq!((std::slice::from_raw_parts(buf as *const u8, len), epoch), (&b"xyz"[..], 9));
        rli_free(buf);
        assert_eq!(rli_load_rank(3, &mut buf, &mut len, std::ptr::null_mut()), 0);
        assert!(buf.is_null() && len == 0, "none: NULL and 0");
        assert_eq!(rli_load(7, &mut buf, &mut len, &mut epoch), RLI_EINVAL, "an unknown scope");
    }
    assert!(matches!(next(&mut daemon, &mut dec), Frame::Save { epoch: 1, .. }));
    assert!(matches!(next(&mut daemon, &mut dec), Frame::Load { scope: proto::Scope::Rank }));
    assert!(matches!(next(&mut daemon, &mut dec), Frame::Load { scope: proto::Scope::Other(3) }));

    // The daemon goes away: every call says so, nothing hangs.
    drop(daemon);
    // SAFETY: as above.
    unsafe {
        assert_eq!(rli_save(2, b"x".as_ptr().cast(), 1), RLI_EIO);
        assert_eq!(rli_save(2, b"x".as_ptr().cast(), 1), RLI_EIO, "final");
    }
}
