//! One connection worker: resolve the destination, connect, and drive the sans-IO SMTP
//! client over the engine's connection until the destination has nothing ready.
//!
//! The client contract (`smtp::client` module doc) is followed to the letter: after each call
//! its bytes are written completely (each write bounded by the data-block timeout), then its
//! events are acted on; reads are bounded by the timeout it names. A timeout or a stop shuts
//! the socket and then awaits the pending operation (docs/ARCHITECTURE.md §7), never drops it.
//!
//! **TLS.** The conversation loop ([`converse`]) is generic over the connection: when the
//! client asks for STARTTLS it returns, the plaintext connection is wrapped in
//! [`TlsConnection`] (bytes the hop sent before the handshake are dropped), and the loop runs
//! again over TLS with the same client. The route's `tls` picks the client's policy and the
//! rustls configuration (`tls::client`): `required` verifies the certificate against the
//! next hop's name (the MX or route host name; an address for a route to an IP literal) and
//! defers on any failure; `opportunistic` accepts any certificate. A failed opportunistic
//! handshake (rustls's field failures: no common cipher suite, signature schemes, a hop
//! that closes mid-handshake) marks the destination for `delivery.tls_failure_hold`, logs
//! one warning, and the same attempt reconnects at once in plaintext; later connections to
//! the destination skip STARTTLS until the mark expires. Marks live on the core that owns
//! the destination and are lost at a restart (the first connection after it tries TLS
//! again). The delivery log line names the TLS version and cipher (`tls=`).

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::loops;
use super::resolve::{self, Resolution, Target};
use super::Core;
use crate::cluster::limits::{ConnectionLease, Verdict, UNAVAILABLE_WAIT};
use crate::logsafe::Safe;
use crate::net::conn::{compact, read_more, stop_requested, within, Expiry, Read};
use crate::net::io::{Connection, Connector};
use crate::net::tls::{TlsConnection, TlsSummary};
use crate::queue::outcome::{self, recipient_of, Attempted};
use crate::queue::scheduler::Ticket;
use crate::queue::{DestId, DestinationKey, QueueEntry, TlsMode};
use crate::smtp::client::{
    Client, ClientEvent, ConnectionOutcome, Diagnostic, Next, Outgoing, Output, RecipientResult,
    Stage, StartTlsPolicy,
};
use crate::smtp::reply::Reply;
use crate::spool::StoredMessage;

/// Bytes read per call from a next hop: replies are small.
const READ_CHUNK: usize = 4096;

/// An entry taken for an attempt, under the scheduler's ticket.
type Taken = (Ticket, QueueEntry);

/// A worker's life; the scheduler counted it as a connection of `dest` when it asked for it.
pub async fn run<C: Connector + 'static>(core: Rc<Core<C>>, dest: DestId) {
    if let Some(first) = core.take_next(dest) {
        deliver(&core, dest, first).await;
    }
    core.worker_done(dest);
}

