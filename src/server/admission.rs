//! Connection admission: a per-core slot count and a per-client-IP count shared by all
//! cores (SO_REUSEPORT spreads one client's connections over every core, so a per-core count
//! would let it take `cores ×` the limit).
//!
//! The connection table is touched only at connect and disconnect, never per command; the
//! message-rate table once per MAIL. dashmap's sharded locks keep cores from contending on
//! one mutex.

use std::cell::Cell;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;

/// Why a connection was turned away (answered 421 4.7.0 by the caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    CoreFull,
    ClientFull,
}

/// Connections per client address across all shards.
#[derive(Debug)]
pub struct ClientTable {
    max: usize,
    counts: DashMap<IpAddr, usize>,
}

impl ClientTable {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(ClientTable {
            max,
            counts: DashMap::new(),
        })
    }

    fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<ClientSlot> {
        let mut count = self.counts.entry(ip).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(ClientSlot {
            table: Arc::clone(self),
            ip,
        })
    }

    fn release(&self, ip: IpAddr) {
        // Remove at zero so the table holds only clients that are connected now.
        self.counts.remove_if_mut(&ip, |_, count| {
            *count = count.saturating_sub(1);
            *count == 0
        });
    }

    pub fn count(&self, ip: IpAddr) -> usize {
        self.counts.get(&ip).map(|c| *c).unwrap_or(0)
    }
}

struct ClientSlot {
    table: Arc<ClientTable>,
    ip: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.table.release(self.ip);
    }
}

/// One shard's admission state.
pub struct Admission {
    core_max: usize,
    active: Rc<Cell<usize>>,
    idle: Rc<tokio::sync::Notify>,
    clients: Arc<ClientTable>,
}

/// Held for the life of an admitted connection; dropping it frees both slots.
pub struct Permit {
    active: Rc<Cell<usize>>,
    idle: Rc<tokio::sync::Notify>,
    /// `None` only inside an [`Unidentified`], before the client's address is known.
    _client: Option<ClientSlot>,
}

/// A core slot held while a connection's client is not known yet (a PROXY protocol header
/// is still to come): the core limit applies at once, the per-client one once it is named.
pub struct Unidentified {
    permit: Permit,
    clients: Arc<ClientTable>,
}

impl Unidentified {
    /// Counts the connection against `ip`'s limit; on refusal the core slot is freed too.
    pub fn identify(mut self, ip: IpAddr) -> Result<Permit, Refusal> {
        let client = self.clients.acquire(ip).ok_or(Refusal::ClientFull)?;
        self.permit._client = Some(client);
        Ok(self.permit)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let left = self.active.get().saturating_sub(1);
        self.active.set(left);
        if left == 0 {
            self.idle.notify_waiters();
        }
    }
}

impl Admission {
    pub fn new(core_max: usize, clients: Arc<ClientTable>) -> Self {
        Admission {
            core_max,
            active: Rc::new(Cell::new(0)),
            idle: Rc::new(tokio::sync::Notify::new()),
            clients,
        }
    }

    pub fn admit(&self, ip: IpAddr) -> Result<Permit, Refusal> {
        self.admit_unidentified()?.identify(ip)
    }

    /// Takes a core slot only; the client's limit applies at [`Unidentified::identify`].
    pub fn admit_unidentified(&self) -> Result<Unidentified, Refusal> {
        if self.active.get() >= self.core_max {
            return Err(Refusal::CoreFull);
        }
        self.active.set(self.active.get() + 1);
        Ok(Unidentified {
            permit: Permit {
                active: Rc::clone(&self.active),
                idle: Rc::clone(&self.idle),
                _client: None,
            },
            clients: Arc::clone(&self.clients),
        })
    }

    /// Resolves once no connection is open on this shard.
    pub async fn idle(&self) {
        loop {
            // Registered before the check, so a release in between is not missed.
            let released = self.idle.notified();
            if self.active.get() == 0 {
                return;
            }
            released.await;
        }
    }

    /// Connections open on this shard now.
    pub fn active(&self) -> usize {
        self.active.get()
    }
}

/// Failed logins per client address (and, for SMTP AUTH, per user name) in a fixed window,
/// across all shards: past a limit, further attempts are refused without checking the
/// password (no argon2 work for a guesser).
#[derive(Debug)]
pub struct AuthFailures {
    ips: FailureCounts<IpAddr>,
    /// Keyed by the lower-cased name as attempted, whether or not such a user exists.
    users: FailureCounts<String>,
}

