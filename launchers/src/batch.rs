//! Reading a Grid Engine or LSF allocation: where the nodes come from. How daemons start there
//! (`qrsh -inherit`, `blaunch`, else ssh) is `crate::start::batch`'s business.
//!
//! Grid Engine: `JOB_ID`, and `PE_HOSTFILE` with one line per host, `HOST SLOTS QUEUE PROCESSORS`.
//! LSF: `LSB_JOBID`, and `LSB_DJOB_HOSTFILE` (one line per slot, as PBS's node file) or else
//! `LSB_MCPU_HOSTS` (`host1 4 host2 4`).

use crate::nodes::{check_host_name, Merger, Node, NodeListError, Origin};
use crate::pbs::parse_pbs_nodefile;

/// A batch system's allocation: its name for messages ("Grid Engine job 42") and its nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchAllocation {
    pub name: String,
    pub nodes: Vec<Node>,
}

/// `HOST SLOTS` pairs, from `display` (a file name or a variable), merged per host in first-seen order.
fn parse_host_counts<'a>(display: &str, items: impl Iterator<Item = (usize, &'a str, Option<&'a str>)>) -> Result<Vec<Node>, NodeListError> {
    let mut merger = Merger::default();
    for (line, host, count) in items {
        let at = Origin::Line { file: display.to_string(), line };
        if let Err(why) = check_host_name(host) {
            return Err(NodeListError::BadHost { at, got: host.to_string(), why });
        }
        let slots = count.and_then(|c| c.parse::<u32>().ok()).filter(|&n| n >= 1).ok_or_else(|| NodeListError::BadCount {
            at: at.clone(),
            key: "slots",
            got: count.unwrap_or("").to_string(),
            host: host.to_string(),
        })?;
        merger.add(at, Node { name: host.to_string(), user: None, slots, max_slots: None })?;
    }
    if merger.nodes.is_empty() {
        return Err(NodeListError::EmptyFile { file: display.to_string() });
    }
    Ok(merger.nodes)
}

/// Grid Engine's `PE_HOSTFILE`: `HOST SLOTS QUEUE PROCESSORS` per line (only the first two are read).
pub fn parse_pe_hostfile(display: &str, text: &str) -> Result<Vec<Node>, NodeListError> {
    let items = text.lines().enumerate().filter_map(|(i, l)| {
        let mut w = l.split_whitespace();
        w.next().map(|host| (i + 1, host, w.next()))
    });
    parse_host_counts(display, items)
}

/// LSF's `LSB_MCPU_HOSTS`: `host1 4 host2 4`.
pub fn parse_lsb_mcpu_hosts(text: &str) -> Result<Vec<Node>, NodeListError> {
    let words: Vec<&str> = text.split_whitespace().collect();
    parse_host_counts("LSB_MCPU_HOSTS", words.chunks(2).map(|c| (1, c[0], c.get(1).copied())))
}

fn read(what: &'static str, path: &str) -> Result<String, NodeListError> {
    std::fs::read_to_string(path).map_err(|source| NodeListError::Io { what, path: path.to_string(), source })
}

/// Inside a Grid Engine parallel job (`JOB_ID` and `PE_HOSTFILE` set): its nodes. `None` outside.
/// `JOB_ID` alone (a serial job) has no host file and is not an allocation.
pub fn detect_grid_engine(env: &dyn Fn(&str) -> Option<String>) -> Result<Option<BatchAllocation>, NodeListError> {
    let Some(job_id) = env("JOB_ID").filter(|v| !v.trim().is_empty()) else {
        return Ok(None);
    };
    let Some(path) = env("PE_HOSTFILE").filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let nodes = parse_pe_hostfile(&path, &read("Grid Engine host file", &path)?)?;
    Ok(Some(BatchAllocation { name: format!("Grid Engine job {job_id}"), nodes }))
}

