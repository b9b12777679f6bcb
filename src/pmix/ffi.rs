//! The only unsafe code of the PMIx server: `libpmix.so.2` loaded at run time with libloading, the
//! few C types rlaunch needs declared by hand from `pmix_common.h` / `pmix_server.h` of libpmix
//! 4.2.2 (their sizes and offsets are checked against the real headers by a compiled C test
//! below), and the module callbacks libpmix calls.
//!
//! # Pointer and lifetime rules
//!
//! 1. The library is loaded once per process and never unloaded: libpmix runs its own progress
//!    thread that calls into our callbacks, so code and data must stay mapped until exit. The
//!    `Library` lives in a `static`; the function pointers copied out of it are `'static`.
//! 2. Everything rlaunch passes in (namespace strings, procs, info arrays) lives at least until
//!    libpmix is done with it. Calls that complete through a callback (`register_nspace`,
//!    `register_client`) return an [`InFlight`] owning what they passed in; the caller keeps it
//!    until the server is finalized, so it outlives every use whenever the completion comes. Info arrays are built inside libpmix (`PMIx_Info_list_*`, which copies the values)
//!    and released by [`InfoArray`]'s `Drop` after the call completed.
//! 3. Pointers libpmix passes to our module callbacks (procs, infos, data blobs, messages) are
//!    valid only during the call: the callbacks copy what they need into owned Rust values before
//!    they return, and never keep a pointer.
//! 4. A callback-completion pair (`cbfunc`, `cbdata`) handed to us by libpmix is owned by exactly
//!    one [`OpDone`] or [`ModexDone`]. Completing consumes it, so `cbfunc` runs at most once;
//!    dropping it uncompleted reports an error to libpmix, so no client waits forever, unless the
//!    server was finalized (then libpmix no longer expects anything).
//! 5. Data rlaunch returns through a modex callback is a leaked `Box<Vec<u8>>`, freed by
//!    [`release_blob`] when libpmix calls the release function it was given.
//! 6. `PMIx_server_dmodex_request`'s `cbdata` is a plain number (our request token), never a
//!    pointer, so a late or repeated answer cannot touch freed memory.
//! 7. The environment `PMIx_server_setup_fork` returns is a `malloc`ed, NULL-terminated `char**`
//!    (libpmix's argv helpers use malloc/realloc): it is copied, then each string and the array
//!    are `free`d.
//! 8. Module callbacks run on libpmix's thread. They never block and never call into libpmix:
//!    they copy, then hand an [`Upcall`] to the installed sink (the daemon's event loop, which
//!    owns all job state and completes the callback from its own thread; libpmix's completion
//!    functions are thread-safe: they hand the result over to its progress thread).

#![allow(non_camel_case_types)]

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

/// The library that is loaded unless overridden.
pub const DEFAULT_LIBRARY: &str = "libpmix.so.2";
/// Test-only override of the library path (to check the missing-library message):
/// `RLAUNCH_PMIX_LIBRARY=/nonexistent rlaunch ...`.
pub const LIBRARY_ENV: &str = "RLAUNCH_PMIX_LIBRARY";

pub const PMIX_SUCCESS: c_int = 0;
pub const PMIX_ERROR: c_int = -1;
pub const PMIX_ERR_UNREACH: c_int = -25;
pub const PMIX_ERR_NOT_FOUND: c_int = -46;
pub const PMIX_ERR_NOT_SUPPORTED: c_int = -47;
pub const PMIX_OPERATION_SUCCEEDED: c_int = -157;
pub const PMIX_RANK_WILDCARD: u32 = u32::MAX - 1;

const PMIX_MAX_NSLEN: usize = 255;
const PMIX_MAX_KEYLEN: usize = 511;

/// `pmix_data_type_t` codes used here.
pub mod types {
    pub const BOOL: u16 = 1;
    pub const STRING: u16 = 3;
    pub const UINT16: u16 = 13;
    pub const UINT32: u16 = 14;
    pub const DATA_ARRAY: u16 = 39;
    pub const PROC_RANK: u16 = 40;
    pub const REGEX: u16 = 49;
}

/// `pmix_proc_t`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct pmix_proc_t {
    pub nspace: [c_char; PMIX_MAX_NSLEN + 1],
    pub rank: u32,
}

/// `pmix_value_t`: the type tag and a union whose largest member (`pmix_envar_t`) is 24 bytes.
#[repr(C)]
pub struct pmix_value_t {
    pub type_: u16,
    pub data: [u64; 3],
}

/// `pmix_info_t`.
#[repr(C)]
pub struct pmix_info_t {
    pub key: [c_char; PMIX_MAX_KEYLEN + 1],
    pub flags: u32,
    pub value: pmix_value_t,
}

/// `pmix_data_array_t`.
#[repr(C)]
pub struct pmix_data_array_t {
    pub type_: u16,
    pub size: usize,
    pub array: *mut c_void,
}

type OpCb = unsafe extern "C" fn(status: c_int, cbdata: *mut c_void);
type ReleaseCb = unsafe extern "C" fn(cbdata: *mut c_void);
type ModexCb = unsafe extern "C" fn(
    status: c_int,
    data: *const c_char,
    ndata: usize,
    cbdata: *mut c_void,
    release_fn: Option<ReleaseCb>,
    release_cbdata: *mut c_void,
);
type DmodexRespCb = unsafe extern "C" fn(status: c_int, data: *mut c_char, sz: usize, cbdata: *mut c_void);

