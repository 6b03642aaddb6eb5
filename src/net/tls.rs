//! TLS over either engine: a [`Connection`] that drives rustls's buffer API (`read_tls`,
//! `process_new_packets`, `write_tls`) on top of another [`Connection`], so the protocol
//! drivers run unchanged over TLS and io_uring still moves every byte (no blocking stream,
//! no second runtime).
//!
//! Ciphertext and plaintext buffers are owned by this wrapper and reused; the rustls state
//! sits in a `RefCell` that is never borrowed across an await, so a read pending in the
//! kernel and a write (the driver's goodbye) can overlap as they do on a plain socket.
//!
//! Records rustls queues on its own (a TLS 1.3 KeyUpdate answer, an alert) go out with the
//! next write, or from the read path when no write is in flight: two writes of ciphertext
//! must never interleave on the socket.

use std::cell::{Cell, RefCell};
use std::io::{self, BufRead, Write};
use std::sync::Arc;

use rustls::pki_types::ServerName;

use super::io::Connection;

/// Ciphertext read per call: small while the peer sends commands (an idle connection's
/// pending read holds this buffer: 51 KiB per idle TLS connection with 16 KiB here, 35 KiB
/// with 4 KiB, `benches/idle_connections.sh 10000 uring tls`), growing to one maximal TLS
/// record plus header while reads come back full (a message body), and back when they do
/// not.
const CIPHERTEXT_MIN: usize = 4 * 1024;
const CIPHERTEXT_MAX: usize = 16 * 1024 + 512;

/// What the handshake agreed, for the Received header and the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSummary {
    /// "TLSv1.3", "TLSv1.2".
    pub version: String,
    /// The IANA name of the cipher suite, e.g. "TLS13_AES_256_GCM_SHA384".
    pub cipher: String,
}

/// Why a server handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeFailure {
    #[error("TLS handshake failed: {0}")]
    Failed(io::Error),
    #[error("TLS handshake timed out")]
    TimedOut,
}

/// The server side of a handshake on `conn` within `limit`: after STARTTLS/STLS, or at
/// connect on an implicit-TLS listener (where `early` holds ciphertext already read). On
/// failure the socket is shut.
pub async fn accept<C: Connection>(
    conn: C,
    config: Arc<rustls::ServerConfig>,
    early: &[u8],
    limit: std::time::Duration,
) -> Result<(TlsConnection<C>, TlsSummary), HandshakeFailure> {
    let tls = match TlsConnection::server(conn, config) {
        Ok(tls) => tls,
        Err(error) => return Err(HandshakeFailure::Failed(error)),
    };
    let done = match tls.absorb_early(early) {
        Ok(()) => super::conn::within(&tls, limit, tls.handshake()).await,
        Err(error) => Ok(Err(error)),
    };
    match done {
        Ok(Ok(summary)) => Ok((tls, summary)),
        Ok(Err(error)) => {
            tls.shutdown();
            Err(HandshakeFailure::Failed(error))
        }
        Err(_) => Err(HandshakeFailure::TimedOut),
    }
}

/// A connection protected by TLS; the inner connection carries the ciphertext.
pub struct TlsConnection<C> {
    inner: C,
    state: RefCell<rustls::Connection>,
    /// Ciphertext read from the socket and not yet given to rustls (reused between reads).
    incoming: RefCell<Vec<u8>>,
    /// Ciphertext for the socket (reused between writes).
    outgoing: RefCell<Vec<u8>>,
    writing: Cell<bool>,
    /// The size of the next ciphertext read (between the two bounds above).
    chunk: Cell<usize>,
}

