//! The routes: login and logout, the folder list, a folder's messages, a message, compose
//! and send, the settings page (`settings`) and the public Web Key Directory (`wkd`). Every
//! response carries the security headers; every POST is checked against the session's
//! CSRF token (the login form against a pre-login cookie token).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use askama::Template;
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Form, Router};
use serde::Deserialize;

use super::backend::{Action, Backend, BackendError, Client, LoginError, StoredMessage};
use super::compose;
use super::pages::{Chrome, FolderLink, ListPage, LoginPage, NoticePage, ReadPage, Row, STYLE_CSS};
use super::render;
use super::session::{random_token, tokens_match, SessionTable, SessionView};
use super::{settings, wkd};

pub const SESSION_COOKIE: &str = "relay_session";
pub const LOGIN_COOKIE: &str = "relay_login";
/// `[cluster]`: the node a proxied session lives on (its `relay_session` is that node's).
pub const HOME_COOKIE: &str = "relay_home";

/// `default-src 'none'` and only our own stylesheet and images; forms post only to us; no
/// framing of our pages, frames only of our own message bodies (`/body`). No script
/// anywhere.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self'; img-src 'self'; frame-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The message frame (`/body`): a peer's sanitised HTML with no image but its own `cid:`
/// images, inlined as `data:` (and remote `https:` images when asked for), no styles
/// (ammonia strips them), no script, no forms, framed only by our own pages, and
/// sandboxed even if opened on its own.
pub const BODY_POLICY: &str = "default-src 'none'; img-src data:; form-action 'none'; frame-ancestors 'self'; base-uri 'none'; sandbox allow-popups allow-popups-to-escape-sandbox";

/// [`BODY_POLICY`] with remote images allowed (over HTTPS).
pub const BODY_POLICY_REMOTE: &str = "default-src 'none'; img-src data: https:; form-action 'none'; frame-ancestors 'self'; base-uri 'none'; sandbox allow-popups allow-popups-to-escape-sandbox";

/// A downloaded part: nothing in it may load or run anything, even if a browser shows it.
pub const PART_POLICY: &str = "default-src 'none'; frame-ancestors 'self'; sandbox";

/// The name the store gives the special-use Drafts folder at first login (the draft routes
/// find it by its role; a page names folders by name).
const DRAFTS: &str = "Drafts";

/// What the routes share.
pub struct App {
    pub backend: Arc<dyn Backend>,
    /// Shared with the cluster listener, which starts the sessions of logins proxied here
    /// from other nodes ([`WebServer::sessions`](super::serve::WebServer::sessions)).
    pub sessions: Arc<Mutex<SessionTable>>,
    pub page_size: usize,
    /// Our `Authentication-Results` authserv-id: the only such field the pages trust.
    pub authserv_id: String,
}

pub(super) type Shared = Arc<App>;

/// The router; each connection adds its [`Client`] as a request extension.
pub fn router(app: Shared, body_max: usize) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/mail", get(list))
        .route("/read", get(read))
        .route("/act", post(act))
        .route("/move", post(move_to))
        .route("/body", get(body))
        .route("/part", get(part))
        .route("/empty-trash", post(empty_trash))
        .route("/compose", get(compose::compose))
        .route("/send", post(compose::send))
        .route("/settings", get(settings::page))
        .route("/settings/key", post(settings::upload))
        .route("/settings/remove", post(settings::remove))
        .route("/settings/encrypt", post(settings::encrypt))
        .route(wkd::DIRECT_KEY, get(wkd::direct_key))
        .route(wkd::ADVANCED_KEY, get(wkd::advanced_key))
        .route(wkd::DIRECT_POLICY, get(wkd::direct_policy))
        .route(wkd::ADVANCED_POLICY, get(wkd::advanced_policy))
        .route("/static/style.css", get(style))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&app),
            home_proxy,
        ))
        .layer(axum::middleware::from_fn(security_headers))
        .layer(DefaultBodyLimit::max(body_max))
        .with_state(app)
}

