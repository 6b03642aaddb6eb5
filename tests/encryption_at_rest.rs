//! Encryption at rest against the real server: a user's OpenPGP key made by GnuPG (in a
//! temporary GNUPGHOME) is registered with `relay user key set`, mail arrives over SMTP
//! (Python's smtplib), IMAP APPEND (imaplib) and the web mail, and what the store gives back
//! over POP3 and IMAP is checked with `gpg --decrypt`: the content is exactly the original's
//! MIME entity, the routing fields stay readable, and no file under the spool directory
//! holds the plaintext. Also: the clear copies for users without sealing and for remote
//! recipients, mail that came encrypted, SIGHUP, a notice to a sealing sender, a kill -9
//! under load, and the web's Sent copy. Each scenario on both I/O engines.

#[macro_use]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::json::Json;
use common::sinks::{split_scripted, Sink};
use common::{find, new_workdir, relay_bin, repo_path, Engine, Relay, Settings, TEST_PASSWORD};
use relay::mailcrypt::entity;

engine_tests! {
    mail_to_a_sealing_user_is_stored_sealed_and_decrypts_to_the_original: sealed_uring, sealed_epoll;
    only_the_sealing_users_copy_is_sealed: mixed_uring, mixed_epoll;
    imap_append_is_sealed_and_drafts_stay_in_clear: append_uring, append_epoll;
    mail_that_came_encrypted_is_stored_as_it_came: encrypted_uring, encrypted_epoll;
    sighup_applies_a_new_key_and_a_choice_to_stop: sighup_uring, sighup_epoll;
    a_notice_to_a_sealing_sender_is_sealed: notice_uring, notice_epoll;
    every_acknowledged_message_survives_kill_9_sealed: crash_uring, crash_epoll;
    the_web_mails_sent_copy_is_sealed_and_its_draft_reopens: web_uring, web_epoll;
}

/// smtplib and imaplib, one operation per run.
const PY: &str = r#"
import imaplib, os, smtplib, sys
cmd = sys.argv[1]
if cmd == "send":
    port, sender, rcpts, path = sys.argv[2], sys.argv[3], sys.argv[4].split(","), sys.argv[5]
    s = smtplib.SMTP("127.0.0.1", int(port), timeout=60)
    try:
        s.sendmail(sender, rcpts, open(path, "rb").read())
        print("250")
    except smtplib.SMTPResponseException as e:
        print(e.smtp_code, e.smtp_error.decode("latin-1"))
    s.quit()
elif cmd == "fetch":
    port, user, folder, out = sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
    m = imaplib.IMAP4("127.0.0.1", int(port))
    m.login(user, "password")
    m.select(folder, readonly=True)
    typ, data = m.uid("FETCH", "1:*", "(BODY.PEEK[])")
    n = 0
    for item in data or []:
        if isinstance(item, tuple):
            n += 1
            open(os.path.join(out, "%d.eml" % n), "wb").write(item[1])
    m.logout()
    print(n)
elif cmd == "append":
    port, user, folder, path = sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
    m = imaplib.IMAP4("127.0.0.1", int(port))
    m.login(user, "password")
    typ, data = m.append(folder, None, None, open(path, "rb").read())
    m.logout()
    print(typ)
"#;

