//! SPF (RFC 7208) for the two identities an SMTP client gives: the HELO/EHLO name and the
//! MAIL FROM address. The evaluation itself is mail-auth's `check_host`; this is the one
//! place that decides how the relay calls it, so the ingest checks and the RFC 7208 suite
//! (tests/spf_suite.rs) run the same code.

use std::net::IpAddr;

use mail_auth::spf::verify::SpfParameters;
use mail_auth::{MessageAuthenticator, SpfOutput, SpfResult};

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
    let helo_output = auth
        .verify_spf(SpfParameters::verify_ehlo(ip, helo, host))
        .await;
    let mail_from_output = if mail_from.is_empty() {
        helo_output.clone()
    } else {
        auth.verify_spf(SpfParameters::verify_mail_from(ip, helo, host, mail_from))
            .await
    };
    SpfVerdict {
        helo: helo_output,
        mail_from: mail_from_output,
    }
}