async fn security_headers(request: Request, next: Next) -> Response {
    let tls = request.extensions().get::<Client>().is_some_and(|c| c.tls);
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    let set = |headers: &mut HeaderMap, name: &'static str, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    // A route with a policy of its own (the message frame, a part) keeps it.
    if !headers.contains_key("content-security-policy") {
        set(headers, "content-security-policy", CONTENT_SECURITY_POLICY);
    }
    if !headers.contains_key("x-frame-options") {
        set(headers, "x-frame-options", "DENY");
    }
    set(headers, "x-content-type-options", "nosniff");
    set(headers, "referrer-policy", "no-referrer");
    set(headers, "cross-origin-opener-policy", "same-origin");
    if !headers.contains_key(header::CACHE_CONTROL) {
        set(headers, "cache-control", "no-store");
    }
    if tls {
        set(headers, "strict-transport-security", "max-age=31536000");
    }
    response
}

/// `[cluster]`: a session that lives on the user's home node (its browser holds
/// [`HOME_COOKIE`]) has every request forwarded there, but the login page (logins are
/// always checked here first), the stylesheet and the key directory. A cookie naming no
/// other node is dropped and the request served here.
async fn home_proxy(State(app): State<Shared>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let here =
        path == "/login" || path.starts_with("/static/") || path.starts_with("/.well-known/");
    let node = match cookie(request.headers(), HOME_COOKIE) {
        Some(node) if !here && !node.is_empty() => node.to_string(),
        _ => return next.run(request).await,
    };
    let tls = request.extensions().get::<Client>().is_some_and(|c| c.tls);
    match app.backend.home_forward(node, request).await {
        Ok(response) => {
            // The home node ended the session (logout): so does the home cookie.
            let ended = response
                .headers()
                .get_all(header::SET_COOKIE)
                .iter()
                .any(|v| {
                    v.as_bytes()
                        .starts_with(format!("{SESSION_COOKIE}=;").as_bytes())
                });
            if ended {
                return with_cookie(response, set_cookie(HOME_COOKIE, "", tls, true));
            }
            response
        }
        Err(request) => {
            let response = next.run(request).await;
            with_cookie(response, set_cookie(HOME_COOKIE, "", tls, true))
        }
    }
}

/// The value of cookie `name` in the request, if sent.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A `Set-Cookie` value: never readable by script, never sent cross-site, `Secure` over TLS.
pub fn set_cookie(name: &str, value: &str, tls: bool, expire: bool) -> String {
    let mut out = format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict");
    if tls {
        out.push_str("; Secure");
    }
    if expire {
        out.push_str("; Max-Age=0");
    }
    out
}

fn with_cookie(mut response: Response, cookie: String) -> Response {
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

pub(super) fn html(status: StatusCode, page: impl Template) -> Response {
    match page.render() {
        Ok(body) => (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            body,
        )
            .into_response(),
        Err(error) => {
            tracing::warn!(target: "relay::web", %error, "page not rendered");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

pub(super) fn client_of(client: Option<Extension<Client>>) -> Option<Client> {
    client.map(|Extension(c)| c)
}

/// The session the request's cookie names, if live.
pub(super) fn session(app: &App, headers: &HeaderMap) -> Option<(String, SessionView)> {
    let id = cookie(headers, SESSION_COOKIE)?;
    let mut sessions = app.sessions.lock().ok()?;
    let view = sessions.get(id, Instant::now())?;
    Some((id.to_string(), view))
}

/// Why a form's POST is not carried out.
pub(super) enum Refused {
    /// No live session: to the login page.
    NoSession,
    /// The CSRF token does not match the session's: 403.
    BadToken,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Refused::NoSession => to_login(),
            Refused::BadToken => forbidden(),
        }
    }
}

/// The session of a form's POST whose CSRF token matches it.
pub(super) fn authorised(
    app: &App,
    headers: &HeaderMap,
    csrf: &str,
) -> Result<(String, SessionView), Refused> {
    let (id, view) = session(app, headers).ok_or(Refused::NoSession)?;
    if !tokens_match(csrf, &view.csrf) {
        return Err(Refused::BadToken);
    }
    Ok((id, view))
}

pub(super) fn to_login() -> Response {
    Redirect::to("/login").into_response()
}

pub(super) fn href(path: &str, pairs: &[(&str, &str)]) -> String {
    let query = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    format!("{path}?{query}")
}

async fn index(State(app): State<Shared>, headers: HeaderMap) -> Response {
    match session(&app, &headers) {
        Some(_) => Redirect::to("/mail?folder=INBOX").into_response(),
        None => to_login(),
    }
}

async fn style() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        STYLE_CSS,
    )
        .into_response()
}

