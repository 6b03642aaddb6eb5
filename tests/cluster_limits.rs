//! Limits shared by three relay nodes through one real redis-server: the per-client message
//! rate, connection cap and login-failure block hold across the nodes; with Redis killed,
//! `cluster.redis.failure` decides (open: mail still flows on the node tables, counted in
//! `relay_cluster_redis_failures_total`; closed: temporary refusals), and the shared limits
//! apply again once Redis is back.

#[allow(unused_macros)] // the engine_tests! macro is for the server tests
mod common;

use std::time::{Duration, Instant};

use common::services::Redis;
use common::smtp::Client;
use common::{Relay, Settings};

const NODES: [&str; 3] = ["a", "b", "c"];
const WAIT: Duration = Duration::from_secs(20);

/// The `[cluster]` of node `node`, sharing `redis` (`extra` goes into `[cluster.redis]`).
fn cluster_toml(node: &str, redis: &Redis, extra: &str) -> String {
    let mut toml = format!("[cluster]\nnode = {node:?}\nlease = \"3s\"\n");
    for (i, name) in NODES.iter().enumerate() {
        toml.push_str(&format!(
            "[[cluster.nodes]]\nname = {name:?}\ncluster = \"127.0.0.1:{}\"\n",
            40_000 + i
        ));
    }
    toml.push_str(&format!(
        "[cluster.redis]\nurl = {:?}\ntimeout = \"300ms\"\n{extra}",
        redis.url()
    ));
    toml
}

/// A node whose clients (127.0.0.1) are not relay clients, so the message rate applies.
fn node_settings(node: &str, redis: &Redis, smtp: &str, redis_extra: &str) -> Settings {
    Settings {
        allowed_networks: vec!["192.0.2.0/24".into()],
        smtp_toml: smtp.to_string(),
        extra_toml: cluster_toml(node, redis, redis_extra),
        ..Settings::auto()
    }
}

fn start_nodes(redis: &Redis, smtp: &str, redis_extra: &str) -> Vec<Relay> {
    NODES
        .iter()
        .map(|node| {
            let relay = Relay::start(node_settings(node, redis, smtp, redis_extra));
            // The lease's first write is the first call: the node has reached Redis.
            relay.wait_log(&["Redis connected"], WAIT);
            relay
        })
        .collect()
}

/// MAIL on a fresh connection to `relay`: the reply code.
fn mail(relay: &Relay) -> u16 {
    let mut client = Client::greeted(relay.addr);
    client.ehlo();
    let reply = client.cmd("MAIL FROM:<sender@example.org>").expect("MAIL");
    let code = reply.code;
    client.quit();
    code
}

/// A whole message to a local user on `relay`: the final reply code.
fn send(relay: &Relay) -> u16 {
    let mut client = Client::greeted(relay.addr);
    client.ehlo();
    let reply = client
        .transaction(
            "sender@example.org",
            &["one@example.test"],
            &common::smtp::message("cluster", &["hello"]),
        )
        .expect("transaction");
    client.quit();
    reply.code
}

fn metric(relay: &Relay, name: &str) -> f64 {
    let (status, body) = relay.admin_get("/metrics");
    assert_eq!(status, 200);
    body.lines()
        .find_map(|line| {
            let rest = line.strip_prefix(name)?;
            let rest = rest.strip_prefix(' ')?;
            rest.trim().parse().ok()
        })
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{body}"))
}

#[test]
fn message_rate_is_one_budget_for_the_three_nodes() {
    let mut redis = Redis::start_with_password(Some("cluster-secret"));
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("redis.password");
    std::fs::write(&password, "cluster-secret\n").unwrap();
    let extra = format!("password_file = {:?}\n", password.to_str().unwrap());
    // Three per hour per client: each node's own table alone would allow nine.
    let smtp = "messages_per_ip_max = 3\nmessage_rate_window = \"1h\"\n";
    let nodes = start_nodes(&redis, smtp, &extra);
    assert_eq!(send(&nodes[0]), 250);
    assert_eq!(send(&nodes[1]), 250);
    assert_eq!(mail(&nodes[2]), 250);
    // The fourth, whichever node it reaches (each has seen at most one).
    for node in &nodes {
        assert_eq!(mail(node), 450, "node {}", node.addr);
    }
    nodes[2].wait_log(&["message refused by the cluster's rate"], WAIT);
    assert_eq!(
        redis.cli(&["EXISTS", "relay:rate:msg:127.0.0.1"]).trim(),
        "1"
    );
    // The password file was used (AUTH), and nothing failed.
    for node in &nodes {
        assert_eq!(metric(node, "relay_cluster_redis_failures_total"), 0.0);
        assert_eq!(metric(node, "relay_cluster_redis_up"), 1.0);
    }
    redis.stop();
}

