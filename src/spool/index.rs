//! The live index: queue id → where the message is and whether anyone still needs it.
//!
//! Built by recovery at open, then kept current by the writer threads (after each commit,
//! before the replies go out, so a message acknowledged a microsecond ago is locatable) and by
//! compaction (when it moves or drops frames). Shared by every thread as a [`DashMap`]: it is
//! touched once per message, per deletion and per located read, never per byte, and no lock is
//! held across IO.
//!
//! # The liveness rule
//! [`is_garbage`] is the one place that decides whether a message may be dropped: no remote
//! delivery still pending, at least one local mailbox, and every one of those mailboxes has a
//! durable [`MailboxDeletion`](super::MailboxDeletion) for it. A message with neither
//! mailboxes nor remote routes is NOT garbage: its recipients are unaccounted for (a relay-only
//! configuration, or a record written before routes were recorded), so it stays until a later
//! issue's delivery results say otherwise. Later issues extend the rule with remote delivery
//! results: change [`is_garbage`] and [`Entry`], nothing else.
//!
//! # Copies
//! After a compaction interrupted between publishing its new segment and unlinking the old
//! ones, a frame exists twice on disk (identical meta and body bytes). The index keeps the
//! first one found as the message's location and remembers the others in [`Entry::copies`]:
//! they are dead bytes for compaction, but they still exist, so the message's deletion records
//! must be kept as long as any copy does (otherwise a restart would find the copy without its
//! deletions and resurrect it in a mailbox).

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use dashmap::DashMap;

use super::io::{SegmentFile, SegmentIo};
use super::Location;
use crate::envelope::QueueId;

/// One local mailbox's copy of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MailboxCopy {
    pub name: Box<str>,
    pub deleted: bool,
}

/// What the spool knows about one message while it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub location: Location,
    /// The frame's data checksum and the checksum of its meta alone: a body-only read is
    /// verified as `crc32c_append(meta_crc, body) == data_crc`.
    pub data_crc: u32,
    pub meta_crc: u32,
    /// Other on-disk copies of the same frame (see the module doc).
    pub copies: Vec<Location>,
    pub mailboxes: Vec<MailboxCopy>,
    /// Remote deliveries still pending (today: `MessageMeta::remote.len()`).
    pub remote_pending: u32,
}

/// The liveness rule (see the module doc). Keep it the only place that decides.
pub(crate) fn is_garbage(remote_pending: u32, mailboxes: &[MailboxCopy]) -> bool {
    remote_pending == 0 && !mailboxes.is_empty() && mailboxes.iter().all(|m| m.deleted)
}

impl Entry {
    pub fn new(
        location: Location,
        data_crc: u32,
        meta_crc: u32,
        mailboxes: &[String],
        remote: usize,
    ) -> Entry {
        let mut copies: Vec<MailboxCopy> = Vec::with_capacity(mailboxes.len());
        for m in mailboxes {
            // A list naming a mailbox twice still delivers one copy.
            if copies.iter().all(|c| *c.name != **m) {
                copies.push(MailboxCopy {
                    name: m.as_str().into(),
                    deleted: false,
                });
            }
        }
        Entry {
            location,
            data_crc,
            meta_crc,
            copies: Vec::new(),
            mailboxes: copies,
            remote_pending: u32::try_from(remote).unwrap_or(u32::MAX),
        }
    }

    pub fn is_garbage(&self) -> bool {
        is_garbage(self.remote_pending, &self.mailboxes)
    }

    /// Marks `mailbox`'s copy deleted; false if the message was not delivered there.
    fn delete_copy(&mut self, mailbox: &str) -> bool {
        match self.mailboxes.iter_mut().find(|m| &*m.name == mailbox) {
            Some(m) => {
                m.deleted = true;
                true
            }
            None => false,
        }
    }
}

/// A located message, copied out of the map so no lock is held during IO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Found {
    pub location: Location,
    pub data_crc: u32,
    pub meta_crc: u32,
}

