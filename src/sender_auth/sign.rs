//! DKIM signing of our own outbound mail (RFC 6376, Ed25519 per RFC 8463).
//!
//! A [`Signer`] holds the keys of `[[dkim.sign]]` (reloadable: SIGHUP) and signs a complete
//! message whose RFC 5322 From domain is a signing domain or a subdomain of one: the most
//! specific configured domain signs, with every key it has (two keys: dual signing). A
//! subdomain is signed with its parent's `d=` because DMARC's default relaxed alignment
//! (RFC 7489 §3.1.1) accepts it and an unsigned message would fail outright.
//!
//! Signatures are relaxed/relaxed, never `l=`, with `t=`; `h=` lists each configured field
//! as often as it occurs, and From/To/Subject/Date once more (over-signing: a field added
//! later breaks the signature, RFC 6376 §8.15). The header canonicalisation and the key
//! operations are mail-auth's; the body canonicalisation is ours ([`super::body_hash`],
//! RFC 6376 §3.4.4 where mail-auth keeps whitespace-only lines at the end of the body), the
//! same one verification uses; the header selection is ours so the over-signing rule is exact.
//!
//! [`KeySet::resign`] replaces our own signatures after the delivery side rewrote a message
//! (8BITMIME down-conversion); a signature is ours only when re-signing the original with
//! our key reproduces it byte for byte (Ed25519 and RSASSA-PKCS1-v1_5 are deterministic),
//! so someone else's signature is never touched.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use mail_auth::common::crypto::{DkimKey, Ed25519Key, RsaKey, Sha256, SigningKey};
use mail_auth::common::headers::{Writable, Writer};
use mail_auth::dkim::{Canonicalization, Signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;
use serde::{Deserialize, Serialize};

/// A signing algorithm (RFC 6376 §3.3, RFC 8463).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Algorithm {
    #[serde(rename = "ed25519-sha256")]
    Ed25519Sha256,
    #[serde(rename = "rsa-sha256")]
    RsaSha256,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Ed25519Sha256 => "ed25519-sha256",
            Algorithm::RsaSha256 => "rsa-sha256",
        }
    }
}

/// The fields signed by default: those a reader sees or that change how the body is read
/// (RFC 6376 §5.4.1), and the list headers a mailing list would otherwise be free to add.
pub const DEFAULT_HEADERS: &[&str] = &[
    "From",
    "Sender",
    "Reply-To",
    "Subject",
    "Date",
    "Message-ID",
    "To",
    "Cc",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "Content-ID",
    "Content-Description",
    "Resent-Date",
    "Resent-From",
    "Resent-Sender",
    "Resent-To",
    "Resent-Cc",
    "Resent-Message-ID",
    "List-Id",
    "List-Help",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "List-Subscribe",
    "List-Post",
    "List-Owner",
    "List-Archive",
];

/// Signed once more than they occur, so one cannot be added (or, when absent, inserted).
pub const OVERSIGNED: &[&str] = &["From", "To", "Subject", "Date"];

/// One `[[dkim.sign]]` entry, paths resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySettings {
    pub domain: String,
    pub selector: String,
    pub key_file: PathBuf,
    pub algorithm: Algorithm,
    /// The fields to sign instead of [`DEFAULT_HEADERS`]; must include From.
    pub headers: Option<Vec<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("DKIM key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("DKIM key file {path} has mode {mode:o}: a private key must be readable by its owner only (chmod 600)")]
    Mode { path: PathBuf, mode: u32 },
    #[error("DKIM key file {path} is not a valid {algorithm} private key: {reason}")]
    Invalid {
        path: PathBuf,
        algorithm: &'static str,
        reason: String,
    },
}

/// A loaded key with what it signs as.
struct Key {
    domain: String,
    selector: String,
    key: DkimKey,
    /// The configured field list, each name once (lower-case).
    headers: Vec<String>,
    /// Of `headers`, those to over-sign.
    oversigned: Vec<String>,
}

impl std::fmt::Debug for Key {
    // Never the key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("domain", &self.domain)
            .field("selector", &self.selector)
            .finish_non_exhaustive()
    }
}

