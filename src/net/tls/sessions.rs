//! The server's TLS session table: what a returning client's TLS 1.3 ticket or TLS 1.2
//! session id names, so its handshake can skip the certificate signature.
//!
//! rustls's own `ServerSessionMemoryCache` finds the entry a ticket names in its eviction
//! order by a linear scan, on every resumption (TLS 1.3 tickets are taken, not read): with the
//! table large enough for an edge relay's senders that scan was 13% of the relay's CPU in
//! one-message-per-connection TLS ingest. Here each entry carries the sequence number it was
//! stored under, the eviction order holds (number, key) pairs, and a pair whose entry has
//! since been taken or replaced is skipped when it reaches the front: every operation is
//! O(1) amortised. The table is split by key over a few locks so the cores rarely wait for
//! each other.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, MutexGuard};

use rustls::server::StoresServerSessions;

/// Locks the table is split over (a power of two).
const PARTS: usize = 16;

/// Sessions kept for resumption, oldest forgotten first.
#[derive(Debug)]
pub struct SessionTable {
    parts: Box<[Mutex<Part>]>,
    /// Chooses a key's part; keyed at random, so a client cannot aim at one.
    hasher: RandomState,
    per_part: usize,
}

#[derive(Debug, Default)]
struct Part {
    entries: HashMap<Vec<u8>, Entry>,
    /// Keys in the order they were stored, with the number they were stored under; a pair
    /// whose entry is gone or was stored again is stale.
    order: VecDeque<(u64, Vec<u8>)>,
    next: u64,
}

#[derive(Debug)]
struct Entry {
    value: Vec<u8>,
    stored: u64,
}

impl Part {
    fn put(&mut self, key: Vec<u8>, value: Vec<u8>, capacity: usize) {
        let stored = self.next;
        self.next += 1;
        self.order.push_back((stored, key.clone()));
        self.entries.insert(key, Entry { value, stored });
        while self.entries.len() > capacity {
            let Some((number, key)) = self.order.pop_front() else {
                break;
            };
            if self.entries.get(&key).is_some_and(|e| e.stored == number) {
                self.entries.remove(&key);
            }
        }
        // Taken entries leave stale pairs behind; drop them once they outnumber the live
        // ones, so the order stays within twice the capacity.
        if self.order.len() > 2 * capacity.max(8) {
            let entries = &self.entries;
            self.order
                .retain(|(number, key)| entries.get(key).is_some_and(|e| e.stored == *number));
        }
    }
}

impl SessionTable {
    /// A table holding at most `capacity` sessions (at least one per part).
    pub fn new(capacity: usize) -> SessionTable {
        let per_part = capacity.div_ceil(PARTS).max(1);
        SessionTable {
            parts: (0..PARTS).map(|_| Mutex::new(Part::default())).collect(),
            hasher: RandomState::new(),
            per_part,
        }
    }

    fn part(&self, key: &[u8]) -> MutexGuard<'_, Part> {
        let index = (self.hasher.hash_one(key) as usize) & (PARTS - 1);
        // A panic while holding a part leaves whole entries behind (every change is one
        // insert or remove): the part stays usable.
        match self.parts[index].lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Sessions held now.
    pub fn len(&self) -> usize {
        (0..PARTS)
            .map(|i| match self.parts[i].lock() {
                Ok(guard) => guard.entries.len(),
                Err(poisoned) => poisoned.into_inner().entries.len(),
            })
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl StoresServerSessions for SessionTable {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.part(&key).put(key, value, self.per_part);
        true
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.part(key).entries.get(key).map(|e| e.value.clone())
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.part(key).entries.remove(key).map(|e| e.value)
    }

    fn can_cache(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> Vec<u8> {
        let mut k = vec![0u8; 32];
        k[..4].copy_from_slice(&i.to_le_bytes());
        k
    }

    #[test]
    fn stores_gets_and_takes() {
        let table = SessionTable::new(64);
        assert!(table.can_cache());
        assert!(table.put(key(1), b"one".to_vec()));
        assert_eq!(table.get(&key(1)), Some(b"one".to_vec()));
        assert_eq!(table.get(&key(1)), Some(b"one".to_vec()), "get leaves it");
        assert_eq!(table.take(&key(1)), Some(b"one".to_vec()));
        assert_eq!(table.take(&key(1)), None, "take removes it");
        assert_eq!(table.get(&key(2)), None);
        table.put(key(3), b"a".to_vec());
        table.put(key(3), b"b".to_vec());
        assert_eq!(
            table.get(&key(3)),
            Some(b"b".to_vec()),
            "stored again: the new value"
        );
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn the_oldest_are_forgotten_first_and_the_table_stays_bounded() {
        // One part, to see the order exactly.
        let mut part = Part::default();
        for i in 0..10 {
            part.put(key(i), vec![i as u8], 4);
        }
        let kept: Vec<u32> = (0..10)
            .filter(|i| part.entries.contains_key(&key(*i)))
            .collect();
        assert_eq!(kept, vec![6, 7, 8, 9]);

        // Storing again makes an entry the newest; its old place in the order is stale.
        part.put(key(6), vec![66], 4);
        part.put(key(10), vec![10], 4);
        let kept: Vec<u32> = (0..11)
            .filter(|i| part.entries.contains_key(&key(*i)))
            .collect();
        assert_eq!(kept, vec![6, 8, 9, 10], "7 went, not the re-stored 6");
        assert_eq!(part.entries[&key(6)].value, vec![66]);

        // Taking entries leaves stale pairs; they never pile up past twice the capacity
        // and never evict a live entry early.
        for i in 100..10_000 {
            part.put(key(i), vec![1], 4);
            part.entries.remove(&key(i));
            assert!(
                part.order.len() <= 2 * 8 + 1,
                "order grew to {}",
                part.order.len()
            );
        }
        for i in 20_000..20_004 {
            part.put(key(i), vec![2], 4);
        }
        assert_eq!(part.entries.len(), 4);
        assert!((20_000..20_004).all(|i| part.entries.contains_key(&key(i))));
    }

    #[test]
    fn the_whole_table_holds_its_capacity() {
        let table = SessionTable::new(1024);
        for i in 0..10_000 {
            table.put(key(i), vec![0; 8]);
        }
        let held = table.len();
        // Parts fill unevenly: each holds at most its share, and random keys fill most.
        assert!(held <= 1024 && held > 900, "{held}");
        // The newest are there.
        assert!((9_990..10_000).all(|i| table.get(&key(i)).is_some()));
    }
}
