//! RFC 5321 paths and mailboxes as they appear in MAIL FROM and RCPT TO.
//!
//! Exposure: every byte here comes from a network peer. The parser accepts only the RFC 5321
//! §4.1.2 grammar (plus RFC 6531 UTF-8), so an accepted address holds no control characters,
//! no unquoted spaces and nothing that could end a header or reply line.
//!
//! Standards: RFC 5321 §4.1.2 (Path, Mailbox, Local-part, Domain, address literals),
//! §4.1.3 (address literals), §4.1.1.3 and Appendix C (source routes: accepted and ignored),
//! §4.5.1 (`<Postmaster>` without a domain), §4.5.3.1 (size limits), RFC 6531 §3.3 (UTF-8 in
//! local parts and domains; whether it is allowed is the session's decision, see
//! [`Mailbox::is_ascii`]).
//!
//! Limits: local part 64 octets, domain 255 octets, path 256 octets including the angle
//! brackets (RFC 5321 §4.5.3.1.1–3), domain labels 63 octets (RFC 1035 §2.3.4).

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// RFC 5321 §4.5.3.1.1.
pub const LOCAL_PART_MAX: usize = 64;
/// RFC 5321 §4.5.3.1.2.
pub const DOMAIN_MAX: usize = 255;
/// RFC 5321 §4.5.3.1.3: "including the punctuation and element separators".
pub const PATH_MAX: usize = 256;
/// RFC 1035 §2.3.4.
const LABEL_MAX: usize = 63;

/// Why an address was refused. The session turns it into 501 5.1.7 or 501 5.1.3.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("the path must be enclosed in angle brackets")]
    Brackets,
    #[error("bad domain")]
    Domain,
    #[error("bad local part")]
    LocalPart,
    #[error("missing @domain")]
    MissingDomain,
    #[error("the null path <> is not a recipient")]
    NullRecipient,
    #[error("bad source route")]
    SourceRoute,
    #[error("address too long")]
    TooLong,
}

/// `local-part@domain`, as written by the client (quotes kept, case kept, no brackets).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Mailbox {
    text: String,
    /// Byte offset of the `@` separating local part and domain.
    at: usize,
}

impl Mailbox {
    /// Parses `local-part@domain` (no brackets) with the full grammar.
    pub fn parse(text: &str) -> Result<Self, AddressError> {
        let (mailbox, rest) = parse_mailbox(text, |b| b == 0)?;
        if rest.is_empty() {
            Ok(mailbox)
        } else {
            Err(AddressError::Domain)
        }
    }

    pub fn local_part(&self) -> &str {
        &self.text[..self.at]
    }

    pub fn domain(&self) -> &str {
        &self.text[self.at + 1..]
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn into_string(self) -> String {
        self.text
    }

    /// False for an RFC 6531 address: the session allows those only with SMTPUTF8.
    pub fn is_ascii(&self) -> bool {
        self.text.is_ascii()
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// MAIL FROM's reverse-path: a mailbox or the null path `<>` (RFC 5321 §4.5.5, bounces).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ReversePath {
    Mailbox(Mailbox),
    Null,
}

impl ReversePath {
    /// Parses `<...>` at the start of `text`; returns the rest (parameters) unparsed.
    pub fn parse_prefix(text: &str) -> Result<(Self, &str), AddressError> {
        let inner = text.strip_prefix('<').ok_or(AddressError::Brackets)?;
        if let Some(rest) = inner.strip_prefix('>') {
            return Ok((ReversePath::Null, rest));
        }
        let (mailbox, rest) = parse_bracketed(text)?;
        Ok((ReversePath::Mailbox(mailbox), rest))
    }

    pub fn is_ascii(&self) -> bool {
        match self {
            ReversePath::Mailbox(mailbox) => mailbox.is_ascii(),
            ReversePath::Null => true,
        }
    }

    /// The envelope form: the mailbox, or the empty string for `<>`.
    pub fn into_string(self) -> String {
        match self {
            ReversePath::Mailbox(mailbox) => mailbox.into_string(),
            ReversePath::Null => String::new(),
        }
    }

    /// Appends `<mailbox>` or `<>`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(b'<');
        if let ReversePath::Mailbox(mailbox) = self {
            out.extend_from_slice(mailbox.as_str().as_bytes());
        }
        out.push(b'>');
    }
}

/// RCPT TO's forward-path: a mailbox, or `<Postmaster>` with no domain, which RFC 5321
/// §4.5.1 requires every server to accept.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ForwardPath {
    Mailbox(Mailbox),
    Postmaster,
}

