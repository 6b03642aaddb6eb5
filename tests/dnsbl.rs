//! DNS block lists at connect (RFC 5782), through the real resolver (hickory) asking a DNS
//! server on loopback (tests/py/dns_server.py) named by `server.dns_servers`: a listed
//! client's recipients get 554 5.7.1 unless it authenticated; a list that refuses the query,
//! a SERVFAIL and a silent server all let the client in.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::dns::DnsServer;
use common::{Client, Engine, Relay, Settings, TEST_PASSWORD};

/// Loopback is not a relay network here, so the block lists apply to the test client.
fn settings(engine: Engine, dns_port: u16, zones: &[&str], timeout: &str) -> Settings {
    let mut settings = Settings::new(engine);
    settings.allowed_networks = vec!["192.0.2.0/24".into()];
    settings.server_toml = format!("dns_servers = [\"127.0.0.1:{dns_port}\"]\n");
    let zones: Vec<String> = zones.iter().map(|z| format!("{z:?}")).collect();
    settings.smtp_toml = format!(
        "dnsbl_zones = [{}]\ndnsbl_timeout = {timeout:?}\nallow_plaintext_auth = true\n",
        zones.join(", ")
    );
    settings
}

fn listed_client_is_refused_unless_authenticated(engine: Engine) {
    let dns = DnsServer::start(&["1.0.0.127.bl.test=127.0.0.2"]);
    let relay = Relay::start(settings(engine, dns.port, &["clean.test", "bl.test"], "5s"));

    let mut client = Client::greeted(relay.addr);
    client.ehlo();
    client.expect("MAIL FROM:<someone@remote.test>", 250);
    let refused = client.expect("RCPT TO:<bob@example.test>", 554);
    assert!(refused.is(554, "5.7.1"), "{refused:?}");
    assert!(
        refused
            .text()
            .contains("Client host [127.0.0.1] blocked using bl.test"),
        "{refused:?}"
    );
    client.quit();
    relay.wait_log(
        &["client on a block list", "zone=bl.test", "code=127.0.0.2"],
        Duration::from_secs(20),
    );
    // Both zones were asked, in order, for the reversed address (A only: no AAAA).
    let queries = dns.queries();
    assert!(
        queries.contains(&"1.0.0.127.clean.test 1".to_string())
            && queries.contains(&"1.0.0.127.bl.test 1".to_string()),
        "{queries:?}"
    );
    assert!(!queries.iter().any(|q| q.ends_with(" 28")), "{queries:?}");

    // The same client, authenticated: a submission user on a listed address gets in.
    let mut client = Client::greeted(relay.addr);
    client.ehlo();
    let plain = base64_plain("alice", TEST_PASSWORD);
    client.expect(&format!("AUTH PLAIN {plain}"), 235);
    client.expect("MAIL FROM:<alice@example.test>", 250);
    client.expect("RCPT TO:<bob@example.test>", 250);
    client.quit();
    relay.stop();
}

engine_tests! {
    listed_client_is_refused_unless_authenticated: listed_uring, listed_epoll;
}

fn base64_plain(user: &str, password: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"))
}

/// A list that refuses the query (127.255.255.254), a SERVFAIL, and a server that never
/// answers (cut at `dnsbl_timeout`): none of them blocks the client.
#[test]
fn undecided_lookups_let_the_client_in() {
    let dns = DnsServer::start(&[
        "1.0.0.127.refused.test=127.255.255.254",
        "1.0.0.127.broken.test=servfail",
        "1.0.0.127.silent.test=silent",
    ]);
    let relay = Relay::start(settings(
        Engine::Uring,
        dns.port,
        &["refused.test", "broken.test", "silent.test"],
        "2s",
    ));
    let started = Instant::now();
    let mut client = Client::greeted(relay.addr);
    let waited = started.elapsed();
    client.ehlo();
    client.expect("MAIL FROM:<someone@remote.test>", 250);
    client.expect("RCPT TO:<bob@example.test>", 250);
    client.quit();
    // The greeting waited for the silent server, but no longer than the timeout.
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(10),
        "greeting after {waited:?}"
    );
    relay.wait_log(
        &["block list lookup gave no answer", "zone=refused.test"],
        Duration::from_secs(20),
    );
    relay.wait_log(
        &[
            "block list lookup gave no answer",
            "zone=silent.test",
            "no answer within",
        ],
        Duration::from_secs(20),
    );
    relay.stop();
}

/// A client in `relay.allowed_networks` is never looked up.
#[test]
fn relay_networks_are_not_looked_up() {
    let dns = DnsServer::start(&["1.0.0.127.bl.test=127.0.0.2"]);
    let mut settings = settings(Engine::Epoll, dns.port, &["bl.test"], "5s");
    settings.allowed_networks = vec!["127.0.0.0/8".into()];
    let relay = Relay::start(settings);
    let mut client = Client::greeted(relay.addr);
    client.ehlo();
    client.expect("MAIL FROM:<a@example.test>", 250);
    client.expect("RCPT TO:<bob@example.test>", 250);
    client.quit();
    relay.stop();
    assert!(dns.queries().is_empty(), "{:?}", dns.queries());
}
