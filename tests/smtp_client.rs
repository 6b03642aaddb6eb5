//! Tests of the outbound SMTP client (`relay::smtp::client`), all in memory:
//!
//! 1. sans-IO against sans-IO: the client delivers to the relay's own server [`Session`], the
//!    bytes piped both ways, the server's `Submit` events answered as the spool would. What
//!    the server stores must be exactly what the client was given.
//! 2. Scripted next hops: transcripts of `S:` (hop) and `C:` (client) lines plus `E:` (client
//!    events), the hop's bytes fed whole, split at every offset into two reads, and byte by
//!    byte; the client's bytes and events must be exactly the expected ones every time.
//!    `P:` sets the STARTTLS policy and `T: ok|fail` marks where the TLS handshake happens:
//!    the hop's bytes before it that the client did not read are dropped, as the driver
//!    drops them, and the bytes after it stand for the decrypted stream.
//! 3. Hostile next hops: endless continuation lines and megabyte lines stay bounded and defer.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use proptest::prelude::*;
use relay::envelope::{BodyType, DsnRet, MailParams, Notify, QueueId, Recipient};
use relay::smtp::client::{
    Client, ClientConfig, ClientEvent, ConnectionOutcome, Diagnostic, Next, Outgoing, Output,
    RecipientResult, Stage, StartTlsPolicy, TransactionOutcome,
};
use relay::smtp::{Event, Outbox, Session, SessionConfig, Submission};

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

fn recipient(address: &str) -> Recipient {
    Recipient {
        address: address.to_owned(),
        notify: None,
        orcpt: None,
    }
}

fn message(from: &str, to: &[&str], body: &[u8]) -> Outgoing {
    Outgoing {
        reverse_path: from.to_owned(),
        params: MailParams::default(),
        recipients: to.iter().map(|a| recipient(a)).collect(),
        body: Bytes::copy_from_slice(body),
        eight_bit: relay::mime::downgrade::has_8bit(body),
    }
}

fn client_config() -> Arc<ClientConfig> {
    Arc::new(ClientConfig {
        helo_name: "client.example".into(),
        ..ClientConfig::default()
    })
}

// ---------------------------------------------------------------------------------------------
// 1. Against the relay's own server session

/// Everything one connection produced.
struct Run {
    outcomes: Vec<TransactionOutcome>,
    closed: Vec<ConnectionOutcome>,
    submissions: Vec<Submission>,
    /// Each write of the client, in order.
    writes: Vec<Vec<u8>>,
}

/// Connects a client to a server session in memory and delivers `messages`, then quits.
/// `pipelining: false` removes PIPELINING from the server's EHLO reply (the server still
/// answers lock-step clients the same).
fn converse(
    config: Arc<ClientConfig>,
    server: SessionConfig,
    messages: Vec<Outgoing>,
    pipelining: bool,
) -> Run {
    let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let mut sout = Outbox::default();
    let mut session = Session::new(Arc::new(server), peer, now(), &mut sout);
    let mut to_client: Vec<u8> = std::mem::take(&mut sout.bytes);
    let mut to_server: Vec<u8> = Vec::new();
    let mut client = Client::new(config);
    let mut out = Output::default();
    let mut messages: VecDeque<Outgoing> = messages.into();
    let mut run = Run {
        outcomes: Vec::new(),
        closed: Vec::new(),
        submissions: Vec::new(),
        writes: Vec::new(),
    };
    let mut next_id = 0;
    for _ in 0..100_000 {
        let mut progress = false;
        match client.next() {
            Next::Done => break,
            Next::Send => {
                match messages.pop_front() {
                    Some(m) => client.send(m, &mut out).unwrap(),
                    None => client.quit(&mut out),
                }
                progress = true;
            }
            Next::Read(_) => {
                let n = client.handle_input(&to_client, &mut out);
                to_client.drain(..n);
                progress |= n > 0;
            }
            Next::StartTls => panic!("STARTTLS from a client that never asks for it"),
        }
        if !out.bytes.is_empty() {
            run.writes.push(out.bytes.clone());
            to_server.extend_from_slice(&out.bytes);
            progress = true;
        }
        for event in out.events.drain(..) {
            match event {
                ClientEvent::Ready | ClientEvent::StartTls => {}
                ClientEvent::TransactionDone(outcome) => run.outcomes.push(outcome),
                ClientEvent::Closed(outcome) => run.closed.push(outcome),
            }
        }
        out.bytes.clear();
        if !session.is_closed() {
            sout.clear();
            let n = session.handle_input(&to_server, now(), &mut sout);
            to_server.drain(..n);
            progress |= n > 0;
            for event in std::mem::take(&mut sout.events) {
                if let Event::Submit(submission) = event {
                    run.submissions.push(*submission);
                    next_id += 1;
                    session.submitted(Ok(QueueId(next_id)), now(), &mut sout);
                }
            }
            let mut bytes = std::mem::take(&mut sout.bytes);
            if !pipelining {
                let text = b"250-PIPELINING\r\n";
                if let Some(at) = bytes.windows(text.len()).position(|w| w == text) {
                    bytes.drain(at..at + text.len());
                }
            }
            to_client.extend_from_slice(&bytes);
        }
        if !progress {
            if session.is_closed() && to_client.is_empty() {
                client.connection_lost(&mut out);
                continue;
            }
            panic!("stalled: client {:?}", client.next());
        }
    }
    assert_eq!(client.next(), Next::Done, "conversation did not end");
    run
}

fn server_config() -> SessionConfig {
    SessionConfig {
        hostname: "mx.test".into(),
        local_domains: vec!["localhost".into(), "example.net".into()],
        ..SessionConfig::default()
    }
}

fn assert_all_delivered(outcome: &TransactionOutcome) {
    for (i, result) in outcome.results.iter().enumerate() {
        match result {
            RecipientResult::Delivered(reply) => assert_eq!(reply.code().get(), 250),
            other => panic!("recipient {i}: {other:?}"),
        }
    }
}

const BODY: &[u8] = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: hello\r\n\r\nHello.\r\n.\r\n..two dots\r\n.leading\r\n";

#[test]
fn delivers_to_the_relays_own_server_with_pipelining() {
    let to = ["b@example.net", "c@example.net", "d@example.com"];
    let run = converse(
        client_config(),
        server_config(),
        vec![message("a@example.org", &to, BODY)],
        true,
    );
    assert_eq!(run.closed, [ConnectionOutcome::Quit]);
    assert_eq!(run.outcomes.len(), 1);
    assert_all_delivered(&run.outcomes[0]);
    assert_eq!(run.outcomes[0].results.len(), 3);
    assert_eq!(run.outcomes[0].transactions, 1);
    assert_eq!(run.submissions.len(), 1);
    let submission = &run.submissions[0];
    assert_eq!(submission.body, BODY, "stored body equals the original");
    assert_eq!(submission.envelope.reverse_path, "a@example.org");
    let stored: Vec<&str> = submission
        .envelope
        .recipients
        .iter()
        .map(|r| r.address.as_str())
        .collect();
    assert_eq!(stored, to);
    assert_eq!(submission.origin.helo, "client.example");
    // RFC 2920: MAIL, the RCPTs and DATA left in one write.
    let group = run
        .writes
        .iter()
        .find(|w| w.starts_with(b"MAIL"))
        .expect("MAIL");
    let text = String::from_utf8_lossy(group);
    assert_eq!(text.matches("\r\n").count(), 5, "{text}");
    assert!(text.ends_with("DATA\r\n"), "{text}");
    // The server announced SIZE: the client declared it.
    assert!(text.contains(&format!("SIZE={}", BODY.len())), "{text}");
}