async fn not_found() -> Response {
    html(
        StatusCode::NOT_FOUND,
        NoticePage {
            chrome: None,
            title: "Not found".into(),
            text: "There is no such page.".into(),
            error: true,
            link: "/".into(),
            link_text: "Start".into(),
        },
    )
}

fn login_page(status: StatusCode, tls: bool, user: &str, error: Option<&str>) -> Response {
    let token = random_token();
    let response = html(
        status,
        LoginPage {
            csrf: token.clone(),
            user: user.to_string(),
            error: error.map(str::to_string),
        },
    );
    with_cookie(response, set_cookie(LOGIN_COOKIE, &token, tls, false))
}

async fn login_form(
    State(app): State<Shared>,
    client: Option<Extension<Client>>,
    headers: HeaderMap,
) -> Response {
    if session(&app, &headers).is_some() {
        return Redirect::to("/mail?folder=INBOX").into_response();
    }
    let tls = client_of(client).is_some_and(|c| c.tls);
    login_page(StatusCode::OK, tls, "", None)
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    user: String,
    #[serde(default)]
    password: String,
}

pub(super) fn forbidden() -> Response {
    html(
        StatusCode::FORBIDDEN,
        NoticePage {
            chrome: None,
            title: "Refused".into(),
            text: "This form has expired or did not come from this site. Load the page again."
                .into(),
            error: true,
            link: "/".into(),
            link_text: "Start".into(),
        },
    )
}

async fn login(
    State(app): State<Shared>,
    client: Option<Extension<Client>>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let Some(client) = client_of(client) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    // Login CSRF: the form's token must be the one this browser's cookie holds.
    let expected = cookie(&headers, LOGIN_COOKIE).unwrap_or("");
    if expected.is_empty() || !tokens_match(&form.csrf, expected) {
        return forbidden();
    }
    let user = form.user.trim().to_string();
    match app.backend.login(client, user.clone(), form.password).await {
        Ok(name) => {
            if let Some(node) = app.backend.home_of(name.clone()).await {
                return home_login(&app, client, &user, name, node).await;
            }
            let id = random_token();
            let csrf = random_token();
            if let Ok(mut sessions) = app.sessions.lock() {
                sessions.start(name.clone(), id.clone(), csrf, Instant::now());
            }
            tracing::info!(target: "relay::web", client = %client.peer.ip(), user = %crate::logsafe::Safe(&name), "login");
            let response = Redirect::to("/mail?folder=INBOX").into_response();
            let response =
                with_cookie(response, set_cookie(SESSION_COOKIE, &id, client.tls, false));
            let response = with_cookie(response, set_cookie(HOME_COOKIE, "", client.tls, true));
            with_cookie(response, set_cookie(LOGIN_COOKIE, "", client.tls, true))
        }
        Err(LoginError::Invalid) => login_page(
            StatusCode::UNAUTHORIZED,
            client.tls,
            &user,
            Some("Wrong user name or password."),
        ),
        Err(LoginError::Locked) => login_page(
            StatusCode::TOO_MANY_REQUESTS,
            client.tls,
            &user,
            Some("Too many failed logins. Wait a while and try again."),
        ),
        Err(LoginError::Busy) => login_page(
            StatusCode::SERVICE_UNAVAILABLE,
            client.tls,
            &user,
            Some("The server is busy. Try again in a moment."),
        ),
    }
}

