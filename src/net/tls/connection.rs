//! TLS over either engine: a [`Connection`] that drives rustls's buffer API (`read_tls`,
//! `process_new_packets`, `write_tls`) on top of another [`Connection`], so the protocol
//! drivers run unchanged over TLS and io_uring still moves every byte (no blocking stream,
//! no second runtime).
//!
//! Ciphertext and plaintext buffers are owned by this wrapper and reused; the rustls state
//! sits in a `RefCell` that is never borrowed across an await, so a read pending in the
//! kernel and a write (the driver's goodbye) can overlap as they do on a plain socket.
//!
//! Records rustls queues on its own (a TLS 1.3 KeyUpdate answer, an alert) go out from the
//! read path; writers take turns (`writing`), so two writes of ciphertext never interleave
//! on the socket. A read that decrypts to more than rustls's plaintext buffer holds keeps
//! the rest of its ciphertext and feeds it once the driver has taken the plaintext; bytes
//! after the peer's close_notify are dropped.

use std::cell::{Cell, RefCell};
use std::io::{self, BufRead, Write};
use std::sync::Arc;

use rustls::pki_types::ServerName;

use crate::net::io::Connection;

/// Ciphertext read per call: small while the peer sends commands (an idle connection's
/// pending read holds this buffer: 51 KiB per idle TLS connection with 16 KiB here, 35 KiB
/// with 4 KiB, `benches/idle_connections.sh 10000 uring tls`; a record carrying a command
/// line fits in 512 octets), growing to one maximal TLS record plus header while reads come back
/// full (a message body), and back when they do not.
const CIPHERTEXT_MIN: usize = 512;
const CIPHERTEXT_MAX: usize = 16 * 1024 + 512;

