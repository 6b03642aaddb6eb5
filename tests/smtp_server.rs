//! Integration and interoperability tests of `relay serve`: the real binary on port 0, driven
//! by independent clients (lettre, Python's smtplib, curl, and a raw byte-exact socket), and
//! observed only through replies, the log, `relay spool ls|cat`, exit status and /proc.
//!
//! Every test body takes the I/O engine and runs twice (`_uring`, `_epoll`): the engines
//! share the protocol core but not the byte-moving code, so each behaviour is checked on both.
//! The seccomp tests (io_uring denied) are the exception: they are about the engine choice.

#[macro_use]
mod common;

use std::ffi::OsStr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::smtp::{dot_stuff, message};
use common::{
    assert_stored, describe, has_all, new_workdir, relay_cmd, repo_path, run_with_timeout,
    split_received, spool_ls, Client, Engine, Relay, Settings, COMMAND_TIMEOUT,
};

engine_tests! {
    lettre_two_recipients: lettre_two_recipients_uring, lettre_two_recipients_epoll;
    smtplib_interop: smtplib_interop_uring, smtplib_interop_epoll;
    curl_upload: curl_upload_uring, curl_upload_epoll;
    smuggling_variants_rejected: smuggling_variants_rejected_uring, smuggling_variants_rejected_epoll;
    overlong_command_line: overlong_command_line_uring, overlong_command_line_epoll;
    command_timeout_closes: command_timeout_closes_uring, command_timeout_closes_epoll;
    per_ip_connection_limit: per_ip_connection_limit_uring, per_ip_connection_limit_epoll;
    sigterm_drains: sigterm_drains_uring, sigterm_drains_epoll;
    second_signal_exits_at_once: second_signal_exits_at_once_uring, second_signal_exits_at_once_epoll;
    engine_as_configured: engine_as_configured_uring, engine_as_configured_epoll;
    disk_write_failure: disk_write_failure_uring, disk_write_failure_epoll;
    relay_check: relay_check_uring, relay_check_epoll;
}

const EXTENSIONS: [&str; 7] = [
    "PIPELINING",
    "SIZE",
    "8BITMIME",
    "ENHANCEDSTATUSCODES",
    "SMTPUTF8",
    "CHUNKING",
    "DSN",
];

// ---------------------------------------------------------------------------------------------
// 1. lettre

fn lettre_two_recipients(engine: Engine) {
    use lettre::message::header::ContentType;
    use lettre::{Message, SmtpTransport, Transport};

    let relay = Relay::start(Settings::new(engine));
    let email = Message::builder()
        .from("Lettre Sender <sender@example.test>".parse().unwrap())
        .to("one@example.test".parse().unwrap())
        .to("two@localhost".parse().unwrap())
        .subject("lettre interop")
        .message_id(Some("<lettre-interop@client.test>".into()))
        .header(ContentType::TEXT_PLAIN)
        .body(String::from(
            "marker lettre-interop\r\nsecond line\r\n.a line lettre must dot-stuff\r\nlast",
        ))
        .expect("build message");
    let transport = SmtpTransport::builder_dangerous("127.0.0.1")
        .port(relay.addr.port())
        .timeout(Some(Duration::from_secs(20)))
        .build();
    let response = transport.send(&email).expect("lettre send");
    assert!(response.is_positive(), "{response:?}");
    let first = response.first_line().unwrap_or_default().to_string();
    assert!(
        first.starts_with("2.0.0 Ok: queued as "),
        "end of data reply: {first:?}"
    );
    let id = first["2.0.0 Ok: queued as ".len()..].trim().to_string();
    assert!(common::is_queue_id(&id), "queue id in {first:?}");

    // The log names the same id, with two recipients.
    let accepted = relay.wait_accepted(&id);
    assert!(accepted.contains("rcpts=2"), "{accepted}");

    let listed = relay.spool_ls();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].id, id);
    assert!(
        has_all(
            &listed[0].line,
            &["sender@example.test", "one@example.test", "two@localhost"]
        ),
        "spool ls line: {}",
        listed[0].line
    );

    // lettre sends `formatted()` (dot-stuffed) followed by CRLF.CRLF, so the message text the
    // relay must store is `formatted()` plus the CRLF that ends its last line.
    let mut sent = email.formatted();
    sent.extend_from_slice(b"\r\n");
    assert_stored(&relay.spool_dir, &id, &sent);
    relay.stop();
}

