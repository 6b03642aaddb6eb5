//! Login limits and the password-hash pool against the real binary, both engines, over
//! loopback sockets: a flood of parallel POP3 logins from one address stays within the pool's
//! threads and memory and does not slow other clients; the pool is not pinned to a shard's
//! core; a full queue is a temporary failure (`454 4.7.0`, `-ERR [SYS/TEMP]`); a client gone
//! before its check is not hashed; guesses from elsewhere do not lock the owner out; peer
//! text reaches the log escaped.
//!
//! Other client addresses are 127.0.0.2 and up (all of 127/8 is loopback on Linux).

#[macro_use]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{Engine, Relay, Settings, TEST_PASSWORD};

engine_tests! {
    parallel_logins_from_one_address_are_bounded: parallel_logins_from_one_address_are_bounded_uring, parallel_logins_from_one_address_are_bounded_epoll;
    hash_threads_are_not_pinned_to_a_shard: hash_threads_are_not_pinned_to_a_shard_uring, hash_threads_are_not_pinned_to_a_shard_epoll;
    a_full_hash_queue_is_a_temporary_failure: a_full_hash_queue_is_a_temporary_failure_uring, a_full_hash_queue_is_a_temporary_failure_epoll;
    a_client_gone_before_its_check_is_not_hashed: a_client_gone_before_its_check_is_not_hashed_uring, a_client_gone_before_its_check_is_not_hashed_epoll;
    guesses_elsewhere_do_not_lock_the_owner_out: guesses_elsewhere_do_not_lock_the_owner_out_uring, guesses_elsewhere_do_not_lock_the_owner_out_epoll;
    peer_text_is_escaped_in_the_log: peer_text_is_escaped_in_the_log_uring, peer_text_is_escaped_in_the_log_epoll;
}

/// Bound on every read from the relay.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// An argon2id check (m=19456 KiB) allocates this much while it runs.
const HASH_MEMORY: u64 = 19 * 1024 * 1024;

/// A line-oriented client from a chosen loopback source address.
struct Line {
    reader: BufReader<TcpStream>,
}

impl Line {
    fn connect_from(source: IpAddr, to: SocketAddr) -> Line {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        socket
            .bind(&SocketAddr::new(source, 0).into())
            .unwrap_or_else(|e| panic!("bind {source}: {e}"));
        socket
            .connect_timeout(&to.into(), Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("connect {to} from {source}: {e}"));
        let stream: TcpStream = socket.into();
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Line {
            reader: BufReader::new(stream),
        }
    }

    fn connect(to: SocketAddr) -> Line {
        Line::connect_from("127.0.0.1".parse().unwrap(), to)
    }

    fn send(&mut self, line: &str) {
        let stream = self.reader.get_mut();
        stream
            .write_all(format!("{line}\r\n").as_bytes())
            .expect("send");
    }

    /// One line without CRLF; empty at EOF.
    fn line(&mut self) -> String {
        let mut line = String::new();
        let _ = self.reader.read_line(&mut line);
        line.trim_end().to_string()
    }

    /// An SMTP reply's last line (`250 ...` after any `250-` lines).
    fn reply(&mut self) -> String {
        loop {
            let line = self.line();
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return line;
            }
        }
    }

    fn cmd(&mut self, line: &str) -> String {
        self.send(line);
        self.line()
    }

    fn smtp_cmd(&mut self, line: &str) -> String {
        self.send(line);
        self.reply()
    }

    /// Closes both directions at once (the client is gone).
    fn vanish(self) {
        let _ = self.reader.get_ref().shutdown(std::net::Shutdown::Both);
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// SASL PLAIN initial response for `user` / `password`.
fn plain(user: &str, password: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"))
}

/// POP3 USER/PASS from `source` on a new connection: the PASS answer.
fn pop3_login_from(relay: &Relay, source: IpAddr, user: &str, password: &str) -> String {
    let mut client = Line::connect_from(source, relay.pop3_addr);
    let greeting = client.line();
    assert!(greeting.starts_with("+OK"), "greeting: {greeting:?}");
    let user_reply = client.cmd(&format!("USER {user}"));
    assert!(user_reply.starts_with("+OK"), "USER: {user_reply:?}");
    let reply = client.cmd(&format!("PASS {password}"));
    client.send("QUIT");
    reply
}

/// (name, state's Cpus_allowed_list) of every thread of `pid`.
fn threads(pid: u32) -> Vec<(String, String)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|task| {
            let path = task.ok()?.path();
            let name = std::fs::read_to_string(path.join("comm")).ok()?;
            let status = std::fs::read_to_string(path.join("status")).ok()?;
            let cpus = status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?
                .trim()
                .to_string();
            Some((name.trim().to_string(), cpus))
        })
        .collect()
}

