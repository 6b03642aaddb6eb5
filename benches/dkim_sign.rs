//! DKIM signing throughput on one core: `Signer::sign` (From lookup, header selection,
//! relaxed body and header canonicalisation, SHA-256, the signature) over a 10 KiB message
//! with an Ed25519 key and an RSA-2048 key, and both (dual signing).
//!
//! Run briefly: `cargo bench --bench dkim_sign -- --warm-up-time 1 --measurement-time 3`.
//! Goal: Ed25519 ≥ 20k messages/s per core.

use std::os::unix::fs::PermissionsExt;
use std::time::SystemTime;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use relay::sender_auth::keys;
use relay::sender_auth::sign::{Algorithm, KeySettings, Signer};

/// A typical 10 KiB message: a dozen header fields, 76-column text lines.
fn message() -> Vec<u8> {
    let mut m = b"From: Alice Example <alice@example.test>\r\n\
To: Bob <bob@remote.test>, carol@remote.test\r\n\
Cc: dave@remote.test\r\n\
Subject: Quarterly figures, as promised\r\n\
Date: Fri, 04 Dec 2026 10:00:00 +0000\r\n\
Message-ID: <bench.1@example.test>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Transfer-Encoding: 7bit\r\n\
X-Mailer: bench\r\n\
\r\n"
        .to_vec();
    let line = b"The quick brown fox jumps over the lazy dog; the  dog  sleeps on.  \r\n";
    while m.len() < 10 * 1024 {
        m.extend_from_slice(line);
    }
    m
}

fn signer(dir: &std::path::Path, algorithms: &[Algorithm]) -> Signer {
    let settings = algorithms
        .iter()
        .enumerate()
        .map(|(i, &algorithm)| {
            let key = keys::generate(algorithm).expect("keygen");
            let path = dir.join(format!("k{i}"));
            std::fs::write(&path, key.pem).expect("write key");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
            KeySettings {
                domain: "example.test".into(),
                selector: format!("s{i}"),
                key_file: path,
                algorithm,
                headers: None,
            }
        })
        .collect();
    Signer::load(settings).expect("load keys")
}

fn sign(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let message = message();
    let mut group = c.benchmark_group("dkim_sign_10KiB");
    group.throughput(Throughput::Elements(1));
    for (name, algorithms) in [
        ("ed25519", &[Algorithm::Ed25519Sha256][..]),
        ("rsa2048", &[Algorithm::RsaSha256][..]),
        (
            "dual",
            &[Algorithm::Ed25519Sha256, Algorithm::RsaSha256][..],
        ),
    ] {
        let signer = signer(dir.path(), algorithms);
        assert!(!signer.sign(&message, SystemTime::now()).is_empty());
        group.bench_function(name, |b| {
            b.iter(|| signer.sign(std::hint::black_box(&message), SystemTime::now()))
        });
    }
    group.finish();
}

criterion_group!(benches, sign);
criterion_main!(benches);
