use super::*;
use crate::queue::routes::{parse_next_hop, Host};
use std::sync::Arc;

const MIN: u64 = 60;

/// Arrival of the test messages.
fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_764_000_000)
}

fn at(secs: u64) -> SystemTime {
    t0() + Duration::from_secs(secs)
}

/// A queue id allocated at `t0() + secs`.
fn qid(secs: u64, shard: u8) -> QueueId {
    QueueId::new(to_millis(at(secs)) * 1000, shard)
}

fn mx(domain: &str) -> DestinationKey {
    DestinationKey::new(&Route::DEFAULT, domain)
}

fn one(i: usize) -> RcptSet {
    RcptSet::from_indices(&[i]).unwrap()
}

fn limits(transactions: u32, per_minute: u32) -> DestinationLimits {
    DestinationLimits {
        connections_max: transactions,
        transactions_max: transactions,
        messages_per_minute: per_minute,
    }
}

// ---- keys and owners ---------------------------------------------------------------

#[test]
fn keys_group_static_routes_by_hop_and_mx_routes_by_domain() {
    assert_eq!(mx("Example.COM."), mx("example.com"));
    assert_ne!(mx("a.example"), mx("b.example"));
    let smart = Route {
        hop: parse_next_hop("smart.example.net:587").unwrap(),
        tls: TlsMode::Required,
        rule: Some(3),
    };
    let a = DestinationKey::new(&smart, "a.example");
    let b = DestinationKey::new(&smart, "b.example");
    assert_eq!(a, b, "one pool per smarthost, whatever the domain");
    assert_eq!(
        a,
        DestinationKey::Static {
            hop: HopAddr {
                host: Host::Name("smart.example.net".into()),
                port: 587
            },
            tls: TlsMode::Required
        }
    );
    let other_tls = Route {
        tls: TlsMode::Off,
        ..smart.clone()
    };
    assert_ne!(a, DestinationKey::new(&other_tls, "a.example"));
}

#[test]
fn owners_are_stable_in_range_and_even() {
    // Pinned: a change here moves destinations between cores after an upgrade.
    assert_eq!(owner(&mx("example.com"), 4), owner(&mx("EXAMPLE.com"), 4));
    let pinned: Vec<usize> = ["example.com", "gmail.com", "outlook.com", "a.test"]
        .iter()
        .map(|d| owner(&mx(d), 8))
        .collect();
    assert_eq!(pinned, PINNED_OWNERS);
    assert_eq!(owner(&mx("x"), 0), 0);
    assert_eq!(owner(&mx("x"), 1), 0);
    let mut counts = [0usize; 8];
    for i in 0..80_000 {
        let core = owner(&mx(&format!("d{i}.example")), 8);
        counts[core] += 1;
    }
    for c in counts {
        assert!((9_000..11_000).contains(&c), "uneven: {counts:?}");
    }
}

const PINNED_OWNERS: [usize; 4] = [7, 4, 5, 5];

#[test]
fn the_hash_is_fnv1a_of_the_key_text() {
    let fnv = |text: &str| {
        text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    };
    let key = mx("Example.COM");
    assert_eq!(key.stable_hash(), fnv("mx:example.com"));
    let smart = Route {
        hop: parse_next_hop("smart.example.net:587").unwrap(),
        tls: TlsMode::Required,
        rule: None,
    };
    let key = DestinationKey::new(&smart, "a.example");
    let DestinationKey::Static { hop, tls } = &key else {
        panic!("a static key");
    };
    assert_eq!(key.stable_hash(), fnv(&format!("static:{hop}:{tls:?}")));
}

#[test]
fn growing_the_core_count_moves_few_destinations() {
    let mut moved = 0;
    for i in 0..20_000 {
        let key = mx(&format!("d{i}.example"));
        let (before, after) = (owner(&key, 4), owner(&key, 5));
        if before != after {
            assert_eq!(after, 4, "a key only moves to the new core");
            moved += 1;
        }
    }
    // Ideal: 1/5 of the keys.
    assert!((3_500..4_500).contains(&moved), "{moved}");
}

