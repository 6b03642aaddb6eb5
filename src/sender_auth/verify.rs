//! Checks of arriving mail: SPF for MAIL FROM and HELO (RFC 7208), every DKIM signature
//! (RFC 6376; RSA-SHA1 and keys under 1024 bits fail, RFC 8301), DMARC (RFC 7489) and ARC
//! (RFC 8617, verification only), run through mail-auth on the caller's resolver, and what
//! they add up to: the `Authentication-Results` field ([`super::authres`]), the action
//! ([`super::policy`]) and the report observation ([`super::report::Observation`]).
//!
//! DNS failures: hickory can report a SERVFAIL as "no records" with the response code
//! (`net::dns::classify` reads the code for that reason), and mail-auth reads that as "no
//! record" (SPF `none`, no DMARC record, DKIM `permerror`): a broken DNS would become a
//! silent pass. So the code is read back here: a DKIM key lookup that SERVFAILed is
//! `temperror`, and an SPF `none` or a DMARC walk is confirmed by a lookup of our own
//! (hickory's cache answers the repeat).
//!
//! DMARC's organisational domain: mail-auth 0.13.3 finds it by the DNS tree walk of
//! DMARCbis (the `_dmarc` records up the name, `psd=` tags) instead of the public suffix
//! list of RFC 7489 §3.2; for a registered domain publishing its own record both agree.
//! mail-auth also no longer reads `pct=` (removed by DMARCbis); it is read here from the
//! record text and applied by the policy.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mail_auth::dkim::DkimError;
use mail_auth::dmarc::{Alignment, Policy as DmarcPolicy};
use mail_auth::hickory_resolver::proto::op::ResponseCode;
use mail_auth::hickory_resolver::proto::rr::RData;
use mail_auth::{
    AuthenticatedMessage, DkimOutput, DkimResult, DmarcResult, Error, MessageAuthenticator,
    SpfOutput, SpfResult,
};

use super::authres::{self, Clause};
use super::policy::{self, Action, DmarcStatus, Requested, Verdicts};
use super::report::{AuthResult, Disposition, Observation, PublishedPolicy};

/// The settings of the checks (`[verify]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifySettings {
    pub enabled: bool,
    /// Our authserv-id; `None`: the host name.
    pub authserv_id: Option<String>,
    pub policy: policy::Policy,
    /// The whole check, every lookup included.
    pub timeout: Duration,
    pub arc: bool,
}

/// The SMTP facts of one message.
#[derive(Clone, Copy, Debug)]
pub struct Peer<'a> {
    pub ip: IpAddr,
    /// The HELO/EHLO argument.
    pub helo: &'a str,
    /// The reverse path; empty for the null sender.
    pub mail_from: &'a str,
    /// Our host name (SPF's `%{r}`).
    pub host: &'a str,
}

/// One DKIM signature's verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DkimVerdict {
    pub result: AuthResult,
    pub domain: String,
    pub selector: String,
}

/// Everything the checks found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Results {
    pub timed_out: bool,
    /// MAIL FROM: (result, reverse path); `None` for the null sender.
    pub spf_mail_from: Option<(AuthResult, String)>,
    /// HELO: (result, HELO name).
    pub spf_helo: (AuthResult, String),
    pub dkim: Vec<DkimVerdict>,
    pub dmarc: DmarcStatus,
    /// The RFC 5322.From domain DMARC checked (empty: none, or several).
    pub header_from: String,
    pub requested: Requested,
    pub dkim_aligned: AuthResult,
    pub spf_aligned: AuthResult,
    /// The record that applied, when there was one.
    pub published: Option<PublishedPolicy>,
    /// `None`: ARC not checked (`[verify] arc = false`).
    pub arc: Option<AuthResult>,
}

impl Results {
    /// What a check that could not run (no resolver, out of time) reports: `temperror`
    /// everywhere, so it is never read as a pass.
    pub fn unavailable(peer: &Peer<'_>, arc: bool, timed_out: bool) -> Results {
        Results {
            timed_out,
            spf_mail_from: (!peer.mail_from.is_empty())
                .then(|| (AuthResult::TempError, peer.mail_from.to_string())),
            spf_helo: (AuthResult::TempError, peer.helo.to_string()),
            dkim: Vec::new(),
            dmarc: DmarcStatus::TempError,
            header_from: String::new(),
            requested: Requested::None,
            dkim_aligned: AuthResult::TempError,
            spf_aligned: AuthResult::TempError,
            published: None,
            arc: arc.then_some(AuthResult::TempError),
        }
    }

