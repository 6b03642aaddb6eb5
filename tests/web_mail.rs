//! Web mail against the real server: a browser stand-in on Python's http.client
//! (`tests/py/web_client.py`) logs in through the form and clicks through the pages.
//! Case I: mail that arrived over SMTP is listed and read (a text `<script>` escaped, an
//! HTML one stripped); case II: a message sent from the browser reaches a local user (read
//! back over POP3), a remote next hop (the scripted sink) and the sender's Sent folder.
//! Also: wrong password, throttling, cookie flags, CSRF refusals, security headers, logout.
//! The HTTP side does not depend on the I/O engine, but the store and submission paths
//! behind it run on each engine's spool, so each scenario runs on both.

#[macro_use]
mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::json::Json;
use common::pop3::Pop3;
use common::sinks::Sink;
use common::{repo_path, Engine, Relay, Settings, TEST_PASSWORD};

engine_tests! {
    login_cookies_csrf_headers_and_logout: security_uring, security_epoll;
    repeated_wrong_passwords_are_throttled: throttle_uring, throttle_epoll;
    mail_from_smtp_is_listed_and_read_safely: read_uring, read_epoll;
    a_message_sent_from_the_browser_is_delivered_and_kept: send_uring, send_epoll;
    an_idle_session_expires: expire_uring, expire_epoll;
    flag_and_delete_to_trash: act_uring, act_epoll;
    https_with_the_relays_certificate: https_uring, https_epoll;
    the_list_is_by_date_and_search_pages: browse_uring, browse_epoll;
    move_delete_and_empty_trash_are_durable: manage_uring, manage_epoll;
    attachments_frames_cid_images_and_forwarded_messages: parts_uring, parts_epoll;
}

fn imap_port(relay: &Relay) -> String {
    relay
        .listening("imap")
        .expect("an imap listener")
        .port()
        .to_string()
}

fn strings(json: &Json) -> Vec<String> {
    json.array().iter().map(|s| s.str().to_string()).collect()
}

fn web_settings(engine: Engine) -> Settings {
    let mut settings = Settings::new(engine);
    settings
        .extra_toml
        .push_str("[web]\nlisten = [\"127.0.0.1:0\"]\n");
    settings
}

fn web_addr(relay: &Relay) -> SocketAddr {
    relay
        .listening("http")
        .expect("a `listening protocol=\"http\"` line")
}

/// Runs one scenario of the browser stand-in; its JSON answer.
fn browser(relay: &Relay, args: &[&str]) -> Json {
    browser_at(relay, &format!("http://{}", web_addr(relay)), args)
}

fn browser_at(relay: &Relay, base: &str, args: &[&str]) -> Json {
    let output = Command::new("python3")
        .arg(repo_path("tests/py/web_client.py"))
        .arg(base)
        .args(args)
        .output()
        .expect("python3 tests/py/web_client.py");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "web_client {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        relay.log_lines().join("\n")
    );
    Json::parse(text.trim()).unwrap_or_else(|e| panic!("web_client said {text:?}: {e}"))
}

fn header<'a>(headers: &'a Json, name: &str) -> &'a str {
    headers
        .object()
        .get(name)
        .map(Json::str)
        .unwrap_or_else(|| panic!("no {name} header in {headers:?}"))
}

fn assert_security_headers(headers: &Json) {
    let csp = header(headers, "content-security-policy");
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("script-src"),
        "{csp}"
    );
    assert_eq!(header(headers, "x-content-type-options"), "nosniff");
    assert_eq!(header(headers, "referrer-policy"), "no-referrer");
}

