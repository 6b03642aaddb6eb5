//! The sender checks at ingest (`[verify] enabled = true`), end to end: the relay binary,
//! hickory asking tests/py/dns_server.py on loopback for SPF, DKIM key and DMARC records,
//! messages sent by Python's smtplib (tests/py/authres_send.py), signed by dkimpy's
//! `dkimsign` and npm `mailauth sign`, read back over POP3, and our
//! `Authentication-Results` field parsed by python3-authres, the RFC 8601 parser of
//! python3-authheaders (tests/py/authres_parse.py).
//!
//! The client is 127.0.0.1, outside `relay.allowed_networks` (192.0.2.0/24), so its mail
//! is checked; the SPF records name 127.0.0.1 where they should pass.

#[macro_use]
mod common;
mod imap_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::dns::DnsServer;
use common::{Client, Engine, Relay, Settings, TEST_PASSWORD};
use imap_support::{fetch_all, Py, A};

const MAILAUTH: &str = "node_modules/.bin/mailauth";

fn tools_dir() -> PathBuf {
    PathBuf::from(
        std::env::var("RELAY_TEST_TOOLS").unwrap_or_else(|_| "/var/tmp/relay-test-tools".into()),
    )
}

/// DKIM keys made by dkimpy's `dknewkey`, and the DNS records of the test domains.
struct World {
    dir: tempfile::TempDir,
    dns: DnsServer,
}

impl World {
    fn key(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.key"))
    }
}

/// `dknewkey` writes NAME.key and NAME.dns (the TXT record text).
fn new_key(dir: &Path, name: &str, ktype: &str) -> String {
    let output = Command::new("/usr/bin/dknewkey")
        .arg("--ktype")
        .arg(ktype)
        .arg(name)
        .current_dir(dir)
        .output()
        .expect("run dknewkey (Debian python3-dkim)");
    assert!(output.status.success(), "dknewkey: {output:?}");
    let record = std::fs::read_to_string(dir.join(format!("{name}.dns"))).expect("NAME.dns");
    // The h=sha256 restriction would make any RSA-SHA1 signature fail at the key already;
    // leave it out so the RFC 8301 rule is what refuses SHA-1.
    record.trim().replace(" h=sha256;", "")
}

fn world() -> World {
    let dir = tempfile::tempdir().expect("tempdir");
    let rsa = new_key(dir.path(), "rsa", "rsa");
    let ed = new_key(dir.path(), "ed", "ed25519");
    let records = [
        // SPF: MAIL FROM and HELO identities.
        "pass.test=txt:v=spf1 ip4:127.0.0.1 -all".to_string(),
        "soft.test=txt:v=spf1 ~all".to_string(),
        "fail.test=txt:v=spf1 -all".to_string(),
        "helo.pass.test=txt:v=spf1 ip4:127.0.0.1 -all".to_string(),
        "helo.fail.test=txt:v=spf1 -all".to_string(),
        "broken.test=servfail".to_string(),
        "silent.test=silent".to_string(),
        // DMARC.
        "_dmarc.reject.test=txt:v=DMARC1; p=reject; rua=mailto:dmarc@reject.test".to_string(),
        "reject.test=txt:v=spf1 -all".to_string(),
        "_dmarc.none.test=txt:v=DMARC1; p=none".to_string(),
        "_dmarc.quar.test=txt:v=DMARC1; p=quarantine".to_string(),
        "_dmarc.signed.test=txt:v=DMARC1; p=none; adkim=s".to_string(),
        // RFC 7489 vs the DMARCbis tree walk: a subdomain with its own record, signed by
        // its parent (relaxed alignment through the public suffix list).
        "_dmarc.news.signed.test=txt:v=DMARC1; p=reject".to_string(),
        // A record at a public suffix (co.uk) that the tree walk would take as the
        // organisational domain's; RFC 7489 uses shop.co.uk's and its sp=.
        "_dmarc.co.uk=txt:v=DMARC1; p=none".to_string(),
        "_dmarc.shop.co.uk=txt:v=DMARC1; p=none; sp=reject; rua=mailto:d@shop.co.uk!10m"
            .to_string(),
        // DKIM keys of signed.test.
        format!("rsa._domainkey.signed.test=txt:{rsa}"),
        format!("ed._domainkey.signed.test=txt:{ed}"),
        // The ARC sealing key of the forwarder fwd.test.
        format!("rsa._domainkey.fwd.test=txt:{rsa}"),
    ];
    let records: Vec<&str> = records.iter().map(String::as_str).collect();
    let dns = DnsServer::start(&records);
    World { dir, dns }
}

