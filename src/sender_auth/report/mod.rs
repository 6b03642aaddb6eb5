//! DMARC aggregate reports (RFC 7489 §7): what each check observed, counted in bounded
//! memory, kept on disk between restarts, and the reports built from it.
//!
//! Role: the checks at ingest call [`Recorder::record`] (one short lock, no I/O). The
//! server's reporter thread writes the counts to `<dir>/aggregate.json` every
//! `flush_interval` and at shutdown ([`Recorder::flush`]), and at the end of each
//! `[begin, end)` interval asks for what is due ([`Recorder::due`]): one report per policy
//! domain that publishes `rua=`, built by [`feedback`].
//!
//! Exposure: every string of an observation came from a peer or from DNS. The XML escapes
//! them; header fields take only what [`feedback::parse_rua`] and
//! [`feedback::is_domain_name`] let through; each string is cut to 255 bytes and a row keeps
//! at most 8 DKIM results, so a row's size is bounded.
//!
//! Limits: at most `max_records` rows in all and `max_domains` policy domains per interval;
//! an observation beyond either is counted in [`Recorder::dropped`], never stored. A crash
//! loses the counts of at most one `flush_interval`; a report committed to the spool just
//! before a crash, ahead of the flush that forgets it, is sent again (at least once).

mod aggregate;
pub mod feedback;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use aggregate::Aggregate;
pub use aggregate::{DueReport, Row};

/// A DKIM or SPF result as DMARC reports name them (RFC 7489 Appendix C).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum AuthResult {
    None,
    Pass,
    Fail,
    SoftFail,
    Neutral,
    TempError,
    PermError,
    Policy,
}

/// What the policy did with the message (RFC 7489 Appendix C `DispositionType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Disposition {
    None,
    Quarantine,
    Reject,
}

/// The DMARC record that applied, as published (for the report's `policy_published`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PublishedPolicy {
    /// The organisational or exact domain whose `_dmarc` record was used.
    pub domain: String,
    pub adkim_strict: bool,
    pub aspf_strict: bool,
    pub p: Disposition,
    pub sp: Disposition,
    pub pct: u8,
    /// `rua=` addresses (`mailto:` URIs as published); empty: no aggregate reports wanted.
    pub rua: Vec<String>,
}

/// One DMARC evaluation of one arriving message: what the aggregate report counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    /// When the check ran, seconds since the Unix epoch.
    pub unix_time: u64,
    pub source_ip: IpAddr,
    /// The RFC 5322.From domain (the DMARC identifier).
    pub header_from: String,
    /// The RFC 5321.MailFrom domain (the HELO name when the reverse path was null).
    pub envelope_from: String,
    pub policy: PublishedPolicy,
    pub disposition: Disposition,
    /// DMARC's aligned verdicts.
    pub dkim_aligned: AuthResult,
    pub spf_aligned: AuthResult,
    /// Every DKIM signature checked: (d=, s=, result).
    pub dkim: Vec<(String, String, AuthResult)>,
    /// The SPF check: (domain, scope is HELO, result).
    pub spf: (String, bool, AuthResult),
}

/// `[dmarc]` as the reporter uses it (the config section converts into this).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportSettings {
    /// Off: nothing is recorded, stored or sent.
    pub enabled: bool,
    /// `org_name` of the report metadata.
    pub org_name: String,
    /// The From address of reports, also their reverse path and the metadata's `email`.
    pub report_from: String,
    /// Our host name: the receiver in report file names, the Subject's Submitter.
    pub receiver: String,
    /// Report period; intervals are aligned to multiples of it since the epoch (a day:
    /// UTC midnight to midnight).
    pub interval: Duration,
    /// How often the counts are written to disk.
    pub flush_interval: Duration,
    pub max_records: usize,
    pub max_domains: usize,
    /// The largest report message we send (a URI's own `!size` may be smaller).
    pub max_report_size: u64,
    /// Where the counts are kept (`aggregate.json`).
    pub dir: PathBuf,
}

impl ReportSettings {
    /// The file the counts are kept in.
    pub fn state_file(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }
}

/// The counts file inside the storage directory.
pub const STATE_FILE: &str = "aggregate.json";

/// Why the counts could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a DMARC counts file: {message}")]
    Format { path: PathBuf, message: String },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ReportError + '_ {
    move |source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where observations go. One per process, shared by every core.
#[derive(Debug, Default)]
pub struct Recorder {
    /// `None`: reports are off and [`Recorder::record`] does nothing.
    limits: Option<aggregate::Limits>,
    state: Mutex<Aggregate>,
    dropped: AtomicU64,
    /// Counts changed since the last flush.
    dirty: AtomicBool,
    /// A drop was logged since the last flush (one warning per flush period, not per message).
    warned: AtomicBool,
    /// The metric that counts drops too (set once by the server).
    drop_counter: OnceLock<prometheus_client::metrics::counter::Counter>,
}