fn login_cookies_csrf_headers_and_logout(engine: Engine) {
    let relay = Relay::start(web_settings(engine));
    let seen = browser(&relay, &["security", "alice", TEST_PASSWORD]);
    assert_eq!(seen.get("login_page").get("status").int(), 200);
    for page in ["login_page", "inbox"] {
        assert_security_headers(seen.get(page).get("headers"));
    }
    assert_security_headers(seen.get("style"));
    assert_eq!(seen.get("wrong").get("status").int(), 401);
    assert!(seen
        .get("wrong")
        .get("set_cookie")
        .array()
        .iter()
        .all(|c| !c.str().starts_with("relay_session=")));
    assert_eq!(seen.get("login_without_token").int(), 403);
    let right = seen.get("right");
    assert_eq!(right.get("status").int(), 303);
    assert_eq!(right.get("location").str(), "/mail?folder=INBOX");
    let session = right
        .get("set_cookie")
        .array()
        .iter()
        .map(Json::str)
        .find(|c| c.starts_with("relay_session="))
        .expect("a session cookie");
    assert!(session.contains("HttpOnly"), "{session}");
    assert!(session.contains("SameSite=Strict"), "{session}");
    assert!(
        !session.contains("Secure"),
        "plain HTTP on loopback: {session}"
    );
    assert_eq!(seen.get("inbox").get("status").int(), 200);
    assert_eq!(seen.get("logout_without_token").int(), 403);
    assert_eq!(seen.get("after_refused_logout").int(), 200);
    assert_eq!(seen.get("send_without_token").int(), 403);
    assert_eq!(seen.get("logout").get("status").int(), 303);
    let replay = seen.get("replayed_cookie");
    assert_eq!(replay.get("status").int(), 303);
    assert_eq!(replay.get("location").str(), "/login");
}

fn repeated_wrong_passwords_are_throttled(engine: Engine) {
    let mut settings = web_settings(engine);
    settings.imap_toml = "auth_failures_per_ip_max = 3\n".into();
    let relay = Relay::start(settings);
    let seen = browser(&relay, &["throttle", "bob", "5"]);
    let statuses: Vec<i64> = seen.get("statuses").array().iter().map(Json::int).collect();
    assert_eq!(&statuses[..3], [401, 401, 401], "{statuses:?}");
    assert!(statuses[3..].iter().all(|s| *s == 429), "{statuses:?}");
    // The right password is refused too while the client is locked out.
    let locked = browser(&relay, &["security", "bob", TEST_PASSWORD]);
    assert_eq!(locked.get("right").get("status").int(), 429);
}