type ConnectedFn = unsafe extern "C" fn(*const pmix_proc_t, *mut c_void, Option<OpCb>, *mut c_void) -> c_int;
type AbortFn = unsafe extern "C" fn(
    *const pmix_proc_t,
    *mut c_void,
    c_int,
    *const c_char,
    *mut pmix_proc_t,
    usize,
    Option<OpCb>,
    *mut c_void,
) -> c_int;
type FenceFn =
    unsafe extern "C" fn(*const pmix_proc_t, usize, *const pmix_info_t, usize, *mut c_char, usize, Option<ModexCb>, *mut c_void) -> c_int;
type DmodexFn = unsafe extern "C" fn(*const pmix_proc_t, *const pmix_info_t, usize, Option<ModexCb>, *mut c_void) -> c_int;

/// `pmix_server_module_t` (the 4.0.0 layout: 28 function pointers). A null entry makes libpmix
/// answer "not supported" itself.
#[repr(C)]
pub struct pmix_server_module_t {
    client_connected: Option<ConnectedFn>,
    client_finalized: Option<ConnectedFn>,
    abort: Option<AbortFn>,
    fence_nb: Option<FenceFn>,
    direct_modex: Option<DmodexFn>,
    /// publish … client_connected2: not provided.
    rest: [*const c_void; 23],
}

struct Fns {
    server_init: unsafe extern "C" fn(*mut pmix_server_module_t, *mut pmix_info_t, usize) -> c_int,
    server_finalize: unsafe extern "C" fn() -> c_int,
    register_nspace: unsafe extern "C" fn(*const c_char, c_int, *mut pmix_info_t, usize, Option<OpCb>, *mut c_void) -> c_int,
    register_client: unsafe extern "C" fn(*const pmix_proc_t, libc::uid_t, libc::gid_t, *mut c_void, Option<OpCb>, *mut c_void) -> c_int,
    deregister_nspace: unsafe extern "C" fn(*const c_char, Option<OpCb>, *mut c_void),
    setup_fork: unsafe extern "C" fn(*const pmix_proc_t, *mut *mut *mut c_char) -> c_int,
    dmodex_request: unsafe extern "C" fn(*const pmix_proc_t, Option<DmodexRespCb>, *mut c_void) -> c_int,
    generate_regex: unsafe extern "C" fn(*const c_char, *mut *mut c_char) -> c_int,
    generate_ppn: unsafe extern "C" fn(*const c_char, *mut *mut c_char) -> c_int,
    info_list_start: unsafe extern "C" fn() -> *mut c_void,
    info_list_add: unsafe extern "C" fn(*mut c_void, *const c_char, *const c_void, u16) -> c_int,
    info_list_convert: unsafe extern "C" fn(*mut c_void, *mut pmix_data_array_t) -> c_int,
    info_list_release: unsafe extern "C" fn(*mut c_void),
    data_array_destruct: unsafe extern "C" fn(*mut pmix_data_array_t),
    error_string: unsafe extern "C" fn(c_int) -> *const c_char,
    get_version: unsafe extern "C" fn() -> *const c_char,
}

/// The loaded library.
pub struct Lib {
    _lib: libloading::Library,
    f: Fns,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum LoadError {
    #[error("cannot load libpmix ({reason}); Open MPI programs need it for their PMIx server: install it (Debian/Ubuntu: apt-get install libpmix2), or give --mpi pmi if this is not an Open MPI program")]
    Missing { reason: String },
    #[error("{name} lacks the function {symbol} ({reason}); rlaunch needs libpmix 4.x (libpmix.so.2): install libpmix2 4.2 or newer")]
    Symbol { name: String, symbol: &'static str, reason: String },
}

/// A failed libpmix call.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{call} failed: {text} (PMIx status {status})")]
pub struct CallError {
    pub call: &'static str,
    pub status: c_int,
    pub text: String,
}

static LIB: OnceLock<Result<Lib, LoadError>> = OnceLock::new();

/// Loads libpmix on first use (the path from [`LIBRARY_ENV`] when set, else
/// [`DEFAULT_LIBRARY`]); later calls return the same result.
pub fn load() -> Result<&'static Lib, LoadError> {
    LIB.get_or_init(|| {
        let name = std::env::var(LIBRARY_ENV).ok().filter(|s| !s.is_empty()).unwrap_or_else(|| DEFAULT_LIBRARY.to_string());
        Lib::open(&name)
    })
    .as_ref()
    .map_err(Clone::clone)
}

macro_rules! sym {
    ($lib:expr, $name:expr, $cname:literal) => {{
        // SAFETY: the type annotation at the use site is the C prototype of this exported
        // function in pmix.h / pmix_server.h of libpmix 4.2.2.
        let s = unsafe { $lib.get(concat!($cname, "\0").as_bytes()) }.map_err(|e| LoadError::Symbol {
            name: $name.to_string(),
            symbol: $cname,
            reason: e.to_string(),
        })?;
        *s
    }};
}

impl Lib {
    fn open(name: &str) -> Result<Lib, LoadError> {
        // SAFETY: loading runs libpmix's constructors, which only initialise its own globals.
        let lib = unsafe { libloading::Library::new(name) }.map_err(|e| LoadError::Missing { reason: first_line(&e.to_string()) })?;
        let f = Fns {
            server_init: sym!(lib, name, "PMIx_server_init"),
            server_finalize: sym!(lib, name, "PMIx_server_finalize"),
            register_nspace: sym!(lib, name, "PMIx_server_register_nspace"),
            register_client: sym!(lib, name, "PMIx_server_register_client"),
            deregister_nspace: sym!(lib, name, "PMIx_server_deregister_nspace"),
            setup_fork: sym!(lib, name, "PMIx_server_setup_fork"),
            dmodex_request: sym!(lib, name, "PMIx_server_dmodex_request"),
            generate_regex: sym!(lib, name, "PMIx_generate_regex"),
            generate_ppn: sym!(lib, name, "PMIx_generate_ppn"),
            info_list_start: sym!(lib, name, "PMIx_Info_list_start"),
            info_list_add: sym!(lib, name, "PMIx_Info_list_add"),
            info_list_convert: sym!(lib, name, "PMIx_Info_list_convert"),
            info_list_release: sym!(lib, name, "PMIx_Info_list_release"),
            data_array_destruct: sym!(lib, name, "PMIx_Data_array_destruct"),
            error_string: sym!(lib, name, "PMIx_Error_string"),
            get_version: sym!(lib, name, "PMIx_Get_version"),
        };
        Ok(Lib { _lib: lib, f })
    }

