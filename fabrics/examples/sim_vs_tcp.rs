//! Barrier and allgather time of the fabrics k-ary tree over TCP (loopback) and over the simulated
//! RDMA link (`SimLink`: Unix sockets, with `RdmaTransport`'s credits and chunking on top), every
//! member a thread of this process. For `scripts/bench fabrics`. The simulated numbers say how
//! the protocol and its simulation cost on this machine, nothing about RDMA hardware.
//!
//! Usage: `sim_vs_tcp MEMBERS FANOUT ITERS` prints `barrier|allgather tcp|sim MEMBERS FANOUT us X`
//! (microseconds per collective, after warm-up; allgather contributions are 256 bytes).

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use fabrics::collective::{Collective, Kind, Tree};
use fabrics::rdma::RdmaTransport;
use fabrics::sim_link::{SimConfig, SimLink};
use fabrics::transport::{bind_listener, mem_network, run_collective, TcpConfig, TcpTransport, Transport};

const WARM: u64 = 20;
const T: Duration = Duration::from_secs(60);

/// Runs `iters` collectives of `kind` on every member; returns microseconds per collective at
/// member 0.
fn time<F>(size: u32, arity: u32, kind: Kind, iters: u64, make: F) -> f64
where
    F: Fn(u32, Tree) -> Box<dyn Transport + Send> + Send + Sync + 'static,
{
    let tree = Tree::new(size, arity).expect("tree");
    let make = Arc::new(make);
    let all_done = Arc::new(Barrier::new(size as usize));
    let hs: Vec<_> = (0..size)
        .map(|me| {
            let (make, all_done) = (make.clone(), all_done.clone());
            std::thread::spawn(move || {
                let mut t = make(me, tree);
                let data = if kind == Kind::Allgather { vec![me as u8; 256] } else { Vec::new() };
                let mut start = Instant::now();
                for epoch in 0..WARM + iters {
                    if epoch == WARM {
                        start = Instant::now();
                    }
                    let mut c = Collective::new(tree, me, kind, epoch + 1).expect("collective");
                    run_collective(t.as_mut(), &mut c, data.clone()).expect("collective run");
                }
                let us = start.elapsed().as_secs_f64() * 1e6 / iters as f64;
                // Links are released only when every member is done (a peer may still need credits).
                all_done.wait();
                us
            })
        })
        .collect();
    let us: Vec<f64> = hs.into_iter().map(|h| h.join().expect("member")).collect();
    us[0]
}

fn tcp(size: u32) -> impl Fn(u32, Tree) -> Box<dyn Transport + Send> + Send + Sync + 'static {
    let listeners: Vec<_> = (0..size).map(|_| bind_listener("127.0.0.1:0".parse().unwrap()).expect("bind")).collect();
    let addrs: Vec<_> = listeners.iter().map(|l| l.local_addr().expect("addr")).collect();
    let listeners = std::sync::Mutex::new(listeners.into_iter().map(Some).collect::<Vec<_>>());
    move |me, tree| {
        let l = listeners.lock().unwrap()[me as usize].take().expect("one listener per member");
        let cfg = TcpConfig { recv_timeout: T, ..Default::default() };
        Box::new(TcpTransport::connect(me, &tree, l, &addrs, &cfg).expect("tcp connect"))
    }
}

fn sim(size: u32) -> impl Fn(u32, Tree) -> Box<dyn Transport + Send> + Send + Sync + 'static {
    let oob = std::sync::Mutex::new(mem_network(size, T).into_iter().map(Some).collect::<Vec<_>>());
    move |me, tree| {
        let mut oob = oob.lock().unwrap()[me as usize].take().expect("one oob per member");
        let peers: Vec<u32> = tree.parent(me).into_iter().chain(tree.children(me)).collect();
        let link = SimLink::establish(me, SimConfig::default(), &peers, &mut oob).expect("sim bring-up");
        Box::new(RdmaTransport::new(link, T).expect("transport"))
    }
}

fn main() {
    let args: Vec<u32> = std::env::args().skip(1).map(|a| a.parse().expect("MEMBERS FANOUT ITERS")).collect();
    let [size, arity, iters] = args[..] else { panic!("usage: sim_vs_tcp MEMBERS FANOUT ITERS") };
    for (kind, name) in [(Kind::Barrier, "barrier"), (Kind::Allgather, "allgather")] {
        let t = time(size, arity, kind, u64::from(iters), tcp(size));
        println!("{name} tcp {size} {arity} us {t:.1}");
        let s = time(size, arity, kind, u64::from(iters), sim(size));
        println!("{name} sim {size} {arity} us {s:.1}");
    }
}
