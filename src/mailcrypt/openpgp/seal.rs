//! PGP/MIME sealing (RFC 3156 §4): the clear header of [`entity::split`], then a
//! `multipart/encrypted` body whose second part is the armoured OpenPGP message holding the
//! encrypted entity.
//!
//! v4 keys get SEIPDv1 (what every v4 implementation reads); v6 keys get SEIPDv2 with
//! AES-256 and OCB, because RFC 9580 §5.1 ties v6 keys to v6 PKESKs, which only precede
//! SEIPDv2, and OCB is the AEAD mode every implementation must support (§5.13.2).

use pgp::{
    composed::{ArmorOptions, MessageBuilder},
    crypto::{aead::AeadAlgorithm, aead::ChunkSize, sym::SymmetricKeyAlgorithm},
    types::{KeyDetails, KeyVersion},
};
use rand_core::{OsRng, RngCore};

use super::{cert::Part, crypto, hex_upper, Key};
use crate::mailcrypt::{entity, SealError};

/// A boundary that no armour line can start with: armour lines begin with a base64
/// character, `=` followed by base64 (the checksum) or `-----`; `--=_` is none of them.
pub(crate) fn boundary() -> String {
    let mut random = [0u8; 16];
    OsRng.fill_bytes(&mut random);
    format!("=_openpgp_{}", hex_upper(&random))
}

/// `bytes` with every line end CRLF.
pub(crate) fn crlf(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 32);
    entity::extend_crlf(&mut out, bytes);
    out
}

/// The armoured OpenPGP message encrypting `plain` to every encryption component of `key`.
fn encrypt(key: &Key, plain: Vec<u8>) -> Result<String, SealError> {
    if key.encrypt.is_empty() {
        return Err(SealError::Crypto("the key has no encryption subkey".into()));
    }
    let cert = &key.cert;
    let mut rng = OsRng;
    let builder = MessageBuilder::from_bytes("", plain);
    if cert.primary_key.version() == KeyVersion::V6 {
        let mut b = builder.seipd_v2(
            &mut rng,
            SymmetricKeyAlgorithm::AES256,
            AeadAlgorithm::Ocb,
            ChunkSize::C256KiB,
        );
        for usable in &key.encrypt {
            match usable.part {
                Part::Primary => b.encrypt_to_key(&mut rng, &cert.primary_key),
                Part::Subkey(i) => b.encrypt_to_key(&mut rng, &cert.public_subkeys[i]),
            }
            .map_err(crypto)?;
        }
        // RFC 9580 §6.1: no CRC-24 on armour around SEIPDv2.
        let opts = ArmorOptions {
            headers: None,
            include_checksum: false,
        };
        b.to_armored_string(rng, opts).map_err(crypto)
    } else {
        let mut b = builder.seipd_v1(&mut rng, SymmetricKeyAlgorithm::AES256);
        for usable in &key.encrypt {
            match usable.part {
                Part::Primary => b.encrypt_to_key(&mut rng, &cert.primary_key),
                Part::Subkey(i) => b.encrypt_to_key(&mut rng, &cert.public_subkeys[i]),
            }
            .map_err(crypto)?;
        }
        b.to_armored_string(rng, ArmorOptions::default())
            .map_err(crypto)
    }
}

/// `message` sealed to `key` as PGP/MIME.
pub fn seal(key: &Key, message: &[u8]) -> Result<Vec<u8>, SealError> {
    let split = entity::split(message);
    let armour = encrypt(key, split.inner)?;
    Ok(assemble(&split.outer, armour.as_bytes(), &boundary()))
}

/// The sealed message around `armour`.
pub(crate) fn assemble(outer: &[u8], armour: &[u8], boundary: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(outer.len() + armour.len() + armour.len() / 32 + 600);
    out.extend_from_slice(outer);
    out.extend_from_slice(b"MIME-Version: 1.0\r\n");
    out.extend_from_slice(
        format!(
            "Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\";\r\n \
             boundary=\"{boundary}\"\r\n\r\n\
             This is an OpenPGP/MIME encrypted message (RFC 3156).\r\n\
             --{boundary}\r\n\
             Content-Type: application/pgp-encrypted\r\n\
             Content-Description: PGP/MIME version identification\r\n\r\n\
             Version: 1\r\n\r\n\
             --{boundary}\r\n\
             Content-Type: application/octet-stream; name=\"encrypted.asc\"\r\n\
             Content-Description: OpenPGP encrypted message\r\n\
             Content-Disposition: inline; filename=\"encrypted.asc\"\r\n\r\n"
        )
        .as_bytes(),
    );
    entity::extend_crlf(&mut out, armour);
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crlf_makes_every_line_end_crlf() {
        assert_eq!(crlf(b"a\nb\r\nc\rd\r"), b"a\r\nb\r\nc\r\nd\r\n".to_vec());
        assert_eq!(crlf(b""), b"".to_vec());
    }

    #[test]
    fn boundaries_are_random_and_never_start_an_armour_line() {
        let (a, b) = (boundary(), boundary());
        assert_ne!(a, b);
        assert!(a.starts_with("=_"));
    }

    #[test]
    fn the_layout_is_rfc_3156_section_4() {
        let out = assemble(
            b"From: a@example.org\r\n",
            b"-----BEGIN PGP MESSAGE-----\n\nwV4D\n-----END PGP MESSAGE-----\n",
            "=_b",
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with(
            "From: a@example.org\r\nMIME-Version: 1.0\r\nContent-Type: multipart/encrypted; \
             protocol=\"application/pgp-encrypted\";\r\n boundary=\"=_b\"\r\n\r\n"
        ));
        let parts: Vec<&str> = text.split("\r\n--=_b").collect();
        assert_eq!(parts.len(), 4, "{text}");
        assert!(parts[1].contains("Content-Type: application/pgp-encrypted\r\n"));
        assert!(parts[1].ends_with("\r\n\r\nVersion: 1\r\n"));
        assert!(parts[2].contains("\r\n\r\n-----BEGIN PGP MESSAGE-----\r\n\r\nwV4D\r\n"));
        assert_eq!(parts[3], "--\r\n");
        assert!(!text.replace("\r\n", "").contains('\n'));
    }
}
