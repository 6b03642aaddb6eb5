//! Per-core caches of parsed DNS records for the sender checks.
//!
//! Why ours and not only hickory's: hickory caches the wire answer, so every message still
//! paid a cache lookup through hickory's shared LRU, a fresh parse of the SPF record and the
//! DKIM key record (base64, key object), and for DMARC a copy of the TXT strings. These
//! caches hold the parsed result (mail-auth's `Txt`, which for DKIM is the key object it
//! verifies with) until the DNS TTL hickory reported runs out.
//!
//! One cache per core (no lock: a core's checks run on its own thread), bounded in entries;
//! only answers are cached, never a failure (a SERVFAIL or timeout is asked again, as
//! hickory would).

use std::borrow::Borrow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::rc::Rc;
use std::time::Instant;

use mail_auth::{Parameters, RecordSet, ResolverCache, Txt, MX};

/// Entries per cache and core: enough for the domains a busy relay hears from within a TTL
/// (typically minutes to an hour), small enough that a flood of one-off domains costs at
/// most a few MiB (a DKIM key record parses into about 1 KiB, an SPF record less).
pub const DEFAULT_CAPACITY: usize = 2048;

/// The clock a cache reads "now" from; tests inject their own.
pub type Clock = Rc<dyn Fn() -> Instant>;

/// A bounded map from a name to a value valid until a given instant.
pub struct TtlCache<K, V> {
    entries: RefCell<HashMap<K, (V, Instant)>>,
    capacity: usize,
    clock: Clock,
}

impl<K: Hash + Eq + Clone, V: Clone> TtlCache<K, V> {
    pub fn new(capacity: usize, clock: Clock) -> TtlCache<K, V> {
        TtlCache {
            entries: RefCell::new(HashMap::new()),
            capacity: capacity.max(1),
            clock,
        }
    }

    /// The value of `key` if it is still valid at `now`; an expired entry is dropped.
    pub fn get_at<Q>(&self, key: &Q, now: Instant) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut entries = self.entries.borrow_mut();
        match entries.get(key) {
            Some((value, until)) if now < *until => Some(value.clone()),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Keeps `value` until `valid_until`. When full: expired entries go first, then the
    /// one that would expire soonest (it is the cheapest to lose).
    pub fn insert_at(&self, key: K, value: V, valid_until: Instant, now: Instant) {
        if valid_until <= now {
            return;
        }
        let mut entries = self.entries.borrow_mut();
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            entries.retain(|_, (_, until)| now < *until);
            if entries.len() >= self.capacity {
                let soonest = entries
                    .iter()
                    .min_by_key(|(_, (_, until))| *until)
                    .map(|(k, _)| k.clone());
                if let Some(soonest) = soonest {
                    entries.remove(&soonest);
                }
            }
        }
        entries.insert(key, (value, valid_until));
    }

    pub fn remove<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.borrow_mut().remove(key).map(|(v, _)| v)
    }

    pub fn len(&self) -> usize {
        self.entries.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn now(&self) -> Instant {
        (self.clock)()
    }
}

impl<K: Hash + Eq + Clone, V: Clone> ResolverCache<K, V> for TtlCache<K, V> {
    fn get<Q>(&self, name: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get_at(name, self.now())
    }

    fn remove<Q>(&self, name: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        TtlCache::remove(self, name)
    }

    fn insert(&self, key: K, value: V, valid_until: Instant) {
        self.insert_at(key, value, valid_until, self.now());
    }
}

/// The caches of one core's checks.
pub struct Caches {
    /// Parsed TXT records mail-auth asks for: SPF records, DKIM keys, ARC keys.
    pub txt: TtlCache<Box<str>, Txt>,
    /// SPF's `a`, `mx` mechanisms.
    pub mx: TtlCache<Box<str>, RecordSet<MX>>,
    pub ipv4: TtlCache<Box<str>, RecordSet<Ipv4Addr>>,
    pub ipv6: TtlCache<Box<str>, RecordSet<Ipv6Addr>>,
    /// SPF's `ptr` mechanism (RFC 7208 discourages it, but records still use it).
    pub ptr: TtlCache<IpAddr, RecordSet<Box<str>>>,
    /// Raw TXT strings of the names we ask ourselves (`_dmarc` discovery, SPF `none`
    /// confirmation), by lower-case FQDN.
    pub raw_txt: TtlCache<Box<str>, Rc<[String]>>,
}

