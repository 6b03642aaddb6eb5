//! The messages loadgen sends, generated once at start.
//!
//! Each size class gets a few variants (different text, different attachment bytes), built
//! once and shared by every connection (`Arc<[u8]>`). Per message, a connection writes only
//! the headers that differ (`To`, `Message-ID`) into a reused buffer and sends that buffer
//! and the shared body in one vectored write: no allocation per message.
//!
//! Bodies are 7-bit text in CRLF lines of at most 78 characters, and no line starts with `.`,
//! so DATA needs no dot-stuffing and the bytes on the wire equal the message bytes (which is
//! what lets a test compare the sizes loadgen sent with what a server stored).

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use relay::envelope::MailParams;
use relay::smtp::command::{encode, Command, MailKind};
use relay::smtp::{ForwardPath, Mailbox, RcptParams, ReversePath};

/// The envelope sender and From address of generated messages.
pub const DEFAULT_FROM: &str = "loadgen@loadgen.test";
/// Variants generated per size class.
pub const VARIANTS: usize = 4;
/// Room left for the per-message headers when sizing a body.
const PER_MESSAGE_HEADERS: u64 = 160;
/// At most this many pre-encoded RCPT lines (users × domains); beyond it they are encoded
/// per message.
const RCPT_TABLE_MAX: u64 = 100_000;

/// A small, fast, seedable generator (xorshift64*): enough for picking sizes and recipients.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        // SplitMix64 of the seed, so that small seeds give unrelated streams; never 0.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (`n > 0`; the modulo bias is irrelevant here).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// Picks an index by weight.
#[derive(Debug, Clone)]
pub struct Weighted {
    cumulative: Vec<u64>,
}

impl Weighted {
    pub fn new(weights: impl IntoIterator<Item = u32>) -> Self {
        let mut total = 0u64;
        let cumulative = weights
            .into_iter()
            .map(|w| {
                total += u64::from(w);
                total
            })
            .collect();
        Weighted { cumulative }
    }

    pub fn pick(&self, rng: &mut Rng) -> usize {
        let total = self.cumulative.last().copied().unwrap_or(0);
        if self.cumulative.len() <= 1 || total == 0 {
            return 0;
        }
        let x = rng.below(total);
        self.cumulative.partition_point(|&c| c <= x)
    }
}

/// One pre-generated message: the headers that are the same for every copy, the blank line
/// and the body. Ends with CRLF.
#[derive(Debug)]
pub struct Variant {
    pub content: Arc<[u8]>,
    /// The content dot-stuffed for DATA (RFC 5321 §4.5.2), when that differs from it:
    /// generated content never has a line starting with `.`, a message file may.
    pub data_content: Option<Arc<[u8]>>,
    /// `MAIL FROM:<…> SIZE=n` (used when the server offers SIZE) and without SIZE.
    pub mail_with_size: Vec<u8>,
    pub mail_plain: Vec<u8>,
}

/// Every variant of every size class.
#[derive(Debug)]
pub struct Corpus {
    classes: Vec<Vec<Variant>>,
    weights: Weighted,
    from: String,
    date: String,
    /// Date, From, To and Message-ID written per message; off for a message file, which
    /// has its own (and whose signature would break under a second From).
    per_message_headers: bool,
}

impl Corpus {
    /// Builds the corpus: `sizes` are (whole message size, weight).
    pub fn build(sizes: &[(u64, u32)], mime: bool, from: &str) -> Result<Corpus, String> {
        let sender = Mailbox::parse(from).map_err(|e| format!("--from `{from}`: {e}"))?;
        let date = rfc5322_date(SystemTime::now());
        let mut classes = Vec::new();
        for (class, &(size, _)) in sizes.iter().enumerate() {
            let mut variants = Vec::new();
            for k in 0..VARIANTS {
                let mut rng = Rng::new((class * VARIANTS + k) as u64);
                let target = size.saturating_sub(PER_MESSAGE_HEADERS) as usize;
                let content = if mime {
                    mime_content(target, k, &mut rng)
                } else {
                    text_content(target, k, &mut rng)
                };
                let mail = |size: Option<u64>| mail_line(&sender, size);
                variants.push(Variant {
                    data_content: None,
                    mail_with_size: mail(Some(content.len() as u64 + PER_MESSAGE_HEADERS)),
                    mail_plain: mail(None),
                    content: content.into(),
                });
            }
            classes.push(variants);
        }
        Ok(Corpus {
            classes,
            weights: Weighted::new(sizes.iter().map(|&(_, w)| w)),
            from: sender.as_str().to_string(),
            date,
            per_message_headers: true,
        })
    }

