//! One aggregate report as sent (RFC 7489 §7.2): the XML of Appendix C, gzip-compressed
//! and attached to a message (§7.2.1.1), and the `rua=` URIs it goes to (§6.2, §7.1).
//!
//! The XML follows RFC 7489's schema (tests/data/dmarc/rua.xsd) rather than mail-auth's
//! generator, which writes the newer DMARCbis format (another namespace, `np`, no `pct`)
//! that the RFC's schema refuses. Report id, file name and Subject are built from the policy
//! domain only after [`is_domain_name`] accepted it, so DNS data cannot add header fields.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;

use super::{AuthResult, Disposition, DueReport};

/// Who sends the report (`report_metadata` and the message's From).
#[derive(Debug, Clone)]
pub struct Submitter<'a> {
    pub org_name: &'a str,
    /// Our address: From, reverse path and the metadata's `email`.
    pub email: &'a str,
    /// Our host name: the receiver in the file name, the Subject's Submitter.
    pub receiver: &'a str,
}

/// One `rua=` destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuaTarget {
    /// `local@domain`, percent-decoded.
    pub address: String,
    /// The domain part, lowercased.
    pub domain: String,
    /// `!size` in bytes (RFC 7489 §6.2: k, m, g, t are powers of 1024).
    pub max_size: Option<u64>,
}

/// Reads one `rua=` URI: `mailto:` only (other schemes are not supported: `None`), an
/// address of plain characters (no header syntax), an optional `!size`.
pub fn parse_rua(uri: &str) -> Option<RuaTarget> {
    let uri = uri.trim();
    let rest = uri.get(..7).filter(|s| s.eq_ignore_ascii_case("mailto:"))?;
    let rest = &uri[rest.len()..];
    let (address, size) = match rest.rsplit_once('!') {
        Some((address, size)) => (address, Some(parse_size(size)?)),
        None => (rest, None),
    };
    let address = percent_decode(address)?;
    let (local, domain) = address.rsplit_once('@')?;
    let plain = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{|}~.-".contains(c);
    if local.is_empty() || !local.chars().all(plain) || !is_domain_name(domain) {
        return None;
    }
    Some(RuaTarget {
        domain: domain.to_ascii_lowercase(),
        address: format!("{local}@{}", domain.to_ascii_lowercase()),
        max_size: size,
    })
}