fn mail_from_smtp_is_listed_and_read_safely(engine: Engine) {
    let relay = Relay::start(web_settings(engine));
    let text = b"From: Mallory <mallory@remote.test>\r\nTo: alice@example.test\r\nSubject: =?UTF-8?B?R3LDvMOfZQ==?= text\r\nDate: Tue, 1 Dec 2026 10:00:00 +0000\r\n\r\nHello <script>alert('text')</script> & bye\r\n";
    let html = b"From: Mallory <mallory@remote.test>\r\nTo: alice@example.test\r\nSubject: html one\r\nMIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>Dear <b>Alice</b></p><script>alert('html')</script><img src=\"http://remote.test/pixel.gif\" onerror=\"alert(2)\"><a href=\"javascript:alert(3)\">click</a>\r\n";
    relay.deliver(&["alice@example.test"], text);
    relay.deliver(&["alice@example.test"], html);

    let seen = browser(
        &relay,
        &["read", "alice", TEST_PASSWORD, "Gr\u{fc}\u{df}e text"],
    );
    assert_eq!(seen.get("list_status").int(), 200);
    let subjects: Vec<&str> = seen.get("subjects").array().iter().map(Json::str).collect();
    assert_eq!(
        subjects,
        ["html one", "Gr\u{fc}\u{df}e text"],
        "newest first"
    );
    assert_eq!(seen.get("unread_before").int(), 2);
    assert_eq!(seen.get("message_status").int(), 200);
    let page = seen.get("message_body").str();
    assert!(!page.contains("<script"), "{page}");
    assert!(
        page.contains("Hello &#60;script&#62;alert(&#39;text&#39;)&#60;/script&#62; &#38; bye")
            || page
                .contains("Hello &lt;script&gt;alert(&#x27;text&#x27;)&lt;/script&gt; &amp; bye")
            || page.contains("Hello &lt;script&gt;alert(&#39;text&#39;)&lt;/script&gt; &amp; bye"),
        "the text is shown escaped: {page}"
    );
    assert!(
        page.contains("Mallory &#60;mallory@remote.test&#62;")
            || page.contains("Mallory &lt;mallory@remote.test&gt;"),
        "{page}"
    );
    assert_security_headers(seen.get("message_headers"));
    assert_eq!(seen.get("unread_after").int(), 1, "reading marks read");

    let seen = browser(&relay, &["read", "alice", TEST_PASSWORD, "html one"]);
    // The page frames the sanitised HTML (`/body`), sandboxed; the frame holds it.
    let outer = seen.get("message_body").str();
    assert!(
        outer.contains("<iframe class=\"body html\" sandbox=\""),
        "{outer}"
    );
    assert!(!outer.contains("allow-scripts") && !outer.contains("allow-same-origin"));
    assert!(outer.contains("1 remote image(s) blocked"), "{outer}");
    assert!(!outer.contains("<script") && !outer.contains("remote.test/pixel"));
    let csp = header(seen.get("frame_headers"), "content-security-policy");
    assert!(
        csp.starts_with("default-src 'none'") && csp.contains("frame-ancestors 'self'"),
        "{csp}"
    );
    assert!(
        !csp.contains("script-src") && !csp.contains("https:"),
        "{csp}"
    );
    let page = seen.get("frame_body").str();
    assert!(page.contains("<b>Alice</b>"), "{page}");
    assert!(
        !page.contains("<script") && !page.contains("alert('html')"),
        "{page}"
    );
    assert!(
        !page.contains("onerror") && !page.contains("remote.test/pixel"),
        "{page}"
    );
    assert!(!page.contains("javascript:"), "{page}");
    assert_eq!(seen.get("unread_after").int(), 0);
}

fn a_message_sent_from_the_browser_is_delivered_and_kept(engine: Engine) {
    let sink = Sink::scripted(0, &[]);
    let mut settings = web_settings(engine);
    settings.routes = vec![("*".into(), sink.addr.to_string())];
    let relay = Relay::start(settings);

    // To a local user: in bob's INBOX, read over POP3.
    let seen = browser(
        &relay,
        &[
            "send",
            "alice",
            TEST_PASSWORD,
            "bob@example.test",
            "From the web",
            "Hello Bob,\nover HTTP.\n",
        ],
    );
    assert_eq!(
        seen.get("prefilled").str(),
        "bob@example.test",
        "mailto-style prefill"
    );
    assert_eq!(seen.get("status").int(), 200, "{}", seen.get("body").str());
    assert!(
        seen.get("sent_folder").str().contains("From the web"),
        "a copy in Sent"
    );
    let mut pop = Pop3::login_retrying(
        relay.pop3_addr,
        "bob",
        TEST_PASSWORD,
        Duration::from_secs(5),
    );
    let (count, _) = pop.stat();
    assert_eq!(count, 1);
    let stored = pop.retr(1);
    let text = String::from_utf8_lossy(&stored);
    assert!(text.contains("Subject: From the web"), "{text}");
    // The user's address is the name at the first local domain (`local.domains`).
    assert!(text.contains("From: <alice@localhost>"), "{text}");
    assert!(
        text.contains("with HTTP"),
        "the Received field names HTTP: {text}"
    );
    assert!(text.contains("Message-ID: <"), "{text}");
    let parsed = mail_parser::MessageParser::default()
        .parse(&stored)
        .expect("parses");
    assert_eq!(
        parsed.body_text(0).unwrap().replace("\r\n", "\n"),
        "Hello Bob,\nover HTTP.\n"
    );

    // To a remote address: through the outbound queue to the next hop.
    let seen = browser(
        &relay,
        &[
            "send",
            "alice",
            TEST_PASSWORD,
            "carol@remote.test",
            "Far away",
            "Hi Carol",
        ],
    );
    assert_eq!(seen.get("status").int(), 200, "{}", seen.get("body").str());
    let got = sink.wait_messages(1, Duration::from_secs(15));
    let text = String::from_utf8_lossy(&got[0]);
    assert!(
        text.starts_with("MAIL:alice@localhost\nRCPT:carol@remote.test\n"),
        "{text}"
    );
    assert!(text.contains("Subject: Far away"), "{text}");

    // An unknown local recipient is refused on the page, nothing is stored.
    let seen = browser(
        &relay,
        &[
            "send",
            "alice",
            TEST_PASSWORD,
            "nobody@example.test",
            "x",
            "y",
        ],
    );
    assert_eq!(seen.get("status").int(), 422);
    assert!(seen.get("body").str().contains("No such user here"));
}

