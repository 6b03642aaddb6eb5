//! TLS over either engine: a [`Connection`] that drives rustls's unbuffered API
//! (`process_tls_records` and the states it returns) on top of another [`Connection`], so the
//! protocol drivers run unchanged over TLS and io_uring still moves every byte (no blocking
//! stream, no second runtime).
//!
//! The unbuffered API leaves every buffer to this wrapper, so an idle session holds none but
//! the small pending read's: rustls's buffered connection kept a 4 KiB ciphertext buffer of
//! its own from the first read on. Ciphertext not yet processed stays in `incoming`; records
//! are decrypted one at a time, only as the driver asks for plaintext, straight into the
//! driver's buffer (what does not fit waits in `plaintext`). The rustls state sits in a
//! `RefCell` that is never borrowed across an await, so a read pending in the kernel and a
//! write (the driver's goodbye) can overlap as they do on a plain socket.
//!
//! Every record rustls produces (handshake flights, alerts, encrypted data) is appended to
//! `outgoing` in the order it was made; writers take turns (`writing`) and send it in that
//! order, so two writes of ciphertext never interleave on the socket. Bytes after the peer's
//! close_notify are never processed.

use std::cell::{Cell, RefCell};
use std::io;
use std::sync::Arc;

use rustls::client::UnbufferedClientConnection;
use rustls::pki_types::ServerName;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus,
};

use crate::net::io::Connection;

/// Ciphertext read per call: small while the peer sends commands (an idle connection's
/// pending read holds this buffer: 51 KiB per idle TLS connection with 16 KiB here, 35 KiB
/// with 4 KiB, `benches/idle_connections.sh 10000 uring tls`; a record carrying a command
/// line fits in 512 octets), growing to one maximal TLS record plus header while reads come back
/// full (a message body), and back when they do not.
const CIPHERTEXT_MIN: usize = 512;
const CIPHERTEXT_MAX: usize = 16 * 1024 + 512;

/// Most ciphertext kept unprocessed: a handshake message may span records up to 64 KiB
/// (rustls refuses larger ones), plus one read. A peer that sends more without completing a
/// record or message is refused instead of growing the buffer.
const INCOMING_MAX: usize = 64 * 1024 + 2 * CIPHERTEXT_MAX;

/// Plaintext encrypted per step of a write: four full records, sent before the next four
/// are encrypted (the ciphertext buffer stays near this size whatever the driver writes).
const ENCRYPT_STEP: usize = 4 * 16 * 1024;

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
    state: RefCell<Tls>,
    /// Ciphertext read and not yet processed: `incoming[start..used]` (a partial record, or
    /// records whose plaintext the driver has not asked for yet). Processed records only
    /// move `start`; the rest is moved to the front when more is read. While a read of the
    /// socket is pending with nothing unprocessed, the read owns this buffer.
    incoming: RefCell<Vec<u8>>,
    start: Cell<usize>,
    used: Cell<usize>,
    /// Plaintext decrypted and not yet taken by the driver (its buffer was full).
    plaintext: RefCell<Vec<u8>>,
    /// Ciphertext for the socket, in the order it was produced.
    outgoing: RefCell<Vec<u8>>,
    /// A write of ciphertext is in flight; the other writer waits for `written`, so records
    /// never interleave on the socket.
    writing: Cell<bool>,
    written: tokio::sync::Notify,
    /// The size of the next ciphertext read (between the two bounds above).
    chunk: Cell<usize>,
    /// The peer's close_notify has been processed: reads return 0 from now on.
    peer_closed: Cell<bool>,
    /// A TLS error ended the session: rustls is not asked for anything more (it would
    /// process the offending input again).
    failed: Cell<bool>,
}

enum Tls {
    Server(UnbufferedServerConnection),
    Client(UnbufferedClientConnection),
}

impl Tls {
    fn common(&self) -> &rustls::CommonState {
        match self {
            Tls::Server(conn) => conn,
            Tls::Client(conn) => conn,
        }
    }
}

