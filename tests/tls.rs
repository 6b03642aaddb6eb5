//! TLS on the relay's listeners: SMTP STARTTLS (RFC 3207), POP3 STLS (RFC 2595),
//! implicit TLS on the submissions and POP3S listeners (RFC 8314), AUTH offered only on TLS,
//! the pipelining-injection defence (CVE-2011-0411), certificate reload on SIGHUP, and
//! handshake failures. Driven by clients no one here wrote: Python's smtplib and poplib,
//! lettre, swaks and curl, plus a rustls client where the test needs byte-level control.
//! Certificates are generated per test with rcgen.

#[macro_use]
mod common;

use std::process::Command;
use std::time::Duration;

use common::tls::{client_handshake, connect, read_reply, send, TestCert};
use common::{describe, run_with_timeout, Engine, Relay, Settings, COMMAND_TIMEOUT, TEST_PASSWORD};

/// A relay with a certificate and the implicit-TLS listeners, and the certificate.
fn start(engine: Engine) -> (Relay, TestCert, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("cert dir");
    let cert = TestCert::generate(dir.path(), "relay");
    let mut settings = Settings::new(engine);
    settings.extra_toml = cert.toml();
    settings.smtp_toml = "tls_listen = [\"127.0.0.1:0\"]\n".into();
    settings.pop3_toml = "tls_listen = [\"127.0.0.1:0\"]\n".into();
    (Relay::start(settings), cert, dir)
}

