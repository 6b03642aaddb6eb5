//! A user's whole store as plain data, and records made of given ops: what moving a user
//! between nodes (`relay user move`) reads on the source and writes on the target.
//!
//! [`UserStore::export`] states every folder (id, name, UIDVALIDITY, role, counters) and its
//! visible messages with their UIDs, flags, dates and modseqs, and the subscriptions. The
//! target applies the source's own values with [`UserStore::import_record`] (a record of the
//! ops it is given, with the next seq and what they release), so UIDs, UIDVALIDITY and modseqs
//! stay what clients already know.

use serde::{Deserialize, Serialize};

use super::model::UserStore;
use crate::envelope::QueueId;
use crate::spool::state::{Flags, FolderId, MailboxState, Placement, SpecialUse, StateOp, INBOX};

/// One message of an exported folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedMessage {
    pub uid: u32,
    /// The body's queue id on the exporting node ([`QueueId`]'s number).
    pub id: u64,
    pub size: u64,
    pub system_flags: u8,
    pub keywords: Vec<String>,
    pub internal_date: i64,
    pub zone_minutes: i16,
    pub modseq: u64,
}

impl ExportedMessage {
    pub fn queue_id(&self) -> QueueId {
        QueueId(self.id)
    }

    pub fn flags(&self) -> Flags {
        Flags {
            system: self.system_flags,
            keywords: self.keywords.clone(),
        }
    }

    /// Where this message lands in `folder` (of `uidvalidity`) on the importing node.
    pub fn placement(&self, folder: FolderId, uidvalidity: u32) -> Placement {
        Placement {
            folder,
            uidvalidity,
            uid: self.uid,
            flags: self.flags(),
            internal_date: self.internal_date,
            zone_minutes: self.zone_minutes,
            modseq: self.modseq,
        }
    }
}

/// One exported folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedFolder {
    pub id: FolderId,
    pub name: String,
    pub uidvalidity: u32,
    /// [`SpecialUse`] as its number (see [`special_use_from`]).
    pub special_use: Option<u8>,
    /// UIDNEXT as clients see it.
    pub uidnext: u32,
    pub highest_modseq: u64,
    /// Visible messages in UID order.
    pub messages: Vec<ExportedMessage>,
}

/// A user's whole store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedStore {
    /// In folder id order; INBOX first.
    pub folders: Vec<ExportedFolder>,
    pub subscriptions: Vec<String>,
    /// Allocated UIDs whose frame has not committed yet, over all folders (deliveries in
    /// flight: a frozen user's store is still only once this is 0).
    pub pending: usize,
}

/// The role of a number written by [`ExportedFolder::special_use`].
pub fn special_use_from(n: u8) -> Option<SpecialUse> {
    [
        SpecialUse::Sent,
        SpecialUse::Drafts,
        SpecialUse::Trash,
        SpecialUse::Junk,
        SpecialUse::Archive,
    ]
    .into_iter()
    .find(|r| *r as u8 == n)
}

impl UserStore {
    /// The whole store as data (visible messages only).
    pub fn export(&self) -> ExportedStore {
        let folders = self
            .folders
            .iter()
            .map(|(id, f)| ExportedFolder {
                id: *id,
                name: f.name.clone(),
                uidvalidity: f.uidvalidity,
                special_use: f.special_use.map(|r| r as u8),
                uidnext: f.visible_uidnext(),
                highest_modseq: f.highest_modseq,
                messages: f
                    .visible()
                    .map(|(uid, e)| ExportedMessage {
                        uid: *uid,
                        id: e.id.0,
                        size: e.size,
                        system_flags: e.flags.system,
                        keywords: e.flags.keywords.clone(),
                        internal_date: e.internal_date,
                        zone_minutes: e.zone_minutes,
                        modseq: e.modseq,
                    })
                    .collect(),
            })
            .collect();
        ExportedStore {
            folders,
            subscriptions: self.subscribed.iter().cloned().collect(),
            pending: self.folders.values().map(|f| f.pending.len()).sum(),
        }
    }

    /// A record of `ops` as given (another node's values), with the next seq and the bodies
    /// they leave this user no copy of. Apply it once durable, as any record.
    pub fn import_record(&mut self, ops: Vec<StateOp>) -> MailboxState {
        self.record(ops)
    }

