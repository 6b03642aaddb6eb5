//! Rebuilding a user's store from the log. The spool replays in whatever order its shards
//! give, so everything is buffered and resolved at [`UserStore::finish_recovery`]: the state
//! records by seq from the last checkpoint, the placements carried by message frames landing
//! where a record first touches their UID (or at the end), then POP3 deletions, then the
//! deliveries written before folders existed.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::model::{ApplyCtx, PlacementIndex, UserStore};
use crate::envelope::QueueId;
use crate::spool::state::{FolderId, MailboxState, Placement, StateOp, INBOX};

#[derive(Debug, Default)]
pub(super) struct Recovery {
    sizes: HashMap<QueueId, u64>,
    placements: Vec<(QueueId, Placement)>,
    /// Deliveries from v1 frames (no placement), by queue id.
    unplaced: BTreeSet<QueueId>,
    records: Vec<MailboxState>,
    pop3_deletions: Vec<Vec<QueueId>>,
}

impl UserStore {
    fn recovery(&mut self) -> &mut Recovery {
        self.recovery.get_or_insert_with(Box::default)
    }

    /// A message frame delivering to this user: with the placement it carries (layout v2),
    /// or none (v1: an INBOX delivery the store numbers). `arrival_unix` is INTERNALDATE
    /// for those.
    pub fn replay_delivery(
        &mut self,
        id: QueueId,
        size: u64,
        arrival_unix: i64,
        placement: Option<&Placement>,
    ) {
        let r = self.recovery();
        r.sizes.insert(id, size);
        match placement {
            Some(p) => r.placements.push((id, p.clone())),
            None => {
                r.unplaced.insert(id);
                // v1 INTERNALDATE: the arrival, kept with the id until numbering.
                r.placements.push((
                    id,
                    Placement {
                        folder: INBOX,
                        uidvalidity: 0,
                        uid: 0,
                        flags: Default::default(),
                        internal_date: arrival_unix,
                        zone_minutes: 0,
                        modseq: 0,
                    },
                ));
            }
        }
    }

    pub fn replay_state(&mut self, record: &MailboxState) {
        self.recovery().records.push(record.clone());
    }

    /// A POP3 deletion (`MailboxDeletion`): an expunge from INBOX by queue id.
    pub fn replay_pop3_deletion(&mut self, ids: &[QueueId]) {
        self.recovery().pop3_deletions.push(ids.to_vec());
    }

