//! PROXY protocol (v1 and v2) on listeners that enable it: the relay behind a load balancer
//! sees the client the header names, for relay control, limits, logs and the Received
//! header; a connection without a valid header is closed without a greeting. On listeners
//! that do not enable it, a `PROXY` line is only an unknown SMTP command.
//!
//! The real binary on port 0, driven by raw sockets (the test plays the load balancer), both
//! engines.

#[macro_use]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::smtp::message;
use common::{field_value, split_received, Client, Engine, Relay, Settings};
use relay::net::proxy::encode_v2;

engine_tests! {
    v1_header_names_the_client: v1_header_names_the_client_uring, v1_header_names_the_client_epoll;
    v2_header_names_the_client: v2_header_names_the_client_uring, v2_header_names_the_client_epoll;
    relay_control_uses_the_named_client: relay_control_uses_the_named_client_uring, relay_control_uses_the_named_client_epoll;
    command_pipelined_behind_the_header_is_answered: command_pipelined_behind_the_header_is_answered_uring, command_pipelined_behind_the_header_is_answered_epoll;
    missing_header_closes_without_greeting: missing_header_closes_without_greeting_uring, missing_header_closes_without_greeting_epoll;
    garbage_header_closes_without_greeting: garbage_header_closes_without_greeting_uring, garbage_header_closes_without_greeting_epoll;
    local_and_unknown_have_no_relay_rights: local_and_unknown_have_no_relay_rights_uring, local_and_unknown_have_no_relay_rights_epoll;
    local_and_unknown_keep_the_socket_address_when_allowed: local_and_unknown_keep_the_socket_address_when_allowed_uring, local_and_unknown_keep_the_socket_address_when_allowed_epoll;
    pop3_local_and_unknown_are_not_loopback: pop3_local_and_unknown_are_not_loopback_uring, pop3_local_and_unknown_are_not_loopback_epoll;
    pop3_header_names_the_client: pop3_header_names_the_client_uring, pop3_header_names_the_client_epoll;
    header_refused_where_not_enabled: header_refused_where_not_enabled_uring, header_refused_where_not_enabled_epoll;
}

const V1_OUTSIDE: &[u8] = b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 25\r\n";
/// Only `127.0.0.0/8` and `::1` may relay in the test config.
const REMOTE_RCPT: &str = "RCPT TO:<someone@remote.test>";

fn proxied_relay(engine: Engine) -> Relay {
    Relay::start(Settings {
        proxy_protocol: Some(true),
        ..Settings::new(engine)
    })
}

/// Connects as the load balancer: sends `header`, then reads the greeting, which must be 220.
fn via_proxy(relay: &Relay, header: &[u8]) -> Client {
    let mut client = Client::connect(relay.addr).expect("connect");
    client.send(header).expect("send header");
    let greeting = client.read_reply().expect("greeting after the header");
    assert_eq!(greeting.code, 220, "{greeting}");
    client
}

fn v2_header(source: &str) -> Vec<u8> {
    let source: SocketAddr = source.parse().expect("address");
    encode_v2(source, "127.0.0.1:25".parse().expect("address"), &[])
}

/// One local delivery on `client`; returns the `accepted` log line and the stored message.
fn deliver_locally(relay: &Relay, client: &mut Client, marker: &str) -> (String, Vec<u8>) {
    client.ehlo();
    let reply = client
        .transaction(
            "sender@example.test",
            &["one@example.test"],
            &message(marker, &[]),
        )
        .expect("transaction");
    assert_eq!(reply.code, 250, "{reply}");
    let id = reply.queue_id().expect("queue id");
    let line = relay.wait_accepted(&id);
    (line, relay.spool_cat(&id))
}

fn assert_client(relay: &Relay, header: &[u8], ip: &str) {
    let mut client = via_proxy(relay, header);
    let (line, stored) = deliver_locally(relay, &mut client, "proxied");
    assert_eq!(field_value(&line, "client").as_deref(), Some(ip), "{line}");
    let (received, _) = split_received(&stored);
    let received = String::from_utf8_lossy(received);
    assert!(received.contains(&format!("{ip}]")), "{received}");
    client.quit();
}

fn v1_header_names_the_client(engine: Engine) {
    let relay = proxied_relay(engine);
    assert_client(&relay, V1_OUTSIDE, "192.0.2.7");
    assert_client(
        &relay,
        b"PROXY TCP6 2001:db8::7 ::1 40000 25\r\n",
        "2001:db8::7",
    );
}

fn v2_header_names_the_client(engine: Engine) {
    let relay = proxied_relay(engine);
    assert_client(&relay, &v2_header("192.0.2.7:5555"), "192.0.2.7");
    assert_client(&relay, &v2_header("[2001:db8::7]:1"), "2001:db8::7");
    // TLVs after the addresses are skipped.
    let with_tlv = encode_v2(
        "192.0.2.8:1".parse().expect("address"),
        "127.0.0.1:25".parse().expect("address"),
        &[0x04, 0, 2, 0xca, 0xfe],
    );
    assert_client(&relay, &with_tlv, "192.0.2.8");
}

