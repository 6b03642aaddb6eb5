//! `relay node drain`: a node hands its outbound queue to a peer over the cluster listener
//! (mutual TLS), each message with its schedule, while the next hop is down; the peer then
//! delivers each message exactly once. Real `relay serve` processes on 127.0.0.2 and
//! 127.0.0.3, the scripted sink (tests/py/scripted_sink.py) as the next hop, started only
//! once the queue has moved.

#[allow(unused_macros)] // the engine_tests! macro is for the server tests
mod common;

use std::collections::HashMap;
use std::io::Read;
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::sinks::{free_port, Sink};
use common::{Engine, Relay};

/// Long retry intervals: nothing is retried by itself during a test; a flush on the node
/// that holds the queue sends it.
const SLOW_RETRY: &str =
    "[delivery]\nretry_intervals = [\"1h\"]\nretry_every = \"2h\"\nretry_jitter_percent = 0\n";

/// Retries every two seconds: the peer sends what it took over on the schedule it came with.
const FAST_RETRY: &str =
    "[delivery]\nretry_intervals = [\"2s\"]\nretry_every = \"2s\"\nretry_jitter_percent = 0\n";

fn settings(cluster: &Cluster, name: &str, sink_port: u16) -> common::Settings {
    settings_with(cluster, name, sink_port, SLOW_RETRY)
}

fn settings_with(cluster: &Cluster, name: &str, sink_port: u16, retry: &str) -> common::Settings {
    let mut s = cluster.settings(name, Engine::Uring, retry);
    s.routes = vec![("*".into(), format!("127.0.0.1:{sink_port}"))];
    s
}

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

/// `relay queue list --json`: recipient address → (arrival, sender, attempts, next, reply).
type Listed = HashMap<String, (u64, String, u64, Option<u64>, Option<String>)>;

fn queue(relay: &Relay) -> Listed {
    let text = ok_stdout(&relay_args(relay, &["queue", "list", "--json"]));
    let list: serde_json::Value = serde_json::from_str(&text).expect("queue list JSON");
    let mut out = HashMap::new();
    for m in list.as_array().expect("a list") {
        for r in m["recipients"].as_array().expect("recipients") {
            let address = r["address"].as_str().expect("address").to_string();
            let twice = out.insert(
                address.clone(),
                (
                    m["arrival_unix_micros"].as_u64().expect("arrival"),
                    m["sender"].as_str().expect("sender").to_string(),
                    r["attempts"].as_u64().expect("attempts"),
                    r["next_attempt_unix_micros"].as_u64(),
                    r["last_reply"].as_str().map(str::to_string),
                ),
            );
            assert!(twice.is_none(), "{address} queued twice: {text}");
        }
    }
    out
}

/// Waits (bounded polling: no event marks "the queue emptied") until `relay`'s queue is
/// empty.
fn wait_queue_empty(relay: &Relay, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let q = queue(relay);
        if q.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "queue not empty: {q:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn body(tag: &str) -> Vec<u8> {
    format!("From: sender@example.test\r\nSubject: {tag}\r\n\r\nbody of {tag}\r\n").into_bytes()
}

/// Sends `n` messages to `a`, one remote recipient each. With `attempted`, each is tried
/// (and deferred: the next hop is down) before the next is sent: a flush lifts the dead
/// destination's hold and retries everything queued, so the k-th message from the end has
/// k attempts behind it.
fn queue_up(a: &Relay, n: usize, prefix: &str, attempted: bool) -> Vec<String> {
    let mut tags = Vec::new();
    for i in 0..n {
        let tag = format!("{prefix}-{i}");
        let rcpt = format!("{tag}@remote.test");
        let id = a.deliver(&[rcpt.as_str()], &body(&tag));
        tags.push(tag);
        if !attempted {
            continue;
        }
        // The hand-off to the delivery core may come after a flush: flush until it is tried.
        let mut tries = 0;
        loop {
            ok_stdout(&relay_args(a, &["queue", "flush"]));
            let deferred = a.log().wait_for(Duration::from_secs(3), |l| {
                common::has_all(l, &["relay::delivery", &id, "status=\"deferred\""])
            });
            if deferred.is_some() {
                break;
            }
            tries += 1;
            assert!(tries < 10, "{id} never tried");
        }
    }
    tags
}

/// Each tag's message arrived at the sink exactly once, and nothing else did.
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

