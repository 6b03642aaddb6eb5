//! Crash tests: the durability contract (docs/ARCHITECTURE.md §4) proven on the real binary.
//!
//! 250 after DATA means the message is on stable storage, so after `kill -9` at any moment:
//! acknowledged ⊆ recovered ⊆ sent, with no duplicates, every recovered message byte-exact,
//! and the relay restarts on the same spool with no manual step. A torn or garbage tail on the
//! newest segment is truncated at start, with a log line saying so.

#[macro_use]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::{
    find, segment_files, split_received, spool_cat, spool_ls, tree, Client, Engine, Relay, Rng,
    Settings,
};

engine_tests! {
    kill9_loses_no_acknowledged_message: kill9_loses_no_acknowledged_message_uring, kill9_loses_no_acknowledged_message_epoll;
    garbage_tail_is_truncated: garbage_tail_is_truncated_uring, garbage_tail_is_truncated_epoll;
}

const CLIENTS: usize = 8;
const CYCLES: usize = 3;
/// Kill once this many messages were acknowledged in cycle N, or after KILL_AFTER (a
/// different point each cycle, so the kill lands in different phases of the group commit).
const KILL_AT_ACKS: [usize; CYCLES] = [300, 120, 450];
const KILL_AFTER: Duration = Duration::from_millis(1500);

/// What the clients sent and what the relay acknowledged, across every cycle.
#[derive(Default)]
struct Ledger {
    /// Message-ID → exact bytes, for every message whose data was (at least partly) sent.
    sent: BTreeMap<String, Vec<u8>>,
    /// queue id → Message-ID, for every 250.
    acked: BTreeMap<String, String>,
}

struct Progress {
    acked: Mutex<usize>,
    changed: Condvar,
}

/// How a client thread ended.
#[derive(Debug)]
#[allow(dead_code)] // the kind is read through Debug in the cycle report
enum Ended {
    /// The stop flag was set between transactions.
    Stopped,
    /// An I/O error: the relay died under it.
    Io(io::ErrorKind),
}

fn message_for(message_id: &str, rng: &mut Rng) -> Vec<u8> {
    let mut text = format!(
        "From: <crash@client.test>\r\n\
         To: <sink@example.test>\r\n\
         Subject: crash {message_id}\r\n\
         Message-ID: <{message_id}>\r\n\
         \r\n\
         marker {}\r\n",
        rng.hex()
    );
    // 0.5–4 KB of body, one line starting with '.', so unstuffing is exercised too.
    let lines = 5 + rng.below(45) as usize;
    for i in 0..lines {
        if i == 2 {
            text.push_str(".dot-stuffed line\r\n");
        }
        let width = 10 + rng.below(70) as usize;
        let fill: String = (0..width)
            .map(|j| (b'a' + ((i + j) % 26) as u8) as char)
            .collect();
        text.push_str(&format!("{i:03} {fill}\r\n"));
    }
    text.into_bytes()
}

/// One client: connect, EHLO, then pipelined transactions until an error or the stop flag.
fn client_loop(
    addr: std::net::SocketAddr,
    tag: String,
    seed: u64,
    ledger: Arc<Mutex<Ledger>>,
    progress: Arc<Progress>,
    stop: Arc<AtomicBool>,
) -> Ended {
    let mut rng = Rng::seeded_from_time(seed);
    let mut run = || -> io::Result<()> {
        let mut client = Client::connect(addr)?;
        let greeting = client.read_reply()?;
        if greeting.code != 220 {
            return Err(io::Error::other(format!("greeting {greeting}")));
        }
        if client.cmd("EHLO crash.client.test")?.code != 250 {
            return Err(io::Error::other("EHLO refused"));
        }
        for n in 0.. {
            if stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            let message_id = format!("{tag}-{n}@client.test");
            let content = message_for(&message_id, &mut rng);
            ledger
                .lock()
                .unwrap()
                .sent
                .insert(message_id.clone(), content.clone());
            let reply = client.transaction_pipelined(
                "crash@client.test",
                &["sink@example.test"],
                &content,
            )?;
            match reply.code {
                250 => {
                    let id = reply.queue_id().ok_or_else(|| {
                        io::Error::other(format!("250 without a queue id: {reply}"))
                    })?;
                    let previous = ledger.lock().unwrap().acked.insert(id.clone(), message_id);
                    assert!(previous.is_none(), "queue id {id} acknowledged twice");
                    *progress.acked.lock().unwrap() += 1;
                    progress.changed.notify_all();
                }
                // Backpressure is allowed: the message is not stored, try the next one.
                452 => {}
                _ => return Err(io::Error::other(format!("unexpected reply {reply}"))),
            }
        }
        Ok(())
    };
    match run() {
        Ok(()) => Ended::Stopped,
        Err(e) if e.kind() == io::ErrorKind::Other => panic!("client {tag}: {e}"),
        Err(e) => Ended::Io(e.kind()),
    }
}

