//! Message bodies on the wire: byte-stuffing for RETR and TOP, the TOP cut, and the octet
//! count that STAT and LIST must announce.
//!
//! RFC 1939 §3: a multi-line response ends with a line holding a single ".", so every line
//! of the body that starts with "." gets another "." in front. The stored message has CRLF
//! line ends (the SMTP session refuses bare CR and LF in text bodies); a BINARYMIME body may
//! still hold a bare LF, so a "." after *any* LF is stuffed: whichever way a client splits
//! lines, no body line can pass for the terminator. A body that does not end in CRLF gets one
//! before the terminating ".\r\n", and [`retr_size`] counts it, so that the size in STAT and
//! LIST is exactly what RETR sends before stuffing (RFC 1939 §5).
//!
//! TOP msg n (RFC 1939 §7): the header section, the blank line after it, then the first `n`
//! lines of the body. A message without a blank line is all header and is sent whole.
//!
//! Exposure: message bytes from the spool (written by anyone who could send us mail). Nothing
//! here interprets them beyond finding line ends; no input can panic or make output grow more
//! than one octet per input line plus five.
//!
//! Performance: `stuff` copies runs between "\n." with one `memmem` scan, so a 10 KB message
//! costs one pass and one reservation. [`stuff_in_place`] does the same to a message already
//! in the output buffer (RETR reads the stored bytes straight into it): a message with no
//! line starting with "." is scanned once and not copied at all; otherwise only the octets
//! after the first such line move, each once.

use memchr::{memchr, memmem};

/// The terminator of a multi-line response.
const TERMINATOR: &[u8] = b".\r\n";

/// Octets RETR sends for `message` before stuffing: the message, plus CRLF if it does not end
/// in one (an empty message is sent as no lines at all).
pub fn retr_size(message: &[u8]) -> u64 {
    message.len() as u64 + if needs_final_crlf(message) { 2 } else { 0 }
}

fn needs_final_crlf(message: &[u8]) -> bool {
    !message.is_empty() && !message.ends_with(b"\r\n")
}

