//! The live index: queue id → where the message is and whether anyone still needs it.
//!
//! Built by recovery at open, then kept current by the writer threads (after each commit,
//! before the replies go out, so a message acknowledged a microsecond ago is locatable) and by
//! compaction (when it moves or drops frames). Shared by every thread as a [`DashMap`]: it is
//! touched once per message, per deletion, per delivery result and per located read, never per
//! byte, and no lock is held across IO.
//!
//! # The liveness rule
//! [`is_garbage`] is the one place that decides whether a message may be dropped: every
//! remote recipient has a durable final [`DeliveryResult`](super::DeliveryResult) (delivered,
//! bounced or expired), every local mailbox has a durable
//! [`MailboxDeletion`](super::MailboxDeletion) for it, and it has at least one of the two. A
//! message with neither mailboxes nor remote routes is NOT garbage: its recipients are
//! unaccounted for (a relay-only configuration, or a record written before routes were
//! recorded). Deferred results and DSN markers never make a message garbage. To change the
//! rule change [`is_garbage`] and [`IndexEntry`], nothing else.
//!
//! # Mailbox-state records
//! A [`MailboxState`](super::MailboxState)'s `released` ids are applied exactly as a
//! deletion of `user`'s copy (so the message above may become garbage). The index also keeps,
//! per user, the highest `seq` of a durable checkpoint (a record whose ops start with
//! `Reset`): the user's records below it are void, and replay omits them. The retention rule
//! for compaction is [`state_is_live`]: a state record is kept iff its seq is at or above its
//! user's latest checkpoint, OR some id in its `released` list still has a message frame on
//! disk (any copy, see "Copies": dropping it would let a restart find the frame without the
//! release and resurrect the message in the user's store). A checkpoint is never dropped while
//! it is its user's latest, so voiding needs no other record to survive. A state record found
//! twice (a compaction leftover) is one record: replay and compaction deduplicate it by
//! `(user, seq, data checksum)`.
//!
//! # Remote recipients
//! Per remote recipient the entry keeps only whether it is final and the order key
//! `(attempt, at)` of its latest Deferred result: enough for the rule and for compaction to
//! tell the latest Deferred (kept) from older ones (dropped), and small (a deferred message
//! costs its entry, not its replies: those are read back from the log by replay).
//!
//! # Copies
//! After a compaction interrupted between publishing its new segment and unlinking the old
//! ones, a frame exists twice on disk (identical meta and body bytes). The index keeps the
//! first one found as the message's location and remembers the others in [`IndexEntry::copies`]:
//! they are dead bytes for compaction, but they still exist, so the message's deletion and
//! result records must be kept as long as any copy does (otherwise a restart would find the
//! copy without them and resurrect it in a mailbox, or deliver it again).

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use dashmap::DashMap;

use super::frame::{DeliveryRecord, DeliveryResult, DsnSent, Outcome};
use super::io::{SegmentFile, SegmentIo};
use super::Location;
use crate::envelope::QueueId;

/// One local mailbox's copy of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MailboxCopy {
    pub name: Box<str>,
    pub deleted: bool,
}

/// One remote recipient's delivery state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RemoteState {
    pub name: Box<str>,
    /// A final result (Delivered, Bounced, Expired) is durable.
    pub done: bool,
    /// Order key `(attempt, at)` of the latest durable Deferred result.
    pub deferred: Option<(u32, u64)>,
}

/// What the spool knows about one message while it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    pub location: Location,
    /// The frame's data checksum and the checksum of its meta alone: a body-only read is
    /// verified as `crc32c_append(meta_crc, body) == data_crc`.
    pub data_crc: u32,
    pub meta_crc: u32,
    /// The body at `location` was read whole and matched `data_crc` once in this process: the
    /// shards' reads ([`super::Spool::read_body_async`]) then skip the checksum (see
    /// "Verified once" in the spool's module doc). False again whenever `location` changes.
    pub verified: bool,
    /// Other on-disk copies of the same frame (see the module doc).
    pub copies: Vec<Location>,
    pub mailboxes: Vec<MailboxCopy>,
    /// `MessageMeta::remote`, each address once, with its delivery state.
    pub remote: Vec<RemoteState>,
}

/// The retention rule of a mailbox-state record (see the module doc): `checkpoint` is its
/// user's latest durable checkpoint seq, `released_on_disk` whether any id in its `released`
/// list still has a message frame on disk. Keep it the only place that decides.
pub(crate) fn state_is_live(seq: u64, checkpoint: Option<u64>, released_on_disk: bool) -> bool {
    checkpoint.is_none_or(|c| seq >= c) || released_on_disk
}

/// The liveness rule (see the module doc). Keep it the only place that decides.
pub(crate) fn is_garbage(remote: &[RemoteState], mailboxes: &[MailboxCopy]) -> bool {
    (!remote.is_empty() || !mailboxes.is_empty())
        && remote.iter().all(|r| r.done)
        && mailboxes.iter().all(|m| m.deleted)
}

