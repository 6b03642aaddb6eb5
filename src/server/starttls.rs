//! The switch to TLS that the SMTP and POP3 drivers share: STARTTLS (RFC 3207) and STLS
//! (RFC 2595) mid-connection, and implicit TLS from the first byte (RFC 8314).
//!
//! A driver keeps its protocol state in one value implementing [`Upgradable`] and runs it
//! with [`serve`]: one drive over the plain socket; when the session has answered
//! STARTTLS/STLS the drive returns [`DriveEnd::StartTls`] after [`hand_over`] has written that
//! answer and dropped every byte pipelined behind the command (the CVE-2011-0411 class of
//! command injection); the server handshake runs; the same state drives on over the
//! [`TlsConnection`]. The session itself decides when TLS may start and forgets what RFC
//! 3207 §4.2 says to forget ([`Upgradable::secured`]).

use std::net::SocketAddr;
use std::rc::Rc;

use super::shard::{Protocol, ShardContext};
use crate::logsafe::Safe;
use crate::net::conn::{flush, READ_CHUNK};
use crate::net::io::Connection;
use crate::net::tls::{self, TlsConnection, TlsSummary};

/// Why one drive of a connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum DriveEnd {
    /// The connection is closed.
    Closed,
    /// The session accepted STARTTLS/STLS and [`hand_over`] ran: the handshake is next.
    StartTls,
}

/// What every driver's state holds besides its session: whose connection it is, and the
/// bytes read from it that the session has not taken yet (`input[consumed..]`).
pub struct Wire {
    pub ctx: Rc<ShardContext>,
    pub peer: SocketAddr,
    pub input: Vec<u8>,
    pub consumed: usize,
}

impl Wire {
    pub fn new(ctx: Rc<ShardContext>, peer: SocketAddr) -> Wire {
        Wire {
            ctx,
            peer,
            input: Vec::new(),
            consumed: 0,
        }
    }

    /// Starts over with `input` as the buffered bytes, with room for one more read.
    pub fn set_input(&mut self, input: Vec<u8>) {
        self.input = input;
        self.input
            .reserve(READ_CHUNK.saturating_sub(self.input.len()));
        self.consumed = 0;
    }
}

/// A protocol driver's state that can carry on over TLS.
#[allow(async_fn_in_trait)] // single-threaded shards: no `Send` bound is wanted
pub trait Upgradable {
    const PROTOCOL: Protocol;
    fn wire(&mut self) -> &mut Wire;
    /// Runs the session over `conn` until it closes or hands over to TLS.
    async fn drive<C: Connection>(&mut self, conn: &C) -> DriveEnd;
    /// TLS is up: tell the session (the input buffer is emptied by the caller).
    fn secured(&mut self, summary: &TlsSummary);
}

/// Serves a connection to its end: in plaintext until STARTTLS/STLS, then over TLS; or over
/// TLS from the start on an implicit-TLS listener (`input` is then the start of the
/// client's handshake).
pub async fn serve<L: Upgradable, C: Connection>(
    link: &mut L,
    conn: C,
    input: Vec<u8>,
    implicit_tls: bool,
) {
    if implicit_tls {
        Box::pin(over_tls(link, conn, input)).await;
        return;
    }
    link.wire().set_input(input);
    // Boxed: freed at STARTTLS, so a session over TLS does not keep this drive's state
    // beside the one over TLS (`benches/idle_connections.sh`).
    if Box::pin(link.drive(&conn)).await == DriveEnd::StartTls {
        Box::pin(over_tls(link, conn, Vec::new())).await;
    }
}

/// The handshake and the session over TLS. Boxed by the caller: its state (rustls's
/// connection and a drive over it) is allocated only for connections that use TLS, so an
/// idle plaintext connection does not carry it (3.5 KiB each, `benches/idle_connections.sh`).
async fn over_tls<L: Upgradable, C: Connection>(link: &mut L, conn: C, early: Vec<u8>) {
    if let Some(tls) = secure(link, conn, &early).await {
        // STARTTLS/STLS are refused on a TLS session: this drive is the rest of it.
        let _ = link.drive(&tls).await;
    }
}

/// The server handshake, bounded by `tls.handshake_timeout`. `None`: it failed or timed out
/// (logged and counted; the socket is shut).
async fn secure<L: Upgradable, C: Connection>(
    link: &mut L,
    conn: C,
    early: &[u8],
) -> Option<TlsConnection<C>> {
    let wire = link.wire();
    let (ctx, peer) = (Rc::clone(&wire.ctx), wire.peer);
    let protocol = L::PROTOCOL;
    let metrics = match protocol {
        Protocol::Smtp | Protocol::Cluster => &ctx.metrics.smtp,
        Protocol::Pop3 => &ctx.metrics.pop3,
        Protocol::Imap => &ctx.metrics.imap,
    };
    let Some(server_tls) = ctx.server_tls.as_ref() else {
        // Sessions offer STARTTLS/STLS only with a certificate, and config validation
        // refuses an implicit-TLS listener without one.
        conn.shutdown();
        return None;
    };
    match tls::accept(conn, server_tls.config(), early, ctx.tls_handshake_timeout).await {
        Ok((tls, summary)) => {
            metrics.tls_handshakes.inc();
            if summary.resumed {
                metrics.tls_resumed.inc();
            }
            tracing::debug!(client = %peer, ?protocol, version = %summary.version, cipher = %summary.cipher, resumed = summary.resumed, "TLS established");
            link.secured(&summary);
            link.wire().set_input(Vec::new());
            Some(tls)
        }
        Err(failure) => {
            metrics.tls_failures.inc();
            tracing::info!(client = %peer.ip(), ?protocol, failure = %Safe(&failure), "no TLS session");
            None
        }
    }
}

/// After the session answered STARTTLS/STLS: writes that answer (within `limit`) and drops
/// what the client pipelined behind the command. `command` names it in the log.
pub async fn hand_over<C: Connection>(
    conn: &C,
    answer: &mut Vec<u8>,
    limit: std::time::Duration,
    input: &mut Vec<u8>,
    consumed: &mut usize,
    peer: SocketAddr,
    command: &'static str,
) -> DriveEnd {
    if flush(conn, answer, limit).await.is_err() {
        conn.shutdown();
        return DriveEnd::Closed;
    }
    let discarded = input.len() - *consumed;
    if discarded > 0 {
        tracing::info!(client = %peer.ip(), octets = discarded, "discarded input pipelined after {command}");
    }
    input.clear();
    *consumed = 0;
    DriveEnd::StartTls
}
