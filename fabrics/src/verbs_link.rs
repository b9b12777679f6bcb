//! An [`RdmaLink`] over real verbs: one reliable-connected queue pair per peer, one completion
//! queue, one registered buffer holding every receive slot and send buffer.
//!
//! libibverbs is loaded at run time like in [`crate::verbs`]. The control-path calls are exported
//! functions; the data-path calls (`ibv_post_send`, `ibv_post_recv`, `ibv_poll_cq`) are inline in
//! `verbs.h` and go through `context->ops`, so this module reads those function pointers at the
//! offsets `verbs.h` gives. Structures are built as byte buffers at the offsets below; the test
//! `layout_matches_verbs_h` compiles a C program against the installed `verbs.h` to check each one.
//!
//! NEVER RUN ON HARDWARE: no RDMA device was available while writing it (see the README).

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::time::{Duration, Instant};

use crate::rdma::{Completion, RdmaLink};
use crate::transport::{Transport, TransportError};

/// Offsets into verbs.h structures (x86_64 / aarch64 LP64), checked by `layout_matches_verbs_h`.
pub mod layout {
    pub const CONTEXT_OPS_POLL_CQ: usize = 96;
    pub const CONTEXT_OPS_POST_SEND: usize = 208;
    pub const CONTEXT_OPS_POST_RECV: usize = 216;
    pub const QP_CONTEXT: usize = 0;
    pub const QP_QP_NUM: usize = 52;
    pub const MR_LKEY: usize = 36;

    pub const QP_INIT_ATTR_SIZE: usize = 64;
    pub const QP_INIT_ATTR_SEND_CQ: usize = 8;
    pub const QP_INIT_ATTR_RECV_CQ: usize = 16;
    pub const QP_INIT_ATTR_CAP: usize = 32;
    pub const QP_INIT_ATTR_QP_TYPE: usize = 52;
    pub const QP_INIT_ATTR_SQ_SIG_ALL: usize = 56;

    pub const QP_ATTR_SIZE: usize = 144;
    pub const QP_ATTR_QP_STATE: usize = 0;
    pub const QP_ATTR_PATH_MTU: usize = 8;
    pub const QP_ATTR_RQ_PSN: usize = 20;
    pub const QP_ATTR_SQ_PSN: usize = 24;
    pub const QP_ATTR_DEST_QP_NUM: usize = 28;
    pub const QP_ATTR_QP_ACCESS_FLAGS: usize = 32;
    pub const QP_ATTR_AH_GRH_DGID: usize = 56;
    pub const QP_ATTR_AH_GRH_SGID_INDEX: usize = 76;
    pub const QP_ATTR_AH_GRH_HOP_LIMIT: usize = 77;
    pub const QP_ATTR_AH_DLID: usize = 80;
    pub const QP_ATTR_AH_SL: usize = 82;
    pub const QP_ATTR_AH_IS_GLOBAL: usize = 85;
    pub const QP_ATTR_AH_PORT_NUM: usize = 86;
    pub const QP_ATTR_PKEY_INDEX: usize = 120;
    pub const QP_ATTR_MAX_RD_ATOMIC: usize = 126;
    pub const QP_ATTR_MAX_DEST_RD_ATOMIC: usize = 127;
    pub const QP_ATTR_MIN_RNR_TIMER: usize = 128;
    pub const QP_ATTR_PORT_NUM: usize = 129;
    pub const QP_ATTR_TIMEOUT: usize = 130;
    pub const QP_ATTR_RETRY_CNT: usize = 131;
    pub const QP_ATTR_RNR_RETRY: usize = 132;

    pub const SEND_WR_SIZE: usize = 128;
    pub const SEND_WR_WR_ID: usize = 0;
    pub const SEND_WR_NEXT: usize = 8;
    pub const SEND_WR_SG_LIST: usize = 16;
    pub const SEND_WR_NUM_SGE: usize = 24;
    pub const SEND_WR_OPCODE: usize = 28;
    pub const SEND_WR_SEND_FLAGS: usize = 32;

    pub const WC_SIZE: usize = 48;

    pub const QPT_RC: u32 = 2;
    pub const WR_SEND: u32 = 2;
    pub const SEND_SIGNALED: u32 = 2;
    pub const WC_SEND: u32 = 0;
    pub const WC_RECV: u32 = 128;
    pub const QPS_INIT: u32 = 1;
    pub const QPS_RTR: u32 = 2;
    pub const QPS_RTS: u32 = 3;
    pub const ACCESS_LOCAL_WRITE: c_int = 1;

    pub const QP_STATE: c_int = 1;
    pub const QP_ACCESS_FLAGS: c_int = 8;
    pub const QP_PKEY_INDEX: c_int = 16;
    pub const QP_PORT: c_int = 32;
    pub const QP_AV: c_int = 128;
    pub const QP_PATH_MTU: c_int = 256;
    pub const QP_TIMEOUT: c_int = 512;
    pub const QP_RETRY_CNT: c_int = 1024;
    pub const QP_RNR_RETRY: c_int = 2048;
    pub const QP_RQ_PSN: c_int = 4096;
    pub const QP_MAX_QP_RD_ATOMIC: c_int = 8192;
    pub const QP_MIN_RNR_TIMER: c_int = 32768;
    pub const QP_SQ_PSN: c_int = 65536;
    pub const QP_MAX_DEST_RD_ATOMIC: c_int = 131072;
    pub const QP_DEST_QPN: c_int = 1048576;
    use std::ffi::c_int;
}
use layout::*;

/// `struct ibv_sge`.
#[repr(C)]
struct Sge {
    addr: u64,
    length: u32,
    lkey: u32,
}

