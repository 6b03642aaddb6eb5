//! The changes: each is validated against the store and answered with the record that makes
//! it, with the next seq and the modseqs and UIDs it takes; nothing changes until the record
//! is durable and [`UserStore::apply`] runs.

use std::collections::{BTreeSet, HashMap};

use super::error::StoreError;
use super::model::{Entry, UserStore};
use super::names::{self, FlagMode};
use crate::envelope::QueueId;
use crate::spool::state::{
    system_flag, Flags, FolderId, MailboxState, Placement, SpecialUse, StateOp, INBOX,
};

/// The folders [`UserStore::ensure_defaults`] creates, with their roles (RFC 6154).
pub const DEFAULT_FOLDERS: [(&str, SpecialUse); 5] = [
    ("Sent", SpecialUse::Sent),
    ("Drafts", SpecialUse::Drafts),
    ("Trash", SpecialUse::Trash),
    ("Junk", SpecialUse::Junk),
    ("Archive", SpecialUse::Archive),
];

/// STORE's answer: the record (None when no flag changes) and the UIDs whose modseq was
/// above UNCHANGEDSINCE (RFC 7162 `MODIFIED`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOutcome {
    pub record: Option<MailboxState>,
    pub failed: Vec<u32>,
}

/// COPY's and MOVE's answer: the record (None when no UID matched) and `COPYUID`'s pairs
/// (source UID, destination UID) in source order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyOutcome {
    pub record: Option<MailboxState>,
    pub pairs: Vec<(u32, u32)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpungeOutcome {
    pub record: Option<MailboxState>,
    pub uids: Vec<u32>,
}

/// A copy's Place ops and its (source, destination) UID pairs.
type CopyOps = (Vec<StateOp>, Vec<(u32, u32)>);

impl UserStore {
    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// A record of `ops` with the next seq, and the messages of which the ops leave this user
    /// no copy.
    pub(super) fn record(&mut self, ops: Vec<StateOp>) -> MailboxState {
        let released = self.released_by(&ops);
        MailboxState {
            user: self.user.clone(),
            seq: self.next_seq(),
            ops,
            released,
        }
    }

    fn released_by(&self, ops: &[StateOp]) -> Vec<QueueId> {
        let mut delta: HashMap<QueueId, i64> = HashMap::new();
        for op in ops {
            match op {
                StateOp::Place { id, .. } => *delta.entry(*id).or_default() += 1,
                StateOp::Expunge { folder, uids, .. } => {
                    if let Some(f) = self.folders.get(folder) {
                        for uid in uids {
                            if let Some(e) = f.messages.get(uid) {
                                *delta.entry(e.id).or_default() -= 1;
                            }
                        }
                    }
                }
                StateOp::DeleteFolder { folder } => {
                    if let Some(f) = self.folders.get(folder) {
                        for e in f.messages.values() {
                            *delta.entry(e.id).or_default() -= 1;
                        }
                    }
                }
                _ => {}
            }
        }
        let mut released: Vec<QueueId> = delta
            .into_iter()
            .filter(|(id, d)| {
                *d < 0 && i64::from(self.bodies.get(id).map_or(0, |b| b.copies)) + d <= 0
            })
            .map(|(id, _)| id)
            .collect();
        released.sort();
        released
    }

    fn new_uidvalidity(&mut self, now: i64) -> Result<u32, StoreError> {
        let clock = u32::try_from(now.max(0)).unwrap_or(u32::MAX);
        let next = self
            .uidvalidity_floor
            .checked_add(1)
            .ok_or(StoreError::UidValidityExhausted)?
            .max(clock);
        self.uidvalidity_floor = next;
        Ok(next)
    }

    fn new_folder_id(&mut self) -> Result<FolderId, StoreError> {
        let id = self.next_folder;
        self.next_folder = id.checked_add(1).ok_or(StoreError::TooManyFolders {
            max: self.max_folders,
        })?;
        Ok(id)
    }

