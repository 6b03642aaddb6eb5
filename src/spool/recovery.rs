//! Recovery: read every segment back, decide frame by frame what to keep, rebuild the index.
//!
//! The per-frame decision is one pure function, [`decide`], over the facts the scanner
//! establishes ([`FrameFacts`]); its table is in its doc and a test enumerates every input
//! combination. The scanner only gathers facts and applies the decision:
//!
//! - `Keep`: the frame is intact; index it and step over it.
//! - `TruncateTail`: nothing valid follows in this segment; the rest is a torn write (or zero
//!   fill) of a batch that was never acknowledged. Cut the file there (repair mode) or just
//!   stop reading (read-only mode: other shards' dirs, `inspect`, a live spool).
//! - `SkipCorrupt`: a damaged frame with a valid one after it: report it and resume at the
//!   frame's end (trusted length) or at the next header whose salted checksum validates (found
//!   by scanning at 16-byte steps). Never truncate past a valid frame: it may be acknowledged.
//! - `Fatal`: a trusted header this build cannot interpret (unknown version or kind): stop
//!   with a clear error and change nothing. An older binary must not drop what a newer one
//!   wrote.
//!
//! Segment preambles: a file of at most 64 bytes is an interrupted creation (frames are only
//! written after the preamble is synced) and is removed in repair mode; a longer file whose two
//! header copies are both bad, or whose header names another shard or number, is Fatal.
//!
//! Compaction leftovers (see [`super::compact`] for the protocol): a `N.seg.tmp` file is a
//! compaction that did not publish its segment; its sources are all still present, so it is
//! removed (repair mode) and reported. A queue id found in two segments is a compaction that
//! published its segment but did not finish unlinking the sources: the bytes are identical; the
//! first copy found (lowest segment) is indexed, the others are remembered as copies and the
//! id is reported in `duplicate_ids`. The next compaction reclaims the dead copies. Neither
//! case needs a decision-table row: they are whole files, not frames, and every frame in them
//! is intact.

use std::fmt;
use std::ops::ControlFlow;
use std::path::PathBuf;

use rkyv::util::AlignedVec;

use super::frame::{
    decode_payload, pad16, FrameHeader, Record, RecordKind, SegmentHeader, SegmentHeaderError,
    FRAME_HEADER_LEN, FRAME_MAGIC, SEGMENT_FORMATS_READ, SEGMENT_HEADER_LEN, SEGMENT_PREAMBLE_LEN,
};
use super::io::SegmentIo;
use super::{Location, SpoolError};
use crate::envelope::QueueId;

/// What the scanner knows about the bytes at one frame position. Facts that could not be
/// established because an earlier one failed are `false` (the table does not look at them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameFacts {
    /// The region starts with the frame magic (an all-zero region is just the end of data).
    pub magic_ok: bool,
    /// The salted header checksum matches, so its lengths, kind and version can be believed.
    pub header_crc_ok: bool,
    pub version_known: bool,
    pub kind_known: bool,
    /// The frame (per its trusted length) ends within the segment file.
    pub length_within_segment: bool,
    pub data_crc_ok: bool,
    /// rkyv `access` with bytecheck accepts the payload.
    pub payload_validates: bool,
    /// Somewhere after this frame (after its end if the header is trusted and it fits, else
    /// after its start) in this segment there is a header whose salted checksum validates.
    pub later_valid_frame_exists: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    Keep,
    TruncateTail,
    SkipCorrupt,
    Fatal,
}

