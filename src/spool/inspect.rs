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
/// checksum (for POP3-style reads of one message without a scan). Three positioned reads:
/// the segment preamble, the frame's header and meta, the body; [`MessageHead::parse`] and
/// [`MessageHead::check_body`] are the same checks the shards' asynchronous read makes.
pub(crate) fn read_at(
    io: &dyn SegmentIo,
    location: &Location,
) -> Result<StoredMessage, SpoolError> {
    let path = io.segment_path(location.shard, location.segment);
    let file = io
        .open_segment(location.shard, location.segment, false)
        .map_err(|e| SpoolError::io("open segment", &path, e))?;
    let read = |what: &'static str, offset: u64, len: usize| {
        let mut buf = vec![0u8; len];
        let n = file
            .read_at(offset, &mut buf)
            .map_err(|e| SpoolError::io(what, &path, e))?;
        buf.truncate(n);
        Ok::<_, SpoolError>(buf)
    };
    let preamble = read("read segment header", 0, MessageHead::PREAMBLE_LEN)?;
    let head = read(
        "read frame",
        location.offset,
        MessageHead::head_len(&path, location)?,
    )?;
    let head = MessageHead::parse(&path, location, &preamble, &head)?;
    let body = read("read frame", head.body_offset, head.body_len)?;
    head.check_body(&path, location, &body, body.len())?;
    Ok(head.into_message(*location, body))
}

/// A message frame's header and meta, checked; what a read of its body needs (sans-IO: the
/// caller moves the bytes, synchronously or not).
#[derive(Debug)]
pub(crate) struct MessageHead {
    meta: super::MessageMeta,
    meta_crc: u32,
    data_crc: u32,
    /// File offset and length of the body.
    pub body_offset: u64,
    pub body_len: usize,
}

impl MessageHead {
    /// Bytes of the segment preamble (two copies of the segment header).
    pub const PREAMBLE_LEN: usize = 2 * SEGMENT_HEADER_LEN;

    fn bad(path: &Path, location: &Location, reason: String) -> SpoolError {
        SpoolError::Recovery {
            path: path.to_path_buf(),
            offset: location.offset,
            reason,
        }
    }

    /// Bytes of the frame before its body: header, meta and the meta's padding.
    pub fn head_len(path: &Path, location: &Location) -> Result<usize, SpoolError> {
        let bad = |reason: &str| Self::bad(path, location, reason.into());
        if location.frame_len < FRAME_HEADER_LEN as u64 || !location.offset.is_multiple_of(ALIGN) {
            return Err(bad("not a frame location"));
        }
        location
            .body_offset
            .checked_sub(location.offset)
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| n >= FRAME_HEADER_LEN && n as u64 <= location.frame_len)
            .ok_or_else(|| bad("not a frame location"))
    }

    /// Checks the segment preamble and the frame header read at `location` (`head`:
    /// [`MessageHead::head_len`] bytes from `location.offset`) and decodes the meta.
    pub fn parse(
        path: &Path,
        location: &Location,
        preamble: &[u8],
        head: &[u8],
    ) -> Result<MessageHead, SpoolError> {
        let bad = |reason: String| Self::bad(path, location, reason);
        if preamble.len() < Self::PREAMBLE_LEN {
            return Err(bad("segment shorter than its preamble".into()));
        }
        let seg = SegmentHeader::decode(&preamble[..SEGMENT_HEADER_LEN])
            .or_else(|_| SegmentHeader::decode(&preamble[SEGMENT_HEADER_LEN..Self::PREAMBLE_LEN]))
            .map_err(|e| bad(format!("unreadable segment header: {e:?}")))?;
        let want = Self::head_len(path, location)?;
        if head.len() < want {
            return Err(bad(format!(
                "frame cut short: {} of {want} bytes",
                head.len()
            )));
        }
        let check = FrameHeader::check(head, seg.salt);
        if !check.trusted() {
            return Err(bad("no valid frame header at this location".into()));
        }
        let h = check.header;
        if h.frame_len() != location.frame_len
            || h.body_offset() != want as u64
            || u64::from(h.body_len) != location.body_len
        {
            return Err(bad("frame length differs from the location".into()));
        }
        let kind = RecordKind::from_u16(h.kind)
            .filter(|k| k.version_known(h.version))
            .ok_or_else(|| {
                bad(format!(
                    "unknown record kind {} version {}",
                    h.kind, h.version
                ))
            })?;
        let meta_bytes = head[FRAME_HEADER_LEN..]
            .get(..h.meta_len as usize)
            .ok_or_else(|| bad("meta beyond the frame".into()))?;
        // rkyv reads the meta in place: 16-aligned, as the frame is on disk.
        let mut aligned = AlignedVec::<16>::new();
        aligned.extend_from_slice(meta_bytes);
        let Record::Message(meta) = decode_payload(kind, h.version, &aligned).map_err(bad)? else {
            return Err(bad("not a message record".into()));
        };
        let body_len = usize::try_from(h.body_len).map_err(|_| bad("body too large".into()))?;
        Ok(MessageHead {
            meta,
            meta_crc: crc32c::crc32c(meta_bytes),
            data_crc: h.data_crc,
            body_offset: location.body_offset,
            body_len,
        })
    }

    /// The body's checksum seed (the meta's CRC) and the frame's data checksum: the body is
    /// whole when `crc32c_append(seed, body) == data_crc`.
    pub fn crcs(&self) -> (u32, u32) {
        (self.meta_crc, self.data_crc)
    }

    /// Checks that `n` bytes were read and the data checksum, at once (the synchronous read;
    /// the asynchronous one checks in steps: [`MessageHead::check_read`], `check_crc`).
    pub fn check_body(
        &self,
        path: &Path,
        location: &Location,
        body: &[u8],
        n: usize,
    ) -> Result<(), SpoolError> {
        self.check_read(path, location, n)?;
        self.check_crc(path, location, crc32c::crc32c_append(self.meta_crc, body))
    }

    pub fn check_read(&self, path: &Path, location: &Location, n: usize) -> Result<(), SpoolError> {
        if n < self.body_len {
            return Err(Self::bad(
                path,
                location,
                format!("frame cut short: body {n} of {} bytes", self.body_len),
            ));
        }
        Ok(())
    }

    pub fn check_crc(&self, path: &Path, location: &Location, crc: u32) -> Result<(), SpoolError> {
        if crc != self.data_crc {
            return Err(Self::bad(path, location, "data checksum mismatch".into()));
        }
        Ok(())
    }

    pub fn into_message(self, location: Location, body: Vec<u8>) -> StoredMessage {
        StoredMessage {
            meta: self.meta,
            location,
            body,
        }
    }
}
