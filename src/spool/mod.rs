//! The spool: the relay's one store, an append-only, checksummed, group-committed log.
//!
//! # Role
//! Every accepted message is written here once, as a versioned rkyv record followed by its raw
//! body, in segment files per shard: `dir/shard-NNN/NNNNNNNNNNNNNNNNNNNN.seg`. Everything that
//! later happens to a message (local delivery, delivery results, POP3 deletions, retirement)
//! will be a small record of another [`RecordKind`] appended to the same log; indexes are
//! rebuilt from the log at start ([`Spool::open`] → [`SpoolIndex`]).
//!
//! Durability contract (DESIGN.md §2): a [`ShardHandle::append_message`] reply is `Ok` only
//! after the record's bytes are covered by a successful `fdatasync`, so "250 after DATA ⇔ on
//! stable storage". One writer thread per shard (`spool-wNN`) takes everything queued since
//! its last sync (up to `commit_records_max`, optionally waiting `commit_window` for more),
//! writes it with one vectored write straight from the sessions' buffers and syncs once.
//!
//! Why a plain writer thread and not io_uring file ops on the core: measured on the target VM
//! (research/storage-measurements.md §3), io_uring (linked write→fsync, drained batches) and
//! O_DIRECT were never faster than buffered `pwrite` + `fdatasync`, and batching is what
//! matters (64–256 records per sync reach the device ceiling). A synchronous thread keeps a
//! 0.3–30 ms fdatasync from stalling the core's event loop, and works identically under the
//! io_uring and epoll engines. Messages cross threads only through the shard's bounded
//! crossbeam channel and tokio oneshots: no shared lock on the hot path.
//!
//! Layout and checksums: see [`frame`]. Recovery rules: see [`recovery`] (decision table).
//! Failure rule: a failed write or fdatasync fails every request of that batch with
//! [`SpoolError::Io`], truncates the segment back to its last committed offset and continues
//! in a NEW segment (after a failed fsync the page cache state is unknown — "fsyncgate").
//! Each run also starts a new segment: files written by an earlier run are only read.
//!
//! # Exposure
//! Bodies, envelopes and origins are bytes from network peers; they are stored, checksummed
//! and never interpreted here. A body can contain anything, including bytes that look like a
//! frame: frame headers are checksummed with a per-segment random salt kept in the segment
//! preamble, so a resync scan after a damaged header cannot accept a frame planted in a body.
//! The spool directory is trusted local storage (dirs 0700, files 0600), but its contents are
//! still validated on read (crc32c + rkyv bytecheck): a damaged file yields a report or an
//! error, never undefined behaviour. `#![forbid(unsafe_code)]`: no `access_unchecked`, no mmap.
//!
//! # Standards
//! None on the wire. Durability follows POSIX `fdatasync` semantics for data and file size,
//! plus an explicit directory fsync when a segment is created (ext4/XFS need both).
//! Checksums are CRC-32C (Castagnoli). Payloads are rkyv 0.8 archives.
//!
//! # Limits
//! - At most 256 shards (a [`QueueId`] carries 8 bits of shard).
//! - A stored body (Received header + message) and a meta are each at most 4 GiB − 1 (`u32`
//!   lengths); the SMTP size limit is far below.
//! - `appends_pending_max` requests queued per shard; beyond it appends fail at once with
//!   [`SpoolError::Backpressure`] (answer `452 4.3.1`).
//! - Recovery reads one whole segment at a time into memory (≤ `segment_size`, or one
//!   oversized record), in up to 4 shards in parallel: peak ≈ 4 × `segment_size`.
//! - A message whose batch failed was answered 452 but may still reappear after a crash if its
//!   bytes reached the disk anyway (at-least-once, like any MTA).
//! - `fsync = false` gives up the durability contract (benchmarks only; the caller warns).
//!
//! # Tests
//! Unit tests sit in each file; `tests.rs` runs the spool on real files in tempdirs and through
//! the IO seam with injected errors; `sim_tests.rs` is the seeded simulation on [`sim::SimDisk`]
//! (crash points, torn and lost unsynced writes, write/sync/create errors, bit flips) whose
//! checker asserts acknowledged ⊆ recovered ⊆ accepted with intact bodies; failures print
//! `SEED=…` for replay. The real [`FsIo`] is also proven by the kill -9 crash test.

