//! RFC 2047 encoded words and the few charsets the relay needs to show header text.
//!
//! Role: turn `=?charset?B|Q?text?=` into display text (policy reasons, file names, logs),
//! and encode 8-bit UTF-8 header text into encoded words for the down-conversion.
//!
//! Charsets: UTF-8, US-ASCII, ISO-8859-1 and Windows-1252 are converted (they cover the file
//! names and subjects a policy looks at; a full charset library is not worth its weight in
//! an edge relay). An encoded word in any other charset is shown as it was written, which
//! RFC 2047 §6.2 (a) allows. Invalid UTF-8 becomes U+FFFD.
//!
//! Exposure: peer bytes; output is at most a small constant times the input (U+FFFD is 3
//! octets for one).

use std::borrow::Cow;

use super::base64;

/// Windows-1252 octets 0x80–0x9F (the rest is ISO-8859-1); undefined ones are U+FFFD.
const CP1252_HIGH: [char; 32] = [
    '€', '\u{FFFD}', '‚', 'ƒ', '„', '…', '†', '‡', 'ˆ', '‰', 'Š', '‹', 'Œ', '\u{FFFD}', 'Ž',
    '\u{FFFD}', '\u{FFFD}', '‘', '’', '“', '”', '•', '–', '—', '˜', '™', 'š', '›', 'œ', '\u{FFFD}',
    'ž', 'Ÿ',
];

/// Converts `bytes` in `charset` to text, or `None` for a charset we do not know. A RFC 2231
/// §5 language suffix (`utf-8*en`) is ignored.
pub fn charset_decode(charset: &[u8], bytes: &[u8]) -> Option<String> {
    let cs = match memchr::memchr(b'*', charset) {
        Some(star) => &charset[..star],
        None => charset,
    };
    let cs = cs.trim_ascii();
    let is = |name: &str| cs.eq_ignore_ascii_case(name.as_bytes());
    if is("utf-8") || is("utf8") || is("us-ascii") || is("ascii") {
        Some(String::from_utf8_lossy(bytes).into_owned())
    } else if is("iso-8859-1") || is("latin1") || is("iso_8859-1") || is("l1") {
        Some(bytes.iter().map(|&b| char::from(b)).collect())
    } else if is("windows-1252") || is("cp1252") {
        Some(
            bytes
                .iter()
                .map(|&b| match b {
                    0x80..=0x9f => CP1252_HIGH[usize::from(b - 0x80)],
                    _ => char::from(b),
                })
                .collect(),
        )
    } else {
        None
    }
}

/// [`charset_decode`], falling back to UTF-8 with replacement for unknown charsets.
pub fn charset_to_string(charset: &[u8], bytes: &[u8]) -> String {
    charset_decode(charset, bytes).unwrap_or_else(|| String::from_utf8_lossy(bytes).into_owned())
}

/// One encoded word at the start of `s`: its decoded text (or `None` if the charset is
/// unknown) and its length.
fn word_at(s: &[u8]) -> Option<(Option<String>, usize)> {
    let rest = s.strip_prefix(b"=?")?;
    let q1 = memchr::memchr(b'?', rest)?;
    let charset = &rest[..q1];
    let after = &rest[q1 + 1..];
    let enc = *after.first()?;
    if after.get(1) != Some(&b'?') {
        return None;
    }
    let text_start = &after[2..];
    let end = memchr::memmem::find(text_start, b"?=")?;
    let text = &text_start[..end];
    // RFC 2047 §2: no whitespace inside an encoded word; a "word" that has some is text.
    if charset.is_empty() || text.iter().any(|&b| b == b' ' || b == b'\t') {
        return None;
    }
    let bytes: Cow<'_, [u8]> = match enc {
        b'B' | b'b' => Cow::Owned(base64::decode_lenient(text)),
        b'Q' | b'q' => {
            let mut out = Vec::with_capacity(text.len());
            let mut i = 0;
            while i < text.len() {
                match text[i] {
                    b'_' => out.push(b' '),
                    b'=' => {
                        let h = text.get(i + 1).and_then(|&c| (c as char).to_digit(16));
                        let l = text.get(i + 2).and_then(|&c| (c as char).to_digit(16));
                        match (h, l) {
                            (Some(h), Some(l)) => {
                                out.push((h * 16 + l) as u8);
                                i += 2;
                            }
                            _ => out.push(b'='),
                        }
                    }
                    b => out.push(b),
                }
                i += 1;
            }
            Cow::Owned(out)
        }
        _ => return None,
    };
    let len = 2 + q1 + 1 + 2 + end + 2;
    Some((charset_decode(charset, &bytes), len))
}

