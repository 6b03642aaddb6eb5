//! `relay init` and postmaster, through the real binary, real sockets and Python's smtplib and
//! poplib:
//!
//! - the README's first-run commands, exactly as written there (read from README.md at test
//!   time), with its directory `/tmp/relay` replaced by a fresh temporary one and the printed
//!   password given on stdin where a person would type it: init, serve, send and fetch;
//! - `relay init` a second time refuses, names the files and changes nothing; the modes of
//!   the files that hold secrets and of the spool; `relay check` passes without a warning;
//! - postmaster on the embedded default (only the listeners on port 0 and the spool
//!   directory set, no user at all): accepted in any case, kept, and readable over POP3 once
//!   a user named postmaster exists; `relay check` warns until then.

#[allow(unused_macros)] // the engine_tests! macro is for the server tests
mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{describe, relay_bin, relay_cmd, repo_path, run_with_timeout, COMMAND_TIMEOUT};

/// A `relay serve` (or a shell that execs one) with its stderr lines collected.
struct Served {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Served {
    /// Spawns `command` and waits for `relay ready`.
    fn start(mut command: Command) -> Served {
        command
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn relay serve");
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut served = Served {
            child,
            lines,
            seen: Vec::new(),
        };
        served.wait_for("relay ready");
        served
    }

    fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + common::READY_TIMEOUT;
        loop {
            if let Some(line) = self.seen.iter().find(|l| l.contains(needle)) {
                return line.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!(
                    "no `{needle}` from the relay; stderr:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    fn listening(&self, protocol: &str) -> SocketAddr {
        self.seen
            .iter()
            .filter(|l| common::field_value(l, "protocol").as_deref() == Some(protocol))
            .find_map(|l| common::listen_addr(l))
            .unwrap_or_else(|| panic!("no {protocol} listener:\n{}", self.seen.join("\n")))
    }

    /// SIGTERM, then the exit (drained: the spool is synced).
    fn stop(mut self) {
        // SAFETY: our own child, not yet reaped (we reap it below).
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        self.wait_for("stopped");
        let status = self.child.wait().expect("wait relay");
        assert!(status.success(), "relay exited with {status}");
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The README's first-run block: the lines of the first ```sh fence after `## First run`.
fn readme_first_run() -> Vec<String> {
    let readme = std::fs::read_to_string(repo_path("README.md")).expect("README.md");
    let section = readme
        .split_once("\n## First run\n")
        .expect("README has a `## First run` section")
        .1;
    let block = section
        .split_once("```sh\n")
        .expect("a ```sh block in the first-run section")
        .1;
    let block = block.split_once("```").expect("closed block").0;
    block.lines().map(str::to_string).collect()
}

/// The command part of a README line (before its `#` comment).
fn command_part(line: &str) -> &str {
    line.split_once(" #").map_or(line, |(c, _)| c).trim()
}

/// `PATH` with the relay under test first as `relay` (as `cargo install` would put it), through
/// a link in `bin` (`RELAY_TEST_BIN` may name a copy with another name).
fn path_with_relay(bin: &Path) -> String {
    std::fs::create_dir_all(bin).expect("bin dir");
    std::os::unix::fs::symlink(relay_bin(), bin.join("relay")).expect("link relay");
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

fn assert_port_free(port: u16) {
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "127.0.0.1:{port} is taken by another process: the README's first run listens there \
         (a relay would share it through SO_REUSEPORT), so this test needs it free"
    );
}

fn password_from(stdout: &[u8]) -> String {
    String::from_utf8_lossy(stdout)
        .lines()
        .find_map(|l| l.strip_prefix("password: "))
        .expect("`relay init` prints `password: …`")
        .to_string()
}

#[test]
fn readme_first_run_sends_over_smtp_and_fetches_over_pop3() {
    let lines = readme_first_run();
    assert_eq!(lines.len(), 3, "three commands: {lines:?}");
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("relay");
    let dir = dir.to_str().expect("utf-8 temp path");
    let commands: Vec<String> = lines
        .iter()
        .map(|l| command_part(l).replace("/tmp/relay", dir))
        .collect();
    assert!(commands[0].starts_with("relay init "), "{commands:?}");
    assert!(
        commands[1].starts_with("relay serve ") && commands[1].ends_with('&'),
        "{commands:?}"
    );
    let path = path_with_relay(&tmp.path().join("bin"));
    let shell = |command: &str| {
        let mut shell = Command::new("bash");
        shell
            .arg("-c")
            .arg(command)
            .current_dir(repo_path(""))
            .env("PATH", &path);
        shell
    };

    // 1. init: prints the password once.
    let init = run_with_timeout(&mut shell(&commands[0]), COMMAND_TIMEOUT);
    assert!(init.status.success(), "{}", describe(&init));
    let password = password_from(&init.stdout);

    // 2. serve, in the background (the test keeps the process to stop it).
    assert_port_free(2525);
    assert_port_free(1110);
    assert_port_free(1143);
    let background = commands[1].trim_end_matches('&').trim();
    let relay = Served::start(shell(&format!("exec {background}")));
    assert_eq!(relay.listening("smtp").port(), 2525);
    assert_eq!(relay.listening("pop3").port(), 1110);
    assert_eq!(relay.listening("imap").port(), 1143);

    // 3. send and fetch, the password typed on stdin.
    let mut client = shell(&commands[2]);
    client
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = client.spawn().expect("run the third command");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{password}\n").as_bytes())
        .expect("type the password");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let output = rx
        .recv_timeout(COMMAND_TIMEOUT)
        .expect("the third command finishes")
        .expect("its output");
    assert!(output.status.success(), "{}", describe(&output));
    let fetched = String::from_utf8_lossy(&output.stdout);
    assert!(
        fetched.contains("Hello from smtplib; fetched with poplib."),
        "{}",
        describe(&output)
    );
    assert!(fetched.starts_with("Received: "), "{fetched}");
    relay.stop();
}

/// Every path under `dir` with its mode and content (directories: empty content).
fn snapshot(dir: &Path) -> Vec<(PathBuf, u32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).expect("metadata");
        let mode = meta.permissions().mode() & 0o7777;
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).expect("read_dir") {
                stack.push(entry.expect("entry").path());
            }
            out.push((path, mode, Vec::new()));
        } else {
            out.push((path.clone(), mode, std::fs::read(&path).expect("read")));
        }
    }
    out.sort();
    out
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn init_modes_check_and_a_second_init_refuses_and_changes_nothing() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("r");
    let first = relay_cmd([
        "init".as_ref(),
        "--dir".as_ref(),
        dir.as_os_str(),
        "--domain".as_ref(),
        "example.test".as_ref(),
        "--hostname".as_ref(),
        "mail.example.test".as_ref(),
    ]);
    assert!(first.status.success(), "{}", describe(&first));
    let password = password_from(&first.stdout);
    assert_eq!(password.len(), 27, "{password}");
    let users = std::fs::read_to_string(dir.join("users")).expect("users file");
    assert!(users.contains("admin $argon2id$") && !users.contains(&password));
    assert_eq!(mode(&dir.join("users")), 0o600);
    assert_eq!(mode(&dir.join("tls/key.pem")), 0o600);
    assert_eq!(mode(&dir.join("spool")), 0o700);

