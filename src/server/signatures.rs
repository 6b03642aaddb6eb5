//! Signature checks of arriving mail for local users: S/MIME (RFC 8551) against the trust
//! store (`[smime]`), PGP/MIME (RFC 3156) against the From address's key here or from its
//! domain's Web Key Directory (`[openpgp]`). The verdict goes into our one
//! `Authentication-Results` field (RFC 8601): `smime` as RFC 7281 registers it, OpenPGP
//! under [`openpgp::METHOD`] (no method is registered for OpenPGP; an `x-` name is what
//! RFC 8601 §2.7.6 leaves for unregistered ones). A signature never refuses mail.
//!
//! Result keywords, both methods: `pass` (verifies, signer trusted), `fail` (does not
//! verify), `policy` (verifies, but the certificate does not chain to a trust anchor or is
//! not for e-mail), `neutral` (no key for the signer), `permerror` (malformed),
//! `temperror` (the WKD lookup failed for now). The verdict's reason goes in `reason=`.
//!
//! Cost: a message pays only when it has local recipients and its top-level Content-Type
//! says it is signed; everything else costs that one header look.

use std::cell::OnceCell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use super::shard::ShardContext;
use super::wkd::{Lookup, WkdClient};
use crate::config::Config;
use crate::logsafe::Safe;
use crate::mailcrypt::{self, openpgp, smime, SignatureKind, Verdict};
use crate::net::dns::SystemResolver;
use crate::sender_auth::authres::{self, Clause};
use crate::smtp::Submission;