// ---------------------------------------------------------------------------------------------
// 2. Python smtplib

fn smtplib_interop(engine: Engine) {
    let relay = Relay::start(Settings::new(engine));
    let mut denied_settings = Settings::new(engine);
    denied_settings.allowed_networks = vec!["192.0.2.0/24".into()];
    let denied = Relay::start(denied_settings);

    let mut command = Command::new("python3");
    command
        .arg(repo_path("tests/py/smtplib_interop.py"))
        .arg("--port")
        .arg(relay.addr.port().to_string())
        .arg("--denied-port")
        .arg(denied.addr.port().to_string());
    let output = run_with_timeout(&mut command, COMMAND_TIMEOUT);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "smtplib script: {}",
        describe(&output)
    );
    let doc = common::json::Json::parse(stdout.trim())
        .unwrap_or_else(|e| panic!("script output is not JSON ({e}): {stdout}"));

    // EHLO: every extension of the contract, as smtplib parsed them.
    let ehlo = doc.get("ehlo");
    assert_eq!(ehlo.get("code").int(), 250);
    let features: Vec<String> = ehlo
        .get("features")
        .array()
        .iter()
        .map(|f| f.str().to_ascii_uppercase())
        .collect();
    for ext in EXTENSIONS {
        assert!(
            features.iter().any(|f| f == ext),
            "EHLO lacks {ext}: {features:?}"
        );
    }
    let size = ehlo.get("size").str();
    assert_eq!(
        size,
        (25u64 * 1024 * 1024).to_string(),
        "SIZE must advertise message_size_max"
    );

    // sendmail with three recipients: none refused, stored byte for byte.
    let sendmail = doc.get("sendmail");
    assert!(sendmail.get("refused").object().is_empty(), "{sendmail:?}");

    // The dot-stuffing message: accepted, and its id is in the 250 text.
    let dots = doc.get("dots");
    assert_eq!(dots.get("mail").at(0).int(), 250, "{dots:?}");
    assert_eq!(dots.get("rcpt").at(0).int(), 250, "{dots:?}");
    assert_eq!(dots.get("data").at(0).int(), 250, "{dots:?}");
    let data_text = dots.get("data").at(1).str();
    let dots_id = data_text
        .strip_prefix("2.0.0 Ok: queued as ")
        .unwrap_or_else(|| panic!("end of data reply: {data_text:?}"))
        .trim()
        .to_string();
    assert!(common::is_queue_id(&dots_id), "{data_text:?}");
    assert_eq!(doc.get("quit").int(), 221);

    let listed = relay.spool_ls();
    assert_eq!(listed.len(), 2, "{listed:?}");
    let several = listed
        .iter()
        .find(|e| e.id != dots_id)
        .expect("the sendmail message is listed");
    assert!(listed.iter().any(|e| e.id == dots_id), "{listed:?}");
    for rcpt in sendmail.get("recipients").array() {
        assert!(
            several.line.contains(rcpt.str()),
            "{} lacks {}",
            several.line,
            rcpt.str()
        );
    }
    assert_stored(
        &relay.spool_dir,
        &several.id,
        sendmail.get("message").str().as_bytes(),
    );
    let dots_message = dots.get("message").str();
    assert!(dots_message.contains("\r\n.leading dot\r\n..two leading dots\r\n.\r\n"));
    assert_stored(&relay.spool_dir, &dots_id, dots_message.as_bytes());

    // Relay denied: 127.0.0.1 is outside allowed_networks, so only local domains are taken.
    let d = doc.get("denied");
    assert_eq!(d.get("mail").at(0).int(), 250, "{d:?}");
    let remote = d.get("remote");
    assert_eq!(
        remote.at(0).int(),
        554,
        "RCPT to a non-local domain: {remote:?}"
    );
    assert!(remote.at(1).str().starts_with("5.7.1 "), "{remote:?}");
    assert!(
        remote.at(1).str().contains("Relay access denied"),
        "{remote:?}"
    );
    assert_eq!(
        d.get("local").at(0).int(),
        250,
        "local domain after a denial: {d:?}"
    );
    assert_eq!(d.get("rset").at(0).int(), 250, "{d:?}");
    assert_eq!(d.get("noop").at(0).int(), 250, "{d:?}");
    assert!(denied.spool_ls().is_empty());

    relay.stop();
    denied.stop();
}