fn parse_size(text: &str) -> Option<u64> {
    let (digits, unit) = match text.char_indices().last()? {
        (at, c) if c.is_ascii_alphabetic() => (&text[..at], Some(c.to_ascii_lowercase())),
        _ => (text, None),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let shift = match unit {
        None => 0,
        Some('k') => 10,
        Some('m') => 20,
        Some('g') => 30,
        Some('t') => 40,
        Some(_) => return None,
    };
    Some(n.saturating_mul(1 << shift))
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// An ASCII host name: labels of letters, digits, `-` and `_`, dot-separated, ≤ 253 octets.
pub fn is_domain_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Whether reports for `policy_domain` may go to `target` only after the target's domain
/// agreed (RFC 7489 §7.1): when the target is neither the policy domain nor below it. (The
/// RFC compares organisational domains; comparing the names themselves asks in a few more
/// cases, never in fewer.)
pub fn needs_authorization(policy_domain: &str, target: &RuaTarget) -> bool {
    let policy = policy_domain.trim_end_matches('.').to_ascii_lowercase();
    let target = target.domain.trim_end_matches('.');
    !(target == policy || target.ends_with(&format!(".{policy}")))
}

/// The TXT name that says `target` accepts reports about `policy_domain` (RFC 7489 §7.1).
pub fn authorization_name(policy_domain: &str, target: &RuaTarget) -> String {
    format!(
        "{}._report._dmarc.{}.",
        policy_domain.trim_end_matches('.').to_ascii_lowercase(),
        target.domain.trim_end_matches('.')
    )
}

/// Whether a TXT answer at [`authorization_name`] authorises reports: a record that starts
/// with `v=DMARC1` (§7.1).
pub fn authorizes(txt: &str) -> bool {
    let txt = txt.trim_start();
    txt.get(..8)
        .is_some_and(|v| v.eq_ignore_ascii_case("v=DMARC1"))
        && txt[8..]
            .trim_start()
            .chars()
            .next()
            .is_none_or(|c| c == ';')
}

/// The report's unique id.
pub fn report_id(submitter: &Submitter<'_>, report: &DueReport) -> String {
    format!(
        "{}.{}.{}@{}",
        report.domain, report.begin, report.end, submitter.receiver
    )
}

/// `receiver!policy-domain!begin!end.xml.gz` (§7.2.1.1); `end` is the last second covered.
pub fn file_name(submitter: &Submitter<'_>, report: &DueReport) -> String {
    format!(
        "{}!{}!{}!{}.xml.gz",
        submitter.receiver,
        report.domain,
        report.begin,
        last_second(report)
    )
}

fn last_second(report: &DueReport) -> u64 {
    report.end.saturating_sub(1).max(report.begin)
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 has no representation for most control characters at all.
            c if c.is_control() && !matches!(c, '\t' | '\n' | '\r') => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

/// The source address as the schema's `IPAddress` pattern takes it: dotted IPv4, or IPv6
/// with all eight groups written out (the pattern knows no `::`).
fn source_ip(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => v6
            .segments()
            .iter()
            .map(|s| format!("{s:x}"))
            .collect::<Vec<_>>()
            .join(":"),
    }
}

fn disposition(d: Disposition) -> &'static str {
    match d {
        Disposition::None => "none",
        Disposition::Quarantine => "quarantine",
        Disposition::Reject => "reject",
    }
}

fn aligned(r: AuthResult) -> &'static str {
    match r {
        AuthResult::Pass => "pass",
        _ => "fail",
    }
}

fn dkim_result(r: AuthResult) -> &'static str {
    match r {
        AuthResult::None => "none",
        AuthResult::Pass => "pass",
        AuthResult::Fail | AuthResult::SoftFail => "fail",
        AuthResult::Policy => "policy",
        AuthResult::Neutral => "neutral",
        AuthResult::TempError => "temperror",
        AuthResult::PermError => "permerror",
    }
}

fn spf_result(r: AuthResult) -> &'static str {
    match r {
        AuthResult::None => "none",
        AuthResult::Neutral => "neutral",
        AuthResult::Pass => "pass",
        AuthResult::Fail => "fail",
        AuthResult::SoftFail => "softfail",
        AuthResult::TempError => "temperror",
        // SPF has no "policy" result; the nearest of its own is a permanent error.
        AuthResult::PermError | AuthResult::Policy => "permerror",
    }
}

