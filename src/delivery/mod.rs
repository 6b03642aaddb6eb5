//! Outbound delivery on each core: the relay's MTA client, which works the spool's queue.
//! The decisions live in [`crate::queue`] (the per-core policy in
//! [`crate::queue::scheduler`], and schedule, routes, outcomes, notices), [`resolve`] (MX
//! planning) and [`crate::smtp::client`] (the protocol); this module carries them out: it
//! reads the time (through a [`Clock`]), owns the sockets, the spool writes and the timers,
//! and does what the scheduler's actions say.
//!
//! **Shape.** Every remote recipient belongs to a *destination* (its route's next hop, or its
//! domain for MX routes), worked by one or more cores with a share of its limits each
//! ([`crate::queue::Spread`]). Ingest on any core hands "recipients R of message M" to the
//! core [`crate::queue::Spread::core`] names (itself when it can) through the [`mesh`]; that
//! core keeps them in its [`Scheduler`] (a compact entry each, nothing else in memory) and runs:
//! - one scheduler task ([`run`]): takes hand-offs and operator commands, promotes what is
//!   due, expires what waited past `max_age`, and starts connection workers;
//! - worker tasks (`worker.rs`), at most this core's share of `destination_connections_max`: each
//!   takes its first entry *before* connecting (so a throttled or idle destination opens
//!   nothing), resolves, connects, then sends entry after entry over the same connection
//!   (RSET between, by the client) until the destination has nothing ready, and QUITs.
//!
//! **Durability order** for each attempt (`Core::apply`, in the order the scheduler's
//! settlement steps allow): (1) each notice (DSN) is stored
//! as a new message and committed; (2) one record with every recipient's result and the
//! notices' markers is committed; (3) only then is the entry requeued or released. A crash
//! before (2) leaves the recipients pending: they are tried again after the restart (a
//! duplicate delivery or notice is possible for that one attempt, a loss is not).
//!
//! **Nothing acknowledged waits for a restart.** A hand-off never holds back a 250: a full
//! mesh queue is retried in the background ([`enqueue_new`]). A notice the spool refuses is
//! retried before the results are recorded (`Core::apply`). Every entry dropped from memory
//! with its recipients still pending (hand-off given up, destination table full, a failed
//! requeue, an unreadable message at expiry, a refused settlement step) is counted in the
//! mesh's dropped counter, and each core's reconciliation (`Core::reconcile`, decided by
//! the scheduler) queues the spool's pending recipients it does not hold.
//!
//! **A destination that fails as a whole** (DNS says no, no address accepts a connection, the
//! greeting refuses service) takes all its ready entries down with the first: each gets its
//! own result and retry time, and the destination is held for the first retry interval, so a
//! dead host costs one connection attempt, not one per message (Postfix's dead-destination
//! rule).
//!
//! **Mail loops** (`loops.rs`): a next hop that resolves to this relay, or greets with its
//! name, bounces `5.4.6` instead of taking the mail round.
//!
//! **TLS.** Each connection asks for STARTTLS as its route's `tls` says (see `worker.rs`);
//! the rustls configurations are built once ([`DeliveryShared::client_tls`]). A destination
//! whose opportunistic handshake failed is remembered by its owning core for
//! `delivery.tls_failure_hold`, and reached in plaintext meanwhile.
//!
//! **Shutdown.** Draining stops new workers and new transactions; a transaction in flight may
//! finish. Stopping shuts every connection at once: the client reports the recipients
//! deferred, and their records are written before the spool closes.

pub mod cluster;
pub mod control;
pub mod loops;
pub mod mesh;
mod notices;
pub mod resolve;
mod worker;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{watch, Notify};

pub use mesh::{Control, FlushFilter, Job, Mesh, QueueGauge, Queued};