impl IndexEntry {
    pub fn new(
        location: Location,
        data_crc: u32,
        meta_crc: u32,
        mailboxes: &[String],
        remote: &[String],
    ) -> IndexEntry {
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
        let mut states: Vec<RemoteState> = Vec::with_capacity(remote.len());
        for r in remote {
            // Likewise one delivery per address.
            if states.iter().all(|s| *s.name != **r) {
                states.push(RemoteState {
                    name: r.as_str().into(),
                    done: false,
                    deferred: None,
                });
            }
        }
        IndexEntry {
            location,
            data_crc,
            meta_crc,
            verified: false,
            copies: Vec::new(),
            mailboxes: copies,
            remote: states,
        }
    }

    pub fn is_garbage(&self) -> bool {
        is_garbage(&self.remote, &self.mailboxes)
    }

    fn remote_mut(&mut self, recipient: &str) -> Option<&mut RemoteState> {
        self.remote.iter_mut().find(|r| &*r.name == recipient)
    }

    /// Applies one durable result; false if the recipient is not one of the message's.
    fn apply_result(&mut self, r: &DeliveryResult) -> bool {
        let Some(state) = self.remote_mut(&r.recipient) else {
            return false;
        };
        if r.outcome.is_final() {
            state.done = true;
        } else if state.deferred.is_none_or(|k| r.order_key() >= k) {
            state.deferred = Some(r.order_key());
        }
        true
    }

    /// Whether compaction must keep result `r` of this message: every final result of one of
    /// its recipients, and each recipient's latest Deferred (older ones are superseded by a
    /// durable later one).
    pub fn needs_result(&self, r: &DeliveryResult) -> bool {
        self.remote.iter().any(|s| {
            *s.name == *r.recipient && (r.outcome.is_final() || s.deferred == Some(r.order_key()))
        })
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
    /// [`IndexEntry::verified`] when it was copied out.
    pub verified: bool,
}

#[derive(Debug, Default)]
pub(crate) struct LiveIndex {
    map: DashMap<QueueId, IndexEntry>,
    /// Per user, the highest seq of a durable checkpoint (see the module doc).
    checkpoints: DashMap<Box<str>, u64>,
    /// The one location of each mailbox-state record compaction keeps: the first found, then
    /// wherever compaction moved it; other copies are dead bytes (see "Copies").
    state_copies: DashMap<StateKey, Location>,
}

/// A mailbox-state record's identity on disk: `(user, seq, data checksum)`.
pub(crate) type StateKey = (Box<str>, u64, u32);

impl LiveIndex {
    /// An index sized for `n` messages up front: recovery knows the count, and growing a
    /// million-entry table holds the old and the new one at once.
    pub fn with_capacity(n: usize) -> LiveIndex {
        LiveIndex {
            map: DashMap::with_capacity(n),
            checkpoints: DashMap::new(),
            state_copies: DashMap::new(),
        }
    }

    /// A state record's frame is at `at` (committed or recovered): it becomes the record's
    /// location unless it already has one (then `at` is a dead copy).
    pub fn state_found(&self, key: StateKey, at: Location) {
        self.state_copies.entry(key).or_insert(at);
    }

    /// Whether `at` is the location of the state record (one without any is, too).
    pub fn is_state_location(&self, key: &StateKey, at: &Location) -> bool {
        self.state_copies.get(key).is_none_or(|l| *l == *at)
    }

    /// Compaction copied the record's location `from` to `to`.
    pub fn state_moved(&self, key: &StateKey, from: &Location, to: Location) {
        if let Some(mut l) = self.state_copies.get_mut(key) {
            if *l == *from {
                *l = to;
            }
        }
    }

    /// The segment holding `at` is gone: forget it if it was the record's location.
    pub fn state_removed(&self, key: &StateKey, at: &Location) {
        self.state_copies.remove_if(key, |_, l| *l == *at);
    }

    /// `user`'s latest durable checkpoint seq, if any.
    pub fn checkpoint(&self, user: &str) -> Option<u64> {
        self.checkpoints.get(user).map(|c| *c)
    }

    /// A checkpoint of `user` at `seq` is durable (only ever raises the user's mark).
    pub fn note_checkpoint(&self, user: &str, seq: u64) {
        let mut c = self.checkpoints.entry(user.into()).or_insert(seq);
        *c = (*c).max(seq);
    }

    /// Whether compaction must keep a state record (see [`state_is_live`]).
    pub fn state_live(&self, user: &str, seq: u64, released: &[QueueId]) -> bool {
        state_is_live(
            seq,
            self.checkpoint(user),
            released.iter().any(|id| self.map.contains_key(id)),
        )
    }

    /// Whether a (non-void) state record of `user` at `seq` belongs in a replay.
    pub fn state_replayed(&self, user: &str, seq: u64) -> bool {
        state_is_live(seq, self.checkpoint(user), false)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Adds a committed or recovered frame. A second frame of the same id becomes a copy of the
    /// first (compaction leftovers; ids are otherwise unique): returns false then.
    pub fn insert(&self, id: QueueId, entry: IndexEntry) -> bool {
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

    /// Applies durable delivery results; returns how many matched a remote recipient.
    /// (DSN markers change nothing here: they never make a message garbage.)
    pub fn apply_delivery(&self, record: &DeliveryRecord) -> usize {
        record
            .results
            .iter()
            .filter(|r| {
                self.map
                    .get_mut(&r.id)
                    .is_some_and(|mut e| e.apply_result(r))
            })
            .count()
    }

    /// Whether compaction must keep result `r` (see [`IndexEntry::needs_result`]). Only results of
    /// messages with a frame still on disk are kept.
    pub fn needs_result(&self, r: &DeliveryResult) -> bool {
        self.map.get(&r.id).is_some_and(|e| e.needs_result(r))
    }

    /// Whether compaction must keep a DSN marker: as long as a frame of its message exists.
    pub fn needs_marker(&self, d: &DsnSent) -> bool {
        self.map.contains_key(&d.id)
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
            verified: e.verified,
        })
    }

