//! SPF (RFC 7208) for the two identities an SMTP client gives: the HELO/EHLO name and the
//! MAIL FROM address. The evaluation itself is mail-auth's `check_host`; this is the one
//! place that decides how the relay calls it, so the ingest checks and the RFC 7208 suite
//! (tests/spf_suite.rs) run the same code.

use std::borrow::Cow;
use std::net::IpAddr;

use mail_auth::spf::verify::SpfParameters;
use mail_auth::{MessageAuthenticator, SpfOutput, SpfResult};

use super::cache::{self, Caches};

/// The SPF results for one transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpfVerdict {
    /// `check_host(ip, helo, postmaster@helo)` (RFC 7208 §2.3). `none` when the HELO name is
    /// not a domain (an address literal, a bare word).
    pub helo: SpfOutput,
    /// `check_host(ip, domain of MAIL FROM, MAIL FROM)` (RFC 7208 §2.4). For the null
    /// reverse path the identity is `postmaster@<helo>`, so this is the HELO result.
    pub mail_from: SpfOutput,
}

impl SpfVerdict {
    /// Whether either identity hit a DNS failure (`temperror`): the caller's `dns_failure`
    /// policy applies, never a silent pass.
    pub fn has_temperror(&self) -> bool {
        self.helo.result() == SpfResult::TempError
            || self.mail_from.result() == SpfResult::TempError
    }
}

/// Evaluates SPF for the HELO identity and the MAIL FROM identity of a client at `ip`.
///
/// `helo` is the name from HELO/EHLO, `host` our own name (the `%{r}` macro), `mail_from`
/// the reverse path without angle brackets (empty for `<>`). Both identities are always
/// checked (mail-auth's combined mode skips MAIL FROM after a HELO `fail`), because the
/// `Authentication-Results` header and DMARC want the MAIL FROM result on its own. DNS goes
/// through `auth`'s resolver and its cache; the caller bounds the time taken.
pub async fn evaluate(
    auth: &MessageAuthenticator,
    ip: IpAddr,
    helo: &str,
    host: &str,
    mail_from: &str,
) -> SpfVerdict {
    // A fresh cache answers nothing twice across calls; within one it is what hickory's
    // cache would have answered.
    let caches = Caches::system(cache::DEFAULT_CAPACITY);
    evaluate_cached(auth, &caches, ip, helo, host, mail_from).await
}

/// [`evaluate`] with records parsed earlier on this core answered from `caches`.
pub async fn evaluate_cached(
    auth: &MessageAuthenticator,
    caches: &Caches,
    ip: IpAddr,
    helo: &str,
    host: &str,
    mail_from: &str,
) -> SpfVerdict {
    // A client on a dual-stack listener shows as ::ffff:a.b.c.d; RFC 7208 §5 (and §5.6's
    // "ip6 never matches an IPv4 client") evaluates it as the IPv4 address it is.
    let ip = ip.to_canonical();
    let helo_output = if checkable(helo) {
        auth.verify_spf(caches.parameters(SpfParameters::verify_ehlo(ip, helo, host)))
            .await
    } else {
        SpfOutput::new(helo.to_string())
    };
    let mail_from_output = if mail_from.is_empty() {
        helo_output.clone()
    } else {
        // RFC 7208 §4.3: a sender without a local part is postmaster at its domain.
        let sender = match mail_from.strip_prefix('@') {
            Some(_) => Cow::Owned(format!("postmaster{mail_from}")),
            None => Cow::Borrowed(mail_from),
        };
        let domain = sender.rsplit_once('@').map_or("", |(_, domain)| domain);
        if checkable(domain) {
            auth.verify_spf(
                caches.parameters(SpfParameters::verify_mail_from(ip, helo, host, &sender)),
            )
            .await
        } else {
            SpfOutput::new(domain.to_string())
        }
    };
    SpfVerdict {
        helo: helo_output,
        mail_from: mail_from_output,
    }
}

/// Whether `domain` can be an SPF identity at all (RFC 7208 §4.3): a multi-label name of
/// non-empty labels of at most 63 octets (one final dot allowed), at most 253 octets. Anything
/// else (an address literal, a bare word, `a..b`, spaces) gives `none` without a query;
/// mail-auth would give `permerror` or `temperror` for some of them. Non-ASCII is left to
/// mail-auth (internationalised names).
fn checkable(domain: &str) -> bool {
    let name = domain.strip_suffix('.').unwrap_or(domain);
    name.len() <= 253
        && name.contains('.')
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| !b.is_ascii() || b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::checkable;

    #[test]
    fn identities_that_are_not_domains_are_not_looked_up() {
        for good in [
            "example.com",
            "mail.example.com.",
            "a-b_c.example",
            "bücher.example",
        ] {
            assert!(checkable(good), "{good}");
        }
        let long_label = format!("{}.example.com", "a".repeat(64));
        let long_name = format!("{}com", "abcdefghi.".repeat(26));
        for bad in [
            "",
            "localhost",
            "[192.0.2.1]",
            "a..example.com",
            ".example.com",
            "example.com..",
            "two words.example",
            long_label.as_str(),
            long_name.as_str(),
        ] {
            assert!(!checkable(bad), "{bad}");
        }
    }
}
