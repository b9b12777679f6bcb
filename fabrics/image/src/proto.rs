//! The rank ↔ daemon image wire: pure framing, no I/O.
//!
//! Every frame is an 8-byte header and a payload (integers little-endian):
//!
//! | bytes | field                                                   |
//! |-------|---------------------------------------------------------|
//! | 2     | magic `RI`                                              |
//! | 1     | version ([`VERSION`])                                   |
//! | 1     | kind ([`Kind`])                                         |
//! | 4     | `len`: payload bytes after the header                   |
//! | len   | payload, by kind (below)                                |
//!
//! Payloads: `Save` epoch u64, image bytes; `SaveAck` status i32, epoch u64; `Load` scope u8,
//! rank u32; `LoadReply` status i32, epoch u64, image bytes; `Request` epoch u64.
//!
//! The socket is a byte stream, so [`Decoder`] takes bytes as they come and returns whole frames.
//! A frame longer than the decoder's limit is not buffered: the decoder reports it
//! ([`Event::Oversize`]) and skips its payload, so a rank cannot make its daemon hold more than
//! the limit, and the stream stays in step.

/// Protocol version in every header; a peer speaking another one is refused.
pub const VERSION: u8 = 1;
pub const MAGIC: [u8; 2] = *b"RI";
pub const HEADER: usize = 8;
/// Largest payload a frame can describe.
pub const MAX_LEN: u32 = u32::MAX;

/// Status codes in `SaveAck` and `LoadReply`.
pub mod status {
    pub const OK: i32 = 0;
    /// The image exceeds the job's `--image-max`; it was not saved.
    pub const TOO_BIG: i32 = 1;
    /// No image to load.
    pub const NONE: i32 = 2;
    /// The request made no sense (an unknown scope, a rank outside the job).
    pub const INVALID: i32 = 3;
}

/// What to load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The rank's image of the latest epoch every rank saved.
    Job,
    /// The rank's own latest image.
    Rank,
    /// Another rank's latest image.
    Other(u32),
}

impl Scope {
    fn code(self) -> (u8, u32) {
        match self {
            Scope::Job => (0, 0),
            Scope::Rank => (1, 0),
            Scope::Other(r) => (2, r),
        }
    }

    fn from_code(code: u8, rank: u32) -> Option<Scope> {
        match code {
            0 => Some(Scope::Job),
            1 => Some(Scope::Rank),
            2 => Some(Scope::Other(rank)),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Save = 1,
    SaveAck = 2,
    Load = 3,
    LoadReply = 4,
    Request = 5,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Save,
            2 => Kind::SaveAck,
            3 => Kind::Load,
            4 => Kind::LoadReply,
            5 => Kind::Request,
            _ => return None,
        })
    }
}

/// One message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// Rank → daemon: keep this image, tagged with the application's epoch.
    Save { epoch: u64, data: Vec<u8> },
    /// Daemon → rank: the answer to a `Save`.
    SaveAck { status: i32, epoch: u64 },
    /// Rank → daemon: send me an image.
    Load { scope: Scope },
    /// Daemon → rank: the answer to a `Load` (`status::NONE`: empty data).
    LoadReply { status: i32, epoch: u64, data: Vec<u8> },
    /// Daemon → rank: the runtime asks for an image (seen by `rli_poll`); `epoch` is the
    /// runtime's number for this round of requests.
    Request { epoch: u64 },
}

