//! ENVELOPE, BODYSTRUCTURE and body part sections (RFC 9051 §7.5.2, §6.4.5), computed from
//! the raw message with the MIME engine ([`crate::mime`]) and mail-parser's address parser.
//! A message the MIME engine refuses (a limit) is described as one text/plain part.
//!
//! [`Summary`] is the same rendering done once, when the message is stored, and kept beside it
//! (in its spool frame), so that FETCH ENVELOPE / BODY / BODYSTRUCTURE need neither the body
//! nor a parse.

use crate::mime::{self, Message, PartKind};

use super::reply;

/// The parsed message, or `None` when the MIME engine refused it.
pub fn parse(body: &[u8]) -> Option<Message<'_>> {
    mime::parse(body, &mime::Limits::default()).ok()
}

/// `(date subject from sender reply-to to cc bcc in-reply-to message-id)` of part `index`
/// (the top-level message or an enclosed message/rfc822).
pub fn envelope(out: &mut Vec<u8>, msg: Option<&Message<'_>>, index: usize) {
    let field = |name: &str| msg.and_then(|m| m.header(index, name)).map(unfold);
    out.push(b'(');
    reply::nstring(out, field("Date").as_deref());
    out.push(b' ');
    reply::nstring(out, field("Subject").as_deref());
    let from = field("From");
    for name in ["From", "Sender", "Reply-To", "To", "Cc", "Bcc"] {
        out.push(b' ');
        // RFC 9051 §7.5.2: Sender and Reply-To default to From.
        let value = match (name, field(name)) {
            ("Sender" | "Reply-To", None) => from.clone(),
            (_, v) => v,
        };
        addresses(out, value.as_deref());
    }
    out.push(b' ');
    reply::nstring(out, field("In-Reply-To").as_deref());
    out.push(b' ');
    reply::nstring(out, field("Message-ID").as_deref());
    out.push(b')');
}

/// A header value without folding or surrounding white space.
fn unfold(raw: &[u8]) -> Vec<u8> {
    let mut out: Vec<u8> = raw
        .iter()
        .copied()
        .filter(|&b| b != b'\r' && b != b'\n')
        .collect();
    while out.first().is_some_and(|b| b.is_ascii_whitespace()) {
        out.remove(0);
    }
    while out.last().is_some_and(|b| b.is_ascii_whitespace()) {
        out.pop();
    }
    out
}

/// An address list: `((name adl mailbox host) ...)` or NIL; groups as RFC 9051 §7.5.2 says.
fn addresses(out: &mut Vec<u8>, value: Option<&[u8]>) {
    let Some(value) = value else {
        out.extend_from_slice(b"NIL");
        return;
    };
    let parsed = mail_parser::parsers::MessageStream::new(value).parse_address();
    let mut items: Vec<u8> = Vec::new();
    let one = |items: &mut Vec<u8>, name: Option<&str>, address: Option<&str>| {
        let (mailbox, host) = match address.and_then(|a| a.rsplit_once('@')) {
            Some((l, h)) => (Some(l), Some(h)),
            None => (address, None),
        };
        items.push(b'(');
        reply::nstring(items, name.map(str::as_bytes));
        items.extend_from_slice(b" NIL ");
        reply::nstring(items, mailbox.map(str::as_bytes));
        items.push(b' ');
        reply::nstring(items, host.map(str::as_bytes));
        items.push(b')');
    };
    match parsed {
        mail_parser::HeaderValue::Address(mail_parser::Address::List(list)) => {
            for a in &list {
                one(&mut items, a.name.as_deref(), a.address.as_deref());
            }
        }
        mail_parser::HeaderValue::Address(mail_parser::Address::Group(groups)) => {
            for g in &groups {
                match &g.name {
                    // A group: its name as a mailbox with host NIL, its members, an end.
                    Some(name) => {
                        items.extend_from_slice(b"(NIL NIL ");
                        reply::string(&mut items, name.as_bytes());
                        items.extend_from_slice(b" NIL)");
                        for a in &g.addresses {
                            one(&mut items, a.name.as_deref(), a.address.as_deref());
                        }
                        items.extend_from_slice(b"(NIL NIL NIL NIL)");
                    }
                    None => {
                        for a in &g.addresses {
                            one(&mut items, a.name.as_deref(), a.address.as_deref());
                        }
                    }
                }
            }
        }
        _ => {}
    }
    if items.is_empty() {
        out.extend_from_slice(b"NIL");
    } else {
        out.push(b'(');
        out.extend_from_slice(&items);
        out.push(b')');
    }
}