#[test]
fn drain_moves_the_queue_with_its_schedule_and_the_peer_delivers_once() {
    let cluster = Cluster::new(&["a", "b"], "");
    let port = free_port();
    let a = cluster.start("a", settings(&cluster, "a", port));
    let b = cluster.start("b", settings(&cluster, "b", port));
    let tags = queue_up(&a, 5, "drain", true);
    // The last flush's attempts are recorded a moment after their log lines: read the
    // queue until it stops changing (bounded polling: no event marks it).
    let mut before = queue(&a);
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(300));
        let again = queue(&a);
        if again == before {
            break;
        }
        before = again;
    }
    assert_eq!(before.len(), 5, "{before:?}");
    let mut attempts: Vec<u64> = before.values().map(|v| v.2).collect();
    attempts.sort();
    assert!(attempts[0] >= 1, "{before:?}");
    assert!(
        attempts[4] > 1,
        "several attempts on the oldest: {before:?}"
    );
    for (_, _, _, next, reply) in before.values() {
        assert!(next.is_some() && reply.is_some(), "{before:?}");
    }

    let out = ok_stdout(&relay_args(&a, &["node", "drain"]));
    assert!(out.contains("drained: the queue is empty"), "{out}");
    assert!(out.contains("5 transferred"), "{out}");

    // A's queue is empty; B holds every message with A's schedule, not "now".
    assert!(queue(&a).is_empty());
    let after = queue(&b);
    assert_eq!(after.len(), 5, "{after:?}");
    for (rcpt, was) in &before {
        let now = after
            .get(rcpt)
            .unwrap_or_else(|| panic!("{rcpt} not on b: {after:?}"));
        assert_eq!(
            now, was,
            "{rcpt}: arrival, sender, attempts, next attempt, last reply"
        );
    }

    // The drained node takes no new client connection (closed before any greeting).
    let mut conn = std::net::TcpStream::connect(a.addr).expect("connect to a");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut buf = [0u8; 64];
    assert_eq!(
        conn.read(&mut buf).unwrap_or(0),
        0,
        "a greeted a client while draining"
    );

    // The next hop comes up; B sends each message once, A nothing.
    let sink = Sink::scripted(port, &[]);
    ok_stdout(&relay_args(&b, &["queue", "flush"]));
    sink.wait_messages(5, Duration::from_secs(30));
    wait_queue_empty(&b, Duration::from_secs(30));
    assert_each_once(&sink, &tags);
    assert!(
        !a.log_contains("status=\"sent\""),
        "the drained node delivered something itself"
    );

    // Resume: A takes client connections again.
    let out = ok_stdout(&relay_args(&a, &["node", "resume"]));
    assert!(out.contains("resumed"), "{out}");
    let client = a.client();
    client.quit();
}

#[test]
fn a_drainer_killed_mid_transfer_and_drained_again_loses_nothing_and_sends_nothing_twice() {
    let cluster = Cluster::new(&["a", "b"], "");
    let port = free_port();
    let a = cluster.start("a", settings_with(&cluster, "a", port, FAST_RETRY));
    let b = cluster.start("b", settings_with(&cluster, "b", port, FAST_RETRY));
    let tags = queue_up(&a, 30, "kill", false);

    // The drain runs in the background; A dies once B stored a few transfers.
    let config = a.config_path.to_str().expect("utf-8 path").to_string();
    let mut drain = std::process::Command::new(common::relay_bin())
        .args(["node", "drain", "--config", &config])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("relay node drain");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stored = b
            .log_lines()
            .iter()
            .filter(|l| l.contains("transfer stored with its schedule"))
            .count();
        if stored >= 5 {
            break;
        }
        assert!(Instant::now() < deadline, "b stored {stored} transfers");
        std::thread::sleep(Duration::from_millis(5));
    }
    a.kill9();
    let _ = drain.wait();

    // Restarted, A still holds what it had not handed over; a second drain finishes.
    let a = a.restart(settings_with(&cluster, "a", port, FAST_RETRY));
    let out = ok_stdout(&relay_args(&a, &["node", "drain"]));
    assert!(out.contains("drained: the queue is empty"), "{out}");
    assert!(queue(&a).is_empty());
    let on_b = queue(&b);
    assert_eq!(on_b.len(), 30, "every recipient once on b: {on_b:?}");

    // The next hop comes up: B sends each message on its own retry schedule, once (its 20
    // connections at once need the sink's listen backlog: tests/py/scripted_sink.py).
    let sink = Sink::scripted(port, &[]);
    sink.wait_messages(30, Duration::from_secs(60));
    wait_queue_empty(&b, Duration::from_secs(30));
    assert_each_once(&sink, &tags);
}