fn an_idle_session_expires(engine: Engine) {
    let mut settings = web_settings(engine);
    settings
        .extra_toml
        .push_str("session_idle_timeout = \"2s\"\nsession_absolute_timeout = \"1h\"\n");
    let relay = Relay::start(settings);
    let seen = browser(&relay, &["expire", "alice", TEST_PASSWORD, "0.2"]);
    assert_eq!(seen.get("first").get("status").int(), 200);
    assert_eq!(
        seen.get("later").get("status").int(),
        200,
        "used within the idle time"
    );
    let seen = browser(&relay, &["expire", "alice", TEST_PASSWORD, "3"]);
    assert_eq!(seen.get("first").get("status").int(), 200);
    assert_eq!(seen.get("later").get("status").int(), 303, "idle past 2s");
    assert_eq!(seen.get("later").get("location").str(), "/login");
}

fn https_with_the_relays_certificate(engine: Engine) {
    let dir = tempfile::tempdir().expect("temp dir");
    let cert = common::tls::TestCert::generate(dir.path(), "relay");
    let mut settings = Settings::new(engine);
    settings.extra_toml = format!("{}[web]\ntls_listen = [\"127.0.0.1:0\"]\n", cert.toml());
    let relay = Relay::start(settings);
    let addr = relay
        .listening("https")
        .expect("a `listening protocol=\"https\"` line");
    let cafile = cert.cert_path.to_str().expect("utf-8 path");
    let base = format!("https://{addr}");
    let seen = browser_at(
        &relay,
        &base,
        &["expire", "alice", TEST_PASSWORD, "0", "--cafile", cafile],
    );
    assert_eq!(seen.get("first").get("status").int(), 200);
    let headers = seen.get("first").get("headers");
    assert_security_headers(headers);
    assert!(header(headers, "strict-transport-security").starts_with("max-age="));
    let session = seen
        .get("login")
        .get("set_cookie")
        .array()
        .iter()
        .map(Json::str)
        .find(|c| c.starts_with("relay_session="))
        .expect("a session cookie");
    assert!(
        session.contains("Secure") && session.contains("HttpOnly"),
        "{session}"
    );
    assert!(session.contains("SameSite=Strict"), "{session}");
}

fn flag_and_delete_to_trash(engine: Engine) {
    let relay = Relay::start(web_settings(engine));
    let keep = b"From: a@remote.test\r\nSubject: keep me\r\n\r\nstays\r\n";
    let drop = b"From: a@remote.test\r\nSubject: throw me\r\n\r\ngoes\r\n";
    relay.deliver(&["bob@example.test"], keep);
    relay.deliver(&["bob@example.test"], drop);
    let seen = browser(&relay, &["act", "bob", TEST_PASSWORD, "throw me"]);
    assert_eq!(seen.get("forged").int(), 403);
    assert_eq!(seen.get("flag").get("status").int(), 303);
    assert_eq!(seen.get("flagged_marks").int(), 1);
    assert_eq!(
        seen.get("trash").get("location").str(),
        "/mail?folder=INBOX"
    );
    let inbox = seen.get("inbox_after").str();
    assert!(
        inbox.contains("keep me") && !inbox.contains("throw me"),
        "{inbox}"
    );
    let trash = seen.get("trash_folder").str();
    assert!(trash.contains("throw me"), "{trash}");
    // The same store behind POP3: INBOX holds one message now.
    let mut pop = Pop3::login_retrying(
        relay.pop3_addr,
        "bob",
        TEST_PASSWORD,
        Duration::from_secs(5),
    );
    assert_eq!(pop.stat().0, 1);
    assert!(String::from_utf8_lossy(&pop.retr(1)).contains("keep me"));
}

