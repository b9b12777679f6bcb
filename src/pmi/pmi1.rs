//! PMI-1 ("simple") wire protocol: one `cmd=NAME key=value …` line per request, strictly one
//! reply line per request (barrier replies late, abort never), plus the multi-line
//! `mcmd=spawn … endcmd` form.
//!
//! Unknown or unsupported commands get an `rc=-1` reply rather than silence or a dropped
//! connection: the client blocks reading one reply line, so silence would hang it, while a reply
//! it does not expect makes its library return an error the application can report. The daemon
//! also gets an [`Action::Warning`] so the user learns what was asked for.

use super::{
    v1_safe, Action, ConnId, FenceReply, GetReply, PmiError, PmiServer, Who, CMD_NAME_MAX, KEYLEN_MAX,
    KVSNAME_MAX, MCMD_MAX, PMI1_LINE_MAX, VALLEN_MAX,
};

fn send(out: &mut Vec<Action>, conn: ConnId, line: impl AsRef<str>) {
    send_parts(out, conn, &[line.as_ref()]);
}

/// One reply line made of `parts`, built in one allocation with its newline: a get's reply is
/// the daemon's most frequent write.
fn send_parts(out: &mut Vec<Action>, conn: ConnId, parts: &[&str]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    debug_assert!(
        len < PMI1_LINE_MAX && !parts.iter().any(|p| p.contains('\n')),
        "pmi-1 reply too long: {parts:?}"
    );
    let mut bytes = Vec::with_capacity(len + 1);
    for p in parts {
        bytes.extend_from_slice(p.as_bytes());
    }
    bytes.push(b'\n');
    out.push(Action::Send { conn, bytes });
}

/// `key=value` words of a line, in order; a value runs to the next space and may contain `=`.
/// Kept as the checked text and searched per field: a command reads two or three fields, and
/// collecting them cost an allocation per request.
struct Fields<'a> {
    /// The words after the command, each holding `=` (checked by [`parse_fields`]).
    words: &'a str,
    /// `abort message=` runs to the end of the line, spaces included, so the user sees all of it.
    abort_message: Option<&'a str>,
}

impl<'a> Fields<'a> {
    fn get(&self, key: &str) -> Option<&'a str> {
        // By bytes: splitting by a char pattern cost more than the rest of a get.
        let bytes = self.words.as_bytes();
        let k = key.as_bytes();
        let mut at = 0;
        while at < bytes.len() {
            let end = bytes[at..].iter().position(|&b| b == b' ').map_or(bytes.len(), |n| at + n);
            let word = &bytes[at..end];
            if word.len() > k.len() && word[k.len()] == b'=' && &word[..k.len()] == k {
                // Both ends are next to ASCII bytes (`=`, a space or the end): char boundaries.
                return Some(&self.words[at + k.len() + 1..end]);
            }
            at = end + 1;
        }
        None
    }
}

fn parse_fields<'a>(
    who: Who,
    cmd: &str,
    line: &'a str,
    rest_from: usize,
) -> Result<Fields<'a>, PmiError> {
    let mut abort_message = None;
    let mut words = &line[rest_from..];
    let mut offset = rest_from;
    for word in line.as_bytes()[rest_from..].split(|&b| b == b' ') {
        let start = offset;
        offset += word.len() + 1;
        if word.is_empty() {
            continue;
        }
        if cmd == "abort" && word.starts_with(b"message=") {
            abort_message = Some(line[start + "message=".len()..].trim_end());
            words = &line[rest_from..start];
            break;
        }
        if !word.contains(&b'=') {
            return Err(PmiError::MalformedToken {
                who,
                token: line[start..start + word.len()].chars().take(64).collect(),
            });
        }
    }
    Ok(Fields {
        words,
        abort_message,
    })
}

fn required<'a>(
    who: Who,
    cmd: &str,
    f: &Fields<'a>,
    field: &'static str,
) -> Result<&'a str, PmiError> {
    f.get(field).ok_or_else(|| PmiError::MissingField {
        who,
        cmd: cmd.to_string(),
        field,
    })
}

fn number<T: std::str::FromStr>(
    who: Who,
    cmd: &str,
    field: &'static str,
    v: &str,
) -> Result<T, PmiError> {
    v.parse().map_err(|_| PmiError::BadNumber {
        who,
        cmd: cmd.to_string(),
        field,
        value: v.chars().take(32).collect(),
    })
}

