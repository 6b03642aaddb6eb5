//! Every user's mail: the folders of the mail store (`crate::mailstore`, one model per user,
//! rebuilt from the spool's log), the write turn that orders a user's changes, the change
//! signal that wakes a user's IMAP sessions, and POP3's view of INBOX with its exclusive
//! lock (RFC 1939 §8: one POP3 session per maildrop; IMAP sessions are not kept out).
//!
//! Bytes stay in the spool segments: a message in a folder is a queue id, a size and the
//! IMAP metadata. Nothing here changes before the spool has made the change durable.
//!
//! Order (docs/MAILSTORE.md): every change that produces a record takes the user's turn, an
//! async lock held while the record commits, and applies the record before passing the turn
//! on, so records apply in the order of their per-user `seq`. Deliveries only take a UID
//! (under the short synchronous lock, [`MailStore::place`]) before their message frame is
//! queued, and take the turn after it committed ([`MailStore::delivered`]). The synchronous
//! lock of a user's model is never held across an await.
//!
//! POP3 numbers INBOX in UID order, which is arrival order for deliveries, so numbers are
//! the same before and after a restart.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::watch;

use crate::envelope::QueueId;
use crate::mailstore::{StoreError, Stores, UserStore};
use crate::pop3::uidl::Listed;
use crate::spool::state::{Flags, MailboxState, Placement, SpecialUse, INBOX};
use crate::spool::{Replay, ShardHandle, SpoolError};

/// Which folder a delivery is filed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Filing {
    #[default]
    Inbox,
    /// The user's Junk folder (the sender checks' `junk` action): the folder with the
    /// `\Junk` role, created first when missing ([`MailStore::prepare_filing`]); INBOX when
    /// the user has none and none can be made (the folder limit).
    Junk,
}

/// One message in POP3's view of a maildrop (INBOX).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaildropItem {
    pub id: QueueId,
    /// Octets of the stored message (Received header ‖ content), what RETR sends unstuffed.
    pub size: u64,
    /// Its UIDL: the queue id in hex, or the one it kept from the node it was moved from
    /// ([`crate::pop3::uidl`]).
    pub uidl: String,
}

/// What a user has besides the model: the turn, the change signal, POP3's lock.
#[derive(Debug)]
struct UserSide {
    turn: tokio::sync::Mutex<()>,
    /// Bumped after every applied change or delivery of the user's.
    changed: watch::Sender<u64>,
    pop3_locked: AtomicBool,
    /// Set while the user is moved to another node (`relay user move`): deliveries, changes
    /// and new POP3 sessions are refused for a while.
    moving: AtomicBool,
    /// Deliveries between their check of `moving` and the end of their frames' commits.
    deliveries: AtomicUsize,
}

impl Default for UserSide {
    fn default() -> Self {
        UserSide {
            turn: tokio::sync::Mutex::new(()),
            changed: watch::Sender::new(0),
            pop3_locked: AtomicBool::new(false),
            moving: AtomicBool::new(false),
            deliveries: AtomicUsize::new(0),
        }
    }
}

/// A delivery in flight for some users (see [`MailStore::begin_deliveries`]).
#[derive(Debug)]
pub struct Deliveries(Vec<Arc<UserSide>>);

