//! The spool's disk format, pinned: `tests/fixtures/spool-v1/` holds segment files written by
//! the format-1 code (every record kind and every outcome and notice kind), and this test opens
//! a copy with today's code and checks that every message, body, envelope field, recipient
//! state and deletion reads back exactly. A change to the archived record types that moves a
//! byte fails here instead of making recovery skip old records as corrupt.
//!
//! `write_fixtures` (ignored) regenerates the fixture. It must not be re-run after a format
//! change: the committed files are the evidence of what version 1 looks like (today's code
//! writes message frames as v2). `tests/fixtures/spool-v2/` (`write_fixtures_v2`, same rule)
//! pins message frames with placements and mailbox-state records, checkpoint included.

use std::path::{Path, PathBuf};

use relay::envelope::{BodyType, DsnRet, Envelope, MailParams, Notify, Origin, QueueId, Recipient};
use relay::spool::state::system_flag;
use relay::spool::{
    inspect, DeliveryRecord, DeliveryResult, DsnKind, DsnSent, Flags, MailboxState, NewMessage,
    Outcome, PendingRecipient, Placement, ShardHandle, SpecialUse, Spool, SpoolConfig, StateOp,
    INBOX,
};

const SHARDS: usize = 2;
/// 2025-11-24T16:00:00Z: far from anything a clock could produce in a test run by accident.
const T0: u64 = 1_764_000_000_000_000;
const MINUTE: u64 = 60_000_000;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/spool-v1")
}

// The messages of the fixture. M3 is fully deleted (garbage, but still on disk).
fn m1() -> QueueId {
    QueueId::new(T0 + 1, 0)
}
fn m2() -> QueueId {
    QueueId::new(T0 + 2, 0)
}
fn m3() -> QueueId {
    QueueId::new(T0 + 3, 1)
}
fn m4() -> QueueId {
    QueueId::new(T0 + 4, 1)
}
/// The failure notice about M2's bounced recipient.
fn m5() -> QueueId {
    QueueId::new(T0 + 5, 0)
}

fn rcpt(address: &str, notify: Option<Notify>, orcpt: Option<&str>) -> Recipient {
    Recipient {
        address: address.into(),
        notify,
        orcpt: orcpt.map(str::to_string),
    }
}