#[test]
fn lock_step_without_pipelining() {
    let to = ["b@example.net", "c@example.net"];
    let run = converse(
        client_config(),
        server_config(),
        vec![message("a@example.org", &to, BODY)],
        false,
    );
    assert_eq!(run.closed, [ConnectionOutcome::Quit]);
    assert_all_delivered(&run.outcomes[0]);
    assert_eq!(run.submissions[0].body, BODY);
    // One command per write: nothing was sent before the previous reply came.
    for write in &run.writes {
        let text = String::from_utf8_lossy(write);
        let command = ["EHLO", "MAIL", "RCPT", "DATA", "RSET", "QUIT"]
            .iter()
            .any(|c| text.starts_with(c));
        if command {
            assert_eq!(text.matches("\r\n").count(), 1, "{text}");
        }
    }
    let commands: Vec<String> = run
        .writes
        .iter()
        .map(|w| String::from_utf8_lossy(&w[..4.min(w.len())]).into_owned())
        .collect();
    assert_eq!(
        commands,
        ["EHLO", "MAIL", "RCPT", "RCPT", "DATA", "From", "QUIT"]
    );
}

#[test]
fn many_recipients_go_in_several_transactions() {
    let addresses: Vec<String> = (0..250).map(|i| format!("r{i}@example.com")).collect();
    let to: Vec<&str> = addresses.iter().map(String::as_str).collect();
    let run = converse(
        client_config(),
        server_config(),
        vec![message("a@example.org", &to, BODY)],
        true,
    );
    let outcome = &run.outcomes[0];
    assert_eq!(outcome.results.len(), 250);
    assert_all_delivered(outcome);
    assert_eq!(outcome.transactions, 3);
    let sizes: Vec<usize> = run
        .submissions
        .iter()
        .map(|s| s.envelope.recipients.len())
        .collect();
    assert_eq!(sizes, [100, 100, 50]);
    let mut all: Vec<String> = run
        .submissions
        .iter()
        .flat_map(|s| s.envelope.recipients.iter().map(|r| r.address.clone()))
        .collect();
    all.sort();
    let mut expected = addresses.clone();
    expected.sort();
    assert_eq!(all, expected, "every recipient exactly once");
    assert!(run.submissions.iter().all(|s| s.body == BODY));
}

#[test]
fn recipients_answered_452_go_in_the_next_transaction() {
    // The client would send 180 RCPTs at once; the server takes 100 and answers 452 4.5.3
    // to the rest (RFC 5321 §4.5.3.1.10), which go in a second transaction.
    let config = Arc::new(ClientConfig {
        max_recipients_per_transaction: 1000,
        ..(*client_config()).clone()
    });
    let addresses: Vec<String> = (0..180).map(|i| format!("r{i}@example.com")).collect();
    let to: Vec<&str> = addresses.iter().map(String::as_str).collect();
    for pipelining in [true, false] {
        let run = converse(
            config.clone(),
            server_config(),
            vec![message("a@example.org", &to, BODY)],
            pipelining,
        );
        let outcome = &run.outcomes[0];
        assert_all_delivered(outcome);
        assert_eq!(outcome.transactions, 2);
        let sizes: Vec<usize> = run
            .submissions
            .iter()
            .map(|s| s.envelope.recipients.len())
            .collect();
        assert_eq!(sizes, [100, 80]);
    }
}

#[test]
fn one_connection_carries_three_messages() {
    let messages = vec![
        message(
            "a@example.org",
            &["one@example.net"],
            b"Subject: 1\r\n\r\none\r\n",
        ),
        message("", &["two@example.net"], b"Subject: 2\r\n\r\ntwo\r\n"),
        message(
            "c@example.org",
            &["three@example.net", "four@example.net"],
            b"Subject: 3\r\n\r\nthree\r\n",
        ),
    ];
    for pipelining in [true, false] {
        let run = converse(
            client_config(),
            server_config(),
            messages.clone(),
            pipelining,
        );
        assert_eq!(run.closed, [ConnectionOutcome::Quit]);
        assert_eq!(run.outcomes.len(), 3);
        run.outcomes.iter().for_each(assert_all_delivered);
        assert_eq!(run.submissions.len(), 3);
        for (submission, message) in run.submissions.iter().zip(&messages) {
            assert_eq!(submission.body, &message.body[..]);
            assert_eq!(submission.envelope.reverse_path, message.reverse_path);
        }
        let all = run.writes.concat();
        let text = String::from_utf8_lossy(&all);
        assert_eq!(text.matches("EHLO ").count(), 1, "one greeting and EHLO");
        assert_eq!(
            text.matches("RSET").count(),
            0,
            "clean transactions need no RSET"
        );
        assert_eq!(text.matches("QUIT").count(), 1);
    }
}

#[test]
fn eight_bit_and_utf8_to_a_hop_that_supports_them() {
    let body =
        "Subject: caf\u{e9}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nna\u{ef}ve\r\n";
    let mut m = message("j\u{f6}rg@example.org", &["b@example.net"], body.as_bytes());
    m.params.smtputf8 = true;
    m.params.body = BodyType::EightBitMime;
    let run = converse(client_config(), server_config(), vec![m], true);
    assert_all_delivered(&run.outcomes[0]);
    assert!(!run.outcomes[0].downgraded);
    let submission = &run.submissions[0];
    assert_eq!(submission.body, body.as_bytes(), "sent as is");
    assert_eq!(submission.envelope.params.body, BodyType::EightBitMime);
    assert!(submission.envelope.params.smtputf8);
}

#[test]
fn dsn_parameters_reach_a_hop_that_announces_dsn() {
    let mut m = message("a@example.org", &["b@example.net"], BODY);
    m.params.ret = Some(DsnRet::Headers);
    m.params.envid = Some("id+1=x".into());
    m.recipients[0].notify = Some(Notify::SUCCESS.union(Notify::DELAY));
    m.recipients[0].orcpt = Some("rfc822;b@example.net".into());
    let run = converse(client_config(), server_config(), vec![m], true);
    let envelope = &run.submissions[0].envelope;
    assert_eq!(envelope.params.ret, Some(DsnRet::Headers));
    assert_eq!(envelope.params.envid.as_deref(), Some("id+1=x"));
    assert_eq!(
        envelope.recipients[0].notify,
        Some(Notify::SUCCESS.union(Notify::DELAY))
    );
    assert_eq!(
        envelope.recipients[0].orcpt.as_deref(),
        Some("rfc822;b@example.net")
    );
}