fn tls_error(error: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

impl<C: Connection> TlsConnection<C> {
    /// Server side: the handshake is driven by [`TlsConnection::handshake`].
    pub fn server(inner: C, config: Arc<rustls::ServerConfig>) -> io::Result<Self> {
        let tls = rustls::ServerConnection::new(config).map_err(tls_error)?;
        Ok(Self::wrap(inner, rustls::Connection::Server(tls)))
    }

    /// Client side, for `name` (SNI and, when the config verifies, the certificate's name).
    pub fn client(
        inner: C,
        config: Arc<rustls::ClientConfig>,
        name: ServerName<'static>,
    ) -> io::Result<Self> {
        let tls = rustls::ClientConnection::new(config, name).map_err(tls_error)?;
        Ok(Self::wrap(inner, rustls::Connection::Client(tls)))
    }

    fn wrap(inner: C, tls: rustls::Connection) -> Self {
        TlsConnection {
            inner,
            state: RefCell::new(tls),
            incoming: RefCell::new(Vec::new()),
            outgoing: RefCell::new(Vec::new()),
            writing: Cell::new(false),
            chunk: Cell::new(CIPHERTEXT_MIN),
        }
    }

    /// Runs the handshake to completion. The caller bounds it in time (`conn::within`).
    pub async fn handshake(&self) -> io::Result<TlsSummary> {
        loop {
            self.send_pending().await?;
            if !self.state.borrow().is_handshaking() {
                break;
            }
            if self.receive().await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed the connection during the TLS handshake",
                ));
            }
        }
        // A server's TLS 1.3 session tickets follow the handshake.
        self.send_pending().await?;
        Ok(self.summary())
    }

    pub fn summary(&self) -> TlsSummary {
        let state = self.state.borrow();
        let version = match state.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
            Some(other) => format!("{other:?}"),
            None => "unknown".to_string(),
        };
        let cipher = state
            .negotiated_cipher_suite()
            .and_then(|suite| suite.suite().as_str())
            .unwrap_or("unknown")
            .to_string();
        TlsSummary { version, cipher }
    }

    /// Reads ciphertext from the socket into rustls and processes it. Returns the count read
    /// (0: the peer closed). On a TLS error the alert rustls queued is sent before returning.
    async fn receive(&self) -> io::Result<usize> {
        let mut raw = std::mem::take(&mut *self.incoming.borrow_mut());
        let want = self.chunk.get();
        if raw.capacity() > 2 * want {
            // Back from bulk data to commands: give the large buffer back.
            raw = Vec::new();
        }
        raw.clear();
        raw.reserve_exact(want);
        let (result, raw) = self.inner.read_into(raw).await;
        let n = match result {
            Ok(n) => {
                let next = if n >= want {
                    (want * 2).min(CIPHERTEXT_MAX)
                } else if n < want / 4 {
                    (want / 2).max(CIPHERTEXT_MIN)
                } else {
                    want
                };
                self.chunk.set(next);
                n
            }
            Err(e) => {
                *self.incoming.borrow_mut() = raw;
                return Err(e);
            }
        };
        let outcome = self.absorb(&raw[..n]);
        *self.incoming.borrow_mut() = raw;
        if let Err(error) = outcome {
            // Best effort: tell the peer why (the alert); the connection ends either way.
            let _ = self.send_pending().await;
            return Err(error);
        }
        Ok(n)
    }

    /// Ciphertext the peer sent before the TLS session existed (read along with a PROXY
    /// header on an implicit-TLS listener): the start of its handshake.
    pub fn absorb_early(&self, bytes: &[u8]) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.absorb(bytes)
    }

    /// Gives `bytes` (all of it, or the peer's EOF when empty) to rustls.
    fn absorb(&self, mut bytes: &[u8]) -> io::Result<()> {
        let mut state = self.state.borrow_mut();
        if bytes.is_empty() {
            // Records the EOF, so the reader reports a close without close_notify.
            state.read_tls(&mut bytes)?;
            state.process_new_packets().map_err(tls_error)?;
            return Ok(());
        }
        while !bytes.is_empty() {
            match state.read_tls(&mut bytes) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Other => {
                    // rustls's plaintext buffer is full: the driver has not read it yet. A
                    // peer that floods beyond it is past any line or body limit: end it.
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "TLS peer sent more than the plaintext buffer holds",
                    ));
                }
                Err(e) => return Err(e),
            }
            state.process_new_packets().map_err(tls_error)?;
        }
        Ok(())
    }

    /// Writes every TLS record rustls has queued.
    async fn send_pending(&self) -> io::Result<()> {
        while self.state.borrow().wants_write() {
            let mut out = std::mem::take(&mut *self.outgoing.borrow_mut());
            out.clear();
            self.state.borrow_mut().write_tls(&mut out)?;
            self.writing.set(true);
            let (result, out) = self.inner.write_all(out).await;
            self.writing.set(false);
            *self.outgoing.borrow_mut() = out;
            result?;
        }
        Ok(())
    }

    /// Queues a close_notify alert and sends it: the orderly end of a TLS session, so the
    /// peer can tell it from a truncation.
    pub async fn close_notify(&self) {
        self.state.borrow_mut().send_close_notify();
        let _ = self.send_pending().await;
    }

    /// The connection carrying the ciphertext.
    pub fn inner(&self) -> &C {
        &self.inner
    }
}

impl<C: Connection> Connection for TlsConnection<C> {
    async fn read_into(&self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        let start = buf.len();
        if start == buf.capacity() {
            return (
                Err(io::Error::other("read buffer has no spare capacity")),
                buf,
            );
        }
        loop {
            let plain = {
                let mut state = self.state.borrow_mut();
                let mut reader = state.reader();
                // Copied straight from rustls's plaintext buffer: no zero-filling of the
                // spare capacity per read.
                match reader.fill_buf() {
                    Ok(chunk) => {
                        let n = chunk.len().min(buf.capacity() - start);
                        buf.extend_from_slice(&chunk[..n]);
                        reader.consume(n);
                        Ok(n)
                    }
                    Err(e) => Err(e),
                }
            };
            match plain {
                Ok(n) => return (Ok(n), buf),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return (Err(e), buf),
            }
            if !self.writing.get() {
                if let Err(e) = self.send_pending().await {
                    return (Err(e), buf);
                }
            }
            match self.receive().await {
                Ok(_) => {}
                Err(e) => return (Err(e), buf),
            }
        }
    }