    let config = dir.join("relay.toml");
    let check = relay_cmd(["check".as_ref(), "--config".as_ref(), config.as_os_str()]);
    assert!(check.status.success(), "{}", describe(&check));
    assert!(check.stderr.is_empty(), "{}", describe(&check));
    let effective = String::from_utf8_lossy(&check.stdout);
    assert!(
        effective.contains("hostname = \"mail.example.test\""),
        "{effective}"
    );

    // The password that was printed is the stored one (`relay user check` reads stdin).
    let mut user_check = Command::new(relay_bin());
    user_check
        .args(["user", "check", "admin", "--config"])
        .arg(&config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut child = user_check.spawn().expect("relay user check");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{password}\n").as_bytes())
        .expect("password");
    assert!(child.wait().expect("wait").success());

    let before = snapshot(&dir);
    let second = relay_cmd(["init".as_ref(), "--dir".as_ref(), dir.as_os_str()]);
    assert!(!second.status.success(), "{}", describe(&second));
    let err = String::from_utf8_lossy(&second.stderr);
    for name in [
        "relay.toml",
        "users",
        "tls/cert.pem",
        "tls/key.pem",
        "spool",
    ] {
        assert!(err.contains(&format!("r/{name}")), "{name}: {err}");
    }
    assert!(second.stdout.is_empty(), "no password printed again");
    assert_eq!(snapshot(&dir), before, "the second init changed something");

    // One file in the way is enough: nothing else is written.
    let other = tmp.path().join("other");
    std::fs::create_dir(&other).expect("mkdir");
    std::fs::write(other.join("users"), "mine\n").expect("write");
    let third = relay_cmd(["init".as_ref(), "--dir".as_ref(), other.as_os_str()]);
    assert!(!third.status.success(), "{}", describe(&third));
    assert!(String::from_utf8_lossy(&third.stderr).contains("other/users"));
    let left: Vec<_> = std::fs::read_dir(&other)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(left, ["users"]);
}

/// The embedded default with only what a parallel test must change: the listeners (port 0)
/// and the spool directory. Everything else, `[local]` included (no users, no aliases), is
/// the embedded default.
fn embedded_default_with(spool: &Path, extra: &str) -> String {
    format!(
        "[smtp]\nlisten = [\"127.0.0.1:0\"]\n[pop3]\nlisten = [\"127.0.0.1:0\"]\n\
         [imap]\nlisten = [\"127.0.0.1:0\"]\n\
         [spool]\ndir = {:?}\n{extra}",
        spool.to_str().expect("utf-8 temp path")
    )
}

#[test]
fn postmaster_is_accepted_on_the_embedded_default_and_read_once_a_user_is_named() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let spool = tmp.path().join("spool");
    let config = tmp.path().join("relay.toml");
    std::fs::write(&config, embedded_default_with(&spool, "")).expect("config");

