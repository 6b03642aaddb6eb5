//! Integration tests of local mailboxes and the POP3 server: the real `relay serve`
//! on port 0, mail delivered over SMTP (raw client, lettre), read back with independent POP3
//! clients (Python's poplib, curl) and a raw byte-exact socket, and compared with what
//! `relay spool cat` says is stored.
//!
//! Every behaviour runs once per I/O engine (`_uring`, `_epoll`).

#[macro_use]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use common::json::Json;
use common::pop3::{delete_uids, uid_set};
use common::smtp::message;
use common::{
    describe, find, has_all, repo_path, run_with_timeout, segment_files, split_received, Client,
    Engine, Relay, Settings, COMMAND_TIMEOUT, QUOTA_USER, TEST_PASSWORD,
};

engine_tests! {
    pop3_listener_greeting_capa: pop3_listener_greeting_capa_uring, pop3_listener_greeting_capa_epoll;
    poplib_fetch_matches_spool: poplib_fetch_matches_spool_uring, poplib_fetch_matches_spool_epoll;
    curl_list_and_retrieve: curl_list_and_retrieve_uring, curl_list_and_retrieve_epoll;
    uidl_stable_and_dele_quit_across_restart: uidl_stable_and_dele_quit_across_restart_uring, uidl_stable_and_dele_quit_across_restart_epoll;
    dele_then_drop_deletes_nothing: dele_then_drop_deletes_nothing_uring, dele_then_drop_deletes_nothing_epoll;
    rset_undeletes: rset_undeletes_uring, rset_undeletes_epoll;
    in_use_and_lock_release: in_use_and_lock_release_uring, in_use_and_lock_release_epoll;
    wrong_password_refused: wrong_password_refused_uring, wrong_password_refused_epoll;
    per_ip_auth_failure_limit: per_ip_auth_failure_limit_uring, per_ip_auth_failure_limit_epoll;
    auth_plain: auth_plain_uring, auth_plain_epoll;
    overlong_command_line: overlong_command_line_uring, overlong_command_line_epoll;
    mailbox_isolation_single_copy: mailbox_isolation_single_copy_uring, mailbox_isolation_single_copy_epoll;
    alias_expansion: alias_expansion_uring, alias_expansion_epoll;
    sigterm_closes_sessions_without_update: sigterm_closes_sessions_without_update_uring, sigterm_closes_sessions_without_update_epoll;
    smtp_unknown_user_and_quota: smtp_unknown_user_and_quota_uring, smtp_unknown_user_and_quota_epoll;
    smtp_vrfy_expn: smtp_vrfy_expn_uring, smtp_vrfy_expn_epoll;
    content_policy_end_to_end: content_policy_end_to_end_uring, content_policy_end_to_end_epoll;
    apop_with_poplib: apop_with_poplib_uring, apop_with_poplib_epoll;
    binarymime_body_without_final_crlf: binarymime_body_without_final_crlf_uring, binarymime_body_without_final_crlf_epoll;
    large_messages_pipelined_in_parallel: large_messages_pipelined_in_parallel_uring, large_messages_pipelined_in_parallel_epoll;
    trace_log_has_no_secrets: trace_log_has_no_secrets_uring, trace_log_has_no_secrets_epoll;
    delivery_during_session: delivery_during_session_uring, delivery_during_session_epoll;
    pop3_connection_limit: pop3_connection_limit_uring, pop3_connection_limit_epoll;
}

/// A password no log line may ever contain (the right one is the common word "password").
const WRONG_PASSWORD: &str = "Wr0ng-Pa55w0rd-7f3c";

// ---------------------------------------------------------------------------------------------
// Helpers

fn deliver(relay: &Relay, rcpts: &[&str], content: &[u8]) -> String {
    relay.deliver(rcpts, content)
}

/// Runs tests/py/poplib_client.py and parses its JSON.
fn poplib(relay: &Relay, action: &str, user: &str, password: &str, extra: &[&str]) -> Json {
    let mut command = Command::new("python3");
    command
        .arg(repo_path("tests/py/poplib_client.py"))
        .arg(action)
        .arg("--port")
        .arg(relay.pop3_addr.port().to_string())
        .arg("--user")
        .arg(user)
        .arg("--password")
        .arg(password)
        .args(extra);
    let output = run_with_timeout(&mut command, COMMAND_TIMEOUT);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "poplib {action}: {}",
        describe(&output)
    );
    Json::parse(stdout.trim())
        .unwrap_or_else(|e| panic!("poplib output is not JSON ({e}): {stdout}"))
}

fn b64(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap_or_else(|e| panic!("bad base64 from the script ({e}): {text:?}"))
}

fn b64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn pair(json: &Json) -> (i64, i64) {
    (json.at(0).int(), json.at(1).int())
}

/// What TOP msg k must send for `stored`: the header section, the blank line, k body lines.
fn expected_top(stored: &[u8], k: usize) -> Vec<u8> {
    let header_end = find(stored, b"\r\n\r\n").expect("stored message has a body separator") + 4;
    let mut end = header_end;
    for _ in 0..k {
        match find(&stored[end..], b"\r\n") {
            Some(at) => end += at + 2,
            None => break,
        }
    }
    stored[..end].to_vec()
}

fn mailbox(relay: &Relay, user: &str) -> BTreeMap<String, Vec<u8>> {
    common::pop3::fetch_mailbox(relay, user)
}

/// No log line may hold a password or the AUTH PLAIN blob that carries one.
fn assert_no_secrets_logged(relay: &Relay, extra: &[&str]) {
    let blob = b64_encode(format!("\0alice\0{TEST_PASSWORD}").as_bytes());
    for line in relay.log_lines() {
        for secret in [WRONG_PASSWORD, blob.as_str()].iter().chain(extra) {
            assert!(
                !line.contains(secret),
                "the log holds a secret ({secret:?}): {line}"
            );
        }
        // The right password is the word "password": no line may carry it as a value.
        let lower = line.to_ascii_lowercase();
        assert!(
            !lower.contains("pass password")
                && !lower.contains("=password")
                && !lower.contains("\"password\""),
            "the log holds the password: {line}"
        );
    }
}

fn body_lines(marker: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("{marker} body line {i:02} {}", "x".repeat(i % 7 * 5)))
        .collect()
}

fn msg(marker: &str, lines: &[&str]) -> Vec<u8> {
    message(marker, lines)
}

// ---------------------------------------------------------------------------------------------
// 1. The listener, the greeting and CAPA

fn pop3_listener_greeting_capa(engine: Engine) {
    let relay = Relay::start(Settings::new(engine));
    let line = relay.wait_log(&["listening", "protocol=\"pop3\""], Duration::from_secs(1));
    assert!(
        line.contains(&format!("addr={}", relay.pop3_addr)) && relay.pop3_addr.port() != 0,
        "{line}"
    );
    assert!(relay.pop3_addr.ip().is_loopback(), "{line}");
    assert_ne!(relay.pop3_addr, relay.addr);

    let mut pop = relay.pop3();
    // No user has an APOP secret: no timestamp in the greeting (RFC 1939 §7).
    assert_eq!(pop.greeting, "+OK relay.test POP3 ready");
    let (_, capa) = pop.multi_ok("CAPA");
    let capa = String::from_utf8(capa).unwrap();
    let caps: Vec<&str> = capa.split("\r\n").filter(|l| !l.is_empty()).collect();
    for want in [
        "TOP",
        "UIDL",
        "USER",
        "SASL PLAIN",
        "RESP-CODES",
        "PIPELINING",
        "AUTH-RESP-CODE",
    ] {
        assert!(caps.contains(&want), "CAPA lacks {want}: {caps:?}");
    }
    assert!(
        caps.iter().any(|c| c.starts_with("IMPLEMENTATION")),
        "{caps:?}"
    );
    assert!(!caps.iter().any(|c| c.starts_with("STLS")), "{caps:?}");
    // TRANSACTION commands before login are refused; the session goes on.
    let reply = pop.cmd("STAT").unwrap();
    assert!(reply.starts_with("-ERR"), "STAT before login: {reply}");
    // Pipelined (RFC 2449 PIPELINING): three commands in one write, three responses in order.
    pop.send(b"NOOP\r\nUSER alice\r\nPASS password\r\n")
        .unwrap();
    let noop = pop.line().unwrap();
    assert!(noop.starts_with("-ERR"), "NOOP in AUTHORIZATION: {noop}");
    assert!(pop.line().unwrap().starts_with("+OK"));
    let pass = pop.line().unwrap();
    assert_eq!(pass, "+OK maildrop has 0 messages (0 octets)");
    assert_eq!(pop.stat(), (0, 0));
    let quit = pop.quit().unwrap();
    assert!(quit.starts_with("+OK"), "{quit}");

    // QUIT in AUTHORIZATION ends the session too.
    let mut pop = relay.pop3();
    let quit = pop.cmd("QUIT").unwrap();
    assert!(quit.starts_with("+OK"), "{quit}");
    pop.expect_eof(Duration::from_secs(10)).unwrap();
    relay.stop();
}

