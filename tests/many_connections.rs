//! Thousands of idle and slow connections: while they are held open, a normal
//! client still gets a whole transaction through within its timeouts; then every one of them
//! is cut at the command deadline (421 4.4.2, the slow ones too: trickled bytes do not extend
//! it) and the relay's socket count returns to its baseline.
//!
//! The test raises its own soft `nofile` limit to the hard one (the relay child inherits it,
//! and raises its own at start as well); with a hard limit too low for the connections it
//! says so and skips.

#[macro_use]
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Engine, Relay, Settings};

engine_tests! {
    idle_and_slow_crowd_does_not_starve_a_client: idle_and_slow_crowd_does_not_starve_a_client_uring, idle_and_slow_crowd_does_not_starve_a_client_epoll;
}

const IDLE: usize = 2800;
const SLOW: usize = 200;
/// Long enough to open every connection and run a transaction before the first cut.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(8);

/// Raises the soft `nofile` limit; false when the hard limit cannot hold `needed`.
fn enough_descriptors(needed: u64) -> bool {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.maximum.is_some_and(|hard| hard < needed) {
        eprintln!(
            "skipped: the hard nofile limit {:?} is below the {needed} descriptors this test needs",
            limit.maximum
        );
        return false;
    }
    if limit.current.is_some_and(|soft| soft < needed) {
        limit.current = Some(needed);
        setrlimit(Resource::Nofile, limit).expect("raise the soft nofile limit");
    }
    true
}

/// The relay's open sockets (its other descriptors, such as spool segments a message opens,
/// are not the connections' business).
fn socket_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/PID/fd")
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .count()
}

/// Polls `/proc` (the kernel has no event for "the server closed a socket"), bounded.
fn wait_socket_count_at_most(pid: u32, target: usize, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        let now = socket_count(pid);
        if now <= target || Instant::now() >= deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn connect(relay: &Relay) -> TcpStream {
    let stream = TcpStream::connect_timeout(&relay.addr, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("connect: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut greeting = [0u8; 4];
    stream
        .try_clone()
        .unwrap()
        .read_exact(&mut greeting)
        .unwrap_or_else(|e| panic!("greeting: {e}"));
    assert_eq!(&greeting, b"220 ", "admitted and greeted");
    stream
}

fn idle_and_slow_crowd_does_not_starve_a_client(engine: Engine) {
    let total = IDLE + SLOW;
    if !enough_descriptors(2 * total as u64 + 512) {
        return;
    }
    let mut settings = Settings::new(engine);
    settings.connections_per_ip_max = total + 10;
    settings.command_timeout = format!("{}s", COMMAND_TIMEOUT.as_secs());
    let relay = Relay::start(settings);
    let before = socket_count(relay.pid());

    let opening = Instant::now();
    let idle: Vec<TcpStream> = (0..IDLE).map(|_| connect(&relay)).collect();
    let slow: Vec<TcpStream> = (0..SLOW).map(|_| connect(&relay)).collect();
    let opened = opening.elapsed();
    assert!(
        opened < COMMAND_TIMEOUT / 2,
        "opening {total} connections took {opened:?}; the test needs them all before the cuts"
    );
    let during = socket_count(relay.pid());
    assert!(
        during >= before + total,
        "the relay holds {during} sockets, {before} + {total} expected"
    );

    // The slow ones send a byte each every 500 ms until the relay cuts them.
    let writers: Vec<TcpStream> = slow.iter().map(|s| s.try_clone().unwrap()).collect();
    let trickler = std::thread::spawn(move || {
        let mut open = writers;
        while !open.is_empty() {
            open.retain_mut(|stream| stream.write_all(b"X").is_ok());
            std::thread::sleep(Duration::from_millis(500));
        }
    });

    // A normal client in the crowd: every reply within the harness's timeouts.
    let served = Instant::now();
    let mut client = relay.client();
    client.ehlo();
    let reply = client
        .transaction(
            "sender@example.test",
            &["one@example.test"],
            b"Subject: in a crowd\r\n\r\nstill served\r\n",
        )
        .expect("transaction");
    assert_eq!(reply.code, 250, "{reply}");
    client.quit();
    let took = served.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "a transaction took {took:?} among {total} connections"
    );

    // Every connection is cut at the deadline, trickling or not.
    for (kind, streams) in [("idle", &idle), ("slow", &slow)] {
        for (i, stream) in streams.iter().enumerate() {
            stream.set_read_timeout(Some(COMMAND_TIMEOUT * 3)).unwrap();
            let mut said = Vec::new();
            let read = (&*stream).read_to_end(&mut said);
            // The rest of the greeting line, then the 421.
            let said = String::from_utf8_lossy(&said);
            assert!(
                read.is_ok() && said.lines().any(|line| line.starts_with("421 4.4.2 ")),
                "{kind} connection {i}: {read:?} {said:?}"
            );
        }
    }
    trickler.join().unwrap();
    drop((idle, slow));
    let after = wait_socket_count_at_most(relay.pid(), before, Duration::from_secs(20));
    assert!(
        after <= before,
        "relay sockets: {before} before, {during} with the crowd, still {after} after"
    );
    relay.stop();
}
