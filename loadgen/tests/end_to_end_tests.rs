//! End-to-end tests of the `loadgen` binary: against its own sink, against the real relay,
//! and its safety checks. Run with `cargo test -p loadgen` (tests/run.sh does). The file is
//! named `*_tests.rs` because the repository's tidy rule on unwrap() exempts such files.
//!
//! The relay binary: these tests need `relay` built from the same workspace. They find it
//! next to the `loadgen` binary (`<target>/<profile>/relay`, the same directory cargo puts
//! every binary of the workspace in, whatever CARGO_TARGET_DIR is) after running
//! `cargo build -p relay --bin relay` with the same profile and target directory, which is
//! a no-op when it is up to date (tests/run.sh has built it just before).
//!
//! No test sleeps to wait for an event: each waits on the event (a stderr line, a process
//! exit) with a deadline, and every load run is bounded by `--messages` or `--duration`.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use serde_json::Value;

const LOADGEN: &str = env!("CARGO_BIN_EXE_loadgen");
const TIMEOUT: Duration = Duration::from_secs(60);

/// `echo password | relay user add x` (argon2id), as in the relay's own tests.
const PASSWORD_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$ZooLWEChpY79Z6TwJvyWWQ$/qbC5yKMqMV95V9N9XJPga/chMKFOMNMHdI7/CftPiw";

/// A child process whose stderr lines arrive on a channel and whose stdout is collected.
struct Spawned {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
    stdout: Option<std::thread::JoinHandle<String>>,
}

