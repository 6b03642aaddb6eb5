//! Queue control (`relay queue …`), the parts that run off the shard threads: commands sent
//! to every core through the mesh with a bounded wait for their answers, and the queue
//! listing, built from the spool's replay (the durable view: sender, recipients, attempts,
//! last reply, next attempt), so it reads the same whether the server runs or not.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::mesh::{Control, FlushFilter, Mesh, Queued};
use crate::envelope::QueueId;
use crate::spool::Replay;

/// A core did not answer in time (it is stuck, or shutting down).
#[derive(Debug, thiserror::Error)]
#[error("core {core} did not answer the queue command within {waited:?}")]
pub struct NoAnswer {
    pub core: usize,
    pub waited: Duration,
}

fn ask<T>(
    mesh: &Mesh,
    timeout: Duration,
    make: impl Fn(crossbeam::channel::Sender<T>) -> Control,
) -> Result<Vec<T>, NoAnswer> {
    let mut receivers = Vec::new();
    for core in 0..mesh.cores() {
        let (tx, rx) = crossbeam::channel::bounded(1);
        mesh.control(core, make(tx));
        receivers.push((core, rx));
    }
    let deadline = std::time::Instant::now() + timeout;
    let mut answers = Vec::new();
    for (core, rx) in receivers {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(answer) => answers.push(answer),
            Err(_) => {
                return Err(NoAnswer {
                    core,
                    waited: timeout,
                })
            }
        }
    }
    Ok(answers)
}

/// Deferred entries matching `which` become ready now, on every core (a dead-destination hold
/// on them is lifted too). Returns how many entries moved.
pub fn flush(mesh: &Mesh, which: FlushFilter, timeout: Duration) -> Result<usize, NoAnswer> {
    let answers = ask(mesh, timeout, |reply| Control::Flush {
        which: which.clone(),
        reply,
    })?;
    Ok(answers.into_iter().sum())
}

/// Takes message `id` out of every core's queue and ends its recipients: with a failure
/// notice (`bounce`) or silently. Returns how many entries were removed (0: not queued now,
/// or in the middle of a delivery attempt).
pub fn remove(
    mesh: &Mesh,
    id: QueueId,
    bounce: bool,
    timeout: Duration,
) -> Result<usize, NoAnswer> {
    let answers = ask(mesh, timeout, |reply| Control::Remove { id, bounce, reply })?;
    Ok(answers.into_iter().sum())
}

/// What every core holds in memory now.
pub fn snapshot(mesh: &Mesh, timeout: Duration) -> Result<Vec<Queued>, NoAnswer> {
    let answers = ask(mesh, timeout, |reply| Control::Snapshot { reply })?;
    Ok(answers.into_iter().flatten().collect())
}

/// `relay node drain`: takes message `id` out of every core's queue without a record.
/// Returns (entries taken, whether an entry is out for an attempt now: the caller waits and
/// asks again, the attempt's record decides what is still pending).
pub fn withdraw(mesh: &Mesh, id: QueueId, timeout: Duration) -> Result<(usize, bool), NoAnswer> {
    let answers = ask(mesh, timeout, |reply| Control::Withdraw { id, reply })?;
    Ok(answers
        .into_iter()
        .fold((0, false), |(n, o), (m, p)| (n + m, o || p)))
}

/// A message a draining peer handed over (`server::xfer_in`), just stored as `id`: its
/// recipients go to their destinations' cores with the schedule they had on the drainer
/// (attempts, next attempt, delay notice), grouped like a rebuild at start. A full mesh queue
/// counts a drop: the owner's reconciliation takes the recipients from the spool.
pub fn enqueue_transferred(
    shared: &std::sync::Arc<super::DeliveryShared>,
    from: usize,
    id: QueueId,
    size: u64,
    transfer: &crate::queue::xfer::Transfer,
) {
    let remote = transfer.remote();
    // (attempts, next attempt, delay noticed) → recipient indices.
    type Batch = ((u32, Option<u64>, bool), Vec<usize>);
    let mut batches: Vec<Batch> = Vec::new();
    for (index, r) in transfer.recipients.iter().enumerate() {
        let s = &r.sched;
        let key = (s.attempts, s.next_attempt_unix_micros, s.delay_noticed);
        match batches.iter_mut().find(|(k, _)| *k == key) {
            Some((_, list)) => list.push(index),
            None => batches.push((key, vec![index])),
        }
    }
    let now = std::time::SystemTime::now();
    let spread = shared.spread();
    for ((attempts, next, delay_noticed), indices) in batches {
        for (key, group) in shared.group(&remote, indices) {
            let Ok(recipients) = crate::queue::RcptSet::from_indices(&group) else {
                shared.mesh.note_dropped();
                continue;
            };
            let due = next.map_or(now, |us| std::time::UNIX_EPOCH + Duration::from_micros(us));
            let to = spread.core(&key, id);
            let job = super::Job {
                id,
                key,
                recipients,
                due,
                attempts: u16::try_from(attempts).unwrap_or(u16::MAX),
                delay_noticed,
                size,
            };
            shared.mesh.gauge.admit(size);
            if let Err(job) = shared.mesh.send(from, to, job) {
                shared.mesh.gauge.release(job.size);
                shared.mesh.note_dropped();
                tracing::warn!(queue_id = %id, core = to, "delivery queue full: a transferred message waits in the spool for the reconciliation");
            }
        }
    }
}