    /// A corpus of one fixed message (`--message-file`): sent byte for byte but for line
    /// ends (LF becomes CRLF, a missing final line end is added) and dot-stuffing for DATA
    /// (BDAT sends it unstuffed: the relay stores the same bytes either way). The envelope
    /// sender is `from`, else the address in the message's From field.
    pub fn from_message(message: &[u8], from: Option<&str>) -> Result<Corpus, String> {
        let content = crlf_lines(message);
        let from = match from {
            Some(from) => from.to_string(),
            None => from_field_address(&content)
                .ok_or("no From field with an address in it (give --from)".to_string())?,
        };
        let sender = Mailbox::parse(&from).map_err(|e| format!("sender `{from}`: {e}"))?;
        let mail = |size: Option<u64>| mail_line(&sender, size);
        let stuffed = dot_stuffed(&content);
        let variant = Variant {
            data_content: (stuffed != content).then(|| stuffed.into()),
            mail_with_size: mail(Some(content.len() as u64)),
            mail_plain: mail(None),
            content: content.into(),
        };
        Ok(Corpus {
            classes: vec![vec![variant]],
            weights: Weighted::new([1]),
            from: sender.as_str().to_string(),
            date: rfc5322_date(SystemTime::now()),
            per_message_headers: false,
        })
    }

    pub fn pick(&self, rng: &mut Rng) -> &Variant {
        let class = &self.classes[self.weights.pick(rng).min(self.classes.len() - 1)];
        &class[rng.below(class.len() as u64) as usize]
    }

    /// Appends the per-message headers to `out` (cleared first): Date, From, To (the first
    /// recipient), Message-ID (unique per message).
    pub fn write_headers(&self, out: &mut Vec<u8>, to: &[u8], id: u64, thread: usize) {
        out.clear();
        if !self.per_message_headers {
            return;
        }
        out.extend_from_slice(b"Date: ");
        out.extend_from_slice(self.date.as_bytes());
        out.extend_from_slice(b"\r\nFrom: Load Generator <");
        out.extend_from_slice(self.from.as_bytes());
        out.extend_from_slice(b">\r\nTo: <");
        out.extend_from_slice(to);
        out.extend_from_slice(b">\r\nMessage-ID: <");
        push_hex(out, id);
        out.push(b'.');
        push_hex(out, thread as u64);
        out.extend_from_slice(b"@loadgen.test>\r\n");
    }
}

/// The message with CRLF line ends throughout, ending in CRLF.
fn crlf_lines(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 40 + 2);
    let mut previous = 0u8;
    for &b in message {
        if b == b'\n' && previous != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        previous = b;
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// `message` (CRLF lines) with a `.` added before every line that starts with one.
fn dot_stuffed(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 16);
    let mut line_start = true;
    for &b in message {
        if line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        line_start = b == b'\n';
    }
    out
}

/// The address in the first From field of `message`: inside `<…>`, or the whole unfolded
/// value when it has no angle brackets.
fn from_field_address(message: &[u8]) -> Option<String> {
    let mut fields = Vec::new();
    relay::mime::header::parse_block(message, 0..message.len(), 1 << 20, 10_000, &mut fields)
        .ok()?;
    let field = fields.iter().find(|f| f.is(message, "From"))?;
    let value = String::from_utf8_lossy(&message[field.value.clone()]).replace(['\r', '\n'], "");
    let address = match (value.rfind('<'), value.rfind('>')) {
        (Some(open), Some(close)) if open < close => &value[open + 1..close],
        _ => value.as_str(),
    };
    let address = address.trim();
    (!address.is_empty()).then(|| address.to_string())
}

fn push_hex(out: &mut Vec<u8>, n: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for shift in (0..16).rev() {
        out.push(HEX[((n >> (shift * 4)) & 0xf) as usize]);
    }
}

/// The recipients to draw from: local parts `user0 … user{N-1}` at weighted domains.
#[derive(Debug)]
pub struct Recipients {
    users: u64,
    domains: Vec<String>,
    weights: Weighted,
    /// Pre-encoded `RCPT TO:<…>` lines, indexed `user * domains + domain`, when small enough.
    table: Option<Vec<Vec<u8>>>,
}