#[test]
fn message_above_the_hops_size_bounces_without_data() {
    let server = SessionConfig {
        message_size_max: 50,
        ..server_config()
    };
    let run = converse(
        client_config(),
        server,
        vec![message("a@example.org", &["b@example.net"], BODY)],
        true,
    );
    let outcome = &run.outcomes[0];
    assert_eq!(outcome.transactions, 0);
    match &outcome.results[0] {
        RecipientResult::Bounced(Diagnostic::Local { stage, reply }) => {
            assert_eq!(*stage, Stage::Prepare);
            assert_eq!(reply.code().get(), 552);
            assert_eq!(
                reply.status().map(|s| s.to_string()).as_deref(),
                Some("5.3.4")
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(run.submissions.is_empty());
    let all = String::from_utf8_lossy(&run.writes.concat()).into_owned();
    assert!(!all.contains("MAIL"), "{all}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Dot-stuffing round trip: what the server stores is what the client was given, for
    /// bodies full of lines that start with dots.
    #[test]
    fn dot_stuffing_round_trip(lines in proptest::collection::vec("[.]{0,3}[a-z .]{0,6}", 0..40)) {
        let mut body = b"Subject: dots\r\n\r\n".to_vec();
        for line in &lines {
            body.extend_from_slice(line.as_bytes());
            body.extend_from_slice(b"\r\n");
        }
        let run = converse(
            client_config(),
            server_config(),
            vec![message("a@example.org", &["b@example.net"], &body)],
            true,
        );
        prop_assert_eq!(&run.submissions[0].body, &body);
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Scripted next hops

fn unescape(text: &str) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            let mut buf = [0; 4];
            bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        match chars.next() {
            Some('r') => bytes.push(b'\r'),
            Some('n') => bytes.push(b'\n'),
            Some('\\') => bytes.push(b'\\'),
            other => panic!("bad escape \\{other:?}"),
        }
    }
    bytes
}

fn stage_name(stage: Stage) -> &'static str {
    match stage {
        Stage::Greeting => "greeting",
        Stage::Ehlo => "ehlo",
        Stage::Helo => "helo",
        Stage::StartTls => "starttls",
        Stage::Prepare => "prepare",
        Stage::Rset => "rset",
        Stage::Mail => "mail",
        Stage::Rcpt => "rcpt",
        Stage::Data => "data",
        Stage::EndOfData => "end-of-data",
        Stage::Quit => "quit",
        Stage::Idle => "idle",
    }
}

fn render_reply(reply: &relay::smtp::Reply) -> String {
    match reply.status() {
        Some(status) => format!("{} {status}", reply.code()),
        None => reply.code().to_string(),
    }
}

fn render_diagnostic(d: &Diagnostic) -> String {
    let source = if d.is_remote() { "remote" } else { "local" };
    format!(
        "{source} {} {}",
        stage_name(d.stage()),
        render_reply(d.reply())
    )
}

fn render(event: &ClientEvent) -> Option<String> {
    Some(match event {
        ClientEvent::Ready => return None,
        ClientEvent::StartTls => "starttls".into(),
        ClientEvent::TransactionDone(outcome) => {
            let results: Vec<String> = outcome
                .results
                .iter()
                .map(|r| match r {
                    RecipientResult::Delivered(reply) => {
                        format!("delivered {}", render_reply(reply))
                    }
                    RecipientResult::Deferred(d) => format!("deferred {}", render_diagnostic(d)),
                    RecipientResult::Bounced(d) => format!("bounced {}", render_diagnostic(d)),
                })
                .collect();
            format!(
                "done tx={}{} {}",
                outcome.transactions,
                if outcome.downgraded {
                    " downgraded"
                } else {
                    ""
                },
                results.join(" | ")
            )
        }
        ClientEvent::Closed(ConnectionOutcome::Quit) => "closed quit".into(),
        ClientEvent::Closed(ConnectionOutcome::Failed(d)) => {
            format!("closed failed {}", render_diagnostic(d))
        }
    })
}

/// What the driver does once the hop's bytes are all read and the client still waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Lost,
    TimedOut,
}

struct Script {
    /// The hop's bytes: before the first handshake, then after each.
    hop: Vec<Vec<u8>>,
    /// The outcome of each handshake (`T:` lines).
    tls: Vec<bool>,
    policy: StartTlsPolicy,
    client: Vec<u8>,
    events: Vec<String>,
    end: End,
}

fn script(text: &str) -> Script {
    let mut s = Script {
        hop: vec![Vec::new()],
        tls: Vec::new(),
        policy: StartTlsPolicy::Never,
        client: Vec::new(),
        events: Vec::new(),
        end: End::Lost,
    };
    for line in text.lines().map(str::trim_start) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (tag, rest) = line.split_at(2);
        let rest = rest.strip_prefix(' ').unwrap_or(rest);
        match tag {
            "S:" => {
                let hop = s.hop.last_mut().expect("a segment");
                hop.extend_from_slice(rest.as_bytes());
                hop.extend_from_slice(b"\r\n");
            }
            "T:" => {
                s.tls.push(match rest {
                    "ok" => true,
                    "fail" => false,
                    other => panic!("unknown handshake outcome {other}"),
                });
                s.hop.push(Vec::new());
            }
            "P:" => {
                s.policy = match rest {
                    "never" => StartTlsPolicy::Never,
                    "if-offered" => StartTlsPolicy::IfOffered,
                    "required" => StartTlsPolicy::Required,
                    other => panic!("unknown policy {other}"),
                }
            }
            "C:" => {
                s.client.extend_from_slice(rest.as_bytes());
                s.client.extend_from_slice(b"\r\n");
            }
            "C~" => s.client.extend_from_slice(&unescape(rest)),
            "E:" => s.events.push(rest.to_owned()),
            "X:" => {
                s.end = match rest {
                    "lost" => End::Lost,
                    "timeout" => End::TimedOut,
                    other => panic!("unknown end {other}"),
                }
            }
            other => panic!("unknown tag {other:?} in {line:?}"),
        }
    }
    s
}

/// Drives a client over the hop's bytes, `reads[i]` being the reads of segment `i` (before
/// the first handshake, then after each); `tls[i]` is the outcome of handshake `i`. Returns
/// the client's bytes and rendered events.
fn drive(
    config: &Arc<ClientConfig>,
    policy: StartTlsPolicy,
    messages: &[Outgoing],
    reads: &[Vec<&[u8]>],
    tls: &[bool],
    end: End,
) -> (Vec<u8>, Vec<String>) {
    let mut client = Client::with_starttls(config.clone(), policy);
    let mut messages: VecDeque<Outgoing> = messages.iter().cloned().collect();
    let mut out = Output::default();
    let mut written = Vec::new();
    let mut events = Vec::new();
    let mut buffer = Vec::new();
    let collect = |out: &mut Output, written: &mut Vec<u8>, events: &mut Vec<String>| {
        written.extend_from_slice(&out.bytes);
        events.extend(out.events.iter().filter_map(render));
        out.clear();
    };
    let mut handshakes = tls.iter();
    'segments: for segment in reads {
        for read in segment {
            buffer.extend_from_slice(read);
            loop {
                match client.next() {
                    Next::Done => break,
                    // The rest of this segment came before TLS: dropped unread.
                    Next::StartTls => break,
                    Next::Send => match messages.pop_front() {
                        Some(m) => client.send(m, &mut out).unwrap(),
                        None => client.quit(&mut out),
                    },
                    Next::Read(_) => {
                        let n = client.handle_input(&buffer, &mut out);
                        assert!(n <= buffer.len());
                        buffer.drain(..n);
                        let stuck = n == 0 && matches!(client.next(), Next::Read(_));
                        collect(&mut out, &mut written, &mut events);
                        if stuck {
                            break;
                        }
                    }
                }
                collect(&mut out, &mut written, &mut events);
            }
            if client.next() == Next::StartTls {
                break;
            }
        }
        if client.next() != Next::StartTls {
            break 'segments;
        }
        buffer.clear();
        match handshakes.next() {
            Some(true) => client.tls_established(&mut out),
            Some(false) => client.tls_failed("scripted failure", &mut out),
            None => panic!("STARTTLS accepted but the script has no T: line"),
        }
        assert_eq!(client.is_encrypted(), client.next() != Next::Done);
        collect(&mut out, &mut written, &mut events);
    }
    if client.next() != Next::Done {
        match end {
            End::Lost => client.connection_lost(&mut out),
            End::TimedOut => client.timed_out(&mut out),
        }
        collect(&mut out, &mut written, &mut events);
    }
    assert_eq!(client.next(), Next::Done);
    (written, events)
}

fn escape(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .replace('\r', "\\r")
        .replace('\n', "\\n\n")
}

/// Runs a transcript with the hop's bytes whole, split at every offset, and byte by byte
/// (each segment between handshakes on its own).
fn check_with(config: ClientConfig, messages: &[Outgoing], text: &str) {
    let s = script(text);
    let config = Arc::new(config);
    let run = |reads: &[Vec<&[u8]>]| drive(&config, s.policy, messages, reads, &s.tls, s.end);
    let whole: Vec<Vec<&[u8]>> = s.hop.iter().map(|h| vec![h.as_slice()]).collect();
    let (written, events) = run(&whole);
    assert_eq!(
        escape(&written),
        escape(&s.client),
        "client bytes\nevents: {events:#?}"
    );
    assert_eq!(events, s.events, "events");
    for (i, segment) in s.hop.iter().enumerate() {
        for k in 0..=segment.len() {
            let mut reads = whole.clone();
            let (a, b) = segment.split_at(k);
            reads[i] = vec![a, b];
            assert_eq!(
                run(&reads),
                (written.clone(), events.clone()),
                "segment {i} split at {k}"
            );
        }
    }
    let bytes: Vec<Vec<&[u8]>> = s.hop.iter().map(|h| h.chunks(1).collect()).collect();
    assert_eq!(run(&bytes), (written, events), "byte by byte");
}

