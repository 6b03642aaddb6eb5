//! Read-only views of a spool directory, for `relay spool list|cat` and for reading records
//! back by location.
//!
//! Works while the server runs: nothing is locked or modified; a torn tail (a batch being
//! written right now) is simply where the listing stops, and no file is truncated. A segment
//! that a running compaction unlinks between listing and reading is skipped (its live frames
//! are in a segment published before the unlink; one listed too late is missed by that one
//! listing), and a message found twice (old and new segment) is listed once.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::Path;

use rkyv::util::AlignedVec;

use super::frame::{
    decode_payload, FrameHeader, MailboxDeletion, Outcome, Record, RecordKind, SegmentHeader,
    ALIGN, FRAME_HEADER_LEN, SEGMENT_HEADER_LEN,
};
use super::index::DeliveryHistory;
use super::io::{FsIo, SegmentIo};
use super::recovery::{scan_shard, Mode};
use super::{Location, SpoolError, StoredMessage};
use crate::envelope::QueueId;

/// One line of `relay spool list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageSummary {
    pub id: QueueId,
    pub arrival_unix_micros: u64,
    /// Reverse-path; empty for the null sender.
    pub sender: String,
    pub recipients: Vec<String>,
    /// Stored body size (Received header + message).
    pub size: u64,
    pub location: Location,
    /// Local mailboxes it was delivered to, and those of them whose copy is deleted.
    pub mailboxes: Vec<String>,
    pub deleted: Vec<String>,
    /// Remote addresses (each once), and how many of them are still pending, delivered, or
    /// bounced (including expired), per the delivery results in the spool.
    pub remote: Vec<String>,
    pub remote_pending: usize,
    pub remote_delivered: usize,
    pub remote_bounced: usize,
}

fn open_root(dir: &Path) -> Result<FsIo, SpoolError> {
    if !dir.is_dir() {
        return Err(SpoolError::io(
            "open spool dir",
            dir,
            std::io::Error::from(std::io::ErrorKind::NotFound),
        ));
    }
    Ok(FsIo::new(dir))
}

/// Every message record in the spool at `dir`, ordered by queue id (garbage not yet
/// compacted included: see `deleted` and `remote_pending`).
pub fn list(dir: &Path) -> Result<Vec<MessageSummary>, SpoolError> {
    list_with_io(&open_root(dir)?)
}

pub(crate) fn list_with_io(io: &dyn SegmentIo) -> Result<Vec<MessageSummary>, SpoolError> {
    let shards = io
        .list_shards()
        .map_err(|e| SpoolError::io("list shards", io.root(), e))?;
    let mut out: BTreeMap<QueueId, MessageSummary> = BTreeMap::new();
    let mut deletions: Vec<MailboxDeletion> = Vec::new();
    let mut history = DeliveryHistory::default();
    for shard in shards {
        scan_shard(io, shard, Mode::ReadOnly, &mut |v| {
            match v.record {
                Record::Message(meta) => {
                    let mut remote: Vec<String> = Vec::with_capacity(meta.remote.len());
                    for r in meta.remote {
                        if !remote.contains(&r) {
                            remote.push(r);
                        }
                    }
                    out.entry(meta.id).or_insert_with(|| MessageSummary {
                        id: meta.id,
                        arrival_unix_micros: meta.arrival_unix_micros,
                        sender: meta.envelope.reverse_path,
                        recipients: meta
                            .envelope
                            .recipients
                            .into_iter()
                            .map(|r| r.address)
                            .collect(),
                        size: v.location.body_len,
                        location: v.location,
                        mailboxes: meta.mailboxes,
                        deleted: Vec::new(),
                        remote_pending: remote.len(),
                        remote,
                        remote_delivered: 0,
                        remote_bounced: 0,
                    });
                }
                Record::Deletion(d) => deletions.push(d),
                // A release is the user's deletion of the message, for this listing too.
                Record::State(s) => deletions.push(MailboxDeletion {
                    mailbox: s.user,
                    ids: s.released,
                }),
                Record::Delivery(d) => history.add(&d),
            }
            ControlFlow::Continue(())
        })?;
    }
    for d in deletions {
        for id in &d.ids {
            if let Some(m) = out.get_mut(id) {
                if m.mailboxes.contains(&d.mailbox) && !m.deleted.contains(&d.mailbox) {
                    m.deleted.push(d.mailbox.clone());
                }
            }
        }
    }
    for m in out.values_mut() {
        for r in &m.remote {
            match history.final_outcome(m.id, r) {
                None | Some(Outcome::Deferred) => {}
                Some(Outcome::Delivered) => m.remote_delivered += 1,
                Some(Outcome::Bounced | Outcome::Expired) => m.remote_bounced += 1,
            }
        }
        m.remote_pending = m.remote.len() - m.remote_delivered - m.remote_bounced;
    }
    Ok(out.into_values().collect())
}

/// One mailbox-state record as `relay spool` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateSummary {
    pub user: String,
    pub seq: u64,
    pub checkpoint: bool,
    pub ops: usize,
    pub released: Vec<QueueId>,
    pub location: Location,
}

