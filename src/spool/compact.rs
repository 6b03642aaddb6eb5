//! Compaction: reclaim the space of garbage messages by rewriting sealed segments
//! whose live bytes fell below a threshold, without blocking ingest or POP3, such that a crash
//! at any point loses nothing and duplicates nothing visible.
//!
//! # What is kept
//! - A message frame is copied iff it is its message's indexed location and the message is not
//!   garbage (`index::is_garbage`, the one liveness rule). Dead copies (see
//!   `index`) and garbage are dropped. Meta and body bytes are copied as they are;
//!   only the frame header is re-encoded, for the new segment's salt (same kind, version,
//!   lengths, `seq` and data checksum).
//! - A deletion `(mailbox, id)` is kept iff `id` is still in the index, i.e. some frame of the
//!   message still exists on disk (live, or garbage whose segment is not unlinked yet). Kept
//!   pairs are rewritten as one [`MailboxDeletion`] record per mailbox (ids sorted, at most
//!   [`DELETION_IDS_PER_RECORD`] per record; `seq` = the highest of the records they came
//!   from). Keeping the deletions of a message dropped in the same round costs one more round
//!   for those few bytes, but it means no order of unlinks can ever leave a message on disk
//!   without its deletions (a message delivered to alice and bob whose alice copy is deleted
//!   never comes back to alice).
//! - Delivery records (results and DSN markers) are filtered by the same reasoning: a result
//!   is kept iff its message is still indexed, it names one of the message's remote
//!   recipients, and it is either final or that recipient's latest Deferred (by `(attempt,
//!   at)`, per the index; older Deferred results are superseded by a durable later one). A
//!   marker is kept iff its message is indexed. A delivered or bounced recipient of a message
//!   still on disk therefore never becomes pending again (it would be delivered twice), and a
//!   deferred one keeps its attempt count, last reply and next attempt. Kept entries are
//!   rewritten, exact duplicates removed and sorted, as [`DeliveryRecord`]s of at most
//!   [`DELIVERY_ENTRIES_PER_RECORD`] entries (`seq` = the highest of the records they came
//!   from). Results and markers of a dropped message go once its last frame is unlinked
//!   (later in the same pass, or the next one).
//! - A mailbox-state record is copied as it is (like a message frame: same bytes, `seq`
//!   and checksum) iff `index::state_is_live` says so: its seq is at or above its user's
//!   latest durable checkpoint, or an id it releases is still indexed (some frame of the
//!   message exists, so dropping the release would resurrect it for the user at a restart).
//!   As with deletions, a release whose message is dropped in the same round is kept one more
//!   round. The same record found twice in one batch (a compaction leftover) is copied once.
//!
//! # Which segments
//! Only sealed ones: below the shard writer's floor (the segment it appends to, published
//! before that file exists), or written by an earlier compaction of this run. Shards of an
//! earlier run with more cores (read-only at open) are left alone. A segment is compacted when
//! `live × 100 < (size − preamble) × live_percent_below`, counting live messages and the share
//! of its deletion and delivery record bytes still needed. Candidates are merged, in order,
//! into outputs of at most `output_segment_size` live bytes. Corrupt frames (which recovery
//! already stepped over and reported, e.g. the torn middle of an unacknowledged batch after a
//! crash) are dropped with their segment and counted; a segment that cannot be read at all
//! (both header copies bad, an unknown record kind: what recovery calls Fatal) is left alone
//! and reported.
//!
//! # Protocol, per output (and what a crash at each point leaves)
//! 1. Take a new number N from the shard's counter (shared with the writer); write the
//!    preamble and the kept frames to `N.seg.tmp`, fdatasync every `sync_every` bytes and at
//!    the end. *Crash: a temporary file, sources intact → recovery removes it.*
//! 2. Rename `N.seg.tmp` → `N.seg`, fsync the directory. *Crash before the fsync: either name
//!    (atomic rename; the data was already synced) → as 1 or as 3.*
//! 3. Point the index at the new locations (the old ones become copies). Readers switch over;
//!    one that looked up an old location still reads it (the file exists).
//!    *Crash: old and new both present → recovery indexes the first copy of each id (identical
//!    bytes) and reports `duplicate_ids`; the next compaction drops the dead copies.*
//! 4. Unlink the sources, fsync the directory, retire their cached read handles (a reader
//!    holding one finishes on the old inode), forget their locations in the index (entries of
//!    garbage with no copy left disappear). *Crash: any subset of the sources gone → as 3.*
//!    An unlink or directory fsync that fails leaves the index as it was for that source: its
//!    frames still count as existing (their deletions are kept) and it is retried next time.
//!
//! Nothing here holds a lock across IO except the compaction mutex (one compaction at a time);
//! index updates take one map shard lock per message.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::io::IoSlice;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::MutexGuard;
use std::time::{Duration, Instant};

