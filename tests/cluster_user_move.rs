//! `relay user move NAME --to NODE` end to end: real `relay serve` nodes on 127.0.0.2… with
//! the directory in a real PostgreSQL (tests/common/services.rs), Python's imaplib and
//! poplib as the clients (tests/py/user_move_client.py).
//!
//! - bea, homed on A, has mail in INBOX and in Work (a copy, an APPEND with flags and a
//!   date, flags set, an expunge leaving a gap). After the move IMAP on B, and through C's
//!   proxy, shows the same folders, subscriptions, UIDVALIDITY, UIDNEXT, UIDs, flags,
//!   INTERNALDATEs and bodies byte for byte; POP3 the same messages; A holds nothing; mail
//!   sent to A after the move arrives once on B.
//! - kill -9 of A or of B at each step (during the copy, frozen before the switch, after the
//!   switch before the delete; the move pauses there through its debug-build seam,
//!   `move-pause-STEP` in A's spool), restart, run the move again: every message once on B,
//!   none on A, none lost. Mail sent to A while the user is frozen is answered 451.
//! - POP3 UIDLs stay what they were through moves (A → B → C), proxies, kill -9 and
//!   compaction on the target, and mail delivered after a move gets a UIDL of its own.

#[macro_use]
mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::cluster::{free_port, Cluster};
use common::json::Json;
use common::services::Postgres;
use common::smtp::message;
use common::{
    describe, relay_bin, run_with_timeout, Engine, Relay, Settings, COMMAND_TIMEOUT, TEST_PASSWORD,
};

const WAIT: Duration = Duration::from_secs(60);

struct Listeners {
    pop3: SocketAddr,
    imap: SocketAddr,
}

/// The nodes, their fixed client listeners and the directory.
struct Net {
    pg: Postgres,
    cluster: Cluster,
    listeners: Vec<Listeners>,
    engine: Engine,
}

impl Net {
    fn new(names: &[&str], engine: Engine) -> Net {
        let pg = Postgres::start();
        let cluster = Cluster::new(names, "");
        let listeners = cluster
            .nodes
            .iter()
            .map(|n| Listeners {
                pop3: SocketAddr::new(n.ip, free_port(n.ip)),
                imap: SocketAddr::new(n.ip, free_port(n.ip)),
            })
            .collect();
        let net = Net {
            pg,
            cluster,
            listeners,
            engine,
        };
        // The schema and bea, homed on A, before any node starts.
        let config = net.node_dir("a").join("relay.toml");
        std::fs::write(
            &config,
            net.settings("a").raw_config.clone().expect("config"),
        )
        .expect("config");
        cli_ok(&["cluster", "migrate"], &config, "");
        cli_ok(
            &["user", "add", "bea"],
            &config,
            &format!("{TEST_PASSWORD}\n"),
        );
        cli_ok(&["user", "home", "bea", "a"], &config, "");
        net
    }

    fn index(&self, name: &str) -> usize {
        self.cluster
            .nodes
            .iter()
            .position(|n| n.name == name)
            .expect("a node")
    }

    fn node_dir(&self, name: &str) -> &Path {
        self.cluster.node(name).dir.path()
    }

    fn settings(&self, name: &str) -> Settings {
        self.settings_with(name, |_| {})
    }

