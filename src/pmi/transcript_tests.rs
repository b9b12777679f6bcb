//! Byte-exact replays of what MPICH's MPI_Init / MPI_Finalize say over PMI (see
//! ../shared/docs/pmi.md), on one and two nodes, with every request cut into random pieces and
//! the clients interleaved at random; plus property tests on arbitrary input.

use super::*;
use proptest::prelude::*;

/// Request bytes and the exact reply they must get.
type Steps = Vec<(Vec<u8>, Vec<u8>)>;
/// A node's FenceReady, waiting for the other nodes.
type Ready = Option<(u64, Vec<(String, String)>)>;

/// One rank's side of the conversation: requests and the exact reply each must get.
#[derive(Clone)]
struct Script {
    node: usize,
    conn: ConnId,
    rank: u32,
    steps: Steps,
}

struct Client {
    script: Script,
    step: usize,
    sent: usize,
    received: Vec<u8>,
}

impl Client {
    fn done(&self) -> bool {
        self.step == self.script.steps.len()
    }
    /// Still has request bytes to write for the current step.
    fn can_send(&self) -> bool {
        !self.done() && self.sent < self.script.steps[self.step].0.len()
    }
    /// Checks the reply once complete and moves on; requests with no reply (abort) end at once.
    fn advance(&mut self) {
        while !self.done() {
            let (req, want) = &self.script.steps[self.step];
            if self.sent < req.len() || self.received.len() < want.len() {
                return;
            }
            assert_eq!(
                String::from_utf8_lossy(&self.received[..want.len()]),
                String::from_utf8_lossy(want),
                "rank {} step {}",
                self.script.rank,
                self.step
            );
            self.received.drain(..want.len());
            self.step += 1;
            self.sent = 0;
        }
    }
}

/// What the replay saw besides the replies.
#[derive(Default, Debug)]
struct Seen {
    initialized: Vec<(u32, (u8, u8))>,
    finalized: Vec<u32>,
    fences: usize,
}

/// Runs all scripts against one engine per node. `choices` drives which client writes next and
/// how many bytes; a fake daemon completes a fence when every node reported FenceReady,
/// merging puts in node order.
fn replay(jobs: Vec<JobInfo>, scripts: Vec<Script>, choices: &[(u8, u8)]) -> Seen {
    let mut servers: Vec<PmiServer> = jobs.into_iter().map(PmiServer::new).collect();
    let mut clients: Vec<Client> = scripts
        .into_iter()
        .map(|script| Client {
            script,
            step: 0,
            sent: 0,
            received: Vec::new(),
        })
        .collect();
    for c in &clients {
        servers[c.script.node].connect(c.script.conn, Some(c.script.rank));
    }
    let mut seen = Seen::default();
    let mut ready: Vec<Ready> = vec![None; servers.len()];
    let mut choice = choices.iter().cycle();
    let mut idle_rounds = 0;
    while !clients.iter().all(Client::done) {
        let (pick, len) = *choice.next().unwrap_or(&(0, 1));
        let senders: Vec<usize> = (0..clients.len())
            .filter(|&i| clients[i].can_send())
            .collect();
        if senders.is_empty() {
            // Everyone waits: only a fence can make progress.
            assert!(
                ready.iter().all(Option::is_some),
                "deadlock: clients wait but no fence is ready"
            );
            let seq = ready[0].as_ref().map(|r| r.0).unwrap_or(0);
            let merged: Vec<(String, String)> = ready
                .iter_mut()
                .flat_map(|r| r.take().map(|(_, p)| p).unwrap_or_default())
                .collect();
            seen.fences += 1;
            for (node, server) in servers.iter_mut().enumerate() {
                let actions = server.fence_done(seq, merged.clone());
                deliver(node, actions, &mut clients, &mut ready, &mut seen);
            }
            idle_rounds += 1;
            assert!(idle_rounds < 1000, "no progress");
            continue;
        }
        idle_rounds = 0;
        let i = senders[pick as usize % senders.len()];
        let c = &mut clients[i];
        let req = &c.script.steps[c.step].0;
        let n = (len as usize % 17 + 1).min(req.len() - c.sent);
        let chunk = req[c.sent..c.sent + n].to_vec();
        c.sent += n;
        let (node, conn) = (c.script.node, c.script.conn);
        let actions = servers[node].input(conn, &chunk);
        deliver(node, actions, &mut clients, &mut ready, &mut seen);
        clients[i].advance();
    }
    for c in &clients {
        assert!(
            c.received.is_empty(),
            "rank {} got extra bytes",
            c.script.rank
        );
        let s = &servers[c.script.node];
        assert!(s.is_initialized(c.script.rank) && s.is_finalized(c.script.rank));
    }
    seen
}

