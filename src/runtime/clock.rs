//! The time seam: code that decides by the clock reads it through [`Clock`], so a test can
//! hold time still or move it by hand instead of sleeping.

use std::time::{Instant, SystemTime};

/// A source of the current time: monotonic for intervals and holds, wall clock for what is
/// stored or compared with stored times.
pub trait Clock {
    fn now(&self) -> Instant;
    fn wall(&self) -> SystemTime;
}

/// The operating system's clocks.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_clock_moves_forward() {
        let clock = SystemClock;
        let (a, wa) = (clock.now(), clock.wall());
        let (b, wb) = (clock.now(), clock.wall());
        assert!(b >= a);
        assert!(wb >= wa);
    }
}