/// The five messages, as handed to the spool.
fn messages() -> Vec<NewMessage> {
    vec![
        NewMessage {
            id: m1(),
            arrival_unix_micros: T0 + 1,
            origin: Origin {
                client_ip: "192.0.2.7".into(),
                client_port: 40001,
                helo: "client.example.org".into(),
                protocol: "ESMTPSA".into(),
            },
            envelope: Envelope {
                reverse_path: "alice@example.org".into(),
                params: MailParams {
                    size: Some(1234),
                    body: BodyType::EightBitMime,
                    smtputf8: false,
                    ret: Some(DsnRet::Full),
                    envid: Some("QQ314159".into()),
                    cluster: Default::default(),
                },
                recipients: vec![
                    rcpt(
                        "bob@local.test",
                        Some(Notify::SUCCESS.union(Notify::FAILURE)),
                        Some("rfc822;bob@local.test"),
                    ),
                    rcpt("carol@local.test", None, None),
                    rcpt(
                        "far@remote.example",
                        Some(Notify::DELAY.union(Notify::FAILURE)),
                        Some("rfc822;Far@Remote.Example"),
                    ),
                    rcpt("near@remote.example", Some(Notify::SUCCESS), None),
                ],
            },
            received_header: b"Received: from client.example.org ([192.0.2.7])\r\n\tby mx.local.test with ESMTPSA id 1; Mon, 24 Nov 2025 16:00:00 +0000\r\n".to_vec(),
            body: b"From: alice@example.org\r\nSubject: one\r\n\r\nHello, four of you.\r\n".to_vec(),
            mailboxes: vec!["bob".into(), "carol".into()],
            remote: vec!["far@remote.example".into(), "near@remote.example".into()],
            placements: Vec::new(),
        },
        NewMessage {
            id: m2(),
            arrival_unix_micros: T0 + 2,
            origin: Origin {
                client_ip: "2001:db8::25".into(),
                client_port: 2525,
                helo: "[IPv6:2001:db8::25]".into(),
                protocol: "UTF8SMTP".into(),
            },
            envelope: Envelope {
                reverse_path: String::new(),
                params: MailParams {
                    size: None,
                    body: BodyType::BinaryMime,
                    smtputf8: true,
                    ret: None,
                    envid: None,
                    cluster: Default::default(),
                },
                recipients: vec![
                    rcpt("x@remote.example", Some(Notify::NEVER), None),
                    rcpt("y@remote.example", None, Some("utf-8;y@remote.example")),
                ],
            },
            received_header: b"Received: from [IPv6:2001:db8::25]\r\n".to_vec(),
            // Binary, and with bytes that look like a frame header.
            body: [b"RLYF".as_slice(), &[0, 1, 2, 0xff, 0xfe, b'\r', b'\n'], b"end\r\n"].concat(),
            mailboxes: Vec::new(),
            remote: vec!["x@remote.example".into(), "y@remote.example".into()],
            placements: Vec::new(),
        },
        NewMessage {
            id: m3(),
            arrival_unix_micros: T0 + 3,
            origin: Origin {
                client_ip: "198.51.100.3".into(),
                client_port: 1,
                helo: "h".into(),
                protocol: "SMTP".into(),
            },
            envelope: Envelope {
                reverse_path: "carol@local.test".into(),
                params: MailParams::default(),
                recipients: vec![rcpt("dave@local.test", None, None)],
            },
            received_header: b"Received: from h\r\n".to_vec(),
            body: b"Subject: to be deleted\r\n\r\nbye\r\n".to_vec(),
            mailboxes: vec!["dave".into()],
            remote: Vec::new(),
            placements: Vec::new(),
        },
        NewMessage {
            id: m4(),
            arrival_unix_micros: T0 + 4,
            origin: Origin {
                client_ip: "203.0.113.9".into(),
                client_port: 65535,
                helo: "mx.例え.jp".into(),
                protocol: "UTF8SMTPS".into(),
            },
            envelope: Envelope {
                reverse_path: "ümlaut@例え.jp".into(),
                params: MailParams {
                    size: Some(0),
                    body: BodyType::SevenBit,
                    smtputf8: true,
                    ret: Some(DsnRet::Headers),
                    envid: Some("ÉnvId".into()),
                    cluster: Default::default(),
                },
                recipients: vec![
                    rcpt("erin@local.test", None, None),
                    rcpt("z@remote.example", Some(Notify::FAILURE), None),
                ],
            },
            received_header: b"Received: from mx.xn--r8jz45g.jp\r\n".to_vec(),
            body: "Subject: =?UTF-8?Q?gr=C3=BC=C3=9Fe?=\r\n\r\nGrüße\r\n"
                .as_bytes()
                .to_vec(),
            mailboxes: vec!["erin".into()],
            remote: vec!["z@remote.example".into()],
            placements: Vec::new(),
        },
        NewMessage {
            id: m5(),
            arrival_unix_micros: T0 + 5,
            origin: Origin {
                client_ip: "127.0.0.1".into(),
                client_port: 0,
                helo: "localhost".into(),
                protocol: "LOCAL".into(),
            },
            envelope: Envelope {
                reverse_path: String::new(),
                params: MailParams::default(),
                recipients: vec![rcpt("alice@example.org", Some(Notify::NEVER), None)],
            },
            received_header: Vec::new(),
            body: b"Subject: Undelivered Mail\r\n\r\nx@remote.example: 550\r\n".to_vec(),
            mailboxes: Vec::new(),
            remote: vec!["alice@example.org".into()],
            placements: Vec::new(),
        },
    ]
}

fn result(
    id: QueueId,
    recipient: &str,
    outcome: Outcome,
    reply: &str,
    attempt: u32,
    at: u64,
    next: Option<u64>,
) -> DeliveryResult {
    DeliveryResult {
        id,
        recipient: recipient.into(),
        outcome,
        reply: reply.into(),
        attempt,
        at_unix_micros: at,
        next_attempt_unix_micros: next,
    }
}

fn marker(
    id: QueueId,
    recipient: &str,
    kind: DsnKind,
    at: u64,
    notice: Option<QueueId>,
) -> DsnSent {
    DsnSent {
        id,
        recipient: recipient.into(),
        kind,
        at_unix_micros: at,
        notice_id: notice,
    }
}

