//! `[verify]`: the SPF, DKIM, DMARC and ARC checks of arriving mail, and what their
//! results do.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::units::Interval;
use super::{invalid, SectionError};
use crate::sender_auth::policy::{OnDnsFailure, OnFail, Policy};
use crate::sender_auth::verify::VerifySettings;

/// `[verify]`: checks of mail from unauthenticated clients outside the relay networks
/// (authenticated and relay-network clients are ours: their mail is signed, not checked).
/// The results go into one `Authentication-Results` field above our Received field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VerifySection {
    /// Off by default: every message then costs DNS queries (SPF, DKIM keys, DMARC), and the
    /// operator should first choose the resolver (`server.dns_servers`: a local caching
    /// resolver; the system's otherwise).
    pub enabled: bool,
    /// The authserv-id of our `Authentication-Results` fields (RFC 8601 §2.5); arriving
    /// fields claiming it are removed. Default: the host name (`server.hostname`).
    pub authserv_id: Option<String>,
    /// A DMARC failure under `p=reject`: `"reject"` (550 5.7.1 at the end of data, what
    /// RFC 7489 §6.6.1 asks and OpenDMARC with `RejectFailures true` does), `"junk"` or
    /// `"mark"`.
    pub dmarc_reject: OnFail,
    /// A DMARC failure under `p=quarantine`: `"junk"` (default: the local recipients get it
    /// in their Junk folder, the "spam folder" of RFC 7489 §6.3, created with the `\Junk`
    /// role when missing; POP3 shows only INBOX), `"mark"` (delivered to INBOX with
    /// `dmarc=fail` for the reader's filters) or `"reject"`.
    pub dmarc_quarantine: OnFail,
    /// SPF `fail` (`-all`) for MAIL FROM (HELO for the null sender) when DMARC did not
    /// decide (no record, or `p=none`): `"reject"` (550 5.7.23, what policyd-spf does by
    /// default; the domain said the host may not send for it), `"junk"` or `"mark"`.
    pub spf_fail: OnFail,
    /// A DNS failure in a check (SERVFAIL, timeout): `"tempfail"` (451 4.7.0 so the sender
    /// retries; RFC 7208 §2.6.6, RFC 7489 §6.6.3, OpenDKIM's `On-DNSError tempfail`) or
    /// `"mark"` (delivered, results `temperror`). Never a silent pass.
    pub dns_failure: OnDnsFailure,
    /// The whole check, every lookup included; past it the checks count as a DNS failure.
    /// 15s: above hickory's 5s per query with a retry, far below the 10 minutes a client
    /// waits for the reply to the end of data (RFC 5321 §4.5.3.2.6).
    pub timeout: Interval,
    /// ARC verification (RFC 8617; results only, no sealing). Costs nothing for mail
    /// without ARC sets.
    pub arc: bool,
}

impl Default for VerifySection {
    fn default() -> Self {
        VerifySection {
            enabled: false,
            authserv_id: None,
            dmarc_reject: OnFail::Reject,
            dmarc_quarantine: OnFail::Junk,
            spf_fail: OnFail::Reject,
            dns_failure: OnDnsFailure::Tempfail,
            timeout: Interval(Duration::from_secs(15)),
            arc: true,
        }
    }
}

impl VerifySection {
    pub fn check(&self) -> Result<(), SectionError> {
        if let Some(id) = &self.authserv_id {
            // Written bare into a header field: a domain-like token only.
            let ok = !id.is_empty()
                && id.len() <= 253
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
            if !ok {
                return Err(invalid(
                    "verify.authserv_id",
                    "must be a host name (letters, digits, '.', '-', '_')",
                ));
            }
        }
        if self.timeout.0.is_zero() || self.timeout.0 > Duration::from_secs(300) {
            return Err(invalid(
                "verify.timeout",
                "must be more than 0 and at most 5m (the client waits for the reply)",
            ));
        }
        Ok(())
    }

    /// The settings the checks take.
    pub fn settings(&self) -> VerifySettings {
        VerifySettings {
            enabled: self.enabled,
            authserv_id: self.authserv_id.clone(),
            policy: Policy {
                dmarc_reject: self.dmarc_reject,
                dmarc_quarantine: self.dmarc_quarantine,
                spf_fail: self.spf_fail,
                dns_failure: self.dns_failure,
            },
            timeout: self.timeout.0,
            arc: self.arc,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<VerifySection, toml::de::Error> {
        toml::from_str(text)
    }

    #[test]
    fn defaults_and_keys() {
        let section = parse("").expect("empty");
        assert_eq!(section, VerifySection::default());
        assert!(!section.enabled);
        let section = parse(
            "enabled = true\nauthserv_id = \"mx.example.org\"\ndmarc_reject = \"mark\"\ndmarc_quarantine = \"reject\"\nspf_fail = \"mark\"\ndns_failure = \"mark\"\ntimeout = \"2s\"\narc = false\n",
        )
        .expect("all keys");
        section.check().expect("valid");
        let settings = section.settings();
        assert_eq!(settings.policy.dmarc_reject, OnFail::Mark);
        assert_eq!(settings.policy.dmarc_quarantine, OnFail::Reject);
        assert_eq!(settings.policy.dns_failure, OnDnsFailure::Mark);
        assert_eq!(settings.timeout, Duration::from_secs(2));
        assert_eq!(VerifySection::default().dmarc_quarantine, OnFail::Junk);
        let junk = parse("spf_fail = \"junk\"\ndmarc_reject = \"junk\"").expect("junk");
        assert_eq!(junk.settings().policy.spf_fail, OnFail::Junk);
        assert_eq!(junk.settings().policy.dmarc_reject, OnFail::Junk);
        assert!(parse("dmarc_reject = \"quarantine\"").is_err());
        assert!(parse("nonsense = 1").is_err());
    }

    #[test]
    fn authserv_id_must_be_a_token() {
        for bad in ["", "a b", "x;dkim=pass", "a\r\nb"] {
            let section = VerifySection {
                authserv_id: Some(bad.into()),
                ..VerifySection::default()
            };
            assert!(section.check().is_err(), "{bad:?}");
        }
        let zero = VerifySection {
            timeout: Interval(Duration::ZERO),
            ..VerifySection::default()
        };
        assert!(zero.check().is_err());
    }
}