    pub fn version(&self) -> String {
        // SAFETY: returns a pointer to a static string inside libpmix.
        unsafe { cstr_lossy((self.f.get_version)()) }
    }

    pub fn error_text(&self, status: c_int) -> String {
        // SAFETY: PMIx_Error_string returns a static string for every status, known or not.
        unsafe { cstr_lossy((self.f.error_string)(status)) }
    }

    fn check(&self, call: &'static str, status: c_int) -> Result<(), CallError> {
        if status == PMIX_SUCCESS || status == PMIX_OPERATION_SUCCEEDED {
            Ok(())
        } else {
            Err(CallError { call, status, text: self.error_text(status) })
        }
    }

    /// `PMIx_server_init` with our module (client_connected, client_finalized, abort, fence_nb,
    /// direct_modex; everything else is answered "not supported" by libpmix) and `info`.
    /// Upcalls go to `sink` from then on.
    pub fn server_init(&'static self, info: &InfoArray, sink: Sink) -> Result<(), CallError> {
        *SINK.lock().unwrap_or_else(|e| e.into_inner()) = Some(sink);
        FINALIZED.store(false, Ordering::SeqCst);
        // libpmix keeps the module pointer: it must live for the rest of the process.
        let module: &'static mut pmix_server_module_t = Box::leak(Box::new(pmix_server_module_t {
            client_connected: Some(on_client_connected),
            client_finalized: Some(on_client_finalized),
            abort: Some(on_abort),
            fence_nb: Some(on_fence_nb),
            direct_modex: Some(on_direct_modex),
            rest: [std::ptr::null(); 23],
        }));
        // SAFETY: module is 'static; the info array outlives the call (rule 2).
        let rc = unsafe { (self.f.server_init)(module, info.ptr(), info.len()) };
        self.check("PMIx_server_init", rc)
    }

    /// `PMIx_server_finalize`. Pending completions are dropped silently afterwards.
    pub fn server_finalize(&self) -> Result<(), CallError> {
        FINALIZED.store(true, Ordering::SeqCst);
        *SINK.lock().unwrap_or_else(|e| e.into_inner()) = None;
        // SAFETY: no arguments; libpmix tolerates a call without a prior successful init.
        let rc = unsafe { (self.f.server_finalize)() };
        self.check("PMIx_server_finalize", rc)
    }

    /// `PMIx_server_register_nspace`. Its completion arrives later as [`Upcall::Registered`] with
    /// this `token`; keep the returned [`InFlight`] (which owns `info`) until the server is
    /// finalized (rule 2).
    pub fn register_nspace(&self, nspace: &str, nlocal: u32, info: InfoArray, token: u64) -> Result<InFlight, CallError> {
        const CALL: &str = "PMIx_server_register_nspace";
        let ns = c_string(CALL, nspace)?;
        // SAFETY: ns and info live in the returned InFlight, which the caller keeps until the
        // server is finalized (rule 2); cbdata is a number, not a pointer (rule 6).
        let rc = unsafe { (self.f.register_nspace)(ns.as_ptr(), nlocal as c_int, info.ptr(), info.len(), Some(on_registered), token as usize as *mut c_void) };
        self.check(CALL, rc)?;
        Ok(InFlight { done: rc == PMIX_OPERATION_SUCCEEDED, _ns: Some(ns), _info: Some(info), _proc: None })
    }

    /// `PMIx_server_deregister_nspace` (a job restart retires the old generation's namespace and
    /// its clients). Nothing waits for its completion; keep the returned [`InFlight`] (which owns
    /// the name) until the server is finalized (rule 2).
    pub fn deregister_nspace(&self, nspace: &str) -> Result<InFlight, CallError> {
        let ns = c_string("PMIx_server_deregister_nspace", nspace)?;
        // SAFETY: ns lives in the returned InFlight (rule 2); the callback ignores its cbdata.
        unsafe { (self.f.deregister_nspace)(ns.as_ptr(), Some(on_deregistered), std::ptr::null_mut()) };
        Ok(InFlight { done: false, _ns: Some(ns), _info: None, _proc: None })
    }

    /// `PMIx_server_register_client` for rank `rank` of `nspace`, owned by this process's user.
    /// Completes like [`Lib::register_nspace`].
    pub fn register_client(&self, nspace: &str, rank: u32, token: u64) -> Result<InFlight, CallError> {
        const CALL: &str = "PMIx_server_register_client";
        let p = Box::new(make_proc(CALL, nspace, rank)?);
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        // SAFETY: p lives in the returned InFlight (rule 2); server_object is unused; cbdata is a
        // number (rule 6).
        let rc = unsafe { (self.f.register_client)(&*p, uid, gid, std::ptr::null_mut(), Some(on_registered), token as usize as *mut c_void) };
        self.check(CALL, rc)?;
        Ok(InFlight { done: rc == PMIX_OPERATION_SUCCEEDED, _ns: None, _info: None, _proc: Some(p) })
    }

    /// The status an [`Upcall::Registered`] carried, as the result of `call`.
    pub fn completion(&self, call: &'static str, status: c_int) -> Result<(), CallError> {
        self.check(call, status)
    }

    /// `PMIx_server_setup_fork`: the variables the client needs, as `(name, value)`.
    pub fn setup_fork(&self, nspace: &str, rank: u32) -> Result<Vec<(String, String)>, CallError> {
        let p = make_proc("PMIx_server_setup_fork", nspace, rank)?;
        let mut env: *mut *mut c_char = std::ptr::null_mut();
        // SAFETY: p is valid for the call; env receives a malloc'ed array (rule 7).
        let rc = unsafe { (self.f.setup_fork)(&p, &mut env) };
        // SAFETY: env is null or a NULL-terminated array of malloc'ed strings, ours to free.
        let vars = unsafe { take_argv(env) };
        self.check("PMIx_server_setup_fork", rc)?;
        Ok(vars.into_iter().filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string()))).collect())
    }

    /// `PMIx_server_dmodex_request`: the answer arrives later as [`Upcall::DmodexData`] with
    /// this `token`.
    pub fn dmodex_request(&self, nspace: &str, rank: u32, token: u64) -> Result<(), CallError> {
        let p = make_proc("PMIx_server_dmodex_request", nspace, rank)?;
        // SAFETY: libpmix copies the proc; cbdata is a number, not a pointer (rule 6).
        let rc = unsafe { (self.f.dmodex_request)(&p, Some(on_dmodex_data), token as usize as *mut c_void) };
        self.check("PMIx_server_dmodex_request", rc)
    }

    /// `PMIx_generate_regex` of a comma-separated list.
    pub fn generate_regex(&'static self, input: &str) -> Result<Regex, CallError> {
        self.generate("PMIx_generate_regex", self.f.generate_regex, input)
    }

    /// `PMIx_generate_ppn` of a `;`-separated list of per-node rank lists.
    pub fn generate_ppn(&'static self, input: &str) -> Result<Regex, CallError> {
        self.generate("PMIx_generate_ppn", self.f.generate_ppn, input)
    }

    fn generate(
        &'static self,
        call: &'static str,
        f: unsafe extern "C" fn(*const c_char, *mut *mut c_char) -> c_int,
        input: &str,
    ) -> Result<Regex, CallError> {
        let c = c_string(call, input)?;
        let mut out: *mut c_char = std::ptr::null_mut();
        // SAFETY: c is valid for the call; out receives a malloc'ed buffer that Regex frees.
        let rc = unsafe { f(c.as_ptr(), &mut out) };
        let r = Regex { ptr: out };
        self.check(call, rc)?;
        if r.ptr.is_null() {
            return Err(CallError { call, status: PMIX_ERROR, text: "no result".into() });
        }
        Ok(r)
    }

    /// Starts a list of infos (`PMIx_Info_list_start`).
    pub fn info_list(&'static self) -> InfoList {
        // SAFETY: no arguments; the result is released by InfoList's Drop.
        let ptr = unsafe { (self.f.info_list_start)() };
        InfoList { lib: self, ptr }
    }

}