fn check(messages: &[Outgoing], text: &str) {
    check_with((*client_config()).clone(), messages, text);
}

fn two_recipients() -> Outgoing {
    message(
        "a@example.org",
        &["b@example.net", "c@example.net"],
        b"Subject: x\r\n\r\n.hi\r\n",
    )
}

#[test]
fn transcript_4xx_on_one_rcpt_of_two() {
    check(
        &[two_recipients()],
        "
        S: 220 mx.example ESMTP
        C: EHLO client.example
        S: 250-mx.example
        S: 250-PIPELINING
        S: 250 ENHANCEDSTATUSCODES
        C: MAIL FROM:<a@example.org>
        C: RCPT TO:<b@example.net>
        C: RCPT TO:<c@example.net>
        C: DATA
        S: 250 2.1.0 Ok
        S: 250 2.1.5 Ok
        S: 451 4.2.0 greylisted, try later
        S: 354 go ahead
        C: Subject: x
        C:
        C: ..hi
        C: .
        S: 250 2.0.0 Ok: queued as X
        E: done tx=1 delivered 250 2.0.0 | deferred remote rcpt 451 4.2.0
        C: QUIT
        S: 221 2.0.0 Bye
        E: closed quit
        ",
    );
}

#[test]
fn transcript_5xx_on_mail_lock_step_then_rset() {
    check(
        &[
            two_recipients(),
            message("x@example.org", &["y@example.net"], b"y\r\n"),
        ],
        "
        S: 220 mx.example ESMTP
        C: EHLO client.example
        S: 250 mx.example
        C: MAIL FROM:<a@example.org>
        S: 550 5.7.1 sender rejected
        E: done tx=1 bounced remote mail 550 5.7.1 | bounced remote mail 550 5.7.1
        # The transaction did not end with a reply to its data: RSET first.
        C: RSET
        S: 250 2.0.0 Ok
        C: MAIL FROM:<x@example.org>
        S: 250 2.1.0 Ok
        C: RCPT TO:<y@example.net>
        S: 250 2.1.5 Ok
        C: DATA
        S: 354 go ahead
        C: y
        C: .
        S: 250 2.0.0 Ok
        E: done tx=1 delivered 250 2.0.0
        C: QUIT
        S: 221 2.0.0 Bye
        E: closed quit
        ",
    );
}

#[test]
fn transcript_5xx_on_mail_pipelined() {
    check(
        &[two_recipients()],
        "
        S: 220 mx.example ESMTP
        C: EHLO client.example
        S: 250-mx.example
        S: 250 PIPELINING
        C: MAIL FROM:<a@example.org>
        C: RCPT TO:<b@example.net>
        C: RCPT TO:<c@example.net>
        C: DATA
        S: 451 4.3.0 try later
        S: 503 5.5.1 need MAIL
        S: 503 5.5.1 need MAIL
        S: 503 5.5.1 need MAIL
        E: done tx=1 deferred remote mail 451 4.3.0 | deferred remote mail 451 4.3.0
        C: QUIT
        S: 221 2.0.0 Bye
        E: closed quit
        ",
    );
}

#[test]
fn transcript_all_rcpts_refused_but_data_accepted() {
    // RFC 2920 §3.1: the client sends just the dot, ignores that reply, and resets.
    check(
        &[
            two_recipients(),
            message("x@example.org", &["y@example.net"], b"y\r\n"),
        ],
        "
        S: 220 mx.example ESMTP
        C: EHLO client.example
        S: 250-mx.example
        S: 250 PIPELINING
        C: MAIL FROM:<a@example.org>
        C: RCPT TO:<b@example.net>
        C: RCPT TO:<c@example.net>
        C: DATA
        S: 250 2.1.0 Ok
        S: 550 5.1.1 unknown
        S: 450 4.2.1 busy
        S: 354 go ahead
        C: .
        S: 554 5.5.1 no valid recipients
        E: done tx=1 bounced remote rcpt 550 5.1.1 | deferred remote rcpt 450 4.2.1
        C: RSET
        C: MAIL FROM:<x@example.org>
        C: RCPT TO:<y@example.net>
        C: DATA
        S: 250 2.0.0 Ok
        S: 250 2.1.0 Ok
        S: 250 2.1.5 Ok
        S: 354 go ahead
        C: y
        C: .
        S: 250 2.0.0 Ok
        E: done tx=1 delivered 250 2.0.0
        C: QUIT
        S: 221 2.0.0 Bye
        E: closed quit
        ",
    );
}

#[test]
fn transcript_no_rcpt_accepted_lock_step_skips_data() {
    check(
        &[two_recipients()],
        "
        S: 220 mx.example ESMTP
        C: EHLO client.example
        S: 250 mx.example
        C: MAIL FROM:<a@example.org>
        S: 250 2.1.0 Ok
        C: RCPT TO:<b@example.net>
        S: 550 5.1.1 unknown
        C: RCPT TO:<c@example.net>
        S: 550 5.1.1 unknown
        E: done tx=1 bounced remote rcpt 550 5.1.1 | bounced remote rcpt 550 5.1.1
        C: QUIT
        S: 221 2.0.0 Bye
        E: closed quit
        ",
    );
}

#[test]
fn transcript_data_refused_applies_to_accepted_recipients() {
    check(
        &[two_recipients()],
        "
        S: 220 mx.example ESMTP
        C: EHLO client.example
        S: 250-mx.example
        S: 250 PIPELINING
        C: MAIL FROM:<a@example.org>
        C: RCPT TO:<b@example.net>
        C: RCPT TO:<c@example.net>
        C: DATA
        S: 250 2.1.0 Ok
        S: 250 2.1.5 Ok
        S: 550 5.1.1 unknown
        S: 452 4.3.1 insufficient storage
        E: done tx=1 deferred remote data 452 4.3.1 | bounced remote rcpt 550 5.1.1
        C: QUIT
        S: 221 2.0.0 Bye
        E: closed quit
        ",
    );
}

#[test]
fn transcript_end_of_data_5xx_bounces_everyone_accepted() {
    check(
        &[two_recipients()],
        "
        S: 220 mx.example ESMTP
        C: EHLO client.example
        S: 250-mx.example
        S: 250 PIPELINING
        C: MAIL FROM:<a@example.org>
        C: RCPT TO:<b@example.net>
        C: RCPT TO:<c@example.net>
        C: DATA
        S: 250 2.1.0 Ok
        S: 250 2.1.5 Ok
        S: 250 2.1.5 Ok
        S: 354 go ahead
        C: Subject: x
        C:
        C: ..hi
        C: .
        S: 554-5.7.1 message refused
        S: 554 5.7.1 as spam
        E: done tx=1 bounced remote end-of-data 554 5.7.1 | bounced remote end-of-data 554 5.7.1
        C: QUIT
        S: 221 2.0.0 Bye
        E: closed quit
        ",
    );
}

#[test]
fn transcript_421_greeting() {
    check(
        &[two_recipients()],
        "
        S: 421 4.3.2 mx.example busy, try later
        E: closed failed remote greeting 421 4.3.2
        ",
    );
}

#[test]
fn transcript_554_greeting_waits_for_quit() {
    check(
        &[two_recipients()],
        "
        S: 554 5.7.1 no service for you
        C: QUIT
        S: 221 2.0.0 Bye
        E: closed failed remote greeting 554 5.7.1
        ",
    );
}

