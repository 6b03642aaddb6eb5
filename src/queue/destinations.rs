//! Per-destination bookkeeping for one core: plain data structures, no async, no clock.
//!
//! **Role.** A *destination* is where a group of recipients goes next, and the unit that owns
//! a connection pool and limits. It is worked by one or more cores ([`owner`] and the cores
//! after it, [`super::spread`]), each of which keeps, in a [`CoreQueue`]:
//! - the destinations it works, each with its share of their limits (open connections, parallel
//!   transactions, a messages-per-minute [`RateLimiter`]) and a FIFO *ready* queue of
//!   entries whose time has come;
//! - one *deferred* index for all of them: a binary heap of compact [`QueueEntry`]s ordered by
//!   next attempt; [`CoreQueue::pop_due`] / [`CoreQueue::promote_due`] move what is due to
//!   the ready queues, [`CoreQueue::next_due`] tells the runtime when to wake up;
//! - the ingest [`Backpressure`] counters: queued messages and bytes against their limits,
//!   consulted by the SMTP session (`accepting() == false` → `452 4.3.1`).
//!
//! **Destination key.** For `mx` routes the recipient domain; for a static route the next
//! hop itself (host, port, TLS mode), whatever the domain. This is Postfix's "nexthop"
//! grouping: limits protect a *receiving host*, so all domains sent through one smarthost
//! share its connection pool and limits, instead of each domain opening its own 20
//! connections to the same machine. (Keying static routes by route + domain would multiply
//! the load on a smarthost by the number of domains.)
//!
//! **Owner.** FNV-1a over the key's canonical bytes, then Lamping–Veach jump consistent
//! hashing onto the core count: stable across runs, builds and Rust versions (unlike
//! `DefaultHasher`), and when the core count changes only `1/n` of the destinations move.
//!
//! **Memory.** An [`QueueEntry`] is 40 octets: queue id (8), next attempt in ms since the epoch
//! (8), recipient set (16: a bitmap of recipient indices 0–63, or a pointer to a boxed list
//! for messages with higher indices), attempt count (2), destination slot (4), padding.
//! Everything else about a deferred message (sender, body, replies) stays in the spool. One
//! million deferred entries take ≈ 40 MB in the heap, ≈ 80 MB at worst just after the
//! heap's vector doubled (the `a_million_deferred_entries` test measures it).
//!
//! **max_age.** Entries carry no arrival time: the queue id's timestamp is the arrival
//! ([`QueueEntry::first_seen`]). [`Destination::next`] expires the front of a ready queue whatever
//! the limits say, and [`CoreQueue::take_expired`] sweeps every ready queue, so a recipient
//! waiting behind a connection limit or a throttle still bounces at its deadline.
//!
//! **Limits.** Destinations per core ([`CoreQueue::new`]'s `destinations_max`), recipient
//! indices below 65,536, attempts saturate at 65,535; entries are bounded by the
//! backpressure limits upstream.
#![forbid(unsafe_code)]

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::envelope::QueueId;

use super::routes::{HopAddr, NextHop, Route, TlsMode};
use super::schedule::{self, RetrySchedule};
use super::spread::Spread;
use super::{from_millis, to_millis};

// ---------------------------------------------------------------------------------------
// Keys and owners

/// What a connection pool and its limits belong to (see the module doc).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum DestinationKey {
    /// `to = "mx"`: the recipient domain, lower-case, without a trailing dot.
    Mx(Box<str>),
    /// A static next hop, shared by every domain routed to it.
    Static { hop: HopAddr, tls: TlsMode },
}

impl DestinationKey {
    pub fn new(route: &Route, domain: &str) -> Self {
        match &route.hop {
            NextHop::Mx => {
                let d = domain.strip_suffix('.').unwrap_or(domain);
                DestinationKey::Mx(d.to_ascii_lowercase().into_boxed_str())
            }
            NextHop::Static(hop) => DestinationKey::Static {
                hop: HopAddr::clone(hop),
                tls: route.tls,
            },
        }
    }

