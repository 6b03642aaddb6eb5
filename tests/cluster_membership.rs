//! Membership leases in a real redis-server: three relay nodes register, `relay cluster
//! status` shows them up with their figures, `relay stat --cluster` sums them, a node killed
//! with SIGKILL is shown down once its lease expires, a clean stop deletes its lease at once,
//! and `live_nodes()` (the library API the drain uses) agrees.

#[allow(unused_macros)] // the engine_tests! macro is for the server tests
mod common;

use std::time::{Duration, Instant};

use common::services::Redis;
use common::{relay_cmd, Relay, Settings};

const NODES: [&str; 3] = ["a", "b", "c"];
const LEASE: Duration = Duration::from_secs(3);
const WAIT: Duration = Duration::from_secs(20);

fn cluster_toml(node: &str, redis: &Redis) -> String {
    let mut toml = format!("[cluster]\nnode = {node:?}\nlease = \"3s\"\n");
    for (i, name) in NODES.iter().enumerate() {
        toml.push_str(&format!(
            "[[cluster.nodes]]\nname = {name:?}\ncluster = \"127.0.0.1:{}\"\n",
            41_000 + i
        ));
    }
    toml.push_str(&format!(
        "[cluster.redis]\nurl = {:?}\ntimeout = \"300ms\"\n",
        redis.url()
    ));
    toml
}

fn json(output: &std::process::Output) -> serde_json::Value {
    assert!(output.status.success(), "{}", common::describe(output));
    serde_json::from_slice(&output.stdout).expect("JSON")
}

/// `relay cluster status --json` with `relay`'s config: node name -> its entry.
fn status(relay: &Relay) -> Vec<serde_json::Value> {
    let config = relay.config_path.to_str().unwrap();
    let out = relay_cmd(["cluster", "status", "--json", "-c", config]);
    json(&out).as_array().expect("array").clone()
}

fn up(entries: &[serde_json::Value], node: &str) -> bool {
    entries
        .iter()
        .find(|e| e["node"] == node)
        .unwrap_or_else(|| panic!("no {node} in {entries:?}"))["up"]
        .as_bool()
        .expect("up")
}

/// Polls (no event to wait on: the lease expires inside Redis) until `done`, bounded.
fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn leases_show_the_nodes_and_expire_after_a_crash() {
    let redis = Redis::start();
    let nodes: Vec<Relay> = NODES
        .iter()
        .map(|node| {
            let relay = Relay::start(Settings {
                extra_toml: cluster_toml(node, &redis),
                ..Settings::auto()
            });
            relay.wait_log(&["Redis connected"], WAIT);
            relay
        })
        .collect();
    let entries = status(&nodes[0]);
    assert_eq!(entries.len(), 3);
    for node in NODES {
        assert!(up(&entries, node), "{node} down: {entries:?}");
    }
    let a = entries.iter().find(|e| e["node"] == "a").unwrap();
    assert_eq!(a["lease"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(a["age_ms"].as_u64().unwrap() <= LEASE.as_millis() as u64);
    let ttl: i64 = redis.cli(&["PTTL", "relay:node:a"]).trim().parse().unwrap();
    assert!(
        ttl > 0 && ttl <= LEASE.as_millis() as i64,
        "lease TTL {ttl}"
    );

    // The text form too.
    let config = nodes[1].config_path.to_str().unwrap();
    let text = relay_cmd(["cluster", "status", "-c", config]);
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert_eq!(
        text.lines().filter(|l| l.contains(" up ")).count(),
        3,
        "{text}"
    );

    // Figures: one message on a, two on b; the sums arrive with the next renewals.
    for (node, count) in [(&nodes[0], 1), (&nodes[1], 2)] {
        for _ in 0..count {
            node.deliver(&["one@example.test"], b"Subject: x\r\n\r\nx\r\n");
        }
    }
    until("the leases publish 3 accepted messages", || {
        let out = relay_cmd(["stat", "--cluster", "--json", "-c", config]);
        let stat = json(&out);
        stat["total"]["messages"] == 3 && stat["nodes"].as_array().is_some_and(|n| n.len() == 3)
    });
    let text = relay_cmd(["stat", "--cluster", "-c", config]);
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(text.contains("cluster (3/3 up)"), "{text}");

    // The library API agrees.
    let handle = library_redis(&redis);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let names: Vec<String> = NODES.iter().map(|n| n.to_string()).collect();
    let live = runtime
        .block_on(relay::cluster::membership::live_nodes(&handle, &names))
        .unwrap();
    assert_eq!(live, names);

    // kill -9 c: still up until its lease runs out, then down.
    nodes[2].kill9();
    let killed = Instant::now();
    assert!(up(&status(&nodes[0]), "c"), "down before the lease expired");
    until("c shown down", || !up(&status(&nodes[0]), "c"));
    let took = killed.elapsed();
    assert!(
        took <= LEASE + Duration::from_secs(2),
        "down only after {took:?}"
    );
    let live = runtime
        .block_on(relay::cluster::membership::live_nodes(&handle, &names))
        .unwrap();
    assert_eq!(live, ["a", "b"]);

    // A clean stop deletes the lease at once.
    nodes[1].stop();
    nodes[1].wait_log(&["cluster lease released"], WAIT);
    assert!(!up(&status(&nodes[0]), "b"));
    let text = relay_cmd(["stat", "--cluster", "-c", config]);
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(text.contains("cluster (1/3 up)"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("b ") && l.contains("down")),
        "{text}"
    );
}

fn library_redis(redis: &Redis) -> relay::cluster::redis::Redis {
    let section = relay::config::cluster::RedisSection {
        url: Some(redis.url()),
        ..Default::default()
    };
    relay::cluster::redis::Redis::start(&section, Default::default()).unwrap()
}

#[test]
fn status_without_redis_is_an_error_not_a_hang() {
    let mut redis = Redis::start();
    let relay = Relay::start(Settings {
        extra_toml: cluster_toml("a", &redis),
        ..Settings::auto()
    });
    relay.wait_log(&["Redis connected"], WAIT);
    redis.stop();
    let config = relay.config_path.to_str().unwrap();
    let started = Instant::now();
    let out = relay_cmd(["cluster", "status", "-c", config]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Redis"),
        "{}",
        common::describe(&out)
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}
