//! DSN rules and messages. The messages are checked with the repo's MIME parser and with
//! Python's `email` package (tests/py/dsn_check.py), a parser no one here wrote.

use super::*;
use crate::envelope::QueueId;
use crate::smtp::reply::ReplyCode;
use std::process::Command;
use std::time::Duration;

const HOST: &str = "relay.example.net";

fn t(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_764_000_000 + secs)
}

fn st(class: u8, subject: u16, detail: u16) -> EnhancedStatus {
    EnhancedStatus::new(class, subject, detail).unwrap()
}

fn rcpt(address: &str, notify: Option<Notify>, orcpt: Option<&str>) -> Recipient {
    Recipient {
        address: address.into(),
        notify,
        orcpt: orcpt.map(str::to_string),
    }
}

fn envelope(ret: Option<DsnRet>, envid: Option<&str>, recipients: Vec<Recipient>) -> Envelope {
    Envelope {
        reverse_path: "alice@sender.example".into(),
        params: MailParams {
            size: None,
            body: BodyType::SevenBit,
            smtputf8: false,
            ret,
            envid: envid.map(str::to_string),
            cluster: Default::default(),
        },
        recipients,
    }
}

const ORIGINAL: &[u8] = b"From: Alice <alice@sender.example>\r\n\
To: bob@dest.example, carol@dest.example\r\n\
Subject: Quarterly figures\r\n\
Message-ID: <orig-1@sender.example>\r\n\
Date: Mon, 24 Nov 2025 10:00:00 +0000\r\n\
MIME-Version: 1.0\r\n\
Content-Type: text/plain; charset=us-ascii\r\n\
\r\n\
Hello Bob,\r\n\
the figures are attached in spirit.\r\n";

fn remote_550() -> Reply {
    Reply::new(
        ReplyCode::new(550).unwrap(),
        EnhancedStatus::new(5, 1, 1),
        "<bob@dest.example>: Recipient address rejected: User unknown",
    )
}

fn input<'a>(env: &'a Envelope, reports: Vec<RecipientReport<'a>>) -> DsnInput<'a> {
    DsnInput {
        hostname: HOST,
        now: t(3600),
        queue_id: QueueId::new(1_764_000_000_000_000, 3),
        arrival: t(0),
        envelope: env,
        reports,
        original: ORIGINAL,
        return_max: 50_000,
    }
}

fn failed<'a>(r: &'a Recipient, reply: &'a Reply) -> RecipientReport<'a> {
    RecipientReport {
        recipient: r,
        action: Action::Failed,
        status: st(5, 1, 1),
        remote_mta: Some("mx1.dest.example"),
        diagnostic: Some(Diagnostic::Smtp(reply)),
        last_attempt: Some(t(3500)),
        will_retry_until: None,
    }
}

fn delayed(r: &Recipient) -> RecipientReport<'_> {
    RecipientReport {
        recipient: r,
        action: Action::Delayed,
        status: st(4, 4, 1),
        remote_mta: Some("mx1.dest.example"),
        diagnostic: Some(Diagnostic::Local(
            "connect to mx1.dest.example: Connection refused",
        )),
        last_attempt: Some(t(3500)),
        will_retry_until: Some(t(5 * 24 * 3600)),
    }
}

/// The delivery-status body as blocks of (name, value), unfolded.
fn blocks(body: &[u8]) -> Vec<Block> {
    let text = String::from_utf8_lossy(body).replace("\r\n", "\n");
    text.split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .map(|block| {
            let mut fields: Vec<(String, String)> = Vec::new();
            for line in block.lines() {
                if line.starts_with([' ', '\t']) {
                    if let Some(last) = fields.last_mut() {
                        last.1.push(' ');
                        last.1.push_str(line.trim());
                    }
                } else if let Some((name, value)) = line.split_once(':') {
                    fields.push((name.to_string(), value.trim().to_string()));
                }
            }
            fields
        })
        .collect()
}

fn get<'a>(block: &'a [(String, String)], name: &str) -> Option<&'a str> {
    block
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Parses with `crate::mime` and returns (part types, delivery-status blocks, part-3 bytes).
type Block = Vec<(String, String)>;