    /// Resolves what was replayed. Answers a checkpoint to write (and nothing to apply: the
    /// store already holds it) when recovery decided something the log does not say yet:
    /// UIDs for v1 deliveries, fresh modseqs for placements older than a later change (a
    /// crash may have lost the record that gave them one), the release of deliveries no
    /// folder holds, or Place ops dropped because their body is gone.
    pub fn finish_recovery(&mut self) -> Option<MailboxState> {
        let r = *self.recovery.take()?;
        let mut records = r.records;
        records.sort_by_key(|rec| rec.seq);
        records.dedup_by_key(|rec| rec.seq);
        let released: BTreeSet<QueueId> = records
            .iter()
            .flat_map(|rec| rec.released.iter().copied())
            .collect();
        let pop3_deleted: BTreeSet<QueueId> = r.pop3_deletions.iter().flatten().copied().collect();
        let start = records
            .iter()
            .rposition(MailboxState::is_checkpoint)
            .unwrap_or(0);
        // Older records only count for their seq: a new record must sort after them.
        if let Some(last) = records.last() {
            self.seq = self.seq.max(last.seq);
        }
        let mut index: PlacementIndex = BTreeMap::new();
        for (id, p) in &r.placements {
            if !r.unplaced.contains(id) && !released.contains(id) {
                index.insert((p.folder, p.uid), (*id, p.clone()));
            }
        }
        // What the last checkpoint restated as UIDNEXT, and the UIDs expunged after it: every
        // other UID between the two was committed and is held, or never committed.
        let mut cp_uidnext: HashMap<FolderId, u32> = HashMap::new();
        let mut expunged: BTreeSet<(FolderId, u32)> = BTreeSet::new();
        for (i, record) in records.iter().enumerate().skip(start) {
            for op in &record.ops {
                match op {
                    StateOp::FolderCounters {
                        folder, uidnext, ..
                    } if i == start && record.is_checkpoint() => {
                        cp_uidnext.insert(*folder, *uidnext);
                    }
                    StateOp::Expunge { folder, uids, .. } => {
                        expunged.extend(uids.iter().map(|u| (*folder, *u)));
                    }
                    _ => {}
                }
            }
        }
        let mut ctx = ApplyCtx {
            sizes: &r.sizes,
            index: Some(&mut index),
            dangling: 0,
            checkpoint: false,
        };
        for record in &records[start..] {
            self.apply_with(record, &mut ctx);
        }
        let mut dirty = ctx.dangling > 0;

        // Placements no record touched since the last checkpoint.
        let mut placed_only: Vec<(FolderId, u32)> = Vec::new();
        for ((folder, uid), (id, p)) in index {
            let free = self
                .folders
                .get(&folder)
                .is_some_and(|f| !f.messages.contains_key(&uid));
            if free {
                let size = r.sizes.get(&id).copied().unwrap_or(0);
                if self.place(id, size, &p) {
                    placed_only.push((folder, uid));
                }
            }
        }

        // A UID a frame carries is never given again, even if its message is gone (expunged,
        // moved) and no record restates the counter past it.
        for (id, p) in &r.placements {
            if r.unplaced.contains(id) {
                continue;
            }
            if let Some(f) = self.folders.get_mut(&p.folder) {
                if f.uidvalidity == p.uidvalidity {
                    f.uidnext = f.uidnext.max(p.uid.saturating_add(1));
                    f.durable_uidnext = f.durable_uidnext.max(f.uidnext);
                }
            }
        }

        for ids in &r.pop3_deletions {
            self.pop3_expunge(ids);
        }

        // v1 deliveries: INBOX UIDs in queue-id order, above everything.
        let arrivals: HashMap<QueueId, i64> = r
            .placements
            .iter()
            .filter(|(id, _)| r.unplaced.contains(id))
            .map(|(id, p)| (*id, p.internal_date))
            .collect();
        let mut v1_modseq = None;
        for id in &r.unplaced {
            if self.holds(*id) || released.contains(id) || pop3_deleted.contains(id) {
                continue;
            }
            let Some(inbox) = self.folders.get_mut(&INBOX) else {
                break;
            };
            if inbox.uidnext == u32::MAX {
                break;
            }
            let modseq = *v1_modseq.get_or_insert_with(|| inbox.next_modseq());
            let placement = Placement {
                folder: INBOX,
                uidvalidity: inbox.uidvalidity,
                uid: inbox.uidnext,
                flags: Default::default(),
                internal_date: arrivals.get(id).copied().unwrap_or(0),
                zone_minutes: 0,
                modseq,
            };
            let size = r.sizes.get(id).copied().unwrap_or(0);
            self.place(*id, size, &placement);
            dirty = true;
        }

        // A message hidden behind a pending UID at the crash may carry a modseq a client
        // has passed (HIGHESTMODSEQ moved on while it was hidden), and the record giving it a
        // fresh one, written when it shows, is lost. It can only sit above the lowest UID
        // since the last checkpoint that is a hole (never committed) or a delivery no record
        // touched (its `delivered` may not have run): everything above that gets a fresh
        // modseq. Over-reporting is harmless (RFC 7162), missing a change is not.
        let placed_only: BTreeSet<(FolderId, u32)> = placed_only.into_iter().collect();
        for (id, f) in self.folders.iter_mut() {
            let floor = cp_uidnext.get(id).copied().unwrap_or(1);
            let unsure = (floor..f.uidnext).find(|uid| {
                if f.messages.contains_key(uid) {
                    placed_only.contains(&(*id, *uid))
                } else {
                    !expunged.contains(&(*id, *uid))
                }
            });
            let Some(unsure) = unsure else {
                continue;
            };
            // That delivery itself may have been pending at the crash while a later change
            // moved HIGHESTMODSEQ past it.
            let highest = f.highest_modseq;
            let first = match f.messages.get(&unsure) {
                Some(e) if e.modseq < highest => unsure,
                _ => unsure.saturating_add(1),
            };
            let above: Vec<u32> = f.messages.range(first..).map(|(u, _)| *u).collect();
            if above.is_empty() {
                continue;
            }
            let modseq = f.next_modseq();
            for uid in above {
                if let Some(e) = f.messages.get_mut(&uid) {
                    e.modseq = modseq;
                }
            }
            f.highest_modseq = modseq;
            dirty = true;
        }

        // Deliveries to this user that no folder holds and no record released.
        let mut unreferenced: Vec<QueueId> = r
            .sizes
            .keys()
            .filter(|id| !self.holds(**id) && !released.contains(id) && !pop3_deleted.contains(id))
            .copied()
            .collect();
        unreferenced.sort();
        let bodies = &self.bodies;
        self.kept_uidls.retain(|id, _| bodies.contains_key(id));
        if !unreferenced.is_empty() {
            dirty = true;
        }
        if !dirty {
            return None;
        }
        let mut checkpoint = self.checkpoint();
        checkpoint.released = unreferenced;
        self.applied_seq = checkpoint.seq;
        self.records_since_checkpoint = 0;
        Some(checkpoint)
    }

    /// A POP3 session's deletions (live, once the `MailboxDeletion` is durable, and at
    /// recovery): the INBOX copies of `ids` are expunged, under INBOX's next modseq. It takes
    /// one whether or not anything was left to expunge, so recovery, which sees these
    /// deletions out of order with the records, never ends below the live HIGHESTMODSEQ.
    pub fn pop3_expunge(&mut self, ids: &[QueueId]) {
        let ids: BTreeSet<QueueId> = ids.iter().copied().collect();
        let Some(inbox) = self.folders.get_mut(&INBOX) else {
            return;
        };
        let modseq = inbox.next_modseq();
        let uids: Vec<u32> = inbox
            .messages
            .iter()
            .filter(|(_, e)| ids.contains(&e.id))
            .map(|(u, _)| *u)
            .collect();
        let op = StateOp::Expunge {
            folder: INBOX,
            uids,
            modseq,
        };
        self.apply_unrecorded(&op);
    }
}
