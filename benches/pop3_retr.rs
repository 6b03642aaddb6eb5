//! POP3 RETR path: session + byte-stuffing of a 10 KB message (msgs/s and MB/s,
//! before the load generator's POP3 mode exists).
//!
//! - `pop3_retr/retr_10k`: one `RETR 1` through `handle_input`, the `Retrieve` event answered
//!   with the stored bytes, the stuffed response encoded (bytes = message size);
//! - `pop3_retr/retr_10k_into_output`: the same answered the way the server does, the
//!   message copied straight into the output (as the spool's pread does) and stuffed there;
//! - `pop3_retr/stuff_10k`: byte-stuffing alone; `stuff_in_place_10k`: in place;
//! - `pop3_fetch/fetch_and_delete_100`: a whole pipelined session: login, 100 × (RETR n,
//!   DELE n), QUIT and its UPDATE (elements = messages).
//!
//! Run briefly on shared machines:
//! `cargo bench --bench pop3_retr -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use relay::pop3::{
    retr_size, stuff, stuff_in_place, Event, LockResult, MaildropEntry, Outbox, Session,
    SessionConfig,
};

const MESSAGES: usize = 100;

/// A 10 KB message: a few headers, then 78-octet lines, one in 20 starting with a dot.
fn message() -> Vec<u8> {
    let mut message = b"Received: from client.example ([192.0.2.1])\r\n\tby mx.test (relay) with ESMTP id 0000000000000001\r\nFrom: a@example.com\r\nTo: b@example.net\r\nSubject: benchmark\r\n\r\n".to_vec();
    let mut i = 0;
    while message.len() < 10 * 1024 {
        if i % 20 == 0 {
            message.push(b'.');
        }
        message.extend_from_slice(&[b'a' + (i % 26) as u8; 76]);
        message.extend_from_slice(b"\r\n");
        i += 1;
    }
    message
}

fn config() -> Arc<SessionConfig> {
    Arc::new(SessionConfig {
        hostname: "pop.bench".into(),
        ..SessionConfig::default()
    })
}

/// A session in TRANSACTION over `count` copies of `message`.
fn logged_in(
    config: &Arc<SessionConfig>,
    message: &[u8],
    count: usize,
    out: &mut Outbox,
) -> Session {
    let mut session = Session::new(Arc::clone(config), "1.1", out);
    let login = b"USER bench\r\nPASS bench\r\n";
    assert_eq!(session.handle_input(login, out), login.len());
    session.authenticated(Some("bench".into()), out);
    let entries = (0..count)
        .map(|i| MaildropEntry {
            uid: format!("{:016X}", i + 1),
            size: retr_size(message),
        })
        .collect();
    session.locked(LockResult::Locked(entries), out);
    out.clear();
    session
}

fn retr(c: &mut Criterion) {
    let config = config();
    let message = message();
    let mut group = c.benchmark_group("pop3_retr");
    group.throughput(Throughput::Bytes(message.len() as u64));
    group.bench_function("retr_10k", |b| {
        let mut out = Outbox::default();
        let mut session = logged_in(&config, &message, 1, &mut out);
        b.iter(|| {
            out.clear();
            let consumed = session.handle_input(black_box(b"RETR 1\r\n"), &mut out);
            debug_assert_eq!(consumed, 8);
            let Some(Event::Retrieve { index: 0, .. }) = out.events.pop() else {
                panic!("no retrieve");
            };
            session.retrieved(Ok(black_box(&message)), &mut out);
            black_box(out.bytes.len())
        })
    });
    group.bench_function("retr_10k_into_output", |b| {
        let mut out = Outbox::default();
        let mut session = logged_in(&config, &message, 1, &mut out);
        b.iter(|| {
            out.clear();
            let consumed = session.handle_input(black_box(b"RETR 1\r\n"), &mut out);
            debug_assert_eq!(consumed, 8);
            let Some(Event::Retrieve { index: 0, .. }) = out.events.pop() else {
                panic!("no retrieve");
            };
            session.retrieved_with(&mut out, |buf| {
                buf.extend_from_slice(black_box(&message));
                Ok(())
            });
            black_box(out.bytes.len())
        })
    });
    group.bench_function("stuff_in_place_10k", |b| {
        let mut out = Vec::with_capacity(message.len() * 2);
        b.iter(|| {
            out.clear();
            out.extend_from_slice(black_box(&message));
            stuff_in_place(&mut out, 0);
            black_box(out.len())
        })
    });
    group.bench_function("stuff_10k", |b| {
        let mut out = Vec::with_capacity(message.len() * 2);
        b.iter(|| {
            out.clear();
            stuff(black_box(&message), &mut out);
            black_box(out.len())
        })
    });
    group.finish();
}

fn fetch_and_delete(c: &mut Criterion) {
    let config = config();
    let message = message();
    let mut input = Vec::new();
    for n in 1..=MESSAGES {
        input.extend_from_slice(format!("RETR {n}\r\nDELE {n}\r\n").as_bytes());
    }
    input.extend_from_slice(b"QUIT\r\n");
    let mut group = c.benchmark_group("pop3_fetch");
    group.throughput(Throughput::Elements(MESSAGES as u64));
    group.bench_function("fetch_and_delete_100", |b| {
        let mut out = Outbox::default();
        let mut written = 0;
        b.iter(|| {
            out.clear();
            let mut session = logged_in(&config, &message, MESSAGES, &mut out);
            let mut at = 0;
            while !session.is_closed() {
                at += session.handle_input(&input[at..], &mut out);
                match out.events.pop() {
                    Some(Event::Retrieve { .. }) => session.retrieved(Ok(&message), &mut out),
                    Some(Event::Update { deleted }) => {
                        assert_eq!(deleted.len(), MESSAGES);
                        session.updated(Ok(()), &mut out);
                    }
                    other => panic!("unexpected {other:?}"),
                }
                // The driver writes after every answered event.
                written += out.bytes.len();
                out.bytes.clear();
            }
            black_box(written)
        })
    });
    group.finish();
}

criterion_group!(benches, retr, fetch_and_delete);
criterion_main!(benches);