fn structure(message: &[u8]) -> (Vec<String>, Vec<Block>, Vec<u8>) {
    let msg = crate::mime::parse(message, &crate::mime::Limits::default()).unwrap();
    assert!(msg.defects.is_empty(), "{:?}", msg.defects);
    let root = msg.root();
    assert!(root.content_type.is("multipart", "report"));
    assert_eq!(
        root.content_type.param("report-type").unwrap().text(),
        "delivery-status"
    );
    let kids: Vec<usize> = root.children.clone().collect();
    let types = kids
        .iter()
        .map(|&i| msg.parts[i].content_type.essence())
        .collect();
    let status = blocks(msg.body(kids[1]));
    let third = msg.buf()[msg.parts[kids[2]].body.clone()].to_vec();
    (types, status, third)
}

fn lines_ok(message: &[u8]) {
    for line in message.split(|&b| b == b'\n') {
        assert!(line.len() <= 1000, "line of {} octets", line.len());
    }
    assert!(
        !message.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r'),
        "bare LF"
    );
}

// ---- when to notify ----------------------------------------------------------------

#[test]
fn notify_decision_table() {
    use Action::*;
    use Decision::*;
    use Suppressed::*;
    let on = DsnPolicy::default();
    let off = DsnPolicy {
        delay_without_notify: false,
    };
    let s = Notify::SUCCESS;
    let f = Notify::FAILURE;
    let d = Notify::DELAY;
    let sender = "alice@x.test";
    #[rustfmt::skip]
    let table: Vec<(&str, Option<Notify>, Action, DsnPolicy, Decision)> = vec![
        // Never to the null sender, whatever else (a bounce of a bounce is dropped).
        ("", None, Failed, on, Suppress(NullSender)),
        ("", Some(f), Failed, on, Suppress(NullSender)),
        ("", Some(d), Delayed, on, Suppress(NullSender)),
        ("", Some(s), Delivered, on, Suppress(NullSender)),
        // NOTIFY=NEVER silences everything.
        (sender, Some(Notify::NEVER), Failed, on, Suppress(NotifyNever)),
        (sender, Some(Notify::NEVER), Delayed, on, Suppress(NotifyNever)),
        (sender, Some(Notify::NEVER), Delivered, on, Suppress(NotifyNever)),
        // Failure: by default, or when asked for.
        (sender, None, Failed, on, Send),
        (sender, None, Failed, off, Send),
        (sender, Some(f), Failed, on, Send),
        (sender, Some(f.union(d)), Failed, on, Send),
        (sender, Some(s), Failed, on, Suppress(NotRequested)),
        (sender, Some(d), Failed, on, Suppress(NotRequested)),
        (sender, Some(s.union(d)), Failed, on, Suppress(NotRequested)),
        // Delay: when asked for, or without NOTIFY per policy.
        (sender, None, Delayed, on, Send),
        (sender, None, Delayed, off, Suppress(NotRequested)),
        (sender, Some(d), Delayed, off, Send),
        (sender, Some(f), Delayed, on, Suppress(NotRequested)),
        (sender, Some(s.union(f)), Delayed, on, Suppress(NotRequested)),
        // Success only with NOTIFY=SUCCESS.
        (sender, None, Delivered, on, Suppress(NotRequested)),
        (sender, Some(s), Delivered, on, Send),
        (sender, Some(s), Relayed, on, Send),
        (sender, Some(s), Expanded, on, Send),
        (sender, Some(f.union(d)), Delivered, on, Suppress(NotRequested)),
        (sender, None, Relayed, on, Suppress(NotRequested)),
    ];
    for (rp, notify, action, policy, want) in table {
        assert_eq!(
            notify_decision(rp, notify, action, &policy),
            want,
            "{rp:?} {notify:?} {action:?} {policy:?}"
        );
    }
}

#[test]
fn success_actions() {
    assert_eq!(success_action(Delivered::Local), Some(Action::Delivered));
    assert_eq!(success_action(Delivered::Expanded), Some(Action::Expanded));
    assert_eq!(success_action(Delivered::RelayedWithDsn), None);
    assert_eq!(
        success_action(Delivered::RelayedWithoutDsn),
        Some(Action::Relayed)
    );
}

