//! The message-data receiver: DATA (dot-terminated, dot-stuffed) and BDAT chunks.
//!
//! Role: turn the peer's data bytes into the stored body (CRLF line ends, dot-unstuffed),
//! with one copy per line found by `memchr2`, while checking what must hold for the message
//! to be relayed safely later: no bare CR or LF, no over-long text line, no more than the
//! size limit. A flaw does not stop the scan: the receiver keeps looking for the real end
//! of the data so that the session can answer at the right place and go on.
//!
//! Exposure: raw peer bytes in arbitrary chunk splits; all state that spans a split lives in
//! `Scan`. Memory: the body never grows past `size_max`, and every byte of its buffer is
//! first reserved from the process's body budget ([`super::body_memory`]); the buffer grows
//! by half at a time, so reserving costs one atomic operation per growth, not per chunk. A
//! body the budget cannot cover is refused at its end (452 4.3.1) like any other flaw: once
//! a flaw is found the body is dropped, its reservation given back, and further bytes are
//! only counted.
//!
//! Standards: RFC 5321 §4.1.1.4 (DATA ends with CRLF "." CRLF), §4.5.2 (transparency: a
//! leading dot is removed), §2.3.8 (only CRLF ends a line; bare CR or LF is how "SMTP
//! smuggling" hides a second message from a next hop that reads them as line ends),
//! §4.5.3.1.6 (1000-octet text lines), RFC 1870 (size), RFC 3030 (BDAT, BINARYMIME).

use memchr::memchr2;

use super::body_memory::{MemoryGate, Refusal, Reservation};
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
    /// The body budget could not cover the body: not the peer's flaw, a try-later.
    #[error("no memory left for message data in flight")]
    NoMemory,
}

impl BodyError {
    pub fn reply(&self) -> Reply {
        match self {
            BodyError::BareCr | BodyError::BareLf => Reply::bare_line_end_in_data(),
            BodyError::LineTooLong { max } => Reply::text_line_too_long(*max),
            BodyError::TooLarge { .. } => Reply::message_too_large(),
            BodyError::NoMemory => Reply::body_memory_exhausted(),
        }
    }

    /// When several flaws occur, the reply names the most important: a smuggling attempt
    /// first (it is the security problem), then size (the client can do nothing else about it).
    /// Lack of memory comes last: it is temporary, and a client told to try again later
    /// should not learn only then that the message can never be taken.
    fn rank(self) -> u8 {
        match self {
            BodyError::BareCr | BodyError::BareLf => 3,
            BodyError::TooLarge { .. } => 2,
            BodyError::LineTooLong { .. } => 1,
            BodyError::NoMemory => 0,
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
    /// What `body`'s buffer holds of the body budget: always its whole capacity.
    reservation: Reservation,
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
            .field("reservation", &self.reservation)
            .finish()
    }
}

/// The first allocation for a body: the declared SIZE if smaller, so a peer cannot make us
/// reserve `size_max` per connection by declaring it.
pub const INITIAL_CAPACITY_MAX: usize = 64 * 1024;
/// Room kept behind the data for the CRLF the session adds to a BDAT body without one, so
/// that adding it never grows the buffer past its reservation.
const FINAL_CRLF: usize = 2;
/// The smallest buffer a body grows to (a short message in one or two steps).
const GROWTH_MIN: usize = 4 * 1024;

impl BodyReceiver {
    /// A receiver for DATA whose buffer is reserved from `memory` (`None`: no budget).
    pub fn dot(limits: BodyLimits, size_hint: Option<u64>, memory: Option<MemoryGate>) -> Self {
        Self::new(Framing::Dot, limits, size_hint, memory)
    }

    /// A receiver for BDAT chunks. `text` is false for BODY=BINARYMIME, whose content is
    /// opaque octets. For every other body the same checks as for DATA apply, so that any
    /// stored non-binary message can later be relayed over DATA to a next hop without
    /// CHUNKING and still be safe (no bare CR/LF to smuggle with, no over-long lines).
    pub fn chunks(
        limits: BodyLimits,
        text: bool,
        size_hint: Option<u64>,
        memory: Option<MemoryGate>,
    ) -> Self {
        Self::new(Framing::Chunks { text }, limits, size_hint, memory)
    }

