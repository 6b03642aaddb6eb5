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
use super::limits::AuthFailures;
use super::limits::{Admission, Refusal};
use super::listener::stop_accepting;
use super::pop3_conn;
use super::smtp_conn;
use crate::mailbox::{Directory, MailStore};
use crate::runtime::Phase;
use crate::smtp::{Reply, SessionConfig};
use crate::spool::{ShardHandle, Spool};

/// What every connection task of a shard needs.
pub struct ShardContext {
    pub shard: usize,
    pub hostname: String,
    pub session_config: Arc<SessionConfig>,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    /// This shard's spool writer (appends from this core go to its own shard).
    pub spool: ShardHandle,
    /// The whole spool, for reading stored messages from any shard.
    pub store: Arc<Spool>,
    /// Maildrops, updated once a local delivery or a deletion is durable.
    pub mail_store: Arc<MailStore>,
    pub pop3: Pop3Context,
    pub admission: Admission,
    pub phase: watch::Receiver<Phase>,
    /// Outbound delivery: the mesh to hand recipients to their owner core, and settings.
    pub delivery: Arc<crate::net::delivery::DeliveryShared>,
    /// This core's metric handles (atomics; no lock per event).
    pub metrics: crate::metrics::CoreMetrics,
}

/// What POP3 connections need besides the common parts.
pub struct Pop3Context {
    pub config: Arc<crate::pop3::Pop3Config>,
    pub directory: Arc<Directory>,
    pub idle_timeout: Duration,
    pub auth_failure_delay: Duration,
    pub auth_failures: Arc<AuthFailures>,
}

/// Which protocol a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Smtp,
    Pop3,
}

/// A listener plus a duplicate of its socket, used to stop a pending accept at shutdown.
pub struct Bound<L> {
    pub listener: L,
    pub socket: std::net::TcpListener,
    pub protocol: Protocol,
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
            bound.protocol,
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

async fn accept_loop<L: Listener>(ctx: Rc<ShardContext>, listener: L, protocol: Protocol) {
    loop {
        let accepted = listener.accept().await;
        if *ctx.phase.borrow() != Phase::Running {
            if let Ok((conn, _)) = accepted {
                conn.shutdown();
            }
            return;
        }
        match accepted {
            Ok((conn, peer)) => match (ctx.admission.admit(peer.ip()), protocol) {
                (Ok(permit), Protocol::Smtp) => {
                    tokio::task::spawn_local(smtp_conn::serve(conn, peer, Rc::clone(&ctx), permit));
                }
                (Ok(permit), Protocol::Pop3) => {
                    tokio::task::spawn_local(pop3_conn::serve(conn, peer, Rc::clone(&ctx), permit));
                }
                (Err(refusal), _) => {
                    tracing::info!(client = %peer, ?refusal, ?protocol, "connection refused");
                    let mut reply = Vec::new();
                    match protocol {
                        Protocol::Smtp => {
                            ctx.metrics.smtp.refused.inc();
                            refusal_reply(&ctx.hostname, refusal).encode(&mut reply)
                        }
                        Protocol::Pop3 => {
                            ctx.metrics.pop3.refused.inc();
                            crate::pop3::Reply::too_many_connections().encode(&mut reply)
                        }
                    }
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
