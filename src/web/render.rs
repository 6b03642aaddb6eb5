//! What the pages show of a message, sans-IO: the headers a person reads (RFC 2047
//! decoded by mail-parser), the text part as text (the templates escape it), the HTML part
//! sanitised by ammonia with remote images removed.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use mail_parser::{Address, Message, MessageParser, MessagePart, MimeHeaders, PartType};

/// The list's columns for one message, from its header section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub from: String,
    pub subject: String,
    pub date: String,
}

/// One message as the reading page shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageView {
    pub from: String,
    pub to: String,
    pub cc: String,
    pub date: String,
    pub subject: String,
    /// The plain text body (escaped by the template), when the message has no HTML part.
    pub text: Option<String>,
    /// The HTML body, sanitised: no script, no handlers, no styles, no remote loads.
    pub html: Option<String>,
    /// Attachment names (RFC 2231 / RFC 2047 decoded), in order.
    pub attachments: Vec<String>,
    /// Images the sanitiser took out (remote loads are blocked).
    pub blocked_images: usize,
    /// The attachments as the page links them (cid images the HTML shows are not listed).
    pub files: Vec<Attachment>,
    /// Forwarded messages (`message/rfc822` parts), depth first, nested ones after theirs.
    pub forwarded: Vec<Forwarded>,
}

/// One downloadable part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// Its [`part`] path.
    pub path: String,
    /// RFC 2231 / RFC 2047 decoded by mail-parser; "(unnamed)" without one.
    pub name: String,
    /// Decoded bytes.
    pub size: usize,
    /// As a person reads it ("12 KB").
    pub size_text: String,
    pub content_type: String,
}

/// A forwarded message shown inside the one that carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forwarded {
    /// 1 for a message inside the message read, 2 inside that, ...
    pub depth: usize,
    /// Its [`part`] path (the `/body` frame of its HTML takes it).
    pub path: String,
    pub from: String,
    pub to: String,
    pub date: String,
    pub subject: String,
    /// Its text, when it has no HTML part.
    pub text: Option<String>,
    /// It has an HTML part (shown in a frame of its own).
    pub has_html: bool,
    pub files: Vec<Attachment>,
}

/// Forwarded messages inside forwarded messages are shown to this depth.
pub const FORWARD_DEPTH_MAX: usize = 3;

/// The list columns of a message from its stored bytes (a header section is enough).
pub fn summary(raw: &[u8]) -> Summary {
    match MessageParser::default().parse_headers(raw) {
        Some(message) => Summary {
            from: addresses(message.from(), true),
            subject: message.subject().unwrap_or("").trim().to_string(),
            date: message.date().map(|d| d.to_rfc822()).unwrap_or_default(),
        },
        None => Summary {
            from: String::new(),
            subject: String::new(),
            date: String::new(),
        },
    }
}

/// The reading page's view of a whole stored message.
pub fn view(raw: &[u8]) -> MessageView {
    let Some(message) = MessageParser::default().parse(raw) else {
        return MessageView {
            from: String::new(),
            to: String::new(),
            cc: String::new(),
            date: String::new(),
            subject: String::new(),
            text: Some(String::from_utf8_lossy(raw).into_owned()),
            html: None,
            attachments: Vec::new(),
            blocked_images: 0,
            files: Vec::new(),
            forwarded: Vec::new(),
        };
    };
    let (html, blocked_images) = match html_of(&message) {
        Some(html) => {
            let (clean, blocked) = sanitize_html(html);
            (Some(clean), blocked)
        }
        None => (None, 0),
    };
    let text = if html.is_some() {
        None
    } else {
        Some(text_of(&message))
    };
    let mut forwarded = Vec::new();
    forwarded_in(&message, "", 1, &mut forwarded);
    let attachments = message
        .attachments()
        .map(|p| {
            p.attachment_name()
                .map(str::to_string)
                .unwrap_or_else(|| "(unnamed)".into())
        })
        .collect();
    MessageView {
        from: addresses(message.from(), false),
        to: addresses(message.to(), false),
        cc: addresses(message.cc(), false),
        date: message.date().map(|d| d.to_rfc822()).unwrap_or_default(),
        subject: message.subject().unwrap_or("").to_string(),
        text,
        html,
        attachments,
        blocked_images,
        files: files_of(&message, ""),
        forwarded,
    }
}

