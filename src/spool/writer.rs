//! The shard writer: group commit on a plain thread.
//!
//! [`ShardWriter::commit`] is the synchronous core (deterministic, driven directly by the
//! simulation); [`run`] is the thread loop that feeds it batches from the shard's bounded
//! channel and answers the oneshots.
//!
//! Group commit: take the first request (blocking), drain whatever else is queued up to
//! `commit_records_max`, optionally wait up to `commit_window` for more, then one vectored
//! write and one fdatasync per segment touched (normally one), then reply. With a zero window a
//! lone message is synced at once, and under load the batch grows by itself: everything that
//! arrived during the previous fdatasync is in the next batch. Messages and deletion records
//! share the queue and the batches, and so do delivery records.
//!
//! After a chunk is durable, and before any reply goes out, the writer updates the live index
//! (new messages located, deletions and delivery results applied): whoever is told "stored"
//! can locate it at once, and a message made garbage by a record is garbage for compaction.
//!
//! Segment numbers come from the shard's shared counter (compaction takes numbers from it
//! too). Before creating segment `n` the writer publishes `n` as its floor: compaction treats a
//! segment as sealed only below the floor, so it never touches the file being appended to.

use std::io::IoSlice;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, RecvTimeoutError, TryRecvError};
use rkyv::util::AlignedVec;
use tokio::sync::oneshot;

use super::frame::{
    encode_deletion, encode_delivery, encode_message, encode_state, pad16, DeliveryRecord,
    EncodedFrame, MailboxDeletion, SegmentHeader, FRAME_HEADER_LEN, SEGMENT_PREAMBLE_LEN, ZERO_PAD,
};
use super::index::{IndexEntry, Ref, StateRef};
use super::io::SegmentFile;
use super::queue_view::NewEntry;
use super::record::MessageV3;
use super::state::MailboxState;
use super::{Committed, Core, Location, ShardShared, SpoolError};

/// Watches the writer's group commits (the metrics module's fsync latency and batch size
/// histograms). Optional: a spool without one (its own tests, `relay spool compact`) works the
/// same. Called on the writer thread once per fdatasync and once per batch, never per record.
pub trait CommitObserver: Send + Sync {
    /// One fdatasync of a group commit took `took`.
    fn synced(&self, took: Duration);
    /// One group commit carried `records` records (stored or failed).
    fn committed(&self, records: usize);
}

/// A message as the writer needs it: the meta to serialise, already in its disk form (moved
/// there by the caller, so the writer thread copies nothing), and the two body parts, written
/// straight from these buffers.
#[derive(Debug, Clone)]
pub(crate) struct PendingMessage {
    pub meta: MessageV3,
    pub received: Vec<u8>,
    pub body: Vec<u8>,
}

/// One record to append. Moved by value through the preallocated channel like `Msg`: boxing
/// the message variant would cost an allocation per message to shrink rare deletions.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub(crate) enum Pending {
    Message(PendingMessage),
    Deletion(MailboxDeletion),
    Delivery(DeliveryRecord),
    State(MailboxState),
}

impl Pending {
    fn body_parts(&self) -> [&[u8]; 2] {
        match self {
            Pending::Message(m) => [&m.received, &m.body],
            Pending::Deletion(_) | Pending::Delivery(_) | Pending::State(_) => [&[], &[]],
        }
    }
}

/// Who waits for a request's commit, and for which answer.
pub(crate) enum Waiter {
    Message(oneshot::Sender<Result<Committed, SpoolError>>),
    Deletion(oneshot::Sender<Result<(), SpoolError>>),
    Delivery(oneshot::Sender<Result<(), SpoolError>>),
    State(oneshot::Sender<Result<(), SpoolError>>),
}

pub(crate) struct Request {
    pub pending: Pending,
    pub reply: Waiter,
}

// Requests move by value through the preallocated array channel (≈ 1 MB per shard at 4096);
// boxing them would cost an allocation per message to shrink a variant sent once.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Msg {
    Append(Request),
    Shutdown,
}

struct ActiveSegment {
    number: u64,
    salt: u32,
    file: Box<dyn SegmentFile>,
    path: PathBuf,
    /// End of the last synced (committed) frame: everything before it is acknowledged.
    tail: u64,
}

pub(crate) struct ShardWriter {
    shard: u8,
    core: Arc<Core>,
    current: Option<ActiveSegment>,
    next_seq: u64,
    /// Headers and metas of the batch being built; reused so steady state allocates nothing.
    heads: AlignedVec<16>,
    /// How long each fdatasync of the last `commit` took (for a [`CommitObserver`]).
    syncs: Vec<Duration>,
}

