//! The relay's metrics: one [`Metrics`] registry (the `prometheus-client` crate), created once
//! by the server and shared as `Arc<Metrics>`, exposed as Prometheus text on the admin
//! endpoint's `/metrics` and summarised by `/stat` and `relay stat` ([`stat`]).
//!
//! Hot paths never take a lock: each shard holds a [`CoreMetrics`], handles created once
//! (prometheus-client's `Counter`/`Gauge` are `Arc`'d atomics, its `Family` a map behind a
//! lock that is only touched when a handle is made). Every per-core series carries a `core`
//! label, so an unbalanced core shows. Transactions are labelled with their reply code; those
//! handles are made on a code's first use on a core and cached in that core's own map.
//!
//! What is measured (all prefixed `relay_`):
//! - `connections_open{core,protocol}`, `connections_total`, `connections_refused_total`;
//! - `bytes_received_total{core,protocol}`, `bytes_sent_total` (connection level: what the
//!   connection loops read and wrote);
//! - `tls_handshakes_total{core,protocol}`, `tls_resumed_total` (of those, resumed sessions),
//!   `tls_handshake_failures_total` (client side);
//! - `smtp_transactions_total{core,result,code}`: result `queued` (2xx), `deferred` (4xx),
//!   `rejected` (5xx); `smtp_message_bytes_total{core}`: bytes of messages stored;
//! - the body budget, one for the process (no `core` label): `smtp_body_bytes_in_flight`
//!   (bytes of message bodies reserved now), `smtp_body_memory_max_bytes`
//!   (`smtp.body_memory_max`), `smtp_body_memory_refusals_total{stage}` (`mail`: MAIL
//!   answered 452 4.3.1; `data`: a body refused at its end), all moved by
//!   `server::body_budget`;
//! - `pop3_sessions_total{core}` (logins that opened a maildrop), `pop3_retrievals_total`
//!   (RETR answered with the message);
//! - `spool_records_total{core}`, `spool_bytes_total`, `spool_commits_total`,
//!   `spool_failed_records_total`, `spool_segments`: read from the spool at scrape time;
//!   `spool_fsync_seconds{core}` and `spool_commit_records{core}` histograms, fed by the spool
//!   writer per group commit through [`crate::spool::CommitObserver`];
//! - outbound delivery (incremented by the delivery code): `deliveries_total{core,result}`
//!   (`delivered|deferred|bounced|expired`), `queue_entries{core}`,
//!   `queue_depth{core,destination}`, `queue_oldest_age_seconds{core,destination}`,
//!   `queue_reconciled_total{core}` (pending recipients queued again by the reconciliation),
//!   `notices_pending{core}` (settlements waiting to store a notice again),
//!   `notice_retries_total{core}`;
//! - the password-hash pool shared by all cores ([`HashPoolMetrics`]): `auth_hash_queued`
//!   (checks waiting for a thread), `auth_hash_refused_total` (logins answered "try again
//!   later" because the queue was full), `auth_hash_abandoned_total` (queued checks dropped
//!   unhashed because their client had gone), `auth_hash_run_total` (checks run: one hash
//!   each, so a login proxied to its home node shows here on the node that checked it only);
//! - `messages_sealed_total`: copies encrypted to their user's key before they were stored
//!   (`mailbox::sealing`), one for the process.
//!
//! Exposure: none directly; the admin endpoint serves the encoded text (over TCP to any
//! loopback client: `/metrics` is its one route without a token).
//! Limits: label values come from the relay itself (core numbers, reply codes, destination
//! names the queue owns), never from a peer's free text.

pub mod stat;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::spool::{CommitObserver, Spool};

pub use stat::Stat;