/// The (first) HTML body of a message, if it has one.
fn html_of<'a>(message: &'a Message<'a>) -> Option<&'a str> {
    message
        .html_bodies()
        .find(|p| matches!(p.body, PartType::Html(_)))
        .and_then(|p| p.text_contents())
}

/// The text bodies of a message, joined.
fn text_of(message: &Message<'_>) -> String {
    message
        .text_bodies()
        .filter_map(|p| match &p.body {
            PartType::Text(t) => Some(t.as_ref()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `prefix` + `index`: a part's path (`2`, or `3.1` for part 1 of the message in part 3).
fn child_path(prefix: &str, index: usize) -> String {
    if prefix.is_empty() {
        index.to_string()
    } else {
        format!("{prefix}.{index}")
    }
}

/// A message's attachments, less forwarded messages (shown as messages) and the images its
/// HTML body shows by `cid:`.
fn files_of(message: &Message<'_>, prefix: &str) -> Vec<Attachment> {
    let shown = html_of(message).map(cid_references).unwrap_or_default();
    message
        .attachments
        .iter()
        .filter_map(|&id| {
            let index = usize::try_from(id).ok()?;
            let part = message.parts.get(index)?;
            if part.is_message() {
                return None;
            }
            if part
                .content_id()
                .is_some_and(|cid| shown.contains(&normalize_cid(cid)))
            {
                return None;
            }
            let size = part.contents().len();
            Some(Attachment {
                path: child_path(prefix, index),
                name: part
                    .attachment_name()
                    .map(str::to_string)
                    .unwrap_or_else(|| "(unnamed)".into()),
                size,
                size_text: size_text(size),
                content_type: content_type_of(part),
            })
        })
        .collect()
}

/// The forwarded messages in `message`, and theirs, to [`FORWARD_DEPTH_MAX`].
fn forwarded_in(message: &Message<'_>, prefix: &str, depth: usize, out: &mut Vec<Forwarded>) {
    if depth > FORWARD_DEPTH_MAX {
        return;
    }
    for &id in &message.attachments {
        let Ok(index) = usize::try_from(id) else {
            continue;
        };
        let Some(inner) = message.parts.get(index).and_then(|p| p.message()) else {
            continue;
        };
        let path = child_path(prefix, index);
        let has_html = html_of(inner).is_some();
        out.push(Forwarded {
            depth,
            from: addresses(inner.from(), false),
            to: addresses(inner.to(), false),
            date: inner.date().map(|d| d.to_rfc822()).unwrap_or_default(),
            subject: inner.subject().unwrap_or("").to_string(),
            text: (!has_html).then(|| text_of(inner)),
            has_html,
            files: files_of(inner, &path),
            path: path.clone(),
        });
        forwarded_in(inner, &path, depth + 1, out);
    }
}

/// `type/subtype` of a part, lower case (`text/plain` when it names none).
fn content_type_of(part: &MessagePart<'_>) -> String {
    match part.content_type() {
        Some(ct) => match ct.subtype() {
            Some(sub) => format!("{}/{}", ct.ctype(), sub),
            None => ct.ctype().to_string(),
        }
        .to_ascii_lowercase(),
        None if part.is_message() => "message/rfc822".into(),
        None => "text/plain".into(),
    }
}

fn size_text(size: usize) -> String {
    match size {
        0..1024 => format!("{size} bytes"),
        1024..1_048_576 => format!("{} KB", size.div_ceil(1024)),
        _ => format!("{:.1} MB", size as f64 / 1_048_576.0),
    }
}

/// Nested-message depth a part path may name (deeper than the page shows is refused).
const PATH_SEGMENTS_MAX: usize = FORWARD_DEPTH_MAX + 1;

/// The message at `path` ("" the message itself, "3" the one forwarded in part 3, ...).
pub fn nested<'a>(message: &'a Message<'a>, path: &str) -> Option<&'a Message<'a>> {
    if path.is_empty() {
        return Some(message);
    }
    locate(message, path)?.message()
}

/// The part at `path`: indexes into mail-parser's parts, dot-separated through forwarded
/// messages. `None` for anything else.
pub fn locate<'a>(message: &'a Message<'a>, path: &str) -> Option<&'a MessagePart<'a>> {
    let mut current = message;
    let mut segments = path.split('.').peekable();
    let mut depth = 0;
    while let Some(segment) = segments.next() {
        depth += 1;
        if depth > PATH_SEGMENTS_MAX || segment.is_empty() || segment.len() > 6 {
            return None;
        }
        let index: usize = segment.parse().ok()?;
        let part = current.parts.get(index)?;
        if segments.peek().is_none() {
            return Some(part);
        }
        current = part.message()?;
    }
    None
}

/// A part to download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Download {
    pub bytes: Vec<u8>,
    /// What the response says: the part's own type for the raster image types a browser
    /// shows inertly, `application/octet-stream` for everything else (a peer's HTML or SVG
    /// served as such from our origin could run script in it).
    pub content_type: &'static str,
    /// The `Content-Disposition` value (always `attachment`).
    pub disposition: String,
}

/// The part at `path` of a stored message, decoded, as a download; `None` if there is no
/// such leaf part (multipart containers are not downloads).
pub fn download(raw: &[u8], path: &str) -> Option<Download> {
    let message = MessageParser::default().parse(raw)?;
    let part = locate(&message, path)?;
    if part.is_multipart() {
        return None;
    }
    let declared = content_type_of(part);
    let content_type = served_type(&declared);
    let name = match part.attachment_name() {
        Some(name) => name.to_string(),
        None if part.is_message() => "message.eml".into(),
        None => format!("part-{}", path.replace('.', "-")),
    };
    Some(Download {
        bytes: part.contents().to_vec(),
        content_type,
        disposition: content_disposition(&name),
    })
}

/// See [`Download::content_type`].
pub fn served_type(declared: &str) -> &'static str {
    match declared {
        "image/png" => "image/png",
        "image/jpeg" | "image/jpg" => "image/jpeg",
        "image/gif" => "image/gif",
        "image/webp" => "image/webp",
        _ => "application/octet-stream",
    }
}

