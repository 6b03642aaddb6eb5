//! Integration tests of the IMAP server with Python's imaplib (an independent client): the
//! real `relay serve` on port 0, mail delivered over SMTP, read and changed over IMAP, and
//! compared with what POP3 serves of the same INBOX.
//!
//! Every behaviour runs once per I/O engine (`_uring`, `_epoll`).

#[macro_use]
mod common;
mod imap_support;

use common::smtp::message;
use common::tls::TestCert;
use common::{split_received, Engine, Relay, Settings, TEST_PASSWORD};
use imap_support::{bytes, fetch_all, num_after, Py, A};

engine_tests! {
    capability_login_and_inbox_matches_pop3: capability_login_and_inbox_matches_pop3_uring, capability_login_and_inbox_matches_pop3_epoll;
    authenticate_plain_and_loopback_plaintext: authenticate_plain_and_loopback_plaintext_uring, authenticate_plain_and_loopback_plaintext_epoll;
    store_copy_move_expunge: store_copy_move_expunge_uring, store_copy_move_expunge_epoll;
    append_and_folder_management: append_and_folder_management_uring, append_and_folder_management_epoll;
    starttls_and_imaps: starttls_and_imaps_uring, starttls_and_imaps_epoll;
}

// RFC 9051 §6.3.12 (RFC 3501 §6.3.11): APPEND to the selected mailbox SHOULD announce the new
// message with an untagged EXISTS at once. The relay does not; a client's UID STORE/MOVE of
// the APPENDUID before its next NOOP then answers OK and changes nothing.
#[test]
fn append_to_selected_mailbox_announces_exists() {
    let relay = Relay::start(Settings::new(Engine::Epoll));
    let mut py = Py::spawn();
    py.login("a", imap_port(&relay), "one");
    py.ok("a", "select", &[A::S("INBOX")]);
    let append = py.ok(
        "a",
        "append",
        &[
            A::S("INBOX"),
            A::Null,
            A::Null,
            A::B(b"Subject: x\r\n\r\nx\r\n"),
        ],
    );
    assert_eq!(
        append.untagged("EXISTS"),
        vec!["1".to_string()],
        "APPEND response: {append:?}"
    );
    let (_, _, uid) = append.uid_code("APPENDUID").expect("APPENDUID");
    let moved = py.ok(
        "a",
        "uid",
        &[A::S("MOVE"), A::S(&uid[0].to_string()), A::S("Archive")],
    );
    assert!(
        moved.uid_code("COPYUID").is_some(),
        "UID MOVE of the appended UID: {moved:?}"
    );
}

fn imap_port(relay: &Relay) -> u16 {
    relay.listening("imap").expect("imap listener").port()
}

fn deliver_to(relay: &Relay, user: &str, marker: &str) -> Vec<u8> {
    let sent = message(marker, &["line two", ".leading dot", ""]);
    relay.deliver(&[&format!("{user}@example.test")], &sent);
    sent
}

/// Parsed LIST/LSUB lines: (attributes, name).
fn list_entries(reply: &imap_support::Reply) -> Vec<(String, String)> {
    reply
        .data
        .array()
        .iter()
        .filter_map(|item| {
            let line = imap_support::flat(item);
            let close = line.find(')')?;
            let attrs = line[1..close].to_string();
            // `(attrs) "/" name`: the name is the last word, maybe quoted.
            let name = line[close + 1..].trim().split_once(' ')?.1.trim();
            Some((attrs, name.trim_matches('"').to_string()))
        })
        .collect()
}

