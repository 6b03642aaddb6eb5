//! One IMAP connection: moves bytes between the socket and the sans-IO
//! [`crate::imap::Session`], and answers its events: credentials (checked by [`super::auth`]),
//! STARTTLS, and store requests ([`super::imap_store`]), whose writes are durable before the
//! session's tagged OK.
//!
//! IDLE: while the session idles, the read stays armed and the user's change signal (bumped
//! by every delivery and change of the user's, on any core) is awaited beside it; a change
//! asks the session to poll, and its untagged responses are written while the read is still
//! pending, so another session's EXPUNGE or a new delivery shows at once, without polling
//! the log.
//!
//! Timers: `imap.idle_timeout` (RFC 9051's autologout, at least 30 minutes) runs while the
//! relay waits for a command, IDLE included; once part of a command has arrived, the rest
//! must follow within `imap.command_timeout`.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use tokio::sync::watch;

use super::admission::Permit;
use super::imap_store::UserStoreLink;
use super::login_proxy;
use super::pop3::Deadlines;
use super::shard::{Protocol, ShardContext};
use super::starttls::{self, DriveEnd, Upgradable, Wire};
use crate::imap::store::{Answer, Request, StoreError};
use crate::imap::{Event, Outbox, Session};
use crate::net::conn::{
    compact, flush, read_more, stop_requested, within, Expiry, Read, GOODBYE_WRITE_LIMIT,
    READ_CHUNK,
};
use crate::net::io::Connection;
use crate::net::tls::TlsSummary;

/// Serves one accepted IMAP connection until it ends (see [`super::pop3::serve`] for the
/// arguments).
pub async fn serve<C: Connection>(
    conn: C,
    peer: SocketAddr,
    ctx: Rc<ShardContext>,
    _permit: Permit,
    input: Vec<u8>,
    implicit_tls: bool,
) {
    let _open = ctx.metrics.imap.opened();
    let mut out = Outbox::default();
    // Loopback is trusted with passwords in clear (as for POP3); everyone else must
    // STARTTLS first unless the operator allows it.
    let config = if ctx.imap.allow_plaintext_auth || peer.ip().to_canonical().is_loopback() {
        std::sync::Arc::clone(&ctx.imap.plaintext)
    } else {
        std::sync::Arc::clone(&ctx.imap.config)
    };
    let session = Session::new(std::sync::Arc::clone(&config), implicit_tls, &mut out);
    let mut link = Link {
        phase: ctx.phase.clone(),
        wire: Wire::new(ctx, peer),
        out,
        session,
        store: None,
        changes: None,
        deadlines: Deadlines::default(),
        spare_events: Vec::new(),
    };
    starttls::serve(&mut link, conn, input, implicit_tls).await;
}

/// Serves an IMAP client that logged in on another node (a proxied login,
/// [`super::login_in`]) over `conn`, the cluster connection from that node: the session
/// starts authenticated as `user` (no greeting; the user's store and change signal as after
/// a login here), `accepted` is called with its post-login capabilities (the front node
/// answers the client's login with them; `false`: it could not be told, nothing more
/// happens), then the session runs until it ends. `client` is the client's own address;
/// `input` is what the node sent after its request.
pub async fn serve_preauthenticated<C: Connection>(
    conn: &C,
    client: SocketAddr,
    ctx: Rc<ShardContext>,
    user: String,
    input: Vec<u8>,
    accepted: impl AsyncFnOnce(String) -> bool,
) {
    let _open = ctx.metrics.imap.opened();
    let session = Session::preauthenticated(std::sync::Arc::clone(&ctx.imap.config), true);
    let capabilities = session.capabilities();
    let mut link = Link {
        phase: ctx.phase.clone(),
        wire: Wire::new(Rc::clone(&ctx), client),
        out: Outbox::default(),
        session,
        store: None,
        changes: None,
        deadlines: Deadlines::default(),
        spare_events: Vec::new(),
    };
    link.logged_in(&ctx, &user).await;
    if !accepted(capabilities).await {
        return;
    }
    link.wire.set_input(input);
    let _ = link.drive(conn).await;
}

/// One connection's protocol state, kept across the switch to TLS.
struct Link {
    wire: Wire,
    phase: watch::Receiver<crate::runtime::Phase>,
    out: Outbox,
    session: Session,
    /// Once logged in: the user's store.
    store: Option<UserStoreLink>,
    /// Once logged in: the user's change signal.
    changes: Option<watch::Receiver<u64>>,
    deadlines: Deadlines,
    /// The event list's allocation, swapped with the session's while its events are
    /// answered (a FETCH asks for each body in an event of its own).
    spare_events: Vec<crate::imap::Event>,
}

impl Upgradable for Link {
    const PROTOCOL: Protocol = Protocol::Imap;

