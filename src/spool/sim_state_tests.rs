//! Seeded simulation of the mail store's records on [`SimDisk`]: messages with placements,
//! mailbox-state records (some releasing messages, some checkpoints), POP3 deletions, group
//! commits, compactions, injected IO errors and crashes anywhere (also inside a compaction),
//! each followed by recovery and a checker:
//!
//! - every acknowledged state record is replayed, unless a later checkpoint of its user that
//!   is itself replayed voids it; a replayed record is exactly one that was appended (a record
//!   is applied whole or not at all), each once, sorted by `(user, seq)`, none below its
//!   user's latest checkpoint;
//! - an acknowledged release or deletion is applied to every recovered copy of its message
//!   (a message is never resurrected for a user whose release record became void); only
//!   appended ones are ever applied; an acknowledged message is only gone when it is garbage
//!   under everything appended; messages keep their placements;
//! - at the end, two full compactions drop every garbage message and every state record that
//!   is void and releases nothing still on disk, and keep every other one.
//!
//! `SPOOL_STATE_SIM_SEED=<seed>` runs one scenario, `SPOOL_STATE_SIM_SCENARIOS=<n>` changes how
//! many run (default 150, ~15 s in debug).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::compact::{self, CompactionConfig};
use super::frame::{MailboxDeletion, MessageMeta, Record};
use super::record::MessageV3;
use super::sim::{SimDisk, SimFaults, SimRng};
use super::state::{Flags, MailboxState, Placement, StateOp, INBOX};
use super::writer::{Pending, PendingMessage, ShardWriter};
use super::{recover, Core, Replay, SegmentIo};
use crate::envelope::{Envelope, MailParams, Origin, QueueId};

const USERS: [&str; 3] = ["alice", "bob", "carol"];

#[derive(Debug, Default)]
struct Coverage {
    states_acked: u64,
    states_failed: u64,
    checkpoints_acked: u64,
    releases_acked: u64,
    voided_replays: u64,
    void_kept_for_release: u64,
    states_dropped: u64,
    garbage_dropped: u64,
    crashes: u64,
}

#[derive(Default)]
struct Model {
    messages: HashMap<QueueId, PendingMessage>,
    acked: HashSet<QueueId>,
    /// `(user, id)` releases and POP3 deletions, appended / acknowledged.
    accepted_gone: HashSet<(String, QueueId)>,
    acked_gone: HashSet<(String, QueueId)>,
    states: HashMap<(String, u64), MailboxState>,
    acked_states: HashSet<(String, u64)>,
    next_seq: HashMap<String, u64>,
    next_micros: u64,
}

impl Model {
    fn garbage_under_accepted(&self, id: QueueId) -> bool {
        self.messages.get(&id).is_some_and(|p| {
            !p.meta.mailboxes.is_empty()
                && p.meta
                    .mailboxes
                    .iter()
                    .all(|m| self.accepted_gone.contains(&(m.clone(), id)))
        })
    }
}

fn placement(rng: &mut SimRng, uid: u32) -> Placement {
    Placement {
        folder: rng.below(3) as u32,
        uidvalidity: 1 + rng.below(5) as u32,
        uid,
        flags: Flags {
            system: rng.below(32) as u8,
            keywords: if rng.chance(1, 3) {
                vec![format!("k{}", rng.below(9))]
            } else {
                Vec::new()
            },
        },
        internal_date: rng.below(1 << 40) as i64 - (1 << 39),
        zone_minutes: rng.below(1440) as i16 - 720,
        modseq: 1 + rng.below(1000),
    }
}

