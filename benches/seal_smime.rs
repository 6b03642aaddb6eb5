//! S/MIME sealing cost on one core: `smime::seal` (entity split, AES-256-CBC over the
//! entity, RSA-2048 PKCS #1 v1.5 key transport, DER, base64 at 76 columns) for a 10 KiB and
//! a 1 MiB message.
//!
//! The certificate is a committed public one (benches/data/smime_rsa2048.pem, self-signed,
//! valid for a century; its private key was discarded).
//!
//! Run briefly: `cargo bench --bench seal_smime -- --warm-up-time 1 --measurement-time 3`.

use std::time::SystemTime;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use relay::mailcrypt::smime;

const CERT: &[u8] = include_bytes!("data/smime_rsa2048.pem");

/// A message of about `size` octets: a few header fields, 76-column text lines.
fn message(size: usize) -> Vec<u8> {
    let mut m = b"From: Bob <bob@remote.test>\r\nTo: bench@example.test\r\n\
Subject: figures\r\nDate: Fri, 04 Dec 2026 10:00:00 +0000\r\n\
Message-ID: <bench.1@remote.test>\r\nMIME-Version: 1.0\r\n\
Content-Type: text/plain; charset=utf-8\r\n\r\n"
        .to_vec();
    let line = b"The quick brown fox jumps over the lazy dog; the  dog  sleeps on.  \r\n";
    while m.len() < size {
        m.extend_from_slice(line);
    }
    m
}

fn seal(c: &mut Criterion) {
    let cert = smime::parse_cert(CERT, &["bench@example.test".into()], SystemTime::now())
        .expect("the bench certificate parses");
    let mut group = c.benchmark_group("seal_smime");
    for (name, size) in [("10KiB", 10 * 1024), ("1MiB", 1 << 20)] {
        let m = message(size);
        group.throughput(Throughput::Bytes(m.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| smime::seal(&cert, &m).expect("seal"));
        });
    }
    group.finish();
}

criterion_group!(benches, seal);
criterion_main!(benches);