impl Frame {
    pub fn kind(&self) -> Kind {
        match self {
            Frame::Save { .. } => Kind::Save,
            Frame::SaveAck { .. } => Kind::SaveAck,
            Frame::Load { .. } => Kind::Load,
            Frame::LoadReply { .. } => Kind::LoadReply,
            Frame::Request { .. } => Kind::Request,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("not an image frame (magic {0:02x?}); is RLAUNCH_IMAGE_FD another descriptor?")]
    BadMagic([u8; 2]),
    #[error("image protocol version {0} (this side speaks {VERSION}); use the librlaunch_image of the same rlaunch")]
    Version(u8),
    #[error("unknown image frame kind {0}")]
    UnknownKind(u8),
    /// The payload is shorter than its kind needs.
    #[error("{kind:?} frame of {len} bytes is too short")]
    Short { kind: Kind, len: usize },
    #[error("unknown load scope {0}")]
    BadScope(u8),
    /// More than [`MAX_LEN`] bytes to encode.
    #[error("an image frame of {0} bytes exceeds the {MAX_LEN}-byte limit of the protocol")]
    TooLong(usize),
}

/// The header of a frame of `kind` with `len` payload bytes.
pub fn header(kind: Kind, len: usize) -> Result<[u8; HEADER], ProtoError> {
    let len = u32::try_from(len).map_err(|_| ProtoError::TooLong(len))?;
    let mut h = [0u8; HEADER];
    h[..2].copy_from_slice(&MAGIC);
    h[2] = VERSION;
    h[3] = kind as u8;
    h[4..].copy_from_slice(&len.to_le_bytes());
    Ok(h)
}

/// The header and the fixed part of a `Save` of `len` image bytes: the image follows, so a
/// large one is written from where it is instead of being copied into a frame.
pub fn save_prefix(epoch: u64, len: usize) -> Result<[u8; HEADER + 8], ProtoError> {
    let mut p = [0u8; HEADER + 8];
    p[..HEADER].copy_from_slice(&header(Kind::Save, len.checked_add(8).ok_or(ProtoError::TooLong(len))?)?);
    p[HEADER..].copy_from_slice(&epoch.to_le_bytes());
    Ok(p)
}

/// The header and fixed part of a `LoadReply` carrying `len` image bytes (see [`save_prefix`]).
pub fn reply_prefix(status: i32, epoch: u64, len: usize) -> Result<[u8; HEADER + 12], ProtoError> {
    let mut p = [0u8; HEADER + 12];
    p[..HEADER].copy_from_slice(&header(Kind::LoadReply, len.checked_add(12).ok_or(ProtoError::TooLong(len))?)?);
    p[HEADER..HEADER + 4].copy_from_slice(&status.to_le_bytes());
    p[HEADER + 4..].copy_from_slice(&epoch.to_le_bytes());
    Ok(p)
}

/// The whole frame as bytes.
pub fn encode(f: &Frame) -> Result<Vec<u8>, ProtoError> {
    let mut body = Vec::new();
    match f {
        Frame::Save { epoch, data } => {
            let mut out = save_prefix(*epoch, data.len())?.to_vec();
            out.extend_from_slice(data);
            return Ok(out);
        }
        Frame::LoadReply { status, epoch, data } => {
            let mut out = reply_prefix(*status, *epoch, data.len())?.to_vec();
            out.extend_from_slice(data);
            return Ok(out);
        }
        Frame::SaveAck { status, epoch } => {
            body.extend_from_slice(&status.to_le_bytes());
            body.extend_from_slice(&epoch.to_le_bytes());
        }
        Frame::Load { scope } => {
            let (code, rank) = scope.code();
            body.push(code);
            body.extend_from_slice(&rank.to_le_bytes());
        }
        Frame::Request { epoch } => body.extend_from_slice(&epoch.to_le_bytes()),
    }
    let mut out = header(f.kind(), body.len())?.to_vec();
    out.extend_from_slice(&body);
    Ok(out)
}

fn parse(kind: Kind, mut p: Vec<u8>) -> Result<Frame, ProtoError> {
    let short = |need: usize, p: &[u8]| if p.len() < need { Err(ProtoError::Short { kind, len: p.len() }) } else { Ok(()) };
    let u64_at = |p: &[u8], i: usize| u64::from_le_bytes(p[i..i + 8].try_into().expect("8 bytes"));
    let i32_at = |p: &[u8], i: usize| i32::from_le_bytes(p[i..i + 4].try_into().expect("4 bytes"));
    Ok(match kind {
        Kind::Save => {
            short(8, &p)?;
            let epoch = u64_at(&p, 0);
            p.drain(..8);
            Frame::Save { epoch, data: p }
        }
        Kind::SaveAck => {
            short(12, &p)?;
            Frame::SaveAck { status: i32_at(&p, 0), epoch: u64_at(&p, 4) }
        }
        Kind::Load => {
            short(5, &p)?;
            let rank = u32::from_le_bytes(p[1..5].try_into().expect("4 bytes"));
            Frame::Load { scope: Scope::from_code(p[0], rank).ok_or(ProtoError::BadScope(p[0]))? }
        }
        Kind::LoadReply => {
            short(12, &p)?;
            let (status, epoch) = (i32_at(&p, 0), u64_at(&p, 4));
            p.drain(..12);
            Frame::LoadReply { status, epoch, data: p }
        }
        Kind::Request => {
            short(8, &p)?;
            Frame::Request { epoch: u64_at(&p, 0) }
        }
    })
}

/// What the decoder found in the bytes given so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Frame(Frame),
    /// A frame of `len` payload bytes, over the decoder's limit: its payload is skipped.
    Oversize { kind: Kind, len: u32 },
}

