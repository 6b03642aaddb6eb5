//! The process's byte budget for SMTP message bodies in memory (`smtp.body_memory_max`):
//! every session reserves its body's buffer from it as the buffer grows and gives it back
//! once the spool has stored the body, or the body is refused, reset or its connection ends
//! (`smtp::body_memory`, which the session asks). Past the budget MAIL answers 452 4.3.1
//! and a body that outgrows it is discarded and answered 452 4.3.1 at its end.
//!
//! One budget for the whole process, not a share per core: SO_REUSEPORT spreads clients
//! over the cores by a hash of their addresses, so a fixed share per core would refuse mail
//! on one core while another's share lies idle, and the memory being protected is the
//! process's. The cost is one shared atomic: a compare-and-swap per buffer growth (a body
//! grows by half at a time, so about ten for a 25 MiB message, one for a small one with
//! SIZE) and one subtraction per message; never per chunk or per line.
//!
//! The counter is the `smtp_body_bytes_in_flight` gauge's own atomic, so the metric is
//! exact and costs nothing more. Memory ordering is `Relaxed`: the counter publishes no
//! other data, and the compare-and-swap alone keeps the sum within the budget.

use std::sync::atomic::Ordering;

use crate::metrics::BodyMemoryMetrics;
use crate::smtp::{BodyMemory, Refusal};

/// The shared budget (one per process, behind an `Arc`).
#[derive(Debug)]
pub struct BodyBudget {
    max: i64,
    metrics: BodyMemoryMetrics,
}

impl BodyBudget {
    /// A budget of `max` bytes reporting through `metrics`.
    pub fn new(max: u64, metrics: BodyMemoryMetrics) -> BodyBudget {
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        metrics.max.set(max);
        BodyBudget { max, metrics }
    }

    /// Bytes reserved now.
    pub fn in_flight(&self) -> u64 {
        u64::try_from(self.metrics.in_flight.get()).unwrap_or(0)
    }
}

impl BodyMemory for BodyBudget {
    fn take(&self, bytes: u64) -> bool {
        let Ok(bytes) = i64::try_from(bytes) else {
            return false;
        };
        self.metrics
            .in_flight
            .inner()
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |now| {
                now.checked_add(bytes).filter(|&next| next <= self.max)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: u64) {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        let before = self.metrics.in_flight.dec_by(bytes);
        // Only reservations give back, each what it took.
        debug_assert!(before >= bytes, "gave back {bytes} of {before} in flight");
    }

    fn available(&self) -> u64 {
        let now = self.metrics.in_flight.get();
        u64::try_from(self.max.saturating_sub(now)).unwrap_or(0)
    }

    fn refused(&self, at: Refusal) {
        match at {
            Refusal::Mail => self.metrics.refused_mail.inc(),
            Refusal::Data => self.metrics.refused_data.inc(),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::smtp::{MemoryGate, Reservation};
    use std::sync::Arc;

    #[test]
    fn takes_within_the_budget_and_shows_in_the_metrics() {
        let metrics = Metrics::new(1, None);
        let budget = BodyBudget::new(1000, metrics.body_memory());
        assert!(budget.take(600));
        assert!(!budget.take(401), "over the budget: nothing taken");
        assert_eq!((budget.in_flight(), budget.available()), (600, 400));
        assert!(budget.take(400));
        assert_eq!(budget.available(), 0);
        assert!(!budget.take(1));
        budget.refused(Refusal::Data);
        budget.refused(Refusal::Mail);
        budget.refused(Refusal::Mail);
        let text = metrics.encode().expect("encodes");
        for line in [
            "relay_smtp_body_bytes_in_flight 1000",
            "relay_smtp_body_memory_max_bytes 1000",
            "relay_smtp_body_memory_refusals_total{stage=\"mail\"} 2",
            "relay_smtp_body_memory_refusals_total{stage=\"data\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}\n{text}");
        }
        budget.give_back(1000);
        assert_eq!(budget.in_flight(), 0);
        assert!(
            !budget.take(u64::MAX),
            "an impossible size is refused, not wrapped"
        );
    }

    /// Many threads reserving and giving back at once never push the sum past the budget,
    /// and every byte comes back.
    #[test]
    fn concurrent_reservations_stay_within_the_budget() {
        let metrics = Metrics::new(4, None);
        let budget = Arc::new(BodyBudget::new(10_000, metrics.body_memory()));
        let gate = MemoryGate(budget.clone());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let gate = gate.clone();
                let budget = Arc::clone(&budget);
                std::thread::spawn(move || {
                    let mut granted = 0u32;
                    for i in 0..20_000u64 {
                        let mut reservation = Reservation::new(Some(gate.clone()));
                        if reservation.cover(1 + (i * 7 + t) % 3000) {
                            granted += 1;
                            assert!(budget.in_flight() <= 10_000);
                            if i % 2 == 0 {
                                reservation.cover(reservation.bytes() + 500);
                            }
                        }
                    }
                    granted
                })
            })
            .collect();
        let granted: u32 = threads.into_iter().map(|t| t.join().expect("thread")).sum();
        assert!(granted > 0);
        assert_eq!(budget.in_flight(), 0);
    }
}
