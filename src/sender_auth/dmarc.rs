//! DMARC evaluation as RFC 7489 defines it, without I/O: the organisational domain from
//! the Public Suffix List (§3.2), the choice of record among the TXT answers (§6.6.3), the
//! identifier alignment (§3.1) and the policy that applies (§6.3 `p`/`sp`).
//!
//! Why not mail-auth's: 0.13.3 implements DMARCbis (organisational domain by a `_dmarc`
//! tree walk and `psd=` tags, no `pct=`), which disagrees with RFC 7489 for names under
//! multi-label public suffixes and for subdomains whose parent publishes `sp=`. mail-auth
//! still parses the record (its `Dmarc` parser) and does SPF/DKIM/ARC.

use mail_auth::common::parse::TxtRecordParser;
use mail_auth::dmarc::{Alignment, Dmarc, Policy as DmarcPolicy};

use super::policy::{DmarcStatus, Requested};
use super::report::{AuthResult, Disposition, PublishedPolicy};

/// `domain` lower-cased, as an A-label, without a trailing dot: the form every comparison
/// here uses (DNS names compare case-insensitively).
pub fn normalise(domain: &str) -> String {
    let domain = domain.trim().trim_end_matches('.');
    mail_auth::common::to_a_label(domain).to_ascii_lowercase()
}

/// The organisational domain of `domain` (RFC 7489 §3.2): the public suffix plus one
/// label. A name that is itself a public suffix, or that the list cannot split, is its own
/// organisational domain (there is nothing above it to share a policy with).
pub fn organisational_domain(domain: &str) -> String {
    let domain = normalise(domain);
    match psl::domain_str(&domain) {
        Some(org) => org.to_string(),
        None => domain,
    }
}

/// Whether an authenticated identifier (DKIM `d=`, SPF domain) aligns with the From domain
/// (RFC 7489 §3.1): equal names in strict mode, equal organisational domains in relaxed.
pub fn aligned(identifier: &str, from_domain: &str, strict: bool) -> bool {
    let (identifier, from_domain) = (normalise(identifier), normalise(from_domain));
    if identifier.is_empty() || from_domain.is_empty() {
        return false;
    }
    identifier == from_domain
        || (!strict && organisational_domain(&identifier) == organisational_domain(&from_domain))
}

/// A TXT record that is a DMARC record: its first tag is `v=DMARC1` (RFC 7489 §6.6.3 step
/// 3; §6.4 requires `v` first, so a `v=` later on does not count).
pub fn is_dmarc(text: &str) -> bool {
    text.split(';')
        .next()
        .and_then(|t| t.split_once('='))
        .is_some_and(|(k, v)| k.trim().eq_ignore_ascii_case("v") && v.trim() == "DMARC1")
}

/// What one `_dmarc.<name>` TXT answer holds (RFC 7489 §6.6.3 steps 2–3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// No DMARC record among the answers: look further (org domain) or give up.
    None,
    One(String),
    /// Several DMARC records: discovery ends with no policy.
    Several,
}

pub fn pick(records: &[String]) -> Answer {
    let mut dmarc = records.iter().filter(|t| is_dmarc(t));
    match (dmarc.next(), dmarc.next()) {
        (None, _) => Answer::None,
        (Some(text), None) => Answer::One(text.clone()),
        (Some(_), Some(_)) => Answer::Several,
    }
}

/// The value of `name=` in a tag list (`v=DMARC1; p=reject; pct=50`).
pub fn tag<'a>(record: &'a str, name: &str) -> Option<&'a str> {
    record.split(';').find_map(|part| {
        let (key, value) = part.split_once('=')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// Why a DMARC record could not be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// A `v=DMARC1` record mail-auth's parser rejects (a bad `p=`, `adkim=`, URI, …).
    #[error("malformed DMARC record")]
    Malformed,
}

/// A parsed DMARC record, with what RFC 7489 reads that mail-auth's type does not keep
/// (`pct=`, and the `rua=` URIs with their `!size` as published).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub adkim_strict: bool,
    pub aspf_strict: bool,
    pub p: Requested,
    pub sp: Requested,
    pub pct: u8,
    pub rua: Vec<String>,
}

