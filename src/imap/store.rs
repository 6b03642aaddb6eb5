//! What the session needs from a user's mail store: the [`Mailboxes`] trait, and the
//! request/answer pair the session exchanges with its driver.
//!
//! The session never calls the store itself. It emits [`Request`] in
//! [`Event::Store`](super::session::Event::Store) and is resumed with the [`Answer`]
//! (as POP3 is with `Event::Lock`), because the real store answers writes only once their
//! record is durable, on another task. A driver that owns a synchronous store answers with
//! [`serve`]; the tests do so with [`memory::Memory`].

use std::sync::Arc;

/// A folder while it is selected: the store's number for it, stable across renames.
pub type FolderId = u32;

/// The system flags as bits; `\Recent` is per session and never stored.
pub mod system_flag {
    pub const SEEN: u8 = 1 << 0;
    pub const ANSWERED: u8 = 1 << 1;
    pub const FLAGGED: u8 = 1 << 2;
    pub const DELETED: u8 = 1 << 3;
    pub const DRAFT: u8 = 1 << 4;
}

/// A message's flags: system flags and keywords (compared case-insensitively).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flags {
    pub system: u8,
    pub keywords: Vec<String>,
}

impl Flags {
    pub fn has_keyword(&self, keyword: &str) -> bool {
        self.keywords
            .iter()
            .any(|k| k.eq_ignore_ascii_case(keyword))
    }

    /// Applies a STORE: `+FLAGS`, `-FLAGS` or `FLAGS`.
    pub fn apply(&mut self, op: FlagOp, flags: &Flags) {
        match op {
            FlagOp::Replace => *self = flags.clone(),
            FlagOp::Add => {
                self.system |= flags.system;
                for k in &flags.keywords {
                    if !self.has_keyword(k) {
                        self.keywords.push(k.clone());
                    }
                }
            }
            FlagOp::Remove => {
                self.system &= !flags.system;
                self.keywords.retain(|k| !flags.has_keyword(k));
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagOp {
    Replace,
    Add,
    Remove,
}

/// The SPECIAL-USE role of a folder (RFC 6154).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecialUse {
    Sent,
    Drafts,
    Trash,
    Junk,
    Archive,
}

/// One folder as LIST shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderInfo {
    /// The full name, `/`-separated.
    pub name: String,
    pub special_use: Option<SpecialUse>,
    pub subscribed: bool,
}

/// STATUS data of one folder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FolderStatus {
    pub messages: u32,
    pub unseen: u32,
    pub deleted: u32,
    pub uidnext: u32,
    pub uidvalidity: u32,
    pub highest_modseq: u64,
    /// Sum of the messages' sizes (RFC 8438 STATUS=SIZE).
    pub size: u64,
    /// Sum of the sizes of the messages with `\Deleted` (RFC 9208 DELETED-STORAGE), octets.
    pub deleted_size: u64,
}

/// The user's storage quota (RFC 9208). Sizes are in octets here; the session reports
/// them in the protocol's units of 1024 octets (used rounded up, the limit down).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quota {
    /// Octets the user's messages take, in all folders.
    pub storage_used_bytes: u64,
    /// `None`: no storage limit (then the user has no quota root).
    pub storage_limit_bytes: Option<u64>,
    /// Messages in all folders.
    pub messages: u64,
}

/// What the session keeps of one message of the selected folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageMeta {
    pub uid: u32,
    pub flags: Flags,
    pub size: u32,
    /// Seconds since the epoch and the zone (minutes east of UTC) it was given in.
    pub internal_date: i64,
    pub zone_minutes: i16,
    pub modseq: u64,
}

/// A folder as SELECT sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub folder: FolderId,
    pub uidvalidity: u32,
    pub uidnext: u32,
    pub highest_modseq: u64,
    pub messages: View,
}

/// A folder's messages in UID order, as one version of the folder showed them. Shared:
/// every session with the folder selected at that version holds the same one (so a session
/// idling in a large folder costs a pointer, not a copy of the folder), and a session
/// copies it only to apply changes of its own before it next asks the store.
pub type View = Arc<Vec<MessageMeta>>;

/// The folder as it is now, when it changed since the session last asked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// `None`: nothing changed. The session announces the difference between what it
    /// shows and this (expunges, flag changes, new messages) and then shows this.
    pub view: Option<View>,
    pub uidnext: u32,
    pub highest_modseq: u64,
}