#[test]
fn transcript_ehlo_502_falls_back_to_helo() {
    // No extensions after HELO: no SIZE or DSN parameters, one command per reply.
    let mut m = message(
        "a@example.org",
        &["b@example.net"],
        b"Subject: x\r\n\r\nplain\r\n",
    );
    m.params.ret = Some(DsnRet::Full);
    m.params.envid = Some("e1".into());
    m.recipients[0].notify = Some(Notify::FAILURE);
    check(
        &[m],
        "
        S: 220 old.example SMTP
        C: EHLO client.example
        S: 502 5.5.2 command not recognized
        C: HELO client.example
        S: 250 old.example
        C: MAIL FROM:<a@example.org>
        S: 250 ok
        C: RCPT TO:<b@example.net>
        S: 250 ok
        C: DATA
        S: 354 go ahead
        C: Subject: x
        C:
        C: plain
        C: .
        S: 250 ok
        E: done tx=1 delivered 250
        C: QUIT
        S: 221 bye
        E: closed quit
        ",
    );
}

#[test]
fn transcript_size_too_large_bounces_without_data() {
    check(
        &[message(
            "a@example.org",
            &["b@example.net"],
            &[b'x'; 200]
                .iter()
                .chain(b"\r\n")
                .copied()
                .collect::<Vec<u8>>(),
        )],
        "
        S: 220 mx.example ESMTP
        C: EHLO client.example
        S: 250-mx.example
        S: 250 SIZE 100
        E: done tx=0 bounced local prepare 552 5.3.4
        C: QUIT
        S: 221 2.0.0 Bye
        E: closed quit
        ",
    );
}

#[test]
fn transcript_dsn_parameters_only_when_announced() {
    let mut m = two_recipients();
    m.params.ret = Some(DsnRet::Headers);
    m.params.envid = Some("QQ314159".into());
    m.recipients[0].notify = Some(Notify::SUCCESS.union(Notify::FAILURE));
    m.recipients[0].orcpt = Some("rfc822;b@example.net".into());
    m.recipients[1].notify = Some(Notify::NEVER);
    let with_dsn = "
        S: 220 mx.example ESMTP
        C: EHLO client.example
        S: 250-mx.example
        S: 250-PIPELINING
        S: 250-SIZE
        S: 250 DSN
        C: MAIL FROM:<a@example.org> SIZE=19 RET=HDRS ENVID=QQ314159
        C: RCPT TO:<b@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b@example.net
        C: RCPT TO:<c@example.net> NOTIFY=NEVER
        C: DATA
        S: 250 ok
        S: 250 ok
        S: 250 ok
        S: 354 go
        C: Subject: x
        C:
        C: ..hi
        C: .
        S: 250 ok
        E: done tx=1 delivered 250 | delivered 250
        C: QUIT
        S: 221 bye
        E: closed quit
        ";
    check(std::slice::from_ref(&m), with_dsn);
    let without_dsn = "
        S: 220 mx.example ESMTP
        C: EHLO client.example
        S: 250-mx.example
        S: 250-PIPELINING
        S: 250 SIZE 1000
        C: MAIL FROM:<a@example.org> SIZE=19
        C: RCPT TO:<b@example.net>
        C: RCPT TO:<c@example.net>
        C: DATA
        S: 250 ok
        S: 250 ok
        S: 250 ok
        S: 354 go
        C: Subject: x
        C:
        C: ..hi
        C: .
        S: 250 ok
        E: done tx=1 delivered 250 | delivered 250
        C: QUIT
        S: 221 bye
        E: closed quit
        ";
    check(&[m], without_dsn);
}

#[test]
fn transcript_utf8_address_to_a_hop_without_smtputf8() {
    let mut m = message(
        "a@example.org",
        &["j\u{f6}rg@example.net", "c@example.net"],
        b"Subject: x\r\n\r\nx\r\n",
    );
    m.params.smtputf8 = true;
    check(
        &[m],
        "
        S: 220 mx.example ESMTP
        C: EHLO client.example
        S: 250-mx.example
        S: 250-8BITMIME
        S: 250 PIPELINING
        C: MAIL FROM:<a@example.org>
        C: RCPT TO:<c@example.net>
        C: DATA
        S: 250 ok
        S: 250 ok
        S: 354 go
        C: Subject: x
        C:
        C: x
        C: .
        S: 250 ok
        E: done tx=1 bounced local prepare 553 5.6.7 | delivered 250
        C: QUIT
        S: 221 bye
        E: closed quit
        ",
    );
    let sender = message("j\u{f6}rg@example.org", &["c@example.net"], b"x\r\n");
    check(
        &[sender],
        "
        S: 220 mx.example ESMTP
        C: EHLO client.example
        S: 250 mx.example
        E: done tx=0 bounced local prepare 553 5.6.7
        C: QUIT
        S: 221 bye
        E: closed quit
        ",
    );
}

#[test]
fn transcript_421_mid_transaction_defers_everything() {
    check(
        &[two_recipients()],
        "
        S: 220 mx.example ESMTP
        C: EHLO client.example
        S: 250 mx.example
        C: MAIL FROM:<a@example.org>
        S: 250 ok
        C: RCPT TO:<b@example.net>
        S: 250 ok
        C: RCPT TO:<c@example.net>
        S: 421 4.3.2 shutting down
        E: done tx=1 deferred remote rcpt 421 4.3.2 | deferred remote rcpt 421 4.3.2
        E: closed failed remote rcpt 421 4.3.2
        ",
    );
}

#[test]
fn transcript_timeout_after_data_defers() {
    // At least once: the hop may have the message, but without its reply it is deferred.
    check(
        &[two_recipients()],
        "
        S: 220 mx.example ESMTP
        C: EHLO client.example
        S: 250-mx.example
        S: 250 PIPELINING
        C: MAIL FROM:<a@example.org>
        C: RCPT TO:<b@example.net>
        C: RCPT TO:<c@example.net>
        C: DATA
        S: 250 ok
        S: 250 ok
        S: 550 5.1.1 no
        S: 354 go
        C: Subject: x
        C:
        C: ..hi
        C: .
        X: timeout
        E: done tx=1 deferred local end-of-data 421 4.4.2 | bounced remote rcpt 550 5.1.1
        E: closed failed local end-of-data 421 4.4.2
        ",
    );
}

#[test]
fn transcript_connection_lost_while_idle_and_after_quit() {
    check(
        &[],
        "
        S: 220 mx.example ESMTP
        C: EHLO client.example
        S: 250 mx.example
        C: QUIT
        X: lost
        E: closed quit
        ",
    );
}

#[test]
fn transcript_malformed_reply_defers() {
    check(
        &[two_recipients()],
        "
        S: 220 mx.example ESMTP
        C: EHLO client.example
        S: 250 mx.example
        C: MAIL FROM:<a@example.org>
        S: 250 ok
        C: RCPT TO:<b@example.net>
        S: HTTP/1.1 400 Bad Request
        E: done tx=1 deferred local rcpt 421 4.5.0 | deferred local rcpt 421 4.5.0
        E: closed failed local rcpt 421 4.5.0
        ",
    );
}

#[test]
fn transcript_unexpected_reply_code_defers() {
    check(
        &[two_recipients()],
        "
        S: 220 mx.example ESMTP
        C: EHLO client.example
        S: 250 mx.example
        C: MAIL FROM:<a@example.org>
        S: 354 what?
        E: done tx=1 deferred local mail 421 4.5.0 | deferred local mail 421 4.5.0
        E: closed failed local mail 421 4.5.0
        ",
    );
}

#[test]
fn transcript_recipient_limit_splits_transactions() {
    let config = ClientConfig {
        max_recipients_per_transaction: 1,
        ..(*client_config()).clone()
    };
    check_with(
        config,
        &[two_recipients()],
        "
        S: 220 mx.example ESMTP
        C: EHLO client.example
        S: 250-mx.example
        S: 250 PIPELINING
        C: MAIL FROM:<a@example.org>
        C: RCPT TO:<b@example.net>
        C: DATA
        S: 250 ok
        S: 250 ok
        S: 354 go
        C: Subject: x
        C:
        C: ..hi
        C: .
        S: 250 ok 1
        C: MAIL FROM:<a@example.org>
        C: RCPT TO:<c@example.net>
        C: DATA
        S: 250 ok
        S: 250 ok
        S: 354 go
        C: Subject: x
        C:
        C: ..hi
        C: .
        S: 250 ok 2
        E: done tx=2 delivered 250 | delivered 250
        C: QUIT
        S: 221 bye
        E: closed quit
        ",
    );
}

