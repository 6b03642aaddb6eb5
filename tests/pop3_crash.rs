//! Crash tests of local mailboxes: POP3 deletions and spool compaction under
//! `kill -9`.
//!
//! The contract: DELE takes effect only at QUIT, and the `+OK` to QUIT comes after the
//! deletions are durable; so after `kill -9` at any moment, a deletion answered `+OK` stays,
//! one whose QUIT was never sent never happened, and one whose QUIT was in flight happened
//! entirely or not at all. Compaction rewrites segments under the running server; a kill at
//! any point of it loses no undeleted message, brings back no deleted one, and leaves every
//! message byte-identical to what POP3 served before.

#[macro_use]
mod common;

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pop3::{delete_uids, fetch_mailbox, mark_deleted, uid_set, Pop3};
use common::{
    segment_files, split_received, tree, Client, Engine, Relay, Rng, Settings, TEST_PASSWORD,
};

engine_tests! {
    kill9_after_quit_keeps_deletions: kill9_after_quit_keeps_deletions_uring, kill9_after_quit_keeps_deletions_epoll;
    kill9_before_quit_deletes_nothing: kill9_before_quit_deletes_nothing_uring, kill9_before_quit_deletes_nothing_epoll;
    kill9_racing_quit_is_all_or_nothing: kill9_racing_quit_is_all_or_nothing_uring, kill9_racing_quit_is_all_or_nothing_epoll;
    kill9_during_compaction: kill9_during_compaction_uring, kill9_during_compaction_epoll;
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn small_message(tag: &str, rng: &mut Rng) -> Vec<u8> {
    let mut text = format!(
        "From: <crash@client.test>\r\n\
         To: <alice@example.test>\r\n\
         Subject: pop3 crash {tag}\r\n\
         Message-ID: <{tag}@client.test>\r\n\
         \r\n\
         marker {tag} {}\r\n\
         .a dot-stuffed line\r\n",
        rng.hex()
    );
    for i in 0..(3 + rng.below(20)) {
        text.push_str(&format!("{i:03} {}\r\n", rng.hex()));
    }
    text.into_bytes()
}

/// A 20–50 KB message: 76-character lines of letters, a dot-leading line now and then.
fn big_message(tag: &str, rng: &mut Rng) -> Vec<u8> {
    let target = 20_000 + rng.below(30_000) as usize;
    let mut text = format!(
        "From: <crash@client.test>\r\n\
         To: <mailboxes@example.test>\r\n\
         Subject: compaction {tag}\r\n\
         Message-ID: <{tag}@client.test>\r\n\
         \r\n\
         marker {tag} {}\r\n",
        rng.hex()
    );
    let mut i = 0;
    while text.len() < target {
        if i % 50 == 7 {
            text.push_str(".a dot-stuffed line\r\n");
        }
        let line: String = (0..76)
            .map(|_| (b'a' + rng.below(26) as u8) as char)
            .collect();
        text.push_str(&line);
        text.push_str("\r\n");
        i += 1;
    }
    text.into_bytes()
}

/// Delivers `messages` to alice, checks what POP3 serves, returns uid → served bytes.
fn deliver_to_alice(relay: &Relay, messages: &[Vec<u8>]) -> BTreeMap<String, Vec<u8>> {
    let mut sent = BTreeMap::new();
    for content in messages {
        let id = relay.deliver(&["alice@example.test"], content);
        sent.insert(id, content.clone());
    }
    let served = fetch_mailbox(relay, "alice");
    assert_eq!(
        served.keys().collect::<BTreeSet<_>>(),
        sent.keys().collect::<BTreeSet<_>>()
    );
    for (id, bytes) in &served {
        assert_eq!(
            split_received(bytes).1,
            &sent[id][..],
            "{id}: RETR is not the sent message plus the Received header"
        );
    }
    served
}

/// `user`'s maildrop must hold exactly `expected` (uid → bytes), byte for byte.
fn assert_mailbox(relay: &Relay, user: &str, expected: &BTreeMap<String, Vec<u8>>, when: &str) {
    let now = fetch_mailbox(relay, user);
    let have: BTreeSet<&String> = now.keys().collect();
    let want: BTreeSet<&String> = expected.keys().collect();
    let lost: Vec<_> = want.difference(&have).collect();
    let back: Vec<_> = have.difference(&want).collect();
    assert!(
        lost.is_empty() && back.is_empty(),
        "{when}: {user}'s maildrop is wrong: {} expected, {} present; lost {lost:?}; \
         deleted or unknown but present {back:?}",
        want.len(),
        have.len()
    );
    for (uid, bytes) in &now {
        assert!(
            bytes == &expected[uid],
            "{when}: {user}'s message {uid} changed ({} octets, was {})",
            bytes.len(),
            expected[uid].len()
        );
    }
}

fn pick(rng: &mut Rng, from: &BTreeMap<String, Vec<u8>>, percent: u64) -> BTreeSet<String> {
    from.keys()
        .filter(|_| rng.below(100) < percent)
        .cloned()
        .collect()
}

fn killed(relay: &Relay) {
    let status = relay.kill9();
    assert!(
        status.code().is_none(),
        "the relay had exited before kill -9: {status:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 1. DELE + QUIT answered +OK, then kill -9: the deletions stay

fn kill9_after_quit_keeps_deletions(engine: Engine) {
    let mut rng = Rng::seeded_from_time(31);
    let mut relay = Relay::start(Settings::new(engine));
    let messages: Vec<Vec<u8>> = (0..12)
        .map(|i| small_message(&format!("{}-quit-{i}", engine.io()), &mut rng))
        .collect();
    let mut alice = deliver_to_alice(&relay, &messages);
    let bob_id = relay.deliver(&["bob@example.test"], &small_message("bob-quit", &mut rng));
    let bob = fetch_mailbox(&relay, "bob");

    for round in 0..3 {
        // Delete a different subset each round (at least one), kill at once after the +OK.
        let mut gone = pick(&mut rng, &alice, 40);
        if gone.is_empty() {
            gone.insert(alice.keys().next().unwrap().clone());
        }
        let reply = delete_uids(&relay, "alice", &gone);
        killed(&relay);
        eprintln!("round {round}: killed right after {reply:?}");
        for uid in &gone {
            alice.remove(uid);
        }
        relay = relay.restart(Settings::new(engine));
        assert_mailbox(&relay, "alice", &alice, &format!("round {round}"));
        assert_mailbox(&relay, "bob", &bob, &format!("round {round}"));
        if alice.len() < 2 {
            break;
        }
    }
    assert!(bob.contains_key(&bob_id));
    relay.stop();
}

// ---------------------------------------------------------------------------------------------
// 2. DELE without QUIT, then kill -9: nothing deleted

fn kill9_before_quit_deletes_nothing(engine: Engine) {
    let mut rng = Rng::seeded_from_time(32);
    let relay = Relay::start(Settings::new(engine));
    let messages: Vec<Vec<u8>> = (0..6)
        .map(|i| small_message(&format!("{}-noquit-{i}", engine.io()), &mut rng))
        .collect();
    let alice = deliver_to_alice(&relay, &messages);

    let mut pop = relay.pop3_login("alice");
    let all: BTreeSet<String> = alice.keys().cloned().collect();
    mark_deleted(&mut pop, "alice", &all);
    assert_eq!(pop.stat(), (0, 0), "every message marked");
    pop.ok("NOOP");
    killed(&relay);
    drop(pop);

    let relay = relay.restart(Settings::new(engine));
    relay.wait_log(
        &["maildrops rebuilt", "deletions=0"],
        Duration::from_secs(1),
    );
    assert_mailbox(&relay, "alice", &alice, "after kill -9 before QUIT");
    relay.stop();
}

// ---------------------------------------------------------------------------------------------
// 3. QUIT in flight when kill -9 lands: all of its deletions or none

/// How long after sending QUIT each round kills the relay, in quarters of the measured
/// QUIT-to-`+OK` time.
const RACE_QUARTERS: [u32; 6] = [0, 1, 2, 3, 4, 6];

/// Busy-waits `d` (sub-millisecond precision for choosing a kill moment).
fn spin(d: Duration) {
    let until = Instant::now() + d;
    while Instant::now() < until {
        std::hint::spin_loop();
    }
}

fn kill9_racing_quit_is_all_or_nothing(engine: Engine) {
    let mut rng = Rng::seeded_from_time(33);
    let mut relay = Relay::start(Settings::new(engine));
    let messages: Vec<Vec<u8>> = (0..30)
        .map(|i| small_message(&format!("{}-race-{i}", engine.io()), &mut rng))
        .collect();
    let mut alice = deliver_to_alice(&relay, &messages);
    // Calibration: how long a QUIT with deletions takes to answer here (append, commit).
    let mut latency = Duration::ZERO;
    for _ in 0..3 {
        let first: BTreeSet<String> = [alice.keys().next().unwrap().clone()].into();
        let mut pop = relay.pop3_login("alice");
        mark_deleted(&mut pop, "alice", &first);
        let started = Instant::now();
        let reply = pop.quit().unwrap();
        latency = latency.max(started.elapsed());
        assert!(reply.contains("(1 messages deleted)"), "{reply}");
        alice.remove(first.iter().next().unwrap());
    }
    let mut outcomes = Vec::new();
    for (round, quarters) in RACE_QUARTERS.iter().enumerate() {
        let delay = latency * *quarters / 4;
        let mut gone = pick(&mut rng, &alice, 20);
        if gone.len() < 2 {
            gone.extend(alice.keys().take(2).cloned());
        }
        let mut pop = relay.pop3_login("alice");
        mark_deleted(&mut pop, "alice", &gone);
        // QUIT goes out; the kill follows without waiting for the answer, after a delay
        // that moves the kill across the UPDATE (append, group commit, +OK). The delay is
        // the point here, not a wait for an event.
        pop.send(b"QUIT\r\n").unwrap();
        spin(delay);
        killed(&relay);
        let answer = pop.line().ok();
        drop(pop);
        relay = relay.restart(Settings::new(engine));
        let now = uid_set(&relay, "alice");
        let before: BTreeSet<String> = alice.keys().cloned().collect();
        let after_all: BTreeSet<String> = before.difference(&gone).cloned().collect();
        let outcome = if now == before {
            "none"
        } else if now == after_all {
            "all"
        } else {
            panic!(
                "round {round}: a QUIT of {} deletions took partial effect: {} of {} left \
                 (answer before the kill: {answer:?})",
                gone.len(),
                now.len(),
                before.len()
            );
        };
        if answer.as_deref().is_some_and(|a| a.starts_with("+OK")) {
            assert_eq!(
                outcome, "all",
                "round {round}: +OK was sent, then lost the deletions"
            );
        }
        outcomes.push((delay, gone.len(), outcome, answer));
        if outcome == "all" {
            for uid in &gone {
                alice.remove(uid);
            }
        }
        assert_mailbox(&relay, "alice", &alice, &format!("round {round}"));
        if alice.len() < 3 {
            break;
        }
    }
    eprintln!(
        "QUIT answered within {latency:?}; outcomes (kill delay, deletions, effect, answer \
         read before the kill): {outcomes:?}"
    );
    relay.stop();
}

// ---------------------------------------------------------------------------------------------
// 4. kill -9 while compaction rewrites the spool

/// Where in the compaction cycle a round kills the relay.
#[derive(Debug, Clone, Copy)]
enum KillAt {
    /// After a compaction pass that removed segments is logged (and POP3 was checked on the
    /// running server after it).
    AfterCompaction,
    /// As soon as a `*.seg.tmp` output exists: step 1 of the protocol, writing.
    TempFile,
    /// As soon as a segment that existed at the QUITs is unlinked: step 4, removing sources.
    SourceUnlinked,
    /// Right after the QUITs: wherever the 1-second compaction timer happens to be.
    Immediately,
}

const ROUNDS: [KillAt; 5] = [
    KillAt::AfterCompaction,
    KillAt::TempFile,
    KillAt::SourceUnlinked,
    KillAt::Immediately,
    KillAt::TempFile,
];
/// Messages delivered before the first round, and before each later one.
const FIRST_BATCH: usize = 160;
const LATER_BATCH: usize = 50;
const SENDERS: usize = 4;
const COMPACTION_TIMEOUT: Duration = Duration::from_secs(30);

fn compaction_settings(engine: Engine) -> Settings {
    let mut settings = Settings::new(engine);
    settings.segment_size = Some("1MiB".into());
    settings.compact_interval = Some("1s".into());
    settings
}

/// Delivers `count` big messages over `SENDERS` parallel connections (so both shards get
/// some), each to alice, bob or both. Returns (queue id, content, to alice, to bob).
fn deliver_batch(
    relay: &Relay,
    tag: &str,
    count: usize,
    seed: u64,
) -> Vec<(String, Vec<u8>, bool, bool)> {
    let addr = relay.addr;
    let threads: Vec<_> = (0..SENDERS)
        .map(|t| {
            let tag = format!("{tag}-s{t}");
            std::thread::spawn(move || {
                let mut rng = Rng::seeded_from_time(seed * 100 + t as u64);
                let mut client = Client::greeted(addr);
                client.ehlo();
                let mut out = Vec::new();
                for n in (t..count).step_by(SENDERS) {
                    let content = big_message(&format!("{tag}-{n}"), &mut rng);
                    let roll = rng.below(100);
                    let (to_alice, to_bob) = match roll {
                        0..=44 => (true, false),
                        45..=79 => (false, true),
                        _ => (true, true),
                    };
                    let mut rcpts = Vec::new();
                    if to_alice {
                        rcpts.push("alice@example.test");
                    }
                    if to_bob {
                        rcpts.push("bob@example.test");
                    }
                    let reply = client
                        .transaction("crash@client.test", &rcpts, &content)
                        .unwrap_or_else(|e| panic!("deliver {tag}-{n}: {e}"));
                    assert_eq!(reply.code, 250, "deliver {tag}-{n}: {reply}");
                    out.push((reply.queue_id().unwrap(), content, to_alice, to_bob));
                }
                client.quit();
                out
            })
        })
        .collect();
    threads
        .into_iter()
        .flat_map(|t| t.join().expect("sender thread"))
        .collect()
}

fn temp_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension() == Some(OsStr::new("tmp")) {
                out.push(path);
            }
        }
    }
    out
}