/// One queued message as `relay queue list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListedMessage {
    pub id: String,
    pub arrival_unix_micros: u64,
    pub sender: String,
    pub size: u64,
    pub recipients: Vec<ListedRecipient>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListedRecipient {
    pub address: String,
    pub attempts: u32,
    pub last_reply: Option<String>,
    /// `None`: due now.
    pub next_attempt_unix_micros: Option<u64>,
    /// Where the running server holds it (`example.com`, `[host:25]`), when it answered.
    pub destination: Option<String>,
    /// Waiting for a connection slot (rather than for its retry time).
    pub ready: bool,
    /// Being attempted now (a worker holds it until the attempt ends).
    #[serde(default)]
    pub in_flight: bool,
}

/// Messages with remote recipients still to deliver, oldest first, at most `limit`. With a
/// `snapshot` from the running server, each recipient's destination and its in-memory next
/// attempt (which a flush may have moved) are filled in.
pub fn listing(replay: &Replay, snapshot: Option<&[Queued]>, limit: usize) -> Vec<ListedMessage> {
    let mut out = Vec::new();
    for m in replay.messages.iter().filter(|m| !m.pending.is_empty()) {
        if out.len() >= limit {
            break;
        }
        let recipients = m
            .pending
            .iter()
            .map(|p| {
                let index = m.remote.iter().position(|a| *a == p.recipient);
                let live = snapshot.and_then(|s| {
                    s.iter()
                        .find(|q| q.id == m.id && index.is_some_and(|i| q.recipients.contains(&i)))
                });
                ListedRecipient {
                    address: p.recipient.clone(),
                    attempts: p.attempts,
                    last_reply: p.last_reply.clone(),
                    next_attempt_unix_micros: match live {
                        // Out for an attempt, its due time is the one it was taken at.
                        Some(q) if !q.in_flight => Some(q.due_unix_ms.saturating_mul(1000)),
                        _ => p.next_attempt_unix_micros,
                    },
                    destination: live.map(|q| q.destination.clone()),
                    ready: live.is_some_and(|q| q.ready),
                    in_flight: live.is_some_and(|q| q.in_flight),
                }
            })
            .collect();
        out.push(ListedMessage {
            id: m.id.to_string(),
            arrival_unix_micros: m.arrival_unix_micros,
            sender: m.sender.clone(),
            size: m.body_len,
            recipients,
        });
    }
    out
}

/// One message in detail (`relay queue show`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShownMessage {
    pub message: ListedMessage,
    /// Remote recipients with a final result: `(address, outcome, reply)`.
    pub finished: Vec<(String, String, String)>,
    pub local_mailboxes: Vec<String>,
    /// The message's header block as stored (our Received header first).
    pub headers: String,
}

/// How long the operator's commands wait for every core.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

