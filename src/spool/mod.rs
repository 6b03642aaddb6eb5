//! The spool: the relay's one store, an append-only, checksummed, group-committed log.
//!
//! # Role
//! Every accepted message is written here once, as a versioned rkyv record followed by its raw
//! body, in segment files per shard: `dir/shard-NNN/NNNNNNNNNNNNNNNNNNNN.seg`. Everything that
//! later happens to a message is a small record of another [`RecordKind`] appended to the same
//! log. Record kinds today (frame layout in [`frame`], payload layouts in `record`):
//! - `Message` (1): meta + stored body. Local delivery is in the meta (`mailboxes`, and since
//!   layout v2 each copy's [`Placement`] in its user's store), so it is durable with the
//!   message in the same frame; `remote` lists what is still to relay. Since layout v3 the
//!   meta may end with the message's IMAP summary (opaque bytes, given to
//!   [`ShardHandle::append_message_with_summary`]), read alone by [`Spool::read_summary`]
//!   and never held in the index.
//! - `MailboxDeletion` (2): `{ mailbox, ids }`, a POP3 session's DELEs at QUIT, appended with
//!   [`ShardHandle::append_deletion`] through the same queue and group commit as messages and
//!   answered only after fdatasync (`+OK` to QUIT then).
//! - `DeliveryResult` (3): a [`DeliveryRecord`] `{ results, dsn_sent }`: outbound delivery
//!   results ([`DeliveryResult`]: per remote recipient `Delivered`, `Deferred` (with the next
//!   attempt), `Bounced` or `Expired`, with the reply and attempt number) and DSN markers
//!   ([`DsnSent`]: a failure / delay / success notice about a recipient was sent), appended
//!   with [`ShardHandle::append_results`], [`ShardHandle::append_dsn_sent`] or, both in one
//!   frame, [`ShardHandle::append_delivery`]; same queue, group commit and fdatasync, answered
//!   after the live index applied them. A result may go to any shard (the core that owns the
//!   destination), not only its message's.
//! - `MailboxState` (4): a [`MailboxState`] `{ user, seq, ops, released }` of the mail store
//!   (docs/MAILSTORE.md), appended with [`ShardHandle::append_state`]; same queue, group
//!   commit and fdatasync, answered after the index applied its `released` ids (as deletions
//!   of the user's copies) and, for a checkpoint, voided the user's earlier records.
//!   [`Spool::replay`] lists every state record not void, by `(user, seq)`; compaction keeps
//!   a void one only while a message it releases is on disk (`index`'s module doc).
//!
//! # Outbound delivery state
//! After a restart [`Spool::startup_view`] rebuilds the queue: per live message, each remote
//! recipient with whether it is final, its attempt count and next attempt (from the latest
//! Deferred by `(attempt, at)`) and whether its delay notice was recorded. [`Spool::replay`]
//! gives the same per message with the last replies and final results (read from the log;
//! `relay queue` uses the in-memory queue view instead: [`Spool::queued`]). Every recipient
//! is delivered at least once: a result is acknowledged only once durable, so only the
//! transaction in flight at a crash can be repeated.
//! The delivery runtime stores a notice as a new message first and then appends the final
//! result together with the notice's marker in ONE record ([`ShardHandle::append_delivery`]):
//! a crash between the two repeats the attempt and may send that notice twice, never loses
//! it. Read from the message before appending the result that finishes it: from that moment it
//! may be garbage, and compaction may drop it.
//!
//! # The live index, reads and replay
//! Recovery builds a live index (queue id → location, checksums, mailbox copies and their
//! deletion state; a [`dashmap::DashMap`] touched once per message, never per byte). Writer
//! threads update it after each commit, before replying, and compaction after each move, so
//! [`Spool::locate`] / [`Spool::read_body`] see a message acknowledged a microsecond ago. A body
//! read is one positioned read of the body bytes through a small cache of open segment
//! handles, verified against the frame checksum without reading the meta (see [`frame`]).
//! The shards read with [`Spool::read_body_async`] / [`Spool::read_message_async`]: the same
//! locate, checks and retry, with only the byte move handed to [`FileReads`] (the shard's
//! io_uring ring, or the epoll engine's bounded reader pool: `runtime::file_read`), so a body
//! not in the page cache never blocks a core; the checksum is computed in 256 KiB steps with a
//! yield between two. The synchronous reads stay for tools, tests and `relay user move`.
//!
//! # Verified once
//! A body the shards read ([`Spool::read_body_async`]: IMAP FETCH, POP3 RETR, web mail) is
//! checked against its data checksum until it matches once in this process; the live index
//! then marks the message verified at that location (`IndexEntry::verified`, one bool in an
//! entry that exists anyway: bounded by the index, nothing to evict) and later reads of it
//! skip the checksum. A frame's bytes never change once written (segments are append-only,
//! and compaction writes a moved frame to a new location, which clears the mark), so what is
//! skipped is the check of bytes already checked, not of new ones. The trade-off: a body
//! damaged on disk after its first verified read (a media error, a stray write to the
//! segment file) and then evicted from the page cache is served unverified until the relay
//! restarts or compaction moves it; before, the next read after the eviction would have
//! refused it. Recovery still checks every frame at start, and the synchronous reads (tools,
//! `relay user move`) and [`Spool::read_message_async`] (outbound delivery) check every time.
//! The checksum was 7% of the relay's CPU on a range body FETCH (BENCHMARKS.md, 2026-12-05).
//! [`Spool::body_checksums`] counts the checks made.
//! [`Spool::startup_view`] gives the mailbox store and the queue what to rebuild at start.
//!
//! # Liveness and compaction
//! A message is garbage when every remote recipient has a durable final result (Delivered,
//! Bounced or Expired), every local mailbox has a durable deletion for it, and it has at least
//! one of the two (one function decides, `index::is_garbage`; a message with neither mailboxes
//! nor remote routes is kept: its recipients are unaccounted for). Deferred results and DSN
//! markers never make a message garbage. [`Spool::compact`] rewrites sealed segments whose
//! live bytes fell below 50% (live frames, and the deletions, final results, latest Deferred
//! results and markers still needed by messages on disk) into a new segment — temp file,
//! fdatasync, rename, directory fsync, index update, unlink, directory fsync — on the
//! caller's thread, without blocking ingest or reads.
//! A crash at any point leaves either a temporary file (removed at open) or old and new
//! segments side by side (identical copies: one is indexed, the id is reported, the next
//! compaction drops the other); nothing acknowledged is lost and no deletion is undone. The
//! protocol and each crash case are in [`compact`]. [`compact_offline`] is
//! `relay spool compact --dir D`.
//!
//! Durability contract (docs/ARCHITECTURE.md §4): a [`ShardHandle::append_message`] reply is `Ok`
//! only after the record's bytes are covered by a successful `fdatasync`, so "250 after DATA ⇔ on
//! stable storage". One writer thread per shard (`spool-wNN`) takes everything queued since
//! its last sync (up to `commit_records_max`, optionally waiting `commit_window` for more),
//! writes it with one vectored write straight from the sessions' buffers and syncs once.
//!
//! Why a plain writer thread and not io_uring file ops on the core: measured on the target VM
//! (docs/ARCHITECTURE.md §5), io_uring (linked write→fsync, drained batches) and
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
//! Each run also starts a new segment: files written by an earlier run are only read (and,
//! once sealed, compacted).
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
//! plus an explicit directory fsync when a segment is created, renamed or removed (ext4/XFS
//! need both); `rename(2)` is relied on to be atomic.
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
//! - The live index holds every message on disk (≈ 150 B + mailbox names + 48 B and the
//!   address per remote recipient: no replies, which replay reads back from the log).
//!   Recovery keeps, besides the index, a compact fold of the delivery records (per
//!   recipient: final?, the latest Deferred's attempt and times; the delay markers) until
//!   [`Spool::startup_view`] takes it: a spool of a million deferred messages recovers in
//!   under 1 GiB (BENCHMARKS.md). [`Spool::replay`] reads the log each call;
//!   [`Spool::queued`] (`relay queue`) reads it once, then keeps the queued messages' replay
//!   in memory (`queue_view`: about the replay's size, only once asked for). Compaction's
//!   reference list holds 24 B per id named by a deletion or delivery record on disk.
//! - A stored reply is at most [`REPLY_MAX_LEN`] bytes (longer ones are cut).
//! - At most 128 segment handles are cached for reads (one fd each).
//! - Compaction holds one source segment and its kept frames in memory at a time (≤ 2 ×
//!   `segment_size`); one compaction runs at a time. Shards of an earlier run with more cores
//!   (read-only at open) are not compacted.
//! - One process writes a spool at a time: [`Spool::open`] takes an exclusive `flock` on
//!   `<dir>/lock` before recovery touches anything (released by the kernel when the process
//!   dies, so a crash leaves no stale lock), so a second server or a `relay spool compact`
//!   next to a running server fails at once with [`SpoolError::Locked`]. `relay spool ls` and
//!   `cat` only read and take no lock.
//!
//! # Tests
//! Unit tests sit in each file; `tests.rs` runs the spool on real files in tempdirs and through
//! the IO seam with injected errors (deletions, replay, reads racing compaction, leftovers of an
//! interrupted compaction, delivery results and markers through recovery and compaction);
//! `sim_tests.rs` is the seeded simulation on `sim::SimDisk` (appends, deletions, delivery
//! results and DSN markers, compactions; crash points anywhere, also inside a compaction; torn
//! and lost unsynced writes and directory operations; write/sync/create errors; bit flips)
//! whose checker asserts acknowledged ⊆ recovered ⊆ accepted (minus garbage) with intact bodies
//! and copies, acknowledged deletions and results never undone, a message with a pending
//! recipient never gone, and a replay that lists each live message once with exactly the
//! pending recipients of the index (and their latest Deferred); a
//! second simulation replays every crash point of one compaction. Failures print `SEED=…` for
//! replay. The real [`FsIo`] is proven by kill -9 tests: `tests/spool_compaction.rs` kills a
//! compaction process at many moments. `tests/spool_golden.rs` pins the disk format with
//! segment files of format 1. `fuzz` feeds arbitrary segment files to the recovery scanner.
//! `sim` and `fuzz` are compiled only for tests and with the features `sim` and `fuzzing`.