    /// FNV-1a (64-bit) over a canonical encoding: the key's text form with a type tag.
    /// The text is hashed as it is formatted: no allocation per hand-off.
    fn stable_hash(&self) -> u64 {
        use std::fmt::Write as _;
        let mut h = Fnv1a::default();
        // Writing into `Fnv1a` cannot fail.
        let _ = match self {
            DestinationKey::Mx(domain) => write!(h, "mx:{domain}"),
            DestinationKey::Static { hop, tls } => write!(h, "static:{hop}:{tls:?}"),
        };
        h.0
    }
}

/// FNV-1a (64-bit) as a formatting sink.
struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
}

impl std::fmt::Write for Fnv1a {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        const PRIME: u64 = 0x0000_0100_0000_01b3;
        self.0 = s
            .bytes()
            .fold(self.0, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME));
        Ok(())
    }
}

/// `example.com` for an MX destination, `[smtp.example.net:25]` for a static next hop
/// (Postfix's notation for "no MX lookup"): for logs, metrics labels and `relay queue`.
impl std::fmt::Display for DestinationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DestinationKey::Mx(domain) => f.write_str(domain),
            DestinationKey::Static { hop, .. } => write!(f, "[{hop}]"),
        }
    }
}

/// The core (`0..cores`) that owns `key`; 0 when `cores` is 0.
pub fn owner(key: &DestinationKey, cores: usize) -> usize {
    jump_hash(key.stable_hash(), cores)
}

/// Lamping & Veach, "A Fast, Minimal Memory, Consistent Hash Algorithm" (2014).
fn jump_hash(mut key: u64, buckets: usize) -> usize {
    let buckets = i64::try_from(buckets).unwrap_or(i64::MAX);
    let (mut b, mut j): (i64, i64) = (-1, 0);
    while j < buckets {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        let divisor = ((key >> 33) + 1) as f64;
        j = ((b.wrapping_add(1) as f64) * ((1u64 << 31) as f64 / divisor)) as i64;
    }
    usize::try_from(b.max(0)).unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// Entries

/// Recipient indices (into the envelope's recipient list) that share a destination.
/// Sixteen octets: an inline bitmap for indices 0–63 (almost all mail), else a boxed list.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RcptSet {
    Small(u64),
    Large(Box<Vec<u16>>),
}

/// A recipient index that does not fit (the envelope limit keeps them far below).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("recipient index {0} is above 65535")]
pub struct IndexTooLarge(pub usize);

impl RcptSet {
    pub fn from_indices(indices: &[usize]) -> Result<RcptSet, IndexTooLarge> {
        if let Some(&big) = indices.iter().find(|&&i| i > usize::from(u16::MAX)) {
            return Err(IndexTooLarge(big));
        }
        if indices.iter().all(|&i| i < 64) {
            return Ok(RcptSet::Small(
                indices.iter().fold(0u64, |bits, &i| bits | (1u64 << i)),
            ));
        }
        let mut list: Vec<u16> = indices
            .iter()
            .filter_map(|&i| u16::try_from(i).ok())
            .collect();
        list.sort_unstable();
        list.dedup();
        Ok(RcptSet::Large(Box::new(list)))
    }

