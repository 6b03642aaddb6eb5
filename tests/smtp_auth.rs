//! SMTP AUTH (RFC 4954) against the real binary, both engines: independent clients (Python's
//! smtplib, lettre) and the raw byte-exact client. TLS does not exist yet, so these relays
//! set `smtp.allow_plaintext_auth`; one test checks the default (AUTH absent, 538).
//!
//! The relays here have `relay.allowed_networks = []`: loopback may not relay, so a remote
//! recipient is taken only after AUTH.

#[macro_use]
mod common;

use std::process::Command;
use std::time::Duration;

use common::{
    describe, run_with_timeout, Client, Engine, Relay, Settings, COMMAND_TIMEOUT, TEST_PASSWORD,
};

engine_tests! {
    smtplib_login: smtplib_login_uring, smtplib_login_epoll;
    lettre_plain_and_login: lettre_plain_and_login_uring, lettre_plain_and_login_epoll;
    authenticated_client_relays: authenticated_client_relays_uring, authenticated_client_relays_epoll;
    failures_look_alike_and_slow_down: failures_look_alike_and_slow_down_uring, failures_look_alike_and_slow_down_epoll;
    plaintext_auth_off_by_default: plaintext_auth_off_by_default_uring, plaintext_auth_off_by_default_epoll;
}

/// base64("\0alice\0password"), base64("alice"), base64("password").
const PLAIN_ALICE: &str = "AGFsaWNlAHBhc3N3b3Jk";

fn settings(engine: Engine) -> Settings {
    let mut settings = Settings::new(engine);
    settings.allowed_networks = Vec::new();
    settings.smtp_toml = String::from(
        "allow_plaintext_auth = true\nauth_failure_delay = \"50ms\"\nauth_failures_per_user_max = 3\n",
    );
    settings
}

fn smtplib_login(engine: Engine) {
    let relay = Relay::start(settings(engine));
    // login() picks the first mechanism smtplib likes (PLAIN here, with an initial
    // response); auth(LOGIN) forces the two-step exchange.
    const SCRIPT: &str = r#"
import smtplib, sys
port, password = int(sys.argv[1]), sys.argv[2]
results = []
for how in ("login", "plain", "login-mech"):
    s = smtplib.SMTP("127.0.0.1", port, timeout=20)
    s.ehlo("client.test")
    assert s.has_extn("auth"), s.esmtp_features
    s.user, s.password = "alice", password
    if how == "login":
        code, _ = s.login("alice", password, initial_response_ok=True)
    elif how == "plain":
        code, _ = s.auth("PLAIN", s.auth_plain, initial_response_ok=False)
    else:
        code, _ = s.auth("LOGIN", s.auth_login, initial_response_ok=False)
    assert code == 235, (how, code)
    refused = s.sendmail("a@client.test", ["x@remote.test"], "Subject: t\r\n\r\nhi " + how + "\r\n")
    assert refused == {}, refused
    s.quit()
    results.append(how)
try:
    s = smtplib.SMTP("127.0.0.1", port, timeout=20)
    s.login("alice", "wrong")
    print("wrong password accepted")
    sys.exit(1)
except smtplib.SMTPAuthenticationError as e:
    assert e.smtp_code == 535, e
print(" ".join(results))
"#;
    let mut command = Command::new("python3");
    command
        .arg("-c")
        .arg(SCRIPT)
        .arg(relay.addr.port().to_string())
        .arg(TEST_PASSWORD);
    let output = run_with_timeout(&mut command, COMMAND_TIMEOUT);
    assert!(output.status.success(), "smtplib: {}", describe(&output));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "login plain login-mech"
    );
    let accepted = relay.wait_log(&["accepted", "auth=alice"], Duration::from_secs(20));
    assert!(accepted.contains("sender=a@client.test"), "{accepted}");
    relay.stop();
}

fn lettre_plain_and_login(engine: Engine) {
    use lettre::transport::smtp::authentication::{Credentials, Mechanism};
    use lettre::{Message, SmtpTransport, Transport};

    let relay = Relay::start(settings(engine));
    for mechanism in [Mechanism::Plain, Mechanism::Login] {
        let email = Message::builder()
            .from("Sender <sender@example.test>".parse().expect("from"))
            .to("someone@remote.test".parse().expect("to"))
            .subject("auth")
            .body(format!("via {mechanism:?}\r\n"))
            .expect("build message");
        let transport = SmtpTransport::builder_dangerous("127.0.0.1")
            .port(relay.addr.port())
            .credentials(Credentials::new("alice".into(), TEST_PASSWORD.into()))
            .authentication(vec![mechanism])
            .timeout(Some(Duration::from_secs(20)))
            .build();
        let response = transport
            .send(&email)
            .unwrap_or_else(|e| panic!("lettre {mechanism:?}: {e}"));
        let first = response.first_line().unwrap_or_default().to_string();
        let id = first.rsplit(' ').next().unwrap_or_default().to_string();
        let line = relay.wait_accepted(&id);
        assert!(line.contains("auth=alice"), "{line}");
        // The stored message names the identity in its Received header.
        let stored = String::from_utf8_lossy(&relay.spool_cat(&id)).into_owned();
        assert!(
            stored.contains("(Authenticated sender: alice)") && stored.contains("with ESMTPA"),
            "{stored}"
        );
    }
    relay.stop();
}

