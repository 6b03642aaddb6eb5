//! Transcript tests for the SMTP server session (docs/ARCHITECTURE.md §11).
//!
//! Each `tests/transcripts/*.txt` holds a conversation:
//!
//! ```text
//! # comment
//! O: peer=127.0.0.1:2525        options: peer, recipients_max, errors_max, message_size_max,
//!                               allow_plaintext_auth
//! X: storage                    outcome for the next Submit: ok (default), backpressure, storage
//! C: EHLO client.example        client line; CRLF is appended
//! C~ a\nb                       raw client bytes with escapes (\r \n \t \\ \" \xHH), no CRLF
//! S: 250 2.0.0 Ok               expected server line (CRLF appended)
//! E: submit ...                 expected event (see `render`)
//! ```
//!
//! AUTH credentials are answered as a directory would: password "password" succeeds for
//! any user, user "locked" is over its failure limit, anything else is invalid.
//!
//! The client bytes are concatenated and fed to the session as a connection driver would,
//! first in one piece, then split at every offset into two reads, then byte by byte. The
//! server output and the event list must be exactly the expected ones every time. Server
//! lines and events are compared as two streams, so their placement in the file is free and
//! is chosen for readability.

use std::collections::VecDeque;
use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use relay::envelope::QueueId;
use relay::smtp::{
    AuthFailure, CloseReason, Credentials, Event, Outbox, Session, SessionConfig, SubmitError,
};

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

struct Transcript {
    config: SessionConfig,
    peer: SocketAddr,
    outcomes: Vec<Result<QueueId, SubmitError>>,
    input: Vec<u8>,
    output: String,
    events: Vec<String>,
}

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
            Some('t') => bytes.push(b'\t'),
            Some('\\') => bytes.push(b'\\'),
            Some('"') => bytes.push(b'"'),
            Some('x') => {
                let hex: String = chars.by_ref().take(2).collect();
                bytes.push(u8::from_str_radix(&hex, 16).expect("\\xHH"));
            }
            other => panic!("bad escape \\{other:?} in {text:?}"),
        }
    }
    bytes
}

fn escape(bytes: &[u8]) -> String {
    let mut text = String::new();
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\r' => text.push_str("\\r"),
                '\n' => text.push_str("\\n"),
                '\t' => text.push_str("\\t"),
                '\\' => text.push_str("\\\\"),
                '"' => text.push_str("\\\""),
                c if c.is_control() => text.push_str(&format!("\\x{:02x}", c as u32)),
                c => text.push(c),
            }
        }
        for b in chunk.invalid() {
            text.push_str(&format!("\\x{b:02x}"));
        }
    }
    text
}

fn parse(path: &Path) -> Transcript {
    let text = fs::read_to_string(path).unwrap();
    let mut transcript = Transcript {
        config: SessionConfig {
            hostname: "mx.test".into(),
            local_domains: vec!["localhost".into(), "example.net".into()],
            ..SessionConfig::default()
        },
        peer: "192.0.2.1:40000".parse().unwrap(),
        outcomes: Vec::new(),
        input: Vec::new(),
        output: String::new(),
        events: Vec::new(),
    };
    for (number, line) in text.lines().enumerate() {
        let at = || format!("{}:{}", path.display(), number + 1);
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (tag, rest) = line.split_at(2.min(line.len()));
        let rest = rest.strip_prefix(' ').unwrap_or(rest);
        match tag {
            "C:" => {
                transcript.input.extend_from_slice(rest.as_bytes());
                transcript.input.extend_from_slice(b"\r\n");
            }
            "C~" => transcript.input.extend_from_slice(&unescape(rest)),
            "S:" => {
                transcript.output.push_str(rest);
                transcript.output.push_str("\r\n");
            }
            "E:" => transcript.events.push(rest.to_owned()),
            "X:" => transcript.outcomes.push(match rest {
                "ok" => Ok(QueueId(0)),
                "backpressure" => Err(SubmitError::Backpressure),
                "storage" => Err(SubmitError::Storage),
                other => panic!("{}: unknown outcome {other}", at()),
            }),
            "O:" => {
                let (key, value) = rest.split_once('=').unwrap_or_else(|| panic!("{}", at()));
                match key {
                    "peer" => transcript.peer = value.parse().unwrap(),
                    "recipients_max" => transcript.config.recipients_max = value.parse().unwrap(),
                    "errors_max" => transcript.config.errors_max = value.parse().unwrap(),
                    "allow_plaintext_auth" => {
                        transcript.config.allow_plaintext_auth = value.parse().unwrap()
                    }
                    "message_size_max" => {
                        transcript.config.message_size_max = value.parse().unwrap()
                    }
                    other => panic!("{}: unknown option {other}", at()),
                }
            }
            other => panic!("{}: unknown tag {other:?}", at()),
        }
    }
    transcript
}