use rkyv::util::AlignedVec;

use super::frame::{
    encode_deletion, encode_delivery, pad16, DeliveryRecord, DeliveryResult, DsnSent, FrameHeader,
    MailboxDeletion, Record, SegmentHeader, SEGMENT_PREAMBLE_LEN, ZERO_PAD,
};
use super::index::{Ref, StateRef};
use super::io::{FsIo, SegmentFile, SegmentIo};
use super::recovery::{scan_segment, Mode, ShardRecovery, ShardResume};
use super::{Core, Location, Spool, SpoolConfig, SpoolError};
use crate::envelope::QueueId;

/// Ids per rewritten deletion record (keeps each record far below any length limit).
pub const DELETION_IDS_PER_RECORD: usize = 4096;

/// Results plus markers per rewritten delivery record (a result is ≈ 100–1100 bytes).
pub const DELIVERY_ENTRIES_PER_RECORD: usize = 1024;

/// How eagerly compaction rewrites. Defaults carry their reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactionConfig {
    /// Compact a sealed segment when its live bytes are below this percentage of its frame
    /// bytes. Default 50: copying at most half a segment to free at least half of it. 100
    /// compacts every segment with any dead byte (tests).
    pub live_percent_below: u8,
    /// Most live bytes merged into one output segment. Default: the spool's `segment_size`,
    /// so recovery's one-segment-in-memory bound still holds.
    pub output_segment_size: u64,
    /// fdatasync the output at least every this many bytes. Default 8 MiB: the writers'
    /// small fdatasyncs never queue behind one huge flush.
    pub sync_every: u64,
}

impl CompactionConfig {
    pub fn new(segment_size: u64) -> CompactionConfig {
        CompactionConfig {
            live_percent_below: 50,
            output_segment_size: segment_size,
            sync_every: 8 << 20,
        }
    }
}

/// What one compaction did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactionReport {
    /// Sealed segments looked at.
    pub segments_examined: u64,
    /// `(shard, segment)` rewritten or dropped, and unlinked.
    pub segments_removed: Vec<(u8, u64)>,
    /// `(shard, segment)` written.
    pub segments_written: Vec<(u8, u64)>,
    /// Segments left alone because they cannot be read as a whole (both header copies bad,
    /// a record kind this build does not know, a misnamed file), with the reason. Recovery
    /// would refuse them too; an operator must look.
    pub segments_skipped: Vec<((u8, u64), String)>,
    /// Damaged regions (corrupt frames recovery already stepped over and reported) dropped
    /// with their segment: no reader could use them.
    pub damaged_regions_dropped: u64,
    /// Message frames copied into new segments.
    pub messages_copied: u64,
    /// Garbage message frames dropped.
    pub messages_dropped: u64,
    /// Dead copies (left by an interrupted compaction) dropped.
    pub copies_dropped: u64,
    /// `(mailbox, id)` deletion pairs rewritten, and dropped (no frame of the message left).
    pub deletions_kept: u64,
    pub deletions_dropped: u64,
    /// Delivery results rewritten, and dropped (message gone, unknown recipient, or a
    /// Deferred superseded by a later result).
    pub results_kept: u64,
    pub results_dropped: u64,
    /// DSN markers rewritten, and dropped (message gone).
    pub markers_kept: u64,
    pub markers_dropped: u64,
    /// Mailbox-state records copied, and dropped (void and releasing nothing on disk, or a
    /// second copy of one record).
    pub states_kept: u64,
    pub states_dropped: u64,
    /// File bytes of the removed segments, and of the segments written.
    pub bytes_removed: u64,
    pub bytes_written: u64,
    /// Failed unlinks (the segment stays and is retried next time).
    pub errors: Vec<String>,
    pub duration: Duration,
}

impl CompactionReport {
    /// Disk bytes given back (removed − written).
    pub fn bytes_reclaimed(&self) -> i64 {
        self.bytes_removed as i64 - self.bytes_written as i64
    }
}

