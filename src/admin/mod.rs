//! The admin endpoint: a small HTTP server for operators and their tools, on threads of its
//! own (never on a shard). It listens on a Unix socket (mode 0600, `<spool.dir>/admin.sock`
//! by default: `relay stat`, `relay queue`) and, when `admin.listen` is set, on a loopback TCP
//! address (for Prometheus). Both serve the same routes through one router;
//! [`access`] decides per transport who may use which route before a handler runs.
//!
//! Routes are `(path prefix, handler)` pairs; the longest matching prefix wins, anything else
//! is 404. The server registers `/metrics` (Prometheus text) and `/stat` (the JSON summary
//! `relay stat` prints), see [`metrics_routes`]; the queue control adds `/queue/...`. A POST's
//! JSON object body (string or number values) is merged into the query parameters.
//!
//! Exposure: the socket is the relay user's (file mode, in the 0700 spool directory); the TCP
//! listener can be reached by every local process and, through DNS rebinding or cross-site
//! requests, by web pages, so it checks `Host`, a bearer token (all but `/metrics`) and the
//! POST content type ([`access`]). Limits: request bodies up to [`BODY_MAX`] (larger get 413
//! unread); requests are served one at a time per transport (tiny_http reads headers on its
//! own small pool). A handler's panic is caught and answered 500; the listener goes on.
//!
//! [`client`] is the matching client, used by `relay stat` and `relay queue`.

pub mod access;
pub mod client;
pub mod mailbox;
pub mod node;
pub mod queue;
pub mod queue_text;
pub mod socket;
pub mod user_move;

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::logsafe::Safe;
use crate::metrics::Metrics;
use access::{AdminToken, Transport};
use socket::{BoundSocket, SocketError};

/// Largest request body read; a larger one is refused with 413 without reading it.
pub const BODY_MAX: usize = 64 * 1024;

/// One request as a handler sees it: the path without the query, the query decoded (and a
/// POST's JSON object fields after it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminRequest {
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl AdminRequest {
    /// The first value of query parameter `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminResponse {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// Adds `WWW-Authenticate: Bearer` (a 401 must say which scheme it wants).
    pub www_authenticate: bool,
}

impl AdminResponse {
    pub fn text(status: u16, body: impl Into<String>) -> AdminResponse {
        AdminResponse {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into().into_bytes(),
            www_authenticate: false,
        }
    }

    pub fn json(status: u16, body: Vec<u8>) -> AdminResponse {
        AdminResponse {
            status,
            content_type: "application/json",
            body,
            www_authenticate: false,
        }
    }

    pub fn not_found() -> AdminResponse {
        AdminResponse::text(404, "not found\n")
    }

    pub fn method_not_allowed() -> AdminResponse {
        AdminResponse::text(405, "method not allowed\n")
    }
}

pub type Handler = Arc<dyn Fn(&AdminRequest) -> AdminResponse + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(
        "admin.listen {addr}: cannot bind: {source} (another relay on this host? set \
         admin.listen to a free port, or remove it: the admin socket needs no port)"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("admin.listen {addr}: {message}")]
    Server { addr: SocketAddr, message: String },
    #[error(transparent)]
    Socket(#[from] SocketError),
    #[error(transparent)]
    Token(#[from] access::TokenError),
    #[error("cannot start the admin thread: {0}")]
    Thread(std::io::Error),
}

/// Where the admin endpoint listens (from `[admin]`).
#[derive(Debug, Clone, Default)]
pub struct AdminSettings {
    /// The Unix socket (every route).
    pub socket: Option<PathBuf>,
    /// The loopback TCP listener (`/metrics`; the rest with `token`).
    pub listen: Option<SocketAddr>,
    pub token: Option<AdminToken>,
}

/// One transport being served: its tiny_http server and the thread that answers.
struct Endpoint {
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
    socket: Option<BoundSocket>,
}

/// The running admin endpoint; [`Admin::stop`] ends it.
pub struct Admin {
    endpoints: Vec<Endpoint>,
    addr: Option<SocketAddr>,
    socket_path: Option<PathBuf>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("addr", &self.addr)
            .field("socket", &self.socket_path)
            .finish()
    }
}

