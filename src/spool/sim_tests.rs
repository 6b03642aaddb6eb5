//! Seeded simulation: thousands of scenarios of message appends, mailbox deletions, group
//! commits, compactions, injected IO errors, crash points (anywhere, including inside a
//! compaction) and torn writes on [`SimDisk`], each followed by recovery and a checker:
//!
//! - acknowledged ⊆ recovered ⊆ accepted for messages, except that a message that is garbage
//!   under the accepted deletions may be gone (compaction may have dropped it);
//! - every recovered message's meta and stored body are exactly what was appended, and so are
//!   the bytes of every extra copy an interrupted compaction left (listed once all the same);
//! - an acknowledged deletion is applied to every recovered copy of its message (a message is
//!   never resurrected into a mailbox); only accepted deletions are ever applied;
//! - the replay lists every live recovered message exactly once, with exactly its deletions;
//! - recovery never stops with an error on a crash image (only Fatal inputs may);
//! - at the end, two full compactions on the recovered disk drop every garbage message and
//!   orphaned deletion and change nothing a reader can see.
//!
//! The writer core and compaction are driven synchronously (no threads), so a seed replays
//! exactly: `SPOOL_SIM_SEED=<seed> cargo test --lib spool::sim_tests` runs one scenario;
//! `SPOOL_SIM_SCENARIOS=<n>` changes how many run (default 1500, ~15 s in debug on 2 vCPUs);
//! `SPOOL_SIM_CRASH_SEEDS=<n>` how many states the every-crash-point test starts from (30).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::compact::{self, CompactionConfig};
use super::frame::{MailboxDeletion, MessageMeta, SEGMENT_PREAMBLE_LEN};
use super::index::Entry;
use super::inspect;
use super::sim::{SimDisk, SimFaults, SimRng};
use super::writer::{Pending, PendingMessage, ShardWriter};
use super::{recover, Core, Location, Replay, SegmentIo};
use crate::envelope::{Envelope, MailParams, Origin, QueueId, Recipient};

const MAILBOXES: [&str; 3] = ["alice", "bob", "carol"];

/// What the scenarios exercised, so the simulation cannot silently become vacuous.
#[derive(Debug, Default)]
struct Coverage {
    acked: u64,
    failed: u64,
    torn_tails: u64,
    corrupt_frames: u64,
    empty_segments: u64,
    write_errors: u64,
    sync_errors: u64,
    create_errors: u64,
    unacked_recovered: u64,
    deletions_acked: u64,
    deletions_failed: u64,
    compactions: u64,
    compactions_failed: u64,
    crashed_in_compaction: u64,
    segments_compacted: u64,
    garbage_dropped: u64,
    temp_files_removed: u64,
    duplicates_recovered: u64,
    copies_shadowing_deletions: u64,
}

struct Model {
    accepted: HashMap<QueueId, PendingMessage>,
    acked: HashSet<QueueId>,
    accepted_deletions: HashSet<(String, QueueId)>,
    acked_deletions: HashSet<(String, QueueId)>,
    next_micros: u64,
}

impl Model {
    fn new(next_micros: u64) -> Model {
        Model {
            accepted: HashMap::new(),
            acked: HashSet::new(),
            accepted_deletions: HashSet::new(),
            acked_deletions: HashSet::new(),
            next_micros,
        }
    }

    /// The liveness rule, stated independently of `index::is_garbage`: every recipient is
    /// accounted for (local mailboxes, no remote) and every mailbox copy has a deletion.
    fn garbage_under(&self, id: QueueId, deletions: &HashSet<(String, QueueId)>) -> bool {
        let Some(p) = self.accepted.get(&id) else {
            return false;
        };
        p.meta.remote.is_empty()
            && !p.meta.mailboxes.is_empty()
            && p.meta
                .mailboxes
                .iter()
                .all(|m| deletions.contains(&(m.clone(), id)))
    }
}

