//! Connection admission: a per-core slot count and a per-client count shared by all cores
//! (SO_REUSEPORT spreads one client's connections over every core, so a per-core count
//! would let it take `cores ×` the limit); the message rate and the login limits per
//! client. A client is an IPv4 address or an IPv6 prefix ([`ClientPrefix`]).
//!
//! The connection table is touched only at connect and disconnect, never per command; the
//! message-rate table once per MAIL; the login tables once per login. dashmap's sharded
//! locks keep cores from contending on one mutex.
//!
//! In a cluster with Redis ([`crate::cluster::limits`]) every table here still applies on
//! its node, and [`Shared`] adds the count shared by the nodes on top: per client
//! connections (at connect, [`Shared::connection`]), messages (after this node's MAIL
//! checks, through `Event::CheckRate`) and login failures ([`AuthFailures::begin_shared`]).

use std::net::IpAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::cluster::limits::{ConnectionLease, Limits, Verdict};

/// Why a connection was turned away (answered 421 4.7.0 by the caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    CoreFull,
    ClientFull,
    /// The client's connections across the cluster's nodes are at the limit.
    ClusterFull,
    /// The shared count did not answer and `cluster.redis.failure = "closed"`.
    ClusterUnavailable,
}

/// Connections per client across all shards.
#[derive(Debug)]
pub struct ClientTable {
    max: usize,
    prefix: ClientPrefix,
    counts: DashMap<IpAddr, usize>,
}

impl ClientTable {
    pub fn new(max: usize, prefix: ClientPrefix) -> Arc<Self> {
        Arc::new(ClientTable {
            max,
            prefix,
            counts: DashMap::new(),
        })
    }

    fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<ClientSlot> {
        let ip = self.prefix.key(ip);
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
        self.counts
            .get(&self.prefix.key(ip))
            .map(|c| *c)
            .unwrap_or(0)
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
    /// Open connections on this shard; other shards read it to spread new ones (`balance`).
    active: Arc<AtomicUsize>,
    idle: Rc<tokio::sync::Notify>,
    clients: Arc<ClientTable>,
}

/// Held for the life of an admitted connection; dropping it frees both slots.
pub struct Permit {
    active: Arc<AtomicUsize>,
    idle: Rc<tokio::sync::Notify>,
    /// `None` only inside an [`Unidentified`], before the client's address is known.
    _client: Option<ClientSlot>,
    /// The client's slot across the cluster (Redis), when limits are shared.
    _cluster: Option<ConnectionLease>,
}

impl Permit {
    /// A cluster peer proved by its certificate: it no longer counts against its address's
    /// connection limit (a front node holds one connection per proxied session, far more
    /// than `connections_per_ip_max`); the core's limit still applies.
    pub fn peer_verified(mut self) -> Permit {
        self._client = None;
        self._cluster = None;
        self
    }

    /// Holds `lease` (the cluster's slot) for the life of the connection too.
    pub fn with_lease(mut self, lease: Option<ConnectionLease>) -> Permit {
        self._cluster = lease;
        self
    }
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
        // Only this shard's thread changes the count: no other decrement can race this one.
        let left = self.active.load(Ordering::Relaxed).saturating_sub(1);
        self.active.store(left, Ordering::Relaxed);
        if left == 0 {
            self.idle.notify_waiters();
        }
    }
}

impl Admission {
    pub fn new(core_max: usize, clients: Arc<ClientTable>) -> Self {
        Admission::counted_in(core_max, clients, Arc::new(AtomicUsize::new(0)))
    }

    /// An admission that keeps its open-connection count in `active` (where other shards can
    /// read it).
    pub fn counted_in(
        core_max: usize,
        clients: Arc<ClientTable>,
        active: Arc<AtomicUsize>,
    ) -> Self {
        Admission {
            core_max,
            active,
            idle: Rc::new(tokio::sync::Notify::new()),
            clients,
        }
    }

    pub fn admit(&self, ip: IpAddr) -> Result<Permit, Refusal> {
        self.admit_unidentified()?.identify(ip)
    }

    /// Takes a core slot only; the client's limit applies at [`Unidentified::identify`].
    pub fn admit_unidentified(&self) -> Result<Unidentified, Refusal> {
        let active = self.active.load(Ordering::Relaxed);
        if active >= self.core_max {
            return Err(Refusal::CoreFull);
        }
        self.active.store(active + 1, Ordering::Relaxed);
        Ok(Unidentified {
            permit: Permit {
                active: Arc::clone(&self.active),
                idle: Rc::clone(&self.idle),
                _client: None,
                _cluster: None,
            },
            clients: Arc::clone(&self.clients),
        })
    }

