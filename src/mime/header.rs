//! Header blocks and the MIME header fields.
//!
//! Role: split a header block into fields (RFC 5322 §2.2: `name ":" value`, continued on
//! lines that start with whitespace, §2.2.3), and read the structured MIME fields the parser
//! needs: Content-Type (RFC 2045 §5.1) with its parameters (quoted strings, comments, RFC 2231
//! continuations, charset and language), Content-Transfer-Encoding (RFC 2045 §6.1) and
//! Content-Disposition (RFC 2183). Everything is a slice of the message; only a parameter
//! that is quoted with backslashes, split into RFC 2231 sections or percent-encoded is
//! assembled into a new buffer.
//!
//! Exposure: peer bytes. A header block stops at `max_header_bytes` and `max_header_fields`;
//! parameter assembly is bounded by [`SECTIONS_MAX`] sections and sorts rather than searching
//! (no quadratic work on a header full of `name*N` parameters). Comments nest at most
//! [`COMMENT_DEPTH_MAX`] deep.
//!
//! Tolerance: a line that is neither a field nor a continuation ends the header block and
//! starts the body (what Python's `email` and most readers do with a missing blank line);
//! names may have whitespace before the colon (RFC 822 allowed it); line ends may be LF.

use std::borrow::Cow;
use std::ops::Range;

use super::encoded_word;
use super::LimitExceeded;

/// Octets of a boundary we accept: RFC 2046 §5.1.1 allows 70; senders exceed it, but a
/// boundary longer than a header line is not one.
pub const BOUNDARY_MAX: usize = 998;
/// RFC 2231 sections of one parameter assembled at most.
pub const SECTIONS_MAX: usize = 256;
/// Nesting of RFC 5322 comments followed before the rest of the field is skipped.
pub const COMMENT_DEPTH_MAX: usize = 16;

/// One header field: ranges into the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    /// The name, without the colon and any whitespace before it.
    pub name: Range<usize>,
    /// The raw value after the colon up to the end of its last line, line end excluded.
    /// Folding line breaks are still in it.
    pub value: Range<usize>,
    /// The whole field, line end of its last line included.
    pub line: Range<usize>,
}

impl Field {
    /// Is this field called `name` (case-insensitive, RFC 5322 §1.2.2)?
    pub fn is(&self, buf: &[u8], name: &str) -> bool {
        buf[self.name.clone()].eq_ignore_ascii_case(name.as_bytes())
    }
}

/// The shape of a header block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderBlock {
    /// The fields' octets, from the start to the last field line's end.
    pub header: Range<usize>,
    /// Where the body starts: after the blank line, or at the first line that is not a field.
    pub body_start: usize,
}

fn line_end(buf: &[u8], from: usize, end: usize) -> usize {
    match memchr::memchr(b'\n', &buf[from..end]) {
        Some(off) => from + off + 1,
        None => end,
    }
}

/// A line's content without its line end.
fn content_end(buf: &[u8], start: usize, next: usize) -> usize {
    let mut e = next;
    if e > start && buf[e - 1] == b'\n' {
        e -= 1;
        if e > start && buf[e - 1] == b'\r' {
            e -= 1;
        }
    }
    e
}

/// Splits the header block that starts at `range.start`, appending its fields to `fields`.
pub fn parse_block(
    buf: &[u8],
    range: Range<usize>,
    max_bytes: usize,
    max_fields: usize,
    fields: &mut Vec<Field>,
) -> Result<HeaderBlock, LimitExceeded> {
    let start = range.start;
    let end = range.end;
    let first = fields.len();
    let mut pos = start;
    let mut header_end = start;
    while pos < end {
        if pos - start > max_bytes {
            return Err(LimitExceeded::HeaderBytes { limit: max_bytes });
        }
        let next = line_end(buf, pos, end);
        let content = content_end(buf, pos, next);
        if content == pos {
            // The blank line (or a final line end alone) ends the block.
            return Ok(HeaderBlock {
                header: start..header_end,
                body_start: next,
            });
        }
        let line = &buf[pos..content];
        if matches!(line[0], b' ' | b'\t') {
            // A continuation line (RFC 5322 §2.2.3). Before any field there is nothing to
            // continue: it is a body line.
            match fields[first..].last_mut() {
                Some(field) => {
                    field.value.end = content;
                    field.line.end = next;
                    header_end = next;
                    pos = next;
                    continue;
                }
                None => break,
            }
        }
        let Some(colon) = memchr::memchr(b':', line) else {
            break;
        };
        let mut name_end = colon;
        while name_end > 0 && matches!(line[name_end - 1], b' ' | b'\t') {
            name_end -= 1;
        }
        // RFC 5322 §2.2: printable US-ASCII except colon.
        if name_end == 0 || !line[..name_end].iter().all(|&b| (33..=126).contains(&b)) {
            break;
        }
        if fields.len() - first >= max_fields {
            return Err(LimitExceeded::HeaderFields { limit: max_fields });
        }
        fields.push(Field {
            name: pos..pos + name_end,
            value: pos + colon + 1..content,
            line: pos..next,
        });
        header_end = next;
        pos = next;
    }
    if pos - start > max_bytes {
        return Err(LimitExceeded::HeaderBytes { limit: max_bytes });
    }
    Ok(HeaderBlock {
        header: start..header_end,
        body_start: pos,
    })
}