    /// The SPF result DMARC and the policy use: MAIL FROM, or HELO for the null sender
    /// (RFC 7208 §2.4).
    pub fn spf(&self) -> AuthResult {
        match &self.spf_mail_from {
            Some((result, _)) => *result,
            None => self.spf_helo.0,
        }
    }

    /// The inputs of the policy decision; `roll` (uniform in 0..100) decides the `pct`
    /// sample.
    pub fn verdicts(&self, roll: u8) -> Verdicts {
        let pct = self.published.as_ref().map_or(100, |p| p.pct);
        Verdicts {
            timed_out: self.timed_out,
            dmarc: self.dmarc,
            requested: self.requested,
            sampled: policy::in_sample(pct, roll),
            spf: self.spf(),
            dkim_temperror: self.dkim.iter().any(|d| d.result == AuthResult::TempError),
        }
    }

    /// The `Authentication-Results` field (CRLF-terminated).
    pub fn header(&self, authserv_id: &str) -> String {
        let mut clauses = Vec::new();
        if let Some((result, sender)) = &self.spf_mail_from {
            clauses.push(Clause {
                method: "spf",
                result: authres::keyword(*result),
                properties: vec![("smtp.mailfrom", sender.clone())],
            });
        }
        clauses.push(Clause {
            method: "spf",
            result: authres::keyword(self.spf_helo.0),
            properties: vec![("smtp.helo", self.spf_helo.1.clone())],
        });
        if self.dkim.is_empty() {
            clauses.push(Clause {
                method: "dkim",
                result: if self.timed_out { "temperror" } else { "none" },
                properties: Vec::new(),
            });
        }
        for dkim in &self.dkim {
            clauses.push(Clause {
                method: "dkim",
                result: authres::keyword(dkim.result),
                properties: vec![
                    ("header.d", dkim.domain.clone()),
                    ("header.s", dkim.selector.clone()),
                ],
            });
        }
        let dmarc = match self.dmarc {
            DmarcStatus::None => "none",
            DmarcStatus::Pass => "pass",
            DmarcStatus::Fail => "fail",
            DmarcStatus::TempError => "temperror",
            DmarcStatus::PermError => "permerror",
        };
        clauses.push(Clause {
            method: "dmarc",
            result: dmarc,
            properties: if self.header_from.is_empty() {
                Vec::new()
            } else {
                vec![("header.from", self.header_from.clone())]
            },
        });
        if let Some(arc) = self.arc {
            clauses.push(Clause {
                method: "arc",
                result: authres::keyword(arc),
                properties: Vec::new(),
            });
        }
        authres::header(authserv_id, &clauses)
    }

    /// The report observation, for a message whose From domain had a DMARC record.
    pub fn observation(&self, peer: &Peer<'_>, action: Action) -> Option<Observation> {
        let policy = self.published.clone()?;
        let (envelope_from, scope_helo) = match &self.spf_mail_from {
            Some((_, sender)) => (domain_of(sender).to_string(), false),
            None => (self.spf_helo.1.clone(), true),
        };
        Some(Observation {
            unix_time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            source_ip: peer.ip,
            header_from: self.header_from.clone(),
            envelope_from: envelope_from.to_ascii_lowercase(),
            policy,
            disposition: action.disposition(),
            dkim_aligned: self.dkim_aligned,
            spf_aligned: self.spf_aligned,
            dkim: self
                .dkim
                .iter()
                .map(|d| (d.domain.clone(), d.selector.clone(), d.result))
                .collect(),
            spf: (envelope_from.to_ascii_lowercase(), scope_helo, self.spf()),
        })
    }
}

/// One `rua=` entry in the published form the reporter reads (`feedback::parse_rua`).
/// Fix: mail-auth keeps only `mailto:` URIs and hands back the bare address, `!size` parsed
/// into bytes (0: none); passed on as it was, every report of checked mail was dropped as
/// having "no usable rua= destination". Found by the end-to-end test in
/// tests/dmarc_reports.rs.
fn rua_uri(uri: &mail_auth::dmarc::URI) -> String {
    match uri.max_size() {
        0 => format!("mailto:{}", uri.uri()),
        size => format!("mailto:{}!{size}", uri.uri()),
    }
}

fn domain_of(address: &str) -> &str {
    address.rsplit_once('@').map_or(address, |(_, d)| d)
}

