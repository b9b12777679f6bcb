//! Node lists written by users: hostfiles (`--hostfile`) and host lists (`--host`).
//!
//! Both grammars feed one merge step, so `node01` listed twice means two slots on one node whether
//! it came from a hostfile, a `--host` list or a PBS node file.

use std::collections::HashMap;
use std::fmt;

/// One host that ranks may run on.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Node {
    /// Host name as written (what ssh / the agent connects to).
    pub name: String,
    /// From `user@host`.
    pub user: Option<String>,
    /// Ranks that fit without oversubscribing; at least 1.
    pub slots: u32,
    /// Hard limit that holds even with `--oversubscribe`.
    pub max_slots: Option<u32>,
}

/// Where an entry was written, so that a message can point the user at it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A line of a file: displays as `hosts:7`.
    Line { file: String, line: usize },
    /// An item of a `--host` list (1-based): displays as `--host item 2`.
    HostItem { item: usize },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Line { file, line } => write!(f, "{file}:{line}"),
            Origin::HostItem { item } => write!(f, "--host item {item}"),
        }
    }
}

/// What is wrong with a node list. `Display` is the whole one-line message.
#[derive(Debug, thiserror::Error)]
pub enum NodeListError {
    #[error("{at}: expected 'slots=N', got '{got}'")]
    UnknownAttribute { at: Origin, got: String },
    #[error("{at}: expected a host name first, got '{got}'; write e.g. 'node01 slots=4'")]
    MissingHost { at: Origin, got: String },
    #[error("{at}: invalid host name '{got}'; {why}")]
    BadHost {
        at: Origin,
        got: String,
        why: &'static str,
    },
    #[error(
        "{at}: invalid user name '{got}' in '{entry}'; use letters, digits, '.', '-' and '_' \
         (not starting with '-')"
    )]
    BadUser {
        at: Origin,
        got: String,
        entry: String,
    },
    #[error(
        "{at}: invalid {key} '{got}' for {host}; expected a whole number from 1 to 4294967295"
    )]
    BadCount {
        at: Origin,
        key: &'static str,
        got: String,
        host: String,
    },
    #[error("{at}: {key} is given twice for {host}; keep one")]
    Repeated {
        at: Origin,
        key: &'static str,
        host: String,
    },
    #[error("{at}: {host} has max_slots={max_slots} below slots={slots}; raise max_slots or lower slots")]
    MaxBelowSlots {
        at: Origin,
        host: String,
        slots: u32,
        max_slots: u32,
    },
    #[error(
        "{at}: {host} is listed as {now} here but as {before} at {first}; use one user per host"
    )]
    UserConflict {
        at: Origin,
        first: Box<Origin>,
        host: String,
        now: UserDisplay,
        before: UserDisplay,
    },
    #[error(
        "{at}: {host} has {now} here but {before} at {first}; give max_slots on every entry \
         for {host} or on none"
    )]
    MaxSlotsConflict {
        at: Origin,
        first: Box<Origin>,
        host: String,
        now: MaxDisplay,
        before: MaxDisplay,
    },
    #[error("{at}: {host} adds up to more than 4294967295 {what}; lower the counts")]
    CountOverflow {
        at: Origin,
        host: String,
        what: &'static str,
    },
    #[error("{at}: empty entry; remove the extra ','")]
    EmptyItem { at: Origin },
    #[error("{at}: expected one host name per line, got '{got}'")]
    ExtraTokens { at: Origin, got: String },
    #[error("{file}: no hosts found; list one host per line, e.g. 'node01 slots=4'")]
    EmptyFile { file: String },
    #[error("--host: no hosts given; use e.g. '--host node01:4,node02'")]
    EmptyHostList,
    #[error(
        "{var} is not set although {job_var}={job_id} is; run inside the job or unset {job_var}"
    )]
    MissingVar {
        var: &'static str,
        job_var: &'static str,
        job_id: String,
    },
    #[error("cannot read {what} {path}: {source}; check that the file exists and is readable")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// `user 'bob'` or `no user`, for conflict messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserDisplay(pub Option<String>);

