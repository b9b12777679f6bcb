//! libibverbs loaded at run time.
//!
//! The launcher must start on hosts without `libibverbs.so.1`, so nothing here is linked at build
//! time: the library is opened with `dlopen` (libloading) and every failure becomes
//! [`VerbsStatus::Unavailable`] with the reason. Only exported, ABI-stable entry points are bound;
//! the inline data-path calls of `verbs.h` (post_send, poll_cq) are not needed for probing.

use std::ffi::{c_char, c_int, c_void, CStr};

use serde::{Deserialize, Serialize};

/// Whether verbs could be used on a host. Part of the inventory, so peers can see why a node has no
/// RDMA even though sysfs lists a device.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum VerbsStatus {
    /// Discovery ran on a fixture or without probing: sysfs alone decides.
    #[default]
    NotProbed,
    /// Verbs loaded and listed these devices.
    Available { devices: Vec<String> },
    /// Verbs cannot be used; the text says why ("libibverbs.so.1 not found: ...").
    Unavailable { reason: String },
}

impl VerbsStatus {
    /// RDMA is possible unless a probe said otherwise.
    pub fn usable(&self) -> bool {
        !matches!(self, VerbsStatus::Unavailable { .. })
    }
}

impl std::fmt::Display for VerbsStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VerbsStatus::NotProbed => f.write_str("not probed"),
            VerbsStatus::Available { devices } => write!(f, "available: {}", devices.join(", ")),
            VerbsStatus::Unavailable { reason } => write!(f, "unavailable: {reason}"),
        }
    }
}

/// Result of [`probe`]: the status plus the active MTU (bytes) of every port verbs could query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub status: VerbsStatus,
    pub active_mtus: Vec<(String, u8, u32)>,
}

/// The library name that rdma-core installs; the unversioned `.so` is only in -dev packages.
pub const LIBIBVERBS: &str = "libibverbs.so.1";

/// How many ports to try per device: HCAs have 1 or 2, switches up to 255 but those are not hosts.
const MAX_PORTS_PROBED: u8 = 8;

/// Loads verbs, lists devices and queries port MTUs. Never fails: every problem becomes
/// `Unavailable { reason }`.
pub fn probe() -> Probe {
    probe_library(LIBIBVERBS)
}

/// [`probe`] with another library name (tests use a name that cannot exist).
pub fn probe_library(name: &str) -> Probe {
    let unavailable = |reason: String| Probe {
        status: VerbsStatus::Unavailable { reason },
        active_mtus: Vec::new(),
    };
    let lib = match Verbs::load(name) {
        Ok(l) => l,
        Err(reason) => return unavailable(reason),
    };
    let devices = match lib.devices() {
        Ok(d) if d.is_empty() => {
            return unavailable("ibv_get_device_list found no RDMA device".into())
        }
        Ok(d) => d,
        Err(reason) => return unavailable(reason),
    };
    let mut names = Vec::new();
    let mut active_mtus = Vec::new();
    for dev in &devices {
        names.push(dev.name.clone());
        for port in 1..=MAX_PORTS_PROBED {
            match lib.active_mtu(dev, port) {
                Some(mtu) => active_mtus.push((dev.name.clone(), port, mtu)),
                None => break,
            }
        }
    }
    lib.free(devices);
    Probe {
        status: VerbsStatus::Available { devices: names },
        active_mtus,
    }
}

/// Maps `enum ibv_mtu` (1..=5) to bytes.
pub fn mtu_enum_to_bytes(v: c_int) -> Option<u32> {
    match v {
        1..=5 => Some(128u32 << v),
        _ => None,
    }
}

type GetDeviceList = unsafe extern "C" fn(*mut c_int) -> *mut *mut c_void;
type FreeDeviceList = unsafe extern "C" fn(*mut *mut c_void);
type GetDeviceName = unsafe extern "C" fn(*mut c_void) -> *const c_char;
type OpenDevice = unsafe extern "C" fn(*mut c_void) -> *mut c_void;
type CloseDevice = unsafe extern "C" fn(*mut c_void) -> c_int;
type QueryPort = unsafe extern "C" fn(*mut c_void, u8, *mut PortAttr) -> c_int;