impl Recipients {
    pub fn new(users: u64, domains: Vec<(String, u32)>) -> Result<Recipients, String> {
        if users == 0 {
            return Err("--users must be at least 1".into());
        }
        let weights = Weighted::new(domains.iter().map(|&(_, w)| w));
        let domains: Vec<String> = domains.into_iter().map(|(d, _)| d).collect();
        // Validate every domain once (the per-message path then cannot fail).
        for domain in &domains {
            Self::encode(&mut Vec::new(), 0, domain)?;
        }
        let count = users.saturating_mul(domains.len() as u64);
        let table = if count <= RCPT_TABLE_MAX {
            let mut table = Vec::with_capacity(count as usize);
            for user in 0..users {
                for domain in &domains {
                    let mut line = Vec::new();
                    Self::encode(&mut line, user, domain)?;
                    table.push(line);
                }
            }
            Some(table)
        } else {
            None
        };
        Ok(Recipients {
            users,
            domains,
            weights,
            table,
        })
    }

    fn encode(out: &mut Vec<u8>, user: u64, domain: &str) -> Result<(), String> {
        let address = format!("user{user}@{domain}");
        let mailbox = Mailbox::parse(&address).map_err(|e| format!("recipient {address}: {e}"))?;
        encode(
            &Command::Rcpt {
                to: ForwardPath::Mailbox(mailbox),
                params: RcptParams::default(),
            },
            out,
        );
        Ok(())
    }

    /// Appends a random recipient's `RCPT TO:<addr>` line to `out`; returns where `addr` is
    /// in `out`.
    pub fn push(&self, rng: &mut Rng, out: &mut Vec<u8>) -> std::ops::Range<usize> {
        let user = rng.below(self.users);
        let domain = self.weights.pick(rng).min(self.domains.len() - 1);
        let start = out.len();
        match &self.table {
            Some(table) => {
                out.extend_from_slice(&table[user as usize * self.domains.len() + domain])
            }
            // Every domain was validated in `new`, and `userN` is a valid local part.
            None => {
                if Self::encode(out, user, &self.domains[domain]).is_err() {
                    out.truncate(start);
                }
            }
        }
        // "RCPT TO:<" address ">\r\n"
        if out.len() >= start + 12 {
            start + 9..out.len() - 3
        } else {
            start..start
        }
    }
}

const WORDS: [&str; 32] = [
    "relay",
    "spool",
    "message",
    "queue",
    "delivery",
    "server",
    "client",
    "mailbox",
    "segment",
    "commit",
    "latency",
    "throughput",
    "envelope",
    "recipient",
    "sender",
    "header",
    "body",
    "attachment",
    "report",
    "quarterly",
    "meeting",
    "invoice",
    "schedule",
    "update",
    "project",
    "review",
    "please",
    "thanks",
    "regards",
    "tomorrow",
    "attached",
    "the",
];

/// Appends text lines (never starting with `.`) until `out` has grown by about `len` bytes.
fn push_text(out: &mut Vec<u8>, len: usize, rng: &mut Rng) {
    let end = out.len() + len;
    while out.len() + 2 < end {
        let line_end = (out.len() + 72).min(end - 2);
        let mut first = true;
        loop {
            let word = WORDS[rng.below(WORDS.len() as u64) as usize].as_bytes();
            let need = word.len() + usize::from(!first);
            if out.len() + need > line_end {
                break;
            }
            if !first {
                out.push(b' ');
            }
            out.extend_from_slice(word);
            first = false;
        }
        // Pad the line to its exact end so that the message size is what was asked.
        let pad = line_end.saturating_sub(out.len());
        out.extend(std::iter::repeat_n(b'x', pad));
        out.extend_from_slice(b"\r\n");
    }
}

fn common_headers(out: &mut String, k: usize, size: usize) {
    let _ = write!(
        out,
        "Received: from client.loadgen.test (localhost [127.0.0.1])\r\n\
         \tby submit.loadgen.test with ESMTP id LG{k:04}; Thu, 1 Jan 2026 00:00:00 +0000\r\n\
         Subject: loadgen test message {k} ({size} bytes)\r\n\
         User-Agent: loadgen/{}\r\n\
         MIME-Version: 1.0\r\n",
        env!("CARGO_PKG_VERSION")
    );
}

/// A plain-text message of about `size` bytes (headers included).
fn text_content(size: usize, k: usize, rng: &mut Rng) -> Vec<u8> {
    let mut head = String::new();
    common_headers(&mut head, k, size);
    head.push_str(
        "Content-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: 7bit\r\n\r\n",
    );
    let mut out = head.into_bytes();
    let rest = size.saturating_sub(out.len()).max(8);
    push_text(&mut out, rest, rng);
    out
}

