//! The admin listener: a small HTTP server for operators and their tools, on its own thread
//! (never on a shard), loopback only (`[admin] listen`, checked at config load).
//!
//! Routes are `(path prefix, handler)` pairs; the longest matching prefix wins, anything else
//! is 404. The server registers `/metrics` (Prometheus text) and `/stat` (the JSON summary
//! `relay stat` prints), see [`metrics_routes`]; the queue control adds `/queue/...`.
//!
//! Exposure: whoever can connect to the loopback address (local users and processes); no
//! authentication, so nothing here may reveal message content or change state without a
//! route that means to. Limits: request bodies up to [`BODY_MAX`] (larger get 413 unread);
//! requests are served one at a time by the admin thread (tiny_http reads headers on its
//! own small pool). A handler's panic is caught and answered 500; the listener goes on.
//!
//! [`client`] is the matching client, used by `relay stat` and `relay queue`.

pub mod client;
pub mod queue;
pub mod queue_text;

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::logsafe::Safe;
use crate::metrics::Metrics;

/// Largest request body read; a larger one is refused with 413 without reading it.
pub const BODY_MAX: usize = 64 * 1024;

/// One request as a handler sees it: the path without the query, the query decoded.
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
}

impl AdminResponse {
    pub fn text(status: u16, body: impl Into<String>) -> AdminResponse {
        AdminResponse {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into().into_bytes(),
        }
    }

    pub fn json(status: u16, body: Vec<u8>) -> AdminResponse {
        AdminResponse {
            status,
            content_type: "application/json",
            body,
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
    #[error("admin.listen {addr}: cannot bind: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("admin.listen {addr}: {message}")]
    Server { addr: SocketAddr, message: String },
    #[error("cannot start the admin thread: {0}")]
    Thread(std::io::Error),
}

/// The running admin listener; [`Admin::stop`] ends it.
pub struct Admin {
    server: Arc<tiny_http::Server>,
    addr: SocketAddr,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin").field("addr", &self.addr).finish()
    }
}

impl Admin {
    /// Binds `listen` and serves `routes` on a thread of its own. Routes are `(path prefix,
    /// handler)`; the longest matching prefix wins; 404 otherwise.
    pub fn start(
        listen: SocketAddr,
        routes: Vec<(&'static str, Handler)>,
    ) -> Result<Admin, AdminError> {
        let listener = TcpListener::bind(listen).map_err(|source| AdminError::Bind {
            addr: listen,
            source,
        })?;
        let addr = listener.local_addr().map_err(|source| AdminError::Bind {
            addr: listen,
            source,
        })?;
        let server =
            tiny_http::Server::from_listener(listener, None).map_err(|e| AdminError::Server {
                addr,
                message: e.to_string(),
            })?;
        let server = Arc::new(server);
        let router = Router::new(routes);
        let serving = Arc::clone(&server);
        let thread = std::thread::Builder::new()
            .name("admin".into())
            .spawn(move || {
                // `recv` fails only once `unblock` was called (stop) or the server is gone.
                while let Ok(request) = serving.recv() {
                    serve(&router, request);
                }
            })
            .map_err(AdminError::Thread)?;
        Ok(Admin {
            server,
            addr,
            thread: Some(thread),
        })
    }

    /// The bound address (the real port when `listen` had port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving and joins the admin thread (a request being served finishes first).
    pub fn stop(mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the admin thread panicked");
            }
        }
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        self.server.unblock();
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

fn serve(router: &Router, mut request: tiny_http::Request) {
    let response = match read_request(&mut request) {
        Ok(admin_request) => router.route(&admin_request),
        Err(response) => response,
    };
    tracing::debug!(method = %Safe(request.method()), url = %Safe(request.url()), status = response.status, "admin request");
    let header =
        tiny_http::Header::from_bytes(&b"Content-Type"[..], response.content_type.as_bytes());
    let mut reply = tiny_http::Response::from_data(response.body)
        .with_status_code(tiny_http::StatusCode(response.status));
    if let Ok(header) = header {
        reply.add_header(header);
    }
    // The client may have gone; nothing to do about it.
    let _ = request.respond(reply);
}

/// The request with its body, or the error response (413 for a body over [`BODY_MAX`]).
fn read_request(request: &mut tiny_http::Request) -> Result<AdminRequest, AdminResponse> {
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
    let (path, query) = split_url(request.url());
    Ok(AdminRequest {
        method: request.method().as_str().to_ascii_uppercase(),
        path,
        query,
        body,
    })
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

    fn start(routes: Vec<(&'static str, Handler)>) -> Admin {
        Admin::start("127.0.0.1:0".parse().expect("addr"), routes).expect("admin starts")
    }

    fn get(admin: &Admin, path: &str) -> (u16, String) {
        let (status, body) =
            client::request(admin.local_addr(), "GET", path, Duration::from_secs(10))
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
        admin.stop();

        let admin = start(vec![("/metrics", handler("m"))]);
        assert_eq!(get(&admin, "/nothing").0, 404);
        admin.stop();
    }

    #[test]
    fn query_strings_are_decoded() {
        let admin = start(vec![("/q", handler("q"))]);
        let (_, body) = get(&admin, "/q?dest=a%40b.test&x=1+2&empty=&dest=second");
        assert_eq!(body, "q GET /q [dest=a@b.test&x=1 2&empty=&dest=second] 0");
        admin.stop();
    }

    #[test]
    fn bodies_are_bounded_and_posts_reach_the_handler() {
        let admin = start(vec![("/b", handler("b"))]);
        let addr = admin.local_addr();
        let small = vec![b'x'; 1000];
        let (status, body) =
            client::request_with_body(addr, "POST", "/b", &small, Duration::from_secs(10))
                .expect("post");
        assert_eq!(
            (status, String::from_utf8_lossy(&body).as_ref()),
            (200, "b POST /b [] 1000")
        );
        let large = vec![b'x'; BODY_MAX + 1];
        let (status, _) =
            client::request_with_body(addr, "POST", "/b", &large, Duration::from_secs(10))
                .expect("post");
        assert_eq!(status, 413);
        admin.stop();
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
        let mut stream = std::net::TcpStream::connect(admin.local_addr()).expect("connect");
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
        admin.stop();
    }

    #[test]
    fn binding_a_taken_port_is_a_clear_error() {
        let admin = start(vec![]);
        let err = Admin::start(admin.local_addr(), vec![]).expect_err("port taken");
        assert!(err.to_string().contains("cannot bind"), "{err}");
        admin.stop();
    }

    #[test]
    fn metrics_and_stat_routes_answer_get_only() {
        let metrics = Arc::new(Metrics::new(1, None));
        metrics.core(0).transaction(250);
        let admin = start(metrics_routes(&metrics));
        let (status, text) = get(&admin, "/metrics");
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
        let (status, _) = client::request_with_body(
            admin.local_addr(),
            "POST",
            "/metrics",
            b"",
            Duration::from_secs(10),
        )
        .expect("post");
        assert_eq!(status, 405);
        admin.stop();
    }
}
