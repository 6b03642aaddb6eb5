//! Base64 content transfer encoding (RFC 2045 §6.8) on `base64-simd`.
//!
//! Role: encode with MIME line wrapping (76 characters then CRLF) and decode text that is
//! wrapped, whitespace-padded or slightly off, at SIMD speed. `base64-simd` dispatches to
//! AVX2/SSE at run time (its default `detect` feature), so no `target-cpu=native` is needed
//! (docs/ARCHITECTURE.md §12).
//!
//! Why the shapes below (all measured on the development VM):
//! - Neither SIMD crate accepts line breaks. Decoding first strips the CRLFs at the fixed
//!   stride of the first line (a constant-size copy per line, 12–20 GB/s) and then decodes in
//!   place; memchr-driven compaction is 4× slower on 78-byte lines, and the crate's own
//!   `forgiving_decode` strips whitespace byte by byte and asserts on the output size.
//! - Encoding runs the SIMD encoder on blocks of 64 lines (3,648 input octets, an L1-sized
//!   4.9 KB of output) and then spreads each block's lines apart to insert CRLF, moving
//!   76-byte lines that are still in L1.
//! - Irregular input (lines of varying length, spaces, trailing junk) leaves the fast path
//!   at the first irregular line and continues with a scalar filter; correctness never
//!   depends on the fast path.
//!
//! Exposure: peer bytes. Decoded output is never larger than the input (¾ of it), so no
//! input can make the decoder allocate more than its own size.

use base64_simd::{STANDARD, STANDARD_NO_PAD};

/// Characters per encoded line, not counting CRLF (RFC 2045 §6.8: "no more than 76").
pub const LINE_CHARS: usize = 76;
/// Input octets per full encoded line.
const LINE_OCTETS: usize = LINE_CHARS / 4 * 3;
/// Lines encoded per SIMD call on the encode path.
const BLOCK_LINES: usize = 64;

/// Why strict decoding failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Base64Error {
    /// A byte outside the alphabet that is not whitespace.
    #[error("byte 0x{0:02x} is not base64")]
    InvalidByte(u8),
    /// One character left over: six bits cannot make an octet.
    #[error("base64 text ends in the middle of a group")]
    Truncated,
    /// `=` somewhere other than the end, or data after the padding.
    #[error("base64 padding in the wrong place")]
    BadPadding,
}

/// The length of `encode_wrapped(n octets)`.
pub fn encoded_len_wrapped(n: usize) -> usize {
    let chars = n.div_ceil(3) * 4;
    chars + 2 * chars.div_ceil(LINE_CHARS)
}

/// Encodes `src` as MIME Base64: lines of 76 characters, each ended by CRLF, the last one
/// too (RFC 2045 §6.8). Appends to `out`.
pub fn encode_wrapped_into(src: &[u8], out: &mut Vec<u8>) {
    out.reserve(encoded_len_wrapped(src.len()));
    const BLOCK: usize = LINE_OCTETS * BLOCK_LINES;
    for block in src.chunks(BLOCK) {
        let base = out.len();
        STANDARD.encode_append(block, out);
        let chars = out.len() - base;
        let lines = chars.div_ceil(LINE_CHARS);
        out.resize(base + chars + 2 * lines, 0);
        // Spread the lines apart from the last to the first (each moves right by 2 per
        // earlier line, so going backwards never overwrites a line not yet moved).
        for line in (0..lines).rev() {
            let from = base + line * LINE_CHARS;
            let to = base + line * (LINE_CHARS + 2);
            let len = LINE_CHARS.min(chars - line * LINE_CHARS);
            if line > 0 {
                // A full line goes through a fixed-size array: constant-size copies become a
                // few vector moves instead of a memmove call per line.
                match <[u8; LINE_CHARS]>::try_from(&out[from..from + len]) {
                    Ok(full) => out[to..to + LINE_CHARS].copy_from_slice(&full),
                    Err(_) => out.copy_within(from..from + len, to),
                }
            }
            out[to + len] = b'\r';
            out[to + len + 1] = b'\n';
        }
    }
}