/// The keys loaded at one time; immutable (a reload builds a new set).
#[derive(Debug, Default)]
pub struct KeySet {
    keys: Vec<Key>,
}

impl KeySet {
    /// Loads every key file; the first that fails stops the load.
    pub fn load(settings: &[KeySettings]) -> Result<KeySet, KeyError> {
        let mut keys = Vec::with_capacity(settings.len());
        for entry in settings {
            let key = load_key(&entry.key_file, entry.algorithm)?;
            let mut headers: Vec<String> = Vec::new();
            let names: Vec<&str> = match &entry.headers {
                Some(list) => list.iter().map(String::as_str).collect(),
                None => DEFAULT_HEADERS.to_vec(),
            };
            for name in names {
                let name = name.to_ascii_lowercase();
                if !headers.contains(&name) {
                    headers.push(name);
                }
            }
            let oversigned = OVERSIGNED
                .iter()
                .filter(|name| headers.contains(&name.to_ascii_lowercase()))
                .map(|name| name.to_string())
                .collect();
            keys.push(Key {
                domain: entry.domain.to_ascii_lowercase(),
                selector: entry.selector.clone(),
                key,
                headers,
                oversigned,
            });
        }
        Ok(KeySet { keys })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// (domain, selector) of each key, in configured order.
    pub fn selectors(&self) -> impl Iterator<Item = (&str, &str)> {
        self.keys
            .iter()
            .map(|k| (k.domain.as_str(), k.selector.as_str()))
    }

    /// The `DKIM-Signature` fields (CRLF-terminated, to prepend) for `message` (a complete
    /// message: header, blank line, body), one per key of the domain that covers its From
    /// domain; empty when no key covers it (or the From field is missing, repeated, or names
    /// mailboxes of different domains: nothing a signature could vouch for).
    pub fn sign(&self, message: &[u8], now: SystemTime) -> Vec<u8> {
        if self.keys.is_empty() {
            return Vec::new();
        }
        let Some(from) = from_domain(message) else {
            return Vec::new();
        };
        let t = unix_seconds(now);
        let mut out = Vec::new();
        for key in self.keys_for(&from) {
            // A key that cannot sign (no From to sign: excluded above; a crypto failure)
            // leaves the message unsigned by it rather than refusing the mail.
            if let Ok(field) = sign_with(key, message, t) {
                out.extend_from_slice(&field);
            }
        }
        out
    }

    /// After `original` was rewritten into `converted` (same header fields but those the
    /// conversion changed): `converted` without our own `DKIM-Signature` fields, re-signed
    /// with the keys whose signatures were removed. `None` when `original` carries no
    /// signature of ours (nothing to do: any other signature is left as it is).
    pub fn resign(&self, original: &[u8], converted: &[u8], now: SystemTime) -> Option<Vec<u8>> {
        if self.keys.is_empty() {
            return None;
        }
        // Our fields in `original`, by the key that made them.
        let mut ours: Vec<&Key> = Vec::new();
        let mut our_fields: Vec<&[u8]> = Vec::new();
        for (name, value, line) in Fields::split(original)?.fields {
            if !name.eq_ignore_ascii_case(b"DKIM-Signature") {
                continue;
            }
            let Some(tags) = SignatureTags::parse(value) else {
                continue;
            };
            for key in &self.keys {
                let matches = key.domain.eq_ignore_ascii_case(tags.d)
                    && key.selector.eq_ignore_ascii_case(tags.s);
                if !matches {
                    continue;
                }
                let Ok(again) = sign_with(key, original, tags.t) else {
                    continue;
                };
                if original.get(line.clone()) == Some(&again[..]) {
                    ours.push(key);
                    our_fields.push(value);
                    break;
                }
            }
        }
        if ours.is_empty() {
            return None;
        }
        let stripped = without_fields(converted, &our_fields);
        let t = unix_seconds(now);
        let mut out = Vec::with_capacity(stripped.len() + 1024 * ours.len());
        for key in ours {
            if let Ok(field) = sign_with(key, &stripped, t) {
                out.extend_from_slice(&field);
            }
        }
        out.extend_from_slice(&stripped);
        Some(out)
    }

    /// The keys of the most specific configured domain that is `domain` or a parent of it.
    fn keys_for(&self, domain: &str) -> Vec<&Key> {
        let best = self
            .keys
            .iter()
            .filter(|k| covers(&k.domain, domain))
            .map(|k| k.domain.len())
            .max();
        self.keys
            .iter()
            .filter(|k| best == Some(k.domain.len()) && covers(&k.domain, domain))
            .collect()
    }

    /// Whether a key covers `domain` (the From domain of a message we would sign).
    pub fn covers(&self, domain: &str) -> bool {
        let domain = domain.to_ascii_lowercase();
        self.keys.iter().any(|k| covers(&k.domain, &domain))
    }
}

/// The process's signing keys, shared by every core and the report sender, replaced as a
/// whole by [`Signer::reload`].
#[derive(Debug)]
pub struct Signer {
    current: RwLock<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    settings: Vec<KeySettings>,
    keys: Arc<KeySet>,
}

impl Signer {
    /// Loads every key: an error names the file (a bad key must stop the start).
    pub fn load(settings: Vec<KeySettings>) -> Result<Signer, KeyError> {
        let keys = Arc::new(KeySet::load(&settings)?);
        Ok(Signer {
            current: RwLock::new(Loaded { settings, keys }),
        })
    }