// ---------------------------------------------------------------------------------------------
// 3. curl

fn curl_upload(engine: Engine) {
    let relay = Relay::start(Settings::new(engine));
    let content = message(
        "curl-upload",
        &[
            ".a line curl must dot-stuff",
            "..and this one too",
            "last line",
        ],
    );
    let file = relay.workdir().path().join("curl-message.eml");
    std::fs::write(&file, &content).unwrap();

    let mut command = Command::new("curl");
    command
        .arg("--silent")
        .arg("--show-error")
        .arg("--max-time")
        .arg("30")
        .arg("--url")
        .arg(format!("smtp://127.0.0.1:{}", relay.addr.port()))
        .arg("--mail-from")
        .arg("a@example.test")
        .arg("--mail-rcpt")
        .arg("one@example.test")
        .arg("--upload-file")
        .arg(&file);
    let output = run_with_timeout(&mut command, COMMAND_TIMEOUT);
    assert!(output.status.success(), "curl: {}", describe(&output));

    let listed = relay.spool_ls();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert!(
        has_all(&listed[0].line, &["a@example.test", "one@example.test"]),
        "{}",
        listed[0].line
    );
    relay.wait_accepted(&listed[0].id);
    // The file ends with CRLF, so curl sends it as is (stuffed) and then ".\r\n".
    assert_stored(&relay.spool_dir, &listed[0].id, &content);
    relay.stop();
}

// ---------------------------------------------------------------------------------------------
// 4. SMTP smuggling: bare LF / bare CR in DATA

/// After the smuggled "end of data", a whole second transaction: a lenient server would run it.
const SMUGGLED: &str = "MAIL FROM:<smuggled@example.test>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nsmuggled body";

fn smuggling_cases() -> Vec<(&'static str, Vec<u8>)> {
    let around = |n: u32, terminator: &str| {
        format!("Subject: smuggling {n}\r\n\r\nbefore{terminator}{SMUGGLED}\r\n.\r\n").into_bytes()
    };
    vec![
        ("\\n.\\n", around(1, "\n.\n")),
        ("\\r.\\r", around(2, "\r.\r")),
        ("\\r\\n.\\n", around(3, "\r\n.\n")),
        ("\\n.\\r\\n", around(4, "\n.\r\n")),
        ("\\r\\n.\\r", around(5, "\r\n.\r")),
        (
            "bare LF in a header",
            b"Subject: smuggling 6\nBcc: victim@example.test\r\n\r\nbody\r\n.\r\n".to_vec(),
        ),
        (
            "bare CR in the body",
            b"Subject: smuggling 7\r\n\r\nbody\rmore body\r\n.\r\n".to_vec(),
        ),
    ]
}