fn message(rng: &mut SimRng, id: QueueId) -> PendingMessage {
    let mut mailboxes: Vec<String> = USERS
        .iter()
        .filter(|_| rng.chance(1, 2))
        .map(|u| u.to_string())
        .collect();
    if mailboxes.is_empty() {
        mailboxes.push(USERS[rng.below(3) as usize].to_string());
    }
    let placements = if rng.chance(1, 4) {
        Vec::new()
    } else {
        mailboxes
            .iter()
            .map(|_| {
                rng.chance(3, 4).then(|| {
                    let uid = 1 + rng.below(99) as u32;
                    placement(rng, uid)
                })
            })
            .collect()
    };
    let body_len = rng.below(700) as usize;
    PendingMessage {
        meta: MessageV3::from(MessageMeta {
            id,
            arrival_unix_micros: id.micros(),
            origin: Origin::default(),
            envelope: Envelope {
                reverse_path: "s@example.org".into(),
                params: MailParams::default(),
                recipients: Vec::new(),
            },
            received_len: 0,
            mailboxes,
            remote: Vec::new(),
            placements,
        }),
        received: Vec::new(),
        body: vec![rng.next_u64() as u8; body_len],
    }
}

/// Acknowledged messages delivered to `user` that it has not let go of yet.
fn held(model: &Model, user: &str) -> Vec<QueueId> {
    let mut ids: Vec<QueueId> = model
        .acked
        .iter()
        .copied()
        .filter(|id| {
            model.messages[id].meta.mailboxes.iter().any(|m| m == user)
                && !model.acked_gone.contains(&(user.to_string(), *id))
        })
        .collect();
    ids.sort();
    ids
}

fn state_record(rng: &mut SimRng, model: &mut Model) -> MailboxState {
    let user = USERS[rng.below(3) as usize].to_string();
    let seq = model.next_seq.entry(user.clone()).or_insert(1);
    // Gaps are allowed (a failed record's seq is never reused).
    *seq += rng.below(2);
    let this = *seq;
    *seq += 1;
    let held = held(model, &user);
    let mut ops = Vec::new();
    if rng.chance(1, 4) {
        ops.push(StateOp::Reset);
        ops.push(StateOp::FolderCounters {
            folder: INBOX,
            uidnext: 1 + rng.below(1000) as u32,
            highest_modseq: rng.below(1000),
        });
        for id in &held {
            if rng.chance(3, 4) {
                let uid = 1 + rng.below(99) as u32;
                ops.push(StateOp::Place {
                    id: *id,
                    placement: placement(rng, uid),
                });
            }
        }
    } else {
        for _ in 0..rng.below(3) {
            ops.push(match rng.below(3) {
                0 => StateOp::SetFlags {
                    folder: INBOX,
                    uid: rng.below(50) as u32,
                    flags: Flags::default(),
                    modseq: rng.below(1000),
                },
                1 => StateOp::Subscribe {
                    name: format!("f{}", rng.below(4)),
                    subscribed: rng.chance(1, 2),
                },
                _ => StateOp::Expunge {
                    folder: INBOX,
                    uids: vec![rng.below(50) as u32],
                    modseq: rng.below(1000),
                },
            });
        }
    }
    let mut released = Vec::new();
    for id in held {
        if rng.chance(1, 3) {
            released.push(id);
        }
    }
    if rng.chance(1, 10) {
        // An id the user never had: changes nothing.
        released.push(QueueId::new(rng.below(1000), 0));
    }
    MailboxState {
        user,
        seq: this,
        ops,
        released,
    }
}

fn pop3_deletion(rng: &mut SimRng, model: &Model) -> MailboxDeletion {
    let user = USERS[rng.below(3) as usize];
    let ids = held(model, user)
        .into_iter()
        .filter(|_| rng.chance(1, 3))
        .collect();
    MailboxDeletion {
        mailbox: user.into(),
        ids,
    }
}

