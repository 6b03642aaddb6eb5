//! Web sessions of users homed on another node (`[cluster]`), proxied to that node's web
//! listener (the node table's `web` address, plain HTTP/1.1 between nodes).
//!
//! The design a browser cannot tell from a local session: the login is checked here first
//! (this node's limits see the real client); then this node logs in at the home node with
//! the same credentials (one POST: the login form's CSRF check is a double submit, so this
//! node sends a token of its own in both the form and the cookie) and hands the browser the
//! home node's session cookie plus `relay_home=NODE`. Every later request carrying that
//! cookie is forwarded as it is (method, path, headers, streamed body) and the home node's
//! response comes back as it is; the home node checks the session and its CSRF tokens
//! itself, so a forged `relay_home` gains nothing. Its logout expires both cookies. One
//! connection per forwarded request (no pool): simple, and a home node that is down is a
//! 503 page at once.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;

use super::login_proxy::LoginProxy;
use crate::web::http::{HOME_COOKIE, LOGIN_COOKIE, SESSION_COOKIE};

/// Connecting to the home node and its response head must each come within this.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a request could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum WebProxyError {
    #[error("the node table has no web address for node {0}")]
    NoAddress(String),
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("HTTP: {0}")]
    Http(String),
    #[error("no answer within {UPSTREAM_TIMEOUT:?}")]
    Timeout,
    #[error("the home node refused the login (status {0})")]
    Refused(u16),
}

/// Sends one request to `addr` on a connection of its own.
async fn send(
    addr: SocketAddr,
    request: axum::http::Request<Body>,
) -> Result<axum::http::Response<hyper::body::Incoming>, WebProxyError> {
    let stream = tokio::time::timeout(UPSTREAM_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| WebProxyError::Timeout)?
        .map_err(|e| WebProxyError::Connect(e.to_string()))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| WebProxyError::Http(e.to_string()))?;
    // Drives the connection until the response body is read (or dropped).
    tokio::spawn(async move {
        let _ = connection.await;
    });
    tokio::time::timeout(UPSTREAM_TIMEOUT, sender.send_request(request))
        .await
        .map_err(|_| WebProxyError::Timeout)?
        .map_err(|e| WebProxyError::Http(e.to_string()))
}

/// The home node's web address, if `node` is another node with one.
fn web_address(proxy: &LoginProxy, node: &str) -> Result<Option<SocketAddr>, WebProxyError> {
    match proxy.node(node) {
        None => Ok(None),
        Some(home) => home
            .web
            .map(Some)
            .ok_or_else(|| WebProxyError::NoAddress(node.to_string())),
    }
}

/// The login POST for the home node: user, password and a CSRF token of our own, sent in
/// both the form and the login cookie.
fn login_request(addr: SocketAddr, user: &str, password: &str) -> axum::http::Request<Body> {
    let token = crate::web::session::random_token();
    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("csrf", &token)
        .append_pair("user", user)
        .append_pair("password", password)
        .finish();
    let mut request = axum::http::Request::new(Body::from(form));
    *request.method_mut() = axum::http::Method::POST;
    *request.uri_mut() = axum::http::Uri::from_static("/login");
    let headers = request.headers_mut();
    if let Ok(host) = HeaderValue::from_str(&addr.to_string()) {
        headers.insert(header::HOST, host);
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    if let Ok(cookie) = HeaderValue::from_str(&format!("{LOGIN_COOKIE}={token}")) {
        headers.insert(header::COOKIE, cookie);
    }
    request
}

/// The session cookie's value in a login response, if it set one.
fn session_cookie(response: &axum::http::Response<hyper::body::Incoming>) -> Option<String> {
    let prefix = format!("{SESSION_COOKIE}=");
    response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.strip_prefix(prefix.as_str()))
        .map(|v| v.split(';').next().unwrap_or("").trim())
        .find(|v| !v.is_empty())
        .map(str::to_string)
}

/// Logs `user` in at `node`: the home node's session id.
pub async fn login(
    proxy: &LoginProxy,
    node: &str,
    user: &str,
    password: &str,
) -> Result<String, WebProxyError> {
    let addr = web_address(proxy, node)?.ok_or_else(|| WebProxyError::NoAddress(node.into()))?;
    let response = send(addr, login_request(addr, user, password)).await?;
    // A successful login is a redirect to the mailbox with the session cookie.
    match session_cookie(&response) {
        Some(id) if response.status().is_redirection() => Ok(id),
        _ => Err(WebProxyError::Refused(response.status().as_u16())),
    }
}

