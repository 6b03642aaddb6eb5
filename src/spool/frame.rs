//! On-disk layout: the segment preamble, the frame header and the record kinds.
//!
//! ```text
//! segment file  = preamble (64 B) , frame* , [torn tail]
//! preamble      = segment header (32 B) written twice (a flipped bit in one copy does not
//!                 make the segment unreadable)
//! segment header= magic "RLYSPOOL" [8] | format u16 | shard u16 | salt u32 | segment u64
//!                 | reserved u32 | crc32c(previous 28 bytes) u32
//! frame         = header (32 B) | meta (rkyv, meta_len B) | pad to 16 | body (body_len B) | pad to 16
//! frame header  = magic "RLYF" [4] | version u16 | kind u16 | meta_len u32 | body_len u32
//!                 | seq u64 | data_crc u32 | header_crc u32
//! ```
//! All integers are little-endian. Every frame starts at a 16-aligned file offset, and segments
//! are read into 16-aligned buffers, so the rkyv payload is 16-aligned in memory as rkyv 0.8
//! requires (docs/ARCHITECTURE.md §5). `meta_len` is the exact payload length
//! because rkyv finds its root at the END of the slice.
//!
//! - `data_crc` = crc32c(meta ‖ body) (the padding is not covered: it carries nothing).
//! - `header_crc` = crc32c over the first 28 header bytes, seeded with the segment's random
//!   `salt`. The header crc is checked before any length is believed. The salt exists because
//!   bodies are attacker-controlled bytes stored at 16-aligned offsets: when recovery resyncs
//!   after a damaged header it scans for the next header at 16-byte steps, and without a secret
//!   in the checksum a peer could plant a well-formed "frame" inside a message body. The salt
//!   lives only in the segment preamble, which no peer can read.
//! - `seq` is the shard's record sequence number (strictly increasing, gaps allowed after a
//!   failed batch); recovery resumes after the highest one found.
//! - `version` is the layout version of that `kind`'s record. A reader that does not know a
//!   (kind, version) pair stops (Fatal) instead of skipping: an older binary must not silently
//!   drop records a newer one wrote — they may be deletions.
//!
//! The frame header's checksum is salted per segment, and every segment starts with a preamble
//! that carries the salt and names its shard and number (a file copied into the wrong directory
//! is refused instead of mis-indexed). The message meta also records `received_len`, where the
//! Received header ends inside the stored body.
//!
//! The body is raw bytes after the meta, not inside rkyv: it is never copied by serialisation,
//! it is written with writev straight from the session's buffers, and POP3 can later serve it
//! straight from the segment ([`Location::body_offset`](super::Location)).
//!
//! Record kinds (each with its own layout version). The meta of each is an rkyv archive of the
//! spool's own disk types in `record` (`MessageV1`, `DeletionV1`, `DeliveryV1`), converted
//! from and to the API types named here at encode and decode:
//! - 1 `Message` v3 (v1, v2 still read): [`MessageMeta`] (envelope, origin, local `mailboxes`,
//!   `remote` routes; v2 adds `placements`, parallel to `mailboxes`) + the stored body. Local
//!   delivery is part of this frame, so it can never be torn from it. v3 adds, after the v2
//!   fields, `summary: Option<bytes>`: the IMAP summary of the body (opaque here,
//!   `imap::structure::Summary`), written for messages with local mailboxes and read alone by
//!   [`Spool::read_summary`](super::Spool::read_summary).
//! - 2 `MailboxDeletion` v1: [`MailboxDeletion`] `{ mailbox, ids }`, no body: one POP3
//!   session's DELEs, written at QUIT.
//! - 3 `DeliveryResult` v1: [`DeliveryRecord`] `{ results, dsn_sent }`, no body: outcomes of
//!   outbound delivery attempts ([`DeliveryResult`]: delivered, deferred, bounced, expired, per
//!   remote recipient, with the reply) and "notice sent" markers ([`DsnSent`]), appended by the
//!   queue. Markers share the kind (not a kind of their own) so that a final result and the
//!   marker of its bounce can be made durable atomically, in one frame.
//! - 4 `MailboxState` v1: [`MailboxState`] `{ user, seq, ops, released }`, no body: one
//!   user's mail-store changes (docs/MAILSTORE.md), durable together or not at all.
//!
//! Compaction copies frames into another segment with meta and body bytes unchanged: only the
//! header is re-encoded (its checksum is salted per segment); `seq` and `data_crc` stay. The
//! meta's own crc32c (`crc32c(meta)`, kept in the live index) lets a reader verify a body it
//! read alone: `crc32c_append(meta_crc, body) == data_crc`.

use rkyv::rancor::BoxedError;
use rkyv::util::AlignedVec;

use crate::envelope::{Envelope, Origin, QueueId};

