//! The admin client: one HTTP/1.1 request to a running relay's admin endpoint (`relay stat`,
//! `relay queue ...`), over its Unix socket or a loopback TCP address. Plain HTTP written
//! here (ureq and its kin speak TCP only): `Connection: close`, no proxy, no redirects, the
//! response head parsed by `httparse`, a body by `Content-Length`, chunks or the end of the
//! stream, at most [`RESPONSE_MAX`] bytes; every status returned as a value.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Largest response body read (a `/metrics` page of many destinations stays far below).
pub const RESPONSE_MAX: u64 = 64 * 1024 * 1024;

/// Largest response head read.
const HEAD_MAX: usize = 64 * 1024;

/// Where the admin endpoint listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Socket(PathBuf),
    Tcp(SocketAddr),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Socket(path) => write!(f, "{}", path.display()),
            Endpoint::Tcp(addr) => write!(f, "{addr}"),
        }
    }
}

impl From<SocketAddr> for Endpoint {
    fn from(addr: SocketAddr) -> Endpoint {
        Endpoint::Tcp(addr)
    }
}

impl From<PathBuf> for Endpoint {
    fn from(path: PathBuf) -> Endpoint {
        Endpoint::Socket(path)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AdminClientError {
    /// Nothing listens there: the relay is not running (or not with this config).
    #[error("no relay is running with its admin endpoint at {0} (nothing listens there)")]
    NotRunning(Endpoint),
    #[error("{0}: permission denied (the admin socket is the relay user's: run this as that user or root)")]
    Denied(Endpoint),
    #[error("the relay at {endpoint} did not answer within {}", humantime::format_duration(*timeout))]
    Timeout {
        endpoint: Endpoint,
        timeout: Duration,
    },
    #[error("request to the relay at {endpoint} failed: {message}")]
    Failed { endpoint: Endpoint, message: String },
}

/// One request. `json` is sent as the body with `Content-Type: application/json`.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    pub method: &'a str,
    pub target: &'a str,
    pub json: Option<&'a [u8]>,
    /// `Authorization: Bearer <token>` (the TCP listener's routes other than `/metrics`).
    pub token: Option<&'a str>,
    pub timeout: Duration,
}

impl<'a> Call<'a> {
    pub fn get(target: &'a str, timeout: Duration) -> Call<'a> {
        Call {
            method: "GET",
            target,
            json: None,
            token: None,
            timeout,
        }
    }

    pub fn post(target: &'a str, json: &'a [u8], timeout: Duration) -> Call<'a> {
        Call {
            method: "POST",
            target,
            json: Some(json),
            token: None,
            timeout,
        }
    }
}

/// Sends `method path_and_query` (no body) and returns the status and body.
pub fn request(
    endpoint: impl Into<Endpoint>,
    method: &str,
    path_and_query: &str,
    timeout: Duration,
) -> Result<(u16, Vec<u8>), AdminClientError> {
    call(
        &endpoint.into(),
        &Call {
            method,
            target: path_and_query,
            json: None,
            token: None,
            timeout,
        },
    )
}

/// Like [`request`], with a JSON request body.
pub fn request_with_body(
    endpoint: impl Into<Endpoint>,
    method: &str,
    path_and_query: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<(u16, Vec<u8>), AdminClientError> {
    call(
        &endpoint.into(),
        &Call {
            method,
            target: path_and_query,
            json: Some(body),
            token: None,
            timeout,
        },
    )
}

/// Sends `call` to `endpoint`: (status, body).
pub fn call(endpoint: &Endpoint, call: &Call<'_>) -> Result<(u16, Vec<u8>), AdminClientError> {
    let deadline = Instant::now() + call.timeout;
    let failed = |message: String| AdminClientError::Failed {
        endpoint: endpoint.clone(),
        message,
    };
    let head = request_head(endpoint, call).map_err(failed)?;
    let result = match endpoint {
        Endpoint::Socket(path) => {
            let stream = std::os::unix::net::UnixStream::connect(path)
                .map_err(|e| connect_error(endpoint, call.timeout, e))?;
            exchange(Stream::Unix(stream), &head, call.json, deadline)
        }
        Endpoint::Tcp(addr) => {
            let stream = std::net::TcpStream::connect_timeout(addr, call.timeout)
                .map_err(|e| connect_error(endpoint, call.timeout, e))?;
            exchange(Stream::Tcp(stream), &head, call.json, deadline)
        }
    };
    result.map_err(|e| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            AdminClientError::Timeout {
                endpoint: endpoint.clone(),
                timeout: call.timeout,
            }
        }
        _ => failed(e.to_string()),
    })
}

