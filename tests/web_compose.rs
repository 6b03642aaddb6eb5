//! Web mail's sending side against the real server: a browser stand-in on Python's stdlib
//! (`tests/py/web_compose_client.py`) fills the compose form and posts it as
//! multipart/form-data with files, as a browser does. Checked: attachments reach a remote
//! next hop byte-exact (decoded by Python's email package), Bcc goes to the envelope only
//! (kept in the Sent copy), the Received field names HTTP, a too-large upload gets a clear
//! page, reply/reply-all/forward fill and thread, drafts are saved, reopened and removed on
//! send, and `mailto:` URLs fill the form. Each scenario on both I/O engines (the store
//! and submission paths behind the pages run on each engine's spool).

#[macro_use]
mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::json::Json;
use common::pop3::Pop3;
use common::sinks::{split_scripted, Sink};
use common::{repo_path, Engine, Relay, Settings, TEST_PASSWORD};

engine_tests! {
    attachments_reach_the_next_hop_byte_exact_and_bcc_stays_hidden: attach_uring, attach_epoll;
    an_upload_past_the_message_size_limit_gets_a_clear_page: too_large_uring, too_large_epoll;
    reply_reply_all_and_forward_fill_quote_and_thread: answer_uring, answer_epoll;
    a_draft_is_saved_reopened_and_removed_when_sent: draft_uring, draft_epoll;
    a_mailto_url_fills_the_form: mailto_uring, mailto_epoll;
    sent_over_https_the_received_field_says_https: https_uring, https_epoll;
    a_refused_recipient_comes_back_as_a_notice_in_the_inbox: notice_uring, notice_epoll;
}

fn web_settings(engine: Engine) -> Settings {
    let mut settings = Settings::new(engine);
    settings
        .extra_toml
        .push_str("[web]\nlisten = [\"127.0.0.1:0\"]\n");
    settings
}

fn client(relay: Option<&Relay>, args: &[&str]) -> Json {
    let base = relay.map_or("-".to_string(), |r| {
        format!("http://{}", r.listening("http").expect("an http listener"))
    });
    client_at(relay, &base, args)
}

fn client_at(relay: Option<&Relay>, base: &str, args: &[&str]) -> Json {
    let output = Command::new("python3")
        .arg(repo_path("tests/py/web_compose_client.py"))
        .arg(base)
        .args(args)
        .output()
        .expect("python3 tests/py/web_compose_client.py");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "web_compose_client {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        relay.map(|r| r.log_lines().join("\n")).unwrap_or_default()
    );
    Json::parse(text.trim()).unwrap_or_else(|e| panic!("web_compose_client said {text:?}: {e}"))
}

fn imap_port(relay: &Relay) -> String {
    relay
        .listening("imap")
        .expect("an imap listener")
        .port()
        .to_string()
}

/// Bytes as the client writes them: one latin-1 char per byte.
fn bytes(json: &Json) -> Vec<u8> {
    json.str().chars().map(|c| c as u32 as u8).collect()
}

/// A message taken apart by Python's email package.
fn decode(dir: &Path, message: &[u8]) -> Json {
    let path = dir.join(format!("decode-{}.eml", message.len()));
    std::fs::write(&path, message).expect("write message");
    client(None, &["decode", path.to_str().expect("utf-8 path")])
}

fn header_values<'a>(decoded: &'a Json, name: &str) -> Vec<&'a str> {
    decoded
        .get("headers")
        .array()
        .iter()
        .filter(|h| h.at(0).str().eq_ignore_ascii_case(name))
        .map(|h| h.at(1).str())
        .collect()
}

