//! The spool's disk format, pinned, for message frames of layout v3 (the v2 meta followed by
//! the IMAP summary): `tests/fixtures/spool-v3/` holds segments written once by the first
//! build that wrote v3, and this test opens a copy with today's code and checks that every
//! meta field, body and summary (opaque bytes to the spool) reads back exactly.
//! `tests/spool_golden.rs` pins v1 and v2 the same way.
//!
//! `write_fixtures_v3` (ignored) wrote the fixture. It must not be re-run after a format
//! change: the committed files are the evidence of what v3 looks like.

use std::path::{Path, PathBuf};

use relay::envelope::{Envelope, MailParams, Origin, QueueId, Recipient};
use relay::spool::{Flags, NewMessage, Placement, ShardHandle, Spool, SpoolConfig, INBOX};

const SHARDS: usize = 2;
/// 2025-11-26T16:00:00Z.
const T2: u64 = 1_764_172_800_000_000;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/spool-v3")
}

fn placement(uid: u32) -> Placement {
    Placement {
        folder: INBOX,
        uidvalidity: 1_764_172_800,
        uid,
        flags: Flags {
            system: 0,
            keywords: vec!["$Summary".into()],
        },
        internal_date: (T2 / 1_000_000) as i64,
        zone_minutes: -120,
        modseq: u64::from(uid) + 1,
    }
}

/// The messages with the summary each frame carries.
fn messages() -> Vec<(NewMessage, Option<Vec<u8>>)> {
    let base = |id: QueueId, mailboxes: &[&str], remote: &[&str], placements| NewMessage {
        id,
        arrival_unix_micros: id.micros(),
        origin: Origin {
            client_ip: "192.0.2.88".into(),
            client_port: 587,
            helo: "mua.example.org".into(),
            protocol: "ESMTPSA".into(),
        },
        envelope: Envelope {
            reverse_path: "sender@example.org".into(),
            params: MailParams::default(),
            recipients: mailboxes
                .iter()
                .map(|m| format!("{m}@local.test"))
                .chain(remote.iter().map(|r| r.to_string()))
                .map(|address| Recipient {
                    address,
                    notify: None,
                    orcpt: None,
                })
                .collect(),
        },
        received_header: format!("Received: by mx.local.test; id {id}\r\n").into_bytes(),
        body: format!("Subject: v3 {id}\r\n\r\nbody of {id}\r\n").into_bytes(),
        mailboxes: mailboxes.iter().map(|m| m.to_string()).collect(),
        remote: remote.iter().map(|r| r.to_string()).collect(),
        placements,
    };
    vec![
        (
            base(
                QueueId::new(T2 + 8, 0),
                &["alice"],
                &[],
                vec![Some(placement(1))],
            ),
            Some(b"\x01opaque summary of m8".to_vec()),
        ),
        // Relayed only: no summary.
        (
            base(
                QueueId::new(T2 + 9, 1),
                &[],
                &["far@example.net"],
                Vec::new(),
            ),
            None,
        ),
        (
            base(
                QueueId::new(T2 + 10, 1),
                &["alice", "bob"],
                &["far@example.net"],
                vec![Some(placement(2)), None],
            ),
            Some((0..=255u8).chain([0, 0xff, b'\r', b'\n']).collect()),
        ),
    ]
}

fn append(h: &ShardHandle, m: NewMessage, summary: Option<Vec<u8>>) {
    let rx = h.append_message_with_summary(m, summary).expect("queued");
    rx.blocking_recv().expect("answered").expect("stored");
}

/// Writes the fixture. Run only once: `cargo test --test spool_golden_v3 -- --ignored`.
#[test]
#[ignore = "writes tests/fixtures/spool-v3; run once per format version"]
fn write_fixtures_v3() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("spool");
    let (spool, _) = Spool::open(SpoolConfig::new(&root), SHARDS).expect("open");
    for (m, summary) in messages() {
        let h = spool.shard(usize::from(m.id.shard()));
        append(&h, m, summary);
    }
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

#[test]
fn format_v3_fixture_reads_back_exactly() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("spool");
    for shard in std::fs::read_dir(fixture_dir()).expect("fixture dir") {
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
    assert_eq!(report.records_kept(), 3);
    for (m, summary) in messages() {
        let at = spool.locate(m.id).expect("located");
        let stored = spool.read_message(&at).expect("read");
        assert_eq!(stored.meta.origin, m.origin);
        assert_eq!(stored.meta.envelope, m.envelope);
        assert_eq!(stored.meta.mailboxes, m.mailboxes);
        assert_eq!(stored.meta.remote, m.remote);
        assert_eq!(stored.meta.placements, m.placements, "{}", m.id);
        assert_eq!(
            stored.meta.received_len,
            m.received_header.len() as u64,
            "{}",
            m.id
        );
        let mut body = m.received_header.clone();
        body.extend_from_slice(&m.body);
        assert_eq!(stored.body, body);
        assert_eq!(spool.read_body(m.id).expect("body"), body);
        assert_eq!(
            spool.read_summary(m.id).expect("summary"),
            summary,
            "{}",
            m.id
        );
    }
    let replay = spool.replay().expect("replay");
    assert_eq!(replay.messages.len(), 3);
    spool.close().expect("close");
}
