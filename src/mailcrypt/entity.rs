//! What of a message stays in clear when it is sealed, and what is encrypted.
//!
//! RFC 3156 §4 and RFC 8551 §3.1 encrypt a MIME entity: the message's content with its
//! `Content-*` fields. Everything else of the top-level header stays outside, because
//! delivery, threading and every mail client's message list read it there: the trace
//! fields (`Received`, `Return-Path`, our `Authentication-Results`), the originator and
//! destination fields, `Date`, `Subject`, `Message-ID`, `In-Reply-To`, `References` and
//! any extension field. `MIME-Version` and the `Content-*` fields move inside; the outer
//! header gets its own. Protecting the subject (RFC 9788) is not done: a client without
//! RFC 9788 support would list every stored message under a placeholder subject.

use crate::mime::header::{parse_block, ContentType, Field};

/// Header fields looked at, at most (the SMTP session already bounded the message).
const FIELDS_MAX: usize = 10_000;
/// Header octets looked at, at most.
const HEADER_BYTES_MAX: usize = 1 << 20;

/// A message cut into the header kept in clear and the entity to encrypt.
#[derive(Debug, PartialEq, Eq)]
pub struct Split {
    /// The top-level fields that stay outside, each with its line end, in their order;
    /// without `MIME-Version` and `Content-*`.
    pub outer: Vec<u8>,
    /// The MIME entity to encrypt: the `Content-*` fields (or `Content-Type: text/plain;
    /// charset=us-ascii` when there are none, RFC 2045 §5.2), a blank line, the body. Line
    /// ends are CRLF throughout (RFC 3156 §3 canonical form).
    pub inner: Vec<u8>,
}

/// Cuts `message` (header and body) into what stays in clear and what is encrypted.
pub fn split(message: &[u8]) -> Split {
    let mut fields = Vec::new();
    let block = match parse_block(
        message,
        0..message.len(),
        HEADER_BYTES_MAX,
        FIELDS_MAX,
        &mut fields,
    ) {
        Ok(block) => block,
        // Past the bounds the whole message is content: nothing of it is left in clear.
        Err(_) => {
            let mut inner = b"Content-Type: text/plain; charset=us-ascii\r\n\r\n".to_vec();
            push_crlf(&mut inner, message);
            return Split {
                outer: Vec::new(),
                inner,
            };
        }
    };
    let mut outer = Vec::with_capacity(block.header.len() + 2);
    let mut inner = Vec::with_capacity(message.len() + 64);
    let mut has_content_type = false;
    for field in &fields {
        let name = &message[field.name.clone()];
        if is_content_field(name) {
            has_content_type |= field.is(message, "Content-Type");
            push_crlf(&mut inner, line(message, field));
        } else if !field.is(message, "MIME-Version") {
            push_crlf(&mut outer, line(message, field));
        }
    }
    if !has_content_type {
        inner.extend_from_slice(b"Content-Type: text/plain; charset=us-ascii\r\n");
    }
    inner.extend_from_slice(b"\r\n");
    push_crlf(&mut inner, &message[block.body_start.min(message.len())..]);
    Split { outer, inner }
}

/// The whole field with a line end (a last field without one gets it).
fn line<'a>(message: &'a [u8], field: &Field) -> &'a [u8] {
    &message[field.line.clone()]
}

fn is_content_field(name: &[u8]) -> bool {
    name.len() > 8 && name[..8].eq_ignore_ascii_case(b"content-")
}

/// Appends `text` with every line end made CRLF (a bare LF or CR becomes CRLF), and a final
/// CRLF if the last line has none.
fn push_crlf(out: &mut Vec<u8>, text: &[u8]) {
    extend_crlf(out, text);
    if !text.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
}

/// Appends `text` with every line end (CRLF, a bare LF, a bare CR) made CRLF. Runs between
/// line ends are copied whole: a sealed megabyte passes through here twice.
pub(crate) fn extend_crlf(out: &mut Vec<u8>, text: &[u8]) {
    let mut rest = text;
    while let Some(i) = memchr::memchr2(b'\r', b'\n', rest) {
        out.extend_from_slice(&rest[..i]);
        out.extend_from_slice(b"\r\n");
        let crlf = rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n');
        rest = &rest[i + if crlf { 2 } else { 1 }..];
    }
    out.extend_from_slice(rest);
}

/// The top-level Content-Type value of `message`, if it has one that parses.
fn top_content_type(message: &[u8]) -> Option<(Vec<Field>, usize)> {
    let mut fields = Vec::new();
    parse_block(
        message,
        0..message.len(),
        HEADER_BYTES_MAX,
        FIELDS_MAX,
        &mut fields,
    )
    .ok()?;
    let index = fields.iter().position(|f| f.is(message, "Content-Type"))?;
    Some((fields, index))
}