// ---------------------------------------------------------------------------------------------
// 2. poplib: STAT, LIST, UIDL, RETR, TOP against the spool

fn poplib_fetch_matches_spool(engine: Engine) {
    use lettre::message::header::ContentType;
    use lettre::{Message, SmtpTransport, Transport};

    let relay = Relay::start(Settings::new(engine));
    let mut sent: BTreeMap<String, Vec<u8>> = BTreeMap::new();

    // A message whose lines start with dots (stuffed by SMTP, unstuffed, stuffed by POP3).
    let dots = msg(
        "pop-dots",
        &[
            ".leading dot",
            "..two leading dots",
            ".",
            "line after a lone dot",
            "last line",
        ],
    );
    sent.insert(deliver(&relay, &["alice@example.test"], &dots), dots);

    // Through lettre, another independent client.
    let email = Message::builder()
        .from("Lettre Sender <sender@example.test>".parse().unwrap())
        .to("alice@example.test".parse().unwrap())
        .subject("lettre to pop3")
        .message_id(Some("<lettre-pop3@client.test>".into()))
        .header(ContentType::TEXT_PLAIN)
        .body(String::from(
            "marker lettre-pop3\r\nsecond line\r\n.dotted line\r\nlast",
        ))
        .expect("build message");
    let transport = SmtpTransport::builder_dangerous("127.0.0.1")
        .port(relay.addr.port())
        .timeout(Some(Duration::from_secs(20)))
        .build();
    let response = transport.send(&email).expect("lettre send");
    let first = response.first_line().unwrap_or_default().to_string();
    let lettre_id = first
        .strip_prefix("2.0.0 Ok: queued as ")
        .unwrap_or_else(|| panic!("lettre end of data reply: {first:?}"))
        .trim()
        .to_string();
    relay.wait_accepted(&lettre_id);
    let mut lettre_sent = email.formatted();
    lettre_sent.extend_from_slice(b"\r\n");
    sent.insert(lettre_id, lettre_sent);

    // A longer one, and one with an empty body.
    let lines = body_lines("pop-long", 40);
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let long = msg("pop-long", &refs);
    sent.insert(deliver(&relay, &["alice@localhost"], &long), long);
    let empty = b"Subject: empty body\r\nMessage-ID: <pop-empty@client.test>\r\n\r\n".to_vec();
    sent.insert(deliver(&relay, &["alice@example.test"], &empty), empty);
    // Someone else's mail: not in alice's maildrop.
    deliver(&relay, &["one@example.test"], &msg("pop-not-alice", &[]));

    let doc = poplib(
        &relay,
        "fetch",
        "alice",
        TEST_PASSWORD,
        &["--top-lines", "2"],
    );
    assert_eq!(doc.get("welcome").str(), "+OK relay.test POP3 ready");
    let capa = doc.get("capa").object();
    for want in ["TOP", "UIDL", "USER", "SASL", "RESP-CODES", "PIPELINING"] {
        assert!(
            capa.contains_key(want),
            "poplib CAPA lacks {want}: {capa:?}"
        );
    }
    assert_eq!(doc.get("capa").get("SASL").at(0).str(), "PLAIN");
    assert!(
        doc.get("pass").str().starts_with("+OK"),
        "{:?}",
        doc.get("pass")
    );

    let uidl: Vec<(i64, String)> = doc
        .get("uidl")
        .array()
        .iter()
        .map(|p| (p.at(0).int(), p.at(1).str().to_string()))
        .collect();
    let uids: BTreeSet<String> = uidl.iter().map(|(_, u)| u.clone()).collect();
    let expected: BTreeSet<String> = sent.keys().cloned().collect();
    assert_eq!(uids, expected, "UIDL values must be the queue ids");
    let list: Vec<(i64, i64)> = doc.get("list").array().iter().map(pair).collect();
    assert_eq!(list.len(), sent.len());

    let mut total = 0i64;
    for m in doc.get("messages").array() {
        let n = m.get("n").int();
        let uid = &uidl
            .iter()
            .find(|(k, _)| *k == n)
            .expect("numbered in UIDL")
            .1;
        let bytes = b64(m.get("bytes").str());
        let stored = relay.spool_cat(uid);
        assert!(
            bytes == stored,
            "RETR {n} ({uid}) differs from `relay spool cat`\n--- RETR ---\n{:?}\n--- stored ---\n{:?}",
            String::from_utf8_lossy(&bytes),
            String::from_utf8_lossy(&stored)
        );
        let (received, content) = split_received(&bytes);
        assert!(
            received.starts_with(b"Received: from ")
                && received.windows(10).any(|w| w == b"relay.test"),
            "{:?}",
            String::from_utf8_lossy(received)
        );
        assert!(
            content == &sent[uid][..],
            "RETR {n} ({uid}) is not what was sent plus the Received header\n--- sent ---\n{:?}\n--- retrieved ---\n{:?}",
            String::from_utf8_lossy(&sent[uid]),
            String::from_utf8_lossy(content)
        );
        let size = list.iter().find(|(k, _)| *k == n).expect("listed").1;
        assert_eq!(
            size,
            bytes.len() as i64,
            "LIST {n} must count exactly what RETR sends"
        );
        assert_eq!(
            m.get("retr").str(),
            format!("+OK {size} octets"),
            "RETR status line"
        );
        total += size;
        assert_eq!(
            b64(m.get("top0").str()),
            expected_top(&bytes, 0),
            "TOP {n} 0 ({uid})"
        );
        assert_eq!(
            b64(m.get("topk").str()),
            expected_top(&bytes, 2),
            "TOP {n} 2 ({uid})"
        );
    }
    assert_eq!(doc.get("messages").array().len(), sent.len());
    assert_eq!(pair(doc.get("stat")), (sent.len() as i64, total), "STAT");
    assert!(doc.get("quit").str().starts_with("+OK"));

    // Mailbox contents never reach the log.
    for marker in [
        "pop-dots body",
        "line after a lone dot",
        "pop-long body line",
    ] {
        assert!(
            !relay.log_contains(marker),
            "the log holds message content {marker:?}"
        );
    }
    assert_no_secrets_logged(&relay, &[]);
    relay.stop();
}

// ---------------------------------------------------------------------------------------------
// 3. curl pop3://

/// Runs curl on a pop3:// URL. Exit 67 (login denied) is retried until the lock deadline:
/// the maildrop lock of the previous session may not be released yet ([IN-USE]).
fn curl(url: &str) -> Vec<u8> {
    let deadline = Instant::now() + common::LOCK_RELEASE_TIMEOUT;
    loop {
        let mut command = Command::new("curl");
        command
            .arg("--silent")
            .arg("--show-error")
            .arg("--max-time")
            .arg("30")
            .arg("--url")
            .arg(url);
        let output = run_with_timeout(&mut command, COMMAND_TIMEOUT);
        if output.status.code() == Some(67) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        assert!(output.status.success(), "curl {url}: {}", describe(&output));
        return output.stdout;
    }
}

fn curl_list_and_retrieve(engine: Engine) {
    let relay = Relay::start(Settings::new(engine));
    let first = msg("curl-pop-1", &[".dotted for curl", "plain"]);
    let second = msg("curl-pop-2", &["second message", "..two dots"]);
    let id1 = deliver(&relay, &["alice@example.test"], &first);
    let id2 = deliver(&relay, &["alice@example.test"], &second);

    let mut pop = relay.pop3_login("alice");
    let uidl = pop.uidl();
    pop.quit().unwrap();
    let number = |id: &str| {
        uidl.iter()
            .find(|(_, u)| u == id)
            .unwrap_or_else(|| panic!("{id} not in UIDL {uidl:?}"))
            .0
    };

    let base = format!(
        "pop3://alice:{TEST_PASSWORD}@127.0.0.1:{}/",
        relay.pop3_addr.port()
    );
    let listing = String::from_utf8(curl(&base)).expect("LIST is ASCII");
    let listed: Vec<(usize, u64)> = listing
        .split("\r\n")
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (n, size) = l
                .split_once(' ')
                .unwrap_or_else(|| panic!("curl LIST line {l:?}"));
            (n.parse().unwrap(), size.trim().parse().unwrap())
        })
        .collect();
    assert_eq!(listed.len(), 2, "curl LIST: {listing:?}");

    for (id, content) in [(&id1, &first), (&id2, &second)] {
        let n = number(id);
        let bytes = curl(&format!("{base}{n}"));
        let stored = relay.spool_cat(id);
        assert!(
            bytes == stored,
            "curl RETR {n} ({id}) differs from the spool\n--- curl ---\n{:?}\n--- stored ---\n{:?}",
            String::from_utf8_lossy(&bytes),
            String::from_utf8_lossy(&stored)
        );
        assert_eq!(split_received(&bytes).1, &content[..]);
        let size = listed.iter().find(|(k, _)| *k == n).expect("listed").1;
        assert_eq!(size, bytes.len() as u64, "LIST {n} octets");
    }
    // curl ends with QUIT and deleted nothing.
    assert_eq!(uid_set(&relay, "alice").len(), 2);
    relay.stop();
}

