//! One core's delivery policy as a state machine: what to start, what to send next, what has
//! expired, which destinations are held, and in which order an attempt's results become
//! durable. The async runtime feeds it events with the time it read and carries out the
//! [`Action`]s it returns; nothing here waits, reads a clock or touches a file.
//!
//! **Entries out of the queue.** An entry leaves the queue for an attempt, an expiry, an
//! operator's removal or a destination-wide failure under a [`Ticket`]. The ticket is
//! settled in one order only: [`Scheduler::settle`] (→ [`Action::StoreNotices`]),
//! [`Scheduler::notices_stored`] (→ [`Action::StoreRecord`]), [`Scheduler::record_stored`]
//! (→ requeue or [`Action::Release`]). A recipient therefore leaves memory only after its
//! result is on disk; a crash before that repeats the attempt (at least once, never lost).
//! A ticket may instead end as [`Scheduler::gone`] (the message left the spool) or
//! [`Scheduler::retry`] (nothing was attempted: back after the first interval).
//!
//! **Ingest gauge.** Every accepted [`Job`] carries its share of the ingest gauge; the
//! scheduler keeps the shares of what it holds ([`Scheduler::held`]) and hands each back
//! exactly once, as [`Action::Release`], whichever way the entry ends.
//!
//! **Rules.** Dispatch: a destination gets a worker per ready entry or running transaction,
//! up to the smaller of its connection and transaction limits, unless held or rate-limited.
//! A destination that failed as a whole takes its ready entries down with the first and, on
//! a temporary failure, is held for the first retry interval; a flush lifts the hold. A
//! destination whose opportunistic TLS failed is reached in plaintext for
//! `tls_failure_hold`. Ready entries are swept for `max_age` once per [`TICK`], and a
//! worker expires what it meets at the front; no entry waits in the deferred index past its
//! deadline.
//!
//! **Notices that cannot be stored yet.** A notice store that fails for a reason that may pass
//! (spool backpressure, a write error) keeps the ticket in its notice step:
//! [`Scheduler::notices_failed`] says when to try again, and after
//! [`Upkeep::notice_attempts_max`] the entry goes back to the queue with nothing recorded
//! (the spool still says "pending", so the attempt and its notice are repeated, also after a
//! restart). The final result is never recorded before its notice.
//!
//! **Reconciliation.** Every way an entry can leave memory without a durable result (a
//! spill, a hand-off given up, an unreadable message at expiry) is counted by the runtime in
//! one shared *dropped* counter. When it moved, [`Scheduler::reconcile_due`] asks for the
//! spool's pending recipients of this core's destinations at most every
//! [`Upkeep::reconcile_every`], and [`Scheduler::reconcile`] takes in those it does not hold.
//! Messages younger than the hand-off patience may still be on their way through the mesh:
//! they are left for the next round.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::envelope::QueueId;

use super::destinations::{
    CoreQueue, DestId, DestinationKey, Dispatch, QueueEntry, RcptSet, TooManyDestinations,
};
use super::schedule::{self, RetrySchedule};
use super::spread::Spread;
use super::{add_saturating, to_millis};

/// The scheduler looks at held and rate-limited destinations at least this often, and
/// sweeps the ready queues for expired entries at most this often.
pub const TICK: Duration = Duration::from_secs(1);
/// How often unused destinations are forgotten and the queue gauges refreshed.
pub const PUBLISH_EVERY: Duration = Duration::from_secs(5);

/// The time of an event, read once by the caller: monotonic for holds and timers, wall
/// clock for the queue's due times and deadlines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    pub mono: Instant,
    pub wall: SystemTime,
}

/// Recipients of one message for one destination, handed to the destination's owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub id: QueueId,
    pub key: DestinationKey,
    /// Indices into the message's remote addresses.
    pub recipients: RcptSet,
    /// When to try; at once for new mail.
    pub due: SystemTime,
    /// Attempts already made (from the spool's records at start).
    pub attempts: u16,
    pub delay_noticed: bool,
    /// Stored size: the job's share of the ingest gauge's bytes.
    pub size: u64,
}

/// Which entries a flush moves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlushFilter {
    All,
    Message(QueueId),
    /// A destination, as printed (`example.com`, `[host:25]`).
    Destination(String),
}

/// One queued entry as a core reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    pub id: QueueId,
    pub destination: String,
    pub recipients: Vec<usize>,
    pub due_unix_ms: u64,
    pub attempts: u16,
    /// Waiting for a connection slot now, rather than for its retry time.
    pub ready: bool,
    /// Out of the queue for an attempt (or its settlement) now: a worker holds it until the
    /// attempt ends, which a next hop that never answers can make last its timeouts.
    pub in_flight: bool,
    pub core: usize,
}

/// What the scheduler is built with.
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// This core's index (for snapshots).
    pub core: usize,
    pub schedule: RetrySchedule,
    /// The destination limits and this core's share of them.
    pub spread: Spread,
    pub destinations_max: usize,
    /// How long a destination whose opportunistic TLS failed is reached in plaintext.
    pub tls_failure_hold: Duration,
    pub upkeep: Upkeep,
}