impl Admin {
    /// Binds the socket and the TCP listener `settings` name and serves `routes` on a thread
    /// each. Routes are `(path prefix, handler)`; the longest matching prefix wins; 404
    /// otherwise.
    pub fn start(
        settings: AdminSettings,
        routes: Vec<(&'static str, Handler)>,
    ) -> Result<Admin, AdminError> {
        let router = Arc::new(Router::new(routes));
        let mut admin = Admin {
            endpoints: Vec::new(),
            addr: None,
            socket_path: None,
        };
        if let Some(path) = &settings.socket {
            let bound = socket::bind(path)?;
            let listener = bound.listener.try_clone().map_err(|source| {
                AdminError::Socket(SocketError::Io {
                    path: path.clone(),
                    what: "cannot use the bound socket",
                    source,
                })
            })?;
            let server = tiny_http::Server::from_listener(listener, None)
                .map_err(|e| AdminError::Socket(SocketError::Path(path.clone(), e.to_string())))?;
            admin.socket_path = Some(path.clone());
            let endpoint = Endpoint::spawn(server, Arc::clone(&router), Transport::Socket)?;
            admin.endpoints.push(Endpoint {
                socket: Some(bound),
                ..endpoint
            });
        }
        if let Some(listen) = settings.listen {
            let listener = TcpListener::bind(listen).map_err(|source| AdminError::Bind {
                addr: listen,
                source,
            })?;
            let addr = listener.local_addr().map_err(|source| AdminError::Bind {
                addr: listen,
                source,
            })?;
            let server = tiny_http::Server::from_listener(listener, None).map_err(|e| {
                AdminError::Server {
                    addr,
                    message: e.to_string(),
                }
            })?;
            admin.addr = Some(addr);
            let transport = Transport::Tcp {
                token: settings.token.clone(),
            };
            admin
                .endpoints
                .push(Endpoint::spawn(server, Arc::clone(&router), transport)?);
        }
        Ok(admin)
    }

    /// The bound TCP address (the real port when `listen` had port 0), if any.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// The admin socket's path, if any.
    pub fn socket_path(&self) -> Option<&Path> {
        self.socket_path.as_deref()
    }

    /// Stops serving and joins the admin threads (a request being served finishes first);
    /// removes the socket file.
    pub fn stop(mut self) {
        for endpoint in self.endpoints.drain(..) {
            endpoint.stop();
        }
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        for endpoint in self.endpoints.drain(..) {
            endpoint.stop();
        }
    }
}

impl Endpoint {
    fn spawn(
        server: tiny_http::Server,
        router: Arc<Router>,
        transport: Transport,
    ) -> Result<Endpoint, AdminError> {
        let server = Arc::new(server);
        let serving = Arc::clone(&server);
        let thread = std::thread::Builder::new()
            .name("admin".into())
            .spawn(move || {
                // `recv` fails only once `unblock` was called (stop) or the server is gone.
                while let Ok(request) = serving.recv() {
                    serve(&router, &transport, request);
                }
            })
            .map_err(AdminError::Thread)?;
        Ok(Endpoint {
            server,
            thread: Some(thread),
            socket: None,
        })
    }

    fn stop(mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the admin thread panicked");
            }
        }
        // Dropping the server stops its accept thread by connecting to the address it was
        // bound to; the socket was bound under a staging name and moved, so knock on the
        // real path as well, then remove the file.
        drop(self.server);
        if let Some(socket) = self.socket.take() {
            if let Ok(knock) = std::os::unix::net::UnixStream::connect(&socket.path) {
                let _ = knock.shutdown(std::net::Shutdown::Both);
            }
            socket.remove();
        }
    }
}

/// Prefix routing: longest prefix first.
struct Router {
    routes: Vec<(&'static str, Handler)>,
}

impl Router {
    fn new(mut routes: Vec<(&'static str, Handler)>) -> Router {
        routes.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        Router { routes }
    }

    fn route(&self, request: &AdminRequest) -> AdminResponse {
        let Some((_, handler)) = self
            .routes
            .iter()
            .find(|(prefix, _)| request.path.starts_with(prefix))
        else {
            return AdminResponse::not_found();
        };
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler(request))) {
            Ok(response) => response,
            Err(_) => {
                tracing::error!(path = %Safe(&request.path), "admin handler panicked");
                AdminResponse::text(500, "internal error\n")
            }
        }
    }
}

