//! Checking an S/MIME signature (RFC 8551 §3.5, RFC 5652 §5.6): the signed content is cut
//! from the message (the first part of `multipart/signed`, or the content inside opaque
//! signed data), its digest compared with the signed `messageDigest` attribute, the
//! signature over the attributes checked with the signer's certificate, and only then the
//! certificate's chain to a trust anchor, for e-mail protection, at the given time.
//!
//! Exposure: the message comes from a network peer. Every structure is decoded with
//! bounds (the MIME parser's limits, DER lengths within the message) and every failure is
//! a verdict, never a panic.

use std::time::{SystemTime, UNIX_EPOCH};

use cms::content_info::ContentInfo;
use cms::signed_data::{SignedData, SignerIdentifier, SignerInfo};
use rustls::pki_types::{CertificateDer, SignatureVerificationAlgorithm, TrustAnchor, UnixTime};
use sha2::Digest;
use webpki::ring as algs;
use x509_cert::der::asn1::OctetString;
use x509_cert::der::oid::ObjectIdentifier;
use x509_cert::der::{Decode, Encode};
use x509_cert::ext::pkix::SubjectKeyIdentifier;
use x509_cert::Certificate;

use super::{cert, TrustStore};
use crate::mailcrypt::{KeyError, Verdict};
use crate::mime::header::{parse_block, ContentType, TransferEncoding};

const ID_SIGNED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2");
const ID_CONTENT_TYPE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.3");
const ID_MESSAGE_DIGEST: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.4");
const ID_SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
const ID_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
const ID_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.2");
const ID_SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.3");
const SUBJECT_KEY_IDENTIFIER: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.14");

/// emailProtection (1.3.6.1.5.5.7.3.4) and anyExtendedKeyUsage (2.5.29.37.0), as the DER
/// contents webpki compares extended key usages with.
const EMAIL_PROTECTION_DER: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x04];
const ANY_EKU_DER: &[u8] = &[0x55, 0x1d, 0x25, 0x00];

/// Header fields and octets looked at in the message and in its parts.
const FIELDS_MAX: usize = 1_000;
const HEADER_BYTES_MAX: usize = 256 * 1024;
/// `multipart/signed` has two parts; a few more are tolerated and ignored.
const PARTS_MAX: usize = 8;

/// The algorithms a chain's certificates may be signed with.
static CHAIN_ALGS: &[&dyn SignatureVerificationAlgorithm] = &[
    algs::ECDSA_P256_SHA256,
    algs::ECDSA_P256_SHA384,
    algs::ECDSA_P384_SHA256,
    algs::ECDSA_P384_SHA384,
    algs::ED25519,
    algs::RSA_PKCS1_2048_8192_SHA256,
    algs::RSA_PKCS1_2048_8192_SHA384,
    algs::RSA_PKCS1_2048_8192_SHA512,
    algs::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
    algs::RSA_PSS_2048_8192_SHA384_LEGACY_KEY,
    algs::RSA_PSS_2048_8192_SHA512_LEGACY_KEY,
];

impl TrustStore {
    /// See [`super::TrustStore::with_pem`].
    pub(super) fn from_pem(pem: &[u8]) -> Result<TrustStore, KeyError> {
        if memchr::memmem::find(pem, b"PRIVATE KEY-----").is_some() {
            return Err(KeyError::SecretKey);
        }
        let begin = b"-----BEGIN CERTIFICATE-----";
        let end = b"-----END CERTIFICATE-----";
        let mut extra_anchors = Vec::new();
        let mut rest = pem;
        while let Some(start) = memchr::memmem::find(rest, begin) {
            let block = &rest[start..];
            let stop = memchr::memmem::find(block, end)
                .ok_or_else(|| KeyError::Unreadable("a PEM block is not closed".into()))?
                + end.len();
            let (_, der) = x509_cert::der::pem::decode_vec(&block[..stop])
                .map_err(|e| KeyError::Unreadable(format!("PEM: {e}")))?;
            // Each anchor must be one webpki accepts, or the store would fail later.
            webpki::anchor_from_trusted_cert(&CertificateDer::from(der.as_slice()))
                .map_err(|e| KeyError::Unreadable(format!("trust anchor: {e}")))?;
            extra_anchors.push(der);
            rest = &block[stop..];
        }
        if extra_anchors.is_empty() {
            return Err(KeyError::Unreadable("no certificate in the PEM".into()));
        }
        Ok(TrustStore { extra_anchors })
    }