    fn wire(&mut self) -> &mut Wire {
        &mut self.wire
    }

    fn secured(&mut self, _summary: &TlsSummary) {
        // The session refuses STARTTLS unless it asked for it: nothing else can fail here.
        let _ = self.session.tls_established();
    }

    async fn drive<C: Connection>(&mut self, conn: &C) -> DriveEnd {
        let ctx = Rc::clone(&self.wire.ctx);
        let peer = self.wire.peer;
        loop {
            let mut progressed = false;
            if self.wire.consumed < self.wire.input.len()
                && !self.session.awaiting()
                && !self.session.is_closed()
            {
                let n = self
                    .session
                    .feed(&self.wire.input[self.wire.consumed..], &mut self.out);
                self.wire.consumed += n;
                if n > 0 {
                    progressed = true;
                    self.deadlines = Deadlines::default();
                }
            }
            while !self.out.events.is_empty() {
                progressed = true;
                let mut events =
                    std::mem::replace(&mut self.out.events, std::mem::take(&mut self.spare_events));
                for event in events.drain(..) {
                    if let Some(end) = self.event(&ctx, conn, peer, event).await {
                        return end;
                    }
                    // A FETCH of many bodies is written as it goes: the answers buffered
                    // stay bounded whatever the range.
                    if self.out.bytes.len() >= OUTPUT_HIGH_WATER
                        && self.write_out(&ctx, conn).await.is_err()
                    {
                        conn.shutdown();
                        return DriveEnd::Closed;
                    }
                }
                self.spare_events = events;
            }
            if progressed
                && self.out.bytes.len() < OUTPUT_HIGH_WATER
                && self.wire.consumed < self.wire.input.len()
                && !self.session.awaiting()
            {
                continue;
            }
            if self.write_out(&ctx, conn).await.is_err() {
                conn.shutdown();
                return DriveEnd::Closed;
            }
            if progressed && self.wire.consumed < self.wire.input.len() {
                continue;
            }
            if let Some(end) = self.wait(&ctx, conn).await {
                return end;
            }
        }
    }
}

/// Answers buffered before they are written, although commands remain or a FETCH of many
/// bodies goes on: the bound on a connection's buffered output (plus one message).
const OUTPUT_HIGH_WATER: usize = 256 * 1024;

/// The output buffer's allocation is kept from write to write up to this size while the
/// connection is busy (a FETCH of many bodies does not grow a new one each time), and
/// dropped when it waits for a command.
const OUTPUT_KEEP: usize = 2 * OUTPUT_HIGH_WATER;

impl Link {
    /// Writes the buffered answers in one write, keeping the buffer's allocation (up to
    /// [`OUTPUT_KEEP`]) for the next ones.
    async fn write_out<C: Connection>(
        &mut self,
        ctx: &ShardContext,
        conn: &C,
    ) -> Result<(), crate::net::conn::Expired> {
        if self.out.bytes.is_empty() {
            return Ok(());
        }
        ctx.metrics
            .imap
            .bytes_sent
            .inc_by(self.out.bytes.len() as u64);
        let pending = std::mem::take(&mut self.out.bytes);
        match within(conn, ctx.imap.idle_timeout, conn.write_all(pending)).await {
            Ok((Ok(()), mut buffer)) => {
                buffer.clear();
                if buffer.capacity() <= OUTPUT_KEEP {
                    self.out.bytes = buffer;
                }
                Ok(())
            }
            _ => Err(crate::net::conn::Expired),
        }
    }

    /// Drops what only a busy connection needs before it waits for a command: the kept
    /// output and body buffers (an idle session stays small).
    fn release_buffers(&mut self) {
        if self.out.bytes.is_empty() && self.out.bytes.capacity() > READ_CHUNK {
            self.out.bytes = Vec::new();
        }
        self.out.body_buffer = None;
        if let Some(store) = self.store.as_mut() {
            store.release();
        }
        self.spare_events = Vec::new();
    }
}

