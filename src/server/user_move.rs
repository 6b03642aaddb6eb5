//! `relay user move NAME --to NODE`, on the user's current home node (the source): copy the
//! user's store to the target node, switch the home in the directory, delete it here.
//!
//! **Steps** (one move at a time per user, on a thread of its own, never on a shard):
//! 1. *sync live*: the target answers its state of the user ([`crate::cluster::move_wire`]),
//!    [`move_plan::plan`] says what it lacks, batches go over the cluster listener (ALPN
//!    `relay-move`) and each is durable there before it is answered; repeated until a plan
//!    is small, while the user is served here as usual;
//! 2. *freeze*: the user's deliveries here are answered 451 (`MailStore::begin_deliveries`),
//!    changes and new POP3 sessions refused for now; the move waits until deliveries in
//!    flight landed and no POP3 session holds the maildrop;
//! 3. *sync the delta* the same way, until the plan is empty;
//! 4. *switch*: the home becomes the target in PostgreSQL: the commit point, one row every
//!    node sees (NOTIFY); this node waits until its own directory says so;
//! 5. *unfreeze*: this node now forwards the user's mail and proxies their logins there;
//! 6. *delete* the user's store here (one state record releasing every body).
//!
//! Nothing here is deleted before the directory names the target. A move that stops (a
//! crash of either node, a refusal) is run again: the plan skips what the target holds
//! durably, and a run that finds the directory already naming the target only does step 6.
//! The freeze is in memory: a crash of this node ends it.
//!
//! **Pausing for tests** (debug builds only): a file `move-pause-STEP` in the spool directory
//! (STEP: `copy` after the first batch, `frozen` after the delta before the switch,
//! `switched` after the switch before the delete) makes the move log
//! "user move paused at STEP" and wait while the file exists, so a test can kill -9 a node
//! at that step.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::cluster::move_plan::{self, Plan};
use crate::cluster::move_wire::{self, Answer, Request};
use crate::config::cluster::PostgresSection;
use crate::config::Config;
use crate::logsafe::Safe;
use crate::mailbox::{MailStore, SharedDirectory};
use crate::mailstore::ExportedStore;
use crate::spool::Spool;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const IO_TIMEOUT: Duration = Duration::from_secs(120);
/// Live passes before the freeze (each copies what arrived during the one before).
const LIVE_PASSES: usize = 3;
/// How long the freeze waits for deliveries in flight and POP3 sessions to end.
const QUIESCE_MAX: Duration = Duration::from_secs(30);
/// How long the switch waits for this node's directory to name the target.
const SWITCH_SEEN_MAX: Duration = Duration::from_secs(30);

/// Where a move stands: what `relay user move` prints.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub user: String,
    pub to: String,
    pub running: bool,
    /// The step now (or the last one): sync, freeze, delta, switch, delete, done.
    pub step: String,
    /// Messages copied to the target (bodies and copies).
    pub copied: u64,
    pub batches: u64,
    /// Messages deleted here after the switch.
    pub deleted: u64,
    pub done: bool,
    pub error: Option<String>,
}

/// Why a move cannot start.
#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    #[error("this relay is not a cluster node: set [cluster] node and [[cluster.nodes]]")]
    NotClustered,
    #[error("the directory is not PostgreSQL ([cluster.postgres]): a home change must be one write every node sees")]
    NotPostgres,
    #[error("`{0}` is not one of cluster.nodes")]
    UnknownNode(String),
    #[error("`{0}` is this node")]
    ToSelf(String),
    #[error("{0} is not in the directory")]
    UnknownUser(String),
    #[error("{user} is homed on {home}, not on this node: run the move there")]
    NotHere { user: String, home: String },
    #[error("cluster TLS: {0}")]
    Tls(String),
    #[error("a move of {0} is running")]
    Running(String),
}

/// What a step failed on (the move stops; run it again).
#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error("node {node}: {why}")]
    Peer { node: String, why: String },
    #[error("node {node} refused: {reason}")]
    Refused { node: String, reason: String },
    #[error("the target holds a store of the user that did not come from here: {0}")]
    Conflict(#[from] move_plan::Conflict),
    #[error("{0}")]
    Local(String),
}

/// The moves of one server.
pub struct Mover {
    node: Option<String>,
    peers: Vec<(String, SocketAddr)>,
    tls: Option<Arc<rustls::ClientConfig>>,
    postgres: Option<PostgresSection>,
    mail_store: Arc<MailStore>,
    spool: Arc<Spool>,
    directory: SharedDirectory,
    spool_dir: PathBuf,
    moves: Mutex<HashMap<String, Progress>>,
}

