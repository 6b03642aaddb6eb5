//! A second real sync client (issue 16): interimap (QRESYNC) synchronising a relay account
//! with a Dovecot store both ways. Dovecot runs as interimap's local side through a tunnel
//! (`doveadm exec imap`, its own config and Maildir in a temp dir, no daemon, no port); the
//! relay is the remote side over loopback. Both sides hold several folders with flags,
//! keywords, 8-bit and large bodies; after a first sync, flags change and messages are
//! expunged on both sides, and after a second sync each side is read back over imaplib
//! (the relay over TCP, Dovecot over the same tunnel) and compared byte for byte.

#[macro_use]
mod common;
mod imap_support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::{describe, run_with_timeout, Engine, Relay, Settings, COMMAND_TIMEOUT, TEST_PASSWORD};
use imap_support::{fetch_all, flat, Py, A};

engine_tests! {
    interimap_both_ways: interimap_both_ways_uring, interimap_both_ways_epoll;
}

/// SELECT (QRESYNC (uidvalidity modseq)) reports the flags changed since the client's modseq
/// (RFC 7162 §3.2.5). The relay's store link answered "nothing changed" when the folder had not
/// changed since the SELECT's own snapshot, so a resyncing client (interimap) missed every
/// flag change made while it was away. The engines share this code: uring only.
#[test]
fn qresync_select_reports_flags_changed_while_away() {
    let relay = Relay::start(Settings::new(Engine::Uring));
    let port = relay.listening("imap").expect("imap listener").port();
    let mut py = Py::spawn();
    py.login("r", port, "one");
    for i in 0..3 {
        let m = mail(&format!("resync-{i}"), "", b"body\r\n");
        append(&mut py, "r", "INBOX", "", &m);
    }
    let status = py.ok(
        "r",
        "status",
        &[A::S("INBOX"), A::S("(UIDVALIDITY HIGHESTMODSEQ)")],
    );
    let text = status.text();
    let validity = imap_support::num_after(&text, "UIDVALIDITY").expect("UIDVALIDITY");
    let modseq = imap_support::num_after(&text, "HIGHESTMODSEQ").expect("HIGHESTMODSEQ");
    // Changed while the client is away: flags on UID 2, and nothing else.
    py.ok("r", "select", &[A::S("INBOX")]);
    store(&mut py, "r", 2, "+FLAGS.SILENT", "(\\Flagged $Later)");
    py.ok("r", "close", &[]);

    py.ok("r", "enable", &[A::S("QRESYNC")]);
    let select = py.ok(
        "r",
        "_simple_command",
        &[
            A::S("SELECT"),
            A::S(&format!("INBOX (QRESYNC ({validity} {modseq}))")),
        ],
    );
    let fetches = select.untagged("FETCH");
    assert_eq!(fetches.len(), 1, "one changed message: {select:?}");
    let fetch = &fetches[0];
    assert!(
        fetch.contains("UID 2") && fetch.contains("\\Flagged") && fetch.contains("$Later"),
        "{fetch}"
    );
}

const DOVEADM: &str = "/usr/bin/doveadm";
const INTERIMAP: &str = "/usr/bin/interimap";

/// Folder → its messages as (flags without `\Recent`, sorted; body), sorted.
type Snapshot = BTreeMap<String, Vec<(String, Vec<u8>)>>;

/// The folders of a session (LIST "" "*", selectable ones) and their messages.
fn snapshot(py: &mut Py, s: &str) -> Snapshot {
    let list = py.ok(s, "list", &[A::S("\"\""), A::S("*")]);
    let mut out = Snapshot::new();
    for line in list.data.array().iter().map(flat) {
        if line.to_ascii_lowercase().contains("\\noselect") {
            continue;
        }
        let name = line
            .rsplit(' ')
            .next()
            .unwrap_or_else(|| panic!("no name in LIST {line}"))
            .trim_matches('"')
            .to_string();
        // Read-only (EXAMINE): reading must not change \Recent or \Seen.
        py.ok(s, "select", &[A::S(&name), A::T(true)]);
        let mut messages: Vec<(String, Vec<u8>)> = fetch_all(py, s)
            .into_values()
            .map(|(flags, _, body)| (norm_flags(&flags), body))
            .collect();
        messages.sort();
        out.insert(name, messages);
    }
    out
}

fn norm_flags(flags: &str) -> String {
    let mut words: Vec<&str> = flags
        .split_whitespace()
        .filter(|f| !f.eq_ignore_ascii_case("\\Recent"))
        .collect();
    words.sort_unstable();
    words.join(" ")
}

