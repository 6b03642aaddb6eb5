//! The message-data receiver: DATA (dot-terminated, dot-stuffed) and BDAT chunks.
//!
//! Role: turn the peer's data bytes into the stored body (CRLF line ends, dot-unstuffed),
//! with one copy per line found by `memchr2`, while checking what must hold for the message
//! to be relayed safely later: no bare CR or LF, no over-long text line, no more than the
//! size limit. A flaw does not stop the scan: the receiver keeps looking for the real end
//! of the data so that the session can answer at the right place and go on.
//!
//! Exposure: raw peer bytes in arbitrary chunk splits; all state that spans a split lives in
//! `Scan`. Memory: the body never grows past `size_max`; once a flaw is found the body is
//! dropped and further bytes are only counted.
//!
//! Standards: RFC 5321 §4.1.1.4 (DATA ends with CRLF "." CRLF), §4.5.2 (transparency: a
//! leading dot is removed), §2.3.8 (only CRLF ends a line; bare CR or LF is how "SMTP
//! smuggling" hides a second message from a next hop that reads them as line ends),
//! §4.5.3.1.6 (1000-octet text lines), RFC 1870 (size), RFC 3030 (BDAT, BINARYMIME).

use memchr::memchr2;

use super::reply::Reply;

/// The body limits of one transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyLimits {
    /// Octets of the unstuffed body.
    pub size_max: u64,
    /// Octets of a text line, CRLF included (RFC 5321 §4.5.3.1.6: 1000).
    pub line_max: usize,
}

/// Why a body is refused. [`BodyError::reply`] is the one place it becomes a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("bare CR in message data")]
    BareCr,
    #[error("bare LF in message data")]
    BareLf,
    #[error("text line longer than {max} octets")]
    LineTooLong { max: usize },
    #[error("message larger than {max} octets")]
    TooLarge { max: u64 },
}

impl BodyError {
    pub fn reply(&self) -> Reply {
        match self {
            BodyError::BareCr | BodyError::BareLf => Reply::bare_line_end_in_data(),
            BodyError::LineTooLong { max } => Reply::text_line_too_long(*max),
            BodyError::TooLarge { .. } => Reply::message_too_large(),
        }
    }

    /// When several flaws occur, the reply names the most important: a smuggling attempt
    /// first (it is the security problem), then size (the client can do nothing else about it).
    fn rank(self) -> u8 {
        match self {
            BodyError::BareCr | BodyError::BareLf => 3,
            BodyError::TooLarge { .. } => 2,
            BodyError::LineTooLong { .. } => 1,
        }
    }
}

/// How the data is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// DATA: ends at CRLF "." CRLF; leading dots are stuffing.
    Dot,
    /// BDAT: the session counts the octets; `text` is false only for BODY=BINARYMIME.
    Chunks { text: bool },
}

/// Where the scan stands; this is everything that must survive a chunk split.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scan {
    /// At the start of a line (after CRLF, or at the start of the data).
    LineStart,
    /// Inside a line.
    Text,
    /// After a CR inside a line: CRLF ends the line, anything else makes the CR bare.
    Cr,
    /// A line started with "." (DATA only): the dot is stuffing or starts the terminator.
    Dot,
    /// "." CR at the start of a line: LF completes the terminator.
    DotCr,
}

/// Receives one message body.
pub struct BodyReceiver {
    framing: Framing,
    scan: Scan,
    body: Vec<u8>,
    /// Unstuffed octets seen, including any that were discarded.
    size: u64,
    /// Octets of the current line so far, line end excluded.
    line_len: usize,
    limits: BodyLimits,
    error: Option<BodyError>,
}

impl std::fmt::Debug for BodyReceiver {
    /// Without the body: a session's debug output must not dump megabytes of peer data.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyReceiver")
            .field("framing", &self.framing)
            .field("scan", &self.scan)
            .field("stored", &self.body.len())
            .field("size", &self.size)
            .field("line_len", &self.line_len)
            .field("error", &self.error)
            .finish()
    }
}

/// The first allocation for a body: the declared SIZE if smaller, so a peer cannot make us
/// reserve `size_max` per connection by declaring it.
const INITIAL_CAPACITY_MAX: usize = 64 * 1024;

impl BodyReceiver {
    /// A receiver for DATA.
    pub fn dot(limits: BodyLimits, size_hint: Option<u64>) -> Self {
        Self::new(Framing::Dot, limits, size_hint)
    }