fn py(args: &[&str]) -> String {
    let output = Command::new("python3")
        .arg("-c")
        .arg(PY)
        .args(args)
        .output()
        .expect("python3");
    assert!(
        output.status.success(),
        "python {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// A GnuPG home with Alice's key pair (ed25519, cv25519 encryption subkey).
struct Gpg {
    home: tempfile::TempDir,
}

impl Gpg {
    fn new() -> Gpg {
        let home = tempfile::Builder::new()
            .prefix("gpg-")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let gpg = Gpg { home };
        gpg.run(
            &[
                "--quick-gen-key",
                "Alice <alice@example.test>",
                "future-default",
                "default",
                "never",
            ],
            b"",
        );
        gpg
    }

    fn run(&self, args: &[&str], input: &[u8]) -> Vec<u8> {
        let mut child = Command::new("gpg")
            .env("GNUPGHOME", self.home.path())
            .args(["--batch", "--pinentry-mode", "loopback", "--passphrase", ""])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("gpg (tests/run.sh installs it)");
        let mut stdin = child.stdin.take().expect("stdin");
        let input = input.to_vec();
        let writer = std::thread::spawn(move || {
            use std::io::Write;
            let _ = stdin.write_all(&input);
        });
        let output = child.wait_with_output().expect("gpg ran");
        let _ = writer.join();
        assert!(
            output.status.success(),
            "gpg {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output.stdout
    }

    /// Alice's public key, armoured, in a file.
    fn export(&self) -> PathBuf {
        let key = self.run(&["--armor", "--export", "alice@example.test"], b"");
        let path = self.home.path().join("alice.asc");
        std::fs::write(&path, key).expect("write key");
        path
    }

    /// The armoured OpenPGP message in `stored` (a PGP/MIME message), decrypted.
    fn decrypt(&self, stored: &[u8]) -> Vec<u8> {
        let begin = find(stored, b"-----BEGIN PGP MESSAGE-----").unwrap_or_else(|| {
            panic!(
                "no OpenPGP message in:\n{}",
                String::from_utf8_lossy(stored)
            )
        });
        let end = find(&stored[begin..], b"-----END PGP MESSAGE-----").expect("armour end")
            + begin
            + "-----END PGP MESSAGE-----".len();
        self.run(&["--decrypt"], &stored[begin..end])
    }

    /// `message` encrypted to Alice by GnuPG, as PGP/MIME.
    fn pgp_mime(&self, header: &str, content: &[u8]) -> Vec<u8> {
        let armour = self.run(
            &[
                "--armor",
                "--trust-model",
                "always",
                "--encrypt",
                "-r",
                "alice@example.test",
            ],
            content,
        );
        let mut out = format!(
            "{header}MIME-Version: 1.0\r\nContent-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\"; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n\r\n--b1\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        .into_bytes();
        out.extend_from_slice(
            &String::from_utf8_lossy(&armour)
                .replace('\n', "\r\n")
                .into_bytes(),
        );
        out.extend_from_slice(b"\r\n--b1--\r\n");
        out
    }
}

impl Drop for Gpg {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", self.home.path())
            .args(["--kill", "all"])
            .status();
    }
}

/// `relay user key ...` against `config`.
fn user_key(config: &Path, args: &[&str]) {
    let output = Command::new(relay_bin())
        .args(["user", "key"])
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("relay user key");
    assert!(
        output.status.success(),
        "relay user key {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A relay whose user alice has `gpg`'s key registered before it starts.
fn start_with_key(settings: Settings, gpg: &Gpg) -> Relay {
    let dir = new_workdir();
    let config = dir.path().join("relay.toml");
    std::fs::write(&config, settings.render(&dir.path().join("spool"))).expect("config");
    user_key(
        &config,
        &[
            "set",
            "alice",
            "--openpgp",
            gpg.export().to_str().expect("utf-8"),
        ],
    );
    Relay::start_in(dir, settings)
}

fn unique(label: &str) -> String {
    let mut rng = common::Rng::seeded_from_time(label.len() as u64);
    format!("{label}-{}{}", rng.hex(), rng.hex())
}

/// A plain message with `marker` in its body only (its Message-ID, which stays in clear,
/// is made from the marker without holding it).
fn message(to: &str, subject: &str, marker: &str) -> Vec<u8> {
    let id = marker.replace('-', ".");
    format!(
        "From: Sender <sender@example.test>\r\nTo: {to}\r\nSubject: {subject}\r\nDate: Sat, 05 Dec 2026 12:00:00 +0000\r\nMessage-ID: <{id}@example.test>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nHello Alice,\r\n\r\nthe secret is {marker}.\r\n.a line that starts with a dot\r\n"
    )
    .into_bytes()
}

fn smtplib_send(relay: &Relay, rcpts: &[&str], message: &[u8]) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("message.eml");
    std::fs::write(&path, message).expect("write");
    py(&[
        "send",
        &relay.addr.port().to_string(),
        "sender@example.test",
        &rcpts.join(","),
        path.to_str().expect("utf-8"),
    ])
}

fn imap_port(relay: &Relay) -> String {
    relay
        .listening("imap")
        .expect("an imap listener")
        .port()
        .to_string()
}

/// Every message of `user`'s `folder`, by IMAP FETCH BODY[].
fn imap_fetch(relay: &Relay, user: &str, folder: &str) -> Vec<Vec<u8>> {
    let dir = tempfile::tempdir().expect("temp dir");
    let n: usize = py(&[
        "fetch",
        &imap_port(relay),
        user,
        folder,
        dir.path().to_str().expect("utf-8"),
    ])
    .parse()
    .expect("a count");
    (1..=n)
        .map(|i| std::fs::read(dir.path().join(format!("{i}.eml"))).expect("fetched"))
        .collect()
}

/// Every message of `user`'s INBOX, by POP3 RETR.
fn pop3_all(relay: &Relay, user: &str) -> Vec<Vec<u8>> {
    let mut pop = relay.pop3_login(user);
    let (count, _) = pop.stat();
    let all = (1..=count).map(|n| pop.retr(n)).collect();
    let _ = pop.quit();
    all
}

/// Every regular file under the spool directory that holds `needle`.
fn spool_files_holding(relay: &Relay, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![relay.spool_dir.clone()];
    let mut files = 0;
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read spool dir").flatten() {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                files += 1;
                let bytes = std::fs::read(&path).expect("read spool file");
                if find(&bytes, needle.as_bytes()).is_some() {
                    found.push(path);
                }
            }
        }
    }
    assert!(files > 0, "no file under {}", relay.spool_dir.display());
    found
}

/// The header section of `message` (up to its blank line).
fn header(message: &[u8]) -> String {
    let end = find(message, b"\r\n\r\n").unwrap_or(message.len());
    String::from_utf8_lossy(&message[..end]).into_owned()
}

/// `stored` is PGP/MIME whose clear header keeps the routing fields and whose encrypted
/// part is exactly the original's MIME entity.
fn assert_sealed(gpg: &Gpg, stored: &[u8], original: &[u8], marker: &str, trace: bool) {
    let head = header(stored);
    assert!(
        head.contains("Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\""),
        "not PGP/MIME:\n{}",
        String::from_utf8_lossy(stored)
    );
    assert!(
        find(stored, marker.as_bytes()).is_none(),
        "the marker is readable in the stored copy"
    );
    for field in ["Subject: ", "From: ", "To: ", "Date: ", "Message-ID: "] {
        assert!(head.contains(field), "no {field} in clear:\n{head}");
    }
    // Our trace field, where the path adds one (SMTP; an APPEND has none).
    if trace {
        assert!(
            head.contains("Received: from "),
            "no Received in clear:\n{head}"
        );
    }
    let inner = gpg.decrypt(stored);
    assert_eq!(
        String::from_utf8_lossy(&inner),
        String::from_utf8_lossy(&entity::split(original).inner),
        "the decrypted entity is the original's Content-* fields and body"
    );
}

fn mail_to_a_sealing_user_is_stored_sealed_and_decrypts_to_the_original(engine: Engine) {
    let gpg = Gpg::new();
    let relay = start_with_key(Settings::new(engine), &gpg);
    let marker = unique("sealed-marker");
    let original = message("alice@example.test", "Quarterly numbers", &marker);
    assert_eq!(
        smtplib_send(&relay, &["alice@example.test"], &original),
        "250"
    );
    assert_eq!(
        spool_files_holding(&relay, &marker),
        Vec::<PathBuf>::new(),
        "plaintext under the spool directory"
    );

    let popped = pop3_all(&relay, "alice");
    assert_eq!(popped.len(), 1);
    assert_sealed(&gpg, &popped[0], &original, &marker, true);
    assert!(header(&popped[0]).contains("Subject: Quarterly numbers"));
    let fetched = imap_fetch(&relay, "alice", "INBOX");
    assert_eq!(fetched.len(), 1);
    assert_eq!(fetched[0], popped[0], "IMAP and POP3 serve the same bytes");
    assert_sealed(&gpg, &fetched[0], &original, &marker, true);

    assert!(relay.log_contains("sealed copy stored"));
    let (_, metrics) = relay.admin_get("/metrics");
    assert!(
        metrics.contains("relay_messages_sealed_total 1"),
        "{metrics}"
    );
}

fn only_the_sealing_users_copy_is_sealed(engine: Engine) {
    let gpg = Gpg::new();
    let sink = Sink::scripted(0, &[]);
    let mut settings = Settings::new(engine);
    settings.routes = vec![("*".into(), sink.addr.to_string())];
    let relay = start_with_key(settings, &gpg);
    let marker = unique("mixed-marker");
    let original = message("alice@example.test, bob@example.test", "For three", &marker);
    assert_eq!(
        smtplib_send(
            &relay,
            &[
                "alice@example.test",
                "bob@example.test",
                "carol@remote.test"
            ],
            &original
        ),
        "250"
    );
    let alice = pop3_all(&relay, "alice");
    assert_eq!(alice.len(), 1);
    assert_sealed(&gpg, &alice[0], &original, &marker, true);
    let bob = pop3_all(&relay, "bob");
    assert_eq!(bob.len(), 1);
    assert!(
        bob[0].ends_with(&original),
        "bob's copy is the original in clear"
    );
    let got = sink.wait_messages(1, Duration::from_secs(30));
    let (envelope, data) = split_scripted(&got[0]);
    assert_eq!(
        envelope,
        ["MAIL:sender@example.test", "RCPT:carol@remote.test"]
    );
    assert!(data.ends_with(&original), "the remote copy is in clear");
    assert!(
        find(&data, b"BEGIN PGP MESSAGE").is_none(),
        "the remote copy is not sealed"
    );
    let (_, metrics) = relay.admin_get("/metrics");
    assert!(
        metrics.contains("relay_messages_sealed_total 1"),
        "{metrics}"
    );
}

fn imap_append_is_sealed_and_drafts_stay_in_clear(engine: Engine) {
    let gpg = Gpg::new();
    let relay = start_with_key(Settings::new(engine), &gpg);
    let dir = tempfile::tempdir().expect("temp dir");
    let marker = unique("append-marker");
    let original = message("bob@example.test", "Kept by a client", &marker);
    let path = dir.path().join("append.eml");
    std::fs::write(&path, &original).expect("write");
    let port = imap_port(&relay);
    // The first login creates the special-use folders.
    assert!(imap_fetch(&relay, "alice", "Sent").is_empty());
    assert_eq!(
        py(&[
            "append",
            &port,
            "alice",
            "Sent",
            path.to_str().expect("utf-8")
        ]),
        "OK"
    );
    assert_eq!(
        spool_files_holding(&relay, &marker),
        Vec::<PathBuf>::new(),
        "plaintext under the spool directory"
    );
    let sent = imap_fetch(&relay, "alice", "Sent");
    assert_eq!(sent.len(), 1);
    assert_sealed(&gpg, &sent[0], &original, &marker, false);

    // A draft is kept as written: the web mail reopens it, and it is no delivery.
    let draft = message("bob@example.test", "Half written", "draft-in-clear");
    let path = dir.path().join("draft.eml");
    std::fs::write(&path, &draft).expect("write");
    assert_eq!(
        py(&[
            "append",
            &port,
            "alice",
            "Drafts",
            path.to_str().expect("utf-8")
        ]),
        "OK"
    );
    assert_eq!(imap_fetch(&relay, "alice", "Drafts"), [draft]);
}

fn mail_that_came_encrypted_is_stored_as_it_came(engine: Engine) {
    let gpg = Gpg::new();
    let relay = start_with_key(Settings::new(engine), &gpg);
    let marker = unique("already-marker");
    let original = gpg.pgp_mime(
        "From: Sender <sender@example.test>\r\nTo: alice@example.test\r\nSubject: Already sealed\r\n",
        format!("Content-Type: text/plain\r\n\r\n{marker}\r\n").as_bytes(),
    );
    assert_eq!(
        smtplib_send(&relay, &["alice@example.test"], &original),
        "250"
    );
    let popped = pop3_all(&relay, "alice");
    assert_eq!(popped.len(), 1);
    let at = find(&popped[0], &original[..40]).expect("the original in the stored copy");
    assert_eq!(&popped[0][at..], &original[..], "stored byte for byte");
    assert!(
        header(&popped[0][..at]).starts_with("Received: "),
        "only our fields above it"
    );
    assert_eq!(
        find(&popped[0], b"BEGIN PGP MESSAGE").map(|_| ()),
        Some(()),
        "sealed once, by the sender"
    );
    assert_eq!(
        popped[0]
            .windows(b"BEGIN PGP MESSAGE".len())
            .filter(|w| *w == b"BEGIN PGP MESSAGE")
            .count(),
        1,
        "not sealed again"
    );
    assert!(!relay.log_contains("sealed copy stored"));

    // Sealing is on for alice: her next plain message is sealed, the one above was not.
    let marker = unique("plain-after");
    let plain = message("alice@example.test", "In clear as sent", &marker);
    assert_eq!(smtplib_send(&relay, &["alice@example.test"], &plain), "250");
    let popped = pop3_all(&relay, "alice");
    assert_eq!(popped.len(), 2);
    assert_sealed(&gpg, &popped[1], &plain, &marker, true);
    let (_, metrics) = relay.admin_get("/metrics");
    assert!(
        metrics.contains("relay_messages_sealed_total 1"),
        "{metrics}"
    );
}

fn sighup_applies_a_new_key_and_a_choice_to_stop(engine: Engine) {
    let gpg = Gpg::new();
    let relay = Relay::start(Settings::new(engine));
    let first = unique("before-key");
    let plain = message("alice@example.test", "Before the key", &first);
    assert_eq!(smtplib_send(&relay, &["alice@example.test"], &plain), "250");

    user_key(
        &relay.config_path,
        &[
            "set",
            "alice",
            "--openpgp",
            gpg.export().to_str().expect("utf-8"),
        ],
    );
    relay.sighup();
    relay.wait_log(&["SIGHUP: users' keys reloaded"], Duration::from_secs(20));
    let second = unique("after-key");
    let sealed = message("alice@example.test", "After the key", &second);
    assert_eq!(
        smtplib_send(&relay, &["alice@example.test"], &sealed),
        "250"
    );
    assert_eq!(spool_files_holding(&relay, &second), Vec::<PathBuf>::new());

    user_key(&relay.config_path, &["encrypt", "alice", "off"]);
    relay.sighup();
    // The second reload's line (each line is looked at once).
    let reloads = std::sync::atomic::AtomicUsize::new(0);
    let second_reload = relay.log().wait_for(Duration::from_secs(20), |line| {
        line.contains("SIGHUP: users' keys reloaded")
            && reloads.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 1
    });
    assert!(second_reload.is_some(), "no second reload");
    let third = unique("turned-off");
    let after = message("alice@example.test", "Turned off", &third);
    assert_eq!(smtplib_send(&relay, &["alice@example.test"], &after), "250");

    let popped = pop3_all(&relay, "alice");
    assert_eq!(popped.len(), 3);
    assert!(popped[0].ends_with(&plain), "before the key: in clear");
    assert_sealed(&gpg, &popped[1], &sealed, &second, true);
    assert!(popped[2].ends_with(&after), "after `encrypt off`: in clear");
}

fn a_notice_to_a_sealing_sender_is_sealed(engine: Engine) {
    let gpg = Gpg::new();
    let sink = Sink::scripted(0, &["--rcpt", "550=nobody@remote.test"]);
    let mut settings = Settings::new(engine);
    settings.routes = vec![("*".into(), sink.addr.to_string())];
    let relay = start_with_key(settings, &gpg);
    let marker = unique("bounced-marker");
    let original = message("nobody@remote.test", "Will bounce", &marker);
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("m.eml");
    std::fs::write(&path, &original).expect("write");
    assert_eq!(
        py(&[
            "send",
            &relay.addr.port().to_string(),
            "alice@example.test",
            "nobody@remote.test",
            path.to_str().expect("utf-8"),
        ]),
        "250"
    );
    relay.wait_log(
        &["delivery status notification queued"],
        Duration::from_secs(30),
    );
    relay.wait_log(&["sealed copy stored"], Duration::from_secs(30));
    let popped = pop3_all(&relay, "alice");
    assert_eq!(popped.len(), 1);
    let head = header(&popped[0]);
    assert!(
        head.contains("multipart/encrypted"),
        "the notice is sealed:\n{}",
        String::from_utf8_lossy(&popped[0])
    );
    let inner = String::from_utf8_lossy(&gpg.decrypt(&popped[0])).into_owned();
    assert!(
        inner.contains("multipart/report") && inner.contains("nobody@remote.test"),
        "{inner}"
    );
    assert!(
        find(&popped[0], b"delivery-status").is_none(),
        "the report's parts are inside the seal"
    );
}

fn every_acknowledged_message_survives_kill_9_sealed(engine: Engine) {
    const CONNECTIONS: usize = 10;
    const PER_CONNECTION: usize = 20;
    let gpg = Gpg::new();
    let settings = Settings::new(engine);
    let relay = start_with_key(settings.clone(), &gpg);
    let prefix = unique("crash");
    let (tx, rx) = mpsc::channel::<String>();
    let mut threads = Vec::new();
    for c in 0..CONNECTIONS {
        let tx = tx.clone();
        let addr = relay.addr;
        let prefix = prefix.clone();
        threads.push(std::thread::spawn(move || {
            let Ok(mut client) = common::Client::connect(addr) else {
                return;
            };
            if client.read_reply().is_err() || client.cmd("EHLO client.test").is_err() {
                return;
            }
            for i in 0..PER_CONNECTION {
                let marker = format!("{prefix}-{c}-{i}-end");
                let body = message("alice@example.test", "Under load", &marker);
                match client.transaction("sender@example.test", &["alice@example.test"], &body) {
                    Ok(reply) if reply.code == 250 => {
                        if tx.send(marker).is_err() {
                            return;
                        }
                    }
                    _ => return,
                }
            }
        }));
    }
    drop(tx);
    let mut acknowledged = Vec::new();
    // Killed once a third of the messages are acknowledged: the rest are in flight.
    while acknowledged.len() < CONNECTIONS * PER_CONNECTION / 3 {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(marker) => acknowledged.push(marker),
            Err(e) => panic!("no acknowledgement: {e}"),
        }
    }
    relay.kill9();
    acknowledged.extend(rx.iter());
    for thread in threads {
        let _ = thread.join();
    }
    assert_eq!(
        spool_files_holding(&relay, &prefix),
        Vec::<PathBuf>::new(),
        "plaintext under the spool directory"
    );

    let relay = relay.restart(settings);
    let stored = pop3_all(&relay, "alice");
    assert!(
        stored.len() >= acknowledged.len(),
        "{} stored, {} acknowledged",
        stored.len(),
        acknowledged.len()
    );
    let fetched = imap_fetch(&relay, "alice", "INBOX");
    assert_eq!(fetched.len(), stored.len(), "IMAP sees what POP3 sees");
    let mut found = std::collections::BTreeSet::new();
    for copy in &stored {
        assert!(header(copy).contains("multipart/encrypted"));
        assert!(find(copy, prefix.as_bytes()).is_none());
        let inner = gpg.decrypt(copy);
        let at = find(&inner, prefix.as_bytes()).expect("a marker inside");
        let end = find(&inner[at..], b"-end").expect("marker end") + at;
        found.insert(String::from_utf8_lossy(&inner[at..end + 4]).into_owned());
    }
    for marker in &acknowledged {
        assert!(
            found.contains(marker),
            "{marker} was acknowledged but is lost"
        );
    }
    assert_eq!(spool_files_holding(&relay, &prefix), Vec::<PathBuf>::new());
}

