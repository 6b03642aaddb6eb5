//! One shard's network side: its accept loops and the state its connections share.
//!
//! Everything here lives on one pinned thread (`Rc`, no locks); the only cross-core state is
//! the per-client connection table and the spool writer's queue.

use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::io::{Connection, Listener};
use super::limits::{Admission, Refusal};
use super::listener::stop_accepting;
use super::smtp_conn;
use crate::runtime::Phase;
use crate::smtp::{Reply, SessionConfig};
use crate::spool::ShardHandle;

/// What every connection task of a shard needs.
pub struct ShardContext {
    pub shard: usize,
    pub hostname: String,
    pub session_config: Arc<SessionConfig>,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    pub spool: ShardHandle,
    /// Maildrops, updated once a local delivery is durable.
    pub mail_store: Arc<crate::mailbox::MailStore>,
    pub admission: Admission,
    pub phase: watch::Receiver<Phase>,
}

/// A listener plus a duplicate of its socket, used to stop a pending accept at shutdown.
pub struct Bound<L> {
    pub listener: L,
    pub socket: std::net::TcpListener,
}

/// Runs the shard until shutdown has drained (or force-closed) every connection.
pub async fn run<L: Listener + 'static>(ctx: Rc<ShardContext>, listeners: Vec<Bound<L>>) {
    let mut sockets = Vec::new();
    let mut loops = Vec::new();
    for bound in listeners {
        sockets.push(bound.socket);
        loops.push(tokio::task::spawn_local(accept_loop(
            Rc::clone(&ctx),
            bound.listener,
        )));
    }
    let mut phase = ctx.phase.clone();
    while *phase.borrow_and_update() == Phase::Running {
        if phase.changed().await.is_err() {
            break;
        }
    }
    // Stop accepting: the pending accepts complete with an error and their loops end.
    for socket in &sockets {
        stop_accepting(socket);
    }
    for accept in loops {
        let _ = accept.await;
    }
    // Connections end by themselves: at once when idle, after their transaction when
    // draining, at once when the phase turns to Stopping.
    ctx.admission.idle().await;
}

async fn accept_loop<L: Listener>(ctx: Rc<ShardContext>, listener: L) {
    loop {
        let accepted = listener.accept().await;
        if *ctx.phase.borrow() != Phase::Running {
            if let Ok((conn, _)) = accepted {
                conn.shutdown();
            }
            return;
        }
        match accepted {
            Ok((conn, peer)) => match ctx.admission.admit(peer.ip()) {
                Ok(permit) => {
                    tokio::task::spawn_local(smtp_conn::serve(conn, peer, Rc::clone(&ctx), permit));
                }
                Err(refusal) => {
                    tracing::info!(client = %peer, ?refusal, "connection refused");
                    let mut reply = Vec::new();
                    refusal_reply(&ctx.hostname, refusal).encode(&mut reply);
                    tokio::task::spawn_local(smtp_conn::refuse(conn, reply));
                }
            },
            Err(error) => {
                if out_of_resources(&error) {
                    // Out of descriptors or memory: spinning on accept would only burn the
                    // core; back off briefly and let connections finish.
                    tracing::warn!(%error, "accept failed; pausing 100ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                } else {
                    tracing::debug!(%error, "accept failed");
                }
            }
        }
    }
}

fn out_of_resources(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

fn refusal_reply(hostname: &str, refusal: Refusal) -> Reply {
    match refusal {
        Refusal::CoreFull => Reply::too_many_connections(hostname),
        Refusal::ClientFull => Reply::too_many_connections_from_client(hostname),
    }
}