use super::record::{
    ArchivedDeletionV1, ArchivedDeliveryV1, ArchivedMailboxStateV1, ArchivedMessageV1,
    ArchivedMessageV2, ArchivedMessageV3, DeletionV1, DeliveryV1, MailboxStateV1, MessageV1,
    MessageV2, MessageV3,
};
use super::state::{MailboxState, Placement};
use super::SpoolError;

pub const SEGMENT_MAGIC: [u8; 8] = *b"RLYSPOOL";
/// The segment format this build writes.
pub const SEGMENT_FORMAT: u16 = 1;
/// The segment formats this build reads (named in the refusal of any other).
pub const SEGMENT_FORMATS_READ: &[u16] = &[SEGMENT_FORMAT];
pub const SEGMENT_HEADER_LEN: usize = 32;
/// Two copies of the segment header; the first frame starts here.
pub const SEGMENT_PREAMBLE_LEN: u64 = 2 * SEGMENT_HEADER_LEN as u64;

pub const FRAME_MAGIC: [u8; 4] = *b"RLYF";
pub const FRAME_HEADER_LEN: usize = 32;
/// Frame alignment in the file and in read buffers (the largest rkyv alignment we archive).
pub const ALIGN: u64 = 16;
/// Zeros for padding iovecs.
pub(crate) static ZERO_PAD: [u8; ALIGN as usize] = [0; ALIGN as usize];

/// The largest meta or body a frame can describe (`u32` length fields).
pub const MAX_PART_LEN: u64 = u32::MAX as u64;

pub const fn pad16(n: u64) -> u64 {
    (n + (ALIGN - 1)) & !(ALIGN - 1)
}

/// What a frame holds. Numbers are stored on disk: never reuse one. 0 is reserved so that a
/// zero-filled region never parses as a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum RecordKind {
    /// A message: [`MessageMeta`] + the stored body (Received header ‖ message).
    Message = 1,
    /// A POP3 session's deletions, applied at QUIT: [`MailboxDeletion`], no body.
    MailboxDeletion = 2,
    /// Outbound delivery results and DSN markers: [`DeliveryRecord`], no body.
    DeliveryResult = 3,
    /// One user's mail-store changes: [`MailboxState`], no body.
    MailboxState = 4,
    // Local delivery needs no record of its own: it is `MessageMeta::mailboxes`, in the
    // message's frame.
}

impl RecordKind {
    pub fn from_u16(v: u16) -> Option<RecordKind> {
        match v {
            1 => Some(RecordKind::Message),
            2 => Some(RecordKind::MailboxDeletion),
            3 => Some(RecordKind::DeliveryResult),
            4 => Some(RecordKind::MailboxState),
            _ => None,
        }
    }

    /// The layout version this build writes for the kind.
    pub const fn current_version(self) -> u16 {
        match self {
            RecordKind::Message => 3,
            RecordKind::MailboxDeletion => 1,
            RecordKind::DeliveryResult => 1,
            RecordKind::MailboxState => 1,
        }
    }

    /// The layout versions of the kind this build reads. Keep old versions readable forever.
    pub const fn versions_read(self) -> &'static [u16] {
        match self {
            RecordKind::Message => &[1, 2, 3],
            RecordKind::MailboxDeletion => &[1],
            RecordKind::DeliveryResult => &[1],
            RecordKind::MailboxState => &[1],
        }
    }

    /// Whether this build can read `version` of the kind.
    pub fn version_known(self, version: u16) -> bool {
        self.versions_read().contains(&version)
    }
}

/// What a [`RecordKind::Message`] frame holds besides the body (on disk inside
/// `record::MessageV3`, with the IMAP summary beside it; `MessageV2` for frames written before
/// summaries, `MessageV1` for frames written before placements).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageMeta {
    pub id: QueueId,
    pub arrival_unix_micros: u64,
    pub origin: Origin,
    pub envelope: Envelope,
    /// Length of the Received header at the start of the stored body; the message proper
    /// follows it.
    pub received_len: u64,
    /// Local mailboxes the message was delivered to when it was stored: the delivery is
    /// part of the same frame, so it is durable with the message and can never be torn
    /// from it.
    pub mailboxes: Vec<String>,
    /// Addresses to be delivered to other hosts: remote RCPTs and alias forwards. Each one
    /// stays pending until a [`DeliveryResult`] with a final [`Outcome`] names it.
    pub remote: Vec<String>,
    /// Parallel to `mailboxes`: where each local copy lands in its user's store
    /// (docs/MAILSTORE.md); `None` for a copy the store places itself. Empty: no placements
    /// at all (every v1 frame).
    pub placements: Vec<Option<Placement>>,
}

