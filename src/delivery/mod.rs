//! Outbound delivery on each core: the seed document's "MTA client" that works the spool's
//! queue (issue 4). The decisions live in [`crate::queue`] (schedule, routes, resolution,
//! outcomes, notices) and [`crate::smtp::client`] (the protocol); this module owns the time,
//! the sockets and the order of durable effects.
//!
//! **Shape.** Every remote recipient belongs to a *destination* (its route's next hop, or its
//! domain for MX routes), and every destination to one core ([`crate::queue::owner`]). Ingest
//! on any core hands "recipients R of message M" to the owner through the [`mesh`]; the owner
//! keeps them in its [`CoreQueue`] (a compact entry each, nothing else in memory) and runs:
//! - one scheduler task ([`run`]): takes hand-offs and operator commands, promotes what is
//!   due, expires what waited past `max_age`, and starts connection workers;
//! - worker tasks ([`worker`]), at most `destination_connections_max` per destination: each
//!   takes its first entry *before* connecting (so a throttled or idle destination opens
//!   nothing), resolves, connects, then sends entry after entry over the same connection
//!   (RSET between, by the client) until the destination has nothing ready, and QUITs.
//!
//! **Durability order** for each attempt ([`Core::apply`]): (1) each notice (DSN) is stored
//! as a new message and committed; (2) one record with every recipient's result and the
//! notices' markers is committed; (3) only then is the entry requeued or released. A crash
//! before (2) leaves the recipients pending: they are tried again after the restart (a
//! duplicate delivery or notice is possible for that one attempt, a loss is not).
//!
//! **A destination that fails as a whole** (DNS says no, no address accepts a connection, the
//! greeting refuses service) takes all its ready entries down with the first: each gets its
//! own result and retry time, and the destination is held for the first retry interval, so a
//! dead host costs one connection attempt, not one per message (Postfix's dead-destination
//! rule).
//!
//! **TLS.** Each connection asks for STARTTLS as its route's `tls` says (see [`worker`]);
//! the rustls configurations are built once ([`DeliveryShared::client_tls`]). A destination
//! whose opportunistic handshake failed is remembered by its owning core for
//! `delivery.tls_failure_hold`, and reached in plaintext meanwhile.
//!
//! **Shutdown.** Draining stops new workers and new transactions; a transaction in flight may
//! finish. Stopping shuts every connection at once: the client reports the recipients
//! deferred, and their records are written before the spool closes.

pub mod control;
pub mod mesh;
mod notices;
pub mod resolve;
mod worker;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{watch, Notify};

pub use mesh::{Control, FlushFilter, Job, Mesh, QueueGauge, Queued};

use crate::envelope::QueueId;
use crate::mailbox::MailStore;
use crate::net::dns::SystemResolver;
use crate::net::io::Connector;
use crate::queue::outcome::{self, Settlement};
use crate::queue::ResolveLimits;
use crate::queue::{
    owner, CoreQueue, DestId, DestinationKey, DestinationLimits, Dispatch, DsnPolicy, QueueEntry,
    RcptSet, RetrySchedule, Routes,
};
use crate::runtime::Phase;
use crate::smtp::client::ClientConfig;
use crate::smtp::reply::Reply;
use crate::smtp::Mailboxes;
use crate::spool::{DeliveryRecord, Outcome, ShardHandle, Spool, StoredMessage};

/// How long a hand-off may wait for room in a full mesh queue before it gives up: the
/// message stays pending in the spool and is queued at the next start (logged loudly).
const HANDOFF_PATIENCE: Duration = Duration::from_secs(30);
/// The scheduler looks at held and rate-limited destinations at least this often.
const TICK: Duration = Duration::from_secs(1);
/// Results in one spool record at most (a dead destination with a long queue).
const RESULTS_PER_RECORD: usize = 1000;

