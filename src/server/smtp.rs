//! One SMTP connection: moves bytes between the socket and the sans-IO [`crate::smtp::Session`],
//! stores submitted messages in the shard's spool, and enforces timeouts and shutdown.
//!
//! Flow: feed buffered input to the session; perform its events in order (a `Submit` waits
//! for the group commit before the session may answer 250, so pipelined commands after the
//! data wait too, as RFC 2920 ordering requires); when the session needs more bytes, write
//! every reply it produced in one write, then read.
//!
//! Reads wait through [`read_more`], which never drops an in-flight tokio-uring operation
//! (docs/ARCHITECTURE.md §7): a timeout or shutdown writes the 421, shuts the connection down and
//! lets the pending read complete.
//!
//! Slow clients (Postfix 3.7's `smtpd_per_request_deadline` and `smtpd_min_data_rate`,
//! which this follows): `smtp.command_timeout` is a deadline for a whole command line,
//! counted from when the relay starts waiting for it; bytes trickling in do not extend it,
//! so a client sending a byte a second is cut at the deadline like a silent one (421 4.4.2).
//! In DATA/BDAT each read may wait `smtp.data_timeout`, and the body as a whole must arrive
//! within `data_timeout + received / smtp.data_rate_min` of its start: a body is allowed
//! time in proportion to its size, so a large message on a slow link passes while a body
//! trickled to hold the connection is cut at about `data_timeout`.
//!
//! The cluster listener (`cluster_listener`) runs this same driver through [`serve_peer`]
//! after its mutual-TLS handshake, with its own session settings; its messages are stored
//! by `cluster_listener::accept` instead of `ingest::accept`.
//!
//! Tarpitting: when the session asks for a delay ([`Outbox::delay`], past
//! `smtp.error_delay_after` errors), the replies wait that long before they are written; a
//! shutdown cuts the wait short.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::admission::Permit;
use super::dnsbl;
use super::ingest;
use super::shard::Protocol;
use super::shard::ShardContext;
use super::starttls::{self, DriveEnd, Upgradable, Wire};
use crate::logsafe::Safe;
use crate::net::conn::{
    compact, flush, read_more, stop_requested, within, Expiry, Read, GOODBYE_WRITE_LIMIT,
};
use crate::net::io::Connection;
use crate::net::tls::TlsSummary;
use crate::smtp::{AuthFailure, Event, Outbox, Session};

/// Serves one accepted SMTP connection until it ends. `_permit` holds the admission slots;
/// `input` is what the client sent before the session started (bytes that followed a PROXY
/// header), taken as its first input. On an implicit-TLS listener (`implicit_tls`) the
/// handshake comes first and `input` is the start of it.
pub async fn serve<C: Connection>(
    conn: C,
    peer: SocketAddr,
    ctx: Rc<ShardContext>,
    _permit: Permit,
    input: Vec<u8>,
    implicit_tls: bool,
) {
    let _open = ctx.metrics.smtp.opened();
    let mut out = Outbox::default();
    // The greeting waits in `out` until the first flush (after the handshake on TLS).
    let session = Session::new(
        ctx.session_config.clone(),
        peer,
        SystemTime::now(),
        &mut out,
    );
    let mut link = Link {
        phase: ctx.phase.clone(),
        wire: Wire::new(ctx, peer),
        out,
        session,
        deadlines: Deadlines::default(),
        ingress: Ingress::Public,
    };
    tracing::debug!(client = %peer, shard = link.wire.ctx.shard, implicit_tls, "connected");
    let dnsbl = &link.wire.ctx.dnsbl;
    let resolver = (!dnsbl.zones.is_empty() && !link.session.is_relay_client())
        .then(|| dnsbl.resolver())
        .flatten();
    if let Some(resolver) = resolver {
        let ip = peer.ip().to_canonical();
        if let Some((zone, code)) =
            Box::pin(dnsbl::check(resolver, ip, &dnsbl.zones, dnsbl.timeout)).await
        {
            tracing::info!(target: "relay::smtp", client = %ip, zone = %zone, code = %code, "client on a block list");
            link.session.client_listed(zone);
        }
    }
    starttls::serve(&mut link, conn, input, implicit_tls).await;
}

/// Serves one connection of the cluster listener whose mutual-TLS handshake has passed
/// (`cluster_listener`): the same driver, with the cluster session settings, and each
/// message stored by `cluster_listener::accept`.
pub async fn serve_peer<C: Connection>(
    tls: C,
    summary: TlsSummary,
    peer: SocketAddr,
    ctx: Rc<ShardContext>,
    _permit: Permit,
) {
    let Some(config) = ctx.cluster.as_ref().map(|c| Arc::clone(&c.session)) else {
        tls.shutdown();
        return;
    };
    let _open = ctx.metrics.smtp.opened();
    let mut out = Outbox::default();
    let session = Session::new(config, peer, SystemTime::now(), &mut out);
    let mut link = Link {
        phase: ctx.phase.clone(),
        wire: Wire::new(ctx, peer),
        out,
        session,
        deadlines: Deadlines::default(),
        ingress: Ingress::Peer,
    };
    link.secured(&summary);
    let _ = link.drive(&tls).await;
}