/// One transfer conversation as a draining node holds it: mutual TLS with ALPN `relay-xfer`
/// to a peer's cluster listener, presenting node `from`'s certificate.
fn xfer_conn(
    cluster: &Cluster,
    from: &str,
    to: &str,
) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let cert = &cluster.node(from).cert;
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_file_iter(&cluster.ca.cert_path)
        .expect("CA")
        .flatten()
    {
        roots.add(der).expect("CA cert");
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert.cert_path)
        .expect("cert")
        .flatten()
        .collect();
    let key = PrivateKeyDer::from_pem_file(&cert.key_path).expect("key");
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .expect("client cert");
    config.alpn_protocols = vec![b"relay-xfer".to_vec()];
    let addr = cluster.node(to).cluster;
    let conn = rustls::ClientConnection::new(
        std::sync::Arc::new(config),
        ServerName::IpAddress(addr.ip().into()),
    )
    .expect("client");
    let tcp = std::net::TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    rustls::StreamOwned::new(conn, tcp)
}

/// Sends `lines` (CRLF added) and returns each reply's first line.
fn converse(
    stream: &mut rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>,
    lines: &[String],
) -> Vec<String> {
    use std::io::{BufRead, Write};
    let mut replies = Vec::new();
    let mut reader = std::io::BufReader::new(stream);
    let read_reply = |reader: &mut std::io::BufReader<_>| loop {
        let mut line = String::new();
        let n = std::io::BufRead::read_line(reader, &mut line).expect("reply");
        assert!(n > 0, "connection closed");
        if line.as_bytes().get(3) != Some(&b'-') {
            return line.trim_end().to_string();
        }
    };
    replies.push(read_reply(&mut reader));
    for l in lines {
        let w = reader.get_mut();
        w.write_all(l.as_bytes()).expect("write");
        if !l.ends_with("\r\n") {
            w.write_all(b"\r\n").expect("write");
        }
        w.flush().expect("flush");
        replies.push(read_reply(&mut reader));
    }
    let _ = reader.fill_buf();
    replies
}

/// A transfer sent twice (the drainer died between the peer's 250 and its own record) is
/// stored once, also when the peer was killed (-9) in between; it keeps its schedule.
#[test]
fn a_transfer_sent_twice_is_stored_once() {
    use relay::envelope::{Envelope, QueueId};
    use relay::queue::xfer::{commands, export, ExportInput, XSched};
    let cluster = Cluster::new(&["a", "b"], "");
    let port = free_port();
    let b = cluster.start("b", settings(&cluster, "b", port));
    // An hour from now (the peer caps a next attempt at its own delivery.max_age).
    let next = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_micros() as u64
        + 3_600_000_000;
    let envelope = Envelope {
        reverse_path: "sender@example.test".into(),
        ..Envelope::default()
    };
    let transfer = export(ExportInput {
        node: "a",
        id: QueueId::new(1_796_000_000_000_000, 1),
        arrival_unix_micros: 1_796_000_000_000_000,
        envelope: &envelope,
        pending: vec![(
            "twice@remote.test".into(),
            XSched {
                attempts: 3,
                next_attempt_unix_micros: Some(next),
                last_attempt_unix_micros: Some(1_796_000_100_000_000),
                last_reply: Some("451 4.7.1 later".into()),
                delay_noticed: false,
            },
        )],
    });
    let (mail, rcpts) = commands(&transfer);
    let mut lines = vec!["EHLO a".to_string(), mail];
    lines.extend(rcpts);
    lines.push("DATA".into());
    lines.push("Subject: twice\r\n\r\nonce only\r\n.".into());
    lines.push("QUIT".into());
    let send = || {
        let mut stream = xfer_conn(&cluster, "a", "b");
        converse(&mut stream, &lines)
    };
    let first = send();
    assert!(first[5].starts_with("250 "), "{first:?}");
    let again = send();
    assert!(again[5].starts_with("250 "), "{again:?}");
    assert!(again[5].contains("already"), "{again:?}");
    b.kill9();
    let b = b.restart(settings(&cluster, "b", port));
    let after_crash = send();
    assert!(after_crash[5].contains("already"), "{after_crash:?}");
    let q = queue(&b);
    assert_eq!(q.len(), 1, "{q:?}");
    let (arrival, sender, attempts, next_listed, reply) = &q["twice@remote.test"];
    assert_eq!(*arrival, 1_796_000_000_000_000);
    assert_eq!(sender, "sender@example.test");
    assert_eq!(*attempts, 3);
    assert_eq!(next_listed.map(|n| n / 1000), Some(next / 1000));
    assert_eq!(reply.as_deref(), Some("451 4.7.1 later"));
    // Without XQUEUE the transfer channel refuses the transaction.
    let mut stream = xfer_conn(&cluster, "a", "b");
    let r = converse(
        &mut stream,
        &["EHLO a".into(), "MAIL FROM:<x@example.test>".into()],
    );
    assert!(r[2].starts_with("501"), "{r:?}");
}
