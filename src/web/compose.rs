//! Writing mail: the compose form (filled from a query or a `mailto:` URL) and sending it.

use axum::extract::{Query, State};
use axum::http::header::HeaderMap;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Form};
use serde::Deserialize;

use super::backend::{BackendError, Client, Outgoing};
use super::http::{chrome, client_of, failure, forbidden, html, session, to_login, Shared};
use super::pages::{Chrome, ComposePage, NoticePage};
use super::session::{random_token, tokens_match};

pub mod message;

#[derive(Deserialize, Default)]
pub(super) struct ComposeQuery {
    #[serde(default)]
    to: String,
    #[serde(default)]
    cc: String,
    #[serde(default)]
    subject: String,
    #[serde(default)]
    body: String,
}

/// `to` as a `mailto:` URL or an address (RFC 6068: a browser's mailto handler passes the
/// whole URL; its query may carry cc, subject and body).
fn mailto(query: ComposeQuery) -> ComposeQuery {
    let Some(rest) = query.to.strip_prefix("mailto:") else {
        return query;
    };
    let (to, params) = rest.split_once('?').unwrap_or((rest, ""));
    let mut out = ComposeQuery {
        to: percent_decode(to),
        ..query
    };
    for (k, v) in form_urlencoded::parse(params.as_bytes()) {
        match k.to_ascii_lowercase().as_str() {
            "cc" => out.cc = v.into_owned(),
            "subject" => out.subject = v.into_owned(),
            "body" => out.body = v.into_owned(),
            _ => {}
        }
    }
    out
}

fn percent_decode(text: &str) -> String {
    form_urlencoded::parse(format!("x={}", text.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

pub(super) async fn compose(
    State(app): State<Shared>,
    headers: HeaderMap,
    Query(query): Query<ComposeQuery>,
) -> Response {
    let Some((_, view)) = session(&app, &headers) else {
        return to_login();
    };
    let chrome = match chrome(&app, &view, "").await {
        Ok(c) => c,
        Err(e) => return failure(None, &e),
    };
    let query = mailto(query);
    html(
        StatusCode::OK,
        ComposePage {
            from: app.backend.address_of(&view.user),
            chrome,
            to: query.to,
            cc: query.cc,
            subject: query.subject,
            body: query.body,
            error: None,
        },
    )
}

#[derive(Deserialize)]
pub(super) struct SendForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    to: String,
    #[serde(default)]
    cc: String,
    #[serde(default)]
    subject: String,
    #[serde(default)]
    body: String,
}

pub(super) async fn send(
    State(app): State<Shared>,
    client: Option<Extension<Client>>,
    headers: HeaderMap,
    Form(form): Form<SendForm>,
) -> Response {
    let Some(client) = client_of(client) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let Some((_, view)) = session(&app, &headers) else {
        return to_login();
    };
    if !tokens_match(&form.csrf, &view.csrf) {
        return forbidden();
    }
    let chrome = match chrome(&app, &view, "").await {
        Ok(c) => c,
        Err(e) => return failure(None, &e),
    };
    let from = app.backend.address_of(&view.user);
    let again = |chrome: Chrome, status: StatusCode, error: String| {
        html(
            status,
            ComposePage {
                chrome,
                from: from.clone(),
                to: form.to.clone(),
                cc: form.cc.clone(),
                subject: form.subject.clone(),
                body: form.body.clone(),
                error: Some(error),
            },
        )
    };
    let (to, cc) = match (
        message::parse_addresses(&form.to),
        message::parse_addresses(&form.cc),
    ) {
        (Ok(to), Ok(cc)) => (to, cc),
        (Err(e), _) | (_, Err(e)) => return again(chrome, StatusCode::UNPROCESSABLE_ENTITY, e),
    };
    if to.is_empty() && cc.is_empty() {
        return again(
            chrome,
            StatusCode::UNPROCESSABLE_ENTITY,
            "Name at least one recipient.".into(),
        );
    }
    let draft = message::Draft {
        from: from.clone(),
        to,
        cc,
        subject: form.subject.clone(),
        body: form.body.clone(),
    };
    let domain = from.rsplit_once('@').map_or("localhost", |(_, d)| d);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
    let id_left = format!("{}.{}", now, &random_token()[..24]);
    let message = message::build_message(&draft, now, &id_left, domain);
    let recipients = draft.to.iter().chain(&draft.cc).cloned().collect();
    let outgoing = Outgoing {
        recipients,
        message,
    };
    match app.backend.send(client, view.user.clone(), outgoing).await {
        Ok(()) => html(
            StatusCode::OK,
            NoticePage {
                chrome: Some(chrome),
                title: "Sent".into(),
                text: "Your message is stored and on its way; a copy is in Sent.".into(),
                error: false,
                link: "/mail?folder=INBOX".into(),
                link_text: "Inbox".into(),
            },
        ),
        Err(BackendError::Refused(reason)) => {
            again(chrome, StatusCode::UNPROCESSABLE_ENTITY, reason)
        }
        Err(e) => again(chrome, StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}
