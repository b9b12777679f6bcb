//! The built-in sensors' I/O: one pass over their sources under a root (`/` on a node, a fixture
//! tree in tests), as raw [`Reading`]s. Nothing is decided here; a source that cannot be read
//! becomes [`Reading::Missing`] with the path and the error, which the engine turns into
//! `unknown` once.

use super::{Link, Reading, Trip};
use std::io;
use std::path::Path;

/// Reads every built-in source under `root`. `nics`: the job's NICs on this node (interface
/// names, or RDMA `DEVICE:PORT`), `None` while they are not known yet (the NIC sensor waits).
pub fn read_builtins(root: &Path, nics: Option<&[String]>) -> Vec<Reading> {
    let mut out = Vec::new();
    thermal(root, &mut out);
    edac(root, &mut out);
    out.push(memory(root));
    if let Some(nics) = nics {
        if nics.is_empty() {
            out.push(Reading::Missing { sensor: "nic".into(), why: "no NIC of the job on this node (no rank here, or --fabric off)".into() });
        }
        out.extend(nics.iter().map(|n| nic(root, n)));
    }
    out.push(load(root));
    out
}

fn read(root: &Path, rel: &str) -> Result<String, String> {
    let p = root.join(rel);
    std::fs::read_to_string(&p).map(|s| s.trim().to_string()).map_err(|e| format!("cannot read {}: {e}", p.display()))
}

fn number<T: std::str::FromStr>(root: &Path, rel: &str) -> Result<T, String> {
    let s = read(root, rel)?;
    s.parse().map_err(|_| format!("{}: cannot parse {s:?} as a number", root.join(rel).display()))
}

/// Directory entries whose name starts with `prefix`, sorted by their number (`zone2` before
/// `zone10`).
fn entries(root: &Path, rel: &str, prefix: &str) -> io::Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(root.join(rel))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix) && n[prefix.len()..].chars().all(|c| c.is_ascii_digit()) && n.len() > prefix.len())
        .collect();
    names.sort_by_key(|n| n[prefix.len()..].parse::<u64>().unwrap_or(u64::MAX));
    Ok(names)
}

/// The numbered entries of a source's directory, or the reading that says why there is none.
/// `none`: what is missing (for the message), `hint`: what that usually means.
fn sources(root: &Path, dir: &str, prefix: &str, sensor: &str, none: &str, hint: &str) -> Result<Vec<String>, Reading> {
    let path = root.join(dir);
    let why = match entries(root, dir, prefix) {
        Ok(e) if !e.is_empty() => return Ok(e),
        Ok(_) => format!("no {none} under {}{hint}", path.display()),
        Err(e) => format!("cannot list {}: {e}{hint}", path.display()),
    };
    Err(Reading::Missing { sensor: sensor.into(), why })
}

fn thermal(root: &Path, out: &mut Vec<Reading>) {
    const DIR: &str = "sys/class/thermal";
    let zones = match sources(root, DIR, "thermal_zone", "thermal", "thermal zone", "") {
        Ok(z) => z,
        Err(missing) => return out.push(missing),
    };
    for zone in zones {
        let base = format!("{DIR}/{zone}");
        let temp_mc = match number::<i64>(root, &format!("{base}/temp")) {
            Ok(t) => t,
            Err(why) => {
                out.push(Reading::Missing { sensor: format!("thermal:{zone}"), why });
                continue;
            }
        };
        let kind = read(root, &format!("{base}/type")).unwrap_or_default();
        let mut trips = Vec::new();
        for i in 0.. {
            let Ok(ty) = read(root, &format!("{base}/trip_point_{i}_type")) else { break };
            let trip = match ty.as_str() {
                "passive" => Trip::Passive,
                "hot" => Trip::Hot,
                "critical" => Trip::Critical,
                _ => continue,
            };
            // Unset trip points read as 0 or negative on some platforms.
            if let Ok(t) = number::<i64>(root, &format!("{base}/trip_point_{i}_temp")) {
                if t > 0 {
                    trips.push((trip, t));
                }
            }
        }
        out.push(Reading::Thermal { zone, kind, temp_mc, trips });
    }
}