fn smuggling_variants_rejected(engine: Engine) {
    let relay = Relay::start(Settings::new(engine));
    let mut clean_ids = Vec::new();
    for (name, payload) in smuggling_cases() {
        let mut client = relay.client();
        client.ehlo();
        client.expect("MAIL FROM:<attacker@example.test>", 250);
        client.expect("RCPT TO:<one@example.test>", 250);
        client.expect("DATA", 354);
        client.send(&payload).unwrap();
        let reply = client
            .read_reply()
            .unwrap_or_else(|e| panic!("{name}: no reply at the real CRLF.CRLF: {e}"));
        assert!(
            reply.is(554, "5.5.2"),
            "{name}: expected 554 5.5.2 at the real terminator, got {reply}"
        );

        // The session goes on: a clean transaction on the same connection is stored.
        let clean = message(
            &format!("clean-after-case-{}", clean_ids.len() + 1),
            &["ok"],
        );
        let reply = client
            .transaction("sender@example.test", &["one@example.test"], &clean)
            .unwrap_or_else(|e| panic!("{name}: clean transaction after the rejection: {e}"));
        assert_eq!(reply.code, 250, "{name}: clean transaction: {reply}");
        let id = reply
            .queue_id()
            .unwrap_or_else(|| panic!("{name}: no queue id: {reply}"));
        clean_ids.push((id, clean));
        client.quit();
    }
    let mut listed: Vec<String> = relay.spool_ls().into_iter().map(|e| e.id).collect();
    let mut expected: Vec<String> = clean_ids.iter().map(|(id, _)| id.clone()).collect();
    listed.sort();
    expected.sort();
    assert_eq!(listed, expected, "only the clean messages may be stored");
    for (id, clean) in &clean_ids {
        assert_stored(&relay.spool_dir, id, clean);
    }
    assert!(
        !relay
            .log_lines()
            .iter()
            .any(|l| l.contains("smuggled@example.test") && l.contains("accepted")),
        "a smuggled transaction was accepted"
    );
    relay.stop();
}

// ---------------------------------------------------------------------------------------------
// 5. Overlong command line

fn overlong_command_line(engine: Engine) {
    let relay = Relay::start(Settings::new(engine));
    let mut client = relay.client();
    client.ehlo();
    // Just over RFC 5321's 512 octets, and far over the read buffer (drained to CRLF).
    for len in [600usize, 20_000] {
        let line = format!("NOOP {}", "x".repeat(len));
        let reply = client
            .cmd(&line)
            .unwrap_or_else(|e| panic!("{len}-octet line: {e}"));
        assert!(reply.is(500, "5.5.2"), "{len}-octet line: {reply}");
        let reply = client.cmd("NOOP").expect("NOOP after an overlong line");
        assert_eq!(
            reply.code, 250,
            "session must continue after an overlong line: {reply}"
        );
    }
    // An overlong MAIL does not open a transaction; a proper one still works.
    let reply = client
        .cmd(&format!("MAIL FROM:<{}@example.test>", "a".repeat(600)))
        .unwrap();
    assert!(reply.is(500, "5.5.2"), "{reply}");
    let msg = message("after-overlong", &[]);
    let reply = client
        .transaction("sender@example.test", &["one@example.test"], &msg)
        .unwrap();
    assert_eq!(reply.code, 250, "{reply}");
    client.quit();
    relay.stop();
}

// ---------------------------------------------------------------------------------------------
// 6. Command timeout