#![forbid(unsafe_code)]

pub mod compact;
mod error;
pub mod frame;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;
mod index;
pub mod inspect;
pub mod io;
mod queue_view;
mod record;
pub mod recovery;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
pub mod state;
mod writer;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam::channel::{bounded, Sender, TrySendError};
use tokio::sync::oneshot;

use crate::envelope::{Envelope, Origin, QueueId};
pub use crate::runtime::file_read::FileReads;
use crate::runtime::file_read::ReadSource;
use inspect::MessageHead;

pub use compact::{compact_offline, compact_offline_with, CompactionConfig, CompactionReport};
pub use error::SpoolError;
pub use frame::{
    DeliveryRecord, DeliveryResult, DsnKind, DsnSent, MailboxDeletion, MessageMeta, Outcome,
    RecordKind, REPLY_MAX_LEN,
};
pub use index::{PendingRecipient, Replay, ReplayMessage};
pub use io::{FsIo, SegmentFile, SegmentIo, MAX_SHARDS};
pub use recovery::{CorruptFrame, RecoveryReport, ShardRecovery, TornTail};
pub use state::{Flags, FolderId, MailboxState, Placement, SpecialUse, StateOp, INBOX};

use compact::CompactionState;
pub use frame::MAX_PART_LEN;
use frame::{FrameHeader, Record, FRAME_HEADER_LEN};
use index::{
    DeliveryHistory, FileCache, Found, IndexEntry, LiveIndex, RecordRefs, Ref, StartupHistory,
    StateRef, FILE_CACHE_CAPACITY,
};
use queue_view::{NewEntry, QueueView};
use recovery::{scan_shard, Mode, ShardResume};
use rkyv::util::AlignedVec;
pub use writer::CommitObserver;
use writer::{LoopConfig, Msg, Pending, PendingMessage, Request, ShardWriter, Waiter};

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
    /// slower, docs/ARCHITECTURE.md §3), about 40 MB of 10 KB messages.
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
    /// Parallel to `mailboxes`, or empty (see [`MessageMeta::placements`]).
    pub placements: Vec<Option<Placement>>,
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
    /// Set once (by the server, before traffic) to watch group commits.
    observer: std::sync::OnceLock<Arc<dyn CommitObserver>>,
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

    /// Lets `observer` watch this shard's group commits (fsync latency, batch size). Only the
    /// first call has an effect: false when an observer was already set.
    pub fn observe_commits(&self, observer: Arc<dyn CommitObserver>) -> bool {
        self.shared.observer.set(observer).is_ok()
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
        self.append_message_with_summary(msg, None)
    }

    /// [`ShardHandle::append_message`] with the message's IMAP summary in its frame
    /// (`summary`: opaque bytes, returned by [`Spool::read_summary`]). Give one only for a
    /// message with local mailboxes: nothing else reads it.
    pub fn append_message_with_summary(
        &self,
        msg: NewMessage,
        summary: Option<Vec<u8>>,
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
            pending: Pending::Message(PendingMessage {
                meta: record::MessageV3::new(
                    MessageMeta {
                        id: msg.id,
                        arrival_unix_micros: msg.arrival_unix_micros,
                        origin: msg.origin,
                        envelope: msg.envelope,
                        received_len: msg.received_header.len() as u64,
                        mailboxes: msg.mailboxes,
                        remote: msg.remote,
                        placements: msg.placements,
                    },
                    summary,
                ),
                received: msg.received_header,
                body: msg.body,
            }),
            reply: Waiter::Message(reply),
        };
        self.send(request).map(|()| rx)
    }

    /// Queues a POP3 session's deletions in `mailbox` (applied at QUIT) for the next group
    /// commit: same bounded queue, same batches as messages. The receiver yields `Ok(())` only
    /// once the record is on stable storage (send `+OK` then) and the live index applies it;
    /// `RecvError` means the spool stopped first: nothing was deleted. An empty `ids` is
    /// answered at once.
    pub fn append_deletion(
        &self,
        mailbox: String,
        ids: Vec<QueueId>,
    ) -> Result<oneshot::Receiver<Result<(), SpoolError>>, SpoolError> {
        let (reply, rx) = oneshot::channel();
        if ids.is_empty() {
            let _ = reply.send(Ok(()));
            return Ok(rx);
        }
        self.send(Request {
            pending: Pending::Deletion(MailboxDeletion { mailbox, ids }),
            reply: Waiter::Deletion(reply),
        })
        .map(|()| rx)
    }

    /// Queues one user's mail-store record ([`MailboxState`], docs/MAILSTORE.md) for the next
    /// group commit: same bounded queue, same batches as messages. The receiver yields `Ok(())`
    /// only once the record is on stable storage and the live index applied it: each id in
    /// `released` marks `user`'s copy of that message deleted, as
    /// [`ShardHandle::append_deletion`] does (a message with no copy left and no pending
    /// remote recipient is garbage from then on), and a checkpoint voids the user's earlier
    /// records. `RecvError` means the spool stopped first: nothing was recorded. A record
    /// without ops and without released ids changes nothing and is answered at once.
    pub fn append_state(
        &self,
        state: MailboxState,
    ) -> Result<oneshot::Receiver<Result<(), SpoolError>>, SpoolError> {
        let (reply, rx) = oneshot::channel();
        if state.ops.is_empty() && state.released.is_empty() {
            let _ = reply.send(Ok(()));
            return Ok(rx);
        }
        self.send(Request {
            pending: Pending::State(state),
            reply: Waiter::State(reply),
        })
        .map(|()| rx)
    }

    /// Queues outbound delivery results (see [`DeliveryResult`]) for the next group commit, as
    /// one record: same bounded queue, same batches as messages. The receiver yields `Ok(())`
    /// only once the record is on stable storage and the live index applied it (a message
    /// whose last pending recipient became final, with every mailbox copy deleted, is garbage
    /// from then on: read what a bounce needs from it before). `RecvError` means the spool
    /// stopped first: nothing was recorded. Replies longer than [`REPLY_MAX_LEN`] bytes are
    /// cut. An empty `results` is answered at once.
    pub fn append_results(
        &self,
        results: Vec<DeliveryResult>,
    ) -> Result<oneshot::Receiver<Result<(), SpoolError>>, SpoolError> {
        self.append_delivery(DeliveryRecord {
            results,
            dsn_sent: Vec::new(),
        })
    }

    /// Queues DSN markers ([`DsnSent`]) like [`ShardHandle::append_results`]: once `Ok`, a
    /// restart's replay lists them and the notice must not be sent again.
    pub fn append_dsn_sent(
        &self,
        dsn_sent: Vec<DsnSent>,
    ) -> Result<oneshot::Receiver<Result<(), SpoolError>>, SpoolError> {
        self.append_delivery(DeliveryRecord {
            results: Vec::new(),
            dsn_sent,
        })
    }

    /// Results and markers in ONE record, durable together or not at all: e.g. a recipient's
    /// `Bounced` result with the marker of its failure notice, so that a restart never sees
    /// one without the other. Otherwise as [`ShardHandle::append_results`].
    pub fn append_delivery(
        &self,
        mut record: DeliveryRecord,
    ) -> Result<oneshot::Receiver<Result<(), SpoolError>>, SpoolError> {
        let (reply, rx) = oneshot::channel();
        if record.is_empty() {
            let _ = reply.send(Ok(()));
            return Ok(rx);
        }
        for r in &mut record.results {
            frame::bound_reply(&mut r.reply);
        }
        self.send(Request {
            pending: Pending::Delivery(record),
            reply: Waiter::Delivery(reply),
        })
        .map(|()| rx)
    }

    fn send(&self, request: Request) -> Result<(), SpoolError> {
        let shared = &self.shared;
        shared.in_flight.fetch_add(1, Ordering::SeqCst);
        let result = if shared.closed.load(Ordering::SeqCst) {
            Err(SpoolError::Closed)
        } else {
            match shared.tx.try_send(Msg::Append(request)) {
                Ok(()) => Ok(()),
                Err(TrySendError::Full(_)) => Err(SpoolError::Backpressure),
                Err(TrySendError::Disconnected(_)) => Err(SpoolError::Closed),
            }
        };
        shared.in_flight.fetch_sub(1, Ordering::SeqCst);
        result
    }
}

