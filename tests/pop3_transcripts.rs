//! Transcript tests for the POP3 server session (docs/ARCHITECTURE.md §11).
//!
//! Each `tests/pop3_transcripts/*.txt` holds a conversation with a scripted driver that
//! answers the session's events from a fake maildrop:
//!
//! ```text
//! # comment
//! O: apop=true                  options: apop, user_command, nonce
//! U: alice secret               a user and its password; `U: alice secret apop=<hex>` also
//!                               accepts that APOP digest
//! M: alice 00000000000000A1 Subject: x\r\n\r\nbody\r\n
//!                               a message in alice's maildrop: uid, escaped bytes
//! X: lock in-use                outcome of the next lock: ok (default), in-use, unavailable;
//! X: retrieve fail              of the next retrieve: ok (default), fail;
//! X: update fail                of the next update: ok (default), fail
//! C: USER alice                 client line; CRLF is appended
//! C~ a\nb                       raw client bytes with escapes (\r \n \t \\ \" \xHH), no CRLF
//! S: +OK send PASS              expected server line (CRLF appended)
//! S~ ..x\r\n                    expected raw server bytes with escapes
//! E: lock alice                 expected event (see `render`)
//! ```
//!
//! The client bytes are concatenated and fed to the session as a connection driver would,
//! first in one piece, then split at every offset into two reads, then byte by byte. The
//! server output and the event list must be exactly the expected ones every time. Server
//! lines and events are compared as two streams, so their placement in the file is free and
//! is chosen for readability. Message sizes in the maildrop come from
//! `relay::pop3::retr_size`; the transcripts spell the expected numbers out.

use std::collections::{BTreeMap, VecDeque};
use std::fs;
use std::path::Path;
use std::sync::Arc;

use relay::pop3::{
    retr_size, CloseReason, Credentials, Event, LockResult, MaildropEntry, Outbox, Session,
    SessionConfig,
};

#[derive(Default)]
struct User {
    password: String,
    apop_digest: Option<String>,
    /// (uid, bytes)
    messages: Vec<(String, Vec<u8>)>,
}

#[derive(Clone, Copy)]
enum Outcome {
    Lock(LockOutcome),
    Retrieve(bool),
    Update(bool),
}

#[derive(Clone, Copy)]
enum LockOutcome {
    Ok,
    InUse,
    Unavailable,
}

struct Transcript {
    config: SessionConfig,
    nonce: String,
    users: BTreeMap<String, User>,
    outcomes: Vec<Outcome>,
    input: Vec<u8>,
    output: Vec<u8>,
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

fn parse(path: &Path) -> Transcript {
    let text = fs::read_to_string(path).unwrap();
    let mut transcript = Transcript {
        config: SessionConfig {
            hostname: "pop.test".into(),
            apop: false,
            user_command: true,
            stls: false,
        },
        nonce: "1896.697170952".into(),
        users: BTreeMap::new(),
        outcomes: Vec::new(),
        input: Vec::new(),
        output: Vec::new(),
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
                transcript.output.extend_from_slice(rest.as_bytes());
                transcript.output.extend_from_slice(b"\r\n");
            }
            "S~" => transcript.output.extend_from_slice(&unescape(rest)),
            "E:" => transcript.events.push(rest.to_owned()),
            "U:" => {
                let mut words = rest.split(' ');
                let name = words
                    .next()
                    .unwrap_or_else(|| panic!("{}", at()))
                    .to_owned();
                let user = transcript.users.entry(name).or_default();
                user.password = words.next().unwrap_or_else(|| panic!("{}", at())).into();
                user.apop_digest = words
                    .next()
                    .map(|w| {
                        w.strip_prefix("apop=")
                            .unwrap_or_else(|| panic!("{}", at()))
                    })
                    .map(str::to_owned);
            }
            "M:" => {
                let mut words = rest.splitn(3, ' ');
                let (Some(name), Some(uid), Some(body)) =
                    (words.next(), words.next(), words.next())
                else {
                    panic!("{}: M: user uid body", at());
                };
                let user = transcript.users.entry(name.to_owned()).or_default();
                user.messages.push((uid.to_owned(), unescape(body)));
            }
            "X:" => transcript.outcomes.push(match rest {
                "lock ok" => Outcome::Lock(LockOutcome::Ok),
                "lock in-use" => Outcome::Lock(LockOutcome::InUse),
                "lock unavailable" => Outcome::Lock(LockOutcome::Unavailable),
                "retrieve ok" => Outcome::Retrieve(true),
                "retrieve fail" => Outcome::Retrieve(false),
                "update ok" => Outcome::Update(true),
                "update fail" => Outcome::Update(false),
                other => panic!("{}: unknown outcome {other}", at()),
            }),
            "O:" => {
                let (key, value) = rest.split_once('=').unwrap_or_else(|| panic!("{}", at()));
                match key {
                    "apop" => transcript.config.apop = value.parse().unwrap(),
                    "user_command" => transcript.config.user_command = value.parse().unwrap(),
                    "nonce" => transcript.nonce = value.to_owned(),
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
        Event::Authenticate(Credentials::Plain { authzid, user, .. }) => match authzid {
            Some(authzid) => format!("authenticate plain user={user} authzid={authzid}"),
            None => format!("authenticate plain user={user}"),
        },
        Event::Authenticate(Credentials::Apop {
            user, timestamp, ..
        }) => format!("authenticate apop user={user} timestamp={timestamp}"),
        Event::Lock { user } => format!("lock {user}"),
        Event::StartTls => "starttls".to_string(),
        Event::Retrieve { index, top_lines } => match top_lines {
            Some(lines) => format!("retrieve index={index} top={lines}"),
            None => format!("retrieve index={index}"),
        },
        Event::Update { deleted } => {
            let list: Vec<String> = deleted.iter().map(usize::to_string).collect();
            format!("update {}", list.join(","))
        }
        Event::Close(reason) => format!(
            "close {}",
            match reason {
                CloseReason::Quit => "quit",
                CloseReason::TimedOut => "timed-out",
                CloseReason::TooManyErrors => "too-many-errors",
                CloseReason::ShuttingDown => "shutting-down",
                CloseReason::AuthFailuresExceeded => "auth-failures-exceeded",
            }
        ),
    }
}

/// The scripted driver: the fake maildrop, its lock and the outcome queue.
struct Driver<'a> {
    transcript: &'a Transcript,
    outcomes: VecDeque<Outcome>,
    user: Option<String>,
}

impl Driver<'_> {
    fn next_outcome(&mut self, matches: impl Fn(&Outcome) -> bool) -> Option<Outcome> {
        let position = self.outcomes.iter().position(matches)?;
        self.outcomes.remove(position)
    }

