//! Password hashes: argon2id in PHC string form (RFC 9106), never plaintext at rest.
//!
//! Verification costs tens of milliseconds by design; callers run it off the protocol core.
//! An unknown user is verified against a dummy hash of the same cost, so the time a failed
//! login takes does not tell whether the user exists.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand_core::OsRng;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    #[error("not an argon2id PHC string (expected `$argon2id$v=19$m=…,t=…,p=…$salt$hash`): {0}")]
    BadHash(String),
    #[error("cannot hash password: {0}")]
    Hashing(String),
}

/// OWASP's current minimum for argon2id: 19 MiB, 2 passes, 1 lane. Comparable to what
/// Dovecot's ARGON2ID scheme costs per login, which keeps the POP3 comparison fair.
fn hasher() -> Result<Argon2<'static>, PasswordError> {
    let params =
        Params::new(19 * 1024, 2, 1, None).map_err(|e| PasswordError::Hashing(e.to_string()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Hashes a password into a PHC string with a fresh random salt.
pub fn hash(password: &str) -> Result<String, PasswordError> {
    let salt = SaltString::generate(&mut OsRng);
    hasher()?
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Hashing(e.to_string()))
}

/// Checks that a stored hash is an argon2id PHC string (at config load, not at login).
pub fn validate(phc: &str) -> Result<(), PasswordError> {
    let parsed = PasswordHash::new(phc).map_err(|e| PasswordError::BadHash(e.to_string()))?;
    if parsed.algorithm.as_str() != "argon2id" {
        return Err(PasswordError::BadHash(format!(
            "algorithm is {}, only argon2id is accepted",
            parsed.algorithm
        )));
    }
    Ok(())
}

/// Verifies `password` against a PHC string; any malformed hash simply fails.
pub fn verify(phc: &str, password: &str) -> bool {
    match PasswordHash::new(phc) {
        // The parameters come from the hash itself, so old hashes keep working.
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_then_verify() {
        let phc = hash("correct horse").expect("hash");
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert_eq!(validate(&phc), Ok(()));
        assert!(verify(&phc, "correct horse"));
        assert!(!verify(&phc, "correct horse "));
        assert!(!verify(&phc, ""));
    }

    #[test]
    fn salts_differ() {
        assert_ne!(hash("x").unwrap(), hash("x").unwrap());
    }

    #[test]
    fn malformed_hashes_never_verify() {
        for bad in [
            "",
            "plaintext",
            "$argon2id$",
            "$2y$10$abcdefghijklmnopqrstuv",
        ] {
            assert!(!verify(bad, "plaintext"), "{bad}");
            assert!(validate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn other_algorithms_are_refused_at_load() {
        let argon2i = "$argon2i$v=19$m=16,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo";
        assert!(matches!(validate(argon2i), Err(PasswordError::BadHash(_))));
    }
}
