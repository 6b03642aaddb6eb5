//! `relay node drain`: this node stops taking new client connections and hands its whole
//! outbound queue to live peers, each message with its schedule (KumoMTA's `xfer`).
//!
//! **Order, per message** (one at a time, on the drain's own thread, never on a shard):
//! 1. its entries leave every core's queue without a record ([`control::withdraw`]); an
//!    entry out for an attempt makes the drain come back to the message in the next pass;
//! 2. the spool says what is still pending (attempts, next attempt, last reply, delay
//!    notice), and the stored body is read;
//! 3. one SMTP transaction to a peer's cluster listener (mutual TLS): MAIL FROM with the
//!    message's parameters and `XQUEUE`, RCPT TO per pending recipient with NOTIFY/ORCPT and
//!    `XSCHED` ([`crate::queue::xfer`]), DATA. The peer answers 250 only once the message and
//!    its schedule are on its disk;
//! 4. after that 250, one record here makes each transferred recipient final (`Delivered`,
//!    reply `250 … transferred to node X`).
//!
//! A crash before (4) leaves the recipients pending here: the next drain (or delivery after
//! a restart) sends them again, and the peer, which keeps the drainer's `node:queue-id` with
//! each imported message ([`super::xfer_in`]), stores it once. Nothing is lost, nothing goes
//! twice.
//!
//! **While draining** the client listeners close each new connection at once (the cluster
//! listener stays up), the cores' reconciliation does not take withdrawn messages back, and
//! delivery goes on for what is not yet withdrawn. The node stays draining until it is
//! restarted or `relay node resume` ends it; resuming queues again whatever the drain could
//! not hand over.
//!
//! **Peers**: the other nodes of `[[cluster.nodes]]` whose cluster listener accepts a
//! connection and a TLS handshake (a failed peer is skipped for the rest of the pass).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::delivery::control;
use crate::delivery::Mesh;
use crate::envelope::QueueId;
use crate::logsafe::Safe;
use crate::queue::xfer::{self, ExportInput, Transfer, XSched};
use crate::spool::{DeliveryResult, DsnKind, Outcome, Spool};

/// Set while the node drains: the client listeners refuse new connections. One server runs
/// per process, so a process-wide flag is the node's state (and needs no plumbing into every
/// accept loop).
static REFUSING: AtomicBool = AtomicBool::new(false);

/// Whether client listeners should close new connections now (the node is draining).
pub fn refusing() -> bool {
    REFUSING.load(Ordering::SeqCst)
}

/// Messages read per pass.
const PASS_MESSAGES: usize = 10_000;
/// A drain that moved nothing for this long ends and reports what remains.
const STALL_MAX: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest reply line read from a peer, and lines per reply.
const REPLY_LINE_MAX: usize = 2048;
const REPLY_LINES_MAX: usize = 64;

/// Where a drain stands: what `relay node drain` prints.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The node refuses client connections (until restart or resume).
    pub draining: bool,
    /// A drain pass is running now.
    pub running: bool,
    pub passes: u32,
    /// Messages handed to a peer (each recorded here after its 250).
    pub transferred: u64,
    /// Recipients made final here by those transfers.
    pub recipients: u64,
    /// Attempts that failed (a peer refused or was unreachable); retried in the next pass.
    pub failed: u64,
    /// Messages with pending recipients left in the queue after the last pass.
    pub remaining: u64,
    /// Transfers per peer.
    pub per_peer: Vec<(String, u64)>,
    pub last_error: Option<String>,
}

/// The drain's shared state: one per server.
pub struct Drain {
    node: String,
    peers: Vec<(String, SocketAddr)>,
    tls: Option<Arc<rustls::ClientConfig>>,
    tls_error: Option<String>,
    mesh: Arc<Mesh>,
    spool: Arc<Spool>,
    progress: Mutex<Progress>,
}

/// Why a drain cannot start.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("this relay is not a cluster node: set [cluster] node and [[cluster.nodes]]")]
    NotClustered,
    #[error("cluster TLS: {0}")]
    Tls(String),
}

impl Drain {
    /// `None` without a cluster.
    pub fn new(config: &Config, mesh: Arc<Mesh>, spool: Arc<Spool>) -> Option<Arc<Drain>> {
        let cluster = &config.cluster;
        let node = cluster.node.clone()?;
        let peers = cluster
            .nodes
            .iter()
            .filter(|n| n.name != node)
            .map(|n| (n.name.clone(), n.cluster))
            .collect();
        let (tls, tls_error) = match (&cluster.cert, &cluster.key, &cluster.ca) {
            (Some(cert), Some(key), Some(ca)) => match client_tls(cert, key, ca) {
                Ok(c) => (Some(c), None),
                Err(e) => (None, Some(e)),
            },
            _ => (
                None,
                Some("cluster.cert, cluster.key and cluster.ca are needed".into()),
            ),
        };
        Some(Arc::new(Drain {
            node,
            peers,
            tls,
            tls_error,
            mesh,
            spool,
            progress: Mutex::new(Progress::default()),
        }))
    }

