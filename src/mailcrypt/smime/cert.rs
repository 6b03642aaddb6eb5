//! A user's recipient certificate: read (PEM or DER), bounded, and checked for what sealing
//! needs — valid now, meant for e-mail encryption, an RSA key, one of the user's addresses.

use std::time::{SystemTime, UNIX_EPOCH};

use x509_cert::der::asn1::Ia5StringRef;
use x509_cert::der::oid::ObjectIdentifier;
use x509_cert::der::{Decode, EncodePem};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{ExtendedKeyUsage, KeyUsage, SubjectAltName};
use x509_cert::Certificate;

use super::Cert;
use crate::mailcrypt::KeyError;

/// Certificates larger than this are refused: a user certificate is a few KiB.
pub const CERT_BYTES_MAX: usize = 64 * 1024;

pub(super) const RSA_ENCRYPTION: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.15");
const SUBJECT_ALT_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.17");
const EXT_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37");
const ANY_EXTENDED_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37.0");
pub(super) const EMAIL_PROTECTION: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.4");
/// PKCS #9 emailAddress in the subject name (legacy, still set by many CAs).
const EMAIL_ADDRESS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.1");

/// RSA keys shorter than this are refused (RFC 8551 §4.1: 2048 bits at least).
const RSA_BITS_MIN: usize = 2048;

/// See [`super::parse_cert`].
pub fn parse_cert(bytes: &[u8], addresses: &[String], now: SystemTime) -> Result<Cert, KeyError> {
    if bytes.len() > CERT_BYTES_MAX {
        return Err(KeyError::TooLarge(bytes.len(), CERT_BYTES_MAX));
    }
    let der = certificate_der(bytes)?;
    let certificate =
        Certificate::from_der(&der).map_err(|e| KeyError::Unreadable(format!("X.509: {e}")))?;
    let tbs = &certificate.tbs_certificate;
    if tbs.version != x509_cert::Version::V3 {
        return Err(KeyError::Unsupported(
            "only X.509 version 3 certificates".into(),
        ));
    }

    let now_secs = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let not_before = tbs.validity.not_before.to_unix_duration().as_secs();
    let not_after = tbs.validity.not_after.to_unix_duration().as_secs();
    if now_secs < not_before {
        return Err(KeyError::Expired(format!(
            "not valid before {}",
            tbs.validity.not_before
        )));
    }
    if now_secs > not_after {
        return Err(KeyError::Expired(format!(
            "expired {}",
            tbs.validity.not_after
        )));
    }

    // The key type first: an EC certificate's usage is keyAgreement, and what is missing
    // for it is support, not the right usage.
    check_key(&certificate)?;
    check_usage(&certificate)?;

    let names = email_addresses(&certificate)?;
    let matches = names
        .iter()
        .any(|name| addresses.iter().any(|a| a.eq_ignore_ascii_case(name)));
    if !matches {
        let shown = if names.is_empty() {
            "it has no e-mail address".to_string()
        } else {
            format!("it names {}", names.join(", "))
        };
        return Err(KeyError::NoMatchingAddress(shown));
    }

    let pem = certificate
        .to_pem(x509_cert::der::pem::LineEnding::LF)
        .map_err(|e| KeyError::Unreadable(format!("PEM: {e}")))?;
    Ok(Cert {
        addresses: names,
        fingerprint: upper_hex(&sha256(&der)),
        not_after,
        pem,
        certificate: Box::new(certificate),
    })
}

/// The DER of the one certificate in `bytes`: PEM (the first `CERTIFICATE` block; any
/// `PRIVATE KEY` block is refused) or DER as it is.
fn certificate_der(bytes: &[u8]) -> Result<Vec<u8>, KeyError> {
    let Some(start) = find(bytes, b"-----BEGIN ") else {
        if bytes.first() == Some(&0x30) {
            return Ok(bytes.to_vec());
        }
        return Err(KeyError::Unreadable(
            "neither PEM nor DER X.509 certificate".into(),
        ));
    };
    // Any private key anywhere in the input is refused, even next to a certificate: the
    // user pasted or uploaded something that must not be stored.
    if find(bytes, b"PRIVATE KEY-----").is_some() {
        return Err(KeyError::SecretKey);
    }
    let block = &bytes[start..];
    let Some(begin) = find(block, b"-----BEGIN CERTIFICATE-----") else {
        return Err(KeyError::Unreadable(
            "no CERTIFICATE block in the PEM".into(),
        ));
    };
    let block = &block[begin..];
    let end_marker = b"-----END CERTIFICATE-----";
    let Some(end) = find(block, end_marker) else {
        return Err(KeyError::Unreadable("the PEM block is not closed".into()));
    };
    let (label, der) = x509_cert::der::pem::decode_vec(&block[..end + end_marker.len()])
        .map_err(|e| KeyError::Unreadable(format!("PEM: {e}")))?;
    if label != "CERTIFICATE" {
        return Err(KeyError::Unreadable(format!("PEM label {label}")));
    }
    Ok(der)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(haystack, needle)
}

/// RFC 8550 §4.4: key usage, if present, must allow key encipherment (RSA key transport);
/// extended key usage, if present, must include emailProtection or anyExtendedKeyUsage.
fn check_usage(certificate: &Certificate) -> Result<(), KeyError> {
    for ext in extensions(certificate) {
        if ext.extn_id == KEY_USAGE {
            let usage = KeyUsage::from_der(ext.extn_value.as_bytes())
                .map_err(|e| KeyError::Unreadable(format!("key usage: {e}")))?;
            if !usage.key_encipherment() {
                return Err(KeyError::WrongUsage(
                    "its key usage does not allow key encipherment".into(),
                ));
            }
        } else if ext.extn_id == EXT_KEY_USAGE {
            let usage = ExtendedKeyUsage::from_der(ext.extn_value.as_bytes())
                .map_err(|e| KeyError::Unreadable(format!("extended key usage: {e}")))?;
            if !usage
                .0
                .iter()
                .any(|oid| *oid == EMAIL_PROTECTION || *oid == ANY_EXTENDED_KEY_USAGE)
            {
                return Err(KeyError::WrongUsage(
                    "its extended key usage lacks emailProtection".into(),
                ));
            }
        }
    }
    Ok(())
}

