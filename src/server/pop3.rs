//! One POP3 connection: moves bytes between the socket and the sans-IO [`crate::pop3::Session`],
//! and answers its events: credentials (checked by [`super::auth`]), the maildrop lock,
//! message bytes from the spool, durable deletions.
//!
//! A maildrop is the user's INBOX in the mail store: RETR reads the stored body bytes
//! straight from the segment into the output buffer, after the status line (one read on the
//! shard's ring, or on the reader pool under epoll: never a blocking read on the shard's
//! thread; no record decoding, no buffer of its own), where the session stuffs them in place; QUIT's
//! deletions are an INBOX expunge, appended to the spool log and fsynced before the `+OK`.
//! The output buffer is kept between writes up to [`OUTPUT_RETAINED`], so a run of pipelined
//! RETRs does not grow a new one (and copy it while it grows) for every write.
//!
//! Timeouts follow RFC 1939 §3: an idle session is closed without entering UPDATE, so
//! nothing is deleted. `pop3.idle_timeout` (the RFC's autologout timer, at least 10 minutes)
//! runs from when the relay starts waiting for a command; bytes arriving do not restart it,
//! only a complete command does. Once part of a line has arrived, the rest must follow within
//! `pop3.command_timeout`: a client trickling a line a byte at a time is not idle, and
//! holding a slot for ten minutes per 255-octet line is what a slow-client attack wants.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::admission::Permit;
use super::auth::Denied;
use super::login_proxy;
use super::shard::Protocol;
use super::shard::ShardContext;
use super::starttls::{self, DriveEnd, Upgradable, Wire};
use crate::envelope::QueueId;
use crate::mailbox::MaildropLock;
use crate::net::conn::{
    compact, flush, read_more, stop_requested, within, Expired, Expiry, Read, GOODBYE_WRITE_LIMIT,
};
use crate::net::io::Connection;
use crate::net::tls::TlsSummary;
use crate::pop3::{Event, LockResult, MaildropEntry, NotStored, Outbox, Session, Unavailable};

/// Serves one accepted POP3 connection until it ends. `_permit` holds the admission slots;
/// `input` is what the client sent before the session started (bytes that followed a PROXY
/// header), taken as its first input. On an implicit-TLS listener (`implicit_tls`, POP3S) the
/// handshake comes first and `input` is the start of it.
pub async fn serve<C: Connection>(
    conn: C,
    peer: SocketAddr,
    ctx: Rc<ShardContext>,
    _permit: Permit,
    input: Vec<u8>,
    implicit_tls: bool,
) {
    let _open = ctx.metrics.pop3.opened();
    let mut out = Outbox::default();
    let nonce = format!(
        "{}.{}",
        std::process::id(),
        rand_core::RngCore::next_u64(&mut rand_core::OsRng)
    );
    // The greeting waits in `out` until the first flush (after the handshake on TLS).
    let mut session = Session::new(ctx.pop3.config.clone(), &nonce, &mut out);
    // Loopback is trusted with passwords in clear (Dovecot's rule too); everyone else must
    // STLS first unless the operator allows it.
    if !ctx.pop3.allow_plaintext_auth && !peer.ip().to_canonical().is_loopback() {
        session.refuse_plaintext_auth();
    }
    let mut link = Link {
        phase: ctx.phase.clone(),
        wire: Wire::new(ctx, peer),
        out,
        session,
        maildrop: None,
        deadlines: Deadlines::default(),
    };
    starttls::serve(&mut link, conn, input, implicit_tls).await;
}

/// Locks `user`'s maildrop for a session of `peer`: the lock and the session's answer.
fn lock_maildrop(
    ctx: &ShardContext,
    peer: SocketAddr,
    user: &str,
) -> (Option<MaildropLock>, LockResult) {
    match ctx.mail_store.lock(user) {
        Ok(lock) => {
            let entries = lock
                .entries
                .iter()
                .map(|e| MaildropEntry {
                    uid: e.uidl.clone(),
                    size: e.size,
                })
                .collect();
            tracing::info!(target: "relay::pop3", client = %peer.ip(), user = %user, messages = lock.entries.len(), "login");
            ctx.metrics.pop3_sessions.inc();
            (Some(lock), LockResult::Locked(entries))
        }
        Err(_) => (None, LockResult::InUse),
    }
}

