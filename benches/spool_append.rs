//! Spool group-commit throughput: 10 KiB messages, fsync ON, 1 / 8 / 64 concurrent writers
//! (threads that append and wait for their durable reply) into one shard. The spool lives in a
//! tempdir under the target dir, on the real disk (not tmpfs): fdatasync is what is measured.
//!
//! Also the POP3 RETR path before the loadgen's POP3 mode exists: `Spool::read_body` of 10 KiB
//! messages (live-index lookup, cached segment handle, one pread, crc32c check) by 1 and 4
//! threads, over 4000 stored messages (40 MB, in the page cache: the read path is measured, not
//! the disk).
//!
//! Run briefly: `cargo bench --bench spool_append -- --warm-up-time 1 --measurement-time 3`
//! (`-- read_body` for the read group only).
//! Target (docs/ARCHITECTURE.md §12): ≥ 15k records/s at 64 writers on the 2-vCPU VM.

use std::time::{Duration, Instant, SystemTime};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use relay::envelope::{Envelope, MailParams, Origin, QueueId, Recipient};
use relay::spool::{NewMessage, ShardHandle, Spool, SpoolConfig, SpoolError};

const BODY: usize = 10 * 1024;

fn message(h: &ShardHandle, body: &[u8], received: &[u8]) -> NewMessage {
    let id = h.next_id(SystemTime::now());
    NewMessage {
        id,
        arrival_unix_micros: id.micros(),
        origin: Origin {
            client_ip: "192.0.2.1".into(),
            client_port: 40000,
            helo: "bench.example".into(),
            protocol: "ESMTP".into(),
        },
        envelope: Envelope {
            reverse_path: "sender@example.org".into(),
            params: MailParams::default(),
            recipients: (0..3)
                .map(|i| Recipient {
                    address: format!("rcpt{i}@example.net"),
                    notify: None,
                    orcpt: None,
                })
                .collect(),
        },
        received_header: received.to_vec(),
        body: body.to_vec(),
        mailboxes: Vec::new(),
        remote: Vec::new(),
        placements: Vec::new(),
    }
}

fn append_durably(h: &ShardHandle, body: &[u8], received: &[u8]) {
    loop {
        match h.append_message(message(h, body, received)) {
            Ok(rx) => {
                let committed = rx.blocking_recv().expect("writer alive");
                committed.expect("durable append");
                return;
            }
            Err(SpoolError::Backpressure) => std::thread::yield_now(),
            Err(e) => panic!("append: {e}"),
        }
    }
}

fn spool_append(c: &mut Criterion) {
    let received = b"Received: from bench.example (bench.example [192.0.2.1])\r\n\tby relay; Wed, 26 Nov 2025 05:00:00 +0000\r\n".to_vec();
    let body: Vec<u8> = (0..BODY - received.len())
        .map(|i| b'a' + (i % 26) as u8)
        .collect();
    let stored = (received.len() + body.len()) as u64;

    let mut group = c.benchmark_group("spool_append_10KiB_fsync");
    group.sample_size(10);
    for writers in [1usize, 8, 64] {
        // One fresh spool per writer count, removed afterwards (it grows by ~200 MB/s).
        let tmp = tempfile::Builder::new()
            .prefix("spool-bench-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("tempdir on the target disk");
        let (spool, _) =
            Spool::open(SpoolConfig::new(tmp.path().join("spool")), 1).expect("open spool");
        let h = spool.shard(0);
        group.throughput(Throughput::ElementsAndBytes {
            elements: writers as u64,
            bytes: writers as u64 * stored,
        });
        group.bench_with_input(BenchmarkId::from_parameter(writers), &writers, |b, &w| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                std::thread::scope(|s| {
                    for _ in 0..w {
                        let h = h.clone();
                        let (body, received) = (&body, &received);
                        s.spawn(move || {
                            for _ in 0..iters {
                                append_durably(&h, body, received);
                            }
                        });
                    }
                });
                start.elapsed()
            })
        });
        let st = h.stats();
        eprintln!(
            "spool_append/{writers}: {} records in {} group commits (mean batch {:.1})",
            st.records,
            st.commits,
            st.records as f64 / st.commits.max(1) as f64
        );
        spool.close().expect("close spool");
    }
    group.finish();
}