/// What a [`RecordKind::MailboxDeletion`] frame holds (on disk as `record::DeletionV1`): the messages a POP3 session
/// marked deleted in `mailbox`, made durable before its `+OK` to QUIT. Only that mailbox's copy
/// is deleted; the message itself becomes garbage when the liveness rule says so
/// (`spool::index`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxDeletion {
    pub mailbox: String,
    pub ids: Vec<QueueId>,
}

/// What one outbound delivery attempt did for one remote recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Outcome {
    /// The next hop accepted it (2xx): final.
    Delivered = 0,
    /// Failed temporarily (4xx, connection or timeout failure, local reason): retried at
    /// `next_attempt_unix_micros`. Not final.
    Deferred = 1,
    /// Failed for good (5xx, null MX, policy): final; a failure notice is due.
    Bounced = 2,
    /// `delivery.max_age` reached while still deferred: bounced by policy. Final.
    Expired = 3,
}

impl Outcome {
    /// Delivered, Bounced and Expired end a recipient's delivery; Deferred does not.
    pub const fn is_final(self) -> bool {
        !matches!(self, Outcome::Deferred)
    }
}

/// Longest [`DeliveryResult::reply`] stored, in bytes: longer replies are cut (at a character
/// boundary) by the append functions. 1 KiB holds a multi-line SMTP reply's useful part (RFC
/// 5321 §4.5.3.1.5: 512 octets per line) and keeps a result record small.
pub const REPLY_MAX_LEN: usize = 1024;

/// The result of one delivery attempt to one remote recipient of one message. Several results
/// of one recipient are ordered by `(attempt, at_unix_micros)` (then by the whole value, so
/// log order never matters): the latest Deferred says when to retry; any final outcome ends
/// the recipient whatever comes before or after it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeliveryResult {
    pub id: QueueId,
    /// One of the message's [`MessageMeta::remote`] addresses (a result naming another
    /// address changes nothing and is dropped by compaction).
    pub recipient: String,
    pub outcome: Outcome,
    /// The remote reply (code, enhanced code, text) or the local reason; at most
    /// [`REPLY_MAX_LEN`] bytes.
    pub reply: String,
    /// Which attempt this was, counting from 1.
    pub attempt: u32,
    pub at_unix_micros: u64,
    /// When to try again (for `Deferred`; `None` otherwise).
    pub next_attempt_unix_micros: Option<u64>,
}

impl DeliveryResult {
    /// The order of a recipient's results: `(attempt, at)`.
    pub fn order_key(&self) -> (u32, u64) {
        (self.attempt, self.at_unix_micros)
    }
}

/// Which delivery status notification (RFC 3464) a [`DsnSent`] marker records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum DsnKind {
    /// `Action: failed` (bounce).
    Failure = 0,
    /// `Action: delayed` (the delay warning).
    Delay = 1,
    /// `Action: delivered` / `relayed` (NOTIFY=SUCCESS).
    Success = 2,
}

/// Marker: the notice of `kind` about `recipient` of message `id` has been sent (queued as
/// message `notice_id`, when the queue allocated it first). The queue checks markers before
/// sending a notice, so each is sent at most once across restarts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DsnSent {
    pub id: QueueId,
    /// The recipient the notice reports on (remote or local address).
    pub recipient: String,
    pub kind: DsnKind,
    pub at_unix_micros: u64,
    /// The notice message's own queue id, for `relay queue show` and logs.
    pub notice_id: Option<QueueId>,
}

/// What a [`RecordKind::DeliveryResult`] frame holds (on disk as `record::DeliveryV1`): results and markers appended
/// together are durable together (one frame, one checksum).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryRecord {
    pub results: Vec<DeliveryResult>,
    pub dsn_sent: Vec<DsnSent>,
}

impl DeliveryRecord {
    pub fn is_empty(&self) -> bool {
        self.results.is_empty() && self.dsn_sent.is_empty()
    }

    /// Every queue id the record names (with repeats).
    pub fn ids(&self) -> impl Iterator<Item = QueueId> + '_ {
        self.results
            .iter()
            .map(|r| r.id)
            .chain(self.dsn_sent.iter().map(|d| d.id))
    }
}

/// Cuts `reply` to at most [`REPLY_MAX_LEN`] bytes at a character boundary.
pub fn bound_reply(reply: &mut String) {
    if reply.len() > REPLY_MAX_LEN {
        let mut end = REPLY_MAX_LEN;
        while !reply.is_char_boundary(end) {
            end -= 1;
        }
        reply.truncate(end);
    }
}

/// A record decoded from a validated frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Message(MessageMeta),
    Deletion(MailboxDeletion),
    Delivery(DeliveryRecord),
    State(MailboxState),
}