    /// A copy imported from another node lands with that node's UID, flags and modseq (its
    /// message frame is durable). False when its folder is not there.
    pub fn import_placed(&mut self, id: QueueId, size: u64, placement: &Placement) -> bool {
        self.place(id, size, placement)
    }

    /// The body `id` keeps the POP3 UIDL `uidl` from the node it came from (its frame's
    /// origin says so: live after the import, and at every recovery).
    pub fn keep_uidl(&mut self, id: QueueId, uidl: &str) {
        if self.kept_uidls.get(&id).map(|u| &**u) != Some(uidl) {
            self.kept_uidls.insert(id, Box::from(uidl));
        }
    }

    /// The POP3 UIDL body `id` keeps from another node, if it came from one.
    pub fn kept_uidl(&self, id: QueueId) -> Option<&str> {
        self.kept_uidls.get(&id).map(|u| &**u)
    }

    /// The record that empties the store: every folder but INBOX deleted, INBOX expunged,
    /// subscriptions dropped; `released` names every body. None when there is nothing.
    pub fn remove_all(&mut self) -> Option<MailboxState> {
        let mut ops = Vec::new();
        for id in self.folders.keys() {
            if *id != INBOX {
                ops.push(StateOp::DeleteFolder { folder: *id });
            }
        }
        for name in &self.subscribed {
            ops.push(StateOp::Subscribe {
                name: name.clone(),
                subscribed: false,
            });
        }
        let inbox: Vec<u32> = self
            .folders
            .get(&INBOX)
            .map(|f| f.messages.keys().copied().collect())
            .unwrap_or_default();
        if !inbox.is_empty() {
            let modseq = self.folders.get_mut(&INBOX).map_or(1, |f| f.next_modseq());
            ops.push(StateOp::Expunge {
                folder: INBOX,
                uids: inbox,
                modseq,
            });
        }
        (!ops.is_empty()).then(|| self.record(ops))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_then_remove_all_releases_every_body() {
        let mut s = UserStore::new("u");
        let r = s.create_folder("Work", None, 100).unwrap();
        s.apply(&r);
        for n in 0..3u64 {
            let p = s.allocate(INBOX, &Flags::default(), 5, 0).unwrap();
            if let Some(r) = s.delivered(QueueId::new(1_000 + n, 0), 10, &p) {
                s.apply(&r);
            }
        }
        let e = s.export();
        assert_eq!(e.folders.len(), 2);
        assert_eq!(e.folders[0].messages.len(), 3);
        assert_eq!(e.folders[1].name, "Work");
        let r = s.remove_all().unwrap();
        assert_eq!(r.released.len(), 3);
        s.apply(&r);
        assert_eq!(s.message_count(), 0);
        assert_eq!(s.export().folders.len(), 1);
        assert!(s.remove_all().is_none());
        assert_eq!(
            special_use_from(SpecialUse::Junk as u8),
            Some(SpecialUse::Junk)
        );
        assert_eq!(special_use_from(0), None);
    }

    #[test]
    fn imported_frames_survive_recovery_past_the_imported_counters() {
        // A move wrote: frames placing UIDs 2 and 4 (A's), then a record restating INBOX's
        // UIDNEXT 7. Recovery must not take the frames for messages expunged before it.
        let placed = |uid: u32| Placement {
            folder: INBOX,
            uidvalidity: 1,
            uid,
            flags: Flags::default(),
            internal_date: 9,
            zone_minutes: 0,
            modseq: u64::from(uid),
        };
        let mut s = UserStore::new("u");
        s.replay_delivery(QueueId::new(1_000, 0), 10, 9, Some(&placed(2)));
        s.replay_delivery(QueueId::new(1_001, 0), 10, 9, Some(&placed(4)));
        let counters = s.import_record(vec![StateOp::FolderCounters {
            folder: INBOX,
            uidnext: 7,
            highest_modseq: 6,
        }]);
        s.replay_state(&counters);
        let _ = s.finish_recovery();
        let e = s.export();
        let uids: Vec<u32> = e.folders[0].messages.iter().map(|m| m.uid).collect();
        assert_eq!(uids, [2, 4]);
        assert_eq!(e.folders[0].uidnext, 7);
    }
}