    /// Resolves once no connection is open on this shard.
    pub async fn idle(&self) {
        loop {
            // Registered before the check, so a release in between is not missed.
            let released = self.idle.notified();
            if self.active.load(Ordering::Relaxed) == 0 {
                return;
            }
            released.await;
        }
    }

    /// Connections open on this shard now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }
}

/// How client addresses are grouped in every per-address table: an IPv4 address is one
/// client; an IPv6 client is its prefix (a /64 is what one subscriber or one host gets, and
/// it holds 2^64 addresses to rotate through). IPv4-mapped IPv6 addresses count as IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientPrefix {
    v6_len: u8,
}

impl ClientPrefix {
    /// IPv6 clients grouped by their first `v6_len` bits (at most 128).
    pub fn new(v6_len: u8) -> Self {
        ClientPrefix {
            v6_len: v6_len.min(128),
        }
    }

    /// The table key of `ip`.
    pub fn key(self, ip: IpAddr) -> IpAddr {
        match ip.to_canonical() {
            IpAddr::V4(v4) => IpAddr::V4(v4),
            IpAddr::V6(v6) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.v6_len))
                    .unwrap_or(0);
                IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & mask))
            }
        }
    }
}

impl Default for ClientPrefix {
    fn default() -> Self {
        ClientPrefix::new(64)
    }
}

/// Entries kept in one failure table before expired ones are swept (a guesser trying
/// random names would otherwise grow the per-user table for a whole window).
const FAILURE_ENTRIES_SWEEP: usize = 65_536;

/// (user, client) pairs remembered as having logged in: a bound on memory; the oldest goes
/// when it is reached.
pub const KNOWN_LOGINS_MAX: usize = 65_536;

/// The first delay of a user name over its failure limit; each further failure doubles it
/// up to [`USER_DELAY_MAX`].
pub const USER_DELAY_BASE: Duration = Duration::from_secs(1);
pub const USER_DELAY_MAX: Duration = Duration::from_secs(60);
/// Attempts for one name are spaced by its delay; one that would wait longer than this
/// (many queued before it) is refused instead of holding its connection.
pub const USER_WAIT_MAX: Duration = Duration::from_secs(120);

/// One client's failed logins in its window, and its checks in flight (counted against the
/// limit, so concurrent attempts cannot all pass it).
#[derive(Debug, Clone, Copy)]
struct ClientFailures {
    failures: u32,
    since: Instant,
    in_flight: u32,
}

/// One user name's failures in its window and when its next attempt may start.
#[derive(Debug, Clone, Copy)]
struct UserFailures {
    failures: u32,
    since: Instant,
    not_before: Instant,
}

/// Why [`AuthFailures::begin`] refused an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthRefusal {
    /// The client's failures and attempts in flight reached its limit.
    Client,
    /// The user name's attempts are spaced out further than [`USER_WAIT_MAX`] ahead.
    User,
}

/// Login limits shared by all shards, one table per protocol:
/// - per client (address, or IPv6 prefix): failures in a fixed window plus the checks in
///   flight; past the limit, attempts are refused without hashing (no argon2 work for a
///   guesser) until the window ends or a login from there succeeds;
/// - per user name (lower-cased, as attempted, existing or not): past its limit each attempt
///   waits a delay that doubles with each further failure (capped), and attempts are spaced
///   by it, so a guesser spread over many addresses gets a few tries a minute;
/// - a client that logged in as that user before is exempt from the user's delay: a guesser
///   elsewhere cannot lock the owner out.
#[derive(Debug)]
pub struct AuthFailures {
    prefix: ClientPrefix,
    client_max: u32,
    user_max: u32,
    window: Duration,
    clients: DashMap<IpAddr, ClientFailures>,
    users: DashMap<String, UserFailures>,
    known: DashMap<(String, IpAddr), Instant>,
    /// The client failure count shared by the cluster's nodes, and this table's protocol.
    shared: Option<(Limits, &'static str)>,
}

/// A login attempt admitted by [`AuthFailures::begin`]: counted in flight until it is
/// resolved or dropped (a dropped one, e.g. a client gone before its check, counts as
/// nothing).
#[derive(Debug)]
pub struct Attempt {
    table: Arc<AuthFailures>,
    client: IpAddr,
    user: String,
    /// How long to wait before checking the password (the user name's delay).
    pub wait: Duration,
}

impl AuthFailures {
    /// `client_max` failures per client and `user_max` per user name (before the delay
    /// starts) within `window`.
    pub fn new(
        client_max: u32,
        user_max: u32,
        window: Duration,
        prefix: ClientPrefix,
    ) -> Arc<Self> {
        Self::new_shared(client_max, user_max, window, prefix, &Limits::Local, "")
    }