/// What a pump of the record layer is for.
enum Goal<'a> {
    /// Complete the handshake.
    Handshake,
    /// Plaintext for the driver, appended to this buffer up to its capacity.
    Read(&'a mut Vec<u8>),
    /// Encrypt these bytes (at most [`ENCRYPT_STEP`]) into `outgoing`.
    Write(&'a [u8]),
    /// Encrypt a close_notify alert into `outgoing`.
    Close,
}

/// Where a pump stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pumped {
    /// rustls needs more ciphertext from the peer.
    NeedRead,
    /// Application data may be sent (the goal's bytes, if any, are encrypted).
    Writable,
    /// Plaintext was given to the driver's buffer or kept for it.
    Plaintext,
    /// The peer's close_notify has been processed.
    PeerClosed,
    /// Both sides have sent close_notify.
    Closed,
}

/// One state handled; what the pump does next.
enum Step {
    Again,
    Stop(Pumped),
}

fn tls_error(error: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

/// Appends what `produce` writes to the end of `out`, growing `out` to the size rustls asks
/// for when the first try does not fit.
fn append_with<E>(
    out: &mut Vec<u8>,
    first_try: usize,
    mut produce: impl FnMut(&mut [u8]) -> Result<usize, E>,
    required: impl Fn(&E) -> Option<usize>,
) -> Result<(), E> {
    let start = out.len();
    let mut room = first_try;
    loop {
        out.resize(start + room, 0);
        match produce(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(error) => {
                out.truncate(start);
                match required(&error) {
                    Some(size) if size > room => room = size,
                    _ => return Err(error),
                }
            }
        }
    }
}

fn encode_required(error: &EncodeError) -> Option<usize> {
    match error {
        EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => {
            Some(*required_size)
        }
        _ => None,
    }
}

fn encrypt_required(error: &EncryptError) -> Option<usize> {
    match error {
        EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => {
            Some(*required_size)
        }
        _ => None,
    }
}

fn oversized() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "TLS: the peer sent more than a record or handshake message may hold",
    )
}

fn encrypt_failed(error: EncryptError) -> io::Error {
    io::Error::other(format!("TLS: {error}"))
}

/// Handles the state one `process_tls_records` returned. Records the peer sent are taken
/// into `plaintext` (or the goal's buffer), handshake records are encoded into `outgoing`.
/// Returns the ciphertext to discard from the front of the incoming buffer with the step.
fn advance<Data>(
    status: UnbufferedStatus<'_, '_, Data>,
    goal: &mut Goal<'_>,
    plaintext: &mut Vec<u8>,
    outgoing: &mut Vec<u8>,
) -> (usize, io::Result<Step>) {
    let mut discard = status.discard;
    let state = match status.state {
        Ok(state) => state,
        Err(error) => return (discard, Err(tls_error(error))),
    };
    let step = match state {
        ConnectionState::ReadTraffic(mut traffic) => {
            while let Some(record) = traffic.next_record() {
                let record = match record {
                    Ok(record) => record,
                    Err(error) => return (discard, Err(tls_error(error))),
                };
                discard += record.discard;
                let mut payload = record.payload;
                if let Goal::Read(buf) = goal {
                    if plaintext.is_empty() {
                        let n = payload.len().min(buf.capacity() - buf.len());
                        buf.extend_from_slice(&payload[..n]);
                        payload = &payload[n..];
                    }
                }
                plaintext.extend_from_slice(payload);
            }
            if matches!(goal, Goal::Read(_)) {
                Ok(Step::Stop(Pumped::Plaintext))
            } else {
                Ok(Step::Again)
            }
        }
        ConnectionState::EncodeTlsData(mut encode) => {
            match append_with(outgoing, 0, |out| encode.encode(out), encode_required) {
                Ok(()) => Ok(Step::Again),
                Err(error) => Err(io::Error::other(format!("TLS: {error}"))),
            }
        }
        ConnectionState::TransmitTlsData(transmit) => {
            // The records are in `outgoing`, which is sent before anything is read again
            // and ahead of every record made after them.
            transmit.done();
            Ok(Step::Again)
        }
        ConnectionState::BlockedHandshake => Ok(Step::Stop(Pumped::NeedRead)),
        ConnectionState::WriteTraffic(mut traffic) => match goal {
            Goal::Write(data) => {
                let first_try = data.len() + data.len().div_ceil(16 * 1024).max(1) * 64;
                match append_with(
                    outgoing,
                    first_try,
                    |out| traffic.encrypt(data, out),
                    encrypt_required,
                ) {
                    Ok(()) => Ok(Step::Stop(Pumped::Writable)),
                    Err(error) => Err(encrypt_failed(error)),
                }
            }
            Goal::Close => {
                match append_with(
                    outgoing,
                    64,
                    |out| traffic.queue_close_notify(out),
                    encrypt_required,
                ) {
                    Ok(()) => Ok(Step::Stop(Pumped::Writable)),
                    Err(error) => Err(encrypt_failed(error)),
                }
            }
            Goal::Handshake | Goal::Read(_) => Ok(Step::Stop(Pumped::Writable)),
        },
        ConnectionState::PeerClosed => Ok(Step::Stop(Pumped::PeerClosed)),
        ConnectionState::Closed => Ok(Step::Stop(Pumped::Closed)),
        // 0-RTT is not enabled (the server config's early data size is 0), so a peer that
        // sends it has broken the protocol; so has any state this code does not know.
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "TLS: unexpected early data or connection state",
        )),
    };
    (discard, step)
}

