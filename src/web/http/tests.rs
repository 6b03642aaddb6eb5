//! The routes against a backend in memory, through the router as hyper would call it.

use std::sync::Mutex as StdMutex;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request as HttpRequest;
use tower::ServiceExt;

use super::*;
use crate::web::backend::{
    BoxFuture, FolderPage, FolderSummary, ListedMessage, Outgoing, StoredMessage,
};

#[derive(Default)]
struct Memory {
    sent: StdMutex<Vec<(String, Outgoing)>>,
    seen: StdMutex<Vec<u32>>,
    acted: StdMutex<Vec<(String, u32, Action)>>,
    moved: StdMutex<Vec<(String, u32, String)>>,
    emptied: StdMutex<usize>,
}

/// The INBOX of the memory backend, newest first: uid 3, 2, 1.
fn inbox_messages() -> Vec<ListedMessage> {
    (1..=3u32)
        .rev()
        .map(|uid| ListedMessage {
            uid,
            seen: uid == 1,
            flagged: uid == 2,
            size: 10,
            internal_date: 0,
            header: format!(
                "From: Sender {uid} <s{uid}@example.test>\r\nSubject: number {uid} & <i>x</i>\r\n\r\n"
            )
            .into_bytes(),
        })
        .collect()
}

const TEXT_MESSAGE: &[u8] =
    b"From: Mallory <m@example.test>\r\nSubject: <b>hi</b>\r\n\r\n<script>alert(1)</script>\r\n";

/// HTML with a remote image, a PDF attachment and a forwarded HTML message.
const HTML_MESSAGE: &[u8] = b"From: a@example.test\r\nSubject: html\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n\
--b\r\nContent-Type: text/html\r\n\r\n<p>outer <img src=\"https://remote.test/x.gif\"></p>\r\n\
--b\r\nContent-Type: application/pdf; name=\"a b.pdf\"\r\nContent-Disposition: attachment\r\n\r\n%PDF\r\n\
--b\r\nContent-Type: message/rfc822\r\n\r\nFrom: c@example.test\r\nSubject: inner\r\nContent-Type: text/html\r\n\r\n<i>inner html</i>\r\n\
--b--\r\n";