fn requested(policy: DmarcPolicy) -> Requested {
    match policy {
        DmarcPolicy::Reject => Requested::Reject,
        DmarcPolicy::Quarantine => Requested::Quarantine,
        DmarcPolicy::None | DmarcPolicy::Unspecified => Requested::None,
    }
}

/// Parses a DMARC record's text. `Ok(None)`: no valid `p=` and no `rua=`, which RFC 7489
/// §6.6.3 step 6 says is no DMARC processing at all; with a `rua=` it acts as `p=none`.
pub fn parse(text: &str) -> Result<Option<Record>, RecordError> {
    let record = Dmarc::parse(text.as_bytes()).map_err(|_| RecordError::Malformed)?;
    // mail-auth keeps the size limit as a byte count; the report sender re-reads the URI
    // with its `!size` (report::feedback::parse_rua), so the text is kept as published.
    let rua: Vec<String> = tag(text, "rua")
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let (p, sp) = if record.p == DmarcPolicy::Unspecified {
        if record.rua.is_empty() {
            return Ok(None);
        }
        // "as if a record containing a valid v tag and p=none was retrieved": sp too.
        (Requested::None, Requested::None)
    } else {
        // mail-auth already defaults an absent `sp=` to `p=` (RFC 7489 §6.3).
        (requested(record.p), requested(record.sp))
    };
    Ok(Some(Record {
        adkim_strict: record.adkim == Alignment::Strict,
        aspf_strict: record.aspf == Alignment::Strict,
        p,
        sp,
        // §6.3: an integer 0..100; anything unreadable is the default, 100 (the whole
        // policy), so a typo never weakens it.
        pct: tag(text, "pct")
            .and_then(|v| v.parse::<u8>().ok())
            .map_or(100, |v| v.min(100)),
        rua,
    }))
}

/// The policy the record asks for this From domain: `sp` when the record was found at the
/// organisational domain for a From domain below it (§6.3 `sp`, §6.6.3 step 4), else `p`.
pub fn applicable(record: &Record, from_domain: &str, record_domain: &str) -> Requested {
    if normalise(from_domain) != normalise(record_domain) {
        record.sp
    } else {
        record.p
    }
}

/// The report's view of the record.
pub fn published(record: &Record, record_domain: &str) -> PublishedPolicy {
    let disposition = |r: Requested| match r {
        Requested::None => Disposition::None,
        Requested::Quarantine => Disposition::Quarantine,
        Requested::Reject => Disposition::Reject,
    };
    PublishedPolicy {
        domain: normalise(record_domain),
        adkim_strict: record.adkim_strict,
        aspf_strict: record.aspf_strict,
        p: disposition(record.p),
        sp: disposition(record.sp),
        pct: record.pct,
        rua: record.rua.clone(),
    }
}

/// The alignment outcome of one mechanism, in the report's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Evaluation {
    pub status: DmarcStatus,
    pub dkim_aligned: AuthResult,
    pub spf_aligned: AuthResult,
}