    async fn write_all(&self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let mut written = 0;
        while written < buf.len() {
            let accepted = self.state.borrow_mut().writer().write(&buf[written..]);
            match accepted {
                Ok(n) => written += n,
                Err(e) => return (Err(e), buf),
            }
            if let Err(e) = self.send_pending().await {
                return (Err(e), buf);
            }
        }
        (Ok(()), buf)
    }

    fn shutdown(&self) {
        self.inner.shutdown();
    }

    async fn finish(&self) {
        self.close_notify().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::io::epoll::{EpollConnector, EpollListener};
    use crate::net::io::uring::{UringConnector, UringListener};
    use crate::net::io::{Connector, Listener};
    use std::time::Duration;

    /// A self-signed certificate for "relay.test" and a client config trusting it.
    fn pair() -> (
        Arc<rustls::ServerConfig>,
        Arc<rustls::ClientConfig>,
        tempfile::TempDir,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["relay.test".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let cert_path = dir.path().join("cert.pem");
        let key_path = dir.path().join("key.pem");
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        let server = crate::tls::ServerTls::load(&cert_path, &key_path).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (server.config(), Arc::new(client), dir)
    }

    /// Server echoes lines in upper case until the client closes; the client sends
    /// `messages` of growing size (past one TLS record) and checks each answer.
    async fn echo_over_tls<L: Listener + 'static, K: Connector>(
        listener: L,
        addr: std::net::SocketAddr,
        connector: K,
    ) {
        let (server_config, client_config, _dir) = pair();
        let server = tokio::task::spawn_local(async move {
            let (conn, _) = listener.accept().await.unwrap();
            let tls = TlsConnection::server(conn, server_config).unwrap();
            let summary = tls.handshake().await.unwrap();
            assert_eq!(summary.version, "TLSv1.3");
            loop {
                let (read, buf) = tls.read_into(Vec::with_capacity(64 * 1024)).await;
                if read.unwrap() == 0 {
                    break;
                }
                let (written, _) = tls.write_all(buf.to_ascii_uppercase()).await;
                written.unwrap();
            }
        });
        let conn = connector
            .connect(addr, Duration::from_secs(5))
            .await
            .unwrap();
        let name = ServerName::try_from("relay.test").unwrap();
        let tls = TlsConnection::client(conn, client_config, name).unwrap();
        tls.handshake().await.unwrap();
        for size in [1usize, 100, 20_000, 100_000] {
            let message: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
            let (written, _) = tls.write_all(message.clone()).await;
            written.unwrap();
            let mut got = Vec::new();
            while got.len() < size {
                let (read, buf) = tls.read_into(Vec::with_capacity(32 * 1024)).await;
                assert!(read.unwrap() > 0, "server closed early");
                got.extend_from_slice(&buf);
            }
            assert_eq!(got, message.to_ascii_uppercase());
        }
        tls.finish().await;
        tls.shutdown();
        server.await.unwrap();
    }

    #[test]
    fn tls_round_trip_on_io_uring() {
        let runtime = tokio_uring::Runtime::new(&tokio_uring::builder()).unwrap();
        runtime.block_on(async {
            let std = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = std.local_addr().unwrap();
            echo_over_tls(UringListener::from_std(std), addr, UringConnector).await;
        });
    }

    #[test]
    fn tls_round_trip_on_epoll() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&runtime, async {
            let std = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            std.set_nonblocking(true).unwrap();
            let addr = std.local_addr().unwrap();
            echo_over_tls(EpollListener::from_std(std).unwrap(), addr, EpollConnector).await;
        });
    }

    #[test]
    fn an_untrusted_certificate_fails_the_client_handshake() {
        let (server_config, _, _dir) = pair();
        let (_, other_client, _other_dir) = pair();
        let runtime = tokio_uring::Runtime::new(&tokio_uring::builder()).unwrap();
        runtime.block_on(async {
            let std = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = std.local_addr().unwrap();
            let listener = UringListener::from_std(std);
            let server = tokio_uring::spawn(async move {
                let (conn, _) = listener.accept().await.unwrap();
                let tls = TlsConnection::server(conn, server_config).unwrap();
                tls.handshake().await.is_err()
            });
            let conn = UringConnector
                .connect(addr, Duration::from_secs(5))
                .await
                .unwrap();
            let name = ServerName::try_from("relay.test").unwrap();
            let tls = TlsConnection::client(conn, other_client, name).unwrap();
            let error = tls.handshake().await.unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
            assert!(error.to_string().contains("certificate"), "{error}");
            tls.shutdown();
            assert!(server.await.unwrap(), "server saw the alert as a failure");
        });
    }
}
