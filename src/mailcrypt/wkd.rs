//! Web Key Directory names (draft-koch-openpgp-webkey-service §3.1): the z-base-32 SHA-1
//! hash of a lower-cased local part, and the advanced and direct URLs of an address.

use sha1::{Digest, Sha1};

/// The z-base-32 alphabet (RFC 6189 §5.1.6, which the draft names).
const ZBASE32: &[u8; 32] = b"ybndrfg8ejkmcpqxot1uwisza345h769";

/// The z-base-32 encoded SHA-1 of the local part mapped to lower case (32 characters).
/// The draft lower-cases ASCII only; other characters are hashed as given.
pub fn hashed_local_part(local: &str) -> String {
    let digest = Sha1::digest(local.to_ascii_lowercase().as_bytes());
    zbase32(&digest)
}

/// z-base-32 of `bytes`, 5 bits a character, most significant first, the last group padded
/// with zero bits.
fn zbase32(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 8 / 5 + 1);
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for &byte in bytes {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ZBASE32[((buffer >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ZBASE32[((buffer << (5 - bits)) & 31) as usize]));
    }
    out
}

/// The two places a client looks for `address`'s key: the advanced method first
/// (`openpgpkey.` subdomain), then the direct one. `None` for an address without `@`.
pub fn urls(address: &str) -> Option<[String; 2]> {
    let (local, domain) = address.rsplit_once('@')?;
    if local.is_empty() || domain.is_empty() {
        return None;
    }
    let domain = domain.to_ascii_lowercase();
    let hash = hashed_local_part(local);
    let l = percent_encode(local);
    Some([
        format!("https://openpgpkey.{domain}/.well-known/openpgpkey/{domain}/hu/{hash}?l={l}"),
        format!("https://{domain}/.well-known/openpgpkey/hu/{hash}?l={l}"),
    ])
}

/// The `l=` parameter: the local part as given, percent-encoded outside unreserved octets.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drafts_example_hash() {
        // draft-koch-openpgp-webkey-service §3.1: "Joe.Doe@Example.ORG".
        assert_eq!(
            hashed_local_part("Joe.Doe"),
            "iy9q119eutrkn8s1mk4r39qejnbu3n5q"
        );
    }

    #[test]
    fn the_drafts_example_urls() {
        let [advanced, direct] = urls("Joe.Doe@Example.ORG").unwrap();
        assert_eq!(
            advanced,
            "https://openpgpkey.example.org/.well-known/openpgpkey/example.org/hu/iy9q119eutrkn8s1mk4r39qejnbu3n5q?l=Joe.Doe"
        );
        assert_eq!(
            direct,
            "https://example.org/.well-known/openpgpkey/hu/iy9q119eutrkn8s1mk4r39qejnbu3n5q?l=Joe.Doe"
        );
        assert!(urls("nodomain").is_none());
    }

    #[test]
    fn zbase32_pads_the_last_group() {
        assert_eq!(zbase32(&[0x00]), "yy");
        assert_eq!(zbase32(&[0xff]), "9h");
        assert_eq!(zbase32(&[]), "");
    }
}
