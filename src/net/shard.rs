//! One shard's network side: its accept loops and the state its connections share.
//!
//! Everything here lives on one pinned thread (`Rc`, no locks); the only cross-core state is
//! the per-client connection table and the spool writer's queue.

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::conn::{stop_requested, READ_CHUNK};
use super::io::{Connection, Listener};
use super::limits::AuthFailures;
use super::limits::{Admission, Permit, Refusal, Unidentified};
use super::listener::stop_accepting;
use super::pop3_conn;
use super::proxy::{self, Parsed, ProxyError};
use super::smtp_conn;
use crate::mailbox::{Directory, MailStore};
use crate::runtime::Phase;
use crate::smtp::{Reply, SessionConfig};
use crate::spool::{ShardHandle, Spool};

/// What every connection task of a shard needs.
pub struct ShardContext {
    pub shard: usize,
    pub hostname: String,
    pub session_config: Arc<SessionConfig>,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    /// `smtp.data_rate_min` in bytes per second; 0: no rate check.
    pub data_rate_min: u64,
    /// Connections on SMTP (POP3) listeners start with a PROXY protocol header.
    pub smtp_proxy_protocol: bool,
    pub pop3_proxy_protocol: bool,
    /// This shard's spool writer (appends from this core go to its own shard).
    pub spool: ShardHandle,
    /// The whole spool, for reading stored messages from any shard.
    pub store: Arc<Spool>,
    /// Maildrops, updated once a local delivery or a deletion is durable.
    pub mail_store: Arc<MailStore>,
    pub pop3: Pop3Context,
    pub smtp_auth: SmtpAuthContext,
    pub admission: Admission,
    pub phase: watch::Receiver<Phase>,
    /// Outbound delivery: the mesh to hand recipients to their owner core, and settings.
    pub delivery: Arc<crate::net::delivery::DeliveryShared>,
    /// This core's metric handles (atomics; no lock per event).
    pub metrics: crate::metrics::CoreMetrics,
    /// The certificate for STARTTLS, STLS and implicit TLS; `None`: no TLS offered.
    pub server_tls: Option<crate::tls::ServerTls>,
    pub tls_handshake_timeout: Duration,
    /// `smtp.dnsbl_zones` (empty: no lookups) and what the lookups need.
    pub dnsbl: Dnsbl,
}

/// Block-list settings and this core's resolver for them.
pub struct Dnsbl {
    pub zones: Vec<String>,
    pub timeout: Duration,
    pub dns_servers: Vec<SocketAddr>,
    /// Built on first use, on the core's runtime (hickory spawns its tasks there).
    pub resolver: std::cell::OnceCell<crate::queue::resolve::SystemResolver>,
    /// After a failed build: not before this instant again.
    pub retry_at: std::cell::Cell<Option<std::time::Instant>>,
}

/// How long a core waits before building its block-list resolver again after a failure
/// (an unreadable `/etc/resolv.conf` at start is usually fixed by the operator soon).
const RESOLVER_RETRY: Duration = Duration::from_secs(60);

impl Dnsbl {
    pub fn new(zones: Vec<String>, timeout: Duration, dns_servers: Vec<SocketAddr>) -> Dnsbl {
        Dnsbl {
            zones,
            timeout,
            dns_servers,
            resolver: std::cell::OnceCell::new(),
            retry_at: std::cell::Cell::new(None),
        }
    }

    /// The resolver, built now if needed; `None` while it cannot be built (clients are then
    /// let in unchecked: the lists fail open), retried every [`RESOLVER_RETRY`].
    pub fn resolver(&self) -> Option<&crate::queue::resolve::SystemResolver> {
        if let Some(resolver) = self.resolver.get() {
            return Some(resolver);
        }
        let now = std::time::Instant::now();
        if self.retry_at.get().is_some_and(|at| now < at) {
            return None;
        }
        match crate::queue::resolve::SystemResolver::new(&self.dns_servers) {
            Ok(resolver) => Some(self.resolver.get_or_init(|| resolver)),
            Err(error) => {
                tracing::warn!(%error, retry = ?RESOLVER_RETRY, "no DNS resolver for block lists; clients are not checked until it can be built");
                self.retry_at.set(Some(now + RESOLVER_RETRY));
                None
            }
        }
    }
}

/// What POP3 connections need besides the common parts.
pub struct Pop3Context {
    pub config: Arc<crate::pop3::Pop3Config>,
    pub directory: Arc<Directory>,
    pub idle_timeout: Duration,
    /// How long a begun command line may take to complete (`pop3.command_timeout`).
    pub command_timeout: Duration,
    pub auth_failure_delay: Duration,
    pub auth_failures: Arc<AuthFailures>,
    /// `pop3.allow_plaintext_auth`: passwords before TLS from beyond loopback.
    pub allow_plaintext_auth: bool,
}