/// `struct ibv_recv_wr`.
#[repr(C)]
struct RecvWr {
    wr_id: u64,
    next: *mut RecvWr,
    sg_list: *mut Sge,
    num_sge: c_int,
}

/// `struct ibv_wc`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Wc {
    wr_id: u64,
    status: u32,
    opcode: u32,
    vendor_err: u32,
    byte_len: u32,
    imm_data: u32,
    qp_num: u32,
    src_qp: u32,
    wc_flags: u32,
    pkey_index: u16,
    slid: u16,
    sl: u8,
    dlid_path_bits: u8,
}

/// What a peer needs to connect its queue pair to ours; exchanged out of band.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QpInfo {
    pub qpn: u32,
    pub psn: u32,
    pub lid: u16,
    pub gid: [u8; 16],
}

impl QpInfo {
    pub const LEN: usize = 4 + 4 + 4 + 2 + 16; // magic, qpn, psn, lid, gid
    const MAGIC: [u8; 4] = *b"RLQP";

    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(Self::LEN);
        b.extend_from_slice(&Self::MAGIC);
        b.extend_from_slice(&self.qpn.to_le_bytes());
        b.extend_from_slice(&self.psn.to_le_bytes());
        b.extend_from_slice(&self.lid.to_le_bytes());
        b.extend_from_slice(&self.gid);
        b
    }

    pub fn decode(b: &[u8]) -> Option<QpInfo> {
        if b.len() != Self::LEN || b[..4] != Self::MAGIC {
            return None;
        }
        Some(QpInfo {
            qpn: u32::from_le_bytes(b[4..8].try_into().ok()?),
            psn: u32::from_le_bytes(b[8..12].try_into().ok()?) & 0xff_ffff,
            lid: u16::from_le_bytes([b[12], b[13]]),
            gid: b[14..30].try_into().ok()?,
        })
    }
}

/// Where and how to open the link; device, port and GID index come from the endpoint assignment.
#[derive(Clone, Debug)]
pub struct VerbsLinkConfig {
    pub device: String,
    pub port: u8,
    pub gid_index: u16,
    /// LID of the local port (0 on RoCE).
    pub lid: u16,
    /// Path MTU as `enum ibv_mtu` (1 = 256 ... 5 = 4096).
    pub mtu_enum: u32,
    pub slot_size: usize,
    pub recv_depth: u32,
    pub send_bufs: usize,
}

type GetDeviceList = unsafe extern "C" fn(*mut c_int) -> *mut *mut c_void;
type FreeDeviceList = unsafe extern "C" fn(*mut *mut c_void);
type GetDeviceName = unsafe extern "C" fn(*mut c_void) -> *const c_char;
type OpenDevice = unsafe extern "C" fn(*mut c_void) -> *mut c_void;
type CloseDevice = unsafe extern "C" fn(*mut c_void) -> c_int;
type AllocPd = unsafe extern "C" fn(*mut c_void) -> *mut c_void;
type DeallocPd = unsafe extern "C" fn(*mut c_void) -> c_int;
type RegMr = unsafe extern "C" fn(*mut c_void, *mut c_void, usize, c_int) -> *mut c_void;
type DeregMr = unsafe extern "C" fn(*mut c_void) -> c_int;
type CreateCq =
    unsafe extern "C" fn(*mut c_void, c_int, *mut c_void, *mut c_void, c_int) -> *mut c_void;
type DestroyCq = unsafe extern "C" fn(*mut c_void) -> c_int;
type CreateQp = unsafe extern "C" fn(*mut c_void, *mut u8) -> *mut c_void;
type DestroyQp = unsafe extern "C" fn(*mut c_void) -> c_int;
type ModifyQp = unsafe extern "C" fn(*mut c_void, *mut u8, c_int) -> c_int;
type QueryGid = unsafe extern "C" fn(*mut c_void, u8, c_int, *mut [u8; 16]) -> c_int;
type PollCq = unsafe extern "C" fn(*mut c_void, c_int, *mut Wc) -> c_int;
type PostSend = unsafe extern "C" fn(*mut c_void, *mut u8, *mut *mut u8) -> c_int;
type PostRecv = unsafe extern "C" fn(*mut c_void, *mut RecvWr, *mut *mut RecvWr) -> c_int;

struct Api {
    get_device_list: GetDeviceList,
    free_device_list: FreeDeviceList,
    get_device_name: GetDeviceName,
    open_device: OpenDevice,
    close_device: CloseDevice,
    alloc_pd: AllocPd,
    dealloc_pd: DeallocPd,
    reg_mr: RegMr,
    dereg_mr: DeregMr,
    create_cq: CreateCq,
    destroy_cq: DestroyCq,
    create_qp: CreateQp,
    destroy_qp: DestroyQp,
    modify_qp: ModifyQp,
    query_gid: QueryGid,
    _lib: libloading::Library,
}

fn err(peer: u32, why: impl Into<String>) -> TransportError {
    TransportError::Rdma {
        peer,
        why: why.into(),
    }
}

impl Api {
    /// `ibv_modify_qp` into `state` (for the message) with the attributes in `attr` and `mask`.
    ///
    /// # Safety
    /// `qp` is a live queue pair of this library.
    unsafe fn modify_qp_to(
        &self,
        qp: *mut c_void,
        attr: &mut [u8; QP_ATTR_SIZE],
        mask: c_int,
        peer: u32,
        state: &str,
    ) -> Result<(), TransportError> {
        // SAFETY: the caller's qp; `attr` has the size of struct ibv_qp_attr.
        if unsafe { (self.modify_qp)(qp, attr.as_mut_ptr(), mask) } != 0 {
            return Err(err(
                peer,
                format!(
                    "ibv_modify_qp to {state} failed: {}",
                    std::io::Error::last_os_error()
                ),
            ));
        }
        Ok(())
    }

