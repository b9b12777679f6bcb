//! The daemon's image service (issue 17): one socket per local rank (`RLAUNCH_IMAGE_FD`, made
//! at every spawn), the in-memory store ([`Store`]), copies to and fetches from partner daemons
//! over the tree links, `--image-interval` requests and their timeouts, and `--image-dir`
//! (written by a thread of its own, so that a large image never holds up the loop).
//! Socket I/O happens here, like the PMI host's; what goes over the tree are [`Effect`]s.

use super::effect::Effect;
use super::say::say;
use crate::images::dir::{self, Entry};
use crate::images::store::{Bytes, Store};
use crate::images::{self, Assembly};
use crate::job::JobView;
use crate::token;
use crate::wire::Msg;
use mio::net::UnixStream;
use mio::{Interest, Registry};
use rlaunch_image::proto::{self, status, Decoder, Event, Frame, Scope};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a partner daemon has to answer a fetch before the next holder is asked.
const FETCH_WAIT: Duration = Duration::from_secs(10);
/// Image bytes queued on a link beyond which no further piece is sealed: a large image goes out
/// as the link drains, never all at once (sealing hundreds of MiB would hold up the loop, and
/// the output and PMI traffic queued behind it).
const LINK_ROOM: usize = 4 << 20;

/// What the service needs of the job, taken once it is known.
#[derive(Clone, Debug)]
struct Conf {
    max: u64,
    copies: u32,
    /// The job's nodes (spares, after them, hold nothing).
    nodes: u32,
    size: u32,
    timeout: Duration,
    dir: Option<PathBuf>,
}

struct Sock {
    rank: u32,
    stream: UnixStream,
    dec: Decoder,
    out: Vec<u8>,
    /// Bytes of `out` written.
    sent: usize,
}

/// A load this daemon could not answer from memory: the holders still to ask, then the dir.
struct Fetch {
    slot: usize,
    rank: u32,
    job: bool,
    holders: VecDeque<u32>,
    asking: Option<(u32, u64, Instant)>,
    asm: Assembly,
}

/// An image on its way to another daemon, piece by piece.
struct Transfer {
    to: u32,
    data: Bytes,
    offset: usize,
    started: bool,
    what: Carried,
}

enum Carried {
    /// A copy for partner `to` of rank `rank`'s image of `epoch`.
    Copy { rank: u32, epoch: u64 },
    /// The answer to fetch `id` of daemon `to`.
    Fetched { id: u64, epoch: u64 },
}

impl Transfer {
    /// The next piece as a message.
    fn piece(&mut self, from: u32) -> Msg {
        let end = (self.offset + images::CHUNK).min(self.data.len());
        let (offset, data, total) = (self.offset as u64, self.data[self.offset..end].to_vec(), self.data.len() as u64);
        self.offset = end;
        self.started = true;
        match self.what {
            Carried::Copy { rank, epoch } => Msg::ImageCopy { to: self.to, from, rank, epoch, total, offset, data },
            Carried::Fetched { id, epoch } => Msg::ImageFetched { to: self.to, id, epoch: Some(epoch), total, offset, data },
        }
    }

    /// Every piece went (an empty image is one empty piece).
    fn done(&self) -> bool {
        self.started && self.offset >= self.data.len()
    }
}

enum DirJob {
    /// Write `data` as `name` in `dir`, atomically.
    Write { dir: PathBuf, name: String, data: Bytes },
    /// `epoch` is complete: its marker, and the older images of `ranks` go.
    Complete { dir: PathBuf, epoch: u64, ranks: Vec<u32> },
}