impl fmt::Display for CompactionReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spool compaction: {} segment(s) examined, {} removed, {} written; {} message(s) copied, \
             {} garbage dropped, {} dead copies dropped; {} deletion(s) kept, {} dropped; \
             {} delivery result(s) kept, {} dropped; {} DSN marker(s) kept, {} dropped; \
             {} mailbox-state record(s) kept, {} dropped; \
             {} damaged region(s) dropped; {} byte(s) reclaimed in {:.1} ms",
            self.segments_examined,
            self.segments_removed.len(),
            self.segments_written.len(),
            self.messages_copied,
            self.messages_dropped,
            self.copies_dropped,
            self.deletions_kept,
            self.deletions_dropped,
            self.results_kept,
            self.results_dropped,
            self.markers_kept,
            self.markers_dropped,
            self.states_kept,
            self.states_dropped,
            self.damaged_regions_dropped,
            self.bytes_reclaimed(),
            self.duration.as_secs_f64() * 1000.0
        )?;
        for ((shard, segment), reason) in &self.segments_skipped {
            write!(
                f,
                "\n  shard {shard:03} segment {segment}: left alone ({reason})"
            )?;
        }
        for e in &self.errors {
            write!(f, "\n  {e} (retried next time)")?;
        }
        Ok(())
    }
}

/// Compaction's own memory: the segments it wrote in this run (sealed from birth, so
/// candidates even above the writer's floor).
#[derive(Debug, Default)]
pub(crate) struct CompactionState {
    outputs: HashSet<(u8, u64)>,
}

/// Compacts the spool in `dir` in this process: opens it (recovery, repairs, leftover
/// temporaries and duplicates resolved as at a server start), compacts with the default
/// threshold, closes it. This is `relay spool compact --dir D`. The server must not be running
/// on the same directory.
///
/// The server's `segment_size` is not known here, so outputs are bounded by the largest
/// segment file present (what recovery already had to hold in memory), at most 64 MiB.
pub fn compact_offline(dir: &Path) -> Result<CompactionReport, SpoolError> {
    if !dir.is_dir() {
        return Err(SpoolError::io(
            "open spool dir",
            dir,
            std::io::Error::from(std::io::ErrorKind::NotFound),
        ));
    }
    let io = FsIo::new(dir);
    let default = SpoolConfig::new(dir).segment_size;
    let mut largest = 0u64;
    for shard in io
        .list_shards()
        .map_err(|e| SpoolError::io("list shards", dir, e))?
    {
        let path = io.shard_path(shard);
        for segment in io
            .list_segments(shard)
            .map_err(|e| SpoolError::io("list segments", &path, e))?
        {
            if let Ok(meta) = std::fs::metadata(io.segment_path(shard, segment)) {
                largest = largest.max(meta.len());
            }
        }
    }
    let mut config = SpoolConfig::new(dir);
    if largest > 2 * SEGMENT_PREAMBLE_LEN {
        config.segment_size = largest.min(default);
    }
    let cfg = CompactionConfig::new(config.segment_size);
    compact_offline_with(config, &cfg)
}

/// [`compact_offline`] with the server's spool settings (its `segment_size` bounds the
/// outputs) and explicit thresholds: for a CLI that has the config file at hand.
pub fn compact_offline_with(
    config: SpoolConfig,
    cfg: &CompactionConfig,
) -> Result<CompactionReport, SpoolError> {
    let dir = config.dir.clone();
    if !dir.is_dir() {
        return Err(SpoolError::io(
            "open spool dir",
            &dir,
            std::io::Error::from(std::io::ErrorKind::NotFound),
        ));
    }
    let shards = FsIo::new(&dir)
        .list_shards()
        .map_err(|e| SpoolError::io("list shards", &dir, e))?;
    // Every shard directory present is this run's: repaired and compacted.
    let count = shards.last().map_or(1, |&s| usize::from(s) + 1);
    let (spool, recovery) = Spool::open(config, count)?;
    tracing::info!("spool {}: {recovery}", dir.display());
    let result = spool.compact_with(cfg);
    spool.close()?;
    result
}

fn lock_state(core: &Core) -> MutexGuard<'_, CompactionState> {
    core.compaction.lock().unwrap_or_else(|p| p.into_inner())
}