/// BODY (`extended`: false) or BODYSTRUCTURE of part `index`.
pub fn body_structure(out: &mut Vec<u8>, msg: Option<&Message<'_>>, whole: &[u8], extended: bool) {
    match msg {
        Some(m) => part(out, m, 0, extended),
        None => {
            let lines = mime::lines::count(whole);
            let text = format!(
                "(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"US-ASCII\") NIL NIL \"7BIT\" {} {lines})",
                whole.len()
            );
            out.extend_from_slice(text.as_bytes());
        }
    }
}

fn part(out: &mut Vec<u8>, m: &Message<'_>, index: usize, extended: bool) {
    let Some(p) = m.parts.get(index) else {
        out.extend_from_slice(b"NIL");
        return;
    };
    let upper = |b: &[u8]| b.to_ascii_uppercase();
    out.push(b'(');
    if let PartKind::Multipart { .. } = p.kind {
        for child in p.children.clone() {
            part(out, m, child, extended);
        }
        out.push(b' ');
        reply::string(out, &upper(p.content_type.sub));
        if extended {
            out.push(b' ');
            params(out, p);
            out.push(b' ');
            disposition(out, p);
            out.extend_from_slice(b" NIL NIL");
        }
        out.push(b')');
        return;
    }
    reply::string(out, &upper(p.content_type.top));
    out.push(b' ');
    reply::string(out, &upper(p.content_type.sub));
    out.push(b' ');
    params(out, p);
    out.push(b' ');
    let field = |name: &str| m.header(index, name).map(unfold);
    reply::nstring(out, field("Content-ID").as_deref());
    out.push(b' ');
    reply::nstring(out, field("Content-Description").as_deref());
    out.push(b' ');
    let encoding = field("Content-Transfer-Encoding")
        .map(|e| e.to_ascii_uppercase())
        .unwrap_or_else(|| b"7BIT".to_vec());
    reply::string(out, &encoding);
    let body = m.body(index);
    out.extend_from_slice(format!(" {}", body.len()).as_bytes());
    // Only text and message parts carry a line count: other bodies are not counted.
    let lines = || mime::lines::count(body);
    if p.kind == PartKind::Message {
        let child = p.children.start;
        out.push(b' ');
        envelope(out, Some(m), child);
        out.push(b' ');
        part(out, m, child, extended);
        out.extend_from_slice(format!(" {}", lines()).as_bytes());
    } else if p.content_type.top.eq_ignore_ascii_case(b"text") {
        out.extend_from_slice(format!(" {}", lines()).as_bytes());
    }
    if extended {
        out.extend_from_slice(b" ");
        reply::nstring(out, field("Content-MD5").as_deref());
        out.push(b' ');
        disposition(out, p);
        out.extend_from_slice(b" NIL NIL");
    }
    out.push(b')');
}

fn params(out: &mut Vec<u8>, p: &mime::Part<'_>) {
    let mut list = Vec::new();
    for param in p.content_type.params() {
        list.push((param.name.to_ascii_uppercase(), param.value.into_owned()));
    }
    if list.is_empty() && p.content_type.top.eq_ignore_ascii_case(b"text") {
        list.push((b"CHARSET".to_vec(), b"US-ASCII".to_vec()));
    }
    param_list(out, &list);
}

fn param_list(out: &mut Vec<u8>, list: &[(Vec<u8>, Vec<u8>)]) {
    if list.is_empty() {
        out.extend_from_slice(b"NIL");
        return;
    }
    out.push(b'(');
    for (i, (name, value)) in list.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        reply::string(out, name);
        out.push(b' ');
        reply::string(out, value);
    }
    out.push(b')');
}

fn disposition(out: &mut Vec<u8>, p: &mime::Part<'_>) {
    let Some(d) = &p.disposition else {
        out.extend_from_slice(b"NIL");
        return;
    };
    out.push(b'(');
    let kind = if d.is_attachment() {
        b"attachment".as_slice()
    } else {
        b"inline".as_slice()
    };
    reply::string(out, kind);
    out.push(b' ');
    let filename = d.param("filename").map(|v| v.bytes.into_owned());
    let list: Vec<(Vec<u8>, Vec<u8>)> = filename
        .map(|f| vec![(b"FILENAME".to_vec(), f)])
        .unwrap_or_default();
    param_list(out, &list);
    out.push(b')');
}

/// ENVELOPE, BODYSTRUCTURE and BODY of a whole message, rendered as FETCH sends them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub envelope: Vec<u8>,
    /// Extended (BODYSTRUCTURE).
    pub body_structure: Vec<u8>,
    /// Non-extended (BODY).
    pub body: Vec<u8>,
}