fn python(script: &str, args: &[String]) -> String {
    let mut command = Command::new("python3");
    command.arg("-c").arg(script).args(args);
    let output = run_with_timeout(&mut command, COMMAND_TIMEOUT);
    assert!(output.status.success(), "python: {}", describe(&output));
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// smtplib: STARTTLS verified against our certificate, AUTH only after it, a message to a
/// local mailbox; then poplib: STLS, login, and the message's Received header names the TLS
/// session and the authenticated submission.
fn smtplib_starttls_then_poplib_stls(engine: Engine) {
    let (relay, cert, _dir) = start(engine);
    const SCRIPT: &str = r#"
import smtplib, poplib, ssl, sys
smtp_port, pop_port, cafile, password = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
context = ssl.create_default_context(cafile=cafile)
context.check_hostname = True
s = smtplib.SMTP("127.0.0.1", smtp_port, timeout=20)
s.ehlo("client.test")
assert s.has_extn("starttls"), s.esmtp_features
assert not s.has_extn("auth"), "AUTH offered without TLS"
code, _ = s.starttls(context=context)
assert code == 220, code
s.ehlo("client.test")
assert not s.has_extn("starttls"), "STARTTLS offered twice"
assert s.has_extn("auth"), s.esmtp_features
s.login("alice", password)
refused = s.sendmail("alice@example.test", ["bob@example.test"], "Subject: over tls\r\n\r\nsecret body\r\n")
assert refused == {}, refused
s.quit()
p = poplib.POP3("127.0.0.1", pop_port, timeout=20)
assert "STLS" in p.capa(), p.capa()
p.stls(context=context)
assert "STLS" not in p.capa(), "STLS offered on TLS"
p.user("bob")
p.pass_(password)
count, _ = p.stat()
assert count == 1, count
lines = [l.decode() for l in p.retr(1)[1]]
p.quit()
print("\n".join(lines))
"#;
    let message = python(
        SCRIPT,
        &[
            relay.addr.port().to_string(),
            relay.pop3_addr.port().to_string(),
            cert.cert_path.display().to_string(),
            TEST_PASSWORD.to_string(),
        ],
    );
    assert!(message.contains("secret body"), "{message}");
    assert!(message.contains("with ESMTPSA"), "{message}");
    assert!(
        message.contains("(using TLSv1.3 with cipher TLS13_"),
        "{message}"
    );
    assert!(
        message.contains("(Authenticated sender: alice)"),
        "{message}"
    );
    let accepted = relay.wait_log(&["accepted", "auth=alice", "tls="], Duration::from_secs(20));
    assert!(accepted.contains("TLSv1.3"), "{accepted}");
    relay.stop();
}

engine_tests! {
    smtplib_starttls_then_poplib_stls: smtplib_starttls_then_poplib_stls_uring, smtplib_starttls_then_poplib_stls_epoll;
}

/// Implicit TLS (RFC 8314): SMTP_SSL on the submissions listener and POP3_SSL on POP3S.
fn implicit_tls_listeners(engine: Engine) {
    let (relay, cert, _dir) = start(engine);
    let smtps = relay.listening("smtps").expect("smtps listener");
    let pop3s = relay.listening("pop3s").expect("pop3s listener");
    const SCRIPT: &str = r#"
import smtplib, poplib, ssl, sys
smtps, pop3s, cafile, password = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
context = ssl.create_default_context(cafile=cafile)
s = smtplib.SMTP_SSL("127.0.0.1", smtps, timeout=20, context=context)
s.ehlo("client.test")
assert not s.has_extn("starttls"), s.esmtp_features
assert s.has_extn("auth"), s.esmtp_features
s.login("alice", password)
s.sendmail("alice@example.test", ["two@example.test"], "Subject: smtps\r\n\r\nimplicit\r\n")
s.quit()
p = poplib.POP3_SSL("127.0.0.1", pop3s, timeout=20, context=context)
assert "STLS" not in p.capa(), p.capa()
p.user("two")
p.pass_(password)
lines = [l.decode() for l in p.retr(1)[1]]
p.quit()
print("\n".join(lines))
"#;
    let message = python(
        SCRIPT,
        &[
            smtps.port().to_string(),
            pop3s.port().to_string(),
            cert.cert_path.display().to_string(),
            TEST_PASSWORD.to_string(),
        ],
    );
    assert!(message.contains("implicit"), "{message}");
    assert!(message.contains("with ESMTPSA"), "{message}");
    relay.stop();
}

engine_tests! {
    implicit_tls_listeners: implicit_tls_listeners_uring, implicit_tls_listeners_epoll;
}

/// lettre: STARTTLS required and verified against our certificate, then AUTH PLAIN.
#[test]
fn lettre_starttls_with_auth() {
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
    use lettre::{Message, SmtpTransport, Transport};

    let (relay, cert, _dir) = start(Engine::Uring);
    let pem = std::fs::read(&cert.cert_path).expect("read cert");
    let parameters = TlsParameters::builder(common::tls::TLS_NAME.to_string())
        .add_root_certificate(Certificate::from_pem(&pem).expect("certificate"))
        .build_rustls()
        .expect("tls parameters");
    let transport = SmtpTransport::builder_dangerous("127.0.0.1")
        .port(relay.addr.port())
        .tls(Tls::Required(parameters))
        .credentials(Credentials::new("alice".into(), TEST_PASSWORD.into()))
        .timeout(Some(Duration::from_secs(20)))
        .build();
    let email = Message::builder()
        .from("alice@example.test".parse().expect("from"))
        .to("someone@remote.test".parse().expect("to"))
        .subject("lettre over tls")
        .body("relayed because authenticated\r\n".to_string())
        .expect("message");
    let response = transport.send(&email).expect("lettre send over STARTTLS");
    assert!(response.is_positive(), "{response:?}");
    let accepted = relay.wait_log(&["accepted", "auth=alice"], Duration::from_secs(20));
    assert!(accepted.contains("tls=TLSv1.3"), "{accepted}");
    relay.stop();
}

/// swaks (Debian package, installed by tests/run.sh): --tls --auth.
#[test]
fn swaks_tls_auth() {
    let (relay, _cert, _dir) = start(Engine::Epoll);
    let mut command = Command::new("swaks");
    command
        .args(["--server", &format!("127.0.0.1:{}", relay.addr.port())])
        .args(["--tls", "--auth", "PLAIN"])
        .args(["--auth-user", "alice", "--auth-password", TEST_PASSWORD])
        .args([
            "--from",
            "alice@example.test",
            "--to",
            "someone@remote.test",
        ])
        .args(["--helo", "swaks.test", "--timeout", "20"]);
    let output = run_with_timeout(&mut command, COMMAND_TIMEOUT);
    let transcript = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "swaks: {}", describe(&output));
    assert!(
        transcript.contains("<-  220 2.0.0 Ready to start TLS"),
        "{transcript}"
    );
    assert!(
        transcript.contains("~> AUTH PLAIN"),
        "AUTH inside TLS: {transcript}"
    );
    assert!(transcript.contains("<~  235 2.7.0"), "{transcript}");
    assert!(
        transcript.contains("<~  250 2.0.0 Ok: queued as"),
        "{transcript}"
    );
    relay.stop();
}