/// DMARC's verdict for a From domain with a record (§3.1, §6.6.2): pass when an SPF pass
/// or a DKIM pass is for an aligned domain. A temporary error on an aligned identifier
/// means the check can neither pass nor fail (`temperror`), never a silent fail or pass.
///
/// `spf`: the SPF result and the domain it was for (MAIL FROM, or HELO for the null
/// sender); `dkim`: each signature's result and `d=`.
pub fn evaluate(
    record: &Record,
    from_domain: &str,
    spf: (AuthResult, &str),
    dkim: &[(AuthResult, &str)],
) -> Evaluation {
    let spf_aligned = match spf.0 {
        AuthResult::Pass | AuthResult::TempError => {
            match (aligned(spf.1, from_domain, record.aspf_strict), spf.0) {
                (true, result) => result,
                (false, AuthResult::Pass) => AuthResult::Fail,
                (false, _) => AuthResult::None,
            }
        }
        _ => AuthResult::None,
    };
    let aligned_dkim = |wanted: AuthResult| {
        dkim.iter()
            .any(|(r, d)| *r == wanted && aligned(d, from_domain, record.adkim_strict))
    };
    let dkim_aligned = if aligned_dkim(AuthResult::Pass) {
        AuthResult::Pass
    } else if aligned_dkim(AuthResult::TempError) {
        AuthResult::TempError
    } else if dkim.iter().any(|(r, _)| *r == AuthResult::Pass) {
        AuthResult::Fail
    } else {
        AuthResult::None
    };
    let either = |wanted: AuthResult| spf_aligned == wanted || dkim_aligned == wanted;
    let status = if either(AuthResult::Pass) {
        DmarcStatus::Pass
    } else if either(AuthResult::TempError) {
        DmarcStatus::TempError
    } else {
        DmarcStatus::Fail
    };
    Evaluation {
        status,
        dkim_aligned,
        spf_aligned,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(text: &str) -> Record {
        parse(text).expect("valid").expect("a record")
    }

    #[test]
    fn organisational_domain_comes_from_the_public_suffix_list() {
        assert_eq!(organisational_domain("a.b.example.co.uk"), "example.co.uk");
        assert_eq!(organisational_domain("example.co.uk"), "example.co.uk");
        assert_eq!(organisational_domain("Mail.Example.COM."), "example.com");
        // A public suffix is its own organisational domain.
        assert_eq!(organisational_domain("co.uk"), "co.uk");
        // Unlisted TLDs fall under the list's implicit `*` rule.
        assert_eq!(organisational_domain("x.reject.test"), "reject.test");
        // Private-section entries count too (RFC 7489 uses the whole list).
        assert_eq!(organisational_domain("a.b.github.io"), "b.github.io");
    }

    #[test]
    fn relaxed_alignment_shares_the_organisational_domain_strict_needs_equality() {
        assert!(aligned("example.co.uk", "a.b.example.co.uk", false));
        assert!(aligned("mail.example.co.uk", "news.example.co.uk", false));
        assert!(!aligned("other.co.uk", "example.co.uk", false));
        // Siblings under a public suffix are different organisations.
        assert!(!aligned("a.github.io", "b.github.io", false));
        assert!(!aligned("example.co.uk", "a.example.co.uk", true));
        assert!(aligned("EXAMPLE.co.uk.", "example.CO.UK", true));
        assert!(!aligned("", "example.com", false));
    }

    #[test]
    fn several_records_or_none_is_no_policy() {
        let one = "v=DMARC1; p=reject".to_string();
        assert_eq!(pick(&[]), Answer::None);
        assert_eq!(pick(&["v=spf1 -all".into()]), Answer::None);
        assert_eq!(pick(&["p=reject; v=DMARC1".into()]), Answer::None);
        assert_eq!(
            pick(&["v=spf1 -all".into(), one.clone()]),
            Answer::One(one.clone())
        );
        assert_eq!(pick(&[one.clone(), one]), Answer::Several);
    }

    #[test]
    fn records_are_parsed_with_pct_and_rua_as_published() {
        let r = record(
            "v=DMARC1; p=quarantine; sp=reject; adkim=s; PCT = 20; \
             rua=mailto:a@b.example!10m, mailto:c@d.example",
        );
        assert_eq!((r.p, r.sp), (Requested::Quarantine, Requested::Reject));
        assert!(r.adkim_strict && !r.aspf_strict);
        assert_eq!(r.pct, 20);
        assert_eq!(r.rua, vec!["mailto:a@b.example!10m", "mailto:c@d.example"]);
        // sp defaults to p; pct to 100.
        let r = record("v=DMARC1; p=reject");
        assert_eq!((r.sp, r.pct), (Requested::Reject, 100));
        assert_eq!(record("v=DMARC1; p=none; pct=500").pct, 100);
        // No p= but a rua=: p=none. Neither: not DMARC.
        let r = record("v=DMARC1; sp=reject; rua=mailto:a@b.example");
        assert_eq!((r.p, r.sp), (Requested::None, Requested::None));
        assert_eq!(parse("v=DMARC1; adkim=s"), Ok(None));
        assert_eq!(parse("v=DMARC1; p=bogus"), Err(RecordError::Malformed));
    }

    #[test]
    fn sp_applies_to_subdomains_only_through_the_org_record() {
        let r = record("v=DMARC1; p=none; sp=reject");
        // Found at the organisational domain for a subdomain: sp.
        assert_eq!(
            applicable(&r, "a.b.example.co.uk", "example.co.uk"),
            Requested::Reject
        );
        // Found at the From domain itself (subdomain or not): p.
        assert_eq!(
            applicable(&r, "a.b.example.co.uk", "a.b.example.co.uk"),
            Requested::None
        );
        assert_eq!(
            applicable(&r, "example.co.uk", "example.co.uk"),
            Requested::None
        );
    }

    #[test]
    fn either_aligned_pass_passes() {
        let relaxed = record("v=DMARC1; p=reject");
        let strict = record("v=DMARC1; p=reject; adkim=s; aspf=s");
        let from = "news.example.co.uk";
        // DKIM d= the parent (organisational) domain: aligned relaxed, not strict.
        let dkim = [(AuthResult::Pass, "example.co.uk")];
        let spf = (AuthResult::Fail, "example.co.uk");
        let e = evaluate(&relaxed, from, spf, &dkim);
        assert_eq!(e.status, DmarcStatus::Pass);
        assert_eq!(
            (e.dkim_aligned, e.spf_aligned),
            (AuthResult::Pass, AuthResult::None)
        );
        let e = evaluate(&strict, from, spf, &dkim);
        assert_eq!(e.status, DmarcStatus::Fail);
        assert_eq!(e.dkim_aligned, AuthResult::Fail);
        // SPF alone, relaxed.
        let e = evaluate(
            &relaxed,
            from,
            (AuthResult::Pass, "bounce.example.co.uk"),
            &[],
        );
        assert_eq!(
            (e.status, e.spf_aligned),
            (DmarcStatus::Pass, AuthResult::Pass)
        );
        let e = evaluate(
            &strict,
            from,
            (AuthResult::Pass, "bounce.example.co.uk"),
            &[],
        );
        assert_eq!(
            (e.status, e.spf_aligned),
            (DmarcStatus::Fail, AuthResult::Fail)
        );
        // A pass for another organisation under the same suffix does not align.
        let e = evaluate(&relaxed, from, (AuthResult::Pass, "other.co.uk"), &[]);
        assert_eq!(e.status, DmarcStatus::Fail);
    }

    #[test]
    fn an_aligned_temporary_error_is_temperror_not_fail() {
        let r = record("v=DMARC1; p=reject");
        let e = evaluate(
            &r,
            "example.com",
            (AuthResult::Fail, "example.com"),
            &[(AuthResult::TempError, "example.com")],
        );
        assert_eq!(e.status, DmarcStatus::TempError);
        let e = evaluate(
            &r,
            "example.com",
            (AuthResult::TempError, "example.com"),
            &[],
        );
        assert_eq!(e.status, DmarcStatus::TempError);
        // ...but an aligned pass still passes.
        let e = evaluate(
            &r,
            "example.com",
            (AuthResult::TempError, "example.com"),
            &[(AuthResult::Pass, "example.com")],
        );
        assert_eq!(e.status, DmarcStatus::Pass);
    }
}
