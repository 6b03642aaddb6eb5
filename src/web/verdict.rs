//! The signature verdict shown next to the sender: read from our own
//! `Authentication-Results` field (RFC 8601), the only one trusted. The relay removes
//! arriving fields that claim its authserv-id and writes its own above its `Received`
//! field, so only fields above the first `Received` field are read, and only one naming our
//! authserv-id; its `smime` (RFC 7281) or OpenPGP ([`openpgp::METHOD`]) result is shown.
//!
//! Exposure: the message is a peer's; every value read here is shown through the template,
//! which escapes it, and is cut to a bounded length.

use crate::mailcrypt::openpgp;

/// Longest signer text shown.
const SIGNER_MAX: usize = 200;

/// What the read page shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    /// "Signed by alice@example.org — verified", …
    pub text: String,
    /// `good`, `bad` or `unknown`: the CSS class.
    pub class: &'static str,
}

/// The verdict on `raw`'s signature, when our field has one.
pub fn of(raw: &[u8], authserv_id: &str) -> Option<Signature> {
    let mut found = None;
    for value in our_fields(raw, authserv_id) {
        for resinfo in split_outside_quotes(&value, ';').into_iter().skip(1) {
            if let Some(result) = parse_resinfo(&resinfo) {
                found = Some(result);
            }
        }
    }
    let r = found?;
    let signer = r
        .signer
        .map(|s| s.chars().take(SIGNER_MAX).collect::<String>());
    let by = |signer: &Option<String>| match signer {
        Some(s) if !s.is_empty() => format!("Signed by {s}"),
        _ => "Signed".to_string(),
    };
    let (text, class) = match r.result.as_str() {
        "pass" => (format!("{} — verified", by(&signer)), "good"),
        "fail" => (format!("{} — signature does not verify", by(&None)), "bad"),
        "policy" => (format!("{} — untrusted certificate", by(&signer)), "bad"),
        "neutral" => (format!("{} — signer unknown", by(&None)), "unknown"),
        "temperror" => (
            format!("{} — signature not checked (try again later)", by(&None)),
            "unknown",
        ),
        "permerror" => (format!("{} — malformed signature", by(&None)), "bad"),
        _ => return None,
    };
    Some(Signature { text, class })
}

struct Result {
    result: String,
    signer: Option<String>,
}

/// One `method=result reason=… ptype.prop=value …` clause, when it is a signature check.
fn parse_resinfo(resinfo: &str) -> Option<Result> {
    let words = split_outside_quotes(resinfo, ' ');
    let mut words = words.iter().map(|w| w.trim()).filter(|w| !w.is_empty());
    let (method, result) = words.next()?.split_once('=')?;
    let signer_property = if method.eq_ignore_ascii_case("smime") {
        "body.smime-identifier"
    } else if method.eq_ignore_ascii_case(openpgp::METHOD) {
        "header.from"
    } else {
        return None;
    };
    let mut signer = None;
    for word in words {
        if let Some((name, value)) = word.split_once('=') {
            if name.eq_ignore_ascii_case(signer_property) {
                signer = Some(unquote(value));
            }
        }
    }
    Some(Result {
        result: result.to_ascii_lowercase(),
        signer,
    })
}

/// The values of the `Authentication-Results` fields above the first `Received` field
/// whose authserv-id is ours, unfolded, comments removed.
fn our_fields(raw: &[u8], authserv_id: &str) -> Vec<String> {
    let mut found = Vec::new();
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 2)
        .unwrap_or(raw.len());
    let head = String::from_utf8_lossy(&raw[..head_end]);
    let mut fields: Vec<String> = Vec::new();
    for line in head.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = fields.last_mut() {
                last.push(' ');
                last.push_str(line.trim());
            }
        } else if !line.is_empty() {
            fields.push(line.to_string());
        }
    }
    for field in fields {
        let Some((name, value)) = field.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name.eq_ignore_ascii_case("Received") {
            break;
        }
        if !name.eq_ignore_ascii_case("Authentication-Results") {
            continue;
        }
        let value = strip_comments(value);
        let id = value
            .trim_start()
            .split([';', ' ', '\t'])
            .next()
            .unwrap_or("")
            .trim_matches('"');
        if id.eq_ignore_ascii_case(authserv_id) {
            found.push(value);
        }
    }
    found
}

/// `text` without RFC 5322 comments (outside quoted strings).
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut depth = 0usize;
    let mut quoted = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let next = chars.next();
                if depth == 0 {
                    out.push(c);
                    out.extend(next);
                }
            }
            '"' if depth == 0 => {
                quoted = !quoted;
                out.push(c);
            }
            '(' if !quoted => depth += 1,
            ')' if !quoted && depth > 0 => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

/// Splits at `separator` outside quoted strings.
fn split_outside_quotes(text: &str, separator: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut quoted = false;
    let mut escaped = false;
    for c in text.chars() {
        let current = parts.last_mut();
        let Some(current) = current else { break };
        if escaped {
            current.push(c);
            escaped = false;
        } else if c == '\\' && quoted {
            current.push(c);
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
            current.push(c);
        } else if c == separator && !quoted {
            parts.push(String::new());
        } else {
            current.push(c);
        }
    }
    parts
}

/// A property value without its quotes and quoted pairs.
fn unquote(value: &str) -> String {
    let Some(inner) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) else {
        return value.to_string();
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            out.extend(chars.next());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_field_only() {
        let raw = b"Authentication-Results: other.test; smime=pass body.smime-identifier=evil@x\r\n\
Authentication-Results: mx.test (us);\r\n\tspf=pass smtp.mailfrom=a@b;\r\n\tsmime=pass reason=\"ok; fine\" body.smime-part=1 body.smime-identifier=alice@example.org\r\n\
Received: from x by mx.test\r\n\
Authentication-Results: mx.test; smime=fail\r\n\
From: a@b\r\n\r\nbody";
        let v = of(raw, "mx.test").unwrap();
        assert_eq!(v.text, "Signed by alice@example.org — verified");
        assert_eq!(v.class, "good");
        assert_eq!(
            of(raw, "other.test").unwrap().text,
            "Signed by evil@x — verified"
        );
        assert_eq!(of(raw, "nobody.test"), None);
    }

    #[test]
    fn each_result_has_its_words() {
        let field = |clause: &str| {
            format!("Authentication-Results: mx;\r\n\t{clause}\r\nReceived: x\r\n\r\n")
        };
        for (clause, text) in [
            ("smime=fail reason=\"digest\" body.smime-part=1", "Signed — signature does not verify"),
            ("smime=policy reason=\"no anchor\" body.smime-part=1 body.smime-identifier=\"<b>@x\"", "Signed by <b>@x — untrusted certificate"),
            ("x-openpgp=neutral reason=\"no key\" header.from=b@example.net", "Signed — signer unknown"),
            ("x-openpgp=pass header.from=b@example.net", "Signed by b@example.net — verified"),
            ("x-openpgp=temperror reason=\"timeout\" header.from=b@example.net", "Signed — signature not checked (try again later)"),
        ] {
            let clause = clause.replace("x-openpgp", openpgp::METHOD);
            assert_eq!(of(field(&clause).as_bytes(), "mx").unwrap().text, text, "{clause}");
        }
        assert_eq!(of(field("dkim=pass header.d=x").as_bytes(), "mx"), None);
        assert_eq!(of(b"", "mx"), None);
        assert_eq!(
            of(b"Authentication-Results: mx; smime=pass \"(\\", "mx")
                .unwrap()
                .class,
            "good"
        );
    }
}