/// What SMTP AUTH needs: the POP3 users' directory and its own failure limits.
pub struct SmtpAuthContext {
    pub directory: Arc<Directory>,
    pub failure_delay: Duration,
    pub failures: Arc<AuthFailures>,
}

/// Which protocol a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Smtp,
    Pop3,
}

/// A listener plus a duplicate of its socket, used to stop a pending accept at shutdown.
pub struct Bound<L> {
    pub listener: L,
    pub socket: std::net::TcpListener,
    pub protocol: Protocol,
    /// Connections start with a TLS handshake (ports 465 and 995, RFC 8314).
    pub implicit_tls: bool,
}

/// Runs the shard until shutdown has drained (or force-closed) every connection.
pub async fn run<L: Listener + 'static>(ctx: Rc<ShardContext>, listeners: Vec<Bound<L>>) {
    let mut sockets = Vec::new();
    let mut loops = Vec::new();
    for bound in listeners {
        sockets.push(bound.socket);
        loops.push(tokio::task::spawn_local(accept_loop(
            Rc::clone(&ctx),
            bound.listener,
            bound.protocol,
            bound.implicit_tls,
        )));
    }
    let mut phase = ctx.phase.clone();
    while *phase.borrow_and_update() == Phase::Running {
        if phase.changed().await.is_err() {
            break;
        }
    }
    // Stop accepting: the pending accepts complete with an error and their loops end.
    for socket in &sockets {
        stop_accepting(socket);
    }
    for accept in loops {
        let _ = accept.await;
    }
    // Connections end by themselves: at once when idle, after their transaction when
    // draining, at once when the phase turns to Stopping.
    ctx.admission.idle().await;
}

