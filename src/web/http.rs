//! The routes: login and logout, the folder list, a folder's messages, a message, compose
//! and send. Every response carries the security headers; every POST is checked against
//! the session's CSRF token (the login form against a pre-login cookie token).

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

use super::backend::{Action, Backend, BackendError, Client, LoginError};
use super::compose;
use super::pages::{Chrome, FolderLink, ListPage, LoginPage, NoticePage, ReadPage, Row, STYLE_CSS};
use super::render;
use super::session::{random_token, tokens_match, SessionTable, SessionView};

pub const SESSION_COOKIE: &str = "relay_session";
pub const LOGIN_COOKIE: &str = "relay_login";

/// `default-src 'none'` and only our own stylesheet and images; forms post only to us; no
/// framing. No script anywhere.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// What the routes share.
pub struct App {
    pub backend: Arc<dyn Backend>,
    pub sessions: Mutex<SessionTable>,
    pub page_size: usize,
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
        .route("/compose", get(compose::compose))
        .route("/send", post(compose::send))
        .route("/static/style.css", get(style))
        .fallback(not_found)
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
    set(headers, "content-security-policy", CONTENT_SECURITY_POLICY);
    set(headers, "x-content-type-options", "nosniff");
    set(headers, "referrer-policy", "no-referrer");
    set(headers, "x-frame-options", "DENY");
    set(headers, "cross-origin-opener-policy", "same-origin");
    if !headers.contains_key(header::CACHE_CONTROL) {
        set(headers, "cache-control", "no-store");
    }
    if tls {
        set(headers, "strict-transport-security", "max-age=31536000");
    }
    response
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
            let id = random_token();
            let csrf = random_token();
            if let Ok(mut sessions) = app.sessions.lock() {
                sessions.start(name.clone(), id.clone(), csrf, Instant::now());
            }
            tracing::info!(target: "relay::web", client = %client.peer.ip(), user = %crate::logsafe::Safe(&name), "login");
            let response = Redirect::to("/mail?folder=INBOX").into_response();
            let response =
                with_cookie(response, set_cookie(SESSION_COOKIE, &id, client.tls, false));
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
    let Some((id, view)) = session(&app, &headers) else {
        return to_login();
    };
    if !tokens_match(&form.csrf, &view.csrf) {
        return forbidden();
    }
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
    let wanted = query.page.unwrap_or(1).max(1);
    let skip = (wanted - 1).saturating_mul(app.page_size);
    let mut page = match app
        .backend
        .page(view.user.clone(), query.folder.clone(), skip, app.page_size)
        .await
    {
        Ok(p) => p,
        Err(e) => return failure(Some(chrome), &e),
    };
    let (_, number, pages) = paging(page.total, wanted, app.page_size);
    if number != wanted {
        // Past the end (the folder shrank): the last page.
        let (skip, ..) = paging(page.total, number, app.page_size);
        page = match app
            .backend
            .page(view.user.clone(), query.folder.clone(), skip, app.page_size)
            .await
        {
            Ok(p) => p,
            Err(e) => return failure(Some(chrome), &e),
        };
    }
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
        href(
            "/mail",
            &[("folder", &query.folder), ("page", &n.to_string())],
        )
    };
    html(
        StatusCode::OK,
        ListPage {
            chrome,
            folder: query.folder.clone(),
            total: page.total,
            rows,
            page: number,
            pages,
            newer: (number > 1).then(|| page_link(number - 1)),
            older: (number < pages).then(|| page_link(number + 1)),
        },
    )
}

#[derive(Deserialize)]
struct ReadQuery {
    #[serde(default = "inbox")]
    folder: String,
    uid: u32,
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
    let reply_to = mail_parser::MessageParser::default()
        .parse_headers(&raw)
        .and_then(|m| {
            m.reply_to()
                .or(m.from())
                .and_then(|a| a.first())
                .and_then(|a| a.address())
                .map(str::to_string)
        })
        .unwrap_or_default();
    let subject = if message.subject.to_ascii_lowercase().starts_with("re:") {
        message.subject.clone()
    } else {
        format!("Re: {}", message.subject)
    };
    html(
        StatusCode::OK,
        ReadPage {
            chrome,
            back: href("/mail", &[("folder", &query.folder)]),
            reply: href("/compose", &[("to", &reply_to), ("subject", &subject)]),
            uid: query.uid,
            flagged: stored.flagged,
            folder: query.folder,
            view: message,
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
    let Some((_, view)) = session(&app, &headers) else {
        return to_login();
    };
    if !tokens_match(&form.csrf, &view.csrf) {
        return forbidden();
    }
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

#[cfg(test)]
mod tests;
