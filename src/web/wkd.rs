//! The Web Key Directory (draft-koch-openpgp-webkey-service §3.1) on the web listener:
//! registered users' OpenPGP keys, binary, at the direct path (the domain is the request's
//! `Host`) and the advanced path (the domain in the path), and each local domain's
//! `policy` file. Public: no session, no CSRF, no cookie; only GET (and HEAD).
//!
//! Exposure: the path and `Host` come from anyone; the hash is checked to be 32 z-base-32
//! characters before a lookup, and every miss (unknown user, no key, a key that does not
//! carry the address, a domain not ours) is the same 404.

use axum::extract::{Path, State};
use axum::http::header::{self, HeaderMap};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use super::backend::BackendError;
use super::http::Shared;

/// The direct method's key path; `{hash}` is the hashed local part.
pub const DIRECT_KEY: &str = "/.well-known/openpgpkey/hu/{hash}";
/// The advanced method's key path (served on `openpgpkey.{domain}`).
pub const ADVANCED_KEY: &str = "/.well-known/openpgpkey/{domain}/hu/{hash}";
pub const DIRECT_POLICY: &str = "/.well-known/openpgpkey/policy";
pub const ADVANCED_POLICY: &str = "/.well-known/openpgpkey/{domain}/policy";

/// The z-base-32 alphabet a hashed local part is written in.
const ZBASE32: &str = "ybndrfg8ejkmcpqxot1uwisza345h769";

/// Is `hash` what `mailcrypt::wkd::hashed_local_part` makes: 32 z-base-32 characters (the
/// draft's clients send them lower case, as the alphabet is)?
pub fn is_hash(hash: &str) -> bool {
    hash.len() == 32 && hash.chars().all(|c| ZBASE32.contains(c))
}

/// The domain a request names: its `Host` (or the request target's authority) without
/// the port, lower case, without a trailing dot. `None` when there is none or it is not a
/// plausible name.
pub fn request_domain(headers: &HeaderMap, uri: &Uri) -> Option<String> {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.host()))?;
    domain_of_host(host)
}

/// `host[:port]` → the domain; an IP literal (bracketed or not) is no domain.
fn domain_of_host(host: &str) -> Option<String> {
    let host = host.trim();
    if host.starts_with('[') {
        return None;
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        Some(_) => return None,
        None => host,
    };
    clean_domain(name)
}

/// A domain from a path or a `Host`: lower case, trailing dot dropped, only the characters
/// of a DNS name (letters, digits, `-`, `.`), at most 253 of them.
pub fn clean_domain(name: &str) -> Option<String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    ok.then(|| name.to_ascii_lowercase())
}

fn missing() -> Response {
    (
        StatusCode::NOT_FOUND,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        ],
        "not found\n",
    )
        .into_response()
}

async fn key(app: &Shared, domain: Option<String>, hash: &str) -> Response {
    let Some(domain) = domain else {
        return missing();
    };
    if !is_hash(hash) || !app.backend.is_local_domain(&domain) {
        return missing();
    }
    match app.backend.wkd_key(domain, hash.to_string()).await {
        Ok(Some(bytes)) if !bytes.is_empty() => (
            [
                (header::CONTENT_TYPE, "application/octet-stream"),
                // The draft: "the server SHOULD set the Access-Control-Allow-Origin header
                // to *" so web clients may fetch keys.
                (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
            ],
            bytes,
        )
            .into_response(),
        Ok(_) => missing(),
        Err(BackendError::Unavailable) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        Err(_) => missing(),
    }
}

fn policy(app: &Shared, domain: Option<String>) -> Response {
    match domain {
        Some(domain) if app.backend.is_local_domain(&domain) => (
            [
                (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
            ],
            "",
        )
            .into_response(),
        _ => missing(),
    }
}

/// `GET /.well-known/openpgpkey/hu/{hash}` (direct: the domain is the `Host`).
pub async fn direct_key(
    State(app): State<Shared>,
    headers: HeaderMap,
    uri: Uri,
    Path(hash): Path<String>,
) -> Response {
    key(&app, request_domain(&headers, &uri), &hash).await
}

/// `GET /.well-known/openpgpkey/{domain}/hu/{hash}` (advanced).
pub async fn advanced_key(
    State(app): State<Shared>,
    Path((domain, hash)): Path<(String, String)>,
) -> Response {
    key(&app, clean_domain(&domain), &hash).await
}

/// `GET /.well-known/openpgpkey/policy` (direct).
pub async fn direct_policy(State(app): State<Shared>, headers: HeaderMap, uri: Uri) -> Response {
    policy(&app, request_domain(&headers, &uri))
}

/// `GET /.well-known/openpgpkey/{domain}/policy` (advanced).
pub async fn advanced_policy(State(app): State<Shared>, Path(domain): Path<String>) -> Response {
    policy(&app, clean_domain(&domain))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn hashes_are_32_zbase32_characters() {
        assert!(is_hash("kei1q4tipxxu1yj79k9kfukdhfy631xe"));
        assert!(is_hash(&crate::mailcrypt::wkd::hashed_local_part(
            "Joe.Doe"
        )));
        assert!(!is_hash("kei1q4tipxxu1yj79k9kfukdhfy631x"));
        assert!(!is_hash("KEI1Q4TIPXXU1YJ79K9KFUKDHFY631XE"));
        assert!(!is_hash("kei1q4tipxxu1yj79k9kfukdhfy631x0"));
        assert!(!is_hash("policy"));
    }

    #[test]
    fn the_domain_is_the_host_without_its_port() {
        let uri: Uri = "/.well-known/openpgpkey/policy".parse().unwrap();
        let host = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::HOST, HeaderValue::from_str(value).unwrap());
            request_domain(&headers, &uri)
        };
        assert_eq!(host("Example.TEST:8080").as_deref(), Some("example.test"));
        assert_eq!(host("example.test.").as_deref(), Some("example.test"));
        assert_eq!(host("example.test").as_deref(), Some("example.test"));
        assert_eq!(host("[::1]:80"), None);
        assert_eq!(host("exa mple.test"), None);
        assert_eq!(host("example.test:x"), None);
        assert_eq!(request_domain(&HeaderMap::new(), &uri), None);
        let absolute: Uri = "http://openpgpkey.example.test/x".parse().unwrap();
        assert_eq!(
            request_domain(&HeaderMap::new(), &absolute).as_deref(),
            Some("openpgpkey.example.test")
        );
    }
}