/// `struct ibv_port_attr` from verbs.h (rdma-core), followed by spare room: the exported
/// `ibv_query_port` writes the older, shorter layout, and newer libraries may write more.
#[repr(C)]
#[derive(Default)]
struct PortAttr {
    state: c_int,
    max_mtu: c_int,
    active_mtu: c_int,
    gid_tbl_len: c_int,
    port_cap_flags: u32,
    max_msg_sz: u32,
    bad_pkey_cntr: u32,
    qkey_viol_cntr: u32,
    pkey_tbl_len: u16,
    lid: u16,
    sm_lid: u16,
    lmc: u8,
    max_vl_num: u8,
    sm_sl: u8,
    subnet_timeout: u8,
    init_type_reply: u8,
    active_width: u8,
    active_speed: u8,
    phys_state: u8,
    link_layer: u8,
    flags: u8,
    port_cap_flags2: u16,
    spare: [u64; 8],
}

/// A device from `ibv_get_device_list`; valid until the list is freed.
pub struct DeviceRef {
    pub name: String,
    raw: *mut c_void,
}

struct DeviceList {
    list: *mut *mut c_void,
}

/// The loaded library with the few symbols rlaunch uses.
pub struct Verbs {
    get_device_list: GetDeviceList,
    free_device_list: FreeDeviceList,
    get_device_name: GetDeviceName,
    open_device: OpenDevice,
    close_device: CloseDevice,
    query_port: QueryPort,
    list: std::cell::RefCell<Vec<DeviceList>>,
    // Last field: dropped after the function pointers above can no longer be used.
    _lib: libloading::Library,
}

impl Verbs {
    /// Opens the library and resolves symbols; the error text is the "why" of `unavailable: <why>`.
    pub fn load(name: &str) -> Result<Verbs, String> {
        // SAFETY: loading libibverbs runs its constructors, which only register providers.
        let lib = unsafe { libloading::Library::new(name) }
            .map_err(|e| format!("{name} not loadable: {e}"))?;
        macro_rules! sym {
            ($n:literal, $t:ty) => {{
                // SAFETY: the signature matches the prototype in verbs.h for this exported symbol.
                let s: libloading::Symbol<$t> = unsafe { lib.get($n) }.map_err(|e| {
                    format!(
                        "{name} lacks {}: {e}",
                        String::from_utf8_lossy(&$n[..$n.len() - 1])
                    )
                })?;
                *s
            }};
        }
        let get_device_list = sym!(b"ibv_get_device_list\0", GetDeviceList);
        let free_device_list = sym!(b"ibv_free_device_list\0", FreeDeviceList);
        let get_device_name = sym!(b"ibv_get_device_name\0", GetDeviceName);
        let open_device = sym!(b"ibv_open_device\0", OpenDevice);
        let close_device = sym!(b"ibv_close_device\0", CloseDevice);
        let query_port = sym!(b"ibv_query_port\0", QueryPort);
        Ok(Verbs {
            get_device_list,
            free_device_list,
            get_device_name,
            open_device,
            close_device,
            query_port,
            list: std::cell::RefCell::new(Vec::new()),
            _lib: lib,
        })
    }

    /// Lists devices. NULL from the library (ENOSYS when the kernel has no uverbs) is an error text.
    pub fn devices(&self) -> Result<Vec<DeviceRef>, String> {
        let mut n: c_int = 0;
        // SAFETY: n is a valid out-pointer; the list stays alive until `free`.
        let list = unsafe { (self.get_device_list)(&mut n) };
        if list.is_null() {
            let err = std::io::Error::last_os_error();
            return Err(format!("ibv_get_device_list failed: {err}"));
        }
        let mut out = Vec::new();
        for i in 0..usize::try_from(n).unwrap_or(0) {
            // SAFETY: the list holds n device pointers.
            let raw = unsafe { *list.add(i) };
            if raw.is_null() {
                break;
            }
            // SAFETY: raw is a device from the list; the name is a NUL-terminated string inside it.
            let name = unsafe { CStr::from_ptr((self.get_device_name)(raw)) }
                .to_string_lossy()
                .into_owned();
            out.push(DeviceRef { name, raw });
        }
        self.list.borrow_mut().push(DeviceList { list });
        Ok(out)
    }