use crate::envelope::QueueId;
use crate::logsafe::Safe;
use crate::mailbox::MailStore;
use crate::net::dns::SystemResolver;
use crate::net::io::Connector;
use crate::queue::outcome::{self, Settlement};
use crate::queue::scheduler::{
    Action, NoticeRetry, Now, Scheduler, SchedulerConfig, Ticket, Upkeep,
};
use crate::queue::ResolveLimits;
use crate::queue::{
    DestId, DestinationKey, DestinationLimits, DsnPolicy, QueueEntry, RcptSet, RetrySchedule,
    Routes, Spread,
};
use crate::runtime::clock::{Clock, SystemClock};
use crate::runtime::Phase;
use crate::smtp::client::ClientConfig;
use crate::smtp::reply::Reply;
use crate::smtp::Mailboxes;
use crate::spool::{DeliveryRecord, Outcome, ShardHandle, Spool, StoredMessage};

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
    /// `delivery.destination_spread`.
    pub destination_spread: bool,
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
    /// Our listeners' and interfaces' addresses: a next hop among them is a loop.
    pub own_addresses: loops::OwnAddresses,
    pub local_domains: Vec<String>,
    /// Local mailboxes, for notices to a local sender.
    pub mailboxes: Option<Mailboxes>,
    /// Users' keys: a notice to a local sender whose mail is sealed is sealed too (`None`
    /// in tests without a key store: nothing is sealed).
    pub keys: Option<Arc<crate::mailbox::KeyStore>>,
    /// Per-destination queue gauges (`None` in tests without metrics).
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
    /// Hand-off patience, notice retries, reconciliation.
    pub upkeep: Upkeep,
    /// Routes to cluster nodes for users homed elsewhere (`None`: no cluster).
    pub cluster: Option<cluster::ClusterRoutes>,
    /// The cluster's shared destination throttles (`Local`: only the scheduler's own).
    pub limits: crate::cluster::limits::Limits,
}

impl DeliveryShared {
    pub fn cores(&self) -> usize {
        self.mesh.cores()
    }

    /// Which cores work each destination, and their shares of its limits.
    pub fn spread(&self) -> Spread {
        Spread::new(
            self.cores(),
            self.destination_limits,
            self.destination_spread,
        )
    }

