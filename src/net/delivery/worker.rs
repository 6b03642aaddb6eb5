//! One connection worker: resolve the destination, connect, and drive the sans-IO SMTP
//! client over the engine's connection until the destination has nothing ready.
//!
//! The client contract (`smtp::client` module doc) is followed to the letter: after each call
//! its bytes are written completely (each write bounded by the data-block timeout), then its
//! events are acted on; reads are bounded by the timeout it names. A timeout or a stop shuts
//! the socket and then awaits the pending operation (DESIGN.md §1a), never drops it.

use std::rc::Rc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::Core;
use crate::net::conn::{compact, stop_requested, within};
use crate::net::io::{Connection, Connector};
use crate::queue::outcome::{self, recipient_of, Attempted};
use crate::queue::resolve::{self, Resolution};
use crate::queue::{DestId, DestinationKey, Entry};
use crate::smtp::client::{
    Client, ClientEvent, ConnectionOutcome, Diagnostic, Next, Outgoing, Output, RecipientResult,
    Stage,
};
use crate::smtp::reply::Reply;
use crate::spool::StoredMessage;

/// Bytes read per call from a next hop: replies are small.
const READ_CHUNK: usize = 4096;

/// A worker's life; the scheduler counted it in `workers` and `connection_opened`.
pub async fn run<C: Connector + 'static>(core: Rc<Core<C>>, dest: DestId) {
    if let Some(first) = core.take_next(dest) {
        deliver(&core, dest, first).await;
    }
    if let Some(d) = core.queue.borrow_mut().get_mut(dest) {
        d.connection_closed();
    }
    core.workers.set(core.workers.get().saturating_sub(1));
    core.kick.notify_one();
}

async fn deliver<C: Connector + 'static>(core: &Rc<Core<C>>, dest: DestId, first: Entry) {
    let Some(key) = core.destination_key(dest) else {
        core.finish(dest);
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
            return fail_destination(core, dest, first, result, None).await;
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
                connected = Some((conn, format!("{}[{}]", target.host, target.addr.ip())));
                break;
            }
            Err(error) => {
                tracing::debug!(destination = %key, addr = %target.addr, %error, "connect failed");
                last_error = format!(
                    "{}[{}]:{}: {error}",
                    target.host,
                    target.addr.ip(),
                    target.addr.port()
                );
            }
        }
    }
    let Some((conn, hop)) = connected else {
        let result = RecipientResult::Deferred(Diagnostic::Local {
            stage: Stage::Greeting,
            reply: Reply::next_hop_unreachable(&last_error),
        });
        return fail_destination(core, dest, first, result, None).await;
    };
    converse(core, dest, conn, &hop, first).await;
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
    resolve::resolve(
        &core.resolver,
        &route,
        &domain,
        seed,
        &names,
        &shared.resolve_limits,
    )
    .await
}

/// Without a system resolver (it could not be built) every lookup is a temporary failure:
/// MX mail defers, and static routes with an address still work.
impl resolve::Resolver for Option<resolve::SystemResolver> {
    async fn mx(&self, domain: &str) -> resolve::MxAnswer {
        match self {
            Some(resolver) => resolver.mx(domain).await,
            None => resolve::MxAnswer::TempFail("no DNS resolver available".into()),
        }
    }

    async fn addresses(&self, host: &str) -> resolve::AddrAnswer {
        match self {
            Some(resolver) => resolver.addresses(host).await,
            None => resolve::AddrAnswer::TempFail("no DNS resolver available".into()),
        }
    }
}