/// Forwards `request` to `node` and returns its response; the request back when `node` is
/// not another node of the cluster.
pub async fn forward(
    proxy: &LoginProxy,
    node: &str,
    request: Request,
) -> Result<Response, Request> {
    let addr = match web_address(proxy, node) {
        Ok(Some(addr)) => addr,
        Ok(None) => return Err(request),
        Err(error) => return Ok(unavailable(node, &error)),
    };
    let (mut parts, body) = request.into_parts();
    // Only the path and query travel; the connection is this node's own.
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    parts.uri = match path.parse() {
        Ok(uri) => uri,
        Err(_) => return Ok(StatusCode::BAD_REQUEST.into_response()),
    };
    parts.version = axum::http::Version::HTTP_11;
    parts.extensions = axum::http::Extensions::new();
    for hop in [
        header::CONNECTION,
        header::UPGRADE,
        header::TE,
        header::TRAILER,
    ] {
        parts.headers.remove(hop);
    }
    if let Ok(host) = HeaderValue::from_str(&addr.to_string()) {
        parts.headers.insert(header::HOST, host);
    }
    // The home node serves the session itself: the home cookie is this node's business
    // (the home node would take it for a stale one and expire it).
    let cookies = without_home_cookie(&parts.headers);
    parts.headers.remove(header::COOKIE);
    if let Some(value) = cookies.and_then(|c| HeaderValue::from_str(&c).ok()) {
        parts.headers.insert(header::COOKIE, value);
    }
    let upstream = axum::http::Request::from_parts(parts, body);
    match send(addr, upstream).await {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            parts.headers.remove(header::CONNECTION);
            Ok(Response::from_parts(parts, Body::new(body)))
        }
        Err(error) => Ok(unavailable(node, &error)),
    }
}

/// The request's cookies but [`HOME_COOKIE`], as one `Cookie` value (`None`: none left).
fn without_home_cookie(headers: &axum::http::HeaderMap) -> Option<String> {
    let kept: Vec<&str> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .filter(|pair| pair.split_once('=').map_or(*pair, |(name, _)| name) != HOME_COOKIE)
        .collect();
    (!kept.is_empty()).then(|| kept.join("; "))
}

fn unavailable(node: &str, error: &WebProxyError) -> Response {
    tracing::warn!(target: "relay::web", home = %crate::logsafe::Safe(node), %error, "proxied request failed: home node unavailable");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "Your mailbox is not reachable right now. Try again in a moment.\n",
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_login_post_carries_one_token_in_form_and_cookie() {
        let addr: SocketAddr = "127.0.0.3:8080".parse().unwrap();
        let request = login_request(addr, "carol", "p&ss word");
        assert_eq!(request.method(), axum::http::Method::POST);
        assert_eq!(request.uri(), "/login");
        let cookie = request.headers()[header::COOKIE].to_str().unwrap();
        let token = cookie.strip_prefix("relay_login=").unwrap().to_string();
        assert!(!token.is_empty());
        let body = futures_body(request.into_body());
        let pairs: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
        assert_eq!(
            pairs,
            vec![
                ("csrf".into(), token),
                ("user".into(), "carol".into()),
                ("password".into(), "p&ss word".into()),
            ]
        );
    }

    #[test]
    fn the_home_cookie_stays_here() {
        let mut headers = axum::http::HeaderMap::new();
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("relay_home=b; relay_session=abc"),
        );
        headers.append(header::COOKIE, HeaderValue::from_static("x=1"));
        assert_eq!(
            without_home_cookie(&headers).as_deref(),
            Some("relay_session=abc; x=1")
        );
        let mut only = axum::http::HeaderMap::new();
        only.insert(header::COOKIE, HeaderValue::from_static("relay_home=b"));
        assert_eq!(without_home_cookie(&only), None);
    }

    fn futures_body(body: Body) -> Vec<u8> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime
            .block_on(axum::body::to_bytes(body, 1 << 16))
            .unwrap()
            .to_vec()
    }
}