    /// The destination of one remote address: a local user homed on another node goes to
    /// that node (`cluster.rs`), anything else by its domain's route.
    pub fn destination(&self, address: &str) -> DestinationKey {
        let domain = address.rsplit_once('@').map_or("", |(_, d)| d);
        if let Some(route) = self.cluster.as_ref().and_then(|c| c.route(address)) {
            return DestinationKey::new(&route, domain);
        }
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

/// A message just committed on core `from` (its local copies are placed by
/// [`crate::mailbox::MailStore::delivered`]): its remote recipients go to their destinations'
/// owner cores. Both ingest and the notices this core generates take this path. Never waits: a hand-off that finds its mesh queue full
/// goes on in the background (the message is durable; its 250 need not wait).
pub fn hand_on(
    shared: &Arc<DeliveryShared>,
    from: usize,
    id: QueueId,
    body_len: u64,
    remote: &[String],
) {
    if !remote.is_empty() {
        enqueue_new(shared, from, id, remote, body_len);
    }
}

/// Queues a newly stored message's remote recipients with their owners. A group whose
/// owner's queue is full is retried by a background task on this core for
/// `delivery.handoff_patience`; after that its recipients stay pending in the spool, the
/// mesh counts them as dropped and the owner's reconciliation takes them in.
pub fn enqueue_new(
    shared: &Arc<DeliveryShared>,
    from: usize,
    id: QueueId,
    remote: &[String],
    size: u64,
) {
    let now = SystemClock.wall();
    let spread = shared.spread();
    for (key, indices) in shared.group(remote, 0..remote.len()) {
        let Ok(recipients) = RcptSet::from_indices(&indices) else {
            tracing::error!(queue_id = %id, "recipient index out of range; left in the spool");
            shared.mesh.note_dropped();
            continue;
        };
        let to = spread.core(&key, id);
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
        if let Err(job) = shared.mesh.send(from, to, job) {
            tokio::task::spawn_local(handoff(Arc::clone(shared), from, to, job));
        }
    }
}

/// Retries one hand-off whose mesh queue was full, for `delivery.handoff_patience`.
async fn handoff(shared: Arc<DeliveryShared>, from: usize, to: usize, mut job: Job) {
    let patience = shared.upkeep.handoff_patience;
    let started = SystemClock.now();
    let mut pause = Duration::from_micros(200);
    loop {
        let waited = SystemClock.now().duration_since(started);
        if waited >= patience {
            break;
        }
        tokio::time::sleep(pause.min(patience - waited)).await;
        pause = (pause * 2).min(Duration::from_millis(50));
        match shared.mesh.send(from, to, job) {
            Ok(()) => return,
            Err(back) => job = back,
        }
    }
    shared.mesh.gauge.release(job.size);
    shared.mesh.note_dropped();
    tracing::error!(
        queue_id = %job.id,
        destination = %Safe(&job.key),
        core = to,
        "delivery queue full for {patience:?}; recipients stay in the spool until the reconciliation queues them"
    );
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
    let spread = shared.spread();
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
            let due = next.map_or(SystemClock.wall(), |us| {
                UNIX_EPOCH + Duration::from_micros(us)
            });
            let core = spread.core(&key, message.id);
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

/// One core's delivery side (single-threaded: `Rc`, `RefCell`). The policy is the
/// [`Scheduler`]'s; this carries out its actions.
pub struct Core<C: Connector> {
    pub index: usize,
    pub shared: Arc<DeliveryShared>,
    scheduler: RefCell<Scheduler>,
    clock: Rc<dyn Clock>,
    connector: C,
    /// `None` when the system resolver could not be set up: MX destinations defer.
    resolver: Option<SystemResolver>,
    /// This core's spool writer: results and notices go here.
    spool: ShardHandle,
    store: Arc<Spool>,
    reads: crate::spool::FileReads,
    mail_store: Arc<MailStore>,
    phase: watch::Receiver<Phase>,
    /// Wakes the loop: a worker ended, a transaction finished, an entry settled.
    kick: Notify,
    metrics: Option<crate::metrics::CoreMetrics>,
    /// Destinations published to the per-destination gauges last time (to clear the gone).
    published: RefCell<Vec<String>>,
}

/// What one core's delivery side is built from.
pub struct CoreParts<C> {
    pub index: usize,
    pub shared: Arc<DeliveryShared>,
    pub connector: C,
    /// This core's spool writer (results and notices are appended here).
    pub spool: ShardHandle,
    /// The whole spool, to read messages stored by any core.
    pub store: Arc<Spool>,
    /// How message bodies are read off the core's thread (the ring, or the reader pool).
    pub reads: crate::spool::FileReads,
    pub mail_store: Arc<MailStore>,
    pub phase: watch::Receiver<Phase>,
    pub metrics: Option<crate::metrics::CoreMetrics>,
    /// Where the core reads the time (the system clock outside tests).
    pub clock: Rc<dyn Clock>,
}

impl<C: Connector + 'static> Core<C> {
    pub fn new(parts: CoreParts<C>) -> Rc<Self> {
        let CoreParts {
            index,
            shared,
            connector,
            spool,
            store,
            reads,
            mail_store,
            phase,
            metrics,
            clock,
        } = parts;
        // Built on the core's own runtime: hickory spawns its tasks there.
        let resolver = match SystemResolver::new(&shared.dns_servers) {
            Ok(r) => Some(r),
            Err(error) => {
                tracing::warn!(core = index, %error, "no DNS resolver: MX destinations will be deferred");
                None
            }
        };
        let scheduler = Scheduler::new(SchedulerConfig {
            core: index,
            schedule: shared.schedule.clone(),
            spread: shared.spread(),
            destinations_max: shared.destinations_max,
            tls_failure_hold: shared.tls_failure_hold,
            upkeep: shared.upkeep,
        });
        Rc::new(Core {
            index,
            shared,
            scheduler: RefCell::new(scheduler),
            clock,
            connector,
            resolver,
            spool,
            store,
            reads,
            mail_store,
            phase,
            kick: Notify::new(),
            metrics,
            published: RefCell::new(Vec::new()),
        })
    }

    fn now(&self) -> Now {
        Now {
            mono: self.clock.now(),
            wall: self.clock.wall(),
        }
    }

    fn wall(&self) -> SystemTime {
        self.clock.wall()
    }

    /// Carries out the scheduler's actions. Never called with the scheduler borrowed.
    fn execute(self: &Rc<Self>, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::StartWorker(dest) => {
                    tokio::task::spawn_local(worker::run(Rc::clone(self), dest));
                }
                Action::Expire { ticket, entry } => {
                    tokio::task::spawn_local(Rc::clone(self).expire(ticket, entry));
                }
                Action::End {
                    ticket,
                    entry,
                    bounce,
                } => {
                    tokio::task::spawn_local(Rc::clone(self).end(ticket, entry, bounce));
                }
                Action::Release { bytes, .. } | Action::Unused { bytes } => {
                    self.shared.mesh.gauge.release(bytes)
                }
                Action::Spilled {
                    id,
                    destination,
                    why,
                } => {
                    // Rare by construction (destinations_max per core), and loud.
                    self.shared.mesh.note_dropped();
                    let destination = destination.map(|d| d.to_string()).unwrap_or_default();
                    tracing::error!(queue_id = %id, destination = %Safe(&destination), "{why}: recipients stay in the spool until the reconciliation queues them");
                }
                Action::Publish => self.publish(self.wall()),
                Action::Requeued { .. } => {}
                Action::StoreNotices(ticket) | Action::StoreRecord(ticket) => {
                    // Only answers to the settlement calls, which `apply` acts on itself.
                    tracing::error!(?ticket, "settlement step outside a settlement");
                }
            }
        }
    }