/// Bytes of a body checksummed between two yields to the shard's other tasks: tens of
/// microseconds in a release build (crc32c runs at several GB/s), a few milliseconds in a debug
/// one; with many large bodies verified at once, a new connection waits for about one step of
/// each between two turns of the event loop.
const CRC_STEP: usize = 256 << 10;

/// `crc32c_append(seed, bytes)`, in [`CRC_STEP`] steps with a yield between two, so a large
/// body's verification does not hold the shard's thread in one piece.
pub(crate) async fn crc_append(seed: u32, bytes: &[u8]) -> u32 {
    let mut crc = seed;
    let mut steps = bytes.chunks(CRC_STEP).peekable();
    while let Some(step) = steps.next() {
        crc = crc32c::crc32c_append(crc, step);
        if steps.peek().is_some() {
            tokio::task::yield_now().await;
        }
    }
    crc
}

/// A cached segment handle as a [`ReadSource`] for [`FileReads`].
struct SegmentSource(Arc<dyn SegmentFile>);

impl ReadSource for SegmentSource {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read_at(offset, buf)
    }

    fn duplicate(&self) -> Option<std::io::Result<std::fs::File>> {
        self.0.duplicate()
    }

    fn read_at_cached(&self, offset: u64, buf: &mut [u8]) -> Option<std::io::Result<usize>> {
        self.0.read_at_cached(offset, buf)
    }
}

/// Per writable shard, shared by its writer and compaction.
#[derive(Debug)]
pub(crate) struct ShardSegments {
    /// The next unused segment number (both take numbers from it).
    pub next_segment: AtomicU64,
    /// The writer appends only to segments ≥ this; it publishes a new segment's number here
    /// before the file exists. Below it, every segment is sealed.
    pub writer_floor: AtomicU64,
}

/// The spool's shared side: what writers, readers and compaction all use.
pub(crate) struct Core {
    pub io: Arc<dyn SegmentIo>,
    pub index: LiveIndex,
    pub record_refs: RecordRefs,
    pub files: FileCache,
    /// Writable shards `0..n`.
    pub shards: Vec<ShardSegments>,
    pub compaction: Mutex<CompactionState>,
    pub fsync: bool,
    pub segment_size: u64,
    /// Recovery's fold of the delivery records, until [`Spool::startup_view`] takes it.
    startup: Mutex<Option<StartupHistory>>,
    /// The queued messages for `relay queue`, once asked for (fed by the writers).
    pub view: QueueView,
    /// Segment files read whole after open (replays and the queue view's build).
    segments_scanned: AtomicU64,
    /// Bodies whose data checksum the shards' reads computed ([`Spool::body_checksums`]).
    body_checksums: AtomicU64,
}

impl Core {
    /// The shared side from what recovery produced (also used by the simulation).
    pub(crate) fn new(
        io: Arc<dyn SegmentIo>,
        recovered: Recovered,
        segment_size: u64,
        fsync: bool,
    ) -> (Arc<Core>, RecoveryReport, Vec<ShardResume>) {
        let Recovered {
            report,
            index,
            record_refs,
            history,
            resume,
        } = recovered;
        let shards = resume
            .iter()
            .map(|r| {
                let next = r.next_segment.max(1);
                ShardSegments {
                    next_segment: AtomicU64::new(next),
                    writer_floor: AtomicU64::new(next),
                }
            })
            .collect();
        let core = Core {
            io,
            index,
            record_refs,
            files: FileCache::new(FILE_CACHE_CAPACITY),
            shards,
            compaction: Mutex::new(CompactionState::default()),
            fsync,
            segment_size,
            startup: Mutex::new(Some(history)),
            view: QueueView::default(),
            segments_scanned: AtomicU64::new(0),
            body_checksums: AtomicU64::new(0),
        };
        (Arc::new(core), report, resume)
    }

    fn locate(&self, id: QueueId) -> Option<Location> {
        self.index.location(id)
    }

    fn read_body(&self, id: QueueId) -> Result<Vec<u8>, SpoolError> {
        let mut body = Vec::new();
        self.read_body_append(id, &mut body)?;
        Ok(body)
    }

    fn read_body_append(&self, id: QueueId, buf: &mut Vec<u8>) -> Result<(), SpoolError> {
        let at = buf.len();
        self.read_retried(id, |found| self.read_located(found, buf, at))
    }