fn key_seed(key: &DestinationKey) -> u64 {
    key.to_string().bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// The destination failed as a whole (see the module doc of `delivery`): `first` and every
/// ready entry get `result`; a temporary failure holds the destination for the first retry
/// interval.
async fn fail_destination<C: Connector + 'static>(
    core: &Rc<Core<C>>,
    dest: DestId,
    first: Entry,
    result: RecipientResult,
    hop: Option<&str>,
) {
    core.finish(dest);
    let mut entries = vec![first];
    entries.extend(core.queue.borrow_mut().take_ready(dest));
    if matches!(result, RecipientResult::Deferred(_)) {
        let hold = SystemTime::now() + core.shared.schedule.base_interval(1);
        if let Some(d) = core.queue.borrow_mut().get_mut(dest) {
            d.hold_until(hold);
        }
    }
    for entry in entries {
        let message = match core.load(entry.id) {
            Ok(Some(m)) => m,
            Ok(None) => {
                gone(core, &entry);
                continue;
            }
            Err(reply) => {
                tracing::warn!(queue_id = %entry.id, %reply, "cannot read a queued message");
                retry_later(core, entry);
                continue;
            }
        };
        let results = vec![result.clone(); entry.recipients.len()];
        settle(core, &entry, &message, &results, false, hop).await;
    }
}

/// The message is no longer in the spool: nothing to deliver.
fn gone<C: Connector + 'static>(core: &Core<C>, entry: &Entry) {
    tracing::info!(queue_id = %entry.id, "queued message no longer in the spool; dropped from the queue");
    core.shared.mesh.gauge.release(0);
}

/// An entry whose message could not be read: back in the deferred index for the first
/// retry interval, without a record (nothing was attempted).
fn retry_later<C: Connector + 'static>(core: &Core<C>, mut entry: Entry) {
    entry.due_ms =
        crate::queue::to_millis(SystemTime::now() + core.shared.schedule.interval(1, entry.seed()));
    let key = core.destination_key(entry.dest);
    core.requeue(entry, key.as_ref(), 0);
}

async fn settle<C: Connector + 'static>(
    core: &Rc<Core<C>>,
    entry: &Entry,
    message: &StoredMessage,
    results: &[RecipientResult],
    hop_dsn: bool,
    hop: Option<&str>,
) {
    let settlement = outcome::settle(
        &Attempted {
            entry,
            remote: &message.meta.remote,
            envelope: &message.meta.envelope,
            results,
            hop_dsn,
            now: SystemTime::now(),
        },
        &core.shared.schedule,
        &core.shared.dsn_policy,
    );
    core.apply(entry, message, settlement, hop).await;
}

/// The message for the next hop: the stored bytes (our Received header first) and the
/// entry's recipients with their DSN parameters.
fn outgoing(entry: &Entry, message: &StoredMessage, body: Bytes) -> Outgoing {
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
    entry: Entry,
    message: StoredMessage,
    body: Bytes,
}

impl InFlight {
    /// The stored message whole again, for the results and notices. The client has dropped
    /// its share by the time its transaction is done, so this takes the buffer back without
    /// copying it.
    fn into_message(self) -> (Entry, StoredMessage) {
        let InFlight {
            entry,
            mut message,
            body,
        } = self;
        message.body = Vec::from(body);
        (entry, message)
    }
}