/// A HELO name SPF can check: a domain, not an address literal or a bare word.
fn checkable_helo(helo: &str) -> bool {
    helo.contains('.') && !helo.starts_with('[') && helo.parse::<IpAddr>().is_err()
}

fn spf_result(result: SpfResult) -> AuthResult {
    match result {
        SpfResult::Pass => AuthResult::Pass,
        SpfResult::Fail => AuthResult::Fail,
        SpfResult::SoftFail => AuthResult::SoftFail,
        SpfResult::Neutral => AuthResult::Neutral,
        SpfResult::TempError => AuthResult::TempError,
        SpfResult::PermError => AuthResult::PermError,
        SpfResult::None => AuthResult::None,
    }
}

fn dmarc_result(result: &DmarcResult) -> AuthResult {
    match result {
        DmarcResult::Pass => AuthResult::Pass,
        DmarcResult::Fail(_) => AuthResult::Fail,
        DmarcResult::TempError(_) => AuthResult::TempError,
        DmarcResult::PermError(_) => AuthResult::PermError,
        DmarcResult::None => AuthResult::None,
    }
}

/// A "not found" that is really a server failure (SERVFAIL, REFUSED, …).
fn server_failure(error: &Error) -> bool {
    matches!(error, Error::Dns(mail_auth::DnsError::RecordNotFound(code))
        if *code != ResponseCode::NXDomain && *code != ResponseCode::NoError)
        || matches!(error, Error::Dns(mail_auth::DnsError::Resolver(_)))
}

/// One DKIM output as we report it: a body hash mismatch is `fail` (RFC 6376 §6.1.3: the
/// signature does not verify), RSA-SHA1 never passes (RFC 8301 §3.1), a key lookup that
/// the server failed is `temperror`. Keys under 1024 bits already fail in ring.
fn dkim_result(output: &DkimOutput<'_>) -> AuthResult {
    let sha1 = output
        .signature()
        .is_some_and(|s| s.a == mail_auth::common::crypto::Algorithm::RsaSha1);
    match output.result() {
        DkimResult::Pass if sha1 => AuthResult::Fail,
        DkimResult::Pass => AuthResult::Pass,
        DkimResult::Neutral(Error::Dkim(DkimError::FailedBodyHashMatch)) => AuthResult::Fail,
        DkimResult::Neutral(_) => AuthResult::Neutral,
        DkimResult::Fail(_) => AuthResult::Fail,
        DkimResult::PermError(error) if server_failure(error) => AuthResult::TempError,
        DkimResult::PermError(_) => AuthResult::PermError,
        DkimResult::TempError(_) => AuthResult::TempError,
        DkimResult::None => AuthResult::None,
    }
}

/// The DKIM signatures verified per message, in header order; later ones are ignored.
pub const MAX_SIGNATURES: usize = 10;

/// Runs every check on `message` (header section and body as received), within
/// `settings.timeout`.
pub async fn check(
    auth: &MessageAuthenticator,
    settings: &VerifySettings,
    peer: &Peer<'_>,
    message: &[u8],
) -> Results {
    match tokio::time::timeout(settings.timeout, run(auth, settings.arc, peer, message)).await {
        Ok(results) => results,
        Err(_) => Results::unavailable(peer, settings.arc, true),
    }
}