    /// CreateFolder ops for `name` and for each superior that is not a folder yet (RFC 9051
    /// says the server SHOULD create them), outermost first.
    fn create_ops(
        &mut self,
        name: &str,
        special_use: Option<SpecialUse>,
        now: i64,
    ) -> Result<Vec<StateOp>, StoreError> {
        let mut missing: Vec<&str> = names::superiors(name)
            .filter(|n| !self.names.contains_key(*n))
            .collect();
        missing.push(name);
        if self.folders.len() + missing.len() > self.max_folders {
            return Err(StoreError::TooManyFolders {
                max: self.max_folders,
            });
        }
        let mut ops = Vec::with_capacity(missing.len());
        let last = missing.len() - 1;
        for (i, n) in missing.into_iter().enumerate() {
            ops.push(StateOp::CreateFolder {
                folder: self.new_folder_id()?,
                name: n.to_string(),
                uidvalidity: self.new_uidvalidity(now)?,
                special_use: if i == last { special_use } else { None },
            });
        }
        Ok(ops)
    }

    pub fn create_folder(
        &mut self,
        name: &str,
        special_use: Option<SpecialUse>,
        now: i64,
    ) -> Result<MailboxState, StoreError> {
        let name = names::canonical(name)?;
        if self.names.contains_key(&name) {
            return Err(StoreError::AlreadyExists);
        }
        let ops = self.create_ops(&name, special_use, now)?;
        Ok(self.record(ops))
    }

    /// RENAME (RFC 9051 §6.3.6): inferiors move with the folder; missing superiors of the new
    /// name are created. Renaming INBOX moves its messages (keeping their UIDs, under the new
    /// folder's UIDVALIDITY) to a new folder and leaves INBOX, and INBOX's inferiors, in place.
    pub fn rename_folder(
        &mut self,
        from: &str,
        to: &str,
        now: i64,
    ) -> Result<MailboxState, StoreError> {
        let from = names::canonical(from)?;
        let to = names::canonical(to)?;
        let Some(&folder) = self.names.get(&from) else {
            return Err(StoreError::NoSuchFolder);
        };
        if self.names.contains_key(&to) {
            return Err(StoreError::AlreadyExists);
        }
        if folder == INBOX {
            return self.rename_inbox(&to, now);
        }
        if names::is_inferior(&to, &from) {
            return Err(StoreError::RenameIntoItself);
        }
        let mut moves: Vec<(FolderId, String)> = vec![(folder, to.clone())];
        for (name, id) in &self.names {
            if names::is_inferior(name, &from) {
                let renamed = format!("{to}{}", &name[from.len()..]);
                if self.names.contains_key(&renamed) {
                    return Err(StoreError::AlreadyExists);
                }
                if renamed.len() > names::MAX_NAME_BYTES {
                    return Err(StoreError::NameTooLong {
                        max: names::MAX_NAME_BYTES,
                    });
                }
                moves.push((*id, renamed));
            }
        }
        // (No superior of the new name is among the moved folders: that would be a rename
        // into itself.)
        let mut ops = {
            let mut superiors: Vec<StateOp> = Vec::new();
            let missing: Vec<String> = names::superiors(&to)
                .filter(|n| !self.names.contains_key(*n))
                .map(str::to_string)
                .collect();
            if self.folders.len() + missing.len() > self.max_folders {
                return Err(StoreError::TooManyFolders {
                    max: self.max_folders,
                });
            }
            for n in missing {
                superiors.push(StateOp::CreateFolder {
                    folder: self.new_folder_id()?,
                    name: n,
                    uidvalidity: self.new_uidvalidity(now)?,
                    special_use: None,
                });
            }
            superiors
        };
        ops.extend(
            moves
                .into_iter()
                .map(|(folder, name)| StateOp::RenameFolder { folder, name }),
        );
        Ok(self.record(ops))
    }

    fn rename_inbox(&mut self, to: &str, now: i64) -> Result<MailboxState, StoreError> {
        let mut ops = self.create_ops(to, None, now)?;
        let (new_folder, uidvalidity) = match ops.last() {
            Some(StateOp::CreateFolder {
                folder,
                uidvalidity,
                ..
            }) => (*folder, *uidvalidity),
            _ => return Err(StoreError::NoSuchFolder),
        };
        let inbox = self.folder(INBOX)?;
        let moved: Vec<(u32, Entry)> = inbox.visible().map(|(u, e)| (*u, e.clone())).collect();
        if moved.is_empty() {
            return Ok(self.record(ops));
        }
        let uids: Vec<u32> = moved.iter().map(|(u, _)| *u).collect();
        for (uid, e) in moved {
            let mut placement = e.placement(new_folder, uidvalidity, uid);
            placement.modseq = 1;
            ops.push(StateOp::Place {
                id: e.id,
                placement,
            });
        }
        let modseq = self.folder_mut(INBOX)?.next_modseq();
        ops.push(StateOp::Expunge {
            folder: INBOX,
            uids,
            modseq,
        });
        Ok(self.record(ops))
    }

