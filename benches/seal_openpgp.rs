//! PGP/MIME sealing cost (`mailcrypt::openpgp::seal`: entity split, AES-256 SEIPDv1, the
//! public-key step, armour, MIME assembly) for a 10 KiB and a 1 MiB message, to a v4
//! cv25519 key and a v4 RSA-2048 key. The keys are made by rPGP at start (only their public
//! halves are used) and go through `parse_key` like a user's key.
//!
//! Run briefly: `cargo bench --bench seal_openpgp -- --warm-up-time 1 --measurement-time 3`.

use std::time::SystemTime;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use pgp::{
    composed::{
        EncryptionCaps, KeyType, SecretKeyParamsBuilder, SignedPublicKey, SubkeyParamsBuilder,
    },
    crypto::ecc_curve::ECCCurve,
    ser::Serialize,
};
use rand_core::OsRng;
use relay::mailcrypt::openpgp;

const ADDRESS: &str = "bench@example.test";

/// A fresh key with `primary` and an encryption subkey of `encryption`, parsed as a user's.
fn key(primary: KeyType, encryption: KeyType) -> openpgp::Key {
    let mut sub = SubkeyParamsBuilder::default();
    sub.key_type(encryption)
        .can_sign(false)
        .can_encrypt(EncryptionCaps::All)
        .can_authenticate(false);
    let mut params = SecretKeyParamsBuilder::default();
    params
        .key_type(primary)
        .can_certify(true)
        .can_sign(true)
        .can_encrypt(EncryptionCaps::None)
        .primary_user_id(format!("Bench <{ADDRESS}>"))
        .subkeys(vec![sub.build().expect("subkey parameters")]);
    let secret = params
        .build()
        .expect("key parameters")
        .generate(OsRng)
        .expect("key generation");
    let public = SignedPublicKey::from(secret).to_bytes().expect("serialise");
    openpgp::parse_key(&public, &[ADDRESS.to_string()], SystemTime::now()).expect("parse_key")
}

/// A message of about `size` octets: a few header fields and 76-column text lines.
fn message(size: usize) -> Vec<u8> {
    let mut m =
        b"Received: from mx.remote.test by relay.example.test; Fri, 04 Dec 2026 10:00:00 +0000\r\n\
From: Alice <alice@remote.test>\r\n\
To: Bench <bench@example.test>\r\n\
Subject: Quarterly figures\r\n\
Date: Fri, 04 Dec 2026 10:00:00 +0000\r\n\
Message-ID: <bench.1@remote.test>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
\r\n"
            .to_vec();
    let line = b"The quick brown fox jumps over the lazy dog; the  dog  sleeps on.  \r\n";
    while m.len() < size {
        m.extend_from_slice(line);
    }
    m
}

fn bench(c: &mut Criterion) {
    let keys = [
        (
            "cv25519",
            key(
                KeyType::Ed25519Legacy,
                KeyType::ECDH(ECCCurve::Curve25519Legacy),
            ),
        ),
        ("rsa2048", key(KeyType::Rsa(2048), KeyType::Rsa(2048))),
    ];
    let mut group = c.benchmark_group("seal_openpgp");
    for (size_name, size) in [("10KiB", 10 * 1024), ("1MiB", 1024 * 1024)] {
        let m = message(size);
        group.throughput(Throughput::Bytes(m.len() as u64));
        for (key_name, key) in &keys {
            group.bench_with_input(BenchmarkId::new(*key_name, size_name), &m, |b, m| {
                b.iter(|| openpgp::seal(key, m).expect("seal"))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
