//! The C ABI (include/rlaunch_image.h). One connection per process, opened on first use from
//! `RLAUNCH_IMAGE_FD`; every call takes a lock, so threads may share it. The provider runs with
//! the lock released: it may call the other functions (not `rli_poll` itself, which would find
//! the same request again).

use crate::client::{self, Client, Error};
use crate::proto::Scope;
use libc::{c_char, c_int, c_uint, c_void, size_t};
use std::sync::{Mutex, MutexGuard};

pub const RLI_OK: c_int = 0;
pub const RLI_STANDALONE: c_int = -1;
pub const RLI_ETOOBIG: c_int = -2;
pub const RLI_EIO: c_int = -3;
pub const RLI_EPROTO: c_int = -4;
pub const RLI_EINVAL: c_int = -5;
pub const RLI_ENOMEM: c_int = -6;
pub const RLI_ENOPROVIDER: c_int = -7;
pub const RLI_EPROVIDER: c_int = -8;
pub const RLI_EBADFD: c_int = -9;

pub const RLI_SCOPE_JOB: c_int = 0;
pub const RLI_SCOPE_RANK: c_int = 1;

/// `int provider(void *ctx, uint64_t *epoch, const void **buf, size_t *len)`.
pub type Provider = extern "C" fn(*mut c_void, *mut u64, *mut *const c_void, *mut size_t) -> c_int;

enum Conn {
    Unopened,
    Standalone,
    /// `RLAUNCH_IMAGE_FD` was set but unusable: every call says so.
    Broken(c_int),
    Open(Client),
}

struct State {
    conn: Conn,
    /// The provider and its context (as an address: the state is shared between threads).
    provider: Option<(Provider, usize)>,
}

static STATE: Mutex<State> = Mutex::new(State { conn: Conn::Unopened, provider: None });

fn state() -> MutexGuard<'static, State> {
    // A panic cannot happen with the lock held (no callback runs under it); stay usable anyway.
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

fn code(e: &Error) -> c_int {
    match e {
        Error::BadFd(_) => RLI_EBADFD,
        Error::Io(_) => RLI_EIO,
        Error::Proto(_) => RLI_EPROTO,
        Error::TooBig { .. } => RLI_ETOOBIG,
        Error::Invalid => RLI_EINVAL,
    }
}

/// The open connection, or the code to return instead.
fn with_client<T>(s: &mut State, f: impl FnOnce(&mut Client) -> Result<T, Error>) -> Result<T, c_int> {
    if let Conn::Unopened = s.conn {
        s.conn = match Client::from_env() {
            Ok(Some(c)) => Conn::Open(c),
            Ok(None) => Conn::Standalone,
            Err(e) => Conn::Broken(code(&e)),
        };
    }
    match &mut s.conn {
        Conn::Open(c) => f(c).map_err(|e| {
            let rc = code(&e);
            // A broken stream stays broken; a refused image leaves the connection as it was.
            if matches!(e, Error::Io(_) | Error::Proto(_)) {
                s.conn = Conn::Broken(rc);
            }
            rc
        }),
        Conn::Standalone => Err(RLI_STANDALONE),
        Conn::Broken(rc) => Err(*rc),
        Conn::Unopened => unreachable!("opened above"),
    }
}

/// Registers the function that produces this rank's image when rlaunch asks for one
/// (`--image-interval`); `cb` NULL removes it.
#[no_mangle]
pub extern "C" fn rli_set_provider(cb: Option<Provider>, ctx: *mut c_void) -> c_int {
    state().provider = cb.map(|f| (f, ctx as usize));
    RLI_OK
}