/// The bounds of what keeps acknowledged mail from getting stuck: hand-off patience, notice
/// retries and the reconciliation (`delivery.handoff_patience`, `notice_retry_interval`,
/// `notice_attempts_max`, `reconcile_interval`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Upkeep {
    /// How long a hand-off waits for room in a full mesh queue before it leaves the
    /// recipients to the reconciliation.
    pub handoff_patience: Duration,
    /// The wait before storing a settlement's notices again after a failure that may pass.
    pub notice_retry: Duration,
    /// Tries to store one settlement's notices before its entry goes back to the queue.
    pub notice_attempts_max: u32,
    /// At most this often, and only after something was dropped, the spool's pending
    /// recipients are compared with what the core holds.
    pub reconcile_every: Duration,
}

impl Default for Upkeep {
    fn default() -> Self {
        Upkeep {
            handoff_patience: Duration::from_secs(30),
            notice_retry: Duration::from_secs(5),
            notice_attempts_max: 12,
            reconcile_every: Duration::from_secs(60),
        }
    }
}

impl Upkeep {
    /// A message younger than this may still be on its way to its owner (a hand-off waiting
    /// for room in the mesh): the reconciliation leaves it for a later round.
    pub fn reconcile_grace(&self) -> Duration {
        self.handoff_patience.saturating_add(self.reconcile_every)
    }
}

/// What [`Scheduler::notices_failed`] decides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NoticeRetry {
    /// Store the notices again after this wait, then call [`Scheduler::notices_stored`] (or
    /// this again).
    After(Duration),
    /// Given up for now: the entry is back in the queue (or spilled) without a record.
    GaveUp(Vec<Action>),
}

/// An entry out of the queue, until it is settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ticket(u64);

/// Why an entry left memory without a result: it stays pending in the spool and is queued
/// again at the next start.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Spill {
    #[error(transparent)]
    TooManyDestinations(#[from] TooManyDestinations),
    #[error("requeue without a destination")]
    NoDestination,
}

/// What the runtime must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Start a connection worker for the destination (already counted as a connection; end
    /// it with [`Scheduler::worker_done`]).
    StartWorker(DestId),
    /// The entry reached `max_age` while waiting: end its recipients as expired and settle
    /// the ticket.
    Expire { ticket: Ticket, entry: QueueEntry },
    /// An operator removed the entry: end its recipients (with a failure notice if
    /// `bounce`) and settle the ticket.
    End {
        ticket: Ticket,
        entry: QueueEntry,
        bounce: bool,
    },
    /// Store the settlement's notices (first durable effect), then call
    /// [`Scheduler::notices_stored`].
    StoreNotices(Ticket),
    /// Store the results record (second), then call [`Scheduler::record_stored`].
    StoreRecord(Ticket),
    /// The entry's remaining recipients wait in the deferred index until `due`.
    Requeued {
        ticket: Ticket,
        id: QueueId,
        due: SystemTime,
    },
    /// An entry left the queue for good: hand its share back to the ingest gauge.
    Release { id: QueueId, bytes: u64 },
    /// A reconciliation job not taken in: hand back the share it was admitted with.
    Unused { bytes: u64 },
    /// An entry could not be kept in memory (logged loudly by the runtime); a
    /// [`Action::Release`] for it follows.
    Spilled {
        id: QueueId,
        destination: Option<DestinationKey>,
        why: Spill,
    },
    /// Forget nothing more; refresh the queue gauges from [`Scheduler::for_each_entry`].
    Publish,
}

/// A call that does not fit the ticket's state (a runtime bug; the entry stays pending in
/// the spool, so nothing is lost).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SchedulerError {
    #[error("no entry out under ticket {0:?}")]
    UnknownTicket(Ticket),
    #[error("ticket {ticket:?}: {event} while {stage}")]
    OutOfOrder {
        ticket: Ticket,
        event: &'static str,
        stage: &'static str,
    },
}

/// Why an entry is out of the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// Taken by a worker to send.
    Attempt,
    /// Taken with a destination that failed as a whole.
    DestinationFailed,
    /// Found past its deadline.
    Expire,
    /// Removed by an operator.
    Remove,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Stage {
    /// Taken; no settlement yet.
    Taken,
    /// Settled; its notices are being stored (`failures`: tries that failed so far).
    Notices {
        requeue: Option<QueueEntry>,
        failures: u32,
    },
    /// Notices stored; the record is being stored.
    Record { requeue: Option<QueueEntry> },
}

impl Stage {
    fn name(&self) -> &'static str {
        match self {
            Stage::Taken => "taken",
            Stage::Notices { .. } => "storing notices",
            Stage::Record { .. } => "storing the record",
        }
    }
}

#[derive(Clone, Debug)]
struct Out {
    entry: QueueEntry,
    /// The destination's key when the entry was taken: it may be collected meanwhile.
    /// (`None` cannot happen: a destination with entries is never collected.)
    key: Option<DestinationKey>,
    purpose: Purpose,
    /// Counted in its destination's transactions until [`Scheduler::transaction_over`].
    transaction: bool,
    stage: Stage,
}

