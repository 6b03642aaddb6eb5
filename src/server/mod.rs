//! The server's life: probe, recover the spool, bind, start the shards, wait for a signal,
//! drain, make the spool durable, exit.
//!
//! Shutdown contract (SIGTERM or SIGINT): stop accepting; idle connections get 421 and
//! close; transactions in flight may finish within `server.drain_timeout`, after which every
//! connection is closed; then the spool writers commit and sync what they hold, and the
//! process exits 0. A second signal exits at once with status 1: nothing acknowledged can be
//! lost by that, because a 250 was only ever sent after its fdatasync, and recovery truncates
//! whatever partial frame the exit left.

pub mod admission;
pub mod auth;
pub mod balance;
pub mod body_budget;
pub mod cluster_listener;
pub mod dmarc_reports;
pub mod dnsbl;
pub mod drain;
pub mod hashing;
pub mod imap;
pub mod imap_store;
pub mod imap_views;
pub mod ingest;
pub mod login_in;
pub mod login_proxy;
pub mod move_in;
pub mod pop3;
pub mod shard;
pub mod signatures;
pub mod signing;
pub mod smtp;
pub mod starttls;
pub mod user_move;
pub mod verifying;
pub mod web_in;
pub mod web_proxy;
pub mod web_store;
pub mod wkd;
pub mod xfer_in;
pub mod xfer_session;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossbeam::channel;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tokio::sync::watch;

use crate::admin::access::AdminToken;
use crate::admin::{Admin, AdminError, AdminSettings};
use crate::config::Config;
use crate::delivery::loops::OwnAddresses;
use crate::delivery::{jobs_from_live, DeliveryShared, Mesh, QueueGauge};
use crate::mailbox::{KeyStore, LocalDelivery, MailStore, SharedDirectory};
use crate::metrics::Metrics;
use crate::net::listener::{bind_shared, overlaps, BindError};
use crate::net::tls::ServerTls;
use crate::runtime::shard::{Placement, ShardEvent};
use crate::runtime::{choose_engine, probe, Engine, Phase, UringUnavailable};
use crate::server::admission::{Admission, ClientTable};
use crate::server::admission::{AuthFailures, ClientPrefix};
use crate::server::auth::{Auth, Policy};
use crate::server::hashing::HashPool;
use crate::server::shard::{ImapContext, Pop3Context, Protocol, ShardContext};
use crate::smtp::{Gate, Mailboxes, SessionConfig};
use crate::spool::{Spool, SpoolError};
use shard::ShardSeed;

/// Why the server could not start or stop cleanly; each is one clear line for the operator.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("server.io = \"uring\" but {0}")]
    UringRequired(UringUnavailable),
    // Not `#[from]`: that would also make the spool error the `source`, and the CLI's `{:#}`
    // would print its message twice.
    #[error("spool: {0}")]
    Spool(SpoolError),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("{second} listener {second_addr} overlaps the {first} listener {first_addr}: each address and port may serve one protocol")]
    ListenerClash {
        first: String,
        first_addr: std::net::SocketAddr,
        second: String,
        second_addr: std::net::SocketAddr,
    },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("cannot start shard threads: {0}")]
    Thread(std::io::Error),
    #[error("shard {0} failed to start: {1}")]
    ShardStart(usize, String),
    #[error("local mailboxes: {0}")]
    Mailboxes(#[from] crate::mailbox::LoadError),
    #[error("smtp settings: {0}")]
    Session(String),
    #[error("shard {0} stopped unexpectedly")]
    ShardDied(usize),
    #[error("relay.routes: {0}")]
    Routes(String),
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error("tls: {0}")]
    Tls(#[from] crate::net::tls::TlsError),
    #[error("outbound TLS: {0}")]
    OutboundTls(crate::net::tls::TlsError),
    #[error("cannot start the password-hash threads: {0}")]
    HashPool(std::io::Error),
    #[error(transparent)]
    Dkim(#[from] crate::sender_auth::sign::KeyError),
    #[error("dmarc reports: {0}")]
    DmarcReports(String),
    #[error("web: {0}")]
    Web(String),
    #[error("encryption keys: {0}")]
    Keys(String),
    #[error("cluster directory: {0}")]
    ClusterDirectory(String),
    #[error("signature checks: {0}")]
    Signatures(String),
    #[error("cluster: {0}")]
    Cluster(String),
}

impl From<SpoolError> for ServerError {
    fn from(e: SpoolError) -> Self {
        ServerError::Spool(e)
    }
}

/// Raises the soft `nofile` limit to the hard one: every connection is a descriptor, and
/// the soft default (often 1024) would refuse clients long before
/// `server.connections_per_core_max`. The hard limit is the operator's (systemd's
/// `LimitNOFILE`; `relay tune check` compares it with the config).
fn raise_nofile() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        if let Err(error) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!(%error, "cannot raise the nofile soft limit");
        }
    }
    tracing::debug!(nofile = ?getrlimit(Resource::Nofile).current, "descriptor limit");
}

/// The SMTP session settings (`Config::session_config`) with the per-address message rate:
/// one table for every shard, so a fresh one per call (the server calls this once).
pub fn session_config(
    config: &Config,
    hostname: &str,
    mailboxes: Option<crate::smtp::Mailboxes>,
) -> SessionConfig {
    SessionConfig {
        message_rate: config.smtp.message_rate().map(|(max, window)| {
            let prefix = ClientPrefix::new(config.server.client_ipv6_prefix);
            crate::smtp::RateGate(crate::server::admission::MessageRate::new(
                max, window, prefix,
            ))
        }),
        ..config.session_config(hostname, mailboxes)
    }
}