/// A field value with folding undone (RFC 5322 §2.2.3: CRLF followed by WSP is removed,
/// the WSP stays) and outer whitespace trimmed, as text for display. RFC 2047 encoded words
/// are decoded.
pub fn display_value(raw: &[u8]) -> String {
    let mut unfolded = Vec::with_capacity(raw.len());
    for &b in raw {
        if b != b'\r' && b != b'\n' {
            unfolded.push(b);
        }
    }
    encoded_word::decode(unfolded.trim_ascii())
}

/// The RFC 2045 §5.1 `tspecials` plus space and controls: what ends a token.
fn is_token_byte(b: u8) -> bool {
    b > 32
        && b != 127
        && !matches!(
            b,
            b'(' | b')'
                | b'<'
                | b'>'
                | b'@'
                | b','
                | b';'
                | b':'
                | b'\\'
                | b'"'
                | b'/'
                | b'['
                | b']'
                | b'?'
                | b'='
        )
}

/// A cursor over a structured field value that skips CFWS (RFC 5322 §3.2.2).
#[derive(Clone, Debug)]
struct Lexer<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Lexer<'a> {
    fn new(s: &'a [u8]) -> Self {
        Lexer { s, i: 0 }
    }

    /// Skips whitespace (folding included) and comments.
    fn skip_cfws(&mut self) {
        loop {
            while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | b'\r' | b'\n') {
                self.i += 1;
            }
            if self.peek() != Some(b'(') {
                return;
            }
            let mut depth = 0usize;
            while self.i < self.s.len() {
                match self.s[self.i] {
                    b'\\' => self.i += 1,
                    b'(' => depth += 1,
                    b')' => {
                        depth = depth.saturating_sub(1);
                        if depth == 0 {
                            self.i += 1;
                            break;
                        }
                    }
                    _ => {}
                }
                if depth > COMMENT_DEPTH_MAX {
                    // Too deep to be a real comment: give up on the rest of the field.
                    self.i = self.s.len();
                    return;
                }
                self.i += 1;
            }
            self.i = self.i.min(self.s.len());
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        self.skip_cfws();
        if self.peek() == Some(b) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn token(&mut self) -> Option<&'a [u8]> {
        self.skip_cfws();
        let start = self.i;
        while self.i < self.s.len() && is_token_byte(self.s[self.i]) {
            self.i += 1;
        }
        (self.i > start).then(|| &self.s[start..self.i])
    }

    /// A quoted string's content (RFC 5322 §3.2.4), borrowed unless it had quoted pairs or
    /// folding in it. An unterminated string runs to the end of the value.
    fn quoted(&mut self) -> Cow<'a, [u8]> {
        let start = self.i;
        let mut plain = true;
        while self.i < self.s.len() {
            match self.s[self.i] {
                b'"' => break,
                b'\\' | b'\r' | b'\n' => {
                    plain = false;
                    self.i += 1;
                }
                _ => {}
            }
            self.i += 1;
        }
        let end = self.i.min(self.s.len());
        self.i = (self.i + 1).min(self.s.len());
        let raw = &self.s[start..end];
        if plain {
            return Cow::Borrowed(raw);
        }
        let mut out = Vec::with_capacity(raw.len());
        let mut k = 0;
        while k < raw.len() {
            match raw[k] {
                b'\\' if k + 1 < raw.len() => {
                    out.push(raw[k + 1]);
                    k += 2;
                }
                b'\r' | b'\n' => k += 1,
                b => {
                    out.push(b);
                    k += 1;
                }
            }
        }
        Cow::Owned(out)
    }

    /// A parameter value: a quoted string or a token. Lenient: an unquoted value may hold
    /// what a token may not (spaces and `/` in file names are common); it ends at `;`, a
    /// quote, a comment or a line end, and loses trailing whitespace.
    fn value(&mut self) -> Cow<'a, [u8]> {
        self.skip_cfws();
        if self.peek() == Some(b'"') {
            self.i += 1;
            return self.quoted();
        }
        let start = self.i;
        while self.i < self.s.len() && !matches!(self.s[self.i], b';' | b'"' | b'(' | b'\r' | b'\n')
        {
            self.i += 1;
        }
        Cow::Borrowed(self.s[start..self.i].trim_ascii())
    }
}