/// Content type of [`Metrics::encode`]'s output (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The delivery results [`CoreMetrics::delivery`] knows (their handles are made up front).
pub const DELIVERY_RESULTS: [&str; 4] = ["delivered", "deferred", "bounced", "expired"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct CoreLabels {
    pub core: usize,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabels {
    pub core: usize,
    pub protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct TransactionLabels {
    pub core: usize,
    pub result: &'static str,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct StageLabels {
    pub stage: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct DeliveryLabels {
    pub core: usize,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct QueueLabels {
    pub core: usize,
    pub destination: String,
}

/// The result label of an SMTP transaction answered with `code`.
pub fn transaction_result(code: u16) -> &'static str {
    match code {
        200..=399 => "queued",
        400..=499 => "deferred",
        _ => "rejected",
    }
}

/// Group commit latency buckets: 50µs (a page-cache-only sync) to ~1.6s (a stalled disk).
fn fsync_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.000_05, 2.0, 16)
}

/// Records per group commit: 1 to 4096 (`spool.commit_records_max` is 256 by default).
fn batch_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(1.0, 2.0, 13)
}

struct Families {
    connections_open: Family<ProtocolLabels, Gauge>,
    connections: Family<ProtocolLabels, Counter>,
    refused: Family<ProtocolLabels, Counter>,
    bytes_received: Family<ProtocolLabels, Counter>,
    bytes_sent: Family<ProtocolLabels, Counter>,
    tls_handshakes: Family<ProtocolLabels, Counter>,
    tls_resumed: Family<ProtocolLabels, Counter>,
    tls_failures: Family<ProtocolLabels, Counter>,
    transactions: Family<TransactionLabels, Counter>,
    message_bytes: Family<CoreLabels, Counter>,
    pop3_sessions: Family<CoreLabels, Counter>,
    pop3_retrievals: Family<CoreLabels, Counter>,
    fsync_seconds: Family<CoreLabels, Histogram, fn() -> Histogram>,
    commit_records: Family<CoreLabels, Histogram, fn() -> Histogram>,
    deliveries: Family<DeliveryLabels, Counter>,
    queue_entries: Family<CoreLabels, Gauge>,
    reconciled: Family<CoreLabels, Counter>,
    notices_pending: Family<CoreLabels, Gauge>,
    notice_retries: Family<CoreLabels, Counter>,
    queue_depth: Family<QueueLabels, Gauge>,
    queue_oldest: Family<QueueLabels, Gauge>,
    body_in_flight: Gauge,
    body_memory_max: Gauge,
    body_refusals: Family<StageLabels, Counter>,
    hash_pool: HashPoolMetrics,
    dmarc_dropped: Counter,
    messages_sealed: Counter,
    cluster_redis_failures: Counter,
    cluster_redis_up: Gauge,
}

/// The password-hash pool's handles (one pool for the process, so no `core` label).
#[derive(Clone, Debug, Default)]
pub struct HashPoolMetrics {
    pub queued: Gauge,
    pub refused: Counter,
    pub abandoned: Counter,
    /// Checks a thread ran (each one password hash, or one APOP digest).
    pub run: Counter,
}

/// The relay's metrics registry (see the module doc for what it holds).
pub struct Metrics {
    registry: Registry,
    families: Families,
    cores: usize,
    started: Instant,
    spool: Option<Weak<Spool>>,
    /// Every transaction label set used so far (for `/stat`: a Family cannot be listed).
    transaction_labels: Arc<Mutex<BTreeSet<TransactionLabels>>>,
    /// Every delivery label set used so far.
    delivery_labels: Arc<Mutex<BTreeSet<DeliveryLabels>>>,
    /// The queue per destination as last set: `(depth, oldest age)`.
    queues: Mutex<BTreeMap<QueueLabels, (i64, i64)>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("cores", &self.cores)
            .finish_non_exhaustive()
    }
}