    /// A signer with no keys: signs nothing.
    pub fn none() -> Signer {
        Signer {
            current: RwLock::new(Loaded {
                settings: Vec::new(),
                keys: Arc::new(KeySet::default()),
            }),
        }
    }

    /// Reads the key files again: those of `settings` when given (a re-read config), else
    /// the current ones. On any error the current keys stay in use.
    pub fn reload(&self, settings: Option<Vec<KeySettings>>) -> Result<(), KeyError> {
        let settings = settings.unwrap_or_else(|| self.settings());
        let keys = Arc::new(KeySet::load(&settings)?);
        let mut current = match self.current.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        *current = Loaded { settings, keys };
        Ok(())
    }

    /// The keys in use now.
    pub fn keys(&self) -> Arc<KeySet> {
        match self.current.read() {
            Ok(guard) => Arc::clone(&guard.keys),
            Err(poisoned) => Arc::clone(&poisoned.into_inner().keys),
        }
    }

    /// The settings the keys in use were loaded from.
    pub fn settings(&self) -> Vec<KeySettings> {
        match self.current.read() {
            Ok(guard) => guard.settings.clone(),
            Err(poisoned) => poisoned.into_inner().settings.clone(),
        }
    }

    /// [`KeySet::sign`] with the keys in use now: the `DKIM-Signature` fields to prepend to
    /// the complete `message`, empty when its From domain has no key.
    pub fn sign(&self, message: &[u8], now: SystemTime) -> Vec<u8> {
        self.keys().sign(message, now)
    }

