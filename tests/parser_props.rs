//! Every parser entry point of the protocol cores (`smtp`, `pop3`, `mime`, `proto`) walked
//! with random UTF-8, random bytes and random mixes of protocol tokens and multi-byte
//! characters: none may panic (`MAIL FROM:<a@[abcd€]>` once panicked by slicing a
//! `str` inside a character, before login).
//!
//! The inputs are biased towards syntax (verbs, brackets, `@`, `IPv6:` tags, `=?`, `--`)
//! with non-ASCII characters at every position, because uniform random text almost never
//! reaches the code behind a `<`, `@[` or `=?` where character boundaries matter. The
//! sessions are driven the way their connection drivers drive them, answering every event,
//! so the parsers behind greeting, transaction and authentication states are reached.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use proptest::prelude::*;
use relay::envelope::QueueId;
use relay::mime;
use relay::pop3;
use relay::proto::{line, sasl};
use relay::smtp;

/// Tokens of all four protocols plus characters of 2, 3 and 4 UTF-8 octets.
const TOKENS: &[&str] = &[
    "\r\n",
    "\n",
    "\r",
    " ",
    ":",
    "<",
    ">",
    "@",
    "[",
    "]",
    ".",
    "=",
    "\"",
    "\\",
    ",",
    "*",
    "EHLO x",
    "HELO x",
    "MAIL FROM:",
    "RCPT TO:",
    "DATA",
    "BDAT 3",
    "BDAT 0 LAST",
    "AUTH PLAIN ",
    "AUTH LOGIN",
    "STARTTLS",
    "RSET",
    "NOOP",
    "VRFY ",
    "QUIT",
    "SIZE=",
    "BODY=8BITMIME",
    "SMTPUTF8",
    "RET=HDRS",
    "ENVID=",
    "NOTIFY=SUCCESS,FAILURE",
    "ORCPT=rfc822;",
    "+2B",
    "IPv6:",
    "ipv6:",
    "IPv6",
    "::1",
    "192.0.2.1",
    "Postmaster",
    "a@b.example",
    "USER ",
    "PASS ",
    "APOP ",
    "STAT",
    "LIST ",
    "RETR ",
    "DELE ",
    "TOP 1 ",
    "UIDL",
    "CAPA",
    "STLS",
    "AUTH ",
    "AHVzZXIAcGFzcw==",
    "250-",
    "250 ",
    "220 ",
    "5.1.1 ",
    "Content-Type: multipart/mixed; boundary=",
    "Content-Type: text/plain; charset*=utf-8''",
    "Content-Transfer-Encoding: base64",
    "Content-Transfer-Encoding: quoted-printable",
    "Content-Disposition: attachment; filename*0*=",
    "--",
    "=?utf-8?q?",
    "=?utf-8?b?",
    "?=",
    "%C3",
    "=C3=",
    "é",
    "€",
    "𝄞",
    "\u{0}",
    "\u{7f}",
    "\u{85}",
    "\u{200b}",
];

/// Random UTF-8: arbitrary characters, tokens glued together, or both interleaved.
fn utf8_text() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        3 => proptest::sample::select(TOKENS).prop_map(str::to_string),
        1 => any::<char>().prop_map(String::from),
        1 => "[a-zA-Z0-9]{1,6}",
    ];
    prop_oneof![
        any::<String>(),
        proptest::collection::vec(token, 0..48).prop_map(|parts| parts.concat()),
        // The address literals that once panicked and their relatives: a character of any width
        // at every offset of the literal.
        (
            "(MAIL FROM:|RCPT TO:|VRFY )?",
            "[a-z]{0,3}",
            ".{0,8}",
            ".{0,4}"
        )
            .prop_map(|(verb, local, a, b)| format!("{verb}<{local}@[{a}{b}]>\r\n")),
        ("[a-zA-Z0-9]{0,6}", ".{0,3}", ".{0,6}")
            .prop_map(|(a, b, c)| format!("MAIL FROM:<x@[{a}{b}:{c}]> SIZE=1\r\n")),
    ]
}