async fn run(auth: &MessageAuthenticator, arc: bool, peer: &Peer<'_>, message: &[u8]) -> Results {
    let helo_checked = checkable_helo(peer.helo);
    // One SPF evaluation path for ingest and the RFC 7208 suite (`sender_auth::spf`).
    let spf = async {
        let verdict =
            super::spf::evaluate(auth, peer.ip, peer.helo, peer.host, peer.mail_from).await;
        let helo = if helo_checked {
            confirm_spf(auth, &verdict.helo, peer.helo).await
        } else {
            AuthResult::None
        };
        let mail_from = if peer.mail_from.is_empty() {
            None
        } else {
            Some(confirm_spf(auth, &verdict.mail_from, domain_of(peer.mail_from)).await)
        };
        (verdict, helo, mail_from)
    };
    let mut parsed = AuthenticatedMessage::parse(message);
    if let Some(parsed) = parsed.as_mut() {
        // Each signature costs a key lookup and a verification: a peer must not be able
        // to make one message cost hundreds (RFC 6376 §6.1 lets verifiers limit them).
        parsed.dkim_headers.truncate(MAX_SIGNATURES);
    }
    let dkim = async {
        match &parsed {
            Some(parsed) => auth.verify_dkim(parsed).await,
            None => Vec::new(),
        }
    };
    let arc_check = async {
        match (&parsed, arc) {
            (Some(parsed), true) => {
                let output = auth.verify_arc(parsed).await;
                Some(match output.result() {
                    DkimResult::Pass => AuthResult::Pass,
                    DkimResult::None => AuthResult::None,
                    DkimResult::TempError(_) => AuthResult::TempError,
                    DkimResult::PermError(error) if server_failure(error) => AuthResult::TempError,
                    DkimResult::Neutral(_) | DkimResult::Fail(_) | DkimResult::PermError(_) => {
                        AuthResult::Fail
                    }
                })
            }
            (None, true) => Some(AuthResult::None),
            (_, false) => None,
        }
    };
    let ((spf_verdict, helo_result, mail_from_result), dkim_outputs, arc_result) =
        futures_util::join!(spf, dkim, arc_check);

    let dkim: Vec<DkimVerdict> = dkim_outputs
        .iter()
        .map(|output| DkimVerdict {
            result: dkim_result(output),
            domain: output
                .signature()
                .map(|s| s.d.to_ascii_lowercase())
                .unwrap_or_default(),
            selector: output.signature().map(|s| s.s.clone()).unwrap_or_default(),
        })
        .collect();

    let mut results = Results {
        timed_out: false,
        spf_mail_from: mail_from_result.map(|result| (result, peer.mail_from.to_string())),
        spf_helo: (helo_result, peer.helo.to_string()),
        dkim,
        dmarc: DmarcStatus::None,
        header_from: String::new(),
        requested: Requested::None,
        dkim_aligned: AuthResult::None,
        spf_aligned: AuthResult::None,
        published: None,
        arc: arc_result,
    };

    let Some(parsed) = &parsed else {
        return results;
    };
    // DMARC reads the SPF identity it aligns (MAIL FROM, or HELO for the null sender) and
    // only the signatures that verified by our rules: an RSA-SHA1 "pass" is not one.
    let (spf_output, spf_domain) = if !peer.mail_from.is_empty() {
        (spf_verdict.mail_from, domain_of(peer.mail_from))
    } else if helo_checked {
        (spf_verdict.helo, peer.helo)
    } else {
        (
            SpfOutput::new(peer.helo.to_string()).with_result(SpfResult::None),
            peer.helo,
        )
    };
    let spf_output = match results.spf() {
        AuthResult::TempError if spf_output.result() != SpfResult::TempError => {
            spf_output.with_result(SpfResult::TempError)
        }
        _ => spf_output,
    };
    let dkim_for_dmarc: Vec<DkimOutput<'_>> = dkim_outputs
        .iter()
        .zip(results.dkim.iter())
        .filter_map(|(output, verdict)| match verdict.result {
            AuthResult::Pass => Some(output.clone()),
            AuthResult::TempError => output.signature().map(|signature| {
                DkimOutput::temp_err(Error::Dns(mail_auth::DnsError::Resolver(
                    "key lookup failed".to_string(),
                )))
                .with_signature(signature)
            }),
            _ => None,
        })
        .collect();
    let dmarc = auth
        .verify_dmarc(mail_auth::dmarc::verify::DmarcParameters::new(
            parsed,
            &dkim_for_dmarc,
            spf_domain,
            &spf_output,
        ))
        .await;
    results.header_from = dmarc.domain().to_ascii_lowercase();
    results.dkim_aligned = dmarc_result(dmarc.dkim_result());
    results.spf_aligned = dmarc_result(dmarc.spf_result());
    results.dmarc = match dmarc.result() {
        DmarcResult::Pass => DmarcStatus::Pass,
        DmarcResult::Fail(_) => DmarcStatus::Fail,
        DmarcResult::TempError(_) => DmarcStatus::TempError,
        DmarcResult::PermError(_) => DmarcStatus::PermError,
        DmarcResult::None => DmarcStatus::None,
    };
    results.requested = match dmarc.policy() {
        DmarcPolicy::Reject => Requested::Reject,
        DmarcPolicy::Quarantine => Requested::Quarantine,
        DmarcPolicy::None | DmarcPolicy::Unspecified => Requested::None,
    };
    if results.header_from.is_empty() {
        return results;
    }
    match published(auth, &results.header_from).await {
        Walk::Found(domain, text) => {
            let record = dmarc.dmarc_record();
            results.published = Some(PublishedPolicy {
                domain,
                adkim_strict: record.is_some_and(|r| r.adkim == Alignment::Strict),
                aspf_strict: record.is_some_and(|r| r.aspf == Alignment::Strict),
                p: disposition(record.map(|r| r.p)),
                sp: disposition(record.map(|r| {
                    if r.sp == DmarcPolicy::Unspecified {
                        r.p
                    } else {
                        r.sp
                    }
                })),
                pct: tag(&text, "pct")
                    .and_then(|v| v.parse::<u8>().ok())
                    .map_or(100, |v| v.min(100)),
                rua: record
                    .map(|r| r.rua.iter().map(rua_uri).collect())
                    .unwrap_or_default(),
            });
            if record.is_none() && results.dmarc == DmarcStatus::None {
                // mail-auth did not accept the record (no p= and no rua=): not DMARC.
                results.published = None;
            }
        }
        Walk::NotFound => {}
        Walk::ServerFailure if results.dmarc != DmarcStatus::Pass => {
            // A `_dmarc` lookup failed: the record mail-auth did not see may exist.
            results.dmarc = DmarcStatus::TempError;
        }
        Walk::ServerFailure => {}
    }
    results
}

