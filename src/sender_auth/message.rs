//! A received message as mail-auth's checks take it (`AuthenticatedMessage`), with the body
//! hashes computed by [`super::body_hash`] instead of mail-auth's canonicaliser (ours is
//! RFC 6376's where mail-auth's is not: whitespace-only lines at the end of the body). DKIM
//! and ARC verification in mail-auth compare a signature's `bh=` with these hashes only.
//!
//! mail-auth computes the body hashes inside its parse, over whatever follows the header
//! section. So the header section is parsed alone (mail-auth hashes an empty body, which
//! costs nothing) and the real hashes are filled in after. The split must be the one
//! mail-auth's parse would make of the whole message: [`header_section_end`] follows its
//! header scanner (`common::headers::scan_field`, crate-private there) step by step, and the
//! tests compare both parses field by field.

use mail_auth::AuthenticatedMessage;
use memchr::{memchr, memchr2};

use super::body_hash;

/// `AuthenticatedMessage::parse(message)`, body hashes by [`body_hash::body_hash`].
pub fn parse(message: &[u8]) -> Option<AuthenticatedMessage<'_>> {
    let split = header_section_end(message);
    let (Some(headers), Ok(offset)) = (message.get(..split), u32::try_from(split)) else {
        return AuthenticatedMessage::parse(message);
    };
    let mut parsed = AuthenticatedMessage::parse(headers)?;
    parsed.raw_message = message;
    parsed.body_offset = offset;
    let body = message.get(split..).unwrap_or_default();
    for (canonicalization, algorithm, length, hash) in &mut parsed.body_hashes {
        *hash = body_hash::body_hash(*canonicalization, *algorithm, *length, body);
    }
    Some(parsed)
}

/// Where mail-auth's header scanner stops: after the line ending the header section, or
/// the message's end. Nothing it reads to decide lies beyond that point, so parsing only
/// the bytes before it finds the same header fields.
pub fn header_section_end(message: &[u8]) -> usize {
    let mut start = 0;
    loop {
        match scan_field(message, start) {
            Field::Ends(end) => start = end,
            Field::SectionEnds(pos) => return pos,
        }
    }
}

enum Field {
    /// A field (named or not) ends before this offset.
    Ends(usize),
    SectionEnds(usize),
}

/// One field from `start` (mail-auth 0.13.3 `scan_field` and `scan_value`).
fn scan_field(message: &[u8], start: usize) -> Field {
    let mut cur = start;
    while let Some(rest) = message.get(cur..) {
        let Some(offset) = memchr2(b':', b'\n', rest) else {
            break;
        };
        let pos = cur + offset;
        if rest[offset] == b':' {
            return scan_value(message, pos);
        } else if (offset > 0 && rest[offset - 1] == b'\r') || pos == start {
            return Field::SectionEnds(pos + 1);
        }
        match message.get(pos + 1) {
            Some(b' ' | b'\t') => cur = pos + 1,
            _ => return Field::Ends(pos + 1),
        }
    }
    Field::SectionEnds(message.len())
}