/// What libpmix may still read of a registration it has not completed (libpmix 4.2.2 keeps the
/// info array by pointer until then, and copies the rest; kept whole either way).
pub struct InFlight {
    /// libpmix completed the call at once (`PMIX_OPERATION_SUCCEEDED`): no upcall follows.
    pub done: bool,
    _ns: Option<CString>,
    _info: Option<InfoArray>,
    _proc: Option<Box<pmix_proc_t>>,
}

/// A value for [`InfoList::add`].
pub enum Val<'a> {
    Str(&'a str),
    U32(u32),
    U16(u16),
    Rank(u32),
    Bool(bool),
    Regex(&'a Regex),
    Array(&'a InfoArray),
}

/// A list of infos under construction, inside libpmix.
pub struct InfoList {
    lib: &'static Lib,
    ptr: *mut c_void,
}

impl InfoList {
    pub fn add(&mut self, key: &str, val: Val<'_>) -> Result<(), CallError> {
        const CALL: &str = "PMIx_Info_list_add";
        let k = c_string(CALL, key)?;
        let s;
        let (u32v, u16v, boolv);
        let (ptr, ty): (*const c_void, u16) = match val {
            Val::Str(v) => {
                s = c_string(CALL, v)?;
                (s.as_ptr() as *const c_void, types::STRING)
            }
            Val::U32(v) => {
                u32v = v;
                (&u32v as *const u32 as *const c_void, types::UINT32)
            }
            Val::Rank(v) => {
                u32v = v;
                (&u32v as *const u32 as *const c_void, types::PROC_RANK)
            }
            Val::U16(v) => {
                u16v = v;
                (&u16v as *const u16 as *const c_void, types::UINT16)
            }
            Val::Bool(v) => {
                boolv = v;
                (&boolv as *const bool as *const c_void, types::BOOL)
            }
            Val::Regex(r) => (r.ptr as *const c_void, types::REGEX),
            Val::Array(a) => (&a.darray as *const pmix_data_array_t as *const c_void, types::DATA_ARRAY),
        };
        // SAFETY: ptr points to a value of type ty that lives until the call returns; libpmix
        // copies it (deeply, for strings, regexes and data arrays).
        let rc = unsafe { (self.lib.f.info_list_add)(self.ptr, k.as_ptr(), ptr, ty) };
        self.lib.check(CALL, rc)
    }

    /// The finished array (`PMIx_Info_list_convert`).
    pub fn into_array(self) -> Result<InfoArray, CallError> {
        let mut darray = pmix_data_array_t { type_: 0, size: 0, array: std::ptr::null_mut() };
        // SAFETY: self.ptr is a live list; darray receives a copy owned by InfoArray.
        let rc = unsafe { (self.lib.f.info_list_convert)(self.ptr, &mut darray) };
        let arr = InfoArray { lib: self.lib, darray };
        self.lib.check("PMIx_Info_list_convert", rc)?;
        Ok(arr)
    }
}

impl Drop for InfoList {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: the list came from PMIx_Info_list_start and is released once.
            unsafe { (self.lib.f.info_list_release)(self.ptr) };
        }
    }
}