/// Bytes: random, or random UTF-8 with a few bytes flipped (so truncated and invalid
/// sequences sit next to syntax).
fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..400),
        (
            utf8_text(),
            proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4)
        )
            .prop_map(|(text, flips)| {
                let mut bytes = text.into_bytes();
                for (at, byte) in flips {
                    if !bytes.is_empty() {
                        let at = at % bytes.len();
                        bytes[at] = byte;
                    }
                }
                bytes
            }),
        utf8_text().prop_map(String::into_bytes),
    ]
}

fn smtp_paths(text: &str) {
    let _ = smtp::Mailbox::parse(text);
    let _ = smtp::ReversePath::parse_prefix(text);
    let _ = smtp::ForwardPath::parse_prefix(text);
    let _ = smtp::address::is_domain(text);
    let _ = smtp::address::is_address_literal(text);
    // Literals are also reached from the text between the brackets.
    let _ = smtp::address::is_address_literal(&format!("[{text}]"));
    let _ = smtp::params::parse_mail(text);
    let _ = smtp::params::parse_rcpt(text);
    let _ = smtp::params::xtext_decode(text);
}

fn smtp_bytes(bytes: &[u8]) {
    let _ = smtp::parse(bytes);
    let _ = smtp::Reply::parse_line(bytes);
    if let Ok(Some((reply, _))) = smtp::Reply::parse(bytes) {
        // A next hop's reply is kept cut to a size: at a character boundary.
        for max in [0, 1, 2, 3, 4, 5, 6, 7, 16] {
            let mut cut = reply.clone();
            cut.truncate_text(max);
        }
    }
    let _ = smtp::reply::parse_reply(bytes, &smtp::reply::ReplyLimits::default());
    let mut out = Vec::new();
    smtp::client::dot_stuff(bytes, &mut out);
    for limits in [
        smtp::BodyLimits {
            size_max: 64,
            line_max: 16,
        },
        smtp::BodyLimits {
            size_max: 1 << 20,
            line_max: 1000,
        },
    ] {
        let mut dot = smtp::BodyReceiver::dot(limits, None, None);
        let (n, _) = dot.receive(bytes);
        assert!(n <= bytes.len());
        let _ = dot.finish();
        let mut chunks = smtp::BodyReceiver::chunks(limits, true, Some(bytes.len() as u64), None);
        let (n, _) = chunks.receive(bytes);
        assert!(n <= bytes.len());
        let _ = chunks.finish();
    }
}

/// The SMTP server session as `server::smtp` drives it: every event answered, successes and
/// failures alternating, the input split where `split` says.
fn smtp_session(input: &[u8], split: usize, tls: bool) {
    let config = Arc::new(smtp::SessionConfig {
        starttls: !tls,
        ..smtp::SessionConfig::default()
    });
    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let peer = SocketAddr::from(([192, 0, 2, 1], 40000));
    let mut out = smtp::Outbox::default();
    let mut session = smtp::Session::new(config, peer, now, &mut out);
    if tls {
        session.tls_established("TLSv1.3 with cipher PROPTEST".into());
    }
    let mut pending = Vec::new();
    let mut answers = 0u64;
    for piece in input.chunks(split.max(1)) {
        pending.extend_from_slice(piece);
        // Each round consumes input or answers an event; bounded all the same.
        for _ in 0..10_000 {
            if session.is_closed() {
                return;
            }
            let n = session.handle_input(&pending, now, &mut out);
            assert!(n <= pending.len(), "consumed more than given");
            pending.drain(..n);
            let mut answered = false;
            for event in std::mem::take(&mut out.events) {
                answers += 1;
                match event {
                    smtp::Event::StartTls => {
                        pending.clear();
                        session.tls_established("TLSv1.3 with cipher PROPTEST".into());
                    }
                    smtp::Event::Authenticate(credentials) => {
                        let result = if answers.is_multiple_of(2) {
                            Ok(credentials.user.clone())
                        } else {
                            Err(smtp::AuthFailure::Invalid)
                        };
                        session.authenticated(result, &mut out);
                    }
                    smtp::Event::Submit(_) => {
                        let result = if answers.is_multiple_of(3) {
                            Err(smtp::SubmitError::Storage)
                        } else {
                            Ok(QueueId(answers))
                        };
                        session.submitted(result, now, &mut out);
                    }
                    _ => continue,
                }
                answered = true;
            }
            out.bytes.clear();
            if n == 0 && !answered {
                break;
            }
        }
    }
}

