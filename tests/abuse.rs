//! Abuse resistance over real sockets: tarpitting past the soft error limit,
//! the per-address message rate, and slow clients cut at their deadline (SMTP commands,
//! SMTP data, POP3 commands). Each body runs on both I/O engines.
//!
//! The trickling clients pace their own bytes (that pacing is the behaviour under test);
//! nothing here sleeps to wait for the relay: every wait is a read with a deadline.

#[macro_use]
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{Engine, Relay, Settings};

engine_tests! {
    errors_past_the_soft_limit_are_delayed: errors_past_the_soft_limit_are_delayed_uring, errors_past_the_soft_limit_are_delayed_epoll;
    message_rate_per_address_answers_450: message_rate_per_address_answers_450_uring, message_rate_per_address_answers_450_epoll;
    trickled_command_is_cut_at_the_deadline: trickled_command_is_cut_at_the_deadline_uring, trickled_command_is_cut_at_the_deadline_epoll;
    trickled_data_is_cut_below_the_minimum_rate: trickled_data_is_cut_below_the_minimum_rate_uring, trickled_data_is_cut_below_the_minimum_rate_epoll;
    trickled_pop3_command_is_cut_at_the_deadline: trickled_pop3_command_is_cut_at_the_deadline_uring, trickled_pop3_command_is_cut_at_the_deadline_epoll;
    pipelined_retr_does_not_pile_up_answers: pipelined_retr_does_not_pile_up_answers_uring, pipelined_retr_does_not_pile_up_answers_epoll;
}

const DELAY: Duration = Duration::from_millis(300);

fn errors_past_the_soft_limit_are_delayed(engine: Engine) {
    let mut settings = Settings::new(engine);
    settings.smtp_toml = "error_delay_after = 10\nerror_delay = \"300ms\"\n".into();
    let relay = Relay::start(settings);
    let mut client = relay.client();
    client.ehlo();
    for n in 1..=10 {
        let started = Instant::now();
        let reply = client.cmd("BOGUS").unwrap();
        assert_eq!(reply.code, 500, "bad command {n}: {reply}");
        if n == 10 {
            // At the soft limit itself: not delayed yet.
            assert!(
                started.elapsed() < DELAY,
                "error 10 took {:?}: the delay starts after 10",
                started.elapsed()
            );
        }
    }
    for n in 11..=12 {
        let started = Instant::now();
        let reply = client.cmd("BOGUS").unwrap();
        let took = started.elapsed();
        assert_eq!(reply.code, 500, "bad command {n}: {reply}");
        assert!(
            took >= DELAY,
            "error {n} answered after {took:?}, not delayed"
        );
    }
    // A good command in between is not delayed.
    let started = Instant::now();
    client.expect("NOOP", 250);
    assert!(
        started.elapsed() < DELAY,
        "NOOP took {:?}",
        started.elapsed()
    );
    client.quit();
    relay.stop();
}

fn message_rate_per_address_answers_450(engine: Engine) {
    let mut settings = Settings::new(engine);
    // Loopback outside the relay networks: those are exempt from the rate.
    settings.allowed_networks = vec!["192.0.2.0/24".into()];
    settings.smtp_toml = "messages_per_ip_max = 2\nmessage_rate_window = \"1h\"\n".into();
    let relay = Relay::start(settings);
    // Two messages on separate connections (likely separate cores): both accepted.
    relay.deliver(&["one@example.test"], b"Subject: 1\r\n\r\nfirst\r\n");
    relay.deliver(&["one@example.test"], b"Subject: 2\r\n\r\nsecond\r\n");
    // The third from the same address, on a new connection, is over the rate.
    let mut client = relay.client();
    client.ehlo();
    let reply = client.cmd("MAIL FROM:<sender@example.test>").unwrap();
    assert!(reply.is(450, "4.7.1"), "third MAIL: {reply}");
    assert!(
        reply.text().contains("too much mail"),
        "the text says why: {reply}"
    );
    // The refusal is temporary: the session goes on.
    client.expect("NOOP", 250);
    client.quit();
    relay.stop();
}