#[test]
fn returned_content_table() {
    let small = vec![b'x'; 100];
    let mut big = b"Subject: big\r\n\r\n".to_vec();
    for _ in 0..100 {
        big.extend_from_slice(b"0123456789012345678\r\n");
    }
    use BodyType::*;
    use Returned::*;
    type Case<'a> = (Option<DsnRet>, bool, BodyType, &'a [u8], Returned);
    let cases: Vec<Case> = vec![
        (Some(DsnRet::Full), true, SevenBit, &small, Full),
        (Some(DsnRet::Headers), true, SevenBit, &small, Headers),
        (None, true, SevenBit, &small, Full),
        (None, true, SevenBit, &big, Headers),
        // Cut at a line end at or below the limit: 16 header octets + 21 per line.
        (
            Some(DsnRet::Full),
            true,
            SevenBit,
            &big,
            Truncated(16 + 21 * 23),
        ),
        (Some(DsnRet::Full), false, SevenBit, &small, Headers),
        (None, false, EightBitMime, &small, Headers),
        (Some(DsnRet::Full), true, BinaryMime, &small, Headers),
        (Some(DsnRet::Full), true, EightBitMime, &small, Full),
    ];
    for (ret, failed, body, original, want) in cases {
        assert_eq!(
            returned_content(ret, failed, body, original, 500),
            want,
            "{ret:?} {failed} {body:?} {}",
            original.len()
        );
    }
}

// ---- the message -------------------------------------------------------------------

#[test]
fn failure_notice_has_the_rfc3464_shape() {
    let bob = rcpt("bob@dest.example", None, Some("rfc822;Bob@Dest.Example"));
    let reply = remote_550();
    let env = envelope(Some(DsnRet::Full), Some("ENV-42"), vec![bob.clone()]);
    let dsn = build_dsn(&input(&env, vec![failed(&bob, &reply)])).unwrap();
    let text = String::from_utf8(dsn.message.clone()).unwrap();
    lines_ok(&dsn.message);

    // Top-level header.
    for want in [
        "From: Mail Delivery System <MAILER-DAEMON@relay.example.net>\r\n",
        "To: <alice@sender.example>\r\n",
        "Subject: Undelivered Mail Returned to Sender\r\n",
        "Date: Mon, 24 Nov 2025 17:00:00 +0000\r\n",
        "Auto-Submitted: auto-replied\r\n",
        "MIME-Version: 1.0\r\n",
        "Message-ID: <0644594162400003.1764003600000000.dsn@relay.example.net>\r\n",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }

    let (types, status, third) = structure(&dsn.message);
    assert_eq!(
        types,
        ["text/plain", "message/delivery-status", "message/rfc822"]
    );
    assert_eq!(status.len(), 2, "{status:?}");
    let m = &status[0];
    assert_eq!(get(m, "Reporting-MTA"), Some("dns; relay.example.net"));
    assert_eq!(get(m, "Original-Envelope-Id"), Some("ENV-42"));
    assert_eq!(
        get(m, "Arrival-Date"),
        Some("Mon, 24 Nov 2025 16:00:00 +0000")
    );
    assert_eq!(get(m, "X-Relay-Queue-ID"), Some("0644594162400003"));
    let r = &status[1];
    assert_eq!(
        get(r, "Original-Recipient"),
        Some("rfc822;Bob@Dest.Example")
    );
    assert_eq!(get(r, "Final-Recipient"), Some("rfc822; bob@dest.example"));
    assert_eq!(get(r, "Action"), Some("failed"));
    assert_eq!(get(r, "Status"), Some("5.1.1"));
    assert_eq!(get(r, "Remote-MTA"), Some("dns; mx1.dest.example"));
    assert_eq!(
        get(r, "Diagnostic-Code"),
        Some("smtp; 550 5.1.1 <bob@dest.example>: Recipient address rejected: User unknown")
    );
    assert_eq!(
        get(r, "Last-Attempt-Date"),
        Some("Mon, 24 Nov 2025 16:58:20 +0000")
    );
    assert_eq!(get(r, "Will-Retry-Until"), None);
    // RET=FULL and small: the whole original, byte for byte.
    assert!(
        third.starts_with(ORIGINAL),
        "{}",
        String::from_utf8_lossy(&third)
    );
    // The human part names the recipient and the reply.
    assert!(
        text.contains("<bob@dest.example>: failed (5.1.1)"),
        "{text}"
    );
    assert!(
        text.contains("host mx1.dest.example said: 550 5.1.1"),
        "{text}"
    );

    // The envelope to queue it with.
    assert_eq!(dsn.envelope.reverse_path, "");
    assert_eq!(dsn.envelope.recipients.len(), 1);
    assert_eq!(dsn.envelope.recipients[0].address, "alice@sender.example");
    assert_eq!(dsn.envelope.params.body, BodyType::SevenBit);
    assert_eq!(dsn.envelope.params.size, Some(dsn.message.len() as u64));
}