fn pending(rng: &mut SimRng, id: QueueId, segment_size: u64) -> PendingMessage {
    let body_len = if rng.chance(1, 40) {
        (segment_size + rng.below(segment_size)) as usize
    } else if rng.chance(1, 10) {
        0
    } else {
        rng.below(600) as usize
    };
    let fill = rng.next_u64() as u8;
    let received: Vec<u8> = if rng.chance(1, 8) {
        Vec::new()
    } else {
        format!("Received: by sim; id {id}\r\n").into_bytes()
    };
    let mailboxes: Vec<String> = if rng.chance(1, 8) {
        Vec::new()
    } else {
        MAILBOXES
            .iter()
            .filter(|_| rng.chance(1, 2))
            .map(|m| m.to_string())
            .collect()
    };
    let remote = if rng.chance(1, 6) {
        vec!["far@example.com".to_string()]
    } else {
        Vec::new()
    };
    PendingMessage {
        meta: MessageMeta {
            id,
            arrival_unix_micros: id.micros(),
            origin: Origin {
                client_ip: "198.51.100.1".into(),
                client_port: rng.below(65536) as u16,
                helo: "sim".into(),
                protocol: "ESMTP".into(),
            },
            envelope: Envelope {
                reverse_path: format!("s{}@example.org", rng.below(100)),
                params: MailParams::default(),
                recipients: (0..1 + rng.below(3))
                    .map(|r| Recipient {
                        address: format!("r{r}@example.net"),
                        notify: None,
                        orcpt: None,
                    })
                    .collect(),
            },
            received_len: received.len() as u64,
            mailboxes,
            remote,
        },
        received,
        body: (0..body_len).map(|i| fill.wrapping_add(i as u8)).collect(),
    }
}