async fn deliver<C: Connector + 'static>(core: &Rc<Core<C>>, dest: DestId, first: Taken) {
    let Some(key) = core.destination_key(dest) else {
        // Cannot happen (the worker's connection keeps the destination); never lose it.
        core.retry(first.0);
        return;
    };
    if core.rerouted(first.0, &first.1, &key).await {
        return;
    }
    // The cluster's shared throttles (`cluster.redis`), after the node's own: a connection
    // slot for as long as this worker lives, then the first message's turn.
    let _slot = match shared_connection(core, &key).await {
        Ok(slot) => slot,
        Err(wait) => return core.throttled(first.0, wait, false),
    };
    let Some(first) = shared_rate(core, &key, first).await else {
        return;
    };
    let targets = match resolve(core, &key).await {
        Resolution::Targets(targets) => targets,
        // DNS said no for good (null MX, NXDOMAIN) or for now: the destination as a whole.
        Resolution::Bounce(reply) | Resolution::Defer(reply) => {
            let diagnostic = Diagnostic::Local {
                stage: Stage::Prepare,
                reply,
            };
            let result = if diagnostic.reply().code().class() == 5 {
                RecipientResult::Bounced(diagnostic)
            } else {
                RecipientResult::Deferred(diagnostic)
            };
            return fail_destination(core, first, result, None, None).await;
        }
    };
    let mut last_error = String::from("no address to try");
    let mut connected = None;
    let mut phase = core.phase.clone();
    for target in &targets {
        // A pending connect is a readiness future: dropping it at a stop leaves nothing armed.
        let attempt = tokio::select! {
            biased;
            attempt = core.connector.connect(target.addr, core.shared.connect_timeout) => attempt,
            _ = stop_requested(&mut phase, true) => {
                last_error = "the relay is stopping".into();
                break;
            }
        };
        match attempt {
            Ok(conn) => {
                connected = Some((conn, target));
                break;
            }
            Err(error) => {
                tracing::debug!(destination = %Safe(&key), addr = %target.addr, %error, "connect failed");
                last_error = format!(
                    "{}[{}]:{}: {error}",
                    target.host,
                    target.addr.ip(),
                    target.addr.port()
                );
            }
        }
    }
    let Some((conn, target)) = connected else {
        let result = RecipientResult::Deferred(Diagnostic::Local {
            stage: Stage::Greeting,
            reply: Reply::next_hop_unreachable(&last_error),
        });
        return fail_destination(core, first, result, None, None).await;
    };
    session(core, dest, &key, conn, target, first).await;
}

/// How long an entry waits when the cluster has no connection slot for its destination:
/// slots come back when another node's connection closes, which nothing announces.
const CONNECTION_SLOT_WAIT: Duration = Duration::from_secs(1);

/// A connection slot to `key` across the cluster (`Ok(None)`: no cluster limit, or Redis
/// down with the policy open). `Err(wait)`: no slot, the worker does not connect.
async fn shared_connection<C: Connector + 'static>(
    core: &Core<C>,
    key: &DestinationKey,
) -> Result<Option<ConnectionLease>, Duration> {
    let limits = &core.shared.limits;
    if !limits.is_shared() {
        return Ok(None);
    }
    let max = core.shared.destination_limits.connections_max as usize;
    match limits.destination_connection(&key.to_string(), max).await {
        Ok(slot) => Ok(slot),
        Err(Verdict::Unavailable) => Err(UNAVAILABLE_WAIT),
        Err(_) => Err(CONNECTION_SLOT_WAIT),
    }
}

/// `taken` if the cluster's shared message rate to `key` lets it go now; otherwise it is
/// put back (no attempt counted) and the destination held until the rate has room.
async fn shared_rate<C: Connector + 'static>(
    core: &Rc<Core<C>>,
    key: &DestinationKey,
    taken: Taken,
) -> Option<Taken> {
    let limits = &core.shared.limits;
    let per_minute = core.shared.destination_limits.messages_per_minute;
    if per_minute == 0 || !limits.is_shared() {
        return Some(taken);
    }
    let burst = destination_burst(per_minute);
    match limits
        .destination_message(&key.to_string(), per_minute, burst)
        .await
    {
        Ok(()) => Some(taken),
        Err(wait) => {
            tracing::debug!(destination = %Safe(key), queue_id = %taken.1.id, ?wait, "shared destination rate: deferred");
            core.throttled(taken.0, wait, true);
            None
        }
    }
}

/// The next entry for a worker of `dest` on an open connection, under the shared rate.
async fn take_shared<C: Connector + 'static>(core: &Rc<Core<C>>, dest: DestId) -> Option<Taken> {
    let taken = core.take_next(dest)?;
    if !core.shared.limits.is_shared() || core.shared.destination_limits.messages_per_minute == 0 {
        return Some(taken);
    }
    let Some(key) = core.destination_key(dest) else {
        return Some(taken);
    };
    shared_rate(core, &key, taken).await
}

/// The node table's burst for `per_minute` (`queue::destinations`): a tenth, at least one.
fn destination_burst(per_minute: u32) -> u32 {
    (per_minute / 10).max(1)
}

/// The TLS mode of the destination's route (MX destinations are keyed by domain alone, so
/// their route is looked up again).
fn tls_mode<C: Connector + 'static>(core: &Core<C>, key: &DestinationKey) -> TlsMode {
    match key {
        DestinationKey::Static { tls, .. } => *tls,
        DestinationKey::Mx(domain) => core.shared.routes.route(domain).tls,
    }
}

