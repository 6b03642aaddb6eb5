//! The mail settings page (`/settings`): the user's registered OpenPGP key and S/MIME
//! certificate, whether their stored mail is encrypted and the server's rule; uploading a
//! key, removing one, and choosing encryption on, off or as the server does. Every change
//! goes through the relay's key store (checked as `relay user key set` checks, written
//! durably) before the page says it is done.

use askama::Template;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::header::HeaderMap;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Form;
use serde::Deserialize;

use super::backend::{BackendError, KeySettings, OpenPgpSummary, SmimeSummary};
use super::http::{authorised, chrome, failure, forbidden, html, session, to_login, Shared};
use super::pages::Chrome;
use super::session::{tokens_match, SessionView};
use crate::mailcrypt::KeyKind;

/// The largest key file taken (the key store's own bound, `mailbox::keys::KEY_FILE_MAX`);
/// the upload stops being read past it.
pub const KEY_UPLOAD_MAX: usize = 1 << 20;
/// The form's other fields (the CSRF token) are tiny.
const FIELD_MAX: usize = 1024;

#[derive(Template)]
#[template(path = "settings.html", config = "src/web/askama.toml")]
pub struct SettingsPage {
    pub chrome: Chrome,
    pub openpgp: Option<OpenPgpSummary>,
    pub smime: Option<SmimeSummary>,
    /// The S/MIME certificate's end of validity, as a date.
    pub smime_expiry: String,
    /// Whether stored mail is encrypted now, in a sentence.
    pub state: String,
    /// The server's rule, in a sentence.
    pub rule: String,
    /// What "as the server does" means for this user ("on" or "off").
    pub default_text: &'static str,
    pub choice_default: bool,
    pub choice_on: bool,
    pub choice_off: bool,
    pub required: bool,
    pub upload_max_text: String,
    pub done: Option<String>,
    pub error: Option<String>,
}

impl SettingsPage {
    pub fn new(chrome: Chrome, keys: KeySettings) -> SettingsPage {
        let state = match keys.sealed_with {
            Some(KeyKind::OpenPgp) => {
                "Mail stored for you is encrypted to your OpenPGP key.".to_string()
            }
            Some(KeyKind::Smime) => {
                "Mail stored for you is encrypted to your S/MIME certificate.".to_string()
            }
            None if keys.openpgp.is_none() && keys.smime.is_none() => {
                "Mail stored for you is not encrypted: you have no key registered.".to_string()
            }
            None if keys.choice == Some(false) => {
                "Mail stored for you is not encrypted: you turned it off.".to_string()
            }
            None => "Mail stored for you is not encrypted: this server does not by default; turn it on below.".to_string(),
        };
        let rule = if keys.server_required {
            "This server encrypts the stored mail of every user who has registered a key."
        } else if keys.server_default {
            "This server encrypts the stored mail of users who have registered a key, unless they turn it off."
        } else {
            "This server encrypts stored mail only for users who turn it on and have registered a key."
        };
        let smime_expiry = keys
            .smime
            .as_ref()
            .and_then(|c| i64::try_from(c.not_after).ok())
            .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
            .map(|d| d.format("%Y-%m-%d %H:%M UTC").to_string())
            .unwrap_or_default();
        SettingsPage {
            chrome,
            smime_expiry,
            state,
            rule: rule.to_string(),
            default_text: if keys.server_default || keys.server_required {
                "on"
            } else {
                "off"
            },
            choice_default: keys.choice.is_none(),
            choice_on: keys.choice == Some(true),
            choice_off: keys.choice == Some(false),
            required: keys.server_required,
            upload_max_text: format!("{} KiB", KEY_UPLOAD_MAX / 1024),
            openpgp: keys.openpgp,
            smime: keys.smime,
            done: None,
            error: None,
        }
    }
}

/// The page as it is now, with the outcome of what was just done.
async fn show(
    app: &Shared,
    view: &SessionView,
    status: StatusCode,
    done: Option<String>,
    error: Option<String>,
) -> Response {
    let chrome = match chrome(app, view, "").await {
        Ok(c) => c,
        Err(e) => return failure(None, &e),
    };
    let keys = match app.backend.key_settings(view.user.clone()).await {
        Ok(keys) => keys,
        Err(e) => return failure(Some(chrome), &e),
    };
    let mut page = SettingsPage::new(chrome, keys);
    page.done = done;
    page.error = error;
    html(status, page)
}