#![forbid(unsafe_code)]

mod error;
pub mod frame;
pub mod inspect;
pub mod io;
pub mod recovery;
pub mod sim;
mod writer;

#[cfg(test)]
mod sim_tests;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam::channel::{bounded, Sender, TrySendError};
use tokio::sync::oneshot;

use crate::envelope::{Envelope, Origin, QueueId};

pub use error::SpoolError;
pub use frame::{MessageMeta, RecordKind};
pub use io::{FsIo, SegmentFile, SegmentIo, MAX_SHARDS};
pub use recovery::{CorruptFrame, RecoveryReport, ShardRecovery, TornTail};

use frame::{Record, MAX_PART_LEN};
use recovery::{scan_shard, Mode, ShardResume};
use writer::{LoopConfig, Msg, Pending, Request, ShardWriter, WriterConfig};

/// `[spool]` settings the spool itself uses. Defaults carry their reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    /// fdatasync every batch. Only benchmarks turn this off.
    pub fsync: bool,
    /// Extra time a batch waits for more records. Default 0: natural batching (everything
    /// queued during the previous fdatasync) already reaches 64+ records under load, and a lone
    /// message should not wait.
    pub commit_window: Duration,
    /// Segment size before rolling over. Default 64 MiB: large enough that rollover (a create +
    /// two syncs) is rare, small enough to read one at a time at recovery.
    pub segment_size: u64,
    /// Bounded queue per shard. Default 4096 (≥ 1024: small crossbeam capacities measured 3–5×
    /// slower, storage-measurements.md §5), about 40 MB of 10 KB messages.
    pub appends_pending_max: usize,
    /// Records per group commit. Default 256: measured at the device ceiling (26–31k rec/s) with
    /// p99 commit latency still ≤ 30 ms; 256 × 4 iovecs = IOV_MAX, one writev.
    pub commit_records_max: usize,
}

impl SpoolConfig {
    pub fn new(dir: impl Into<PathBuf>) -> SpoolConfig {
        SpoolConfig {
            dir: dir.into(),
            fsync: true,
            commit_window: Duration::ZERO,
            segment_size: 64 << 20,
            appends_pending_max: 4096,
            commit_records_max: 256,
        }
    }

    fn check(&self, shards: usize) -> Result<(), SpoolError> {
        if shards == 0 || shards > MAX_SHARDS {
            return Err(SpoolError::Config(format!(
                "shard count {shards} is outside 1..={MAX_SHARDS}"
            )));
        }
        if self.segment_size < 2 * frame::SEGMENT_PREAMBLE_LEN {
            return Err(SpoolError::Config(format!(
                "segment_size {} is below the minimum of {} bytes",
                self.segment_size,
                2 * frame::SEGMENT_PREAMBLE_LEN
            )));
        }
        if self.appends_pending_max == 0 || self.commit_records_max == 0 {
            return Err(SpoolError::Config(
                "appends_pending_max and commit_records_max must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig::new("spool")
    }
}

/// A message to store, as the SMTP session hands it over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    pub id: QueueId,
    pub arrival_unix_micros: u64,
    pub origin: Origin,
    pub envelope: Envelope,
    /// The Received header this relay prepends (stored first).
    pub received_header: Vec<u8>,
    pub body: Vec<u8>,
    /// Local mailboxes this message is delivered to (see [`MessageMeta::mailboxes`]).
    pub mailboxes: Vec<String>,
    /// Remote RCPTs and alias forwards (see [`MessageMeta::remote`]).
    pub remote: Vec<String>,
}

/// Where a record lives. `body_offset..body_offset + body_len` of the segment file is the
/// stored body (Received header ‖ message), ready to be served as is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Location {
    pub shard: u8,
    pub segment: u64,
    /// File offset of the frame header.
    pub offset: u64,
    pub frame_len: u64,
    pub body_offset: u64,
    pub body_len: u64,
}

/// A durable append: the reply to [`ShardHandle::append_message`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    pub id: QueueId,
    pub location: Location,
}

/// A message read back from the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub meta: MessageMeta,
    pub location: Location,
    /// Received header ‖ message.
    pub body: Vec<u8>,
}

/// Queue id → location of every message record recovered at open. A snapshot: appends after
/// open are reported through their [`Committed`] replies (the queue module keeps its own
/// live index from those).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpoolIndex {
    messages: HashMap<QueueId, Location>,
}