/// One connection's conversation: the client and what the driver holds for it. It outlives
/// a change of connection type (plaintext to TLS after STARTTLS).
struct Conversation {
    client: Client,
    out: Output,
    input: Vec<u8>,
    consumed: usize,
    /// The entry taken before connecting, until the client is first ready for it.
    pending_first: Option<Taken>,
    current: Option<InFlight>,
    /// `host[address]`, for the log and notices.
    hop: String,
    /// `version/cipher` once TLS is up, for the delivery log.
    tls: Option<String>,
    /// To a cluster peer: MAIL carries our node and queue id (`cluster.rs`).
    to_peer: bool,
}

impl Conversation {
    fn new<C: Connector + 'static>(
        core: &Core<C>,
        starttls: StartTlsPolicy,
        hop: String,
        first: Option<Taken>,
    ) -> Conversation {
        Conversation {
            client: Client::with_starttls(Arc::clone(&core.shared.client), starttls).for_peer(&hop),
            out: Output::default(),
            input: Vec::with_capacity(READ_CHUNK),
            consumed: 0,
            pending_first: first,
            current: None,
            hop,
            tls: None,
            to_peer: false,
        }
    }
}

/// Why [`converse`] returned.
enum Pause {
    /// The client is done: close the connection.
    Done,
    /// The hop said 220 to STARTTLS: the handshake is the caller's.
    StartTls,
}

enum Handshake<K> {
    /// Boxed: rustls's connection state is large, the other outcomes are small.
    Up(Box<TlsConnection<K>>, TlsSummary),
    Failed(String),
    Stopped,
}

/// How long the close_notify at the end of a TLS session may take: it is a courtesy.
const CLOSE_NOTIFY_LIMIT: Duration = Duration::from_secs(10);

/// One connection to a next hop, with STARTTLS as the route says (module doc of
/// `smtp::client` and of `delivery`): a failed opportunistic handshake marks the
/// destination and the same attempt goes on in plaintext over a new connection, as
/// Postfix's `may` level does; a failed required one defers.
async fn session<C: Connector + 'static>(
    core: &Rc<Core<C>>,
    dest: DestId,
    key: &DestinationKey,
    conn: C::Conn,
    target: &Target,
    first: Taken,
) {
    let mode = tls_mode(core, key);
    if mode == TlsMode::Cluster {
        return peer_session(core, dest, conn, target, first).await;
    }
    let starttls = match mode {
        TlsMode::Cluster | TlsMode::Off => StartTlsPolicy::Never,
        TlsMode::Required => StartTlsPolicy::Required,
        TlsMode::Opportunistic if core.tls_held(key) => StartTlsPolicy::Never,
        TlsMode::Opportunistic => StartTlsPolicy::IfOffered,
    };
    let hop = format!("{}[{}]", target.host, target.addr.ip());
    let mut conv = Conversation::new(core, starttls, hop, Some(first));
    if let Pause::Done = converse(core, dest, &conn, &mut conv).await {
        conn.shutdown();
        return finish(core, conv);
    }
    // RFC 3207 §6: what the hop sent after its 220 came before TLS; none of it is read.
    conv.input.clear();
    conv.consumed = 0;
    let config = match mode {
        TlsMode::Required => core.shared.client_tls.verified(),
        TlsMode::Opportunistic | TlsMode::Off | TlsMode::Cluster => {
            core.shared.client_tls.opportunistic()
        }
    };
    match handshake(core, conn, config, &target.host).await {
        Handshake::Up(tls, summary) => {
            conv.tls = Some(format!("{}/{}", summary.version, summary.cipher));
            conv.client.tls_established(&mut conv.out);
            // The client asks for STARTTLS once per connection: this runs to the end.
            let tls = &*tls;
            let _ = converse(core, dest, tls, &mut conv).await;
            let _ = within(tls, CLOSE_NOTIFY_LIMIT, tls.finish()).await;
            tls.shutdown();
            finish(core, conv);
        }
        Handshake::Failed(why) if mode == TlsMode::Opportunistic => {
            core.tls_failed(key);
            tracing::warn!(
                target: "relay::delivery",
                destination = %Safe(&key),
                relay = %Safe(&conv.hop),
                error = %Safe(&why),
                hold = ?core.shared.tls_failure_hold,
                "TLS handshake failed; delivering in plaintext, STARTTLS skipped for this destination during the hold"
            );
            // No message was handed to the client yet (STARTTLS precedes the first), so
            // dropping it loses nothing; the entry goes to the plaintext connection.
            let first = conv.pending_first.take();
            let hop = conv.hop.clone();
            finish(core, conv);
            let Some(first) = first else {
                return;
            };
            let mut phase = core.phase.clone();
            let attempt = tokio::select! {
                biased;
                attempt = core.connector.connect(target.addr, core.shared.connect_timeout) => attempt,
                _ = stop_requested(&mut phase, true) => Err(std::io::Error::other("the relay is stopping")),
            };
            let plain = match attempt {
                Ok(plain) => plain,
                Err(error) => {
                    let result = RecipientResult::Deferred(Diagnostic::Local {
                        stage: Stage::Greeting,
                        reply: Reply::next_hop_unreachable(&format!("{hop}: {error}")),
                    });
                    return fail_destination(core, first, result, Some(&hop), None).await;
                }
            };
            let mut conv = Conversation::new(core, StartTlsPolicy::Never, hop, Some(first));
            let _ = converse(core, dest, &plain, &mut conv).await;
            plain.shutdown();
            finish(core, conv);
        }
        Handshake::Failed(why) => {
            conv.client.tls_failed(&why, &mut conv.out);
            act(core, &mut conv).await;
            finish(core, conv);
        }
        Handshake::Stopped => {
            conv.client.connection_lost(&mut conv.out);
            act(core, &mut conv).await;
            finish(core, conv);
        }
    }
}