// ---- entries -----------------------------------------------------------------------

#[test]
fn entries_are_compact() {
    assert_eq!(std::mem::size_of::<RcptSet>(), 16);
    assert_eq!(std::mem::size_of::<QueueEntry>(), 40);
    assert_eq!(std::mem::size_of::<Reverse<QueueEntry>>(), 40);
}

#[test]
fn recipient_sets() {
    let small = RcptSet::from_indices(&[0, 5, 63, 5]).unwrap();
    assert!(matches!(small, RcptSet::Small(_)));
    assert_eq!(small.indices(), [0, 5, 63]);
    assert_eq!(small.len(), 3);
    let large = RcptSet::from_indices(&[70, 2, 70, 999]).unwrap();
    assert!(matches!(large, RcptSet::Large(_)));
    assert_eq!(large.indices(), [2, 70, 999]);
    assert!(RcptSet::from_indices(&[]).unwrap().is_empty());
    assert_eq!(RcptSet::from_indices(&[70_000]), Err(IndexTooLarge(70_000)));
}

#[test]
fn entries_know_their_arrival() {
    let e = QueueEntry::new(qid(120, 1), DestId(0), one(0), at(500));
    assert_eq!(e.first_seen(), at(120));
    assert_eq!(e.due(), at(500));
    assert_eq!(e.seed(), qid(120, 1).0);
}

// ---- rate limiter ------------------------------------------------------------------

#[test]
fn rate_limiter_spaces_messages() {
    let mut rl = RateLimiter::new(60, 1);
    assert_eq!(rl.try_acquire(at(0)), Ok(()));
    assert_eq!(rl.try_acquire(at(0)), Err(at(1)));
    assert_eq!(
        rl.try_acquire(at(0) + Duration::from_millis(999)),
        Err(at(1))
    );
    assert_eq!(rl.try_acquire(at(1)), Ok(()));
    // After a long pause no credit piles up beyond the burst.
    assert_eq!(rl.try_acquire(at(100)), Ok(()));
    assert!(rl.try_acquire(at(100)).is_err());

    let mut burst = RateLimiter::new(60, 3);
    for _ in 0..3 {
        assert_eq!(burst.try_acquire(at(10)), Ok(()));
    }
    assert_eq!(burst.try_acquire(at(10)), Err(at(11)));

    let mut free = RateLimiter::new(0, 1);
    for _ in 0..1000 {
        assert_eq!(free.try_acquire(at(0)), Ok(()));
    }
    // A clock stepping back does not panic or grant extra tokens.
    let mut back = RateLimiter::new(60, 1);
    assert_eq!(back.try_acquire(at(50)), Ok(()));
    assert!(back.try_acquire(at(10)).is_err());
}

#[test]
fn rate_over_a_minute() {
    let mut rl = RateLimiter::new(600, 60);
    let mut sent = 0;
    let mut now = at(0);
    let end = at(60);
    while now < end {
        match rl.try_acquire(now) {
            Ok(()) => sent += 1,
            Err(until) => {
                assert!(until > now);
                now = until;
            }
        }
    }
    // 600 a minute plus the initial burst of 60.
    assert!((600..=661).contains(&sent), "{sent}");
}

// ---- destinations ------------------------------------------------------------------

#[test]
fn transactions_are_limited_and_freed() {
    let schedule = RetrySchedule::default();
    let mut q = CoreQueue::new(limits(2, 0), 10);
    let d = q.destination_id(mx("dest.example")).unwrap();
    for i in 0..3 {
        q.push_ready(QueueEntry::new(qid(0, 0), d, one(i), at(0)))
            .unwrap();
    }
    let dest = q.get_mut(d).unwrap();
    assert!(matches!(dest.next(at(1), &schedule), Dispatch::Send(_)));
    assert!(matches!(dest.next(at(1), &schedule), Dispatch::Send(_)));
    assert_eq!(dest.next(at(1), &schedule), Dispatch::AtLimit);
    assert_eq!(dest.transactions(), 2);
    dest.finish();
    assert!(matches!(dest.next(at(1), &schedule), Dispatch::Send(_)));
    assert_eq!(dest.next(at(1), &schedule), Dispatch::Idle);
}

