//! Fuzz entry point for the SMTP server session (a plain function, so `cargo test` runs it
//! over the seed corpus in `fuzz/corpus/smtp` even where cargo-fuzz is not installed).
//!
//! It drives a session the way the connection driver does (feed, answer submissions, feed the
//! rest) with the input split where its first byte says, and checks the driver's contract:
//! consumption never exceeds the input, never stalls with a complete line pending, and output
//! stays proportional to input.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use super::session::{AuthFailure, Event, Outbox, Session, SessionConfig, SubmitError};
use crate::envelope::QueueId;

pub fn session(data: &[u8]) {
    let Some((&split, input)) = data.split_first() else {
        return;
    };
    // STARTTLS offered on odd splits, so both the 502 and the switch are reached.
    let config = Arc::new(SessionConfig {
        starttls: split & 1 == 1,
        ..SessionConfig::default()
    });
    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let peer: SocketAddr = SocketAddr::from(([192, 0, 2, 1], 40000));
    let mut out = Outbox::default();
    let mut session = Session::new(config, peer, now, &mut out);
    let chunk = usize::from(split).max(1);
    let mut pending: Vec<u8> = Vec::new();
    let mut submitted = 0u64;
    for piece in input.chunks(chunk) {
        pending.extend_from_slice(piece);
        loop {
            if session.is_closed() {
                return;
            }
            let n = session.handle_input(&pending, now, &mut out);
            assert!(n <= pending.len(), "consumed more than given");
            pending.drain(..n);
            let mut answered = false;
            for event in std::mem::take(&mut out.events) {
                if let Event::StartTls = event {
                    assert!(session.awaiting_tls());
                    assert_eq!(session.handle_input(&pending, now, &mut out), 0);
                    // As the driver: plaintext pipelined after STARTTLS is dropped.
                    pending.clear();
                    session.tls_established("TLSv1.3 with cipher FUZZ".into());
                    answered = true;
                }
                if let Event::Authenticate(credentials) = &event {
                    // Offered once TLS is up: alternate success and each failure.
                    let result = match credentials.user.len() % 3 {
                        0 => Ok(credentials.user.clone()),
                        1 => Err(AuthFailure::Invalid),
                        _ => Err(AuthFailure::Locked),
                    };
                    session.authenticated(result, &mut out);
                    answered = true;
                }
                if let Event::Submit(_) = event {
                    submitted += 1;
                    let result = if submitted.is_multiple_of(5) {
                        Err(SubmitError::Storage)
                    } else {
                        Ok(QueueId(submitted))
                    };
                    session.submitted(result, now + Duration::from_secs(1), &mut out);
                    answered = true;
                }
            }
            // Replies are bounded by input (EHLO is the largest answer per line).
            assert!(
                out.bytes.len() <= 64 * input.len() + 1024,
                "output grew without input"
            );
            out.bytes.clear();
            if n == 0 && !answered {
                break;
            }
        }
        // What stays unconsumed is part of one incomplete command line, within its limit.
        if !session.receiving_data()
            && !session.awaiting_submission()
            && !session.awaiting_authentication()
            && !session.awaiting_tls()
        {
            assert!(
                !pending.contains(&b'\n'),
                "a complete line was left unconsumed"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn seed_corpus_runs_clean() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/smtp");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).expect("seed corpus") {
            let data = std::fs::read(entry.expect("entry").path()).expect("seed");
            // The first byte chooses the chunking: replay each seed with a few of them.
            for split in [1u8, 7, 255] {
                let mut input = data.clone();
                if let Some(first) = input.first_mut() {
                    *first = split;
                }
                super::session(&input);
            }
            seen += 1;
        }
        assert!(seen >= 3, "seed corpus is missing");
    }
}