    /// As [`AuthFailures::new`], with the client failures also counted in `limits` (for
    /// `protocol`'s logins) when they are shared.
    pub fn new_shared(
        client_max: u32,
        user_max: u32,
        window: Duration,
        prefix: ClientPrefix,
        limits: &Limits,
        protocol: &'static str,
    ) -> Arc<Self> {
        Arc::new(AuthFailures {
            prefix,
            client_max,
            user_max,
            window,
            clients: DashMap::new(),
            users: DashMap::new(),
            known: DashMap::new(),
            shared: limits.is_shared().then(|| (limits.clone(), protocol)),
        })
    }

    /// [`AuthFailures::begin`], after asking the cluster whether the client used up its
    /// failures on any node (one Redis round trip; nothing without shared limits).
    pub async fn begin_shared(
        self: &Arc<Self>,
        ip: IpAddr,
        user: &str,
        now: Instant,
    ) -> Result<Attempt, AuthRefusal> {
        if let Some((limits, protocol)) = &self.shared {
            let client = client_name(self.prefix.key(ip));
            if !limits
                .login(protocol, &client, self.client_max)
                .await
                .admits()
            {
                return Err(AuthRefusal::Client);
            }
        }
        self.begin(ip, user, now)
    }

    /// Admits an attempt by `user` from `ip` at `now`, or refuses it unchecked.
    pub fn begin(
        self: &Arc<Self>,
        ip: IpAddr,
        user: &str,
        now: Instant,
    ) -> Result<Attempt, AuthRefusal> {
        let client = self.prefix.key(ip);
        let user = user.to_lowercase();
        self.sweep(now);
        {
            let mut entry = self.clients.entry(client).or_insert(ClientFailures {
                failures: 0,
                since: now,
                in_flight: 0,
            });
            if now.saturating_duration_since(entry.since) >= self.window {
                entry.failures = 0;
                entry.since = now;
            }
            if entry.failures.saturating_add(entry.in_flight) >= self.client_max {
                return Err(AuthRefusal::Client);
            }
            entry.in_flight += 1;
        }
        // From here the attempt is counted: dropping it (on refusal too) releases it.
        let mut attempt = Attempt {
            table: Arc::clone(self),
            client,
            user,
            wait: Duration::ZERO,
        };
        attempt.wait = self.user_wait(&attempt.user, client, now)?;
        Ok(attempt)
    }

    /// The wait before `user`'s next attempt from `client` (see the type's doc), which
    /// also moves the name's next start on.
    fn user_wait(&self, user: &str, client: IpAddr, now: Instant) -> Result<Duration, AuthRefusal> {
        if self.known.contains_key(&(user.to_string(), client)) {
            return Ok(Duration::ZERO);
        }
        let Some(mut entry) = self.users.get_mut(user) else {
            return Ok(Duration::ZERO);
        };
        if now.saturating_duration_since(entry.since) >= self.window
            || entry.failures < self.user_max
        {
            return Ok(Duration::ZERO);
        }
        let start = entry.not_before.max(now);
        let wait = start.saturating_duration_since(now);
        if wait > USER_WAIT_MAX {
            return Err(AuthRefusal::User);
        }
        entry.not_before = start + self.user_delay(entry.failures);
        Ok(wait)
    }

    /// The spacing of attempts for a name with `failures` in its window.
    fn user_delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(self.user_max).min(16);
        USER_DELAY_BASE
            .saturating_mul(1 << doublings)
            .min(USER_DELAY_MAX)
    }

    /// Whether `ip` used up its failures for the current window (attempts in flight count).
    pub fn blocked(&self, ip: IpAddr, now: Instant) -> bool {
        match self.clients.get(&self.prefix.key(ip)) {
            Some(entry) => {
                now.saturating_duration_since(entry.since) < self.window
                    && entry.failures.saturating_add(entry.in_flight) >= self.client_max
            }
            None => false,
        }
    }

