//! Sealing: the message's MIME entity as S/MIME 4.0 enveloped data (RFC 8551 §3.3),
//! AES-256-CBC content encryption, RSA key transport to the recipient's certificate.
//!
//! Key transport is RSAES-PKCS1-v1_5 (RFC 8551 §2.3 still lists it; RFC 5652 §6.2.1): the
//! stored mail must open in GnuPG's gpgsm 2.2, which does not decrypt RSAES-OAEP (checked
//! with 2.2.40: openssl 3.0 decrypts an OAEP envelope, gpgsm answers "No secret key").

use cms::builder::{
    ContentEncryptionAlgorithm, EnvelopedDataBuilder, KeyEncryptionInfo,
    KeyTransRecipientInfoBuilder,
};
use cms::cert::IssuerAndSerialNumber;
use cms::content_info::ContentInfo;
use cms::enveloped_data::RecipientIdentifier;
use rand_core::OsRng;
use x509_cert::der::oid::ObjectIdentifier;
use x509_cert::der::{Any, Encode};

use super::{cert, Cert};
use crate::mailcrypt::{entity, SealError};

const ID_ENVELOPED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.3");

/// Base64 line length of the body (RFC 2045 §6.8: at most 76).
const LINE: usize = 76;

/// See [`super::seal`].
pub fn seal(cert: &Cert, message: &[u8]) -> Result<Vec<u8>, SealError> {
    let split = entity::split(message);
    let der = envelope(cert, &split.inner)?;
    let encoded = base64_simd::STANDARD.encode_to_string(&der);

    let mut out = Vec::with_capacity(split.outer.len() + 256 + encoded.len() * 78 / 76);
    out.extend_from_slice(&split.outer);
    out.extend_from_slice(
        b"MIME-Version: 1.0\r\n\
Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name=\"smime.p7m\"\r\n\
Content-Transfer-Encoding: base64\r\n\
Content-Disposition: attachment; filename=\"smime.p7m\"\r\n\r\n",
    );
    for line in encoded.as_bytes().chunks(LINE) {
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    Ok(out)
}

/// The DER `ContentInfo` holding `EnvelopedData` of `content` to `cert`.
pub(super) fn envelope(cert: &Cert, content: &[u8]) -> Result<Vec<u8>, SealError> {
    let crypto = |what: &str, e: &dyn std::fmt::Display| SealError::Crypto(format!("{what}: {e}"));
    let tbs = &cert.certificate.tbs_certificate;
    let public_key = cert::rsa_public_key(&cert.certificate)
        .map_err(|e| crypto("the certificate's RSA key", &e))?;
    let rid = RecipientIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
        issuer: tbs.issuer.clone(),
        serial_number: tbs.serial_number.clone(),
    });
    let mut key_rng = OsRng;
    let recipient =
        KeyTransRecipientInfoBuilder::new(rid, KeyEncryptionInfo::Rsa(public_key), &mut key_rng)
            .map_err(|e| crypto("recipient", &e))?;
    let mut builder =
        EnvelopedDataBuilder::new(None, content, ContentEncryptionAlgorithm::Aes256Cbc, None)
            .map_err(|e| crypto("enveloped data", &e))?;
    builder
        .add_recipient_info(recipient)
        .map_err(|e| crypto("recipient", &e))?;
    let enveloped = builder
        .build_with_rng(&mut OsRng)
        .map_err(|e| crypto("enveloped data", &e))?;
    let content = Any::encode_from(&enveloped).map_err(|e| crypto("DER", &e))?;
    let info = ContentInfo {
        content_type: ID_ENVELOPED_DATA,
        content,
    };
    info.to_der().map_err(|e| crypto("DER", &e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cms::enveloped_data::{EnvelopedData, RecipientInfo};
    use x509_cert::der::Decode;

    /// A public RSA-2048 certificate for bench@example.test (its key was discarded).
    const CERT: &[u8] = include_bytes!("../../../benches/data/smime_rsa2048.pem");

    #[test]
    fn the_envelope_names_the_recipient_and_aes_256_cbc() {
        let cert = super::super::parse_cert(
            CERT,
            &["Bench@Example.test".into()],
            std::time::SystemTime::now(),
        )
        .expect("fixture");
        let message = b"From: a@example.org\r\nContent-Type: text/plain\r\n\r\nhi\r\n";
        let stored = seal(&cert, message).expect("seal");
        let (header, body) = stored.split_at(
            stored
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .expect("header")
                + 4,
        );
        assert!(header.starts_with(b"From: a@example.org\r\nMIME-Version: 1.0\r\n"));
        assert!(body.split(|&b| b == b'\n').all(|l| l.len() <= 77));
        let der = crate::mime::base64::decode(body).expect("base64");
        let info = ContentInfo::from_der(&der).expect("ContentInfo");
        assert_eq!(info.content_type, ID_ENVELOPED_DATA);
        let env: EnvelopedData = info.content.decode_as().expect("EnvelopedData");
        assert_eq!(
            env.encrypted_content.content_enc_alg.oid,
            ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.1.42")
        );
        // The entity is "Content-Type: text/plain\r\n\r\nhi\r\n" (32 octets): three blocks
        // after PKCS #7 padding.
        let encrypted = env.encrypted_content.encrypted_content.expect("content");
        assert_eq!(encrypted.as_bytes().len(), 48);
        assert_eq!(env.recip_infos.0.len(), 1);
        let Some(RecipientInfo::Ktri(ktri)) = env.recip_infos.0.get(0) else {
            panic!("key transport recipient");
        };
        let RecipientIdentifier::IssuerAndSerialNumber(id) = &ktri.rid else {
            panic!("issuer and serial number");
        };
        let tbs = &cert.certificate.tbs_certificate;
        assert_eq!(id.serial_number, tbs.serial_number);
        assert_eq!(id.issuer, tbs.issuer);
        assert_eq!(ktri.key_enc_alg.oid, cert::RSA_ENCRYPTION);
        assert_eq!(ktri.enc_key.as_bytes().len(), 256);
    }
}