// ---------------------------------------------------------------------------------------------
// 8-bit to a hop without 8BITMIME

const EIGHT_BIT: &str = "From: a@example.org\r\nTo: b@example.net\r\nSubject: caf\u{e9} cr\u{e8}me\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nna\u{ef}ve fa\u{e7}ade \u{2014} \u{1f600}\r\n.line with dot\r\n";

/// The message data the client sent: between the 354 and the end, unstuffed.
fn sent_data(client_bytes: &[u8]) -> Vec<u8> {
    let text = client_bytes;
    let start = text
        .windows(6)
        .position(|w| w == b"DATA\r\n")
        .expect("DATA")
        + 6;
    let end = text
        .windows(5)
        .rposition(|w| w == b"\r\n.\r\n")
        .expect("end of data")
        + 2;
    let mut body = Vec::new();
    for line in text[start..end].split_inclusive(|&b| b == b'\n') {
        body.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
    }
    body
}

#[test]
fn eight_bit_body_is_converted_for_a_seven_bit_hop() {
    let m = message("a@example.org", &["b@example.net"], EIGHT_BIT.as_bytes());
    assert!(m.eight_bit);
    let hop =
        "220 mx\r\n250-mx\r\n250 PIPELINING\r\n250 ok\r\n250 ok\r\n354 go\r\n250 ok\r\n221 bye\r\n";
    let (written, events) = drive(
        &client_config(),
        StartTlsPolicy::Never,
        &[m],
        &[vec![hop.as_bytes()]],
        &[],
        End::Lost,
    );
    assert_eq!(
        events,
        ["done tx=1 downgraded delivered 250", "closed quit"]
    );
    let text = String::from_utf8_lossy(&written);
    assert!(
        text.contains("MAIL FROM:<a@example.org>\r\n"),
        "no BODY=: {text}"
    );
    let data = sent_data(&written);
    assert!(data.iter().all(|&b| b < 128), "7-bit only");
    assert!(data.ends_with(b"\r\n"));
    // Decoded, it is the same message.
    let original = mail_parser::MessageParser::default()
        .parse(EIGHT_BIT.as_bytes())
        .unwrap();
    let converted = mail_parser::MessageParser::default().parse(&data).unwrap();
    assert_eq!(converted.subject(), original.subject());
    assert_eq!(converted.body_text(0), original.body_text(0));
    assert_eq!(
        converted.body_text(0).as_deref(),
        Some("na\u{ef}ve fa\u{e7}ade \u{2014} \u{1f600}\r\n.line with dot\r\n")
    );
}

#[test]
fn eight_bit_body_that_cannot_be_converted_bounces() {
    // An 8-bit Message-ID is a structured field the converter will not guess at (5.6.3).
    let body = "Message-ID: <caf\u{e9}@example.org>\r\nSubject: x\r\n\r\nna\u{ef}ve\r\n";
    let m = message("a@example.org", &["b@example.net"], body.as_bytes());
    let hop = "220 mx\r\n250 mx\r\n221 bye\r\n";
    let (written, events) = drive(
        &client_config(),
        StartTlsPolicy::Never,
        &[m],
        &[vec![hop.as_bytes()]],
        &[],
        End::Lost,
    );
    assert_eq!(
        events,
        ["done tx=0 bounced local prepare 554 5.6.3", "closed quit"]
    );
    assert_eq!(written, b"EHLO client.example\r\nQUIT\r\n");
}

#[test]
fn eight_bit_body_goes_as_is_to_an_8bitmime_hop() {
    let m = message("a@example.org", &["b@example.net"], EIGHT_BIT.as_bytes());
    let hop =
        "220 mx\r\n250-mx\r\n250 8BITMIME\r\n250 ok\r\n250 ok\r\n354 go\r\n250 ok\r\n221 bye\r\n";
    let (written, events) = drive(
        &client_config(),
        StartTlsPolicy::Never,
        &[m],
        &[vec![hop.as_bytes()]],
        &[],
        End::Lost,
    );
    assert_eq!(events, ["done tx=1 delivered 250", "closed quit"]);
    let text = String::from_utf8_lossy(&written);
    assert!(
        text.contains("MAIL FROM:<a@example.org> BODY=8BITMIME\r\n"),
        "{text}"
    );
    assert_eq!(sent_data(&written), EIGHT_BIT.as_bytes());
}

// STARTTLS (RFC 3207)

fn one_recipient() -> Outgoing {
    message(
        "a@example.org",
        &["b@example.net"],
        b"Subject: x\r\n\r\nhi\r\n",
    )
}

#[test]
fn transcript_starttls_sends_ehlo_again_and_forgets_the_first_capabilities() {
    // PIPELINING was announced only before TLS: after it the client goes lock-step, and the
    // STARTTLS of the second EHLO is not taken up again.
    check(
        &[one_recipient()],
        "
        P: if-offered
        S: 220 mx.example ESMTP
        C: EHLO client.example
        S: 250-mx.example
        S: 250-PIPELINING
        S: 250 STARTTLS
        C: STARTTLS
        S: 220 2.0.0 Ready to start TLS
        E: starttls
        T: ok
        C: EHLO client.example
        S: 250-mx.example
        S: 250 STARTTLS
        C: MAIL FROM:<a@example.org>
        S: 250 ok
        C: RCPT TO:<b@example.net>
        S: 250 ok
        C: DATA
        S: 354 go
        C: Subject: x
        C:
        C: hi
        C: .
        S: 250 2.0.0 ok
        E: done tx=1 delivered 250 2.0.0
        C: QUIT
        S: 221 bye
        E: closed quit
        ",
    );
}

#[test]
fn transcript_starttls_drops_replies_injected_before_the_handshake() {
    // The NO STARTTLS response injection: a forged EHLO reply (with PIPELINING) and a 250
    // pipelined after the 220 must not be read as the replies that come over TLS.
    check(
        &[one_recipient()],
        "
        P: required
        S: 220 mx.example ESMTP
        C: EHLO client.example
        S: 250-mx.example
        S: 250 STARTTLS
        C: STARTTLS
        S: 220 go ahead
        S: 250-forged.example
        S: 250 PIPELINING
        S: 250 forged
        E: starttls
        T: ok
        C: EHLO client.example
        S: 250 mx.example
        C: MAIL FROM:<a@example.org>
        S: 451 4.3.0 not now
        E: done tx=1 deferred remote mail 451 4.3.0
        C: QUIT
        S: 221 bye
        E: closed quit
        ",
    );
}

#[test]
fn transcript_starttls_not_offered() {
    let plaintext = "
        S: 220 mx.example ESMTP
        C: EHLO client.example
        S: 250-mx.example
        S: 250 PIPELINING
        C: MAIL FROM:<a@example.org>
        C: RCPT TO:<b@example.net>
        C: DATA
        S: 250 ok
        S: 250 ok
        S: 354 go
        C: Subject: x
        C:
        C: hi
        C: .
        S: 250 ok
        E: done tx=1 delivered 250
        C: QUIT
        S: 221 bye
        E: closed quit
        ";
    check(&[one_recipient()], &format!("P: if-offered\n{plaintext}"));
    check(&[one_recipient()], &format!("P: never\n{plaintext}"));
    // Required: QUIT, and the connection fails with a local 4xx (the driver defers).
    check(
        &[one_recipient()],
        "
        P: required
        S: 220 mx.example ESMTP
        C: EHLO client.example
        S: 250-mx.example
        S: 250 PIPELINING
        C: QUIT
        S: 221 bye
        E: closed failed local ehlo 421 4.7.4
        ",
    );
}

