//! `loadgen imap` against a real IMAP server: Dovecot, started by each test on a loopback
//! port with its own configuration, Maildirs and password file in a temporary directory.
//! Dovecot must run as root (it drops to `nobody` for the mail processes); without
//! `dovecot` (Debian: dovecot-imapd) or without root the tests say so and do nothing.
//! The file is named `*_tests.rs` because the repository's tidy rule on unwrap() exempts
//! such files.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const LOADGEN: &str = env!("CARGO_BIN_EXE_loadgen");

/// A Dovecot serving IMAP on 127.0.0.1, stopped (with its children) when dropped.
struct Dovecot {
    child: Child,
    dir: tempfile::TempDir,
    addr: String,
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        // SIGTERM lets the master stop its imap and login processes.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dovecot_binary() -> Option<PathBuf> {
    let paths = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&paths)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("dovecot"))
        .find(|path| path.is_file())
}

/// Starts Dovecot with `users` (`name`, `password`); None (after saying why) when it cannot
/// run here.
fn start_dovecot(test: &str, users: &[(&str, &str)]) -> Option<Dovecot> {
    let Some(binary) = dovecot_binary() else {
        eprintln!(
            "{test}: SKIPPED: dovecot is not installed (Debian: apt-get install dovecot-imapd)"
        );
        return None;
    };
    if !Path::new("/usr/lib/dovecot/imap").exists() {
        eprintln!("{test}: SKIPPED: dovecot's imap service is not installed (apt-get install dovecot-imapd)");
        return None;
    }
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("{test}: SKIPPED: Dovecot's master process must run as root");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The mail processes run as nobody and the login processes as dovenull: they must reach
    // their directories.
    std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    for sub in ["run", "state", "mail"] {
        std::fs::create_dir(d.join(sub)).unwrap();
    }
    let nobody = unsafe { libc::getpwnam(c"nobody".as_ptr()) };
    assert!(!nobody.is_null(), "no user nobody");
    let (uid, gid) = unsafe { ((*nobody).pw_uid, (*nobody).pw_gid) };
    std::os::unix::fs::chown(d.join("mail"), Some(uid), Some(gid)).unwrap();
    let mut passwd = String::new();
    for (name, password) in users {
        passwd += &format!("{name}:{{PLAIN}}{password}\n");
    }
    std::fs::write(d.join("users"), passwd).unwrap();
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let d = d.display();
    let config = format!(
        "protocols = imap\n\
         listen = 127.0.0.1\n\
         base_dir = {d}/run\n\
         state_dir = {d}/state\n\
         log_path = {d}/dovecot.log\n\
         instance_name = loadgen-test-{port}\n\
         ssl = no\n\
         disable_plaintext_auth = no\n\
         auth_mechanisms = plain login\n\
         mail_location = maildir:{d}/mail/%u\n\
         first_valid_uid = 1\n\
         passdb {{\n  driver = passwd-file\n  args = scheme=PLAIN {d}/users\n}}\n\
         userdb {{\n  driver = static\n  args = uid={uid} gid={gid} home={d}/mail/%u\n}}\n\
         service imap-login {{\n  inet_listener imap {{\n    address = 127.0.0.1\n    port = {port}\n  }}\n  \
           inet_listener imaps {{\n    port = 0\n  }}\n}}\n\
         protocol imap {{\n  mail_max_userip_connections = 1000\n}}\n"
    );
    let conf = dir.path().join("dovecot.conf");
    std::fs::write(&conf, config).unwrap();
    let child = Command::new(binary)
        .arg("-F")
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start dovecot");
    let dovecot = Dovecot {
        child,
        dir,
        addr: format!("127.0.0.1:{port}"),
    };
    // Ready once it greets.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut stream) = TcpStream::connect(&dovecot.addr) {
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut greeting = [0u8; 4];
            if stream.read_exact(&mut greeting).is_ok() && &greeting == b"* OK" {
                let _ = stream.write_all(b"x LOGOUT\r\n");
                return Some(dovecot);
            }
        }
        assert!(
            Instant::now() < deadline,
            "dovecot did not greet on {}: {}",
            dovecot.addr,
            std::fs::read_to_string(dovecot.dir.path().join("dovecot.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `loadgen imap` with `args` and `--json`; returns the exit code, the summary and
/// stderr.
fn imap(addr: &str, args: &[&str]) -> (i32, Value, String) {
    let out = Command::new(LOADGEN)
        .args(["imap", "--target", addr, "--json", "--max-time", "60s"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run loadgen");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("not one JSON object ({e}): {stdout:?}\nstderr: {stderr}"));
    (out.status.code().unwrap_or(-1), json, stderr)
}

/// As [`imap`], asserting success and no errors of any kind.
fn imap_ok(addr: &str, args: &[&str]) -> Value {
    let (code, json, stderr) = imap(addr, args);
    assert_eq!(code, 0, "loadgen imap {args:?} failed:\n{stderr}");
    assert_eq!(
        u(&json, "/connection_errors/total"),
        0,
        "{args:?}: {stderr}"
    );
    assert_eq!(u(&json, "/operations/failed"), 0, "{args:?}: {stderr}");
    assert_eq!(u(&json, "/operations/no"), 0, "{args:?}: {stderr}");
    assert_eq!(u(&json, "/operations/bad"), 0, "{args:?}: {stderr}");
    json
}

fn u(v: &Value, path: &str) -> u64 {
    v.pointer(path)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no number at {path} in {v}"))
}

/// Messages in a Maildir (new and cur).
fn maildir_count(dovecot: &Dovecot, user: &str) -> usize {
    ["new", "cur"]
        .iter()
        .map(|sub| {
            std::fs::read_dir(dovecot.dir.path().join("mail").join(user).join(sub))
                .map(|entries| entries.count())
                .unwrap_or(0)
        })
        .sum()
}

const USERS: &[&str] = &["--user-pattern", "user{n}:secret", "--user-count", "2"];

fn with_users(args: &[&'static str]) -> Vec<&'static str> {
    let mut all = USERS.to_vec();
    all.extend_from_slice(args);
    all
}

#[test]
fn imap_workloads_against_dovecot_count_what_they_did() {
    let test = "imap_workloads_against_dovecot_count_what_they_did";
    let Some(dovecot) = start_dovecot(test, &[("user0", "secret"), ("user1", "secret")]) else {
        return;
    };
    let addr = dovecot.addr.as_str();

    // Prefill: 30 messages per user, over LITERAL+ (Dovecot offers it).
    let appended = imap_ok(
        addr,
        &with_users(&[
            "--workload",
            "append",
            "--count",
            "30",
            "--size",
            "3KiB",
            "--connections",
            "2",
        ]),
    );
    assert_eq!(u(&appended, "/appended/messages"), 60, "{appended}");
    assert_eq!(u(&appended, "/latency_ms/append/count"), 60);
    let bytes = u(&appended, "/appended/bytes");
    assert!((60 * 2800..=60 * 3300).contains(&bytes), "{bytes}");
    assert_eq!(maildir_count(&dovecot, "user0"), 30);
    assert_eq!(maildir_count(&dovecot, "user1"), 30);

    // Every body once: the literal bytes are what was appended.
    let bodies = imap_ok(
        addr,
        &with_users(&[
            "--workload",
            "fetch-bodies",
            "--count",
            "30",
            "--connections",
            "2",
        ]),
    );
    assert_eq!(u(&bodies, "/fetched/bodies"), 60, "{bodies}");
    assert_eq!(u(&bodies, "/fetched/body_bytes"), bytes, "{bodies}");
    assert_eq!(u(&bodies, "/latency_ms/fetch_body/count"), 60);

    // The same pipelined, 8 commands in flight per session: the same bodies and bytes.
    let pipelined = imap_ok(
        addr,
        &with_users(&[
            "--workload",
            "fetch-bodies",
            "--count",
            "30",
            "--connections",
            "2",
            "--pipelining",
            "8",
        ]),
    );
    assert_eq!(u(&pipelined, "/fetched/bodies"), 60, "{pipelined}");
    assert_eq!(u(&pipelined, "/fetched/body_bytes"), bytes, "{pipelined}");
    assert_eq!(u(&pipelined, "/fetched/bodies_missing"), 0, "{pipelined}");
    assert_eq!(u(&pipelined, "/operations/ok"), 60, "{pipelined}");
    assert_eq!(u(&pipelined, "/latency_ms/fetch_body/count"), 60);
    assert_eq!(u(&pipelined, "/pipelining"), 8);

    // Ranges of 7 (the last of each round is 2 long), 3 in flight: 5 commands per user
    // visit every message once.
    let ranged = imap_ok(
        addr,
        &with_users(&[
            "--workload",
            "fetch-range",
            "--count",
            "5",
            "--range",
            "7",
            "--connections",
            "2",
            "--pipelining",
            "3",
        ]),
    );
    assert_eq!(u(&ranged, "/operations/ok"), 10, "{ranged}");
    assert_eq!(u(&ranged, "/fetched/bodies"), 60, "{ranged}");
    assert_eq!(u(&ranged, "/fetched/body_bytes"), bytes, "{ranged}");
    assert_eq!(u(&ranged, "/fetched/bodies_missing"), 0, "{ranged}");
    assert_eq!(u(&ranged, "/latency_ms/fetch_range/count"), 10);
    assert_eq!(u(&ranged, "/range"), 7);
    // One range over the whole mailbox per user, without pipelining.
    let whole = imap_ok(
        addr,
        &with_users(&["--workload", "fetch-range", "--count", "1", "--range", "30"]),
    );
    assert_eq!(u(&whole, "/fetched/bodies"), 60, "{whole}");
    assert_eq!(u(&whole, "/fetched/body_bytes"), bytes, "{whole}");
    // Pipelining is closed loop only.
    let refused = Command::new(LOADGEN)
        .args(["imap", "--target", addr, "--max-time", "60s"])
        .args(with_users(&[
            "--workload",
            "fetch-range",
            "--count",
            "1",
            "--pipelining",
            "2",
            "--rate",
            "5",
        ]))
        .output()
        .expect("run loadgen");
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("closed loop"));

    let flags = imap_ok(
        addr,
        &with_users(&["--workload", "fetch-flags", "--count", "1"]),
    );
    assert_eq!(u(&flags, "/fetched/flags_envelope"), 60, "{flags}");
    assert_eq!(u(&flags, "/latency_ms/fetch_flags/count"), 2);

    // Every tenth appended message carries the word: 3 per mailbox, per search.
    let searched = imap_ok(
        addr,
        &with_users(&["--workload", "search-text", "--count", "2"]),
    );
    assert_eq!(u(&searched, "/searched/searches"), 4, "{searched}");
    assert_eq!(u(&searched, "/searched/hits"), 12, "{searched}");
    let none = imap_ok(
        addr,
        &with_users(&[
            "--workload",
            "search-text",
            "--count",
            "1",
            "--search",
            "zzzabsent",
        ]),
    );
    assert_eq!(u(&none, "/searched/hits"), 0, "{none}");

    let stored = imap_ok(addr, &with_users(&["--workload", "store", "--count", "10"]));
    assert_eq!(u(&stored, "/stored"), 20, "{stored}");
    assert_eq!(u(&stored, "/latency_ms/store/count"), 20);

    let selected = imap_ok(addr, &with_users(&["--workload", "select", "--count", "3"]));
    assert_eq!(u(&selected, "/selected"), 6, "{selected}");

    // One connection: sessions expunging in the same mailbox would see each other's
    // EXPUNGE responses.
    let expunged = imap_ok(
        addr,
        &with_users(&[
            "--workload",
            "expunge",
            "--count",
            "5",
            "--connections",
            "1",
        ]),
    );
    assert_eq!(u(&expunged, "/expunged"), 10, "{expunged}");
    assert_eq!(maildir_count(&dovecot, "user0"), 25);
    assert_eq!(maildir_count(&dovecot, "user1"), 25);
    let flags = imap_ok(
        addr,
        &with_users(&["--workload", "fetch-flags", "--count", "1"]),
    );
    assert_eq!(u(&flags, "/fetched/flags_envelope"), 50, "{flags}");

    // Open loop, bounded by time: never more than rate × duration operations (60), and
    // most of them even when the logins are slow on a loaded machine.
    let open = imap_ok(
        addr,
        &with_users(&["--workload", "mixed", "--rate", "20", "--duration", "3s"]),
    );
    assert_eq!(open["loop"], "open");
    let ok = u(&open, "/operations/ok");
    assert!((20..=60).contains(&ok), "{open}");
    assert_eq!(u(&open, "/operations/attempted"), ok);

    // A wrong password: refused, counted, exit status 1.
    let (code, refused, stderr) = imap(
        addr,
        &[
            "--user-pattern",
            "user0:wrong",
            "--user-count",
            "1",
            "--workload",
            "select",
            "--count",
            "1",
            "--connections",
            "1",
        ],
    );
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(u(&refused, "/sessions/logins_refused"), 1, "{refused}");
    assert_eq!(u(&refused, "/sessions/logged_in"), 0);
}

#[test]
fn imap_idle_sessions_are_held_then_released() {
    let test = "imap_idle_sessions_are_held_then_released";
    let Some(dovecot) = start_dovecot(test, &[("user0", "secret"), ("user1", "secret")]) else {
        return;
    };
    let idle = imap_ok(
        &dovecot.addr,
        &with_users(&[
            "--workload",
            "idle",
            "--connections",
            "20",
            "--duration",
            "1s",
        ]),
    );
    assert_eq!(u(&idle, "/idle/idling"), 20, "{idle}");
    assert_eq!(u(&idle, "/idle/done"), 20, "{idle}");
    assert_eq!(u(&idle, "/idle/failed"), 0, "{idle}");
    assert_eq!(u(&idle, "/sessions/logged_in"), 20);
    assert_eq!(u(&idle, "/latency_ms/idle/count"), 20);
    // Held for the duration after the last session entered IDLE.
    assert!(idle["elapsed_s"].as_f64().unwrap() >= 1.0, "{idle}");
}