impl Backend for Memory {
    fn login(
        &self,
        _client: Client,
        user: String,
        password: String,
    ) -> BoxFuture<'_, Result<String, LoginError>> {
        Box::pin(async move {
            match (user.as_str(), password.as_str()) {
                ("alice", "secret") => Ok("alice".into()),
                ("locked", _) => Err(LoginError::Locked),
                _ => Err(LoginError::Invalid),
            }
        })
    }

    fn folders(&self, _user: String) -> BoxFuture<'_, Result<Vec<FolderSummary>, BackendError>> {
        Box::pin(async {
            Ok(vec![
                FolderSummary {
                    name: "INBOX".into(),
                    messages: 3,
                    unseen: 2,
                },
                FolderSummary {
                    name: "Sent".into(),
                    messages: 0,
                    unseen: 0,
                },
            ])
        })
    }

    fn page(
        &self,
        _user: String,
        folder: String,
        skip: usize,
        count: usize,
    ) -> BoxFuture<'_, Result<FolderPage, BackendError>> {
        Box::pin(async move {
            if folder != "INBOX" {
                return Err(BackendError::NoSuchFolder);
            }
            let all = inbox_messages();
            Ok(FolderPage {
                total: all.len(),
                messages: all.into_iter().skip(skip).take(count).collect(),
            })
        })
    }

    fn message(
        &self,
        _user: String,
        _folder: String,
        uid: u32,
        mark_seen: bool,
    ) -> BoxFuture<'_, Result<StoredMessage, BackendError>> {
        Box::pin(async move {
            let raw = match uid {
                7 => TEXT_MESSAGE,
                9 => HTML_MESSAGE,
                _ => return Err(BackendError::NoSuchMessage),
            };
            if mark_seen {
                self.seen.lock().unwrap().push(uid);
            }
            Ok(StoredMessage {
                raw: raw.to_vec(),
                flagged: false,
            })
        })
    }

    fn act(
        &self,
        _user: String,
        folder: String,
        uid: u32,
        action: Action,
    ) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move {
            self.acted.lock().unwrap().push((folder, uid, action));
            Ok(())
        })
    }

    fn send(
        &self,
        _client: Client,
        user: String,
        outgoing: Outgoing,
    ) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move {
            self.sent.lock().unwrap().push((user, outgoing));
            Ok(())
        })
    }

    fn message_size_max(&self) -> u64 {
        64 * 1024
    }

    fn save_draft(
        &self,
        _user: String,
        _message: Vec<u8>,
        _replaces: Option<u32>,
    ) -> BoxFuture<'_, Result<u32, BackendError>> {
        Box::pin(async { Err(BackendError::Unavailable) })
    }

    fn open_draft(&self, _user: String, _uid: u32) -> BoxFuture<'_, Result<Vec<u8>, BackendError>> {
        Box::pin(async { Err(BackendError::NoSuchMessage) })
    }

    fn discard_draft(&self, _user: String, _uid: u32) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async { Err(BackendError::NoSuchMessage) })
    }

    fn is_own_address(&self, user: &str, address: &str) -> bool {
        address == self.address_of(user)
    }

    fn address_of(&self, user: &str) -> String {
        format!("{user}@example.test")
    }

    fn search(
        &self,
        _user: String,
        folder: String,
        text: String,
        skip: usize,
        count: usize,
    ) -> BoxFuture<'_, Result<FolderPage, BackendError>> {
        Box::pin(async move {
            if folder != "INBOX" {
                return Err(BackendError::NoSuchFolder);
            }
            // A stand-in for the store's matching: the header's bytes.
            let found: Vec<ListedMessage> = inbox_messages()
                .into_iter()
                .filter(|m| String::from_utf8_lossy(&m.header).contains(&text))
                .collect();
            Ok(FolderPage {
                total: found.len(),
                messages: found.into_iter().skip(skip).take(count).collect(),
            })
        })
    }

    fn move_to(
        &self,
        _user: String,
        folder: String,
        uid: u32,
        to: String,
    ) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move {
            if to != "Sent" && to != "INBOX" && to != "Trash" {
                return Err(BackendError::NoSuchFolder);
            }
            self.moved.lock().unwrap().push((folder, uid, to));
            Ok(())
        })
    }

    fn trash_folder(&self, _user: String) -> BoxFuture<'_, Result<Option<String>, BackendError>> {
        Box::pin(async { Ok(Some("Trash".to_string())) })
    }

    fn empty_trash(&self, _user: String) -> BoxFuture<'_, Result<usize, BackendError>> {
        Box::pin(async move {
            *self.emptied.lock().unwrap() += 1;
            Ok(0)
        })
    }
}

struct Harness {
    backend: Arc<Memory>,
    router: Router,
    tls: bool,
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Reply {
    fn set_cookie(&self, name: &str) -> Option<String> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with(&format!("{name}=")))
            .map(str::to_string)
    }

    fn cookie_value(&self, name: &str) -> Option<String> {
        let line = self.set_cookie(name)?;
        let value = line.split(';').next()?.split_once('=')?.1;
        Some(value.to_string())
    }

    fn location(&self) -> Option<&str> {
        self.headers.get(header::LOCATION)?.to_str().ok()
    }

    /// The value of the hidden `csrf` field of the page's first form.
    fn csrf(&self) -> String {
        let at = self
            .body
            .find("name=\"csrf\" value=\"")
            .expect("csrf field")
            + 19;
        self.body[at..at + 64].to_string()
    }
}

impl Harness {
    fn new(tls: bool) -> Harness {
        let backend = Arc::new(Memory::default());
        let app = Arc::new(App {
            backend: backend.clone(),
            sessions: Arc::new(Mutex::new(SessionTable::new(
                100,
                Duration::from_secs(600),
                Duration::from_secs(3600),
            ))),
            page_size: 2,
            authserv_id: "mx.test".into(),
        });
        Harness {
            backend,
            router: router(app, 64 * 1024),
            tls,
        }
    }