fn deliver(
    node: usize,
    actions: Vec<Action>,
    clients: &mut [Client],
    ready: &mut [Ready],
    seen: &mut Seen,
) {
    for a in actions {
        match a {
            Action::Send { conn, bytes } => {
                let c = clients
                    .iter_mut()
                    .find(|c| c.script.node == node && c.script.conn == conn)
                    .expect("reply for a known connection");
                c.received.extend(bytes);
                c.advance();
            }
            Action::FenceReady { seq, puts } => {
                assert!(ready[node].is_none(), "node {node} reported fence twice");
                ready[node] = Some((seq, puts));
            }
            Action::Initialized { rank, version } => seen.initialized.push((rank, version)),
            Action::Finalized { rank } => seen.finalized.push(rank),
            other => panic!("unexpected action {other:?}"),
        }
    }
}

fn line(s: &str) -> Vec<u8> {
    format!("{s}\n").into_bytes()
}

fn hex_of(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02X}")).collect()
}

/// MPICH 4.0.2 (ch4) MPI_Init + MPI_Finalize over PMI-1 for `rank` of `size`, `ppn` ranks per
/// node in blocks: the node root publishes its shm segment name, every rank its address, local
/// ranks split the gets of all addresses.
fn mpich_pmi1(size: u32, ppn: u32, rank: u32, kvs: &str, map: &str) -> Steps {
    let root = rank / ppn * ppn;
    let local = rank - root;
    let ok_put = line("cmd=put_result rc=0 msg=success");
    let barrier = (line("cmd=barrier_in"), line("cmd=barrier_out"));
    let get = |key: &str, value: &str| {
        (
            line(&format!("cmd=get kvsname={kvs} key={key}")),
            line(&format!("cmd=get_result rc=0 msg=success value={value}")),
        )
    };
    let mut s = vec![
        (
            line("cmd=init pmi_version=1 pmi_subversion=1"),
            line("cmd=response_to_init pmi_version=1 pmi_subversion=1 rc=0"),
        ),
        (
            line("cmd=get_maxes"),
            line("cmd=maxes kvsname_max=64 keylen_max=64 vallen_max=1024"),
        ),
        (line("cmd=get_appnum"), line("cmd=appnum appnum=0")),
        (
            line("cmd=get_my_kvsname"),
            line(&format!("cmd=my_kvsname kvsname={kvs}")),
        ),
        get("PMI_process_mapping", map),
        barrier.clone(),
    ];
    let shm = hex_of(&format!("/dev/shm/mpich_shar_tmp{root}"));
    if local == 0 {
        s.push((
            line(&format!(
                "cmd=put kvsname={kvs} key=-bcast-1-{root} value={shm}"
            )),
            ok_put.clone(),
        ));
    }
    s.push(barrier.clone());
    if local != 0 {
        s.push(get(&format!("-bcast-1-{root}"), &shm));
    }
    let addr = |r: u32| hex_of(&format!("ucx-worker-address-of-rank-{r}"));
    s.push((
        line(&format!(
            "cmd=put kvsname={kvs} key=-allgather-shm-1-{rank} value={}",
            addr(rank)
        )),
        ok_put,
    ));
    s.push(barrier.clone());
    for r in (0..size).filter(|r| r % ppn == local) {
        s.push(get(&format!("-allgather-shm-1-{r}"), &addr(r)));
    }
    s.push(barrier);
    s.push((line("cmd=finalize"), line("cmd=finalize_ack")));
    s
}

