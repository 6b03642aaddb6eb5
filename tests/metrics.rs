//! Integration tests of the metrics endpoint and `relay stat`: the real
//! `relay serve` on port 0, its admin listener found from its `listening protocol="admin"` line,
//! `/metrics` parsed by a Prometheus text parser no one here wrote (`prometheus-parse`), mail
//! sent by an independent client (lettre) and the raw test clients, and every counter checked
//! by the exact amount one message or one POP3 session must move it.
//!
//! The endpoint tests run once per I/O engine (`_uring`, `_epoll`).

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use prometheus_parse::{LineInfo, Scrape, Value};

use common::smtp::message;
use common::{describe, relay_cmd, Engine, Relay, Settings};

engine_tests! {
    message_moves_the_smtp_and_spool_counters: message_moves_the_smtp_and_spool_counters_uring, message_moves_the_smtp_and_spool_counters_epoll;
    pop3_session_moves_the_pop3_counters: pop3_session_moves_the_pop3_counters_uring, pop3_session_moves_the_pop3_counters_epoll;
    connections_are_spread_over_the_shards: connections_are_spread_over_the_shards_uring, connections_are_spread_over_the_shards_epoll;
}

/// Families every scrape must carry (names as exposed: counters end in `_total`). The queue
/// per destination (`relay_queue_depth`, `relay_queue_oldest_age_seconds`) has series only
/// while a destination has a queue.
const FAMILIES: &[&str] = &[
    "relay_connections_open",
    "relay_connections_total",
    "relay_connections_refused_total",
    "relay_bytes_received_total",
    "relay_bytes_sent_total",
    "relay_smtp_transactions_total",
    "relay_smtp_message_bytes_total",
    "relay_pop3_sessions_total",
    "relay_pop3_retrievals_total",
    "relay_spool_records_total",
    "relay_spool_bytes_total",
    "relay_spool_commits_total",
    "relay_spool_failed_records_total",
    "relay_spool_segments",
    "relay_spool_fsync_seconds",
    "relay_spool_commit_records",
    "relay_deliveries_total",
    "relay_queue_entries",
];

/// One scrape of `/metrics`, checked line by line and parsed.
struct Metrics {
    text: String,
    scrape: Scrape,
}

impl Metrics {
    fn scrape(relay: &Relay) -> Metrics {
        let (status, text) = relay.admin_get("/metrics");
        assert_eq!(status, 200, "{text}");
        // Every line is HELP, TYPE or a sample with a number: the parser skips what it does
        // not understand, so make sure nothing was skipped.
        for line in text.lines() {
            match LineInfo::parse(line) {
                LineInfo::Doc { .. } | LineInfo::Type { .. } | LineInfo::Empty => {}
                LineInfo::Sample { value, .. } => assert!(
                    value.parse::<f64>().is_ok(),
                    "sample value is not a number: {line:?}"
                ),
                LineInfo::Ignored => panic!("not Prometheus text: {line:?}\n{text}"),
            }
        }
        let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parses");
        Metrics { text, scrape }
    }

    /// The sum over every series of `metric` whose labels include `labels` (a histogram
    /// counts its observations).
    fn sum(&self, metric: &str, labels: &[(&str, &str)]) -> f64 {
        self.scrape
            .samples
            .iter()
            .filter(|s| s.metric == metric)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
                Value::Histogram(buckets) => buckets
                    .iter()
                    .find(|b| b.less_than.is_infinite())
                    .map_or(0.0, |b| b.count),
                Value::Summary(_) => panic!("no summaries here"),
            })
            .sum()
    }

    /// How many series of `metric` there are.
    fn series(&self, metric: &str) -> usize {
        self.scrape
            .samples
            .iter()
            .filter(|s| s.metric == metric)
            .count()
    }

    fn value_of(&self, metric: &str) -> &Value {
        &self
            .scrape
            .samples
            .iter()
            .find(|s| s.metric == metric)
            .unwrap_or_else(|| panic!("no {metric}"))
            .value
    }
}

fn size_of(accepted_line: &str) -> f64 {
    common::field_value(accepted_line, "size")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no size= in {accepted_line}"))
}