#[test]
fn delay_notice_returns_headers_and_says_until_when() {
    let bob = rcpt(
        "bob@dest.example",
        Some(Notify::DELAY.union(Notify::FAILURE)),
        None,
    );
    let env = envelope(Some(DsnRet::Full), None, vec![bob.clone()]);
    let dsn = build_dsn(&input(&env, vec![delayed(&bob)])).unwrap();
    let text = String::from_utf8(dsn.message.clone()).unwrap();
    lines_ok(&dsn.message);
    assert!(text.contains("Subject: Delayed Mail (still being retried)\r\n"));
    assert!(text.contains("after 1h"), "{text}");
    let (types, status, third) = structure(&dsn.message);
    assert_eq!(
        types,
        [
            "text/plain",
            "message/delivery-status",
            "text/rfc822-headers"
        ]
    );
    assert_eq!(get(&status[0], "Original-Envelope-Id"), None);
    let r = &status[1];
    assert_eq!(get(r, "Action"), Some("delayed"));
    assert_eq!(get(r, "Status"), Some("4.4.1"));
    assert_eq!(
        get(r, "Will-Retry-Until"),
        Some("Sat, 29 Nov 2025 16:00:00 +0000")
    );
    assert_eq!(
        get(r, "Diagnostic-Code"),
        Some("X-Relay; connect to mx1.dest.example: Connection refused")
    );
    assert_eq!(get(r, "Original-Recipient"), None);
    // Headers only, RET=FULL notwithstanding: no body line of the original.
    let returned = String::from_utf8_lossy(&third);
    assert!(returned.contains("Subject: Quarterly figures"));
    assert!(!returned.contains("Hello Bob"));
}

#[test]
fn several_recipients_and_mixed_actions() {
    let bob = rcpt("bob@dest.example", None, None);
    let carol = rcpt("carol@dest.example", Some(Notify::SUCCESS), None);
    let dave = rcpt("dave@other.example", None, None);
    let reply = remote_550();
    let env = envelope(None, None, vec![bob.clone(), carol.clone(), dave.clone()]);
    let ok = RecipientReport {
        recipient: &carol,
        action: Action::Relayed,
        status: st(2, 0, 0),
        remote_mta: Some("mx1.dest.example"),
        diagnostic: None,
        last_attempt: Some(t(3500)),
        will_retry_until: None,
    };
    let dsn = build_dsn(&input(&env, vec![failed(&bob, &reply), ok, delayed(&dave)])).unwrap();
    let (types, status, _) = structure(&dsn.message);
    assert_eq!(
        types[2], "message/rfc822",
        "no RET, small: the full message"
    );
    let actions: Vec<_> = status[1..]
        .iter()
        .map(|b| get(b, "Action").unwrap())
        .collect();
    assert_eq!(actions, ["failed", "relayed", "delayed"]);
    let text = String::from_utf8(dsn.message).unwrap();
    assert!(text.contains("Subject: Undelivered Mail Returned to Sender"));
}