    /// DELETE (RFC 9051 §6.3.5): the folder and its messages go; its inferiors stay, and its
    /// name then lists as not selectable while they exist. A name that is not a folder (only
    /// a superior of folders, `\Noselect`) cannot be deleted.
    pub fn delete_folder(&mut self, name: &str) -> Result<MailboxState, StoreError> {
        let name = names::canonical(name)?;
        let Some(&folder) = self.names.get(&name) else {
            return Err(StoreError::NoSuchFolder);
        };
        if folder == INBOX {
            return Err(StoreError::InboxCannotBeDeleted);
        }
        Ok(self.record(vec![StateOp::DeleteFolder { folder }]))
    }

    /// SUBSCRIBE/UNSUBSCRIBE: any valid name, existing or not. None when nothing changes.
    pub fn subscribe(
        &mut self,
        name: &str,
        subscribed: bool,
    ) -> Result<Option<MailboxState>, StoreError> {
        let name = names::canonical(name)?;
        if self.subscribed.contains(&name) == subscribed {
            return Ok(None);
        }
        if subscribed && self.subscribed.len() >= self.max_folders {
            return Err(StoreError::TooManyFolders {
                max: self.max_folders,
            });
        }
        Ok(Some(
            self.record(vec![StateOp::Subscribe { name, subscribed }]),
        ))
    }

    /// STORE (RFC 9051 §6.4.6, RFC 7162 UNCHANGEDSINCE) on the visible messages among `uids`
    /// (others are ignored). Only messages whose flags change get a modseq, all the same one.
    pub fn store_flags(
        &mut self,
        folder: FolderId,
        uids: &[u32],
        mode: FlagMode,
        flags: &Flags,
        unchanged_since: Option<u64>,
    ) -> Result<StoreOutcome, StoreError> {
        let given = names::normalize(flags)?;
        let f = self.folder(folder)?;
        let wanted: BTreeSet<u32> = uids.iter().copied().collect();
        let mut failed = Vec::new();
        let mut changes: Vec<(u32, Flags)> = Vec::new();
        for (uid, e) in f.visible().filter(|(u, _)| wanted.contains(u)) {
            if unchanged_since.is_some_and(|since| e.modseq > since) {
                failed.push(*uid);
                continue;
            }
            let current = names::normalize(&e.flags)?;
            let new = names::combine(&current, mode, &given)?;
            if new != current {
                changes.push((*uid, new));
            }
        }
        if changes.is_empty() {
            return Ok(StoreOutcome {
                record: None,
                failed,
            });
        }
        let modseq = self.folder_mut(folder)?.next_modseq();
        let ops = changes
            .into_iter()
            .map(|(uid, flags)| StateOp::SetFlags {
                folder,
                uid,
                flags,
                modseq,
            })
            .collect();
        Ok(StoreOutcome {
            record: Some(self.record(ops)),
            failed,
        })
    }

    /// Place ops copying the visible messages among `uids` of `from` to `to`, flags and
    /// internal date kept, new UIDs taken now (a failed commit leaves a hole).
    fn copy_ops(
        &mut self,
        from: FolderId,
        uids: &[u32],
        to: FolderId,
    ) -> Result<CopyOps, StoreError> {
        let wanted: BTreeSet<u32> = uids.iter().copied().collect();
        let source: Vec<(u32, Entry)> = self
            .folder(from)?
            .visible()
            .filter(|(u, _)| wanted.contains(u))
            .map(|(u, e)| (*u, e.clone()))
            .collect();
        let dest = self.folder_mut(to)?;
        if source.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let count = u32::try_from(source.len()).map_err(|_| StoreError::UidsExhausted)?;
        let first = dest.uidnext;
        let end = first
            .checked_add(count)
            .filter(|end| *end < u32::MAX)
            .ok_or(StoreError::UidsExhausted)?;
        dest.uidnext = end;
        let modseq = dest.next_modseq();
        let uidvalidity = dest.uidvalidity;
        let mut ops = Vec::with_capacity(source.len());
        let mut pairs = Vec::with_capacity(source.len());
        for ((uid, e), new_uid) in source.into_iter().zip(first..) {
            let mut placement = e.placement(to, uidvalidity, new_uid);
            placement.modseq = modseq;
            ops.push(StateOp::Place {
                id: e.id,
                placement,
            });
            pairs.push((uid, new_uid));
        }
        Ok((ops, pairs))
    }