// The delivery history of the fixture.
fn far_deferred_1() -> DeliveryResult {
    result(
        m1(),
        "far@remote.example",
        Outcome::Deferred,
        "451 4.7.1 greylisted",
        1,
        T0 + MINUTE,
        Some(T0 + 6 * MINUTE),
    )
}
fn far_deferred_2() -> DeliveryResult {
    result(
        m1(),
        "far@remote.example",
        Outcome::Deferred,
        "421 4.4.2 connection dropped",
        2,
        T0 + 7 * MINUTE,
        Some(T0 + 37 * MINUTE),
    )
}
fn near_delivered() -> DeliveryResult {
    result(
        m1(),
        "near@remote.example",
        Outcome::Delivered,
        "250 2.0.0 Ok: queued as 4XyZ",
        1,
        T0 + MINUTE,
        None,
    )
}
fn x_bounced() -> DeliveryResult {
    result(
        m2(),
        "x@remote.example",
        Outcome::Bounced,
        "550 5.1.1 <x@remote.example>: no such user",
        1,
        T0 + 2 * MINUTE,
        None,
    )
}
fn z_expired() -> DeliveryResult {
    result(
        m4(),
        "z@remote.example",
        Outcome::Expired,
        "",
        9,
        T0 + 5 * 24 * 60 * MINUTE,
        None,
    )
}
fn far_delay() -> DsnSent {
    marker(
        m1(),
        "far@remote.example",
        DsnKind::Delay,
        T0 + 7 * MINUTE,
        None,
    )
}
fn near_success() -> DsnSent {
    marker(
        m1(),
        "near@remote.example",
        DsnKind::Success,
        T0 + MINUTE,
        None,
    )
}
fn x_failure() -> DsnSent {
    marker(
        m2(),
        "x@remote.example",
        DsnKind::Failure,
        T0 + 2 * MINUTE,
        Some(m5()),
    )
}

fn wait(rx: tokio::sync::oneshot::Receiver<Result<(), relay::spool::SpoolError>>) {
    rx.blocking_recv()
        .expect("spool stopped")
        .expect("append failed");
}

fn append(h: &ShardHandle, m: NewMessage) {
    h.append_message(m)
        .expect("queued")
        .blocking_recv()
        .expect("spool stopped")
        .expect("append failed");
}

/// Writes the fixture with the code of the day. Run only to create format 1's evidence:
/// `cargo test --test spool_golden -- --ignored write_fixtures`.
#[test]
#[ignore = "writes tests/fixtures/spool-v1; run once per format version"]
fn write_fixtures() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("spool");
    let (spool, _) = Spool::open(SpoolConfig::new(&root), SHARDS).expect("open");
    let (s0, s1) = (spool.shard(0), spool.shard(1));
    let mut msgs = messages().into_iter();
    for m in msgs.by_ref().take(4) {
        let h = if m.id.shard() == 0 { &s0 } else { &s1 };
        append(h, m);
    }
    // Results in the message's shard and in another one (the destination's core).
    wait(s0.append_results(vec![far_deferred_1()]).expect("queued"));
    wait(
        s1.append_delivery(DeliveryRecord {
            results: vec![near_delivered(), far_deferred_2()],
            dsn_sent: vec![near_success(), far_delay()],
        })
        .expect("queued"),
    );
    // The notice first, then the bounce with the notice's marker in one record.
    append(&s0, msgs.next().expect("m5"));
    wait(
        s0.append_delivery(DeliveryRecord {
            results: vec![x_bounced()],
            dsn_sent: vec![x_failure()],
        })
        .expect("queued"),
    );
    wait(s1.append_results(vec![z_expired()]).expect("queued"));
    wait(
        s1.append_deletion("dave".into(), vec![m3()])
            .expect("queued"),
    );
    wait(
        s0.append_deletion("bob".into(), vec![m1()])
            .expect("queued"),
    );
    // A marker on its own record.
    wait(
        s1.append_dsn_sent(vec![marker(
            m4(),
            "z@remote.example",
            DsnKind::Failure,
            T0 + 5 * 24 * 60 * MINUTE,
            Some(m5()),
        )])
        .expect("queued"),
    );
    spool.close().expect("close");

    let out = fixture_dir();
    let _ = std::fs::remove_dir_all(&out);
    for shard in 0..SHARDS {
        let name = format!("shard-{shard:03}");
        std::fs::create_dir_all(out.join(&name)).expect("mkdir");
        for e in std::fs::read_dir(root.join(&name)).expect("shard dir") {
            let path = e.expect("entry").path();
            if path.extension().is_some_and(|x| x == "seg") {
                std::fs::copy(&path, out.join(&name).join(path.file_name().expect("name")))
                    .expect("copy");
            }
        }
    }
}