/// A `/proc/PID/status` field in bytes (`VmRSS`, `VmHWM`).
fn status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    kib * 1024
}

/// The value of an unlabelled metric from `/metrics`.
fn metric(relay: &Relay, name: &str) -> u64 {
    let (status, body) = relay.admin_get("/metrics");
    assert_eq!(status, 200);
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{body}"))
}

fn count_log(relay: &Relay, needle: &str) -> usize {
    relay
        .log_lines()
        .iter()
        .filter(|l| l.contains(needle))
        .count()
}

/// One core, so the measurement (1 core, 50 parallel logins) is what runs here;
/// the pool's defaults: one thread (`min(2, cores)`), a queue of 64.
fn one_core(engine: Engine) -> Settings {
    let mut settings = Settings::new(engine);
    settings.cores = 1;
    settings
}

const FLOOD: usize = 40;

fn parallel_logins_from_one_address_are_bounded(engine: Engine) {
    let relay = Relay::start(one_core(engine));
    let pid = relay.pid();
    // A login first, so the pool and allocator are warm and the idle figures are honest.
    let first = pop3_login_from(&relay, ip("127.0.0.1"), "bob", TEST_PASSWORD);
    assert!(first.starts_with("+OK"), "{first}");
    let idle_threads = threads(pid).len();
    let idle_rss = status_bytes(pid, "VmRSS");

    let done = Arc::new(AtomicBool::new(false));
    // Threads of the relay, sampled while the flood runs.
    let sampler = {
        let done = Arc::clone(&done);
        thread::spawn(move || {
            let mut most = 0;
            while !done.load(Ordering::SeqCst) {
                most = most.max(threads(pid).len());
                thread::sleep(Duration::from_millis(2));
            }
            most
        })
    };
    // Another client's greeting, timed while the flood runs (from another address).
    let prober = {
        let done = Arc::clone(&done);
        let addr = relay.addr;
        thread::spawn(move || {
            let mut took = Vec::new();
            while !done.load(Ordering::SeqCst) && took.len() < 200 {
                let started = Instant::now();
                let mut client = Line::connect_from(ip("127.0.0.9"), addr);
                let greeting = client.line();
                took.push(started.elapsed());
                assert!(greeting.starts_with("220"), "{greeting:?}");
                client.send("QUIT");
                thread::sleep(Duration::from_millis(10));
            }
            took
        })
    };
    let flood: Vec<_> = (0..FLOOD)
        .map(|_| {
            let addr = relay.pop3_addr;
            thread::spawn(move || {
                let mut client = Line::connect(addr);
                assert!(client.line().starts_with("+OK"));
                assert!(client.cmd("USER alice").starts_with("+OK"));
                client.cmd("PASS wrong-guess")
            })
        })
        .collect();
    let replies: Vec<String> = flood.into_iter().map(|t| t.join().unwrap()).collect();
    done.store(true, Ordering::SeqCst);
    let most_threads = sampler.join().unwrap();
    let mut greetings = prober.join().unwrap();
    let peak_rss = status_bytes(pid, "VmHWM");

    for reply in &replies {
        assert!(reply.starts_with("-ERR"), "a wrong password got {reply:?}");
    }
    // In-flight checks count against pop3.auth_failures_per_ip_max (10): no more than that
    // were hashed; the rest were refused unhashed.
    let hashed = count_log(&relay, "login failed");
    eprintln!(
        "{FLOOD} parallel logins: {hashed} hashed, threads {idle_threads} -> {most_threads}, \
         RSS {} MiB -> peak {} MiB",
        idle_rss >> 20,
        peak_rss >> 20
    );
    assert!(
        hashed <= 10,
        "{hashed} of {FLOOD} parallel wrong logins from one address were hashed (limit 10)"
    );
    let pool: Vec<_> = threads(pid)
        .into_iter()
        .filter(|(name, _)| name.starts_with("auth-hash"))
        .collect();
    assert_eq!(pool.len(), 1, "min(2, cores) hash threads: {pool:?}");
    assert!(
        most_threads <= idle_threads + 2,
        "threads grew from {idle_threads} to {most_threads} during {FLOOD} parallel logins"
    );
    let growth = peak_rss.saturating_sub(idle_rss);
    let allowed = pool.len() as u64 * HASH_MEMORY + 48 * 1024 * 1024;
    assert!(
        growth <= allowed,
        "peak RSS grew by {} MiB (allowed {} MiB)",
        growth >> 20,
        allowed >> 20
    );
    greetings.sort();
    assert!(!greetings.is_empty());
    let p90 = greetings[(greetings.len() * 9 / 10).min(greetings.len() - 1)];
    assert!(
        p90 < Duration::from_millis(200),
        "another client's greeting p90 {p90:?} during the flood"
    );
    relay.stop();
}