fn command_timeout_closes(engine: Engine) {
    let mut settings = Settings::new(engine);
    settings.command_timeout = "1s".into();
    let relay = Relay::start(settings);
    let before = relay.fd_count();

    for (name, partial) in [
        ("idle client", &b""[..]),
        ("half a command", &b"MAIL FROM:<a@exa"[..]),
    ] {
        let mut client = relay.client();
        let started = Instant::now();
        if !partial.is_empty() {
            client.send(partial).unwrap();
        }
        let during = relay.fd_count();
        assert!(
            during > before,
            "{name}: the connection must show in /proc ({before} → {during})"
        );
        client.set_read_timeout(Duration::from_secs(10)).unwrap();
        let reply = client
            .read_reply()
            .unwrap_or_else(|e| panic!("{name}: no 421 within 10 s: {e}"));
        let waited = started.elapsed();
        assert!(reply.is(421, "4.4.2"), "{name}: {reply}");
        assert!(
            waited >= Duration::from_millis(900),
            "{name}: 421 after {waited:?}, before the 1 s command_timeout"
        );
        client
            .expect_eof(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{name}: the server must close after 421: {e}"));
        let after = common::wait_fd_count_at_most(relay.pid(), before, Duration::from_secs(10));
        assert!(
            after <= before,
            "{name}: relay fds {before} before the connection, still {after} 10 s after it closed"
        );
    }
    assert!(
        relay.client().cmd("NOOP").unwrap().code == 250,
        "relay still serves"
    );
    relay.stop();
}

// ---------------------------------------------------------------------------------------------
// 7. Connections per IP

fn per_ip_connection_limit(engine: Engine) {
    let mut settings = Settings::new(engine);
    settings.connections_per_ip_max = 3;
    let relay = Relay::start(settings);
    let mut held: Vec<Client> = (0..3).map(|_| relay.client()).collect();

    let mut fourth = Client::connect(relay.addr).unwrap();
    let reply = fourth.read_reply().expect("reply to the 4th connection");
    assert!(
        reply.is(421, "4.7.0"),
        "4th connection from one IP: {reply}"
    );
    fourth
        .expect_eof(Duration::from_secs(10))
        .expect("refused connection is closed");
    // The held ones are unaffected.
    for client in &mut held {
        assert_eq!(client.cmd("NOOP").unwrap().code, 250);
    }

    // Free one slot; the release is asynchronous (the server sees the close later), so retry
    // within a deadline until a new connection is greeted.
    held.pop().unwrap().quit();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut client = Client::connect(relay.addr).unwrap();
        let reply = client.read_reply().expect("reply to a new connection");
        if reply.code == 220 {
            assert_eq!(client.cmd("NOOP").unwrap().code, 250);
            break;
        }
        assert!(reply.is(421, "4.7.0"), "{reply}");
        assert!(
            Instant::now() < deadline,
            "a freed slot was not reusable within 10 s (last reply: {reply})"
        );
        std::thread::sleep(Duration::from_millis(50)); // retry backoff, not an event wait
    }
    relay.stop();
}

// ---------------------------------------------------------------------------------------------
// 8. SIGTERM drain

fn sigterm_drains(engine: Engine) {
    let relay = Relay::start(Settings::new(engine));
    let mut idle = relay.client();
    idle.ehlo();
    let mut busy = relay.client();
    busy.ehlo();
    busy.expect("MAIL FROM:<busy@example.test>", 250);
    busy.expect("RCPT TO:<one@example.test>", 250);
    busy.expect("DATA", 354);
    let content = message("drain-mid-data", &["first line of the body", "second line"]);
    let wire = dot_stuff(&content);
    let half = wire.len() / 2;
    busy.send(&wire[..half]).unwrap();

    relay.sigterm();
    let reply = idle
        .read_reply()
        .expect("idle client is told the server stops");
    assert!(reply.is(421, "4.3.2"), "idle client at SIGTERM: {reply}");
    idle.expect_eof(Duration::from_secs(10))
        .expect("idle client closed after 421");
    relay.wait_log(&["shutting down"], Duration::from_secs(10));

    // The transaction in flight may finish.
    busy.send(&wire[half..]).unwrap();
    let reply = busy.read_reply().expect("end of data during the drain");
    assert_eq!(reply.code, 250, "mid-DATA client during the drain: {reply}");
    let id = reply.queue_id().expect("queue id");
    // Then it is idle: it is closed (its QUIT may cross the server's 421).
    match busy.cmd("QUIT") {
        Ok(reply) => assert!(reply.code == 221 || reply.is(421, "4.3.2"), "{reply}"),
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
            ),
            "{e}"
        ),
    }

    let status = relay.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "exit after the drain: {status:?}");
    assert!(relay.log_contains("stopped: spool is durable"));
    let listed = spool_ls(&relay.spool_dir);
    assert!(listed.iter().any(|e| e.id == id), "{id} not in {listed:?}");
    assert_stored(&relay.spool_dir, &id, &content);
}