fn spec(dir: &Path, fields: &str, files: &[(&str, &str, &[u8])]) -> String {
    let mut entries = Vec::new();
    for (i, (name, ctype, data)) in files.iter().enumerate() {
        let path = dir.join(format!("upload-{i}"));
        std::fs::write(&path, data).expect("write upload");
        entries.push(format!(
            "{{\"name\": {}, \"type\": {}, \"path\": {}}}",
            json_str(name),
            json_str(ctype),
            json_str(path.to_str().expect("utf-8 path"))
        ));
    }
    let text = format!("{{{fields}, \"files\": [{}]}}", entries.join(", "));
    let path = dir.join("spec.json");
    std::fs::write(&path, text).expect("write spec");
    path.to_str().expect("utf-8 path").to_string()
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Arbitrary bytes, every value present (a binary file a text path would mangle).
fn binary(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            (x >> 16) as u8
        })
        .collect()
}

fn attachments_reach_the_next_hop_byte_exact_and_bcc_stays_hidden(engine: Engine) {
    let sink = Sink::scripted(0, &[]);
    let mut settings = web_settings(engine);
    settings.routes = vec![("*".into(), sink.addr.to_string())];
    let relay = Relay::start(settings);
    let dir = tempfile::tempdir().expect("temp dir");
    let pdf = binary(70_000, 7);
    let notes = b"line one\r\nline two, no newline at the end".to_vec();
    let spec = spec(
        dir.path(),
        "\"to\": \"carol@remote.test\", \"cc\": \"bob@example.test\", \"bcc\": \"dave@remote.test\", \"subject\": \"Zwei Anh\u{e4}nge\", \"body\": \"Gr\u{fc}\u{df}e,\\nsee the files.\\n\"",
        &[
            ("R\u{e9}sum\u{e9} 2026.pdf", "application/pdf", &pdf),
            ("notes.txt", "application/octet-stream", &notes),
        ],
    );
    let seen = client(
        Some(&relay),
        &["send", "alice", TEST_PASSWORD, &imap_port(&relay), &spec],
    );
    let form = seen.get("form");
    assert!(
        matches!(form.get("multipart"), Json::Bool(true)),
        "{form:?}"
    );
    assert!(
        matches!(form.get("file_input"), Json::Bool(true)),
        "{form:?}"
    );
    for field in ["to", "cc", "bcc", "subject", "body", "csrf"] {
        assert!(form.get("fields").object().contains_key(field), "{field}");
    }
    assert_eq!(seen.get("status").int(), 200, "{}", seen.get("body").str());

    // The remote next hop: Carol in the header, Dave only in the envelope.
    let got = sink.wait_messages(1, Duration::from_secs(15));
    let (envelope, data) = split_scripted(&got[0]);
    assert!(
        envelope.contains(&"RCPT:carol@remote.test".to_string()),
        "{envelope:?}"
    );
    let dave_too = envelope.contains(&"RCPT:dave@remote.test".to_string())
        || sink
            .wait_messages(2, Duration::from_secs(15))
            .iter()
            .any(|m| {
                split_scripted(m)
                    .0
                    .contains(&"RCPT:dave@remote.test".to_string())
            });
    assert!(dave_too, "the Bcc address is an envelope recipient");
    let text = String::from_utf8_lossy(&data);
    assert!(
        !text.contains("dave@"),
        "no trace of Bcc in the message: {text}"
    );
    let decoded = decode(dir.path(), &data);
    assert_eq!(decoded.get("type").str(), "multipart/mixed");
    assert!(header_values(&decoded, "Bcc").is_empty());
    assert_eq!(header_values(&decoded, "Subject"), ["Zwei Anh\u{e4}nge"]);
    assert_eq!(header_values(&decoded, "Message-ID").len(), 1);
    assert_eq!(header_values(&decoded, "Date").len(), 1);
    assert!(
        header_values(&decoded, "Received")
            .iter()
            .any(|r| r.contains("with HTTP")),
        "the Received field names HTTP: {text}"
    );
    assert_eq!(
        decoded.get("text").str().replace("\r\n", "\n"),
        "Gr\u{fc}\u{df}e,\nsee the files.\n"
    );
    let files = decoded.get("attachments").array();
    assert_eq!(files.len(), 2);
    assert_eq!(files[0].get("filename").str(), "R\u{e9}sum\u{e9} 2026.pdf");
    assert_eq!(files[0].get("type").str(), "application/pdf");
    assert_eq!(
        bytes(files[0].get("data")),
        pdf,
        "byte-exact after decoding"
    );
    assert_eq!(files[1].get("filename").str(), "notes.txt");
    assert_eq!(
        files[1].get("type").str(),
        "text/plain",
        "guessed from the name"
    );
    assert_eq!(bytes(files[1].get("data")), notes);

    // The local Cc: the same message in bob's INBOX over POP3.
    let mut pop = Pop3::login_retrying(
        relay.pop3_addr,
        "bob",
        TEST_PASSWORD,
        Duration::from_secs(5),
    );
    assert_eq!(pop.stat().0, 1);
    let local = decode(dir.path(), &pop.retr(1));
    assert_eq!(bytes(local.get("attachments").at(0).get("data")), pdf);

    // The Sent copy keeps Bcc, so the sender sees who else got it.
    let sent = seen.get("sent").array();
    assert_eq!(sent.len(), 1);
    let copy = decode(dir.path(), &bytes(sent[0].get("raw")));
    assert_eq!(header_values(&copy, "Bcc"), ["dave@remote.test"]);
    assert_eq!(bytes(copy.get("attachments").at(1).get("data")), notes);
}