/// Checks the spool against the ledger: every acknowledged message listed exactly once and
/// byte-exact; every listed message one that was sent (byte-exact), none twice.
fn verify(spool: &Path, ledger: &Ledger) {
    let listed = spool_ls(spool);
    let mut ids = BTreeSet::new();
    for entry in &listed {
        assert!(
            ids.insert(entry.id.clone()),
            "queue id {} listed twice",
            entry.id
        );
    }
    for (id, message_id) in &ledger.acked {
        assert!(
            ids.contains(id),
            "acknowledged message {id} ({message_id}) is not in the spool after kill -9 \
             ({} listed, {} acknowledged)",
            listed.len(),
            ledger.acked.len()
        );
    }
    // `relay spool cat` for every listed message, a few processes at a time.
    let next = std::sync::atomic::AtomicUsize::new(0);
    let catted: Mutex<BTreeMap<usize, Vec<u8>>> = Mutex::new(BTreeMap::new());
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(entry) = listed.get(i) else { break };
                let stored = spool_cat(spool, &entry.id);
                catted.lock().unwrap().insert(i, stored);
            });
        }
    });
    let catted = catted.into_inner().unwrap();
    let mut seen_message_ids = BTreeMap::new();
    for (i, entry) in listed.iter().enumerate() {
        let stored = &catted[&i];
        let (_, message) = split_received(stored);
        let message_id = header_message_id(message).unwrap_or_else(|| {
            panic!(
                "stored {} has no Message-ID: {:?}",
                entry.id,
                String::from_utf8_lossy(message)
            )
        });
        if let Some(other) = seen_message_ids.insert(message_id.clone(), entry.id.clone()) {
            panic!(
                "Message-ID {message_id} stored twice: {other} and {}",
                entry.id
            );
        }
        let sent = ledger.sent.get(&message_id).unwrap_or_else(|| {
            panic!(
                "stored {} has a Message-ID no client sent: {message_id}",
                entry.id
            )
        });
        assert!(
            message == &sent[..],
            "stored {} ({message_id}) differs from what was sent\n--- sent ---\n{:?}\n--- stored ---\n{:?}",
            entry.id,
            String::from_utf8_lossy(sent),
            String::from_utf8_lossy(message)
        );
        if let Some(acked_as) = ledger.acked.iter().find(|(_, m)| **m == message_id) {
            assert_eq!(
                acked_as.0, &entry.id,
                "{message_id} acknowledged under another queue id"
            );
        }
    }
}

fn header_message_id(message: &[u8]) -> Option<String> {
    let end = find(message, b"\r\n\r\n")?;
    let headers = std::str::from_utf8(&message[..end]).ok()?;
    headers.split("\r\n").find_map(|l| {
        l.strip_prefix("Message-ID: <")
            .and_then(|v| v.strip_suffix('>'))
            .map(str::to_string)
    })
}