impl Mover {
    pub fn new(
        config: &Config,
        tls: Option<&crate::net::tls::ClusterTls>,
        mail_store: Arc<MailStore>,
        spool: Arc<Spool>,
        directory: SharedDirectory,
    ) -> Arc<Mover> {
        let cluster = &config.cluster;
        let tls = tls.map(|t| {
            let mut client = (*t.client()).clone();
            client.alpn_protocols = vec![move_wire::ALPN.to_vec()];
            Arc::new(client)
        });
        Arc::new(Mover {
            node: cluster.node.clone(),
            peers: cluster
                .nodes
                .iter()
                .map(|n| (n.name.clone(), n.cluster))
                .collect(),
            tls,
            postgres: cluster
                .postgres
                .conninfo
                .is_some()
                .then(|| cluster.postgres.clone()),
            mail_store,
            spool,
            directory,
            spool_dir: config.spool.dir.clone(),
            moves: Mutex::new(HashMap::new()),
        })
    }

    pub fn progress(&self, user: &str) -> Option<Progress> {
        lock(&self.moves).get(user).cloned()
    }

    /// Checks the request and starts the move on a thread of its own.
    pub fn start(self: &Arc<Self>, user: &str, to: &str) -> Result<Progress, MoveError> {
        let node = self.node.clone().ok_or(MoveError::NotClustered)?;
        let postgres = self.postgres.clone().ok_or(MoveError::NotPostgres)?;
        let tls = self.tls.clone().ok_or_else(|| {
            MoveError::Tls("cluster.cert, cluster.key and cluster.ca are needed".into())
        })?;
        let user = user.to_ascii_lowercase();
        let addr = self
            .peers
            .iter()
            .find(|(n, _)| n == to)
            .map(|(_, a)| *a)
            .ok_or_else(|| MoveError::UnknownNode(to.to_string()))?;
        if to == node {
            return Err(MoveError::ToSelf(to.to_string()));
        }
        let home = self
            .directory
            .current()
            .user(&user)
            .map(|u| u.home.clone())
            .ok_or_else(|| MoveError::UnknownUser(user.clone()))?;
        match home.as_deref() {
            None => {}
            Some(h) if h == node || h == to => {}
            Some(h) => {
                return Err(MoveError::NotHere {
                    user,
                    home: h.to_string(),
                })
            }
        }
        let progress = {
            let mut moves = lock(&self.moves);
            if moves.get(&user).is_some_and(|p| p.running) {
                return Err(MoveError::Running(user));
            }
            let p = Progress {
                user: user.clone(),
                to: to.to_string(),
                running: true,
                step: "sync".into(),
                ..Progress::default()
            };
            moves.insert(user.clone(), p.clone());
            p
        };
        let me = Arc::clone(self);
        let to = to.to_string();
        let thread_user = user.clone();
        let spawned = std::thread::Builder::new()
            .name("relay-user-move".into())
            .spawn(move || {
                let result = me.run(&node, &thread_user, &to, addr, &tls, &postgres);
                let mut moves = lock(&me.moves);
                if let Some(p) = moves.get_mut(&thread_user) {
                    p.running = false;
                    match result {
                        Ok(()) => {
                            p.done = true;
                            p.step = "done".into();
                        }
                        Err(e) => {
                            tracing::error!(target: "relay::cluster", user = %Safe(&thread_user), to = %Safe(&to), "user move stopped: {}", Safe(&e.to_string()));
                            p.error = Some(e.to_string());
                        }
                    }
                }
            });
        if let Err(e) = spawned {
            if let Some(p) = lock(&self.moves).get_mut(&user) {
                p.running = false;
                p.error = Some(format!("cannot start the move thread: {e}"));
            }
        }
        Ok(progress)
    }

    fn step(&self, user: &str, step: &str) {
        tracing::info!(target: "relay::cluster", user = %Safe(user), step, "user move");
        if let Some(p) = lock(&self.moves).get_mut(user) {
            p.step = step.to_string();
        }
    }

    fn home(&self, user: &str) -> Option<String> {
        self.directory
            .current()
            .user(user)
            .and_then(|u| u.home.clone())
    }

    fn run(
        &self,
        node: &str,
        user: &str,
        to: &str,
        addr: SocketAddr,
        tls: &Arc<rustls::ClientConfig>,
        postgres: &PostgresSection,
    ) -> Result<(), StepError> {
        if self.home(user).as_deref() != Some(to) {
            let mut peer = Peer::open(addr, to, tls)?;
            self.copy(node, user, &mut peer)?;
            self.step(user, "freeze");
            self.mail_store.set_moving(user, true);
            let frozen = self.frozen(node, user, to, &mut peer, postgres);
            self.mail_store.set_moving(user, false);
            peer.bye();
            frozen?;
        }
        self.step(user, "delete");
        pause(&self.spool_dir, "switched", user);
        self.delete(user, to)
    }

