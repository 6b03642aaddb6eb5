//! DKIM signing against the real binary, both engines, checked by verifiers no one here
//! wrote: dkimpy (Debian python3-dkim, keys read from the test DNS server through its
//! `dnsfunc` hook: tests/py/dkim_verify.py) and npm mailauth (`report --dns-cache`). The
//! keys and their DNS records come from `relay dkim keygen`.
//!
//! Covered: Ed25519, RSA and dual signatures verify, and fail once a body or a header is
//! changed or a From field added (over-signing); only our clients' mail for our domains is
//! signed (not a stranger's mail forwarded by an alias); a message down-converted for a hop
//! without 8BITMIME still verifies; SIGHUP rotates to a new selector; a key file others may
//! read stops the start; `relay check` shows key paths, never keys.

#[macro_use]
mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::dns::DnsServer;
use common::json::Json;
use common::sinks::Sink;
use common::{
    describe, find, new_workdir, relay_cmd, repo_path, run_with_timeout, Engine, Relay, Settings,
    COMMAND_TIMEOUT,
};

engine_tests! {
    signatures_verify_and_tampering_fails: signatures_verify_and_tampering_fails_uring, signatures_verify_and_tampering_fails_epoll;
    downconverted_mail_still_verifies: downconverted_mail_still_verifies_uring, downconverted_mail_still_verifies_epoll;
    only_our_clients_mail_is_signed: only_our_clients_mail_is_signed_uring, only_our_clients_mail_is_signed_epoll;
    sighup_rotates_to_a_new_selector: sighup_rotates_to_a_new_selector_uring, sighup_rotates_to_a_new_selector_epoll;
    whitespace_only_lines_at_the_end_verify: whitespace_only_lines_at_the_end_verify_uring, whitespace_only_lines_at_the_end_verify_epoll;
}

const DOMAIN: &str = "example.test";
/// base64("\0alice\0password")
const PLAIN_ALICE: &str = "AGFsaWNlAHBhc3N3b3Jk";

/// A key made by `relay dkim keygen` and the record it printed.
struct Key {
    selector: String,
    file: PathBuf,
    algorithm: &'static str,
    /// The TXT record's character-strings, as printed.
    strings: Vec<String>,
}

impl Key {
    fn record(&self) -> String {
        self.strings.concat()
    }

    fn toml(&self) -> String {
        format!(
            "[[dkim.sign]]\ndomain = {DOMAIN:?}\nselector = {:?}\nkey_file = {:?}\nalgorithm = {:?}\n",
            self.selector,
            self.file.file_name().and_then(|n| n.to_str()).expect("name"),
            self.algorithm
        )
    }
}

/// `relay dkim keygen DOMAIN SELECTOR [--ed25519] --out DIR/SELECTOR.key`: the key file is
/// 0600, the printed line is a zone-file TXT record at SELECTOR._domainkey.DOMAIN, and a
/// second run refuses to overwrite the key.
fn keygen(dir: &Path, selector: &str, ed25519: bool) -> Key {
    let file = dir.join(format!("{selector}.key"));
    let mut args = vec![
        "dkim".to_string(),
        "keygen".into(),
        DOMAIN.into(),
        selector.into(),
    ];
    if ed25519 {
        args.push("--ed25519".into());
    }
    args.push("--out".into());
    args.push(file.to_str().expect("utf-8").into());
    let output = relay_cmd(&args);
    assert!(output.status.success(), "keygen: {}", describe(&output));
    let mode = std::fs::metadata(&file)
        .expect("key file")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "the private key is the owner's only");
    let line = String::from_utf8(output.stdout).expect("utf-8");
    let prefix = format!("{selector}._domainkey.{DOMAIN}. IN TXT ");
    let quoted = line
        .trim_end()
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("keygen printed {line:?}"));
    let strings: Vec<String> = quoted
        .split('"')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s.to_string())
        .collect();
    assert!(strings.iter().all(|s| s.len() <= 255), "{strings:?}");
    let key_type = if ed25519 { "ed25519" } else { "rsa" };
    assert!(
        strings
            .concat()
            .starts_with(&format!("v=DKIM1; k={key_type}; p=")),
        "{strings:?}"
    );
    let before = std::fs::read(&file).expect("read key");
    let again = relay_cmd(&args);
    assert!(
        !again.status.success(),
        "keygen overwrote {}",
        file.display()
    );
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("not overwriting"),
        "{}",
        describe(&again)
    );
    assert_eq!(std::fs::read(&file).expect("read key"), before);
    Key {
        selector: selector.into(),
        file,
        algorithm: if ed25519 {
            "ed25519-sha256"
        } else {
            "rsa-sha256"
        },
        strings,
    }
}