    /// The body of `id` at `at` matched its data checksum: later reads there may skip it
    /// ([`IndexEntry::verified`]). Nothing if the message is gone or has moved since.
    pub fn body_verified(&self, id: QueueId, at: &Location) {
        if let Some(mut e) = self.map.get_mut(&id) {
            if e.location == *at {
                e.verified = true;
            }
        }
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

    /// Live, with a remote recipient still without a final result (queued for delivery);
    /// without cloning the entry.
    pub fn has_pending_remote(&self, id: QueueId) -> bool {
        self.map
            .get(&id)
            .is_some_and(|e| !e.is_garbage() && e.remote.iter().any(|r| !r.done))
    }

    pub fn get(&self, id: QueueId) -> Option<IndexEntry> {
        self.map.get(&id).map(|e| e.clone())
    }

    /// Calls `f` for every entry, holding one map shard's read lock at a time.
    pub fn for_each(&self, mut f: impl FnMut(QueueId, &IndexEntry)) {
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
                e.verified = false;
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
                            e.verified = false;
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

/// Which queue ids the deletion and delivery records of each segment name, and how many
/// bytes those frames take: compaction counts the bytes of still-needed ones as live, so a
/// segment of needed records is not rewritten over and over, and one of orphaned deletions
/// or superseded Deferred results is reclaimed.
#[derive(Debug, Default)]
pub(crate) struct RecordRefs {
    map: Mutex<HashMap<(u8, u64), SegmentRefs>>,
}

/// One queue id named by a deletion or delivery record. `result` fingerprints a result's
/// recipient and, for a Deferred, its order key: a final result is needed while its
/// recipient is one of the message's, a Deferred only while it is its recipient's latest.
/// `None` for what is needed as long as the message is indexed (deletions, DSN markers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ref {
    pub id: QueueId,
    pub result: Option<u64>,
}

/// FNV-1a over a recipient and a Deferred's order key (`None`: a final result). A collision
/// only makes compaction count an unneeded result as needed (an overestimate of live bytes,
/// never a loss: what is kept is decided record by record).
fn result_fingerprint(recipient: &str, deferred: Option<(u32, u64)>) -> u64 {
    let (attempt, at) = deferred.unwrap_or((u32::MAX, u64::MAX));
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let tail = [0xff, u8::from(deferred.is_some())];
    let (attempt, at) = (attempt.to_le_bytes(), at.to_le_bytes());
    let bytes = recipient
        .as_bytes()
        .iter()
        .chain(&tail)
        .chain(&attempt)
        .chain(&at);
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl Ref {
    pub fn deletions(ids: &[QueueId]) -> impl Iterator<Item = Ref> + '_ {
        ids.iter().map(|&id| Ref { id, result: None })
    }

    pub fn delivery(record: &DeliveryRecord) -> impl Iterator<Item = Ref> + '_ {
        record
            .results
            .iter()
            .map(|r| Ref {
                id: r.id,
                result: Some(result_fingerprint(
                    &r.recipient,
                    (!r.outcome.is_final()).then(|| r.order_key()),
                )),
            })
            .chain(record.dsn_sent.iter().map(|d| Ref {
                id: d.id,
                result: None,
            }))
    }

    /// Whether the record part this ref stands for is still needed (see [`IndexEntry::needs_result`]).
    fn needed(&self, index: &LiveIndex) -> bool {
        let Some(e) = index.map.get(&self.id) else {
            return false;
        };
        let Some(fingerprint) = self.result else {
            return true;
        };
        e.remote.iter().any(|s| {
            result_fingerprint(&s.name, None) == fingerprint
                || s.deferred
                    .is_some_and(|k| result_fingerprint(&s.name, Some(k)) == fingerprint)
        })
    }
}

#[derive(Debug, Clone, Default)]
pub(crate) struct SegmentRefs {
    pub bytes: u64,
    pub refs: Vec<Ref>,
    /// The mailbox-state records of the segment, each with its own frame length.
    pub states: Vec<StateRef>,
}

/// What compaction's accounting needs of one mailbox-state frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StateRef {
    pub user: Box<str>,
    pub seq: u64,
    pub released: Box<[QueueId]>,
    pub data_crc: u32,
    /// This frame (the record's location, or a dead copy of it).
    pub location: Location,
}

impl StateRef {
    pub fn new(state: &super::MailboxState, data_crc: u32, location: Location) -> StateRef {
        StateRef {
            user: state.user.as_str().into(),
            seq: state.seq,
            released: state.released.as_slice().into(),
            data_crc,
            location,
        }
    }

