//! The retry schedule: when a deferred recipient is tried again, and when the relay gives up.
//!
//! **Role.** Pure functions of `(attempt, first_seen, now, seed)` and a [`RetrySchedule`]:
//! the runtime passes the time of the failed attempt and stores the answer in the spool's
//! deferred record and the deferred index; nothing here sleeps or reads a clock.
//!
//! **The rules.**
//! - After attempt *n* fails (n = 1 for the first try), the next one is `intervals[n-1]`
//!   later, or `repeat` once the list is used up. Default: 1m, 5m, 10m, 30m, 1h, then every
//!   2h (the curve of Postfix's back-off, with earlier first retries, because
//!   greylisting answers typically clear after 1–5 minutes).
//! - Each wait is jittered by up to ±`jitter_percent` (default 10%), deterministically from
//!   the seed (the queue id is a good seed) and the attempt number, so a burst of mail
//!   deferred by one outage does not come back as one burst.
//! - **`max_age` is a hard deadline** (`first_seen + max_age`, default 5 days: RFC 5321
//!   §4.5.4.1 "at least 4–5 days"). No wait of any kind may end at or after it: a back-off
//!   that would is [`NextAttempt::Expired`] right away (bounce now, with the last reply), a
//!   throttle that would is expired too ([`throttled`]), and a recipient still waiting in a
//!   ready queue when the deadline comes is expired there ([`expired`]). So the bounce comes
//!   at the latest at the deadline and, with the default schedule, at most one 2h interval
//!   (+10%) before it: the sender learns the outcome as soon as no attempt can follow, and no
//!   kind of waiting (deferred, ready behind a limit, throttled) can outlive the lifetime, an
//!   outage other MTAs have had.
//! - **A throttle never shortens a back-off.** When a destination's rate limit or a remote's
//!   "try later" combines with a recipient's own computed next attempt, the later of the two
//!   wins ([`later_of`]); [`throttled`] is the one place that combines them.
//! - **Delay notices.** Once a message has waited `delay_warning` (default 4h, sendmail's
//!   `Timeout.queuewarn`) and is still queued, one delay DSN is due ([`delay_notice_due`]);
//!   whether the sender wants it is `dsn::notify_decision`'s call.
//!
//! **Limits.** At most [`INTERVALS_MAX`] listed intervals, each at least [`INTERVAL_MIN`] (so
//! the number of attempts is bounded by `max_age / INTERVAL_MIN`), jitter at most
//! [`JITTER_PERCENT_MAX`]%. [`RetrySchedule::check`] enforces them; the functions below also
//! stay correct (no panic, no overflow) on an unchecked schedule.
//!
//! **Exposure.** None: the inputs are the operator's config and the relay's own times.
#![forbid(unsafe_code)]

use std::time::{Duration, SystemTime};

use super::{add_saturating, SplitMix64};

/// Listed intervals at most; a longer list is a config mistake, not a schedule.
pub const INTERVALS_MAX: usize = 32;
/// The shortest wait between attempts: bounds the attempts per message by `max_age / 100ms`
/// even for test configs, and keeps a misconfigured schedule from spinning.
pub const INTERVAL_MIN: Duration = Duration::from_millis(100);
/// Jitter above ±50% would let two consecutive waits swap order.
pub const JITTER_PERCENT_MAX: u8 = 50;

/// When to try again and when to give up (the `[delivery]` retry keys, checked).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetrySchedule {
    /// The waits after the first, second, … failed attempt.
    pub intervals: Vec<Duration>,
    /// The wait after every later failed attempt.
    pub repeat: Duration,
    /// Each wait varies by up to ± this percentage.
    pub jitter_percent: u8,
    /// The deadline, counted from the message's arrival: then the recipient bounces.
    pub max_age: Duration,
    /// When a still-queued message earns one delay notice; `None`: never.
    pub delay_warning: Option<Duration>,
}

impl Default for RetrySchedule {
    fn default() -> Self {
        const MINUTE: u64 = 60;
        const HOUR: u64 = 60 * MINUTE;
        RetrySchedule {
            intervals: [MINUTE, 5 * MINUTE, 10 * MINUTE, 30 * MINUTE, HOUR]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
            repeat: Duration::from_secs(2 * HOUR),
            jitter_percent: 10,
            max_age: Duration::from_secs(5 * 24 * HOUR),
            delay_warning: Some(Duration::from_secs(4 * HOUR)),
        }
    }
}