    fn answer(&mut self, session: &mut Session, event: &Event, out: &mut Outbox) {
        let users = &self.transcript.users;
        match event {
            Event::StartTls => session.tls_established(),
            Event::Authenticate(credentials) => {
                let ok = match credentials {
                    Credentials::Plain {
                        authzid,
                        user,
                        password,
                    } => {
                        users.get(user).is_some_and(|u| &u.password == password)
                            && authzid.as_ref().is_none_or(|z| z == user)
                    }
                    Credentials::Apop { user, digest, .. } => users
                        .get(user)
                        .and_then(|u| u.apop_digest.as_ref())
                        .is_some_and(|d| d == digest),
                };
                session.authenticated(ok.then(|| credentials.user().to_owned()), out);
            }
            Event::Lock { user } => {
                let outcome = self.next_outcome(|o| matches!(o, Outcome::Lock(_)));
                let result = match outcome {
                    Some(Outcome::Lock(LockOutcome::InUse)) => LockResult::InUse,
                    Some(Outcome::Lock(LockOutcome::Unavailable)) => LockResult::Unavailable,
                    _ => {
                        self.user = Some(user.clone());
                        let messages = users.get(user).map_or(&[][..], |u| &u.messages);
                        LockResult::Locked(
                            messages
                                .iter()
                                .map(|(uid, bytes)| MaildropEntry {
                                    uid: uid.clone(),
                                    size: retr_size(bytes),
                                })
                                .collect(),
                        )
                    }
                };
                session.locked(result, out);
            }
            Event::Retrieve { index, .. } => {
                let fail = matches!(
                    self.next_outcome(|o| matches!(o, Outcome::Retrieve(_))),
                    Some(Outcome::Retrieve(false))
                );
                let user = self.user.as_ref().expect("retrieve without lock");
                let message = &users[user].messages[*index].1;
                session.retrieved(
                    if fail {
                        Err(relay::pop3::Unavailable)
                    } else {
                        Ok(message)
                    },
                    out,
                );
            }
            Event::Update { .. } => {
                let fail = matches!(
                    self.next_outcome(|o| matches!(o, Outcome::Update(_))),
                    Some(Outcome::Update(false))
                );
                session.updated(
                    if fail {
                        Err(relay::pop3::NotStored)
                    } else {
                        Ok(())
                    },
                    out,
                );
            }
            Event::Close(_) => {}
        }
    }
}

/// Drives a session the way `server::pop3` does; returns (output, rendered events).
fn drive(transcript: &Transcript, reads: &[&[u8]]) -> (Vec<u8>, Vec<String>) {
    let mut out = Outbox::default();
    let mut session = Session::new(
        Arc::new(transcript.config.clone()),
        &transcript.nonce,
        &mut out,
    );
    let mut driver = Driver {
        transcript,
        outcomes: transcript.outcomes.iter().copied().collect(),
        user: None,
    };
    let mut buffer = Vec::new();
    let mut output = std::mem::take(&mut out.bytes);
    let mut events = Vec::new();
    for read in reads {
        buffer.extend_from_slice(read);
        loop {
            out.clear();
            let consumed = session.handle_input(&buffer, &mut out);
            buffer.drain(..consumed);
            output.extend_from_slice(&out.bytes);
            let mut again = consumed > 0;
            let mut pending: VecDeque<Event> = std::mem::take(&mut out.events).into();
            while let Some(event) = pending.pop_front() {
                events.push(render(&event));
                if !matches!(event, Event::Close(_)) {
                    out.clear();
                    driver.answer(&mut session, &event, &mut out);
                    output.extend_from_slice(&out.bytes);
                    pending.extend(std::mem::take(&mut out.events));
                    again = true;
                }
            }
            assert!(!session.awaiting(), "an event was left unanswered");
            if !again || session.is_closed() {
                break;
            }
        }
    }
    (output, events)
}

fn check(path: &Path) {
    let transcript = parse(path);
    let name = path.display();
    let (output, events) = drive(&transcript, &[&transcript.input]);
    assert_eq!(
        String::from_utf8_lossy(&output),
        String::from_utf8_lossy(&transcript.output),
        "{name}: server output"
    );
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
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pop3_transcripts");
    let mut paths: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "txt"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 8, "transcripts missing in {}", dir.display());
    for path in paths {
        check(&path);
    }
}
