//! Reading IMAP server responses (RFC 3501 §7, RFC 9051 §7) without a full parser.
//!
//! A load client needs only a response's kind (tagged, untagged, continuation), its first
//! words, the sizes of its literals and, for SEARCH, its numbers. So a response is scanned as
//! it arrives: its text (everything but literal data) goes through a token counter and its
//! first [`HEAD_MAX`] bytes are kept; a line that ends in `{n}` (or `{n+}`, `~{n}`) announces
//! n bytes of literal, which are skipped without being held, and the response goes on after
//! them up to the next line end. Memory is bounded whatever the peer sends: the head, the
//! collected numbers ([`NUMBERS_MAX`]) and the text length ([`TEXT_MAX`]) all have limits,
//! and a literal is never buffered.

use crate::wire::{Conn, WireError};

/// Bytes of a response's text kept for inspection (tag, status, first words, capabilities).
pub const HEAD_MAX: usize = 8 * 1024;
/// The longest response text (literals excluded) before it is a protocol error: a SEARCH
/// answer over millions of messages fits.
pub const TEXT_MAX: u64 = 256 << 20;
/// The largest literal accepted.
pub const LITERAL_MAX: u64 = 1 << 30;
/// Numbers collected from one response when collecting (UID SEARCH ALL over 4 M messages).
pub const NUMBERS_MAX: usize = 4 << 20;
/// Enough of a line's end to hold `{LITERAL_MAX+}\r`.
const TAIL: usize = 24;

/// Whether a tagged response says OK, NO or BAD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    No,
    Bad,
}

/// One response, scanned. Reused from response to response (its buffers keep their room).
#[derive(Debug, Default)]
pub struct Response {
    /// The first [`HEAD_MAX`] bytes of the text, without the final line end.
    head: Vec<u8>,
    text_len: u64,
    /// Literals in the response and their total size.
    pub literals: u32,
    pub literal_bytes: u64,
    /// Tokens made only of digits in the text (a SEARCH answer's hits).
    pub numbers: u64,
    /// With `collect` set, those numbers (the first [`NUMBERS_MAX`] that fit in u32).
    pub collected: Vec<u32>,
    pub collect: bool,
    tail: [u8; TAIL],
    tail_len: usize,
    token_len: usize,
    token_digits: bool,
    token_value: u64,
}

impl Response {
    fn reset(&mut self) {
        self.head.clear();
        self.text_len = 0;
        self.literals = 0;
        self.literal_bytes = 0;
        self.numbers = 0;
        self.collected.clear();
        self.tail_len = 0;
        self.token_len = 0;
    }

    /// Reads the next whole response from `conn`.
    pub async fn read(&mut self, conn: &mut Conn) -> Result<(), WireError> {
        self.reset();
        loop {
            // The text up to the end of this line.
            loop {
                let buffered = conn.buffered();
                if buffered.is_empty() {
                    conn.fill().await?;
                    continue;
                }
                let (len, eol) = match memchr::memchr(b'\n', buffered) {
                    Some(at) => (at, true),
                    None => (buffered.len(), false),
                };
                self.text(&buffered[..len]);
                conn.consume(len + usize::from(eol));
                if self.text_len > TEXT_MAX {
                    return Err(WireError::Protocol("response too long".into()));
                }
                if eol {
                    break;
                }
            }
            self.end_token();
            match self.literal_announced()? {
                Some(size) => {
                    if self.head.last() == Some(&b'\r') {
                        self.head.pop();
                    }
                    self.literals += 1;
                    self.literal_bytes += size;
                    conn.skip_exact(size).await?;
                    self.tail_len = 0;
                }
                None => {
                    if self.head.last() == Some(&b'\r') {
                        self.head.pop();
                    }
                    return Ok(());
                }
            }
        }
    }

