//! PMI-2 wire protocol: after a PMI-1 style `init` line, each message is a 6-character decimal
//! length (space padded) followed by `cmd=NAME;key=value;…;` with `;` inside values doubled.
//!
//! Every reply carries `rc=` and echoes the request's `thrid=` (threaded clients match replies
//! by it). Unknown and unsupported commands get `NAME-response` with `rc=-1` and an `errmsg`,
//! the error shape the MPICH client turns into an MPI error, plus a Warning for the daemon.

use super::{
    Action, AttrWaiter, ConnId, FenceReply, GetReply, PmiError, PmiServer, Who, CMD_NAME_MAX, THRID_MAX,
    VALLEN_MAX,
};

/// The length header: decimal digits with spaces on either side (the MPICH client writes it
/// left-aligned, servers right-aligned). None when it is anything else.
pub(super) fn parse_header(h: &[u8]) -> Option<usize> {
    let s = std::str::from_utf8(h).ok()?.trim_matches(' ');
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn escape_into(out: &mut String, v: &str) {
    for ch in v.chars() {
        if ch == ';' {
            out.push(';');
        }
        out.push(ch);
    }
}

/// One framed reply: `cmd`, then `thrid` if the request had one, then `pairs` in order.
pub(super) fn frame(cmd: &str, thrid: Option<&str>, pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut body = String::with_capacity(64);
    body.push_str("cmd=");
    escape_into(&mut body, cmd);
    body.push(';');
    if let Some(t) = thrid {
        body.push_str("thrid=");
        escape_into(&mut body, t);
        body.push(';');
    }
    for (k, v) in pairs {
        body.push_str(k);
        body.push('=');
        escape_into(&mut body, v);
        body.push(';');
    }
    let mut out = format!("{:>6}", body.len()).into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

pub(super) fn getnodeattr_reply(thrid: Option<&str>, value: Option<&str>) -> Vec<u8> {
    match value {
        Some(v) => frame(
            "info-getnodeattr-response",
            thrid,
            &[("found", "TRUE"), ("value", v), ("rc", "0")],
        ),
        None => frame(
            "info-getnodeattr-response",
            thrid,
            &[("found", "FALSE"), ("rc", "0")],
        ),
    }
}

/// Splits a message body into `key=value` pairs, undoing `;;`. A trailing piece without `=`,
/// or an unterminated last pair that is not text, is junk some clients leave (a NUL or newline)
/// and is ignored; an unterminated last pair that is text is accepted.
pub(super) fn parse_body(who: Who, body: &[u8]) -> Result<Vec<(String, String)>, PmiError> {
    let mut pairs = Vec::new();
    let mut i = 0;
    while i < body.len() {
        let Some(eq) = body[i..].iter().position(|&b| b == b'=') else {
            break;
        };
        let key = &body[i..i + eq];
        let mut j = i + eq + 1;
        let mut value = Vec::new();
        let mut terminated = false;
        while j < body.len() {
            if body[j] == b';' {
                if body.get(j + 1) == Some(&b';') {
                    value.push(b';');
                    j += 2;
                    continue;
                }
                j += 1;
                terminated = true;
                break;
            }
            value.push(body[j]);
            j += 1;
        }
        let text = (std::str::from_utf8(key), String::from_utf8(value));
        match (text, terminated) {
            ((Ok(k), Ok(v)), _) => pairs.push((k.to_string(), v)),
            (_, true) => return Err(PmiError::NotUtf8 { who }),
            (_, false) => {}
        }
        i = j;
    }
    Ok(pairs)
}

struct Req {
    pairs: Vec<(String, String)>,
}

impl Req {
    fn get(&self, key: &str) -> Option<&str> {
        self.pairs[1..]
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

pub(super) fn handle_frame(
    srv: &mut PmiServer,
    conn: ConnId,
    body: &[u8],
    out: &mut Vec<Action>,
) -> Result<(), PmiError> {
    let who = srv.who(conn);
    let pairs = parse_body(who, body)?;
    match pairs.first() {
        Some((k, _)) if k == "cmd" => {}
        _ => return Err(PmiError::MissingCmd { who }),
    }
    let req = Req { pairs };
    let cmd = req.pairs[0].1.as_str();
    if cmd.len() > CMD_NAME_MAX {
        return Err(PmiError::CmdTooLong { who });
    }
    let thrid = req.get("thrid");
    if thrid.is_some_and(|t| t.len() > THRID_MAX) {
        return Err(PmiError::ThridTooLong { who });
    }
    srv.check_not_finalized(conn, cmd)?;
    let required = |field: &'static str| {
        req.get(field).ok_or_else(|| PmiError::MissingField {
            who,
            cmd: cmd.to_string(),
            field,
        })
    };
    let reply = |out: &mut Vec<Action>, name: &str, pairs: &[(&str, &str)]| {
        out.push(Action::Send {
            conn,
            bytes: frame(name, thrid, pairs),
        });
    };

    if cmd == "fullinit" {
        if let Some(r) = req.get("pmirank") {
            let rank = r.parse::<u32>().map_err(|_| PmiError::BadNumber {
                who,
                cmd: cmd.to_string(),
                field: "pmirank",
                value: r.chars().take(32).collect(),
            })?;
            srv.bind_rank(conn, rank)?;
        }
        let rank = srv.require_rank(conn, cmd)?;
        let (size, appnum) = (srv.job.size.to_string(), srv.appnum(rank).to_string());
        reply(
            out,
            "fullinit-response",
            &[
                ("pmi-version", "2"),
                ("pmi-subversion", "0"),
                ("rank", &rank.to_string()),
                ("size", &size),
                ("appnum", &appnum),
                ("debugged", "FALSE"),
                ("pmiverbose", "FALSE"),
                ("rc", "0"),
            ],
        );
        srv.mark_initialized(rank, (2, 0), out);
        return Ok(());
    }

    let rank = srv.require_rank(conn, cmd)?;
    let who = Who::Rank(rank);
    match cmd {
        "job-getid" => {
            let jobid = srv.job.kvsname.clone();
            reply(out, "job-getid-response", &[("jobid", &jobid), ("rc", "0")]);
        }
        "kvs-put" => {
            let key = required("key")?;
            // An absent value is how a client puts the empty string.
            let value = req.get("value").unwrap_or("");
            if let Err(e) = srv.kvs_put(rank, key, value) {
                reply(
                    out,
                    "kvs-put-response",
                    &[("rc", "-1"), ("errmsg", &e.to_string())],
                );
                return Err(e);
            }
            reply(out, "kvs-put-response", &[("rc", "0")]);
        }
        "kvs-get" => {
            let key = required("key")?;
            if let Err(e) = PmiServer::check_key(who, key) {
                reply(
                    out,
                    "kvs-get-response",
                    &[("found", "FALSE"), ("rc", "-1"), ("errmsg", &e.to_string())],
                );
                return Err(e);
            }
            // This job is the only one rlaunch knows; another jobid has no keys.
            let other_job = req.get("jobid").is_some_and(|j| j != srv.job.kvsname);
            let value = if other_job {
                None
            } else {
                srv.kvs_get(key).map(str::to_string)
            };
            if value.is_none() && !other_job {
                let thrid = thrid.map(str::to_string);
                if srv.defer_get(conn, key, GetReply::V2 { thrid }, out)? {
                    return Ok(());
                }
            }
            found_reply(
                srv,
                conn,
                out,
                "kvs-get-response",
                thrid,
                key,
                value.as_deref(),
            );
        }
        "kvs-fence" => {
            let thrid = thrid.map(str::to_string);
            srv.enter_fence(rank, conn, FenceReply::V2 { thrid }, out)?;
        }
        "info-putnodeattr" => {
            let key = required("key")?;
            let value = req.get("value").unwrap_or("");
            if let Err(e) = srv.put_node_attr(conn, key, value) {
                reply(
                    out,
                    "info-putnodeattr-response",
                    &[("rc", "-1"), ("errmsg", &e.to_string())],
                );
                return Err(e);
            }
            reply(out, "info-putnodeattr-response", &[("rc", "0")]);
            srv.wake_attr_waiters(key, out);
        }
        "info-getnodeattr" => {
            let key = required("key")?;
            PmiServer::check_key(who, key)?;
            if let Some(v) = srv.node_attrs.get(key) {
                out.push(Action::Send {
                    conn,
                    bytes: getnodeattr_reply(thrid, Some(v)),
                });
            } else if req.get("wait") == Some("TRUE") {
                srv.add_pending(conn)?;
                srv.attr_waiters.push(AttrWaiter {
                    conn,
                    key: key.to_string(),
                    thrid: thrid.map(str::to_string),
                });
            } else {
                out.push(Action::Send {
                    conn,
                    bytes: getnodeattr_reply(thrid, None),
                });
            }
        }
        "info-getjobattr" => {
            let key = required("key")?;
            let value = match key {
                "PMI_process_mapping" => srv.job.process_mapping.clone(),
                "universeSize" => Some(srv.job.universe_size.to_string()),
                // MPICH asks for this to learn of failed ranks; rlaunch ends the job on a
                // failure, so the list is always empty.
                "PMI_dead_processes" => Some(String::new()),
                _ => srv.kvs_get(key).map(str::to_string),
            };
            found_reply(
                srv,
                conn,
                out,
                "info-getjobattr-response",
                thrid,
                key,
                value.as_deref(),
            );
        }
        "finalize" => {
            reply(out, "finalize-response", &[("rc", "0")]);
            srv.mark_finalized(rank, out);
        }
        "abort" => {
            // The job ends either way; a garbled exit code must not hide the abort.
            let code = req
                .get("exitcode")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1);
            let message = req.get("msg").unwrap_or("").to_string();
            srv.mark_aborted(rank, code, message, out);
        }
        "name-publish" => {
            let name = required("name")?;
            let port = required("port")?;
            match srv.publish(conn, name, port) {
                Ok(true) => reply(out, "name-publish-response", &[("rc", "0")]),
                Ok(false) => reply(
                    out,
                    "name-publish-response",
                    &[
                        ("rc", "1"),
                        ("errmsg", &format!("duplicate_service_{name}")),
                    ],
                ),
                Err(e) => {
                    reply(
                        out,
                        "name-publish-response",
                        &[("rc", "-1"), ("errmsg", &e.to_string())],
                    );
                    return Err(e);
                }
            }
        }
        "name-unpublish" => {
            let name = required("name")?;
            if srv.names.remove(name).is_some() {
                reply(out, "name-unpublish-response", &[("rc", "0")]);
            } else {
                let msg = format!("service_{}_not_found", truncate(name));
                reply(
                    out,
                    "name-unpublish-response",
                    &[("rc", "1"), ("errmsg", &msg)],
                );
            }
        }
        "name-lookup" => {
            let name = required("name")?;
            match srv.names.get(name) {
                Some(port) => {
                    let port = port.clone();
                    reply(
                        out,
                        "name-lookup-response",
                        &[("port", &port), ("found", "TRUE"), ("rc", "0")],
                    );
                }
                None => reply(
                    out,
                    "name-lookup-response",
                    &[("found", "FALSE"), ("rc", "1")],
                ),
            }
        }
        "spawn" => {
            reply(
                out,
                "spawn-response",
                &[
                    ("rc", "-1"),
                    ("errmsg", "rlaunch does not support MPI_Comm_spawn"),
                    ("nerrs", "0"),
                ],
            );
            srv.warn(conn, PmiError::SpawnUnsupported { who }, out);
        }
        "job-connect" | "job-disconnect" => {
            let name = format!("{cmd}-response");
            reply(
                out,
                &name,
                &[("rc", "-1"), ("errmsg", "not supported by rlaunch")],
            );
            srv.warn(
                conn,
                PmiError::Unsupported {
                    who,
                    cmd: cmd.to_string(),
                },
                out,
            );
        }
        _ => {
            let name = format!("{cmd}-response");
            reply(out, &name, &[("rc", "-1"), ("errmsg", "unknown command")]);
            srv.warn(
                conn,
                PmiError::UnknownCommand {
                    who,
                    cmd: cmd.to_string(),
                },
                out,
            );
        }
    }
    Ok(())
}

fn truncate(s: &str) -> String {
    s.chars().take(CMD_NAME_MAX).collect()
}

/// `found=TRUE;value=…` or `found=FALSE`; a value the client would reject (over its 1024-byte
/// limit) is reported as missing, with a Warning.
pub(super) fn found_reply(
    srv: &PmiServer,
    conn: ConnId,
    out: &mut Vec<Action>,
    name: &str,
    thrid: Option<&str>,
    key: &str,
    value: Option<&str>,
) {
    match value {
        Some(v) if v.len() <= VALLEN_MAX => {
            out.push(Action::Send {
                conn,
                bytes: frame(name, thrid, &[("found", "TRUE"), ("value", v), ("rc", "0")]),
            });
        }
        found => {
            if found.is_some() {
                let who = srv.who(conn);
                srv.warn(
                    conn,
                    PmiError::NotRepresentable {
                        who,
                        key: truncate(key),
                    },
                    out,
                );
            }
            out.push(Action::Send {
                conn,
                bytes: frame(name, thrid, &[("found", "FALSE"), ("rc", "0")]),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{has_error, has_warning, job, text};
    use super::*;
    use proptest::prelude::*;

    /// A client-style message: left-aligned length, as the MPICH client writes it.
    fn msg(body: &str) -> Vec<u8> {
        let mut v = format!("{:<6}", body.len()).into_bytes();
        v.extend_from_slice(body.as_bytes());
        v
    }

    fn reply(body: &str) -> String {
        format!("{:>6}{body}", body.len())
    }

    /// Two local ranks, both through init + fullinit.
    fn server() -> PmiServer {
        let mut s = PmiServer::new(job(2, &[0, 1]));
        for (conn, rank) in [(1, 0), (2, 1)] {
            s.connect(conn, Some(rank));
            s.input(conn, b"cmd=init pmi_version=2 pmi_subversion=0\n");
            s.input(conn, &msg("cmd=fullinit;threaded=FALSE;"));
        }
        s
    }

    #[test]
    fn header_parsing() {
        assert_eq!(parse_header(b"    42"), Some(42));
        assert_eq!(parse_header(b"42    "), Some(42));
        assert_eq!(parse_header(b"  42  "), Some(42));
        assert_eq!(parse_header(b"000007"), Some(7));
        assert_eq!(parse_header(b"4 2   "), None);
        assert_eq!(parse_header(b"      "), None);
        assert_eq!(parse_header(b"-1    "), None);
        assert_eq!(parse_header(b"cmd=in"), None);
    }

    #[test]
    fn escaping_round_trips_and_tolerates_junk() {
        let w = Who::Rank(0);
        let body = "cmd=kvs-put;key=k;value=a;;b;;;;c;;;";
        assert_eq!(
            parse_body(w, body.as_bytes()).unwrap(),
            vec![
                ("cmd".into(), "kvs-put".into()),
                ("key".into(), "k".into()),
                ("value".into(), "a;b;;c;".into())
            ]
        );
        let f = frame("x", None, &[("value", "a;b;;c;")]);
        assert_eq!(
            String::from_utf8(f[6..].to_vec()).unwrap(),
            "cmd=x;value=a;;b;;;;c;;;"
        );
        // Junk after the final ';' (a NUL, a newline) is ignored.
        assert_eq!(
            parse_body(w, b"cmd=finalize;\0\n").unwrap(),
            vec![("cmd".into(), "finalize".into())]
        );
        assert_eq!(parse_body(w, b"cmd=finalize;\xff\xfe").unwrap().len(), 1);
        // A last pair missing its ';' still counts.
        assert_eq!(
            parse_body(w, b"cmd=finalize").unwrap(),
            vec![("cmd".into(), "finalize".into())]
        );
        assert!(parse_body(w, b"cmd=x;key=\xff;").is_err());
    }

    #[test]
    fn init_line_switches_to_framing_even_within_one_input() {
        let mut s = PmiServer::new(job(1, &[0]));
        s.connect(3, Some(0));
        let mut bytes = b"cmd=init pmi_version=2 pmi_subversion=0\n".to_vec();
        bytes.extend(msg("cmd=fullinit;pmirank=0;threaded=FALSE;"));
        let a = s.input(3, &bytes);
        assert_eq!(
            text(&a),
            "cmd=response_to_init pmi_version=2 pmi_subversion=0 rc=0\n".to_string()
                + &reply("cmd=fullinit-response;pmi-version=2;pmi-subversion=0;rank=0;size=1;appnum=0;debugged=FALSE;pmiverbose=FALSE;rc=0;")
        );
        assert!(a.contains(&Action::Initialized {
            rank: 0,
            version: (2, 0)
        }));
        assert!(s.is_initialized(0));
    }

    #[test]
    fn framed_client_without_init_line_is_detected() {
        let mut s = PmiServer::new(job(1, &[0]));
        s.connect(3, Some(0));
        let a = s.input(3, &msg("cmd=fullinit;"));
        assert!(text(&a).contains("cmd=fullinit-response;"), "{a:?}");
        // Right-aligned header too.
        let mut s = PmiServer::new(job(1, &[0]));
        s.connect(3, Some(0));
        let a = s.input(3, reply("cmd=fullinit;").as_bytes());
        assert!(text(&a).contains("cmd=fullinit-response;"), "{a:?}");
    }

    #[test]
    fn fullinit_binds_rank_in_port_mode_and_checks_it() {
        let mut s = PmiServer::new(job(4, &[2, 3]));
        s.connect(3, None);
        s.input(3, b"cmd=init pmi_version=2 pmi_subversion=0\n");
        let a = s.input(3, &msg("cmd=fullinit;pmijobid=x;pmirank=3;threaded=FALSE;"));
        assert!(text(&a).contains(";rank=3;size=4;"), "{a:?}");
        let mut s = PmiServer::new(job(4, &[2, 3]));
        s.connect(3, None);
        s.input(3, b"cmd=init pmi_version=2 pmi_subversion=0\n");
        assert!(has_error(
            &s.input(3, &msg("cmd=fullinit;threaded=FALSE;")),
            "before naming its rank"
        ));
        let mut s = PmiServer::new(job(4, &[2, 3]));
        s.connect(3, Some(2));
        s.input(3, b"cmd=init pmi_version=2 pmi_subversion=0\n");
        assert!(has_error(
            &s.input(3, &msg("cmd=fullinit;pmirank=3;")),
            "rank 2 named itself rank 3"
        ));
        let mut s = PmiServer::new(job(4, &[2, 3]));
        s.connect(3, None);
        s.input(3, b"cmd=init pmi_version=2 pmi_subversion=0\n");
        assert!(has_error(
            &s.input(3, &msg("cmd=fullinit;pmirank=-1;")),
            "pmirank=\"-1\""
        ));
        let mut s = PmiServer::new(job(4, &[2, 3]));
        s.connect(3, None);
        s.input(3, b"cmd=init pmi_version=2 pmi_subversion=0\n");
        assert!(has_error(
            &s.input(3, &msg("cmd=kvs-fence;")),
            "before naming its rank"
        ));
    }

    #[test]
    fn kvs_put_get_fence_with_thrid() {
        let mut s = server();
        let a = s.input(1, &msg("cmd=kvs-put;thrid=0x1;key=k;value=v;;1;"));
        assert_eq!(text(&a), reply("cmd=kvs-put-response;thrid=0x1;rc=0;"));
        let a = s.input(
            2,
            &msg("cmd=kvs-get;thrid=0x2;jobid=rl-test;srcid=-1;key=k;"),
        );
        assert_eq!(
            text(&a),
            reply("cmd=kvs-get-response;thrid=0x2;found=TRUE;value=v;;1;rc=0;")
        );
        let a = s.input(2, &msg("cmd=kvs-get;key=nope;"));
        assert_eq!(text(&a), reply("cmd=kvs-get-response;found=FALSE;rc=0;"));
        let a = s.input(2, &msg("cmd=kvs-get;jobid=other;key=k;"));
        assert_eq!(text(&a), reply("cmd=kvs-get-response;found=FALSE;rc=0;"));
        assert!(s.input(1, &msg("cmd=kvs-fence;thrid=0xa;")).is_empty());
        let a = s.input(2, &msg("cmd=kvs-fence;"));
        assert_eq!(
            a,
            vec![Action::FenceReady {
                seq: 1,
                puts: vec![("k".into(), "v;1".into())]
            }]
        );
        let a = s.fence_done(
            1,
            vec![("k".into(), "v;1".into()), ("r".into(), "x".into())],
        );
        assert_eq!(
            text(&a),
            reply("cmd=kvs-fence-response;thrid=0xa;rc=0;")
                + &reply("cmd=kvs-fence-response;rc=0;")
        );
        let a = s.input(1, &msg("cmd=kvs-get;key=r;"));
        assert_eq!(
            text(&a),
            reply("cmd=kvs-get-response;found=TRUE;value=x;rc=0;")
        );
    }

    #[test]
    fn duplicate_fence_is_a_protocol_error() {
        let mut s = server();
        s.input(1, &msg("cmd=kvs-fence;thrid=1;"));
        let a = s.input(1, &msg("cmd=kvs-fence;thrid=2;"));
        assert!(
            has_error(&a, "rank 0 entered the PMI barrier/fence again"),
            "{a:?}"
        );
    }

    #[test]
    fn other_requests_are_served_while_a_fence_waits() {
        let mut s = server();
        s.input(1, &msg("cmd=kvs-fence;thrid=1;"));
        let a = s.input(1, &msg("cmd=job-getid;thrid=2;"));
        assert_eq!(
            text(&a),
            reply("cmd=job-getid-response;thrid=2;jobid=rl-test;rc=0;")
        );
    }

    #[test]
    fn over_limit_put_gets_rc_minus_one_then_protocol_error() {
        let mut s = server();
        let a = s.input(
            1,
            &msg(&format!(
                "cmd=kvs-put;key=k;value={};",
                "v".repeat(VALLEN_MAX + 1)
            )),
        );
        assert!(
            text(&a).contains("cmd=kvs-put-response;rc=-1;errmsg=rank 0 put a 1025-byte PMI value"),
            "{a:?}"
        );
        assert!(has_error(&a, "1025-byte PMI value"));
        let mut s = server();
        let a = s.input(1, &msg(&format!("cmd=kvs-get;key={};", "k".repeat(65))));
        assert!(has_error(&a, "65-byte PMI key"));
        let mut s = server();
        let a = s.input(1, &msg(&format!("cmd=job-getid;thrid={};", "t".repeat(65))));
        assert!(has_error(&a, "thrid"));
    }

    #[test]
    fn frame_limits() {
        let mut s = server();
        let a = s.input(1, b"999999");
        assert!(has_error(&a, "999999-byte PMI-2 message"), "{a:?}");
        let mut s = server();
        assert!(has_error(&s.input(1, b"12x   cmd=x;"), "length header"));
        let mut s = server();
        assert!(has_error(&s.input(1, b"0     "), "empty PMI-2 message"));
        let mut s = server();
        assert!(has_error(
            &s.input(1, &msg("key=1;cmd=x;")),
            "does not start with `cmd=`"
        ));
    }

    #[test]
    fn node_attributes_with_wait() {
        let mut s = server();
        let a = s.input(1, &msg("cmd=info-getnodeattr;key=shm;"));
        assert_eq!(
            text(&a),
            reply("cmd=info-getnodeattr-response;found=FALSE;rc=0;")
        );
        // Rank 1 waits; the reply comes when rank 0 puts the key, after rank 0's own reply.
        assert!(s
            .input(2, &msg("cmd=info-getnodeattr;thrid=t;key=shm;wait=TRUE;"))
            .is_empty());
        let a = s.input(1, &msg("cmd=info-putnodeattr;key=other;value=1;"));
        assert_eq!(text(&a), reply("cmd=info-putnodeattr-response;rc=0;"));
        let a = s.input(1, &msg("cmd=info-putnodeattr;key=shm;value=/dev/shm/x;"));
        assert_eq!(
            a,
            vec![
                Action::Send {
                    conn: 1,
                    bytes: reply("cmd=info-putnodeattr-response;rc=0;").into_bytes()
                },
                Action::Send {
                    conn: 2,
                    bytes: reply(
                        "cmd=info-getnodeattr-response;thrid=t;found=TRUE;value=/dev/shm/x;rc=0;"
                    )
                    .into_bytes()
                },
            ]
        );
        let a = s.input(2, &msg("cmd=info-getnodeattr;key=shm;wait=TRUE;"));
        assert_eq!(
            text(&a),
            reply("cmd=info-getnodeattr-response;found=TRUE;value=/dev/shm/x;rc=0;")
        );
    }

    #[test]
    fn waiters_are_bounded_and_dropped_on_disconnect() {
        let mut s = server();
        for i in 0..super::super::MAX_PENDING_PER_CONN {
            let a = s.input(
                2,
                &msg(&format!("cmd=info-getnodeattr;thrid={i};key=k;wait=TRUE;")),
            );
            assert!(a.is_empty());
        }
        let a = s.input(2, &msg("cmd=info-getnodeattr;key=k;wait=TRUE;"));
        assert!(has_error(&a, "requests waiting"), "{a:?}");
        let mut s = server();
        s.input(2, &msg("cmd=info-getnodeattr;key=k;wait=TRUE;"));
        s.disconnect(2);
        let a = s.input(1, &msg("cmd=info-putnodeattr;key=k;value=1;"));
        assert_eq!(a.len(), 1);
    }

    #[test]
    fn job_attributes() {
        let mut j = job(2, &[0, 1]);
        j.universe_size = 16;
        let mut s = PmiServer::new(j);
        s.connect(1, Some(0));
        s.input(1, b"cmd=init pmi_version=2 pmi_subversion=0\n");
        s.input(1, &msg("cmd=fullinit;"));
        let get = |s: &mut PmiServer, key: &str| {
            text(&s.input(1, &msg(&format!("cmd=info-getjobattr;key={key};"))))
        };
        assert_eq!(
            get(&mut s, "PMI_process_mapping"),
            reply("cmd=info-getjobattr-response;found=TRUE;value=(vector,(0,1,2));rc=0;")
        );
        assert_eq!(
            get(&mut s, "universeSize"),
            reply("cmd=info-getjobattr-response;found=TRUE;value=16;rc=0;")
        );
        assert_eq!(
            get(&mut s, "PMI_dead_processes"),
            reply("cmd=info-getjobattr-response;found=TRUE;value=;rc=0;")
        );
        assert_eq!(
            get(&mut s, "nothing"),
            reply("cmd=info-getjobattr-response;found=FALSE;rc=0;")
        );
        let mut j = job(1, &[0]);
        j.process_mapping = None;
        let mut s = PmiServer::new(j);
        s.connect(1, Some(0));
        s.input(1, &msg("cmd=fullinit;"));
        assert_eq!(
            get(&mut s, "PMI_process_mapping"),
            reply("cmd=info-getjobattr-response;found=FALSE;rc=0;")
        );
        // A map longer than the client's value limit is omitted, not truncated.
        let mut j = job(1, &[0]);
        j.process_mapping = Some(format!("(vector,{})", "(0,1,1),".repeat(200)));
        let mut s = PmiServer::new(j);
        s.connect(1, Some(0));
        s.input(1, &msg("cmd=fullinit;"));
        let a = s.input(1, &msg("cmd=info-getjobattr;key=PMI_process_mapping;"));
        assert_eq!(
            text(&a),
            reply("cmd=info-getjobattr-response;found=FALSE;rc=0;")
        );
        assert!(has_warning(&a, "PMI_process_mapping"));
    }

    #[test]
    fn finalize_abort_and_after_finalize() {
        let mut s = server();
        let a = s.input(1, &msg("cmd=finalize;thrid=9;"));
        assert_eq!(text(&a), reply("cmd=finalize-response;thrid=9;rc=0;"));
        assert!(a.contains(&Action::Finalized { rank: 0 }));
        assert!(has_error(
            &s.input(1, &msg("cmd=kvs-get;key=a;")),
            "after PMI finalize"
        ));
        let a = s.input(2, &msg("cmd=abort;isworld=TRUE;msg=bad;; thing happened;"));
        assert_eq!(
            a,
            vec![Action::Abort {
                rank: 1,
                code: 1,
                message: "bad; thing happened".into()
            }]
        );
        let mut s = server();
        let a = s.input(2, &msg("cmd=abort;isworld=FALSE;exitcode=42;"));
        assert_eq!(
            a,
            vec![Action::Abort {
                rank: 1,
                code: 42,
                message: String::new()
            }]
        );
    }

    #[test]
    fn name_service() {
        let mut s = server();
        let a = s.input(1, &msg("cmd=name-publish;name=svc;port=p;;1;"));
        assert_eq!(text(&a), reply("cmd=name-publish-response;rc=0;"));
        let a = s.input(2, &msg("cmd=name-publish;name=svc;port=q;"));
        assert_eq!(
            text(&a),
            reply("cmd=name-publish-response;rc=1;errmsg=duplicate_service_svc;")
        );
        let a = s.input(2, &msg("cmd=name-lookup;name=svc;"));
        assert_eq!(
            text(&a),
            reply("cmd=name-lookup-response;port=p;;1;found=TRUE;rc=0;")
        );
        let a = s.input(2, &msg("cmd=name-unpublish;name=svc;"));
        assert_eq!(text(&a), reply("cmd=name-unpublish-response;rc=0;"));
        let a = s.input(2, &msg("cmd=name-unpublish;name=svc;"));
        assert_eq!(
            text(&a),
            reply("cmd=name-unpublish-response;rc=1;errmsg=service_svc_not_found;")
        );
        let a = s.input(2, &msg("cmd=name-lookup;name=svc;"));
        assert_eq!(
            text(&a),
            reply("cmd=name-lookup-response;found=FALSE;rc=1;")
        );
        // A PMI-2 port with a space cannot be handed to a PMI-1 client.
        s.input(2, &msg("cmd=name-publish;name=sp;port=a b;"));
        s.connect(7, None);
        let a = s.input(7, b"cmd=lookup_name service=sp\n");
        assert_eq!(
            text(&a),
            "cmd=lookup_result rc=-1 info=fail msg=service_not_found\n"
        );
    }

    #[test]
    fn spawn_unknown_and_unsupported() {
        let mut s = server();
        let a = s.input(
            1,
            &msg("cmd=spawn;thrid=5;ncmds=1;preputcount=0;subcmd=./a;maxprocs=2;argc=0;"),
        );
        assert_eq!(
            text(&a),
            reply("cmd=spawn-response;thrid=5;rc=-1;errmsg=rlaunch does not support MPI_Comm_spawn;nerrs=0;")
        );
        assert!(has_warning(&a, "MPI_Comm_spawn"));
        let a = s.input(1, &msg("cmd=job-connect;jobid=x;"));
        assert_eq!(
            text(&a),
            reply("cmd=job-connect-response;rc=-1;errmsg=not supported by rlaunch;")
        );
        let a = s.input(1, &msg("cmd=frob;thrid=1;"));
        assert_eq!(
            text(&a),
            reply("cmd=frob-response;thrid=1;rc=-1;errmsg=unknown command;")
        );
        assert!(has_warning(&a, "unknown PMI command `frob`"));
    }

    proptest! {
        #[test]
        fn escape_parse_round_trip(v in "[ -~]{0,200}") {
            let f = frame("c", None, &[("value", &v)]);
            let body = &f[6..];
            prop_assert_eq!(parse_header(&f[..6]), Some(body.len()));
            let pairs = parse_body(Who::Rank(0), body).unwrap();
            prop_assert_eq!(&pairs[1].1, &v);
        }
    }
}