pub(super) fn handle_line(
    srv: &mut PmiServer,
    conn: ConnId,
    line: &[u8],
    out: &mut Vec<Action>,
) -> Result<(), PmiError> {
    let who = srv.who(conn);
    let line = std::str::from_utf8(line).map_err(|_| PmiError::NotUtf8 { who })?;
    if srv.conns.get(&conn).is_some_and(|c| c.mcmd.is_some()) {
        return mcmd_line(srv, conn, line, out);
    }
    let trimmed = line.trim_start_matches(' ');
    if trimmed.trim_end().is_empty() {
        return Ok(());
    }
    let lead = line.len() - trimmed.len();
    let first = trimmed.split(' ').next().unwrap_or("");
    let rest_from = lead + first.len();
    if let Some(name) = first.strip_prefix("mcmd=") {
        gate(srv, conn, "mcmd")?;
        if name.len() > CMD_NAME_MAX {
            return Err(PmiError::CmdTooLong { who });
        }
        if let Some(c) = srv.conn_mut(conn) {
            c.mcmd = Some((vec![("mcmd".to_string(), name.to_string())], line.len()));
        }
        return Ok(());
    }
    let cmd = first
        .strip_prefix("cmd=")
        .ok_or(PmiError::MissingCmd { who })?;
    if cmd.len() > CMD_NAME_MAX {
        return Err(PmiError::CmdTooLong { who });
    }
    gate(srv, conn, cmd)?;
    let f = parse_fields(who, cmd, line, rest_from)?;
    match cmd {
        "init" => init(srv, conn, &f, out),
        "initack" => {
            let id: u32 = number(who, cmd, "pmiid", required(who, cmd, &f, "pmiid")?)?;
            srv.bind_rank(conn, id)?;
            let size = srv.job.size;
            send(out, conn, "cmd=initack");
            send(out, conn, format!("cmd=set size={size}"));
            send(out, conn, format!("cmd=set rank={id}"));
            send(out, conn, "cmd=set debug=0");
            Ok(())
        }
        "get_maxes" => {
            send(
                out,
                conn,
                format!("cmd=maxes kvsname_max={KVSNAME_MAX} keylen_max={KEYLEN_MAX} vallen_max={VALLEN_MAX}"),
            );
            Ok(())
        }
        "get_appnum" => {
            let rank = srv.require_rank(conn, cmd)?;
            send(out, conn, format!("cmd=appnum appnum={}", srv.appnum(rank)));
            Ok(())
        }
        "get_my_kvsname" => {
            send(
                out,
                conn,
                format!("cmd=my_kvsname kvsname={}", srv.job.kvsname),
            );
            Ok(())
        }
        "get_universe_size" => {
            send(
                out,
                conn,
                format!("cmd=universe_size size={}", srv.job.universe_size),
            );
            Ok(())
        }
        "put" => put(srv, conn, &f, out),
        "get" => get(srv, conn, &f, out),
        "barrier_in" => {
            let rank = srv.require_rank(conn, cmd)?;
            srv.enter_fence(rank, conn, FenceReply::V1, out)
        }
        "finalize" => {
            let rank = srv.require_rank(conn, cmd)?;
            send(out, conn, "cmd=finalize_ack");
            srv.mark_finalized(rank, out);
            Ok(())
        }
        "abort" => {
            let rank = srv.require_rank(conn, cmd)?;
            // The job ends either way; a garbled exit code must not hide the abort.
            let code = f.get("exitcode").and_then(|v| v.parse().ok()).unwrap_or(1);
            let message = f.abort_message.unwrap_or("").to_string();
            srv.mark_aborted(rank, code, message, out);
            Ok(())
        }
        "publish_name" => {
            let service = required(who, cmd, &f, "service")?;
            let port = required(who, cmd, &f, "port")?;
            match srv.publish(conn, service, port) {
                Ok(true) => send(
                    out,
                    conn,
                    "cmd=publish_result rc=0 info=ok msg=success",
                ),
                Ok(false) => send(
                    out,
                    conn,
                    "cmd=publish_result rc=-1 info=fail msg=service_already_published",
                ),
                Err(e) => {
                    send(
                        out,
                        conn,
                        "cmd=publish_result rc=-1 info=fail msg=name_too_long",
                    );
                    return Err(e);
                }
            }
            Ok(())
        }
        "unpublish_name" => {
            let service = required(who, cmd, &f, "service")?;
            if srv.names.remove(service).is_some() {
                send(
                    out,
                    conn,
                    "cmd=unpublish_result rc=0 info=ok msg=success",
                );
            } else {
                send(
                    out,
                    conn,
                    "cmd=unpublish_result rc=-1 info=fail msg=service_not_found",
                );
            }
            Ok(())
        }
        "lookup_name" => {
            let service = required(who, cmd, &f, "service")?;
            match srv.names.get(service) {
                Some(port) if v1_safe(port) => {
                    let line = format!("cmd=lookup_result rc=0 info=ok port={port}");
                    send(out, conn, line);
                }
                found => {
                    if found.is_some() {
                        let key = service.to_string();
                        srv.warn(conn, PmiError::NotRepresentable { who, key }, out);
                    }
                    send(
                        out,
                        conn,
                        "cmd=lookup_result rc=-1 info=fail msg=service_not_found",
                    );
                }
            }
            Ok(())
        }
        "spawn" => {
            send(
                out,
                conn,
                "cmd=spawn_result rc=-1 msg=spawn_not_supported",
            );
            srv.warn(conn, PmiError::SpawnUnsupported { who }, out);
            Ok(())
        }
        // Commands of the old MPICH client that rlaunch does not serve, answered with the reply
        // name that client expects so it fails cleanly instead of complaining about the name.
        "create_kvs" | "destroy_kvs" | "getbyidx" => {
            let reply = match cmd {
                "create_kvs" => "cmd=newkvs rc=-1 msg=create_kvs_not_supported",
                "destroy_kvs" => "cmd=kvs_destroyed rc=-1 msg=destroy_kvs_not_supported",
                _ => "cmd=getbyidx_results rc=-1 reason=getbyidx_not_supported",
            };
            send(out, conn, reply);
            srv.warn(
                conn,
                PmiError::Unsupported {
                    who,
                    cmd: cmd.to_string(),
                },
                out,
            );
            Ok(())
        }
        _ => {
            send(
                out,
                conn,
                format!("cmd=error rc=-1 msg=unknown_command_{cmd}"),
            );
            srv.warn(
                conn,
                PmiError::UnknownCommand {
                    who,
                    cmd: cmd.to_string(),
                },
                out,
            );
            Ok(())
        }
    }
}

