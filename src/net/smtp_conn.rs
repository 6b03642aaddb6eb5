//! One SMTP connection: moves bytes between the socket and the sans-IO [`smtp::Session`],
//! stores submitted messages in the shard's spool, and enforces timeouts and shutdown.
//!
//! Flow: feed buffered input to the session; perform its events in order (a `Submit` waits
//! for the group commit before the session may answer 250, so pipelined commands after the
//! data wait too, as RFC 2920 ordering requires); when the session needs more bytes, write
//! every reply it produced in one write, then read.
//!
//! Timeouts never drop an in-flight tokio-uring operation (DESIGN.md §1a): the connection
//! is shut down first, which completes the pending operation, and only then is it released.

use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use super::io::Connection;
use super::limits::Permit;
use super::shard::ShardContext;
use crate::envelope::QueueId;
use crate::runtime::Phase;
use crate::smtp::{Event, Outbox, Session, Submission, SubmitError};
use crate::spool::{NewMessage, SpoolError};

/// Bytes read per call. Command lines are at most `smtp.command_line_max`, so a partial line
/// plus one chunk always fits; an idle connection holds one such buffer (TARGETS.md: ≤ 32 KiB
/// per idle connection).
pub const READ_CHUNK: usize = 16 * 1024;
/// How long a goodbye (421) may take to write before the socket is simply shut.
const GOODBYE_WRITE_LIMIT: Duration = Duration::from_secs(2);

/// The I/O wait ended without the operation's result.
struct Expired;

/// Runs an I/O future with a time limit. On expiry the connection is shut down and the
/// future is still awaited to completion (it completes at once after the shutdown), so no
/// operation is left armed in the kernel.
async fn within<C: Connection, F: Future>(
    conn: &C,
    limit: Duration,
    io: F,
) -> Result<F::Output, Expired> {
    tokio::pin!(io);
    tokio::select! {
        biased;
        out = &mut io => Ok(out),
        _ = tokio::time::sleep(limit) => {
            conn.shutdown();
            let _ = io.await;
            Err(Expired)
        }
    }
}

/// Resolves when this connection must end because of shutdown: at once when stopping, and
/// when draining only if no transaction is in flight (in-flight ones may finish).
async fn stop_requested(phase: &mut watch::Receiver<Phase>, in_transaction: bool) {
    loop {
        let now = *phase.borrow_and_update();
        if now == Phase::Stopping || (now == Phase::Draining && !in_transaction) {
            return;
        }
        if phase.changed().await.is_err() {
            // The server side of the channel is gone only at process exit.
            std::future::pending::<()>().await;
        }
    }
}

/// Serves one accepted SMTP connection until it ends. `_permit` holds the admission slots.
pub async fn serve<C: Connection>(
    conn: C,
    peer: SocketAddr,
    ctx: Rc<ShardContext>,
    _permit: Permit,
) {
    let mut phase = ctx.phase.clone();
    let mut out = Outbox::default();
    let mut session = Session::new(
        ctx.session_config.clone(),
        peer,
        SystemTime::now(),
        &mut out,
    );
    let mut input: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut consumed = 0usize;
    tracing::debug!(client = %peer, shard = ctx.shard, "connected");

    loop {
        // 1. Let the session take what it can from the buffered input.
        let mut progressed = false;
        if consumed < input.len() && !session.awaiting_submission() && !session.is_closed() {
            let n = session.handle_input(&input[consumed..], SystemTime::now(), &mut out);
            consumed += n;
            progressed = n > 0;
        }

        // 2. Perform its events in order.
        let events = std::mem::take(&mut out.events);
        for event in events {
            match event {
                Event::Submit(submission) => {
                    let stored = tokio::select! {
                        biased;
                        stored = store(&ctx, *submission, peer) => Some(stored),
                        _ = stop_requested(&mut phase, true) => None,
                    };
                    let Some(result) = stored else {
                        // Forced stop while the disk was busy: no reply is honest here; the
                        // client retries (a duplicate is possible, a loss is not).
                        conn.shutdown();
                        return;
                    };
                    session.submitted(result, SystemTime::now(), &mut out);
                    progressed = true;
                }
                Event::Rejected(summary) => {
                    tracing::info!(
                        target: "relay::transaction",
                        client = %peer.ip(),
                        sender = %summary.reverse_path,
                        rcpts = summary.recipients,
                        size = summary.size,
                        result = %summary.reply,
                        "rejected"
                    );
                }
                Event::Close(reason) => {
                    let _ = flush(&conn, &mut out, GOODBYE_WRITE_LIMIT).await;
                    conn.shutdown();
                    tracing::debug!(client = %peer, ?reason, "closed");
                    return;
                }
            }
        }
        // More may be possible without reading: pipelined input after a stored message,
        // or events the last step produced.
        if progressed && (consumed < input.len() || !out.events.is_empty()) {
            continue;
        }

        // 3. Needs more bytes: answer everything so far in one write, then read.
        let limit = if session.receiving_data() {
            ctx.data_timeout
        } else {
            ctx.command_timeout
        };
        if flush(&conn, &mut out, limit).await.is_err() {
            conn.shutdown();
            return;
        }
        compact(&mut input, &mut consumed);
        let read = conn.read_into(input);
        tokio::pin!(read);
        let in_transaction = session.in_transaction();
        tokio::select! {
            biased;
            (result, buffer) = &mut read => {
                input = buffer;
                match result {
                    Ok(n) if n > 0 => {}
                    Ok(_) => return ended(&conn, &session, peer, "client closed the connection"),
                    Err(_) => return ended(&conn, &session, peer, "read error"),
                }
            }
            _ = tokio::time::sleep(limit) => {
                session.timed_out(&mut out);
                goodbye(&conn, &mut out, read).await;
                return ended(&conn, &session, peer, "timeout");
            }
            _ = stop_requested(&mut phase, in_transaction) => {
                session.shutting_down(&mut out);
                goodbye(&conn, &mut out, read).await;
                return ended(&conn, &session, peer, "server shutting down");
            }
        }
    }
}

