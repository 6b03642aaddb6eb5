//! The home side of a proxied web session's requests: a peer's cluster-listener connection
//! that asked for ALPN [`login_wire::WEB_ALPN`] (`relay-web`) carries plain HTTP/1.1 inside
//! the cluster's mutual TLS, and is served by this node's web server as one of its own
//! connections ([`crate::web::serve::WebIntake`]).
//!
//! **Who is trusted.** The peer passed the listener's mutual TLS (its certificate chains to
//! the cluster CA): it is a node of the cluster forwarding a browser's request
//! (`server::web_proxy`). It gains nothing a browser would not: the web server checks the
//! session cookie and the CSRF tokens of every request itself, as for a request on its
//! public listener. The session cookies and the mail bodies cross between nodes inside
//! the TLS only; the public web listener plays no part (the node table's `web` address
//! is not used).
//!
//! **Limits.** The web server's own: the bound on connections (counted with its
//! listeners'; past it the connection closes at once), the header-read timeout and the
//! request body limit ([`crate::web::serve::WebIntake`]). Here: one buffer of [`BRIDGE_BUFFER`] octets per direction, and
//! [`IDLE`] with no byte either way closes the connection; so does this node's shutdown.
//! The front node sends one request per connection.

use std::cell::Cell;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::watch;
use tokio::time::Instant;

use super::shard::ShardContext;
use crate::cluster::login_wire;
use crate::net::conn::{within, READ_CHUNK};
use crate::net::io::Connection;
use crate::runtime::Phase;

/// No byte either way for this long and the connection closes (a request's head must come
/// within the web server's own, shorter, header-read timeout).
pub const IDLE: Duration = Duration::from_secs(120);
/// The buffer between this connection and the web server, per direction.
pub const BRIDGE_BUFFER: usize = 64 * 1024;
/// How long the TLS close may take once the web server is done.
const FINISH_LIMIT: Duration = Duration::from_secs(5);

/// Serves one connection (after its TLS handshake) until either side ends it.
pub async fn serve<C: Connection>(conn: &C, ctx: &ShardContext, peer: SocketAddr) {
    let Some(web) = ctx.web_home.get() else {
        tracing::warn!(target: "relay::web", peer = %peer.ip(), "proxied web request refused: this node runs no web server");
        conn.shutdown();
        return;
    };
    let (near, far) = tokio::io::duplex(BRIDGE_BUFFER);
    if !web.intake.serve(far, peer) {
        tracing::warn!(target: "relay::web", peer = %peer.ip(), "proxied web request refused: the web server is stopping or has too many waiting");
        conn.shutdown();
        return;
    }
    let (up, down) = bridge(conn, near, IDLE, ctx.phase.clone()).await;
    tracing::debug!(target: "relay::web", peer = %peer, to_web = up, from_web = down, alpn = %String::from_utf8_lossy(login_wire::WEB_ALPN), "proxied web connection closed");
}

