//! A transferable public key checked at one instant: which of its components are valid,
//! which may encrypt and which may sign (RFC 9580 §5.2.3, §10.1).
//!
//! rPGP parses and verifies signatures but leaves validity to the caller: a self-signature
//! counts only if it verifies against the primary key, was made no later than `now` and has
//! not expired; of several, the newest counts. Third-party signatures are ignored.

use pgp::{
    composed::{SignedPublicKey, SignedPublicSubKey},
    packet::{KeyFlags, Signature, SignatureType, SubpacketData},
    types::{KeyDetails, KeyVersion, Tag},
};

use super::super::KeyError;

/// A component of the key: the primary or the subkey at an index of `public_subkeys`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Part {
    Primary,
    Subkey(usize),
}

/// A usable component and when it stops being usable (Unix seconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Usable {
    pub part: Part,
    pub expires: Option<u64>,
}

/// The outcome of checking a key: its user id addresses and its usable components.
#[derive(Debug)]
pub(crate) struct Checked {
    pub addresses: Vec<String>,
    pub encrypt: Vec<Usable>,
    pub sign: Vec<Usable>,
}

fn secs_of(sig: &Signature) -> Option<u64> {
    sig.created().map(|t| u64::from(t.as_secs()))
}

/// Clock skew tolerated on creation times, seconds: a key made on a machine whose clock is
/// a little ahead and registered at once must not look as if it were made in the future.
pub(crate) const SKEW: u64 = 15 * 60;

/// Made no later than `now` (give or take [`SKEW`]) and not expired at `now`.
fn live(sig: &Signature, now: u64) -> bool {
    let Some(created) = secs_of(sig) else {
        return false;
    };
    let expired = sig
        .signature_expiration_time()
        .map(|d| u64::from(d.as_secs()))
        .is_some_and(|d| d > 0 && created + d <= now);
    created <= now + SKEW && !expired
}

/// The newest of `sigs` of the wanted types that is live and for which `valid` holds.
fn newest<'a>(
    sigs: &'a [Signature],
    types: &[SignatureType],
    now: u64,
    valid: impl Fn(&Signature) -> bool,
) -> Option<&'a Signature> {
    sigs.iter()
        .filter(|s| s.typ().is_some_and(|t| types.contains(&t)))
        .filter(|s| live(s, now) && valid(s))
        .max_by_key(|s| secs_of(s).unwrap_or(0))
}

/// When a component created at `created` expires under `binding` (None: never).
fn expiry(created: u64, binding: &Signature) -> Option<u64> {
    binding
        .key_expiration_time()
        .map(|d| u64::from(d.as_secs()))
        .filter(|&d| d > 0)
        .map(|d| created + d)
}

/// The e-mail address of a user id: inside the last `<…>`, or the whole id when it is a
/// bare address. Lower case.
pub(crate) fn email_of(id: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(id).ok()?;
    let addr = match (text.rfind('<'), text.rfind('>')) {
        (Some(open), Some(close)) if open < close => &text[open + 1..close],
        _ => text.trim(),
    };
    let (local, domain) = addr.rsplit_once('@')?;
    let bad =
        |s: &str| s.is_empty() || s.chars().any(|c| c.is_whitespace() || c == '<' || c == '>');
    if bad(local) || bad(domain) {
        return None;
    }
    Some(addr.to_ascii_lowercase())
}

const CERTIFICATIONS: &[SignatureType] = &[
    SignatureType::CertGeneric,
    SignatureType::CertPersona,
    SignatureType::CertCasual,
    SignatureType::CertPositive,
];

fn may_encrypt(flags: &KeyFlags, algorithm_can: bool) -> bool {
    algorithm_can && (flags.encrypt_comms() || flags.encrypt_storage())
}

/// What a component may do by its binding: its key flags, or, for an old key whose binding
/// carries none, what its algorithm can (RFC 9580 §5.2.3.29 leaves that to the reader).
/// Returns (encrypt, sign).
fn usage(binding: &Signature, can_encrypt: bool, can_sign: bool) -> (bool, bool) {
    let has_flags = binding.config().is_some_and(|c| {
        c.hashed_subpackets()
            .any(|p| matches!(p.data, SubpacketData::KeyFlags(_)))
    });
    if !has_flags {
        return (can_encrypt, can_sign);
    }
    let flags = binding.key_flags();
    (may_encrypt(&flags, can_encrypt), flags.sign() && can_sign)
}

