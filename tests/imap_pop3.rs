//! POP3 and IMAP over one INBOX: deletions by either protocol show in the other, POP3's UIDL
//! does not depend on IMAP flags or restarts, and a POP3 deletion of an INBOX message leaves
//! the user's IMAP copies in other folders (the body stays while any copy references it).

#[macro_use]
mod common;
mod imap_support;

use common::smtp::message;
use common::{split_received, Engine, Relay, Settings};
use imap_support::{fetch_all, Py, A};

engine_tests! {
    pop3_dele_expunges_for_imap: pop3_dele_expunges_for_imap_uring, pop3_dele_expunges_for_imap_epoll;
    imap_expunge_hides_from_next_pop3: imap_expunge_hides_from_next_pop3_uring, imap_expunge_hides_from_next_pop3_epoll;
    uidl_stable_after_flags_and_restart: uidl_stable_after_flags_and_restart_uring, uidl_stable_after_flags_and_restart_epoll;
    copy_survives_pop3_dele: copy_survives_pop3_dele_uring, copy_survives_pop3_dele_epoll;
}

fn imap_port(relay: &Relay) -> u16 {
    relay.listening("imap").expect("imap listener").port()
}

fn deliver_n(relay: &Relay, user: &str, n: usize, prefix: &str) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let sent = message(&format!("{prefix}-{i}"), &["cross body"]);
            relay.deliver(&[&format!("{user}@example.test")], &sent);
            sent
        })
        .collect()
}

fn pop3_dele_expunges_for_imap(engine: Engine) {
    let relay = Relay::start(Settings::new(engine));
    let sent = deliver_n(&relay, "one", 3, "pd");
    let mut py = Py::spawn();
    py.login("a", imap_port(&relay), "one");
    py.ok("a", "select", &[A::S("INBOX")]);
    let before = fetch_all(&mut py, "a");
    let uids: Vec<u64> = before.keys().copied().collect();

    let mut pop = relay.pop3_login("one");
    pop.dele(2);
    pop.quit().expect("quit");
    let start = std::time::Instant::now();
    let expunged = loop {
        let noop = py.ok("a", "noop", &[]);
        let e = noop.untagged("EXPUNGE");
        if !e.is_empty() {
            break e;
        }
        assert!(
            start.elapsed().as_secs() < 5,
            "no EXPUNGE after POP3 DELE+QUIT"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(expunged, vec!["2".to_string()]);
    let after = fetch_all(&mut py, "a");
    assert_eq!(
        after.keys().copied().collect::<Vec<_>>(),
        vec![uids[0], uids[2]]
    );
    assert_eq!(split_received(&after[&uids[2]].2).1, &sent[2][..]);
}

fn imap_expunge_hides_from_next_pop3(engine: Engine) {
    let relay = Relay::start(Settings::new(engine));
    deliver_n(&relay, "two", 3, "ie");
    let mut pop = relay.pop3_login("two");
    let uidl = pop.uids();
    let second = pop.retr(2);
    pop.quit().expect("quit");
    assert_eq!(uidl.len(), 3);

    let mut py = Py::spawn();
    py.login("a", imap_port(&relay), "two");
    py.ok("a", "select", &[A::S("INBOX")]);
    py.ok(
        "a",
        "store",
        &[A::S("1,3"), A::S("+FLAGS.SILENT"), A::S("(\\Deleted)")],
    );
    py.ok("a", "expunge", &[]);

    let mut pop = relay.pop3_login("two");
    assert_eq!(pop.uids(), vec![uidl[1].clone()]);
    assert_eq!(pop.retr(1), second);
    pop.quit().expect("quit");
}

fn uidl_stable_after_flags_and_restart(engine: Engine) {
    let relay = Relay::start(Settings::new(engine));
    deliver_n(&relay, "alice", 4, "us");
    let mut pop = relay.pop3_login("alice");
    let uidl = pop.uidl();
    pop.quit().expect("quit");

    let mut py = Py::spawn();
    py.login("a", imap_port(&relay), "alice");
    py.ok("a", "select", &[A::S("INBOX")]);
    py.ok(
        "a",
        "store",
        &[A::S("1:*"), A::S("+FLAGS.SILENT"), A::S("(\\Seen $Tag)")],
    );
    py.ok(
        "a",
        "store",
        &[A::S("2"), A::S("FLAGS.SILENT"), A::S("(\\Answered)")],
    );
    let imap_before = fetch_all(&mut py, "a");
    py.call("a", "logout", &[]);
    let mut pop = relay.pop3_login("alice");
    assert_eq!(pop.uidl(), uidl, "UIDL changed by IMAP flag changes");
    pop.quit().expect("quit");

    relay.stop();
    let relay = relay.restart(Settings::new(engine));
    let mut pop = relay.pop3_login("alice");
    assert_eq!(pop.uidl(), uidl, "UIDL changed by a restart");
    pop.quit().expect("quit");
    py.login("b", imap_port(&relay), "alice");
    py.ok("b", "select", &[A::S("INBOX")]);
    assert_eq!(
        fetch_all(&mut py, "b"),
        imap_before,
        "IMAP state changed by a restart"
    );
}

fn copy_survives_pop3_dele(engine: Engine) {
    let relay = Relay::start(Settings::new(engine));
    let sent = deliver_n(&relay, "bob", 2, "cs");
    let mut py = Py::spawn();
    py.login("a", imap_port(&relay), "bob");
    py.ok("a", "select", &[A::S("INBOX")]);
    let inbox = fetch_all(&mut py, "a");
    let copy = py.ok("a", "copy", &[A::S("1"), A::S("Archive")]);
    let (_, _, to) = copy
        .uid_code("COPYUID")
        .unwrap_or_else(|| panic!("{copy:?}"));
    py.call("a", "logout", &[]);

    let mut pop = relay.pop3_login("bob");
    pop.dele(1);
    pop.dele(2);
    pop.quit().expect("quit");

    let check = |py: &mut Py, s: &str, relay: &Relay| {
        py.login(s, imap_port(relay), "bob");
        let select = py.ok(s, "select", &[A::S("INBOX")]);
        assert_eq!(select.text(), "0", "INBOX after POP3 deleted both");
        py.ok(s, "select", &[A::S("Archive")]);
        let archive = fetch_all(py, s);
        assert_eq!(archive.keys().copied().collect::<Vec<_>>(), to);
        let body = &archive[&to[0]].2;
        assert_eq!(body, &inbox.values().next().expect("first").2);
        assert_eq!(split_received(body).1, &sent[0][..]);
    };
    check(&mut py, "b", &relay);
    // Still there after a restart (the body was not released with the INBOX copy).
    relay.stop();
    let relay = relay.restart(Settings::new(engine));
    check(&mut py, "c", &relay);
}