/// Validates (bytecheck) and deserializes a payload of a known kind and layout `version`
/// (one of `kind.versions_read()`; any other is an error).
pub fn decode_payload(kind: RecordKind, version: u16, meta: &[u8]) -> Result<Record, String> {
    if !kind.version_known(version) {
        return Err(format!(
            "{kind:?} version {version} is unknown to this build"
        ));
    }
    match kind {
        RecordKind::Message if version == 3 => {
            let archived =
                rkyv::access::<ArchivedMessageV3, BoxedError>(meta).map_err(|e| e.to_string())?;
            let meta = MessageMeta::try_from(archived).map_err(|e| e.to_string())?;
            Ok(Record::Message(meta))
        }
        RecordKind::Message if version == 2 => {
            let archived =
                rkyv::access::<ArchivedMessageV2, BoxedError>(meta).map_err(|e| e.to_string())?;
            let meta =
                rkyv::deserialize::<MessageV2, BoxedError>(archived).map_err(|e| e.to_string())?;
            Ok(Record::Message(meta.into()))
        }
        RecordKind::Message => {
            let archived =
                rkyv::access::<ArchivedMessageV1, BoxedError>(meta).map_err(|e| e.to_string())?;
            let meta =
                rkyv::deserialize::<MessageV1, BoxedError>(archived).map_err(|e| e.to_string())?;
            Ok(Record::Message(meta.into()))
        }
        RecordKind::MailboxDeletion => {
            let archived =
                rkyv::access::<ArchivedDeletionV1, BoxedError>(meta).map_err(|e| e.to_string())?;
            let deletion =
                rkyv::deserialize::<DeletionV1, BoxedError>(archived).map_err(|e| e.to_string())?;
            Ok(Record::Deletion(deletion.into()))
        }
        RecordKind::DeliveryResult => {
            let archived =
                rkyv::access::<ArchivedDeliveryV1, BoxedError>(meta).map_err(|e| e.to_string())?;
            let record =
                rkyv::deserialize::<DeliveryV1, BoxedError>(archived).map_err(|e| e.to_string())?;
            Ok(Record::Delivery(record.into()))
        }
        RecordKind::MailboxState => {
            let archived = rkyv::access::<ArchivedMailboxStateV1, BoxedError>(meta)
                .map_err(|e| e.to_string())?;
            let state = rkyv::deserialize::<MailboxStateV1, BoxedError>(archived)
                .map_err(|e| e.to_string())?;
            Ok(Record::State(state.into()))
        }
    }
}

fn crc_seeded(seed: u32, bytes: &[u8]) -> u32 {
    crc32c::crc32c_append(seed, bytes)
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// The identity of a segment file, written at its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub shard: u16,
    pub segment: u64,
    pub salt: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentHeaderError {
    Zero,
    BadMagic,
    BadChecksum,
    UnknownFormat(u16),
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut b = [0u8; SEGMENT_HEADER_LEN];
        b[0..8].copy_from_slice(&SEGMENT_MAGIC);
        b[8..10].copy_from_slice(&SEGMENT_FORMAT.to_le_bytes());
        b[10..12].copy_from_slice(&self.shard.to_le_bytes());
        b[12..16].copy_from_slice(&self.salt.to_le_bytes());
        b[16..24].copy_from_slice(&self.segment.to_le_bytes());
        // 24..28 reserved, zero.
        let crc = crc32c::crc32c(&b[..28]);
        b[28..32].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// `b` must hold at least [`SEGMENT_HEADER_LEN`] bytes.
    pub fn decode(b: &[u8]) -> Result<SegmentHeader, SegmentHeaderError> {
        let b = &b[..SEGMENT_HEADER_LEN];
        if b.iter().all(|&x| x == 0) {
            return Err(SegmentHeaderError::Zero);
        }
        if b[0..8] != SEGMENT_MAGIC {
            return Err(SegmentHeaderError::BadMagic);
        }
        if crc32c::crc32c(&b[..28]) != u32_at(b, 28) {
            return Err(SegmentHeaderError::BadChecksum);
        }
        let format = u16_at(b, 8);
        if !SEGMENT_FORMATS_READ.contains(&format) {
            return Err(SegmentHeaderError::UnknownFormat(format));
        }
        Ok(SegmentHeader {
            shard: u16_at(b, 10),
            salt: u32_at(b, 12),
            segment: u64_at(b, 16),
        })
    }
}

/// The fixed-size frame header (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub version: u16,
    pub kind: u16,
    pub meta_len: u32,
    pub body_len: u32,
    pub seq: u64,
    pub data_crc: u32,
}

/// What a 32-byte region says about itself. `header` is only meaningful when both flags hold.
#[derive(Debug, Clone, Copy)]
pub struct HeaderCheck {
    pub magic_ok: bool,
    pub crc_ok: bool,
    pub header: FrameHeader,
}

impl HeaderCheck {
    pub fn trusted(&self) -> bool {
        self.magic_ok && self.crc_ok
    }
}