fn msg(body: &str) -> Vec<u8> {
    let mut v = format!("{:<6}", body.len()).into_bytes();
    v.extend_from_slice(body.as_bytes());
    v
}

fn rep(body: &str) -> Vec<u8> {
    format!("{:>6}{body}", body.len()).into_bytes()
}

/// A PMI-2 MPICH-style startup: init line, fullinit, job id, process map, node root shares its
/// shm name through a node attribute (others wait for it), everyone puts an address, fence,
/// gets of every peer, fence, finalize. Some requests carry `thrid`.
fn mpich_pmi2(size: u32, ppn: u32, rank: u32, kvs: &str, map: &str) -> Steps {
    let root = rank / ppn * ppn;
    let addr = |r: u32| format!("addr;{r};x");
    let esc = |v: String| v.replace(';', ";;");
    let mut s = vec![
        (
            line("cmd=init pmi_version=2 pmi_subversion=0"),
            line("cmd=response_to_init pmi_version=2 pmi_subversion=0 rc=0"),
        ),
        (
            msg(&format!("cmd=fullinit;pmijobid={kvs};pmirank={rank};threaded=FALSE;")),
            rep(&format!(
                "cmd=fullinit-response;pmi-version=2;pmi-subversion=0;rank={rank};size={size};appnum=0;debugged=FALSE;pmiverbose=FALSE;rc=0;"
            )),
        ),
        (msg("cmd=job-getid;thrid=0x55d0;"), rep(&format!("cmd=job-getid-response;thrid=0x55d0;jobid={kvs};rc=0;"))),
        (
            msg("cmd=info-getjobattr;key=PMI_process_mapping;"),
            rep(&format!("cmd=info-getjobattr-response;found=TRUE;value={map};rc=0;")),
        ),
    ];
    let shm = format!("/dev/shm/seg{root}");
    if rank == root {
        s.push((
            msg(&format!("cmd=info-putnodeattr;key=shm;value={shm};")),
            rep("cmd=info-putnodeattr-response;rc=0;"),
        ));
    } else {
        s.push((
            msg("cmd=info-getnodeattr;key=shm;wait=TRUE;"),
            rep(&format!(
                "cmd=info-getnodeattr-response;found=TRUE;value={shm};rc=0;"
            )),
        ));
    }
    s.push((
        msg(&format!(
            "cmd=kvs-put;key=addr-{rank};value={};",
            esc(addr(rank))
        )),
        rep("cmd=kvs-put-response;rc=0;"),
    ));
    s.push((
        msg("cmd=kvs-fence;thrid=0xf1;"),
        rep("cmd=kvs-fence-response;thrid=0xf1;rc=0;"),
    ));
    for r in 0..size {
        s.push((
            msg(&format!("cmd=kvs-get;jobid={kvs};srcid={r};key=addr-{r};")),
            rep(&format!(
                "cmd=kvs-get-response;found=TRUE;value={};rc=0;",
                esc(addr(r))
            )),
        ));
    }
    s.push((msg("cmd=kvs-fence;"), rep("cmd=kvs-fence-response;rc=0;")));
    s.push((msg("cmd=finalize;"), rep("cmd=finalize-response;rc=0;")));
    s
}