/// The delivery side's shared settings and the cross-core mesh.
pub fn delivery_shared(
    config: &Config,
    hostname: &str,
    shards: usize,
    mailboxes: Option<crate::smtp::Mailboxes>,
) -> Result<DeliveryShared, ServerError> {
    let d = &config.delivery;
    let routes = config
        .relay
        .routes
        .compile()
        .map_err(|e| ServerError::Routes(e.to_string()))?;
    Ok(DeliveryShared {
        mesh: Mesh::new(
            shards,
            QueueGauge::new(d.queued_messages_max, d.queued_bytes_max.0),
        ),
        routes,
        schedule: d.schedule(),
        dsn_policy: d.dsn_policy(),
        dsn_return_max: d.dsn_return_max(),
        resolve_limits: d.resolve_limits(),
        destination_limits: d.destination_limits(),
        destination_spread: d.destination_spread,
        destinations_max: d.destinations_max,
        client: Arc::new(d.client_config(hostname)),
        connect_timeout: d.connect_timeout.0,
        client_tls: crate::net::tls::ClientTls::load(config.tls.ca_file.as_deref())
            .map_err(ServerError::OutboundTls)?,
        tls_handshake_timeout: config.tls.handshake_timeout.0,
        tls_failure_hold: d.tls_failure_hold.0,
        dns_servers: config.server.dns_servers.clone(),
        hostname: hostname.to_string(),
        own_addresses: Default::default(),
        local_domains: config.local.domains.clone(),
        mailboxes,
        keys: None,
        metrics: None,
        upkeep: d.upkeep(),
        cluster: None,
        limits: Default::default(),
    })
}

/// Runs the relay until a signal stops it: open, bind, start, serve, drain, close.
pub fn run(config: Config) -> Result<(), ServerError> {
    let config = Arc::new(config);
    let engine =
        choose_engine(config.server.io, probe::probe).map_err(ServerError::UringRequired)?;
    let shards = config.cores();
    let hostname = config.hostname();
    if engine == Engine::Epoll {
        // The body reader pool starts here, on the main thread, so its threads are not
        // pinned to the first shard's core (threads inherit the affinity of their creator).
        crate::runtime::file_read::start_pool();
    }
    raise_nofile();
    // Signals are routed to us before anything starts, so an early SIGTERM is not lost.
    let signals = Signals::new([SIGTERM, SIGINT, SIGHUP]).map_err(ServerError::Signals)?;

    let stores = open_stores(&config, shards)?;
    let server_tls = load_certificate(&config)?;
    let signing = signing::SigningShared::new(&config)?;
    let sockets = bind_listeners(&config, shards)?;
    let own = own_addresses(&sockets);
    let delivery = build_delivery(&config, &hostname, shards, &stores, own, signing.resign())?;
    rebuild_mail_store(&stores)?;
    let startup = rebuild_from_spool(&stores, &delivery, shards);
    let admin = start_admin(&config, &stores, &delivery)?;
    let (phase_tx, phase_rx) = watch::channel(Phase::Running);
    let contexts = build_contexts(
        &config, hostname, &stores, delivery, server_tls, signing, phase_rx,
    )?;

    let web = web_store::Web::start(&config, &contexts)?;

    let (events_tx, events_rx) = channel::unbounded();
    let threads = start_shards(engine, sockets, startup, &contexts, &events_tx)?;
    drop(events_tx);
    if let Err(error) = wait_ready(&events_rx, shards) {
        let _ = phase_tx.send(Phase::Stopping);
        web.into_iter().for_each(web_store::Web::stop);
        let _ = close(threads, contexts, admin, None, stores);
        return Err(error);
    }
    let compactor = Compactor::start(Arc::clone(&stores.spool), config.spool.compact_interval.0);
    let reporter = start_reporter(&config, &contexts)?;
    tracing::info!(engine = %engine, shards, hostname = %contexts.hostname, "relay ready");
    if engine == Engine::Epoll {
        tracing::info!("running on the epoll fallback");
    }

    let signal_rx = forward_signals(signals)?;
    let died = serve_until_signal(
        &signal_rx,
        &events_rx,
        contexts.server_tls.as_ref(),
        &contexts.signing,
        &contexts.keys,
    );
    let _ = phase_tx.send(Phase::Draining);
    drain(
        &events_rx,
        &signal_rx,
        &phase_tx,
        shards - usize::from(died.is_some()),
        config.server.drain_timeout.0,
    );
    // Peers see this node down at once, not after its lease.
    stores.node.stop();
    // Before the spool closes: the web side's store thread appends to it.
    web.into_iter().for_each(web_store::Web::stop);
    // The shards have exited: no more observations; the reporter writes its counts last.
    if let Some(reporter) = reporter {
        reporter.stop();
    }
    close(threads, contexts, admin, Some(compactor), stores)?;
    match died {
        Some(shard) => Err(ServerError::ShardDied(shard)),
        None => {
            tracing::info!("stopped: spool is durable");
            Ok(())
        }
    }
}

/// What the relay keeps its state in: the users, the maildrops, the spool and the metrics
/// that observe its commits.
struct Stores {
    directory: SharedDirectory,
    /// Users' public keys and encryption choices (`[encryption]`).
    keys: Arc<KeyStore>,
    mail_store: Arc<MailStore>,
    spool: Arc<Spool>,
    metrics: Arc<Metrics>,
    /// This node's name and its mutual-TLS files, when it is a cluster node with them.
    cluster: Option<(String, crate::net::tls::ClusterTls)>,
    /// The thread following the cluster's PostgreSQL directory (`[cluster.postgres]`).
    _directory_follower: Option<crate::cluster::directory::Refresher>,
    /// The cluster's shared limits and this node's lease (local limits without a cluster).
    node: crate::cluster::node::Node,
}