    pub fn copy(
        &mut self,
        from: FolderId,
        uids: &[u32],
        to: FolderId,
    ) -> Result<CopyOutcome, StoreError> {
        let (ops, pairs) = self.copy_ops(from, uids, to)?;
        let record = (!ops.is_empty()).then(|| self.record(ops));
        Ok(CopyOutcome { record, pairs })
    }

    /// MOVE (RFC 6851): the copy and the expunge in one record, so no crash leaves both or
    /// neither.
    pub fn move_(
        &mut self,
        from: FolderId,
        uids: &[u32],
        to: FolderId,
    ) -> Result<CopyOutcome, StoreError> {
        let (mut ops, pairs) = self.copy_ops(from, uids, to)?;
        if ops.is_empty() {
            return Ok(CopyOutcome {
                record: None,
                pairs,
            });
        }
        let modseq = self.folder_mut(from)?.next_modseq();
        ops.push(StateOp::Expunge {
            folder: from,
            uids: pairs.iter().map(|(u, _)| *u).collect(),
            modseq,
        });
        Ok(CopyOutcome {
            record: Some(self.record(ops)),
            pairs,
        })
    }

    /// EXPUNGE, or UID EXPUNGE with `uids`: the visible messages flagged `\Deleted`.
    pub fn expunge(
        &mut self,
        folder: FolderId,
        uids: Option<&[u32]>,
    ) -> Result<ExpungeOutcome, StoreError> {
        let wanted: Option<BTreeSet<u32>> = uids.map(|u| u.iter().copied().collect());
        let gone: Vec<u32> = self
            .folder(folder)?
            .visible()
            .filter(|(u, e)| {
                e.flags.system & system_flag::DELETED != 0
                    && wanted.as_ref().is_none_or(|w| w.contains(u))
            })
            .map(|(u, _)| *u)
            .collect();
        if gone.is_empty() {
            return Ok(ExpungeOutcome {
                record: None,
                uids: gone,
            });
        }
        let modseq = self.folder_mut(folder)?.next_modseq();
        let record = self.record(vec![StateOp::Expunge {
            folder,
            uids: gone.clone(),
            modseq,
        }]);
        Ok(ExpungeOutcome {
            record: Some(record),
            uids: gone,
        })
    }

    /// At first login: the SPECIAL-USE folders (RFC 6154) a client expects, subscribed, for
    /// each role no folder has and whose name is free. None when there is nothing to create
    /// (or no room for it: the defaults are a convenience).
    pub fn ensure_defaults(&mut self, now: i64) -> Option<MailboxState> {
        self.ensure_roles(&DEFAULT_FOLDERS, now)
    }

    /// Before mail is filed under `role` (the Junk folder of the sender checks): the default
    /// folder of that role, as [`ensure_defaults`](Self::ensure_defaults) would create it,
    /// when no folder has the role and its name is free. None when there is nothing to do or
    /// no room: [`role_folder`](Self::role_folder) then says where the mail goes.
    pub fn ensure_role(&mut self, role: SpecialUse, now: i64) -> Option<MailboxState> {
        let wanted: Vec<(&str, SpecialUse)> = DEFAULT_FOLDERS
            .into_iter()
            .filter(|(_, r)| *r == role)
            .collect();
        self.ensure_roles(&wanted, now)
    }

