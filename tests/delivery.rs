//! Outbound delivery end to end: the relay takes mail over SMTP, stores it, and
//! delivers it to a next hop on loopback, with retries, bounces, notices and crash recovery.
//! Next hops: Postfix's `smtp-sink` (not written here) and a scripted Python sink for faults.

#[macro_use]
mod common;

use std::time::Duration;

use common::sinks::{free_port, split_scripted, Sink};
use common::{find, Engine, Relay, Settings};

/// A short retry schedule, so a retry happens within a test's patience.
const FAST_RETRY: &str = "[delivery]\nretry_intervals = [\"300ms\"]\nretry_every = \"500ms\"\nretry_jitter_percent = 0\n";

fn routed_to(engine: Engine, sink: std::net::SocketAddr) -> Settings {
    let mut settings = Settings::new(engine);
    settings.routes = vec![("*".into(), sink.to_string())];
    settings.extra_toml = FAST_RETRY.into();
    settings
}

fn message(subject: &str) -> Vec<u8> {
    format!(
        "From: alice@example.test\r\nTo: bob@remote.test\r\nSubject: {subject}\r\nMessage-ID: <{subject}@example.test>\r\n\r\nline one\r\n.leading dot\r\nline three\r\n"
    )
    .into_bytes()
}

/// Sends one message from `from`; returns the queue id.
fn send(relay: &Relay, from: &str, rcpts: &[&str], content: &[u8]) -> String {
    let mut client = relay.client();
    client.ehlo();
    let reply = client
        .transaction(from, rcpts, content)
        .unwrap_or_else(|e| panic!("send: {e}"));
    assert_eq!(reply.code, 250, "{reply}");
    let id = reply.queue_id().expect("queue id");
    client.quit();
    id
}

fn end_to_end_smtp_sink_gets_the_exact_bytes(engine: Engine) {
    let sink = Sink::postfix_smtp_sink();
    let relay = Relay::start(routed_to(engine, sink.addr));
    let content = message("e2e");
    let id = send(
        &relay,
        "alice@example.test",
        &["bob@remote.test", "carol@other.test"],
        &content,
    );
    let got = sink.wait_messages(1, Duration::from_secs(20));
    let dump = &got[0];
    // smtp-sink writes the envelope as X- lines and its own Received first; then comes
    // exactly what the relay sent: our Received header and the submitted message.
    assert!(
        find(dump, b"X-Mail-Args: <alice@example.test>").is_some(),
        "{}",
        String::from_utf8_lossy(dump)
    );
    assert!(find(dump, b"X-Rcpt-Args: <bob@remote.test>").is_some());
    assert!(find(dump, b"X-Rcpt-Args: <carol@other.test>").is_some());
    // smtp-sink stores lines with LF ends.
    let text = String::from_utf8_lossy(dump).into_owned();
    let ours = text
        .find("\nReceived: from client.test")
        .unwrap_or_else(|| panic!("no Received header of ours: {text}"))
        + 1;
    let mut header_end = ours;
    loop {
        let line_end = header_end + text[header_end..].find('\n').expect("line end") + 1;
        header_end = line_end;
        if !text[line_end..].starts_with([' ', '\t']) {
            break;
        }
    }
    assert!(
        text[ours..header_end].contains(&format!("id {id}")),
        "our Received header names the queue id: {}",
        &text[ours..header_end]
    );
    let submitted = String::from_utf8_lossy(&content).replace("\r\n", "\n");
    // smtp-sink ends each dump with one empty line of its own.
    let received = text[header_end..]
        .strip_suffix('\n')
        .expect("smtp-sink's closing newline");
    assert_eq!(received, submitted, "the message arrived byte for byte");
    // One transaction for both recipients (same next hop), and the queue is empty after.
    relay.wait_log(
        &["relay::delivery", "to=bob@remote.test", "status=\"sent\""],
        Duration::from_secs(10),
    );
    relay.wait_log(
        &["relay::delivery", "to=carol@other.test", "status=\"sent\""],
        Duration::from_secs(10),
    );
    assert_eq!(got.len(), 1);
}