    /// Takes a hand-off into the queue.
    fn accept(self: &Rc<Self>, job: Job) {
        let now = self.now();
        let actions = self.scheduler.borrow_mut().accept(job, now);
        self.execute(actions);
    }

    /// The next entry a worker of `dest` may send now (the scheduler expires what waited
    /// too long on the way).
    fn take_next(self: &Rc<Self>, dest: DestId) -> Option<(Ticket, QueueEntry)> {
        if *self.phase.borrow() != Phase::Running {
            self.scheduler.borrow_mut().stop();
        }
        let now = self.now();
        let (taken, actions) = self.scheduler.borrow_mut().take_next(dest, now);
        self.execute(actions);
        taken
    }

    /// The transaction of `ticket` is over; its settlement may still run.
    fn transaction_over(&self, ticket: Ticket) {
        self.scheduler.borrow_mut().transaction_over(ticket);
        self.kick.notify_one();
    }

    /// A worker of `dest` ended.
    fn worker_done(&self, dest: DestId) {
        self.scheduler.borrow_mut().worker_done(dest);
        self.kick.notify_one();
    }

    /// The destination of `ticket` failed as a whole: the entries to end the same way
    /// (`ticket`'s own first).
    fn fail_destination(&self, ticket: Ticket, temporary: bool) -> Vec<(Ticket, QueueEntry)> {
        let now = self.now();
        match self
            .scheduler
            .borrow_mut()
            .fail_destination(ticket, temporary, now)
        {
            Ok(others) => others,
            Err(error) => {
                tracing::error!(%error, "destination failure not applied");
                Vec::new()
            }
        }
    }

    fn tls_held(&self, key: &DestinationKey) -> bool {
        self.scheduler.borrow().tls_held(key, self.clock.now())
    }

    fn tls_failed(&self, key: &DestinationKey) {
        let now = self.clock.now();
        self.scheduler.borrow_mut().tls_failed(key, now);
    }

    /// The message of `ticket` is no longer in the spool: nothing to deliver.
    fn gone(self: &Rc<Self>, ticket: Ticket, id: QueueId) {
        tracing::info!(queue_id = %id, "queued message no longer in the spool; dropped from the queue");
        let result = self.scheduler.borrow_mut().gone(ticket);
        self.settled(result);
    }

    /// Nothing was attempted for `ticket` (its message could not be read, or the client
    /// would not take it): back after the first retry interval, without a record.
    fn retry(self: &Rc<Self>, ticket: Ticket) {
        let now = self.now();
        let result = self.scheduler.borrow_mut().retry(ticket, now);
        self.settled(result);
    }

    /// A shared destination throttle refused `ticket` before anything was sent: back in
    /// `wait`, no attempt counted (`hold`: see [`Scheduler::throttled`]).
    fn throttled(self: &Rc<Self>, ticket: Ticket, wait: Duration, hold: bool) {
        let now = self.now();
        let result = self
            .scheduler
            .borrow_mut()
            .throttled(ticket, wait, hold, now);
        self.settled(result);
    }

    fn settled(
        self: &Rc<Self>,
        result: Result<Vec<Action>, crate::queue::scheduler::SchedulerError>,
    ) {
        match result {
            Ok(actions) => self.execute(actions),
            Err(error) => {
                self.shared.mesh.note_dropped();
                tracing::error!(%error, "settlement step refused");
            }
        }
        // An entry back in the queue, or one fewer out: the loop (or the drain) looks again.
        self.kick.notify_one();
    }

    fn destination_key(&self, dest: DestId) -> Option<DestinationKey> {
        self.scheduler.borrow().destination_key(dest)
    }