    /// The folder mail filed under `role` goes to: the first with that role, else one with
    /// the role's default name (a folder the user made before the roles existed).
    pub fn role_folder(&self, role: SpecialUse) -> Option<FolderId> {
        if let Some((id, _)) = self
            .folders
            .iter()
            .find(|(_, f)| f.special_use == Some(role))
        {
            return Some(*id);
        }
        let (name, _) = DEFAULT_FOLDERS.into_iter().find(|(_, r)| *r == role)?;
        self.names.get(name).copied()
    }

    fn ensure_roles(&mut self, roles: &[(&str, SpecialUse)], now: i64) -> Option<MailboxState> {
        let mut ops = Vec::new();
        let mut created = 0;
        for &(name, role) in roles {
            let has_role = self.folders.values().any(|f| f.special_use == Some(role));
            if has_role || self.names.contains_key(name) {
                continue;
            }
            if self.folders.len() + created >= self.max_folders {
                break;
            }
            created += 1;
            let (Ok(folder), Ok(uidvalidity)) = (self.new_folder_id(), self.new_uidvalidity(now))
            else {
                break;
            };
            ops.push(StateOp::CreateFolder {
                folder,
                name: name.to_string(),
                uidvalidity,
                special_use: Some(role),
            });
            if !self.subscribed.contains(name) {
                ops.push(StateOp::Subscribe {
                    name: name.to_string(),
                    subscribed: true,
                });
            }
        }
        (!ops.is_empty()).then(|| self.record(ops))
    }

    /// A POP3 session's DELEs as a state record: the INBOX copies of `ids` expunged, and
    /// `released` only the messages no other folder holds. For a user with folders this is
    /// what must be written instead of a `MailboxDeletion`, which the spool takes as the end
    /// of the user's every reference. None when INBOX holds none of them.
    pub fn pop3_delete(&mut self, ids: &[QueueId]) -> Result<Option<MailboxState>, StoreError> {
        let ids: BTreeSet<QueueId> = ids.iter().copied().collect();
        let uids: Vec<u32> = self
            .folder(INBOX)?
            .messages
            .iter()
            .filter(|(_, e)| ids.contains(&e.id))
            .map(|(u, _)| *u)
            .collect();
        if uids.is_empty() {
            return Ok(None);
        }
        let modseq = self.folder_mut(INBOX)?.next_modseq();
        Ok(Some(self.record(vec![StateOp::Expunge {
            folder: INBOX,
            uids,
            modseq,
        }])))
    }

    // ---- deliveries ----

    /// Takes the next UID of `folder` for a delivery or an APPEND and holds it pending: the
    /// folder shows nothing from that UID up until [`delivered`](Self::delivered) or
    /// [`abandoned`](Self::abandoned).
    pub fn allocate(
        &mut self,
        folder: FolderId,
        flags: &Flags,
        internal_date: i64,
        zone_minutes: i16,
    ) -> Result<Placement, StoreError> {
        let flags = names::normalize(flags)?;
        let f = self.folder_mut(folder)?;
        let uid = f.uidnext;
        if uid == u32::MAX {
            return Err(StoreError::UidsExhausted);
        }
        f.uidnext = uid + 1;
        f.pending.insert(uid);
        let modseq = f.next_modseq();
        Ok(Placement {
            folder,
            uidvalidity: f.uidvalidity,
            uid,
            flags,
            internal_date,
            zone_minutes,
            modseq,
        })
    }

    /// The message frame carrying `placement` committed. Answers a record to write when there
    /// is one: messages that became visible now with a modseq a client may already have
    /// passed get a fresh one (else CHANGEDSINCE would miss them), and a delivery whose
    /// folder was deleted meanwhile is released.
    pub fn delivered(
        &mut self,
        id: QueueId,
        size: u64,
        placement: &Placement,
    ) -> Option<MailboxState> {
        let lands = self
            .folders
            .get(&placement.folder)
            .is_some_and(|f| f.uidvalidity == placement.uidvalidity);
        if !lands {
            return (!self.holds(id)).then(|| MailboxState {
                user: self.user.clone(),
                seq: self.next_seq(),
                ops: Vec::new(),
                released: vec![id],
            });
        }
        let f = self.folders.get(&placement.folder)?;
        let before = f.visible_uidnext();
        let highest_before = f.highest_modseq;
        self.place(id, size, placement);
        // A hidden message's modseq is not reported until it shows (see `reveal`).
        if let Some(f) = self.folders.get_mut(&placement.folder) {
            f.highest_modseq = highest_before;
        }
        self.reveal(
            placement.folder,
            before,
            Some((placement.uid, highest_before)),
        )
    }