/// `nodes` nodes of `ppn` ranks in blocks; one JobInfo per node and one script per rank.
fn setup(
    nodes: u32,
    ppn: u32,
    script: fn(u32, u32, u32, &str, &str) -> Steps,
) -> (Vec<JobInfo>, Vec<Script>) {
    let size = nodes * ppn;
    let map = format!("(vector,(0,{nodes},{ppn}))");
    let jobs = (0..nodes)
        .map(|n| JobInfo {
            kvsname: "rl-1a2b3c".into(),
            size,
            universe_size: size,
            appnum_of: vec![0; size as usize],
            local_ranks: (n * ppn..(n + 1) * ppn).collect(),
            process_mapping: Some(map.clone()),
            node_count: nodes,
        })
        .collect();
    let scripts = (0..size)
        .map(|rank| Script {
            node: (rank / ppn) as usize,
            conn: 100 + rank,
            rank,
            steps: script(size, ppn, rank, "rl-1a2b3c", &map),
        })
        .collect();
    (jobs, scripts)
}

fn check_seen(seen: &Seen, size: u32, version: (u8, u8), fences: usize) {
    let mut init = seen.initialized.clone();
    init.sort();
    assert_eq!(init, (0..size).map(|r| (r, version)).collect::<Vec<_>>());
    let mut fin = seen.finalized.clone();
    fin.sort();
    assert_eq!(fin, (0..size).collect::<Vec<_>>());
    assert_eq!(seen.fences, fences);
}

#[test]
fn mpich_pmi1_two_ranks_one_node_in_order() {
    let (jobs, scripts) = setup(1, 2, mpich_pmi1);
    let seen = replay(jobs, scripts, &[(0, 255)]);
    check_seen(&seen, 2, (1, 1), 4);
}

#[test]
fn mpich_pmi1_four_ranks_two_nodes_in_order() {
    let (jobs, scripts) = setup(2, 2, mpich_pmi1);
    let seen = replay(jobs, scripts, &[(1, 255)]);
    check_seen(&seen, 4, (1, 1), 4);
}

#[test]
fn mpich_pmi2_four_ranks_two_nodes_in_order() {
    let (jobs, scripts) = setup(2, 2, mpich_pmi2);
    let seen = replay(jobs, scripts, &[(0, 255)]);
    check_seen(&seen, 4, (2, 0), 2);
}

