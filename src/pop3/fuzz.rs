//! Fuzz entry point for the POP3 server session (a plain function, so `cargo test` runs it
//! over the seed corpus in `fuzz/corpus/pop3` even where cargo-fuzz is not installed).
//!
//! It drives a session the way the connection driver does (feed, answer each event, feed the
//! rest) with the input split where its first byte says; the second byte's bits decide which
//! answers fail (wrong password, maildrop in use, unreadable message, failed update), so every
//! answer path is reached. It checks the driver's contract: consumption never exceeds the
//! input, nothing is consumed while an answer is due, a complete line is never left pending,
//! output stays proportional to input plus the messages handed in, and every event comes in a
//! state that expects it.

use std::sync::Arc;

use super::session::{Event, LockResult, MaildropEntry, Outbox, Session, SessionConfig};
use super::stuff;

/// The maildrop every login gets: an empty message, dot-stuffing, bare line ends, no final
/// line end, and a body of lines to cut with TOP.
const MESSAGES: [&[u8]; 5] = [
    b"",
    b"Subject: dots\r\n\r\n.\r\n..\r\n.x\r\n",
    b"Subject: bare\n\nline\rone\nline two",
    b"Subject: top\r\n\r\n1\r\n2\r\n3\r\n4\r\n5\r\n",
    b"no header, no end",
];

pub fn session(data: &[u8]) {
    drive(data);
}

/// Runs one input; returns how many events were answered.
fn drive(data: &[u8]) -> u32 {
    let [split, flags, input @ ..] = data else {
        return 0;
    };
    let config = Arc::new(SessionConfig {
        apop: flags & 0x80 != 0,
        user_command: flags & 0x40 == 0,
        // STLS offered on odd splits, so both paths are reached.
        stls: split & 1 == 1,
        ..SessionConfig::default()
    });
    let mut out = Outbox::default();
    let mut session = Session::new(config, "4242.fuzz", &mut out);
    let mut budget = out.bytes.len() + 1024;
    let chunk = usize::from(*split).max(1);
    let mut pending: Vec<u8> = Vec::new();
    let mut answers = 0u32;
    for piece in input.chunks(chunk) {
        pending.extend_from_slice(piece);
        budget += 64 * piece.len();
        loop {
            // A closed session takes nothing; its last events are still answered below.
            let n = if session.is_closed() {
                0
            } else {
                session.handle_input(&pending, &mut out)
            };
            assert!(n <= pending.len(), "consumed more than given");
            pending.drain(..n);
            let mut answered = false;
            for event in std::mem::take(&mut out.events) {
                assert!(
                    session.awaiting() || matches!(event, Event::Close(_)),
                    "{event:?} without waiting for its answer"
                );
                // Nothing is taken while an answer is due.
                if !pending.is_empty() {
                    assert_eq!(session.handle_input(&pending, &mut out), 0);
                }
                // Bit `answers % 6` of the flags fails this answer.
                let fail = flags & (1 << (answers % 6)) != 0;
                answers += 1;
                match event {
                    Event::Authenticate(credentials) => {
                        let user = (!fail).then(|| credentials.user().to_string());
                        session.authenticated(user, &mut out);
                    }
                    Event::Lock { .. } => {
                        let result = if fail {
                            LockResult::InUse
                        } else {
                            LockResult::Locked(maildrop())
                        };
                        session.locked(result, &mut out);
                    }
                    Event::Retrieve { index, .. } => {
                        let message = MESSAGES.get(index).copied();
                        assert!(
                            message.is_some(),
                            "RETR of entry {index}: not in the maildrop"
                        );
                        let message = message.filter(|_| !fail).ok_or(super::session::Unavailable);
                        // RETR's output: at most the message stuffed, and its status lines.
                        budget += 2 * message.map_or(0, <[u8]>::len) + 256;
                        // Both ways of answering, by the split's second bit.
                        if split & 2 == 0 {
                            session.retrieved(message, &mut out);
                        } else {
                            session.retrieved_with(&mut out, |buf| {
                                buf.extend_from_slice(message?);
                                Ok(())
                            });
                        }
                    }
                    Event::Update { deleted } => {
                        assert!(
                            deleted.windows(2).all(|w| w[0] < w[1]),
                            "deletions not ascending: {deleted:?}"
                        );
                        assert!(deleted.iter().all(|&i| i < MESSAGES.len()));
                        session.updated(
                            if fail {
                                Err(super::session::NotStored)
                            } else {
                                Ok(())
                            },
                            &mut out,
                        );
                    }
                    Event::StartTls => {
                        // As the driver: plaintext pipelined after STLS is dropped.
                        pending.clear();
                        session.tls_established();
                        assert!(session.is_tls());
                    }
                    Event::Close(_) => {
                        assert!(session.is_closed(), "Close from a live session");
                        return answers;
                    }
                }
                answered = true;
            }
            assert!(
                out.bytes.len() <= budget,
                "output grew without input: {} > {budget}",
                out.bytes.len()
            );
            budget -= out.bytes.len();
            out.bytes.clear();
            if n == 0 && !answered {
                if session.is_closed() {
                    return answers;
                }
                break;
            }
        }
        // What stays unconsumed is part of one incomplete command line (POP3 also ends a
        // line at a bare LF).
        if session.wants_input() {
            assert!(
                !pending.contains(&b'\n'),
                "a complete line was left unconsumed"
            );
        }
    }
    answers
}

fn maildrop() -> Vec<MaildropEntry> {
    MESSAGES
        .iter()
        .enumerate()
        .map(|(i, message)| MaildropEntry {
            uid: format!("uid-{i}"),
            size: stuff::retr_size(message),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn seed_corpus_runs_clean() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/pop3");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).expect("seed corpus") {
            let data = std::fs::read(entry.expect("entry").path()).expect("seed");
            // The first byte chooses the chunking, the second which answers fail: replay
            // each seed with a few of each.
            for split in [1u8, 7, 255] {
                for flags in [0u8, 0x3f, 0x80, 0x55] {
                    let mut input = data.clone();
                    if input.len() >= 2 {
                        input[0] = split;
                        input[1] = flags;
                    }
                    super::session(&input);
                }
            }
            seen += 1;
        }
        assert!(seen >= 3, "seed corpus is missing");
    }

    #[test]
    fn the_driver_answers_every_kind_of_event() {
        // Authenticate, Lock, Retrieve twice, Update, Close: the harness reaches every
        // answer, so the fuzzer does too.
        let mut input = vec![255u8, 0];
        input.extend_from_slice(
            b"CAPA\r\nUSER one\r\nPASS pw\r\nSTAT\r\nRETR 2\r\nTOP 4 1\r\nDELE 1\r\nQUIT\r\n",
        );
        assert_eq!(super::drive(&input), 6);
        // A failed login: the rest is refused until QUIT closes (Authenticate, Close).
        input[1] = 0x01;
        assert_eq!(super::drive(&input), 2);
    }
}