    fn load() -> Result<Api, TransportError> {
        let name = crate::verbs::LIBIBVERBS;
        // SAFETY: as in verbs::Verbs::load.
        let lib = unsafe { libloading::Library::new(name) }
            .map_err(|e| err(0, format!("{name} not loadable: {e}")))?;
        macro_rules! sym {
            ($n:literal) => {{
                // SAFETY: each type alias above matches the exported prototype in verbs.h.
                *unsafe { lib.get($n) }.map_err(|e| {
                    err(
                        0,
                        format!("{name} lacks {}: {e}", String::from_utf8_lossy($n)),
                    )
                })?
            }};
        }
        Ok(Api {
            get_device_list: sym!(b"ibv_get_device_list"),
            free_device_list: sym!(b"ibv_free_device_list"),
            get_device_name: sym!(b"ibv_get_device_name"),
            open_device: sym!(b"ibv_open_device"),
            close_device: sym!(b"ibv_close_device"),
            alloc_pd: sym!(b"ibv_alloc_pd"),
            dealloc_pd: sym!(b"ibv_dealloc_pd"),
            reg_mr: sym!(b"ibv_reg_mr"),
            dereg_mr: sym!(b"ibv_dereg_mr"),
            create_cq: sym!(b"ibv_create_cq"),
            destroy_cq: sym!(b"ibv_destroy_cq"),
            create_qp: sym!(b"ibv_create_qp"),
            destroy_qp: sym!(b"ibv_destroy_qp"),
            modify_qp: sym!(b"ibv_modify_qp"),
            query_gid: sym!(b"ibv_query_gid"),
            _lib: lib,
        })
    }

    /// Opens the named device.
    fn open(&self, device: &str) -> Result<*mut c_void, TransportError> {
        let mut n: c_int = 0;
        // SAFETY: valid out-pointer; the list is freed below on every path.
        let list = unsafe { (self.get_device_list)(&mut n) };
        if list.is_null() {
            return Err(err(
                0,
                format!(
                    "ibv_get_device_list failed: {}",
                    std::io::Error::last_os_error()
                ),
            ));
        }
        let mut found = std::ptr::null_mut();
        let mut names = Vec::new();
        for i in 0..usize::try_from(n).unwrap_or(0) {
            // SAFETY: the list holds n device pointers; names are NUL-terminated.
            let dev = unsafe { *list.add(i) };
            let name = unsafe { CStr::from_ptr((self.get_device_name)(dev)) }
                .to_string_lossy()
                .into_owned();
            if name == device {
                // SAFETY: dev is valid while the list is alive.
                found = unsafe { (self.open_device)(dev) };
            }
            names.push(name);
        }
        // SAFETY: list came from ibv_get_device_list; an opened context outlives it.
        unsafe { (self.free_device_list)(list) };
        if found.is_null() {
            return Err(err(
                0,
                format!(
                    "cannot open RDMA device {device}; verbs lists: {}",
                    names.join(", ")
                ),
            ));
        }
        Ok(found)
    }
}

/// Reads a function pointer stored at `off` bytes into `*base`.
///
/// SAFETY: `base` must point to a live structure with a function pointer of type `F` at `off`.
unsafe fn fn_at<F: Copy>(base: *mut c_void, off: usize) -> Option<F> {
    let p = (base as *const u8).add(off) as *const Option<F>;
    std::ptr::read(p)
}

fn put<T: Copy>(buf: &mut [u8], off: usize, v: T) {
    let n = std::mem::size_of::<T>();
    assert!(off + n <= buf.len());
    // SAFETY: bounds checked above; unaligned write of a plain value.
    unsafe { std::ptr::write_unaligned(buf.as_mut_ptr().add(off) as *mut T, v) }
}

/// wr_id of a send: top bit set, buffer index below.
const SEND_TAG: u64 = 1 << 63;

pub struct VerbsLink {
    api: Api,
    ctx: *mut c_void,
    pd: *mut c_void,
    cq: *mut c_void,
    mr: *mut c_void,
    lkey: u32,
    buf: Vec<u8>,
    cfg: VerbsLinkConfig,
    peers: Vec<u32>,
    qps: HashMap<u32, *mut c_void>,
    qp_peer: HashMap<u32, u32>,
    local: HashMap<u32, QpInfo>,
    free_send: Vec<usize>,
    poll_cq: PollCq,
    post_send: PostSend,
    post_recv: PostRecv,
}

// SAFETY: verbs objects may be used from any thread; the link is used by one thread at a time.
unsafe impl Send for VerbsLink {}