fn settings(engine: Engine, dns_port: u16, verify: &str) -> Settings {
    let mut settings = Settings::new(engine);
    settings.allowed_networks = vec!["192.0.2.0/24".into()];
    settings.server_toml = format!("dns_servers = [\"127.0.0.1:{dns_port}\"]\n");
    settings.smtp_toml = "allow_plaintext_auth = true\n".into();
    settings.extra_toml = format!("[verify]\nenabled = true\ntimeout = \"3s\"\n{verify}");
    settings
}

fn message(marker: &str, from: &str, body: &str) -> Vec<u8> {
    format!(
        "From: Sender <{from}>\r\nTo: Bob <bob@example.test>\r\nSubject: check {marker}\r\nDate: Fri, 04 Dec 2026 12:00:00 +0000\r\nMessage-ID: <{marker}@client.test>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n{body}\r\nmarker {marker}\r\n"
    )
    .into_bytes()
}

/// Runs `program` with `input` on stdin; its stdout.
fn pipe(program: &mut Command, input: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = program
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {program:?}: {e}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write stdin");
    let output = child.wait_with_output().expect("wait");
    assert!(output.status.success(), "{program:?}: {output:?}");
    output.stdout
}

/// Signed by dkimpy: `dkimsign selector domain key` (relaxed/simple by default).
fn dkimsign(world: &World, selector: &str, alg: &str, message: &[u8]) -> Vec<u8> {
    pipe(
        Command::new("/usr/bin/dkimsign")
            .args(["--signalg", alg, selector, "signed.test"])
            .arg(world.key(selector)),
        message,
    )
}

/// Signed by npm mailauth (relaxed/relaxed).
fn mailauth_sign(world: &World, message: &[u8]) -> Vec<u8> {
    let path = world.dir.path().join("to-sign.eml");
    std::fs::write(&path, message).expect("write");
    let signed = pipe(
        Command::new(tools_dir().join(MAILAUTH))
            .args(["sign", "-d", "signed.test", "-s", "rsa", "-k"])
            .arg(world.key("rsa"))
            .arg(&path),
        b"",
    );
    // mailauth may write LF line ends; SMTP needs CRLF.
    let text = String::from_utf8(signed).expect("utf-8");
    text.replace("\r\n", "\n")
        .replace('\n', "\r\n")
        .into_bytes()
}

/// smtplib's final reply to one transaction: (code, text).
fn send(relay: &Relay, helo: &str, mail_from: &str, message: &[u8]) -> (u16, String) {
    let path = tempfile::NamedTempFile::new().expect("temp");
    std::fs::write(path.path(), message).expect("write");
    let output = Command::new("/usr/bin/python3")
        .arg(common::repo_path("tests/py/authres_send.py"))
        .arg(relay.addr.port().to_string())
        .args([helo, mail_from, "bob@example.test"])
        .arg(path.path())
        .output()
        .expect("run authres_send.py");
    assert!(output.status.success(), "authres_send.py: {output:?}");
    let reply: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    (
        reply["code"].as_u64().expect("code") as u16,
        reply["text"].as_str().expect("text").to_string(),
    )
}