impl Summary {
    /// The rendering this build produces. Raise it with any change to what [`envelope`] or
    /// [`body_structure`] write (the test `summary_version_pins_the_rendering` fails until
    /// then): a stored summary of another version is not used, the body is parsed instead.
    pub const VERSION: u8 = 1;

    /// Larger summaries are not kept (a message of thousands of parts): such a message is
    /// parsed at each FETCH, as every message was before summaries.
    pub const MAX_ENCODED: usize = 64 * 1024;

    /// The summary of a stored message (`whole`: exactly the bytes FETCH serves).
    pub fn of(whole: &[u8]) -> Summary {
        Summary::of_parsed(parse(whole).as_ref(), whole)
    }

    /// The encoded summary of a message stored as `received ‖ body` (the spool's two parts,
    /// joined for the parse: FETCH parses exactly those bytes), or `None` if too large.
    pub fn encoded(received: &[u8], body: &[u8]) -> Option<Vec<u8>> {
        if received.is_empty() {
            return Summary::of(body).encode();
        }
        let mut whole = Vec::with_capacity(received.len() + body.len());
        whole.extend_from_slice(received);
        whole.extend_from_slice(body);
        Summary::of(&whole).encode()
    }

    /// The summary from a parse of `whole` already made.
    pub fn of_parsed(msg: Option<&Message<'_>>, whole: &[u8]) -> Summary {
        let mut envelope_out = Vec::new();
        envelope(&mut envelope_out, msg, 0);
        let mut extended = Vec::new();
        body_structure(&mut extended, msg, whole, true);
        let mut plain = Vec::new();
        body_structure(&mut plain, msg, whole, false);
        Summary {
            envelope: envelope_out,
            body_structure: extended,
            body: plain,
        }
    }

    /// `version u8 | (len u32 LE | bytes) × 3` (envelope, BODYSTRUCTURE, BODY); `None` when
    /// larger than [`Summary::MAX_ENCODED`].
    pub fn encode(&self) -> Option<Vec<u8>> {
        let parts = [&self.envelope, &self.body_structure, &self.body];
        let len = 1 + parts.iter().map(|p| 4 + p.len()).sum::<usize>();
        if len > Summary::MAX_ENCODED {
            return None;
        }
        let mut out = Vec::with_capacity(len);
        out.push(Summary::VERSION);
        for p in parts {
            out.extend_from_slice(&u32::try_from(p.len()).ok()?.to_le_bytes());
            out.extend_from_slice(p);
        }
        Some(out)
    }

    /// `None` for another version or bytes that are not exactly one encoded summary.
    pub fn decode(bytes: &[u8]) -> Option<Summary> {
        let (&version, mut rest) = bytes.split_first()?;
        if version != Summary::VERSION {
            return None;
        }
        let mut next = || -> Option<Vec<u8>> {
            let (len, tail) = rest.split_at_checked(4)?;
            let len = usize::try_from(u32::from_le_bytes(len.try_into().ok()?)).ok()?;
            let (part, tail) = tail.split_at_checked(len)?;
            rest = tail;
            Some(part.to_vec())
        };
        let summary = Summary {
            envelope: next()?,
            body_structure: next()?,
            body: next()?,
        };
        rest.is_empty().then_some(summary)
    }
}

/// What a part section names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartPiece {
    /// `1.2`: the part's body (for a message/rfc822 part: the whole enclosed message).
    Body,
    /// `1.2.MIME`: the part's own header.
    Mime,
    /// `1.2.HEADER` / `1.2.TEXT` of an enclosed message.
    Header,
    Text,
}

/// The index in `msg.parts` of a numbered part (RFC 9051 §6.4.5).
pub fn part_index(msg: &Message<'_>, path: &[u32]) -> Option<usize> {
    let mut index = 0usize;
    for &n in path {
        let p = msg.parts.get(index)?;
        let p = match p.kind {
            PartKind::Message => {
                index = p.children.start;
                msg.parts.get(index)?
            }
            _ => p,
        };
        index = match p.kind {
            PartKind::Multipart { .. } => {
                let child = p.children.start + usize::try_from(n).ok()?.checked_sub(1)?;
                (child < p.children.end).then_some(child)?
            }
            _ if n == 1 => index,
            _ => return None,
        };
    }
    Some(index)
}