impl VerbsLink {
    /// Opens the device and creates everything, queue pairs in INIT with receives posted. Returns
    /// the link and, per peer, the [`QpInfo`] to hand to that peer.
    pub fn open(
        cfg: VerbsLinkConfig,
        peers: &[u32],
    ) -> Result<(VerbsLink, HashMap<u32, QpInfo>), TransportError> {
        if cfg.recv_depth < 2 || cfg.slot_size == 0 || cfg.send_bufs == 0 {
            return Err(err(
                0,
                "recv_depth must be >= 2 and slot_size, send_bufs > 0",
            ));
        }
        let api = Api::load()?;
        let ctx = api.open(&cfg.device)?;
        let mut link = VerbsLink {
            // SAFETY: ctx is an open ibv_context; the ops offsets are checked against verbs.h.
            poll_cq: unsafe { fn_at(ctx, CONTEXT_OPS_POLL_CQ) }
                .ok_or_else(|| err(0, "provider has no poll_cq"))?,
            post_send: unsafe { fn_at(ctx, CONTEXT_OPS_POST_SEND) }
                .ok_or_else(|| err(0, "provider has no post_send"))?,
            post_recv: unsafe { fn_at(ctx, CONTEXT_OPS_POST_RECV) }
                .ok_or_else(|| err(0, "provider has no post_recv"))?,
            api,
            ctx,
            pd: std::ptr::null_mut(),
            cq: std::ptr::null_mut(),
            mr: std::ptr::null_mut(),
            lkey: 0,
            buf: vec![0u8; (peers.len() * cfg.recv_depth as usize + cfg.send_bufs) * cfg.slot_size],
            peers: peers.to_vec(),
            qps: HashMap::new(),
            qp_peer: HashMap::new(),
            local: HashMap::new(),
            free_send: (0..cfg.send_bufs).collect(),
            cfg,
        };
        let infos = link.setup()?;
        Ok((link, infos))
    }

    fn setup(&mut self) -> Result<HashMap<u32, QpInfo>, TransportError> {
        // SAFETY (this block): every pointer passed is either returned by the library above or
        // points into buffers sized by the checked layout constants.
        unsafe {
            self.pd = (self.api.alloc_pd)(self.ctx);
            if self.pd.is_null() {
                return Err(err(
                    0,
                    format!("ibv_alloc_pd failed on {}", self.cfg.device),
                ));
            }
            self.mr = (self.api.reg_mr)(
                self.pd,
                self.buf.as_mut_ptr() as *mut c_void,
                self.buf.len(),
                ACCESS_LOCAL_WRITE,
            );
            if self.mr.is_null() {
                return Err(err(0, format!("ibv_reg_mr of {} bytes failed: {}; raise the locked-memory limit (ulimit -l)", self.buf.len(), std::io::Error::last_os_error())));
            }
            self.lkey = std::ptr::read_unaligned((self.mr as *const u8).add(MR_LKEY) as *const u32);
            let cqe =
                (self.peers.len() * self.cfg.recv_depth as usize + self.cfg.send_bufs) as c_int;
            self.cq =
                (self.api.create_cq)(self.ctx, cqe, std::ptr::null_mut(), std::ptr::null_mut(), 0);
            if self.cq.is_null() {
                return Err(err(0, format!("ibv_create_cq with {cqe} entries failed")));
            }
            let mut gid = [0u8; 16];
            if (self.api.query_gid)(
                self.ctx,
                self.cfg.port,
                c_int::from(self.cfg.gid_index),
                &mut gid,
            ) != 0
            {
                return Err(err(
                    0,
                    format!(
                        "ibv_query_gid {}:{} index {} failed",
                        self.cfg.device, self.cfg.port, self.cfg.gid_index
                    ),
                ));
            }
            let mut infos = HashMap::new();
            for (pi, &peer) in self.peers.clone().iter().enumerate() {
                let mut init = [0u8; QP_INIT_ATTR_SIZE];
                put(&mut init, QP_INIT_ATTR_SEND_CQ, self.cq);
                put(&mut init, QP_INIT_ATTR_RECV_CQ, self.cq);
                // struct ibv_qp_cap: max_send_wr, max_recv_wr, max_send_sge, max_recv_sge, max_inline
                put(&mut init, QP_INIT_ATTR_CAP, self.cfg.send_bufs as u32);
                put(&mut init, QP_INIT_ATTR_CAP + 4, self.cfg.recv_depth);
                put(&mut init, QP_INIT_ATTR_CAP + 8, 1u32);
                put(&mut init, QP_INIT_ATTR_CAP + 12, 1u32);
                put(&mut init, QP_INIT_ATTR_QP_TYPE, QPT_RC);
                put(&mut init, QP_INIT_ATTR_SQ_SIG_ALL, 1 as c_int);
                let qp = (self.api.create_qp)(self.pd, init.as_mut_ptr());
                if qp.is_null() {
                    return Err(err(
                        peer,
                        format!("ibv_create_qp failed: {}", std::io::Error::last_os_error()),
                    ));
                }
                self.qps.insert(peer, qp);
                let qpn = std::ptr::read_unaligned((qp as *const u8).add(QP_QP_NUM) as *const u32);
                self.qp_peer.insert(qpn, peer);
                let mut a = [0u8; QP_ATTR_SIZE];
                put(&mut a, QP_ATTR_QP_STATE, QPS_INIT);
                put(&mut a, QP_ATTR_PKEY_INDEX, 0u16);
                put(&mut a, QP_ATTR_PORT_NUM, self.cfg.port);
                put(&mut a, QP_ATTR_QP_ACCESS_FLAGS, 0u32);
                let mask = QP_STATE | QP_PKEY_INDEX | QP_PORT | QP_ACCESS_FLAGS;
                self.api.modify_qp_to(qp, &mut a, mask, peer, "INIT")?;
                for slot in 0..self.cfg.recv_depth {
                    self.post_recv_slot(pi, peer, slot)?;
                }
                let psn = (std::process::id().wrapping_mul(2654435761) ^ qpn) & 0xff_ffff;
                let info = QpInfo {
                    qpn,
                    psn,
                    lid: self.cfg.lid,
                    gid,
                };
                self.local.insert(peer, info);
                infos.insert(peer, info);
            }
            Ok(infos)
        }
    }

    fn recv_offset(&self, peer_index: usize, slot: u32) -> usize {
        (peer_index * self.cfg.recv_depth as usize + slot as usize) * self.cfg.slot_size
    }