/// A checked login of a user homed on another node: logged in there too, the browser gets
/// that node's session cookie and [`HOME_COOKIE`], so its later requests are forwarded.
async fn home_login(app: &App, client: Client, user: &str, name: String, node: String) -> Response {
    match app
        .backend
        .home_login(node.clone(), name.clone(), client)
        .await
    {
        Ok(id) => {
            tracing::info!(target: "relay::web", client = %client.peer.ip(), user = %crate::logsafe::Safe(&name), home = %crate::logsafe::Safe(&node), "login proxied");
            let response = Redirect::to("/mail?folder=INBOX").into_response();
            let response =
                with_cookie(response, set_cookie(SESSION_COOKIE, &id, client.tls, false));
            let response = with_cookie(response, set_cookie(HOME_COOKIE, &node, client.tls, false));
            with_cookie(response, set_cookie(LOGIN_COOKIE, "", client.tls, true))
        }
        Err(error) => {
            tracing::warn!(target: "relay::web", client = %client.peer.ip(), user = %crate::logsafe::Safe(&name), home = %crate::logsafe::Safe(&node), %error, "proxied login failed: home node unavailable");
            login_page(
                StatusCode::SERVICE_UNAVAILABLE,
                client.tls,
                user,
                Some("Your mailbox is not reachable right now. Try again in a moment."),
            )
        }
    }
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(
    State(app): State<Shared>,
    client: Option<Extension<Client>>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let tls = client_of(client).is_some_and(|c| c.tls);
    let (id, _) = match authorised(&app, &headers, &form.csrf) {
        Ok(found) => found,
        Err(refused) => return refused.into_response(),
    };
    if let Ok(mut sessions) = app.sessions.lock() {
        sessions.end(&id);
    }
    with_cookie(
        Redirect::to("/login").into_response(),
        set_cookie(SESSION_COOKIE, "", tls, true),
    )
}

/// The header and folder list, with `current` marked.
pub(super) async fn chrome(
    app: &App,
    view: &SessionView,
    current: &str,
) -> Result<Chrome, BackendError> {
    let folders = app.backend.folders(view.user.clone()).await?;
    Ok(Chrome {
        user: view.user.clone(),
        csrf: view.csrf.clone(),
        folders: folders
            .into_iter()
            .map(|f| FolderLink {
                href: href("/mail", &[("folder", &f.name)]),
                current: f.name == current,
                unseen: f.unseen,
                name: f.name,
            })
            .collect(),
    })
}

pub(super) fn failure(chrome: Option<Chrome>, error: &BackendError) -> Response {
    let status = match error {
        BackendError::NoSuchFolder | BackendError::NoSuchMessage => StatusCode::NOT_FOUND,
        BackendError::Refused(_) => StatusCode::UNPROCESSABLE_ENTITY,
        BackendError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    };
    html(
        status,
        NoticePage {
            chrome,
            title: "Not possible".into(),
            text: error.to_string(),
            error: true,
            link: "/mail?folder=INBOX".into(),
            link_text: "Inbox".into(),
        },
    )
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default = "inbox")]
    folder: String,
    #[serde(default)]
    page: Option<usize>,
    /// Search text: only messages whose From, To, Subject or text contains it.
    #[serde(default)]
    q: String,
}

/// Search text longer than this is cut (a person types a few words).
const SEARCH_MAX_CHARS: usize = 200;

/// The search box's text as searched: trimmed, without control characters, bounded.
pub fn search_text(q: &str) -> String {
    q.trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(SEARCH_MAX_CHARS)
        .collect()
}

fn inbox() -> String {
    "INBOX".into()
}

