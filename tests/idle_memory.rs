//! Memory per idle connection, on the real relay: SMTP, POP3 and IMAP connections that were
//! greeted (and, for TLS, ran STARTTLS/STLS and a handshake) and then stay silent, on both
//! engines. The growth is a slope read from /proc (the relay's RSS once a warm-up share of the
//! connections is open, and again once all are), so what the process holds anyway is not
//! counted. The bounds are generous against the targets (8 KiB plaintext, 16 KiB inside
//! TLS, docs/ARCHITECTURE.md §12; a debug build's futures are larger than a release build's)
//! and below what each connection held before its read buffer and task shrank (12 and
//! 26 KiB in a release build), and inside TLS before rustls's own ciphertext buffer went
//! (15-18 KiB in a debug build, 10-13 KiB after).
//!
//! Also through the real relay, the cases a small idle buffer must not break: a command
//! arriving a byte at a time, an over-long line still refused with the right reply, a line
//! longer than the small buffer, and a message of several MiB stored whole (after which the
//! connection idles small again).

#[macro_use]
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use common::tls::{self as testtls, TestCert};
use common::{Engine, Relay, Settings};

engine_tests! {
    idle_smtp: idle_smtp_uring, idle_smtp_epoll;
    idle_smtp_tls: idle_smtp_tls_uring, idle_smtp_tls_epoll;
    idle_pop3: idle_pop3_uring, idle_pop3_epoll;
    idle_pop3_tls: idle_pop3_tls_uring, idle_pop3_tls_epoll;
    idle_imap: idle_imap_uring, idle_imap_epoll;
    idle_after_a_message: idle_after_a_message_uring, idle_after_a_message_epoll;
    small_reads_long_lines_and_large_data: small_reads_long_lines_and_large_data_uring, small_reads_long_lines_and_large_data_epoll;
}

/// Connections opened before the first sample (the process's own growth settles).
const WARM: usize = 200;
/// Connections opened between the two samples: the slope's run.
const MEASURED: usize = 800;
/// KiB per idle plaintext connection.
const PLAIN_BOUND_KIB: f64 = 10.0;
/// KiB per idle connection inside TLS.
const TLS_BOUND_KIB: f64 = 14.0;

/// Raises the soft `nofile` limit to hold every connection of the tests running at once.
fn enough_descriptors() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    let needed = 16 * (WARM + MEASURED) as u64;
    let target = limit.maximum.map_or(needed, |hard| hard.min(needed));
    if limit.current.is_some_and(|soft| soft < target) {
        limit.current = Some(target);
        setrlimit(Resource::Nofile, limit).expect("raise the soft nofile limit");
    }
}