/// Refuses anything after finalize, and anything but `abort` while the rank waits in a barrier
/// (another thread may abort; nothing else can legally arrive).
fn gate(srv: &PmiServer, conn: ConnId, cmd: &str) -> Result<(), PmiError> {
    srv.check_not_finalized(conn, cmd)?;
    let Some(c) = srv.conns.get(&conn) else {
        return Ok(());
    };
    if let (true, Some(rank)) = (c.in_v1_barrier, c.rank) {
        if cmd == "barrier_in" {
            return Err(PmiError::DuplicateFence { rank });
        }
        if cmd != "abort" {
            return Err(PmiError::BusyInBarrier {
                rank,
                cmd: cmd.to_string(),
            });
        }
    }
    Ok(())
}

fn init(
    srv: &mut PmiServer,
    conn: ConnId,
    f: &Fields<'_>,
    out: &mut Vec<Action>,
) -> Result<(), PmiError> {
    let who = srv.who(conn);
    let version = required(who, "init", f, "pmi_version")?;
    // pmi_subversion is optional in old clients; 0 is the conservative reading.
    let subversion = f.get("pmi_subversion").unwrap_or("0");
    match (version, subversion) {
        ("1", "0") | ("1", "1") => {
            let rank = srv.require_rank(conn, "init")?;
            send(
                out,
                conn,
                "cmd=response_to_init pmi_version=1 pmi_subversion=1 rc=0",
            );
            let sub = if subversion == "1" { 1 } else { 0 };
            srv.mark_initialized(rank, (1, sub), out);
            Ok(())
        }
        ("2", "0") => {
            // A PMI-2 client opens with this one PMI-1 line, then frames everything; the rank
            // comes with `fullinit`, which is where the rank counts as initialised.
            send(
                out,
                conn,
                "cmd=response_to_init pmi_version=2 pmi_subversion=0 rc=0",
            );
            if let Some(c) = srv.conn_mut(conn) {
                c.mode = super::Mode::Framed;
            }
            Ok(())
        }
        _ => {
            send(
                out,
                conn,
                "cmd=response_to_init pmi_version=1 pmi_subversion=1 rc=-1",
            );
            Err(PmiError::BadVersion {
                who,
                version: version.chars().take(16).collect(),
                subversion: subversion.chars().take(16).collect(),
            })
        }
    }
}

fn put(
    srv: &mut PmiServer,
    conn: ConnId,
    f: &Fields<'_>,
    out: &mut Vec<Action>,
) -> Result<(), PmiError> {
    let rank = srv.require_rank(conn, "put")?;
    let who = Who::Rank(rank);
    if f.get("kvsname").is_some_and(|k| k != srv.job.kvsname) {
        send(out, conn, "cmd=put_result rc=-1 msg=unknown_kvsname");
        return Ok(());
    }
    let key = required(who, "put", f, "key")?;
    // An absent value is how a client puts the empty string.
    let value = f.get("value").unwrap_or("");
    match srv.kvs_put(rank, key, value) {
        Ok(()) => {
            send(out, conn, "cmd=put_result rc=0 msg=success");
            Ok(())
        }
        Err(e) => {
            let msg = match &e {
                PmiError::TooManyKeys { .. } => "too_many_keys",
                PmiError::EmptyKey { .. } => "empty_key",
                PmiError::KeyTooLong { .. } => "key_too_long",
                PmiError::ValueTooLong { .. } => "value_too_long",
                _ => "put_failed",
            };
            send(out, conn, format!("cmd=put_result rc=-1 msg={msg}"));
            Err(e)
        }
    }
}