#[test]
fn ret_full_above_the_limit_is_cut_and_said_so() {
    let mut big = ORIGINAL.to_vec();
    for i in 0..5000 {
        big.extend_from_slice(format!("line {i} of a long body\r\n").as_bytes());
    }
    let bob = rcpt("bob@dest.example", None, None);
    let reply = remote_550();
    let env = envelope(Some(DsnRet::Full), None, vec![bob.clone()]);
    let mut inp = input(&env, vec![failed(&bob, &reply)]);
    inp.original = &big;
    inp.return_max = 10_000;
    let dsn = build_dsn(&inp).unwrap();
    let (types, _, third) = structure(&dsn.message);
    assert_eq!(types[2], "message/rfc822");
    assert!(third.len() <= 10_000 + 2, "{}", third.len());
    assert!(third.ends_with(b"of a long body\r\n"));
    let text = String::from_utf8(dsn.message.clone()).unwrap();
    assert!(text.contains("cut to its first"), "{text}");
    // Without RET the same message returns its headers only.
    let env = envelope(None, None, vec![bob.clone()]);
    let mut inp = input(&env, vec![failed(&bob, &reply)]);
    inp.original = &big;
    inp.return_max = 10_000;
    let (types, _, _) = structure(&build_dsn(&inp).unwrap().message);
    assert_eq!(types[2], "text/rfc822-headers");
}

#[test]
fn eight_bit_originals_are_declared() {
    let original = "Subject: caf\u{e9}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nd\u{e9}j\u{e0} vu\r\n";
    let bob = rcpt("bob@dest.example", None, None);
    let reply = remote_550();
    let mut env = envelope(Some(DsnRet::Full), None, vec![bob.clone()]);
    env.params.body = BodyType::EightBitMime;
    let mut inp = input(&env, vec![failed(&bob, &reply)]);
    inp.original = original.as_bytes();
    let dsn = build_dsn(&inp).unwrap();
    let text = String::from_utf8(dsn.message.clone()).unwrap();
    assert!(text.contains("Content-Type: message/rfc822\r\nContent-Description: Original message\r\nContent-Transfer-Encoding: 8bit\r\n"), "{text}");
    assert_eq!(dsn.envelope.params.body, BodyType::EightBitMime);
    assert!(!dsn.envelope.params.smtputf8);
    structure(&dsn.message);
}

#[test]
fn utf8_addresses_make_a_global_report() {
    let bob = rcpt("b\u{f6}b@d\u{e9}st.example", None, None);
    let reply = remote_550();
    let env = envelope(None, None, vec![bob.clone()]);
    let dsn = build_dsn(&input(&env, vec![failed(&bob, &reply)])).unwrap();
    let (types, status, _) = structure(&dsn.message);
    assert_eq!(
        types,
        [
            "text/plain",
            "message/global-delivery-status",
            "message/global"
        ]
    );
    assert_eq!(
        get(&status[1], "Final-Recipient"),
        Some("utf-8; b\u{f6}b@d\u{e9}st.example")
    );
    assert!(dsn.envelope.params.smtputf8);
}

#[test]
fn peer_text_cannot_inject_fields_or_boundaries() {
    let evil = Reply::new(
        ReplyCode::new(550).unwrap(),
        None,
        "no\r\nBcc: victim@example.com\r\n\r\n--=_relay_dsn_0000\nX-Evil: 1",
    );
    let bob = rcpt(
        "bob@dest.example",
        None,
        Some("rfc822;bob@dest.example\r\nX-Injected: yes"),
    );
    let mut env = envelope(None, Some("id\r\nX-Injected: yes"), vec![bob.clone()]);
    env.reverse_path = "alice@sender.example".into();
    let mut report = failed(&bob, &evil);
    report.remote_mta = Some("mx\r\nX-Injected: yes");
    let dsn = build_dsn(&input(&env, vec![report])).unwrap();
    lines_ok(&dsn.message);
    let text = String::from_utf8(dsn.message.clone()).unwrap();
    for line in text.split("\r\n") {
        assert!(!line.starts_with("Bcc:"), "{line}");
        assert!(!line.starts_with("X-Injected"), "{line}");
        assert!(!line.starts_with("X-Evil"), "{line}");
    }
    let (_, status, _) = structure(&dsn.message);
    assert_eq!(status.len(), 2);
    assert_eq!(
        get(&status[1], "Diagnostic-Code"),
        Some("smtp; 550 no Bcc: victim@example.com --=_relay_dsn_0000 X-Evil: 1")
    );
}