/// Serves a POP3 client that logged in on another node (a proxied login,
/// [`super::login_in`]) over `conn`, the cluster connection from that node: `user`'s maildrop
/// is locked, `accepted` is called with the login's answer text (`Err`: the maildrop is in
/// use; nothing more happens), and the session runs in TRANSACTION until it ends. `client`
/// is the client's own address (for the log); `input` is what the node sent after its
/// request.
pub async fn serve_preauthenticated<C: Connection>(
    conn: &C,
    client: SocketAddr,
    ctx: Rc<ShardContext>,
    user: String,
    input: Vec<u8>,
    accepted: impl AsyncFnOnce(Result<String, LockResult>) -> bool,
) {
    let _open = ctx.metrics.pop3.opened();
    let mut out = Outbox::default();
    let mut session = Session::preauthenticated(ctx.pop3.config.clone(), user, true, &mut out);
    let mut maildrop = None;
    for event in std::mem::take(&mut out.events) {
        if let Event::Lock { user } = event {
            let (lock, result) = lock_maildrop(&ctx, client, &user);
            maildrop = lock;
            let refused = match &result {
                LockResult::Locked(_) => None,
                LockResult::InUse => Some(LockResult::InUse),
                LockResult::Unavailable => Some(LockResult::Unavailable),
            };
            session.locked(result, &mut out);
            if let Some(refused) = refused {
                accepted(Err(refused)).await;
                return;
            }
        }
    }
    // The login's answer, `+OK text`: the front node writes it to the client.
    let line = std::mem::take(&mut out.bytes);
    let text = String::from_utf8_lossy(&line);
    let text = text
        .trim_end()
        .strip_prefix("+OK")
        .unwrap_or("")
        .trim_start();
    if maildrop.is_none() || !accepted(Ok(text.to_string())).await {
        return;
    }
    let mut link = Link {
        phase: ctx.phase.clone(),
        wire: Wire::new(ctx, client),
        out,
        session,
        maildrop,
        deadlines: Deadlines::default(),
    };
    link.wire.set_input(input);
    let _ = link.drive(conn).await;
}

/// One connection's protocol state, kept across the switch to TLS.
struct Link {
    wire: Wire,
    phase: tokio::sync::watch::Receiver<crate::runtime::Phase>,
    out: Outbox,
    session: Session,
    /// Held for the whole TRANSACTION state; dropping it (however the session ends) unlocks.
    maildrop: Option<MaildropLock>,
    deadlines: Deadlines,
}

impl Upgradable for Link {
    const PROTOCOL: Protocol = Protocol::Pop3;

    fn wire(&mut self) -> &mut Wire {
        &mut self.wire
    }