/// The recovery decision table. Rows are tried top to bottom; `-` means "any".
///
/// | magic | hdr crc | version | kind | in seg | data crc | payload | later | decision     | why |
/// |-------|---------|---------|------|--------|----------|---------|-------|--------------|-----|
/// | 0     | -       | -       | -    | -      | -        | -       | 0     | TruncateTail | zero fill or torn header at the end |
/// | -     | 0       | -       | -    | -      | -        | -       | 0     | TruncateTail | same |
/// | 0     | -       | -       | -    | -      | -        | -       | 1     | SkipCorrupt  | damaged header, resync to the next valid one |
/// | -     | 0       | -       | -    | -      | -        | -       | 1     | SkipCorrupt  | same |
/// | 1     | 1       | 0       | -    | -      | -        | -       | -     | Fatal        | written by a newer build |
/// | 1     | 1       | -       | 0    | -      | -        | -       | -     | Fatal        | same |
/// | 1     | 1       | 1       | 1    | 0      | -        | -       | 0     | TruncateTail | last frame cut short |
/// | 1     | 1       | 1       | 1    | 0      | -        | -       | 1     | SkipCorrupt  | never cut away a later valid frame |
/// | 1     | 1       | 1       | 1    | 1      | 0        | -       | 0     | TruncateTail | last frame torn inside |
/// | 1     | 1       | 1       | 1    | 1      | 0        | -       | 1     | SkipCorrupt  | damaged in the middle |
/// | 1     | 1       | 1       | 1    | 1      | 1        | 0       | -     | SkipCorrupt  | intact bytes no build can read: report, keep the file |
/// | 1     | 1       | 1       | 1    | 1      | 1        | 1       | -     | Keep         | |
pub fn decide(f: FrameFacts) -> Decision {
    use Decision::*;
    match (
        f.magic_ok,
        f.header_crc_ok,
        f.version_known,
        f.kind_known,
        f.length_within_segment,
        f.data_crc_ok,
        f.payload_validates,
        f.later_valid_frame_exists,
    ) {
        (false, _, _, _, _, _, _, false) | (_, false, _, _, _, _, _, false) => TruncateTail,
        (false, _, _, _, _, _, _, true) | (_, false, _, _, _, _, _, true) => SkipCorrupt,
        (true, true, false, _, _, _, _, _) | (true, true, _, false, _, _, _, _) => Fatal,
        (true, true, true, true, false, _, _, false) => TruncateTail,
        (true, true, true, true, false, _, _, true) => SkipCorrupt,
        (true, true, true, true, true, false, _, false) => TruncateTail,
        (true, true, true, true, true, false, _, true) => SkipCorrupt,
        (true, true, true, true, true, true, false, _) => SkipCorrupt,
        (true, true, true, true, true, true, true, _) => Keep,
    }
}

/// A torn tail that recovery cut off (or, read-only, would have).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    pub segment: u64,
    pub offset: u64,
    pub bytes_dropped: u64,
    pub reason: String,
}

/// A damaged region that recovery stepped over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptFrame {
    pub segment: u64,
    pub offset: u64,
    pub bytes_skipped: u64,
    pub reason: String,
}

/// What recovery did in one shard directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardRecovery {
    pub shard: u8,
    /// False for shard directories beyond this run's shard count: read, never written.
    pub writable: bool,
    pub segments_scanned: u64,
    pub records_kept: u64,
    pub bytes_kept: u64,
    pub torn_tails: Vec<TornTail>,
    pub corrupt_frames: Vec<CorruptFrame>,
    /// Segment files of at most a preamble (an interrupted creation), removed when writable.
    pub empty_segments: Vec<u64>,
    /// Temporary files of an interrupted compaction (`N.seg.tmp`), removed when writable.
    pub temp_segments: Vec<u64>,
    /// Segments whose first header copy was bad and the second one was used.
    pub header_copies_repaired: Vec<u64>,
    /// Records whose queue id was already indexed: copies left by an interrupted compaction
    /// (kept: the first one; the others are dead bytes the next compaction reclaims).
    pub duplicate_ids: Vec<QueueId>,
    /// Duplicates whose bytes differ from the kept copy (should never happen: compaction
    /// copies bytes as they are). Reported loudly; the first copy is kept.
    pub conflicting_duplicates: Vec<QueueId>,
    /// Deletion records kept, and how many (mailbox, id) pairs they name.
    pub deletion_records: u64,
    pub deletion_pairs: u64,
    /// Delivery records kept, and the results and DSN markers they hold.
    pub delivery_records: u64,
    pub delivery_results: u64,
    pub dsn_markers: u64,
    /// Mailbox-state records kept, and how many of them are checkpoints.
    pub state_records: u64,
    pub checkpoints: u64,
    /// Repairs (truncate, remove) that failed. Not fatal: old segments are never appended
    /// to, so the next start meets the same tail and decides the same way.
    pub repair_errors: Vec<String>,
}

