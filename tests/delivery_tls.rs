//! Outbound TLS end to end: the relay delivers to a scripted next hop on
//! loopback that offers STARTTLS (`tests/py/scripted_sink.py`, Python's `ssl`), with a
//! self-signed certificate made here by `rcgen` (no private key is committed). The sink
//! records per message whether the session was encrypted and how many STARTTLS commands it
//! has seen; the relay's delivery log line names the TLS version (`tls=`).

#[macro_use]
mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::sinks::{split_scripted, Sink};
use common::{Engine, Relay, Settings};

const FAST_RETRY: &str = "[delivery]\nretry_intervals = [\"300ms\"]\nretry_every = \"500ms\"\nretry_jitter_percent = 0\n";
const PATIENCE: Duration = Duration::from_secs(20);

/// A self-signed certificate for `name` (a host name or an IP address) and its key, as PEM
/// files in `dir`; returns (cert, key).
fn certificate(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec![name.to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("self-signed");
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    std::fs::write(&cert_path, cert.pem()).expect("write cert");
    std::fs::write(&key_path, key.serialize_pem()).expect("write key");
    (cert_path, key_path)
}

/// A sink offering STARTTLS with a fresh self-signed certificate for 127.0.0.1.
fn tls_sink() -> (Sink, tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (cert, key) = certificate(dir.path(), "127.0.0.1");
    let option = format!("{}:{}", cert.display(), key.display());
    let sink = Sink::scripted(0, &["--starttls", &option]);
    (sink, dir, cert)
}

/// Every remote domain to `sink` with `tls` (None: the default, opportunistic), plus `extra`.
fn settings(engine: Engine, sink: SocketAddr, tls: Option<&str>, extra: &str) -> Settings {
    let mut settings = Settings::new(engine);
    settings.routes = Vec::new();
    let mut toml = format!("{FAST_RETRY}[[relay.routes]]\ndomain = \"*\"\nto = \"{sink}\"\n");
    if let Some(tls) = tls {
        toml.push_str(&format!("tls = \"{tls}\"\n"));
    }
    toml.push_str(extra);
    settings.extra_toml = toml;
    settings
}

fn send(relay: &Relay, subject: &str) -> String {
    let content = format!(
        "From: alice@example.test\r\nTo: bob@remote.test\r\nSubject: {subject}\r\n\r\nbody of {subject}\r\n"
    );
    let mut client = relay.client();
    client.ehlo();
    let reply = client
        .transaction(
            "alice@example.test",
            &["bob@remote.test"],
            content.as_bytes(),
        )
        .unwrap_or_else(|e| panic!("send: {e}"));
    assert_eq!(reply.code, 250, "{reply}");
    let id = reply.queue_id().expect("queue id");
    client.quit();
    id
}

/// The sink's TLS lines of message file `file`: (TLS:…, STARTTLS-SEEN:…).
fn tls_lines(file: &[u8]) -> (String, String) {
    let (head, _) = split_scripted(file);
    let find = |prefix: &str| {
        head.iter()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} line in {head:?}"))
            .clone()
    };
    (find("TLS:"), find("STARTTLS-SEEN:"))
}

fn opportunistic_tls_to_an_unverifiable_certificate_is_encrypted(engine: Engine) {
    let (sink, _dir, _cert) = tls_sink();
    let relay = Relay::start(settings(engine, sink.addr, None, ""));
    let id = send(&relay, "opportunistic");
    let got = sink.wait_messages(1, PATIENCE);
    let (tls, seen) = tls_lines(&got[0]);
    assert!(tls.starts_with("TLS:TLSv1."), "{tls}");
    assert_eq!(seen, "STARTTLS-SEEN:1");
    relay.wait_log(
        &["relay::delivery", &id, "status=\"sent\"", "tls=\"TLSv1."],
        PATIENCE,
    );
}

fn required_tls_to_an_unverifiable_certificate_defers(engine: Engine) {
    let (sink, _dir, _cert) = tls_sink();
    let relay = Relay::start(settings(engine, sink.addr, Some("required"), ""));
    let id = send(&relay, "required");
    relay.wait_log(
        &[
            "relay::delivery",
            &id,
            "attempt=1",
            "status=\"deferred\"",
            "4.7.5",
        ],
        PATIENCE,
    );
    // Retried (still queued) and deferred again: the certificate does not get better.
    relay.wait_log(
        &[
            "relay::delivery",
            &id,
            "attempt=2",
            "status=\"deferred\"",
            "4.7.5",
        ],
        PATIENCE,
    );
    assert!(sink.messages().is_empty(), "nothing may reach the hop");
    assert!(!relay.log_contains("status=\"sent\""));
}

