//! The folder views IMAP sessions share ([`View`]): one per folder version that some
//! session shows, across every core. Sessions with the same folder selected hold the same
//! view, so a session idling in a folder of 10,000 messages costs a pointer rather than its
//! own copy of the folder's message list.
//!
//! The table keeps weak references: a view lives as long as a session shows it, and an
//! entry whose view is gone is swept after enough insertions (so the table's size is bounded
//! by the views alive plus that many).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use crate::imap::store::{MessageMeta, View};
use crate::spool::state::FolderId;

/// Insertions between two sweeps of dead entries.
const SWEEP_EVERY: usize = 1024;

/// Which version of which folder a view shows. UIDVALIDITY tells a folder from a later one
/// that reuses its id; the change counter moves with every change a session can see.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    user: String,
    folder: FolderId,
    uidvalidity: u32,
}

#[derive(Default)]
struct Table {
    views: HashMap<Key, (u64, Weak<Vec<MessageMeta>>)>,
    inserted: usize,
}

/// The process's table of shared views.
#[derive(Default)]
pub struct SharedViews {
    table: Mutex<Table>,
}

impl SharedViews {
    /// The view of `folder` at change counter `changes`: the one a session already holds,
    /// or `build()`'s, kept for the next session that asks.
    pub fn get(
        &self,
        user: &str,
        folder: FolderId,
        uidvalidity: u32,
        changes: u64,
        build: impl FnOnce() -> Vec<MessageMeta>,
    ) -> View {
        let key = Key {
            user: user.to_owned(),
            folder,
            uidvalidity,
        };
        let Ok(mut table) = self.table.lock() else {
            // A panic elsewhere poisoned the table: sharing is an optimisation only.
            return Arc::new(build());
        };
        if let Some(view) = table
            .views
            .get(&key)
            .filter(|(at, _)| *at == changes)
            .and_then(|(_, weak)| weak.upgrade())
        {
            return view;
        }
        let view = Arc::new(build());
        table.views.insert(key, (changes, Arc::downgrade(&view)));
        table.inserted += 1;
        if table.inserted >= SWEEP_EVERY {
            table.inserted = 0;
            table.views.retain(|_, (_, weak)| weak.strong_count() > 0);
        }
        view
    }

    /// Entries in the table (live or not yet swept).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.lock().map_or(0, |t| t.views.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imap::store::Flags;

    fn message(uid: u32) -> MessageMeta {
        MessageMeta {
            uid,
            flags: Flags::default(),
            size: 10,
            internal_date: 0,
            zone_minutes: 0,
            modseq: 1,
        }
    }

    #[test]
    fn sessions_at_one_version_share_one_view_and_a_change_makes_a_new_one() {
        let views = SharedViews::default();
        let a = views.get("u", 1, 7, 3, || vec![message(1)]);
        let b = views.get("u", 1, 7, 3, || panic!("built twice"));
        assert!(Arc::ptr_eq(&a, &b));
        let c = views.get("u", 1, 7, 4, || vec![message(1), message(2)]);
        assert_eq!(c.len(), 2);
        // Another user, another folder or a recreated folder never share.
        let d = views.get("v", 1, 7, 4, Vec::new);
        let e = views.get("u", 2, 7, 4, Vec::new);
        let f = views.get("u", 1, 8, 4, Vec::new);
        assert!(d.is_empty() && e.is_empty() && f.is_empty());
    }

    #[test]
    fn a_view_no_session_holds_is_rebuilt_and_dead_entries_are_swept() {
        let views = SharedViews::default();
        drop(views.get("u", 1, 7, 3, || vec![message(1)]));
        let mut built = false;
        let _again = views.get("u", 1, 7, 3, || {
            built = true;
            vec![message(1)]
        });
        assert!(built, "a dropped view is not kept alive by the table");
        for folder in 0..(2 * SWEEP_EVERY as u32) {
            drop(views.get("u", folder + 10, 7, 1, Vec::new));
        }
        assert!(
            views.len() <= SWEEP_EVERY + 1,
            "{} entries after the sweep",
            views.len()
        );
    }
}