/// Waits (bounded, by scraping: no event says a connection task has ended) until no
/// connection of `protocol` is open.
fn wait_connections_closed(relay: &Relay, protocol: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let open = Metrics::scrape(relay).sum("relay_connections_open", &[("protocol", protocol)]);
        if open == 0.0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{open} {protocol} connection(s) still open"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn message_moves_the_smtp_and_spool_counters(engine: Engine) {
    use lettre::message::header::ContentType;
    use lettre::{Message, SmtpTransport, Transport};

    let mut settings = Settings::new(engine);
    settings.blocked_extensions = vec!["exe".into()];
    let relay = Relay::start(settings);
    let before = Metrics::scrape(&relay);
    for family in FAMILIES {
        assert!(
            before.scrape.docs.contains_key(*family),
            "no HELP for {family}:\n{}",
            before.text
        );
    }
    // Every core has its series from the start (an idle core shows zeros, not a gap).
    assert_eq!(
        before.series("relay_connections_total"),
        2 * 3,
        "2 cores × smtp, pop3, imap"
    );
    assert_eq!(before.series("relay_spool_records_total"), 2);
    assert_eq!(before.series("relay_spool_fsync_seconds"), 2);
    assert_eq!(before.series("relay_deliveries_total"), 2 * 4);
    assert_eq!(
        before.series("relay_smtp_transactions_total"),
        2,
        "queued/250 per core"
    );
    assert!(matches!(
        before.value_of("relay_spool_records_total"),
        Value::Counter(_)
    ));
    assert!(matches!(
        before.value_of("relay_connections_open"),
        Value::Gauge(_)
    ));
    assert!(matches!(
        before.value_of("relay_spool_fsync_seconds"),
        Value::Histogram(_)
    ));

    // One message through an independent client.
    let email = Message::builder()
        .from("Sender <sender@example.test>".parse().expect("from"))
        .to("one@example.test".parse().expect("to"))
        .subject("metrics")
        .header(ContentType::TEXT_PLAIN)
        .body(String::from("marker metrics\r\n"))
        .expect("build message");
    let transport = SmtpTransport::builder_dangerous("127.0.0.1")
        .port(relay.addr.port())
        .timeout(Some(Duration::from_secs(20)))
        .build();
    let response = transport.send(&email).expect("lettre send");
    let first = response.first_line().unwrap_or_default().to_string();
    let id = first.rsplit(' ').next().unwrap_or_default().to_string();
    let accepted = relay.wait_accepted(&id);
    let size = size_of(&accepted);

    let after = Metrics::scrape(&relay);
    let delta = |metric: &str, labels: &[(&str, &str)]| {
        after.sum(metric, labels) - before.sum(metric, labels)
    };
    let queued = [("result", "queued"), ("code", "250")];
    assert_eq!(
        delta("relay_smtp_transactions_total", &queued),
        1.0,
        "{}",
        after.text
    );
    assert_eq!(delta("relay_smtp_transactions_total", &[]), 1.0);
    assert_eq!(delta("relay_smtp_message_bytes_total", &[]), size);
    assert_eq!(delta("relay_spool_records_total", &[]), 1.0);
    assert!(
        delta("relay_spool_bytes_total", &[]) > size,
        "a frame is header + meta + body"
    );
    assert_eq!(delta("relay_spool_commits_total", &[]), 1.0);
    assert_eq!(
        delta("relay_spool_fsync_seconds", &[]),
        1.0,
        "{}",
        after.text
    );
    assert_eq!(delta("relay_spool_commit_records", &[]), 1.0);
    assert_eq!(delta("relay_spool_failed_records_total", &[]), 0.0);
    assert!(after.sum("relay_spool_segments", &[]) >= 1.0);
    assert_eq!(
        delta("relay_connections_total", &[("protocol", "smtp")]),
        1.0
    );
    assert_eq!(
        delta("relay_connections_total", &[("protocol", "pop3")]),
        0.0
    );
    let received = delta("relay_bytes_received_total", &[("protocol", "smtp")]);
    assert!(
        received > email.formatted().len() as f64,
        "smtp bytes received {received}: commands and the message"
    );
    assert!(delta("relay_bytes_sent_total", &[("protocol", "smtp")]) > 0.0);
    // The message was stored on the core that took the connection, and counted there.
    let core_of = |metric: &str, labels: &[(&str, &str)]| {
        (0..2)
            .find(|core| {
                let core = core.to_string();
                let mut labels = labels.to_vec();
                labels.push(("core", &core));
                after.sum(metric, &labels) - before.sum(metric, &labels) == 1.0
            })
            .unwrap_or_else(|| panic!("no core counted {metric}"))
    };
    assert_eq!(
        core_of("relay_smtp_transactions_total", &queued),
        core_of("relay_spool_records_total", &[])
    );

    // A message the content policy refuses: counted as rejected with its code, not stored.
    let bad = "From: <sender@example.test>\r\nTo: <one@example.test>\r\nSubject: exe\r\n\
               MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
               --b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n\
               --b\r\nContent-Type: application/octet-stream\r\n\
               Content-Disposition: attachment; filename=\"tool.exe\"\r\n\r\nMZ\r\n--b--\r\n";
    let mut client = relay.client();
    client.ehlo();
    let reply = client
        .transaction("sender@example.test", &["one@example.test"], bad.as_bytes())
        .expect("transaction");
    assert_eq!(reply.code, 554, "{reply}");
    let third = Metrics::scrape(&relay);
    let delta = |metric: &str, labels: &[(&str, &str)]| {
        third.sum(metric, labels) - after.sum(metric, labels)
    };
    let rejected = [("result", "rejected"), ("code", "554")];
    assert_eq!(
        delta("relay_smtp_transactions_total", &rejected),
        1.0,
        "{}",
        third.text
    );
    assert_eq!(delta("relay_smtp_transactions_total", &queued), 0.0);
    assert_eq!(delta("relay_spool_records_total", &[]), 0.0);
    assert_eq!(delta("relay_smtp_message_bytes_total", &[]), 0.0);
    assert_eq!(
        third.sum("relay_connections_open", &[("protocol", "smtp")]),
        1.0,
        "the raw client is still connected"
    );
    client.quit();
    wait_connections_closed(&relay, "smtp");
    relay.stop();
}