/// [`encode_wrapped_into`] into a new vector.
pub fn encode_wrapped(src: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_wrapped_into(src, &mut out);
    out
}

/// Base64 without line breaks (for RFC 2047 encoded words).
pub fn encode_unwrapped(src: &[u8]) -> String {
    STANDARD.encode_to_string(src)
}

/// Is this byte ignored between base64 characters? RFC 2045 §6.8 tells a decoder to ignore
/// everything outside the alphabet; the strict decoder ignores only the whitespace that line
/// wrapping and transport padding put there, so that junk is reported rather than dropped.
fn is_space(b: u8) -> bool {
    matches!(b, b'\r' | b'\n' | b' ' | b'\t')
}

/// Copies `src` to `out` without its line breaks and whitespace. The fast path assumes every
/// line has the length of the first one and ends in CRLF (what every encoder writes); at the
/// first line that does not, the scalar filter takes over for the rest.
fn strip_into(src: &[u8], out: &mut Vec<u8>) {
    out.reserve(src.len());
    let mut rest = src;
    if let Some(eol) = memchr::memchr(b'\r', src) {
        let stride = eol + 2;
        if eol > 0 && src.get(eol + 1) == Some(&b'\n') {
            let mut chunks = src.chunks_exact(stride);
            let mut done = 0;
            if eol == LINE_CHARS {
                // The common case gets a constant-size copy the compiler turns into a few
                // vector moves.
                for chunk in chunks.by_ref() {
                    if chunk[LINE_CHARS] != b'\r' || chunk[LINE_CHARS + 1] != b'\n' {
                        break;
                    }
                    let line: &[u8; LINE_CHARS] = match chunk[..LINE_CHARS].try_into() {
                        Ok(line) => line,
                        Err(_) => break,
                    };
                    out.extend_from_slice(line);
                    done += stride;
                }
            } else {
                for chunk in chunks.by_ref() {
                    if chunk[eol] != b'\r' || chunk[eol + 1] != b'\n' {
                        break;
                    }
                    out.extend_from_slice(&chunk[..eol]);
                    done += stride;
                }
            }
            rest = &src[done..];
        }
    }
    strip_slow(rest, out);
}

/// The scalar filter: the tail after the last full line, or all of an irregular input.
/// Runs of non-space bytes are copied whole.
fn strip_slow(rest: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while i < rest.len() {
        // The next whitespace: memchr3 for the line-break bytes and space, then a tab inside
        // the run it found (four needles do not fit one memchr call).
        let mut end = memchr::memchr3(b'\r', b'\n', b' ', &rest[i..]).map_or(rest.len(), |o| i + o);
        if let Some(tab) = memchr::memchr(b'\t', &rest[i..end]) {
            end = i + tab;
        }
        out.extend_from_slice(&rest[i..end]);
        i = end;
        while i < rest.len() && is_space(rest[i]) {
            i += 1;
        }
    }
}

/// Decodes MIME Base64, ignoring line breaks and whitespace anywhere. Missing padding is
/// accepted (many encoders drop it); anything else outside the alphabet is an error.
/// Appends to `out`; on error `out` is left as it was.
pub fn decode_into(src: &[u8], out: &mut Vec<u8>) -> Result<(), Base64Error> {
    let base = out.len();
    // Unwrapped text (RFC 2047 words, HTTP, some MUAs) needs no strip copy: two memchr
    // scans prove it, then the SIMD decoder reads the input directly.
    if memchr::memchr3(b'\r', b'\n', b' ', src).is_none()
        && memchr::memchr(b'\t', src).is_none()
        && STANDARD.decode_append(src, out).is_ok()
    {
        return Ok(());
    }
    out.truncate(base);
    strip_into(src, out);
    match STANDARD.decode_inplace(&mut out[base..]) {
        Ok(decoded) => {
            let n = decoded.len();
            out.truncate(base + n);
            Ok(())
        }
        Err(_) => {
            // The slow path tells why, and accepts what the strict SIMD decoder does not:
            // missing padding and non-zero bits after the last octet. It strips again with
            // the scalar filter: the failed in-place decode has overwritten the copy, and the
            // fast strip may have kept whitespace that sat inside a line.
            out.truncate(base);
            let mut stripped = Vec::with_capacity(src.len());
            strip_slow(src, &mut stripped);
            match decode_stripped(&stripped, out, false) {
                Ok(()) => Ok(()),
                Err(e) => {
                    out.truncate(base);
                    Err(e)
                }
            }
        }
    }
}

