//! The mailbox-state records' API types: what the log keeps of a user's folders, UIDs,
//! flags and modification sequences, besides the messages themselves.
//!
//! A user's store is rebuilt from three things in the log: the placements carried by the
//! message frames that delivered to the user ([`Placement`], durable with the body, so a
//! delivery or an IMAP APPEND is never torn from its UID), [`MailboxState`] records (folder
//! operations, flag changes, copies, expunges, each with the modification sequence it was
//! given), and the POP3-era [`MailboxDeletion`](super::MailboxDeletion) records (an expunge
//! from INBOX by queue id). The spool stores and replays these; what they mean is
//! `crate::mailstore`'s (docs/MAILSTORE.md).

use crate::envelope::QueueId;

/// A user's folder, by the number the user's store gave it. Never reused for that user,
/// so a record naming a deleted folder can never land in a later folder of the same name.
pub type FolderId = u32;

/// INBOX: it exists for every user from the first delivery on, with this id.
pub const INBOX: FolderId = 0;

/// The system flags (RFC 9051 §2.3.2) as bits; `\Recent` is per session and never stored.
pub mod system_flag {
    pub const SEEN: u8 = 1 << 0;
    pub const ANSWERED: u8 = 1 << 1;
    pub const FLAGGED: u8 = 1 << 2;
    pub const DELETED: u8 = 1 << 3;
    pub const DRAFT: u8 = 1 << 4;
    /// Every bit above: anything else in a record is ignored when it is read.
    pub const ALL: u8 = SEEN | ANSWERED | FLAGGED | DELETED | DRAFT;
}

/// A message's flags in one folder: the system flags and the keywords (atoms, kept as the
/// client spelled them; compared case-insensitively).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flags {
    pub system: u8,
    pub keywords: Vec<String>,
}

/// The SPECIAL-USE role of a folder (RFC 6154).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum SpecialUse {
    Sent = 1,
    Drafts = 2,
    Trash = 3,
    Junk = 4,
    Archive = 5,
}

/// Where one local copy of a message lands in its user's store, and its state there when it
/// lands. A message frame carries one per local mailbox it delivers to (a frame without them,
/// written before folders existed, is an INBOX delivery whose UID the store assigns).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub folder: FolderId,
    /// The folder's UIDVALIDITY when `uid` was given: a placement from an earlier folder of
    /// the same id (there is none: ids are never reused) or an older incarnation is ignored.
    pub uidvalidity: u32,
    pub uid: u32,
    pub flags: Flags,
    /// INTERNALDATE: seconds since the epoch and the zone offset the client gave (minutes
    /// east of UTC), so APPEND's date comes back as it was given.
    pub internal_date: i64,
    pub zone_minutes: i16,
    pub modseq: u64,
}

/// One change to a user's store. Every op carries what it sets, not a delta, so applying a
/// record twice changes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateOp {
    CreateFolder {
        folder: FolderId,
        name: String,
        uidvalidity: u32,
        special_use: Option<SpecialUse>,
    },
    RenameFolder {
        folder: FolderId,
        name: String,
    },
    /// The folder and every copy in it are gone.
    DeleteFolder {
        folder: FolderId,
    },
    Subscribe {
        name: String,
        subscribed: bool,
    },
    /// A copy of message `id` (COPY, MOVE's first half, or an assignment of a UID to an
    /// unplaced delivery).
    Place {
        id: QueueId,
        placement: Placement,
    },
    /// The message's whole flag set after a STORE, and the modseq the change got.
    SetFlags {
        folder: FolderId,
        uid: u32,
        flags: Flags,
        modseq: u64,
    },
    Expunge {
        folder: FolderId,
        uids: Vec<u32>,
        modseq: u64,
    },
    /// Counters that survive their messages: written by checkpoints (after a folder's last
    /// message is expunged, UIDNEXT and HIGHESTMODSEQ must not go back).
    FolderCounters {
        folder: FolderId,
        uidnext: u32,
        highest_modseq: u64,
    },
    /// Everything recorded for the user before this record is void: a checkpoint record
    /// starts with it and restates the whole store after it.
    Reset,
}

/// What a [`RecordKind::MailboxState`](super::RecordKind) frame holds: some of one user's
/// changes, durable together or not at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxState {
    pub user: String,
    /// The user's record order: recovery applies a user's records by it (they may sit in
    /// different shards' logs). Strictly increasing per user; gaps are allowed (a record
    /// whose commit failed).
    pub seq: u64,
    pub ops: Vec<StateOp>,
    /// Messages of which this user keeps no copy in any folder once this record applies: the
    /// user's delivery of each is deleted for the spool's liveness rule, as a
    /// `MailboxDeletion` would delete it.
    pub released: Vec<QueueId>,
}

impl MailboxState {
    /// Whether the record is a checkpoint (voids the user's earlier records).
    pub fn is_checkpoint(&self) -> bool {
        matches!(self.ops.first(), Some(StateOp::Reset))
    }
}