/// At a safe point: when rlaunch asked for an image, runs the provider and saves what it gives.
/// 1: an image was sent; 0: nothing was asked; negative: an error (`RLI_STANDALONE` outside
/// rlaunch).
#[no_mangle]
pub extern "C" fn rli_poll() -> c_int {
    let (epoch, provider) = {
        let mut s = state();
        let provider = s.provider;
        match with_client(&mut s, |c| c.poll()) {
            Ok(None) => return 0,
            Ok(Some(epoch)) => (epoch, provider),
            Err(rc) => return rc,
        }
    };
    let Some((cb, ctx)) = provider else { return RLI_ENOPROVIDER };
    let (mut e, mut buf, mut len) = (epoch, std::ptr::null::<c_void>(), 0 as size_t);
    if cb(ctx as *mut c_void, &mut e, &mut buf, &mut len) != 0 {
        return RLI_EPROVIDER;
    }
    // SAFETY: the provider promised `len` bytes at `buf` until this call returns.
    match unsafe { rli_save(e, buf, len) } {
        RLI_OK => 1,
        rc => rc,
    }
}

/// Saves `len` bytes at `buf` as this rank's image of `epoch`; returns when the daemon holds it.
///
/// # Safety
/// `buf` points to `len` readable bytes (or `len` is 0).
#[no_mangle]
pub unsafe extern "C" fn rli_save(epoch: u64, buf: *const c_void, len: size_t) -> c_int {
    if buf.is_null() && len > 0 {
        return RLI_EINVAL;
    }
    let data: &[u8] = if len == 0 {
        &[]
    } else {
        // SAFETY: the caller gives `len` readable bytes at `buf` (the documented contract).
        unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len) }
    };
    match with_client(&mut state(), |c| c.save(epoch, data)) {
        Ok(()) => RLI_OK,
        Err(rc) => rc,
    }
}

/// # Safety
/// `buf` and `len` are writable (checked for NULL); `epoch` is writable or NULL.
unsafe fn load(scope: Scope, buf: *mut *mut c_void, len: *mut size_t, epoch: *mut u64) -> c_int {
    if buf.is_null() || len.is_null() {
        return RLI_EINVAL;
    }
    // SAFETY: checked non-null; the caller gives writable locations.
    unsafe {
        *buf = std::ptr::null_mut();
        *len = 0;
        if !epoch.is_null() {
            *epoch = 0;
        }
    }
    let image = match with_client(&mut state(), |c| c.load(scope)) {
        Ok(Some(i)) => i,
        Ok(None) | Err(RLI_STANDALONE) => return 0,
        Err(rc) => return rc,
    };
    // malloc'ed, so that free(3) releases it as well as rli_free.
    // SAFETY: malloc of at least one byte; the copy stays inside both buffers.
    unsafe {
        let p = libc::malloc(image.data.len().max(1));
        if p.is_null() {
            return RLI_ENOMEM;
        }
        std::ptr::copy_nonoverlapping(image.data.as_ptr(), p.cast::<u8>(), image.data.len());
        *buf = p;
        *len = image.data.len();
        if !epoch.is_null() {
            *epoch = image.epoch;
        }
    }
    1
}

/// Loads this rank's image: `RLI_SCOPE_JOB` (of the latest epoch every rank saved) or
/// `RLI_SCOPE_RANK` (its own latest). 1: found, `*buf` to be freed with `rli_free`; 0: none
/// (a first start, or outside rlaunch); negative: an error.
///
/// # Safety
/// `buf` and `len` point to writable locations; `epoch` too, or is NULL.
#[no_mangle]
pub unsafe extern "C" fn rli_load(scope: c_int, buf: *mut *mut c_void, len: *mut size_t, epoch: *mut u64) -> c_int {
    let scope = match scope {
        RLI_SCOPE_JOB => Scope::Job,
        RLI_SCOPE_RANK => Scope::Rank,
        _ => return RLI_EINVAL,
    };
    // SAFETY: the caller's promise, passed on.
    unsafe { load(scope, buf, len, epoch) }
}

/// Loads rank `rank`'s latest image, like `rli_load`.
///
/// # Safety
/// As [`rli_load`].
#[no_mangle]
pub unsafe extern "C" fn rli_load_rank(rank: u32, buf: *mut *mut c_void, len: *mut size_t, epoch: *mut u64) -> c_int {
    // SAFETY: the caller's promise, passed on.
    unsafe { load(Scope::Other(rank), buf, len, epoch) }
}