impl Spawned {
    fn start(program: &Path, args: &[&str]) -> Spawned {
        let mut child = Command::new(program)
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        let (tx, lines) = channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut out = child.stdout.take().unwrap();
        let stdout = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = out.read_to_string(&mut text);
            text
        });
        Spawned {
            child,
            lines,
            seen: Vec::new(),
            stdout: Some(stdout),
        }
    }

    /// Waits for a stderr line containing `needle`; returns it.
    fn wait_line(&mut self, needle: &str) -> String {
        self.wait_line_where(needle, |line| line.contains(needle))
    }

    /// Waits for a stderr line satisfying `pred` (`what` describes it in the failure).
    fn wait_line_where(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no stderr line with {what:?} within {TIMEOUT:?}; got:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    fn signal(&self, signal: i32) {
        // The child has not been reaped, so its pid cannot have been reused.
        let rc = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// Waits for the exit (with a deadline); returns the status and stdout.
    fn finish(mut self) -> (ExitStatus, String) {
        let deadline = Instant::now() + TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            // try_wait has no blocking form with a timeout; the stdout reader ends with the
            // process, so poll its end instead of sleeping blindly.
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("process did not exit within {TIMEOUT:?}");
            }
            if self.stdout.as_ref().is_some_and(|h| h.is_finished()) {
                break self.child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stdout = self.stdout.take().unwrap().join().unwrap();
        (status, stdout)
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs loadgen to completion; returns the status, stdout and stderr.
fn loadgen(args: &[&str]) -> (ExitStatus, String, String) {
    let out = Command::new(LOADGEN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run loadgen");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs loadgen with `--json`; returns the parsed summary (asserting success).
fn loadgen_json(args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let (status, stdout, stderr) = loadgen(&all);
    assert!(status.success(), "loadgen {args:?}: {status}\n{stderr}");
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("not one JSON object ({e}): {stdout:?}\nstderr: {stderr}"))
}

fn u(v: &Value, path: &str) -> u64 {
    v.pointer(path)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no number at {path} in {v}"))
}

/// `addr=127.0.0.1:PORT` → `127.0.0.1:PORT`.
fn addr_in(line: &str) -> String {
    let start = line.find("addr=").expect("addr=") + 5;
    line[start..]
        .split(|c: char| c.is_whitespace() || c == '"')
        .next()
        .unwrap()
        .to_string()
}

/// Starts a loadgen server mode (`sink`, `maildrop`) on a free loopback port for up to 120 s
/// with `--json`; returns it and its address.
fn start_server(mode: &str, extra: &[&str]) -> (Spawned, String) {
    let mut args = vec![
        mode,
        "--listen",
        "127.0.0.1:0",
        "--duration",
        "120s",
        "--json",
    ];
    args.extend_from_slice(extra);
    let mut server = Spawned::start(Path::new(LOADGEN), &args);
    let line = server.wait_line("listening");
    let addr = addr_in(&line);
    (server, addr)
}

/// Stops a loadgen server mode with SIGINT and returns its JSON summary.
fn stop_server(server: Spawned) -> Value {
    server.signal(libc::SIGINT);
    let (status, stdout) = server.finish();
    assert!(status.success(), "server exit {status}");
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout:?}"))
}

fn start_sink(extra: &[&str]) -> (Spawned, String) {
    let mut args = vec!["--quiet"];
    args.extend_from_slice(extra);
    start_server("sink", &args)
}

fn stop_sink(sink: Spawned) -> Value {
    stop_server(sink)
}

#[test]
fn smtp_to_sink_counts_agree_and_json_has_the_fields() {
    let (sink, addr) = start_sink(&[]);
    let plain = loadgen_json(&[
        "smtp",
        "--target",
        &addr,
        "--messages",
        "300",
        "--connections",
        "4",
        "--size",
        "4KiB",
    ]);
    let fancy = loadgen_json(&[
        "smtp",
        "--target",
        &addr,
        "--messages",
        "200",
        "--connections",
        "6",
        "--threads",
        "2",
        "--pipelining",
        "--bdat",
        "--bdat-chunk",
        "3000",
        "--mime",
        "--rcpts",
        "2",
        "--messages-per-connection",
        "7",
        "--size-dist",
        "1KiB:60,10KiB:30,100KiB:10",
        "--domain-weights",
        "gmail.test:50,yahoo.test:30",
    ]);
    let received = stop_sink(sink);

    for (report, n) in [(&plain, 300), (&fancy, 200)] {
        assert_eq!(report["mode"], "smtp");
        assert_eq!(report["loop"], "closed");
        assert_eq!(u(report, "/messages/attempted"), n);
        assert_eq!(u(report, "/messages/accepted"), n, "{report}");
        assert_eq!(u(report, "/connection_errors/total"), 0, "{report}");
        assert!(report["msgs_per_s"].as_f64().unwrap() > 0.0);
        assert!(report["mb_per_s"].as_f64().unwrap() > 0.0);
        for h in [
            "connect_to_greeting",
            "mail_to_reply",
            "end_of_data_to_reply",
            "transaction",
        ] {
            for field in ["count", "p50_ms", "p90_ms", "p99_ms", "p99_9_ms", "max_ms"] {
                assert!(
                    report["latency_ms"][h][field].is_number(),
                    "{h}.{field} in {report}"
                );
            }
        }
        assert_eq!(u(report, "/latency_ms/transaction/count"), n);
    }
    // DATA was used for the plain run (354s), BDAT for the other (none).
    assert_eq!(u(&plain, "/replies/354"), 300);
    assert!(fancy["replies"].get("354").is_none(), "{fancy}");
    assert_eq!(u(&fancy, "/recipients/accepted"), 400);
    // 200 messages at 7 per connection: at least 29 sessions.
    assert!(u(&fancy, "/sessions") >= 29, "{fancy}");

    assert_eq!(received["mode"], "sink");
    assert_eq!(u(&received, "/messages"), 500, "{received}");
    assert_eq!(
        u(&received, "/bytes"),
        u(&plain, "/bytes") + u(&fancy, "/bytes"),
        "bytes sent = bytes received"
    );
    assert_eq!(u(&received, "/recipients"), 700);
}

#[test]
fn sink_scripts_inject_faults_and_loadgen_counts_them() {
    let (sink, addr) = start_sink(&[
        "--script",
        "rcpt:every=3:451",
        "--script",
        "eom:every=5:554",
    ]);
    let report = loadgen_json(&[
        "smtp",
        "--target",
        &addr,
        "--messages",
        "60",
        "--connections",
        "1",
        "--size",
        "1KiB",
    ]);
    let received = stop_sink(sink);
    // One connection, one recipient per message, no pipelining: every third message loses
    // its only recipient (451) and is reset without DATA; of the 40 that reach DATA, every
    // fifth is refused at the end (554).
    assert_eq!(u(&report, "/replies/451"), 20, "{report}");
    assert_eq!(u(&report, "/replies/354"), 40, "{report}");
    assert_eq!(u(&report, "/replies/554"), 8, "{report}");
    assert_eq!(u(&report, "/messages/accepted"), 32, "{report}");
    assert_eq!(u(&report, "/messages/rejected"), 28, "{report}");
    assert_eq!(u(&received, "/messages"), 32);
    assert_eq!(u(&received, "/rejected"), 8);

    // Pipelined, DATA goes out with the RCPT: refused with 554 when no recipient was accepted
    // (RFC 2920 §3.1), then the transaction is reset.
    let (sink, addr) = start_sink(&[
        "--script",
        "rcpt:every=3:451",
        "--script",
        "eom:every=5:554",
    ]);
    let report = loadgen_json(&[
        "smtp",
        "--target",
        &addr,
        "--messages",
        "60",
        "--connections",
        "1",
        "--size",
        "1KiB",
        "--pipelining",
    ]);
    let received = stop_sink(sink);
    assert_eq!(u(&report, "/replies/451"), 20, "{report}");
    assert_eq!(u(&report, "/replies/354"), 40, "{report}");
    assert_eq!(u(&report, "/replies/554"), 20 + 8, "{report}");
    assert_eq!(u(&report, "/messages/accepted"), 32, "{report}");
    assert_eq!(u(&received, "/messages"), 32);
}

#[test]
fn open_loop_and_interrupt_print_a_partial_summary() {
    // A sink that prints its rate each second, so the test can wait for messages to arrive.
    let mut sink = Spawned::start(
        Path::new(LOADGEN),
        &[
            "sink",
            "--listen",
            "127.0.0.1:0",
            "--duration",
            "120s",
            "--json",
        ],
    );
    let addr = addr_in(&sink.wait_line("listening"));
    // Open loop at 200 msgs/s for up to 60 s, stopped by SIGINT once messages flow.
    let mut run = Spawned::start(
        Path::new(LOADGEN),
        &[
            "smtp",
            "--target",
            &addr,
            "--duration",
            "60s",
            "--rate",
            "200",
            "--connections",
            "2",
            "--json",
        ],
    );
    let started = Instant::now();
    run.wait_line("loadgen smtp: started");
    sink.wait_line_where("a rate line with messages", |line| {
        line.contains("msgs/s") && !line.contains("total 0 msgs")
    });
    run.signal(libc::SIGINT);
    let (status, stdout) = run.finish();
    assert!(status.success(), "{status}");
    assert!(started.elapsed() < Duration::from_secs(30));
    let report: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["interrupted"], true, "{report}");
    assert_eq!(report["loop"], "open");
    assert_eq!(report["rate"], 200.0);
    let accepted = u(&report, "/messages/accepted");
    assert!(accepted > 0, "{report}");
    // Bounded by the schedule: no more than 200/s over the time it ran (+1 for the first).
    let ran = report["elapsed_s"].as_f64().unwrap();
    assert!(accepted as f64 <= 200.0 * ran + 1.0, "{report}");
    let received = stop_sink(sink);
    assert_eq!(u(&received, "/messages"), accepted);
}

#[test]
fn non_loopback_targets_are_refused_before_connecting() {
    for args in [
        vec!["smtp", "--target", "192.0.2.1:25", "--messages", "1"],
        vec!["smtp", "--target", "mail.example.com:25", "--messages", "1"],
        vec![
            "pop3",
            "--target",
            "192.0.2.1:110",
            "--user-pattern",
            "u{n}:p",
            "--user-count",
            "1",
        ],
        vec!["sink", "--listen", "0.0.0.0:0", "--duration", "1s"],
        vec![
            "imap",
            "--target",
            "192.0.2.1:143",
            "--user-pattern",
            "u{n}:p",
            "--user-count",
            "1",
            "--workload",
            "select",
            "--count",
            "1",
        ],
    ] {
        let started = Instant::now();
        let (status, stdout, stderr) = loadgen(&args);
        assert_eq!(status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("--allow-remote"), "{args:?}: {stderr}");
        assert!(stdout.is_empty());
        // A connection attempt to 192.0.2.1 (TEST-NET-1, unrouted) would take the connect
        // timeout; the refusal comes first.
        assert!(started.elapsed() < Duration::from_secs(5), "{args:?}");
    }
    // Unbounded runs are refused too.
    let (status, _, stderr) = loadgen(&["smtp", "--target", "127.0.0.1:1"]);
    assert_eq!(status.code(), Some(2));
    assert!(stderr.contains("--messages"), "{stderr}");
    let imap = [
        "imap",
        "--target",
        "127.0.0.1:1",
        "--user-pattern",
        "u{n}:p",
    ];
    let (status, _, stderr) =
        loadgen(&[&imap[..], &["--user-count", "1", "--workload", "select"]].concat());
    assert_eq!(status.code(), Some(2));
    assert!(stderr.contains("--count"), "{stderr}");
    let (status, _, stderr) =
        loadgen(&[&imap[..], &["--user-count", "1", "--workload", "idle"]].concat());
    assert_eq!(status.code(), Some(2));
    assert!(stderr.contains("--duration"), "{stderr}");
}

// ---------------------------------------------------------------------------------------------
// Against the real relay

/// Builds (if needed) and returns the relay binary next to loadgen's.
fn relay_bin() -> PathBuf {
    let loadgen = Path::new(LOADGEN);
    let profile_dir = loadgen.parent().expect("binary directory");
    let relay = profile_dir.join("relay");
    let target_dir = profile_dir.parent().expect("target directory");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .current_dir(workspace)
        .args(["build", "--quiet", "-p", "relay", "--bin", "relay"])
        .env("CARGO_TARGET_DIR", target_dir);
    // The profile this test was built with (a custom one, e.g. from
    // CARGO_PROFILE_<NAME>_INHERITS, is in the environment the inner cargo inherits).
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("release") => {
            build.arg("--release");
        }
        Some("debug") | None => {}
        Some(profile) => {
            build.args(["--profile", profile]);
        }
    }
    let status = build.status().expect("run cargo build -p relay");
    assert!(status.success(), "cargo build -p relay failed");
    assert!(relay.exists(), "no relay binary at {}", relay.display());
    relay
}

#[test]
fn loadgen_against_the_relay_counts_what_it_stored_and_pop3_drains_it() {
    let relay = relay_bin();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let config = dir.path().join("relay.toml");
    let mut text = format!(
        "[server]\ncores = 2\nhostname = \"relay.test\"\n\
         [smtp]\nlisten = [\"127.0.0.1:0\"]\n\
         [pop3]\nlisten = [\"127.0.0.1:0\"]\n\
         [spool]\ndir = {:?}\nfsync = true\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [local]\ndomains = [\"localhost\", \"example.test\"]\n",
        spool.to_str().unwrap()
    );
    for name in ["user0", "user1"] {
        text += &format!("[[local.users]]\nname = {name:?}\npassword = {PASSWORD_HASH:?}\n");
    }
    std::fs::write(&config, text).unwrap();
    let mut server = Spawned::start(&relay, &["serve", "--config", config.to_str().unwrap()]);
    let smtp = addr_in(&server.wait_line("protocol=\"smtp\""));
    let pop3 = addr_in(&server.wait_line("protocol=\"pop3\""));
    server.wait_line("relay ready");

    let plain = loadgen_json(&[
        "smtp",
        "--target",
        &smtp,
        "--messages",
        "200",
        "--connections",
        "4",
        "--to-domain",
        "example.test",
        "--users",
        "2",
    ]);
    // The same with pipelining, BDAT and MIME attachments through the relay's MIME policy.
    let chunked = loadgen_json(&[
        "smtp",
        "--target",
        &smtp,
        "--messages",
        "50",
        "--connections",
        "4",
        "--to-domain",
        "example.test",
        "--users",
        "2",
        "--pipelining",
        "--bdat",
        "--mime",
        "--size",
        "20KiB",
    ]);
    assert_eq!(u(&plain, "/messages/accepted"), 200, "{plain}");
    assert_eq!(u(&chunked, "/messages/accepted"), 50, "{chunked}");
    let accepted = u(&plain, "/messages/accepted") + u(&chunked, "/messages/accepted");

    let ls = Command::new(&relay)
        .args(["spool", "ls", "--dir", spool.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(ls.status.success());
    let listing = String::from_utf8_lossy(&ls.stdout);
    let stored = listing
        .lines()
        .find_map(|l| {
            l.strip_prefix("-- ")?
                .strip_suffix(" message(s)")?
                .parse::<u64>()
                .ok()
        })
        .unwrap_or_else(|| panic!("no count in spool ls:\n{listing}"));
    assert_eq!(
        stored, accepted,
        "what loadgen counted = what the relay stored"
    );

    let fetched = loadgen_json(&[
        "pop3",
        "--target",
        &pop3,
        "--user-pattern",
        "user{n}:password",
        "--user-count",
        "2",
        "--pipelining",
    ]);
    assert_eq!(u(&fetched, "/mailboxes/drained"), 2, "{fetched}");
    assert_eq!(u(&fetched, "/messages/retrieved"), accepted, "{fetched}");
    assert_eq!(u(&fetched, "/messages/deleted"), accepted, "{fetched}");
    assert!(u(&fetched, "/bytes") > u(&plain, "/bytes"), "{fetched}");
    assert_eq!(u(&fetched, "/latency_ms/retr/count"), accepted);
    // Deleted means gone: a second pass (users from a file this time) finds empty mailboxes.
    let users = dir.path().join("users.txt");
    std::fs::write(
        &users,
        "# name:password\nuser0:password\n\nuser1:password\n",
    )
    .unwrap();
    let again = loadgen_json(&[
        "pop3",
        "--target",
        &pop3,
        "--users",
        users.to_str().unwrap(),
    ]);
    assert_eq!(u(&again, "/mailboxes/drained"), 2, "{again}");
    assert_eq!(u(&again, "/messages/retrieved"), 0, "{again}");

    server.signal(libc::SIGTERM);
    let (status, _) = server.finish();
    assert!(status.success(), "relay exit {status}");
}

/// `--starttls`: every session goes on over TLS against a relay with a certificate (made
/// here with rcgen), and a server without STARTTLS fails the sessions instead of sending in
/// clear.
#[test]
fn starttls_sessions_run_over_tls() {
    let relay = relay_bin();
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["relay.test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
    let start = |tls: bool, name: &str| {
        let spool = dir.path().join(format!("spool-{name}"));
        let config = dir.path().join(format!("{name}.toml"));
        let mut text = format!(
            "[server]\ncores = 2\nhostname = \"relay.test\"\n\
             [smtp]\nlisten = [\"127.0.0.1:0\"]\n[pop3]\nlisten = []\n[imap]\nlisten = []\n\
             [spool]\ndir = {:?}\n[admin]\nenabled = false\n\
             [local]\ndomains = [\"localhost\", \"example.test\"]\n\
             [[local.users]]\nname = \"user0\"\npassword = {PASSWORD_HASH:?}\n",
            spool.to_str().unwrap()
        );
        if tls {
            text += "[tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n";
        }
        std::fs::write(&config, text).unwrap();
        let mut server = Spawned::start(&relay, &["serve", "--config", config.to_str().unwrap()]);
        let smtp = addr_in(&server.wait_line("protocol=\"smtp\""));
        server.wait_line("relay ready");
        (server, smtp)
    };
    let args = |smtp: &str| {
        vec![
            "smtp".to_string(),
            "--target".into(),
            smtp.to_string(),
            "--messages".into(),
            "100".into(),
            "--connections".into(),
            "4".into(),
            "--to-domain".into(),
            "example.test".into(),
            "--users".into(),
            "1".into(),
            "--pipelining".into(),
            "--starttls".into(),
        ]
    };

    let (server, smtp) = start(true, "tls");
    let args_tls = args(&smtp);
    let report = loadgen_json(&args_tls.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(u(&report, "/messages/accepted"), 100, "{report}");
    let sessions = u(&report, "/sessions");
    assert!(sessions >= 4, "{report}");
    assert_eq!(u(&report, "/tls_sessions"), sessions, "{report}");
    drop(server);

    let (server, smtp) = start(false, "plain");
    let args_plain = args(&smtp);
    let args_plain: Vec<&str> = args_plain.iter().map(String::as_str).collect();
    let (status, stdout, _) = loadgen(&args_plain);
    assert!(
        !status.success(),
        "no session can start without STARTTLS: {stdout}"
    );
    assert!(stdout.contains("does not offer STARTTLS"), "{stdout}");
    drop(server);
}

/// `--message-file`: the file's bytes reach the relay's store unchanged but for CRLF line
/// ends, over DATA (dot-stuffed on the wire) and over BDAT (sent as is), with the envelope
/// sender taken from its From field.
#[test]
fn a_message_file_is_stored_as_it_is() {
    let relay = relay_bin();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let config = dir.path().join("relay.toml");
    let text = format!(
        "[server]\ncores = 1\nhostname = \"relay.test\"\n\
         [smtp]\nlisten = [\"127.0.0.1:0\"]\n\
         [pop3]\nlisten = []\n[imap]\nlisten = []\n\
         [spool]\ndir = {:?}\n\
         [local]\ndomains = [\"example.test\"]\n\
         [[local.users]]\nname = \"user0\"\npassword = {PASSWORD_HASH:?}\n",
        spool.to_str().unwrap()
    );
    std::fs::write(&config, text).unwrap();
    // LF line ends (as dkimsign writes them), a folded header and a line starting with a dot.
    let message = "DKIM-Signature: v=1; a=rsa-sha256; d=sender.test; s=sel;\n\tbh=x; b=y\n\
                   From: \"Sender, The\" <who@Sender.test>\nTo: user0@example.test\n\
                   Subject: file\n\n.a line that starts with a dot\nlast line\n";
    let file = dir.path().join("message.eml");
    std::fs::write(&file, message).unwrap();
    let want = message.replace('\n', "\r\n");

    let mut server = Spawned::start(&relay, &["serve", "--config", config.to_str().unwrap()]);
    let smtp = addr_in(&server.wait_line("protocol=\"smtp\""));
    server.wait_line("relay ready");
    for extra in [&[][..], &["--pipelining", "--bdat"][..]] {
        let mut args = vec![
            "smtp",
            "--target",
            &smtp,
            "--messages",
            "2",
            "--connections",
            "1",
            "--to-domain",
            "example.test",
            "--users",
            "1",
            "--message-file",
            file.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let report = loadgen_json(&args);
        assert_eq!(u(&report, "/messages/accepted"), 2, "{extra:?}: {report}");
    }

    let spool_arg = spool.to_str().unwrap();
    let ls = Command::new(&relay)
        .args(["spool", "ls", "--dir", spool_arg])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&ls.stdout).into_owned();
    let ids: Vec<&str> = listing
        .lines()
        .skip(1)
        .filter(|l| !l.starts_with("--"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(ids.len(), 4, "{listing}");
    assert!(
        listing.contains("who@Sender.test"),
        "sender from the From field: {listing}"
    );
    for id in ids {
        let cat = Command::new(&relay)
            .args(["spool", "cat", "--dir", spool_arg, id])
            .output()
            .unwrap();
        let stored = String::from_utf8_lossy(&cat.stdout);
        assert!(
            stored.ends_with(&want),
            "message {id} is not the file:\n{stored}"
        );
        assert_eq!(
            stored.matches("From:").count(),
            1,
            "no header added: {stored}"
        );
    }

    server.signal(libc::SIGTERM);
    let (status, _) = server.finish();
    assert!(status.success(), "relay exit {status}");
}

#[test]
fn disk_writes_whole_batches_from_every_writer_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    let summary = loadgen_json(&[
        "disk",
        "--dir",
        path,
        "--size",
        "4KiB",
        "--batch",
        "3",
        "--writers",
        "2",
        "--duration",
        "300ms",
    ]);
    assert_eq!(u(&summary, "/writers"), 2);
    assert_eq!(u(&summary, "/batch"), 3);
    assert_eq!(
        u(&summary, "/record_bytes"),
        4096 + 160,
        "the message plus framing"
    );
    let records = u(&summary, "/records");
    let batches = u(&summary, "/batch_latency/count");
    assert!(batches >= 2, "each writer synced at least once: {summary}");
    assert_eq!(records, 3 * batches, "records are counted per whole batch");
    let rate = summary["records_per_s"].as_f64().unwrap();
    let elapsed = summary["elapsed_s"].as_f64().unwrap();
    assert!((rate * elapsed - records as f64).abs() < 1.0, "{summary}");
    assert!(elapsed >= 0.3, "ran its duration: {summary}");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "scratch files removed: {left:?}");

    let prezeroed = loadgen_json(&[
        "disk",
        "--dir",
        path,
        "--batch",
        "2",
        "--duration",
        "200ms",
        "--prezeroed",
    ]);
    assert_eq!(prezeroed["prezeroed"], Value::Bool(true));
    assert_eq!(summary["prezeroed"], Value::Bool(false));
    assert_eq!(
        u(&prezeroed, "/records"),
        2 * u(&prezeroed, "/batch_latency/count")
    );
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());

    let (status, _, stderr) = loadgen(&["disk", "--dir", path, "--batch", "0"]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--batch and --writers must be at least 1"),
        "{stderr}"
    );
}

fn start_maildrop(protocol: &str, messages: &str, size: &str) -> (Spawned, String) {
    let args = [
        "--protocol",
        protocol,
        "--messages",
        messages,
        "--size",
        size,
    ];
    start_server("maildrop", &args)
}

/// Runs a Python script with the port of `addr` as its argument; it must exit 0.
fn python_against(script: &str, addr: &str) {
    let port = addr.rsplit(':').next().unwrap();
    let out = Command::new("python3")
        .args(["-c", script, port])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The maildrop serves loadgen's IMAP body fetches (one per command and ranges) and POP3
/// drains, every message with the size asked for, and Python's imaplib and poplib read the
/// same messages from it.
#[test]
fn maildrop_serves_loadgen_and_python_the_same_messages() {
    let (imap, addr) = start_maildrop("imap", "50", "2KiB");
    let common = [
        "imap",
        "--target",
        &addr,
        "--user-pattern",
        "user{n}:pw",
        "--user-count",
        "3",
        "--connections",
        "2",
    ];
    for extra in [
        &["--workload", "fetch-bodies", "--count", "50"][..],
        &[
            "--workload",
            "fetch-range",
            "--range",
            "10",
            "--count",
            "5",
            "--pipelining",
            "2",
        ],
    ] {
        let mut args = common.to_vec();
        args.extend_from_slice(extra);
        let summary = loadgen_json(&args);
        assert_eq!(u(&summary, "/fetched/bodies"), 150, "{extra:?}: {summary}");
        assert_eq!(u(&summary, "/fetched/body_bytes"), 150 * 2048, "{summary}");
        assert_eq!(u(&summary, "/fetched/bodies_missing"), 0, "{summary}");
    }
    let python = r#"
import imaplib, sys
m = imaplib.IMAP4("127.0.0.1", int(sys.argv[1]))
m.login("someone", "anything")
typ, data = m.select("INBOX", readonly=True)
assert typ == "OK" and data == [b"50"], data
typ, data = m.uid("FETCH", "7:9", "(BODY.PEEK[])")
assert typ == "OK", data
bodies = [part[1] for part in data if isinstance(part, tuple)]
assert len(bodies) == 3 and all(len(b) == 2048 for b in bodies), [len(b) for b in bodies]
assert b"Subject: message 8\r\n" in bodies[1], bodies[1][:120]
try:
    m.uid("STORE", "1", "+FLAGS", "(\\Seen)")
    raise SystemExit("STORE answered OK by a read-only maildrop")
except imaplib.IMAP4.error as e:
    assert "not served" in str(e), e
m.logout()
"#;
    python_against(python, &addr);
    let report = stop_server(imap);
    assert_eq!(u(&report, "/messages_served"), 150 + 150 + 3, "{report}");

    let (pop3, addr) = start_maildrop("pop3", "20", "1KiB");
    for extra in [&[][..], &["--pipelining", "--window", "8"]] {
        let mut args = vec![
            "pop3",
            "--target",
            &addr,
            "--user-pattern",
            "user{n}:pw",
            "--user-count",
            "3",
            "--connections",
            "2",
        ];
        args.extend_from_slice(extra);
        let summary = loadgen_json(&args);
        assert_eq!(
            u(&summary, "/messages/retrieved"),
            60,
            "{extra:?}: {summary}"
        );
    }
    let python = r#"
import poplib, sys
p = poplib.POP3("127.0.0.1", int(sys.argv[1]))
p.user("someone"); p.pass_("anything")
assert p.stat() == (20, 20 * 1024), p.stat()
resp, lines, octets = p.retr(3)
assert resp.startswith(b"+OK") and b"Subject: message 3" in lines, lines[:4]
assert octets >= 1024, octets
p.dele(3)
assert p.stat() == (19, 19 * 1024), p.stat()
try:
    p.retr(3)
    raise SystemExit("a deleted message was retrieved")
except poplib.error_proto:
    pass
p.quit()
"#;
    python_against(python, &addr);
    let report = stop_server(pop3);
    assert_eq!(u(&report, "/messages_served"), 60 + 60 + 1, "{report}");
}