fn copy_fixture() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("spool");
    let mut segments = 0;
    for shard in std::fs::read_dir(fixture_dir()).expect("fixture dir") {
        let shard = shard.expect("entry").path();
        let to = root.join(shard.file_name().expect("name"));
        std::fs::create_dir_all(&to).expect("mkdir");
        for seg in std::fs::read_dir(&shard).expect("shard dir") {
            let seg = seg.expect("entry").path();
            std::fs::copy(&seg, to.join(seg.file_name().expect("name"))).expect("copy");
            segments += 1;
        }
    }
    assert!(segments >= SHARDS, "fixture is missing segments");
    (tmp, root)
}

fn stored_body(m: &NewMessage) -> Vec<u8> {
    [m.received_header.as_slice(), &m.body].concat()
}

#[test]
fn format_v1_fixture_reads_back_exactly() {
    let (_tmp, root) = copy_fixture();
    let (spool, report) = Spool::open(SpoolConfig::new(&root), SHARDS).expect("open");
    // Every record is accepted: none skipped as corrupt, no torn tail.
    assert!(report.is_clean(), "{report:?}");
    // Per shard: (records, deletions, delivery records, results, markers). Shard 0: M1, M2,
    // M5, two delivery records, one deletion; shard 1: M3, M4, three delivery records (one
    // of them about M1), one deletion.
    let counts: Vec<_> = report
        .shards
        .iter()
        .map(|s| {
            (
                s.shard,
                s.records_kept,
                s.deletion_records,
                s.delivery_records,
                s.delivery_results,
                s.dsn_markers,
            )
        })
        .collect();
    assert_eq!(counts, vec![(0, 6, 1, 2, 2, 1), (1, 6, 1, 3, 3, 3)]);
    let all = messages();

    // Message records: meta (origin, envelope with every parameter, routes) and body.
    for m in &all {
        let at = spool
            .locate(m.id)
            .unwrap_or_else(|| panic!("{} lost", m.id));
        assert_eq!(at.shard, m.id.shard());
        let stored = spool.read_message(&at).expect("read message");
        assert_eq!(stored.meta.id, m.id);
        assert_eq!(stored.meta.arrival_unix_micros, m.arrival_unix_micros);
        assert_eq!(stored.meta.origin, m.origin, "{}", m.id);
        assert_eq!(stored.meta.envelope, m.envelope, "{}", m.id);
        assert_eq!(stored.meta.received_len, m.received_header.len() as u64);
        assert_eq!(stored.meta.mailboxes, m.mailboxes);
        assert_eq!(stored.meta.remote, m.remote);
        assert_eq!(stored.body, stored_body(m));
        assert_eq!(spool.read_body(m.id).expect("read body"), stored_body(m));
    }

    // Deletions, outcomes and markers as the queue and the maildrops see them at start.
    let mut live = Vec::new();
    spool.startup_view(|m| {
        let remote: Vec<_> = m
            .remote
            .iter()
            .map(|r| {
                (
                    r.address.to_string(),
                    r.done,
                    r.attempts,
                    r.next_attempt_unix_micros,
                    r.delay_noticed,
                )
            })
            .collect();
        let mailboxes: Vec<String> = m.mailboxes.iter().map(|s| s.to_string()).collect();
        live.push((m.id, m.body_len, mailboxes, m.deleted, remote));
    });
    live.sort();
    let len = |id: QueueId| {
        let m = all.iter().find(|m| m.id == id).expect("known id");
        stored_body(m).len() as u64
    };
    let far = |done, attempts, next, delay| {
        (
            "far@remote.example".to_string(),
            done,
            attempts,
            next,
            delay,
        )
    };
    assert_eq!(
        live,
        vec![
            (
                m1(),
                len(m1()),
                vec!["carol".to_string()],
                1,
                vec![
                    far(false, 2, Some(T0 + 37 * MINUTE), true),
                    ("near@remote.example".into(), true, 0, None, false),
                ]
            ),
            (
                m2(),
                len(m2()),
                vec![],
                0,
                vec![
                    ("x@remote.example".into(), true, 0, None, false),
                    ("y@remote.example".into(), false, 0, None, false),
                ]
            ),
            // M3: its only mailbox copy is deleted and it has no remote route: garbage.
            (
                m4(),
                len(m4()),
                vec!["erin".to_string()],
                0,
                vec![("z@remote.example".into(), true, 0, None, false)]
            ),
            (
                m5(),
                len(m5()),
                vec![],
                0,
                vec![("alice@example.org".into(), false, 0, None, false)]
            ),
        ]
    );

    // The replay reads every record back from the log: replies, final results, markers.
    let replay = spool.replay().expect("replay");
    assert_eq!(replay.deletions, vec![("bob".to_string(), m1())]);
    let ids: Vec<QueueId> = replay.messages.iter().map(|m| m.id).collect();
    assert_eq!(ids, vec![m1(), m2(), m4(), m5()]);
    let r1 = &replay.messages[0];
    assert_eq!(r1.sender, "alice@example.org");
    assert_eq!(r1.recipients, 4);
    assert_eq!(r1.mailboxes, vec!["bob".to_string(), "carol".to_string()]);
    assert_eq!(
        r1.pending,
        vec![PendingRecipient {
            recipient: "far@remote.example".into(),
            attempts: 2,
            last_reply: Some("421 4.4.2 connection dropped".into()),
            last_attempt_unix_micros: Some(T0 + 7 * MINUTE),
            next_attempt_unix_micros: Some(T0 + 37 * MINUTE),
        }]
    );
    assert_eq!(r1.finished, vec![near_delivered()]);
    let mut want = vec![far_delay(), near_success()];
    want.sort();
    assert_eq!(r1.dsn_sent, want);
    let r2 = &replay.messages[1];
    assert_eq!((r2.sender.as_str(), r2.recipients), ("", 2));
    assert_eq!(r2.finished, vec![x_bounced()]);
    assert_eq!(r2.dsn_sent, vec![x_failure()]);
    assert_eq!(r2.pending.len(), 1);
    assert_eq!(r2.pending[0].recipient, "y@remote.example");
    assert_eq!(
        (r2.pending[0].attempts, r2.pending[0].last_reply.as_deref()),
        (0, None)
    );
    let r4 = &replay.messages[2];
    assert_eq!(r4.sender, "ümlaut@例え.jp");
    assert_eq!(r4.finished, vec![z_expired()]);
    assert!(r4.pending.is_empty());
    assert_eq!(
        r4.dsn_sent,
        vec![marker(
            m4(),
            "z@remote.example",
            DsnKind::Failure,
            T0 + 5 * 24 * 60 * MINUTE,
            Some(m5())
        )]
    );
    let r5 = &replay.messages[3];
    assert_eq!((r5.body_len, r5.pending.len()), (len(m5()), 1));
    assert!(r5.finished.is_empty() && r5.dsn_sent.is_empty());
    spool.close().expect("close");

    // The offline listing still shows the garbage message, with its deletion.
    let list = inspect::list(&root).expect("list");
    let ids: Vec<QueueId> = list.iter().map(|m| m.id).collect();
    assert_eq!(ids, vec![m1(), m2(), m3(), m4(), m5()]);
    let l3 = &list[2];
    assert_eq!(
        (l3.mailboxes.clone(), l3.deleted.clone()),
        (vec!["dave".to_string()], vec!["dave".to_string()])
    );
    let counts: Vec<_> = list
        .iter()
        .map(|m| (m.remote_pending, m.remote_delivered, m.remote_bounced))
        .collect();
    assert_eq!(
        counts,
        vec![(1, 1, 0), (1, 0, 1), (0, 0, 0), (0, 0, 1), (1, 0, 0)]
    );
    assert_eq!(
        inspect::cat(&root, m2()).expect("cat"),
        stored_body(&all[1])
    );
}

