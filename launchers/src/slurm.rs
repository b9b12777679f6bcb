//! Reading a Slurm allocation from the environment of a batch script or `salloc` shell.
//!
//! The environment is passed in as a lookup closure, so everything here is pure.

use std::fmt;

use crate::nodes::Node;

/// Most names one node list or tasks-per-node value may expand to. Real allocations are far
/// smaller; the bound keeps a typo like `n[1-999999999]` from exhausting memory.
pub const MAX_EXPANDED: u64 = 1_000_000;

/// What is wrong with a node list; positions are 1-based character columns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeListProblem {
    Empty,
    EmptyName { column: usize },
    Unclosed { column: usize },
    Unopened { column: usize },
    Nested { column: usize },
    EmptyRange { column: usize },
    BadNumber { got: String, column: usize },
    Reversed { low: String, high: String },
    BadChar { ch: char, column: usize },
    TooMany,
}

impl fmt::Display for NodeListProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("it is empty"),
            Self::EmptyName { column } => write!(f, "empty name at column {column}"),
            Self::Unclosed { column } => write!(f, "the '[' at column {column} is never closed"),
            Self::Unopened { column } => write!(f, "the ']' at column {column} closes nothing"),
            Self::Nested { column } => write!(f, "'[' inside brackets at column {column}"),
            Self::EmptyRange { column } => write!(f, "empty range at column {column}"),
            Self::BadNumber { got, column } => {
                write!(
                    f,
                    "expected a number or N-M at column {column}, got '{got}'"
                )
            }
            Self::Reversed { low, high } => write!(f, "range {low}-{high} runs backwards"),
            Self::BadChar { ch, column } => write!(f, "unexpected '{ch}' at column {column}"),
            Self::TooMany => write!(f, "it names more than {MAX_EXPANDED} nodes"),
        }
    }
}

/// Why a Slurm allocation could not be read. `Display` is the whole one-line message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SlurmError {
    #[error("invalid node list '{list}': {problem}; expected e.g. 'n[1-3,7],gpu[01-02]'")]
    NodeList {
        list: String,
        problem: NodeListProblem,
    },
    #[error("invalid tasks per node '{value}': {problem}; expected e.g. '2(x3),1'")]
    TasksPerNode { value: String, problem: String },
    #[error("{var}: {inner}")]
    InVar {
        var: &'static str,
        inner: Box<SlurmError>,
    },
    #[error(
        "{var} is not set although SLURM_JOB_ID={job_id} is; run inside an sbatch or salloc job, \
         or unset SLURM_JOB_ID to ignore Slurm"
    )]
    MissingVar { var: &'static str, job_id: String },
    #[error(
        "SLURM_TASKS_PER_NODE gives {tasks} nodes but {list_var} names {nodes}; the job \
         environment is inconsistent, start rlaunch from the job script itself"
    )]
    LengthMismatch {
        tasks: usize,
        nodes: usize,
        list_var: &'static str,
    },
    #[error(
        "SLURM_TASKS_PER_NODE gives node {node} no tasks; request at least one task per node \
         (e.g. sbatch --ntasks-per-node=1)"
    )]
    NoTasks { node: String },
    #[error("SLURM_NTASKS='{value}' is not a whole number; unset it or fix the job script")]
    BadNtasks { value: String },
    #[error("{list_var} names node {node} twice; the job environment is inconsistent")]
    Duplicate {
        node: String,
        list_var: &'static str,
    },
}

/// One comma-separated name of a node list: literal text and bracketed ranges, in order.
enum Piece {
    Text(String),
    /// `(value, width)` of every number the group lists, in order.
    Numbers(Vec<(u64, usize)>),
}