/// What every core's delivery side shares; built once by the server.
pub struct DeliveryShared {
    pub mesh: Arc<Mesh>,
    pub routes: Routes,
    pub schedule: RetrySchedule,
    pub dsn_policy: DsnPolicy,
    pub dsn_return_max: usize,
    pub resolve_limits: ResolveLimits,
    pub destination_limits: DestinationLimits,
    pub destinations_max: usize,
    pub client: Arc<ClientConfig>,
    pub connect_timeout: Duration,
    /// The rustls configurations for STARTTLS (`tls::client`).
    pub client_tls: crate::net::tls::ClientTls,
    /// `tls.handshake_timeout`: bounds each outbound TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// `delivery.tls_failure_hold`: how long a destination whose opportunistic handshake
    /// failed is sent to in plaintext.
    pub tls_failure_hold: Duration,
    /// `server.dns_servers` (empty: `/etc/resolv.conf`).
    pub dns_servers: Vec<std::net::SocketAddr>,
    /// Our host name: DSN Reporting-MTA, and the MX loop check.
    pub hostname: String,
    pub local_domains: Vec<String>,
    /// Local mailboxes, for notices to a local sender.
    pub mailboxes: Option<Mailboxes>,
    /// Per-destination queue gauges (`None` in tests without metrics).
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl DeliveryShared {
    pub fn cores(&self) -> usize {
        self.mesh.cores()
    }

    /// The destination of one remote address.
    pub fn destination(&self, address: &str) -> DestinationKey {
        let domain = address.rsplit_once('@').map_or("", |(_, d)| d);
        DestinationKey::new(&self.routes.route(domain), domain)
    }

    /// The message's remote addresses at `indices`, grouped by destination (first-seen
    /// order, so a message's destinations are handed off in address order).
    pub fn group(
        &self,
        remote: &[String],
        indices: impl IntoIterator<Item = usize>,
    ) -> Vec<(DestinationKey, Vec<usize>)> {
        let mut groups: Vec<(DestinationKey, Vec<usize>)> = Vec::new();
        for index in indices {
            let Some(address) = remote.get(index) else {
                continue;
            };
            let key = self.destination(address);
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, list)) => list.push(index),
                None => groups.push((key, vec![index])),
            }
        }
        groups
    }

    pub fn is_local_domain(&self, address: &str) -> bool {
        let domain = address.rsplit_once('@').map_or("", |(_, d)| d);
        self.local_domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(domain))
    }
}

/// Queues a newly stored message's remote recipients with their owners. Waits while an
/// owner's queue is full (the client's 250 waits with it); after [`HANDOFF_PATIENCE`] the
/// recipients stay in the spool for the next start and the error is logged.
pub async fn enqueue_new(
    shared: &DeliveryShared,
    from: usize,
    id: QueueId,
    remote: &[String],
    size: u64,
) {
    let now = SystemTime::now();
    for (key, indices) in shared.group(remote, 0..remote.len()) {
        let Ok(recipients) = RcptSet::from_indices(&indices) else {
            tracing::error!(queue_id = %id, "recipient index out of range; left in the spool");
            continue;
        };
        let to = owner(&key, shared.cores());
        let job = Job {
            id,
            key,
            recipients,
            due: now,
            attempts: 0,
            delay_noticed: false,
            size,
        };
        shared.mesh.gauge.admit(size);
        if let Err(job) = handoff(shared, from, to, job).await {
            shared.mesh.gauge.release(size);
            tracing::error!(
                queue_id = %job.id,
                destination = %job.key,
                core = to,
                "delivery queue full for {HANDOFF_PATIENCE:?}; recipients stay in the spool and are queued at the next start"
            );
        }
    }
}