fn the_web_mails_sent_copy_is_sealed_and_its_draft_reopens(engine: Engine) {
    let gpg = Gpg::new();
    let mut settings = Settings::new(engine);
    settings
        .extra_toml
        .push_str("[web]\nlisten = [\"127.0.0.1:0\"]\n");
    let relay = start_with_key(settings, &gpg);
    let base = format!("http://{}", relay.listening("http").expect("http listener"));
    let dir = tempfile::tempdir().expect("temp dir");
    let marker = unique("web-marker");
    let spec = dir.path().join("spec.json");
    std::fs::write(
        &spec,
        format!("{{\"to\": \"bob@example.test\", \"subject\": \"From the web\", \"body\": \"typed in a browser: {marker}\\n\", \"files\": []}}"),
    )
    .expect("spec");
    let web = |args: &[&str]| {
        let output = Command::new("python3")
            .arg(repo_path("tests/py/web_compose_client.py"))
            .arg(&base)
            .args(args)
            .output()
            .expect("python3 web_compose_client.py");
        assert!(
            output.status.success(),
            "web client {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        Json::parse(text.trim()).unwrap_or_else(|e| panic!("web client said {text:?}: {e}"))
    };
    let seen = web(&[
        "send",
        "alice",
        TEST_PASSWORD,
        "-",
        spec.to_str().expect("utf-8"),
    ]);
    assert_eq!(seen.get("status").int(), 200, "{}", seen.get("body").str());
    let sent = imap_fetch(&relay, "alice", "Sent");
    assert_eq!(sent.len(), 1, "a copy in Sent");
    assert!(header(&sent[0]).contains("multipart/encrypted"));
    assert!(header(&sent[0]).contains("Subject: From the web"));
    assert!(find(&sent[0], marker.as_bytes()).is_none());
    let inner = gpg.decrypt(&sent[0]);
    assert!(find(&inner, marker.as_bytes()).is_some());
    // Bob has no key: his copy is in clear.
    let bob = pop3_all(&relay, "bob");
    assert_eq!(bob.len(), 1);
    assert!(find(&bob[0], marker.as_bytes()).is_some());

    // A draft is kept in clear and reopens in the editor, encryption on or not.
    let draft = web(&[
        "draft",
        "alice",
        TEST_PASSWORD,
        &imap_port(&relay),
        spec.to_str().expect("utf-8"),
    ]);
    assert_eq!(draft.get("saved_status").int(), 200);
    let drafts = draft.get("drafts_after_save").array();
    assert!(
        drafts[0].get("raw").str().contains(&marker),
        "the draft is kept in clear"
    );
    assert_eq!(
        draft
            .get("reopened")
            .get("fields")
            .get("body")
            .str()
            .trim_end(),
        format!("typed in a browser: {marker}"),
        "the draft reopened in the editor with its text"
    );
}