/// One `attribute=value` pair as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawParam<'a> {
    pub name: &'a [u8],
    pub value: Cow<'a, [u8]>,
}

/// The parameters after the leading token(s) of a structured field.
#[derive(Clone, Debug)]
pub struct Params<'a> {
    lex: Lexer<'a>,
}

impl<'a> Iterator for Params<'a> {
    type Item = RawParam<'a>;

    fn next(&mut self) -> Option<RawParam<'a>> {
        loop {
            // Skip to the next ';' (junk after a value is ignored).
            loop {
                self.lex.skip_cfws();
                match self.lex.peek() {
                    None => return None,
                    Some(b';') => {
                        self.lex.i += 1;
                        break;
                    }
                    Some(b'"') => {
                        self.lex.i += 1;
                        let _ = self.lex.quoted();
                    }
                    Some(_) => self.lex.i += 1,
                }
            }
            let Some(name) = self.lex.token() else {
                continue;
            };
            if !self.lex.eat(b'=') {
                continue;
            }
            let value = self.lex.value();
            return Some(RawParam { name, value });
        }
    }
}

/// A parameter value after RFC 2231 assembly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamValue<'a> {
    /// The octets: the value as written, or the joined and percent-decoded sections, still
    /// in `charset`.
    pub bytes: Cow<'a, [u8]>,
    /// The charset named by an RFC 2231 extended value (`name*=charset'lang'...`).
    pub charset: Option<Cow<'a, [u8]>>,
    /// The language, if any (RFC 2231 §4).
    pub language: Option<Cow<'a, [u8]>>,
}

impl ParamValue<'_> {
    /// The value as text: the RFC 2231 charset applied, or, for a plain value, RFC 2047
    /// encoded words decoded (a common violation in `filename="=?UTF-8?B?...?="`).
    pub fn text(&self) -> String {
        match &self.charset {
            Some(cs) => encoded_word::charset_to_string(cs, &self.bytes),
            None => encoded_word::decode(&self.bytes),
        }
    }
}

/// How a parameter name relates to the one looked up: `name`, `name*`, `name*N`, `name*N*`.
fn section_of(param: &[u8], name: &[u8]) -> Option<(Option<usize>, bool)> {
    if param.len() < name.len() || !param[..name.len()].eq_ignore_ascii_case(name) {
        return None;
    }
    let rest = &param[name.len()..];
    if rest.is_empty() {
        return Some((None, false));
    }
    let rest = rest.strip_prefix(b"*")?;
    if rest.is_empty() {
        return Some((None, true));
    }
    let (digits, extended) = match rest.strip_suffix(b"*") {
        Some(d) => (d, true),
        None => (rest, false),
    };
    if digits.is_empty() || digits.len() > 3 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // RFC 2231 §3: no leading zeros (except "0" itself).
    if digits.len() > 1 && digits[0] == b'0' {
        return None;
    }
    let n = digits
        .iter()
        .fold(0usize, |n, d| n * 10 + usize::from(d - b'0'));
    Some((Some(n), extended))
}

fn percent_decode(s: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' && i + 2 < s.len() {
            let h = (s[i + 1] as char).to_digit(16);
            let l = (s[i + 2] as char).to_digit(16);
            if let (Some(h), Some(l)) = (h, l) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
}