    /// The indices, ascending.
    pub fn indices(&self) -> Vec<usize> {
        match self {
            RcptSet::Small(bits) => (0..64).filter(|i| bits & (1u64 << i) != 0).collect(),
            RcptSet::Large(list) => list.iter().map(|&i| usize::from(i)).collect(),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            RcptSet::Small(bits) => bits.count_ones() as usize,
            RcptSet::Large(list) => list.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A slot in a core's destination table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DestId(pub u32);

/// One message's recipients for one destination, waiting. Ordered by (next attempt, queue
/// id, destination), so the heap pops the earliest, ties in arrival order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueEntry {
    pub id: QueueId,
    /// Next attempt, ms since the Unix epoch.
    pub due_ms: u64,
    pub recipients: RcptSet,
    /// Attempts made so far (saturating).
    pub attempts: u16,
    pub dest: DestId,
    /// The delay notice for these recipients is settled (sent or not wanted): it goes at most
    /// once, not at every retry. Restored at start from the spool's DSN markers.
    pub delay_noticed: bool,
}

impl QueueEntry {
    pub fn new(id: QueueId, dest: DestId, recipients: RcptSet, due: SystemTime) -> QueueEntry {
        QueueEntry {
            id,
            due_ms: to_millis(due),
            recipients,
            attempts: 0,
            dest,
            delay_noticed: false,
        }
    }

    pub fn due(&self) -> SystemTime {
        from_millis(self.due_ms)
    }

    /// The message's arrival, from its queue id (RFC: the time the spool allocated it).
    pub fn first_seen(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(self.id.micros())
    }

    /// The jitter seed: the queue id, so each message spreads differently and a restart
    /// reproduces the same times.
    pub fn seed(&self) -> u64 {
        self.id.0
    }

    fn order_key(&self) -> (u64, u64, u32) {
        (self.due_ms, self.id.0, self.dest.0)
    }
}

impl Ord for QueueEntry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.order_key()
            .cmp(&other.order_key())
            .then_with(|| self.recipients.cmp(&other.recipients))
            .then_with(|| self.attempts.cmp(&other.attempts))
    }
}

impl PartialOrd for QueueEntry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

// ---------------------------------------------------------------------------------------
// Limits

/// Per-destination limits (`[delivery]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DestinationLimits {
    /// Open connections, idle ones kept for reuse included.
    pub connections_max: u32,
    /// Transactions in flight at once (each needs its own connection).
    pub transactions_max: u32,
    /// Messages started per minute; 0: no limit. Bursts may reach a tenth of it (at least
    /// one), so the rate is smooth rather than a minute's worth at once.
    pub messages_per_minute: u32,
}

impl Default for DestinationLimits {
    fn default() -> Self {
        DestinationLimits {
            // Postfix's default_destination_concurrency_limit.
            connections_max: 20,
            transactions_max: 20,
            // Postfix's default_destination_rate_delay = 0: no rate limit unless asked.
            messages_per_minute: 0,
        }
    }
}

/// A token bucket in its GCRA form (one number of state): `rate` tokens per minute, a burst
/// of up to `burst` at once. Time is injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimiter {
    /// Milliseconds per token; 0: unlimited.
    interval_ms: u64,
    /// How far ahead of `now` the theoretical arrival time may run: (burst − 1) × interval.
    tolerance_ms: u64,
    /// Theoretical arrival time of the next token, ms since the epoch.
    tat_ms: u64,
}

impl RateLimiter {
    /// `per_minute` tokens a minute (0: unlimited), bursts of at most `burst` (at least 1).
    pub fn new(per_minute: u32, burst: u32) -> Self {
        let interval_ms = if per_minute == 0 {
            0
        } else {
            (60_000 / u64::from(per_minute)).max(1)
        };
        RateLimiter {
            interval_ms,
            tolerance_ms: interval_ms.saturating_mul(u64::from(burst.max(1)) - 1),
            tat_ms: 0,
        }
    }

    /// When a token will be there, without taking one: `None` if one is there now.
    pub fn would_wait(&self, now: SystemTime) -> Option<SystemTime> {
        if self.interval_ms == 0 {
            return None;
        }
        let now_ms = to_millis(now);
        let tat = self.tat_ms.max(now_ms);
        (tat - now_ms > self.tolerance_ms).then(|| from_millis(tat - self.tolerance_ms))
    }

