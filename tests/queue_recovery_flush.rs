//! A restarted relay rebuilds its delivery queue from the spool: every recipient that was
//! deferred (attempts ≥ 1) is held by a core again, `relay queue flush` retries it, and
//! once the next hop answers each message arrives exactly once. Real `relay serve`, the
//! scripted sink (tests/py/scripted_sink.py) as the next hop on a port closed until then.

#[allow(unused_macros)] // the engine_tests! macro is for the server tests
mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::sinks::{free_port, Sink};
use common::{Engine, Relay, Settings};

fn settings(port: u16, retry: &str) -> Settings {
    let mut s = Settings::new(Engine::Uring);
    s.routes = vec![("*".into(), format!("127.0.0.1:{port}"))];
    s.extra_toml = retry.to_string();
    s
}

/// Retries every two seconds: entries pile up attempts while the next hop is down.
const FAST_RETRY: &str =
    "[delivery]\nretry_intervals = [\"2s\"]\nretry_every = \"2s\"\nretry_jitter_percent = 0\n";

/// Nothing is retried by itself during the test: only a flush sends.
const SLOW_RETRY: &str =
    "[delivery]\nretry_intervals = [\"1h\"]\nretry_every = \"2h\"\nretry_jitter_percent = 0\n";

fn relay_args(relay: &Relay, args: &[&str]) -> std::process::Output {
    let config = relay.config_path.to_str().expect("utf-8 path").to_string();
    let mut all: Vec<&str> = args.to_vec();
    all.extend_from_slice(&["--config", &config]);
    common::relay_cmd(all)
}

fn ok_stdout(out: &std::process::Output) -> String {
    assert!(out.status.success(), "{}", common::describe(out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `relay queue list --json`: recipient → (attempts, destination).
fn queue(relay: &Relay) -> (HashMap<String, (u64, Option<String>)>, String) {
    let (q, text) = queue_full(relay);
    (
        q.into_iter().map(|(k, (a, d, _))| (k, (a, d))).collect(),
        text,
    )
}

/// `relay queue list --json`: recipient → (attempts, destination, in flight).
#[allow(clippy::type_complexity)]
fn queue_full(relay: &Relay) -> (HashMap<String, (u64, Option<String>, bool)>, String) {
    let text = ok_stdout(&relay_args(relay, &["queue", "list", "--json"]));
    let list: serde_json::Value = serde_json::from_str(&text).expect("queue list JSON");
    let mut out = HashMap::new();
    for m in list.as_array().expect("a list") {
        for r in m["recipients"].as_array().expect("recipients") {
            out.insert(
                r["address"].as_str().expect("address").to_string(),
                (
                    r["attempts"].as_u64().expect("attempts"),
                    r["destination"].as_str().map(str::to_string),
                    r["in_flight"].as_bool().unwrap_or(false),
                ),
            );
        }
    }
    (out, text)
}

fn body(tag: &str) -> Vec<u8> {
    format!("From: sender@example.test\r\nSubject: {tag}\r\n\r\nbody of {tag}\r\n").into_bytes()
}

/// Sends `n` messages, one remote recipient each, and flushes until every one was tried at
/// least `attempts` times (read from the listing: bounded polling, the record of an attempt
/// follows its log line).
fn queue_up(relay: &Relay, n: usize, prefix: &str, attempts: u64) -> Vec<String> {
    let mut tags = Vec::new();
    for i in 0..n {
        let tag = format!("{prefix}-{i}");
        relay.deliver(&[format!("{tag}@remote.test").as_str()], &body(&tag));
        tags.push(tag);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (q, text) = queue(relay);
        if q.len() == n && q.values().all(|(a, _)| *a >= attempts) {
            return tags;
        }
        assert!(Instant::now() < deadline, "not tried {attempts}×: {text}");
        // The dead destination is held after its first failure: a flush lifts the hold.
        ok_stdout(&relay_args(relay, &["queue", "flush"]));
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// After a flush every pending recipient is held by a core again (bounded polling: an entry
/// out for its attempt has no destination in the listing for that moment).
fn wait_all_held(relay: &Relay, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (q, text) = queue(relay);
        if q.len() == n && q.values().all(|(_, d)| d.is_some()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pending recipients without a destination (not in any core's queue): {text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn assert_each_once(sink: &Sink, tags: &[String]) {
    let got = sink.messages();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for m in &got {
        let text = String::from_utf8_lossy(m);
        let subject = text
            .lines()
            .find_map(|l| l.strip_prefix("Subject: "))
            .unwrap_or("?")
            .trim()
            .to_string();
        *counts.entry(subject).or_default() += 1;
    }
    for tag in tags {
        assert_eq!(counts.get(tag), Some(&1), "{tag} at the sink: {counts:?}");
    }
    assert_eq!(got.len(), tags.len(), "{counts:?}");
}

fn restarted_and_flushed_delivers_everything(retry: &str, attempts: u64, kill: bool) {
    let port = free_port();
    let relay = Relay::start(settings(port, retry));
    let n = 12;
    let tags = queue_up(&relay, n, "rec", attempts);
    if kill {
        relay.kill9();
    } else {
        relay.stop();
    }
    let relay = relay.restart(settings(port, retry));
    relay.wait_log(
        &["delivery queue rebuilt from the spool"],
        Duration::from_secs(10),
    );
    ok_stdout(&relay_args(&relay, &["queue", "flush"]));
    wait_all_held(&relay, n);
    // Once more: what a flush retried went back with a destination, and flushes again.
    ok_stdout(&relay_args(&relay, &["queue", "flush"]));
    wait_all_held(&relay, n);

    let sink = Sink::scripted(port, &[]);
    ok_stdout(&relay_args(&relay, &["queue", "flush"]));
    sink.wait_messages(n, Duration::from_secs(30));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (q, text) = queue(&relay);
        if q.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "queue not empty: {text}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_each_once(&sink, &tags);
}

#[test]
fn deferred_mail_is_held_again_after_a_restart_and_a_flush_sends_it() {
    restarted_and_flushed_delivers_everything(SLOW_RETRY, 1, false);
}

#[test]
fn mail_retried_several_times_is_held_again_after_kill9_and_a_flush_sends_it() {
    restarted_and_flushed_delivers_everything(FAST_RETRY, 2, true);
}

/// A next hop that takes the connection and never greets (as a host whose accept queue
/// overflowed looks from the client's side): the attempt waits for the greeting timeout.
/// Meanwhile the recipient is held by the core that tries it, and the listing says so,
/// with its destination: it did not leave memory.
#[test]
fn a_recipient_whose_attempt_hangs_is_listed_as_being_tried_at_its_destination() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        for conn in silent.incoming().take(2) {
            conns.push(conn);
        }
        // Keep them open, silent, until the test process ends.
        std::thread::sleep(Duration::from_secs(120));
        drop(conns);
    });
    let relay = Relay::start(settings(port, SLOW_RETRY));
    relay.deliver(&["hang-0@remote.test"], &body("hang-0"));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (q, text) = queue_full(&relay);
        if let Some((attempts, destination, in_flight)) = q.get("hang-0@remote.test") {
            if *in_flight {
                assert_eq!(*attempts, 0, "{text}");
                assert!(
                    destination
                        .as_deref()
                        .is_some_and(|d| d.contains(&format!("127.0.0.1:{port}"))),
                    "{text}"
                );
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the recipient being tried is not listed as such: {text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(held);
}