/// Splits `charset'language'rest` (RFC 2231 §4); a value without two quotes is all data.
fn split_extended(v: &[u8]) -> (Option<&[u8]>, Option<&[u8]>, &[u8]) {
    let Some(q1) = memchr::memchr(b'\'', v) else {
        return (None, None, v);
    };
    let Some(q2) = memchr::memchr(b'\'', &v[q1 + 1..]) else {
        return (None, None, v);
    };
    let cs = &v[..q1];
    let lang = &v[q1 + 1..q1 + 1 + q2];
    (
        (!cs.is_empty()).then_some(cs),
        (!lang.is_empty()).then_some(lang),
        &v[q1 + 2 + q2..],
    )
}

/// Looks up parameter `name` in `params` (RFC 2045 §5.1 names are case-insensitive). RFC
/// 2231 forms win over a plain value of the same name, as RFC 2231 §4 intends them for the
/// readers that understand them.
pub fn find_param<'a>(params: Params<'a>, name: &str) -> Option<ParamValue<'a>> {
    let name = name.as_bytes();
    let mut plain: Option<Cow<'a, [u8]>> = None;
    let mut extended_single: Option<Cow<'a, [u8]>> = None;
    let mut sections: Vec<(usize, bool, Cow<'a, [u8]>)> = Vec::new();
    for p in params {
        match section_of(p.name, name) {
            None => {}
            Some((None, false)) if plain.is_none() => plain = Some(p.value),
            Some((None, true)) if extended_single.is_none() => extended_single = Some(p.value),
            Some((Some(n), ext)) if sections.len() < SECTIONS_MAX => {
                sections.push((n, ext, p.value));
            }
            Some(_) => {}
        }
    }
    if !sections.is_empty() {
        sections.sort_by_key(|s| s.0);
        sections.dedup_by_key(|s| s.0);
        let mut bytes = Vec::new();
        let mut charset = None;
        let mut language = None;
        for (i, (n, ext, value)) in sections.into_iter().enumerate() {
            if n != i {
                break; // RFC 2231 §3: sections are numbered from 0 without gaps.
            }
            if !ext {
                bytes.extend_from_slice(&value);
                continue;
            }
            if i == 0 {
                let (cs, lang, data) = split_extended(&value);
                charset = cs.map(|c| Cow::Owned(c.to_vec()));
                language = lang.map(|l| Cow::Owned(l.to_vec()));
                percent_decode(data, &mut bytes);
            } else {
                percent_decode(&value, &mut bytes);
            }
        }
        return Some(ParamValue {
            bytes: Cow::Owned(bytes),
            charset,
            language,
        });
    }
    if let Some(v) = extended_single {
        let mut bytes = Vec::new();
        let (charset, language) = match v {
            Cow::Borrowed(b) => {
                let (cs, lang, data) = split_extended(b);
                percent_decode(data, &mut bytes);
                (cs.map(Cow::Borrowed), lang.map(Cow::Borrowed))
            }
            // A quoted extended value is a violation (RFC 2231 §4 makes it a token); read it
            // the same way.
            Cow::Owned(o) => {
                let (cs, lang, data) = split_extended(&o);
                percent_decode(data, &mut bytes);
                (
                    cs.map(|c| Cow::Owned(c.to_vec())),
                    lang.map(|l| Cow::Owned(l.to_vec())),
                )
            }
        };
        return Some(ParamValue {
            bytes: Cow::Owned(bytes),
            charset,
            language,
        });
    }
    plain.map(|bytes| ParamValue {
        bytes,
        charset: None,
        language: None,
    })
}

/// A parsed Content-Type (RFC 2045 §5.1): the media type and its parameters.
#[derive(Clone, Debug)]
pub struct ContentType<'a> {
    /// The top-level type as written (compare case-insensitively).
    pub top: &'a [u8],
    pub sub: &'a [u8],
    /// True when it came from a header field, false for a default (RFC 2045 §5.2, RFC 2046
    /// §5.1.5) or a field that did not parse.
    pub explicit: bool,
    params: &'a [u8],
}