#[test]
fn connections_are_counted() {
    let mut q = CoreQueue::new(limits(2, 0), 10);
    let d = q.destination_id(mx("dest.example")).unwrap();
    let dest = q.get_mut(d).unwrap();
    assert!(dest.may_connect());
    dest.connection_opened();
    dest.connection_opened();
    assert!(!dest.may_connect());
    dest.connection_closed();
    assert!(dest.may_connect());
    assert_eq!(dest.connections(), 1);
}

#[test]
fn rate_limit_throttles_the_destination() {
    let schedule = RetrySchedule::default();
    // 6 a minute: one every 10 s, bursts of one (a tenth of the rate, at least 1).
    let mut q = CoreQueue::new(limits(10, 6), 10);
    let d = q.destination_id(mx("dest.example")).unwrap();
    for i in 0..3 {
        q.push_ready(QueueEntry::new(qid(0, 0), d, one(i), at(0)))
            .unwrap();
    }
    let dest = q.get_mut(d).unwrap();
    assert!(matches!(dest.next(at(5), &schedule), Dispatch::Send(_)));
    assert_eq!(
        dest.next(at(5), &schedule),
        Dispatch::Throttled { until: at(15) }
    );
    assert!(matches!(dest.next(at(15), &schedule), Dispatch::Send(_)));
}

#[test]
fn a_held_destination_waits_and_holds_only_extend() {
    let schedule = RetrySchedule::default();
    let mut q = CoreQueue::new(limits(10, 0), 10);
    let d = q.destination_id(mx("dest.example")).unwrap();
    q.push_ready(QueueEntry::new(qid(0, 0), d, one(0), at(0)))
        .unwrap();
    let dest = q.get_mut(d).unwrap();
    dest.hold_until(at(600));
    dest.hold_until(at(300));
    assert_eq!(
        dest.next(at(10), &schedule),
        Dispatch::Throttled { until: at(600) }
    );
    assert!(matches!(dest.next(at(600), &schedule), Dispatch::Send(_)));
}

#[test]
fn max_age_beats_every_limit_in_the_ready_queue() {
    let schedule = RetrySchedule::default();
    let deadline = schedule.max_age.as_secs();
    let mut q = CoreQueue::new(limits(1, 1), 10);
    let d = q.destination_id(mx("dest.example")).unwrap();
    q.push_ready(QueueEntry::new(qid(0, 0), d, one(0), at(0)))
        .unwrap();
    q.push_ready(QueueEntry::new(qid(0, 0), d, one(1), at(0)))
        .unwrap();
    q.push_ready(QueueEntry::new(qid(100, 0), d, one(0), at(100)))
        .unwrap();
    let dest = q.get_mut(d).unwrap();
    // Busy, throttled and held at once.
    assert!(matches!(
        dest.next(at(deadline - 10), &schedule),
        Dispatch::Send(_)
    ));
    dest.hold_until(at(deadline + 10_000));
    // The next entry reached its deadline: it is expired, not held.
    assert!(matches!(
        dest.next(at(deadline), &schedule),
        Dispatch::Expired(e) if e.recipients == one(1)
    ));
    // The third arrived later: still held.
    assert!(matches!(
        dest.next(at(deadline), &schedule),
        Dispatch::Throttled { .. }
    ));
    // The sweep finds entries behind the front too.
    let mut q = CoreQueue::new(limits(1, 0), 10);
    let d = q.destination_id(mx("dest.example")).unwrap();
    q.push_ready(QueueEntry::new(qid(1000, 0), d, one(0), at(1000)))
        .unwrap();
    q.push_ready(QueueEntry::new(qid(0, 0), d, one(0), at(0)))
        .unwrap();
    let gone = q.take_expired(at(deadline + 1), &schedule);
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0].id, qid(0, 0));
    assert_eq!(q.ready_len(), 1);
}