fn a_temporary_failure_is_retried_and_then_delivered(engine: Engine) {
    let sink = Sink::scripted(0, &["--mail-fail", "1:451"]);
    let relay = Relay::start(routed_to(engine, sink.addr));
    let id = send(
        &relay,
        "alice@example.test",
        &["bob@remote.test"],
        &message("retry"),
    );
    relay.wait_log(
        &[
            "relay::delivery",
            &id,
            "attempt=1",
            "status=\"deferred\"",
            "451 4.7.1",
        ],
        Duration::from_secs(10),
    );
    relay.wait_log(
        &["relay::delivery", &id, "attempt=2", "status=\"sent\""],
        Duration::from_secs(10),
    );
    let got = sink.wait_messages(1, Duration::from_secs(5));
    let (envelope, data) = split_scripted(&got[0]);
    assert_eq!(
        envelope,
        ["MAIL:alice@example.test", "RCPT:bob@remote.test"]
    );
    assert!(data.ends_with(&message("retry")));
}

fn one_of_two_refused_gets_a_notice_in_the_senders_mailbox(engine: Engine) {
    let sink = Sink::scripted(0, &["--rcpt", "550=nobody@remote.test"]);
    let relay = Relay::start(routed_to(engine, sink.addr));
    let id = send(
        &relay,
        "alice@example.test",
        &["bob@remote.test", "nobody@remote.test"],
        &message("bounce"),
    );
    relay.wait_log(
        &[
            "relay::delivery",
            &id,
            "to=bob@remote.test",
            "status=\"sent\"",
        ],
        Duration::from_secs(10),
    );
    relay.wait_log(
        &[
            "relay::delivery",
            &id,
            "to=nobody@remote.test",
            "status=\"bounced\"",
        ],
        Duration::from_secs(10),
    );
    relay.wait_log(
        &["delivery status notification queued", &id],
        Duration::from_secs(10),
    );
    let got = sink.wait_messages(1, Duration::from_secs(5));
    let (envelope, _) = split_scripted(&got[0]);
    assert_eq!(
        envelope,
        ["MAIL:alice@example.test", "RCPT:bob@remote.test"]
    );
    // The notice went to alice's local mailbox: read it over POP3.
    let mut pop = relay.pop3_login("alice");
    let (count, _) = pop.stat();
    assert_eq!(count, 1, "one notice");
    let notice = String::from_utf8_lossy(&pop.retr(1)).into_owned();
    assert!(
        notice.contains("multipart/report; report-type=delivery-status"),
        "{notice}"
    );
    assert!(
        notice.contains("Final-Recipient: rfc822; nobody@remote.test"),
        "{notice}"
    );
    assert!(notice.contains("Action: failed"), "{notice}");
    assert!(notice.contains("Status: 5.1.1"), "{notice}");
    assert!(
        notice.contains("Diagnostic-Code: smtp; 550 5.1.1"),
        "{notice}"
    );
    assert!(
        !notice.contains("Final-Recipient: rfc822; bob@remote.test"),
        "{notice}"
    );
    assert!(
        notice.contains("Subject: bounce"),
        "the original headers are returned: {notice}"
    );
    pop.ok("QUIT");
}

fn a_down_next_hop_defers_and_delivers_once_it_is_up(engine: Engine) {
    let port = free_port();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let relay = Relay::start(routed_to(engine, addr));
    let id = send(
        &relay,
        "alice@example.test",
        &["bob@remote.test"],
        &message("down"),
    );
    relay.wait_log(
        &[
            "relay::delivery",
            &id,
            "status=\"deferred\"",
            "connect to the next hop failed",
        ],
        Duration::from_secs(10),
    );
    let sink = Sink::scripted(port, &[]);
    relay.wait_log(
        &["relay::delivery", &id, "status=\"sent\""],
        Duration::from_secs(15),
    );
    assert_eq!(sink.wait_messages(1, Duration::from_secs(5)).len(), 1);
}

