//! `[dmarc]`: the aggregate reports we send to domains that ask for them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::units::{ByteSize, Interval};
use super::{invalid, SectionError};
use crate::sender_auth::report::ReportSettings;

/// `[dmarc]`: aggregate reports (RFC 7489 §7.2), off by default. Counts come from the checks
/// of `[verify]`, so reports need `verify.enabled` too. Failure reports (`ruf=`) are never
/// sent.
///
/// - `reports` (default false): record DMARC results of arriving mail and send each domain
///   whose record has `rua=` one report per interval. Off by default: reports tell other
///   parties which addresses send us mail, an operator's choice.
/// - `org_name` (default: the host name): `report_metadata/org_name`.
/// - `report_from` (default `postmaster@<hostname>`): From, reverse path and `email` of the
///   reports. A real mailbox, not `<>`: a report that cannot be delivered bounces to an
///   address someone reads, and the reverse path's domain lets SPF align for our own DMARC.
/// - `report_interval` (default `1d`): reports cover `[begin, end)` intervals aligned to
///   multiples of it since the epoch, so a day runs UTC midnight to midnight (RFC 7489
///   §7.2 expects daily reports; shorter ones are for tests).
/// - `max_records` (default 100000): distinct rows (source, results, identifiers) held over
///   every interval and domain; `max_domains` (default 10000): policy domains per interval.
///   Beyond either, observations are counted as dropped (logged), never stored.
/// - `dir` (default `<spool.dir>/dmarc`): where the counts are kept between restarts.
/// - `flush_interval` (default `1m`): how often the counts are written there; a crash loses
///   at most that much (a clean stop writes them too).
/// - `max_report_size` (default `10MiB`): a larger report message is not sent (a `rua=`
///   URI's `!size` may lower it for that URI).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DmarcSection {
    pub reports: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub org_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report_from: Option<String>,
    pub report_interval: Interval,
    pub max_records: usize,
    pub max_domains: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    pub flush_interval: Interval,
    pub max_report_size: ByteSize,
}

impl Default for DmarcSection {
    fn default() -> Self {
        DmarcSection {
            reports: false,
            org_name: None,
            report_from: None,
            report_interval: Interval::secs(86_400),
            max_records: 100_000,
            max_domains: 10_000,
            dir: None,
            flush_interval: Interval::secs(60),
            max_report_size: ByteSize(10 << 20),
        }
    }
}

/// Longest report period: a report older than a week is of little use to anyone.
const INTERVAL_MAX: Duration = Duration::from_secs(7 * 86_400);

impl DmarcSection {
    pub fn check(&self) -> Result<(), SectionError> {
        let interval = self.report_interval.0;
        if interval < Duration::from_secs(1) || interval > INTERVAL_MAX {
            return Err(invalid(
                "dmarc.report_interval",
                "must be between 1s and 7d (RFC 7489 expects 1d)",
            ));
        }
        if interval.subsec_nanos() != 0 {
            return Err(invalid("dmarc.report_interval", "must be whole seconds"));
        }
        if self.flush_interval.0 < Duration::from_secs(1) {
            return Err(invalid("dmarc.flush_interval", "must be at least 1s"));
        }
        if self.max_records == 0 {
            return Err(invalid("dmarc.max_records", "must be at least 1"));
        }
        if self.max_domains == 0 {
            return Err(invalid("dmarc.max_domains", "must be at least 1"));
        }
        if self.max_report_size.0 < 1024 {
            return Err(invalid("dmarc.max_report_size", "must be at least 1KiB"));
        }
        if let Some(from) = &self.report_from {
            if !plain_address(from) {
                return Err(invalid(
                    "dmarc.report_from",
                    format!("{from:?} is not a plain address (local@domain, ASCII, no spaces)"),
                ));
            }
        }
        if let Some(name) = &self.org_name {
            if name.is_empty() || name.chars().any(char::is_control) {
                return Err(invalid(
                    "dmarc.org_name",
                    "must be non-empty text without control characters",
                ));
            }
        }
        Ok(())
    }

    /// The reporter's settings, with the defaults that depend on the host name and the spool.
    pub fn report_settings(&self, hostname: &str, spool_dir: &Path) -> ReportSettings {
        ReportSettings {
            enabled: self.reports,
            org_name: self
                .org_name
                .clone()
                .unwrap_or_else(|| hostname.to_string()),
            report_from: self
                .report_from
                .clone()
                .unwrap_or_else(|| format!("postmaster@{hostname}")),
            receiver: hostname.to_string(),
            interval: self.report_interval.0,
            flush_interval: self.flush_interval.0,
            max_records: self.max_records,
            max_domains: self.max_domains,
            max_report_size: self.max_report_size.0,
            dir: self.dir.clone().unwrap_or_else(|| spool_dir.join("dmarc")),
        }
    }
}

/// `local@domain` of printable ASCII without spaces or header syntax.
fn plain_address(address: &str) -> bool {
    let plain = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{|}~.-".contains(c);
    match address.rsplit_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && local.chars().all(plain)
                && crate::sender_auth::report::feedback::is_domain_name(domain)
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn defaults_are_off_daily_and_bounded() {
        let config = Config::parse("", "test").unwrap();
        let settings = config
            .dmarc
            .report_settings("mx.example.org", Path::new("/var/spool/relay"));
        assert!(!settings.enabled);
        assert_eq!(settings.interval, Duration::from_secs(86_400));
        assert_eq!(settings.report_from, "postmaster@mx.example.org");
        assert_eq!(settings.dir, Path::new("/var/spool/relay/dmarc"));
        assert_eq!(settings.max_records, 100_000);
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, key) in [
            (
                "[dmarc]\nreport_interval = \"0\"\n",
                "dmarc.report_interval",
            ),
            (
                "[dmarc]\nreport_interval = \"30d\"\n",
                "dmarc.report_interval",
            ),
            ("[dmarc]\nmax_records = 0\n", "dmarc.max_records"),
            ("[dmarc]\nreport_from = \"a b@c\"\n", "dmarc.report_from"),
            (
                "[dmarc]\nreport_from = \"x@y\\r\\nBcc: z@w\"\n",
                "dmarc.report_from",
            ),
            ("[dmarc]\norg_name = \"a\\nb\"\n", "dmarc.org_name"),
        ] {
            let error = Config::parse(text, "test").unwrap_err().to_string();
            assert!(error.contains(key), "{text:?}: {error}");
        }
        let ok = "[dmarc]\nreports = true\nreport_interval = \"2s\"\nreport_from = \"dmarc@relay.example\"\n";
        let config = Config::parse(ok, "test").unwrap();
        assert!(config.dmarc.reports);
    }
}