/// curl: `--ssl-reqd pop3://` (STLS) and `pop3s://` (implicit), certificate verified.
#[test]
fn curl_pop3_stls_and_pop3s() {
    let (relay, cert, _dir) = start(Engine::Uring);
    // One message for alice, submitted over STARTTLS by smtplib.
    python(
        r#"
import smtplib, ssl, sys
context = ssl.create_default_context(cafile=sys.argv[2])
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=20)
s.starttls(context=context)
s.sendmail("x@remote.test", ["alice@example.test"], "Subject: for curl\r\n\r\nfetched by curl\r\n")
s.quit()
"#,
        &[
            relay.addr.port().to_string(),
            cert.cert_path.display().to_string(),
        ],
    );
    let pop3s = relay.listening("pop3s").expect("pop3s listener");
    for url in [
        format!("pop3://127.0.0.1:{}/1", relay.pop3_addr.port()),
        format!("pop3s://127.0.0.1:{}/1", pop3s.port()),
    ] {
        let mut command = Command::new("curl");
        command
            .args(["--silent", "--show-error", "--ssl-reqd", "--max-time", "20"])
            .arg("--cacert")
            .arg(&cert.cert_path)
            .args(["--user", &format!("alice:{TEST_PASSWORD}")])
            .arg(&url);
        let output = run_with_timeout(&mut command, COMMAND_TIMEOUT);
        assert!(output.status.success(), "curl {url}: {}", describe(&output));
        let body = String::from_utf8_lossy(&output.stdout);
        assert!(body.contains("fetched by curl"), "{url}: {body}");
    }
    // curl refuses a server that does not offer STLS with --ssl-reqd; against ours it did
    // not need to. And without our CA it must refuse the certificate.
    let mut command = Command::new("curl");
    command
        .args(["--silent", "--show-error", "--ssl-reqd", "--max-time", "20"])
        .args(["--user", &format!("alice:{TEST_PASSWORD}")])
        .arg(format!("pop3s://127.0.0.1:{}/1", pop3s.port()));
    let output = run_with_timeout(&mut command, COMMAND_TIMEOUT);
    assert!(!output.status.success(), "an unknown CA must be refused");
    relay.stop();
}

/// CVE-2011-0411: commands pipelined with STARTTLS (in clear, before the handshake) must not
/// be executed inside the TLS session. The first reply over TLS must answer the first
/// command sent over TLS.
fn pipelined_plaintext_after_starttls_is_discarded(engine: Engine) {
    let (relay, cert, _dir) = start(engine);
    let (mut socket, greeting) = connect(relay.addr);
    assert!(greeting.starts_with("220 "), "{greeting}");
    send(&mut socket, "EHLO attacker.test\r\n");
    let ehlo = read_reply(&mut socket);
    assert!(ehlo.contains("250-STARTTLS"), "{ehlo}");
    send(
        &mut socket,
        "STARTTLS\r\nRSET\r\nMAIL FROM:<injected@evil.test>\r\n",
    );
    assert_eq!(read_reply(&mut socket), "220 2.0.0 Ready to start TLS\r\n");
    let (mut tls, _) = client_handshake(socket, cert.client_config()).expect("handshake");
    send(&mut tls, "NOOP\r\n");
    // Had the injected RSET run, its 250 2.0.0 would come first, then MAIL's 250 2.1.0.
    assert_eq!(read_reply(&mut tls), "250 2.0.0 Ok\r\n");
    send(&mut tls, "MAIL FROM:<a@b.test>\r\n");
    assert_eq!(
        read_reply(&mut tls),
        "503 5.5.1 Error: send HELO/EHLO first\r\n",
        "the session must have started over after STARTTLS"
    );
    send(&mut tls, "QUIT\r\n");
    assert!(read_reply(&mut tls).starts_with("221 "));
    relay.wait_log(
        &["discarded input pipelined after STARTTLS", "octets=38"],
        Duration::from_secs(20),
    );

    // The same for POP3 STLS: USER/PASS in clear behind STLS are dropped.
    let (mut socket, greeting) = connect(relay.pop3_addr);
    assert!(greeting.starts_with("+OK"), "{greeting}");
    send(&mut socket, "STLS\r\nUSER alice\r\n");
    assert_eq!(read_reply(&mut socket), "+OK Begin TLS negotiation\r\n");
    let (mut tls, _) = client_handshake(socket, cert.client_config()).expect("handshake");
    send(&mut tls, &format!("PASS {TEST_PASSWORD}\r\n"));
    let reply = read_reply(&mut tls);
    assert!(
        reply.starts_with("-ERR"),
        "PASS without USER over TLS: {reply}"
    );
    send(&mut tls, "QUIT\r\n");
    assert!(read_reply(&mut tls).starts_with("+OK"));
    relay.wait_log(
        &["discarded input pipelined after STLS", "octets=12"],
        Duration::from_secs(20),
    );
    relay.stop();
}