    fn read_body_into(&self, id: QueueId, body: &mut Vec<u8>) -> Result<(), SpoolError> {
        self.read_retried(id, |found| self.read_located(found, body, 0))
    }

    fn read_summary(&self, id: QueueId) -> Result<Option<Vec<u8>>, SpoolError> {
        self.read_retried(id, |found| self.read_summary_located(found))
    }

    fn read_body_prefix(&self, id: QueueId, max: usize) -> Result<Vec<u8>, SpoolError> {
        self.read_retried(id, |found| self.read_prefix_located(found, max))
    }

    /// `read` at the message's location, once more at its new one if compaction moved it.
    fn read_retried<T>(
        &self,
        id: QueueId,
        mut read: impl FnMut(&Found) -> Result<T, SpoolError>,
    ) -> Result<T, SpoolError> {
        let mut found = self.index.find(id).ok_or(SpoolError::NotFound(id))?;
        let mut retried = false;
        loop {
            match read(&found) {
                Ok(value) => return Ok(value),
                Err(e) if retried => return Err(e),
                Err(e) => {
                    // Compaction may have moved it (and unlinked the old segment) meanwhile.
                    retried = true;
                    match self.index.find(id) {
                        Some(now) if now.location != found.location => found = now,
                        Some(_) => return Err(e),
                        None => return Err(SpoolError::NotFound(id)),
                    }
                }
            }
        }
    }

    /// One pread of the stored body into `buf` from `at` on, verified against the frame's
    /// data checksum without reading the meta (`crc32c_append(meta_crc, body) == data_crc`).
    /// Whatever `buf` held past `at` is overwritten, and only the part of it that did not
    /// exist yet is zeroed before the read (a buffer reused from message to message is not
    /// cleared each time). On an error `buf` is cut back to `at`.
    fn read_located(&self, found: &Found, buf: &mut Vec<u8>, at: usize) -> Result<(), SpoolError> {
        let read = self.read_located_at(found, buf, at);
        if read.is_err() {
            buf.truncate(at);
        }
        read
    }

    fn read_located_at(
        &self,
        found: &Found,
        buf: &mut Vec<u8>,
        at: usize,
    ) -> Result<(), SpoolError> {
        let l = &found.location;
        let path = || self.io.segment_path(l.shard, l.segment);
        let file = self
            .files
            .get(self.io.as_ref(), l.shard, l.segment)
            .map_err(|e| SpoolError::io("open segment", path(), e))?;
        let corrupt = |reason: String| SpoolError::Corrupt {
            path: path(),
            offset: l.offset,
            reason,
        };
        let len = usize::try_from(l.body_len).map_err(|_| corrupt("body too large".into()))?;
        let end = at
            .checked_add(len)
            .ok_or_else(|| corrupt("body too large".into()))?;
        if buf.len() < end {
            buf.resize(end, 0);
        } else {
            buf.truncate(end);
        }
        let body = &mut buf[at..];
        let n = file
            .read_at(l.body_offset, body)
            .map_err(|e| SpoolError::io("read body", path(), e))?;
        if n < len {
            return Err(corrupt(format!("body cut short: {n} of {len} bytes")));
        }
        if crc32c::crc32c_append(found.meta_crc, body) != found.data_crc {
            return Err(corrupt("data checksum mismatch".into()));
        }
        Ok(())
    }

    /// [`Core::read_body_append`] with the bytes moved by `reads` (off the shard's thread):
    /// the same location, checks and retry after a compaction; `buf` is owned and returned.
    async fn read_body_async(
        &self,
        reads: &FileReads,
        id: QueueId,
        mut buf: Vec<u8>,
        at: usize,
    ) -> (Result<(), SpoolError>, Vec<u8>) {
        buf.truncate(at);
        let Some(mut found) = self.index.find(id) else {
            return (Err(SpoolError::NotFound(id)), buf);
        };
        let mut retried = false;
        loop {
            let (read, back) = self.read_located_async(reads, id, &found, buf, at).await;
            buf = back;
            match read {
                Ok(()) => return (Ok(()), buf),
                Err(e) if retried => return (Err(e), buf),
                Err(e) => {
                    // Compaction may have moved it (and unlinked the old segment) meanwhile.
                    retried = true;
                    match self.index.find(id) {
                        Some(now) if now.location != found.location => found = now,
                        Some(_) => return (Err(e), buf),
                        None => return (Err(SpoolError::NotFound(id)), buf),
                    }
                }
            }
        }
    }

    /// [`Core::read_located`] with the bytes moved by `reads`; the checksum is computed in
    /// steps that let the shard's other tasks run ([`crc_append`]), and only while the body
    /// at this location has not matched it yet in this process (see "Verified once" in the
    /// module doc). On an error `buf` is cut back to `at`.
    async fn read_located_async(
        &self,
        reads: &FileReads,
        id: QueueId,
        found: &Found,
        mut buf: Vec<u8>,
        at: usize,
    ) -> (Result<(), SpoolError>, Vec<u8>) {
        let l = &found.location;
        let path = || self.io.segment_path(l.shard, l.segment);
        let corrupt = |reason: String| SpoolError::Corrupt {
            path: path(),
            offset: l.offset,
            reason,
        };
        let file = match self.files.get(self.io.as_ref(), l.shard, l.segment) {
            Ok(file) => file,
            Err(e) => {
                buf.truncate(at);
                return (Err(SpoolError::io("open segment", path(), e)), buf);
            }
        };
        let Ok(len) = usize::try_from(l.body_len) else {
            buf.truncate(at);
            return (Err(corrupt("body too large".into())), buf);
        };
        let source: Arc<dyn ReadSource> = Arc::new(SegmentSource(file));
        let (read, mut buf) = reads.read_at(source, l.body_offset, buf, at, len).await;
        let result = match read {
            Err(e) => Err(SpoolError::io("read body", path(), e)),
            Ok(n) if n < len => Err(corrupt(format!("body cut short: {n} of {len} bytes"))),
            Ok(_) if found.verified => Ok(()),
            Ok(_) => {
                self.body_checksums.fetch_add(1, Ordering::Relaxed);
                let crc = crc_append(found.meta_crc, buf.get(at..).unwrap_or_default()).await;
                if crc == found.data_crc {
                    self.index.body_verified(id, l);
                    Ok(())
                } else {
                    Err(corrupt("data checksum mismatch".into()))
                }
            }
        };
        if result.is_err() {
            buf.truncate(at);
        }
        (result, buf)
    }

