//! `relay mailbox ls [USER] [--json]` against a running relay: mail delivered over SMTP,
//! folders and flags changed over IMAP (a raw exchange), then the figures the command prints
//! checked against what was done; the `/mailbox` routes over TCP want the token.

#[allow(unused_macros)] // one engine: the admin routes run on their own threads, not a shard
mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::json::Json;
use common::{describe, relay_cmd, Engine, Relay, Settings, TEST_PASSWORD};

const TOKEN: &str = "mailbox-admin-token-0123456789";

/// A raw IMAP connection: one tagged command at a time, reading to its tagged answer.
struct Imap {
    reader: BufReader<TcpStream>,
    next: u32,
}

impl Imap {
    fn connect(addr: SocketAddr) -> Imap {
        let stream = TcpStream::connect(addr).expect("connect to IMAP");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut imap = Imap {
            reader: BufReader::new(stream),
            next: 1,
        };
        let greeting = imap.line();
        assert!(greeting.starts_with("* OK"), "{greeting}");
        imap
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).expect("read an IMAP line");
        assert!(n > 0, "the IMAP server closed the connection");
        line
    }

    /// Sends `command`; panics unless its tagged answer is OK. Returns every line read.
    fn ok(&mut self, command: &str) -> Vec<String> {
        let tag = format!("a{}", self.next);
        self.next += 1;
        self.reader
            .get_mut()
            .write_all(format!("{tag} {command}\r\n").as_bytes())
            .expect("write an IMAP command");
        let mut lines = Vec::new();
        loop {
            let line = self.line();
            let done = line.starts_with(&format!("{tag} "));
            lines.push(line);
            if done {
                break;
            }
        }
        let last = lines.last().map(String::as_str).unwrap_or_default();
        assert!(
            last.starts_with(&format!("{tag} OK")),
            "{command}: {lines:?}"
        );
        lines
    }
}

/// A message with `lines` body lines of 70 characters.
fn message(subject: &str, lines: usize) -> Vec<u8> {
    format!(
        "From: sender@example.test\r\nTo: alice@example.test\r\nSubject: {subject}\r\n\r\n{}",
        format!("{}\r\n", "x".repeat(70)).repeat(lines)
    )
    .into_bytes()
}

fn field<'a>(object: &'a Json, key: &str) -> &'a Json {
    object.get(key)
}

