//! One HTTPS GET over tokio and rustls (for the Web Key Directory): HTTP/1.1 written here,
//! `Connection: close`, no redirects, no proxy; the head parsed by `httparse`, the body by
//! `Content-Length`, chunks or the end of the stream. The caller resolves the host, chooses
//! the trust anchors and bounds the time; this bounds the bytes.
//!
//! Exposure: every byte comes from a remote server. The head is at most [`HEAD_MAX`], the
//! body at most the caller's limit: a longer one is an error, not a truncation.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest response head read.
pub const HEAD_MAX: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum GetError {
    /// Nothing accepted the connection (refused, unreachable): the host is not serving.
    #[error("cannot connect to {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("TLS with {host}: {source}")]
    Tls {
        host: String,
        source: std::io::Error,
    },
    #[error("not a host name for TLS: {0}")]
    Name(String),
    #[error("reading the response: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed response: {0}")]
    Malformed(String),
    #[error("the response is larger than {0} bytes")]
    TooLarge(usize),
}

/// What the server answered: the status and the whole body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// `GET https://{host}{target}` from the server at `addr`, its certificate checked by
/// `tls` for `host`; the body at most `body_max` bytes.
pub async fn get(
    tls: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    host: &str,
    target: &str,
    body_max: usize,
) -> Result<Response, GetError> {
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|_| GetError::Name(host.to_string()))?;
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| GetError::Connect(addr, e))?;
    let _ = tcp.set_nodelay(true);
    let mut stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|source| GetError::Tls {
            host: host.to_string(),
            source,
        })?;
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: relay\r\n\
         Accept: application/octet-stream\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    stream.flush().await?;
    read_response(&mut stream, body_max).await
}

/// Reads one response (head, then body) from `stream`.
async fn read_response<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    body_max: usize,
) -> Result<Response, GetError> {
    let mut buffer = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let (status, framing, head_len) = loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&buffer) {
            Ok(httparse::Status::Complete(len)) => {
                let status = response.code.unwrap_or(0);
                break (status, framing(response.headers)?, len);
            }
            Ok(httparse::Status::Partial) => {}
            Err(e) => return Err(GetError::Malformed(e.to_string())),
        }
        if buffer.len() >= HEAD_MAX {
            return Err(GetError::Malformed("the response head is too long".into()));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(GetError::Malformed(
                "the connection closed in the head".into(),
            ));
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let mut rest = buffer.split_off(head_len);
    let limit = body_max.saturating_add(1);
    // Reads until the stream ends or `rest` holds `want` bytes.
    async fn fill<S: tokio::io::AsyncRead + Unpin>(
        stream: &mut S,
        rest: &mut Vec<u8>,
        want: usize,
        limit: usize,
    ) -> Result<bool, GetError> {
        let mut chunk = [0u8; 4096];
        while rest.len() < want {
            if rest.len() > limit {
                return Ok(false);
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(false);
            }
            rest.extend_from_slice(&chunk[..n]);
        }
        Ok(true)
    }
    let body = match framing {
        Framing::Length(length) => {
            if length > body_max {
                return Err(GetError::TooLarge(body_max));
            }
            if !fill(stream, &mut rest, length, limit).await? {
                return Err(GetError::Malformed("the body ended early".into()));
            }
            rest.truncate(length);
            rest
        }
        Framing::Close => {
            fill(stream, &mut rest, usize::MAX, limit).await?;
            if rest.len() > body_max {
                return Err(GetError::TooLarge(body_max));
            }
            rest
        }
        Framing::Chunked => {
            let mut body = Vec::new();
            let mut at = 0;
            loop {
                // The size line.
                let line_end = loop {
                    if let Some(i) = rest[at..].windows(2).position(|w| w == b"\r\n") {
                        break at + i + 2;
                    }
                    if rest.len() - at > 1024 {
                        return Err(GetError::Malformed("a chunk size line is too long".into()));
                    }
                    let want = rest.len() + 1;
                    if !fill(stream, &mut rest, want, usize::MAX).await? {
                        return Err(GetError::Malformed("the body ended early".into()));
                    }
                };
                let size = match httparse::parse_chunk_size(&rest[at..line_end]) {
                    Ok(httparse::Status::Complete((_, size))) => {
                        usize::try_from(size).map_err(|_| GetError::TooLarge(body_max))?
                    }
                    _ => return Err(GetError::Malformed("bad chunk size".into())),
                };
                if size == 0 {
                    break;
                }
                if body.len().saturating_add(size) > body_max {
                    return Err(GetError::TooLarge(body_max));
                }
                let want = line_end + size + 2;
                if !fill(stream, &mut rest, want, usize::MAX).await? {
                    return Err(GetError::Malformed("the body ended early".into()));
                }
                body.extend_from_slice(&rest[line_end..line_end + size]);
                at = want;
            }
            body
        }
    };
    Ok(Response { status, body })
}

enum Framing {
    Length(usize),
    Chunked,
    Close,
}

fn framing(headers: &[httparse::Header<'_>]) -> Result<Framing, GetError> {
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
        Some(length) => length
            .parse()
            .map(Framing::Length)
            .map_err(|_| GetError::Malformed(format!("Content-Length `{length}`"))),
        None => Ok(Framing::Close),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(bytes: &[u8], max: usize) -> Result<Response, GetError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut input = bytes;
        runtime.block_on(read_response(&mut input, max))
    }

    #[test]
    fn bodies_by_length_chunks_and_close() {
        let r = read(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcdef", 10).unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"abc"[..]));
        let r = read(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
            10,
        )
        .unwrap();
        assert_eq!(r.body, b"abcde");
        let r = read(b"HTTP/1.0 404 Not Found\r\n\r\nnope", 10).unwrap();
        assert_eq!((r.status, r.body.as_slice()), (404, &b"nope"[..]));
    }

    #[test]
    fn limits_and_malformed_answers_are_errors() {
        assert!(matches!(
            read(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n", 10),
            Err(GetError::TooLarge(10))
        ));
        assert!(matches!(
            read(b"HTTP/1.1 200 OK\r\n\r\n0123456789A", 10),
            Err(GetError::TooLarge(10))
        ));
        assert!(matches!(
            read(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n6\r\nabcdef\r\n0\r\n\r\n",
                10
            ),
            Err(GetError::TooLarge(10))
        ));
        assert!(matches!(
            read(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab", 10),
            Err(GetError::Malformed(_))
        ));
        assert!(matches!(
            read(b"garbage\r\n\r\n", 10),
            Err(GetError::Malformed(_))
        ));
        assert!(matches!(
            read(b"HTTP/1.1 200", 10),
            Err(GetError::Malformed(_))
        ));
        assert!(matches!(
            read(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                10
            ),
            Err(GetError::Malformed(_))
        ));
    }
}