    fn secured(&mut self, _summary: &TlsSummary) {
        self.session.tls_established();
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
            maildrop,
            deadlines,
        } = self;
        let ctx: &ShardContext = ctx;
        let peer = *peer;
        loop {
            let mut progressed = false;
            if *consumed < input.len() && session.wants_input() {
                let n = session.handle_input(&input[*consumed..], out);
                *consumed += n;
                progressed = n > 0;
                if progressed {
                    *deadlines = Deadlines::default();
                }
            }
            let events = std::mem::take(&mut out.events);
            for event in events {
                progressed = true;
                match event {
                    Event::Authenticate(credentials) => {
                        // A failure is answered after `pop3.auth_failure_delay`.
                        let proof = credentials.into();
                        // Boxed, as the other rare waits here: an idle session's task carries
                        // none of their state.
                        let check = Box::pin(ctx.auth.check(Protocol::Pop3, peer.ip(), proof));
                        let user = tokio::select! {
                            biased;
                            user = check => user,
                            // A client gone while its check is queued: the check is
                            // dropped with it (the pool skips it).
                            _ = conn.peer_closed() => {
                                conn.shutdown();
                                return DriveEnd::Closed;
                            }
                        };
                        let home = match (&user, &ctx.login_proxy) {
                            (Ok(user), Some(proxy)) => proxy
                                .home_elsewhere(&ctx.auth.directory.current(), user)
                                .map(|home| (user.clone(), home)),
                            _ => None,
                        };
                        if let Some((user, home)) = home {
                            let proxied = login_proxy::Session {
                                ctx,
                                peer,
                                home,
                                user: &user,
                                pending: &mut out.bytes,
                                input: &input[*consumed..],
                            };
                            match Box::pin(login_proxy::pop3(conn, proxied)).await {
                                login_proxy::Proxied::Done => return DriveEnd::Closed,
                                login_proxy::Proxied::Refused(reason) => {
                                    session.login_refused(login_proxy::pop3_code(reason), out);
                                    continue;
                                }
                            }
                        }
                        match user {
                            Err(Denied::Busy) => session.authentication_unavailable(out),
                            user => session.authenticated(user.ok(), out),
                        }
                    }
                    Event::Lock { user } => {
                        let (lock, result) = lock_maildrop(ctx, peer, &user);
                        *maildrop = lock;
                        session.locked(result, out);
                    }
                    Event::Retrieve { index, top_lines } => {
                        let id = maildrop
                            .as_ref()
                            .and_then(|lock| lock.entries.get(index))
                            .map(|entry| entry.id);
                        // The status line goes in first; the body is read after it, off the
                        // shard's thread (the ring or the reader pool), into the same buffer.
                        if let Some(retrieval) = session.retrieval_start(out) {
                            let read = match id {
                                None => Err(Unavailable),
                                Some(id) => {
                                    let at = out.bytes.len();
                                    let buf = std::mem::take(&mut out.bytes);
                                    let (read, buf) =
                                        ctx.store.read_body_async(&ctx.reads, id, buf, at).await;
                                    out.bytes = buf;
                                    match read {
                                        Ok(()) => {
                                            if top_lines.is_none() {
                                                ctx.metrics.pop3_retrievals.inc();
                                            }
                                            Ok(())
                                        }
                                        Err(error) => {
                                            tracing::warn!(target: "relay::pop3", %error, "cannot read a message");
                                            Err(Unavailable)
                                        }
                                    }
                                }
                            };
                            session.retrieval_end(out, retrieval, read);
                        }
                    }
                    Event::Update { deleted } => {
                        let result = match &maildrop {
                            Some(lock) => Box::pin(delete(ctx, lock, &deleted)).await,
                            None => Err(NotStored),
                        };
                        session.updated(result, out);
                    }
                    Event::Close(reason) => {
                        // Unlock before the goodbye goes out: a client that reconnects as soon
                        // as it reads +OK must find its maildrop free.
                        drop(maildrop.take());
                        ctx.metrics.pop3.bytes_sent.inc_by(out.bytes.len() as u64);
                        let _ = flush(conn, &mut out.bytes, GOODBYE_WRITE_LIMIT).await;
                        let _ = within(conn, GOODBYE_WRITE_LIMIT, conn.finish()).await;
                        conn.shutdown();
                        tracing::debug!(client = %peer, ?reason, "pop3 closed");
                        return DriveEnd::Closed;
                    }
                    Event::StartTls => {
                        ctx.metrics.pop3.bytes_sent.inc_by(out.bytes.len() as u64);
                        // As after SMTP's STARTTLS: nothing pipelined behind STLS may
                        // reach TLS.
                        let limit = ctx.pop3.idle_timeout;
                        return Box::pin(starttls::hand_over(
                            conn,
                            &mut out.bytes,
                            limit,
                            input,
                            consumed,
                            peer,
                            "STLS",
                        ))
                        .await;
                    }
                }
            }
            if progressed
                && out.bytes.len() < OUTPUT_HIGH_WATER
                && (*consumed < input.len() || !out.events.is_empty())
            {
                continue;
            }
            ctx.metrics.pop3.bytes_sent.inc_by(out.bytes.len() as u64);
            if send(conn, &mut out.bytes, ctx.pop3.idle_timeout)
                .await
                .is_err()
            {
                conn.shutdown();
                return DriveEnd::Closed;
            }
            if progressed && *consumed < input.len() {
                // Written because the answers reached the high-water mark: the commands
                // still buffered go on without waiting for more input.
                continue;
            }
            let partial = *consumed < input.len();
            compact(input, consumed, true);
            let deadline = deadlines.next(
                partial,
                Instant::now(),
                ctx.pop3.idle_timeout,
                ctx.pop3.command_timeout,
            );
            let (read, buffer) = read_more(
                conn,
                std::mem::take(input),
                deadline.into(),
                stop_requested(phase, false),
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
            match read {
                Read::Data(n) => {
                    ctx.metrics.pop3.bytes_received.inc_by(n as u64);
                }
                // A dropped connection never enters UPDATE: nothing is deleted.
                _ => return DriveEnd::Closed,
            }
        }
    }
}