/// The message with `marker` in bob's maildrop, over POP3 (left there).
fn fetch(relay: &Relay, marker: &str) -> Vec<u8> {
    let needle = format!("marker {marker}\r\n");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut pop = relay.pop3_login("bob");
        let list = pop.list();
        for (n, _) in list.iter().rev() {
            let message = pop.retr(*n);
            if common::find(&message, needle.as_bytes()).is_some() {
                let _ = pop.quit();
                return message;
            }
        }
        let _ = pop.quit();
        assert!(
            Instant::now() < deadline,
            "no message with {marker:?} for bob"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every `Authentication-Results` field of `message`, as python3-authres parses them.
fn parsed(message: &[u8]) -> Vec<serde_json::Value> {
    let out = pipe(
        Command::new("/usr/bin/python3").arg(common::repo_path("tests/py/authres_parse.py")),
        message,
    );
    let value: serde_json::Value = serde_json::from_slice(&out).expect("json");
    value.as_array().expect("array").clone()
}

/// Our field's results as `method=result prop=value …` strings (properties sorted), after
/// checking there is exactly one field with our authserv-id and that it is the first field.
fn ours(message: &[u8]) -> Vec<String> {
    let fields = parsed(message);
    let mine: Vec<&serde_json::Value> = fields
        .iter()
        .filter(|f| f["authserv_id"] == "relay.test")
        .collect();
    assert_eq!(
        mine.len(),
        1,
        "one A-R of ours in {}",
        String::from_utf8_lossy(message)
    );
    assert!(
        message.starts_with(b"Authentication-Results: relay.test;"),
        "our field comes first: {}",
        String::from_utf8_lossy(message)
    );
    mine[0]["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| {
            let mut props: Vec<String> = r["properties"]
                .as_object()
                .expect("properties")
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect();
            props.sort();
            let mut line = format!(
                "{}={}",
                r["method"].as_str().unwrap_or_default(),
                r["result"].as_str().unwrap_or_default()
            );
            for p in props {
                line.push(' ');
                line.push_str(&p);
            }
            line
        })
        .collect()
}

fn has(results: &[String], wanted: &str) {
    assert!(
        results.iter().any(|r| r == wanted),
        "{wanted:?} not in {results:#?}"
    );
}

/// Sends and expects 250; our parsed results of the stored message.
fn accepted(
    relay: &Relay,
    helo: &str,
    mail_from: &str,
    marker: &str,
    message: &[u8],
) -> Vec<String> {
    let (code, text) = send(relay, helo, mail_from, message);
    assert_eq!(code, 250, "{marker}: {text}");
    ours(&fetch(relay, marker))
}

fn dmarc_and_dkim(engine: Engine) {
    let world = world();
    let relay = Relay::start(settings(engine, world.dns.port, ""));

    // A forged From of a p=reject domain: SPF passes for the envelope, nothing aligns.
    let (code, text) = send(
        &relay,
        "helo.pass.test",
        "a@pass.test",
        &message("forged", "ceo@reject.test", "pay this invoice"),
    );
    assert_eq!(code, 550, "{text}");
    assert!(text.starts_with("5.7.1 "), "{text}");

    // p=none: delivered, marked; one field, above our Received field.
    let results = accepted(
        &relay,
        "helo.pass.test",
        "a@pass.test",
        "pnone",
        &message("pnone", "x@none.test", "hello"),
    );
    let stored = fetch(&relay, "pnone");
    let expected = "Authentication-Results: relay.test;\r\n\tspf=pass smtp.mailfrom=a@pass.test;\r\n\tspf=pass smtp.helo=helo.pass.test;\r\n\tdkim=none;\r\n\tdmarc=fail header.from=none.test;\r\n\tarc=none\r\nReceived: from ";
    assert!(
        stored.starts_with(expected.as_bytes()),
        "{}",
        String::from_utf8_lossy(&stored)
    );
    has(&results, "dmarc=fail header.from=none.test");
    has(&results, "spf=pass smtp.mailfrom=a@pass.test");
    has(&results, "spf=pass smtp.helo=helo.pass.test");
    has(&results, "dkim=none");

    // Aligned and signed by dkimpy (RSA and Ed25519) and by mailauth (RSA); the envelope
    // domain has no SPF, so DKIM alone carries DMARC (adkim=s: d= is the From domain).
    for (marker, signed) in [
        (
            "dkimpy-rsa",
            dkimsign(
                &world,
                "rsa",
                "rsa-sha256",
                &message("dkimpy-rsa", "x@signed.test", "rsa"),
            ),
        ),
        (
            "dkimpy-ed",
            dkimsign(
                &world,
                "ed",
                "ed25519-sha256",
                &message("dkimpy-ed", "x@signed.test", "ed"),
            ),
        ),
        (
            "mailauth-rsa",
            mailauth_sign(&world, &message("mailauth-rsa", "x@signed.test", "node")),
        ),
    ] {
        let results = accepted(
            &relay,
            "client.nowhere.test",
            "b@nospf.test",
            marker,
            &signed,
        );
        let selector = if marker.ends_with("ed") { "ed" } else { "rsa" };
        has(
            &results,
            &format!("dkim=pass header.d=signed.test header.s={selector}"),
        );
        has(&results, "dmarc=pass header.from=signed.test");
        has(&results, "spf=none smtp.mailfrom=b@nospf.test");
    }

    // A tampered body, a tampered header, and RSA-SHA1 (RFC 8301) all fail.
    let signed = dkimsign(
        &world,
        "rsa",
        "rsa-sha256",
        &message("tampered-body", "x@signed.test", "original"),
    );
    let tampered = String::from_utf8(signed)
        .expect("utf-8")
        .replace("original", "changed!")
        .into_bytes();
    let results = accepted(
        &relay,
        "client.nowhere.test",
        "b@nospf.test",
        "tampered-body",
        &tampered,
    );
    has(&results, "dkim=fail header.d=signed.test header.s=rsa");
    has(&results, "dmarc=fail header.from=signed.test");

    let signed = dkimsign(
        &world,
        "rsa",
        "rsa-sha256",
        &message("tampered-header", "x@signed.test", "body"),
    );
    let tampered = String::from_utf8(signed)
        .expect("utf-8")
        .replace("Subject: check", "Subject: CHECK now")
        .into_bytes();
    let results = accepted(
        &relay,
        "client.nowhere.test",
        "b@nospf.test",
        "tampered-header",
        &tampered,
    );
    has(&results, "dkim=fail header.d=signed.test header.s=rsa");

    let sha1 = dkimsign(
        &world,
        "rsa",
        "rsa-sha1",
        &message("sha1", "x@signed.test", "old"),
    );
    let results = accepted(&relay, "client.nowhere.test", "b@nospf.test", "sha1", &sha1);
    has(&results, "dkim=fail header.d=signed.test header.s=rsa");
    has(&results, "dmarc=fail header.from=signed.test");
    relay.stop();
}

/// RFC 6376 §3.4.4: whitespace at line ends goes before empty lines at the end of the body
/// are ignored, so lines holding only whitespace there are not hashed. Bodies ending so,
/// signed relaxed/relaxed by dkimpy (RSA, Ed25519) and npm mailauth, verify here; on the code
/// before (mail-auth 0.13.3's reading, which hashes them as CRLFs) all three were
/// `dkim=fail` (body hash mismatch).
fn whitespace_only_lines_at_the_end(engine: Engine) {
    let world = world();
    let relay = Relay::start(settings(engine, world.dns.port, ""));
    let ended = |marker: &str| {
        let mut message = message(marker, "x@signed.test", "trailing  whitespace\t");
        message.extend_from_slice(b" \r\n\t\r\n  \t \r\n\r\n \r\n");
        message
    };
    let dkimsign_relaxed = |selector: &str, alg: &str, message: &[u8]| {
        pipe(
            Command::new("/usr/bin/dkimsign")
                .args([
                    "--hcanon",
                    "relaxed",
                    "--bcanon",
                    "relaxed",
                    "--signalg",
                    alg,
                ])
                .args([selector, "signed.test"])
                .arg(world.key(selector)),
            message,
        )
    };
    for (marker, selector, signed) in [
        (
            "ws-dkimpy-rsa",
            "rsa",
            dkimsign_relaxed("rsa", "rsa-sha256", &ended("ws-dkimpy-rsa")),
        ),
        (
            "ws-dkimpy-ed",
            "ed",
            dkimsign_relaxed("ed", "ed25519-sha256", &ended("ws-dkimpy-ed")),
        ),
        (
            "ws-mailauth-rsa",
            "rsa",
            mailauth_sign(&world, &ended("ws-mailauth-rsa")),
        ),
    ] {
        assert!(
            signed.ends_with(b"\r\n \r\n\t\r\n  \t \r\n\r\n \r\n"),
            "{marker}: the signer kept the body: {}",
            String::from_utf8_lossy(&signed)
        );
        let text = String::from_utf8_lossy(&signed);
        assert!(text.contains("c=relaxed/relaxed"), "{marker}: {text}");
        let results = accepted(
            &relay,
            "client.nowhere.test",
            "b@nospf.test",
            marker,
            &signed,
        );
        has(
            &results,
            &format!("dkim=pass header.d=signed.test header.s={selector}"),
        );
        has(&results, "dmarc=pass header.from=signed.test");
    }
    // The text before the whitespace lines is signed: changing it fails.
    let signed = dkimsign_relaxed("rsa", "rsa-sha256", &ended("ws-tampered"));
    let tampered = String::from_utf8(signed)
        .expect("utf-8")
        .replace("trailing  whitespace", "trailing whitespace!")
        .into_bytes();
    let results = accepted(
        &relay,
        "client.nowhere.test",
        "b@nospf.test",
        "ws-tampered",
        &tampered,
    );
    has(&results, "dkim=fail header.d=signed.test header.s=rsa");
    relay.stop();
}

/// Where RFC 7489 (organisational domain from the public suffix list, §3.2; record at the
/// From domain else at the organisational domain, §6.6.3) and the DMARCbis tree walk
/// mail-auth implements disagree.
fn rfc7489_organisational_domain(engine: Engine) {
    let world = world();
    let relay = Relay::start(settings(engine, world.dns.port, ""));

    // news.signed.test publishes p=reject; the message is signed by d=signed.test, its
    // organisational domain: aligned (relaxed), so DMARC passes. The tree walk takes
    // news.signed.test as the organisational domain (it has the record) and rejects.
    let signed = dkimsign(
        &world,
        "rsa",
        "rsa-sha256",
        &message("parent-d", "x@news.signed.test", "from the parent"),
    );
    let results = accepted(
        &relay,
        "client.nowhere.test",
        "b@nospf.test",
        "parent-d",
        &signed,
    );
    has(&results, "dkim=pass header.d=signed.test header.s=rsa");
    has(&results, "dmarc=pass header.from=news.signed.test");

    // news.shop.co.uk has no record; its organisational domain shop.co.uk says sp=reject,
    // which applies to it. The tree walk goes on to co.uk's p=none and delivers.
    let (code, text) = send(
        &relay,
        "helo.pass.test",
        "a@pass.test",
        &message("psl-sp", "ceo@news.shop.co.uk", "pay this invoice"),
    );
    assert_eq!(code, 550, "{text}");
    assert!(text.starts_with("5.7.1 "), "{text}");
    // shop.co.uk itself: p=none, delivered and marked.
    let results = accepted(
        &relay,
        "helo.pass.test",
        "a@pass.test",
        "psl-p",
        &message("psl-p", "ceo@shop.co.uk", "hello"),
    );
    has(&results, "dmarc=fail header.from=shop.co.uk");
    relay.stop();
}

fn spf_identities(engine: Engine) {
    let world = world();
    let relay = Relay::start(settings(engine, world.dns.port, ""));
    let from = "x@elsewhere.test";

    let results = accepted(
        &relay,
        "helo.pass.test",
        "a@pass.test",
        "spf-pass",
        &message("spf-pass", from, "p"),
    );
    has(&results, "spf=pass smtp.mailfrom=a@pass.test");
    has(&results, "spf=pass smtp.helo=helo.pass.test");
    has(&results, "dmarc=none header.from=elsewhere.test");

    let results = accepted(
        &relay,
        "helo.pass.test",
        "a@soft.test",
        "spf-soft",
        &message("spf-soft", from, "s"),
    );
    has(&results, "spf=softfail smtp.mailfrom=a@soft.test");

    // -all for MAIL FROM without a DMARC record: refused (spf_fail = "reject").
    let (code, text) = send(
        &relay,
        "helo.pass.test",
        "a@fail.test",
        &message("spf-fail", from, "f"),
    );
    assert_eq!(code, 550, "{text}");
    assert!(text.starts_with("5.7.23 "), "{text}");

    // HELO fails, MAIL FROM passes: the MAIL FROM result decides; both are reported.
    let results = accepted(
        &relay,
        "helo.fail.test",
        "a@pass.test",
        "helo-fail",
        &message("helo-fail", from, "h"),
    );
    has(&results, "spf=fail smtp.helo=helo.fail.test");
    has(&results, "spf=pass smtp.mailfrom=a@pass.test");

    // The null sender is checked by its HELO name (RFC 7208 §2.4).
    let results = accepted(
        &relay,
        "helo.pass.test",
        "",
        "null-pass",
        &message("null-pass", from, "n"),
    );
    has(&results, "spf=pass smtp.helo=helo.pass.test");
    assert!(
        !results.iter().any(|r| r.contains("smtp.mailfrom")),
        "{results:?}"
    );
    let (code, text) = send(
        &relay,
        "helo.fail.test",
        "",
        &message("null-fail", from, "n"),
    );
    assert_eq!(code, 550, "{text}");
    relay.stop();
}

fn dns_failures(engine: Engine) {
    let world = world();
    let from = "x@elsewhere.test";
    // dns_failure = "tempfail" (the default): SERVFAIL and a silent server give 451 4.7.x.
    let relay = Relay::start(settings(engine, world.dns.port, ""));
    let (code, text) = send(
        &relay,
        "helo.pass.test",
        "a@broken.test",
        &message("servfail", from, "s"),
    );
    assert_eq!(code, 451, "{text}");
    assert!(text.starts_with("4.7."), "{text}");
    let started = Instant::now();
    let (code, text) = send(
        &relay,
        "helo.pass.test",
        "a@silent.test",
        &message("silent", from, "s"),
    );
    assert_eq!(code, 451, "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    relay.stop();

    // dns_failure = "mark": delivered, marked temperror.
    let relay = Relay::start(settings(engine, world.dns.port, "dns_failure = \"mark\"\n"));
    let results = accepted(
        &relay,
        "helo.pass.test",
        "a@broken.test",
        "servfail-mark",
        &message("servfail-mark", from, "s"),
    );
    has(&results, "spf=temperror smtp.mailfrom=a@broken.test");
    let results = accepted(
        &relay,
        "helo.pass.test",
        "a@silent.test",
        "silent-mark",
        &message("silent-mark", from, "s"),
    );
    has(&results, "spf=temperror smtp.mailfrom=a@silent.test");
    relay.stop();
}

fn forged_results_and_own_clients(engine: Engine) {
    let world = world();
    let relay = Relay::start(settings(engine, world.dns.port, ""));

    // A field claiming our authserv-id is removed; another server's is kept.
    let mut forged = b"Authentication-Results: relay.test; dkim=pass header.d=signed.test; dmarc=pass header.from=signed.test\r\nAuthentication-Results: (upstream) other.example; spf=pass smtp.mailfrom=a@pass.test\r\n".to_vec();
    forged.extend(message("forged-ar", "x@signed.test", "trust me"));
    let (code, text) = send(&relay, "helo.pass.test", "a@pass.test", &forged);
    assert_eq!(code, 250, "{text}");
    let stored = fetch(&relay, "forged-ar");
    let results = ours(&stored);
    has(&results, "dkim=none");
    has(&results, "dmarc=fail header.from=signed.test");
    let fields = parsed(&stored);
    assert_eq!(fields.len(), 2, "{fields:?}");
    assert_eq!(fields[1]["authserv_id"], "other.example");

    // An authenticated client is not checked: no field of ours, nothing refused, even for
    // a sender whose SPF says -all.
    let mut client = Client::greeted(relay.addr);
    client.ehlo();
    client.expect(
        &format!("AUTH PLAIN {}", base64_plain("alice", TEST_PASSWORD)),
        235,
    );
    let mut forged = b"Authentication-Results: relay.test; dkim=pass\r\n".to_vec();
    forged.extend(message("authenticated", "alice@fail.test", "mine"));
    let reply = client
        .transaction("alice@fail.test", &["bob@example.test"], &forged)
        .expect("transaction");
    assert_eq!(reply.code, 250, "{reply:?}");
    client.quit();
    let stored = fetch(&relay, "authenticated");
    assert!(!stored.starts_with(b"Authentication-Results: relay.test;\r\n"));
    relay.stop();

    // A relay-network client is not checked either, and causes no lookups.
    let mut own = settings(engine, world.dns.port, "");
    own.allowed_networks = vec!["127.0.0.0/8".into()];
    let relay = Relay::start(own);
    let (code, text) = send(
        &relay,
        "helo.relaynet.test",
        "a@relaynet.test",
        &message("relaynet", "x@relaynet.test", "r"),
    );
    assert_eq!(code, 250, "{text}");
    let stored = fetch(&relay, "relaynet");
    assert!(
        parsed(&stored).is_empty(),
        "{}",
        String::from_utf8_lossy(&stored)
    );
    relay.stop();
    let queries = world.dns.queries();
    assert!(
        !queries.iter().any(|q| q.contains("relaynet")),
        "{queries:?}"
    );
}

/// npm mailauth as a forwarder (fwd.test) that checked the message and sealed it (ARC,
/// RFC 8617), its DNS answers from a `--dns-cache` file (no network).
fn arc_seal(world: &World, message: &[u8]) -> Vec<u8> {
    let rsa = std::fs::read_to_string(world.dir.path().join("rsa.dns")).expect("rsa.dns");
    let rsa = rsa.trim().replace(" h=sha256;", "");
    let cache = serde_json::json!({
        "rsa._domainkey.signed.test": { "TXT": [[rsa]] },
        "rsa._domainkey.fwd.test": { "TXT": [[rsa]] },
        "_dmarc.signed.test": { "TXT": [["v=DMARC1; p=none; adkim=s"]] },
    });
    let cache_path = world.dir.path().join("dns-cache.json");
    std::fs::write(&cache_path, cache.to_string()).expect("write cache");
    let path = world.dir.path().join("to-seal.eml");
    std::fs::write(&path, message).expect("write");
    let sealed = pipe(
        Command::new(tools_dir().join(MAILAUTH))
            .args(["seal", "-d", "fwd.test", "-s", "rsa", "-m", "fwd.test"])
            .args([
                "-i",
                "192.0.2.9",
                "-e",
                "origin.signed.test",
                "-f",
                "a@signed.test",
            ])
            .arg("-k")
            .arg(world.key("rsa"))
            .arg("--dns-cache")
            .arg(&cache_path)
            .arg(&path),
        b"",
    );
    let text = String::from_utf8(sealed).expect("utf-8");
    text.replace("\r\n", "\n")
        .replace('\n', "\r\n")
        .into_bytes()
}

/// ARC verification only: a chain sealed by mailauth passes; a seal broken afterwards
/// fails.
fn arc_sets(engine: Engine) {
    let world = world();
    let relay = Relay::start(settings(engine, world.dns.port, ""));
    let signed = dkimsign(
        &world,
        "rsa",
        "rsa-sha256",
        &message("arc-pass", "x@signed.test", "forwarded"),
    );
    let sealed = arc_seal(&world, &signed);
    assert!(
        common::find(&sealed, b"ARC-Seal:").is_some(),
        "{}",
        String::from_utf8_lossy(&sealed)
    );
    let results = accepted(&relay, "fwd.test", "a@fwd.test", "arc-pass", &sealed);
    has(&results, "arc=pass");
    has(&results, "dkim=pass header.d=signed.test header.s=rsa");

    let signed = dkimsign(
        &world,
        "rsa",
        "rsa-sha256",
        &message("arc-broken", "x@signed.test", "forwarded"),
    );
    let sealed = String::from_utf8(arc_seal(&world, &signed)).expect("utf-8");
    // The forwarder's own results, as it sealed them, changed afterwards.
    let broken = sealed.replacen(
        "ARC-Authentication-Results: i=1; fwd.test;",
        "ARC-Authentication-Results: i=1; fwd.test; x=y;",
        1,
    );
    assert_ne!(broken, sealed, "{sealed}");
    let results = accepted(
        &relay,
        "fwd.test",
        "a@fwd.test",
        "arc-broken",
        broken.as_bytes(),
    );
    has(&results, "arc=fail");
    relay.stop();
}

/// bob's messages in `folder` over IMAP (imaplib): the bodies, in UID order.
fn imap_folder(py: &mut Py, folder: &str) -> Vec<Vec<u8>> {
    py.ok("a", "select", &[A::S(folder)]);
    fetch_all(py, "a")
        .into_values()
        .map(|(_, _, body)| body)
        .collect()
}

fn with_marker<'a>(messages: &'a [Vec<u8>], marker: &str) -> Option<&'a Vec<u8>> {
    let needle = format!("marker {marker}\r\n");
    messages
        .iter()
        .find(|m| common::find(m, needle.as_bytes()).is_some())
}