/// Splits `/path?query` and decodes the query (application/x-www-form-urlencoded).
fn split_url(url: &str) -> (String, Vec<(String, String)>) {
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let query = form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    (path.to_string(), query)
}

/// The value of header `name` (the first one), if it is valid text.
fn header<'a>(request: &'a tiny_http::Request, name: &'static str) -> Option<&'a str> {
    request
        .headers()
        .iter()
        .find(|h| h.field.equiv(name))
        .map(|h| h.value.as_str())
}

fn serve(router: &Router, transport: &Transport, mut request: tiny_http::Request) {
    let response = match read_request(&mut request, transport) {
        Ok(admin_request) => router.route(&admin_request),
        Err(response) => response,
    };
    tracing::debug!(
        method = %Safe(request.method()),
        url = %Safe(request.url()),
        status = response.status,
        "admin request"
    );
    let mut reply = tiny_http::Response::from_data(response.body)
        .with_status_code(tiny_http::StatusCode(response.status));
    if let Ok(header) =
        tiny_http::Header::from_bytes(&b"Content-Type"[..], response.content_type.as_bytes())
    {
        reply.add_header(header);
    }
    if response.www_authenticate {
        if let Ok(header) = tiny_http::Header::from_bytes(&b"WWW-Authenticate"[..], &b"Bearer"[..])
        {
            reply.add_header(header);
        }
    }
    // The client may have gone; nothing to do about it.
    let _ = request.respond(reply);
}

/// The request with its body, or the response to send instead: refused by [`access::check`]
/// (before the body is read), 413 for a body over [`BODY_MAX`], 400 for a POST body that is
/// not a JSON object.
fn read_request(
    request: &mut tiny_http::Request,
    transport: &Transport,
) -> Result<AdminRequest, AdminResponse> {
    let method = request.method().as_str().to_ascii_uppercase();
    let (path, mut query) = split_url(request.url());
    access::check(
        transport,
        &access::Facts {
            method: &method,
            path: &path,
            host: header(request, "Host"),
            authorization: header(request, "Authorization"),
            content_type: header(request, "Content-Type"),
        },
    )?;
    if request.body_length().is_some_and(|n| n > BODY_MAX) {
        return Err(AdminResponse::text(413, "request body too large\n"));
    }
    let mut body = Vec::new();
    request
        .as_reader()
        .take(BODY_MAX as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|_| AdminResponse::text(400, "cannot read the request body\n"))?;
    if body.len() > BODY_MAX {
        return Err(AdminResponse::text(413, "request body too large\n"));
    }
    if method == "POST" {
        query.extend(json_params(&body)?);
    }
    Ok(AdminRequest {
        method,
        path,
        query,
        body,
    })
}

/// A POST body's parameters: empty, or a JSON object of strings and numbers.
fn json_params(body: &[u8]) -> Result<Vec<(String, String)>, AdminResponse> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    let bad = || AdminResponse::text(400, "the body must be a JSON object of strings\n");
    let serde_json::Value::Object(fields) =
        serde_json::from_slice::<serde_json::Value>(body).map_err(|_| bad())?
    else {
        return Err(bad());
    };
    fields
        .into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => Ok((k, s)),
            serde_json::Value::Number(n) => Ok((k, n.to_string())),
            _ => Err(bad()),
        })
        .collect()
}

