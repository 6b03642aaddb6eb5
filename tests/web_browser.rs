//! Web mail in a real browser: Debian's chromium driven by npm playwright-core
//! (`tests/browser/webmail.mjs`; both installed by tests/run.sh and tests/tools.sh) against
//! the real relay with `[web]` on loopback. Mail goes in and out through Python's smtplib,
//! poplib and imaplib (`tests/browser/mailtool.py`). The browser may reach nothing but the
//! relay: every other request is recorded and aborted, and the scenario fails on any.
//!
//! The browser script makes the page-level assertions (its exit status is the verdict, its
//! output is shown on failure); this file checks what left the relay by other paths (POP3,
//! IMAP, the sink). Screenshots of every scenario are kept under `$RELAY_TEST_ARTEFACTS/
//! web_browser/` (default: cargo's target/tmp). Scenarios that go through the store or
//! submission run on both I/O engines; the HTTP-only ones (TLS, looks) on one.

#[macro_use]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use common::sinks::Sink;
use common::{repo_path, run_with_timeout, Engine, Relay, Settings, TEST_PASSWORD};
use mail_parser::MimeHeaders;
use serde_json::{json, Value};

engine_tests! {
    mail_from_smtp_reads_in_the_browser: read_uring, read_epoll;
    hostile_html_runs_nothing_and_fetches_nothing: hostile_uring, hostile_epoll;
    login_logout_csrf_cookies_throttle_headers: security_uring, security_epoll;
    written_in_the_browser_reaches_pop3_imap_and_sent: compose_uring, compose_epoll;
    a_ten_thousand_message_folder_pages_quickly: bulk_uring, bulk_epoll;
}

#[test]
fn over_https_the_cookie_is_secure_and_hsts_is_sent() {
    over_https(Engine::Uring);
}

#[test]
fn an_idle_session_ends() {
    let mut settings = web_settings(Engine::Epoll);
    settings
        .extra_toml
        .push_str("session_idle_timeout = \"2s\"\nsession_absolute_timeout = \"1h\"\n");
    let relay = Relay::start(settings);
    browser(
        &relay,
        "expire",
        json!({
            "base": base(&relay, "http"),
            "artefacts": artefacts("expire"),
            "idle_ms": 3000,
        }),
    );
}

#[test]
fn pages_pass_axe_and_work_by_keyboard_at_desktop_and_phone_width() {
    looks(Engine::Epoll);
}

/// Case II with two attachments: both reach the sink byte-exact.
#[test]
fn two_attachments_reach_the_sink_byte_exact() {
    attachments(Engine::Uring);
}

/// Failed logins per client address before lockout, set low so the test sees it.
const THROTTLE_MAX: u32 = 3;
/// A whole browser scenario, launch to close.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(180);

fn web_settings(engine: Engine) -> Settings {
    let mut settings = Settings::new(engine);
    settings
        .extra_toml
        .push_str("[web]\nlisten = [\"127.0.0.1:0\"]\n");
    settings
}

fn base(relay: &Relay, protocol: &str) -> String {
    let addr = relay
        .listening(protocol)
        .unwrap_or_else(|| panic!("a `listening protocol={protocol:?}` line"));
    let scheme = if protocol == "https" { "https" } else { "http" };
    format!("{scheme}://{addr}")
}

