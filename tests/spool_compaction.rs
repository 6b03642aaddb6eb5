//! Kill -9 during compaction: a spool with a few hundred 10–50 KB messages,
//! delivered to local mailboxes and partly deleted, is compacted in a child process (this test
//! binary re-executed in "child mode", which calls `relay::spool::compact_offline` — what
//! `relay spool compact --dir D` runs), killed with SIGKILL at many moments: spread over the
//! time a whole compaction takes, and right after it reaches given points on disk (a temporary
//! file exists, the k-th source segment is unlinked). After each kill the spool must open with
//! no manual step and:
//!
//! - every live message is present exactly once, its body intact;
//! - every mailbox shows exactly what the acknowledged deletions left (a message deleted
//!   everywhere may still be on disk, but is never resurrected into a mailbox);
//! - compacting it to the end afterwards converges to the same visible state, and reopens clean.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use relay::envelope::{Envelope, MailParams, Origin, QueueId, Recipient};
use relay::spool::{
    compact_offline, CompactionConfig, FsIo, NewMessage, SegmentIo, ShardHandle, Spool, SpoolConfig,
};

const CHILD_ENV: &str = "RELAY_SPOOL_COMPACT_CHILD_DIR";
const SHARDS: usize = 2;
const SEGMENT_SIZE: u64 = 512 << 10;
const MESSAGES: usize = 400;
const KILLS_TIMED: u32 = 12;

/// Child mode: compact the spool named by the environment and exit. A no-op in a normal run.
#[test]
fn compaction_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    match compact_offline(Path::new(&dir)) {
        Ok(report) => println!("{report}"),
        Err(e) => {
            eprintln!("child: {e}");
            std::process::exit(3);
        }
    }
}

fn spawn_child(dir: &Path) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "compaction_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

fn config(dir: &Path) -> SpoolConfig {
    let mut c = SpoolConfig::new(dir);
    c.segment_size = SEGMENT_SIZE;
    c
}

/// Small deterministic generator (SplitMix64).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const BOXES: [&str; 3] = ["alice", "bob", "carol"];

/// What the test wrote: the stored bytes of each message, and what each mailbox must show.
struct Expected {
    bodies: BTreeMap<QueueId, Vec<u8>>,
    mailboxes: BTreeMap<QueueId, Vec<String>>,
    remote: BTreeSet<QueueId>,
    deleted: BTreeSet<(String, QueueId)>,
}

impl Expected {
    /// The liveness rule, restated: delivered to local mailboxes only, all of which deleted it.
    fn garbage(&self, id: QueueId) -> bool {
        let boxes = &self.mailboxes[&id];
        !self.remote.contains(&id)
            && !boxes.is_empty()
            && boxes
                .iter()
                .all(|b| self.deleted.contains(&(b.clone(), id)))
    }

    /// Mailbox → ids it shows.
    fn views(&self) -> BTreeMap<String, BTreeSet<QueueId>> {
        let mut v: BTreeMap<String, BTreeSet<QueueId>> = BTreeMap::new();
        for (id, boxes) in &self.mailboxes {
            for b in boxes {
                if !self.deleted.contains(&(b.clone(), *id)) {
                    v.entry(b.clone()).or_default().insert(*id);
                }
            }
        }
        v
    }
}

fn message(h: &ShardHandle, rng: &mut Rng, n: usize) -> NewMessage {
    let id = h.next_id(SystemTime::now());
    let len = 10_000 + rng.below(40_000) as usize;
    let fill = rng.next() as u8;
    let mut mailboxes: Vec<String> = BOXES
        .iter()
        .filter(|_| rng.below(3) == 0)
        .map(|s| s.to_string())
        .collect();
    if mailboxes.is_empty() {
        mailboxes.push(BOXES[n % 3].to_string());
    }
    NewMessage {
        id,
        arrival_unix_micros: id.micros(),
        origin: Origin {
            client_ip: "192.0.2.9".into(),
            client_port: 2525,
            helo: "kill.example".into(),
            protocol: "ESMTP".into(),
        },
        envelope: Envelope {
            reverse_path: format!("sender{n}@example.org"),
            params: MailParams::default(),
            recipients: mailboxes
                .iter()
                .map(|b| Recipient {
                    address: format!("{b}@example.test"),
                    notify: None,
                    orcpt: None,
                })
                .collect(),
        },
        received_header: format!("Received: from kill.example; id {id}\r\n").into_bytes(),
        body: (0..len).map(|i| fill.wrapping_add((i * 7) as u8)).collect(),
        mailboxes,
        remote: if rng.below(10) == 0 {
            vec!["far@example.com".into()]
        } else {
            Vec::new()
        },
        placements: Vec::new(),
    }
}