fn capability_login_and_inbox_matches_pop3(engine: Engine) {
    let relay = Relay::start(Settings::new(engine));
    let sent = [
        deliver_to(&relay, "one", "imap-first"),
        deliver_to(&relay, "one", "imap-second"),
    ];
    let mut py = Py::spawn();
    let hello = py.connect("a", imap_port(&relay));
    let caps = imap_support::flat(hello.get("capabilities"));
    for cap in [
        "IMAP4REV1",
        "IDLE",
        "UIDPLUS",
        "MOVE",
        "SPECIAL-USE",
        "AUTH=PLAIN",
        "STATUS=SIZE",
    ] {
        assert!(caps.contains(cap), "{cap} missing from {caps}");
    }
    assert!(!caps.contains("STARTTLS"), "STARTTLS without [tls]: {caps}");
    assert!(
        !caps.contains("LOGINDISABLED"),
        "loopback must log in in clear: {caps}"
    );
    let bad = py.raw("a", "login", &[A::S("one"), A::S("not-the-password")]);
    assert_eq!(bad.get("error").str(), "error", "wrong password: {bad:?}");
    py.ok("a", "login", &[A::S("one"), A::S(TEST_PASSWORD)]);

    // SPECIAL-USE folders exist from the first login, with their attributes.
    let list = list_entries(&py.ok("a", "list", &[A::S("\"\""), A::S("*")]));
    for (name, attr) in [
        ("Sent", "\\Sent"),
        ("Drafts", "\\Drafts"),
        ("Trash", "\\Trash"),
        ("Junk", "\\Junk"),
        ("Archive", "\\Archive"),
    ] {
        let entry = list.iter().find(|(_, n)| n == name);
        let (attrs, _) = entry.unwrap_or_else(|| panic!("{name} not in {list:?}"));
        assert!(attrs.contains(attr), "{name} lacks {attr}: {attrs}");
    }
    assert!(list.iter().any(|(_, n)| n == "INBOX"), "{list:?}");

    let select = py.ok("a", "select", &[A::S("INBOX")]);
    assert_eq!(select.text(), "2", "EXISTS after SELECT: {select:?}");
    let validity: u64 = select.untagged("UIDVALIDITY")[0]
        .parse()
        .expect("UIDVALIDITY");
    assert!(validity > 0);
    let messages = fetch_all(&mut py, "a");
    assert_eq!(messages.len(), 2, "{messages:?}");

    // What POP3 serves of the same INBOX, in the same order (UID order = delivery order).
    let mut pop = relay.pop3_login("one");
    let retrieved = [pop.retr(1), pop.retr(2)];
    pop.quit().expect("quit");
    for (((uid, (flags, size, body)), retr), sent) in messages.iter().zip(&retrieved).zip(&sent) {
        assert_eq!(body, retr, "BODY[] of UID {uid} differs from POP3 RETR");
        assert_eq!(*size as usize, body.len(), "RFC822.SIZE of UID {uid}");
        let (_, message) = split_received(body);
        assert_eq!(message, &sent[..], "UID {uid}: not the bytes sent");
        assert!(!flags.contains("\\Seen"), "BODY.PEEK set \\Seen: {flags}");
    }
    let uids: Vec<u64> = messages.keys().copied().collect();
    assert!(uids[0] < uids[1], "{uids:?}");

    let envelope = py.ok(
        "a",
        "fetch",
        &[A::S("2"), A::S("(ENVELOPE BODY[HEADER.FIELDS (SUBJECT)])")],
    );
    let text = envelope.text();
    assert!(text.contains("\"imap-second\""), "ENVELOPE subject: {text}");
    assert!(
        text.contains("<imap-second@client.test>"),
        "ENVELOPE message-id: {text}"
    );
    let header = &envelope.literals()[0].1;
    assert_eq!(header, b"Subject: imap-second\r\n\r\n");

    // A non-peek fetch sets \Seen.
    py.ok("a", "fetch", &[A::S("1"), A::S("(BODY[TEXT])")]);
    let flags = py.ok("a", "fetch", &[A::S("1"), A::S("(FLAGS)")]);
    assert!(flags.text().contains("\\Seen"), "{flags:?}");
    let logout = py.call("a", "logout", &[]);
    assert_eq!(logout.typ, "BYE");
}