/// Which listener a connection came in on: where its messages are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ingress {
    /// SMTP and submission: sender checks, signing, our Received field (`ingest`).
    Public,
    /// The cluster listener: as the peer sent it (`cluster_listener`).
    Peer,
}

/// One connection's protocol state, kept across the switch to TLS.
struct Link {
    wire: Wire,
    phase: tokio::sync::watch::Receiver<crate::runtime::Phase>,
    out: Outbox,
    session: Session,
    deadlines: Deadlines,
    ingress: Ingress,
}

impl Upgradable for Link {
    const PROTOCOL: Protocol = Protocol::Smtp;

    fn wire(&mut self) -> &mut Wire {
        &mut self.wire
    }

    fn secured(&mut self, summary: &TlsSummary) {
        self.session.tls_established(format!(
            "{} with cipher {}",
            summary.version, summary.cipher
        ));
    }

    /// Drives the session over `conn` until it closes or switches to TLS.
    async fn drive<C: Connection>(&mut self, conn: &C) -> DriveEnd {
        let Link {
            wire:
                Wire {
                    ctx,
                    peer,
                    input,
                    consumed,
                },
            phase,
            out,
            session,
            deadlines,
            ingress,
        } = self;
        let ctx: &ShardContext = ctx;
        let peer = *peer;
        loop {
            // 1. Let the session take what it can from the buffered input.
            let mut progressed = false;
            if *consumed < input.len() && session.wants_input() {
                let n = session.handle_input(&input[*consumed..], SystemTime::now(), out);
                *consumed += n;
                progressed = n > 0;
                if progressed {
                    // A command line was taken: the wait for the next one starts afresh.
                    deadlines.command = None;
                }
            }

            // 2. Perform its events in order.
            let events = std::mem::take(&mut out.events);
            for event in events {
                match event {
                    Event::Submit(submission) => {
                        let stored = tokio::select! {
                            biased;
                            // Boxed: the checks and the store are most of this future's size, and
                            // only a transaction needs them, not every idle connection.
                            stored = Box::pin(store(*ingress, ctx, *submission, peer)) => Some(stored),
                            _ = stop_requested(phase, true) => None,
                        };
                        let Some(result) = stored else {
                            // Forced stop while the disk was busy: no reply is honest here;
                            // the client retries (a duplicate is possible, a loss is not).
                            conn.shutdown();
                            return DriveEnd::Closed;
                        };
                        session.submitted(result, SystemTime::now(), out);
                        progressed = true;
                    }
                    Event::Authenticate(credentials) => {
                        let client = peer.ip().to_canonical();
                        // Boxed (as the other rare waits here): an idle connection's task carries
                        // none of their state.
                        let check =
                            Box::pin(ctx.auth.check(Protocol::Smtp, client, credentials.into()));
                        let result = tokio::select! {
                            biased;
                            result = check => Some(result),
                            _ = stop_requested(phase, false) => None,
                            // A client gone while its check is queued: the check is
                            // dropped with it (the pool skips it).
                            _ = conn.peer_closed() => {
                                conn.shutdown();
                                return DriveEnd::Closed;
                            }
                        };
                        let Some(result) = result else {
                            session.shutting_down(out);
                            let _ = flush(conn, &mut out.bytes, GOODBYE_WRITE_LIMIT).await;
                            conn.shutdown();
                            return DriveEnd::Closed;
                        };
                        session.authenticated(result.map_err(AuthFailure::from), out);
                        progressed = true;
                    }
                    Event::CheckRate(client) => {
                        // Bounded by cluster.redis.timeout, then the failure policy decides.
                        let admitted = Box::pin(ctx.shared.message(client)).await;
                        session.rate_checked(admitted, out);
                        progressed = true;
                    }
                    Event::StartTls => {
                        ctx.metrics.smtp.bytes_sent.inc_by(out.bytes.len() as u64);
                        // RFC 3207 §5: nothing pipelined behind STARTTLS may reach TLS.
                        let limit = ctx.command_timeout;
                        return Box::pin(starttls::hand_over(
                            conn,
                            &mut out.bytes,
                            limit,
                            input,
                            consumed,
                            peer,
                            "STARTTLS",
                        ))
                        .await;
                    }
                    Event::Rejected(summary) => {
                        ctx.metrics.transaction(summary.reply.code().get());
                        tracing::info!(
                            target: "relay::transaction",
                            client = %peer.ip(),
                            sender = %Safe(&summary.reverse_path),
                            auth = session.authenticated_user().map(Safe).map(tracing::field::display),
                            rcpts = summary.recipients,
                            size = summary.size,
                            result = %Safe(&summary.reply),
                            "rejected"
                        );
                    }
                    Event::Close(reason) => {
                        tarpit(out, phase, session.in_transaction()).await;
                        ctx.metrics.smtp.bytes_sent.inc_by(out.bytes.len() as u64);
                        let _ = flush(conn, &mut out.bytes, GOODBYE_WRITE_LIMIT).await;
                        let _ = within(conn, GOODBYE_WRITE_LIMIT, conn.finish()).await;
                        conn.shutdown();
                        tracing::debug!(client = %peer, ?reason, "closed");
                        return DriveEnd::Closed;
                    }
                }
            }
            // More may be possible without reading: pipelined input after a stored message,
            // or events the last step produced.
            if progressed && (*consumed < input.len() || !out.events.is_empty()) {
                continue;
            }

            // 3. Needs more bytes: answer everything so far in one write, then read.
            let limit = if session.receiving_data() {
                ctx.data_timeout
            } else {
                ctx.command_timeout
            };
            tarpit(out, phase, session.in_transaction()).await;
            ctx.metrics.smtp.bytes_sent.inc_by(out.bytes.len() as u64);
            if flush(conn, &mut out.bytes, limit).await.is_err() {
                conn.shutdown();
                return DriveEnd::Closed;
            }
            compact(input, consumed, !session.receiving_data());
            let deadline = deadlines.next(session.receiving_data(), Instant::now(), ctx);
            let in_transaction = session.in_transaction();
            let (read, buffer) = read_more(
                conn,
                std::mem::take(input),
                deadline.into(),
                stop_requested(phase, in_transaction),
                |expiry| {
                    match expiry {
                        Expiry::Deadline => session.timed_out(out),
                        Expiry::Stop => session.shutting_down(out),
                    }
                    std::mem::take(&mut out.bytes)
                },
            )
            .await;
            *input = buffer;
            let why = match read {
                Read::Data(n) => {
                    ctx.metrics.smtp.bytes_received.inc_by(n as u64);
                    if let Some((_, received)) = &mut deadlines.data {
                        *received += n as u64;
                    }
                    continue;
                }
                Read::Closed => "client closed the connection",
                Read::Error(_) => "read error",
                Read::Expired(Expiry::Deadline) => "timeout",
                Read::Expired(Expiry::Stop) => "server shutting down",
            };
            ended(in_transaction, peer, why);
            return DriveEnd::Closed;
        }
    }
}

