//! The relay under Docker's default seccomp profile, without Docker: the real binary is
//! started through tests/py/seccomp_exec.py, which loads (with libseccomp, an implementation
//! no one here wrote) what that profile does to io_uring: `io_uring_setup`, `io_uring_enter`
//! and `io_uring_register` fail with EPERM (moby's profiles/seccomp/default.json: default
//! action SCMP_ACT_ERRNO, defaultErrnoRet 1, and no io_uring call on its allow list).
//!
//! With `server.io = "auto"` the relay must start on epoll with one warning naming the
//! cause, take and store mail over SMTP, serve it over POP3, and answer `relay stat` (the
//! image's HEALTHCHECK), which must fail once the server is gone. The same holds for the
//! image's own config, packaging/container/relay.toml.

#[macro_use]
#[allow(unused_macros)]
mod common;

use std::time::Duration;

use common::{describe, relay_cmd, repo_path, Relay, Settings};

/// The system interpreter: Debian's python3-seccomp installs the bindings for it only.
const SYSTEM_PYTHON: &str = "/usr/bin/python3";

/// The container image's config, as shipped.
const CONTAINER_CONFIG: &str = "packaging/container/relay.toml";

/// `python3 seccomp_exec.py --`: the relay's command line follows.
fn seccomp_wrapper() -> Vec<String> {
    let probe = wrapper_denies_io_uring();
    assert!(
        probe.status.success(),
        "{SYSTEM_PYTHON} cannot load a seccomp filter (tests/run.sh installs python3-seccomp): {}",
        describe(&probe)
    );
    vec![
        SYSTEM_PYTHON.into(),
        repo_path("tests/py/seccomp_exec.py")
            .to_string_lossy()
            .into_owned(),
        "--".into(),
    ]
}

/// The wrapper itself works: a child under it gets EPERM from io_uring_setup (425 on every
/// architecture since the io_uring calls joined the common table), so a wrapper that loads
/// nothing fails here rather than passing as a relay that runs on io_uring.
fn wrapper_denies_io_uring() -> std::process::Output {
    let script = "import ctypes, errno, sys\n\
                  libc = ctypes.CDLL(None, use_errno=True)\n\
                  params = ctypes.create_string_buffer(120)\n\
                  rc = libc.syscall(425, 8, params)\n\
                  err = ctypes.get_errno()\n\
                  sys.exit(0 if rc == -1 and err == errno.EPERM else 'io_uring_setup: rc=%d errno=%d' % (rc, err))\n";
    let mut command = std::process::Command::new(SYSTEM_PYTHON);
    command
        .arg(repo_path("tests/py/seccomp_exec.py"))
        .args(["--", SYSTEM_PYTHON, "-c", script]);
    common::run_with_timeout(&mut command, common::COMMAND_TIMEOUT)
}

/// The first line a server sends on a new connection.
fn first_line(addr: std::net::SocketAddr) -> String {
    use std::io::BufRead;
    let stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(common::COMMAND_TIMEOUT))
        .expect("set_read_timeout");
    let mut line = String::new();
    std::io::BufReader::new(stream)
        .read_line(&mut line)
        .expect("read the greeting");
    line
}

/// Descriptors of the process that are io_uring instances.
fn uring_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/PID/fd")
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path())
                .map(|t| t.to_string_lossy().contains("io_uring"))
                .unwrap_or(false)
        })
        .count()
}

/// The fallback is one WARN line naming the denial; nothing at ERROR; the ready line and the
/// kernel agree that the engine is epoll.
fn assert_epoll_fallback(relay: &Relay) {
    let warning = relay.wait_log(
        &["io_uring unavailable, using epoll:"],
        Duration::from_secs(1),
    );
    assert!(warning.contains("WARN"), "not a warning: {warning}");
    assert!(
        warning.contains("EPERM") && warning.contains("seccomp"),
        "the warning must name the denial and its likely cause: {warning}"
    );
    let warnings = relay
        .log_lines()
        .iter()
        .filter(|l| l.contains("io_uring unavailable"))
        .count();
    assert_eq!(warnings, 1, "one warning, not one per shard");
    assert!(
        !relay.log_lines().iter().any(|l| l.contains("ERROR")),
        "an error was logged:\n{}",
        relay.log_lines().join("\n")
    );
    assert!(
        relay.ready_line.contains("engine=epoll"),
        "{}",
        relay.ready_line
    );
    assert_eq!(uring_fds(relay.pid()), 0, "io_uring fds under the filter");
}

/// `relay stat --config FILE`, the image's HEALTHCHECK command.
fn health_check(relay: &Relay) -> std::process::Output {
    let config = relay.config_path.to_string_lossy().into_owned();
    relay_cmd(["stat", "--config", &config])
}