/// A poisoned lock only means a panic elsewhere; the data (counters, label sets) is fine.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Metrics {
    /// A registry for `cores` shards. With a spool, its per-shard counters are read at every
    /// scrape (a weak reference: metrics never keep the spool open).
    pub fn new(cores: usize, spool: Option<&Arc<Spool>>) -> Metrics {
        let families = Families {
            connections_open: Family::default(),
            connections: Family::default(),
            refused: Family::default(),
            bytes_received: Family::default(),
            bytes_sent: Family::default(),
            tls_handshakes: Family::default(),
            tls_resumed: Family::default(),
            tls_failures: Family::default(),
            transactions: Family::default(),
            message_bytes: Family::default(),
            pop3_sessions: Family::default(),
            pop3_retrievals: Family::default(),
            fsync_seconds: Family::new_with_constructor(|| Histogram::new(fsync_buckets())),
            commit_records: Family::new_with_constructor(|| Histogram::new(batch_buckets())),
            deliveries: Family::default(),
            queue_entries: Family::default(),
            reconciled: Family::default(),
            notices_pending: Family::default(),
            notice_retries: Family::default(),
            queue_depth: Family::default(),
            queue_oldest: Family::default(),
            hash_pool: HashPoolMetrics::default(),
            body_in_flight: Gauge::default(),
            body_memory_max: Gauge::default(),
            body_refusals: Family::default(),
            dmarc_dropped: Counter::default(),
            messages_sealed: Counter::default(),
            cluster_redis_failures: Counter::default(),
            cluster_redis_up: Gauge::default(),
        };
        let mut registry = Registry::with_prefix("relay");
        let f = &families;
        registry.register(
            "connections_open",
            "Connections open now",
            f.connections_open.clone(),
        );
        registry.register("connections", "Connections accepted", f.connections.clone());
        registry.register(
            "connections_refused",
            "Connections turned away by a connection limit",
            f.refused.clone(),
        );
        registry.register(
            "bytes_received",
            "Bytes read from clients",
            f.bytes_received.clone(),
        );
        registry.register(
            "bytes_sent",
            "Bytes written to clients",
            f.bytes_sent.clone(),
        );
        registry.register(
            "tls_handshakes",
            "TLS sessions established by clients (STARTTLS, STLS, implicit TLS)",
            f.tls_handshakes.clone(),
        );
        registry.register(
            "tls_resumed",
            "Of tls_handshakes, the sessions clients resumed (a ticket or a cached session id)",
            f.tls_resumed.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes with clients that failed or timed out",
            f.tls_failures.clone(),
        );
        registry.register(
            "smtp_transactions",
            "SMTP transactions by result (queued, deferred, rejected) and reply code",
            f.transactions.clone(),
        );
        registry.register(
            "smtp_message_bytes",
            "Bytes of messages stored (Received header included)",
            f.message_bytes.clone(),
        );
        registry.register(
            "pop3_sessions",
            "POP3 logins that opened a maildrop",
            f.pop3_sessions.clone(),
        );
        registry.register(
            "pop3_retrievals",
            "POP3 RETR commands answered with the message",
            f.pop3_retrievals.clone(),
        );
        registry.register(
            "spool_fsync_seconds",
            "Duration of each group commit's fdatasync",
            f.fsync_seconds.clone(),
        );
        registry.register(
            "spool_commit_records",
            "Records per group commit",
            f.commit_records.clone(),
        );
        registry.register(
            "deliveries",
            "Outbound delivery attempts by result (delivered, deferred, bounced, expired)",
            f.deliveries.clone(),
        );
        registry.register(
            "queue_entries",
            "Recipients queued for outbound delivery on this core",
            f.queue_entries.clone(),
        );
        registry.register(
            "queue_reconciled",
            "Pending recipients found in the spool without a queue entry and queued again",
            f.reconciled.clone(),
        );
        registry.register(
            "notices_pending",
            "Delivery results waiting for a notice the spool refused to be stored again",
            f.notices_pending.clone(),
        );
        registry.register(
            "notice_retries",
            "Tries to store a notice again after the spool refused it",
            f.notice_retries.clone(),
        );
        registry.register(
            "queue_depth",
            "Recipients queued per destination",
            f.queue_depth.clone(),
        );
        registry.register(
            "queue_oldest_age_seconds",
            "Age of the oldest queued recipient per destination",
            f.queue_oldest.clone(),
        );
        registry.register(
            "auth_hash_queued",
            "Password checks waiting for a thread of the hash pool",
            f.hash_pool.queued.clone(),
        );
        registry.register(
            "auth_hash_refused",
            "Logins answered with a temporary failure because the hash queue was full",
            f.hash_pool.refused.clone(),
        );
        registry.register(
            "auth_hash_abandoned",
            "Queued password checks dropped unhashed because the client had gone",
            f.hash_pool.abandoned.clone(),
        );
        registry.register(
            "auth_hash_run",
            "Password checks the hash pool ran (one password hash or APOP digest each)",
            f.hash_pool.run.clone(),
        );
        registry.register(
            "dmarc_report_observations_dropped",
            "DMARC results not counted for aggregate reports: dmarc.max_records or max_domains reached",
            f.dmarc_dropped.clone(),
        );
        registry.register(
            "messages_sealed",
            "Copies of messages encrypted to their user's key before they were stored",
            f.messages_sealed.clone(),
        );
        registry.register(
            "cluster_redis_failures",
            "Calls to the cluster's Redis that failed or timed out (limits then follow cluster.redis.failure)",
            f.cluster_redis_failures.clone(),
        );
        registry.register(
            "cluster_redis_up",
            "1 while the cluster's Redis answers, 0 during an outage or before it first answered",
            f.cluster_redis_up.clone(),
        );
        registry.register(
            "smtp_body_bytes_in_flight",
            "Bytes of SMTP message bodies held in memory now (reserved from smtp.body_memory_max)",
            f.body_in_flight.clone(),
        );
        registry.register(
            "smtp_body_memory_max_bytes",
            "The budget for SMTP message bodies in memory (smtp.body_memory_max)",
            f.body_memory_max.clone(),
        );
        registry.register(
            "smtp_body_memory_refusals",
            "Transactions answered 452 4.3.1 for want of body memory, at MAIL or at the end of data",
            f.body_refusals.clone(),
        );
        for stage in BODY_REFUSAL_STAGES {
            drop(f.body_refusals.get_or_create(&StageLabels { stage }));
        }
        if let Some(spool) = spool {
            registry.register_collector(Box::new(SpoolCollector {
                spool: Arc::downgrade(spool),
            }));
        }
        let metrics = Metrics {
            registry,
            families,
            cores,
            started: Instant::now(),
            spool: spool.map(Arc::downgrade),
            transaction_labels: Arc::default(),
            delivery_labels: Arc::default(),
            queues: Mutex::default(),
        };
        // Every core's series exist from the start (a scrape shows zeros, not gaps).
        for core in 0..cores {
            drop(metrics.core(core));
        }
        metrics
    }

    /// The cluster Redis client's failure counter and up gauge.
    pub fn cluster_redis(&self) -> (Counter, Gauge) {
        (
            self.families.cluster_redis_failures.clone(),
            self.families.cluster_redis_up.clone(),
        )
    }

    /// The password-hash pool's handles.
    pub fn hash_pool(&self) -> HashPoolMetrics {
        self.families.hash_pool.clone()
    }

    /// Shards this registry was made for.
    pub fn cores(&self) -> usize {
        self.cores
    }

    /// The handles of core `core`, made once per shard (this takes the families' locks; the
    /// handles then never do).
    pub fn core(&self, core: usize) -> CoreMetrics {
        let f = &self.families;
        let protocol = |protocol: &'static str| ProtocolMetrics {
            open: f
                .connections_open
                .get_or_create_owned(&ProtocolLabels { core, protocol }),
            total: f
                .connections
                .get_or_create_owned(&ProtocolLabels { core, protocol }),
            refused: f
                .refused
                .get_or_create_owned(&ProtocolLabels { core, protocol }),
            bytes_received: f
                .bytes_received
                .get_or_create_owned(&ProtocolLabels { core, protocol }),
            bytes_sent: f
                .bytes_sent
                .get_or_create_owned(&ProtocolLabels { core, protocol }),
            tls_handshakes: f
                .tls_handshakes
                .get_or_create_owned(&ProtocolLabels { core, protocol }),
            tls_resumed: f
                .tls_resumed
                .get_or_create_owned(&ProtocolLabels { core, protocol }),
            tls_failures: f
                .tls_failures
                .get_or_create_owned(&ProtocolLabels { core, protocol }),
        };
        let labels = CoreLabels { core };
        let deliveries = DELIVERY_RESULTS.map(|result| {
            let labels = DeliveryLabels {
                core,
                result: result.to_string(),
            };
            lock(&self.delivery_labels).insert(labels.clone());
            f.deliveries.get_or_create_owned(&labels)
        });
        let core_metrics = CoreMetrics {
            core,
            smtp: protocol("smtp"),
            pop3: protocol("pop3"),
            imap: protocol("imap"),
            message_bytes: f.message_bytes.get_or_create_owned(&labels),
            pop3_sessions: f.pop3_sessions.get_or_create_owned(&labels),
            pop3_retrievals: f.pop3_retrievals.get_or_create_owned(&labels),
            queue_entries: f.queue_entries.get_or_create_owned(&labels),
            reconciled: f.reconciled.get_or_create_owned(&labels),
            notices_pending: f.notices_pending.get_or_create_owned(&labels),
            notice_retries: f.notice_retries.get_or_create_owned(&labels),
            fsync_seconds: f.fsync_seconds.get_or_create_owned(&labels),
            commit_records: f.commit_records.get_or_create_owned(&labels),
            deliveries,
            delivery_family: f.deliveries.clone(),
            delivery_labels: Arc::clone(&self.delivery_labels),
            transactions: f.transactions.clone(),
            transaction_labels: Arc::clone(&self.transaction_labels),
            transaction_cache: Arc::default(),
            messages_sealed: f.messages_sealed.clone(),
        };
        // The common case exists from the start, so `rate()` sees the first message.
        drop(core_metrics.transaction_counter(250));
        core_metrics
    }

    /// The DMARC report recorder's count of observations it had no room for.
    pub fn dmarc_report_dropped(&self) -> Counter {
        self.families.dmarc_dropped.clone()
    }

    /// Copies sealed to their user's key before they were stored (`mailbox::sealing`).
    pub fn messages_sealed(&self) -> Counter {
        self.families.messages_sealed.clone()
    }

    /// The body budget's handles (one set for the process: the budget is shared by every
    /// core).
    pub fn body_memory(&self) -> BodyMemoryMetrics {
        let f = &self.families;
        let [mail, data] = BODY_REFUSAL_STAGES
            .map(|stage| f.body_refusals.get_or_create_owned(&StageLabels { stage }));
        BodyMemoryMetrics {
            in_flight: f.body_in_flight.clone(),
            max: f.body_memory_max.clone(),
            refused_mail: mail,
            refused_data: data,
        }
    }

    /// Sets the queue of `destination` on `core`: recipients queued and the age of the
    /// oldest, in seconds.
    pub fn set_queue(&self, core: usize, destination: &str, depth: i64, oldest_age_secs: i64) {
        let labels = QueueLabels {
            core,
            destination: destination.to_string(),
        };
        self.families.queue_depth.get_or_create(&labels).set(depth);
        self.families
            .queue_oldest
            .get_or_create(&labels)
            .set(oldest_age_secs);
        lock(&self.queues).insert(labels, (depth, oldest_age_secs));
    }

    /// Removes the series of `destination` on `core` (its queue is empty and gone).
    pub fn clear_queue(&self, core: usize, destination: &str) {
        let labels = QueueLabels {
            core,
            destination: destination.to_string(),
        };
        self.families.queue_depth.remove(&labels);
        self.families.queue_oldest.remove(&labels);
        lock(&self.queues).remove(&labels);
    }

    /// Every metric as Prometheus text (format 0.0.4, [`CONTENT_TYPE`]).
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::with_capacity(16 * 1024);
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)?;
        Ok(text)
    }

    /// The summary `/stat` serves and `relay stat` prints.
    pub fn stat(&self) -> Stat {
        let f = &self.families;
        let spool = self.spool.as_ref().and_then(Weak::upgrade);
        let transactions = lock(&self.transaction_labels).clone();
        let deliveries = lock(&self.delivery_labels).clone();
        let cores = (0..self.cores)
            .map(|core| {
                let protocol = |protocol: &'static str| {
                    let labels = ProtocolLabels { core, protocol };
                    stat::ProtocolStat {
                        open: f.connections_open.get_or_create(&labels).get(),
                        total: f.connections.get_or_create(&labels).get(),
                        refused: f.refused.get_or_create(&labels).get(),
                        bytes_received: f.bytes_received.get_or_create(&labels).get(),
                        bytes_sent: f.bytes_sent.get_or_create(&labels).get(),
                    }
                };
                let labels = CoreLabels { core };
                let mut by_result = BTreeMap::new();
                for t in transactions.iter().filter(|t| t.core == core) {
                    let count = f.transactions.get(t).map_or(0, |c| c.get());
                    *by_result.entry(t.result.to_string()).or_insert(0) += count;
                }
                let mut by_code = BTreeMap::new();
                for t in transactions.iter().filter(|t| t.core == core) {
                    let count = f.transactions.get(t).map_or(0, |c| c.get());
                    *by_code.entry(t.code.to_string()).or_insert(0) += count;
                }
                let delivered = deliveries
                    .iter()
                    .filter(|d| d.core == core)
                    .map(|d| {
                        let count = f.deliveries.get(d).map_or(0, |c| c.get());
                        (d.result.clone(), count)
                    })
                    .collect();
                let spool = spool.as_ref().and_then(|spool| {
                    (core < spool.shard_count()).then(|| {
                        let s = spool.shard(core).stats();
                        stat::SpoolStat {
                            records: s.records,
                            bytes: s.bytes,
                            commits: s.commits,
                            failed_records: s.failed_records,
                            segments: spool.segment_count(core) as u64,
                        }
                    })
                });
                stat::CoreStat {
                    core,
                    smtp: protocol("smtp"),
                    pop3: protocol("pop3"),
                    imap: protocol("imap"),
                    transactions: by_result,
                    transaction_codes: by_code,
                    message_bytes: f.message_bytes.get_or_create(&labels).get(),
                    pop3_sessions: f.pop3_sessions.get_or_create(&labels).get(),
                    pop3_retrievals: f.pop3_retrievals.get_or_create(&labels).get(),
                    deliveries: delivered,
                    queue_entries: f.queue_entries.get_or_create(&labels).get(),
                    spool,
                }
            })
            .collect();
        let queues = lock(&self.queues)
            .iter()
            .map(|(labels, (depth, oldest))| stat::QueueStat {
                core: labels.core,
                destination: labels.destination.clone(),
                depth: *depth,
                oldest_age_seconds: *oldest,
            })
            .collect();
        Stat {
            uptime_seconds: self.started.elapsed().as_secs(),
            cores,
            queues,
        }
    }
}