fn relay_control_uses_the_named_client(engine: Engine) {
    let relay = proxied_relay(engine);
    for header in [V1_OUTSIDE.to_vec(), v2_header("192.0.2.7:5555")] {
        let mut client = via_proxy(&relay, &header);
        client.ehlo();
        client.expect("MAIL FROM:<sender@example.test>", 250);
        let reply = client.cmd(REMOTE_RCPT).expect("rcpt");
        assert!(
            reply.is(554, "5.7.1"),
            "outside client may not relay: {reply}"
        );
        client.quit();
    }
    for header in [
        b"PROXY TCP4 127.0.0.5 127.0.0.1 5555 25\r\n".to_vec(),
        v2_header("127.0.0.5:5555"),
    ] {
        let mut client = via_proxy(&relay, &header);
        client.ehlo();
        client.expect("MAIL FROM:<sender@example.test>", 250);
        client.expect(REMOTE_RCPT, 250);
        client.expect("RSET", 250);
        client.quit();
    }
}

fn command_pipelined_behind_the_header_is_answered(engine: Engine) {
    let relay = proxied_relay(engine);
    for header in [V1_OUTSIDE.to_vec(), v2_header("192.0.2.7:5555")] {
        let mut client = Client::connect(relay.addr).expect("connect");
        let mut write = header.clone();
        write.extend_from_slice(b"EHLO client.test\r\n");
        client.send(&write).expect("send");
        assert_eq!(client.read_reply().expect("greeting").code, 220);
        let ehlo = client.read_reply().expect("EHLO reply");
        assert_eq!(ehlo.code, 250, "{ehlo}");
        client.expect("NOOP", 250);
        client.quit();
    }
}

fn missing_header_closes_without_greeting(engine: Engine) {
    // The header must arrive within min(10s, command_timeout).
    let relay = Relay::start(Settings {
        proxy_protocol: Some(true),
        command_timeout: "1s".into(),
        ..Settings::new(engine)
    });
    let mut client = Client::connect(relay.addr).expect("connect");
    client
        .expect_eof(Duration::from_secs(20))
        .expect("closed without a greeting");
    relay.wait_log(
        &[
            "connection closed without a PROXY header",
            "no complete header",
        ],
        Duration::from_secs(10),
    );
    // The core slot it held is free again: a proper connection is served.
    assert_client(&relay, V1_OUTSIDE, "192.0.2.7");
}