/// A POP3 session's QUIT: some messages of one mailbox (mostly acknowledged ones delivered
/// there, sometimes any id, an unknown one, or one it never got).
fn deletion(rng: &mut SimRng, model: &Model) -> MailboxDeletion {
    let mailbox = MAILBOXES[rng.below(3) as usize].to_string();
    let mut candidates: Vec<QueueId> = model
        .acked
        .iter()
        .copied()
        .filter(|id| {
            model.accepted[id].meta.mailboxes.contains(&mailbox)
                && !model.acked_deletions.contains(&(mailbox.clone(), *id))
        })
        .collect();
    candidates.sort();
    let mut ids = Vec::new();
    for _ in 0..1 + rng.below(4) {
        let id = if !candidates.is_empty() && rng.chance(5, 6) {
            candidates[rng.below(candidates.len() as u64) as usize]
        } else if rng.chance(1, 2) && !model.accepted.is_empty() {
            let mut all: Vec<QueueId> = model.accepted.keys().copied().collect();
            all.sort();
            all[rng.below(all.len() as u64) as usize]
        } else {
            QueueId::new(rng.below(1000), 0)
        };
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    MailboxDeletion { mailbox, ids }
}

fn check_record(disk: &SimDisk, loc: &Location, p: &PendingMessage) -> Result<(), String> {
    let back = inspect::read_at(disk, loc).map_err(|e| e.to_string())?;
    if back.meta != p.meta {
        return Err("meta differs".into());
    }
    let mut body = p.received.clone();
    body.extend_from_slice(&p.body);
    if back.body != body {
        return Err("body differs".into());
    }
    Ok(())
}

fn entries(core_index: &super::index::LiveIndex) -> Vec<(QueueId, Entry)> {
    let mut all = Vec::new();
    core_index.for_each(|id, e| all.push((id, e.clone())));
    all.sort_by_key(|(id, _)| *id);
    all
}

/// Checks the recovered (or compacted) state in `core` against the model.
fn check_state(
    disk: &SimDisk,
    core: &Core,
    replay: Option<&Replay>,
    model: &Model,
) -> Result<(), String> {
    let all = entries(&core.index);
    let indexed: HashSet<QueueId> = all.iter().map(|(id, _)| *id).collect();
    for id in &model.acked {
        if !indexed.contains(id) && !model.garbage_under(*id, &model.accepted_deletions) {
            return Err(format!("acknowledged live {id} lost"));
        }
    }
    for (id, e) in &all {
        let Some(p) = model.accepted.get(id) else {
            return Err(format!("recovered {id} was never appended"));
        };
        for loc in std::iter::once(&e.location).chain(e.copies.iter()) {
            check_record(disk, loc, p).map_err(|err| format!("{id} at {loc:?}: {err}"))?;
        }
        for m in &e.mailboxes {
            let pair = (m.name.to_string(), *id);
            if model.acked_deletions.contains(&pair) && !m.deleted {
                return Err(format!(
                    "acknowledged deletion of {id} in {} undone",
                    m.name
                ));
            }
            if m.deleted && !model.accepted_deletions.contains(&pair) {
                return Err(format!("{id} deleted in {} without a deletion", m.name));
            }
        }
        if e.is_garbage() != model.garbage_under(*id, &deleted_pairs(&all)) {
            return Err(format!("{id}: index and model disagree on garbage"));
        }
    }
    if let Some(replay) = replay {
        let mut seen = HashSet::new();
        for m in &replay.messages {
            if !seen.insert(m.id) {
                return Err(format!("replay lists {} twice", m.id));
            }
            let p = &model.accepted[&m.id];
            let stored = (p.received.len() + p.body.len()) as u64;
            if m.mailboxes != p.meta.mailboxes
                || m.remote != p.meta.remote
                || m.body_len != stored
                || m.sender != p.meta.envelope.reverse_path
                || m.recipients != p.meta.envelope.recipients.len()
            {
                return Err(format!("replay of {} differs from what was stored", m.id));
            }
        }
        let live: HashSet<QueueId> = all
            .iter()
            .filter(|(_, e)| !e.is_garbage())
            .map(|(id, _)| *id)
            .collect();
        if seen != live {
            return Err("replay does not list exactly the live messages".into());
        }
        let expected: HashSet<(String, QueueId)> = all
            .iter()
            .filter(|(id, _)| live.contains(id))
            .flat_map(|(id, e)| {
                e.mailboxes
                    .iter()
                    .filter(|m| m.deleted)
                    .map(move |m| (m.name.to_string(), *id))
            })
            .collect();
        let got: HashSet<(String, QueueId)> = replay.deletions.iter().cloned().collect();
        if got != expected || got.len() != replay.deletions.len() {
            return Err("replay deletions differ from the index".into());
        }
    }
    Ok(())
}

fn deleted_pairs(all: &[(QueueId, Entry)]) -> HashSet<(String, QueueId)> {
    all.iter()
        .flat_map(|(id, e)| {
            e.mailboxes
                .iter()
                .filter(|m| m.deleted)
                .map(move |m| (m.name.to_string(), *id))
        })
        .collect()
}

/// Recovers `disk`, checks the invariants, and returns the shared side for the next run.
fn recover_and_check(
    disk: &SimDisk,
    shards: usize,
    segment_size: u64,
    model: &Model,
    cov: &mut Coverage,
) -> Result<(Arc<Core>, Vec<super::recovery::ShardResume>), String> {
    let rec = recover(disk, shards).map_err(|e| format!("recovery failed: {e}"))?;
    let replay = rec.replay.clone();
    let report = rec.report.clone();
    let io: Arc<dyn SegmentIo> = Arc::new(disk.clone());
    let (core, _, resume) = Core::new(io, rec, segment_size, true);
    cov.torn_tails += report.torn_tails() as u64;
    cov.corrupt_frames += report.corrupt_frames() as u64;
    for s in &report.shards {
        cov.empty_segments += s.empty_segments.len() as u64;
        cov.temp_files_removed += s.temp_segments.len() as u64;
        cov.duplicates_recovered += s.duplicate_ids.len() as u64;
        if !s.conflicting_duplicates.is_empty() {
            return Err(format!(
                "duplicates with different bytes: {:?}",
                s.conflicting_duplicates
            ));
        }
    }
    core.index.for_each(|id, e| {
        if !model.acked.contains(&id) {
            cov.unacked_recovered += 1;
        }
        if !e.copies.is_empty() && e.mailboxes.iter().any(|m| m.deleted) {
            cov.copies_shadowing_deletions += 1;
        }
    });
    check_state(disk, &core, Some(&replay), model).map_err(|e| format!("{e}\n{report}"))?;
    Ok((core, resume))
}

fn compaction_config(rng: &mut SimRng, segment_size: u64) -> CompactionConfig {
    CompactionConfig {
        live_percent_below: [50, 100][rng.below(2) as usize],
        output_segment_size: [segment_size / 2, segment_size, 4 * segment_size]
            [rng.below(3) as usize],
        sync_every: [256, 1 << 20][rng.below(2) as usize],
    }
}

fn run_scenario(seed: u64, cov: &mut Coverage) -> Result<(), String> {
    let mut rng = SimRng::new(seed);
    let shards = 1 + rng.below(2) as usize;
    let segment_size = [512u64, 2048, 16 << 10][rng.below(3) as usize];
    let mut disk = SimDisk::new(rng.next_u64(), SimFaults::default());
    let mut model = Model::new(1_000_000);
    let generations = 1 + rng.below(4);
    for _ in 0..generations {
        let (core, resume) = recover_and_check(&disk, shards, segment_size, &model, cov)?;
        let faults = if rng.chance(1, 2) {
            SimFaults::default()
        } else {
            SimFaults {
                write_error: (rng.below(2), 12),
                sync_error: (rng.below(2), 12),
                create_error: (rng.below(2), 8),
            }
        };
        disk.set_faults(faults);
        if rng.chance(3, 4) {
            disk.die_after_ops(1 + rng.below(80));
        }
        let mut writers: Vec<ShardWriter> = resume
            .iter()
            .enumerate()
            .map(|(shard, r)| ShardWriter::new(shard as u8, Arc::clone(&core), r.next_seq))
            .collect();
        let steps = rng.below(16);
        for _ in 0..steps {
            if !disk.is_alive() {
                break;
            }
            let action = rng.below(20);
            if action < 4 {
                let cfg = compaction_config(&mut rng, segment_size);
                match compact::run(&core, &cfg) {
                    Ok(report) => {
                        cov.compactions += 1;
                        cov.segments_compacted += report.segments_removed.len() as u64;
                        cov.garbage_dropped += report.messages_dropped;
                        // Everything live is still readable through the index.
                        if disk.is_alive() {
                            for id in &model.acked {
                                if model.garbage_under(*id, &model.accepted_deletions) {
                                    continue;
                                }
                                let p = &model.accepted[id];
                                let body = core
                                    .read_body(*id)
                                    .map_err(|e| format!("after compaction, {id}: {e}"))?;
                                if body[..p.received.len()] != p.received[..]
                                    || body[p.received.len()..] != p.body[..]
                                {
                                    return Err(format!("after compaction, {id}: body differs"));
                                }
                            }
                        }
                    }
                    Err(_) if !disk.is_alive() => cov.crashed_in_compaction += 1,
                    Err(_) => cov.compactions_failed += 1,
                }
                continue;
            }
            let shard = rng.below(shards as u64) as usize;
            let batch: Vec<Pending> = if action < 9 {
                (0..1 + rng.below(3))
                    .map(|_| Pending::Deletion(deletion(&mut rng, &model)))
                    .collect()
            } else {
                (0..1 + rng.below(8))
                    .map(|_| {
                        model.next_micros += 1 + rng.below(3);
                        let id = QueueId::new(model.next_micros, shard as u8);
                        Pending::Message(pending(&mut rng, id, segment_size))
                    })
                    .collect()
            };
            for p in &batch {
                match p {
                    Pending::Message(m) => {
                        model.accepted.insert(m.meta.id, m.clone());
                    }
                    Pending::Deletion(d) => {
                        for id in &d.ids {
                            model.accepted_deletions.insert((d.mailbox.clone(), *id));
                        }
                    }
                }
            }
            let results = writers[shard].commit(&batch);
            if results.len() != batch.len() {
                return Err("one result per record".into());
            }
            for (p, r) in batch.iter().zip(results) {
                match (p, r) {
                    (Pending::Message(m), Ok(loc)) => {
                        if loc.shard != shard as u8 || loc.offset < SEGMENT_PREAMBLE_LEN {
                            return Err(format!("odd location {loc:?}"));
                        }
                        // Read-your-writes (while the power is on), by id through the index.
                        if disk.is_alive() {
                            check_record(&disk, &loc, m)
                                .map_err(|e| format!("just committed: {e}"))?;
                            if core.locate(m.meta.id) != Some(loc) {
                                return Err("just committed, not located".into());
                            }
                            let body = core.read_body(m.meta.id).map_err(|e| e.to_string())?;
                            if body.len() != m.received.len() + m.body.len() {
                                return Err("just committed, body differs".into());
                            }
                        }
                        model.acked.insert(m.meta.id);
                        cov.acked += 1;
                    }
                    (Pending::Deletion(d), Ok(_)) => {
                        for id in &d.ids {
                            model.acked_deletions.insert((d.mailbox.clone(), *id));
                        }
                        cov.deletions_acked += 1;
                    }
                    (Pending::Message(_), Err(_)) => cov.failed += 1,
                    (Pending::Deletion(_), Err(_)) => cov.deletions_failed += 1,
                }
            }
        }
        drop(writers);
        let st = disk.stats();
        cov.write_errors += st.write_errors;
        cov.sync_errors += st.sync_errors;
        cov.create_errors += st.create_errors;
        disk = disk.crash();
    }
    disk.set_faults(SimFaults::default());
    check_full_compaction(&disk, shards, segment_size, &model, cov)
}

/// Two full compactions on a quiet disk: the first drops every garbage message, the second
/// the deletions only they needed. Nothing a reader sees changes.
fn check_full_compaction(
    disk: &SimDisk,
    shards: usize,
    segment_size: u64,
    model: &Model,
    cov: &mut Coverage,
) -> Result<(), String> {
    let (core, _) = recover_and_check(disk, shards, segment_size, model, cov)?;
    let before = replay_of(&core)?;
    let full = CompactionConfig {
        live_percent_below: 100,
        output_segment_size: segment_size,
        sync_every: 1 << 20,
    };
    for round in 0..2 {
        compact::run(&core, &full).map_err(|e| format!("clean compaction {round}: {e}"))?;
    }
    check_state(disk, &core, None, model).map_err(|e| format!("after full compaction: {e}"))?;
    let mut garbage = 0;
    core.index
        .for_each(|_, e| garbage += u64::from(e.is_garbage()));
    if garbage > 0 {
        return Err(format!(
            "{garbage} garbage message(s) left after full compaction"
        ));
    }
    let (again, _) = recover_and_check(disk, shards, segment_size, model, cov)?;
    if replay_of(&again)? != before {
        return Err("full compaction changed what a reader sees".into());
    }
    let orphans = disk_deletion_ids(disk)?
        .into_iter()
        .filter(|id| !again.index.contains(*id))
        .count();
    if orphans > 0 {
        return Err(format!(
            "{orphans} orphaned deletion(s) left after two full compactions"
        ));
    }
    Ok(())
}

/// Every crash point of one compaction, replayed from the same state: sealed segments with
/// live, partly deleted and garbage messages, and (for some seeds) the leftovers of an earlier
/// interrupted compaction (duplicate copies, a temporary file). Each crash image must recover
/// to a correct state, and compacting it to the end must too.
fn run_every_crash_point(seed: u64, cov: &mut Coverage) -> Result<u64, String> {
    let mut rng = SimRng::new(seed);
    let segment_size = [512u64, 2048][rng.below(2) as usize];
    let mut disk = SimDisk::new(rng.next_u64(), SimFaults::default());
    let mut model = Model::new(2_000_000);
    for run in 0..2 {
        let (core, resume) = recover_and_check(&disk, 1, segment_size, &model, cov)?;
        let mut w = ShardWriter::new(0, Arc::clone(&core), resume[0].next_seq);
        for _ in 0..4 + rng.below(8) {
            let batch: Vec<Pending> = if rng.chance(2, 5) && !model.acked.is_empty() {
                (0..1 + rng.below(3))
                    .map(|_| Pending::Deletion(deletion(&mut rng, &model)))
                    .collect()
            } else {
                (0..1 + rng.below(4))
                    .map(|_| {
                        model.next_micros += 1;
                        let id = QueueId::new(model.next_micros, 0);
                        let mut p = pending(&mut rng, id, segment_size);
                        p.body.truncate(300);
                        Pending::Message(p)
                    })
                    .collect()
            };
            let results = w.commit(&batch);
            for (p, r) in batch.iter().zip(results) {
                r.map_err(|e| format!("clean commit failed: {e}"))?;
                match p {
                    Pending::Message(m) => {
                        model.accepted.insert(m.meta.id, m.clone());
                        model.acked.insert(m.meta.id);
                    }
                    Pending::Deletion(d) => {
                        for id in &d.ids {
                            model.accepted_deletions.insert((d.mailbox.clone(), *id));
                            model.acked_deletions.insert((d.mailbox.clone(), *id));
                        }
                    }
                }
            }
        }
        drop(w);
        if run == 0 && rng.chance(1, 2) {
            disk.die_after_ops(1 + rng.below(40));
            let _ = compact::run(&core, &compaction_config(&mut rng, segment_size));
        }
        disk = disk.crash();
    }
    // Recovery's own repairs (temporary removed, tails cut) are synced: the base state.
    recover_and_check(&disk, 1, segment_size, &model, cov)?;
    let cfg = CompactionConfig {
        live_percent_below: 100,
        output_segment_size: segment_size / 2,
        sync_every: 512,
    };
    for k in 1.. {
        let d = disk.snapshot();
        let (core, _) = recover_and_check(&d, 1, segment_size, &model, cov)?;
        d.die_after_ops(k);
        let done = compact::run(&core, &cfg);
        if d.is_alive() {
            done.map_err(|e| format!("compaction without a crash failed: {e}"))?;
            check_state(&d, &core, None, &model).map_err(|e| format!("compacted: {e}"))?;
            return Ok(k);
        }
        cov.crashed_in_compaction += 1;
        let after = d.crash();
        recover_and_check(&after, 1, segment_size, &model, cov)
            .map_err(|e| format!("crash at op {k} of compaction: {e}"))?;
        check_full_compaction(&after, 1, segment_size, &model, cov)
            .map_err(|e| format!("crash at op {k} of compaction, then compacted: {e}"))?;
    }
    Err("unreachable".into())
}

#[test]
fn simulation_every_crash_point_of_a_compaction() {
    let mut cov = Coverage::default();
    let mut points = 0;
    let seeds: u64 = std::env::var("SPOOL_SIM_CRASH_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    for i in 0..seeds {
        let seed = 0xC0A1_0000u64 + i;
        match run_every_crash_point(seed, &mut cov) {
            Ok(k) => points += k,
            Err(e) => panic!("SEED={seed}: {e}"),
        }
    }
    eprintln!("{points} crash points; {cov:?}");
    assert!(
        cov.duplicates_recovered > 0 && cov.temp_files_removed > 0,
        "{cov:?}"
    );
}

fn replay_of(core: &Core) -> Result<Replay, String> {
    core.replay_scan().map_err(|e| e.to_string())
}

fn disk_deletion_ids(disk: &SimDisk) -> Result<Vec<QueueId>, String> {
    let mut ids = Vec::new();
    for shard in disk.list_shards().map_err(|e| e.to_string())? {
        super::recovery::scan_shard(disk, shard, super::recovery::Mode::ReadOnly, &mut |v| {
            if let super::frame::Record::Deletion(d) = v.record {
                ids.extend(d.ids);
            }
            std::ops::ControlFlow::Continue(())
        })
        .map_err(|e| e.to_string())?;
    }
    Ok(ids)
}

#[test]
fn simulation_acknowledged_subset_recovered_subset_accepted() {
    let mut cov = Coverage::default();
    if let Ok(seed) = std::env::var("SPOOL_SIM_SEED") {
        let seed: u64 = seed.parse().expect("SPOOL_SIM_SEED is a u64");
        if let Err(e) = run_scenario(seed, &mut cov) {
            panic!("SEED={seed}: {e}");
        }
        eprintln!("{cov:?}");
        return;
    }
    let scenarios: u64 = std::env::var("SPOOL_SIM_SCENARIOS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1500);
    let base = 0x5EED_0000u64;
    for i in 0..scenarios {
        let seed = base + i;
        if let Err(e) = run_scenario(seed, &mut cov) {
            panic!(
                "SEED={seed}: {e}\nreplay: SPOOL_SIM_SEED={seed} cargo test --lib spool::sim_tests"
            );
        }
    }
    eprintln!("{cov:?}");
    if scenarios >= 1000 {
        let c = &cov;
        let seen = [
            c.acked,
            c.failed,
            c.torn_tails,
            c.corrupt_frames,
            c.empty_segments,
            c.write_errors,
            c.sync_errors,
            c.create_errors,
            c.unacked_recovered,
            c.deletions_acked,
            c.deletions_failed,
            c.compactions,
            c.compactions_failed,
            c.crashed_in_compaction,
            c.segments_compacted,
            c.garbage_dropped,
            c.temp_files_removed,
            c.duplicates_recovered,
            c.copies_shadowing_deletions,
        ];
        assert!(
            seen.iter().all(|&n| n > 0),
            "the simulation no longer reaches every path: {cov:?}"
        );
    }
}

/// One flipped byte anywhere in a clean spool loses at most the one record that holds it, and
/// never stops recovery.
fn run_bitflip(seed: u64) -> Result<(), String> {
    let mut rng = SimRng::new(seed);
    let segment_size = [1024u64, 8192][rng.below(2) as usize];
    let disk = SimDisk::new(rng.next_u64(), SimFaults::default());
    let mut model = Model::new(5_000_000);
    let mut cov = Coverage::default();
    let (core, resume) = recover_and_check(&disk, 1, segment_size, &model, &mut cov)?;
    let mut w = ShardWriter::new(0, Arc::clone(&core), resume[0].next_seq);
    let mut locations = Vec::new();
    for _ in 0..1 + rng.below(6) {
        let batch: Vec<PendingMessage> = (0..1 + rng.below(5))
            .map(|_| {
                model.next_micros += 1;
                let mut p = pending(&mut rng, QueueId::new(model.next_micros, 0), segment_size);
                // Keep every message live: this test is about damage, not deletions.
                p.meta.mailboxes.clear();
                p
            })
            .collect();
        let records: Vec<Pending> = batch.iter().cloned().map(Pending::Message).collect();
        for (p, r) in batch.iter().zip(w.commit(&records)) {
            let loc = r.map_err(|e| format!("clean commit failed: {e}"))?;
            model.accepted.insert(p.meta.id, p.clone());
            model.acked.insert(p.meta.id);
            locations.push((p.meta.id, loc));
        }
    }
    drop(w);
    let segs = disk.list_segments(0).map_err(|e| e.to_string())?;
    let seg = segs[rng.below(segs.len() as u64) as usize];
    let content = disk.contents(0, seg).unwrap_or_default();
    let at = rng.below(content.len() as u64);
    let bit = 1u8 << rng.below(8);
    disk.corrupt(0, seg, at, &[content[at as usize] ^ bit]);
    let victim = locations
        .iter()
        .find(|(_, l)| l.segment == seg && l.offset <= at && at < l.offset + l.frame_len)
        .map(|(id, _)| *id);
    if let Some(v) = victim {
        model.acked.remove(&v);
    }
    let (core, _) = recover_and_check(&disk, 1, segment_size, &model, &mut cov)
        .map_err(|e| format!("flip at {seg}:{at}: {e}"))?;
    let lost = locations.len() - core.index.len();
    if lost > 1 {
        return Err(format!(
            "one flipped byte at {seg}:{at} lost {lost} records"
        ));
    }
    // A body-only read of the damaged record never serves the damaged bytes.
    if let Some(v) = victim {
        if let Ok(body) = core.read_body(v) {
            let p = &model.accepted[&v];
            if body[..p.received.len()] != p.received[..] || body[p.received.len()..] != p.body[..]
            {
                return Err(format!("read_body served damaged bytes of {v}"));
            }
        }
    }
    Ok(())
}

#[test]
fn simulation_single_bit_flip_loses_at_most_its_record() {
    for i in 0..400 {
        let seed = 0xF11B_0000u64 + i;
        if let Err(e) = run_bitflip(seed) {
            panic!("SEED={seed}: {e}");
        }
    }
}