/// An array of `pmix_info_t` owned by libpmix's allocator.
pub struct InfoArray {
    lib: &'static Lib,
    darray: pmix_data_array_t,
}

impl InfoArray {
    fn ptr(&self) -> *mut pmix_info_t {
        self.darray.array as *mut pmix_info_t
    }
    pub fn len(&self) -> usize {
        self.darray.size
    }
}

impl Drop for InfoArray {
    fn drop(&mut self) {
        // SAFETY: darray was filled by PMIx_Info_list_convert and is destructed once.
        unsafe { (self.lib.f.data_array_destruct)(&mut self.darray) };
    }
}

/// A regular expression from `PMIx_generate_regex` / `_ppn` (possibly not a C string).
pub struct Regex {
    ptr: *mut c_char,
}

impl Drop for Regex {
    fn drop(&mut self) {
        // SAFETY: malloc'ed by libpmix, freed once.
        unsafe { libc::free(self.ptr as *mut c_void) };
    }
}

/// A process as libpmix names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcId {
    pub nspace: String,
    /// [`PMIX_RANK_WILDCARD`] = every rank of the namespace.
    pub rank: u32,
}

/// One module callback, handed to the daemon's event loop.
pub enum Upcall {
    Connected {
        proc: ProcId,
        done: OpDone,
    },
    Finalized {
        proc: ProcId,
        done: OpDone,
    },
    Abort {
        proc: ProcId,
        status: i32,
        message: String,
        done: OpDone,
    },
    /// `data` is this node's contribution; `collect` is the `PMIX_COLLECT_DATA` directive.
    Fence {
        procs: Vec<ProcId>,
        collect: bool,
        data: Vec<u8>,
        done: ModexDone,
    },
    DirectModex {
        proc: ProcId,
        done: ModexDone,
    },
    /// The answer to [`Lib::dmodex_request`].
    DmodexData {
        token: u64,
        status: i32,
        data: Vec<u8>,
    },
    /// The completion of [`Lib::register_nspace`] or [`Lib::register_client`] with this token.
    Registered {
        token: u64,
        status: i32,
    },
}

impl std::fmt::Debug for Upcall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Upcall::Connected { proc, .. } => write!(f, "Connected({proc:?})"),
            Upcall::Finalized { proc, .. } => write!(f, "Finalized({proc:?})"),
            Upcall::Abort { proc, status, .. } => write!(f, "Abort({proc:?}, {status})"),
            Upcall::Fence { procs, collect, data, .. } => {
                write!(f, "Fence({} procs, collect {collect}, {} bytes)", procs.len(), data.len())
            }
            Upcall::DirectModex { proc, .. } => write!(f, "DirectModex({proc:?})"),
            Upcall::DmodexData { token, status, data } => write!(f, "DmodexData({token}, {status}, {} bytes)", data.len()),
            Upcall::Registered { token, status } => write!(f, "Registered({token}, {status})"),
        }
    }
}

/// Where upcalls go: returns the upcall back when it cannot be delivered (the daemon is gone).
pub type Sink = Box<dyn Fn(Upcall) -> Result<(), Upcall> + Send>;

static SINK: Mutex<Option<Sink>> = Mutex::new(None);
static FINALIZED: AtomicBool = AtomicBool::new(false);