/// The ceiling the spool is measured against, in the same run: 64 records' worth of bytes
/// appended with one write and one fdatasync, no framing, no serialisation, no threads
/// (target: the spool should reach ≥ 60% of this at 64 writers).
fn raw_group_commit_ceiling(c: &mut Criterion) {
    use std::io::Write;
    const BATCH: usize = 64;
    let record = vec![b'r'; BODY + 160];
    let batch: Vec<u8> = record.repeat(BATCH);
    let tmp = tempfile::Builder::new()
        .prefix("spool-ceiling-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("tempdir on the target disk");
    let mut group = c.benchmark_group("raw_group_commit_ceiling");
    group.sample_size(10);
    group.throughput(Throughput::ElementsAndBytes {
        elements: BATCH as u64,
        bytes: batch.len() as u64,
    });
    group.bench_function("64_records_per_fdatasync", |b| {
        let mut file = std::fs::File::create(tmp.path().join("raw")).expect("create");
        let mut written = 0u64;
        b.iter(|| {
            file.write_all(&batch).expect("write");
            file.sync_data().expect("fdatasync");
            written += batch.len() as u64;
            // Keep the file from growing without bound over long runs.
            if written > 1 << 30 {
                file.set_len(0).expect("truncate");
                file = std::fs::File::create(tmp.path().join("raw")).expect("create");
                written = 0;
            }
        })
    });
    group.finish();
}

fn spool_read_body(c: &mut Criterion) {
    const STORED: usize = 4000;
    let received = b"Received: from bench.example\r\n".to_vec();
    let body: Vec<u8> = (0..BODY - received.len())
        .map(|i| b'a' + (i % 26) as u8)
        .collect();
    let tmp = tempfile::Builder::new()
        .prefix("spool-bench-read-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("tempdir on the target disk");
    let (spool, _) =
        Spool::open(SpoolConfig::new(tmp.path().join("spool")), 1).expect("open spool");
    let h = spool.shard(0);
    let mut ids: Vec<QueueId> = Vec::with_capacity(STORED);
    let mut waiting = Vec::new();
    for _ in 0..STORED {
        let mut m = message(&h, &body, &received);
        m.mailboxes = vec!["bench".into()];
        ids.push(m.id);
        waiting.push(h.append_message(m).expect("queue"));
        if waiting.len() == 256 {
            for rx in waiting.drain(..) {
                rx.blocking_recv().expect("writer").expect("stored");
            }
        }
    }
    for rx in waiting.drain(..) {
        rx.blocking_recv().expect("writer").expect("stored");
    }
    let reader = spool.reader();
    let mut group = c.benchmark_group("spool_read_body_10KiB");
    for threads in [1usize, 4] {
        group.throughput(Throughput::ElementsAndBytes {
            elements: threads as u64,
            bytes: (threads * BODY) as u64,
        });
        group.bench_with_input(BenchmarkId::from_parameter(threads), &threads, |b, &t| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                std::thread::scope(|s| {
                    for k in 0..t {
                        let (reader, ids) = (reader.clone(), &ids);
                        s.spawn(move || {
                            for i in 0..iters as usize {
                                let id = ids[(i * 7 + k * 1013) % ids.len()];
                                let got = reader.read_body(id).expect("read_body");
                                assert_eq!(got.len(), BODY);
                            }
                        });
                    }
                });
                start.elapsed()
            })
        });
    }
    group.finish();
    spool.close().expect("close spool");
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = spool_append, raw_group_commit_ceiling, spool_read_body
}
criterion_main!(benches);
