//! A rank program for `scripts/bench-fabrics`, started on every node by rlaunch itself. It finds
//! its peers in the endpoint table (`RLAUNCH_ENDPOINTS`) and never exchanges addresses.
//!
//! ```text
//! launch_bench barrier ARITY ITERS   tree barrier over fabrics::TcpTransport, member = rank, peers'
//!                                    addresses from the table; rank 0 prints
//!                                    "barrier members P arity K iters N us X"
//! launch_bench visible               prints "visible RANK NS": CLOCK_REALTIME once the table is
//!                                    mapped, checked and this rank's and its successor's
//!                                    endpoints are read
//! launch_bench modex BYTES           the same information the PMI way: put a BYTES-byte value,
//!                                    fence (barrier_in), get every other rank's value over the
//!                                    PMI-1 wire protocol on PMI_FD; prints "modex RANK NS"
//! ```
//! Exit status 0, or 1 with a line on stderr.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::fd::FromRawFd;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fabrics::collective::{Collective, Kind, Tree};
use fabrics::table::TableReader;
use fabrics::transport::{bind_listener, run_barrier, TcpConfig, TcpTransport};

fn die(rank: &str, msg: String) -> ! {
    eprintln!("launch_bench: rank {rank}: {msg}");
    std::process::exit(1)
}

fn env(name: &str, rank: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| die(rank, format!("{name} is not set; start me with rlaunch")))
}

fn realtime_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn table(rank: &str) -> TableReader {
    let path = env("RLAUNCH_ENDPOINTS", rank);
    TableReader::open(std::path::Path::new(&path)).unwrap_or_else(|e| die(rank, e.to_string()))
}

fn addr_of(t: &TableReader, r: u32, rank: &str) -> SocketAddr {
    let ep = t
        .endpoint_of(r)
        .unwrap_or_else(|e| die(rank, e.to_string()));
    let ip = ep
        .ip
        .unwrap_or_else(|| die(rank, format!("rank {r} has no IP address in the table")));
    SocketAddr::new(ip, ep.port)
}

fn barrier(rank_s: &str, arity: u32, iters: u32) {
    let me: u32 = rank_s
        .parse()
        .unwrap_or_else(|_| die(rank_s, "RLAUNCH_RANK is not a number".into()));
    let t = table(rank_s);
    let size = t.header().rank_count;
    let addrs: Vec<SocketAddr> = (0..size).map(|r| addr_of(&t, r, rank_s)).collect();
    let tree = Tree::new(size, arity).unwrap_or_else(|e| die(rank_s, e.to_string()));
    let listener = bind_listener(addrs[me as usize])
        .unwrap_or_else(|e| die(rank_s, format!("binding {}: {e}", addrs[me as usize])));
    let job = env("RLAUNCH_JOBID", rank_s)
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
    let cfg = TcpConfig {
        job,
        recv_timeout: Duration::from_secs(60),
        ..TcpConfig::default()
    };
    let mut tr = TcpTransport::connect(me, &tree, listener, &addrs, &cfg)
        .unwrap_or_else(|e| die(rank_s, e.to_string()));
    let mut run = |epoch: u64| {
        let mut c = Collective::new(tree, me, Kind::Barrier, epoch)
            .unwrap_or_else(|e| die(rank_s, e.to_string()));
        run_barrier(&mut tr, &mut c).unwrap_or_else(|e| die(rank_s, e.to_string()));
    };
    // Warm-up: connections, page faults and the first scheduling of every reader thread.
    let warm = (iters / 10).max(10);
    for e in 0..u64::from(warm) {
        run(e);
    }
    let start = Instant::now();
    for e in 0..u64::from(iters) {
        run(u64::from(warm) + e);
    }
    let us = start.elapsed().as_secs_f64() * 1e6 / f64::from(iters);
    if me == 0 {
        println!("barrier members {size} arity {arity} iters {iters} us {us:.1}");
    }
}