/// The test DNS server publishing `keys`.
fn dns_for(keys: &[&Key]) -> DnsServer {
    let records: Vec<String> = keys
        .iter()
        .map(|k| format!("{}._domainkey.{DOMAIN}=txt:{}", k.selector, k.record()))
        .collect();
    let refs: Vec<&str> = records.iter().map(String::as_str).collect();
    DnsServer::start(&refs)
}

/// dkimpy's verdict on each signature, in header order: ("pass"|"fail", selector).
fn dkimpy(dns: &DnsServer, message: &[u8]) -> Vec<(String, String)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("message.eml");
    std::fs::write(&path, message).expect("write message");
    let output = run_with_timeout(
        Command::new("/usr/bin/python3")
            .arg(repo_path("tests/py/dkim_verify.py"))
            .arg(dns.port.to_string())
            .arg(&path),
        COMMAND_TIMEOUT,
    );
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let verdicts: Vec<(String, String)> = text
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let verdict = words.next()?.to_string();
            let selector = words.find_map(|w| w.strip_prefix("s="))?.to_string();
            Some((verdict, selector))
        })
        .collect();
    let all_pass = !verdicts.is_empty() && verdicts.iter().all(|(v, _)| v == "pass");
    assert_eq!(
        output.status.success(),
        all_pass,
        "dkim_verify.py: {}",
        describe(&output)
    );
    verdicts
}

/// npm mailauth's verdict on each signature: (result, selector).
fn mailauth(keys: &[&Key], message: &[u8]) -> Vec<(String, String)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("message.eml");
    std::fs::write(&path, message).expect("write message");
    let cache = dir.path().join("dns.json");
    let entries: Vec<String> = keys
        .iter()
        .map(|k| {
            let strings: Vec<String> = k.strings.iter().map(|s| format!("{s:?}")).collect();
            format!(
                "{:?}: {{\"TXT\": [[{}]]}}",
                format!("{}._domainkey.{DOMAIN}", k.selector),
                strings.join(", ")
            )
        })
        .collect();
    std::fs::write(&cache, format!("{{{}}}", entries.join(", "))).expect("write cache");
    let tools =
        std::env::var("RELAY_TEST_TOOLS").unwrap_or_else(|_| "/var/tmp/relay-test-tools".into());
    let output = run_with_timeout(
        Command::new(format!("{tools}/node_modules/.bin/mailauth"))
            .args(["report", "--dns-cache"])
            .arg(&cache)
            .args([
                "--client-ip",
                "127.0.0.1",
                "--sender",
                "alice@example.test",
                "--helo",
                "client.test",
                "--mta",
                "mx.test",
            ])
            .arg(&path),
        COMMAND_TIMEOUT,
    );
    assert!(output.status.success(), "mailauth: {}", describe(&output));
    let report = Json::parse(&String::from_utf8_lossy(&output.stdout)).expect("mailauth JSON");
    report
        .get("dkim")
        .get("results")
        .array()
        .iter()
        .map(|r| {
            let selector = r.object().get("selector").map(|s| s.str().to_string());
            (
                r.get("status").get("result").str().to_string(),
                selector.unwrap_or_default(),
            )
        })
        .collect()
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// A message with folded fields, a Cc, trailing blank lines and whitespace the relaxed
/// canonicalisation must handle as other verifiers do.
fn message(from: &str, subject: &str) -> Vec<u8> {
    format!(
        "From: Alice Example <{from}>\r\n\
         To: one@example.test,\r\n\tBob <bob@remote.test>\r\n\
         Cc: two@example.test\r\n\
         Subject: {subject}\r\n  folded   on two lines\r\n\
         Date: Fri, 04 Dec 2026 10:00:00 +0000\r\n\
         Message-ID: <{subject}@example.test>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\
         X-Unsigned: anything\r\n\
         \r\n\
         line one  \r\n\
         line two\twith tab\r\n\
         \r\n\
         \r\n"
    )
    .into_bytes()
}