// ---------------------------------------------------------------------------------------------
// 4. UIDL stability; DELE + QUIT, also across a restart

fn uidl_stable_and_dele_quit_across_restart(engine: Engine) {
    let relay = Relay::start(Settings::new(engine));
    let ids: Vec<String> = (0..4)
        .map(|i| {
            deliver(
                &relay,
                &["alice@example.test"],
                &msg(&format!("uidl-{i}"), &["body"]),
            )
        })
        .collect();
    let before = mailbox(&relay, "alice");
    let all: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(
        before.keys().cloned().collect::<BTreeSet<_>>(),
        all,
        "UIDL = queue ids"
    );
    // The same ids in a second session; the one-message forms of LIST and UIDL agree.
    let mut pop = relay.pop3_login("alice");
    for (n, uid) in pop.uidl() {
        assert!(all.contains(&uid));
        assert_eq!(pop.ok(&format!("UIDL {n}")), format!("+OK {n} {uid}"));
        let size = before[&uid].len();
        assert_eq!(pop.ok(&format!("LIST {n}")), format!("+OK {n} {size}"));
    }
    pop.quit().unwrap();

    // Restart (SIGTERM): the same unique ids, the same bytes.
    relay.stop();
    let relay = relay.restart(Settings::new(engine));
    relay.wait_log(
        &["maildrops rebuilt", "deliveries=4"],
        Duration::from_secs(1),
    );
    assert_eq!(
        mailbox(&relay, "alice"),
        before,
        "UIDL and bytes after a restart"
    );

    // DELE two of them, QUIT: gone in the next session.
    let gone: BTreeSet<String> = [ids[1].clone(), ids[3].clone()].into();
    delete_uids(&relay, "alice", &gone);
    relay.wait_log(
        &["update", "user=alice", "deleted=2"],
        Duration::from_secs(10),
    );
    let left: BTreeSet<String> = [ids[0].clone(), ids[2].clone()].into();
    let now = mailbox(&relay, "alice");
    assert_eq!(now.keys().cloned().collect::<BTreeSet<_>>(), left);
    for (uid, bytes) in &now {
        assert_eq!(bytes, &before[uid], "{uid} changed");
    }

    // And after another restart: still gone, the others unchanged.
    relay.stop();
    let relay = relay.restart(Settings::new(engine));
    // (Garbage, every copy deleted, is not replayed: only alice's two are rebuilt.)
    relay.wait_log(
        &["maildrops rebuilt", "deliveries=2"],
        Duration::from_secs(1),
    );
    assert_eq!(mailbox(&relay, "alice"), now);
    relay.stop();
}

// ---------------------------------------------------------------------------------------------
// 5. DELE then a dropped connection: nothing deleted

fn dele_then_drop_deletes_nothing(engine: Engine) {
    let relay = Relay::start(Settings::new(engine));
    let ids: BTreeSet<String> = (0..3)
        .map(|i| {
            deliver(
                &relay,
                &["alice@example.test"],
                &msg(&format!("drop-{i}"), &["x"]),
            )
        })
        .collect();

    // poplib marks everything, then its socket closes without QUIT.
    let doc = poplib(
        &relay,
        "dele",
        "alice",
        TEST_PASSWORD,
        &["--msgs", "1,2,3", "--drop"],
    );
    for reply in doc.get("dele").array() {
        assert!(reply.str().starts_with("+OK"), "{reply:?}");
    }
    assert_eq!(pair(doc.get("stat")), (0, 0), "deleted messages leave STAT");
    assert_eq!(doc.get("quit"), &Json::Null);
    // The lock comes back (retried: the drop is processed asynchronously) with every message.
    assert_eq!(uid_set(&relay, "alice"), ids);

    // The raw client: DELE, then the connection drops.
    let mut pop = relay.pop3_login("alice");
    pop.dele(2);
    pop.drop_connection();
    assert_eq!(uid_set(&relay, "alice"), ids);
    assert!(
        !relay
            .log_lines()
            .iter()
            .any(|l| has_all(l, &["update", "user=alice", "deleted="])),
        "no session may have entered UPDATE:\n{}",
        relay.log().render()
    );

    relay.stop();
    let relay = relay.restart(Settings::new(engine));
    relay.wait_log(
        &["maildrops rebuilt", "deletions=0"],
        Duration::from_secs(1),
    );
    assert_eq!(uid_set(&relay, "alice"), ids);
    relay.stop();
}

// ---------------------------------------------------------------------------------------------
// 6. RSET

fn rset_undeletes(engine: Engine) {
    let relay = Relay::start(Settings::new(engine));
    let ids: BTreeSet<String> = (0..2)
        .map(|i| {
            deliver(
                &relay,
                &["alice@example.test"],
                &msg(&format!("rset-{i}"), &["x"]),
            )
        })
        .collect();
    let doc = poplib(&relay, "rset", "alice", TEST_PASSWORD, &["--msgs", "1,2"]);
    let (count, size) = pair(doc.get("stat_before"));
    assert_eq!(count, 2);
    assert!(size > 0);
    assert_eq!(pair(doc.get("stat_deleted")), (0, 0));
    assert!(
        doc.get("retr_deleted").str().starts_with("-ERR"),
        "RETR of a deleted message: {:?}",
        doc.get("retr_deleted")
    );
    assert!(doc.get("rset").str().starts_with("+OK"));
    assert_eq!(pair(doc.get("stat_after")), (count, size), "RSET undeletes");
    let quit = doc.get("quit").str();
    assert!(
        quit.starts_with("+OK") && !quit.contains("deleted"),
        "QUIT after RSET: {quit}"
    );
    assert_eq!(uid_set(&relay, "alice"), ids);

    // Raw: DELE 1, RSET, DELE 2, QUIT deletes only message 2.
    let mut pop = relay.pop3_login("alice");
    let uidl = pop.uidl();
    pop.dele(1);
    let again = pop.cmd("DELE 1").unwrap();
    assert!(
        again.starts_with("-ERR"),
        "DELE of a deleted message: {again}"
    );
    pop.ok("RSET");
    pop.dele(2);
    let quit = pop.quit().unwrap();
    assert!(quit.contains("(1 messages deleted)"), "{quit}");
    let left: BTreeSet<String> = [uidl[0].1.clone()].into();
    assert_eq!(uid_set(&relay, "alice"), left);
    relay.stop();
}

// ---------------------------------------------------------------------------------------------
// 7. One session per maildrop

fn in_use_and_lock_release(engine: Engine) {
    let relay = Relay::start(Settings::new(engine));
    let id = deliver(&relay, &["alice@example.test"], &msg("in-use", &["x"]));
    deliver(&relay, &["bob@example.test"], &msg("in-use-bob", &["x"]));

    let doc = poplib(&relay, "in-use", "alice", TEST_PASSWORD, &[]);
    assert!(doc.get("first").str().starts_with("+OK"), "{doc:?}");
    assert!(
        doc.get("second").str().starts_with("-ERR [IN-USE]"),
        "a second session must get -ERR [IN-USE]: {doc:?}"
    );
    assert!(
        doc.get("retry").str().starts_with("+OK"),
        "the lock must be released after QUIT: {doc:?}"
    );

    // Raw: A holds alice; B is refused, stays in AUTHORIZATION, and may open bob instead.
    let mut a = relay.pop3_login("alice");
    let mut b = relay.pop3();
    let reply = b.login("alice", TEST_PASSWORD).unwrap();
    assert_eq!(reply, "-ERR [IN-USE] maildrop is locked by another session");
    let reply = b.login("bob", TEST_PASSWORD).unwrap();
    assert!(reply.starts_with("+OK maildrop has 1 messages"), "{reply}");
    assert_eq!(b.stat().0, 1);
    // The login name is case-insensitive, and it names the same maildrop (and its lock).
    let mut d = relay.pop3();
    let reply = d.login("ALICE", TEST_PASSWORD).unwrap();
    assert!(
        reply.starts_with("-ERR [IN-USE]"),
        "ALICE while alice is locked: {reply}"
    );
    d.quit().unwrap();
    // A dies without QUIT: its lock is released (retried with a deadline) and nothing of
    // alice's was deleted.
    a.dele(1);
    a.drop_connection();
    let started = Instant::now();
    let mut c = relay.pop3_login("Alice");
    eprintln!("lock released {:?} after the drop", started.elapsed());
    assert_eq!(c.uids(), vec![id]);
    c.quit().unwrap();
    b.quit().unwrap();
    relay.stop();
}

