//! The memory budget for message bodies in flight (`smtp.body_memory_max`), against the real
//! `relay serve` on loopback: many connections stall in the middle of large bodies, and the
//! relay's resident memory (VmRSS from /proc) stays within the budget plus a little, a MAIL
//! whose declared SIZE no longer fits is answered 452 4.3.1, the bodies past the budget are
//! answered 452 4.3.1 at their end of data on connections that stay usable, and once they
//! are done a new message is accepted.
//!
//! Each test runs once per I/O engine (`_uring`, `_epoll`).

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use prometheus_parse::{Scrape, Value};

use common::{Client, Engine, Relay, Settings};

engine_tests! {
    bodies_in_flight_stay_within_the_budget: bodies_in_flight_stay_within_the_budget_uring, bodies_in_flight_stay_within_the_budget_epoll;
}

const MIB: u64 = 1024 * 1024;
/// `smtp.body_memory_max` of the test relay.
const BUDGET: u64 = 16 * MIB;
/// `smtp.message_size_max`: the budget must hold two messages of the largest size (a
/// config check).
const MESSAGE_SIZE_MAX: u64 = 8 * MIB;
/// Connections that stop in the middle of their body, and how much of it each has sent:
/// together five times the budget.
const STALLED: usize = 16;
const PARTIAL: u64 = 5 * MIB;
/// What the relay may hold beyond the budget: read buffers, the admin listener's scrapes,
/// and above all what the allocator keeps of freed buffers (a body grows by copying, and a
/// refused one is freed; mimalloc reuses and purges that memory lazily). Measured with
/// this test: 40–45 MiB in all with the budget (the most on a loaded CI machine, where the
/// allocator purges later), 118 MiB without it.
const SLACK: u64 = 48 * MIB;

fn settings(engine: Engine) -> Settings {
    let mut settings = Settings::new(engine);
    settings.message_size_max = format!("{}MiB", MESSAGE_SIZE_MAX / MIB);
    settings.smtp_toml = format!("body_memory_max = \"{}MiB\"\n", BUDGET / MIB);
    settings
}

/// The relay's resident memory in bytes (VmRSS).
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .expect("VmRSS");
    kib * 1024
}

/// The sum of every series of `metric` whose labels include `labels` (0 when absent).
fn metric(relay: &Relay, name: &str, labels: &[(&str, &str)]) -> f64 {
    let (status, text) = relay.admin_get("/metrics");
    assert_eq!(status, 200, "{text}");
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parses");
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            other => panic!("{name} is not a counter or gauge: {other:?}"),
        })
        .sum()
}

fn smtp_bytes_received(relay: &Relay) -> u64 {
    metric(relay, "relay_bytes_received_total", &[("protocol", "smtp")]) as u64
}

