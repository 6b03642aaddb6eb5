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
pub mod dnsbl;
pub mod ingest;
pub mod pop3;
pub mod shard;
pub mod smtp;
pub mod starttls;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tokio::sync::watch;

use crate::admin::{Admin, AdminError};
use crate::config::Config;
use crate::delivery::{jobs_from_live, DeliveryShared, Mesh, QueueGauge};
use crate::mailbox::{LocalDelivery, MailStore};
use crate::metrics::Metrics;
use crate::net::listener::{bind_shared, BindError};
use crate::net::tls::ServerTls;
use crate::runtime::shard::{Placement, ShardEvent};
use crate::runtime::{choose_engine, probe, Engine, Phase, UringUnavailable};
use crate::server::admission::AuthFailures;
use crate::server::admission::{Admission, ClientTable};
use crate::server::auth::{Auth, Policy};
use crate::server::shard::{Pop3Context, Protocol, ShardContext};
use crate::smtp::client::ClientConfig;
use crate::smtp::{Gate, Mailboxes, SessionConfig};
use crate::spool::{Spool, SpoolConfig, SpoolError};
use shard::ShardSeed;

/// Why the server could not start or stop cleanly; each is one clear line for the operator.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("server.io = \"uring\" but {0}")]
    UringRequired(UringUnavailable),
    #[error("spool: {0}")]
    Spool(#[from] SpoolError),
    #[error(transparent)]
    Bind(#[from] BindError),
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

/// The spool settings as the spool module takes them.
pub fn spool_config(config: &Config) -> SpoolConfig {
    SpoolConfig {
        dir: config.spool.dir.clone(),
        fsync: config.spool.fsync,
        commit_window: config.spool.commit_window.0,
        segment_size: config.spool.segment_size.0,
        appends_pending_max: config.spool.appends_pending_max,
        commit_records_max: config.spool.commit_records_max,
    }
}

/// The SMTP session settings as the protocol core takes them.
pub fn session_config(
    config: &Config,
    hostname: &str,
    mailboxes: Option<crate::smtp::Mailboxes>,
) -> SessionConfig {
    SessionConfig {
        hostname: hostname.to_string(),
        command_line_max: config.smtp.command_line_max,
        text_line_max: config.smtp.text_line_max,
        recipients_max: config.smtp.recipients_max,
        message_size_max: config.smtp.message_size_max.0,
        errors_max: config.smtp.errors_max,
        error_delay_after: config.smtp.error_delay_after,
        error_delay: config.smtp.error_delay.0,
        local_domains: config.local.domains.clone(),
        relay_networks: config.relay.allowed_networks.clone(),
        mailboxes,
        vrfy: config.smtp.vrfy,
        expn: config.smtp.expn,
        policy: config.policy.to_policy(),
        ingest: None,
        // One table for every shard: a fresh one per call (the server calls this once).
        message_rate: (config.smtp.messages_per_ip_max > 0).then(|| {
            crate::smtp::RateGate(crate::server::admission::MessageRate::new(
                config.smtp.messages_per_ip_max,
                config.smtp.message_rate_window.0,
            ))
        }),
        allow_plaintext_auth: config.smtp.allow_plaintext_auth,
        starttls: config.tls.server_enabled(),
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
    let client = ClientConfig {
        helo_name: d.helo_name.clone().unwrap_or_else(|| hostname.to_string()),
        max_recipients_per_transaction: d.recipients_per_transaction_max,
        ..ClientConfig::default()
    };
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
        destinations_max: d.destinations_max,
        client: Arc::new(client),
        connect_timeout: d.connect_timeout.0,
        client_tls: crate::net::tls::ClientTls::load(config.tls.ca_file.as_deref())
            .map_err(ServerError::OutboundTls)?,
        tls_handshake_timeout: config.tls.handshake_timeout.0,
        tls_failure_hold: d.tls_failure_hold.0,
        dns_servers: config.server.dns_servers.clone(),
        hostname: hostname.to_string(),
        local_domains: config.local.domains.clone(),
        mailboxes,
        metrics: None,
    })
}

/// Runs the relay until a signal stops it.
pub fn run(config: Config) -> Result<(), ServerError> {
    let engine =
        choose_engine(config.server.io, probe::probe).map_err(ServerError::UringRequired)?;
    let shards = config.cores();
    let hostname = config.hostname();

    raise_nofile();

    // Signals are routed to us before anything starts, so an early SIGTERM is not lost.
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP]).map_err(ServerError::Signals)?;

    let directory = crate::mailbox::load_directory(&config)?;
    let mail_store = MailStore::new();
    let (spool, report) = Spool::open(spool_config(&config), shards)?;
    tracing::info!("spool {}: {report}", config.spool.dir.display());
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

    let server_tls = match (&config.tls.cert, &config.tls.key) {
        (Some(cert), Some(key)) => {
            let tls = ServerTls::load(cert, key)?;
            tracing::info!(cert = %cert.display(), "TLS certificate loaded");
            Some(tls)
        }
        _ => None,
    };

    let mut per_shard_sockets: Vec<Vec<(std::net::TcpListener, Protocol, bool)>> =
        (0..shards).map(|_| Vec::new()).collect();
    let listen = [
        (&config.smtp.listen, Protocol::Smtp, false),
        (&config.smtp.tls_listen, Protocol::Smtp, true),
        (&config.pop3.listen, Protocol::Pop3, false),
        (&config.pop3.tls_listen, Protocol::Pop3, true),
    ];
    for (addrs, protocol, implicit_tls) in listen {
        for addr in addrs {
            let set = bind_shared(*addr, shards)?;
            let name = match (protocol, implicit_tls) {
                (Protocol::Smtp, false) => "smtp",
                (Protocol::Smtp, true) => "smtps",
                (Protocol::Pop3, false) => "pop3",
                (Protocol::Pop3, true) => "pop3s",
            };
            tracing::info!(protocol = name, addr = %set.addr, "listening");
            for (i, socket) in set.sockets.into_iter().enumerate() {
                per_shard_sockets[i].push((socket, protocol, implicit_tls));
            }
        }
    }

    let pop3_remote = config
        .pop3
        .listen
        .iter()
        .any(|addr| !addr.ip().is_loopback());
    if pop3_remote && server_tls.is_none() && !config.pop3.allow_plaintext_auth {
        tracing::warn!(
            "POP3 listens beyond loopback without a TLS certificate: clients there can log in only with APOP (set [tls] cert/key, or pop3.allow_plaintext_auth = true)"
        );
    }
    let pop3_config = Arc::new(crate::pop3::SessionConfig {
        hostname: hostname.clone(),
        apop: directory.apop_available(),
        user_command: true,
        stls: server_tls.is_some(),
    });
    let auth_failures = AuthFailures::new(
        config.pop3.auth_failures_per_ip_max,
        config.pop3.auth_failure_window.0,
    );
    let smtp_auth_failures = AuthFailures::with_users(
        config.smtp.auth_failures_per_ip_max,
        config.smtp.auth_failures_per_user_max,
        config.smtp.auth_failure_window.0,
    );
    let (phase_tx, phase_rx) = watch::channel(Phase::Running);
    let (events_tx, events_rx) = channel::unbounded();
    let clients = ClientTable::new(config.server.connections_per_ip_max);
    let local = Mailboxes(Arc::new(LocalDelivery::new(
        Arc::clone(&directory),
        Arc::clone(&mail_store),
    )));
    let mut delivery = delivery_shared(&config, &hostname, shards, Some(local.clone()))?;
    delivery.metrics = Some(Arc::clone(&metrics));
    let delivery = Arc::new(delivery);
    // Both start-up views in one pass over the index (no log is read again).
    let mut per_core: Vec<Vec<crate::delivery::Job>> = (0..shards).map(|_| Vec::new()).collect();
    let (mut delivered, mut deleted) = (0usize, 0usize);
    spool.startup_view(|message| {
        for mailbox in &message.mailboxes {
            mail_store.deliver(
                mailbox,
                crate::mailbox::MaildropItem {
                    id: message.id,
                    size: message.body_len,
                },
            );
        }
        delivered += message.mailboxes.len() + message.deleted;
        deleted += message.deleted;
        jobs_from_live(&delivery, message, &mut per_core);
    });
    tracing::info!(
        deliveries = delivered,
        deletions = deleted,
        "maildrops rebuilt from the spool"
    );
    let mut startup = per_core.into_iter();
    // Routes: the metrics' own; the queue control adds its `/queue/...` ones here.
    let mut admin_routes = crate::admin::metrics_routes(&metrics);
    admin_routes.extend(crate::admin::queue::queue_routes(Arc::new(
        crate::delivery::control::QueueService {
            mesh: Arc::clone(&delivery.mesh),
            spool: Arc::clone(&spool),
        },
    )));
    let admin = match config.admin.enabled {
        true => {
            let admin = Admin::start(config.admin.listen, admin_routes)?;
            tracing::info!(protocol = "admin", addr = %admin.local_addr(), "listening");
            Some(admin)
        }
        false => None,
    };
    let mut session = session_config(&config, &hostname, Some(local));
    session.ingest = Some(Gate(delivery.mesh.clone()));
    session
        .check()
        .map_err(|e| ServerError::Session(e.to_string()))?;
    let session = Arc::new(session);
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let mut threads = Vec::new();
    for (index, sockets) in per_shard_sockets.into_iter().enumerate() {
        let handle = spool.shard(index);
        let clients = Arc::clone(&clients);
        let session = Arc::clone(&session);
        let phase = phase_rx.clone();
        let hostname = hostname.clone();
        let mail_store = Arc::clone(&mail_store);
        let store = Arc::clone(&spool);
        let pop3 = Pop3Context {
            config: Arc::clone(&pop3_config),
            idle_timeout: config.pop3.idle_timeout.0,
            command_timeout: config.pop3.command_timeout.0,
            allow_plaintext_auth: config.pop3.allow_plaintext_auth,
        };
        let auth = Auth {
            directory: Arc::clone(&directory),
            smtp: Policy {
                failures: Arc::clone(&smtp_auth_failures),
                per_user: true,
                failure_delay: config.smtp.auth_failure_delay.0,
            },
            pop3: Policy {
                failures: Arc::clone(&auth_failures),
                per_user: false,
                failure_delay: config.pop3.auth_failure_delay.0,
            },
        };
        let core_metrics = metrics.core(index);
        let core_max = config.server.connections_per_core_max;
        let command_timeout = config.smtp.command_timeout.0;
        let data_timeout = config.smtp.data_timeout.0;
        let data_rate_min = config.smtp.data_rate_min.0;
        let smtp_proxy_protocol = config.smtp.proxy_protocol;
        let pop3_proxy_protocol = config.pop3.proxy_protocol;
        let delivery = Arc::clone(&delivery);
        let server_tls = server_tls.clone();
        let tls_handshake_timeout = config.tls.handshake_timeout.0;
        let dnsbl = dnsbl::Dnsbl::new(
            config.smtp.dnsbl_zones.clone(),
            config.smtp.dnsbl_timeout.0,
            config.server.dns_servers.clone(),
        );
        let seed = ShardSeed {
            placement: Placement {
                index,
                core: (!cores.is_empty()).then(|| cores[index % cores.len()]),
                engine,
            },
            sockets,
            startup: startup.next().unwrap_or_default(),
            make_context: Box::new(move || ShardContext {
                shard: index,
                hostname,
                session_config: session,
                command_timeout,
                data_timeout,
                data_rate_min,
                smtp_proxy_protocol,
                pop3_proxy_protocol,
                spool: handle,
                store,
                mail_store,
                pop3,
                auth,
                admission: Admission::new(core_max, clients),
                phase,
                delivery,
                metrics: core_metrics,
                server_tls,
                tls_handshake_timeout,
                dnsbl,
            }),
        };
        threads.push(shard::spawn(seed, events_tx.clone()).map_err(ServerError::Thread)?);
    }
    drop(events_tx);

    if let Err(error) = wait_ready(&events_rx, shards) {
        let _ = phase_tx.send(Phase::Stopping);
        join(threads);
        if let Some(admin) = admin {
            admin.stop();
        }
        let _ = close_spool(spool);
        return Err(error);
    }
    let compactor = Compactor::start(Arc::clone(&spool), config.spool.compact_interval.0);
    tracing::info!(engine = %engine, shards, hostname = %hostname, "relay ready");
    if engine == Engine::Epoll {
        tracing::info!("running on the epoll fallback");
    }

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

    // Serve until a stop signal, or until a shard dies (a bug: stop everything cleanly).
    // SIGHUP reloads the certificate and goes on serving.
    let died = loop {
        channel::select! {
            recv(signal_rx) -> signal => match signal {
                Ok(SIGHUP) => reload_certificate(server_tls.as_ref()),
                signal => {
                    tracing::info!(signal = signal.unwrap_or(0), "shutting down: draining connections");
                    break None;
                }
            },
            recv(events_rx) -> event => match event {
                Ok(ShardEvent::Exited(i)) | Ok(ShardEvent::Failed(i, _)) => break Some(i),
                _ => break None,
            },
        }
    };

    let _ = phase_tx.send(Phase::Draining);
    drain(
        &events_rx,
        &signal_rx,
        &phase_tx,
        shards - usize::from(died.is_some()),
        config.server.drain_timeout.0,
    );
    join(threads);
    if let Some(admin) = admin {
        admin.stop();
    }
    compactor.stop();
    close_spool(spool)?;
    match died {
        Some(shard) => Err(ServerError::ShardDied(shard)),
        None => {
            tracing::info!("stopped: spool is durable");
            Ok(())
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