/// Stores a submitted message by the rules of the listener it came in on.
async fn store(
    ingress: Ingress,
    ctx: &ShardContext,
    submission: crate::smtp::Submission,
    peer: SocketAddr,
) -> Result<crate::envelope::QueueId, crate::smtp::SubmitError> {
    match ingress {
        Ingress::Public => ingest::accept(ctx, submission, peer).await,
        Ingress::Peer => super::cluster_listener::accept(ctx, submission, peer).await,
    }
}

/// When the wait for input must end (see the module doc).
#[derive(Default)]
struct Deadlines {
    /// The deadline of the command line being waited for; cleared when the session takes it.
    command: Option<Instant>,
    /// When the data started arriving and how many octets have come since.
    data: Option<(Instant, u64)>,
}

impl Deadlines {
    fn next(&mut self, receiving_data: bool, now: Instant, ctx: &ShardContext) -> Instant {
        if !receiving_data {
            self.data = None;
            return *self.command.get_or_insert(now + ctx.command_timeout);
        }
        self.command = None;
        let (since, received) = *self.data.get_or_insert((now, 0));
        let per_read = now + ctx.data_timeout;
        if ctx.data_rate_min == 0 {
            return per_read;
        }
        let earned = Duration::from_secs_f64(received as f64 / ctx.data_rate_min as f64);
        per_read.min(since + ctx.data_timeout + earned)
    }
}

/// Waits out the tarpit delay the session asked for, unless the server is stopping.
async fn tarpit(
    out: &mut Outbox,
    phase: &mut tokio::sync::watch::Receiver<crate::runtime::Phase>,
    in_transaction: bool,
) {
    let delay = std::mem::take(&mut out.delay);
    if delay.is_zero() {
        return;
    }
    tokio::select! {
        biased;
        _ = stop_requested(phase, in_transaction) => {}
        _ = tokio::time::sleep(delay) => {}
    }
}

/// A transaction cut short gets its log line. `in_transaction` is taken before the read: a
/// timeout or a shutdown has closed the session by the time this runs, and a closed session
/// is in no transaction.
fn ended(in_transaction: bool, peer: SocketAddr, why: &'static str) {
    if in_transaction {
        tracing::info!(
            target: "relay::transaction",
            client = %peer.ip(),
            result = why,
            "transaction abandoned"
        );
    }
}

/// Turns a refused connection away with one line and closes it.
pub async fn refuse<C: Connection>(conn: C, reply: Vec<u8>) {
    let started = Instant::now();
    let _ = within(&conn, GOODBYE_WRITE_LIMIT, conn.write_all(reply)).await;
    conn.shutdown();
    tracing::debug!(took = ?started.elapsed(), "refused connection closed");
}