fn authenticated_client_relays(engine: Engine) {
    let relay = Relay::start(settings(engine));
    let mut client = Client::greeted(relay.addr);
    let ehlo = client.ehlo();
    assert!(
        ehlo.lines.iter().any(|l| l == "AUTH PLAIN LOGIN"),
        "{ehlo:?}"
    );
    client.expect("MAIL FROM:<a@client.test>", 250);
    let refused = client.expect("RCPT TO:<x@remote.test>", 554);
    assert!(refused.is(554, "5.7.1"), "{refused}");
    client.expect("RSET", 250);
    // LOGIN, two steps.
    assert_eq!(client.expect("AUTH LOGIN", 334).text(), "VXNlcm5hbWU6");
    assert_eq!(client.expect("YWxpY2U=", 334).text(), "UGFzc3dvcmQ6");
    let ok = client.expect("cGFzc3dvcmQ=", 235);
    assert!(ok.is(235, "2.7.0"), "{ok}");
    client.expect("MAIL FROM:<a@client.test>", 250);
    client.expect("RCPT TO:<x@remote.test>", 250);
    client.expect("DATA", 354);
    let queued = client.expect("Subject: relayed\r\n\r\nhi\r\n.", 250);
    let id = queued.queue_id().expect("queue id");
    assert!(relay.wait_accepted(&id).contains("auth=alice"));
    client.expect(&format!("AUTH PLAIN {PLAIN_ALICE}"), 503);
    client.quit();
    relay.stop();
}

fn failures_look_alike_and_slow_down(engine: Engine) {
    let relay = Relay::start(settings(engine));
    let mut client = Client::greeted(relay.addr);
    client.ehlo();
    // "\0alice\0wrong" and "\0nobody\0wrong": the same reply, word for word.
    let wrong = client.expect("AUTH PLAIN AGFsaWNlAHdyb25n", 535);
    let unknown = client.expect("AUTH PLAIN AG5vYm9keQB3cm9uZw==", 535);
    assert!(wrong.is(535, "5.7.8"), "{wrong}");
    assert_eq!(wrong, unknown);
    // auth_failures_per_user_max = 3: past its third failure a name is slowed down (a
    // growing delay), not locked, whether or not it exists; the right password still works
    // after the delay.
    client.expect("AUTH PLAIN AG5vYm9keQB3cm9uZw==", 535);
    client.expect("AUTH PLAIN AG5vYm9keQB3cm9uZw==", 535);
    let started = std::time::Instant::now();
    let slowed_unknown = client.expect("AUTH PLAIN AG5vYm9keQB3cm9uZw==", 535);
    assert_eq!(slowed_unknown, wrong);
    assert!(started.elapsed() >= Duration::from_millis(900));
    client.expect("AUTH PLAIN AGFsaWNlAHdyb25n", 535);
    client.expect("AUTH PLAIN AGFsaWNlAHdyb25n", 535);
    let started = std::time::Instant::now();
    client.expect(&format!("AUTH PLAIN {PLAIN_ALICE}"), 235);
    assert!(started.elapsed() >= Duration::from_millis(900));
    client.quit();
    // Another user from the same address is not slowed. base64("\0bob\0password")
    let mut client = Client::greeted(relay.addr);
    client.ehlo();
    client.expect("AUTH PLAIN AGJvYgBwYXNzd29yZA==", 235);
    client.quit();
    assert!(relay.log_contains("auth failed"));
    assert!(!relay.log_lines().iter().any(|l| l.contains(TEST_PASSWORD)));
    relay.stop();
}

fn plaintext_auth_off_by_default(engine: Engine) {
    let relay = Relay::start(Settings::new(engine));
    let mut client = Client::greeted(relay.addr);
    let ehlo = client.ehlo();
    assert!(
        !ehlo.ehlo_keywords().contains(&"AUTH".to_string()),
        "{ehlo:?}"
    );
    let reply = client.expect(&format!("AUTH PLAIN {PLAIN_ALICE}"), 538);
    assert!(reply.is(538, "5.7.11"), "{reply}");
    client.expect("AUTH LOGIN", 538);
    client.quit();
    relay.stop();
}