/// Entries kept in one failure table before expired ones are swept (a guesser trying
/// random names would otherwise grow the per-user table for a whole window).
const FAILURE_ENTRIES_SWEEP: usize = 65_536;

#[derive(Debug)]
struct FailureCounts<K: std::hash::Hash + Eq> {
    max: u32,
    window: std::time::Duration,
    failures: DashMap<K, (u32, std::time::Instant)>,
}

impl<K: std::hash::Hash + Eq + Clone> FailureCounts<K> {
    fn new(max: u32, window: std::time::Duration) -> Self {
        FailureCounts {
            max,
            window,
            failures: DashMap::new(),
        }
    }

    fn blocked(&self, key: &K, now: std::time::Instant) -> bool {
        match self.failures.get(key) {
            Some(entry) => {
                let (count, since) = *entry;
                count >= self.max && now.duration_since(since) < self.window
            }
            None => false,
        }
    }

    fn record_failure(&self, key: K, now: std::time::Instant) {
        if self.failures.len() >= FAILURE_ENTRIES_SWEEP {
            let window = self.window;
            self.failures
                .retain(|_, (_, since)| now.duration_since(*since) < window);
        }
        let mut entry = self.failures.entry(key).or_insert((0, now));
        if now.duration_since(entry.1) >= self.window {
            *entry = (0, now);
        }
        entry.0 = entry.0.saturating_add(1);
    }

    fn forget(&self, key: &K) {
        self.failures.remove(key);
    }
}

impl AuthFailures {
    /// Per-address counting only (POP3).
    pub fn new(max: u32, window: std::time::Duration) -> Arc<Self> {
        Self::with_users(max, u32::MAX, window)
    }

    /// Per-address and per-user-name counting (SMTP AUTH).
    pub fn with_users(ip_max: u32, user_max: u32, window: std::time::Duration) -> Arc<Self> {
        Arc::new(AuthFailures {
            ips: FailureCounts::new(ip_max, window),
            users: FailureCounts::new(user_max, window),
        })
    }

    /// Whether `ip` used up its failures for the current window.
    pub fn blocked(&self, ip: IpAddr, now: std::time::Instant) -> bool {
        self.ips.blocked(&ip, now)
    }

    /// Whether the user name used up its failures for the current window.
    pub fn user_blocked(&self, user: &str, now: std::time::Instant) -> bool {
        self.users.blocked(&user.to_lowercase(), now)
    }

    pub fn record_failure(&self, ip: IpAddr, now: std::time::Instant) {
        self.ips.record_failure(ip, now);
    }

    pub fn record_user_failure(&self, user: &str, now: std::time::Instant) {
        self.users.record_failure(user.to_lowercase(), now);
    }

    /// A successful login forgives the address's earlier mistakes.
    pub fn record_success(&self, ip: IpAddr) {
        self.ips.forget(&ip);
    }

    /// A successful login forgives the user name's earlier failures too.
    pub fn record_user_success(&self, user: &str) {
        self.users.forget(&user.to_lowercase());
    }
}

/// Messages per client address in a fixed window across all shards (Postfix anvil's
/// `smtpd_client_message_rate_limit`; SO_REUSEPORT spreads one client over every core, so a
/// per-core count would allow `cores ×` the rate). Touched once per MAIL, not per command.
///
/// Memory: an entry per address seen in the last window. The table is swept of expired
/// windows whenever it has doubled since the last sweep (at least [`RATE_ENTRIES_SWEEP`]), so
/// it holds at most about twice the addresses active in one window, at an amortised O(1) cost
/// per message.
#[derive(Debug)]
pub struct MessageRate {
    max: u32,
    window: Duration,
    counts: DashMap<IpAddr, (u32, Instant)>,
    /// The table size at which the next sweep runs.
    sweep_at: AtomicUsize,
}

/// The smallest table size that triggers a sweep.
pub const RATE_ENTRIES_SWEEP: usize = 4096;