fn deliver(u: Upcall) -> c_int {
    let guard = SINK.lock().unwrap_or_else(|e| e.into_inner());
    let undelivered = match guard.as_ref() {
        Some(sink) => sink(u).err(),
        None => Some(u),
    };
    drop(guard);
    match undelivered {
        None => PMIX_SUCCESS,
        Some(u) => {
            // Returning an error tells libpmix the callback will not be called: disarm it.
            match u {
                Upcall::Connected { done, .. } | Upcall::Finalized { done, .. } | Upcall::Abort { done, .. } => done.disarm(),
                Upcall::Fence { done, .. } | Upcall::DirectModex { done, .. } => done.disarm(),
                Upcall::DmodexData { .. } | Upcall::Registered { .. } => {}
            }
            PMIX_ERR_UNREACH
        }
    }
}

/// A pending `pmix_op_cbfunc_t` (rule 4).
pub struct OpDone {
    cb: Option<OpCb>,
    cbdata: *mut c_void,
}

// SAFETY: the pair is an opaque token owned by one value; libpmix accepts completion from any
// thread (rule 8).
unsafe impl Send for OpDone {}

impl OpDone {
    pub fn complete(mut self, status: c_int) {
        if let Some(cb) = self.cb.take() {
            // SAFETY: cb/cbdata came from libpmix together and are used once.
            unsafe { cb(status, self.cbdata) };
        }
    }
    fn disarm(mut self) {
        self.cb = None;
    }
}

impl Drop for OpDone {
    fn drop(&mut self) {
        if let Some(cb) = self.cb.take() {
            if !FINALIZED.load(Ordering::SeqCst) {
                // SAFETY: as in complete.
                unsafe { cb(PMIX_ERROR, self.cbdata) };
            }
        }
    }
}

/// A pending `pmix_modex_cbfunc_t` (rule 4).
pub struct ModexDone {
    cb: Option<ModexCb>,
    cbdata: *mut c_void,
}

// SAFETY: as for OpDone.
unsafe impl Send for ModexDone {}

impl ModexDone {
    pub fn complete(mut self, status: c_int, data: Vec<u8>) {
        let Some(cb) = self.cb.take() else { return };
        let (ptr, len) = (data.as_ptr() as *const c_char, data.len());
        let owner = Box::into_raw(Box::new(data)) as *mut c_void;
        // SAFETY: the blob stays alive until libpmix calls release_blob with owner (rule 5).
        unsafe { cb(status, ptr, len, self.cbdata, Some(release_blob), owner) };
    }
    fn disarm(mut self) {
        self.cb = None;
    }
}

impl Drop for ModexDone {
    fn drop(&mut self) {
        if let Some(cb) = self.cb.take() {
            if !FINALIZED.load(Ordering::SeqCst) {
                // SAFETY: as in complete; no data, so no release function.
                unsafe { cb(PMIX_ERROR, std::ptr::null(), 0, self.cbdata, None, std::ptr::null_mut()) };
            }
        }
    }
}

unsafe extern "C" fn release_blob(owner: *mut c_void) {
    if !owner.is_null() {
        // SAFETY: owner is the Box<Vec<u8>> leaked in ModexDone::complete, released once.
        drop(unsafe { Box::from_raw(owner as *mut Vec<u8>) });
    }
}

unsafe extern "C" fn on_deregistered(_status: c_int, _cbdata: *mut c_void) {
    // Nothing waits for it: the next generation's namespace has a name of its own.
}

unsafe extern "C" fn on_registered(status: c_int, cbdata: *mut c_void) {
    // Rule 6: cbdata is the caller's token.
    let _ = deliver(Upcall::Registered { token: cbdata as usize as u64, status });
}

/// Copies a `pmix_proc_t` (rule 3).
unsafe fn read_proc(p: *const pmix_proc_t) -> ProcId {
    if p.is_null() {
        return ProcId { nspace: String::new(), rank: PMIX_RANK_WILDCARD };
    }
    // SAFETY: libpmix passes a valid proc for the duration of the callback.
    let p = unsafe { &*p };
    let bytes: Vec<u8> = p.nspace.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    ProcId { nspace: String::from_utf8_lossy(&bytes).into_owned(), rank: p.rank }
}

/// Whether `info` says `PMIX_COLLECT_DATA` = true (rule 3).
unsafe fn collect_data(info: *const pmix_info_t, ninfo: usize) -> bool {
    if info.is_null() {
        return false;
    }
    // SAFETY: libpmix passes ninfo valid infos for the duration of the callback.
    let infos = unsafe { std::slice::from_raw_parts(info, ninfo) };
    infos.iter().any(|i| {
        // SAFETY: the key is a NUL-terminated array of PMIX_MAX_KEYLEN+1 chars.
        let key = unsafe { CStr::from_ptr(i.key.as_ptr()) };
        // A bool directive: true unless its value says false (PMIX_INFO_TRUE semantics).
        key.to_bytes() == b"pmix.collect" && (i.value.type_ != types::BOOL || i.value.data[0] as u8 != 0)
    })
}

unsafe extern "C" fn on_client_connected(proc: *const pmix_proc_t, _obj: *mut c_void, cb: Option<OpCb>, cbdata: *mut c_void) -> c_int {
    // SAFETY: rule 3.
    let proc = unsafe { read_proc(proc) };
    deliver(Upcall::Connected { proc, done: OpDone { cb, cbdata } })
}