    /// [`inspect::read_at`] with the bytes moved by `reads`: the segment preamble, the frame's
    /// head and the body, each checked as there.
    async fn read_message_async(
        &self,
        reads: &FileReads,
        location: &Location,
    ) -> Result<StoredMessage, SpoolError> {
        let path = self.io.segment_path(location.shard, location.segment);
        let file = self
            .files
            .get(self.io.as_ref(), location.shard, location.segment)
            .map_err(|e| SpoolError::io("open segment", &path, e))?;
        let source: Arc<dyn ReadSource> = Arc::new(SegmentSource(file));
        let read = |what: &'static str, offset: u64, len: usize| {
            let source = Arc::clone(&source);
            let path = &path;
            async move {
                let (n, buf) = reads.read_at(source, offset, Vec::new(), 0, len).await;
                n.map(|_| buf).map_err(|e| SpoolError::io(what, path, e))
            }
        };
        let preamble = read("read segment header", 0, MessageHead::PREAMBLE_LEN).await?;
        let head_len = MessageHead::head_len(&path, location)?;
        let head = read("read frame", location.offset, head_len).await?;
        let head = MessageHead::parse(&path, location, &preamble, &head)?;
        let body = read("read frame", head.body_offset, head.body_len).await?;
        head.check_read(&path, location, body.len())?;
        let (seed, _) = head.crcs();
        head.check_crc(&path, location, crc_append(seed, &body).await)?;
        Ok(head.into_message(*location, body))
    }

    /// The first `max` bytes of the body, one pread, unverified: the data checksum covers the
    /// whole body, so only a whole read can check it.
    fn read_prefix_located(&self, found: &Found, max: usize) -> Result<Vec<u8>, SpoolError> {
        let l = &found.location;
        let path = || self.io.segment_path(l.shard, l.segment);
        let file = self
            .files
            .get(self.io.as_ref(), l.shard, l.segment)
            .map_err(|e| SpoolError::io("open segment", path(), e))?;
        let len = usize::try_from(l.body_len).unwrap_or(usize::MAX).min(max);
        let mut prefix = vec![0u8; len];
        let n = file
            .read_at(l.body_offset, &mut prefix)
            .map_err(|e| SpoolError::io("read body", path(), e))?;
        if n < len {
            return Err(SpoolError::Corrupt {
                path: path(),
                offset: l.offset,
                reason: format!("body cut short: {n} of {len} bytes"),
            });
        }
        Ok(prefix)
    }

    /// One pread of the frame header and meta; the meta is verified against the index's
    /// meta checksum (the header's own checksum needs the segment's salt, which a read of one
    /// frame does not have: its fields are checked against the index instead).
    fn read_summary_located(&self, found: &Found) -> Result<Option<Vec<u8>>, SpoolError> {
        let l = &found.location;
        let path = || self.io.segment_path(l.shard, l.segment);
        let corrupt = |reason: String| SpoolError::Corrupt {
            path: path(),
            offset: l.offset,
            reason,
        };
        let head = l
            .body_offset
            .checked_sub(l.offset)
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| n >= FRAME_HEADER_LEN)
            .ok_or_else(|| corrupt("not a frame location".into()))?;
        let file = self
            .files
            .get(self.io.as_ref(), l.shard, l.segment)
            .map_err(|e| SpoolError::io("open segment", path(), e))?;
        // 16-aligned, so the meta after the 32-byte header is aligned as rkyv requires.
        let mut buf = AlignedVec::<16>::new();
        buf.resize(head, 0);
        let n = file
            .read_at(l.offset, &mut buf)
            .map_err(|e| SpoolError::io("read meta", path(), e))?;
        if n < head {
            return Err(corrupt(format!("meta cut short: {n} of {head} bytes")));
        }
        let check = FrameHeader::check(&buf, 0);
        let h = check.header;
        let meta_len = h.meta_len as usize;
        if !check.magic_ok
            || h.kind != RecordKind::Message as u16
            || h.data_crc != found.data_crc
            || h.body_offset() != head as u64
        {
            return Err(corrupt("frame header differs from the index".into()));
        }
        let meta = &buf[FRAME_HEADER_LEN..FRAME_HEADER_LEN + meta_len];
        if crc32c::crc32c(meta) != found.meta_crc {
            return Err(corrupt("meta checksum mismatch".into()));
        }
        match h.version {
            3 => {
                let archived =
                    rkyv::access::<record::ArchivedMessageV3, rkyv::rancor::BoxedError>(meta)
                        .map_err(|e| corrupt(e.to_string()))?;
                Ok(archived.summary.as_ref().map(|s| s.as_slice().to_vec()))
            }
            // Written before summaries.
            1 | 2 => Ok(None),
            v => Err(corrupt(format!(
                "message version {v} is unknown to this build"
            ))),
        }
    }

    pub(crate) fn replay(&self) -> Result<Replay, SpoolError> {
        self.replay_scan()
    }

    /// See [`Spool::startup_view`].
    fn startup_view(&self, visit: impl FnMut(&LiveMessage<'_>)) {
        let history = self
            .startup
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_default();
        self.view(&history, visit);
    }

    /// Every live message from the index, with the delivery state `history` adds.
    fn view(&self, history: &StartupHistory, mut visit: impl FnMut(&LiveMessage<'_>)) {
        self.index.for_each(|id, e| {
            if e.is_garbage() {
                return;
            }
            let message = LiveMessage {
                id,
                body_len: e.location.body_len,
                mailboxes: e
                    .mailboxes
                    .iter()
                    .filter(|m| !m.deleted)
                    .map(|m| &*m.name)
                    .collect(),
                deleted: e.mailboxes.iter().filter(|m| m.deleted).count(),
                remote: e
                    .remote
                    .iter()
                    .map(|r| {
                        let (attempts, next) = history.deferred(id, &r.name).unwrap_or((0, None));
                        LiveRecipient {
                            address: &r.name,
                            done: r.done,
                            attempts,
                            next_attempt_unix_micros: next,
                            delay_noticed: history.delay_noticed(id, &r.name),
                        }
                    })
                    .collect(),
            };
            visit(&message);
        });
    }

    /// The replay rebuilt from the files (a second call): every segment read back, filtered by
    /// the live index.
    fn replay_scan(&self) -> Result<Replay, SpoolError> {
        let io = self.io.as_ref();
        let shards = io
            .list_shards()
            .map_err(|e| SpoolError::io("list shards", io.root(), e))?;
        let mut live = Vec::new();
        let mut states = Vec::new();
        let mut history = DeliveryHistory::default();
        for shard in shards {
            let (report, _) = scan_shard(io, shard, Mode::ReadOnly, &mut |v| {
                match v.record {
                    Record::Message(meta) => {
                        if let Some(e) = self.index.get(meta.id) {
                            if e.location == v.location && !e.is_garbage() {
                                live.push((e, replay_message(meta, v.location)));
                            }
                        }
                    }
                    Record::Delivery(record) => history.add(&record),
                    Record::State(state) => {
                        if self.index.state_replayed(&state.user, state.seq) {
                            states.push(state);
                        }
                    }
                    Record::Deletion(_) => {}
                }
                ControlFlow::Continue(())
            })?;
            self.segments_scanned
                .fetch_add(report.segments_scanned, Ordering::Relaxed);
        }
        // A checkpoint committed during the scan may void records listed before it.
        states.retain(|s| self.index.state_replayed(&s.user, s.seq));
        states.sort_by(|a, b| (&a.user, a.seq).cmp(&(&b.user, b.seq)));
        // A copy left by an interrupted compaction is the same record.
        states.dedup();
        let mut replay = Replay {
            states,
            ..Replay::default()
        };
        for (e, message) in live {
            push_replay(&mut replay, &e, &history, message);
        }
        replay.messages.sort_by_key(|m| m.id);
        replay.deletions.sort();
        Ok(replay)
    }

    /// Builds the queue view if it is not ready: one read-only pass over every shard's log
    /// with compaction held off (no frame moves under the scan); the writers feed it from
    /// the moment the build begins.
    fn ready_view(&self) -> Result<(), SpoolError> {
        if self.view.is_ready() {
            return Ok(());
        }
        let _no_compaction = self.compaction.lock().unwrap_or_else(|p| p.into_inner());
        if self.view.is_ready() {
            return Ok(());
        }
        self.view.begin();
        match self.scan_into_view() {
            Ok(()) => {
                self.view.finish(&self.index);
                Ok(())
            }
            Err(e) => {
                self.view.abandon();
                Err(e)
            }
        }
    }

    fn scan_into_view(&self) -> Result<(), SpoolError> {
        let io = self.io.as_ref();
        let shards = io
            .list_shards()
            .map_err(|e| SpoolError::io("list shards", io.root(), e))?;
        for shard in shards {
            let (report, _) = scan_shard(io, shard, Mode::ReadOnly, &mut |v| {
                match v.record {
                    Record::Message(meta) => {
                        if self.index.status(meta.id) == Some((v.location, false)) {
                            self.view.message(NewEntry {
                                id: meta.id,
                                arrival_unix_micros: meta.arrival_unix_micros,
                                sender: &meta.envelope.reverse_path,
                                recipients: meta.envelope.recipients.len(),
                                mailboxes: &meta.mailboxes,
                                remote: &meta.remote,
                                placements: &meta.placements,
                                location: v.location,
                            });
                        }
                    }
                    Record::Delivery(record) => self.view.delivery(&record, &self.index),
                    Record::Deletion(_) | Record::State(_) => {}
                }
                ControlFlow::Continue(())
            })?;
            self.segments_scanned
                .fetch_add(report.segments_scanned, Ordering::Relaxed);
        }
        Ok(())
    }

    fn queued(&self, limit: usize) -> Result<Vec<ReplayMessage>, SpoolError> {
        self.ready_view()?;
        Ok(self.view.queued(&self.index, limit))
    }

    fn queued_message(&self, id: QueueId) -> Result<Option<ReplayMessage>, SpoolError> {
        self.ready_view()?;
        if let Some(message) = self.view.get(id, &self.index) {
            return Ok(Some(message));
        }
        // Not queued (no remote recipients): its meta from its frame, one read.
        match self.index.status(id) {
            Some((location, false)) => {
                let stored = inspect::read_at(self.io.as_ref(), &location)?;
                Ok(Some(replay_message(stored.meta, location)))
            }
            _ => Ok(None),
        }
    }
}

fn replay_message(meta: MessageMeta, location: Location) -> ReplayMessage {
    let kept_uidl = meta.origin.kept_uidl().map(Box::from);
    ReplayMessage {
        id: meta.id,
        arrival_unix_micros: meta.arrival_unix_micros,
        mailboxes: meta.mailboxes,
        remote: meta.remote,
        placements: meta.placements,
        body_len: location.body_len,
        sender: meta.envelope.reverse_path,
        recipients: meta.envelope.recipients.len(),
        pending: Vec::new(),
        finished: Vec::new(),
        dsn_sent: Vec::new(),
        kept_uidl,
    }
}

fn push_replay(
    replay: &mut Replay,
    entry: &IndexEntry,
    history: &DeliveryHistory,
    mut message: ReplayMessage,
) {
    history.fill(&mut message);
    for m in &entry.mailboxes {
        if m.deleted {
            replay.deletions.push((m.name.to_string(), message.id));
        }
    }
    replay.messages.push(message);
}

/// One live message for the start-up views ([`Spool::startup_view`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveMessage<'a> {
    pub id: QueueId,
    /// Stored size (Received header ‖ message).
    pub body_len: u64,
    /// Local mailboxes holding a copy not deleted.
    pub mailboxes: Vec<&'a str>,
    /// Mailbox copies already deleted.
    pub deleted: usize,
    /// The remote addresses in stored order (`MessageMeta::remote`, which the session keeps
    /// free of repeats), each with its delivery state.
    pub remote: Vec<LiveRecipient<'a>>,
}

