//! One shard's network side: its accept loops and the state its connections share.
//!
//! Everything here lives on one pinned thread (`Rc`, no locks); the only cross-core state is
//! the per-client connection table, the spool writer's queue and the shards' connection
//! counts with the queues that carry accepted sockets to a less busy shard (`balance`).

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use std::thread::JoinHandle;

use crossbeam::channel::Sender;
use tokio::sync::watch;

use super::admission::{Admission, Permit, Refusal, Unidentified};
use super::auth::Auth;
use super::balance::{Balance, Handoff};
use super::pop3;
use super::smtp;
use crate::delivery::{Core, CoreParts};
use crate::logsafe::Safe;
use crate::mailbox::MailStore;
use crate::net::conn::{read_more, stop_requested, Expiry, Read, READ_CHUNK};
use crate::net::io::epoll::{EpollConnector, EpollListener};
use crate::net::io::uring::{UringConnector, UringListener};
use crate::net::io::Connector;
use crate::net::io::{Connection, Listener};
use crate::net::listener::stop_accepting;
use crate::net::proxy::{self, Parsed, ProxyError};
use crate::runtime::clock::SystemClock;
use crate::runtime::shard::{Placement, Ready, ShardEvent};
use crate::runtime::{self, Engine, Phase};
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
    pub imap_proxy_protocol: bool,
    /// A PROXY header that names no client keeps the socket's address (else the
    /// unspecified address: see [`anonymous_peer`]).
    pub smtp_proxy_local_trust: bool,
    pub pop3_proxy_local_trust: bool,
    pub imap_proxy_local_trust: bool,
    /// This shard's spool writer (appends from this core go to its own shard).
    pub spool: ShardHandle,
    /// The whole spool, for reading stored messages from any shard.
    pub store: Arc<Spool>,
    /// Maildrops, updated once a local delivery or a deletion is durable.
    pub mail_store: Arc<MailStore>,
    /// Users' public keys: whose mail is sealed, and with which key.
    pub keys: Arc<crate::mailbox::KeyStore>,
    pub pop3: Pop3Context,
    pub imap: ImapContext,
    /// SMTP AUTH, POP3 and IMAP logins.
    pub auth: Auth,
    pub admission: Admission,
    /// Where a connection goes when another shard serves fewer (`None`: served where the
    /// kernel put it).
    pub balance: Option<Arc<super::balance::Balance>>,
    /// The limits shared by the cluster's nodes (nothing to ask without `[cluster.redis]`).
    pub shared: Arc<super::admission::Shared>,
    pub phase: watch::Receiver<Phase>,
    /// Outbound delivery: the mesh to hand recipients to their owner core, and settings.
    pub delivery: Arc<crate::delivery::DeliveryShared>,
    /// This core's metric handles (atomics; no lock per event).
    pub metrics: crate::metrics::CoreMetrics,
    /// The certificate for STARTTLS, STLS and implicit TLS; `None`: no TLS offered.
    pub server_tls: Option<crate::net::tls::ServerTls>,
    pub tls_handshake_timeout: Duration,
    /// `smtp.dnsbl_zones` (empty: no lookups) and what the lookups need.
    pub dnsbl: super::dnsbl::Dnsbl,
    /// DKIM keys for our own outbound mail.
    pub signing: super::signing::Signing,
    /// SPF, DKIM, DMARC and ARC checks of arriving mail.
    pub verifying: super::verifying::Verifying,
    /// S/MIME and OpenPGP signature checks of mail for local users.
    pub signatures: super::signatures::Signatures,
    /// The cluster listener's TLS, session and duplicate record (`None`: no cluster).
    pub cluster: Option<Arc<super::cluster_listener::ClusterListener>>,
    /// The shard's I/O engine (set by [`spawn`]): connections this shard opens use it.
    pub engine: Engine,
    /// How this shard reads message bodies from the spool without blocking (set by
    /// [`spawn`] for the engine: the ring, or the epoll engine's reader pool).
    pub reads: crate::runtime::file_read::FileReads,
    /// `[cluster]`: logins of users homed on other nodes are proxied there.
    pub login_proxy: Option<Arc<super::login_proxy::LoginProxy>>,
    /// The web server's session table and intake, once it runs (for web sessions proxied
    /// here).
    pub web_home: super::WebHome,
}