#[derive(Debug, Default)]
pub(crate) struct LiveIndex {
    map: DashMap<QueueId, Entry>,
}

impl LiveIndex {
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Adds a committed or recovered frame. A second frame of the same id becomes a copy of the
    /// first (compaction leftovers; ids are otherwise unique): returns false then.
    pub fn insert(&self, id: QueueId, entry: Entry) -> bool {
        match self.map.entry(id) {
            dashmap::Entry::Occupied(mut e) => {
                e.get_mut().copies.push(entry.location);
                false
            }
            dashmap::Entry::Vacant(v) => {
                v.insert(entry);
                true
            }
        }
    }

    /// Applies a durable deletion; returns how many (mailbox, id) pairs matched a copy.
    pub fn apply_deletion(&self, mailbox: &str, ids: &[QueueId]) -> usize {
        ids.iter()
            .filter(|id| {
                self.map
                    .get_mut(id)
                    .is_some_and(|mut e| e.delete_copy(mailbox))
            })
            .count()
    }

    pub fn find(&self, id: QueueId) -> Option<Found> {
        self.map.get(&id).map(|e| Found {
            location: e.location,
            data_crc: e.data_crc,
            meta_crc: e.meta_crc,
        })
    }

    pub fn location(&self, id: QueueId) -> Option<Location> {
        self.map.get(&id).map(|e| e.location)
    }

    pub fn contains(&self, id: QueueId) -> bool {
        self.map.contains_key(&id)
    }

    /// The message's location and whether it is garbage, without cloning the entry.
    pub fn status(&self, id: QueueId) -> Option<(Location, bool)> {
        self.map.get(&id).map(|e| (e.location, e.is_garbage()))
    }

    pub fn get(&self, id: QueueId) -> Option<Entry> {
        self.map.get(&id).map(|e| e.clone())
    }

    /// Calls `f` for every entry, holding one map shard's read lock at a time.
    pub fn for_each(&self, mut f: impl FnMut(QueueId, &Entry)) {
        for e in self.map.iter() {
            f(*e.key(), e.value());
        }
    }

    /// Compaction moved the frame: `from` becomes a copy (it stays on disk until its segment is
    /// unlinked) and `to` the location.
    pub fn moved(&self, id: QueueId, from: &Location, to: Location) {
        if let Some(mut e) = self.map.get_mut(&id) {
            if e.location == *from {
                e.location = to;
                e.copies.push(*from);
            }
        }
    }

    /// Segment `(shard, segment)` is gone from disk: forget every location in it, and drop
    /// entries left with none (garbage whose every copy is unlinked).
    pub fn segment_removed(&self, id: QueueId, shard: u8, segment: u64) {
        let in_segment = |l: &Location| l.shard == shard && l.segment == segment;
        let gone = match self.map.get_mut(&id) {
            None => false,
            Some(mut e) => {
                e.copies.retain(|l| !in_segment(l));
                if in_segment(&e.location) {
                    match e.copies.pop() {
                        Some(l) => {
                            e.location = l;
                            false
                        }
                        None => true,
                    }
                } else {
                    false
                }
            }
        };
        if gone {
            self.map.remove_if(&id, |_, e| {
                e.location.shard == shard && e.location.segment == segment
            });
        }
    }
}

/// Which queue ids the deletion records of each segment name, and how many bytes those frames
/// take: compaction counts the bytes of still-needed deletions as live, so a segment of needed
/// deletions is not rewritten over and over, and one of orphaned deletions is reclaimed.
#[derive(Debug, Default)]
pub(crate) struct DeletionRefs {
    map: Mutex<HashMap<(u8, u64), SegmentDeletions>>,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct SegmentDeletions {
    pub bytes: u64,
    pub ids: Vec<QueueId>,
}

impl DeletionRefs {
    fn lock(&self) -> MutexGuard<'_, HashMap<(u8, u64), SegmentDeletions>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn add(&self, shard: u8, segment: u64, frame_len: u64, ids: &[QueueId]) {
        let mut map = self.lock();
        let e = map.entry((shard, segment)).or_default();
        e.bytes += frame_len;
        e.ids.extend_from_slice(ids);
    }