/// Expands a Slurm host list such as `n[1-3,7],gpu[01-02]` or `r[1-2]n[1-2]`.
///
/// Zero padding follows the lower bound's width (`[08-10]` gives `08 09 10`); several bracket
/// groups in one name expand left-most slowest, as Slurm prints them.
pub fn parse_nodelist(s: &str) -> Result<Vec<String>, SlurmError> {
    let fail = |problem| SlurmError::NodeList {
        list: s.to_string(),
        problem,
    };
    let chars: Vec<char> = s.chars().collect();
    if chars.iter().all(|c| c.is_whitespace()) {
        return Err(fail(NodeListProblem::Empty));
    }

    // Split at top-level commas, checking bracket balance on the way.
    let mut names: Vec<(usize, usize)> = Vec::new();
    let mut start = 0;
    let mut open: Option<usize> = None;
    for (i, &c) in chars.iter().enumerate() {
        match c {
            '[' if open.is_some() => return Err(fail(NodeListProblem::Nested { column: i + 1 })),
            '[' => open = Some(i),
            ']' if open.is_none() => return Err(fail(NodeListProblem::Unopened { column: i + 1 })),
            ']' => open = None,
            ',' if open.is_none() => {
                names.push((start, i));
                start = i + 1;
            }
            _ => {}
        }
    }
    if let Some(at) = open {
        return Err(fail(NodeListProblem::Unclosed { column: at + 1 }));
    }
    names.push((start, chars.len()));

    let mut parsed = Vec::with_capacity(names.len());
    let mut total: u64 = 0;
    for (from, to) in names {
        if from == to {
            return Err(fail(NodeListProblem::EmptyName { column: from + 1 }));
        }
        let pieces = parse_name(&chars, from, to).map_err(fail)?;
        let count = pieces.iter().try_fold(1u64, |acc, piece| match piece {
            Piece::Text(_) => Some(acc),
            Piece::Numbers(values) => acc.checked_mul(values.len() as u64),
        });
        total = match count.and_then(|c| total.checked_add(c)) {
            Some(t) if t <= MAX_EXPANDED => t,
            _ => return Err(fail(NodeListProblem::TooMany)),
        };
        parsed.push(pieces);
    }

    let mut out = Vec::with_capacity(total as usize);
    for pieces in &parsed {
        let mut expanded = vec![String::new()];
        for piece in pieces {
            expanded = match piece {
                Piece::Text(text) => expanded.into_iter().map(|prefix| prefix + text).collect(),
                Piece::Numbers(values) => expanded
                    .iter()
                    .flat_map(|prefix| values.iter().map(move |&(v, w)| format!("{prefix}{v:0w$}")))
                    .collect(),
            };
        }
        out.extend(expanded);
    }
    Ok(out)
}

fn parse_name(chars: &[char], from: usize, to: usize) -> Result<Vec<Piece>, NodeListProblem> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut i = from;
    while i < to {
        let c = chars[i];
        if c == '[' {
            if !text.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut text)));
            }
            // Balance was checked by the caller, so a ']' exists before `to`.
            let close = (i + 1..to).find(|&j| chars[j] == ']').unwrap_or(to);
            pieces.push(Piece::Numbers(parse_ranges(chars, i + 1, close)?));
            i = close + 1;
            continue;
        }
        // Names end up in ssh/srun command lines, so keep to the host name alphabet.
        let allowed = c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
        if !allowed || (c == '-' && i == from) {
            return Err(NodeListProblem::BadChar {
                ch: c,
                column: i + 1,
            });
        }
        text.push(c);
        i += 1;
    }
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

fn parse_ranges(
    chars: &[char],
    from: usize,
    to: usize,
) -> Result<Vec<(u64, usize)>, NodeListProblem> {
    if from == to {
        return Err(NodeListProblem::EmptyRange { column: from + 1 });
    }
    let mut values = Vec::new();
    let mut start = from;
    for end in (from..=to).filter(|&j| j == to || chars[j] == ',') {
        let item: String = chars[start..end].iter().collect();
        let bad = || NodeListProblem::BadNumber {
            got: item.clone(),
            column: start + 1,
        };
        let (low, high) = match item.split_once('-') {
            Some((low, high)) => (low, high),
            None => (item.as_str(), item.as_str()),
        };
        let lo = parse_number(low).ok_or_else(bad)?;
        let hi = parse_number(high).ok_or_else(bad)?;
        if hi < lo {
            return Err(NodeListProblem::Reversed {
                low: low.to_string(),
                high: high.to_string(),
            });
        }
        if hi - lo >= MAX_EXPANDED {
            return Err(NodeListProblem::TooMany);
        }
        values.extend((lo..=hi).map(|v| (v, low.len())));
        if values.len() as u64 > MAX_EXPANDED {
            return Err(NodeListProblem::TooMany);
        }
        start = end + 1;
    }
    Ok(values)
}

