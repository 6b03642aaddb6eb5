//! The thin I/O seam: one connection and listener interface with two engines behind it,
//! io_uring (tokio-uring) and epoll (tokio current-thread). Connection and protocol code is
//! written once against these traits, so both engines run the same logic.
//!
//! Buffers are owned and passed in and out (completion-based I/O needs the kernel to own the
//! buffer while an operation is in flight); epoll gets the same shape for free.
//!
//! The rule of docs/ARCHITECTURE.md §7 lives here: a tokio-uring operation is never cancelled by
//! dropping its future (it would swallow the peer's next bytes and keep the fd open). Callers
//! end a connection with [`Connection::shutdown`] and then let the pending operation finish.
#![allow(async_fn_in_trait)] // single-threaded shards: no `Send` bound is wanted on these futures

use std::io;
use std::net::{Shutdown, SocketAddr};

/// A connected byte stream on the current shard.
pub trait Connection {
    /// Reads into the spare capacity of `buf` (after `buf.len()`), growing `len` by the count
    /// read; 0 means the peer closed. The caller reserves capacity first.
    async fn read_into(&self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>);
    /// Writes all of `buf`.
    async fn write_all(&self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>);
    /// Shuts both directions down: any pending read or write completes at once.
    fn shutdown(&self);
    /// Ends the session in order before a close (TLS sends close_notify); nothing on a
    /// plain socket.
    async fn finish(&self) {}
    /// Resolves once the peer has closed or reset the connection while no read is armed
    /// (e.g. a client gone while its login waits for the hash pool). Reads nothing; stays
    /// pending once input is waiting (that client is not gone) or when it cannot tell.
    async fn peer_closed(&self) {
        std::future::pending::<()>().await
    }
}

/// The readiness watch behind [`Connection::peer_closed`]: epoll's RDHUP (FIN) or HUP
/// (reset), through tokio's reactor, which both engines' runtimes have.
async fn watch_closed(ready: impl AsyncFnOnce() -> io::Result<tokio::io::Ready>) {
    match ready().await {
        Ok(ready) if ready.is_read_closed() || ready.is_error() => {}
        // Input is waiting (its reader will see the close), or the watch failed.
        _ => std::future::pending::<()>().await,
    }
}

/// Opens outbound connections on the current shard (the delivery side).
///
/// Connecting is done through tokio's readiness-based `TcpStream::connect` on both engines:
/// its future can be dropped on a timeout without leaving anything armed (a tokio-uring
/// connect operation would stay armed after its future is dropped). The connected socket
/// then moves to the engine's stream for the data phase.
pub trait Connector {
    type Conn: Connection + 'static;
    async fn connect(&self, addr: SocketAddr, limit: std::time::Duration)
        -> io::Result<Self::Conn>;
}

async fn connect_std(
    addr: SocketAddr,
    limit: std::time::Duration,
) -> io::Result<tokio::net::TcpStream> {
    let stream = tokio::time::timeout(limit, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect to {addr} timed out"),
            )
        })??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A listening socket on the current shard.
pub trait Listener {
    type Conn: Connection + 'static;
    /// Accepts the next connection as this shard's.
    async fn accept(&self) -> io::Result<(Self::Conn, SocketAddr)> {
        let (stream, peer) = self.accept_socket().await?;
        Ok((Self::adopt(stream)?, peer))
    }
    /// Accepts the next connection as a plain socket no engine owns yet: the shard may serve
    /// it ([`Listener::adopt`]) or hand it to another shard, where nothing has to be undone.
    async fn accept_socket(&self) -> io::Result<(std::net::TcpStream, SocketAddr)>;
    /// Makes a socket accepted on any shard a connection of this shard's engine.
    fn adopt(stream: std::net::TcpStream) -> io::Result<Self::Conn>;
}

/// Accepts through tokio's reactor, which both engines' runtimes have. The accepted socket
/// comes out blocking (accept4 does not pass the listener's O_NONBLOCK on) and unregistered:
/// a plain socket to serve here or to send to another shard. io_uring's own accept would give
/// a tokio-uring stream, which has no way back to a plain socket without `unsafe`.
struct Acceptor(tokio::io::unix::AsyncFd<std::net::TcpListener>);

impl Acceptor {
    /// Must be called on a shard's runtime.
    fn new(listener: std::net::TcpListener) -> io::Result<Acceptor> {
        listener.set_nonblocking(true)?;
        let interest = tokio::io::Interest::READABLE;
        // Deprecated for I/O safety: the registration must not outlive the descriptor. Here
        // the `AsyncFd` owns the listener, so the descriptor lives exactly as long (the
        // safe-typed `register_with_interest` is `unsafe`, which this crate forbids).
        #[allow(deprecated)]
        tokio::io::unix::AsyncFd::with_interest(listener, interest).map(Acceptor)
    }