    /// Takes in a piece of text (no LF in it).
    fn text(&mut self, piece: &[u8]) {
        self.text_len += piece.len() as u64;
        let room = HEAD_MAX.saturating_sub(self.head.len());
        self.head.extend_from_slice(&piece[..piece.len().min(room)]);
        // Keep the end of the line for the literal check.
        if piece.len() >= TAIL {
            self.tail.copy_from_slice(&piece[piece.len() - TAIL..]);
            self.tail_len = TAIL;
        } else {
            let keep = (TAIL - piece.len()).min(self.tail_len);
            self.tail
                .copy_within(self.tail_len - keep..self.tail_len, 0);
            self.tail[keep..keep + piece.len()].copy_from_slice(piece);
            self.tail_len = keep + piece.len();
        }
        for &b in piece {
            if matches!(b, b' ' | b'(' | b')' | b'[' | b']' | b'\r') {
                self.end_token();
            } else {
                if self.token_len == 0 {
                    self.token_digits = true;
                    self.token_value = 0;
                }
                self.token_len += 1;
                if b.is_ascii_digit() {
                    self.token_value = self
                        .token_value
                        .saturating_mul(10)
                        .saturating_add(u64::from(b - b'0'));
                } else {
                    self.token_digits = false;
                }
            }
        }
    }

    fn end_token(&mut self) {
        if self.token_len > 0 && self.token_digits {
            self.numbers += 1;
            if self.collect && self.collected.len() < NUMBERS_MAX {
                if let Ok(n) = u32::try_from(self.token_value) {
                    self.collected.push(n);
                }
            }
        }
        self.token_len = 0;
    }