fn connect_error(endpoint: &Endpoint, timeout: Duration, e: std::io::Error) -> AdminClientError {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused | NotFound => AdminClientError::NotRunning(endpoint.clone()),
        PermissionDenied => AdminClientError::Denied(endpoint.clone()),
        TimedOut | WouldBlock => AdminClientError::Timeout {
            endpoint: endpoint.clone(),
            timeout,
        },
        _ => AdminClientError::Failed {
            endpoint: endpoint.clone(),
            message: e.to_string(),
        },
    }
}

fn request_head(endpoint: &Endpoint, call: &Call<'_>) -> Result<Vec<u8>, String> {
    let target = if call.target.starts_with('/') {
        call.target.to_string()
    } else {
        format!("/{}", call.target)
    };
    let clean = |s: &str| !s.bytes().any(|b| b.is_ascii_control() || b == b' ');
    if !clean(&target) || !clean(call.method) || call.token.is_some_and(|t| !clean(t)) {
        return Err("the request line or token holds spaces or control characters".into());
    }
    let host = match endpoint {
        Endpoint::Socket(_) => "localhost".to_string(),
        Endpoint::Tcp(addr) => addr.to_string(),
    };
    let mut head = format!(
        "{} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: relay\r\n",
        call.method
    );
    if let Some(token) = call.token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    match call.json {
        Some(body) => head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        )),
        None if call.method == "POST" => head.push_str("Content-Length: 0\r\n"),
        None => {}
    }
    head.push_str("\r\n");
    Ok(head.into_bytes())
}

enum Stream {
    Unix(std::os::unix::net::UnixStream),
    Tcp(std::net::TcpStream),
}

impl Stream {
    /// Bounds the next read or write by what is left until `deadline`.
    fn bound(&self, deadline: Instant) -> std::io::Result<()> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        match self {
            Stream::Unix(s) => {
                s.set_read_timeout(Some(left))?;
                s.set_write_timeout(Some(left))
            }
            Stream::Tcp(s) => {
                s.set_read_timeout(Some(left))?;
                s.set_write_timeout(Some(left))
            }
        }
    }

    fn read(&mut self, buf: &mut [u8], deadline: Instant) -> std::io::Result<usize> {
        self.bound(deadline)?;
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8], deadline: Instant) -> std::io::Result<()> {
        self.bound(deadline)?;
        match self {
            Stream::Unix(s) => s.write_all(buf),
            Stream::Tcp(s) => s.write_all(buf),
        }
    }
}