/// Appends `message` byte-stuffed, a CRLF if it lacks a final one, and the terminating
/// ".\r\n" (RFC 1939 §3).
pub fn stuff(message: &[u8], out: &mut Vec<u8>) {
    out.reserve(message.len() + message.len() / 32 + 8);
    if message.first() == Some(&b'.') {
        out.push(b'.');
    }
    let mut start = 0;
    for lf in memmem::find_iter(message, b"\n.") {
        // Through the LF, then the extra dot; the message's own dot starts the next run.
        out.extend_from_slice(&message[start..=lf]);
        out.push(b'.');
        start = lf + 1;
    }
    out.extend_from_slice(&message[start..]);
    if needs_final_crlf(message) {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(TERMINATOR);
}

/// Byte-stuffs in place the message that fills `buf[start..]`, then appends the CRLF it may
/// lack and the terminating ".\r\n": afterwards `buf[start..]` holds exactly what [`stuff`]
/// would have appended for that message.
pub fn stuff_in_place(buf: &mut Vec<u8>, start: usize) {
    let message = buf.get(start..).unwrap_or_default();
    let final_crlf = needs_final_crlf(message);
    let leading = message.first() == Some(&b'.');
    let dots = memmem::find_iter(message, b"\n.").count() + usize::from(leading);
    if dots > 0 {
        buf.reserve(dots + 2 + TERMINATOR.len());
        let end = buf.len();
        buf.resize(end + dots, 0);
        // From the back: each run that starts with a dot moves right by the dots still to
        // be inserted before it, and gets its extra dot in front. `read..write` is the gap.
        let finder = memmem::FinderRev::new(b"\n.");
        let (mut read, mut write) = (end, end + dots);
        let mut search = end;
        while let Some(lf) = finder.rfind(&buf[start..search]) {
            let run = start + lf + 1;
            buf.copy_within(run..read, write - (read - run));
            write -= read - run + 1;
            buf[write] = b'.';
            read = run;
            // "\n." cannot overlap itself: the next one ends at or before this LF.
            search = run;
        }
        if leading {
            buf.copy_within(start..read, write - (read - start));
            write -= read - start + 1;
            buf[write] = b'.';
            read = start;
        }
        debug_assert_eq!(read, write, "every dot inserted");
    }
    if final_crlf {
        buf.extend_from_slice(b"\r\n");
    }
    buf.extend_from_slice(TERMINATOR);
}

/// The prefix of `message` that TOP sends: headers, the blank line, `lines` body lines.
pub fn top(message: &[u8], lines: u64) -> &[u8] {
    let Some(body_start) = body_start(message) else {
        return message;
    };
    let mut end = body_start;
    let mut left = lines;
    while left > 0 && end < message.len() {
        end = line_end(message, end);
        left -= 1;
    }
    &message[..end]
}

/// The offset just after the blank line that ends the header section, if there is one.
fn body_start(message: &[u8]) -> Option<usize> {
    let mut start = 0;
    while start < message.len() {
        let end = line_end(message, start);
        let line = &message[start..end];
        if line == b"\r\n" || line == b"\n" {
            return Some(end);
        }
        start = end;
    }
    None
}

/// The offset just after the line starting at `start` (after its LF, or the end).
fn line_end(message: &[u8], start: usize) -> usize {
    match memchr(b'\n', &message[start..]) {
        Some(lf) => start + lf + 1,
        None => message.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stuffed(message: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        stuff(message, &mut out);
        out
    }

    /// What a client does (RFC 1939 §3): read lines up to "." and remove one leading dot.
    /// Returns the body with CRLF line ends and the octets left after the terminator.
    fn unstuff(wire: &[u8]) -> (Vec<u8>, usize) {
        let mut body = Vec::new();
        let mut start = 0;
        while let Some(end) = wire[start..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map(|i| start + i)
        {
            let line = &wire[start..end];
            start = end + 2;
            if line == b"." {
                return (body, wire.len() - start);
            }
            body.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
            body.extend_from_slice(b"\r\n");
        }
        panic!("no terminator in {:?}", String::from_utf8_lossy(wire));
    }

    #[test]
    fn stuffing_table() {
        let table: &[(&[u8], &[u8])] = &[
            (b"", b".\r\n"),
            (b"a\r\n", b"a\r\n.\r\n"),
            (b".\r\n", b"..\r\n.\r\n"),
            (
                b".a\r\n.\r\n..\r\nb.\r\n",
                b"..a\r\n..\r\n...\r\nb.\r\n.\r\n",
            ),
            // No final CRLF: one is added before the terminator.
            (b"a\r\nb", b"a\r\nb\r\n.\r\n"),
            (b"a\r\n.", b"a\r\n..\r\n.\r\n"),
            (b".", b"..\r\n.\r\n"),
            // CRLF-only input.
            (b"\r\n", b"\r\n.\r\n"),
            (b"\r\n\r\n\r\n", b"\r\n\r\n\r\n.\r\n"),
            // Bare LF (BINARYMIME): a dot after it is stuffed too.
            (b"a\n.\r\n", b"a\n..\r\n.\r\n"),
            (b"a\n", b"a\n\r\n.\r\n"),
            (b"a\r", b"a\r\r\n.\r\n"),
        ];
        for (message, expected) in table {
            assert_eq!(
                String::from_utf8_lossy(&stuffed(message)),
                String::from_utf8_lossy(expected),
                "{:?}",
                String::from_utf8_lossy(message)
            );
            let unstuffed = expected.len() - TERMINATOR.len();
            let extra_dots = expected[..unstuffed]
                .split(|&b| b == b'\n')
                .filter(|line| line.starts_with(b".."))
                .count();
            assert_eq!(retr_size(message), (unstuffed - extra_dots) as u64);
        }
    }

    /// `stuff_in_place` after `prefix`, for `message`.
    fn stuffed_in_place(prefix: &[u8], message: &[u8]) -> Vec<u8> {
        let mut buf = prefix.to_vec();
        buf.extend_from_slice(message);
        stuff_in_place(&mut buf, prefix.len());
        assert!(buf.starts_with(prefix), "the prefix is left alone");
        buf.split_off(prefix.len())
    }

    /// The edge cases of stuffing in place, each against `stuff` (the function RETR used
    /// before, which the table above pins): a dot at the start, after CRLF, after a bare
    /// LF, runs of dot lines, a CRLF at the very end or missing, a lone CR.
    #[test]
    fn stuffing_in_place_matches_stuff() {
        let cases: &[&[u8]] = &[
            b"",
            b".",
            b"..",
            b"\n",
            b"\n.",
            b".\r\n",
            b"\r\n.",
            b"a\r\n.b\r\n",
            b".a\r\n.\r\n..\r\nb.\r\n",
            b"\r\n.\r\n.\r\n.\r\n",
            b".\n.\n.\n",
            b"a\n.\r\n",
            b"a\r\nb",
            b"a\r\n.",
            b"a\r",
            b"no dots at all\r\nnone here either\r\n",
            b"dot. inside. lines.\r\n",
            b"Subject: x\r\n\r\n.hidden\r\nbody\r\n.\r\n",
        ];
        for message in cases {
            let expected = stuffed(message);
            for prefix in [&b""[..], b"+OK 12 octets\r\n", b"x"] {
                assert_eq!(
                    String::from_utf8_lossy(&stuffed_in_place(prefix, message)),
                    String::from_utf8_lossy(&expected),
                    "{:?} after {prefix:?}",
                    String::from_utf8_lossy(message)
                );
            }
        }
    }

    #[test]
    fn stuffing_appends_to_what_is_there() {
        let mut out = b"+OK 3 octets\r\n".to_vec();
        stuff(b".\r\n", &mut out);
        assert_eq!(out, b"+OK 3 octets\r\n..\r\n.\r\n");
    }

    const MESSAGE: &[u8] = b"Subject: x\r\nFrom: a@b\r\n\r\nline 1\r\n.line 2\r\nline 3\r\n";

    #[test]
    fn top_table() {
        let headers = b"Subject: x\r\nFrom: a@b\r\n\r\n".as_slice();
        let table: &[(&[u8], u64, &[u8])] = &[
            (MESSAGE, 0, headers),
            (MESSAGE, 1, b"Subject: x\r\nFrom: a@b\r\n\r\nline 1\r\n"),
            (
                MESSAGE,
                2,
                b"Subject: x\r\nFrom: a@b\r\n\r\nline 1\r\n.line 2\r\n",
            ),
            (MESSAGE, 3, MESSAGE),
            // k beyond the body: the whole message.
            (MESSAGE, 4, MESSAGE),
            (MESSAGE, u64::MAX, MESSAGE),
            // No blank line: all header, sent whole whatever k is.
            (
                b"Subject: x\r\nFrom: a@b\r\n",
                0,
                b"Subject: x\r\nFrom: a@b\r\n",
            ),
            (b"Subject: x", 0, b"Subject: x"),
            // No headers: the blank line starts the message.
            (b"\r\nbody\r\nmore\r\n", 0, b"\r\n"),
            (b"\r\nbody\r\nmore\r\n", 1, b"\r\nbody\r\n"),
            // A last body line without CRLF still counts as a line.
            (b"S: x\r\n\r\na\r\nb", 2, b"S: x\r\n\r\na\r\nb"),
            (b"S: x\r\n\r\na\r\nb", 1, b"S: x\r\n\r\na\r\n"),
            // The blank line ends the message.
            (b"S: x\r\n\r\n", 5, b"S: x\r\n\r\n"),
            (b"", 3, b""),
            (b"\r\n", 0, b"\r\n"),
        ];
        for (message, lines, expected) in table {
            assert_eq!(
                String::from_utf8_lossy(top(message, *lines)),
                String::from_utf8_lossy(expected),
                "{:?} {lines}",
                String::from_utf8_lossy(message)
            );
        }
        assert_eq!(
            stuffed(top(MESSAGE, 2)),
            b"Subject: x\r\nFrom: a@b\r\n\r\nline 1\r\n..line 2\r\n.\r\n"
        );
    }

    fn message() -> impl Strategy<Value = Vec<u8>> {
        let line = prop_oneof![
            Just(b".".to_vec()),
            Just(b"..".to_vec()),
            Just(b"".to_vec()),
            Just(b".\r".to_vec()),
            "[ -~]{0,20}".prop_map(String::into_bytes),
        ];
        (prop::collection::vec(line, 0..20), any::<bool>()).prop_map(|(lines, crlf_end)| {
            let mut message = lines.join(&b"\r\n"[..]);
            if crlf_end && !message.is_empty() {
                message.extend_from_slice(b"\r\n");
            }
            message
        })
    }

    proptest! {
        #[test]
        fn a_client_recovers_the_message_and_the_announced_size(message in message()) {
            let mut wire = stuffed(&message);
            wire.extend_from_slice(b"+OK next\r\n");
            let (body, after) = unstuff(&wire);
            prop_assert_eq!(after, b"+OK next\r\n".len());
            let mut expected = message.clone();
            if needs_final_crlf(&message) {
                expected.extend_from_slice(b"\r\n");
            }
            prop_assert_eq!(&body, &expected);
            prop_assert_eq!(body.len() as u64, retr_size(&message));
        }

        #[test]
        fn stuffing_in_place_is_stuffing(message in message(), prefix in prop::collection::vec(any::<u8>(), 0..8)) {
            prop_assert_eq!(stuffed_in_place(&prefix, &message), stuffed(&message));
        }

        #[test]
        fn stuffing_random_bytes_in_place_is_stuffing(
            message in prop::collection::vec(prop_oneof![Just(b'.'), Just(b'\n'), Just(b'\r'), any::<u8>()], 0..300),
        ) {
            prop_assert_eq!(stuffed_in_place(b"+OK\r\n", &message), stuffed(&message));
        }

        #[test]
        fn top_is_a_prefix_on_line_boundaries(message in message(), k in 0..30u64) {
            let cut = top(&message, k);
            prop_assert!(message.starts_with(cut));
            prop_assert!(cut.len() == message.len() || cut.ends_with(b"\n"));
            prop_assert!(top(&message, k + 1).len() >= cut.len());
        }

        #[test]
        fn random_bytes_never_panic(message in prop::collection::vec(any::<u8>(), 0..500), k in any::<u64>()) {
            let mut out = Vec::new();
            stuff(top(&message, k), &mut out);
            prop_assert!(out.ends_with(TERMINATOR));
            prop_assert!(out.len() as u64 <= retr_size(&message) * 2 + 3);
        }
    }
}