impl<'a> ContentType<'a> {
    /// The default for a part without (or with an unreadable) Content-Type.
    pub const TEXT_PLAIN: ContentType<'static> = ContentType {
        top: b"text",
        sub: b"plain",
        explicit: false,
        params: b"",
    };
    /// The default inside multipart/digest (RFC 2046 §5.1.5).
    pub const MESSAGE_RFC822: ContentType<'static> = ContentType {
        top: b"message",
        sub: b"rfc822",
        explicit: false,
        params: b"",
    };

    /// Parses a Content-Type value; `None` when it has no `type/subtype`.
    pub fn parse(value: &'a [u8]) -> Option<ContentType<'a>> {
        let mut lex = Lexer::new(value);
        let top = lex.token()?;
        if !lex.eat(b'/') {
            return None;
        }
        let sub = lex.token()?;
        Some(ContentType {
            top,
            sub,
            explicit: true,
            params: &value[lex.i..],
        })
    }

    /// Is the media type `top/sub` (case-insensitive)?
    pub fn is(&self, top: &str, sub: &str) -> bool {
        self.top.eq_ignore_ascii_case(top.as_bytes())
            && self.sub.eq_ignore_ascii_case(sub.as_bytes())
    }

    pub fn is_top(&self, top: &str) -> bool {
        self.top.eq_ignore_ascii_case(top.as_bytes())
    }

    /// `top/sub` in lower case.
    pub fn essence(&self) -> String {
        let mut s = String::with_capacity(self.top.len() + self.sub.len() + 1);
        s.push_str(&String::from_utf8_lossy(self.top).to_ascii_lowercase());
        s.push('/');
        s.push_str(&String::from_utf8_lossy(self.sub).to_ascii_lowercase());
        s
    }

    /// The parameters as written.
    pub fn params(&self) -> Params<'a> {
        Params {
            lex: Lexer::new(self.params),
        }
    }

    /// One parameter, RFC 2231 aware.
    pub fn param(&self, name: &str) -> Option<ParamValue<'a>> {
        find_param(self.params(), name)
    }

    /// The multipart boundary (RFC 2046 §5.1.1), if it is usable: 1 to [`BOUNDARY_MAX`]
    /// octets.
    pub fn boundary(&self) -> Option<Cow<'a, [u8]>> {
        let b = self.param("boundary")?.bytes;
        (!b.is_empty() && b.len() <= BOUNDARY_MAX).then_some(b)
    }
}

/// Content-Transfer-Encoding (RFC 2045 §6.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransferEncoding {
    SevenBit,
    EightBit,
    Binary,
    QuotedPrintable,
    Base64,
    /// An unknown token (x-uuencode...): RFC 2045 §6.4 says to treat the body as
    /// application/octet-stream; it is passed through undecoded.
    Other,
}

impl TransferEncoding {
    /// The encoding a field value names; RFC 2045 §6.1 default (no field) is 7bit.
    pub fn parse(value: &[u8]) -> TransferEncoding {
        let mut lex = Lexer::new(value);
        let Some(tok) = lex.token() else {
            return TransferEncoding::SevenBit;
        };
        let table: [(&[u8], TransferEncoding); 5] = [
            (b"7bit", TransferEncoding::SevenBit),
            (b"8bit", TransferEncoding::EightBit),
            (b"binary", TransferEncoding::Binary),
            (b"quoted-printable", TransferEncoding::QuotedPrintable),
            (b"base64", TransferEncoding::Base64),
        ];
        table
            .iter()
            .find(|(name, _)| tok.eq_ignore_ascii_case(name))
            .map_or(TransferEncoding::Other, |(_, e)| *e)
    }

    /// Is the body stored as is (RFC 2045 §6.2: 7bit, 8bit and binary are identities)?
    pub fn is_identity(self) -> bool {
        matches!(
            self,
            TransferEncoding::SevenBit | TransferEncoding::EightBit | TransferEncoding::Binary
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TransferEncoding::SevenBit => "7bit",
            TransferEncoding::EightBit => "8bit",
            TransferEncoding::Binary => "binary",
            TransferEncoding::QuotedPrintable => "quoted-printable",
            TransferEncoding::Base64 => "base64",
            TransferEncoding::Other => "x-unknown",
        }
    }
}

/// Content-Disposition (RFC 2183).
#[derive(Clone, Debug)]
pub struct Disposition<'a> {
    /// `inline`, `attachment` or an extension token, as written.
    pub kind: &'a [u8],
    params: &'a [u8],
}

impl<'a> Disposition<'a> {
    pub fn parse(value: &'a [u8]) -> Option<Disposition<'a>> {
        let mut lex = Lexer::new(value);
        let kind = lex.token()?;
        Some(Disposition {
            kind,
            params: &value[lex.i..],
        })
    }

    pub fn is_attachment(&self) -> bool {
        self.kind.eq_ignore_ascii_case(b"attachment")
    }

    pub fn params(&self) -> Params<'a> {
        Params {
            lex: Lexer::new(self.params),
        }
    }

