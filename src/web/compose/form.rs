//! The compose form as a browser posts it: `multipart/form-data` (the form's own encoding,
//! with its files) or url-encoded (a form without files, a script's POST). Every byte read
//! counts against one bound, so a request holds at most that much in memory.

use axum::extract::{FromRequest, Multipart, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::Form;
use serde::Deserialize;

use super::message::{content_type_for, Attachment};

/// The fields of the compose form (names fixed: pages, scripts and the browser test use
/// them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct ComposeForm {
    pub csrf: String,
    pub to: String,
    pub cc: String,
    pub bcc: String,
    pub subject: String,
    pub body: String,
    /// "send" (also when absent) or "draft".
    pub action: String,
    /// The UID of the draft being edited (its attachments come along; sending removes it).
    pub draft: Option<u32>,
    pub in_reply_to: String,
    pub references: String,
    /// The message forwarded (attached whole): its folder and UID.
    pub forward_folder: String,
    pub forward_uid: Option<u32>,
    #[serde(skip)]
    pub files: Vec<Attachment>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    #[error(
        "The message with its attachments is larger than this server accepts (at most {0} bytes)."
    )]
    TooLarge(u64),
    /// Past `web.request_body_max` (the web side's own limit, when it is the lower one).
    #[error("The form with its attachments is larger than this server accepts in one request.")]
    RequestTooLarge,
    #[error("The form could not be read: {0}")]
    Malformed(String),
}

impl FormError {
    pub fn status(&self) -> StatusCode {
        match self {
            FormError::TooLarge(_) | FormError::RequestTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            FormError::Malformed(_) => StatusCode::BAD_REQUEST,
        }
    }
}

/// Reads the form, at most `limit` bytes of field data in all (the request's own limit,
/// `web.request_body_max`, applies as well).
pub async fn read(request: Request, limit: u64) -> Result<ComposeForm, FormError> {
    let multipart = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("multipart/form-data")
        });
    if !multipart {
        let Form(form) = Form::<ComposeForm>::from_request(request, &())
            .await
            .map_err(|e| match e.status() {
                StatusCode::PAYLOAD_TOO_LARGE => FormError::RequestTooLarge,
                _ => FormError::Malformed(e.body_text()),
            })?;
        let size = [&form.to, &form.cc, &form.bcc, &form.subject, &form.body]
            .iter()
            .map(|f| f.len() as u64)
            .sum::<u64>();
        if size > limit {
            return Err(FormError::TooLarge(limit));
        }
        return Ok(form);
    }
    let mut parts = Multipart::from_request(request, &())
        .await
        .map_err(|e| FormError::Malformed(e.body_text()))?;
    let failed = |e: axum::extract::multipart::MultipartError| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => FormError::RequestTooLarge,
        _ => FormError::Malformed(e.body_text()),
    };
    let mut form = ComposeForm::default();
    let mut total: u64 = 0;
    while let Some(mut field) = parts.next_field().await.map_err(failed)? {
        let name = field.name().unwrap_or("").to_string();
        let file_name = field.file_name().map(str::to_string);
        let uploaded_type = field.content_type().map(str::to_string);
        let mut data = Vec::new();
        while let Some(chunk) = field.chunk().await.map_err(failed)? {
            total = total.saturating_add(chunk.len() as u64);
            if total > limit {
                return Err(FormError::TooLarge(limit));
            }
            data.extend_from_slice(&chunk);
        }
        if name == "attachment" {
            let file_name = file_name.unwrap_or_default();
            // A file input left empty still posts a part with no name and no bytes.
            if file_name.is_empty() && data.is_empty() {
                continue;
            }
            let file_name = clean_file_name(&file_name);
            form.files.push(Attachment {
                content_type: content_type_for(&file_name, uploaded_type.as_deref()),
                name: file_name,
                data,
            });
            continue;
        }
        let text = String::from_utf8_lossy(&data).into_owned();
        match name.as_str() {
            "csrf" => form.csrf = text,
            "to" => form.to = text,
            "cc" => form.cc = text,
            "bcc" => form.bcc = text,
            "subject" => form.subject = text,
            "body" => form.body = text,
            "action" => form.action = text,
            "draft" => form.draft = text.trim().parse().ok(),
            "in_reply_to" => form.in_reply_to = text,
            "references" => form.references = text,
            "forward_folder" => form.forward_folder = text,
            "forward_uid" => form.forward_uid = text.trim().parse().ok(),
            _ => {}
        }
    }
    Ok(form)
}

/// A file's name as the message carries it: the last path component (some browsers send
/// a whole path), no control characters, "attachment" when nothing is left.
pub fn clean_file_name(name: &str) -> String {
    let last = name.rsplit(['/', '\\']).next().unwrap_or("");
    let clean: String = last.chars().filter(|c| !c.is_control()).collect();
    let clean = clean.trim();
    if clean.is_empty() || clean == "." || clean == ".." {
        "attachment".into()
    } else {
        clean.chars().take(200).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    fn multipart(parts: &[(&str, Option<&str>, &[u8])]) -> Request {
        let mut body = Vec::new();
        for (name, file, data) in parts {
            body.extend_from_slice(b"--XyZ\r\n");
            match file {
                Some(f) => body.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes(),
                ),
                None => body.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
                ),
            }
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
    fn fields_and_files_from_multipart() {
        let binary: Vec<u8> = (0..=255u8).collect();
        let form = block_on(read(
            multipart(&[
                ("csrf", None, b"tok"),
                ("to", None, b"bob@example.test"),
                ("bcc", None, b"c@example.test"),
                ("body", None, "\u{fc}ber".as_bytes()),
                ("draft", None, b"7"),
                ("attachment", Some("C:\\tmp\\report.pdf"), &binary),
                ("attachment", Some(""), b""),
            ]),
            10_000,
        ))
        .unwrap();
        assert_eq!(form.csrf, "tok");
        assert_eq!(form.to, "bob@example.test");
        assert_eq!(form.bcc, "c@example.test");
        assert_eq!(form.body, "\u{fc}ber");
        assert_eq!(form.draft, Some(7));
        assert_eq!(form.files.len(), 1, "the empty file input is skipped");
        assert_eq!(form.files[0].name, "report.pdf");
        assert_eq!(form.files[0].content_type, "application/pdf");
        assert_eq!(form.files[0].data, binary);
    }

    #[test]
    fn past_the_bound_is_too_large() {
        let big = vec![b'x'; 5000];
        let got = block_on(read(
            multipart(&[("csrf", None, b"tok"), ("attachment", Some("a.bin"), &big)]),
            4096,
        ));
        assert_eq!(got, Err(FormError::TooLarge(4096)));
    }

    #[test]
    fn url_encoded_still_works() {
        let request = Request::builder()
            .method("POST")
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(
                "csrf=t&to=a%40example.test&subject=s&body=b&action=draft",
            ))
            .unwrap();
        let form = block_on(read(request, 1000)).unwrap();
        assert_eq!(form.to, "a@example.test");
        assert_eq!(form.action, "draft");
        assert!(form.files.is_empty());
    }

    #[test]
    fn file_names_lose_paths_and_controls() {
        assert_eq!(clean_file_name("/etc/passwd"), "passwd");
        assert_eq!(clean_file_name("a\r\nb.txt"), "ab.txt");
        assert_eq!(clean_file_name(".."), "attachment");
        assert_eq!(
            clean_file_name("r\u{e9}sum\u{e9}.pdf"),
            "r\u{e9}sum\u{e9}.pdf"
        );
    }
}