    /// Live passes: copies until a pass finds little to do.
    fn copy(&self, node: &str, user: &str, peer: &mut Peer) -> Result<(), StepError> {
        for _ in 0..LIVE_PASSES {
            let plan = self.plan(node, user, peer)?;
            let small = plan.messages() < 64;
            self.send(user, peer, &plan)?;
            if small {
                break;
            }
        }
        Ok(())
    }

    /// The freeze, the delta and the switch.
    fn frozen(
        &self,
        node: &str,
        user: &str,
        to: &str,
        peer: &mut Peer,
        postgres: &PostgresSection,
    ) -> Result<(), StepError> {
        let deadline = Instant::now() + QUIESCE_MAX;
        loop {
            let pending = self.export(user).pending;
            let deliveries = self.mail_store.deliveries_in_flight(user);
            let pop3 = self.mail_store.pop3_locked(user);
            if pending == 0 && deliveries == 0 && !pop3 {
                break;
            }
            if Instant::now() >= deadline {
                return Err(StepError::Local(format!(
                    "the user is still busy after {}s (deliveries in flight: {deliveries}, POP3 session open: {pop3}); nothing was switched",
                    QUIESCE_MAX.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.step(user, "delta");
        loop {
            let plan = self.plan(node, user, peer)?;
            if plan.is_empty() {
                break;
            }
            self.send(user, peer, &plan)?;
        }
        pause(&self.spool_dir, "frozen", user);
        self.step(user, "switch");
        crate::cluster::directory::set_home(postgres, user, Some(to))
            .map_err(|e| StepError::Local(format!("the directory was not changed: {e}")))?;
        tracing::warn!(target: "relay::cluster", user = %Safe(user), to = %Safe(to), "user's home switched");
        let deadline = Instant::now() + SWITCH_SEEN_MAX;
        while self.home(user).as_deref() != Some(to) {
            if Instant::now() >= deadline {
                // Still frozen here would refuse the user's mail for longer; the directory
                // is the truth and will reach this node, so go on.
                tracing::warn!(target: "relay::cluster", user = %Safe(user), "this node's directory does not show the switch yet");
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn export(&self, user: &str) -> ExportedStore {
        self.mail_store.folders().with(user, |s| s.export())
    }

    /// The target's state, and what it lacks of ours.
    fn plan(&self, node: &str, user: &str, peer: &mut Peer) -> Result<Plan, StepError> {
        let theirs = match peer.ask(&Request::Hello {
            from: node.to_string(),
            user: user.to_string(),
        })? {
            Answer::State { store } => store,
            other => return Err(peer.unexpected(other)),
        };
        Ok(move_plan::plan(&self.export(user), &theirs)?)
    }

    fn send(&self, user: &str, peer: &mut Peer, plan: &Plan) -> Result<(), StepError> {
        let mut first = true;
        for (mut batch, ids) in move_wire::batches(plan) {
            // UIDLs and summaries first (the frame states their lengths), then each body as
            // it goes.
            let mut summaries = Vec::with_capacity(ids.len());
            for (import, id) in batch.imports.iter_mut().zip(&ids) {
                // What POP3 shows here, so the target shows the same.
                import.uidl = crate::pop3::Uidl::new(self.mail_store.uidl(user, *id)).ok();
                let summary = self
                    .spool
                    .read_summary(*id)
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                import.summary_len = u32::try_from(summary.len()).unwrap_or(0);
                summaries.push(if import.summary_len == 0 {
                    Vec::new()
                } else {
                    summary
                });
            }
            peer.write(&move_wire::encode(&Request::Apply {
                batch: batch.clone(),
            }))?;
            for ((import, id), summary) in batch.imports.iter().zip(&ids).zip(&summaries) {
                let body = self
                    .spool
                    .read_body(*id)
                    .map_err(|e| StepError::Local(format!("cannot read message {id}: {e}")))?;
                if body.len() as u64 != import.size {
                    return Err(StepError::Local(format!(
                        "message {id} is {} octets, not {}",
                        body.len(),
                        import.size
                    )));
                }
                peer.write(&body)?;
                peer.write(summary)?;
            }
            match peer.read()? {
                Answer::Applied { messages } => {
                    let mut moves = lock(&self.moves);
                    if let Some(p) = moves.get_mut(user) {
                        p.copied += messages;
                        p.batches += 1;
                    }
                }
                other => return Err(peer.unexpected(other)),
            }
            if first {
                pause(&self.spool_dir, "copy", user);
                first = false;
            }
        }
        Ok(())
    }

    /// After the switch: the user's store here is emptied (only once the directory here
    /// names the target).
    fn delete(&self, user: &str, to: &str) -> Result<(), StepError> {
        if self.home(user).as_deref() != Some(to) {
            return Err(StepError::Local(format!(
                "this node's directory does not name {to} as the home yet: nothing deleted; run the move again"
            )));
        }
        let count = self.mail_store.count(user) as u64;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(|e| StepError::Local(e.to_string()))?;
        let shard = self.spool.shard(0);
        runtime
            .block_on(
                self.mail_store
                    .change_moving(&shard, user, |s| Ok((s.remove_all(), ()))),
            )
            .map_err(|e| StepError::Local(format!("the store here was not deleted: {e}")))?;
        tracing::warn!(target: "relay::cluster", user = %Safe(user), to = %Safe(to), messages = count, "user moved: the store here is deleted");
        if let Some(p) = lock(&self.moves).get_mut(user) {
            p.deleted = count;
        }
        Ok(())
    }
}

/// Test seam (module doc): waits while `<spool>/move-pause-STEP` exists.
fn pause(dir: &std::path::Path, step: &str, user: &str) {
    if !cfg!(debug_assertions) {
        return;
    }
    let file = dir.join(format!("move-pause-{step}"));
    if file.exists() {
        tracing::warn!(target: "relay::cluster", user = %Safe(user), "user move paused at {step}");
        while file.exists() {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// The connection to the target's cluster listener.
struct Peer {
    name: String,
    stream: TlsStream,
}

impl Peer {
    fn open(
        addr: SocketAddr,
        name: &str,
        tls: &Arc<rustls::ClientConfig>,
    ) -> Result<Peer, StepError> {
        let failed = |why: String| StepError::Peer {
            node: name.to_string(),
            why,
        };
        let tcp = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
            .map_err(|e| failed(format!("cannot connect to {addr}: {e}")))?;
        tcp.set_read_timeout(Some(IO_TIMEOUT))
            .and_then(|()| tcp.set_write_timeout(Some(IO_TIMEOUT)))
            .map_err(|e| failed(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let server = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        let conn = rustls::ClientConnection::new(Arc::clone(tls), server)
            .map_err(|e| failed(e.to_string()))?;
        let mut stream = rustls::StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            stream
                .conn
                .complete_io(&mut stream.sock)
                .map_err(|e| failed(format!("TLS: {e}")))?;
        }
        if stream.conn.alpn_protocol() != Some(move_wire::ALPN) {
            return Err(failed("does not speak the user-move conversation".into()));
        }
        Ok(Peer {
            name: name.to_string(),
            stream,
        })
    }

    fn failed(&self, why: impl std::fmt::Display) -> StepError {
        StepError::Peer {
            node: self.name.clone(),
            why: why.to_string(),
        }
    }

    fn unexpected(&self, answer: Answer) -> StepError {
        match answer {
            Answer::Refused { reason } => StepError::Refused {
                node: self.name.clone(),
                reason,
            },
            other => self.failed(format!("unexpected answer {other:?}")),
        }
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), StepError> {
        self.stream
            .write_all(bytes)
            .and_then(|()| self.stream.flush())
            .map_err(|e| self.failed(e))
    }

    fn read(&mut self) -> Result<Answer, StepError> {
        let mut head = [0u8; 4];
        self.stream
            .read_exact(&mut head)
            .map_err(|e| self.failed(e))?;
        let n = move_wire::frame_len(head).map_err(|e| self.failed(e))?;
        let mut json = vec![0u8; n];
        self.stream
            .read_exact(&mut json)
            .map_err(|e| self.failed(e))?;
        move_wire::decode(&json).map_err(|e| self.failed(e))
    }

    fn ask(&mut self, request: &Request) -> Result<Answer, StepError> {
        self.write(&move_wire::encode(request))?;
        self.read()
    }

    fn bye(&mut self) {
        let _ = self.write(&move_wire::encode(&Request::Bye));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The admin routes' handle on the moves.
pub struct MoveControl(pub Arc<Mover>);

impl crate::admin::user_move::MoveControl for MoveControl {
    fn start(&self, user: &str, to: &str) -> Result<serde_json::Value, String> {
        self.0
            .start(user, to)
            .map(|p| serde_json::to_value(p).unwrap_or_default())
            .map_err(|e| e.to_string())
    }

    fn progress(&self, user: &str) -> Option<serde_json::Value> {
        self.0
            .progress(user)
            .map(|p| serde_json::to_value(p).unwrap_or_default())
    }
}