/// A cluster node's name and mutual TLS (`[cluster]` with `cert`, `key` and `ca`); `None`
/// without a cluster. A node without the TLS files cannot reach its peers: its users are
/// all treated as homed here (warned).
fn load_cluster(
    config: &Config,
) -> Result<Option<(String, crate::net::tls::ClusterTls)>, ServerError> {
    let cluster = &config.cluster;
    let Some(node) = cluster.node.clone() else {
        return Ok(None);
    };
    let (Some(cert), Some(key), Some(ca)) = (&cluster.cert, &cluster.key, &cluster.ca) else {
        tracing::warn!(node = %node, "cluster.cert, cluster.key and cluster.ca are not all set: mail for users homed on other nodes cannot be relayed there, and is kept here");
        return Ok(None);
    };
    let tls = crate::net::tls::ClusterTls::load(cert, key, ca)
        .map_err(|e| ServerError::Cluster(e.to_string()))?;
    Ok(Some((node, tls)))
}

/// This node's cluster services (`[cluster]` with `[cluster.redis]`): the Redis client,
/// the shared limits and the membership lease publishing the node's figures.
fn start_cluster(
    config: &Config,
    metrics: &Arc<Metrics>,
) -> Result<crate::cluster::node::Node, ServerError> {
    let (failures, up) = metrics.cluster_redis();
    let source = Arc::clone(metrics);
    let figures: crate::cluster::membership::Figures = Arc::new(move || {
        let stat = source.stat();
        let mut figures = crate::cluster::membership::NodeFigures::default();
        for core in &stat.cores {
            figures.queue += core.queue_entries;
            figures.smtp_open += core.smtp.open;
            figures.pop3_open += core.pop3.open;
            figures.imap_open += core.imap.open;
            figures.messages += core.transactions.get("queued").copied().unwrap_or(0);
            figures.deliveries += core.deliveries.values().sum::<u64>();
        }
        figures
    });
    let metrics = crate::cluster::redis::RedisMetrics { failures, up };
    crate::cluster::node::Node::start(&config.cluster, metrics, figures)
        .map_err(|e| ServerError::Cluster(e.to_string()))
}

/// Loads the users and recovers the spool (each shard's log is read and checked).
fn open_stores(config: &Config, shards: usize) -> Result<Stores, ServerError> {
    let cluster = crate::cluster::directory::ClusterDirectory::open(config)
        .map_err(|e| ServerError::ClusterDirectory(e.to_string()))?;
    let (directory, keys) = match &cluster {
        Some(cluster) => {
            let keys = KeyStore::with_backend(
                cluster.key_backend(),
                cluster.directory(),
                crate::mailbox::keys::policy(config),
                SystemTime::now(),
            );
            (cluster.directory(), keys)
        }
        None => {
            let directory = SharedDirectory::new(crate::mailbox::load_directory(config)?);
            let keys = crate::mailbox::keys::open(config, directory.clone(), SystemTime::now())
                .map_err(|e| ServerError::Keys(e.to_string()))?;
            (directory, keys)
        }
    };
    let encrypting = keys.all().len();
    if encrypting > 0 {
        tracing::info!(users = encrypting, dir = %keys.location(), "users' keys loaded");
    }
    let keys = Arc::new(keys);
    let mail_store = MailStore::new();
    mail_store
        .folders()
        .set_max_folders(config.imap.folders_max);
    let (spool, report) = Spool::open(config.spool.spool_config(), shards)?;
    tracing::info!("spool {}: {report}", config.spool.dir.display());
    // After the spool directory exists: the follower writes its cache there.
    let directory_follower = match cluster {
        Some(cluster) => Some(
            cluster
                .start(Arc::clone(&keys))
                .map_err(ServerError::Thread)?,
        ),
        None => None,
    };
    let spool = Arc::new(spool);
    let metrics = Arc::new(Metrics::new(shards, Some(&spool)));
    for shard in 0..shards {
        spool
            .shard(shard)
            .observe_commits(metrics.core(shard).commit_observer());
    }
    if !config.spool.fsync {
        tracing::warn!(
            "spool.fsync = false: a 250 no longer means the message is on disk (benchmarks only)"
        );
    }
    let cluster = start_cluster(config, &metrics)?;
    Ok(Stores {
        directory,
        keys,
        mail_store,
        spool,
        metrics,
        cluster: load_cluster(config)?,
        _directory_follower: directory_follower,
        node: cluster,
    })
}

/// The server certificate of `[tls]`, if one is named.
fn load_certificate(config: &Config) -> Result<Option<ServerTls>, ServerError> {
    match (&config.tls.cert, &config.tls.key) {
        (Some(cert), Some(key)) => {
            let tls = ServerTls::load(cert, key)?;
            tracing::info!(cert = %cert.display(), "TLS certificate loaded");
            Ok(Some(tls))
        }
        _ => Ok(None),
    }
}

/// One shard's listening sockets: the socket, its protocol, and whether it is implicit-TLS.
type ShardSockets = Vec<(std::net::TcpListener, Protocol, bool)>;

/// Binds every configured address once per shard (`SO_REUSEPORT`), so each shard accepts on
/// its own socket.
fn bind_listeners(config: &Config, shards: usize) -> Result<Vec<ShardSockets>, ServerError> {
    let mut per_shard: Vec<ShardSockets> = (0..shards).map(|_| Vec::new()).collect();
    let listen = [
        (&config.smtp.listen, Protocol::Smtp, false, "smtp"),
        (&config.smtp.tls_listen, Protocol::Smtp, true, "smtps"),
        (&config.pop3.listen, Protocol::Pop3, false, "pop3"),
        (&config.pop3.tls_listen, Protocol::Pop3, true, "pop3s"),
        (&config.imap.listen, Protocol::Imap, false, "imap"),
        (&config.imap.tls_listen, Protocol::Imap, true, "imaps"),
    ];
    // The cluster listener, only on a node that can speak its mutual TLS.
    let cluster: Vec<std::net::SocketAddr> = config
        .cluster
        .listen
        .filter(|_| config.cluster.enabled())
        .into_iter()
        .collect();
    let mut listen: Vec<_> = listen
        .into_iter()
        .chain([(&cluster, Protocol::Cluster, false, "cluster")])
        .flat_map(|(addrs, protocol, implicit_tls, name)| {
            addrs
                .iter()
                .map(move |addr| (*addr, protocol, implicit_tls, name))
        })
        .collect();
    // Fixed ports first: a port-0 listener then gets a port no fixed one has (the kernel's
    // choice of a free port never joins a SO_REUSEPORT group), rather than the other way round.
    listen.sort_by_key(|(addr, ..)| addr.port() == 0);
    let mut bound: Vec<(std::net::SocketAddr, &str)> = Vec::new();
    for (addr, protocol, implicit_tls, name) in listen {
        if let Some((other, other_name)) = bound.iter().find(|(b, _)| overlaps(*b, addr)) {
            return Err(ServerError::ListenerClash {
                first: (*other_name).to_owned(),
                first_addr: *other,
                second: name.to_owned(),
                second_addr: addr,
            });
        }
        let set = bind_shared(addr, shards)?;
        tracing::info!(protocol = name, addr = %set.addr, "listening");
        bound.push((set.addr, name));
        for (i, socket) in set.sockets.into_iter().enumerate() {
            per_shard[i].push((socket, protocol, implicit_tls));
        }
    }
    Ok(per_shard)
}

