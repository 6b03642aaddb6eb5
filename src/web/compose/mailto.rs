//! `mailto:` URLs (RFC 6068), as a link or a browser's registered mail handler passes them:
//! the addresses of the path and of `to=`, and the `cc`, `bcc`, `subject` and `body` fields.

/// The fields a `mailto:` URL fills (empty where it says nothing).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mailto {
    pub to: String,
    pub cc: String,
    pub bcc: String,
    pub subject: String,
    pub body: String,
}

/// Parses `url` (with its scheme, any case). Percent-escapes are decoded as UTF-8 ('+' is a
/// plus, not a space, in RFC 6068); unknown fields are ignored.
pub fn parse(url: &str) -> Mailto {
    let rest = if url.len() >= 7 && url[..7].eq_ignore_ascii_case("mailto:") {
        &url[7..]
    } else {
        url
    };
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut out = Mailto::default();
    let mut to: Vec<String> = vec![percent_decode(path)];
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value);
        let add = |field: &mut String, value: String| {
            if !field.is_empty() && !value.is_empty() {
                field.push_str(", ");
            }
            field.push_str(&value);
        };
        match percent_decode(key).to_ascii_lowercase().as_str() {
            "to" => to.push(value),
            "cc" => add(&mut out.cc, value),
            "bcc" => add(&mut out.bcc, value),
            "subject" => out.subject = value,
            "body" => out.body = value,
            _ => {}
        }
    }
    out.to = to
        .into_iter()
        .filter(|t| !t.is_empty())
        .collect::<Vec<_>>()
        .join(", ");
    out
}

/// `%XX` escapes decoded (invalid UTF-8 replaced); '+' stays '+'.
pub fn percent_decode(text: &str) -> String {
    form_urlencoded::parse(format!("x={}", text.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_6068_examples() {
        let m = parse("mailto:chris@example.com");
        assert_eq!(m.to, "chris@example.com");
        let m = parse("mailto:infobot@example.com?subject=current-issue");
        assert_eq!(m.subject, "current-issue");
        let m = parse(
            "mailto:list@example.org?cc=a@example.org&body=send%20current-issue%0D%0Asend%20index",
        );
        assert_eq!(m.cc, "a@example.org");
        assert_eq!(m.body, "send current-issue\r\nsend index");
        let m = parse("mailto:?to=joe@example.com&cc=bob@example.com&bcc=x@example.com&body=hello");
        assert_eq!(m.to, "joe@example.com");
        assert_eq!(m.bcc, "x@example.com");
        let m = parse("MAILTO:a@example.com,b@example.com?to=c@example.com&subject=1+1%3D2");
        assert_eq!(m.to, "a@example.com,b@example.com, c@example.com");
        assert_eq!(m.subject, "1+1=2");
        let m = parse("mailto:user@example.org?subject=caf%C3%A9");
        assert_eq!(m.subject, "caf\u{e9}");
    }
}
