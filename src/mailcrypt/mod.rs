//! OpenPGP and S/MIME for stored mail, sans-IO: users' public keys (parsed and checked on
//! entry), sealing a message to one key before it is written (PGP/MIME, RFC 3156; S/MIME 4.0
//! enveloped data, RFC 8551), checking the signatures of arriving mail, and the Web Key
//! Directory's names (draft-koch-openpgp-webkey-service).
//!
//! Exposure: messages come from network peers, keys and certificates from users and
//! operators; every parse is bounded and every failure is a typed error, never a panic.
//! Only public keys are ever handled here: nothing in this module decrypts or signs.

pub mod entity;
pub mod openpgp;
pub mod smime;
pub mod wkd;

/// A user's public key, parsed and checked ([`openpgp::parse_key`], [`smime::parse_cert`]).
#[derive(Clone, Debug)]
pub enum PublicKey {
    OpenPgp(openpgp::Key),
    Smime(smime::Cert),
}

impl PublicKey {
    pub fn kind(&self) -> KeyKind {
        match self {
            PublicKey::OpenPgp(_) => KeyKind::OpenPgp,
            PublicKey::Smime(_) => KeyKind::Smime,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyKind {
    OpenPgp,
    Smime,
}

impl KeyKind {
    pub fn name(self) -> &'static str {
        match self {
            KeyKind::OpenPgp => "openpgp",
            KeyKind::Smime => "smime",
        }
    }
}

/// Why a key or certificate is refused on entry. The text is shown to the user or operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("not an OpenPGP public key or S/MIME certificate: {0}")]
    Unreadable(String),
    #[error("a secret key was given: only the public key may be registered")]
    SecretKey,
    #[error("the key has no usable encryption (sub)key: {0}")]
    NoEncryptionKey(String),
    #[error("the key expired or is not yet valid: {0}")]
    Expired(String),
    #[error("the key is revoked")]
    Revoked,
    #[error("the key names none of the user's addresses ({0})")]
    NoMatchingAddress(String),
    #[error("the certificate is not for e-mail protection: {0}")]
    WrongUsage(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("too large: {0} bytes (at most {1})")]
    TooLarge(usize, usize),
}

/// Why a message could not be sealed. Delivery treats it as a temporary failure: the
/// plaintext is never stored for a user whose mail is to be encrypted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("the message cannot be sealed: {0}")]
    Message(String),
    #[error("encryption failed: {0}")]
    Crypto(String),
}

/// Is `message` (header and body) already encrypted: PGP/MIME `multipart/encrypted`,
/// inline-armoured PGP, or S/MIME enveloped or auth-enveloped data? Such mail is stored as
/// it came.
pub fn is_encrypted(message: &[u8]) -> bool {
    entity::is_encrypted(message)
}

/// The complete message to store for the owner of `key`: the fields that route and identify
/// it in clear (see [`entity::split`]), the rest encrypted to `key`.
pub fn seal(key: &PublicKey, message: &[u8]) -> Result<Vec<u8>, SealError> {
    match key {
        PublicKey::OpenPgp(key) => openpgp::seal(key, message),
        PublicKey::Smime(cert) => smime::seal(cert, message),
    }
}

/// The verdict on one signed message, as it goes into `Authentication-Results`
/// (RFC 8601; `smime` per RFC 7281, OpenPGP under the method name in [`openpgp::METHOD`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The signature verifies and the signer is known (for S/MIME: the chain reaches a trust
    /// anchor and the certificate is for e-mail protection). `signer`: the address or
    /// fingerprint that signed.
    Pass { signer: String },
    /// The signature does not verify (the content was changed, or the signature is broken).
    Fail { reason: String },
    /// The signature verifies but its signer is not trusted (S/MIME chain to no anchor,
    /// expired or wrong usage).
    Untrusted { signer: String, reason: String },
    /// No key to check it with (OpenPGP signer unknown to us and to its domain's WKD).
    UnknownSigner { signer: String },
    /// Malformed signature structure.
    PermError { reason: String },
    /// A lookup failed for now (WKD timeout).
    TempError { reason: String },
}

/// Which kind of signature, if any, a message carries at its top level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureKind {
    OpenPgp,
    Smime,
}

/// Is `message` signed (PGP/MIME `multipart/signed`, S/MIME `multipart/signed` or opaque
/// `application/pkcs7-mime; smime-type=signed-data`)?
pub fn signature_kind(message: &[u8]) -> Option<SignatureKind> {
    entity::signature_kind(message)
}
