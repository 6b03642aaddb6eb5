//! One user's store: the state, how a record applies to it, and the queries.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::error::StoreError;
use super::names::{self, INBOX_NAME};
use crate::envelope::QueueId;
use crate::spool::state::{
    system_flag, Flags, FolderId, MailboxState, Placement, SpecialUse, StateOp, INBOX,
};

/// INBOX exists for every user from the start and can never be deleted, so it needs no record
/// of its creation and its UIDVALIDITY can be a constant.
pub const INBOX_UIDVALIDITY: u32 = 1;
/// The default bound on a user's folders ([`UserStore::set_max_folders`]).
pub const DEFAULT_MAX_FOLDERS: usize = 1000;

/// One message in one folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: QueueId,
    pub size: u64,
    pub flags: Flags,
    pub internal_date: i64,
    pub zone_minutes: i16,
    pub modseq: u64,
}

impl Entry {
    pub(super) fn placement(&self, folder: FolderId, uidvalidity: u32, uid: u32) -> Placement {
        Placement {
            folder,
            uidvalidity,
            uid,
            flags: self.flags.clone(),
            internal_date: self.internal_date,
            zone_minutes: self.zone_minutes,
            modseq: self.modseq,
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct Folder {
    pub(super) name: String,
    pub(super) uidvalidity: u32,
    /// Above every UID handed out (allocated, copied or placed), committed or not.
    pub(super) uidnext: u32,
    /// Above every UID the log holds (placed, or restated by a checkpoint): what recovery
    /// gets back, so UIDNEXT as reported never passes it (an abandoned UID at the top is not
    /// durable, and UIDNEXT must not go back after a restart).
    pub(super) durable_uidnext: u32,
    /// The highest modseq of an applied change.
    pub(super) highest_modseq: u64,
    /// The highest modseq handed to a change not yet applied (or whose commit failed).
    pub(super) reserved_modseq: u64,
    pub(super) special_use: Option<SpecialUse>,
    pub(super) messages: BTreeMap<u32, Entry>,
    /// Allocated UIDs whose message frame has not committed yet: every UID from the lowest
    /// of them up is hidden, so UIDs appear to clients in order.
    pub(super) pending: BTreeSet<u32>,
    /// The modseq of the latest expunge known (after a checkpoint: its HIGHESTMODSEQ, since
    /// earlier expunges are forgotten and VANISHED may over-report).
    pub(super) expunge_modseq: u64,
    pub(super) changes: u64,
}

impl Folder {
    pub(super) fn new(name: String, uidvalidity: u32, special_use: Option<SpecialUse>) -> Self {
        Folder {
            name,
            uidvalidity,
            uidnext: 1,
            durable_uidnext: 1,
            highest_modseq: 0,
            reserved_modseq: 0,
            special_use,
            messages: BTreeMap::new(),
            pending: BTreeSet::new(),
            expunge_modseq: 0,
            changes: 0,
        }
    }

    /// The messages clients may see: those below the lowest pending UID.
    pub(super) fn visible(&self) -> impl DoubleEndedIterator<Item = (&u32, &Entry)> + Clone {
        let limit = self.pending.first().copied().unwrap_or(u32::MAX);
        self.messages.range(..limit)
    }

    /// UIDNEXT as clients see it: no message will appear below it, and it never goes back,
    /// restarts included.
    pub(super) fn visible_uidnext(&self) -> u32 {
        self.pending
            .first()
            .map_or(self.durable_uidnext, |p| (*p).min(self.durable_uidnext))
    }

    pub(super) fn next_modseq(&mut self) -> u64 {
        let next = self.highest_modseq.max(self.reserved_modseq) + 1;
        self.reserved_modseq = next;
        next
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Body {
    pub(super) size: u64,
    /// Copies in this user's folders.
    pub(super) copies: u32,
}

/// One user's folders (no locks: [`super::Stores`] holds one per user behind a mutex).
#[derive(Debug)]
pub struct UserStore {
    pub(super) user: String,
    pub(super) folders: BTreeMap<FolderId, Folder>,
    pub(super) names: BTreeMap<String, FolderId>,
    pub(super) subscribed: BTreeSet<String>,
    pub(super) bodies: HashMap<QueueId, Body>,
    /// The sum of `bodies`' sizes, kept as they change: quotas ask for it per RCPT.
    pub(super) usage: u64,
    /// Above every folder id ever used: ids are never reused.
    pub(super) next_folder: FolderId,
    /// The highest UIDVALIDITY the user ever had: a new folder gets a greater one.
    pub(super) uidvalidity_floor: u32,
    /// The highest seq applied or handed out.
    pub(super) seq: u64,
    pub(super) applied_seq: u64,
    pub(super) records_since_checkpoint: u64,
    pub(super) max_folders: usize,
    pub(super) recovery: Option<Box<super::recovery::Recovery>>,
    /// POP3 UIDLs kept by bodies imported from another node (`relay user move`), from their
    /// message frames; no state record states them, so checkpoints leave them alone. An
    /// entry outlives its body until the next start (bounded by the bodies imported).
    pub(super) kept_uidls: HashMap<QueueId, Box<str>>,
}

/// Placements from message frames not yet applied, by folder and UID (recovery only).
pub(super) type PlacementIndex = BTreeMap<(FolderId, u32), (QueueId, Placement)>;

/// The HIGHESTMODSEQ a record's `FolderCounters` restates for a folder.
fn restated_highest(record: &MailboxState, folder: FolderId) -> u64 {
    record
        .ops
        .iter()
        .find_map(|op| match op {
            StateOp::FolderCounters {
                folder: f,
                highest_modseq,
                ..
            } if *f == folder => Some(*highest_modseq),
            _ => None,
        })
        .unwrap_or(0)
}

/// What a record's apply may need besides the store: sizes of bodies it does not hold (from
/// the replayed deliveries, or from before a Reset), and during recovery the placements not
/// yet applied, by folder and UID.
pub(super) struct ApplyCtx<'a> {
    pub(super) sizes: &'a HashMap<QueueId, u64>,
    pub(super) index: Option<&'a mut PlacementIndex>,
    /// Place ops whose body is unknown (no delivery replayed): dropped.
    pub(super) dangling: usize,
    /// The ops are a checkpoint's: what it does not restate below its counters is gone.
    pub(super) checkpoint: bool,
}

impl UserStore {
    pub fn new(user: &str) -> Self {
        let mut store = UserStore {
            user: user.to_string(),
            folders: BTreeMap::new(),
            names: BTreeMap::new(),
            subscribed: BTreeSet::new(),
            bodies: HashMap::new(),
            usage: 0,
            next_folder: INBOX + 1,
            uidvalidity_floor: INBOX_UIDVALIDITY,
            seq: 0,
            applied_seq: 0,
            records_since_checkpoint: 0,
            max_folders: DEFAULT_MAX_FOLDERS,
            recovery: None,
            kept_uidls: HashMap::new(),
        };
        store.ensure_inbox();
        store
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn set_max_folders(&mut self, max: usize) {
        self.max_folders = max;
    }

    fn ensure_inbox(&mut self) {
        if let std::collections::btree_map::Entry::Vacant(v) = self.folders.entry(INBOX) {
            v.insert(Folder::new(INBOX_NAME.to_string(), INBOX_UIDVALIDITY, None));
            self.names.insert(INBOX_NAME.to_string(), INBOX);
        }
    }

    /// Applies a record once it is durable (and at recovery). Every op states its result, so
    /// applying a record again, or one older than the last applied, changes nothing.
    pub fn apply(&mut self, record: &MailboxState) {
        let sizes = HashMap::new();
        let mut ctx = ApplyCtx {
            sizes: &sizes,
            index: None,
            dangling: 0,
            checkpoint: false,
        };
        self.apply_with(record, &mut ctx);
    }

    pub(super) fn apply_with(&mut self, record: &MailboxState, ctx: &mut ApplyCtx<'_>) {
        if record.seq <= self.applied_seq {
            return;
        }
        self.applied_seq = record.seq;
        self.seq = self.seq.max(record.seq);
        if !record.is_checkpoint() {
            self.records_since_checkpoint += 1;
            for op in &record.ops {
                self.apply_op(op, ctx);
            }
            return;
        }
        // A checkpoint restates what is durable; what is live only (pending allocations,
        // counters handed out) survives it, and no counter goes back.
        let old_folders = std::mem::take(&mut self.folders);
        let old_bodies = std::mem::take(&mut self.bodies);
        self.usage = 0;
        self.names.clear();
        self.subscribed.clear();
        self.ensure_inbox();
        let live = ctx.index.is_none();
        let mut sizes: HashMap<QueueId, u64> = ctx.sizes.clone();
        sizes.extend(old_bodies.iter().map(|(id, b)| (*id, b.size)));
        let mut inner = ApplyCtx {
            sizes: &sizes,
            index: ctx.index.as_deref_mut(),
            dangling: 0,
            checkpoint: true,
        };
        for op in &record.ops {
            self.apply_op(op, &mut inner);
        }
        ctx.dangling += inner.dangling;
        for (id, old) in old_folders {
            let Some(f) = self.folders.get_mut(&id) else {
                continue;
            };
            if f.uidvalidity != old.uidvalidity {
                continue;
            }
            f.uidnext = f.uidnext.max(old.uidnext);
            f.durable_uidnext = f.durable_uidnext.max(old.durable_uidnext);
            f.highest_modseq = f.highest_modseq.max(old.highest_modseq);
            f.reserved_modseq = f.reserved_modseq.max(old.reserved_modseq);
            f.expunge_modseq = f.expunge_modseq.max(old.expunge_modseq);
            f.changes = old.changes + 1;
            f.pending = old.pending;
            // Live, messages hidden behind a pending UID are restated with the modseq they
            // will show with: HIGHESTMODSEQ reports them only once they show (`reveal`).
            if live {
                f.highest_modseq = old.highest_modseq.max(restated_highest(record, id));
            }
        }
        self.records_since_checkpoint = 0;
    }

    /// One op that no record of this store carries (a POP3 deletion).
    pub(super) fn apply_unrecorded(&mut self, op: &StateOp) {
        let sizes = HashMap::new();
        let mut ctx = ApplyCtx {
            sizes: &sizes,
            index: None,
            dangling: 0,
            checkpoint: false,
        };
        self.apply_op(op, &mut ctx);
    }

    fn apply_op(&mut self, op: &StateOp, ctx: &mut ApplyCtx<'_>) {
        match op {
            StateOp::Reset => {}
            StateOp::CreateFolder {
                folder,
                name,
                uidvalidity,
                special_use,
            } => {
                self.next_folder = self.next_folder.max(folder.saturating_add(1));
                self.uidvalidity_floor = self.uidvalidity_floor.max(*uidvalidity);
                if *folder == INBOX {
                    return;
                }
                if let Some(f) = self.folders.get_mut(folder) {
                    self.names.remove(&f.name);
                    f.name = name.clone();
                    f.special_use = *special_use;
                    f.changes += 1;
                } else {
                    self.folders.insert(
                        *folder,
                        Folder::new(name.clone(), *uidvalidity, *special_use),
                    );
                }
                self.names.insert(name.clone(), *folder);
            }
            StateOp::RenameFolder { folder, name } => {
                if *folder == INBOX {
                    return;
                }
                if let Some(f) = self.folders.get_mut(folder) {
                    self.names.remove(&f.name);
                    f.name = name.clone();
                    f.changes += 1;
                    self.names.insert(name.clone(), *folder);
                }
            }
            StateOp::DeleteFolder { folder } => {
                if *folder == INBOX {
                    return;
                }
                if let Some(index) = ctx.index.as_deref_mut() {
                    index.retain(|(f, _), _| f != folder);
                }
                if let Some(f) = self.folders.remove(folder) {
                    self.names.remove(&f.name);
                    for e in f.messages.values() {
                        self.drop_copy(e.id);
                    }
                }
            }
            StateOp::Subscribe { name, subscribed } => {
                if *subscribed {
                    self.subscribed.insert(name.clone());
                } else {
                    self.subscribed.remove(name);
                }
            }
            StateOp::Place { id, placement } => {
                if let Some(index) = ctx.index.as_deref_mut() {
                    index.remove(&(placement.folder, placement.uid));
                }
                let size = match self.bodies.get(id) {
                    Some(b) => b.size,
                    None => match ctx.sizes.get(id) {
                        Some(s) => *s,
                        None => {
                            ctx.dangling += 1;
                            return;
                        }
                    },
                };
                self.place(*id, size, placement);
            }
            StateOp::SetFlags {
                folder,
                uid,
                flags,
                modseq,
            } => {
                self.materialize(*folder, *uid, ctx);
                let Some(f) = self.folders.get_mut(folder) else {
                    return;
                };
                if let Some(e) = f.messages.get_mut(uid) {
                    e.flags = Flags {
                        system: flags.system & system_flag::ALL,
                        keywords: flags.keywords.clone(),
                    };
                    e.modseq = *modseq;
                }
                f.highest_modseq = f.highest_modseq.max(*modseq);
                f.changes += 1;
            }
            StateOp::Expunge {
                folder,
                uids,
                modseq,
            } => {
                if let Some(index) = ctx.index.as_deref_mut() {
                    for uid in uids {
                        index.remove(&(*folder, *uid));
                    }
                }
                let Some(f) = self.folders.get_mut(folder) else {
                    return;
                };
                let mut gone = Vec::new();
                for uid in uids {
                    if let Some(e) = f.messages.remove(uid) {
                        gone.push(e.id);
                    }
                }
                f.highest_modseq = f.highest_modseq.max(*modseq);
                f.expunge_modseq = f.expunge_modseq.max(*modseq);
                f.changes += 1;
                for id in gone {
                    self.drop_copy(id);
                }
            }
            StateOp::FolderCounters {
                folder,
                uidnext,
                highest_modseq,
            } => {
                let Some(f) = self.folders.get_mut(folder) else {
                    return;
                };
                f.uidnext = f.uidnext.max(*uidnext);
                f.durable_uidnext = f.durable_uidnext.max(*uidnext);
                f.highest_modseq = f.highest_modseq.max(*highest_modseq);
                f.expunge_modseq = f.expunge_modseq.max(*highest_modseq);
                // A delivery below the restated UIDNEXT that the checkpoint does not place
                // was expunged before it (docs/MAILSTORE.md). Counters outside a checkpoint
                // (a user moved here, `relay user move`) restate nothing else.
                let checkpoint = ctx.checkpoint;
                if let Some(index) = ctx.index.as_deref_mut().filter(|_| checkpoint) {
                    let messages = &f.messages;
                    index.retain(|(fid, uid), _| {
                        fid != folder || *uid >= *uidnext || messages.contains_key(uid)
                    });
                }
            }
        }
    }

    /// During recovery, a change to a UID that only a message frame's placement holds so
    /// far: the placement lands first.
    fn materialize(&mut self, folder: FolderId, uid: u32, ctx: &mut ApplyCtx<'_>) {
        let Some(index) = ctx.index.as_deref_mut() else {
            return;
        };
        let Some((id, placement)) = index.remove(&(folder, uid)) else {
            return;
        };
        let size = match self.bodies.get(&id) {
            Some(b) => b.size,
            None => ctx.sizes.get(&id).copied().unwrap_or(0),
        };
        self.place(id, size, &placement);
    }

    /// Lands one copy, if its folder (the same incarnation) still exists.
    pub(super) fn place(&mut self, id: QueueId, size: u64, p: &Placement) -> bool {
        let Some(f) = self.folders.get_mut(&p.folder) else {
            return false;
        };
        if f.uidvalidity != p.uidvalidity {
            return false;
        }
        let entry = Entry {
            id,
            size,
            flags: Flags {
                system: p.flags.system & system_flag::ALL,
                keywords: p.flags.keywords.clone(),
            },
            internal_date: p.internal_date,
            zone_minutes: p.zone_minutes,
            modseq: p.modseq,
        };
        let replaced = f.messages.insert(p.uid, entry).map(|e| e.id);
        f.uidnext = f.uidnext.max(p.uid.saturating_add(1));
        f.durable_uidnext = f.durable_uidnext.max(p.uid.saturating_add(1));
        f.highest_modseq = f.highest_modseq.max(p.modseq);
        f.changes += 1;
        if replaced != Some(id) {
            if let Some(old) = replaced {
                self.drop_copy(old);
            }
            let body = self.bodies.entry(id).or_insert(Body { size, copies: 0 });
            if body.copies == 0 {
                self.usage += body.size;
            }
            body.copies += 1;
        }
        true
    }

    pub(super) fn drop_copy(&mut self, id: QueueId) {
        if let Some(b) = self.bodies.get_mut(&id) {
            b.copies = b.copies.saturating_sub(1);
            if b.copies == 0 {
                self.usage = self.usage.saturating_sub(b.size);
                self.bodies.remove(&id);
            }
        }
    }

    pub(super) fn folder(&self, folder: FolderId) -> Result<&Folder, StoreError> {
        self.folders
            .get(&folder)
            .ok_or(StoreError::NoSuchFolderId(folder))
    }

    pub(super) fn folder_mut(&mut self, folder: FolderId) -> Result<&mut Folder, StoreError> {
        self.folders
            .get_mut(&folder)
            .ok_or(StoreError::NoSuchFolderId(folder))
    }

    // ---- queries ----

    /// The folder of a name (any case of INBOX).
    pub fn folder_id(&self, name: &str) -> Option<FolderId> {
        let name = names::canonical(name).ok()?;
        self.names.get(&name).copied()
    }

    pub fn folder_name(&self, folder: FolderId) -> Option<&str> {
        self.folders.get(&folder).map(|f| f.name.as_str())
    }

    /// Every folder, and every name that only has folders below it (not selectable), by name.
    pub fn list(&self) -> Vec<ListEntry> {
        let mut all: BTreeSet<&str> = BTreeSet::new();
        for name in self.names.keys() {
            all.insert(name);
            all.extend(names::superiors(name));
        }
        all.iter()
            .map(|name| {
                let folder = self.names.get(*name).copied();
                let below = format!("{name}{}", names::DELIMITER);
                let has_children = all
                    .range::<str, _>((
                        std::ops::Bound::Excluded(below.as_str()),
                        std::ops::Bound::Unbounded,
                    ))
                    .next()
                    .is_some_and(|n| n.starts_with(&below));
                ListEntry {
                    name: name.to_string(),
                    folder,
                    special_use: folder
                        .and_then(|f| self.folders.get(&f))
                        .and_then(|f| f.special_use),
                    subscribed: self.subscribed.contains(*name),
                    has_children,
                }
            })
            .collect()
    }

    /// Subscribed names, existing or not (RFC 9051 keeps them).
    pub fn subscriptions(&self) -> impl Iterator<Item = &str> {
        self.subscribed.iter().map(String::as_str)
    }

    pub fn status(&self, folder: FolderId) -> Result<Status, StoreError> {
        let f = self.folder(folder)?;
        let mut s = Status {
            messages: 0,
            unseen: 0,
            deleted: 0,
            size: 0,
            deleted_size: 0,
            uidnext: f.visible_uidnext(),
            uidvalidity: f.uidvalidity,
            highest_modseq: f.highest_modseq,
        };
        for (_, e) in f.visible() {
            s.messages += 1;
            s.size += e.size;
            if e.flags.system & system_flag::SEEN == 0 {
                s.unseen += 1;
            }
            if e.flags.system & system_flag::DELETED != 0 {
                s.deleted += 1;
                s.deleted_size += e.size;
            }
        }
        Ok(s)
    }

    /// What SELECT shows: the visible messages in UID order.
    pub fn snapshot(&self, folder: FolderId) -> Result<Snapshot, StoreError> {
        let f = self.folder(folder)?;
        Ok(Snapshot {
            uidvalidity: f.uidvalidity,
            uidnext: f.visible_uidnext(),
            highest_modseq: f.highest_modseq,
            changes: f.changes,
            messages: f.visible().map(|(u, e)| (*u, e.clone())).collect(),
        })
    }

    /// A folder's version and its visible messages in UID order, borrowed: a
    /// [`snapshot`](Self::snapshot) without copying the entries.
    pub fn visible(
        &self,
        folder: FolderId,
    ) -> Result<
        (
            Version,
            impl DoubleEndedIterator<Item = (u32, &Entry)> + Clone + '_,
        ),
        StoreError,
    > {
        let f = self.folder(folder)?;
        let version = Version {
            uidvalidity: f.uidvalidity,
            uidnext: f.visible_uidnext(),
            highest_modseq: f.highest_modseq,
            changes: f.changes,
        };
        Ok((version, f.visible().map(|(u, e)| (*u, e))))
    }

    /// For CONDSTORE/QRESYNC: visible messages changed after `modseq`, and whether anything
    /// may have been expunged after it (VANISHED may over-report, RFC 7162 §3.2.5.1).
    pub fn changes_since(&self, folder: FolderId, modseq: u64) -> Result<Changes, StoreError> {
        let f = self.folder(folder)?;
        Ok(Changes {
            changed: f
                .visible()
                .filter(|(_, e)| e.modseq > modseq)
                .map(|(u, e)| (*u, e.clone()))
                .collect(),
            expunged: f.expunge_modseq > modseq,
            highest_modseq: f.highest_modseq,
        })
    }

    /// One visible message of a folder.
    pub fn entry(&self, folder: FolderId, uid: u32) -> Option<&Entry> {
        let f = self.folders.get(&folder)?;
        let hidden = f.pending.first().is_some_and(|p| uid >= *p);
        f.messages.get(&uid).filter(|_| !hidden)
    }

    /// Grows whenever anything in the folder may have changed: a session compares it to
    /// know, cheaply, whether to look.
    pub fn change_counter(&self, folder: FolderId) -> Result<u64, StoreError> {
        Ok(self.folder(folder)?.changes)
    }

    /// Bytes stored for the user: each body once, however many folders hold a copy (the
    /// spool stores it once).
    pub fn usage(&self) -> u64 {
        debug_assert_eq!(
            self.usage,
            self.bodies.values().map(|b| b.size).sum::<u64>()
        );
        self.usage
    }

    pub fn message_count(&self) -> usize {
        self.folders.values().map(|f| f.messages.len()).sum()
    }

    /// Whether any folder of the user holds a copy of the message.
    pub fn holds(&self, id: QueueId) -> bool {
        self.bodies.contains_key(&id)
    }

    /// Whether enough records accumulated since the last checkpoint that one pays for itself.
    pub fn needs_checkpoint(&self) -> bool {
        self.records_since_checkpoint > (2 * self.message_count() as u64).max(1000)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListEntry {
    pub name: String,
    /// None: no folder of this name, only folders below it (`\Noselect`/`\NonExistent`).
    pub folder: Option<FolderId>,
    pub special_use: Option<SpecialUse>,
    pub subscribed: bool,
    pub has_children: bool,
}

impl ListEntry {
    pub fn selectable(&self) -> bool {
        self.folder.is_some()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    pub messages: u32,
    pub unseen: u32,
    pub deleted: u32,
    pub size: u64,
    /// Octets of the `\Deleted` messages (RFC 9208 DELETED-STORAGE).
    pub deleted_size: u64,
    pub uidnext: u32,
    pub uidvalidity: u32,
    pub highest_modseq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub uidvalidity: u32,
    pub uidnext: u32,
    pub highest_modseq: u64,
    /// The folder's [`UserStore::change_counter`] when taken.
    pub changes: u64,
    pub messages: Vec<(u32, Entry)>,
}

/// What tells one state of a folder from another, as clients see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    pub uidvalidity: u32,
    pub uidnext: u32,
    pub highest_modseq: u64,
    /// The folder's [`UserStore::change_counter`].
    pub changes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changes {
    pub changed: Vec<(u32, Entry)>,
    pub expunged: bool,
    pub highest_modseq: u64,
}