/// The outbound client reading whatever a next hop sends.
fn smtp_client(input: &[u8], split: usize) {
    let mut client = smtp::client::Client::new(Arc::new(smtp::client::ClientConfig::default()));
    let mut out = smtp::client::Output::default();
    let mut pending = Vec::new();
    for piece in input.chunks(split.max(1)) {
        pending.extend_from_slice(piece);
        if client.is_closed() {
            return;
        }
        let n = client.handle_input(&pending, &mut out);
        assert!(n <= pending.len(), "consumed more than given");
        pending.drain(..n);
        out.clear();
    }
}

fn pop3_bytes(bytes: &[u8]) {
    let _ = pop3::parse(bytes);
    let _ = pop3::retr_size(bytes);
    let mut out = Vec::new();
    pop3::stuff(bytes, &mut out);
    for lines in [0, 1, 3] {
        let _ = pop3::top(bytes, lines);
    }
}

/// The POP3 server session as `server::pop3` drives it, with a maildrop of the input itself.
fn pop3_session(input: &[u8], split: usize, fail: bool) {
    let config = Arc::new(pop3::SessionConfig {
        apop: true,
        ..pop3::SessionConfig::default()
    });
    let mut out = pop3::Outbox::default();
    let mut session = pop3::Session::new(config, "1.proptest", &mut out);
    let messages: [&[u8]; 2] = [input, b"Subject: x\r\n\r\n.\r\n"];
    let mut pending = Vec::new();
    for piece in input.chunks(split.max(1)) {
        pending.extend_from_slice(piece);
        for _ in 0..10_000 {
            let n = if session.is_closed() {
                0
            } else {
                session.handle_input(&pending, &mut out)
            };
            assert!(n <= pending.len(), "consumed more than given");
            pending.drain(..n);
            let mut answered = false;
            for event in std::mem::take(&mut out.events) {
                match event {
                    pop3::Event::Authenticate(credentials) => {
                        let user = (!fail).then(|| credentials.user().to_string());
                        session.authenticated(user, &mut out);
                    }
                    pop3::Event::Lock { .. } => {
                        let maildrop = messages
                            .iter()
                            .enumerate()
                            .map(|(i, m)| pop3::MaildropEntry {
                                uid: format!("uid-{i}"),
                                size: pop3::retr_size(m),
                            })
                            .collect();
                        session.locked(pop3::LockResult::Locked(maildrop), &mut out);
                    }
                    pop3::Event::Retrieve { index, .. } => {
                        let message = messages.get(index).copied().ok_or(pop3::Unavailable);
                        session.retrieved(message, &mut out);
                    }
                    pop3::Event::Update { .. } => {
                        let result = if fail { Err(pop3::NotStored) } else { Ok(()) };
                        session.updated(result, &mut out);
                    }
                    pop3::Event::StartTls => {
                        pending.clear();
                        session.tls_established();
                    }
                    pop3::Event::Close(_) => return,
                }
                answered = true;
            }
            out.bytes.clear();
            if n == 0 && !answered {
                break;
            }
        }
    }
}