/// The `stage` labels of `smtp_body_memory_refusals_total`.
const BODY_REFUSAL_STAGES: [&str; 2] = ["mail", "data"];

/// The body budget's handles. `in_flight`'s atomic is the budget's own counter, so the
/// gauge costs nothing on top of the reservation.
#[derive(Clone, Debug)]
pub struct BodyMemoryMetrics {
    pub in_flight: Gauge,
    pub max: Gauge,
    pub refused_mail: Counter,
    pub refused_data: Counter,
}

/// One protocol's connection handles on one core.
#[derive(Clone, Debug)]
pub struct ProtocolMetrics {
    pub open: Gauge,
    pub total: Counter,
    pub refused: Counter,
    pub bytes_received: Counter,
    pub bytes_sent: Counter,
    pub tls_handshakes: Counter,
    pub tls_resumed: Counter,
    pub tls_failures: Counter,
}

impl ProtocolMetrics {
    /// Counts a connection accepted and open until the guard is dropped.
    pub fn opened(&self) -> OpenConnection {
        self.total.inc();
        self.open.inc();
        OpenConnection {
            open: self.open.clone(),
        }
    }
}

/// Keeps `connections_open` up while a connection lives.
#[derive(Debug)]
pub struct OpenConnection {
    open: Gauge,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// One core's handles: cheap to clone (atomics behind `Arc`s), no lock per event.
#[derive(Clone, Debug)]
pub struct CoreMetrics {
    core: usize,
    pub smtp: ProtocolMetrics,
    pub pop3: ProtocolMetrics,
    pub imap: ProtocolMetrics,
    pub message_bytes: Counter,
    pub pop3_sessions: Counter,
    pub pop3_retrievals: Counter,
    pub queue_entries: Gauge,
    /// Recipients the reconciliation queued again.
    pub reconciled: Counter,
    /// Settlements waiting to store a notice again.
    pub notices_pending: Gauge,
    pub notice_retries: Counter,
    pub fsync_seconds: Histogram,
    pub commit_records: Histogram,
    deliveries: [Counter; 4],
    delivery_family: Family<DeliveryLabels, Counter>,
    delivery_labels: Arc<Mutex<BTreeSet<DeliveryLabels>>>,
    transactions: Family<TransactionLabels, Counter>,
    transaction_labels: Arc<Mutex<BTreeSet<TransactionLabels>>>,
    /// This core's transaction handles by reply code (its own lock: never contended).
    transaction_cache: Arc<Mutex<HashMap<u16, Counter>>>,
    /// `messages_sealed`, one for the process (no `core` label).
    pub messages_sealed: Counter,
}

impl CoreMetrics {
    pub fn core(&self) -> usize {
        self.core
    }