fn kill9_loses_no_acknowledged_message(engine: Engine) {
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut relay = Relay::start(Settings::new(engine));
    for (cycle, &kill_at) in KILL_AT_ACKS.iter().enumerate() {
        let progress = Arc::new(Progress {
            acked: Mutex::new(0),
            changed: Condvar::new(),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|t| {
                let (ledger, progress, stop) = (ledger.clone(), progress.clone(), stop.clone());
                let tag = format!("{}-c{cycle}-t{t}", engine.io());
                let addr = relay.addr;
                std::thread::spawn(move || {
                    client_loop(addr, tag, (cycle * 100 + t) as u64, ledger, progress, stop)
                })
            })
            .collect();

        // Wait for the clients' progress (the event), bounded by KILL_AFTER.
        let started = Instant::now();
        let acked = {
            let guard = progress.acked.lock().unwrap();
            let (guard, _) = progress
                .changed
                .wait_timeout_while(guard, KILL_AFTER, |n| *n < kill_at)
                .unwrap();
            *guard
        };
        let status = relay.kill9();
        stop.store(true, Ordering::SeqCst);
        let ends: Vec<Ended> = clients
            .into_iter()
            .map(|c| c.join().expect("client thread"))
            .collect();
        let cut = ends.iter().filter(|e| matches!(e, Ended::Io(_))).count();
        eprintln!(
            "cycle {cycle}: killed after {:?} with {acked} acknowledged this cycle; {cut}/{CLIENTS} clients cut mid-stream: {ends:?}",
            started.elapsed()
        );
        assert!(
            status.code().is_none(),
            "the relay had exited before kill -9: {status:?}"
        );
        assert!(
            acked > 0,
            "cycle {cycle}: no message acknowledged before the kill"
        );
        assert!(
            cut > 0,
            "cycle {cycle}: no client was still sending when the relay was killed"
        );

        // Restart on the same spool: recovery needs no manual step.
        relay = relay.restart(Settings::new(engine));
        let ledger = ledger.lock().unwrap();
        verify(&relay.spool_dir, &ledger);
    }
    // The recovered relay takes new mail and stops cleanly.
    let mut client = relay.client();
    client.ehlo();
    let reply = client
        .transaction(
            "crash@client.test",
            &["sink@example.test"],
            &common::smtp::message("after-crashes", &[]),
        )
        .unwrap();
    assert_eq!(reply.code, 250, "{reply}");
    client.quit();
    relay.stop();
}

fn garbage_tail_is_truncated(engine: Engine) {
    let relay = Relay::start(Settings::new(engine));
    let mut ledger = Ledger::default();
    let mut rng = Rng::seeded_from_time(7);
    // Several connections, so both shards (cores = 2) are likely to hold messages.
    for c in 0..4 {
        let mut client = relay.client();
        client.ehlo();
        for n in 0..5 {
            let message_id = format!("garbage-{}-{c}-{n}@client.test", engine.io());
            let content = message_for(&message_id, &mut rng);
            let reply = client
                .transaction("crash@client.test", &["sink@example.test"], &content)
                .unwrap();
            assert_eq!(reply.code, 250, "{reply}");
            ledger
                .acked
                .insert(reply.queue_id().unwrap(), message_id.clone());
            ledger.sent.insert(message_id, content);
        }
        client.quit();
    }
    relay.stop();

    // Append garbage to the newest segment: a torn record header, then noise.
    let segments = segment_files(&relay.spool_dir);
    let newest = segments
        .iter()
        .max_by_key(|p| {
            (
                std::fs::metadata(p).and_then(|m| m.modified()).ok(),
                (*p).clone(),
            )
        })
        .unwrap_or_else(|| panic!("no *.seg file in the spool:\n{}", tree(&relay.spool_dir)));
    let before = std::fs::metadata(newest).unwrap().len();
    let mut garbage = b"RLYF\x01\x00\x01\x00".to_vec();
    garbage.extend(rng.bytes(1000));
    {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(newest)
            .unwrap();
        file.write_all(&garbage).unwrap();
        file.sync_all().unwrap();
    }

    let again = relay.restart(Settings::new(engine));
    let report = again
        .log_lines()
        .into_iter()
        .find(|l| l.to_ascii_lowercase().contains("truncat"))
        .unwrap_or_else(|| {
            panic!(
                "no log line reports the truncated tail of {}",
                newest.display()
            )
        });
    eprintln!("recovery reported: {report}");
    verify(&again.spool_dir, &ledger);
    assert_eq!(
        again.spool_ls().len(),
        ledger.acked.len(),
        "garbage must not become a message"
    );
    let now = std::fs::metadata(newest).map(|m| m.len()).unwrap_or(0);
    assert!(
        now < before + garbage.len() as u64,
        "{} still holds the garbage ({before} + {} bytes, now {now})",
        newest.display(),
        garbage.len()
    );

    // New messages go after the truncation point and survive another restart.
    let mut client = again.client();
    client.ehlo();
    for n in 0..3 {
        let message_id = format!("garbage-after-{}-{n}@client.test", engine.io());
        let content = message_for(&message_id, &mut rng);
        let reply = client
            .transaction("crash@client.test", &["sink@example.test"], &content)
            .unwrap();
        assert_eq!(reply.code, 250, "{reply}");
        ledger
            .acked
            .insert(reply.queue_id().unwrap(), message_id.clone());
        ledger.sent.insert(message_id, content);
    }
    client.quit();
    again.stop();
    let third = again.restart(Settings::new(engine));
    verify(&third.spool_dir, &ledger);
    assert_eq!(third.spool_ls().len(), ledger.acked.len());
    third.stop();
}