fn mime_bytes(bytes: &[u8]) {
    let limits = mime::Limits {
        max_depth: 8,
        max_parts: 64,
        max_header_bytes: 4096,
        max_header_fields: 64,
    };
    if let Ok(message) = mime::parse(bytes, &limits) {
        for (i, part) in message.parts.iter().enumerate() {
            let _ = part.filename();
            let _ = part.is_attachment();
            let _ = message.decoded_lenient(i);
            for (_, value) in message.headers(i) {
                let _ = mime::header::display_value(value);
            }
        }
    }
    let _ = mime::ContentType::parse(bytes);
    let _ = mime::TransferEncoding::parse(bytes);
    let _ = mime::Disposition::parse(bytes);
    let _ = mime::header::display_value(bytes);
    let _ = mime::encoded_word::decode(bytes);
    let _ = mime::base64::decode(bytes);
    let _ = mime::base64::decode_lenient(bytes);
    let _ = mime::qp::decode(bytes);
    let _ = mime::downgrade(bytes, &limits);
    let _ = mime::Policy {
        max_parts: 64,
        max_nesting: 8,
        blocked_extensions: vec!["exe".into()],
        blocked_types: vec!["audio/*".into()],
    }
    .check(bytes);
}

fn mime_text(text: &str) {
    let _ = mime::encoded_word::encode_utf8(text);
    let _ = mime::policy::extension_of(text);
}

fn proto_bytes(bytes: &[u8]) {
    for max in [1, 8, 255, 512] {
        let _ = line::frame(bytes, max);
    }
    let _ = sasl::decode_base64(bytes);
    let _ = sasl::decode_plain(bytes);
}

fn every_parser(bytes: &[u8], split: usize, flag: bool) {
    if let Ok(text) = std::str::from_utf8(bytes) {
        smtp_paths(text);
        mime_text(text);
        // Each line on its own too: the paths follow `FROM:` / `TO:` in a command line.
        for line in text.split("\r\n") {
            smtp_paths(line);
            for prefix in ["FROM:", "TO:"] {
                if let Some(rest) = line.find(prefix).map(|i| &line[i + prefix.len()..]) {
                    smtp_paths(rest);
                }
            }
        }
    }
    smtp_bytes(bytes);
    for line in bytes.split(|&b| b == b'\n') {
        smtp_bytes(line);
        pop3_bytes(line);
    }
    pop3_bytes(bytes);
    mime_bytes(bytes);
    proto_bytes(bytes);
    // Sessions see the input as a client would send it: with and without a greeting first.
    let mut greeted = b"EHLO proptest.example\r\n".to_vec();
    greeted.extend_from_slice(bytes);
    for input in [bytes, &greeted[..]] {
        smtp_session(input, split, flag);
        smtp_client(input, split);
        pop3_session(input, split, flag);
    }
    let mut logged_in = b"USER u\r\nPASS p\r\n".to_vec();
    logged_in.extend_from_slice(bytes);
    pop3_session(&logged_in, split, false);
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 2048,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_utf8_never_panics(text in utf8_text(), split in 1usize..64, flag in any::<bool>()) {
        every_parser(text.as_bytes(), split, flag);
    }

    #[test]
    fn random_bytes_never_panic(bytes in bytes(), split in 1usize..64, flag in any::<bool>()) {
        every_parser(&bytes, split, flag);
    }
}

/// The two commands that once panicked and their neighbours, every split, every entry point.
#[test]
fn non_ascii_address_literals_never_panic() {
    for line in [
        "MAIL FROM:<a@[abcd€]>\r\n",
        "RCPT TO:<x@[IPv6€:1]>\r\n",
        "MAIL FROM:<a@[IPv€]>\r\n",
        "MAIL FROM:<a@[€]>\r\n",
        "RCPT TO:<x@[IPv6:€]>\r\n",
        "RCPT TO:<x@[tæg:1]>\r\n",
        "VRFY <x@[IPv6𝄞:1]>\r\n",
    ] {
        for split in [1, 3, 64] {
            every_parser(line.as_bytes(), split, false);
            every_parser(line.as_bytes(), split, true);
        }
    }
}