/// One connection to a cluster peer's listener: mutual TLS from the first byte (our node
/// certificate; theirs must chain to the cluster CA and name the address we dialled), then
/// SMTP without STARTTLS. A failed handshake defers the destination like a refused
/// connection: the mail waits in our queue and is retried on the usual schedule.
async fn peer_session<C: Connector + 'static>(
    core: &Rc<Core<C>>,
    dest: DestId,
    conn: C::Conn,
    target: &Target,
    first: Taken,
) {
    let hop = format!("{}[{}]", target.host, target.addr.ip());
    let Some(cluster) = core.shared.cluster.as_ref() else {
        // A node route exists only with a cluster; never lose the entry.
        conn.shutdown();
        core.retry(first.0);
        return;
    };
    match handshake(core, conn, cluster.tls.client(), &target.host).await {
        Handshake::Up(tls, summary) => {
            let mut conv = Conversation::new(core, StartTlsPolicy::Never, hop, Some(first));
            // Nodes may share a public host name: a peer greeting with ours is no loop.
            let config = crate::smtp::client::ClientConfig {
                own_hostname: None,
                ..(*core.shared.client).clone()
            };
            conv.client =
                Client::with_starttls(Arc::new(config), StartTlsPolicy::Never).for_peer(&conv.hop);
            conv.tls = Some(format!("{}/{}", summary.version, summary.cipher));
            conv.to_peer = true;
            let tls = &*tls;
            let _ = converse(core, dest, tls, &mut conv).await;
            let _ = within(tls, CLOSE_NOTIFY_LIMIT, tls.finish()).await;
            tls.shutdown();
            finish(core, conv);
        }
        Handshake::Failed(why) => {
            tracing::warn!(target: "relay::delivery", relay = %Safe(&hop), error = %Safe(&why), "cluster TLS handshake failed");
            let result = RecipientResult::Deferred(Diagnostic::Local {
                stage: Stage::Greeting,
                reply: Reply::next_hop_unreachable(&format!("{hop}: cluster TLS: {why}")),
            });
            fail_destination(core, first, result, Some(&hop), None).await;
        }
        Handshake::Stopped => {
            let result = RecipientResult::Deferred(Diagnostic::Local {
                stage: Stage::Greeting,
                reply: Reply::next_hop_unreachable(&format!("{hop}: the relay is stopping")),
            });
            fail_destination(core, first, result, Some(&hop), None).await;
        }
    }
}

