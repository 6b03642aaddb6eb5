//! One destination, every core: with a single route (everything to one smarthost) each core
//! delivers the messages it stored itself, so outbound work follows ingest across the cores
//! instead of piling up on the destination's one owner core. With
//! `delivery.destination_spread = false` the owner alone delivers (the old rule, kept as an
//! option).
#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::sinks::Sink;
use common::{Engine, Relay, Settings};

const MESSAGES: usize = 40;

fn settings(engine: Engine, sink: std::net::SocketAddr, spread: bool) -> Settings {
    let mut settings = Settings::new(engine);
    settings.cores = 2;
    settings.routes = vec![("*".into(), sink.to_string())];
    settings.extra_toml = format!("[delivery]\ndestination_spread = {spread}\n");
    settings
}

/// `metric{core="N",…} value` summed per core, for the lines that contain every `needle`.
fn per_core(text: &str, metric: &str, needles: &[&str]) -> BTreeMap<usize, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(labels) = line.strip_prefix(metric).and_then(|l| l.strip_prefix('{')) else {
            continue;
        };
        if !needles.iter().all(|n| labels.contains(n)) {
            continue;
        }
        let core = labels
            .split("core=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .and_then(|c| c.parse::<usize>().ok());
        let value = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
        if let (Some(core), Some(value)) = (core, value) {
            *out.entry(core).or_insert(0.0) += value;
        }
    }
    out
}

/// Sends MESSAGES messages, one connection each (the kernel spreads connections over the
/// cores' listeners), waits until the sink has them all and the relay counted them all, and
/// returns (stored per core, delivered per core).
fn run(engine: Engine, spread: bool) -> (BTreeMap<usize, f64>, BTreeMap<usize, f64>) {
    let sink = Sink::scripted(0, &[]);
    let relay = Relay::start(settings(engine, sink.addr, spread));
    for i in 0..MESSAGES {
        let mut client = relay.client();
        client.ehlo();
        let body = format!(
            "From: a@example.test\r\nTo: b@remote.test\r\nSubject: {i}\r\nMessage-ID: <{i}.spread@example.test>\r\n\r\nbody {i}\r\n"
        );
        let reply = client
            .transaction("a@example.test", &["b@remote.test"], body.as_bytes())
            .unwrap_or_else(|e| panic!("send {i}: {e}"));
        assert_eq!(reply.code, 250, "{reply}");
        client.quit();
    }
    sink.wait_messages(MESSAGES, Duration::from_secs(60));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, text) = relay.admin_get("/metrics");
        assert_eq!(status, 200);
        let stored = per_core(
            &text,
            "relay_smtp_transactions_total",
            &["result=\"queued\""],
        );
        let delivered = per_core(&text, "relay_deliveries_total", &["result=\"delivered\""]);
        if delivered.values().sum::<f64>() as usize >= MESSAGES
            && stored.values().sum::<f64>() as usize >= MESSAGES
        {
            return (stored, delivered);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "counters never reached {MESSAGES}: stored {stored:?}, delivered {delivered:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn each_core_delivers_what_it_stored(engine: Engine) {
    let (stored, delivered) = run(engine, true);
    assert_eq!(stored.len(), 2, "both cores took connections: {stored:?}");
    assert!(
        stored.values().all(|&n| n >= 1.0),
        "both cores stored mail: {stored:?}"
    );
    for (core, &n) in &stored {
        assert_eq!(
            delivered.get(core).copied().unwrap_or(0.0),
            n,
            "core {core} delivers what it stored: stored {stored:?}, delivered {delivered:?}"
        );
    }
}

fn without_spreading_one_core_delivers_everything(engine: Engine) {
    let (stored, delivered) = run(engine, false);
    assert!(
        stored.values().filter(|&&n| n >= 1.0).count() == 2,
        "both cores stored mail: {stored:?}"
    );
    let working: Vec<_> = delivered.iter().filter(|(_, &n)| n > 0.0).collect();
    assert_eq!(working.len(), 1, "one owner core: {delivered:?}");
    assert_eq!(*working[0].1 as usize, MESSAGES);
}

engine_tests! {
    each_core_delivers_what_it_stored: each_core_delivers_what_it_stored_uring, each_core_delivers_what_it_stored_epoll;
    without_spreading_one_core_delivers_everything: without_spreading_one_core_delivers_everything_uring, without_spreading_one_core_delivers_everything_epoll;
}