/// The `--image-dir` writer thread.
struct Writer {
    tx: Option<mpsc::Sender<DirJob>>,
    errors: mpsc::Receiver<String>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
pub struct Images {
    node: u32,
    conf: Option<Conf>,
    socks: HashMap<usize, Sock>,
    slot_of: HashMap<u32, usize>,
    next_slot: usize,
    store: Store,
    /// Requests sent to local ranks and not answered: rank → (round, deadline).
    pending: BTreeMap<u32, (u64, Instant)>,
    fetches: HashMap<u64, Fetch>,
    next_id: u64,
    /// Partner copies arriving: (from node, rank, epoch).
    incoming: HashMap<(u32, u32, u64), Assembly>,
    /// Images going out, in order.
    outbox: VecDeque<Transfer>,
    writer: Option<Writer>,
}

impl Images {
    pub fn new(node: u32) -> Images {
        Images { node, ..Images::default() }
    }

    fn conf(&mut self, job: &JobView) -> &Conf {
        self.conf.get_or_insert_with(|| {
            let l = job.launch();
            Conf {
                max: l.image.max,
                copies: l.image.copies,
                nodes: images::job_nodes(l),
                size: job.map().size(),
                timeout: Duration::from_millis(l.image.timeout_ms),
                dir: l.image.dir.as_ref().map(PathBuf::from),
            }
        })
    }

    /// Rank `rank`'s socket, before it is spawned: the daemon's end is registered, the rank's
    /// end returned (close-on-exec: the spawn keeps it for the rank only). A rank started again
    /// gets a new socket; the old one closes.
    pub fn prepare(&mut self, job: &JobView, rank: u32, registry: &Registry) -> io::Result<OwnedFd> {
        let max = self.conf(job).max;
        if let Some(old) = self.slot_of.remove(&rank) {
            self.close(old, registry);
        }
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        ours.set_nonblocking(true)?;
        let mut stream = UnixStream::from_std(ours);
        let slot = self.next_slot;
        self.next_slot += 1;
        registry.register(&mut stream, token::image(slot), Interest::READABLE | Interest::WRITABLE)?;
        // A save's frame is its image plus the epoch; a larger one is skipped and refused.
        let limit = u32::try_from(max.saturating_add(8)).unwrap_or(proto::MAX_LEN);
        self.socks.insert(slot, Sock { rank, stream, dec: Decoder::new(limit), out: Vec::new(), sent: 0 });
        self.slot_of.insert(rank, slot);
        Ok(theirs.into())
    }

    fn close(&mut self, slot: usize, registry: &Registry) {
        if let Some(mut s) = self.socks.remove(&slot) {
            let _ = registry.deregister(&mut s.stream);
            if self.slot_of.get(&s.rank) == Some(&slot) {
                self.slot_of.remove(&s.rank);
                // A rank that ended owes no image.
                self.pending.remove(&s.rank);
            }
        }
    }