fn authenticate_plain_and_loopback_plaintext(engine: Engine) {
    // Plaintext auth off: loopback still logs in in clear (no LOGINDISABLED there).
    let mut settings = Settings::new(engine);
    settings.imap_toml = "allow_plaintext_auth = false\n".into();
    let relay = Relay::start(settings);
    let port = imap_port(&relay);
    let mut py = Py::spawn();
    let hello = py.connect("a", port);
    assert!(!imap_support::flat(hello.get("capabilities")).contains("LOGINDISABLED"));
    let auth = py.auth_plain("a", "two", TEST_PASSWORD);
    assert_eq!(auth.get("typ").str(), "OK", "{auth:?}");
    let select = py.ok("a", "select", &[A::S("INBOX")]);
    assert_eq!(select.text(), "0");

    py.connect("b", port);
    let wrong = py.auth_plain("b", "two", "wrong");
    assert_eq!(wrong.get("error").str(), "error", "{wrong:?}");
    assert!(
        imap_support::flat(wrong.get("msg")).contains("AUTHENTICATIONFAILED"),
        "{wrong:?}"
    );
    // A failed login leaves the session unauthenticated.
    let select = py.raw("b", "select", &[A::S("INBOX")]);
    assert!(select.object().contains_key("error"), "{select:?}");
    // Note: LOGINDISABLED for non-loopback peers needs a non-loopback address, which these
    // tests may not use; the session unit tests (src/imap/tests.rs) cover that reply.
}