/// A remote recipient's state at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveRecipient<'a> {
    pub address: &'a str,
    /// A final result is recorded.
    pub done: bool,
    /// Attempts so far (the latest Deferred's `attempt`; 0: never tried).
    pub attempts: u32,
    /// The latest Deferred's next attempt; `None`: at once.
    pub next_attempt_unix_micros: Option<u64>,
    /// A delay notice was recorded for it.
    pub delay_noticed: bool,
}

/// A cheap, cloneable handle on the spool's shared side, for threads that do not own the
/// [`Spool`]: POP3 connection tasks (locate, read bodies) and a background compaction thread.
#[derive(Clone)]
pub struct SpoolReader {
    core: Arc<Core>,
}

impl std::fmt::Debug for SpoolReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpoolReader")
            .field("root", &self.core.io.root())
            .finish_non_exhaustive()
    }
}

impl SpoolReader {
    /// See [`Spool::locate`].
    pub fn locate(&self, id: QueueId) -> Option<Location> {
        self.core.locate(id)
    }

    /// See [`Spool::read_body`].
    pub fn read_body(&self, id: QueueId) -> Result<Vec<u8>, SpoolError> {
        self.core.read_body(id)
    }

    /// See [`Spool::read_body_append`].
    pub fn read_body_append(&self, id: QueueId, buf: &mut Vec<u8>) -> Result<(), SpoolError> {
        self.core.read_body_append(id, buf)
    }

    /// See [`Spool::read_body_into`].
    pub fn read_body_into(&self, id: QueueId, body: &mut Vec<u8>) -> Result<(), SpoolError> {
        self.core.read_body_into(id, body)
    }

    /// See [`Spool::read_summary`].
    pub fn read_summary(&self, id: QueueId) -> Result<Option<Vec<u8>>, SpoolError> {
        self.core.read_summary(id)
    }

    /// See [`Spool::read_body_prefix`].
    pub fn read_body_prefix(&self, id: QueueId, max: usize) -> Result<Vec<u8>, SpoolError> {
        self.core.read_body_prefix(id, max)
    }

    /// See [`Spool::compact`].
    pub fn compact(&self) -> Result<CompactionReport, SpoolError> {
        compact::run(&self.core, &CompactionConfig::new(self.core.segment_size))
    }

    /// See [`Spool::compact_with`].
    pub fn compact_with(&self, cfg: &CompactionConfig) -> Result<CompactionReport, SpoolError> {
        compact::run(&self.core, cfg)
    }
}

/// The open spool: the live index, one writer thread per shard, compaction.
pub struct Spool {
    core: Arc<Core>,
    handles: Vec<ShardHandle>,
    writers: Vec<Option<JoinHandle<()>>>,
    /// The exclusive lock on `<dir>/lock` (real directories only): one process writes a
    /// spool at a time. Released when the spool is dropped.
    lock: Option<std::fs::File>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("root", &self.core.io.root())
            .field("shards", &self.handles.len())
            .field("index", &self.core.index.len())
            .finish_non_exhaustive()
    }
}

/// Recovery scans at most this many shards at once (each holds one segment in memory).
const RECOVERY_THREADS_MAX: usize = 4;

/// Everything recovery produced, before threads start (also used by the simulation).
pub(crate) struct Recovered {
    pub report: RecoveryReport,
    pub index: LiveIndex,
    pub record_refs: RecordRefs,
    /// The delivery records' fold: for [`Spool::startup_view`].
    pub history: StartupHistory,
    /// Resume points of shards `0..shards`.
    pub resume: Vec<ShardResume>,
}

/// A kept message or deletion as a recovery worker hands it back (delivery records are
/// folded by the worker as it reads them: see [`recover`]).
enum Scanned {
    /// The message's index entry, made by the worker (the rest of its meta is not kept).
    Message { id: QueueId, entry: IndexEntry },
    Deletion {
        location: Location,
        deletion: MailboxDeletion,
    },
    /// A mailbox-state record, without its ops (replay reads them back from the log).
    State { checkpoint: bool, state: StateRef },
}