async fn handoff(shared: &DeliveryShared, from: usize, to: usize, mut job: Job) -> Result<(), Job> {
    let started = std::time::Instant::now();
    let mut pause = Duration::from_micros(200);
    loop {
        match shared.mesh.send(from, to, job) {
            Ok(()) => return Ok(()),
            Err(back) if started.elapsed() < HANDOFF_PATIENCE => {
                job = back;
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(back) => return Err(back),
        }
    }
}

/// The queue to rebuild at start: one live message's pending remote recipients, grouped by
/// destination and by what their last attempt said (attempts, next try), appended to their
/// owners' lists.
pub fn jobs_from_live(
    shared: &DeliveryShared,
    message: &crate::spool::LiveMessage<'_>,
    per_core: &mut [Vec<Job>],
) {
    let remote: Vec<String> = message
        .remote
        .iter()
        .map(|r| r.address.to_string())
        .collect();
    // Group by (attempts, next attempt) first: recipients retried together stay together.
    let mut batches: Vec<RetryBatch> = Vec::new();
    for (index, r) in message.remote.iter().enumerate() {
        if r.done {
            continue;
        }
        let key = (r.attempts, r.next_attempt_unix_micros);
        match batches.iter_mut().find(|(k, _)| *k == key) {
            Some((_, list)) => list.push(index),
            None => batches.push((key, vec![index])),
        }
    }
    for ((attempts, next), indices) in batches {
        for (key, group) in shared.group(&remote, indices) {
            let Ok(recipients) = RcptSet::from_indices(&group) else {
                continue;
            };
            let delay_noticed = group
                .iter()
                .any(|&i| message.remote.get(i).is_some_and(|r| r.delay_noticed));
            let due = next.map_or(SystemTime::now(), |us| {
                UNIX_EPOCH + Duration::from_micros(us)
            });
            let core = owner(&key, shared.cores());
            shared.mesh.gauge.admit(message.body_len);
            if let Some(list) = per_core.get_mut(core) {
                list.push(Job {
                    id: message.id,
                    key,
                    recipients,
                    due,
                    attempts: u16::try_from(attempts).unwrap_or(u16::MAX),
                    delay_noticed,
                    size: message.body_len,
                });
            }
        }
    }
}

/// Pending recipients of one message that share (attempts, next attempt).
type RetryBatch = ((u32, Option<u64>), Vec<usize>);

/// One core's delivery side (single-threaded: `Rc`, `RefCell`).
pub struct Core<C: Connector> {
    pub index: usize,
    pub shared: Arc<DeliveryShared>,
    queue: RefCell<CoreQueue>,
    connector: C,
    /// `None` when the system resolver could not be set up: MX destinations defer.
    resolver: Option<SystemResolver>,
    /// This core's spool writer: results and notices go here.
    spool: ShardHandle,
    store: Arc<Spool>,
    mail_store: Arc<MailStore>,
    phase: watch::Receiver<Phase>,
    workers: Cell<usize>,
    /// Wakes the scheduler: a worker ended, a transaction finished.
    kick: Notify,
    metrics: Option<crate::metrics::CoreMetrics>,
    /// Destinations published to the per-destination gauges last time (to clear the gone).
    published: RefCell<Vec<String>>,
    /// Destinations whose opportunistic TLS handshake failed, and until when their
    /// connections skip STARTTLS (see `worker`). Expired marks are swept at each new mark,
    /// so it holds at most the destinations that failed within one hold.
    tls_failed: RefCell<std::collections::HashMap<DestinationKey, std::time::Instant>>,
}

impl<C: Connector + 'static> Core<C> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        index: usize,
        shared: Arc<DeliveryShared>,
        connector: C,
        spool: ShardHandle,
        store: Arc<Spool>,
        mail_store: Arc<MailStore>,
        phase: watch::Receiver<Phase>,
        metrics: Option<crate::metrics::CoreMetrics>,
    ) -> Rc<Self> {
        // Built on the core's own runtime: hickory spawns its tasks there.
        let resolver = match SystemResolver::new(&shared.dns_servers) {
            Ok(r) => Some(r),
            Err(error) => {
                tracing::warn!(core = index, %error, "no DNS resolver: MX destinations will be deferred");
                None
            }
        };
        let queue = CoreQueue::new(shared.destination_limits, shared.destinations_max);
        Rc::new(Core {
            index,
            shared,
            queue: RefCell::new(queue),
            connector,
            resolver,
            spool,
            store,
            mail_store,
            phase,
            workers: Cell::new(0),
            kick: Notify::new(),
            metrics,
            published: RefCell::new(Vec::new()),
            tls_failed: RefCell::new(std::collections::HashMap::new()),
        })
    }

    fn running(&self) -> bool {
        *self.phase.borrow() == Phase::Running
    }

    /// Takes a hand-off into the queue.
    fn accept(&self, job: Job) {
        let mut queue = self.queue.borrow_mut();
        let dest = match queue.destination_id(job.key.clone()) {
            Ok(dest) => dest,
            Err(full) => {
                // Kept in the spool; it returns at the next start. Rare by construction
                // (destinations_max per core), and loud.
                tracing::error!(queue_id = %job.id, destination = %job.key, "{full}: recipients stay in the spool until the next start");
                self.shared.mesh.gauge.release(job.size);
                return;
            }
        };
        let mut entry = QueueEntry::new(job.id, dest, job.recipients, job.due);
        entry.attempts = job.attempts;
        entry.delay_noticed = job.delay_noticed;
        let now = SystemTime::now();
        let result = if job.due <= now {
            queue.push_ready(entry)
        } else {
            queue.defer(entry)
        };
        if result.is_err() {
            self.shared.mesh.gauge.release(job.size);
        }
    }

    /// Starts workers where ready entries wait and limits allow.
    fn dispatch(self: &Rc<Self>) {
        if !self.running() {
            return;
        }
        let ids = self.queue.borrow().with_ready();
        let now = SystemTime::now();
        for id in ids {
            loop {
                let spawn = {
                    let mut queue = self.queue.borrow_mut();
                    let Some(dest) = queue.get_mut(id) else {
                        break;
                    };
                    // Held (a dead next hop) or rate-limited: a worker would find nothing to
                    // send; the scheduler looks again at its next tick.
                    if dest.blocked_until(now).is_some() {
                        break;
                    }
                    let limit = dest
                        .limits
                        .connections_max
                        .min(dest.limits.transactions_max);
                    let wanted = (dest.ready_len() as u64 + u64::from(dest.transactions()))
                        .min(u64::from(limit));
                    if u64::from(dest.connections()) < wanted {
                        dest.connection_opened();
                        true
                    } else {
                        false
                    }
                };
                if !spawn {
                    break;
                }
                self.workers.set(self.workers.get() + 1);
                tokio::task::spawn_local(worker::run(Rc::clone(self), id));
            }
        }
    }

    /// The next entry a worker of `dest` may send now, expiring what waited too long.
    fn take_next(self: &Rc<Self>, dest: DestId) -> Option<QueueEntry> {
        if !self.running() {
            return None;
        }
        loop {
            let now = SystemTime::now();
            let dispatch = match self.queue.borrow_mut().get_mut(dest) {
                Some(d) => d.next(now, &self.shared.schedule),
                None => return None,
            };
            match dispatch {
                Dispatch::Send(entry) => return Some(entry),
                Dispatch::Expired(entry) => {
                    tokio::task::spawn_local(Rc::clone(self).expire(entry));
                }
                Dispatch::Throttled { .. } | Dispatch::AtLimit | Dispatch::Idle => return None,
            }
        }
    }

    /// A transaction started by `take_next` is over.
    fn finish(&self, dest: DestId) {
        if let Some(d) = self.queue.borrow_mut().get_mut(dest) {
            d.finish();
        }
        self.kick.notify_one();
    }

    fn destination_key(&self, dest: DestId) -> Option<DestinationKey> {
        self.queue.borrow().get(dest).map(|d| d.key.clone())
    }

    /// Reads the message an entry names. `Ok(None)`: it is no longer in the spool (an
    /// operator deleted it, or every recipient already has a final result).
    fn load(&self, id: QueueId) -> Result<Option<StoredMessage>, Reply> {
        let Some(location) = self.store.locate(id) else {
            return Ok(None);
        };
        self.store
            .read_message(&location)
            .map(Some)
            .map_err(|e| Reply::spool_unreadable(&e.to_string()))
    }

    /// An entry found past its deadline while it waited.
    async fn expire(self: Rc<Self>, entry: QueueEntry) {
        let Ok(Some(message)) = self.load(entry.id) else {
            return;
        };
        let reply = Reply::delivery_expired("no successful attempt before delivery.max_age");
        let settlement = outcome::finalize_all(
            &entry,
            &message.meta.remote,
            &message.meta.envelope,
            outcome::Finalization {
                outcome: Outcome::Expired,
                reply: &reply,
                silent: false,
            },
            SystemTime::now(),
            &self.shared.dsn_policy,
        );
        self.apply(&entry, &message, settlement, None, None).await;
    }

    /// Carries out a settlement in the durable order of the module doc. `hop`: the host that
    /// answered (for notices and the log); `tls`: the TLS version and cipher of that
    /// connection, `None` in plaintext (for the log).
    async fn apply(
        &self,
        entry: &QueueEntry,
        message: &StoredMessage,
        settlement: Settlement,
        hop: Option<&str>,
        tls: Option<&str>,
    ) {
        let Settlement {
            results,
            requeue,
            notices,
            double_bounces,
        } = settlement;
        // Taken now: the destination may be collected while the record syncs (its workers
        // gone), and the requeue then makes it anew under its key.
        let key = self.destination_key(entry.dest);
        for index in double_bounces {
            tracing::info!(
                target: "relay::delivery",
                queue_id = %entry.id,
                to = %message.meta.remote.get(index).map(String::as_str).unwrap_or(""),
                "failure of a message from the null sender: no notice (double bounce), dropped"
            );
        }
        let markers = notices::send(self, entry, message, &notices, hop).await;
        for r in &results {
            if let Some(m) = &self.metrics {
                m.delivery(metric_name(r.outcome));
            }
            tracing::info!(
                target: "relay::delivery",
                queue_id = %r.id,
                to = %r.recipient,
                relay = hop.unwrap_or("none"),
                tls = tls.unwrap_or("none"),
                attempt = r.attempt,
                status = outcome_name(r.outcome),
                reply = %r.reply,
                "delivery"
            );
        }
        let mut recorded = true;
        let mut markers = Some(markers);
        let chunks: Vec<Vec<_>> = results
            .chunks(RESULTS_PER_RECORD)
            .map(<[_]>::to_vec)
            .collect();
        for chunk in chunks {
            let record = DeliveryRecord {
                results: chunk,
                dsn_sent: markers.take().unwrap_or_default(),
            };
            let stored = match self.spool.append_delivery(record) {
                Ok(rx) => matches!(rx.await, Ok(Ok(()))),
                Err(_) => false,
            };
            recorded &= stored;
        }
        let size = message.location.body_len;
        if !recorded {
            // The results are not durable: the spool still says "pending", so the memory
            // must too. Try the whole entry again after the first interval.
            tracing::error!(queue_id = %entry.id, "delivery results could not be recorded; retrying the recipients");
            let mut again = entry.clone();
            again.due_ms = crate::queue::to_millis(
                SystemTime::now() + self.shared.schedule.interval(1, entry.seed()),
            );
            self.requeue(again, key.as_ref(), size);
            return;
        }
        match requeue {
            Some(next) => self.requeue(next, key.as_ref(), size),
            None => self.shared.mesh.gauge.release(size),
        }
        self.kick.notify_one();
    }

    /// Puts an entry back in the deferred index under its destination, making the
    /// destination anew if it was collected meanwhile. Only a full destination table loses it
    /// from memory (it stays pending in the spool for the next start; logged).
    fn requeue(&self, mut entry: QueueEntry, key: Option<&DestinationKey>, size: u64) {
        let mut queue = self.queue.borrow_mut();
        if queue.get(entry.dest).map(|d| &d.key) != key {
            let Some(key) = key else {
                tracing::error!(queue_id = %entry.id, "requeue without a destination; recipients stay in the spool until the next start");
                self.shared.mesh.gauge.release(size);
                return;
            };
            match queue.destination_id(key.clone()) {
                Ok(dest) => entry.dest = dest,
                Err(full) => {
                    tracing::error!(queue_id = %entry.id, destination = %key, "{full}: recipients stay in the spool until the next start");
                    self.shared.mesh.gauge.release(size);
                    return;
                }
            }
        }
        if queue.defer(entry).is_err() {
            self.shared.mesh.gauge.release(size);
        }
    }

    /// Handles an operator's command.
    fn control(self: &Rc<Self>, command: Control) {
        match command {
            Control::Flush { which, reply } => {
                let n = self.flush(&which);
                let _ = reply.send(n);
            }
            Control::Remove { id, bounce, reply } => {
                let entries = self.queue.borrow_mut().remove_message(id);
                let _ = reply.send(entries.len());
                if !entries.is_empty() {
                    tokio::task::spawn_local(Rc::clone(self).remove(entries, bounce));
                }
            }
            Control::Snapshot { reply } => {
                let mut list = Vec::new();
                self.queue.borrow().for_each_entry(|e, key, ready| {
                    list.push(Queued {
                        id: e.id,
                        destination: key.to_string(),
                        recipients: e.recipients.indices(),
                        due_unix_ms: e.due_ms,
                        attempts: e.attempts,
                        ready,
                        core: self.index,
                    });
                });
                let _ = reply.send(list);
            }
        }
    }

    fn flush(&self, which: &FlushFilter) -> usize {
        let mut queue = self.queue.borrow_mut();
        let mut dests: Vec<DestId> = Vec::new();
        queue.for_each_entry(|e, key, _| {
            let hit = match which {
                FlushFilter::All => true,
                FlushFilter::Message(id) => e.id == *id,
                FlushFilter::Destination(d) => key.to_string().eq_ignore_ascii_case(d),
            };
            if hit && !dests.contains(&e.dest) {
                dests.push(e.dest);
            }
        });
        // A flush also lifts a dead-destination hold: the operator says "try now".
        for dest in &dests {
            if let Some(d) = queue.get_mut(*dest) {
                d.release_hold();
            }
        }
        let n = queue.flush(|e| match which {
            FlushFilter::All => true,
            FlushFilter::Message(id) => e.id == *id,
            FlushFilter::Destination(_) => dests.contains(&e.dest),
        });
        drop(queue);
        self.kick.notify_one();
        n
    }

    async fn remove(self: Rc<Self>, entries: Vec<QueueEntry>, bounce: bool) {
        for entry in entries {
            let message = match self.load(entry.id) {
                Ok(Some(m)) => m,
                _ => continue,
            };
            let reply = if bounce {
                Reply::bounced_by_operator()
            } else {
                Reply::deleted_by_operator()
            };
            let settlement = outcome::finalize_all(
                &entry,
                &message.meta.remote,
                &message.meta.envelope,
                outcome::Finalization {
                    outcome: Outcome::Bounced,
                    reply: &reply,
                    silent: !bounce,
                },
                SystemTime::now(),
                &self.shared.dsn_policy,
            );
            self.apply(&entry, &message, settlement, None, None).await;
        }
    }
}