fn store_copy_move_expunge(engine: Engine) {
    let relay = Relay::start(Settings::new(engine));
    for i in 0..6 {
        deliver_to(&relay, "three", &format!("m{i}"));
    }
    let mut py = Py::spawn();
    py.login("a", imap_port(&relay), "three");
    py.ok("a", "select", &[A::S("INBOX")]);
    let before = fetch_all(&mut py, "a");
    let uids: Vec<u64> = before.keys().copied().collect();
    assert_eq!(uids.len(), 6);
    let u = |i: usize| uids[i].to_string();

    // +FLAGS / -FLAGS / FLAGS, with and without .SILENT.
    let plus = py.ok(
        "a",
        "uid",
        &[
            A::S("STORE"),
            A::S(&u(0)),
            A::S("+FLAGS"),
            A::S("(\\Flagged $Work)"),
        ],
    );
    let text = plus.text();
    assert!(
        text.contains("\\Flagged") && text.contains("$Work"),
        "{text}"
    );
    let silent = py.ok(
        "a",
        "uid",
        &[
            A::S("STORE"),
            A::S(&u(1)),
            A::S("+FLAGS.SILENT"),
            A::S("(\\Answered)"),
        ],
    );
    assert!(
        silent.text().is_empty() || silent.text() == "None" || !silent.text().contains("FLAGS"),
        "{silent:?}"
    );
    py.ok(
        "a",
        "uid",
        &[
            A::S("STORE"),
            A::S(&u(0)),
            A::S("-FLAGS"),
            A::S("(\\Flagged)"),
        ],
    );
    py.ok(
        "a",
        "uid",
        &[
            A::S("STORE"),
            A::S(&u(2)),
            A::S("FLAGS.SILENT"),
            A::S("(\\Seen \\Draft)"),
        ],
    );
    let after = fetch_all(&mut py, "a");
    let flags = |uid: u64| {
        let mut f: Vec<String> = after[&uid].0.split_whitespace().map(String::from).collect();
        f.sort();
        f.join(" ")
    };
    assert_eq!(flags(uids[0]), "$Work");
    assert_eq!(flags(uids[1]), "\\Answered");
    assert_eq!(flags(uids[2]), "\\Draft \\Seen");
    assert_eq!(flags(uids[3]), "");

    // COPY: COPYUID maps the source UIDs to new destination UIDs; the source keeps them.
    let copy = py.ok(
        "a",
        "uid",
        &[
            A::S("COPY"),
            A::S(&format!("{},{}", u(0), u(1))),
            A::S("Archive"),
        ],
    );
    let (archive_validity, from, to) = copy
        .uid_code("COPYUID")
        .unwrap_or_else(|| panic!("no COPYUID: {copy:?}"));
    assert_eq!(from, vec![uids[0], uids[1]]);
    assert_eq!(to.len(), 2);
    // MOVE: COPYUID in an untagged OK, then EXPUNGE of the source.
    let moved = py.ok("a", "uid", &[A::S("MOVE"), A::S(&u(3)), A::S("Trash")]);
    let (_, mfrom, mto) = moved
        .uid_code("COPYUID")
        .unwrap_or_else(|| panic!("no COPYUID for MOVE: {moved:?}"));
    assert_eq!(mfrom, vec![uids[3]]);
    assert_eq!(mto.len(), 1);
    assert_eq!(
        moved.untagged("EXPUNGE"),
        vec!["4".to_string()],
        "{moved:?}"
    );

    // EXPUNGE: \Deleted on 0 and 2. Each EXPUNGE response renumbers the ones after it
    // (RFC 3501 §7.4.1), so replaying them on the client's view must drop exactly those.
    py.ok(
        "a",
        "uid",
        &[
            A::S("STORE"),
            A::S(&format!("{},{}", u(0), u(2))),
            A::S("+FLAGS.SILENT"),
            A::S("(\\Deleted)"),
        ],
    );
    let expunge = py.ok("a", "expunge", &[]);
    let mut view = vec![uids[0], uids[1], uids[2], uids[4], uids[5]];
    for seq in expunge.data.array().iter().map(imap_support::flat) {
        let seq: usize = seq.parse().unwrap_or_else(|_| panic!("EXPUNGE {seq:?}"));
        assert!(
            seq >= 1 && seq <= view.len(),
            "EXPUNGE {seq} outside 1..={}",
            view.len()
        );
        view.remove(seq - 1);
    }
    assert_eq!(view, vec![uids[1], uids[4], uids[5]], "{expunge:?}");
    // UID EXPUNGE removes only the named UID although another is \Deleted too.
    py.ok(
        "a",
        "uid",
        &[
            A::S("STORE"),
            A::S(&format!("{},{}", u(4), u(5))),
            A::S("+FLAGS.SILENT"),
            A::S("(\\Deleted)"),
        ],
    );
    let uid_expunge = py.ok("a", "uid", &[A::S("EXPUNGE"), A::S(&u(5))]);
    assert_eq!(
        uid_expunge.untagged("EXPUNGE"),
        vec!["3".to_string()],
        "{uid_expunge:?}"
    );
    let left: Vec<u64> = fetch_all(&mut py, "a").keys().copied().collect();
    assert_eq!(left, vec![uids[1], uids[4]]);

    // The copies: same bytes, flags carried, UIDs as COPYUID said.
    let archive = py.ok("a", "select", &[A::S("Archive")]);
    assert_eq!(
        archive.untagged("UIDVALIDITY"),
        vec![archive_validity.to_string()]
    );
    let copies = fetch_all(&mut py, "a");
    assert_eq!(copies.keys().copied().collect::<Vec<_>>(), to);
    assert_eq!(copies[&to[0]].2, before[&uids[0]].2);
    assert_eq!(copies[&to[1]].2, before[&uids[1]].2);
    assert!(copies[&to[0]].0.contains("$Work"), "{:?}", copies[&to[0]]);
    assert!(
        copies[&to[1]].0.contains("\\Answered"),
        "{:?}",
        copies[&to[1]]
    );
    py.ok("a", "select", &[A::S("Trash")]);
    let trash = fetch_all(&mut py, "a");
    assert_eq!(trash.keys().copied().collect::<Vec<_>>(), mto);
    assert_eq!(trash[&mto[0]].2, before[&uids[3]].2);
    // POP3 sees the INBOX that is left.
    let mut pop = relay.pop3_login("three");
    assert_eq!(pop.stat().0, 2);
    pop.quit().expect("quit");
}