impl Link {
    /// Answers one session event; `Some` when the drive ends.
    async fn event<C: Connection>(
        &mut self,
        ctx: &ShardContext,
        conn: &C,
        peer: SocketAddr,
        event: Event,
    ) -> Option<DriveEnd> {
        match event {
            Event::Authenticate(credentials) => {
                let proof = credentials.into();
                // Boxed, as every rare wait here: a connection's future is as large as its
                // largest wait, and an idle session should only pay for its read.
                let check = Box::pin(ctx.auth.check(Protocol::Imap, peer.ip(), proof));
                let user = tokio::select! {
                    biased;
                    user = check => user,
                    _ = conn.peer_closed() => {
                        conn.shutdown();
                        return Some(DriveEnd::Closed);
                    }
                };
                let home = match (&user, &ctx.login_proxy) {
                    (Ok(user), Some(proxy)) => proxy
                        .home_elsewhere(&ctx.auth.directory.current(), user)
                        .map(|home| (user.clone(), home)),
                    _ => None,
                };
                if let Some((user, home)) = home {
                    return Box::pin(self.proxy(ctx, conn, peer, &user, home)).await;
                }
                // Busy and locked are failures to the client too (the session's NO).
                let user = user.ok();
                if let Some(user) = &user {
                    Box::pin(self.logged_in(ctx, user)).await;
                }
                let _ = self.session.authenticated(user.is_some(), &mut self.out);
            }
            Event::StartTls => {
                ctx.metrics
                    .imap
                    .bytes_sent
                    .inc_by(self.out.bytes.len() as u64);
                let Wire {
                    input, consumed, ..
                } = &mut self.wire;
                return Some(
                    Box::pin(starttls::hand_over(
                        conn,
                        &mut self.out.bytes,
                        ctx.imap.idle_timeout,
                        input,
                        consumed,
                        peer,
                        "STARTTLS",
                    ))
                    .await,
                );
            }
            Event::Store(request) => {
                let answer = match self.store.as_mut() {
                    Some(store) => {
                        if let Some(changes) = self.changes.as_mut() {
                            // What the answer shows is seen; later changes wake IDLE.
                            changes.borrow_and_update();
                        }
                        Box::pin(store.serve(ctx, request)).await
                    }
                    None => unavailable(&request),
                };
                let _ = self.session.answer(answer, &mut self.out);
                if let (Some(buffer), Some(store)) =
                    (self.out.body_buffer.take(), self.store.as_mut())
                {
                    store.recycle(buffer);
                }
            }
            Event::Close(reason) => {
                ctx.metrics
                    .imap
                    .bytes_sent
                    .inc_by(self.out.bytes.len() as u64);
                let _ = Box::pin(flush(conn, &mut self.out.bytes, GOODBYE_WRITE_LIMIT)).await;
                let _ = Box::pin(within(conn, GOODBYE_WRITE_LIMIT, conn.finish())).await;
                conn.shutdown();
                tracing::debug!(client = %peer, ?reason, "imap closed");
                return Some(DriveEnd::Closed);
            }
        }
        None
    }

    /// A login of a user homed on another node, proxied there; `Some` when the connection
    /// is over, `None` after a refusal (the session goes on).
    async fn proxy<C: Connection>(
        &mut self,
        ctx: &ShardContext,
        conn: &C,
        peer: SocketAddr,
        user: &str,
        home: login_proxy::Home,
    ) -> Option<DriveEnd> {
        if let Some(tag) = self.session.login_tag().map(str::to_owned) {
            let proxied = login_proxy::Session {
                ctx,
                peer,
                home,
                user,
                pending: &mut self.out.bytes,
                input: &self.wire.input[self.wire.consumed..],
            };
            match login_proxy::imap(conn, proxied, &tag).await {
                login_proxy::Proxied::Done => return Some(DriveEnd::Closed),
                login_proxy::Proxied::Refused(reason) => {
                    let why = login_proxy::imap_refusal(reason);
                    let _ = self.session.login_refused(why, &mut self.out);
                    return None;
                }
            }
        }
        let _ = self.session.authentication_unavailable(&mut self.out);
        None
    }