// ---- the deferred index -------------------------------------------------------------

#[test]
fn deferred_entries_come_out_in_time_order() {
    let mut q = CoreQueue::new(DestinationLimits::default(), 10);
    let a = q.destination_id(mx("a.example")).unwrap();
    let b = q.destination_id(mx("b.example")).unwrap();
    q.defer(QueueEntry::new(qid(0, 0), a, one(0), at(300)))
        .unwrap();
    q.defer(QueueEntry::new(qid(1, 0), b, one(0), at(60)))
        .unwrap();
    q.defer(QueueEntry::new(qid(2, 0), a, one(1), at(60)))
        .unwrap();
    q.defer(QueueEntry::new(qid(3, 0), b, one(0), at(900)))
        .unwrap();
    assert_eq!(q.next_due(), Some(at(60)));
    assert_eq!(q.pop_due(at(59)), None);
    // Equal times: arrival (queue id) order.
    assert_eq!(q.pop_due(at(60)).unwrap().id, qid(1, 0));
    assert_eq!(q.pop_due(at(60)).unwrap().id, qid(2, 0));
    assert_eq!(q.pop_due(at(60)), None);
    assert_eq!(q.next_due(), Some(at(300)));
    let woken = q.promote_due(at(1000));
    assert_eq!(woken, [a, b]);
    assert_eq!(q.get(a).unwrap().ready_len(), 1);
    assert_eq!(q.get(b).unwrap().ready_len(), 1);
    assert_eq!(q.deferred_len(), 0);
    assert_eq!(q.next_due(), None);
    assert_eq!(q.get(a).unwrap().deferred_len(), 0);
}

#[test]
fn a_throttle_never_shortens_a_back_off() {
    let schedule = RetrySchedule::default();
    let mut q = CoreQueue::new(DestinationLimits::default(), 10);
    let d = q.destination_id(mx("dest.example")).unwrap();
    let old = schedule.max_age.as_secs() - 60;
    let now = at(old);
    // Two recent messages: one due a minute ago, one whose back-off ends after the throttle.
    q.push_ready(QueueEntry::new(qid(old - 100, 0), d, one(0), at(old - 60)))
        .unwrap();
    q.push_ready(QueueEntry::new(
        qid(old - 100, 1),
        d,
        one(0),
        at(old + 7200),
    ))
    .unwrap();
    // One that arrived almost 5 days ago: the throttle would take it past its deadline.
    q.push_ready(QueueEntry::new(qid(0, 9), d, one(0), at(old - 30)))
        .unwrap();
    let until = now + Duration::from_secs(10 * MIN);
    let expired = q.throttle(d, until, now, &schedule);
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].id.shard(), 9);
    let mut dues: Vec<SystemTime> = Vec::new();
    while let Some(e) = q.pop_due(at(u64::from(u32::MAX))) {
        dues.push(e.due());
    }
    dues.sort();
    assert_eq!(dues, [until, at(old + 7200)]);
    // And the destination holds the rest until then.
    q.push_ready(QueueEntry::new(qid(5, 0), d, one(0), now))
        .unwrap();
    assert_eq!(
        q.get_mut(d).unwrap().next(now, &schedule),
        Dispatch::Throttled { until }
    );
    // A back-off later than the throttle is kept as it was.
    let mut q = CoreQueue::new(DestinationLimits::default(), 10);
    let d = q.destination_id(mx("dest.example")).unwrap();
    q.push_ready(QueueEntry::new(qid(0, 0), d, one(0), at(7200)))
        .unwrap();
    assert!(q.throttle(d, at(600), at(100), &schedule).is_empty());
    assert_eq!(q.pop_due(at(7200)).unwrap().due(), at(7200));
}