/// One compaction pass over every writable shard (see the module doc).
pub(crate) fn run(core: &Core, cfg: &CompactionConfig) -> Result<CompactionReport, SpoolError> {
    let started = Instant::now();
    let mut state = lock_state(core);
    let mut report = CompactionReport::default();
    let mut live: HashMap<(u8, u64), u64> = HashMap::new();
    core.index.for_each(|_, e| {
        if !e.is_garbage() {
            *live
                .entry((e.location.shard, e.location.segment))
                .or_default() += e.location.frame_len;
        }
    });
    let io = core.io.as_ref();
    let percent = u64::from(cfg.live_percent_below.min(100));
    for (shard, segments) in core.shards.iter().enumerate() {
        let shard = shard as u8;
        let listed = io
            .list_segments(shard)
            .map_err(|e| SpoolError::io("list segments", io.shard_path(shard), e))?;
        // Loaded after listing: a segment the writer creates is published as its floor first.
        let floor = segments.writer_floor.load(Ordering::SeqCst);
        let mut candidates: Vec<(u64, u64)> = Vec::new();
        for segment in listed {
            if segment >= floor && !state.outputs.contains(&(shard, segment)) {
                continue;
            }
            report.segments_examined += 1;
            let path = io.segment_path(shard, segment);
            let size = io
                .open_segment(shard, segment, false)
                .and_then(|f| f.size())
                .map_err(|e| SpoolError::io("stat segment", &path, e))?;
            let data = size.saturating_sub(SEGMENT_PREAMBLE_LEN);
            let live_bytes = live.get(&(shard, segment)).copied().unwrap_or(0)
                + core.record_refs.needed_bytes(shard, segment, &core.index);
            if data == 0 || live_bytes * 100 < data * percent {
                candidates.push((segment, live_bytes));
            }
        }
        let mut batch: Vec<u64> = Vec::new();
        let mut batch_live = 0u64;
        for (segment, live_bytes) in candidates {
            if !batch.is_empty() && batch_live + live_bytes > cfg.output_segment_size {
                compact_batch(core, &mut state, shard, &batch, cfg, &mut report)?;
                batch.clear();
                batch_live = 0;
            }
            batch.push(segment);
            batch_live += live_bytes;
        }
        if !batch.is_empty() {
            compact_batch(core, &mut state, shard, &batch, cfg, &mut report)?;
        }
    }
    report.duration = started.elapsed();
    if !report.segments_removed.is_empty() || !report.segments_skipped.is_empty() {
        tracing::info!("{report}");
    }
    Ok(report)
}

/// A kept frame, re-encoded for the output's salt, waiting in a per-source chunk.
struct Copied {
    id: QueueId,
    from: Location,
    /// Offset of the frame in the chunk, and its header (for the new location).
    at: u64,
    header: FrameHeader,
}

/// What scanning one source produced.
#[derive(Default)]
struct SourceScan {
    chunk: Vec<u8>,
    copied: Vec<Copied>,
    /// Every message id with a frame in the source (its locations there die with the file).
    seen: Vec<QueueId>,
    /// Needed deletion pairs, by mailbox, and the highest seq they came from.
    needed: BTreeMap<String, BTreeSet<QueueId>>,
    deletion_seq: u64,
    /// Needed delivery results and markers, and the highest seq they came from.
    results: BTreeSet<DeliveryResult>,
    markers: BTreeSet<DsnSent>,
    delivery_seq: u64,
    results_dropped: u64,
    markers_dropped: u64,
    /// Every state frame of the source, with its offset in `chunk` if kept (its location
    /// moves there).
    state_frames: Vec<(StateRef, Option<u64>)>,
    states_dropped: u64,
    messages_dropped: u64,
    copies_dropped: u64,
    deletions_dropped: u64,
    damaged_regions: u64,
}

fn scan_source(
    core: &Core,
    shard: u8,
    segment: u64,
    salt: u32,
    states_seen: &mut HashSet<(String, u64, u32)>,
) -> Result<Result<SourceScan, String>, SpoolError> {
    let mut scan = SourceScan::default();
    let mut rep = ShardRecovery::default();
    let mut resume = ShardResume::default();
    let scanned = scan_segment(
        core.io.as_ref(),
        shard,
        segment,
        Mode::ReadOnly,
        &mut rep,
        &mut resume,
        &mut |v| {
            match &v.record {
                Record::Message(meta) => {
                    scan.seen.push(meta.id);
                    let state = core
                        .index
                        .status(meta.id)
                        .map(|(location, garbage)| (location == v.location, garbage));
                    match state {
                        Some((true, false)) => {
                            let at = scan.chunk.len() as u64;
                            scan.chunk.extend_from_slice(&v.header.encode(salt));
                            push_padded(&mut scan.chunk, v.meta);
                            push_padded(&mut scan.chunk, v.body);
                            scan.copied.push(Copied {
                                id: meta.id,
                                from: v.location,
                                at,
                                header: v.header,
                            });
                        }
                        Some((true, true)) => scan.messages_dropped += 1,
                        Some((false, _)) | None => scan.copies_dropped += 1,
                    }
                }
                Record::State(s) => {
                    let frame = StateRef::new(s, v.header.data_crc, v.location);
                    // Only the record's location is copied: another copy (a leftover of an
                    // interrupted compaction) is dead bytes, like a message's.
                    // (Seen-set last: a dead copy met first must not hide the location.)
                    let keep = core.index.is_state_location(&frame.key(), &v.location)
                        && core.index.state_live(&s.user, s.seq, &s.released)
                        && states_seen.insert((s.user.clone(), s.seq, v.header.data_crc));
                    if keep {
                        let at = scan.chunk.len() as u64;
                        scan.chunk.extend_from_slice(&v.header.encode(salt));
                        push_padded(&mut scan.chunk, v.meta);
                        push_padded(&mut scan.chunk, v.body);
                        scan.state_frames.push((frame, Some(at)));
                    } else {
                        scan.states_dropped += 1;
                        scan.state_frames.push((frame, None));
                    }
                }
                Record::Deletion(d) => {
                    scan.deletion_seq = scan.deletion_seq.max(v.header.seq);
                    for id in &d.ids {
                        if core.index.contains(*id) {
                            scan.needed
                                .entry(d.mailbox.clone())
                                .or_default()
                                .insert(*id);
                        } else {
                            scan.deletions_dropped += 1;
                        }
                    }
                }
                Record::Delivery(d) => {
                    scan.delivery_seq = scan.delivery_seq.max(v.header.seq);
                    for r in &d.results {
                        if core.index.needs_result(r) {
                            scan.results.insert(r.clone());
                        } else {
                            scan.results_dropped += 1;
                        }
                    }
                    for m in &d.dsn_sent {
                        if core.index.needs_marker(m) {
                            scan.markers.insert(m.clone());
                        } else {
                            scan.markers_dropped += 1;
                        }
                    }
                }
            }
            ControlFlow::Continue(())
        },
    );
    match scanned {
        Ok(_) => {
            for c in &rep.corrupt_frames {
                tracing::warn!(
                    shard,
                    segment,
                    offset = c.offset,
                    bytes = c.bytes_skipped,
                    reason = %c.reason,
                    "spool: compaction drops a damaged region (no reader could use it)"
                );
            }
            scan.damaged_regions = rep.corrupt_frames.len() as u64;
            Ok(Ok(scan))
        }
        Err(SpoolError::Recovery { reason, .. }) => Ok(Err(reason)),
        Err(e) => Err(e),
    }
}