#[test]
fn mailbox_ls_shows_users_folders_and_their_figures() {
    let dir = common::new_workdir();
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("write token");
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let mut settings = Settings::new(Engine::Epoll);
    settings.admin_toml = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = {:?}\n",
        token_file.to_str().expect("utf-8")
    );
    let relay = Relay::start_in(dir, settings);

    // Three messages for alice; what each occupies is its stored size (Received + content).
    let ids: Vec<String> = [("one", 2), ("two", 30), ("three", 1)]
        .iter()
        .map(|(subject, len)| relay.deliver(&["alice@example.test"], &message(subject, *len)))
        .collect();
    let sizes: Vec<u64> = ids
        .iter()
        .map(|id| relay.spool_cat(id).len() as u64)
        .collect();
    let total: u64 = sizes.iter().sum();

    let imap_addr = relay.listening("imap").expect("an IMAP listener");
    let mut imap = Imap::connect(imap_addr);
    imap.ok(&format!("LOGIN alice {TEST_PASSWORD}"));
    imap.ok("CREATE Projects");
    let selected = imap.ok("SELECT INBOX");
    assert!(
        selected.iter().any(|l| l.starts_with("* 3 EXISTS")),
        "{selected:?}"
    );
    imap.ok("UID STORE 1 +FLAGS (\\Seen)");
    imap.ok("UID STORE 2 +FLAGS (\\Deleted)");
    imap.ok("UID COPY 3 Projects");
    imap.ok("LOGOUT");

    let config = relay.config_path.to_str().expect("utf-8").to_string();
    let run = |args: &[&str]| {
        let mut all = vec!["mailbox", "ls"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--config", &config]);
        relay_cmd(all)
    };
    let stdout = |args: &[&str]| {
        let output = run(args);
        assert!(output.status.success(), "{args:?}: {}", describe(&output));
        String::from_utf8_lossy(&output.stdout).into_owned()
    };

    // The one user, as JSON: every folder with its counters.
    let text = stdout(&["alice", "--json"]);
    let alice = Json::parse(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(field(&alice, "user").str(), "alice");
    assert_eq!(field(&alice, "configured"), &Json::Bool(true));
    assert_eq!(
        field(&alice, "usage").int(),
        total as i64,
        "a copy stores no bytes"
    );
    assert_eq!(
        field(&alice, "messages").int(),
        4,
        "three in INBOX, one copy"
    );
    assert_eq!(field(&alice, "quota"), &Json::Null);
    let folders = field(&alice, "folders").array();
    let folder = |name: &str| {
        folders
            .iter()
            .find(|f| f.get("name").str() == name)
            .unwrap_or_else(|| panic!("no folder {name}: {text}"))
    };
    let inbox = folder("INBOX");
    let counters = |f: &Json| {
        [
            "messages",
            "unseen",
            "deleted",
            "size",
            "uidvalidity",
            "uidnext",
        ]
        .map(|k| f.get(k).int())
    };
    assert_eq!(
        counters(inbox),
        [3, 2, 1, total as i64, 1, 4],
        "INBOX: {text}"
    );
    assert_eq!(inbox.get("special_use"), &Json::Null);
    assert!(inbox.get("highest_modseq").int() > 0, "{text}");
    let projects = folder("Projects");
    let [messages, unseen, deleted, size, uidvalidity, uidnext] = counters(projects);
    assert_eq!(
        (messages, unseen, deleted, size, uidnext),
        (1, 1, 0, sizes[2] as i64, 2),
        "Projects: {text}"
    );
    assert!(uidvalidity > 1, "a created folder's UIDVALIDITY: {text}");
    assert_eq!(projects.get("subscribed"), &Json::Bool(false));
    // The first login made the SPECIAL-USE folders, subscribed.
    let sent = folder("Sent");
    assert_eq!(sent.get("special_use").str(), "\\Sent");
    assert_eq!(sent.get("subscribed"), &Json::Bool(true));
    assert_eq!(sent.get("messages").int(), 0);

    // The same as a table.
    let table = stdout(&["alice"]);
    assert!(
        table.starts_with(&format!(
            "user alice: 4 messages, {total} bytes used, quota unlimited\n"
        )),
        "{table}"
    );
    let inbox_line = table
        .lines()
        .find(|l| l.starts_with("INBOX "))
        .unwrap_or_else(|| panic!("no INBOX line: {table}"));
    let cells: Vec<&str> = inbox_line.split_whitespace().collect();
    let total_text = total.to_string();
    assert_eq!(
        cells,
        [
            "INBOX",
            "-",
            "no",
            "3",
            "2",
            "1",
            total_text.as_str(),
            "1",
            "4",
            cells[9]
        ],
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("Sent ") && l.contains("\\Sent")),
        "{table}"
    );

    // Every user: the configured ones (no mail yet: nothing) and their quotas.
    let list = stdout(&[]);
    let line = |user: &str| {
        list.lines()
            .find(|l| l.split_whitespace().next() == Some(user))
            .unwrap_or_else(|| panic!("no line for {user}: {list}"))
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        line("alice")[1..4],
        ["4", &total_text, "unlimited"],
        "{list}"
    );
    assert_eq!(line("bob")[1..3], ["0", "0"], "{list}");
    assert_eq!(line(common::QUOTA_USER)[1..4], ["0", "0", "1024"], "{list}");
    let text = stdout(&["--json"]);
    let users = Json::parse(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert!(users.array().len() >= common::TEST_USERS.len(), "{text}");

    // A configured user without mail: INBOX only, with the quota.
    let text = stdout(&[common::QUOTA_USER, "--json"]);
    let small = Json::parse(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(field(&small, "quota").int(), 1024);
    let names: Vec<&str> = field(&small, "folders")
        .array()
        .iter()
        .map(|f| f.get("name").str())
        .collect();
    assert_eq!(names, ["INBOX"]);

    // Unknown and malformed names: a failure with one clear line each.
    let output = run(&["nobody"]);
    assert!(!output.status.success(), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("nobody: no such user"), "{stderr}");
    let output = run(&["../stat"]);
    assert!(!output.status.success(), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("is not a mailbox name"), "{stderr}");

    // Over TCP the routes want the token.
    let addr = relay.admin_addr.expect("admin TCP listener");
    let ten = Duration::from_secs(10);
    let endpoint = relay::admin::client::Endpoint::Tcp(addr);
    let get = |path: &str, token: Option<&str>| {
        let call = relay::admin::client::Call {
            token,
            ..relay::admin::client::Call::get(path, ten)
        };
        relay::admin::client::call(&endpoint, &call)
            .expect("request")
            .0
    };
    assert_eq!(get("/mailbox", None), 401);
    assert_eq!(get("/mailbox/alice", None), 401);
    assert_eq!(get("/mailbox/alice", Some(TOKEN)), 200);
    assert_eq!(get("/mailbox/nobody", Some(TOKEN)), 404);

    relay.stop();
    assert!(
        relay.log().lines().iter().all(|l| !l.contains(TOKEN)),
        "the token is in the log"
    );
    // The server stopped: the command says it cannot ask it.
    let output = run(&["alice"]);
    assert!(!output.status.success(), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no relay is running"), "{stderr}");
}