    /// Takes one token at `now`, or says when one will be there.
    pub fn try_acquire(&mut self, now: SystemTime) -> Result<(), SystemTime> {
        if self.interval_ms == 0 {
            return Ok(());
        }
        let now_ms = to_millis(now);
        let tat = self.tat_ms.max(now_ms);
        if tat - now_ms > self.tolerance_ms {
            return Err(from_millis(tat - self.tolerance_ms));
        }
        self.tat_ms = tat.saturating_add(self.interval_ms);
        Ok(())
    }

    /// Gives back the token of a send that did not happen. A token taken long ago cannot
    /// raise the burst: [`RateLimiter::try_acquire`] never counts from before `now`.
    pub fn give_back(&mut self) {
        self.tat_ms = self.tat_ms.saturating_sub(self.interval_ms);
    }
}

// ---------------------------------------------------------------------------------------
// Destinations

/// What a destination can do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dispatch {
    /// Start a transaction for this entry (the transaction counter is taken; call
    /// [`Destination::finish`] when it ends).
    Send(QueueEntry),
    /// This entry reached its deadline while waiting: bounce it.
    Expired(QueueEntry),
    /// The rate limit or a remote's "try later" holds the destination until then.
    Throttled { until: SystemTime },
    /// All transaction slots are busy: wait for one to finish.
    AtLimit,
    /// Nothing ready.
    Idle,
}

/// One destination's state on its owning core.
#[derive(Clone, Debug)]
pub struct Destination {
    pub key: DestinationKey,
    pub limits: DestinationLimits,
    ready: VecDeque<QueueEntry>,
    connections: u32,
    transactions: u32,
    rate: RateLimiter,
    /// A remote's 421 or similar: nothing starts before this (ms since the epoch).
    held_until_ms: u64,
    /// Entries of this destination in the core's deferred heap.
    deferred: usize,
}

impl Destination {
    fn new(key: DestinationKey, limits: DestinationLimits) -> Self {
        // Bursts of up to a tenth of the per-minute rate (at least 1): smooth, not lumpy.
        let burst = (limits.messages_per_minute / 10).max(1);
        Destination {
            key,
            limits,
            ready: VecDeque::new(),
            connections: 0,
            transactions: 0,
            rate: RateLimiter::new(limits.messages_per_minute, burst),
            held_until_ms: 0,
            deferred: 0,
        }
    }

    /// The next thing to do at `now`. The front entry's deadline is checked before any
    /// limit, so limits never keep a recipient past `max_age`.
    pub fn next(&mut self, now: SystemTime, schedule: &RetrySchedule) -> Dispatch {
        let Some(front) = self.ready.front() else {
            return Dispatch::Idle;
        };
        if schedule::expired(front.first_seen(), now, schedule) {
            return match self.ready.pop_front() {
                Some(entry) => Dispatch::Expired(entry),
                None => Dispatch::Idle,
            };
        }
        let now_ms = to_millis(now);
        if self.held_until_ms > now_ms {
            return Dispatch::Throttled {
                until: from_millis(self.held_until_ms),
            };
        }
        if self.transactions >= self.limits.transactions_max {
            return Dispatch::AtLimit;
        }
        if let Err(until) = self.rate.try_acquire(now) {
            return Dispatch::Throttled { until };
        }
        match self.ready.pop_front() {
            Some(entry) => {
                self.transactions += 1;
                Dispatch::Send(entry)
            }
            None => Dispatch::Idle,
        }
    }

    /// A transaction started by [`Destination::next`] ended (whatever its outcome).
    pub fn finish(&mut self) {
        self.transactions = self.transactions.saturating_sub(1);
    }

    /// A transaction started by [`Destination::next`] was refused before anything was sent
    /// (a limit outside this core): its rate token comes back, so a limit elsewhere does not
    /// also spend this core's budget.
    pub fn unsent(&mut self) {
        self.rate.give_back();
    }