fn pop3_session_moves_the_pop3_counters(engine: Engine) {
    let relay = Relay::start(Settings::new(engine));
    let content = message("pop3-metrics", &["a line", "another line"]);
    relay.deliver(&["two@example.test"], &content);
    let before = Metrics::scrape(&relay);

    let mut pop = relay.pop3_login("two");
    let retrieved = pop.retr(1);
    assert!(!retrieved.is_empty());
    let after_retr = Metrics::scrape(&relay);
    let _ = pop.top(1, 0);
    let after_top = Metrics::scrape(&relay);
    pop.quit().expect("quit");

    let delta = |m: &Metrics, metric: &str, labels: &[(&str, &str)]| {
        m.sum(metric, labels) - before.sum(metric, labels)
    };
    assert_eq!(
        delta(&after_retr, "relay_pop3_sessions_total", &[]),
        1.0,
        "{}",
        after_retr.text
    );
    assert_eq!(delta(&after_retr, "relay_pop3_retrievals_total", &[]), 1.0);
    assert_eq!(
        delta(
            &after_retr,
            "relay_connections_total",
            &[("protocol", "pop3")]
        ),
        1.0
    );
    assert_eq!(
        after_retr.sum("relay_connections_open", &[("protocol", "pop3")]),
        1.0
    );
    let sent = delta(
        &after_retr,
        "relay_bytes_sent_total",
        &[("protocol", "pop3")],
    );
    assert!(
        sent >= retrieved.len() as f64,
        "pop3 bytes sent {sent} < the {} bytes of the message",
        retrieved.len()
    );
    assert!(
        delta(
            &after_retr,
            "relay_bytes_received_total",
            &[("protocol", "pop3")]
        ) > 0.0
    );
    // TOP is not a retrieval; nothing else about SMTP moved.
    assert_eq!(delta(&after_top, "relay_pop3_retrievals_total", &[]), 1.0);
    assert_eq!(delta(&after_top, "relay_smtp_transactions_total", &[]), 0.0);
    wait_connections_closed(&relay, "pop3");
    relay.stop();
}

#[test]
fn relay_stat_summarises_the_running_server() {
    let relay = Relay::start(Settings::new(Engine::Epoll));
    relay.deliver(&["one@example.test"], &message("stat-1", &[]));
    relay.deliver(&["two@example.test"], &message("stat-2", &[]));
    // The config names the spool; the server's admin socket is in it.
    let config = relay.config_path.clone();

    let output = relay_cmd([
        std::ffi::OsStr::new("stat"),
        std::ffi::OsStr::new("--config"),
        config.as_os_str(),
    ]);
    assert!(output.status.success(), "{}", describe(&output));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("2 core(s)"), "{text}");
    assert!(text.contains("replies: 250=2;"), "{text}");
    let records: u64 = text
        .lines()
        .filter(|l| l.starts_with("spool shard "))
        .map(|l| {
            l.split(": ")
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("records in {l:?}"))
        })
        .sum();
    assert_eq!(records, 2, "{text}");
    assert!(text.contains("queue: empty"), "{text}");

    // --json is the server's /stat, which parses as the summary's type.
    let output = relay_cmd([
        std::ffi::OsStr::new("stat"),
        std::ffi::OsStr::new("--json"),
        std::ffi::OsStr::new("--config"),
        config.as_os_str(),
    ]);
    assert!(output.status.success(), "{}", describe(&output));
    let stat = relay::metrics::Stat::from_json(&output.stdout).expect("json");
    assert_eq!(stat.cores.len(), 2);
    let queued: u64 = stat
        .cores
        .iter()
        .map(|c| c.transactions.get("queued").copied().unwrap_or(0))
        .sum();
    assert_eq!(queued, 2);
    let smtp_connections: u64 = stat.cores.iter().map(|c| c.smtp.total).sum();
    assert_eq!(smtp_connections, 2);
    relay.stop();
}