    /// A retry towards a cluster node whose recipients' home has moved since the hand-off
    /// (`relay user move`, a directory change): the entry leaves this destination and its
    /// recipients go to their new home nodes' destinations with their attempts kept, due at
    /// once. Returns whether it did. Only node routes are re-routed, and only to other node
    /// routes: a recipient now homed here, or one whose home left the table, stays (the
    /// attempt defers as before, and a restart routes it from the directory).
    async fn rerouted(
        self: &Rc<Self>,
        ticket: Ticket,
        entry: &QueueEntry,
        key: &DestinationKey,
    ) -> bool {
        let is_node = |k: &DestinationKey| {
            matches!(
                k,
                DestinationKey::Static {
                    tls: crate::queue::TlsMode::Cluster,
                    ..
                }
            )
        };
        if entry.attempts == 0 || !is_node(key) || self.shared.cluster.is_none() {
            return false;
        }
        let Ok(Some(message)) = self.load(entry.id).await else {
            return false;
        };
        let groups = self
            .shared
            .group(&message.meta.remote, entry.recipients.indices());
        if groups.iter().all(|(k, _)| k == key || !is_node(k)) {
            return false;
        }
        let result = self.scheduler.borrow_mut().gone(ticket);
        self.settled(result);
        let now = SystemClock.wall();
        let spread = self.shared.spread();
        let size = message.body.len() as u64;
        let mut stay: Vec<usize> = Vec::new();
        let mut moves: Vec<(DestinationKey, Vec<usize>)> = Vec::new();
        for (k, indices) in groups {
            if is_node(&k) {
                moves.push((k, indices));
            } else {
                stay.extend(indices);
            }
        }
        if !stay.is_empty() {
            moves.push((key.clone(), stay));
        }
        for (to_key, indices) in moves {
            let Ok(recipients) = RcptSet::from_indices(&indices) else {
                self.shared.mesh.note_dropped();
                continue;
            };
            if &to_key != key {
                for index in &indices {
                    let to = message.meta.remote.get(*index).map_or("", String::as_str);
                    tracing::info!(target: "relay::delivery", queue_id = %entry.id, to = %Safe(to), from_destination = %Safe(key), destination = %Safe(&to_key), "the recipient's home node changed; re-routed");
                }
            }
            let core = spread.core(&to_key, entry.id);
            let job = Job {
                id: entry.id,
                key: to_key,
                recipients,
                due: now,
                attempts: entry.attempts,
                delay_noticed: entry.delay_noticed,
                size,
            };
            self.shared.mesh.gauge.admit(size);
            if let Err(job) = self.shared.mesh.send(self.index, core, job) {
                tokio::task::spawn_local(handoff(Arc::clone(&self.shared), self.index, core, job));
            }
        }
        true
    }

    /// Reads the message an entry names, off the core's thread (a cold body never blocks the
    /// core's other connections). `Ok(None)`: it is no longer in the spool (an operator
    /// deleted it, or every recipient already has a final result).
    async fn load(&self, id: QueueId) -> Result<Option<StoredMessage>, Reply> {
        let Some(location) = self.store.locate(id) else {
            return Ok(None);
        };
        self.store
            .read_message_async(&self.reads, &location)
            .await
            .map(Some)
            .map_err(|e| Reply::spool_unreadable(&e.to_string()))
    }

    /// Loads the message of an entry that is to be ended without an attempt; `None` when it
    /// cannot be: the entry then leaves the queue (an unreadable one stays pending in the
    /// spool and counts as dropped: the reconciliation takes it in again).
    async fn load_to_end(
        self: &Rc<Self>,
        ticket: Ticket,
        entry: &QueueEntry,
    ) -> Option<StoredMessage> {
        match self.load(entry.id).await {
            Ok(Some(message)) => Some(message),
            Ok(None) => {
                self.gone(ticket, entry.id);
                None
            }
            Err(reply) => {
                tracing::warn!(queue_id = %entry.id, %reply, "cannot read a queued message to end it; it stays in the spool until the reconciliation queues it");
                self.shared.mesh.note_dropped();
                let result = self.scheduler.borrow_mut().gone(ticket);
                self.settled(result);
                None
            }
        }
    }