/// Polls the spool directory (no event exists for "a file appeared") until `cond`, or the
/// deadline. True when the condition was met.
fn poll_spool(dir: &Path, timeout: Duration, cond: impl Fn(&Path) -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond(dir) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// Compaction lines (`spool compaction: … N removed …` with N > 0) in the log so far.
fn compactions_logged(relay: &Relay) -> usize {
    relay
        .log_lines()
        .iter()
        .filter(|l| is_compaction_line(l))
        .count()
}

fn is_compaction_line(line: &str) -> bool {
    line.contains("spool compaction:") && !line.contains(" 0 removed")
}

/// Waits for the `n`-th compaction line of this relay's log.
fn wait_compaction(relay: &Relay, n: usize, timeout: Duration) -> Option<String> {
    let seen = Cell::new(0usize);
    relay.log().wait_for(timeout, |l| {
        if is_compaction_line(l) {
            seen.set(seen.get() + 1);
        }
        seen.get() >= n && is_compaction_line(l)
    })
}

/// POP3 sessions that read alice's whole maildrop over and over (login, UIDL, RETR each,
/// QUIT) while compaction rewrites the segments under them; every complete RETR must be
/// byte-identical to what was served before. Ends at `stop` or at the first I/O error (the
/// relay was killed).
struct Reader {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<ReaderReport>,
}

#[derive(Debug, Default)]
struct ReaderReport {
    passes: usize,
    retrieved: usize,
    ended_by: Option<String>,
    failures: Vec<String>,
}

impl Reader {
    fn start(addr: SocketAddr, expected: BTreeMap<String, Vec<u8>>) -> Reader {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut report = ReaderReport::default();
            // At least one whole pass, then until stopped.
            while report.passes == 0 || !flag.load(Ordering::SeqCst) {
                if let Err(e) = Reader::pass(addr, &expected, &mut report) {
                    report.ended_by = Some(e.to_string());
                    break;
                }
            }
            report
        });
        Reader { stop, thread }
    }

    fn pass(
        addr: SocketAddr,
        expected: &BTreeMap<String, Vec<u8>>,
        report: &mut ReaderReport,
    ) -> std::io::Result<()> {
        let mut pop = Pop3::connect(addr)?;
        let reply = pop.login("alice", TEST_PASSWORD)?;
        if reply.starts_with("-ERR [IN-USE]") {
            // The previous pass's close is not processed yet: try again.
            let _ = pop.quit();
            std::thread::sleep(Duration::from_millis(5));
            return Ok(());
        }
        if !reply.starts_with("+OK") {
            report.failures.push(format!("login: {reply}"));
            return Ok(());
        }
        let (status, body) = pop.multi("UIDL")?;
        let Some(body) = body else {
            report.failures.push(format!("UIDL: {status}"));
            return Ok(());
        };
        let listing = String::from_utf8_lossy(&body).into_owned();
        let mut uids = BTreeSet::new();
        for line in listing.split("\r\n").filter(|l| !l.is_empty()) {
            let (n, uid) = line.split_once(' ').unwrap_or((line, ""));
            uids.insert(uid.to_string());
            let Some(want) = expected.get(uid) else {
                report
                    .failures
                    .push(format!("UIDL lists {uid}, which is deleted or unknown"));
                continue;
            };
            match pop.multi(&format!("RETR {n}"))? {
                (_, Some(bytes)) if &bytes == want => report.retrieved += 1,
                (_, Some(bytes)) => report.failures.push(format!(
                    "RETR {n} ({uid}) during compaction: {} octets differ from the {} served before",
                    bytes.len(),
                    want.len()
                )),
                (status, None) => report
                    .failures
                    .push(format!("RETR {n} ({uid}) during compaction: {status}")),
            }
        }
        if uids.len() != expected.len() {
            report.failures.push(format!(
                "UIDL lists {} messages, {} expected",
                uids.len(),
                expected.len()
            ));
        }
        pop.quit()?;
        report.passes += 1;
        Ok(())
    }

    fn finish(self) -> ReaderReport {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("reader thread")
    }
}