    /// Counts one SMTP transaction answered with `code` (its result follows from the class:
    /// 2xx queued, 4xx deferred, 5xx rejected).
    pub fn transaction(&self, code: u16) {
        self.transaction_counter(code).inc();
    }

    /// The handle of `code` on this core, made on its first use.
    fn transaction_counter(&self, code: u16) -> Counter {
        lock(&self.transaction_cache)
            .entry(code)
            .or_insert_with(|| {
                let labels = TransactionLabels {
                    core: self.core,
                    result: transaction_result(code),
                    code,
                };
                lock(&self.transaction_labels).insert(labels.clone());
                self.transactions.get_or_create_owned(&labels)
            })
            .clone()
    }

    /// Counts one outbound delivery attempt's outcome: `delivered`, `deferred`, `bounced` or
    /// `expired` (another word gets its own series, made on first use).
    pub fn delivery(&self, result: &str) {
        match DELIVERY_RESULTS.iter().position(|r| *r == result) {
            Some(i) => {
                self.deliveries[i].inc();
            }
            None => {
                let labels = DeliveryLabels {
                    core: self.core,
                    result: result.to_string(),
                };
                lock(&self.delivery_labels).insert(labels.clone());
                self.delivery_family.get_or_create(&labels).inc();
            }
        }
    }

