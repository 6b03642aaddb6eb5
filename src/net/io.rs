//! The thin I/O seam: one connection and listener interface with two engines behind it,
//! io_uring (tokio-uring) and epoll (tokio current-thread). Connection and protocol code is
//! written once against these traits, so both engines run the same logic.
//!
//! Buffers are owned and passed in and out (completion-based I/O needs the kernel to own the
//! buffer while an operation is in flight); epoll gets the same shape for free.
//!
//! The rule from DESIGN.md §1a lives here: a tokio-uring operation is never cancelled by
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
}

/// A listening socket on the current shard.
pub trait Listener {
    type Conn: Connection + 'static;
    async fn accept(&self) -> io::Result<(Self::Conn, SocketAddr)>;
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
    }

    pub struct UringListener(tokio_uring::net::TcpListener);

    impl UringListener {
        /// Must be called on a tokio-uring runtime thread.
        pub fn from_std(listener: std::net::TcpListener) -> Self {
            UringListener(tokio_uring::net::TcpListener::from_std(listener))
        }
    }

    impl Listener for UringListener {
        type Conn = UringConnection;
        async fn accept(&self) -> io::Result<(UringConnection, SocketAddr)> {
            let (stream, peer) = self.0.accept().await?;
            let _ = stream.set_nodelay(true);
            Ok((UringConnection(stream), peer))
        }
    }
}

/// epoll engine (the fallback).
pub mod epoll {
    use super::*;

    pub struct EpollConnection(tokio::net::TcpStream);

    impl Connection for EpollConnection {
        async fn read_into(&self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
            if buf.len() == buf.capacity() {
                return (
                    Err(io::Error::other("read buffer has no spare capacity")),
                    buf,
                );
            }
            loop {
                if let Err(e) = self.0.readable().await {
                    return (Err(e), buf);
                }
                match self.0.try_read_buf(&mut buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    result => return (result, buf),
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

        fn shutdown(&self) {
            let _ = socket2::SockRef::from(&self.0).shutdown(Shutdown::Both);
        }
    }

    pub struct EpollListener(tokio::net::TcpListener);

    impl EpollListener {
        /// Must be called inside a tokio runtime.
        pub fn from_std(listener: std::net::TcpListener) -> io::Result<Self> {
            tokio::net::TcpListener::from_std(listener).map(EpollListener)
        }
    }

    impl Listener for EpollListener {
        type Conn = EpollConnection;
        async fn accept(&self) -> io::Result<(EpollConnection, SocketAddr)> {
            let (stream, peer) = self.0.accept().await?;
            let _ = stream.set_nodelay(true);
            Ok((EpollConnection(stream), peer))
        }
    }
}
