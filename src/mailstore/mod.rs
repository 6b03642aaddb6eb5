//! Every user's folders over the spool: UIDs, flags, modification sequences, subscriptions,
//! and the records that change them (docs/MAILSTORE.md).
//!
//! Sans-IO: built from the spool's replay, it answers a change with the records to write and
//! applies them once they are durable; decisions with time in them take `now`.
//!
//! - A change (`create_folder`, `store_flags`, `move_`…) validates against the state and
//!   answers a [`MailboxState`] with the next seq, the modseqs and UIDs it takes (reserved at
//!   once, so a failed commit leaves a hole, never a reuse) and `released`: the bodies of
//!   which the user keeps no copy. [`UserStore::apply`] runs once it is durable; recovery
//!   applies records through the same code, and every op states its result, so a record
//!   applied twice changes nothing.
//! - Deliveries never wait for the user's turn: [`UserStore::allocate`] takes a UID and holds
//!   it pending, the UID rides in the message frame, and the folder shows nothing from its
//!   lowest pending UID up, so clients never see UID 12 before UID 11. A message that appears
//!   after a later change may carry a modseq a client already passed: it gets a fresh one
//!   (a record from `delivered`/`abandoned`, or, after a crash, from recovery's checkpoint).
//!   UIDNEXT as reported never passes what the log holds, so it never goes back on restart.
//!   Neither `allocate` nor `finish_recovery` needs a clock.
//! - Modseqs are per folder; INBOX always exists with UIDVALIDITY 1 (it cannot be deleted,
//!   so it never needs another); other folders get `max(now, every earlier value + 1)`.
//! - Quota usage counts each body once, however many folders hold a copy: COPY stores no bytes.
//! - Names are UTF-8 with `/` as delimiter; modified UTF-7 is the protocol's concern. RENAME
//!   leaves subscriptions alone (RFC 9051 never removes one unasked); DELETE of a folder with
//!   inferiors leaves its name listed as not selectable while they exist.
//! - A checkpoint restates the store; the highest folder id and UIDVALIDITY of deleted folders
//!   survive it as a folder created and deleted in the same record (no op states them).

mod change;
mod error;
mod export;
mod model;
mod names;
mod recovery;

#[cfg(test)]
mod prop_tests;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use dashmap::DashMap;

pub use change::{CopyOutcome, ExpungeOutcome, StoreOutcome, DEFAULT_FOLDERS};
pub use error::StoreError;
pub use export::{special_use_from, ExportedFolder, ExportedMessage, ExportedStore};
pub use model::{
    Changes, Entry, ListEntry, Snapshot, Status, UserStore, Version, DEFAULT_MAX_FOLDERS,
    INBOX_UIDVALIDITY,
};
pub use names::{FlagMode, DELIMITER, MAX_KEYWORDS, MAX_NAME_BYTES};

use crate::spool::state::MailboxState;

/// Every user's store. A user's mutex is that user's write turn: take it, produce the
/// record, commit it, apply it, release.
pub struct Stores {
    users: DashMap<String, Arc<Mutex<UserStore>>>,
    max_folders: AtomicUsize,
}

impl Default for Stores {
    fn default() -> Self {
        Stores {
            users: DashMap::new(),
            max_folders: AtomicUsize::new(DEFAULT_MAX_FOLDERS),
        }
    }
}

impl Stores {
    pub fn new() -> Self {
        Self::default()
    }

    /// The folder bound for every user, present and future.
    pub fn set_max_folders(&self, max: usize) {
        self.max_folders.store(max, Ordering::Relaxed);
        for user in self.users.iter() {
            lock(user.value()).set_max_folders(max);
        }
    }

    /// The user's store (created empty, INBOX only, on first use).
    pub fn user(&self, user: &str) -> Arc<Mutex<UserStore>> {
        if let Some(found) = self.users.get(user) {
            return Arc::clone(found.value());
        }
        let max = self.max_folders.load(Ordering::Relaxed);
        Arc::clone(
            self.users
                .entry(user.to_string())
                .or_insert_with(|| {
                    let mut store = UserStore::new(user);
                    store.set_max_folders(max);
                    Arc::new(Mutex::new(store))
                })
                .value(),
        )
    }

    /// Runs `f` in the user's turn (no shard lock of the map is held meanwhile).
    pub fn with<R>(&self, user: &str, f: impl FnOnce(&mut UserStore) -> R) -> R {
        let store = self.user(user);
        let mut guard = lock(&store);
        f(&mut guard)
    }

    /// Like [`with`](Self::with) for a user that has a store; None otherwise.
    pub fn with_existing<R>(&self, user: &str, f: impl FnOnce(&mut UserStore) -> R) -> Option<R> {
        let store = Arc::clone(self.users.get(user)?.value());
        let mut guard = lock(&store);
        Some(f(&mut guard))
    }

    pub fn users(&self) -> Vec<String> {
        self.users.iter().map(|u| u.key().clone()).collect()
    }

    /// Ends every user's recovery: the checkpoints to write, one per user that needs one.
    pub fn finish_recovery(&self) -> Vec<MailboxState> {
        let stores: Vec<Arc<Mutex<UserStore>>> =
            self.users.iter().map(|u| Arc::clone(u.value())).collect();
        stores
            .iter()
            .filter_map(|s| lock(s).finish_recovery())
            .collect()
    }
}

/// A panic in another turn leaves the store as its last completed apply left it (applies
/// do not fail midway on input), so the lock is taken anyway.
fn lock(store: &Mutex<UserStore>) -> std::sync::MutexGuard<'_, UserStore> {
    store.lock().unwrap_or_else(PoisonError::into_inner)
}