impl SpoolIndex {
    pub fn get(&self, id: QueueId) -> Option<&Location> {
        self.messages.get(&id)
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&QueueId, &Location)> {
        self.messages.iter()
    }
}

pub(crate) struct ShardShared {
    shard: u8,
    tx: Sender<Msg>,
    closed: AtomicBool,
    /// Appends between their `closed` check and their send (see `writer::run` shutdown).
    in_flight: AtomicUsize,
    /// Highest id micros handed out (strictly increasing).
    last_micros: AtomicU64,
    /// Counters, written by the writer once per batch.
    commits: AtomicU64,
    records: AtomicU64,
    bytes: AtomicU64,
    failed_records: AtomicU64,
}

/// Counters of one shard since open (for metrics and benchmarks).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardStats {
    /// Group commits that stored at least one record.
    pub commits: u64,
    /// Records acknowledged durable.
    pub records: u64,
    /// Frame bytes acknowledged durable.
    pub bytes: u64,
    /// Records answered with an error.
    pub failed_records: u64,
}

/// A shard's append side: cheap to clone, shared with the connection tasks of its core.
#[derive(Clone)]
pub struct ShardHandle {
    shared: Arc<ShardShared>,
}

impl std::fmt::Debug for ShardHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardHandle")
            .field("shard", &self.shared.shard)
            .finish_non_exhaustive()
    }
}

const MICROS_MAX: u64 = (1 << (64 - QueueId::SHARD_BITS)) - 1;

impl ShardHandle {
    pub fn shard(&self) -> u8 {
        self.shared.shard
    }

    pub fn stats(&self) -> ShardStats {
        let s = &self.shared;
        ShardStats {
            commits: s.commits.load(Ordering::Relaxed),
            records: s.records.load(Ordering::Relaxed),
            bytes: s.bytes.load(Ordering::Relaxed),
            failed_records: s.failed_records.load(Ordering::Relaxed),
        }
    }

    /// A new queue id: the wall clock in µs, bumped so that ids of this shard strictly increase
    /// (also across restarts: seeded from the highest id recovered, and across clock steps
    /// backwards).
    pub fn next_id(&self, now: SystemTime) -> QueueId {
        let now_micros = now
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_micros()).unwrap_or(MICROS_MAX))
            .unwrap_or(0)
            .min(MICROS_MAX);
        let prev = self
            .shared
            .last_micros
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| {
                Some(now_micros.max(last + 1).min(MICROS_MAX))
            })
            .unwrap_or(MICROS_MAX);
        QueueId::new(now_micros.max(prev + 1).min(MICROS_MAX), self.shared.shard)
    }

    /// Queues a message for the next group commit. Never blocks: a full queue is
    /// `Err(Backpressure)` at once. The receiver yields `Ok(Committed)` once the record is on
    /// stable storage, or the batch's error. A receiver that yields `RecvError` means the spool
    /// stopped before storing it: treat as `Closed`.
    pub fn append_message(
        &self,
        msg: NewMessage,
    ) -> Result<oneshot::Receiver<Result<Committed, SpoolError>>, SpoolError> {
        let len = msg.received_header.len() as u64 + msg.body.len() as u64;
        if len > MAX_PART_LEN {
            return Err(SpoolError::TooLarge {
                len,
                max: MAX_PART_LEN,
            });
        }
        let (reply, rx) = oneshot::channel();
        let request = Request {
            pending: Pending {
                meta: MessageMeta {
                    id: msg.id,
                    arrival_unix_micros: msg.arrival_unix_micros,
                    origin: msg.origin,
                    envelope: msg.envelope,
                    received_len: msg.received_header.len() as u64,
                    mailboxes: msg.mailboxes,
                    remote: msg.remote,
                },
                received: msg.received_header,
                body: msg.body,
            },
            reply,
        };
        let shared = &self.shared;
        shared.in_flight.fetch_add(1, Ordering::SeqCst);
        let result = if shared.closed.load(Ordering::SeqCst) {
            Err(SpoolError::Closed)
        } else {
            match shared.tx.try_send(Msg::Append(request)) {
                Ok(()) => Ok(rx),
                Err(TrySendError::Full(_)) => Err(SpoolError::Backpressure),
                Err(TrySendError::Disconnected(_)) => Err(SpoolError::Closed),
            }
        };
        shared.in_flight.fetch_sub(1, Ordering::SeqCst);
        result
    }
}

