//! The node's hardware topology as hwloc's own XML, exported once by a daemon so that its ranks
//! load that file (`HWLOC_XMLFILE`) instead of each walking sysfs, PCI and the X and OpenCL
//! plugins. libhwloc (ABI 2, `libhwloc.so.15`) is loaded at run time like libibverbs: a host
//! without it exports nothing and its ranks discover for themselves, as before.
//!
//! The export keeps every object type hwloc can find (I/O included: MPICH asks for all PCI
//! devices, `HWLOC_TYPE_FILTER_KEEP_ALL`), so that each importer, which applies its own type
//! filters to what it reads, sees what its own discovery would have shown it.

use std::ffi::{c_char, c_int, c_uint, c_ulong, c_void};

/// The library name of hwloc's ABI 2 (hwloc 2.x); hwloc 1.x (`.so.5`) reads no v2 XML.
pub const LIBHWLOC: &str = "libhwloc.so.15";

/// `HWLOC_TYPE_FILTER_KEEP_ALL` of hwloc 2's `enum hwloc_type_filter_e`.
const KEEP_ALL: c_int = 0;

type Topo = *mut c_void;
type GetApiVersion = unsafe extern "C" fn() -> c_uint;
type Init = unsafe extern "C" fn(*mut Topo) -> c_int;
type SetAllTypesFilter = unsafe extern "C" fn(Topo, c_int) -> c_int;
type Load = unsafe extern "C" fn(Topo) -> c_int;
type ExportXmlBuffer = unsafe extern "C" fn(Topo, *mut *mut c_char, *mut c_int, c_ulong) -> c_int;
type FreeXmlBuffer = unsafe extern "C" fn(Topo, *mut c_char);
type Destroy = unsafe extern "C" fn(Topo);

/// Why no XML came out; the text says which step of which library.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExportError {
    #[error("{lib} not loadable: {why}")]
    Missing { lib: String, why: String },
    #[error("{lib} is hwloc API {found:#x}, not 2.x")]
    Version { lib: String, found: u32 },
    #[error("{lib}: {call} failed")]
    Call { lib: String, call: &'static str },
}

/// This host's topology as hwloc XML (v2), from the library `lib` (normally [`LIBHWLOC`]).
pub fn export_xml(lib: &str) -> Result<Vec<u8>, ExportError> {
    // SAFETY: loading libhwloc runs its constructors, which set up nothing but its own state.
    let l = unsafe { libloading::Library::new(lib) }.map_err(|e| ExportError::Missing { lib: lib.into(), why: e.to_string() })?;
    macro_rules! sym {
        ($n:literal, $t:ty) => {{
            // SAFETY: the signature matches the prototype in hwloc 2's hwloc.h / hwloc/export.h.
            let s: libloading::Symbol<$t> = unsafe { l.get($n) }.map_err(|e| ExportError::Missing { lib: lib.into(), why: e.to_string() })?;
            *s
        }};
    }
    let version = sym!(b"hwloc_get_api_version\0", GetApiVersion);
    // SAFETY: takes no arguments, returns a constant.
    let found = unsafe { version() };
    if found >> 16 != 2 {
        return Err(ExportError::Version { lib: lib.into(), found });
    }
    let init = sym!(b"hwloc_topology_init\0", Init);
    let filter = sym!(b"hwloc_topology_set_all_types_filter\0", SetAllTypesFilter);
    let load = sym!(b"hwloc_topology_load\0", Load);
    let export = sym!(b"hwloc_topology_export_xmlbuffer\0", ExportXmlBuffer);
    let free = sym!(b"hwloc_free_xmlbuffer\0", FreeXmlBuffer);
    let destroy = sym!(b"hwloc_topology_destroy\0", Destroy);
    let call = |call| ExportError::Call { lib: lib.into(), call };
    let mut topo: Topo = std::ptr::null_mut();
    // SAFETY: `topo` is a valid out-pointer.
    if unsafe { init(&mut topo) } != 0 || topo.is_null() {
        return Err(call("hwloc_topology_init"));
    }
    // From here on the topology is destroyed on every path.
    let out = (|| {
        // SAFETY: `topo` is an initialised, not yet loaded topology, as both calls require.
        if unsafe { filter(topo, KEEP_ALL) } != 0 {
            return Err(call("hwloc_topology_set_all_types_filter"));
        }
        // SAFETY: as above.
        if unsafe { load(topo) } != 0 {
            return Err(call("hwloc_topology_load"));
        }
        let mut buf: *mut c_char = std::ptr::null_mut();
        let mut len: c_int = 0;
        // SAFETY: `topo` is loaded; buf and len are valid out-pointers; flags 0 = v2 XML.
        if unsafe { export(topo, &mut buf, &mut len, 0) } != 0 || buf.is_null() {
            return Err(call("hwloc_topology_export_xmlbuffer"));
        }
        // The length counts the terminating NUL.
        let n = usize::try_from(len).unwrap_or(0).saturating_sub(1);
        // SAFETY: hwloc returned `len` readable bytes at `buf`; copied before it is freed.
        let xml = unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), n) }.to_vec();
        // SAFETY: `buf` came from hwloc_topology_export_xmlbuffer on this topology.
        unsafe { free(topo, buf) };
        Ok(xml)
    })();
    // SAFETY: `topo` came from hwloc_topology_init and is not used afterwards.
    unsafe { destroy(topo) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_library_is_an_error_naming_it() {
        match export_xml("libhwloc-not-here.so.99") {
            Err(ExportError::Missing { lib, .. }) => assert_eq!(lib, "libhwloc-not-here.so.99"),
            other => panic!("expected Missing, got {other:?}"),
        }
    }

    #[test]
    fn the_export_is_a_whole_hwloc_v2_document_of_this_host() {
        // Hosts without libhwloc have nothing to check here.
        let Ok(xml) = export_xml(LIBHWLOC) else { return };
        let text = String::from_utf8(xml).expect("hwloc writes UTF-8");
        assert!(text.starts_with("<?xml"), "{text:.80}");
        assert!(text.contains("<topology version=\"2."), "{text:.300}");
        let pus = text.matches("type=\"PU\"").count();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert!(pus >= cpus, "{pus} PUs in the XML, {cpus} CPUs usable here");
        assert!(text.trim_end().ends_with("</topology>"));
    }
}