fn the_list_is_by_date_and_search_pages(engine: Engine) {
    let mut settings = web_settings(engine);
    settings.extra_toml.push_str("page_size = 2\n");
    let relay = Relay::start(settings);
    let mail = |from: &str, to: &str, subject: &str, body: &str| {
        format!("From: {from}\r\nTo: {to}\r\nSubject: {subject}\r\n\r\n{body}\r\n").into_bytes()
    };
    let alice = "alice@example.test";
    relay.deliver(
        &[alice],
        &mail("a@remote.test", alice, "in the body", "A zebra crossing"),
    );
    relay.deliver(
        &[alice],
        &mail("b@remote.test", alice, "no match", "nothing"),
    );
    relay.deliver(
        &[alice],
        &mail("c@remote.test", alice, "=?UTF-8?Q?About_ZEBRAS?=", "x"),
    );
    relay.deliver(
        &[alice],
        &mail("Zebra Fan <fan@remote.test>", alice, "by sender", "y"),
    );
    // Appended last (the highest UID) with a 2020 internal date: listed last.
    let seen = browser(
        &relay,
        &[
            "browse",
            "alice",
            TEST_PASSWORD,
            &imap_port(&relay),
            "zebra",
        ],
    );
    assert_eq!(seen.get("append").str(), "OK");
    let pages: Vec<Vec<String>> = seen.get("pages").array().iter().map(strings).collect();
    assert_eq!(
        pages,
        [
            vec!["by sender", "About ZEBRAS"],
            vec!["no match", "in the body"],
            vec!["appended old"],
        ],
        "newest first by internal date, two a page"
    );
    assert_eq!(seen.get("search_status").int(), 200);
    assert_eq!(
        seen.get("search_total").int(),
        3,
        "From, Subject (RFC 2047) and body"
    );
    let found: Vec<Vec<String>> = seen
        .get("search_pages")
        .array()
        .iter()
        .map(strings)
        .collect();
    assert_eq!(
        found,
        [vec!["by sender", "About ZEBRAS"], vec!["in the body"]],
        "search results page too, newest first"
    );
}

fn move_delete_and_empty_trash_are_durable(engine: Engine) {
    let relay = Relay::start(web_settings(engine));
    for subject in ["stays", "to archive", "to trash"] {
        let text = format!("From: a@remote.test\r\nSubject: {subject}\r\n\r\nbody\r\n");
        relay.deliver(&["bob@example.test"], text.as_bytes());
    }
    let seen = browser(&relay, &["manage", "bob", TEST_PASSWORD]);
    let options = strings(seen.get("move_options"));
    assert!(
        options.iter().any(|o| o == "Archive") && !options.iter().any(|o| o == "INBOX"),
        "{options:?}"
    );
    assert_eq!(seen.get("move_forged").int(), 403);
    assert_eq!(seen.get("move").get("status").int(), 303);
    assert_eq!(seen.get("move").get("location").str(), "/mail?folder=INBOX");
    assert_eq!(seen.get("move_nowhere").int(), 404);
    assert_eq!(strings(seen.get("archive")), ["to archive"]);
    assert_eq!(seen.get("trash").int(), 303);
    assert_eq!(strings(seen.get("trash_before")), ["to trash"]);
    assert_eq!(seen.get("empty_button"), &Json::Bool(true));
    assert_eq!(seen.get("empty_button_in_inbox"), &Json::Bool(false));
    assert_eq!(seen.get("empty_forged").int(), 403);
    assert_eq!(strings(seen.get("trash_after_forged")), ["to trash"]);
    assert_eq!(seen.get("empty").get("status").int(), 303);
    assert_eq!(
        seen.get("empty").get("location").str(),
        "/mail?folder=Trash"
    );
    assert!(seen.get("trash_after").array().is_empty());
    // Durable before the redirect: a kill -9 now loses none of it.
    relay.kill9();
    let relay = relay.restart(web_settings(engine));
    let seen = browser(
        &relay,
        &[
            "imap",
            "bob",
            TEST_PASSWORD,
            &imap_port(&relay),
            "INBOX",
            "Archive",
            "Trash",
        ],
    );
    assert_eq!(strings(seen.get("INBOX")), ["stays"]);
    assert_eq!(strings(seen.get("Archive")), ["to archive"]);
    assert!(seen.get("Trash").array().is_empty());
}

