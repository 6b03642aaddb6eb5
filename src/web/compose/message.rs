//! The message a compose form makes, sans-IO: recipients parsed from form fields, the
//! RFC 5322 bytes built from a [`Draft`] (MIME by `mail-builder`), and the fields a reply,
//! a reply to all, a forward or a reopened draft start from.

use mail_builder::headers::address::Address as BuiltAddress;
use mail_builder::headers::message_id::MessageId;
use mail_builder::headers::raw::Raw;
use mail_builder::mime::{BodyPart, MimePart};
use mail_builder::MessageBuilder;
use mail_parser::{Address, HeaderValue, MessageParser, MimeHeaders};

/// References kept on a reply: the newest ones (RFC 5322 §3.6.4 lets a client trim the
/// middle of a long thread; the first and the last matter most to threading).
const REFERENCES_MAX: usize = 20;

/// Addresses from a form field: comma- or semicolon-separated `local@domain`, with or
/// without angle brackets. Anything that could break a header line is refused.
pub fn parse_addresses(field: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for item in field.split([',', ';']) {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let addr = match (item.rfind('<'), item.rfind('>')) {
            (Some(open), Some(close)) if open < close => &item[open + 1..close],
            _ => item,
        }
        .trim();
        if !valid_address(addr) {
            return Err(format!("not an address: {item}"));
        }
        out.push(addr.to_string());
    }
    Ok(out)
}

fn valid_address(addr: &str) -> bool {
    let Some((local, domain)) = addr.rsplit_once('@') else {
        return false;
    };
    let plain = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| !c.is_control() && !c.is_whitespace() && !"<>()[]\\,;:\"@".contains(c))
    };
    addr.len() <= 254 && local.len() <= 64 && plain(local) && plain(domain) && domain.contains('.')
        || (plain(local) && domain.eq_ignore_ascii_case("localhost"))
}

/// A message id as a form carries it (no angle brackets): printable ASCII without
/// whitespace or brackets, with an `@`, so that it can never break a header line.
pub fn valid_message_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 250
        && id.contains('@')
        && id
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'<' && b != b'>')
}

/// Message ids from a form field (space-separated, brackets optional); the invalid ones are
/// dropped, the newest [`REFERENCES_MAX`] kept.
pub fn parse_message_ids(field: &str) -> Vec<String> {
    let ids: Vec<String> = field
        .split(|c: char| c.is_whitespace() || c == ',')
        .map(|id| id.trim_matches(['<', '>']))
        .filter(|id| valid_message_id(id))
        .map(str::to_string)
        .collect();
    let skip = ids.len().saturating_sub(REFERENCES_MAX);
    ids.into_iter().skip(skip).collect()
}

/// A file attached to a composed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub name: String,
    /// `type/subtype`, checked by [`content_type_for`].
    pub content_type: String,
    pub data: Vec<u8>,
}

/// A composed message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Draft {
    pub from: String,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    /// Envelope recipients only: never in the header of the message sent.
    pub bcc: Vec<String>,
    pub subject: String,
    pub body: String,
    /// The id of the message this one answers (no brackets).
    pub in_reply_to: Option<String>,
    /// The thread's ids, oldest first (no brackets).
    pub references: Vec<String>,
    pub attachments: Vec<Attachment>,
}

/// Whether the built message carries the Bcc field: the copy kept in Sent or Drafts does
/// (as mail clients keep it, so the sender sees who else got it); the one sent does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bcc {
    Omit,
    Keep,
}

