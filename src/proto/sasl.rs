//! SASL PLAIN for AUTH (RFC 5034, RFC 4616): the base64 decoder and the PLAIN message.
//!
//! Exposure: base64 text from unauthenticated peers; the decoded bytes hold a password.
//! Nothing here logs, and [`Plain`]'s `Debug` redacts the password.
//!
//! Standards: RFC 4648 §4 (base64 with padding; RFC 5034 §4 requires it and forbids
//! whitespace inside the response), RFC 4616 §2 (`[authzid] NUL authcid NUL passwd`, UTF-8,
//! each at most 255 octets, authcid and passwd not empty).
//!
//! Base64 is `base64-simd`'s strict standard alphabet (the codec the MIME engine uses too),
//! plus the one rule it leaves open: the encoding must be canonical (the bits under the
//! padding are zero), so one password has exactly one encoding.

use std::fmt;

/// RFC 4616 §2: each of authzid, authcid and passwd is at most 255 octets.
const FIELD_MAX: usize = 255;

/// A decoded PLAIN message.
#[derive(Clone, PartialEq, Eq)]
pub struct Plain {
    /// Empty authzid means "act as authcid" (RFC 4616 §2): `None`.
    pub authzid: Option<String>,
    pub authcid: String,
    pub password: String,
}

impl fmt::Debug for Plain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plain")
            .field("authzid", &self.authzid)
            .field("authcid", &self.authcid)
            .field("password", &format_args!("<redacted>"))
            .finish()
    }
}

/// Why a SASL response was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    #[error("not base64")]
    Base64,
    #[error("not a PLAIN message")]
    Plain,
}

/// Decodes RFC 4648 base64 with mandatory padding, no whitespace and canonical padding bits.
pub fn decode_base64(text: &[u8]) -> Result<Vec<u8>, SaslError> {
    let decoded = base64_simd::STANDARD
        .decode_to_vec(text)
        .map_err(|_| SaslError::Base64)?;
    // Non-canonical text ("Zh==" for "f") decodes, but re-encodes differently.
    if base64_simd::STANDARD.encode_to_string(&decoded).as_bytes() != text {
        return Err(SaslError::Base64);
    }
    Ok(decoded)
}

/// Decodes an AUTH PLAIN response (the base64 text as sent; `=` is an empty response).
pub fn decode_plain(response: &[u8]) -> Result<Plain, SaslError> {
    let bytes = if response == b"=" {
        Vec::new()
    } else {
        decode_base64(response)?
    };
    let mut fields = bytes.split(|&b| b == 0);
    let (Some(authzid), Some(authcid), Some(password), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(SaslError::Plain);
    };
    if authcid.is_empty()
        || password.is_empty()
        || [authzid, authcid, password]
            .iter()
            .any(|field| field.len() > FIELD_MAX)
    {
        return Err(SaslError::Plain);
    }
    let text = |field: &[u8]| {
        std::str::from_utf8(field)
            .map(str::to_owned)
            .map_err(|_| SaslError::Plain)
    };
    Ok(Plain {
        authzid: if authzid.is_empty() {
            None
        } else {
            Some(text(authzid)?)
        },
        authcid: text(authcid)?,
        password: text(password)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A straightforward encoder, for the tests only.
    pub(crate) fn encode_base64(data: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut text = String::new();
        for chunk in data.chunks(3) {
            let mut bytes = [0u8; 3];
            bytes[..chunk.len()].copy_from_slice(chunk);
            let bits = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]);
            for i in 0..4 {
                if i <= chunk.len() {
                    text.push(ALPHABET[((bits >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    text.push('=');
                }
            }
        }
        text
    }

    #[test]
    fn base64_table() {
        let table: &[(&str, Option<&[u8]>)] = &[
            ("", Some(b"")),
            ("Zg==", Some(b"f")),
            ("Zm8=", Some(b"fo")),
            ("Zm9v", Some(b"foo")),
            ("Zm9vYg==", Some(b"foob")),
            ("Zm9vYmFy", Some(b"foobar")),
            ("+/+/", Some(&[0xfb, 0xff, 0xbf])),
            ("Zg", None),
            ("Zg=", None),
            ("Zg===", None),
            ("Z===", None),
            ("Zh==", None),
            ("Zm9=", None),
            ("Zg==Zg==", None),
            ("Zm9v YmFy", None),
            ("Zm9v\r\n", None),
            ("Zm9-", None),
            ("====", None),
        ];
        for (text, expected) in table {
            assert_eq!(
                decode_base64(text.as_bytes()).ok().as_deref(),
                *expected,
                "{text:?}"
            );
        }
    }

    #[test]
    fn plain_table() {
        let plain = |z: Option<&str>, c: &str, p: &str| Plain {
            authzid: z.map(str::to_owned),
            authcid: c.to_owned(),
            password: p.to_owned(),
        };
        let table: &[(&[u8], Result<Plain, SaslError>)] = &[
            (b"\0alice\0secret", Ok(plain(None, "alice", "secret"))),
            (
                b"bob\0alice\0s e c",
                Ok(plain(Some("bob"), "alice", "s e c")),
            ),
            (
                "\0j\u{f6}rg\0p\u{e4}ss".as_bytes(),
                Ok(plain(None, "j\u{f6}rg", "p\u{e4}ss")),
            ),
            (b"", Err(SaslError::Plain)),
            (b"alice\0secret", Err(SaslError::Plain)),
            (b"\0\0secret", Err(SaslError::Plain)),
            (b"\0alice\0", Err(SaslError::Plain)),
            (b"\0alice\0secret\0", Err(SaslError::Plain)),
            (b"\0alice\0\xff", Err(SaslError::Plain)),
        ];
        for (message, expected) in table {
            let response = encode_base64(message);
            assert_eq!(
                &decode_plain(response.as_bytes()),
                expected,
                "{:?}",
                String::from_utf8_lossy(message)
            );
        }
        assert_eq!(decode_plain(b"="), Err(SaslError::Plain));
        assert_eq!(decode_plain(b"AGFsaWNl#"), Err(SaslError::Base64));
        let long = format!("\0{}\0x", "a".repeat(256));
        assert_eq!(
            decode_plain(encode_base64(long.as_bytes()).as_bytes()),
            Err(SaslError::Plain)
        );
    }

    #[test]
    fn debug_redacts_the_password() {
        let shown = format!("{:?}", decode_plain(b"AGFsaWNlAGh1bnRlcjI=").unwrap());
        assert!(
            shown.contains("alice") && !shown.contains("hunter2"),
            "{shown}"
        );
    }

    proptest! {
        #[test]
        fn decode_of_encode_is_identity(data in prop::collection::vec(any::<u8>(), 0..100)) {
            let text = encode_base64(&data);
            prop_assert_eq!(decode_base64(text.as_bytes()), Ok(data));
        }

        #[test]
        fn any_text_decodes_or_errs(text in prop::collection::vec(any::<u8>(), 0..100)) {
            let _ = decode_plain(&text);
        }
    }
}
