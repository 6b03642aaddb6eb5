//! A buffered TCP connection with a timeout on every read and write, shared by the SMTP and
//! POP3 clients and the sink.
//!
//! Exposure: reads bytes from any peer. Lines are bounded (`LINE_MAX`), multi-line bodies are
//! scanned and discarded as they arrive (never held whole), and every wait has a deadline.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::time::Duration;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use memchr::memmem;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// The longest protocol line accepted (SMTP replies are ≤ 512 octets, POP3 ≤ 512; bodies
/// read through [`Conn::skip_dot_body`] have no line limit).
pub const LINE_MAX: usize = 16 * 1024;
/// Read buffer size.
const BUFFER: usize = 64 * 1024;

/// Why a connection ended; each kind is counted separately in the reports.
#[derive(Debug)]
pub enum WireError {
    Connect(io::Error),
    Io(io::Error),
    Timeout,
    /// The peer closed the connection.
    Closed,
    /// The peer sent something that is not the protocol.
    Protocol(String),
    /// The server refused the session (a greeting or EHLO reply that is not positive).
    Refused(u16),
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Connect(e) => write!(f, "connect: {e}"),
            WireError::Io(e) => write!(f, "i/o: {e}"),
            WireError::Timeout => f.write_str("timeout"),
            WireError::Closed => f.write_str("connection closed by peer"),
            WireError::Protocol(what) => write!(f, "protocol: {what}"),
            WireError::Refused(code) => write!(f, "session refused with {code}"),
        }
    }
}

/// Error counters by kind, as reported.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct ErrorCounts {
    pub connect: u64,
    pub io: u64,
    pub timeout: u64,
    pub closed: u64,
    pub protocol: u64,
    pub refused: u64,
}

impl ErrorCounts {
    pub fn count(&mut self, error: &WireError) {
        match error {
            WireError::Connect(_) => self.connect += 1,
            WireError::Io(_) => self.io += 1,
            WireError::Timeout => self.timeout += 1,
            WireError::Closed => self.closed += 1,
            WireError::Protocol(_) => self.protocol += 1,
            WireError::Refused(_) => self.refused += 1,
        }
    }

    pub fn total(&self) -> u64 {
        self.connect + self.io + self.timeout + self.closed + self.protocol + self.refused
    }

    pub fn add(&mut self, other: &ErrorCounts) {
        self.connect += other.connect;
        self.io += other.io;
        self.timeout += other.timeout;
        self.closed += other.closed;
        self.protocol += other.protocol;
        self.refused += other.refused;
    }
}

/// The socket, in clear or inside TLS (after STARTTLS).
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

pub struct Conn {
    stream: Stream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    timeout: Duration,
}

impl Conn {
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Conn, WireError> {
        Conn::connect_with_buffer(addr, timeout, BUFFER).await
    }