    pub fn param(&self, name: &str) -> Option<ParamValue<'a>> {
        find_param(self.params(), name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields_of(text: &[u8]) -> (HeaderBlock, Vec<(String, String)>) {
        let mut fields = Vec::new();
        let block = parse_block(text, 0..text.len(), 10_000, 100, &mut fields).unwrap();
        let named = fields
            .iter()
            .map(|f| {
                (
                    String::from_utf8_lossy(&text[f.name.clone()]).into_owned(),
                    String::from_utf8_lossy(&text[f.value.clone()]).into_owned(),
                )
            })
            .collect();
        (block, named)
    }

    #[test]
    fn header_blocks() {
        let text = b"Subject: hi\r\n there\r\nFrom : a@b\r\n\r\nbody";
        let (block, fields) = fields_of(text);
        assert_eq!(block.body_start, text.len() - 4);
        assert_eq!(block.header, 0..text.len() - 6);
        assert_eq!(
            fields,
            vec![
                ("Subject".into(), " hi\r\n there".into()),
                ("From".into(), " a@b".into())
            ]
        );
        // LF only.
        let (block, fields) = fields_of(b"A: 1\nB: 2\n\nx");
        assert_eq!(block.body_start, 11);
        assert_eq!(fields.len(), 2);
        // No blank line: the first non-field line starts the body.
        let (block, fields) = fields_of(b"A: 1\r\nnot a field\r\n");
        assert_eq!(block.body_start, 6);
        assert_eq!(fields.len(), 1);
        // Empty header.
        let (block, fields) = fields_of(b"\r\nbody");
        assert_eq!((block.body_start, fields.len()), (2, 0));
        // No body at all.
        let (block, _) = fields_of(b"A: 1\r\n");
        assert_eq!(block.body_start, 6);
        // A leading continuation line is body.
        let (block, fields) = fields_of(b" x: 1\r\n");
        assert_eq!((block.body_start, fields.len()), (0, 0));
    }

    #[test]
    fn header_limits() {
        let mut fields = Vec::new();
        let text = b"A: 1\r\nB: 2\r\nC: 3\r\n\r\n";
        assert_eq!(
            parse_block(text, 0..text.len(), 1000, 2, &mut fields),
            Err(LimitExceeded::HeaderFields { limit: 2 })
        );
        let big = [b"X: ".as_slice(), &[b'a'; 5000], b"\r\n\r\n"].concat();
        assert_eq!(
            parse_block(&big, 0..big.len(), 1000, 100, &mut fields),
            Err(LimitExceeded::HeaderBytes { limit: 1000 })
        );
        // A bomb of continuation lines is bounded by bytes too.
        let mut bomb = b"X: a\r\n".to_vec();
        for _ in 0..1000 {
            bomb.extend_from_slice(b" b\r\n");
        }
        assert!(parse_block(&bomb, 0..bomb.len(), 1000, 100, &mut fields).is_err());
    }

    #[test]
    fn content_types() {
        type Case<'a> = (&'a [u8], Option<(&'a str, &'a [(&'a str, &'a [u8])])>);
        let table: &[Case<'_>] = &[
            (b"text/plain", Some(("text/plain", &[]))),
            (
                b" TEXT/Plain ; charset=\"utf-8\"",
                Some(("text/plain", &[("charset", b"utf-8")])),
            ),
            (
                b"multipart/mixed;\r\n\tboundary=\"--=_a b\\\"c\"",
                Some(("multipart/mixed", &[("boundary", b"--=_a b\"c")])),
            ),
            (
                b"text/plain (a comment) ; (x) CharSet = us-ascii (y)",
                Some(("text/plain", &[("charset", b"us-ascii")])),
            ),
            (
                b"application/octet-stream; name=my file.pdf",
                Some(("application/octet-stream", &[("NAME", b"my file.pdf")])),
            ),
            (b"text", None),
            (b"/plain", None),
            (b"", None),
            (b"text/", None),
        ];
        for (value, want) in table {
            let ct = ContentType::parse(value);
            match (ct, want) {
                (None, None) => {}
                (Some(ct), Some((essence, params))) => {
                    assert_eq!(ct.essence(), *essence);
                    for (name, v) in params.iter() {
                        assert_eq!(&*ct.param(name).unwrap().bytes, *v, "{name}");
                    }
                }
                (got, want) => panic!("{:?}: {got:?} vs {want:?}", String::from_utf8_lossy(value)),
            }
        }
    }