    // `relay check` warns, on this config and on the embedded default itself.
    for args in [
        vec!["check".as_ref(), "--config".as_ref(), config.as_os_str()],
        vec!["check".as_ref()],
    ] {
        let check = relay_cmd(&args);
        assert!(check.status.success(), "{}", describe(&check));
        assert!(
            String::from_utf8_lossy(&check.stderr)
                .contains("warning: no user receives mail for postmaster"),
            "{}",
            describe(&check)
        );
    }

    let mut serve = Command::new(relay_bin());
    serve.arg("serve").arg("--config").arg(&config);
    let relay = Served::start(serve);
    let mut smtp = common::Client::connect(relay.listening("smtp")).expect("connect");
    let greeting = smtp.read_reply().expect("greeting");
    assert_eq!(greeting.code, 220, "{greeting}");
    smtp.ehlo();
    let mut sent = Vec::new();
    for (n, rcpt) in ["postmaster@localhost", "PostMaster@LOCALHOST", "POSTMASTER"]
        .iter()
        .enumerate()
    {
        let marker = format!("postmaster-{n}");
        let message = common::smtp::message(&marker, &["to the postmaster"]);
        let reply = smtp
            .transaction("someone@remote.test", &[rcpt], &message)
            .expect("transaction");
        assert!(reply.is(250, "2.0.0"), "{rcpt}: {reply:?}");
        sent.push(marker);
    }
    // Anyone else is still unknown.
    smtp.expect("MAIL FROM:<someone@remote.test>", 250);
    smtp.expect("RCPT TO:<nobody@localhost>", 550);
    smtp.quit();
    relay.stop();

    // A user named postmaster reads what was kept.
    let users = tmp.path().join("users");
    let mut add = Command::new(relay_bin());
    add.args(["user", "add", "postmaster", "--file"])
        .arg(&users)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = add.spawn().expect("relay user add");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"pm-secret\n")
        .expect("password");
    assert!(child.wait().expect("wait").success());
    std::fs::write(
        &config,
        embedded_default_with(
            &spool,
            // (and the greeting's name the POP3 test client expects)
            &format!(
                "[server]\nhostname = \"relay.test\"\n[local]\nusers_file = {:?}\n",
                users.to_str().expect("utf-8")
            ),
        ),
    )
    .expect("config");
    let check = relay_cmd(["check".as_ref(), "--config".as_ref(), config.as_os_str()]);
    assert!(check.status.success(), "{}", describe(&check));
    assert!(check.stderr.is_empty(), "{}", describe(&check));

    let mut serve = Command::new(relay_bin());
    serve.arg("serve").arg("--config").arg(&config);
    let relay = Served::start(serve);
    let mut pop = common::pop3::Pop3::login_retrying(
        relay.listening("pop3"),
        "postmaster",
        "pm-secret",
        Duration::from_secs(10),
    );
    let (count, _) = pop.stat();
    assert_eq!(count, sent.len());
    for (n, marker) in sent.iter().enumerate() {
        let body = pop.retr(n + 1);
        assert!(
            common::find(&body, marker.as_bytes()).is_some(),
            "message {} lacks {marker}",
            n + 1
        );
    }
    pop.ok("QUIT");
    relay.stop();
}