fn with_content_type<T>(message: &[u8], f: impl FnOnce(&ContentType<'_>) -> T) -> Option<T> {
    let (fields, index) = top_content_type(message)?;
    let value = &message[fields[index].value.clone()];
    let ct = ContentType::parse(value)?;
    Some(f(&ct))
}

fn param_is(ct: &ContentType<'_>, name: &str, value: &str) -> bool {
    ct.param(name)
        .is_some_and(|v| v.bytes.eq_ignore_ascii_case(value.as_bytes()))
}

/// See [`super::is_encrypted`].
pub fn is_encrypted(message: &[u8]) -> bool {
    let by_type = with_content_type(message, |ct| {
        (ct.is("multipart", "encrypted") && param_is(ct, "protocol", "application/pgp-encrypted"))
            || ((ct.is("application", "pkcs7-mime") || ct.is("application", "x-pkcs7-mime"))
                && (param_is(ct, "smime-type", "enveloped-data")
                    || param_is(ct, "smime-type", "authEnveloped-data")))
    })
    .unwrap_or(false);
    by_type || inline_pgp_message(message)
}

/// A text body that begins with an ASCII-armoured OpenPGP message (RFC 9580 §6.2).
fn inline_pgp_message(message: &[u8]) -> bool {
    let mut fields = Vec::new();
    let Ok(block) = parse_block(
        message,
        0..message.len(),
        HEADER_BYTES_MAX,
        FIELDS_MAX,
        &mut fields,
    ) else {
        return false;
    };
    let body = &message[block.body_start.min(message.len())..];
    let start = body
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(body.len());
    body[start..].starts_with(b"-----BEGIN PGP MESSAGE-----")
}

/// See [`super::signature_kind`].
pub fn signature_kind(message: &[u8]) -> Option<super::SignatureKind> {
    use super::SignatureKind;
    with_content_type(message, |ct| {
        if ct.is("multipart", "signed") {
            if param_is(ct, "protocol", "application/pgp-signature") {
                return Some(SignatureKind::OpenPgp);
            }
            if param_is(ct, "protocol", "application/pkcs7-signature")
                || param_is(ct, "protocol", "application/x-pkcs7-signature")
            {
                return Some(SignatureKind::Smime);
            }
        }
        if (ct.is("application", "pkcs7-mime") || ct.is("application", "x-pkcs7-mime"))
            && param_is(ct, "smime-type", "signed-data")
        {
            return Some(SignatureKind::Smime);
        }
        None
    })
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mailcrypt::SignatureKind;

    #[test]
    fn content_fields_go_inside_and_the_rest_stays_outside() {
        let message = b"Received: from x\r\nFrom: a@example.org\r\nMIME-Version: 1.0\r\n\
Content-Type: text/plain;\r\n charset=utf-8\r\nSubject: hi\r\n\
Content-Transfer-Encoding: 8bit\r\n\r\nbody\r\n";
        let split = split(message);
        assert_eq!(
            split.outer,
            b"Received: from x\r\nFrom: a@example.org\r\nSubject: hi\r\n".to_vec()
        );
        assert_eq!(
            split.inner,
            b"Content-Type: text/plain;\r\n charset=utf-8\r\n\
Content-Transfer-Encoding: 8bit\r\n\r\nbody\r\n"
                .to_vec()
        );
    }

    #[test]
    fn a_message_without_content_type_gets_the_default_and_crlf() {
        let split = split(b"From: a@example.org\nSubject: x\n\nline one\nline two");
        assert_eq!(
            split.outer,
            b"From: a@example.org\r\nSubject: x\r\n".to_vec()
        );
        assert_eq!(
            split.inner,
            b"Content-Type: text/plain; charset=us-ascii\r\n\r\nline one\r\nline two\r\n".to_vec()
        );
    }

    #[test]
    fn every_line_end_becomes_crlf() {
        let mut out = Vec::new();
        extend_crlf(&mut out, b"a\nb\r\nc\rd\r\r\ne\n\n\r");
        assert_eq!(out, b"a\r\nb\r\nc\r\nd\r\n\r\ne\r\n\r\n\r\n".to_vec());
        let mut out = Vec::new();
        push_crlf(&mut out, b"no end");
        assert_eq!(out, b"no end\r\n".to_vec());
    }

    #[test]
    fn a_body_only_message_keeps_nothing_outside() {
        let split = split(b"\r\njust a body\r\n");
        assert!(split.outer.is_empty());
        assert!(split.inner.ends_with(b"\r\n\r\njust a body\r\n"));
    }

    #[test]
    fn encrypted_forms_are_recognised() {
        assert!(is_encrypted(
            b"Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\"; boundary=b\r\n\r\n"
        ));
        assert!(is_encrypted(
            b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m\r\n\r\n"
        ));
        assert!(is_encrypted(
            b"Subject: x\r\n\r\n\r\n-----BEGIN PGP MESSAGE-----\r\n"
        ));
        assert!(!is_encrypted(b"Content-Type: text/plain\r\n\r\nhello\r\n"));
        assert!(!is_encrypted(
            b"Content-Type: application/pkcs7-mime; smime-type=signed-data\r\n\r\n"
        ));
    }

    #[test]
    fn signed_forms_are_recognised() {
        assert_eq!(
            signature_kind(
                b"Content-Type: multipart/signed; micalg=pgp-sha256;\r\n protocol=\"application/pgp-signature\"; boundary=x\r\n\r\n"
            ),
            Some(SignatureKind::OpenPgp)
        );
        assert_eq!(
            signature_kind(
                b"Content-Type: multipart/signed; protocol=\"application/pkcs7-signature\"; boundary=x\r\n\r\n"
            ),
            Some(SignatureKind::Smime)
        );
        assert_eq!(
            signature_kind(b"Content-Type: application/pkcs7-mime; smime-type=signed-data\r\n\r\n"),
            Some(SignatureKind::Smime)
        );
        assert_eq!(signature_kind(b"Content-Type: text/plain\r\n\r\n"), None);
    }
}
