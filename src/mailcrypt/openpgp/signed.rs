//! PGP/MIME signature checks (RFC 3156 §5): a `multipart/signed` body whose first part,
//! header and content exactly as transmitted (in CRLF canonical form), is what the detached
//! signature of the second part (`application/pgp-signature`) covers.

use std::time::SystemTime;

use pgp::{
    composed::{Deserializable, DetachedSignature},
    packet::{Signature, SignatureType},
    types::KeyDetails,
};

use super::{
    cert::{Part, SKEW},
    hex_upper,
    seal::crlf,
    unix, Key,
};
use crate::mailcrypt::Verdict;
use crate::mime::{
    boundary,
    header::{parse_block, ContentType, Field},
};

/// Signatures looked at in one part, at most.
const SIGNATURES_MAX: usize = 16;

/// A signed message taken apart.
struct Signed {
    /// The first part in canonical form.
    content: Vec<u8>,
    signatures: Vec<Signature>,
    /// The From address (lower case), if one parses.
    from: Option<String>,
}

fn perm(reason: &str) -> Verdict {
    Verdict::PermError {
        reason: reason.into(),
    }
}

/// Splits a PGP/MIME signed message, or says why it is malformed.
fn take_apart(message: &[u8]) -> Result<Signed, Verdict> {
    let mut fields: Vec<Field> = Vec::new();
    let block = parse_block(message, 0..message.len(), 1 << 20, 10_000, &mut fields)
        .map_err(|_| perm("unreadable header"))?;
    let body_start = block.body_start.min(message.len());
    let ct_field = fields
        .iter()
        .find(|f| f.is(message, "Content-Type"))
        .ok_or_else(|| perm("no Content-Type"))?;
    let ct = ContentType::parse(&message[ct_field.value.clone()])
        .ok_or_else(|| perm("unreadable Content-Type"))?;
    let protocol_ok = ct
        .param("protocol")
        .is_some_and(|p| p.bytes.eq_ignore_ascii_case(b"application/pgp-signature"));
    if !ct.is("multipart", "signed") || !protocol_ok {
        return Err(perm(
            "not multipart/signed with protocol application/pgp-signature",
        ));
    }
    let bound = ct.boundary().ok_or_else(|| perm("no boundary"))?;
    let split = boundary::split(message, body_start..message.len(), &bound, 3)
        .map_err(|_| perm("more than two parts"))?;
    let [first, second] = split.parts.as_slice() else {
        return Err(perm("not exactly two parts"));
    };
    let content = crlf(&message[first.clone()]);
    let sig_part = &message[second.clone()];
    let mut sig_fields = Vec::new();
    let block = parse_block(sig_part, 0..sig_part.len(), 64 * 1024, 100, &mut sig_fields)
        .map_err(|_| perm("unreadable signature part header"))?;
    let is_sig = sig_fields.iter().any(|f| {
        f.is(sig_part, "Content-Type")
            && ContentType::parse(&sig_part[f.value.clone()])
                .is_some_and(|c| c.is("application", "pgp-signature"))
    });
    if !is_sig {
        return Err(perm("the second part is not application/pgp-signature"));
    }
    let body = &sig_part[block.body_start.min(sig_part.len())..];
    let base64 = sig_fields.iter().any(|f| {
        f.is(sig_part, "Content-Transfer-Encoding")
            && sig_part[f.value.clone()]
                .trim_ascii()
                .eq_ignore_ascii_case(b"base64")
    });
    let body = if base64 {
        crate::mime::base64::decode_lenient(body)
    } else {
        body.to_vec()
    };
    let signatures = parse_signatures(&body).ok_or_else(|| perm("unreadable signature"))?;
    if signatures.is_empty() {
        return Err(perm("no signature"));
    }
    let from = fields
        .iter()
        .find(|f| f.is(message, "From"))
        .and_then(|f| super::cert::email_of(message[f.value.clone()].trim_ascii()));
    Ok(Signed {
        content,
        signatures,
        from,
    })
}

/// The signature packets of an armoured or binary detached signature.
fn parse_signatures(body: &[u8]) -> Option<Vec<Signature>> {
    let (sigs, _) = DetachedSignature::from_reader_many(body).ok()?;
    let mut out = Vec::new();
    for sig in sigs.take(SIGNATURES_MAX) {
        out.push(sig.ok()?.signature);
    }
    Some(out)
}

/// The issuers a signature names: fingerprints first, then key ids, upper-case hex.
fn issuers(sig: &Signature) -> Vec<String> {
    let mut out: Vec<String> = sig
        .issuer_fingerprint()
        .iter()
        .map(|f| hex_upper(f.as_bytes()))
        .collect();
    out.extend(sig.issuer_key_id().iter().map(|k| hex_upper(k.as_ref())));
    out
}

/// The issuer fingerprints or key ids a PGP/MIME signed message names (upper-case hex), so
/// the caller can find keys before [`verify`]. A signing subkey's signature names the
/// subkey: match with [`Key::matches_issuer`], not [`Key::fingerprint`].
pub fn signers(message: &[u8]) -> Vec<String> {
    let Ok(signed) = take_apart(message) else {
        return Vec::new();
    };
    let mut out: Vec<String> = Vec::new();
    for sig in &signed.signatures {
        for issuer in issuers(sig) {
            if !out.contains(&issuer) {
                out.push(issuer);
            }
        }
    }
    out
}