    /// The web PKI roots and the extra anchors.
    fn anchors(&self) -> Vec<TrustAnchor<'_>> {
        let mut anchors = webpki_roots::TLS_SERVER_ROOTS.to_vec();
        for der in &self.extra_anchors {
            // Checked in `from_pem`; one that fails (a store built by hand) is skipped.
            if let Ok(anchor) = webpki::anchor_from_trusted_cert(&CertificateDer::from(&der[..])) {
                anchors.push(anchor.to_owned());
            }
        }
        anchors
    }
}

/// See [`super::verify`].
pub fn verify(message: &[u8], trust: &TrustStore, now: SystemTime) -> Verdict {
    let (der, detached) = match signed_parts(message) {
        Ok(parts) => parts,
        Err(reason) => return Verdict::PermError { reason },
    };
    check(&der, detached.as_deref(), trust, now)
}

fn perm(reason: impl Into<String>) -> Verdict {
    Verdict::PermError {
        reason: reason.into(),
    }
}

/// The DER signed data and, for `multipart/signed`, the detached content (CRLF canonical).
fn signed_parts(message: &[u8]) -> Result<(Vec<u8>, Option<Vec<u8>>), String> {
    let mut fields = Vec::new();
    let block = parse_block(
        message,
        0..message.len(),
        HEADER_BYTES_MAX,
        FIELDS_MAX,
        &mut fields,
    )
    .map_err(|_| "the header is too large".to_string())?;
    let field = |name: &str| {
        fields
            .iter()
            .find(|f| f.is(message, name))
            .map(|f| &message[f.value.clone()])
    };
    let ct = field("Content-Type")
        .and_then(ContentType::parse)
        .ok_or("no Content-Type")?;
    let body = block.body_start.min(message.len())..message.len();
    if ct.is("multipart", "signed") {
        let boundary = ct.boundary().ok_or("multipart/signed without a boundary")?;
        let split = crate::mime::boundary::split(message, body, &boundary, PARTS_MAX)
            .map_err(|_| "too many parts".to_string())?;
        let [content, signature, ..] = split.parts.as_slice() else {
            return Err("multipart/signed without two parts".into());
        };
        let der = part_body(message, signature.clone(), "pkcs7-signature")?;
        Ok((der, Some(canonical(&message[content.clone()]))))
    } else if is_pkcs7(&ct, "pkcs7-mime") {
        let smime_type = ct.param("smime-type").map(|v| v.bytes.to_ascii_lowercase());
        if smime_type.as_deref().is_some_and(|t| t != b"signed-data") {
            return Err("not signed data".into());
        }
        let cte = field("Content-Transfer-Encoding")
            .map_or(TransferEncoding::SevenBit, TransferEncoding::parse);
        Ok((decode(&message[body], cte)?, None))
    } else {
        Err("not an S/MIME signed message".into())
    }
}

fn is_pkcs7(ct: &ContentType<'_>, sub: &str) -> bool {
    ct.is("application", sub) || ct.is("application", &format!("x-{sub}"))
}