    /// Active MTU in bytes of one port; `None` if the device cannot be opened or the port does not
    /// exist.
    pub fn active_mtu(&self, dev: &DeviceRef, port: u8) -> Option<u32> {
        // SAFETY: dev.raw comes from a live device list.
        let ctx = unsafe { (self.open_device)(dev.raw) };
        if ctx.is_null() {
            return None;
        }
        let mut attr = PortAttr::default();
        // SAFETY: ctx is open; attr is larger than any ibv_port_attr the library writes.
        let rc = unsafe { (self.query_port)(ctx, port, &mut attr) };
        // SAFETY: ctx was opened above and is closed once.
        unsafe { (self.close_device)(ctx) };
        if rc != 0 {
            return None;
        }
        mtu_enum_to_bytes(attr.active_mtu)
    }

    /// Releases device lists handed out by [`Verbs::devices`].
    pub fn free(&self, devices: Vec<DeviceRef>) {
        drop(devices);
        for l in self.list.borrow_mut().drain(..) {
            // SAFETY: each list came from ibv_get_device_list and is freed once.
            unsafe { (self.free_device_list)(l.list) };
        }
    }
}

impl Drop for Verbs {
    fn drop(&mut self) {
        for l in self.list.get_mut().drain(..) {
            // SAFETY: as in `free`; lists not yet freed are freed here, before the library unloads.
            unsafe { (self.free_device_list)(l.list) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_library_is_unavailable_with_reason() {
        let p = probe_library("libibverbs-does-not-exist.so.9");
        match p.status {
            VerbsStatus::Unavailable { reason } => {
                assert!(
                    reason.contains("libibverbs-does-not-exist.so.9"),
                    "{reason}"
                )
            }
            other => panic!("expected unavailable, got {other:?}"),
        }
        assert!(p.active_mtus.is_empty());
    }

    #[test]
    fn probe_on_this_host_never_fails() {
        // Either outcome is legal; what matters is that it returns and explains itself.
        let p = probe();
        let shown = p.status.to_string();
        assert!(
            shown.starts_with("available: ") || shown.starts_with("unavailable: "),
            "{shown}"
        );
        if let VerbsStatus::Unavailable { reason } = &p.status {
            assert!(!reason.is_empty());
        }
    }

    #[test]
    fn mtu_enum() {
        assert_eq!(mtu_enum_to_bytes(1), Some(256));
        assert_eq!(mtu_enum_to_bytes(3), Some(1024));
        assert_eq!(mtu_enum_to_bytes(5), Some(4096));
        assert_eq!(mtu_enum_to_bytes(0), None);
        assert_eq!(mtu_enum_to_bytes(6), None);
    }

    #[test]
    fn port_attr_prefix_matches_verbs_h() {
        // Offsets of the fields rlaunch reads, as laid out by the C compiler for verbs.h.
        assert_eq!(std::mem::offset_of!(PortAttr, active_mtu), 8);
        assert_eq!(std::mem::offset_of!(PortAttr, lid), 34);
        assert_eq!(std::mem::offset_of!(PortAttr, port_cap_flags2), 48);
    }

    #[test]
    fn status_usable() {
        assert!(VerbsStatus::NotProbed.usable());
        assert!(VerbsStatus::Available {
            devices: vec!["mlx5_0".into()]
        }
        .usable());
        assert!(!VerbsStatus::Unavailable { reason: "x".into() }.usable());
    }
}
