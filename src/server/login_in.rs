//! The home side of a proxied login: a peer's cluster-listener connection that asked for
//! ALPN [`login_wire::ALPN`] (the conversation is in [`crate::cluster::login_wire`]).
//!
//! **Who is trusted.** The peer passed the listener's mutual TLS (its certificate chains to
//! the cluster CA): it is a node of the cluster, and it has checked the client's
//! credentials itself. No password comes, and none is hashed here.
//!
//! **What it refuses.** A request that is not one (over [`login_wire::REQUEST_MAX`], not
//! JSON, a bad user or node name: `bad_request` and the connection closes), not whole
//! within [`REQUEST_TIMEOUT`], any request once this node is draining or stopping
//! (`shutting_down`), for a user this node's directory does not know (`unknown_user`) or
//! homes on another node (`not_homed_here`: the directories disagree for a moment during a
//! move), or a POP3 maildrop in use (`in_use`). The answer names the reason
//! ([`login_wire::Refusal`], as the front node's conversation version knows it) and the
//! front node gives its client the matching response code (POP3 `[IN-USE]`, IMAP
//! `[INUSE]`, …: `server::login_proxy`). Each refusal is logged with the peer, the front
//! node's name and the client's address.
//!
//! **What runs.** The node's own POP3 or IMAP session and driver, started in the logged-in
//! state (`pop3::serve_preauthenticated`, `imap::serve_preauthenticated`), over this TLS
//! connection, with the client's address as its peer (for the log); its limits and
//! timeouts are the public listener's. For web mail, a session in this node's web server's
//! table, whose id is the answer (the front node hands the browser its cookie and forwards
//! the browser's requests here over the cluster listener's mutual TLS, ALPN
//! [`login_wire::WEB_ALPN`]: [`super::web_in`]).

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use tokio::time::Instant;

use super::shard::ShardContext;
use crate::cluster::login_wire::{self, Answer, FrameError, Protocol, Refusal, Request};
use crate::logsafe::Safe;
use crate::net::conn::{read_more, stop_requested, Read};
use crate::net::io::Connection;