fn metric_name(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Delivered => "delivered",
        Outcome::Deferred => "deferred",
        Outcome::Bounced => "bounced",
        Outcome::Expired => "expired",
    }
}

/// Destinations per core published as labelled gauges: the largest ones (a label per
/// destination would let a spammer's random domains blow up the scrape).
const PUBLISHED_DESTINATIONS_MAX: usize = 100;
/// How often the per-destination gauges are refreshed.
const PUBLISH_EVERY: Duration = Duration::from_secs(5);

impl<C: Connector + 'static> Core<C> {
    /// Refreshes the queue gauges: entries on this core, and depth and oldest age of its
    /// largest destinations.
    fn publish(&self, now: SystemTime) {
        let mut per_dest: std::collections::HashMap<String, (i64, SystemTime)> =
            std::collections::HashMap::new();
        let mut entries = 0i64;
        self.queue.borrow().for_each_entry(|e, key, _| {
            entries += 1;
            let slot = per_dest
                .entry(key.to_string())
                .or_insert((0, e.first_seen()));
            slot.0 += 1;
            slot.1 = slot.1.min(e.first_seen());
        });
        if let Some(m) = &self.metrics {
            m.queue_entries.set(entries);
        }
        let Some(metrics) = &self.shared.metrics else {
            return;
        };
        let mut largest: Vec<(String, (i64, SystemTime))> = per_dest.into_iter().collect();
        largest.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then_with(|| a.0.cmp(&b.0)));
        largest.truncate(PUBLISHED_DESTINATIONS_MAX);
        let mut published = self.published.borrow_mut();
        for gone in published.iter() {
            if !largest.iter().any(|(d, _)| d == gone) {
                metrics.clear_queue(self.index, gone);
            }
        }
        published.clear();
        for (destination, (depth, oldest)) in largest {
            let age = now.duration_since(oldest).unwrap_or_default().as_secs();
            metrics.set_queue(
                self.index,
                &destination,
                depth,
                i64::try_from(age).unwrap_or(i64::MAX),
            );
            published.push(destination);
        }
    }
}