/// The decoded body of the signature part, which must be `application/pkcs7-signature`.
fn part_body(message: &[u8], part: std::ops::Range<usize>, sub: &str) -> Result<Vec<u8>, String> {
    let mut fields = Vec::new();
    let block = parse_block(
        message,
        part.clone(),
        HEADER_BYTES_MAX,
        FIELDS_MAX,
        &mut fields,
    )
    .map_err(|_| "the signature part's header is too large".to_string())?;
    let field = |name: &str| {
        fields
            .iter()
            .find(|f| f.is(message, name))
            .map(|f| &message[f.value.clone()])
    };
    let is_signature = field("Content-Type")
        .and_then(ContentType::parse)
        .is_some_and(|ct| is_pkcs7(&ct, sub));
    if !is_signature {
        return Err(format!("the second part is not application/{sub}"));
    }
    let cte = field("Content-Transfer-Encoding")
        .map_or(TransferEncoding::SevenBit, TransferEncoding::parse);
    decode(&message[block.body_start.min(part.end)..part.end], cte)
}

fn decode(body: &[u8], cte: TransferEncoding) -> Result<Vec<u8>, String> {
    match cte {
        TransferEncoding::Base64 => {
            crate::mime::base64::decode(body).map_err(|_| "bad base64".to_string())
        }
        TransferEncoding::Binary | TransferEncoding::EightBit | TransferEncoding::SevenBit => {
            Ok(body.to_vec())
        }
        other => Err(format!("{} signed data", other.as_str())),
    }
}

/// RFC 8551 §3.1.1: signed text is canonical, CRLF line ends. Mail that lost its CRs on
/// the way (a bare LF) gets them back; CRLF mail is unchanged.
fn canonical(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + text.len() / 64);
    let mut prev = 0u8;
    for &b in text {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
    out
}

/// Checks DER `ContentInfo(SignedData)`; `detached` is the content when it is not inside.
fn check(der: &[u8], detached: Option<&[u8]>, trust: &TrustStore, now: SystemTime) -> Verdict {
    let info = match ContentInfo::from_der(der) {
        Ok(info) => info,
        Err(e) => return perm(format!("ContentInfo: {e}")),
    };
    if info.content_type != ID_SIGNED_DATA {
        return perm(format!(
            "content type {} is not signed data",
            info.content_type
        ));
    }
    let signed: SignedData = match info.content.decode_as() {
        Ok(signed) => signed,
        Err(e) => return perm(format!("SignedData: {e}")),
    };
    let inner;
    let content = match (detached, &signed.encap_content_info.econtent) {
        (Some(content), _) => content,
        (None, Some(econtent)) => match econtent.decode_as::<OctetString>() {
            Ok(octets) => {
                inner = octets.into_bytes();
                &inner[..]
            }
            Err(e) => return perm(format!("encapsulated content: {e}")),
        },
        (None, None) => return perm("detached signature without content"),
    };
    let certificates: Vec<&Certificate> = signed
        .certificates
        .iter()
        .flat_map(|set| set.0.iter())
        .filter_map(|choice| match choice {
            cms::cert::CertificateChoices::Certificate(c) => Some(c),
            _ => None,
        })
        .collect();
    // One signer is checked: S/MIME mail carries one (RFC 8551 §2.4.1 allows more, which
    // mail clients do not make).
    let Some(signer) = signed.signer_infos.0.iter().next() else {
        return perm("no signer");
    };
    let Some(signer_cert) = certificates.iter().find(|c| identifies(&signer.sid, c)) else {
        return perm("the signer's certificate is not in the message");
    };
    let name = signer_name(signer_cert);

    let hash = match signer.digest_alg.oid {
        ID_SHA256 => Hash::Sha256,
        ID_SHA384 => Hash::Sha384,
        ID_SHA512 => Hash::Sha512,
        // RFC 8551 §2.1: receiving agents must not accept SHA-1 signatures.
        ID_SHA1 => {
            return Verdict::Fail {
                reason: "signed with SHA-1 (RFC 8551 §2.1)".into(),
            }
        }
        other => return perm(format!("digest algorithm {other}")),
    };
    let signed_message = match signed_message(signer, &signed, hash, content) {
        Ok(message) => message,
        Err(verdict) => return verdict,
    };
    if let Err(verdict) = check_signature(signer, signer_cert, hash, &signed_message) {
        return verdict;
    }
    check_chain(signer_cert, &certificates, trust, now, name)
}