impl FrameHeader {
    pub fn frame_len(&self) -> u64 {
        FRAME_HEADER_LEN as u64 + pad16(u64::from(self.meta_len)) + pad16(u64::from(self.body_len))
    }

    /// Offset of the body from the start of the frame.
    pub fn body_offset(&self) -> u64 {
        FRAME_HEADER_LEN as u64 + pad16(u64::from(self.meta_len))
    }

    pub fn encode(&self, salt: u32) -> [u8; FRAME_HEADER_LEN] {
        let mut b = [0u8; FRAME_HEADER_LEN];
        b[0..4].copy_from_slice(&FRAME_MAGIC);
        b[4..6].copy_from_slice(&self.version.to_le_bytes());
        b[6..8].copy_from_slice(&self.kind.to_le_bytes());
        b[8..12].copy_from_slice(&self.meta_len.to_le_bytes());
        b[12..16].copy_from_slice(&self.body_len.to_le_bytes());
        b[16..24].copy_from_slice(&self.seq.to_le_bytes());
        b[24..28].copy_from_slice(&self.data_crc.to_le_bytes());
        let crc = crc_seeded(salt, &b[..28]);
        b[28..32].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// `b` must hold at least [`FRAME_HEADER_LEN`] bytes.
    pub fn check(b: &[u8], salt: u32) -> HeaderCheck {
        let b = &b[..FRAME_HEADER_LEN];
        HeaderCheck {
            magic_ok: b[0..4] == FRAME_MAGIC,
            crc_ok: crc_seeded(salt, &b[..28]) == u32_at(b, 28),
            header: FrameHeader {
                version: u16_at(b, 4),
                kind: u16_at(b, 6),
                meta_len: u32_at(b, 8),
                body_len: u32_at(b, 12),
                seq: u64_at(b, 16),
                data_crc: u32_at(b, 24),
            },
        }
    }

    /// Recomputes the data checksum over the frame's meta and body (`frame` starts at the header
    /// and holds at least `frame_len` bytes).
    pub fn data_crc_matches(&self, frame: &[u8]) -> bool {
        let meta = &frame[FRAME_HEADER_LEN..FRAME_HEADER_LEN + self.meta_len as usize];
        let body_at = self.body_offset() as usize;
        let body = &frame[body_at..body_at + self.body_len as usize];
        crc32c::crc32c_append(crc32c::crc32c(meta), body) == self.data_crc
    }
}

/// One frame encoded into the writer's batch buffer: `head` is header ‖ meta ‖ meta padding;
/// the body parts and their padding are separate iovecs.
#[derive(Debug, Clone)]
pub(crate) struct EncodedFrame {
    pub head: std::ops::Range<usize>,
    pub header: FrameHeader,
    /// crc32c of the meta alone: with `header.data_crc` it lets a reader verify the body
    /// without reading the meta (`crc32c_append(meta_crc, body) == data_crc`).
    pub meta_crc: u32,
}

/// Appends header (checksum not yet final: the salt depends on the segment chosen later),
/// meta and meta padding of one message frame to `buf`, whose length must be 16-aligned.
/// Serialising straight into the batch buffer after the header keeps the payload
/// byte-identical to a standalone `to_bytes` (the start is 16-aligned) without a copy.
pub(crate) fn encode_message(
    buf: &mut AlignedVec<16>,
    meta: &MessageV3,
    body_parts: [&[u8]; 2],
    seq: u64,
) -> Result<EncodedFrame, SpoolError> {
    encode_with(buf, RecordKind::Message, body_parts, seq, |v| {
        rkyv::api::high::to_bytes_in::<_, BoxedError>(meta, v)
    })
}

/// Like [`encode_message`] for a deletion record (no body).
pub(crate) fn encode_deletion(
    buf: &mut AlignedVec<16>,
    deletion: &MailboxDeletion,
    seq: u64,
) -> Result<EncodedFrame, SpoolError> {
    encode_with(buf, RecordKind::MailboxDeletion, [&[], &[]], seq, |v| {
        rkyv::api::high::to_bytes_in::<_, BoxedError>(&DeletionV1::from(deletion), v)
    })
}

/// Like [`encode_message`] for a mailbox-state record (no body).
pub(crate) fn encode_state(
    buf: &mut AlignedVec<16>,
    state: &MailboxState,
    seq: u64,
) -> Result<EncodedFrame, SpoolError> {
    encode_with(buf, RecordKind::MailboxState, [&[], &[]], seq, |v| {
        rkyv::api::high::to_bytes_in::<_, BoxedError>(&MailboxStateV1::from(state), v)
    })
}

/// Like [`encode_message`] for a delivery record (no body).
pub(crate) fn encode_delivery(
    buf: &mut AlignedVec<16>,
    record: &DeliveryRecord,
    seq: u64,
) -> Result<EncodedFrame, SpoolError> {
    encode_with(buf, RecordKind::DeliveryResult, [&[], &[]], seq, |v| {
        rkyv::api::high::to_bytes_in::<_, BoxedError>(&DeliveryV1::from(record), v)
    })
}

fn encode_with(
    buf: &mut AlignedVec<16>,
    kind: RecordKind,
    body_parts: [&[u8]; 2],
    seq: u64,
    serialize: impl FnOnce(AlignedVec<16>) -> Result<AlignedVec<16>, BoxedError>,
) -> Result<EncodedFrame, SpoolError> {
    debug_assert_eq!(buf.len() as u64 % ALIGN, 0);
    let body_len = body_parts[0].len() as u64 + body_parts[1].len() as u64;
    if body_len > MAX_PART_LEN {
        return Err(SpoolError::TooLarge {
            len: body_len,
            max: MAX_PART_LEN,
        });
    }
    let start = buf.len();
    buf.extend_from_slice(&[0u8; FRAME_HEADER_LEN]);
    let taken = std::mem::replace(buf, AlignedVec::new());
    let mut grown = match serialize(taken) {
        Ok(v) => v,
        Err(e) => return Err(SpoolError::Codec(e.to_string())),
    };
    let meta_end = grown.len();
    let meta_len = (meta_end - start - FRAME_HEADER_LEN) as u64;
    if meta_len > MAX_PART_LEN {
        grown.resize(start, 0);
        *buf = grown;
        return Err(SpoolError::TooLarge {
            len: meta_len,
            max: MAX_PART_LEN,
        });
    }
    let padded = start + FRAME_HEADER_LEN + pad16(meta_len) as usize;
    grown.resize(padded, 0);
    let meta_bytes = &grown[start + FRAME_HEADER_LEN..meta_end];
    let meta_crc = crc32c::crc32c(meta_bytes);
    let mut crc = meta_crc;
    for part in body_parts {
        crc = crc32c::crc32c_append(crc, part);
    }
    let header = FrameHeader {
        version: kind.current_version(),
        kind: kind as u16,
        meta_len: meta_len as u32,
        body_len: body_len as u32,
        seq,
        data_crc: crc,
    };
    *buf = grown;
    Ok(EncodedFrame {
        head: start..padded,
        header,
        meta_crc,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::envelope::{MailParams, Recipient};

    pub(crate) fn sample_meta(n: u64) -> MessageMeta {
        MessageMeta {
            id: QueueId::new(1_764_000_000_000_000 + n, 3),
            arrival_unix_micros: 1_764_000_000_000_000 + n,
            origin: Origin {
                client_ip: "192.0.2.7".into(),
                client_port: 40000,
                helo: "client.example".into(),
                protocol: "ESMTP".into(),
            },
            envelope: Envelope {
                reverse_path: "alice@example.org".into(),
                params: MailParams::default(),
                recipients: vec![Recipient {
                    address: "bob@example.net".into(),
                    notify: None,
                    orcpt: None,
                }],
            },
            received_len: 5,
            mailboxes: vec!["bob".into()],
            remote: Vec::new(),
            placements: Vec::new(),
        }
    }

    #[test]
    fn segment_header_round_trips_and_detects_damage() {
        let h = SegmentHeader {
            shard: 7,
            segment: 42,
            salt: 0xdead_beef,
        };
        let b = h.encode();
        assert_eq!(SegmentHeader::decode(&b), Ok(h));
        let mut bad = b;
        bad[17] ^= 1;
        assert_eq!(
            SegmentHeader::decode(&bad),
            Err(SegmentHeaderError::BadChecksum)
        );
        assert_eq!(
            SegmentHeader::decode(&[0u8; 32]),
            Err(SegmentHeaderError::Zero)
        );
        let mut bad = b;
        bad[0] = b'X';
        assert_eq!(
            SegmentHeader::decode(&bad),
            Err(SegmentHeaderError::BadMagic)
        );
    }

    #[test]
    fn frame_header_checksum_depends_on_salt() {
        let h = FrameHeader {
            version: 1,
            kind: 1,
            meta_len: 100,
            body_len: 7,
            seq: 9,
            data_crc: 1234,
        };
        let b = h.encode(5);
        let ok = FrameHeader::check(&b, 5);
        assert!(ok.trusted());
        assert_eq!(ok.header, h);
        assert!(!FrameHeader::check(&b, 6).crc_ok, "another segment's salt");
        assert_eq!(h.frame_len(), 32 + 112 + 16);
        assert_eq!(h.body_offset(), 32 + 112);
    }

    #[test]
    fn encoded_message_meta_is_aligned_exact_and_decodes() {
        let mut buf = AlignedVec::<16>::new();
        buf.extend_from_slice(&[0u8; 64]);
        let meta = sample_meta(1);
        let record = MessageV3::new(meta.clone(), Some(b"summary".to_vec()));
        let f = encode_message(&mut buf, &record, [b"Recv:", b"hello"], 77).unwrap();
        assert_eq!(f.head.start, 64);
        assert_eq!(buf.len() % 16, 0);
        assert_eq!(f.head.end, buf.len());
        let m = &buf[64 + 32..64 + 32 + f.header.meta_len as usize];
        assert_eq!(m.as_ptr() as usize % 16, 0);
        assert_eq!(
            decode_payload(
                RecordKind::Message,
                RecordKind::Message.current_version(),
                m
            ),
            Ok(Record::Message(meta.clone()))
        );
        // Byte-identical to a standalone serialisation.
        let alone = rkyv::to_bytes::<BoxedError>(&record).unwrap();
        assert_eq!(&alone[..], m);
        assert_eq!(f.header.body_len, 10);
        assert_eq!(f.header.seq, 77);
        assert_eq!(f.meta_crc, crc32c::crc32c(m));
        assert_eq!(
            crc32c::crc32c_append(f.meta_crc, b"Recv:hello"),
            f.header.data_crc
        );
    }

    #[test]
    fn encoded_deletion_round_trips() {
        let mut buf = AlignedVec::<16>::new();
        let d = MailboxDeletion {
            mailbox: "alice".into(),
            ids: vec![QueueId::new(5, 1), QueueId::new(6, 0)],
        };
        let f = encode_deletion(&mut buf, &d, 3).unwrap();
        assert_eq!(f.header.kind, RecordKind::MailboxDeletion as u16);
        assert_eq!((f.header.version, f.header.body_len), (1, 0));
        assert_eq!(buf.len() % 16, 0);
        let m = &buf[32..32 + f.header.meta_len as usize];
        assert_eq!(
            decode_payload(
                RecordKind::MailboxDeletion,
                RecordKind::MailboxDeletion.current_version(),
                m
            ),
            Ok(Record::Deletion(d))
        );
        assert_eq!(f.header.data_crc, crc32c::crc32c(m));
        // A message payload is not a deletion and vice versa.
        assert!(decode_payload(
            RecordKind::Message,
            RecordKind::Message.current_version(),
            m
        )
        .is_err());
    }

    pub(crate) fn sample_delivery() -> DeliveryRecord {
        DeliveryRecord {
            results: vec![
                DeliveryResult {
                    id: QueueId::new(5, 1),
                    recipient: "far@example.com".into(),
                    outcome: Outcome::Deferred,
                    reply: "451 4.3.0 try later".into(),
                    attempt: 1,
                    at_unix_micros: 1_000,
                    next_attempt_unix_micros: Some(61_000_000),
                },
                DeliveryResult {
                    id: QueueId::new(6, 0),
                    recipient: "x@example.net".into(),
                    outcome: Outcome::Expired,
                    reply: String::new(),
                    attempt: 9,
                    at_unix_micros: u64::MAX,
                    next_attempt_unix_micros: None,
                },
            ],
            dsn_sent: vec![DsnSent {
                id: QueueId::new(6, 0),
                recipient: "x@example.net".into(),
                kind: DsnKind::Failure,
                at_unix_micros: 7,
                notice_id: Some(QueueId::new(8, 0)),
            }],
        }
    }

    #[test]
    fn encoded_delivery_round_trips() {
        let mut buf = AlignedVec::<16>::new();
        let d = sample_delivery();
        let f = encode_delivery(&mut buf, &d, 4).unwrap();
        assert_eq!(f.header.kind, RecordKind::DeliveryResult as u16);
        assert_eq!(
            (f.header.version, f.header.body_len, f.header.seq),
            (1, 0, 4)
        );
        let m = &buf[32..32 + f.header.meta_len as usize];
        assert_eq!(
            decode_payload(
                RecordKind::DeliveryResult,
                RecordKind::DeliveryResult.current_version(),
                m
            ),
            Ok(Record::Delivery(d.clone()))
        );
        // (The kind comes from the checksummed header; a payload may happen to validate as
        // another kind's layout, so nothing relies on it failing.)
        assert!(decode_payload(
            RecordKind::Message,
            RecordKind::Message.current_version(),
            m
        )
        .is_err());
        assert_eq!(d.ids().count(), 3);
        // An empty record is a valid record too.
        let mut buf = AlignedVec::<16>::new();
        let f = encode_delivery(&mut buf, &DeliveryRecord::default(), 5).unwrap();
        let m = &buf[32..32 + f.header.meta_len as usize];
        assert_eq!(
            decode_payload(
                RecordKind::DeliveryResult,
                RecordKind::DeliveryResult.current_version(),
                m
            ),
            Ok(Record::Delivery(DeliveryRecord::default()))
        );
    }

    #[test]
    fn encoded_state_round_trips_and_versions_are_checked() {
        let mut buf = AlignedVec::<16>::new();
        let s = crate::spool::record::tests::sample_state(9);
        let f = encode_state(&mut buf, &s, 6).unwrap();
        assert_eq!(f.header.kind, RecordKind::MailboxState as u16);
        assert_eq!(
            (f.header.version, f.header.body_len, f.header.seq),
            (1, 0, 6)
        );
        assert_eq!(buf.len() % 16, 0);
        let m = &buf[32..32 + f.header.meta_len as usize];
        assert_eq!(
            decode_payload(RecordKind::MailboxState, 1, m),
            Ok(Record::State(s))
        );
        assert!(decode_payload(RecordKind::MailboxState, 2, m).is_err());
        // A v2 message payload read as v1 does not pass for a v1 message with placements
        // lost: the layouts differ, and the version comes from the checksummed header.
        let mut meta = sample_meta(3);
        meta.placements = vec![Some(crate::spool::record::tests::sample_placement(5))];
        let v2 = rkyv::to_bytes::<BoxedError>(&MessageV2::from(meta.clone())).unwrap();
        assert_eq!(
            decode_payload(RecordKind::Message, 2, &v2),
            Ok(Record::Message(meta.clone()))
        );
        assert_ne!(
            decode_payload(RecordKind::Message, 1, &v2),
            Ok(Record::Message(meta.clone()))
        );
        // Likewise v3 and v2: a summary moves the root, and each layout reads only its own.
        let v3 = MessageV3::new(meta.clone(), Some(vec![7; 40]));
        let v3 = rkyv::to_bytes::<BoxedError>(&v3).unwrap();
        assert_eq!(
            decode_payload(RecordKind::Message, 3, &v3),
            Ok(Record::Message(meta.clone()))
        );
        assert_ne!(
            decode_payload(RecordKind::Message, 2, &v3),
            Ok(Record::Message(meta.clone()))
        );
        assert_ne!(
            decode_payload(RecordKind::Message, 3, &v2),
            Ok(Record::Message(meta))
        );
    }

    #[test]
    fn outcomes_and_reply_bound() {
        assert!(Outcome::Delivered.is_final());
        assert!(Outcome::Bounced.is_final());
        assert!(Outcome::Expired.is_final());
        assert!(!Outcome::Deferred.is_final());
        let mut short = "250 2.0.0 ok".to_string();
        bound_reply(&mut short);
        assert_eq!(short, "250 2.0.0 ok");
        // A multi-byte character straddling the limit is cut before it.
        let mut long = "x".repeat(REPLY_MAX_LEN - 1) + "é" + "tail";
        bound_reply(&mut long);
        assert_eq!(long.len(), REPLY_MAX_LEN - 1);
        let mut exact = "y".repeat(REPLY_MAX_LEN + 10);
        bound_reply(&mut exact);
        assert_eq!(exact.len(), REPLY_MAX_LEN);
    }

    #[test]
    fn kinds_and_versions_are_stable() {
        assert_eq!(RecordKind::from_u16(1), Some(RecordKind::Message));
        assert_eq!(RecordKind::from_u16(2), Some(RecordKind::MailboxDeletion));
        assert_eq!(RecordKind::from_u16(3), Some(RecordKind::DeliveryResult));
        assert_eq!(RecordKind::from_u16(4), Some(RecordKind::MailboxState));
        for unknown in [0u16, 5, 99, u16::MAX] {
            assert_eq!(RecordKind::from_u16(unknown), None);
        }
        for k in [
            RecordKind::Message,
            RecordKind::MailboxDeletion,
            RecordKind::DeliveryResult,
            RecordKind::MailboxState,
        ] {
            assert!(k.version_known(k.current_version()));
            assert!(!k.version_known(k.current_version() + 1));
            assert!(!k.version_known(0));
        }
        // Messages are written as v3; v1 (before placements) and v2 (before summaries) frames
        // stay readable.
        assert_eq!(RecordKind::Message.current_version(), 3);
        assert!(RecordKind::Message.version_known(1));
        assert!(RecordKind::Message.version_known(2));
    }

    #[test]
    fn payload_validation_reports_real_messages() {
        let meta = sample_meta(2);
        let bytes = rkyv::to_bytes::<BoxedError>(&MessageV2::from(meta)).unwrap();
        // Trailing padding moves the root: validation must fail, with a message.
        let mut padded = AlignedVec::<16>::new();
        padded.extend_from_slice(&bytes);
        padded.extend_from_slice(&[0xff; 16]);
        let err = decode_payload(
            RecordKind::Message,
            RecordKind::Message.current_version(),
            &padded,
        )
        .unwrap_err();
        assert!(
            !err.is_empty() && !err.contains("without error information"),
            "{err}"
        );
    }
}