#[test]
fn connection_cap_spans_the_nodes_and_a_crashed_nodes_slots_come_back() {
    let redis = Redis::start();
    let smtp = "";
    let mut nodes = Vec::new();
    for node in NODES {
        let settings = Settings {
            connections_per_ip_max: 2,
            ..node_settings(node, &redis, smtp, "")
        };
        let relay = Relay::start(settings);
        relay.wait_log(&["Redis connected"], WAIT);
        nodes.push(relay);
    }
    let first = Client::greeted(nodes[0].addr);
    let second = Client::greeted(nodes[1].addr);
    // The third connection, on a node holding none of them: 421.
    let mut third = Client::connect(nodes[2].addr).expect("connect");
    let reply = third.read_reply().expect("reply");
    assert_eq!(reply.code, 421, "{}", reply.text());
    // A slot given back on one node is free on another (the release is sent without
    // waiting: poll, bounded).
    drop(second);
    let deadline = Instant::now() + WAIT;
    loop {
        let mut client = Client::connect(nodes[2].addr).expect("connect");
        let reply = client.read_reply().expect("reply");
        if reply.code == 220 {
            std::mem::forget(client);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "slot not released: {}",
            reply.text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Node c now holds one, a the other. Kill a: its slot comes back once its lease ends.
    nodes[0].kill9();
    drop(first);
    let killed = Instant::now();
    let mut client = Client::connect(nodes[1].addr).expect("connect");
    assert_eq!(
        client.read_reply().expect("reply").code,
        421,
        "a's slot is still leased"
    );
    let deadline = Instant::now() + WAIT;
    loop {
        let mut client = Client::connect(nodes[1].addr).expect("connect");
        if client.read_reply().expect("reply").code == 220 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the crashed node's slot never came back"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        killed.elapsed() <= Duration::from_secs(3) + Duration::from_secs(5),
        "came back only after {:?}",
        killed.elapsed()
    );
}

/// AUTH PLAIN for `user` with `password`: the reply code.
fn auth(relay: &Relay, user: &str, password: &str) -> u16 {
    use base64::Engine as _;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
    let mut client = Client::greeted(relay.addr);
    client.ehlo();
    let code = client
        .cmd(&format!("AUTH PLAIN {token}"))
        .expect("AUTH")
        .code;
    client.quit();
    code
}

#[test]
fn login_failures_on_one_node_block_the_client_on_the_others() {
    let redis = Redis::start();
    let smtp = "allow_plaintext_auth = true\nauth_failures_per_ip_max = 2\nauth_failure_delay = \"10ms\"\n";
    let nodes = start_nodes(&redis, smtp, "");
    assert_eq!(auth(&nodes[0], "one", common::TEST_PASSWORD), 235);
    assert_eq!(auth(&nodes[0], "one", "wrong"), 535);
    assert_eq!(auth(&nodes[1], "one", "wrong"), 535);
    // Node c saw no failure, yet the client is blocked there, even with the right password.
    assert_eq!(auth(&nodes[2], "one", common::TEST_PASSWORD), 454);
    assert_eq!(redis.cli(&["GET", "relay:auth:smtp:127.0.0.1"]).trim(), "2");
}

#[test]
fn redis_down_with_failure_open_keeps_mail_flowing_and_limits_resume() {
    let mut redis = Redis::start();
    let smtp = "messages_per_ip_max = 2\nmessage_rate_window = \"1h\"\n";
    let nodes = start_nodes(&redis, smtp, "failure = \"open\"\n");
    redis.stop();
    // Mail keeps coming in on every node (each node's table still applies).
    for node in &nodes {
        assert_eq!(send(node), 250);
    }
    assert_eq!(send(&nodes[0]), 250);
    assert_eq!(mail(&nodes[0]), 450, "the node's own table still counts");
    let failures = metric(&nodes[0], "relay_cluster_redis_failures_total");
    assert!(failures >= 3.0, "{failures} failures counted");
    assert_eq!(metric(&nodes[0], "relay_cluster_redis_up"), 0.0);
    let outages = nodes[0]
        .log_lines()
        .iter()
        .filter(|l| l.contains("Redis unavailable"))
        .count();
    assert_eq!(outages, 1, "one log line per outage, not per decision");

    redis.resume();
    for node in &nodes {
        node.wait_log(&["Redis answers again"], WAIT);
    }
    assert_eq!(metric(&nodes[1], "relay_cluster_redis_up"), 1.0);
    // b and c each have one of their two left on their own; together the cluster allows
    // two, so the third is refused although b's table would admit it.
    assert_eq!(mail(&nodes[1]), 250);
    assert_eq!(mail(&nodes[2]), 250);
    assert_eq!(mail(&nodes[1]), 450);
}

#[test]
fn redis_down_with_failure_closed_refuses_temporarily() {
    let mut redis = Redis::start();
    let smtp = "messages_per_ip_max = 5\nmessage_rate_window = \"1h\"\n";
    // Connections stay open (a per-kind override); messages fail closed.
    let extra = "failure = \"closed\"\nfailure_connections = \"open\"\n";
    let nodes = start_nodes(&redis, smtp, extra);
    assert_eq!(send(&nodes[0]), 250);
    redis.stop();
    let mut client = Client::greeted(nodes[1].addr);
    client.ehlo();
    let reply = client.cmd("MAIL FROM:<sender@example.org>").expect("MAIL");
    assert_eq!(reply.code, 450, "{}", reply.text());
    client.quit();
    // Without the override the connection itself is refused, temporarily.
    let strict = Relay::start(node_settings("c", &redis, smtp, "failure = \"closed\"\n"));
    let mut client = Client::connect(strict.addr).expect("connect");
    let reply = client.read_reply().expect("reply");
    assert_eq!(reply.code, 421, "{}", reply.text());
    redis.resume();
    nodes[1].wait_log(&["Redis answers again"], WAIT);
    assert_eq!(send(&nodes[1]), 250);
}

/// `cmdstat_NAME:calls=N` from `INFO commandstats` (0 when absent).
fn calls(redis: &Redis, command: &str) -> u64 {
    let info = redis.cli(&["INFO", "commandstats"]);
    info.lines()
        .find_map(|line| {
            let rest = line.strip_prefix(&format!("cmdstat_{command}:calls="))?;
            rest.split(',').next()?.parse().ok()
        })
        .unwrap_or(0)
}

/// The Redis cost of the hot paths, measured: per connection with one message, and per
/// login. Lease renewals (`SET` in a pipeline every `lease / 3`) are not in these counts.
#[test]
fn redis_operations_per_message_and_per_login() {
    let redis = Redis::start();
    let smtp =
        "messages_per_ip_max = 1000\nmessage_rate_window = \"1h\"\nallow_plaintext_auth = true\n";
    let relay = Relay::start(node_settings("a", &redis, smtp, ""));
    relay.wait_log(&["Redis connected"], WAIT);
    // Scripts loaded once; not part of the steady state.
    assert_eq!(send(&relay), 250);
    assert_eq!(auth(&relay, "one", "wrong"), 535);
    assert_eq!(auth(&relay, "one", common::TEST_PASSWORD), 235);
    redis.cli(&["CONFIG", "RESETSTAT"]);
    let messages = 10;
    let mut client = Client::greeted(relay.addr);
    client.ehlo();
    for i in 0..messages {
        let reply = client
            .transaction(
                "sender@example.org",
                &["one@example.test"],
                &common::smtp::message(&format!("m{i}"), &["x"]),
            )
            .expect("transaction");
        assert_eq!(reply.code, 250);
    }
    client.quit();
    // The release at disconnect is sent without waiting: poll for it, bounded.
    let deadline = Instant::now() + WAIT;
    while calls(&redis, "evalsha") < messages + 2 {
        assert!(
            Instant::now() < deadline,
            "evalsha: {}",
            calls(&redis, "evalsha")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // One GCRA per message, plus acquire and release for the connection.
    assert_eq!(calls(&redis, "evalsha"), messages + 2);
    assert_eq!(calls(&redis, "eval") + calls(&redis, "script|load"), 0);

    redis.cli(&["CONFIG", "RESETSTAT"]);
    let logins = 4;
    for _ in 0..logins {
        let mut client = Client::greeted(relay.addr);
        client.ehlo();
        let token = {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .encode(format!("\0one\0{}", common::TEST_PASSWORD))
        };
        assert_eq!(
            client.cmd(&format!("AUTH PLAIN {token}")).unwrap().code,
            235
        );
        client.quit();
    }
    let deadline = Instant::now() + WAIT;
    // Per login: the check (GET) and the success (a script clearing the count); plus the
    // connection's acquire and release.
    while calls(&redis, "evalsha") < 3 * logins {
        assert!(
            Instant::now() < deadline,
            "evalsha: {}",
            calls(&redis, "evalsha")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(calls(&redis, "get"), logins);
    assert_eq!(calls(&redis, "evalsha"), 3 * logins);
}