/// What every core's checks share: the trust store, the WKD client and its cache.
pub struct SignaturesShared {
    /// `None`: `smime.verify = false`.
    trust: Option<smime::TrustStore>,
    openpgp: bool,
    /// `None`: `openpgp.wkd = false`.
    wkd: Option<WkdClient>,
    dns_servers: Vec<SocketAddr>,
    authserv_id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SignaturesError {
    #[error("smime.ca_file {path}: {message}")]
    CaFile { path: String, message: String },
    #[error("openpgp.wkd_ca_file: {0}")]
    WkdTls(#[from] crate::net::tls::TlsError),
}

impl SignaturesShared {
    pub fn new(config: &Config, hostname: &str) -> Result<Arc<SignaturesShared>, SignaturesError> {
        let trust = if config.smime.verify {
            Some(match &config.smime.ca_file {
                Some(path) => {
                    let failed = |message: String| SignaturesError::CaFile {
                        path: path.display().to_string(),
                        message,
                    };
                    let pem = std::fs::read(path).map_err(|e| failed(e.to_string()))?;
                    smime::TrustStore::with_pem(&pem).map_err(|e| failed(e.to_string()))?
                }
                None => smime::TrustStore::default(),
            })
        } else {
            None
        };
        let section = &config.openpgp;
        let wkd = if section.verify && section.wkd {
            let tls = crate::net::tls::ClientTls::load(section.wkd_ca_file.as_deref())?;
            Some(WkdClient::new(
                tls.verified(),
                section.wkd_timeout.0,
                section.wkd_cache_ttl.0,
                section.wkd_cache_max,
                section.wkd_resolve.clone(),
            ))
        } else {
            None
        };
        Ok(Arc::new(SignaturesShared {
            trust,
            openpgp: section.verify,
            wkd,
            dns_servers: config.server.dns_servers.clone(),
            authserv_id: config
                .verify
                .authserv_id
                .clone()
                .unwrap_or_else(|| hostname.to_string()),
        }))
    }
}

/// A core's checks: the shared part and this core's resolver for WKD hosts (built on first
/// use, on the core's runtime).
pub struct Signatures {
    shared: Arc<SignaturesShared>,
    resolver: OnceCell<Option<SystemResolver>>,
}

impl Signatures {
    pub fn for_shard(shared: &Arc<SignaturesShared>) -> Signatures {
        Signatures {
            shared: Arc::clone(shared),
            resolver: OnceCell::new(),
        }
    }

    fn resolver(&self) -> &Option<SystemResolver> {
        self.resolver.get_or_init(|| {
            SystemResolver::new(&self.shared.dns_servers)
                .map_err(|error| tracing::warn!(%error, "no DNS resolver for WKD lookups"))
                .ok()
        })
    }
}

/// Checks `submission`'s signature when it is signed and has local recipients, and puts
/// the result into `headers` (merged into our `Authentication-Results` field there, or a
/// new one at its top); removes arriving fields that claim our authserv-id.
pub async fn check(ctx: &ShardContext, submission: &mut Submission, headers: &mut Vec<u8>) {
    let signatures = &ctx.signatures;
    let shared = &signatures.shared;
    if submission.mailboxes.is_empty() || (shared.trust.is_none() && !shared.openpgp) {
        return;
    }
    let Some(kind) = mailcrypt::signature_kind(&submission.body) else {
        return;
    };
    let now = SystemTime::now();
    let from = header_from(&submission.body);
    let clause = match kind {
        SignatureKind::Smime => {
            let Some(trust) = &shared.trust else { return };
            let verdict = smime::verify(&submission.body, trust, now);
            log(&verdict, "smime", &from);
            clause(mailcrypt_method(kind), &verdict, |signer| {
                let mut properties = vec![("body.smime-part", "1".to_string())];
                if let Some(signer) = signer {
                    properties.push(("body.smime-identifier", signer.to_string()));
                }
                properties
            })
        }
        SignatureKind::OpenPgp => {
            if !shared.openpgp {
                return;
            }
            let verdict = openpgp_verdict(ctx, &submission.body, from.as_deref(), now).await;
            log(&verdict, openpgp::METHOD, &from);
            clause(mailcrypt_method(kind), &verdict, |_| {
                from.iter()
                    .map(|from| ("header.from", from.clone()))
                    .collect()
            })
        }
    };
    if let Some(kept) = authres::remove_ours(&submission.body, &shared.authserv_id) {
        submission.body = kept;
    }
    merge(headers, &shared.authserv_id, clause);
}

fn mailcrypt_method(kind: SignatureKind) -> &'static str {
    match kind {
        SignatureKind::Smime => "smime",
        SignatureKind::OpenPgp => openpgp::METHOD,
    }
}

/// The From address's key: the relay's own user's, else its domain's WKD's.
async fn openpgp_verdict(
    ctx: &ShardContext,
    message: &[u8],
    from: Option<&str>,
    now: SystemTime,
) -> Verdict {
    let Some(from) = from else {
        return openpgp::verify(message, &[], now);
    };
    if let Some(key) = ctx.keys.openpgp_for_address(from) {
        return openpgp::verify(message, &[key], now);
    }
    let signatures = &ctx.signatures;
    // Our own domains' keys are the ones registered here: no directory to ask.
    let local = from.rsplit_once('@').is_some_and(|(_, domain)| {
        ctx.session_config
            .local_domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(domain))
    });
    let Some(wkd) = signatures.shared.wkd.as_ref().filter(|_| !local) else {
        return openpgp::verify(message, &[], now);
    };
    match wkd.lookup(signatures.resolver(), from, now).await {
        Lookup::Found(key) => openpgp::verify(message, &[key], now),
        Lookup::NotFound(why) => {
            tracing::debug!(target: "relay::verify", from = %Safe(from), reason = %Safe(&why), "no WKD key");
            openpgp::verify(message, &[], now)
        }
        Lookup::Failed(reason) => Verdict::TempError { reason },
    }
}

