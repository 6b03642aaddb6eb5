//! Web sessions of users homed on another node (`[cluster]`), proxied to that node over the
//! cluster listener's mutual TLS.
//!
//! The design a browser cannot tell from a local session: the login is checked here first
//! (this node's limits see the real client, and the password is hashed here only); then
//! this node asks the home node for a session over the cluster listener's mutual TLS (the
//! proxied-login conversation, [`crate::cluster::login_wire`], as for POP3 and IMAP: the
//! user's name, no password) and hands the browser the home node's session cookie plus
//! `relay_home=NODE`. Every later request carrying that cookie is forwarded as it is
//! (method, path, headers, streamed body) and the home node's response comes back as it
//! is; the home node checks the session and its CSRF tokens itself, so a forged
//! `relay_home` gains nothing. Its logout expires both cookies.
//!
//! **How a request travels.** To the home node's cluster listener (the node table's
//! `cluster` address), TLS with this node's certificate, ALPN
//! [`login_wire::WEB_ALPN`] (`relay-web`): the home node must present a node certificate
//! of the cluster CA for the address dialled, and it serves the HTTP/1.1 inside as one of
//! its web server's connections (`server::web_in`). Session cookies and mail bodies never
//! cross between nodes in clear; the home node's public web listener plays no part (the
//! node table's `web` address is not used). One connection per forwarded request (no
//! pool): simple, and a home node that is down is a 503 page at once. Bounds: the connect
//! with its TLS handshake, and then the response head, each within [`UPSTREAM_TIMEOUT`];
//! the home node's web server applies its own header timeout, body limit and bound on
//! connections to what arrives (as on its public listener), and this node its own to
//! what the browser sends. A home node that does not offer `relay-web` (one of a version
//! before it) is a 503 page too.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;

use std::sync::Arc;

use super::login_proxy::LoginProxy;
use crate::cluster::login_wire::{self, FrontLogin, FrontStep};
use crate::web::http::HOME_COOKIE;

/// Connecting to the home node and its response head must each come within this.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a request could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum WebProxyError {
    #[error("the node table has no cluster address for node {0}")]
    NoAddress(String),
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("HTTP: {0}")]
    Http(String),
    #[error("no answer within {UPSTREAM_TIMEOUT:?}")]
    Timeout,
    #[error("this node has no cluster certificate (cluster.cert, key, ca)")]
    NoTls,
    #[error("TLS: {0}")]
    Tls(String),
    #[error("the home node closed the connection")]
    Closed,
    #[error("the home node refused the login: {0}")]
    Refused(login_wire::Refusal),
    #[error("unexpected answer from the home node: {0}")]
    Protocol(login_wire::FrameError),
}

/// Sends one request to the cluster listener at `addr` on a connection of its own, inside
/// the cluster's mutual TLS (`tls` asks for [`login_wire::WEB_ALPN`]).
async fn send(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    request: axum::http::Request<Body>,
) -> Result<axum::http::Response<hyper::body::Incoming>, WebProxyError> {
    let stream = tokio::time::timeout(UPSTREAM_TIMEOUT, connect(addr, tls, login_wire::WEB_ALPN))
        .await
        .map_err(|_| WebProxyError::Timeout)??;
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

/// A TLS connection to the cluster listener at `addr` that agreed on `alpn`. The peer's
/// certificate must chain to the cluster CA and name the address dialled (the node
/// table's).
async fn connect(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    alpn: &[u8],
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, WebProxyError> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| WebProxyError::Connect(e.to_string()))?;
    let _ = stream.set_nodelay(true);
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, stream)
        .await
        .map_err(|e| WebProxyError::Tls(e.to_string()))?;
    if stream.get_ref().1.alpn_protocol() != Some(alpn) {
        return Err(WebProxyError::Tls(format!(
            "the home node does not offer {}",
            String::from_utf8_lossy(alpn)
        )));
    }
    Ok(stream)
}

/// The home node's cluster address and the TLS to reach it, if `node` is another node.
fn cluster_address(
    proxy: &LoginProxy,
    node: &str,
) -> Result<Option<(SocketAddr, Arc<rustls::ClientConfig>)>, WebProxyError> {
    let Some(home) = proxy.node(node) else {
        return Ok(None);
    };
    let addr = home
        .cluster
        .ok_or_else(|| WebProxyError::NoAddress(node.to_string()))?;
    let tls = proxy.web_tls().ok_or(WebProxyError::NoTls)?;
    Ok(Some((addr, tls)))
}

/// Starts a web session for `user` (whose password was checked here) at `node`, over the
/// cluster listener's mutual TLS (the proxied-login conversation,
/// [`crate::cluster::login_wire`], `protocol: web`): no password crosses and the home node
/// hashes none. `client` is the browser's address (for the home node's log). The home
/// node's session id.
pub async fn login(
    proxy: &LoginProxy,
    node: &str,
    user: &str,
    client: SocketAddr,
) -> Result<String, WebProxyError> {
    let addr = proxy
        .node(node)
        .and_then(|home| home.cluster)
        .ok_or_else(|| WebProxyError::NoAddress(node.into()))?;
    let tls = proxy.login_tls().ok_or(WebProxyError::NoTls)?;
    let request = login_wire::Request {
        protocol: login_wire::Protocol::Web,
        user: user.to_string(),
        client,
        from: proxy.this_node().to_string(),
        version: login_wire::VERSION,
    };
    tokio::time::timeout(UPSTREAM_TIMEOUT, ask(addr, tls, &request))
        .await
        .map_err(|_| WebProxyError::Timeout)?
}

async fn ask(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    request: &login_wire::Request,
) -> Result<String, WebProxyError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = connect(addr, tls, login_wire::ALPN).await?;
    let (frame, mut machine) = FrontLogin::start(request, "");
    stream
        .write_all(&frame)
        .await
        .map_err(|e| WebProxyError::Connect(e.to_string()))?;
    stream
        .flush()
        .await
        .map_err(|e| WebProxyError::Connect(e.to_string()))?;
    let mut buffer = vec![0u8; 4096];
    loop {
        let n = stream
            .read(&mut buffer)
            .await
            .map_err(|e| WebProxyError::Connect(e.to_string()))?;
        if n == 0 {
            return Err(WebProxyError::Closed);
        }
        // The machine bounds what it keeps (login_wire::ANSWER_MAX).
        match machine.feed(&buffer[..n]) {
            FrontStep::Wait => {}
            FrontStep::WebSession(id) => {
                let _ = stream.shutdown().await;
                return Ok(id);
            }
            FrontStep::Refused(reason) => return Err(WebProxyError::Refused(reason)),
            FrontStep::Failed(error) => return Err(WebProxyError::Protocol(error)),
            FrontStep::Ready { .. } => {
                return Err(WebProxyError::Protocol(login_wire::FrameError::Invalid(
                    "a mail answer to a web login".into(),
                )))
            }
        }
    }
}

/// Forwards `request` to `node` and returns its response; the request back when `node` is
/// not another node of the cluster.
pub async fn forward(
    proxy: &LoginProxy,
    node: &str,
    request: Request,
) -> Result<Response, Request> {
    let (addr, tls) = match cluster_address(proxy, node) {
        Ok(Some(found)) => found,
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
    match send(addr, tls, upstream).await {
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
}