fn hash_threads_are_not_pinned_to_a_shard(engine: Engine) {
    let relay = Relay::start(one_core(engine));
    let pid = relay.pid();
    // A few logins at once, so any thread a check needs exists now.
    let logins: Vec<_> = ["bob", "alice", "one"]
        .into_iter()
        .map(|user| {
            let addr = relay.pop3_addr;
            thread::spawn(move || {
                let mut client = Line::connect(addr);
                client.line();
                client.cmd(&format!("USER {user}"));
                client.cmd("PASS wrong-guess")
            })
        })
        .collect();
    let all = threads(pid);
    for login in logins {
        login.join().unwrap();
    }
    let process = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("Cpus_allowed_list:")
                .map(|v| v.trim().to_string())
        })
        .unwrap();
    let shard = all
        .iter()
        .find(|(name, _)| name == "shard-0")
        .unwrap_or_else(|| panic!("no shard-0 thread: {all:?}"));
    if shard.1 == process {
        eprintln!("one CPU only ({process}): pinning cannot be told apart; nothing to check");
        relay.stop();
        return;
    }
    // Every thread but the shards runs on the process's CPUs (sampled during the logins and
    // after them: a thread that checked passwords for a shard must not have inherited its pin).
    let threads_after = threads(pid);
    for (name, cpus) in all.iter().chain(&threads_after) {
        if !name.starts_with("shard-") {
            assert_eq!(
                cpus, &process,
                "thread {name:?} runs on CPUs {cpus}, the process on {process}: {threads_after:?}"
            );
        }
    }
    assert!(
        threads_after
            .iter()
            .any(|(name, _)| name.starts_with("auth-hash")),
        "no password-hash thread: {threads_after:?}"
    );
    relay.stop();
}