/// Does the certificate carry extended key usage with emailProtection or
/// anyExtendedKeyUsage? A signer's certificate must (RFC 8550 §4.4 allows its absence;
/// requiring it keeps TLS and code-signing certificates from counting as mail signers).
pub(super) fn has_email_protection(certificate: &Certificate) -> bool {
    extensions(certificate)
        .filter(|ext| ext.extn_id == EXT_KEY_USAGE)
        .any(|ext| {
            ExtendedKeyUsage::from_der(ext.extn_value.as_bytes()).is_ok_and(|usage| {
                usage
                    .0
                    .iter()
                    .any(|oid| *oid == EMAIL_PROTECTION || *oid == ANY_EXTENDED_KEY_USAGE)
            })
        })
}

/// Only RSA key transport (RFC 8551 §2.3) is built; ECDH key agreement is not.
fn check_key(certificate: &Certificate) -> Result<(), KeyError> {
    let spki = &certificate.tbs_certificate.subject_public_key_info;
    if spki.algorithm.oid == EC_PUBLIC_KEY {
        return Err(KeyError::Unsupported(
            "an EC key: sealing is built for RSA key transport only, not EC key agreement".into(),
        ));
    }
    if spki.algorithm.oid != RSA_ENCRYPTION {
        return Err(KeyError::Unsupported(format!(
            "a {} key: sealing is built for RSA key transport only",
            spki.algorithm.oid
        )));
    }
    let key = rsa_public_key(certificate)
        .map_err(|e| KeyError::Unreadable(format!("RSA public key: {e}")))?;
    let bits = rsa::traits::PublicKeyParts::size(&key) * 8;
    if bits < RSA_BITS_MIN {
        return Err(KeyError::Unsupported(format!(
            "a {bits}-bit RSA key (at least {RSA_BITS_MIN})"
        )));
    }
    Ok(())
}

pub(super) fn rsa_public_key(certificate: &Certificate) -> Result<rsa::RsaPublicKey, String> {
    use rsa::pkcs1::DecodeRsaPublicKey;
    let spki = &certificate.tbs_certificate.subject_public_key_info;
    let bits = spki
        .subject_public_key
        .as_bytes()
        .ok_or_else(|| "unaligned bit string".to_string())?;
    rsa::RsaPublicKey::from_pkcs1_der(bits).map_err(|e| e.to_string())
}

fn extensions(certificate: &Certificate) -> impl Iterator<Item = &x509_cert::ext::Extension> {
    certificate
        .tbs_certificate
        .extensions
        .iter()
        .flat_map(|exts| exts.iter())
}

/// The certificate's e-mail addresses, lower case, deduplicated: SAN rfc822Name entries,
/// then the subject's emailAddress attributes.
pub(super) fn email_addresses(certificate: &Certificate) -> Result<Vec<String>, KeyError> {
    let mut names: Vec<String> = Vec::new();
    let mut push = |name: &str| {
        let name = name.to_ascii_lowercase();
        if !names.contains(&name) {
            names.push(name);
        }
    };
    for ext in extensions(certificate) {
        if ext.extn_id == SUBJECT_ALT_NAME {
            let san = SubjectAltName::from_der(ext.extn_value.as_bytes())
                .map_err(|e| KeyError::Unreadable(format!("subject alternative name: {e}")))?;
            for name in &san.0 {
                if let GeneralName::Rfc822Name(email) = name {
                    push(email.as_str());
                }
            }
        }
    }
    for rdn in certificate.tbs_certificate.subject.0.iter() {
        for atv in rdn.0.iter() {
            if atv.oid == EMAIL_ADDRESS {
                if let Ok(email) = atv.value.decode_as::<Ia5StringRef<'_>>() {
                    push(email.as_str());
                }
            }
        }
    }
    Ok(names)
}

pub(super) fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

fn upper_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02X}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_and_size_are_refused_before_parsing() {
        let now = SystemTime::now();
        assert!(matches!(
            parse_cert(b"hello", &[], now),
            Err(KeyError::Unreadable(_))
        ));
        assert!(matches!(
            parse_cert(&[0x30, 0x03, 0x02, 0x01, 0x00], &[], now),
            Err(KeyError::Unreadable(_))
        ));
        let big = vec![b'A'; CERT_BYTES_MAX + 1];
        assert_eq!(
            parse_cert(&big, &[], now).unwrap_err(),
            KeyError::TooLarge(CERT_BYTES_MAX + 1, CERT_BYTES_MAX)
        );
    }

    #[test]
    fn a_private_key_block_is_refused() {
        let pem = b"-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n";
        assert_eq!(
            parse_cert(pem, &[], SystemTime::now()).unwrap_err(),
            KeyError::SecretKey
        );
        let rsa = b"-----BEGIN RSA PRIVATE KEY-----\nMIIB\n-----END RSA PRIVATE KEY-----\n";
        assert_eq!(
            parse_cert(rsa, &[], SystemTime::now()).unwrap_err(),
            KeyError::SecretKey
        );
    }

    #[test]
    fn hex_is_upper_case() {
        assert_eq!(upper_hex(&[0x0a, 0xff, 0x00]), "0AFF00");
    }
}