/// Recovers every shard directory under the root (repairing `0..shards`, reading the others),
/// creating missing shards `0..shards`. Shards are scanned in parallel; the live index, the
/// record references and the replay are built from what they found, in shard and log order
/// (messages first, then deletions and delivery results: a compacted segment may hold a
/// deletion or result older than a message in a later segment, and the other way round, and
/// a result may sit in another shard than its message).
///
/// Memory: a log of a million messages and a million results must recover in well under a
/// gigabyte. So no record is kept twice: each worker folds the delivery records it reads
/// into its own [`DeliveryHistory`] (results move in, superseded ones are dropped) and adds
/// their references at once; the folds are merged and applied to the index once every
/// message is in it (the same state as applying each record: the index keeps "any final"
/// and "the latest Deferred", both of which the fold keeps); the replay is the list of
/// scanned messages itself, filtered in place, with each history moved into its message.
pub(crate) fn recover(io: &dyn SegmentIo, shards: usize) -> Result<Recovered, SpoolError> {
    for s in 0..shards {
        io.create_shard(s as u8)
            .map_err(|e| SpoolError::io("create shard dir", io.shard_path(s as u8), e))?;
    }
    let present = io
        .list_shards()
        .map_err(|e| SpoolError::io("list shards", io.root(), e))?;
    let record_refs = RecordRefs::default();
    type ShardOutcome =
        Result<(ShardRecovery, ShardResume, Vec<Scanned>, StartupHistory), SpoolError>;
    let scan_one = |shard: u8| -> ShardOutcome {
        let mode = if usize::from(shard) < shards {
            Mode::Repair
        } else {
            Mode::ReadOnly
        };
        let mut found = Vec::new();
        let mut history = StartupHistory::default();
        let (report, resume) = scan_shard(io, shard, mode, &mut |v| {
            match v.record {
                Record::Message(meta) => found.push(Scanned::Message {
                    id: meta.id,
                    entry: IndexEntry::new(
                        v.location,
                        v.header.data_crc,
                        crc32c::crc32c(v.meta),
                        &meta.mailboxes,
                        &meta.remote,
                    ),
                }),
                Record::Deletion(deletion) => found.push(Scanned::Deletion {
                    location: v.location,
                    deletion,
                }),
                Record::State(state) => found.push(Scanned::State {
                    checkpoint: state.is_checkpoint(),
                    state: StateRef::new(&state, v.header.data_crc, v.location),
                }),
                Record::Delivery(record) => {
                    record_refs.add(
                        shard,
                        v.location.segment,
                        v.location.frame_len,
                        Ref::delivery(&record),
                    );
                    history.add(record);
                }
            }
            ControlFlow::Continue(())
        })?;
        found.shrink_to_fit();
        Ok((report, resume, found, history))
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
    let scanned_messages: usize = outcomes
        .iter()
        .flatten()
        .flatten()
        .map(|(_, _, found, _)| found.len())
        .sum();
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
    let index = LiveIndex::with_capacity(scanned_messages);
    let mut deletions = Vec::new();
    let mut states: Vec<StateRef> = Vec::new();
    let mut history = StartupHistory::default();
    let mut resume = vec![ShardResume::default(); shards];
    for (&shard, outcome) in present.iter().zip(outcomes) {
        let (mut shard_report, shard_resume, found, shard_history) = outcome?;
        history.merge(shard_history);
        for f in found {
            match f {
                Scanned::Message { id, entry } => {
                    if let Some(first) = index.find(id) {
                        // A copy left by an interrupted compaction: same bytes, or a bug.
                        shard_report.duplicate_ids.push(id);
                        if first.data_crc != entry.data_crc
                            || first.location.body_len != entry.location.body_len
                        {
                            shard_report.conflicting_duplicates.push(id);
                        }
                    }
                    index.insert(id, entry);
                }
                Scanned::Deletion { location, deletion } => {
                    record_refs.add(
                        shard,
                        location.segment,
                        location.frame_len,
                        Ref::deletions(&deletion.ids),
                    );
                    deletions.push(deletion);
                }
                Scanned::State { checkpoint, state } => {
                    if checkpoint {
                        index.note_checkpoint(&state.user, state.seq);
                    }
                    index.state_found(state.key(), state.location);
                    states.push(state.clone());
                    record_refs.add_state(shard, state.location.segment, state);
                }
            }
        }
        if usize::from(shard) < shards {
            resume[usize::from(shard)] = shard_resume;
        }
        report.shards.push(shard_report);
    }
    // Never hand out an id a surviving deletion or result names (its message may have been
    // lost to corruption): the record would apply to the new message.
    let mut named = |id: QueueId| {
        if let Some(r) = resume.get_mut(usize::from(id.shard())) {
            r.last_micros = r.last_micros.max(id.micros());
        }
    };
    for d in &deletions {
        index.apply_deletion(&d.mailbox, &d.ids);
        d.ids.iter().copied().for_each(&mut named);
    }
    drop(deletions);
    // Released ids apply whether or not the record is void: a void record is kept on disk
    // exactly while its release still matters (index::state_is_live).
    for s in &states {
        index.apply_deletion(&s.user, &s.released);
        s.released.iter().copied().for_each(&mut named);
    }
    drop(states);
    history.apply_to(&index);
    // A marker's notice id too: the queue may look the notice up by it.
    history.named_ids().for_each(&mut named);
    Ok(Recovered {
        report,
        index,
        record_refs,
        history,
        resume,
    })
}

impl Spool {
    /// Recovers every shard directory found under `config.dir` (also ones ≥ `shards`, left by a
    /// run with more cores: read, never written), creates missing shards `0..shards`, and
    /// starts one writer thread per shard. A spool left by a killed process opens without any
    /// manual step; only what [`recovery::decide`] calls Fatal stops it.
    pub fn open(config: SpoolConfig, shards: usize) -> Result<(Spool, RecoveryReport), SpoolError> {
        // Before recovery touches anything: a second server (or an offline compaction next
        // to a running server) would repair and append to files another process owns.
        let lock = lock_dir(&config.dir)?;
        let io: Arc<dyn SegmentIo> = Arc::new(FsIo::new(config.dir.clone()));
        let (mut spool, report) = Spool::open_with_io(config, shards, io)?;
        spool.lock = Some(lock);
        Ok((spool, report))
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
        let (core, report, resume) = Core::new(
            Arc::clone(&io),
            recovered,
            config.segment_size,
            config.fsync,
        );
        let mut handles = Vec::with_capacity(shards);
        let mut writers = Vec::with_capacity(shards);
        for (shard, resume) in resume.iter().enumerate() {
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
                observer: std::sync::OnceLock::new(),
            });
            let writer = ShardWriter::new(shard, Arc::clone(&core), resume.next_seq);
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
                        core: Arc::clone(&core),
                        handles,
                        writers,
                        lock: None,
                    };
                    drop(partial);
                    return Err(SpoolError::io("spawn writer thread", io.root(), e));
                }
            };
            handles.push(ShardHandle { shared });
            writers.push(Some(join));
        }
        let spool = Spool {
            core,
            handles,
            writers,
            lock: None,
        };
        Ok((spool, report))
    }

    pub fn shard_count(&self) -> usize {
        self.handles.len()
    }

    /// Segment files of writable shard `shard` now (a directory listing: for metrics, not
    /// for hot paths); 0 when it cannot be listed.
    pub fn segment_count(&self, shard: usize) -> usize {
        u8::try_from(shard)
            .ok()
            .and_then(|shard| self.core.io.list_segments(shard).ok())
            .map_or(0, |segments| segments.len())
    }

    /// The append handle of shard `i`.
    ///
    /// # Panics
    /// If `i >= shard_count()`: a wiring bug, not an operating condition.
    pub fn shard(&self, i: usize) -> ShardHandle {
        self.handles[i].clone()
    }

    /// Where message `id` is now (live index: recovered at open, then every commit and
    /// compaction). `None` for an id never stored, or garbage whose every copy was compacted
    /// away.
    pub fn locate(&self, id: QueueId) -> Option<Location> {
        self.core.locate(id)
    }

    /// The stored body of message `id` (Received header ‖ message), for RETR/TOP: one
    /// positioned read of the body bytes through a cached segment handle, verified against the
    /// frame's data checksum (no meta read, no deserialisation). If compaction moved the
    /// message between the lookup and the read, the lookup is retried once.
    /// `Err(NotFound)` for an unknown id, `Err(Corrupt)` if the bytes on disk are damaged.
    pub fn read_body(&self, id: QueueId) -> Result<Vec<u8>, SpoolError> {
        self.core.read_body(id)
    }

    /// [`Spool::read_body`] onto the end of `buf` (POP3 reads a message straight into the
    /// answer it goes out in, with no buffer of its own). On an error `buf` is as it was.
    pub fn read_body_append(&self, id: QueueId, buf: &mut Vec<u8>) -> Result<(), SpoolError> {
        self.core.read_body_append(id, buf)
    }

    /// [`Spool::read_body`] into a buffer the caller reuses from message to message (a
    /// FETCH of many bodies): `body`'s bytes are replaced by the stored body's, its
    /// allocation kept, and only the part longer than its present length zeroed before the
    /// read. On an error `body` is left empty.
    pub fn read_body_into(&self, id: QueueId, body: &mut Vec<u8>) -> Result<(), SpoolError> {
        self.core.read_body_into(id, body)
    }

    /// [`Spool::read_body_append`] for a shard's tasks: the bytes are moved by `reads` (the
    /// shard's ring on io_uring, the reader pool on epoll), so a body that is not in the page
    /// cache never blocks the shard's thread; the location, the checks (the data checksum,
    /// computed in steps between which other tasks run) and the retry after a compaction are
    /// those of the synchronous read, except that the checksum is computed only until it
    /// matched once for the message at its location ("Verified once" in the module doc). The body lands after `buf`'s first `at` bytes, read into
    /// its allocation; `buf` is returned, cut back to `at` on an error.
    pub async fn read_body_async(
        &self,
        reads: &FileReads,
        id: QueueId,
        buf: Vec<u8>,
        at: usize,
    ) -> (Result<(), SpoolError>, Vec<u8>) {
        self.core.read_body_async(reads, id, buf, at).await
    }

    /// How many bodies [`Spool::read_body_async`] has checked against their data checksum
    /// since open: once per message and location ("Verified once" in the module doc).
    pub fn body_checksums(&self) -> u64 {
        self.core.body_checksums.load(Ordering::Relaxed)
    }

    /// [`Spool::read_message`] with the bytes moved by `reads` (see
    /// [`Spool::read_body_async`]): outbound delivery's read of a queued message.
    pub async fn read_message_async(
        &self,
        reads: &FileReads,
        location: &Location,
    ) -> Result<StoredMessage, SpoolError> {
        self.core.read_message_async(reads, location).await
    }

    /// At most the first `max` bytes of the stored body of message `id`, for a list that
    /// shows a header section: one positioned read of that many bytes, however large the
    /// message. Not verified against the data checksum (that needs the whole body; a reader
    /// of the whole message uses [`Spool::read_body`]). Errors as `read_body`.
    pub fn read_body_prefix(&self, id: QueueId, max: usize) -> Result<Vec<u8>, SpoolError> {
        self.core.read_body_prefix(id, max)
    }

    /// The IMAP summary stored in message `id`'s frame ([`ShardHandle::append_message_with_summary`]):
    /// one positioned read of the frame's header and meta (not the body), the meta verified
    /// against its checksum in the index, then the summary's bytes out of the archive (nothing
    /// else deserialised). The index keeps no summary in memory. `Ok(None)` for a frame
    /// written without one (before layout v3, or a message with no local mailbox). Retried
    /// once after a compaction moved the message, like [`Spool::read_body`].
    pub fn read_summary(&self, id: QueueId) -> Result<Option<Vec<u8>>, SpoolError> {
        self.core.read_summary(id)
    }

    /// Every live message and every deletion `(mailbox, id)` of a live message, with each
    /// remote recipient's state and last reply: apply the messages, then the deletions.
    /// Messages are sorted by id (arrival order), each listed once. Reads every segment (it is
    /// for `relay queue` and tests; the start-up views use [`Spool::startup_view`]).
    pub fn replay(&self) -> Result<Replay, SpoolError> {
        self.core.replay()
    }

    /// Messages with remote recipients still to deliver, oldest first, at most `limit`,
    /// each as [`Spool::replay`] lists it, from the in-memory queue view: the first call
    /// reads the log once to build it, later calls read no segment (`relay queue list`).
    pub fn queued(&self, limit: usize) -> Result<Vec<ReplayMessage>, SpoolError> {
        self.core.queued(limit)
    }

    /// One live message as [`Spool::replay`] lists it: from the queue view, or for a
    /// message without remote recipients from its own frame (one read). `None` if it is
    /// not in the spool (`relay queue show`).
    pub fn queued_message(&self, id: QueueId) -> Result<Option<ReplayMessage>, SpoolError> {
        self.core.queued_message(id)
    }

    /// Segment files read whole since open by [`Spool::replay`] and the queue view's build
    /// (recovery not counted): what `relay queue` costs in reads.
    pub fn segments_scanned(&self) -> u64 {
        self.core.segments_scanned.load(Ordering::Relaxed)
    }

    /// Every live message as the start-up views need it (maildrops, the delivery queue), from
    /// the index and recovery's fold of the delivery records: no log is read again and no
    /// message text is held. Call once, at start; a later call sees no delivery history.
    pub fn startup_view(&self, visit: impl FnMut(&LiveMessage<'_>)) {
        self.core.startup_view(visit)
    }

    /// The live messages as the index knows them now, like [`Spool::startup_view`] but
    /// without the start-up delivery history (attempts 0, next attempt at once): for the
    /// delivery reconciliation, which takes in recipients that are pending with no core
    /// holding them. Walks the whole index: call it rarely.
    pub fn live_view(&self, visit: impl FnMut(&LiveMessage<'_>)) {
        self.core.view(&StartupHistory::default(), visit);
    }

    /// Compacts sealed segments whose live bytes are below 50% (see [`compact`]) on the
    /// calling thread. Ingest and reads go on meanwhile; one compaction runs at a time.
    pub fn compact(&self) -> Result<CompactionReport, SpoolError> {
        self.compact_with(&CompactionConfig::new(self.core.segment_size))
    }

    pub fn compact_with(&self, cfg: &CompactionConfig) -> Result<CompactionReport, SpoolError> {
        compact::run(&self.core, cfg)
    }

    /// A cloneable handle for other threads: locate, read bodies, compact.
    pub fn reader(&self) -> SpoolReader {
        SpoolReader {
            core: Arc::clone(&self.core),
        }
    }

    /// Reads one message back (meta + stored body), verifying its checksums.
    pub fn read_message(&self, location: &Location) -> Result<StoredMessage, SpoolError> {
        inspect::read_at(self.core.io.as_ref(), location)
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
                path: self.core.io.shard_path(shard as u8),
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

/// Takes the exclusive lock on `<dir>/lock` (flock: released by the kernel when the process
/// dies, so a crash never leaves a stale lock behind).
fn lock_dir(dir: &Path) -> Result<std::fs::File, SpoolError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| SpoolError::io("create spool dir", dir, e))?;
    let path = dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| SpoolError::io("open lock file", &path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(SpoolError::Locked { path }),
        Err(std::fs::TryLockError::Error(e)) => Err(SpoolError::io("lock", &path, e)),
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

// Test modules last: tests/tidy.rs checks everything above the first `#[cfg(test)]`.
#[cfg(test)]
mod sim_state_tests;
#[cfg(test)]
mod sim_tests;
#[cfg(test)]
mod tests;