// ---- Format 2: message frames with placements (Message v2) and mailbox-state records
// (MailboxState v1), in `tests/fixtures/spool-v2/`. Same rule: written once, never again.

fn fixture_v2_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/spool-v2")
}

/// 2025-11-25T16:00:00Z.
const T1: u64 = T0 + 24 * 60 * MINUTE;

/// Delivered to alice only, then expunged and released by her: garbage, still on disk.
fn m6() -> QueueId {
    QueueId::new(T1 + 6, 0)
}
/// Delivered to alice (placed by the delivery) and bob (unplaced), and still live.
fn m7() -> QueueId {
    QueueId::new(T1 + 7, 1)
}

fn placement(folder: u32, uid: u32, system: u8, keywords: &[&str], modseq: u64) -> Placement {
    Placement {
        folder,
        uidvalidity: 1_764_086_400,
        uid,
        flags: Flags {
            system,
            keywords: keywords.iter().map(|k| k.to_string()).collect(),
        },
        internal_date: (T1 / 1_000_000) as i64,
        zone_minutes: 60,
        modseq,
    }
}

fn v2_messages() -> Vec<NewMessage> {
    let base = |id: QueueId, mailboxes: &[&str], placements: Vec<Option<Placement>>| NewMessage {
        id,
        arrival_unix_micros: id.micros(),
        origin: Origin {
            client_ip: "192.0.2.77".into(),
            client_port: 465,
            helo: "imap.example.org".into(),
            protocol: "ESMTPSA".into(),
        },
        envelope: Envelope {
            reverse_path: "writer@example.org".into(),
            params: MailParams::default(),
            recipients: mailboxes
                .iter()
                .map(|m| rcpt(&format!("{m}@local.test"), None, None))
                .collect(),
        },
        received_header: format!("Received: by mx.local.test; id {id}\r\n").into_bytes(),
        body: format!("Subject: {id}\r\n\r\nbody of {id}\r\n").into_bytes(),
        mailboxes: mailboxes.iter().map(|m| m.to_string()).collect(),
        remote: Vec::new(),
        placements,
    };
    vec![
        base(m6(), &["alice"], vec![Some(placement(INBOX, 1, 0, &[], 2))]),
        base(
            m7(),
            &["alice", "bob"],
            vec![
                Some(placement(
                    4,
                    9,
                    system_flag::SEEN | system_flag::DRAFT,
                    &["$Junk"],
                    3,
                )),
                None,
            ],
        ),
    ]
}