impl Caches {
    pub fn new(capacity: usize, clock: Clock) -> Caches {
        Caches {
            txt: TtlCache::new(capacity, Rc::clone(&clock)),
            mx: TtlCache::new(capacity, Rc::clone(&clock)),
            ipv4: TtlCache::new(capacity, Rc::clone(&clock)),
            ipv6: TtlCache::new(capacity, Rc::clone(&clock)),
            ptr: TtlCache::new(capacity, Rc::clone(&clock)),
            raw_txt: TtlCache::new(capacity, clock),
        }
    }

    /// Caches on the system clock.
    pub fn system(capacity: usize) -> Caches {
        Caches::new(capacity, Rc::new(Instant::now))
    }

    /// mail-auth's parameters for `params`, answered from these caches.
    #[allow(clippy::type_complexity)]
    pub fn parameters<P>(
        &self,
        params: P,
    ) -> Parameters<
        '_,
        P,
        TtlCache<Box<str>, Txt>,
        TtlCache<Box<str>, RecordSet<MX>>,
        TtlCache<Box<str>, RecordSet<Ipv4Addr>>,
        TtlCache<Box<str>, RecordSet<Ipv6Addr>>,
        TtlCache<IpAddr, RecordSet<Box<str>>>,
    > {
        Parameters::new(params)
            .with_txt_cache(&self.txt)
            .with_mx_cache(&self.mx)
            .with_ipv4_cache(&self.ipv4)
            .with_ipv6_cache(&self.ipv6)
            .with_ptr_cache(&self.ptr)
    }

    /// The current time by this cache's clock.
    pub fn now(&self) -> Instant {
        self.raw_txt.now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::time::Duration;

    fn clock() -> (Rc<Cell<Instant>>, Clock) {
        let now = Rc::new(Cell::new(Instant::now()));
        let read = Rc::clone(&now);
        (now, Rc::new(move || read.get()))
    }

    #[test]
    fn a_hit_returns_the_value_until_the_ttl_runs_out() {
        let (now, clock) = clock();
        let cache: TtlCache<Box<str>, u32> = TtlCache::new(4, clock);
        let t0 = now.get();
        ResolverCache::insert(&cache, "a.example.".into(), 7, t0 + Duration::from_secs(60));
        assert_eq!(ResolverCache::get(&cache, "a.example."), Some(7));
        assert_eq!(ResolverCache::get(&cache, "b.example."), None);
        now.set(t0 + Duration::from_secs(59));
        assert_eq!(ResolverCache::get(&cache, "a.example."), Some(7));
        now.set(t0 + Duration::from_secs(60));
        assert_eq!(ResolverCache::get(&cache, "a.example."), None);
        // The expired entry is gone, not merely hidden.
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn an_answer_already_expired_is_not_kept() {
        let (now, clock) = clock();
        let cache: TtlCache<Box<str>, u32> = TtlCache::new(4, clock);
        cache.insert_at("a.".into(), 1, now.get(), now.get());
        assert!(cache.is_empty());
    }

    #[test]
    fn the_size_is_bounded_and_expired_or_soonest_entries_go_first() {
        let (now, clock) = clock();
        let t0 = now.get();
        let cache: TtlCache<Box<str>, u32> = TtlCache::new(3, clock);
        let s = Duration::from_secs;
        cache.insert_at("a.".into(), 1, t0 + s(10), t0);
        cache.insert_at("b.".into(), 2, t0 + s(300), t0);
        cache.insert_at("c.".into(), 3, t0 + s(100), t0);
        // Full: the one expiring soonest (a) makes room.
        cache.insert_at("d.".into(), 4, t0 + s(200), t0);
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get_at("a.", t0), None);
        for (key, value) in [("b.", 2), ("c.", 3), ("d.", 4)] {
            assert_eq!(cache.get_at(key, t0), Some(value), "{key}");
        }
        // Later, c has expired: it goes, d and b stay.
        let later = t0 + s(150);
        cache.insert_at("e.".into(), 5, later + s(60), later);
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get_at("c.", later), None);
        assert_eq!(cache.get_at("b.", later), Some(2));
        assert_eq!(cache.get_at("d.", later), Some(4));
        assert_eq!(cache.get_at("e.", later), Some(5));
        // Replacing a key never evicts another.
        cache.insert_at("e.".into(), 6, later + s(60), later);
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get_at("e.", later), Some(6));
        // Many distinct names never grow it past the bound.
        for i in 0..100 {
            cache.insert_at(format!("n{i}.").into(), i, later + s(60 + i as u64), later);
        }
        assert_eq!(cache.len(), 3);
    }
}