fn garbage_header_closes_without_greeting(engine: Engine) {
    let relay = proxied_relay(engine);
    let mut bad_version = v2_header("192.0.2.7:5555");
    bad_version[12] = 0x11;
    let cases: [(&[u8], &str); 5] = [
        (b"EHLO client.test\r\n", "no PROXY protocol signature"),
        (
            b"PROXY TCP4 192.0.2.7 127.0.0.1 99999 25\r\n",
            "malformed PROXY v1 header",
        ),
        (b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 25\n", "CRLF"),
        (&bad_version, "PROXY v2 version 1"),
        (&[b'x'; 200], "no PROXY protocol signature"),
    ];
    for (garbage, reason) in cases {
        let mut client = Client::connect(relay.addr).expect("connect");
        client.send(garbage).expect("send");
        client
            .expect_eof(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{garbage:?} must close without a greeting: {e}"));
        relay.wait_log(
            &["connection closed without a PROXY header", reason],
            Duration::from_secs(10),
        );
    }
    // An endless v1 line is cut at 107 bytes, without waiting for its end.
    let mut client = Client::connect(relay.addr).expect("connect");
    let mut long = b"PROXY UNKNOWN ".to_vec();
    long.resize(200, b'x');
    client.send(&long).expect("send");
    client
        .expect_eof(Duration::from_secs(10))
        .expect("overlong header closed");
    relay.wait_log(&["longer than 107 bytes"], Duration::from_secs(10));
}

/// v1 `UNKNOWN` and v2 `LOCAL` (the balancer's own health checks): no client is named.
fn anonymous_headers() -> [Vec<u8>; 2] {
    let mut local = v2_header("192.0.2.7:5555");
    local[12] = 0x20; // LOCAL
    [b"PROXY UNKNOWN\r\n".to_vec(), local]
}

/// Issue 14: behind a balancer on the same host the socket's address is 127.0.0.1, which may
/// relay; a connection whose header names no client must not inherit that. It is the
/// unspecified address: no relay rights, not loopback, one admission bucket for all of them.
fn local_and_unknown_have_no_relay_rights(engine: Engine) {
    let relay = proxied_relay(engine);
    for header in anonymous_headers() {
        let mut client = via_proxy(&relay, &header);
        client.ehlo();
        client.expect("MAIL FROM:<sender@example.test>", 250);
        let reply = client.cmd(REMOTE_RCPT).expect("rcpt");
        assert!(
            reply.is(554, "5.7.1"),
            "a connection that names no client relayed: {reply}"
        );
        client.quit();
        assert_client(&relay, &header, "0.0.0.0");
    }
}

/// `smtp.allow_proxy_local_trust = true`: the old behaviour, the socket's address.
fn local_and_unknown_keep_the_socket_address_when_allowed(engine: Engine) {
    let relay = Relay::start(Settings {
        proxy_protocol: Some(true),
        smtp_toml: "allow_proxy_local_trust = true\n".into(),
        ..Settings::new(engine)
    });
    for header in anonymous_headers() {
        assert_client(&relay, &header, "127.0.0.1");
        let mut client = via_proxy(&relay, &header);
        client.ehlo();
        client.expect("MAIL FROM:<sender@example.test>", 250);
        client.expect(REMOTE_RCPT, 250);
        client.expect("RSET", 250);
        client.quit();
    }
}

/// POP3 takes passwords in clear only from loopback: a proxied connection that names no
/// client is not loopback unless `pop3.allow_proxy_local_trust` says so.
fn pop3_local_and_unknown_are_not_loopback(engine: Engine) {
    for (trust, expect) in [(false, "-ERR"), (true, "+OK")] {
        let relay = Relay::start(Settings {
            pop3_proxy_protocol: Some(true),
            pop3_toml: format!("allow_proxy_local_trust = {trust}\n"),
            ..Settings::new(engine)
        });
        for header in anonymous_headers() {
            let mut stream = TcpStream::connect(relay.pop3_addr).expect("connect");
            stream
                .set_read_timeout(Some(Duration::from_secs(20)))
                .expect("timeout");
            let mut write = header.clone();
            write.extend_from_slice(b"USER one\r\n");
            stream.write_all(&write).expect("send");
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut line = String::new();
            reader.read_line(&mut line).expect("greeting");
            assert!(line.starts_with("+OK"), "{line:?}");
            line.clear();
            reader.read_line(&mut line).expect("USER reply");
            assert!(
                line.starts_with(expect),
                "trust {trust}: USER in clear answered {line:?}"
            );
            stream.write_all(b"QUIT\r\n").expect("send");
        }
        relay.stop();
    }
}

fn pop3_header_names_the_client(engine: Engine) {
    // The named client is not on loopback: passwords in clear need the operator's consent
    // (tests/tls.rs has the STLS path).
    let relay = Relay::start(Settings {
        pop3_proxy_protocol: Some(true),
        pop3_toml: "allow_plaintext_auth = true\n".into(),
        ..Settings::new(engine)
    });
    let mut stream = TcpStream::connect(relay.pop3_addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut write = b"PROXY TCP4 198.51.100.9 127.0.0.1 5555 110\r\n".to_vec();
    write.extend_from_slice(b"USER one\r\n");
    stream.write_all(&write).expect("send");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut line = String::new();
    reader.read_line(&mut line).expect("greeting");
    assert!(line.starts_with("+OK relay.test POP3 ready"), "{line:?}");
    line.clear();
    reader.read_line(&mut line).expect("USER reply");
    assert!(line.starts_with("+OK"), "{line:?}");
    stream.write_all(b"PASS password\r\n").expect("send");
    line.clear();
    reader.read_line(&mut line).expect("PASS reply");
    assert!(line.starts_with("+OK"), "{line:?}");
    relay.wait_log(
        &["login", "client=198.51.100.9", "user=one"],
        Duration::from_secs(10),
    );
    stream.write_all(b"QUIT\r\n").expect("send");
    // The SMTP listener did not enable it: a client there is greeted at once.
    Client::greeted(relay.addr).quit();
}

fn header_refused_where_not_enabled(engine: Engine) {
    let relay = Relay::start(Settings::new(engine));
    let mut client = Client::greeted(relay.addr);
    let reply = client
        .cmd("PROXY TCP4 192.0.2.7 127.0.0.1 5555 25")
        .expect("reply");
    assert!(
        reply.is(500, "5.5.1"),
        "PROXY is an unknown command: {reply}"
    );
    // The session goes on, with the socket's address.
    let (line, stored) = deliver_locally(&relay, &mut client, "not-proxied");
    assert_eq!(
        field_value(&line, "client").as_deref(),
        Some("127.0.0.1"),
        "{line}"
    );
    let (received, _) = split_received(&stored);
    let received = String::from_utf8_lossy(received);
    assert!(
        received.contains("[127.0.0.1]") && !received.contains("192.0.2.7"),
        "{received}"
    );
    client.quit();
}
