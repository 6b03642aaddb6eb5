//! Response encoding: every byte the session sends is written here (RFC 9051 §7), so quoting
//! and literals are decided in one place.

use super::store::{system_flag, Flags};

/// The status of a tagged or untagged status response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    No,
    Bad,
    PreAuth,
    Bye,
}

impl Status {
    fn word(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::No => "NO",
            Status::Bad => "BAD",
            Status::PreAuth => "PREAUTH",
            Status::Bye => "BYE",
        }
    }
}

/// `tag STATUS [code] text` (`tag` None: untagged).
pub fn status(
    out: &mut Vec<u8>,
    tag: Option<&str>,
    status: Status,
    code: Option<&str>,
    text: &str,
) {
    out.extend_from_slice(tag.unwrap_or("*").as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.word().as_bytes());
    out.push(b' ');
    if let Some(code) = code {
        out.push(b'[');
        out.extend_from_slice(code.as_bytes());
        out.extend_from_slice(b"] ");
    }
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `+ text`: a continuation request.
pub fn continuation(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(b"+ ");
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `* data` (the caller closes the line with [`end`]).
pub fn untagged(out: &mut Vec<u8>, data: &str) {
    out.extend_from_slice(b"* ");
    out.extend_from_slice(data.as_bytes());
}

pub fn end(out: &mut Vec<u8>) {
    out.extend_from_slice(b"\r\n");
}

pub fn raw(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(text.as_bytes());
}

/// A number in decimal, without the allocation a `format!` would make: FETCH writes several
/// per message.
pub use crate::proto::decimal::push as number;

/// A string: quoted when it can be, a literal otherwise (line ends, NUL, 8-bit, long).
pub fn string(out: &mut Vec<u8>, bytes: &[u8]) {
    let quotable = bytes.len() <= 256
        && bytes
            .iter()
            .all(|&b| (0x01..0x80).contains(&b) && b != b'\r' && b != b'\n');
    if quotable {
        out.push(b'"');
        for &b in bytes {
            if b == b'"' || b == b'\\' {
                out.push(b'\\');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        literal(out, bytes);
    }
}

/// `{n}\r\n` and the bytes.
pub fn literal(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'{');
    number(out, bytes.len() as u64);
    out.extend_from_slice(b"}\r\n");
    out.extend_from_slice(bytes);
}

/// `NIL` or a string.
pub fn nstring(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        Some(b) => string(out, b),
        None => out.extend_from_slice(b"NIL"),
    }
}

/// An astring: an atom when every octet is an ATOM-CHAR (or `]`), a string otherwise.
pub fn astring(out: &mut Vec<u8>, bytes: &[u8]) {
    let atom = !bytes.is_empty()
        && !bytes.eq_ignore_ascii_case(b"NIL")
        && bytes
            .iter()
            .all(|&b| b.is_ascii_graphic() && !b"(){%*\"\\".contains(&b));
    if atom {
        out.extend_from_slice(bytes);
    } else {
        string(out, bytes);
    }
}

/// `(\Seen \Answered keyword ...)`, optionally with `\Recent`.
pub fn flags(out: &mut Vec<u8>, flags: &Flags, recent: bool) {
    out.push(b'(');
    let mut first = true;
    let mut word = |out: &mut Vec<u8>, w: &str| {
        if !first {
            out.push(b' ');
        }
        first = false;
        out.extend_from_slice(w.as_bytes());
    };
    for (bit, name) in [
        (system_flag::SEEN, "\\Seen"),
        (system_flag::ANSWERED, "\\Answered"),
        (system_flag::FLAGGED, "\\Flagged"),
        (system_flag::DELETED, "\\Deleted"),
        (system_flag::DRAFT, "\\Draft"),
    ] {
        if flags.system & bit != 0 {
            word(out, name);
        }
    }
    if recent {
        word(out, "\\Recent");
    }
    for k in &flags.keywords {
        word(out, k);
    }
    out.push(b')');
}

/// INTERNALDATE: `"17-Jul-1996 02:44:25 -0700"`.
pub fn date_time(out: &mut Vec<u8>, secs: i64, zone_minutes: i16) {
    let offset = chrono::FixedOffset::east_opt(i32::from(zone_minutes) * 60)
        .or_else(|| chrono::FixedOffset::east_opt(0));
    let when = chrono::DateTime::from_timestamp(secs, 0);
    match (when, offset) {
        (Some(when), Some(offset)) => {
            let text = when
                .with_timezone(&offset)
                .format("\"%d-%b-%Y %H:%M:%S %z\"")
                .to_string();
            out.extend_from_slice(text.as_bytes());
        }
        _ => out.extend_from_slice(b"\"01-Jan-1970 00:00:00 +0000\""),
    }
}

/// A sequence set from ascending numbers: `1:3,7,9:10`.
pub fn sequence_set(out: &mut Vec<u8>, numbers: &[u32]) {
    let mut i = 0;
    let mut first = true;
    while i < numbers.len() {
        let start = numbers[i];
        let mut end = start;
        while i + 1 < numbers.len() && numbers[i + 1] == end.wrapping_add(1) {
            i += 1;
            end = numbers[i];
        }
        if !first {
            out.push(b',');
        }
        first = false;
        if start == end {
            out.extend_from_slice(start.to_string().as_bytes());
        } else {
            out.extend_from_slice(format!("{start}:{end}").as_bytes());
        }
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_carry_their_length() {
        let mut out = Vec::new();
        literal(&mut out, b"abc");
        assert_eq!(out, b"{3}\r\nabc");
    }

    #[test]
    fn strings_quote_or_literal() {
        let mut out = Vec::new();
        string(&mut out, b"a \"b\" \\");
        assert_eq!(out, b"\"a \\\"b\\\" \\\\\"");
        out.clear();
        string(&mut out, b"a\r\nb");
        assert_eq!(out, b"{4}\r\na\r\nb");
        out.clear();
        astring(&mut out, b"INBOX");
        astring(&mut out, b" ");
        astring(&mut out, b"a b");
        assert_eq!(out, b"INBOX\" \"\"a b\"");
    }

    #[test]
    fn dates_keep_their_zone() {
        let mut out = Vec::new();
        date_time(&mut out, 837_596_665, -420);
        assert_eq!(out, b"\"17-Jul-1996 02:44:25 -0700\"");
    }

    #[test]
    fn sequence_sets_compress_runs() {
        let mut out = Vec::new();
        sequence_set(&mut out, &[1, 2, 3, 7, 9, 10]);
        assert_eq!(out, b"1:3,7,9:10");
    }
}