/// Who "myself" is for delivery's loop check: the SMTP listeners as bound (port 0
/// resolved) and the machine's interface addresses (without them only the listeners and
/// loopback count, with a warning).
fn own_addresses(sockets: &[ShardSockets]) -> OwnAddresses {
    let listeners = sockets.first().into_iter().flatten();
    let listeners = listeners
        .filter(|(_, protocol, _)| *protocol == Protocol::Smtp)
        .filter_map(|(socket, _, _)| socket.local_addr().ok())
        .collect();
    let interfaces = crate::net::interfaces::addresses().unwrap_or_else(|error| {
        tracing::warn!(%error, "cannot list the interface addresses; the mail-loop check knows only the listeners");
        Vec::new()
    });
    OwnAddresses::new(listeners, interfaces)
}

/// The delivery side's shared state, with local delivery and the metrics wired in.
fn build_delivery(
    config: &Config,
    hostname: &str,
    shards: usize,
    stores: &Stores,
    own_addresses: OwnAddresses,
    resign: crate::smtp::client::Resign,
) -> Result<Arc<DeliveryShared>, ServerError> {
    let mut delivery = delivery_shared(config, hostname, shards, Some(local_mailboxes(stores)))?;
    delivery.metrics = Some(Arc::clone(&stores.metrics));
    delivery.keys = Some(Arc::clone(&stores.keys));
    delivery.limits = stores.node.limits.clone();
    delivery.own_addresses = own_addresses;
    delivery.cluster =
        stores
            .cluster
            .as_ref()
            .map(|(node, tls)| crate::delivery::cluster::ClusterRoutes {
                node: node.clone(),
                nodes: config
                    .cluster
                    .nodes
                    .iter()
                    .map(|n| (n.name.clone(), n.cluster))
                    .collect(),
                directory: stores.directory.clone(),
                tls: tls.clone(),
            });
    if let Some(routes) = &delivery.cluster {
        for user in stores.directory.current().users() {
            if let Some(home) = user
                .home
                .as_deref()
                .filter(|h| !routes.nodes.contains_key(*h))
            {
                tracing::warn!(user = %user.name, home = %crate::logsafe::Safe(home), "the user's home node is not in cluster.nodes: their mail waits in the queue");
            }
        }
    }
    delivery.client = Arc::new(crate::smtp::client::ClientConfig {
        resign,
        ..(*delivery.client).clone()
    });
    Ok(Arc::new(delivery))
}

fn local_mailboxes(stores: &Stores) -> Mailboxes {
    homed_mailboxes(stores, false)
}

/// Local recipients as this node sees them: in a cluster, users homed elsewhere are
/// forwarded there (`peer: false`) or, on the cluster listener, refused (`peer: true`).
fn homed_mailboxes(stores: &Stores, peer: bool) -> Mailboxes {
    let homes = match &stores.cluster {
        Some((node, _)) => crate::mailbox::Homes::Node {
            node: node.clone(),
            peer,
        },
        None => crate::mailbox::Homes::All,
    };
    Mailboxes(Arc::new(LocalDelivery::with_homes(
        stores.directory.clone(),
        Arc::clone(&stores.mail_store),
        homes,
    )))
}

/// Refills each core's delivery queue from the spool, in one pass over its index (no log is
/// read again).
fn rebuild_from_spool(
    stores: &Stores,
    delivery: &DeliveryShared,
    shards: usize,
) -> Vec<Vec<crate::delivery::Job>> {
    let mut per_core: Vec<Vec<crate::delivery::Job>> = (0..shards).map(|_| Vec::new()).collect();
    stores.spool.startup_view(|message| {
        jobs_from_live(delivery, message, &mut per_core);
    });
    per_core
}

/// Rebuilds every user's folders from the log, and writes the checkpoints recovery decided
/// (UIDs for deliveries stored before folders existed, fresh modseqs) before anyone is
/// served, so what clients see first is what a later restart shows.
fn rebuild_mail_store(stores: &Stores) -> Result<(), ServerError> {
    let replay = stores.spool.replay()?;
    let checkpoints = stores.mail_store.recover(&replay);
    let users = stores.mail_store.folders().users().len();
    let written = checkpoints.len();
    let shard = stores.spool.shard(0);
    for checkpoint in checkpoints {
        let user = checkpoint.user.clone();
        let durable = shard
            .append_state(checkpoint.clone())?
            .blocking_recv()
            .map_err(|_| ServerError::Spool(SpoolError::Closed))?;
        durable?;
        stores
            .mail_store
            .folders()
            .with(&user, |s| s.apply(&checkpoint));
    }
    // Mailbox copies delivered, and those deleted since (POP3 deletions, released bodies).
    let deliveries: usize = replay.messages.iter().map(|m| m.mailboxes.len()).sum();
    tracing::info!(
        deliveries,
        deletions = replay.deletions.len(),
        users,
        checkpoints = written,
        "maildrops rebuilt from the spool"
    );
    Ok(())
}

