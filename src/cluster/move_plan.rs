//! What moving a user (`relay user move`) still has to copy: the source node's store and the
//! target's store of the same user in, the ops that make the target's equal out. Sans-IO.
//!
//! The target keeps the source's identities: folder ids, names, UIDVALIDITY, roles and
//! subscriptions; each message's UID, flags, INTERNALDATE and modseq; each folder's UIDNEXT
//! and HIGHESTMODSEQ. So a message is known on both sides by (folder, UIDVALIDITY, UID), and
//! a rerun after any crash copies only what the target does not hold yet: the plan of a
//! store against its own copy is empty.
//!
//! A target whose store cannot have come from the source (a folder of the same id with
//! another UIDVALIDITY, a UID the source never gave, another message under a UID) is a
//! [`Conflict`]: nothing is planned over it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::envelope::QueueId;
use crate::mailstore::{special_use_from, ExportedFolder, ExportedStore};
use crate::spool::state::{FolderId, Placement, StateOp};

/// One body the target lacks, with every copy of it the target lacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Import {
    /// Its queue id on the source.
    pub source: QueueId,
    pub size: u64,
    /// The first lands with the message frame, the others as copies of it.
    pub placements: Vec<Placement>,
}

/// The target's missing part, in the order to apply it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Folders deleted, renamed, given a role, created; subscriptions.
    pub folders: Vec<StateOp>,
    /// Copies of bodies the target already holds (its queue id, where the copy lands).
    pub copies: Vec<(QueueId, Placement)>,
    pub imports: Vec<Import>,
    /// Flags, expunges and folder counters.
    pub fixes: Vec<StateOp>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.folders.is_empty()
            && self.copies.is_empty()
            && self.imports.is_empty()
            && self.fixes.is_empty()
    }

    /// Messages still to copy (bodies and copies of bodies).
    pub fn messages(&self) -> usize {
        self.copies.len()
            + self
                .imports
                .iter()
                .map(|i| i.placements.len())
                .sum::<usize>()
    }
}

/// The target holds a store of the user that did not come from the source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Conflict {
    #[error("folder {name:?} has UIDVALIDITY {target} on the target and {here} here")]
    UidValidity {
        name: String,
        here: u32,
        target: u32,
    },
    #[error("folder {name:?} on the target holds UID {uid}, which this node never gave")]
    UnknownUid { name: String, uid: u32 },
    #[error("folder {name:?} holds another message under UID {uid} on the target")]
    OtherMessage { name: String, uid: u32 },
}

/// A name no folder can have (names are UTF-8 without control characters), for a folder
/// between its old and new name.
fn transit_name(folder: FolderId) -> String {
    format!("\u{1}moving\u{1}{folder}")
}

fn create(f: &ExportedFolder, name: String) -> StateOp {
    StateOp::CreateFolder {
        folder: f.id,
        name,
        uidvalidity: f.uidvalidity,
        special_use: f.special_use.and_then(special_use_from),
    }
}

