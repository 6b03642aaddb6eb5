//! S/MIME 4.0 (RFC 8551) over RustCrypto's `cms` and `x509-cert`: a user's certificate,
//! enveloped-data sealing, and signed-data checks against a trust store.

mod cert;
mod seal;
mod verify;

use std::time::SystemTime;

use super::{KeyError, SealError, Verdict};

pub use cert::CERT_BYTES_MAX;

/// A checked recipient certificate.
#[derive(Clone, Debug)]
pub struct Cert {
    /// The subject's e-mail addresses (SAN rfc822Name, lower case).
    pub addresses: Vec<String>,
    /// SHA-256 of the DER certificate, upper-case hex.
    pub fingerprint: String,
    /// Not after, Unix seconds.
    pub not_after: u64,
    /// The certificate, PEM.
    pub pem: String,
    /// The parsed certificate sealing encrypts to (boxed: it is large next to the OpenPGP
    /// key in `PublicKey`).
    certificate: Box<x509_cert::Certificate>,
}

/// Parses and checks a certificate (PEM or DER) for a user with `addresses`.
pub fn parse_cert(bytes: &[u8], addresses: &[String], now: SystemTime) -> Result<Cert, KeyError> {
    cert::parse_cert(bytes, addresses, now)
}

/// `message` sealed to `cert` as `application/pkcs7-mime; smime-type=enveloped-data`.
pub fn seal(cert: &Cert, message: &[u8]) -> Result<Vec<u8>, SealError> {
    seal::seal(cert, message)
}

/// The roots signatures are checked against: the web PKI roots plus an operator's CA file.
#[derive(Clone, Debug, Default)]
pub struct TrustStore {
    /// DER certificates of the extra anchors (`smime.ca_file`).
    pub extra_anchors: Vec<Vec<u8>>,
}

impl TrustStore {
    /// The web PKI roots plus the certificates of a PEM file's contents.
    pub fn with_pem(pem: &[u8]) -> Result<TrustStore, KeyError> {
        TrustStore::from_pem(pem)
    }
}

/// Checks an S/MIME signed message: signature, then chain to `trust`, at `now`.
pub fn verify(message: &[u8], trust: &TrustStore, now: SystemTime) -> Verdict {
    verify::verify(message, trust, now)
}

/// The RFC 7281 `smime` result for `Authentication-Results` (RFC 8601 §2.7):
/// - `pass`: the signature verifies and the chain reaches a trust anchor for e-mail
///   protection;
/// - `fail`: the signature or the content's digest does not match (the message changed, or
///   a signature algorithm that must not be accepted, SHA-1);
/// - `policy`: the signature verifies but local policy rejects the signer — no chain to an
///   anchor, an expired certificate, one not for e-mail protection (RFC 7281 §3.2);
/// - `neutral`: no key to judge with (an unknown signer; S/MIME carries its certificate, so
///   only OpenPGP verdicts come here);
/// - `permerror`: the signature structure is malformed and will stay so;
/// - `temperror`: a lookup failed for now and may succeed later.
pub fn verdict_result(verdict: &Verdict) -> &'static str {
    match verdict {
        Verdict::Pass { .. } => "pass",
        Verdict::Fail { .. } => "fail",
        Verdict::Untrusted { .. } => "policy",
        Verdict::UnknownSigner { .. } => "neutral",
        Verdict::PermError { .. } => "permerror",
        Verdict::TempError { .. } => "temperror",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_verdict_has_its_rfc_7281_result() {
        let s = String::new;
        let cases = [
            (Verdict::Pass { signer: s() }, "pass"),
            (Verdict::Fail { reason: s() }, "fail"),
            (
                Verdict::Untrusted {
                    signer: s(),
                    reason: s(),
                },
                "policy",
            ),
            (Verdict::UnknownSigner { signer: s() }, "neutral"),
            (Verdict::PermError { reason: s() }, "permerror"),
            (Verdict::TempError { reason: s() }, "temperror"),
        ];
        for (verdict, result) in cases {
            assert_eq!(verdict_result(&verdict), result);
        }
    }
}
