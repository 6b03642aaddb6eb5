//! The cross-core hand-off: one bounded lock-free queue per (from core, to core) pair, a
//! wake-up per core, and an unbounded side channel per core for rare control messages.
//!
//! Why one queue per pair: each `ArrayQueue` then has a single producer thread, so producers
//! never contend with each other, and a core that floods one receiver cannot starve the
//! hand-offs of the others. A full queue gives the message back: that is backpressure, the
//! sender decides how to wait. Messages should be small (a handle or an index, never a body).

use crossbeam::queue::{ArrayQueue, SegQueue};
use tokio::sync::Notify;

/// One core's receiving side: `T` the hand-offs, `C` the control messages.
pub struct Inbox<T, C> {
    /// Indexed by sending core.
    from: Vec<ArrayQueue<T>>,
    control: SegQueue<C>,
    /// Notified after every send to this core; the receiver waits on it when idle.
    pub wake: Notify,
}

/// Every core's inbox.
pub struct Mesh<T, C> {
    inboxes: Vec<Inbox<T, C>>,
}

impl<T, C> Mesh<T, C> {
    /// `cores` inboxes, each with one queue of `pair_capacity` per sending core.
    pub fn new(cores: usize, pair_capacity: usize) -> Mesh<T, C> {
        Mesh {
            inboxes: (0..cores)
                .map(|_| Inbox {
                    from: (0..cores)
                        .map(|_| ArrayQueue::new(pair_capacity.max(1)))
                        .collect(),
                    control: SegQueue::new(),
                    wake: Notify::new(),
                })
                .collect(),
        }
    }

    pub fn cores(&self) -> usize {
        self.inboxes.len()
    }

    /// Hands `message` from core `from` to core `to`; gives it back when that pair's queue
    /// is full or there is no such core.
    pub fn send(&self, from: usize, to: usize, message: T) -> Result<(), T> {
        let Some(inbox) = self.inboxes.get(to) else {
            return Err(message);
        };
        let Some(queue) = inbox.from.get(from) else {
            return Err(message);
        };
        queue.push(message)?;
        inbox.wake.notify_one();
        Ok(())
    }

    /// Sends a control message to core `to` (dropped if there is no such core).
    pub fn control(&self, to: usize, command: C) {
        if let Some(inbox) = self.inboxes.get(to) {
            inbox.control.push(command);
            inbox.wake.notify_one();
        }
    }

    pub fn inbox(&self, core: usize) -> Option<&Inbox<T, C>> {
        self.inboxes.get(core)
    }
}

impl<T, C> Inbox<T, C> {
    /// Takes every waiting hand-off, from every sender.
    pub fn drain(&self, mut f: impl FnMut(T)) {
        for queue in &self.from {
            while let Some(message) = queue.pop() {
                f(message);
            }
        }
    }

    pub fn next_control(&self) -> Option<C> {
        self.control.pop()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_pair_gives_the_message_back_and_other_pairs_still_flow() {
        let mesh: Mesh<u32, ()> = Mesh::new(2, 4);
        for n in 0..4 {
            assert_eq!(mesh.send(0, 1, n), Ok(()));
        }
        assert_eq!(mesh.send(0, 1, 99), Err(99), "pair 0→1 is full");
        assert_eq!(mesh.send(1, 1, 5), Ok(()), "pair 1→1 is separate");
        assert_eq!(mesh.send(0, 7, 1), Err(1), "no such core");
        let mut seen = Vec::new();
        if let Some(inbox) = mesh.inbox(1) {
            inbox.drain(|n| seen.push(n));
        }
        assert_eq!(seen, [0, 1, 2, 3, 5]);
        assert_eq!(mesh.send(0, 1, 6), Ok(()), "room again after the drain");
    }

    #[test]
    fn control_messages_reach_only_their_core_in_order() {
        let mesh: Mesh<(), &str> = Mesh::new(2, 1);
        mesh.control(1, "flush");
        mesh.control(1, "snapshot");
        mesh.control(9, "lost");
        assert_eq!(mesh.inbox(0).and_then(Inbox::next_control), None);
        let inbox = mesh.inbox(1).expect("core 1");
        assert_eq!(inbox.next_control(), Some("flush"));
        assert_eq!(inbox.next_control(), Some("snapshot"));
        assert_eq!(inbox.next_control(), None);
    }
}
