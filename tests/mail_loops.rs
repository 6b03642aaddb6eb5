//! Mail loops, against the real relay on loopback: a next hop that is the
//! relay itself — a static route to its own listener, an address literal of its own address,
//! an MX that resolves to 127.0.0.1 (through the test DNS server), a next hop that greets
//! with our host name — bounces with `5.4.6` to the sender, and the message is taken in once
//! (no lap through the spool). A message that already carries more `Received:` fields than
//! `smtp.hopcount_limit` is refused `554 5.4.6` (python's smtplib as the client).
//!
//! Every wait is bounded: on a relay without loop detection these tests fail within their
//! deadline (the message goes round, or is deferred), they never hang.

#[macro_use]
mod common;

use std::process::Command;
use std::time::Duration;

use common::dns::DnsServer;
use common::sinks::{free_port, Sink};
use common::{Engine, Relay, Settings};

const PATIENCE: Duration = Duration::from_secs(15);
const SENDER: &str = "alice@example.test";

/// A retry schedule short enough that a deferral shows within the test's patience.
const FAST_RETRY: &str = "[delivery]\nretry_intervals = [\"300ms\"]\nretry_every = \"500ms\"\nretry_jitter_percent = 0\n";

fn settings(routes: &[(&str, &str)]) -> Settings {
    on(Settings::auto(), routes)
}

fn settings_on(engine: Engine, routes: &[(&str, &str)]) -> Settings {
    on(Settings::new(engine), routes)
}

fn on(mut settings: Settings, routes: &[(&str, &str)]) -> Settings {
    settings.routes = routes
        .iter()
        .map(|(d, to)| (d.to_string(), to.to_string()))
        .collect();
    settings.extra_toml = FAST_RETRY.into();
    settings
}

fn message(subject: &str) -> Vec<u8> {
    format!("From: {SENDER}\r\nSubject: {subject}\r\nMessage-ID: <{subject}@example.test>\r\n\r\nround and round\r\n")
        .into_bytes()
}

/// Sends one message from alice (a local mailbox, so the notice can be read over POP3).
fn send(relay: &Relay, rcpt: &str, subject: &str) -> String {
    let mut client = relay.client();
    client.ehlo();
    let reply = client
        .transaction(SENDER, &[rcpt], &message(subject))
        .unwrap_or_else(|e| panic!("send: {e}"));
    assert_eq!(reply.code, 250, "{reply}");
    let id = reply.queue_id().expect("queue id");
    client.quit();
    relay.wait_accepted(&id);
    id
}

/// The recipient bounced once with 5.4.6 and `diagnostic`, the notice is in alice's
/// mailbox, and the message was taken in once: no lap through the spool, no delivery.
fn assert_bounced_as_loop(relay: &Relay, id: &str, rcpt: &str, diagnostic: &str) {
    let line = relay.wait_log(
        &[
            "relay::delivery",
            id,
            &format!("to={rcpt}"),
            "status=\"bounced\"",
        ],
        PATIENCE,
    );
    assert!(line.contains("5.4.6"), "{line}");
    relay.wait_log(&["delivery status notification queued", id], PATIENCE);
    let accepted = relay.accepted_ids();
    assert_eq!(
        accepted,
        [id.to_string()],
        "the message went round: {accepted:?}"
    );
    let sent = relay
        .log_lines()
        .iter()
        .filter(|l| l.contains("relay::delivery") && l.contains("status=\"sent\""))
        .count();
    assert_eq!(sent, 0, "nothing may be delivered to ourselves");
    let mut pop = relay.pop3_login("alice");
    let (count, _) = pop.stat();
    assert_eq!(count, 1, "one notice");
    let notice = String::from_utf8_lossy(&pop.retr(1)).into_owned();
    assert!(
        notice.contains(&format!("Final-Recipient: rfc822; {rcpt}")),
        "{notice}"
    );
    assert!(notice.contains("Action: failed"), "{notice}");
    assert!(notice.contains("Status: 5.4.6"), "{notice}");
    // The Diagnostic-Code field may be folded.
    let unfolded = notice.replace("\r\n ", " ").replace("\n ", " ");
    assert!(unfolded.contains(diagnostic), "{notice}");
    pop.ok("QUIT");
}

engine_tests! {
    a_route_to_the_relay_itself_bounces: route_to_itself_uring, route_to_itself_epoll;
    more_received_fields_than_the_hop_limit_are_refused: hop_limit_uring, hop_limit_epoll;
}

fn a_route_to_the_relay_itself_bounces(engine: Engine) {
    let port = free_port();
    let own = format!("127.0.0.1:{port}");
    let mut settings = settings_on(engine, &[("loop.test", &own), ("*", "127.0.0.1:1")]);
    settings.smtp_listen = own.clone();
    let relay = Relay::start(settings);
    let id = send(&relay, "x@loop.test", "route");
    assert_bounced_as_loop(
        &relay,
        &id,
        "x@loop.test",
        &format!("mail for {own} loops back to myself"),
    );
}