fn parse_number(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Expands `SLURM_TASKS_PER_NODE`-style counts: `2(x3),1` gives `[2, 2, 2, 1]`.
pub fn parse_tasks_per_node(s: &str) -> Result<Vec<u32>, SlurmError> {
    let fail = |problem: String| SlurmError::TasksPerNode {
        value: s.to_string(),
        problem,
    };
    if s.trim().is_empty() {
        return Err(fail("it is empty".into()));
    }
    let mut out = Vec::new();
    for item in s.split(',') {
        let (count, repeat) = match item.split_once('(') {
            Some((count, rest)) => {
                let times = rest
                    .strip_prefix('x')
                    .and_then(|r| r.strip_suffix(')'))
                    .ok_or_else(|| fail(format!("expected 'N(xM)', got '{item}'")))?;
                let times = parse_number(times)
                    .filter(|&t| t >= 1)
                    .ok_or_else(|| fail(format!("invalid repeat count in '{item}'")))?;
                (count, times)
            }
            None => (item, 1),
        };
        let count = parse_number(count)
            .and_then(|c| u32::try_from(c).ok())
            .ok_or_else(|| fail(format!("expected a whole number, got '{count}'")))?;
        if out.len() as u64 + repeat > MAX_EXPANDED {
            return Err(fail(format!("it describes more than {MAX_EXPANDED} nodes")));
        }
        out.extend(std::iter::repeat(count).take(repeat as usize));
    }
    Ok(out)
}

/// What a Slurm job gives rlaunch to run on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlurmAllocation {
    pub job_id: String,
    /// One node per allocated host, slots = its tasks from `SLURM_TASKS_PER_NODE`.
    pub nodes: Vec<Node>,
    /// `SLURM_NTASKS` when the job was given `-n`.
    pub ntasks: Option<u32>,
}