/// Where a scenario's screenshots go (kept after the test, outside the repository).
fn artefacts(name: &str) -> PathBuf {
    let root = std::env::var_os("RELAY_TEST_ARTEFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    let dir = root.join("web_browser").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("artefacts dir");
    dir
}

/// Runs one browser scenario; panics with its output (and the relay's log) unless it
/// passed. Returns the figures it printed (its last line of output).
fn browser(relay: &Relay, scenario: &str, mut opts: Value) -> Value {
    opts["user"] = opts.get("user").cloned().unwrap_or(json!("alice"));
    opts["password"] = json!(TEST_PASSWORD);
    let output = run_with_timeout(
        Command::new("node")
            .arg(repo_path("tests/browser/webmail.mjs"))
            .arg(scenario)
            .arg(opts.to_string()),
        SCENARIO_TIMEOUT,
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "browser scenario {scenario} failed ({}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}\n--- relay log ---\n{}",
        output.status,
        relay.log_lines().join("\n")
    );
    println!("{stdout}");
    let last = stdout.lines().last().unwrap_or("{}");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{scenario} printed {last:?}: {e}"))
}

/// Runs `tests/browser/mailtool.py`; its stdout.
fn mailtool(args: &[&str]) -> String {
    let output = run_with_timeout(
        Command::new("python3")
            .arg(repo_path("tests/browser/mailtool.py"))
            .args(args),
        Duration::from_secs(300),
    );
    assert!(
        output.status.success(),
        "mailtool {args:?}: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Sends `message` to `rcpt` with smtplib.
fn smtplib_send(relay: &Relay, rcpt: &str, message: &[u8]) {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), message).expect("write message");
    mailtool(&[
        "send",
        &relay.addr.port().to_string(),
        "sender@remote.test",
        rcpt,
        path_str(file.path()),
    ]);
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// The messages `mailtool pop3|imap` printed (a JSON array of base64).
fn decoded(text: &str) -> Vec<Vec<u8>> {
    let list: Vec<String> = serde_json::from_str(text.trim()).expect("mailtool JSON");
    list.iter()
        .map(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b)
                .expect("base64")
        })
        .collect()
}

fn mail_from_smtp_reads_in_the_browser(engine: Engine) {
    let relay = Relay::start(web_settings(engine));
    let message = "From: Mallory Sender <mallory@remote.test>\r\n\
        To: alice@example.test\r\n\
        Subject: =?UTF-8?B?R3LDvMOfZQ==?= from afar\r\n\
        Date: Tue, 1 Dec 2026 10:00:00 +0000\r\n\
        MIME-Version: 1.0\r\n\
        Content-Type: text/plain; charset=utf-8\r\n\
        Content-Transfer-Encoding: 8bit\r\n\
        \r\n\
        Hello Alice,\r\n\
        Tom & Jerry <tom@example.test> wrote: 1 < 2.\r\n\
        Bye.\r\n";
    smtplib_send(&relay, "alice@example.test", message.as_bytes());
    browser(
        &relay,
        "read",
        json!({
            "base": base(&relay, "http"),
            "artefacts": artefacts(&format!("read-{}", engine.io())),
            "subject": "Gr\u{fc}\u{df}e from afar",
            "from": "mallory@remote.test",
            "body": ["Hello Alice,", "Tom & Jerry <tom@example.test> wrote: 1 < 2.", "Bye."],
        }),
    );
}

fn hostile_html_runs_nothing_and_fetches_nothing(engine: Engine) {
    let relay = Relay::start(web_settings(engine));
    let message = "From: Mallory <mallory@remote.test>\r\n\
        To: alice@example.test\r\n\
        Subject: Hostile HTML\r\n\
        MIME-Version: 1.0\r\n\
        Content-Type: text/html; charset=utf-8\r\n\
        \r\n\
        <html><head><title>PWNED</title><script>document.title='PWNED';window.__ran=1;pwned('head script')</script></head>\r\n\
        <body><p>Dear <b>Alice</b>, the quarterly figures.</p>\r\n\
        <script>document.title='PWNED';window.__ran=1;pwned('script')</script>\r\n\
        <img src=\"http://remote.example/x.png\" alt=\"tracker\">\r\n\
        <img src=\"x\" onerror=\"window.__ran=1;pwned('onerror')\">\r\n\
        <div style=\"background:url(http://remote.example/bg.png)\">styled</div>\r\n\
        <a href=\"javascript:window.__ran=1;pwned('link')\">click me</a>\r\n\
        </body></html>\r\n";
    smtplib_send(&relay, "alice@example.test", message.as_bytes());
    browser(
        &relay,
        "hostile",
        json!({
            "base": base(&relay, "http"),
            "artefacts": artefacts(&format!("hostile-{}", engine.io())),
            "subject": "Hostile HTML",
            "marker": "the quarterly figures.",
        }),
    );
}

fn security_settings(engine: Engine) -> Settings {
    let mut settings = web_settings(engine);
    settings.imap_toml = format!("auth_failures_per_ip_max = {THROTTLE_MAX}\n");
    settings
}