/// The outcome of a STORE.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stored {
    /// The messages changed, with their new flags and modseq.
    pub updated: Vec<(u32, Flags, u64)>,
    /// UIDs whose modseq was above UNCHANGEDSINCE (RFC 7162 `[MODIFIED]`), unchanged.
    pub modified: Vec<u32>,
}

/// COPYUID / APPENDUID data (RFC 4315).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Copied {
    pub uidvalidity: u32,
    pub source: Vec<u32>,
    pub destination: Vec<u32>,
}

/// Why the store refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("no such folder")]
    NonExistent,
    #[error("folder exists")]
    AlreadyExists,
    #[error("not allowed")]
    Cannot,
    #[error("over quota")]
    OverQuota,
    #[error("store unavailable")]
    Unavailable,
}

/// A message's stored bytes. Owned, so that the driver can read the next body into the
/// allocation the session hands back ([`Outbox::body_buffer`](super::Outbox::body_buffer)).
pub type Body = Vec<u8>;

/// An encoded [`structure::Summary`](super::structure::Summary), as the store keeps it.
pub type Summary = Vec<u8>;

/// What the session needs from one user's store. Names are full folder names (`INBOX` in
/// that spelling); UIDs are those of the snapshot's UIDVALIDITY.
pub trait Mailboxes {
    fn list(&mut self) -> Result<Vec<FolderInfo>, StoreError>;
    fn status(&mut self, name: &str) -> Result<FolderStatus, StoreError>;
    fn select(&mut self, name: &str) -> Result<Snapshot, StoreError>;
    /// The folder now, or `None` when nothing changed since `modseq` (and no message at or
    /// above `uidnext` appeared).
    fn changes(
        &mut self,
        folder: FolderId,
        modseq: u64,
        uidnext: u32,
    ) -> Result<Changes, StoreError>;
    fn body(&mut self, folder: FolderId, uid: u32) -> Result<Body, StoreError>;
    /// The message's stored summary ([`structure::Summary`](super::structure::Summary),
    /// encoded), when the store keeps one: `Ok(None)` sends the session to [`Mailboxes::body`].
    fn summary(&mut self, folder: FolderId, uid: u32) -> Result<Option<Summary>, StoreError>;
    /// Durable before it returns.
    fn store_flags(
        &mut self,
        folder: FolderId,
        uids: &[u32],
        op: FlagOp,
        flags: &Flags,
        unchanged_since: Option<u64>,
    ) -> Result<Stored, StoreError>;
    fn copy(
        &mut self,
        folder: FolderId,
        uids: &[u32],
        to: &str,
        remove: bool,
    ) -> Result<Copied, StoreError>;
    /// Expunges those of `uids` that are still there; returns them.
    fn expunge(&mut self, folder: FolderId, uids: &[u32]) -> Result<Vec<u32>, StoreError>;
    fn append(
        &mut self,
        to: &str,
        flags: &Flags,
        date: Option<(i64, i16)>,
        message: &[u8],
    ) -> Result<Copied, StoreError>;
    fn create(&mut self, name: &str) -> Result<(), StoreError>;
    fn delete(&mut self, name: &str) -> Result<(), StoreError>;
    fn rename(&mut self, from: &str, to: &str) -> Result<(), StoreError>;
    fn subscribe(&mut self, name: &str, subscribed: bool) -> Result<(), StoreError>;
    /// Whether any message of the folder was expunged after `modseq` (QRESYNC, RFC 7162).
    /// `true` is always a correct answer: the session then reports as vanished every UID
    /// the client asked about that does not exist (RFC 7162 §3.2.5.1 allows that).
    fn expunged_since(&mut self, folder: FolderId, modseq: u64) -> Result<bool, StoreError>;
    /// The user's quota and usage (RFC 9208).
    fn quota(&mut self) -> Result<Quota, StoreError>;
}

/// One store call the session waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    List,
    Status(String),
    Select(String),
    Changes {
        folder: FolderId,
        modseq: u64,
        uidnext: u32,
    },
    Body {
        folder: FolderId,
        uid: u32,
    },
    /// See [`Mailboxes::summary`].
    Summary {
        folder: FolderId,
        uid: u32,
    },
    StoreFlags {
        folder: FolderId,
        uids: Vec<u32>,
        op: FlagOp,
        flags: Flags,
        unchanged_since: Option<u64>,
    },
    Copy {
        folder: FolderId,
        uids: Vec<u32>,
        to: String,
        remove: bool,
    },
    Expunge {
        folder: FolderId,
        uids: Vec<u32>,
    },
    Append {
        to: String,
        flags: Flags,
        date: Option<(i64, i16)>,
        message: Vec<u8>,
    },
    Create(String),
    Delete(String),
    Rename {
        from: String,
        to: String,
    },
    Subscribe {
        name: String,
        subscribed: bool,
    },
    /// See [`Mailboxes::expunged_since`].
    ExpungedSince {
        folder: FolderId,
        modseq: u64,
    },
    /// See [`Mailboxes::quota`].
    Quota,
}

