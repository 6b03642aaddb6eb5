//! Quoted-printable content transfer encoding (RFC 2045 §6.7).
//!
//! Role: decode quoted-printable bodies for the policy and display, and encode mostly-ASCII
//! 8-bit text for the 8BITMIME down-conversion.
//!
//! Decoding follows the rules' robustness notes: `=XX` with upper- or lower-case hex is an
//! octet; `=` followed by optional whitespace and a line end is a soft line break (rule 5);
//! trailing whitespace before a hard line break was possibly added by a transport and is
//! deleted (rule 3); an `=` not followed by two hex digits is kept as it is (§6.7 note 1:
//! "the most robust approach"). Hard line ends are kept as they come (CRLF or LF alone).
//! Decoding never fails and never grows the data.
//!
//! Encoding ([`encode`]) writes lines of at most 76 characters including a soft-break `=`
//! (rule 5), encodes `=`, controls, 8-bit octets and whitespace before a line end (rule 3),
//! and in [`Mode::Text`] turns each CRLF into a hard line break (rule 4) while encoding a bare
//! CR or LF, so that `decode(encode(x)) == x` for every input.

/// Characters per encoded line, soft-break `=` included, CRLF not (RFC 2045 §6.7 rule 5).
pub const LINE_CHARS: usize = 76;

/// How line ends in the input are treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// CRLF is a hard line break (text; RFC 2045 §6.7 rule 4).
    Text,
    /// Every octet is data, CR and LF are encoded.
    Binary,
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// Removes the trailing spaces and tabs of the text written since `line_start` (rule 3).
fn trim_line_end(out: &mut Vec<u8>, line_start: usize) {
    while out.len() > line_start && matches!(out.last(), Some(b' ' | b'\t')) {
        out.pop();
    }
}

/// Decodes quoted-printable text, appending to `out`.
pub fn decode_into(src: &[u8], out: &mut Vec<u8>) {
    out.reserve(src.len());
    let mut i = 0;
    // Where the current decoded line starts: trailing-whitespace trimming stops there, so an
    // encoded `=20` at the end of the previous line is never eaten.
    let mut line_start = out.len();
    while i < src.len() {
        let Some(off) = memchr::memchr2(b'=', b'\n', &src[i..]) else {
            out.extend_from_slice(&src[i..]);
            break;
        };
        out.extend_from_slice(&src[i..i + off]);
        i += off;
        if src[i] == b'\n' {
            // A hard line break: drop the transport's trailing whitespace, keep the line end
            // as it came (CRLF or LF).
            let had_cr = out.len() > line_start && out.last() == Some(&b'\r');
            if had_cr {
                out.pop();
            }
            trim_line_end(out, line_start);
            if had_cr {
                out.push(b'\r');
            }
            out.push(b'\n');
            i += 1;
            line_start = out.len();
            continue;
        }
        // '=': a hex pair, a soft line break, or a literal '='.
        if let (Some(h), Some(l)) = (
            src.get(i + 1).copied().and_then(hex_value),
            src.get(i + 2).copied().and_then(hex_value),
        ) {
            out.push(h << 4 | l);
            i += 3;
            line_start = line_start.max(out.len());
            continue;
        }
        let mut j = i + 1;
        while j < src.len() && matches!(src[j], b' ' | b'\t') {
            j += 1;
        }
        if j == src.len() {
            // A soft break at the very end of the data.
            break;
        }
        if src[j] == b'\n' {
            i = j + 1;
            continue;
        }
        if src[j] == b'\r' && src.get(j + 1) == Some(&b'\n') {
            i = j + 2;
            continue;
        }
        out.push(b'=');
        i += 1;
    }
}

/// [`decode_into`] into a new vector.
pub fn decode(src: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    decode_into(src, &mut out);
    out
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Octets that may stand for themselves anywhere on a line (rule 2: 33–60 and 62–126).
fn is_literal(b: u8) -> bool {
    matches!(b, 33..=60 | 62..=126)
}

/// The number of octets an encoder leaves per line before it must break.
struct LineWriter<'o> {
    out: &'o mut Vec<u8>,
    col: usize,
}

impl LineWriter<'_> {
    /// Writes one token of `len` characters. `last` says the token ends the line (a hard
    /// break or the end of data follows), so it may use the 76th column that a soft break
    /// would otherwise need.
    fn token(&mut self, bytes: &[u8], last: bool) {
        let limit = if last { LINE_CHARS } else { LINE_CHARS - 1 };
        if self.col + bytes.len() > limit {
            self.out.extend_from_slice(b"=\r\n");
            self.col = 0;
        }
        self.out.extend_from_slice(bytes);
        self.col += bytes.len();
    }

    fn hard_break(&mut self) {
        self.out.extend_from_slice(b"\r\n");
        self.col = 0;
    }
}