/// Closes the socket; a transaction cut short gets its log line.
fn ended<C: Connection>(conn: &C, session: &Session, peer: SocketAddr, why: &'static str) {
    if session.in_transaction() {
        tracing::info!(
            target: "relay::transaction",
            client = %peer.ip(),
            result = why,
            "transaction abandoned"
        );
    }
    conn.shutdown();
}

/// Sends the session's last reply (a 421), shuts the socket down and lets the pending read
/// complete, so nothing is left armed.
async fn goodbye<C: Connection, F: Future>(
    conn: &C,
    out: &mut Outbox,
    pending_read: std::pin::Pin<&mut F>,
) {
    let _ = flush(conn, out, GOODBYE_WRITE_LIMIT).await;
    conn.shutdown();
    let _ = pending_read.await;
}

/// Writes the encoded replies, if any, in one write.
async fn flush<C: Connection>(conn: &C, out: &mut Outbox, limit: Duration) -> Result<(), ()> {
    if out.bytes.is_empty() {
        return Ok(());
    }
    let bytes = std::mem::take(&mut out.bytes);
    match within(conn, limit, conn.write_all(bytes)).await {
        Ok((Ok(()), mut buffer)) => {
            buffer.clear();
            out.bytes = buffer; // keep the allocation for the next replies
            Ok(())
        }
        _ => Err(()),
    }
}

/// Moves the unconsumed tail to the front and makes room for one more read.
fn compact(input: &mut Vec<u8>, consumed: &mut usize) {
    if *consumed > 0 {
        input.drain(..*consumed);
        *consumed = 0;
    }
    if input.capacity() - input.len() < READ_CHUNK / 4 {
        input.reserve(READ_CHUNK);
    }
}

/// Stores one message durably; Ok only once the group commit covering it has synced.
async fn store(
    ctx: &ShardContext,
    submission: Submission,
    peer: SocketAddr,
) -> Result<QueueId, SubmitError> {
    let now = SystemTime::now();
    let id = ctx.spool.next_id(now);
    let received = submission
        .received_header(id, &ctx.hostname, now)
        .into_bytes();
    let Submission {
        envelope,
        mailboxes,
        remote,
        origin,
        body,
        mail_at,
    } = submission;
    let sender = envelope.reverse_path.clone();
    let rcpts = envelope.recipients.len();
    let delivered_to = mailboxes.clone();
    let size = (received.len() + body.len()) as u64;
    let message = NewMessage {
        id,
        arrival_unix_micros: unix_micros(now),
        origin,
        envelope,
        received_header: received,
        body,
        mailboxes,
        remote,
    };
    let result = match ctx.spool.append_message(message) {
        Ok(pending) => match pending.await {
            Ok(Ok(committed)) => {
                let entry = crate::mailbox::Entry {
                    id,
                    size: committed.location.body_len,
                };
                for mailbox in &delivered_to {
                    ctx.mail_store.deliver(mailbox, entry);
                }
                Ok(id)
            }
            Ok(Err(error)) => Err(error),
            Err(_) => Err(SpoolError::Closed),
        },
        Err(error) => Err(error),
    };
    let took = mail_at.elapsed().unwrap_or_default().as_secs_f64() * 1000.0;
    match result {
        Ok(id) => {
            tracing::info!(
                target: "relay::transaction",
                queue_id = %id,
                client = %peer.ip(),
                sender = %sender,
                rcpts,
                size,
                result = "queued",
                duration_ms = format_args!("{took:.1}"),
                "accepted"
            );
            Ok(id)
        }
        Err(error) => {
            let reply = match error {
                SpoolError::Backpressure => SubmitError::Backpressure,
                _ => SubmitError::Storage,
            };
            tracing::warn!(
                target: "relay::transaction",
                client = %peer.ip(),
                sender = %sender,
                rcpts,
                size,
                result = "deferred",
                error = %error,
                duration_ms = format_args!("{took:.1}"),
                "not stored"
            );
            Err(reply)
        }
    }
}

fn unix_micros(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Turns a refused connection away with one line and closes it.
pub async fn refuse<C: Connection>(conn: C, reply: Vec<u8>) {
    let started = Instant::now();
    let _ = within(&conn, GOODBYE_WRITE_LIMIT, conn.write_all(reply)).await;
    conn.shutdown();
    tracing::debug!(took = ?started.elapsed(), "refused connection closed");
}