/// Builds the spool through the library API: messages on both shards, then POP3-style
/// deletions (batches of one mailbox's ids) of most of each mailbox.
fn build(dir: &Path) -> Expected {
    let (spool, _) = Spool::open(config(dir), SHARDS).unwrap();
    let mut rng = Rng(0x5EED_C0DE);
    let mut exp = Expected {
        bodies: BTreeMap::new(),
        mailboxes: BTreeMap::new(),
        remote: BTreeSet::new(),
        deleted: BTreeSet::new(),
    };
    let mut pending = Vec::new();
    for n in 0..MESSAGES {
        let h = spool.shard(n % SHARDS);
        let m = message(&h, &mut rng, n);
        let mut stored = m.received_header.clone();
        stored.extend_from_slice(&m.body);
        exp.bodies.insert(m.id, stored);
        exp.mailboxes.insert(m.id, m.mailboxes.clone());
        if !m.remote.is_empty() {
            exp.remote.insert(m.id);
        }
        pending.push(h.append_message(m).unwrap());
        if pending.len() == 32 {
            for rx in pending.drain(..) {
                rx.blocking_recv().unwrap().unwrap();
            }
        }
    }
    for rx in pending.drain(..) {
        rx.blocking_recv().unwrap().unwrap();
    }
    for b in BOXES {
        let ids: Vec<QueueId> = exp
            .mailboxes
            .iter()
            .filter(|(_, boxes)| boxes.iter().any(|x| x == b))
            .map(|(id, _)| *id)
            .filter(|_| rng.below(10) < 7)
            .collect();
        for (i, chunk) in ids.chunks(20).enumerate() {
            let h = spool.shard(i % SHARDS);
            h.append_deletion(b.to_string(), chunk.to_vec())
                .unwrap()
                .blocking_recv()
                .unwrap()
                .unwrap();
            for id in chunk {
                exp.deleted.insert((b.to_string(), *id));
            }
        }
    }
    spool.close().unwrap();
    exp
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// `(shard, name)` of every file in the spool.
fn files(dir: &Path) -> BTreeSet<(u8, String)> {
    let io = FsIo::new(dir);
    let mut out = BTreeSet::new();
    for shard in io.list_shards().unwrap_or_default() {
        if let Ok(entries) = fs::read_dir(io.shard_path(shard)) {
            for e in entries.flatten() {
                out.insert((shard, e.file_name().to_string_lossy().into_owned()));
            }
        }
    }
    out
}

/// Opens the spool as a restarted server would and checks everything a reader can see.
/// Returns a short description of the state the kill left.
fn check(dir: &Path, exp: &Expected, original: &BTreeSet<(u8, String)>) -> String {
    let before = files(dir);
    let temps = before.iter().filter(|(_, n)| n.ends_with(".tmp")).count();
    let originals_left = before.intersection(original).count();
    let new = before.difference(original).count() - temps;
    let (spool, report) = Spool::open(config(dir), SHARDS)
        .unwrap_or_else(|e| panic!("open after kill needs no manual step: {e}"));
    let conflicts: usize = report
        .shards
        .iter()
        .map(|s| s.conflicting_duplicates.len())
        .sum();
    assert_eq!(conflicts, 0, "{report}");
    let dups: usize = report.shards.iter().map(|s| s.duplicate_ids.len()).sum();
    check_visible(&spool, exp);
    // Compacting to the end converges to the same visible state.
    let full = CompactionConfig {
        live_percent_below: 100,
        ..CompactionConfig::new(SEGMENT_SIZE)
    };
    spool.compact_with(&full).unwrap();
    spool.compact_with(&full).unwrap();
    check_visible(&spool, exp);
    for (id, _) in exp.bodies.iter().filter(|(id, _)| exp.garbage(**id)) {
        assert!(
            spool.locate(*id).is_none(),
            "garbage {id} left after full compaction"
        );
    }
    spool.close().unwrap();
    let (spool, report) = Spool::open(config(dir), SHARDS).unwrap();
    assert!(report.is_clean(), "{report}");
    check_visible(&spool, exp);
    spool.close().unwrap();
    format!(
        "{originals_left}/{} original segments, {new} new, {temps} temporary, {dups} duplicate ids",
        original.len()
    )
}

fn check_visible(spool: &Spool, exp: &Expected) {
    let replay = spool.replay().unwrap();
    let mut seen = BTreeSet::new();
    for m in &replay.messages {
        assert!(seen.insert(m.id), "{} listed twice", m.id);
        let stored = exp
            .bodies
            .get(&m.id)
            .unwrap_or_else(|| panic!("{} was never stored", m.id));
        assert_eq!(m.body_len, stored.len() as u64);
        assert_eq!(
            &spool.read_body(m.id).unwrap(),
            stored,
            "body of {} differs",
            m.id
        );
    }
    for id in exp.bodies.keys() {
        if !exp.garbage(*id) {
            assert!(seen.contains(id), "live {id} lost");
        }
    }
    // What each mailbox shows: messages first, then deletions (as the mailbox store does).
    let mut views: BTreeMap<String, BTreeSet<QueueId>> = BTreeMap::new();
    for m in &replay.messages {
        for b in &m.mailboxes {
            views.entry(b.clone()).or_default().insert(m.id);
        }
    }
    for (b, id) in &replay.deletions {
        if let Some(v) = views.get_mut(b) {
            v.remove(id);
        }
    }
    views.retain(|_, v| !v.is_empty());
    assert_eq!(views, exp.views(), "a mailbox shows something it must not");
}

/// A condition on the spool's files.
type Ready = dyn Fn(&BTreeSet<(u8, String)>) -> bool;

/// Kills `child` as soon as `ready(files)` holds (or it exits first). True if killed.
fn kill_when(
    child: &mut Child,
    dir: &Path,
    ready: impl Fn(&BTreeSet<(u8, String)>) -> bool,
) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if ready(&files(dir)) {
            child.kill().unwrap();
            child.wait().unwrap();
            return true;
        }
        assert!(Instant::now() < deadline, "child never reached the point");
        std::thread::yield_now();
    }
}