/// Incremental decoder for one direction of one socket.
#[derive(Debug)]
pub struct Decoder {
    limit: u32,
    buf: Vec<u8>,
    /// Payload bytes still to throw away (an oversize frame).
    skip: u64,
    failed: Option<ProtoError>,
}

impl Decoder {
    /// `limit`: the largest payload kept.
    pub fn new(limit: u32) -> Decoder {
        Decoder { limit, buf: Vec::new(), skip: 0, failed: None }
    }

    /// Takes `bytes` and returns the events they complete. An error is final: the stream cannot
    /// be resynchronised, and every later call returns it again.
    pub fn push(&mut self, mut bytes: &[u8]) -> Result<Vec<Event>, ProtoError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let mut out = Vec::new();
        loop {
            if self.skip > 0 {
                let n = (self.skip as usize).min(bytes.len());
                self.skip -= n as u64;
                bytes = &bytes[n..];
                if self.skip > 0 || bytes.is_empty() {
                    return Ok(out);
                }
            }
            // Whole headers are taken straight from `bytes` when nothing is buffered.
            let need_header = HEADER.saturating_sub(self.buf.len());
            if self.buf.len() < HEADER {
                let n = need_header.min(bytes.len());
                self.buf.extend_from_slice(&bytes[..n]);
                bytes = &bytes[n..];
                if self.buf.len() < HEADER {
                    return Ok(out);
                }
                match self.check_header() {
                    Ok(Some(ev)) => {
                        out.push(ev);
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        self.failed = Some(e.clone());
                        return Err(e);
                    }
                }
            }
            let (kind, len) = self.header_fields();
            let have = self.buf.len() - HEADER;
            let n = (len as usize - have).min(bytes.len());
            self.buf.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.buf.len() - HEADER < len as usize {
                return Ok(out);
            }
            let mut frame = std::mem::take(&mut self.buf);
            frame.drain(..HEADER);
            match parse(kind, frame) {
                Ok(f) => out.push(Event::Frame(f)),
                Err(e) => {
                    self.failed = Some(e.clone());
                    return Err(e);
                }
            }
            if bytes.is_empty() {
                return Ok(out);
            }
        }
    }

    fn header_fields(&self) -> (Kind, u32) {
        let kind = Kind::from_u8(self.buf[3]).expect("checked with the header");
        (kind, u32::from_le_bytes(self.buf[4..8].try_into().expect("4 bytes")))
    }

    /// A complete header in `buf`: an oversize event (and skipping), or room for the payload.
    fn check_header(&mut self) -> Result<Option<Event>, ProtoError> {
        let magic = [self.buf[0], self.buf[1]];
        if magic != MAGIC {
            return Err(ProtoError::BadMagic(magic));
        }
        if self.buf[2] != VERSION {
            return Err(ProtoError::Version(self.buf[2]));
        }
        let kind = Kind::from_u8(self.buf[3]).ok_or(ProtoError::UnknownKind(self.buf[3]))?;
        let len = u32::from_le_bytes(self.buf[4..8].try_into().expect("4 bytes"));
        if len > self.limit {
            self.buf.clear();
            self.skip = len as u64;
            return Ok(Some(Event::Oversize { kind, len }));
        }
        // Announced and within the limit: one allocation for the whole payload.
        self.buf.reserve(len as usize);
        Ok(None)
    }

    /// Whether a frame is partly read (a peer closing now cut it short).
    pub fn in_frame(&self) -> bool {
        !self.buf.is_empty() || self.skip > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frames() -> Vec<Frame> {
        vec![
            Frame::Save { epoch: 7, data: b"state".to_vec() },
            Frame::SaveAck { status: status::TOO_BIG, epoch: 7 },
            Frame::Load { scope: Scope::Job },
            Frame::Load { scope: Scope::Other(12) },
            Frame::LoadReply { status: status::NONE, epoch: 0, data: Vec::new() },
            Frame::LoadReply { status: status::OK, epoch: u64::MAX, data: vec![0; 1000] },
            Frame::Request { epoch: 3 },
        ]
    }

    fn decode_all(d: &mut Decoder, bytes: &[u8]) -> Vec<Event> {
        d.push(bytes).unwrap()
    }

    #[test]
    fn every_kind_round_trips() {
        for f in frames() {
            let mut d = Decoder::new(MAX_LEN);
            assert_eq!(decode_all(&mut d, &encode(&f).unwrap()), vec![Event::Frame(f)]);
            assert!(!d.in_frame());
        }
    }

    #[test]
    fn an_oversize_frame_is_skipped_and_the_stream_goes_on() {
        let mut d = Decoder::new(100);
        let big = Frame::Save { epoch: 1, data: vec![9; 500] };
        let small = Frame::Load { scope: Scope::Rank };
        let mut bytes = encode(&big).unwrap();
        bytes.extend(encode(&small).unwrap());
        let mut got = Vec::new();
        for chunk in bytes.chunks(37) {
            got.extend(d.push(chunk).unwrap());
        }
        assert_eq!(got, vec![Event::Oversize { kind: Kind::Save, len: 508 }, Event::Frame(small)]);
    }

    #[test]
    fn garbage_is_a_final_error() {
        let mut d = Decoder::new(MAX_LEN);
        assert_eq!(d.push(b"PMI_RANK"), Err(ProtoError::BadMagic(*b"PM")));
        assert!(d.push(&encode(&Frame::Request { epoch: 1 }).unwrap()).is_err(), "no resynchronisation");
        let mut bytes = encode(&Frame::Request { epoch: 1 }).unwrap();
        bytes[2] = 9;
        assert_eq!(Decoder::new(MAX_LEN).push(&bytes), Err(ProtoError::Version(9)));
        bytes[2] = VERSION;
        bytes[3] = 99;
        assert_eq!(Decoder::new(MAX_LEN).push(&bytes), Err(ProtoError::UnknownKind(99)));
        let short = [&header(Kind::SaveAck, 3).unwrap()[..], &[0, 0, 0]].concat();
        assert_eq!(Decoder::new(MAX_LEN).push(&short), Err(ProtoError::Short { kind: Kind::SaveAck, len: 3 }));
    }

    fn any_frame() -> impl Strategy<Value = Frame> {
        let data = proptest::collection::vec(any::<u8>(), 0..300);
        prop_oneof![
            (any::<u64>(), data.clone()).prop_map(|(epoch, data)| Frame::Save { epoch, data }),
            (any::<i32>(), any::<u64>()).prop_map(|(status, epoch)| Frame::SaveAck { status, epoch }),
            prop_oneof![Just(Scope::Job), Just(Scope::Rank), any::<u32>().prop_map(Scope::Other)].prop_map(|scope| Frame::Load { scope }),
            (any::<i32>(), any::<u64>(), data).prop_map(|(status, epoch, data)| Frame::LoadReply { status, epoch, data }),
            any::<u64>().prop_map(|epoch| Frame::Request { epoch }),
        ]
    }

    proptest! {
        #[test]
        fn any_frames_in_any_pieces_decode_to_themselves(fs in proptest::collection::vec(any_frame(), 1..8), cuts in proptest::collection::vec(1usize..64, 1..50)) {
            let bytes: Vec<u8> = fs.iter().flat_map(|f| encode(f).unwrap()).collect();
            let mut d = Decoder::new(MAX_LEN);
            let (mut got, mut at) = (Vec::new(), 0);
            for c in cuts.iter().cycle() {
                if at >= bytes.len() { break; }
                let end = (at + c).min(bytes.len());
                got.extend(d.push(&bytes[at..end]).unwrap());
                at = end;
            }
            prop_assert_eq!(got, fs.into_iter().map(Event::Frame).collect::<Vec<_>>());
            prop_assert!(!d.in_frame());
        }

        #[test]
        fn the_limit_holds_whatever_comes(fs in proptest::collection::vec(any_frame(), 1..8), limit in 0u32..200) {
            let bytes: Vec<u8> = fs.iter().flat_map(|f| encode(f).unwrap()).collect();
            let mut d = Decoder::new(limit);
            for ev in d.push(&bytes).unwrap() {
                if let Event::Frame(f) = ev {
                    prop_assert!(encode(&f).unwrap().len() - HEADER <= limit as usize);
                }
            }
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Decoder::new(64).push(&bytes);
        }
    }
}