fn an_upload_past_the_message_size_limit_gets_a_clear_page(engine: Engine) {
    let sink = Sink::scripted(0, &[]);
    let mut settings = web_settings(engine);
    settings.message_size_max = "64KiB".into();
    settings.routes = vec![("*".into(), sink.addr.to_string())];
    let relay = Relay::start(settings);
    let dir = tempfile::tempdir().expect("temp dir");
    // Past the limit as uploaded: refused while reading, before anything is built.
    let spec_big = spec(
        dir.path(),
        "\"to\": \"carol@remote.test\", \"subject\": \"big\", \"body\": \"x\"",
        &[("big.bin", "application/octet-stream", &binary(80_000, 1))],
    );
    let seen = client(
        Some(&relay),
        &[
            "send",
            "alice",
            TEST_PASSWORD,
            &imap_port(&relay),
            &spec_big,
        ],
    );
    assert_eq!(seen.get("status").int(), 413);
    let body = seen.get("body").str();
    assert!(body.contains("larger than this server accepts"), "{body}");
    assert!(body.contains("65536"), "the limit is named: {body}");
    // Under the limit as uploaded but over it once base64-encoded: refused by the
    // submission path with its own page.
    let spec_edge = spec(
        dir.path(),
        "\"to\": \"carol@remote.test\", \"subject\": \"edge\", \"body\": \"x\"",
        &[("edge.bin", "application/octet-stream", &binary(60_000, 2))],
    );
    let seen = client(
        Some(&relay),
        &[
            "send",
            "alice",
            TEST_PASSWORD,
            &imap_port(&relay),
            &spec_edge,
        ],
    );
    assert_eq!(seen.get("status").int(), 422);
    let body = seen.get("body").str();
    assert!(body.contains("larger than this server accepts"), "{body}");
    assert!(body.contains("Attach your files again"), "{body}");
    assert!(seen.get("sent").array().is_empty(), "nothing in Sent");
    std::thread::sleep(Duration::from_millis(500));
    assert!(sink.messages().is_empty(), "nothing sent");

    // A request limit below the message limit: its own clear page.
    let mut settings = web_settings(engine);
    settings
        .extra_toml
        .push_str("request_body_max = \"32KiB\"\n");
    let relay = Relay::start(settings);
    let seen = client(
        Some(&relay),
        &[
            "send",
            "alice",
            TEST_PASSWORD,
            &imap_port(&relay),
            &spec_edge,
        ],
    );
    assert_eq!(seen.get("status").int(), 413);
    let body = seen.get("body").str();
    assert!(
        body.contains("larger than this server accepts in one request"),
        "{body}"
    );
}