/// The answer to a [`Request`], of the matching variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    List(Result<Vec<FolderInfo>, StoreError>),
    Status(Result<FolderStatus, StoreError>),
    Select(Result<Snapshot, StoreError>),
    Changes(Result<Changes, StoreError>),
    Body(Result<Body, StoreError>),
    Summary(Result<Option<Summary>, StoreError>),
    StoreFlags(Result<Stored, StoreError>),
    Copy(Result<Copied, StoreError>),
    Expunge(Result<Vec<u32>, StoreError>),
    Append(Result<Copied, StoreError>),
    /// CREATE, DELETE, RENAME, (UN)SUBSCRIBE.
    Done(Result<(), StoreError>),
    ExpungedSince(Result<bool, StoreError>),
    Quota(Result<Quota, StoreError>),
}

/// Answers `request` from a synchronous store.
pub fn serve<M: Mailboxes + ?Sized>(store: &mut M, request: &Request) -> Answer {
    match request {
        Request::List => Answer::List(store.list()),
        Request::Status(name) => Answer::Status(store.status(name)),
        Request::Select(name) => Answer::Select(store.select(name)),
        Request::Changes {
            folder,
            modseq,
            uidnext,
        } => Answer::Changes(store.changes(*folder, *modseq, *uidnext)),
        Request::Body { folder, uid } => Answer::Body(store.body(*folder, *uid)),
        Request::Summary { folder, uid } => Answer::Summary(store.summary(*folder, *uid)),
        Request::StoreFlags {
            folder,
            uids,
            op,
            flags,
            unchanged_since,
        } => Answer::StoreFlags(store.store_flags(*folder, uids, *op, flags, *unchanged_since)),
        Request::Copy {
            folder,
            uids,
            to,
            remove,
        } => Answer::Copy(store.copy(*folder, uids, to, *remove)),
        Request::Expunge { folder, uids } => Answer::Expunge(store.expunge(*folder, uids)),
        Request::Append {
            to,
            flags,
            date,
            message,
        } => Answer::Append(store.append(to, flags, *date, message)),
        Request::Create(name) => Answer::Done(store.create(name)),
        Request::Delete(name) => Answer::Done(store.delete(name)),
        Request::Rename { from, to } => Answer::Done(store.rename(from, to)),
        Request::Subscribe { name, subscribed } => Answer::Done(store.subscribe(name, *subscribed)),
        Request::ExpungedSince { folder, modseq } => {
            Answer::ExpungedSince(store.expunged_since(*folder, *modseq))
        }
        Request::Quota => Answer::Quota(store.quota()),
    }
}

/// An in-memory store for tests and the fuzz target.
#[cfg(any(test, feature = "fuzzing"))]
pub mod memory {
    use super::*;

    #[derive(Debug, Clone)]
    struct Message {
        meta: MessageMeta,
        body: Body,
        summary: Option<Summary>,
    }

    #[derive(Debug, Clone)]
    struct Folder {
        id: FolderId,
        name: String,
        special_use: Option<SpecialUse>,
        uidvalidity: u32,
        uidnext: u32,
        highest_modseq: u64,
        messages: Vec<Message>,
        /// (uid, modseq of the expunge)
        expunged: Vec<(u32, u64)>,
    }

    /// One user's folders in memory. Every write is "durable" at once.
    #[derive(Debug, Clone)]
    pub struct Memory {
        folders: Vec<Folder>,
        subscribed: Vec<String>,
        next_id: FolderId,
        /// A fixed INTERNALDATE for APPEND without a date (the store has no clock here).
        pub now: i64,
        /// Refuse every call with `Unavailable`.
        pub broken: bool,
        /// The storage limit in octets; APPEND and COPY beyond it fail with `OverQuota`.
        pub quota_limit: Option<u64>,
        /// Keep a summary of each message stored from now on, as the real store does.
        pub summaries: bool,
        /// Every call answered, in order (what the session asked for).
        pub calls: Vec<&'static str>,
    }