#[test]
fn a_route_to_another_port_of_our_address_is_no_loop() {
    // A content filter or another MTA beside us on the same address is a normal next hop.
    let sink = Sink::scripted(0, &[]);
    let relay = Relay::start(settings(&[("*", &sink.addr.to_string())]));
    let id = send(&relay, "x@beside.test", "beside");
    relay.wait_log(&["relay::delivery", &id, "status=\"sent\""], PATIENCE);
}

#[test]
fn an_address_literal_of_the_relay_bounces() {
    // No routes: the literal goes by `mx`, to port 25 of the address itself.
    let relay = Relay::start(settings(&[]));
    let id = send(&relay, "x@[127.0.0.1]", "literal");
    assert_bounced_as_loop(
        &relay,
        &id,
        "x@[127.0.0.1]",
        "mail for [127.0.0.1] loops back to myself",
    );
}

#[test]
fn an_mx_on_the_relays_own_address_bounces() {
    let dns = DnsServer::start(&["loop.test=mx:10:mx.loop.test", "mx.loop.test=127.0.0.1"]);
    let mut settings = settings(&[]);
    settings.server_toml = format!("dns_servers = [\"127.0.0.1:{}\"]\n", dns.port);
    let relay = Relay::start(settings);
    let id = send(&relay, "x@loop.test", "mx");
    assert_bounced_as_loop(
        &relay,
        &id,
        "x@loop.test",
        "mail for loop.test loops back to myself",
    );
}

#[test]
fn a_next_hop_greeting_with_our_own_name_bounces() {
    // The test relay's server.hostname is relay.test (tests/common).
    let sink = Sink::scripted(0, &["--greeting-name", "relay.test"]);
    let relay = Relay::start(settings(&[("*", &sink.addr.to_string())]));
    let id = send(&relay, "x@elsewhere.test", "greeting");
    assert_bounced_as_loop(
        &relay,
        &id,
        "x@elsewhere.test",
        "greeted me with my own hostname relay.test",
    );
    assert!(sink.messages().is_empty(), "nothing handed to the hop");
}

#[test]
fn a_next_hop_answering_ehlo_with_our_own_name_bounces() {
    let sink = Sink::scripted(0, &["--ehlo-name", "RELAY.TEST"]);
    let relay = Relay::start(settings(&[("*", &sink.addr.to_string())]));
    let id = send(&relay, "x@elsewhere.test", "ehlo");
    assert_bounced_as_loop(
        &relay,
        &id,
        "x@elsewhere.test",
        "replied to EHLO with my own hostname relay.test",
    );
}

/// Sends a message with `hops` Received fields through python's smtplib; returns the
/// reply code and text to the end of data.
fn send_with_hops(relay: &Relay, hops: usize) -> (u16, String) {
    let script = r#"
import smtplib, sys
host, port, hops = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
trace = "".join("Received: from hop%d.example by hop%d.example; Fri, 4 Dec 2026 18:00:00 +0000\r\n" % (i, i + 1) for i in range(hops))
msg = trace + "From: alice@example.test\r\nSubject: hops\r\n\r\nbody\r\n"
s = smtplib.SMTP(host, port, timeout=20)
s.ehlo("client.test")
s.mail("alice@example.test")
s.rcpt("bob@example.test")
code, text = s.data(msg.encode())
print(code, text.decode())
s.quit()
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(relay.addr.ip().to_string())
        .arg(relay.addr.port().to_string())
        .arg(hops.to_string())
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let (code, text) = line.split_once(' ').expect("code and text");
    (code.parse().expect("code"), text.to_string())
}

fn more_received_fields_than_the_hop_limit_are_refused(engine: Engine) {
    let relay = Relay::start(settings_on(engine, &[]));
    let (code, text) = send_with_hops(&relay, 51);
    assert_eq!(code, 554, "{text}");
    assert!(text.starts_with("5.4.6 Too many hops"), "{text}");
    let (code, text) = send_with_hops(&relay, 50);
    assert_eq!(code, 250, "the default limit is 50: {text}");
    // The limit is a key.
    let mut settings = settings_on(engine, &[]);
    settings.smtp_toml = "hopcount_limit = 3\n".into();
    let relay = Relay::start(settings);
    assert_eq!(send_with_hops(&relay, 4).0, 554);
    assert_eq!(send_with_hops(&relay, 3).0, 250);
}

#[test]
fn a_second_relay_with_our_host_name_as_the_next_hop_bounces() {
    // Two relays (both named relay.test by tests/common) route a domain to each other: the
    // address checks cannot see it (the other is a different listener), the greeting can.
    let (a_port, b_port) = (free_port(), free_port());
    let mut a = settings(&[("pingpong.test", &format!("127.0.0.1:{b_port}"))]);
    a.smtp_listen = format!("127.0.0.1:{a_port}");
    let mut b = settings(&[("pingpong.test", &format!("127.0.0.1:{a_port}"))]);
    b.smtp_listen = format!("127.0.0.1:{b_port}");
    let relay_a = Relay::start(a);
    let relay_b = Relay::start(b);
    let id = send(&relay_a, "x@pingpong.test", "pingpong");
    assert_bounced_as_loop(
        &relay_a,
        &id,
        "x@pingpong.test",
        "greeted me with my own hostname relay.test",
    );
    assert!(
        relay_b.accepted_ids().is_empty(),
        "the other relay took nothing in"
    );
}
