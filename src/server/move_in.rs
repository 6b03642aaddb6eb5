//! The target side of `relay user move`: a peer's cluster-listener connection that asked for
//! ALPN [`move_wire::ALPN`] (the conversation is in [`crate::cluster::move_wire`]).
//!
//! **What it refuses.** A user this node's directory does not know, or already homes here
//! (then the move's copy phase is over: this node serves the user and imports nothing).
//!
//! **Durable before the answer.** A batch's folder ops are one state record (committed);
//! each body becomes a message frame of its own carrying the source's placement (UID,
//! flags, INTERNALDATE, modseq), as an IMAP APPEND with a given UID, with the bytes as the
//! source stored them (sealed bodies stay sealed); the body's other copies, the copies of
//! bodies already here and the fixes (flags, expunges, counters) are state records. Only
//! once every record of the batch is durable does the target answer `Applied`; a crash
//! before leaves part of it, which the source's next plan (made from this node's state,
//! keyed by folder, UIDVALIDITY and UID) does not send again.
//!
//! **POP3 UIDLs.** Each body keeps the UIDL the source showed for it (sent with it, or the
//! source's queue id from an older sender), in its message frame's origin
//! ([`Origin::moved`]): the frame is the one durable write of the import, compaction copies
//! its meta as it is, and recovery hands the UIDL back to the mail store, so POP3 here shows
//! what it showed there, after restarts too, and a second move sends it on.
//!
//! Bounded memory: a batch's bodies are read one at a time, each at most the spool's frame
//! limit, and the source sends at most [`move_wire::BATCH_BYTES`] (or one message) a batch;
//! the target refuses a batch past [`BATCH_BYTES_MAX`].

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use super::shard::ShardContext;
use crate::cluster::move_wire::{self, Answer, Batch, FrameError, Request};
use crate::envelope::{Envelope, Origin, QueueId};
use crate::logsafe::Safe;
use crate::mailbox::ChangeError;
use crate::net::io::Connection;
use crate::spool::state::{Placement, StateOp};
use crate::spool::NewMessage;

/// Body octets one batch may announce (the source sends at most an eighth of it, or one
/// message).
pub const BATCH_BYTES_MAX: u64 = 64 << 20;
/// The origin protocol of an imported message (its HELO holds `node:queue-id uidl`:
/// [`Origin::moved`]).
pub const PROTOCOL: &str = Origin::MOVED;