/// The admin endpoint (`[admin]`): the socket (default `<spool.dir>/admin.sock`) and, when
/// configured, the loopback TCP listener with its token; the metrics' routes and the queue
/// control's on both.
fn start_admin(
    config: &Config,
    stores: &Stores,
    delivery: &DeliveryShared,
) -> Result<Option<Admin>, ServerError> {
    if !config.admin.enabled {
        return Ok(None);
    }
    let token = match (&config.admin.listen, &config.admin.token_file) {
        (Some(_), Some(path)) => Some(AdminToken::load(path).map_err(AdminError::from)?),
        (None, Some(_)) => {
            tracing::warn!("admin.token_file is set but admin.listen is not: the token is unused (the socket needs none)");
            None
        }
        _ => None,
    };
    let settings = AdminSettings {
        socket: Some(config.admin.socket_path(&config.spool.dir)),
        listen: config.admin.listen,
        token,
    };
    let mut routes = crate::admin::metrics_routes(&stores.metrics);
    routes.extend(crate::admin::queue::queue_routes(Arc::new(
        crate::admin::queue::QueueService {
            mesh: Arc::clone(&delivery.mesh),
            spool: Arc::clone(&stores.spool),
        },
    )));
    if let Some(drain) = drain::Drain::new(
        config,
        Arc::clone(&delivery.mesh),
        Arc::clone(&stores.spool),
    ) {
        routes.extend(crate::admin::node::node_routes(Arc::new(
            drain::DrainControl(drain),
        )));
    }
    routes.extend(crate::admin::user_move::move_routes(Arc::new(
        user_move::MoveControl(user_move::Mover::new(
            config,
            stores.cluster.as_ref().map(|(_, tls)| tls),
            Arc::clone(&stores.mail_store),
            Arc::clone(&stores.spool),
            stores.directory.clone(),
        )),
    )));
    routes.extend(crate::admin::mailbox::mailbox_routes(
        Arc::clone(&stores.mail_store),
        stores.directory.clone(),
    ));
    let admin = Admin::start(settings, routes)?;
    if let Some(path) = admin.socket_path() {
        tracing::info!(protocol = "admin", socket = %path.display(), "listening");
    }
    if let Some(addr) = admin.local_addr() {
        if config.admin.token_file.is_none() {
            tracing::info!(
                "admin.listen serves /metrics only: set admin.token_file for the other routes over TCP"
            );
        }
        tracing::info!(protocol = "admin", addr = %addr, "listening");
    }
    Ok(Some(admin))
}

/// What every shard's context is made from: built once, shared (`Arc`) by the shards.
struct Contexts {
    config: Arc<Config>,
    hostname: String,
    session: Arc<SessionConfig>,
    auth: AuthContexts,
    clients: Arc<ClientTable>,
    shared: Arc<admission::Shared>,
    delivery: Arc<DeliveryShared>,
    server_tls: Option<ServerTls>,
    phase: watch::Receiver<Phase>,
    spool: Arc<Spool>,
    mail_store: Arc<MailStore>,
    keys: Arc<KeyStore>,
    metrics: Arc<Metrics>,
    signing: Arc<signing::SigningShared>,
    verifying: Arc<verifying::VerifyingShared>,
    signatures: Arc<signatures::SignaturesShared>,
    dmarc_reports: Arc<crate::sender_auth::report::Recorder>,
    cluster: Option<Arc<cluster_listener::ClusterListener>>,
    /// `[cluster]`: where logins of users homed on other nodes go, and how.
    login_proxy: Option<Arc<login_proxy::LoginProxy>>,
    /// `server.spread_connections` with more than one shard.
    balance: Option<Arc<balance::Balance>>,
    /// The web server's session table and intake, once it runs (web logins proxied here
    /// start theirs in it; their requests come in through the intake).
    web_home: WebHome,
}

/// The web server's side for web sessions proxied here, set when the web server starts
/// (empty without one).
pub type WebHome = Arc<std::sync::OnceLock<WebAtHome>>;

/// What the cluster listener needs of the web server: its session table (a web login
/// proxied here starts its session in it, `login_in`) and its intake (the session's
/// requests, `web_in`).
pub struct WebAtHome {
    pub sessions: Arc<std::sync::Mutex<crate::web::session::SessionTable>>,
    pub intake: crate::web::serve::WebIntake,
}