/// The report as RFC 7489 Appendix C XML.
pub fn xml(submitter: &Submitter<'_>, report: &DueReport) -> String {
    let p = &report.policy;
    let mut x = String::with_capacity(512 + report.rows.len() * 512);
    let _ = write!(
        x,
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<feedback>\n  <version>1.0</version>\n  \
         <report_metadata>\n    <org_name>{}</org_name>\n    <email>{}</email>\n    \
         <report_id>{}</report_id>\n    <date_range>\n      <begin>{}</begin>\n      \
         <end>{}</end>\n    </date_range>\n  </report_metadata>\n",
        escape(submitter.org_name),
        escape(submitter.email),
        escape(&report_id(submitter, report)),
        report.begin,
        last_second(report),
    );
    let _ = write!(
        x,
        "  <policy_published>\n    <domain>{}</domain>\n    <adkim>{}</adkim>\n    \
         <aspf>{}</aspf>\n    <p>{}</p>\n    <sp>{}</sp>\n    <pct>{}</pct>\n    \
         <fo>0</fo>\n  </policy_published>\n",
        escape(&report.domain),
        if p.adkim_strict { "s" } else { "r" },
        if p.aspf_strict { "s" } else { "r" },
        disposition(p.p),
        disposition(p.sp),
        p.pct.min(100),
    );
    for (row, count) in &report.rows {
        let _ = write!(
            x,
            "  <record>\n    <row>\n      <source_ip>{}</source_ip>\n      <count>{count}</count>\n      \
             <policy_evaluated>\n        <disposition>{}</disposition>\n        <dkim>{}</dkim>\n        \
             <spf>{}</spf>\n      </policy_evaluated>\n    </row>\n    <identifiers>\n      \
             <envelope_from>{}</envelope_from>\n      <header_from>{}</header_from>\n    \
             </identifiers>\n    <auth_results>\n",
            source_ip(row.source_ip),
            disposition(row.disposition),
            aligned(row.dkim_aligned),
            aligned(row.spf_aligned),
            escape(&row.envelope_from),
            escape(&row.header_from),
        );
        for (domain, selector, result) in &row.dkim {
            let _ = write!(
                x,
                "      <dkim>\n        <domain>{}</domain>\n        <selector>{}</selector>\n        \
                 <result>{}</result>\n      </dkim>\n",
                escape(domain),
                escape(selector),
                dkim_result(*result),
            );
        }
        let (domain, helo, result) = &row.spf;
        let _ = write!(
            x,
            "      <spf>\n        <domain>{}</domain>\n        <scope>{}</scope>\n        \
             <result>{}</result>\n      </spf>\n    </auth_results>\n  </record>\n",
            escape(domain),
            if *helo { "helo" } else { "mfrom" },
            spf_result(*result),
        );
    }
    x.push_str("</feedback>\n");
    x
}

/// gzip of `data` (RFC 1952), as §7.2.1.1 names it `.xml.gz`.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 4),
        flate2::Compression::default(),
    );
    // Writing to a Vec cannot fail.
    let _ = encoder.write_all(data);
    encoder.finish().unwrap_or_default()
}

/// The report message (§7.2.1.1): From, To, Date, Subject `Report Domain: … Submitter: …
/// Report-ID: <…>`, a short text part and the gzip attachment. CRLF line ends.
pub fn message(
    submitter: &Submitter<'_>,
    report: &DueReport,
    to: &[&str],
    compressed: &[u8],
    unix_now: i64,
) -> Vec<u8> {
    let id = report_id(submitter, report);
    let file = file_name(submitter, report);
    let boundary = format!("=_dmarc_{:016x}", fnv(id.as_bytes()) ^ unix_now as u64);
    let date = chrono::DateTime::from_timestamp(unix_now, 0)
        .unwrap_or_default()
        .to_rfc2822();
    let mut m = String::with_capacity(1024 + compressed.len() * 4 / 3);
    let _ = write!(
        m,
        "From: {from}\r\nTo: {to}\r\nDate: {date}\r\nSubject: Report Domain: {domain} \
         Submitter: {receiver} Report-ID: <{id}>\r\nMessage-ID: <{unix_now}.{id}>\r\n\
         Auto-Submitted: auto-generated\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\n\
         This is a DMARC aggregate report (RFC 7489) in MIME format.\r\n\r\n\
         --{boundary}\r\nContent-Type: text/plain; charset=us-ascii\r\n\
         Content-Transfer-Encoding: 7bit\r\n\r\n\
         DMARC aggregate report from {receiver}\r\n\r\nReport Domain: {domain}\r\n\
         Submitter: {receiver}\r\nReport-ID: {id}\r\n\r\n\
         --{boundary}\r\nContent-Type: application/gzip; name=\"{file}\"\r\n\
         Content-Transfer-Encoding: base64\r\n\
         Content-Disposition: attachment; filename=\"{file}\"\r\n\r\n",
        from = submitter.email,
        to = to.join(", "),
        domain = report.domain,
        receiver = submitter.receiver,
    );
    let encoded = base64_simd::STANDARD.encode_to_string(compressed);
    for line in encoded.as_bytes().chunks(76) {
        m.push_str(std::str::from_utf8(line).unwrap_or_default());
        m.push_str("\r\n");
    }
    let _ = write!(m, "--{boundary}--\r\n");
    m.into_bytes()
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}
