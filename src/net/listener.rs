//! Listening sockets: one per shard per configured address, sharing the port through
//! SO_REUSEPORT so the kernel spreads connections across cores without a shared accept queue.
//!
//! All sockets are bound by the main thread before any shard starts, so a bad address fails
//! the start with one clear line instead of a half-started server. Port 0 (tests) is resolved
//! by the first bind and reused for the other shards' sockets.

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

/// Kernel accept backlog; net.core.somaxconn caps it (see tuning/kernel).
const BACKLOG: i32 = 4096;

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    pub source: io::Error,
}

/// The sockets for one configured address: `sockets[i]` belongs to shard `i`.
pub struct ListenerSet {
    pub addr: SocketAddr,
    pub sockets: Vec<TcpListener>,
}

/// Binds `shards` SO_REUSEPORT sockets on `addr`.
///
/// A fixed port is first bound once without SO_REUSEPORT and released: the kernel lets any
/// process of the same user join a SO_REUSEPORT group, so without that check a second relay
/// (another config, same port) would start and silently take half of the first one's
/// clients. Postfix and Dovecot refuse an address in use; so does this. (Port 0 needs no
/// check: the kernel never picks a port that is bound.)
pub fn bind_shared(addr: SocketAddr, shards: usize) -> Result<ListenerSet, BindError> {
    if addr.port() != 0 {
        exclusive_probe(addr).map_err(|source| BindError { addr, source })?;
    }
    let first = bind_one(addr).map_err(|source| BindError { addr, source })?;
    let actual = first
        .local_addr()
        .map_err(|source| BindError { addr, source })?;
    let mut sockets = vec![first];
    for _ in 1..shards {
        sockets.push(bind_one(actual).map_err(|source| BindError {
            addr: actual,
            source,
        })?);
    }
    Ok(ListenerSet {
        addr: actual,
        sockets,
    })
}

/// Binds `addr` without SO_REUSEPORT (SO_REUSEADDR still passes connections in TIME_WAIT)
/// and closes it: fails with `EADDRINUSE` when any socket holds the address.
fn exclusive_probe(addr: SocketAddr) -> io::Result<()> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())
}

fn bind_one(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        // `[::]` should mean IPv6 only; a separate `0.0.0.0` entry covers IPv4.
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Whether two of our listeners on `a` and `b` would take each other's connections: the
/// same port on the same address, or on one address and a wildcard of its family. The
/// kernel lets such binds succeed because every socket of ours sets SO_REUSEPORT, and then
/// silently spreads one port's clients over two protocols; the start refuses it instead.
/// (`[::]` is bound IPv6-only, so it does not overlap IPv4.)
pub fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// Makes a pending `accept` on this listening socket (possibly an io_uring operation that
/// must not be dropped) complete with an error, so an accept loop can end without leaking
/// an armed operation. Works through any duplicate of the socket.
pub fn stop_accepting(socket: &TcpListener) {
    let _ = socket2::SockRef::from(socket).shutdown(std::net::Shutdown::Read);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_is_shared_by_every_shard() {
        let set = bind_shared("127.0.0.1:0".parse().unwrap(), 3).expect("bind");
        assert_ne!(set.addr.port(), 0);
        assert_eq!(set.sockets.len(), 3);
        for socket in &set.sockets {
            assert_eq!(socket.local_addr().unwrap(), set.addr);
        }
    }

    #[test]
    fn a_taken_port_is_reported_with_its_address() {
        let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = plain.local_addr().unwrap();
        let err = bind_shared(addr, 1)
            .err()
            .expect("port is taken without SO_REUSEPORT");
        assert_eq!(err.addr, addr);
        assert!(err.to_string().contains(&addr.to_string()));
    }

    /// Another relay (here: the same call again, as the kernel cannot tell the two apart:
    /// same user) on a fixed port that is already ours is refused, not let into the group.
    #[test]
    fn a_port_another_relay_listens_on_is_refused() {
        let set = bind_shared("127.0.0.1:0".parse().unwrap(), 2).expect("bind");
        let err = bind_shared(set.addr, 2)
            .err()
            .expect("a second SO_REUSEPORT group member on a fixed port");
        assert_eq!(err.addr, set.addr);
        assert_eq!(err.source.kind(), io::ErrorKind::AddrInUse);
        drop(set);
        // Released: the port is free again.
        let again = bind_shared(err.addr, 2).expect("the port is free again");
        assert_eq!(again.addr, err.addr);
    }

    #[test]
    fn overlapping_listeners_are_those_that_would_share_clients() {
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(overlaps(at("127.0.0.1:25"), at("127.0.0.1:25")));
        assert!(overlaps(at("0.0.0.0:25"), at("127.0.0.1:25")));
        assert!(overlaps(at("127.0.0.2:25"), at("0.0.0.0:25")));
        assert!(overlaps(at("[::]:25"), at("[::1]:25")));
        assert!(!overlaps(at("127.0.0.1:25"), at("127.0.0.2:25")));
        assert!(!overlaps(at("127.0.0.1:25"), at("127.0.0.1:26")));
        assert!(!overlaps(at("[::]:25"), at("0.0.0.0:25")));
        assert!(!overlaps(at("[::1]:25"), at("127.0.0.1:25")));
    }

    #[test]
    fn stop_accepting_wakes_a_blocked_accept() {
        let set = bind_shared("127.0.0.1:0".parse().unwrap(), 1).expect("bind");
        let listener = set.sockets.into_iter().next().unwrap();
        listener.set_nonblocking(false).unwrap();
        let clone = listener.try_clone().unwrap();
        let waiter = std::thread::spawn(move || listener.accept().map(|_| ()));
        // Either order proves the point: shut down before the accept starts, accept fails at
        // once; after, the blocked accept wakes. The pause makes the second case the usual one.
        std::thread::sleep(std::time::Duration::from_millis(50));
        stop_accepting(&clone);
        let result = waiter.join().unwrap();
        assert!(
            result.is_err(),
            "accept must fail once the socket is shut down"
        );
    }
}