    fn send_offset(&self, i: usize) -> usize {
        (self.peers.len() * self.cfg.recv_depth as usize + i) * self.cfg.slot_size
    }

    fn peer_index(&self, peer: u32) -> Result<usize, TransportError> {
        self.peers
            .iter()
            .position(|p| *p == peer)
            .ok_or(TransportError::NoLink { peer })
    }

    fn post_recv_slot(
        &mut self,
        peer_index: usize,
        peer: u32,
        slot: u32,
    ) -> Result<(), TransportError> {
        let qp = *self.qps.get(&peer).ok_or(TransportError::NoLink { peer })?;
        let off = self.recv_offset(peer_index, slot);
        let mut sge = Sge {
            addr: self.buf.as_ptr() as u64 + off as u64,
            length: self.cfg.slot_size as u32,
            lkey: self.lkey,
        };
        let mut wr = RecvWr {
            wr_id: (u64::from(peer) << 32) | u64::from(slot),
            next: std::ptr::null_mut(),
            sg_list: &mut sge,
            num_sge: 1,
        };
        let mut bad = std::ptr::null_mut();
        // SAFETY: qp is live; wr and sge live across the call (the provider copies them).
        let rc = unsafe { (self.post_recv)(qp, &mut wr, &mut bad) };
        if rc != 0 {
            return Err(err(peer, format!("ibv_post_recv failed: error {rc}")));
        }
        Ok(())
    }

    /// Moves every queue pair to RTR then RTS against the peers' infos.
    pub fn connect(&mut self, remote: &HashMap<u32, QpInfo>) -> Result<(), TransportError> {
        for &peer in &self.peers {
            let r = remote
                .get(&peer)
                .ok_or_else(|| err(peer, "no queue-pair info received from this peer"))?;
            let qp = self.qps[&peer];
            let local = self.local[&peer];
            let mut a = [0u8; QP_ATTR_SIZE];
            put(&mut a, QP_ATTR_QP_STATE, QPS_RTR);
            put(&mut a, QP_ATTR_PATH_MTU, self.cfg.mtu_enum);
            put(&mut a, QP_ATTR_DEST_QP_NUM, r.qpn);
            put(&mut a, QP_ATTR_RQ_PSN, r.psn);
            put(&mut a, QP_ATTR_MAX_DEST_RD_ATOMIC, 1u8);
            put(&mut a, QP_ATTR_MIN_RNR_TIMER, 12u8);
            put(&mut a, QP_ATTR_AH_DLID, r.lid);
            put(&mut a, QP_ATTR_AH_SL, 0u8);
            put(&mut a, QP_ATTR_AH_PORT_NUM, self.cfg.port);
            // RoCE needs the GRH; on IB it is harmless within a subnet and needed across subnets.
            put(&mut a, QP_ATTR_AH_IS_GLOBAL, 1u8);
            put(&mut a, QP_ATTR_AH_GRH_DGID, r.gid);
            put(&mut a, QP_ATTR_AH_GRH_SGID_INDEX, self.cfg.gid_index as u8);
            put(&mut a, QP_ATTR_AH_GRH_HOP_LIMIT, 64u8);
            let mask = QP_STATE
                | QP_AV
                | QP_PATH_MTU
                | QP_DEST_QPN
                | QP_RQ_PSN
                | QP_MAX_DEST_RD_ATOMIC
                | QP_MIN_RNR_TIMER;
            // SAFETY: qp is live.
            unsafe { self.api.modify_qp_to(qp, &mut a, mask, peer, "RTR")? };
            let mut a = [0u8; QP_ATTR_SIZE];
            put(&mut a, QP_ATTR_QP_STATE, QPS_RTS);
            put(&mut a, QP_ATTR_TIMEOUT, 14u8);
            put(&mut a, QP_ATTR_RETRY_CNT, 7u8);
            put(&mut a, QP_ATTR_RNR_RETRY, 7u8);
            put(&mut a, QP_ATTR_SQ_PSN, local.psn);
            put(&mut a, QP_ATTR_MAX_RD_ATOMIC, 1u8);
            let mask = QP_STATE
                | QP_TIMEOUT
                | QP_RETRY_CNT
                | QP_RNR_RETRY
                | QP_SQ_PSN
                | QP_MAX_QP_RD_ATOMIC;
            // SAFETY: as above.
            unsafe { self.api.modify_qp_to(qp, &mut a, mask, peer, "RTS")? };
        }
        Ok(())
    }

    /// [`VerbsLink::open`] + exchange of queue-pair infos over `oob` (e.g. the TCP tree links to
    /// the same peers) + [`VerbsLink::connect`].
    pub fn establish(
        cfg: VerbsLinkConfig,
        peers: &[u32],
        oob: &mut dyn Transport,
    ) -> Result<VerbsLink, TransportError> {
        let (mut link, infos) = Self::open(cfg, peers)?;
        for (&peer, info) in &infos {
            oob.send(peer, &info.encode())?;
        }
        let mut remote = HashMap::new();
        while remote.len() < peers.len() {
            let (from, bytes) = oob.recv()?;
            let info = QpInfo::decode(&bytes)
                .ok_or_else(|| err(from, "sent something that is not queue-pair info"))?;
            remote.insert(from, info);
        }
        link.connect(&remote)?;
        Ok(link)
    }
}

impl RdmaLink for VerbsLink {
    fn slot_size(&self) -> usize {
        self.cfg.slot_size
    }

    fn recv_depth(&self) -> u32 {
        self.cfg.recv_depth
    }