#[test]
fn fence_ready_carries_only_this_nodes_puts() {
    let mut s = PmiServer::new(JobInfo {
        kvsname: "k".into(),
        size: 4,
        universe_size: 4,
        appnum_of: vec![0; 4],
        local_ranks: vec![2, 3],
        process_mapping: None,
        node_count: 2,
    });
    s.connect(1, Some(2));
    s.connect(2, Some(3));
    s.input(1, b"cmd=put kvsname=k key=a2 value=x\ncmd=barrier_in\n");
    let a = s.input(2, b"cmd=put kvsname=k key=a3 value=y\ncmd=barrier_in\n");
    assert_eq!(
        a.last(),
        Some(&Action::FenceReady {
            seq: 1,
            puts: vec![("a2".into(), "x".into()), ("a3".into(), "y".into())]
        })
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn mpich_pmi1_replays_in_random_splits(
        nodes in 1u32..=2, choices in prop::collection::vec(any::<(u8, u8)>(), 1..64)
    ) {
        let ppn = 2;
        let (jobs, scripts) = setup(nodes, ppn, mpich_pmi1);
        let seen = replay(jobs, scripts, &choices);
        check_seen(&seen, nodes * ppn, (1, 1), 4);
    }

    #[test]
    fn mpich_pmi2_replays_in_random_splits(
        nodes in 1u32..=2, choices in prop::collection::vec(any::<(u8, u8)>(), 1..64)
    ) {
        let (jobs, scripts) = setup(nodes, 2, mpich_pmi2);
        let seen = replay(jobs, scripts, &choices);
        check_seen(&seen, nodes * 2, (2, 0), 2);
    }

    /// Arbitrary bytes, and arbitrary mixes of real commands and garbage, never panic, never
    /// make a PMI-1 reply line over 1024 bytes or a malformed PMI-2 reply, and never let a
    /// connection buffer grow past its limit.
    #[test]
    fn byte_soup_is_safe(
        pieces in prop::collection::vec(
            prop_oneof![
                prop::collection::vec(any::<u8>(), 0..64),
                prop::sample::select(vec![
                    "cmd=init pmi_version=1 pmi_subversion=1\n", "cmd=init pmi_version=2 pmi_subversion=0\n",
                    "cmd=barrier_in\n", "cmd=put kvsname=rl-test key=k value=v\n",
                    "cmd=get kvsname=rl-test key=k\n", "cmd=finalize\n", "cmd=abort exitcode=3\n",
                    "cmd=initack pmiid=1\n", "mcmd=spawn\n", "endcmd\n", "cmd=lookup_name service=s\n",
                    "30    cmd=kvs-fence;thrid=1;x=;;;;", "22    cmd=fullinit;pmirank=0;",
                    "41    cmd=info-getnodeattr;key=k;wait=TRUE;", "12    cmd=finalize",
                    "31    cmd=kvs-put;key=k;value=;;;;;", "    16cmd=kvs-get;key=k;",
                ]).prop_map(|s| s.as_bytes().to_vec()),
                (0usize..3000).prop_map(|n| {
                    let mut v = b"cmd=put kvsname=rl-test key=big value=".to_vec();
                    v.extend(vec![b'x'; n]);
                    v.push(b'\n');
                    v
                }),
            ],
            0..40,
        ),
        conns in prop::collection::vec(0u32..4, 40),
        fence_calls in prop::collection::vec(any::<bool>(), 40),
    ) {
        let mut s = PmiServer::new(JobInfo {
            kvsname: "rl-test".into(),
            size: 3,
            universe_size: 3,
            appnum_of: vec![0; 3],
            local_ranks: vec![0, 1, 2],
            process_mapping: Some("(vector,(0,1,3))".into()),
            node_count: 1,
        });
        for c in 0..3 {
            s.connect(c, Some(c));
        }
        let mut seq = None;
        let check = |actions: &[Action], seq: &mut Option<u64>| -> Result<(), TestCaseError> {
            for a in actions {
                match a {
                    Action::Send { bytes, .. } if bytes.starts_with(b"cmd=") => {
                        for l in bytes.split_inclusive(|&b| b == b'\n') {
                            prop_assert!(l.len() <= PMI1_LINE_MAX, "reply line {} bytes", l.len());
                            prop_assert_eq!(l.last(), Some(&b'\n'));
                        }
                    }
                    Action::Send { bytes, .. } => {
                        prop_assert!(bytes.len() > PMI2_HEADER_LEN);
                        let n = pmi2::parse_header(&bytes[..PMI2_HEADER_LEN]);
                        prop_assert_eq!(n, Some(bytes.len() - PMI2_HEADER_LEN));
                        prop_assert!(bytes[PMI2_HEADER_LEN..].starts_with(b"cmd="));
                        prop_assert!(bytes.windows(3).any(|w| w == b"rc="));
                    }
                    Action::FenceReady { seq: s, .. } => *seq = Some(*s),
                    _ => {}
                }
            }
            Ok(())
        };
        for (i, p) in pieces.iter().enumerate() {
            let conn = conns[i];
            let a = s.input(conn, p);
            check(&a, &mut seq)?;
            for c in s.conns.values() {
                prop_assert!(c.buf.len() <= MAX_BUFFERED_INPUT);
                prop_assert!(c.pending <= MAX_PENDING_PER_CONN);
            }
            if fence_calls[i] {
                if let Some(q) = seq.take() {
                    let a = s.fence_done(q, vec![("k".into(), "merged".into())]);
                    check(&a, &mut seq)?;
                }
            }
            if conns[(i + 7) % conns.len()] == 3 && fence_calls[(i + 3) % fence_calls.len()] {
                s.disconnect(conn);
                s.connect(conn, Some(conn).filter(|&c| c < 3));
            }
        }
    }
}