// ---------------------------------------------------------------------------------------------
// 8. Wrong credentials

fn wrong_password_refused(engine: Engine) {
    let relay = Relay::start(Settings::new(engine));
    deliver(&relay, &["alice@example.test"], &msg("wrong-pw", &["x"]));

    let doc = poplib(&relay, "login", "alice", WRONG_PASSWORD, &[]);
    assert_eq!(doc.get("ok"), &Json::Bool(false));
    let wrong = doc.get("pass").str().to_string();
    assert!(wrong.starts_with("-ERR [AUTH]"), "{wrong}");
    // An unknown user gets the same answer: no user enumeration.
    let doc = poplib(&relay, "login", "nobody", TEST_PASSWORD, &[]);
    assert_eq!(doc.get("pass").str(), wrong, "unknown user");

    // Raw: the answer comes after the failure delay; the third failure closes the session.
    let mut pop = relay.pop3();
    for attempt in 1..=3 {
        pop.ok("USER alice");
        let started = Instant::now();
        let reply = pop.cmd(&format!("PASS {WRONG_PASSWORD}")).unwrap();
        let took = started.elapsed();
        assert!(
            reply.starts_with("-ERR [AUTH]"),
            "attempt {attempt}: {reply}"
        );
        assert!(
            took >= Duration::from_millis(50),
            "attempt {attempt}: -ERR after {took:?}, before auth_failure_delay (50ms)"
        );
    }
    pop.expect_eof(Duration::from_secs(10))
        .expect("the third failure closes the session");

    // 5 failures < the per-IP default (10): the right password still works.
    let doc = poplib(&relay, "login", "alice", TEST_PASSWORD, &[]);
    assert_eq!(doc.get("ok"), &Json::Bool(true), "{doc:?}");
    assert_eq!(pair(doc.get("stat")).0, 1);

    let failed = relay
        .log_lines()
        .into_iter()
        .filter(|l| l.contains("login failed"))
        .count();
    assert_eq!(failed, 5, "one `login failed` line per failure");
    assert!(
        relay.log_contains("user=nobody"),
        "the attempted name is logged"
    );
    assert_no_secrets_logged(&relay, &[]);
    relay.stop();
}

// ---------------------------------------------------------------------------------------------
// 9. Per-IP failure limit

fn per_ip_auth_failure_limit(engine: Engine) {
    const WINDOW: Duration = Duration::from_secs(3);
    let mut settings = Settings::new(engine);
    settings.pop3_auth_failures_per_ip_max = Some(3);
    settings.pop3_auth_failure_window = Some("3s".into());
    let relay = Relay::start(settings);
    deliver(&relay, &["alice@example.test"], &msg("per-ip", &["x"]));

    let started = Instant::now();
    for attempt in 1..=3 {
        let mut pop = relay.pop3();
        let reply = pop.login("alice", WRONG_PASSWORD).unwrap();
        assert!(
            reply.starts_with("-ERR [AUTH]"),
            "attempt {attempt}: {reply}"
        );
        pop.quit().unwrap();
    }
    // Blocked: even the right password is refused, for any user, within the window.
    for user in ["alice", "bob"] {
        let mut pop = relay.pop3();
        let reply = pop.login(user, TEST_PASSWORD).unwrap();
        assert!(
            reply.starts_with("-ERR [AUTH]"),
            "{user} with the right password after 3 failures: {reply}"
        );
        pop.quit().unwrap();
    }
    assert!(
        started.elapsed() < WINDOW,
        "the checks took longer than the window; the test proves nothing"
    );
    relay.wait_log(
        &["login refused: too many failures"],
        Duration::from_secs(1),
    );

    // After the window the right password works again (retried: no event marks the end of
    // the window; refused attempts are not counted as new failures).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut pop = relay.pop3();
        let reply = pop.login("alice", TEST_PASSWORD).unwrap();
        if reply.starts_with("+OK") {
            assert!(
                started.elapsed() >= WINDOW,
                "accepted after {:?}, within the window",
                started.elapsed()
            );
            pop.quit().unwrap();
            break;
        }
        assert!(reply.starts_with("-ERR [AUTH]"), "{reply}");
        assert!(
            Instant::now() < deadline,
            "still refused long after the window"
        );
        pop.quit().unwrap();
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_no_secrets_logged(&relay, &[]);
    relay.stop();
}

// ---------------------------------------------------------------------------------------------
// 10. AUTH PLAIN (RFC 5034)

fn auth_plain(engine: Engine) {
    let relay = Relay::start(Settings::new(engine));
    deliver(&relay, &["alice@example.test"], &msg("auth-plain", &["x"]));

    let doc = poplib(&relay, "auth-plain", "alice", TEST_PASSWORD, &[]);
    assert_eq!(doc.get("ok"), &Json::Bool(true), "{doc:?}");
    assert!(doc.get("auth").str().starts_with("+OK"));
    assert_eq!(pair(doc.get("stat")).0, 1);

    let doc = poplib(
        &relay,
        "auth-plain",
        "alice",
        TEST_PASSWORD,
        &["--two-step"],
    );
    assert_eq!(doc.get("ok"), &Json::Bool(true), "{doc:?}");
    assert!(doc.get("continuation").str().starts_with('+'));

    let doc = poplib(
        &relay,
        "auth-plain",
        "alice",
        TEST_PASSWORD,
        &["--authzid", "alice"],
    );
    assert_eq!(
        doc.get("ok"),
        &Json::Bool(true),
        "authzid = own name: {doc:?}"
    );

    // Acting as another user is not offered.
    let doc = poplib(
        &relay,
        "auth-plain",
        "alice",
        TEST_PASSWORD,
        &["--authzid", "bob"],
    );
    assert_eq!(doc.get("ok"), &Json::Bool(false), "{doc:?}");
    assert!(doc.get("auth").str().starts_with("-ERR [AUTH]"), "{doc:?}");
    let doc = poplib(&relay, "auth-plain", "alice", WRONG_PASSWORD, &[]);
    assert!(doc.get("auth").str().starts_with("-ERR [AUTH]"), "{doc:?}");

    // Raw: the mechanism list, a cancelled exchange, garbage base64; then a good login.
    let mut pop = relay.pop3();
    let (_, mechanisms) = pop.multi_ok("AUTH");
    assert_eq!(mechanisms, b"PLAIN\r\n");
    pop.send(b"AUTH PLAIN\r\n").unwrap();
    assert_eq!(pop.line().unwrap(), "+ ");
    let reply = pop.cmd("*").unwrap();
    assert!(reply.starts_with("-ERR"), "cancelled: {reply}");
    let reply = pop.cmd("AUTH PLAIN !!!notbase64").unwrap();
    assert!(reply.starts_with("-ERR"), "bad base64: {reply}");
    let reply = pop.cmd("AUTH CRAM-MD5").unwrap();
    assert!(reply.starts_with("-ERR"), "unsupported mechanism: {reply}");
    let blob = b64_encode(format!("\0alice\0{TEST_PASSWORD}").as_bytes());
    let reply = pop.cmd(&format!("AUTH PLAIN {blob}")).unwrap();
    assert!(reply.starts_with("+OK maildrop has 1 messages"), "{reply}");
    pop.quit().unwrap();

    let wrong_blob = b64_encode(format!("\0alice\0{WRONG_PASSWORD}").as_bytes());
    assert_no_secrets_logged(&relay, &[&wrong_blob]);
    relay.stop();
}

// ---------------------------------------------------------------------------------------------
// 11. Command lines over 255 octets (RFC 2449 §4)

fn overlong_command_line(engine: Engine) {
    let relay = Relay::start(Settings::new(engine));
    deliver(&relay, &["alice@example.test"], &msg("overlong", &["x"]));
    let too_long = "-ERR command line too long (255 octets at most)";

    let mut pop = relay.pop3();
    // In AUTHORIZATION: over the limit, then a normal login on the same connection.
    let reply = pop.cmd(&format!("USER {}", "a".repeat(300))).unwrap();
    assert_eq!(reply, too_long);
    // Exactly 255 octets with the CRLF is not "too long" (whatever else it is).
    let exact = format!("NOOP {}", "b".repeat(255 - 2 - 5));
    assert_eq!(exact.len() + 2, 255);
    let reply = pop.cmd(&exact).unwrap();
    assert_ne!(reply, too_long, "a 255-octet line is within the limit");
    let reply = pop
        .cmd(&format!("NOOP {}", "b".repeat(255 - 2 - 5 + 1)))
        .unwrap();
    assert_eq!(reply, too_long, "256 octets");
    let reply = pop.login("alice", TEST_PASSWORD).unwrap();
    assert!(reply.starts_with("+OK"), "{reply}");

    // In TRANSACTION: just over, far over (more than any read buffer), then it goes on.
    for len in [300usize, 20_000] {
        let reply = pop.cmd(&format!("NOOP {}", "x".repeat(len))).unwrap();
        assert_eq!(reply, too_long, "{len}-octet line");
        pop.ok("NOOP");
        assert_eq!(pop.stat().0, 1, "after a {len}-octet line");
    }
    let reply = pop.cmd(&format!("DELE 1{}", " ".repeat(300))).unwrap();
    assert_eq!(reply, too_long);
    let quit = pop.quit().unwrap();
    assert!(
        !quit.contains("deleted"),
        "an overlong DELE deleted something: {quit}"
    );
    assert_eq!(uid_set(&relay, "alice").len(), 1);
    relay.stop();
}