    pub fn progress(&self) -> Progress {
        lock(&self.progress).clone()
    }

    /// Starts a drain on a thread of its own (or reports the one running).
    pub fn start(self: &Arc<Self>) -> Result<Progress, DrainError> {
        let Some(tls) = self.tls.clone() else {
            return Err(DrainError::Tls(self.tls_error.clone().unwrap_or_default()));
        };
        {
            let mut p = lock(&self.progress);
            if p.running {
                return Ok(p.clone());
            }
            *p = Progress {
                draining: true,
                running: true,
                ..Progress::default()
            };
        }
        REFUSING.store(true, Ordering::SeqCst);
        self.mesh.set_draining(true);
        tracing::warn!(node = %self.node, "draining: client connections refused, the queue goes to peers");
        let me = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("relay-drain".into())
            .spawn(move || {
                me.run(&tls);
                lock(&me.progress).running = false;
            });
        if let Err(e) = spawned {
            lock(&self.progress).running = false;
            return Err(DrainError::Tls(format!(
                "cannot start the drain thread: {e}"
            )));
        }
        Ok(self.progress())
    }

    /// `relay node resume`: client connections are taken again and the queue's withdrawn
    /// messages go back to the cores (refused while a pass runs).
    pub fn resume(&self) -> Result<Progress, String> {
        let mut p = lock(&self.progress);
        if p.running {
            return Err("a drain is running; wait for it to end".into());
        }
        p.draining = false;
        REFUSING.store(false, Ordering::SeqCst);
        self.mesh.set_draining(false);
        tracing::warn!(node = %self.node, "drain over: taking client connections again");
        Ok(p.clone())
    }

    fn run(&self, tls: &Arc<rustls::ClientConfig>) {
        let mut conns: Vec<Option<PeerConn>> = self.peers.iter().map(|_| None).collect();
        let mut next_peer = 0usize;
        let mut last_progress = Instant::now();
        loop {
            let queued = match self.spool.queued(PASS_MESSAGES) {
                Ok(q) => q,
                Err(e) => {
                    self.note_error(format!("cannot read the queue: {e}"));
                    break;
                }
            };
            let ids: Vec<QueueId> = queued
                .iter()
                .filter(|m| !m.pending.is_empty())
                .map(|m| m.id)
                .collect();
            {
                let mut p = lock(&self.progress);
                p.passes += 1;
                p.remaining = ids.len() as u64;
            }
            if ids.is_empty() {
                break;
            }
            let mut dead = vec![false; self.peers.len()];
            for id in ids {
                if self.transfer_one(id, tls, &mut conns, &mut dead, &mut next_peer) {
                    last_progress = Instant::now();
                }
            }
            if last_progress.elapsed() >= STALL_MAX {
                break;
            }
            // Messages out for an attempt, or peers down: look again shortly.
            std::thread::sleep(Duration::from_millis(200));
        }
        for conn in conns.iter_mut().flatten() {
            conn.quit();
        }
        let remaining = self
            .spool
            .queued(PASS_MESSAGES)
            .map(|q| q.iter().filter(|m| !m.pending.is_empty()).count() as u64)
            .unwrap_or(0);
        let mut p = lock(&self.progress);
        p.remaining = remaining;
        tracing::warn!(
            node = %self.node,
            transferred = p.transferred,
            remaining,
            "drain pass over"
        );
    }