/// The relay's resident memory in KiB (`/proc/PID/smaps_rollup`).
fn rss_kib(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).expect("smaps_rollup");
    text.lines()
        .find_map(|line| line.strip_prefix("Rss:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("an Rss line")
}

fn start(engine: Engine, tls: bool) -> (Relay, Option<TestCert>) {
    start_with(Settings::new(engine), tls)
}

fn start_with(mut settings: Settings, tls: bool) -> (Relay, Option<TestCert>) {
    enough_descriptors();
    settings.connections_per_ip_max = 4 * (WARM + MEASURED);
    settings.server_toml = format!("connections_per_core_max = {}\n", 4 * (WARM + MEASURED));
    let dir = common::new_workdir();
    let cert = tls.then(|| TestCert::generate(dir.path(), "idle"));
    if let Some(cert) = &cert {
        settings.extra_toml = cert.toml();
    }
    (Relay::start_in(dir, settings), cert)
}

/// A connection the test keeps open: the socket, or the TLS session over it.
enum Held {
    Plain(#[allow(dead_code)] TcpStream),
    Tls(#[allow(dead_code)] Box<testtls::TlsStream>),
}

#[derive(Clone, Copy)]
enum Protocol {
    Smtp,
    Pop3,
    /// Plaintext only here: `benches/idle_connections.sh … tls imap` has its TLS figure.
    Imap,
}

/// Opens one connection and leaves it waiting for a command.
fn open(addr: SocketAddr, protocol: Protocol, cert: Option<&TestCert>) -> Held {
    let (mut socket, greeting) = testtls::connect(addr);
    let ok = match protocol {
        Protocol::Smtp => "220 ",
        Protocol::Pop3 => "+OK",
        Protocol::Imap => "* OK",
    };
    assert!(greeting.starts_with(ok), "greeting: {greeting}");
    let Some(cert) = cert else {
        return Held::Plain(socket);
    };
    match protocol {
        Protocol::Smtp => {
            testtls::send(&mut socket, "EHLO client.test\r\n");
            let ehlo = testtls::read_reply(&mut socket);
            assert!(ehlo.contains("STARTTLS"), "{ehlo}");
            testtls::send(&mut socket, "STARTTLS\r\n");
            let reply = testtls::read_reply(&mut socket);
            assert!(reply.starts_with("220 "), "{reply}");
        }
        Protocol::Pop3 => {
            testtls::send(&mut socket, "STLS\r\n");
            let reply = testtls::read_reply(&mut socket);
            assert!(reply.starts_with("+OK"), "{reply}");
        }
        Protocol::Imap => unreachable!("IMAP is measured in plaintext here"),
    }
    let (stream, _) =
        testtls::client_handshake(socket, cert.client_config()).expect("TLS handshake");
    Held::Tls(Box::new(stream))
}

/// KiB the relay grew per connection from `WARM` to `WARM + MEASURED` connections that
/// `open_one` left idle.
fn slope(relay: &Relay, mut open_one: impl FnMut() -> Held) -> f64 {
    let mut held: Vec<Held> = (0..WARM).map(|_| open_one()).collect();
    let before = rss_kib(relay.pid());
    held.extend((0..MEASURED).map(|_| open_one()));
    let after = rss_kib(relay.pid());
    // Every connection is still open when the second sample is taken.
    assert_eq!(held.len(), WARM + MEASURED);
    after.saturating_sub(before) as f64 / MEASURED as f64
}

fn idle(engine: Engine, protocol: Protocol, tls: bool) {
    let (relay, cert) = start(engine, tls);
    let addr = match protocol {
        Protocol::Smtp => relay.addr,
        Protocol::Pop3 => relay.pop3_addr,
        Protocol::Imap => relay.listening("imap").expect("imap listener"),
    };
    let per = slope(&relay, || open(addr, protocol, cert.as_ref()));
    let bound = if tls { TLS_BOUND_KIB } else { PLAIN_BOUND_KIB };
    eprintln!("{engine:?} tls={tls}: {per:.1} KiB per idle connection");
    assert!(
        per <= bound,
        "{per:.1} KiB per idle connection (tls={tls}), bound {bound} KiB"
    );
}

fn idle_smtp(engine: Engine) {
    idle(engine, Protocol::Smtp, false);
}

fn idle_smtp_tls(engine: Engine) {
    idle(engine, Protocol::Smtp, true);
}

fn idle_pop3(engine: Engine) {
    idle(engine, Protocol::Pop3, false);
}

fn idle_pop3_tls(engine: Engine) {
    idle(engine, Protocol::Pop3, true);
}

/// An IMAP connection waiting for its first command (the drive's rare waits are boxed).
fn idle_imap(engine: Engine) {
    idle(engine, Protocol::Imap, false);
}

/// Runs a whole transaction of `body` on a greeted SMTP connection; the final reply.
fn send_message(stream: &mut TcpStream, body: &[u8]) -> String {
    testtls::send(stream, "EHLO client.test\r\n");
    testtls::read_reply(stream);
    testtls::send(
        stream,
        "MAIL FROM:<a@example.test>\r\nRCPT TO:<one@example.test>\r\nDATA\r\n",
    );
    for _ in 0..3 {
        let reply = testtls::read_reply(stream);
        assert!(
            reply.starts_with('2') || reply.starts_with("354"),
            "{reply}"
        );
    }
    stream.write_all(body).expect("write the body");
    stream.write_all(b"\r\n.\r\n").expect("end the data");
    testtls::read_reply(stream)
}

/// Connections that each sent 64 KiB of message data (their read buffer grew to a chunk
/// for it) and then wait for the next command: the large buffer is not kept. The data is
/// over `smtp.message_size_max` and refused at its end, so no stored message (spool index,
/// mailbox) adds to the slope.
fn idle_after_a_message(engine: Engine) {
    let mut settings = Settings::new(engine);
    settings.message_size_max = "16KiB".into();
    let (relay, _) = start_with(settings, false);
    let body: Vec<u8> = (0..64 * 1024 / 64)
        .flat_map(|i| format!("{i:061}\r\n").into_bytes())
        .collect();
    let per = slope(&relay, || {
        let (mut socket, _) = testtls::connect(relay.addr);
        let reply = send_message(&mut socket, &body);
        assert!(reply.starts_with("552 "), "{reply}");
        Held::Plain(socket)
    });
    eprintln!("{engine:?}: {per:.1} KiB per connection idle after 64 KiB of data");
    assert!(
        per <= PLAIN_BOUND_KIB,
        "{per:.1} KiB per idle connection after a message, bound {PLAIN_BOUND_KIB} KiB"
    );
}

/// Reads until `needle` or the end; what came.
fn read_until(stream: &mut TcpStream, needle: &str) -> String {
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(needle) {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

fn small_reads_long_lines_and_large_data(engine: Engine) {
    let (relay, _) = start(engine, false);
    let (mut socket, _) = testtls::connect(relay.addr);
    socket.set_nodelay(true).expect("nodelay");
    // A command a byte at a time: many reads of one octet each, one command.
    for byte in b"EHLO bytewise.test\r\n" {
        socket.write_all(&[*byte]).expect("write a byte");
    }
    let reply = testtls::read_reply(&mut socket);
    assert!(reply.starts_with("250-"), "{reply}");
    // A line past the command line limit (512 by default), in pieces larger and smaller
    // than the idle buffer: refused with 500 5.5.2 once, and the session goes on.
    let long = format!("NOOP {}\r\n", "x".repeat(200_000));
    for piece in long.as_bytes().chunks(3000) {
        socket.write_all(piece).expect("write a piece");
    }
    let reply = testtls::read_reply(&mut socket);
    assert!(reply.starts_with("500 5.5.2"), "{reply}");
    testtls::send(&mut socket, "NOOP\r\n");
    let reply = testtls::read_reply(&mut socket);
    assert!(reply.starts_with("250 "), "{reply}");
    // A line longer than the idle buffer but within the limit: one command, answered.
    let rcpt_pad = "y".repeat(400);
    testtls::send(
        &mut socket,
        &format!("MAIL FROM:<{rcpt_pad}@example.test>\r\n"),
    );
    let reply = testtls::read_reply(&mut socket);
    assert!(!reply.starts_with("500 5.5.2"), "not too long: {reply}");
    testtls::send(&mut socket, "RSET\r\n");
    let reply = testtls::read_reply(&mut socket);
    assert!(reply.starts_with("250 "), "{reply}");
    // 6 MiB of data, stored whole.
    let body: Vec<u8> = (0..(6 << 20) / 78)
        .flat_map(|i| format!("{i:076}\r\n").into_bytes())
        .collect();
    let reply = send_message(&mut socket, &body);
    assert!(reply.starts_with("250 "), "{reply}");
    let id = reply
        .split_whitespace()
        .find(|word| common::is_queue_id(word))
        .unwrap_or_else(|| panic!("a queue id in {reply}"))
        .to_string();
    relay.wait_accepted(&id);
    let mut sent = body;
    sent.extend_from_slice(b"\r\n");
    common::assert_stored(&relay.spool_dir, &id, &sent);
    testtls::send(&mut socket, "QUIT\r\n");
    assert!(read_until(&mut socket, "221").contains("221"));
}