/// `attachment; filename="…"; filename*=UTF-8''…` (RFC 6266, RFC 5987/8187): the name
/// without control characters or path separators, at most 200 characters; the quoted
/// fallback is ASCII with anything else as `_`, the extended value percent-encoded, so
/// a peer's name can never add a byte the header does not mean.
pub fn content_disposition(name: &str) -> String {
    let name: String = name
        .chars()
        .filter(|c| !c.is_control())
        .map(|c| if matches!(c, '/' | '\\') { '_' } else { c })
        .take(200)
        .collect();
    let name = match name.trim() {
        "" | "." | ".." => "attachment".to_string(),
        trimmed => trimmed.to_string(),
    };
    let fallback: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '%' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut encoded = String::new();
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    format!("attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}")
}

/// The sanitised HTML body of the message at `path` for its frame: the raster images its
/// `cid:` URLs name inlined as `data:` URLs, remote images kept only when `remote`. `None`
/// without an HTML body. Also the number of images blocked.
///
/// Inlined, not linked to `/part`: the frame is sandboxed without `allow-same-origin`, so
/// its requests are cross-site and a browser sends them without the `SameSite=Strict`
/// session cookie (Chromium does exactly that); a `data:` image needs no request.
pub fn frame_html(raw: &[u8], path: &str, remote: bool) -> Option<(String, usize)> {
    let top = MessageParser::default().parse(raw)?;
    let message = nested(&top, path)?;
    let html = html_of(message)?;
    let wanted = cid_references(html);
    let mut cids = HashMap::new();
    for part in &message.parts {
        let Some(cid) = part.content_id().map(normalize_cid) else {
            continue;
        };
        let image = served_type(&content_type_of(part));
        if !wanted.contains(&cid) || cids.contains_key(&cid) || !image.starts_with("image/") {
            continue;
        }
        let data = base64_simd::STANDARD.encode_to_string(part.contents());
        cids.insert(cid, format!("data:{image};base64,{data}"));
    }
    Some(sanitize_html_with(html, Some(FrameImages { cids, remote })))
}