fn login_logout_csrf_cookies_throttle_headers(engine: Engine) {
    let relay = Relay::start(security_settings(engine));
    let figures = browser(
        &relay,
        "security",
        json!({
            "base": base(&relay, "http"),
            "artefacts": artefacts(&format!("security-{}", engine.io())),
            "throttle_max": THROTTLE_MAX,
            "tls": false,
        }),
    );
    assert!(
        figures["checked_responses"].as_u64().unwrap_or(0) >= 10,
        "the headers of every response were checked: {figures}"
    );
}

fn over_https(engine: Engine) {
    let dir = tempfile::tempdir().expect("temp dir");
    let cert = common::tls::TestCert::generate(dir.path(), "relay");
    let mut settings = security_settings(engine);
    settings.extra_toml = format!(
        "{}[web]\nlisten = [\"127.0.0.1:0\"]\ntls_listen = [\"127.0.0.1:0\"]\n",
        cert.toml()
    );
    let relay = Relay::start(settings);
    browser(
        &relay,
        "security",
        json!({
            "base": base(&relay, "https"),
            "artefacts": artefacts("security-https"),
            "throttle_max": THROTTLE_MAX,
            "tls": true,
        }),
    );
}

fn written_in_the_browser_reaches_pop3_imap_and_sent(engine: Engine) {
    let relay = Relay::start(web_settings(engine));
    let subject = "Lunch on Friday";
    let body = "Hello Bob,\n\nlunch at 12:30? <b>not bold</b> & co.\n\nAlice\n";
    browser(
        &relay,
        "compose",
        json!({
            "base": base(&relay, "http"),
            "artefacts": artefacts(&format!("compose-{}", engine.io())),
            "to": "bob@example.test",
            "subject": subject,
            "body": body,
        }),
    );
    // Durable before the page said "sent": bob's maildrop holds it now, over POP3 ...
    let popped = decoded(&mailtool(&[
        "pop3",
        &relay.pop3_addr.port().to_string(),
        "bob",
        TEST_PASSWORD,
    ]));
    assert_eq!(popped.len(), 1, "one message in bob's maildrop");
    let check = |raw: &[u8], via: &str| {
        let parsed = mail_parser::MessageParser::default()
            .parse(raw)
            .unwrap_or_else(|| panic!("{via}: parses"));
        assert_eq!(parsed.subject(), Some(subject), "{via}");
        let from = parsed
            .from()
            .and_then(|a| a.first())
            .and_then(|a| a.address());
        assert_eq!(from, Some("alice@localhost"), "{via}");
        assert_eq!(
            parsed.body_text(0).map(|t| t.replace("\r\n", "\n")),
            Some(body.to_string()),
            "{via}"
        );
    };
    check(&popped[0], "POP3");
    // ... and over IMAP (bob's INBOX; alice's Sent holds the copy).
    let imap = relay.listening("imap").expect("an IMAP listener");
    let port = imap.port().to_string();
    let inbox = decoded(&mailtool(&["imap", &port, "bob", TEST_PASSWORD, "INBOX"]));
    assert_eq!(inbox.len(), 1);
    check(&inbox[0], "IMAP INBOX");
    let sent = decoded(&mailtool(&["imap", &port, "alice", TEST_PASSWORD, "Sent"]));
    assert_eq!(sent.len(), 1);
    check(&sent[0], "IMAP Sent");
}

fn attachments(engine: Engine) {
    // Postfix's smtp-sink as the next hop: an SMTP server no one here wrote.
    let sink = Sink::postfix_smtp_sink();
    let mut settings = web_settings(engine);
    settings.routes = vec![("*".into(), sink.addr.to_string())];
    let relay = Relay::start(settings);
    let dir = artefacts(&format!("attachments-{}", engine.io()));
    let files = dir.join("files");
    std::fs::create_dir_all(&files).expect("files dir");
    // A binary file (every byte value, then a pattern) and a UTF-8 text with a non-ASCII name.
    let binary: Vec<u8> = (0..70_000u32).map(|i| (i * 7 + i / 256) as u8).collect();
    let text = "Grüße,\r\nline two\nno final newline".as_bytes().to_vec();
    let first = files.join("figures.bin");
    let second = files.join("Grüße.txt");
    std::fs::write(&first, &binary).expect("write");
    std::fs::write(&second, &text).expect("write");
    let subject = "Two attachments";
    browser(
        &relay,
        "attachments",
        json!({
            "base": base(&relay, "http"),
            "artefacts": dir,
            "to": "carol@remote.test",
            "subject": subject,
            "body": "Both files attached.\n",
            "files": [path_str(&first), path_str(&second)],
        }),
    );
    let got = sink.wait_messages(1, Duration::from_secs(15));
    // smtp-sink's dump: the envelope as X- fields and its own Received field, then the
    // message as it arrived (lines ending in LF; the attachments are base64).
    let raw = &got[0];
    let dump = String::from_utf8_lossy(raw);
    assert!(dump.contains("X-Rcpt-Args: <carol@remote.test>"), "{dump}");
    let parsed = mail_parser::MessageParser::default()
        .parse(raw)
        .expect("parses");
    assert_eq!(parsed.subject(), Some(subject));
    let attached: Vec<(String, Vec<u8>)> = parsed
        .attachments()
        .map(|a| {
            (
                a.attachment_name().unwrap_or_default().to_string(),
                a.contents().to_vec(),
            )
        })
        .collect();
    assert_eq!(
        attached,
        vec![
            ("figures.bin".to_string(), binary),
            ("Grüße.txt".to_string(), text)
        ],
        "both attachments, byte-exact after decoding"
    );
}

