//! The incremental, bounded command-line framer (docs/ARCHITECTURE.md §10).
//!
//! It looks at the bytes the driver has buffered and says whether they start with a whole
//! line, need more bytes, or already hold more than a command line may have. It never
//! allocates and never looks past `max` bytes for a line end that is not there.
//!
//! Exposure: raw peer bytes.
//!
//! Standards: RFC 5321 §2.3.8 (lines end in CRLF; a bare LF is reported so that the session
//! can refuse it), §4.5.3.1.4 (512 octets including CRLF for a command line).

use memchr::memchr;

/// How a line ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineEnd {
    /// CR LF, the only line end RFC 5321 §2.3.8 allows.
    CrLf,
    /// LF without CR before it.
    BareLf,
}

/// What the start of the buffer holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A whole line: `line` excludes the line end, `consumed` includes it.
    Line {
        line: &'a [u8],
        ending: LineEnd,
        consumed: usize,
    },
    /// No line end yet and fewer than `max` bytes: wait for more.
    Incomplete,
    /// The line is longer than `max` (line end included). `consumed` covers it through its LF
    /// if `complete`, otherwise the whole buffer (the caller then discards up to the next LF).
    TooLong { consumed: usize, complete: bool },
}

/// Frames the first line of `buf`; `max` counts the line end (RFC 5321 §4.5.3.1.4).
pub fn frame(buf: &[u8], max: usize) -> Frame<'_> {
    let window = &buf[..buf.len().min(max)];
    if let Some(lf) = memchr(b'\n', window) {
        let (line, ending) = match lf.checked_sub(1) {
            Some(cr) if buf[cr] == b'\r' => (&buf[..cr], LineEnd::CrLf),
            _ => (&buf[..lf], LineEnd::BareLf),
        };
        return Frame::Line {
            line,
            ending,
            consumed: lf + 1,
        };
    }
    if buf.len() < max {
        return Frame::Incomplete;
    }
    match memchr(b'\n', &buf[window.len()..]) {
        Some(lf) => Frame::TooLong {
            consumed: window.len() + lf + 1,
            complete: true,
        },
        None => Frame::TooLong {
            consumed: buf.len(),
            complete: false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames() {
        let table: &[(&[u8], usize, Frame<'_>)] = &[
            (
                b"NOOP\r\nRSET\r\n",
                512,
                Frame::Line {
                    line: b"NOOP",
                    ending: LineEnd::CrLf,
                    consumed: 6,
                },
            ),
            (
                b"NOOP\nRSET\r\n",
                512,
                Frame::Line {
                    line: b"NOOP",
                    ending: LineEnd::BareLf,
                    consumed: 5,
                },
            ),
            (
                b"\n",
                512,
                Frame::Line {
                    line: b"",
                    ending: LineEnd::BareLf,
                    consumed: 1,
                },
            ),
            (
                b"\r\n",
                512,
                Frame::Line {
                    line: b"",
                    ending: LineEnd::CrLf,
                    consumed: 2,
                },
            ),
            (b"NOOP\r", 512, Frame::Incomplete),
            (b"", 512, Frame::Incomplete),
            // Exactly at the limit (CRLF included) is a line; one more byte is too long.
            (
                b"abcd\r\n",
                6,
                Frame::Line {
                    line: b"abcd",
                    ending: LineEnd::CrLf,
                    consumed: 6,
                },
            ),
            (
                b"abcde\r\nx",
                6,
                Frame::TooLong {
                    consumed: 7,
                    complete: true,
                },
            ),
            (b"abcde", 6, Frame::Incomplete),
            (
                b"abcdef",
                6,
                Frame::TooLong {
                    consumed: 6,
                    complete: false,
                },
            ),
            (
                b"abcdefgh\nxyz\r\n",
                6,
                Frame::TooLong {
                    consumed: 9,
                    complete: true,
                },
            ),
        ];
        for (input, max, expected) in table {
            assert_eq!(
                frame(input, *max),
                *expected,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }
}
