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
//! arrived during the previous fdatasync is in the next batch.

use std::io::IoSlice;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, RecvTimeoutError, TryRecvError};
use rkyv::util::AlignedVec;
use tokio::sync::oneshot;

use super::frame::{
    encode_message, pad16, EncodedFrame, MessageMeta, SegmentHeader, FRAME_HEADER_LEN,
    SEGMENT_PREAMBLE_LEN, ZERO_PAD,
};
use super::io::{SegmentFile, SegmentIo};
use super::{Committed, Location, ShardShared, SpoolError};

/// A message as the writer needs it: the meta to serialise and the two body parts, written
/// straight from these buffers.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub meta: MessageMeta,
    pub received: Vec<u8>,
    pub body: Vec<u8>,
}

pub(crate) struct Request {
    pub pending: Pending,
    pub reply: oneshot::Sender<Result<Committed, SpoolError>>,
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

pub(crate) struct WriterConfig {
    pub segment_size: u64,
    pub fsync: bool,
}

pub(crate) struct ShardWriter {
    shard: u8,
    io: Arc<dyn SegmentIo>,
    cfg: WriterConfig,
    current: Option<ActiveSegment>,
    next_segment: u64,
    next_seq: u64,
    /// Headers and metas of the batch being built; reused so steady state allocates nothing.
    heads: AlignedVec<16>,
}

impl ShardWriter {
    pub fn new(
        shard: u8,
        io: Arc<dyn SegmentIo>,
        cfg: WriterConfig,
        next_segment: u64,
        next_seq: u64,
    ) -> ShardWriter {
        ShardWriter {
            shard,
            io,
            cfg,
            current: None,
            // Never append to a segment written by an earlier run: its tail state is whatever
            // the crash left, and a fresh file makes "one writer per file" trivially true.
            next_segment: next_segment.max(1),
            next_seq,
            heads: AlignedVec::new(),
        }
    }

    /// Creates the next segment durably: preamble written and synced, directory synced.
    fn open_segment(&mut self) -> Result<(), SpoolError> {
        let number = self.next_segment;
        // Bump first: a half-created file must not block the next attempt (create is O_EXCL).
        self.next_segment += 1;
        let path = self.io.segment_path(self.shard, number);
        let mut file = self
            .io
            .create_segment(self.shard, number)
            .map_err(|e| SpoolError::io("create segment", &path, e))?;
        let salt = self.io.new_salt();
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
                if self.cfg.fsync {
                    file.sync_data()
                        .map_err(|e| SpoolError::io("sync segment header", &path, e))?;
                    self.io.sync_shard_dir(self.shard).map_err(|e| {
                        SpoolError::io("sync dir", self.io.shard_path(self.shard), e)
                    })?;
                }
                Ok(())
            });
        if let Err(e) = result {
            drop(file);
            // Best effort: recovery removes preamble-only leftovers anyway.
            let _ = self.io.remove_segment(self.shard, number);
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
            } else if self.cfg.fsync {
                let _ = seg.file.sync_data();
            }
            tracing::warn!(path = %seg.path.display(), tail = seg.tail, "spool: segment abandoned after an IO error; continuing in a new segment");
        }
    }

    /// Writes and syncs a batch. Returns one result per message, in order: `Ok` only for
    /// messages whose frame is covered by a successful fdatasync.
    pub fn commit(&mut self, batch: &[Pending]) -> Vec<Result<Location, SpoolError>> {
        let mut results: Vec<Option<Result<Location, SpoolError>>> = vec![None; batch.len()];
        // 1. Encode headers + metas into the reused buffer.
        self.heads.clear();
        let mut frames: Vec<(usize, EncodedFrame)> = Vec::with_capacity(batch.len());
        for (i, p) in batch.iter().enumerate() {
            match encode_message(
                &mut self.heads,
                &p.meta,
                [&p.received, &p.body],
                self.next_seq,
            ) {
                Ok(f) => {
                    self.next_seq += 1;
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
            let room = self.cfg.segment_size.saturating_sub(seg.tail);
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
                self.cfg.fsync,
            ) {
                Ok(()) => {
                    let mut offset = seg.tail;
                    for (i, f) in &frames[next..end] {
                        let frame_len = f.header.frame_len();
                        results[*i] = Some(Ok(Location {
                            shard: self.shard,
                            segment: seg.number,
                            offset,
                            frame_len,
                            body_offset: offset + f.header.body_offset(),
                            body_len: u64::from(f.header.body_len),
                        }));
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

/// One vectored write of `frames` at the segment tail, then fdatasync.
fn write_chunk(
    seg: &mut ActiveSegment,
    heads: &mut AlignedVec<16>,
    batch: &[Pending],
    frames: &[(usize, EncodedFrame)],
    fsync: bool,
) -> Result<(), SpoolError> {
    // The header checksum is salted per segment, known only now.
    for (_, f) in frames {
        let h = f.header.encode(seg.salt);
        heads[f.head.start..f.head.start + FRAME_HEADER_LEN].copy_from_slice(&h);
    }
    let mut iov: Vec<IoSlice<'_>> = Vec::with_capacity(frames.len() * 4);
    for (i, f) in frames {
        let p = &batch[*i];
        iov.push(IoSlice::new(&heads[f.head.clone()]));
        if !p.received.is_empty() {
            iov.push(IoSlice::new(&p.received));
        }
        if !p.body.is_empty() {
            iov.push(IoSlice::new(&p.body));
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
        seg.file
            .sync_data()
            .map_err(|e| SpoolError::io("fdatasync", &seg.path, e))?;
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
        let answer = result.map(|location| Committed {
            id: p.meta.id,
            location,
        });
        // The session may have gone away; its message is stored all the same.
        let _ = reply.send(answer);
    }
}