    fn new(
        framing: Framing,
        limits: BodyLimits,
        size_hint: Option<u64>,
        memory: Option<MemoryGate>,
    ) -> Self {
        let mut receiver = Self {
            framing,
            scan: Scan::LineStart,
            body: Vec::new(),
            size: 0,
            line_len: 0,
            limits,
            error: None,
            reservation: Reservation::new(memory),
        };
        let hint = size_hint
            .unwrap_or(0)
            .min(limits.size_max)
            .min(INITIAL_CAPACITY_MAX as u64) as usize;
        if hint > 0 {
            receiver.grow_to(hint + FINAL_CRLF);
        }
        receiver
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

    /// Ends the body: the stored octets with the reservation that covers them (hold it until
    /// they are stored; its capacity leaves room for a final CRLF), or the most important flaw.
    pub fn finish(mut self) -> Result<(Vec<u8>, Reservation), BodyError> {
        if self.scan == Scan::Cr {
            // The last chunk ended in a CR that no LF followed.
            self.flag(BodyError::BareCr);
        }
        match self.error {
            Some(error) => Err(error),
            None => Ok((self.body, self.reservation)),
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

    /// Appends to the body unless it is already refused, would grow past the limit, or
    /// cannot be covered by the budget. Size is checked even after another flaw, so that a
    /// message refused for want of memory is refused for its size instead when it is too
    /// large anyway.
    fn push(&mut self, octets: &[u8]) {
        self.size = self.size.saturating_add(octets.len() as u64);
        if self.size > self.limits.size_max {
            if self.error
                != Some(BodyError::TooLarge {
                    max: self.limits.size_max,
                })
            {
                self.flag(BodyError::TooLarge {
                    max: self.limits.size_max,
                });
            }
            return;
        }
        if self.error.is_some() {
            return;
        }
        let needed = self.body.len() + octets.len() + FINAL_CRLF;
        if needed > self.body.capacity() && !self.grow_to(needed) {
            return;
        }
        self.body.extend_from_slice(octets);
    }

    /// Grows the buffer to hold at least `needed` octets, reserving the new capacity first:
    /// by half (amortised copying, at most a third of the buffer unused), or by an eighth
    /// when the budget is nearly spent. Never by just what one line needs: near the end of
    /// the budget that would copy the whole buffer once per line. False when neither can be
    /// reserved: the body is then refused.
    fn grow_to(&mut self, needed: usize) -> bool {
        let capacity = self.body.capacity();
        let ceiling = usize::try_from(self.limits.size_max)
            .unwrap_or(usize::MAX)
            .saturating_add(FINAL_CRLF);
        let by = |part: usize| {
            capacity
                .saturating_add((capacity / part).max(GROWTH_MIN))
                .min(ceiling)
                .max(needed)
        };
        let (generous, modest) = (by(2), by(8));
        let target = if self.reservation.cover(generous as u64) {
            generous
        } else if modest < generous && self.reservation.cover(modest as u64) {
            modest
        } else {
            self.reservation.refused(Refusal::Data);
            self.flag(BodyError::NoMemory);
            return false;
        };
        self.body.reserve_exact(target - self.body.len());
        true
    }

    /// Records a flaw (keeping the most important) and drops the body: it will not be stored,
    /// so its memory goes back to the budget.
    fn flag(&mut self, error: BodyError) {
        if self
            .error
            .is_none_or(|current| error.rank() > current.rank())
        {
            self.error = Some(error);
        }
        self.body = Vec::new();
        self.reservation.release();
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
        let mut receiver = BodyReceiver::dot(LIMITS, None, None);
        let mut offset = 0;
        while offset < input.len() {
            let end = (offset + piece).min(input.len());
            let (consumed, done) = receiver.receive(&input[offset..end]);
            offset += consumed;
            if done {
                return (receiver.finish().map(|(body, _)| body), offset);
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
            let mut receiver = BodyReceiver::chunks(LIMITS, true, None, None);
            for chunk in *chunks {
                assert_eq!(receiver.receive(chunk), (chunk.len(), false));
            }
            assert_eq!(
                receiver
                    .finish()
                    .map(|(body, _)| body)
                    .as_deref()
                    .map_err(|e| *e),
                *expected,
                "{chunks:?}"
            );
        }
    }

    #[test]
    fn binary_chunks_are_opaque_but_bounded() {
        let mut receiver = BodyReceiver::chunks(LIMITS, false, Some(10), None);
        receiver.receive(b"\r\x00\n.\n");
        receiver.receive(&[b'b'; 100]);
        assert_eq!(receiver.size(), 105);
        let mut expected = b"\r\x00\n.\n".to_vec();
        expected.extend_from_slice(&[b'b'; 100]);
        assert_eq!(receiver.finish().map(|(body, _)| body), Ok(expected));
        let mut receiver = BodyReceiver::chunks(LIMITS, false, None, None);
        receiver.receive(&[0; 1001]);
        assert_eq!(receiver.error(), Some(BodyError::TooLarge { max: 1000 }));
        assert_eq!(receiver.body.capacity(), 0, "a refused body is dropped");
    }

    mod budget {
        use super::*;
        use crate::smtp::body_memory::tests::Counted;
        use std::sync::atomic::Ordering;

        const LINE: &[u8] =
            b"0123456789012345678901234567890123456789012345678901234567890123456789abcd\r\n";
        const BIG: BodyLimits = BodyLimits {
            size_max: 1 << 20,
            line_max: 1000,
        };

        /// `lines` lines of 76 octets and the terminator, fed in pieces of `piece`.
        fn feed(receiver: &mut BodyReceiver, lines: usize, piece: usize) -> (usize, bool) {
            let mut input = LINE.repeat(lines);
            input.extend_from_slice(b".\r\n");
            let mut consumed = 0;
            for chunk in input.chunks(piece) {
                let (n, done) = receiver.receive(chunk);
                consumed += n;
                // The reservation covers the buffer at every step.
                assert!(receiver.reservation.bytes() >= receiver.body.capacity() as u64);
                if done {
                    return (consumed, true);
                }
            }
            (consumed, false)
        }

        #[test]
        fn a_body_within_the_budget_holds_its_capacity_until_stored() {
            let (budget, gate) = Counted::gate(64 * 1024);
            let mut receiver = BodyReceiver::dot(BIG, None, Some(gate));
            assert_eq!(budget.in_flight(), 0, "nothing reserved before the data");
            let (consumed, done) = feed(&mut receiver, 300, 1000);
            assert!(done);
            assert_eq!(consumed, 300 * LINE.len() + 3);
            assert_eq!(budget.in_flight(), receiver.body.capacity() as u64);
            let (body, reservation) = receiver.finish().expect("stored");
            assert_eq!(body.len(), 300 * LINE.len());
            assert!(body.capacity() >= body.len() + FINAL_CRLF);
            assert_eq!(reservation.bytes(), body.capacity() as u64);
            assert_eq!(budget.in_flight(), reservation.bytes());
            drop(reservation);
            assert_eq!(budget.in_flight(), 0);
            assert_eq!(budget.refused_data.load(Ordering::SeqCst), 0);
        }

        #[test]
        fn a_declared_size_is_reserved_at_once_and_exactly() {
            let (budget, gate) = Counted::gate(128 * 1024);
            let size = 100 * LINE.len();
            let mut receiver = BodyReceiver::dot(BIG, Some(size as u64), Some(gate.clone()));
            assert_eq!(budget.in_flight(), (size + FINAL_CRLF) as u64);
            feed(&mut receiver, 100, 7);
            assert_eq!(budget.in_flight(), (size + FINAL_CRLF) as u64, "no growth");
            drop(receiver);
            assert_eq!(
                budget.in_flight(),
                0,
                "a receiver dropped (RSET, a closed connection) gives back"
            );
            // A declared size is reserved only up to the first buffer's limit.
            let receiver = BodyReceiver::dot(BIG, Some(1 << 20), Some(gate));
            assert_eq!(
                budget.in_flight(),
                (INITIAL_CAPACITY_MAX + FINAL_CRLF) as u64
            );
            drop(receiver);
        }

        #[test]
        fn a_body_past_the_budget_is_dropped_scanned_to_its_end_and_refused() {
            for piece in [1, 76, 4096, 100_000] {
                let (budget, gate) = Counted::gate(16 * 1024);
                let mut receiver = BodyReceiver::dot(BIG, None, Some(gate));
                let (consumed, done) = feed(&mut receiver, 1000, piece);
                assert!(done, "the terminator is still found (pieces of {piece})");
                assert_eq!(consumed, 1000 * LINE.len() + 3);
                assert_eq!(receiver.size(), (1000 * LINE.len()) as u64, "still counted");
                assert_eq!(receiver.error(), Some(BodyError::NoMemory));
                assert_eq!(receiver.body.capacity(), 0, "the body is dropped");
                assert_eq!(budget.in_flight(), 0, "and its reservation given back");
                assert_eq!(budget.refused_data.load(Ordering::SeqCst), 1);
                assert_eq!(receiver.finish().err(), Some(BodyError::NoMemory));
                assert_eq!(BodyError::NoMemory.reply(), Reply::body_memory_exhausted());
            }
        }

        #[test]
        fn a_declared_size_the_budget_cannot_cover_refuses_the_body_from_the_start() {
            let (budget, gate) = Counted::gate(1024);
            let mut receiver = BodyReceiver::chunks(BIG, true, Some(10_000), Some(gate));
            assert_eq!(receiver.error(), Some(BodyError::NoMemory));
            receiver.receive(LINE);
            assert_eq!(receiver.finish().err(), Some(BodyError::NoMemory));
            assert_eq!(budget.in_flight(), 0);
        }

        #[test]
        fn near_the_end_of_the_budget_the_buffer_grows_by_an_eighth() {
            // By half: 4,096 → 8,192 → 12,288 → 18,432 → 27,648 → 41,472; then 62,208 does
            // not fit in 48 KiB, but 41,472 + 5,184 does, and holds 600 lines of 76.
            let (budget, gate) = Counted::gate(48 * 1024);
            let mut receiver = BodyReceiver::dot(BIG, None, Some(gate));
            let (_, done) = feed(&mut receiver, 600, 4096);
            assert!(done);
            assert_eq!(receiver.error(), None);
            assert_eq!(budget.in_flight(), 46_656);
        }

        #[test]
        fn permanent_flaws_outrank_the_lack_of_memory() {
            let limits = BodyLimits {
                size_max: 8 * 1024,
                line_max: 1000,
            };
            let (_, gate) = Counted::gate(2 * 1024);
            let mut receiver = BodyReceiver::dot(limits, None, Some(gate.clone()));
            feed(&mut receiver, 200, 512);
            assert_eq!(
                receiver.finish().err(),
                Some(BodyError::TooLarge { max: 8 * 1024 })
            );
            let mut receiver = BodyReceiver::dot(limits, None, Some(gate));
            receiver.receive(&LINE.repeat(60));
            receiver.receive(b"bare\nLF\r\n.\r\n");
            assert_eq!(receiver.finish().err(), Some(BodyError::BareLf));
        }

        #[test]
        fn without_a_budget_the_receiver_still_keeps_room_for_the_final_crlf() {
            let mut receiver = BodyReceiver::chunks(LIMITS, true, None, None);
            receiver.receive(b"no final crlf");
            let (body, _) = receiver.finish().expect("stored");
            assert!(body.capacity() >= body.len() + FINAL_CRLF);
        }
    }
}