/// Moves bytes between `conn` and the web server's end of `near` until the web server
/// closes, `conn` fails, nothing moved for `idle`, or shutdown. No operation on `conn` is
/// left armed: its read and write are always awaited to completion (a shutdown completes
/// them at once); only the in-memory side's waits are cut short. Returns the bytes moved
/// (to the web server, from it).
async fn bridge<C: Connection>(
    conn: &C,
    near: DuplexStream,
    idle: Duration,
    mut phase: watch::Receiver<Phase>,
) -> (u64, u64) {
    let (mut from_web, mut to_web) = tokio::io::split(near);
    let last = Cell::new(Instant::now());
    let (cancel, cancelled) = watch::channel(false);
    let cut = || {
        let mut cancelled = cancelled.clone();
        async move {
            let _ = cancelled.wait_for(|c| *c).await;
        }
    };
    let up = async {
        let mut moved = 0u64;
        let mut buffer = Vec::with_capacity(READ_CHUNK);
        loop {
            let (read, filled) = conn.read_into(buffer).await;
            buffer = filled;
            if !matches!(read, Ok(n) if n > 0) {
                break;
            }
            last.set(Instant::now());
            moved += buffer.len() as u64;
            let written = tokio::select! {
                written = to_web.write_all(&buffer) => written.is_ok(),
                () = cut() => false,
            };
            if !written {
                break;
            }
            last.set(Instant::now());
            buffer.clear();
        }
        // The front node sent all it will: the web server sees the end of its requests
        // and closes once its response is written.
        tokio::select! {
            _ = to_web.shutdown() => {}
            () = cut() => {}
        }
        moved
    };
    let down = async {
        let mut moved = 0u64;
        let mut chunk = vec![0u8; READ_CHUNK];
        let mut buffer = Vec::with_capacity(READ_CHUNK);
        loop {
            let n = tokio::select! {
                read = from_web.read(&mut chunk) => match read {
                    Ok(n) if n > 0 => n,
                    _ => break,
                },
                () = cut() => break,
            };
            last.set(Instant::now());
            moved += n as u64;
            buffer.clear();
            buffer.extend_from_slice(&chunk[..n]);
            let (written, back) = conn.write_all(buffer).await;
            buffer = back;
            if written.is_err() {
                break;
            }
            last.set(Instant::now());
        }
        // The web server is done: close the TLS in order, then the connection (the other
        // direction's pending read completes at once).
        let _ = within(conn, FINISH_LIMIT, conn.finish()).await;
        conn.shutdown();
        moved
    };
    let both = async { tokio::join!(up, down) };
    tokio::pin!(both);
    tokio::select! {
        biased;
        moved = &mut both => moved,
        () = super::login_proxy::quiet_or_stopped(&last, idle, &mut phase) => {
            conn.shutdown();
            let _ = cancel.send(true);
            both.await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::io::epoll::EpollConnector;
    use crate::net::io::Connector;
    use std::io::{Read as _, Write as _};

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn the_bridge_carries_a_request_and_its_response_and_ends_with_the_web_side() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let front = std::thread::spawn(move || {
            let (mut front, _) = listener.accept().unwrap();
            front.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
            let mut back = Vec::new();
            front.read_to_end(&mut back).unwrap();
            back
        });
        let (_stop, phase) = watch::channel(Phase::Running);
        let moved = runtime().block_on(async {
            let conn = EpollConnector
                .connect(addr, Duration::from_secs(5))
                .await
                .unwrap();
            let (near, mut far) = tokio::io::duplex(16);
            let web = async {
                let mut request = [0u8; 18];
                far.read_exact(&mut request).await.unwrap();
                assert_eq!(&request, b"GET / HTTP/1.1\r\n\r\n");
                let big = vec![b'r'; 100_000];
                far.write_all(&big).await.unwrap();
                drop(far);
            };
            let (moved, ()) =
                tokio::join!(bridge(&conn, near, Duration::from_secs(10), phase), web);
            moved
        });
        assert_eq!(moved, (18, 100_000));
        assert_eq!(front.join().unwrap(), vec![b'r'; 100_000]);
    }

    #[test]
    fn an_idle_bridge_closes_and_leaves_nothing_armed() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let front = std::thread::spawn(move || {
            let (mut front, _) = listener.accept().unwrap();
            let mut back = Vec::new();
            front.read_to_end(&mut back).unwrap();
            back.len()
        });
        let (_stop, phase) = watch::channel(Phase::Running);
        let started = std::time::Instant::now();
        runtime().block_on(async {
            let conn = EpollConnector
                .connect(addr, Duration::from_secs(5))
                .await
                .unwrap();
            // The web side neither reads nor writes nor closes.
            let (near, _far) = tokio::io::duplex(16);
            bridge(&conn, near, Duration::from_millis(200), phase).await
        });
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(front.join().unwrap(), 0);
    }
}