    /// Readiness of socket `slot`.
    pub fn on_event(&mut self, job: Option<&JobView>, slot: usize, ev: &mio::event::Event, registry: &Registry) -> Vec<Effect> {
        let Some(job) = job else { return Vec::new() };
        if ev.is_writable() {
            self.flush(slot);
        }
        let mut out = Vec::new();
        let mut closed = ev.is_error();
        let mut buf = vec![0u8; 256 * 1024];
        while !closed {
            let Some(s) = self.socks.get_mut(&slot) else { return out };
            let n = match s.stream.read(&mut buf) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    closed = true;
                    break;
                }
            };
            let rank = s.rank;
            match s.dec.push(&buf[..n]) {
                Ok(events) => {
                    for e in events {
                        out.extend(self.on_frame(job, slot, rank, e));
                    }
                }
                Err(e) => {
                    say(Some(self.node), format_args!("rank {rank}: unreadable image frame ({e}); closing its image socket"));
                    closed = true;
                }
            }
        }
        if closed {
            self.close(slot, registry);
        }
        out
    }

    fn on_frame(&mut self, job: &JobView, slot: usize, rank: u32, ev: Event) -> Vec<Effect> {
        let conf = self.conf(job).clone();
        match ev {
            Event::Oversize { kind: proto::Kind::Save, len } => {
                self.reply(slot, &Frame::SaveAck { status: status::TOO_BIG, epoch: 0 });
                vec![Effect::Up(Msg::ImageRefused { rank, node: self.node, bytes: (len as u64).saturating_sub(8), limit: conf.max })]
            }
            Event::Oversize { .. } => Vec::new(),
            Event::Frame(Frame::Save { epoch, data }) => self.save(&conf, slot, rank, epoch, data),
            Event::Frame(Frame::Load { scope }) => self.load(job, &conf, slot, rank, scope),
            // Nothing else comes from a rank.
            Event::Frame(_) => Vec::new(),
        }
    }

    fn save(&mut self, conf: &Conf, slot: usize, rank: u32, epoch: u64, data: Vec<u8>) -> Vec<Effect> {
        let data: Bytes = Arc::new(data);
        let bytes = data.len() as u64;
        self.store.put(rank, epoch, data.clone());
        self.reply(slot, &Frame::SaveAck { status: status::OK, epoch });
        self.pending.remove(&rank);
        let me = self.node;
        let out = vec![Effect::Up(Msg::ImageStored { rank, epoch, node: me, bytes })];
        for to in images::partners(me, conf.nodes, conf.copies) {
            // Every epoch, also when a newer one follows at once: the partner needs the image of
            // whichever epoch becomes complete.
            self.outbox.push_back(Transfer { to, data: data.clone(), offset: 0, started: false, what: Carried::Copy { rank, epoch } });
        }
        if let Some(d) = &conf.dir {
            self.write(DirJob::Write { dir: d.clone(), name: dir::image_file(rank, epoch), data });
        }
        out
    }

    fn load(&mut self, job: &JobView, conf: &Conf, slot: usize, own: u32, scope: Scope) -> Vec<Effect> {
        let (rank, job_scope) = match scope {
            Scope::Job => (own, true),
            Scope::Rank => (own, false),
            Scope::Other(r) => (r, false),
        };
        if rank >= conf.size {
            self.reply(slot, &Frame::LoadReply { status: status::INVALID, epoch: 0, data: Vec::new() });
            return Vec::new();
        }
        if let Some((epoch, data)) = self.store.get(rank, job_scope) {
            self.reply_image(slot, epoch, &data);
            return Vec::new();
        }
        let owner = job.node_of_rank(rank).unwrap_or(self.node);
        // A rank placed on a node outside the job's own (a spare numbered after them) has its
        // images wherever its former node's partners are: every node is asked, in turn.
        let holders = if owner < conf.nodes { images::holders(owner, conf.nodes, conf.copies) } else { (0..conf.nodes).collect() };
        let holders = holders.into_iter().filter(|&n| n != self.node).collect();
        self.ask_next(Fetch { slot, rank, job: job_scope, holders, asking: None, asm: Assembly::default() })
    }

    /// Asks the next holder, or, when none is left, answers from `--image-dir` or with nothing.
    fn ask_next(&mut self, mut f: Fetch) -> Vec<Effect> {
        if let Some(n) = f.holders.pop_front() {
            let id = self.next_id;
            self.next_id += 1;
            f.asking = Some((n, id, Instant::now() + FETCH_WAIT));
            let msg = Msg::ImageFetch { to: n, from: self.node, id, rank: f.rank, job: f.job };
            self.fetches.insert(id, f);
            return vec![Effect::Towards(n, msg)];
        }
        match self.conf.as_ref().and_then(|c| c.dir.clone()).and_then(|d| read_dir_image(&d, f.rank, f.job)) {
            Some((epoch, data)) => {
                self.store.put(f.rank, epoch, Arc::new(data.clone()));
                self.reply_image(f.slot, epoch, &data);
            }
            None => self.reply(f.slot, &Frame::LoadReply { status: status::NONE, epoch: 0, data: Vec::new() }),
        }
        Vec::new()
    }

    /// An image message from the tree (parent or child).
    pub fn tree_msg(&mut self, job: Option<&JobView>, m: Msg) -> Vec<Effect> {
        if let Some(to) = images::is_routed(&m).filter(|&to| to != self.node) {
            return vec![Effect::Towards(to, m)];
        }
        if let Some(j) = job {
            self.conf(j);
        }
        // Broadcasts go down every child link: after a tree repair that includes children
        // adopted from a lost node, which the static topology does not list.
        match m {
            Msg::ImageRequest { epoch } => {
                let mut out = vec![Effect::Down(Msg::ImageRequest { epoch })];
                out.extend(self.request(epoch));
                out
            }
            Msg::ImageComplete { epoch } => {
                self.store.set_complete(epoch);
                // From the job each time: a spare that took a node's place has that node's ranks.
                let local = job.map_or(&[][..], |j| j.local_ranks());
                if let Some(d) = self.conf.as_ref().and_then(|c| c.dir.clone()).filter(|_| !local.is_empty()) {
                    self.write(DirJob::Complete { dir: d, epoch, ranks: local.to_vec() });
                }
                vec![Effect::Down(Msg::ImageComplete { epoch })]
            }
            Msg::ImageCopy { from, rank, epoch, total, offset, data, .. } => {
                let key = (from, rank, epoch);
                let whole = self.incoming.entry(key).or_default().add(total, offset, &data);
                let Some(image) = whole else { return Vec::new() };
                self.incoming.remove(&key);
                self.store.put(rank, epoch, Arc::new(image));
                vec![Effect::Up(Msg::ImageStored { rank, epoch, node: self.node, bytes: total })]
            }
            Msg::ImageFetch { from, id, rank, job, .. } => match self.store.get(rank, job) {
                Some((epoch, data)) => {
                    self.outbox.push_back(Transfer { to: from, data, offset: 0, started: false, what: Carried::Fetched { id, epoch } });
                    Vec::new()
                }
                None => vec![Effect::Towards(from, Msg::ImageFetched { to: from, id, epoch: None, total: 0, offset: 0, data: Vec::new() })],
            },
            Msg::ImageFetched { id, epoch, total, offset, data, .. } => self.fetched(id, epoch, total, offset, &data),
            // Reports on their way to the front end.
            m => vec![Effect::Up(m)],
        }
    }

    fn fetched(&mut self, id: u64, epoch: Option<u64>, total: u64, offset: u64, data: &[u8]) -> Vec<Effect> {
        let Some(mut f) = self.fetches.remove(&id) else { return Vec::new() };
        let Some(epoch) = epoch else { return self.ask_next(f) };
        match f.asm.add(total, offset, data) {
            Some(image) => {
                self.reply_image(f.slot, epoch, &image);
                // Kept here too: the next load of it is local.
                self.store.put(f.rank, epoch, Arc::new(image));
                Vec::new()
            }
            None => {
                self.fetches.insert(id, f);
                Vec::new()
            }
        }
    }

    /// A job-scope restart, at `RestartJob` once restarts is merged (the images-with-restarts
    /// branch shows where): see `Store::new_generation`. Copies not sent yet of the forgotten
    /// epochs stay unsent.
    pub fn new_generation(&mut self) {
        self.store.new_generation();
        let complete = self.store.complete();
        self.outbox.retain(|t| t.started || !matches!(t.what, Carried::Copy { epoch, .. } if complete.map_or(true, |c| epoch > c)));
        self.pending.clear();
    }

    /// `--image-interval`: asks every local rank for an image.
    fn request(&mut self, epoch: u64) -> Vec<Effect> {
        let Some(timeout) = self.conf.as_ref().map(|c| c.timeout) else { return Vec::new() };
        let deadline = Instant::now() + timeout;
        let slots: Vec<(u32, usize)> = self.slot_of.iter().map(|(&r, &s)| (r, s)).collect();
        for (rank, slot) in slots {
            self.reply(slot, &Frame::Request { epoch });
            // An older round still unanswered keeps its deadline: the rank is late for that one.
            self.pending.entry(rank).or_insert((epoch, deadline));
        }
        Vec::new()
    }

    /// The next pieces of the images going out, as far as the links have room (`queued`: bytes
    /// queued on the link towards a node). Called after every turn of the loop: a link that
    /// drains wakes it.
    pub fn pump(&mut self, queued: impl Fn(u32) -> usize) -> Vec<Effect> {
        let mut out = Vec::new();
        let mut added: HashMap<u32, usize> = HashMap::new();
        for t in self.outbox.iter_mut() {
            while !t.done() {
                let q = queued(t.to) + added.get(&t.to).copied().unwrap_or(0);
                if q >= LINK_ROOM {
                    break;
                }
                let m = t.piece(self.node);
                *added.entry(t.to).or_insert(0) += images::CHUNK;
                out.push(Effect::Towards(t.to, m));
            }
        }
        self.outbox.retain(|t| !t.done());
        out
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        let p = self.pending.values().map(|(_, d)| *d);
        let f = self.fetches.values().filter_map(|f| f.asking.map(|(_, _, d)| d));
        p.chain(f).min()
    }

    /// Requests not answered in time, fetches not answered in time, the dir writer's errors.
    pub fn check_timer(&mut self, now: Instant) -> Vec<Effect> {
        let mut out = Vec::new();
        let late: Vec<(u32, u64)> = self.pending.iter().filter(|(_, (_, d))| *d <= now).map(|(&r, &(e, _))| (r, e)).collect();
        for (rank, epoch) in late {
            self.pending.remove(&rank);
            out.push(Effect::Up(Msg::ImageTimedOut { rank, node: self.node, epoch }));
        }
        let stuck: Vec<u64> = self.fetches.iter().filter(|(_, f)| f.asking.is_some_and(|(_, _, d)| d <= now)).map(|(&id, _)| id).collect();
        for id in stuck {
            if let Some(f) = self.fetches.remove(&id) {
                out.extend(self.ask_next(Fetch { asm: Assembly::default(), ..f }));
            }
        }
        if let Some(w) = &self.writer {
            for e in w.errors.try_iter() {
                say(Some(self.node), e);
            }
        }
        out
    }

    fn reply_image(&mut self, slot: usize, epoch: u64, data: &[u8]) {
        let Ok(prefix) = proto::reply_prefix(status::OK, epoch, data.len()) else { return };
        self.queue(slot, &[&prefix, data]);
    }

    fn reply(&mut self, slot: usize, f: &Frame) {
        if let Ok(bytes) = proto::encode(f) {
            self.queue(slot, &[&bytes]);
        }
    }

    fn queue(&mut self, slot: usize, parts: &[&[u8]]) {
        let Some(s) = self.socks.get_mut(&slot) else { return };
        for p in parts {
            s.out.extend_from_slice(p);
        }
        self.flush(slot);
    }

    /// Writes what the socket takes now; the rest goes on its next writable event.
    fn flush(&mut self, slot: usize) {
        let Some(s) = self.socks.get_mut(&slot) else { return };
        while s.sent < s.out.len() {
            match s.stream.write(&s.out[s.sent..]) {
                Ok(0) => break,
                Ok(n) => s.sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // WouldBlock: later; a broken socket shows up as the rank's EOF.
                Err(_) => break,
            }
        }
        if s.sent == s.out.len() {
            s.out.clear();
            s.sent = 0;
        }
    }

    fn write(&mut self, job: DirJob) {
        let w = self.writer.get_or_insert_with(Writer::start);
        if let Some(tx) = &w.tx {
            let _ = tx.send(job);
        }
    }
}