impl ShardWriter {
    /// The writer of `shard`, which must be one of `core`'s writable shards. It never appends
    /// to a segment written by an earlier run: its tail state is whatever the crash left, and a
    /// fresh file makes "one writer per file" trivially true.
    pub fn new(shard: u8, core: Arc<Core>, next_seq: u64) -> ShardWriter {
        ShardWriter {
            shard,
            core,
            current: None,
            next_seq,
            heads: AlignedVec::new(),
            syncs: Vec::new(),
        }
    }

    /// Creates the next segment durably: preamble written and synced, directory synced.
    fn open_segment(&mut self) -> Result<(), SpoolError> {
        let io = Arc::clone(&self.core.io);
        let fsync = self.core.fsync;
        let segments = &self.core.shards[usize::from(self.shard)];
        // Take the number first: a half-created file must not block the next attempt (create is
        // O_EXCL). Publish it as the floor before the file exists (see the module doc).
        let number = segments.next_segment.fetch_add(1, Ordering::SeqCst);
        segments.writer_floor.store(number, Ordering::SeqCst);
        let path = io.segment_path(self.shard, number);
        let mut file = io
            .create_segment(self.shard, number)
            .map_err(|e| SpoolError::io("create segment", &path, e))?;
        let salt = io.new_salt();
        let header = SegmentHeader {
            shard: u16::from(self.shard),
            segment: number,
            salt,
        }
        .encode();
        let result = file
            .write_all_at(0, &[IoSlice::new(&header), IoSlice::new(&header)])
            .map_err(|e| SpoolError::io("write segment header", &path, e))
            .and_then(|()| {
                if fsync {
                    file.sync_data()
                        .map_err(|e| SpoolError::io("sync segment header", &path, e))?;
                    io.sync_shard_dir(self.shard)
                        .map_err(|e| SpoolError::io("sync dir", io.shard_path(self.shard), e))?;
                }
                Ok(())
            });
        if let Err(e) = result {
            drop(file);
            // Best effort: recovery removes preamble-only leftovers anyway.
            let _ = io.remove_segment(self.shard, number);
            return Err(e);
        }
        tracing::debug!(shard = self.shard, segment = number, "spool: new segment");
        self.current = Some(ActiveSegment {
            number,
            salt,
            file,
            path,
            tail: SEGMENT_PREAMBLE_LEN,
        });
        Ok(())
    }

    /// After a failed write or fdatasync the page cache state of the file is unknown
    /// ("fsyncgate": the kernel may have dropped the dirty pages and cleared the error, so a
    /// later fsync can succeed without our bytes). Cut back to the last committed offset so a
    /// restart does not meet half a batch, and never write to this file again.
    fn abandon_segment(&mut self) {
        if let Some(mut seg) = self.current.take() {
            if let Err(e) = seg.file.truncate(seg.tail) {
                tracing::warn!(path = %seg.path.display(), error = %e, "spool: truncate after failure failed; recovery will cut the tail");
            } else if self.core.fsync {
                let _ = seg.file.sync_data();
            }
            tracing::warn!(path = %seg.path.display(), tail = seg.tail, "spool: segment abandoned after an IO error; continuing in a new segment");
        }
    }