    pub fn key(&self) -> StateKey {
        (self.user.clone(), self.seq, self.data_crc)
    }
}

impl RecordRefs {
    fn lock(&self) -> MutexGuard<'_, HashMap<(u8, u64), SegmentRefs>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn add(&self, shard: u8, segment: u64, frame_len: u64, refs: impl Iterator<Item = Ref>) {
        let mut map = self.lock();
        let e = map.entry((shard, segment)).or_default();
        e.bytes += frame_len;
        e.refs.extend(refs);
    }

    pub fn add_state(&self, shard: u8, segment: u64, state: StateRef) {
        self.lock()
            .entry((shard, segment))
            .or_default()
            .states
            .push(state);
    }

    pub fn remove(&self, shard: u8, segment: u64) {
        self.lock().remove(&(shard, segment));
    }

    /// Bytes of deletion and delivery frames in a segment that some indexed message still
    /// needs (proportional to the refs still needed).
    pub fn needed_bytes(&self, shard: u8, segment: u64, index: &LiveIndex) -> u64 {
        let Some(d) = self.lock().get(&(shard, segment)).cloned() else {
            return 0;
        };
        let states: u64 = d
            .states
            .iter()
            .filter(|s| {
                // A dead copy is dead bytes, as a message's is.
                index.is_state_location(&s.key(), &s.location)
                    && index.state_live(&s.user, s.seq, &s.released)
            })
            .map(|s| s.location.frame_len)
            .sum();
        if d.refs.is_empty() {
            return states;
        }
        let needed = d.refs.iter().filter(|r| r.needed(index)).count() as u64;
        states + d.bytes * needed / d.refs.len() as u64
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

/// What recovery keeps of the delivery records: per remote recipient, whether a final
/// result exists and its latest Deferred's `(attempt, at, next attempt)`; the delay-notice
/// markers; the notice ids markers name. No reply text and no result is kept whole: a log
/// of a million results folds into ≈ 100 bytes per recipient (the start-up views need no
/// more; `relay queue` reads replies from the log when asked).
#[derive(Debug, Default)]
pub(crate) struct StartupHistory {
    by_id: HashMap<QueueId, Vec<RecipientState>>,
    delay_marked: std::collections::HashSet<(QueueId, Box<str>)>,
    /// Ids named by markers only (a marker's message and its notice).
    named: Vec<QueueId>,
}

#[derive(Debug)]
struct RecipientState {
    name: Box<str>,
    done: bool,
    /// `(attempt, at)` and the next attempt of the latest Deferred.
    deferred: Option<((u32, u64), Option<u64>)>,
}

impl StartupHistory {
    /// Folds one delivery record (order does not matter: "any final", "the latest Deferred").
    pub fn add(&mut self, record: DeliveryRecord) {
        for r in record.results {
            let states = self.by_id.entry(r.id).or_default();
            let at = match states.iter().position(|s| *s.name == *r.recipient) {
                Some(at) => at,
                None => {
                    states.reserve_exact(1);
                    states.push(RecipientState {
                        name: r.recipient.into_boxed_str(),
                        done: false,
                        deferred: None,
                    });
                    states.len() - 1
                }
            };
            let state = &mut states[at];
            if r.outcome.is_final() {
                state.done = true;
            } else {
                let key = (r.attempt, r.at_unix_micros);
                if state
                    .deferred
                    .is_none_or(|(k, next)| (key, r.next_attempt_unix_micros) > (k, next))
                {
                    state.deferred = Some((key, r.next_attempt_unix_micros));
                }
            }
        }
        for d in record.dsn_sent {
            self.named.push(d.id);
            self.named.extend(d.notice_id);
            if d.kind == super::frame::DsnKind::Delay {
                self.delay_marked
                    .insert((d.id, d.recipient.into_boxed_str()));
            }
        }
    }

    /// Moves `other` into this one; the larger is kept (one shard usually holds most).
    pub fn merge(&mut self, mut other: StartupHistory) {
        if other.by_id.len() > self.by_id.len() {
            std::mem::swap(self, &mut other);
        }
        for (id, states) in other.by_id {
            for s in states {
                self.add(DeliveryRecord {
                    results: s.into_results(id),
                    dsn_sent: Vec::new(),
                });
            }
        }
        self.delay_marked.extend(other.delay_marked);
        self.named.extend(other.named);
    }

    /// Applies the fold to the index: the same state as applying every record.
    pub fn apply_to(&self, index: &LiveIndex) {
        for (id, states) in &self.by_id {
            let Some(mut e) = index.map.get_mut(id) else {
                continue;
            };
            for s in states {
                if let Some(state) = e.remote_mut(&s.name) {
                    state.done |= s.done;
                    if let Some((key, _)) = s.deferred {
                        if state.deferred.is_none_or(|k| key >= k) {
                            state.deferred = Some(key);
                        }
                    }
                }
            }
        }
    }

    /// Every queue id a record named.
    pub fn named_ids(&self) -> impl Iterator<Item = QueueId> + '_ {
        self.by_id.keys().copied().chain(self.named.iter().copied())
    }

    /// The latest Deferred of `recipient` of message `id`: `(attempt, next attempt)`.
    pub fn deferred(&self, id: QueueId, recipient: &str) -> Option<(u32, Option<u64>)> {
        let s = self
            .by_id
            .get(&id)?
            .iter()
            .find(|s| *s.name == *recipient)?;
        s.deferred.map(|((attempt, _), next)| (attempt, next))
    }

    /// Whether a delay notice about `recipient` of message `id` was recorded.
    pub fn delay_noticed(&self, id: QueueId, recipient: &str) -> bool {
        self.delay_marked
            .contains(&(id, Box::<str>::from(recipient)))
    }
}

impl RecipientState {
    /// Back to results for a merge (replies are not kept).
    fn into_results(self, id: QueueId) -> Vec<DeliveryResult> {
        let mut out = Vec::with_capacity(2);
        let name = String::from(self.name);
        if let Some(((attempt, at), next)) = self.deferred {
            out.push(DeliveryResult {
                id,
                recipient: name.clone(),
                outcome: super::frame::Outcome::Deferred,
                reply: String::new(),
                attempt,
                at_unix_micros: at,
                next_attempt_unix_micros: next,
            });
        }
        if self.done {
            out.push(DeliveryResult {
                id,
                recipient: name,
                outcome: super::frame::Outcome::Delivered,
                reply: String::new(),
                attempt: 0,
                at_unix_micros: 0,
                next_attempt_unix_micros: None,
            });
        }
        out
    }
}

/// One live message as [`Spool::replay`](super::Spool::replay) lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayMessage {
    pub id: QueueId,
    pub arrival_unix_micros: u64,
    /// Local mailboxes it was delivered to (some may have deleted it: see `Replay::deletions`).
    pub mailboxes: Vec<String>,
    /// Every remote address of the message, as stored (`pending` and `finished` split them).
    pub remote: Vec<String>,
    /// Parallel to `mailboxes` (see [`MessageMeta::placements`](super::MessageMeta)); empty
    /// for a frame without placements.
    pub placements: Vec<Option<super::Placement>>,
    /// Stored body size (Received header ‖ message): what RETR sends before dot-stuffing.
    pub body_len: u64,
    /// Reverse-path; empty for the null sender.
    pub sender: String,
    pub recipients: usize,
    /// Remote recipients without a final result, in `remote` order, each address once: the
    /// queue to rebuild.
    pub pending: Vec<PendingRecipient>,
    /// The final result of each remote recipient that has one (the earliest by `(attempt,
    /// at)` if several), in `remote` order.
    pub finished: Vec<DeliveryResult>,
    /// DSN markers recorded for this message (each once, sorted): notices not to send again.
    pub dsn_sent: Vec<DsnSent>,
    /// The POP3 UIDL a message imported by a user move keeps from its source node
    /// ([`crate::envelope::Origin::kept_uidl`], unchecked); `None` for every other message.
    pub kept_uidl: Option<Box<str>>,
}

