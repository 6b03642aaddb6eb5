//! The cross-core hand-off: "recipients R of message M are yours" as a small message on a
//! bounded lock-free queue, one queue per (from core, to core) pair (docs/ARCHITECTURE.md §3),
//! plus a wake-up per core and an unbounded side channel for the operator's rare commands.
//!
//! Why one queue per pair: each `ArrayQueue` then has a single producer thread, so producers
//! never contend with each other, and a core that floods one destination cannot starve the
//! hand-offs of the others. A full queue does not hold back the 250 of a durable message: the
//! hand-off is retried in the background for `delivery.handoff_patience`, then left to the
//! reconciliation (the mesh's dropped counter tells every core to look).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::envelope::QueueId;
pub use crate::queue::scheduler::{FlushFilter, Job, Queued};
use crate::runtime;

/// Hand-offs in flight per (from, to) pair before the sender waits.
pub const PAIR_CAPACITY: usize = 4096;

/// An operator's command for one core (from the admin thread).
pub enum Control {
    /// Deferred entries matching become ready now; answers how many.
    Flush {
        which: FlushFilter,
        reply: crossbeam::channel::Sender<usize>,
    },
    /// Take every queued entry of a message out and end it (`bounce`: with a failure notice;
    /// otherwise silently). Answers how many entries were removed.
    Remove {
        id: QueueId,
        bounce: bool,
        reply: crossbeam::channel::Sender<usize>,
    },
    /// What this core has queued.
    Snapshot {
        reply: crossbeam::channel::Sender<Vec<Queued>>,
    },
    /// `relay node drain`: take every queued entry of a message out without a record.
    /// Answers (entries taken, an entry is out for an attempt now).
    Withdraw {
        id: QueueId,
        reply: crossbeam::channel::Sender<(usize, bool)>,
    },
}

/// One core's receiving side.
pub type Inbox = runtime::mesh::Inbox<Job, Control>;

/// Every core's inbox, plus the ingest gauge; shared by all shards.
pub struct Mesh {
    pairs: runtime::mesh::Mesh<Job, Control>,
    pub gauge: QueueGauge,
    /// Entries that left memory (or never reached it) while their recipients stay pending in
    /// the spool; every core reconciles when it moved.
    dropped: AtomicU64,
    /// `relay node drain` is moving the queue to peers: no reconciliation takes withdrawn
    /// messages back meanwhile.
    draining: std::sync::atomic::AtomicBool,
}

impl Mesh {
    pub fn new(cores: usize, gauge: QueueGauge) -> Arc<Mesh> {
        Arc::new(Mesh {
            pairs: runtime::mesh::Mesh::new(cores, PAIR_CAPACITY),
            gauge,
            dropped: AtomicU64::new(0),
            draining: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Counts an entry dropped from memory with its recipients still pending in the spool.
    pub fn note_dropped(&self) {
        self.dropped.fetch_add(1, Ordering::SeqCst);
    }

    /// Entries dropped so far (see [`Mesh::note_dropped`]).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::SeqCst)
    }

    /// Whether the node is draining its queue to peers (see `Control::Withdraw`).
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Starts or ends a drain. Ending one counts a drop, so every core's reconciliation
    /// takes back what the drain withdrew and did not hand over.
    pub fn set_draining(&self, on: bool) {
        let was = self.draining.swap(on, Ordering::SeqCst);
        if was && !on {
            self.note_dropped();
        }
    }

    pub fn cores(&self) -> usize {
        self.pairs.cores()
    }

    /// Hands `job` from core `from` to core `to`; gives it back when that queue is full.
    pub fn send(&self, from: usize, to: usize, job: Job) -> Result<(), Job> {
        self.pairs.send(from, to, job)
    }

    /// Sends an operator's command to core `to` (dropped if there is no such core: its reply
    /// channel then reports a disconnect).
    pub fn control(&self, to: usize, command: Control) {
        self.pairs.control(to, command)
    }

    pub fn inbox(&self, core: usize) -> Option<&Inbox> {
        self.pairs.inbox(core)
    }
}

/// Queued deliveries (a message × destination) and their bytes across all cores, against
/// `delivery.queued_messages_max` / `queued_bytes_max`: SMTP ingest answers 452 4.3.1 while
/// either is passed. Two relaxed atomics: read per MAIL, written per hand-off and per finished
/// entry, never a lock.
pub struct QueueGauge {
    entries: AtomicU64,
    bytes: AtomicU64,
    entries_max: u64,
    bytes_max: u64,
}

impl QueueGauge {
    pub fn new(entries_max: u64, bytes_max: u64) -> QueueGauge {
        QueueGauge {
            entries: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            entries_max,
            bytes_max,
        }
    }

    pub fn accepting(&self) -> bool {
        self.entries.load(Ordering::Relaxed) < self.entries_max
            && self.bytes.load(Ordering::Relaxed) < self.bytes_max
    }

    pub fn admit(&self, bytes: u64) {
        self.entries.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn release(&self, bytes: u64) {
        let _ = self
            .entries
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(1))
            });
        let _ = self
            .bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(bytes))
            });
    }

    pub fn entries(&self) -> u64 {
        self.entries.load(Ordering::Relaxed)
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

impl crate::smtp::IngestGate for Mesh {
    fn accepting(&self) -> bool {
        self.gauge.accepting()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{DestinationKey, RcptSet};
    use std::time::SystemTime;

    fn job(n: u64) -> Job {
        Job {
            id: QueueId::new(n, 0),
            key: DestinationKey::Mx("example.com".into()),
            recipients: RcptSet::from_indices(&[0]).unwrap(),
            due: SystemTime::UNIX_EPOCH,
            attempts: 0,
            delay_noticed: false,
            size: 10,
        }
    }

    #[test]
    fn a_full_pair_gives_the_job_back_and_other_pairs_still_flow() {
        let mesh = Mesh::new(2, QueueGauge::new(10, 10));
        for n in 0..PAIR_CAPACITY as u64 {
            assert!(mesh.send(0, 1, job(n)).is_ok());
        }
        let back = mesh.send(0, 1, job(99_999)).expect_err("queue is full");
        assert_eq!(back.id, QueueId::new(99_999, 0));
        assert!(
            mesh.send(1, 1, job(1)).is_ok(),
            "core 1's own queue is separate"
        );
        let mut seen = 0;
        mesh.inbox(1).unwrap().drain(|_| seen += 1);
        assert_eq!(seen, PAIR_CAPACITY + 1);
        assert!(mesh.send(0, 7, job(1)).is_err(), "no such core");
    }

    #[test]
    fn the_gauge_refuses_past_either_limit_and_recovers() {
        let g = QueueGauge::new(2, 100);
        assert!(g.accepting());
        g.admit(10);
        g.admit(10);
        assert!(!g.accepting(), "entries at the limit");
        g.release(10);
        assert!(g.accepting());
        g.admit(200);
        assert!(!g.accepting(), "bytes past the limit");
        g.release(200);
        g.release(10);
        g.release(10);
        assert_eq!((g.entries(), g.bytes()), (0, 0), "saturates at zero");
    }
}