    /// [`Net::settings`] with `more` applied before the config is written.
    fn settings_with(&self, name: &str, more: impl FnOnce(&mut Settings)) -> Settings {
        let node = self.cluster.node(name);
        let mine = &self.listeners[self.index(name)];
        let section = self.cluster.cluster_toml_with(name, |i| {
            format!(
                "pop3 = \"{}\"\nimap = \"{}\"\n",
                self.listeners[i].pop3, self.listeners[i].imap
            )
        });
        let mut settings = Settings::new(self.engine);
        settings.smtp_listen = format!("{}:{}", node.ip, free_port(node.ip));
        settings.extra_toml = format!(
            "[delivery]\nretry_intervals = [\"300ms\"]\nretry_every = \"300ms\"\n\
             retry_jitter_percent = 0\n{section}\
             [cluster.postgres]\nconninfo = {:?}\n",
            self.pg.conninfo()
        );
        more(&mut settings);
        let mut text = settings.render(&node.dir.path().join("spool"));
        text = text.replacen(
            "[pop3]\nlisten = [\"127.0.0.1:0\"]\n",
            &format!("[pop3]\nlisten = [\"{}\"]\n", mine.pop3),
            1,
        );
        text = text.replacen(
            "[imap]\nlisten = [\"127.0.0.1:0\"]\n",
            &format!("[imap]\nlisten = [\"{}\"]\n", mine.imap),
            1,
        );
        settings.raw_config = Some(text);
        settings
    }

    fn start(&self, name: &str) -> Relay {
        Relay::start_in(
            Arc::clone(&self.cluster.node(name).dir),
            self.settings(name),
        )
    }

    fn imap(&self, name: &str) -> SocketAddr {
        self.listeners[self.index(name)].imap
    }

    fn pop3(&self, name: &str) -> SocketAddr {
        self.listeners[self.index(name)].pop3
    }
}

fn cli(args: &[&str], config: &Path, input: &str) -> Output {
    let mut command = Command::new(relay_bin());
    command
        .args(args)
        .arg("--config")
        .arg(config)
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawn relay");
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("stdin");
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    rx.recv_timeout(COMMAND_TIMEOUT * 3)
        .expect("relay command finished in time")
        .expect("relay command output")
}