impl ForwardPath {
    /// Parses `<...>` at the start of `text`; returns the rest (parameters) unparsed.
    pub fn parse_prefix(text: &str) -> Result<(Self, &str), AddressError> {
        let inner = text.strip_prefix('<').ok_or(AddressError::Brackets)?;
        if inner.starts_with('>') {
            return Err(AddressError::NullRecipient);
        }
        // RFC 5321 §4.1.1.3: "<Postmaster>" is matched case-insensitively.
        if inner.len() >= 11 && inner.as_bytes()[10] == b'>' {
            if let Some(word) = inner.get(..10) {
                if word.eq_ignore_ascii_case("postmaster") {
                    return Ok((ForwardPath::Postmaster, &inner[11..]));
                }
            }
        }
        let (mailbox, rest) = parse_bracketed(text)?;
        Ok((ForwardPath::Mailbox(mailbox), rest))
    }

    pub fn is_ascii(&self) -> bool {
        match self {
            ForwardPath::Mailbox(mailbox) => mailbox.is_ascii(),
            ForwardPath::Postmaster => true,
        }
    }

    /// The domain, or `None` for the bare postmaster (which is always local).
    pub fn domain(&self) -> Option<&str> {
        match self {
            ForwardPath::Mailbox(mailbox) => Some(mailbox.domain()),
            ForwardPath::Postmaster => None,
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            ForwardPath::Mailbox(mailbox) => mailbox.as_str(),
            ForwardPath::Postmaster => "postmaster",
        }
    }

    /// The envelope form: `local@domain` or `postmaster`.
    pub fn into_string(self) -> String {
        match self {
            ForwardPath::Mailbox(mailbox) => mailbox.into_string(),
            ForwardPath::Postmaster => String::from("postmaster"),
        }
    }

    /// Appends `<mailbox>` or `<postmaster>`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(b'<');
        out.extend_from_slice(self.as_str().as_bytes());
        out.push(b'>');
    }
}

/// Parses `<[source-route:]mailbox>` at the start of `text`.
fn parse_bracketed(text: &str) -> Result<(Mailbox, &str), AddressError> {
    let inner = text.strip_prefix('<').ok_or(AddressError::Brackets)?;
    let inner = skip_source_route(inner)?;
    let (mailbox, rest) = parse_mailbox(inner, |b| b == b'>')?;
    let rest = rest.strip_prefix('>').ok_or(AddressError::Brackets)?;
    // The whole path, brackets included, counts towards the limit.
    let path_len = text.len() - rest.len();
    if path_len > PATH_MAX {
        return Err(AddressError::TooLong);
    }
    Ok((mailbox, rest))
}

/// RFC 5321 §4.1.2 `A-d-l ":"`: a source route is parsed and ignored (Appendix C: servers
/// "SHOULD" ignore it and deliver to the mailbox).
fn skip_source_route(text: &str) -> Result<&str, AddressError> {
    if !text.starts_with('@') {
        return Ok(text);
    }
    let mut rest = text;
    loop {
        rest = rest.strip_prefix('@').ok_or(AddressError::SourceRoute)?;
        let end = rest.find([',', ':']).ok_or(AddressError::SourceRoute)?;
        if !is_domain(&rest[..end]) {
            return Err(AddressError::SourceRoute);
        }
        let separator = rest.as_bytes()[end];
        rest = &rest[end + 1..];
        if separator == b':' {
            return Ok(rest);
        }
    }
}

/// Parses `Local-part "@" ( Domain / address-literal )` up to a byte for which `is_end` holds
/// (or the end of the text); returns the rest, starting at that byte.
fn parse_mailbox(text: &str, is_end: impl Fn(u8) -> bool) -> Result<(Mailbox, &str), AddressError> {
    let local_len = local_part_len(text)?;
    if local_len > LOCAL_PART_MAX {
        return Err(AddressError::TooLong);
    }
    let after_local = &text[local_len..];
    let domain_text = after_local
        .strip_prefix('@')
        .ok_or(AddressError::MissingDomain)?;
    let domain_len = domain_len(domain_text, &is_end)?;
    if domain_len > DOMAIN_MAX {
        return Err(AddressError::TooLong);
    }
    let end = local_len + 1 + domain_len;
    let mailbox = Mailbox {
        text: text[..end].to_owned(),
        at: local_len,
    };
    Ok((mailbox, &text[end..]))
}

