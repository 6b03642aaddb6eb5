//! OpenPGP (RFC 9580, v4 and v6 keys) over rPGP: a user's public key, PGP/MIME sealing
//! (RFC 3156 §4) and PGP/MIME signature checks (RFC 3156 §5).
//!
//! The `Authentication-Results` method name ([`METHOD`]): RFC 8601 §2.7.6 has extension
//! methods registered in IANA's "Email Authentication Methods" registry, whose rule is
//! Specification Required. That registry lists `smime` (RFC 7281) but no OpenPGP method,
//! and there is no specification to register one with; taking an unregistered plain name
//! such as `pgp` would squat on a future registration with possibly other semantics. So
//! the name is visibly private: `x-openpgp`. Consumers ignore methods they do not know.

mod cert;
mod seal;
mod signed;

use std::time::{SystemTime, UNIX_EPOCH};

use pgp::{
    composed::{ArmorOptions, Deserializable, SignedPublicKey},
    ser::Serialize,
    types::KeyDetails,
};

use super::{KeyError, SealError};

pub use seal::seal;
pub use signed::{signers, verify};

/// The `Authentication-Results` method name for OpenPGP signature checks (no method is
/// registered for OpenPGP; see the module docs for the choice).
pub const METHOD: &str = "x-openpgp";

/// Largest key accepted, in octets (armoured or binary).
pub const KEY_BYTES_MAX: usize = 1 << 20;

/// A checked OpenPGP public key (transferable public key).
#[derive(Clone, Debug)]
pub struct Key {
    /// The primary key's fingerprint, upper-case hex.
    pub fingerprint: String,
    /// The user id addresses it carries (lower case).
    pub addresses: Vec<String>,
    /// The key, ASCII-armoured, as served over WKD in binary by [`Key::binary`].
    pub armored: String,
    /// Shared: a key is cloned into every delivery that seals to it.
    cert: std::sync::Arc<SignedPublicKey>,
    /// The components that encrypt (checked at [`parse_key`]'s `now`).
    encrypt: Vec<cert::Usable>,
    /// The components that sign.
    sign: Vec<cert::Usable>,
}

impl Key {
    /// The key in binary (what WKD serves).
    pub fn binary(&self) -> Vec<u8> {
        // Serializing a key that was parsed cannot fail short of allocation.
        self.cert.to_bytes().unwrap_or_default()
    }

    /// Does `issuer` (upper- or lower-case hex, as [`signers`] gives it) name this key's
    /// primary or one of its subkeys, by fingerprint or key id? Signatures made by a
    /// signing subkey name the subkey, not [`Key::fingerprint`].
    pub fn matches_issuer(&self, issuer: &str) -> bool {
        let is = |fp: &[u8], id: &[u8]| {
            issuer.eq_ignore_ascii_case(&hex_upper(fp))
                || issuer.eq_ignore_ascii_case(&hex_upper(id))
        };
        let p = &self.cert.primary_key;
        is(p.fingerprint().as_bytes(), p.legacy_key_id().as_ref())
            || self.cert.public_subkeys.iter().any(|s| {
                is(
                    s.key.fingerprint().as_bytes(),
                    s.key.legacy_key_id().as_ref(),
                )
            })
    }
}

/// Upper-case hex of `bytes`.
pub(crate) fn hex_upper(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02X}");
    }
    s
}