    /// Hands message `id` to a peer; true when it moved (or needed nothing).
    fn transfer_one(
        &self,
        id: QueueId,
        tls: &Arc<rustls::ClientConfig>,
        conns: &mut [Option<PeerConn>],
        dead: &mut [bool],
        next_peer: &mut usize,
    ) -> bool {
        match control::withdraw(&self.mesh, id, control::CONTROL_TIMEOUT) {
            Ok((_, true)) => return false, // out for an attempt: next pass
            Ok((_, false)) => {}
            Err(e) => {
                self.note_error(e.to_string());
                return false;
            }
        }
        let message = match self.spool.queued_message(id) {
            Ok(Some(m)) if !m.pending.is_empty() => m,
            Ok(_) => return true,
            Err(e) => {
                self.note_error(format!("{id}: {e}"));
                return false;
            }
        };
        let stored = match self
            .spool
            .locate(id)
            .ok_or_else(|| "not in the spool".to_string())
            .and_then(|l| self.spool.read_message(&l).map_err(|e| e.to_string()))
        {
            Ok(s) => s,
            Err(e) => {
                self.note_error(format!("{id}: {e}"));
                return false;
            }
        };
        let pending = message
            .pending
            .iter()
            .map(|p| {
                let delay_noticed = message
                    .dsn_sent
                    .iter()
                    .any(|d| d.kind == DsnKind::Delay && d.recipient == p.recipient);
                (
                    p.recipient.clone(),
                    XSched {
                        attempts: p.attempts,
                        next_attempt_unix_micros: p.next_attempt_unix_micros,
                        last_attempt_unix_micros: p.last_attempt_unix_micros,
                        last_reply: p.last_reply.clone(),
                        delay_noticed,
                    },
                )
            })
            .collect();
        let transfer = xfer::export(ExportInput {
            node: &self.node,
            id,
            arrival_unix_micros: stored.meta.arrival_unix_micros,
            envelope: &stored.meta.envelope,
            pending,
        });
        for _ in 0..self.peers.len() {
            let i = *next_peer % self.peers.len();
            *next_peer = next_peer.wrapping_add(1);
            if dead[i] {
                continue;
            }
            let (name, addr) = &self.peers[i];
            if conns[i].is_none() {
                match PeerConn::open(*addr, name, &self.node, tls) {
                    Ok(c) => conns[i] = Some(c),
                    Err(e) => {
                        dead[i] = true;
                        self.note_failure(format!("peer {name} ({addr}): {e}"));
                        continue;
                    }
                }
            }
            let Some(conn) = conns[i].as_mut() else {
                continue;
            };
            match conn.send(&transfer, &stored.body) {
                Ok(reply) => {
                    self.record(id, &transfer, name, &reply);
                    return true;
                }
                Err(e) => {
                    conns[i] = None;
                    self.note_failure(format!("{id} to peer {name}: {e}"));
                }
            }
        }
        false
    }

    /// After the peer's 250: the transferred recipients are final here.
    fn record(&self, id: QueueId, transfer: &Transfer, peer: &str, reply: &str) {
        let now = now_micros();
        let results: Vec<DeliveryResult> = transfer
            .recipients
            .iter()
            .map(|r| DeliveryResult {
                id,
                recipient: r.address.clone(),
                outcome: Outcome::Delivered,
                reply: format!("250 2.0.0 transferred to node {peer}: {reply}"),
                attempt: r.sched.attempts.saturating_add(1),
                at_unix_micros: now,
                next_attempt_unix_micros: None,
            })
            .collect();
        let n = results.len() as u64;
        let stored = self
            .spool
            .shard(0)
            .append_results(results)
            .map_err(|e| e.to_string())
            .and_then(|rx| match rx.blocking_recv() {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("spool closed".into()),
            });
        match stored {
            Ok(()) => {
                tracing::info!(target: "relay::delivery", queue_id = %id, peer = %peer, recipients = n, "transferred to a peer");
                let mut p = lock(&self.progress);
                p.transferred += 1;
                p.recipients += n;
                match p.per_peer.iter_mut().find(|(name, _)| name == peer) {
                    Some((_, count)) => *count += 1,
                    None => p.per_peer.push((peer.to_string(), 1)),
                }
            }
            // The peer has it; the next drain sends it again and the peer's dedup answers
            // 250 without storing it twice.
            Err(e) => self.note_error(format!(
                "{id}: transferred to {peer} but not recorded here ({e}); the next drain repeats it"
            )),
        }
    }

    fn note_failure(&self, why: String) {
        tracing::warn!("drain: {}", Safe(&why));
        let mut p = lock(&self.progress);
        p.failed += 1;
        p.last_error = Some(why);
    }

    fn note_error(&self, why: String) {
        tracing::error!("drain: {}", Safe(&why));
        lock(&self.progress).last_error = Some(why);
    }
}

/// The admin routes' handle on the drain (starting one needs the `Arc`).
pub struct DrainControl(pub Arc<Drain>);

impl crate::admin::node::NodeControl for DrainControl {
    fn drain(&self) -> Result<serde_json::Value, String> {
        self.0
            .start()
            .map(|p| serde_json::to_value(p).unwrap_or_default())
            .map_err(|e| e.to_string())
    }

    fn drain_progress(&self) -> serde_json::Value {
        serde_json::to_value(self.0.progress()).unwrap_or_default()
    }

