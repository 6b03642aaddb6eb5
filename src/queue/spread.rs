//! Which cores work a destination, and each one's share of its limits.
//!
//! A destination used to live on one core ([`owner`]): the common edge-relay setup, everything
//! to one smarthost, then put all outbound work on that core while the others idled. Now a
//! destination is worked by up to `width` cores: the owner and the cores after it (in index
//! order, wrapping), where `width` is the number of cores but never more than the smallest
//! connection, transaction or rate limit (a core with a share of zero could not send). Each
//! of those cores holds its own [`crate::queue::Destination`] with a share of every limit, the
//! shares adding up to the configured limit, so the limits stay global per relay.
//!
//! A message's recipients for a destination go to the core whose spool shard holds the
//! message when that core is one of the destination's, so the body is read where it was
//! written and the hand-off crosses no core; otherwise to one of the destination's cores
//! chosen by the queue id. Both are functions of (destination, queue id), so every core's
//! reconciliation and a rebuild after a restart place a recipient where ingest did.
//!
//! A rate limit's burst (a tenth of the rate, at least one) is split with the rate, so only
//! the "at least one" can add up: a small rate's burst may reach one message per core.
//!
//! What each core learns alone: a dead destination is held per core (a dead host costs up to
//! `width` connection attempts, not one), and likewise the opportunistic-TLS failure hold.

use super::destinations::{owner, DestinationKey, DestinationLimits};
use crate::envelope::QueueId;

/// The placement rule for one relay: its core count and the limits the shares come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spread {
    cores: usize,
    width: usize,
    limits: DestinationLimits,
}

impl Spread {
    /// `spread = false` keeps every destination on its one owner core.
    pub fn new(cores: usize, limits: DestinationLimits, spread: bool) -> Spread {
        let cores = cores.max(1);
        let mut width = if spread { cores } else { 1 };
        for limit in [limits.connections_max, limits.transactions_max] {
            width = width.min(usize::try_from(limit).unwrap_or(usize::MAX));
        }
        if limits.messages_per_minute > 0 {
            width = width.min(usize::try_from(limits.messages_per_minute).unwrap_or(usize::MAX));
        }
        Spread {
            cores,
            width: width.max(1),
            limits,
        }
    }

    /// One core, whole limits: the rule for a single-core scheduler and for tests.
    pub fn single(limits: DestinationLimits) -> Spread {
        Spread::new(1, limits, false)
    }

    /// The configured (whole) limits.
    pub fn limits(&self) -> DestinationLimits {
        self.limits
    }

    /// How many cores work each destination.
    pub fn width(&self) -> usize {
        self.width
    }

    /// `core`'s place among `key`'s cores (0 = the owner), or None when it is not one of them.
    fn position(&self, key: &DestinationKey, core: usize) -> Option<usize> {
        let first = owner(key, self.cores);
        let position = (core % self.cores + self.cores - first) % self.cores;
        (position < self.width).then_some(position)
    }

    /// The core that works `id`'s recipients for `key`.
    pub fn core(&self, key: &DestinationKey, id: QueueId) -> usize {
        let shard = usize::from(id.shard()) % self.cores;
        if self.position(key, shard).is_some() {
            return shard;
        }
        let first = owner(key, self.cores);
        let pick = usize::try_from(mix(id.0) % self.width as u64).unwrap_or(0);
        (first + pick) % self.cores
    }

    /// `core`'s share of the limits for `key`: the configured limits divided among the
    /// destination's cores, the remainder to the first ones. A core that is not one of them
    /// is never given the destination's work by [`Spread::core`]; should it hold some anyway
    /// it gets the smallest share, so the work is slow rather than stuck.
    pub fn share(&self, key: &DestinationKey, core: usize) -> DestinationLimits {
        let position = self.position(key, core).unwrap_or(self.width - 1);
        let part = |limit: u32| -> u32 {
            let width = u32::try_from(self.width).unwrap_or(u32::MAX);
            let position = u32::try_from(position).unwrap_or(u32::MAX);
            limit / width + u32::from(position < limit % width)
        };
        DestinationLimits {
            connections_max: part(self.limits.connections_max),
            transactions_max: part(self.limits.transactions_max),
            messages_per_minute: part(self.limits.messages_per_minute),
        }
    }
}