// ---------------------------------------------------------------------------------------------
// 12. Mailbox isolation; one stored body for several local recipients

fn mailbox_isolation_single_copy(engine: Engine) {
    let relay = Relay::start(Settings::new(engine));
    let shared_marker = "shared-body-7d1e5a";
    let shared = msg(shared_marker, &["for alice and bob"]);
    let s = deliver(&relay, &["alice@example.test", "bob@localhost"], &shared);
    let a = deliver(&relay, &["alice@example.test"], &msg("only-alice", &["x"]));
    let b = deliver(&relay, &["bob@example.test"], &msg("only-bob-3c9f", &["x"]));

    // Stored once: one spool entry with both recipients, one copy of the bytes on disk.
    let listed = relay.spool_ls();
    assert_eq!(listed.len(), 3, "{listed:?}");
    let entry = listed.iter().find(|e| e.id == s).expect("shared listed");
    assert!(
        has_all(&entry.line, &["alice@example.test", "bob@localhost"]),
        "{}",
        entry.line
    );
    let mut copies = 0;
    for segment in segment_files(&relay.spool_dir) {
        let bytes = std::fs::read(&segment).unwrap();
        copies += bytes
            .windows(shared_marker.len())
            .filter(|w| *w == shared_marker.as_bytes())
            .count();
    }
    // The marker is in the Subject, the Message-ID and the body: three times per copy of the
    // message, and twice more in its IMAP summary (the ENVELOPE's Subject and Message-ID),
    // which the frame keeps once however many mailboxes it delivers to. A second copy of the
    // body would make it 8 (or 10 with its own summary).
    assert_eq!(
        copies, 5,
        "the shared message must be stored once (marker found {copies} times)"
    );

    let alice = mailbox(&relay, "alice");
    let bob = mailbox(&relay, "bob");
    assert_eq!(
        alice.keys().cloned().collect::<BTreeSet<_>>(),
        [s.clone(), a.clone()].into()
    );
    assert_eq!(
        bob.keys().cloned().collect::<BTreeSet<_>>(),
        [s.clone(), b.clone()].into()
    );
    assert_eq!(alice[&s], bob[&s]);
    assert_eq!(alice[&s], relay.spool_cat(&s));
    for bytes in alice.values() {
        assert!(
            find(bytes, b"only-bob-3c9f").is_none(),
            "alice sees bob's mail"
        );
    }
    // Message numbers beyond alice's maildrop are not bob's messages.
    let mut pop = relay.pop3_login("alice");
    for cmd in ["RETR 3", "LIST 3", "TOP 3 0", "UIDL 3", "DELE 3", "RETR 0"] {
        let reply = pop.cmd(cmd).unwrap();
        assert!(reply.starts_with("-ERR"), "{cmd}: {reply}");
    }
    pop.quit().unwrap();

    // alice deletes the shared message: bob still has it, intact.
    delete_uids(&relay, "alice", &[s.clone()].into());
    assert_eq!(uid_set(&relay, "alice"), [a.clone()].into());
    let bob_now = mailbox(&relay, "bob");
    assert_eq!(
        bob_now.get(&s),
        Some(&bob[&s]),
        "bob's copy survives alice's DELE"
    );
    delete_uids(&relay, "bob", &[s.clone()].into());
    assert_eq!(uid_set(&relay, "bob"), [b.clone()].into());
    assert_eq!(uid_set(&relay, "alice"), [a].into());

    relay.stop();
    let relay = relay.restart(Settings::new(engine));
    assert_eq!(uid_set(&relay, "bob"), [b].into());
    relay.stop();
}

// ---------------------------------------------------------------------------------------------
// 13. Aliases

fn alias_expansion(engine: Engine) {
    let mut settings = Settings::new(engine);
    settings.aliases = vec![
        (
            "team@example.test".into(),
            vec!["alice".into(), "bob".into()],
        ),
        (
            "everyone@example.test".into(),
            vec!["team@example.test".into(), "one".into()],
        ),
    ];
    let relay = Relay::start(settings);
    let to_team = msg("to-team", &["x"]);
    let t = deliver(&relay, &["team@example.test"], &to_team);
    let listed = relay.spool_ls();
    assert_eq!(listed.len(), 1);
    assert!(
        listed[0].line.contains("team@example.test"),
        "{}",
        listed[0].line
    );
    // Nested, and alice named twice (directly and through the list): delivered once.
    let e = deliver(
        &relay,
        &["everyone@localhost", "alice@example.test"],
        &msg("to-everyone", &["x"]),
    );

    let alice = mailbox(&relay, "alice");
    let bob = mailbox(&relay, "bob");
    let one = mailbox(&relay, "one");
    assert_eq!(
        alice.keys().cloned().collect::<BTreeSet<_>>(),
        [t.clone(), e.clone()].into()
    );
    assert_eq!(
        bob.keys().cloned().collect::<BTreeSet<_>>(),
        [t.clone(), e.clone()].into()
    );
    assert_eq!(
        one.keys().cloned().collect::<BTreeSet<_>>(),
        [e.clone()].into()
    );
    assert_eq!(alice[&t], bob[&t]);
    assert_eq!(split_received(&alice[&t]).1, &to_team[..]);
    assert_eq!(alice[&e], one[&e]);
    // The alias is not a mailbox one can log in to.
    let mut pop = relay.pop3();
    let reply = pop.login("team", TEST_PASSWORD).unwrap();
    assert!(reply.starts_with("-ERR [AUTH]"), "{reply}");
    pop.quit().unwrap();
    relay.stop();
}

// ---------------------------------------------------------------------------------------------
// 14. SIGTERM with sessions open: no UPDATE

fn sigterm_closes_sessions_without_update(engine: Engine) {
    let relay = Relay::start(Settings::new(engine));
    let id = deliver(&relay, &["alice@example.test"], &msg("sigterm", &["x"]));
    let mut pop = relay.pop3_login("alice");
    pop.dele(1);
    relay.sigterm();
    let line = pop.line().expect("a goodbye before the close");
    assert!(line.starts_with("-ERR"), "goodbye on shutdown: {line}");
    pop.expect_eof(Duration::from_secs(20)).unwrap();
    let status = relay.wait_exit(common::EXIT_TIMEOUT);
    assert!(status.success(), "{status:?}");
    let relay = relay.restart(Settings::new(engine));
    assert_eq!(uid_set(&relay, "alice"), [id].into());
    relay.stop();
}

// ---------------------------------------------------------------------------------------------
// 15. SMTP: unknown local users and quotas

