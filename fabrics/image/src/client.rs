//! The Rust API of a rank: a connection to its daemon over the socket named by
//! `RLAUNCH_IMAGE_FD`. Saves and loads wait for the daemon's answer; [`Client::poll`] never waits.

use crate::proto::{self, status, Decoder, Event, Frame, Scope};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;

/// The variable that names the rank's end of its image socket.
pub const FD_VAR: &str = "RLAUNCH_IMAGE_FD";
/// Times this rank's process was restarted (0 on its first start), set by rlaunch.
pub const RESTARTS_VAR: &str = "RLAUNCH_RESTARTS";
/// The job-scope restart generation (0 first), set by rlaunch.
pub const GENERATION_VAR: &str = "RLAUNCH_GENERATION";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `RLAUNCH_IMAGE_FD` names no usable descriptor.
    #[error("{FD_VAR}={0} is not a descriptor this process holds; was it closed or not inherited?")]
    BadFd(String),
    /// The socket failed or the daemon closed it.
    #[error("image socket to the rlaunch daemon: {0}")]
    Io(#[from] io::Error),
    /// The daemon sent something this library does not understand.
    #[error("image socket to the rlaunch daemon: {0}")]
    Proto(#[from] proto::ProtoError),
    /// The image is larger than the job's `--image-max`; it was not saved.
    #[error("an image of {len} bytes exceeds the job's --image-max; not saved")]
    TooBig { len: usize },
    /// A request the daemon refused (e.g. a rank outside the job).
    #[error("the rlaunch daemon refused the request (a rank outside the job?)")]
    Invalid,
}

/// An image as loaded: the epoch it was saved with and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub epoch: u64,
    pub data: Vec<u8>,
}

pub struct Client {
    sock: UnixStream,
    dec: Decoder,
    /// Frames read while waiting for another answer, in order.
    queued: VecDeque<Frame>,
    /// The epoch of the newest image request not yet answered.
    requested: Option<u64>,
}