fn push_padded(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(bytes);
    let len = bytes.len() as u64;
    out.extend_from_slice(&ZERO_PAD[..(pad16(len) - len) as usize]);
}

/// The output segment being written (created when there is a first byte to write).
struct Output {
    number: u64,
    file: Box<dyn SegmentFile>,
    tail: u64,
    unsynced: u64,
}

impl Output {
    fn create(core: &Core, shard: u8, salt: u32) -> Result<Output, SpoolError> {
        let io = core.io.as_ref();
        let number = core.shards[usize::from(shard)]
            .next_segment
            .fetch_add(1, Ordering::SeqCst);
        let mut file = io.create_temp_segment(shard, number).map_err(|e| {
            SpoolError::io("create compaction temporary", temp(core, shard, number), e)
        })?;
        let header = SegmentHeader {
            shard: u16::from(shard),
            segment: number,
            salt,
        }
        .encode();
        if let Err(e) = file.write_all_at(0, &[IoSlice::new(&header), IoSlice::new(&header)]) {
            drop(file);
            let _ = io.remove_temp_segment(shard, number);
            return Err(SpoolError::io(
                "write compaction temporary",
                temp(core, shard, number),
                e,
            ));
        }
        Ok(Output {
            number,
            file,
            tail: SEGMENT_PREAMBLE_LEN,
            unsynced: SEGMENT_PREAMBLE_LEN,
        })
    }

    fn append(
        &mut self,
        core: &Core,
        shard: u8,
        bytes: &[u8],
        sync_every: u64,
    ) -> Result<u64, SpoolError> {
        let at = self.tail;
        self.file
            .write_all_at(at, &[IoSlice::new(bytes)])
            .map_err(|e| {
                SpoolError::io(
                    "write compaction temporary",
                    temp(core, shard, self.number),
                    e,
                )
            })?;
        self.tail += bytes.len() as u64;
        self.unsynced += bytes.len() as u64;
        if self.unsynced >= sync_every {
            self.sync(core, shard)?;
        }
        Ok(at)
    }

    fn sync(&mut self, core: &Core, shard: u8) -> Result<(), SpoolError> {
        if core.fsync {
            self.file.sync_data().map_err(|e| {
                SpoolError::io(
                    "sync compaction temporary",
                    temp(core, shard, self.number),
                    e,
                )
            })?;
        }
        self.unsynced = 0;
        Ok(())
    }
}

fn temp(core: &Core, shard: u8, number: u64) -> std::path::PathBuf {
    core.io.temp_segment_path(shard, number)
}