fn append_and_folder_management(engine: Engine) {
    let relay = Relay::start(Settings::new(engine));
    let mut py = Py::spawn();
    py.login("a", imap_port(&relay), "alice");
    let body = b"From: a@example.test\r\nSubject: appended\r\n\r\nbody \xff bytes\r\n".to_vec();
    py.ok("a", "create", &[A::S("Projects")]);
    py.ok("a", "create", &[A::S("Projects/2026")]);
    let append = py.ok(
        "a",
        "append",
        &[
            A::S("Projects/2026"),
            A::S("(\\Flagged $Later)"),
            A::S("\"05-Nov-2026 10:20:30 +0200\""),
            A::B(&body),
        ],
    );
    let (validity, _, uid) = append
        .uid_code("APPENDUID")
        .unwrap_or_else(|| panic!("no APPENDUID: {append:?}"));
    assert_eq!(uid.len(), 1);
    let status = py.ok(
        "a",
        "status",
        &[
            A::S("Projects/2026"),
            A::S("(MESSAGES UIDNEXT UIDVALIDITY UNSEEN SIZE)"),
        ],
    );
    let text = status.text();
    assert_eq!(num_after(&text, "MESSAGES"), Some(1), "{text}");
    assert_eq!(num_after(&text, "UIDNEXT"), Some(uid[0] + 1), "{text}");
    assert_eq!(num_after(&text, "UIDVALIDITY"), Some(validity), "{text}");
    assert_eq!(num_after(&text, "UNSEEN"), Some(1), "{text}");
    assert_eq!(num_after(&text, "SIZE"), Some(body.len() as u64), "{text}");

    py.ok("a", "select", &[A::S("Projects/2026")]);
    let fetched = py.ok(
        "a",
        "uid",
        &[
            A::S("FETCH"),
            A::S(&uid[0].to_string()),
            A::S("(INTERNALDATE FLAGS BODY.PEEK[])"),
        ],
    );
    let (head, got) = &fetched.literals()[0];
    assert_eq!(got, &body, "appended bytes");
    assert!(
        head.contains("INTERNALDATE \"05-Nov-2026 10:20:30 +0200\""),
        "{head}"
    );
    assert!(
        head.contains("\\Flagged") && head.contains("$Later"),
        "{head}"
    );
    py.ok("a", "close", &[]);

    // RENAME moves the children; DELETE removes; LIST "%" shows one level.
    py.ok("a", "rename", &[A::S("Projects"), A::S("Work")]);
    let all = list_entries(&py.ok("a", "list", &[A::S("\"\""), A::S("*")]));
    let names: Vec<&str> = all.iter().map(|(_, n)| n.as_str()).collect();
    assert!(
        names.contains(&"Work") && names.contains(&"Work/2026"),
        "{names:?}"
    );
    assert!(
        !names.iter().any(|n| n.starts_with("Projects")),
        "{names:?}"
    );
    let top = list_entries(&py.ok("a", "list", &[A::S("\"\""), A::S("%")]));
    assert!(top.iter().all(|(_, n)| !n.contains('/')), "{top:?}");
    let status = py.ok(
        "a",
        "status",
        &[A::S("Work/2026"), A::S("(MESSAGES UIDVALIDITY)")],
    );
    assert_eq!(num_after(&status.text(), "MESSAGES"), Some(1));
    assert_eq!(num_after(&status.text(), "UIDVALIDITY"), Some(validity));

    py.ok("a", "subscribe", &[A::S("Work/2026")]);
    let lsub = list_entries(&py.ok("a", "lsub", &[A::S("\"\""), A::S("*")]));
    assert!(lsub.iter().any(|(_, n)| n == "Work/2026"), "{lsub:?}");
    py.ok("a", "unsubscribe", &[A::S("Work/2026")]);
    let lsub = list_entries(&py.ok("a", "lsub", &[A::S("\"\""), A::S("*")]));
    assert!(!lsub.iter().any(|(_, n)| n == "Work/2026"), "{lsub:?}");

    py.ok("a", "delete", &[A::S("Work/2026")]);
    let missing = py.call("a", "status", &[A::S("Work/2026"), A::S("(MESSAGES)")]);
    assert_eq!(missing.typ, "NO", "{missing:?}");
    let names = list_entries(&py.ok("a", "list", &[A::S("\"\""), A::S("*")]));
    assert!(!names.iter().any(|(_, n)| n == "Work/2026"), "{names:?}");
    // Re-created: a new UIDVALIDITY, so clients do not mix the old UIDs with the new ones.
    py.ok("a", "create", &[A::S("Work/2026")]);
    let status = py.ok(
        "a",
        "status",
        &[A::S("Work/2026"), A::S("(MESSAGES UIDVALIDITY)")],
    );
    assert_eq!(num_after(&status.text(), "MESSAGES"), Some(0));
    assert_ne!(num_after(&status.text(), "UIDVALIDITY"), Some(validity));
    // INBOX cannot be deleted; a duplicate CREATE fails.
    assert_eq!(py.call("a", "delete", &[A::S("INBOX")]).typ, "NO");
    assert_eq!(py.call("a", "create", &[A::S("Work")]).typ, "NO");
}