/// A remote recipient still to deliver, with what its latest Deferred result said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRecipient {
    pub recipient: String,
    /// Attempts made so far (the latest Deferred's `attempt`; 0: never tried).
    pub attempts: u32,
    pub last_reply: Option<String>,
    pub last_attempt_unix_micros: Option<u64>,
    /// When to try again; `None`: at once.
    pub next_attempt_unix_micros: Option<u64>,
}

/// What a caller needs to rebuild its views at start: apply `messages` first, then
/// `deletions`. Garbage messages (and their deletions) are not listed; each message is listed
/// once however many copies an interrupted compaction left.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replay {
    pub messages: Vec<ReplayMessage>,
    /// `(mailbox, id)`: that mailbox's copy of the message is deleted.
    pub deletions: Vec<(String, QueueId)>,
    /// Every mailbox-state record still in the log that is not void (at or above its user's
    /// latest checkpoint), sorted by `(user, seq)`, each once: apply a user's in this order
    /// after the messages (docs/MAILSTORE.md).
    pub states: Vec<super::MailboxState>,
}

/// What the delivery records of the log say, folded per message as they are read (the latest
/// Deferred and the earliest final result per recipient, the markers), to fill the replay.
/// Its fold agrees with the index's ([`IndexEntry`]): a recipient is final here iff it is there.
#[derive(Debug, Default)]
pub(crate) struct DeliveryHistory {
    by_id: HashMap<QueueId, MessageHistory>,
}

#[derive(Debug, Default, Clone)]
struct MessageHistory {
    /// Per recipient, in first-seen order: a list, not a map (a message has few remote
    /// recipients, and a million per-message hash maps cost a gigabyte at recovery).
    recipients: Vec<(Box<str>, RecipientHistory)>,
    dsn_sent: Vec<DsnSent>,
}

/// Boxed: a result is ~100 octets inline, and most recipients have only one of the two.
#[derive(Debug, Default, Clone)]
struct RecipientHistory {
    deferred: Option<Box<DeliveryResult>>,
    finished: Option<Box<DeliveryResult>>,
}

impl MessageHistory {
    fn recipient_mut(&mut self, name: &str) -> &mut RecipientHistory {
        let at = match self.recipients.iter().position(|(n, _)| &**n == name) {
            Some(at) => at,
            None => {
                self.recipients
                    .push((name.into(), RecipientHistory::default()));
                self.recipients.len() - 1
            }
        };
        &mut self.recipients[at].1
    }

    fn recipient(&self, name: &str) -> Option<&RecipientHistory> {
        self.recipients
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, h)| h)
    }

    fn take_recipient(&mut self, name: &str) -> Option<RecipientHistory> {
        let at = self.recipients.iter().position(|(n, _)| &**n == name)?;
        Some(self.recipients.swap_remove(at).1)
    }
}

