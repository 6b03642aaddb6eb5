//! What the pages show of a message, sans-IO: the headers a person reads (RFC 2047
//! decoded by mail-parser), the text part as text (the templates escape it), the HTML part
//! sanitised by ammonia with remote images removed.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::OnceLock;

use mail_parser::{Address, MessageParser, MimeHeaders, PartType};

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
}

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
        };
    };
    let html_part = message
        .html_bodies()
        .find(|p| matches!(p.body, PartType::Html(_)));
    let (html, blocked_images) = match html_part.and_then(|p| p.text_contents()) {
        Some(html) => {
            let (clean, blocked) = sanitize_html(html);
            (Some(clean), blocked)
        }
        None => (None, 0),
    };
    let text = if html.is_some() {
        None
    } else {
        Some(
            message
                .text_bodies()
                .filter_map(|p| match &p.body {
                    PartType::Text(t) => Some(t.as_ref()),
                    _ => None,
                })
                .collect::<Vec<_>>()
                .join("\n"),
        )
    };
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
    }
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
    static CLEANER: OnceLock<ammonia::Builder<'static>> = OnceLock::new();
    let cleaner = CLEANER.get_or_init(|| {
        let mut b = ammonia::Builder::default();
        b.url_schemes(HashSet::from(["http", "https", "mailto", "cid"]))
            .link_rel(Some("noopener noreferrer"))
            .url_relative(ammonia::UrlRelative::Deny)
            .attribute_filter(|element, attribute, value| {
                let remote_source =
                    matches!(attribute, "src" | "srcset") && !value.starts_with("cid:");
                if remote_source && element == "img" {
                    None
                } else {
                    Some(Cow::Borrowed(value))
                }
            });
        b
    });
    let clean = cleaner.clean(html).to_string();
    let before = count_images(html);
    let after = count_remaining_sources(&clean);
    (clean, before.saturating_sub(after))
}

fn count_images(html: &str) -> usize {
    html.to_ascii_lowercase().matches("<img").count()
}

fn count_remaining_sources(clean: &str) -> usize {
    clean.matches("src=\"cid:").count()
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
