//! The TLS session table against rustls's `ServerSessionMemoryCache`, both full at the
//! relay's size (16,384): one resumption's work, a recent ticket taken and two new ones
//! stored (what a TLS 1.3 client coming back costs the table).
//! Run briefly on shared machines:
//! `cargo bench --bench tls_sessions -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use relay::net::tls::sessions::SessionTable;
use rustls::server::{ServerSessionMemoryCache, StoresServerSessions};

const ENTRIES: usize = 16_384;

/// 32 octets, distinct per `i`, spread like random ticket ids.
fn key(i: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(32);
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for _ in 0..4 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        k.extend_from_slice(&x.to_le_bytes());
    }
    k
}

fn resumptions(c: &mut Criterion, name: &str, table: Arc<dyn StoresServerSessions>) {
    for i in 0..ENTRIES as u64 {
        table.put(key(i), vec![0; 120]);
    }
    // Fifty clients each sending one message per connection: the ticket a client brings
    // back was stored a hundred tickets ago, near the newest end of the table.
    let mut next = ENTRIES as u64;
    c.bench_function(name, |b| {
        b.iter(|| {
            assert!(black_box(table.take(&key(next - 100))).is_some());
            table.put(key(next), vec![0; 120]);
            table.put(key(next + 1), vec![0; 120]);
            next += 2;
        })
    });
}

fn bench(c: &mut Criterion) {
    resumptions(
        c,
        "session_table_resumption",
        Arc::new(SessionTable::new(ENTRIES)),
    );
    resumptions(
        c,
        "rustls_memory_cache_resumption",
        ServerSessionMemoryCache::new(ENTRIES),
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