impl Recorder {
    /// An empty recorder with the settings' bounds (a no-op one when reports are off).
    pub fn new(settings: &ReportSettings) -> Recorder {
        Recorder {
            limits: settings.enabled.then(|| aggregate::Limits::of(settings)),
            ..Recorder::default()
        }
    }

    /// The recorder with the counts of `settings.state_file()`, if there is one. Rows beyond
    /// the bounds are dropped (and counted) as if they had just been recorded.
    pub fn load(settings: &ReportSettings) -> Result<Recorder, ReportError> {
        let recorder = Recorder::new(settings);
        let path = settings.state_file();
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(recorder),
            Err(error) => return Err(io_error(&path)(error)),
        };
        let Some(limits) = &recorder.limits else {
            return Ok(recorder);
        };
        let dropped =
            recorder
                .lock()
                .restore(&text, limits)
                .map_err(|message| ReportError::Format {
                    path: path.clone(),
                    message,
                })?;
        recorder.dropped.store(dropped, Ordering::Relaxed);
        // Written back at the next flush: the file then holds what the bounds kept, and a
        // file removed while the relay runs is restored.
        recorder.dirty.store(recorder.rows() > 0, Ordering::Relaxed);
        Ok(recorder)
    }

    /// Counts one observation (never blocks ingest for long; bounded). Observations of
    /// domains that want no aggregate reports (no `rua=`) are not kept.
    pub fn record(&self, observation: Observation) {
        let Some(limits) = &self.limits else {
            return;
        };
        if observation.policy.rua.is_empty() {
            return;
        }
        let domain = observation.policy.domain.clone();
        let kept = self.lock().add(observation, limits);
        if kept {
            self.dirty.store(true, Ordering::Relaxed);
            return;
        }
        self.dropped.fetch_add(1, Ordering::Relaxed);
        if let Some(counter) = self.drop_counter.get() {
            counter.inc();
        }
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                target: "relay::dmarc",
                domain = %crate::logsafe::Safe(&domain),
                max_records = limits.max_records,
                max_domains = limits.max_domains,
                dropped = self.dropped(),
                "DMARC report storage full: observation not counted"
            );
        }
    }

    /// Counts later drops in `counter` as well (the first call only has an effect).
    pub fn count_drops_in(&self, counter: prometheus_client::metrics::counter::Counter) {
        let _ = self.drop_counter.set(counter);
    }

    /// Observations not counted because the storage was full, since the start.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Distinct rows held now, over every interval and domain.
    pub fn rows(&self) -> usize {
        self.lock().rows()
    }

    /// Whether reports are on.
    pub fn enabled(&self) -> bool {
        self.limits.is_some()
    }

    /// Writes the counts to `settings.state_file()` (a temporary file, fsync, rename, fsync
    /// of the directory) when they changed since the last flush; true when it wrote.
    pub fn flush(&self, settings: &ReportSettings) -> Result<bool, ReportError> {
        if self.limits.is_none() || !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(false);
        }
        self.warned.store(false, Ordering::Relaxed);
        let text = self.lock().save();
        let result = write_durably(&settings.state_file(), &text);
        if result.is_err() {
            self.dirty.store(true, Ordering::Relaxed);
        }
        result.map(|()| true)
    }

    /// Writes the counts whether or not they changed since the last write: at shutdown, so
    /// the file on disk is what this run held even if it was removed or replaced meanwhile.
    pub fn flush_all(&self, settings: &ReportSettings) -> Result<bool, ReportError> {
        self.dirty.store(true, Ordering::Release);
        self.flush(settings)
    }

    /// The reports of every interval that ended at or before `now` (seconds since the epoch),
    /// oldest first. They stay held until [`Recorder::settle`].
    pub fn due(&self, now: u64) -> Vec<DueReport> {
        self.lock().due(now)
    }

    /// The end of the earliest interval held, if any: when the next report is due.
    pub fn next_end(&self) -> Option<u64> {
        self.lock().next_end()
    }

    /// Forgets the counts of one report (sent, or never sendable).
    pub fn settle(&self, report: &DueReport) {
        if self.lock().remove(report.begin, report.end, &report.domain) {
            self.dirty.store(true, Ordering::Relaxed);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Aggregate> {
        // A panic while holding the lock leaves whole counts behind (each change is one
        // map operation), so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The hook that signs a report before it is stored: given the complete message (header
/// and body, CRLF line ends), it returns the header fields to put on top of it (complete
/// `DKIM-Signature:` fields, CRLF-terminated), or nothing to send it unsigned.
pub type ReportSigner = Arc<dyn Fn(&[u8]) -> Vec<u8> + Send + Sync>;

fn write_durably(path: &Path, text: &[u8]) -> Result<(), ReportError> {
    crate::durable::replace(path, text).map_err(io_error(path))
}

#[cfg(test)]
mod tests;