/// A multipart/mixed message of about `size` bytes: multipart/alternative (text and HTML),
/// then a base64 PDF-typed attachment taking most of the size.
fn mime_content(size: usize, k: usize, rng: &mut Rng) -> Vec<u8> {
    let mut head = String::new();
    common_headers(&mut head, k, size);
    let _ = write!(
        head,
        "Content-Type: multipart/mixed; boundary=\"=_mixed_{k}\"\r\n\r\n\
         This is a multi-part message in MIME format.\r\n\
         --=_mixed_{k}\r\n\
         Content-Type: multipart/alternative; boundary=\"=_alt_{k}\"\r\n\r\n\
         --=_alt_{k}\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: 7bit\r\n\r\n"
    );
    let mut out = head.into_bytes();
    let text_len = (size / 8).clamp(64, 4096);
    push_text(&mut out, text_len, rng);
    let _ = write!(
        Utf8Vec(&mut out),
        "--=_alt_{k}\r\n\
         Content-Type: text/html; charset=utf-8\r\n\
         Content-Transfer-Encoding: 7bit\r\n\r\n\
         <html><body>\r\n"
    );
    push_text(&mut out, text_len, rng);
    let _ = write!(
        Utf8Vec(&mut out),
        "</body></html>\r\n\
         --=_alt_{k}--\r\n\r\n\
         --=_mixed_{k}\r\n\
         Content-Type: application/pdf; name=\"report-{k}.pdf\"\r\n\
         Content-Disposition: attachment; filename=\"report-{k}.pdf\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n"
    );
    let trailer = format!("--=_mixed_{k}--\r\n");
    let room = size.saturating_sub(out.len() + trailer.len());
    // base64 grows 3 → 4 and adds CRLF per 76 characters: 78/76 × 4/3.
    let raw_len = (room * 57 / 78).max(3);
    let raw: Vec<u8> = (0..raw_len).map(|_| rng.next_u64() as u8).collect();
    relay::mime::base64::encode_wrapped_into(&raw, &mut out);
    out.extend_from_slice(trailer.as_bytes());
    out
}