fn smtp_unknown_user_and_quota(engine: Engine) {
    let relay = Relay::start(Settings::new(engine));
    let mut client = relay.client();
    client.ehlo();
    client.expect("MAIL FROM:<sender@example.test>", 250);
    for rcpt in [
        "nobody@example.test",
        "NoBody@localhost",
        "team@example.test",
    ] {
        let reply = client.cmd(&format!("RCPT TO:<{rcpt}>")).unwrap();
        assert!(reply.is(550, "5.1.1"), "RCPT {rcpt}: {reply}");
    }
    // The transaction goes on; the mailbox name is case-insensitive.
    client.expect("RCPT TO:<Alice@Example.Test>", 250);
    client.expect("RSET", 250);

    // The quota user (1 KiB): a declared SIZE over it is refused up front.
    client.expect("MAIL FROM:<sender@example.test> SIZE=2000", 250);
    let reply = client
        .cmd(&format!("RCPT TO:<{QUOTA_USER}@example.test>"))
        .unwrap();
    assert!(reply.is(452, "4.2.2"), "SIZE over the quota: {reply}");
    client.expect("RSET", 250);

    // One message of ~1.5 KB is accepted (the mailbox was empty) and fills it.
    let lines = body_lines("quota", 40);
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let big = msg("quota-fill", &refs);
    assert!(big.len() > 1024, "{}", big.len());
    let reply = client
        .transaction(
            "sender@example.test",
            &[&format!("{QUOTA_USER}@example.test")],
            &big,
        )
        .unwrap();
    assert_eq!(reply.code, 250, "{reply}");
    let filled = reply.queue_id().unwrap();
    relay.wait_accepted(&filled);

    client.expect("MAIL FROM:<sender@example.test>", 250);
    let reply = client
        .cmd(&format!("RCPT TO:<{QUOTA_USER}@example.test>"))
        .unwrap();
    assert!(reply.is(452, "4.2.2"), "RCPT to a full mailbox: {reply}");
    // Other mailboxes in the same transaction are not affected.
    client.expect("RCPT TO:<alice@example.test>", 250);
    client.expect("RSET", 250);

    // Freeing the mailbox over POP3 gives the room back.
    delete_uids(&relay, QUOTA_USER, &[filled].into());
    client.expect("MAIL FROM:<sender@example.test>", 250);
    client.expect(&format!("RCPT TO:<{QUOTA_USER}@example.test>"), 250);
    client.expect("RSET", 250);
    client.quit();

    // Full again after a restart: usage is rebuilt from the spool.
    let id = deliver(&relay, &[&format!("{QUOTA_USER}@localhost")], &big);
    relay.stop();
    let relay = relay.restart(Settings::new(engine));
    let mut client = relay.client();
    client.ehlo();
    client.expect("MAIL FROM:<sender@example.test>", 250);
    let reply = client
        .cmd(&format!("RCPT TO:<{QUOTA_USER}@example.test>"))
        .unwrap();
    assert!(reply.is(452, "4.2.2"), "full after restart: {reply}");
    client.quit();
    assert_eq!(uid_set(&relay, QUOTA_USER), [id].into());
    relay.stop();
}

// ---------------------------------------------------------------------------------------------
// 16. VRFY and EXPN

fn smtp_vrfy_expn(engine: Engine) {
    let team = || {
        vec![(
            "team@example.test".to_string(),
            vec!["alice".to_string(), "bob".to_string()],
        )]
    };
    // Defaults: no disclosure.
    let mut settings = Settings::new(engine);
    settings.aliases = team();
    let quiet = Relay::start(settings);
    let mut client = quiet.client();
    client.ehlo();
    for arg in [
        "alice@example.test",
        "<alice@example.test>",
        "nobody@example.test",
    ] {
        let reply = client.cmd(&format!("VRFY {arg}")).unwrap();
        assert_eq!(reply.code, 252, "default VRFY {arg}: {reply}");
    }
    let reply = client.cmd("EXPN team@example.test").unwrap();
    assert_eq!(reply.code, 502, "default EXPN: {reply}");
    client.quit();
    quiet.stop();

    let mut settings = Settings::new(engine);
    settings.aliases = team();
    settings.vrfy = Some(true);
    settings.expn = Some(true);
    let open = Relay::start(settings);
    let mut client = open.client();
    client.ehlo();
    let reply = client.cmd("VRFY <alice@example.test>").unwrap();
    assert_eq!(reply.code, 250, "VRFY a local user: {reply}");
    assert!(reply.text().contains("alice@example.test"), "{reply}");
    let reply = client.cmd("VRFY Bob@localhost").unwrap();
    assert_eq!(reply.code, 250, "{reply}");
    let reply = client.cmd("VRFY nobody@example.test").unwrap();
    assert!(
        reply.is(550, "5.1.1"),
        "VRFY an unknown local user: {reply}"
    );
    let reply = client.cmd("VRFY someone@remote.example").unwrap();
    assert_eq!(reply.code, 252, "VRFY a remote address: {reply}");
    let reply = client.cmd("EXPN team@example.test").unwrap();
    assert_eq!(reply.code, 250, "EXPN a list: {reply}");
    let members = reply.lines.join("\n");
    assert!(
        reply.lines.len() == 2 && members.contains("alice") && members.contains("bob"),
        "EXPN must list alice and bob: {reply}"
    );
    let reply = client.cmd("EXPN alice@example.test").unwrap();
    assert_eq!(reply.code, 550, "EXPN of a user, not a list: {reply}");
    client.quit();
    open.stop();
}

// ---------------------------------------------------------------------------------------------
// 17. Content policy

fn content_policy_end_to_end(engine: Engine) {
    let mut settings = Settings::new(engine);
    settings.blocked_extensions = vec!["exe".into()];
    let relay = Relay::start(settings);
    let multipart = |marker: &str, filename: &str, media_type: &str| {
        format!(
            "From: <sender@example.test>\r\n\
             To: <alice@example.test>\r\n\
             Subject: {marker}\r\n\
             Message-ID: <{marker}@client.test>\r\n\
             MIME-Version: 1.0\r\n\
             Content-Type: multipart/mixed; boundary=\"b-{marker}\"\r\n\
             \r\n\
             preamble\r\n\
             --b-{marker}\r\n\
             Content-Type: text/plain; charset=us-ascii\r\n\
             \r\n\
             see the attachment\r\n\
             --b-{marker}\r\n\
             Content-Type: {media_type}; name=\"{filename}\"\r\n\
             Content-Disposition: attachment; filename=\"{filename}\"\r\n\
             Content-Transfer-Encoding: base64\r\n\
             \r\n\
             TVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQAAAAAAAAAAAAAAAAAAAAAAA\r\n\
             --b-{marker}--\r\n"
        )
        .into_bytes()
    };

    let mut client = relay.client();
    client.ehlo();
    let bad = multipart("policy-exe", "tool.exe", "application/octet-stream");
    let reply = client
        .transaction("sender@example.test", &["alice@example.test"], &bad)
        .unwrap();
    assert!(reply.is(554, "5.7.1"), "an .exe attachment: {reply}");
    assert!(reply.text().contains("exe"), "{reply}");
    // The name's case and a trailing dot do not help.
    let bad = multipart("policy-exe-2", "TOOL.EXE.", "application/octet-stream");
    let reply = client
        .transaction("sender@example.test", &["alice@example.test"], &bad)
        .unwrap();
    assert!(reply.is(554, "5.7.1"), "TOOL.EXE.: {reply}");

    // The session goes on; a clean message is accepted and logged with its MIME counts.
    let good = multipart("policy-clean", "notes.txt", "text/plain");
    let reply = client
        .transaction("sender@example.test", &["alice@example.test"], &good)
        .unwrap();
    assert_eq!(reply.code, 250, "{reply}");
    let id = reply.queue_id().unwrap();
    client.quit();
    let line = relay.wait_accepted(&id);
    assert!(
        has_all(&line, &["parts=3", "attachments=1"]),
        "accepted line must count the parts and attachments: {line}"
    );

    let listed = relay.spool_ls();
    assert_eq!(
        listed.len(),
        1,
        "refused messages must not be stored: {listed:?}"
    );
    assert_eq!(listed[0].id, id);
    let alice = mailbox(&relay, "alice");
    assert_eq!(alice.len(), 1);
    assert_eq!(split_received(&alice[&id]).1, &good[..]);
    relay.stop();
}

// ---------------------------------------------------------------------------------------------
// 18. APOP, offered only when a user has a shared secret

fn apop_with_poplib(engine: Engine) {
    const SECRET: &str = "tanstaaf-apop-secret";
    let mut settings = Settings::new(engine);
    settings.apop_secrets = vec![("alice".into(), SECRET.into())];
    let relay = Relay::start(settings);
    deliver(&relay, &["alice@example.test"], &msg("apop", &["x"]));

    let doc = poplib(&relay, "apop", "alice", SECRET, &[]);
    let welcome = doc.get("welcome").str();
    assert!(
        welcome.starts_with("+OK relay.test POP3 ready <") && welcome.ends_with("@relay.test>"),
        "the greeting must carry an APOP timestamp: {welcome}"
    );
    assert_eq!(doc.get("ok"), &Json::Bool(true), "{doc:?}");
    assert_eq!(pair(doc.get("stat")).0, 1);
    // Every connection gets its own timestamp.
    let other = poplib(&relay, "apop", "alice", SECRET, &[]);
    assert_ne!(
        other.get("welcome").str(),
        welcome,
        "APOP timestamps must not repeat"
    );

    // A wrong secret, the login password, a user without a secret: all -ERR [AUTH].
    for (user, secret) in [
        ("alice", "not-the-secret"),
        ("alice", TEST_PASSWORD),
        ("bob", SECRET),
    ] {
        let doc = poplib(&relay, "apop", user, secret, &[]);
        assert_eq!(doc.get("ok"), &Json::Bool(false), "APOP {user}: {doc:?}");
        assert!(
            doc.get("apop").str().starts_with("-ERR [AUTH]"),
            "APOP {user}: {doc:?}"
        );
    }
    // USER/PASS still works for alice.
    let doc = poplib(&relay, "login", "alice", TEST_PASSWORD, &[]);
    assert_eq!(doc.get("ok"), &Json::Bool(true), "{doc:?}");
    assert_no_secrets_logged(&relay, &[SECRET]);
    relay.stop();

    // Without any secret configured, no timestamp and APOP is refused.
    let relay = Relay::start(Settings::new(engine));
    let mut pop = relay.pop3();
    assert_eq!(pop.greeting, "+OK relay.test POP3 ready");
    let reply = pop
        .cmd("APOP alice c4c9334bac560ecc979e58001b3e22fb")
        .unwrap();
    assert!(reply.starts_with("-ERR"), "{reply}");
    pop.quit().unwrap();
    relay.stop();
}

