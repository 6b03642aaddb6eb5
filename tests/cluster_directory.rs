//! The cluster's directory in PostgreSQL, end to end: `relay cluster migrate`, `relay user …`
//! writing PostgreSQL, a running relay that follows the changes through LISTEN/NOTIFY (mail
//! accepted, POP3 logins, 550 after a delete) without a restart, logins and mail from the
//! cached directory while PostgreSQL is down, the reconnect, a start from the cache file,
//! and the refusals (no schema, a newer schema, PostgreSQL down without a cache).
//!
//! Round trips are counted: the relay logs its cumulative count with every reload, and
//! PostgreSQL's own view of the relay's connection (`pg_stat_activity.state_change`, which
//! moves with every statement) shows that logins and RCPTs send none.

#[allow(unused_macros)]
mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::services::Postgres;
use common::{describe, field_value, relay_bin, Relay, Settings, COMMAND_TIMEOUT};

const WAIT: Duration = Duration::from_secs(30);

/// A one-node cluster whose directory is `pg`'s (the harness's file users stay too).
fn settings(pg: &Postgres) -> Settings {
    Settings {
        extra_toml: format!(
            "[cluster]\nnode = \"a\"\n[[cluster.nodes]]\nname = \"a\"\ncluster = \"127.0.0.1:1\"\n\
             [cluster.postgres]\nconninfo = {:?}\n",
            pg.conninfo()
        ),
        ..Settings::auto()
    }
}

/// The config file of `settings` for a relay in `dir` (what `relay serve` will read too).
fn write_config(dir: &Path, settings: &Settings) -> std::path::PathBuf {
    let path = dir.join("relay.toml");
    std::fs::write(&path, settings.render(&dir.join("spool"))).expect("config");
    path
}

/// `relay ARGS…` with `input` on stdin, bounded.
fn relay_with_input(args: &[&str], config: &Path, input: &str) -> Output {
    let mut child = Command::new(relay_bin())
        .args(args)
        .arg("--config")
        .arg(config)
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn relay");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    rx.recv_timeout(COMMAND_TIMEOUT)
        .expect("relay command finished in time")
        .expect("relay command output")
}