#[test]
fn transcript_starttls_offered_but_policy_never() {
    check(
        &[],
        "
        P: never
        S: 220 mx.example ESMTP
        C: EHLO client.example
        S: 250-mx.example
        S: 250 STARTTLS
        C: QUIT
        S: 221 bye
        E: closed quit
        ",
    );
}

#[test]
fn transcript_starttls_refused() {
    // Opportunistic: RFC 3207 §4.1 lets the session go on; the first EHLO's capabilities
    // (PIPELINING) still hold, since the hop's state did not change.
    for refusal in ["454 4.7.0 TLS not available", "502 5.5.2 not implemented"] {
        check(
            &[one_recipient()],
            &format!(
                "
                P: if-offered
                S: 220 mx.example ESMTP
                C: EHLO client.example
                S: 250-mx.example
                S: 250-PIPELINING
                S: 250 STARTTLS
                C: STARTTLS
                S: {refusal}
                C: MAIL FROM:<a@example.org>
                C: RCPT TO:<b@example.net>
                C: DATA
                S: 250 ok
                S: 250 ok
                S: 354 go
                C: Subject: x
                C:
                C: hi
                C: .
                S: 250 ok
                E: done tx=1 delivered 250
                C: QUIT
                S: 221 bye
                E: closed quit
                "
            ),
        );
        // Required: a 4xx or a 5xx alike is a local 4xx (deferred, never bounced).
        check(
            &[one_recipient()],
            &format!(
                "
                P: required
                S: 220 mx.example ESMTP
                C: EHLO client.example
                S: 250-mx.example
                S: 250 STARTTLS
                C: STARTTLS
                S: {refusal}
                C: QUIT
                S: 221 bye
                E: closed failed local starttls 421 4.7.4
                "
            ),
        );
    }
}

#[test]
fn transcript_starttls_421_unexpected_and_silence() {
    check(
        &[one_recipient()],
        "
        P: if-offered
        S: 220 mx.example ESMTP
        C: EHLO client.example
        S: 250-mx.example
        S: 250 STARTTLS
        C: STARTTLS
        S: 421 4.3.2 shutting down
        E: closed failed remote starttls 421 4.3.2
        ",
    );
    check(
        &[one_recipient()],
        "
        P: if-offered
        S: 220 mx.example ESMTP
        C: EHLO client.example
        S: 250-mx.example
        S: 250 STARTTLS
        C: STARTTLS
        S: 250 what
        E: closed failed local starttls 421 4.5.0
        ",
    );
    check(
        &[one_recipient()],
        "
        P: required
        S: 220 mx.example ESMTP
        C: EHLO client.example
        S: 250-mx.example
        S: 250 STARTTLS
        C: STARTTLS
        X: timeout
        E: closed failed local starttls 421 4.4.2
        ",
    );
}

#[test]
fn transcript_starttls_handshake_failure_fails_the_connection() {
    for policy in ["if-offered", "required"] {
        check(
            &[one_recipient()],
            &format!(
                "
                P: {policy}
                S: 220 mx.example ESMTP
                C: EHLO client.example
                S: 250-mx.example
                S: 250 STARTTLS
                C: STARTTLS
                S: 220 go ahead
                E: starttls
                T: fail
                E: closed failed local starttls 421 4.7.5
                "
            ),
        );
    }
}

#[test]
fn transcript_starttls_required_after_a_helo_fallback() {
    // HELO announces nothing, so TLS cannot be had.
    check(
        &[one_recipient()],
        "
        P: required
        S: 220 old.example SMTP
        C: EHLO client.example
        S: 502 5.5.2 no
        C: HELO client.example
        S: 250 old.example
        C: QUIT
        S: 221 bye
        E: closed failed local helo 421 4.7.4
        ",
    );
    // Over TLS a refused EHLO falls back to HELO, and required is satisfied.
    check(
        &[one_recipient()],
        "
        P: required
        S: 220 mx.example ESMTP
        C: EHLO client.example
        S: 250-mx.example
        S: 250 STARTTLS
        C: STARTTLS
        S: 220 go ahead
        E: starttls
        T: ok
        C: EHLO client.example
        S: 500 5.5.1 confused
        C: HELO client.example
        S: 250 mx.example
        C: MAIL FROM:<a@example.org>
        S: 250 ok
        C: RCPT TO:<b@example.net>
        S: 250 ok
        C: DATA
        S: 354 go
        C: Subject: x
        C:
        C: hi
        C: .
        S: 250 ok
        E: done tx=1 delivered 250
        C: QUIT
        S: 221 bye
        E: closed quit
        ",
    );
}

#[test]
fn starttls_handshake_state_reads_nothing_and_quits_without_quit() {
    let mut client = Client::with_starttls(client_config(), StartTlsPolicy::IfOffered);
    let mut out = Output::default();
    let hop = b"220 mx\r\n250-mx\r\n250 STARTTLS\r\n";
    assert_eq!(client.handle_input(hop, &mut out), hop.len());
    assert_eq!(out.bytes, b"EHLO client.example\r\nSTARTTLS\r\n");
    out.clear();
    let after = b"220 go\r\n250 injected\r\n";
    assert_eq!(
        client.handle_input(after, &mut out),
        8,
        "only the 220 is read"
    );
    assert_eq!(out.events, [ClientEvent::StartTls]);
    assert_eq!(client.next(), Next::StartTls);
    out.clear();
    assert_eq!(client.handle_input(&after[8..], &mut out), 0);
    assert!(out.events.is_empty() && out.bytes.is_empty());
    // A driver that gives up (stopping) closes without a QUIT in the clear.
    client.quit(&mut out);
    assert!(out.bytes.is_empty());
    assert_eq!(out.events, [ClientEvent::Closed(ConnectionOutcome::Quit)]);
    assert_eq!(client.next(), Next::Done);
    assert!(!client.is_encrypted());
    // The handshake calls are ignored outside their state.
    let mut idle = Client::with_starttls(client_config(), StartTlsPolicy::IfOffered);
    idle.tls_established(&mut out);
    assert!(!idle.is_encrypted());
}

// ---------------------------------------------------------------------------------------------
// 3. Hostile next hops

/// Feeds `hop` in `chunk`-sized reads until the client is done; returns the octets fed and
/// the events.
fn feed_hostile(hop: &[u8], chunk: usize) -> (usize, Vec<String>) {
    let mut client = Client::new(client_config());
    let mut messages = VecDeque::from([two_recipients()]);
    let mut out = Output::default();
    let mut events = Vec::new();
    let mut buffer = Vec::new();
    let mut fed = 0;
    let mut pieces = hop.chunks(chunk);
    while client.next() != Next::Done {
        match client.next() {
            Next::Send => match messages.pop_front() {
                Some(m) => client.send(m, &mut out).unwrap(),
                None => client.quit(&mut out),
            },
            _ => {
                let n = client.handle_input(&buffer, &mut out);
                buffer.drain(..n);
                if n == 0 && matches!(client.next(), Next::Read(_)) {
                    match pieces.next() {
                        Some(piece) => {
                            buffer.extend_from_slice(piece);
                            fed += piece.len();
                        }
                        None => client.connection_lost(&mut out),
                    }
                }
                assert!(buffer.len() <= 4096 + chunk, "driver buffer stays bounded");
            }
        }
        events.extend(out.events.iter().filter_map(render));
        out.clear();
    }
    (fed, events)
}

#[test]
fn endless_continuation_lines_are_bounded_and_defer() {
    let mut hop = b"220 mx\r\n250-mx\r\n250 PIPELINING\r\n250 ok\r\n250 ok\r\n".to_vec();
    for _ in 0..100_000 {
        hop.extend_from_slice(b"250-more and more\r\n");
    }
    let (fed, events) = feed_hostile(&hop, 1024);
    assert!(fed < 10_000, "stopped early: {fed} octets read");
    assert_eq!(
        events,
        [
            "done tx=1 deferred local rcpt 421 4.5.0 | deferred local rcpt 421 4.5.0",
            "closed failed local rcpt 421 4.5.0"
        ]
    );
}