/// Checks `key` at `now` (Unix seconds) for a user with `wanted` addresses.
pub(crate) fn check(
    key: &SignedPublicKey,
    wanted: &[String],
    now: u64,
) -> Result<Checked, KeyError> {
    let primary = &key.primary_key;
    let created = u64::from(primary.created_at().as_secs());
    if !matches!(primary.version(), KeyVersion::V4 | KeyVersion::V6) {
        return Err(KeyError::Unsupported(format!(
            "key version {:?}",
            primary.version()
        )));
    }
    if key
        .details
        .revocation_signatures
        .iter()
        .any(|s| s.typ() == Some(SignatureType::KeyRevocation) && s.verify_key(primary).is_ok())
    {
        return Err(KeyError::Revoked);
    }
    if created > now + SKEW {
        return Err(KeyError::Expired("the key is created in the future".into()));
    }
    let direct = newest(
        &key.details.direct_signatures,
        &[SignatureType::Key],
        now,
        |s| s.verify_key(primary).is_ok(),
    );

    // The user ids whose newest self-signature is a certification, not a revocation.
    let mut users = Vec::new();
    for user in &key.details.users {
        let mut types = CERTIFICATIONS.to_vec();
        types.push(SignatureType::CertRevocation);
        let Some(sig) = newest(&user.signatures, &types, now, |s| {
            s.verify_certification(primary, Tag::UserId, &user.id)
                .is_ok()
        }) else {
            continue;
        };
        if sig.typ() == Some(SignatureType::CertRevocation) {
            continue;
        }
        users.push((email_of(user.id.id()), sig));
    }
    if users.is_empty() && direct.is_none() {
        return Err(KeyError::Unreadable(
            "no valid self-signature on the key".into(),
        ));
    }
    // The primary key's own flags and expiry: the direct-key signature for v6 keys (RFC 9580
    // §10.1.2), the primary user id's binding for v4 ones; each of them may expire the key.
    let primary_user = users
        .iter()
        .find(|(_, s)| s.is_primary())
        .or(users.first())
        .map(|(_, s)| *s);
    for sig in [direct, primary_user].into_iter().flatten() {
        if expiry(created, sig).is_some_and(|e| e <= now) {
            return Err(KeyError::Expired("the primary key expired".into()));
        }
    }
    let primary_sig = if primary.version() == KeyVersion::V6 {
        direct.or(primary_user)
    } else {
        primary_user.or(direct)
    };
    let primary_expires = [direct, primary_user]
        .into_iter()
        .flatten()
        .filter_map(|s| expiry(created, s))
        .min();

    let mut encrypt = Vec::new();
    let mut sign = Vec::new();
    if let Some(sig) = primary_sig {
        let usable = Usable {
            part: Part::Primary,
            expires: primary_expires,
        };
        let algorithm = primary.algorithm();
        let (encrypts, signs) = usage(sig, algorithm.can_encrypt(), algorithm.can_sign());
        if encrypts {
            encrypt.push(usable);
        }
        if signs {
            sign.push(usable);
        }
    }
    let mut expired_encryption = false;
    for (index, sub) in key.public_subkeys.iter().enumerate() {
        let Some((binding, sub_expires)) = subkey_binding(key, sub, now) else {
            continue;
        };
        let algorithm = sub.key.algorithm();
        let (encrypts, signs) = usage(binding, algorithm.can_encrypt(), algorithm.can_sign());
        let expires = [sub_expires, primary_expires].into_iter().flatten().min();
        let usable = Usable {
            part: Part::Subkey(index),
            expires,
        };
        let alive = expires.is_none_or(|e| e > now);
        if encrypts {
            if alive {
                encrypt.push(usable);
            } else {
                expired_encryption = true;
            }
        }
        if alive && signs {
            // A signing subkey must sign the primary back (RFC 9580 §5.2.1, 0x19).
            let back = binding
                .embedded_signature()
                .is_some_and(|b| b.verify_primary_key_binding(&sub.key, primary).is_ok());
            if back {
                sign.push(usable);
            }
        }
    }
    if encrypt.is_empty() {
        return Err(if expired_encryption {
            KeyError::Expired("every encryption subkey expired".into())
        } else {
            KeyError::NoEncryptionKey("no valid subkey is flagged for encryption".into())
        });
    }
    let mut addresses: Vec<String> = users.iter().filter_map(|(a, _)| a.clone()).collect();
    addresses.sort();
    addresses.dedup();
    if !addresses
        .iter()
        .any(|a| wanted.iter().any(|w| w.eq_ignore_ascii_case(a)))
    {
        return Err(KeyError::NoMatchingAddress(if addresses.is_empty() {
            "it has no e-mail address".into()
        } else {
            addresses.join(", ")
        }));
    }
    Ok(Checked {
        addresses,
        encrypt,
        sign,
    })
}

/// The newest valid binding of a subkey that is not revoked, and when the subkey expires.
fn subkey_binding<'a>(
    key: &SignedPublicKey,
    sub: &'a SignedPublicSubKey,
    now: u64,
) -> Option<(&'a Signature, Option<u64>)> {
    let primary = &key.primary_key;
    let revoked = sub.signatures.iter().any(|s| {
        s.typ() == Some(SignatureType::SubkeyRevocation)
            && secs_of(s).is_some_and(|c| c <= now + SKEW)
            && s.verify_subkey_binding(primary, &sub.key).is_ok()
    });
    if revoked {
        return None;
    }
    let created = u64::from(sub.key.created_at().as_secs());
    if created > now + SKEW {
        return None;
    }
    let binding = newest(&sub.signatures, &[SignatureType::SubkeyBinding], now, |s| {
        s.verify_subkey_binding(primary, &sub.key).is_ok()
    })?;
    Some((binding, expiry(created, binding)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_come_from_angle_brackets_or_bare_ids() {
        assert_eq!(
            email_of(b"Alice Example <Alice@Example.ORG>").as_deref(),
            Some("alice@example.org")
        );
        assert_eq!(
            email_of(b"bob@example.net").as_deref(),
            Some("bob@example.net")
        );
        assert_eq!(email_of(b"Carol"), None);
        assert_eq!(email_of(b"Dave <dave>"), None);
        assert_eq!(email_of(b"<@example.org>"), None);
        assert_eq!(email_of(b"x y@example.org"), None);
        assert_eq!(email_of(&[0xff, b'@', b'a']), None);
    }
}
