//! The admin client: one HTTP request to a running relay's admin listener (`relay stat`,
//! `relay queue ...`). Plain HTTP to a loopback address: no TLS, no proxy (an `HTTP_PROXY`
//! in the environment is ignored), no redirects, every status returned as a value.

use std::net::SocketAddr;
use std::time::Duration;

/// Largest response body read (a `/metrics` page of many destinations stays far below).
pub const RESPONSE_MAX: u64 = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum AdminClientError {
    /// Nothing listens there: the relay is not running (or not with this config).
    #[error("no relay is running with its admin listener on {0} (connection refused)")]
    NotRunning(SocketAddr),
    #[error("the relay at {addr} did not answer within {}", humantime::format_duration(*timeout))]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("request to the relay at {addr} failed: {message}")]
    Failed { addr: SocketAddr, message: String },
}

/// Sends `method path_and_query` (no body) and returns the status and body.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path_and_query: &str,
    timeout: Duration,
) -> Result<(u16, Vec<u8>), AdminClientError> {
    send(addr, method, path_and_query, None, timeout)
}

/// Like [`request`], with a request body.
pub fn request_with_body(
    addr: SocketAddr,
    method: &str,
    path_and_query: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<(u16, Vec<u8>), AdminClientError> {
    send(addr, method, path_and_query, Some(body), timeout)
}

fn send(
    addr: SocketAddr,
    method: &str,
    path_and_query: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<(u16, Vec<u8>), AdminClientError> {
    let failed = |message: String| AdminClientError::Failed { addr, message };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .proxy(None)
        .max_redirects(0)
        .build()
        .into();
    let path = if path_and_query.starts_with('/') {
        path_and_query.to_string()
    } else {
        format!("/{path_and_query}")
    };
    let builder = ureq::http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    let response = match body {
        Some(body) => builder
            .body(body)
            .map_err(|e| failed(e.to_string()))
            .and_then(|r| agent.run(r).map_err(|e| classify(addr, timeout, e))),
        None => builder
            .body(ureq::SendBody::none())
            .map_err(|e| failed(e.to_string()))
            .and_then(|r| agent.run(r).map_err(|e| classify(addr, timeout, e))),
    };
    let mut response = response?;
    let status = response.status().as_u16();
    let bytes = response
        .body_mut()
        .with_config()
        .limit(RESPONSE_MAX)
        .read_to_vec()
        .map_err(|e| classify(addr, timeout, e))?;
    Ok((status, bytes))
}

fn classify(addr: SocketAddr, timeout: Duration, error: ureq::Error) -> AdminClientError {
    match error {
        ureq::Error::ConnectionFailed => AdminClientError::NotRunning(addr),
        ureq::Error::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            AdminClientError::NotRunning(addr)
        }
        ureq::Error::Timeout(_) => AdminClientError::Timeout { addr, timeout },
        other => AdminClientError::Failed {
            addr,
            message: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_port_means_not_running() {
        // Bind then drop: the port is free and nothing listens on it.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        let err = request(addr, "GET", "/stat", Duration::from_secs(5)).expect_err("refused");
        assert!(
            matches!(err, AdminClientError::NotRunning(a) if a == addr),
            "{err:?}"
        );
        assert!(err.to_string().contains("no relay is running"), "{err}");
    }

    #[test]
    fn a_silent_server_times_out() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let err = request(addr, "GET", "/stat", Duration::from_millis(300)).expect_err("timeout");
        assert!(matches!(err, AdminClientError::Timeout { .. }), "{err:?}");
        drop(listener);
    }
}