    /// An entry found past its deadline while it waited.
    async fn expire(self: Rc<Self>, ticket: Ticket, entry: QueueEntry) {
        let Some(message) = self.load_to_end(ticket, &entry).await else {
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
            self.wall(),
            &self.shared.dsn_policy,
        );
        self.apply(ticket, &entry, &message, settlement, None, None)
            .await;
    }

    /// An entry an operator removed (`bounce`: with a failure notice).
    async fn end(self: Rc<Self>, ticket: Ticket, entry: QueueEntry, bounce: bool) {
        let Some(message) = self.load_to_end(ticket, &entry).await else {
            return;
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
            self.wall(),
            &self.shared.dsn_policy,
        );
        self.apply(ticket, &entry, &message, settlement, None, None)
            .await;
    }

    /// Carries out a settlement in the durable order of the module doc, step by step as
    /// the scheduler allows. `hop`: the host that answered (for notices and the log);
    /// `tls`: the TLS version and cipher of that connection, `None` in plaintext (for the
    /// log).
    async fn apply(
        self: &Rc<Self>,
        ticket: Ticket,
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
        for index in double_bounces {
            tracing::info!(
                target: "relay::delivery",
                queue_id = %entry.id,
                to = %Safe(message.meta.remote.get(index).map(String::as_str).unwrap_or("")),
                "failure of a message from the null sender: no notice (double bounce), dropped"
            );
        }
        let step = self.scheduler.borrow_mut().settle(ticket, requeue);
        if !matches!(step, Ok(Action::StoreNotices(_))) {
            self.shared.mesh.note_dropped();
            tracing::error!(queue_id = %entry.id, ?step, "settlement refused; the recipients stay pending in the spool");
            return;
        }
        let mut retried = false;
        let markers = loop {
            match notices::send(self, entry, message, &notices, hop).await {
                Ok(markers) => break markers,
                Err(why) => {
                    let now = self.now();
                    let decided = self.scheduler.borrow_mut().notices_failed(ticket, now);
                    match decided {
                        Ok(NoticeRetry::After(wait)) => {
                            tracing::warn!(target: "relay::delivery", queue_id = %entry.id, "notice not stored ({why}); trying again in {wait:?}, the results wait for it");
                            if let Some(m) = &self.metrics {
                                m.notice_retries.inc();
                                if !retried {
                                    m.notices_pending.inc();
                                }
                            }
                            retried = true;
                            // A drain need not wait for the retry: one more try, then the
                            // scheduler gives up (nothing recorded; repeated after the start).
                            let mut phase = self.phase.clone();
                            tokio::select! {
                                _ = tokio::time::sleep(wait) => {}
                                _ = phase.wait_for(|p| *p != Phase::Running) => {}
                            }
                        }
                        Ok(NoticeRetry::GaveUp(actions)) => {
                            tracing::error!(target: "relay::delivery", queue_id = %entry.id, "notice not stored ({why}); nothing recorded, the recipients are tried again later");
                            self.notice_wait_over(retried);
                            self.settled(Ok(actions));
                            return;
                        }
                        Err(error) => {
                            self.notice_wait_over(retried);
                            self.settled(Err(error));
                            return;
                        }
                    }
                }
            }
        };
        self.notice_wait_over(retried);
        let step = self.scheduler.borrow_mut().notices_stored(ticket);
        if !matches!(step, Ok(Action::StoreRecord(_))) {
            self.shared.mesh.note_dropped();
            tracing::error!(queue_id = %entry.id, ?step, "settlement refused; the recipients stay pending in the spool");
            return;
        }
        for r in &results {
            if let Some(m) = &self.metrics {
                m.delivery(metric_name(r.outcome));
            }
            tracing::info!(
                target: "relay::delivery",
                queue_id = %r.id,
                to = %Safe(&r.recipient),
                relay = %Safe(hop.unwrap_or("none")),
                tls = tls.unwrap_or("none"),
                attempt = r.attempt,
                status = outcome_name(r.outcome),
                reply = %Safe(&r.reply),
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
        if !recorded {
            // The spool still says "pending": the scheduler keeps the whole entry and tries
            // it again after the first interval.
            tracing::error!(queue_id = %entry.id, "delivery results could not be recorded; retrying the recipients");
        }
        let now = self.now();
        let result = self
            .scheduler
            .borrow_mut()
            .record_stored(ticket, recorded, now);
        self.settled(result);
    }

    /// A settlement that waited for a notice retry is past that wait.
    fn notice_wait_over(&self, waited: bool) {
        if let (true, Some(m)) = (waited, &self.metrics) {
            m.notices_pending.dec();
        }
    }

    /// One reconciliation round, when the scheduler asks for one: the spool's pending
    /// recipients of this core's destinations, as jobs, compared with what the scheduler holds.
    fn reconcile(self: &Rc<Self>) {
        if self.shared.mesh.draining() {
            // The drain withdrew messages it is handing over; they come back at resume.
            return;
        }
        let dropped = self.shared.mesh.dropped();
        let now = self.now();
        if !self.scheduler.borrow().reconcile_due(dropped, now) {
            return;
        }
        let mut per_core: Vec<Vec<Job>> = vec![Vec::new(); self.shared.cores()];
        self.store
            .live_view(|message| jobs_from_live(&self.shared, message, &mut per_core));
        // Jobs of other cores' destinations: only their gauge shares were taken.
        for (core, jobs) in per_core.iter().enumerate() {
            if core != self.index {
                for job in jobs {
                    self.shared.mesh.gauge.release(job.size);
                }
            }
        }
        let mine = per_core.into_iter().nth(self.index).unwrap_or_default();
        let (taken, actions) = self.scheduler.borrow_mut().reconcile(dropped, mine, now);
        if taken > 0 {
            tracing::warn!(
                core = self.index,
                recipients = taken,
                "pending recipients found in the spool without a queue entry; queued again"
            );
            if let Some(m) = &self.metrics {
                m.reconciled.inc_by(taken as u64);
            }
        }
        self.execute(actions);
    }

    /// Handles an operator's command.
    fn control(self: &Rc<Self>, command: Control) {
        match command {
            Control::Flush { which, reply } => {
                let now = self.now();
                let (n, actions) = self.scheduler.borrow_mut().flush(&which, now);
                let _ = reply.send(n);
                self.execute(actions);
            }
            Control::Remove { id, bounce, reply } => {
                let actions = self.scheduler.borrow_mut().remove(id, bounce);
                let removed = actions.len();
                // Answered once the removal records are written: "removed" is then durable,
                // and a listing read after the answer no longer shows the message.
                let core = Rc::clone(self);
                tokio::task::spawn_local(async move {
                    for action in actions {
                        match action {
                            Action::End {
                                ticket,
                                entry,
                                bounce,
                            } => Rc::clone(&core).end(ticket, entry, bounce).await,
                            other => core.execute(vec![other]),
                        }
                    }
                    let _ = reply.send(removed);
                });
            }
            Control::Snapshot { reply } => {
                let _ = reply.send(self.scheduler.borrow().snapshot());
            }
            Control::Withdraw { id, reply } => {
                let (taken, out, actions) = self.scheduler.borrow_mut().withdraw(id);
                self.execute(actions);
                let _ = reply.send((taken, out));
            }
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

impl<C: Connector + 'static> Core<C> {
    /// Refreshes the queue gauges: entries on this core, and depth and oldest age of its
    /// largest destinations.
    fn publish(&self, now: SystemTime) {
        let mut per_dest: std::collections::HashMap<String, (i64, SystemTime)> =
            std::collections::HashMap::new();
        let mut entries = 0i64;
        self.scheduler.borrow().for_each_entry(|e, key, _| {
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

/// The core's loop: feeds the scheduler hand-offs, commands and the time, carries out what
/// it says, and sleeps until the next event or the time it names. Runs until the server
/// drains, then waits for the workers and the settlements in flight.
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
    loop {
        if *phase.borrow_and_update() != Phase::Running {
            break;
        }
        inbox.drain(|job| core.accept(job));
        while let Some(command) = inbox.next_control() {
            core.control(command);
        }
        core.reconcile();
        let now = core.now();
        let poll = core.scheduler.borrow_mut().poll(now);
        core.execute(poll.actions);
        tokio::select! {
            _ = inbox.wake.notified() => {}
            _ = core.kick.notified() => {}
            _ = tokio::time::sleep(poll.wake) => {}
            changed = phase.changed() => {
                if changed.is_err() {
                    break;
                }
            }
        }
    }
    // Draining: workers finish their transaction and quit, settlements finish; wait.
    core.scheduler.borrow_mut().stop();
    while core.scheduler.borrow().busy() {
        core.kick.notified().await;
    }
}

#[cfg(test)]
mod tests;