impl Writer {
    fn start() -> Writer {
        let (tx, rx) = mpsc::channel::<DirJob>();
        let (etx, errors) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("image-dir".into())
            .spawn(move || {
                let mut failed = false;
                for job in rx {
                    // The first failure is said; a directory that fails once likely fails for
                    // every image.
                    if let Err(e) = run_dir_job(&job) {
                        if !std::mem::replace(&mut failed, true) {
                            let _ = etx.send(format!("{e} (later --image-dir errors are not shown)"));
                        }
                    }
                }
            })
            .ok();
        Writer { tx: Some(tx), errors, thread }
    }
}

impl Drop for Writer {
    /// Everything queued is on disk before the daemon exits.
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn write_atomic(dir: &Path, name: &str, data: &[u8]) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("--image-dir: creating {}: {e}", dir.display()))?;
    let tmp = dir.join(format!(".{name}.{}", std::process::id()));
    let fin = dir.join(name);
    let r = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_data()?;
        std::fs::rename(&tmp, &fin)
    })();
    r.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("--image-dir: writing {}: {e}; the image stays in memory only", fin.display())
    })
}

fn entries(dir: &Path) -> Vec<Entry> {
    std::fs::read_dir(dir).into_iter().flatten().flatten().filter_map(|e| dir::parse(&e.file_name().to_string_lossy())).collect()
}