    /// A receiver for BDAT chunks. `text` is false for BODY=BINARYMIME, whose content is
    /// opaque octets. For every other body the same checks as for DATA apply, so that any
    /// stored non-binary message can later be relayed over DATA to a next hop without
    /// CHUNKING and still be safe (no bare CR/LF to smuggle with, no over-long lines).
    pub fn chunks(limits: BodyLimits, text: bool, size_hint: Option<u64>) -> Self {
        Self::new(Framing::Chunks { text }, limits, size_hint)
    }

    fn new(framing: Framing, limits: BodyLimits, size_hint: Option<u64>) -> Self {
        let capacity = size_hint
            .unwrap_or(0)
            .min(limits.size_max)
            .min(INITIAL_CAPACITY_MAX as u64) as usize;
        Self {
            framing,
            scan: Scan::LineStart,
            body: Vec::with_capacity(capacity),
            size: 0,
            line_len: 0,
            limits,
            error: None,
        }
    }

    /// Unstuffed octets received so far (also counts octets discarded after a flaw).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The flaw found so far, if any.
    pub fn error(&self) -> Option<BodyError> {
        self.error
    }

    /// Takes data bytes. Returns how many were consumed and whether the DATA terminator was
    /// among them (it is consumed, and nothing after it). BDAT receivers consume everything.
    pub fn receive(&mut self, input: &[u8]) -> (usize, bool) {
        match self.framing {
            Framing::Chunks { text: false } => {
                self.push(input);
                (input.len(), false)
            }
            Framing::Chunks { text: true } => self.scan_text(input, false),
            Framing::Dot => self.scan_text(input, true),
        }
    }

    /// Ends the body: the stored octets, or the most important flaw.
    pub fn finish(mut self) -> Result<Vec<u8>, BodyError> {
        if self.scan == Scan::Cr {
            // The last chunk ended in a CR that no LF followed.
            self.flag(BodyError::BareCr);
        }
        match self.error {
            Some(error) => Err(error),
            None => Ok(self.body),
        }
    }

    /// The text scan shared by DATA (`dot`) and text BDAT chunks.
    fn scan_text(&mut self, input: &[u8], dot: bool) -> (usize, bool) {
        let mut i = 0;
        while let Some(&byte) = input.get(i) {
            match self.scan {
                Scan::LineStart => {
                    if dot && byte == b'.' {
                        // Not counted in the line length (RFC 5321 §4.5.3.1.6).
                        self.scan = Scan::Dot;
                        i += 1;
                    } else {
                        self.scan = Scan::Text;
                    }
                }
                Scan::Dot => {
                    if byte == b'\r' {
                        self.scan = Scan::DotCr;
                        i += 1;
                    } else {
                        // RFC 5321 §4.5.2: the leading dot is dropped, the rest is the line.
                        self.scan = Scan::Text;
                    }
                }
                Scan::DotCr => {
                    if byte == b'\n' {
                        self.scan = Scan::LineStart;
                        return (i + 1, true);
                    }
                    // "." CR and then not LF: the CR is bare; the line goes on.
                    self.flag(BodyError::BareCr);
                    self.push(b"\r");
                    self.line_len = 1;
                    self.scan = Scan::Text;
                }
                Scan::Cr => {
                    if byte == b'\n' {
                        self.push(b"\n");
                        self.end_line();
                        i += 1;
                    } else {
                        self.flag(BodyError::BareCr);
                        self.grow_line(1);
                        self.scan = Scan::Text;
                    }
                }
                Scan::Text => i += self.scan_run(&input[i..]),
            }
        }
        (input.len(), false)
    }

    /// Copies the line text up to and including the next CR or LF; returns octets consumed.
    fn scan_run(&mut self, rest: &[u8]) -> usize {
        match memchr2(b'\r', b'\n', rest) {
            None => {
                self.push(rest);
                self.grow_line(rest.len());
                rest.len()
            }
            Some(end) => {
                self.push(&rest[..=end]);
                self.grow_line(end);
                if rest[end] == b'\r' {
                    self.scan = Scan::Cr;
                } else {
                    self.flag(BodyError::BareLf);
                    self.grow_line(1);
                }
                end + 1
            }
        }
    }

    fn grow_line(&mut self, octets: usize) {
        self.line_len = self.line_len.saturating_add(octets);
        // Checked as the line grows, so that a line that never ends is caught too.
        if self.line_len.saturating_add(2) > self.limits.line_max {
            self.flag(BodyError::LineTooLong {
                max: self.limits.line_max,
            });
        }
    }