/// `fmt::Write` into a byte vector (the text written is ASCII).
struct Utf8Vec<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Utf8Vec<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// `Thu, 26 Nov 2026 06:41:27 +0000` (RFC 5322 §3.3) in UTC.
pub fn rfc5322_date(now: SystemTime) -> String {
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    format!(
        "{}, {} {} {} {:02}:{:02}:{:02} +0000",
        WEEKDAYS[days.rem_euclid(7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The encoded `MAIL FROM:<sender>` line, with `SIZE=` when given.
fn mail_line(sender: &Mailbox, size: Option<u64>) -> Vec<u8> {
    let mut line = Vec::new();
    encode(
        &Command::Mail {
            kind: MailKind::Mail,
            from: ReversePath::Mailbox(sender.clone()),
            params: MailParams {
                size,
                ..MailParams::default()
            },
        },
        &mut line,
    );
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn lines_ok(content: &[u8]) {
        assert!(content.ends_with(b"\r\n"));
        for line in content.split(|&b| b == b'\n') {
            assert!(!line.starts_with(b"."), "a line starts with a dot");
            assert!(line.len() <= 80, "line of {} bytes", line.len());
            assert!(line.is_ascii());
        }
        // Only CRLF line ends (no bare CR or LF: the relay refuses those).
        let crlf = content.windows(2).filter(|w| w == b"\r\n").count();
        let lf = content.iter().filter(|&&b| b == b'\n').count();
        let cr = content.iter().filter(|&&b| b == b'\r').count();
        assert_eq!((crlf, crlf), (lf, cr));
    }

    #[test]
    fn sizes_are_close_to_the_target() {
        for mime in [false, true] {
            for size in [1024u64, 10 * 1024, 1 << 20] {
                let corpus = Corpus::build(&[(size, 1)], mime, "a@b.test").unwrap();
                let mut rng = Rng::new(1);
                let variant = corpus.pick(&mut rng);
                lines_ok(&variant.content);
                let mut headers = Vec::new();
                corpus.write_headers(&mut headers, b"user1@example.test", 7, 0);
                let total = (headers.len() + variant.content.len()) as u64;
                // Within 2%, or (MIME structure has a floor) 200 bytes.
                let error = total.abs_diff(size);
                assert!(
                    error * 50 <= size || (mime && error <= 200),
                    "mime={mime} size={size} total={total}"
                );
                let mail = String::from_utf8(variant.mail_with_size.clone()).unwrap();
                assert!(mail.starts_with("MAIL FROM:<a@b.test> SIZE="), "{mail}");
                assert_eq!(variant.mail_plain, b"MAIL FROM:<a@b.test>\r\n");
            }
        }
    }

    #[test]
    fn mime_messages_parse() {
        let corpus = Corpus::build(&[(20_000, 1)], true, "a@b.test").unwrap();
        let variant = corpus.pick(&mut Rng::new(3));
        let mut message = Vec::new();
        corpus.write_headers(&mut message, b"u@example.test", 1, 0);
        message.extend_from_slice(&variant.content);
        let parsed = content_types(&message);
        assert_eq!(
            parsed, 5,
            "multipart/mixed, alternative, text, html, attachment"
        );
    }

    /// Counts the parts by their Content-Type headers (a structural smoke test; the relay's
    /// own MIME engine is exercised in the end-to-end test).
    fn content_types(message: &[u8]) -> usize {
        let text = std::str::from_utf8(message).unwrap();
        assert!(text.contains("--=_mixed_"));
        assert!(text.ends_with("--\r\n"));
        text.matches("Content-Type:").count()
    }

    #[test]
    fn recipients_are_encoded_by_the_shared_command_type() {
        for users in [3, RCPT_TABLE_MAX + 1] {
            let recipients =
                Recipients::new(users, vec![("a.test".into(), 1), ("b.test".into(), 3)]).unwrap();
            let mut rng = Rng::new(9);
            let mut out = Vec::new();
            for _ in 0..100 {
                out.clear();
                let span = recipients.push(&mut rng, &mut out);
                let line = std::str::from_utf8(&out).unwrap();
                assert!(
                    line.starts_with("RCPT TO:<user") && line.ends_with(">\r\n"),
                    "{line}"
                );
                let address = std::str::from_utf8(&out[span]).unwrap();
                assert!(Mailbox::parse(address).is_ok(), "{address}");
                assert!(relay::smtp::command::parse(&out[..out.len() - 2]).is_ok());
            }
        }
        assert!(Recipients::new(1, vec![("bad domain".into(), 1)]).is_err());
    }

    #[test]
    fn weights_are_respected() {
        let weighted = Weighted::new([1, 3]);
        let mut rng = Rng::new(5);
        let ones = (0..40_000).filter(|_| weighted.pick(&mut rng) == 1).count();
        assert!((29_000..31_000).contains(&ones), "{ones}");
    }

    #[test]
    fn a_message_file_is_sent_as_it_is() {
        let file = b"DKIM-Signature: v=1; a=ed25519-sha256; d=example.org;\n\tb=abc\nFrom: \"A, B\" <a.b@Example.org>\nTo: x@y.test\n\n.line\nend";
        let corpus = Corpus::from_message(file, None).unwrap();
        let variant = corpus.pick(&mut Rng::new(1));
        let content: &[u8] = &variant.content;
        assert_eq!(
            content,
            &b"DKIM-Signature: v=1; a=ed25519-sha256; d=example.org;\r\n\tb=abc\r\nFrom: \"A, B\" <a.b@Example.org>\r\nTo: x@y.test\r\n\r\n.line\r\nend\r\n"[..]
        );
        assert_eq!(
            variant.data_content.as_deref().unwrap(),
            &b"DKIM-Signature: v=1; a=ed25519-sha256; d=example.org;\r\n\tb=abc\r\nFrom: \"A, B\" <a.b@Example.org>\r\nTo: x@y.test\r\n\r\n..line\r\nend\r\n"[..]
        );
        assert_eq!(variant.mail_plain, b"MAIL FROM:<a.b@Example.org>\r\n");
        let mut headers = b"stale".to_vec();
        corpus.write_headers(&mut headers, b"u@example.test", 1, 0);
        assert!(headers.is_empty(), "no header is added to a message file");

        let given = Corpus::from_message(file, Some("bounce@example.org")).unwrap();
        assert_eq!(
            given.pick(&mut Rng::new(1)).mail_plain,
            b"MAIL FROM:<bounce@example.org>\r\n"
        );
        assert!(Corpus::from_message(b"Subject: no sender\r\n\r\nbody\r\n", None).is_err());
        assert_eq!(
            from_field_address(b"From: plain@example.org\r\n\r\n").as_deref(),
            Some("plain@example.org")
        );
    }

    #[test]
    fn dates() {
        assert_eq!(
            rfc5322_date(UNIX_EPOCH + Duration::from_secs(1_795_675_287)),
            "Thu, 26 Nov 2026 06:41:27 +0000"
        );
        assert_eq!(rfc5322_date(UNIX_EPOCH), "Thu, 1 Jan 1970 00:00:00 +0000");
    }
}