/// Encodes `src` as quoted-printable, appending to `out`. The output is 7-bit, has CRLF line
/// ends only, and no line longer than 76 characters.
pub fn encode_into(src: &[u8], mode: Mode, out: &mut Vec<u8>) {
    out.reserve(src.len() + src.len() / 8);
    let mut w = LineWriter { out, col: 0 };
    let mut i = 0;
    while i < src.len() {
        let b = src[i];
        if mode == Mode::Text && b == b'\r' && src.get(i + 1) == Some(&b'\n') {
            w.hard_break();
            i += 2;
            continue;
        }
        let next = i + 1;
        // Does a line end (hard break or end of data) follow this octet?
        let ends_line = next == src.len()
            || (mode == Mode::Text && src[next] == b'\r' && src.get(next + 1) == Some(&b'\n'));
        if is_literal(b) {
            // Fast path for runs of literal octets that fit on the current line.
            let room = (LINE_CHARS - 1).saturating_sub(w.col);
            let mut end = i;
            while end < src.len() && end - i < room && is_literal(src[end]) {
                end += 1;
            }
            if end > i + 1 {
                // Leave the last octet of the run to the general path below, which knows
                // whether it ends the line.
                let run_end = end - 1;
                w.out.extend_from_slice(&src[i..run_end]);
                w.col += run_end - i;
                i = run_end;
                continue;
            }
            w.token(&[b], ends_line);
        } else if (b == b' ' || b == b'\t') && !ends_line {
            w.token(&[b], false);
        } else {
            let enc = [b'=', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]];
            w.token(&enc, ends_line);
        }
        i = next;
    }
}

/// [`encode_into`] into a new vector.
pub fn encode(src: &[u8], mode: Mode) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(src, mode, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decode_table() {
        let table: &[(&[u8], &[u8])] = &[
            (b"", b""),
            (b"plain", b"plain"),
            (b"a=3Db", b"a=b"),
            (b"a=3db", b"a=b"),
            (b"caf=C3=A9", "café".as_bytes()),
            (b"soft=\r\nbreak", b"softbreak"),
            (b"soft=  \r\nbreak", b"softbreak"),
            (b"soft=\nbreak", b"softbreak"),
            (b"end=", b"end"),
            (b"trail  \r\nx", b"trail\r\nx"),
            (b"trail \t\nx", b"trail\nx"),
            (b"keep=20\r\n", b"keep \r\n"),
            (b"bad=4x", b"bad=4x"),
            (b"bad=", b"bad"),
            (b"bad= x", b"bad= x"),
            (b"==41", b"=A"),
            (b"a\r\n\r\nb", b"a\r\n\r\nb"),
        ];
        for (input, want) in table {
            assert_eq!(decode(input), *want, "{:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn encode_table() {
        let table: &[(&[u8], Mode, &[u8])] = &[
            (b"", Mode::Text, b""),
            (b"hello", Mode::Text, b"hello"),
            (b"a=b", Mode::Text, b"a=3Db"),
            ("café".as_bytes(), Mode::Text, b"caf=C3=A9"),
            (b"line \r\nnext", Mode::Text, b"line=20\r\nnext"),
            (b"tab\t", Mode::Text, b"tab=09"),
            (b"a\nb\rc", Mode::Text, b"a=0Ab=0Dc"),
            (b"a\r\nb", Mode::Binary, b"a=0D=0Ab"),
        ];
        for (input, mode, want) in table {
            assert_eq!(
                String::from_utf8_lossy(&encode(input, *mode)),
                String::from_utf8_lossy(want)
            );
        }
    }

    #[test]
    fn long_lines_get_soft_breaks() {
        let line = vec![b'x'; 200];
        let enc = encode(&line, Mode::Text);
        for l in enc.split(|&b| b == b'\n') {
            let l = l.strip_suffix(b"\r").unwrap_or(l);
            assert!(l.len() <= LINE_CHARS, "{}", l.len());
        }
        assert_eq!(decode(&enc), line);
        // Exactly 76 literal characters fit on one line without a soft break.
        assert_eq!(encode(&[b'y'; 76], Mode::Text), vec![b'y'; 76]);
    }

    fn check_lines(enc: &[u8]) -> Result<(), TestCaseError> {
        prop_assert!(enc.iter().all(|&b| b.is_ascii() && b != 0));
        let mut lines = enc.split(|&b| b == b'\n').peekable();
        while let Some(l) = lines.next() {
            let is_last = lines.peek().is_none();
            let body = match l.strip_suffix(b"\r") {
                Some(b) => b,
                None => {
                    prop_assert!(is_last, "bare LF in encoded output");
                    l
                }
            };
            prop_assert!(body.len() <= LINE_CHARS);
            prop_assert!(!matches!(body.last(), Some(b' ' | b'\t')));
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn round_trip_text(data in proptest::collection::vec(
            prop_oneof![Just(b'\r'), Just(b'\n'), Just(b' '), Just(b'='), any::<u8>(), 32u8..127],
            0..2000,
        )) {
            let enc = encode(&data, Mode::Text);
            check_lines(&enc)?;
            prop_assert_eq!(decode(&enc), data);
        }

        #[test]
        fn round_trip_binary(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let enc = encode(&data, Mode::Binary);
            check_lines(&enc)?;
            prop_assert_eq!(decode(&enc), data);
        }

        #[test]
        fn decode_never_grows(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
            prop_assert!(decode(&data).len() <= data.len());
        }
    }
}