fn check(core: &Core, replay: &Replay, model: &Model, cov: &mut Coverage) -> Result<(), String> {
    let mut indexed = HashSet::new();
    let mut failure = None;
    core.index.for_each(|id, e| {
        indexed.insert(id);
        let Some(p) = model.messages.get(&id) else {
            failure = Some(format!("{id} recovered, never appended"));
            return;
        };
        for m in &e.mailboxes {
            let pair = (m.name.to_string(), id);
            if model.acked_gone.contains(&pair) && !m.deleted {
                failure = Some(format!("{id} resurrected for {}", m.name));
            }
            if m.deleted && !model.accepted_gone.contains(&pair) {
                failure = Some(format!("{id} gone for {} without a record", m.name));
            }
        }
        if p.meta.mailboxes.len() != e.mailboxes.len() {
            failure = Some(format!("{id}: copies differ"));
        }
    });
    if let Some(f) = failure {
        return Err(f);
    }
    for id in &model.acked {
        if !indexed.contains(id) && !model.garbage_under_accepted(*id) {
            return Err(format!("acknowledged live {id} lost"));
        }
    }
    for m in &replay.messages {
        let want = MessageMeta::from(model.messages[&m.id].meta.clone());
        if m.placements != want.placements || m.mailboxes != want.mailboxes {
            return Err(format!("{}: replayed placements differ", m.id));
        }
    }
    // States: sorted, unique, appended whole, none void.
    let keys: Vec<(&str, u64)> = replay
        .states
        .iter()
        .map(|s| (s.user.as_str(), s.seq))
        .collect();
    if keys.windows(2).any(|w| w[0] >= w[1]) {
        return Err(format!("replayed states not sorted or repeated: {keys:?}"));
    }
    let mut latest_cp: HashMap<&str, u64> = HashMap::new();
    for s in &replay.states {
        if model.states.get(&(s.user.clone(), s.seq)) != Some(s) {
            return Err(format!(
                "replayed state {} {} was never appended",
                s.user, s.seq
            ));
        }
        if s.is_checkpoint() {
            let c = latest_cp.entry(&s.user).or_insert(s.seq);
            *c = (*c).max(s.seq);
        }
        for id in &s.released {
            if let Some(e) = core.index.get(*id) {
                if e.mailboxes.iter().any(|m| *m.name == *s.user && !m.deleted) {
                    return Err(format!("{id}: release by {} {} not applied", s.user, s.seq));
                }
            }
        }
    }
    for s in &replay.states {
        if latest_cp.get(s.user.as_str()).is_some_and(|&c| s.seq < c) {
            return Err(format!("void state {} {} replayed", s.user, s.seq));
        }
    }
    let replayed: HashSet<(&str, u64)> = keys.iter().copied().collect();
    for (user, seq) in &model.acked_states {
        if replayed.contains(&(user.as_str(), *seq)) {
            continue;
        }
        match latest_cp.get(user.as_str()) {
            Some(&c) if c > *seq => cov.voided_replays += 1,
            _ => return Err(format!("acknowledged state {user} {seq} lost")),
        }
    }
    Ok(())
}

fn recover_and_check(
    disk: &SimDisk,
    shards: usize,
    segment_size: u64,
    model: &Model,
    cov: &mut Coverage,
) -> Result<(Arc<Core>, Vec<super::recovery::ShardResume>), String> {
    let rec = recover(disk, shards).map_err(|e| format!("recovery failed: {e}"))?;
    let io: Arc<dyn SegmentIo> = Arc::new(disk.clone());
    let (core, _, resume) = Core::new(io, rec, segment_size, true);
    let replay = core.replay().map_err(|e| format!("replay failed: {e}"))?;
    check(&core, &replay, model, cov)?;
    Ok((core, resume))
}