/// Frees a buffer `rli_load` or `rli_load_rank` returned.
///
/// # Safety
/// `buf` is NULL or came from `rli_load`/`rli_load_rank` and was not freed yet.
#[no_mangle]
pub unsafe extern "C" fn rli_free(buf: *mut c_void) {
    // SAFETY: NULL or a pointer from malloc in `load`.
    unsafe { libc::free(buf) }
}

/// Times this rank's process was restarted (`RLAUNCH_RESTARTS`; 0 on a first start).
#[no_mangle]
pub extern "C" fn rli_restarts() -> c_uint {
    client::restarts()
}

/// The job-scope restart generation (`RLAUNCH_GENERATION`; 0 on a first start).
#[no_mangle]
pub extern "C" fn rli_generation() -> c_uint {
    client::generation()
}

/// 1 when the process runs under rlaunch with an image socket, 0 otherwise.
#[no_mangle]
pub extern "C" fn rli_active() -> c_int {
    match with_client(&mut state(), |_| Ok(())) {
        Ok(()) => 1,
        Err(_) => 0,
    }
}

/// A static description of a return code.
#[no_mangle]
pub extern "C" fn rli_strerror(code: c_int) -> *const c_char {
    let s: &'static std::ffi::CStr = match code {
        1 => c"done",
        RLI_OK => c"success",
        RLI_STANDALONE => c"not running under rlaunch (no RLAUNCH_IMAGE_FD): nothing saved",
        RLI_ETOOBIG => c"the image exceeds the job's --image-max: not saved",
        RLI_EIO => c"the image socket to the rlaunch daemon failed or was closed",
        RLI_EPROTO => c"the rlaunch daemon sent an unreadable frame (a library of another rlaunch version?)",
        RLI_EINVAL => c"invalid argument",
        RLI_ENOMEM => c"out of memory",
        RLI_ENOPROVIDER => c"rlaunch asked for an image but no provider is registered (rli_set_provider)",
        RLI_EPROVIDER => c"the image provider returned an error",
        RLI_EBADFD => c"RLAUNCH_IMAGE_FD names no open descriptor",
        _ => c"unknown rlaunch image error",
    };
    s.as_ptr()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// include/rlaunch_image.h says the same numbers as this file.
    #[test]
    fn the_header_matches_the_abi() {
        let h = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/include/rlaunch_image.h")).unwrap();
        let ours = [
            ("RLI_OK", RLI_OK),
            ("RLI_STANDALONE", RLI_STANDALONE),
            ("RLI_ETOOBIG", RLI_ETOOBIG),
            ("RLI_EIO", RLI_EIO),
            ("RLI_EPROTO", RLI_EPROTO),
            ("RLI_EINVAL", RLI_EINVAL),
            ("RLI_ENOMEM", RLI_ENOMEM),
            ("RLI_ENOPROVIDER", RLI_ENOPROVIDER),
            ("RLI_EPROVIDER", RLI_EPROVIDER),
            ("RLI_EBADFD", RLI_EBADFD),
            ("RLI_SCOPE_JOB", RLI_SCOPE_JOB),
            ("RLI_SCOPE_RANK", RLI_SCOPE_RANK),
        ];
        let defined: Vec<(String, i32)> = h
            .lines()
            .filter_map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                match w[..] {
                    ["#define", name, value, ..] if name.starts_with("RLI_") => Some((name.to_string(), value.trim_matches(|c| c == '(' || c == ')').parse().ok()?)),
                    _ => None,
                }
            })
            .collect();
        assert_eq!(defined.len(), ours.len(), "{defined:?}");
        for (name, v) in ours {
            assert!(defined.contains(&(name.to_string(), v)), "{name} is {v} here, not in the header: {defined:?}");
        }
    }

    #[test]
    fn every_code_has_its_own_text() {
        let texts: std::collections::BTreeSet<String> =
            (-9..=1).map(|c| unsafe { std::ffi::CStr::from_ptr(rli_strerror(c)) }.to_string_lossy().into_owned()).collect();
        assert_eq!(texts.len(), 11);
    }
}