impl Drop for Deliveries {
    fn drop(&mut self) {
        for side in &self.0 {
            side.deliveries.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// The user is being moved to another node: try again later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moving;

/// Every local user's mail.
#[derive(Default)]
pub struct MailStore {
    folders: Stores,
    users: DashMap<String, Arc<UserSide>>,
}

/// A second POP3 session asked for a locked maildrop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InUse;

/// A change could not be made durable, or the store refused it.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error(transparent)]
    Refused(#[from] StoreError),
    #[error("not stored: {0}")]
    Spool(#[from] SpoolError),
    #[error("not stored: the spool writer is gone")]
    Closed,
    #[error("the mailbox is being moved to another node; try again shortly")]
    Moving,
}

/// An exclusive POP3 hold on one maildrop; dropping it (the session ended, however) unlocks.
#[derive(Debug)]
pub struct MaildropLock {
    side: Arc<UserSide>,
    mailbox: String,
    /// INBOX as it was when locked, in UID order (RFC 1939 numbers 1..n).
    pub entries: Vec<MaildropItem>,
}

impl MaildropLock {
    pub fn mailbox(&self) -> &str {
        &self.mailbox
    }
}

impl Drop for MaildropLock {
    fn drop(&mut self) {
        self.side.pop3_locked.store(false, Ordering::Release);
    }
}

impl std::fmt::Debug for MailStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailStore")
            .field("users", &self.users.len())
            .finish_non_exhaustive()
    }
}

impl MailStore {
    pub fn new() -> Arc<MailStore> {
        Arc::new(MailStore::default())
    }

    /// The per-user model (for queries and for the IMAP driver's synchronous steps).
    pub fn folders(&self) -> &Stores {
        &self.folders
    }

    fn side(&self, user: &str) -> Arc<UserSide> {
        if let Some(side) = self.users.get(user) {
            return Arc::clone(side.value());
        }
        Arc::clone(self.users.entry(user.to_string()).or_default().value())
    }

    /// A receiver that sees every later change of the user's folders.
    pub fn watch(&self, user: &str) -> watch::Receiver<u64> {
        self.side(user).changed.subscribe()
    }

    fn notify(&self, user: &str) {
        self.side(user)
            .changed
            .send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Octets stored for `mailbox` (for quotas): each body once, whatever holds a copy.
    pub fn usage(&self, mailbox: &str) -> u64 {
        self.folders
            .with_existing(mailbox, |s| s.usage())
            .unwrap_or(0)
    }

    /// Messages in `mailbox`'s folders.
    pub fn count(&self, mailbox: &str) -> usize {
        self.folders
            .with_existing(mailbox, |s| s.message_count())
            .unwrap_or(0)
    }

    /// Takes the maildrop's POP3 lock and a snapshot of INBOX.
    pub fn lock(&self, mailbox: &str) -> Result<MaildropLock, InUse> {
        let side = self.side(mailbox);
        if side.moving.load(Ordering::SeqCst) {
            return Err(InUse);
        }
        if side
            .pop3_locked
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(InUse);
        }
        let entries = self
            .folders
            .with(mailbox, |s| {
                let s = &*s;
                let snapshot = s.snapshot(INBOX)?;
                let listed: Vec<Listed<'_>> = snapshot
                    .messages
                    .iter()
                    .map(|(uid, e)| Listed {
                        uid: *uid,
                        id: e.id,
                        kept: s.kept_uidl(e.id),
                    })
                    .collect();
                let uidls = crate::pop3::uidl::shown(&listed);
                Ok::<Vec<MaildropItem>, StoreError>(
                    snapshot
                        .messages
                        .into_iter()
                        .zip(uidls)
                        .map(|((_, e), uidl)| MaildropItem {
                            id: e.id,
                            size: e.size,
                            uidl,
                        })
                        .collect(),
                )
            })
            .unwrap_or_default();
        Ok(MaildropLock {
            side,
            mailbox: mailbox.to_string(),
            entries,
        })
    }

    // ---- deliveries ----

    /// Takes an INBOX UID for each mailbox a new message is for, before its frame is queued
    /// (`None` where the store cannot take one: that copy is then numbered at the next
    /// start). `internal_date` is the arrival, in seconds since the epoch.
    pub fn place(
        &self,
        mailboxes: &[String],
        internal_date: i64,
        filing: Filing,
    ) -> Vec<Option<Placement>> {
        mailboxes
            .iter()
            .map(|user| {
                self.folders
                    .with(user, |s| {
                        let folder = match filing {
                            Filing::Inbox => INBOX,
                            Filing::Junk => s.role_folder(SpecialUse::Junk).unwrap_or(INBOX),
                        };
                        s.allocate(folder, &Flags::default(), internal_date, 0)
                    })
                    .map_err(|error| {
                        tracing::warn!(user = %crate::logsafe::Safe(user), %error, "no UID for a delivery");
                    })
                    .ok()
            })
            .collect()
    }

    /// Before [`place`](Self::place) files a message under `filing`: the folder it goes to,
    /// created durably (its own record, in each user's turn) where a user lacks it, so the
    /// message frame never names a folder the log does not hold yet. A user whose folder
    /// cannot be made gets the message in INBOX (logged): filed wrongly beats refused.
    pub async fn prepare_filing(&self, spool: &ShardHandle, mailboxes: &[String], filing: Filing) {
        if filing == Filing::Inbox {
            return;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        for user in mailboxes {
            let present = self
                .folders
                .with(user, |s| s.role_folder(SpecialUse::Junk).is_some());
            if present {
                continue;
            }
            let made = self
                .change(spool, user, |s| {
                    Ok((s.ensure_role(SpecialUse::Junk, now), ()))
                })
                .await;
            if let Err(error) = made {
                tracing::warn!(user = %crate::logsafe::Safe(user), %error, "no Junk folder; filed in INBOX");
            }
        }
    }

    /// The message frame carrying `placements` (parallel to `mailboxes`) committed: the
    /// copies become visible, in each user's turn. A record a delivery needs (a fresh modseq
    /// for a message that showed late) is written through `spool`; it carries no one's
    /// acknowledgement, so a failure only logs (recovery gives the modseq again).
    pub async fn delivered(
        &self,
        spool: &ShardHandle,
        id: QueueId,
        size: u64,
        mailboxes: &[String],
        placements: &[Option<Placement>],
    ) {
        for (i, user) in mailboxes.iter().enumerate() {
            let Some(Some(placement)) = placements.get(i) else {
                continue;
            };
            let side = self.side(user);
            let _turn = side.turn.lock().await;
            let record = self
                .folders
                .with(user, |s| s.delivered(id, size, placement));
            if let Some(record) = record {
                if let Err(error) = commit(spool, &record).await {
                    tracing::warn!(user = %crate::logsafe::Safe(user), %error, "delivery record not stored");
                }
                self.folders.with(user, |s| s.apply(&record));
            }
            drop(_turn);
            self.notify(user);
        }
    }

    /// The message frame carrying `placements` did not commit: the UIDs become holes.
    pub async fn abandoned(
        &self,
        spool: &ShardHandle,
        mailboxes: &[String],
        placements: &[Option<Placement>],
    ) {
        for (i, user) in mailboxes.iter().enumerate() {
            let Some(Some(placement)) = placements.get(i) else {
                continue;
            };
            let side = self.side(user);
            let _turn = side.turn.lock().await;
            let record = self
                .folders
                .with(user, |s| s.abandoned(placement.folder, placement.uid));
            if let Some(record) = record {
                if commit(spool, &record).await.is_ok() {
                    self.folders.with(user, |s| s.apply(&record));
                }
            }
            drop(_turn);
            self.notify(user);
        }
    }

    // ---- changes ----

    /// Makes one change of `user`'s: in the user's turn, `make` validates against the model
    /// and answers the record to write (None: nothing to write) and its result; the record
    /// commits through `spool`, then applies. Ok only once it is durable and applied.
    pub async fn change<T>(
        &self,
        spool: &ShardHandle,
        user: &str,
        make: impl FnOnce(&mut UserStore) -> Result<(Option<MailboxState>, T), StoreError>,
    ) -> Result<T, ChangeError> {
        self.change_as(spool, user, false, make).await
    }

    /// [`change`](Self::change) for the move of `user` itself, which goes on while the
    /// user's other changes are refused.
    pub async fn change_moving<T>(
        &self,
        spool: &ShardHandle,
        user: &str,
        make: impl FnOnce(&mut UserStore) -> Result<(Option<MailboxState>, T), StoreError>,
    ) -> Result<T, ChangeError> {
        self.change_as(spool, user, true, make).await
    }

    async fn change_as<T>(
        &self,
        spool: &ShardHandle,
        user: &str,
        mover: bool,
        make: impl FnOnce(&mut UserStore) -> Result<(Option<MailboxState>, T), StoreError>,
    ) -> Result<T, ChangeError> {
        let side = self.side(user);
        let turn = side.turn.lock().await;
        if !mover && side.moving.load(Ordering::SeqCst) {
            return Err(ChangeError::Moving);
        }
        let (record, out) = self.folders.with(user, make)?;
        if let Some(record) = record {
            commit(spool, &record).await?;
            // A checkpoint keeps a busy user's log short; it is a record like any other,
            // written in the same turn.
            let checkpoint = self.folders.with(user, |s| {
                s.apply(&record);
                s.needs_checkpoint().then(|| s.checkpoint())
            });
            if let Some(checkpoint) = checkpoint {
                if commit(spool, &checkpoint).await.is_ok() {
                    self.folders.with(user, |s| s.apply(&checkpoint));
                }
            }
            drop(turn);
            self.notify(user);
        }
        Ok(out)
    }

    // ---- moving a user to another node ----

    /// Counts a delivery for `mailboxes` in flight until the answer is dropped; refused when
    /// one of them is being moved. Checked and counted in that order, as
    /// [`set_moving`](Self::set_moving) sets then waits, so no delivery slips past a move.
    pub fn begin_deliveries(&self, mailboxes: &[String]) -> Result<Deliveries, Moving> {
        let mut held = Deliveries(Vec::with_capacity(mailboxes.len()));
        for user in mailboxes {
            let side = self.side(user);
            side.deliveries.fetch_add(1, Ordering::SeqCst);
            held.0.push(Arc::clone(&side));
            if side.moving.load(Ordering::SeqCst) {
                return Err(Moving);
            }
        }
        Ok(held)
    }

    /// Starts or ends refusing `user`'s deliveries, changes and new POP3 sessions.
    pub fn set_moving(&self, user: &str, moving: bool) {
        self.side(user).moving.store(moving, Ordering::SeqCst);
        self.notify(user);
    }

    pub fn is_moving(&self, user: &str) -> bool {
        self.users
            .get(user)
            .is_some_and(|s| s.moving.load(Ordering::SeqCst))
    }

    /// Deliveries to `user` started and not yet resolved.
    pub fn deliveries_in_flight(&self, user: &str) -> usize {
        self.side(user).deliveries.load(Ordering::SeqCst)
    }

    /// Whether a POP3 session holds `user`'s maildrop.
    pub fn pop3_locked(&self, user: &str) -> bool {
        self.side(user).pop3_locked.load(Ordering::SeqCst)
    }

    /// A message frame imported from another node committed with `placement` (that node's
    /// UID, flags and modseq) and the POP3 UIDL it showed there (in the frame's origin): it
    /// lands as it is, in the user's turn.
    pub async fn imported(
        &self,
        user: &str,
        id: QueueId,
        size: u64,
        placement: &Placement,
        uidl: &str,
    ) {
        let side = self.side(user);
        let _turn = side.turn.lock().await;
        self.folders.with(user, |s| {
            s.keep_uidl(id, uidl);
            s.import_placed(id, size, placement)
        });
        drop(_turn);
        self.notify(user);
    }

    /// The UIDL POP3 shows here for `user`'s message `id` when nothing in the maildrop
    /// twins it ([`crate::pop3::uidl`]): the one it kept from another node, or its queue id.
    /// What a user move sends, so the target shows the same.
    pub fn uidl(&self, user: &str, id: QueueId) -> String {
        self.folders
            .with_existing(user, |s| {
                s.kept_uidl(id)
                    .filter(|u| crate::envelope::Uidl::new(*u).is_ok())
                    .map(str::to_string)
            })
            .flatten()
            .unwrap_or_else(|| id.to_string())
    }

    // ---- recovery ----

    /// Rebuilds every user's folders from the spool's replay; answers the checkpoints to
    /// write (docs/MAILSTORE.md) before serving.
    pub fn recover(&self, replay: &Replay) -> Vec<MailboxState> {
        for message in &replay.messages {
            let arrival = i64::try_from(message.arrival_unix_micros / 1_000_000).unwrap_or(0);
            for (i, user) in message.mailboxes.iter().enumerate() {
                let placement = message.placements.get(i).and_then(Option::as_ref);
                self.folders.with(user, |s| {
                    if let Some(uidl) = &message.kept_uidl {
                        s.keep_uidl(message.id, uidl);
                    }
                    s.replay_delivery(message.id, message.body_len, arrival, placement)
                });
            }
        }
        for (user, id) in &replay.deletions {
            self.folders
                .with(user, |s| s.replay_pop3_deletion(std::slice::from_ref(id)));
        }
        for state in &replay.states {
            self.folders.with(&state.user, |s| s.replay_state(state));
        }
        self.folders.finish_recovery()
    }

    /// Delivers a message into `user`'s INBOX at once, without the spool (tests of the
    /// layers above).
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn deliver_now(&self, user: &str, id: QueueId, size: u64) {
        self.folders.with(user, |s| {
            if let Ok(p) = s.allocate(INBOX, &Flags::default(), 0, 0) {
                if let Some(r) = s.delivered(id, size, &p) {
                    s.apply(&r);
                }
            }
        });
    }
}

/// Appends `record` and waits until it is durable.
async fn commit(spool: &ShardHandle, record: &MailboxState) -> Result<(), ChangeError> {
    let pending = spool.append_state(record.clone())?;
    match pending.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(ChangeError::Spool(error)),
        Err(_) => Err(ChangeError::Closed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> QueueId {
        QueueId::new(1_000 + n, 0)
    }

    #[test]
    fn deliveries_count_towards_usage_once() {
        let store = MailStore::new();
        store.deliver_now("alice", id(1), 100);
        store.deliver_now("alice", id(2), 50);
        assert_eq!((store.count("alice"), store.usage("alice")), (2, 150));
        assert_eq!(store.usage("bob"), 0);
    }

    #[test]
    fn one_pop3_session_per_maildrop_and_release_on_drop() {
        let store = MailStore::new();
        store.deliver_now("alice", id(1), 10);
        let first = store.lock("alice").expect("free");
        assert_eq!(
            first.entries,
            vec![MaildropItem {
                id: id(1),
                size: 10,
                uidl: id(1).to_string(),
            }]
        );
        assert_eq!(store.lock("alice").err(), Some(InUse));
        assert!(store.lock("bob").is_ok(), "other mailboxes are independent");
        drop(first);
        assert!(
            store.lock("alice").is_ok(),
            "a dropped session releases its lock"
        );
    }

    #[test]
    fn snapshot_does_not_change_under_a_session() {
        let store = MailStore::new();
        store.deliver_now("alice", id(1), 10);
        let lock = store.lock("alice").unwrap();
        store.deliver_now("alice", id(2), 10);
        assert_eq!(
            lock.entries.len(),
            1,
            "RFC 1939 numbers stay stable in a session"
        );
        drop(lock);
        assert_eq!(store.lock("alice").unwrap().entries.len(), 2);
    }

    fn inbox(uid: u32) -> Placement {
        Placement {
            folder: INBOX,
            uidvalidity: crate::mailstore::INBOX_UIDVALIDITY,
            uid,
            flags: Flags::default(),
            internal_date: 0,
            zone_minutes: 0,
            modseq: 1,
        }
    }

    fn uidls(store: &MailStore, user: &str) -> Vec<String> {
        let lock = store.lock(user).unwrap();
        lock.entries.iter().map(|e| e.uidl.clone()).collect()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_imported_body_keeps_its_uidl_live_and_after_recovery() {
        let store = MailStore::new();
        store
            .imported("bea", id(1), 10, &inbox(1), "SOURCE-ONE")
            .await;
        store
            .imported("bea", id(2), 10, &inbox(2), "SOURCE-TWO")
            .await;
        assert_eq!(uidls(&store, "bea"), ["SOURCE-ONE", "SOURCE-TWO"]);
        assert_eq!(
            store.uidl("bea", id(1)),
            "SOURCE-ONE",
            "what a move sends on"
        );
        assert_eq!(store.uidl("bea", id(9)), id(9).to_string());
        assert_eq!(store.uidl("nobody", id(9)), id(9).to_string());

        // A restart: the frames' origins hand the UIDLs back (the second frame is from a
        // move before UIDLs were kept: its queue id here).
        let message = |n: u64, uid: u32, kept: Option<&str>| crate::spool::ReplayMessage {
            id: id(n),
            arrival_unix_micros: 0,
            mailboxes: vec!["bea".into()],
            remote: Vec::new(),
            placements: vec![Some(inbox(uid))],
            body_len: 10,
            sender: String::new(),
            recipients: 1,
            pending: Vec::new(),
            finished: Vec::new(),
            dsn_sent: Vec::new(),
            kept_uidl: kept.map(Box::from),
        };
        let replay = Replay {
            messages: vec![
                message(1, 1, Some("SOURCE-ONE")),
                message(2, 2, None),
                message(3, 3, None),
            ],
            ..Replay::default()
        };
        let again = MailStore::new();
        for checkpoint in again.recover(&replay) {
            again
                .folders
                .with(&checkpoint.user, |s| s.apply(&checkpoint));
        }
        assert_eq!(
            uidls(&again, "bea"),
            [
                "SOURCE-ONE".to_string(),
                id(2).to_string(),
                id(3).to_string()
            ]
        );
    }

    #[test]
    fn pop3_numbers_follow_uids_whatever_order_frames_commit_in() {
        let store = MailStore::new();
        let users = vec!["alice".to_string()];
        let p: Vec<_> = (0..3)
            .map(|_| store.place(&users, 0, Filing::Inbox))
            .collect();
        // Frames commit 3, 1, 2 (two cores): numbering stays 1, 2, 3.
        for (n, i) in [(3u64, 2usize), (1, 0), (2, 1)] {
            let placement = p[i][0].clone().unwrap();
            store.folders.with("alice", |s| {
                if let Some(r) = s.delivered(id(n), n, &placement) {
                    s.apply(&r);
                }
            });
        }
        let sizes: Vec<u64> = store
            .lock("alice")
            .unwrap()
            .entries
            .iter()
            .map(|e| e.size)
            .collect();
        assert_eq!(sizes, [1, 2, 3]);
    }
}