    /// [`KeySet::resign`] with the keys in use now.
    pub fn resign(&self, original: &[u8], converted: &[u8], now: SystemTime) -> Option<Vec<u8>> {
        self.keys().resign(original, converted, now)
    }
}

/// `domain` is `signing` or below it (both lower-case).
fn covers(signing: &str, domain: &str) -> bool {
    domain == signing
        || domain
            .strip_suffix(signing)
            .is_some_and(|head| head.ends_with('.'))
}

fn unix_seconds(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The one domain of the message's single From field (lower-case), if there is exactly one.
pub fn from_domain(message: &[u8]) -> Option<String> {
    let mut found: Option<&[u8]> = None;
    for (name, value, _) in Fields::split(message)?.fields {
        if name.eq_ignore_ascii_case(b"From") {
            if found.is_some() {
                return None;
            }
            found = Some(value);
        }
    }
    let value = found?;
    let parsed = mail_parser::parsers::MessageStream::new(value).parse_address();
    let mut domain: Option<String> = None;
    let mut check = |address: Option<&str>| -> bool {
        let Some(address) = address else {
            return true;
        };
        let Some((_, d)) = address.rsplit_once('@') else {
            return false;
        };
        let d = d.trim().trim_end_matches('.').to_ascii_lowercase();
        if d.is_empty() {
            return false;
        }
        match &domain {
            None => {
                domain = Some(d);
                true
            }
            Some(seen) => *seen == d,
        }
    };
    match parsed {
        mail_parser::HeaderValue::Address(mail_parser::Address::List(list)) => {
            for addr in &list {
                if !check(addr.address.as_deref()) {
                    return None;
                }
            }
        }
        mail_parser::HeaderValue::Address(mail_parser::Address::Group(groups)) => {
            for addr in groups.iter().flat_map(|g| g.addresses.iter()) {
                if !check(addr.address.as_deref()) {
                    return None;
                }
            }
        }
        _ => return None,
    }
    domain
}

/// A message's header fields and where its body starts.
struct Fields<'a> {
    /// (name, value with its line end, the whole field's octets).
    fields: Vec<(&'a [u8], &'a [u8], std::ops::Range<usize>)>,
    body: &'a [u8],
}

impl<'a> Fields<'a> {
    fn split(message: &'a [u8]) -> Option<Fields<'a>> {
        let mut parsed = Vec::new();
        let block = crate::mime::header::parse_block(
            message,
            0..message.len(),
            usize::MAX,
            usize::MAX,
            &mut parsed,
        )
        .ok()?;
        let fields = parsed
            .into_iter()
            .filter_map(|f| {
                let name = message.get(f.name.clone())?;
                let value = message.get(f.value.start..f.line.end)?;
                Some((name, value, f.line))
            })
            .collect();
        Some(Fields {
            fields,
            body: message.get(block.body_start..).unwrap_or_default(),
        })
    }
}

/// One signature by `key` over `message` at time `t`: the whole `DKIM-Signature` field.
fn sign_with(key: &Key, message: &[u8], t: u64) -> Result<Vec<u8>, mail_auth::Error> {
    let Some(split) = Fields::split(message) else {
        return Err(mail_auth::Error::NoHeadersFound);
    };
    let mut picked: Vec<(&[u8], &[u8])> = split
        .fields
        .iter()
        .filter(|(name, _, _)| {
            key.headers
                .iter()
                .any(|h| name.eq_ignore_ascii_case(h.as_bytes()))
        })
        .map(|(name, value, _)| (*name, *value))
        .collect();
    if !picked
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case(b"From"))
    {
        return Err(mail_auth::Error::NoHeadersFound);
    }
    let body = split.body;
    // h= names the fields bottom-up (a verifier takes the last instance first, RFC 6376
    // §5.4.2), then one more of each over-signed name: that one matches nothing.
    picked.reverse();
    let mut h: Vec<String> = picked
        .iter()
        .map(|(name, _)| String::from_utf8_lossy(name).into_owned())
        .collect();
    h.extend(key.oversigned.iter().cloned());
    let mut signature = Signature {
        v: 1,
        a: key.key.algorithm(),
        d: key.domain.clone(),
        s: key.selector.clone(),
        h,
        t,
        ch: Canonicalization::Relaxed,
        cb: Canonicalization::Relaxed,
        ..Default::default()
    };
    signature.bh = key
        .key
        .hash(super::body_hash::RelaxedBody(body))
        .as_ref()
        .to_vec();
    signature.b = key.key.sign(Signable {
        headers: &picked,
        signature: &signature,
    })?;
    let mut field = Vec::with_capacity(512);
    signature.write(&mut field, true);
    Ok(field)
}

/// What the signature covers (RFC 6376 §3.7): the selected fields, canonicalised in `h=`
/// order, then the signature field itself with an empty `b=` and no CRLF.
struct Signable<'a> {
    headers: &'a [(&'a [u8], &'a [u8])],
    signature: &'a Signature,
}

impl Writable for Signable<'_> {
    fn write(self, writer: &mut impl Writer) {
        Canonicalization::Relaxed.canonicalize_headers(self.headers.iter().copied(), writer);
        self.signature.write(writer, false);
    }
}