    /// May another connection be opened?
    pub fn may_connect(&self) -> bool {
        self.connections < self.limits.connections_max
    }

    pub fn connection_opened(&mut self) {
        self.connections = self.connections.saturating_add(1);
    }

    pub fn connection_closed(&mut self) {
        self.connections = self.connections.saturating_sub(1);
    }

    /// Hold the destination until `until` (a remote's 421, a connection failure). A hold
    /// only ever extends: [`schedule::later_of`].
    pub fn hold_until(&mut self, until: SystemTime) {
        self.held_until_ms = to_millis(schedule::later_of(from_millis(self.held_until_ms), until));
    }

    /// Until when nothing may start here (a hold, or the rate limit); `None`: free now. For
    /// the scheduler, so it starts no worker that would find the destination blocked.
    pub fn blocked_until(&self, now: SystemTime) -> Option<SystemTime> {
        let now_ms = to_millis(now);
        if self.held_until_ms > now_ms {
            return Some(from_millis(self.held_until_ms));
        }
        self.rate.would_wait(now)
    }

    /// Lifts a hold (`relay queue flush`: the operator says "try now").
    pub fn release_hold(&mut self) {
        self.held_until_ms = 0;
    }

    pub fn ready_len(&self) -> usize {
        self.ready.len()
    }

    pub fn deferred_len(&self) -> usize {
        self.deferred
    }

    pub fn transactions(&self) -> u32 {
        self.transactions
    }

    pub fn connections(&self) -> u32 {
        self.connections
    }

    fn is_unused(&self) -> bool {
        self.ready.is_empty()
            && self.deferred == 0
            && self.connections == 0
            && self.transactions == 0
    }
}

/// A core's table is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("more than {0} destinations on this core")]
pub struct TooManyDestinations(pub usize);

/// The destinations one core owns, their ready queues and the deferred index.
#[derive(Debug)]
pub struct CoreQueue {
    slots: Vec<Option<Destination>>,
    free: Vec<u32>,
    index: HashMap<DestinationKey, DestId>,
    deferred: BinaryHeap<Reverse<QueueEntry>>,
    /// Where this core's share of each destination's limits comes from.
    spread: Spread,
    /// This core's index, for its shares.
    core: usize,
    destinations_max: usize,
}

impl CoreQueue {
    pub fn new(limits: DestinationLimits, destinations_max: usize) -> Self {
        CoreQueue {
            slots: Vec::new(),
            free: Vec::new(),
            index: HashMap::new(),
            deferred: BinaryHeap::new(),
            spread: Spread::single(limits),
            core: 0,
            destinations_max,
        }
    }

    /// The queue of core `core` among several, each destination with this core's share of
    /// its limits ([`Spread::share`]).
    pub fn spread_over(mut self, spread: Spread, core: usize) -> Self {
        self.spread = spread;
        self.core = core;
        self
    }

    /// The destination for `key`, created with this core's share of the limits if new.
    pub fn destination_id(&mut self, key: DestinationKey) -> Result<DestId, TooManyDestinations> {
        if let Some(&id) = self.index.get(&key) {
            return Ok(id);
        }
        if self.index.len() >= self.destinations_max {
            return Err(TooManyDestinations(self.destinations_max));
        }
        let dest = Destination::new(key.clone(), self.spread.share(&key, self.core));
        let id = match self.free.pop() {
            Some(slot) => {
                if let Some(place) = self.slots.get_mut(slot as usize) {
                    *place = Some(dest);
                }
                DestId(slot)
            }
            None => {
                let slot = u32::try_from(self.slots.len())
                    .map_err(|_| TooManyDestinations(self.destinations_max))?;
                self.slots.push(Some(dest));
                DestId(slot)
            }
        };
        self.index.insert(key, id);
        Ok(id)
    }

    pub fn get(&self, id: DestId) -> Option<&Destination> {
        self.slots.get(id.0 as usize).and_then(Option::as_ref)
    }