    /// After a successful login: the user's store, the special-use folders on first login,
    /// and the change signal.
    async fn logged_in(&mut self, ctx: &ShardContext, user: &str) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
        let created = ctx
            .mail_store
            .change(&ctx.spool, user, |s| Ok((s.ensure_defaults(now), ())))
            .await;
        if let Err(error) = created {
            tracing::warn!(target: "relay::imap", user = %crate::logsafe::Safe(user), %error, "default folders not created");
        }
        tracing::info!(target: "relay::imap", client = %self.wire.peer.ip(), user = %crate::logsafe::Safe(user), "login");
        self.changes = Some(ctx.mail_store.watch(user));
        self.store = Some(UserStoreLink::new(user.to_string(), self.wire.peer));
    }

    /// Waits for more input (and, in IDLE, for changes of the user's folders); `Some` when
    /// the drive ends.
    async fn wait<C: Connection>(&mut self, ctx: &ShardContext, conn: &C) -> Option<DriveEnd> {
        self.release_buffers();
        let partial = self.wire.consumed < self.wire.input.len();
        compact(&mut self.wire.input, &mut self.wire.consumed, true);
        let deadline = self.deadlines.next(
            partial,
            Instant::now(),
            ctx.imap.idle_timeout,
            ctx.imap.command_timeout,
        );
        let idling = self.session.idling() && self.changes.is_some();
        let buffer = std::mem::take(&mut self.wire.input);
        let (read, buffer) = if idling {
            self.idle_read(ctx, conn, buffer, deadline).await
        } else {
            let Link {
                phase,
                session,
                out,
                ..
            } = self;
            read_more(
                conn,
                buffer,
                deadline.into(),
                stop_requested(phase, false),
                |expiry| {
                    goodbye(session, out, expiry);
                    std::mem::take(&mut out.bytes)
                },
            )
            .await
        };
        self.wire.input = buffer;
        match read {
            Read::Data(n) => {
                ctx.metrics.imap.bytes_received.inc_by(n as u64);
                None
            }
            _ => Some(DriveEnd::Closed),
        }
    }

    /// A read that stays armed while changes of the user's folders are written out (the
    /// io_uring rule: an armed read is never dropped; it completes or the connection is shut
    /// down and it is awaited).
    async fn idle_read<C: Connection>(
        &mut self,
        ctx: &ShardContext,
        conn: &C,
        buffer: Vec<u8>,
        deadline: Instant,
    ) -> (Read, Vec<u8>) {
        let read = conn.read_into(buffer);
        tokio::pin!(read);
        let mut stop = std::pin::pin!(stop_requested(&mut self.phase, false));
        let expiry = loop {
            tokio::select! {
                biased;
                (result, buf) = &mut read => {
                    let read = match result {
                        Ok(0) => Read::Closed,
                        Ok(n) => return (Read::Data(n), buf),
                        Err(error) => Read::Error(error),
                    };
                    conn.shutdown();
                    return (read, buf);
                }
                () = next_change(&mut self.changes) => {
                    self.session.poll(&mut self.out);
                    while !self.out.events.is_empty() {
                        for event in std::mem::take(&mut self.out.events) {
                            if let (Event::Store(request), Some(store)) = (event, self.store.as_mut()) {
                                if let Some(changes) = self.changes.as_mut() {
                                    changes.borrow_and_update();
                                }
                                let answer = Box::pin(store.serve(ctx, request)).await;
                                let _ = self.session.answer(answer, &mut self.out);
                                if let Some(buffer) = self.out.body_buffer.take() {
                                    store.recycle(buffer);
                                }
                            }
                        }
                    }
                    ctx.metrics.imap.bytes_sent.inc_by(self.out.bytes.len() as u64);
                    if Box::pin(flush(conn, &mut self.out.bytes, GOODBYE_WRITE_LIMIT)).await.is_err() {
                        break Expiry::Deadline;
                    }
                }
                _ = tokio::time::sleep_until(deadline.into()) => break Expiry::Deadline,
                _ = &mut stop => break Expiry::Stop,
            }
        };
        goodbye(&mut self.session, &mut self.out, expiry);
        let _ = flush(conn, &mut self.out.bytes, GOODBYE_WRITE_LIMIT).await;
        conn.shutdown();
        let (_, buf) = read.await;
        (Read::Expired(expiry), buf)
    }
}

/// Resolves at the user's next change; never, without a signal (its sender lives as long as
/// the store, so that is only at exit).
async fn next_change(changes: &mut Option<watch::Receiver<u64>>) {
    if let Some(receiver) = changes.as_mut() {
        if receiver.changed().await.is_ok() {
            return;
        }
    }
    *changes = None;
    std::future::pending::<()>().await;
}

/// The last words when the wait ends without input: BYE (RFC 9051 §7.1.5).
fn goodbye(session: &mut Session, out: &mut Outbox, expiry: Expiry) {
    match expiry {
        Expiry::Deadline => crate::imap::reply::status(
            &mut out.bytes,
            None,
            crate::imap::reply::Status::Bye,
            None,
            "Autologout; idle for too long",
        ),
        Expiry::Stop => session.shut_down(out),
    }
}

/// Before login the session asks nothing of the store; should it, the answer is "no".
pub(super) fn unavailable(request: &Request) -> Answer {
    let no = StoreError::Unavailable;
    match request {
        Request::List => Answer::List(Err(no)),
        Request::Status(_) => Answer::Status(Err(no)),
        Request::Select(_) => Answer::Select(Err(no)),
        Request::Changes { .. } => Answer::Changes(Err(no)),
        Request::Body { .. } => Answer::Body(Err(no)),
        Request::Summary { .. } => Answer::Summary(Err(no)),
        Request::StoreFlags { .. } => Answer::StoreFlags(Err(no)),
        Request::Copy { .. } => Answer::Copy(Err(no)),
        Request::Expunge { .. } => Answer::Expunge(Err(no)),
        Request::Append { .. } => Answer::Append(Err(no)),
        Request::ExpungedSince { .. } => Answer::ExpungedSince(Err(no)),
        Request::Quota => Answer::Quota(Err(no)),
        Request::Create(_)
        | Request::Delete(_)
        | Request::Rename { .. }
        | Request::Subscribe { .. } => Answer::Done(Err(no)),
    }
}