/// Reads the allocation from `SLURM_JOB_ID`, `SLURM_JOB_NODELIST` (or `SLURM_NODELIST`),
/// `SLURM_TASKS_PER_NODE` and `SLURM_NTASKS`. `None` when `SLURM_JOB_ID` is unset or empty, so
/// `SLURM_JOB_ID= rlaunch ...` opts out.
pub fn detect_slurm(
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<SlurmAllocation>, SlurmError> {
    let Some(job_id) = env("SLURM_JOB_ID").filter(|v| !v.trim().is_empty()) else {
        return Ok(None);
    };
    let missing = |var| SlurmError::MissingVar {
        var,
        job_id: job_id.clone(),
    };
    let (list_var, list) = match env("SLURM_JOB_NODELIST") {
        Some(v) => ("SLURM_JOB_NODELIST", v),
        None => (
            "SLURM_NODELIST",
            env("SLURM_NODELIST").ok_or_else(|| missing("SLURM_JOB_NODELIST"))?,
        ),
    };
    let in_var = |var| {
        move |e| SlurmError::InVar {
            var,
            inner: Box::new(e),
        }
    };
    let names = parse_nodelist(&list).map_err(in_var(list_var))?;
    let tasks_text = env("SLURM_TASKS_PER_NODE").ok_or_else(|| missing("SLURM_TASKS_PER_NODE"))?;
    let tasks = parse_tasks_per_node(&tasks_text).map_err(in_var("SLURM_TASKS_PER_NODE"))?;
    if tasks.len() != names.len() {
        return Err(SlurmError::LengthMismatch {
            tasks: tasks.len(),
            nodes: names.len(),
            list_var,
        });
    }
    let ntasks = match env("SLURM_NTASKS") {
        None => None,
        Some(v) => Some(
            parse_number(v.trim())
                .and_then(|n| u32::try_from(n).ok())
                .ok_or(SlurmError::BadNtasks { value: v.clone() })?,
        ),
    };
    let mut nodes: Vec<Node> = Vec::with_capacity(names.len());
    let mut seen = std::collections::HashSet::new();
    for (name, slots) in names.into_iter().zip(tasks) {
        if slots == 0 {
            return Err(SlurmError::NoTasks { node: name });
        }
        if !seen.insert(name.clone()) {
            return Err(SlurmError::Duplicate {
                node: name,
                list_var,
            });
        }
        nodes.push(Node {
            name,
            user: None,
            slots,
            max_slots: None,
        });
    }
    Ok(Some(SlurmAllocation {
        job_id,
        nodes,
        ntasks,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn names(s: &str) -> Vec<String> {
        parse_nodelist(s).unwrap()
    }

    fn err(s: &str) -> String {
        parse_nodelist(s).unwrap_err().to_string()
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn plain_names() {
        assert_eq!(names("n1"), ["n1"]);
        assert_eq!(names("a,b.example.org,c_d"), ["a", "b.example.org", "c_d"]);
    }

    #[test]
    fn ranges_and_singles() {
        assert_eq!(names("n[1-3,7]"), ["n1", "n2", "n3", "n7"]);
        assert_eq!(names("n[9-11]"), ["n9", "n10", "n11"]);
    }

    #[test]
    fn zero_padding_is_kept() {
        assert_eq!(names("gpu[01-02]"), ["gpu01", "gpu02"]);
        assert_eq!(names("n[008-010]"), ["n008", "n009", "n010"]);
        assert_eq!(names("n[098-100]"), ["n098", "n099", "n100"]);
        assert_eq!(names("n[1-01]"), ["n1"]);
    }

    #[test]
    fn commas_inside_and_outside_brackets() {
        assert_eq!(
            names("n[1-3,7],gpu[01-02]"),
            ["n1", "n2", "n3", "n7", "gpu01", "gpu02"]
        );
        assert_eq!(names("a,n[1,3],b"), ["a", "n1", "n3", "b"]);
    }

    #[test]
    fn several_groups_expand_left_most_slowest() {
        assert_eq!(names("r[1-2]n[1-2]"), ["r1n1", "r1n2", "r2n1", "r2n2"]);
        assert_eq!(names("r[1-2]-n[3]x"), ["r1-n3x", "r2-n3x"]);
        assert_eq!(names("[1-2]"), ["1", "2"]);
    }

    #[test]
    fn malformed_lists() {
        let tail = "expected e.g. 'n[1-3,7],gpu[01-02]'";
        assert_eq!(
            err("n[1-"),
            format!("invalid node list 'n[1-': the '[' at column 2 is never closed; {tail}")
        );
        assert_eq!(
            err("n[3-1]"),
            format!("invalid node list 'n[3-1]': range 3-1 runs backwards; {tail}")
        );
        assert_eq!(
            err(""),
            format!("invalid node list '': it is empty; {tail}")
        );
        assert_eq!(
            err("n1]"),
            format!("invalid node list 'n1]': the ']' at column 3 closes nothing; {tail}")
        );
        assert_eq!(
            err("n[1[2]]"),
            format!("invalid node list 'n[1[2]]': '[' inside brackets at column 4; {tail}")
        );
        assert_eq!(
            err("n[]"),
            format!("invalid node list 'n[]': empty range at column 3; {tail}")
        );
        assert_eq!(
            err("n[1-x]"),
            format!("invalid node list 'n[1-x]': expected a number or N-M at column 3, got '1-x'; {tail}")
        );
        assert_eq!(
            err("n[1,,2]"),
            format!(
                "invalid node list 'n[1,,2]': expected a number or N-M at column 5, got ''; {tail}"
            )
        );
        assert_eq!(
            err("n[1-2-3]"),
            format!("invalid node list 'n[1-2-3]': expected a number or N-M at column 3, got '1-2-3'; {tail}")
        );
        assert_eq!(
            err("a,,b"),
            format!("invalid node list 'a,,b': empty name at column 3; {tail}")
        );
        assert_eq!(
            err("a,"),
            format!("invalid node list 'a,': empty name at column 3; {tail}")
        );
        assert_eq!(
            err("a b"),
            format!("invalid node list 'a b': unexpected ' ' at column 2; {tail}")
        );
        assert_eq!(
            err("-a"),
            format!("invalid node list '-a': unexpected '-' at column 1; {tail}")
        );
    }

    #[test]
    fn huge_ranges_are_refused_without_expanding() {
        let tail = "expected e.g. 'n[1-3,7],gpu[01-02]'";
        let too_many =
            |s: &str| format!("invalid node list '{s}': it names more than 1000000 nodes; {tail}");
        assert_eq!(err("n[1-1000001]"), too_many("n[1-1000001]"));
        assert_eq!(
            err("n[0-18446744073709551615]"),
            too_many("n[0-18446744073709551615]")
        );
        assert_eq!(err("r[1-1000]n[1-1001]"), too_many("r[1-1000]n[1-1001]"));
        assert_eq!(
            err("a[1-600000],b[1-600000]"),
            too_many("a[1-600000],b[1-600000]")
        );
        assert_eq!(
            err("n[1-99999999999999999999]"),
            format!(
                "invalid node list 'n[1-99999999999999999999]': expected a number or N-M at column 3, \
                 got '1-99999999999999999999'; {tail}"
            )
        );
        assert_eq!(parse_nodelist("n[1-1000000]").unwrap().len(), 1_000_000);
    }

    #[test]
    fn tasks_per_node() {
        assert_eq!(parse_tasks_per_node("2(x3),1").unwrap(), [2, 2, 2, 1]);
        assert_eq!(parse_tasks_per_node("4").unwrap(), [4]);
        assert_eq!(parse_tasks_per_node("4,1(x2)").unwrap(), [4, 1, 1]);
        let tail = "expected e.g. '2(x3),1'";
        let e = |s: &str| parse_tasks_per_node(s).unwrap_err().to_string();
        assert_eq!(
            e(""),
            format!("invalid tasks per node '': it is empty; {tail}")
        );
        assert_eq!(
            e("2(3)"),
            format!("invalid tasks per node '2(3)': expected 'N(xM)', got '2(3)'; {tail}")
        );
        assert_eq!(
            e("2(x3"),
            format!("invalid tasks per node '2(x3': expected 'N(xM)', got '2(x3'; {tail}")
        );
        assert_eq!(
            e("2(x0)"),
            format!("invalid tasks per node '2(x0)': invalid repeat count in '2(x0)'; {tail}")
        );
        assert_eq!(
            e("a"),
            format!("invalid tasks per node 'a': expected a whole number, got 'a'; {tail}")
        );
        assert_eq!(
            e("1,"),
            format!("invalid tasks per node '1,': expected a whole number, got ''; {tail}")
        );
        assert_eq!(
            e("1(x1000001)"),
            format!("invalid tasks per node '1(x1000001)': it describes more than 1000000 nodes; {tail}")
        );
    }

    #[test]
    fn detect_none_without_job_id() {
        assert_eq!(
            detect_slurm(&env_of(&[("SLURM_JOB_NODELIST", "n1")])),
            Ok(None)
        );
        assert_eq!(detect_slurm(&env_of(&[("SLURM_JOB_ID", "")])), Ok(None));
    }

    #[test]
    fn detect_batch_job() {
        let env = env_of(&[
            ("SLURM_JOB_ID", "42"),
            ("SLURM_JOB_NODELIST", "n[1-3]"),
            ("SLURM_NODELIST", "ignored[1-9]"),
            ("SLURM_TASKS_PER_NODE", "4,1(x2)"),
            ("SLURM_NTASKS", "6"),
        ]);
        let alloc = detect_slurm(&env).unwrap().unwrap();
        assert_eq!(alloc.job_id, "42");
        assert_eq!(alloc.ntasks, Some(6));
        let got: Vec<(&str, u32)> = alloc
            .nodes
            .iter()
            .map(|n| (n.name.as_str(), n.slots))
            .collect();
        assert_eq!(got, [("n1", 4), ("n2", 1), ("n3", 1)]);
        assert!(alloc
            .nodes
            .iter()
            .all(|n| n.user.is_none() && n.max_slots.is_none()));
    }

    #[test]
    fn detect_falls_back_to_slurm_nodelist() {
        let env = env_of(&[
            ("SLURM_JOB_ID", "7"),
            ("SLURM_NODELIST", "a,b"),
            ("SLURM_TASKS_PER_NODE", "1(x2)"),
        ]);
        let alloc = detect_slurm(&env).unwrap().unwrap();
        assert_eq!(alloc.nodes.len(), 2);
        assert_eq!(alloc.ntasks, None);
    }

    #[test]
    fn detect_errors() {
        let e = |pairs: &[(&str, &str)]| detect_slurm(&env_of(pairs)).unwrap_err().to_string();
        assert_eq!(
            e(&[("SLURM_JOB_ID", "7"), ("SLURM_TASKS_PER_NODE", "1")]),
            "SLURM_JOB_NODELIST is not set although SLURM_JOB_ID=7 is; run inside an sbatch or salloc \
             job, or unset SLURM_JOB_ID to ignore Slurm"
        );
        assert_eq!(
            e(&[("SLURM_JOB_ID", "7"), ("SLURM_JOB_NODELIST", "n1")]),
            "SLURM_TASKS_PER_NODE is not set although SLURM_JOB_ID=7 is; run inside an sbatch or salloc \
             job, or unset SLURM_JOB_ID to ignore Slurm"
        );
        assert_eq!(
            e(&[("SLURM_JOB_ID", "7"), ("SLURM_JOB_NODELIST", "n[1-"), ("SLURM_TASKS_PER_NODE", "1")]),
            "SLURM_JOB_NODELIST: invalid node list 'n[1-': the '[' at column 2 is never closed; expected \
             e.g. 'n[1-3,7],gpu[01-02]'"
        );
        assert_eq!(
            e(&[("SLURM_JOB_ID", "7"), ("SLURM_NODELIST", "n1"), ("SLURM_TASKS_PER_NODE", "x")]),
            "SLURM_TASKS_PER_NODE: invalid tasks per node 'x': expected a whole number, got 'x'; expected \
             e.g. '2(x3),1'"
        );
        assert_eq!(
            e(&[("SLURM_JOB_ID", "7"), ("SLURM_NODELIST", "n[1-3]"), ("SLURM_TASKS_PER_NODE", "1(x2)")]),
            "SLURM_TASKS_PER_NODE gives 2 nodes but SLURM_NODELIST names 3; the job environment is \
             inconsistent, start rlaunch from the job script itself"
        );
        assert_eq!(
            e(&[
                ("SLURM_JOB_ID", "7"),
                ("SLURM_JOB_NODELIST", "n1,n2"),
                ("SLURM_TASKS_PER_NODE", "1,0")
            ]),
            "SLURM_TASKS_PER_NODE gives node n2 no tasks; request at least one task per node \
             (e.g. sbatch --ntasks-per-node=1)"
        );
        assert_eq!(
            e(&[
                ("SLURM_JOB_ID", "7"),
                ("SLURM_JOB_NODELIST", "n1"),
                ("SLURM_TASKS_PER_NODE", "1"),
                ("SLURM_NTASKS", "six"),
            ]),
            "SLURM_NTASKS='six' is not a whole number; unset it or fix the job script"
        );
        assert_eq!(
            e(&[
                ("SLURM_JOB_ID", "7"),
                ("SLURM_JOB_NODELIST", "n1,n[1-2]"),
                ("SLURM_TASKS_PER_NODE", "1(x3)")
            ]),
            "SLURM_JOB_NODELIST names node n1 twice; the job environment is inconsistent"
        );
    }

    /// Compresses names the way Slurm prints them, to check that expansion inverts it.
    fn compress(prefix: &str, values: &[(u64, usize)]) -> String {
        let parts: Vec<String> = values.iter().map(|&(v, w)| format!("{v:0w$}")).collect();
        format!("{prefix}[{}]", parts.join(","))
    }

    proptest! {
        #[test]
        fn expansion_lists_every_number_once(
            prefix in "[a-z]{1,4}",
            ranges in prop::collection::vec((0u64..500, 0u64..20, 1usize..4), 1..5),
        ) {
            let mut expected = Vec::new();
            let mut parts = Vec::new();
            for &(lo, len, width) in &ranges {
                let hi = lo + len;
                parts.push(format!("{lo:0width$}-{hi}"));
                expected.extend((lo..=hi).map(|v| format!("{prefix}{v:0width$}")));
            }
            let list = format!("{prefix}[{}]", parts.join(","));
            prop_assert_eq!(parse_nodelist(&list).unwrap(), expected);
        }

        #[test]
        fn single_values_round_trip(prefix in "[a-z]{1,3}", values in prop::collection::vec((0u64..1000, 1usize..4), 1..8)) {
            let list = compress(&prefix, &values);
            let expected: Vec<String> = values.iter().map(|&(v, w)| format!("{prefix}{v:0w$}")).collect();
            prop_assert_eq!(parse_nodelist(&list).unwrap(), expected);
        }

        #[test]
        fn arbitrary_input_never_panics(s in "[a-c0-9\\[\\],\\- ]{0,24}") {
            let _ = parse_nodelist(&s);
            let _ = parse_tasks_per_node(&s);
        }

        #[test]
        fn tasks_round_trip(counts in prop::collection::vec((0u32..9, 1u64..5), 1..6)) {
            let text: Vec<String> = counts.iter().map(|&(c, r)| if r == 1 { c.to_string() } else { format!("{c}(x{r})") }).collect();
            let expected: Vec<u32> = counts.iter().flat_map(|&(c, r)| std::iter::repeat(c).take(r as usize)).collect();
            prop_assert_eq!(parse_tasks_per_node(&text.join(",")).unwrap(), expected);
        }
    }
}