/// `dmarc_quarantine = "junk"` (the default) and `spf_fail = "junk"`: the message is accepted
/// and filed in the recipient's Junk folder (created with the `\Junk` role), out of POP3's
/// INBOX, durably; an `X-Relay-Junk` field from outside files nothing and is removed.
fn junk_folder(engine: Engine) {
    let world = world();
    let relay = Relay::start(settings(engine, world.dns.port, "spf_fail = \"junk\"\n"));

    // A forged From of a p=quarantine domain: SPF passes for the envelope, nothing aligns.
    let (code, text) = send(
        &relay,
        "helo.pass.test",
        "a@pass.test",
        &message("quar", "ceo@quar.test", "pay this invoice"),
    );
    assert_eq!(code, 250, "{text}");
    // SPF -all for MAIL FROM, no DMARC record.
    let (code, text) = send(
        &relay,
        "helo.pass.test",
        "x@fail.test",
        &message("spfjunk", "x@fail.test", "hello"),
    );
    assert_eq!(code, 250, "{text}");
    // A sender trying to file its own mail (or keep it out of Junk) with our field.
    let forged = String::from_utf8(message("forgedmark", "x@none.test", "hello"))
        .expect("utf-8")
        .replacen("Subject:", "X-Relay-Junk: dmarc\r\nSubject:", 1);
    let results = accepted(
        &relay,
        "helo.pass.test",
        "a@pass.test",
        "forgedmark",
        forged.as_bytes(),
    );
    has(&results, "dmarc=fail header.from=none.test");

    let check = |relay: &Relay| {
        let mut py = Py::spawn();
        py.login("a", relay.listening("imap").expect("imap").port(), "bob");
        let listed = py.ok("a", "list", &[A::S("\"\""), A::S("*")]).text();
        assert!(
            listed.contains("\\Junk") && listed.contains("Junk"),
            "{listed}"
        );
        let junk = imap_folder(&mut py, "Junk");
        assert_eq!(junk.len(), 2, "two messages in Junk");
        let quar = with_marker(&junk, "quar").expect("the p=quarantine message in Junk");
        assert!(
            quar.starts_with(b"Authentication-Results: relay.test;"),
            "{}",
            String::from_utf8_lossy(quar)
        );
        has(&ours(quar), "dmarc=fail header.from=quar.test");
        assert!(common::find(quar, b"\r\nX-Relay-Junk: dmarc\r\n").is_some());
        let spf = with_marker(&junk, "spfjunk").expect("the SPF -all message in Junk");
        has(&ours(spf), "spf=fail smtp.mailfrom=x@fail.test");
        assert!(common::find(spf, b"\r\nX-Relay-Junk: spf\r\n").is_some());

        let inbox = imap_folder(&mut py, "INBOX");
        assert_eq!(inbox.len(), 1, "only the forged-mark message in INBOX");
        let kept = with_marker(&inbox, "forgedmark").expect("in INBOX");
        assert!(
            common::find(kept, b"X-Relay-Junk").is_none(),
            "{}",
            String::from_utf8_lossy(kept)
        );
        let _ = py.call("a", "logout", &[]);

        // POP3 shows INBOX only.
        let mut pop = relay.pop3_login("bob");
        assert_eq!(pop.list().len(), 1);
        let _ = pop.quit();
    };
    check(&relay);
    // Filed durably: the same after a restart.
    relay.stop();
    let relay = relay.restart(settings(engine, world.dns.port, "spf_fail = \"junk\"\n"));
    check(&relay);
    relay.stop();
}

fn base64_plain(user: &str, password: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"))
}

engine_tests! {
    dmarc_and_dkim: dmarc_and_dkim_uring, dmarc_and_dkim_epoll;
    rfc7489_organisational_domain: rfc7489_uring, rfc7489_epoll;
    spf_identities: spf_identities_uring, spf_identities_epoll;
    dns_failures: dns_failures_uring, dns_failures_epoll;
    forged_results_and_own_clients: forged_results_uring, forged_results_epoll;
    arc_sets: arc_sets_uring, arc_sets_epoll;
    whitespace_only_lines_at_the_end: whitespace_only_lines_at_the_end_uring, whitespace_only_lines_at_the_end_epoll;
    junk_folder: junk_folder_uring, junk_folder_epoll;
}