fn relay_ok(args: &[&str], config: &Path, input: &str) -> String {
    let output = relay_with_input(args, config, input);
    assert!(
        output.status.success(),
        "relay {args:?}: {}",
        describe(&output)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The relay's cumulative PostgreSQL round trips, from its last reload line.
fn round_trips(relay: &Relay) -> u64 {
    relay
        .log_lines()
        .iter()
        .rev()
        .find(|l| l.contains("cluster directory reloaded"))
        .and_then(|l| field_value(l, "round_trips"))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Waits for a reload past `after` round trips whose user count is `users`; returns the
/// round trips it reports.
fn wait_reload(relay: &Relay, after: u64, users: usize) -> u64 {
    let line = relay
        .log()
        .wait_for(WAIT, |l| {
            l.contains("cluster directory reloaded")
                && field_value(l, "users").as_deref() == Some(&users.to_string())
                && field_value(l, "round_trips")
                    .and_then(|v| v.parse::<u64>().ok())
                    .is_some_and(|n| n > after)
        })
        .unwrap_or_else(|| panic!("no reload to {users} users after {after} round trips"));
    field_value(&line, "round_trips")
        .and_then(|v| v.parse().ok())
        .expect("round_trips")
}

/// When the relay's PostgreSQL connection last ran a statement (PostgreSQL's clock).
fn last_statement(pg: &Postgres) -> String {
    pg.psql(
        "relay",
        "SELECT state_change FROM pg_stat_activity WHERE application_name = 'relay a'",
    )
    .trim()
    .to_string()
}

/// RCPT TO `rcpt`: the reply code.
fn rcpt_code(relay: &Relay, rcpt: &str) -> u16 {
    let mut client = relay.client();
    client.ehlo();
    client.expect("MAIL FROM:<sender@remote.test>", 250);
    let code = client.cmd(&format!("RCPT TO:<{rcpt}>")).expect("rcpt").code;
    client.quit();
    code
}

/// A POP3 login: the response to PASS.
fn pop3_login(relay: &Relay, user: &str, password: &str) -> String {
    let mut pop = relay.pop3();
    let reply = pop.login(user, password).expect("login");
    let _ = pop.quit();
    reply
}

/// Mail for `user` is accepted and they read it over POP3 with `password`.
fn mail_and_login(relay: &Relay, user: &str, password: &str, marker: &str) {
    let body = format!("From: s@remote.test\r\nSubject: {marker}\r\n\r\n{marker}\r\n");
    relay.deliver(&[&format!("{user}@example.test")], body.as_bytes());
    let mut pop = common::pop3::Pop3::login_retrying(
        relay.pop3_addr,
        user,
        password,
        common::LOCK_RELEASE_TIMEOUT,
    );
    let (count, _) = pop.stat();
    let found = (1..=count).any(|n| {
        let message = pop.retr(n);
        common::find(&message, marker.as_bytes()).is_some()
    });
    assert!(found, "{user} has no message {marker}");
    let _ = pop.quit();
}

/// An OpenPGP public key for dave@example.test, made by GnuPG, armoured in a file.
fn dave_key(dir: &Path) -> std::path::PathBuf {
    let home = dir.join("gnupg");
    std::fs::create_dir_all(&home).expect("gnupg home");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let gpg = |args: &[&str]| {
        let mut command = Command::new("gpg");
        command
            .env("GNUPGHOME", &home)
            .args(["--batch", "--pinentry-mode", "loopback", "--passphrase", ""])
            .args(args);
        let output = common::run_with_timeout(&mut command, COMMAND_TIMEOUT);
        assert!(
            output.status.success(),
            "gpg {args:?}: {}",
            describe(&output)
        );
        output.stdout
    };
    gpg(&[
        "--quick-gen-key",
        "Dave <dave@example.test>",
        "future-default",
        "default",
        "never",
    ]);
    let key = gpg(&["--armor", "--export", "dave@example.test"]);
    let _ = Command::new("gpgconf")
        .env("GNUPGHOME", &home)
        .args(["--kill", "all"])
        .status();
    let path = dir.join("dave.asc");
    std::fs::write(&path, key).expect("key file");
    path
}

#[test]
fn the_postgres_directory_is_followed_live_and_cached_through_an_outage() {
    let mut pg = Postgres::start();
    let dir = common::new_workdir();
    let settings = settings(&pg);
    let config = write_config(dir.path(), &settings);

    // Migrations: applied once, then nothing to do.
    let first = relay_ok(&["cluster", "migrate"], &config, "");
    assert!(first.contains("applied 0001 directory"), "{first}");
    let again = relay_ok(&["cluster", "migrate"], &config, "");
    assert!(again.contains("schema is current"), "{again}");
    assert_eq!(
        pg.psql("relay", "SELECT count(*) FROM schema_migrations")
            .trim(),
        "1"
    );

    let relay = Relay::start_in(Arc::clone(&dir), settings.clone());
    // At start: LISTEN with the schema check, then the snapshot: two round trips.
    let loaded = relay
        .log_lines()
        .into_iter()
        .find(|l| l.contains("cluster directory loaded from PostgreSQL"))
        .expect("loaded line");
    assert_eq!(field_value(&loaded, "round_trips").as_deref(), Some("2"));
    assert_eq!(rcpt_code(&relay, "dave@example.test"), 550);

    // Added while the relay runs: mail accepted and a POP3 login, no restart.
    relay_ok(&["user", "add", "dave"], &config, "dave-pw\n");
    let trips = wait_reload(&relay, 0, 1);
    mail_and_login(&relay, "dave", "dave-pw", "first-for-dave");
    // The file directory's users are still there.
    assert_eq!(rcpt_code(&relay, "alice@example.test"), 250);

    // Logins and RCPTs ask PostgreSQL nothing: its view of the relay's connection does not
    // move, nor does the relay's own count.
    let before = last_statement(&pg);
    assert!(!before.is_empty(), "the relay's connection is visible");
    for _ in 0..3 {
        assert!(pop3_login(&relay, "dave", "dave-pw").starts_with("+OK"));
        assert_eq!(rcpt_code(&relay, "dave@example.test"), 250);
    }
    assert_eq!(last_statement(&pg), before);
    assert_eq!(round_trips(&relay), trips);

    // A password change: one round trip to reload it (the NOTIFY itself is pushed).
    relay_ok(&["user", "passwd", "dave"], &config, "new-pw\n");
    let after_passwd = wait_reload(&relay, trips, 1);
    assert_eq!(
        after_passwd,
        trips + 1,
        "one round trip per directory change"
    );
    assert!(pop3_login(&relay, "dave", "dave-pw").starts_with("-ERR"));
    assert!(pop3_login(&relay, "dave", "new-pw").starts_with("+OK"));

    // Keys go to PostgreSQL, and the running relay reloads them.
    relay_ok(&["user", "key", "encrypt", "dave", "on"], &config, "");
    assert_eq!(
        pg.psql(
            "relay",
            "SELECT data FROM user_keys WHERE name = 'dave' AND kind = 'encrypt'"
        )
        .trim(),
        "on"
    );
    relay
        .log()
        .wait_for(WAIT, |l| {
            l.contains("cluster directory reloaded")
                && field_value(l, "keys").as_deref() == Some("1")
        })
        .expect("keys reloaded");
    let shown = relay_ok(&["user", "key", "show", "dave"], &config, "");
    assert!(shown.contains("\"choice\":\"on\""), "{shown}");
    // An OpenPGP key registered in PostgreSQL seals dave's next mail on the running relay.
    let key = dave_key(dir.path());
    let trips = round_trips(&relay);
    relay_ok(
        &[
            "user",
            "key",
            "set",
            "dave",
            "--openpgp",
            key.to_str().expect("utf-8"),
        ],
        &config,
        "",
    );
    wait_reload(&relay, trips, 1);
    let body = b"From: s@remote.test\r\nSubject: sealed\r\n\r\nthe-sealed-secret\r\n";
    relay.deliver(&["dave@example.test"], body);
    let mut pop = common::pop3::Pop3::login_retrying(
        relay.pop3_addr,
        "dave",
        "new-pw",
        common::LOCK_RELEASE_TIMEOUT,
    );
    let (count, _) = pop.stat();
    let last = pop.retr(count);
    let _ = pop.quit();
    assert!(common::find(&last, b"-----BEGIN PGP MESSAGE-----").is_some());
    assert!(common::find(&last, b"the-sealed-secret").is_none());

    // Home node: set through `set_home` (what the user move calls), seen by `user ls`.
    relay_ok(&["user", "home", "dave", "a"], &config, "");
    assert_eq!(
        pg.psql("relay", "SELECT home FROM users WHERE name = 'dave'")
            .trim(),
        "a"
    );
    let listed = relay_ok(&["user", "ls", "--json"], &config, "");
    assert!(listed.contains("\"home\":\"a\""), "{listed}");

    // Deleted: 550 at RCPT.
    relay_ok(&["user", "add", "erin"], &config, "erin-pw\n");
    let trips = wait_reload(&relay, 0, 2);
    relay_ok(&["user", "del", "dave"], &config, "");
    let trips = wait_reload(&relay, trips, 1);
    assert_eq!(rcpt_code(&relay, "dave@example.test"), 550);
    let listed = relay_ok(&["user", "ls"], &config, "");
    assert!(
        listed.contains("erin") && !listed.contains("dave"),
        "{listed}"
    );

    // PostgreSQL down: erin still logs in and gets mail from the cached directory.
    pg.stop();
    relay
        .log()
        .wait_for(WAIT, |l| l.contains("PostgreSQL connection lost"))
        .expect("the relay noticed the outage");
    mail_and_login(&relay, "erin", "erin-pw", "during-the-outage");

    // Back: a user added now works once the relay has reconnected.
    pg.resume();
    relay_ok(&["user", "add", "frank"], &config, "frank-pw\n");
    relay
        .log()
        .wait_for(WAIT, |l| l.contains("PostgreSQL reconnected"))
        .expect("reconnected");
    wait_reload(&relay, trips, 2);
    mail_and_login(&relay, "frank", "frank-pw", "after-the-outage");

    // A restart while PostgreSQL is down starts from the cache file (0600).
    relay.stop();
    pg.stop();
    let cache = dir.path().join("spool").join("cluster-directory.json");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&cache)
        .expect("cache")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let relay = Relay::start_in(Arc::clone(&dir), settings);
    assert!(relay.log_contains("serving the cached cluster directory"));
    mail_and_login(&relay, "frank", "frank-pw", "from-the-cache");
    assert_eq!(rcpt_code(&relay, "dave@example.test"), 550);
}

#[test]
fn a_node_refuses_a_schema_it_does_not_run_on_and_an_unreachable_directory_without_cache() {
    let mut pg = Postgres::start();
    let settings = settings(&pg);
    let refused = |expect: &str| {
        let dir = common::new_workdir();
        match Relay::try_start_in(dir, settings.clone()) {
            Ok(_) => panic!("the relay started; expected a refusal naming {expect:?}"),
            Err(failure) => {
                let text = failure.lines.join("\n");
                assert!(text.contains(expect), "{expect:?} not in:\n{text}");
                assert!(failure.status.is_some_and(|s| !s.success()));
            }
        }
    };

    // No schema yet.
    refused("run `relay cluster migrate`");

    let dir = common::new_workdir();
    let config = write_config(dir.path(), &settings);
    relay_ok(&["cluster", "migrate"], &config, "");

    // A schema newer than this relay: refused by the node and by migrate.
    pg.psql(
        "relay",
        "INSERT INTO schema_migrations (version, name) VALUES (999, 'future')",
    );
    refused("newer than this relay knows");
    let output = relay_with_input(&["cluster", "migrate"], &config, "");
    assert!(!output.status.success(), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("newer"));
    pg.psql("relay", "DELETE FROM schema_migrations WHERE version = 999");

    // Current schema: it starts; PostgreSQL down and no cache from an earlier run: refused.
    Relay::start_in(common::new_workdir(), settings.clone()).stop();
    pg.stop();
    refused("no cached directory");
}