    fn peers(&self) -> Vec<u32> {
        self.peers.clone()
    }

    fn send_capacity(&self) -> usize {
        self.free_send.len()
    }

    fn post_send(&mut self, peer: u32, data: &[u8]) -> Result<(), TransportError> {
        if data.len() > self.cfg.slot_size {
            return Err(err(peer, "send larger than a slot"));
        }
        let qp = *self.qps.get(&peer).ok_or(TransportError::NoLink { peer })?;
        let i = self
            .free_send
            .pop()
            .ok_or_else(|| err(peer, "no free send buffer"))?;
        let off = self.send_offset(i);
        self.buf[off..off + data.len()].copy_from_slice(data);
        let mut sge = Sge {
            addr: self.buf.as_ptr() as u64 + off as u64,
            length: data.len() as u32,
            lkey: self.lkey,
        };
        let mut wr = [0u8; SEND_WR_SIZE];
        put(&mut wr, SEND_WR_WR_ID, SEND_TAG | i as u64);
        put(&mut wr, SEND_WR_NEXT, std::ptr::null_mut::<u8>());
        put(&mut wr, SEND_WR_SG_LIST, &mut sge as *mut Sge);
        put(&mut wr, SEND_WR_NUM_SGE, 1 as c_int);
        put(&mut wr, SEND_WR_OPCODE, WR_SEND);
        put(&mut wr, SEND_WR_SEND_FLAGS, SEND_SIGNALED);
        let mut bad = std::ptr::null_mut();
        // SAFETY: qp is live; wr has the size of struct ibv_send_wr and sge outlives the call.
        let rc = unsafe { (self.post_send)(qp, wr.as_mut_ptr(), &mut bad) };
        if rc != 0 {
            self.free_send.push(i);
            return Err(err(peer, format!("ibv_post_send failed: error {rc}")));
        }
        Ok(())
    }

    fn read_slot(&self, peer: u32, slot: u32, len: usize) -> Vec<u8> {
        let Ok(pi) = self.peer_index(peer) else {
            return Vec::new();
        };
        let off = self.recv_offset(pi, slot);
        self.buf[off..off + len.min(self.cfg.slot_size)].to_vec()
    }

    fn repost_recv(&mut self, peer: u32, slot: u32) -> Result<(), TransportError> {
        let pi = self.peer_index(peer)?;
        self.post_recv_slot(pi, peer, slot)
    }