/// Page `page` (1-based) of `total` items, `size` a page: (skip, pages), clamped.
pub fn paging(total: usize, page: usize, size: usize) -> (usize, usize, usize) {
    let size = size.max(1);
    let pages = total.div_ceil(size).max(1);
    let page = page.clamp(1, pages);
    ((page - 1) * size, page, pages)
}

async fn list(
    State(app): State<Shared>,
    headers: HeaderMap,
    Query(query): Query<ListQuery>,
) -> Response {
    let Some((_, view)) = session(&app, &headers) else {
        return to_login();
    };
    let chrome = match chrome(&app, &view, &query.folder).await {
        Ok(c) => c,
        Err(e) => return failure(None, &e),
    };
    let search = search_text(&query.q);
    let fetch = |skip: usize| {
        let (user, folder) = (view.user.clone(), query.folder.clone());
        if search.is_empty() {
            app.backend.page(user, folder, skip, app.page_size)
        } else {
            app.backend
                .search(user, folder, search.clone(), skip, app.page_size)
        }
    };
    let wanted = query.page.unwrap_or(1).max(1);
    let skip = (wanted - 1).saturating_mul(app.page_size);
    let mut page = match fetch(skip).await {
        Ok(p) => p,
        Err(e) => return failure(Some(chrome), &e),
    };
    let (_, number, pages) = paging(page.total, wanted, app.page_size);
    if number != wanted {
        // Past the end (the folder shrank): the last page.
        let (skip, ..) = paging(page.total, number, app.page_size);
        page = match fetch(skip).await {
            Ok(p) => p,
            Err(e) => return failure(Some(chrome), &e),
        };
    }
    let trash = match app.backend.trash_folder(view.user.clone()).await {
        Ok(trash) => trash,
        Err(e) => return failure(Some(chrome), &e),
    };
    let rows = page
        .messages
        .iter()
        .map(|m| {
            let summary = render::summary(&m.header);
            let date = if summary.date.is_empty() {
                chrono::DateTime::from_timestamp(m.internal_date, 0)
                    .map(|d| d.format("%a, %d %b %Y %H:%M").to_string())
                    .unwrap_or_default()
            } else {
                summary.date
            };
            Row {
                href: href(
                    "/read",
                    &[("folder", &query.folder), ("uid", &m.uid.to_string())],
                ),
                from: summary.from,
                subject: summary.subject,
                date,
                seen: m.seen,
                flagged: m.flagged,
            }
        })
        .collect();
    let page_link = |n: usize| {
        let n = n.to_string();
        let mut pairs = vec![("folder", query.folder.as_str()), ("page", n.as_str())];
        if !search.is_empty() {
            pairs.push(("q", search.as_str()));
        }
        href("/mail", &pairs)
    };
    html(
        StatusCode::OK,
        ListPage {
            chrome,
            is_trash: trash.as_deref() == Some(query.folder.as_str()),
            folder: query.folder.clone(),
            total: page.total,
            rows,
            page: number,
            pages,
            newer: (number > 1).then(|| page_link(number - 1)),
            older: (number < pages).then(|| page_link(number + 1)),
            search,
            all: href("/mail", &[("folder", &query.folder)]),
        },
    )
}

#[derive(Deserialize)]
struct ReadQuery {
    #[serde(default = "inbox")]
    folder: String,
    uid: u32,
    /// Show this message's remote images (the reader asked, for this message only).
    #[serde(default)]
    remote: Option<String>,
}

#[derive(Deserialize)]
struct PartQuery {
    #[serde(default = "inbox")]
    folder: String,
    uid: u32,
    /// A part path (`render::locate`); for `/body`, the forwarded message whose HTML to
    /// show ("" for the message itself).
    #[serde(default)]
    part: String,
    #[serde(default)]
    remote: Option<String>,
}