async fn accept_loop<L: Listener>(
    ctx: Rc<ShardContext>,
    listener: L,
    protocol: Protocol,
    implicit_tls: bool,
) {
    let proxied = match protocol {
        Protocol::Smtp => ctx.smtp_proxy_protocol,
        Protocol::Pop3 => ctx.pop3_proxy_protocol,
    };
    loop {
        let accepted = listener.accept().await;
        if *ctx.phase.borrow() != Phase::Running {
            if let Ok((conn, _)) = accepted {
                conn.shutdown();
            }
            return;
        }
        match accepted {
            Ok((conn, peer)) => {
                let refused = if proxied {
                    // The client is named by the PROXY header: only the core limit applies
                    // until then.
                    match ctx.admission.admit_unidentified() {
                        Ok(pending) => {
                            let task = serve_proxied(
                                conn,
                                peer,
                                Rc::clone(&ctx),
                                pending,
                                protocol,
                                implicit_tls,
                            );
                            tokio::task::spawn_local(task);
                            None
                        }
                        Err(refusal) => Some((conn, refusal)),
                    }
                } else {
                    match ctx.admission.admit(peer.ip()) {
                        Ok(permit) => {
                            let task = serve(
                                conn,
                                peer,
                                Rc::clone(&ctx),
                                permit,
                                protocol,
                                implicit_tls,
                                Vec::new(),
                            );
                            tokio::task::spawn_local(task);
                            None
                        }
                        Err(refusal) => Some((conn, refusal)),
                    }
                };
                if let Some((conn, refusal)) = refused {
                    let task = turn_away(conn, peer, Rc::clone(&ctx), protocol, refusal);
                    tokio::task::spawn_local(task);
                }
            }
            Err(error) => {
                if out_of_resources(&error) {
                    // Out of descriptors or memory: spinning on accept would only burn the
                    // core; back off briefly and let connections finish.
                    tracing::warn!(%error, "accept failed; pausing 100ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                } else {
                    tracing::debug!(%error, "accept failed");
                }
            }
        }
    }
}

/// Runs the protocol's driver on an admitted connection; `input` is what the client already
/// sent (bytes that followed a PROXY header).
async fn serve<C: Connection>(
    conn: C,
    peer: SocketAddr,
    ctx: Rc<ShardContext>,
    permit: Permit,
    protocol: Protocol,
    implicit_tls: bool,
    input: Vec<u8>,
) {
    match protocol {
        Protocol::Smtp => smtp_conn::serve(conn, peer, ctx, permit, input, implicit_tls).await,
        Protocol::Pop3 => pop3_conn::serve(conn, peer, ctx, permit, input, implicit_tls).await,
    }
}

/// Answers a refused connection with its protocol's "too many connections" and closes it.
async fn turn_away<C: Connection>(
    conn: C,
    peer: SocketAddr,
    ctx: Rc<ShardContext>,
    protocol: Protocol,
    refusal: Refusal,
) {
    tracing::info!(client = %peer, ?refusal, ?protocol, "connection refused");
    let mut reply = Vec::new();
    match protocol {
        Protocol::Smtp => {
            ctx.metrics.smtp.refused.inc();
            refusal_reply(&ctx.hostname, refusal).encode(&mut reply)
        }
        Protocol::Pop3 => {
            ctx.metrics.pop3.refused.inc();
            crate::pop3::Reply::too_many_connections().encode(&mut reply)
        }
    }
    smtp_conn::refuse(conn, reply).await;
}

/// How long a proxied connection may take to send its PROXY header: 10 s, or the protocol's
/// own idle limit when that is shorter. A proxy writes the header as soon as it has
/// connected (HAProxy and the cloud balancers send it in their first segment), so a wait
/// longer than a few retransmissions means the peer is not a proxy; the protocol's timeout
/// (minutes) would let such peers hold core slots without ever being greeted.
pub const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection on a `proxy_protocol` listener: reads the header, then admits the client it
/// names (per-IP limits, relay control and logs all see that address) and serves it. A
/// connection without a valid header is closed without a greeting, with one log line.
async fn serve_proxied<C: Connection>(
    conn: C,
    socket_peer: SocketAddr,
    ctx: Rc<ShardContext>,
    pending: Unidentified,
    protocol: Protocol,
    implicit_tls: bool,
) {
    let idle = match protocol {
        Protocol::Smtp => ctx.command_timeout,
        Protocol::Pop3 => ctx.pop3.idle_timeout,
    };
    let limit = PROXY_HEADER_TIMEOUT.min(idle);
    let mut phase = ctx.phase.clone();
    let (source, input) = match read_proxy_header(&conn, limit, &mut phase).await {
        Ok(header) => header,
        Err(failure) => {
            tracing::info!(client = %socket_peer, ?protocol, reason = %failure, "connection closed without a PROXY header");
            conn.shutdown();
            return;
        }
    };
    // v1 UNKNOWN, v2 LOCAL or UNSPEC: the proxy speaks for itself.
    let peer = source.unwrap_or(socket_peer);
    tracing::debug!(client = %peer, proxy = %socket_peer, ?protocol, "PROXY header read");
    match pending.identify(peer.ip()) {
        Ok(permit) => serve(conn, peer, ctx, permit, protocol, implicit_tls, input).await,
        Err(refusal) => turn_away(conn, peer, ctx, protocol, refusal).await,
    }
}

/// Why a proxied connection ended before its header was complete.
#[derive(Debug, thiserror::Error)]
enum HeaderFailure {
    #[error(transparent)]
    Invalid(#[from] ProxyError),
    #[error("no complete header within {0:?}")]
    Timeout(Duration),
    #[error("closed by the peer")]
    Closed,
    #[error("read error: {0}")]
    Read(io::Error),
    #[error("server shutting down")]
    Stopping,
}

/// Reads until the PROXY header is complete: its source address (None: keep the socket's)
/// and the bytes read after it. Never reads past `proxy::MAX_HEADER` without deciding;
/// the deadline and shutdown shut the socket down, then let the pending read complete.
async fn read_proxy_header<C: Connection>(
    conn: &C,
    limit: Duration,
    phase: &mut watch::Receiver<Phase>,
) -> Result<(Option<SocketAddr>, Vec<u8>), HeaderFailure> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut input: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    loop {
        if let Parsed::Complete {
            consumed, source, ..
        } = proxy::parse(&input)?
        {
            input.drain(..consumed);
            return Ok((source, input));
        }
        let read = conn.read_into(input);
        tokio::pin!(read);
        tokio::select! {
            biased;
            (result, buffer) = &mut read => {
                input = buffer;
                match result {
                    Ok(0) => return Err(HeaderFailure::Closed),
                    Ok(_) => {}
                    Err(error) => return Err(HeaderFailure::Read(error)),
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                conn.shutdown();
                let _ = read.await;
                return Err(HeaderFailure::Timeout(limit));
            }
            _ = stop_requested(phase, false) => {
                conn.shutdown();
                let _ = read.await;
                return Err(HeaderFailure::Stopping);
            }
        }
    }
}

fn out_of_resources(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

fn refusal_reply(hostname: &str, refusal: Refusal) -> Reply {
    match refusal {
        Refusal::CoreFull => Reply::too_many_connections(hostname),
        Refusal::ClientFull => Reply::too_many_connections_from_client(hostname),
    }
}