/// Inside an LSF job (`LSB_JOBID`): its nodes from `LSB_DJOB_HOSTFILE`, else `LSB_MCPU_HOSTS`.
pub fn detect_lsf(env: &dyn Fn(&str) -> Option<String>) -> Result<Option<BatchAllocation>, NodeListError> {
    let Some(job_id) = env("LSB_JOBID").filter(|v| !v.trim().is_empty()) else {
        return Ok(None);
    };
    let nodes = match (env("LSB_DJOB_HOSTFILE").filter(|v| !v.is_empty()), env("LSB_MCPU_HOSTS").filter(|v| !v.trim().is_empty())) {
        (Some(path), _) => parse_pbs_nodefile(&path, &read("LSF host file", &path)?)?,
        (None, Some(list)) => parse_lsb_mcpu_hosts(&list)?,
        (None, None) => return Err(NodeListError::MissingVar { var: "LSB_DJOB_HOSTFILE (or LSB_MCPU_HOSTS)", job_var: "LSB_JOBID", job_id }),
    };
    Ok(Some(BatchAllocation { name: format!("LSF job {job_id}"), nodes }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    fn slots(nodes: &[Node]) -> Vec<(&str, u32)> {
        nodes.iter().map(|n| (n.name.as_str(), n.slots)).collect()
    }

    fn scratch(name: &str, text: &str) -> (std::path::PathBuf, String) {
        let dir = std::env::temp_dir().join(format!("launchers-batch-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("hosts");
        std::fs::write(&file, text).unwrap();
        let path = file.to_str().unwrap().to_string();
        (dir, path)
    }

    #[test]
    fn pe_hostfile_lines_give_hosts_and_slots() {
        let nodes = parse_pe_hostfile("pe", "n01.cl 4 all.q@n01.cl UNDEFINED\nn02.cl 2 all.q@n02.cl <NULL>\n\nn01.cl 1 big.q@n01.cl UNDEFINED\n").unwrap();
        assert_eq!(slots(&nodes), [("n01.cl", 5), ("n02.cl", 2)]);
        let e = |t: &str| parse_pe_hostfile("/sge/pe_hostfile", t).unwrap_err().to_string();
        assert_eq!(e("n01 x all.q@n01 UNDEFINED\n"), "/sge/pe_hostfile:1: invalid slots 'x' for n01; expected a whole number from 1 to 4294967295");
        assert_eq!(e("n01\n"), "/sge/pe_hostfile:1: invalid slots '' for n01; expected a whole number from 1 to 4294967295");
        assert_eq!(e("\n"), "/sge/pe_hostfile: no hosts found; list one host per line, e.g. 'node01 slots=4'");
    }

    #[test]
    fn grid_engine_is_detected_from_job_id_and_pe_hostfile() {
        let (dir, path) = scratch("sge", "a 2 all.q@a UNDEFINED\nb 2 all.q@b UNDEFINED\n");
        let alloc = detect_grid_engine(&env_of(&[("JOB_ID", "42"), ("PE_HOSTFILE", &path), ("NSLOTS", "4")])).unwrap().unwrap();
        std::fs::remove_dir_all(dir).unwrap();
        assert_eq!(alloc.name, "Grid Engine job 42");
        assert_eq!(slots(&alloc.nodes), [("a", 2), ("b", 2)]);
        assert_eq!(detect_grid_engine(&env_of(&[("JOB_ID", "42")])).unwrap(), None, "a serial job has no allocation");
        assert_eq!(detect_grid_engine(&env_of(&[("PE_HOSTFILE", "/x")])).unwrap(), None);
        let e = detect_grid_engine(&env_of(&[("JOB_ID", "42"), ("PE_HOSTFILE", "/nonexistent/pe")])).unwrap_err().to_string();
        assert!(e.starts_with("cannot read Grid Engine host file /nonexistent/pe: "), "{e}");
    }

    #[test]
    fn lsf_is_detected_from_the_host_file_or_mcpu_hosts() {
        let (dir, path) = scratch("lsf", "h1\nh1\nh2\n");
        let alloc = detect_lsf(&env_of(&[("LSB_JOBID", "7"), ("LSB_DJOB_HOSTFILE", &path), ("LSB_MCPU_HOSTS", "zz 9")])).unwrap().unwrap();
        std::fs::remove_dir_all(dir).unwrap();
        assert_eq!(alloc.name, "LSF job 7");
        assert_eq!(slots(&alloc.nodes), [("h1", 2), ("h2", 1)], "the host file wins over LSB_MCPU_HOSTS");
        let alloc = detect_lsf(&env_of(&[("LSB_JOBID", "7"), ("LSB_MCPU_HOSTS", "h1 4 h2 2 ")])).unwrap().unwrap();
        assert_eq!(slots(&alloc.nodes), [("h1", 4), ("h2", 2)]);
        assert_eq!(detect_lsf(&env_of(&[("LSB_MCPU_HOSTS", "h1 4")])).unwrap(), None);
        assert_eq!(
            detect_lsf(&env_of(&[("LSB_JOBID", "7")])).unwrap_err().to_string(),
            "LSB_DJOB_HOSTFILE (or LSB_MCPU_HOSTS) is not set although LSB_JOBID=7 is; run inside the job or unset LSB_JOBID"
        );
        assert_eq!(
            parse_lsb_mcpu_hosts("h1 4 h2").unwrap_err().to_string(),
            "LSB_MCPU_HOSTS:1: invalid slots '' for h2; expected a whole number from 1 to 4294967295"
        );
    }
}
