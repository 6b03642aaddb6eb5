//! Web Key Directory names (draft-koch-openpgp-webkey-service §3.1): the z-base-32 SHA-1
//! hash of a lower-cased local part, and the direct and advanced URLs for an address.

/// The z-base-32 encoded SHA-1 of the lower-cased local part (32 characters).
pub fn hashed_local_part(local: &str) -> String {
    let _ = local;
    String::new()
}