/// Compacts `sources` (ascending, sealed) of `shard` into at most one new segment.
fn compact_batch(
    core: &Core,
    state: &mut CompactionState,
    shard: u8,
    sources: &[u64],
    cfg: &CompactionConfig,
    report: &mut CompactionReport,
) -> Result<(), SpoolError> {
    let io = core.io.as_ref();
    let salt = io.new_salt();
    let mut out: Option<Output> = None;
    let written = write_output(core, shard, sources, salt, cfg, &mut out, report);
    let scans = match written {
        Ok(scans) => scans,
        Err(e) => {
            abandon(core, shard, out);
            return Err(e);
        }
    };
    for (_, scan) in &scans.sources {
        report.messages_copied += scan.copied.len() as u64;
        report.states_kept += scan.state_frames.iter().filter(|f| f.1.is_some()).count() as u64;
    }
    // Publish: synced, renamed; from the rename on, the file is visible and registered.
    if let Some(mut o) = out {
        if let Err(e) = o.sync(core, shard) {
            abandon(core, shard, Some(o));
            return Err(e);
        }
        let (number, size) = (o.number, o.tail);
        drop(o);
        if let Err(e) = io.publish_temp_segment(shard, number) {
            let _ = io.remove_temp_segment(shard, number);
            return Err(SpoolError::io(
                "publish compacted segment",
                io.segment_path(shard, number),
                e,
            ));
        }
        state.outputs.insert((shard, number));
        report.segments_written.push((shard, number));
        report.bytes_written += size;
        // Readers switch to the new locations; the old ones become copies.
        for (_, scan) in &scans.sources {
            for c in &scan.copied {
                let to = Location {
                    shard,
                    segment: number,
                    offset: c.at,
                    frame_len: c.header.frame_len(),
                    body_offset: c.at + c.header.body_offset(),
                    body_len: u64::from(c.header.body_len),
                };
                core.index.moved(c.id, &c.from, to);
            }
        }
        for (frame_len, refs) in &scans.record_frames {
            core.record_refs
                .add(shard, number, *frame_len, refs.iter().copied());
        }
        for (_, scan) in &scans.sources {
            for (frame, kept) in &scan.state_frames {
                if let Some(offset) = kept {
                    let from = frame.location;
                    let to = Location {
                        shard,
                        segment: number,
                        offset: *offset,
                        frame_len: from.frame_len,
                        body_offset: offset + (from.body_offset - from.offset),
                        body_len: from.body_len,
                    };
                    core.index.state_moved(&frame.key(), &from, to);
                    core.record_refs.add_state(
                        shard,
                        number,
                        StateRef {
                            location: to,
                            ..frame.clone()
                        },
                    );
                }
            }
        }
        // Sources are unlinked only once the new name is durable. If this fails, both stay
        // (both known to the index) and the next compaction tries again.
        io.sync_shard_dir(shard)
            .map_err(|e| SpoolError::io("sync dir", io.shard_path(shard), e))?;
    }
    // Unlink the sources, then make that durable before forgetting their frames.
    let mut unlinked = Vec::new();
    for (segment, scan) in scans.sources {
        let size = io
            .open_segment(shard, segment, false)
            .and_then(|f| f.size())
            .unwrap_or(0);
        match io.remove_segment(shard, segment) {
            Ok(()) => unlinked.push((segment, scan, size)),
            Err(e) => {
                let e = SpoolError::io(
                    "remove compacted segment",
                    io.segment_path(shard, segment),
                    e,
                );
                tracing::warn!(error = %e, "spool: compaction");
                report.errors.push(e.to_string());
            }
        }
    }
    if unlinked.is_empty() {
        return Ok(());
    }
    let synced = io.sync_shard_dir(shard);
    for (segment, scan, size) in unlinked {
        // The name is gone either way: no reader can open it any more.
        core.files.retire(shard, segment);
        if synced.is_err() {
            // The unlink may not be durable: keep counting its frames as existing (their
            // deletions stay needed).
            continue;
        }
        core.record_refs.remove(shard, segment);
        state.outputs.remove(&(shard, segment));
        for id in &scan.seen {
            core.index.segment_removed(*id, shard, segment);
        }
        for (frame, _) in &scan.state_frames {
            core.index.state_removed(&frame.key(), &frame.location);
        }
        report.messages_dropped += scan.messages_dropped;
        report.copies_dropped += scan.copies_dropped;
        report.deletions_dropped += scan.deletions_dropped;
        report.results_dropped += scan.results_dropped;
        report.markers_dropped += scan.markers_dropped;
        report.states_dropped += scan.states_dropped;
        report.damaged_regions_dropped += scan.damaged_regions;
        report.bytes_removed += size;
        report.segments_removed.push((shard, segment));
    }
    synced.map_err(|e| SpoolError::io("sync dir", io.shard_path(shard), e))
}

/// The scanned sources of a batch and the deletion and delivery frames written for them.
struct Written {
    sources: Vec<(u64, SourceScan)>,
    /// `(frame_len, refs)` of each rewritten deletion or delivery record.
    record_frames: Vec<(u64, Vec<Ref>)>,
}