impl fmt::Display for UserDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(u) => write!(f, "user '{u}'"),
            None => f.write_str("no user"),
        }
    }
}

/// `max_slots=8` or `no max_slots`, for conflict messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaxDisplay(pub Option<u32>);

impl fmt::Display for MaxDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(m) => write!(f, "max_slots={m}"),
            None => f.write_str("no max_slots"),
        }
    }
}

/// This machine's host name: the one node of a job without a node list, and how a daemon names
/// itself. "?" when the system will not say.
pub fn local_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `len` bytes into the buffer we own.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if rc != 0 {
        return "?".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Parses a hostfile. `display` is the file name used in messages.
///
/// One grammar covers the Open MPI and MPICH styles: `node01`, `node01 slots=4 [max_slots=8]`,
/// `node01:4`, `user@node01 slots=4`, `#` comments (whole line or trailing), blank lines and
/// surrounding whitespace. Repeated hosts merge (slots add up) in first-seen order; a host with
/// no count has 1 slot. A file with no hosts is an error.
pub fn parse_hostfile(display: &str, text: &str) -> Result<Vec<Node>, NodeListError> {
    let mut merger = Merger::default();
    for (index, raw) in text.lines().enumerate() {
        let at = Origin::Line {
            file: display.to_string(),
            line: index + 1,
        };
        let content = raw.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        let mut tokens = content.split_whitespace();
        let Some(first) = tokens.next() else { continue };
        if first.contains('=') {
            return Err(NodeListError::MissingHost {
                at,
                got: first.to_string(),
            });
        }
        let spec = parse_host_spec(&at, first)?;
        let mut slots = spec.count;
        let mut max_slots = None;
        for token in tokens {
            let (key, value) = token.split_once('=').unwrap_or((token, ""));
            match key {
                "slots" => {
                    if slots.is_some() {
                        return Err(NodeListError::Repeated {
                            at,
                            key: "slot count",
                            host: spec.name,
                        });
                    }
                    slots = Some(parse_count(&at, "slots", value, &spec.name)?);
                }
                "max_slots" | "max-slots" => {
                    if max_slots.is_some() {
                        return Err(NodeListError::Repeated {
                            at,
                            key: "max_slots",
                            host: spec.name,
                        });
                    }
                    max_slots = Some(parse_count(&at, "max_slots", value, &spec.name)?);
                }
                _ => {
                    return Err(NodeListError::UnknownAttribute {
                        at,
                        got: token.to_string(),
                    });
                }
            }
        }
        let slots = slots.unwrap_or(1);
        if let Some(max) = max_slots {
            if max < slots {
                return Err(NodeListError::MaxBelowSlots {
                    at,
                    host: spec.name,
                    slots,
                    max_slots: max,
                });
            }
        }
        merger.add(
            at,
            Node {
                name: spec.name,
                user: spec.user,
                slots,
                max_slots,
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

/// Open MPI's `--map-by seq`: the host of each line of a host file, in order, one rank each
/// (counts and `slots=` do not matter there).
pub fn hostfile_sequence(display: &str, text: &str) -> Result<Vec<String>, NodeListError> {
    let mut seq = Vec::new();
    for raw in text.lines() {
        if raw.split('#').next().unwrap_or("").trim().is_empty() {
            continue;
        }
        seq.extend(parse_hostfile(display, raw)?.into_iter().map(|n| n.name));
    }
    Ok(seq)
}

/// Parses `--host h1:2,h2,user@h3:4` (Open MPI / MPICH style), with the same merge rules as
/// [`parse_hostfile`].
pub fn parse_host_list(spec: &str) -> Result<Vec<Node>, NodeListError> {
    if spec.trim().is_empty() {
        return Err(NodeListError::EmptyHostList);
    }
    let mut merger = Merger::default();
    for (index, item) in spec.split(',').enumerate() {
        let at = Origin::HostItem { item: index + 1 };
        let item = item.trim();
        if item.is_empty() {
            return Err(NodeListError::EmptyItem { at });
        }
        let host = parse_host_spec(&at, item)?;
        let slots = host.count.unwrap_or(1);
        merger.add(
            at,
            Node {
                name: host.name,
                user: host.user,
                slots,
                max_slots: None,
            },
        )?;
    }
    Ok(merger.nodes)
}

/// `[user@]host[:N]`, split into its parts.
pub(crate) struct HostSpec {
    pub user: Option<String>,
    pub name: String,
    pub count: Option<u32>,
}

pub(crate) fn parse_host_spec(at: &Origin, entry: &str) -> Result<HostSpec, NodeListError> {
    let (user, rest) = match entry.split_once('@') {
        Some((user, rest)) => {
            if !is_valid_user(user) {
                return Err(NodeListError::BadUser {
                    at: at.clone(),
                    got: user.to_string(),
                    entry: entry.to_string(),
                });
            }
            (Some(user.to_string()), rest)
        }
        None => (None, entry),
    };
    let (name, count) = if let Some(bracketed) = rest.strip_prefix('[') {
        // `[fe80::1]:4`: brackets are the only way to give an IPv6 literal a count.
        let Some((addr, after)) = bracketed.split_once(']') else {
            return Err(bad_host(
                at,
                rest,
                "a '[' opens an IPv6 address but no ']' closes it",
            ));
        };
        match after {
            "" => (addr, None),
            _ => match after.strip_prefix(':') {
                Some(count) => (addr, Some(count)),
                None => return Err(bad_host(at, rest, "expected ':N' after ']'")),
            },
        }
    } else {
        match rest.matches(':').count() {
            0 => (rest, None),
            1 => {
                let (name, count) = rest.split_once(':').unwrap_or((rest, ""));
                (name, Some(count))
            }
            // Several colons without brackets can only be an IPv6 literal, which has no count.
            _ => (rest, None),
        }
    };
    if let Err(why) = check_host_name(name) {
        return Err(bad_host(at, name, why));
    }
    let count = match count {
        Some(text) => Some(parse_count(at, "slot count", text, name)?),
        None => None,
    };
    Ok(HostSpec {
        user,
        name: name.to_string(),
        count,
    })
}

fn bad_host(at: &Origin, got: &str, why: &'static str) -> NodeListError {
    NodeListError::BadHost {
        at: at.clone(),
        got: got.to_string(),
        why,
    }
}

/// Host names end up as an ssh argument, so one starting with `-` would be read as an option
/// (`-oProxyCommand=...`); anything outside the DNS/IPv6 alphabet is refused for the same reason.
pub(crate) fn check_host_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("the host name is empty");
    }
    if name.starts_with('-') {
        return Err("host names must not start with '-'");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
    {
        return Err("use letters, digits, '.', '-', '_' (and ':' for IPv6)");
    }
    Ok(())
}

fn is_valid_user(user: &str) -> bool {
    !user.is_empty()
        && !user.starts_with('-')
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

/// Only plain digits: `str::parse` would also take `+4`, which no hostfile dialect writes.
fn parse_count(
    at: &Origin,
    key: &'static str,
    text: &str,
    host: &str,
) -> Result<u32, NodeListError> {
    let value = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        text.parse::<u32>().ok().filter(|&n| n >= 1)
    } else {
        None
    };
    value.ok_or_else(|| NodeListError::BadCount {
        at: at.clone(),
        key,
        got: text.to_string(),
        host: host.to_string(),
    })
}

/// Accumulates entries, merging repeats of one host into its first-seen position.
#[derive(Default)]
pub(crate) struct Merger {
    pub nodes: Vec<Node>,
    first_seen: Vec<Origin>,
    index: HashMap<String, usize>,
}

impl Merger {
    pub fn add(&mut self, at: Origin, node: Node) -> Result<(), NodeListError> {
        let Some(&i) = self.index.get(&node.name) else {
            self.index.insert(node.name.clone(), self.nodes.len());
            self.nodes.push(node);
            self.first_seen.push(at);
            return Ok(());
        };
        let existing = &mut self.nodes[i];
        let first = Box::new(self.first_seen[i].clone());
        if existing.user != node.user {
            return Err(NodeListError::UserConflict {
                at,
                first,
                host: node.name,
                now: UserDisplay(node.user),
                before: UserDisplay(existing.user.clone()),
            });
        }
        // Summing limits only makes sense when every entry has one; a mix is ambiguous.
        let max_slots = match (existing.max_slots, node.max_slots) {
            (None, None) => None,
            (Some(a), Some(b)) => match a.checked_add(b) {
                Some(sum) => Some(sum),
                None => {
                    return Err(NodeListError::CountOverflow {
                        at,
                        host: node.name,
                        what: "max_slots",
                    })
                }
            },
            (before, now) => {
                return Err(NodeListError::MaxSlotsConflict {
                    at,
                    first,
                    host: node.name,
                    now: MaxDisplay(now),
                    before: MaxDisplay(before),
                })
            }
        };
        let Some(slots) = existing.slots.checked_add(node.slots) else {
            return Err(NodeListError::CountOverflow {
                at,
                host: node.name,
                what: "slots",
            });
        };
        existing.slots = slots;
        existing.max_slots = max_slots;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, slots: u32) -> Node {
        Node {
            name: name.into(),
            user: None,
            slots,
            max_slots: None,
        }
    }

    fn err(text: &str) -> String {
        parse_hostfile("hosts", text).unwrap_err().to_string()
    }

    fn list_err(spec: &str) -> String {
        parse_host_list(spec).unwrap_err().to_string()
    }

    #[test]
    fn bare_host_has_one_slot() {
        assert_eq!(
            parse_hostfile("hosts", "node01\n").unwrap(),
            vec![node("node01", 1)]
        );
    }

    #[test]
    fn open_mpi_slots_and_max_slots() {
        let nodes =
            parse_hostfile("hosts", "node01 slots=4 max_slots=8\nnode02 max-slots=2\n").unwrap();
        assert_eq!(
            nodes,
            vec![
                Node {
                    name: "node01".into(),
                    user: None,
                    slots: 4,
                    max_slots: Some(8)
                },
                Node {
                    name: "node02".into(),
                    user: None,
                    slots: 1,
                    max_slots: Some(2)
                },
            ]
        );
    }

    #[test]
    fn mpich_colon_count() {
        assert_eq!(
            parse_hostfile("hosts", "node01:4").unwrap(),
            vec![node("node01", 4)]
        );
    }

    #[test]
    fn colon_count_with_max_slots() {
        let nodes = parse_hostfile("hosts", "node01:4 max_slots=6").unwrap();
        assert_eq!(nodes[0].slots, 4);
        assert_eq!(nodes[0].max_slots, Some(6));
    }

    #[test]
    fn user_at_host() {
        let nodes = parse_hostfile("hosts", "alice@node01 slots=4").unwrap();
        assert_eq!(
            nodes,
            vec![Node {
                name: "node01".into(),
                user: Some("alice".into()),
                slots: 4,
                max_slots: None
            }]
        );
    }

    #[test]
    fn comments_blanks_and_whitespace() {
        let text =
            "# cluster\n\n   node01 slots=2   # the head node\n\t\nnode02\t slots=3\r\n  # end\n";
        assert_eq!(
            parse_hostfile("hosts", text).unwrap(),
            vec![node("node01", 2), node("node02", 3)]
        );
    }

    #[test]
    fn repeats_merge_in_first_seen_order() {
        let text = "b slots=2\na\nb slots=3\na:2\n";
        assert_eq!(
            parse_hostfile("hosts", text).unwrap(),
            vec![node("b", 5), node("a", 3)]
        );
    }

    #[test]
    fn repeated_max_slots_add_up() {
        let nodes =
            parse_hostfile("hosts", "a slots=2 max_slots=3\na slots=1 max_slots=4\n").unwrap();
        assert_eq!(nodes[0].slots, 3);
        assert_eq!(nodes[0].max_slots, Some(7));
    }

    #[test]
    fn ipv6_literals() {
        let nodes = parse_hostfile("hosts", "fe80::1\n[fe80::2]:3\n[::1] slots=2\n").unwrap();
        assert_eq!(
            nodes,
            vec![node("fe80::1", 1), node("fe80::2", 3), node("::1", 2)]
        );
    }

    #[test]
    fn unknown_attribute_message() {
        let text = "a\nb\nc\nd\ne\nf\nnode07 slot=4\n";
        assert_eq!(err(text), "hosts:7: expected 'slots=N', got 'slot=4'");
        assert_eq!(
            err("n slots=1 cpus=4"),
            "hosts:1: expected 'slots=N', got 'cpus=4'"
        );
        assert_eq!(err("n 4"), "hosts:1: expected 'slots=N', got '4'");
    }

    #[test]
    fn empty_file_message() {
        assert_eq!(
            err("# only a comment\n\n"),
            "hosts: no hosts found; list one host per line, e.g. 'node01 slots=4'"
        );
        assert_eq!(
            err(""),
            "hosts: no hosts found; list one host per line, e.g. 'node01 slots=4'"
        );
    }

    #[test]
    fn missing_host_message() {
        assert_eq!(
            err("slots=4"),
            "hosts:1: expected a host name first, got 'slots=4'; write e.g. 'node01 slots=4'"
        );
    }

    #[test]
    fn bad_counts() {
        let tail = "expected a whole number from 1 to 4294967295";
        assert_eq!(
            err("n slots=0"),
            format!("hosts:1: invalid slots '0' for n; {tail}")
        );
        assert_eq!(
            err("n slots=x"),
            format!("hosts:1: invalid slots 'x' for n; {tail}")
        );
        assert_eq!(
            err("n slots="),
            format!("hosts:1: invalid slots '' for n; {tail}")
        );
        assert_eq!(
            err("n slots=+4"),
            format!("hosts:1: invalid slots '+4' for n; {tail}")
        );
        assert_eq!(
            err("n slots=4294967296"),
            format!("hosts:1: invalid slots '4294967296' for n; {tail}")
        );
        assert_eq!(
            err("n:0"),
            format!("hosts:1: invalid slot count '0' for n; {tail}")
        );
        assert_eq!(
            err("n:"),
            format!("hosts:1: invalid slot count '' for n; {tail}")
        );
        assert_eq!(
            err("n max_slots=-1"),
            format!("hosts:1: invalid max_slots '-1' for n; {tail}")
        );
        assert_eq!(
            err("n slots"),
            format!("hosts:1: invalid slots '' for n; {tail}")
        );
    }

    #[test]
    fn repeated_attributes() {
        assert_eq!(
            err("n slots=1 slots=2"),
            "hosts:1: slot count is given twice for n; keep one"
        );
        assert_eq!(
            err("n:2 slots=2"),
            "hosts:1: slot count is given twice for n; keep one"
        );
        assert_eq!(
            err("n max_slots=2 max_slots=3"),
            "hosts:1: max_slots is given twice for n; keep one"
        );
    }

    #[test]
    fn max_below_slots() {
        assert_eq!(
            err("n slots=4 max_slots=2"),
            "hosts:1: n has max_slots=2 below slots=4; raise max_slots or lower slots"
        );
    }

    #[test]
    fn bad_host_names() {
        assert_eq!(
            err("-oProxyCommand=x"),
            "hosts:1: expected a host name first, got '-oProxyCommand=x'; write e.g. 'node01 slots=4'"
        );
        assert_eq!(
            err("-evil"),
            "hosts:1: invalid host name '-evil'; host names must not start with '-'"
        );
        assert_eq!(
            err("no/de"),
            "hosts:1: invalid host name 'no/de'; use letters, digits, '.', '-', '_' (and ':' for IPv6)"
        );
        assert_eq!(
            err("bob@"),
            "hosts:1: invalid host name ''; the host name is empty"
        );
        assert_eq!(
            err(":4"),
            "hosts:1: invalid host name ''; the host name is empty"
        );
        assert_eq!(
            err("[fe80::1"),
            "hosts:1: invalid host name '[fe80::1'; a '[' opens an IPv6 address but no ']' closes it"
        );
        assert_eq!(
            err("[::1]4"),
            "hosts:1: invalid host name '[::1]4'; expected ':N' after ']'"
        );
        assert_eq!(
            err("a@b@c"),
            "hosts:1: invalid host name 'b@c'; use letters, digits, '.', '-', '_' (and ':' for IPv6)"
        );
    }

    #[test]
    fn bad_user_names() {
        let tail = "use letters, digits, '.', '-' and '_' (not starting with '-')";
        assert_eq!(
            err("@n"),
            format!("hosts:1: invalid user name '' in '@n'; {tail}")
        );
        assert_eq!(
            err("-l@n"),
            format!("hosts:1: invalid user name '-l' in '-l@n'; {tail}")
        );
    }

    #[test]
    fn user_conflicts() {
        assert_eq!(
            err("alice@n\nbob@n\n"),
            "hosts:2: n is listed as user 'bob' here but as user 'alice' at hosts:1; use one user per host"
        );
        assert_eq!(
            err("alice@n\nn\n"),
            "hosts:2: n is listed as no user here but as user 'alice' at hosts:1; use one user per host"
        );
    }

    #[test]
    fn max_slots_conflicts() {
        assert_eq!(
            err("n max_slots=8\n\nn\n"),
            "hosts:3: n has no max_slots here but max_slots=8 at hosts:1; give max_slots on every \
             entry for n or on none"
        );
    }

    #[test]
    fn slot_overflow() {
        assert_eq!(
            err("n slots=4294967295\nn\n"),
            "hosts:2: n adds up to more than 4294967295 slots; lower the counts"
        );
        assert_eq!(
            err("n max_slots=4294967295\nn max_slots=1\n"),
            "hosts:2: n adds up to more than 4294967295 max_slots; lower the counts"
        );
    }

    #[test]
    fn host_list_forms() {
        let nodes = parse_host_list("h1:2,h2, bob@h3:4 ,h1").unwrap();
        assert_eq!(
            nodes,
            vec![
                node("h1", 3),
                node("h2", 1),
                Node {
                    name: "h3".into(),
                    user: Some("bob".into()),
                    slots: 4,
                    max_slots: None
                },
            ]
        );
    }

    #[test]
    fn host_list_errors() {
        assert_eq!(
            list_err(""),
            "--host: no hosts given; use e.g. '--host node01:4,node02'"
        );
        assert_eq!(
            list_err("  "),
            "--host: no hosts given; use e.g. '--host node01:4,node02'"
        );
        assert_eq!(
            list_err("a,,b"),
            "--host item 2: empty entry; remove the extra ','"
        );
        assert_eq!(
            list_err("a,"),
            "--host item 2: empty entry; remove the extra ','"
        );
        assert_eq!(
            list_err("a,b:x"),
            "--host item 2: invalid slot count 'x' for b; expected a whole number from 1 to 4294967295"
        );
        assert_eq!(
            list_err("a b"),
            "--host item 1: invalid host name 'a b'; use letters, digits, '.', '-', '_' (and ':' for IPv6)"
        );
        assert_eq!(
            list_err("x@a,a"),
            "--host item 2: a is listed as no user here but as user 'x' at --host item 1; use one user per host"
        );
    }
}