#[test]
fn megabyte_lines_are_bounded_and_defer() {
    let mut hop = b"220 mx\r\n250-mx\r\n250 PIPELINING\r\n250 ok\r\n250 ".to_vec();
    hop.extend(std::iter::repeat_n(b'x', 1 << 20));
    hop.extend_from_slice(b"\r\n");
    for chunk in [1000, 4096, 65536] {
        let (fed, events) = feed_hostile(&hop, chunk);
        assert!(
            fed <= 4096 + 2 * chunk + 100,
            "stopped early: {fed} octets read"
        );
        assert_eq!(
            events,
            [
                "done tx=1 deferred local rcpt 421 4.5.0 | deferred local rcpt 421 4.5.0",
                "closed failed local rcpt 421 4.5.0"
            ]
        );
    }
    // A megabyte greeting line is no different.
    let mut greeting = b"220 ".to_vec();
    greeting.extend(std::iter::repeat_n(b'y', 1 << 20));
    let (fed, events) = feed_hostile(&greeting, 8192);
    assert!(fed <= 4096 + 8192 * 2);
    assert_eq!(events, ["closed failed local greeting 421 4.5.0"]);
}

#[test]
fn send_is_refused_unless_idle() {
    let mut client = Client::new(client_config());
    let mut out = Output::default();
    let m = two_recipients();
    assert_eq!(client.send(m.clone(), &mut out), Err(Box::new(m)));
    assert_eq!(
        client.next(),
        Next::Read(ClientConfig::default().timeouts.greeting)
    );
    client.quit(&mut out);
    assert_eq!(out.events, [ClientEvent::Closed(ConnectionOutcome::Quit)]);
    assert_eq!(client.next(), Next::Done);
}

#[test]
fn timeouts_follow_the_stage() {
    let config = client_config();
    let t = config.timeouts;
    let mut client = Client::new(config);
    let mut out = Output::default();
    assert_eq!(client.next(), Next::Read(t.greeting));
    client.handle_input(b"220 mx\r\n", &mut out);
    assert_eq!(client.next(), Next::Read(t.ehlo));
    client.handle_input(b"250 mx\r\n", &mut out);
    assert_eq!(client.next(), Next::Send);
    client.send(two_recipients(), &mut out).unwrap();
    assert_eq!(client.next(), Next::Read(t.mail));
    client.handle_input(b"250 ok\r\n", &mut out);
    assert_eq!(client.next(), Next::Read(t.rcpt));
    client.handle_input(b"250 ok\r\n250 ok\r\n", &mut out);
    assert_eq!(client.next(), Next::Read(t.data_init));
    client.handle_input(b"354 go\r\n", &mut out);
    assert_eq!(client.next(), Next::Read(t.data_end));
    client.handle_input(b"250 ok\r\n", &mut out);
    assert_eq!(client.next(), Next::Send);
    client.quit(&mut out);
    assert_eq!(client.next(), Next::Read(t.quit));
    assert_eq!(t.data_init, Duration::from_secs(120));
    assert_eq!(t.data_end, Duration::from_secs(600));
    assert_eq!(t.data_block, Duration::from_secs(180));
}

#[test]
fn long_replies_are_kept_short_in_results() {
    // 100 lines of 4000 octets answer MAIL: the reply concerns every recipient, and each
    // keeps at most REPLY_TEXT_KEPT octets of it. The same for a 421, which ends everything.
    for code in ["550", "421"] {
        let mut hop = b"220 mx\r\n250 mx\r\n".to_vec();
        for _ in 0..99 {
            hop.extend_from_slice(code.as_bytes());
            hop.push(b'-');
            hop.extend(std::iter::repeat_n(b'z', 4000));
            hop.extend_from_slice(b"\r\n");
        }
        hop.extend_from_slice(code.as_bytes());
        hop.extend_from_slice(b" last\r\n");
        let mut client = Client::new(client_config());
        let mut out = Output::default();
        let mut consumed = client.handle_input(&hop, &mut out);
        let addresses: Vec<String> = (0..50).map(|i| format!("r{i}@example.net")).collect();
        let to: Vec<&str> = addresses.iter().map(String::as_str).collect();
        client
            .send(message("a@example.org", &to, b"x\r\n"), &mut out)
            .unwrap();
        consumed += client.handle_input(&hop[consumed..], &mut out);
        assert_eq!(consumed, hop.len());
        let outcome = out
            .events
            .iter()
            .find_map(|e| match e {
                ClientEvent::TransactionDone(outcome) => Some(outcome),
                _ => None,
            })
            .expect("done");
        for result in &outcome.results {
            let (RecipientResult::Bounced(d) | RecipientResult::Deferred(d)) = result else {
                panic!("{result:?}");
            };
            assert_eq!(d.reply().code().to_string(), code);
            assert!(d.reply().text().len() <= relay::smtp::client::REPLY_TEXT_KEPT);
            assert!(d.reply().text().ends_with("..."));
        }
    }
}

#[test]
fn transcript_452_other_than_too_many_recipients_is_not_retried() {
    check(
        &[two_recipients()],
        "
        S: 220 mx.example ESMTP
        C: EHLO client.example
        S: 250-mx.example
        S: 250 PIPELINING
        C: MAIL FROM:<a@example.org>
        C: RCPT TO:<b@example.net>
        C: RCPT TO:<c@example.net>
        C: DATA
        S: 250 2.1.0 Ok
        S: 250 2.1.5 Ok
        S: 452 4.2.2 mailbox full
        S: 354 go
        C: Subject: x
        C:
        C: ..hi
        C: .
        S: 250 2.0.0 Ok
        E: done tx=1 delivered 250 2.0.0 | deferred remote rcpt 452 4.2.2
        C: QUIT
        S: 221 2.0.0 Bye
        E: closed quit
        ",
    );
}

#[test]
fn transcript_452_too_many_recipients_is_retried_only_after_a_delivery() {
    // The data was refused: nothing shows the hop would take more, so the 452 stands.
    check(
        &[two_recipients()],
        "
        S: 220 mx.example ESMTP
        C: EHLO client.example
        S: 250-mx.example
        S: 250 PIPELINING
        C: MAIL FROM:<a@example.org>
        C: RCPT TO:<b@example.net>
        C: RCPT TO:<c@example.net>
        C: DATA
        S: 250 2.1.0 Ok
        S: 250 2.1.5 Ok
        S: 452 4.5.3 too many recipients
        S: 354 go
        C: Subject: x
        C:
        C: ..hi
        C: .
        S: 451 4.3.0 try later
        E: done tx=1 deferred remote end-of-data 451 4.3.0 | deferred remote rcpt 452 4.5.3
        C: QUIT
        S: 221 2.0.0 Bye
        E: closed quit
        ",
    );
    // Delivered to the first: the second goes in a new transaction (no RSET needed).
    check(
        &[two_recipients()],
        "
        S: 220 mx.example ESMTP
        C: EHLO client.example
        S: 250-mx.example
        S: 250 PIPELINING
        C: MAIL FROM:<a@example.org>
        C: RCPT TO:<b@example.net>
        C: RCPT TO:<c@example.net>
        C: DATA
        S: 250 2.1.0 Ok
        S: 250 2.1.5 Ok
        S: 452 too many recipients
        S: 354 go
        C: Subject: x
        C:
        C: ..hi
        C: .
        S: 250 2.0.0 Ok
        C: MAIL FROM:<a@example.org>
        C: RCPT TO:<c@example.net>
        C: DATA
        S: 250 2.1.0 Ok
        S: 250 2.1.5 Ok
        S: 354 go
        C: Subject: x
        C:
        C: ..hi
        C: .
        S: 250 2.0.0 Ok
        E: done tx=2 delivered 250 2.0.0 | delivered 250 2.0.0
        C: QUIT
        S: 221 2.0.0 Bye
        E: closed quit
        ",
    );
}