/// The RFC 5322 message for a draft: Date, Message-ID, In-Reply-To and References when it
/// answers, the text as UTF-8 (mail-builder picks quoted-printable or base64 by content),
/// and with attachments a multipart/mixed whose files are base64 with RFC 2231 names; a
/// `message/rfc822` attachment (a forwarded message) goes in as it is (7bit or 8bit).
/// `date` is seconds since the epoch, `id_left` the random left part of the Message-ID,
/// `domain` its right part.
pub fn build_message(draft: &Draft, date: i64, id_left: &str, domain: &str, bcc: Bcc) -> Vec<u8> {
    let mut builder = MessageBuilder::new()
        .date(date)
        .from(BuiltAddress::new_address(None::<&str>, draft.from.as_str()));
    if !draft.to.is_empty() {
        builder = builder.to(list(&draft.to));
    }
    if !draft.cc.is_empty() {
        builder = builder.cc(list(&draft.cc));
    }
    if bcc == Bcc::Keep && !draft.bcc.is_empty() {
        builder = builder.bcc(list(&draft.bcc));
    }
    // Control characters (CR and LF among them) never reach a header line.
    let subject: String = draft.subject.chars().filter(|c| !c.is_control()).collect();
    builder = builder
        .subject(subject)
        .message_id(format!("{id_left}@{domain}"));
    if let Some(id) = draft
        .in_reply_to
        .as_deref()
        .filter(|id| valid_message_id(id))
    {
        builder = builder.in_reply_to(id);
    }
    let references: Vec<&str> = draft
        .references
        .iter()
        .map(String::as_str)
        .filter(|id| valid_message_id(id))
        .collect();
    if !references.is_empty() {
        builder = builder.references(MessageId::new_list(references.iter().copied()));
    }
    builder = builder.text_body(normalize_newlines(&draft.body));
    for file in &draft.attachments {
        let part = if file.content_type.eq_ignore_ascii_case("message/rfc822") {
            let encoding = if file.data.is_ascii() { "7bit" } else { "8bit" };
            MimePart::new(
                "message/rfc822",
                BodyPart::Binary(file.data.as_slice().into()),
            )
            .attachment(file.name.as_str())
            .header("Content-Transfer-Encoding", Raw::new(encoding))
        } else {
            // Always base64, text files too: mail-builder would re-encode a text/* part as
            // text (its line ends normalised), and a file must arrive byte for byte.
            MimePart::new(
                file.content_type.as_str(),
                BodyPart::Binary(base64_lines(&file.data).into()),
            )
            .attachment(file.name.as_str())
            .header("Content-Transfer-Encoding", Raw::new("base64"))
        };
        builder.attachments.get_or_insert_with(Vec::new).push(part);
    }
    builder.write_to_vec().unwrap_or_default()
}

/// `data` in base64, lines of 76 characters, CRLF after each.
fn base64_lines(data: &[u8]) -> Vec<u8> {
    let encoded = base64_simd::STANDARD.encode_to_string(data);
    let mut out = Vec::with_capacity(encoded.len() + encoded.len() / 38 + 2);
    for line in encoded.as_bytes().chunks(76) {
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Plain addresses (no display names) as one list.
fn list(addrs: &[String]) -> BuiltAddress<'_> {
    BuiltAddress::new_list(
        addrs
            .iter()
            .map(|a| BuiltAddress::new_address(None::<&str>, a.as_str()))
            .collect(),
    )
}

fn normalize_newlines(text: &str) -> String {
    text.replace("\r\n", "\n")
        .replace('\r', "\n")
        .replace('\n', "\r\n")
}

/// The Content-Type a file goes out with: the browser's, when it is a plain
/// `type/subtype` and says more than "bytes"; else one guessed from the name's extension;
/// else `application/octet-stream`.
pub fn content_type_for(name: &str, uploaded: Option<&str>) -> String {
    let given = uploaded
        .map(|t| {
            t.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|t| {
            let token = |s: &str| {
                !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
            };
            t.split_once('/').is_some_and(|(a, b)| token(a) && token(b))
        });
    match given {
        Some(t) if t != "application/octet-stream" => t,
        _ => guess_type(name).to_string(),
    }
}

fn guess_type(name: &str) -> &'static str {
    let ext = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "txt" | "text" | "log" => "text/plain",
        "csv" => "text/csv",
        "htm" | "html" => "text/html",
        "pdf" => "application/pdf",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "svg" => "image/svg+xml",
        "zip" => "application/zip",
        "gz" => "application/gzip",
        "json" => "application/json",
        "xml" => "application/xml",
        "eml" => "message/rfc822",
        "ics" => "text/calendar",
        "doc" => "application/msword",
        "docx" => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "xlsx" => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "odt" => "application/vnd.oasis.opendocument.text",
        "mp3" => "audio/mpeg",
        "mp4" => "video/mp4",
        _ => "application/octet-stream",
    }
}

/// What an answer or a forward starts from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Prefill {
    pub to: String,
    pub cc: String,
    pub bcc: String,
    pub subject: String,
    pub body: String,
    pub in_reply_to: String,
    /// Space-separated, oldest first.
    pub references: String,
}

/// Which answer to prefill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Reply,
    ReplyAll,
    Forward,
}

/// `prefix` ("Re:" or "Fwd:") before `subject`, unless the subject starts with it (or one
/// of `also`) already: one prefix, never "Re: Re: Re:".
pub fn prefixed(prefix: &str, also: &[&str], subject: &str) -> String {
    let subject = subject.trim();
    let lower = subject.to_ascii_lowercase();
    let has = std::iter::once(prefix)
        .chain(also.iter().copied())
        .any(|p| lower.starts_with(&p.to_ascii_lowercase()));
    if has {
        subject.to_string()
    } else if subject.is_empty() {
        prefix.to_string()
    } else {
        format!("{prefix} {subject}")
    }
}