#[derive(Clone, Copy)]
enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    fn digest(self, bytes: &[u8]) -> Vec<u8> {
        match self {
            Hash::Sha256 => sha2::Sha256::digest(bytes).to_vec(),
            Hash::Sha384 => sha2::Sha384::digest(bytes).to_vec(),
            Hash::Sha512 => sha2::Sha512::digest(bytes).to_vec(),
        }
    }
}

fn identifies(sid: &SignerIdentifier, cert: &Certificate) -> bool {
    let tbs = &cert.tbs_certificate;
    match sid {
        SignerIdentifier::IssuerAndSerialNumber(id) => {
            id.issuer == tbs.issuer && id.serial_number == tbs.serial_number
        }
        SignerIdentifier::SubjectKeyIdentifier(ski) => tbs
            .extensions
            .iter()
            .flat_map(|exts| exts.iter())
            .filter(|ext| ext.extn_id == SUBJECT_KEY_IDENTIFIER)
            .any(|ext| {
                SubjectKeyIdentifier::from_der(ext.extn_value.as_bytes())
                    .is_ok_and(|own| own == *ski)
            }),
    }
}

/// The certificate's first e-mail address, else its subject name.
fn signer_name(cert: &Certificate) -> String {
    cert::email_addresses(cert)
        .ok()
        .and_then(|names| names.into_iter().next())
        .unwrap_or_else(|| cert.tbs_certificate.subject.to_string())
}

/// What the signature is over: the DER of the signed attributes after their
/// `messageDigest` matched the content (RFC 5652 §5.4), or the content itself when there
/// are none.
fn signed_message(
    signer: &SignerInfo,
    signed: &SignedData,
    hash: Hash,
    content: &[u8],
) -> Result<Vec<u8>, Verdict> {
    let Some(attrs) = &signer.signed_attrs else {
        return Ok(content.to_vec());
    };
    let single = |oid: ObjectIdentifier| {
        let mut found = attrs.iter().filter(|a| a.oid == oid);
        match (found.next(), found.next()) {
            (Some(attr), None) if attr.values.len() == 1 => Ok(attr.values.get(0)),
            (None, _) => Ok(None),
            _ => Err(perm(format!("attribute {oid} more than once"))),
        }
    };
    let Some(digest) = single(ID_MESSAGE_DIGEST)? else {
        return Err(perm("signed attributes without messageDigest"));
    };
    let digest = digest
        .decode_as::<OctetString>()
        .map_err(|e| perm(format!("messageDigest: {e}")))?;
    if digest.as_bytes() != hash.digest(content).as_slice() {
        return Err(Verdict::Fail {
            reason: "the content does not match the signed digest".into(),
        });
    }
    if let Some(content_type) = single(ID_CONTENT_TYPE)? {
        let oid = content_type
            .decode_as::<ObjectIdentifier>()
            .map_err(|e| perm(format!("contentType: {e}")))?;
        if oid != signed.encap_content_info.econtent_type {
            return Err(Verdict::Fail {
                reason: "the signed content type differs from the content's".into(),
            });
        }
    }
    // The signature covers the attributes as a DER SET OF (RFC 5652 §5.4), not as the
    // [0] IMPLICIT field they are sent in.
    attrs
        .to_der()
        .map_err(|e| perm(format!("signed attributes: {e}")))
}

const SHA256_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
const SHA384_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.12");
const SHA512_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.13");
const ECDSA_WITH_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const ECDSA_WITH_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");