/// `d=`, `s=` and `t=` of a `DKIM-Signature` value.
struct SignatureTags<'a> {
    d: &'a str,
    s: &'a str,
    t: u64,
}

impl<'a> SignatureTags<'a> {
    fn parse(value: &'a [u8]) -> Option<SignatureTags<'a>> {
        let text = std::str::from_utf8(value).ok()?;
        let (mut d, mut s, mut t) = (None, None, None);
        for tag in text.split(';') {
            let Some((name, value)) = tag.split_once('=') else {
                continue;
            };
            let value = value.trim();
            match name.trim() {
                "d" => d = Some(value),
                "s" => s = Some(value),
                "t" => t = value.parse().ok(),
                _ => {}
            }
        }
        Some(SignatureTags {
            d: d?,
            s: s?,
            t: t?,
        })
    }
}

/// `message` without the `DKIM-Signature` fields whose values are in `drop`.
fn without_fields(message: &[u8], drop: &[&[u8]]) -> Vec<u8> {
    let Some(split) = Fields::split(message) else {
        return message.to_vec();
    };
    let mut out = Vec::with_capacity(message.len());
    let mut dropped = vec![false; drop.len()];
    let mut at = 0;
    for (name, value, line) in split.fields {
        if !name.eq_ignore_ascii_case(b"DKIM-Signature") {
            continue;
        }
        let Some(i) = (0..drop.len()).find(|&i| !dropped[i] && drop[i] == value) else {
            continue;
        };
        dropped[i] = true;
        out.extend_from_slice(message.get(at..line.start).unwrap_or_default());
        at = line.end;
    }
    out.extend_from_slice(message.get(at..).unwrap_or_default());
    out
}

/// Reads and parses a private key file: it must be readable by its owner only and hold a
/// key of `algorithm` (PEM PKCS#1 or PKCS#8 RSA; PEM PKCS#8 Ed25519, or the base64 32-octet
/// seed dkimpy's `dknewkey` writes).
pub fn load_key(path: &Path, algorithm: Algorithm) -> Result<DkimKey, KeyError> {
    use std::os::unix::fs::PermissionsExt;
    let read = |source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    };
    let metadata = std::fs::metadata(path).map_err(read)?;
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Mode {
            path: path.to_path_buf(),
            mode,
        });
    }
    let bytes = std::fs::read(path).map_err(read)?;
    parse_key(&bytes, algorithm).map_err(|reason| KeyError::Invalid {
        path: path.to_path_buf(),
        algorithm: algorithm.name(),
        reason,
    })
}

/// A private key from a file's contents; the error says why (never the key itself).
pub fn parse_key(bytes: &[u8], algorithm: Algorithm) -> Result<DkimKey, String> {
    match algorithm {
        Algorithm::RsaSha256 => {
            let der = PrivateKeyDer::from_pem_slice(bytes)
                .map_err(|e| format!("no PEM private key ({e})"))?;
            let key = RsaKey::<Sha256>::from_key_der(der).map_err(|e| e.to_string())?;
            // RFC 8301 §3.2: signers use at least 1024 bits; we ask for what keygen makes.
            let bits = rsa_modulus_bits(&key.public_key());
            if bits < 1024 {
                return Err(format!(
                    "an RSA key of {bits} bits is too short (RFC 8301: at least 1024; use 2048)"
                ));
            }
            Ok(DkimKey::Rsa(key))
        }
        Algorithm::Ed25519Sha256 => {
            let key = match PrivateKeyDer::from_pem_slice(bytes) {
                Ok(PrivateKeyDer::Pkcs8(der)) => {
                    Ed25519Key::from_pkcs8_maybe_unchecked_der(der.secret_pkcs8_der())
                        .map_err(|e| e.to_string())?
                }
                Ok(_) => return Err("not a PKCS#8 Ed25519 key".into()),
                Err(_) => {
                    let text = std::str::from_utf8(bytes)
                        .map_err(|_| "neither PEM nor a base64 seed".to_string())?;
                    let seed = base64_simd::STANDARD
                        .decode_to_vec(text.trim())
                        .map_err(|_| "neither PEM nor a base64 seed".to_string())?;
                    if seed.len() != 32 {
                        return Err("a base64 Ed25519 seed must be 32 octets".into());
                    }
                    Ed25519Key::from_pkcs8_maybe_unchecked_der(&ed25519_pkcs8_v1(&seed))
                        .map_err(|e| e.to_string())?
                }
            };
            Ok(DkimKey::Ed25519(key))
        }
    }
}