/// The SMTP session settings (with the ingest gate), the login contexts and the connection
/// table every shard shares.
fn build_contexts(
    config: &Arc<Config>,
    hostname: String,
    stores: &Stores,
    delivery: Arc<DeliveryShared>,
    server_tls: Option<ServerTls>,
    signing: Arc<signing::SigningShared>,
    phase: watch::Receiver<Phase>,
) -> Result<Arc<Contexts>, ServerError> {
    let mut session = session_config(config, &hostname, Some(local_mailboxes(stores)));
    session.ingest = Some(Gate(delivery.mesh.clone()));
    session.body_memory = Some(crate::smtp::MemoryGate(Arc::new(
        body_budget::BodyBudget::new(config.smtp.body_memory_max.0, stores.metrics.body_memory()),
    )));
    session
        .check()
        .map_err(|e| ServerError::Session(e.to_string()))?;
    let prefix = ClientPrefix::new(config.server.client_ipv6_prefix);
    let shared = admission::Shared::new(
        stores.node.limits.clone(),
        prefix,
        config.smtp.message_rate(),
        config.server.connections_per_ip_max,
    );
    if shared.limits().is_shared() {
        session.message_rate = session
            .message_rate
            .map(|gate| crate::smtp::RateGate(Arc::new(admission::SharedRate(gate.0))));
    }
    let auth = AuthContexts::new(config, &hostname, stores, server_tls.is_some())?;
    let dmarc_reports = dmarc_reports::recorder(config)?;
    dmarc_reports.count_drops_in(stores.metrics.dmarc_report_dropped());
    let verifying = verifying::VerifyingShared::new(config, Arc::clone(&dmarc_reports));
    let signatures = signatures::SignaturesShared::new(config, &hostname)
        .map_err(|e| ServerError::Signatures(e.to_string()))?;
    let cluster = match (&stores.cluster, config.cluster.listen) {
        (Some((node, tls)), Some(_)) => Some(Arc::new(cluster_listener::ClusterListener {
            node: node.clone(),
            tls: tls.clone(),
            server_tls: cluster_listener::server_tls(tls),
            session: Arc::new(cluster_listener::session_config(
                &session,
                homed_mailboxes(stores, true),
            )),
            seen: cluster_listener::Seen::open(&config.spool.dir, Some(&stores.spool))
                .map_err(|e| ServerError::Cluster(e.to_string()))?,
            spool_dir: config.spool.dir.clone(),
            xfer: Arc::new(
                xfer_in::XferLog::open(&config.spool.dir, Some(&stores.spool))
                    .map_err(|e| ServerError::Cluster(e.to_string()))?,
            ),
        })),
        _ => None,
    };
    let login_proxy =
        login_proxy::LoginProxy::new(&config.cluster, stores.cluster.as_ref().map(|(_, tls)| tls))
            .map(Arc::new);
    // One shard has nowhere to send a connection.
    let balance = (config.server.spread_connections && config.cores() > 1)
        .then(|| Arc::new(balance::Balance::new(config.cores())));
    Ok(Arc::new(Contexts {
        balance,
        cluster,
        login_proxy,
        web_home: WebHome::default(),
        signatures,
        dmarc_reports,
        signing,
        verifying,
        config: Arc::clone(config),
        session: Arc::new(session),
        shared,
        auth,
        clients: ClientTable::new(
            config.server.connections_per_ip_max,
            ClientPrefix::new(config.server.client_ipv6_prefix),
        ),
        delivery,
        server_tls,
        phase,
        spool: Arc::clone(&stores.spool),
        mail_store: Arc::clone(&stores.mail_store),
        keys: Arc::clone(&stores.keys),
        metrics: Arc::clone(&stores.metrics),
        hostname,
    }))
}

/// The DMARC reporter (`[dmarc] reports`), sending through the spool and delivery, each
/// report signed with the `[[dkim.sign]]` key of its From domain (the keys in use when it is
/// sent, so a SIGHUP rotation applies to reports too).
fn start_reporter(
    config: &Config,
    contexts: &Contexts,
) -> Result<Option<dmarc_reports::Reporter>, ServerError> {
    let outbound = dmarc_reports::Outbound {
        spool: Arc::clone(&contexts.spool),
        delivery: Arc::clone(&contexts.delivery),
        mail_store: Arc::clone(&contexts.mail_store),
    };
    let signer: Option<crate::sender_auth::report::ReportSigner> = (!config.dkim.sign.is_empty())
        .then(|| {
            let signing = Arc::clone(&contexts.signing);
            let sign: crate::sender_auth::report::ReportSigner =
                Arc::new(move |message: &[u8]| {
                    signing.signer().sign(message, std::time::SystemTime::now())
                });
            sign
        });
    dmarc_reports::Reporter::start(
        config,
        Arc::clone(&contexts.dmarc_reports),
        outbound,
        signer,
    )
}

/// What POP3 logins and SMTP AUTH share across shards: the POP3 session settings, the
/// users, the password-hash pool, and the failure tables of each.
struct AuthContexts {
    pop3_config: Arc<crate::pop3::SessionConfig>,
    directory: SharedDirectory,
    pool: Arc<HashPool>,
    pop3_failures: Arc<AuthFailures>,
    smtp_failures: Arc<AuthFailures>,
    imap_failures: Arc<AuthFailures>,
    /// The IMAP session settings: LOGINDISABLED until TLS, and with passwords in clear.
    imap_config: Arc<crate::imap::SessionConfig>,
    imap_plaintext: Arc<crate::imap::SessionConfig>,
    imap_views: Arc<imap_views::SharedViews>,
}

impl AuthContexts {
    /// Starts the hash pool: from the main thread, before any shard is pinned (and its
    /// threads widen their CPU set to the process's anyway).
    fn new(
        config: &Config,
        hostname: &str,
        stores: &Stores,
        tls: bool,
    ) -> Result<Self, ServerError> {
        let directory = &stores.directory;
        if config.pop3.listens_remotely() && !tls && !config.pop3.allow_plaintext_auth {
            tracing::warn!(
                "POP3 listens beyond loopback without a TLS certificate: clients there can log in only with APOP (set [tls] cert/key, or pop3.allow_plaintext_auth = true)"
            );
        }
        let pool = HashPool::start(
            config.server.auth_hash_threads(),
            config.server.auth_hash_queue_max,
            stores.metrics.hash_pool(),
        )
        .map_err(ServerError::HashPool)?;
        let prefix = ClientPrefix::new(config.server.client_ipv6_prefix);
        Ok(AuthContexts {
            pop3_config: Arc::new(config.pop3.session_config(
                hostname,
                directory.current().apop_available(),
                tls,
            )),
            directory: directory.clone(),
            pool,
            pop3_failures: AuthFailures::new_shared(
                config.pop3.auth_failures_per_ip_max,
                config.pop3.auth_failures_per_user_max,
                config.pop3.auth_failure_window.0,
                prefix,
                &stores.node.limits,
                "pop3",
            ),
            smtp_failures: AuthFailures::new_shared(
                config.smtp.auth_failures_per_ip_max,
                config.smtp.auth_failures_per_user_max,
                config.smtp.auth_failure_window.0,
                prefix,
                &stores.node.limits,
                "smtp",
            ),
            imap_failures: AuthFailures::new_shared(
                config.imap.auth_failures_per_ip_max,
                config.imap.auth_failures_per_user_max,
                config.imap.auth_failure_window.0,
                prefix,
                &stores.node.limits,
                "imap",
            ),
            imap_config: Arc::new(config.imap.session_config(hostname, tls)),
            imap_plaintext: Arc::new(crate::imap::SessionConfig {
                plaintext_auth: true,
                ..config.imap.session_config(hostname, tls)
            }),
            imap_views: Arc::default(),
        })
    }