/// A schedule value outside its limits.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("more than {INTERVALS_MAX} retry intervals")]
    TooManyIntervals,
    #[error("retry interval {0:?} is shorter than the minimum {INTERVAL_MIN:?}")]
    IntervalTooShort(Duration),
    #[error("jitter {0}% is above the maximum {JITTER_PERCENT_MAX}%")]
    JitterTooLarge(u8),
    #[error("max_age must be longer than the first retry interval")]
    MaxAgeTooShort,
}

impl RetrySchedule {
    /// Checks the limits in the module doc.
    pub fn check(&self) -> Result<(), ScheduleError> {
        if self.intervals.len() > INTERVALS_MAX {
            return Err(ScheduleError::TooManyIntervals);
        }
        for &interval in self.intervals.iter().chain([&self.repeat]) {
            if interval < INTERVAL_MIN {
                return Err(ScheduleError::IntervalTooShort(interval));
            }
        }
        if self.jitter_percent > JITTER_PERCENT_MAX {
            return Err(ScheduleError::JitterTooLarge(self.jitter_percent));
        }
        if self.max_age <= self.base_interval(1) {
            return Err(ScheduleError::MaxAgeTooShort);
        }
        Ok(())
    }

    /// The un-jittered wait after failed attempt `attempt` (attempt 0 is read as 1).
    pub fn base_interval(&self, attempt: u32) -> Duration {
        let index = usize::try_from(attempt.max(1) - 1).unwrap_or(usize::MAX);
        self.intervals
            .get(index)
            .copied()
            .unwrap_or(self.repeat)
            .max(INTERVAL_MIN)
    }

    /// The wait after failed attempt `attempt`, jittered from `seed`.
    pub fn interval(&self, attempt: u32, seed: u64) -> Duration {
        jitter(
            self.base_interval(attempt),
            attempt,
            seed,
            self.jitter_percent.min(JITTER_PERCENT_MAX),
        )
    }

    /// `first_seen + max_age`: no wait may end at or after it.
    pub fn deadline(&self, first_seen: SystemTime) -> SystemTime {
        add_saturating(first_seen, self.max_age)
    }
}

/// The outcome of scheduling a wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NextAttempt {
    /// Try again at this time (always before the deadline).
    At(SystemTime),
    /// The deadline is reached or no attempt fits before it: bounce now.
    Expired,
}

/// `base` ± up to `percent`%, the offset drawn from `(seed, attempt)`; millisecond
/// resolution.
fn jitter(base: Duration, attempt: u32, seed: u64, percent: u8) -> Duration {
    let base_ms = u64::try_from(base.as_millis()).unwrap_or(u64::MAX / 4);
    let span = base_ms / 100 * u64::from(percent) + base_ms % 100 * u64::from(percent) / 100;
    if span == 0 {
        return base;
    }
    let mut rng = SplitMix64::new(seed ^ u64::from(attempt).wrapping_mul(0xD6E8_FEB8_6659_FD93));
    let draw = rng.below(2 * span + 1);
    let ms = (base_ms - span).saturating_add(draw);
    Duration::from_millis(ms)
}

/// When to try again after attempt number `attempt` (1 for the first try) failed at `now`,
/// for a message that arrived at `first_seen`.
pub fn next_attempt(
    attempt: u32,
    first_seen: SystemTime,
    now: SystemTime,
    seed: u64,
    schedule: &RetrySchedule,
) -> NextAttempt {
    let wanted = add_saturating(now, schedule.interval(attempt, seed));
    within_max_age(wanted, first_seen, now, schedule)
}

/// The one rule for every kind of wait: `At(wanted)` if it ends before the deadline (and the
/// deadline has not passed), else `Expired`.
pub fn within_max_age(
    wanted: SystemTime,
    first_seen: SystemTime,
    now: SystemTime,
    schedule: &RetrySchedule,
) -> NextAttempt {
    let deadline = schedule.deadline(first_seen);
    if now >= deadline || wanted >= deadline {
        NextAttempt::Expired
    } else {
        NextAttempt::At(wanted)
    }
}

/// The later of two times: how a throttle combines with a computed back-off.
pub fn later_of(a: SystemTime, b: SystemTime) -> SystemTime {
    a.max(b)
}

/// A recipient scheduled for `scheduled` meets a throttle (rate limit, connection limit, a
/// remote's 421) that holds its destination until `throttle_until`: it waits for the later
/// of the two, and expires if that is not before the deadline.
pub fn throttled(
    scheduled: NextAttempt,
    throttle_until: SystemTime,
    first_seen: SystemTime,
    now: SystemTime,
    schedule: &RetrySchedule,
) -> NextAttempt {
    match scheduled {
        NextAttempt::Expired => NextAttempt::Expired,
        NextAttempt::At(at) => {
            within_max_age(later_of(at, throttle_until), first_seen, now, schedule)
        }
    }
}