engine_tests! {
    pipelined_plaintext_after_starttls_is_discarded: pipelined_plaintext_after_starttls_is_discarded_uring, pipelined_plaintext_after_starttls_is_discarded_epoll;
}

/// SIGHUP swaps the certificate for new handshakes; a session already on TLS keeps going;
/// a broken file at reload keeps the certificate in use.
#[test]
fn sighup_reloads_the_certificate_without_dropping_connections() {
    let (relay, first, dir) = start(Engine::Uring);
    let second = TestCert::generate(dir.path(), "second");

    let starttls = |config| {
        let (mut socket, _) = connect(relay.addr);
        send(&mut socket, "EHLO c.test\r\n");
        read_reply(&mut socket);
        send(&mut socket, "STARTTLS\r\n");
        assert_eq!(read_reply(&mut socket), "220 2.0.0 Ready to start TLS\r\n");
        client_handshake(socket, config)
    };
    let (mut old_session, presented) = starttls(first.client_config()).expect("first handshake");
    assert_eq!(presented, first.der);

    std::fs::copy(&second.cert_path, &first.cert_path).expect("replace cert");
    std::fs::copy(&second.key_path, &first.key_path).expect("replace key");
    relay.sighup();
    relay.wait_log(
        &["SIGHUP: TLS certificate reloaded"],
        Duration::from_secs(20),
    );

    let (_, presented) = starttls(second.client_config()).expect("handshake after reload");
    assert_eq!(
        presented, second.der,
        "new handshakes get the new certificate"
    );
    // The old certificate is no longer trusted by a client that knows only it.
    assert!(starttls(first.client_config()).is_err());

    // The session from before the reload is still up and working.
    send(&mut old_session, "EHLO c.test\r\n");
    assert!(read_reply(&mut old_session).starts_with("250-relay.test"));
    send(&mut old_session, "NOOP\r\n");
    assert_eq!(read_reply(&mut old_session), "250 2.0.0 Ok\r\n");

    // A key that does not match: logged, the current certificate stays.
    std::fs::copy(&first.key_path, dir.path().join("second.key.bak")).expect("backup");
    let third = TestCert::generate(dir.path(), "third");
    std::fs::copy(&third.key_path, &first.key_path).expect("mismatched key");
    relay.sighup();
    relay.wait_log(&["TLS certificate not reloaded"], Duration::from_secs(20));
    let (_, presented) = starttls(second.client_config()).expect("still serving");
    assert_eq!(presented, second.der);
    relay.stop();
}

