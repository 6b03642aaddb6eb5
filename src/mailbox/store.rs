//! Maildrops: for each mailbox, the messages delivered to it and not yet deleted, its usage
//! for quotas, and the exclusive lock a POP3 session holds (RFC 1939 §8: one session per
//! maildrop).
//!
//! This is an index over the spool, not a store of its own: an entry is a queue id and a
//! size; the bytes stay in the spool segments. It is rebuilt at start from the spool's
//! replay and updated only after the spool has made a change durable.
//!
//! Order: a maildrop is in arrival order, which is queue-id order (ids sort by arrival), so
//! POP3 numbers are the same before and after a restart although the replay visits messages
//! in its index's hash order. Deliveries are appended; one that arrives out of order (the
//! replay, or two cores committing at once) marks the maildrop for one sort when a session
//! next takes its snapshot.
//!
//! Shared by every core: one small lock per mailbox (dashmap shards), touched once per
//! delivered message and per POP3 login/QUIT — never per byte and never across mailboxes.

use std::collections::HashSet;
use std::sync::Arc;

use dashmap::DashMap;

use crate::envelope::QueueId;

/// One message in a maildrop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaildropItem {
    pub id: QueueId,
    /// Octets of the stored message (Received header ‖ content), what RETR sends unstuffed.
    pub size: u64,
}

#[derive(Debug, Default)]
struct Maildrop {
    /// In arrival (queue id) order once `unsorted` is false; POP3 numbers them in this order.
    entries: Vec<MaildropItem>,
    /// An entry was appended after one with a larger id: sort before the next snapshot.
    unsorted: bool,
    /// The ids in `entries`: a replayed delivery is recognised without scanning the
    /// maildrop (a linear scan made ingest into one large mailbox quadratic: 23% of the
    /// relay's CPU at 130k messages in one mailbox, `perf` during `benches/tls_ingest.sh`).
    ids: HashSet<QueueId>,
    usage: u64,
    locked: bool,
}

/// Every mailbox's maildrop.
#[derive(Debug, Default)]
pub struct MailStore {
    boxes: DashMap<String, Maildrop>,
}

/// A second session asked for a locked maildrop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InUse;

/// An exclusive hold on one maildrop; dropping it (the session ended, however) unlocks.
#[derive(Debug)]
pub struct MaildropLock {
    store: Arc<MailStore>,
    mailbox: String,
    /// The maildrop as it was when locked, in delivery order (RFC 1939 numbers 1..n).
    pub entries: Vec<MaildropItem>,
}

impl MaildropLock {
    pub fn mailbox(&self) -> &str {
        &self.mailbox
    }
}

impl Drop for MaildropLock {
    fn drop(&mut self) {
        if let Some(mut drop) = self.store.boxes.get_mut(&self.mailbox) {
            drop.locked = false;
        }
    }
}

impl MailStore {
    pub fn new() -> Arc<MailStore> {
        Arc::new(MailStore::default())
    }

    /// Records a durable delivery (after the spool's commit, or while replaying it).
    pub fn deliver(&self, mailbox: &str, entry: MaildropItem) {
        let mut drop = self.boxes.entry(mailbox.to_string()).or_default();
        if drop.ids.insert(entry.id) {
            drop.usage += entry.size;
            if drop.entries.last().is_some_and(|last| last.id > entry.id) {
                drop.unsorted = true;
            }
            drop.entries.push(entry);
        }
    }

    /// Applies durable deletions (after the spool's commit, or while replaying it).
    pub fn remove(&self, mailbox: &str, ids: &[QueueId]) {
        if let Some(mut drop) = self.boxes.get_mut(mailbox) {
            let drop = &mut *drop;
            let mut freed = 0;
            let mut gone = 0;
            for id in ids {
                if drop.ids.remove(id) {
                    gone += 1;
                }
            }
            if gone == 0 {
                return;
            }
            let ids = &drop.ids;
            drop.entries.retain(|e| {
                let keep = ids.contains(&e.id);
                if !keep {
                    freed += e.size;
                }
                keep
            });
            drop.usage = drop.usage.saturating_sub(freed);
        }
    }