    /// The spool writer's observer for this core's shard.
    pub fn commit_observer(&self) -> Arc<dyn CommitObserver> {
        Arc::new(CommitHistograms {
            fsync_seconds: self.fsync_seconds.clone(),
            commit_records: self.commit_records.clone(),
        })
    }
}

/// Feeds a shard writer's group commits into the two histograms.
struct CommitHistograms {
    fsync_seconds: Histogram,
    commit_records: Histogram,
}

impl CommitObserver for CommitHistograms {
    fn synced(&self, took: Duration) {
        self.fsync_seconds.observe(took.as_secs_f64());
    }

    fn committed(&self, records: usize) {
        self.commit_records.observe(records as f64);
    }
}

/// The spool's own counters, read at every scrape.
#[derive(Debug)]
struct SpoolCollector {
    spool: Weak<Spool>,
}

impl Collector for SpoolCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(spool) = self.spool.upgrade() else {
            return Ok(());
        };
        let shards: Vec<_> = (0..spool.shard_count())
            .map(|i| (CoreLabels { core: i }, spool.shard(i).stats()))
            .collect();
        type Pick = fn(&crate::spool::ShardStats) -> u64;
        let counters: [(&str, &str, Pick); 4] = [
            ("spool_records", "Records stored durably", |s| s.records),
            ("spool_bytes", "Frame bytes stored durably", |s| s.bytes),
            (
                "spool_commits",
                "Group commits that stored at least one record",
                |s| s.commits,
            ),
            (
                "spool_failed_records",
                "Records answered with a storage error",
                |s| s.failed_records,
            ),
        ];
        for (name, help, pick) in counters {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (labels, stats) in &shards {
                metric
                    .encode_family(labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&pick(stats), None)?;
            }
        }
        let mut metric = encoder.encode_descriptor(
            "spool_segments",
            "Segment files of the shard",
            None,
            MetricType::Gauge,
        )?;
        for (labels, _) in &shards {
            let segments = spool.segment_count(labels.core) as i64;
            metric.encode_family(labels)?.encode_gauge(&segments)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, line_start: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn reconciliation_and_notice_retries_are_counted_per_core() {
        let metrics = Metrics::new(2, None);
        let core = metrics.core(1);
        core.reconciled.inc_by(3);
        core.notice_retries.inc();
        core.notices_pending.inc();
        let text = metrics.encode().expect("encodes");
        for (line, value) in [
            ("relay_queue_reconciled_total{core=\"1\"} ", 3.0),
            ("relay_queue_reconciled_total{core=\"0\"} ", 0.0),
            ("relay_notice_retries_total{core=\"1\"} ", 1.0),
            ("relay_notices_pending{core=\"1\"} ", 1.0),
        ] {
            assert_eq!(sample(&text, line), Some(value), "{line}\n{text}");
        }
    }

    #[test]
    fn every_core_has_its_series_from_the_start() {
        let metrics = Metrics::new(2, None);
        let text = metrics.encode().expect("encodes");
        for core in 0..2 {
            for protocol in ["smtp", "pop3", "imap"] {
                let line =
                    format!("relay_connections_total{{core=\"{core}\",protocol=\"{protocol}\"}} ");
                assert_eq!(sample(&text, &line), Some(0.0), "{line}\n{text}");
            }
            let line = format!("relay_deliveries_total{{core=\"{core}\",result=\"bounced\"}} ");
            assert_eq!(sample(&text, &line), Some(0.0), "{text}");
        }
        assert!(
            text.contains("# TYPE relay_spool_fsync_seconds histogram"),
            "{text}"
        );
    }

    #[test]
    fn handles_move_the_shared_series() {
        let metrics = Metrics::new(2, None);
        let core1 = metrics.core(1);
        let again = metrics.core(1);
        {
            let _open = core1.smtp.opened();
            again.transaction(250);
            core1.transaction(250);
            core1.transaction(550);
            core1.transaction(452);
            core1.delivery("delivered");
            core1.delivery("strange");
            let text = metrics.encode().expect("encodes");
            assert_eq!(
                sample(
                    &text,
                    "relay_connections_open{core=\"1\",protocol=\"smtp\"} "
                ),
                Some(1.0)
            );
        }
        let text = metrics.encode().expect("encodes");
        for (line, want) in [
            ("relay_connections_open{core=\"1\",protocol=\"smtp\"} ", 0.0),
            (
                "relay_connections_total{core=\"1\",protocol=\"smtp\"} ",
                1.0,
            ),
            (
                "relay_smtp_transactions_total{core=\"1\",result=\"queued\",code=\"250\"} ",
                2.0,
            ),
            (
                "relay_smtp_transactions_total{core=\"1\",result=\"rejected\",code=\"550\"} ",
                1.0,
            ),
            (
                "relay_smtp_transactions_total{core=\"1\",result=\"deferred\",code=\"452\"} ",
                1.0,
            ),
            (
                "relay_deliveries_total{core=\"1\",result=\"delivered\"} ",
                1.0,
            ),
            (
                "relay_deliveries_total{core=\"1\",result=\"strange\"} ",
                1.0,
            ),
            (
                "relay_deliveries_total{core=\"0\",result=\"delivered\"} ",
                0.0,
            ),
        ] {
            assert_eq!(sample(&text, line), Some(want), "{line}\n{text}");
        }
        let stat = metrics.stat();
        assert_eq!(stat.cores.len(), 2);
        let c1 = &stat.cores[1];
        assert_eq!(c1.transactions.get("queued"), Some(&2));
        assert_eq!(c1.transactions.get("rejected"), Some(&1));
        assert_eq!(c1.transactions.get("deferred"), Some(&1));
        assert_eq!(c1.transaction_codes.get("250"), Some(&2));
        assert_eq!(c1.deliveries.get("strange"), Some(&1));
        assert_eq!(c1.smtp.total, 1);
        assert_eq!(stat.cores[0].smtp.total, 0);
    }

    #[test]
    fn queue_series_are_set_and_cleared() {
        let metrics = Metrics::new(1, None);
        metrics.set_queue(0, "example.test", 3, 120);
        metrics.set_queue(0, "example.test", 4, 180);
        let text = metrics.encode().expect("encodes");
        assert_eq!(
            sample(
                &text,
                "relay_queue_depth{core=\"0\",destination=\"example.test\"} "
            ),
            Some(4.0)
        );
        assert_eq!(
            sample(
                &text,
                "relay_queue_oldest_age_seconds{core=\"0\",destination=\"example.test\"} "
            ),
            Some(180.0)
        );
        let stat = metrics.stat();
        assert_eq!(stat.queues.len(), 1);
        assert_eq!(
            (stat.queues[0].depth, stat.queues[0].oldest_age_seconds),
            (4, 180)
        );
        metrics.clear_queue(0, "example.test");
        let text = metrics.encode().expect("encodes");
        assert!(!text.contains("example.test"), "{text}");
        assert!(metrics.stat().queues.is_empty());
    }

    #[test]
    fn commit_observer_feeds_the_histograms() {
        let metrics = Metrics::new(1, None);
        let observer = metrics.core(0).commit_observer();
        observer.committed(3);
        observer.synced(Duration::from_millis(2));
        observer.synced(Duration::from_millis(4));
        let text = metrics.encode().expect("encodes");
        assert_eq!(
            sample(&text, "relay_spool_fsync_seconds_count{core=\"0\"} "),
            Some(2.0),
            "{text}"
        );
        assert_eq!(
            sample(&text, "relay_spool_commit_records_sum{core=\"0\"} "),
            Some(3.0),
            "{text}"
        );
    }

    #[test]
    fn body_memory_series_exist_from_the_start_and_share_one_set() {
        let metrics = Metrics::new(2, None);
        let text = metrics.encode().expect("encodes");
        for line in [
            "relay_smtp_body_bytes_in_flight ",
            "relay_smtp_body_memory_max_bytes ",
            "relay_smtp_body_memory_refusals_total{stage=\"mail\"} ",
            "relay_smtp_body_memory_refusals_total{stage=\"data\"} ",
        ] {
            assert_eq!(sample(&text, line), Some(0.0), "{line}\n{text}");
        }
        let a = metrics.body_memory();
        let b = metrics.body_memory();
        a.in_flight.inc_by(100);
        b.in_flight.inc_by(20);
        a.max.set(1000);
        a.refused_data.inc();
        b.refused_mail.inc();
        b.refused_mail.inc();
        let text = metrics.encode().expect("encodes");
        for (line, want) in [
            ("relay_smtp_body_bytes_in_flight ", 120.0),
            ("relay_smtp_body_memory_max_bytes ", 1000.0),
            (
                "relay_smtp_body_memory_refusals_total{stage=\"mail\"} ",
                2.0,
            ),
            (
                "relay_smtp_body_memory_refusals_total{stage=\"data\"} ",
                1.0,
            ),
        ] {
            assert_eq!(sample(&text, line), Some(want), "{line}\n{text}");
        }
    }

    #[test]
    fn result_follows_the_reply_class() {
        assert_eq!(transaction_result(250), "queued");
        assert_eq!(transaction_result(451), "deferred");
        assert_eq!(transaction_result(452), "deferred");
        assert_eq!(transaction_result(554), "rejected");
    }
}
