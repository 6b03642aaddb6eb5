//! Issue 14 (low), what `relay check` and the loader say about a config: secrets are redacted
//! from the effective configuration, a users file or TLS key readable by group or others is
//! warned about, and an alias without targets is refused; and what the spool's docs promise:
//! an offline compaction next to a running server is refused by the spool's lock. Runs the
//! real binary.

#[allow(unused_macros)] // the engine_tests! macro is for the server tests
mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{describe, relay_cmd, Relay, Settings, TEST_PASSWORD_HASH};

const APOP_SECRET: &str = "apop-secret-never-shown";

fn write(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A config with an inline user (hash and APOP secret), a users file and a TLS key pair.
fn config_dir(users_mode: u32, key_mode: u32) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = rcgen::generate_simple_self_signed(vec!["relay.test".to_string()]).expect("cert");
    write(&dir.path().join("cert.pem"), &cert.cert.pem(), 0o644);
    write(
        &dir.path().join("key.pem"),
        &cert.signing_key.serialize_pem(),
        key_mode,
    );
    write(
        &dir.path().join("users"),
        &format!("filed {TEST_PASSWORD_HASH}\n"),
        users_mode,
    );
    let config = format!(
        "[tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n\
         [local]\nusers_file = \"users\"\n\
         [[local.users]]\nname = \"inline\"\npassword = {TEST_PASSWORD_HASH:?}\napop_secret = {APOP_SECRET:?}\n"
    );
    write(&dir.path().join("relay.toml"), &config, 0o644);
    dir
}

fn check(dir: &Path) -> std::process::Output {
    relay_cmd([
        "check".as_ref(),
        "--config".as_ref(),
        dir.join("relay.toml").as_os_str(),
    ])
}

#[test]
fn check_redacts_password_hashes_and_apop_secrets() {
    let dir = config_dir(0o600, 0o600);
    let output = check(dir.path());
    assert!(output.status.success(), "{}", describe(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    // The hash's salt and digest are its secret part; neither may be shown.
    let digest = TEST_PASSWORD_HASH.rsplit('$').next().expect("digest");
    assert!(
        !stdout.contains(digest) && !stdout.contains("$argon2id$"),
        "a password hash in `relay check`:\n{stdout}"
    );
    assert!(
        !stdout.contains(APOP_SECRET),
        "the APOP secret in `relay check`:\n{stdout}"
    );
    assert!(stdout.contains("name = \"inline\""), "{stdout}");
    assert!(stdout.contains("redacted"), "{stdout}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("readable"),
        "no warning expected:\n{stderr}"
    );
}

#[test]
fn check_warns_about_secrets_readable_by_others() {
    let dir = config_dir(0o644, 0o640);
    let output = check(dir.path());
    assert!(output.status.success(), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for file in ["users", "key.pem"] {
        let path = dir.path().join(file);
        assert!(
            stderr
                .lines()
                .any(|l| l.contains(&*path.to_string_lossy()) && l.contains("readable")),
            "no warning about {}:\n{stderr}",
            path.display()
        );
    }
}

#[test]
fn an_alias_without_targets_stops_the_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        &dir.path().join("relay.toml"),
        "[local.aliases]\n\"void@localhost\" = []\n",
        0o644,
    );
    let output = check(dir.path());
    assert!(!output.status.success(), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("void@localhost") && stderr.contains("no targets"),
        "{stderr}"
    );
}

/// `spool/mod.rs` and the README said nothing locks the spool directory; the lock exists.
/// This pins the behaviour the corrected text describes.
#[test]
fn spool_compact_is_refused_while_a_server_holds_the_spool() {
    let relay = Relay::start(Settings::auto());
    let compact = || {
        relay_cmd([
            "spool".as_ref(),
            "compact".as_ref(),
            "--config".as_ref(),
            relay.config_path.as_os_str(),
        ])
    };
    let output = compact();
    assert!(!output.status.success(), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("lock") && stderr.contains("another process"),
        "{stderr}"
    );
    relay.stop();
    let output = compact();
    assert!(output.status.success(), "{}", describe(&output));
}

/// A reader that has gone (`relay tune check | head -1`) ends the command quietly: before,
/// the `print!` behind the report panicked ("failed printing to stdout: Broken pipe", 101).
#[test]
fn a_closed_stdout_is_not_a_panic() {
    use std::process::{Command, Stdio};
    for args in [&["tune", "check"][..], &["check"][..], &["--help"][..]] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_relay"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Close the read end before the relay writes anything.
        drop(child.stdout.take());
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("panicked"), "relay {args:?}: {stderr}");
        assert_ne!(output.status.code(), Some(101), "relay {args:?}: {stderr}");
    }
}

/// Two of our own listeners on one port (here SMTP on one address and IMAP on the wildcard
/// of the same port): every listener sets SO_REUSEPORT, so the kernel let both binds succeed
/// and spread the port's clients over the two protocols. The start must refuse it, naming both.
#[test]
fn two_protocols_on_one_port_stop_the_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let spool = dir.path().join("spool");
    write(
        &dir.path().join("relay.toml"),
        &format!(
            "[server]\ncores = 1\n[smtp]\nlisten = [\"127.0.0.1:{port}\"]\n\
             [imap]\nlisten = [\"0.0.0.0:{port}\"]\n[spool]\ndir = {spool:?}\n"
        ),
        0o644,
    );
    let mut serve = std::process::Command::new(common::relay_bin());
    serve
        .args(["serve", "--config"])
        .arg(dir.path().join("relay.toml"))
        .env("NO_COLOR", "1");
    let output = common::run_with_timeout(&mut serve, std::time::Duration::from_secs(20));
    assert!(!output.status.success(), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("overlaps")
            && stderr.contains(&format!("127.0.0.1:{port}"))
            && stderr.contains(&format!("0.0.0.0:{port}")),
        "{stderr}"
    );
}