/// The PKCS#8 v1 wrapping of a raw Ed25519 seed (RFC 8410 §7).
pub(crate) fn ed25519_pkcs8_v1(seed: &[u8]) -> Vec<u8> {
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend_from_slice(seed);
    der
}

/// The public key as DKIM's `p=` carries it: Ed25519, the raw 32 octets (RFC 8463 §4.2);
/// RSA, a SubjectPublicKeyInfo (what `openssl rsa -pubout` prints and every verifier reads).
pub fn public_key_record(key: &DkimKey) -> (&'static str, Vec<u8>) {
    match key {
        DkimKey::Ed25519(key) => ("ed25519", key.public_key()),
        DkimKey::Rsa(key) => ("rsa", rsa_spki(&key.public_key())),
    }
}

/// The `v=DKIM1; k=…; p=…` text of `key`'s DNS record.
pub fn dns_record_text(key: &DkimKey) -> String {
    let (k, p) = public_key_record(key);
    format!(
        "v=DKIM1; k={k}; p={}",
        base64_simd::STANDARD.encode_to_string(p)
    )
}

/// DER: a SubjectPublicKeyInfo around a PKCS#1 RSAPublicKey.
fn rsa_spki(pkcs1: &[u8]) -> Vec<u8> {
    // AlgorithmIdentifier { rsaEncryption, NULL }
    const ALGORITHM: &[u8] = &[
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut bit_string = vec![0x00];
    bit_string.extend_from_slice(pkcs1);
    let mut inner = ALGORITHM.to_vec();
    der_push(&mut inner, 0x03, &bit_string);
    let mut out = Vec::with_capacity(inner.len() + 4);
    der_push(&mut out, 0x30, &inner);
    out
}

fn der_push(out: &mut Vec<u8>, tag: u8, content: &[u8]) {
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        let significant = bytes.get(skip..).unwrap_or_default();
        out.push(0x80 | significant.len() as u8);
        out.extend_from_slice(significant);
    }
    out.extend_from_slice(content);
}