/// Wraps `conn` in TLS for `host` and runs the handshake, bounded by `tls.handshake_timeout`
/// and a stop. On failure the connection is shut.
async fn handshake<C: Connector + 'static, K: Connection>(
    core: &Core<C>,
    conn: K,
    config: Arc<rustls::ClientConfig>,
    host: &str,
) -> Handshake<K> {
    let Some(name) = crate::net::tls::client::server_name(host) else {
        conn.shutdown();
        return Handshake::Failed(format!("{host:?} is not a name TLS can check"));
    };
    let tls = match TlsConnection::client(conn, config, name) {
        Ok(tls) => tls,
        Err(error) => return Handshake::Failed(error.to_string()),
    };
    let mut phase = core.phase.clone();
    let limit = core.shared.tls_handshake_timeout;
    let result = {
        let running = tls.handshake();
        tokio::pin!(running);
        tokio::select! {
            biased;
            result = &mut running => Some(result.map_err(|e| e.to_string())),
            _ = tokio::time::sleep(limit) => {
                tls.shutdown();
                let _ = running.await;
                Some(Err(format!("no handshake within {limit:?}")))
            }
            _ = stop_requested(&mut phase, true) => {
                tls.shutdown();
                let _ = running.await;
                None
            }
        }
    };
    match result {
        Some(Ok(summary)) => Handshake::Up(Box::new(tls), summary),
        Some(Err(why)) => {
            tls.shutdown();
            Handshake::Failed(why)
        }
        None => Handshake::Stopped,
    }
}

async fn resolve<C: Connector + 'static>(core: &Core<C>, key: &DestinationKey) -> Resolution {
    let shared = &core.shared;
    let (route, domain) = match key {
        DestinationKey::Mx(domain) => (crate::queue::Route::DEFAULT, domain.to_string()),
        DestinationKey::Static { hop, tls } => (
            crate::queue::Route {
                hop: crate::queue::NextHop::Static(std::sync::Arc::new(hop.clone())),
                tls: *tls,
                rule: None,
            },
            String::new(),
        ),
    };
    let names = [shared.hostname.clone()];
    let seed = key_seed(key);
    let resolution = resolve::resolve(
        &core.resolver,
        &route,
        &domain,
        seed,
        &names,
        &shared.resolve_limits,
    )
    .await;
    // A cluster node is reached by address; its listener refuses users not homed there, so
    // a node route cannot loop (and the nodes may share an interface, as in tests).
    if matches!(
        key,
        DestinationKey::Static {
            tls: TlsMode::Cluster,
            ..
        }
    ) {
        return resolution;
    }
    // A next hop that is this relay would take the mail back in a loop.
    let (what, kind) = match key {
        DestinationKey::Mx(domain) => (domain.to_string(), loops::Route::Mx),
        DestinationKey::Static { hop, .. } => (hop.to_string(), loops::Route::Static),
    };
    loops::without_myself(resolution, &what, kind, &shared.own_addresses)
}