#[test]
fn the_boundary_avoids_the_content() {
    let seed = 99;
    let first = choose_boundary(seed, &[b"nothing here"]).unwrap();
    let planted = format!("--{first}\r\n");
    let second = choose_boundary(seed, &[b"nothing", planted.as_bytes()]).unwrap();
    assert_ne!(first, second);
    assert!(!planted.contains(&second));
    // Even with the first many candidates planted.
    let mut rng = SplitMix64::new(seed);
    let mut content = String::new();
    for _ in 0..50 {
        content.push_str(&format!(
            "=_relay_dsn_{:016x}{:016x}\n",
            rng.next_u64(),
            rng.next_u64()
        ));
    }
    let b = choose_boundary(seed, &[content.as_bytes()]).unwrap();
    assert!(!content.contains(&b));
}

#[test]
fn long_values_are_folded_and_bounded() {
    let words = "word ".repeat(3000);
    let blob = "x".repeat(5000);
    for text in [words.as_str(), blob.as_str()] {
        let reply = Reply::new(ReplyCode::new(550).unwrap(), None, text.to_string());
        let bob = rcpt("bob@dest.example", None, None);
        let env = envelope(None, None, vec![bob.clone()]);
        let dsn = build_dsn(&input(&env, vec![failed(&bob, &reply)])).unwrap();
        lines_ok(&dsn.message);
        let (_, status, _) = structure(&dsn.message);
        let diag = get(&status[1], "Diagnostic-Code").unwrap();
        assert!(diag.len() <= VALUE_MAX + 20, "{}", diag.len());
        assert!(diag.ends_with("..."));
    }
    // Words fold at 78 columns.
    let reply = Reply::new(ReplyCode::new(550).unwrap(), None, words[..600].to_string());
    let bob = rcpt("bob@dest.example", None, None);
    let env = envelope(None, None, vec![bob.clone()]);
    let dsn = build_dsn(&input(&env, vec![failed(&bob, &reply)])).unwrap();
    let text = String::from_utf8(dsn.message).unwrap();
    let diag_lines: Vec<&str> = text
        .split("\r\n")
        .skip_while(|l| !l.starts_with("Diagnostic-Code:"))
        .take_while(|l| l.starts_with("Diagnostic-Code:") || l.starts_with(' '))
        .collect();
    assert!(diag_lines.len() > 5, "{diag_lines:?}");
    assert!(diag_lines.iter().all(|l| l.len() <= 78), "{diag_lines:?}");
}

#[test]
fn header_block_cut_keeps_whole_fields() {
    let original = b"A: 1\r\nB: folded\r\n  continuation\r\nC: 3\r\n\r\nbody\r\n";
    assert_eq!(
        header_block(original, 1000),
        b"A: 1\r\nB: folded\r\n  continuation\r\nC: 3\r\n"
    );
    // A cut inside B's continuation falls back to before B.
    assert_eq!(header_block(original, 20), b"A: 1\r\n");
    assert_eq!(header_block(b"no blank line", 100), b"no blank line");
    assert_eq!(header_block(b"X: lf\n\nbody", 100), b"X: lf\n");
}

#[test]
fn refusals() {
    let bob = rcpt("bob@dest.example", None, None);
    let reply = remote_550();
    let mut env = envelope(None, None, vec![bob.clone()]);
    env.reverse_path = String::new();
    assert_eq!(
        build_dsn(&input(&env, vec![failed(&bob, &reply)])),
        Err(DsnError::NullSender)
    );
    let env = envelope(None, None, vec![bob.clone()]);
    assert_eq!(build_dsn(&input(&env, vec![])), Err(DsnError::NoRecipients));
}