    /// Drops expired entries once a table is large (never entries with checks in flight).
    fn sweep(&self, now: Instant) {
        let window = self.window;
        if self.clients.len() >= FAILURE_ENTRIES_SWEEP {
            self.clients.retain(|_, entry| {
                entry.in_flight > 0 || now.saturating_duration_since(entry.since) < window
            });
        }
        if self.users.len() >= FAILURE_ENTRIES_SWEEP {
            self.users.retain(|_, entry| {
                now.saturating_duration_since(entry.since) < window || entry.not_before > now
            });
        }
    }

    fn release(&self, client: IpAddr) {
        self.clients.remove_if_mut(&client, |_, entry| {
            entry.in_flight = entry.in_flight.saturating_sub(1);
            entry.in_flight == 0 && entry.failures == 0
        });
    }

    fn record_failure(&self, client: IpAddr, user: &str, now: Instant) {
        if let Some((limits, protocol)) = &self.shared {
            limits.login_failed_detached(protocol, &client_name(client), self.window);
        }
        if let Some(mut entry) = self.clients.get_mut(&client) {
            if now.saturating_duration_since(entry.since) >= self.window {
                entry.failures = 0;
                entry.since = now;
            }
            entry.failures = entry.failures.saturating_add(1);
        }
        let mut entry = self.users.entry(user.to_string()).or_insert(UserFailures {
            failures: 0,
            since: now,
            not_before: now,
        });
        if now.saturating_duration_since(entry.since) >= self.window {
            *entry = UserFailures {
                failures: 0,
                since: now,
                not_before: now,
            };
        }
        entry.failures = entry.failures.saturating_add(1);
        if entry.failures >= self.user_max {
            let next = now + self.user_delay(entry.failures);
            entry.not_before = entry.not_before.max(next);
        }
    }

    /// A login succeeded: the client's earlier mistakes are forgiven and the pair is
    /// remembered. The name's failures stay: forgiving them would hand a guesser elsewhere
    /// a fresh set of undelayed tries each time the owner logs in.
    fn record_success(&self, client: IpAddr, user: &str, now: Instant) {
        if let Some((limits, protocol)) = &self.shared {
            limits.login_succeeded(protocol, &client_name(client));
        }
        if let Some(mut entry) = self.clients.get_mut(&client) {
            entry.failures = 0;
        }
        let pair = (user.to_string(), client);
        if !self.known.contains_key(&pair) && self.known.len() >= KNOWN_LOGINS_MAX {
            let oldest = self
                .known
                .iter()
                .min_by_key(|entry| *entry.value())
                .map(|entry| entry.key().clone());
            if let Some(oldest) = oldest {
                self.known.remove(&oldest);
            }
        }
        self.known.insert(pair, now);
    }

    /// Pairs remembered as having logged in.
    pub fn known_logins(&self) -> usize {
        self.known.len()
    }
}

impl Attempt {
    /// The password was right.
    pub fn succeeded(self, now: Instant) {
        self.table.record_success(self.client, &self.user, now);
    }

    /// The password (or the name) was wrong.
    pub fn failed(self, now: Instant) {
        self.table.record_failure(self.client, &self.user, now);
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        self.table.release(self.client);
    }
}

/// Messages per client in a fixed window across all shards (Postfix anvil's
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
    prefix: ClientPrefix,
    counts: DashMap<IpAddr, (u32, Instant)>,
    /// The table size at which the next sweep runs.
    sweep_at: AtomicUsize,
}

/// The smallest table size that triggers a sweep.
pub const RATE_ENTRIES_SWEEP: usize = 4096;