/// The mailbox-state records of the fixture, in the order they are written.
fn v2_states() -> Vec<MailboxState> {
    vec![
        MailboxState {
            user: "alice".into(),
            seq: 1,
            ops: vec![
                StateOp::CreateFolder {
                    folder: 4,
                    name: "Junk".into(),
                    uidvalidity: 1_764_086_400,
                    special_use: Some(SpecialUse::Junk),
                },
                StateOp::Subscribe {
                    name: "Junk".into(),
                    subscribed: true,
                },
            ],
            released: Vec::new(),
        },
        MailboxState {
            user: "bob".into(),
            seq: 1,
            ops: vec![StateOp::Place {
                id: m7(),
                placement: placement(INBOX, 1, 0, &[], 1),
            }],
            released: Vec::new(),
        },
        MailboxState {
            user: "alice".into(),
            seq: 2,
            ops: vec![
                StateOp::SetFlags {
                    folder: INBOX,
                    uid: 1,
                    flags: Flags {
                        system: system_flag::DELETED,
                        keywords: Vec::new(),
                    },
                    modseq: 4,
                },
                StateOp::Expunge {
                    folder: INBOX,
                    uids: vec![1],
                    modseq: 5,
                },
            ],
            released: vec![m6()],
        },
        // Alice's checkpoint: her records before it are void (seq 2 stays on disk while
        // m6 does: it releases m6).
        MailboxState {
            user: "alice".into(),
            seq: 3,
            ops: vec![
                StateOp::Reset,
                StateOp::CreateFolder {
                    folder: INBOX,
                    name: "INBOX".into(),
                    uidvalidity: 1_764_086_400,
                    special_use: None,
                },
                StateOp::CreateFolder {
                    folder: 4,
                    name: "Junk".into(),
                    uidvalidity: 1_764_086_400,
                    special_use: Some(SpecialUse::Junk),
                },
                StateOp::Subscribe {
                    name: "Junk".into(),
                    subscribed: true,
                },
                StateOp::FolderCounters {
                    folder: INBOX,
                    uidnext: 2,
                    highest_modseq: 5,
                },
                StateOp::FolderCounters {
                    folder: 4,
                    uidnext: 10,
                    highest_modseq: 3,
                },
                StateOp::Place {
                    id: m7(),
                    placement: placement(
                        4,
                        9,
                        system_flag::SEEN | system_flag::DRAFT,
                        &["$Junk"],
                        3,
                    ),
                },
            ],
            released: Vec::new(),
        },
    ]
}