/// A message as a mail client sends one: an HTML body with a `cid:` logo and a remote
/// image, a PDF named in RFC 2231, a file named in RFC 2047 whose name tries to end the
/// header line, and a forwarded message with its own attachment.
const RICH_MAIL: &[u8] = b"From: Mallory <mallory@remote.test>\r\nTo: alice@example.test\r\nSubject: rich mail\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=outer\r\n\r\n\
--outer\r\nContent-Type: multipart/related; boundary=rel\r\n\r\n\
--rel\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>Look: <img src=\"cid:logo@mallory\" alt=\"logo\"> <img src=\"https://tracker.remote.test/t.gif\"><script>alert(1)</script></p>\r\n\
--rel\r\nContent-Type: image/png\r\nContent-ID: <logo@mallory>\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0KGgoAAAANSUhEUg==\r\n\
--rel--\r\n\
--outer\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename*=UTF-8''r%C3%A9sum%C3%A9%20final.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQKJcOkw7zDtsOfCg==\r\n\
--outer\r\nContent-Type: text/html\r\nContent-Disposition: attachment; filename=\"=?UTF-8?B?ZXZpbCIKWC1JbmplY3RlZDogMTsgLi4vLi4vw7wuaHRtbA==?=\"\r\n\r\n<script>alert('download')</script>\r\n\
--outer\r\nContent-Type: message/rfc822\r\n\r\n\
From: Bob <bob@remote.test>\r\nTo: mallory@remote.test\r\nSubject: the original\r\nDate: Mon, 30 Nov 2026 09:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=inner\r\n\r\n\
--inner\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nOriginal words <b>not bold</b>\r\n\
--inner\r\nContent-Type: text/plain; name=notes.txt\r\nContent-Disposition: attachment; filename=notes.txt\r\n\r\nnotes inside\r\n\
--inner--\r\n\
--outer--\r\n";