#[test]
fn relay_stat_without_a_running_server_says_so_in_one_line() {
    let dir = common::new_workdir();
    let spool = dir.path().join("spool");
    let config = dir.path().join("relay.toml");
    std::fs::write(&config, format!("[spool]\ndir = {:?}\n", spool)).expect("write");
    let output = relay_cmd([
        std::ffi::OsStr::new("stat"),
        std::ffi::OsStr::new("--config"),
        config.as_os_str(),
    ]);
    assert!(!output.status.success(), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{}", describe(&output));
    let socket = spool.join("admin.sock");
    assert!(
        stderr.starts_with("relay: ")
            && stderr.contains("no relay is running")
            && stderr.contains(&socket.display().to_string()),
        "{}",
        describe(&output)
    );
    assert!(output.stdout.is_empty());

    // With the admin endpoint off there is nothing to ask.
    std::fs::write(
        &config,
        format!("[spool]\ndir = {:?}\n[admin]\nenabled = false\n", spool),
    )
    .expect("write");
    let output = relay_cmd([
        std::ffi::OsStr::new("stat"),
        std::ffi::OsStr::new("--config"),
        config.as_os_str(),
    ]);
    assert!(!output.status.success(), "{}", describe(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("admin.enabled = false"),
        "{}",
        describe(&output)
    );

    // A non-loopback admin address is refused by the config check, naming key and line.
    std::fs::write(&config, "[admin]\nlisten = \"0.0.0.0:9025\"\n").expect("write");
    let output = relay_cmd([
        std::ffi::OsStr::new("check"),
        std::ffi::OsStr::new("--config"),
        config.as_os_str(),
    ]);
    assert!(!output.status.success(), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("admin.listen") && stderr.contains("line 2") && stderr.contains("loopback"),
        "{}",
        describe(&output)
    );
}

/// Open SMTP connections per core, as `relay_connections_open` says.
fn open_per_core(relay: &Relay) -> (f64, f64) {
    let m = Metrics::scrape(relay);
    let open = |core| {
        m.sum(
            "relay_connections_open",
            &[("core", core), ("protocol", "smtp")],
        )
    };
    (open("0"), open("1"))
}

/// The kernel spreads connections over the shards by a hash of the client's port, which
/// leaves them uneven (20 on two shards split 10/10 about 1 time in 6); each shard hands a
/// new connection to a less busy one, so every set of 20 is split 10/10, and each connection
/// is served where it went (it gets its greeting and a session). Three rounds: the kernel's
/// split alone passes all three about 1 time in 200.
fn connections_are_spread_over_the_shards(engine: Engine) {
    use std::io::{BufRead, BufReader, Write};

    let mut settings = Settings::new(engine);
    settings.connections_per_ip_max = 100;
    let relay = Relay::start(settings);
    for round in 0..3 {
        let mut clients = Vec::new();
        for _ in 0..20 {
            let stream = std::net::TcpStream::connect(relay.addr).expect("connect");
            stream
                .set_read_timeout(Some(Duration::from_secs(20)))
                .expect("timeout");
            let mut reader = BufReader::new(stream);
            let mut greeting = String::new();
            reader.read_line(&mut greeting).expect("greeting");
            assert!(greeting.starts_with("220 "), "{greeting:?}");
            clients.push(reader);
        }
        // Every connection is served wherever it went.
        for reader in &mut clients {
            reader.get_mut().write_all(b"NOOP\r\n").expect("write");
            let mut reply = String::new();
            reader.read_line(&mut reply).expect("reply");
            assert!(reply.starts_with("250 "), "{reply:?}");
        }
        assert_eq!(open_per_core(&relay), (10.0, 10.0), "round {round}");
        drop(clients);
        wait_connections_closed(&relay, "smtp");
    }
    // Spreading can be turned off: then the kernel's hash alone decides (nothing to assert
    // about its split but the total).
    let mut settings = Settings::new(engine);
    settings.server_toml = "spread_connections = false\n".into();
    let relay = Relay::start(settings);
    let clients: Vec<_> = (0..20)
        .map(|_| {
            let stream = std::net::TcpStream::connect(relay.addr).expect("connect");
            let mut reader = BufReader::new(stream);
            let mut greeting = String::new();
            reader.read_line(&mut greeting).expect("greeting");
            reader
        })
        .collect();
    let (a, b) = open_per_core(&relay);
    assert_eq!(a + b, 20.0);
    drop(clients);
}