    /// One shard's POP3, IMAP and SMTP AUTH contexts.
    fn shard(&self, config: &Config) -> (Pop3Context, ImapContext, Auth) {
        let pop3 = Pop3Context {
            config: Arc::clone(&self.pop3_config),
            idle_timeout: config.pop3.idle_timeout.0,
            command_timeout: config.pop3.command_timeout.0,
            allow_plaintext_auth: config.pop3.allow_plaintext_auth,
        };
        let auth = Auth {
            directory: self.directory.clone(),
            pool: Arc::clone(&self.pool),
            smtp: Policy {
                failures: Arc::clone(&self.smtp_failures),
                failure_delay: config.smtp.auth_failure_delay.0,
            },
            pop3: Policy {
                failures: Arc::clone(&self.pop3_failures),
                failure_delay: config.pop3.auth_failure_delay.0,
            },
            imap: Policy {
                failures: Arc::clone(&self.imap_failures),
                failure_delay: config.imap.auth_failure_delay.0,
            },
        };
        let imap = ImapContext {
            config: Arc::clone(&self.imap_config),
            plaintext: Arc::clone(&self.imap_plaintext),
            idle_timeout: config.imap.idle_timeout.0,
            command_timeout: config.imap.command_timeout.0,
            allow_plaintext_auth: config.imap.allow_plaintext_auth,
            views: Arc::clone(&self.imap_views),
        };
        (pop3, imap, auth)
    }
}

impl Contexts {
    /// How shard `index` makes its context on its own thread (its admission and block-list
    /// state are thread-local).
    fn maker(self: &Arc<Self>, index: usize) -> Box<dyn FnOnce() -> ShardContext + Send> {
        let contexts = Arc::clone(self);
        Box::new(move || contexts.shard(index))
    }

    fn shard(&self, index: usize) -> ShardContext {
        let Config {
            server,
            smtp,
            pop3,
            imap,
            tls,
            ..
        } = &*self.config;
        let (pop3_context, imap_context, auth) = self.auth.shard(&self.config);
        ShardContext {
            shard: index,
            hostname: self.hostname.clone(),
            session_config: Arc::clone(&self.session),
            command_timeout: smtp.command_timeout.0,
            data_timeout: smtp.data_timeout.0,
            data_rate_min: smtp.data_rate_min.0,
            smtp_proxy_protocol: smtp.proxy_protocol,
            pop3_proxy_protocol: pop3.proxy_protocol,
            imap_proxy_protocol: imap.proxy_protocol,
            smtp_proxy_local_trust: smtp.allow_proxy_local_trust,
            pop3_proxy_local_trust: pop3.allow_proxy_local_trust,
            imap_proxy_local_trust: imap.allow_proxy_local_trust,
            spool: self.spool.shard(index),
            store: Arc::clone(&self.spool),
            mail_store: Arc::clone(&self.mail_store),
            keys: Arc::clone(&self.keys),
            pop3: pop3_context,
            imap: imap_context,
            auth,
            admission: match &self.balance {
                Some(balance) => Admission::counted_in(
                    server.connections_per_core_max,
                    Arc::clone(&self.clients),
                    balance.open_count(index),
                ),
                None => Admission::new(server.connections_per_core_max, Arc::clone(&self.clients)),
            },
            balance: self.balance.clone(),
            shared: Arc::clone(&self.shared),
            phase: self.phase.clone(),
            delivery: Arc::clone(&self.delivery),
            metrics: self.metrics.core(index),
            server_tls: self.server_tls.clone(),
            tls_handshake_timeout: tls.handshake_timeout.0,
            dnsbl: dnsbl::Dnsbl::new(
                smtp.dnsbl_zones.clone(),
                smtp.dnsbl_timeout.0,
                server.dns_servers.clone(),
            ),
            signing: signing::Signing::for_shard(&self.signing),
            verifying: verifying::Verifying::for_shard(&self.verifying),
            signatures: signatures::Signatures::for_shard(&self.signatures),
            cluster: self.cluster.clone(),
            // The shard's own engine (and its reads) replace these in shard::spawn.
            engine: Engine::Epoll,
            reads: crate::runtime::file_read::FileReads::Inline,
            login_proxy: self.login_proxy.clone(),
            web_home: Arc::clone(&self.web_home),
        }
    }
}

/// Starts one pinned thread per shard with its sockets, its share of the rebuilt queue
/// and its context.
fn start_shards(
    engine: Engine,
    sockets: Vec<ShardSockets>,
    startup: Vec<Vec<crate::delivery::Job>>,
    contexts: &Arc<Contexts>,
    events: &channel::Sender<ShardEvent>,
) -> Result<Vec<std::thread::JoinHandle<()>>, ServerError> {
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let mut startup = startup.into_iter();
    let mut threads = Vec::new();
    for (index, sockets) in sockets.into_iter().enumerate() {
        let seed = ShardSeed {
            placement: Placement {
                index,
                core: (!cores.is_empty()).then(|| cores[index % cores.len()]),
                engine,
            },
            sockets,
            startup: startup.next().unwrap_or_default(),
            make_context: contexts.maker(index),
        };
        threads.push(shard::spawn(seed, events.clone()).map_err(ServerError::Thread)?);
    }
    Ok(threads)
}

