//! A submitted message from the spool's append to its hand-offs: once the group commit
//! covering it has synced, local recipients see it in their INBOX (its UIDs were taken
//! before the append and ride in its frame; a user whose mail is sealed gets a frame of
//! their own, encrypted, see `mailbox::sealing`) and remote ones go to
//! the delivery core that owns them (never waiting for room in the mesh: the message is
//! durable, so its 250 goes out at once); then the transaction is logged and counted.

use std::net::SocketAddr;
use std::time::SystemTime;

use super::shard::ShardContext;
use crate::envelope::QueueId;
use crate::logsafe::Safe;
use crate::mailbox::sealing::{self, Message, StoreError, Target};
use crate::mailbox::Filing;
use crate::sender_auth::junk_mark;
use crate::smtp::{Submission, SubmitError};
use crate::spool::SpoolError;

/// Accepts one submitted message: the sender checks of arriving mail (which may refuse it,
/// file it in Junk, or add their `Authentication-Results`), our DKIM signature on our own
/// mail, then [`store`].
pub async fn accept(
    ctx: &ShardContext,
    mut submission: Submission,
    peer: SocketAddr,
) -> Result<QueueId, SubmitError> {
    let checked = super::verifying::check(ctx, &mut submission, peer).await?;
    // After the checks (a signature may cover the forged field), before our signature.
    if let Some(kept) = junk_mark::remove(&submission.body) {
        submission.body = kept;
    }
    let mut headers = checked.headers;
    super::signatures::check(ctx, &mut submission, &mut headers).await;
    headers.extend(super::signing::sign(ctx, &submission));
    store(ctx, submission, peer, headers, checked.filing).await
}

/// Stores one message durably and hands it on; Ok only once the group commit covering it
/// has synced, and no later (a full hand-off queue is retried in the background).
/// `headers` (complete fields, CRLF-terminated) go above our Received field; the local
/// copies are filed under `filing`.
pub async fn store(
    ctx: &ShardContext,
    submission: Submission,
    peer: SocketAddr,
    headers: Vec<u8>,
    filing: Filing,
) -> Result<QueueId, SubmitError> {
    store_traced(ctx, submission, peer, headers, filing, true).await
}

/// [`store`] for a cluster peer's message: the bytes as the peer sent them, without a
/// Received field of ours (the first node's trace is the message's; `cluster_listener`),
/// filed in Junk when the first node's checks said so ([`junk_mark`]).
pub async fn store_as_sent(
    ctx: &ShardContext,
    submission: Submission,
    peer: SocketAddr,
) -> Result<QueueId, SubmitError> {
    let filing = if junk_mark::present(&submission.body) {
        Filing::Junk
    } else {
        Filing::Inbox
    };
    store_traced(ctx, submission, peer, Vec::new(), filing, false).await
}

async fn store_traced(
    ctx: &ShardContext,
    submission: Submission,
    peer: SocketAddr,
    headers: Vec<u8>,
    filing: Filing,
    trace: bool,
) -> Result<QueueId, SubmitError> {
    let now = SystemTime::now();
    let id = ctx.spool.next_id(now);
    let mut received = headers;
    if trace {
        received.extend_from_slice(
            submission
                .received_header(id, &ctx.hostname, now)
                .as_bytes(),
        );
    }
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
    let queued_remote = remote.clone();
    let size = (received.len() + body.len()) as u64;
    let target = Target {
        spool: &ctx.spool,
        mail_store: &ctx.mail_store,
        keys: Some(ctx.keys.as_ref()),
        sealed: Some(&ctx.metrics.messages_sealed),
    };
    let message = Message {
        id,
        arrival: now,
        origin,
        envelope,
        received_header: received,
        body,
        mailboxes,
        remote,
        filing,
    };
    let stored = sealing::store(&target, message).await;
    // The plain frame holds the remote recipients: once it committed they are pending in the
    // spool and go to their owners, even when another frame failed (the client's retry then
    // duplicates them; nothing is lost).
    let plain_len = match &stored {
        Ok(stored) => stored.plain_len,
        Err(failed) => failed.plain_len,
    };
    if let Some(len) = plain_len {
        crate::delivery::hand_on(&ctx.delivery, ctx.shard, id, len, &queued_remote);
    }
    let result = stored.map_err(|failed| failed.error);
    let took = mail_at.elapsed().unwrap_or_default().as_secs_f64() * 1000.0;
    match result {
        Ok(stored) => {
            ctx.metrics.transaction(crate::smtp::ReplyCode::OK.get());
            ctx.metrics.message_bytes.inc_by(stored.bytes);
            tracing::info!(
                target: "relay::transaction",
                queue_id = %id,
                client = %peer.ip(),
                sender = %Safe(&sender),
                auth = authenticated.as_deref().map(tracing::field::display),
                tls = tls.as_deref().map(tracing::field::display),
                rcpts,
                size,
                cluster = !trace,
                sealed = stored.sealed,
                junk = filing == Filing::Junk,
                parts = mime.parts,
                attachments = mime.attachments,
                result = "queued",
                duration_ms = format_args!("{took:.1}"),
                "accepted"
            );
            Ok(stored.id)
        }
        Err(error) => {
            let reply = match error {
                StoreError::Seal(_) => SubmitError::Sealing,
                StoreError::Spool(SpoolError::Backpressure) => SubmitError::Backpressure,
                StoreError::Moving => SubmitError::Backpressure,
                StoreError::Spool(_) => SubmitError::Storage,
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