impl MessageRate {
    /// `max` messages per `window`; `max == 0` admits everything.
    pub fn new(max: u32, window: Duration, prefix: ClientPrefix) -> Arc<Self> {
        Arc::new(MessageRate {
            max,
            window,
            prefix,
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
        let mut entry = self.counts.entry(self.prefix.key(ip)).or_insert((0, now));
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

/// A client's name in the shared tables: its table key ([`ClientPrefix::key`]) as text.
pub fn client_name(key: IpAddr) -> String {
    key.to_string()
}

/// The cluster side of admission: the shared counts on top of the node's tables.
#[derive(Debug, Default)]
pub struct Shared {
    limits: Limits,
    prefix: ClientPrefix,
    /// `smtp.messages_per_ip_max` per `message_rate_window` (None: no rate).
    message_rate: Option<(u32, Duration)>,
    connections_max: usize,
}

impl Shared {
    pub fn new(
        limits: Limits,
        prefix: ClientPrefix,
        message_rate: Option<(u32, Duration)>,
        connections_max: usize,
    ) -> Arc<Self> {
        Arc::new(Shared {
            limits,
            prefix,
            message_rate,
            connections_max,
        })
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// One message from `ip` counted across the cluster (after the node's own table
    /// admitted it).
    pub async fn message(&self, ip: IpAddr) -> bool {
        let Some((max, window)) = self.message_rate else {
            return true;
        };
        let client = client_name(self.prefix.key(ip));
        let verdict = self.limits.message(&client, max, window).await;
        // Refusals for want of Redis are not logged here: the outage is, once.
        if verdict == Verdict::Refuse {
            tracing::info!(target: "relay::smtp", client = %ip, "message refused by the cluster's rate");
        }
        verdict.admits()
    }

    /// `ip`'s connection slot across the cluster (after the node's own tables admitted it).
    pub async fn connection(&self, ip: IpAddr) -> Result<Option<ConnectionLease>, Refusal> {
        if !self.limits.is_shared() {
            return Ok(None);
        }
        let client = client_name(self.prefix.key(ip));
        self.limits
            .connection(&client, self.connections_max)
            .await
            .map_err(|verdict| match verdict {
                Verdict::Unavailable => Refusal::ClusterUnavailable,
                _ => Refusal::ClusterFull,
            })
    }
}

/// The node's message-rate gate when the rate is also shared: the session asks the
/// cluster (`Event::CheckRate`) once this node's table admitted the message.
pub struct SharedRate(pub Arc<dyn crate::smtp::MessageRateGate>);

impl crate::smtp::MessageRateGate for SharedRate {
    fn admit(&self, client: IpAddr) -> bool {
        self.0.admit(client)
    }

    fn shared(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));
    const C: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 3));

    #[test]
    fn per_client_limit_spans_shards() {
        let clients = ClientTable::new(2, ClientPrefix::default());
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
        let clients = ClientTable::new(100, ClientPrefix::default());
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
        let clients = ClientTable::new(5, ClientPrefix::default());
        let core = Admission::new(10, Arc::clone(&clients));
        let permits: Vec<_> = (0..3).map(|_| core.admit(A).unwrap()).collect();
        assert_eq!(clients.count(A), 3);
        drop(permits);
        assert_eq!(clients.count(A), 0);
        assert!(clients.counts.is_empty());
    }

    #[test]
    fn refused_core_admission_does_not_leak_a_client_slot() {
        let clients = ClientTable::new(5, ClientPrefix::default());
        let core = Admission::new(1, Arc::clone(&clients));
        let _held = core.admit(A).unwrap();
        assert_eq!(core.admit(B).err(), Some(Refusal::CoreFull));
        assert_eq!(clients.count(B), 0);
    }

    #[test]
    fn unidentified_holds_a_core_slot_until_named() {
        let clients = ClientTable::new(1, ClientPrefix::default());
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

    const SECOND: Duration = Duration::from_secs(1);
    const WINDOW: Duration = Duration::from_secs(600);

    fn v6(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_prefix_and_mapped_ipv4_by_its_address() {
        let p64 = ClientPrefix::default();
        assert_eq!(
            p64.key(v6("2001:db8:1:2:aaaa::1")),
            p64.key(v6("2001:db8:1:2:ffff:1:2:3"))
        );
        assert_ne!(
            p64.key(v6("2001:db8:1:2::1")),
            p64.key(v6("2001:db8:1:3::1"))
        );
        assert_eq!(p64.key(v6("2001:db8:1:2:aaaa::1")), v6("2001:db8:1:2::"));
        assert_eq!(p64.key(v6("::ffff:192.0.2.1")), A);
        assert_eq!(p64.key(A), A);
        assert_ne!(p64.key(A), p64.key(B), "IPv4 stays per address");
        let p48 = ClientPrefix::new(48);
        assert_eq!(
            p48.key(v6("2001:db8:1:2::1")),
            p48.key(v6("2001:db8:1:3::1"))
        );
        assert_eq!(ClientPrefix::new(128).key(v6("::1")), v6("::1"));
        assert_eq!(ClientPrefix::new(0).key(v6("2001:db8::1")), v6("::"));
    }

    #[test]
    fn every_per_address_table_aggregates_an_ipv6_prefix() {
        let (one, other) = (v6("2001:db8:0:1::1"), v6("2001:db8:0:1::2"));
        let clients = ClientTable::new(2, ClientPrefix::default());
        let core = Admission::new(100, Arc::clone(&clients));
        let _a = core.admit(one).unwrap();
        let _b = core.admit(other).unwrap();
        let third = v6("2001:db8:0:1:ffff::3");
        assert_eq!(core.admit(third).err(), Some(Refusal::ClientFull));
        assert!(core.admit(v6("2001:db8:0:2::1")).is_ok(), "another /64");

        let rate = MessageRate::new(1, WINDOW, ClientPrefix::default());
        let t0 = Instant::now();
        assert!(rate.admit_at(one, t0));
        assert!(!rate.admit_at(other, t0));

        let logins = AuthFailures::new(2, 100, WINDOW, ClientPrefix::default());
        for ip in [one, other] {
            logins.begin(ip, "x", t0).unwrap().failed(t0);
        }
        assert_eq!(
            logins.begin(third, "x", t0).err(),
            Some(AuthRefusal::Client)
        );
    }

    #[test]
    fn client_failures_block_within_their_window_only() {
        let limiter = AuthFailures::new(3, 100, WINDOW, ClientPrefix::default());
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(!limiter.blocked(A, t0));
            limiter.begin(A, "x", t0).unwrap().failed(t0);
        }
        assert!(limiter.blocked(A, t0));
        assert_eq!(limiter.begin(A, "x", t0).err(), Some(AuthRefusal::Client));
        assert!(!limiter.blocked(B, t0), "other addresses are not affected");
        let later = t0 + WINDOW;
        assert!(!limiter.blocked(A, later), "the window passes");
        limiter.begin(A, "x", later).unwrap().failed(later);
        assert!(!limiter.blocked(A, later), "a new window starts");
        limiter.begin(A, "x", later).unwrap().succeeded(later);
        limiter.begin(A, "x", later).unwrap().failed(later);
        limiter.begin(A, "x", later).unwrap().failed(later);
        assert!(
            !limiter.blocked(A, later),
            "a success forgave the earlier failure"
        );
    }

    #[test]
    fn attempts_in_flight_count_against_the_client_limit() {
        let limiter = AuthFailures::new(10, 100, WINDOW, ClientPrefix::default());
        let t0 = Instant::now();
        let in_flight: Vec<_> = (0..50)
            .filter_map(|_| limiter.begin(A, "x", t0).ok())
            .collect();
        assert_eq!(in_flight.len(), 10, "only the limit may be hashing at once");
        assert!(limiter.blocked(A, t0));
        // Abandoned attempts (client gone, pool busy) count as nothing once dropped.
        drop(in_flight);
        assert!(!limiter.blocked(A, t0));
        assert!(
            limiter.clients.is_empty(),
            "nothing kept for a clean address"
        );
    }

    #[test]
    fn user_failures_slow_the_name_down_instead_of_refusing() {
        let window = Duration::from_secs(3600);
        let limiter = AuthFailures::new(1000, 3, window, ClientPrefix::default());
        let t0 = Instant::now();
        for _ in 0..2 {
            let attempt = limiter.begin(A, "Alice", t0).unwrap();
            assert_eq!(attempt.wait, Duration::ZERO);
            attempt.failed(t0);
        }
        let third = limiter.begin(B, "ALICE", t0).unwrap();
        assert_eq!(third.wait, Duration::ZERO, "names are case-insensitive");
        third.failed(t0);
        // Over the limit: the next attempt waits the base delay, whichever address it is.
        let waited = limiter.begin(B, "alice", t0).unwrap();
        assert_eq!(waited.wait, USER_DELAY_BASE);
        // Concurrent attempts are spaced, not run together.
        let queued = limiter.begin(A, "alice", t0).unwrap();
        assert_eq!(queued.wait, 2 * USER_DELAY_BASE);
        drop(queued);
        waited.failed(t0 + USER_DELAY_BASE);
        // Each failure doubles the delay.
        let later = t0 + 10 * SECOND;
        let next = limiter.begin(A, "alice", later).unwrap();
        assert_eq!(next.wait, Duration::ZERO, "the spacing has passed");
        next.failed(later);
        assert_eq!(
            limiter.begin(A, "alice", later).unwrap().wait,
            4 * USER_DELAY_BASE
        );
        assert_eq!(limiter.begin(A, "bob", later).unwrap().wait, Duration::ZERO);
        // The delay is capped; a queue of waiters too long is refused (a busy name).
        let mut now = later;
        for _ in 0..20 {
            now += USER_DELAY_MAX;
            limiter.begin(A, "alice", now).unwrap().failed(now);
        }
        let capped = limiter.begin(B, "alice", now + 2 * USER_DELAY_MAX).unwrap();
        assert_eq!(capped.wait, Duration::ZERO);
        let spaced = limiter.begin(B, "alice", now + 2 * USER_DELAY_MAX).unwrap();
        assert_eq!(spaced.wait, USER_DELAY_MAX);
        let refused = (0..3).find_map(|_| {
            limiter
                .begin(B, "alice", now + 2 * USER_DELAY_MAX)
                .map(std::mem::forget)
                .err()
        });
        assert_eq!(refused, Some(AuthRefusal::User));
        // A window after the first failure the name starts afresh.
        let fresh = t0 + window * 2;
        assert_eq!(
            limiter.begin(C, "alice", fresh).unwrap().wait,
            Duration::ZERO
        );
    }

    #[test]
    fn a_client_that_logged_in_as_the_user_is_not_slowed_by_others_failures() {
        let window = Duration::from_secs(3600);
        let limiter = AuthFailures::new(1000, 3, window, ClientPrefix::default());
        let t0 = Instant::now();
        limiter.begin(A, "alice", t0).unwrap().succeeded(t0);
        // Ten failures from B, a minute apart (each within the name's spacing).
        for i in 1..=10 {
            let t = t0 + i * USER_DELAY_MAX;
            limiter.begin(B, "alice", t).unwrap().failed(t);
        }
        let now = t0 + 10 * USER_DELAY_MAX;
        assert_eq!(limiter.begin(A, "Alice", now).unwrap().wait, Duration::ZERO);
        assert!(limiter.begin(B, "alice", now).unwrap().wait > Duration::ZERO);
        // Known as alice only, not as any user.
        limiter.begin(C, "bob", now).unwrap().succeeded(now);
        for _ in 0..3 {
            limiter.begin(B, "bob", now).unwrap().failed(now);
        }
        assert!(limiter.begin(A, "bob", now).unwrap().wait > Duration::ZERO);
        assert_eq!(limiter.begin(C, "bob", now).unwrap().wait, Duration::ZERO);
        // The owner's IPv6 prefix is known, not only the one address.
        let owner = v6("2001:db8:5:6::10");
        limiter.begin(owner, "alice", now).unwrap().succeeded(now);
        let same = limiter.begin(v6("2001:db8:5:6::99"), "alice", now).unwrap();
        assert_eq!(same.wait, Duration::ZERO);
    }

    #[test]
    fn known_logins_are_bounded() {
        let limiter = AuthFailures::new(1000, 3, WINDOW, ClientPrefix::new(128));
        let t0 = Instant::now();
        for i in 0..KNOWN_LOGINS_MAX + 10 {
            let ip = IpAddr::V6(std::net::Ipv6Addr::from(i as u128 + 1));
            let now = t0 + Duration::from_millis(i as u64);
            limiter.begin(ip, "alice", now).unwrap().succeeded(now);
        }
        assert_eq!(limiter.known_logins(), KNOWN_LOGINS_MAX);
        // The oldest went first.
        let first = IpAddr::V6(std::net::Ipv6Addr::from(1u128));
        assert!(!limiter.known.contains_key(&("alice".to_string(), first)));
    }

    #[test]
    fn message_rate_counts_per_address_across_shards() {
        let rate = MessageRate::new(3, Duration::from_secs(60), ClientPrefix::default());
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
        let rate = MessageRate::new(1, Duration::from_secs(10), ClientPrefix::default());
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
        let rate = MessageRate::new(0, Duration::from_secs(10), ClientPrefix::default());
        let t0 = Instant::now();
        for _ in 0..1000 {
            assert!(rate.admit_at(A, t0));
        }
        assert!(rate.is_empty());
    }

    #[test]
    fn message_rate_table_is_swept_of_old_addresses() {
        let rate = MessageRate::new(5, Duration::from_secs(10), ClientPrefix::new(128));
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