const ORIGINAL: &[u8] = b"From: Bob <bob@example.test>\r\nTo: alice@example.test, one@example.test\r\nCc: two@example.test\r\nSubject: Lunch plans\r\nDate: Tue, 1 Dec 2026 10:00:00 +0000\r\nMessage-ID: <lunch-2@example.test>\r\nReferences: <lunch-1@example.test>\r\nIn-Reply-To: <lunch-1@example.test>\r\n\r\nNoon at the usual place?\r\n> earlier words\r\n";

fn reply_reply_all_and_forward_fill_quote_and_thread(engine: Engine) {
    let relay = Relay::start(web_settings(engine));
    let dir = tempfile::tempdir().expect("temp dir");
    relay.deliver(&["alice@example.test"], ORIGINAL);

    let reply = client(
        Some(&relay),
        &["answer", "alice", TEST_PASSWORD, "reply", "Lunch plans", ""],
    );
    assert_eq!(reply.get("page_status").int(), 200);
    let fields = reply.get("form").get("fields");
    assert_eq!(fields.get("to").str(), "bob@example.test");
    assert_eq!(fields.get("cc").str(), "");
    assert_eq!(fields.get("subject").str(), "Re: Lunch plans");
    let body = fields.get("body").str();
    assert!(body.contains("Bob <bob@example.test> wrote:"), "{body}");
    assert!(
        body.contains("> Noon at the usual place?\n>> earlier words"),
        "{body}"
    );
    assert_eq!(
        reply.get("status").int(),
        200,
        "{}",
        reply.get("body").str()
    );

    let all = client(
        Some(&relay),
        &[
            "answer",
            "alice",
            TEST_PASSWORD,
            "reply_all",
            "Lunch plans",
            "",
        ],
    );
    let fields = all.get("form").get("fields");
    assert_eq!(fields.get("to").str(), "bob@example.test");
    assert_eq!(fields.get("cc").str(), "one@example.test, two@example.test");
    assert_eq!(all.get("status").int(), 200, "{}", all.get("body").str());

    let forward = client(
        Some(&relay),
        &[
            "answer",
            "alice",
            TEST_PASSWORD,
            "forward",
            "Lunch plans",
            "bob@example.test",
        ],
    );
    let form = forward.get("form");
    assert_eq!(form.get("fields").get("subject").str(), "Fwd: Lunch plans");
    assert_eq!(form.get("kept").array()[0].str(), "Lunch plans.eml");
    assert_eq!(
        forward.get("status").int(),
        200,
        "{}",
        forward.get("body").str()
    );

    // Bob got the reply (threaded), the reply to all and the forward.
    let mut pop = Pop3::login_retrying(
        relay.pop3_addr,
        "bob",
        TEST_PASSWORD,
        Duration::from_secs(5),
    );
    assert_eq!(pop.stat().0, 3);
    let first = decode(dir.path(), &pop.retr(1));
    assert_eq!(header_values(&first, "Subject"), ["Re: Lunch plans"]);
    assert_eq!(
        header_values(&first, "In-Reply-To"),
        ["<lunch-2@example.test>"]
    );
    assert_eq!(
        header_values(&first, "References"),
        ["<lunch-1@example.test> <lunch-2@example.test>"]
    );
    let second = decode(dir.path(), &pop.retr(2));
    assert_eq!(
        header_values(&second, "Cc"),
        ["one@example.test, two@example.test"]
    );
    let third = decode(dir.path(), &pop.retr(3));
    assert_eq!(header_values(&third, "Subject"), ["Fwd: Lunch plans"]);
    assert!(header_values(&third, "In-Reply-To").is_empty());
    let files = third.get("attachments").array();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].get("type").str(), "message/rfc822");
    let forwarded = bytes(files[0].get("data"));
    let forwarded = String::from_utf8_lossy(&forwarded);
    assert!(
        forwarded.contains("Message-ID: <lunch-2@example.test>"),
        "{forwarded}"
    );
    assert!(
        forwarded.contains("Noon at the usual place?"),
        "{forwarded}"
    );
    // One and Two (reply to all) got theirs too.
    for user in ["one", "two"] {
        let mut pop =
            Pop3::login_retrying(relay.pop3_addr, user, TEST_PASSWORD, Duration::from_secs(5));
        assert_eq!(pop.stat().0, 1, "{user}");
    }
}