/// What [`Spool::open`](super::Spool::open) found; its `Display` is the startup log line(s).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub shards: Vec<ShardRecovery>,
}

impl RecoveryReport {
    pub fn records_kept(&self) -> u64 {
        self.shards.iter().map(|s| s.records_kept).sum()
    }

    pub fn torn_tails(&self) -> usize {
        self.shards.iter().map(|s| s.torn_tails.len()).sum()
    }

    pub fn corrupt_frames(&self) -> usize {
        self.shards.iter().map(|s| s.corrupt_frames.len()).sum()
    }

    /// True when nothing was cut, skipped or removed.
    pub fn is_clean(&self) -> bool {
        self.shards.iter().all(|s| {
            s.torn_tails.is_empty()
                && s.corrupt_frames.is_empty()
                && s.empty_segments.is_empty()
                && s.temp_segments.is_empty()
                && s.header_copies_repaired.is_empty()
                && s.duplicate_ids.is_empty()
                && s.conflicting_duplicates.is_empty()
                && s.repair_errors.is_empty()
        })
    }
}

impl fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let segments: u64 = self.shards.iter().map(|s| s.segments_scanned).sum();
        write!(
            f,
            "spool recovery: {} shard(s), {} segment(s), {} record(s) kept, {} torn tail(s) truncated, {} corrupt frame(s) skipped",
            self.shards.len(),
            segments,
            self.records_kept(),
            self.torn_tails(),
            self.corrupt_frames()
        )?;
        for s in &self.shards {
            write!(
                f,
                "\n  shard {:03}{}: {} segment(s), {} record(s), {} byte(s)",
                s.shard,
                if s.writable { "" } else { " (read-only)" },
                s.segments_scanned,
                s.records_kept,
                s.bytes_kept
            )?;
            for t in &s.torn_tails {
                write!(
                    f,
                    "\n    torn tail: segment {} offset {}: {} byte(s) dropped ({})",
                    t.segment, t.offset, t.bytes_dropped, t.reason
                )?;
            }
            for c in &s.corrupt_frames {
                write!(
                    f,
                    "\n    corrupt frame skipped: segment {} offset {}: {} byte(s) ({})",
                    c.segment, c.offset, c.bytes_skipped, c.reason
                )?;
            }
            for e in &s.empty_segments {
                write!(f, "\n    empty segment {e} (interrupted creation)")?;
            }
            for e in &s.temp_segments {
                write!(
                    f,
                    "\n    temporary segment {e}.seg.tmp (interrupted compaction){}",
                    if s.writable { " removed" } else { "" }
                )?;
            }
            for e in &s.header_copies_repaired {
                write!(
                    f,
                    "\n    segment {e}: first header copy damaged, second used"
                )?;
            }
            for e in &s.repair_errors {
                write!(f, "\n    repair failed (will retry at next start): {e}")?;
            }
            if !s.duplicate_ids.is_empty() {
                write!(
                    f,
                    "\n    {} duplicate queue id(s) (interrupted compaction), first kept",
                    s.duplicate_ids.len()
                )?;
            }
            if !s.conflicting_duplicates.is_empty() {
                write!(
                    f,
                    "\n    {} duplicate queue id(s) with DIFFERENT bytes, first kept: {:?}",
                    s.conflicting_duplicates.len(),
                    s.conflicting_duplicates
                )?;
            }
        }
        Ok(())
    }
}

