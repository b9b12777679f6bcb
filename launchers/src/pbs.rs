//! Reading a PBS / Torque allocation: `PBS_JOBID` and the node file named by `PBS_NODEFILE`.

use crate::nodes::{check_host_name, Merger, Node, NodeListError, Origin};

/// Parses a PBS node file: one line per slot, a host repeated once per slot it has. Hosts come
/// out with their slots counted, in first-seen order.
pub fn parse_pbs_nodefile(display: &str, text: &str) -> Result<Vec<Node>, NodeListError> {
    let mut merger = Merger::default();
    for (index, line) in text.lines().enumerate() {
        let at = Origin::Line {
            file: display.to_string(),
            line: index + 1,
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line.split_whitespace().nth(1).is_some() {
            return Err(NodeListError::ExtraTokens {
                at,
                got: line.to_string(),
            });
        }
        if let Err(why) = check_host_name(line) {
            return Err(NodeListError::BadHost {
                at,
                got: line.to_string(),
                why,
            });
        }
        merger.add(
            at,
            Node {
                name: line.to_string(),
                user: None,
                slots: 1,
                max_slots: None,
            },
        )?;
    }
    if merger.nodes.is_empty() {
        return Err(NodeListError::EmptyFile {
            file: display.to_string(),
        });
    }
    Ok(merger.nodes)
}

/// What a PBS job gives rlaunch to run on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PbsAllocation {
    pub job_id: String,
    pub nodes: Vec<Node>,
    /// `PBS_O_WORKDIR`: where `qsub` was run, which PBS does not make the current directory.
    pub workdir: Option<String>,
}

/// Reads the allocation from `PBS_JOBID`, `PBS_NODEFILE` and `PBS_O_WORKDIR`; `None` when
/// `PBS_JOBID` is unset or empty. The one function in this crate that does I/O: it reads the
/// node file.
pub fn detect_pbs(
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<PbsAllocation>, NodeListError> {
    let Some(job_id) = env("PBS_JOBID").filter(|v| !v.trim().is_empty()) else {
        return Ok(None);
    };
    let Some(path) = env("PBS_NODEFILE").filter(|v| !v.is_empty()) else {
        return Err(NodeListError::MissingVar {
            var: "PBS_NODEFILE",
            job_var: "PBS_JOBID",
            job_id,
        });
    };
    let text = std::fs::read_to_string(&path).map_err(|source| NodeListError::Io {
        what: "PBS node file",
        path: path.clone(),
        source,
    })?;
    let nodes = parse_pbs_nodefile(&path, &text)?;
    let workdir = env("PBS_O_WORKDIR").filter(|v| !v.is_empty());
    Ok(Some(PbsAllocation {
        job_id,
        nodes,
        workdir,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn slots(nodes: &[Node]) -> Vec<(&str, u32)> {
        nodes.iter().map(|n| (n.name.as_str(), n.slots)).collect()
    }

    #[test]
    fn counts_repeated_hosts_in_first_seen_order() {
        let nodes = parse_pbs_nodefile("nodefile", "n2\nn2\nn1\n\nn2\r\nn1\n").unwrap();
        assert_eq!(slots(&nodes), [("n2", 3), ("n1", 2)]);
    }

    #[test]
    fn nodefile_errors() {
        let e = |t: &str| {
            parse_pbs_nodefile("/var/spool/pbs/aux/1.srv", t)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            e("\n \n"),
            "/var/spool/pbs/aux/1.srv: no hosts found; list one host per line, e.g. 'node01 slots=4'"
        );
        assert_eq!(
            e("n1\nn1 slots=2\n"),
            "/var/spool/pbs/aux/1.srv:2: expected one host name per line, got 'n1 slots=2'"
        );
        assert_eq!(
            e("-n1\n"),
            "/var/spool/pbs/aux/1.srv:1: invalid host name '-n1'; host names must not start with '-'"
        );
    }

    #[test]
    fn detect_none_without_job_id() {
        assert!(detect_pbs(&env_of(&[("PBS_NODEFILE", "/nonexistent")]))
            .unwrap()
            .is_none());
        assert!(detect_pbs(&env_of(&[("PBS_JOBID", " ")]))
            .unwrap()
            .is_none());
    }

    #[test]
    fn detect_reads_the_node_file() {
        let dir = std::env::temp_dir().join(format!("launchers-pbs-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("nodes");
        std::fs::write(&file, "a\nb\na\n").unwrap();
        let path = file.to_str().unwrap().to_string();
        let env = env_of(&[
            ("PBS_JOBID", "12.srv"),
            ("PBS_NODEFILE", &path),
            ("PBS_O_WORKDIR", "/home/u"),
        ]);
        let alloc = detect_pbs(&env).unwrap().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(alloc.job_id, "12.srv");
        assert_eq!(alloc.workdir.as_deref(), Some("/home/u"));
        assert_eq!(slots(&alloc.nodes), [("a", 2), ("b", 1)]);
    }

    #[test]
    fn detect_errors() {
        assert_eq!(
            detect_pbs(&env_of(&[("PBS_JOBID", "12.srv")])).unwrap_err().to_string(),
            "PBS_NODEFILE is not set although PBS_JOBID=12.srv is; run inside the job or unset PBS_JOBID"
        );
        let missing = "/nonexistent/launchers-test/nodefile";
        let msg = detect_pbs(&env_of(&[("PBS_JOBID", "1"), ("PBS_NODEFILE", missing)]))
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with(&format!("cannot read PBS node file {missing}: ")),
            "{msg}"
        );
        assert!(
            msg.ends_with("; check that the file exists and is readable"),
            "{msg}"
        );
    }
}