    pub fn get_mut(&mut self, id: DestId) -> Option<&mut Destination> {
        self.slots.get_mut(id.0 as usize).and_then(Option::as_mut)
    }

    pub fn lookup(&self, key: &DestinationKey) -> Option<DestId> {
        self.index.get(key).copied()
    }

    /// Queue an entry for its next attempt (`entry.due_ms`): into the deferred index.
    /// An entry for an unknown destination is returned.
    pub fn defer(&mut self, entry: QueueEntry) -> Result<(), QueueEntry> {
        match self.get_mut(entry.dest) {
            Some(dest) => {
                dest.deferred += 1;
                self.deferred.push(Reverse(entry));
                Ok(())
            }
            None => Err(entry),
        }
    }

    /// Queue an entry to go as soon as its destination allows (new mail, a flush).
    pub fn push_ready(&mut self, entry: QueueEntry) -> Result<(), QueueEntry> {
        match self.get_mut(entry.dest) {
            Some(dest) => {
                dest.ready.push_back(entry);
                Ok(())
            }
            None => Err(entry),
        }
    }

    /// The earliest deferred entry if it is due at `now`, taken out of the index.
    pub fn pop_due(&mut self, now: SystemTime) -> Option<QueueEntry> {
        let now_ms = to_millis(now);
        if self.deferred.peek()?.0.due_ms > now_ms {
            return None;
        }
        let Reverse(entry) = self.deferred.pop()?;
        if let Some(dest) = self.get_mut(entry.dest) {
            dest.deferred = dest.deferred.saturating_sub(1);
        }
        Some(entry)
    }

    /// Moves every entry due at `now` to its destination's ready queue; returns the
    /// destinations that got work (each once, in order of first promotion).
    pub fn promote_due(&mut self, now: SystemTime) -> Vec<DestId> {
        let mut woken = Vec::new();
        while let Some(entry) = self.pop_due(now) {
            let id = entry.dest;
            // Cannot fail: a destination with deferred entries is never collected.
            let pushed = self.push_ready(entry);
            debug_assert!(pushed.is_ok(), "deferred entry without its destination");
            if pushed.is_ok() && !woken.contains(&id) {
                woken.push(id);
            }
        }
        woken
    }

    /// When the runtime should next call [`CoreQueue::promote_due`].
    pub fn next_due(&self) -> Option<SystemTime> {
        self.deferred.peek().map(|Reverse(e)| e.due())
    }

    /// Entries in ready queues that reached their deadline at `now`, removed.
    pub fn take_expired(&mut self, now: SystemTime, schedule: &RetrySchedule) -> Vec<QueueEntry> {
        let mut out = Vec::new();
        for dest in self.slots.iter_mut().flatten() {
            if dest
                .ready
                .iter()
                .any(|e| schedule::expired(e.first_seen(), now, schedule))
            {
                let (gone, keep): (VecDeque<QueueEntry>, VecDeque<QueueEntry>) = dest
                    .ready
                    .drain(..)
                    .partition(|e| schedule::expired(e.first_seen(), now, schedule));
                dest.ready = keep;
                out.extend(gone);
            }
        }
        out
    }

    /// A throttle on a destination (a remote's 421 "try in 10 minutes"): its ready entries
    /// go back to the deferred index at the *later* of their own time and `until`, and those
    /// that would wait past their deadline are returned expired. Deferred entries keep their
    /// (later or equal) times; [`Destination::next`] holds the rest.
    pub fn throttle(
        &mut self,
        id: DestId,
        until: SystemTime,
        now: SystemTime,
        schedule: &RetrySchedule,
    ) -> Vec<QueueEntry> {
        let Some(dest) = self.get_mut(id) else {
            return Vec::new();
        };
        dest.hold_until(until);
        let ready: Vec<QueueEntry> = dest.ready.drain(..).collect();
        let mut expired = Vec::new();
        for mut entry in ready {
            match schedule::throttled(
                schedule::NextAttempt::At(entry.due()),
                until,
                entry.first_seen(),
                now,
                schedule,
            ) {
                schedule::NextAttempt::At(at) => {
                    entry.due_ms = to_millis(at);
                    if let Err(entry) = self.defer(entry) {
                        expired.push(entry);
                    }
                }
                schedule::NextAttempt::Expired => expired.push(entry),
            }
        }
        expired
    }