/// Every state record on disk, with whether the rule (stated here without the index) keeps
/// it: at or above its user's latest checkpoint on disk, or releasing a message on disk.
fn disk_states(disk: &SimDisk) -> Result<Vec<(MailboxState, bool)>, String> {
    let mut states = Vec::new();
    let mut on_disk = HashSet::new();
    for shard in disk.list_shards().map_err(|e| e.to_string())? {
        super::recovery::scan_shard(disk, shard, super::recovery::Mode::ReadOnly, &mut |v| {
            match v.record {
                Record::State(s) => states.push(s),
                Record::Message(m) => {
                    on_disk.insert(m.id);
                }
                Record::Deletion(_) | Record::Delivery(_) => {}
            }
            std::ops::ControlFlow::Continue(())
        })
        .map_err(|e| e.to_string())?;
    }
    let mut cp: HashMap<String, u64> = HashMap::new();
    for s in states.iter().filter(|s| s.is_checkpoint()) {
        let c = cp.entry(s.user.clone()).or_insert(s.seq);
        *c = (*c).max(s.seq);
    }
    Ok(states
        .into_iter()
        .map(|s| {
            let live = cp.get(&s.user).is_none_or(|&c| s.seq >= c)
                || s.released.iter().any(|id| on_disk.contains(id));
            (s, live)
        })
        .collect())
}