impl MessageRate {
    /// `max` messages per `window`; `max == 0` admits everything.
    pub fn new(max: u32, window: Duration) -> Arc<Self> {
        Arc::new(MessageRate {
            max,
            window,
            counts: DashMap::new(),
            sweep_at: AtomicUsize::new(RATE_ENTRIES_SWEEP),
        })
    }

    /// Counts one message from `ip` at `now`; false when it is over the rate (not counted).
    pub fn admit_at(&self, ip: IpAddr, now: Instant) -> bool {
        if self.max == 0 {
            return true;
        }
        // Before taking an entry: a sweep while holding one would deadlock its shard.
        if self.counts.len() >= self.sweep_at.load(Ordering::Relaxed) {
            self.sweep(now);
        }
        let mut entry = self.counts.entry(ip).or_insert((0, now));
        if now.saturating_duration_since(entry.1) >= self.window {
            *entry = (0, now);
        }
        if entry.0 >= self.max {
            return false;
        }
        entry.0 += 1;
        true
    }

    /// Drops the addresses whose window has ended.
    pub fn sweep(&self, now: Instant) {
        let window = self.window;
        self.counts
            .retain(|_, (_, since)| now.saturating_duration_since(*since) < window);
        let next = (self.counts.len() * 2).max(RATE_ENTRIES_SWEEP);
        self.sweep_at.store(next, Ordering::Relaxed);
    }

    /// Addresses in the table now.
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }
}