#[test]
fn remove_and_flush() {
    let mut q = CoreQueue::new(DestinationLimits::default(), 10);
    let a = q.destination_id(mx("a.example")).unwrap();
    let b = q.destination_id(mx("b.example")).unwrap();
    let m1 = qid(0, 0);
    let m2 = qid(1, 0);
    q.defer(QueueEntry::new(m1, a, one(0), at(600))).unwrap();
    q.defer(QueueEntry::new(m1, b, one(1), at(600))).unwrap();
    q.push_ready(QueueEntry::new(m1, a, one(2), at(0))).unwrap();
    q.defer(QueueEntry::new(m2, a, one(0), at(900))).unwrap();
    let gone = q.remove_message(m1);
    assert_eq!(gone.len(), 3);
    assert_eq!(q.deferred_len(), 1);
    assert_eq!(q.ready_len(), 0);
    assert_eq!(q.get(b).unwrap().deferred_len(), 0);
    // Flush by destination.
    q.defer(QueueEntry::new(m1, b, one(0), at(600))).unwrap();
    assert_eq!(q.flush(|e| e.dest == a), 1);
    assert_eq!(q.get(a).unwrap().ready_len(), 1);
    assert_eq!(q.get(a).unwrap().deferred_len(), 0);
    assert_eq!(q.deferred_len(), 1);
    // Flush everything.
    assert_eq!(q.flush(|_| true), 1);
    assert_eq!(q.deferred_len(), 0);
    assert_eq!(q.next_due(), None);
}

#[test]
fn unknown_destinations_are_refused_and_the_table_is_bounded() {
    let mut q = CoreQueue::new(DestinationLimits::default(), 2);
    let a = q.destination_id(mx("a.example")).unwrap();
    assert_eq!(q.destination_id(mx("A.example")).unwrap(), a);
    q.destination_id(mx("b.example")).unwrap();
    assert_eq!(
        q.destination_id(mx("c.example")),
        Err(TooManyDestinations(2))
    );
    let stray = QueueEntry::new(qid(0, 0), DestId(77), one(0), at(0));
    assert_eq!(q.defer(stray.clone()), Err(stray.clone()));
    assert_eq!(q.push_ready(stray.clone()), Err(stray));
}

#[test]
fn unused_destinations_are_collected_and_their_slots_reused() {
    let schedule = RetrySchedule::default();
    let mut q = CoreQueue::new(limits(5, 0), 2);
    let a = q.destination_id(mx("a.example")).unwrap();
    let b = q.destination_id(mx("b.example")).unwrap();
    q.defer(QueueEntry::new(qid(0, 0), b, one(0), at(60)))
        .unwrap();
    assert_eq!(q.collect_unused(), 1, "a is idle, b has a deferred entry");
    assert_eq!(q.lookup(&mx("a.example")), None);
    let c = q.destination_id(mx("c.example")).unwrap();
    assert_eq!(c, a, "slot reused");
    // A destination with a transaction in flight stays.
    q.promote_due(at(60));
    assert!(matches!(
        q.get_mut(b).unwrap().next(at(60), &schedule),
        Dispatch::Send(_)
    ));
    assert_eq!(q.collect_unused(), 1, "only c goes");
    assert_eq!(q.lookup(&mx("b.example")), Some(b));
    q.get_mut(b).unwrap().finish();
    assert_eq!(q.collect_unused(), 1);
    assert_eq!(q.destinations(), 0);
}

// ---- backpressure ------------------------------------------------------------------

#[test]
fn backpressure_turns_ingest_away_at_either_limit() {
    let mut bp = Backpressure::new(BackpressureLimits {
        messages_max: 3,
        bytes_max: 1000,
    });
    assert!(bp.accepting());
    assert!(bp.would_accept(1000));
    assert!(!bp.would_accept(1001));
    bp.admit(100);
    bp.admit(100);
    assert!(bp.accepting());
    bp.admit(100);
    assert!(!bp.accepting(), "three messages");
    bp.release(100);
    assert!(bp.accepting());
    bp.admit(800);
    assert!(!bp.accepting(), "1000 bytes");
    assert_eq!((bp.messages(), bp.bytes()), (3, 1000));
    bp.release(800);
    bp.release(100);
    bp.release(100);
    bp.release(100);
    assert_eq!((bp.messages(), bp.bytes()), (0, 0), "never below zero");
}