fn exchange(
    mut stream: Stream,
    head: &[u8],
    body: Option<&[u8]>,
    deadline: Instant,
) -> std::io::Result<(u16, Vec<u8>)> {
    stream.write_all(head, deadline)?;
    if let Some(body) = body {
        stream.write_all(body, deadline)?;
    }
    let invalid = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let mut buf = Vec::with_capacity(8192);
    let mut chunk = [0u8; 8192];
    let (status, framing, head_len) = loop {
        let n = stream.read(&mut chunk, deadline)?;
        if n == 0 {
            return Err(invalid(
                "the connection closed before a complete response head",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let status = response.code.unwrap_or(0);
                break (status, framing(response.headers)?, len);
            }
            Ok(httparse::Status::Partial) if buf.len() < HEAD_MAX => {}
            Ok(httparse::Status::Partial) => return Err(invalid("response head too large")),
            Err(e) => return Err(invalid(&format!("bad response head: {e}"))),
        }
    };
    let mut rest = buf.split_off(head_len);
    // Everything after the head, to the end of the stream (the server closes: Connection:
    // close), bounded.
    loop {
        if rest.len() as u64 > RESPONSE_MAX + HEAD_MAX as u64 {
            return Err(invalid("response body too large"));
        }
        if let Framing::Length(n) = framing {
            if rest.len() as u64 >= n {
                break;
            }
        }
        let n = stream.read(&mut chunk, deadline)?;
        if n == 0 {
            break;
        }
        rest.extend_from_slice(&chunk[..n]);
    }
    let body = match framing {
        Framing::Length(n) => {
            let n = usize::try_from(n).map_err(|_| invalid("response body too large"))?;
            if rest.len() < n {
                return Err(invalid("the response body was cut short"));
            }
            rest.truncate(n);
            rest
        }
        Framing::Chunked => dechunk(&rest).ok_or_else(|| invalid("bad chunked body"))?,
        Framing::Close => rest,
    };
    if body.len() as u64 > RESPONSE_MAX {
        return Err(invalid("response body too large"));
    }
    Ok((status, body))
}

#[derive(Debug, Clone, Copy)]
enum Framing {
    Length(u64),
    Chunked,
    Close,
}

fn framing(headers: &[httparse::Header<'_>]) -> std::io::Result<Framing> {
    let value = |name: &str| {
        headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
    };
    if value("transfer-encoding").is_some_and(|v| v.ends_with("chunked")) {
        return Ok(Framing::Chunked);
    }
    match value("content-length") {
        Some(n) => n.parse().map(Framing::Length).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "bad Content-Length")
        }),
        None => Ok(Framing::Close),
    }
}

/// The body of a chunked transfer coding (RFC 9112 §7.1); `None` if malformed or cut.
fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = memchr::memmem::find(data, b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size_text = size_text.split(';').next()?.trim();
        let size = usize::from_str_radix(size_text, 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        if data.len() < size + 2 || &data[size..size + 2] != b"\r\n" {
            return None;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_port_or_a_missing_socket_means_not_running() {
        // Bind then drop: the port is free and nothing listens on it.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        let err = request(addr, "GET", "/stat", Duration::from_secs(5)).expect_err("refused");
        assert!(
            matches!(err, AdminClientError::NotRunning(Endpoint::Tcp(a)) if a == addr),
            "{err:?}"
        );
        assert!(err.to_string().contains("no relay is running"), "{err}");
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("admin.sock");
        let err =
            request(path.clone(), "GET", "/stat", Duration::from_secs(5)).expect_err("no socket");
        assert!(matches!(err, AdminClientError::NotRunning(_)), "{err:?}");
        // A stale socket file: nobody listens.
        drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
        let err = request(path, "GET", "/stat", Duration::from_secs(5)).expect_err("stale socket");
        assert!(matches!(err, AdminClientError::NotRunning(_)), "{err:?}");
    }

    #[test]
    fn a_silent_server_times_out() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let err = request(addr, "GET", "/stat", Duration::from_millis(300)).expect_err("timeout");
        assert!(matches!(err, AdminClientError::Timeout { .. }), "{err:?}");
        drop(listener);
    }

    #[test]
    fn responses_by_length_chunks_or_close() {
        let serve = |answer: &'static [u8]| {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let addr = listener.local_addr().expect("addr");
            let thread = std::thread::spawn(move || {
                let (mut s, _) = listener.accept().expect("accept");
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                s.write_all(answer).expect("write");
            });
            let got = request(addr, "GET", "/x", Duration::from_secs(10));
            thread.join().expect("server");
            got
        };
        let (status, body) =
            serve(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello trailing").expect("len");
        assert_eq!((status, body.as_slice()), (200, &b"hello"[..]));
        let (status, body) = serve(
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
        )
        .expect("chunked");
        assert_eq!((status, body.as_slice()), (404, &b"abcde"[..]));
        let (status, body) = serve(b"HTTP/1.0 200 OK\r\n\r\nto the end").expect("close");
        assert_eq!((status, body.as_slice()), (200, &b"to the end"[..]));
        assert!(serve(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nshort").is_err());
        assert!(serve(b"garbage\r\n\r\n").is_err());
        assert!(serve(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err());
    }
}