fn visible(rank_s: &str) {
    let me: u32 = rank_s
        .parse()
        .unwrap_or_else(|_| die(rank_s, "RLAUNCH_RANK is not a number".into()));
    let t = table(rank_s);
    let size = t.header().rank_count;
    let _ = addr_of(&t, me, rank_s);
    let _ = addr_of(&t, (me + 1) % size, rank_s);
    println!("visible {me} {}", realtime_ns());
}

struct Pmi {
    sock: std::fs::File,
}

impl Pmi {
    fn request(&mut self, rank: &str, req: &str, expect: &str) -> String {
        self.sock
            .write_all(req.as_bytes())
            .unwrap_or_else(|e| die(rank, format!("PMI write: {e}")));
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        loop {
            match self.sock.read(&mut b) {
                Ok(1) if b[0] == b'\n' => break,
                Ok(1) => line.push(b[0]),
                Ok(_) => die(rank, "PMI server closed the connection".into()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => die(rank, format!("PMI read: {e}")),
            }
        }
        let line = String::from_utf8_lossy(&line).into_owned();
        if !line.starts_with(&format!("cmd={expect}")) {
            die(rank, format!("sent {:?}, got {line:?}", req.trim_end()));
        }
        line
    }
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split(' ')
        .find_map(|kv| kv.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

fn modex(rank_s: &str, bytes: usize) {
    let me: u32 = rank_s
        .parse()
        .unwrap_or_else(|_| die(rank_s, "RLAUNCH_RANK is not a number".into()));
    let fd: i32 = env("PMI_FD", rank_s)
        .parse()
        .unwrap_or_else(|_| die(rank_s, "PMI_FD is not a number".into()));
    let size: u32 = env("PMI_SIZE", rank_s)
        .parse()
        .unwrap_or_else(|_| die(rank_s, "PMI_SIZE is not a number".into()));
    // SAFETY: PMI_FD is a socket the launcher passed to this process for exactly this use.
    let mut p = Pmi {
        sock: unsafe { std::fs::File::from_raw_fd(fd) },
    };
    p.request(
        rank_s,
        "cmd=init pmi_version=1 pmi_subversion=1\n",
        "response_to_init",
    );
    let l = p.request(rank_s, "cmd=get_my_kvsname\n", "my_kvsname");
    let kvs = field(&l, "kvsname")
        .unwrap_or_else(|| die(rank_s, format!("no kvsname in {l:?}")))
        .to_string();
    // Hex, as MPI libraries encode their business cards.
    let value: String = (0..bytes)
        .map(|i| format!("{:02x}", (i as u32 ^ me) as u8))
        .collect();
    p.request(
        rank_s,
        &format!("cmd=put kvsname={kvs} key=ep-{me} value={value}\n"),
        "put_result",
    );
    p.request(rank_s, "cmd=barrier_in\n", "barrier_out");
    for r in (0..size).filter(|&r| r != me) {
        let l = p.request(
            rank_s,
            &format!("cmd=get kvsname={kvs} key=ep-{r}\n"),
            "get_result",
        );
        if field(&l, "value").map(str::len) != Some(bytes * 2) {
            die(
                rank_s,
                format!("rank {r}'s value is missing or short: {l:?}"),
            );
        }
    }
    println!("modex {me} {}", realtime_ns());
    let _ = std::io::stdout().flush();
    p.request(rank_s, "cmd=finalize\n", "finalize_ack");
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rank = std::env::var("RLAUNCH_RANK").unwrap_or_else(|_| "?".into());
    let num = |i: usize| -> u32 {
        args.get(i).and_then(|s| s.parse().ok()).unwrap_or_else(|| die(&rank, format!("usage: launch_bench barrier ARITY ITERS | visible | modex BYTES (got {args:?})")))
    };
    match args.first().map(String::as_str) {
        Some("barrier") => barrier(&rank, num(1), num(2)),
        Some("visible") => visible(&rank),
        Some("modex") => modex(&rank, num(1) as usize),
        _ => die(
            &rank,
            format!(
                "usage: launch_bench barrier ARITY ITERS | visible | modex BYTES (got {args:?})"
            ),
        ),
    }
}
