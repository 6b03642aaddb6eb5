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
//! DMARC is RFC 7489's, evaluated here ([`super::dmarc`]) rather than by mail-auth 0.13.3,
//! which implements DMARCbis (organisational domain by a `_dmarc` tree walk and `psd=`
//! tags, no `pct=`): the organisational domain comes from the Public Suffix List (§3.2),
//! the record from `_dmarc.<From domain>` else `_dmarc.<organisational domain>` (§6.6.3),
//! and `sp=` applies to a subdomain covered by its organisational domain's record (§6.3).

use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mail_auth::dkim::DkimError;
use mail_auth::hickory_resolver::proto::op::ResponseCode;
use mail_auth::hickory_resolver::proto::rr::RData;
use mail_auth::{DkimOutput, DkimResult, Error, MessageAuthenticator, SpfOutput, SpfResult};

use super::authres::{self, Clause};
use super::cache::Caches;
use super::dmarc;
use super::message;
use super::policy::{self, Action, DmarcStatus, Requested, Verdicts};
use super::report::{AuthResult, Observation, PublishedPolicy};

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
    caches: &Caches,
    settings: &VerifySettings,
    peer: &Peer<'_>,
    message: &[u8],
) -> Results {
    let checks = run(auth, caches, settings.arc, peer, message);
    match tokio::time::timeout(settings.timeout, checks).await {
        Ok(results) => results,
        Err(_) => Results::unavailable(peer, settings.arc, true),
    }
}