/// One kept record, handed to the visitor with its header and the segment bytes of its meta
/// and body (compaction copies them as they are).
pub(crate) struct Visit<'a> {
    pub location: Location,
    pub header: FrameHeader,
    pub record: Record,
    pub meta: &'a [u8],
    pub body: &'a [u8],
}

/// Per-shard outcome beyond the report: where the writer resumes.
#[derive(Debug, Clone, Default)]
pub(crate) struct ShardResume {
    pub next_segment: u64,
    pub next_seq: u64,
    /// Highest queue-id micros of this shard's records (seeds `next_id`).
    pub last_micros: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Truncate torn tails and remove empty leftovers (this run's own shards).
    Repair,
    /// Change nothing (other runs' shards, `inspect`, reading a live spool).
    ReadOnly,
}

fn next_valid_header(buf: &[u8], from: u64, salt: u32) -> Option<u64> {
    let finder = memchr::memmem::Finder::new(&FRAME_MAGIC);
    let mut pos = pad16(from) as usize;
    while pos + FRAME_HEADER_LEN <= buf.len() {
        let found = pos + finder.find(&buf[pos..])?;
        if !found.is_multiple_of(16) {
            pos = pad16(found as u64 + 1) as usize;
            continue;
        }
        if found + FRAME_HEADER_LEN > buf.len() {
            return None;
        }
        if FrameHeader::check(&buf[found..], salt).trusted() {
            return Some(found as u64);
        }
        pos = found + 16;
    }
    None
}

/// Outcome of examining one frame position. Short-lived on the stack, so the size difference
/// of its variants costs nothing worth an allocation per record.
#[allow(clippy::large_enum_variant)]
enum Step {
    Keep { header: FrameHeader, record: Record },
    Truncate { reason: String },
    Skip { resume: u64, reason: String },
    Fatal { reason: String },
}

/// Establishes the facts at `off` (16-aligned, < buf.len()) and applies [`decide`].
fn examine(buf: &[u8], off: usize, salt: u32) -> Step {
    let len = buf.len();
    let rest = &buf[off..];
    let mut facts = FrameFacts {
        magic_ok: false,
        header_crc_ok: false,
        version_known: false,
        kind_known: false,
        length_within_segment: false,
        data_crc_ok: false,
        payload_validates: false,
        later_valid_frame_exists: false,
    };
    let mut reason = String::new();
    let mut header = None;
    let mut record = None;
    let mut frame_len = 0u64;
    if rest.len() < FRAME_HEADER_LEN {
        reason = if rest.iter().all(|&b| b == 0) {
            "zero fill".into()
        } else {
            format!("incomplete header ({} bytes)", rest.len())
        };
    } else {
        let check = FrameHeader::check(rest, salt);
        facts.magic_ok = check.magic_ok;
        facts.header_crc_ok = check.crc_ok;
        let h = check.header;
        if !check.magic_ok {
            reason = if rest[..FRAME_HEADER_LEN].iter().all(|&b| b == 0) {
                "zero fill".into()
            } else {
                "bad frame magic".into()
            };
        } else if !check.crc_ok {
            reason = "header checksum mismatch".into();
        } else {
            header = Some(h);
            let kind = RecordKind::from_u16(h.kind);
            facts.kind_known = kind.is_some();
            facts.version_known = kind.is_some_and(|k| k.version_known(h.version));
            frame_len = h.frame_len();
            facts.length_within_segment = off as u64 + frame_len <= len as u64;
            if !facts.kind_known || !facts.version_known {
                reason = unknown_record_reason(h.kind, h.version);
            } else if !facts.length_within_segment {
                reason = format!(
                    "frame of {frame_len} bytes extends past the end of the segment ({} bytes left)",
                    len - off
                );
            } else {
                facts.data_crc_ok = h.data_crc_matches(rest);
                if !facts.data_crc_ok {
                    reason = "data checksum mismatch".into();
                } else if let Some(kind) = kind {
                    let meta = &rest[FRAME_HEADER_LEN..FRAME_HEADER_LEN + h.meta_len as usize];
                    match decode_payload(kind, h.version, meta) {
                        Ok(r) => {
                            facts.payload_validates = true;
                            record = Some(r);
                        }
                        Err(e) => reason = format!("payload fails validation: {e}"),
                    }
                }
            }
        }
    }
    let trusted_extent = facts.magic_ok && facts.header_crc_ok && facts.length_within_segment;
    let later_from = if trusted_extent {
        off as u64 + frame_len
    } else {
        off as u64 + 16
    };
    let intact = trusted_extent && facts.data_crc_ok;
    let later = if intact {
        None
    } else {
        next_valid_header(buf, later_from, salt)
    };
    facts.later_valid_frame_exists = later.is_some();
    match decide(facts) {
        Decision::Keep => match (header, record) {
            (Some(header), Some(record)) => Step::Keep { header, record },
            // decide() keeps only when both were established.
            _ => Step::Fatal {
                reason: "internal: kept frame without header or record".into(),
            },
        },
        Decision::TruncateTail => Step::Truncate { reason },
        Decision::SkipCorrupt => Step::Skip {
            resume: if trusted_extent {
                off as u64 + frame_len
            } else {
                later.unwrap_or(len as u64)
            },
            reason,
        },
        Decision::Fatal => Step::Fatal { reason },
    }
}

/// Reads one whole segment into a 16-aligned buffer (rkyv needs aligned payloads).
pub(crate) fn read_segment(
    io: &dyn SegmentIo,
    shard: u8,
    segment: u64,
    writable: bool,
) -> Result<(Box<dyn super::io::SegmentFile>, AlignedVec<16>), SpoolError> {
    let path = io.segment_path(shard, segment);
    let file = io
        .open_segment(shard, segment, writable)
        .map_err(|e| SpoolError::io("open segment", &path, e))?;
    let size = file
        .size()
        .map_err(|e| SpoolError::io("stat segment", &path, e))?;
    let mut buf = AlignedVec::<16>::new();
    buf.resize(size as usize, 0);
    // A live writer may truncate concurrently: a short read is just a shorter segment.
    let n = file
        .read_at(0, &mut buf)
        .map_err(|e| SpoolError::io("read segment", &path, e))?;
    buf.resize(n, 0);
    Ok((file, buf))
}

/// Why a segment of another format stops recovery: the version found and the ones this build
/// reads, so an operator knows which relay wrote the spool and which one can open it.
fn unknown_format_reason(found: u16) -> String {
    format!(
        "segment format {found} is unknown to this build, which reads format {}{}; \
         nothing was changed: start a relay that reads format {found}",
        list(SEGMENT_FORMATS_READ),
        newer_hint(found, SEGMENT_FORMATS_READ),
    )
}

/// Why a record of an unknown kind or layout version stops recovery (instead of being skipped
/// as damage: it may be a deletion, and skipping it would bring deleted mail back).
fn unknown_record_reason(kind: u16, version: u16) -> String {
    let read = match RecordKind::from_u16(kind) {
        Some(k) => format!(
            "version {} of kind {kind} ({k:?}){}",
            list(k.versions_read()),
            newer_hint(version, k.versions_read())
        ),
        None => "kinds 1, 2, 3 and 4 (written by a newer relay?)".to_string(),
    };
    format!(
        "record kind {kind} version {version} is unknown to this build, which reads {read}; \
         refusing to skip it (it may be a deletion): nothing was changed"
    )
}

fn list(versions: &[u16]) -> String {
    let names: Vec<String> = versions.iter().map(u16::to_string).collect();
    names.join(", ")
}

fn newer_hint(found: u16, read: &[u16]) -> &'static str {
    if read.iter().all(|&v| found > v) {
        " (written by a newer relay?)"
    } else {
        ""
    }
}