    /// The size of the literal this line announces, if it ends in `{n}` / `{n+}` / `{n-}`.
    fn literal_announced(&self) -> Result<Option<u64>, WireError> {
        let mut line = &self.tail[..self.tail_len];
        if let Some(rest) = line.strip_suffix(b"\r") {
            line = rest;
        }
        let Some(inner) = line.strip_suffix(b"}") else {
            return Ok(None);
        };
        let Some(open) = inner.iter().rposition(|&b| b == b'{') else {
            return Ok(None);
        };
        let mut digits = &inner[open + 1..];
        if let Some(rest) = digits
            .strip_suffix(b"+")
            .or_else(|| digits.strip_suffix(b"-"))
        {
            digits = rest;
        }
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return Ok(None);
        }
        let size = digits
            .iter()
            .try_fold(0u64, |n, &d| {
                n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
            })
            .filter(|&n| n <= LITERAL_MAX)
            .ok_or_else(|| WireError::Protocol("literal too large".into()))?;
        Ok(Some(size))
    }

    /// The kept text (at most [`HEAD_MAX`] bytes, without the line end).
    pub fn head(&self) -> &[u8] {
        &self.head
    }

    pub fn is_continuation(&self) -> bool {
        self.head.starts_with(b"+")
    }

    /// `* …`: the words after the star.
    pub fn untagged(&self) -> Option<&[u8]> {
        self.head.strip_prefix(b"* ")
    }

    /// The status of a response tagged `tag`; `Err` when it is tagged `tag` but the status
    /// is none of OK, NO, BAD.
    pub fn tagged(&self, tag: &[u8]) -> Option<Result<Status, WireError>> {
        let rest = self.head.strip_prefix(tag)?.strip_prefix(b" ")?;
        let word = rest.split(|&b| b == b' ').next().unwrap_or_default();
        Some(if word.eq_ignore_ascii_case(b"OK") {
            Ok(Status::Ok)
        } else if word.eq_ignore_ascii_case(b"NO") {
            Ok(Status::No)
        } else if word.eq_ignore_ascii_case(b"BAD") {
            Ok(Status::Bad)
        } else {
            Err(WireError::Protocol(format!(
                "tagged response without a status: {}",
                self.shown()
            )))
        })
    }

    /// `* n WORD …` → (n, WORD).
    pub fn numbered(&self) -> Option<(u32, &[u8])> {
        let rest = self.untagged()?;
        let mut words = rest.splitn(3, |&b| b == b' ');
        let n = std::str::from_utf8(words.next()?).ok()?.parse().ok()?;
        Some((n, words.next()?))
    }

    /// True when the capabilities in this response (`* CAPABILITY …` or a
    /// `[CAPABILITY …]` code) include `name`; None when it lists none.
    pub fn capability(&self, name: &[u8]) -> Option<bool> {
        let at = memchr::memmem::find(&self.head, b"CAPABILITY ")?;
        let list = &self.head[at + 11..];
        let list = list.split(|&b| b == b']').next().unwrap_or(list);
        Some(
            list.split(|&b| b == b' ')
                .any(|word| word.eq_ignore_ascii_case(name)),
        )
    }

    /// The head for error messages (80 bytes at most).
    pub fn shown(&self) -> String {
        String::from_utf8_lossy(&self.head[..self.head.len().min(80)]).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    /// Responses with literals read right whatever the segmenting: the peer writes one
    /// byte at a time, then all at once.
    #[test]
    fn responses_with_literals_split_anywhere() {
        let text: &[u8] = b"* OK [CAPABILITY IMAP4rev1 LITERAL+ IDLE] ready\r\n\
            * 12 EXISTS\r\n\
            * 1 FETCH (UID 7 BODY[] {4}\r\nab\r\n BODY[1] {3}\r\ncde) \r\n\
            * 2 FETCH (ENVELOPE (\"x\" {2}\r\n\r\n NIL) FLAGS (\\Seen))\r\n\
            * SEARCH 2 40 4000000000 9\r\n\
            + idling\r\n\
            a3 NO [TRYCREATE] no such mailbox\r\n\
            a4 WHAT\r\n";
        for one_byte in [true, false] {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = listener.local_addr().unwrap();
                let writer = tokio::spawn(async move {
                    let (mut stream, _) = listener.accept().await.unwrap();
                    stream.set_nodelay(true).unwrap();
                    if one_byte {
                        for byte in text {
                            stream.write_all(std::slice::from_ref(byte)).await.unwrap();
                        }
                    } else {
                        stream.write_all(text).await.unwrap();
                    }
                });
                let mut conn = Conn::connect_with_buffer(addr, Duration::from_secs(10), 1024)
                    .await
                    .unwrap();
                let mut r = Response::default();
                r.read(&mut conn).await.unwrap();
                assert_eq!(
                    r.untagged(),
                    Some(&b"OK [CAPABILITY IMAP4rev1 LITERAL+ IDLE] ready"[..])
                );
                assert_eq!(r.capability(b"literal+"), Some(true));
                assert_eq!(r.capability(b"LITERAL-"), Some(false));
                r.read(&mut conn).await.unwrap();
                assert_eq!(r.numbered(), Some((12, &b"EXISTS"[..])));
                assert_eq!(r.capability(b"IDLE"), None);
                r.read(&mut conn).await.unwrap();
                assert_eq!(r.numbered(), Some((1, &b"FETCH"[..])));
                assert_eq!((r.literals, r.literal_bytes), (2, 7));
                assert_eq!(r.head(), b"* 1 FETCH (UID 7 BODY[] {4} BODY[1] {3}) ");
                r.read(&mut conn).await.unwrap();
                assert_eq!(r.numbered(), Some((2, &b"FETCH"[..])));
                assert_eq!((r.literals, r.literal_bytes), (1, 2));
                r.collect = true;
                r.read(&mut conn).await.unwrap();
                assert_eq!(r.untagged(), Some(&b"SEARCH 2 40 4000000000 9"[..]));
                assert_eq!(r.numbers, 4);
                assert_eq!(r.collected, [2, 40, 4_000_000_000, 9]);
                r.read(&mut conn).await.unwrap();
                assert!(r.is_continuation());
                assert!(r.tagged(b"a3").is_none());
                r.read(&mut conn).await.unwrap();
                assert!(matches!(r.tagged(b"a3"), Some(Ok(Status::No))));
                assert!(r.tagged(b"a").is_none());
                r.read(&mut conn).await.unwrap();
                assert!(matches!(r.tagged(b"a4"), Some(Err(WireError::Protocol(_)))));
                writer.await.unwrap();
                assert!(matches!(r.read(&mut conn).await, Err(WireError::Closed)));
            });
        }
    }

    #[test]
    fn literal_announcements() {
        let mut r = Response::default();
        for (line, want) in [
            (&b"* 1 FETCH (BODY[] {123}\r"[..], Some(123)),
            (b"x {0}", Some(0)),
            (b"x {5+}\r", Some(5)),
            (b"x ~{5}\r", Some(5)),
            (b"x {}\r", None),
            (b"x {1a}\r", None),
            (b"x 5}\r", None),
            (b"* OK done\r", None),
        ] {
            r.reset();
            r.text(line);
            assert_eq!(r.literal_announced().unwrap(), want, "{line:?}");
        }
        r.reset();
        r.text(b"x {99999999999999999999}\r");
        assert!(r.literal_announced().is_err());
        r.reset();
        // The tail survives pieces shorter than itself.
        r.text(b"* 1 FETCH (BODY[] {12");
        r.text(b"3");
        r.text(b"}\r");
        assert_eq!(r.literal_announced().unwrap(), Some(123));
    }
}