    async fn call(
        &self,
        method: &str,
        uri: &str,
        cookies: &[(&str, &str)],
        form: Option<&str>,
    ) -> Reply {
        let mut request = HttpRequest::builder().method(method).uri(uri);
        if !cookies.is_empty() {
            let header = cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ");
            request = request.header(header::COOKIE, header);
        }
        let body = match form {
            Some(form) => {
                request = request.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
                Body::from(form.to_string())
            }
            None => Body::empty(),
        };
        let mut request = request.body(body).unwrap();
        request.extensions_mut().insert(Client {
            peer: "127.0.0.1:40000".parse().unwrap(),
            tls: self.tls,
        });
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        Reply {
            status,
            headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    /// Logs alice in; her session cookie.
    async fn login(&self) -> String {
        let form = self.call("GET", "/login", &[], None).await;
        let token = form.cookie_value(LOGIN_COOKIE).unwrap();
        let body = format!("csrf={}&user=alice&password=secret", form.csrf());
        let done = self
            .call("POST", "/login", &[(LOGIN_COOKIE, &token)], Some(&body))
            .await;
        assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
        done.cookie_value(SESSION_COOKIE).unwrap()
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn assert_security_headers(reply: &Reply, tls: bool) {
    let h = |name: &str| {
        reply
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    assert_eq!(
        h("content-security-policy").as_deref(),
        Some(CONTENT_SECURITY_POLICY)
    );
    assert!(CONTENT_SECURITY_POLICY.contains("frame-ancestors 'none'"));
    assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
    assert_eq!(h("x-content-type-options").as_deref(), Some("nosniff"));
    assert_eq!(h("referrer-policy").as_deref(), Some("no-referrer"));
    assert_eq!(h("strict-transport-security").is_some(), tls);
}

#[test]
fn every_response_has_the_security_headers() {
    block_on(async {
        for tls in [false, true] {
            let h = Harness::new(tls);
            for uri in ["/", "/login", "/mail", "/static/style.css", "/nope"] {
                let reply = h.call("GET", uri, &[], None).await;
                assert_security_headers(&reply, tls);
            }
            let session = h.login().await;
            let reply = h
                .call(
                    "GET",
                    "/mail?folder=INBOX",
                    &[(SESSION_COOKIE, &session)],
                    None,
                )
                .await;
            assert_eq!(reply.status, StatusCode::OK);
            assert_security_headers(&reply, tls);
        }
    });
}

#[test]
fn cookies_are_http_only_strict_and_secure_over_tls() {
    block_on(async {
        for tls in [false, true] {
            let h = Harness::new(tls);
            let form = h.call("GET", "/login", &[], None).await;
            let token = form.cookie_value(LOGIN_COOKIE).unwrap();
            let body = format!("csrf={}&user=alice&password=secret", form.csrf());
            let done = h
                .call("POST", "/login", &[(LOGIN_COOKIE, &token)], Some(&body))
                .await;
            let cookie = done.set_cookie(SESSION_COOKIE).unwrap();
            assert!(cookie.contains("HttpOnly"), "{cookie}");
            assert!(cookie.contains("SameSite=Strict"), "{cookie}");
            assert_eq!(cookie.contains("Secure"), tls, "{cookie}");
        }
    });
}

#[test]
fn a_wrong_password_or_a_missing_login_token_is_refused() {
    block_on(async {
        let h = Harness::new(false);
        let form = h.call("GET", "/login", &[], None).await;
        let token = form.cookie_value(LOGIN_COOKIE).unwrap();
        let wrong = format!("csrf={}&user=alice&password=nope", form.csrf());
        let reply = h
            .call("POST", "/login", &[(LOGIN_COOKIE, &token)], Some(&wrong))
            .await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert!(reply.body.contains("Wrong user name or password"));
        assert!(reply.set_cookie(SESSION_COOKIE).is_none());
        let locked = format!("csrf={}&user=locked&password=x", form.csrf());
        let reply = h
            .call("POST", "/login", &[(LOGIN_COOKIE, &token)], Some(&locked))
            .await;
        assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
        // Right password, but the token is not the cookie's: a forged cross-site login.
        let forged = "csrf=0000&user=alice&password=secret";
        let reply = h
            .call("POST", "/login", &[(LOGIN_COOKIE, &token)], Some(forged))
            .await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN);
        let reply = h
            .call(
                "POST",
                "/login",
                &[],
                Some(&format!("csrf={}&user=alice&password=secret", form.csrf())),
            )
            .await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN);
    });
}

#[test]
fn pages_need_a_session_and_logout_ends_it() {
    block_on(async {
        let h = Harness::new(false);
        let reply = h.call("GET", "/mail?folder=INBOX", &[], None).await;
        assert_eq!(reply.status, StatusCode::SEE_OTHER);
        assert_eq!(reply.location(), Some("/login"));
        let session = h.login().await;
        let list = h
            .call(
                "GET",
                "/mail?folder=INBOX",
                &[(SESSION_COOKIE, &session)],
                None,
            )
            .await;
        assert_eq!(list.status, StatusCode::OK);
        // Logout without the token: refused, the session lives on.
        let reply = h
            .call(
                "POST",
                "/logout",
                &[(SESSION_COOKIE, &session)],
                Some("csrf=bad"),
            )
            .await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN);
        let csrf = list.csrf();
        let reply = h
            .call(
                "POST",
                "/logout",
                &[(SESSION_COOKIE, &session)],
                Some(&format!("csrf={csrf}")),
            )
            .await;
        assert_eq!(reply.location(), Some("/login"));
        assert!(reply
            .set_cookie(SESSION_COOKIE)
            .unwrap()
            .contains("Max-Age=0"));
        // The old cookie is worthless now.
        let reply = h
            .call(
                "GET",
                "/mail?folder=INBOX",
                &[(SESSION_COOKIE, &session)],
                None,
            )
            .await;
        assert_eq!(reply.location(), Some("/login"));
    });
}

#[test]
fn the_list_pages_newest_first_with_marks_and_escapes() {
    block_on(async {
        let h = Harness::new(false);
        let session = h.login().await;
        let first = h
            .call(
                "GET",
                "/mail?folder=INBOX",
                &[(SESSION_COOKIE, &session)],
                None,
            )
            .await;
        let body = &first.body;
        let three = body.find("number 3").unwrap();
        let two = body.find("number 2").unwrap();
        assert!(three < two, "newest first");
        assert!(!body.contains("number 1"), "page size 2");
        assert!(
            body.contains("number 3 &#38; &#60;i&#62;x&#60;/i&#62;")
                || body.contains("number 3 &amp; &lt;i&gt;x&lt;/i&gt;"),
            "{body}"
        );
        assert!(body.contains("Page 1 of 2"));
        assert!(body.contains("rel=\"next\""));
        assert!(body.contains("title=\"flagged\""));
        assert!(body.contains("title=\"unread\""));
        assert!(
            body.contains("INBOX <span class=\"count\""),
            "unread count: {body}"
        );
        let second = h
            .call(
                "GET",
                "/mail?folder=INBOX&page=2",
                &[(SESSION_COOKIE, &session)],
                None,
            )
            .await;
        assert!(second.body.contains("number 1") && !second.body.contains("number 3"));
        // Past the end: the last page.
        let past = h
            .call(
                "GET",
                "/mail?folder=INBOX&page=99",
                &[(SESSION_COOKIE, &session)],
                None,
            )
            .await;
        assert!(past.body.contains("Page 2 of 2"));
        let missing = h
            .call(
                "GET",
                "/mail?folder=Nope",
                &[(SESSION_COOKIE, &session)],
                None,
            )
            .await;
        assert_eq!(missing.status, StatusCode::NOT_FOUND);
    });
}

#[test]
fn reading_escapes_the_text_and_marks_it_read() {
    block_on(async {
        let h = Harness::new(false);
        let session = h.login().await;
        let reply = h
            .call(
                "GET",
                "/read?folder=INBOX&uid=7",
                &[(SESSION_COOKIE, &session)],
                None,
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        assert!(!reply.body.contains("<script>"), "{}", reply.body);
        assert!(!reply.body.contains("<b>hi</b>"));
        assert!(
            reply.body.contains("alert(1)"),
            "the text is shown, escaped"
        );
        assert_eq!(*h.backend.seen.lock().unwrap(), [7]);
        for link in [
            "/compose?reply=7&#38;folder=INBOX",
            "/compose?reply_all=7&#38;folder=INBOX",
            "/compose?forward=7&#38;folder=INBOX",
        ] {
            assert!(reply.body.contains(link), "{link} in {}", reply.body);
        }
        assert!(!reply.body.contains("Edit draft"), "only in Drafts");
        let missing = h
            .call(
                "GET",
                "/read?folder=INBOX&uid=8",
                &[(SESSION_COOKIE, &session)],
                None,
            )
            .await;
        assert_eq!(missing.status, StatusCode::NOT_FOUND);
    });
}

#[test]
fn compose_takes_a_mailto_address_and_send_needs_the_token() {
    block_on(async {
        let h = Harness::new(false);
        let session = h.login().await;
        let form = h
            .call(
                "GET",
                "/compose?to=mailto%3Abob%40example.test%3Fsubject%3DHello%2520there",
                &[(SESSION_COOKIE, &session)],
                None,
            )
            .await;
        assert!(
            form.body.contains("value=\"bob@example.test\""),
            "{}",
            form.body
        );
        assert!(form.body.contains("value=\"Hello there\""), "{}", form.body);
        let plain = h
            .call(
                "GET",
                "/compose?to=carol%40example.test",
                &[(SESSION_COOKIE, &session)],
                None,
            )
            .await;
        assert!(plain.body.contains("value=\"carol@example.test\""));
        // The logout form comes first; both carry the session's token.
        let csrf = form.csrf();
        let refused = h
            .call(
                "POST",
                "/send",
                &[(SESSION_COOKIE, &session)],
                Some("csrf=x&to=bob%40example.test&subject=s&body=b"),
            )
            .await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
        assert!(h.backend.sent.lock().unwrap().is_empty());
        let bad = h
            .call(
                "POST",
                "/send",
                &[(SESSION_COOKIE, &session)],
                Some(&format!("csrf={csrf}&to=not+an+address&subject=s&body=b")),
            )
            .await;
        assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
        let sent = h
            .call(
                "POST",
                "/send",
                &[(SESSION_COOKIE, &session)],
                Some(&format!(
                    "csrf={csrf}&to=bob%40example.test&cc=&subject=Hi&body=Hello%0Abob"
                )),
            )
            .await;
        assert_eq!(sent.status, StatusCode::OK, "{}", sent.body);
        let sent = h.backend.sent.lock().unwrap();
        let (user, outgoing) = &sent[0];
        assert_eq!(user, "alice");
        assert_eq!(outgoing.recipients, ["bob@example.test"]);
        let parsed = mail_parser::MessageParser::default()
            .parse(&outgoing.message)
            .unwrap();
        assert_eq!(
            parsed.from().unwrap().first().unwrap().address(),
            Some("alice@example.test")
        );
        assert_eq!(parsed.subject(), Some("Hi"));
    });
}

#[test]
fn paging_clamps() {
    assert_eq!(paging(0, 1, 50), (0, 1, 1));
    assert_eq!(paging(120, 3, 50), (100, 3, 3));
    assert_eq!(paging(120, 9, 50), (100, 3, 3));
    assert_eq!(paging(120, 0, 50), (0, 1, 3));
}

#[test]
fn the_reading_page_acts_with_the_token_only() {
    block_on(async {
        let h = Harness::new(false);
        let session = h.login().await;
        let page = h
            .call(
                "GET",
                "/read?folder=INBOX&uid=7",
                &[(SESSION_COOKIE, &session)],
                None,
            )
            .await;
        assert!(page.body.contains("value=\"flag\""), "{}", page.body);
        assert!(!page.body.contains("value=\"unflag\""));
        let csrf = page.csrf();
        let forged = h
            .call(
                "POST",
                "/act",
                &[(SESSION_COOKIE, &session)],
                Some("csrf=x&folder=INBOX&uid=7&action=trash"),
            )
            .await;
        assert_eq!(forged.status, StatusCode::FORBIDDEN);
        assert!(h.backend.acted.lock().unwrap().is_empty());
        let flag = h
            .call(
                "POST",
                "/act",
                &[(SESSION_COOKIE, &session)],
                Some(&format!("csrf={csrf}&folder=INBOX&uid=7&action=flag")),
            )
            .await;
        assert_eq!(flag.location(), Some("/read?folder=INBOX&uid=7"));
        let trash = h
            .call(
                "POST",
                "/act",
                &[(SESSION_COOKIE, &session)],
                Some(&format!("csrf={csrf}&folder=INBOX&uid=7&action=trash")),
            )
            .await;
        assert_eq!(trash.location(), Some("/mail?folder=INBOX"));
        let odd = h
            .call(
                "POST",
                "/act",
                &[(SESSION_COOKIE, &session)],
                Some(&format!("csrf={csrf}&folder=INBOX&uid=7&action=burn")),
            )
            .await;
        assert_eq!(odd.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            *h.backend.acted.lock().unwrap(),
            [
                ("INBOX".to_string(), 7, Action::Flagged(true)),
                ("INBOX".to_string(), 7, Action::Trash)
            ]
        );
    });
}

#[test]
fn search_text_is_trimmed_bounded_and_without_controls() {
    assert_eq!(search_text("  zebra \r\n"), "zebra");
    assert_eq!(search_text("a\u{0}b"), "ab");
    assert_eq!(search_text(&"x".repeat(500)).len(), 200);
}

#[test]
fn the_search_box_searches_the_folder_and_pages_keep_the_search() {
    block_on(async {
        let h = Harness::new(false);
        let session = h.login().await;
        let page = h
            .call(
                "GET",
                "/mail?folder=INBOX",
                &[(SESSION_COOKIE, &session)],
                None,
            )
            .await;
        assert!(page.body.contains("name=\"q\""), "{}", page.body);
        // "Sender" is in all three: two pages of two, the links keep the search.
        let found = h
            .call(
                "GET",
                "/mail?folder=INBOX&q=Sender",
                &[(SESSION_COOKIE, &session)],
                None,
            )
            .await;
        assert!(found.body.contains("3 found"), "{}", found.body);
        assert!(found.body.contains("Page 1 of 2"));
        assert!(
            found
                .body
                .contains("/mail?folder=INBOX&amp;page=2&amp;q=Sender")
                || found
                    .body
                    .contains("/mail?folder=INBOX&#38;page=2&#38;q=Sender"),
            "{}",
            found.body
        );
        assert!(found.body.contains("value=\"Sender\""));
        let one = h
            .call(
                "GET",
                "/mail?folder=INBOX&q=s2%40example",
                &[(SESSION_COOKIE, &session)],
                None,
            )
            .await;
        assert!(one.body.contains("1 found") && one.body.contains("number 2"));
        assert!(!one.body.contains("number 3") && !one.body.contains("number 1"));
        let none = h
            .call(
                "GET",
                "/mail?folder=INBOX&q=nothing-like-it",
                &[(SESSION_COOKIE, &session)],
                None,
            )
            .await;
        assert!(none.body.contains("No messages match"), "{}", none.body);
        // Not the Trash: no Empty Trash button.
        assert!(!page.body.contains("/empty-trash"));
    });
}

#[test]
fn move_and_empty_trash_need_the_token() {
    block_on(async {
        let h = Harness::new(false);
        let session = h.login().await;
        let page = h
            .call(
                "GET",
                "/read?folder=INBOX&uid=7",
                &[(SESSION_COOKIE, &session)],
                None,
            )
            .await;
        assert!(
            page.body.contains("<option value=\"Sent\">Sent</option>"),
            "{}",
            page.body
        );
        assert!(!page.body.contains("<option value=\"INBOX\">"));
        let csrf = page.csrf();
        let forged = h
            .call(
                "POST",
                "/move",
                &[(SESSION_COOKIE, &session)],
                Some("csrf=x&folder=INBOX&uid=7&to=Sent"),
            )
            .await;
        assert_eq!(forged.status, StatusCode::FORBIDDEN);
        let moved = h
            .call(
                "POST",
                "/move",
                &[(SESSION_COOKIE, &session)],
                Some(&format!("csrf={csrf}&folder=INBOX&uid=7&to=Sent")),
            )
            .await;
        assert_eq!(moved.location(), Some("/mail?folder=INBOX"));
        let nowhere = h
            .call(
                "POST",
                "/move",
                &[(SESSION_COOKIE, &session)],
                Some(&format!("csrf={csrf}&folder=INBOX&uid=7&to=Nope")),
            )
            .await;
        assert_eq!(nowhere.status, StatusCode::NOT_FOUND);
        assert_eq!(
            *h.backend.moved.lock().unwrap(),
            [("INBOX".to_string(), 7, "Sent".to_string())]
        );
        let forged = h
            .call(
                "POST",
                "/empty-trash",
                &[(SESSION_COOKIE, &session)],
                Some("csrf=x"),
            )
            .await;
        assert_eq!(forged.status, StatusCode::FORBIDDEN);
        assert_eq!(*h.backend.emptied.lock().unwrap(), 0);
        let emptied = h
            .call(
                "POST",
                "/empty-trash",
                &[(SESSION_COOKIE, &session)],
                Some(&format!("csrf={csrf}")),
            )
            .await;
        assert_eq!(emptied.location(), Some("/mail?folder=Trash"));
        assert_eq!(*h.backend.emptied.lock().unwrap(), 1);
    });
}

fn header_of<'a>(reply: &'a Reply, name: &str) -> &'a str {
    reply
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[test]
fn the_html_body_is_framed_under_its_own_policy() {
    block_on(async {
        let h = Harness::new(false);
        let session = h.login().await;
        let cookie = [(SESSION_COOKIE, session.as_str())];
        let page = h
            .call("GET", "/read?folder=INBOX&uid=9", &cookie, None)
            .await;
        assert_eq!(page.status, StatusCode::OK);
        assert!(CONTENT_SECURITY_POLICY.contains("frame-src 'self'"));
        assert_eq!(
            header_of(&page, "content-security-policy"),
            CONTENT_SECURITY_POLICY
        );
        assert!(page.body.contains(
            "<iframe class=\"body html\" sandbox=\"allow-popups allow-popups-to-escape-sandbox\" src=\"/body?folder=INBOX&#38;uid=9\""
        ) || page.body.contains(
            "<iframe class=\"body html\" sandbox=\"allow-popups allow-popups-to-escape-sandbox\" src=\"/body?folder=INBOX&amp;uid=9\""
        ), "{}", page.body);
        assert!(page.body.contains("Show remote images"), "{}", page.body);
        assert!(
            page.body.contains("Forwarded message: inner"),
            "{}",
            page.body
        );
        assert!(
            page.body.contains("part=3"),
            "the forwarded HTML's frame: {}",
            page.body
        );

        let frame = h
            .call("GET", "/body?folder=INBOX&uid=9", &cookie, None)
            .await;
        assert_eq!(frame.status, StatusCode::OK);
        assert_eq!(header_of(&frame, "content-security-policy"), BODY_POLICY);
        assert_eq!(header_of(&frame, "x-frame-options"), "SAMEORIGIN");
        assert_eq!(header_of(&frame, "x-content-type-options"), "nosniff");
        assert!(frame.body.contains("outer") && !frame.body.contains("remote.test"));
        let remote = h
            .call("GET", "/body?folder=INBOX&uid=9&remote=1", &cookie, None)
            .await;
        assert_eq!(
            header_of(&remote, "content-security-policy"),
            BODY_POLICY_REMOTE
        );
        assert!(remote.body.contains("https://remote.test/x.gif"));
        let inner = h
            .call("GET", "/body?folder=INBOX&uid=9&part=3", &cookie, None)
            .await;
        assert!(inner.body.contains("<i>inner html</i>"), "{}", inner.body);
        assert!(!inner.body.contains("outer"));
        // A text message has no frame; no session, no frame.
        let none = h
            .call("GET", "/body?folder=INBOX&uid=7", &cookie, None)
            .await;
        assert_eq!(none.status, StatusCode::NOT_FOUND);
        let anonymous = h.call("GET", "/body?folder=INBOX&uid=9", &[], None).await;
        assert_eq!(anonymous.status, StatusCode::FORBIDDEN);
    });
}

#[test]
fn a_part_downloads_as_an_attachment() {
    block_on(async {
        let h = Harness::new(false);
        let session = h.login().await;
        let cookie = [(SESSION_COOKIE, session.as_str())];
        let page = h
            .call("GET", "/read?folder=INBOX&uid=9", &cookie, None)
            .await;
        assert!(page.body.contains(">a b.pdf</a>"), "{}", page.body);
        let part = h
            .call("GET", "/part?folder=INBOX&uid=9&part=2", &cookie, None)
            .await;
        assert_eq!(part.status, StatusCode::OK);
        assert_eq!(part.body, "%PDF");
        assert_eq!(header_of(&part, "content-type"), "application/octet-stream");
        assert_eq!(
            header_of(&part, "content-disposition"),
            "attachment; filename=\"a b.pdf\"; filename*=UTF-8''a%20b.pdf"
        );
        assert_eq!(header_of(&part, "content-security-policy"), PART_POLICY);
        assert_eq!(header_of(&part, "x-content-type-options"), "nosniff");
        for bad in ["0", "99", "2.1", "x", ""] {
            let reply = h
                .call(
                    "GET",
                    &format!("/part?folder=INBOX&uid=9&part={bad}"),
                    &cookie,
                    None,
                )
                .await;
            assert_eq!(reply.status, StatusCode::NOT_FOUND, "part {bad:?}");
        }
        let anonymous = h
            .call("GET", "/part?folder=INBOX&uid=9&part=2", &[], None)
            .await;
        assert_eq!(anonymous.status, StatusCode::FORBIDDEN);
    });
}