fn get(
    srv: &mut PmiServer,
    conn: ConnId,
    f: &Fields<'_>,
    out: &mut Vec<Action>,
) -> Result<(), PmiError> {
    let who = srv.who(conn);
    if f.get("kvsname").is_some_and(|k| k != srv.job.kvsname) {
        send(
            out,
            conn,
            "cmd=get_result rc=-1 msg=unknown_kvsname value=unknown",
        );
        return Ok(());
    }
    let key = required(who, "get", f, "key")?;
    if let Err(e) = PmiServer::check_key(who, key) {
        send(
            out,
            conn,
            "cmd=get_result rc=-1 msg=bad_key value=unknown",
        );
        return Err(e);
    }
    // The process map is job information, not a put: it answers even before any fence.
    let value = if key == "PMI_process_mapping" {
        srv.job.process_mapping.as_deref()
    } else {
        srv.kvs_get(key)
    };
    if value.is_some() || key == "PMI_process_mapping" {
        get_reply(srv, conn, key, value, out);
    } else if !srv.defer_get(conn, key, GetReply::V1, out)? {
        get_reply(srv, conn, key, None, out);
    }
    Ok(())
}

/// `get_result` for `key`: the value, or "not found" when there is none or it cannot travel in
/// a PMI-1 line (with a Warning).
pub(super) fn get_reply(
    srv: &PmiServer,
    conn: ConnId,
    key: &str,
    value: Option<&str>,
    out: &mut Vec<Action>,
) {
    let who = srv.who(conn);
    const PREFIX: &str = "cmd=get_result rc=0 msg=success value=";
    match value {
        Some(v) if v1_safe(v) && PREFIX.len() + v.len() < PMI1_LINE_MAX => send_parts(out, conn, &[PREFIX, v]),
        found => {
            if found.is_some() {
                srv.warn(
                    conn,
                    PmiError::NotRepresentable {
                        who,
                        key: key.to_string(),
                    },
                    out,
                );
            }
            send_parts(out, conn, &["cmd=get_result rc=-1 msg=key_", key, "_not_found value=unknown"]);
        }
    }
}

