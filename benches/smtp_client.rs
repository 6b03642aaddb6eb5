//! Outbound SMTP client throughput: one pipelined transaction of a 10 KB message against
//! canned replies (the client's own cost: commands, dot-stuffing, reply parsing), and the
//! same through the relay's own server session in memory (both protocol cores).
//! Run briefly on shared machines:
//! `cargo bench --bench smtp_client -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use relay::envelope::{MailParams, QueueId, Recipient};
use relay::smtp::client::{Client, ClientConfig, ClientEvent, Next, Outgoing, Output};
use relay::smtp::{Event, Outbox, Session, SessionConfig};

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

/// A 10 KB message of 78-octet lines, some starting with a dot.
fn body() -> Bytes {
    let mut body = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: bench\r\n\r\n".to_vec();
    let mut i = 0;
    while body.len() < 10 * 1024 {
        let lead = if i % 10 == 0 { b'.' } else { b'x' };
        body.push(lead);
        body.extend(std::iter::repeat_n(b'a', 75));
        body.extend_from_slice(b"\r\n");
        i += 1;
    }
    Bytes::from(body)
}

fn outgoing(body: &Bytes, recipients: usize) -> Outgoing {
    Outgoing {
        reverse_path: "a@example.org".into(),
        params: MailParams::default(),
        recipients: (0..recipients)
            .map(|i| Recipient {
                address: format!("r{i}@example.net"),
                notify: None,
                orcpt: None,
            })
            .collect(),
        body: body.clone(),
        eight_bit: false,
    }
}

fn idle_client(config: &Arc<ClientConfig>, out: &mut Output) -> Client {
    let mut client = Client::new(Arc::clone(config));
    let hello = b"220 mx\r\n250-mx\r\n250-PIPELINING\r\n250-SIZE 0\r\n250 8BITMIME\r\n";
    assert_eq!(client.handle_input(hello, out), hello.len());
    assert_eq!(client.next(), Next::Send);
    out.clear();
    client
}

fn client_alone(c: &mut Criterion) {
    let config = Arc::new(ClientConfig::default());
    let body = body();
    let mut group = c.benchmark_group("smtp_client");
    group.throughput(Throughput::Bytes(body.len() as u64));
    for recipients in [1usize, 10] {
        let mut replies = b"250 2.1.0 Ok\r\n".to_vec();
        for _ in 0..recipients {
            replies.extend_from_slice(b"250 2.1.5 Ok\r\n");
        }
        replies.extend_from_slice(b"354 go\r\n");
        let done = b"250 2.0.0 Ok: queued as 0000000000000001\r\n";
        let mut out = Output::default();
        let mut client = idle_client(&config, &mut out);
        group.bench_function(format!("transaction_10k_{recipients}_rcpt"), |b| {
            b.iter(|| {
                out.clear();
                assert!(client.send(outgoing(&body, recipients), &mut out).is_ok());
                client.handle_input(&replies, &mut out);
                client.handle_input(done, &mut out);
                assert_eq!(client.next(), Next::Send);
                black_box(out.bytes.len())
            })
        });
    }
    group.finish();
}

fn client_to_session(c: &mut Criterion) {
    let config = Arc::new(ClientConfig::default());
    let server = Arc::new(SessionConfig {
        local_domains: vec!["example.net".into()],
        ..SessionConfig::default()
    });
    let body = body();
    let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let mut group = c.benchmark_group("smtp_client");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("through_server_session_10k", |b| {
        // One connection per iteration batch; each iteration is one message over it.
        let mut sout = Outbox::default();
        let mut session = Session::new(Arc::clone(&server), peer, now(), &mut sout);
        let mut to_client = std::mem::take(&mut sout.bytes);
        let mut to_server = Vec::new();
        let mut client = Client::new(Arc::clone(&config));
        let mut out = Output::default();
        let mut id = 0;
        b.iter(|| {
            let mut sent = false;
            loop {
                match client.next() {
                    Next::Send if sent => break,
                    Next::Send => {
                        assert!(client.send(outgoing(&body, 1), &mut out).is_ok());
                        sent = true;
                    }
                    Next::Read(_) => {
                        let n = client.handle_input(&to_client, &mut out);
                        to_client.drain(..n);
                    }
                    Next::Done => unreachable!("closed"),
                    Next::StartTls => unreachable!("STARTTLS from a client that never asks"),
                }
                to_server.extend_from_slice(&out.bytes);
                assert!(!out
                    .events
                    .iter()
                    .any(|e| matches!(e, ClientEvent::Closed(_))));
                out.clear();
                sout.clear();
                let n = session.handle_input(&to_server, now(), &mut sout);
                to_server.drain(..n);
                for event in std::mem::take(&mut sout.events) {
                    if let Event::Submit(submission) = event {
                        id += 1;
                        black_box(submission.body.len());
                        session.submitted(Ok(QueueId(id)), now(), &mut sout);
                    }
                }
                to_client.extend_from_slice(&sout.bytes);
            }
        })
    });
    group.finish();
}

/// Dot-stuffing a stored 10 KB body for DATA (`smtp::client::dot_stuff`, which searches for
/// a line end followed by a dot) beside the loop it replaced, which stopped at every CR and LF.
fn dot_stuffing(c: &mut Criterion) {
    fn stop_at_every_line_end(body: &[u8], out: &mut Vec<u8>) {
        out.reserve(body.len() + body.len() / 64 + 5);
        if body.first() == Some(&b'.') {
            out.push(b'.');
        }
        let mut start = 0;
        for i in memchr::memchr2_iter(b'\r', b'\n', body) {
            if body.get(i + 1) == Some(&b'.') {
                out.extend_from_slice(&body[start..=i]);
                out.push(b'.');
                start = i + 1;
            }
        }
        out.extend_from_slice(&body[start..]);
        out.extend_from_slice(b".\r\n");
    }
    let body = body();
    let mut group = c.benchmark_group("dot_stuff_10k");
    group.throughput(Throughput::Bytes(body.len() as u64));
    let mut out = Vec::with_capacity(2 * body.len());
    group.bench_function("dot_stuff", |b| {
        b.iter(|| {
            out.clear();
            relay::smtp::client::dot_stuff(black_box(&body), &mut out);
            black_box(out.len())
        })
    });
    group.bench_function("stop_at_every_line_end", |b| {
        b.iter(|| {
            out.clear();
            stop_at_every_line_end(black_box(&body), &mut out);
            black_box(out.len())
        })
    });
    group.finish();
}

criterion_group!(benches, client_alone, client_to_session, dot_stuffing);
criterion_main!(benches);
