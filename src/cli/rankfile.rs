//! Open MPI's `--rankfile FILE`: one line per rank, `rank N=HOST slot=SPEC`, where HOST is a host
//! name or `+nK` (the K-th node of the job's node list) and SPEC is CPUs as the kernel numbers
//! them (`slot=0-3`, `slot=1,5`) or cores of a package in logical order (`slot=1:0-2`, Open MPI's
//! socket:core). `#` starts a comment. Pure: the caller reads the file.

use fabrics::cpuset::CpuSet;
use fabrics::placement::Slot;

/// Where a line puts its rank.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    Name(String),
    /// `+nK`: the K-th node of the job's node list.
    Index(u32),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    pub rank: u32,
    pub host: Host,
    pub slot: Slot,
}

/// The lines of a rank file, sorted by rank; every rank from 0 to the highest has exactly one.
pub fn parse(text: &str) -> Result<Vec<Line>, String> {
    let mut lines = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let at = |what: String| format!("line {}: {what}", n + 1);
        let content = raw.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        let mut words = content.split_whitespace();
        let (Some("rank"), Some(assign)) = (words.next(), words.next()) else {
            return Err(at(format!("'{content}': expected rank N=HOST slot=SPEC")));
        };
        let (rank, host) = assign.split_once('=').ok_or_else(|| at(format!("'{assign}': expected N=HOST")))?;
        let rank: u32 = rank.parse().map_err(|_| at(format!("'{rank}': expected a rank number")))?;
        let host = match host.strip_prefix("+n") {
            Some(k) => Host::Index(k.parse().map_err(|_| at(format!("'{host}': expected +nK with K a node index")))?),
            None if !host.is_empty() => Host::Name(host.to_string()),
            None => return Err(at(format!("rank {rank} names no host"))),
        };
        let spec = words.next().and_then(|w| w.strip_prefix("slot=")).ok_or_else(|| at(format!("rank {rank}: expected slot=SPEC after the host")))?;
        if let Some(extra) = words.next() {
            return Err(at(format!("'{extra}': nothing may follow slot=SPEC")));
        }
        lines.push(Line { rank, host, slot: slot(spec).map_err(at)? });
    }
    lines.sort_by_key(|l| l.rank);
    for (i, l) in lines.iter().enumerate() {
        if l.rank as usize > i {
            return Err(format!("rank {i} has no line (every rank from 0 to {} needs one)", lines.last().map_or(0, |l| l.rank)));
        }
        if l.rank as usize != i {
            return Err(format!("rank {} has two lines", l.rank));
        }
    }
    if lines.is_empty() {
        return Err("no rank in it; write one line per rank, like 'rank 0=node1 slot=0-3'".into());
    }
    Ok(lines)
}

fn slot(spec: &str) -> Result<Slot, String> {
    let numbers = |list: &str| -> Result<Vec<u32>, String> {
        CpuSet::parse_list(list).filter(|s| !s.is_empty()).map(|s| s.iter().collect()).ok_or_else(|| format!("slot={spec}: '{list}' is not a list like 0-2,5"))
    };
    if !spec.contains(':') {
        return Ok(Slot::Cpus(CpuSet::parse_list(spec).filter(|s| !s.is_empty()).ok_or_else(|| format!("slot={spec}: expected CPUs like 0-3 or package:cores like 1:0-2"))?));
    }
    // `0:0-1,1:0-1`: a part with ':' starts a package's group, one without adds cores to it.
    let mut groups: Vec<(u32, Vec<u32>)> = Vec::new();
    for part in spec.split(',') {
        match part.split_once(':') {
            Some((package, cores)) => {
                let package = package.parse().map_err(|_| format!("slot={spec}: '{package}' is not a package number"))?;
                groups.push((package, numbers(cores)?));
            }
            None => groups.last_mut().ok_or_else(|| format!("slot={spec}: cores before a package"))?.1.extend(numbers(part)?),
        }
    }
    Ok(Slot::Cores(groups))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_hosts_and_slots() {
        let text = "# two nodes\nrank 1=bb slot=0:0,1\nrank 0=aa slot=1:0-2\nrank 2=+n1 slot=4-5 # cpus\n";
        let l = parse(text).unwrap();
        assert_eq!(l[0], Line { rank: 0, host: Host::Name("aa".into()), slot: Slot::Cores(vec![(1, vec![0, 1, 2])]) });
        assert_eq!(l[1].slot, Slot::Cores(vec![(0, vec![0, 1])]));
        assert_eq!(parse("rank 0=a slot=0:0-1,1:0-1\n").unwrap()[0].slot, Slot::Cores(vec![(0, vec![0, 1]), (1, vec![0, 1])]));
        assert_eq!((l[2].host.clone(), l[2].slot.clone()), (Host::Index(1), Slot::Cpus(CpuSet::parse_list("4-5").unwrap())));
        assert_eq!(parse("rank 1=a slot=0\n").unwrap_err(), "rank 0 has no line (every rank from 0 to 1 needs one)");
        assert_eq!(parse("rank 0=a slot=0\nrank 0=b slot=1\n").unwrap_err(), "rank 0 has two lines");
        assert_eq!(parse("rank 0=a\n").unwrap_err(), "line 1: rank 0: expected slot=SPEC after the host");
        assert_eq!(parse("node a\n").unwrap_err(), "line 1: 'node a': expected rank N=HOST slot=SPEC");
        assert_eq!(parse("rank 0=a slot=x:1\n").unwrap_err(), "line 1: slot=x:1: 'x' is not a package number");
        assert_eq!(parse("# none\n").unwrap_err(), "no rank in it; write one line per rank, like 'rank 0=node1 slot=0-3'");
    }
}