unsafe extern "C" fn on_client_finalized(proc: *const pmix_proc_t, _obj: *mut c_void, cb: Option<OpCb>, cbdata: *mut c_void) -> c_int {
    // SAFETY: rule 3.
    let proc = unsafe { read_proc(proc) };
    deliver(Upcall::Finalized { proc, done: OpDone { cb, cbdata } })
}

unsafe extern "C" fn on_abort(
    proc: *const pmix_proc_t,
    _obj: *mut c_void,
    status: c_int,
    msg: *const c_char,
    _procs: *mut pmix_proc_t,
    _nprocs: usize,
    cb: Option<OpCb>,
    cbdata: *mut c_void,
) -> c_int {
    // SAFETY: rule 3; msg is null or a C string valid during the call.
    let (proc, message) = unsafe { (read_proc(proc), cstr_lossy(msg)) };
    deliver(Upcall::Abort { proc, status, message, done: OpDone { cb, cbdata } })
}

unsafe extern "C" fn on_fence_nb(
    procs: *const pmix_proc_t,
    nprocs: usize,
    info: *const pmix_info_t,
    ninfo: usize,
    data: *mut c_char,
    ndata: usize,
    cb: Option<ModexCb>,
    cbdata: *mut c_void,
) -> c_int {
    // SAFETY: rule 3: everything is copied before returning.
    let (procs, collect, data) = unsafe {
        let procs: Vec<ProcId> = if procs.is_null() { Vec::new() } else { (0..nprocs).map(|i| read_proc(procs.add(i))).collect() };
        let data = if data.is_null() || ndata == 0 { Vec::new() } else { std::slice::from_raw_parts(data as *const u8, ndata).to_vec() };
        (procs, collect_data(info, ninfo), data)
    };
    deliver(Upcall::Fence { procs, collect, data, done: ModexDone { cb, cbdata } })
}

unsafe extern "C" fn on_direct_modex(
    proc: *const pmix_proc_t,
    _info: *const pmix_info_t,
    _ninfo: usize,
    cb: Option<ModexCb>,
    cbdata: *mut c_void,
) -> c_int {
    // SAFETY: rule 3.
    let proc = unsafe { read_proc(proc) };
    deliver(Upcall::DirectModex { proc, done: ModexDone { cb, cbdata } })
}

unsafe extern "C" fn on_dmodex_data(status: c_int, data: *mut c_char, sz: usize, cbdata: *mut c_void) {
    // SAFETY: rule 3 and rule 6 (cbdata is the token).
    let data = if data.is_null() || sz == 0 { Vec::new() } else { unsafe { std::slice::from_raw_parts(data as *const u8, sz).to_vec() } };
    let _ = deliver(Upcall::DmodexData { token: cbdata as usize as u64, status, data });
}

fn make_proc(call: &'static str, nspace: &str, rank: u32) -> Result<pmix_proc_t, CallError> {
    if nspace.len() > PMIX_MAX_NSLEN || nspace.bytes().any(|b| b == 0) {
        return Err(CallError { call, status: PMIX_ERROR, text: format!("namespace '{nspace}' is not a valid PMIx namespace") });
    }
    let mut p = pmix_proc_t { nspace: [0; PMIX_MAX_NSLEN + 1], rank };
    for (d, s) in p.nspace.iter_mut().zip(nspace.bytes()) {
        *d = s as c_char;
    }
    Ok(p)
}

fn c_string(call: &'static str, s: &str) -> Result<CString, CallError> {
    CString::new(s).map_err(|_| CallError { call, status: PMIX_ERROR, text: format!("'{s}' contains a NUL byte") })
}

