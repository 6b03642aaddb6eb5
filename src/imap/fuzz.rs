//! Fuzz entry point for the IMAP server session (a plain function, so `cargo test` runs it
//! over the seed corpus in `fuzz/corpus/imap`).
//!
//! It drives a session as the driver does (feed, answer each event from an in-memory store,
//! feed the rest) with the input split where its first byte says; the second byte's bits
//! decide whether passwords are accepted, the store fails, the connection is TLS and
//! plaintext login is allowed. It checks the driver's contract: consumption never exceeds
//! the input, nothing is consumed while an answer is due, and the output stays within a
//! bound of the input plus the stored messages.

use std::sync::Arc;

use super::frame::Limits;
use super::session::{Event, Outbox, Session, SessionConfig};
use super::store::memory::Memory;
use super::store::{serve, system_flag, Flags, SpecialUse};

pub fn session(data: &[u8]) {
    drive(data);
}

/// Runs one input; returns the output length.
fn drive(data: &[u8]) -> usize {
    let [split, flags, input @ ..] = data else {
        return 0;
    };
    let config = Arc::new(SessionConfig {
        hostname: "fuzz".into(),
        limits: Limits {
            line_max: 512,
            literal_max: 512,
            command_max: 2048,
            append_max: 4096,
        },
        plaintext_auth: flags & 0x08 != 0,
        starttls: flags & 0x10 != 0,
    });
    let accept = flags & 0x01 == 0;
    let mut store = Memory::default();
    store.broken = flags & 0x02 != 0;
    store.deliver("INBOX", b"Subject: a\r\n\r\nbody\r\n", Flags::default());
    let seen = Flags {
        system: system_flag::SEEN,
        keywords: vec!["$x".into()],
    };
    store.deliver("INBOX", b"no header", seen);
    store.add_folder("Sent", Some(SpecialUse::Sent));
    let mut out = Outbox::default();
    let mut session = Session::new(config, flags & 0x04 != 0, &mut out);
    let cut = usize::from(*split).min(input.len());
    let mut produced = out.bytes.len();
    let mut pending: Vec<u8> = Vec::new();
    for piece in [&input[..cut], &input[cut..]] {
        pending.extend_from_slice(piece);
        loop {
            let n = session.feed(&pending, &mut out);
            assert!(n <= pending.len(), "consumed more than given");
            pending.drain(..n);
            if out.events.is_empty() {
                break;
            }
            while !out.events.is_empty() {
                produced += out.bytes.len();
                out.bytes.clear();
                for event in std::mem::take(&mut out.events) {
                    assert!(
                        session.awaiting() || matches!(event, Event::Close(_)),
                        "an event without a wait: {event:?}"
                    );
                    assert_eq!(session.feed(b"x NOOP\r\n", &mut Outbox::default()), 0);
                    match event {
                        Event::Authenticate(_) => {
                            let _ = session.authenticated(accept, &mut out);
                        }
                        Event::StartTls => {
                            let _ = session.tls_established();
                        }
                        Event::Store(request) => {
                            let answer = serve(&mut store, &request);
                            let _ = session.answer(answer, &mut out);
                        }
                        Event::Close(_) => {}
                    }
                }
            }
            if session.is_closed() {
                break;
            }
        }
        produced += out.bytes.len();
        out.bytes.clear();
    }
    // Every command costs a bounded amount of output besides message contents: the largest
    // are SELECT and LIST (well under 1 KiB), and FETCH repeats a message per item.
    assert!(
        produced <= 4096 + input.len() * 4096,
        "output {produced} for {}",
        input.len()
    );
    produced
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_corpus_runs_clean() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/imap");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).expect("seed corpus") {
            let path = entry.expect("entry").path();
            let data = std::fs::read(&path).expect("seed");
            for split in [0u8, 1, 7, 30, 255] {
                for flags in [0u8, 0x01, 0x02, 0x04, 0x08, 0x1c] {
                    let mut input = vec![split, flags];
                    input.extend_from_slice(&data);
                    drive(&input);
                }
            }
            seen += 1;
        }
        assert!(seen >= 3, "seed corpus is missing");
    }

    #[test]
    fn a_logged_in_seed_reaches_the_store() {
        let mut input = vec![0u8, 0x08];
        input.extend_from_slice(b"a LOGIN u p\r\nb SELECT INBOX\r\nc FETCH 1:* (BODY[] FLAGS)\r\n");
        let out = drive(&input);
        assert!(out > 600, "{out}");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            drive(&data);
        }

        #[test]
        fn command_soup_never_panics(
            split in 0u8..=255,
            flags in 0u8..32,
            words in proptest::collection::vec(proptest::sample::select(vec![
                "a ", "LOGIN u p", "SELECT INBOX", "EXAMINE Sent", "FETCH ", "UID ", "1:*", "*",
                "(FLAGS BODY[] BODY.PEEK[HEADER] RFC822.SIZE MODSEQ)", "STORE 1 +FLAGS (\\Deleted)",
                "EXPUNGE", "MOVE 1 Sent", "COPY 1:2 Sent", "APPEND INBOX {3+}\r\nabc", "{5}\r\n",
                "IDLE", "DONE", "SEARCH ALL", "ENABLE IMAP4rev2", "LIST \"\" *", "STATUS INBOX (MESSAGES)",
                "AUTHENTICATE PLAIN", "AGFsaWNlAHNlY3JldA==", "*", "STARTTLS", "CLOSE", "\r\n", " ",
                "(UNCHANGEDSINCE 1)", "NOOP", "LOGOUT", "RETURN (SUBSCRIBED)", "CREATE x", "RENAME x y",
            ]), 0..40),
        ) {
            let mut input = vec![split, flags];
            for w in words {
                input.extend_from_slice(w.as_bytes());
            }
            drive(&input);
        }
    }
}