/// The fields of a reply, a reply to all or a forward of `raw`. A reply
/// goes to Reply-To (else From); to all adds the other To and Cc addresses as Cc (none
/// that `is_me`); the text is quoted under an attribution line. A forward carries no recipients and
/// no quote (the original goes along as a `message/rfc822` attachment).
pub fn answer(raw: &[u8], mode: Answer, is_me: impl Fn(&str) -> bool) -> Prefill {
    let Some(message) = MessageParser::default().parse(raw) else {
        return Prefill::default();
    };
    let subject = message.subject().unwrap_or("");
    if mode == Answer::Forward {
        return Prefill {
            subject: prefixed("Fwd:", &["Fw:"], subject),
            ..Prefill::default()
        };
    }
    let to: Vec<String> = addresses(message.reply_to().or(message.from()));
    let mut cc = Vec::new();
    if mode == Answer::ReplyAll {
        for addr in addresses(message.to())
            .into_iter()
            .chain(addresses(message.cc()))
        {
            let known = to.iter().chain(&cc).any(|a| a.eq_ignore_ascii_case(&addr));
            if !known && !is_me(&addr) {
                cc.push(addr);
            }
        }
    }
    let id = message.message_id().filter(|id| valid_message_id(id));
    // RFC 5322 §3.6.4: the parent's References (else its In-Reply-To) and then its id.
    let mut references = ids(message.references());
    if references.is_empty() {
        references = ids(message.in_reply_to());
    }
    references.extend(id.map(str::to_string));
    let skip = references.len().saturating_sub(REFERENCES_MAX);
    let who = message
        .from()
        .and_then(|a| a.first())
        .map(|a| match (a.name(), a.address()) {
            (Some(name), Some(addr)) => format!("{name} <{addr}>"),
            (Some(name), None) => name.to_string(),
            (None, Some(addr)) => addr.to_string(),
            (None, None) => String::new(),
        })
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "someone".into());
    let attribution = match message.date() {
        Some(date) => format!("On {}, {who} wrote:", date.to_rfc822()),
        None => format!("{who} wrote:"),
    };
    let text = message.body_text(0).unwrap_or_default();
    Prefill {
        to: to.join(", "),
        cc: cc.join(", "),
        bcc: String::new(),
        subject: prefixed("Re:", &[], subject),
        body: format!("\n\n{attribution}\n{}", quote(&text)),
        in_reply_to: id.unwrap_or("").to_string(),
        references: references
            .into_iter()
            .skip(skip)
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// Every line of `text` behind "> " (a quoted line's marker doubles as ">>").
pub fn quote(text: &str) -> String {
    let text = text.replace("\r\n", "\n");
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    for line in text.trim_end_matches('\n').split('\n') {
        if line.starts_with('>') {
            out.push('>');
        } else {
            out.push_str("> ");
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn addresses(address: Option<&Address<'_>>) -> Vec<String> {
    address
        .map(|a| {
            a.iter()
                .filter_map(|a| a.address())
                .filter(|a| valid_address(a))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn ids(value: &HeaderValue<'_>) -> Vec<String> {
    match value {
        HeaderValue::Text(id) => vec![id.to_string()],
        HeaderValue::TextList(ids) => ids.iter().map(|id| id.to_string()).collect(),
        _ => Vec::new(),
    }
    .into_iter()
    .filter(|id| valid_message_id(id))
    .collect()
}

/// A stored draft taken apart again: its fields for the form and its attachments (kept
/// when the draft is saved again or sent).
pub fn reopen(raw: &[u8]) -> (Prefill, Vec<Attachment>) {
    let Some(message) = MessageParser::default().parse(raw) else {
        return (Prefill::default(), Vec::new());
    };
    let list = |a| addresses(a).join(", ");
    let prefill = Prefill {
        to: list(message.to()),
        cc: list(message.cc()),
        bcc: list(message.bcc()),
        subject: message.subject().unwrap_or("").to_string(),
        body: message
            .body_text(0)
            .map(|t| t.replace("\r\n", "\n"))
            .unwrap_or_default(),
        in_reply_to: ids(message.in_reply_to()).join(" "),
        references: ids(message.references()).join(" "),
    };
    (prefill, attachments_of(raw))
}

/// The attachments of a stored message (a draft's files, decoded).
pub fn attachments_of(raw: &[u8]) -> Vec<Attachment> {
    let Some(message) = MessageParser::default().parse(raw) else {
        return Vec::new();
    };
    message
        .attachments()
        .map(|part| {
            let name = part.attachment_name().unwrap_or("attachment").to_string();
            let declared = part.content_type().map(|t| match t.subtype() {
                Some(sub) => format!("{}/{}", t.ctype(), sub),
                None => t.ctype().to_string(),
            });
            let content_type = if part.is_message() {
                "message/rfc822".to_string()
            } else {
                content_type_for(&name, declared.as_deref())
            };
            Attachment {
                name,
                content_type,
                data: part.contents().to_vec(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft() -> Draft {
        Draft {
            from: "alice@example.test".into(),
            to: vec!["bob@example.test".into()],
            cc: vec!["carol@example.test".into()],
            subject: "Gr\u{fc}\u{df}e\r\nBcc: evil@x.test".into(),
            body: "line one\nline <two>\n".into(),
            ..Draft::default()
        }
    }

    #[test]
    fn addresses_from_a_form() {
        assert_eq!(
            parse_addresses("a@example.test, Bob <b@example.test>; ").unwrap(),
            ["a@example.test", "b@example.test"]
        );
        assert_eq!(parse_addresses("bob@localhost").unwrap(), ["bob@localhost"]);
        assert!(parse_addresses("a@example.test\r\nBcc: x@y.z").is_err());
        assert!(parse_addresses("no-at-sign").is_err());
        assert!(parse_addresses("a b@example.test").is_err());
    }

    #[test]
    fn a_built_message_parses_back() {
        let raw = build_message(&draft(), 1_764_000_000, "abc123", "example.test", Bcc::Omit);
        let text = String::from_utf8(raw.clone()).unwrap();
        assert!(!text.contains("\nBcc"), "{text}");
        assert!(text
            .split("\r\n\r\n")
            .next()
            .unwrap()
            .lines()
            .all(|l| l.len() <= 998));
        let parsed = MessageParser::default().parse(&raw).unwrap();
        assert_eq!(parsed.subject(), Some("Gr\u{fc}\u{df}eBcc: evil@x.test"));
        assert_eq!(parsed.message_id(), Some("abc123@example.test"));
        assert_eq!(
            parsed.body_text(0).unwrap().replace("\r\n", "\n"),
            "line one\nline <two>\n"
        );
        assert_eq!(
            parsed.cc().unwrap().first().unwrap().address(),
            Some("carol@example.test")
        );
        assert!(parsed.date().is_some());
    }

    #[test]
    fn bcc_only_in_the_kept_copy() {
        let mut d = draft();
        d.bcc = vec!["secret@example.test".into()];
        let sent = build_message(&d, 1_764_000_000, "a", "example.test", Bcc::Omit);
        assert!(!String::from_utf8_lossy(&sent).contains("secret@"));
        let kept = build_message(&d, 1_764_000_000, "a", "example.test", Bcc::Keep);
        let parsed = MessageParser::default().parse(&kept).unwrap();
        assert_eq!(
            parsed.bcc().unwrap().first().unwrap().address(),
            Some("secret@example.test")
        );
    }

    #[test]
    fn attachments_go_out_as_multipart_mixed_with_rfc2231_names() {
        let mut d = draft();
        let binary: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
        d.attachments = vec![
            Attachment {
                name: "r\u{e9}sum\u{e9} final.pdf".into(),
                content_type: "application/pdf".into(),
                data: binary.clone(),
            },
            Attachment {
                name: "notes.txt".into(),
                content_type: "text/plain".into(),
                data: b"plain\r\nnotes\r\n".to_vec(),
            },
        ];
        d.body = "\u{fc}ber alles ".repeat(20);
        let raw = build_message(&d, 1_764_000_000, "a", "example.test", Bcc::Omit);
        let text = String::from_utf8_lossy(&raw);
        assert!(text.contains("multipart/mixed"), "{text}");
        assert!(
            text.contains("filename*=UTF-8''r%C3%A9sum%C3%A9%20final.pdf"),
            "{text}"
        );
        let parsed = MessageParser::default().parse(&raw).unwrap();
        let files: Vec<_> = parsed.attachments().collect();
        assert_eq!(files.len(), 2);
        assert_eq!(
            files[0].attachment_name(),
            Some("r\u{e9}sum\u{e9} final.pdf")
        );
        assert_eq!(files[0].contents(), binary.as_slice());
        assert_eq!(files[1].contents(), b"plain\r\nnotes\r\n");
        assert_eq!(parsed.body_text(0).unwrap(), d.body);
        // And they come back out of a stored copy the same.
        let back = attachments_of(&raw);
        assert_eq!(back, d.attachments);
    }

    #[test]
    fn content_types_from_the_upload_or_the_name() {
        assert_eq!(content_type_for("a.bin", Some("image/png")), "image/png");
        assert_eq!(
            content_type_for("a.pdf", Some("application/octet-stream")),
            "application/pdf"
        );
        assert_eq!(content_type_for("a.PNG", None), "image/png");
        assert_eq!(content_type_for("noext", None), "application/octet-stream");
        assert_eq!(
            content_type_for("x.txt", Some("text/plain\r\nX-Evil: 1")),
            "text/plain"
        );
        assert_eq!(
            content_type_for("x", Some("bad type")),
            "application/octet-stream"
        );
    }

    const ORIGINAL: &[u8] = b"From: Bob <bob@example.test>\r\nTo: alice@example.test, dave@example.test\r\nCc: Carol <carol@example.test>, bob@example.test\r\nReply-To: bob.list@example.test\r\nSubject: Re: plans\r\nDate: Tue, 1 Dec 2026 10:00:00 +0000\r\nMessage-ID: <m2@example.test>\r\nReferences: <m0@example.test> <m1@example.test>\r\n\r\nfirst line\r\n> older\r\n";

    #[test]
    fn a_reply_quotes_and_threads() {
        let r = answer(ORIGINAL, Answer::Reply, |a| a == "alice@example.test");
        assert_eq!(r.to, "bob.list@example.test");
        assert_eq!(r.cc, "");
        assert_eq!(r.subject, "Re: plans", "not stacked");
        assert_eq!(r.in_reply_to, "m2@example.test");
        assert_eq!(
            r.references,
            "m0@example.test m1@example.test m2@example.test"
        );
        assert!(
            r.body.contains("Bob <bob@example.test> wrote:"),
            "{}",
            r.body
        );
        assert!(r.body.ends_with("> first line\n>> older\n"), "{:?}", r.body);
    }

    #[test]
    fn reply_all_copies_the_others_but_not_me() {
        let r = answer(ORIGINAL, Answer::ReplyAll, |a| a == "alice@example.test");
        assert_eq!(r.to, "bob.list@example.test");
        assert_eq!(
            r.cc,
            "dave@example.test, carol@example.test, bob@example.test"
        );
    }

    #[test]
    fn a_forward_is_prefixed_once() {
        let f = answer(ORIGINAL, Answer::Forward, |a| a == "alice@example.test");
        assert_eq!(f.subject, "Fwd: Re: plans");
        assert!(f.to.is_empty() && f.in_reply_to.is_empty());
        assert_eq!(prefixed("Fwd:", &["Fw:"], "FWD: x"), "FWD: x");
        assert_eq!(prefixed("Re:", &[], ""), "Re:");
    }

    #[test]
    fn threading_headers_are_written_and_checked() {
        let mut d = draft();
        d.in_reply_to = Some("m2@example.test".into());
        d.references = parse_message_ids("<m1@example.test> m2@example.test bad\r\nX: y");
        assert_eq!(d.references, ["m1@example.test", "m2@example.test"]);
        let raw = build_message(&d, 1_764_000_000, "a", "example.test", Bcc::Omit);
        let text = String::from_utf8_lossy(&raw);
        assert!(text.contains("In-Reply-To: <m2@example.test>"), "{text}");
        let parsed = MessageParser::default().parse(&raw).unwrap();
        assert_eq!(
            ids(parsed.references()),
            ["m1@example.test", "m2@example.test"]
        );
    }

    #[test]
    fn a_forwarded_message_travels_whole_and_a_draft_reopens() {
        let mut d = draft();
        d.bcc = vec!["hidden@example.test".into()];
        d.attachments = vec![Attachment {
            name: "plans.eml".into(),
            content_type: "message/rfc822".into(),
            data: ORIGINAL.to_vec(),
        }];
        let raw = build_message(&d, 1_764_000_000, "a", "example.test", Bcc::Keep);
        let parsed = MessageParser::default().parse(&raw).unwrap();
        let part = parsed.attachments().next().unwrap();
        assert!(part.is_message());
        assert_eq!(part.contents(), ORIGINAL);
        let (fields, files) = reopen(&raw);
        assert_eq!(fields.to, "bob@example.test");
        assert_eq!(fields.bcc, "hidden@example.test");
        assert_eq!(fields.body, "line one\nline <two>\n");
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].content_type, "message/rfc822");
        assert_eq!(files[0].data, ORIGINAL);
    }
}
