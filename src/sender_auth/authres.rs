//! The `Authentication-Results` header field (RFC 8601) we write, and the removal of those
//! that arrive claiming to be ours (§5: a receiver must not trust, and should remove, a
//! field with its own authserv-id that it did not write).
//!
//! Exposure: every property value comes from the peer (addresses, HELO, `d=`, `s=`). A
//! value is written bare only when it is a plain domain or `local@domain` of safe
//! characters; anything else is a quoted-string with `"` and `\` escaped and everything
//! outside printable ASCII dropped, so no peer can end the field, add a result or open a
//! comment.

use super::report::AuthResult;

/// The result keyword (RFC 8601 §2.7).
pub fn keyword(result: AuthResult) -> &'static str {
    match result {
        AuthResult::None => "none",
        AuthResult::Pass => "pass",
        AuthResult::Fail => "fail",
        AuthResult::SoftFail => "softfail",
        AuthResult::Neutral => "neutral",
        AuthResult::TempError => "temperror",
        AuthResult::PermError => "permerror",
        AuthResult::Policy => "policy",
    }
}

/// One `method=result property=value …` clause.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Clause {
    pub method: &'static str,
    pub result: &'static str,
    /// (`ptype.property`, value as received).
    pub properties: Vec<(&'static str, String)>,
}

/// The complete field, CRLF-terminated, one clause per folded line.
pub fn header(authserv_id: &str, clauses: &[Clause]) -> String {
    let mut field = String::from("Authentication-Results: ");
    field.push_str(&value(authserv_id));
    if clauses.is_empty() {
        // RFC 8601 §2.2: no method was applied.
        field.push_str("; none");
    }
    for clause in clauses {
        field.push_str(";\r\n\t");
        field.push_str(clause.method);
        field.push('=');
        field.push_str(clause.result);
        for (property, text) in &clause.properties {
            field.push(' ');
            field.push_str(property);
            field.push('=');
            field.push_str(&value(text));
        }
    }
    field.push_str("\r\n");
    field
}

fn plain(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '+')
}

/// A property value (RFC 8601 §2.2 `pvalue`): bare when it is a domain or
/// `local-part@domain` of plain characters, otherwise a quoted-string.
pub fn value(text: &str) -> String {
    let bare = match text.rsplit_once('@') {
        Some((local, domain)) => {
            !domain.is_empty()
                && domain.chars().all(plain)
                && !local.is_empty()
                && local.chars().all(plain)
        }
        None => !text.is_empty() && text.chars().all(plain),
    };
    if bare {
        return text.to_string();
    }
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                quoted.push('\\');
                quoted.push(c);
            }
            ' '..='~' => quoted.push(c),
            _ => {}
        }
    }
    quoted.push('"');
    quoted
}