fn a_full_hash_queue_is_a_temporary_failure(engine: Engine) {
    let mut settings = one_core(engine);
    settings.server_toml = "auth_hash_threads = 1\nauth_hash_queue_max = 1\n".into();
    settings.smtp_toml = "allow_plaintext_auth = true\nauth_failure_delay = \"10ms\"\n".into();
    settings.pop3_auth_failures_per_ip_max = Some(1000);
    let relay = Relay::start(settings);
    // Twenty parallel logins of each protocol, each from its own address: with one thread
    // and one queue place, most find the queue full.
    let pop3: Vec<_> = (0..20)
        .map(|i| {
            let addr = relay.pop3_addr;
            thread::spawn(move || {
                let mut client = Line::connect_from(ip(&format!("127.0.1.{}", i + 1)), addr);
                client.line();
                client.cmd("USER alice");
                client.cmd("PASS wrong-guess")
            })
        })
        .collect();
    let smtp: Vec<_> = (0..20)
        .map(|i| {
            let addr = relay.addr;
            thread::spawn(move || {
                let mut client = Line::connect_from(ip(&format!("127.0.2.{}", i + 1)), addr);
                client.reply();
                client.smtp_cmd("EHLO client.test");
                client.smtp_cmd(&format!("AUTH PLAIN {}", plain("bob", "wrong-guess")))
            })
        })
        .collect();
    let pop3: Vec<String> = pop3.into_iter().map(|t| t.join().unwrap()).collect();
    let smtp: Vec<String> = smtp.into_iter().map(|t| t.join().unwrap()).collect();
    let pop3_busy = pop3
        .iter()
        .filter(|r| r.starts_with("-ERR [SYS/TEMP]"))
        .count();
    let smtp_busy = smtp.iter().filter(|r| r.starts_with("454 4.7.0")).count();
    assert!(pop3_busy > 0, "no POP3 login was told to retry: {pop3:?}");
    assert!(smtp_busy > 0, "no SMTP AUTH was told to retry: {smtp:?}");
    for reply in &pop3 {
        assert!(
            reply.starts_with("-ERR [SYS/TEMP]") || reply.starts_with("-ERR [AUTH]"),
            "{reply}"
        );
    }
    for reply in &smtp {
        assert!(
            reply.starts_with("454 4.7.0") || reply.starts_with("535"),
            "{reply}"
        );
    }
    let refused = metric(&relay, "relay_auth_hash_refused_total");
    assert_eq!(refused as usize, pop3_busy + smtp_busy);
    // Refused checks are not failures: the right password works at once afterwards.
    let ok = pop3_login_from(&relay, ip("127.0.1.1"), "alice", TEST_PASSWORD);
    assert!(ok.starts_with("+OK"), "{ok}");
    relay.stop();
}

fn a_client_gone_before_its_check_is_not_hashed(engine: Engine) {
    let mut settings = one_core(engine);
    settings.pop3_auth_failures_per_ip_max = Some(1000);
    // No per-user slowing here: a vanished client's check dropped while it waits out the
    // per-user delay is never queued, so it would be neither hashed nor abandoned.
    settings.pop3_toml = "auth_failures_per_user_max = 1000\n".into();
    let relay = Relay::start(settings);
    // Ten clients that wait for their answers keep the one hash thread busy...
    let waiting: Vec<_> = (0..10)
        .map(|i| {
            let addr = relay.pop3_addr;
            thread::spawn(move || {
                let mut client = Line::connect_from(ip(&format!("127.0.3.{}", i + 1)), addr);
                client.line();
                client.cmd("USER alice");
                client.cmd("PASS wrong-guess")
            })
        })
        .collect();
    // ...(checks are queued behind the one being hashed; a fixed sleep is not enough on a
    // loaded machine)...
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&relay, "relay_auth_hash_queued") < 5 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(2));
    }
    // ...while ten more send PASS and disconnect at once.
    for i in 0..10 {
        let mut client = Line::connect_from(ip(&format!("127.0.4.{}", i + 1)), relay.pop3_addr);
        client.line();
        client.cmd("USER alice");
        client.send("PASS wrong-guess");
        client.vanish();
    }
    for client in waiting {
        let reply = client.join().unwrap();
        assert!(reply.starts_with("-ERR [AUTH]"), "{reply}");
    }
    // The queue drains: every check was either hashed or abandoned.
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&relay, "relay_auth_hash_queued") > 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    let abandoned = metric(&relay, "relay_auth_hash_abandoned_total");
    let hashed = count_log(&relay, "login failed");
    assert!(
        abandoned > 0,
        "no check of a vanished client was abandoned ({hashed} hashed)"
    );
    assert!(hashed < 20, "all {hashed} checks were hashed");
    relay.stop();
}