/// RSA PKCS #1 v1.5 and ECDSA (P-256, P-384) signatures, through ring (webpki's wrappers,
/// which also check that the algorithm fits the certificate's key).
fn check_signature(
    signer: &SignerInfo,
    cert: &Certificate,
    hash: Hash,
    message: &[u8],
) -> Result<(), Verdict> {
    let rsa = |hash: Hash| -> Vec<&'static dyn SignatureVerificationAlgorithm> {
        match hash {
            Hash::Sha256 => vec![algs::RSA_PKCS1_2048_8192_SHA256],
            Hash::Sha384 => vec![algs::RSA_PKCS1_2048_8192_SHA384],
            Hash::Sha512 => vec![algs::RSA_PKCS1_2048_8192_SHA512],
        }
    };
    let ecdsa = |hash: Hash| -> Vec<&'static dyn SignatureVerificationAlgorithm> {
        match hash {
            Hash::Sha256 => vec![algs::ECDSA_P256_SHA256, algs::ECDSA_P384_SHA256],
            Hash::Sha384 => vec![algs::ECDSA_P256_SHA384, algs::ECDSA_P384_SHA384],
            Hash::Sha512 => Vec::new(),
        }
    };
    let candidates = match signer.signature_algorithm.oid {
        cert::RSA_ENCRYPTION => rsa(hash),
        SHA256_WITH_RSA => rsa(Hash::Sha256),
        SHA384_WITH_RSA => rsa(Hash::Sha384),
        SHA512_WITH_RSA => rsa(Hash::Sha512),
        EC_PUBLIC_KEY => ecdsa(hash),
        ECDSA_WITH_SHA256 => ecdsa(Hash::Sha256),
        ECDSA_WITH_SHA384 => ecdsa(Hash::Sha384),
        other => return Err(perm(format!("signature algorithm {other}"))),
    };
    let der = cert
        .to_der()
        .map_err(|e| perm(format!("signer certificate: {e}")))?;
    let der = CertificateDer::from(der.as_slice());
    let ee = webpki::EndEntityCert::try_from(&der)
        .map_err(|e| perm(format!("signer certificate: {e}")))?;
    let signature = signer.signature.as_bytes();
    for alg in candidates {
        match ee.verify_signature(alg, message, signature) {
            Ok(()) => return Ok(()),
            Err(webpki::Error::InvalidSignatureForPublicKey) => {
                return Err(Verdict::Fail {
                    reason: "the signature does not verify".into(),
                })
            }
            // Another curve or key type: try the next.
            Err(_) => continue,
        }
    }
    Err(perm(
        "the signature algorithm does not fit the signer's key".to_string(),
    ))
}

/// The signer's certificate must chain to an anchor, be valid at `now` and allow
/// emailProtection; intermediates come from the message.
fn check_chain(
    signer_cert: &Certificate,
    certificates: &[&Certificate],
    trust: &TrustStore,
    now: SystemTime,
    signer: String,
) -> Verdict {
    if !cert::has_email_protection(signer_cert) {
        return Verdict::Untrusted {
            signer,
            reason: "the certificate is not for e-mail protection".into(),
        };
    }
    let Ok(der) = signer_cert.to_der() else {
        return perm("signer certificate does not encode");
    };
    let intermediates: Vec<CertificateDer<'static>> = certificates
        .iter()
        .filter(|c| !std::ptr::eq(**c, signer_cert))
        .filter_map(|c| c.to_der().ok())
        .map(CertificateDer::from)
        .collect();
    let end_entity = CertificateDer::from(der.as_slice());
    let ee = match webpki::EndEntityCert::try_from(&end_entity) {
        Ok(ee) => ee,
        Err(e) => return perm(format!("signer certificate: {e}")),
    };
    let anchors = trust.anchors();
    let time = UnixTime::since_unix_epoch(now.duration_since(UNIX_EPOCH).unwrap_or_default());
    match ee.verify_for_usage(
        CHAIN_ALGS,
        &anchors,
        &intermediates,
        time,
        EmailProtection,
        None,
        None,
    ) {
        Ok(_) => Verdict::Pass { signer },
        Err(e) => Verdict::Untrusted {
            signer,
            reason: chain_reason(&e),
        },
    }
}