impl DeliveryHistory {
    /// Like [`DeliveryHistory::add`], taking the record: its results move in, none is copied
    /// (recovery folds a whole log of them).
    pub fn add_owned(&mut self, record: DeliveryRecord) {
        let DeliveryRecord { results, dsn_sent } = record;
        for r in results {
            self.fold(r);
        }
        for d in dsn_sent {
            let m = self.by_id.entry(d.id).or_default();
            if !m.dsn_sent.contains(&d) {
                m.dsn_sent.push(d);
            }
        }
    }

    fn fold(&mut self, r: DeliveryResult) {
        let h = self
            .by_id
            .entry(r.id)
            .or_default()
            .recipient_mut(&r.recipient);
        let slot = if r.outcome.is_final() {
            &mut h.finished
        } else {
            &mut h.deferred
        };
        let replace = match slot {
            None => true,
            Some(old) if r.outcome.is_final() => (r.order_key(), &r) < (old.order_key(), &*old),
            Some(old) => (r.order_key(), &r) > (old.order_key(), &*old),
        };
        if replace {
            *slot = Some(Box::new(r));
        }
    }

    /// Folds one record: the latest Deferred and the earliest final result per recipient (a
    /// tie of `(attempt, at)` goes to the greater result, so the fold does not depend on log
    /// order: compaction reorders), and every DSN marker once.
    pub fn add(&mut self, record: &DeliveryRecord) {
        self.add_owned(record.clone());
    }

    /// Keeps the histories of the ids `keep` says yes to (the queue view's pruning).
    pub fn retain(&mut self, mut keep: impl FnMut(QueueId) -> bool) {
        self.by_id.retain(|id, _| keep(*id));
    }

    /// Drops everything recorded about message `id`.
    pub fn forget(&mut self, id: QueueId) {
        self.by_id.remove(&id);
    }

    /// Messages with a history.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// The final outcome recorded for `recipient` of message `id`, if any.
    pub fn final_outcome(&self, id: QueueId, recipient: &str) -> Option<Outcome> {
        self.by_id
            .get(&id)?
            .recipient(recipient)?
            .finished
            .as_ref()
            .map(|f| f.outcome)
    }

    /// Fills `message`'s delivery state from what was read.
    pub fn fill(&self, message: &mut ReplayMessage) {
        fill_from(message, self.by_id.get(&message.id).cloned());
    }
}

