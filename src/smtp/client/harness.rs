//! Fuzz entry point for the outbound client (a plain function, so `cargo test` runs it over
//! the seed corpus in `fuzz/corpus/smtp_client` even where cargo-fuzz is not installed).
//!
//! The input is what a hostile next hop sends: its first byte chooses the read size, the
//! STARTTLS policy and whether a handshake after STARTTLS succeeds; the rest is the hop's
//! byte stream (after a "successful handshake" it stands for the decrypted stream). The function drives a client as the connection driver
//! does (three messages, then QUIT) and checks the driver contract: consumption never
//! exceeds the input and never stalls on a complete reply line, a partial line stays under
//! the line limit, output per call stays bounded, every `send` gets exactly one
//! `TransactionDone` with one result per recipient, and `Closed` comes exactly once, last.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;

use super::{Client, ClientConfig, ClientEvent, Next, Outgoing, Output, StartTlsPolicy};
use crate::envelope::{BodyType, DsnRet, MailParams, Notify, Recipient};

fn recipient(address: &str, notify: Option<Notify>, orcpt: Option<&str>) -> Recipient {
    Recipient {
        address: address.to_owned(),
        notify,
        orcpt: orcpt.map(str::to_owned),
    }
}

/// The messages the fuzzed client delivers: several recipients (more than one transaction
/// holds), DSN parameters, an 8-bit body with dots to stuff, a UTF-8 recipient.
fn messages() -> VecDeque<Outgoing> {
    let plain = Outgoing {
        reverse_path: "sender@example.org".into(),
        params: MailParams {
            ret: Some(DsnRet::Headers),
            envid: Some("env-1".into()),
            ..MailParams::default()
        },
        recipients: vec![
            recipient(
                "a@example.net",
                Some(Notify::FAILURE),
                Some("rfc822;a@example.net"),
            ),
            recipient("b@example.net", None, None),
            recipient("c@example.net", Some(Notify::NEVER), None),
        ],
        body: Bytes::from_static(b"Subject: hi\r\n\r\n.leading dot\r\n..\r\nend\r\n"),
        eight_bit: false,
    };
    let eight_bit = Outgoing {
        reverse_path: String::new(),
        params: MailParams {
            body: BodyType::EightBitMime,
            ..MailParams::default()
        },
        recipients: vec![recipient("d@example.net", None, None)],
        body: Bytes::from_static(
            "Subject: caf\u{e9}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nna\u{ef}ve\r\n.\r\n"
                .as_bytes(),
        ),
        eight_bit: true,
    };
    let utf8 = Outgoing {
        reverse_path: "s@example.org".into(),
        params: MailParams {
            smtputf8: true,
            ..MailParams::default()
        },
        recipients: vec![
            recipient("j\u{f6}rg@example.net", None, None),
            recipient("e@example.net", None, None),
        ],
        body: Bytes::from_static(b"Subject: x\r\n\r\nx\r\n"),
        eight_bit: false,
    };
    VecDeque::from([plain, eight_bit, utf8])
}

/// Output one call may produce at most: a transaction's commands and a message (the
/// messages above are small), or one QUIT.
const OUTPUT_MAX: usize = 8 * 1024;

struct Checker {
    /// Recipient counts of the messages handed over and not yet reported.
    in_flight: VecDeque<usize>,
    closed: bool,
    /// STARTTLS may be asked for at most once per connection.
    starttls: usize,
}