impl crate::smtp::MessageRateGate for MessageRate {
    fn admit(&self, client: IpAddr) -> bool {
        self.admit_at(client, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn per_client_limit_spans_shards() {
        let clients = ClientTable::new(2);
        let core0 = Admission::new(100, Arc::clone(&clients));
        let core1 = Admission::new(100, Arc::clone(&clients));
        let p1 = core0.admit(A).expect("first");
        let _p2 = core1.admit(A).expect("second, other core");
        assert_eq!(core0.admit(A).err(), Some(Refusal::ClientFull));
        assert_eq!(core1.admit(A).err(), Some(Refusal::ClientFull));
        assert!(core0.admit(B).is_ok(), "another client is not affected");
        drop(p1);
        assert!(core1.admit(A).is_ok(), "a freed slot is reusable");
    }

    #[test]
    fn per_core_limit() {
        let clients = ClientTable::new(100);
        let core = Admission::new(2, clients);
        let _a = core.admit(A).unwrap();
        let b = core.admit(B).unwrap();
        assert_eq!(core.admit(A).err(), Some(Refusal::CoreFull));
        assert_eq!(core.active(), 2);
        drop(b);
        assert_eq!(core.active(), 1);
        assert!(core.admit(A).is_ok());
    }

    #[test]
    fn table_forgets_disconnected_clients() {
        let clients = ClientTable::new(5);
        let core = Admission::new(10, Arc::clone(&clients));
        let permits: Vec<_> = (0..3).map(|_| core.admit(A).unwrap()).collect();
        assert_eq!(clients.count(A), 3);
        drop(permits);
        assert_eq!(clients.count(A), 0);
        assert!(clients.counts.is_empty());
    }

    #[test]
    fn auth_failures_block_within_their_window_only() {
        use std::time::{Duration, Instant};
        let limiter = AuthFailures::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(!limiter.blocked(A, t0));
            limiter.record_failure(A, t0);
        }
        assert!(limiter.blocked(A, t0));
        assert!(!limiter.blocked(B, t0), "other addresses are not affected");
        assert!(
            !limiter.blocked(A, t0 + Duration::from_secs(61)),
            "the window passes"
        );
        limiter.record_failure(A, t0 + Duration::from_secs(61));
        assert!(
            !limiter.blocked(A, t0 + Duration::from_secs(61)),
            "a new window starts"
        );
        limiter.record_success(A);
        assert!(!limiter.blocked(A, t0));
    }

    #[test]
    fn refused_core_admission_does_not_leak_a_client_slot() {
        let clients = ClientTable::new(5);
        let core = Admission::new(1, Arc::clone(&clients));
        let _held = core.admit(A).unwrap();
        assert_eq!(core.admit(B).err(), Some(Refusal::CoreFull));
        assert_eq!(clients.count(B), 0);
    }

    #[test]
    fn unidentified_holds_a_core_slot_until_named() {
        let clients = ClientTable::new(1);
        let core = Admission::new(2, Arc::clone(&clients));
        let waiting = core.admit_unidentified().unwrap();
        assert_eq!(core.active(), 1);
        assert_eq!(clients.count(A), 0, "no client counted before the header");
        let named = waiting.identify(A).unwrap();
        assert_eq!((core.active(), clients.count(A)), (1, 1));
        // Over the client's limit: refused, and its core slot is freed again.
        let second = core.admit_unidentified().unwrap();
        assert_eq!(core.active(), 2);
        assert_eq!(core.admit_unidentified().err(), Some(Refusal::CoreFull));
        assert_eq!(second.identify(A).err(), Some(Refusal::ClientFull));
        assert_eq!((core.active(), clients.count(A)), (1, 1));
        drop(named);
        assert_eq!((core.active(), clients.count(A)), (0, 0));
    }

    #[test]
    fn user_failures_count_per_name_across_addresses() {
        use std::time::{Duration, Instant};
        let limiter = AuthFailures::with_users(100, 2, Duration::from_secs(60));
        let t0 = Instant::now();
        limiter.record_user_failure("Alice", t0);
        assert!(!limiter.user_blocked("alice", t0));
        limiter.record_user_failure("ALICE", t0);
        assert!(
            limiter.user_blocked("alice", t0),
            "names are case-insensitive"
        );
        assert!(!limiter.user_blocked("bob", t0));
        assert!(!limiter.blocked(A, t0), "the address limit is separate");
        assert!(!limiter.user_blocked("alice", t0 + Duration::from_secs(61)));
        limiter.record_user_success("alice");
        assert!(!limiter.user_blocked("alice", t0));
        // POP3's limiter has no per-user limit.
        let pop3 = AuthFailures::new(3, Duration::from_secs(60));
        for _ in 0..10 {
            pop3.record_user_failure("alice", t0);
        }
        assert!(!pop3.user_blocked("alice", t0));
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn message_rate_counts_per_address_across_shards() {
        let rate = MessageRate::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        let core0 = Arc::clone(&rate);
        let core1 = Arc::clone(&rate);
        assert!(core0.admit_at(A, t0));
        assert!(core1.admit_at(A, t0));
        assert!(core0.admit_at(A, t0 + SECOND));
        // The fourth in the window, whichever core asks.
        assert!(!core1.admit_at(A, t0 + SECOND));
        assert!(!core0.admit_at(A, t0 + 59 * SECOND));
        // Another address has its own budget.
        assert!(core1.admit_at(B, t0 + SECOND));
    }

    #[test]
    fn message_rate_window_ends_and_refusals_are_not_counted() {
        let rate = MessageRate::new(1, Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(rate.admit_at(A, t0));
        for s in 1..10 {
            assert!(!rate.admit_at(A, t0 + s * SECOND), "second {s}");
        }
        // A new window: the refusals above did not push it further out.
        assert!(rate.admit_at(A, t0 + 10 * SECOND));
        assert!(!rate.admit_at(A, t0 + 11 * SECOND));
    }

    #[test]
    fn message_rate_zero_is_unlimited_and_keeps_nothing() {
        let rate = MessageRate::new(0, Duration::from_secs(10));
        let t0 = Instant::now();
        for _ in 0..1000 {
            assert!(rate.admit_at(A, t0));
        }
        assert!(rate.is_empty());
    }

    #[test]
    fn message_rate_table_is_swept_of_old_addresses() {
        let rate = MessageRate::new(5, Duration::from_secs(10));
        let t0 = Instant::now();
        let many = RATE_ENTRIES_SWEEP * 3;
        let ip = |i: usize| IpAddr::V6(std::net::Ipv6Addr::from(i as u128 + 1));
        for i in 0..many {
            assert!(rate.admit_at(ip(i), t0));
        }
        // All are live in their window: the table holds them (sweeps found nothing to drop).
        assert_eq!(rate.len(), many);
        // A window later, new addresses arrive; the old ones go at the next sweep.
        let later = t0 + 11 * SECOND;
        for i in many..many + 2 * many {
            assert!(rate.admit_at(ip(i), later));
        }
        assert!(
            rate.len() <= 2 * many + 1,
            "expired addresses stayed: {} entries",
            rate.len()
        );
        rate.sweep(later + 11 * SECOND);
        assert!(rate.is_empty());
    }
}