/// `message`'s pending and finished recipients and markers from its history (moved in).
fn fill_from(message: &mut ReplayMessage, mut history: Option<MessageHistory>) {
    message.pending.clear();
    message.finished.clear();
    message.dsn_sent.clear();
    let mut seen: Vec<&str> = Vec::with_capacity(message.remote.len());
    for address in &message.remote {
        if seen.contains(&address.as_str()) {
            continue;
        }
        seen.push(address);
        let h = history
            .as_mut()
            .and_then(|h| h.take_recipient(address.as_str()));
        match h {
            Some(RecipientHistory {
                finished: Some(f), ..
            }) => message.finished.push(*f),
            h => {
                let d = h.and_then(|h| h.deferred).map(|d| *d);
                message.pending.push(PendingRecipient {
                    recipient: address.clone(),
                    attempts: d.as_ref().map_or(0, |d| d.attempt),
                    last_attempt_unix_micros: d.as_ref().map(|d| d.at_unix_micros),
                    next_attempt_unix_micros: d.as_ref().and_then(|d| d.next_attempt_unix_micros),
                    last_reply: d.map(|d| d.reply),
                });
            }
        }
    }
    if let Some(h) = history {
        message.dsn_sent = h.dsn_sent;
        message.dsn_sent.sort();
    }
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

    fn remotes(states: &[bool]) -> Vec<RemoteState> {
        states
            .iter()
            .enumerate()
            .map(|(i, &done)| RemoteState {
                name: format!("r{i}@far").into(),
                done,
                deferred: None,
            })
            .collect()
    }

    #[test]
    fn liveness_rule_table() {
        // (remote recipients final?, mailbox copies deleted?) → garbage
        let table: &[(&[bool], &[bool], bool)] = &[
            (&[], &[], false), // nothing recorded: recipients unaccounted for, keep
            (&[false], &[], false),
            (&[true], &[], true), // relayed and done
            (&[true, false], &[], false),
            (&[true, true], &[], true),
            (&[], &[false], false),
            (&[], &[true], true),
            (&[], &[true, false], false),
            (&[], &[true, true], true),
            (&[false], &[true], false), // still to deliver remotely
            (&[true], &[false], false), // still in a mailbox
            (&[true], &[true], true),
            (&[true, false], &[true, true], false),
            (&[true, true], &[true, true], true),
        ];
        for (remote, states, garbage) in table {
            assert_eq!(
                is_garbage(&remotes(remote), &copies(states)),
                *garbage,
                "{remote:?} {states:?}"
            );
        }
    }

    fn result(id: QueueId, rcpt: &str, outcome: Outcome, attempt: u32, at: u64) -> DeliveryResult {
        DeliveryResult {
            id,
            recipient: rcpt.into(),
            outcome,
            reply: format!("{outcome:?} {attempt}"),
            attempt,
            at_unix_micros: at,
            next_attempt_unix_micros: (!outcome.is_final()).then_some(at + 60),
        }
    }

    fn record(results: Vec<DeliveryResult>) -> DeliveryRecord {
        DeliveryRecord {
            results,
            dsn_sent: Vec::new(),
        }
    }

    #[test]
    fn results_finish_recipients_and_track_the_latest_deferred() {
        let index = LiveIndex::default();
        let id = QueueId::new(10, 0);
        let remote = ["a@far".to_string(), "b@far".into(), "a@far".into()];
        index.insert(id, IndexEntry::new(loc(1, 64), 1, 2, &[], &remote));
        assert_eq!(
            index.get(id).unwrap().remote.len(),
            2,
            "an address named twice"
        );
        let d2 = result(id, "a@far", Outcome::Deferred, 2, 200);
        let d1 = result(id, "a@far", Outcome::Deferred, 1, 100);
        // Applied out of order: the latest by (attempt, at) stays.
        assert_eq!(
            index.apply_delivery(&record(vec![d2.clone(), d1.clone()])),
            2
        );
        let e = index.get(id).unwrap();
        assert_eq!(e.remote[0].deferred, Some((2, 200)));
        assert!(e.needs_result(&d2) && !e.needs_result(&d1));
        assert!(!e.is_garbage());
        // An unknown recipient or message changes nothing.
        let stray = result(id, "z@far", Outcome::Delivered, 1, 1);
        let other = result(QueueId::new(11, 0), "a@far", Outcome::Delivered, 1, 1);
        assert_eq!(
            index.apply_delivery(&record(vec![stray.clone(), other.clone()])),
            0
        );
        assert!(!index.needs_result(&stray) && !index.needs_result(&other));
        let done_a = result(id, "a@far", Outcome::Bounced, 3, 300);
        index.apply_delivery(&record(vec![done_a.clone()]));
        assert!(!index.get(id).unwrap().is_garbage(), "b@far still pending");
        // A Deferred after a final does not reopen the recipient.
        index.apply_delivery(&record(vec![result(
            id,
            "a@far",
            Outcome::Deferred,
            4,
            400,
        )]));
        index.apply_delivery(&record(vec![result(id, "b@far", Outcome::Expired, 9, 900)]));
        let e = index.get(id).unwrap();
        assert!(e.is_garbage());
        assert!(
            e.needs_result(&done_a),
            "finals stay while the message is on disk"
        );
        let marker = DsnSent {
            id,
            recipient: "a@far".into(),
            kind: super::super::DsnKind::Failure,
            at_unix_micros: 301,
            notice_id: None,
        };
        assert!(index.needs_marker(&marker));
        index.segment_removed(id, 0, 1);
        assert!(!index.needs_result(&done_a) && !index.needs_marker(&marker));
    }

    #[test]
    fn history_fold_does_not_depend_on_order() {
        let id = QueueId::new(10, 0);
        let mut results = vec![
            result(id, "a@far", Outcome::Deferred, 1, 100),
            result(id, "a@far", Outcome::Deferred, 2, 200),
            result(id, "b@far", Outcome::Deferred, 1, 100),
            result(id, "b@far", Outcome::Delivered, 2, 250),
            result(id, "b@far", Outcome::Delivered, 3, 350),
            result(id, "c@far", Outcome::Deferred, 1, 100),
        ];
        let mut tie = result(id, "c@far", Outcome::Deferred, 1, 100);
        tie.reply = "zzz".into();
        results.push(tie.clone());
        let message = ReplayMessage {
            id,
            arrival_unix_micros: 1,
            mailboxes: Vec::new(),
            remote: vec![
                "a@far".into(),
                "b@far".into(),
                "c@far".into(),
                "d@far".into(),
            ],
            placements: Vec::new(),
            body_len: 0,
            sender: String::new(),
            recipients: 4,
            pending: Vec::new(),
            finished: Vec::new(),
            dsn_sent: Vec::new(),
            kept_uidl: None,
        };
        let mut filled = Vec::new();
        for rotation in 0..results.len() {
            let mut order = results.clone();
            order.rotate_left(rotation);
            if rotation % 2 == 1 {
                order.reverse();
            }
            let mut h = DeliveryHistory::default();
            for r in order {
                h.add(&record(vec![r]));
            }
            let mut m = message.clone();
            h.fill(&mut m);
            filled.push(m);
        }
        let m = &filled[0];
        assert!(filled.iter().all(|f| f == m), "fold depends on order");
        let pending: Vec<_> = m.pending.iter().map(|p| p.recipient.as_str()).collect();
        assert_eq!(pending, ["a@far", "c@far", "d@far"]);
        assert_eq!(m.pending[0].attempts, 2);
        assert_eq!(m.pending[0].last_reply.as_deref(), Some("Deferred 2"));
        assert_eq!(m.pending[0].next_attempt_unix_micros, Some(260));
        assert_eq!(
            m.pending[1].last_reply.as_deref(),
            Some("zzz"),
            "tie: greater wins"
        );
        assert_eq!(
            (m.pending[2].attempts, m.pending[2].last_reply.clone()),
            (0, None)
        );
        assert_eq!(m.finished.len(), 1);
        assert_eq!(
            (m.finished[0].attempt, m.finished[0].outcome),
            (2, Outcome::Delivered)
        );
    }

    #[test]
    fn deletions_apply_per_mailbox_and_duplicates_become_copies() {
        let index = LiveIndex::default();
        let id = QueueId::new(10, 0);
        let mailboxes = ["alice".to_string(), "bob".into(), "alice".into()];
        assert!(index.insert(id, IndexEntry::new(loc(1, 64), 1, 2, &mailboxes, &[])));
        let e = index.get(id).unwrap();
        assert_eq!(e.mailboxes.len(), 2, "a mailbox named twice holds one copy");
        assert_eq!(index.apply_deletion("alice", &[id, QueueId::new(99, 0)]), 1);
        assert_eq!(index.apply_deletion("carol", &[id]), 0);
        assert!(!index.get(id).unwrap().is_garbage());
        index.apply_deletion("bob", &[id]);
        assert!(index.get(id).unwrap().is_garbage());
        // A second frame of the id (compaction leftover) is a copy; the first stays.
        assert!(!index.insert(id, IndexEntry::new(loc(7, 64), 1, 2, &mailboxes, &[])));
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
        index.insert(id, IndexEntry::new(loc(1, 64), 1, 2, &["a".into()], &[]));
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
        index.insert(id, IndexEntry::new(loc(6, 64), 1, 2, &[], &[]));
        index.segment_removed(id, 0, 5);
        assert_eq!(index.location(id), Some(loc(6, 64)));
        index.segment_removed(id, 0, 6);
        assert!(!index.contains(id));
    }
}