/// The modulus size of a PKCS#1 RSAPublicKey (0 if it does not parse).
fn rsa_modulus_bits(pkcs1: &[u8]) -> usize {
    // SEQUENCE { INTEGER modulus, INTEGER exponent }
    fn header(der: &[u8]) -> Option<(u8, usize, usize)> {
        let tag = *der.first()?;
        let first = *der.get(1)? as usize;
        if first < 0x80 {
            return Some((tag, first, 2));
        }
        let n = first & 0x7f;
        let mut len = 0usize;
        for i in 0..n {
            len = len.checked_mul(256)? + *der.get(2 + i)? as usize;
        }
        Some((tag, len, 2 + n))
    }
    let Some((0x30, _, at)) = header(pkcs1) else {
        return 0;
    };
    let rest = pkcs1.get(at..).unwrap_or_default();
    let Some((0x02, len, at)) = header(rest) else {
        return 0;
    };
    let modulus = rest.get(at..at + len).unwrap_or_default();
    let significant = modulus
        .iter()
        .position(|b| *b != 0)
        .map(|i| modulus.len() - i)
        .unwrap_or(0);
    let top = modulus
        .get(modulus.len() - significant)
        .copied()
        .unwrap_or(0);
    if significant == 0 {
        return 0;
    }
    (significant - 1) * 8 + (8 - top.leading_zeros() as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    const MESSAGE: &[u8] = b"From: Alice <alice@example.test>\r\nTo: bob@remote.test\r\nSubject: hi\r\nX-Other: not signed\r\nDate: Fri, 4 Dec 2026 10:00:00 +0000\r\n\r\nbody\r\n";

    fn key_file(dir: &Path, name: &str, algorithm: Algorithm) -> PathBuf {
        let key = crate::sender_auth::keys::generate(algorithm).expect("keygen");
        let path = dir.join(name);
        std::fs::write(&path, key.pem).expect("write key");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        path
    }

    fn settings(dir: &Path, domain: &str, selector: &str) -> KeySettings {
        KeySettings {
            domain: domain.into(),
            selector: selector.into(),
            key_file: key_file(dir, selector, Algorithm::Ed25519Sha256),
            algorithm: Algorithm::Ed25519Sha256,
            headers: None,
        }
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn tag<'a>(field: &'a str, name: &str) -> Option<&'a str> {
        let unfolded = field.split_once(':')?.1;
        unfolded.split(';').find_map(|t| {
            let (n, v) = t.split_once('=')?;
            (n.trim() == name).then_some(v.trim())
        })
    }

    fn unfold(bytes: &[u8]) -> String {
        String::from_utf8_lossy(bytes)
            .replace("\r\n\t", " ")
            .replace("\r\n ", " ")
    }

    #[test]
    fn signature_has_our_tags_and_oversigns() {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys = KeySet::load(&[settings(dir.path(), "example.test", "ed")]).expect("load");
        let field = keys.sign(MESSAGE, at(1_800_000_000));
        let text = unfold(&field);
        assert!(
            text.starts_with("DKIM-Signature: v=1; a=ed25519-sha256;"),
            "{text}"
        );
        assert!(text.ends_with("\r\n"), "{text}");
        assert_eq!(tag(&text, "d"), Some("example.test"));
        assert_eq!(tag(&text, "s"), Some("ed"));
        assert_eq!(tag(&text, "c"), Some("relaxed/relaxed"));
        assert_eq!(tag(&text, "t"), Some("1800000000"));
        assert_eq!(tag(&text, "l"), None, "never l=");
        let h: Vec<String> = tag(&text, "h")
            .expect("h=")
            .split(':')
            .map(|n| n.trim().to_ascii_lowercase())
            .collect();
        let count = |name: &str| h.iter().filter(|n| *n == name).count();
        // Present once, listed twice; absent and over-signed: once; absent others: never.
        for name in ["from", "to", "subject", "date"] {
            assert_eq!(count(name), 2, "{name} in {h:?}");
        }
        assert_eq!(count("x-other"), 0);
        assert_eq!(count("cc"), 0, "absent, not over-signed: not listed");
        // Deterministic: the same input and time give the same field.
        assert_eq!(keys.sign(MESSAGE, at(1_800_000_000)), field);
    }

    #[test]
    fn only_our_domains_and_their_subdomains_are_signed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys = KeySet::load(&[
            settings(dir.path(), "example.test", "a"),
            settings(dir.path(), "news.example.test", "b"),
        ])
        .expect("load");
        let with_from = |from: &str| {
            let m = format!("From: {from}\r\nSubject: s\r\n\r\nbody\r\n");
            unfold(&keys.sign(m.as_bytes(), at(1)))
        };
        assert_eq!(tag(&with_from("x@example.test"), "s"), Some("a"));
        let deep = with_from("x@deep.news.example.test");
        assert_eq!(
            tag(&deep, "d"),
            Some("news.example.test"),
            "most specific domain"
        );
        assert_eq!(deep.matches("DKIM-Signature").count(), 1);
        assert_eq!(tag(&with_from("x@EXAMPLE.TEST"), "s"), Some("a"));
        assert!(with_from("x@badexample.test").is_empty());
        assert!(with_from("x@other.test").is_empty());
        assert!(with_from("x@example.test, y@other.test").is_empty());
        let two = b"From: a@example.test\r\nFrom: b@example.test\r\n\r\nx\r\n";
        assert!(keys.sign(two, at(1)).is_empty(), "two From fields");
        assert!(keys.sign(b"Subject: s\r\n\r\nx\r\n", at(1)).is_empty());
    }

    #[test]
    fn dual_signing_gives_one_field_per_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut rsa = settings(dir.path(), "example.test", "r");
        rsa.algorithm = Algorithm::RsaSha256;
        rsa.key_file = key_file(dir.path(), "rsa", Algorithm::RsaSha256);
        let keys = KeySet::load(&[settings(dir.path(), "example.test", "e"), rsa]).expect("load");
        let text = unfold(&keys.sign(MESSAGE, at(5)));
        assert_eq!(text.matches("DKIM-Signature:").count(), 2, "{text}");
        assert!(text.contains("a=ed25519-sha256") && text.contains("a=rsa-sha256"));
    }

    #[test]
    fn resign_replaces_ours_and_keeps_others() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ours = KeySet::load(&[settings(dir.path(), "example.test", "ed")]).expect("load");
        // Someone else's key under our d= and s=: a forgery we must not take for ours.
        let other = KeySet::load(&[settings(dir.path(), "example.test", "ed")]).expect("load");
        let mut original = ours.sign(MESSAGE, at(100));
        let forged = other.sign(MESSAGE, at(100));
        original.extend_from_slice(&forged);
        original.extend_from_slice(MESSAGE);
        let converted = [&original[..], b"converted\r\n"].concat();
        let resigned = ours
            .resign(&original, &converted, at(200))
            .expect("ours found");
        let fresh = ours.sign(&[&forged[..], MESSAGE, b"converted\r\n"].concat(), at(200));
        assert_eq!(
            resigned,
            [&fresh[..], &forged[..], MESSAGE, b"converted\r\n"].concat()
        );
        // Only someone else's signature: nothing to do.
        let foreign = [&forged[..], MESSAGE].concat();
        assert_eq!(ours.resign(&foreign, &foreign, at(200)), None);
    }

    #[test]
    fn key_files_are_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut entry = settings(dir.path(), "example.test", "ed");
        std::fs::set_permissions(&entry.key_file, std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
        let err = KeySet::load(&[entry.clone()]).expect_err("0644");
        assert!(matches!(err, KeyError::Mode { mode: 0o644, .. }), "{err}");
        assert!(err
            .to_string()
            .contains(&entry.key_file.display().to_string()));
        std::fs::set_permissions(&entry.key_file, std::fs::Permissions::from_mode(0o400))
            .expect("chmod");
        KeySet::load(&[entry.clone()]).expect("0400 is fine");
        entry.algorithm = Algorithm::RsaSha256;
        let err = KeySet::load(&[entry.clone()]).expect_err("ed25519 key as rsa");
        assert!(matches!(err, KeyError::Invalid { .. }), "{err}");
        entry.key_file = dir.path().join("missing");
        assert!(matches!(
            KeySet::load(&[entry]).expect_err("missing"),
            KeyError::Read { .. }
        ));
    }

    #[test]
    fn dkimpy_seed_files_load() {
        let seed = [7u8; 32];
        let text = base64_simd::STANDARD.encode_to_string(seed);
        let key = parse_key(text.as_bytes(), Algorithm::Ed25519Sha256).expect("seed");
        assert!(dns_record_text(&key).starts_with("v=DKIM1; k=ed25519; p="));
        assert!(parse_key(b"AAAA", Algorithm::Ed25519Sha256).is_err());
    }

    #[test]
    fn rsa_record_is_a_subject_public_key_info() {
        let der = [0x30, 0x03, 0x02, 0x01, 0x05];
        let spki = rsa_spki(&der);
        assert_eq!(spki[0], 0x30);
        assert!(spki.ends_with(&[0x03, 0x06, 0x00, 0x30, 0x03, 0x02, 0x01, 0x05]));
        let mut modulus = vec![0x00, 0x80];
        modulus.extend(std::iter::repeat_n(0u8, 255));
        let mut seq = vec![0x02, 0x82, 0x01, 0x01];
        seq.extend(&modulus);
        seq.extend([0x02, 0x01, 0x03]);
        let mut pkcs1 = vec![0x30, 0x82, 0x01, 0x08];
        pkcs1.extend(&seq);
        assert_eq!(rsa_modulus_bits(&pkcs1), 2048);
    }
}
