//! Outbound delivery, the pure parts: when to retry, where a domain's mail goes, which hosts
//! and addresses to try, what to tell the sender, and the per-destination bookkeeping a core
//! keeps for the destinations it owns.
//!
//! **Role.** Everything here decides; nothing here acts. There is no socket, no clock read, no
//! file and no thread: time comes in as a `SystemTime` argument, randomness as a `seed`, DNS
//! answers as data. The per-core delivery runtime ([`crate::delivery`], which owns a
//! [`destinations::CoreQueue`], plans next hops in [`crate::delivery::resolve`] over the
//! [`crate::net::dns::Resolver`] seam and drives the SMTP client) and the queue control are
//! built on top of this and call these functions with what they observed.
//!
//! - [`schedule`]: the retry schedule (1m, 5m, 10m, 30m, 1h, then every 2h, ±10% jitter, up
//!   to `max_age`), the throttle rule ([`schedule::later_of`]) and the delay-notice rule.
//! - [`routes`]: `[[relay.routes]]`: domain pattern → static next hop or `mx`.
//! - [`outcome`]: what one attempt means: per-recipient records, the requeue, the notices.
//! - [`dsn`]: RFC 3464 delivery status notifications and the RFC 3461 rules for when to send
//!   one.
//! - [`destinations`]: destination keys, the owning core, per-destination limits, the ready
//!   queues and the deferred index, and the ingest backpressure counters.
//!
//! **Exposure.** Recipient domains, MX answers and remote replies come from the network
//! (senders, DNS, next hops); every function treats them as untrusted text: bounded, never
//! interpreted as anything but data, and stripped of line breaks before they enter a
//! generated message. Route and delivery settings come from the operator's config file.
//!
//! **Standards.** RFC 5321 §4.5.4.1 (retry strategy, give-up time), §5.1 (locating the target
//! host), RFC 7505 (null MX) with RFC 7504 (reply 556), RFC 3463 (enhanced status codes),
//! RFC 3461 (DSN parameters), RFC 3464 (delivery-status format), RFC 6522 (multipart/report),
//! RFC 3834 (Auto-Submitted), RFC 5322 (the generated message).
//!
//! **Limits.** Each submodule lists its own; the configurable ones are set by the
//! `[delivery]` section (`config::delivery`), where each default keeps its reason.
#![forbid(unsafe_code)]

pub mod destinations;
pub mod dsn;
pub mod outcome;
pub mod routes;
pub mod schedule;
pub mod scheduler;
pub mod spread;
pub mod xfer;

pub use destinations::{
    owner, Backpressure, BackpressureLimits, CoreQueue, DestId, Destination, DestinationKey,
    DestinationLimits, Dispatch, QueueEntry, RateLimiter, RcptSet, ResolveLimits,
};
pub use dsn::{build_dsn, notify_decision, Action, Decision, DsnInput, DsnPolicy, Suppressed};
pub use routes::{NextHop, Route, RouteError, RouteSpec, Routes, TlsMode};
pub use schedule::{delay_notice_due, later_of, next_attempt, NextAttempt, RetrySchedule};
pub use spread::Spread;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A tiny deterministic PRNG (splitmix64, Steele/Lea/Flood 2014): jitter and MX shuffles are
/// functions of a seed, so tests can list their results and a restart repeats them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..bound` (`bound > 0`), by Lemire's multiply-shift (the bias is below
    /// 2^-32 for the small bounds used here).
    pub(crate) fn below(&mut self, bound: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }
}

/// Milliseconds since the Unix epoch: the compact form of a time in queue entries. Times
/// before the epoch become 0; times past `u64::MAX` ms (584 million years) saturate.
pub(crate) fn to_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub(crate) fn from_millis(ms: u64) -> SystemTime {
    add_saturating(UNIX_EPOCH, Duration::from_millis(ms))
}

/// `t + d`, or the latest representable time on overflow (a config of `max_age = "1000000y"`
/// must not panic).
pub(crate) fn add_saturating(t: SystemTime, d: Duration) -> SystemTime {
    t.checked_add(d).unwrap_or_else(|| far_future(t))
}

fn far_future(t: SystemTime) -> SystemTime {
    // Halve the step until it fits: SystemTime's range is platform-defined.
    let mut step = Duration::from_secs(u64::MAX / 4);
    let mut at = t;
    while !step.is_zero() {
        if let Some(next) = at.checked_add(step) {
            at = next;
        } else {
            step /= 2;
        }
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_matches_the_reference_sequence() {
        // Reference values for seed 1234567 from the published C implementation.
        let mut rng = SplitMix64::new(1234567);
        let got: Vec<u64> = (0..3).map(|_| rng.next_u64()).collect();
        assert_eq!(
            got,
            [
                6457827717110365317,
                3203168211198807973,
                9817491932198370423
            ]
        );
    }

    #[test]
    fn below_stays_in_range() {
        let mut rng = SplitMix64::new(7);
        for bound in [1, 2, 3, 10, 1000] {
            for _ in 0..1000 {
                assert!(rng.below(bound) < bound);
            }
        }
    }

    #[test]
    fn millis_round_trip_and_saturate() {
        let t = UNIX_EPOCH + Duration::from_millis(1_764_000_000_123);
        assert_eq!(from_millis(to_millis(t)), t);
        assert_eq!(to_millis(UNIX_EPOCH - Duration::from_secs(5)), 0);
        let far = add_saturating(t, Duration::MAX);
        assert!(far > t);
    }
}