/// Length of the `Dot-string` or `Quoted-string` local part at the start of `text`.
fn local_part_len(text: &str) -> Result<usize, AddressError> {
    let bytes = text.as_bytes();
    if bytes.first() == Some(&b'"') {
        return quoted_string_len(bytes);
    }
    // Dot-string = Atom *("." Atom): no empty atoms, so no leading, trailing or double dots.
    let mut i = 0;
    loop {
        let atom = bytes[i..].iter().take_while(|&&b| is_atext(b)).count();
        if atom == 0 {
            return Err(AddressError::LocalPart);
        }
        i += atom;
        if bytes.get(i) == Some(&b'.') {
            i += 1;
        } else {
            return Ok(i);
        }
    }
}

/// `DQUOTE *QcontentSMTP DQUOTE`, with RFC 6531's UTF-8 in qtext.
fn quoted_string_len(bytes: &[u8]) -> Result<usize, AddressError> {
    let mut i = 1;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'"' => return Ok(i + 1),
            // quoted-pairSMTP = %d92 %d32-126
            b'\\' => match bytes.get(i + 1) {
                Some(32..=126) => i += 2,
                _ => return Err(AddressError::LocalPart),
            },
            // qtextSMTP = %d32-33 / %d35-91 / %d93-126, and UTF8-non-ascii
            32..=126 | 0x80.. => i += 1,
            _ => return Err(AddressError::LocalPart),
        }
    }
    Err(AddressError::LocalPart)
}

/// RFC 5322 atext, plus bytes of RFC 6531 UTF8-non-ascii (the text is valid UTF-8).
fn is_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b) || b >= 0x80
}

/// Length of the domain or address literal at the start of `text`, which must be followed by
/// a byte for which `is_end` holds (or the end of the text).
fn domain_len(text: &str, is_end: &impl Fn(u8) -> bool) -> Result<usize, AddressError> {
    let bytes = text.as_bytes();
    let len = if bytes.first() == Some(&b'[') {
        let close = bytes
            .iter()
            .position(|&b| b == b']')
            .ok_or(AddressError::Domain)?;
        if !is_address_literal(&text[..=close]) {
            return Err(AddressError::Domain);
        }
        close + 1
    } else {
        let len = bytes.iter().position(|&b| is_end(b)).unwrap_or(bytes.len());
        if !is_domain(&text[..len]) {
            return Err(AddressError::Domain);
        }
        len
    };
    match bytes.get(len) {
        None => Ok(len),
        Some(&b) if is_end(b) => Ok(len),
        Some(_) => Err(AddressError::Domain),
    }
}

/// RFC 5321 `Domain = sub-domain *("." sub-domain)`, `sub-domain = Let-dig [Ldh-str]`, plus
/// RFC 6531 U-labels (any non-ASCII label is accepted as such; IDNA validity is the resolver's
/// problem, not a safety one).
pub fn is_domain(text: &str) -> bool {
    if text.is_empty() || text.len() > DOMAIN_MAX {
        return false;
    }
    text.split('.').all(is_label)
}

fn is_label(label: &str) -> bool {
    let bytes = label.as_bytes();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    if bytes.len() > LABEL_MAX {
        return false;
    }
    if !label.is_ascii() {
        // U-label: no ASCII punctuation other than hyphens, no control characters.
        return label
            .chars()
            .all(|c| (!c.is_ascii() && !c.is_control()) || c.is_ascii_alphanumeric() || c == '-');
    }
    first.is_ascii_alphanumeric()
        && last.is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-')
}