fn required_tls_with_the_ca_file_is_verified_and_delivered(engine: Engine) {
    let (sink, _dir, cert) = tls_sink();
    let extra = format!(
        "[tls]\nca_file = {:?}\n",
        cert.to_str().expect("utf-8 path")
    );
    let relay = Relay::start(settings(engine, sink.addr, Some("required"), &extra));
    let id = send(&relay, "verified");
    let got = sink.wait_messages(1, PATIENCE);
    let (tls, seen) = tls_lines(&got[0]);
    assert!(tls.starts_with("TLS:TLSv1."), "{tls}");
    assert_eq!(seen, "STARTTLS-SEEN:1");
    relay.wait_log(
        &[
            "relay::delivery",
            &id,
            "attempt=1",
            "status=\"sent\"",
            "tls=\"TLSv1.",
        ],
        PATIENCE,
    );
}

fn a_failed_opportunistic_handshake_falls_back_to_plaintext_and_is_remembered(engine: Engine) {
    let sink = Sink::scripted(0, &["--starttls-garbage"]);
    // The hold is learnt by the core that saw the failure: with the destination on one core
    // the second message is sure to meet it (spread over cores, each core pays one failed
    // handshake before it remembers).
    let mut settings = settings(engine, sink.addr, None, "");
    settings.extra_toml = settings.extra_toml.replacen(
        "[delivery]\n",
        "[delivery]\ndestination_spread = false\n",
        1,
    );
    assert!(settings.extra_toml.contains("destination_spread = false"));
    let relay = Relay::start(settings);
    let first = send(&relay, "first");
    // Delivered in the same attempt, in plaintext, after the one STARTTLS that failed.
    let got = sink.wait_messages(1, PATIENCE);
    assert_eq!(
        tls_lines(&got[0]),
        ("TLS:none".to_string(), "STARTTLS-SEEN:1".to_string())
    );
    relay.wait_log(
        &[
            "relay::delivery",
            &first,
            "attempt=1",
            "status=\"sent\"",
            "tls=\"none\"",
        ],
        PATIENCE,
    );
    relay.wait_log(&["WARN", "TLS handshake failed", "destination="], PATIENCE);
    // A later connection skips STARTTLS: the sink sees no second one.
    let second = send(&relay, "second");
    let got = sink.wait_messages(2, PATIENCE);
    assert_eq!(
        tls_lines(&got[1]),
        ("TLS:none".to_string(), "STARTTLS-SEEN:1".to_string())
    );
    relay.wait_log(
        &["relay::delivery", &second, "attempt=1", "status=\"sent\""],
        PATIENCE,
    );
    let warnings = relay
        .log_lines()
        .iter()
        .filter(|l| l.contains("TLS handshake failed"))
        .count();
    assert_eq!(warnings, 1, "one warning per mark");
}

fn tls_off_never_sends_starttls(engine: Engine) {
    let (sink, _dir, _cert) = tls_sink();
    let relay = Relay::start(settings(engine, sink.addr, Some("off"), ""));
    let id = send(&relay, "off");
    let got = sink.wait_messages(1, PATIENCE);
    assert_eq!(
        tls_lines(&got[0]),
        ("TLS:none".to_string(), "STARTTLS-SEEN:0".to_string())
    );
    relay.wait_log(
        &["relay::delivery", &id, "status=\"sent\"", "tls=\"none\""],
        PATIENCE,
    );
}

engine_tests! {
    opportunistic_tls_to_an_unverifiable_certificate_is_encrypted:
        opportunistic_tls_is_encrypted_uring, opportunistic_tls_is_encrypted_epoll;
    required_tls_to_an_unverifiable_certificate_defers:
        required_tls_unverifiable_defers_uring, required_tls_unverifiable_defers_epoll;
    required_tls_with_the_ca_file_is_verified_and_delivered:
        required_tls_with_ca_file_delivers_uring, required_tls_with_ca_file_delivers_epoll;
    a_failed_opportunistic_handshake_falls_back_to_plaintext_and_is_remembered:
        failed_handshake_falls_back_uring, failed_handshake_falls_back_epoll;
    tls_off_never_sends_starttls:
        tls_off_never_starttls_uring, tls_off_never_starttls_epoll;
}