// ---- memory ------------------------------------------------------------------------

/// Resident set size of this process, from /proc (Linux), in octets.
fn rss() -> Option<usize> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: usize = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// The target: a million deferred entries must not need gigabytes. Builds them over
/// 10,000 destinations (the usual one recipient each, every 100th with recipients above 63),
/// and reports the `size_of`-based estimate (and the RSS growth, which other tests running
/// in parallel make only indicative).
#[test]
fn a_million_deferred_entries() {
    const N: usize = 1_000_000;
    let rss_before = rss();
    let mut q = CoreQueue::new(DestinationLimits::default(), 100_000);
    let dests: Vec<DestId> = (0..10_000)
        .map(|i| q.destination_id(mx(&format!("d{i}.example"))).unwrap())
        .collect();
    let large = RcptSet::from_indices(&[64, 65, 66, 67]).unwrap();
    for i in 0..N {
        let recipients = if i % 100 == 0 {
            large.clone()
        } else {
            one(i % 64)
        };
        let due = at(60 + (i as u64 * 7919) % (5 * 24 * 3600));
        q.defer(QueueEntry::new(
            qid(i as u64 / 1000, 0),
            dests[i % dests.len()],
            recipients,
            due,
        ))
        .unwrap();
    }
    let estimate = q.memory_estimate();
    let rss_after = rss();
    let per_entry = estimate as f64 / N as f64;
    eprintln!(
        "1M deferred entries: size_of-based estimate {:.1} MiB ({per_entry:.1} octets/entry; \
         QueueEntry is {} octets), RSS growth {} MiB",
        estimate as f64 / (1024.0 * 1024.0),
        std::mem::size_of::<QueueEntry>(),
        match (rss_before, rss_after) {
            (Some(b), Some(a)) => format!("{:.1}", a.saturating_sub(b) as f64 / (1024.0 * 1024.0)),
            _ => "n/a".into(),
        }
    );
    assert!(estimate < 100 * 1024 * 1024, "{estimate}");
    assert!(estimate < 1024 * 1024 * 1024);
    // The index still pops in time order.
    let mut last = UNIX_EPOCH;
    for _ in 0..10_000 {
        let e = q.pop_due(at(u64::from(u32::MAX))).unwrap();
        assert!(e.due() >= last);
        last = e.due();
    }
    assert_eq!(q.deferred_len(), N - 10_000);
}

#[test]
fn arc_hops_are_cheap_to_key() {
    // A static route's hop is shared; keying clones the address, not a string per lookup
    // of the table.
    let route = Route {
        hop: NextHop::Static(Arc::new(HopAddr {
            host: Host::Ip("192.0.2.1".parse().unwrap()),
            port: 25,
        })),
        tls: TlsMode::Opportunistic,
        rule: Some(0),
    };
    let key = DestinationKey::new(&route, "x.example");
    assert!(matches!(key, DestinationKey::Static { .. }));
}

#[test]
fn blocked_until_reports_holds_and_the_rate_limit_without_taking_a_token() {
    let mut queue = CoreQueue::new(
        DestinationLimits {
            messages_per_minute: 60,
            ..DestinationLimits::default()
        },
        10,
    );
    let id = queue
        .destination_id(DestinationKey::Mx("example.com".into()))
        .unwrap();
    let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
    let dest = queue.get_mut(id).unwrap();
    assert_eq!(dest.blocked_until(now), None);
    assert_eq!(dest.blocked_until(now), None, "peeking takes no token");
    dest.hold_until(now + Duration::from_secs(30));
    assert_eq!(dest.blocked_until(now), Some(now + Duration::from_secs(30)));
    dest.release_hold();
    assert_eq!(dest.blocked_until(now), None);
    let mut rate = RateLimiter::new(60, 1);
    assert_eq!(rate.would_wait(now), None);
    assert!(rate.try_acquire(now).is_ok());
    assert_eq!(rate.would_wait(now), Some(now + Duration::from_secs(1)));
    assert_eq!(rate.try_acquire(now), Err(now + Duration::from_secs(1)));
}