fn attachments_frames_cid_images_and_forwarded_messages(engine: Engine) {
    let relay = Relay::start(web_settings(engine));
    relay.deliver(&["alice@example.test"], RICH_MAIL);
    let seen = browser(&relay, &["parts", "alice", TEST_PASSWORD, "rich mail"]);
    let page = seen.get("page").get("body").str();
    assert_eq!(seen.get("page").get("status").int(), 200);
    let csp = header(seen.get("page").get("headers"), "content-security-policy");
    assert!(
        csp.contains("frame-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );

    // The HTML body: in a sandboxed frame (no scripts, no same-origin), under its own CSP.
    let iframes = strings(seen.get("iframes"));
    assert_eq!(iframes.len(), 1, "{iframes:?}");
    assert!(iframes[0].contains("sandbox=\"allow-popups allow-popups-to-escape-sandbox\""));
    assert!(!iframes[0].contains("allow-scripts") && !iframes[0].contains("allow-same-origin"));
    let frame = seen.get("frames").at(0);
    let got = frame.get("frame");
    assert_eq!(got.get("status").int(), 200);
    let csp = header(got.get("headers"), "content-security-policy");
    assert!(
        csp.starts_with("default-src 'none'; img-src data:;"),
        "{csp}"
    );
    assert!(
        csp.contains("frame-ancestors 'self'") && !csp.contains("https:"),
        "{csp}"
    );
    assert_eq!(header(got.get("headers"), "x-frame-options"), "SAMEORIGIN");
    let body = got.get("body").str();
    assert!(body.contains("Look:"), "{body}");
    assert!(
        !body.contains("<script") && !body.contains("tracker.remote.test"),
        "{body}"
    );
    // The cid image comes from the message, inlined (a sandboxed frame's own requests go
    // without the SameSite=Strict session cookie).
    assert!(
        body.contains("<img src=\"data:image/png;base64,iVBORw0KGgoAAAANSUhEUg==\" alt=\"logo\">"),
        "cid image inlined: {body}"
    );

    // Remote images for this message only, when asked: the frame keeps them and its CSP
    // allows https: images.
    assert!(page.contains("1 remote image(s) blocked"), "{page}");
    assert!(seen.get("remote_src").str().contains("remote=1"));
    let remote = seen.get("remote_frame");
    assert!(remote
        .get("body")
        .str()
        .contains("src=\"https://tracker.remote.test/t.gif\""));
    let csp = header(remote.get("headers"), "content-security-policy");
    assert!(csp.contains("img-src data: https:"), "{csp}");
    assert!(!remote.get("body").str().contains("<script"));

    // Attachments: decoded names, byte-exact downloads, as attachments, never as HTML.
    let attachments = seen.get("attachments").array();
    let names: Vec<&str> = attachments.iter().map(|a| a.get("name").str()).collect();
    assert_eq!(
        names,
        [
            "r\u{e9}sum\u{e9} final.pdf",
            "evil\"\nX-Injected: 1; ../../\u{fc}.html",
            "notes.txt"
        ],
        "the cid image is not listed; the forwarded message's attachment is"
    );
    assert!(page.contains("19 bytes"), "the PDF's decoded size: {page}");
    let pdf = attachments[0].get("got");
    assert_eq!(pdf.get("status").int(), 200);
    let bytes = base64_simd::STANDARD
        .decode_to_vec(pdf.get("base64").str())
        .expect("base64");
    assert_eq!(bytes, b"%PDF-1.4\n%\xc3\xa4\xc3\xbc\xc3\xb6\xc3\x9f\n");
    let headers = pdf.get("headers");
    assert_eq!(header(headers, "content-type"), "application/octet-stream");
    assert_eq!(header(headers, "x-content-type-options"), "nosniff");
    assert_eq!(
        header(headers, "content-disposition"),
        "attachment; filename=\"r_sum_ final.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9%20final.pdf"
    );
    let evil = attachments[1].get("got");
    let headers = evil.get("headers");
    assert!(!headers.object().contains_key("x-injected"), "{headers:?}");
    assert_eq!(header(headers, "content-type"), "application/octet-stream");
    let disposition = header(headers, "content-disposition");
    assert!(
        disposition.starts_with("attachment; filename=\"evil_X-Injected: 1; .._.._"),
        "{disposition}"
    );
    assert!(
        disposition.contains("filename*=UTF-8''evil%22X-Injected%3A%201%3B%20.._.._%C3%BC.html"),
        "{disposition}"
    );
    assert!(header(headers, "content-security-policy").contains("sandbox"));
    assert_eq!(attachments[2].get("got").get("body").str(), "notes inside");
    assert_eq!(seen.get("part_without_session").int(), 403);

    // The forwarded message: its headers and text, inline and escaped.
    assert!(page.contains("Forwarded message: the original"), "{page}");
    assert!(
        page.contains("Bob &#60;bob@remote.test&#62;")
            || page.contains("Bob &lt;bob@remote.test&gt;"),
        "{page}"
    );
    assert!(
        page.contains("Original words &#60;b&#62;not bold&#60;/b&#62;")
            || page.contains("Original words &lt;b&gt;not bold&lt;/b&gt;"),
        "{page}"
    );
}
