//! The web runtime: a small multi-thread tokio runtime on its own thread (never a shard's),
//! one accept loop per listener, TLS by rustls with the relay's certificate, HTTP/1.1 by
//! hyper with a header-read timeout and a bound on connections. Connections that arrive
//! elsewhere are served the same way through a [`WebIntake`]: the requests of web
//! sessions proxied here from another node (`[cluster]`), which come over the cluster
//! listener's mutual TLS (`server::web_in`).

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{oneshot, Semaphore};

use super::backend::{Backend, Client};
use super::http::{router, App};
use super::session::SessionTable;

/// Connections served at once, all listeners together.
const CONNECTIONS_MAX: usize = 1024;
/// A request head must arrive within this; so must a TLS handshake.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct WebSettings {
    pub threads: usize,
    pub sessions_max: usize,
    pub session_idle: Duration,
    pub session_absolute: Duration,
    pub page_size: usize,
    pub body_max: usize,
    /// Our `Authentication-Results` authserv-id (`verify.authserv_id` or the host name).
    pub authserv_id: String,
}

/// A bound socket and whether it speaks TLS.
pub struct WebListener {
    pub socket: std::net::TcpListener,
    pub tls: bool,
}

/// The running web side; [`WebServer::stop`] ends it.
pub struct WebServer {
    sessions: Arc<Mutex<SessionTable>>,
    intake: WebIntake,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WebServer {
    /// Starts serving `listeners`; `tls` is needed when one of them is TLS.
    pub fn start(
        listeners: Vec<WebListener>,
        tls: Option<Arc<rustls::ServerConfig>>,
        backend: Arc<dyn Backend>,
        settings: WebSettings,
    ) -> io::Result<WebServer> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(settings.threads.max(1))
            .thread_name("web")
            .enable_io()
            .enable_time()
            .build()?;
        let app = Arc::new(App {
            backend,
            sessions: Arc::new(Mutex::new(SessionTable::new(
                settings.sessions_max,
                settings.session_idle,
                settings.session_absolute,
            ))),
            page_size: settings.page_size,
            authserv_id: settings.authserv_id.clone(),
        });
        let sessions = Arc::clone(&app.sessions);
        let router = router(app, settings.body_max);
        let (stop, stopped) = oneshot::channel::<()>();
        // Registered with the runtime's reactor here, so a bind problem is an error now.
        let mut bound = Vec::new();
        {
            let _entered = runtime.enter();
            for listener in listeners {
                listener.socket.set_nonblocking(true)?;
                bound.push((
                    tokio::net::TcpListener::from_std(listener.socket)?,
                    listener.tls,
                ));
            }
        }
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        // The router (and the backend it holds) lives in the runtime only: the intake's
        // handle does not keep it once the runtime stops.
        let (intake, handed) = tokio::sync::mpsc::channel(INTAKE_QUEUE);
        let intake = WebIntake { queue: intake };
        let thread = std::thread::Builder::new()
            .name("web-main".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let limit = Arc::new(Semaphore::new(CONNECTIONS_MAX));
                    let mut loops = vec![tokio::spawn(intake_loop(
                        handed,
                        router.clone(),
                        Arc::clone(&limit),
                    ))];
                    for (listener, tls) in bound {
                        let acceptor = if tls { acceptor.clone() } else { None };
                        loops.push(tokio::spawn(accept_loop(
                            listener,
                            acceptor,
                            router.clone(),
                            Arc::clone(&limit),
                        )));
                    }
                    let _ = stopped.await;
                    for l in loops {
                        l.abort();
                    }
                });
                runtime.shutdown_timeout(Duration::from_secs(2));
            })?;
        Ok(WebServer {
            sessions,
            intake,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The session table (a login proxied here from another node starts its session in it:
    /// `server::login_in`).
    pub fn sessions(&self) -> Arc<Mutex<SessionTable>> {
        Arc::clone(&self.sessions)
    }

    /// Where connections accepted elsewhere are handed over (the requests of web sessions
    /// proxied here: `server::web_in`).
    pub fn intake(&self) -> WebIntake {
        self.intake.clone()
    }

    /// Stops accepting, gives requests in flight a moment, and joins the runtime's thread.
    pub fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Connections handed over and not yet taken by the web runtime.
const INTAKE_QUEUE: usize = 64;

/// Hands connections accepted elsewhere to the web runtime, which serves them as a
/// listener's: the same router, body limit, header-read timeout and bound on connections
/// (counted with the listeners'; past it a handed connection is dropped, its peer sees the
/// end).
#[derive(Clone)]
pub struct WebIntake {
    queue: tokio::sync::mpsc::Sender<(tokio::io::DuplexStream, SocketAddr)>,
}

impl WebIntake {
    /// Serves `stream` as one plain HTTP/1.1 connection from `peer` (what protects it is the
    /// caller's: for `server::web_in`, the cluster's mutual TLS). False when the web
    /// runtime has stopped or [`INTAKE_QUEUE`] connections wait already (`stream` is
    /// dropped).
    pub fn serve(&self, stream: tokio::io::DuplexStream, peer: SocketAddr) -> bool {
        self.queue.try_send((stream, peer)).is_ok()
    }
}

async fn intake_loop(
    mut handed: tokio::sync::mpsc::Receiver<(tokio::io::DuplexStream, SocketAddr)>,
    router: axum::Router,
    limit: Arc<Semaphore>,
) {
    while let Some((stream, peer)) = handed.recv().await {
        let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
            tracing::debug!(target: "relay::web", client = %peer.ip(), "handed connection dropped: connections at their limit");
            continue;
        };
        let router = router.clone();
        tokio::spawn(async move {
            let _permit = permit;
            serve_connection(stream, peer, false, router).await;
        });
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    router: axum::Router,
    limit: Arc<Semaphore>,
) {
    loop {
        let Ok(permit) = Arc::clone(&limit).acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::debug!(target: "relay::web", %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                None => serve_connection(stream, peer, false, router).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HEAD_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => serve_connection(stream, peer, true, router).await,
                        Ok(Err(error)) => {
                            tracing::debug!(target: "relay::web", client = %peer.ip(), %error, "TLS handshake failed")
                        }
                        Err(_) => {
                            tracing::debug!(target: "relay::web", client = %peer.ip(), "TLS handshake timed out")
                        }
                    }
                }
            }
        });
    }
}

async fn serve_connection<S>(stream: S, peer: SocketAddr, tls: bool, router: axum::Router)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let client = Client { peer, tls };
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(client);
        tower::ServiceExt::oneshot(router.clone(), request)
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(error) = served {
        tracing::debug!(target: "relay::web", client = %peer.ip(), %error, "connection ended");
    }
}
