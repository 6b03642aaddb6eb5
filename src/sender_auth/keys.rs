//! New DKIM key pairs (`relay dkim keygen`): the private key as PEM and the DNS record
//! that publishes its public half.

use mail_auth::dkim::generate::DkimKeyPair;

use super::sign::{dns_record_text, ed25519_pkcs8_v1, parse_key, Algorithm};

/// RSA keys are made this size: RFC 8301 §3.2 asks for at least 2048 bits when signing.
pub const RSA_BITS: usize = 2048;

/// A key pair ready to write: the private key (PEM, 0600 at rest) and the record text.
pub struct NewKey {
    pub pem: String,
    /// `v=DKIM1; k=…; p=…`
    pub record: String,
}

#[derive(Debug, thiserror::Error)]
pub enum KeygenError {
    #[error("cannot generate the key: {0}")]
    Generate(String),
}

/// Makes a key pair. The record is derived from the PEM read back the way the relay loads
/// key files, so what is published matches what will sign.
pub fn generate(algorithm: Algorithm) -> Result<NewKey, KeygenError> {
    let (label, der) = match algorithm {
        Algorithm::RsaSha256 => (
            "RSA PRIVATE KEY",
            DkimKeyPair::generate_rsa(RSA_BITS)
                .map_err(|e| KeygenError::Generate(e.to_string()))?,
        ),
        Algorithm::Ed25519Sha256 => (
            "PRIVATE KEY",
            DkimKeyPair::generate_ed25519().map_err(|e| KeygenError::Generate(e.to_string()))?,
        ),
    };
    let private = match algorithm {
        // ring makes PKCS#8 v2 (seed and public key); OpenSSL and most tools read v1 (the
        // seed alone, RFC 8410 §7), and the public key follows from the seed.
        Algorithm::Ed25519Sha256 => {
            let seed = der
                .private_key()
                .get(16..48)
                .ok_or_else(|| KeygenError::Generate("unexpected Ed25519 PKCS#8 form".into()))?;
            ed25519_pkcs8_v1(seed)
        }
        Algorithm::RsaSha256 => der.private_key().to_vec(),
    };
    let pem = pem_encode(label, &private);
    let key = parse_key(pem.as_bytes(), algorithm).map_err(KeygenError::Generate)?;
    Ok(NewKey {
        pem,
        record: dns_record_text(&key),
    })
}

/// The zone-file line for `record` at `<selector>._domainkey.<domain>`: one TXT record whose
/// text is split into character-strings of at most 255 octets (RFC 1035 §3.3.14; verifiers
/// join them, RFC 6376 §3.6.2.2).
pub fn zone_line(domain: &str, selector: &str, record: &str) -> String {
    let strings: Vec<String> = record
        .as_bytes()
        .chunks(255)
        .map(|chunk| format!("\"{}\"", String::from_utf8_lossy(chunk)))
        .collect();
    format!(
        "{selector}._domainkey.{}. IN TXT {}",
        domain.trim_end_matches('.'),
        strings.join(" ")
    )
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = base64_simd::STANDARD.encode_to_string(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ed25519_key_round_trips_and_record_is_split() {
        let key = generate(Algorithm::Ed25519Sha256).expect("keygen");
        assert!(key.pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert!(key.record.starts_with("v=DKIM1; k=ed25519; p="));
        let line = zone_line("example.com", "s1", &key.record);
        assert!(line.starts_with("s1._domainkey.example.com. IN TXT \"v=DKIM1"));
        let long = "x".repeat(600);
        let line = zone_line("example.com", "s1", &long);
        let strings: Vec<&str> = line.split('"').filter(|s| s.starts_with('x')).collect();
        assert_eq!(
            strings.iter().map(|s| s.len()).collect::<Vec<_>>(),
            [255, 255, 90]
        );
    }
}