impl Checker {
    fn events(&mut self, client: &Client, out: &mut Output) {
        assert!(out.bytes.len() <= OUTPUT_MAX, "output grew without bound");
        for event in out.events.drain(..) {
            assert!(!self.closed, "event after Closed: {event:?}");
            match event {
                ClientEvent::Ready => {}
                ClientEvent::StartTls => {
                    self.starttls += 1;
                    assert_eq!(self.starttls, 1, "STARTTLS twice on one connection");
                    assert_eq!(
                        client.next(),
                        Next::StartTls,
                        "StartTls event without the state"
                    );
                }
                ClientEvent::TransactionDone(outcome) => {
                    let expected = self.in_flight.pop_front();
                    assert_eq!(
                        Some(outcome.results.len()),
                        expected,
                        "results per recipient"
                    );
                }
                ClientEvent::Closed(_) => self.closed = true,
            }
        }
        out.bytes.clear();
        assert_eq!(self.closed, client.next() == Next::Done, "Closed iff done");
    }
}

pub fn fuzz(data: &[u8]) {
    let Some((&split, input)) = data.split_first() else {
        return;
    };
    let config = Arc::new(ClientConfig {
        max_recipients_per_transaction: 2,
        // Reachable by a greeting or EHLO that names it: the loop check is fuzzed too.
        own_hostname: Some("own.fuzz".into()),
        ..ClientConfig::default()
    });
    let line_max = config.reply_limits.line_max;
    let policy = match split % 3 {
        0 => StartTlsPolicy::Never,
        1 => StartTlsPolicy::IfOffered,
        _ => StartTlsPolicy::Required,
    };
    let handshake_fails = split & 4 != 0;
    let mut client = Client::with_starttls(config, policy);
    let mut messages = messages();
    let mut checker = Checker {
        in_flight: VecDeque::new(),
        closed: false,
        starttls: 0,
    };
    let mut out = Output::default();
    let mut pending: Vec<u8> = Vec::new();
    let chunk = usize::from(split).max(1);
    'input: for piece in input.chunks(chunk) {
        pending.extend_from_slice(piece);
        loop {
            match client.next() {
                Next::Done => break 'input,
                Next::Send => match messages.pop_front() {
                    Some(message) => {
                        checker.in_flight.push_back(message.recipients.len());
                        assert!(client.send(message, &mut out).is_ok(), "send when idle");
                    }
                    None => client.quit(&mut out),
                },
                Next::StartTls => {
                    assert!(
                        policy != StartTlsPolicy::Never,
                        "STARTTLS against the policy"
                    );
                    // As the driver does: what came before the handshake is dropped.
                    pending.clear();
                    if handshake_fails {
                        client.tls_failed("fuzzed handshake failure", &mut out);
                    } else {
                        client.tls_established(&mut out);
                        assert!(client.is_encrypted());
                    }
                }
                Next::Read(_) => {
                    let n = client.handle_input(&pending, &mut out);
                    assert!(n <= pending.len(), "consumed more than given");
                    pending.drain(..n);
                    let waiting = n == 0 && matches!(client.next(), Next::Read(_));
                    checker.events(&client, &mut out);
                    if waiting {
                        break;
                    }
                    continue;
                }
            }
            checker.events(&client, &mut out);
        }
        if matches!(client.next(), Next::Read(_)) {
            assert!(
                !pending.contains(&b'\n'),
                "a complete reply line was left unconsumed"
            );
            assert!(pending.len() < line_max, "a partial line passed the limit");
        }
    }
    if split % 2 == 0 {
        client.timed_out(&mut out);
    } else {
        client.connection_lost(&mut out);
    }
    checker.events(&client, &mut out);
    assert!(checker.closed, "not closed at the end");
    // Anything still in flight was reported before Closed.
    assert!(
        checker.in_flight.is_empty(),
        "a send without TransactionDone"
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn seed_corpus_runs_clean() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/smtp_client");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).expect("seed corpus") {
            let data = std::fs::read(entry.expect("entry").path()).expect("seed");
            // The first byte chooses the read size: replay each seed with a few of them.
            for split in [1u8, 2, 7, 255] {
                let mut input = data.clone();
                if let Some(first) = input.first_mut() {
                    *first = split;
                }
                super::fuzz(&input);
            }
            seen += 1;
        }
        assert!(seen >= 4, "seed corpus is missing");
    }
}