fn a_ten_thousand_message_folder_pages_quickly(engine: Engine) {
    const TOTAL: usize = 10_000;
    const PAGE_SIZE: usize = 50;
    let mut settings = web_settings(engine);
    settings
        .extra_toml
        .push_str(&format!("page_size = {PAGE_SIZE}\n"));
    let relay = Relay::start(settings);
    let filled = mailtool(&[
        "fill",
        &relay.addr.port().to_string(),
        "alice@example.test",
        &TOTAL.to_string(),
        "16",
    ]);
    println!("delivered {TOTAL} messages: {}", filled.trim());
    let figures = browser(
        &relay,
        "bulk",
        json!({
            "base": base(&relay, "http"),
            "artefacts": artefacts(&format!("bulk-{}", engine.io())),
            "total": TOTAL,
            "page_size": PAGE_SIZE,
            // Generous: the figure is printed; the bound only catches a page that scans
            // or copies the whole folder badly.
            "bound_ms": 5000,
        }),
    );
    println!(
        "{} folder of {TOTAL}: first page {} ms (server {} ms), page {} {} ms (server {} ms)",
        engine.io(),
        figures["first_ms"],
        figures["first_server_ms"],
        figures["middle_page"],
        figures["middle_ms"],
        figures["middle_server_ms"]
    );
}

fn looks(engine: Engine) {
    let relay = Relay::start(web_settings(engine));
    let messages: [(&str, &str, &str); 6] = [
        ("Marta Ruiz <marta@remote.test>", "Lunch on Thursday?", "The new place around the corner? 12:30?\r\n"),
        ("GitLab <noreply@remote.test>", "Pipeline passed for main", "Pipeline #4821 passed in 6 minutes.\r\n"),
        ("Jonas Berg <jonas@remote.test>", "Re: Holiday photos", "They came out great, thanks for sharing!\r\n"),
        ("Priya Nair <priya@remote.test>", "Draft of the Q4 report", "Here is the draft. Comments welcome by Friday.\r\n"),
        ("Bank Notifications <notify@remote.test>", "Your statement is ready", "Your monthly statement is ready to view.\r\n"),
        ("Dana Whitfield <dana@remote.test>", "Minutes of Tuesday's meeting", "Hi all,\r\n\r\nthe minutes of Tuesday's meeting are below. Next meeting: Tuesday 10:00, room 4.\r\n\r\n1. Budget: approved as proposed.\r\n2. Office move: March; boxes arrive the week before.\r\n3. Holidays: send your dates to Priya by Friday.\r\n\r\nThanks,\r\nDana\r\n"),
    ];
    for (i, (from, subject, body)) in messages.iter().enumerate() {
        let message = format!(
            "From: {from}\r\nTo: Alice <alice@example.test>\r\nSubject: {subject}\r\nDate: Thu, 3 Dec 2026 {:02}:15:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}",
            9 + i
        );
        smtplib_send(&relay, "alice@example.test", message.as_bytes());
    }
    browser(
        &relay,
        "looks",
        json!({
            "base": base(&relay, "http"),
            "artefacts": artefacts("looks"),
            "subject": messages[5].1,
        }),
    );
}