#[test]
fn dates_out_of_range_do_not_panic() {
    assert_eq!(
        rfc5322_date(UNIX_EPOCH - Duration::from_secs(10)),
        "Thu, 1 Jan 1970 00:00:00 +0000"
    );
    let far = UNIX_EPOCH + Duration::from_secs(400_000_000_000);
    assert_eq!(rfc5322_date(far), "Thu, 1 Jan 1970 00:00:00 +0000");
}

// ---- the independent parser --------------------------------------------------------

/// Writes `message` to a temp file and runs tests/py/dsn_check.py on it; its output lines.
fn python_check(message: &[u8]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dsn.eml");
    std::fs::write(&path, message).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/dsn_check.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(&path)
        .output()
        .expect("python3 runs (the DSN check needs Python's email package)");
    assert!(
        out.status.success(),
        "dsn_check.py refused the notice: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(message)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn has(lines: &[String], want: &str) {
    assert!(
        lines.iter().any(|l| l == want),
        "missing {want:?} in\n{}",
        lines.join("\n")
    );
}

#[test]
fn python_email_reads_the_failure_notice() {
    let bob = rcpt("bob@dest.example", None, Some("rfc822;Bob@Dest.Example"));
    let carol = rcpt("carol@dest.example", None, None);
    let reply = remote_550();
    let env = envelope(
        Some(DsnRet::Full),
        Some("ENV-42"),
        vec![bob.clone(), carol.clone()],
    );
    let dsn = build_dsn(&input(&env, vec![failed(&bob, &reply), delayed(&carol)])).unwrap();
    let lines = python_check(&dsn.message);
    for want in [
        "type multipart/report",
        "report-type delivery-status",
        "header From: Mail Delivery System <MAILER-DAEMON@relay.example.net>",
        "header To: alice@sender.example",
        "header Subject: Undelivered Mail Returned to Sender",
        "header Auto-Submitted: auto-replied",
        "part 0 text/plain",
        "part 1 message/delivery-status",
        "part 2 message/rfc822",
        "message-field Reporting-MTA: dns; relay.example.net",
        "message-field Original-Envelope-Id: ENV-42",
        "recipient 0 Original-Recipient: rfc822;Bob@Dest.Example",
        "recipient 0 Final-Recipient: rfc822; bob@dest.example",
        "recipient 0 Action: failed",
        "recipient 0 Status: 5.1.1",
        "recipient 0 Remote-MTA: dns; mx1.dest.example",
        "recipient 0 Diagnostic-Code: smtp; 550 5.1.1 <bob@dest.example>: Recipient address rejected: User unknown",
        "recipient 1 Action: delayed",
        "recipient 1 Will-Retry-Until: Sat, 29 Nov 2025 16:00:00 +0000",
        "enclosed-header Subject: Quarterly figures",
        "enclosed-header Message-ID: <orig-1@sender.example>",
        "defects 0",
        "ok",
    ] {
        has(&lines, want);
    }
}

#[test]
fn python_email_reads_a_headers_only_delay_notice() {
    let bob = rcpt("bob@dest.example", Some(Notify::DELAY), None);
    let env = envelope(Some(DsnRet::Headers), None, vec![bob.clone()]);
    let dsn = build_dsn(&input(&env, vec![delayed(&bob)])).unwrap();
    let lines = python_check(&dsn.message);
    for want in [
        "header Subject: Delayed Mail (still being retried)",
        "part 2 text/rfc822-headers",
        "returned-headers 7",
        "recipient 0 Action: delayed",
        "defects 0",
        "ok",
    ] {
        has(&lines, want);
    }
}

#[test]
fn python_email_reads_folded_and_hostile_notices() {
    let evil = Reply::new(
        ReplyCode::new(550).unwrap(),
        None,
        format!(
            "{}\r\nBcc: x@y\r\n{}",
            "word ".repeat(200),
            "z".repeat(1500)
        ),
    );
    let bob = rcpt("bob@dest.example", None, None);
    let env = envelope(None, None, vec![bob.clone()]);
    let dsn = build_dsn(&input(&env, vec![failed(&bob, &evil)])).unwrap();
    let lines = python_check(&dsn.message);
    has(&lines, "defects 0");
    has(&lines, "ok");
    assert!(!lines.iter().any(|l| l.starts_with("header Bcc")));
}
