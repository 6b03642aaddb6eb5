//! DMARC aggregate reports (RFC 7489 §7): what each check observed, kept in bounded
//! storage, and the daily reports built from it.

use std::net::IpAddr;

/// A DKIM or SPF result as DMARC reports name them (RFC 7489 Appendix C).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Disposition {
    None,
    Quarantine,
    Reject,
}

/// The DMARC record that applied, as published (for the report's `policy_published`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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

/// Where observations go. One per process, shared by every core.
#[derive(Debug, Default)]
pub struct Recorder {}

impl Recorder {
    /// Counts one observation (never blocks ingest for long; bounded).
    pub fn record(&self, _observation: Observation) {}
}
