//! The session's question about memory for message bodies, behind a seam: "may this body
//! take N more bytes?". Every connection holds its body in memory until the spool has
//! stored it, so without a shared bound a few hundred large bodies in flight take gigabytes.
//! The real answer is one byte budget for the whole process (`server::body_budget`); tests
//! use small ones. The session stays sans-IO: asking is an atomic operation, never a wait.
//!
//! A body's memory is held by a [`Reservation`], which gives its bytes back when dropped:
//! when the body is stored (the session drops it once the driver answers the submission),
//! refused, reset, or its connection ends.

use std::fmt;
use std::sync::Arc;

/// Where a transaction was refused for want of memory (a metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// MAIL: the budget cannot cover the declared SIZE or a first buffer.
    Mail,
    /// DATA or BDAT: the body grew past what could be reserved.
    Data,
}

/// A byte budget shared by every session.
pub trait BodyMemory: Send + Sync {
    /// Takes `bytes` from the budget; false, and nothing taken, when they do not fit.
    fn take(&self, bytes: u64) -> bool;
    /// Returns bytes taken earlier.
    fn give_back(&self, bytes: u64);
    /// Bytes that could be taken now.
    fn available(&self) -> u64;
    /// Counts a transaction refused for want of memory.
    fn refused(&self, at: Refusal);
}

/// Shared handle to the budget, comparable by identity so `SessionConfig` stays `Eq`.
#[derive(Clone)]
pub struct MemoryGate(pub Arc<dyn BodyMemory>);

impl fmt::Debug for MemoryGate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MemoryGate(..)")
    }
}

impl PartialEq for MemoryGate {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for MemoryGate {}

/// Bytes one body holds of the budget, given back when dropped. Without a budget it
/// always grows and holds nothing.
#[derive(Default)]
pub struct Reservation {
    gate: Option<MemoryGate>,
    bytes: u64,
}

impl fmt::Debug for Reservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reservation")
            .field("budgeted", &self.gate.is_some())
            .field("bytes", &self.bytes)
            .finish()
    }
}

impl Reservation {
    /// An empty reservation against `gate` (`None`: unlimited).
    pub fn new(gate: Option<MemoryGate>) -> Self {
        Reservation { gate, bytes: 0 }
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Makes the reservation cover `total` bytes; false when the budget cannot (the bytes
    /// held so far stay held).
    pub fn cover(&mut self, total: u64) -> bool {
        let Some(more) = total.checked_sub(self.bytes).filter(|&more| more > 0) else {
            return true;
        };
        if let Some(gate) = &self.gate {
            if !gate.0.take(more) {
                return false;
            }
        }
        self.bytes = total;
        true
    }

    /// Gives every byte back (the body it covered is gone); the reservation stays usable.
    pub fn release(&mut self) {
        let bytes = std::mem::take(&mut self.bytes);
        if let (Some(gate), true) = (&self.gate, bytes > 0) {
            gate.0.give_back(bytes);
        }
    }

    /// Counts a refusal at `at` against the budget, if there is one.
    pub fn refused(&self, at: Refusal) {
        if let Some(gate) = &self.gate {
            gate.0.refused(at);
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A budget for the session's tests: a plain counter with a limit.
    #[derive(Debug, Default)]
    pub(crate) struct Counted {
        pub max: u64,
        pub in_flight: AtomicU64,
        pub refused_mail: AtomicU64,
        pub refused_data: AtomicU64,
    }

    impl Counted {
        pub(crate) fn gate(max: u64) -> (Arc<Counted>, MemoryGate) {
            let budget = Arc::new(Counted {
                max,
                ..Counted::default()
            });
            (Arc::clone(&budget), MemoryGate(budget))
        }

        pub(crate) fn in_flight(&self) -> u64 {
            self.in_flight.load(Ordering::SeqCst)
        }
    }

    impl BodyMemory for Counted {
        fn take(&self, bytes: u64) -> bool {
            self.in_flight
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |now| {
                    now.checked_add(bytes).filter(|&next| next <= self.max)
                })
                .is_ok()
        }

        fn give_back(&self, bytes: u64) {
            self.in_flight.fetch_sub(bytes, Ordering::SeqCst);
        }

        fn available(&self) -> u64 {
            self.max.saturating_sub(self.in_flight())
        }

        fn refused(&self, at: Refusal) {
            match at {
                Refusal::Mail => &self.refused_mail,
                Refusal::Data => &self.refused_data,
            }
            .fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_reservation_grows_within_the_budget_and_gives_back_on_drop() {
        let (budget, gate) = Counted::gate(100);
        let mut a = Reservation::new(Some(gate.clone()));
        let mut b = Reservation::new(Some(gate));
        assert!(a.cover(60));
        assert!(
            a.cover(40),
            "covering less takes nothing and gives nothing back"
        );
        assert_eq!((a.bytes(), budget.in_flight()), (60, 60));
        assert!(!b.cover(50), "only 40 left");
        assert_eq!((b.bytes(), budget.in_flight()), (0, 60));
        assert!(b.cover(40));
        assert!(!a.cover(61));
        assert_eq!(a.bytes(), 60, "a failed growth keeps what was held");
        a.release();
        assert_eq!(budget.in_flight(), 40);
        assert!(a.cover(60), "a released reservation is usable again");
        drop(a);
        drop(b);
        assert_eq!(budget.in_flight(), 0);
    }

    #[test]
    fn without_a_budget_everything_fits() {
        let mut r = Reservation::new(None);
        assert!(r.cover(u64::MAX));
        r.refused(Refusal::Data);
        drop(r);
    }
}