/// splitmix64's finaliser: queue ids differ in their low (shard) and middle (time) bits only.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hop() -> DestinationKey {
        DestinationKey::Mx("smarthost.example".into())
    }

    fn limits(connections: u32, transactions: u32, per_minute: u32) -> DestinationLimits {
        DestinationLimits {
            connections_max: connections,
            transactions_max: transactions,
            messages_per_minute: per_minute,
        }
    }

    #[test]
    fn a_message_stays_on_the_core_that_stored_it() {
        let spread = Spread::new(4, limits(20, 20, 0), true);
        for shard in 0..4u8 {
            assert_eq!(
                spread.core(&hop(), QueueId::new(1_000, shard)),
                usize::from(shard)
            );
        }
    }

    #[test]
    fn without_spreading_the_owner_takes_everything_with_whole_limits() {
        let spread = Spread::new(4, limits(20, 10, 60), false);
        let first = owner(&hop(), 4);
        for shard in 0..4u8 {
            assert_eq!(spread.core(&hop(), QueueId::new(7, shard)), first);
        }
        assert_eq!(spread.share(&hop(), first), limits(20, 10, 60));
    }

    #[test]
    fn shares_add_up_to_the_limits_with_the_remainder_first() {
        let spread = Spread::new(4, limits(10, 6, 0), true);
        let first = owner(&hop(), 4);
        let shares: Vec<_> = (0..4)
            .map(|k| spread.share(&hop(), (first + k) % 4))
            .collect();
        let connections: Vec<u32> = shares.iter().map(|s| s.connections_max).collect();
        let transactions: Vec<u32> = shares.iter().map(|s| s.transactions_max).collect();
        assert_eq!(connections, vec![3, 3, 2, 2]);
        assert_eq!(transactions, vec![2, 2, 1, 1]);
        assert!(
            shares.iter().all(|s| s.messages_per_minute == 0),
            "no limit stays none"
        );
    }

    #[test]
    fn a_limit_below_the_core_count_narrows_the_destination() {
        let spread = Spread::new(8, limits(20, 20, 3), true);
        assert_eq!(spread.width(), 3);
        let first = owner(&hop(), 8);
        let ours: Vec<usize> = (0..3).map(|k| (first + k) % 8).collect();
        for shard in 0..8u8 {
            let core = spread.core(&hop(), QueueId::new(99, shard));
            assert!(
                ours.contains(&core),
                "shard {shard} → core {core} outside {ours:?}"
            );
        }
        let outside = (first + 3) % 8;
        assert_eq!(spread.share(&hop(), outside), spread.share(&hop(), ours[2]));
        let rate: u32 = ours
            .iter()
            .map(|&c| spread.share(&hop(), c).messages_per_minute)
            .sum();
        assert_eq!(rate, 3);
    }

    #[test]
    fn one_core_is_the_old_rule() {
        let spread = Spread::single(limits(20, 20, 0));
        assert_eq!(spread.core(&hop(), QueueId::new(5, 3)), 0);
        assert_eq!(spread.share(&hop(), 0), limits(20, 20, 0));
    }

    proptest! {
        #[test]
        fn placement_is_a_core_with_a_share_and_shares_sum_to_the_limit(
            cores in 1usize..70,
            connections in 1u32..100,
            transactions in 1u32..100,
            per_minute in 0u32..500,
            spread_on: bool,
            ids in proptest::collection::vec(any::<u64>(), 1..40),
            domain in "[a-z]{1,12}",
        ) {
            let key = DestinationKey::Mx(format!("{domain}.example").into());
            let l = limits(connections, transactions, per_minute);
            let spread = Spread::new(cores, l, spread_on);
            for id in ids {
                let core = spread.core(&key, QueueId(id));
                prop_assert!(core < cores);
                let share = spread.share(&key, core);
                prop_assert!(share.connections_max >= 1 && share.transactions_max >= 1);
                prop_assert!(per_minute == 0 || share.messages_per_minute >= 1);
                prop_assert_eq!(core, spread.core(&key, QueueId(id)), "deterministic");
            }
            let first = owner(&key, cores);
            let sum = |f: fn(&DestinationLimits) -> u32| -> u32 {
                (0..spread.width()).map(|k| f(&spread.share(&key, (first + k) % cores))).sum()
            };
            prop_assert_eq!(sum(|s| s.connections_max), connections);
            prop_assert_eq!(sum(|s| s.transactions_max), transactions);
            prop_assert_eq!(sum(|s| s.messages_per_minute), per_minute);
        }
    }
}