/// `/metrics` (Prometheus text) and `/stat` (JSON summary), both GET only.
pub fn metrics_routes(metrics: &Arc<Metrics>) -> Vec<(&'static str, Handler)> {
    let scrape = Arc::clone(metrics);
    let summary = Arc::clone(metrics);
    vec![
        (
            "/metrics",
            Arc::new(move |request: &AdminRequest| {
                if request.method != "GET" {
                    return AdminResponse::method_not_allowed();
                }
                match scrape.encode() {
                    Ok(text) => AdminResponse {
                        status: 200,
                        content_type: crate::metrics::CONTENT_TYPE,
                        body: text.into_bytes(),
                        www_authenticate: false,
                    },
                    Err(_) => AdminResponse::text(500, "cannot encode the metrics\n"),
                }
            }) as Handler,
        ),
        (
            "/stat",
            Arc::new(move |request: &AdminRequest| {
                if request.method != "GET" {
                    return AdminResponse::method_not_allowed();
                }
                AdminResponse::json(200, summary.stat().to_json())
            }) as Handler,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const TOKEN: &str = "test-token-0123456789";

    fn handler(tag: &'static str) -> Handler {
        Arc::new(move |request: &AdminRequest| {
            let query: Vec<String> = request
                .query
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            AdminResponse::text(
                200,
                format!(
                    "{tag} {} {} [{}] {}",
                    request.method,
                    request.path,
                    query.join("&"),
                    request.body.len()
                ),
            )
        })
    }

    /// An admin endpoint on a socket in a fresh directory and on a TCP port with a token.
    struct Running {
        admin: Admin,
        _dir: tempfile::TempDir,
    }

    impl Running {
        fn socket(&self) -> client::Endpoint {
            client::Endpoint::Socket(self.admin.socket_path().expect("socket").to_path_buf())
        }

        fn tcp(&self) -> client::Endpoint {
            client::Endpoint::Tcp(self.admin.local_addr().expect("tcp"))
        }
    }

    fn start(routes: Vec<(&'static str, Handler)>) -> Running {
        let dir = tempfile::tempdir().expect("dir");
        let settings = AdminSettings {
            socket: Some(dir.path().join("admin.sock")),
            listen: Some("127.0.0.1:0".parse().expect("addr")),
            token: access::AdminToken::from_bytes(TOKEN.as_bytes()),
        };
        let admin = Admin::start(settings, routes).expect("admin starts");
        Running { admin, _dir: dir }
    }

    fn get(running: &Running, path: &str) -> (u16, String) {
        let (status, body) =
            client::request(running.socket(), "GET", path, Duration::from_secs(10))
                .expect("request");
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[test]
    fn longest_prefix_wins_and_unknown_paths_are_404() {
        let admin = start(vec![
            ("/queue", handler("queue")),
            ("/queue/flush", handler("flush")),
            ("/", handler("root")),
        ]);
        assert_eq!(
            get(&admin, "/queue/flush?x=1").1,
            "flush GET /queue/flush [x=1] 0"
        );
        assert_eq!(get(&admin, "/queue/list").1, "queue GET /queue/list [] 0");
        assert_eq!(get(&admin, "/other").1, "root GET /other [] 0");
        admin.admin.stop();

        let admin = start(vec![("/metrics", handler("m"))]);
        assert_eq!(get(&admin, "/nothing").0, 404);
        admin.admin.stop();
    }

    #[test]
    fn query_strings_are_decoded() {
        let admin = start(vec![("/q", handler("q"))]);
        let (_, body) = get(&admin, "/q?dest=a%40b.test&x=1+2&empty=&dest=second");
        assert_eq!(body, "q GET /q [dest=a@b.test&x=1 2&empty=&dest=second] 0");
        admin.admin.stop();
    }

    #[test]
    fn bodies_are_bounded_and_json_posts_reach_the_handler_with_their_fields() {
        let admin = start(vec![("/b", handler("b"))]);
        let ten = Duration::from_secs(10);
        let body = format!("{{\"id\": \"{}\", \"n\": 3}}", "x".repeat(20));
        let (status, answer) =
            client::request_with_body(admin.socket(), "POST", "/b?q=1", body.as_bytes(), ten)
                .expect("post");
        assert_eq!(
            (status, String::from_utf8_lossy(&answer).into_owned()),
            (
                200,
                format!("b POST /b [q=1&id={}&n=3] {}", "x".repeat(20), body.len())
            )
        );
        for bad in [&b"[1]"[..], b"{\"id\": [1]}", b"id=1"] {
            let (status, _) =
                client::request_with_body(admin.socket(), "POST", "/b", bad, ten).expect("post");
            assert_eq!(status, 400, "{}", String::from_utf8_lossy(bad));
        }
        let large = vec![b' '; BODY_MAX + 1];
        let (status, _) =
            client::request_with_body(admin.socket(), "POST", "/b", &large, ten).expect("post");
        assert_eq!(status, 413);
        admin.admin.stop();
    }

    #[test]
    fn garbage_and_panics_do_not_stop_the_listener() {
        use std::io::{Read, Write};
        let admin = start(vec![
            (
                "/panic",
                Arc::new(|_: &AdminRequest| -> AdminResponse { panic!("handler bug") }),
            ),
            ("/ok", handler("ok")),
        ]);
        let mut stream =
            std::net::TcpStream::connect(admin.admin.local_addr().expect("tcp")).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        stream
            .write_all(b"\x00\x01 NOT HTTP AT ALL\r\n\r\n")
            .expect("write");
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink);
        assert_eq!(get(&admin, "/panic").0, 500);
        assert_eq!(get(&admin, "/ok").0, 200);
        admin.admin.stop();
    }

    #[test]
    fn binding_a_taken_port_is_a_clear_error_naming_the_key() {
        let running = start(vec![]);
        let settings = AdminSettings {
            listen: running.admin.local_addr(),
            ..AdminSettings::default()
        };
        let err = Admin::start(settings, vec![]).expect_err("port taken");
        assert!(err.to_string().contains("cannot bind"), "{err}");
        assert!(err.to_string().contains("admin.listen"), "{err}");
        // A second endpoint on the same socket path is refused while the first lives.
        let settings = AdminSettings {
            socket: running.admin.socket_path().map(Path::to_path_buf),
            ..AdminSettings::default()
        };
        let err = Admin::start(settings, vec![]).expect_err("socket taken");
        assert!(err.to_string().contains("admin.socket"), "{err}");
        let path = running.admin.socket_path().expect("path").to_path_buf();
        running.admin.stop();
        assert!(!path.exists(), "the socket file is removed at stop");
    }

    #[test]
    fn tcp_checks_host_token_and_content_type_the_socket_only_content_type() {
        let admin = start(vec![
            ("/queue", handler("queue")),
            ("/metrics", handler("m")),
        ]);
        let ten = Duration::from_secs(10);
        let tcp = admin.tcp();
        let send = |endpoint: &client::Endpoint, call: client::Call<'_>| {
            client::call(endpoint, &call).expect("request").0
        };
        assert_eq!(send(&tcp, client::Call::get("/metrics", ten)), 200);
        assert_eq!(send(&tcp, client::Call::get("/queue/show?id=1", ten)), 401);
        let with_token = client::Call {
            token: Some(TOKEN),
            ..client::Call::post("/queue/delete", b"{}", ten)
        };
        assert_eq!(send(&tcp, with_token), 200);
        let wrong = client::Call {
            token: Some("test-token-0123456780"),
            ..with_token
        };
        assert_eq!(send(&tcp, wrong), 401);
        let no_json = client::Call {
            json: None,
            ..with_token
        };
        assert_eq!(send(&tcp, no_json), 415);
        assert_eq!(send(&admin.socket(), client::Call::get("/queue", ten)), 200);
        assert_eq!(
            send(
                &admin.socket(),
                client::Call::post("/queue/flush", b"{}", ten)
            ),
            200
        );
        let bare_post = client::Call {
            json: None,
            ..client::Call::post("/queue/flush", b"", ten)
        };
        assert_eq!(send(&admin.socket(), bare_post), 415);
        admin.admin.stop();
    }

    #[test]
    fn metrics_and_stat_routes_answer_get_only() {
        let metrics = Arc::new(Metrics::new(1, None));
        metrics.core(0).transaction(250);
        let admin = start(metrics_routes(&metrics));
        let ten = Duration::from_secs(10);
        let (status, text) = client::request(admin.tcp(), "GET", "/metrics", ten).expect("get");
        let text = String::from_utf8_lossy(&text);
        assert_eq!(status, 200);
        assert!(
            text.contains(
                "relay_smtp_transactions_total{core=\"0\",result=\"queued\",code=\"250\"} 1"
            ),
            "{text}"
        );
        let (status, json) = get(&admin, "/stat");
        assert_eq!(status, 200);
        let stat = crate::metrics::Stat::from_json(json.as_bytes()).expect("json");
        assert_eq!(stat.cores[0].transactions.get("queued"), Some(&1));
        let (status, _) =
            client::request_with_body(admin.socket(), "POST", "/metrics", b"", ten).expect("post");
        assert_eq!(status, 405);
        admin.admin.stop();
    }
}