fn scan_value(message: &[u8], colon: usize) -> Field {
    let mut cur = colon + 1;
    while let Some(rest) = message.get(cur..) {
        let Some(offset) = memchr(b'\n', rest) else {
            break;
        };
        let pos = cur + offset;
        match message.get(pos + 1) {
            Some(b' ' | b'\t') => cur = pos + 1,
            _ => return Field::Ends(pos + 1),
        }
    }
    Field::SectionEnds(message.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both parses agree on everything the checks read.
    fn same_parse(message: &[u8]) {
        let theirs = AuthenticatedMessage::parse(message);
        let ours = parse(message);
        let shown = String::from_utf8_lossy(message);
        match (theirs, ours) {
            (None, None) => {}
            (Some(theirs), Some(ours)) => {
                assert_eq!(ours.headers, theirs.headers, "{shown:?}");
                assert_eq!(ours.body_offset, theirs.body_offset, "{shown:?}");
                assert_eq!(ours.raw_body(), theirs.raw_body(), "{shown:?}");
                assert_eq!(ours.from, theirs.from, "{shown:?}");
                // Relaxed body hashes are the RFC's, which is mail-auth's on the body without
                // the whitespace after its last text (`body_hash`'s module doc).
                let split = header_section_end(message);
                let mut adjusted = message[..split].to_vec();
                let body = &message[split..];
                let keep = body
                    .iter()
                    .rposition(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
                    .map_or(0, |at| at + 1);
                adjusted.extend_from_slice(&body[..keep]);
                adjusted.extend(body[keep..].iter().filter(|b| !matches!(b, b' ' | b'\t')));
                let rfc = AuthenticatedMessage::parse(&adjusted).expect("parses as before");
                assert_eq!(
                    ours.body_hashes.len(),
                    theirs.body_hashes.len(),
                    "{shown:?}"
                );
                for (i, ours) in ours.body_hashes.iter().enumerate() {
                    let expected = match ours.0 {
                        mail_auth::dkim::Canonicalization::Relaxed => &rfc.body_hashes[i],
                        mail_auth::dkim::Canonicalization::Simple => &theirs.body_hashes[i],
                    };
                    assert_eq!(ours, expected, "{shown:?}");
                }
                assert_eq!(
                    ours.dkim_headers.len(),
                    theirs.dkim_headers.len(),
                    "{shown:?}"
                );
                assert_eq!(
                    ours.ams_headers.len(),
                    theirs.ams_headers.len(),
                    "{shown:?}"
                );
                assert_eq!(ours.errors.len(), theirs.errors.len(), "{shown:?}");
                assert_eq!(
                    ours.received_headers_count, theirs.received_headers_count,
                    "{shown:?}"
                );
            }
            (theirs, ours) => panic!(
                "{shown:?}: mail-auth parsed {}, ours {}",
                theirs.is_some(),
                ours.is_some()
            ),
        }
    }

    const SIGNATURE: &str = "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.com;\r\n s=s1; h=from:to; bh=frcCV1k9oG9oKj3dpUqdJg1PxRT2RSN/XKdLCPjaYaY=;\r\n b=dGVzdA==\r\n";

    #[test]
    fn the_split_is_mail_auths() {
        let messages: Vec<String> = vec![
            format!("{SIGNATURE}From: a@example.com\r\nTo: b@example.org\r\n\r\nbody  text \r\n\r\n"),
            format!("{SIGNATURE}From: a@example.com\r\n\r\n"),
            format!("{SIGNATURE}From: a@example.com\r\n"),
            format!("{SIGNATURE}From: a@example.com"),
            format!("{SIGNATURE}From: a@example.com\n\nbare LF body\n"),
            format!("{SIGNATURE}From: a@example.com\r\nnot a header line\r\n\r\nbody\r\n"),
            format!("{SIGNATURE}From: a@example.com\r\n folded\r\n\tmore\r\nX: y\r\n\r\n\r\nb"),
            format!("\r\n{SIGNATURE}From: a@example.com\r\n\r\nbody"),
            format!("{SIGNATURE}From: a@example.com\r\n\r\nSubject: in the body\r\n\r\nx"),
            "From: a@example.com\r\nARC-Message-Signature: i=1; a=rsa-sha256; c=relaxed/simple; d=x.example; s=s; h=from; bh=AAAA; b=AAAA\r\n\r\nz \r\n".to_string(),
            String::new(),
            "no colon at all".to_string(),
        ];
        for message in &messages {
            same_parse(message.as_bytes());
        }
    }

    #[test]
    fn random_header_sections_split_as_mail_auth_does() {
        let mut state = 0x1234_5678_u64;
        let mut next = || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let pieces: [&[u8]; 9] = [
            b"From: a@example.com",
            b"X:",
            b"\r\n",
            b"\n",
            b" ",
            b"\t",
            b":",
            b"word",
            SIGNATURE.as_bytes(),
        ];
        for _ in 0..5_000 {
            let count = (next() % 12) as usize;
            let mut message = Vec::new();
            for _ in 0..count {
                message.extend_from_slice(pieces[(next() % pieces.len() as u64) as usize]);
            }
            same_parse(&message);
        }
    }
}