fn assert_healthy(relay: &Relay) {
    let stat = health_check(relay);
    assert!(stat.status.success(), "relay stat: {}", describe(&stat));
    assert!(!stat.stdout.is_empty(), "relay stat printed nothing");
}

/// Stops the relay (clean exit 0, spool durable), then the health check must fail with one
/// line, so an orchestrator sees a dead server as unhealthy.
fn stop_and_check_unhealthy(relay: &Relay) {
    relay.stop();
    let stat = health_check(relay);
    assert!(
        !stat.status.success(),
        "relay stat succeeded with the server stopped: {}",
        describe(&stat)
    );
    assert_ne!(stat.status.code(), None, "killed: {}", describe(&stat));
    let stderr = String::from_utf8_lossy(&stat.stderr);
    assert_eq!(
        stderr.trim().lines().count(),
        1,
        "one line: {}",
        describe(&stat)
    );
}

#[test]
fn auto_falls_back_to_epoll_when_seccomp_denies_io_uring_and_serves_smtp_and_pop3() {
    let mut settings = Settings::auto();
    settings.wrapper = seccomp_wrapper();
    settings.admin_toml = String::new(); // the socket only, as in the image
    let relay = Relay::start(settings);
    assert_epoll_fallback(&relay);

    let content = b"From: sender@example.test\r\nTo: one@localhost\r\n\
                    Subject: under seccomp\r\n\r\nbody on epoll\r\n";
    relay.deliver(&["one@localhost"], content);
    let mut pop = relay.pop3_login("one");
    let (count, _) = pop.stat();
    assert_eq!(count, 1);
    let fetched = pop.retr(1);
    let text = String::from_utf8_lossy(&fetched);
    assert!(
        text.contains("Subject: under seccomp") && text.contains("body on epoll"),
        "{text}"
    );
    pop.quit().expect("QUIT");

    assert_healthy(&relay);
    stop_and_check_unhealthy(&relay);
}

#[test]
fn the_container_config_passes_check() {
    let path = repo_path(CONTAINER_CONFIG).to_string_lossy().into_owned();
    let output = relay_cmd(["check", "--config", &path]);
    assert!(output.status.success(), "{}", describe(&output));
    let effective = String::from_utf8_lossy(&output.stdout);
    for line in [
        "listen = [\"0.0.0.0:2525\"]",
        "listen = [\"0.0.0.0:1110\"]",
        "dir = \"/var/spool/relay\"",
    ] {
        assert!(
            effective.contains(line),
            "effective config lacks {line}: {effective}"
        );
    }
}

/// The image's config, with only its listen addresses and spool moved into the test's
/// directory, under the Docker-like filter: it must start on epoll, greet SMTP and POP3
/// clients, pass the health check while it runs and fail it once stopped.
#[test]
fn the_container_config_serves_on_epoll_under_the_seccomp_filter() {
    let shipped =
        std::fs::read_to_string(repo_path(CONTAINER_CONFIG)).expect("read the container config");
    let dir = common::new_workdir();
    let spool = format!("dir = {:?}", dir.path().join("spool"));
    let mut text = shipped;
    for (from, to) in [
        ("\"0.0.0.0:2525\"", "\"127.0.0.1:0\""),
        ("\"0.0.0.0:1110\"", "\"127.0.0.1:0\""),
        ("\"0.0.0.0:1143\"", "\"127.0.0.1:0\""),
        ("dir = \"/var/spool/relay\"", spool.as_str()),
    ] {
        assert_eq!(
            text.matches(from).count(),
            1,
            "{CONTAINER_CONFIG} no longer has exactly one {from}: update this test"
        );
        text = text.replace(from, to);
    }
    let mut settings = Settings::auto();
    settings.wrapper = seccomp_wrapper();
    settings.raw_config = Some(text);
    let relay = Relay::start_in(dir, settings);
    assert_epoll_fallback(&relay);

    // The shipped config names no host (the container's), so the greetings are read raw.
    let greeting = first_line(relay.addr);
    assert!(greeting.starts_with("220 "), "SMTP greeting: {greeting:?}");
    let greeting = first_line(relay.pop3_addr);
    assert!(greeting.starts_with("+OK "), "POP3 greeting: {greeting:?}");
    let imap = relay
        .listening("imap")
        .expect("the container config serves IMAP");
    let greeting = first_line(imap);
    assert!(greeting.starts_with("* OK "), "IMAP greeting: {greeting:?}");

    assert_healthy(&relay);
    stop_and_check_unhealthy(&relay);
}