/// Hands the process's signals to a channel the serving loop can select on.
fn forward_signals(mut signals: Signals) -> Result<channel::Receiver<i32>, ServerError> {
    let (signal_tx, signal_rx) = channel::unbounded();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if signal_tx.send(signal).is_err() {
                    break;
                }
            }
        })
        .map_err(ServerError::Thread)?;
    Ok(signal_rx)
}

/// Serves until a stop signal (`None`), or until a shard dies (a bug: `Some(shard)`, and
/// everything stops cleanly). SIGHUP reloads the certificate, the DKIM keys and the users'
/// public keys and goes on serving.
fn serve_until_signal(
    signals: &channel::Receiver<i32>,
    events: &channel::Receiver<ShardEvent>,
    server_tls: Option<&ServerTls>,
    signing: &signing::SigningShared,
    keys: &KeyStore,
) -> Option<usize> {
    loop {
        channel::select! {
            recv(signals) -> signal => match signal {
                Ok(SIGHUP) => {
                    reload_certificate(server_tls);
                    signing.reload();
                    let users = keys.reload(SystemTime::now());
                    tracing::info!(users, "SIGHUP: users' keys reloaded");
                }
                signal => {
                    tracing::info!(signal = signal.unwrap_or(0), "shutting down: draining connections");
                    return None;
                }
            },
            recv(events) -> event => match event {
                Ok(ShardEvent::Exited(i)) | Ok(ShardEvent::Failed(i, _)) => return Some(i),
                _ => return None,
            },
        }
    }
}

/// SIGHUP: later handshakes use the certificate and key now in the files; connections
/// already up keep theirs. A file that does not load leaves the current certificate in use.
fn reload_certificate(server_tls: Option<&ServerTls>) {
    match server_tls {
        None => tracing::info!("SIGHUP: no TLS certificate configured; nothing to reload"),
        Some(tls) => match tls.reload() {
            Ok(()) => {
                tracing::info!(cert = %tls.cert_path().display(), "SIGHUP: TLS certificate reloaded")
            }
            Err(error) => {
                tracing::error!(%error, "SIGHUP: TLS certificate not reloaded; keeping the current one")
            }
        },
    }
}

/// Joins the shards, stops the admin listener and the compactor, then makes the spool
/// durable: by then nothing else holds it.
fn close(
    threads: Vec<std::thread::JoinHandle<()>>,
    contexts: Arc<Contexts>,
    admin: Option<Admin>,
    compactor: Option<Compactor>,
    stores: Stores,
) -> Result<(), SpoolError> {
    join(threads);
    drop(contexts);
    if let Some(admin) = admin {
        admin.stop();
    }
    if let Some(compactor) = compactor {
        compactor.stop();
    }
    close_spool(stores.spool)
}

/// Shards are joined by now, so this is the last holder of the spool (the compactor
/// thread has been stopped and joined too).
fn close_spool(spool: Arc<Spool>) -> Result<(), SpoolError> {
    match Arc::try_unwrap(spool) {
        Ok(spool) => spool.close(),
        // Unreachable by construction; dropping the last handle closes it all the same.
        Err(_) => Ok(()),
    }
}

/// Reclaims spool space in the background (never on a shard's thread: it reads and
/// rewrites whole segments).
struct Compactor {
    stop: Option<crossbeam::channel::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Compactor {
    fn start(spool: Arc<Spool>, interval: Duration) -> Compactor {
        let (stop, stopped) = channel::bounded::<()>(1);
        let thread = std::thread::Builder::new()
            .name("spool-compact".into())
            .spawn(move || loop {
                match stopped.recv_timeout(interval) {
                    Err(channel::RecvTimeoutError::Timeout) => match spool.compact() {
                        Ok(report) => tracing::debug!("spool compaction: {report}"),
                        Err(error) => tracing::warn!(%error, "spool compaction failed"),
                    },
                    _ => return,
                }
            })
            .ok();
        Compactor {
            stop: Some(stop),
            thread,
        }
    }

    fn stop(mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn wait_ready(events: &channel::Receiver<ShardEvent>, shards: usize) -> Result<(), ServerError> {
    let mut ready = 0;
    while ready < shards {
        match events.recv() {
            Ok(ShardEvent::Ready(shard)) => {
                tracing::debug!(shard, "shard ready");
                ready += 1;
            }
            Ok(ShardEvent::Failed(i, message)) => return Err(ServerError::ShardStart(i, message)),
            Ok(ShardEvent::Exited(i)) => return Err(ServerError::ShardDied(i)),
            Err(_) => return Err(ServerError::ShardDied(ready)),
        }
    }
    Ok(())
}

/// Waits for `running` shards to exit. Past the drain deadline every connection is told to
/// close; a second signal exits the process at once.
fn drain(
    events: &channel::Receiver<ShardEvent>,
    signals: &channel::Receiver<i32>,
    phase: &watch::Sender<Phase>,
    running: usize,
    drain_timeout: Duration,
) {
    let deadline = Instant::now() + drain_timeout;
    let mut left = running;
    let mut stopping = false;
    while left > 0 {
        let wait = if stopping {
            Duration::from_secs(3600)
        } else {
            deadline.saturating_duration_since(Instant::now())
        };
        channel::select! {
            recv(events) -> event => match event {
                Ok(ShardEvent::Exited(_)) => left -= 1,
                Ok(_) => {}
                Err(_) => return,
            },
            recv(signals) -> signal => {
                if signal == Ok(SIGHUP) {
                    continue;
                }
                tracing::warn!("second signal: exiting now without draining");
                std::process::exit(1);
            },
            default(wait) => {
                if !stopping {
                    tracing::warn!(
                        "drain timeout ({}) passed: closing remaining connections",
                        humantime::format_duration(drain_timeout)
                    );
                    let _ = phase.send(Phase::Stopping);
                    stopping = true;
                }
            },
        }
    }
}

fn join(threads: Vec<std::thread::JoinHandle<()>>) {
    for thread in threads {
        if thread.join().is_err() {
            tracing::error!("a shard thread panicked");
        }
    }
}