/// Waits (bounded, by scraping: nothing else says the relay has read the bytes a client
/// wrote into its socket) until the relay has read `at_least` SMTP bytes.
fn wait_received(relay: &Relay, at_least: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let received = smtp_bytes_received(relay);
        if received >= at_least {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the relay read {received} of {at_least} SMTP bytes"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `bytes` of body text in 80-octet lines (no line starts with a dot).
fn body_text(bytes: u64) -> Vec<u8> {
    let line = format!("{}\r\n", "x".repeat(78));
    let lines = bytes as usize / line.len();
    let mut body = b"Subject: big\r\n\r\n".to_vec();
    body.extend(line.repeat(lines).into_bytes());
    body
}

/// A connection inside DATA, its 354 read.
fn open_data(relay: &Relay) -> Client {
    let mut client = relay.client();
    client.ehlo();
    client.expect("MAIL FROM:<big@example.test>", 250);
    client.expect("RCPT TO:<one@example.test>", 250);
    client.expect("DATA", 354);
    client
}

fn bodies_in_flight_stay_within_the_budget(engine: Engine) {
    let relay = Relay::start(settings(engine));
    let pid = relay.pid();
    // Warm up the paths of a whole transaction (the spool writer, the first segment).
    relay.deliver(&["one@example.test"], b"Subject: warm\r\n\r\nup\r\n");
    let before = rss(pid);

    // One connection at a time, so the relay has read each partial body before the next
    // starts: which bodies fit is then the same in every run.
    let partial = body_text(PARTIAL);
    let mut stalled = Vec::new();
    let mut grown = Vec::new();
    for _ in 0..STALLED {
        let mut client = open_data(&relay);
        let read = smtp_bytes_received(&relay);
        client.send(&partial).expect("send a partial body");
        wait_received(&relay, read + partial.len() as u64);
        stalled.push(client);
        grown.push(rss(pid).saturating_sub(before) / 1024);
    }
    let (half, all) = (grown[STALLED / 2 - 1], grown[STALLED - 1]);
    let shown = format!(
        "{STALLED} bodies of {} KiB, each stalled before its end; the relay's RSS grew by {grown:?} KiB after each; the budget is {} KiB",
        partial.len() / 1024,
        BUDGET / 1024
    );
    // Once the budget is spent, more bodies in flight take no more memory...
    assert!(
        all.saturating_sub(half) < 2 * PARTIAL / 1024,
        "{shown}: the last {} took {} KiB more",
        STALLED - STALLED / 2,
        all.saturating_sub(half)
    );
    // ...and what they hold stays within the budget and the allocator's slack.
    assert!(
        all < (BUDGET + SLACK) / 1024,
        "{shown}: more than the budget + {} KiB slack",
        SLACK / 1024
    );

    // More than half the budget is taken, so a message of the largest size no longer fits.
    let in_flight = metric(&relay, "relay_smtp_body_bytes_in_flight", &[]) as u64;
    assert!(
        in_flight > BUDGET - MESSAGE_SIZE_MAX && in_flight <= BUDGET,
        "bytes in flight {in_flight}"
    );

    // A message declared larger than what is left of the budget is refused before its data.
    let mut late = relay.client();
    late.ehlo();
    let declared = MESSAGE_SIZE_MAX;
    let reply = late
        .cmd(&format!("MAIL FROM:<late@example.test> SIZE={declared}"))
        .expect("MAIL");
    assert!(reply.is(452, "4.3.1"), "MAIL with SIZE={declared}: {reply}");

    // The stalled bodies end: those that fit are stored, the others get 452 4.3.1, and every
    // connection is still usable for the next message.
    let (mut stored, mut deferred) = (0, 0);
    for mut client in stalled {
        client.send(b".\r\n").expect("end of data");
        let reply = client.read_reply().expect("reply to the end of data");
        if reply.code == 250 {
            stored += 1;
        } else {
            assert!(reply.is(452, "4.3.1"), "end of data: {reply}");
            deferred += 1;
        }
        let reply = client
            .transaction(
                "small@example.test",
                &["one@example.test"],
                b"Subject: small\r\n\r\nfits\r\n",
            )
            .expect("next transaction");
        assert_eq!(
            reply.code, 250,
            "the next message on the connection: {reply}"
        );
        client.quit();
    }
    let fit = (BUDGET / PARTIAL) as usize;
    assert!(
        stored >= 1 && stored <= fit && deferred >= STALLED - fit,
        "{stored} stored and {deferred} deferred of {STALLED} bodies of {PARTIAL} octets with a budget of {BUDGET}"
    );

    // With everything finished, the budget is whole again: a large message is accepted.
    let mut client = relay.client();
    client.ehlo();
    let reply = client
        .transaction("after@example.test", &["one@example.test"], &partial)
        .expect("after");
    assert_eq!(
        reply.code, 250,
        "a large message once the budget is free: {reply}"
    );
    client.quit();
    assert_eq!(
        metric(&relay, "relay_smtp_body_bytes_in_flight", &[]),
        0.0,
        "every reservation is returned"
    );
    assert!(
        metric(
            &relay,
            "relay_smtp_body_memory_refusals_total",
            &[("stage", "mail")]
        ) >= 1.0
    );
    assert!(
        metric(
            &relay,
            "relay_smtp_body_memory_refusals_total",
            &[("stage", "data")]
        ) >= deferred as f64
    );
    relay.stop();
}