/// Copies a C string; null gives "".
unsafe fn cstr_lossy(p: *const c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        // SAFETY: the caller guarantees a NUL-terminated string.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

/// Copies and frees a malloc'ed NULL-terminated string array (rule 7).
unsafe fn take_argv(argv: *mut *mut c_char) -> Vec<String> {
    let mut out = Vec::new();
    if argv.is_null() {
        return out;
    }
    let mut i = 0;
    loop {
        // SAFETY: the array is NULL-terminated.
        let s = unsafe { *argv.add(i) };
        if s.is_null() {
            break;
        }
        // SAFETY: each entry is a malloc'ed C string, freed once here.
        unsafe {
            out.push(cstr_lossy(s));
            libc::free(s as *mut c_void);
        }
        i += 1;
    }
    // SAFETY: the array itself is malloc'ed.
    unsafe { libc::free(argv as *mut c_void) };
    out
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    const INCLUDE: &str = "/usr/lib/x86_64-linux-gnu/pmix2/include";

    /// The hand-written layouts match what the C compiler makes of libpmix's headers.
    #[test]
    fn layouts_match_pmix_headers() {
        let include = std::env::var("RLAUNCH_PMIX_INCLUDE").unwrap_or_else(|_| INCLUDE.to_string());
        if !std::path::Path::new(&include).join("pmix_server.h").exists() {
            eprintln!("SKIPPED: no pmix_server.h under {include} (install libpmix-dev)");
            return;
        }
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        let dir = std::env::temp_dir().join(format!("rlaunch-pmix-layout-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("layout.c");
        std::fs::write(
            &src,
            r#"#include <stdio.h>
#include <stddef.h>
#include <pmix_server.h>
int main(void) {
    printf("proc %zu %zu\n", sizeof(pmix_proc_t), offsetof(pmix_proc_t, rank));
    printf("value %zu %zu\n", sizeof(pmix_value_t), offsetof(pmix_value_t, data));
    printf("info %zu %zu %zu\n", sizeof(pmix_info_t), offsetof(pmix_info_t, flags), offsetof(pmix_info_t, value));
    printf("darray %zu %zu %zu\n", sizeof(pmix_data_array_t), offsetof(pmix_data_array_t, size), offsetof(pmix_data_array_t, array));
    printf("module %zu %zu %zu %zu %zu %zu\n", sizeof(pmix_server_module_t),
        offsetof(pmix_server_module_t, client_connected), offsetof(pmix_server_module_t, client_finalized),
        offsetof(pmix_server_module_t, abort), offsetof(pmix_server_module_t, fence_nb),
        offsetof(pmix_server_module_t, direct_modex));
    printf("consts %d %d %d %d %d %u\n", PMIX_SUCCESS, PMIX_ERROR, PMIX_ERR_UNREACH, PMIX_ERR_NOT_SUPPORTED,
        PMIX_OPERATION_SUCCEEDED, PMIX_RANK_WILDCARD);
    printf("types %d %d %d %d %d %d %d\n", PMIX_BOOL, PMIX_STRING, PMIX_UINT16, PMIX_UINT32, PMIX_DATA_ARRAY,
        PMIX_PROC_RANK, PMIX_REGEX);
    printf("collect %s\n", PMIX_COLLECT_DATA);
    return 0;
}
"#,
        )
        .unwrap();
        let exe = dir.join("layout");
        let out = std::process::Command::new(&cc).arg(format!("-I{include}")).arg(&src).arg("-o").arg(&exe).output();
        let out = match out {
            Ok(o) => o,
            Err(e) => {
                eprintln!("SKIPPED: no C compiler ({cc}): {e}");
                return;
            }
        };
        assert!(out.status.success(), "compiling the layout check: {}", String::from_utf8_lossy(&out.stderr));
        let run = std::process::Command::new(&exe).output().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let text = String::from_utf8(run.stdout).unwrap();
        let expect = format!(
            "proc {} {}\nvalue {} {}\ninfo {} {} {}\ndarray {} {} {}\nmodule {} {} {} {} {} {}\nconsts {} {} {} {} {} {}\ntypes {} {} {} {} {} {} {}\ncollect pmix.collect\n",
            size_of::<pmix_proc_t>(),
            offset_of!(pmix_proc_t, rank),
            size_of::<pmix_value_t>(),
            offset_of!(pmix_value_t, data),
            size_of::<pmix_info_t>(),
            offset_of!(pmix_info_t, flags),
            offset_of!(pmix_info_t, value),
            size_of::<pmix_data_array_t>(),
            offset_of!(pmix_data_array_t, size),
            offset_of!(pmix_data_array_t, array),
            size_of::<pmix_server_module_t>(),
            offset_of!(pmix_server_module_t, client_connected),
            offset_of!(pmix_server_module_t, client_finalized),
            offset_of!(pmix_server_module_t, abort),
            offset_of!(pmix_server_module_t, fence_nb),
            offset_of!(pmix_server_module_t, direct_modex),
            PMIX_SUCCESS,
            PMIX_ERROR,
            PMIX_ERR_UNREACH,
            PMIX_ERR_NOT_SUPPORTED,
            PMIX_OPERATION_SUCCEEDED,
            PMIX_RANK_WILDCARD,
            types::BOOL,
            types::STRING,
            types::UINT16,
            types::UINT32,
            types::DATA_ARRAY,
            types::PROC_RANK,
            types::REGEX,
        );
        assert_eq!(text, expect);
    }

    #[test]
    fn a_missing_library_says_what_to_install() {
        let e = Lib::open("/nonexistent/libpmix.so.2").err().expect("cannot load");
        let msg = e.to_string();
        assert!(msg.contains("apt-get install libpmix2") && msg.contains("/nonexistent/libpmix.so.2"), "{msg}");
        assert!(!msg.contains('\n'), "one line: {msg}");
    }

    #[test]
    fn procs_are_bounded_and_copied() {
        let p = make_proc("t", "rl-1234", 7).unwrap();
        // SAFETY: p is a valid local proc.
        let back = unsafe { read_proc(&p) };
        assert_eq!(back, ProcId { nspace: "rl-1234".into(), rank: 7 });
        assert!(make_proc("t", &"x".repeat(256), 0).is_err());
        assert!(make_proc("t", "a\0b", 0).is_err());
        assert!(make_proc("t", &"x".repeat(255), 0).is_ok());
    }

    #[test]
    fn argv_from_c_is_copied_and_freed() {
        // SAFETY: builds the same malloc'ed NULL-terminated array libpmix would.
        unsafe {
            let arr = libc::malloc(3 * size_of::<*mut c_char>()) as *mut *mut c_char;
            *arr = libc::strdup(c"A=1".as_ptr());
            *arr.add(1) = libc::strdup(c"B=x=y".as_ptr());
            *arr.add(2) = std::ptr::null_mut();
            assert_eq!(take_argv(arr), vec!["A=1".to_string(), "B=x=y".to_string()]);
            assert!(take_argv(std::ptr::null_mut()).is_empty());
        }
    }
}