fn edac(root: &Path, out: &mut Vec<Reading>) {
    const DIR: &str = "sys/devices/system/edac/mc";
    let mcs = match sources(root, DIR, "mc", "edac", "memory controller", " (no EDAC driver)") {
        Ok(m) => m,
        Err(missing) => return out.push(missing),
    };
    for mc in mcs {
        let counts = number::<u64>(root, &format!("{DIR}/{mc}/ce_count")).and_then(|ce| Ok((ce, number::<u64>(root, &format!("{DIR}/{mc}/ue_count"))?)));
        out.push(match counts {
            Ok((ce, ue)) => Reading::Edac { mc, ce, ue },
            Err(why) => Reading::Missing { sensor: format!("edac:{mc}"), why },
        });
    }
}

fn memory(root: &Path) -> Reading {
    let text = match read(root, "proc/meminfo") {
        Ok(t) => t,
        Err(why) => return Reading::Missing { sensor: "memory".into(), why },
    };
    let field = |name: &str| text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':')?.split_whitespace().next()?.parse::<u64>().ok());
    match (field("MemAvailable"), field("MemTotal")) {
        (Some(available_kib), Some(total_kib)) => Reading::Memory { available_kib, total_kib },
        _ => Reading::Missing { sensor: "memory".into(), why: format!("{}: no MemAvailable or MemTotal line", root.join("proc/meminfo").display()) },
    }
}

fn nic(root: &Path, name: &str) -> Reading {
    let sensor = format!("nic:{name}");
    let missing = |why: String| Reading::Missing { sensor: sensor.clone(), why };
    if let Some((dev, port)) = name.split_once(':') {
        let base = format!("sys/class/infiniband/{dev}/ports/{port}");
        let state = match read(root, &format!("{base}/state")) {
            Ok(s) => s,
            Err(why) => return missing(why),
        };
        let errors: u64 = ["port_rcv_errors", "port_xmit_discards", "symbol_error", "link_downed"].iter().filter_map(|c| number::<u64>(root, &format!("{base}/counters/{c}")).ok()).sum();
        // "4: ACTIVE"; anything else carries no traffic.
        let up = state.split(':').nth(1).map(str::trim) == Some("ACTIVE");
        return Reading::Nic { name: name.into(), link: if up { Link::Up } else { Link::Down }, why_down: format!("port state {state}"), errors };
    }
    let base = format!("sys/class/net/{name}");
    let oper = match read(root, &format!("{base}/operstate")) {
        Ok(s) => s,
        Err(why) => return missing(why),
    };
    // A down link refuses to tell its carrier (EINVAL): operstate says enough then.
    let carrier = read(root, &format!("{base}/carrier")).ok();
    let errors: u64 = ["rx_errors", "tx_errors", "rx_dropped"].iter().filter_map(|c| number::<u64>(root, &format!("{base}/statistics/{c}")).ok()).sum();
    let (link, why_down) = match (oper.as_str(), carrier.as_deref()) {
        ("down" | "lowerlayerdown" | "notpresent", _) => (Link::Down, format!("operstate {oper}")),
        (_, Some("0")) => (Link::Down, "no carrier".to_string()),
        _ => (Link::Up, String::new()),
    };
    Reading::Nic { name: name.into(), link, why_down, errors }
}

fn load(root: &Path) -> Reading {
    let load1 = read(root, "proc/loadavg").and_then(|s| s.split_whitespace().next().and_then(|f| f.parse::<f64>().ok()).ok_or_else(|| format!("{}: cannot parse {s:?}", root.join("proc/loadavg").display())));
    let cpus = read(root, "sys/devices/system/cpu/online").and_then(|s| crate::cpuset::CpuSet::parse_list(&s).filter(|c| !c.is_empty()).map(|c| c.len() as u32).ok_or_else(|| format!("{}: cannot parse {s:?} as a CPU list", root.join("sys/devices/system/cpu/online").display())));
    match (load1, cpus) {
        (Ok(load1), Ok(cpus)) => Reading::Load { load1, cpus },
        (Err(why), _) | (_, Err(why)) => Reading::Missing { sensor: "load".into(), why },
    }
}