/// A client that sends garbage instead of a ClientHello, and one that goes silent after
/// STARTTLS: each is cut (the second at `tls.handshake_timeout`), logged and counted; the
/// relay goes on serving.
#[test]
fn failed_and_silent_handshakes_are_cut() {
    let dir = tempfile::tempdir().expect("cert dir");
    let cert = TestCert::generate(dir.path(), "relay");
    let mut settings = Settings::new(Engine::Uring);
    settings.extra_toml = format!("{}handshake_timeout = \"1s\"\n", cert.toml());
    let relay = Relay::start(settings);

    let (mut socket, _) = connect(relay.addr);
    send(&mut socket, "STARTTLS\r\n");
    assert_eq!(read_reply(&mut socket), "220 2.0.0 Ready to start TLS\r\n");
    send(&mut socket, "this is not a TLS record\r\n");
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut socket, &mut rest);
    relay.wait_log(
        &["no TLS session", "TLS handshake failed"],
        Duration::from_secs(20),
    );

    let started = std::time::Instant::now();
    let (mut socket, _) = connect(relay.addr);
    send(&mut socket, "STARTTLS\r\n");
    assert_eq!(read_reply(&mut socket), "220 2.0.0 Ready to start TLS\r\n");
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut socket, &mut rest);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(15),
        "cut after {waited:?}"
    );
    relay.wait_log(&["no TLS session", "timed out"], Duration::from_secs(20));

    let (status, metrics) = relay.admin_get("/metrics");
    assert_eq!(status, 200);
    let failures: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("relay_tls_handshake_failures_total{") && l.contains("smtp"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(failures, 2.0, "{metrics}");

    // Still serving plaintext and TLS.
    let (mut socket, _) = connect(relay.addr);
    send(&mut socket, "STARTTLS\r\n");
    read_reply(&mut socket);
    let (mut tls, _) = client_handshake(socket, cert.client_config()).expect("handshake");
    send(&mut tls, "QUIT\r\n");
    assert!(read_reply(&mut tls).starts_with("221 "));
    relay.stop();
}

/// Config errors name the key or the file, and the relay does not start.
#[test]
fn tls_misconfiguration_is_a_clear_start_up_error() {
    let mut settings = Settings::new(Engine::Epoll);
    settings.smtp_toml = "tls_listen = [\"127.0.0.1:0\"]\n".into();
    let failure = Relay::try_start_in(common::new_workdir(), settings)
        .err()
        .expect("implicit TLS without a certificate must not start");
    let text = failure.lines.join("\n");
    assert!(text.contains("smtp.tls_listen"), "{text}");

    let dir = tempfile::tempdir().expect("dir");
    let mut settings = Settings::new(Engine::Epoll);
    settings.extra_toml = format!(
        "[tls]\ncert = {:?}\nkey = {:?}\n",
        dir.path().join("missing.pem").display().to_string(),
        dir.path().join("missing.key").display().to_string()
    );
    let failure = Relay::try_start_in(common::new_workdir(), settings)
        .err()
        .expect("a missing certificate file must not start");
    let text = failure.lines.join("\n");
    assert!(text.contains("missing.pem"), "{text}");
}

/// POP3 from beyond loopback (named by a PROXY header): USER/PASS in clear are refused with
/// `[AUTH]` until STLS, then accepted (Dovecot's `disable_plaintext_auth`).
#[test]
fn pop3_passwords_wait_for_tls_beyond_loopback() {
    let dir = tempfile::tempdir().expect("cert dir");
    let cert = TestCert::generate(dir.path(), "relay");
    let mut settings = Settings::new(Engine::Uring);
    settings.extra_toml = cert.toml();
    settings.pop3_proxy_protocol = Some(true);
    let relay = Relay::start(settings);

    let mut socket = std::net::TcpStream::connect(relay.pop3_addr).expect("connect");
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    send(&mut socket, "PROXY TCP4 192.0.2.7 127.0.0.1 5555 110\r\n");
    assert!(read_reply(&mut socket).starts_with("+OK"));
    send(&mut socket, "CAPA\r\n");
    let mut capa = String::new();
    while !capa.ends_with("\r\n.\r\n") {
        capa.push_str(&read_reply(&mut socket));
    }
    assert!(capa.contains("\r\nSTLS\r\n"), "{capa}");
    assert!(!capa.contains("\r\nUSER\r\n"), "{capa}");
    send(&mut socket, "USER one\r\n");
    assert_eq!(
        read_reply(&mut socket),
        "-ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections\r\n"
    );
    send(&mut socket, "STLS\r\n");
    assert_eq!(read_reply(&mut socket), "+OK Begin TLS negotiation\r\n");
    let (mut tls, _) = client_handshake(socket, cert.client_config()).expect("handshake");
    send(&mut tls, "USER one\r\n");
    assert!(read_reply(&mut tls).starts_with("+OK"));
    send(&mut tls, &format!("PASS {TEST_PASSWORD}\r\n"));
    assert!(read_reply(&mut tls).starts_with("+OK maildrop"));
    send(&mut tls, "QUIT\r\n");
    assert!(read_reply(&mut tls).starts_with("+OK"));
    relay.wait_log(
        &["login", "client=192.0.2.7", "user=one"],
        Duration::from_secs(20),
    );
    relay.stop();
}