/// Why a conversation ended early.
#[derive(Debug, thiserror::Error)]
enum MoveInError {
    #[error("connection: {0}")]
    Io(std::io::Error),
    #[error("connection closed")]
    Closed,
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// Reads exactly `n` octets (buffered input first).
async fn read_exact<C: Connection>(
    conn: &C,
    buf: &mut Vec<u8>,
    n: usize,
) -> Result<Vec<u8>, MoveInError> {
    while buf.len() < n {
        let want = (n - buf.len()).clamp(16 * 1024, 1 << 20);
        if buf.capacity() - buf.len() < want {
            buf.reserve(want);
        }
        let (res, b) = conn.read_into(std::mem::take(buf)).await;
        *buf = b;
        match res {
            Ok(0) => return Err(MoveInError::Closed),
            Ok(_) => {}
            Err(e) => return Err(MoveInError::Io(e)),
        }
    }
    let rest = buf.split_off(n);
    Ok(std::mem::replace(buf, rest))
}

async fn read_frame<C: Connection>(conn: &C, buf: &mut Vec<u8>) -> Result<Request, MoveInError> {
    let head = read_exact(conn, buf, 4).await?;
    let n = move_wire::frame_len([head[0], head[1], head[2], head[3]])?;
    let json = read_exact(conn, buf, n).await?;
    Ok(move_wire::decode(&json)?)
}

async fn send<C: Connection>(conn: &C, answer: &Answer) -> bool {
    conn.write_all(move_wire::encode(answer)).await.0.is_ok()
}

/// Why this node does not take `user` (None: it does).
fn refusal(ctx: &ShardContext, user: &str) -> Option<String> {
    let directory = ctx.auth.directory.current();
    let node = ctx.cluster.as_ref().map(|c| c.node.as_str()).unwrap_or("");
    match directory.user(user) {
        None => Some(format!("{} is not in this node's directory", Safe(user))),
        Some(u) if u.home.as_deref() == Some(node) => {
            Some(format!("{} is homed on this node already", Safe(user)))
        }
        Some(_) => None,
    }
}

/// Serves one move conversation (after its TLS handshake) until `Bye`, EOF or an error.
pub async fn serve<C: Connection>(conn: &C, ctx: &ShardContext, peer: SocketAddr) {
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut session: Option<(String, String)> = None;
    loop {
        let request = match read_frame(conn, &mut buf).await {
            Ok(r) => r,
            Err(MoveInError::Closed) => return,
            Err(error) => {
                tracing::warn!(target: "relay::cluster", client = %peer, %error, "user move conversation ended");
                return;
            }
        };
        let answer = match request {
            Request::Bye => {
                conn.finish().await;
                return;
            }
            Request::Hello { from, user } => match refusal(ctx, &user) {
                Some(reason) => Answer::Refused { reason },
                None => {
                    let store = ctx.mail_store.folders().with(&user, |s| s.export());
                    tracing::info!(target: "relay::cluster", client = %peer, from = %Safe(&from), user = %Safe(&user), messages = store.folders.iter().map(|f| f.messages.len()).sum::<usize>(), "user move: state asked");
                    session = Some((from, user));
                    Answer::State { store }
                }
            },
            Request::Apply { batch } => {
                let Some((from, user)) = session.as_ref() else {
                    return;
                };
                if let Some(reason) = refusal(ctx, user) {
                    // The bodies that follow are not read: the conversation ends.
                    let _ = send(conn, &Answer::Refused { reason }).await;
                    return;
                }
                match apply(conn, &mut buf, ctx, from, user, &batch).await {
                    Ok(messages) => Answer::Applied { messages },
                    Err(Failed::Conversation(error)) => {
                        tracing::warn!(target: "relay::cluster", client = %peer, %error, "user move conversation ended");
                        return;
                    }
                    Err(Failed::Store(reason)) => {
                        tracing::warn!(target: "relay::cluster", client = %peer, user = %Safe(user), reason = %Safe(&reason), "user move batch not stored");
                        let _ = send(conn, &Answer::Refused { reason }).await;
                        return;
                    }
                }
            }
        };
        if !send(conn, &answer).await {
            return;
        }
    }
}

enum Failed {
    Conversation(MoveInError),
    Store(String),
}

impl From<ChangeError> for Failed {
    fn from(e: ChangeError) -> Self {
        Failed::Store(e.to_string())
    }
}

/// One state record of `ops` for `user`, durable and applied.
async fn record(ctx: &ShardContext, user: &str, ops: Vec<StateOp>) -> Result<(), Failed> {
    if ops.is_empty() {
        return Ok(());
    }
    ctx.mail_store
        .change_moving(&ctx.spool, user, |s| Ok((Some(s.import_record(ops)), ())))
        .await?;
    Ok(())
}

/// Stores one batch (module doc); the messages it placed.
async fn apply<C: Connection>(
    conn: &C,
    buf: &mut Vec<u8>,
    ctx: &ShardContext,
    from: &str,
    user: &str,
    batch: &Batch,
) -> Result<u64, Failed> {
    let announced: u64 = batch
        .imports
        .iter()
        .map(|i| i.size.saturating_add(u64::from(i.summary_len)))
        .fold(0, u64::saturating_add);
    if announced > BATCH_BYTES_MAX && batch.imports.len() > 1 {
        return Err(Failed::Store(format!(
            "a batch of {announced} octets is over {BATCH_BYTES_MAX}"
        )));
    }
    record(
        ctx,
        user,
        batch.folders.iter().map(|op| op.to_op()).collect(),
    )
    .await?;
    let mut placed = 0u64;
    let mut copies: Vec<StateOp> = Vec::new();
    let mut pending = Vec::with_capacity(batch.imports.len());
    for import in &batch.imports {
        let size = usize::try_from(import.size).unwrap_or(usize::MAX);
        if import.size > ctx.session_config.message_size_max.max(BATCH_BYTES_MAX) {
            return Err(Failed::Store(format!(
                "a message of {} octets",
                import.size
            )));
        }
        let body = read_exact(conn, buf, size)
            .await
            .map_err(Failed::Conversation)?;
        let summary = read_exact(conn, buf, import.summary_len as usize)
            .await
            .map_err(Failed::Conversation)?;
        let placements: Vec<Placement> = import.placements.iter().map(Placement::from).collect();
        let Some(first) = placements.first().cloned() else {
            continue;
        };
        let summary = if summary.is_empty() {
            crate::imap::structure::Summary::encoded(&[], &body)
        } else {
            Some(summary)
        };
        let uidl = import.uidl();
        let now = SystemTime::now();
        let id = ctx.spool.next_id(now);
        let new = NewMessage {
            id,
            arrival_unix_micros: now
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
            origin: Origin::moved(from, QueueId(import.source), uidl.as_str()),
            envelope: Envelope::default(),
            received_header: Vec::new(),
            body,
            mailboxes: vec![user.to_string()],
            remote: Vec::new(),
            placements: vec![Some(first.clone())],
        };
        let receiver = ctx
            .spool
            .append_message_with_summary(new, summary)
            .map_err(|e| Failed::Store(e.to_string()))?;
        for p in &placements[1..] {
            copies.push(StateOp::Place {
                id,
                placement: p.clone(),
            });
        }
        placed += placements.len() as u64;
        pending.push((id, first, uidl, receiver));
    }
    // Every frame of the batch rides the same group commits; each lands once durable.
    let mut failed = None;
    for (id, first, uidl, receiver) in pending {
        match receiver.await {
            Ok(Ok(committed)) => {
                ctx.mail_store
                    .imported(user, id, committed.location.body_len, &first, uidl.as_str())
                    .await;
            }
            Ok(Err(e)) => {
                failed.get_or_insert(e.to_string());
            }
            Err(_) => {
                failed.get_or_insert("the spool stopped".to_string());
            }
        }
    }
    if let Some(reason) = failed {
        return Err(Failed::Store(reason));
    }
    for (id, p) in &batch.copies {
        copies.push(StateOp::Place {
            id: QueueId(*id),
            placement: Placement::from(p),
        });
    }
    placed += batch.copies.len() as u64;
    record(ctx, user, copies).await?;
    record(ctx, user, batch.fixes.iter().map(|op| op.to_op()).collect()).await?;
    Ok(placed)
}