fn second_signal_exits_at_once(engine: Engine) {
    let relay = Relay::start(Settings::new(engine));
    let mut busy = relay.client();
    busy.ehlo();
    busy.expect("MAIL FROM:<busy@example.test>", 250);
    busy.expect("RCPT TO:<one@example.test>", 250);
    busy.expect("DATA", 354);
    busy.send(b"Subject: never finished\r\n\r\nhalf").unwrap();

    relay.sigterm();
    relay.wait_log(&["shutting down"], Duration::from_secs(10));
    let started = Instant::now();
    relay.sigint();
    let status = relay.wait_exit(Duration::from_secs(5));
    assert_eq!(
        status.code(),
        Some(1),
        "second signal during the drain: {status:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!relay.log_contains("panicked"));
    // Nothing was acknowledged, and the spool opens again without help.
    let again = relay.restart(Settings::new(engine));
    assert!(again.spool_ls().is_empty());
    again.stop();
}

// ---------------------------------------------------------------------------------------------
// 9. Engines: as configured, and io_uring denied by seccomp

/// Descriptors of the process that are io_uring instances.
fn uring_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path())
                .map(|t| t.to_string_lossy().contains("io_uring"))
                .unwrap_or(false)
        })
        .count()
}

fn engine_as_configured(engine: Engine) {
    // The harness already checks `engine=…` on the ready line; here the kernel confirms it.
    let relay = Relay::start(Settings::new(engine));
    let rings = uring_fds(relay.pid());
    match engine {
        Engine::Uring => assert!(
            rings >= 2,
            "io = uring with 2 cores but {rings} io_uring fds"
        ),
        Engine::Epoll => assert_eq!(rings, 0, "io = epoll but the process holds io_uring fds"),
    }
    assert!(!relay.log_contains("io_uring unavailable"));
    let mut client = relay.client();
    let keywords = client.ehlo().ehlo_keywords();
    for ext in EXTENSIONS {
        assert!(
            keywords.iter().any(|k| k == ext),
            "EHLO lacks {ext}: {keywords:?}"
        );
    }
    let reply = client
        .transaction(
            "sender@example.test",
            &["one@example.test"],
            &message("engine", &[]),
        )
        .unwrap();
    assert_eq!(reply.code, 250, "{reply}");
    relay.wait_accepted(&reply.queue_id().unwrap());
    client.quit();
    relay.stop();
}

#[cfg(target_arch = "x86_64")]
#[test]
fn io_auto_falls_back_to_epoll_when_io_uring_is_denied() {
    let mut settings = Settings::auto();
    settings.pre_exec = Some(common::deny_io_uring);
    let relay = Relay::start(settings);
    let warning = relay.wait_log(
        &["io_uring unavailable, using epoll:"],
        Duration::from_secs(1),
    );
    assert!(warning.contains("WARN"), "not a warning: {warning}");
    let cause = warning
        .split("io_uring unavailable, using epoll:")
        .nth(1)
        .unwrap_or("")
        .trim();
    assert!(cause.len() > 10, "the warning must name a cause: {warning}");
    assert!(
        cause.contains("EPERM") || cause.contains("denied") || cause.contains("seccomp"),
        "cause should say the call was denied: {warning}"
    );
    assert!(
        relay.ready_line.contains("engine=epoll"),
        "{}",
        relay.ready_line
    );
    assert_eq!(uring_fds(relay.pid()), 0);

    let mut client = relay.client();
    client.ehlo();
    let content = message("seccomp-fallback", &[]);
    let reply = client
        .transaction("sender@example.test", &["one@example.test"], &content)
        .unwrap();
    assert_eq!(reply.code, 250, "{reply}");
    let id = reply.queue_id().unwrap();
    relay.wait_accepted(&id);
    client.quit();
    assert_stored(&relay.spool_dir, &id, &content);
    relay.stop();
}