/// Sends `bytes` one at a time every 100 ms on a clone of `stream` until they run out,
/// the write fails, or `stop` is set.
fn trickle(stream: &TcpStream, bytes: Vec<u8>, stop: Arc<AtomicBool>) -> thread::JoinHandle<()> {
    let mut writer = stream.try_clone().expect("clone stream");
    thread::spawn(move || {
        for byte in bytes {
            if stop.load(Ordering::Relaxed) || writer.write_all(&[byte]).is_err() {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
    })
}

/// What a trickling client reads before EOF, and when its first byte came.
fn read_until_eof(stream: &mut TcpStream, limit: Duration) -> (String, Duration) {
    stream.set_read_timeout(Some(limit)).unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    let mut first = None;
    let mut chunk = [0u8; 512];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                first.get_or_insert_with(|| started.elapsed());
                got.extend_from_slice(&chunk[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!(
                "no close within {limit:?} (read so far: {:?}): {e}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
    (
        String::from_utf8_lossy(&got).into_owned(),
        first.unwrap_or_else(|| started.elapsed()),
    )
}

/// A line that takes 10 s to trickle and never ends: only a deadline cuts it in time.
fn endless_line(prefix: &str) -> Vec<u8> {
    let mut line = prefix.as_bytes().to_vec();
    line.resize(100, b'a');
    line
}

fn trickled_command_is_cut_at_the_deadline(engine: Engine) {
    let mut settings = Settings::new(engine);
    settings.command_timeout = "1s".into();
    let relay = Relay::start(settings);
    let before = relay.fd_count();
    let client = relay.client();
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let writer = trickle(client.stream(), endless_line("MAIL FROM:<"), stop.clone());
    let mut stream = client.stream().try_clone().unwrap();
    let (said, _) = read_until_eof(&mut stream, Duration::from_secs(8));
    let cut = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    assert!(said.starts_with("421 4.4.2 "), "{said:?}");
    assert!(
        cut >= Duration::from_millis(900) && cut < Duration::from_secs(4),
        "cut after {cut:?}; the deadline is 1 s from the greeting"
    );
    let after = common::wait_fd_count_at_most(relay.pid(), before, Duration::from_secs(10));
    assert!(after <= before, "relay fds {before} before, {after} after");
    relay.stop();
}

fn trickled_data_is_cut_below_the_minimum_rate(engine: Engine) {
    let mut settings = Settings::new(engine);
    settings.data_timeout = "1s".into();
    let relay = Relay::start(settings);
    let mut client = relay.client();
    client.ehlo();
    client.expect("MAIL FROM:<sender@example.test>", 250);
    client.expect("RCPT TO:<one@example.test>", 250);
    client.expect("DATA", 354);
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    // 10 bytes a second, far below the default 500: each read comes well within
    // data_timeout, so only the rate cuts it.
    let body = b"Subject: slow\r\n\r\n".repeat(8);
    let writer = trickle(client.stream(), body, stop.clone());
    let mut stream = client.stream().try_clone().unwrap();
    let (said, _) = read_until_eof(&mut stream, Duration::from_secs(8));
    let cut = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    assert!(said.starts_with("421 4.4.2 "), "{said:?}");
    assert!(
        cut >= Duration::from_millis(900) && cut < Duration::from_secs(4),
        "cut after {cut:?}; 1 s plus 2 ms per byte received"
    );
    // The transaction cut short has its log line (one line per transaction).
    relay.wait_log(
        &["transaction abandoned", "result=\"timeout\""],
        Duration::from_secs(10),
    );
    relay.stop();
}

fn trickled_pop3_command_is_cut_at_the_deadline(engine: Engine) {
    let mut settings = Settings::new(engine);
    settings.pop3_toml = "command_timeout = \"1s\"\n".into();
    let relay = Relay::start(settings);
    let pop = relay.pop3();
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let writer = trickle(pop.stream(), endless_line("USER "), stop.clone());
    let mut stream = pop.stream().try_clone().unwrap();
    let (said, _) = read_until_eof(&mut stream, Duration::from_secs(8));
    let cut = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    assert!(said.starts_with("-ERR autologout"), "{said:?}");
    assert!(
        cut >= Duration::from_millis(900) && cut < Duration::from_secs(4),
        "cut after {cut:?}; the line must be complete 1 s after its first byte"
    );
    relay.stop();
}

/// The relay's resident memory (VmRSS, KiB).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .expect("VmRSS")
}

/// One read of 300 pipelined `RETR 1` for a 1 MiB message (300 MiB of answers): the relay
/// writes as it goes instead of holding every answer, so its memory stays flat while the
/// client reads them all.
fn pipelined_retr_does_not_pile_up_answers(engine: Engine) {
    let relay = Relay::start(Settings::new(engine));
    let line = "x".repeat(998);
    let body: String = (0..1024).map(|_| format!("{line}\r\n")).collect();
    let message = format!("Subject: big\r\n\r\n{body}");
    let mut client = relay.client();
    client.ehlo();
    let reply = client
        .transaction("a@example.test", &["one@example.test"], message.as_bytes())
        .expect("send");
    assert_eq!(reply.code, 250, "{reply}");
    client.quit();

    let mut pop = common::pop3::Pop3::login_retrying(
        relay.pop3_addr,
        "one",
        common::TEST_PASSWORD,
        Duration::from_secs(20),
    );
    let before = rss_kib(relay.pid());
    const COUNT: usize = 300;
    pop.send("RETR 1\r\n".repeat(COUNT).as_bytes())
        .expect("send");
    let mut stream = pop.stream().try_clone().expect("clone");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let expected_min = COUNT * message.len();
    let mut total = 0usize;
    let mut peak = before;
    let mut buf = vec![0u8; 1 << 20];
    let mut tail = Vec::new();
    while total < expected_min || !tail.ends_with(b"\r\n.\r\n") {
        let n = stream.read(&mut buf).expect("read answers");
        assert!(n > 0, "closed after {total} bytes");
        total += n;
        tail = buf[n.saturating_sub(5)..n].to_vec();
        peak = peak.max(rss_kib(relay.pid()));
        if total > expected_min + COUNT * 64 * 1024 {
            break;
        }
    }
    let growth_mib = peak.saturating_sub(before) / 1024;
    assert!(
        growth_mib < 64,
        "the relay grew by {growth_mib} MiB while answering {COUNT} pipelined RETRs"
    );
    pop.send(b"QUIT\r\n").expect("quit");
    relay.stop();
}
