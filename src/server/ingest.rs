//! A submitted message from the spool's append to its hand-offs: once the group commit
//! covering it has synced, local recipients see it in their INBOX (its UIDs were taken
//! before the append and ride in its frame) and remote ones go to
//! the delivery core that owns them (never waiting for room in the mesh: the message is
//! durable, so its 250 goes out at once); then the transaction is logged and counted.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use super::shard::ShardContext;
use crate::envelope::QueueId;
use crate::logsafe::Safe;
use crate::smtp::{Submission, SubmitError};
use crate::spool::{NewMessage, SpoolError};

/// Accepts one submitted message: the sender checks of arriving mail (which may refuse it or
/// add their `Authentication-Results`), our DKIM signature on our own mail, then
/// [`store`].
pub async fn accept(
    ctx: &ShardContext,
    mut submission: Submission,
    peer: SocketAddr,
) -> Result<QueueId, SubmitError> {
    let mut headers = super::verifying::check(ctx, &mut submission, peer).await?;
    super::signatures::check(ctx, &mut submission, &mut headers).await;
    headers.extend(super::signing::sign(ctx, &submission));
    store(ctx, submission, peer, headers).await
}

/// Stores one message durably and hands it on; Ok only once the group commit covering it
/// has synced, and no later (a full hand-off queue is retried in the background).
/// `headers` (complete fields, CRLF-terminated) go above our Received field.
pub async fn store(
    ctx: &ShardContext,
    submission: Submission,
    peer: SocketAddr,
    headers: Vec<u8>,
) -> Result<QueueId, SubmitError> {
    let now = SystemTime::now();
    let id = ctx.spool.next_id(now);
    let mut received = headers;
    received.extend_from_slice(
        submission
            .received_header(id, &ctx.hostname, now)
            .as_bytes(),
    );
    let Submission {
        envelope,
        mailboxes,
        remote,
        mime,
        origin,
        body,
        mail_at,
        authenticated,
        relay_client: _,
        tls,
    } = submission;

    let sender = envelope.reverse_path.clone();
    let rcpts = envelope.recipients.len();
    let delivered_to = mailboxes.clone();
    let queued_remote = remote.clone();
    let size = (received.len() + body.len()) as u64;
    let arrival = i64::try_from(unix_micros(now) / 1_000_000).unwrap_or(0);
    let placements = ctx.mail_store.place(&mailboxes, arrival);
    // Only IMAP reads it: a message relayed only pays nothing.
    let summary = if mailboxes.is_empty() {
        None
    } else {
        crate::imap::structure::Summary::encoded(&received, &body)
    };
    let message = NewMessage {
        id,
        arrival_unix_micros: unix_micros(now),
        origin,
        envelope,
        received_header: received,
        body,
        mailboxes,
        remote,
        placements: placements.clone(),
    };
    let result = match ctx.spool.append_message_with_summary(message, summary) {
        Ok(pending) => match pending.await {
            Ok(Ok(committed)) => {
                let body_len = committed.location.body_len;
                ctx.mail_store
                    .delivered(&ctx.spool, id, body_len, &delivered_to, &placements)
                    .await;
                crate::delivery::hand_on(&ctx.delivery, ctx.shard, id, body_len, &queued_remote);
                Ok(id)
            }
            Ok(Err(error)) => Err(error),
            Err(_) => Err(SpoolError::Closed),
        },
        Err(error) => Err(error),
    };
    if result.is_err() {
        ctx.mail_store
            .abandoned(&ctx.spool, &delivered_to, &placements)
            .await;
    }
    let took = mail_at.elapsed().unwrap_or_default().as_secs_f64() * 1000.0;
    match result {
        Ok(id) => {
            ctx.metrics.transaction(crate::smtp::ReplyCode::OK.get());
            ctx.metrics.message_bytes.inc_by(size);
            tracing::info!(
                target: "relay::transaction",
                queue_id = %id,
                client = %peer.ip(),
                sender = %Safe(&sender),
                auth = authenticated.as_deref().map(tracing::field::display),
                tls = tls.as_deref().map(tracing::field::display),
                rcpts,
                size,
                parts = mime.parts,
                attachments = mime.attachments,
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
                sender = %Safe(&sender),
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
