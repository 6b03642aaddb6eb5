//! S/MIME 4.0 (RFC 8551) over RustCrypto's `cms` and `x509-cert`: a user's certificate,
//! enveloped-data sealing, and signed-data checks against a trust store.

mod cert;
mod seal;

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
    /// The parsed certificate sealing encrypts to.
    certificate: x509_cert::Certificate,
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
        let _ = pem;
        Ok(TrustStore::default())
    }
}

/// Checks an S/MIME signed message: signature, then chain to `trust`, at `now`.
pub fn verify(message: &[u8], trust: &TrustStore, now: SystemTime) -> Verdict {
    let _ = (message, trust, now);
    Verdict::PermError {
        reason: "S/MIME is not built yet".into(),
    }
}