fn outcome_name(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Delivered => "sent",
        Outcome::Deferred => "deferred",
        Outcome::Bounced => "bounced",
        Outcome::Expired => "expired",
    }
}

/// The core's scheduler: runs until the server drains, then waits for its workers.
pub async fn run<C: Connector + 'static>(core: Rc<Core<C>>, startup: Vec<Job>) {
    let queued = startup.len();
    for job in startup {
        core.accept(job);
    }
    if queued > 0 {
        tracing::info!(
            core = core.index,
            entries = queued,
            "delivery queue rebuilt from the spool"
        );
    }
    let shared = Arc::clone(&core.shared);
    let Some(inbox) = shared.mesh.inbox(core.index) else {
        return;
    };
    let mut phase = core.phase.clone();
    let mut published_at: Option<std::time::Instant> = None;
    let mut swept_at: Option<std::time::Instant> = None;
    loop {
        if *phase.borrow_and_update() != Phase::Running {
            break;
        }
        if published_at.is_none_or(|at| at.elapsed() >= PUBLISH_EVERY) {
            // Destinations with nothing queued, no connection and no transaction are
            // forgotten (their slot reused): with MX routing every recipient domain is one.
            core.queue.borrow_mut().collect_unused();
            core.publish(SystemTime::now());
            published_at = Some(std::time::Instant::now());
        }
        inbox.drain_jobs(|job| core.accept(job));
        while let Some(command) = inbox.next_control() {
            core.control(command);
        }
        let now = SystemTime::now();
        // The expiry sweep walks every ready entry: once a tick, not on every wake-up (a
        // wake-up per finished transaction made it quadratic in a long ready queue). Workers
        // still expire what they meet at the front (`Destination::next`).
        let sweep = swept_at.is_none_or(|at| at.elapsed() >= TICK);
        let expired = {
            let mut queue = core.queue.borrow_mut();
            queue.promote_due(now);
            if sweep {
                swept_at = Some(std::time::Instant::now());
                queue.take_expired(now, &shared.schedule)
            } else {
                Vec::new()
            }
        };
        for entry in expired {
            tokio::task::spawn_local(Rc::clone(&core).expire(entry));
        }
        core.dispatch();
        let wait = core.queue.borrow().next_due().map_or(TICK, |due| {
            due.duration_since(now).unwrap_or_default().min(TICK)
        });
        tokio::select! {
            _ = inbox.wake.notified() => {}
            _ = core.kick.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            changed = phase.changed() => {
                if changed.is_err() {
                    break;
                }
            }
        }
    }
    // Draining: workers finish their transaction and quit; wait for them.
    while core.workers.get() > 0 {
        core.kick.notified().await;
    }
}