fn a_draft_is_saved_reopened_and_removed_when_sent(engine: Engine) {
    let relay = Relay::start(web_settings(engine));
    let dir = tempfile::tempdir().expect("temp dir");
    let file = binary(3000, 9);
    let spec = spec(
        dir.path(),
        "\"to\": \"bob@example.test\", \"bcc\": \"one@example.test\", \"subject\": \"Half written\", \"body\": \"first thoughts\"",
        &[("sketch.png", "image/png", &file)],
    );
    let seen = client(
        Some(&relay),
        &["draft", "alice", TEST_PASSWORD, &imap_port(&relay), &spec],
    );
    assert_eq!(
        seen.get("saved_status").int(),
        200,
        "{}",
        seen.get("saved_body").str()
    );
    assert!(seen.get("saved_body").str().contains("Draft saved"));
    let drafts = seen.get("drafts_after_save").array();
    assert_eq!(drafts.len(), 1, "durable in Drafts before the page said so");
    assert!(
        drafts[0].get("flags").str().contains("\\Draft"),
        "{:?}",
        drafts[0]
    );
    let reopened = seen.get("reopened");
    let fields = reopened.get("fields");
    assert_eq!(fields.get("to").str(), "bob@example.test");
    assert_eq!(fields.get("bcc").str(), "one@example.test");
    assert_eq!(fields.get("subject").str(), "Half written");
    assert_eq!(fields.get("body").str(), "first thoughts");
    assert_eq!(reopened.get("kept").array()[0].str(), "sketch.png");
    assert_eq!(seen.get("again_status").int(), 200);
    let drafts = seen.get("drafts_after_again").array();
    assert_eq!(drafts.len(), 1, "saving again replaces the draft");
    assert!(drafts[0].get("raw").str().contains("P.S. edited"));
    assert_eq!(
        seen.get("sent_status").int(),
        200,
        "{}",
        seen.get("sent_body").str()
    );
    assert!(
        seen.get("drafts_after_send").array().is_empty(),
        "sending removes the draft"
    );

    // Bob got it with the draft's file; One (Bcc) too, and no Bcc field in either.
    let mut pop = Pop3::login_retrying(
        relay.pop3_addr,
        "bob",
        TEST_PASSWORD,
        Duration::from_secs(5),
    );
    assert_eq!(pop.stat().0, 1);
    let got = decode(dir.path(), &pop.retr(1));
    assert!(header_values(&got, "Bcc").is_empty());
    assert_eq!(
        got.get("text").str().replace("\r\n", "\n"),
        "first thoughts\nP.S. edited"
    );
    let files = got.get("attachments").array();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].get("filename").str(), "sketch.png");
    assert_eq!(bytes(files[0].get("data")), file);
    let mut pop = Pop3::login_retrying(
        relay.pop3_addr,
        "one",
        TEST_PASSWORD,
        Duration::from_secs(5),
    );
    assert_eq!(pop.stat().0, 1);
    assert!(!String::from_utf8_lossy(&pop.retr(1)).contains("Bcc:"));
}

fn a_mailto_url_fills_the_form(engine: Engine) {
    let relay = Relay::start(web_settings(engine));
    let seen = client(
        Some(&relay),
        &[
            "mailto",
            "alice",
            TEST_PASSWORD,
            "mailto:bob@example.test?cc=one@example.test&subject=Caf%C3%A9%20at%201+1&body=Hi%0D%0Athere",
        ],
    );
    assert_eq!(seen.get("status").int(), 200);
    let fields = seen.get("form").get("fields");
    assert_eq!(fields.get("to").str(), "bob@example.test");
    assert_eq!(fields.get("cc").str(), "one@example.test");
    assert_eq!(fields.get("subject").str(), "Caf\u{e9} at 1+1");
    assert_eq!(fields.get("body").str().replace("\r\n", "\n"), "Hi\nthere");
}