/// The open spool: recovered index, one writer thread per shard.
pub struct Spool {
    io: Arc<dyn SegmentIo>,
    handles: Vec<ShardHandle>,
    writers: Vec<Option<JoinHandle<()>>>,
    index: SpoolIndex,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("root", &self.io.root())
            .field("shards", &self.handles.len())
            .field("index", &self.index.len())
            .finish_non_exhaustive()
    }
}

/// Recovery scans at most this many shards at once (each holds one segment in memory).
const RECOVERY_THREADS_MAX: usize = 4;

/// Everything recovery produced, before threads start (also used by the simulation).
pub(crate) struct Recovered {
    pub report: RecoveryReport,
    pub index: SpoolIndex,
    /// Resume points of shards `0..shards`.
    pub resume: Vec<ShardResume>,
}

/// Recovers every shard directory under the root (repairing `0..shards`, reading the others),
/// creating missing shards `0..shards`. Shards are scanned in parallel.
pub(crate) fn recover(io: &dyn SegmentIo, shards: usize) -> Result<Recovered, SpoolError> {
    for s in 0..shards {
        io.create_shard(s as u8)
            .map_err(|e| SpoolError::io("create shard dir", io.shard_path(s as u8), e))?;
    }
    let present = io
        .list_shards()
        .map_err(|e| SpoolError::io("list shards", io.root(), e))?;
    type ShardOutcome = Result<(ShardRecovery, ShardResume, Vec<(QueueId, Location)>), SpoolError>;
    let scan_one = |shard: u8| -> ShardOutcome {
        let mode = if usize::from(shard) < shards {
            Mode::Repair
        } else {
            Mode::ReadOnly
        };
        let mut found = Vec::new();
        let (report, resume) = scan_shard(io, shard, mode, &mut |v| {
            let Record::Message(meta) = &v.record;
            found.push((meta.id, v.location));
            ControlFlow::Continue(())
        })?;
        Ok((report, resume, found))
    };
    // A few shards at a time: each worker holds one whole segment in memory while scanning.
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, RECOVERY_THREADS_MAX)
        .min(present.len().max(1));
    let next = AtomicUsize::new(0);
    let mut outcomes: Vec<Option<ShardOutcome>> = (0..present.len()).map(|_| None).collect();
    std::thread::scope(|scope| {
        let jobs: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&shard) = present.get(i) else {
                            break;
                        };
                        done.push((i, scan_one(shard)));
                    }
                    done
                })
            })
            .collect();
        for job in jobs {
            // A panicking worker leaves its shards without outcome: reported below.
            if let Ok(done) = job.join() {
                for (i, outcome) in done {
                    outcomes[i] = Some(outcome);
                }
            }
        }
    });
    let outcomes = outcomes.into_iter().map(|o| {
        o.unwrap_or_else(|| {
            Err(SpoolError::Recovery {
                path: io.root().to_path_buf(),
                offset: 0,
                reason: "a recovery thread panicked".into(),
            })
        })
    });
    let mut report = RecoveryReport::default();
    let mut index = SpoolIndex::default();
    let mut resume = vec![ShardResume::default(); shards];
    for (&shard, outcome) in present.iter().zip(outcomes) {
        let (mut shard_report, shard_resume, found) = outcome?;
        for (id, location) in found {
            if index.messages.insert(id, location).is_some() {
                shard_report.duplicate_ids.push(id);
            }
        }
        if usize::from(shard) < shards {
            resume[usize::from(shard)] = shard_resume;
        }
        report.shards.push(shard_report);
    }
    Ok(Recovered {
        report,
        index,
        resume,
    })
}

impl Spool {
    /// Recovers every shard directory found under `config.dir` (also ones ≥ `shards`, left by a
    /// run with more cores: read, never written), creates missing shards `0..shards`, and
    /// starts one writer thread per shard. A spool left by a killed process opens without any
    /// manual step; only what [`recovery::decide`] calls Fatal stops it.
    pub fn open(config: SpoolConfig, shards: usize) -> Result<(Spool, RecoveryReport), SpoolError> {
        let io: Arc<dyn SegmentIo> = Arc::new(FsIo::new(config.dir.clone()));
        Spool::open_with_io(config, shards, io)
    }