fn signatures(message: &[u8]) -> usize {
    String::from_utf8_lossy(message)
        .matches("DKIM-Signature:")
        .count()
}

fn replace(message: &[u8], from: &str, to: &str) -> Vec<u8> {
    let text = String::from_utf8(message.to_vec()).expect("utf-8");
    assert!(text.contains(from), "{from:?} not in message");
    text.replacen(from, to, 1).into_bytes()
}

fn signing_relay(engine: Engine, keys: &[&Key], dir: std::sync::Arc<tempfile::TempDir>) -> Relay {
    let mut settings = Settings::new(engine);
    settings.extra_toml = keys.iter().map(|k| k.toml()).collect();
    Relay::start_in(dir, settings)
}

fn signatures_verify_and_tampering_fails(engine: Engine) {
    let dir = new_workdir();
    let ed = keygen(dir.path(), "ed", true);
    let rsa = keygen(dir.path(), "rsa", false);
    let dns = dns_for(&[&ed, &rsa]);
    let relay = signing_relay(engine, &[&ed, &rsa], dir);

    // Loopback is a relay network here: its mail for our domain is signed by both keys.
    let id = relay.deliver(
        &["one@example.test"],
        &message("alice@example.test", "dual"),
    );
    let stored = relay.spool_cat(&id);
    assert_eq!(
        signatures(&stored),
        2,
        "{}",
        String::from_utf8_lossy(&stored)
    );
    let both = pairs(&[("pass", "ed"), ("pass", "rsa")]);
    assert_eq!(dkimpy(&dns, &stored), both);
    assert_eq!(mailauth(&[&ed, &rsa], &stored), both);

    let tampered_body = replace(&stored, "line two", "line 2");
    let failed = pairs(&[("fail", "ed"), ("fail", "rsa")]);
    assert_eq!(dkimpy(&dns, &tampered_body), failed);
    assert!(mailauth(&[&ed, &rsa], &tampered_body)
        .iter()
        .all(|(result, _)| result == "fail" || result == "neutral"));
    let tampered_header = replace(&stored, "Subject: dual", "Subject: Dual");
    assert_eq!(dkimpy(&dns, &tampered_header), failed);
    assert!(mailauth(&[&ed, &rsa], &tampered_header)
        .iter()
        .all(|(result, _)| result == "fail" || result == "neutral"));
    // Over-signed: a second From (or To, Subject, Date) added later breaks the signature.
    let added_from = replace(
        &stored,
        "X-Unsigned:",
        "From: mallory@example.test\r\nX-Unsigned:",
    );
    assert_eq!(dkimpy(&dns, &added_from), failed);
    // A header we do not sign may change.
    let unsigned = replace(&stored, "X-Unsigned: anything", "X-Unsigned: changed");
    assert_eq!(dkimpy(&dns, &unsigned), both);

    // Another domain's mail gets no signature of ours.
    let id = relay.deliver(&["one@example.test"], &message("carol@other.test", "other"));
    assert_eq!(signatures(&relay.spool_cat(&id)), 0);
}

/// RFC 6376 §3.4.4: lines holding only whitespace at the end of the body are empty lines
/// once trailing whitespace goes, and ignored. Our signatures over such a body verify with
/// dkimpy and npm mailauth, which read the RFC so; they failed on the code before (which
/// kept those lines as CRLFs, as mail-auth 0.13.3 does), seen as dkimpy's and mailauth's
/// "fail" on both signatures.
fn whitespace_only_lines_at_the_end_verify(engine: Engine) {
    let dir = new_workdir();
    let ed = keygen(dir.path(), "ed", true);
    let rsa = keygen(dir.path(), "rsa", false);
    let dns = dns_for(&[&ed, &rsa]);
    let relay = signing_relay(engine, &[&ed, &rsa], dir);
    let mut message = message("alice@example.test", "trailing");
    message.extend_from_slice(b"last words  \r\n \r\n\t\r\n  \t \r\n\r\n \r\n");
    let id = relay.deliver(&["one@example.test"], &message);
    let stored = relay.spool_cat(&id);
    assert_eq!(signatures(&stored), 2);
    assert!(
        stored.ends_with(b"last words  \r\n \r\n\t\r\n  \t \r\n\r\n \r\n"),
        "the body arrived as sent: {}",
        String::from_utf8_lossy(&stored)
    );
    let both = pairs(&[("pass", "ed"), ("pass", "rsa")]);
    assert_eq!(dkimpy(&dns, &stored), both);
    assert_eq!(mailauth(&[&ed, &rsa], &stored), both);
    // The whitespace lines are outside the signature; the text before them is not.
    let tampered = replace(&stored, "last words", "last Words");
    assert_eq!(
        dkimpy(&dns, &tampered),
        pairs(&[("fail", "ed"), ("fail", "rsa")])
    );
}

