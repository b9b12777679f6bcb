//! How a daemon joins the tree: its bootstrap line on stdin, the listener for its own children,
//! the connection to its parent (for daemons a resource manager started, which do not know
//! their node, after the rendezvous that assigns one), and its hello.

use crate::link::Link;
use crate::links::Links;
use crate::sig::SignalPipe;
use crate::token;
use crate::tree::{self, Router, Topology};
use crate::wire::{Bootstrap, Dir, Msg};
use anyhow::{anyhow, bail, Context, Result};
use mio::{Interest, Poll};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// A daemon that said hello to its parent: what its event loop starts with, every source
/// registered with `poll`.
pub struct Joined {
    /// With the node filled in after a rendezvous.
    pub boot: Bootstrap,
    pub poll: Poll,
    /// The parent link; children join later.
    pub links: Links,
    /// Listening for child daemons (only when this node has children, or may have: rendezvous).
    pub listener: Option<mio::net::TcpListener>,
    pub listen_port: u16,
    pub signals: SignalPipe,
}

/// Reads the bootstrap line, listens for children, connects to the parent and says hello.
pub fn join() -> Result<Joined> {
    // The daemon must outlive nothing: if whoever started it dies, or a signal says so, it
    // terminates its ranks (an orphan event of the loop).
    let mut signals = SignalPipe::new(&[libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGHUP])?;
    let mut boot = read_bootstrap()?;
    let poll = Poll::new()?;
    // A daemon started by a resource manager (one srun step for all nodes) does not know its node
    // rank: it must listen before it asks, since its parent-to-be cannot be told its port otherwise.
    let rendezvous = boot.node == Bootstrap::ANY_NODE;
    let mut listener = None;
    let mut listen_port = 0;
    let listen = |ip: std::net::IpAddr| -> Result<(mio::net::TcpListener, u16)> {
        let l = crate::link::listen(ip, boot.ports).context("listening for child daemons")?;
        let port = l.local_addr()?.port();
        Ok((l, port))
    };
    let parent = if rendezvous {
        let (l, port) = listen(std::net::Ipv4Addr::UNSPECIFIED.into())?;
        (listener, listen_port) = (Some(l), port);
        let (node, stream) = rendezvous_join(&boot, listen_port)?;
        boot.node = node;
        stream
    } else {
        let stream = connect_parent(&boot.parent)?;
        // Children are told the address the parent sees this daemon at: listen there only, not
        // on every interface.
        if !tree::Topology::new(boot.nnodes, boot.fanout).children_of(Some(boot.node)).is_empty() {
            let (l, port) = listen(stream.local_addr()?.ip())?;
            (listener, listen_port) = (Some(l), port);
        }
        stream
    };
    parent.set_nodelay(true).ok();
    parent.set_nonblocking(true)?;
    let node = boot.node;
    let mut links = Links::new(Router::new(Topology::new(boot.nnodes, boot.fanout), Some(node)), boot.key);
    let parent = Link::new(mio::net::TcpStream::from_std(parent), boot.key, Dir::Up, Some(node));
    links.set_parent(parent, poll.registry())?;
    if let Some(l) = listener.as_mut() {
        poll.registry().register(l, token::LISTENER, Interest::READABLE)?;
    }
    poll.registry().register(&mut signals.rx, token::SIGNALS, Interest::READABLE)?;
    // The bootstrap stdin stays open for the life of whatever started us (a pipe from the front
    // end, an ssh channel): its EOF means that process is gone. Regular files cannot be polled;
    // skip those.
    let _ = poll.registry().register(&mut mio::unix::SourceFd(&0), token::BOOT_STDIN, Interest::READABLE);
    let hostname = launchers::local_hostname();
    links.up(&Msg::Hello { node, pid: std::process::id(), listen_port, hostname, addr: None });
    // Now, not at the loop's first turn: the launch message can only come after it, and the
    // launch timeline anchors this daemon's clock on the moment it went.
    links.flush()?;
    Ok(Joined { boot, poll, links, listener, listen_port, signals })
}

fn read_bootstrap() -> Result<Bootstrap> {
    // Byte by byte: anything after the line must stay in stdin (it is watched for EOF later).
    let mut line = Vec::new();
    let mut stdin = io::stdin().lock();
    let mut b = [0u8; 1];
    loop {
        match stdin.read(&mut b) {
            Ok(0) => bail!("standard input closed before the bootstrap line (start daemons through rlaunch, not by hand)"),
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) => {
                line.push(b[0]);
                if line.len() > 4096 {
                    bail!("bootstrap line too long");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("reading the bootstrap line"),
        }
    }
    let text = String::from_utf8_lossy(&line);
    Bootstrap::parse(&text).ok_or_else(|| anyhow!("malformed bootstrap line (is the same rlaunch version installed on every node?)"))
}

fn connect_parent(addr: &str) -> Result<TcpStream> {
    use std::net::ToSocketAddrs;
    let addrs: Vec<_> = addr.to_socket_addrs().with_context(|| format!("resolving parent address {addr}"))?.collect();
    let mut last = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(anyhow!("cannot connect to parent {addr}: {}", last.map(|e| e.to_string()).unwrap_or_else(|| "no address".into())))
}

/// The name this node goes by in the front end's node list, as the resource manager knows it.
fn node_identity() -> String {
    std::env::var("SLURMD_NODENAME").ok().filter(|s| !s.is_empty()).unwrap_or_else(launchers::local_hostname)
}

/// Asks the front end which node this is and where to connect. Returns the node rank and a
/// connected stream to the parent (the front end's own stream when it is the parent).
fn rendezvous_join(boot: &Bootstrap, listen_port: u16) -> Result<(u32, TcpStream)> {
    let mut stream = connect_parent(&boot.parent)?;
    stream.set_read_timeout(Some(CONNECT_TIMEOUT))?;
    let mut sealer = crate::wire::Sealer::new(boot.key, Dir::Up, Bootstrap::ANY_NODE);
    let mut opener = crate::wire::Opener::new(boot.key, Dir::Down, Some(Bootstrap::ANY_NODE));
    let name = node_identity();
    let hello = Msg::Hello { node: Bootstrap::ANY_NODE, pid: std::process::id(), listen_port, hostname: name.clone(), addr: None };
    stream.write_all(&sealer.seal(&hello))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(msg) = opener.open(&mut buf)? {
            match msg {
                Msg::Assign { node, parent: None } => return Ok((node, stream)),
                Msg::Assign { node, parent: Some(addr) } => return Ok((node, connect_parent(&addr)?)),
                Msg::Refuse { message } => bail!("the front end refused node '{name}': {message}"),
                other => bail!("unexpected message while joining: {other:?}"),
            }
        }
        let n = stream.read(&mut chunk).context("waiting for the front end to assign this node")?;
        if n == 0 {
            bail!("the front end closed the connection before assigning node '{name}'");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads the daemon's boot stdin (the pipe from whoever started it); true once it is closed, and
/// then no longer watched.
pub fn stdin_closed(registry: &mio::Registry) -> bool {
    let mut buf = [0u8; 256];
    // SAFETY: fd 0 is ours for the life of the process; a plain read on it is fine.
    let n = unsafe { libc::read(0, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
    let closed = n == 0 || (n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock);
    if closed {
        let _ = registry.deregister(&mut mio::unix::SourceFd(&0));
    }
    closed
}