    pub fn remove(&self, shard: u8, segment: u64) {
        self.lock().remove(&(shard, segment));
    }

    /// Bytes of deletion frames in a segment that some indexed message still needs
    /// (proportional to the ids still indexed).
    pub fn needed_bytes(&self, shard: u8, segment: u64, index: &LiveIndex) -> u64 {
        let Some(d) = self.lock().get(&(shard, segment)).cloned() else {
            return 0;
        };
        if d.ids.is_empty() {
            return 0;
        }
        let needed = d.ids.iter().filter(|id| index.contains(**id)).count() as u64;
        d.bytes * needed / d.ids.len() as u64
    }
}

/// Read handles of segments, shared by every reader: a located read costs one `pread`, not an
/// `open` + `pread` + `close`. A handle taken before compaction unlinked its segment keeps
/// reading the old file (same bytes); compaction retires the segment right after the unlink so
/// its space is freed as soon as the last such reader finishes.
pub(crate) struct FileCache {
    open: DashMap<(u8, u64), Arc<dyn SegmentFile>>,
    retired: DashMap<(u8, u64), ()>,
    capacity: usize,
}

impl std::fmt::Debug for FileCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileCache")
            .field("open", &self.open.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

/// Open segment handles kept. Each is one fd; 128 × 64 MiB segments covers 8 GiB of spool.
pub(crate) const FILE_CACHE_CAPACITY: usize = 128;

impl FileCache {
    pub fn new(capacity: usize) -> FileCache {
        FileCache {
            open: DashMap::new(),
            retired: DashMap::new(),
            capacity: capacity.max(1),
        }
    }

    pub fn get(
        &self,
        io: &dyn SegmentIo,
        shard: u8,
        segment: u64,
    ) -> io::Result<Arc<dyn SegmentFile>> {
        let key = (shard, segment);
        if let Some(f) = self.open.get(&key) {
            return Ok(Arc::clone(f.value()));
        }
        let file: Arc<dyn SegmentFile> = Arc::from(io.open_segment(shard, segment, false)?);
        if self.open.len() >= self.capacity {
            let victims: Vec<(u8, u64)> = self
                .open
                .iter()
                .take(self.capacity / 4 + 1)
                .map(|e| *e.key())
                .collect();
            for v in victims {
                self.open.remove(&v);
            }
        }
        self.open.insert(key, Arc::clone(&file));
        // Raced with `retire` (open before the unlink, insert after it): do not keep it.
        if self.retired.contains_key(&key) {
            self.open.remove(&key);
        }
        Ok(file)
    }

    /// The segment was unlinked: drop the cached handle (readers holding a clone finish).
    pub fn retire(&self, shard: u8, segment: u64) {
        self.retired.insert((shard, segment), ());
        self.open.remove(&(shard, segment));
    }

    /// Handles cached now (tests).
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn cached(&self) -> usize {
        self.open.len()
    }
}

/// One live message as [`Spool::replay`](super::Spool::replay) lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayMessage {
    pub id: QueueId,
    pub arrival_unix_micros: u64,
    /// Local mailboxes it was delivered to (some may have deleted it: see `Replay::deletions`).
    pub mailboxes: Vec<String>,
    /// Remote addresses still to deliver to.
    pub remote: Vec<String>,
    /// Stored body size (Received header ‖ message): what RETR sends before dot-stuffing.
    pub body_len: u64,
    /// Reverse-path; empty for the null sender.
    pub sender: String,
    pub recipients: usize,
}