/// The message a frame or a download comes from, left unread: 403 without a session (a
/// frame or a link has no login page to go to).
async fn framed_message(
    app: &App,
    headers: &HeaderMap,
    query: &PartQuery,
) -> Result<StoredMessage, Response> {
    let Some((_, view)) = session(app, headers) else {
        return Err(StatusCode::FORBIDDEN.into_response());
    };
    app.backend
        .message(view.user.clone(), query.folder.clone(), query.uid, false)
        .await
        .map_err(|e| failure(None, &e))
}

/// The message frame: the HTML body of a message (or of a message forwarded in it),
/// sanitised, as a document of its own under [`BODY_POLICY`].
async fn body(
    State(app): State<Shared>,
    headers: HeaderMap,
    Query(query): Query<PartQuery>,
) -> Response {
    let stored = match framed_message(&app, &headers, &query).await {
        Ok(stored) => stored,
        Err(refused) => return refused,
    };
    let remote = query.remote.is_some();
    let Some((clean, _)) = render::frame_html(&stored.raw, &query.part, remote) else {
        return failure(None, &BackendError::NoSuchMessage);
    };
    let policy = if remote {
        BODY_POLICY_REMOTE
    } else {
        BODY_POLICY
    };
    let document = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Message</title></head><body>\n{clean}\n</body></html>\n"
    );
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, policy),
            (header::X_FRAME_OPTIONS, "SAMEORIGIN"),
        ],
        document,
    )
        .into_response()
}

/// One part of a message, decoded, always as a download (`Content-Disposition:
/// attachment`), typed only if it is a raster image (`render::served_type`).
async fn part(
    State(app): State<Shared>,
    headers: HeaderMap,
    Query(query): Query<PartQuery>,
) -> Response {
    let stored = match framed_message(&app, &headers, &query).await {
        Ok(stored) => stored,
        Err(refused) => return refused,
    };
    let Some(download) = render::download(&stored.raw, &query.part) else {
        return failure(None, &BackendError::NoSuchMessage);
    };
    let Ok(disposition) = HeaderValue::from_str(&download.disposition) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let mut response = (
        [
            (header::CONTENT_TYPE, download.content_type),
            (header::CONTENT_SECURITY_POLICY, PART_POLICY),
            (header::X_FRAME_OPTIONS, "SAMEORIGIN"),
        ],
        download.bytes,
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_DISPOSITION, disposition);
    response
}

async fn read(
    State(app): State<Shared>,
    headers: HeaderMap,
    Query(query): Query<ReadQuery>,
) -> Response {
    let Some((_, view)) = session(&app, &headers) else {
        return to_login();
    };
    let stored = match app
        .backend
        .message(view.user.clone(), query.folder.clone(), query.uid, true)
        .await
    {
        Ok(stored) => stored,
        Err(e) => {
            let chrome = chrome(&app, &view, &query.folder).await.ok();
            return failure(chrome, &e);
        }
    };
    // After marking it read, so the unread count is current.
    let chrome = match chrome(&app, &view, &query.folder).await {
        Ok(c) => c,
        Err(e) => return failure(None, &e),
    };
    let raw = stored.raw;
    let message = render::view(&raw);
    let signature = super::verdict::of(&raw, &app.authserv_id);
    let uid = query.uid.to_string();
    let remote = query.remote.is_some();
    let frame = |path: &str| {
        let mut pairs = vec![("folder", query.folder.as_str()), ("uid", uid.as_str())];
        if !path.is_empty() {
            pairs.push(("part", path));
        }
        if remote {
            pairs.push(("remote", "1"));
        }
        href("/body", &pairs)
    };
    html(
        StatusCode::OK,
        ReadPage {
            chrome,
            back: href("/mail", &[("folder", &query.folder)]),
            reply: href("/compose", &[("reply", &uid), ("folder", &query.folder)]),
            reply_all: href(
                "/compose",
                &[("reply_all", &uid), ("folder", &query.folder)],
            ),
            forward: href("/compose", &[("forward", &uid), ("folder", &query.folder)]),
            edit_draft: (query.folder == DRAFTS).then(|| href("/compose", &[("draft", &uid)])),
            uid: query.uid,
            flagged: stored.flagged,
            frame: message.html.is_some().then(|| frame("")),
            forwarded_frames: message.forwarded.iter().map(|f| frame(&f.path)).collect(),
            show_remote: (!remote && message.blocked_images > 0).then(|| {
                href(
                    "/read",
                    &[("folder", &query.folder), ("uid", &uid), ("remote", "1")],
                )
            }),
            part_base: href("/part", &[("folder", &query.folder), ("uid", &uid)]),
            folder: query.folder,
            view: message,
            signature,
        },
    )
}

