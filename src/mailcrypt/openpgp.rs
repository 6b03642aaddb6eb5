//! OpenPGP (RFC 9580, v4 and v6 keys) over rPGP: a user's public key, PGP/MIME sealing
//! (RFC 3156 §4) and PGP/MIME signature checks (RFC 3156 §5).

use std::time::SystemTime;

use super::{KeyError, SealError, Verdict};

/// The `Authentication-Results` method name for OpenPGP signature checks (no method is
/// registered for OpenPGP; see the module docs for the choice).
pub const METHOD: &str = "x-openpgp";

/// A checked OpenPGP public key (transferable public key).
#[derive(Clone, Debug)]
pub struct Key {
    /// The primary key's fingerprint, upper-case hex.
    pub fingerprint: String,
    /// The user id addresses it carries (lower case).
    pub addresses: Vec<String>,
    /// The key, ASCII-armoured, as served over WKD in binary by [`Key::binary`].
    pub armored: String,
}

impl Key {
    /// The key in binary (what WKD serves).
    pub fn binary(&self) -> Vec<u8> {
        Vec::new()
    }
}

/// Parses and checks a public key (armoured or binary) for a user with `addresses`.
pub fn parse_key(bytes: &[u8], addresses: &[String], now: SystemTime) -> Result<Key, KeyError> {
    let _ = (bytes, addresses, now);
    Err(KeyError::Unsupported("OpenPGP is not built yet".into()))
}

/// `message` sealed to `key` as PGP/MIME.
pub fn seal(key: &Key, message: &[u8]) -> Result<Vec<u8>, SealError> {
    let _ = (key, message);
    Err(SealError::Crypto("OpenPGP is not built yet".into()))
}

/// The issuer fingerprints or key ids a PGP/MIME signed message names (upper-case hex), so
/// the caller can find keys before [`verify`].
pub fn signers(message: &[u8]) -> Vec<String> {
    let _ = message;
    Vec::new()
}

/// Checks a PGP/MIME signed message against `keys` (those of the relay's own directory and
/// of the sender domain's WKD the caller found).
pub fn verify(message: &[u8], keys: &[Key], now: SystemTime) -> Verdict {
    let _ = (message, keys, now);
    Verdict::PermError {
        reason: "OpenPGP is not built yet".into(),
    }
}