    async fn accept(&self) -> io::Result<(std::net::TcpStream, SocketAddr)> {
        loop {
            let mut ready = self.0.readable().await?;
            if let Ok(accepted) = ready.try_io(|listener| listener.get_ref().accept()) {
                let (stream, peer) = accepted?;
                let _ = stream.set_nodelay(true);
                return Ok((stream, peer));
            }
        }
    }
}

/// io_uring engine.
pub mod uring {
    use super::*;
    use tokio_uring::buf::BoundedBuf;

    pub struct UringConnection(tokio_uring::net::TcpStream);

    impl Connection for UringConnection {
        async fn read_into(&self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
            let start = buf.len();
            if start == buf.capacity() {
                return (
                    Err(io::Error::other("read buffer has no spare capacity")),
                    buf,
                );
            }
            let (result, slice) = self.0.read(buf.slice(start..)).await;
            (result, slice.into_inner())
        }

        async fn write_all(&self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
            self.0.write_all(buf).await
        }

        fn shutdown(&self) {
            // ENOTCONN when the peer already went away is fine: the goal is a closed socket.
            let _ = self.0.shutdown(Shutdown::Both);
        }

        /// io_uring has no readiness to ask, so the socket is registered with the runtime's
        /// tokio reactor for the wait (its own epoll registration; armed io_uring reads are
        /// not touched) and deregistered when the wait ends.
        async fn peer_closed(&self) {
            let fd = FdNumber(std::os::fd::AsRawFd::as_raw_fd(&self.0));
            let interest = tokio::io::Interest::READABLE;
            // Deprecated for I/O safety: the registration must not outlive the descriptor,
            // or its deregistration could hit a reused number. Here it cannot: `watch` lives
            // in this future, which borrows the stream that owns the descriptor (tokio-uring's
            // stream offers no `AsFd`, and the safe-typed `register` is `unsafe`).
            #[allow(deprecated)]
            let registered = tokio::io::unix::AsyncFd::with_interest(fd, interest);
            let Ok(watch) = registered else {
                return std::future::pending().await;
            };
            watch_closed(async || Ok(watch.readable().await?.ready())).await
        }
    }

    /// A descriptor number for the reactor; owns nothing (the stream closes the socket, and
    /// outlives the watch, which borrows it).
    struct FdNumber(std::os::fd::RawFd);

    impl std::os::fd::AsRawFd for FdNumber {
        fn as_raw_fd(&self) -> std::os::fd::RawFd {
            self.0
        }
    }

    /// Connects with tokio (cancellable), then hands the socket to io_uring.
    pub struct UringConnector;

    impl Connector for UringConnector {
        type Conn = UringConnection;
        async fn connect(
            &self,
            addr: SocketAddr,
            limit: std::time::Duration,
        ) -> io::Result<UringConnection> {
            let stream = super::connect_std(addr, limit).await?.into_std()?;
            // io_uring waits for readiness itself; a blocking fd keeps reads from returning
            // EAGAIN to us.
            stream.set_nonblocking(false)?;
            Ok(UringConnection(tokio_uring::net::TcpStream::from_std(
                stream,
            )))
        }
    }

    pub struct UringListener(Acceptor);

    impl UringListener {
        /// Must be called on a tokio-uring runtime thread.
        pub fn from_std(listener: std::net::TcpListener) -> io::Result<Self> {
            Acceptor::new(listener).map(UringListener)
        }
    }

    impl Listener for UringListener {
        type Conn = UringConnection;
        async fn accept_socket(&self) -> io::Result<(std::net::TcpStream, SocketAddr)> {
            self.0.accept().await
        }

        fn adopt(stream: std::net::TcpStream) -> io::Result<UringConnection> {
            // io_uring waits for readiness itself (and accepted sockets are blocking already:
            // said once more, as the connector does, rather than relied on).
            stream.set_nonblocking(false)?;
            Ok(UringConnection(tokio_uring::net::TcpStream::from_std(
                stream,
            )))
        }
    }
}

/// epoll engine (the fallback).
pub mod epoll {
    use super::*;

    pub struct EpollConnection(tokio::net::TcpStream);

    impl Connection for EpollConnection {
        /// An empty buffer is not needed until the socket is readable: it is given back
        /// for the wait and allocated again at its capacity for the read, so a connection
        /// waiting for its next command holds no read buffer on this engine.
        async fn read_into(&self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
            if buf.len() == buf.capacity() {
                return (
                    Err(io::Error::other("read buffer has no spare capacity")),
                    buf,
                );
            }
            let capacity = buf.capacity();
            let mut parked = if buf.is_empty() { None } else { Some(buf) };
            loop {
                let ready = self.0.readable().await;
                let buf = parked.get_or_insert_with(|| Vec::with_capacity(capacity));
                if let Err(e) = ready {
                    return (Err(e), std::mem::take(buf));
                }
                match self.0.try_read_buf(buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    result => return (result, std::mem::take(buf)),
                }
            }
        }