/// What a caller needs to rebuild its views at start: apply `messages` first, then
/// `deletions`. Garbage messages (and their deletions) are not listed; each message is listed
/// once however many copies an interrupted compaction left.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replay {
    pub messages: Vec<ReplayMessage>,
    /// `(mailbox, id)`: that mailbox's copy of the message is deleted.
    pub deletions: Vec<(String, QueueId)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(segment: u64, offset: u64) -> Location {
        Location {
            shard: 0,
            segment,
            offset,
            frame_len: 64,
            body_offset: offset + 48,
            body_len: 16,
        }
    }

    fn copies(states: &[bool]) -> Vec<MailboxCopy> {
        states
            .iter()
            .enumerate()
            .map(|(i, &deleted)| MailboxCopy {
                name: format!("m{i}").into(),
                deleted,
            })
            .collect()
    }

    #[test]
    fn liveness_rule_table() {
        // (remote pending, mailbox copies deleted?) → garbage
        let table: &[(u32, &[bool], bool)] = &[
            (0, &[], false), // nothing recorded: recipients unaccounted for, keep
            (1, &[], false),
            (0, &[false], false),
            (0, &[true], true),
            (0, &[true, false], false),
            (0, &[true, true], true),
            (1, &[true], false), // still to deliver remotely
            (2, &[true, true], false),
        ];
        for (remote, states, garbage) in table {
            assert_eq!(
                is_garbage(*remote, &copies(states)),
                *garbage,
                "{remote} {states:?}"
            );
        }
    }

    #[test]
    fn deletions_apply_per_mailbox_and_duplicates_become_copies() {
        let index = LiveIndex::default();
        let id = QueueId::new(10, 0);
        let mailboxes = ["alice".to_string(), "bob".into(), "alice".into()];
        assert!(index.insert(id, Entry::new(loc(1, 64), 1, 2, &mailboxes, 0)));
        let e = index.get(id).unwrap();
        assert_eq!(e.mailboxes.len(), 2, "a mailbox named twice holds one copy");
        assert_eq!(index.apply_deletion("alice", &[id, QueueId::new(99, 0)]), 1);
        assert_eq!(index.apply_deletion("carol", &[id]), 0);
        assert!(!index.get(id).unwrap().is_garbage());
        index.apply_deletion("bob", &[id]);
        assert!(index.get(id).unwrap().is_garbage());
        // A second frame of the id (compaction leftover) is a copy; the first stays.
        assert!(!index.insert(id, Entry::new(loc(7, 64), 1, 2, &mailboxes, 0)));
        let e = index.get(id).unwrap();
        assert_eq!(
            (e.location, e.copies.clone()),
            (loc(1, 64), vec![loc(7, 64)])
        );
        assert!(e.is_garbage(), "deletion state survives");
    }

    #[test]
    fn moves_and_removals_track_every_copy() {
        let index = LiveIndex::default();
        let id = QueueId::new(10, 0);
        index.insert(id, Entry::new(loc(1, 64), 1, 2, &["a".into()], 0));
        index.moved(id, &loc(1, 64), loc(5, 64));
        let e = index.get(id).unwrap();
        assert_eq!(
            (e.location, e.copies.clone()),
            (loc(5, 64), vec![loc(1, 64)])
        );
        // A stale move (the location is not `from` any more) changes nothing.
        index.moved(id, &loc(1, 64), loc(9, 64));
        assert_eq!(index.location(id), Some(loc(5, 64)));
        index.segment_removed(id, 0, 1);
        let e = index.get(id).unwrap();
        assert_eq!((e.location, e.copies.len()), (loc(5, 64), 0));
        // The location's segment goes but a copy remains: the copy becomes the location.
        index.insert(id, Entry::new(loc(6, 64), 1, 2, &[], 0));
        index.segment_removed(id, 0, 5);
        assert_eq!(index.location(id), Some(loc(6, 64)));
        index.segment_removed(id, 0, 6);
        assert!(!index.contains(id));
    }
}