/// Extended key usage along the chain (RFC 8550 §4.4, RFC 5280 §4.2.1.12): a certificate
/// that has the extension must list emailProtection or anyExtendedKeyUsage; one without it
/// is not restricted. The signer's own certificate must have it, checked before
/// ([`cert::has_email_protection`]): webpki's `KeyUsage::required` would also demand it of
/// every intermediate CA, and most S/MIME intermediates carry none.
struct EmailProtection;

impl webpki::ExtendedKeyUsageValidator for EmailProtection {
    fn validate(&self, iter: webpki::KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        let email = webpki::KeyPurposeId::new(EMAIL_PROTECTION_DER);
        let any = webpki::KeyPurposeId::new(ANY_EKU_DER);
        let mut empty = true;
        for id in iter {
            empty = false;
            let id = id?;
            if id == email || id == any {
                return Ok(());
            }
        }
        if empty {
            Ok(())
        } else {
            // The context variant's fields are private to webpki.
            #[allow(deprecated)]
            Err(webpki::Error::RequiredEkuNotFound)
        }
    }
}

fn chain_reason(e: &webpki::Error) -> String {
    use webpki::Error as E;
    #[allow(deprecated)]
    match e {
        E::RequiredEkuNotFound => "a CA certificate is not for e-mail protection".into(),
        E::UnknownIssuer => "no chain to a trust anchor".into(),
        E::CertExpired { .. } => "the certificate expired".into(),
        E::CertNotValidYet { .. } => "the certificate is not valid yet".into(),
        E::RequiredEkuNotFoundContext(_) => "the certificate is not for e-mail protection".into(),
        other => format!("chain: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_line_feeds_become_crlf_and_crlf_stays() {
        assert_eq!(canonical(b"a\nb\r\nc"), b"a\r\nb\r\nc".to_vec());
        assert_eq!(canonical(b"a\r\n"), b"a\r\n".to_vec());
    }

    #[test]
    fn unsigned_or_malformed_messages_are_permerrors() {
        let trust = TrustStore::default();
        let now = SystemTime::now();
        for message in [
            &b"Content-Type: text/plain\r\n\r\nhello\r\n"[..],
            b"Content-Type: multipart/signed; protocol=\"application/pkcs7-signature\"\r\n\r\n",
            b"Content-Type: multipart/signed; protocol=\"application/pkcs7-signature\"; \
boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nx\r\n--b--\r\n",
            b"Content-Type: application/pkcs7-mime; smime-type=signed-data\r\n\
Content-Transfer-Encoding: base64\r\n\r\nMIIB\r\n",
            b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data\r\n\r\n",
        ] {
            assert!(
                matches!(verify(message, &trust, now), Verdict::PermError { .. }),
                "{}",
                String::from_utf8_lossy(message)
            );
        }
    }

    #[test]
    fn the_parts_of_multipart_signed_are_cut_as_sent() {
        let message = b"Content-Type: multipart/signed; protocol=\"application/pkcs7-signature\";\r\n \
micalg=sha-256; boundary=\"b\"\r\n\r\npreamble\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n\r\n--b\r\n\
Content-Type: application/pkcs7-signature\r\nContent-Transfer-Encoding: base64\r\n\r\naGVsbG8=\r\n--b--\r\n";
        let (der, content) = signed_parts(message).expect("parts");
        assert_eq!(der, b"hello".to_vec());
        assert_eq!(
            content.as_deref(),
            Some(&b"Content-Type: text/plain\r\n\r\nhi\r\n"[..])
        );
    }

    #[test]
    fn a_store_needs_a_certificate_and_no_key() {
        assert!(matches!(
            TrustStore::from_pem(b"nothing"),
            Err(KeyError::Unreadable(_))
        ));
        assert_eq!(
            TrustStore::from_pem(b"-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n")
                .unwrap_err(),
            KeyError::SecretKey
        );
    }
}