/// Times this process was restarted by rlaunch (0 on a first start and outside rlaunch).
pub fn restarts() -> u32 {
    std::env::var(RESTARTS_VAR).ok().and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// The job-scope restart generation (0 on a first start and outside rlaunch).
pub fn generation() -> u32 {
    std::env::var(GENERATION_VAR).ok().and_then(|v| v.parse().ok()).unwrap_or(0)
}

impl Client {
    /// The connection rlaunch gave this process; None outside rlaunch (no `RLAUNCH_IMAGE_FD`).
    pub fn from_env() -> Result<Option<Client>, Error> {
        let Ok(v) = std::env::var(FD_VAR) else { return Ok(None) };
        let fd: i32 = v.trim().parse().map_err(|_| Error::BadFd(v.clone()))?;
        // SAFETY: fcntl(F_GETFD) only asks whether the descriptor is open.
        if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
            return Err(Error::BadFd(v));
        }
        // Not for the program's own children: a second owner would interleave frames.
        // SAFETY: F_SETFD on a descriptor just checked to be open.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        // SAFETY: the descriptor is open and this process's end of the socket rlaunch made;
        // nothing else in the process uses it (the variable names it for this library).
        let sock = unsafe { UnixStream::from_raw_fd(fd) };
        Ok(Some(Client::new(sock)))
    }

    pub fn new(sock: UnixStream) -> Client {
        Client { sock, dec: Decoder::new(proto::MAX_LEN), queued: VecDeque::new(), requested: None }
    }

    /// Saves `data` as this rank's image of `epoch`; returns once the daemon holds it.
    pub fn save(&mut self, epoch: u64, data: &[u8]) -> Result<(), Error> {
        let prefix = proto::save_prefix(epoch, data.len())?;
        self.sock.write_all(&prefix)?;
        self.sock.write_all(data)?;
        let ack = self.wait(|f| matches!(f, Frame::SaveAck { .. }))?;
        // Every request the daemon sent before it took this image is answered by it.
        self.requested = None;
        match ack {
            Frame::SaveAck { status: status::OK, .. } => Ok(()),
            Frame::SaveAck { status: status::TOO_BIG, .. } => Err(Error::TooBig { len: data.len() }),
            _ => Err(Error::Invalid),
        }
    }

    /// Loads an image (None: there is none).
    pub fn load(&mut self, scope: Scope) -> Result<Option<Image>, Error> {
        self.sock.write_all(&proto::encode(&Frame::Load { scope })?)?;
        match self.wait(|f| matches!(f, Frame::LoadReply { .. }))? {
            Frame::LoadReply { status: status::OK, epoch, data } => Ok(Some(Image { epoch, data })),
            Frame::LoadReply { status: status::NONE, .. } => Ok(None),
            _ => Err(Error::Invalid),
        }
    }

    /// Reads what arrived without waiting; returns the epoch of a pending image request, if any
    /// (the request stays pending until an image is saved).
    pub fn poll(&mut self) -> Result<Option<u64>, Error> {
        self.take_requests();
        if self.requested.is_some() {
            return Ok(self.requested);
        }
        self.sock.set_nonblocking(true)?;
        let r = self.read_some();
        self.sock.set_nonblocking(false)?;
        match r {
            Ok(()) => {}
            Err(Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        self.take_requests();
        Ok(self.requested)
    }

    /// Requests among the queued frames set the pending request.
    fn take_requests(&mut self) {
        self.queued.retain(|f| match f {
            Frame::Request { epoch } => {
                self.requested = Some(*epoch);
                false
            }
            _ => true,
        });
    }

    /// Reads once into the queue; an orderly close is an error (the daemon is gone).
    fn read_some(&mut self) -> Result<(), Error> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match self.sock.read(&mut buf) {
                Ok(0) => return Err(Error::Io(io::Error::new(io::ErrorKind::UnexpectedEof, "the rlaunch daemon closed the image socket"))),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            for ev in self.dec.push(&buf[..n])? {
                if let Event::Frame(f) = ev {
                    self.queued.push_back(f);
                }
            }
            return Ok(());
        }
    }

    /// Blocks until a frame `want` accepts arrives; requests met before it are remembered, the
    /// frames after it stay queued.
    fn wait(&mut self, want: impl Fn(&Frame) -> bool) -> Result<Frame, Error> {
        loop {
            while let Some(f) = self.queued.pop_front() {
                match f {
                    Frame::Request { epoch } => self.requested = Some(epoch),
                    f if want(&f) => return Ok(f),
                    // Nothing else is sent unasked.
                    _ => {}
                }
            }
            self.read_some()?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A daemon stand-in on the other end: answers one save and one load, then sends a request.
    #[test]
    fn save_load_and_poll_against_a_scripted_daemon() {
        let (a, b) = UnixStream::pair().unwrap();
        let daemon = std::thread::spawn(move || {
            let mut b = b;
            let mut d = Decoder::new(1 << 20);
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while got.len() < 2 {
                let n = b.read(&mut buf).unwrap();
                for ev in d.push(&buf[..n]).unwrap() {
                    let Event::Frame(f) = ev else { panic!() };
                    let answer = match &f {
                        // A request overtakes the answer: the client must keep it for later.
                        Frame::Save { epoch, .. } => [proto::encode(&Frame::Request { epoch: 5 }).unwrap(), proto::encode(&Frame::SaveAck { status: 0, epoch: *epoch }).unwrap()].concat(),
                        Frame::Load { .. } => proto::encode(&Frame::LoadReply { status: 0, epoch: 4, data: b"img".to_vec() }).unwrap(),
                        _ => panic!(),
                    };
                    b.write_all(&answer).unwrap();
                    got.push(f);
                }
            }
            b.write_all(&proto::encode(&Frame::Request { epoch: 6 }).unwrap()).unwrap();
            (got, b)
        });
        let mut c = Client::new(a);
        c.save(4, b"img").unwrap();
        assert_eq!(c.load(Scope::Rank).unwrap(), Some(Image { epoch: 4, data: b"img".to_vec() }));
        let (got, _open) = daemon.join().unwrap();
        assert_eq!(got[0], Frame::Save { epoch: 4, data: b"img".to_vec() });
        // The request that came before the save's answer was answered by that save; the later one is pending.
        let mut seen = None;
        for _ in 0..1000 {
            seen = c.poll().unwrap();
            if seen.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(seen, Some(6));
    }

    #[test]
    fn a_closed_daemon_is_an_error_not_a_hang() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        let mut c = Client::new(a);
        assert!(c.load(Scope::Job).is_err());
    }
}