    /// Takes every ready entry of destination `id` (the destination failed as a whole: no
    /// address answered, the greeting refused service, DNS said no).
    pub fn take_ready(&mut self, id: DestId) -> Vec<QueueEntry> {
        match self.get_mut(id) {
            Some(dest) => dest.ready.drain(..).collect(),
            None => Vec::new(),
        }
    }

    /// Visits every queued entry (ready ones first, then the deferred index in no order) with
    /// its destination's key: for `relay queue list` and the metrics.
    pub fn for_each_entry(&self, mut f: impl FnMut(&QueueEntry, &DestinationKey, bool)) {
        for dest in self.slots.iter().flatten() {
            for entry in &dest.ready {
                f(entry, &dest.key, true);
            }
        }
        for Reverse(entry) in &self.deferred {
            if let Some(dest) = self.get(entry.dest) {
                f(entry, &dest.key, false);
            }
        }
    }

    /// The ids of the destinations that have ready entries.
    pub fn with_ready(&self) -> Vec<DestId> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, d)| d.as_ref().is_some_and(|d| !d.ready.is_empty()))
            .filter_map(|(i, _)| u32::try_from(i).ok().map(DestId))
            .collect()
    }

    /// Removes every entry of message `id` (queue delete, queue bounce); returns them.
    pub fn remove_message(&mut self, id: QueueId) -> Vec<QueueEntry> {
        let mut out = Vec::new();
        for dest in self.slots.iter_mut().flatten() {
            if dest.ready.iter().any(|e| e.id == id) {
                let (gone, keep): (VecDeque<QueueEntry>, VecDeque<QueueEntry>) =
                    dest.ready.drain(..).partition(|e| e.id == id);
                dest.ready = keep;
                out.extend(gone);
            }
        }
        out.extend(self.drain_deferred(|e| e.id == id));
        out
    }

    /// `relay queue flush`: deferred entries matching `which` become ready now. Returns how
    /// many moved.
    pub fn flush(&mut self, which: impl Fn(&QueueEntry) -> bool) -> usize {
        let moved = self.drain_deferred(which);
        let n = moved.len();
        for entry in moved {
            // Cannot fail: a destination with deferred entries is never collected.
            let pushed = self.push_ready(entry);
            debug_assert!(pushed.is_ok(), "deferred entry without its destination");
        }
        n
    }

    fn drain_deferred(&mut self, which: impl Fn(&QueueEntry) -> bool) -> Vec<QueueEntry> {
        let all = std::mem::take(&mut self.deferred).into_vec();
        let (gone, keep): (Vec<Reverse<QueueEntry>>, Vec<Reverse<QueueEntry>>) =
            all.into_iter().partition(|Reverse(e)| which(e));
        self.deferred = BinaryHeap::from(keep);
        let gone: Vec<QueueEntry> = gone.into_iter().map(|Reverse(e)| e).collect();
        for e in &gone {
            if let Some(dest) = self.get_mut(e.dest) {
                dest.deferred = dest.deferred.saturating_sub(1);
            }
        }
        gone
    }

    /// Forgets destinations with no entries, connections or transactions; their slots are
    /// reused. Returns how many went.
    pub fn collect_unused(&mut self) -> usize {
        let mut n = 0;
        for (slot, place) in self.slots.iter_mut().enumerate() {
            if place.as_ref().is_some_and(Destination::is_unused) {
                if let Some(dest) = place.take() {
                    self.index.remove(&dest.key);
                    if let Ok(slot) = u32::try_from(slot) {
                        self.free.push(slot);
                    }
                    n += 1;
                }
            }
        }
        n
    }

    pub fn deferred_len(&self) -> usize {
        self.deferred.len()
    }

    pub fn ready_len(&self) -> usize {
        self.slots.iter().flatten().map(|d| d.ready.len()).sum()
    }

    pub fn destinations(&self) -> usize {
        self.index.len()
    }

    /// An estimate of the heap octets this queue holds (entries, their boxed recipient
    /// lists, the destination table), from `size_of` and capacities.
    pub fn memory_estimate(&self) -> usize {
        use std::mem::size_of;
        let boxed = |e: &QueueEntry| match &e.recipients {
            RcptSet::Small(_) => 0,
            RcptSet::Large(list) => size_of::<Vec<u16>>() + list.capacity() * 2,
        };
        let deferred = self.deferred.capacity() * size_of::<Reverse<QueueEntry>>()
            + self
                .deferred
                .iter()
                .map(|Reverse(e)| boxed(e))
                .sum::<usize>();
        let ready: usize = self
            .slots
            .iter()
            .flatten()
            .map(|d| {
                d.ready.capacity() * size_of::<QueueEntry>()
                    + d.ready.iter().map(boxed).sum::<usize>()
            })
            .sum();
        let table = self.slots.capacity() * size_of::<Option<Destination>>()
            + self.index.capacity() * (size_of::<DestinationKey>() + size_of::<DestId>() + 8);
        deferred + ready + table
    }
}