fn disposition(policy: Option<DmarcPolicy>) -> Disposition {
    match policy {
        Some(DmarcPolicy::Reject) => Disposition::Reject,
        Some(DmarcPolicy::Quarantine) => Disposition::Quarantine,
        _ => Disposition::None,
    }
}

/// An SPF `none` may be a SERVFAIL mail-auth read as "no record": ask again ourselves.
async fn confirm_spf(auth: &MessageAuthenticator, output: &SpfOutput, domain: &str) -> AuthResult {
    let result = spf_result(output.result());
    if result != AuthResult::None || domain.is_empty() {
        return result;
    }
    match txt(auth, domain).await {
        Lookup::ServerFailure => AuthResult::TempError,
        Lookup::Records(_) | Lookup::NotFound => result,
    }
}

enum Lookup {
    Records(Vec<String>),
    NotFound,
    ServerFailure,
}

async fn txt(auth: &MessageAuthenticator, name: &str) -> Lookup {
    let mut fqdn = name.to_ascii_lowercase();
    if !fqdn.ends_with('.') {
        fqdn.push('.');
    }
    match auth.resolver().txt_lookup(fqdn.as_str()).await {
        Ok(lookup) => Lookup::Records(
            lookup
                .answers()
                .iter()
                .filter_map(|record| match &record.data {
                    RData::TXT(txt) => Some(
                        txt.txt_data
                            .iter()
                            .map(|part| String::from_utf8_lossy(part))
                            .collect::<String>(),
                    ),
                    _ => None,
                })
                .collect(),
        ),
        Err(error) => match crate::net::dns::classify(&error) {
            crate::net::dns::LookupFailure::NxDomain
            | crate::net::dns::LookupFailure::NoRecords => Lookup::NotFound,
            crate::net::dns::LookupFailure::Temporary(_) => Lookup::ServerFailure,
        },
    }
}

enum Walk {
    /// (the domain whose `_dmarc` record applies, its text)
    Found(String, String),
    NotFound,
    ServerFailure,
}

