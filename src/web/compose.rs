//! Writing mail: the compose form (filled from a query, a `mailto:` URL, a message answered
//! or forwarded, or a saved draft), sending it, and saving it as a draft.

use axum::extract::{Query, Request, State};
use axum::http::header::HeaderMap;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde::Deserialize;

use super::backend::{BackendError, Client, Outgoing};
use super::http::{chrome, client_of, failure, forbidden, href, html, session, to_login, Shared};
use super::pages::{Chrome, ComposePage, NoticePage};
use super::session::{random_token, tokens_match, SessionView};

pub mod form;
pub mod mailto;
pub mod message;

use form::{ComposeForm, FormError};
use message::{Answer, Attachment, Bcc, Draft, Prefill};

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct ComposeQuery {
    to: String,
    cc: String,
    bcc: String,
    subject: String,
    body: String,
    /// A whole `mailto:` URL (a browser's registered handler passes it).
    uri: String,
    reply: Option<u32>,
    reply_all: Option<u32>,
    forward: Option<u32>,
    folder: String,
    draft: Option<u32>,
}

/// The hidden state a compose page carries between its GET and its POST.
#[derive(Default)]
struct Carried {
    draft: Option<u32>,
    forward_folder: String,
    forward_uid: Option<u32>,
    /// Names of the files that come along without an upload (a draft's, a forward's).
    kept: Vec<String>,
}

fn page(
    chrome: Chrome,
    from: String,
    fields: Prefill,
    carried: Carried,
    error: Option<String>,
) -> ComposePage {
    ComposePage {
        chrome,
        from,
        to: fields.to,
        cc: fields.cc,
        bcc: fields.bcc,
        subject: fields.subject,
        body: fields.body,
        in_reply_to: fields.in_reply_to,
        references: fields.references,
        draft: carried.draft,
        forward_folder: carried.forward_folder,
        forward_uid: carried.forward_uid,
        kept: carried.kept,
        error,
    }
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
    let from = app.backend.address_of(&view.user);
    let folder = if query.folder.is_empty() {
        "INBOX".to_string()
    } else {
        query.folder.clone()
    };
    let mut fields = Prefill {
        to: query.to.clone(),
        cc: query.cc.clone(),
        bcc: query.bcc.clone(),
        subject: query.subject.clone(),
        body: query.body.clone(),
        ..Prefill::default()
    };
    // RFC 6068: the URL in `uri`, or (older links) in `to`.
    let url = [&query.uri, &query.to]
        .into_iter()
        .find(|u| u.len() >= 7 && u[..7].eq_ignore_ascii_case("mailto:"));
    if let Some(url) = url {
        let m = mailto::parse(url);
        fields.to = m.to;
        for (field, value) in [
            (&mut fields.cc, m.cc),
            (&mut fields.bcc, m.bcc),
            (&mut fields.subject, m.subject),
            (&mut fields.body, m.body),
        ] {
            if !value.is_empty() {
                *field = value;
            }
        }
    }
    let mut carried = Carried::default();
    let answered = [
        (query.reply, Answer::Reply),
        (query.reply_all, Answer::ReplyAll),
        (query.forward, Answer::Forward),
    ]
    .into_iter()
    .find_map(|(uid, mode)| Some((uid?, mode)));
    if let Some(uid) = query.draft {
        match app.backend.open_draft(view.user.clone(), uid).await {
            Ok(raw) => {
                let (draft_fields, files) = message::reopen(&raw);
                fields = draft_fields;
                carried.draft = Some(uid);
                carried.kept = files.into_iter().map(|f| f.name).collect();
            }
            Err(e) => return failure(Some(chrome), &e),
        }
    } else if let Some((uid, mode)) = answered {
        match app
            .backend
            .message(view.user.clone(), folder.clone(), uid, false)
            .await
        {
            Ok(stored) => {
                let user = view.user.clone();
                let backend = &app.backend;
                fields = message::answer(&stored.raw, mode, |a| backend.is_own_address(&user, a));
                if mode == Answer::Forward {
                    carried.kept = vec![forward_name(&stored.raw)];
                    carried.forward_folder = folder;
                    carried.forward_uid = Some(uid);
                }
            }
            Err(e) => return failure(Some(chrome), &e),
        }
    }
    html(StatusCode::OK, page(chrome, from, fields, carried, None))
}