fn render(event: &Event) -> String {
    match event {
        Event::StartTls => "starttls".to_string(),
        Event::Submit(submission) => {
            let recipients: Vec<String> = submission
                .envelope
                .recipients
                .iter()
                .map(|r| format!("<{}>", r.address))
                .collect();
            format!(
                "submit from=<{}> to={} protocol={} body=\"{}\"",
                submission.envelope.reverse_path,
                recipients.join(","),
                submission.origin.protocol,
                escape(&submission.body)
            )
        }
        Event::Rejected(summary) => format!(
            "rejected from=<{}> rcpts={} size={} reply={} {}",
            summary.reverse_path,
            summary.recipients,
            summary.size,
            summary.reply.code(),
            summary
                .reply
                .status()
                .map(|s| s.to_string())
                .unwrap_or_default(),
        ),
        Event::Authenticate(credentials) => format!(
            "authenticate user={} authzid={}",
            credentials.user,
            credentials.authzid.as_deref().unwrap_or("-")
        ),
        Event::CheckRate(client) => format!("check-rate client={client}"),
        Event::Close(reason) => format!(
            "close {}",
            match reason {
                CloseReason::Quit => "quit",
                CloseReason::ShuttingDown => "shutting-down",
                CloseReason::TimedOut => "timed-out",
                CloseReason::TooManyErrors => "too-many-errors",
            }
        ),
    }
}

/// The transcripts' directory (see the module doc).
fn verify(credentials: &Credentials) -> Result<String, AuthFailure> {
    if credentials.user == "locked" {
        Err(AuthFailure::Locked)
    } else if credentials.password.expose() == "password" {
        Ok(credentials.user.clone())
    } else {
        Err(AuthFailure::Invalid)
    }
}

/// Drives a session the way `server::smtp` does; returns (output, rendered events).
fn drive(transcript: &Transcript, reads: &[&[u8]]) -> (String, Vec<String>) {
    let mut out = Outbox::default();
    let config = Arc::new(transcript.config.clone());
    let mut session = Session::new(config, transcript.peer, now(), &mut out);
    let mut outcomes: VecDeque<_> = transcript.outcomes.iter().copied().collect();
    let mut next_id = 0u64;
    let mut buffer = Vec::new();
    let mut output = std::mem::take(&mut out.bytes);
    let mut events = Vec::new();
    for read in reads {
        buffer.extend_from_slice(read);
        loop {
            out.clear();
            let consumed = session.handle_input(&buffer, now(), &mut out);
            buffer.drain(..consumed);
            output.extend_from_slice(&out.bytes);
            let mut again = consumed > 0;
            for event in std::mem::take(&mut out.events) {
                events.push(render(&event));
                if let Event::Authenticate(credentials) = &event {
                    out.clear();
                    session.authenticated(verify(credentials), &mut out);
                    output.extend_from_slice(&out.bytes);
                    events.extend(out.events.iter().map(render));
                    again = true;
                }
                if let Event::Submit(_) = event {
                    next_id += 1;
                    let result = match outcomes.pop_front() {
                        Some(Err(error)) => Err(error),
                        _ => Ok(QueueId(next_id)),
                    };
                    out.clear();
                    session.submitted(result, now(), &mut out);
                    output.extend_from_slice(&out.bytes);
                    events.extend(out.events.iter().map(render));
                    again = true;
                }
            }
            if !again || session.is_closed() {
                break;
            }
        }
    }
    (String::from_utf8_lossy(&output).into_owned(), events)
}

fn check(path: &Path) {
    let transcript = parse(path);
    let name = path.display();
    let (output, events) = drive(&transcript, &[&transcript.input]);
    assert_eq!(output, transcript.output, "{name}: server output");
    assert_eq!(events, transcript.events, "{name}: events");
    let input = &transcript.input;
    for k in 0..=input.len() {
        let (a, b) = input.split_at(k);
        let split = drive(&transcript, &[a, b]);
        assert_eq!(split.0, output, "{name}: output with a split at {k}");
        assert_eq!(split.1, events, "{name}: events with a split at {k}");
    }
    let bytes: Vec<&[u8]> = input.chunks(1).collect();
    assert_eq!(
        drive(&transcript, &bytes),
        (output, events),
        "{name}: byte by byte"
    );
}

#[test]
fn transcripts() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/transcripts");
    let mut paths: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "txt"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 6, "transcripts missing in {}", dir.display());
    for path in paths {
        check(&path);
    }
}