// ---------------------------------------------------------------------------------------------
// 19. A BINARYMIME body with bare LFs and no final CRLF (RFC 3030). The session stores every
// message ending in CRLF (src/smtp/session.rs: added to a BDAT body without one), so RETR
// sends the stored bytes and LIST counts them; every "." after an LF, bare or not, is
// stuffed.

fn binarymime_body_without_final_crlf(engine: Engine) {
    let relay = Relay::start(Settings::new(engine));
    let content: &[u8] =
        b"Subject: binarymime\r\n\r\nfirst\n.bare LF then a dot\n.\nlone dot above\r\n.crlf dot\r\nno final line end";
    let mut client = relay.client();
    client.ehlo();
    client.expect("MAIL FROM:<sender@example.test> BODY=BINARYMIME", 250);
    client.expect("RCPT TO:<alice@example.test>", 250);
    client
        .send(format!("BDAT {} LAST\r\n", content.len()).as_bytes())
        .unwrap();
    client.send(content).unwrap();
    let reply = client.read_reply().unwrap();
    assert_eq!(reply.code, 250, "BDAT LAST: {reply}");
    let id = reply.queue_id().unwrap();
    client.quit();
    let stored = relay.spool_cat(&id);
    assert_eq!(
        split_received(&stored).1,
        [content, b"\r\n"].concat(),
        "stored: the content plus the final CRLF the session adds"
    );

    let mut pop = relay.pop3_login("alice");
    let (_, size) = pop.list()[0];
    assert_eq!(size, stored.len() as u64, "LIST counts what RETR sends");
    pop.send(b"RETR 1\r\n").unwrap();
    let status = pop.line().unwrap();
    assert_eq!(status, format!("+OK {size} octets"));
    let raw = pop.read_raw_body().unwrap();
    // No "." after an LF goes unstuffed: a client splitting lines at bare LFs cannot be fooled.
    for (i, w) in raw.windows(2).enumerate() {
        if w == b"\n." && i + 2 < raw.len() - 3 {
            assert_eq!(
                raw[i + 2],
                b'.',
                "unstuffed dot after an LF at {i}: {raw:?}"
            );
        }
    }
    let expected = stored.clone();
    let got = common::pop3::unstuff(&raw);
    assert!(
        got == expected,
        "RETR of a BINARYMIME body\n--- got ---\n{:?}\n--- expected ---\n{:?}",
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&expected)
    );
    assert_eq!(got.len() as u64, size);
    // TOP 1 1: the headers, the blank line and the first body line (up to its LF).
    pop.send(b"TOP 1 1\r\n").unwrap();
    assert!(pop.line().unwrap().starts_with("+OK"));
    let top = common::pop3::unstuff(&pop.read_raw_body().unwrap());
    let header_end = find(&stored, b"\r\n\r\n").unwrap() + 4;
    let mut want = stored[..header_end].to_vec();
    want.extend_from_slice(b"first\n");
    // The part sent ends with a bare LF: the server may add a CRLF so the terminator stands
    // on its own line.
    assert!(
        top == want || top == [&want[..], b"\r\n"].concat(),
        "TOP 1 1: {:?}",
        String::from_utf8_lossy(&top)
    );
    pop.quit().unwrap();
    relay.stop();
}

// ---------------------------------------------------------------------------------------------
// 20. Large messages, pipelined RETRs, four sessions at once (multi-MB writes on both
// engines, partial writes included)

fn large_message(marker: &str, size: usize) -> Vec<u8> {
    let mut text = format!(
        "From: <sender@example.test>\r\nSubject: {marker}\r\nMessage-ID: <{marker}@client.test>\r\n\r\n"
    );
    let mut i = 0u64;
    while text.len() < size {
        if i.is_multiple_of(97) {
            text.push('.');
        }
        text.push_str(&format!(
            "{marker} {i:08} {}\r\n",
            "0123456789abcdef".repeat(4)
        ));
        i += 1;
    }
    text.into_bytes()
}

fn large_messages_pipelined_in_parallel(engine: Engine) {
    let relay = Relay::start(Settings::new(engine));
    let users = ["alice", "bob", "one", "two"];
    let mut stored: BTreeMap<&str, Vec<Vec<u8>>> = BTreeMap::new();
    for user in users {
        for (k, size) in [(0, 3 << 20), (1, 200_000)] {
            let content = large_message(&format!("large-{user}-{k}"), size);
            let id = deliver(&relay, &[&format!("{user}@example.test")], &content);
            let bytes = relay.spool_cat(&id);
            assert_eq!(split_received(&bytes).1, &content[..]);
            stored.entry(user).or_default().push(bytes);
        }
    }
    let addr = relay.pop3_addr;
    let threads: Vec<_> = users
        .iter()
        .map(|&user| {
            let want = stored[user].clone();
            std::thread::spawn(move || {
                let mut pop = common::pop3::Pop3::login_retrying(
                    addr,
                    user,
                    TEST_PASSWORD,
                    common::LOCK_RELEASE_TIMEOUT,
                );
                let sizes = pop.list();
                // Everything in one write (RFC 2449 PIPELINING), the responses in order.
                pop.send(b"RETR 1\r\nTOP 2 3\r\nRETR 2\r\nSTAT\r\nQUIT\r\n")
                    .unwrap();
                let mut got = Vec::new();
                for what in ["RETR 1", "TOP 2 3", "RETR 2"] {
                    let status = pop.line().unwrap();
                    assert!(status.starts_with("+OK"), "{user} {what}: {status}");
                    got.push(pop.read_body().unwrap());
                }
                let stat = pop.line().unwrap();
                let quit = pop.line().unwrap();
                (user, sizes, got, stat, quit, want)
            })
        })
        .collect();
    for thread in threads {
        let (user, sizes, got, stat, quit, want) = thread.join().expect("session thread");
        // Delivery order is maildrop order here (one delivery at a time).
        let total: u64 = want.iter().map(|w| w.len() as u64).sum();
        assert_eq!(
            sizes,
            vec![(1, want[0].len() as u64), (2, want[1].len() as u64)],
            "{user} LIST"
        );
        assert!(
            got[0] == want[0],
            "{user}: RETR 1 differs ({} octets)",
            got[0].len()
        );
        assert_eq!(got[1], expected_top(&want[1], 3), "{user}: TOP 2 3");
        assert!(
            got[2] == want[1],
            "{user}: RETR 2 differs ({} octets)",
            got[2].len()
        );
        assert_eq!(stat, format!("+OK 2 {total}"), "{user}");
        assert!(quit.starts_with("+OK"), "{user}: {quit}");
    }
    relay.stop();
}

// ---------------------------------------------------------------------------------------------
// 21. Even at RELAY_LOG=trace: no password, no AUTH blob, no APOP digest, no message content

fn trace_log_has_no_secrets(engine: Engine) {
    const SECRET: &str = "apop-secret-e9b1";
    const BODY: &str = "confidential-body-line-5a7c";
    let mut settings = Settings::new(engine);
    settings.log_level = "trace";
    settings.apop_secrets = vec![("alice".into(), SECRET.into())];
    let relay = Relay::start(settings);
    deliver(
        &relay,
        &["alice@example.test"],
        &msg("trace-secrets", &[BODY, "second line"]),
    );
    assert!(
        relay.log_lines().len() > 10,
        "RELAY_LOG=trace logs more than info does"
    );

    // USER/PASS wrong then right, AUTH PLAIN, APOP; RETR and TOP.
    let mut pop = relay.pop3();
    let reply = pop.login("alice", WRONG_PASSWORD).unwrap();
    assert!(reply.starts_with("-ERR [AUTH]"), "{reply}");
    let reply = pop.login("alice", TEST_PASSWORD).unwrap();
    assert!(reply.starts_with("+OK"), "{reply}");
    let bytes = pop.retr(1);
    assert!(find(&bytes, BODY.as_bytes()).is_some());
    pop.top(1, 1);
    pop.quit().unwrap();
    let blob = b64_encode(format!("\0alice\0{TEST_PASSWORD}").as_bytes());
    let deadline = Instant::now() + common::LOCK_RELEASE_TIMEOUT;
    loop {
        let mut pop = relay.pop3();
        let reply = pop.cmd(&format!("AUTH PLAIN {blob}")).unwrap();
        pop.quit().unwrap();
        if reply.starts_with("+OK") {
            break;
        }
        // The previous session's lock may not be released yet.
        assert!(reply.starts_with("-ERR [IN-USE]"), "AUTH PLAIN: {reply}");
        assert!(Instant::now() < deadline, "maildrop still locked");
        std::thread::sleep(Duration::from_millis(20));
    }
    let doc = poplib(&relay, "apop", "alice", SECRET, &[]);
    assert_eq!(doc.get("ok"), &Json::Bool(true), "{doc:?}");

    // The APOP digest of that session is MD5(timestamp + secret): not in the log either.
    let welcome = doc.get("welcome").str();
    let timestamp = &welcome[welcome.find('<').unwrap()..];
    let digest = md5_hex(format!("{timestamp}{SECRET}").as_bytes());
    assert_no_secrets_logged(&relay, &[SECRET, &digest, BODY, "second line"]);
    relay.stop();
}