impl std::fmt::Display for StateSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} seq {}{}: {} op(s), {} released; shard {} segment {} offset {}",
            self.user,
            self.seq,
            if self.checkpoint { " (checkpoint)" } else { "" },
            self.ops,
            self.released.len(),
            self.location.shard,
            self.location.segment,
            self.location.offset
        )
    }
}

/// Every mailbox-state record in the spool at `dir` (void ones and copies left by an
/// interrupted compaction included), ordered by `(user, seq)`.
pub fn list_states(dir: &Path) -> Result<Vec<StateSummary>, SpoolError> {
    list_states_with_io(&open_root(dir)?)
}

pub(crate) fn list_states_with_io(io: &dyn SegmentIo) -> Result<Vec<StateSummary>, SpoolError> {
    let shards = io
        .list_shards()
        .map_err(|e| SpoolError::io("list shards", io.root(), e))?;
    let mut out = Vec::new();
    for shard in shards {
        scan_shard(io, shard, Mode::ReadOnly, &mut |v| {
            if let Record::State(s) = v.record {
                out.push(StateSummary {
                    checkpoint: s.is_checkpoint(),
                    ops: s.ops.len(),
                    user: s.user,
                    seq: s.seq,
                    released: s.released,
                    location: v.location,
                });
            }
            ControlFlow::Continue(())
        })?;
    }
    out.sort_by(|a, b| {
        (&a.user, a.seq, a.location.segment).cmp(&(&b.user, b.seq, b.location.segment))
    });
    Ok(out)
}

/// The stored body of message `id`: its Received header followed by the message.
pub fn cat(dir: &Path, id: QueueId) -> Result<Vec<u8>, SpoolError> {
    Ok(find_with_io(&open_root(dir)?, id)?.body)
}

/// Finds a message by scanning the shard its id names.
pub(crate) fn find_with_io(io: &dyn SegmentIo, id: QueueId) -> Result<StoredMessage, SpoolError> {
    let shard = id.shard();
    if !io
        .list_shards()
        .map_err(|e| SpoolError::io("list shards", io.root(), e))?
        .contains(&shard)
    {
        return Err(SpoolError::NotFound(id));
    }
    let mut found = None;
    scan_shard(io, shard, Mode::ReadOnly, &mut |v| match v.record {
        Record::Message(meta) if meta.id == id => {
            found = Some(StoredMessage {
                meta,
                location: v.location,
                body: v.body.to_vec(),
            });
            ControlFlow::Break(())
        }
        _ => ControlFlow::Continue(()),
    })?;
    found.ok_or(SpoolError::NotFound(id))
}

/// Reads the record at `location`, verifying the segment header, the frame header and the data
/// checksum (for POP3-style reads of one message without a scan).
pub(crate) fn read_at(
    io: &dyn SegmentIo,
    location: &Location,
) -> Result<StoredMessage, SpoolError> {
    let path = io.segment_path(location.shard, location.segment);
    let file = io
        .open_segment(location.shard, location.segment, false)
        .map_err(|e| SpoolError::io("open segment", &path, e))?;
    let bad = |reason: String| SpoolError::Recovery {
        path: path.clone(),
        offset: location.offset,
        reason,
    };
    let mut preamble = [0u8; 2 * SEGMENT_HEADER_LEN];
    let n = file
        .read_at(0, &mut preamble)
        .map_err(|e| SpoolError::io("read segment header", &path, e))?;
    if n < preamble.len() {
        return Err(bad("segment shorter than its preamble".into()));
    }
    let seg = SegmentHeader::decode(&preamble[..SEGMENT_HEADER_LEN])
        .or_else(|_| SegmentHeader::decode(&preamble[SEGMENT_HEADER_LEN..]))
        .map_err(|e| bad(format!("unreadable segment header: {e:?}")))?;
    let len = usize::try_from(location.frame_len).map_err(|_| bad("frame too large".into()))?;
    if len < FRAME_HEADER_LEN || !location.offset.is_multiple_of(ALIGN) {
        return Err(bad("not a frame location".into()));
    }
    let mut frame = AlignedVec::<16>::new();
    frame.resize(len, 0);
    let n = file
        .read_at(location.offset, &mut frame)
        .map_err(|e| SpoolError::io("read frame", &path, e))?;
    if n < len {
        return Err(bad(format!("frame cut short: {n} of {len} bytes")));
    }
    let check = FrameHeader::check(&frame, seg.salt);
    if !check.trusted() {
        return Err(bad("no valid frame header at this location".into()));
    }
    let h = check.header;
    if h.frame_len() != location.frame_len {
        return Err(bad("frame length differs from the location".into()));
    }
    if !h.data_crc_matches(&frame) {
        return Err(bad("data checksum mismatch".into()));
    }
    let kind = RecordKind::from_u16(h.kind)
        .filter(|k| k.version_known(h.version))
        .ok_or_else(|| {
            bad(format!(
                "unknown record kind {} version {}",
                h.kind, h.version
            ))
        })?;
    let meta_bytes = &frame[FRAME_HEADER_LEN..][..h.meta_len as usize];
    let Record::Message(meta) = decode_payload(kind, h.version, meta_bytes).map_err(bad)? else {
        return Err(bad("not a message record".into()));
    };
    let body_at = h.body_offset() as usize;
    Ok(StoredMessage {
        meta,
        location: *location,
        body: frame[body_at..body_at + h.body_len as usize].to_vec(),
    })
}