fn run_dir_job(job: &DirJob) -> Result<(), String> {
    match job {
        DirJob::Write { dir, name, data } => write_atomic(dir, name, data),
        DirJob::Complete { dir, epoch, ranks } => {
            write_atomic(dir, &dir::complete_file(*epoch), b"")?;
            for name in dir::stale(&entries(dir), ranks, *epoch) {
                let _ = std::fs::remove_file(dir.join(name));
            }
            Ok(())
        }
    }
}

/// Rank `rank`'s image in the job's `--image-dir` folder (a former job's, or this one's).
fn read_dir_image(dir: &Path, rank: u32, job: bool) -> Option<(u64, Vec<u8>)> {
    let epoch = dir::pick(&entries(dir), rank, job)?;
    std::fs::read(dir.join(dir::image_file(rank, epoch))).ok().map(|d| (epoch, d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::fixture;
    use crate::spec::AppContext;

    /// Two nodes of two slots, 4 ranks, two copies: node 0 has ranks 0 and 1.
    fn job(node: u32, dir: Option<&Path>) -> JobView {
        let app = AppContext { argv: vec!["prog".into()], env: Vec::new(), cwd: String::new(), np: Some(4), nodes: None, without_job_env: false };
        let mut launch = fixture::launch("rl-img", 2, 2, vec![app]);
        launch.image.copies = 2;
        launch.image.max = 100;
        launch.image.dir = dir.map(|d| d.display().to_string());
        fixture::view(launch, node)
    }

    struct Rank {
        sock: std::os::unix::net::UnixStream,
        dec: Decoder,
    }

    impl Rank {
        fn send(&mut self, f: &Frame) {
            self.sock.write_all(&proto::encode(f).unwrap()).unwrap();
        }
        fn recv(&mut self) -> Frame {
            let mut buf = [0u8; 4096];
            loop {
                let n = self.sock.read(&mut buf).unwrap();
                assert!(n > 0, "daemon closed");
                if let Some(Event::Frame(f)) = self.dec.push(&buf[..n]).unwrap().pop() {
                    return f;
                }
            }
        }
    }

    /// Drives the daemon side by hand: what poll would report readable is read at once.
    fn poke(im: &mut Images, job: &JobView, poll: &mut mio::Poll) -> Vec<Effect> {
        let mut events = mio::Events::with_capacity(16);
        let mut out = Vec::new();
        poll.poll(&mut events, Some(Duration::from_millis(200))).unwrap();
        for ev in events.iter() {
            if let token::Source::Image(slot) = token::classify(ev.token()) {
                out.extend(im.on_event(Some(job), slot, ev, poll.registry()));
            }
        }
        out
    }

    fn rank(im: &mut Images, job: &JobView, r: u32, poll: &mio::Poll) -> Rank {
        let fd = im.prepare(job, r, poll.registry()).unwrap();
        Rank { sock: std::os::unix::net::UnixStream::from(fd), dec: Decoder::new(proto::MAX_LEN) }
    }

    #[test]
    fn a_save_is_acknowledged_reported_and_copied_to_the_partner() {
        let mut poll = mio::Poll::new().unwrap();
        let j = job(0, None);
        let mut im = Images::new(0);
        let mut r0 = rank(&mut im, &j, 0, &poll);
        r0.send(&Frame::Save { epoch: 3, data: b"abc".to_vec() });
        let mut fx = poke(&mut im, &j, &mut poll);
        assert_eq!(r0.recv(), Frame::SaveAck { status: status::OK, epoch: 3 });
        fx.extend(im.pump(|_| 0));
        assert_eq!(
            fx,
            vec![
                Effect::Up(Msg::ImageStored { rank: 0, epoch: 3, node: 0, bytes: 3 }),
                Effect::Towards(1, Msg::ImageCopy { to: 1, from: 0, rank: 0, epoch: 3, total: 3, offset: 0, data: b"abc".to_vec() }),
            ]
        );
        assert!(im.pump(|_| 0).is_empty(), "sent once");
        // The partner stores it and says so.
        let j1 = job(1, None);
        let mut partner = Images::new(1);
        let Effect::Towards(_, copy) = &fx[1] else { unreachable!() };
        assert_eq!(partner.tree_msg(Some(&j1), copy.clone()), vec![Effect::Up(Msg::ImageStored { rank: 0, epoch: 3, node: 1, bytes: 3 })]);
        assert_eq!(partner.store.get(0, false).map(|(e, d)| (e, d.to_vec())), Some((3, b"abc".to_vec())));
    }

    #[test]
    fn an_image_over_the_limit_is_refused_and_the_socket_stays_usable() {
        let mut poll = mio::Poll::new().unwrap();
        let j = job(0, None);
        let mut im = Images::new(0);
        let mut r1 = rank(&mut im, &j, 1, &poll);
        r1.send(&Frame::Save { epoch: 1, data: vec![0; 500] });
        r1.send(&Frame::Load { scope: Scope::Rank });
        let mut fx = Vec::new();
        while fx.len() < 2 {
            fx.extend(poke(&mut im, &j, &mut poll));
        }
        assert_eq!(fx[0], Effect::Up(Msg::ImageRefused { rank: 1, node: 0, bytes: 500, limit: 100 }));
        assert_eq!(r1.recv(), Frame::SaveAck { status: status::TOO_BIG, epoch: 0 });
        // Nothing saved; the partner (node 1) is asked before the answer is "none".
        assert!(matches!(fx[1], Effect::Towards(1, Msg::ImageFetch { rank: 1, job: false, .. })), "{fx:?}");
        assert_eq!(im.fetches.len(), 1);
        let id = *im.fetches.keys().next().unwrap();
        assert!(im.tree_msg(Some(&j), Msg::ImageFetched { to: 0, id, epoch: None, total: 0, offset: 0, data: Vec::new() }).is_empty());
        assert_eq!(r1.recv(), Frame::LoadReply { status: status::NONE, epoch: 0, data: Vec::new() });
    }

    #[test]
    fn a_load_missing_here_comes_from_the_partner() {
        let mut poll = mio::Poll::new().unwrap();
        let j = job(0, None);
        let mut im = Images::new(0);
        let mut r0 = rank(&mut im, &j, 0, &poll);
        r0.send(&Frame::Load { scope: Scope::Job });
        let fx = poke(&mut im, &j, &mut poll);
        let [Effect::Towards(1, Msg::ImageFetch { to: 1, from: 0, id, rank: 0, job: true })] = fx[..] else { panic!("{fx:?}") };
        // The partner answers from its copies.
        let mut partner = Images::new(1);
        partner.store.put(0, 5, Arc::new(b"five".to_vec()));
        partner.store.set_complete(5);
        assert!(partner.tree_msg(Some(&job(1, None)), Msg::ImageFetch { to: 1, from: 0, id, rank: 0, job: true }).is_empty());
        let answer = partner.pump(|_| 0);
        let [Effect::Towards(0, ref m)] = answer[..] else { panic!("{answer:?}") };
        assert!(im.tree_msg(Some(&j), m.clone()).is_empty());
        assert_eq!(r0.recv(), Frame::LoadReply { status: status::OK, epoch: 5, data: b"five".to_vec() });
        // Another rank's image, out of range: refused at once.
        r0.send(&Frame::Load { scope: Scope::Other(9) });
        poke(&mut im, &j, &mut poll);
        assert_eq!(r0.recv(), Frame::LoadReply { status: status::INVALID, epoch: 0, data: Vec::new() });
    }

    #[test]
    fn a_large_image_goes_out_as_the_link_drains() {
        let j = job(0, None);
        let mut im = Images::new(0);
        im.conf(&j);
        let data = vec![7u8; 10 * images::CHUNK + 1];
        im.save(&im.conf.clone().unwrap(), usize::MAX, 0, 1, data.clone());
        let first = im.pump(|_| 0);
        assert_eq!(first.len(), LINK_ROOM / images::CHUNK, "no more than the room of the link at once");
        assert!(im.pump(|_| LINK_ROOM).is_empty(), "a full link takes nothing");
        let mut pieces = first;
        while !im.outbox.is_empty() {
            pieces.extend(im.pump(|_| 0));
        }
        let mut asm = Assembly::default();
        let whole = pieces.iter().filter_map(|e| match e {
            Effect::Towards(1, Msg::ImageCopy { total, offset, data, .. }) => asm.add(*total, *offset, data),
            _ => None,
        });
        assert_eq!(whole.last(), Some(data));
        im.save(&im.conf.clone().unwrap(), usize::MAX, 0, 2, Vec::new());
        let empty = im.pump(|_| 0);
        assert!(matches!(&empty[..], [Effect::Towards(1, Msg::ImageCopy { total: 0, epoch: 2, .. })]), "an empty image is one piece: {empty:?}");
    }

    #[test]
    fn requests_time_out_per_rank_and_a_save_answers_them() {
        let mut poll = mio::Poll::new().unwrap();
        let j = job(0, None);
        let mut im = Images::new(0);
        let mut r0 = rank(&mut im, &j, 0, &poll);
        let _r1 = rank(&mut im, &j, 1, &poll);
        im.tree_msg(Some(&j), Msg::ImageRequest { epoch: 2 });
        assert_eq!(r0.recv(), Frame::Request { epoch: 2 });
        r0.send(&Frame::Save { epoch: 2, data: Vec::new() });
        poke(&mut im, &j, &mut poll);
        let later = Instant::now() + Duration::from_secs(3600);
        assert_eq!(im.check_timer(later), vec![Effect::Up(Msg::ImageTimedOut { rank: 1, node: 0, epoch: 2 })]);
        assert!(im.check_timer(later).is_empty(), "said once");
    }

    #[test]
    fn the_image_dir_holds_images_and_markers_and_serves_a_later_job() {
        let d = std::env::temp_dir().join(format!("rlaunch-imgdir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let mut poll = mio::Poll::new().unwrap();
        let j = job(0, Some(&d));
        {
            let mut im = Images::new(0);
            let mut r0 = rank(&mut im, &j, 0, &poll);
            for e in [1, 2] {
                r0.send(&Frame::Save { epoch: e, data: vec![e as u8; 4] });
                poke(&mut im, &j, &mut poll);
                r0.recv();
            }
            im.tree_msg(Some(&j), Msg::ImageComplete { epoch: 2 });
        }
        let mut names: Vec<String> = std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        assert_eq!(names, ["epoch2.complete", "rank0.epoch2.img"], "epoch 1 went once 2 was complete");
        assert_eq!(read_dir_image(&d, 0, true), Some((2, vec![2; 4])));
        assert_eq!(read_dir_image(&d, 1, false), None);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