/// `relay spool ls` run over and over on the live spool (read-only, while the server and its
/// compactor write): it must always succeed.
struct Lister {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(usize, Vec<String>)>,
}

impl Lister {
    fn start(dir: PathBuf) -> Lister {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut runs = 0;
            let mut failures = Vec::new();
            while !flag.load(Ordering::SeqCst) {
                let out = common::relay_cmd([
                    OsStr::new("spool"),
                    OsStr::new("ls"),
                    OsStr::new("--dir"),
                    dir.as_os_str(),
                ]);
                runs += 1;
                if !out.status.success() {
                    failures.push(common::describe(&out));
                }
            }
            (runs, failures)
        });
        Lister { stop, thread }
    }

    fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("lister thread")
    }
}

/// Checks a reader's report (no wrong bytes, no deleted message listed) and logs it.
fn reader_report(report: ReaderReport, round: usize) -> ReaderReport {
    eprintln!(
        "round {round}: reader: {} full pass(es), {} RETR verified, ended by {:?}",
        report.passes, report.retrieved, report.ended_by
    );
    assert!(
        report.failures.is_empty(),
        "round {round}: POP3 reads during compaction failed: {:#?}",
        report.failures
    );
    report
}

/// The restarted relay's recovery report (the `spool recovery` line and its detail lines).
fn recovery_report(relay: &Relay) -> String {
    relay
        .log_lines()
        .into_iter()
        .skip_while(|l| !l.contains("spool recovery"))
        .take_while(|l| !l.contains("maildrops rebuilt"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn kill9_during_compaction(engine: Engine) {
    let mut rng = Rng::seeded_from_time(34);
    let mut relay = Relay::start(compaction_settings(engine));
    // uid → the bytes POP3 served when the message was new: every later read must match.
    let mut alice: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut bob: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut compactions_seen = 0usize;
    let mut report = Vec::new();

    for (round, kill_at) in ROUNDS.iter().enumerate() {
        // Fresh mail, so every round has new sealed segments for compaction to work on.
        let count = if round == 0 { FIRST_BATCH } else { LATER_BATCH };
        let batch = deliver_batch(
            &relay,
            &format!("{}-r{round}", engine.io()),
            count,
            round as u64,
        );
        let served_alice = fetch_mailbox(&relay, "alice");
        let served_bob = fetch_mailbox(&relay, "bob");
        for (id, content, to_alice, to_bob) in &batch {
            for (to, served, ledger, user) in [
                (*to_alice, &served_alice, &mut alice, "alice"),
                (*to_bob, &served_bob, &mut bob, "bob"),
            ] {
                if !to {
                    assert!(!served.contains_key(id), "{id} is in {user}'s maildrop");
                    continue;
                }
                let bytes = served
                    .get(id)
                    .unwrap_or_else(|| panic!("round {round}: new {id} not in {user}'s maildrop"));
                assert_eq!(split_received(bytes).1, &content[..], "{user} {id}");
                ledger.insert(id.clone(), bytes.clone());
            }
        }
        // Nothing else changed since the last check.
        assert_eq!(served_alice.len(), alice.len(), "round {round}: alice");
        assert_eq!(served_bob.len(), bob.len(), "round {round}: bob");
        let segments = segment_files(&relay.spool_dir);
        if round == 0 {
            assert!(
                segments.len() >= 4,
                "the first batch must fill several 1 MiB segments:\n{}",
                tree(&relay.spool_dir)
            );
        }

        // Delete most of alice's mail and all of bob's, QUIT +OK on both.
        let gone_alice = pick(&mut rng, &alice, 75);
        let gone_bob: BTreeSet<String> = bob.keys().cloned().collect();
        let before = compactions_logged(&relay);
        delete_uids(&relay, "alice", &gone_alice);
        delete_uids(&relay, "bob", &gone_bob);
        for uid in &gone_alice {
            alice.remove(uid);
        }
        bob.clear();

        let mut reader = Some(Reader::start(relay.pop3_addr, alice.clone()));
        let mut lister = Some(Lister::start(relay.spool_dir.clone()));
        let caught = match kill_at {
            KillAt::AfterCompaction => {
                let line =
                    wait_compaction(&relay, before + 1, COMPACTION_TIMEOUT).unwrap_or_else(|| {
                        panic!(
                            "round {round}: no compaction removed a segment within \
                             {COMPACTION_TIMEOUT:?} of the deletions:\n{}",
                            tree(&relay.spool_dir)
                        )
                    });
                eprintln!("round {round}: {line}");
                // Compaction under the running server: POP3 still serves every byte, to the
                // sessions that read during it and to new ones.
                let report = reader_report(reader.take().unwrap().finish(), round);
                let (runs, failures) = lister.take().unwrap().finish();
                eprintln!("round {round}: `relay spool ls` ran {runs} time(s) during compaction");
                assert!(
                    failures.is_empty(),
                    "round {round}: `relay spool ls` on the live spool failed: {failures:#?}"
                );
                assert!(
                    report.ended_by.is_none() && report.passes > 0,
                    "round {round}: the reader did not read through compaction: {report:?}"
                );
                assert_mailbox(&relay, "alice", &alice, &format!("round {round}, live"));
                assert_mailbox(&relay, "bob", &bob, &format!("round {round}, live"));
                true
            }
            KillAt::TempFile => poll_spool(&relay.spool_dir, COMPACTION_TIMEOUT, |d| {
                !temp_files(d).is_empty()
            }),
            KillAt::SourceUnlinked => {
                let at_quit: BTreeSet<PathBuf> = segments.iter().cloned().collect();
                poll_spool(&relay.spool_dir, COMPACTION_TIMEOUT, |d| {
                    let now: BTreeSet<PathBuf> = segment_files(d).into_iter().collect();
                    at_quit.iter().any(|p| !now.contains(p))
                })
            }
            KillAt::Immediately => true,
        };
        let temps = temp_files(&relay.spool_dir).len();
        killed(&relay);
        if let Some(reader) = reader.take() {
            reader_report(reader.finish(), round);
            // Listing a spool whose writer was just killed may fail on a torn tail: not
            // checked here; a running relay's spool is.
        }
        if let Some(lister) = lister.take() {
            let _ = lister.finish();
        }
        compactions_seen += compactions_logged(&relay);
        let segments_at_kill = segment_files(&relay.spool_dir).len();
        report.push(format!(
            "round {round}: kill {kill_at:?} (condition met: {caught}); {} temp file(s) just \
             before the kill; {} segment(s) at the QUITs, {segments_at_kill} after the kill; \
             {} compaction(s) logged by this run",
            temps,
            segments.len(),
            compactions_logged(&relay)
        ));

        relay = relay.restart(compaction_settings(engine));
        eprintln!("round {round}: restarted: {}", recovery_report(&relay));
        assert!(
            temp_files(&relay.spool_dir).is_empty(),
            "round {round}: recovery must remove compaction temporaries:\n{}",
            tree(&relay.spool_dir)
        );
        let when = format!("round {round}, after kill -9 ({kill_at:?})");
        assert_mailbox(&relay, "alice", &alice, &when);
        assert_mailbox(&relay, "bob", &bob, &when);
    }

    // A last pass on the recovered relay: compaction finishes, nothing changes.
    let before = compactions_logged(&relay);
    let gone: BTreeSet<String> = pick(&mut rng, &alice, 50);
    delete_uids(&relay, "alice", &gone);
    for uid in &gone {
        alice.remove(uid);
    }
    if let Some(line) = wait_compaction(&relay, before + 1, COMPACTION_TIMEOUT) {
        eprintln!("final: {line}");
        compactions_seen += 1;
    }
    assert_mailbox(&relay, "alice", &alice, "final, live");
    relay.stop();
    let relay = relay.restart(compaction_settings(engine));
    assert_mailbox(&relay, "alice", &alice, "final, after a clean restart");
    assert_mailbox(&relay, "bob", &bob, "final, after a clean restart");
    relay.stop();

    for line in &report {
        eprintln!("{line}");
    }
    assert!(
        compactions_seen > 0,
        "no compaction ever removed a segment: the test did not exercise compaction"
    );
}
