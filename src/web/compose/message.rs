//! The message a compose form makes, sans-IO: recipients parsed from form fields, the
//! RFC 5322 bytes built from a [`Draft`].

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

/// A composed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Draft {
    pub from: String,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub subject: String,
    pub body: String,
}

/// The RFC 5322 message for a draft: Date, Message-ID, MIME text/plain in UTF-8 (base64, so
/// any text survives any hop), CRLF line ends. `date` is seconds since the epoch, `id_left`
/// the random left part of the Message-ID, `domain` its right part.
pub fn build_message(draft: &Draft, date: i64, id_left: &str, domain: &str) -> Vec<u8> {
    let mut out = String::new();
    let date = chrono::DateTime::from_timestamp(date, 0)
        .unwrap_or_default()
        .format("%a, %d %b %Y %H:%M:%S +0000");
    out.push_str(&format!("Date: {date}\r\n"));
    out.push_str(&format!("From: <{}>\r\n", draft.from));
    if !draft.to.is_empty() {
        out.push_str(&format!("To: {}\r\n", angle_list(&draft.to)));
    }
    if !draft.cc.is_empty() {
        out.push_str(&format!("Cc: {}\r\n", angle_list(&draft.cc)));
    }
    out.push_str(&format!("Subject: {}\r\n", encode_word(&draft.subject)));
    out.push_str(&format!("Message-ID: <{id_left}@{domain}>\r\n"));
    out.push_str("MIME-Version: 1.0\r\n");
    out.push_str("Content-Type: text/plain; charset=utf-8\r\n");
    out.push_str("Content-Transfer-Encoding: base64\r\n\r\n");
    let body = normalize_newlines(&draft.body);
    let encoded = base64_simd::STANDARD.encode_to_string(body.as_bytes());
    for line in encoded.as_bytes().chunks(76) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push_str("\r\n");
    }
    out.into_bytes()
}

fn angle_list(addrs: &[String]) -> String {
    addrs
        .iter()
        .map(|a| format!("<{a}>"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn normalize_newlines(text: &str) -> String {
    text.replace("\r\n", "\n")
        .replace('\r', "\n")
        .replace('\n', "\r\n")
}

/// A header text as RFC 2047 encoded words when it is not plain printable ASCII (control
/// characters, CR and LF included, can then never end the header line).
pub fn encode_word(text: &str) -> String {
    let plain = text.chars().all(|c| c == ' ' || c.is_ascii_graphic()) && !text.contains("=?");
    if plain && text.len() <= 900 {
        return text.to_string();
    }
    // Whole characters per word; 45 bytes encode to 60, within the 75-octet word limit.
    let mut words = Vec::new();
    let mut chunk = String::new();
    for c in text.chars().filter(|c| !c.is_control()) {
        if chunk.len() + c.len_utf8() > 45 {
            words.push(std::mem::take(&mut chunk));
        }
        chunk.push(c);
    }
    if !chunk.is_empty() {
        words.push(chunk);
    }
    words
        .iter()
        .map(|w| format!("=?UTF-8?B?{}?=", base64_simd::STANDARD.encode_to_string(w)))
        .collect::<Vec<_>>()
        .join("\r\n ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_parser::MessageParser;

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
        let draft = Draft {
            from: "alice@example.test".into(),
            to: vec!["bob@example.test".into()],
            cc: vec!["carol@example.test".into()],
            subject: "Gr\u{fc}\u{df}e\r\nBcc: evil@x.test".into(),
            body: "line one\nline <two>\n".into(),
        };
        let raw = build_message(&draft, 1_764_000_000, "abc123", "example.test");
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
}