fn key_seed(key: &DestinationKey) -> u64 {
    key.to_string().bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// The destination failed as a whole (see the module doc of `delivery`): `first` and every
/// ready entry get `result`; the scheduler holds the destination after a temporary failure.
async fn fail_destination<C: Connector + 'static>(
    core: &Rc<Core<C>>,
    first: Taken,
    result: RecipientResult,
    hop: Option<&str>,
    tls: Option<&str>,
) {
    let temporary = matches!(result, RecipientResult::Deferred(_));
    let others = core.fail_destination(first.0, temporary);
    for (ticket, entry) in std::iter::once(first).chain(others) {
        let message = match core.load(entry.id).await {
            Ok(Some(m)) => m,
            Ok(None) => {
                core.gone(ticket, entry.id);
                continue;
            }
            Err(reply) => {
                tracing::warn!(queue_id = %entry.id, %reply, "cannot read a queued message");
                core.retry(ticket);
                continue;
            }
        };
        let results = vec![result.clone(); entry.recipients.len()];
        settle(core, ticket, &entry, &message, &results, false, hop, tls).await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn settle<C: Connector + 'static>(
    core: &Rc<Core<C>>,
    ticket: Ticket,
    entry: &QueueEntry,
    message: &StoredMessage,
    results: &[RecipientResult],
    hop_dsn: bool,
    hop: Option<&str>,
    tls: Option<&str>,
) {
    let settlement = outcome::settle(
        &Attempted {
            entry,
            remote: &message.meta.remote,
            envelope: &message.meta.envelope,
            results,
            hop_dsn,
            now: core.wall(),
        },
        &core.shared.schedule,
        &core.shared.dsn_policy,
    );
    core.apply(ticket, entry, message, settlement, hop, tls)
        .await;
}

/// The message for the next hop: the stored bytes (our Received header first) and the
/// entry's recipients with their DSN parameters.
fn outgoing(entry: &QueueEntry, message: &StoredMessage, body: Bytes) -> Outgoing {
    let meta = &message.meta;
    let recipients = entry
        .recipients
        .indices()
        .into_iter()
        .map(|i| {
            recipient_of(
                &meta.envelope,
                meta.remote.get(i).map(String::as_str).unwrap_or(""),
            )
        })
        .collect();
    Outgoing {
        reverse_path: meta.envelope.reverse_path.clone(),
        params: meta.envelope.params.clone(),
        recipients,
        eight_bit: crate::mime::downgrade::has_8bit(&body),
        body,
    }
}

/// A message handed to the client. Its body lives in `body`, shared with the client (no
/// copy per delivery); `message.body` is empty until the results need it back.
struct InFlight {
    ticket: Ticket,
    entry: QueueEntry,
    message: StoredMessage,
    body: Bytes,
}

impl InFlight {
    /// The stored message whole again, for the results and notices. The client has dropped
    /// its share by the time its transaction is done, so this takes the buffer back without
    /// copying it.
    fn into_message(self) -> (Ticket, QueueEntry, StoredMessage) {
        let InFlight {
            ticket,
            entry,
            mut message,
            body,
        } = self;
        message.body = Vec::from(body);
        (ticket, entry, message)
    }
}

/// Drives the conversation over `conn` until the client is done or asks for TLS.
async fn converse<C: Connector + 'static, K: Connection>(
    core: &Rc<Core<C>>,
    dest: DestId,
    conn: &K,
    conv: &mut Conversation,
) -> Pause {
    let mut phase = core.phase.clone();
    let write_limit = core.shared.client.timeouts.data_block;

    loop {
        // Write what the last call produced, then act on its events.
        write_out(conn, &mut conv.client, &mut conv.out, write_limit).await;
        act(core, conv).await;
        match conv.client.next() {
            Next::Done => return Pause::Done,
            Next::StartTls => return Pause::StartTls,
            Next::Send => {
                let next = match conv.pending_first.take() {
                    Some(first) => Some(first),
                    None => take_shared(core, dest).await,
                };
                let Some((ticket, entry)) = next else {
                    conv.client.quit(&mut conv.out);
                    continue;
                };
                match core.load(entry.id).await {
                    Ok(Some(mut message)) => {
                        let body = Bytes::from(std::mem::take(&mut message.body));
                        let mut message_out = outgoing(&entry, &message, body.clone());
                        if let Some(cluster) = core.shared.cluster.as_ref().filter(|_| conv.to_peer)
                        {
                            message_out.params.cluster = cluster.mail_params(entry.id).into();
                        }
                        match conv.client.send(message_out, &mut conv.out) {
                            Ok(()) => {
                                conv.current = Some(InFlight {
                                    ticket,
                                    entry,
                                    message,
                                    body,
                                })
                            }
                            // Not idle after all (cannot happen after Next::Send).
                            Err(_) => core.retry(ticket),
                        }
                    }
                    Ok(None) => core.gone(ticket, entry.id),
                    Err(reply) => {
                        tracing::warn!(queue_id = %entry.id, %reply, "cannot read a queued message");
                        core.retry(ticket);
                    }
                }
            }
            Next::Read(limit) => {
                let input = &mut conv.input;
                compact(input, &mut conv.consumed, false);
                if input.capacity() - input.len() < READ_CHUNK / 4 {
                    input.reserve(READ_CHUNK);
                }
                let (read, buffer) = read_more(
                    conn,
                    std::mem::take(input),
                    tokio::time::Instant::now() + limit,
                    stop_requested(&mut phase, true),
                    |_| Vec::new(),
                )
                .await;
                conv.input = buffer;
                match read {
                    Read::Data(_) => {
                        let used = conv
                            .client
                            .handle_input(&conv.input[conv.consumed..], &mut conv.out);
                        conv.consumed += used;
                    }
                    Read::Expired(Expiry::Deadline) => conv.client.timed_out(&mut conv.out),
                    // read_more has shut the socket.
                    _ => conv.client.connection_lost(&mut conv.out),
                }
            }
        }
    }
}

