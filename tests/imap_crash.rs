//! IMAP state across restarts and `kill -9`: a tagged OK means the change is durable, so
//! after SIGKILL at any moment every answered APPEND, STORE, MOVE and EXPUNGE is there (and
//! nothing else changed), and UIDVALIDITY, UIDs, flags and folders are those of before.
//!
//! The kill moment is random but seeded: the seed is printed, and `IMAP_CRASH_SEED=<n>`
//! replays a run.

#[macro_use]
mod common;
mod imap_support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::smtp::message;
use common::{Engine, Relay, Rng, Settings};
use imap_support::{fetch_all, flat, num_after, Py, A};

engine_tests! {
    restart_and_kill9_keep_state: restart_and_kill9_keep_state_uring, restart_and_kill9_keep_state_epoll;
    kill9_under_load_keeps_answered_changes: kill9_under_load_keeps_answered_changes_uring, kill9_under_load_keeps_answered_changes_epoll;
}

const USER: &str = "alice";

fn imap_port(relay: &Relay) -> u16 {
    relay.listening("imap").expect("imap listener").port()
}

fn seed(salt: u64) -> Rng {
    let seed = std::env::var("IMAP_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or_else(|| Rng::seeded_from_time(salt).next());
    eprintln!("IMAP_CRASH_SEED={seed}");
    Rng::new(seed)
}

/// Everything a client can see of the user's store: folder → (UIDVALIDITY, uid → (sorted
/// flags, size, bytes)), plus the LIST and LSUB answers.
type Folder = (u64, BTreeMap<u64, (String, u64, Vec<u8>)>);

fn sorted_flags(flags: &str) -> String {
    let mut f: Vec<&str> = flags
        .split_whitespace()
        .filter(|f| !f.eq_ignore_ascii_case("\\Recent"))
        .collect();
    f.sort();
    f.join(" ")
}

fn snapshot(
    py: &mut Py,
    s: &str,
    port: u16,
) -> (BTreeMap<String, Folder>, Vec<String>, Vec<String>) {
    py.login(s, port, USER);
    let mut lines = |method: &str| -> Vec<String> {
        let reply = py.ok(s, method, &[A::S("\"\""), A::S("*")]);
        let mut v: Vec<String> = reply.data.array().iter().map(flat).collect();
        v.sort();
        v
    };
    let list = lines("list");
    let lsub = lines("lsub");
    let mut folders = BTreeMap::new();
    for line in &list {
        let name = line
            .rsplit(' ')
            .next()
            .expect("name")
            .trim_matches('"')
            .to_string();
        let select = py.ok(s, "select", &[A::S(&name), A::T(true)]);
        let validity: u64 = select.untagged("UIDVALIDITY")[0]
            .parse()
            .expect("UIDVALIDITY");
        let mut messages = fetch_all(py, s);
        for value in messages.values_mut() {
            value.0 = sorted_flags(&value.0);
        }
        folders.insert(name, (validity, messages));
    }
    py.call(s, "logout", &[]);
    (folders, list, lsub)
}

fn restart_and_kill9_keep_state(engine: Engine) {
    let relay = Relay::start(Settings::new(engine));
    for i in 0..4 {
        relay.deliver(
            &[&format!("{USER}@example.test")],
            &message(&format!("keep-{i}"), &[]),
        );
    }
    let port = imap_port(&relay);
    let mut py = Py::spawn();
    py.login("a", port, USER);
    py.ok("a", "create", &[A::S("Lists/rust")]);
    py.ok("a", "subscribe", &[A::S("Lists/rust")]);
    py.ok("a", "select", &[A::S("INBOX")]);
    py.ok(
        "a",
        "store",
        &[A::S("1"), A::S("+FLAGS.SILENT"), A::S("(\\Seen $A)")],
    );
    py.ok(
        "a",
        "store",
        &[A::S("2"), A::S("+FLAGS.SILENT"), A::S("(\\Flagged)")],
    );
    py.ok("a", "copy", &[A::S("1:2"), A::S("Lists/rust")]);
    py.ok(
        "a",
        "_simple_command",
        &[A::S("MOVE"), A::S("3"), A::S("Archive")],
    );
    py.ok(
        "a",
        "append",
        &[
            A::S("Drafts"),
            A::S("(\\Draft)"),
            A::S("\"01-Dec-2026 08:00:00 +0000\""),
            A::B(b"Subject: draft\r\n\r\nx\r\n"),
        ],
    );
    py.call("a", "logout", &[]);
    let before = snapshot(&mut py, "s0", port);
    assert_eq!(before.0["Lists/rust"].1.len(), 2);
    assert_eq!(before.0["Archive"].1.len(), 1);
    assert_eq!(before.0["INBOX"].1.len(), 3);

    relay.stop();
    let relay = relay.restart(Settings::new(engine));
    let after = snapshot(&mut py, "s1", imap_port(&relay));
    assert_eq!(after, before, "state after a clean restart");

    let status = relay.kill9();
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    let relay = relay.restart(Settings::new(engine));
    let after = snapshot(&mut py, "s2", imap_port(&relay));
    assert_eq!(after, before, "state after kill -9");
}

use std::os::unix::process::ExitStatusExt;

/// What the client was told: uid → (bytes, flags) per folder.
#[derive(Default)]
struct Model {
    inbox: BTreeMap<u64, (Vec<u8>, BTreeSet<String>)>,
    archive: BTreeMap<u64, (Vec<u8>, BTreeSet<String>)>,
    /// UIDs answered as expunged or moved away from INBOX.
    gone: BTreeSet<u64>,
    /// The UID the unanswered operation touched (its outcome is unknown).
    uncertain: Option<u64>,
    answered: usize,
}

fn flag_set(text: &str) -> BTreeSet<String> {
    text.split_whitespace()
        .filter(|f| !f.eq_ignore_ascii_case("\\Recent"))
        .map(String::from)
        .collect()
}

fn kill9_under_load_keeps_answered_changes(engine: Engine) {
    let mut rng = seed(41);
    let relay = Relay::start(Settings::new(engine));
    let port = imap_port(&relay);
    let mut py = Py::spawn();
    py.login("a", port, USER);
    let archive = py.ok("a", "status", &[A::S("Archive"), A::S("(UIDVALIDITY)")]);
    let archive_validity = num_after(&archive.text(), "UIDVALIDITY").expect("validity");
    let select = py.ok("a", "select", &[A::S("INBOX")]);
    let inbox_validity: u64 = select.untagged("UIDVALIDITY")[0]
        .parse()
        .expect("UIDVALIDITY");

    // The killer: a seeded moment within the run of ~200 operations.
    let pid = relay.pid() as libc::pid_t;
    let delay = Duration::from_millis(150 + rng.below(2500));
    eprintln!("killing after {delay:?}");
    let killer = std::thread::spawn(move || {
        std::thread::sleep(delay);
        // SAFETY: kill(2) on the relay child's pid, which the test still owns (not reaped).
        unsafe { libc::kill(pid, libc::SIGKILL) };
    });

    let mut model = Model::default();
    let start = Instant::now();
    let mut killed_during: Option<(usize, u64)> = None;
    for op in 0..200 {
        if start.elapsed() > Duration::from_secs(20) {
            break;
        }
        let choice = if model.inbox.len() < 3 {
            0
        } else {
            rng.below(4)
        };
        let target = model
            .inbox
            .keys()
            .nth(rng.below(model.inbox.len().max(1) as u64) as usize)
            .copied();
        let (result, kind) = match (choice, target) {
            (0, _) | (_, None) => {
                let body = format!("Subject: load {op}\r\n\r\n{}\r\n", rng.hex()).into_bytes();
                let keyword = format!("$K{}", rng.below(5));
                let json = py.raw(
                    "a",
                    "append",
                    &[
                        A::S("INBOX"),
                        A::S(&format!("({keyword})")),
                        A::Null,
                        A::B(&body),
                    ],
                );
                // The relay does not announce its own APPEND to the selected mailbox (see
                // imap_server::append_to_selected_mailbox_announces_exists): a NOOP makes the
                // new UID part of the session's view, so later UID commands reach it.
                if !json.get_opt_error() {
                    let noop = py.raw("a", "noop", &[]);
                    if noop.get_opt_error() {
                        model.uncertain = None;
                        killed_during = Some((op, 4));
                        // The APPEND itself was answered: keep it.
                        if let Some((_, _, uids)) =
                            imap_support::Reply::from(&json).uid_code("APPENDUID")
                        {
                            model
                                .inbox
                                .insert(uids[0], (body, BTreeSet::from([keyword])));
                            model.answered += 1;
                        }
                        break;
                    }
                }
                (json, (0, None, Some((body, keyword))))
            }
            (1, Some(uid)) => {
                let keyword = format!("$K{}", rng.below(5));
                let json = py.raw(
                    "a",
                    "uid",
                    &[
                        A::S("STORE"),
                        A::S(&uid.to_string()),
                        A::S("FLAGS.SILENT"),
                        A::S(&format!("(\\Seen {keyword})")),
                    ],
                );
                (json, (1, Some(uid), Some((Vec::new(), keyword))))
            }
            (2, Some(uid)) => {
                let json = py.raw(
                    "a",
                    "uid",
                    &[A::S("MOVE"), A::S(&uid.to_string()), A::S("Archive")],
                );
                (json, (2, Some(uid), None))
            }
            (_, Some(uid)) => {
                let json = py.raw(
                    "a",
                    "uid",
                    &[
                        A::S("STORE"),
                        A::S(&uid.to_string()),
                        A::S("+FLAGS.SILENT"),
                        A::S("(\\Deleted)"),
                    ],
                );
                let json = match json.get_opt_error() {
                    true => json,
                    false => py.raw("a", "uid", &[A::S("EXPUNGE"), A::S(&uid.to_string())]),
                };
                (json, (3, Some(uid), None))
            }
        };
        let (kind, uid, extra) = kind;
        if result.get_opt_error() {
            model.uncertain = uid;
            killed_during = Some((op, kind));
            break;
        }
        let typ = result.get("typ").str().to_string();
        assert_eq!(typ, "OK", "op {op} (kind {kind}): {result:?}");
        model.answered += 1;
        match kind {
            0 => {
                let (body, keyword) = extra.expect("append data");
                let (validity, _, uids) = imap_support::Reply::from(&result)
                    .uid_code("APPENDUID")
                    .unwrap_or_else(|| panic!("{result:?}"));
                assert_eq!(validity, inbox_validity);
                model
                    .inbox
                    .insert(uids[0], (body, BTreeSet::from([keyword])));
            }
            1 => {
                let (_, keyword) = extra.expect("keyword");
                let uid = uid.expect("uid");
                let entry = model.inbox.get_mut(&uid).expect("known uid");
                entry.1 = BTreeSet::from(["\\Seen".to_string(), keyword]);
            }
            2 => {
                let uid = uid.expect("uid");
                let (validity, from, to) = imap_support::Reply::from(&result)
                    .uid_code("COPYUID")
                    .unwrap_or_else(|| panic!("no COPYUID: {result:?}"));
                assert_eq!(validity, archive_validity);
                assert_eq!(from, vec![uid]);
                let moved = model.inbox.remove(&uid).expect("known uid");
                model.archive.insert(to[0], moved);
                model.gone.insert(uid);
            }
            _ => {
                let uid = uid.expect("uid");
                model.inbox.remove(&uid);
                model.gone.insert(uid);
            }
        }
    }
    killer.join().expect("killer thread");
    eprintln!(
        "{} operations answered, killed during op {killed_during:?} after {:?}",
        model.answered,
        start.elapsed()
    );
    let status = relay.wait_exit(Duration::from_secs(30));
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    let relay = relay.restart(Settings::new(engine));
    let port = imap_port(&relay);

    let mut check = Py::spawn();
    check.login("c", port, USER);
    let select = check.ok("c", "select", &[A::S("INBOX")]);
    assert_eq!(
        select.untagged("UIDVALIDITY"),
        vec![inbox_validity.to_string()]
    );
    let inbox = fetch_all(&mut check, "c");
    let archive = check.ok("c", "select", &[A::S("Archive")]);
    assert_eq!(
        archive.untagged("UIDVALIDITY"),
        vec![archive_validity.to_string()]
    );
    let archived = fetch_all(&mut check, "c");

    for (uid, (body, flags)) in &model.inbox {
        let got = inbox.get(uid);
        if model.uncertain == Some(*uid) {
            continue;
        }
        let (got_flags, _, got_body) = got.unwrap_or_else(|| panic!("INBOX UID {uid} lost"));
        assert_eq!(got_body, body, "INBOX UID {uid} bytes");
        let mut got_flags = flag_set(got_flags);
        got_flags.remove("\\Deleted"); // a STORE \Deleted answered, its EXPUNGE killed
        assert_eq!(&got_flags, flags, "INBOX UID {uid} flags");
    }
    for uid in &model.gone {
        assert!(
            !inbox.contains_key(uid),
            "INBOX UID {uid} expunged/moved but back"
        );
    }
    // Nothing the client was not told of, but for the one unanswered APPEND or MOVE.
    let extra = |have: &BTreeMap<u64, (String, u64, Vec<u8>)>,
                 known: &BTreeMap<u64, (Vec<u8>, BTreeSet<String>)>| {
        have.keys()
            .filter(|uid| !known.contains_key(uid) && model.uncertain != Some(**uid))
            .copied()
            .collect::<Vec<u64>>()
    };
    let inbox_extra = extra(&inbox, &model.inbox);
    let archive_extra = extra(&archived, &model.archive);
    let killed_kind = killed_during.map(|(_, kind)| kind);
    assert!(
        inbox_extra.is_empty() || (inbox_extra.len() == 1 && killed_kind == Some(0)),
        "INBOX has UIDs {inbox_extra:?} no answered operation made (killed during {killed_during:?})"
    );
    assert!(
        archive_extra.is_empty() || (archive_extra.len() == 1 && killed_kind == Some(2)),
        "Archive has UIDs {archive_extra:?} no answered operation made (killed during {killed_during:?})"
    );
    for (uid, (body, flags)) in &model.archive {
        let (got_flags, _, got_body) = archived
            .get(uid)
            .unwrap_or_else(|| panic!("Archive UID {uid} lost"));
        assert_eq!(got_body, body, "Archive UID {uid} bytes");
        assert_eq!(&flag_set(got_flags), flags, "Archive UID {uid} flags");
    }
    if killed_during.is_none() {
        eprintln!("the kill landed after the last operation (checked at rest)");
    }
}

trait ErrorCheck {
    fn get_opt_error(&self) -> bool;
}

impl ErrorCheck for common::json::Json {
    fn get_opt_error(&self) -> bool {
        matches!(self, common::json::Json::Obj(map) if map.contains_key("error"))
    }
}