/// The plan that makes `target` hold what `source` holds (module doc).
pub fn plan(source: &ExportedStore, target: &ExportedStore) -> Result<Plan, Conflict> {
    let theirs: BTreeMap<FolderId, &ExportedFolder> =
        target.folders.iter().map(|f| (f.id, f)).collect();
    let ours: BTreeSet<FolderId> = source.folders.iter().map(|f| f.id).collect();
    let mut plan = Plan::default();

    // Folders: deleted, then every changed one through a name of its own (two folders may
    // swap names), then created.
    for f in &target.folders {
        if !ours.contains(&f.id) {
            plan.folders.push(StateOp::DeleteFolder { folder: f.id });
        }
    }
    let mut changed = Vec::new();
    let mut created = Vec::new();
    for f in &source.folders {
        match theirs.get(&f.id) {
            Some(t) if t.uidvalidity != f.uidvalidity => {
                return Err(Conflict::UidValidity {
                    name: f.name.clone(),
                    here: f.uidvalidity,
                    target: t.uidvalidity,
                })
            }
            Some(t) if t.name != f.name || t.special_use != f.special_use => changed.push(f),
            Some(_) => {}
            None => created.push(f),
        }
    }
    for f in &changed {
        plan.folders.push(create(f, transit_name(f.id)));
    }
    for f in changed.iter().chain(&created) {
        plan.folders.push(create(f, f.name.clone()));
    }
    let subscribed: BTreeSet<&String> = source.subscriptions.iter().collect();
    let had: BTreeSet<&String> = target.subscriptions.iter().collect();
    for name in had.difference(&subscribed) {
        plan.folders.push(StateOp::Subscribe {
            name: (*name).clone(),
            subscribed: false,
        });
    }
    for name in subscribed.difference(&had) {
        plan.folders.push(StateOp::Subscribe {
            name: (*name).clone(),
            subscribed: true,
        });
    }

    // Bodies the target holds, by the source's id: a copy of one needs no bytes.
    let mut held: HashMap<u64, QueueId> = HashMap::new();
    for f in &source.folders {
        let Some(t) = theirs.get(&f.id).filter(|t| t.uidvalidity == f.uidvalidity) else {
            continue;
        };
        let by_uid: HashMap<u32, u64> = t.messages.iter().map(|m| (m.uid, m.id)).collect();
        for m in &f.messages {
            if let Some(id) = by_uid.get(&m.uid) {
                held.insert(m.id, QueueId(*id));
            }
        }
    }

    let mut imports: BTreeMap<u64, Import> = BTreeMap::new();
    for f in &source.folders {
        let empty = Vec::new();
        let (theirs_msgs, t_uidnext, t_highest) = match theirs.get(&f.id) {
            Some(t) => (&t.messages, t.uidnext, t.highest_modseq),
            None => (&empty, 1, 0),
        };
        let mine: HashMap<u32, usize> = f
            .messages
            .iter()
            .enumerate()
            .map(|(i, m)| (m.uid, i))
            .collect();
        let mut expunged = Vec::new();
        for t in theirs_msgs {
            match mine.get(&t.uid) {
                None if t.uid >= f.uidnext => {
                    return Err(Conflict::UnknownUid {
                        name: f.name.clone(),
                        uid: t.uid,
                    })
                }
                None => expunged.push(t.uid),
                Some(&i) => {
                    let m = &f.messages[i];
                    if m.size != t.size || m.internal_date != t.internal_date {
                        return Err(Conflict::OtherMessage {
                            name: f.name.clone(),
                            uid: t.uid,
                        });
                    }
                    if m.system_flags != t.system_flags
                        || m.keywords != t.keywords
                        || m.modseq != t.modseq
                    {
                        plan.fixes.push(StateOp::SetFlags {
                            folder: f.id,
                            uid: m.uid,
                            flags: m.flags(),
                            modseq: m.modseq,
                        });
                    }
                }
            }
        }
        let there: BTreeSet<u32> = theirs_msgs.iter().map(|m| m.uid).collect();
        for m in f.messages.iter().filter(|m| !there.contains(&m.uid)) {
            let placement = m.placement(f.id, f.uidvalidity);
            match held.get(&m.id) {
                Some(id) => plan.copies.push((*id, placement)),
                None => imports
                    .entry(m.id)
                    .or_insert_with(|| Import {
                        source: m.queue_id(),
                        size: m.size,
                        placements: Vec::new(),
                    })
                    .placements
                    .push(placement),
            }
        }
        if !expunged.is_empty() {
            plan.fixes.push(StateOp::Expunge {
                folder: f.id,
                uids: expunged,
                modseq: f.highest_modseq,
            });
        }
        if t_uidnext < f.uidnext || t_highest < f.highest_modseq {
            plan.fixes.push(StateOp::FolderCounters {
                folder: f.id,
                uidnext: f.uidnext,
                highest_modseq: f.highest_modseq,
            });
        }
    }
    plan.imports = imports.into_values().collect();
    Ok(plan)
}

#[cfg(test)]
mod tests;