    /// As [`Conn::connect`] with a read buffer of `buffer` bytes (at least 1 KiB): sessions
    /// held by the thousand (IMAP IDLE) need little.
    pub async fn connect_with_buffer(
        addr: SocketAddr,
        timeout: Duration,
        buffer: usize,
    ) -> Result<Conn, WireError> {
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(WireError::Connect(e)),
            Err(_) => return Err(WireError::Connect(io::ErrorKind::TimedOut.into())),
        };
        Ok(Conn::with_buffer(stream, timeout, buffer.max(1024)))
    }

    pub fn new(stream: TcpStream, timeout: Duration) -> Conn {
        Conn::with_buffer(stream, timeout, BUFFER)
    }

    fn with_buffer(stream: TcpStream, timeout: Duration, buffer: usize) -> Conn {
        // Latency matters more than packet count for a load tool (and for the sink's replies).
        let _ = stream.set_nodelay(true);
        Conn {
            stream: Stream::Plain(stream),
            buf: vec![0; buffer],
            start: 0,
            end: 0,
            timeout,
        }
    }

    /// Bytes received and not consumed yet.
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Reads more bytes; makes room by moving unconsumed bytes to the front first.
    pub async fn fill(&mut self) -> Result<usize, WireError> {
        if self.end == self.buf.len() {
            if self.start == 0 {
                return Err(WireError::Protocol("line too long".into()));
            }
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let read = self.stream.read(&mut self.buf[self.end..]);
        match tokio::time::timeout(self.timeout, read).await {
            Ok(Ok(0)) => Err(WireError::Closed),
            Ok(Ok(n)) => {
                self.end += n;
                Ok(n)
            }
            Ok(Err(e)) => Err(WireError::Io(e)),
            Err(_) => Err(WireError::Timeout),
        }
    }

    /// The next line without its LF (a CR before it is left for the parser); consumed.
    pub async fn read_line(&mut self) -> Result<&[u8], WireError> {
        let mut scanned = 0;
        loop {
            let window = &self.buf[self.start + scanned..self.end];
            if let Some(lf) = memchr::memchr(b'\n', window) {
                let line_start = self.start;
                let line_end = self.start + scanned + lf;
                self.start = line_end + 1;
                if self.start == self.end {
                    // Reset lazily: the returned slice still points into the buffer.
                    self.start = 0;
                    self.end = 0;
                }
                return Ok(&self.buf[line_start..line_end]);
            }
            scanned = self.end - self.start;
            if scanned > LINE_MAX {
                return Err(WireError::Protocol("line too long".into()));
            }
            self.fill().await?;
        }
    }

    /// Reads and discards a dot-terminated multi-line body (RFC 5321 §4.5.2, RFC 1939 §3)
    /// whose first line starts here; returns its length up to and including the CRLF before
    /// the terminating `.` line.
    pub async fn skip_dot_body(&mut self) -> Result<u64, WireError> {
        // An empty body: the terminator comes first.
        while self.buffered().len() < 3 {
            self.fill().await?;
        }
        if self.buffered().starts_with(b".\r\n") {
            self.consume(3);
            return Ok(0);
        }
        let finder = memmem::Finder::new(b"\r\n.\r\n");
        let mut total = 0u64;
        loop {
            let window = self.buffered();
            if let Some(at) = finder.find(window) {
                total += at as u64 + 2;
                self.consume(at + 5);
                return Ok(total);
            }
            // Keep the last 4 bytes: the terminator may straddle two reads.
            let keep = window.len().min(4);
            let done = window.len() - keep;
            total += done as u64;
            self.consume(done);
            self.fill().await?;
        }
    }

    /// Reads and discards exactly `n` bytes.
    pub async fn skip_exact(&mut self, mut n: u64) -> Result<(), WireError> {
        loop {
            let take = (self.buffered().len() as u64).min(n);
            self.consume(take as usize);
            n -= take;
            if n == 0 {
                return Ok(());
            }
            self.fill().await?;
        }
    }

    pub async fn write_all(&mut self, data: &[u8]) -> Result<(), WireError> {
        match tokio::time::timeout(self.timeout, self.stream.write_all(data)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(WireError::Io(e)),
            Err(_) => Err(WireError::Timeout),
        }
    }

    /// Writes all of `parts` with as few system calls as the kernel allows.
    pub async fn write_all_vectored(&mut self, parts: &[&[u8]]) -> Result<(), WireError> {
        let write = async {
            let mut index = 0;
            let mut offset = 0;
            while index < parts.len() {
                let mut slices: [IoSlice<'_>; 8] = [IoSlice::new(&[]); 8];
                let mut count = 0;
                for (i, part) in parts[index..].iter().enumerate().take(8) {
                    let from = if i == 0 { offset } else { 0 };
                    slices[count] = IoSlice::new(&part[from..]);
                    count += 1;
                }
                let mut written = self.stream.write_vectored(&slices[..count]).await?;
                if written == 0 {
                    return Err(io::Error::from(io::ErrorKind::WriteZero));
                }
                while index < parts.len() && written > 0 {
                    let left = parts[index].len() - offset;
                    if written >= left {
                        written -= left;
                        index += 1;
                        offset = 0;
                    } else {
                        offset += written;
                        written = 0;
                    }
                }
                // Skip empty parts so that the loop ends.
                while index < parts.len() && parts[index].len() == offset {
                    index += 1;
                    offset = 0;
                }
            }
            Ok(())
        };
        match tokio::time::timeout(self.timeout, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(WireError::Io(e)),
            Err(_) => Err(WireError::Timeout),
        }
    }

    /// Runs a TLS client handshake on this connection (after the server's 220 to
    /// STARTTLS); bytes the server sent before it are a protocol error (RFC 3207 §4.2).
    pub async fn into_tls(
        self,
        config: Arc<rustls::ClientConfig>,
        name: rustls::pki_types::ServerName<'static>,
    ) -> Result<Conn, WireError> {
        if !self.buffered().is_empty() {
            return Err(WireError::Protocol(
                "the server sent data before the TLS handshake".into(),
            ));
        }
        let Stream::Plain(tcp) = self.stream else {
            return Err(WireError::Protocol("TLS is already active".into()));
        };
        let connector = tokio_rustls::TlsConnector::from(config);
        let tls = match tokio::time::timeout(self.timeout, connector.connect(name, tcp)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => return Err(WireError::Io(e)),
            Err(_) => return Err(WireError::Timeout),
        };
        Ok(Conn {
            stream: Stream::Tls(Box::new(tls)),
            start: 0,
            end: 0,
            ..self
        })
    }

    /// The TLS session resumed an earlier one (a ticket or a session id); false in plain.
    pub fn tls_resumed(&self) -> bool {
        match &self.stream {
            Stream::Tls(tls) => {
                tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
            }
            _ => false,
        }
    }

    pub async fn shutdown(&mut self) {
        let _ = tokio::time::timeout(self.timeout, self.stream.shutdown()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines and dot-terminated bodies read correctly whatever the segmenting: the peer
    /// writes one byte at a time.
    #[test]
    fn lines_and_bodies_split_at_every_byte() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let writer = tokio::spawn(async move {
                let (mut stream, _) = listener.accept().await.unwrap();
                stream.set_nodelay(true).unwrap();
                let text: &[u8] =
                    b"+OK 1\r\n.\r\n+OK 2\r\nab\r\n..c\r\n\r\n.\r\n250-x\r\n250 y\r\n";
                for byte in text {
                    stream.write_all(std::slice::from_ref(byte)).await.unwrap();
                }
            });
            let mut conn = Conn::connect(addr, Duration::from_secs(10)).await.unwrap();
            assert_eq!(conn.read_line().await.unwrap(), b"+OK 1\r");
            assert_eq!(conn.skip_dot_body().await.unwrap(), 0);
            assert_eq!(conn.read_line().await.unwrap(), b"+OK 2\r");
            assert_eq!(conn.skip_dot_body().await.unwrap(), 11);
            assert_eq!(conn.read_line().await.unwrap(), b"250-x\r");
            assert_eq!(conn.read_line().await.unwrap(), b"250 y\r");
            writer.await.unwrap();
            assert!(matches!(conn.read_line().await, Err(WireError::Closed)));
        });
    }
}