fn starttls_and_imaps(engine: Engine) {
    let dir = tempfile::tempdir().expect("temp dir");
    let cert = TestCert::generate(dir.path(), "relay");
    let mut settings = Settings::new(engine);
    settings.imap_toml = "tls_listen = [\"127.0.0.1:0\"]\n".into();
    settings.extra_toml = cert.toml();
    let relay = Relay::start(settings);
    let sent = deliver_to(&relay, "bob", "over-tls");
    let cafile = cert.cert_path.to_str().expect("utf-8 path");
    let imaps = relay.listening("imaps").expect("imaps listener");
    let mut py = Py::spawn();

    let hello = py.connect_with("s", imap_port(&relay), "starttls", cafile, "imaplib");
    assert_eq!(hello.get("starttls").at(0).str(), "OK", "{hello:?}");
    let after = imap_support::flat(hello.get("capabilities_after"));
    assert!(
        !after.contains("STARTTLS"),
        "STARTTLS offered again after TLS: {after}"
    );
    assert!(after.contains("AUTH=PLAIN"), "{after}");
    py.ok("s", "login", &[A::S("bob"), A::S(TEST_PASSWORD)]);
    py.ok("s", "select", &[A::S("INBOX")]);
    let over_starttls = fetch_all(&mut py, "s");

    py.connect_with("i", imaps.port(), "ssl", cafile, "imaplib");
    py.ok("i", "login", &[A::S("bob"), A::S(TEST_PASSWORD)]);
    py.ok("i", "select", &[A::S("INBOX")]);
    let over_imaps = fetch_all(&mut py, "i");
    assert_eq!(over_starttls, over_imaps);
    let (_, (_, _, body)) = over_imaps.iter().next().expect("one message");
    assert_eq!(split_received(body).1, &sent[..]);
    let _ = bytes;
}

// RFC 3501 §6.3.4 / RFC 9051 §6.3.4: DELETE of a folder with children removes its messages and
// leaves the name as \Noselect (and LIST "%" must still show the level, §6.3.8). The relay
// must keep the level: LIST "%" shows "A" as not selectable while "A/B" exists.
#[test]
fn delete_parent_leaves_noselect() {
    let relay = Relay::start(Settings::new(Engine::Epoll));
    let mut py = Py::spawn();
    py.login("a", imap_port(&relay), "one");
    py.ok("a", "create", &[A::S("A/B")]);
    py.ok("a", "delete", &[A::S("A")]);
    let top = py.ok("a", "list", &[A::S("\"\""), A::S("%")]);
    let entry = list_entries(&top).into_iter().find(|(_, n)| n == "A");
    let (attrs, _) = entry.unwrap_or_else(|| panic!("LIST % lost the level A: {top:?}"));
    assert!(
        attrs.contains("\\Noselect") || attrs.contains("\\NonExistent"),
        "{attrs}"
    );
}

// RFC 3501 §6.4.4 / RFC 9051 §6.4.4: SUBJECT, FROM, BODY, TEXT, HEADER are search keys every
// server implements.
#[test]
fn search_by_subject() {
    let relay = Relay::start(Settings::new(Engine::Epoll));
    deliver_to(&relay, "one", "findme");
    deliver_to(&relay, "one", "other");
    let mut py = Py::spawn();
    py.login("a", imap_port(&relay), "one");
    py.ok("a", "select", &[A::S("INBOX")]);
    let search = py.ok("a", "search", &[A::Null, A::S("SUBJECT"), A::S("findme")]);
    assert_eq!(search.text(), "1");
    let none = py.ok("a", "search", &[A::Null, A::S("SUBJECT"), A::S("absent")]);
    assert_eq!(none.text(), "");
}