fn the_null_sender_never_gets_a_notice(engine: Engine) {
    let sink = Sink::scripted(0, &["--rcpt", "550=nobody@remote.test"]);
    let relay = Relay::start(routed_to(engine, sink.addr));
    let id = send(&relay, "", &["nobody@remote.test"], &message("null"));
    relay.wait_log(
        &["relay::delivery", &id, "status=\"bounced\""],
        Duration::from_secs(10),
    );
    relay.wait_log(&["double bounce", &id], Duration::from_secs(10));
    assert!(!relay.log_contains("delivery status notification queued"));
}

engine_tests! {
    end_to_end_smtp_sink_gets_the_exact_bytes: smtp_sink_e2e_uring, smtp_sink_e2e_epoll;
    a_temporary_failure_is_retried_and_then_delivered: retry_uring, retry_epoll;
    one_of_two_refused_gets_a_notice_in_the_senders_mailbox: bounce_notice_uring, bounce_notice_epoll;
    a_down_next_hop_defers_and_delivers_once_it_is_up: sink_down_uring, sink_down_epoll;
    the_null_sender_never_gets_a_notice: null_sender_uring, null_sender_epoll;
}

/// kill -9 while next-hop transactions are in flight: after a restart every recipient is
/// delivered at least once, and nothing stays queued.
#[test]
fn kill_9_mid_delivery_loses_no_recipient() {
    let port = free_port();
    // The sink holds every end of data for a while, so the kill lands mid-transaction.
    let mut slow = Sink::scripted(port, &["--eom-delay", "1.5"]);
    let mut settings = routed_to(Engine::Uring, slow.addr);
    settings
        .extra_toml
        .push_str("destination_connections_max = 4\ndestination_transactions_max = 4\n");
    let relay = Relay::start(settings.clone());
    let mut sent = Vec::new();
    for i in 0..12 {
        let rcpt = format!("r{i}@remote.test");
        send(
            &relay,
            "alice@example.test",
            &[&rcpt],
            &message(&format!("crash{i}")),
        );
        sent.push(rcpt);
    }
    std::thread::sleep(Duration::from_millis(700));
    relay.kill9();
    slow.stop();
    // The same port again, now fast.
    let sink = Sink::scripted(port, &[]);
    let restarted = relay.restart(settings);
    restarted.wait_log(
        &["delivery queue rebuilt from the spool"],
        Duration::from_secs(10),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        // What the slow sink took before the kill counts as delivered: the relay may or
        // may not have seen its 250 (then it delivers again: at least once).
        let got: Vec<String> = sink
            .messages()
            .iter()
            .chain(slow.messages().iter())
            .map(|m| split_scripted(m).0.join(" "))
            .collect();
        let missing: Vec<&String> = sent
            .iter()
            .filter(|r| {
                !got.iter()
                    .any(|g| g.split(' ').any(|w| w == format!("RCPT:{r}")))
            })
            .collect();
        if missing.is_empty() {
            break;
        }
        if std::time::Instant::now() > deadline {
            panic!("never delivered after the restart: {missing:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Every pending recipient reached a final result: the spool says so after a stop.
    restarted.stop();
    let out = common::relay_cmd([
        "queue",
        "list",
        "--config",
        restarted.config_path.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", common::describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("queue is empty"),
        "{}",
        common::describe(&out)
    );
}

/// A private Postfix instance (Debian's postfix package) on a loopback port: the next hop in
/// the interop test, relaying on to a scripted sink. Stopped when dropped.
struct Postfix {
    dir: tempfile::TempDir,
    port: u16,
}

impl Postfix {
    fn start(relayhost: std::net::SocketAddr) -> Postfix {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new()
            .prefix("relay-postfix-")
            .tempdir()
            .expect("temp dir");
        // Postfix's daemons run as the postfix user: they must reach the queue.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let conf = dir.path().join("conf");
        let queue = dir.path().join("queue");
        let data = dir.path().join("data");
        for d in [&conf, &queue, &data] {
            std::fs::create_dir(d).unwrap();
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let status = std::process::Command::new("chown")
            .arg("postfix")
            .arg(&data)
            .status()
            .expect("chown");
        assert!(status.success());
        let port = free_port();
        let master = [
            "/usr/share/postfix/master.cf.dist",
            "/etc/postfix/master.cf",
        ]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .expect("postfix's master.cf (Debian package postfix)");
        let master: String = master
            .lines()
            .map(|l| {
                if l.starts_with("smtp ") && l.contains(" inet ") {
                    format!("127.0.0.1:{port} inet n - n - - smtpd")
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(conf.join("master.cf"), master + "\n").unwrap();
        let main = format!(
            "compatibility_level = 3.6\nqueue_directory = {q}\ndata_directory = {d}\n\
             myhostname = postfix.interop.test\nmydomain = interop.test\ninet_interfaces = loopback-only\n\
             inet_protocols = ipv4\nmydestination =\nlocal_recipient_maps =\nalias_maps =\nalias_database =\n\
             mynetworks = 127.0.0.0/8\nsmtpd_relay_restrictions = permit_mynetworks, reject\n\
             relayhost = [127.0.0.1]:{sink}\nsmtp_tls_security_level = none\nsmtpd_tls_security_level = none\n\
             maillog_file = {log}\nmaillog_file_prefixes = /tmp, /var\nbiff = no\n",
            q = queue.display(),
            d = data.display(),
            sink = relayhost.port(),
            log = dir.path().join("maillog").display(),
        );
        std::fs::write(conf.join("main.cf"), main).unwrap();
        let postconf = std::process::Command::new("postconf")
            .arg("-c")
            .arg(&conf)
            .args(["-F", "*/*/chroot = n"])
            .status()
            .expect("postconf");
        assert!(postconf.success());
        let out = common::run_with_timeout(
            std::process::Command::new("postfix")
                .arg("-c")
                .arg(&conf)
                .arg("start"),
            Duration::from_secs(60),
        );
        let log = std::fs::read_to_string(dir.path().join("maillog")).unwrap_or_default();
        assert!(
            out.status.success(),
            "postfix start: {}\n{log}",
            common::describe(&out)
        );
        let pf = Postfix { dir, port };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "postfix never listened"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        pf
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("maillog")).unwrap_or_default()
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = std::process::Command::new("postfix")
            .arg("-c")
            .arg(self.dir.path().join("conf"))
            .arg("stop")
            .output();
    }
}

/// Interop: a real Postfix is the next hop; it accepts from the relay and relays on.
#[test]
fn postfix_as_the_next_hop_accepts_and_relays_on() {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        eprintln!(
            "SKIPPED: a private Postfix instance needs root (tests/run.sh runs as root in CI)"
        );
        return;
    }
    let sink = Sink::scripted(0, &[]);
    let postfix = Postfix::start(sink.addr);
    let relay = Relay::start(routed_to(
        Engine::Uring,
        std::net::SocketAddr::from(([127, 0, 0, 1], postfix.port)),
    ));
    let content = message("interop");
    let id = send(&relay, "alice@example.test", &["bob@remote.test"], &content);
    let line = relay.wait_log(
        &["relay::delivery", &id, "status=\"sent\"", "queued as"],
        Duration::from_secs(30),
    );
    assert!(line.contains("to=bob@remote.test"), "{line}");
    let got = sink.wait_messages(1, Duration::from_secs(60));
    let (envelope, data) = split_scripted(&got[0]);
    assert_eq!(
        envelope,
        ["MAIL:alice@example.test", "RCPT:bob@remote.test"],
        "{}",
        postfix.log()
    );
    let text = String::from_utf8_lossy(&data);
    assert!(
        text.contains("by postfix.interop.test (Postfix) with ESMTP"),
        "{text}"
    );
    assert!(
        text.contains(&format!("by relay.test (relay) with ESMTP id {id}")),
        "{text}"
    );
    // Postfix's cleanup adds the Date header the message lacked; the rest arrives as sent.
    assert!(
        text.contains("Subject: interop\r\nMessage-ID: <interop@example.test>\r\n"),
        "{text}"
    );
    assert!(
        data.ends_with(b"\r\n\r\nline one\r\n.leading dot\r\nline three\r\n"),
        "{text}"
    );
}

/// `relay queue ARGS --config CONFIG`: it finds the server's admin socket in the spool.
fn queue_cmd(relay: &Relay, args: &[&str]) -> std::process::Output {
    let config = relay.config_path.to_str().expect("utf-8 path").to_string();
    let mut all: Vec<&str> = vec!["queue"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--config", &config]);
    common::relay_cmd(all)
}

fn stdout_of(out: &std::process::Output) -> String {
    assert!(out.status.success(), "{}", common::describe(out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `relay queue list|show|flush|delete|bounce` against the running server.
#[test]
fn queue_control_lists_flushes_deletes_and_bounces() {
    let port = free_port();
    let mut settings = Settings::new(Engine::Uring);
    settings.routes = vec![
        ("*".into(), format!("127.0.0.1:{port}")),
        ("dead.test".into(), "127.0.0.1:1".into()),
        ("dead2.test".into(), "127.0.0.1:2".into()),
    ];
    // Long waits: only a flush retries within the test.
    settings.extra_toml = "[delivery]\nretry_intervals = [\"1h\"]\nretry_every = \"2h\"\n".into();
    let relay = Relay::start(settings);
    let later = send(
        &relay,
        "alice@example.test",
        &["bob@remote.test"],
        &message("later"),
    );
    let doomed = send(
        &relay,
        "alice@example.test",
        &["x@dead.test"],
        &message("doomed"),
    );
    // Another dead next hop: a failed one is held (one connection attempt per retry, not
    // one per message), so a second message to it would wait unattempted.
    let dropped = send(
        &relay,
        "alice@example.test",
        &["y@dead2.test"],
        &message("dropped"),
    );
    for id in [&later, &doomed, &dropped] {
        relay.wait_log(
            &["relay::delivery", id, "status=\"deferred\""],
            Duration::from_secs(10),
        );
    }

    let list = stdout_of(&queue_cmd(&relay, &["list"]));
    for needle in [
        later.as_str(),
        doomed.as_str(),
        "bob@remote.test  attempts=1 next=in ",
        "connect to the next hop failed",
        &format!("via=[127.0.0.1:{port}]"),
        "-- 3 messages, 3 recipients",
    ] {
        assert!(list.contains(needle), "`{needle}` missing from:\n{list}");
    }
    let show = stdout_of(&queue_cmd(&relay, &["show", &later]));
    assert!(show.contains("Subject: later"), "{show}");
    assert!(show.contains("Received: from client.test"), "{show}");

    // The next hop comes up; only a flush makes the relay try before the hour is over.
    let sink = Sink::scripted(port, &[]);
    let flushed = stdout_of(&queue_cmd(&relay, &["flush", &later]));
    assert!(flushed.starts_with("1 queued entries"), "{flushed}");
    relay.wait_log(
        &["relay::delivery", &later, "attempt=2", "status=\"sent\""],
        Duration::from_secs(10),
    );
    assert_eq!(sink.wait_messages(1, Duration::from_secs(5)).len(), 1);

    // Delete: gone without a notice. Bounce: gone with one, in alice's mailbox.
    stdout_of(&queue_cmd(&relay, &["delete", &dropped]));
    relay.wait_log(
        &[
            "relay::delivery",
            &dropped,
            "status=\"bounced\"",
            "deleted by the relay's operator",
        ],
        Duration::from_secs(10),
    );
    stdout_of(&queue_cmd(&relay, &["bounce", &doomed]));
    relay.wait_log(
        &["delivery status notification queued", &doomed],
        Duration::from_secs(10),
    );
    let list = stdout_of(&queue_cmd(&relay, &["list"]));
    assert!(list.contains("queue is empty"), "{list}");
    let again = queue_cmd(&relay, &["delete", &dropped]);
    assert!(
        !again.status.success(),
        "deleting twice must say it is not queued"
    );
    let mut pop = relay.pop3_login("alice");
    assert_eq!(
        pop.stat().0,
        1,
        "exactly one notice: the bounce, not the delete"
    );
    let notice = String::from_utf8_lossy(&pop.retr(1)).into_owned();
    assert!(
        notice.contains("Final-Recipient: rfc822; x@dead.test"),
        "{notice}"
    );
    assert!(
        notice.contains("returned to sender by the relay's operator"),
        "{notice}"
    );
    pop.ok("QUIT");
}

/// Without a running server, `relay queue list` reads the spool and mutations refuse.
#[test]
fn queue_list_reads_the_spool_when_the_server_is_stopped() {
    let relay = Relay::start(Settings::new(Engine::Epoll));
    let id = send(
        &relay,
        "alice@example.test",
        &["bob@remote.test"],
        &message("offline"),
    );
    relay.wait_log(
        &["relay::delivery", &id, "status=\"deferred\""],
        Duration::from_secs(10),
    );
    relay.stop();
    let config = relay.config_path.to_str().unwrap();
    let out = common::relay_cmd(["queue", "list", "--config", config]);
    let text = stdout_of(&out);
    assert!(
        text.contains(&id) && text.contains("bob@remote.test  attempts=1"),
        "{text}"
    );
    let flush = common::relay_cmd(["queue", "flush", "--config", config]);
    assert!(!flush.status.success());
    assert!(
        String::from_utf8_lossy(&flush.stderr).contains("the relay is not running"),
        "{}",
        common::describe(&flush)
    );
}

/// A recipient still deferred after `delivery.delay_warning` earns one delay notice; at
/// `delivery.max_age` it expires with a failure notice.
#[test]
fn delay_notice_then_expiry_notice() {
    let mut settings = Settings::new(Engine::Uring);
    // The default route: a closed port, so every attempt is deferred.
    settings.extra_toml = "[delivery]\nretry_intervals = [\"300ms\"]\nretry_every = \"300ms\"\n\
                           retry_jitter_percent = 0\ndelay_warning = \"1s\"\nmax_age = \"3s\"\n"
        .into();
    let relay = Relay::start(settings);
    let id = send(
        &relay,
        "alice@example.test",
        &["bob@remote.test"],
        &message("slow"),
    );
    relay.wait_log(
        &["relay::delivery", &id, "status=\"expired\""],
        Duration::from_secs(15),
    );
    relay.wait_log(
        &["delivery status notification queued", &id, "Failure"],
        Duration::from_secs(10),
    );
    let delays = relay
        .log_lines()
        .iter()
        .filter(|l| {
            l.contains("delivery status notification queued")
                && l.contains(&id)
                && l.contains("Delay")
        })
        .count();
    assert_eq!(delays, 1, "exactly one delay notice");
    let mut pop = relay.pop3_login("alice");
    assert_eq!(pop.stat().0, 2);
    let first = String::from_utf8_lossy(&pop.retr(1)).into_owned();
    let second = String::from_utf8_lossy(&pop.retr(2)).into_owned();
    assert!(first.contains("Action: delayed"), "{first}");
    assert!(first.contains("Will-Retry-Until:"), "{first}");
    assert!(second.contains("Action: failed"), "{second}");
    assert!(second.contains("5.4.7"), "{second}");
    pop.ok("QUIT");
}

/// Past `delivery.queued_messages_max` queued deliveries, MAIL is answered 452 4.3.1; once
/// the queue drains, mail is taken again.
#[test]
fn a_full_queue_answers_452_at_mail_and_recovers() {
    let port = free_port();
    let mut settings = routed_to(
        Engine::Epoll,
        std::net::SocketAddr::from(([127, 0, 0, 1], port)),
    );
    settings.extra_toml.push_str("queued_messages_max = 2\n");
    let relay = Relay::start(settings);
    send(
        &relay,
        "alice@example.test",
        &["a@remote.test"],
        &message("q1"),
    );
    send(
        &relay,
        "alice@example.test",
        &["b@remote.test"],
        &message("q2"),
    );
    let mut client = relay.client();
    client.ehlo();
    let reply = client.cmd("MAIL FROM:<alice@example.test>").unwrap();
    assert!(reply.is(452, "4.3.1"), "{reply}");
    client.quit();
    // The next hop comes up: the queue drains and ingest opens again.
    let sink = Sink::scripted(port, &[]);
    sink.wait_messages(2, Duration::from_secs(15));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut client = relay.client();
        client.ehlo();
        let reply = client.cmd("MAIL FROM:<alice@example.test>").unwrap();
        client.quit();
        if reply.code == 250 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still refused: {reply}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The delivery counters and queue gauges of `/metrics` move with deliveries.
#[test]
fn delivery_metrics_move() {
    let sink = Sink::scripted(0, &["--rcpt", "550=no@remote.test"]);
    let relay = Relay::start(routed_to(Engine::Uring, sink.addr));
    let id = send(
        &relay,
        "alice@example.test",
        &["yes@remote.test", "no@remote.test"],
        &message("m"),
    );
    relay.wait_log(
        &["relay::delivery", &id, "status=\"bounced\""],
        Duration::from_secs(10),
    );
    relay.wait_log(
        &["relay::delivery", &id, "status=\"sent\""],
        Duration::from_secs(10),
    );
    let sum = |text: &str, result: &str| -> f64 {
        text.lines()
            .filter(|l| {
                l.starts_with("relay_deliveries_total{")
                    && l.contains(&format!("result=\"{result}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let (status, text) = relay.admin_get("/metrics");
    assert_eq!(status, 200);
    assert_eq!(sum(&text, "delivered"), 1.0, "{text}");
    assert_eq!(sum(&text, "bounced"), 1.0, "{text}");
    assert_eq!(sum(&text, "deferred"), 0.0, "{text}");
}

/// CPU seconds (user + system) the process has used, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    let after_comm = &stat[stat.rfind(')').expect("comm end") + 2..];
    let fields: Vec<&str> = after_comm.split(' ').collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after `) `.
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// Mail waiting behind a dead next hop's hold costs no CPU: the scheduler starts no worker
/// for a held destination (it once spun, starting and ending one per wake-up).
#[test]
fn a_held_destination_waits_without_spinning() {
    let mut settings = Settings::new(Engine::Uring);
    // The hold is learnt by the core whose attempt failed: with the destination on one core
    // the second message is sure to meet it (spread over cores, each core pays one attempt).
    settings.extra_toml =
        "[delivery]\nretry_intervals = [\"1h\"]\nretry_every = \"2h\"\ndestination_spread = false\n"
            .into();
    let relay = Relay::start(settings);
    let first = send(
        &relay,
        "alice@example.test",
        &["a@remote.test"],
        &message("first"),
    );
    relay.wait_log(
        &["relay::delivery", &first, "status=\"deferred\""],
        Duration::from_secs(10),
    );
    // Arrives while the destination is held: ready, and not attempted before the hold ends.
    let second = send(
        &relay,
        "alice@example.test",
        &["b@remote.test"],
        &message("second"),
    );
    let before = cpu_seconds(relay.pid());
    std::thread::sleep(Duration::from_secs(3));
    let used = cpu_seconds(relay.pid()) - before;
    assert!(used < 0.5, "the idle relay used {used:.2}s of CPU in 3s");
    assert!(
        !relay.log_contains(&format!("queue_id={second}"))
            || !relay
                .log_lines()
                .iter()
                .any(|l| l.contains("relay::delivery") && l.contains(&second))
    );
}