fn unix(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Is `bytes` an ASCII armour, possibly after some text (a pasted mail or web page)?
/// Binary packets start with an octet whose high bit is set, text never does.
fn is_armored(bytes: &[u8]) -> bool {
    bytes.first().is_some_and(|b| b & 0x80 == 0)
        && memchr::memmem::find(bytes, b"-----BEGIN PGP ").is_some()
}

/// The packet tag of a binary packet header's first octet (RFC 9580 §4.2).
fn first_tag(bytes: &[u8]) -> Option<u8> {
    let b = *bytes.first()?;
    if b & 0x80 == 0 {
        return None;
    }
    Some(if b & 0x40 != 0 {
        b & 0x3f
    } else {
        (b >> 2) & 0x0f
    })
}

/// Tag 5 (Secret-Key) or 7 (Secret-Subkey).
fn is_secret_tag(tag: u8) -> bool {
    tag == 5 || tag == 7
}

/// Parses and checks a public key (armoured or binary) for a user with `addresses`.
pub fn parse_key(bytes: &[u8], addresses: &[String], now: SystemTime) -> Result<Key, KeyError> {
    if bytes.len() > KEY_BYTES_MAX {
        return Err(KeyError::TooLarge(bytes.len(), KEY_BYTES_MAX));
    }
    let unreadable = |e: pgp::errors::Error| KeyError::Unreadable(e.to_string());
    let cert = if is_armored(bytes) {
        match pgp::composed::Any::from_armor(bytes).map_err(unreadable)?.0 {
            pgp::composed::Any::PublicKey(key) => key,
            pgp::composed::Any::SecretKey(_) => return Err(KeyError::SecretKey),
            _ => {
                return Err(KeyError::Unreadable(
                    "the armour holds no public key".into(),
                ))
            }
        }
    } else {
        match first_tag(bytes) {
            Some(tag) if is_secret_tag(tag) => return Err(KeyError::SecretKey),
            Some(6) => {}
            _ => return Err(KeyError::Unreadable("no public key packet first".into())),
        }
        let mut keys = SignedPublicKey::from_bytes_many(bytes).map_err(unreadable)?;
        let key = keys
            .next()
            .ok_or_else(|| KeyError::Unreadable("no key".into()))?
            .map_err(unreadable)?;
        if keys.next().is_some() {
            return Err(KeyError::Unreadable("more than one key".into()));
        }
        key
    };
    let checked = cert::check(&cert, addresses, unix(now))?;
    let armored = cert
        .to_armored_string(ArmorOptions {
            headers: None,
            // RFC 9580 §6.1: no CRC-24 with v6 keys.
            include_checksum: cert.primary_key.version() != pgp::types::KeyVersion::V6,
        })
        .map_err(unreadable)?;
    Ok(Key {
        fingerprint: hex_upper(cert.fingerprint().as_bytes()),
        addresses: checked.addresses,
        armored,
        cert: std::sync::Arc::new(cert),
        encrypt: checked.encrypt,
        sign: checked.sign,
    })
}

/// The seal error for an rPGP failure.
fn crypto(e: pgp::errors::Error) -> SealError {
    SealError::Crypto(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_tags_of_both_header_formats() {
        // Old format: 0b10_0110_01 is tag 6 with a two-octet length.
        assert_eq!(first_tag(&[0x99]), Some(6));
        assert_eq!(first_tag(&[0x95]), Some(5));
        // New format: 0b11_000110.
        assert_eq!(first_tag(&[0xc6]), Some(6));
        assert_eq!(first_tag(&[0xc5]), Some(5));
        assert_eq!(first_tag(&[0x41]), None);
        assert_eq!(first_tag(&[]), None);
    }

    #[test]
    fn too_large_garbage_and_secret_markers_are_refused_before_parsing() {
        let now = SystemTime::now();
        let big = vec![b'x'; KEY_BYTES_MAX + 1];
        assert_eq!(
            parse_key(&big, &[], now).unwrap_err(),
            KeyError::TooLarge(KEY_BYTES_MAX + 1, KEY_BYTES_MAX)
        );
        assert!(matches!(
            parse_key(b"hello", &[], now),
            Err(KeyError::Unreadable(_))
        ));
        assert_eq!(
            parse_key(&[0xc5, 0x01, 0x04], &[], now).unwrap_err(),
            KeyError::SecretKey
        );
        assert!(matches!(
            parse_key(b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nAAAA\n-----END PGP PUBLIC KEY BLOCK-----\n", &[], now),
            Err(KeyError::Unreadable(_))
        ));
    }

    #[test]
    fn armour_is_found_after_text_and_binary_is_not_taken_for_it() {
        assert!(is_armored(b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n"));
        assert!(is_armored(
            b"my key:\r\n\r\n-----BEGIN PGP PUBLIC KEY BLOCK-----\n"
        ));
        assert!(!is_armored(b"\x99\x00-----BEGIN PGP PUBLIC KEY BLOCK-----"));
        assert!(!is_armored(b"no armour here"));
        assert!(!is_armored(b""));
    }

    #[test]
    fn hex_is_upper_case() {
        assert_eq!(hex_upper(&[0x0a, 0xbc, 0xff]), "0ABCFF");
    }
}