/// One line of an `mcmd=` block: `key=value` (the value may hold spaces) until `endcmd`.
fn mcmd_line(
    srv: &mut PmiServer,
    conn: ConnId,
    line: &str,
    out: &mut Vec<Action>,
) -> Result<(), PmiError> {
    let who = srv.who(conn);
    let Some(c) = srv.conn_mut(conn) else {
        return Ok(());
    };
    let Some((pairs, size)) = c.mcmd.as_mut() else {
        return Ok(());
    };
    if line.trim_end() != "endcmd" {
        *size += line.len() + 1;
        if *size > MCMD_MAX {
            return Err(PmiError::McmdTooLong { who });
        }
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| PmiError::MalformedToken {
                who,
                token: line.chars().take(64).collect(),
            })?;
        pairs.push((k.to_string(), v.to_string()));
        return Ok(());
    }
    let Some((pairs, _)) = c.mcmd.take() else {
        return Ok(());
    };
    let get = |key: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    let name = get("mcmd").unwrap_or("").to_string();
    if name != "spawn" {
        send(
            out,
            conn,
            format!("cmd=error rc=-1 msg=unknown_command_{name}"),
        );
        srv.warn(conn, PmiError::UnknownCommand { who, cmd: name }, out);
        return Ok(());
    }
    // MPICH writes one block per executable and reads a single reply after the last one.
    let total = get("totspawns").and_then(|v| v.parse::<u64>().ok());
    let so_far = get("spawnssofar").and_then(|v| v.parse::<u64>().ok());
    if let (Some(total), Some(so_far)) = (total, so_far) {
        if so_far < total {
            return Ok(());
        }
    }
    send(
        out,
        conn,
        "cmd=spawn_result rc=-1 msg=spawn_not_supported",
    );
    srv.warn(conn, PmiError::SpawnUnsupported { who }, out);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::{has_error, has_warning, job, text};
    use super::*;

    fn run(srv: &mut PmiServer, conn: ConnId, input: &str) -> Vec<Action> {
        srv.input(conn, input.as_bytes())
    }

    fn server() -> PmiServer {
        let mut s = PmiServer::new(job(2, &[0, 1]));
        s.connect(1, Some(0));
        s.connect(2, Some(1));
        s
    }

    #[test]
    fn init_reports_initialized_once_with_the_clients_version() {
        let mut s = server();
        let a = run(&mut s, 1, "cmd=init pmi_version=1 pmi_subversion=1\n");
        assert_eq!(
            text(&a),
            "cmd=response_to_init pmi_version=1 pmi_subversion=1 rc=0\n"
        );
        assert!(a.contains(&Action::Initialized {
            rank: 0,
            version: (1, 1)
        }));
        assert!(s.is_initialized(0));
        assert!(!s.is_initialized(1));
        let a = run(&mut s, 1, "cmd=init pmi_version=1 pmi_subversion=1\n");
        assert!(!a.iter().any(|a| matches!(a, Action::Initialized { .. })));
        let a = run(&mut s, 2, "cmd=init pmi_version=1 pmi_subversion=0\n");
        assert!(a.contains(&Action::Initialized {
            rank: 1,
            version: (1, 0)
        }));
    }

    #[test]
    fn unsupported_version_gets_rc_minus_one_then_protocol_error() {
        let mut s = server();
        let a = run(&mut s, 1, "cmd=init pmi_version=3 pmi_subversion=0\n");
        assert_eq!(
            text(&a),
            "cmd=response_to_init pmi_version=1 pmi_subversion=1 rc=-1\n"
        );
        assert!(has_error(&a, "asked for PMI version 3.0"), "{a:?}");
        assert!(matches!(
            a.last(),
            Some(Action::ProtocolError { rank: Some(0), .. })
        ));
    }

    #[test]
    fn simple_queries() {
        let mut j = job(4, &[2, 3]);
        j.appnum_of = vec![0, 0, 1, 1];
        j.universe_size = 8;
        let mut s = PmiServer::new(j);
        s.connect(5, Some(3));
        let a = run(
            &mut s,
            5,
            "cmd=get_maxes\ncmd=get_appnum\ncmd=get_my_kvsname\ncmd=get_universe_size\n",
        );
        assert_eq!(
            text(&a),
            "cmd=maxes kvsname_max=64 keylen_max=64 vallen_max=1024\ncmd=appnum appnum=1\n\
             cmd=my_kvsname kvsname=rl-test\ncmd=universe_size size=8\n"
        );
    }

    #[test]
    fn put_then_get_before_any_fence_and_missing_key() {
        let mut s = server();
        let a = run(
            &mut s,
            1,
            "cmd=put kvsname=rl-test key=a/b[1]-x value=v=1\n",
        );
        assert_eq!(text(&a), "cmd=put_result rc=0 msg=success\n");
        let a = run(&mut s, 2, "cmd=get kvsname=rl-test key=a/b[1]-x\n");
        assert_eq!(text(&a), "cmd=get_result rc=0 msg=success value=v=1\n");
        let a = run(&mut s, 2, "cmd=get kvsname=rl-test key=nope\n");
        assert_eq!(
            text(&a),
            "cmd=get_result rc=-1 msg=key_nope_not_found value=unknown\n"
        );
        // Missing value = empty string.
        let a = run(
            &mut s,
            1,
            "cmd=put kvsname=rl-test key=e\ncmd=get kvsname=rl-test key=e\n",
        );
        assert_eq!(
            text(&a),
            "cmd=put_result rc=0 msg=success\ncmd=get_result rc=0 msg=success value=\n"
        );
    }

    #[test]
    fn fields_are_found_by_whole_key_in_any_order() {
        let line = "cmd=put  keyx=1 value=a=b key=k kvsname= é=ü";
        let f = parse_fields(Who::Conn(1), "put", line, "cmd=put".len()).unwrap();
        assert_eq!(f.get("key"), Some("k"), "a longer key with the same start is another key");
        assert_eq!(f.get("keyx"), Some("1"));
        assert_eq!(f.get("value"), Some("a=b"), "a value runs to the next space, `=` included");
        assert_eq!(f.get("kvsname"), Some(""));
        assert_eq!(f.get("é"), Some("ü"));
        assert_eq!(f.get("ke"), None);
        assert_eq!(f.get("cmd"), None, "the command is not a field");
        let f = parse_fields(Who::Conn(1), "abort", "cmd=abort exitcode=3 message=a b=c", "cmd=abort".len()).unwrap();
        assert_eq!((f.get("exitcode"), f.abort_message, f.get("message"), f.get("b")), (Some("3"), Some("a b=c"), None, None));
        assert!(matches!(
            parse_fields(Who::Conn(1), "put", "cmd=put key=k junk", "cmd=put".len()),
            Err(PmiError::MalformedToken { token, .. }) if token == "junk"
        ));
    }

    #[test]
    fn wrong_kvsname_is_refused_without_failing_the_job() {
        let mut s = server();
        let a = run(
            &mut s,
            1,
            "cmd=put kvsname=other key=a value=1\ncmd=get kvsname=other key=a\n",
        );
        assert_eq!(
            text(&a),
            "cmd=put_result rc=-1 msg=unknown_kvsname\ncmd=get_result rc=-1 msg=unknown_kvsname value=unknown\n"
        );
        assert!(!a.iter().any(|a| matches!(a, Action::ProtocolError { .. })));
    }

    #[test]
    fn process_mapping_is_answered_or_omitted() {
        let mut s = server();
        let a = run(
            &mut s,
            1,
            "cmd=get kvsname=rl-test key=PMI_process_mapping\n",
        );
        assert_eq!(
            text(&a),
            "cmd=get_result rc=0 msg=success value=(vector,(0,1,2))\n"
        );
        let mut j = job(2, &[0, 1]);
        j.process_mapping = None;
        let mut s = PmiServer::new(j);
        s.connect(1, Some(0));
        let a = run(
            &mut s,
            1,
            "cmd=get kvsname=rl-test key=PMI_process_mapping\n",
        );
        assert_eq!(
            text(&a),
            "cmd=get_result rc=-1 msg=key_PMI_process_mapping_not_found value=unknown\n"
        );
    }

    #[test]
    fn value_that_cannot_fit_a_pmi1_reply_is_not_found_with_warning() {
        let mut s = server();
        // A PMI-2 peer elsewhere put a 1024-byte value and one with a space; both arrive via the fence.
        let long = "x".repeat(1000);
        s.input(1, b"cmd=barrier_in\n");
        s.input(2, b"cmd=barrier_in\n");
        s.fence_done(
            1,
            vec![("long".into(), long), ("spacey".into(), "a b".into())],
        );
        for key in ["long", "spacey"] {
            let a = run(&mut s, 1, &format!("cmd=get kvsname=rl-test key={key}\n"));
            assert_eq!(
                text(&a),
                format!("cmd=get_result rc=-1 msg=key_{key}_not_found value=unknown\n")
            );
            assert!(has_warning(&a, "cannot travel"), "{a:?}");
        }
    }

    #[test]
    fn over_limit_key_and_value() {
        let mut s = server();
        let key = "k".repeat(KEYLEN_MAX + 1);
        let a = run(
            &mut s,
            1,
            &format!("cmd=put kvsname=rl-test key={key} value=1\n"),
        );
        assert_eq!(text(&a), "cmd=put_result rc=-1 msg=key_too_long\n");
        assert!(has_error(&a, "65-byte PMI key"));
        let mut s = server();
        let a = run(&mut s, 1, &format!("cmd=get kvsname=rl-test key={key}\n"));
        assert_eq!(text(&a), "cmd=get_result rc=-1 msg=bad_key value=unknown\n");
        assert!(has_error(&a, "65-byte PMI key"));
        let mut s = server();
        let a = run(&mut s, 1, "cmd=put kvsname=rl-test key= value=1\n");
        assert!(has_error(&a, "empty PMI key"));
    }

    #[test]
    fn barrier_is_deferred_until_fence_done() {
        let mut s = server();
        assert!(run(&mut s, 1, "cmd=barrier_in\n").is_empty());
        let a = run(&mut s, 2, "cmd=barrier_in\n");
        assert_eq!(
            a,
            vec![Action::FenceReady {
                seq: 1,
                puts: vec![]
            }]
        );
        let a = s.fence_done(1, vec![]);
        assert_eq!(text(&a), "cmd=barrier_out\ncmd=barrier_out\n");
    }

    #[test]
    fn one_rank_job_still_goes_through_fence_ready() {
        let mut s = PmiServer::new(job(1, &[0]));
        s.connect(1, Some(0));
        let a = run(
            &mut s,
            1,
            "cmd=put kvsname=rl-test key=k value=v\ncmd=barrier_in\n",
        );
        assert_eq!(
            a[1],
            Action::FenceReady {
                seq: 1,
                puts: vec![("k".into(), "v".into())]
            }
        );
    }

    #[test]
    fn duplicate_barrier_and_busy_in_barrier_are_protocol_errors() {
        let mut s = server();
        run(&mut s, 1, "cmd=barrier_in\n");
        let a = run(&mut s, 1, "cmd=barrier_in\n");
        assert!(
            has_error(&a, "rank 0 entered the PMI barrier/fence again"),
            "{a:?}"
        );
        let mut s = server();
        run(&mut s, 1, "cmd=barrier_in\n");
        let a = run(&mut s, 1, "cmd=get_maxes\n");
        assert!(has_error(&a, "while waiting in a PMI-1 barrier"), "{a:?}");
        assert!(text(&a).is_empty());
    }

    #[test]
    fn duplicate_barrier_after_fence_ready_is_caught_too() {
        let mut s = server();
        run(&mut s, 1, "cmd=barrier_in\n");
        run(&mut s, 2, "cmd=barrier_in\n");
        // fence outstanding; rank 1 (buggy) reconnects on a new socket and enters again
        s.disconnect(2);
        s.connect(3, Some(1));
        let a = run(&mut s, 3, "cmd=barrier_in\n");
        assert!(
            has_error(&a, "rank 1 entered the PMI barrier/fence again"),
            "{a:?}"
        );
    }

    #[test]
    fn abort_during_barrier_is_allowed_and_gets_no_reply() {
        let mut s = server();
        run(&mut s, 1, "cmd=barrier_in\n");
        let a = run(
            &mut s,
            1,
            "cmd=abort exitcode=7 message=it went wrong: x=1\n",
        );
        assert_eq!(
            a,
            vec![Action::Abort {
                rank: 0,
                code: 7,
                message: "it went wrong: x=1".into()
            }]
        );
        let a = run(&mut s, 2, "cmd=abort\n");
        assert_eq!(
            a,
            vec![Action::Abort {
                rank: 1,
                code: 1,
                message: String::new()
            }]
        );
        let a = run(&mut s, 2, "cmd=abort exitcode=banana\n");
        assert_eq!(
            a,
            vec![Action::Abort {
                rank: 1,
                code: 1,
                message: String::new()
            }]
        );
    }

    #[test]
    fn finalize_then_anything_is_a_protocol_error() {
        let mut s = server();
        let a = run(&mut s, 1, "cmd=finalize\n");
        assert_eq!(text(&a), "cmd=finalize_ack\n");
        assert!(a.contains(&Action::Finalized { rank: 0 }));
        assert!(s.is_finalized(0));
        let a = run(&mut s, 1, "cmd=get_maxes\n");
        assert!(
            has_error(&a, "rank 0 sent PMI command `get_maxes` after PMI finalize"),
            "{a:?}"
        );
    }

    #[test]
    fn initack_binds_the_rank_in_port_mode() {
        let mut s = PmiServer::new(job(4, &[2, 3]));
        s.connect(9, None);
        let a = run(&mut s, 9, "cmd=init pmi_version=1 pmi_subversion=1\n");
        assert!(has_error(&a, "before naming its rank"), "{a:?}");
        let mut s = PmiServer::new(job(4, &[2, 3]));
        s.connect(9, None);
        let a = run(
            &mut s,
            9,
            "cmd=initack pmiid=3\ncmd=init pmi_version=1 pmi_subversion=1\n",
        );
        assert_eq!(
            text(&a),
            "cmd=initack\ncmd=set size=4\ncmd=set rank=3\ncmd=set debug=0\n\
             cmd=response_to_init pmi_version=1 pmi_subversion=1 rc=0\n"
        );
        assert!(s.is_initialized(3));
        let mut s = PmiServer::new(job(4, &[2, 3]));
        s.connect(9, None);
        assert!(has_error(
            &run(&mut s, 9, "cmd=initack pmiid=1\n"),
            "claims rank 1, which this node does not run"
        ));
        let mut s = PmiServer::new(job(4, &[2, 3]));
        s.connect(9, Some(2));
        assert!(has_error(
            &run(&mut s, 9, "cmd=initack pmiid=3\n"),
            "rank 2 named itself rank 3"
        ));
        let mut s = PmiServer::new(job(4, &[2, 3]));
        s.connect(9, None);
        assert!(has_error(
            &run(&mut s, 9, "cmd=initack pmiid=x\n"),
            "pmiid=\"x\""
        ));
    }

    #[test]
    fn unknown_and_unsupported_commands_get_rc_minus_one_and_a_warning() {
        let mut s = server();
        let a = run(&mut s, 1, "cmd=frobnicate a=1\n");
        assert_eq!(text(&a), "cmd=error rc=-1 msg=unknown_command_frobnicate\n");
        assert!(has_warning(&a, "unknown PMI command `frobnicate`"));
        let a = run(&mut s, 1, "cmd=getbyidx kvsname=rl-test idx=0\n");
        assert_eq!(
            text(&a),
            "cmd=getbyidx_results rc=-1 reason=getbyidx_not_supported\n"
        );
        let a = run(&mut s, 1, "cmd=create_kvs\n");
        assert_eq!(text(&a), "cmd=newkvs rc=-1 msg=create_kvs_not_supported\n");
        let a = run(&mut s, 1, "cmd=destroy_kvs kvsname=x\n");
        assert_eq!(
            text(&a),
            "cmd=kvs_destroyed rc=-1 msg=destroy_kvs_not_supported\n"
        );
        let a = run(
            &mut s,
            1,
            &format!("cmd={}\n", "z".repeat(CMD_NAME_MAX + 1)),
        );
        assert!(has_error(&a, "command name longer"));
    }

    #[test]
    fn malformed_lines() {
        let mut s = server();
        assert!(has_error(
            &run(&mut s, 1, "cmd=put key\n"),
            "token \"key\" without `=`"
        ));
        let mut s = server();
        assert!(has_error(
            &run(&mut s, 1, "cmd=initack\n"),
            "without the required `pmiid=`"
        ));
        let mut s = server();
        run(&mut s, 1, "cmd=get_maxes\n");
        assert!(has_error(
            &run(&mut s, 1, "hello\n"),
            "does not start with `cmd=`"
        ));
        let mut s = server();
        assert!(has_error(&s.input(1, b"cmd=get key=\xff\n"), "not UTF-8"));
        // Blank lines and extra spaces are tolerated.
        let mut s = server();
        let a = run(&mut s, 1, "\ncmd=put  kvsname=rl-test   key=a value=b \n");
        assert_eq!(text(&a), "cmd=put_result rc=0 msg=success\n");
    }

    #[test]
    fn name_service() {
        let mut s = server();
        let a = run(
            &mut s,
            1,
            "cmd=publish_name service=svc port=tag#0$port#1$\n",
        );
        assert_eq!(text(&a), "cmd=publish_result rc=0 info=ok msg=success\n");
        let a = run(&mut s, 2, "cmd=publish_name service=svc port=other\n");
        assert_eq!(
            text(&a),
            "cmd=publish_result rc=-1 info=fail msg=service_already_published\n"
        );
        let a = run(&mut s, 2, "cmd=lookup_name service=svc\n");
        assert_eq!(
            text(&a),
            "cmd=lookup_result rc=0 info=ok port=tag#0$port#1$\n"
        );
        let a = run(
            &mut s,
            2,
            "cmd=unpublish_name service=svc\ncmd=unpublish_name service=svc\n",
        );
        assert_eq!(
            text(&a),
            "cmd=unpublish_result rc=0 info=ok msg=success\ncmd=unpublish_result rc=-1 info=fail msg=service_not_found\n"
        );
        let a = run(&mut s, 2, "cmd=lookup_name service=svc\n");
        assert_eq!(
            text(&a),
            "cmd=lookup_result rc=-1 info=fail msg=service_not_found\n"
        );
        let a = run(
            &mut s,
            2,
            &format!("cmd=publish_name service=s port={}\n", "p".repeat(300)),
        );
        assert_eq!(
            text(&a),
            "cmd=publish_result rc=-1 info=fail msg=name_too_long\n"
        );
        assert!(has_error(&a, "300-byte port"));
    }

    #[test]
    fn mcmd_spawn_replies_once_after_the_last_block() {
        let mut s = server();
        let block = |n: u32| {
            format!(
                "mcmd=spawn\nnprocs=2\nexecname=./a b\ntotspawns=2\nspawnssofar={n}\narg1=x y\nargcnt=1\n\
                 preput_num=0\ninfo_num=0\nendcmd\n"
            )
        };
        assert!(run(&mut s, 1, &block(1)).is_empty());
        let a = run(&mut s, 1, &block(2));
        assert_eq!(text(&a), "cmd=spawn_result rc=-1 msg=spawn_not_supported\n");
        assert!(has_warning(&a, "MPI_Comm_spawn"));
        // The connection is back to normal commands.
        assert_eq!(
            text(&run(&mut s, 1, "cmd=get_appnum\n")),
            "cmd=appnum appnum=0\n"
        );
        // Single-line spawn and unknown mcmd.
        assert_eq!(
            text(&run(&mut s, 1, "cmd=spawn nprocs=1\n")),
            "cmd=spawn_result rc=-1 msg=spawn_not_supported\n"
        );
        assert_eq!(
            text(&run(&mut s, 1, "mcmd=zap\na=1\nendcmd\n")),
            "cmd=error rc=-1 msg=unknown_command_zap\n"
        );
    }

    #[test]
    fn mcmd_without_endcmd_is_bounded() {
        let mut s = server();
        run(&mut s, 1, "mcmd=spawn\n");
        let line = format!("arg={}\n", "a".repeat(1000));
        let mut last = Vec::new();
        for _ in 0..(MCMD_MAX / 1000 + 2) {
            last = run(&mut s, 1, &line);
            if !last.is_empty() {
                break;
            }
        }
        assert!(has_error(&last, "without `endcmd`"), "{last:?}");
    }
}