        async fn write_all(&self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
            let mut written = 0;
            while written < buf.len() {
                if let Err(e) = self.0.writable().await {
                    return (Err(e), buf);
                }
                match self.0.try_write(&buf[written..]) {
                    Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), buf),
                    Ok(n) => written += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return (Err(e), buf),
                }
            }
            (Ok(()), buf)
        }

        /// A one-byte `MSG_PEEK`: tokio's cached readiness can still say "readable" from
        /// the read that took the last command (it is cleared only by a `WouldBlock`), so
        /// asking readiness alone would miss a FIN that arrives later. The peek waits
        /// properly and tells end of stream (0) from waiting input.
        async fn peer_closed(&self) {
            let mut probe = [0u8; 1];
            match self.0.peek(&mut probe).await {
                // Input is waiting: its reader will see whatever follows.
                Ok(n) if n > 0 => std::future::pending::<()>().await,
                // End of stream, or the connection was reset.
                Ok(_) | Err(_) => {}
            }
        }

        fn shutdown(&self) {
            let _ = socket2::SockRef::from(&self.0).shutdown(Shutdown::Both);
        }
    }

    pub struct EpollConnector;

    impl Connector for EpollConnector {
        type Conn = EpollConnection;
        async fn connect(
            &self,
            addr: SocketAddr,
            limit: std::time::Duration,
        ) -> io::Result<EpollConnection> {
            super::connect_std(addr, limit).await.map(EpollConnection)
        }
    }

    pub struct EpollListener(Acceptor);

    impl EpollListener {
        /// Must be called inside a tokio runtime.
        pub fn from_std(listener: std::net::TcpListener) -> io::Result<Self> {
            Acceptor::new(listener).map(EpollListener)
        }
    }

    impl Listener for EpollListener {
        type Conn = EpollConnection;
        async fn accept_socket(&self) -> io::Result<(std::net::TcpStream, SocketAddr)> {
            self.0.accept().await
        }

        fn adopt(stream: std::net::TcpStream) -> io::Result<EpollConnection> {
            stream.set_nonblocking(true)?;
            tokio::net::TcpStream::from_std(stream).map(EpollConnection)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::epoll::EpollConnector;
    use super::uring::UringConnector;
    use super::*;
    use std::io::{Read, Write};
    use std::time::Duration;

    /// A peer on loopback that answers one line with "pong\r\n".
    fn echo_peer() -> (SocketAddr, std::thread::JoinHandle<Vec<u8>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let peer = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut got = vec![0u8; 6];
            stream.read_exact(&mut got).unwrap();
            stream.write_all(b"pong\r\n").unwrap();
            got
        });
        (addr, peer)
    }

    async fn ping<C: Connector>(connector: C, addr: SocketAddr) -> Vec<u8> {
        let conn = connector
            .connect(addr, Duration::from_secs(5))
            .await
            .unwrap();
        let (written, _) = conn.write_all(b"ping\r\n".to_vec()).await;
        written.unwrap();
        let (read, buf) = conn.read_into(Vec::with_capacity(64)).await;
        read.unwrap();
        conn.shutdown();
        buf
    }

    #[test]
    fn uring_connector_moves_bytes() {
        let (addr, peer) = echo_peer();
        let runtime = tokio_uring::Runtime::new(&tokio_uring::builder()).unwrap();
        let reply = runtime.block_on(ping(UringConnector, addr));
        assert_eq!(reply, b"pong\r\n");
        assert_eq!(peer.join().unwrap(), b"ping\r\n");
    }

    #[test]
    fn epoll_connector_moves_bytes() {
        let (addr, peer) = echo_peer();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let reply = runtime.block_on(ping(EpollConnector, addr));
        assert_eq!(reply, b"pong\r\n");
        assert_eq!(peer.join().unwrap(), b"ping\r\n");
    }

    #[test]
    fn connect_timeout_ends_a_hanging_connect() {
        // A listener that never accepts, with its accept queue full: the kernel drops
        // further SYNs and a connect hangs (loopback only).
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        socket.listen(0).unwrap();
        let addr = socket.local_addr().unwrap().as_socket().unwrap();
        let mut held = Vec::new();
        for _ in 0..8 {
            if let Ok(s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                held.push(s);
            }
        }
        let runtime = tokio_uring::Runtime::new(&tokio_uring::builder()).unwrap();
        let started = std::time::Instant::now();
        let result = runtime.block_on(UringConnector.connect(addr, Duration::from_millis(300)));
        assert_eq!(
            result.err().map(|e| e.kind()),
            Some(io::ErrorKind::TimedOut)
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn refused_connection_is_an_error_not_a_hang() {
        // A port that was just free: nothing listens there.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let runtime = tokio_uring::Runtime::new(&tokio_uring::builder()).unwrap();
        let result = runtime.block_on(UringConnector.connect(addr, Duration::from_secs(5)));
        assert_eq!(
            result.err().map(|e| e.kind()),
            Some(io::ErrorKind::ConnectionRefused)
        );
    }
}