/// What the handshake agreed, for the Received header and the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSummary {
    /// "TLSv1.3", "TLSv1.2".
    pub version: String,
    /// The IANA name of the cipher suite, e.g. "TLS13_AES_256_GCM_SHA384".
    pub cipher: String,
    /// The client resumed an earlier session (a ticket or a cached session id).
    pub resumed: bool,
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
        Ok(()) => crate::net::conn::within(&tls, limit, tls.handshake()).await,
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
    /// Ciphertext read from the socket (reused between reads); `incoming[fed..]` is not yet
    /// given to rustls (its plaintext buffer was full) and is fed before the socket is read
    /// again.
    incoming: RefCell<Vec<u8>>,
    fed: Cell<usize>,
    /// Ciphertext for the socket (reused between writes).
    outgoing: RefCell<Vec<u8>>,
    /// A write of ciphertext is in flight; the other writer waits for `written`, so records
    /// never interleave on the socket.
    writing: Cell<bool>,
    written: tokio::sync::Notify,
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
            fed: Cell::new(0),
            outgoing: RefCell::new(Vec::new()),
            writing: Cell::new(false),
            written: tokio::sync::Notify::new(),
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
            if self.unfed() {
                self.feed()?;
                continue;
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

    /// The ALPN protocol the handshake agreed on, if any.
    pub fn alpn_protocol(&self) -> Option<Vec<u8>> {
        self.state.borrow().alpn_protocol().map(<[u8]>::to_vec)
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
        let resumed = state.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        TlsSummary {
            version,
            cipher,
            resumed,
        }
    }

    /// Reads ciphertext from the socket into rustls and processes it. Returns the count read
    /// (0: the peer closed). On a TLS error the alert rustls queued is sent before returning.
    /// Only called when everything read before has been fed.
    async fn receive(&self) -> io::Result<usize> {
        let mut raw = std::mem::take(&mut *self.incoming.borrow_mut());
        let want = self.chunk.get();
        if raw.capacity() > want + want / 2 {
            // Back from bulk data to commands: an idle read holds only the small buffer.
            raw = Vec::new();
        }
        raw.clear();
        self.fed.set(0);
        raw.reserve_exact(want);
        let (result, raw) = self.inner.read_into(raw).await;
        *self.incoming.borrow_mut() = raw;
        let n = result?;
        let next = if n >= want {
            (want * 2).min(CIPHERTEXT_MAX)
        } else if n < want / 4 {
            (want / 2).max(CIPHERTEXT_MIN)
        } else {
            want
        };
        self.chunk.set(next);
        let outcome = if n == 0 {
            self.absorb_eof()
        } else {
            self.feed()
        };
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
        {
            let mut incoming = self.incoming.borrow_mut();
            incoming.clear();
            incoming.extend_from_slice(bytes);
        }
        self.fed.set(0);
        self.feed()
    }

    /// The peer closed the socket: rustls records it, so the reader tells a close without
    /// close_notify (a truncation) from an orderly one.
    fn absorb_eof(&self) -> io::Result<()> {
        let mut state = self.state.borrow_mut();
        state.read_tls(&mut &[][..])?;
        state.process_new_packets().map_err(tls_error)?;
        Ok(())
    }

    /// Gives rustls what it will take of `incoming[fed..]`. Stops early, keeping the rest,
    /// when its plaintext buffer is full (records smaller than the read can decrypt to more
    /// than it holds; the rest is fed once the driver has taken the plaintext). After the
    /// peer's close_notify nothing more is read (RFC 8446 §6.1): the rest is dropped.
    fn feed(&self) -> io::Result<()> {
        let incoming = self.incoming.borrow();
        let mut state = self.state.borrow_mut();
        let mut fed = self.fed.get();
        while fed < incoming.len() {
            match state.read_tls(&mut &incoming[fed..]) {
                Ok(0) => {
                    fed = incoming.len();
                    break;
                }
                Ok(n) => fed += n,
                Err(e) if e.kind() == io::ErrorKind::Other => break,
                Err(e) => {
                    self.fed.set(fed);
                    return Err(e);
                }
            }
            if let Err(error) = state.process_new_packets() {
                self.fed.set(fed);
                return Err(tls_error(error));
            }
        }
        self.fed.set(fed);
        Ok(())
    }

    /// Ciphertext read and not yet fed is waiting.
    fn unfed(&self) -> bool {
        self.fed.get() < self.incoming.borrow().len()
    }

    /// Writes every TLS record rustls has queued, one writer at a time.
    async fn send_pending(&self) -> io::Result<()> {
        while self.writing.get() {
            // Registered before yielding: on this single-threaded shard nothing can
            // notify between the check and the await.
            self.written.notified().await;
        }
        let mut result = Ok(());
        self.writing.set(true);
        while self.state.borrow().wants_write() {
            let mut out = std::mem::take(&mut *self.outgoing.borrow_mut());
            out.clear();
            if let Err(e) = self.state.borrow_mut().write_tls(&mut out) {
                result = Err(e);
                break;
            }
            let (written, mut out) = self.inner.write_all(out).await;
            if out.capacity() > 2 * CIPHERTEXT_MAX {
                // After a large RETR: do not keep its buffer on an idle connection.
                out = Vec::new();
            }
            *self.outgoing.borrow_mut() = out;
            if let Err(e) = written {
                result = Err(e);
                break;
            }
        }
        self.writing.set(false);
        self.written.notify_waiters();
        result
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
            if self.unfed() {
                // What the last read brought and rustls had no room for.
                if let Err(e) = self.feed() {
                    let _ = self.send_pending().await;
                    return (Err(e), buf);
                }
                continue;
            }
            // Records rustls queued on its own (a KeyUpdate answer) go out before waiting.
            if self.state.borrow().wants_write() {
                if let Err(e) = self.send_pending().await {
                    return (Err(e), buf);
                }
            }
            // Nothing copied yet into an empty buffer: it is given back while the ciphertext
            // is waited for (an idle session holds only the ciphertext read's buffer) and
            // allocated again at its capacity.
            let capacity = buf.capacity();
            let parked = start == 0 && buf.is_empty();
            if parked {
                buf = Vec::new();
            }
            let received = self.receive().await;
            if parked {
                buf = Vec::with_capacity(capacity);
            }
            if let Err(e) = received {
                return (Err(e), buf);
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

    async fn peer_closed(&self) {
        self.inner.peer_closed().await
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
        let server = crate::net::tls::ServerTls::load(&cert_path, &key_path).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(crate::net::tls::provider())
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

    /// A blocking rustls client on its own thread: handshakes, then writes `records` (each
    /// its own TLS record) in one write, and waits for the server to close.
    fn raw_client(
        addr: std::net::SocketAddr,
        config: Arc<rustls::ClientConfig>,
        records: Vec<Vec<u8>>,
    ) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            use std::io::Read;
            let mut socket = std::net::TcpStream::connect(addr).unwrap();
            let name = ServerName::try_from("relay.test").unwrap();
            let mut conn = rustls::ClientConnection::new(config, name).unwrap();
            while conn.is_handshaking() {
                conn.complete_io(&mut socket).unwrap();
            }
            let mut wire = Vec::new();
            for record in &records {
                conn.writer().write_all(record).unwrap();
                while conn.wants_write() {
                    conn.write_tls(&mut wire).unwrap();
                }
            }
            std::io::Write::write_all(&mut socket, &wire).unwrap();
            // Until the server closes.
            let mut rest = Vec::new();
            let _ = socket.read_to_end(&mut rest);
        })
    }

    /// Runs `serve` on an io_uring shard thread; its result, or None if it did not finish
    /// in time (a hang or a spin fails the test instead of stalling it).
    fn on_a_shard<T: Send + 'static>(
        serve: impl FnOnce(UringListener) -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>>
            + Send
            + 'static,
    ) -> (std::net::SocketAddr, std::sync::mpsc::Receiver<T>) {
        let std = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = std.local_addr().unwrap();
        let (done, result) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio_uring::Runtime::new(&tokio_uring::builder()).unwrap();
            let out = runtime.block_on(serve(UringListener::from_std(std)));
            let _ = done.send(out);
        });
        (addr, result)
    }

    /// Sends `total` bytes as records of `size` in one burst; what the server read.
    fn burst_of_records(size: usize, total: usize) -> Result<bool, String> {
        let (server_config, client_config, _dir) = pair();
        let records: Vec<Vec<u8>> = (0..total / size)
            .map(|i| vec![b'a' + (i % 26) as u8; size])
            .collect();
        let expected: Vec<u8> = records.concat();
        let want = expected.len();
        let (addr, result) = on_a_shard(move |listener| {
            Box::pin(async move {
                let (conn, _) = listener.accept().await.unwrap();
                let tls = TlsConnection::server(conn, server_config).unwrap();
                tls.handshake().await.unwrap();
                let mut got = Vec::new();
                while got.len() < want {
                    let (read, buf) = tls.read_into(Vec::with_capacity(16 * 1024)).await;
                    match read {
                        Ok(0) => break,
                        Ok(_) => got.extend_from_slice(&buf),
                        Err(e) => return Err(e.to_string()),
                    }
                }
                tls.shutdown();
                Ok(got)
            })
        });
        let client = raw_client(addr, client_config, records);
        let got = result
            .recv_timeout(Duration::from_secs(20))
            .expect("server finished");
        client.join().unwrap();
        got.map(|g| g == expected)
    }

    #[test]
    fn small_records_past_the_plaintext_buffer_are_all_delivered() {
        // Records smaller than a read (what many stacks send) in one burst: one read can
        // decrypt to more than rustls's 16 KiB plaintext buffer; the rest must wait, not
        // fail the connection.
        for size in [1200, 1500, 3000, 5000, 7000] {
            assert_eq!(
                burst_of_records(size, 400_000),
                Ok(true),
                "records of {size}"
            );
        }
    }

    #[test]
    fn bytes_after_close_notify_are_dropped_without_spinning() {
        // close_notify and 64 KiB after it in one chunk of ciphertext: rustls takes nothing
        // after the alert, so feeding must stop there instead of retrying forever (which
        // would hold the whole shard).
        let (server_config, client_config, _dir) = pair();
        let (wire_tx, wire_rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let (addr, result) = on_a_shard(move |listener| {
            Box::pin(async move {
                let (conn, _) = listener.accept().await.unwrap();
                let tls = TlsConnection::server(conn, server_config).unwrap();
                tls.handshake().await.unwrap();
                let wire = wire_rx.recv().unwrap();
                let fed = tls.absorb_early(&wire).map_err(|e| e.to_string());
                let (read, _) = tls.read_into(Vec::with_capacity(1024)).await;
                tls.shutdown();
                (fed, read.map_err(|e| e.to_string()))
            })
        });
        let client = std::thread::spawn(move || {
            use std::io::Read;
            let mut socket = std::net::TcpStream::connect(addr).unwrap();
            let name = ServerName::try_from("relay.test").unwrap();
            let mut conn = rustls::ClientConnection::new(client_config, name).unwrap();
            while conn.is_handshaking() {
                conn.complete_io(&mut socket).unwrap();
            }
            let mut wire = Vec::new();
            conn.send_close_notify();
            conn.write_tls(&mut wire).unwrap();
            wire.extend(std::iter::repeat_n(0x17, 64 * 1024));
            wire_tx.send(wire).unwrap();
            let mut rest = Vec::new();
            let _ = socket.read_to_end(&mut rest);
        });
        let got = result
            .recv_timeout(Duration::from_secs(20))
            .expect("the server must not spin after close_notify");
        assert_eq!(got, (Ok(()), Ok(0)), "an orderly close, the rest dropped");
        client.join().unwrap();
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