/// A Content-ID as `cid:` URLs name it: without angle brackets, lower case.
fn normalize_cid(cid: &str) -> String {
    cid.trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .to_ascii_lowercase()
}

/// The Content-IDs an HTML body's `cid:` URLs name (RFC 2392: percent-encoded).
fn cid_references(html: &str) -> HashSet<String> {
    let lower = html.to_ascii_lowercase();
    lower
        .match_indices("cid:")
        .map(|(at, _)| {
            let rest = &lower[at + 4..];
            let end = rest
                .find(|c: char| c == '"' || c == '\'' || c == '>' || c.is_whitespace())
                .unwrap_or(rest.len());
            normalize_cid(&percent_decode_lossy(&rest[..end]))
        })
        .collect()
}

fn percent_decode_lossy(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                let value = hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0);
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 3;
            }
            (b, ..) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `Name <addr>, …`; with `short`, the name alone where there is one (the list's column).
fn addresses(address: Option<&Address<'_>>, short: bool) -> String {
    let Some(address) = address else {
        return String::new();
    };
    address
        .iter()
        .map(|a| match (a.name(), a.address()) {
            (Some(name), _) if short => name.to_string(),
            (Some(name), Some(addr)) => format!("{name} <{addr}>"),
            (Some(name), None) => name.to_string(),
            (None, Some(addr)) => addr.to_string(),
            (None, None) => String::new(),
        })
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Sanitises an HTML body: ammonia's allow-list (no script, no event handlers, no style,
/// no `javascript:` links), links open nothing of ours (`noopener noreferrer`), and every
/// image source other than `cid:` is removed so that reading a message tells no remote
/// server that it was read. Returns the HTML and the number of images blocked.
pub fn sanitize_html(html: &str) -> (String, usize) {
    sanitize_html_with(html, None)
}

/// How the message frame shows images: `cid:` sources become the `data:` URLs in `cids`
/// (keyed by [`normalize_cid`]; unknown ones are removed), remote (`https:`) sources stay
/// only with `remote` (the reader asked, for this message).
#[derive(Debug, Clone, Default)]
pub struct FrameImages {
    pub cids: HashMap<String, String>,
    pub remote: bool,
}

/// [`sanitize_html`], and for the message frame (`Some`) images as [`FrameImages`] says
/// and links opening a new browsing context (the frame's sandbox allows popups only).
/// Returns the HTML and the number of remote images removed.
pub fn sanitize_html_with(html: &str, frame: Option<FrameImages>) -> (String, usize) {
    let blocked = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&blocked);
    let in_frame = frame.is_some();
    let images = frame.unwrap_or_default();
    let mut b = ammonia::Builder::default();
    // `data:` is not among the schemes: only the filter below writes such a URL (after
    // ammonia's scheme check), for an image of the message itself.
    b.url_schemes(HashSet::from(["http", "https", "mailto", "cid"]))
        .link_rel(Some("noopener noreferrer"))
        .url_relative(ammonia::UrlRelative::Deny)
        // A document's <title> is not body text: without this its words showed in the frame.
        .add_clean_content_tags(["title"])
        .attribute_filter(move |element, attribute, value| {
            if element != "img" || !matches!(attribute, "src" | "srcset") {
                return Some(Cow::Borrowed(value));
            }
            if attribute == "srcset" {
                return None;
            }
            let lower = value.trim().to_ascii_lowercase();
            if let Some(cid) = lower.strip_prefix("cid:") {
                if !in_frame {
                    return Some(Cow::Borrowed(value));
                }
                return images
                    .cids
                    .get(&normalize_cid(&percent_decode_lossy(cid)))
                    .map(|link| Cow::Owned(link.clone()));
            }
            if images.remote && lower.starts_with("https:") {
                return Some(Cow::Borrowed(value));
            }
            counted.fetch_add(1, Ordering::Relaxed);
            None
        });
    if in_frame {
        b.set_tag_attribute_value("a", "target", "_blank");
    }
    let clean = b.clean(html).to_string();
    (clean, blocked.load(Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_decoded() {
        let raw = b"From: =?UTF-8?B?SsO8cmdlbg==?= <j@example.test>\r\nTo: a@example.test, B <b@example.test>\r\nSubject: =?ISO-8859-1?Q?Gr=FC=DFe?=\r\nDate: Tue, 1 Dec 2026 10:00:00 +0000\r\n\r\nhello\r\n";
        let s = summary(raw);
        assert_eq!(s.from, "J\u{fc}rgen");
        assert_eq!(s.subject, "Gr\u{fc}\u{df}e");
        assert!(s.date.contains("2026"), "{}", s.date);
        let v = view(raw);
        assert_eq!(v.from, "J\u{fc}rgen <j@example.test>");
        assert_eq!(v.to, "a@example.test, B <b@example.test>");
        assert_eq!(v.text.as_deref().map(str::trim), Some("hello"));
        assert!(v.html.is_none());
    }

    #[test]
    fn a_document_title_is_not_shown_as_text() {
        let (clean, _) =
            sanitize_html("<html><head><title>PWNED</title></head><body><p>kept</p></body></html>");
        assert!(!clean.contains("PWNED"), "{clean}");
        assert!(clean.contains("kept"), "{clean}");
    }

    #[test]
    fn html_loses_script_handlers_remote_images_and_javascript_links() {
        let (clean, blocked) = sanitize_html(
            "<p onclick=\"x()\">Hi</p><script>alert(1)</script><img src=\"http://evil.test/t.gif\" onerror=\"alert(2)\"><a href=\"javascript:alert(3)\">j</a><a href=\"https://ok.test/\">ok</a><img src=\"cid:logo\">",
        );
        assert!(!clean.contains("script"), "{clean}");
        assert!(
            !clean.contains("onclick") && !clean.contains("onerror"),
            "{clean}"
        );
        assert!(!clean.contains("evil.test"), "{clean}");
        assert!(!clean.contains("javascript"), "{clean}");
        assert!(clean.contains("href=\"https://ok.test/\""), "{clean}");
        assert!(clean.contains("noopener"), "{clean}");
        assert!(clean.contains("src=\"cid:logo\""), "{clean}");
        assert_eq!(blocked, 1);
    }

    #[test]
    fn an_html_message_shows_its_html_part() {
        let raw = b"From: a@example.test\r\nSubject: h\r\nMIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nplain\r\n--b\r\nContent-Type: text/html\r\n\r\n<b>bold</b><script>bad()</script>\r\n--b--\r\n";
        let v = view(raw);
        let html = v.html.unwrap();
        assert!(
            html.contains("<b>bold</b>") && !html.contains("bad()"),
            "{html}"
        );
        assert!(v.text.is_none());
    }

    #[test]
    fn attachment_names_are_decoded() {
        let raw = b"From: a@example.test\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nsee\r\n--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\nAAAA\r\n--b--\r\n";
        assert_eq!(view(raw).attachments, ["r\u{e9}sum\u{e9}.pdf"]);
    }
}

#[cfg(test)]
mod reading_tests {
    use super::*;

    /// A message with a related HTML body (a cid image and a remote one), two attachments
    /// with encoded names and a forwarded message that forwards one more.
    const RICH: &[u8] = b"From: a@example.test\r\nSubject: rich\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=outer\r\n\r\n\
--outer\r\nContent-Type: multipart/related; boundary=rel\r\n\r\n\
--rel\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>Hi <img src=\"cid:Logo@x\"> <img src=\"https://remote.test/p.gif\"> <a href=\"https://ok.test/\">ok</a></p>\r\n\
--rel\r\nContent-Type: image/png\r\nContent-ID: <logo@x>\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=\r\n\
--rel--\r\n\
--outer\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n\
--outer\r\nContent-Type: text/html; name=\"=?UTF-8?B?w7xiZXIuaHRtbA==?=\"\r\nContent-Disposition: attachment\r\n\r\n<script>alert(1)</script>\r\n\
--outer\r\nContent-Type: message/rfc822\r\n\r\n\
From: Bob <bob@example.test>\r\nTo: a@example.test\r\nSubject: inner one\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=in\r\n\r\n\
--in\r\nContent-Type: text/plain\r\n\r\nforwarded words\r\n\
--in\r\nContent-Type: message/rfc822\r\n\r\nFrom: c@example.test\r\nSubject: innermost\r\n\r\ndeepest words\r\n\
--in--\r\n\
--outer--\r\n";

    #[test]
    fn attachments_are_listed_with_decoded_names_sizes_and_paths() {
        let v = view(RICH);
        let names: Vec<&str> = v.files.iter().map(|a| a.name.as_str()).collect();
        // The cid image the HTML shows is not an attachment; the forwarded message is
        // shown as a message.
        assert_eq!(names, ["r\u{e9}sum\u{e9}.pdf", "\u{fc}ber.html"]);
        assert_eq!(v.files[0].size, 5, "decoded %PDF- is 5 bytes");
        assert_eq!(v.files[0].content_type, "application/pdf");
        for a in &v.files {
            let d = download(RICH, &a.path).unwrap();
            assert_eq!(d.bytes.len(), a.size);
        }
        let pdf = download(RICH, &v.files[0].path).unwrap();
        assert_eq!(pdf.bytes, b"%PDF-");
        assert_eq!(pdf.content_type, "application/octet-stream");
        assert_eq!(
            pdf.disposition,
            "attachment; filename=\"r_sum_.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf"
        );
        // A peer's HTML is never served as HTML.
        let page = download(RICH, &v.files[1].path).unwrap();
        assert_eq!(page.content_type, "application/octet-stream");
    }

    #[test]
    fn a_disposition_cannot_be_broken_by_the_name() {
        let d = content_disposition("a\"\r\nSet-Cookie: x=1; b\\..\\/evil%.txt");
        assert!(!d.contains('\r') && !d.contains('\n'), "{d}");
        assert!(
            d.starts_with(
                "attachment; filename=\"a_Set-Cookie: x=1; b_..__evil_.txt\"; filename*=UTF-8''"
            ),
            "{d}"
        );
        let quoted = d.split('"').nth(1).unwrap();
        assert!(!quoted.contains('\\'));
        let ext = d.split("''").nth(1).unwrap();
        assert!(
            ext.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~%".contains(&b)),
            "{ext}"
        );
        assert_eq!(
            content_disposition("\r\n.."),
            "attachment; filename=\"attachment\"; filename*=UTF-8''attachment"
        );
        assert!(axum::http::HeaderValue::from_str(&d).is_ok());
    }

    #[test]
    fn only_raster_images_keep_their_type() {
        assert_eq!(served_type("image/png"), "image/png");
        assert_eq!(served_type("image/jpeg"), "image/jpeg");
        assert_eq!(served_type("image/svg+xml"), "application/octet-stream");
        assert_eq!(served_type("text/html"), "application/octet-stream");
    }

    #[test]
    fn the_frame_inlines_cid_images_and_blocks_remote_ones_unless_asked() {
        let (html, blocked) = frame_html(RICH, "", false).unwrap();
        assert_eq!(blocked, 1);
        assert!(!html.contains("remote.test"), "{html}");
        assert!(
            html.contains("<img src=\"data:image/png;base64,iVBORw0KGgo=\">"),
            "{html}"
        );
        assert!(html.contains("target=\"_blank\""), "{html}");
        assert!(html.contains("noopener"), "{html}");
        let (html, blocked) = frame_html(RICH, "", true).unwrap();
        assert_eq!(blocked, 0);
        assert!(html.contains("src=\"https://remote.test/p.gif\""), "{html}");
        // Unknown cids, plain-http images and a peer's own data: images go either way.
        let (html, _) = sanitize_html_with(
            "<img src=\"cid:nope\"><img src=\"http://remote.test/x\"><img srcset=\"https://r.test/a 1x\"><img src=\"data:image/svg+xml,x\">",
            Some(FrameImages {
                cids: HashMap::new(),
                remote: true,
            }),
        );
        assert!(!html.contains("src"), "{html}");
    }

    #[test]
    fn forwarded_messages_are_shown_nested() {
        let v = view(RICH);
        let shown: Vec<(usize, &str)> = v
            .forwarded
            .iter()
            .map(|f| (f.depth, f.subject.as_str()))
            .collect();
        assert_eq!(shown, [(1, "inner one"), (2, "innermost")]);
        assert_eq!(v.forwarded[0].from, "Bob <bob@example.test>");
        assert_eq!(
            v.forwarded[0].text.as_deref().map(str::trim),
            Some("forwarded words")
        );
        assert_eq!(
            v.forwarded[1].text.as_deref().map(str::trim),
            Some("deepest words")
        );
        assert!(v.forwarded[1]
            .path
            .starts_with(&format!("{}.", v.forwarded[0].path)));
        // The forwarded message downloads as itself.
        let eml = download(RICH, &v.forwarded[0].path).unwrap();
        assert!(
            eml.bytes.starts_with(b"From: Bob"),
            "{:?}",
            String::from_utf8_lossy(&eml.bytes)
        );
        assert!(eml.disposition.contains("message.eml"));
    }

    #[test]
    fn forwarding_is_shown_to_a_bounded_depth() {
        let mut raw = b"From: x@example.test\r\nSubject: level 9\r\n\r\nbottom\r\n".to_vec();
        for level in (0..9).rev() {
            let mut outer = format!("From: x@example.test\r\nSubject: level {level}\r\nMIME-Version: 1.0\r\nContent-Type: message/rfc822\r\n\r\n").into_bytes();
            outer.extend_from_slice(&raw);
            raw = outer;
        }
        let v = view(&raw);
        assert!(!v.forwarded.is_empty());
        assert!(
            v.forwarded.len() <= FORWARD_DEPTH_MAX,
            "{:?}",
            v.forwarded.len()
        );
        assert!(v.forwarded.iter().all(|f| f.depth <= FORWARD_DEPTH_MAX));
    }

    #[test]
    fn part_paths_are_checked() {
        let message = MessageParser::default().parse(RICH).unwrap();
        assert!(locate(&message, "").is_none());
        assert!(locate(&message, "999").is_none());
        assert!(locate(&message, "1.1").is_none(), "part 1 is no message");
        assert!(locate(&message, "x").is_none());
        assert!(locate(&message, "-1").is_none());
        assert!(locate(&message, "1.2.3.4.5.6").is_none());
        assert!(download(RICH, "0").is_none(), "a multipart is no download");
    }
}