/// A next hop whose EHLO announces no 8BITMIME (tests/py/dkim_sink.py).
struct SevenBitSink {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    dir: tempfile::TempDir,
}

impl SevenBitSink {
    fn start() -> SevenBitSink {
        use std::io::BufRead;
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = Command::new("python3")
            .arg(repo_path("tests/py/dkim_sink.py"))
            .arg(dir.path())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 tests/py/dkim_sink.py");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("sink's first line");
        let port: u16 = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("sink said {line:?}"));
        SevenBitSink {
            child,
            addr: ([127, 0, 0, 1], port).into(),
            dir,
        }
    }

    /// The first message, waited for (bounded: a file appears only once complete).
    fn wait_message(&self) -> Vec<u8> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
                .expect("read sink dir")
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "eml"))
                .collect();
            files.sort();
            if let Some(first) = files.first() {
                return std::fs::read(first).expect("read message");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "nothing reached the sink"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for SevenBitSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn downconverted_mail_still_verifies(engine: Engine) {
    let dir = new_workdir();
    let ed = keygen(dir.path(), "ed", true);
    let rsa = keygen(dir.path(), "rsa", false);
    let dns = dns_for(&[&ed, &rsa]);
    let sink = SevenBitSink::start();
    let mut settings = Settings::new(engine);
    settings.routes = vec![("*".into(), sink.addr.to_string())];
    settings.extra_toml = format!("{}{}", ed.toml(), rsa.toml());
    let relay = Relay::start_in(dir, settings);

    let content = "From: alice@example.test\r\nTo: bob@remote.test\r\nSubject: 8bit\r\n\
                   MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\
                   Content-Transfer-Encoding: 8bit\r\n\r\n\
                   Grüße aus Köln, ça va?\r\n";
    let mut client = relay.client();
    client.ehlo();
    client.expect("MAIL FROM:<alice@example.test> BODY=8BITMIME", 250);
    client.expect("RCPT TO:<bob@remote.test>", 250);
    client.expect("DATA", 354);
    client
        .send(&common::smtp::dot_stuff(content.as_bytes()))
        .expect("send");
    let reply = client.read_reply().expect("reply");
    assert_eq!(reply.code, 250, "{reply}");
    client.quit();

    let got = sink.wait_message();
    let text = String::from_utf8_lossy(&got);
    assert!(got.is_ascii(), "converted to 7 bit: {text}");
    assert!(
        !text.contains("Content-Transfer-Encoding: 8bit"),
        "the relay converted the body: {text}"
    );
    assert_eq!(signatures(&got), 2, "ours replaced, not added to: {text}");
    let both = pairs(&[("pass", "ed"), ("pass", "rsa")]);
    assert_eq!(dkimpy(&dns, &got), both, "{text}");
    assert_eq!(mailauth(&[&ed, &rsa], &got), both, "{text}");
}

fn only_our_clients_mail_is_signed(engine: Engine) {
    let dir = new_workdir();
    let ed = keygen(dir.path(), "ed", true);
    let dns = dns_for(&[&ed]);
    let sink = Sink::scripted(0, &[]);
    let mut settings = Settings::new(engine);
    // Loopback is not a relay network: mail from it is a stranger's unless it logs in.
    settings.allowed_networks = Vec::new();
    settings.smtp_toml = "allow_plaintext_auth = true\n".into();
    settings.aliases = vec![("fwd@example.test".into(), vec!["bob@remote.test".into()])];
    settings.routes = vec![("*".into(), sink.addr.to_string())];
    settings.extra_toml = ed.toml();
    let relay = Relay::start_in(dir, settings);

    // A stranger's message claiming our domain, forwarded outside by an alias: not signed.
    let mut client = relay.client();
    client.ehlo();
    let reply = client
        .transaction(
            "alice@example.test",
            &["fwd@example.test"],
            &message("alice@example.test", "stranger"),
        )
        .expect("transaction");
    assert_eq!(reply.code, 250, "{reply}");
    client.quit();

    // The same from an authenticated client: signed.
    let mut client = relay.client();
    client.ehlo();
    client.expect(&format!("AUTH PLAIN {PLAIN_ALICE}"), 235);
    let reply = client
        .transaction(
            "alice@example.test",
            &["bob@remote.test"],
            &message("alice@example.test", "ours"),
        )
        .expect("transaction");
    assert_eq!(reply.code, 250, "{reply}");
    client.quit();

    let got = sink.wait_messages(2, Duration::from_secs(30));
    let by_subject = |subject: &str| {
        got.iter()
            .map(|m| common::sinks::split_scripted(m).1)
            .find(|data| find(data, format!("Subject: {subject}").as_bytes()).is_some())
            .unwrap_or_else(|| panic!("no message {subject}"))
    };
    let stranger = by_subject("stranger");
    assert_eq!(
        signatures(&stranger),
        0,
        "{}",
        String::from_utf8_lossy(&stranger)
    );
    let ours = by_subject("ours");
    assert_eq!(dkimpy(&dns, &ours), pairs(&[("pass", "ed")]));
}

fn sighup_rotates_to_a_new_selector(engine: Engine) {
    let dir = new_workdir();
    let old = keygen(dir.path(), "s1", true);
    let new = keygen(dir.path(), "s2", true);
    let dns = dns_for(&[&old, &new]);
    let relay = signing_relay(engine, &[&old], dir);
    let id = relay.deliver(
        &["one@example.test"],
        &message("alice@example.test", "before"),
    );
    assert_eq!(
        dkimpy(&dns, &relay.spool_cat(&id)),
        pairs(&[("pass", "s1")])
    );

    // Rotation: the config names the new selector's key; SIGHUP, no restart.
    let config = std::fs::read_to_string(&relay.config_path).expect("read config");
    std::fs::write(&relay.config_path, config.replace(&old.toml(), &new.toml()))
        .expect("write config");
    relay.sighup();
    relay.wait_log(
        &["SIGHUP: DKIM signing key loaded", "s2"],
        Duration::from_secs(10),
    );
    let id = relay.deliver(
        &["one@example.test"],
        &message("alice@example.test", "after"),
    );
    assert_eq!(
        dkimpy(&dns, &relay.spool_cat(&id)),
        pairs(&[("pass", "s2")])
    );

    // A key that no longer loads (readable by others) keeps the keys in use.
    std::fs::set_permissions(&new.file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    relay.sighup();
    relay.wait_log(
        &["SIGHUP: DKIM keys not reloaded", "s2.key"],
        Duration::from_secs(10),
    );
    let id = relay.deliver(
        &["one@example.test"],
        &message("alice@example.test", "kept"),
    );
    assert_eq!(
        dkimpy(&dns, &relay.spool_cat(&id)),
        pairs(&[("pass", "s2")])
    );
}

#[test]
fn key_readable_by_others_stops_the_start_and_check_shows_no_key() {
    let dir = new_workdir();
    let ed = keygen(dir.path(), "ed", true);
    let mut settings = Settings::new(Engine::Epoll);
    settings.extra_toml = ed.toml();

    // `relay check` names the key file, never its contents.
    let config_path = dir.path().join("relay.toml");
    std::fs::write(&config_path, settings.render(&dir.path().join("spool"))).expect("config");
    let output = relay_cmd(["check", "--config", config_path.to_str().expect("utf-8")]);
    assert!(output.status.success(), "{}", describe(&output));
    let shown = String::from_utf8_lossy(&output.stdout);
    assert!(
        shown.contains(ed.file.to_str().expect("utf-8")),
        "key path shown: {shown}"
    );
    let key = std::fs::read_to_string(&ed.file).expect("key");
    let secret = key.lines().nth(1).expect("PEM body line");
    assert!(!shown.contains(secret) && !shown.contains("PRIVATE KEY"));

    std::fs::set_permissions(&ed.file, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let failure = match Relay::try_start_in(dir, settings) {
        Ok(_) => panic!("started with a key file others may read"),
        Err(failure) => failure,
    };
    let said = failure.lines.join("\n");
    assert!(
        said.contains(ed.file.to_str().expect("utf-8")) && said.contains("mode 640"),
        "{said}"
    );
    assert!(!said.contains(secret), "{said}");
}