/// Steps 1 of the protocol: scan each source, append its kept frames, then the needed
/// deletions and delivery records, to the temporary file (created on the first byte to
/// write).
fn write_output(
    core: &Core,
    shard: u8,
    sources: &[u64],
    salt: u32,
    cfg: &CompactionConfig,
    out: &mut Option<Output>,
    report: &mut CompactionReport,
) -> Result<Written, SpoolError> {
    let mut done = Vec::new();
    let mut needed: BTreeMap<String, BTreeSet<QueueId>> = BTreeMap::new();
    let mut deletion_seq = 0;
    let mut results: BTreeSet<DeliveryResult> = BTreeSet::new();
    let mut markers: BTreeSet<DsnSent> = BTreeSet::new();
    let mut delivery_seq = 0;
    let mut states_seen = HashSet::new();
    for &segment in sources {
        let mut scan = match scan_source(core, shard, segment, salt, &mut states_seen)? {
            Ok(scan) => scan,
            Err(reason) => {
                tracing::warn!(shard, segment, %reason, "spool: compaction leaves a damaged segment alone");
                report.segments_skipped.push(((shard, segment), reason));
                continue;
            }
        };
        if !scan.chunk.is_empty() {
            let o = match out {
                Some(o) => o,
                None => out.insert(Output::create(core, shard, salt)?),
            };
            let at = o.append(core, shard, &scan.chunk, cfg.sync_every)?;
            for c in &mut scan.copied {
                c.at += at;
            }
            for (_, kept) in &mut scan.state_frames {
                if let Some(offset) = kept {
                    *offset += at;
                }
            }
            scan.chunk = Vec::new();
        }
        for (mailbox, ids) in std::mem::take(&mut scan.needed) {
            needed.entry(mailbox).or_default().extend(ids);
        }
        deletion_seq = deletion_seq.max(scan.deletion_seq);
        results.append(&mut scan.results);
        markers.append(&mut scan.markers);
        delivery_seq = delivery_seq.max(scan.delivery_seq);
        done.push((segment, scan));
    }
    let mut record_frames = Vec::new();
    let mut buf = AlignedVec::<16>::new();
    for (mailbox, ids) in needed {
        let ids: Vec<QueueId> = ids.into_iter().collect();
        for part in ids.chunks(DELETION_IDS_PER_RECORD) {
            let d = MailboxDeletion {
                mailbox: mailbox.clone(),
                ids: part.to_vec(),
            };
            let start = buf.len();
            let f = encode_deletion(&mut buf, &d, deletion_seq)?;
            let h = f.header.encode(salt);
            buf[start..start + h.len()].copy_from_slice(&h);
            report.deletions_kept += d.ids.len() as u64;
            record_frames.push((f.header.frame_len(), Ref::deletions(&d.ids).collect()));
        }
    }
    report.results_kept += results.len() as u64;
    report.markers_kept += markers.len() as u64;
    let mut results = results.into_iter().peekable();
    let mut markers = markers.into_iter().peekable();
    while results.peek().is_some() || markers.peek().is_some() {
        let mut d = DeliveryRecord::default();
        d.results
            .extend(results.by_ref().take(DELIVERY_ENTRIES_PER_RECORD));
        let room = DELIVERY_ENTRIES_PER_RECORD - d.results.len();
        d.dsn_sent.extend(markers.by_ref().take(room));
        let start = buf.len();
        let f = encode_delivery(&mut buf, &d, delivery_seq)?;
        let h = f.header.encode(salt);
        buf[start..start + h.len()].copy_from_slice(&h);
        record_frames.push((f.header.frame_len(), Ref::delivery(&d).collect()));
    }
    if !buf.is_empty() {
        let o = match out {
            Some(o) => o,
            None => out.insert(Output::create(core, shard, salt)?),
        };
        o.append(core, shard, &buf, cfg.sync_every)?;
    }
    Ok(Written {
        sources: done,
        record_frames,
    })
}

/// Best effort after a failed batch: the temporary file goes (recovery would remove it
/// anyway); the sources were not touched.
fn abandon(core: &Core, shard: u8, out: Option<Output>) {
    if let Some(o) = out {
        let number = o.number;
        drop(o);
        let _ = core.io.remove_temp_segment(shard, number);
    }
}

#[cfg(test)]
mod tests {
    use std::io::IoSlice;
    use std::sync::Arc;

    use super::*;
    use crate::envelope::{Envelope, MailParams, Origin};
    use crate::spool::frame::MessageMeta;
    use crate::spool::recover;
    use crate::spool::sim::{SimDisk, SimFaults};
    use crate::spool::writer::{Pending, PendingMessage, ShardWriter};
    use crate::spool::SegmentIo;