/// A message with CRLF line ends; `extra` goes between the headers and the body.
fn mail(subject: &str, extra_headers: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "From: <sender@example.test>\r\nTo: <one@example.test>\r\nSubject: {subject}\r\n\
         Message-ID: <{subject}@sync.test>\r\nDate: Sat, 05 Dec 2026 10:00:00 +0000\r\n\
         {extra_headers}\r\n"
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// Every byte value but NUL, CR and LF, in CRLF lines of 64: an 8-bit body.
fn eight_bit_body() -> Vec<u8> {
    let bytes: Vec<u8> = (1..=255u8).filter(|b| *b != b'\r' && *b != b'\n').collect();
    let mut out = b"caf\xc3\xa9 \xe2\x82\xac latin-1: \xe9\xe8\xff\r\n".to_vec();
    for chunk in bytes.chunks(64) {
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// About 3 MiB of 76-character lines, each one different.
fn large_body() -> Vec<u8> {
    let mut out = Vec::with_capacity(3 << 20);
    let mut i = 0u64;
    while out.len() < 3 << 20 {
        let line = format!(
            "{i:08} {}",
            "0123456789abcdefghijklmnopqrstuvwxyz".repeat(2)
        );
        out.extend_from_slice(&line.as_bytes()[..76]);
        out.extend_from_slice(b"\r\n");
        i += 1;
    }
    out
}

fn append(py: &mut Py, s: &str, folder: &str, flags: &str, message: &[u8]) {
    let flags = if flags.is_empty() {
        A::Null
    } else {
        A::S(flags)
    };
    py.ok(s, "append", &[A::S(folder), flags, A::Null, A::B(message)]);
}

/// The UID of the message whose body is `body` in the selected folder.
fn uid_of(py: &mut Py, s: &str, body: &[u8]) -> u64 {
    let all = fetch_all(py, s);
    let found: Vec<u64> = all
        .iter()
        .filter(|(_, (_, _, b))| b == body)
        .map(|(uid, _)| *uid)
        .collect();
    assert_eq!(found.len(), 1, "{s}: {} copies of a message", found.len());
    found[0]
}

fn store(py: &mut Py, s: &str, uid: u64, op: &str, flags: &str) {
    py.ok(
        s,
        "uid",
        &[A::S("STORE"), A::S(&uid.to_string()), A::S(op), A::S(flags)],
    );
}

fn expunge(py: &mut Py, s: &str, uid: u64) {
    store(py, s, uid, "+FLAGS.SILENT", "(\\Deleted)");
    py.ok(s, "expunge", &[]);
}

/// A Dovecot store reached by a command that runs its IMAP server preauthenticated.
struct Dovecot {
    /// The shell command (a script in the temp dir).
    command: String,
}

impl Dovecot {
    fn new(dir: &Path) -> Dovecot {
        use std::os::unix::fs::PermissionsExt;
        let root = dir.join("dovecot");
        for sub in ["", "run", "state", "mail"] {
            std::fs::create_dir_all(root.join(sub)).expect("mkdir");
        }
        // Dovecot will not serve mail as root: its process runs as nobody, so the Maildir must
        // be reachable for it.
        for path in [dir, root.as_path()] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        std::fs::set_permissions(root.join("mail"), std::fs::Permissions::from_mode(0o777))
            .expect("chmod");
        let r = root.display();
        let config = root.join("dovecot.conf");
        std::fs::write(
            &config,
            format!(
                "ssl = no\nmail_location = maildir:{r}/mail\nbase_dir = {r}/run\n\
                 state_dir = {r}/state\nlog_path = {r}/dovecot.log\n\
                 mail_uid = nobody\nmail_gid = nogroup\nfirst_valid_uid = 1\n\
                 namespace inbox {{\n  inbox = yes\n  separator = /\n}}\n"
            ),
        )
        .expect("write dovecot.conf");
        // interimap's tunnel is a socket pair, and Dovecot's imap refuses a socket on stdin
        // ("must not be started from inetd"): pipes in between.
        let script = root.join("imap.sh");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\ncat | env -i PATH=/usr/bin:/bin HOME={r} USER=tester \
                 {DOVEADM} -c {} exec imap | cat\n",
                config.display()
            ),
        )
        .expect("write imap.sh");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        Dovecot {
            command: script.display().to_string(),
        }
    }
}

fn interimap(config: &Path, home: &Path) -> String {
    let output = run_with_timeout(
        Command::new(INTERIMAP)
            .arg(format!("--config={}", config.display()))
            .arg("--debug")
            .env("XDG_CONFIG_HOME", home)
            .env("XDG_DATA_HOME", home),
        COMMAND_TIMEOUT,
    );
    // The debug log holds the IMAP traffic of both sides (literals elided).
    let log = std::fs::read(home.join("debug.log")).unwrap_or_default();
    let tail = String::from_utf8_lossy(&log[log.len().saturating_sub(20_000)..]);
    assert!(
        output.status.success(),
        "interimap: {}\n--- debug log (tail) ---\n{tail}",
        describe(&output)
    );
    std::fs::remove_file(home.join("debug.log")).expect("rm debug.log");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn interimap_both_ways(engine: Engine) {
    assert!(
        Path::new(INTERIMAP).exists(),
        "{INTERIMAP} is missing: install the Debian package interimap (tests/run.sh does)"
    );
    assert!(
        Path::new(DOVEADM).exists() && Path::new("/usr/lib/dovecot/imap").exists(),
        "Dovecot is missing: install dovecot-core and dovecot-imapd (tests/run.sh does)"
    );
    let started = std::time::Instant::now();
    let relay = Relay::start(Settings::new(engine));
    let port = relay.listening("imap").expect("imap listener").port();
    let dir = tempfile::tempdir().expect("temp dir");
    let dovecot = Dovecot::new(dir.path());
    let mut py = Py::spawn();
    py.login("r", port, "one");
    py.connect_command("d", &dovecot.command);

    // The relay side: INBOX with flags, a keyword, 8-bit and large bodies; a nested folder;
    // a special-use folder.
    let r_plain = mail("relay-plain", "", b"plain body\r\n");
    let r_8bit = mail(
        "relay-8bit",
        "Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n",
        &eight_bit_body(),
    );
    let r_large = mail("relay-large", "", &large_body());
    let r_nested = mail("relay-nested", "", b"in a nested folder\r\n");
    let r_archive = mail("relay-archive", "", b"archived\r\n");
    append(&mut py, "r", "INBOX", "(\\Seen)", &r_plain);
    append(&mut py, "r", "INBOX", "(\\Flagged $Label1)", &r_8bit);
    append(&mut py, "r", "INBOX", "", &r_large);
    py.ok("r", "create", &[A::S("Projects/Relay")]);
    append(
        &mut py,
        "r",
        "Projects/Relay",
        "(\\Answered \\Seen)",
        &r_nested,
    );
    append(&mut py, "r", "Archive", "(\\Seen work)", &r_archive);

    // The Dovecot side: INBOX, a folder of its own with an 8-bit body, a nested folder.
    let d_plain = mail("dovecot-plain", "", b"from dovecot\r\n");
    let d_flagged = mail("dovecot-flagged", "", b"flagged at dovecot\r\n");
    let d_8bit = mail(
        "dovecot-8bit",
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n",
        &eight_bit_body(),
    );
    let d_nested = mail("dovecot-nested", "", b"nested at dovecot\r\n");
    append(&mut py, "d", "INBOX", "", &d_plain);
    append(
        &mut py,
        "d",
        "INBOX",
        "(\\Flagged \\Seen urgent)",
        &d_flagged,
    );
    py.ok("d", "create", &[A::S("Local")]);
    append(&mut py, "d", "Local", "(\\Draft)", &d_8bit);
    py.ok("d", "create", &[A::S("Projects/Dove")]);
    append(&mut py, "d", "Projects/Dove", "(\\Seen)", &d_nested);

    let home = dir.path().join("interimap");
    std::fs::create_dir_all(&home).expect("mkdir");
    let config = home.join("config");
    std::fs::write(
        &config,
        format!(
            "database = {db}\nlogfile = {log}\n\n\
             [local]\ntype = tunnel\ncommand = {command}\nnull-stderr = YES\n\n\
             [remote]\ntype = imap\nhost = 127.0.0.1\nport = {port}\nSTARTTLS = NO\n\
             username = one\npassword = {TEST_PASSWORD}\ncompress = NO\n",
            db = home.join("sync.db").display(),
            log = home.join("debug.log").display(),
            command = dovecot.command,
        ),
    )
    .expect("write interimap config");

    let log = interimap(&config, &home);
    eprintln!("first sync:\n{log}");
    let relay_side = snapshot(&mut py, "r");
    let dovecot_side = snapshot(&mut py, "d");
    assert_same(&relay_side, &dovecot_side, "after the first sync");
    let expect = |side: &Snapshot, folder: &str, flags: &str, body: &[u8]| {
        let messages = side
            .get(folder)
            .unwrap_or_else(|| panic!("no folder {folder}: {:?}", side.keys()));
        assert!(
            messages.iter().any(|(f, b)| f == flags && b == body),
            "{folder}: no message {:?} with flags {flags:?}; there are {:?}",
            String::from_utf8_lossy(&body[..body.len().min(200)]),
            messages
                .iter()
                .map(|(f, b)| (f, b.len()))
                .collect::<Vec<_>>()
        );
    };
    for side in [&relay_side, &dovecot_side] {
        assert_eq!(side["INBOX"].len(), 5);
        expect(side, "INBOX", "\\Seen", &r_plain);
        expect(side, "INBOX", "$Label1 \\Flagged", &r_8bit);
        expect(side, "INBOX", "", &r_large);
        expect(side, "INBOX", "", &d_plain);
        expect(side, "INBOX", "\\Flagged \\Seen urgent", &d_flagged);
        expect(side, "Projects/Relay", "\\Answered \\Seen", &r_nested);
        expect(side, "Archive", "\\Seen work", &r_archive);
        expect(side, "Local", "\\Draft", &d_8bit);
        expect(side, "Projects/Dove", "\\Seen", &d_nested);
    }

    // Changes on both sides: flags set and cleared, keywords, expunges, a new message.
    py.ok("r", "select", &[A::S("INBOX")]);
    let uid = uid_of(&mut py, "r", &d_plain);
    store(&mut py, "r", uid, "+FLAGS.SILENT", "(\\Seen $Label2)");
    let uid = uid_of(&mut py, "r", &r_8bit);
    store(&mut py, "r", uid, "-FLAGS.SILENT", "(\\Flagged)");
    let uid = uid_of(&mut py, "r", &d_flagged);
    expunge(&mut py, "r", uid);
    py.ok("r", "select", &[A::S("Projects/Relay")]);
    let r_new = mail("relay-new", "", b"written after the first sync\r\n");
    append(&mut py, "r", "Projects/Relay", "(\\Flagged)", &r_new);
    py.ok("r", "close", &[]);

    py.ok("d", "select", &[A::S("INBOX")]);
    let uid = uid_of(&mut py, "d", &r_large);
    store(&mut py, "d", uid, "+FLAGS.SILENT", "(\\Answered \\Seen)");
    let uid = uid_of(&mut py, "d", &r_plain);
    expunge(&mut py, "d", uid);
    py.ok("d", "select", &[A::S("Local")]);
    let uid = uid_of(&mut py, "d", &d_8bit);
    store(&mut py, "d", uid, "FLAGS.SILENT", "(\\Seen later)");
    py.ok("d", "select", &[A::S("Archive")]);
    let uid = uid_of(&mut py, "d", &r_archive);
    expunge(&mut py, "d", uid);
    py.ok("d", "close", &[]);

    let log = interimap(&config, &home);
    eprintln!("second sync:\n{log}");
    let relay_side = snapshot(&mut py, "r");
    let dovecot_side = snapshot(&mut py, "d");
    assert_same(&relay_side, &dovecot_side, "after the second sync");
    for side in [&relay_side, &dovecot_side] {
        assert_eq!(side["INBOX"].len(), 3, "INBOX: {:?}", side["INBOX"].len());
        expect(side, "INBOX", "$Label2 \\Seen", &d_plain);
        expect(side, "INBOX", "$Label1", &r_8bit);
        expect(side, "INBOX", "\\Answered \\Seen", &r_large);
        expect(side, "Projects/Relay", "\\Answered \\Seen", &r_nested);
        expect(side, "Projects/Relay", "\\Flagged", &r_new);
        assert!(side["Archive"].is_empty(), "Archive: {:?}", side["Archive"]);
        expect(side, "Local", "\\Seen later", &d_8bit);
        expect(side, "Projects/Dove", "\\Seen", &d_nested);
    }
    // A third run finds nothing to do and changes nothing.
    interimap(&config, &home);
    assert_eq!(snapshot(&mut py, "r"), relay_side, "a sync without changes");
    eprintln!("interimap test took {:?}", started.elapsed());
}

fn assert_same(relay: &Snapshot, dovecot: &Snapshot, when: &str) {
    let names = |s: &Snapshot| s.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(relay), names(dovecot), "folders {when}");
    for (folder, ours) in relay {
        let theirs = &dovecot[folder];
        let summary = |m: &[(String, Vec<u8>)]| {
            m.iter()
                .map(|(f, b)| format!("[{f}] {} bytes", b.len()))
                .collect::<Vec<_>>()
        };
        assert!(
            ours == theirs,
            "{folder} differs {when}:\nrelay:   {:?}\ndovecot: {:?}",
            summary(ours),
            summary(theirs)
        );
    }
}