    /// The message frame for `placement` did not commit: its UID becomes a hole.
    pub fn abandoned(&mut self, folder: FolderId, uid: u32) -> Option<MailboxState> {
        self.unpend(folder, uid)
    }

    fn unpend(&mut self, folder: FolderId, uid: u32) -> Option<MailboxState> {
        let f = self.folders.get_mut(&folder)?;
        let before = f.visible_uidnext();
        if !f.pending.remove(&uid) {
            return None;
        }
        self.reveal(folder, before, None)
    }

    /// After a pending UID resolved: the messages now visible that were not before.
    fn reveal(
        &mut self,
        folder: FolderId,
        before: u32,
        just_delivered: Option<(u32, u64)>,
    ) -> Option<MailboxState> {
        let f = self.folders.get_mut(&folder)?;
        if let Some((uid, _)) = just_delivered {
            f.pending.remove(&uid);
        }
        let after = f.visible_uidnext();
        if after == before {
            return None;
        }
        f.changes += 1;
        if let Some(top) = f.messages.range(before..after).map(|(_, e)| e.modseq).max() {
            f.highest_modseq = f.highest_modseq.max(top);
        }
        let stale: Vec<(u32, Flags)> = f
            .messages
            .range(before..after)
            .filter(|(uid, e)| match just_delivered {
                Some((d, highest_before)) if d == **uid => e.modseq <= highest_before,
                _ => true,
            })
            .map(|(uid, e)| (*uid, e.flags.clone()))
            .collect();
        if stale.is_empty() {
            return None;
        }
        let modseq = f.next_modseq();
        let ops = stale
            .into_iter()
            .map(|(uid, flags)| StateOp::SetFlags {
                folder,
                uid,
                flags,
                modseq,
            })
            .collect();
        Some(self.record(ops))
    }

    /// A checkpoint: Reset, then the whole durable store restated (docs/MAILSTORE.md). UIDNEXT
    /// is restated as clients see it (below any pending UID), so a delivery committing after
    /// the checkpoint is not taken for one expunged before it. The counters of deleted folders
    /// (the highest folder id and UIDVALIDITY ever used) survive as a folder created and
    /// deleted in the same record.
    pub fn checkpoint(&mut self) -> MailboxState {
        let mut ops = vec![StateOp::Reset];
        let max_id = self.folders.keys().next_back().copied().unwrap_or(INBOX);
        let max_uv = self
            .folders
            .values()
            .map(|f| f.uidvalidity)
            .max()
            .unwrap_or(0);
        let last_id = self.next_folder.saturating_sub(1);
        if last_id > max_id || self.uidvalidity_floor > max_uv {
            ops.push(StateOp::CreateFolder {
                folder: last_id.max(max_id + 1),
                name: String::new(),
                uidvalidity: self.uidvalidity_floor,
                special_use: None,
            });
            ops.push(StateOp::DeleteFolder {
                folder: last_id.max(max_id + 1),
            });
        }
        for (id, f) in &self.folders {
            if *id != INBOX {
                ops.push(StateOp::CreateFolder {
                    folder: *id,
                    name: f.name.clone(),
                    uidvalidity: f.uidvalidity,
                    special_use: f.special_use,
                });
            }
        }
        for name in &self.subscribed {
            ops.push(StateOp::Subscribe {
                name: name.clone(),
                subscribed: true,
            });
        }
        for (id, f) in &self.folders {
            ops.push(StateOp::FolderCounters {
                folder: *id,
                uidnext: f.visible_uidnext(),
                highest_modseq: f.highest_modseq,
            });
        }
        for (id, f) in &self.folders {
            for (uid, e) in &f.messages {
                ops.push(StateOp::Place {
                    id: e.id,
                    placement: e.placement(*id, f.uidvalidity, *uid),
                });
            }
        }
        MailboxState {
            user: self.user.clone(),
            seq: self.next_seq(),
            ops,
            released: Vec::new(),
        }
    }
}