fn run_scenario(seed: u64, cov: &mut Coverage) -> Result<(), String> {
    let mut rng = SimRng::new(seed);
    let shards = 1 + rng.below(2) as usize;
    let segment_size = [512u64, 2048, 8192][rng.below(3) as usize];
    let mut disk = SimDisk::new(rng.next_u64(), SimFaults::default());
    let mut model = Model {
        next_micros: 1_000_000,
        ..Model::default()
    };
    for _ in 0..1 + rng.below(4) {
        let (core, resume) = recover_and_check(&disk, shards, segment_size, &model, cov)?;
        if rng.chance(1, 2) {
            disk.set_faults(SimFaults {
                write_error: (rng.below(2), 15),
                sync_error: (rng.below(2), 15),
                create_error: (rng.below(2), 10),
            });
        } else {
            disk.set_faults(SimFaults::default());
        }
        if rng.chance(3, 4) {
            disk.die_after_ops(1 + rng.below(100));
        }
        let mut writers: Vec<ShardWriter> = resume
            .iter()
            .enumerate()
            .map(|(s, r)| ShardWriter::new(s as u8, Arc::clone(&core), r.next_seq))
            .collect();
        for _ in 0..rng.below(20) {
            if !disk.is_alive() {
                break;
            }
            let action = rng.below(20);
            if action < 3 {
                let cfg = CompactionConfig {
                    live_percent_below: [50, 100][rng.below(2) as usize],
                    output_segment_size: segment_size,
                    sync_every: [256, 1 << 20][rng.below(2) as usize],
                };
                if let Ok(r) = compact::run(&core, &cfg) {
                    cov.states_dropped += r.states_dropped;
                    cov.garbage_dropped += r.messages_dropped;
                }
                continue;
            }
            let shard = rng.below(shards as u64) as usize;
            let mut batch = Vec::new();
            for _ in 0..1 + rng.below(4) {
                let p = match rng.below(10) {
                    0..=3 => {
                        model.next_micros += 1 + rng.below(3);
                        let id = QueueId::new(model.next_micros, shard as u8);
                        Pending::Message(message(&mut rng, id))
                    }
                    4..=8 => Pending::State(state_record(&mut rng, &mut model)),
                    _ => Pending::Deletion(pop3_deletion(&mut rng, &model)),
                };
                match &p {
                    Pending::Message(m) => {
                        model.messages.insert(m.meta.id.into(), m.clone());
                    }
                    Pending::State(s) => {
                        model.states.insert((s.user.clone(), s.seq), s.clone());
                        for id in &s.released {
                            model.accepted_gone.insert((s.user.clone(), *id));
                        }
                    }
                    Pending::Deletion(d) => {
                        for id in &d.ids {
                            model.accepted_gone.insert((d.mailbox.clone(), *id));
                        }
                    }
                    Pending::Delivery(_) => {}
                }
                batch.push(p);
            }
            let results = writers[shard].commit(&batch);
            for (p, r) in batch.iter().zip(results) {
                match (p, r) {
                    (Pending::Message(m), Ok(_)) => {
                        model.acked.insert(m.meta.id.into());
                    }
                    (Pending::State(s), Ok(_)) => {
                        cov.states_acked += 1;
                        cov.checkpoints_acked += u64::from(s.is_checkpoint());
                        model.acked_states.insert((s.user.clone(), s.seq));
                        for id in &s.released {
                            model.acked_gone.insert((s.user.clone(), *id));
                            cov.releases_acked += 1;
                        }
                        // Applied before the answer.
                        if s.is_checkpoint() && core.index.checkpoint(&s.user) < Some(s.seq) {
                            return Err("acknowledged checkpoint not in the index".into());
                        }
                        for id in &s.released {
                            if let Some(e) = core.index.get(*id) {
                                if e.mailboxes.iter().any(|m| *m.name == *s.user && !m.deleted) {
                                    return Err(format!("{id}: acknowledged release not applied"));
                                }
                            }
                        }
                    }
                    (Pending::Deletion(d), Ok(_)) => {
                        for id in &d.ids {
                            model.acked_gone.insert((d.mailbox.clone(), *id));
                        }
                    }
                    (Pending::State(_), Err(_)) => cov.states_failed += 1,
                    _ => {}
                }
            }
        }
        drop(writers);
        if !disk.is_alive() {
            cov.crashes += 1;
        }
        disk = disk.crash();
    }
    disk.set_faults(SimFaults::default());
    let (core, _) = recover_and_check(&disk, shards, segment_size, &model, cov)?;
    let before = core.replay().map_err(|e| e.to_string())?;
    let full = CompactionConfig {
        live_percent_below: 100,
        output_segment_size: segment_size,
        sync_every: 1 << 20,
    };
    for round in 0..2 {
        let r = compact::run(&core, &full).map_err(|e| format!("full compaction {round}: {e}"))?;
        cov.states_dropped += r.states_dropped;
    }
    let mut garbage = 0;
    core.index
        .for_each(|_, e| garbage += u64::from(e.is_garbage()));
    if garbage > 0 {
        return Err(format!(
            "{garbage} garbage message(s) left after full compaction"
        ));
    }
    let (again, _) = recover_and_check(&disk, shards, segment_size, &model, cov)?;
    let after = again.replay().map_err(|e| e.to_string())?;
    if after != before {
        return Err("full compaction changed the replay".into());
    }
    let mut seen = HashSet::new();
    for (s, live) in disk_states(&disk)? {
        if !live {
            return Err(format!(
                "dead state {} {} left after full compaction",
                s.user, s.seq
            ));
        }
        if !seen.insert((s.user.clone(), s.seq)) {
            return Err(format!("state {} {} twice on disk", s.user, s.seq));
        }
        if !again.index.state_replayed(&s.user, s.seq) {
            cov.void_kept_for_release += 1;
        }
    }
    Ok(())
}

#[test]
fn simulation_state_records_survive_crashes_and_compaction() {
    let seeds: Vec<u64> = match std::env::var("SPOOL_STATE_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("SPOOL_STATE_SIM_SEED")],
        Err(_) => {
            let n = std::env::var("SPOOL_STATE_SIM_SCENARIOS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(150u64);
            (0..n).map(|i| 0x5747_0000 + i).collect()
        }
    };
    let mut cov = Coverage::default();
    for seed in &seeds {
        if let Err(e) = run_scenario(*seed, &mut cov) {
            panic!("SPOOL_STATE_SIM_SEED={seed}: {e}");
        }
    }
    if seeds.len() > 1 {
        // The scenarios must reach what they claim to test.
        assert!(cov.states_acked > 0 && cov.checkpoints_acked > 0, "{cov:?}");
        assert!(cov.releases_acked > 0 && cov.voided_replays > 0, "{cov:?}");
        assert!(cov.states_dropped > 0 && cov.garbage_dropped > 0, "{cov:?}");
        assert!(cov.crashes > 0 && cov.states_failed > 0, "{cov:?}");
    }
    eprintln!("{cov:?}");
}
