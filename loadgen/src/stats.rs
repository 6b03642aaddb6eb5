//! Latency histograms (HdrHistogram, microseconds, 3 significant digits) and their
//! summaries, plus the live counters the progress line reads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// One latency histogram; values in microseconds from 1 µs to 1 hour.
#[derive(Debug, Clone)]
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    pub fn new() -> Latency {
        // Bounds are constants that hdrhistogram accepts (low ≥ 1, high ≥ 2 × low, sigfig ≤ 5).
        match Histogram::new_with_bounds(1, 3_600_000_000, 3) {
            Ok(h) => Latency(h),
            Err(_) => unreachable!("constant histogram bounds are valid"),
        }
    }

    pub fn record(&mut self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.0.saturating_record(micros.max(1));
    }

    pub fn add(&mut self, other: &Latency) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.0.add(&other.0);
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    pub fn summary(&self) -> LatencySummary {
        let ms = |micros: u64| micros as f64 / 1000.0;
        let q = |quantile: f64| {
            if self.0.is_empty() {
                0.0
            } else {
                ms(self.0.value_at_quantile(quantile))
            }
        };
        LatencySummary {
            count: self.0.len(),
            mean_ms: if self.0.is_empty() {
                0.0
            } else {
                self.0.mean() / 1000.0
            },
            p50_ms: q(0.50),
            p90_ms: q(0.90),
            p99_ms: q(0.99),
            p99_9_ms: q(0.999),
            max_ms: if self.0.is_empty() {
                0.0
            } else {
                ms(self.0.max())
            },
        }
    }
}

/// What the reports print for one histogram.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p99_9_ms: f64,
    pub max_ms: f64,
}

impl LatencySummary {
    /// One table row: `name  count  p50  p90  p99  p99.9  max`.
    pub fn row(&self, name: &str) -> String {
        format!(
            "  {name:<22} {:>9} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
            self.count, self.p50_ms, self.p90_ms, self.p99_ms, self.p99_9_ms, self.max_ms
        )
    }

    pub fn header() -> String {
        format!(
            "  {:<22} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "latency (ms)", "count", "p50", "p90", "p99", "p99.9", "max"
        )
    }
}

/// Counters shared by all threads, read by the progress line each tick.
#[derive(Debug, Default)]
pub struct Live {
    pub done: AtomicU64,
    pub bytes: AtomicU64,
    pub errors: AtomicU64,
}

impl Live {
    pub fn add(&self, done: u64, bytes: u64) {
        self.done.fetch_add(done, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.done.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        )
    }
}

/// Counts of replies by code (index = code; 200–599 are valid).
#[derive(Debug, Clone)]
pub struct CodeCounts(Box<[u64; 600]>);

impl Default for CodeCounts {
    fn default() -> Self {
        CodeCounts(Box::new([0; 600]))
    }
}

impl CodeCounts {
    pub fn count(&mut self, code: u16) {
        if let Some(slot) = self.0.get_mut(usize::from(code)) {
            *slot += 1;
        }
    }

    pub fn add(&mut self, other: &CodeCounts) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a += b;
        }
    }

    pub fn get(&self, code: u16) -> u64 {
        self.0.get(usize::from(code)).copied().unwrap_or(0)
    }

    /// The nonzero counts, by code (as strings, for JSON object keys).
    pub fn to_map(&self) -> std::collections::BTreeMap<String, u64> {
        self.0
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(code, &n)| (code.to_string(), n))
            .collect()
    }
}

/// Rates over a run.
pub fn per_second(count: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        count as f64 / secs
    } else {
        0.0
    }
}

/// Prints a run's summary: `text` on stdout, or with `json` the text on stderr and `report`
/// as one JSON object on stdout (what scripts read).
pub fn print_summary(json: bool, text: &str, report: &impl serde::Serialize) {
    if json {
        eprint!("{text}");
        match serde_json::to_string(report) {
            Ok(line) => println!("{line}"),
            Err(e) => eprintln!("loadgen: cannot encode the JSON summary: {e}"),
        }
    } else {
        print!("{text}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries() {
        let mut a = Latency::new();
        for ms in 1..=100 {
            a.record(Duration::from_millis(ms));
        }
        let mut b = Latency::new();
        b.record(Duration::from_secs(2));
        a.add(&b);
        let s = a.summary();
        assert_eq!(s.count, 101);
        assert!((49.0..=51.5).contains(&s.p50_ms), "{s:?}");
        assert!((1999.0..=2002.0).contains(&s.max_ms), "{s:?}");
        assert_eq!(Latency::new().summary().p99_ms, 0.0);
        let mut codes = CodeCounts::default();
        codes.count(250);
        codes.count(250);
        codes.count(9999);
        assert_eq!(codes.to_map().get("250"), Some(&2));
        assert_eq!(codes.to_map().len(), 1);
    }
}