    /// [`Spool::open`] on any [`SegmentIo`] (the simulated disk in tests). `config.dir` is
    /// ignored in favour of `io.root()`.
    pub fn open_with_io(
        config: SpoolConfig,
        shards: usize,
        io: Arc<dyn SegmentIo>,
    ) -> Result<(Spool, RecoveryReport), SpoolError> {
        config.check(shards)?;
        let recovered = recover(io.as_ref(), shards)?;
        let mut handles = Vec::with_capacity(shards);
        let mut writers = Vec::with_capacity(shards);
        for (shard, resume) in recovered.resume.iter().enumerate() {
            let shard = shard as u8;
            let (tx, rx) = bounded(config.appends_pending_max);
            let shared = Arc::new(ShardShared {
                shard,
                tx,
                closed: AtomicBool::new(false),
                in_flight: AtomicUsize::new(0),
                last_micros: AtomicU64::new(resume.last_micros),
                commits: AtomicU64::new(0),
                records: AtomicU64::new(0),
                bytes: AtomicU64::new(0),
                failed_records: AtomicU64::new(0),
            });
            let writer = ShardWriter::new(
                shard,
                Arc::clone(&io),
                WriterConfig {
                    segment_size: config.segment_size,
                    fsync: config.fsync,
                },
                resume.next_segment,
                resume.next_seq,
            );
            let loop_cfg = LoopConfig {
                commit_window: config.commit_window,
                commit_records_max: config.commit_records_max,
            };
            let thread_shared = Arc::clone(&shared);
            let spawned = std::thread::Builder::new()
                .name(format!("spool-w{shard:02}"))
                .spawn(move || writer::run(writer, rx, thread_shared, loop_cfg));
            let join = match spawned {
                Ok(j) => j,
                Err(e) => {
                    // Stop the writers already started before reporting.
                    let partial = Spool {
                        io: Arc::clone(&io),
                        handles,
                        writers,
                        index: SpoolIndex::default(),
                    };
                    drop(partial);
                    return Err(SpoolError::io("spawn writer thread", io.root(), e));
                }
            };
            handles.push(ShardHandle { shared });
            writers.push(Some(join));
        }
        let spool = Spool {
            io,
            handles,
            writers,
            index: recovered.index,
        };
        Ok((spool, recovered.report))
    }

    pub fn shard_count(&self) -> usize {
        self.handles.len()
    }

    /// The append handle of shard `i`.
    ///
    /// # Panics
    /// If `i >= shard_count()`: a wiring bug, not an operating condition.
    pub fn shard(&self, i: usize) -> ShardHandle {
        self.handles[i].clone()
    }

    /// Queue id → location of every message recovered at open (a snapshot).
    pub fn index(&self) -> &SpoolIndex {
        &self.index
    }

    /// Reads one message back (meta + stored body), verifying its checksums.
    pub fn read_message(&self, location: &Location) -> Result<StoredMessage, SpoolError> {
        inspect::read_at(self.io.as_ref(), location)
    }

    fn stop(&mut self) -> Result<(), SpoolError> {
        for h in &self.handles {
            h.shared.closed.store(true, Ordering::SeqCst);
        }
        for h in &self.handles {
            // Blocks only while the queue is full; the writer is draining it.
            let _ = h.shared.tx.send(Msg::Shutdown);
        }
        let mut panicked = None;
        for (shard, w) in self.writers.iter_mut().enumerate() {
            if let Some(join) = w.take() {
                if join.join().is_err() {
                    panicked = Some(shard);
                }
            }
        }
        match panicked {
            Some(shard) => Err(SpoolError::Io {
                op: "join writer thread",
                path: self.io.shard_path(shard as u8),
                source: Arc::new(std::io::Error::other("spool writer thread panicked")),
            }),
            None => Ok(()),
        }
    }

    /// Stops accepting (appends now fail with `Closed`), lets the writers commit (write +
    /// fdatasync) everything already queued and answer it, and joins them.
    pub fn close(mut self) -> Result<(), SpoolError> {
        self.stop()
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if self.writers.iter().any(Option::is_some) {
            if let Err(e) = self.stop() {
                tracing::error!(error = %e, "spool: stop on drop");
            }
        }
    }
}