    fn end_line(&mut self) {
        self.line_len = 0;
        self.scan = Scan::LineStart;
    }

    /// Appends to the body unless it is already refused or would grow past the limit.
    fn push(&mut self, octets: &[u8]) {
        self.size = self.size.saturating_add(octets.len() as u64);
        if self.error.is_some() {
            return;
        }
        if self.size > self.limits.size_max {
            self.flag(BodyError::TooLarge {
                max: self.limits.size_max,
            });
            return;
        }
        self.body.extend_from_slice(octets);
    }

    /// Records a flaw (keeping the most important) and drops the body: it will not be stored.
    fn flag(&mut self, error: BodyError) {
        if self
            .error
            .is_none_or(|current| error.rank() > current.rank())
        {
            self.error = Some(error);
        }
        self.body = Vec::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: BodyLimits = BodyLimits {
        size_max: 1000,
        line_max: 20,
    };

    /// Feeds `input` to a DATA receiver in pieces of `piece` octets (the caller re-presents
    /// nothing: the receiver always consumes what it does not stop at).
    fn receive_dot(input: &[u8], piece: usize) -> (Result<Vec<u8>, BodyError>, usize) {
        let mut receiver = BodyReceiver::dot(LIMITS, None);
        let mut offset = 0;
        while offset < input.len() {
            let end = (offset + piece).min(input.len());
            let (consumed, done) = receiver.receive(&input[offset..end]);
            offset += consumed;
            if done {
                return (receiver.finish(), offset);
            }
            assert_eq!(
                offset, end,
                "a receiver that is not done consumes everything"
            );
        }
        panic!("no terminator in {:?}", String::from_utf8_lossy(input));
    }

    fn check_dot(input: &[u8], expected: Result<&[u8], BodyError>, end: usize) {
        for piece in 1..=input.len() {
            let (result, consumed) = receive_dot(input, piece);
            let shown = String::from_utf8_lossy(input);
            assert_eq!(
                result.as_deref().map_err(|e| *e),
                expected,
                "{shown:?} in pieces of {piece}"
            );
            assert_eq!(consumed, end, "{shown:?} in pieces of {piece}");
        }
    }

    #[test]
    fn dot_framing_and_unstuffing() {
        let table: &[(&[u8], &[u8], usize)] = &[
            // (input, body, octets up to and including the terminator)
            (b".\r\n", b"", 3),
            (b".\r\nNOOP\r\n", b"", 3),
            (b"a\r\n.\r\n", b"a\r\n", 6),
            (b"a\r\nb\r\n.\r\nQUIT\r\n", b"a\r\nb\r\n", 9),
            (b"..\r\n.\r\n", b".\r\n", 7),
            (b"..a\r\n.b\r\n.\r\n", b".a\r\nb\r\n", 12),
            (b"a.\r\n.\r\n", b"a.\r\n", 7),
            (b"\r\n\r\n.\r\n", b"\r\n\r\n", 7),
            (b"x\r\n. \r\n.\r\n", b"x\r\n \r\n", 10),
            (b"\xff\x00\x80\r\n.\r\n", b"\xff\x00\x80\r\n", 8),
        ];
        for &(input, body, end) in table {
            check_dot(input, Ok(body), end);
        }
    }

    #[test]
    fn smuggling_variants_never_terminate_and_are_refused() {
        // Each fake terminator is followed by a real one (and a command that must stay
        // unconsumed): only the real CRLF.CRLF ends the data, and the message is refused.
        let table: &[(&[u8], BodyError)] = &[
            (b"a\n.\nb\r\n.\r\nRSET\r\n", BodyError::BareLf),
            (b"a\r.\rb\r\n.\r\nRSET\r\n", BodyError::BareCr),
            (b"a\r\n.\nb\r\n.\r\nRSET\r\n", BodyError::BareLf),
            (b"a\n.\r\nb\r\n.\r\nRSET\r\n", BodyError::BareLf),
            (b"a\r\n.\rb\r\n.\r\nRSET\r\n", BodyError::BareCr),
            (b"a\r\n.\r\r\n.\r\nRSET\r\n", BodyError::BareCr),
            (
                b"Subject: x\nBcc: y\r\n\r\nbody\r\n.\r\nRSET\r\n",
                BodyError::BareLf,
            ),
            (
                b"Subject: x\rBcc: y\r\n\r\nbody\r\n.\r\nRSET\r\n",
                BodyError::BareCr,
            ),
            (
                b"head\r\n\r\nbody\nmore\r\n.\r\nRSET\r\n",
                BodyError::BareLf,
            ),
            (
                b"head\r\n\r\nbody\rmore\r\n.\r\nRSET\r\n",
                BodyError::BareCr,
            ),
            (b"\n.\r\n.\r\nRSET\r\n", BodyError::BareLf),
            (b"\r\r\n.\r\nRSET\r\n", BodyError::BareCr),
        ];
        for &(input, error) in table {
            let end = input.len() - b"RSET\r\n".len();
            check_dot(input, Err(error), end);
        }
    }

    #[test]
    fn line_length_limit_counts_crlf_but_not_the_stuffed_dot() {
        let at_limit = format!("{}\r\n.\r\n", "x".repeat(18));
        check_dot(
            at_limit.as_bytes(),
            Ok(&at_limit.as_bytes()[..20]),
            at_limit.len(),
        );
        let stuffed = format!(".{}\r\n.\r\n", ".".repeat(18));
        let body = format!("{}\r\n", ".".repeat(18));
        check_dot(stuffed.as_bytes(), Ok(body.as_bytes()), stuffed.len());
        let over = format!("{}\r\n.\r\n", "x".repeat(19));
        check_dot(
            over.as_bytes(),
            Err(BodyError::LineTooLong { max: 20 }),
            over.len(),
        );
    }

    #[test]
    fn size_limit_discards_but_finds_the_terminator() {
        let line = format!("{}\r\n", "y".repeat(8));
        let at_limit = format!("{}.\r\n", line.repeat(100));
        let receiver = receive_dot(at_limit.as_bytes(), 7);
        assert_eq!(receiver.0.map(|b| b.len()), Ok(1000));
        let over = format!("{}z\r\n.\r\nQUIT\r\n", line.repeat(100));
        check_dot(
            over.as_bytes(),
            Err(BodyError::TooLarge { max: 1000 }),
            over.len() - 6,
        );
    }

    #[test]
    fn smuggling_outranks_size_and_line_length() {
        let input = format!("{}\n\r\n.\r\n", "x".repeat(2000));
        check_dot(input.as_bytes(), Err(BodyError::BareLf), input.len());
    }

    #[test]
    fn chunks_check_text_across_splits() {
        type Case<'a> = (&'a [&'a [u8]], Result<&'a [u8], BodyError>);
        let table: &[Case<'_>] = &[
            (&[b"a\r", b"\nb\r\n"], Ok(b"a\r\nb\r\n")),
            (&[b".a\r\n"], Ok(b".a\r\n")),
            (&[b"a\r\n.\r\n"], Ok(b"a\r\n.\r\n")),
            (&[b"no final crlf"], Ok(b"no final crlf")),
            (&[b"a\r"], Err(BodyError::BareCr)),
            (&[b"a\r", b"b"], Err(BodyError::BareCr)),
            (&[b"a\n"], Err(BodyError::BareLf)),
            (&[b"a", b"\n.\n"], Err(BodyError::BareLf)),
            (&[&[b'x'; 19]], Err(BodyError::LineTooLong { max: 20 })),
        ];
        for (chunks, expected) in table {
            let mut receiver = BodyReceiver::chunks(LIMITS, true, None);
            for chunk in *chunks {
                assert_eq!(receiver.receive(chunk), (chunk.len(), false));
            }
            assert_eq!(
                receiver.finish().as_deref().map_err(|e| *e),
                *expected,
                "{chunks:?}"
            );
        }
    }

    #[test]
    fn binary_chunks_are_opaque_but_bounded() {
        let mut receiver = BodyReceiver::chunks(LIMITS, false, Some(10));
        receiver.receive(b"\r\x00\n.\n");
        receiver.receive(&[b'b'; 100]);
        assert_eq!(receiver.size(), 105);
        let mut expected = b"\r\x00\n.\n".to_vec();
        expected.extend_from_slice(&[b'b'; 100]);
        assert_eq!(receiver.finish(), Ok(expected));
        let mut receiver = BodyReceiver::chunks(LIMITS, false, None);
        receiver.receive(&[0; 1001]);
        assert_eq!(receiver.error(), Some(BodyError::TooLarge { max: 1000 }));
        assert_eq!(receiver.body.capacity(), 0, "a refused body is dropped");
    }
}