/// RFC 5321 §4.1.3 address literal, brackets included: `[IPv4]`, `[IPv6:...]` or a general
/// `[tag:content]` literal.
pub fn is_address_literal(text: &str) -> bool {
    let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) else {
        return false;
    };
    // Compared as bytes: the literal may hold UTF-8, and a str slice at a fixed offset would
    // cut a character (a panic any client could trigger before logging in).
    if let Some(tag) = inner.as_bytes().get(..5) {
        if tag.eq_ignore_ascii_case(b"IPv6:") {
            // The tag is ASCII, so byte 5 is a character boundary.
            return inner
                .get(5..)
                .is_some_and(|v6| v6.parse::<Ipv6Addr>().is_ok());
        }
    }
    if inner.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return inner.parse::<Ipv4Addr>().is_ok();
    }
    // General-address-literal = Standardized-tag ":" 1*dcontent
    let Some((tag, content)) = inner.split_once(':') else {
        return false;
    };
    is_label(tag)
        && tag.is_ascii()
        && !content.is_empty()
        && content.bytes().all(|b| matches!(b, 33..=90 | 94..=126))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reverse(text: &str) -> Result<(ReversePath, &str), AddressError> {
        ReversePath::parse_prefix(text)
    }

    fn forward(text: &str) -> Result<(ForwardPath, &str), AddressError> {
        ForwardPath::parse_prefix(text)
    }

    #[test]
    fn accepted_paths() {
        let table: &[(&str, &str, &str)] = &[
            // (input, mailbox, rest)
            ("<a@b.example>", "a@b.example", ""),
            (
                "<first.last@sub.example.org> SIZE=1",
                "first.last@sub.example.org",
                " SIZE=1",
            ),
            (
                "<\"quoted user\"@example.com>",
                "\"quoted user\"@example.com",
                "",
            ),
            ("<\"a\\\"b@c\"@example.com>", "\"a\\\"b@c\"@example.com", ""),
            ("<\"a>b\"@example.com>", "\"a>b\"@example.com", ""),
            ("<!#$%&'*+-/=?^_`{|}~@x.y>", "!#$%&'*+-/=?^_`{|}~@x.y", ""),
            ("<user@[192.0.2.1]>", "user@[192.0.2.1]", ""),
            ("<user@[IPv6:2001:db8::1]>", "user@[IPv6:2001:db8::1]", ""),
            ("<user@[ipv6:::1]>", "user@[ipv6:::1]", ""),
            ("<user@[x-tag:some>thing]>", "user@[x-tag:some>thing]", ""),
            (
                "<@relay.example,@b.example:user@c.example>",
                "user@c.example",
                "",
            ),
            ("<@relay.example:user@c.example>", "user@c.example", ""),
            (
                "<user@xn--bcher-kva.example>",
                "user@xn--bcher-kva.example",
                "",
            ),
            ("<1@2>", "1@2", ""),
            ("<a-b@c-d.e-f>", "a-b@c-d.e-f", ""),
            ("<jörg@bücher.example>", "jörg@bücher.example", ""),
        ];
        for &(input, mailbox, rest) in table {
            let (path, r) = reverse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(
                path,
                ReversePath::Mailbox(Mailbox::parse(mailbox).unwrap()),
                "{input}"
            );
            assert_eq!(r, rest, "{input}");
            let (path, r) = forward(input).unwrap();
            assert_eq!(path.as_str(), mailbox, "{input}");
            assert_eq!(r, rest, "{input}");
        }
    }

    #[test]
    fn rejected_paths() {
        let table: &[(&str, AddressError)] = &[
            ("a@b.example", AddressError::Brackets),
            ("<a@b.example", AddressError::Brackets),
            ("<a@b.example x>", AddressError::Domain),
            ("<a>", AddressError::MissingDomain),
            ("<@b.example>", AddressError::SourceRoute),
            ("<a@>", AddressError::Domain),
            ("<a@b..c>", AddressError::Domain),
            ("<a@-b.c>", AddressError::Domain),
            ("<a@b-.c>", AddressError::Domain),
            ("<a@b.c.>", AddressError::Domain),
            ("<a@b_c.d>", AddressError::Domain),
            ("<a@b c>", AddressError::Domain),
            ("<.a@b>", AddressError::LocalPart),
            ("<a.@b>", AddressError::LocalPart),
            ("<a..b@c>", AddressError::LocalPart),
            ("<a b@c>", AddressError::MissingDomain),
            ("<\"unterminated@c>", AddressError::LocalPart),
            ("<\"a\tb\"@c>", AddressError::LocalPart),
            ("<\"a\\\x01\"@c>", AddressError::LocalPart),
            ("<a@[300.1.1.1]>", AddressError::Domain),
            ("<a@[IPv6:zz::1]>", AddressError::Domain),
            ("<a@[1.2.3.4>", AddressError::Domain),
            ("<a@[]>", AddressError::Domain),
            ("<a@[tag:]>", AddressError::Domain),
            ("<a@[1.2.3.4]x>", AddressError::Domain),
            ("<@b,a@c>", AddressError::SourceRoute),
            ("<@b:>", AddressError::LocalPart),
            ("", AddressError::Brackets),
            ("<", AddressError::LocalPart),
            // Multi-byte characters where the `IPv6:` tag would end (these once panicked by
            // slicing inside a character).
            ("<a@[abcd\u{20ac}]>", AddressError::Domain),
            ("<x@[IPv6\u{20ac}:1]>", AddressError::Domain),
            ("<x@[IPv\u{e9}:1]>", AddressError::Domain),
            ("<x@[\u{20ac}\u{20ac}]>", AddressError::Domain),
            ("<x@[IPv6:\u{20ac}]>", AddressError::Domain),
            ("<x@[t\u{e9}g:1]>", AddressError::Domain),
        ];
        for (input, error) in table {
            assert_eq!(forward(input).map(|_| ()), Err(*error), "{input:?}");
            if *error != AddressError::NullRecipient {
                assert!(reverse(input).is_err(), "{input:?}");
            }
        }
    }

    #[test]
    fn address_literals_with_multibyte_characters_are_refused() {
        for literal in [
            "[abcd\u{20ac}]",
            "[IPv6\u{20ac}:1]",
            "[IPv\u{e9}:1]",
            "[\u{20ac}]",
            "[\u{20ac}\u{20ac}\u{20ac}]",
            "[1234\u{e9}]",
            "[IPv6:\u{20ac}]",
        ] {
            assert!(!is_address_literal(literal), "{literal:?}");
        }
    }

    #[test]
    fn null_path_is_a_sender_only() {
        assert_eq!(reverse("<>").unwrap(), (ReversePath::Null, ""));
        assert_eq!(reverse("<> BODY=8BITMIME").unwrap().1, " BODY=8BITMIME");
        assert_eq!(forward("<>").map(|_| ()), Err(AddressError::NullRecipient));
    }

    #[test]
    fn postmaster_without_domain_is_a_recipient_only() {
        for input in ["<postmaster>", "<Postmaster>", "<POSTMASTER>"] {
            assert_eq!(forward(input).unwrap(), (ForwardPath::Postmaster, ""));
        }
        assert_eq!(
            forward("<postmaster> NOTIFY=NEVER").unwrap().1,
            " NOTIFY=NEVER"
        );
        assert_eq!(
            reverse("<postmaster>").map(|_| ()),
            Err(AddressError::MissingDomain)
        );
        let (path, _) = forward("<postmaster@example.com>").unwrap();
        assert_eq!(path.domain(), Some("example.com"));
    }

    #[test]
    fn length_limits() {
        let local = "l".repeat(LOCAL_PART_MAX);
        assert!(forward(&format!("<{local}@x.y>")).is_ok());
        let too_long = "l".repeat(LOCAL_PART_MAX + 1);
        assert_eq!(
            forward(&format!("<{too_long}@x.y>")).map(|_| ()),
            Err(AddressError::TooLong)
        );
        let label = "d".repeat(LABEL_MAX);
        assert!(forward(&format!("<a@{label}>")).is_ok());
        assert_eq!(
            forward(&format!("<a@{label}d>")).map(|_| ()),
            Err(AddressError::Domain)
        );
        // 254 octets between the brackets: the path is 256 and allowed.
        let domain = format!("{label}.{label}.{label}.{}", "d".repeat(251 - 3 * 64));
        let ok = format!("<a@{domain}>");
        assert_eq!(ok.len(), PATH_MAX - 1);
        assert!(forward(&ok).is_ok());
        let at_limit = format!("<ab@{domain}>");
        assert_eq!(at_limit.len(), PATH_MAX);
        assert!(forward(&at_limit).is_ok());
        let over = format!("<abc@{domain}>");
        assert_eq!(forward(&over).map(|_| ()), Err(AddressError::TooLong));
    }

    #[test]
    fn utf8_is_flagged_for_the_session() {
        let (path, _) = forward("<jörg@example.com>").unwrap();
        assert!(!path.is_ascii());
        let (path, _) = forward("<j@example.com>").unwrap();
        assert!(path.is_ascii());
    }

    #[test]
    fn parts_are_split_at_the_right_at_sign() {
        let mailbox = Mailbox::parse("\"a@b\"@c.example").unwrap();
        assert_eq!(mailbox.local_part(), "\"a@b\"");
        assert_eq!(mailbox.domain(), "c.example");
        assert_eq!(Mailbox::parse("a@b c"), Err(AddressError::Domain));
    }
}