/// An action's outcome: done (the sentence), refused (the reason, shown), or a failure.
async fn outcome<T>(
    app: &Shared,
    view: &SessionView,
    result: Result<T, BackendError>,
    done: impl FnOnce(T) -> String,
) -> Response {
    match result {
        Ok(value) => show(app, view, StatusCode::OK, Some(done(value)), None).await,
        Err(BackendError::Refused(reason)) => {
            show(
                app,
                view,
                StatusCode::UNPROCESSABLE_ENTITY,
                None,
                Some(reason),
            )
            .await
        }
        Err(e) => {
            let chrome = chrome(app, view, "").await.ok();
            failure(chrome, &e)
        }
    }
}

/// `GET /settings`.
pub async fn page(State(app): State<Shared>, headers: HeaderMap) -> Response {
    let Some((_, view)) = session(&app, &headers) else {
        return to_login();
    };
    show(&app, &view, StatusCode::OK, None, None).await
}

#[derive(Deserialize)]
pub struct EncryptForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    choice: String,
}

/// `POST /settings/encrypt`: `choice` is `on`, `off` or `default`.
pub async fn encrypt(
    State(app): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<EncryptForm>,
) -> Response {
    let (_, view) = match authorised(&app, &headers, &form.csrf) {
        Ok(found) => found,
        Err(refused) => return refused.into_response(),
    };
    let choice = match form.choice.as_str() {
        "on" => Some(true),
        "off" => Some(false),
        "default" => None,
        _ => {
            return show(
                &app,
                &view,
                StatusCode::UNPROCESSABLE_ENTITY,
                None,
                Some("Choose on, off, or as the server does.".into()),
            )
            .await
        }
    };
    let result = app.backend.set_encrypt(view.user.clone(), choice).await;
    outcome(&app, &view, result, |()| {
        match choice {
            Some(true) => "Encryption of your stored mail is on.",
            Some(false) => "Encryption of your stored mail is off.",
            None => "Your stored mail is encrypted as the server does by default.",
        }
        .to_string()
    })
    .await
}

#[derive(Deserialize)]
pub struct RemoveForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    kind: String,
}

fn kind_text(kind: KeyKind) -> &'static str {
    match kind {
        KeyKind::OpenPgp => "OpenPGP key",
        KeyKind::Smime => "S/MIME certificate",
    }
}

/// `POST /settings/remove`: `kind` is `openpgp` or `smime`.
pub async fn remove(
    State(app): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<RemoveForm>,
) -> Response {
    let (_, view) = match authorised(&app, &headers, &form.csrf) {
        Ok(found) => found,
        Err(refused) => return refused.into_response(),
    };
    let kind = match form.kind.as_str() {
        "openpgp" => KeyKind::OpenPgp,
        "smime" => KeyKind::Smime,
        _ => {
            return show(
                &app,
                &view,
                StatusCode::UNPROCESSABLE_ENTITY,
                None,
                Some("There is no such kind of key.".into()),
            )
            .await
        }
    };
    let result = app.backend.remove_key(view.user.clone(), kind).await;
    outcome(&app, &view, result, |removed| {
        if removed {
            format!("Your {} is removed.", kind_text(kind))
        } else {
            format!("You had no {} registered.", kind_text(kind))
        }
    })
    .await
}

/// The upload form as read: its token and the key file's bytes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct KeyForm {
    pub csrf: String,
    pub key: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormError {
    #[error("The key file is larger than this server accepts (at most {0} bytes).")]
    TooLarge(usize),
    #[error("The form could not be read: {0}")]
    Malformed(String),
}

/// Reads the multipart upload: `csrf` and `key`, at most [`KEY_UPLOAD_MAX`] bytes of key
/// and [`FIELD_MAX`] of any other field, whatever the request's size.
pub async fn read_key_form(request: Request) -> Result<KeyForm, KeyFormError> {
    let mut parts = Multipart::from_request(request, &())
        .await
        .map_err(|e| KeyFormError::Malformed(e.body_text()))?;
    let failed = |e: axum::extract::multipart::MultipartError| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => KeyFormError::TooLarge(KEY_UPLOAD_MAX),
        _ => KeyFormError::Malformed(e.body_text()),
    };
    let mut form = KeyForm::default();
    while let Some(mut field) = parts.next_field().await.map_err(failed)? {
        let name = field.name().unwrap_or("").to_string();
        let max = if name == "key" {
            KEY_UPLOAD_MAX
        } else {
            FIELD_MAX
        };
        let mut data = Vec::new();
        while let Some(chunk) = field.chunk().await.map_err(failed)? {
            if data.len() + chunk.len() > max {
                return Err(match name.as_str() {
                    "key" => KeyFormError::TooLarge(KEY_UPLOAD_MAX),
                    _ => KeyFormError::Malformed(format!("the field `{name}` is too long")),
                });
            }
            data.extend_from_slice(&chunk);
        }
        match name.as_str() {
            "csrf" => form.csrf = String::from_utf8_lossy(&data).into_owned(),
            "key" => form.key = data,
            _ => {}
        }
    }
    Ok(form)
}