fn guesses_elsewhere_do_not_lock_the_owner_out(engine: Engine) {
    let mut settings = Settings::new(engine);
    settings.allowed_networks = Vec::new();
    settings.smtp_toml = "allow_plaintext_auth = true\nauth_failure_delay = \"10ms\"\n\
                          auth_failures_per_user_max = 8\n"
        .into();
    let relay = Relay::start(settings);
    let smtp_auth = |source: &str, password: &str| {
        let mut client = Line::connect_from(ip(source), relay.addr);
        client.reply();
        client.smtp_cmd("EHLO client.test");
        let started = Instant::now();
        let reply = client.smtp_cmd(&format!("AUTH PLAIN {}", plain("alice", password)));
        client.send("QUIT");
        (reply, started.elapsed())
    };
    // The owner logs in from her address.
    let (reply, _) = smtp_auth("127.0.0.1", TEST_PASSWORD);
    assert!(reply.starts_with("235"), "{reply}");
    // Ten wrong tries from another address: past the per-user limit (8) they are slowed,
    // not answered 454.
    for attempt in 1..=10 {
        let (reply, _) = smtp_auth("127.0.0.2", "wrong-guess");
        assert!(reply.starts_with("535"), "guess {attempt}: {reply}");
    }
    // The owner, from where she logged in before, gets in at once.
    let (reply, took) = smtp_auth("127.0.0.1", TEST_PASSWORD);
    assert!(
        reply.starts_with("235"),
        "the owner after 10 guesses elsewhere: {reply}"
    );
    assert!(
        took < Duration::from_millis(900),
        "the owner waited {took:?}"
    );
    // From an address never used for alice, the right password still works after the
    // name's delay.
    let (reply, took) = smtp_auth("127.0.0.3", TEST_PASSWORD);
    assert!(
        reply.starts_with("235"),
        "alice from a new address: {reply}"
    );
    assert!(
        took >= Duration::from_millis(900),
        "no delay for a new address: {took:?}"
    );
    // POP3 follows the same rule with its own table.
    let pop3_settings_user_max = 10;
    for _ in 0..pop3_settings_user_max {
        let reply = pop3_login_from(&relay, ip("127.0.0.4"), "bob", "wrong-guess");
        assert!(reply.starts_with("-ERR [AUTH]"), "{reply}");
    }
    let started = Instant::now();
    let reply = pop3_login_from(&relay, ip("127.0.0.5"), "bob", TEST_PASSWORD);
    assert!(reply.starts_with("+OK"), "{reply}");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "POP3 had no per-user delay"
    );
    relay.stop();
}

fn peer_text_is_escaped_in_the_log(engine: Engine) {
    let mut settings = Settings::new(engine);
    settings.allowed_networks = Vec::new();
    settings.smtp_toml = "allow_plaintext_auth = true\nauth_failure_delay = \"10ms\"\n".into();
    let relay = Relay::start(settings);
    let forged = "x\nINFO relay::smtp: authenticated client=10.9.9.9 user=root\x1b[2J";
    let mut client = Line::connect(relay.addr);
    client.reply();
    client.smtp_cmd("EHLO client.test");
    let reply = client.smtp_cmd(&format!("AUTH PLAIN {}", plain(forged, "wrong-guess")));
    assert!(reply.starts_with("535"), "{reply}");
    client.send("QUIT");
    // POP3 names too (USER refuses control characters; SASL PLAIN carries any).
    let mut pop3 = Line::connect(relay.pop3_addr);
    pop3.line();
    let name = "y\x1b]0;pwned\x07";
    let reply = pop3.cmd(&format!("AUTH PLAIN {}", plain(name, "wrong-guess")));
    assert!(reply.starts_with("-ERR [AUTH]"), "{reply}");
    pop3.send("QUIT");
    relay.wait_log(&["auth failed"], Duration::from_secs(10));
    relay.wait_log(&["login failed"], Duration::from_secs(10));
    let lines = relay.log_lines();
    for line in &lines {
        assert!(
            !line.contains("client=10.9.9.9") || line.contains("\\n"),
            "a forged log line: {line:?}"
        );
        assert!(
            !line.contains('\x1b'),
            "an escape sequence reached the log: {line:?}"
        );
        assert!(
            !line.contains('\x07'),
            "a control character reached the log: {line:?}"
        );
    }
    let failed = lines
        .iter()
        .find(|l| l.contains("auth failed"))
        .expect("auth failed line");
    assert!(
        failed.contains("x\\nINFO relay::smtp: authenticated client=10.9.9.9 user=root\\u{1b}[2J"),
        "{failed}"
    );
    let login = lines.iter().find(|l| l.contains("login failed")).unwrap();
    assert!(login.contains("y\\u{1b}]0;pwned\\u{7}"), "{login}");
    relay.stop();
}