/// The request must be whole within this of the handshake.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The answer must be written within this.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a request was not read.
#[derive(Debug, thiserror::Error)]
enum RequestError {
    #[error("connection closed before the request")]
    Closed,
    #[error("no request within {REQUEST_TIMEOUT:?}")]
    Timeout,
    #[error("connection: {0}")]
    Io(std::io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// Reads the request: the request and the bytes that followed it.
async fn read_request<C: Connection>(
    conn: &C,
    ctx: &ShardContext,
) -> Result<(Request, Vec<u8>), RequestError> {
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    let mut phase = ctx.phase.clone();
    let mut input = Vec::with_capacity(1024);
    loop {
        if let Some((request, used)) = login_wire::decode_request(&input)? {
            return Ok((request, input.split_off(used)));
        }
        if input.capacity() - input.len() < 512 {
            input.reserve(1024);
        }
        let (read, buffer) = read_more(
            conn,
            input,
            deadline,
            stop_requested(&mut phase, false),
            |_| Vec::new(),
        )
        .await;
        input = buffer;
        match read {
            Read::Data(_) => {}
            Read::Closed => return Err(RequestError::Closed),
            Read::Error(error) => return Err(RequestError::Io(error)),
            Read::Expired(_) => return Err(RequestError::Timeout),
        }
    }
}

/// Why this node does not serve `user` (None: it does).
fn refusal(ctx: &ShardContext, user: &str) -> Option<Refusal> {
    if *ctx.phase.borrow() != crate::runtime::Phase::Running {
        return Some(Refusal::ShuttingDown);
    }
    let directory = ctx.auth.directory.current();
    let node = ctx.cluster.as_ref().map(|c| c.node.as_str()).unwrap_or("");
    match directory.user(user) {
        None => Some(Refusal::UnknownUser),
        Some(u) if u.home.as_deref() != Some(node) => Some(Refusal::NotHomedHere),
        Some(_) => None,
    }
}

/// Writes `answer`; false when it could not be.
async fn answer<C: Connection>(conn: &C, answer: &Answer) -> bool {
    let frame = login_wire::encode(answer);
    matches!(
        crate::net::conn::within(conn, ANSWER_TIMEOUT, conn.write_all(frame)).await,
        Ok((Ok(()), _))
    )
}

/// Writes the answer that the session runs (module doc of [`login_wire`]); false when it
/// could not be written.
async fn accepted<C: Connection>(
    conn: &C,
    capabilities: Option<String>,
    text: String,
    session: Option<String>,
) -> bool {
    let accepted = Answer::Accepted {
        capabilities,
        text,
        session,
    };
    answer(conn, &accepted).await
}

/// Answers `reason` as a front node of conversation `version` reads it, and closes.
async fn send_refusal<C: Connection>(conn: &C, reason: Refusal, version: u32) {
    let refused = Answer::Refused {
        reason: reason.for_version(version),
    };
    if answer(conn, &refused).await {
        let _ = crate::net::conn::within(conn, ANSWER_TIMEOUT, conn.finish()).await;
    }
    conn.shutdown();
}

async fn refuse<C: Connection>(conn: &C, peer: SocketAddr, request: &Request, reason: Refusal) {
    tracing::warn!(target: "relay::cluster", peer = %peer.ip(), from = %Safe(&request.from), protocol = request.protocol.name(), user = %Safe(&request.user), client = %request.client.ip(), %reason, "proxied login refused");
    send_refusal(conn, reason, request.version).await;
}

/// A web-mail login: a session in this node's web server for the user (its default folders
/// made as at a login here), whose id is the answer.
async fn web<C: Connection>(conn: &C, ctx: &ShardContext, peer: SocketAddr, request: &Request) {
    let Some(sessions) = ctx.web_home.get().map(|web| &web.sessions) else {
        refuse(conn, peer, request, Refusal::Unavailable).await;
        return;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
    let created = ctx
        .mail_store
        .change(&ctx.spool, &request.user, |s| {
            Ok((s.ensure_defaults(now), ()))
        })
        .await;
    if let Err(error) = created {
        tracing::warn!(target: "relay::web", user = %Safe(&request.user), %error, "default folders not created");
    }
    let id = crate::web::session::random_token();
    let started = match sessions.lock() {
        Ok(mut sessions) => {
            let csrf = crate::web::session::random_token();
            sessions.start(
                request.user.clone(),
                id.clone(),
                csrf,
                std::time::Instant::now(),
            );
            true
        }
        Err(_) => false,
    };
    if !started {
        refuse(conn, peer, request, Refusal::Unavailable).await;
        return;
    }
    tracing::info!(target: "relay::web", client = %request.client.ip(), user = %Safe(&request.user), from = %Safe(&request.from), "login");
    if accepted(conn, None, String::new(), Some(id)).await {
        let _ = crate::net::conn::within(conn, ANSWER_TIMEOUT, conn.finish()).await;
    }
}

/// Serves one proxied login (after its TLS handshake) until its session ends.
pub async fn serve<C: Connection>(conn: &C, ctx: &Rc<ShardContext>, peer: SocketAddr) {
    let (request, input) = match read_request(conn, ctx).await {
        Ok(read) => read,
        Err(error) => {
            tracing::warn!(target: "relay::cluster", peer = %peer.ip(), error = %Safe(&error.to_string()), "proxied login: no valid request");
            if matches!(error, RequestError::Frame(_)) {
                // Its version is unknown: a reason every version knows.
                send_refusal(conn, Refusal::BadRequest, 0).await;
            }
            conn.shutdown();
            return;
        }
    };
    if let Some(reason) = refusal(ctx, &request.user) {
        refuse(conn, peer, &request, reason).await;
        return;
    }
    tracing::info!(target: "relay::cluster", peer = %peer.ip(), from = %Safe(&request.from), protocol = request.protocol.name(), user = %Safe(&request.user), client = %request.client.ip(), "proxied login served");
    let (client, user, home) = (request.client, request.user.clone(), Rc::clone(ctx));
    match request.protocol {
        Protocol::Pop3 => {
            let locked = async |locked: Result<String, crate::pop3::LockResult>| match locked {
                Ok(text) => accepted(conn, None, text, None).await,
                Err(result) => {
                    let reason = match result {
                        crate::pop3::LockResult::InUse => Refusal::InUse,
                        _ => Refusal::Unavailable,
                    };
                    refuse(conn, peer, &request, reason).await;
                    false
                }
            };
            super::pop3::serve_preauthenticated(conn, client, home, user, input, locked).await;
        }
        Protocol::Web => web(conn, ctx, peer, &request).await,
        Protocol::Imap => {
            let logged_in =
                async |caps: String| accepted(conn, Some(caps), "Logged in".into(), None).await;
            super::imap::serve_preauthenticated(conn, client, home, user, input, logged_in).await;
        }
    }
    conn.shutdown();
}