/// Drives one connection until the client is done.
async fn converse<C: Connector + 'static>(
    core: &Rc<Core<C>>,
    dest: DestId,
    conn: C::Conn,
    hop: &str,
    first: Entry,
) {
    let mut client = Client::new(std::sync::Arc::clone(&core.shared.client));
    let mut out = Output::default();
    let mut input: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut consumed = 0usize;
    let mut pending_first = Some(first);
    let mut current: Option<InFlight> = None;
    let mut phase = core.phase.clone();
    let write_limit = core.shared.client.timeouts.data_block;

    loop {
        // Write what the last call produced, then act on its events.
        write_out(&conn, &mut client, &mut out, write_limit).await;
        let events = std::mem::take(&mut out.events);
        for event in events {
            match event {
                ClientEvent::Ready => {}
                ClientEvent::TransactionDone(done) => {
                    if let Some(flight) = current.take() {
                        // The results are recorded in the background: the connection goes on
                        // with the next message while the group commit syncs them (waiting
                        // here put one fdatasync per message on every connection's path).
                        // The entry stays out of the queue until its record is durable.
                        let dsn = client.capabilities().dsn;
                        // Counted with the workers, so a drain waits for the record too.
                        let owner = Rc::clone(core);
                        let hop = hop.to_string();
                        owner.workers.set(owner.workers.get() + 1);
                        let (entry, message) = flight.into_message();
                        tokio::task::spawn_local(async move {
                            settle(&owner, &entry, &message, &done.results, dsn, Some(&hop)).await;
                            owner.workers.set(owner.workers.get().saturating_sub(1));
                            owner.kick.notify_one();
                        });
                        core.finish(dest);
                    }
                }
                ClientEvent::Closed(ConnectionOutcome::Failed(diagnostic)) => {
                    tracing::info!(target: "relay::delivery", relay = hop, reason = %diagnostic, "connection to next hop failed");
                    if let Some(first) = pending_first.take() {
                        // Refused before any transaction: the destination as a whole.
                        let reply = diagnostic.reply().clone();
                        let result =
                            if reply.code().class() == 5 && diagnostic.stage() != Stage::Greeting {
                                RecipientResult::Bounced(diagnostic)
                            } else {
                                RecipientResult::Deferred(Diagnostic::Local {
                                    stage: diagnostic.stage(),
                                    reply,
                                })
                            };
                        fail_destination(core, dest, first, result, Some(hop)).await;
                    }
                }
                ClientEvent::Closed(ConnectionOutcome::Quit) => {}
            }
        }
        match client.next() {
            Next::Done => break,
            Next::Send => {
                let next = match pending_first.take() {
                    Some(first) => Some(first),
                    None => core.take_next(dest),
                };
                let Some(entry) = next else {
                    client.quit(&mut out);
                    continue;
                };
                match core.load(entry.id) {
                    Ok(Some(mut message)) => {
                        let body = Bytes::from(std::mem::take(&mut message.body));
                        let message_out = outgoing(&entry, &message, body.clone());
                        match client.send(message_out, &mut out) {
                            Ok(()) => {
                                current = Some(InFlight {
                                    entry,
                                    message,
                                    body,
                                })
                            }
                            Err(_) => {
                                // Not idle after all (cannot happen after Next::Send).
                                retry_later(core, entry);
                                core.finish(dest);
                            }
                        }
                    }
                    Ok(None) => {
                        gone(core, &entry);
                        core.finish(dest);
                    }
                    Err(reply) => {
                        tracing::warn!(queue_id = %entry.id, %reply, "cannot read a queued message");
                        retry_later(core, entry);
                        core.finish(dest);
                    }
                }
            }
            Next::Read(limit) => {
                compact(&mut input, &mut consumed);
                if input.capacity() - input.len() < READ_CHUNK / 4 {
                    input.reserve(READ_CHUNK);
                }
                let read = conn.read_into(std::mem::take(&mut input));
                tokio::pin!(read);
                enum Woke {
                    Read(std::io::Result<usize>, Vec<u8>),
                    TimedOut,
                    Stop,
                }
                let woke = tokio::select! {
                    biased;
                    (result, buffer) = &mut read => Woke::Read(result, buffer),
                    _ = tokio::time::sleep(limit) => Woke::TimedOut,
                    _ = stop_requested(&mut phase, true) => Woke::Stop,
                };
                match woke {
                    Woke::Read(result, buffer) => {
                        input = buffer;
                        match result {
                            Ok(n) if n > 0 => {
                                let used = client.handle_input(&input[consumed..], &mut out);
                                consumed += used;
                            }
                            _ => {
                                conn.shutdown();
                                client.connection_lost(&mut out);
                            }
                        }
                    }
                    woke => {
                        // Shut first, then let the read complete: nothing stays armed.
                        conn.shutdown();
                        let (_, buffer) = read.await;
                        input = buffer;
                        if matches!(woke, Woke::TimedOut) {
                            client.timed_out(&mut out);
                        } else {
                            client.connection_lost(&mut out);
                        }
                    }
                }
            }
        }
    }
    conn.shutdown();
    // The client ended with a message still held (cannot happen: Closed comes last, after
    // its TransactionDone); never lose it.
    if let Some(flight) = current.take() {
        retry_later(core, flight.entry);
        core.finish(dest);
    }
    if let Some(first) = pending_first.take() {
        retry_later(core, first);
        core.finish(dest);
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