    impl Default for Memory {
        fn default() -> Self {
            let mut m = Memory {
                folders: Vec::new(),
                subscribed: Vec::new(),
                next_id: 0,
                now: 1_700_000_000,
                broken: false,
                quota_limit: None,
                summaries: false,
                calls: Vec::new(),
            };
            m.add_folder("INBOX", None);
            m
        }
    }

    impl Memory {
        /// Adds a folder (UIDVALIDITY 1000 + its id).
        pub fn add_folder(&mut self, name: &str, special_use: Option<SpecialUse>) -> FolderId {
            let id = self.next_id;
            self.next_id += 1;
            self.folders.push(Folder {
                id,
                name: name.to_string(),
                special_use,
                uidvalidity: 1000 + id,
                uidnext: 1,
                highest_modseq: 1,
                messages: Vec::new(),
                expunged: Vec::new(),
            });
            id
        }

        /// Delivers a message into a folder (as SMTP would); returns its UID.
        pub fn deliver(&mut self, name: &str, body: &[u8], flags: Flags) -> Option<u32> {
            let now = self.now;
            let summary = self.summary_of(body);
            let folder = self.folder_mut(name)?;
            Some(put(folder, body.into(), summary, flags, (now, 0)))
        }

        /// Sets flags as another session would.
        pub fn set_flags(&mut self, name: &str, uid: u32, flags: Flags) {
            if let Some(folder) = self.folder_mut(name) {
                folder.highest_modseq += 1;
                let modseq = folder.highest_modseq;
                if let Some(m) = folder.messages.iter_mut().find(|m| m.meta.uid == uid) {
                    m.meta.flags = flags;
                    m.meta.modseq = modseq;
                }
            }
        }

        /// Sets a folder's HIGHESTMODSEQ to 0, as the mail store counts a folder that never
        /// changed.
        pub fn zero_modseq(&mut self, name: &str) {
            if let Some(folder) = self.folder_mut(name) {
                folder.highest_modseq = 0;
            }
        }

        /// Expunges as another session would.
        pub fn expunge_now(&mut self, name: &str, uid: u32) {
            if let Some(folder) = self.folder_mut(name) {
                remove(folder, &[uid]);
            }
        }

        /// Replaces a message's stored summary (`None`: as if stored before summaries).
        pub fn set_summary(&mut self, name: &str, uid: u32, summary: Option<Summary>) {
            if let Some(folder) = self.folder_mut(name) {
                if let Some(m) = folder.messages.iter_mut().find(|m| m.meta.uid == uid) {
                    m.summary = summary;
                }
            }
        }

        fn summary_of(&self, body: &[u8]) -> Option<Summary> {
            self.summaries
                .then(|| crate::imap::structure::Summary::of(body).encode())
                .flatten()
        }

        fn folder_mut(&mut self, name: &str) -> Option<&mut Folder> {
            self.folders.iter_mut().find(|f| same_name(&f.name, name))
        }

        fn by_id(&mut self, id: FolderId) -> Result<&mut Folder, StoreError> {
            self.folders
                .iter_mut()
                .find(|f| f.id == id)
                .ok_or(StoreError::NonExistent)
        }

        fn used(&self) -> u64 {
            let sizes = self.folders.iter().flat_map(|f| &f.messages);
            sizes.map(|m| u64::from(m.meta.size)).sum()
        }

        /// Refuses `more` octets beyond the quota.
        fn room(&self, more: u64) -> Result<(), StoreError> {
            match self.quota_limit {
                Some(limit) if self.used().saturating_add(more) > limit => {
                    Err(StoreError::OverQuota)
                }
                _ => Ok(()),
            }
        }

        fn check(&self) -> Result<(), StoreError> {
            if self.broken {
                Err(StoreError::Unavailable)
            } else {
                Ok(())
            }
        }
    }

    fn same_name(a: &str, b: &str) -> bool {
        a == b || (a.eq_ignore_ascii_case("INBOX") && b.eq_ignore_ascii_case("INBOX"))
    }

    fn put(
        folder: &mut Folder,
        body: Body,
        summary: Option<Summary>,
        flags: Flags,
        date: (i64, i16),
    ) -> u32 {
        folder.highest_modseq += 1;
        let uid = folder.uidnext;
        folder.uidnext += 1;
        folder.messages.push(Message {
            meta: MessageMeta {
                uid,
                flags,
                size: u32::try_from(body.len()).unwrap_or(u32::MAX),
                internal_date: date.0,
                zone_minutes: date.1,
                modseq: folder.highest_modseq,
            },
            body,
            summary,
        });
        uid
    }