impl<C: Connection> TlsConnection<C> {
    /// Server side: the handshake is driven by [`TlsConnection::handshake`].
    pub fn server(inner: C, config: Arc<rustls::ServerConfig>) -> io::Result<Self> {
        let tls = UnbufferedServerConnection::new(config).map_err(tls_error)?;
        Ok(Self::wrap(inner, Tls::Server(tls)))
    }

    /// Client side, for `name` (SNI and, when the config verifies, the certificate's name).
    pub fn client(
        inner: C,
        config: Arc<rustls::ClientConfig>,
        name: ServerName<'static>,
    ) -> io::Result<Self> {
        let tls = UnbufferedClientConnection::new(config, name).map_err(tls_error)?;
        Ok(Self::wrap(inner, Tls::Client(tls)))
    }

    fn wrap(inner: C, tls: Tls) -> Self {
        TlsConnection {
            inner,
            state: RefCell::new(tls),
            incoming: RefCell::new(Vec::new()),
            start: Cell::new(0),
            used: Cell::new(0),
            plaintext: RefCell::new(Vec::new()),
            outgoing: RefCell::new(Vec::new()),
            writing: Cell::new(false),
            written: tokio::sync::Notify::new(),
            chunk: Cell::new(CIPHERTEXT_MIN),
            peer_closed: Cell::new(false),
            failed: Cell::new(false),
        }
    }