/// What POP3 connections need besides the common parts.
pub struct Pop3Context {
    pub config: Arc<crate::pop3::SessionConfig>,
    pub idle_timeout: Duration,
    /// How long a begun command line may take to complete (`pop3.command_timeout`).
    pub command_timeout: Duration,
    /// `pop3.allow_plaintext_auth`: passwords before TLS from beyond loopback.
    pub allow_plaintext_auth: bool,
}

/// What IMAP connections need besides the common parts.
pub struct ImapContext {
    /// For clients that must use TLS before a password (LOGINDISABLED until then).
    pub config: Arc<crate::imap::SessionConfig>,
    /// For loopback clients, and every client with `imap.allow_plaintext_auth`.
    pub plaintext: Arc<crate::imap::SessionConfig>,
    pub idle_timeout: Duration,
    pub command_timeout: Duration,
    pub allow_plaintext_auth: bool,
    /// Folder views shared by the sessions on every core.
    pub views: Arc<super::imap_views::SharedViews>,
}

/// Which protocol a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Smtp,
    Pop3,
    Imap,
    /// The cluster listener: SMTP between nodes over mutual TLS (`cluster_listener`).
    Cluster,
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
    let adopting = ctx.balance.as_ref().map(|balance| {
        tokio::task::spawn_local(adopt_loop::<L>(Rc::clone(&ctx), Arc::clone(balance)))
    });
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
    if let Some(adopting) = adopting {
        let _ = adopting.await;
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
    loop {
        let accepted = listener.accept_socket().await;
        if *ctx.phase.borrow() != Phase::Running {
            // Dropping the socket closes it.
            return;
        }
        if protocol != Protocol::Cluster && super::drain::refusing() {
            // `relay node drain`: the balancer sends clients to the other nodes.
            continue;
        }
        match accepted {
            Ok((stream, peer)) => {
                let handoff = Handoff {
                    stream,
                    peer,
                    protocol,
                    implicit_tls,
                };
                let handoff = match &ctx.balance {
                    Some(balance) => balance.place(ctx.shard, handoff),
                    None => Some(handoff),
                };
                if let Some(handoff) = handoff {
                    start::<L>(&ctx, handoff);
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

/// Serves the connections other shards accepted and sent here, until the shard stops.
async fn adopt_loop<L: Listener>(ctx: Rc<ShardContext>, balance: Arc<Balance>) {
    let mut phase = ctx.phase.clone();
    loop {
        balance.take(ctx.shard, |handoff| {
            // Once stopping, a socket still in the queue is dropped: closed unread.
            if *ctx.phase.borrow() == Phase::Running {
                start::<L>(&ctx, handoff);
            }
        });
        if *phase.borrow_and_update() != Phase::Running {
            return;
        }
        tokio::select! {
            () = balance.sent_to(ctx.shard) => {}
            changed = phase.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

/// Admits an accepted socket on this shard and starts its protocol's driver, or turns it away.
fn start<L: Listener>(ctx: &Rc<ShardContext>, handoff: Handoff) {
    let Handoff {
        stream,
        peer,
        protocol,
        implicit_tls,
    } = handoff;
    let conn = match L::adopt(stream) {
        Ok(conn) => conn,
        Err(error) => {
            tracing::debug!(%error, "cannot register an accepted connection");
            return;
        }
    };
    let proxied = match protocol {
        Protocol::Smtp => ctx.smtp_proxy_protocol,
        Protocol::Pop3 => ctx.pop3_proxy_protocol,
        Protocol::Imap => ctx.imap_proxy_protocol,
        // Peers connect directly: their certificate names them, not a balancer.
        Protocol::Cluster => false,
    };
    let refused = if proxied {
        // The client is named by the PROXY header: only the core limit applies until then.
        match ctx.admission.admit_unidentified() {
            Ok(pending) => {
                let task =
                    serve_proxied(conn, peer, Rc::clone(ctx), pending, protocol, implicit_tls);
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
                    Rc::clone(ctx),
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
        let task = turn_away(conn, peer, Rc::clone(ctx), protocol, refusal);
        tokio::task::spawn_local(task);
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
    // The cluster's count of this client's connections, after the node's own tables.
    // Boxed, as each protocol's driver below: a task is allocated at the size of its largest
    // state, so unboxed every idle SMTP connection would carry room for this lookup and for
    // the largest protocol's state (`benches/idle_connections.sh`).
    let permit = match Box::pin(ctx.shared.connection(peer.ip())).await {
        Ok(lease) => permit.with_lease(lease),
        Err(refusal) => {
            drop(permit);
            return turn_away(conn, peer, ctx, protocol, refusal).await;
        }
    };
    match protocol {
        Protocol::Smtp => Box::pin(smtp::serve(conn, peer, ctx, permit, input, implicit_tls)).await,
        Protocol::Pop3 => Box::pin(pop3::serve(conn, peer, ctx, permit, input, implicit_tls)).await,
        Protocol::Imap => {
            Box::pin(super::imap::serve(
                conn,
                peer,
                ctx,
                permit,
                input,
                implicit_tls,
            ))
            .await
        }
        Protocol::Cluster => {
            Box::pin(super::cluster_listener::serve(conn, peer, ctx, permit)).await
        }
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
        // A peer is turned away before its TLS handshake: it retries later.
        Protocol::Cluster => {
            ctx.metrics.smtp.refused.inc();
            conn.shutdown();
            return;
        }
        Protocol::Smtp => {
            ctx.metrics.smtp.refused.inc();
            refusal_reply(&ctx.hostname, refusal).encode(&mut reply)
        }
        Protocol::Pop3 => {
            ctx.metrics.pop3.refused.inc();
            crate::pop3::Response::too_many_connections().encode(&mut reply)
        }
        Protocol::Imap => {
            ctx.metrics.imap.refused.inc();
            crate::imap::reply::status(
                &mut reply,
                None,
                crate::imap::reply::Status::Bye,
                Some("UNAVAILABLE"),
                "Too many connections",
            );
        }
    }
    smtp::refuse(conn, reply).await;
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
        Protocol::Smtp | Protocol::Cluster => ctx.command_timeout,
        Protocol::Pop3 => ctx.pop3.idle_timeout,
        Protocol::Imap => ctx.imap.idle_timeout,
    };
    let limit = PROXY_HEADER_TIMEOUT.min(idle);
    let mut phase = ctx.phase.clone();
    let (source, input) = match read_proxy_header(&conn, limit, &mut phase).await {
        Ok(header) => header,
        Err(failure) => {
            tracing::info!(client = %socket_peer, ?protocol, reason = %Safe(&failure), "connection closed without a PROXY header");
            conn.shutdown();
            return;
        }
    };
    // v1 UNKNOWN, v2 LOCAL or UNSPEC: the proxy speaks for itself.
    let trusted = match protocol {
        Protocol::Smtp | Protocol::Cluster => ctx.smtp_proxy_local_trust,
        Protocol::Pop3 => ctx.pop3_proxy_local_trust,
        Protocol::Imap => ctx.imap_proxy_local_trust,
    };
    let peer = match source {
        Some(source) => source,
        None if trusted => socket_peer,
        None => anonymous_peer(socket_peer),
    };
    tracing::debug!(client = %peer, proxy = %socket_peer, ?protocol, "PROXY header read");
    match pending.identify(peer.ip()) {
        Ok(permit) => serve(conn, peer, ctx, permit, protocol, implicit_tls, input).await,
        Err(refusal) => turn_away(conn, peer, ctx, protocol, refusal).await,
    }
}

/// The client of a proxied connection whose header names none (v1 `UNKNOWN`, v2 `LOCAL` or
/// `UNSPEC`): the unspecified address of the socket's family. The socket's own address is
/// the balancer's, 127.0.0.1 when it runs on this host, and would carry loopback's relay
/// rights and plaintext logins; the unspecified address is in no relay network an operator
/// would write, is not loopback, and puts all such connections in one admission bucket.
fn anonymous_peer(socket_peer: SocketAddr) -> SocketAddr {
    let ip = match socket_peer {
        SocketAddr::V4(_) => std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    };
    SocketAddr::new(ip, socket_peer.port())
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
/// and the bytes read after it. Never reads past `proxy::MAX_HEADER` without deciding.
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
        let (read, buffer) = read_more(conn, input, deadline, stop_requested(phase, false), |_| {
            Vec::new()
        })
        .await;
        input = buffer;
        match read {
            Read::Data(_) => {}
            Read::Closed => return Err(HeaderFailure::Closed),
            Read::Error(error) => return Err(HeaderFailure::Read(error)),
            Read::Expired(Expiry::Deadline) => return Err(HeaderFailure::Timeout(limit)),
            Read::Expired(Expiry::Stop) => return Err(HeaderFailure::Stopping),
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
        Refusal::ClientFull | Refusal::ClusterFull | Refusal::ClusterUnavailable => {
            Reply::too_many_connections_from_client(hostname)
        }
    }
}

/// The parts of a shard built on the main thread (everything `Send`); the `Rc` context is
/// assembled on the shard's own thread.
pub struct ShardSeed {
    pub placement: Placement,
    /// Listening sockets, their protocol and whether they are implicit-TLS.
    pub sockets: Vec<(std::net::TcpListener, Protocol, bool)>,
    /// The delivery queue this core owns, rebuilt from the spool.
    pub startup: Vec<crate::delivery::Job>,
    pub make_context: Box<dyn FnOnce() -> ShardContext + Send>,
}

/// Starts the shard's thread: its listeners and its delivery core on the chosen engine.
pub fn spawn(seed: ShardSeed, events: Sender<ShardEvent>) -> io::Result<JoinHandle<()>> {
    let ShardSeed {
        placement,
        sockets,
        startup,
        make_context,
    } = seed;
    let index = placement.index;
    runtime::shard::spawn(
        placement,
        events,
        Box::new(move |engine, ready| {
            Box::pin(async move {
                let ctx = Rc::new(ShardContext {
                    engine,
                    reads: crate::runtime::file_read::FileReads::for_engine(engine),
                    ..make_context()
                });
                match engine {
                    Engine::Uring => {
                        let listeners = bind(sockets, |s| {
                            UringListener::from_std(s)
                                .map_err(|e| format!("cannot register listener: {e}"))
                        })?;
                        serve_shard(ctx, listeners, UringConnector, startup, ready).await;
                    }
                    Engine::Epoll => {
                        let listeners = bind(sockets, |s| {
                            EpollListener::from_std(s)
                                .map_err(|e| format!("cannot register listener with epoll: {e}"))
                        })?;
                        serve_shard(ctx, listeners, EpollConnector, startup, ready).await;
                    }
                }
                tracing::debug!(shard = index, "shard finished");
                Ok(())
            })
        }),
    )
}

/// The engine's listeners, each with a duplicate of its socket (to stop a pending accept).
fn bind<L>(
    sockets: Vec<(std::net::TcpListener, Protocol, bool)>,
    listener: impl Fn(std::net::TcpListener) -> Result<L, String>,
) -> Result<Vec<Bound<L>>, String> {
    let mut bound = Vec::with_capacity(sockets.len());
    for (socket, protocol, implicit_tls) in sockets {
        let dup = socket
            .try_clone()
            .map_err(|e| format!("cannot duplicate listening socket: {e}"))?;
        bound.push(Bound {
            listener: listener(socket)?,
            socket: dup,
            protocol,
            implicit_tls,
        });
    }
    Ok(bound)
}

/// Runs the delivery core and the accept loops until both have finished.
async fn serve_shard<L: Listener + 'static, C: Connector + 'static>(
    ctx: Rc<ShardContext>,
    listeners: Vec<Bound<L>>,
    connector: C,
    startup: Vec<crate::delivery::Job>,
    ready: Ready,
) {
    let core = Core::new(CoreParts {
        index: ctx.shard,
        shared: Arc::clone(&ctx.delivery),
        connector,
        spool: ctx.spool.clone(),
        store: Arc::clone(&ctx.store),
        reads: ctx.reads.clone(),
        mail_store: Arc::clone(&ctx.mail_store),
        phase: ctx.phase.clone(),
        metrics: Some(ctx.metrics.clone()),
        clock: Rc::new(SystemClock),
    });
    let delivery = tokio::task::spawn_local(crate::delivery::run(core, startup));
    ready.send();
    run(ctx, listeners).await;
    let _ = delivery.await;
}