fn fatal(path: PathBuf, offset: u64, reason: impl Into<String>) -> SpoolError {
    SpoolError::Recovery {
        path,
        offset,
        reason: reason.into(),
    }
}

/// Scans every segment of one shard directory, calling `visit` for each kept record (in log
/// order); `visit` may stop the scan early. Repairs torn tails, empty leftovers and compaction
/// temporaries in [`Mode::Repair`].
pub(crate) fn scan_shard(
    io: &dyn SegmentIo,
    shard: u8,
    mode: Mode,
    visit: &mut dyn FnMut(Visit<'_>) -> ControlFlow<()>,
) -> Result<(ShardRecovery, ShardResume), SpoolError> {
    let writable = mode == Mode::Repair;
    let mut report = ShardRecovery {
        shard,
        writable,
        ..ShardRecovery::default()
    };
    let mut resume = ShardResume::default();
    let temps = io
        .list_temp_segments(shard)
        .map_err(|e| SpoolError::io("list segments", io.shard_path(shard), e))?;
    for &segment in &temps {
        // Its number was handed out: never reuse it.
        resume.next_segment = resume.next_segment.max(segment.saturating_add(1));
        report.temp_segments.push(segment);
        if writable {
            tracing::warn!(
                shard,
                segment,
                "spool: removing the temporary file of an interrupted compaction"
            );
            let removed = io
                .remove_temp_segment(shard, segment)
                .map_err(|e| {
                    SpoolError::io(
                        "remove compaction temporary",
                        io.temp_segment_path(shard, segment),
                        e,
                    )
                })
                .and_then(|()| {
                    io.sync_shard_dir(shard)
                        .map_err(|e| SpoolError::io("sync dir", io.shard_path(shard), e))
                });
            if let Err(e) = removed {
                tracing::warn!(error = %e, "spool: recovery repair failed");
                report.repair_errors.push(e.to_string());
            }
        }
    }
    let segments = io
        .list_segments(shard)
        .map_err(|e| SpoolError::io("list segments", io.shard_path(shard), e))?;
    for &segment in &segments {
        // Saturating: file names and headers are read from disk and may say u64::MAX.
        resume.next_segment = resume.next_segment.max(segment.saturating_add(1));
        let flow = scan_segment(io, shard, segment, mode, &mut report, &mut resume, visit)?;
        if flow.is_break() {
            break;
        }
    }
    Ok((report, resume))
}

/// Scans one segment (see [`scan_shard`]). In read-only mode a segment that vanished since it
/// was listed (a concurrent compaction unlinked it after publishing its replacement) is
/// skipped.
pub(crate) fn scan_segment(
    io: &dyn SegmentIo,
    shard: u8,
    segment: u64,
    mode: Mode,
    report: &mut ShardRecovery,
    resume: &mut ShardResume,
    visit: &mut dyn FnMut(Visit<'_>) -> ControlFlow<()>,
) -> Result<ControlFlow<()>, SpoolError> {
    let writable = mode == Mode::Repair;
    let path = io.segment_path(shard, segment);
    let (mut file, buf) = match read_segment(io, shard, segment, writable) {
        Ok(v) => v,
        Err(SpoolError::Io { ref source, .. })
            if !writable && source.kind() == std::io::ErrorKind::NotFound =>
        {
            return Ok(ControlFlow::Continue(()));
        }
        Err(e) => return Err(e),
    };
    report.segments_scanned += 1;
    if buf.len() as u64 <= SEGMENT_PREAMBLE_LEN {
        // Frames are written only after the preamble is synced: nothing can be lost here.
        report.empty_segments.push(segment);
        if writable {
            drop(file);
            let removed = io
                .remove_segment(shard, segment)
                .map_err(|e| SpoolError::io("remove empty segment", &path, e))
                .and_then(|()| {
                    io.sync_shard_dir(shard)
                        .map_err(|e| SpoolError::io("sync dir", io.shard_path(shard), e))
                });
            if let Err(e) = removed {
                tracing::warn!(error = %e, "spool: recovery repair failed");
                report.repair_errors.push(e.to_string());
            }
        }
        return Ok(ControlFlow::Continue(()));
    }
    let first = SegmentHeader::decode(&buf[..SEGMENT_HEADER_LEN]);
    let seg_header = match first {
        Ok(h) => h,
        Err(e1) => match SegmentHeader::decode(&buf[SEGMENT_HEADER_LEN..2 * SEGMENT_HEADER_LEN]) {
            Ok(h) => {
                report.header_copies_repaired.push(segment);
                h
            }
            Err(e2) => {
                let newer = [e1, e2].into_iter().find_map(|e| match e {
                    SegmentHeaderError::UnknownFormat(v) => Some(v),
                    _ => None,
                });
                let reason = match newer {
                    Some(v) => unknown_format_reason(v),
                    None => format!(
                        "both segment header copies are unreadable ({e1:?}, {e2:?}); \
                         move the file aside to start without its records"
                    ),
                };
                return Err(fatal(path, 0, reason));
            }
        },
    };
    if seg_header.shard != u16::from(shard) || seg_header.segment != segment {
        return Err(fatal(
            path,
            0,
            format!(
                "segment header names shard {} segment {}, but the file is shard {} segment {}",
                seg_header.shard, seg_header.segment, shard, segment
            ),
        ));
    }
    let salt = seg_header.salt;
    let mut off = SEGMENT_PREAMBLE_LEN as usize;
    while off < buf.len() {
        match examine(&buf, off, salt) {
            Step::Keep { header, record } => {
                let frame_len = header.frame_len();
                let body_at = off + header.body_offset() as usize;
                let location = Location {
                    shard,
                    segment,
                    offset: off as u64,
                    frame_len,
                    body_offset: body_at as u64,
                    body_len: u64::from(header.body_len),
                };
                report.records_kept += 1;
                report.bytes_kept += frame_len;
                resume.next_seq = resume.next_seq.max(header.seq.saturating_add(1));
                match &record {
                    Record::Message(meta) => {
                        if meta.id.shard() == shard {
                            resume.last_micros = resume.last_micros.max(meta.id.micros());
                        }
                    }
                    Record::Deletion(d) => {
                        report.deletion_records += 1;
                        report.deletion_pairs += d.ids.len() as u64;
                    }
                    Record::Delivery(d) => {
                        report.delivery_records += 1;
                        report.delivery_results += d.results.len() as u64;
                        report.dsn_markers += d.dsn_sent.len() as u64;
                    }
                    Record::State(s) => {
                        report.state_records += 1;
                        report.checkpoints += u64::from(s.is_checkpoint());
                    }
                }
                let meta_at = off + FRAME_HEADER_LEN;
                let flow = visit(Visit {
                    location,
                    header,
                    record,
                    meta: &buf[meta_at..meta_at + header.meta_len as usize],
                    body: &buf[body_at..body_at + header.body_len as usize],
                });
                if flow.is_break() {
                    return Ok(ControlFlow::Break(()));
                }
                off += frame_len as usize;
            }
            Step::Truncate { reason } => {
                let dropped = (buf.len() - off) as u64;
                tracing::warn!(
                    shard,
                    segment,
                    offset = off,
                    bytes = dropped,
                    %reason,
                    "spool: torn tail{}",
                    if writable { " truncated" } else { " (read-only, left alone)" }
                );
                report.torn_tails.push(TornTail {
                    segment,
                    offset: off as u64,
                    bytes_dropped: dropped,
                    reason,
                });
                if writable {
                    let cut = file
                        .truncate(off as u64)
                        .map_err(|e| SpoolError::io("truncate torn tail", &path, e))
                        .and_then(|()| {
                            file.sync_data()
                                .map_err(|e| SpoolError::io("sync truncated segment", &path, e))
                        });
                    if let Err(e) = cut {
                        tracing::warn!(error = %e, "spool: recovery repair failed");
                        report.repair_errors.push(e.to_string());
                    }
                }
                break;
            }
            Step::Skip {
                resume: next,
                reason,
            } => {
                tracing::warn!(shard, segment, offset = off, bytes = next - off as u64, %reason, "spool: corrupt frame skipped");
                report.corrupt_frames.push(CorruptFrame {
                    segment,
                    offset: off as u64,
                    bytes_skipped: next - off as u64,
                    reason,
                });
                off = next as usize;
            }
            Step::Fatal { reason } => return Err(fatal(path, off as u64, reason)),
        }
    }
    Ok(ControlFlow::Continue(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts_from_bits(bits: u32) -> FrameFacts {
        let b = |i: u32| bits & (1 << i) != 0;
        FrameFacts {
            magic_ok: b(0),
            header_crc_ok: b(1),
            version_known: b(2),
            kind_known: b(3),
            length_within_segment: b(4),
            data_crc_ok: b(5),
            payload_validates: b(6),
            later_valid_frame_exists: b(7),
        }
    }

    /// An independent statement of the table, phrased as the questions recovery asks.
    fn expected(f: FrameFacts) -> Decision {
        let header_trusted = f.magic_ok && f.header_crc_ok;
        if !header_trusted {
            return if f.later_valid_frame_exists {
                Decision::SkipCorrupt
            } else {
                Decision::TruncateTail
            };
        }
        if !(f.version_known && f.kind_known) {
            return Decision::Fatal;
        }
        let bytes_intact = f.length_within_segment && f.data_crc_ok;
        if !bytes_intact {
            return if f.later_valid_frame_exists {
                Decision::SkipCorrupt
            } else {
                Decision::TruncateTail
            };
        }
        if f.payload_validates {
            Decision::Keep
        } else {
            Decision::SkipCorrupt
        }
    }

    #[test]
    fn decision_table_every_combination() {
        let mut counts = std::collections::HashMap::new();
        for bits in 0..(1u32 << 8) {
            let f = facts_from_bits(bits);
            let d = decide(f);
            assert_eq!(d, expected(f), "facts {f:?}");
            // Invariants that matter more than any single row:
            if f.later_valid_frame_exists {
                assert_ne!(
                    d,
                    Decision::TruncateTail,
                    "never cut away a valid frame: {f:?}"
                );
            }
            assert_eq!(
                d == Decision::Keep,
                f.magic_ok
                    && f.header_crc_ok
                    && f.version_known
                    && f.kind_known
                    && f.length_within_segment
                    && f.data_crc_ok
                    && f.payload_validates,
                "{f:?}"
            );
            assert_eq!(
                d == Decision::Fatal,
                f.magic_ok && f.header_crc_ok && !(f.version_known && f.kind_known),
                "Fatal exactly for a trusted header of an unknown kind/version: {f:?}"
            );
            *counts.entry(d).or_insert(0) += 1;
        }
        // 256 rows: untrusted header 192 (96 + 96), trusted 64: Fatal 48, rest 16.
        assert_eq!(counts[&Decision::Keep], 2);
        assert_eq!(counts[&Decision::Fatal], 48);
        assert_eq!(counts[&Decision::TruncateTail], 96 + 6);
        assert_eq!(counts[&Decision::SkipCorrupt], 96 + 6 + 2);
    }

    #[test]
    fn resync_finds_only_aligned_salted_headers() {
        let salt = 99;
        let h = FrameHeader {
            version: 1,
            kind: 1,
            meta_len: 0,
            body_len: 0,
            seq: 1,
            data_crc: 0,
        };
        let mut buf = vec![0u8; 256];
        // An unsalted (forged) header at 32, an unaligned real one at 72, a real one at 128.
        buf[32..64].copy_from_slice(&h.encode(0));
        buf[72..104].copy_from_slice(&h.encode(salt));
        buf[128..160].copy_from_slice(&h.encode(salt));
        assert_eq!(next_valid_header(&buf, 0, salt), Some(128));
        assert_eq!(next_valid_header(&buf, 129, salt), None);
        assert_eq!(next_valid_header(&buf[..150], 0, salt), None);
    }
}
