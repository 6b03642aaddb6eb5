//! The fuzz targets as plain functions.
//!
//! Role: `fuzz/fuzz_targets/*.rs` call these, and the unit tests below run them over the
//! seed corpus in `fuzz/corpus/`, so a regression on a seed shows in `cargo test` even where
//! cargo-fuzz is not installed. Each function panics (an assertion: a bug)
//! only when an invariant breaks; malformed input itself must never panic.

use super::tree::{parse, PartKind};
use super::{base64, downgrade, policy, qp, Limits};

/// Small limits, so the fuzzer reaches the limit paths quickly.
fn fuzz_limits() -> Limits {
    Limits {
        max_depth: 8,
        max_parts: 64,
        max_header_bytes: 4096,
        max_header_fields: 64,
    }
}

/// Parser: any input parses or breaks a limit; every range lies inside the input, children
/// lie inside their parent, and the accessors, the policy and the down-conversion hold up.
pub fn parse_message(data: &[u8]) {
    let limits = fuzz_limits();
    let Ok(msg) = parse(data, &limits) else {
        return;
    };
    assert!(msg.parts.len() <= limits.max_parts);
    for (i, p) in msg.parts.iter().enumerate() {
        assert!(p.span.start <= p.header.start && p.header.end <= p.body.start);
        assert!(p.body.start <= p.body.end && p.body.end == p.span.end && p.span.end <= data.len());
        assert!(p.depth <= limits.max_depth);
        for c in p.children.clone() {
            let child = &msg.parts[c];
            assert_eq!(child.parent, Some(i));
            assert!(p.body.start <= child.span.start && child.span.end <= p.body.end);
        }
        if let PartKind::Multipart {
            preamble, epilogue, ..
        } = &p.kind
        {
            assert!(p.body.start <= preamble.start && preamble.end <= p.body.end);
            assert!(p.body.start <= epilogue.start && epilogue.end <= p.body.end);
        }
        let _ = p.filename();
        let _ = msg.decoded_lenient(i);
        for (_, v) in msg.headers(i) {
            let _ = super::header::display_value(v);
        }
    }
    assert_eq!(msg.walk().len(), msg.parts.len());
    let _ = policy::Policy {
        max_parts: limits.max_parts,
        max_nesting: limits.max_depth,
        blocked_extensions: vec!["exe".into()],
        blocked_types: vec!["audio/*".into()],
    }
    .check(data);
    if let Ok(out) = downgrade::downgrade(data, &limits) {
        assert!(!downgrade::has_8bit(&out));
    }
}

/// Base64: decoding never panics or grows past ¾ of the input, the lenient decoder agrees
/// with the strict one where that succeeds, and encoding the result decodes back to it.
pub fn base64_decode(data: &[u8]) {
    let lenient = base64::decode_lenient(data);
    assert!(lenient.len() <= data.len() / 4 * 3 + 2);
    if let Ok(strict) = base64::decode(data) {
        assert_eq!(strict, lenient);
    }
    let enc = base64::encode_wrapped(&lenient);
    assert_eq!(enc.len(), base64::encoded_len_wrapped(lenient.len()));
    assert_eq!(base64::decode(&enc).ok().as_deref(), Some(&lenient[..]));
}

/// Quoted-printable: decoding never grows the data, and both encoder modes round-trip both
/// the input and its decoding with lines of at most 76 characters.
pub fn qp_decode(data: &[u8]) {
    let decoded = qp::decode(data);
    assert!(decoded.len() <= data.len());
    for input in [data, &decoded[..]] {
        for mode in [qp::Mode::Text, qp::Mode::Binary] {
            let enc = qp::encode(input, mode);
            assert!(enc.iter().all(|&b| b.is_ascii()));
            assert!(enc
                .split(|&b| b == b'\n')
                .all(|l| l.len() <= qp::LINE_CHARS + 1));
            assert_eq!(qp::decode(&enc), input);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    fn seeds(target: &str) -> Vec<Vec<u8>> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(target);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no seeds in {}", dir.display());
        files
            .into_iter()
            .map(|f| std::fs::read(f).unwrap())
            .collect()
    }

    #[test]
    fn parse_seeds() {
        for seed in seeds("parse") {
            super::parse_message(&seed);
        }
    }

    #[test]
    fn base64_seeds() {
        for seed in seeds("base64") {
            super::base64_decode(&seed);
        }
    }

    /// Fragments that make structure likely, so random sequences of them reach the
    /// multipart, nesting and header paths (a cheap stand-in for coverage guidance).
    const FRAGMENTS: &[&[u8]] = &[
        b"\r\n",
        b"\n",
        b"--b",
        b"--b--",
        b"--c",
        b"Content-Type: multipart/mixed; boundary=b\r\n",
        b"Content-Type: multipart/digest; boundary=c\r\n",
        b"Content-Type: message/rfc822\r\n",
        b"Content-Transfer-Encoding: base64\r\n",
        b"Content-Transfer-Encoding: quoted-printable\r\n",
        b"Content-Transfer-Encoding: 8bit\r\n",
        b"Content-Disposition: attachment; filename*=utf-8''a%C3%A9.exe\r\n",
        b"Subject: =?utf-8?q?caf=C3=A9?=\r\n",
        b" folded\r\n",
        b"TWFu",
        b"=3D=\r\n",
        b"\xc3\xa9",
        b"\xff",
        b"text ",
    ];

    proptest::proptest! {
        #[test]
        fn structured_noise(picks in proptest::collection::vec(0..FRAGMENTS.len(), 0..200)) {
            let data: Vec<u8> = picks.iter().flat_map(|&i| FRAGMENTS[i].iter().copied()).collect();
            super::parse_message(&data);
            super::base64_decode(&data);
            super::qp_decode(&data);
        }
    }

    #[test]
    fn qp_seeds() {
        for seed in seeds("qp") {
            super::qp_decode(&seed);
        }
    }
}