fn sent_over_https_the_received_field_says_https(engine: Engine) {
    let dir = tempfile::tempdir().expect("temp dir");
    let cert = common::tls::TestCert::generate(dir.path(), "relay");
    let mut settings = Settings::new(engine);
    settings.extra_toml = format!("{}[web]\ntls_listen = [\"127.0.0.1:0\"]\n", cert.toml());
    let relay = Relay::start(settings);
    let base = format!(
        "https://{}",
        relay.listening("https").expect("an https listener")
    );
    let spec = spec(
        dir.path(),
        "\"to\": \"bob@example.test\", \"subject\": \"Over TLS\", \"body\": \"hi\"",
        &[("a.bin", "application/octet-stream", &binary(1000, 3))],
    );
    let cafile = cert.cert_path.to_str().expect("utf-8 path");
    let seen = client_at(
        Some(&relay),
        &base,
        &[
            "send",
            "alice",
            TEST_PASSWORD,
            "-",
            &spec,
            "--cafile",
            cafile,
        ],
    );
    assert_eq!(seen.get("status").int(), 200, "{}", seen.get("body").str());
    let mut pop = Pop3::login_retrying(
        relay.pop3_addr,
        "bob",
        TEST_PASSWORD,
        Duration::from_secs(5),
    );
    assert_eq!(pop.stat().0, 1);
    let got = decode(dir.path(), &pop.retr(1));
    let received = header_values(&got, "Received");
    assert!(
        received.iter().any(|r| r.contains("with HTTPS")),
        "{received:?}"
    );
    assert_eq!(
        bytes(got.get("attachments").at(0).get("data")),
        binary(1000, 3)
    );
}

/// A message sent from the browser whose remote recipient is refused (550 at the next hop)
/// comes back as a delivery status notification in the sender's INBOX, as for an SMTP
/// submission.
fn a_refused_recipient_comes_back_as_a_notice_in_the_inbox(engine: Engine) {
    let sink = Sink::scripted(0, &["--rcpt", "550=nobody@remote.test"]);
    let mut settings = web_settings(engine);
    settings.routes = vec![("*".into(), sink.addr.to_string())];
    let relay = Relay::start(settings);
    let dir = tempfile::tempdir().expect("temp dir");
    let spec = spec(
        dir.path(),
        "\"to\": \"nobody@remote.test\", \"subject\": \"web bounce\", \"body\": \"hello\\n\"",
        &[],
    );
    let seen = client(
        Some(&relay),
        &["send", "alice", TEST_PASSWORD, &imap_port(&relay), &spec],
    );
    assert_eq!(seen.get("status").int(), 200, "{}", seen.get("body").str());
    relay.wait_log(
        &["delivery status notification queued"],
        Duration::from_secs(15),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let notice = loop {
        let mut pop: Pop3 = relay.pop3_login("alice");
        let (count, _) = pop.stat();
        if count >= 1 {
            break String::from_utf8_lossy(&pop.retr(1)).into_owned();
        }
        let _ = pop.quit();
        assert!(
            std::time::Instant::now() < deadline,
            "no notice in alice's INBOX"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        notice.contains("multipart/report; report-type=delivery-status"),
        "{notice}"
    );
    assert!(
        notice.contains("Final-Recipient: rfc822; nobody@remote.test"),
        "{notice}"
    );
    assert!(notice.contains("Action: failed"), "{notice}");
    assert!(notice.contains("Subject: web bounce"), "{notice}");
    assert!(sink.messages().is_empty(), "nothing accepted at the hop");
}