fn cli_ok(args: &[&str], config: &Path, input: &str) -> String {
    let output = cli(args, config, input);
    assert!(
        output.status.success(),
        "relay {args:?}: {}",
        describe(&output)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `relay user move bea --to b` against `relay`.
fn move_bea(relay: &Relay, to: &str) -> Output {
    cli(&["user", "move", "bea", "--to", to], &relay.config_path, "")
}

/// tests/py/user_move_client.py's answer.
fn client(command: &str, addr: SocketAddr) -> Json {
    let mut c = Command::new("python3");
    c.arg(common::repo_path("tests/py/user_move_client.py"))
        .arg(command)
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .arg("bea")
        .arg(TEST_PASSWORD);
    let output = run_with_timeout(&mut c, COMMAND_TIMEOUT);
    assert!(output.status.success(), "{command}: {}", describe(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let answer = Json::parse(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(
        answer.get("ok"),
        &Json::Bool(true),
        "{command} at {addr}: {stdout}"
    );
    answer
}

/// The IMAP view (folders, subscriptions, every message) as comparable text.
fn dump(addr: SocketAddr) -> String {
    let answer = client("dump", addr);
    format!("{:?} {:?}", answer.get("folders"), answer.get("subscribed"))
}

/// POP3's messages (bytes, in order).
fn pop3_messages(addr: SocketAddr) -> Vec<String> {
    client("pop3", addr)
        .get("messages")
        .array()
        .iter()
        .map(|m| m.str().to_string())
        .collect()
}

/// Messages bea has on `relay` itself (its admin socket), and whether it lists bea at all.
fn stored_here(relay: &Relay) -> i64 {
    let (status, body) = relay.admin_socket_get("/mailbox");
    assert_eq!(status, 200, "{body}");
    Json::parse(&body)
        .expect("JSON")
        .array()
        .iter()
        .find(|row| row.get("user").str() == "bea")
        .map_or(0, |row| row.get("messages").int())
}

/// bea's mail on A before a move: three deliveries, then the IMAP setup.
fn fill(a: &Relay, net: &Net) -> (String, Vec<String>) {
    for n in 1..=3 {
        let text = message(&format!("move-{n}"), &[".dot-stuffed line", "body"]);
        a.deliver(&["bea@example.test"], &text);
    }
    client("setup", net.imap("a"));
    let before = dump(net.imap("a"));
    for needle in [
        "Work",
        "$Label1",
        "$Project",
        "\\\\Seen",
        "\\\\Answered",
        "14-Nov-2023",
    ] {
        assert!(before.contains(needle), "{needle} not in {before}");
    }
    let pop3 = pop3_messages(net.pop3("a"));
    assert_eq!(pop3.len(), 2, "INBOX after the expunge");
    (before, pop3)
}

/// Sends a message to bea through `relay` and waits until B stored it.
fn send_after(relay: &Relay, b: &Relay, marker: &str) {
    send_to_b(relay, b, &message(marker, &["after the move"]));
}

fn send_to_b(relay: &Relay, b: &Relay, text: &[u8]) {
    let id = relay.deliver(&["bea@example.test"], text);
    b.log()
        .wait_for(WAIT, |l| {
            l.contains("stored for a peer") && l.contains(&format!(".{id}"))
        })
        .unwrap_or_else(|| panic!("{id} never reached B:\n{}", b.log().render()));
}

fn moved_with_identity_kept(engine: Engine) {
    let net = Net::new(&["a", "b", "c"], engine);
    let a = net.start("a");
    let b = net.start("b");
    let _c = net.start("c");
    let (before, pop3) = fill(&a, &net);

    // An IMAP session open on A through the move.
    let mut held = Command::new("python3")
        .arg(common::repo_path("tests/py/user_move_client.py"))
        .args([
            "hold",
            &net.imap("a").ip().to_string(),
            &net.imap("a").port().to_string(),
        ])
        .args(["bea", TEST_PASSWORD])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut held_out = std::io::BufReader::new(held.stdout.take().expect("stdout"));
    let mut line = String::new();
    std::io::BufRead::read_line(&mut held_out, &mut line).expect("ready");
    assert_eq!(line.trim(), "ready");

    let out = String::from_utf8_lossy(&{
        let o = move_bea(&a, "b");
        assert!(o.status.success(), "{}", describe(&o));
        o.stdout
    })
    .into_owned();
    assert!(out.contains("bea is homed on b"), "{out}");
    assert_eq!(
        net.pg
            .psql("relay", "SELECT home FROM users WHERE name = 'bea'")
            .trim(),
        "b"
    );

    // The session open on A during the move sees no expunge of the deleted store: its
    // requests are refused (NO [UNAVAILABLE]), and the client logs in again (to B).
    {
        use std::io::{Read, Write};
        held.stdin
            .take()
            .expect("stdin")
            .write_all(b"go\n")
            .expect("go");
        let mut rest = String::new();
        held_out.read_to_string(&mut rest).expect("held output");
        let answer = Json::parse(rest.trim()).unwrap_or_else(|e| panic!("{e}: {rest}"));
        let _ = held.wait();
        let text = format!("{answer:?}");
        assert!(!text.contains("EXPUNGE"), "{text}");
        assert_eq!(answer.get("fetch").array()[0].str(), "NO", "{text}");
        assert!(text.contains("UNAVAILABLE"), "{text}");
    }

    // Same folders, subscriptions, UIDVALIDITY, UIDNEXT, UIDs, flags, dates and bytes.
    assert_eq!(dump(net.imap("b")), before, "IMAP on B");
    assert_eq!(dump(net.imap("c")), before, "IMAP through C");
    assert_eq!(dump(net.imap("a")), before, "IMAP through A, now a proxy");
    assert_eq!(pop3_messages(net.pop3("b")), pop3, "POP3 on B");
    assert_eq!(stored_here(&a), 0, "bea's mail left on A");
    assert_eq!(stored_here(&b), 4, "bea's mail on B");

    // Mail to A now goes to B, once.
    send_after(&a, &b, "after-1");
    let now = pop3_messages(net.pop3("b"));
    assert_eq!(now.len(), 3);
    assert_eq!(&now[..2], &pop3[..]);

    // A second run finds nothing to do; moving to a node that does not exist is refused.
    let again = move_bea(&a, "b");
    assert!(again.status.success(), "{}", describe(&again));
    let unknown = move_bea(&a, "zz");
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("not one of cluster.nodes"),
        "{}",
        describe(&unknown)
    );
    assert_eq!(stored_here(&b), 5);
}

engine_tests! {
    moved_with_identity_kept: moved_with_identity_kept_uring, moved_with_identity_kept_epoll;
}

/// POP3's listing: the UIDL response's lines (`n uidl`, number order) and every message's
/// bytes, as Python's poplib saw them.
fn pop3_listing(addr: SocketAddr) -> (Vec<String>, Vec<String>) {
    let answer = client("pop3", addr);
    let listing = answer
        .get("listing")
        .array()
        .iter()
        .map(|l| l.str().to_string())
        .collect();
    let messages = answer
        .get("messages")
        .array()
        .iter()
        .map(|m| m.str().to_string())
        .collect();
    (listing, messages)
}

/// The UIDL of each listing line.
fn uidls_of(listing: &[String]) -> Vec<String> {
    listing
        .iter()
        .map(|l| l.split_once(' ').expect("n uidl").1.to_string())
        .collect()
}

/// Issue 20: a POP3 client that leaves mail on the server (every phone) must not fetch the
/// mailbox again because it moved. bea's INBOX on A lists UIDLs; after `user move` to B the
/// same numbers list the same UIDLs with the same bytes, on B and through a proxy (C, and A
/// now), after a kill -9 of B, and after a second move (B → C). Mail delivered after the
/// move lists a UIDL of its own, distinct from every kept one.
#[test]
fn pop3_uidls_survive_moves_and_restarts() {
    let net = Net::new(&["a", "b", "c"], Engine::Epoll);
    let a = net.start("a");
    let mut b = net.start("b");
    let c = net.start("c");
    for n in 1..=4 {
        a.deliver(
            &["bea@example.test"],
            &message(&format!("uidl-{n}"), &[".dot-stuffed line", "body"]),
        );
    }
    let (listing, bytes) = pop3_listing(net.pop3("a"));
    assert_eq!(listing.len(), 4, "{listing:?}");
    let kept = uidls_of(&listing);

    let out = move_bea(&a, "b");
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(stored_here(&b), 4);
    assert_eq!(
        pop3_listing(net.pop3("b")),
        (listing.clone(), bytes.clone()),
        "on B"
    );
    assert_eq!(
        pop3_listing(net.pop3("c")),
        (listing.clone(), bytes.clone()),
        "through C"
    );
    assert_eq!(
        pop3_listing(net.pop3("a")),
        (listing.clone(), bytes.clone()),
        "through A"
    );

    // The UIDLs are in B's spool, not in its memory.
    b.kill9();
    b = b.restart(net.settings("b"));
    assert_eq!(
        pop3_listing(net.pop3("b")),
        (listing.clone(), bytes.clone()),
        "after kill -9 of B"
    );

    // New mail on B: a UIDL of its own.
    send_after(&a, &b, "uidl-after");
    let (after, after_bytes) = pop3_listing(net.pop3("b"));
    assert_eq!(&after[..4], &listing[..], "{after:?}");
    assert_eq!(&after_bytes[..4], &bytes[..]);
    assert_eq!(after.len(), 5, "{after:?}");
    let fresh = uidls_of(&after)[4].clone();
    assert!(!kept.contains(&fresh), "{fresh} is one of {kept:?}");

    // Moved again: the first four keep A's UIDLs, the fifth B's.
    let out = move_bea(&b, "c");
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        pop3_listing(net.pop3("c")),
        (after.clone(), after_bytes.clone()),
        "on C"
    );
    assert_eq!(
        pop3_listing(net.pop3("b")),
        (after.clone(), after_bytes.clone()),
        "through B"
    );
    c.kill9();
    let _c = c.restart(net.settings("c"));
    assert_eq!(
        pop3_listing(net.pop3("c")),
        (after, after_bytes),
        "after kill -9 of C"
    );
}

/// The kept UIDLs live in the imported message frames: compaction on the target copies
/// those frames into a new segment (their segment is mostly garbage: big messages deleted
/// over POP3), and after it, and after a kill -9 that makes recovery read the copies, POP3
/// lists the same UIDLs and bytes.
#[test]
fn pop3_uidls_survive_compaction_on_the_target() {
    let net = Net::new(&["a", "b"], Engine::Epoll);
    let a = net.start("a");
    let compacting = || {
        net.settings_with("b", |s| {
            s.cores = 1;
            s.segment_size = Some("1MiB".into());
            s.compact_interval = Some("1s".into());
        })
    };
    let b = Relay::start_in(Arc::clone(&net.cluster.node("b").dir), compacting());
    for n in 1..=4 {
        a.deliver(
            &["bea@example.test"],
            &message(&format!("uidl-{n}"), &["body"]),
        );
    }
    let (listing, bytes) = pop3_listing(net.pop3("a"));
    assert_eq!(listing.len(), 4);
    let out = move_bea(&a, "b");
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        pop3_listing(net.pop3("b")),
        (listing.clone(), bytes.clone()),
        "on B"
    );

    // Three messages of 600 KiB after the imports fill B's segment past 1 MiB (the writer
    // moves on: the segment is sealed); deleted, they leave it mostly garbage.
    let line = "x".repeat(76);
    let lines: Vec<&str> = vec![line.as_str(); 8000];
    for n in 0..3 {
        send_to_b(&a, &b, &message(&format!("big-{n}"), &lines));
    }
    {
        let mut pop3 = common::pop3::Pop3::login_retrying(
            net.pop3("b"),
            "bea",
            TEST_PASSWORD,
            Duration::from_secs(20),
        );
        assert_eq!(pop3.stat().0, 7);
        for n in 5..=7 {
            pop3.dele(n);
        }
        pop3.quit().expect("QUIT");
    }
    // Until compaction has copied the four imported frames (the only live messages).
    let copied = std::cell::Cell::new(0u64);
    b.log()
        .wait_for(WAIT, |l| {
            if let Some((head, _)) = l.split_once(" message(s) copied") {
                if l.contains("spool compaction:") {
                    let n = head.rsplit(' ').next().and_then(|n| n.parse().ok());
                    copied.set(copied.get() + n.unwrap_or(0));
                }
            }
            copied.get() >= 4
        })
        .unwrap_or_else(|| panic!("no imported frame copied on B:\n{}", b.log().render()));
    assert_eq!(
        pop3_listing(net.pop3("b")),
        (listing.clone(), bytes.clone()),
        "after compaction"
    );
    b.kill9();
    let _b = b.restart(compacting());
    assert_eq!(
        pop3_listing(net.pop3("b")),
        (listing, bytes),
        "after compaction and a kill -9"
    );
}

/// Who is killed at the pause.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Victim {
    Source,
    Target,
}

/// A move paused at `step` (A's seam), `victim` killed with SIGKILL there, restarted, the
/// move run again: bea's mail is on B once, on A not at all.
fn killed_at(step: &str, victim: Victim) {
    let net = Net::new(&["a", "b"], Engine::Epoll);
    let mut a = net.start("a");
    let mut b = net.start("b");
    let (before, pop3) = fill(&a, &net);

    let pause = a.spool_dir.join(format!("move-pause-{step}"));
    std::fs::write(&pause, b"").expect("pause file");
    let config = a.config_path.clone();
    let mover = std::thread::spawn(move || cli(&["user", "move", "bea", "--to", "b"], &config, ""));
    a.wait_log(&["user move paused at", step], WAIT);

    if step == "frozen" {
        // Frozen: a delivery for bea is answered 4xx, nothing stored.
        let mut client = a.client();
        client.ehlo();
        let reply = client
            .transaction(
                "s@example.test",
                &["bea@example.test"],
                &message("frozen", &["x"]),
            )
            .expect("transaction");
        assert!(reply.code / 100 == 4, "frozen: {reply}");
        client.quit();
    }
    match victim {
        Victim::Source => {
            a.kill9();
            let _ = mover.join();
            std::fs::remove_file(&pause).expect("unpause");
            a = a.restart(net.settings("a"));
        }
        Victim::Target => {
            b.kill9();
            std::fs::remove_file(&pause).expect("unpause");
            // The move goes on without B (after the freeze the copy is on B's disk: the
            // switch and the delete go on) or stops (B was needed).
            let _ = mover.join().expect("mover thread");
            b = b.restart(net.settings("b"));
        }
    }
    let out = move_bea(&a, "b");
    assert!(
        out.status.success(),
        "rerun: {}\nA:\n{}",
        describe(&out),
        a.log().render()
    );

    assert_eq!(
        dump(net.imap("b")),
        before,
        "IMAP on B after {step}/{victim:?}"
    );
    assert_eq!(pop3_messages(net.pop3("b")), pop3, "POP3 on B");
    assert_eq!(stored_here(&a), 0, "left on A");
    assert_eq!(stored_here(&b), 4, "on B");
    // Restarting A does not bring anything back.
    a.kill9();
    let a = a.restart(net.settings("a"));
    assert_eq!(stored_here(&a), 0, "back on A after a restart");
    send_after(&a, &b, "after-kill");
    assert_eq!(pop3_messages(net.pop3("b")).len(), 3);
}

#[test]
fn source_killed_during_the_copy() {
    killed_at("copy", Victim::Source);
}

#[test]
fn target_killed_during_the_copy() {
    killed_at("copy", Victim::Target);
}

#[test]
fn source_killed_while_frozen() {
    killed_at("frozen", Victim::Source);
}

#[test]
fn target_killed_while_frozen() {
    killed_at("frozen", Victim::Target);
}

#[test]
fn source_killed_after_the_switch() {
    killed_at("switched", Victim::Source);
}

#[test]
fn target_killed_after_the_switch() {
    killed_at("switched", Victim::Target);
}

/// Mail queued on a third node for the old home while the move runs (A answers 451 while
/// bea is frozen, so C defers it) follows bea to B at C's next retry, without a restart of
/// C, and is stored there once.
#[test]
fn mail_queued_elsewhere_during_the_move_follows_the_user() {
    let net = Net::new(&["a", "b", "c"], Engine::Epoll);
    let a = net.start("a");
    let b = net.start("b");
    let c = net.start("c");
    a.deliver(&["bea@example.test"], &message("before", &["x"]));

    let pause = a.spool_dir.join("move-pause-frozen");
    std::fs::write(&pause, b"").expect("pause file");
    let config = a.config_path.clone();
    let mover = std::thread::spawn(move || cli(&["user", "move", "bea", "--to", "b"], &config, ""));
    a.wait_log(&["user move paused at", "frozen"], WAIT);

    let id = c.deliver(&["bea@example.test"], &message("queued-on-c", &["x"]));
    c.wait_log(&["relay::delivery", &id, "status=\"deferred\""], WAIT);

    std::fs::remove_file(&pause).expect("unpause");
    let out = mover.join().expect("mover thread");
    assert!(out.status.success(), "move: {}", describe(&out));

    b.log()
        .wait_for(Duration::from_secs(30), |l| {
            l.contains("stored for a peer") && l.contains(&format!("c.{id}"))
        })
        .unwrap_or_else(|| panic!("{id} never reached B:\nC:\n{}", c.log().render()));
    c.wait_log(&["the recipient's home node changed; re-routed", &id], WAIT);
    let messages = common::cluster::messages(&client("pop3", net.pop3("b")));
    assert_eq!(
        messages.len(),
        2,
        "the first message and the one queued on C"
    );
    assert_eq!(
        messages
            .iter()
            .filter(|m| common::find(m, b"marker queued-on-c").is_some())
            .count(),
        1,
        "stored once"
    );
    assert_eq!(stored_here(&a), 0, "nothing left on A");
}