/// The file name a forwarded message goes by: its subject (no path or control
/// characters), ".eml".
fn forward_name(raw: &[u8]) -> String {
    let subject = mail_parser::MessageParser::default()
        .parse_headers(raw)
        .and_then(|m| m.subject().map(str::to_string))
        .unwrap_or_default();
    let clean: String = subject
        .chars()
        .filter(|c| !c.is_control() && !"/\\".contains(*c))
        .take(100)
        .collect();
    let clean = clean.trim();
    if clean.is_empty() {
        "message.eml".into()
    } else {
        format!("{clean}.eml")
    }
}

/// The compose form posted: "Send" submits it, "Save draft" keeps it in Drafts.
pub(super) async fn send(
    State(app): State<Shared>,
    client: Option<Extension<Client>>,
    headers: HeaderMap,
    request: Request,
) -> Response {
    let Some(client) = client_of(client) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let Some((_, view)) = session(&app, &headers) else {
        return to_login();
    };
    let limit = app.backend.message_size_max();
    let form = match form::read(request, limit).await {
        Ok(form) => form,
        Err(error) => return unread_form(&app, &view, &error).await,
    };
    if !tokens_match(&form.csrf, &view.csrf) {
        return forbidden();
    }
    let chrome = match chrome(&app, &view, "").await {
        Ok(c) => c,
        Err(e) => return failure(None, &e),
    };
    let from = app.backend.address_of(&view.user);
    let uploads = !form.files.is_empty();
    let again = |chrome: Chrome, status: StatusCode, error: String| {
        let fields = Prefill {
            to: form.to.clone(),
            cc: form.cc.clone(),
            bcc: form.bcc.clone(),
            subject: form.subject.clone(),
            body: form.body.clone(),
            in_reply_to: form.in_reply_to.clone(),
            references: form.references.clone(),
        };
        let carried = Carried {
            draft: form.draft,
            forward_folder: form.forward_folder.clone(),
            forward_uid: form.forward_uid,
            kept: Vec::new(),
        };
        // A browser never fills a file input again: say so.
        let error = if uploads {
            format!("{error} Attach your files again.")
        } else {
            error
        };
        html(
            status,
            page(chrome, from.clone(), fields, carried, Some(error)),
        )
    };
    let parsed = (
        message::parse_addresses(&form.to),
        message::parse_addresses(&form.cc),
        message::parse_addresses(&form.bcc),
    );
    let (to, cc, bcc) = match parsed {
        (Ok(to), Ok(cc), Ok(bcc)) => (to, cc, bcc),
        (Err(e), ..) | (_, Err(e), _) | (.., Err(e)) => {
            return again(chrome, StatusCode::UNPROCESSABLE_ENTITY, e)
        }
    };
    let saving = form.action == "draft";
    if !saving && to.is_empty() && cc.is_empty() && bcc.is_empty() {
        return again(
            chrome,
            StatusCode::UNPROCESSABLE_ENTITY,
            "Name at least one recipient.".into(),
        );
    }
    let attachments = match carried_files(&app, &view, &form).await {
        Ok(files) => files,
        Err(e) => return again(chrome, StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
    };
    let references = message::parse_message_ids(&form.references);
    let in_reply_to = message::parse_message_ids(&form.in_reply_to).pop();
    let draft = Draft {
        from: from.clone(),
        to,
        cc,
        bcc,
        subject: form.subject.clone(),
        body: form.body.clone(),
        in_reply_to,
        references,
        attachments: attachments.into_iter().chain(form.files.clone()).collect(),
    };
    let domain = from.rsplit_once('@').map_or("localhost", |(_, d)| d);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
    let id_left = format!("{}.{}", now, &random_token()[..24]);
    if saving {
        let kept = message::build_message(&draft, now, &id_left, domain, Bcc::Keep);
        return match app
            .backend
            .save_draft(view.user.clone(), kept, form.draft)
            .await
        {
            Ok(uid) => html(
                StatusCode::OK,
                NoticePage {
                    chrome: Some(chrome),
                    title: "Draft saved".into(),
                    text: "Your draft is kept in Drafts.".into(),
                    error: false,
                    link: href("/compose", &[("draft", &uid.to_string())]),
                    link_text: "Go on writing".into(),
                },
            ),
            Err(BackendError::Refused(reason)) => {
                again(chrome, StatusCode::UNPROCESSABLE_ENTITY, reason)
            }
            Err(e) => again(chrome, StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        };
    }
    let message = message::build_message(&draft, now, &id_left, domain, Bcc::Omit);
    let sent_header = if draft.bcc.is_empty() {
        Vec::new()
    } else {
        let list: Vec<String> = draft.bcc.iter().map(|a| format!("<{a}>")).collect();
        format!("Bcc: {}\r\n", list.join(",\r\n ")).into_bytes()
    };
    let recipients = draft
        .to
        .iter()
        .chain(&draft.cc)
        .chain(&draft.bcc)
        .cloned()
        .collect();
    let outgoing = Outgoing {
        recipients,
        message,
        sent_header,
    };
    match app.backend.send(client, view.user.clone(), outgoing).await {
        Ok(()) => {
            let mut text = "Your message is stored and on its way; a copy is in Sent.".to_string();
            if let Some(uid) = form.draft {
                if let Err(error) = app.backend.discard_draft(view.user.clone(), uid).await {
                    tracing::warn!(target: "relay::web", %error, "sent draft not removed");
                    text.push_str(" Its draft could not be removed from Drafts.");
                }
            }
            html(
                StatusCode::OK,
                NoticePage {
                    chrome: Some(chrome),
                    title: "Sent".into(),
                    text,
                    error: false,
                    link: "/mail?folder=INBOX".into(),
                    link_text: "Inbox".into(),
                },
            )
        }
        Err(BackendError::Refused(reason)) => {
            again(chrome, StatusCode::UNPROCESSABLE_ENTITY, reason)
        }
        Err(e) => again(chrome, StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// The files that come along without an upload: those of the draft being edited and the
/// message being forwarded (attached whole, as `message/rfc822`).
async fn carried_files(
    app: &Shared,
    view: &SessionView,
    form: &ComposeForm,
) -> Result<Vec<Attachment>, BackendError> {
    let mut files = Vec::new();
    if let Some(uid) = form.draft {
        match app.backend.open_draft(view.user.clone(), uid).await {
            Ok(raw) => files.extend(message::attachments_of(&raw)),
            // Removed meanwhile (another tab sent it): nothing to carry.
            Err(BackendError::NoSuchMessage) => {}
            Err(e) => return Err(e),
        }
    }
    if let Some(uid) = form.forward_uid {
        let stored = app
            .backend
            .message(view.user.clone(), form.forward_folder.clone(), uid, false)
            .await?;
        files.push(Attachment {
            name: forward_name(&stored.raw),
            content_type: "message/rfc822".into(),
            data: stored.raw,
        });
    }
    Ok(files)
}

/// The page for a form that could not be read (too large, or not a form).
async fn unread_form(app: &Shared, view: &SessionView, error: &FormError) -> Response {
    html(
        error.status(),
        NoticePage {
            chrome: chrome(app, view, "").await.ok(),
            title: "Not sent".into(),
            text: error.to_string(),
            error: true,
            link: "/compose".into(),
            link_text: "Write again".into(),
        },
    )
}