    fn resume(&self) -> Result<serde_json::Value, String> {
        self.0
            .resume()
            .map(|p| serde_json::to_value(p).unwrap_or_default())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The client side of the cluster's mutual TLS: this node's certificate, peers trusted by
/// the cluster CA alone.
pub fn client_tls(cert: &Path, key: &Path, ca: &Path) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))? {
        let c = c.map_err(|e| format!("{}: {e}", ca.display()))?;
        roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let mut config = rustls::ClientConfig::builder_with_provider(crate::net::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| e.to_string())?;
    // The cluster listener hands a connection that asks for this to the transfer session.
    config.alpn_protocols = vec![super::xfer_session::ALPN.to_vec()];
    Ok(Arc::new(config))
}

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// One connection to a peer's cluster listener, reused for message after message.
struct PeerConn {
    reader: BufReader<TlsStream>,
}

impl PeerConn {
    fn open(
        addr: SocketAddr,
        peer: &str,
        node: &str,
        tls: &Arc<rustls::ClientConfig>,
    ) -> Result<PeerConn, String> {
        let tcp = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).map_err(|e| e.to_string())?;
        tcp.set_read_timeout(Some(IO_TIMEOUT))
            .and_then(|()| tcp.set_write_timeout(Some(IO_TIMEOUT)))
            .map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        // Peers are checked against the address they are dialled at (net::tls::cluster).
        let _ = peer;
        let name = ServerName::IpAddress(addr.ip().into());
        let conn =
            rustls::ClientConnection::new(Arc::clone(tls), name).map_err(|e| e.to_string())?;
        let mut c = PeerConn {
            reader: BufReader::new(rustls::StreamOwned::new(conn, tcp)),
        };
        c.read_reply(220)?;
        c.command(&format!("EHLO {node}"), 250)?;
        Ok(c)
    }

    /// One transaction; the peer's final reply on success.
    fn send(&mut self, t: &Transfer, body: &[u8]) -> Result<String, String> {
        let (mail, rcpts) = xfer::commands(t);
        self.command(&mail, 250)?;
        for rcpt in &rcpts {
            if let Err(e) = self.command(rcpt, 250) {
                let _ = self.command("RSET", 250);
                return Err(e);
            }
        }
        self.command("DATA", 354)?;
        let mut out = Vec::with_capacity(body.len() + body.len() / 64 + 5);
        dot_stuff(body, &mut out);
        let w = self.reader.get_mut();
        w.write_all(&out).map_err(|e| e.to_string())?;
        w.flush().map_err(|e| e.to_string())?;
        self.read_reply(250)
    }

    fn quit(&mut self) {
        let _ = self.command("QUIT", 221);
    }

    fn command(&mut self, line: &str, want: u16) -> Result<String, String> {
        let w = self.reader.get_mut();
        w.write_all(line.as_bytes())
            .and_then(|()| w.write_all(b"\r\n"))
            .and_then(|()| w.flush())
            .map_err(|e| e.to_string())?;
        self.read_reply(want)
            .map_err(|e| format!("{}: {e}", line.split(' ').next().unwrap_or("")))
    }

    /// Reads one (multi-line) reply; `Err` unless its code is `want`.
    fn read_reply(&mut self, want: u16) -> Result<String, String> {
        let mut text = String::new();
        for _ in 0..REPLY_LINES_MAX {
            let mut line = Vec::new();
            let n = (&mut self.reader)
                .take(REPLY_LINE_MAX as u64)
                .read_until(b'\n', &mut line)
                .map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("connection closed".into());
            }
            let line = String::from_utf8_lossy(&line).trim_end().to_string();
            let code: Option<u16> = line.get(..3).and_then(|c| c.parse().ok());
            let last = line.as_bytes().get(3) != Some(&b'-');
            text = line.clone();
            if last {
                return match code {
                    Some(c) if c == want => Ok(text),
                    _ => Err(format!("peer answered {}", Safe(&text))),
                };
            }
        }
        Err(format!("reply too long: {}", Safe(&text)))
    }
}

/// The DATA payload: `body` with each line starting with `.` doubled (RFC 5321 §4.5.2), a
/// final CRLF if missing, and the end marker.
pub fn dot_stuff(body: &[u8], out: &mut Vec<u8>) {
    let mut at_line_start = true;
    for &b in body {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    if !body.is_empty() && !body.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_stuffing_doubles_leading_dots_and_ends_the_data() {
        let mut out = Vec::new();
        dot_stuff(b".a\r\nb.\r\n..c\r\n", &mut out);
        assert_eq!(out, b"..a\r\nb.\r\n...c\r\n.\r\n");
        let mut out = Vec::new();
        dot_stuff(b"x", &mut out);
        assert_eq!(out, b"x\r\n.\r\n");
    }
}