/// One message in detail, from the replay (and the live snapshot when the server runs);
/// `body` reads the stored bytes for the header block.
pub fn show(
    replay: &Replay,
    snapshot: Option<&[Queued]>,
    id: QueueId,
    body: impl Fn(QueueId) -> Option<Vec<u8>>,
) -> Option<ShownMessage> {
    let m = replay.messages.iter().find(|m| m.id == id)?;
    let single = Replay {
        messages: vec![m.clone()],
        deletions: Vec::new(),
        states: Vec::new(),
    };
    let message = listing(&single, snapshot, 1)
        .pop()
        .unwrap_or_else(|| ListedMessage {
            id: m.id.to_string(),
            arrival_unix_micros: m.arrival_unix_micros,
            sender: m.sender.clone(),
            size: m.body_len,
            recipients: Vec::new(),
        });
    let headers = body(id)
        .map(|b| {
            // The header block ends at the first empty line (RFC 5322 §2.1).
            let end = memchr::memmem::find(&b, b"\r\n\r\n").map_or(b.len(), |at| at + 2);
            String::from_utf8_lossy(&b[..end]).into_owned()
        })
        .unwrap_or_default();
    Some(ShownMessage {
        message,
        finished: m
            .finished
            .iter()
            .map(|r| {
                (
                    r.recipient.clone(),
                    format!("{:?}", r.outcome).to_lowercase(),
                    r.reply.clone(),
                )
            })
            .collect(),
        local_mailboxes: m.mailboxes.clone(),
        headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::{PendingRecipient, ReplayMessage};

    fn replay() -> Replay {
        Replay {
            messages: vec![
                ReplayMessage {
                    id: QueueId::new(1_764_000_000_000_000, 0),
                    arrival_unix_micros: 1_764_000_000_000_000,
                    mailboxes: vec![],
                    remote: vec!["a@x.test".into(), "b@y.test".into()],
                    placements: vec![],
                    body_len: 1234,
                    sender: "s@here.test".into(),
                    recipients: 2,
                    pending: vec![PendingRecipient {
                        recipient: "b@y.test".into(),
                        attempts: 2,
                        last_reply: Some("451 4.7.1 greylisted".into()),
                        last_attempt_unix_micros: Some(1_764_000_060_000_000),
                        next_attempt_unix_micros: Some(1_764_000_360_000_000),
                    }],
                    finished: vec![],
                    dsn_sent: vec![],
                    kept_uidl: None,
                },
                ReplayMessage {
                    id: QueueId::new(1_764_000_000_000_001, 0),
                    arrival_unix_micros: 1_764_000_000_000_001,
                    mailboxes: vec!["one".into()],
                    remote: vec![],
                    placements: vec![],
                    body_len: 10,
                    sender: String::new(),
                    recipients: 1,
                    pending: vec![],
                    finished: vec![],
                    dsn_sent: vec![],
                    kept_uidl: None,
                },
            ],
            deletions: vec![],
            states: vec![],
        }
    }

    #[test]
    fn listing_shows_only_pending_recipients_with_their_last_reply() {
        let list = listing(&replay(), None, 100);
        assert_eq!(list.len(), 1, "the local-only message is not queued");
        assert_eq!(list[0].recipients.len(), 1);
        let r = &list[0].recipients[0];
        assert_eq!(r.address, "b@y.test");
        assert_eq!(r.attempts, 2);
        assert_eq!(r.last_reply.as_deref(), Some("451 4.7.1 greylisted"));
        assert_eq!(r.destination, None);
        assert_eq!(r.next_attempt_unix_micros, Some(1_764_000_360_000_000));
        assert_eq!(list[0].sender, "s@here.test");
    }

    #[test]
    fn a_live_snapshot_supplies_destination_and_moved_times() {
        let r = replay();
        let snap = [Queued {
            id: r.messages[0].id,
            destination: "y.test".into(),
            recipients: vec![1],
            due_unix_ms: 1_764_000_100_000,
            attempts: 2,
            ready: true,
            in_flight: false,
            core: 0,
        }];
        let list = listing(&r, Some(&snap), 100);
        let rc = &list[0].recipients[0];
        assert_eq!(rc.destination.as_deref(), Some("y.test"));
        assert_eq!(rc.next_attempt_unix_micros, Some(1_764_000_100_000_000));
        assert!(rc.ready);
        assert!(listing(&r, None, 0).is_empty(), "limit applies");
    }

    #[test]
    fn commands_reach_every_core_and_answers_add_up() {
        use super::super::mesh::QueueGauge;
        let mesh = Mesh::new(2, QueueGauge::new(10, 10));
        let m = std::sync::Arc::clone(&mesh);
        let cores = std::thread::spawn(move || {
            let mut handled = 0;
            while handled < 2 {
                for core in 0..2 {
                    if let Some(Control::Flush { reply, .. }) =
                        m.inbox(core).unwrap().next_control()
                    {
                        let _ = reply.send(core + 3);
                        handled += 1;
                    }
                }
            }
        });
        assert_eq!(
            flush(&mesh, FlushFilter::All, Duration::from_secs(5)).unwrap(),
            7
        );
        cores.join().unwrap();
        let err = snapshot(&mesh, Duration::from_millis(50)).unwrap_err();
        assert_eq!(err.core, 0, "nobody answers now");
    }
}