    /// Octets currently stored for `mailbox` (for quotas).
    pub fn usage(&self, mailbox: &str) -> u64 {
        self.boxes.get(mailbox).map(|d| d.usage).unwrap_or(0)
    }

    /// Messages currently in `mailbox`.
    pub fn count(&self, mailbox: &str) -> usize {
        self.boxes
            .get(mailbox)
            .map(|d| d.entries.len())
            .unwrap_or(0)
    }

    /// Takes the maildrop's exclusive lock and a snapshot of its entries.
    pub fn lock(self: &Arc<Self>, mailbox: &str) -> Result<MaildropLock, InUse> {
        let mut drop = self.boxes.entry(mailbox.to_string()).or_default();
        if drop.locked {
            return Err(InUse);
        }
        drop.locked = true;
        if drop.unsorted {
            // Ids are unique in a maildrop, so an unstable sort is exact.
            drop.entries.sort_unstable_by_key(|e| e.id);
            drop.unsorted = false;
        }
        let entries = drop.entries.clone();
        Ok(MaildropLock {
            store: Arc::clone(self),
            mailbox: mailbox.to_string(),
            entries,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u64, size: u64) -> MaildropItem {
        MaildropItem {
            id: QueueId::new(1_000 + n, 0),
            size,
        }
    }

    #[test]
    fn deliveries_and_deletions_track_usage() {
        let store = MailStore::new();
        store.deliver("alice", entry(1, 100));
        store.deliver("alice", entry(2, 50));
        store.deliver("alice", entry(2, 50)); // replayed twice: counted once
        assert_eq!((store.count("alice"), store.usage("alice")), (2, 150));
        store.remove("alice", &[entry(1, 0).id]);
        assert_eq!((store.count("alice"), store.usage("alice")), (1, 50));
        assert_eq!(store.usage("bob"), 0);
    }

    #[test]
    fn one_session_per_maildrop_and_release_on_drop() {
        let store = MailStore::new();
        store.deliver("alice", entry(1, 10));
        let first = store.lock("alice").expect("free");
        assert_eq!(first.entries, vec![entry(1, 10)]);
        assert_eq!(store.lock("alice").err(), Some(InUse));
        assert!(store.lock("bob").is_ok(), "other mailboxes are independent");
        drop(first);
        assert!(
            store.lock("alice").is_ok(),
            "a dropped session releases its lock"
        );
    }

    #[test]
    fn snapshots_are_in_arrival_order_whatever_the_delivery_order() {
        let store = MailStore::new();
        let order = |store: &Arc<MailStore>| -> Vec<u64> {
            let maildrop = store.lock("alice").unwrap();
            maildrop.entries.iter().map(|e| e.size).collect()
        };
        // The replay's hash order, then a live delivery.
        for n in [5, 1, 4, 2, 3] {
            store.deliver("alice", entry(n, n));
        }
        store.deliver("alice", entry(6, 6));
        assert_eq!(order(&store), [1, 2, 3, 4, 5, 6]);
        // Removal keeps the order; a late out-of-order delivery is sorted in.
        store.remove("alice", &[entry(2, 0).id]);
        store.deliver("alice", entry(0, 0));
        assert_eq!(order(&store), [0, 1, 3, 4, 5, 6]);
    }

    #[test]
    fn snapshot_does_not_change_under_a_session() {
        let store = MailStore::new();
        store.deliver("alice", entry(1, 10));
        let lock = store.lock("alice").unwrap();
        store.deliver("alice", entry(2, 10));
        assert_eq!(
            lock.entries.len(),
            1,
            "RFC 1939 numbers stay stable in a session"
        );
        drop(lock);
        assert_eq!(store.lock("alice").unwrap().entries.len(), 2);
    }
}