async fn run(
    auth: &MessageAuthenticator,
    caches: &Caches,
    arc: bool,
    peer: &Peer<'_>,
    message: &[u8],
) -> Results {
    let helo_checked = checkable_helo(peer.helo);
    // One SPF evaluation path for ingest and the RFC 7208 suite (`sender_auth::spf`).
    let spf = async {
        let verdict = super::spf::evaluate_cached(
            auth,
            caches,
            peer.ip,
            peer.helo,
            peer.host,
            peer.mail_from,
        )
        .await;
        let helo = if helo_checked {
            confirm_spf(auth, caches, &verdict.helo, peer.helo).await
        } else {
            AuthResult::None
        };
        let mail_from = if peer.mail_from.is_empty() {
            None
        } else {
            Some(confirm_spf(auth, caches, &verdict.mail_from, domain_of(peer.mail_from)).await)
        };
        (helo, mail_from)
    };
    let mut parsed = message::parse(message);
    if let Some(parsed) = parsed.as_mut() {
        // Each signature costs a key lookup and a verification: a peer must not be able
        // to make one message cost hundreds (RFC 6376 §6.1 lets verifiers limit them).
        parsed.dkim_headers.truncate(MAX_SIGNATURES);
    }
    let dkim = async {
        match &parsed {
            Some(parsed) => auth.verify_dkim(caches.parameters(parsed)).await,
            None => Vec::new(),
        }
    };
    let arc_check = async {
        match (&parsed, arc) {
            (Some(parsed), true) => {
                let output = auth.verify_arc(caches.parameters(parsed)).await;
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
    let ((helo_result, mail_from_result), dkim_outputs, arc_result) =
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
    let Some(from_domain) = author_domain(&parsed.from) else {
        return results;
    };
    results.header_from = from_domain;
    // DMARC reads the SPF identity it aligns (MAIL FROM, or HELO for the null sender) and
    // only the signatures that verified by our rules: an RSA-SHA1 "pass" is not one.
    let spf_domain = if !peer.mail_from.is_empty() {
        domain_of(peer.mail_from)
    } else {
        peer.helo
    };
    let spf = results.spf();
    let dkim: Vec<(AuthResult, &str)> = results
        .dkim
        .iter()
        .map(|d| (d.result, d.domain.as_str()))
        .collect();
    let (record_domain, text) = match discover(auth, caches, &results.header_from).await {
        Discovery::Found(domain, text) => (domain, text),
        Discovery::NoPolicy => return results,
        Discovery::ServerFailure => {
            // A `_dmarc` lookup failed: the record we did not see may exist.
            results.dmarc = DmarcStatus::TempError;
            results.dkim_aligned = AuthResult::TempError;
            results.spf_aligned = AuthResult::TempError;
            return results;
        }
    };
    let record = match dmarc::parse(&text) {
        Ok(Some(record)) => record,
        Ok(None) => return results,
        Err(dmarc::RecordError::Malformed) => {
            results.dmarc = DmarcStatus::PermError;
            return results;
        }
    };
    let evaluation = dmarc::evaluate(&record, &results.header_from, (spf, spf_domain), &dkim);
    results.dmarc = evaluation.status;
    results.dkim_aligned = evaluation.dkim_aligned;
    results.spf_aligned = evaluation.spf_aligned;
    results.requested = dmarc::applicable(&record, &results.header_from, &record_domain);
    results.published = Some(dmarc::published(&record, &record_domain));
    results
}

/// The RFC 5322.From domain DMARC checks: `None` without one, or when the field names
/// several domains (RFC 7489 §6.6.1: such messages are exempt, as mail-auth had them).
fn author_domain(from: &[String]) -> Option<String> {
    let mut found: Option<String> = None;
    for address in from {
        let Some((_, domain)) = address.rsplit_once('@') else {
            continue;
        };
        let domain = dmarc::normalise(domain);
        match &found {
            None => found = Some(domain),
            Some(first) if *first == domain => {}
            Some(_) => return None,
        }
    }
    found.filter(|d| !d.is_empty())
}

/// An SPF `none` may be a SERVFAIL mail-auth read as "no record": ask again ourselves.
async fn confirm_spf(
    auth: &MessageAuthenticator,
    caches: &Caches,
    output: &SpfOutput,
    domain: &str,
) -> AuthResult {
    let result = spf_result(output.result());
    if result != AuthResult::None || domain.is_empty() {
        return result;
    }
    match txt(auth, caches, domain).await {
        Lookup::ServerFailure => AuthResult::TempError,
        Lookup::Records(_) | Lookup::NotFound => result,
    }
}

enum Lookup {
    Records(Rc<[String]>),
    NotFound,
    ServerFailure,
}

/// The TXT strings of `name`: from this core's cache while the TTL lasts, else hickory's.
/// Only answers are cached; a failure is asked again next time.
async fn txt(auth: &MessageAuthenticator, caches: &Caches, name: &str) -> Lookup {
    let mut fqdn = name.to_ascii_lowercase();
    if !fqdn.ends_with('.') {
        fqdn.push('.');
    }
    if let Some(records) = caches.raw_txt.get_at(fqdn.as_str(), caches.now()) {
        return Lookup::Records(records);
    }
    match auth.resolver().txt_lookup(fqdn.as_str()).await {
        Ok(lookup) => {
            let records: Rc<[String]> = lookup
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
                .collect();
            caches.raw_txt.insert_at(
                fqdn.into_boxed_str(),
                Rc::clone(&records),
                lookup.valid_until(),
                caches.now(),
            );
            Lookup::Records(records)
        }
        Err(error) => match crate::net::dns::classify(&error) {
            crate::net::dns::LookupFailure::NxDomain
            | crate::net::dns::LookupFailure::NoRecords => Lookup::NotFound,
            crate::net::dns::LookupFailure::Temporary(_) => Lookup::ServerFailure,
        },
    }
}

enum Discovery {
    /// (the domain whose `_dmarc` record applies, its text)
    Found(String, String),
    /// No record, or several (RFC 7489 §6.6.3 step 3: no DMARC processing).
    NoPolicy,
    ServerFailure,
}

/// RFC 7489 §6.6.3 policy discovery: `_dmarc.<From domain>`, and only when that holds no
/// DMARC record at all, `_dmarc.<organisational domain>`.
async fn discover(auth: &MessageAuthenticator, caches: &Caches, from_domain: &str) -> Discovery {
    let org = dmarc::organisational_domain(from_domain);
    let mut names = vec![from_domain.to_string()];
    if org != from_domain {
        names.push(org);
    }
    for name in names {
        let records = match txt(auth, caches, &format!("_dmarc.{name}")).await {
            Lookup::Records(records) => records,
            Lookup::NotFound => Rc::from(Vec::new()),
            Lookup::ServerFailure => return Discovery::ServerFailure,
        };
        match dmarc::pick(&records) {
            dmarc::Answer::One(text) => return Discovery::Found(name, text),
            dmarc::Answer::Several => return Discovery::NoPolicy,
            dmarc::Answer::None => {}
        }
    }
    Discovery::NoPolicy
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sender_auth::report::Disposition;

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
        assert!(dmarc::is_dmarc(record));
        assert_eq!(dmarc::tag(record, "pct"), Some("50"));
        assert_eq!(dmarc::tag(record, "sp"), None);
        assert!(!dmarc::is_dmarc("v=spf1 -all"));
    }

    #[test]
    fn one_from_domain_or_none() {
        let from = |a: &[&str]| author_domain(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(
            from(&["a@Sub.Example.CO.UK"]),
            Some("sub.example.co.uk".into())
        );
        assert_eq!(
            from(&["a@x.example", "b@X.example"]),
            Some("x.example".into())
        );
        assert_eq!(from(&["a@x.example", "b@y.example"]), None);
        assert_eq!(from(&[]), None);
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