// ---------------------------------------------------------------------------------------
// Backpressure

/// Limits on what is queued (on one core, or for the whole relay: the caller splits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackpressureLimits {
    pub messages_max: u64,
    pub bytes_max: u64,
}

/// Queued messages and bytes against their limits. Ingest asks [`Backpressure::accepting`]
/// before taking a message (`452 4.3.1` when false) and calls [`Backpressure::admit`] when
/// it is spooled; delivery calls [`Backpressure::release`] when its last recipient is done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backpressure {
    limits: BackpressureLimits,
    messages: u64,
    bytes: u64,
}

impl Backpressure {
    pub fn new(limits: BackpressureLimits) -> Self {
        Backpressure {
            limits,
            messages: 0,
            bytes: 0,
        }
    }

    /// Below both limits: new mail may come in.
    pub fn accepting(&self) -> bool {
        self.messages < self.limits.messages_max && self.bytes < self.limits.bytes_max
    }

    /// Would a message of `size` octets (SIZE= or the configured maximum) still fit?
    pub fn would_accept(&self, size: u64) -> bool {
        self.accepting() && self.bytes.saturating_add(size) <= self.limits.bytes_max
    }

    pub fn admit(&mut self, bytes: u64) {
        self.messages = self.messages.saturating_add(1);
        self.bytes = self.bytes.saturating_add(bytes);
    }

    pub fn release(&mut self, bytes: u64) {
        self.messages = self.messages.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(bytes);
    }

    pub fn messages(&self) -> u64 {
        self.messages
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn limits(&self) -> BackpressureLimits {
        self.limits
    }
}

// ---------------------------------------------------------------------------------------
// Resolution

/// Bounds on one resolution: MX hosts looked up (default 10) and addresses returned (default
/// 5, Postfix's `smtp_mx_address_limit`), so a domain with 500 MX records costs 10 lookups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResolveLimits {
    /// MX hosts whose addresses are looked up (the best ones after sorting).
    pub hosts_max: usize,
    /// Addresses in the answer: connection attempts for one delivery.
    pub addresses_max: usize,
}

impl Default for ResolveLimits {
    fn default() -> Self {
        ResolveLimits {
            hosts_max: 10,
            addresses_max: 5,
        }
    }
}

#[cfg(test)]
mod tests;