    fn open(disk: &SimDisk) -> (Arc<Core>, ShardWriter) {
        let rec = recover(disk, 1).unwrap();
        let (core, _, resume) = Core::new(Arc::new(disk.clone()), rec, 1024, true);
        let w = ShardWriter::new(0, Arc::clone(&core), resume[0].next_seq);
        (core, w)
    }

    fn message(id: QueueId, mailbox: &str) -> Pending {
        Pending::Message(PendingMessage {
            meta: MessageMeta {
                id,
                arrival_unix_micros: id.micros(),
                origin: Origin {
                    client_ip: "192.0.2.1".into(),
                    client_port: 1,
                    helo: "h".into(),
                    protocol: "ESMTP".into(),
                },
                envelope: Envelope {
                    reverse_path: String::new(),
                    params: MailParams::default(),
                    recipients: Vec::new(),
                },
                received_len: 0,
                mailboxes: vec![mailbox.into()],
                remote: Vec::new(),
                placements: Vec::new(),
            }
            .into(),
            received: Vec::new(),
            // One message per 1 KiB segment.
            body: vec![b'x'; 600],
        })
    }

    fn cfg() -> CompactionConfig {
        CompactionConfig {
            live_percent_below: 100,
            output_segment_size: 1024,
            sync_every: 1 << 20,
        }
    }

    /// A message left in two segments by an interrupted compaction keeps its deletions needed
    /// until its last copy is gone, whatever order the segments are compacted in.
    #[test]
    fn deletions_stay_while_any_copy_exists() {
        let disk = SimDisk::new(1, SimFaults::default());
        let (x, y) = (QueueId::new(10, 0), QueueId::new(11, 0));
        let (core, mut w) = open(&disk);
        assert!(w.commit(&[message(x, "alice")])[0].is_ok());
        assert!(w.commit(&[message(y, "bob")])[0].is_ok());
        let seg_x = core.locate(x).unwrap().segment;
        drop(w);
        // Compact the sealed segment of x, then put the source back: old + new both present.
        let old = disk.contents(0, seg_x).unwrap();
        let mut state = lock_state(&core);
        let mut report = CompactionReport::default();
        compact_batch(&core, &mut state, 0, &[seg_x], &cfg(), &mut report).unwrap();
        drop(state);
        assert_eq!(report.segments_written.len(), 1);
        let seg_n = report.segments_written[0].1;
        let mut f = disk.create_segment(0, seg_x).unwrap();
        f.write_all_at(0, &[IoSlice::new(&old)]).unwrap();
        f.sync_data().unwrap();
        disk.sync_shard_dir(0).unwrap();
        drop(f);

        let (core, mut w) = open(&disk);
        let e = core.index.get(x).unwrap();
        assert_eq!(
            e.location.segment, seg_x,
            "first copy found is the location"
        );
        assert_eq!(e.copies.len(), 1);
        assert_eq!(e.copies[0].segment, seg_n);
        // alice deletes x: garbage now, its deletion in a new segment.
        assert!(w.commit(&[Pending::Deletion(MailboxDeletion {
            mailbox: "alice".into(),
            ids: vec![x],
        })])[0]
            .is_ok());
        assert!(core.index.get(x).unwrap().is_garbage());
        assert!(core.locate(y).is_some());
        drop(w);
        let deletion_segment = disk.list_segments(0).unwrap().into_iter().max().unwrap();

        // The location's segment goes first: x stays indexed through its copy.
        let mut state = lock_state(&core);
        let mut report = CompactionReport::default();
        compact_batch(&core, &mut state, 0, &[seg_x], &cfg(), &mut report).unwrap();
        assert_eq!(report.messages_dropped, 1);
        assert_eq!(core.locate(x).map(|l| l.segment), Some(seg_n));
        // The copy and the deletion in one batch: the deletion is still kept (the copy may
        // outlive the deletion's segment if a crash lands between the two unlinks).
        let mut report = CompactionReport::default();
        compact_batch(
            &core,
            &mut state,
            0,
            &[seg_n, deletion_segment],
            &cfg(),
            &mut report,
        )
        .unwrap();
        assert_eq!(
            report.messages_dropped, 1,
            "the copy took over as location: {report}"
        );
        assert_eq!(report.deletions_kept, 1, "{report}");
        assert!(!core.index.contains(x), "every copy of x is gone now");
        // Next time the deletion is an orphan and goes.
        let written = report.segments_written[0].1;
        let mut report = CompactionReport::default();
        compact_batch(&core, &mut state, 0, &[written], &cfg(), &mut report).unwrap();
        assert_eq!((report.deletions_kept, report.deletions_dropped), (0, 1));
        assert!(report.segments_written.is_empty());
    }
}
