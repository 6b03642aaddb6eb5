//! Change notification across sessions (and so across the relay's cores, `cores = 2`): a
//! session in IDLE (imapclient, from PyPI) or polling with NOOP (imaplib) sees deliveries,
//! flag changes and expunges made by other IMAP sessions, by SMTP and by POP3, within 2 s.

#[macro_use]
mod common;
mod imap_support;

use std::time::{Duration, Instant};

use common::json::Json;
use common::smtp::message;
use common::{Engine, Relay, Settings, TEST_PASSWORD};
use imap_support::{fetch_all, flat, Py, A};

engine_tests! {
    idle_sees_smtp_store_expunge_and_pop3: idle_sees_smtp_store_expunge_and_pop3_uring, idle_sees_smtp_store_expunge_and_pop3_epoll;
    noop_reports_changes: noop_reports_changes_uring, noop_reports_changes_epoll;
}

const NOTIFY_WITHIN: Duration = Duration::from_secs(2);

fn imap_port(relay: &Relay) -> u16 {
    relay.listening("imap").expect("imap listener").port()
}

/// idle_check until a response satisfies `pred` or NOTIFY_WITHIN passes; every response
/// seen, rendered as text (`3 EXISTS`, `1 FETCH FLAGS \Flagged`).
fn wait_idle(py: &mut Py, what: &str, pred: impl Fn(&str) -> bool) -> Vec<String> {
    let start = Instant::now();
    let mut seen = Vec::new();
    loop {
        let left = NOTIFY_WITHIN.saturating_sub(start.elapsed());
        if left.is_zero() {
            panic!("IDLE: no {what} within {NOTIFY_WITHIN:?}; saw {seen:?}");
        }
        let got = py.value("a", "idle_check", &[A::F(left.as_secs_f64())]);
        let responses: Vec<String> = match &got {
            Json::Arr(items) => items.iter().map(flat).collect(),
            other => panic!("idle_check: {other:?}"),
        };
        let hit = responses.iter().any(|r| pred(r));
        seen.extend(responses);
        if hit {
            return seen;
        }
    }
}

fn idle_sees_smtp_store_expunge_and_pop3(engine: Engine) {
    let relay = Relay::start(Settings::new(engine));
    for i in 0..3 {
        relay.deliver(&["one@example.test"], &message(&format!("idle-{i}"), &[]));
    }
    let port = imap_port(&relay);
    let mut py = Py::spawn();
    py.connect_with("a", port, "none", "", "imapclient");
    py.value("a", "login", &[A::S("one"), A::S(TEST_PASSWORD)]);
    let selected = py.value("a", "select_folder", &[A::S("INBOX")]);
    assert!(flat(&selected).contains("EXISTS 3"), "{selected:?}");
    py.value("a", "idle", &[]);

    // 1. An SMTP delivery: EXISTS 4.
    relay.deliver(&["one@example.test"], &message("idle-new", &[]));
    wait_idle(&mut py, "EXISTS 4", |r| r == "4 EXISTS");

    // 2. A STORE from another session: FETCH with the new flag. Several sessions, so some
    //    land on the other core than A's.
    for (n, s) in ["b", "c", "d"].iter().enumerate() {
        py.login(s, port, "one");
        py.ok(s, "select", &[A::S("INBOX")]);
        let keyword = format!("$Mark{n}");
        py.ok(
            s,
            "store",
            &[A::S("2"), A::S("+FLAGS"), A::S(&format!("({keyword})"))],
        );
        wait_idle(&mut py, &format!("FETCH of 2 with {keyword}"), |r| {
            r.starts_with("2 FETCH") && r.contains(&keyword)
        });
    }

    // 3. An EXPUNGE from another session: EXPUNGE 3.
    py.ok(
        "b",
        "store",
        &[A::S("3"), A::S("+FLAGS.SILENT"), A::S("(\\Deleted)")],
    );
    py.ok("b", "expunge", &[]);
    wait_idle(&mut py, "EXPUNGE 3", |r| r == "3 EXPUNGE");
    for s in ["b", "c", "d"] {
        py.call(s, "logout", &[]);
    }

    // 4. POP3 DELE 1 + QUIT: EXPUNGE 1.
    let mut pop = relay.pop3_login("one");
    assert_eq!(pop.stat().0, 3);
    pop.dele(1);
    pop.quit().expect("quit");
    wait_idle(&mut py, "EXPUNGE 1", |r| r == "1 EXPUNGE");

    py.value("a", "idle_done", &[]);
    // What is left, seen by imaplib: idle-1, idle-new (idle-0 by POP3, idle-2 by EXPUNGE).
    let exists = py.value("a", "select_folder", &[A::S("INBOX")]);
    assert!(flat(&exists).contains("EXISTS 2"), "{exists:?}");
    py.login("e", port, "one");
    py.ok("e", "select", &[A::S("INBOX")]);
    let subjects = py.ok(
        "e",
        "fetch",
        &[A::S("1:*"), A::S("(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")],
    );
    let bodies: Vec<Vec<u8>> = subjects.literals().into_iter().map(|(_, b)| b).collect();
    assert_eq!(
        bodies,
        vec![
            b"Subject: idle-1\r\n\r\n".to_vec(),
            b"Subject: idle-new\r\n\r\n".to_vec()
        ]
    );
}

fn noop_reports_changes(engine: Engine) {
    let relay = Relay::start(Settings::new(engine));
    relay.deliver(&["two@example.test"], &message("noop-0", &[]));
    let port = imap_port(&relay);
    let mut py = Py::spawn();
    py.login("a", port, "two");
    py.ok("a", "select", &[A::S("INBOX")]);
    py.login("b", port, "two");
    py.ok("b", "select", &[A::S("INBOX")]);

    let until = |py: &mut Py, what: &str, pred: &dyn Fn(&imap_support::Reply) -> bool| {
        let start = Instant::now();
        loop {
            let noop = py.ok("a", "noop", &[]);
            if pred(&noop) {
                return;
            }
            assert!(start.elapsed() < NOTIFY_WITHIN, "NOOP: no {what}: {noop:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    relay.deliver(&["two@example.test"], &message("noop-1", &[]));
    until(&mut py, "EXISTS 2", &|r| r.untagged("EXISTS") == ["2"]);
    // b learns of message 2 first: a sequence number it was not told of is BAD.
    let unknown = py.raw(
        "b",
        "store",
        &[A::S("2"), A::S("+FLAGS.SILENT"), A::S("(\\Flagged)")],
    );
    assert!(imap_support::flat(&unknown).contains("BAD"), "{unknown:?}");
    py.ok("b", "noop", &[]);
    py.ok(
        "b",
        "store",
        &[A::S("2"), A::S("+FLAGS.SILENT"), A::S("(\\Flagged)")],
    );
    until(&mut py, "FETCH 2 \\Flagged", &|r| {
        r.untagged("FETCH")
            .iter()
            .any(|f| f.starts_with("2 (") && f.contains("\\Flagged"))
    });
    py.ok(
        "b",
        "store",
        &[A::S("1"), A::S("+FLAGS.SILENT"), A::S("(\\Deleted)")],
    );
    py.ok("b", "expunge", &[]);
    until(&mut py, "EXPUNGE 1", &|r| r.untagged("EXPUNGE") == ["1"]);
    let left = fetch_all(&mut py, "a");
    assert_eq!(left.len(), 1);
    assert!(left
        .values()
        .all(|(flags, _, _)| flags.contains("\\Flagged")));
}