/// `POST /settings/key` (multipart): registers the uploaded key.
pub async fn upload(State(app): State<Shared>, headers: HeaderMap, request: Request) -> Response {
    let Some((_, view)) = session(&app, &headers) else {
        return to_login();
    };
    let form = match read_key_form(request).await {
        Ok(form) => form,
        Err(error) => {
            let status = match error {
                KeyFormError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
                KeyFormError::Malformed(_) => StatusCode::BAD_REQUEST,
            };
            // The token could not be read with the rest: nothing is done either way.
            return show(&app, &view, status, None, Some(error.to_string())).await;
        }
    };
    if !tokens_match(&form.csrf, &view.csrf) {
        return forbidden();
    }
    if form.key.is_empty() {
        return show(
            &app,
            &view,
            StatusCode::UNPROCESSABLE_ENTITY,
            None,
            Some("Choose a key file to register.".into()),
        )
        .await;
    }
    let result = app.backend.set_key(view.user.clone(), form.key).await;
    outcome(&app, &view, result, |kind| {
        format!("Your {} is registered.", kind_text(kind))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::header::CONTENT_TYPE;

    fn multipart(parts: &[(&str, &[u8])]) -> Request {
        let mut body = Vec::new();
        for (name, data) in parts {
            body.extend_from_slice(
                format!(
                    "--XyZ\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"k\"\r\n\r\n"
                )
                .as_bytes(),
            );
            body.extend_from_slice(data);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"--XyZ--\r\n");
        Request::builder()
            .method("POST")
            .header(CONTENT_TYPE, "multipart/form-data; boundary=XyZ")
            .body(Body::from(body))
            .unwrap()
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn the_upload_is_read_within_its_bound() {
        let key: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
        let form = block_on(read_key_form(multipart(&[
            ("csrf", b"tok"),
            ("key", &key),
            ("other", b"x"),
        ])))
        .unwrap();
        assert_eq!(
            form,
            KeyForm {
                csrf: "tok".into(),
                key
            }
        );
        let huge = vec![b'a'; KEY_UPLOAD_MAX + 1];
        assert_eq!(
            block_on(read_key_form(multipart(&[("csrf", b"t"), ("key", &huge)]))),
            Err(KeyFormError::TooLarge(KEY_UPLOAD_MAX))
        );
        let long = vec![b'a'; FIELD_MAX + 1];
        assert!(matches!(
            block_on(read_key_form(multipart(&[("csrf", &long)]))),
            Err(KeyFormError::Malformed(_))
        ));
    }

    fn chrome() -> Chrome {
        Chrome {
            user: "alice".into(),
            csrf: "tok".into(),
            folders: Vec::new(),
        }
    }

    #[test]
    fn the_page_escapes_what_it_shows_and_marks_the_choice() {
        let keys = KeySettings {
            openpgp: Some(OpenPgpSummary {
                fingerprint: "ABCD".into(),
                addresses: vec!["<b>alice</b>@example.test".into()],
            }),
            smime: None,
            choice: Some(false),
            sealed_with: None,
            server_default: true,
            server_required: false,
        };
        let mut page = SettingsPage::new(chrome(), keys);
        page.error = Some("<script>x</script>".into());
        let text = page.render().unwrap();
        assert!(
            text.contains("&#60;b&#62;alice&#60;/b&#62;@example.test"),
            "{text}"
        );
        assert!(
            text.contains("&#60;script&#62;x&#60;/script&#62;"),
            "{text}"
        );
        assert!(!text.contains("<script>"), "{text}");
        assert!(text.contains("you turned it off"), "{text}");
        assert!(text.contains(r#"value="off" checked"#), "{text}");
        assert!(
            text.contains("No S/MIME certificate is registered."),
            "{text}"
        );
        assert!(!text.contains("disabled"), "{text}");
    }

    #[test]
    fn a_required_rule_disables_off() {
        let keys = KeySettings {
            sealed_with: Some(KeyKind::Smime),
            smime: Some(SmimeSummary {
                fingerprint: "EF01".into(),
                addresses: vec!["alice@example.test".into()],
                not_after: 1_893_456_000,
            }),
            server_default: true,
            server_required: true,
            ..KeySettings::default()
        };
        let text = SettingsPage::new(chrome(), keys).render().unwrap();
        assert!(text.contains(r#"value="off" disabled"#), "{text}");
        assert!(text.contains("2030-01-01 00:00 UTC"), "{text}");
        assert!(
            text.contains("encrypted to your S/MIME certificate"),
            "{text}"
        );
        assert!(
            text.contains("every user who has registered a key"),
            "{text}"
        );
    }
}