/// [`decode_into`] into a new vector.
pub fn decode(src: &[u8]) -> Result<Vec<u8>, Base64Error> {
    let mut out = Vec::new();
    decode_into(src, &mut out)?;
    Ok(out)
}

/// Decodes the way RFC 2045 §6.8 tells a reader to: every byte outside the alphabet is
/// ignored, `=` ends the data, and a single leftover character is dropped. Never fails; used
/// for display, the policy and down-conversion of damaged parts.
pub fn decode_lenient(src: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    if decode_into(src, &mut out).is_ok() {
        return out;
    }
    out.clear();
    let end = memchr::memchr(b'=', src).unwrap_or(src.len());
    let filtered: Vec<u8> = src[..end]
        .iter()
        .copied()
        .filter(|&b| value(b).is_some())
        .collect();
    // Only alphabet bytes are left, so the only possible error is a lone sixth bit group.
    if decode_stripped(&filtered, &mut out, true).is_err() {
        out.clear();
    }
    out
}

/// The six-bit value of a base64 character.
fn value(b: u8) -> Option<u32> {
    match b {
        b'A'..=b'Z' => Some(u32::from(b - b'A')),
        b'a'..=b'z' => Some(u32::from(b - b'a') + 26),
        b'0'..=b'9' => Some(u32::from(b - b'0') + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

/// Decodes whitespace-free text: the full groups before any `=` with SIMD, the last partial
/// group by hand. `drop_lone` drops a single trailing character instead of failing.
fn decode_stripped(text: &[u8], out: &mut Vec<u8>, drop_lone: bool) -> Result<(), Base64Error> {
    let data_end = memchr::memchr(b'=', text).unwrap_or(text.len());
    if text[data_end..].iter().any(|&b| b != b'=') || text.len() - data_end > 2 {
        return Err(Base64Error::BadPadding);
    }
    let data = &text[..data_end];
    if let Some(&bad) = data.iter().find(|&&b| value(b).is_none()) {
        return Err(Base64Error::InvalidByte(bad));
    }
    let full = data.len() / 4 * 4;
    let base = out.len();
    out.extend_from_slice(&data[..full]);
    match STANDARD_NO_PAD.decode_inplace(&mut out[base..]) {
        Ok(decoded) => {
            let n = decoded.len();
            out.truncate(base + n);
        }
        // Every byte was checked against the alphabet above, so this cannot happen; report
        // it as bad input rather than trusting that.
        Err(_) => {
            out.truncate(base);
            return Err(Base64Error::InvalidByte(0));
        }
    }
    let tail = &data[full..];
    let mut acc = 0u32;
    for &b in tail {
        acc = (acc << 6) | value(b).unwrap_or(0);
    }
    match tail.len() {
        0 => {}
        1 if drop_lone => {}
        1 => return Err(Base64Error::Truncated),
        2 => out.push((acc >> 4) as u8),
        _ => {
            out.push((acc >> 10) as u8);
            out.push((acc >> 2) as u8);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reference_encode(data: &[u8]) -> Vec<u8> {
        let plain = STANDARD.encode_to_string(data);
        let mut out = Vec::new();
        for line in plain.as_bytes().chunks(LINE_CHARS) {
            out.extend_from_slice(line);
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    #[test]
    fn encode_wraps_at_76_with_crlf() {
        for n in [0, 1, 2, 3, 56, 57, 58, 114, 3647, 3648, 3649, 10_000] {
            let data: Vec<u8> = (0..n).map(|i| (i * 7 + 3) as u8).collect();
            let enc = encode_wrapped(&data);
            assert_eq!(enc, reference_encode(&data), "n={n}");
            assert_eq!(enc.len(), encoded_len_wrapped(n));
            for line in enc.split(|&b| b == b'\n') {
                assert!(line.len() <= LINE_CHARS + 1);
            }
        }
    }

    #[test]
    fn decode_table() {
        type Case<'a> = (&'a [u8], Result<&'a [u8], Base64Error>);
        let table: &[Case<'_>] = &[
            (b"", Ok(b"")),
            (b"TWFu", Ok(b"Man")),
            (b"TWE=", Ok(b"Ma")),
            (b"TQ==", Ok(b"M")),
            (b"TWE", Ok(b"Ma")),
            (b"TQ", Ok(b"M")),
            (b"TW\r\nFu\r\n", Ok(b"Man")),
            (b"TWFu\nTWFu\n", Ok(b"ManMan")),
            (b"  TWFu \t\r\n TQ==  \r\n\r\n", Ok(b"ManM")),
            (b"TR==", Ok(b"M")),
            (b"T", Err(Base64Error::Truncated)),
            (b"TW!u", Err(Base64Error::InvalidByte(b'!'))),
            (b"TQ==TWFu", Err(Base64Error::BadPadding)),
            (b"TQ===", Err(Base64Error::BadPadding)),
        ];
        for (input, want) in table {
            let got = decode(input);
            assert_eq!(
                got.as_deref().map_err(|e| *e),
                *want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn lenient_ignores_junk() {
        assert_eq!(decode_lenient(b"TW!Fu*"), b"Man");
        assert_eq!(decode_lenient(b"TQ==garbage"), b"M");
        assert_eq!(decode_lenient(b"TWFuT"), b"Man");
        assert_eq!(decode_lenient(b"\xff\x00"), b"");
    }

    #[test]
    fn irregular_lines_leave_the_fast_path() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 31) as u8).collect();
        let mut wrapped = encode_wrapped(&data);
        // Break the stride in the middle: a short line and a space.
        wrapped.insert(300, b'\n');
        wrapped.insert(300, b'\r');
        wrapped.insert(500, b' ');
        assert_eq!(decode(&wrapped).unwrap(), data);
        // A different stride (64, as PEM and some MUAs write).
        let plain = STANDARD.encode_to_string(&data);
        let mut pem = Vec::new();
        for line in plain.as_bytes().chunks(64) {
            pem.extend_from_slice(line);
            pem.extend_from_slice(b"\r\n");
        }
        assert_eq!(decode(&pem).unwrap(), data);
    }

    #[test]
    fn decode_appends_and_keeps_out_on_error() {
        let mut out = b"x".to_vec();
        decode_into(b"TWFu", &mut out).unwrap();
        assert_eq!(out, b"xMan");
        assert!(decode_into(b"TW!u", &mut out).is_err());
        assert_eq!(out, b"xMan");
    }

    proptest! {
        #[test]
        fn round_trip(data in proptest::collection::vec(any::<u8>(), 0..5000)) {
            let enc = encode_wrapped(&data);
            prop_assert_eq!(&decode(&enc).unwrap(), &data);
            prop_assert_eq!(&decode_lenient(&enc), &data);
            prop_assert!(enc.iter().all(|&b| b.is_ascii()));
        }

        #[test]
        fn round_trip_lf_only(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let enc: Vec<u8> = encode_wrapped(&data).into_iter().filter(|&b| b != b'\r').collect();
            prop_assert_eq!(decode(&enc).unwrap(), data);
        }

        #[test]
        fn decode_never_panics(text in proptest::collection::vec(any::<u8>(), 0..400)) {
            let strict = decode(&text);
            let lenient = decode_lenient(&text);
            prop_assert!(lenient.len() <= text.len());
            if let Ok(strict) = strict {
                prop_assert_eq!(strict, lenient);
            }
        }

        #[test]
        fn reencode_is_canonical(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            // encode(decode(x)) == x for canonical encoder output.
            let enc = encode_wrapped(&data);
            prop_assert_eq!(encode_wrapped(&decode(&enc).unwrap()), enc);
        }
    }
}