    fn poll(&mut self, timeout: Duration) -> Result<Vec<Completion>, TransportError> {
        let deadline = Instant::now() + timeout;
        let mut wcs = [Wc::default(); 16];
        loop {
            // SAFETY: cq is live; wcs has room for 16 entries of struct ibv_wc.
            let n = unsafe { (self.poll_cq)(self.cq, wcs.len() as c_int, wcs.as_mut_ptr()) };
            if n < 0 {
                return Err(err(0, format!("ibv_poll_cq failed: {n}")));
            }
            if n > 0 {
                let mut out = Vec::with_capacity(n as usize);
                for wc in &wcs[..n as usize] {
                    let peer = self
                        .qp_peer
                        .get(&wc.qp_num)
                        .copied()
                        .unwrap_or((wc.wr_id >> 32) as u32 & 0x7fff_ffff);
                    if wc.wr_id & SEND_TAG != 0 {
                        self.free_send.push((wc.wr_id & !SEND_TAG) as usize);
                    }
                    if wc.status != 0 {
                        out.push(Completion::Failed {
                            peer,
                            why: format!(
                                "work completion status {} (vendor error {:#x})",
                                wc.status, wc.vendor_err
                            ),
                        });
                    } else if wc.opcode & WC_RECV != 0 {
                        out.push(Completion::Recv {
                            peer,
                            slot: wc.wr_id as u32,
                            len: wc.byte_len as usize,
                        });
                    } else {
                        out.push(Completion::Sent { peer });
                    }
                }
                return Ok(out);
            }
            if Instant::now() >= deadline {
                return Ok(Vec::new());
            }
            // Launch-time traffic is sparse: a short sleep beats burning a core the ranks need.
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

impl Drop for VerbsLink {
    fn drop(&mut self) {
        // SAFETY: each object was created above and is destroyed once, dependents first.
        unsafe {
            for qp in self.qps.values() {
                (self.api.destroy_qp)(*qp);
            }
            if !self.cq.is_null() {
                (self.api.destroy_cq)(self.cq);
            }
            if !self.mr.is_null() {
                (self.api.dereg_mr)(self.mr);
            }
            if !self.pd.is_null() {
                (self.api.dealloc_pd)(self.pd);
            }
            (self.api.close_device)(self.ctx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qp_info_roundtrip() {
        let i = QpInfo {
            qpn: 0x1234,
            psn: 0xabcdef,
            lid: 7,
            gid: [9; 16],
        };
        assert_eq!(QpInfo::decode(&i.encode()), Some(i));
        assert_eq!(QpInfo::decode(&i.encode()[1..]), None);
        assert_eq!(QpInfo::decode(&[0u8; QpInfo::LEN]), None);
    }

    #[test]
    fn rust_side_structs() {
        assert_eq!(std::mem::size_of::<Sge>(), 16);
        assert_eq!(std::mem::size_of::<RecvWr>(), 32);
        assert_eq!(std::mem::size_of::<Wc>(), WC_SIZE);
        assert_eq!(std::mem::offset_of!(Wc, byte_len), 20);
        assert_eq!(std::mem::offset_of!(Wc, qp_num), 28);
    }

    #[test]
    fn open_without_devices_fails_with_a_reason() {
        let crate::verbs::VerbsStatus::Unavailable { reason } = crate::verbs::probe().status else {
            eprintln!("SKIPPED: this host has RDMA devices; open() is exercised by real use");
            return;
        };
        let cfg = VerbsLinkConfig {
            device: "mlx5_0".into(),
            port: 1,
            gid_index: 0,
            lid: 0,
            mtu_enum: 3,
            slot_size: 4096,
            recv_depth: 4,
            send_bufs: 4,
        };
        let e = VerbsLink::open(cfg, &[1])
            .err()
            .expect("no device, so open must fail");
        let msg = e.to_string();
        assert!(
            msg.contains("ibv_get_device_list failed")
                || msg.contains("not loadable")
                || msg.contains("cannot open"),
            "{msg} (probe: {reason})"
        );
        let bad = VerbsLinkConfig {
            device: "x".into(),
            port: 1,
            gid_index: 0,
            lid: 0,
            mtu_enum: 3,
            slot_size: 0,
            recv_depth: 1,
            send_bufs: 0,
        };
        assert!(VerbsLink::open(bad, &[1])
            .err()
            .unwrap()
            .to_string()
            .contains("recv_depth must be >= 2"));
    }

    /// Compiles a C program against the installed verbs.h and compares every offset this module
    /// uses. Skipped only when verbs.h or a C compiler is missing (then nothing here can be checked).
    #[test]
    fn layout_matches_verbs_h() {
        if !std::path::Path::new("/usr/include/infiniband/verbs.h").exists() {
            eprintln!("SKIPPED: /usr/include/infiniband/verbs.h not installed (libibverbs-dev)");
            return;
        }
        let checks: &[(&str, usize)] = &[
            (
                "offsetof(struct ibv_context, ops.poll_cq)",
                CONTEXT_OPS_POLL_CQ,
            ),
            (
                "offsetof(struct ibv_context, ops.post_send)",
                CONTEXT_OPS_POST_SEND,
            ),
            (
                "offsetof(struct ibv_context, ops.post_recv)",
                CONTEXT_OPS_POST_RECV,
            ),
            ("offsetof(struct ibv_qp, context)", QP_CONTEXT),
            ("offsetof(struct ibv_qp, qp_num)", QP_QP_NUM),
            ("offsetof(struct ibv_mr, lkey)", MR_LKEY),
            ("sizeof(struct ibv_qp_init_attr)", QP_INIT_ATTR_SIZE),
            (
                "offsetof(struct ibv_qp_init_attr, send_cq)",
                QP_INIT_ATTR_SEND_CQ,
            ),
            (
                "offsetof(struct ibv_qp_init_attr, recv_cq)",
                QP_INIT_ATTR_RECV_CQ,
            ),
            ("offsetof(struct ibv_qp_init_attr, cap)", QP_INIT_ATTR_CAP),
            (
                "offsetof(struct ibv_qp_init_attr, cap.max_recv_wr)",
                QP_INIT_ATTR_CAP + 4,
            ),
            (
                "offsetof(struct ibv_qp_init_attr, cap.max_recv_sge)",
                QP_INIT_ATTR_CAP + 12,
            ),
            (
                "offsetof(struct ibv_qp_init_attr, qp_type)",
                QP_INIT_ATTR_QP_TYPE,
            ),
            (
                "offsetof(struct ibv_qp_init_attr, sq_sig_all)",
                QP_INIT_ATTR_SQ_SIG_ALL,
            ),
            ("sizeof(struct ibv_qp_attr)", QP_ATTR_SIZE),
            ("offsetof(struct ibv_qp_attr, qp_state)", QP_ATTR_QP_STATE),
            ("offsetof(struct ibv_qp_attr, path_mtu)", QP_ATTR_PATH_MTU),
            ("offsetof(struct ibv_qp_attr, rq_psn)", QP_ATTR_RQ_PSN),
            ("offsetof(struct ibv_qp_attr, sq_psn)", QP_ATTR_SQ_PSN),
            (
                "offsetof(struct ibv_qp_attr, dest_qp_num)",
                QP_ATTR_DEST_QP_NUM,
            ),
            (
                "offsetof(struct ibv_qp_attr, qp_access_flags)",
                QP_ATTR_QP_ACCESS_FLAGS,
            ),
            (
                "offsetof(struct ibv_qp_attr, ah_attr.grh.dgid)",
                QP_ATTR_AH_GRH_DGID,
            ),
            (
                "offsetof(struct ibv_qp_attr, ah_attr.grh.sgid_index)",
                QP_ATTR_AH_GRH_SGID_INDEX,
            ),
            (
                "offsetof(struct ibv_qp_attr, ah_attr.grh.hop_limit)",
                QP_ATTR_AH_GRH_HOP_LIMIT,
            ),
            (
                "offsetof(struct ibv_qp_attr, ah_attr.dlid)",
                QP_ATTR_AH_DLID,
            ),
            ("offsetof(struct ibv_qp_attr, ah_attr.sl)", QP_ATTR_AH_SL),
            (
                "offsetof(struct ibv_qp_attr, ah_attr.is_global)",
                QP_ATTR_AH_IS_GLOBAL,
            ),
            (
                "offsetof(struct ibv_qp_attr, ah_attr.port_num)",
                QP_ATTR_AH_PORT_NUM,
            ),
            (
                "offsetof(struct ibv_qp_attr, pkey_index)",
                QP_ATTR_PKEY_INDEX,
            ),
            (
                "offsetof(struct ibv_qp_attr, max_rd_atomic)",
                QP_ATTR_MAX_RD_ATOMIC,
            ),
            (
                "offsetof(struct ibv_qp_attr, max_dest_rd_atomic)",
                QP_ATTR_MAX_DEST_RD_ATOMIC,
            ),
            (
                "offsetof(struct ibv_qp_attr, min_rnr_timer)",
                QP_ATTR_MIN_RNR_TIMER,
            ),
            ("offsetof(struct ibv_qp_attr, port_num)", QP_ATTR_PORT_NUM),
            ("offsetof(struct ibv_qp_attr, timeout)", QP_ATTR_TIMEOUT),
            ("offsetof(struct ibv_qp_attr, retry_cnt)", QP_ATTR_RETRY_CNT),
            ("offsetof(struct ibv_qp_attr, rnr_retry)", QP_ATTR_RNR_RETRY),
            ("sizeof(struct ibv_send_wr)", SEND_WR_SIZE),
            ("offsetof(struct ibv_send_wr, wr_id)", SEND_WR_WR_ID),
            ("offsetof(struct ibv_send_wr, next)", SEND_WR_NEXT),
            ("offsetof(struct ibv_send_wr, sg_list)", SEND_WR_SG_LIST),
            ("offsetof(struct ibv_send_wr, num_sge)", SEND_WR_NUM_SGE),
            ("offsetof(struct ibv_send_wr, opcode)", SEND_WR_OPCODE),
            (
                "offsetof(struct ibv_send_wr, send_flags)",
                SEND_WR_SEND_FLAGS,
            ),
            ("sizeof(struct ibv_recv_wr)", std::mem::size_of::<RecvWr>()),
            ("sizeof(struct ibv_sge)", std::mem::size_of::<Sge>()),
            ("sizeof(struct ibv_wc)", std::mem::size_of::<Wc>()),
            (
                "offsetof(struct ibv_wc, status)",
                std::mem::offset_of!(Wc, status),
            ),
            (
                "offsetof(struct ibv_wc, opcode)",
                std::mem::offset_of!(Wc, opcode),
            ),
            (
                "offsetof(struct ibv_wc, byte_len)",
                std::mem::offset_of!(Wc, byte_len),
            ),
            (
                "offsetof(struct ibv_wc, qp_num)",
                std::mem::offset_of!(Wc, qp_num),
            ),
            ("(size_t)IBV_QPT_RC", QPT_RC as usize),
            ("(size_t)IBV_WR_SEND", WR_SEND as usize),
            ("(size_t)IBV_SEND_SIGNALED", SEND_SIGNALED as usize),
            ("(size_t)IBV_WC_SEND", WC_SEND as usize),
            ("(size_t)IBV_WC_RECV", WC_RECV as usize),
            ("(size_t)IBV_QPS_INIT", QPS_INIT as usize),
            ("(size_t)IBV_QPS_RTR", QPS_RTR as usize),
            ("(size_t)IBV_QPS_RTS", QPS_RTS as usize),
            (
                "(size_t)IBV_ACCESS_LOCAL_WRITE",
                ACCESS_LOCAL_WRITE as usize,
            ),
            ("(size_t)IBV_QP_STATE", QP_STATE as usize),
            ("(size_t)IBV_QP_ACCESS_FLAGS", QP_ACCESS_FLAGS as usize),
            ("(size_t)IBV_QP_PKEY_INDEX", QP_PKEY_INDEX as usize),
            ("(size_t)IBV_QP_PORT", QP_PORT as usize),
            ("(size_t)IBV_QP_AV", QP_AV as usize),
            ("(size_t)IBV_QP_PATH_MTU", QP_PATH_MTU as usize),
            ("(size_t)IBV_QP_TIMEOUT", QP_TIMEOUT as usize),
            ("(size_t)IBV_QP_RETRY_CNT", QP_RETRY_CNT as usize),
            ("(size_t)IBV_QP_RNR_RETRY", QP_RNR_RETRY as usize),
            ("(size_t)IBV_QP_RQ_PSN", QP_RQ_PSN as usize),
            (
                "(size_t)IBV_QP_MAX_QP_RD_ATOMIC",
                QP_MAX_QP_RD_ATOMIC as usize,
            ),
            ("(size_t)IBV_QP_MIN_RNR_TIMER", QP_MIN_RNR_TIMER as usize),
            ("(size_t)IBV_QP_SQ_PSN", QP_SQ_PSN as usize),
            (
                "(size_t)IBV_QP_MAX_DEST_RD_ATOMIC",
                QP_MAX_DEST_RD_ATOMIC as usize,
            ),
            ("(size_t)IBV_QP_DEST_QPN", QP_DEST_QPN as usize),
        ];
        let mut src = String::from("#include <infiniband/verbs.h>\n#include <stddef.h>\n#include <stdio.h>\nint main(void) {\n");
        for (expr, _) in checks {
            src.push_str(&format!("    printf(\"%zu\\n\", (size_t)({expr}));\n"));
        }
        src.push_str("    return 0;\n}\n");
        let dir = tempfile::tempdir().unwrap();
        let c = dir.path().join("layout.c");
        let exe = dir.path().join("layout");
        std::fs::write(&c, src).unwrap();
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        let Ok(out) = std::process::Command::new(&cc)
            .arg("-o")
            .arg(&exe)
            .arg(&c)
            .output()
        else {
            eprintln!("SKIPPED: no C compiler ({cc})");
            return;
        };
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = std::process::Command::new(&exe).output().unwrap();
        let got: Vec<usize> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| l.parse().unwrap())
            .collect();
        for ((expr, want), got) in checks.iter().zip(got) {
            assert_eq!(got, *want, "{expr}");
        }
    }
}