    /// Runs the handshake to completion. The caller bounds it in time (`conn::within`).
    pub async fn handshake(&self) -> io::Result<TlsSummary> {
        loop {
            let pumped = self.pump(&mut Goal::Handshake);
            // Whatever the pump made (the next flight, or the alert of a failure) goes out
            // before anything else happens.
            let sent = self.send_pending().await;
            match pumped? {
                Pumped::Writable | Pumped::Plaintext if !self.handshaking() => break,
                Pumped::Writable | Pumped::Plaintext | Pumped::NeedRead => {}
                Pumped::PeerClosed | Pumped::Closed => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "peer closed the TLS session during the handshake",
                    ))
                }
            }
            sent?;
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

    fn handshaking(&self) -> bool {
        self.state.borrow().common().is_handshaking()
    }

    /// The ALPN protocol the handshake agreed on, if any.
    pub fn alpn_protocol(&self) -> Option<Vec<u8>> {
        self.state
            .borrow()
            .common()
            .alpn_protocol()
            .map(<[u8]>::to_vec)
    }

    pub fn summary(&self) -> TlsSummary {
        let state = self.state.borrow();
        let state = state.common();
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

    /// Runs rustls over the unprocessed ciphertext until it stops for `goal`. Every record
    /// it makes is appended to `outgoing`; on a TLS error the alert rustls queued for the
    /// peer is there too, so the caller sends `outgoing` whatever the result.
    fn pump(&self, goal: &mut Goal<'_>) -> io::Result<Pumped> {
        if self.failed.get() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "TLS: the session has failed",
            ));
        }
        let mut tls = self.state.borrow_mut();
        let mut incoming = self.incoming.borrow_mut();
        let mut plaintext = self.plaintext.borrow_mut();
        let mut outgoing = self.outgoing.borrow_mut();
        loop {
            let (start, used) = (self.start.get(), self.used.get());
            let records = &mut incoming[start..used];
            let (discard, step) = match &mut *tls {
                Tls::Server(conn) => advance(
                    conn.process_tls_records(records),
                    goal,
                    &mut plaintext,
                    &mut outgoing,
                ),
                Tls::Client(conn) => advance(
                    conn.process_tls_records(records),
                    goal,
                    &mut plaintext,
                    &mut outgoing,
                ),
            };
            let start = start + discard.min(used - start);
            if start == used {
                self.start.set(0);
                self.used.set(0);
            } else {
                self.start.set(start);
            }
            match step {
                Ok(Step::Again) => {}
                Ok(Step::Stop(Pumped::PeerClosed)) => {
                    self.peer_closed.set(true);
                    return Ok(Pumped::PeerClosed);
                }
                Ok(Step::Stop(pumped)) => return Ok(pumped),
                Err(error) => {
                    self.failed.set(true);
                    let records = &mut incoming[self.start.get()..self.used.get()];
                    Self::encode_alert(&mut tls, records, &mut outgoing);
                    return Err(error);
                }
            }
        }
    }

    /// After a TLS error: the alert rustls queued, encoded into `outgoing` (best effort; the
    /// connection ends either way). rustls offers queued records before it looks at the
    /// input, so one call yields the alert without processing the offending input again
    /// (which would make a second alert).
    fn encode_alert(tls: &mut Tls, records: &mut [u8], outgoing: &mut Vec<u8>) {
        fn encode<Data>(status: UnbufferedStatus<'_, '_, Data>, outgoing: &mut Vec<u8>) {
            if let Ok(ConnectionState::EncodeTlsData(mut encode)) = status.state {
                let _ = append_with(outgoing, 0, |out| encode.encode(out), encode_required);
            }
        }
        match tls {
            Tls::Server(conn) => encode(conn.process_tls_records(records), outgoing),
            Tls::Client(conn) => encode(conn.process_tls_records(records), outgoing),
        }
    }

    /// Moves the unprocessed ciphertext to the front of `incoming`, dropping what is
    /// processed.
    fn compact(&self, incoming: &mut Vec<u8>) {
        let (start, used) = (self.start.get(), self.used.get());
        incoming.copy_within(start..used, 0);
        incoming.truncate(used - start);
        self.start.set(0);
        self.used.set(used - start);
    }

    /// Reads ciphertext from the socket after the unprocessed rest. Returns the count read
    /// (0: the peer closed).
    async fn receive(&self) -> io::Result<usize> {
        self.compact(&mut self.incoming.borrow_mut());
        let used = self.used.get();
        if used >= INCOMING_MAX {
            return Err(oversized());
        }
        let want = self.chunk.get();
        let n = if used == 0 {
            // Nothing unprocessed: the read fills the incoming buffer itself.
            let mut raw = std::mem::take(&mut *self.incoming.borrow_mut());
            if raw.capacity() > want + want / 2 {
                // Back from bulk data to commands: an idle read holds only the small buffer.
                raw = Vec::new();
            }
            raw.clear();
            raw.reserve_exact(want);
            let (result, raw) = self.inner.read_into(raw).await;
            let mut incoming = self.incoming.borrow_mut();
            if self.used.get() == 0 {
                *incoming = raw;
            } else {
                // Bytes absorbed while the read was pending: the read's come after them.
                self.compact(&mut incoming);
                incoming.extend_from_slice(&raw);
            }
            self.used.set(incoming.len());
            result?
        } else {
            // A partial record waits: read beside it, then append.
            let (result, raw) = self.inner.read_into(Vec::with_capacity(want)).await;
            let n = result?;
            let mut incoming = self.incoming.borrow_mut();
            self.compact(&mut incoming);
            incoming.extend_from_slice(&raw);
            self.used.set(incoming.len());
            n
        };
        let next = if n >= want {
            (want * 2).min(CIPHERTEXT_MAX)
        } else if n < want / 4 {
            (want / 2).max(CIPHERTEXT_MIN)
        } else {
            want
        };
        self.chunk.set(next);
        Ok(n)
    }

    /// Ciphertext the peer sent before the TLS session existed (read along with a PROXY
    /// header on an implicit-TLS listener): the start of its handshake.
    pub fn absorb_early(&self, bytes: &[u8]) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let mut incoming = self.incoming.borrow_mut();
        self.compact(&mut incoming);
        if self.used.get() + bytes.len() > INCOMING_MAX {
            return Err(oversized());
        }
        incoming.extend_from_slice(bytes);
        self.used.set(incoming.len());
        Ok(())
    }

    /// Writes every record made so far, one writer at a time, in the order they were made.
    async fn send_pending(&self) -> io::Result<()> {
        while self.writing.get() {
            // Registered before yielding: on this single-threaded shard nothing can
            // notify between the check and the await.
            self.written.notified().await;
        }
        let mut result = Ok(());
        self.writing.set(true);
        loop {
            let out = std::mem::take(&mut *self.outgoing.borrow_mut());
            if out.is_empty() {
                *self.outgoing.borrow_mut() = out;
                break;
            }
            let (written, mut out) = self.inner.write_all(out).await;
            out.clear();
            if out.capacity() > 2 * ENCRYPT_STEP {
                // After an unusually large write: not kept for the next.
                out = Vec::new();
            }
            {
                // Records made while this write was in flight went into a fresh buffer;
                // they are sent next, and this one is kept only if none were.
                let mut current = self.outgoing.borrow_mut();
                if current.is_empty() {
                    *current = out;
                }
            }
            if let Err(e) = written {
                result = Err(e);
                break;
            }
        }
        self.writing.set(false);
        self.written.notify_waiters();
        result
    }

    /// Sends a close_notify alert: the orderly end of a TLS session, so the peer can tell it
    /// from a truncation.
    pub async fn close_notify(&self) {
        if self.pump(&mut Goal::Close).is_ok() {
            let _ = self.send_pending().await;
        }
    }

    /// The connection carrying the ciphertext.
    pub fn inner(&self) -> &C {
        &self.inner
    }

    /// Gives back the buffers an idle session does not need while it waits for the peer.
    fn release_idle_buffers(&self) {
        let mut plaintext = self.plaintext.borrow_mut();
        if plaintext.is_empty() && plaintext.capacity() > 0 {
            *plaintext = Vec::new();
        }
        if !self.writing.get() {
            let mut outgoing = self.outgoing.borrow_mut();
            if outgoing.is_empty() && outgoing.capacity() > 0 {
                *outgoing = Vec::new();
            }
        }
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
            {
                let mut plaintext = self.plaintext.borrow_mut();
                if !plaintext.is_empty() {
                    let n = plaintext.len().min(buf.capacity() - start);
                    buf.extend_from_slice(&plaintext[..n]);
                    plaintext.drain(..n);
                    return (Ok(n), buf);
                }
            }
            if self.peer_closed.get() {
                return (Ok(0), buf);
            }
            let pumped = self.pump(&mut Goal::Read(&mut buf));
            // Records rustls made on its own (an alert, a handshake answer) go out before
            // anything is returned or waited for.
            let sent = if self.outgoing.borrow().is_empty() {
                Ok(())
            } else {
                self.send_pending().await
            };
            match pumped {
                Ok(Pumped::Plaintext) if buf.len() > start => return (Ok(buf.len() - start), buf),
                Ok(Pumped::Plaintext) => continue,
                Ok(Pumped::PeerClosed | Pumped::Closed) => return (Ok(0), buf),
                Ok(Pumped::NeedRead | Pumped::Writable) => {}
                Err(e) => return (Err(e), buf),
            }
            if let Err(e) = sent {
                return (Err(e), buf);
            }
            // Nothing copied yet into an empty buffer: it is given back while the ciphertext
            // is waited for (an idle session holds only the ciphertext read's buffer) and
            // allocated again at its capacity.
            let capacity = buf.capacity();
            let parked = start == 0 && buf.is_empty();
            if parked {
                buf = Vec::new();
                self.release_idle_buffers();
            }
            let received = self.receive().await;
            if parked {
                buf = Vec::with_capacity(capacity);
            }
            match received {
                Ok(0) => {
                    // The socket closed without the peer's close_notify: a truncation,
                    // which the driver must not take for an orderly end.
                    return (
                        Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "peer closed the connection without a TLS close_notify",
                        )),
                        buf,
                    );
                }
                Ok(_) => {}
                Err(e) => return (Err(e), buf),
            }
        }
    }

    async fn write_all(&self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let mut written = 0;
        while written < buf.len() {
            let end = buf.len().min(written + ENCRYPT_STEP);
            let pumped = self.pump(&mut Goal::Write(&buf[written..end]));
            let sent = self.send_pending().await;
            match pumped {
                Ok(Pumped::Writable) => written = end,
                // The peer's close_notify ends its half only: our data may still go out.
                Ok(Pumped::PeerClosed | Pumped::Plaintext) => {}
                Ok(Pumped::NeedRead) => {
                    return (
                        Err(io::Error::other(
                            "TLS: write before the handshake completed",
                        )),
                        buf,
                    )
                }
                Ok(Pumped::Closed) => {
                    return (
                        Err(io::Error::new(
                            io::ErrorKind::BrokenPipe,
                            "TLS session already closed",
                        )),
                        buf,
                    )
                }
                Err(e) => return (Err(e), buf),
            }
            if let Err(e) = sent {
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
    use std::io::Write;
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
            echo_over_tls(UringListener::from_std(std).unwrap(), addr, UringConnector).await;
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

    /// Runs `serve` on an io_uring shard thread with the server side of the first
    /// connection (before its handshake); its result, or None if it did not finish in time
    /// (a hang or a spin fails the test instead of stalling it).
    fn on_a_shard<T: Send + 'static>(
        config: Arc<rustls::ServerConfig>,
        serve: impl FnOnce(
                TlsConnection<crate::net::io::uring::UringConnection>,
            ) -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>>
            + Send
            + 'static,
    ) -> (std::net::SocketAddr, std::sync::mpsc::Receiver<T>) {
        let std = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = std.local_addr().unwrap();
        let (done, result) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio_uring::Runtime::new(&tokio_uring::builder()).unwrap();
            let out = runtime.block_on(async move {
                let listener = UringListener::from_std(std).unwrap();
                let (conn, _) = listener.accept().await.unwrap();
                serve(TlsConnection::server(conn, config).unwrap()).await
            });
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
        let (addr, result) = on_a_shard(server_config, move |tls| {
            Box::pin(async move {
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
        let (addr, result) = on_a_shard(server_config, move |tls| {
            Box::pin(async move {
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
    fn a_key_update_from_the_peer_is_answered_before_the_next_reply() {
        // The client (rustls's buffered API) refreshes its keys mid-session and asks the
        // server to do the same (RFC 8446 §4.6.3): the server must read on under the new
        // keys and send its own KeyUpdate before its next data, or the client cannot
        // decrypt the reply.
        let (server_config, client_config, _dir) = pair();
        let (addr, result) = on_a_shard(server_config, move |tls| {
            Box::pin(async move {
                tls.handshake().await.unwrap();
                let mut lines = 0;
                loop {
                    let (read, buf) = tls.read_into(Vec::with_capacity(1024)).await;
                    match read {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(e) => return Err(e.to_string()),
                    }
                    lines += 1;
                    let (written, _) = tls.write_all(buf.to_ascii_uppercase()).await;
                    written.map_err(|e| e.to_string())?;
                }
                tls.shutdown();
                Ok(lines)
            })
        });
        use std::io::Read;
        let mut socket = std::net::TcpStream::connect(addr).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let name = ServerName::try_from("relay.test").unwrap();
        let mut conn = rustls::ClientConnection::new(client_config, name).unwrap();
        while conn.is_handshaking() {
            conn.complete_io(&mut socket).unwrap();
        }
        let mut exchange = |conn: &mut rustls::ClientConnection, line: &[u8]| {
            conn.writer().write_all(line).unwrap();
            while conn.wants_write() {
                conn.write_tls(&mut socket).unwrap();
            }
            let mut got = vec![0; line.len()];
            let mut have = 0;
            while have < line.len() {
                match conn.reader().read(&mut got[have..]) {
                    Ok(n) => have += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        conn.read_tls(&mut socket).unwrap();
                        conn.process_new_packets().unwrap();
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            got
        };
        assert_eq!(exchange(&mut conn, b"before\r\n"), b"BEFORE\r\n");
        conn.refresh_traffic_keys().unwrap();
        assert_eq!(exchange(&mut conn, b"after\r\n"), b"AFTER\r\n");
        assert_eq!(exchange(&mut conn, b"again\r\n"), b"AGAIN\r\n");
        conn.send_close_notify();
        conn.write_tls(&mut socket).unwrap();
        let got = result
            .recv_timeout(Duration::from_secs(20))
            .expect("server finished");
        assert_eq!(got, Ok(3), "an orderly close after three lines");
    }

    #[test]
    fn an_endless_handshake_message_is_refused_not_buffered() {
        // A "ClientHello" announced at 16 MiB, sent as an endless run of handshake records:
        // the handshake fails (rustls refuses a message past 64 KiB, our buffer refuses
        // more than that plus a read) instead of buffering what the peer sends.
        let (server_config, _, _dir) = pair();
        let (addr, result) = on_a_shard(server_config, move |tls| {
            Box::pin(async move {
                let outcome = tls.handshake().await.map(|_| ());
                let held = tls.incoming.borrow().capacity();
                tls.shutdown();
                (outcome.map_err(|e| e.kind()), held)
            })
        });
        let client = std::thread::spawn(move || {
            let mut socket = std::net::TcpStream::connect(addr).unwrap();
            let mut first = vec![0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0xff, 0xff, 0xff];
            first.resize(5 + 0x4000, 0x41);
            if socket.write_all(&first).is_err() {
                return;
            }
            let mut record = vec![0x16, 0x03, 0x03, 0x40, 0x00];
            record.resize(5 + 0x4000, 0x41);
            for _ in 0..1024 {
                if socket.write_all(&record).is_err() {
                    return;
                }
            }
        });
        let (outcome, held) = result
            .recv_timeout(Duration::from_secs(20))
            .expect("the handshake must end");
        assert_eq!(outcome, Err(io::ErrorKind::InvalidData));
        assert!(held <= INCOMING_MAX + CIPHERTEXT_MAX, "held {held} octets");
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
            let listener = UringListener::from_std(std).unwrap();
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