/// How an entry goes back in the deferred index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Requeue {
    /// After a recorded attempt: at its next attempt, never past its deadline.
    Next,
    /// Nothing durable happened (a read or the record failed): after the first interval.
    Retry,
}

/// What this core owes the ingest gauge.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Held {
    pub entries: u64,
    pub bytes: u64,
}

/// One message's shares: its entries on this core and their bytes in total.
#[derive(Clone, Copy, Debug)]
struct Share {
    entries: u64,
    bytes: u64,
}

/// The result of [`Scheduler::poll`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Poll {
    pub actions: Vec<Action>,
    /// Poll again after this long at the latest (or at the next event).
    pub wake: Duration,
}

/// One core's delivery scheduler (see the module doc).
#[derive(Debug)]
pub struct Scheduler {
    config: SchedulerConfig,
    queue: CoreQueue,
    running: bool,
    workers: usize,
    out: HashMap<Ticket, Out>,
    next_ticket: u64,
    shares: HashMap<QueueId, Share>,
    held: Held,
    /// Destinations whose opportunistic TLS failed, until when. Expired marks are swept at
    /// each new mark, so this holds at most the destinations that failed within one hold.
    tls_failed: HashMap<DestinationKey, Instant>,
    /// Dead-destination holds by key, so a hold outlives the collection of its idle
    /// destination (mail arriving meanwhile must still wait). Swept at each new hold.
    holds: HashMap<DestinationKey, SystemTime>,
    swept_at: Option<Instant>,
    published_at: Option<Instant>,
    /// The shared dropped counter as of the last reconciliation.
    reconciled_drops: u64,
    /// The last reconciliation left young messages for later.
    reconcile_again: bool,
    reconciled_at: Option<Instant>,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig) -> Scheduler {
        let queue = CoreQueue::new(config.spread.limits(), config.destinations_max)
            .spread_over(config.spread, config.core);
        Scheduler {
            config,
            queue,
            running: true,
            workers: 0,
            out: HashMap::new(),
            next_ticket: 0,
            shares: HashMap::new(),
            held: Held::default(),
            tls_failed: HashMap::new(),
            holds: HashMap::new(),
            swept_at: None,
            published_at: None,
            reconciled_drops: 0,
            reconcile_again: false,
            reconciled_at: None,
        }
    }

    pub fn schedule(&self) -> &RetrySchedule {
        &self.config.schedule
    }

    /// What this core holds of the ingest gauge: zero when nothing is queued or out.
    pub fn held(&self) -> Held {
        self.held
    }

    /// Stops new workers and new transactions (a drain); settlements go on.
    pub fn stop(&mut self) {
        self.running = false;
    }

    pub fn running(&self) -> bool {
        self.running
    }

    /// Workers running or entries out: a drain waits for both.
    pub fn busy(&self) -> bool {
        self.workers > 0 || !self.out.is_empty()
    }

    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Entries out of the queue under a ticket.
    pub fn out_len(&self) -> usize {
        self.out.len()
    }

    /// The queue (read-only), for gauges and tests.
    pub fn queue(&self) -> &CoreQueue {
        &self.queue
    }

    pub fn destination_key(&self, dest: DestId) -> Option<DestinationKey> {
        self.queue.get(dest).map(|d| d.key.clone())
    }

    /// Visits every queued entry (not those out) with its destination's key.
    pub fn for_each_entry(&self, f: impl FnMut(&QueueEntry, &DestinationKey, bool)) {
        self.queue.for_each_entry(f);
    }

    /// The entries out, with their purpose (for tests and the drain log).
    pub fn for_each_out(&self, mut f: impl FnMut(Ticket, &QueueEntry, Purpose)) {
        for (ticket, out) in &self.out {
            f(*ticket, &out.entry, out.purpose);
        }
    }

    // -----------------------------------------------------------------------------------
    // Hand-offs and the gauge

    /// Takes a hand-off into the queue: ready if due, else deferred (never past its
    /// deadline). Its gauge share is held from now on.
    pub fn accept(&mut self, job: Job, now: Now) -> Vec<Action> {
        let share = self.shares.entry(job.id).or_insert(Share {
            entries: 0,
            bytes: 0,
        });
        share.entries += 1;
        share.bytes = share.bytes.saturating_add(job.size);
        self.held.entries += 1;
        self.held.bytes = self.held.bytes.saturating_add(job.size);
        let mut actions = Vec::new();
        let dest = match self.destination(&job.key) {
            Ok(dest) => dest,
            Err(full) => {
                self.spill(job.id, Some(job.key), full.into(), &mut actions);
                return actions;
            }
        };
        let mut entry = QueueEntry::new(job.id, dest, job.recipients, job.due);
        entry.attempts = job.attempts;
        entry.delay_noticed = job.delay_noticed;
        if self.is_expired(&entry, now) {
            self.expire(entry, &mut actions);
            return actions;
        }
        let pushed = if job.due <= now.wall {
            self.queue.push_ready(entry)
        } else {
            self.defer(entry)
        };
        if let Err(entry) = pushed {
            self.spill(entry.id, Some(job.key), Spill::NoDestination, &mut actions);
        }
        actions
    }

    /// An entry leaves memory without a durable result: the runtime counts it as dropped
    /// (the reconciliation finds it again in the spool) and its share goes back.
    fn spill(
        &mut self,
        id: QueueId,
        destination: Option<DestinationKey>,
        why: Spill,
        actions: &mut Vec<Action>,
    ) {
        actions.push(Action::Spilled {
            id,
            destination,
            why,
        });
        self.release(id, actions);
    }

    /// The destination for `key`, made anew (with its hold, if one is still on) when it was
    /// collected.
    fn destination(&mut self, key: &DestinationKey) -> Result<DestId, TooManyDestinations> {
        if let Some(id) = self.queue.lookup(key) {
            return Ok(id);
        }
        let id = self.queue.destination_id(key.clone())?;
        if let (Some(until), Some(d)) = (self.holds.get(key), self.queue.get_mut(id)) {
            d.hold_until(*until);
        }
        Ok(id)
    }

    fn is_expired(&self, entry: &QueueEntry, now: Now) -> bool {
        schedule::expired(entry.first_seen(), now.wall, &self.config.schedule)
    }

    /// Moves what is due to the ready queues; what is due past its deadline expires at once
    /// instead of waiting for the next sweep.
    fn promote(&mut self, now: Now, actions: &mut Vec<Action>) {
        while let Some(entry) = self.queue.pop_due(now.wall) {
            if self.is_expired(&entry, now) {
                self.expire(entry, actions);
            } else if let Err(entry) = self.queue.push_ready(entry) {
                // A destination with deferred entries is never collected.
                self.spill(entry.id, None, Spill::NoDestination, actions);
            }
        }
    }

    /// Hands back one entry's share of message `id`.
    fn release(&mut self, id: QueueId, actions: &mut Vec<Action>) {
        let Some(share) = self.shares.get_mut(&id) else {
            debug_assert!(false, "release without a share");
            return;
        };
        // The last entry takes the remainder, so the bytes return to exactly zero.
        let bytes = if share.entries <= 1 {
            share.bytes
        } else {
            share.bytes / share.entries
        };
        share.entries = share.entries.saturating_sub(1);
        share.bytes -= bytes;
        if share.entries == 0 {
            self.shares.remove(&id);
        }
        self.held.entries = self.held.entries.saturating_sub(1);
        self.held.bytes = self.held.bytes.saturating_sub(bytes);
        actions.push(Action::Release { id, bytes });
    }

    /// Into the deferred index, never later than the entry's deadline: waiting past it would
    /// expire the entry late.
    fn defer(&mut self, entry: QueueEntry) -> Result<(), QueueEntry> {
        let entry = self.capped(entry);
        self.queue.defer(entry)
    }

    fn capped(&self, mut entry: QueueEntry) -> QueueEntry {
        let deadline = self.config.schedule.deadline(entry.first_seen());
        entry.due_ms = entry.due_ms.min(to_millis(deadline));
        entry
    }

    // -----------------------------------------------------------------------------------
    // The loop

    /// One pass of the core's loop: forget unused destinations (every [`PUBLISH_EVERY`]),
    /// promote what is due, sweep expired ready entries (every [`TICK`]), start workers.
    pub fn poll(&mut self, now: Now) -> Poll {
        let mut actions = Vec::new();
        if self
            .published_at
            .is_none_or(|at| now.mono.saturating_duration_since(at) >= PUBLISH_EVERY)
        {
            // With MX routing every recipient domain is a destination: forget the idle ones.
            self.queue.collect_unused();
            self.published_at = Some(now.mono);
            actions.push(Action::Publish);
        }
        self.promote(now, &mut actions);
        // The sweep walks every ready entry: once a tick, not on every wake-up (a wake-up
        // per finished transaction would make it quadratic in a long ready queue).
        if self
            .swept_at
            .is_none_or(|at| now.mono.saturating_duration_since(at) >= TICK)
        {
            self.swept_at = Some(now.mono);
            for entry in self.queue.take_expired(now.wall, &self.config.schedule) {
                self.expire(entry, &mut actions);
            }
        }
        self.dispatch(now, &mut actions);
        let wait = self.queue.next_due().map_or(TICK, |due| {
            due.duration_since(now.wall).unwrap_or_default().min(TICK)
        });
        Poll {
            actions,
            wake: wait,
        }
    }

    fn take(&mut self, entry: QueueEntry, purpose: Purpose, transaction: bool) -> Ticket {
        let ticket = Ticket(self.next_ticket);
        self.next_ticket += 1;
        let key = self.queue.get(entry.dest).map(|d| d.key.clone());
        self.out.insert(
            ticket,
            Out {
                entry,
                key,
                purpose,
                transaction,
                stage: Stage::Taken,
            },
        );
        ticket
    }

    fn expire(&mut self, entry: QueueEntry, actions: &mut Vec<Action>) {
        let ticket = self.take(entry.clone(), Purpose::Expire, false);
        actions.push(Action::Expire { ticket, entry });
    }

    /// Starts workers where ready entries wait and limits allow.
    fn dispatch(&mut self, now: Now, actions: &mut Vec<Action>) {
        if !self.running {
            return;
        }
        for id in self.queue.with_ready() {
            let Some(dest) = self.queue.get_mut(id) else {
                continue;
            };
            // Held or rate-limited: a worker would find nothing to send; the next tick
            // looks again.
            if dest.blocked_until(now.wall).is_some() {
                continue;
            }
            let limit = dest
                .limits
                .connections_max
                .min(dest.limits.transactions_max);
            let wanted =
                (dest.ready_len() as u64 + u64::from(dest.transactions())).min(u64::from(limit));
            while u64::from(dest.connections()) < wanted {
                dest.connection_opened();
                self.workers += 1;
                actions.push(Action::StartWorker(id));
            }
        }
    }

    // -----------------------------------------------------------------------------------
    // Workers

    /// The next entry a worker of `dest` may send now (its transaction counted), expiring
    /// what waited too long at the front; `None` when the worker should quit.
    pub fn take_next(
        &mut self,
        dest: DestId,
        now: Now,
    ) -> (Option<(Ticket, QueueEntry)>, Vec<Action>) {
        let mut actions = Vec::new();
        if !self.running {
            return (None, actions);
        }
        loop {
            let Some(d) = self.queue.get_mut(dest) else {
                return (None, actions);
            };
            match d.next(now.wall, &self.config.schedule) {
                Dispatch::Send(entry) => {
                    let ticket = self.take(entry.clone(), Purpose::Attempt, true);
                    return (Some((ticket, entry)), actions);
                }
                Dispatch::Expired(entry) => self.expire(entry, &mut actions),
                Dispatch::Throttled { .. } | Dispatch::AtLimit | Dispatch::Idle => {
                    return (None, actions)
                }
            }
        }
    }

    /// The transaction of an attempt is over (its settlement may still run).
    pub fn transaction_over(&mut self, ticket: Ticket) {
        let Some(out) = self.out.get_mut(&ticket) else {
            return;
        };
        if std::mem::take(&mut out.transaction) {
            if let Some(d) = self.queue.get_mut(out.entry.dest) {
                d.finish();
            }
        }
    }

    /// A worker of `dest` ended.
    pub fn worker_done(&mut self, dest: DestId) {
        if let Some(d) = self.queue.get_mut(dest) {
            d.connection_closed();
        }
        self.workers = self.workers.saturating_sub(1);
    }

    /// The destination of `ticket` failed as a whole (DNS said no, no address answered, the
    /// greeting refused service): its ready entries are taken too, to end the same way, and
    /// a `temporary` failure holds the destination for the first retry interval, so a dead
    /// host costs one connection attempt, not one per message.
    pub fn fail_destination(
        &mut self,
        ticket: Ticket,
        temporary: bool,
        now: Now,
    ) -> Result<Vec<(Ticket, QueueEntry)>, SchedulerError> {
        let dest = self.stage_of(ticket, "destination failed")?.entry.dest;
        self.transaction_over(ticket);
        let mut taken = Vec::new();
        for entry in self.queue.take_ready(dest) {
            let t = self.take(entry.clone(), Purpose::DestinationFailed, false);
            taken.push((t, entry));
        }
        if temporary {
            let until = add_saturating(now.wall, self.config.schedule.base_interval(1));
            if let Some(d) = self.queue.get_mut(dest) {
                d.hold_until(until);
                self.holds.retain(|_, u| *u > now.wall);
                let held = self.holds.entry(d.key.clone()).or_insert(until);
                *held = schedule::later_of(*held, until);
            }
        }
        Ok(taken)
    }

    fn stage_of(&self, ticket: Ticket, event: &'static str) -> Result<&Out, SchedulerError> {
        let out = self
            .out
            .get(&ticket)
            .ok_or(SchedulerError::UnknownTicket(ticket))?;
        match out.stage {
            Stage::Taken => Ok(out),
            ref stage => Err(SchedulerError::OutOfOrder {
                ticket,
                event,
                stage: stage.name(),
            }),
        }
    }

    // -----------------------------------------------------------------------------------
    // TLS

    /// Should connections to `key` skip STARTTLS (its opportunistic TLS failed lately)?
    pub fn tls_held(&self, key: &DestinationKey, now: Instant) -> bool {
        self.tls_failed.get(key).is_some_and(|until| now < *until)
    }

    /// The opportunistic TLS handshake with `key` failed: plaintext for the hold.
    pub fn tls_failed(&mut self, key: &DestinationKey, now: Instant) {
        let hold = self.config.tls_failure_hold;
        if hold.is_zero() {
            return;
        }
        self.tls_failed.retain(|_, until| *until > now);
        let until = now.checked_add(hold).unwrap_or(now);
        self.tls_failed.insert(key.clone(), until);
    }

    // -----------------------------------------------------------------------------------
    // Settling a ticket, in the durable order

    /// The attempt's outcome is known: `requeue` holds the recipients still to deliver (with
    /// their next attempt), `None` when every recipient is final. Its notices come first.
    pub fn settle(
        &mut self,
        ticket: Ticket,
        requeue: Option<QueueEntry>,
    ) -> Result<Action, SchedulerError> {
        self.stage_of(ticket, "settle")?;
        self.transaction_over(ticket);
        if let Some(out) = self.out.get_mut(&ticket) {
            out.stage = Stage::Notices {
                requeue,
                failures: 0,
            };
        }
        Ok(Action::StoreNotices(ticket))
    }

    /// Storing the notices failed for a reason that may pass: try again after
    /// [`Upkeep::notice_retry`], up to [`Upkeep::notice_attempts_max`] tries; then (or when
    /// draining) the entry goes back to the queue after the first interval without a record,
    /// so the attempt and its notices are repeated rather than the result recorded alone.
    pub fn notices_failed(
        &mut self,
        ticket: Ticket,
        now: Now,
    ) -> Result<NoticeRetry, SchedulerError> {
        let upkeep = self.config.upkeep;
        let running = self.running;
        let out = self
            .out
            .get_mut(&ticket)
            .ok_or(SchedulerError::UnknownTicket(ticket))?;
        let Stage::Notices { failures, .. } = &mut out.stage else {
            return Err(SchedulerError::OutOfOrder {
                ticket,
                event: "notices failed",
                stage: out.stage.name(),
            });
        };
        *failures = failures.saturating_add(1);
        if running && *failures < upkeep.notice_attempts_max {
            return Ok(NoticeRetry::After(upkeep.notice_retry));
        }
        let mut actions = Vec::new();
        if let Some(out) = self.out.remove(&ticket) {
            self.retry_entry(ticket, out, now, &mut actions);
        }
        Ok(NoticeRetry::GaveUp(actions))
    }

    /// Settlements whose notices failed at least once and are waiting to be tried again.
    pub fn notices_waiting(&self) -> usize {
        self.out
            .values()
            .filter(|o| matches!(o.stage, Stage::Notices { failures, .. } if failures > 0))
            .count()
    }

    /// The notices are stored (or given up on, each logged): the record comes next.
    pub fn notices_stored(&mut self, ticket: Ticket) -> Result<Action, SchedulerError> {
        let out = self
            .out
            .get_mut(&ticket)
            .ok_or(SchedulerError::UnknownTicket(ticket))?;
        match std::mem::replace(&mut out.stage, Stage::Taken) {
            Stage::Notices { requeue, .. } => {
                out.stage = Stage::Record { requeue };
                Ok(Action::StoreRecord(ticket))
            }
            stage => {
                let name = stage.name();
                out.stage = stage;
                Err(SchedulerError::OutOfOrder {
                    ticket,
                    event: "notices stored",
                    stage: name,
                })
            }
        }
    }

    /// The record was written (`stored`) or not. Only a stored record lets the entry go or
    /// move on; without it the spool still says "pending", so the whole entry is tried again
    /// after the first interval.
    pub fn record_stored(
        &mut self,
        ticket: Ticket,
        stored: bool,
        now: Now,
    ) -> Result<Vec<Action>, SchedulerError> {
        let out = self
            .out
            .get(&ticket)
            .ok_or(SchedulerError::UnknownTicket(ticket))?;
        let Stage::Record { requeue } = &out.stage else {
            return Err(SchedulerError::OutOfOrder {
                ticket,
                event: "record stored",
                stage: out.stage.name(),
            });
        };
        let requeue = requeue.clone();
        let Some(out) = self.out.remove(&ticket) else {
            return Err(SchedulerError::UnknownTicket(ticket));
        };
        let mut actions = Vec::new();
        if !stored {
            self.retry_entry(ticket, out, now, &mut actions);
            return Ok(actions);
        }
        self.end_transaction(&out);
        match requeue {
            Some(next) => self.requeue(ticket, next, &out.key, Requeue::Next, now, &mut actions),
            None => self.release(out.entry.id, &mut actions),
        }
        Ok(actions)
    }

    /// The message is no longer in the spool (deleted, or every recipient final): the entry
    /// is dropped and its share released.
    pub fn gone(&mut self, ticket: Ticket) -> Result<Vec<Action>, SchedulerError> {
        self.stage_of(ticket, "gone")?;
        let mut actions = Vec::new();
        if let Some(out) = self.out.remove(&ticket) {
            self.end_transaction(&out);
            self.release(out.entry.id, &mut actions);
        }
        Ok(actions)
    }

    /// Nothing was attempted (the message could not be read): back in the deferred index
    /// after the first interval, without a record.
    pub fn retry(&mut self, ticket: Ticket, now: Now) -> Result<Vec<Action>, SchedulerError> {
        self.stage_of(ticket, "retry")?;
        let mut actions = Vec::new();
        if let Some(out) = self.out.remove(&ticket) {
            self.retry_entry(ticket, out, now, &mut actions);
        }
        Ok(actions)
    }

    /// A limit outside this core refused the attempt of `ticket` before anything was sent
    /// (the cluster's shared destination throttles): the entry goes back to the deferred
    /// index due `wait` from now, its attempts unchanged. `hold`: the limit is the
    /// destination's as a whole (its message rate), so it is held until then too and its
    /// workers stop taking; otherwise (a connection slot) only when this worker was the
    /// destination's last connection here, so open connections keep sending.
    pub fn throttled(
        &mut self,
        ticket: Ticket,
        wait: Duration,
        hold: bool,
        now: Now,
    ) -> Result<Vec<Action>, SchedulerError> {
        self.stage_of(ticket, "throttled")?;
        let mut actions = Vec::new();
        let Some(out) = self.out.remove(&ticket) else {
            return Err(SchedulerError::UnknownTicket(ticket));
        };
        self.end_transaction(&out);
        let until = add_saturating(now.wall, wait);
        if let Some(d) = self.queue.get_mut(out.entry.dest) {
            if out.transaction {
                d.unsent();
            }
            if hold || d.connections() <= 1 {
                d.hold_until(until);
            }
        }
        let mut again = out.entry;
        again.due_ms = to_millis(schedule::later_of(again.due(), until));
        self.requeue(ticket, again, &out.key, Requeue::Retry, now, &mut actions);
        Ok(actions)
    }

    fn retry_entry(&mut self, ticket: Ticket, out: Out, now: Now, actions: &mut Vec<Action>) {
        self.end_transaction(&out);
        let mut again = out.entry;
        let wait = self.config.schedule.interval(1, again.seed());
        again.due_ms = to_millis(add_saturating(now.wall, wait));
        self.requeue(ticket, again, &out.key, Requeue::Retry, now, actions);
    }

    fn end_transaction(&mut self, out: &Out) {
        if out.transaction {
            if let Some(d) = self.queue.get_mut(out.entry.dest) {
                d.finish();
            }
        }
    }

    /// Puts an entry back under its destination, making the destination anew if it was
    /// collected meanwhile. Only a full destination table loses it from memory.
    fn requeue(
        &mut self,
        ticket: Ticket,
        mut entry: QueueEntry,
        key: &Option<DestinationKey>,
        how: Requeue,
        now: Now,
        actions: &mut Vec<Action>,
    ) {
        if self.queue.get(entry.dest).map(|d| &d.key) != key.as_ref() {
            let Some(key) = key else {
                self.spill(entry.id, None, Spill::NoDestination, actions);
                return;
            };
            match self.destination(key) {
                Ok(dest) => entry.dest = dest,
                Err(full) => {
                    self.spill(entry.id, Some(key.clone()), full.into(), actions);
                    return;
                }
            }
        }
        let entry = match how {
            Requeue::Next if self.is_expired(&entry, now) => {
                // Its deadline passed while it was out: it expires now, not at the next sweep.
                self.expire(entry, actions);
                return;
            }
            Requeue::Next => self.capped(entry),
            // After a failed read or write the entry waits the whole first interval, expiry
            // included: ending it needs the spool that just failed.
            Requeue::Retry => entry,
        };
        let (id, due) = (entry.id, entry.due());
        match self.queue.defer(entry) {
            Ok(()) => actions.push(Action::Requeued { ticket, id, due }),
            Err(entry) => self.spill(entry.id, key.clone(), Spill::NoDestination, actions),
        }
    }

    // -----------------------------------------------------------------------------------
    // Reconciliation

    /// Should the runtime read the spool's pending recipients now? Only when the shared
    /// dropped counter moved since the last round (or that round left young messages), and
    /// at most every [`Upkeep::reconcile_every`]: with nothing dropped this costs a compare.
    pub fn reconcile_due(&self, dropped: u64, now: Now) -> bool {
        self.running
            && (dropped != self.reconciled_drops || self.reconcile_again)
            && self.reconciled_at.is_none_or(|at| {
                now.mono.saturating_duration_since(at) >= self.config.upkeep.reconcile_every
            })
    }

    /// One reconciliation round. `durable`: the spool's pending recipients of this core's
    /// destinations, one job per message and destination, read after `dropped` was. What
    /// this core holds (queued or out) is left out; the rest is taken in as new hand-offs
    /// (each job carries its share of the ingest gauge, handed back here when not taken).
    /// Messages younger than [`Upkeep::reconcile_grace`] may still be on their way: left for
    /// the next round. Returns the recipients taken in and the actions.
    pub fn reconcile(&mut self, dropped: u64, durable: Vec<Job>, now: Now) -> (usize, Vec<Action>) {
        self.reconciled_drops = dropped;
        self.reconciled_at = Some(now.mono);
        self.reconcile_again = false;
        let mut held: HashMap<(QueueId, DestinationKey), Vec<usize>> = HashMap::new();
        self.queue.for_each_entry(|e, key, _| {
            held.entry((e.id, key.clone()))
                .or_default()
                .extend(e.recipients.indices());
        });
        for out in self.out.values() {
            if let Some(key) = &out.key {
                held.entry((out.entry.id, key.clone()))
                    .or_default()
                    .extend(out.entry.recipients.indices());
            }
        }
        let grace = self.config.upkeep.reconcile_grace();
        let mut taken = 0;
        let mut actions = Vec::new();
        let mut unused: Vec<u64> = Vec::new();
        for mut job in durable {
            let known = held.get(&(job.id, job.key.clone()));
            let missing: Vec<usize> = job
                .recipients
                .indices()
                .into_iter()
                .filter(|i| known.is_none_or(|k| !k.contains(i)))
                .collect();
            let arrived = UNIX_EPOCH + Duration::from_micros(job.id.micros());
            let young = now
                .wall
                .duration_since(arrived)
                .map_or(true, |age| age < grace);
            if missing.is_empty() || young {
                self.reconcile_again |= !missing.is_empty();
                unused.push(job.size);
                continue;
            }
            let Ok(recipients) = RcptSet::from_indices(&missing) else {
                unused.push(job.size);
                continue;
            };
            taken += recipients.len();
            job.recipients = recipients;
            actions.extend(self.accept(job, now));
        }
        // Not taken: their gauge shares go straight back.
        for bytes in unused {
            actions.push(Action::Unused { bytes });
        }
        (taken, actions)
    }

    // -----------------------------------------------------------------------------------
    // Operator commands

    /// `relay queue flush`: matching deferred entries become ready now, and the matching
    /// destinations' holds are lifted (the operator says "try now"). Returns how many moved.
    pub fn flush(&mut self, which: &FlushFilter, now: Now) -> (usize, Vec<Action>) {
        let mut dests: Vec<DestId> = Vec::new();
        self.queue.for_each_entry(|e, key, _| {
            let hit = match which {
                FlushFilter::All => true,
                FlushFilter::Message(id) => e.id == *id,
                FlushFilter::Destination(d) => key.to_string().eq_ignore_ascii_case(d),
            };
            if hit && !dests.contains(&e.dest) {
                dests.push(e.dest);
            }
        });
        for dest in &dests {
            if let Some(d) = self.queue.get_mut(*dest) {
                d.release_hold();
                self.holds.remove(&d.key);
            }
        }
        let moved = self.queue.flush(|e| match which {
            FlushFilter::All => true,
            FlushFilter::Message(id) => e.id == *id,
            FlushFilter::Destination(_) => dests.contains(&e.dest),
        });
        // An entry due past its deadline but not promoted yet expires now rather than wait
        // in a ready queue for the next sweep (a flush is rare: the walk is cheap enough).
        let mut actions = Vec::new();
        for entry in self.queue.take_expired(now.wall, &self.config.schedule) {
            self.expire(entry, &mut actions);
        }
        (moved, actions)
    }

    /// `relay queue delete|bounce`: every queued entry of message `id` leaves the queue to
    /// be ended ([`Action::End`]); entries out for an attempt are not touched.
    pub fn remove(&mut self, id: QueueId, bounce: bool) -> Vec<Action> {
        let entries = self.queue.remove_message(id);
        let mut actions = Vec::new();
        for entry in entries {
            // Taken out of the queue, its destination is still in the table.
            let ticket = self.take(entry.clone(), Purpose::Remove, false);
            actions.push(Action::End {
                ticket,
                entry,
                bounce,
            });
        }
        actions
    }

    /// `relay node drain`: every queued entry of message `id` leaves this core's queue
    /// without a record (the drainer hands the message to a peer and records that itself).
    /// Returns the entries taken, whether an entry of `id` is out for an attempt now (the
    /// drainer waits for it), and the gauge releases.
    pub fn withdraw(&mut self, id: QueueId) -> (usize, bool, Vec<Action>) {
        let entries = self.queue.remove_message(id);
        let mut actions = Vec::new();
        for entry in &entries {
            self.release(entry.id, &mut actions);
        }
        let out = self.out.values().any(|o| o.entry.id == id);
        (entries.len(), out, actions)
    }

    /// What this core holds: its queued entries, then those out for an attempt, an expiry
    /// or a removal (`in_flight`). Entries out are listed too: left out, a recipient whose
    /// attempt hangs on a silent next hop looked as if no core held it.
    pub fn snapshot(&self) -> Vec<Queued> {
        let mut list = Vec::new();
        self.queue.for_each_entry(|e, key, ready| {
            list.push(Queued {
                id: e.id,
                destination: key.to_string(),
                recipients: e.recipients.indices(),
                due_unix_ms: e.due_ms,
                attempts: e.attempts,
                ready,
                in_flight: false,
                core: self.config.core,
            });
        });
        let mut out: Vec<(&Ticket, &Out)> = self.out.iter().collect();
        out.sort_by_key(|(t, _)| **t);
        for (_, o) in out {
            let Some(key) = &o.key else { continue };
            list.push(Queued {
                id: o.entry.id,
                destination: key.to_string(),
                recipients: o.entry.recipients.indices(),
                due_unix_ms: o.entry.due_ms,
                attempts: o.entry.attempts,
                ready: false,
                in_flight: true,
                core: self.config.core,
            });
        }
        list
    }
}

#[cfg(test)]
mod tests;