/// Answers buffered before they are written, although pipelined commands remain: each RETR
/// appends a whole message, so a pipelined run of them (one read of `RETR 1` × 2,000) would
/// otherwise hold that many copies in memory.
const OUTPUT_HIGH_WATER: usize = 256 * 1024;

/// The output buffer capacity kept after a write: a pipelined run of RETRs fills it to
/// [`OUTPUT_HIGH_WATER`] plus one message, write after write. Larger (a message of a megabyte
/// or more) is given back after its write.
const OUTPUT_RETAINED: usize = 2 * OUTPUT_HIGH_WATER;

/// Writes `bytes` within `limit` and leaves `bytes` empty, its allocation kept up to
/// [`OUTPUT_RETAINED`] (`net::conn::flush` keeps a reply-sized one only).
async fn send<C: Connection>(
    conn: &C,
    bytes: &mut Vec<u8>,
    limit: Duration,
) -> Result<(), Expired> {
    if bytes.is_empty() {
        return Ok(());
    }
    let pending = std::mem::take(bytes);
    match within(conn, limit, conn.write_all(pending)).await {
        Ok((Ok(()), mut buffer)) => {
            if buffer.capacity() <= OUTPUT_RETAINED {
                buffer.clear();
                *bytes = buffer;
            }
            Ok(())
        }
        _ => Err(Expired),
    }
}

/// When the wait for a command must end (see the module doc); reset when one is taken.
/// IMAP's driver keeps the same two timers.
#[derive(Default)]
pub(super) struct Deadlines {
    idle: Option<Instant>,
    /// Set once part of a line is buffered.
    line: Option<Instant>,
}

impl Deadlines {
    pub(super) fn next(
        &mut self,
        partial: bool,
        now: Instant,
        idle: Duration,
        line: Duration,
    ) -> Instant {
        let idle = *self.idle.get_or_insert(now + idle);
        if !partial {
            return idle;
        }
        idle.min(*self.line.get_or_insert(now + line))
    }
}

/// Makes the session's deletions durable: an INBOX expunge in the mail store (the bodies
/// no other folder holds are released), fsynced before the session may answer +OK. IMAP
/// sessions with INBOX selected hear of it through the store's change signal.
async fn delete(
    ctx: &ShardContext,
    lock: &MaildropLock,
    deleted: &[usize],
) -> Result<(), NotStored> {
    let ids: Vec<QueueId> = deleted
        .iter()
        .filter_map(|&i| lock.entries.get(i).map(|e| e.id))
        .collect();
    let made = ctx
        .mail_store
        .change(&ctx.spool, lock.mailbox(), |s| {
            Ok((s.pop3_delete(&ids)?, ()))
        })
        .await;
    match made {
        Ok(()) => {
            tracing::info!(target: "relay::pop3", user = %lock.mailbox(), deleted = ids.len(), "update");
            Ok(())
        }
        Err(error) => {
            tracing::warn!(target: "relay::pop3", %error, "deletions not stored");
            Err(NotStored)
        }
    }
}