#[test]
fn kill_9_during_compaction_loses_nothing_and_resurrects_nothing() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("spool-kill-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let base = tmp.path().join("base");
    let exp = build(&base);
    let original = files(&base);
    let garbage = exp.bodies.keys().filter(|id| exp.garbage(**id)).count();
    assert!(
        garbage > MESSAGES / 4,
        "enough garbage to compact: {garbage}"
    );

    // A whole compaction, uninterrupted: how long it takes, and that it succeeds.
    let trial = |name: &str| -> PathBuf {
        let d = tmp.path().join(name);
        copy_dir(&base, &d);
        d
    };
    let whole = trial("whole");
    let started = Instant::now();
    let status = spawn_child(&whole).wait().unwrap();
    let full_time = started.elapsed();
    assert!(status.success(), "{status}");
    let removed = original.difference(&files(&whole)).count();
    assert!(removed >= 5, "compaction removed {removed} segments");
    eprintln!("whole compaction in the child: {full_time:?}, {removed} segment(s) removed");
    check(&whole, &exp, &original);

    let mut outcomes = Vec::new();
    // Kills spread over the run's duration.
    for i in 0..KILLS_TIMED {
        let d = trial(&format!("timed-{i}"));
        let mut child = spawn_child(&d);
        std::thread::sleep(full_time * (2 * i + 1) / (2 * KILLS_TIMED));
        let killed = child.try_wait().unwrap().is_none();
        if killed {
            child.kill().unwrap();
        }
        child.wait().unwrap();
        let state = check(&d, &exp, &original);
        outcomes.push(format!("timed {i}: killed={killed}: {state}"));
        fs::remove_dir_all(&d).unwrap();
    }
    // Kills right after given points of the protocol.
    let mut points: Vec<(String, Box<Ready>)> = Vec::new();
    points.push((
        "a temporary file exists".into(),
        Box::new(|f| f.iter().any(|(_, n)| n.ends_with(".tmp"))),
    ));
    for k in [1, 2, removed / 2, removed.saturating_sub(1).max(1)] {
        let original = original.clone();
        points.push((
            format!("{k} source(s) unlinked"),
            Box::new(move |f| original.difference(f).count() >= k),
        ));
    }
    for k in [1, 3] {
        let original = original.clone();
        points.push((
            format!("{k} new segment(s) published"),
            Box::new(move |f| {
                f.difference(&original)
                    .filter(|(_, n)| n.ends_with(".seg"))
                    .count()
                    >= k
            }),
        ));
    }
    let mut killed_at_points = 0;
    for (i, (what, ready)) in points.iter().enumerate() {
        let d = trial(&format!("point-{i}"));
        let mut child = spawn_child(&d);
        let killed = kill_when(&mut child, &d, ready);
        killed_at_points += u32::from(killed);
        let state = check(&d, &exp, &original);
        outcomes.push(format!("after {what}: killed={killed}: {state}"));
        fs::remove_dir_all(&d).unwrap();
    }
    for o in &outcomes {
        eprintln!("{o}");
    }
    assert!(outcomes.len() >= 19, "{outcomes:?}");
    assert!(
        killed_at_points >= 3,
        "most protocol points were reached before the child finished: {outcomes:?}"
    );
}
