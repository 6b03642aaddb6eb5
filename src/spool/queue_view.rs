//! The queue view: what [`Spool::replay`](super::Spool::replay) says about every live message
//! with remote recipients (sender, arrival, size, per recipient the latest Deferred with its
//! reply, the final result, the notice markers), kept in memory so that `relay queue list`
//! and `show` read no segment per request.
//!
//! Built lazily: the first [`Spool::queued`](super::Spool::queued) reads the log once (with
//! compaction held off, so no frame moves under the scan); from the moment the build starts,
//! the writer threads feed it every message with remote recipients and every delivery record
//! they commit (after the live index applied it), so nothing committed during the scan is
//! missed. Folding is idempotent and order-free (the rules of the replay's own fold), so a
//! record seen both by the scan and by a writer counts once. An entry leaves the view when
//! the live index calls its message garbage (the last delivery result or mailbox deletion
//! made it so).
//!
//! Memory: about what a replay of the queued messages holds (≈ 200 B per message plus its
//! addresses and one reply per recipient), for as long as the spool is open, and only once
//! the operator has asked for the queue. The writers take one lock per message with remote
//! recipients and per delivery record; a listing holds it while it walks the view in id
//! order (one index lookup per message it passes, a copy of at most `limit` of them).

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use super::frame::DeliveryRecord;
use super::index::{DeliveryHistory, LiveIndex};
use super::{Location, Placement, ReplayMessage};
use crate::envelope::QueueId;

/// A committed message as the view takes it (borrowed from the writer's record or the scan).
pub(crate) struct NewEntry<'a> {
    pub id: QueueId,
    pub arrival_unix_micros: u64,
    pub sender: &'a str,
    pub recipients: usize,
    pub mailboxes: &'a [String],
    pub remote: &'a [String],
    pub placements: &'a [Option<Placement>],
    pub location: Location,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Phase {
    /// Not built (or a build failed): writers feed nothing.
    #[default]
    Off,
    /// A scan is running: everything is folded, even records of ids not seen yet.
    Building,
    /// Complete: only records of messages in the view are folded.
    Ready,
}

#[derive(Default)]
struct State {
    phase: Phase,
    /// Delivery state is folded into `history`; `pending`/`finished`/`dsn_sent` stay empty here.
    messages: BTreeMap<QueueId, ReplayMessage>,
    history: DeliveryHistory,
}

#[derive(Default)]
pub(crate) struct QueueView {
    state: Mutex<State>,
}

impl QueueView {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_ready(&self) -> bool {
        self.lock().phase == Phase::Ready
    }

    /// Starts a build from nothing: writers feed it from now on.
    pub fn begin(&self) {
        let mut s = self.lock();
        *s = State {
            phase: Phase::Building,
            ..State::default()
        };
    }

    /// The build failed: drop everything, feed nothing.
    pub fn abandon(&self) {
        *self.lock() = State::default();
    }

    /// The scan is complete: keep only live messages and their histories.
    pub fn finish(&self, index: &LiveIndex) {
        let mut s = self.lock();
        s.messages.retain(|id, _| live(index, *id));
        let State {
            messages, history, ..
        } = &mut *s;
        history.retain(|id| messages.contains_key(&id));
        s.phase = Phase::Ready;
    }

    /// A message committed (writer) or read (scan): kept if it has remote recipients.
    pub fn message(&self, entry: NewEntry<'_>) {
        if entry.remote.is_empty() {
            return;
        }
        let mut s = self.lock();
        if s.phase == Phase::Off {
            return;
        }
        s.messages.entry(entry.id).or_insert_with(|| ReplayMessage {
            id: entry.id,
            arrival_unix_micros: entry.arrival_unix_micros,
            mailboxes: entry.mailboxes.to_vec(),
            remote: entry.remote.to_vec(),
            placements: entry.placements.to_vec(),
            body_len: entry.location.body_len,
            sender: entry.sender.to_string(),
            recipients: entry.recipients,
            pending: Vec::new(),
            finished: Vec::new(),
            dsn_sent: Vec::new(),
            kept_uidl: None,
        });
    }

    /// A delivery record committed (writer, after the index applied it) or read (scan).
    pub fn delivery(&self, record: &DeliveryRecord, index: &LiveIndex) {
        let mut s = self.lock();
        match s.phase {
            Phase::Off => {}
            Phase::Building => s.history.add(record),
            Phase::Ready => {
                let known = |id: &QueueId| s.messages.contains_key(id);
                let mut mine = DeliveryRecord {
                    results: record
                        .results
                        .iter()
                        .filter(|r| known(&r.id))
                        .cloned()
                        .collect(),
                    dsn_sent: record
                        .dsn_sent
                        .iter()
                        .filter(|d| known(&d.id))
                        .cloned()
                        .collect(),
                };
                if !mine.results.is_empty() || !mine.dsn_sent.is_empty() {
                    let ids: Vec<QueueId> = mine.results.iter().map(|r| r.id).collect();
                    s.history.add_owned(std::mem::take(&mut mine));
                    prune(&mut s, index, ids);
                }
            }
        }
    }

    /// Mailbox deletions committed: a message they finish leaves the view.
    pub fn deletion(&self, ids: &[QueueId], index: &LiveIndex) {
        let mut s = self.lock();
        if s.phase == Phase::Ready {
            prune(&mut s, index, ids.iter().copied());
        }
    }

    /// Queued messages (a remote recipient without a final result), oldest first, at most
    /// `limit`, each filled like the replay fills it.
    pub fn queued(&self, index: &LiveIndex, limit: usize) -> Vec<ReplayMessage> {
        let s = self.lock();
        let mut out = Vec::new();
        for (id, message) in &s.messages {
            if out.len() >= limit {
                break;
            }
            if index.has_pending_remote(*id) {
                let mut message = message.clone();
                s.history.fill(&mut message);
                out.push(message);
            }
        }
        out
    }

    /// One message of the view, filled; `None` if it is not in the view.
    pub fn get(&self, id: QueueId, index: &LiveIndex) -> Option<ReplayMessage> {
        if !live(index, id) {
            return None;
        }
        let s = self.lock();
        let mut message = s.messages.get(&id)?.clone();
        s.history.fill(&mut message);
        Some(message)
    }

    #[cfg(test)]
    pub fn len(&self) -> (usize, usize) {
        let s = self.lock();
        (s.messages.len(), s.history.len())
    }
}

fn live(index: &LiveIndex, id: QueueId) -> bool {
    index.status(id).is_some_and(|(_, garbage)| !garbage)
}

fn prune(s: &mut State, index: &LiveIndex, ids: impl IntoIterator<Item = QueueId>) {
    for id in ids {
        if !live(index, id) && s.messages.remove(&id).is_some() {
            s.history.forget(id);
        }
    }
}
