//! Destination throttles shared by two relay nodes through one real redis-server: both
//! relay to one scripted sink, and `delivery.destination_messages_per_minute` and
//! `destination_connections_max` hold for the two together (each node alone would allow
//! twice as much), nothing lost. Arrival times are the sink's file times (written at the end
//! of each DATA).

#[allow(unused_macros)] // the engine_tests! macro is for the server tests
mod common;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use common::services::Redis;
use common::sinks::Sink;
use common::{Relay, Settings};

const NODES: [&str; 2] = ["a", "b"];
const WAIT: Duration = Duration::from_secs(20);

/// Node `node` of two sharing `redis`, relaying everything to `sink`.
fn node(node: &str, redis: &Redis, sink: SocketAddr, delivery: &str) -> Relay {
    node_with(node, redis, sink, delivery, "")
}

/// [`node`] with `redis_extra` in `[cluster.redis]`.
fn node_with(
    node: &str,
    redis: &Redis,
    sink: SocketAddr,
    delivery: &str,
    redis_extra: &str,
) -> Relay {
    let mut toml = format!("[delivery]\n{delivery}\n[cluster]\nnode = {node:?}\nlease = \"3s\"\n");
    for (i, name) in NODES.iter().enumerate() {
        toml.push_str(&format!(
            "[[cluster.nodes]]\nname = {name:?}\ncluster = \"127.0.0.1:{}\"\n",
            40_100 + i
        ));
    }
    toml.push_str(&format!(
        "[cluster.redis]\nurl = {:?}\ntimeout = \"300ms\"\n{redis_extra}\n",
        redis.url()
    ));
    let mut settings = Settings::auto();
    settings.routes = vec![("*".into(), sink.to_string())];
    settings.extra_toml = toml;
    let relay = Relay::start(settings);
    relay.wait_log(&["Redis connected"], WAIT);
    relay
}

fn send(relay: &Relay, subject: &str) {
    let mut client = relay.client();
    client.ehlo();
    let content = format!(
        "From: alice@example.test\r\nTo: bob@remote.test\r\nSubject: {subject}\r\nMessage-ID: <{subject}@example.test>\r\n\r\nhello\r\n"
    );
    let reply = client
        .transaction(
            "alice@example.test",
            &["bob@remote.test"],
            content.as_bytes(),
        )
        .expect("transaction");
    assert_eq!(reply.code, 250, "{reply}");
    client.quit();
}