#[cfg(test)]
mod startup_history_tests {
    use super::*;
    use crate::spool::frame::{DsnKind, Outcome};

    fn r(id: u64, rcpt: &str, outcome: Outcome, attempt: u32, at: u64) -> DeliveryResult {
        DeliveryResult {
            id: QueueId::new(id, 0),
            recipient: rcpt.into(),
            outcome,
            reply: "451 4.0.0 later".into(),
            attempt,
            at_unix_micros: at,
            next_attempt_unix_micros: (outcome == Outcome::Deferred).then_some(at + 60),
        }
    }

    fn record(results: Vec<DeliveryResult>) -> DeliveryRecord {
        DeliveryRecord {
            results,
            dsn_sent: Vec::new(),
        }
    }

    #[test]
    fn split_folds_merged_agree_with_one_fold_in_any_order() {
        let all = vec![
            r(1, "a@x", Outcome::Deferred, 1, 10),
            r(1, "a@x", Outcome::Deferred, 3, 30),
            r(1, "a@x", Outcome::Deferred, 2, 20),
            r(1, "b@x", Outcome::Deferred, 1, 10),
            r(1, "b@x", Outcome::Delivered, 2, 20),
            r(2, "c@y", Outcome::Bounced, 1, 5),
        ];
        let mut one = StartupHistory::default();
        one.add(record(all.clone()));
        let mut left = StartupHistory::default();
        let mut right = StartupHistory::default();
        left.add(record(vec![all[1].clone(), all[3].clone(), all[5].clone()]));
        right.add(record(vec![all[4].clone(), all[0].clone(), all[2].clone()]));
        right.add(DeliveryRecord {
            results: Vec::new(),
            dsn_sent: vec![DsnSent {
                id: QueueId::new(1, 0),
                recipient: "a@x".into(),
                kind: DsnKind::Delay,
                at_unix_micros: 40,
                notice_id: Some(QueueId::new(99, 1)),
            }],
        });
        left.merge(right);
        for h in [&one, &left] {
            assert_eq!(h.deferred(QueueId::new(1, 0), "a@x"), Some((3, Some(90))));
            assert_eq!(h.deferred(QueueId::new(1, 0), "b@x"), Some((1, Some(70))));
            assert_eq!(h.deferred(QueueId::new(2, 0), "c@y"), None);
        }
        assert!(left.delay_noticed(QueueId::new(1, 0), "a@x"));
        assert!(!left.delay_noticed(QueueId::new(1, 0), "b@x"));
        let mut named: Vec<QueueId> = left.named_ids().collect();
        named.sort();
        named.dedup();
        assert_eq!(
            named,
            vec![QueueId::new(1, 0), QueueId::new(2, 0), QueueId::new(99, 1)]
        );
        // Applied to the index: b@x and c@y are done, a@x waits on its third attempt.
        let index = LiveIndex::default();
        let loc = Location {
            shard: 0,
            segment: 1,
            offset: 0,
            frame_len: 64,
            body_offset: 48,
            body_len: 16,
        };
        index.insert(
            QueueId::new(1, 0),
            IndexEntry::new(loc, 0, 0, &[], &["a@x".into(), "b@x".into()]),
        );
        index.insert(
            QueueId::new(2, 0),
            IndexEntry::new(loc, 0, 0, &[], &["c@y".into()]),
        );
        left.apply_to(&index);
        let e1 = index.get(QueueId::new(1, 0)).unwrap();
        assert_eq!(
            e1.remote
                .iter()
                .map(|s| (s.done, s.deferred))
                .collect::<Vec<_>>(),
            vec![(false, Some((3, 30))), (true, Some((1, 10)))]
        );
        assert!(index.get(QueueId::new(2, 0)).unwrap().is_garbage());
    }
}