/// The value of `name=` in a tag list (`v=DMARC1; p=reject; pct=50`).
fn tag<'a>(record: &'a str, name: &str) -> Option<&'a str> {
    record.split(';').find_map(|part| {
        let (key, value) = part.split_once('=')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

fn is_dmarc(text: &str) -> bool {
    tag(text, "v").is_some_and(|v| v == "DMARC1")
}

/// The DMARC record that applies to `from_domain`, found the way mail-auth finds it (the
/// DMARCbis tree walk: the author's own record, else the organisational domain's by `psd=`
/// tags, else the shortest name with one), with its text for `pct=`.
async fn published(auth: &MessageAuthenticator, from_domain: &str) -> Walk {
    let labels: Vec<&str> = from_domain.split('.').filter(|l| !l.is_empty()).collect();
    let total = labels.len();
    if total < 2 {
        return Walk::NotFound;
    }
    let mut found: Vec<(String, String, Option<bool>)> = Vec::new();
    let mut count = total;
    loop {
        let name = labels[total - count..].join(".");
        match txt(auth, &format!("_dmarc.{name}")).await {
            Lookup::Records(records) => {
                if let Some(text) = records.into_iter().find(|t| is_dmarc(t)) {
                    let psd = match tag(&text, "psd") {
                        Some("y") => Some(true),
                        Some("n") => Some(false),
                        _ => None,
                    };
                    found.push((name, text, psd));
                    if psd.is_some() {
                        break;
                    }
                }
            }
            Lookup::NotFound => {}
            Lookup::ServerFailure => return Walk::ServerFailure,
        }
        if count == 1 {
            break;
        }
        count = if count >= 8 { 7 } else { count - 1 };
    }
    let author = found.iter().position(|(name, _, _)| name == from_domain);
    let org = found.iter().position(|(_, _, psd)| psd.is_some());
    let chosen = author.or(org).or(found.len().checked_sub(1));
    match chosen.and_then(|i| found.get(i)) {
        Some((name, text, Some(true))) if name != from_domain => {
            // A public suffix domain's record: the organisational domain is one label
            // below it, on the way to the author's domain.
            let depth = name.split('.').count() + 1;
            let org = labels[total.saturating_sub(depth)..].join(".");
            Walk::Found(org, text.clone())
        }
        Some((name, text, _)) => Walk::Found(name.clone(), text.clone()),
        None => Walk::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer<'a>(mail_from: &'a str) -> Peer<'a> {
        Peer {
            ip: "192.0.2.1".parse().expect("ip"),
            helo: "mail.example.com",
            mail_from,
            host: "mx.example.org",
        }
    }

    #[test]
    fn tags_are_read_case_insensitively() {
        let record = "v=DMARC1; p=reject; PCT = 50 ;rua=mailto:a@b";
        assert!(is_dmarc(record));
        assert_eq!(tag(record, "pct"), Some("50"));
        assert_eq!(tag(record, "sp"), None);
        assert!(!is_dmarc("v=spf1 -all"));
    }

    #[test]
    fn unavailable_is_never_a_pass() {
        let results = Results::unavailable(&peer("a@example.com"), true, true);
        let header = results.header("mx.example.org");
        assert!(!header.contains("=pass"), "{header}");
        assert!(header.contains("spf=temperror smtp.mailfrom=a@example.com"));
        assert!(header.contains("dmarc=temperror"));
        assert!(header.contains("arc=temperror"));
        let verdicts = results.verdicts(0);
        assert!(verdicts.timed_out);
        assert_eq!(verdicts.spf, AuthResult::TempError);
    }

    #[test]
    fn null_sender_is_checked_by_helo() {
        let mut results = Results::unavailable(&peer(""), false, false);
        results.spf_helo.0 = AuthResult::Fail;
        assert_eq!(results.spf(), AuthResult::Fail);
        let header = results.header("mx");
        assert!(!header.contains("smtp.mailfrom"), "{header}");
        assert!(
            header.contains("spf=fail smtp.helo=mail.example.com"),
            "{header}"
        );
    }

    #[test]
    fn observation_needs_a_record_and_fills_every_field() {
        let p = peer("bounce@Lists.Example.com");
        let mut results = Results::unavailable(&p, false, false);
        assert_eq!(results.observation(&p, Action::Accept), None);
        results.header_from = "example.com".into();
        results.spf_mail_from = Some((AuthResult::Pass, p.mail_from.into()));
        results.dkim = vec![DkimVerdict {
            result: AuthResult::Pass,
            domain: "example.com".into(),
            selector: "s1".into(),
        }];
        results.dkim_aligned = AuthResult::Pass;
        results.spf_aligned = AuthResult::Pass;
        results.published = Some(PublishedPolicy {
            domain: "example.com".into(),
            adkim_strict: false,
            aspf_strict: false,
            p: Disposition::Reject,
            sp: Disposition::Reject,
            pct: 100,
            rua: vec!["mailto:d@example.com".into()],
        });
        let observation = results
            .observation(&p, Action::Refuse(policy::Refusal::Dmarc))
            .expect("observation");
        assert_eq!(observation.source_ip, p.ip);
        assert_eq!(observation.envelope_from, "lists.example.com");
        assert_eq!(observation.disposition, Disposition::Reject);
        assert_eq!(
            observation.spf,
            ("lists.example.com".to_string(), false, AuthResult::Pass)
        );
        assert_eq!(
            observation.dkim,
            vec![(
                "example.com".to_string(),
                "s1".to_string(),
                AuthResult::Pass
            )]
        );
        assert!(observation.unix_time > 1_700_000_000);
    }

    #[test]
    fn helo_names_spf_can_check() {
        assert!(checkable_helo("mail.example.com"));
        assert!(!checkable_helo("[192.0.2.1]"));
        assert!(!checkable_helo("localhost"));
        assert!(!checkable_helo("192.0.2.1"));
    }
}