/// Acts on the client's events (after its bytes were written).
async fn act<C: Connector + 'static>(core: &Rc<Core<C>>, conv: &mut Conversation) {
    let events = std::mem::take(&mut conv.out.events);
    for event in events {
        match event {
            ClientEvent::Ready | ClientEvent::StartTls => {}
            ClientEvent::TransactionDone(done) => {
                if let Some(flight) = conv.current.take() {
                    // The results are recorded in the background: the connection goes on
                    // with the next message while the group commit syncs them (waiting
                    // here put one fdatasync per message on every connection's path).
                    // The entry stays out of the queue until its record is durable.
                    // The ticket stays out until the record is stored, so a drain waits for
                    // the record too.
                    let dsn = conv.client.capabilities().dsn;
                    let owner = Rc::clone(core);
                    let hop = conv.hop.clone();
                    let tls = conv.tls.clone();
                    let (ticket, entry, message) = flight.into_message();
                    core.transaction_over(ticket);
                    tokio::task::spawn_local(async move {
                        settle(
                            &owner,
                            ticket,
                            &entry,
                            &message,
                            &done.results,
                            dsn,
                            Some(&hop),
                            tls.as_deref(),
                        )
                        .await;
                    });
                }
            }
            ClientEvent::Closed(ConnectionOutcome::Failed(diagnostic)) => {
                tracing::info!(target: "relay::delivery", relay = %Safe(&conv.hop), reason = %Safe(&diagnostic), "connection to next hop failed");
                if let Some(first) = conv.pending_first.take() {
                    // Refused before any transaction: the destination as a whole. A 5xx
                    // greeting defers (it says nothing about the recipients), unless it is
                    // our own decision: a next hop that greets with our name is a loop.
                    let reply = diagnostic.reply().clone();
                    let ours = !diagnostic.is_remote();
                    let result = if reply.code().class() == 5
                        && (diagnostic.stage() != Stage::Greeting || ours)
                    {
                        RecipientResult::Bounced(diagnostic)
                    } else {
                        RecipientResult::Deferred(Diagnostic::Local {
                            stage: diagnostic.stage(),
                            reply,
                        })
                    };
                    let tls = conv.tls.as_deref();
                    fail_destination(core, first, result, Some(&conv.hop), tls).await;
                }
            }
            ClientEvent::Closed(ConnectionOutcome::Quit) => {}
        }
    }
}

/// The connection is over: entries the client still holds are never lost.
fn finish<C: Connector + 'static>(core: &Rc<Core<C>>, mut conv: Conversation) {
    // The client ended with a message still held (cannot happen: Closed comes last, after
    // its TransactionDone); never lose it.
    if let Some(flight) = conv.current.take() {
        core.retry(flight.ticket);
    }
    if let Some((ticket, _)) = conv.pending_first.take() {
        core.retry(ticket);
    }
}

async fn write_out<C: Connection>(
    conn: &C,
    client: &mut Client,
    out: &mut Output,
    limit: Duration,
) {
    while !out.bytes.is_empty() {
        let bytes = std::mem::take(&mut out.bytes);
        match within(conn, limit, conn.write_all(bytes)).await {
            Ok((Ok(()), _)) => {}
            _ => {
                conn.shutdown();
                client.connection_lost(out);
            }
        }
    }
}
