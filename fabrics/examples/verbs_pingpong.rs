//! For `scripts/rdma-check` on a machine with an RDMA device (never run on hardware while
//! writing it: there was none). Modes:
//!
//! - `verbs_pingpong probe`: what `fabrics::verbs::probe` says (exit 1 unless available);
//! - `verbs_pingpong pair DEVICE PORT GID_INDEX ITERS`: two processes (this one and a child it
//!   starts) connect one reliable-connected queue pair each through `VerbsLink` (queue-pair
//!   infos exchanged over TCP on loopback), and ping-pong ITERS messages through `RdmaTransport`;
//!   prints the round trip in microseconds. RoCE needs GID_INDEX of a RoCE v2 GID (see
//!   `rlaunch --inventory`); InfiniBand uses 0, and the port's LID is read from sysfs.

use std::time::{Duration, Instant};

use fabrics::collective::{Collective, Kind, Tree};
use fabrics::rdma::RdmaTransport;
use fabrics::transport::{bind_listener, run_barrier, TcpConfig, TcpTransport, Transport};
use fabrics::verbs::{probe, VerbsStatus};
use fabrics::verbs_link::{VerbsLink, VerbsLinkConfig};

const T: Duration = Duration::from_secs(30);

fn lid(device: &str, port: u8) -> u16 {
    let p = format!("/sys/class/infiniband/{device}/ports/{port}/lid");
    std::fs::read_to_string(&p)
        .ok()
        .and_then(|s| u16::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok())
        .unwrap_or(0)
}

fn member(me: u32, addrs: &[std::net::SocketAddr], cfg: VerbsLinkConfig, iters: u32) -> Result<(), String> {
    let tree = Tree::new(2, 1).map_err(|e| e.to_string())?;
    let l = bind_listener(addrs[me as usize]).map_err(|e| e.to_string())?;
    let tcfg = TcpConfig { recv_timeout: T, ..Default::default() };
    let mut oob = TcpTransport::connect(me, &tree, l, addrs, &tcfg).map_err(|e| e.to_string())?;
    let peer = 1 - me;
    let link = VerbsLink::establish(cfg, &[peer], &mut oob).map_err(|e| format!("bring-up: {e}"))?;
    let mut t = RdmaTransport::new(link, T).map_err(|e| e.to_string())?;
    let start = Instant::now();
    for i in 0..iters {
        let msg = format!("ping {i}").into_bytes();
        if me == 0 {
            t.send(peer, &msg).map_err(|e| e.to_string())?;
            let (_, back) = t.recv().map_err(|e| e.to_string())?;
            if back != msg {
                return Err(format!("message {i} came back changed"));
            }
        } else {
            let (_, m) = t.recv().map_err(|e| e.to_string())?;
            t.send(peer, &m).map_err(|e| e.to_string())?;
        }
    }
    if me == 0 {
        println!("pingpong {iters} round trips, us {:.1}", start.elapsed().as_secs_f64() * 1e6 / f64::from(iters.max(1)));
    }
    // Both done before either releases its queue pair (the other may still return credits).
    let mut done = Collective::new(tree, me, Kind::Barrier, 1).map_err(|e| e.to_string())?;
    run_barrier(&mut oob, &mut done).map_err(|e| e.to_string())?;
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("probe") => {
            let p = probe();
            println!("{:?}; active MTUs {:?}", p.status, p.active_mtus);
            std::process::exit(if matches!(p.status, VerbsStatus::Available { .. }) { 0 } else { 1 });
        }
        Some("pair") | Some("member") if args.len() >= 5 => {
            let (device, port, gid_index, iters) = (args[1].clone(), args[2].parse().expect("PORT"), args[3].parse().expect("GID_INDEX"), args[4].parse().expect("ITERS"));
            let p = probe();
            // Bytes to `enum ibv_mtu` (256 = 1 ... 4096 = 5); 1024 when verbs could not say.
            let bytes = p.active_mtus.iter().find(|(d, pt, _)| *d == device && *pt == port).map_or(1024, |m| m.2);
            let mtu_enum = (1..=5).find(|e| 128u32 << e == bytes).unwrap_or(3);
            let cfg = VerbsLinkConfig { device: device.clone(), port, gid_index, lid: lid(&device, port), mtu_enum, slot_size: 4096, recv_depth: 8, send_bufs: 16 };
            let (me, addrs) = if args[0] == "pair" {
                let ls: Vec<_> = (0..2).map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind")).collect();
                let addrs: Vec<_> = ls.iter().map(|l| l.local_addr().expect("addr")).collect();
                drop(ls);
                let list = addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(",");
                let child = std::process::Command::new(std::env::current_exe().expect("exe"))
                    .args(["member", &args[1], &args[2], &args[3], &args[4], &list])
                    .spawn()
                    .expect("starting the second process");
                (0, (addrs, Some(child)))
            } else {
                let addrs = args[5].split(',').map(|a| a.parse().expect("address")).collect();
                (1, (addrs, None))
            };
            let (addrs, child) = addrs;
            let r = member(me, &addrs, cfg, iters);
            let child_ok = child.map_or(true, |mut c| c.wait().is_ok_and(|s| s.success()));
            match r {
                Ok(()) if child_ok => {}
                Ok(()) => {
                    eprintln!("verbs_pingpong: the second process failed");
                    std::process::exit(1);
                }
                Err(e) => {
                    eprintln!("verbs_pingpong: member {me}: {e}");
                    std::process::exit(1);
                }
            }
        }
        _ => {
            eprintln!("usage: verbs_pingpong probe | pair DEVICE PORT GID_INDEX ITERS");
            std::process::exit(2);
        }
    }
}