/// Bulk data both ways through TLS: a 3 MiB message in over STARTTLS (the ciphertext read
/// grows past one record), out again over STLS (RETR writes more than rustls buffers at
/// once), byte for byte.
fn large_message_through_tls(engine: Engine) {
    let (relay, cert, _dir) = start(engine);
    const SCRIPT: &str = r#"
import hashlib, poplib, smtplib, ssl, sys
smtp_port, pop_port, cafile, password = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
context = ssl.create_default_context(cafile=cafile)
lines = ["line %07d %s" % (i, "x" * 60) for i in range(3 * 1024 * 1024 // 73)]
body = "Subject: big\r\n\r\n" + "\r\n".join(lines) + "\r\n"
s = smtplib.SMTP("127.0.0.1", smtp_port, timeout=60)
s.starttls(context=context)
s.sendmail("x@remote.test", ["bob@example.test"], body)
s.quit()
p = poplib.POP3("127.0.0.1", pop_port, timeout=60)
p.stls(context=context)
p.user("bob")
p.pass_(password)
got = p.retr(1)[1]
p.quit()
text = b"\r\n".join(got).decode()
at = text.index("Subject: big")
sent = body.rstrip("\r\n")
print(len(sent), hashlib.sha256(sent.encode()).hexdigest() == hashlib.sha256(text[at:].encode()).hexdigest())
"#;
    let out = python(
        SCRIPT,
        &[
            relay.addr.port().to_string(),
            relay.pop3_addr.port().to_string(),
            cert.cert_path.display().to_string(),
            TEST_PASSWORD.to_string(),
        ],
    );
    let (size, same) = out.split_once(' ').expect("two fields");
    assert!(size.parse::<usize>().expect("size") > 3_000_000, "{out}");
    assert_eq!(same, "True", "the message came back changed: {out}");
    relay.stop();
}

engine_tests! {
    large_message_through_tls: large_message_through_tls_uring, large_message_through_tls_epoll;
}

/// `relay check` loads the certificate and key as `serve` would: a key that does not match
/// its certificate is an error naming both files, a good pair passes.
#[test]
fn relay_check_loads_the_certificate() {
    let dir = tempfile::tempdir().expect("dir");
    let good = TestCert::generate(dir.path(), "good");
    let other = TestCert::generate(dir.path(), "other");
    let config = dir.path().join("relay.toml");
    let check = |toml: String| {
        std::fs::write(&config, toml).expect("write config");
        let mut command = Command::new(common::relay_bin());
        command.arg("check").arg("--config").arg(&config);
        run_with_timeout(&mut command, COMMAND_TIMEOUT)
    };
    let ok = check(good.toml());
    assert!(ok.status.success(), "{}", describe(&ok));
    let mismatched = format!(
        "[tls]\ncert = {:?}\nkey = {:?}\n",
        good.cert_path.display().to_string(),
        other.key_path.display().to_string()
    );
    let bad = check(mismatched);
    assert!(
        !bad.status.success(),
        "a mismatched key must fail the check"
    );
    let said = String::from_utf8_lossy(&bad.stderr);
    assert!(
        said.contains("good.pem") && said.contains("other.key"),
        "{said}"
    );
}

/// Implicit TLS behind a PROXY-protocol balancer: the header and the ClientHello arrive in
/// one segment; the bytes after the header are the start of the handshake, not lost.
#[test]
fn implicit_tls_after_a_proxy_header_in_the_same_segment() {
    use std::io::Write;
    let dir = tempfile::tempdir().expect("cert dir");
    let cert = TestCert::generate(dir.path(), "relay");
    let mut settings = Settings::new(Engine::Uring);
    settings.extra_toml = cert.toml();
    settings.proxy_protocol = Some(true);
    settings.smtp_toml = "tls_listen = [\"127.0.0.1:0\"]\n".into();
    // The connection's debug line names the client the header gave.
    settings.log_level = "debug";
    let relay = Relay::start(settings);
    let smtps = relay.listening("smtps").expect("smtps listener");

    let name = rustls::pki_types::ServerName::try_from(common::tls::TLS_NAME).expect("name");
    let mut client = rustls::ClientConnection::new(cert.client_config(), name).expect("client");
    let mut first = b"PROXY TCP4 192.0.2.44 127.0.0.1 4444 465\r\n".to_vec();
    client.write_tls(&mut first).expect("client hello");
    let mut socket = std::net::TcpStream::connect(smtps).expect("connect");
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    socket.write_all(&first).expect("send header and hello");
    let mut tls = rustls::StreamOwned::new(client, socket);
    let greeting = read_reply(&mut tls);
    assert!(greeting.starts_with("220 relay.test"), "{greeting}");
    send(&mut tls, "EHLO c.test\r\n");
    let ehlo = read_reply(&mut tls);
    assert!(ehlo.contains("250-AUTH PLAIN LOGIN"), "{ehlo}");
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    send(&mut tls, "QUIT\r\n");
    assert!(read_reply(&mut tls).starts_with("221 "));
    relay.wait_log(
        &["connected", "client=192.0.2.44", "implicit_tls=true"],
        Duration::from_secs(20),
    );
    relay.stop();
}

/// The `relay_tls_resumed_total` samples of `protocol`, summed.
fn resumed_total(relay: &Relay, protocol: &str) -> f64 {
    let (status, metrics) = relay.admin_get("/metrics");
    assert_eq!(status, 200);
    let label = format!("protocol=\"{protocol}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with("relay_tls_resumed_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Session resumption with OpenSSL (Python's ssl) as the client: three connections in a
/// row, each offering the session the one before left, through SMTP STARTTLS with TLS 1.3
/// and TLS 1.2, and on the implicit-TLS POP3 listener; the first handshake is a full one,
/// the later ones resume, and the metric counts them. A client that comes back after 300
/// others still resumes (rustls's default session table held 256 sessions, each connection
/// leaving two TLS 1.3 tickets).
fn sessions_resume(engine: Engine) {
    let (relay, _cert, _dir) = start(engine);
    let pop3s = relay.listening("pop3s").expect("pop3s listener");
    let run_after = |port: u16, mode: &str, version: &str, others: usize| -> String {
        let output = run_with_timeout(
            Command::new("python3")
                .arg(common::repo_path("tests/py/tls_resume.py"))
                .arg(port.to_string())
                .args([mode, version])
                .arg(others.to_string()),
            COMMAND_TIMEOUT,
        );
        assert!(output.status.success(), "{}", describe(&output));
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    };
    let run = |port: u16, mode: &str, version: &str| run_after(port, mode, version, 0);
    assert_eq!(
        run(relay.addr.port(), "smtp", "1.3"),
        r#"{"reused": [false, true, true], "version": "TLSv1.3"}"#
    );
    assert_eq!(
        run(relay.addr.port(), "smtp", "1.2"),
        r#"{"reused": [false, true, true], "version": "TLSv1.2"}"#
    );
    assert_eq!(resumed_total(&relay, "smtp"), 4.0);
    assert_eq!(
        run(pop3s.port(), "implicit", "1.3"),
        r#"{"reused": [false, true, true], "version": "TLSv1.3"}"#
    );
    assert_eq!(resumed_total(&relay, "pop3"), 2.0);
    for version in ["1.3", "1.2"] {
        assert_eq!(
            run_after(pop3s.port(), "implicit", version, 300),
            format!(r#"{{"reused": [false, true, true], "version": "TLSv{version}"}}"#),
            "TLS {version}"
        );
    }
    relay.stop();
}

engine_tests! {
    sessions_resume: sessions_resume_uring, sessions_resume_epoll;
}