    fn remove(folder: &mut Folder, uids: &[u32]) -> Vec<u32> {
        let gone: Vec<u32> = folder
            .messages
            .iter()
            .map(|m| m.meta.uid)
            .filter(|u| uids.contains(u))
            .collect();
        if gone.is_empty() {
            return gone;
        }
        folder.highest_modseq += 1;
        let modseq = folder.highest_modseq;
        folder.messages.retain(|m| !gone.contains(&m.meta.uid));
        folder.expunged.extend(gone.iter().map(|&u| (u, modseq)));
        gone
    }

    impl Mailboxes for Memory {
        fn list(&mut self) -> Result<Vec<FolderInfo>, StoreError> {
            self.check()?;
            Ok(self
                .folders
                .iter()
                .map(|f| FolderInfo {
                    name: f.name.clone(),
                    special_use: f.special_use,
                    subscribed: self.subscribed.iter().any(|s| same_name(s, &f.name)),
                })
                .collect())
        }

        fn status(&mut self, name: &str) -> Result<FolderStatus, StoreError> {
            self.check()?;
            let f = self.folder_mut(name).ok_or(StoreError::NonExistent)?;
            let count = |bit: u8, set: bool| {
                f.messages
                    .iter()
                    .filter(|m| (m.meta.flags.system & bit != 0) == set)
                    .count() as u32
            };
            Ok(FolderStatus {
                messages: f.messages.len() as u32,
                unseen: count(system_flag::SEEN, false),
                deleted: count(system_flag::DELETED, true),
                uidnext: f.uidnext,
                uidvalidity: f.uidvalidity,
                highest_modseq: f.highest_modseq,
                size: f.messages.iter().map(|m| u64::from(m.meta.size)).sum(),
                deleted_size: f
                    .messages
                    .iter()
                    .filter(|m| m.meta.flags.system & system_flag::DELETED != 0)
                    .map(|m| u64::from(m.meta.size))
                    .sum(),
            })
        }

        fn select(&mut self, name: &str) -> Result<Snapshot, StoreError> {
            self.check()?;
            let f = self.folder_mut(name).ok_or(StoreError::NonExistent)?;
            Ok(Snapshot {
                folder: f.id,
                uidvalidity: f.uidvalidity,
                uidnext: f.uidnext,
                highest_modseq: f.highest_modseq,
                messages: Arc::new(f.messages.iter().map(|m| m.meta.clone()).collect()),
            })
        }

        fn changes(
            &mut self,
            folder: FolderId,
            _modseq: u64,
            _uidnext: u32,
        ) -> Result<Changes, StoreError> {
            self.check()?;
            let f = self.by_id(folder)?;
            // Always the whole folder: the session's difference finds what changed.
            Ok(Changes {
                view: Some(Arc::new(
                    f.messages.iter().map(|m| m.meta.clone()).collect(),
                )),
                uidnext: f.uidnext,
                highest_modseq: f.highest_modseq,
            })
        }

        fn body(&mut self, folder: FolderId, uid: u32) -> Result<Body, StoreError> {
            self.check()?;
            self.calls.push("body");
            let f = self.by_id(folder)?;
            f.messages
                .iter()
                .find(|m| m.meta.uid == uid)
                .map(|m| m.body.clone())
                .ok_or(StoreError::NonExistent)
        }

        fn summary(&mut self, folder: FolderId, uid: u32) -> Result<Option<Summary>, StoreError> {
            self.check()?;
            self.calls.push("summary");
            let f = self.by_id(folder)?;
            f.messages
                .iter()
                .find(|m| m.meta.uid == uid)
                .map(|m| m.summary.clone())
                .ok_or(StoreError::NonExistent)
        }

        fn store_flags(
            &mut self,
            folder: FolderId,
            uids: &[u32],
            op: FlagOp,
            flags: &Flags,
            unchanged_since: Option<u64>,
        ) -> Result<Stored, StoreError> {
            self.check()?;
            let f = self.by_id(folder)?;
            let mut out = Stored::default();
            for m in f.messages.iter_mut().filter(|m| uids.contains(&m.meta.uid)) {
                if unchanged_since.is_some_and(|u| m.meta.modseq > u) {
                    out.modified.push(m.meta.uid);
                    continue;
                }
                let mut new = m.meta.flags.clone();
                new.apply(op, flags);
                if new != m.meta.flags {
                    f.highest_modseq += 1;
                    m.meta.flags = new;
                    m.meta.modseq = f.highest_modseq;
                }
                out.updated
                    .push((m.meta.uid, m.meta.flags.clone(), m.meta.modseq));
            }
            Ok(out)
        }