/// The authserv-id of an `Authentication-Results` field value: the first token after
/// comments and white space, up to `;`, white space or a comment.
fn authserv_id(value: &[u8]) -> &[u8] {
    let mut i = 0;
    loop {
        while i < value.len() && value[i].is_ascii_whitespace() {
            i += 1;
        }
        if i < value.len() && value[i] == b'(' {
            // A comment (RFC 5322 §3.2.2), nested, with quoted pairs.
            let mut depth = 0usize;
            while i < value.len() {
                match value[i] {
                    b'\\' => i += 1,
                    b'(' => depth += 1,
                    b')' => {
                        depth -= 1;
                        if depth == 0 {
                            i += 1;
                            break;
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            continue;
        }
        break;
    }
    let start = i.min(value.len());
    let mut end = start;
    while end < value.len() && !matches!(value[end], b';' | b'(' | b' ' | b'\t' | b'\r' | b'\n') {
        end += 1;
    }
    let id = &value[start..end];
    // A quoted authserv-id ("example.org") names the same server.
    id.strip_prefix(b"\"")
        .and_then(|id| id.strip_suffix(b"\""))
        .unwrap_or(id)
}

/// `message` (header section and body) without the `Authentication-Results` fields whose
/// authserv-id is `ours`, or `None` when there is none (the message is not copied).
pub fn remove_ours(message: &[u8], ours: &str) -> Option<Vec<u8>> {
    remove_fields(message, |name, value| {
        name.eq_ignore_ascii_case(b"Authentication-Results")
            && authserv_id(value).eq_ignore_ascii_case(ours.as_bytes())
    })
}

/// `message` without the header fields for which `drop(name, value)` holds, or `None` when
/// there is none. Every message passes here and almost none carries such a field: look
/// first, copy only when there is one.
pub(super) fn remove_fields(
    message: &[u8],
    drop: impl Fn(&[u8], &[u8]) -> bool,
) -> Option<Vec<u8>> {
    let header_end = header_section_end(message);
    let headers = &message[..header_end];
    let dropped = |field: &[u8]| {
        let Some(colon) = memchr::memchr(b':', field) else {
            return false;
        };
        drop(field[..colon].trim_ascii(), &field[colon + 1..])
    };
    if !fields(headers).any(dropped) {
        return None;
    }
    let mut kept = Vec::with_capacity(message.len());
    for field in fields(headers).filter(|f| !dropped(f)) {
        kept.extend_from_slice(field);
    }
    kept.extend_from_slice(&message[header_end..]);
    Some(kept)
}

/// Whether `message`'s header section has a field named `name` (any case).
pub(super) fn has_field(message: &[u8], name: &str) -> bool {
    let headers = &message[..header_section_end(message)];
    fields(headers).any(|field| {
        memchr::memchr(b':', field).is_some_and(|colon| {
            field[..colon]
                .trim_ascii()
                .eq_ignore_ascii_case(name.as_bytes())
        })
    })
}

/// The fields of a header section, each with its folded lines and line ending; a field runs
/// to the line break not followed by white space (unfolding, RFC 5322 §2.2.3).
fn fields(headers: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut start = 0;
    std::iter::from_fn(move || {
        if start >= headers.len() {
            return None;
        }
        let mut end = start;
        loop {
            match memchr::memchr(b'\n', &headers[end..]) {
                Some(at) => {
                    end += at + 1;
                    if end >= headers.len() || !matches!(headers[end], b' ' | b'\t') {
                        break;
                    }
                }
                None => {
                    end = headers.len();
                    break;
                }
            }
        }
        let field = &headers[start..end];
        start = end;
        Some(field)
    })
}

/// Where the header section ends: after the last field line, before the empty line (or
/// the whole message when there is no body).
fn header_section_end(message: &[u8]) -> usize {
    if message.starts_with(b"\r\n") || message.starts_with(b"\n") {
        return 0;
    }
    let mut at = 0;
    while let Some(nl) = memchr::memchr(b'\n', &message[at..]) {
        let next = at + nl + 1;
        if message[next..].starts_with(b"\r\n") || message[next..].starts_with(b"\n") {
            return next;
        }
        at = next;
    }
    message.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_cannot_inject_syntax() {
        assert_eq!(value("example.com"), "example.com");
        assert_eq!(value("a.b+c@example.com"), "a.b+c@example.com");
        assert_eq!(value("x;dkim=pass"), "\"x;dkim=pass\"");
        assert_eq!(value("a\r\nX-Evil: 1"), "\"aX-Evil: 1\"");
        assert_eq!(value("q\"uo\\te"), "\"q\\\"uo\\\\te\"");
        assert_eq!(value("(comment)"), "\"(comment)\"");
        assert_eq!(value(""), "\"\"");
        assert_eq!(value("\"@x"), "\"\\\"@x\"");
    }

    #[test]
    fn header_is_folded_and_terminated() {
        let field = header(
            "mx.example.org",
            &[
                Clause {
                    method: "spf",
                    result: "pass",
                    properties: vec![("smtp.mailfrom", "a@example.com".into())],
                },
                Clause {
                    method: "dmarc",
                    result: "fail",
                    properties: vec![("header.from", "example.com".into())],
                },
            ],
        );
        assert_eq!(
            field,
            "Authentication-Results: mx.example.org;\r\n\tspf=pass smtp.mailfrom=a@example.com;\r\n\tdmarc=fail header.from=example.com\r\n"
        );
        assert_eq!(header("mx", &[]), "Authentication-Results: mx; none\r\n");
    }

    #[test]
    fn removes_only_our_authserv_id() {
        let message = b"Received: x\r\nAuthentication-Results: (c) MX.example.org;\r\n dkim=pass\r\nAuthentication-Results: other.example; spf=pass\r\nauthentication-results:mx.example.org; none\r\nSubject: hi\r\n\r\nAuthentication-Results: mx.example.org; in the body\r\n";
        let kept = remove_ours(message, "mx.example.org").expect("removed");
        assert_eq!(
            kept,
            b"Received: x\r\nAuthentication-Results: other.example; spf=pass\r\nSubject: hi\r\n\r\nAuthentication-Results: mx.example.org; in the body\r\n"
        );
        assert_eq!(remove_ours(&kept, "mx.example.org"), None);
        assert_eq!(remove_ours(b"", "mx"), None);
        assert_eq!(
            remove_ours(b"\r\nAuthentication-Results: mx; x\r\n", "mx"),
            None
        );
        // A prefix of our id is someone else's.
        assert_eq!(
            remove_ours(
                b"Authentication-Results: mx.example.org.evil; x\r\n\r\n",
                "mx.example.org"
            ),
            None
        );
        assert_eq!(
            remove_ours(
                b"Authentication-Results: \"mx\"; x\r\nA: b\r\n\r\nbody",
                "mx"
            )
            .as_deref(),
            Some(&b"A: b\r\n\r\nbody"[..])
        );
    }

    #[test]
    fn odd_comments_do_not_panic() {
        for text in [&b"("[..], b"\\", b"(()", b"(\\", b")", b"((a) b) id;"] {
            let _ = authserv_id(text);
        }
        assert_eq!(authserv_id(b"((a) b) id;"), b"id");
    }
}