/// The clause for `verdict`: result keyword, `reason=` first (RFC 8601 §2.2 puts it before
/// the properties), then the method's properties (given the signer, when known).
fn clause(
    method: &'static str,
    verdict: &Verdict,
    properties: impl FnOnce(Option<&str>) -> Vec<(&'static str, String)>,
) -> Clause {
    // One mapping for both methods (RFC 7281 §3.2 for `smime`, the same words for OpenPGP).
    let result = smime::verdict_result(verdict);
    let (reason, signer) = match verdict {
        Verdict::Pass { signer } => (None, Some(signer.as_str())),
        Verdict::Untrusted { signer, reason } => (Some(reason.clone()), Some(signer.as_str())),
        Verdict::UnknownSigner { signer } => {
            (Some(format!("no key for the signer {signer}")), None)
        }
        Verdict::Fail { reason }
        | Verdict::PermError { reason }
        | Verdict::TempError { reason } => (Some(reason.clone()), None),
    };
    let mut all = Vec::new();
    if let Some(reason) = reason {
        all.push(("reason", reason));
    }
    all.extend(properties(signer));
    Clause {
        method,
        result,
        properties: all,
    }
}

fn log(verdict: &Verdict, method: &str, from: &Option<String>) {
    tracing::debug!(
        target: "relay::verify",
        method,
        from = %Safe(from.as_deref().unwrap_or("")),
        verdict = %Safe(&format!("{verdict:?}")),
        "signature checked"
    );
}

/// The From field's (first) address, lower case.
fn header_from(message: &[u8]) -> Option<String> {
    let parsed = mail_parser::MessageParser::new().parse_headers(message)?;
    let address = parsed.from()?.first()?.address()?;
    Some(address.to_ascii_lowercase())
}

/// Adds `clause` to our field at the top of `headers` (written by the sender checks), or
/// puts a field of its own there.
fn merge(headers: &mut Vec<u8>, authserv_id: &str, clause: Clause) {
    let field = authres::header(authserv_id, &[clause]);
    let prefix = format!("Authentication-Results: {}", authres::value(authserv_id));
    let Some(tail) = field.strip_prefix(&prefix) else {
        headers.splice(0..0, field.into_bytes());
        return;
    };
    if !headers.starts_with(prefix.as_bytes()) {
        headers.splice(0..0, field.into_bytes());
        return;
    }
    // The end of our field: the CRLF not followed by folding white space.
    let mut end = headers.len();
    let mut at = 0;
    while let Some(i) = headers[at..].windows(2).position(|w| w == b"\r\n") {
        let next = at + i + 2;
        if next >= headers.len() || !matches!(headers[next], b' ' | b'\t') {
            end = next;
            break;
        }
        at = next;
    }
    let mut existing = headers[..end].to_vec();
    if existing.ends_with(b"\r\n") {
        existing.truncate(existing.len() - 2);
    }
    // "id; none" said no method was applied; now one was.
    if existing.ends_with(b"; none") {
        existing.truncate(existing.len() - b"; none".len());
    }
    existing.extend_from_slice(tail.as_bytes());
    headers.splice(0..end, existing);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smime_clause(verdict: &Verdict) -> Clause {
        clause("smime", verdict, |signer| {
            let mut p = vec![("body.smime-part", "1".to_string())];
            if let Some(s) = signer {
                p.push(("body.smime-identifier", s.to_string()));
            }
            p
        })
    }

    #[test]
    fn merges_into_our_field_or_adds_one() {
        let pass = smime_clause(&Verdict::Pass {
            signer: "a@example.org".into(),
        });
        let mut headers = b"Authentication-Results: mx.test;\r\n\tspf=pass smtp.mailfrom=a@example.org\r\nDKIM-Signature: x\r\n".to_vec();
        merge(&mut headers, "mx.test", pass.clone());
        assert_eq!(
            String::from_utf8(headers).unwrap(),
            "Authentication-Results: mx.test;\r\n\tspf=pass smtp.mailfrom=a@example.org;\r\n\tsmime=pass body.smime-part=1 body.smime-identifier=a@example.org\r\nDKIM-Signature: x\r\n"
        );
        let mut headers = b"Authentication-Results: mx.test; none\r\n".to_vec();
        merge(&mut headers, "mx.test", pass.clone());
        assert_eq!(
            String::from_utf8(headers).unwrap(),
            "Authentication-Results: mx.test;\r\n\tsmime=pass body.smime-part=1 body.smime-identifier=a@example.org\r\n"
        );
        let mut headers = Vec::new();
        merge(&mut headers, "mx.test", pass);
        assert!(headers.starts_with(b"Authentication-Results: mx.test;\r\n\tsmime=pass"));
    }

    #[test]
    fn reasons_are_quoted_and_come_first() {
        let fail = smime_clause(&Verdict::Fail {
            reason: "digest \"mismatch\";\r\nX: y".into(),
        });
        let field = authres::header("mx", &[fail]);
        assert_eq!(
            field,
            "Authentication-Results: mx;\r\n\tsmime=fail reason=\"digest \\\"mismatch\\\";X: y\" body.smime-part=1\r\n"
        );
        let unknown = clause(
            openpgp::METHOD,
            &Verdict::UnknownSigner {
                signer: "ABCD".into(),
            },
            |_| vec![("header.from", "b@example.net".into())],
        );
        assert_eq!(unknown.result, "neutral");
        assert_eq!(
            unknown.properties[1],
            ("header.from", "b@example.net".into())
        );
    }

    #[test]
    fn the_from_address() {
        assert_eq!(
            header_from(b"From: Bob <Bob@Example.NET>\r\nSubject: x\r\n\r\nbody").as_deref(),
            Some("bob@example.net")
        );
        assert_eq!(header_from(b"Subject: x\r\n\r\nbody"), None);
    }
}