        fn copy(
            &mut self,
            folder: FolderId,
            uids: &[u32],
            to: &str,
            remove_source: bool,
        ) -> Result<Copied, StoreError> {
            self.check()?;
            let source = self.by_id(folder)?;
            let picked: Vec<Message> = source
                .messages
                .iter()
                .filter(|m| uids.contains(&m.meta.uid))
                .cloned()
                .collect();
            if !remove_source {
                self.room(picked.iter().map(|m| m.body.len() as u64).sum())?;
            }
            let now = self.now;
            let dest = self.folder_mut(to).ok_or(StoreError::NonExistent)?;
            let mut out = Copied {
                uidvalidity: dest.uidvalidity,
                ..Copied::default()
            };
            for m in &picked {
                let date = (m.meta.internal_date, m.meta.zone_minutes);
                let _ = now;
                let uid = put(
                    dest,
                    m.body.clone(),
                    m.summary.clone(),
                    m.meta.flags.clone(),
                    date,
                );
                out.source.push(m.meta.uid);
                out.destination.push(uid);
            }
            if remove_source {
                let source = self.by_id(folder)?;
                remove(source, &out.source);
            }
            Ok(out)
        }

        fn expunge(&mut self, folder: FolderId, uids: &[u32]) -> Result<Vec<u32>, StoreError> {
            self.check()?;
            Ok(remove(self.by_id(folder)?, uids))
        }

        fn append(
            &mut self,
            to: &str,
            flags: &Flags,
            date: Option<(i64, i16)>,
            message: &[u8],
        ) -> Result<Copied, StoreError> {
            self.check()?;
            self.room(message.len() as u64)?;
            let now = self.now;
            let summary = self.summary_of(message);
            let dest = self.folder_mut(to).ok_or(StoreError::NonExistent)?;
            let uid = put(
                dest,
                message.into(),
                summary,
                flags.clone(),
                date.unwrap_or((now, 0)),
            );
            Ok(Copied {
                uidvalidity: dest.uidvalidity,
                source: Vec::new(),
                destination: vec![uid],
            })
        }

        fn create(&mut self, name: &str) -> Result<(), StoreError> {
            self.check()?;
            if self.folder_mut(name).is_some() {
                return Err(StoreError::AlreadyExists);
            }
            self.add_folder(name, None);
            Ok(())
        }

        fn delete(&mut self, name: &str) -> Result<(), StoreError> {
            self.check()?;
            if same_name(name, "INBOX") {
                return Err(StoreError::Cannot);
            }
            let before = self.folders.len();
            self.folders.retain(|f| f.name != name);
            if self.folders.len() == before {
                return Err(StoreError::NonExistent);
            }
            Ok(())
        }

        fn rename(&mut self, from: &str, to: &str) -> Result<(), StoreError> {
            self.check()?;
            if self.folder_mut(to).is_some() {
                return Err(StoreError::AlreadyExists);
            }
            if same_name(from, "INBOX") {
                return Err(StoreError::Cannot);
            }
            let f = self.folder_mut(from).ok_or(StoreError::NonExistent)?;
            f.name = to.to_string();
            Ok(())
        }

        fn expunged_since(&mut self, folder: FolderId, modseq: u64) -> Result<bool, StoreError> {
            self.check()?;
            Ok(self
                .by_id(folder)?
                .expunged
                .iter()
                .any(|(_, m)| *m > modseq))
        }

        fn quota(&mut self) -> Result<Quota, StoreError> {
            self.check()?;
            Ok(Quota {
                storage_used_bytes: self.used(),
                storage_limit_bytes: self.quota_limit,
                messages: self.folders.iter().map(|f| f.messages.len() as u64).sum(),
            })
        }

        fn subscribe(&mut self, name: &str, subscribed: bool) -> Result<(), StoreError> {
            self.check()?;
            self.subscribed.retain(|s| !same_name(s, name));
            if subscribed {
                self.subscribed.push(name.to_string());
            }
            Ok(())
        }
    }
}