    #[test]
    fn rfc2231_parameters() {
        // RFC 2231 §3 and §4 examples.
        let ct = ContentType::parse(
            b"message/external-body; access-type=URL;\r\n URL*0=\"ftp://\";\r\n URL*1=\"cs.utk.edu/pub/moore/bulk-mailer/bulk-mailer.tar\"",
        )
        .unwrap();
        assert_eq!(
            &*ct.param("url").unwrap().bytes,
            b"ftp://cs.utk.edu/pub/moore/bulk-mailer/bulk-mailer.tar"
        );
        let ct = ContentType::parse(
            b"application/x-stuff; title*=us-ascii'en-us'This%20is%20%2A%2A%2Afun%2A%2A%2A",
        )
        .unwrap();
        let title = ct.param("title").unwrap();
        assert_eq!(title.text(), "This is ***fun***");
        assert_eq!(title.language.as_deref(), Some(&b"en-us"[..]));
        let ct = ContentType::parse(
            b"application/x-stuff;\r\n title*1*=%2A%2A%2Afun%2A%2A%2A%20;\r\n title*2=\"isn't it!\"; title*0*=us-ascii'en'This%20is%20even%20more%20",
        )
        .unwrap();
        assert_eq!(
            ct.param("title").unwrap().text(),
            "This is even more ***fun*** isn't it!"
        );
        // Charset conversion and precedence over the plain form.
        let d = Disposition::parse(
            b"attachment; filename=\"fallback.txt\"; filename*=UTF-8''%E2%82%AC%20rates.pdf",
        )
        .unwrap();
        assert!(d.is_attachment());
        assert_eq!(d.param("filename").unwrap().text(), "€ rates.pdf");
        let d = Disposition::parse(b"attachment; filename*=iso-8859-1''caf%E9.txt").unwrap();
        assert_eq!(d.param("filename").unwrap().text(), "café.txt");
        // RFC 2047 inside a quoted filename (a violation senders commit).
        let d = Disposition::parse(b"inline; filename=\"=?UTF-8?B?w6lsw6h2ZS5leGU=?=\"").unwrap();
        assert_eq!(d.param("filename").unwrap().text(), "élève.exe");
        // Gaps stop assembly; bad section numbers are other names.
        let ct = ContentType::parse(b"a/b; n*0=x; n*2=z; n*01=q").unwrap();
        assert_eq!(&*ct.param("n").unwrap().bytes, b"x");
    }

    #[test]
    fn many_sections_are_bounded() {
        let mut v = b"a/b".to_vec();
        for i in (0..5000).rev() {
            v.extend_from_slice(format!("; p*{i}=x").as_bytes());
        }
        let ct = ContentType::parse(&v).unwrap();
        // Section numbers have at most 3 digits and at most SECTIONS_MAX are kept.
        let p = ct.param("p");
        assert!(p.is_none() || p.unwrap().bytes.len() <= SECTIONS_MAX);
    }

    #[test]
    fn transfer_encodings() {
        assert_eq!(
            TransferEncoding::parse(b" Base64 "),
            TransferEncoding::Base64
        );
        assert_eq!(
            TransferEncoding::parse(b"QUOTED-PRINTABLE (x)"),
            TransferEncoding::QuotedPrintable
        );
        assert_eq!(TransferEncoding::parse(b"8BIT"), TransferEncoding::EightBit);
        assert_eq!(TransferEncoding::parse(b""), TransferEncoding::SevenBit);
        assert_eq!(
            TransferEncoding::parse(b"x-uuencode"),
            TransferEncoding::Other
        );
    }

    #[test]
    fn comments_nest_and_stop() {
        let mut v = b"text/plain; a=1 ".to_vec();
        v.extend(std::iter::repeat_n(b'(', 10_000));
        v.extend_from_slice(b"; b=2");
        let ct = ContentType::parse(&v).unwrap();
        assert_eq!(&*ct.param("a").unwrap().bytes, b"1");
        assert!(ct.param("b").is_none());
        let ct = ContentType::parse(b"text/plain; (a (nested) comment; b=3) c=4").unwrap();
        assert!(ct.param("b").is_none());
    }

    #[test]
    fn display_values() {
        assert_eq!(
            display_value(b" =?utf-8?q?caf=C3=A9?=\r\n and more"),
            "café and more"
        );
    }
}