/// The sink's message files' times, sorted, once `n` arrived (bounded wait).
fn arrivals(sink: &Sink, n: usize, timeout: Duration) -> Vec<SystemTime> {
    let got = sink.wait_messages(n, timeout);
    assert_eq!(got.len(), n, "no more than sent");
    let mut times: Vec<SystemTime> = std::fs::read_dir(&sink.dir)
        .expect("sink dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_none())
        .map(|e| e.metadata().expect("metadata").modified().expect("mtime"))
        .collect();
    times.sort();
    times
}

fn since(first: SystemTime, t: SystemTime) -> Duration {
    t.duration_since(first).unwrap_or_default()
}

fn metric(relay: &Relay, name: &str) -> f64 {
    let (status, body) = relay.admin_get("/metrics");
    assert_eq!(status, 200);
    body.lines()
        .find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{body}"))
}

#[test]
fn messages_per_minute_is_one_budget_for_both_nodes() {
    let redis = Redis::start();
    let sink = Sink::scripted(0, &[]);
    // 12 a minute in bursts of one: one message every 5 s for the cluster. Each node's own
    // table alone would send 3 + 3 within the first 10 s.
    let delivery = "destination_messages_per_minute = 12";
    let nodes: Vec<Relay> = NODES
        .iter()
        .map(|n| node(n, &redis, sink.addr, delivery))
        .collect();
    for i in 0..3 {
        for (n, relay) in nodes.iter().enumerate() {
            send(relay, &format!("rate-{n}-{i}"));
        }
    }
    let times = arrivals(&sink, 6, Duration::from_secs(50));
    let first = times[0];
    // At most one per 5 s across the nodes (Redis's clock decides; delivery adds a little).
    for (i, t) in times.iter().enumerate() {
        let at = since(first, *t);
        let earliest =
            Duration::from_secs(5 * i as u64).saturating_sub(Duration::from_millis(1500));
        assert!(at >= earliest, "message {i} after {at:?}: {times:?}");
    }
    let in_window = times
        .iter()
        .filter(|t| since(first, **t) < Duration::from_secs(12))
        .count();
    assert!(in_window <= 3, "{in_window} within 12 s: {times:?}");
    // The refusals were deferrals, not failures: nothing bounced or waits.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sink.messages().len(), 6, "none twice");
    for relay in &nodes {
        assert!(!relay.log_contains("bounce"));
        assert_eq!(metric(relay, "relay_cluster_redis_failures_total"), 0.0);
    }
    let keys = redis.cli(&["KEYS", "relay:dest:rate:*"]);
    assert!(keys.contains("relay:dest:rate:"), "{keys}");
}

#[test]
fn connections_per_destination_span_the_nodes() {
    let redis = Redis::start();
    // Each message takes 1.5 s at the end of data: with one connection across the cluster
    // they arrive one after another; per node, two would arrive together.
    let sink = Sink::scripted(0, &["--eom-delay", "1.5"]);
    let delivery = "destination_connections_max = 1\ndestination_transactions_max = 1";
    let nodes: Vec<Relay> = NODES
        .iter()
        .map(|n| node(n, &redis, sink.addr, delivery))
        .collect();
    for i in 0..2 {
        for (n, relay) in nodes.iter().enumerate() {
            send(relay, &format!("conn-{n}-{i}"));
        }
    }
    let times = arrivals(&sink, 4, Duration::from_secs(40));
    for pair in times.windows(2) {
        let gap = since(pair[0], pair[1]);
        assert!(
            gap >= Duration::from_millis(1200),
            "two connections at once: {times:?}"
        );
    }
    // Every slot was given back (the release is sent without waiting: bounded poll).
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let held = redis.cli(&["KEYS", "relay:dest:conn:*"]);
        let all_zero = held.lines().filter(|l| !l.trim().is_empty()).all(|key| {
            let fields = redis.cli(&["HGETALL", key.trim()]);
            fields.trim().is_empty()
        });
        if all_zero {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "slots still held: {held}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn redis_down_follows_failure_destinations_and_counts_the_failures() {
    let mut redis = Redis::start();
    let open_sink = Sink::scripted(0, &[]);
    let closed_sink = Sink::scripted(0, &[]);
    let delivery = "destination_messages_per_minute = 600";
    let open = node_with("a", &redis, open_sink.addr, delivery, "");
    let closed = node_with(
        "b",
        &redis,
        closed_sink.addr,
        delivery,
        "failure_destinations = \"closed\"",
    );
    redis.stop();
    send(&open, "down-open");
    send(&closed, "down-closed");
    // Open (the default): delivered on the node's own limits. Closed for destinations only:
    // node b still takes mail (its SMTP limits stay open) but does not send it.
    open_sink.wait_messages(1, WAIT);
    assert!(metric(&open, "relay_cluster_redis_failures_total") >= 1.0);
    // Closed: the entry waits (no event marks "not sent": give it a few decisions' time).
    std::thread::sleep(Duration::from_secs(3));
    assert!(closed_sink.messages().is_empty(), "sent with Redis down");
    assert!(metric(&closed, "relay_cluster_redis_failures_total") >= 1.0);
    assert!(!closed.log_contains("bounce"));
    // Redis back: it goes (within a few 5 s waits and a reconnect).
    redis.resume();
    closed_sink.wait_messages(1, Duration::from_secs(30));
    assert_eq!(open_sink.messages().len(), 1);
}

#[test]
fn a_killed_nodes_destination_slot_comes_back_after_its_lease() {
    let redis = Redis::start();
    // The first message hangs at the end of data long enough to kill its node meanwhile.
    let sink = Sink::scripted(0, &["--eom-delay", "8"]);
    let delivery = "destination_connections_max = 1\ndestination_transactions_max = 1";
    let a = node("a", &redis, sink.addr, delivery);
    let b = node("b", &redis, sink.addr, delivery);
    send(&a, "held-by-a");
    // a holds the cluster's one slot once its connection is up (bounded poll on Redis).
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let keys = redis.cli(&["KEYS", "relay:dest:conn:*"]);
        if let Some(key) = keys.lines().map(str::trim).find(|k| !k.is_empty()) {
            if !redis.cli(&["HGETALL", key]).trim().is_empty() {
                break;
            }
        }
        assert!(std::time::Instant::now() < deadline, "a never took a slot");
        std::thread::sleep(Duration::from_millis(50));
    }
    send(&b, "waits-for-the-slot");
    a.kill9();
    let killed = std::time::Instant::now();
    // a's lease is 3 s: b's message goes once it expires, long before the slot's day. (a's
    // own message may reach the sink too: its data was complete when it was killed.)
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !sink
        .messages()
        .iter()
        .any(|m| String::from_utf8_lossy(m).contains("waits-for-the-slot"))
    {
        assert!(std::time::Instant::now() < deadline, "b never got the slot");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        killed.elapsed() < Duration::from_secs(20),
        "after {:?}",
        killed.elapsed()
    );
}