/// MD5 (RFC 1321), only to compute the APOP digest a client sends, to look for it in logs.
fn md5_hex(input: &[u8]) -> String {
    const S: [u32; 64] = [
        7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 5, 9, 14, 20, 5, 9, 14, 20, 5,
        9, 14, 20, 5, 9, 14, 20, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 6, 10,
        15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21,
    ];
    let k: Vec<u32> = (0..64)
        .map(|i| ((i as f64 + 1.0).sin().abs() * 4294967296.0) as u32)
        .collect();
    let mut msg = input.to_vec();
    let bit_len = (input.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bit_len.to_le_bytes());
    let (mut a0, mut b0, mut c0, mut d0) =
        (0x67452301u32, 0xefcdab89u32, 0x98badcfeu32, 0x10325476u32);
    for chunk in msg.chunks(64) {
        let m: Vec<u32> = chunk
            .chunks(4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .collect();
        let (mut a, mut b, mut c, mut d) = (a0, b0, c0, d0);
        for i in 0..64 {
            let (f, g) = match i / 16 {
                0 => ((b & c) | (!b & d), i),
                1 => ((d & b) | (!d & c), (5 * i + 1) % 16),
                2 => (b ^ c ^ d, (3 * i + 5) % 16),
                _ => (c ^ (b | !d), (7 * i) % 16),
            };
            let f = f.wrapping_add(a).wrapping_add(k[i]).wrapping_add(m[g]);
            a = d;
            d = c;
            c = b;
            b = b.wrapping_add(f.rotate_left(S[i]));
        }
        a0 = a0.wrapping_add(a);
        b0 = b0.wrapping_add(b);
        c0 = c0.wrapping_add(c);
        d0 = d0.wrapping_add(d);
    }
    [a0, b0, c0, d0]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .map(|b| format!("{b:02x}"))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 22. Mail arriving while the maildrop is locked: the session's numbering does not move, the
// new message is there for the next session, and the session's deletions do not touch it

fn delivery_during_session(engine: Engine) {
    let relay = Relay::start(Settings::new(engine));
    let old: Vec<String> = (0..2)
        .map(|i| {
            deliver(
                &relay,
                &["alice@example.test"],
                &msg(&format!("old-{i}"), &["x"]),
            )
        })
        .collect();
    let mut pop = relay.pop3_login("alice");
    let stat = pop.stat();
    let uidl = pop.uidl();
    let new = deliver(
        &relay,
        &["alice@example.test"],
        &msg("arrived-during", &["x"]),
    );
    assert_eq!(
        pop.stat(),
        stat,
        "RFC 1939: the maildrop does not change under a session"
    );
    assert_eq!(pop.uidl(), uidl);
    assert!(pop.cmd("RETR 3").unwrap().starts_with("-ERR"));
    for n in 1..=2 {
        pop.dele(n);
    }
    let reply = pop.quit().unwrap();
    assert!(reply.contains("(2 messages deleted)"), "{reply}");
    let all: BTreeSet<String> = old.iter().cloned().collect();
    assert_eq!(
        uidl.iter().map(|(_, u)| u.clone()).collect::<BTreeSet<_>>(),
        all
    );
    assert_eq!(uid_set(&relay, "alice"), [new.clone()].into());
    relay.stop();
    let relay = relay.restart(Settings::new(engine));
    assert_eq!(uid_set(&relay, "alice"), [new].into());
    relay.stop();
}

// ---------------------------------------------------------------------------------------------
// 23. server.connections_per_ip_max covers POP3 connections too

fn pop3_connection_limit(engine: Engine) {
    let mut settings = Settings::new(engine);
    settings.connections_per_ip_max = 3;
    let relay = Relay::start(settings);
    let held: Vec<_> = (0..3).map(|_| relay.pop3()).collect();
    let mut refused = common::pop3::Pop3::connect(relay.pop3_addr).unwrap();
    assert!(
        refused.greeting.starts_with("-ERR [SYS/TEMP]"),
        "a 4th connection from the same address: {:?}",
        refused.greeting
    );
    refused.expect_eof(Duration::from_secs(10)).unwrap();
    // SMTP shares the limit.
    let mut smtp = Client::connect(relay.addr).unwrap();
    let greeting = smtp.read_reply().unwrap();
    assert_eq!(greeting.code, 421, "{greeting}");
    // A freed slot is usable again (the server notices the close asynchronously: retried).
    for pop in held {
        pop.quit().unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pop = common::pop3::Pop3::connect(relay.pop3_addr).unwrap();
        if pop.greeting.starts_with("+OK") {
            pop.quit().unwrap();
            break;
        }
        assert!(
            Instant::now() < deadline,
            "slots not freed: {:?}",
            pop.greeting
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    relay.stop();
}

// ---------------------------------------------------------------------------------------------
// Harness self-checks that need no relay.

/// RFC 1939 §3: the autologout timer must be at least 10 minutes; the config says so.
#[test]
fn pop3_idle_timeout_is_validated() {
    let dir = common::new_workdir();
    let text = Settings::new(Engine::Epoll).render(&dir.path().join("spool"));
    for (idle, ok) in [
        ("5m", false),
        ("9m 59s", false),
        ("10m", true),
        ("1h", true),
    ] {
        let config = text.replace("[pop3]\n", &format!("[pop3]\nidle_timeout = {idle:?}\n"));
        let path = dir.path().join("relay.toml");
        std::fs::write(&path, &config).unwrap();
        let out = common::relay_cmd([
            std::ffi::OsStr::new("check"),
            std::ffi::OsStr::new("--config"),
            path.as_os_str(),
        ]);
        assert_eq!(
            out.status.success(),
            ok,
            "idle_timeout = {idle}: {}",
            describe(&out)
        );
        if !ok {
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains("pop3.idle_timeout"), "{stderr}");
        }
    }
}

#[test]
fn template_renders_pop3_and_local_settings() {
    let mut settings = Settings::new(Engine::Epoll);
    settings.vrfy = Some(true);
    settings.aliases = vec![("team@example.test".into(), vec!["alice".into()])];
    settings.blocked_extensions = vec!["exe".into()];
    settings.compact_interval = Some("1s".into());
    let text = settings.render(std::path::Path::new("/tmp/spool"));
    let smtp = text.find("[smtp]").unwrap();
    let spool = text.find("[spool]").unwrap();
    let vrfy = text.find("vrfy = true").unwrap();
    assert!(smtp < vrfy && vrfy < spool, "{text}");
    for needle in [
        "[pop3]\nlisten = [\"127.0.0.1:0\"]\nauth_failure_delay = \"50ms\"\n",
        "compact_interval = \"1s\"",
        "[local.aliases]\n\"team@example.test\" = [\"alice\"]\n",
        "[policy]\nblocked_extensions = [\"exe\"]\n",
        "quota = \"1KiB\"",
    ] {
        assert!(text.contains(needle), "{needle:?} not in:\n{text}");
    }
    assert_eq!(
        expected_top(b"A: b\r\n\r\n1\r\n2\r\n3\r\n", 2),
        b"A: b\r\n\r\n1\r\n2\r\n"
    );
    assert_eq!(expected_top(b"A: b\r\n\r\n1\r\n", 5), b"A: b\r\n\r\n1\r\n");
    // RFC 1321 test suite.
    assert_eq!(md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
    assert_eq!(
        md5_hex(b"The quick brown fox jumps over the lazy dog"),
        "9e107d9d372bb6826bd81d3542a419d6"
    );
    assert_eq!(
        md5_hex(b"<1896.697170952@dbc.mtview.ca.us>tanstaaf"),
        "c4c9334bac560ecc979e58001b3e22fb",
        "the RFC 1939 APOP example"
    );
}