    /// Writes and syncs a batch. Returns one result per record, in order: `Ok` only for
    /// records whose frame is covered by a successful fdatasync (and is then in the index).
    pub fn commit(&mut self, batch: &[Pending]) -> Vec<Result<Location, SpoolError>> {
        let mut results: Vec<Option<Result<Location, SpoolError>>> = vec![None; batch.len()];
        self.syncs.clear();
        // 1. Encode headers + metas into the reused buffer.
        self.heads.clear();
        let mut frames: Vec<(usize, EncodedFrame)> = Vec::with_capacity(batch.len());
        for (i, p) in batch.iter().enumerate() {
            let encoded = match p {
                Pending::Message(m) => encode_message(
                    &mut self.heads,
                    &m.meta,
                    [&m.received, &m.body],
                    self.next_seq,
                ),
                Pending::Deletion(d) => encode_deletion(&mut self.heads, d, self.next_seq),
                Pending::Delivery(d) => encode_delivery(&mut self.heads, d, self.next_seq),
                Pending::State(s) => encode_state(&mut self.heads, s, self.next_seq),
            };
            match encoded {
                Ok(f) => {
                    self.next_seq = self.next_seq.saturating_add(1);
                    frames.push((i, f));
                }
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        // 2. Place frames greedily into segments, one write + one sync per segment chunk.
        let mut next = 0;
        while next < frames.len() {
            if self.current.is_none() {
                if let Err(e) = self.open_segment() {
                    tracing::error!(shard = self.shard, error = %e, "spool: cannot open a segment");
                    for (i, _) in &frames[next..] {
                        results[*i] = Some(Err(e.clone()));
                    }
                    break;
                }
            }
            let Some(seg) = self.current.as_mut() else {
                break;
            };
            let fresh = seg.tail == SEGMENT_PREAMBLE_LEN;
            let room = self.core.segment_size.saturating_sub(seg.tail);
            let mut end = next;
            let mut bytes = 0u64;
            while end < frames.len() {
                let len = frames[end].1.header.frame_len();
                // A frame larger than a whole segment goes alone into a fresh one.
                if bytes + len <= room || (fresh && end == next) {
                    bytes += len;
                    end += 1;
                } else {
                    break;
                }
            }
            if end == next {
                // Nothing fits: roll over. The old file is complete and synced.
                self.current = None;
                continue;
            }
            match write_chunk(
                seg,
                &mut self.heads,
                batch,
                &frames[next..end],
                self.core.fsync,
                &mut self.syncs,
            ) {
                Ok(()) => {
                    let mut offset = seg.tail;
                    for (i, f) in &frames[next..end] {
                        let frame_len = f.header.frame_len();
                        let location = Location {
                            shard: self.shard,
                            segment: seg.number,
                            offset,
                            frame_len,
                            body_offset: offset + f.header.body_offset(),
                            body_len: u64::from(f.header.body_len),
                        };
                        // Durable: index it before anyone is told.
                        match &batch[*i] {
                            Pending::Message(m) => {
                                // Only for a queue view being built or ready (rare): the
                                // placements in API form.
                                let placements: Vec<_> = if m.meta.remote.is_empty() {
                                    Vec::new()
                                } else {
                                    m.meta
                                        .placements
                                        .iter()
                                        .map(|p| p.clone().map(Into::into))
                                        .collect()
                                };
                                self.core.index.insert(
                                    m.meta.id.into(),
                                    IndexEntry::new(
                                        location,
                                        f.header.data_crc,
                                        f.meta_crc,
                                        &m.meta.mailboxes,
                                        &m.meta.remote,
                                    ),
                                );
                                self.core.view.message(NewEntry {
                                    id: m.meta.id.into(),
                                    arrival_unix_micros: m.meta.arrival_unix_micros,
                                    sender: &m.meta.envelope.reverse_path,
                                    recipients: m.meta.envelope.recipients.len(),
                                    mailboxes: &m.meta.mailboxes,
                                    remote: &m.meta.remote,
                                    placements: &placements,
                                    location,
                                });
                            }
                            Pending::Deletion(d) => {
                                self.core.index.apply_deletion(&d.mailbox, &d.ids);
                                self.core.view.deletion(&d.ids, &self.core.index);
                                self.core.record_refs.add(
                                    self.shard,
                                    seg.number,
                                    frame_len,
                                    Ref::deletions(&d.ids),
                                );
                            }
                            Pending::Delivery(d) => {
                                self.core.index.apply_delivery(d);
                                self.core.view.delivery(d, &self.core.index);
                                self.core.record_refs.add(
                                    self.shard,
                                    seg.number,
                                    frame_len,
                                    Ref::delivery(d),
                                );
                            }
                            Pending::State(s) => {
                                if s.is_checkpoint() {
                                    self.core.index.note_checkpoint(&s.user, s.seq);
                                }
                                self.core.index.apply_deletion(&s.user, &s.released);
                                self.core.view.deletion(&s.released, &self.core.index);
                                let state = StateRef::new(s, f.header.data_crc, location);
                                self.core.index.state_found(state.key(), location);
                                self.core
                                    .record_refs
                                    .add_state(self.shard, seg.number, state);
                            }
                        }
                        results[*i] = Some(Ok(location));
                        offset += frame_len;
                    }
                    seg.tail = offset;
                    next = end;
                }
                Err(e) => {
                    tracing::error!(shard = self.shard, error = %e, "spool: group commit failed");
                    self.abandon_segment();
                    // The rest of the batch fails too: the caller answers 452 and the client
                    // retries; nothing acknowledged earlier is touched.
                    for (i, _) in &frames[next..] {
                        results[*i] = Some(Err(e.clone()));
                    }
                    break;
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or(Err(SpoolError::Closed)))
            .collect()
    }
}

/// One vectored write of `frames` at the segment tail, then fdatasync (its duration is pushed
/// to `syncs`).
fn write_chunk(
    seg: &mut ActiveSegment,
    heads: &mut AlignedVec<16>,
    batch: &[Pending],
    frames: &[(usize, EncodedFrame)],
    fsync: bool,
    syncs: &mut Vec<Duration>,
) -> Result<(), SpoolError> {
    // The header checksum is salted per segment, known only now.
    for (_, f) in frames {
        let h = f.header.encode(seg.salt);
        heads[f.head.start..f.head.start + FRAME_HEADER_LEN].copy_from_slice(&h);
    }
    let mut iov: Vec<IoSlice<'_>> = Vec::with_capacity(frames.len() * 4);
    for (i, f) in frames {
        iov.push(IoSlice::new(&heads[f.head.clone()]));
        for part in batch[*i].body_parts() {
            if !part.is_empty() {
                iov.push(IoSlice::new(part));
            }
        }
        let body_len = u64::from(f.header.body_len);
        let pad = (pad16(body_len) - body_len) as usize;
        if pad > 0 {
            iov.push(IoSlice::new(&ZERO_PAD[..pad]));
        }
    }
    seg.file
        .write_all_at(seg.tail, &iov)
        .map_err(|e| SpoolError::io("write", &seg.path, e))?;
    if fsync {
        let started = Instant::now();
        seg.file
            .sync_data()
            .map_err(|e| SpoolError::io("fdatasync", &seg.path, e))?;
        syncs.push(started.elapsed());
    }
    Ok(())
}

/// Limits of the thread loop.
pub(crate) struct LoopConfig {
    pub commit_window: Duration,
    pub commit_records_max: usize,
}

/// The writer thread: batches, commits, replies. Returns when shut down.
pub(crate) fn run(
    mut writer: ShardWriter,
    rx: Receiver<Msg>,
    shared: Arc<ShardShared>,
    cfg: LoopConfig,
) {
    let max = cfg.commit_records_max.max(1);
    let mut batch: Vec<Request> = Vec::with_capacity(max);
    let mut shutting_down = false;
    loop {
        if !shutting_down {
            match rx.recv() {
                Ok(Msg::Append(r)) => batch.push(r),
                Ok(Msg::Shutdown) | Err(_) => shutting_down = true,
            }
        }
        while batch.len() < max {
            match rx.try_recv() {
                Ok(Msg::Append(r)) => batch.push(r),
                Ok(Msg::Shutdown) => shutting_down = true,
                Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => break,
            }
        }
        if !shutting_down && !cfg.commit_window.is_zero() && batch.len() < max {
            let deadline = Instant::now() + cfg.commit_window;
            while batch.len() < max {
                match rx.recv_deadline(deadline) {
                    Ok(Msg::Append(r)) => batch.push(r),
                    Ok(Msg::Shutdown) => {
                        shutting_down = true;
                        break;
                    }
                    Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => break,
                }
            }
        }
        if !batch.is_empty() {
            commit_and_reply(&mut writer, &mut batch, &shared);
            continue;
        }
        if shutting_down {
            // Appends that passed the `closed` check before close() set it are either queued
            // (drained above) or about to be: wait for them, so no oneshot is left hanging.
            if shared.in_flight.load(Ordering::SeqCst) == 0 && rx.is_empty() {
                break;
            }
            std::thread::yield_now();
        }
    }
    tracing::debug!(shard = writer.shard, "spool: writer stopped");
}

fn commit_and_reply(writer: &mut ShardWriter, batch: &mut Vec<Request>, shared: &ShardShared) {
    let (pendings, replies): (Vec<Pending>, Vec<_>) =
        batch.drain(..).map(|r| (r.pending, r.reply)).unzip();
    let results = writer.commit(&pendings);
    if let Some(observer) = shared.observer.get() {
        observer.committed(pendings.len());
        for took in &writer.syncs {
            observer.synced(*took);
        }
    }
    let (mut ok, mut bytes) = (0u64, 0u64);
    for r in results.iter().flatten() {
        ok += 1;
        bytes += r.frame_len;
    }
    if ok > 0 {
        shared.commits.fetch_add(1, Ordering::Relaxed);
    }
    shared.records.fetch_add(ok, Ordering::Relaxed);
    shared.bytes.fetch_add(bytes, Ordering::Relaxed);
    shared
        .failed_records
        .fetch_add(results.len() as u64 - ok, Ordering::Relaxed);
    for ((p, reply), result) in pendings.iter().zip(replies).zip(results) {
        // The session may have gone away; its record is stored all the same.
        match (p, reply) {
            (Pending::Message(m), Waiter::Message(reply)) => {
                let _ = reply.send(result.map(|location| Committed {
                    id: m.meta.id.into(),
                    location,
                }));
            }
            (_, Waiter::Deletion(reply))
            | (_, Waiter::Delivery(reply))
            | (_, Waiter::State(reply)) => {
                let _ = reply.send(result.map(|_| ()));
            }
            (
                Pending::Deletion(_) | Pending::Delivery(_) | Pending::State(_),
                Waiter::Message(reply),
            ) => {
                // Not built by `ShardHandle`; answer rather than leave the waiter hanging.
                let _ = reply.send(Err(SpoolError::Closed));
            }
        }
    }
}