/// Decodes the encoded words in a header value for display (RFC 2047 §6). Whitespace
/// between two adjacent encoded words is dropped (§6.2); everything else is kept, 8-bit
/// octets read as UTF-8 (RFC 6532).
pub fn decode(value: &[u8]) -> String {
    if memchr::memmem::find(value, b"=?").is_none() {
        return String::from_utf8_lossy(value).into_owned();
    }
    let mut out = String::with_capacity(value.len());
    let mut i = 0;
    let mut literal_start = 0;
    // Where the whitespace after the last decoded word began, if only whitespace followed.
    let mut after_word: Option<usize> = None;
    while i < value.len() {
        if value[i] == b'=' && value.get(i + 1) == Some(&b'?') {
            if let Some((text, len)) = word_at(&value[i..]) {
                let gap = &value[literal_start..i];
                let skip_gap = after_word.is_some() && gap.iter().all(|b| b.is_ascii_whitespace());
                if !skip_gap {
                    out.push_str(&String::from_utf8_lossy(gap));
                }
                match text {
                    Some(t) => {
                        out.push_str(&t);
                        after_word = Some(i + len);
                    }
                    None => {
                        out.push_str(&String::from_utf8_lossy(&value[i..i + len]));
                        after_word = None;
                    }
                }
                i += len;
                literal_start = i;
                continue;
            }
        }
        i += 1;
    }
    out.push_str(&String::from_utf8_lossy(&value[literal_start..]));
    out
}

/// The most UTF-8 octets one `=?UTF-8?B?...?=` word of 75 characters carries (RFC 2047 §2):
/// 75 − 12 framing characters leave 63, i.e. 15 base64 groups of 3 octets.
const WORD_OCTETS: usize = 45;

/// Encodes `text` as a sequence of UTF-8 B encoded words, each at most 75 characters, joined
/// by folding whitespace (`CRLF SP`). A reader drops the whitespace between adjacent words
/// (§6.2), so the display text is exactly `text`. Characters are never split across words
/// (§5: each word must be a whole number of characters).
pub fn encode_utf8(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while !rest.is_empty() {
        let mut cut = rest.len().min(WORD_OCTETS);
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        if !out.is_empty() {
            out.push_str("\r\n ");
        }
        out.push_str("=?UTF-8?B?");
        out.push_str(&base64::encode_unwrapped(&rest.as_bytes()[..cut]));
        out.push_str("?=");
        rest = &rest[cut..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_table() {
        let table: &[(&[u8], &str)] = &[
            (b"plain text", "plain text"),
            (b"=?ISO-8859-1?Q?a?=", "a"),
            (b"=?ISO-8859-1?Q?a?= b", "a b"),
            (b"=?ISO-8859-1?Q?a?= =?ISO-8859-1?Q?b?=", "ab"),
            (b"=?ISO-8859-1?Q?a?=\r\n  =?ISO-8859-1?Q?b?=", "ab"),
            (b"=?ISO-8859-1?Q?a_b?=", "a b"),
            (
                b"=?ISO-8859-1?Q?a?= =?ISO-8859-2?Q?_b?=",
                "a=?ISO-8859-2?Q?_b?=",
            ),
            (
                b"=?US-ASCII?Q?Keith_Moore?= <moore@cs.utk.edu>",
                "Keith Moore <moore@cs.utk.edu>",
            ),
            (b"=?ISO-8859-1?Q?Andr=E9?= Pirard", "André Pirard"),
            (b"=?utf-8?b?w6lsw6h2ZQ==?=", "élève"),
            (b"=?UTF-8*en?B?w6k=?=", "é"),
            (b"=?windows-1252?Q?=80_5?=", "€ 5"),
            (b"=?utf-8?x?abc?=", "=?utf-8?x?abc?="),
            (b"=?utf-8?q?unterminated", "=?utf-8?q?unterminated"),
            (b"=?utf-8?q?a=?=", "a="),
            (b"=??q?a?=", "=??q?a?="),
            ("raw ü".as_bytes(), "raw ü"),
        ];
        for (input, want) in table {
            assert_eq!(decode(input), *want, "{:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn encode_round_trips_and_fits() {
        for text in [
            "",
            "a",
            "Grüße aus Köln",
            &"é".repeat(100),
            &"日本語".repeat(40),
        ] {
            let enc = encode_utf8(text);
            for word in enc.split("\r\n ") {
                assert!(word.len() <= 75, "{word}");
            }
            assert_eq!(decode(enc.as_bytes()), text);
        }
    }
}