/// Has a message that arrived at `first_seen` reached its deadline at `now`? For entries that
/// wait without a timer of their own (a ready queue behind a connection limit).
pub fn expired(first_seen: SystemTime, now: SystemTime, schedule: &RetrySchedule) -> bool {
    now >= schedule.deadline(first_seen)
}

/// Is a delay notice due: the message has waited `delay_warning`, none was sent yet, and it
/// has not expired (then the failure notice says it all)?
pub fn delay_notice_due(
    first_seen: SystemTime,
    now: SystemTime,
    already_sent: bool,
    schedule: &RetrySchedule,
) -> bool {
    let Some(warning) = schedule.delay_warning else {
        return false;
    };
    !already_sent
        && warning < schedule.max_age
        && now >= add_saturating(first_seen, warning)
        && !expired(first_seen, now, schedule)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    const MIN: u64 = 60;
    const HOUR: u64 = 3600;

    fn t0() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_764_000_000)
    }

    /// Every attempt's offset from arrival (ms), when each retry runs exactly on time, up to
    /// the bounce; the last element is the time of the failure that expired the message.
    fn sequence(seed: u64, schedule: &RetrySchedule) -> Vec<u64> {
        let first = t0();
        let mut now = first;
        let mut out = vec![0];
        for attempt in 1.. {
            match next_attempt(attempt, first, now, seed, schedule) {
                NextAttempt::At(at) => {
                    assert!(at > now, "time goes forward");
                    now = at;
                    out.push(now.duration_since(first).unwrap_or_default().as_millis() as u64);
                }
                NextAttempt::Expired => break,
            }
            assert!(attempt < 10_000, "the schedule ends");
        }
        out
    }

    fn no_jitter() -> RetrySchedule {
        RetrySchedule {
            jitter_percent: 0,
            ..RetrySchedule::default()
        }
    }

    #[test]
    fn the_default_schedule_checks() {
        assert_eq!(RetrySchedule::default().check(), Ok(()));
    }

    #[test]
    fn unjittered_sequence_is_the_documented_one() {
        let got = sequence(0, &no_jitter());
        let mut want = vec![0, MIN, 6 * MIN, 16 * MIN, 46 * MIN, HOUR + 46 * MIN];
        let mut at = HOUR + 46 * MIN;
        loop {
            at += 2 * HOUR;
            if at >= 120 * HOUR {
                break;
            }
            want.push(at);
        }
        let want: Vec<u64> = want.into_iter().map(|s| s * 1000).collect();
        assert_eq!(got, want);
        // 1 first try + 5 listed retries + 59 two-hourly ones; the last at 119h46m.
        assert_eq!(got.len(), 65);
        assert_eq!(got.last(), Some(&((119 * HOUR + 46 * MIN) * 1000)));
    }

    /// The full default sequences for three seeds, in seconds after arrival (ms truncated):
    /// the first try, the 5 listed retries (for seed 42: 56s, 5m01s, 10m27s, 31m39s, 1h03m33s
    /// later), then 2h ± 10% until the next wait would reach the 5-day deadline (432000 s).
    /// A change here is a change of the retry behaviour of every queued message.
    #[test]
    fn jittered_sequences_for_three_seeds() {
        let cases: [(u64, &[u64]); 3] =
            [(42, &SEED_42), (7, &SEED_7), (0xDEAD_BEEF, &SEED_DEADBEEF)];
        for (seed, want) in cases {
            let got: Vec<u64> = sequence(seed, &RetrySchedule::default())
                .into_iter()
                .map(|ms| ms / 1000)
                .collect();
            assert_eq!(got, want, "seed {seed}: {got:?}");
        }
    }

    const SEED_42: [u64; 64] = [
        0, 56, 357, 984, 2883, 6696, 14060, 21434, 28885, 36347, 43880, 51157, 57920, 65749, 72660,
        79800, 86769, 93946, 101134, 107793, 114905, 122767, 129925, 137408, 144627, 151919,
        159665, 167405, 174953, 182216, 189778, 196626, 203425, 210538, 217475, 224424, 232152,
        240011, 247067, 254748, 261456, 268215, 275517, 283376, 290452, 298128, 305003, 312746,
        319259, 326913, 334476, 342314, 349974, 357282, 364142, 371036, 378744, 385994, 393134,
        400172, 407452, 414262, 420847, 427968,
    ];

    const SEED_7: [u64; 65] = [
        0, 59, 357, 906, 2531, 5990, 13329, 21063, 27715, 35135, 41927, 48423, 55412, 63113, 69859,
        76547, 83383, 90854, 98713, 105573, 112102, 119924, 127461, 135255, 142637, 150057, 156781,
        163537, 171167, 177652, 184969, 191569, 199070, 206003, 212734, 220633, 228317, 235271,
        242103, 249623, 256299, 263164, 270188, 277752, 284257, 291427, 298177, 305389, 312797,
        319440, 326442, 333263, 340902, 348041, 355156, 362284, 369122, 375893, 382439, 389298,
        397009, 404351, 411448, 418525, 425060,
    ];

    const SEED_DEADBEEF: [u64; 64] = [
        0, 61, 358, 969, 2945, 6680, 14220, 20859, 28099, 35437, 43230, 50022, 57506, 64607, 71836,
        78501, 86006, 93148, 99726, 106903, 114501, 121904, 129717, 136834, 143900, 151629, 159436,
        166520, 173242, 179784, 186708, 193850, 200374, 207899, 214746, 221753, 229378, 236707,
        243968, 251851, 259410, 266953, 273529, 280487, 287862, 295225, 303110, 310083, 317315,
        325210, 332916, 340115, 347935, 354449, 361373, 368295, 375790, 383245, 389986, 397723,
        404453, 411613, 419410, 427262,
    ];

    #[test]
    fn jitter_stays_within_ten_percent_for_many_seeds() {
        let schedule = RetrySchedule::default();
        for seed in [0, 1, 7, 42, 0xDEAD_BEEF, u64::MAX] {
            let seq = sequence(seed, &schedule);
            let deadline_ms = schedule.max_age.as_millis() as u64;
            assert!(*seq.last().unwrap() < deadline_ms);
            for (i, pair) in seq.windows(2).enumerate() {
                let wait = pair[1] - pair[0];
                let base = schedule.base_interval(i as u32 + 1).as_millis() as u64;
                assert!(
                    wait >= base - base / 10 && wait <= base + base / 10,
                    "seed {seed} attempt {}: wait {wait} ms vs base {base} ms",
                    i + 1
                );
            }
            // Between 60 and 70 attempts for any jitter within ±10%.
            assert!((60..=70).contains(&seq.len()), "seed {seed}: {}", seq.len());
            // The final failure leaves no room for another wait before the deadline.
            let last = *seq.last().unwrap();
            let next = schedule.interval(seq.len() as u32, seed).as_millis() as u64;
            assert!(last + next >= deadline_ms, "seed {seed}");
        }
    }

    #[test]
    fn same_seed_same_schedule_other_seed_other_schedule() {
        let schedule = RetrySchedule::default();
        assert_eq!(sequence(9, &schedule), sequence(9, &schedule));
        assert_ne!(sequence(9, &schedule), sequence(10, &schedule));
    }

    #[test]
    fn attempt_zero_reads_as_the_first() {
        let s = no_jitter();
        assert_eq!(s.base_interval(0), s.base_interval(1));
        assert_eq!(s.base_interval(6), Duration::from_secs(2 * HOUR));
        assert_eq!(s.base_interval(u32::MAX), Duration::from_secs(2 * HOUR));
    }

    #[test]
    fn max_age_holds_for_back_off() {
        let s = no_jitter();
        let first = t0();
        // A failure one second before the deadline: no 2h wait fits.
        let now = s.deadline(first) - Duration::from_secs(1);
        assert_eq!(next_attempt(20, first, now, 0, &s), NextAttempt::Expired);
        // A failure at or after the deadline.
        assert_eq!(
            next_attempt(1, first, s.deadline(first), 0, &s),
            NextAttempt::Expired
        );
        assert_eq!(
            next_attempt(1, first, s.deadline(first) + Duration::from_secs(9), 0, &s),
            NextAttempt::Expired
        );
        // A wait ending exactly at the deadline is too late as well.
        let exact = s.deadline(first) - Duration::from_secs(2 * HOUR);
        assert_eq!(next_attempt(20, first, exact, 0, &s), NextAttempt::Expired);
        let before = exact - Duration::from_millis(1);
        assert!(matches!(
            next_attempt(20, first, before, 0, &s),
            NextAttempt::At(_)
        ));
    }

    #[test]
    fn max_age_holds_for_throttles() {
        let s = no_jitter();
        let first = t0();
        let now = first + Duration::from_secs(HOUR);
        let backoff = NextAttempt::At(now + Duration::from_secs(10 * MIN));
        // A throttle past the deadline expires the recipient.
        let beyond = s.deadline(first) + Duration::from_secs(1);
        assert_eq!(
            throttled(backoff, beyond, first, now, &s),
            NextAttempt::Expired
        );
        // An expired back-off stays expired whatever the throttle says.
        assert_eq!(
            throttled(NextAttempt::Expired, now, first, now, &s),
            NextAttempt::Expired
        );
        // A throttle checked after the deadline.
        let late = s.deadline(first);
        assert_eq!(
            throttled(backoff, now, first, late, &s),
            NextAttempt::Expired
        );
    }

    #[test]
    fn max_age_holds_for_ready_waits() {
        let s = no_jitter();
        let first = t0();
        assert!(!expired(
            first,
            s.deadline(first) - Duration::from_millis(1),
            &s
        ));
        assert!(expired(first, s.deadline(first), &s));
        assert!(expired(
            first,
            s.deadline(first) + Duration::from_secs(HOUR),
            &s
        ));
    }

    #[test]
    fn a_throttle_never_shortens_a_back_off() {
        let s = no_jitter();
        let first = t0();
        let now = first + Duration::from_secs(MIN);
        let backoff_at = now + Duration::from_secs(30 * MIN);
        // A shorter throttle leaves the back-off as it is.
        let short = now + Duration::from_secs(MIN);
        assert_eq!(
            throttled(NextAttempt::At(backoff_at), short, first, now, &s),
            NextAttempt::At(backoff_at)
        );
        // A longer one extends it.
        let long = now + Duration::from_secs(HOUR);
        assert_eq!(
            throttled(NextAttempt::At(backoff_at), long, first, now, &s),
            NextAttempt::At(long)
        );
        assert_eq!(later_of(short, long), long);
        assert_eq!(later_of(long, short), long);
    }

    #[test]
    fn delay_notice_timing() {
        let s = RetrySchedule::default();
        let first = t0();
        let at = |secs: u64| first + Duration::from_secs(secs);
        assert!(!delay_notice_due(first, at(4 * HOUR - 1), false, &s));
        assert!(delay_notice_due(first, at(4 * HOUR), false, &s));
        assert!(delay_notice_due(first, at(50 * HOUR), false, &s));
        assert!(
            !delay_notice_due(first, at(4 * HOUR), true, &s),
            "only once"
        );
        assert!(
            !delay_notice_due(first, at(120 * HOUR), false, &s),
            "expired"
        );
        let off = RetrySchedule {
            delay_warning: None,
            ..RetrySchedule::default()
        };
        assert!(!delay_notice_due(first, at(50 * HOUR), false, &off));
        let too_late = RetrySchedule {
            delay_warning: Some(Duration::from_secs(200 * HOUR)),
            ..RetrySchedule::default()
        };
        assert!(!delay_notice_due(first, at(119 * HOUR), false, &too_late));
    }

    #[test]
    fn extreme_values_do_not_panic() {
        let s = RetrySchedule {
            intervals: vec![Duration::MAX],
            repeat: Duration::ZERO,
            jitter_percent: 255,
            max_age: Duration::MAX,
            delay_warning: Some(Duration::MAX),
        };
        let first = t0();
        let _ = next_attempt(1, first, first, u64::MAX, &s);
        let _ = next_attempt(2, first, first, 0, &s);
        assert!(s.base_interval(2) >= INTERVAL_MIN);
        let _ = delay_notice_due(first, first, false, &s);
        assert!(s.check().is_err());
    }

    #[test]
    fn check_rejects_out_of_range_schedules() {
        let base = RetrySchedule::default();
        let many = RetrySchedule {
            intervals: vec![Duration::from_secs(60); INTERVALS_MAX + 1],
            ..base.clone()
        };
        assert_eq!(many.check(), Err(ScheduleError::TooManyIntervals));
        let short = RetrySchedule {
            repeat: Duration::from_millis(10),
            ..base.clone()
        };
        assert!(matches!(
            short.check(),
            Err(ScheduleError::IntervalTooShort(_))
        ));
        let jitter = RetrySchedule {
            jitter_percent: 51,
            ..base.clone()
        };
        assert_eq!(jitter.check(), Err(ScheduleError::JitterTooLarge(51)));
        let age = RetrySchedule {
            max_age: Duration::from_secs(30),
            ..base
        };
        assert_eq!(age.check(), Err(ScheduleError::MaxAgeTooShort));
    }
}