/// Writes the format-2 fixture. Run only once: `cargo test --test spool_golden -- --ignored
/// write_fixtures_v2`.
#[test]
#[ignore = "writes tests/fixtures/spool-v2; run once per format version"]
fn write_fixtures_v2() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("spool");
    let (spool, _) = Spool::open(SpoolConfig::new(&root), SHARDS).expect("open");
    let (s0, s1) = (spool.shard(0), spool.shard(1));
    for m in v2_messages() {
        let h = if m.id.shard() == 0 { &s0 } else { &s1 };
        append(h, m);
    }
    // A user's records land in whichever shard its core owns: spread them.
    for (i, s) in v2_states().into_iter().enumerate() {
        let h = if i % 2 == 0 { &s0 } else { &s1 };
        wait(h.append_state(s).expect("queued"));
    }
    spool.close().expect("close");
    let out = fixture_v2_dir();
    let _ = std::fs::remove_dir_all(&out);
    for shard in 0..SHARDS {
        let name = format!("shard-{shard:03}");
        std::fs::create_dir_all(out.join(&name)).expect("mkdir");
        for e in std::fs::read_dir(root.join(&name)).expect("shard dir") {
            let path = e.expect("entry").path();
            if path.extension().is_some_and(|x| x == "seg") {
                std::fs::copy(&path, out.join(&name).join(path.file_name().expect("name")))
                    .expect("copy");
            }
        }
    }
}

#[test]
fn format_v2_fixture_reads_back_exactly() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("spool");
    for shard in std::fs::read_dir(fixture_v2_dir()).expect("fixture dir") {
        let shard = shard.expect("entry").path();
        let to = root.join(shard.file_name().expect("name"));
        std::fs::create_dir_all(&to).expect("mkdir");
        for seg in std::fs::read_dir(&shard).expect("shard dir") {
            let seg = seg.expect("entry").path();
            std::fs::copy(&seg, to.join(seg.file_name().expect("name"))).expect("copy");
        }
    }
    let (spool, report) = Spool::open(SpoolConfig::new(&root), SHARDS).expect("open");
    assert!(report.is_clean(), "{report:?}");
    let counts: Vec<_> = report
        .shards
        .iter()
        .map(|s| (s.shard, s.records_kept, s.state_records, s.checkpoints))
        .collect();
    assert_eq!(counts, vec![(0, 3, 2, 0), (1, 3, 2, 1)]);
    let all = v2_messages();
    for m in &all {
        let at = spool.locate(m.id).expect("located");
        let stored = spool.read_message(&at).expect("read");
        assert_eq!(stored.meta.mailboxes, m.mailboxes);
        assert_eq!(stored.meta.placements, m.placements, "{}", m.id);
        assert_eq!(stored.meta.envelope, m.envelope);
        assert_eq!(stored.body, stored_body(m));
    }
    let replay = spool.replay().expect("replay");
    // m6 was released by its only user: garbage, not replayed.
    let ids: Vec<QueueId> = replay.messages.iter().map(|m| m.id).collect();
    assert_eq!(ids, vec![m7()]);
    assert_eq!(replay.messages[0].placements, all[1].placements);
    assert!(replay.deletions.is_empty());
    // Alice's records below her checkpoint are void; bob's stands.
    let states = v2_states();
    assert_eq!(replay.states, vec![states[3].clone(), states[1].clone()]);
    spool.close().expect("close");
    let list = inspect::list(&root).expect("list");
    let l6 = list.iter().find(|m| m.id == m6()).expect("m6 listed");
    assert_eq!(l6.deleted, vec!["alice".to_string()]);
}

#[test]
fn format_v2_fixture_lists_state_records() {
    let states = inspect::list_states(&fixture_v2_dir()).expect("list states");
    let lines: Vec<String> = states
        .iter()
        .map(|s| {
            format!(
                "{} {} {} {} {:?}",
                s.user, s.seq, s.checkpoint, s.ops, s.released
            )
        })
        .collect();
    assert_eq!(
        lines,
        vec![
            "alice 1 false 2 []".to_string(),
            format!("alice 2 false 2 [{:?}]", m6()),
            "alice 3 true 7 []".to_string(),
            "bob 1 false 1 []".to_string(),
        ]
    );
    assert!(states[2]
        .to_string()
        .starts_with("alice seq 3 (checkpoint): 7 op(s), 0 released"));
}
