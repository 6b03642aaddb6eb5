//! SMTP session throughput: pipelined commands through parse + session, and DATA receive.
//!
//! Targets (docs/ARCHITECTURE.md §12): at least 1M commands/s per core for a pipelined workload;
//! DATA receive in MB/s for a 10 KB body. Run briefly on shared machines:
//! `cargo bench --bench smtp_session -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use relay::envelope::QueueId;
use relay::smtp::{parse, Event, Outbox, Session, SessionConfig};

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

const GROUP: &[u8] =
    b"MAIL FROM:<sender@example.com> SIZE=1000\r\nRCPT TO:<rcpt@localhost>\r\nRSET\r\nNOOP\r\n";
const COMMANDS_PER_GROUP: u64 = 4;
const GROUPS: usize = 1000;

fn session(config: &Arc<SessionConfig>, out: &mut Outbox) -> Session {
    let peer = "192.0.2.1:40000".parse().unwrap();
    let mut session = Session::new(Arc::clone(config), peer, now(), out);
    let ehlo = b"EHLO bench.example\r\n";
    assert_eq!(session.handle_input(ehlo, now(), out), ehlo.len());
    out.clear();
    session
}

fn pipelined_commands(c: &mut Criterion) {
    // RSET and NOOP are junk commands: past JUNK_COMMANDS_MAX each counts as an error and
    // the session would close at errors_max. The bench measures command throughput, so it
    // lifts that limit rather than measure a closed session.
    let config = Arc::new(SessionConfig {
        errors_max: u32::MAX,
        ..SessionConfig::default()
    });
    let input = GROUP.repeat(GROUPS);
    let mut group = c.benchmark_group("smtp_session");
    group.throughput(Throughput::Elements(COMMANDS_PER_GROUP * GROUPS as u64));
    group.bench_function("pipelined_commands", |b| {
        let mut out = Outbox::default();
        b.iter(|| {
            out.clear();
            let mut session = session(&config, &mut out);
            let consumed = session.handle_input(black_box(&input), now(), &mut out);
            assert_eq!(consumed, input.len());
            black_box(out.bytes.len())
        })
    });
    group.bench_function("parse_only", |b| {
        let lines: Vec<&[u8]> = input
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| &l[..l.len() - 1])
            .collect();
        b.iter(|| {
            for line in &lines {
                black_box(parse(black_box(line)).is_ok());
            }
        })
    });
    group.finish();
}

fn data_receive(c: &mut Criterion) {
    let config = Arc::new(SessionConfig::default());
    // A 10 KB message of 78-character lines, a few of them dot-stuffed.
    let mut body = Vec::new();
    let mut i = 0;
    while body.len() < 10 * 1024 {
        if i % 20 == 0 {
            body.extend_from_slice(b"..");
        }
        body.extend_from_slice(&[b'a' + (i % 26) as u8; 76]);
        body.extend_from_slice(b"\r\n");
        i += 1;
    }
    let mut input =
        b"MAIL FROM:<sender@example.com>\r\nRCPT TO:<rcpt@localhost>\r\nDATA\r\n".to_vec();
    input.extend_from_slice(&body);
    input.extend_from_slice(b".\r\n");
    let mut group = c.benchmark_group("smtp_session");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("data_10k", |b| {
        let mut out = Outbox::default();
        let mut session = session(&config, &mut out);
        b.iter(|| {
            out.clear();
            let consumed = session.handle_input(black_box(&input), now(), &mut out);
            assert_eq!(consumed, input.len());
            let Some(Event::Submit(submission)) = out.events.pop() else {
                panic!("no submission");
            };
            black_box(submission.body.len());
            session.submitted(Ok(QueueId(1)), now(), &mut out);
        })
    });
    group.finish();
}

criterion_group!(benches, pipelined_commands, data_receive);
criterion_main!(benches);