#[cfg(target_arch = "x86_64")]
#[test]
fn io_uring_required_but_denied_fails_clearly() {
    let mut settings = Settings::new(Engine::Uring);
    settings.pre_exec = Some(common::deny_io_uring);
    let failure = match Relay::try_start_in(new_workdir(), settings) {
        Ok(relay) => panic!(
            "io = uring started although io_uring_setup is denied: {}",
            relay.ready_line
        ),
        Err(failure) => failure,
    };
    let status = failure.status.expect("exit status");
    assert!(!status.success(), "{failure:?}");
    assert_ne!(status.code(), None, "killed by a signal: {failure:?}");
    assert!(
        !failure.lines.iter().any(|l| l.contains("panicked")),
        "{failure:?}"
    );
    let last = failure
        .lines
        .iter()
        .rev()
        .find(|l| !l.trim().is_empty())
        .expect("some stderr");
    assert!(last.starts_with("relay: "), "last stderr line: {last:?}");
    assert!(
        last.contains("io_uring"),
        "last stderr line must name io_uring: {last:?}"
    );
    assert!(!failure.lines.iter().any(|l| l.contains("relay ready")));
}

// ---------------------------------------------------------------------------------------------
// 10. Disk write failure (RLIMIT_FSIZE)

fn disk_write_failure(engine: Engine) {
    let mut settings = Settings::new(engine);
    settings.segment_size = Some("64MiB".into());
    settings.pre_exec = Some(common::limit_file_size_200k);
    let relay = Relay::start(settings);
    let mut client = relay.client();
    client.ehlo();

    let filler: Vec<String> = (0..125)
        .map(|i| format!("{i:04} {}", "z".repeat(75)))
        .collect();
    let filler: Vec<&str> = filler.iter().map(String::as_str).collect();
    let mut stored = Vec::new();
    let mut failed = None;
    for n in 0..100 {
        let content = message(&format!("disk-{n}"), &filler);
        let reply = client
            .transaction("sender@example.test", &["one@example.test"], &content)
            .unwrap_or_else(|e| panic!("message {n}: {e}"));
        match reply.code {
            250 => stored.push((reply.queue_id().expect("queue id"), content)),
            452 => {
                assert!(reply.is(452, "4.3.1"), "message {n}: {reply}");
                failed = Some(n);
                break;
            }
            _ => panic!("message {n}: expected 250 or 452 4.3.1, got {reply}"),
        }
    }
    let failed = failed.expect("100 messages of 10 KB never hit the 200 KiB file size limit");
    assert!(
        !stored.is_empty(),
        "the first message already failed: nothing to keep"
    );
    // The failure is logged (the line precedes the reply, but our reader may lag behind).
    relay.wait_log(&["not stored", "File too large"], Duration::from_secs(10));

    // Still serving, on this connection and on a new one.
    assert_eq!(client.cmd("NOOP").unwrap().code, 250, "NOOP after 452");
    let mut other = relay.client();
    assert_eq!(other.cmd("NOOP").unwrap().code, 250);
    other.quit();
    client.quit();
    for (id, content) in &stored {
        assert_stored(&relay.spool_dir, id, content);
    }
    relay.sigterm();
    let status = relay.wait_exit(Duration::from_secs(30));
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM after a disk error (message {failed} got 452): {status:?}"
    );

    let mut unlimited = Settings::new(engine);
    unlimited.segment_size = Some("64MiB".into());
    let again = relay.restart(unlimited);
    let listed: Vec<String> = again.spool_ls().into_iter().map(|e| e.id).collect();
    for (id, content) in &stored {
        assert!(
            listed.contains(id),
            "acknowledged {id} lost after restart: {listed:?}"
        );
        assert_stored(&again.spool_dir, id, content);
    }
    // And the spool takes new messages again.
    let mut client = again.client();
    client.ehlo();
    let reply = client
        .transaction(
            "sender@example.test",
            &["one@example.test"],
            &message("after-disk-error", &[]),
        )
        .unwrap();
    assert_eq!(reply.code, 250, "{reply}");
    client.quit();
    again.stop();
}

// ---------------------------------------------------------------------------------------------
// 11. relay check