/// Does the component `key` (fingerprint, key id) match an issuer of `sig`?
fn names(sig: &Signature, key: &impl KeyDetails) -> bool {
    let fp = key.fingerprint();
    let id = key.legacy_key_id();
    sig.issuer_fingerprint().iter().any(|f| **f == fp)
        || sig.issuer_key_id().iter().any(|k| **k == id)
}

/// Checks `sig` over `content` with `key`'s signing components, if one matches its issuer.
fn check_with(sig: &Signature, content: &[u8], key: &Key, now: u64) -> Option<Result<(), String>> {
    let cert = &key.cert;
    for usable in &key.sign {
        let result = match usable.part {
            Part::Primary if names(sig, &cert.primary_key) => {
                sig.verify(&cert.primary_key, content)
            }
            Part::Subkey(i) if names(sig, &cert.public_subkeys[i].key) => {
                sig.verify(&cert.public_subkeys[i].key, content)
            }
            _ => continue,
        };
        let created = sig.created().map(|t| u64::from(t.as_secs()));
        return Some(match result {
            Err(e) => Err(e.to_string()),
            Ok(()) if created.is_none_or(|c| c > now + SKEW) => {
                Err("the signature is dated in the future".into())
            }
            Ok(())
                if usable
                    .expires
                    .is_some_and(|e| created.is_some_and(|c| c >= e)) =>
            {
                Err("signed after the key expired".into())
            }
            Ok(()) => Ok(()),
        });
    }
    None
}

/// Checks a PGP/MIME signed message against `keys` (those of the relay's own directory and
/// of the sender domain's WKD the caller found). `Pass` names the From address when it is
/// one of the signing key's addresses, else the key's fingerprint.
pub fn verify(message: &[u8], keys: &[Key], now: SystemTime) -> Verdict {
    let signed = match take_apart(message) {
        Ok(s) => s,
        Err(verdict) => return verdict,
    };
    let now = unix(now);
    let mut failure = None;
    for sig in &signed.signatures {
        if !matches!(sig.typ(), Some(SignatureType::Binary | SignatureType::Text)) {
            failure.get_or_insert_with(|| "not a document signature".to_string());
            continue;
        }
        for key in keys {
            match check_with(sig, &signed.content, key, now) {
                Some(Ok(())) => {
                    let signer = signed
                        .from
                        .as_ref()
                        .filter(|f| key.addresses.contains(f))
                        .cloned()
                        .unwrap_or_else(|| key.fingerprint.clone());
                    return Verdict::Pass { signer };
                }
                Some(Err(reason)) => {
                    failure.get_or_insert(reason);
                }
                None => {}
            }
        }
    }
    match failure {
        Some(reason) => Verdict::Fail { reason },
        None => Verdict::UnknownSigner {
            signer: signed
                .signatures
                .iter()
                .flat_map(issuers)
                .next()
                .unwrap_or_default(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(ct: &str, second_type: &str, signature: &str) -> Vec<u8> {
        format!(
            "From: A <a@example.org>\nContent-Type: {ct}\n\npreamble\n--b\n\
             Content-Type: text/plain\n\nsigned text\n\n--b\n\
             Content-Type: {second_type}\n\n{signature}\n--b--\n"
        )
        .into_bytes()
    }

    const PGP: &str = "multipart/signed; protocol=\"application/pgp-signature\"; boundary=b";

    fn reason(message: &[u8]) -> String {
        match verify(message, &[], SystemTime::now()) {
            Verdict::PermError { reason } => reason,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_structures_are_perm_errors() {
        let sig = "-----BEGIN PGP SIGNATURE-----\n\nAAAA\n-----END PGP SIGNATURE-----";
        assert!(reason(&signed(
            "multipart/mixed; boundary=b",
            "application/pgp-signature",
            sig
        ))
        .contains("not multipart/signed"));
        assert!(reason(&signed(
            "multipart/signed; protocol=\"application/pkcs7-signature\"; boundary=b",
            "application/pgp-signature",
            sig
        ))
        .contains("not multipart/signed"));
        assert!(reason(&signed(PGP, "text/plain", sig)).contains("not application/pgp-signature"));
        assert_eq!(
            reason(&signed(PGP, "application/pgp-signature", sig)),
            "unreadable signature"
        );
        assert_eq!(
            reason(&signed(
                PGP,
                "application/pgp-signature",
                "not armour at all"
            )),
            "unreadable signature"
        );
        assert_eq!(
            reason(b"Content-Type: multipart/signed; protocol=\"application/pgp-signature\"; boundary=b\r\n\r\n--b\r\nx\r\n--b--\r\n"),
            "not exactly two parts"
        );
        assert_eq!(
            reason(
                b"Content-Type: multipart/signed; protocol=\"application/pgp-signature\"\r\n\r\n"
            ),
            "no boundary"
        );
        assert!(signers(&signed(PGP, "application/pgp-signature", sig)).is_empty());
    }

    #[test]
    fn the_first_part_is_taken_exactly_and_made_crlf() {
        let message = signed(PGP, "application/pgp-signature", "x");
        let (fields, start) = {
            let mut f = Vec::new();
            let b = parse_block(&message, 0..message.len(), 1 << 20, 100, &mut f).unwrap();
            (f, b.body_start)
        };
        assert_eq!(fields.len(), 2);
        let split = boundary::split(&message, start..message.len(), b"b", 3).unwrap();
        assert_eq!(
            crlf(&message[split.parts[0].clone()]),
            b"Content-Type: text/plain\r\n\r\nsigned text\r\n".to_vec()
        );
    }
}