/// The bytes of a numbered part (RFC 9051 §6.4.5), or `None` when there is no such part.
pub fn section<'a>(msg: &Message<'a>, path: &[u32], piece: PartPiece) -> Option<&'a [u8]> {
    let buf = msg.buf();
    let index = part_index(msg, path)?;
    let p = msg.parts.get(index)?;
    match piece {
        PartPiece::Body => buf.get(p.body.clone()),
        PartPiece::Mime => {
            let end = p.body.start;
            buf.get(p.header.start..end)
        }
        PartPiece::Header | PartPiece::Text => {
            let inner = match p.kind {
                PartKind::Message => msg.parts.get(p.children.start)?,
                _ if path.is_empty() => p,
                _ => return None,
            };
            if piece == PartPiece::Header {
                buf.get(inner.header.start..inner.body.start)
            } else {
                buf.get(inner.body.clone())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIXED: &[u8] = b"From: \"Ann Smith\" <ann@example.org>\r\nTo: bob@example.net, Carl <c@x.org>\r\nSubject: parts\r\nMessage-ID: <1@x>\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\npre\r\n--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nhello\r\n--b\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=a.pdf\r\n\r\nAAAA\r\n--b--\r\n";

    #[test]
    fn envelope_of_a_message() {
        let m = parse(MIXED);
        let mut out = Vec::new();
        envelope(&mut out, m.as_ref(), 0);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "(NIL \"parts\" ((\"Ann Smith\" NIL \"ann\" \"example.org\")) ((\"Ann Smith\" NIL \"ann\" \"example.org\")) ((\"Ann Smith\" NIL \"ann\" \"example.org\")) ((NIL NIL \"bob\" \"example.net\")(\"Carl\" NIL \"c\" \"x.org\")) NIL NIL NIL \"<1@x>\")"
        );
    }

    #[test]
    fn bodystructure_of_a_multipart() {
        let m = parse(MIXED);
        let mut out = Vec::new();
        body_structure(&mut out, m.as_ref(), MIXED, true);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "((\"TEXT\" \"PLAIN\" (\"CHARSET\" \"utf-8\") NIL NIL \"7BIT\" 5 0 NIL NIL NIL NIL)(\"APPLICATION\" \"PDF\" NIL NIL NIL \"BASE64\" 4 NIL (\"attachment\" (\"FILENAME\" \"a.pdf\")) NIL NIL) \"MIXED\" (\"BOUNDARY\" \"b\") NIL NIL NIL)"
        );
    }

    #[test]
    fn summary_encodes_and_decodes_exactly() {
        let s = Summary::of(MIXED);
        let mut envelope_out = Vec::new();
        envelope(&mut envelope_out, parse(MIXED).as_ref(), 0);
        assert_eq!(s.envelope, envelope_out);
        assert!(s.body_structure.starts_with(b"((\"TEXT\" \"PLAIN\""));
        assert!(s.body.len() < s.body_structure.len());
        let bytes = s.encode().unwrap();
        assert_eq!(bytes[0], Summary::VERSION);
        assert_eq!(
            bytes.len(),
            1 + 12 + s.envelope.len() + s.body_structure.len() + s.body.len()
        );
        assert_eq!(Summary::decode(&bytes), Some(s.clone()));
        // Anything but exactly one summary of this version is refused.
        for bad in [
            &bytes[..bytes.len() - 1],
            &bytes[..1],
            &[][..],
            &[bytes.as_slice(), b"x"].concat()[..],
        ] {
            assert_eq!(Summary::decode(bad), None, "{bad:?}");
        }
        let mut other = bytes.clone();
        other[0] = Summary::VERSION.wrapping_add(1);
        assert_eq!(Summary::decode(&other), None);
        let mut long = bytes.clone();
        long[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Summary::decode(&long), None);
        // The stored body is Received ‖ message: joined, it renders as the whole.
        let (received, message) = MIXED.split_at(30);
        assert_eq!(Summary::encoded(received, message), Some(bytes));
        // Too large to keep: none.
        let huge = Summary {
            envelope: vec![b'x'; Summary::MAX_ENCODED],
            body_structure: Vec::new(),
            body: Vec::new(),
        };
        assert_eq!(huge.encode(), None);
    }

    #[test]
    fn numbered_sections() {
        let m = parse(MIXED).unwrap();
        assert_eq!(section(&m, &[1], PartPiece::Body), Some(&b"hello"[..]));
        assert_eq!(section(&m, &[2], PartPiece::Body), Some(&b"AAAA"[..]));
        assert_eq!(section(&m, &[3], PartPiece::Body), None);
        assert_eq!(
            section(&m, &[1], PartPiece::Mime),
            Some(&b"Content-Type: text/plain; charset=utf-8\r\n\r\n"[..])
        );
        let plain = parse(b"Subject: x\r\n\r\nbody\r\n").unwrap();
        assert_eq!(
            section(&plain, &[1], PartPiece::Body),
            Some(&b"body\r\n"[..])
        );
        assert_eq!(section(&plain, &[2], PartPiece::Body), None);
    }
}