#[derive(Deserialize)]
struct ActForm {
    #[serde(default)]
    csrf: String,
    folder: String,
    uid: u32,
    action: String,
}

/// The reading page's buttons: mark unread, flag, unflag, delete (to Trash).
async fn act(State(app): State<Shared>, headers: HeaderMap, Form(form): Form<ActForm>) -> Response {
    let (_, view) = match authorised(&app, &headers, &form.csrf) {
        Ok(found) => found,
        Err(refused) => return refused.into_response(),
    };
    let action = match form.action.as_str() {
        "seen" => Action::Seen(true),
        "unseen" => Action::Seen(false),
        "flag" => Action::Flagged(true),
        "unflag" => Action::Flagged(false),
        "trash" => Action::Trash,
        _ => return StatusCode::BAD_REQUEST.into_response(),
    };
    let done = app
        .backend
        .act(view.user.clone(), form.folder.clone(), form.uid, action)
        .await;
    match done {
        // Back to the list: a message just marked unread or deleted is done with.
        Ok(()) if matches!(action, Action::Trash | Action::Seen(false)) => {
            Redirect::to(&href("/mail", &[("folder", &form.folder)])).into_response()
        }
        Ok(()) => Redirect::to(&href(
            "/read",
            &[("folder", &form.folder), ("uid", &form.uid.to_string())],
        ))
        .into_response(),
        Err(e) => failure(chrome(&app, &view, &form.folder).await.ok(), &e),
    }
}

#[derive(Deserialize)]
struct MoveForm {
    #[serde(default)]
    csrf: String,
    folder: String,
    uid: u32,
    to: String,
}

/// The reading page's "Move to": the message leaves for `to`, durable before the
/// redirect to the folder it left.
async fn move_to(
    State(app): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<MoveForm>,
) -> Response {
    let (_, view) = match authorised(&app, &headers, &form.csrf) {
        Ok(found) => found,
        Err(refused) => return refused.into_response(),
    };
    let done = app
        .backend
        .move_to(
            view.user.clone(),
            form.folder.clone(),
            form.uid,
            form.to.clone(),
        )
        .await;
    match done {
        Ok(()) => Redirect::to(&href("/mail", &[("folder", &form.folder)])).into_response(),
        Err(e) => failure(chrome(&app, &view, &form.folder).await.ok(), &e),
    }
}

/// The Trash page's "Empty Trash": everything there deleted for good, durable before the
/// redirect back to the (empty) Trash.
async fn empty_trash(
    State(app): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let (_, view) = match authorised(&app, &headers, &form.csrf) {
        Ok(found) => found,
        Err(refused) => return refused.into_response(),
    };
    let trash = match app.backend.trash_folder(view.user.clone()).await {
        Ok(Some(trash)) => trash,
        Ok(None) => return failure(None, &BackendError::NoSuchFolder),
        Err(e) => return failure(None, &e),
    };
    match app.backend.empty_trash(view.user.clone()).await {
        Ok(_) => Redirect::to(&href("/mail", &[("folder", &trash)])).into_response(),
        Err(e) => failure(chrome(&app, &view, &trash).await.ok(), &e),
    }
}

#[cfg(test)]
mod tests;