fn relay_check(engine: Engine) {
    let dir = new_workdir();
    let settings = Settings::new(engine);
    let text = settings.render(&dir.path().join("spool"));
    let check = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        relay_cmd([
            OsStr::new("check"),
            OsStr::new("--config"),
            path.as_os_str(),
        ])
    };

    let out = check("valid.toml", &text);
    assert!(out.status.success(), "valid config: {}", describe(&out));
    let shown = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "hostname = \"relay.test\"".to_string(),
        format!("io = \"{}\"", engine.io()),
        "connections_per_ip_max = 50".to_string(),
        "recipients_max = 100".to_string(),
        // A default the file does not set is shown too (effective config).
        "command_line_max = 512".to_string(),
    ] {
        assert!(
            shown.contains(&needle),
            "effective config lacks {needle}:\n{shown}"
        );
    }

    // Unknown key: named, with its line.
    let mut lines: Vec<&str> = text.lines().collect();
    let smtp = lines.iter().position(|l| *l == "[smtp]").unwrap();
    lines.insert(smtp + 1, "recipient_max = 5");
    let out = check("unknown.toml", &(lines.join("\n") + "\n"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "unknown key accepted: {}",
        describe(&out)
    );
    assert!(stderr.contains("recipient_max"), "{stderr}");
    assert!(stderr.contains(&format!("line {}", smtp + 2)), "{stderr}");
    assert!(stderr.starts_with("relay: "), "{stderr}");

    // Bad value type: named, with its line.
    let bad = text.replace("recipients_max = 100", "recipients_max = \"many\"");
    let line = bad
        .lines()
        .position(|l| l.starts_with("recipients_max"))
        .unwrap()
        + 1;
    let out = check("badtype.toml", &bad);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        stderr.contains("recipients_max") && stderr.contains(&format!("line {line}")),
        "{stderr}"
    );

    // A value out of range: the key is named.
    let bad = text.replace("recipients_max = 100", "recipients_max = 0");
    let out = check("range.toml", &bad);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(stderr.contains("smtp.recipients_max"), "{stderr}");
}

// ---------------------------------------------------------------------------------------------
// Harness self-checks that need no relay.

#[test]
fn received_header_split() {
    let stored = b"Received: from a (b [127.0.0.1])\r\n\tby relay.test with ESMTP id 1;\r\n Mon, 1 Jan 2024\r\nSubject: x\r\n\r\nbody\r\n";
    let (received, rest) = split_received(stored);
    assert!(received.ends_with(b"2024\r\n"));
    assert_eq!(rest, b"Subject: x\r\n\r\nbody\r\n");
}

#[test]
fn dot_stuffing_helper() {
    assert_eq!(dot_stuff(b".a\r\nb\r\n.\r\n"), b"..a\r\nb\r\n..\r\n.\r\n");
}

/// One process owns a spool: a second relay on the same spool directory, or an offline
/// compaction next to a running relay, is refused with one clear line before it touches a
/// file; once the owner has exited, both work.
#[test]
fn spool_is_locked_by_its_server() {
    let relay = Relay::start(Settings::new(Engine::Epoll));
    let second = relay_cmd([
        OsStr::new("serve"),
        OsStr::new("--config"),
        relay.config_path.as_os_str(),
    ]);
    assert!(!second.status.success(), "{}", describe(&second));
    let stderr = String::from_utf8_lossy(&second.stderr);
    let last = stderr.lines().last().unwrap_or("");
    assert!(
        last.starts_with("relay: ") && last.contains("lock") && !stderr.contains("panicked"),
        "{}",
        describe(&second)
    );
    let compact = relay_cmd([
        OsStr::new("spool"),
        OsStr::new("compact"),
        OsStr::new("--dir"),
        relay.spool_dir.as_os_str(),
    ]);
    assert!(!compact.status.success(), "{}", describe(&compact));
    assert!(
        String::from_utf8_lossy(&compact.stderr).contains("lock"),
        "{}",
        describe(&compact)
    );
    // Reading needs no lock.
    assert!(relay.spool_ls().is_empty());

    let spool_dir = relay.spool_dir.clone();
    relay.sigterm();
    assert!(relay.wait_exit(Duration::from_secs(30)).success());
    let compact = relay_cmd([
        OsStr::new("spool"),
        OsStr::new("compact"),
        OsStr::new("--dir"),
        spool_dir.as_os_str(),
    ]);
    assert!(compact.status.success(), "{}", describe(&compact));
}
