//! Seeded simulation: thousands of scenarios of message appends, mailbox deletions, delivery
//! results (deferred, then delivered, bounced or expired) and DSN markers, group commits,
//! compactions, injected IO errors, crash points (anywhere, including inside a compaction)
//! and torn writes on [`SimDisk`], each followed by recovery and a checker:
//!
//! - acknowledged ⊆ recovered ⊆ accepted for messages, except that a message that is garbage
//!   under the accepted deletions and results may be gone (compaction may have dropped it); a
//!   message with a recipient that no accepted result finished never disappears;
//! - an acknowledged final result is applied (the recipient is never pending again) and an
//!   acknowledged Deferred is never rolled back to an older attempt, for every recovered
//!   message; only accepted results are ever applied; acknowledged DSN markers are listed;
//! - every recovered message's meta and stored body are exactly what was appended, and so are
//!   the bytes of every extra copy an interrupted compaction left (listed once all the same);
//! - an acknowledged deletion is applied to every recovered copy of its message (a message is
//!   never resurrected into a mailbox); only accepted deletions are ever applied;
//! - the replay lists every live recovered message exactly once, with exactly its deletions,
//!   and its pending recipients are exactly the index's (between "remote minus accepted
//!   finals" and "remote minus acknowledged finals"), each with its latest Deferred;
//! - recovery never stops with an error on a crash image (only Fatal inputs may);
//! - at the end, two full compactions on the recovered disk drop every garbage message,
//!   orphaned deletion, orphaned result or marker and superseded Deferred result, and change
//!   nothing a reader can see.
//!
//! The writer core and compaction are driven synchronously (no threads), so a seed replays
//! exactly: `SPOOL_SIM_SEED=<seed> cargo test --lib spool::sim_tests` runs one scenario;
//! `SPOOL_SIM_SCENARIOS=<n>` changes how many run (default 1500, ~25 s in debug on 2 vCPUs);
//! `SPOOL_SIM_CRASH_SEEDS=<n>` how many states the every-crash-point test starts from (30).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::compact::{self, CompactionConfig};
use super::frame::{
    DeliveryRecord, DeliveryResult, DsnKind, DsnSent, MailboxDeletion, MessageMeta, Outcome,
    Record, SEGMENT_PREAMBLE_LEN,
};
use super::index::IndexEntry;
use super::inspect;
use super::sim::{SimDisk, SimFaults, SimRng};
use super::writer::{Pending, PendingMessage, ShardWriter};
use super::{recover, Core, Location, Replay, SegmentIo};
use crate::envelope::{Envelope, MailParams, Origin, QueueId, Recipient};

const MAILBOXES: [&str; 3] = ["alice", "bob", "carol"];
const REMOTES: [&str; 3] = ["far@example.com", "x@example.net", "y@example.org"];

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
    results_acked: u64,
    results_failed: u64,
    finals_acked: u64,
    relayed_garbage_dropped: u64,
    results_dropped: u64,
    pending_replayed: u64,
}

type Pair = (QueueId, String);

struct Model {
    accepted: HashMap<QueueId, PendingMessage>,
    acked: HashSet<QueueId>,
    accepted_deletions: HashSet<(String, QueueId)>,
    acked_deletions: HashSet<(String, QueueId)>,
    /// Delivery results per (message, recipient), in the order they were appended.
    accepted_results: HashMap<Pair, Vec<DeliveryResult>>,
    acked_results: HashMap<Pair, Vec<DeliveryResult>>,
    accepted_markers: HashSet<DsnSent>,
    acked_markers: HashSet<DsnSent>,
    /// (message, recipient) pairs with a final result among the above.
    accepted_finals: HashSet<Pair>,
    acked_finals: HashSet<Pair>,
    next_micros: u64,
    /// The delivery clock (`at_unix_micros` of results).
    clock: u64,
}

impl Model {
    fn new(next_micros: u64) -> Model {
        Model {
            accepted: HashMap::new(),
            acked: HashSet::new(),
            accepted_deletions: HashSet::new(),
            acked_deletions: HashSet::new(),
            accepted_results: HashMap::new(),
            acked_results: HashMap::new(),
            accepted_markers: HashSet::new(),
            acked_markers: HashSet::new(),
            accepted_finals: HashSet::new(),
            acked_finals: HashSet::new(),
            next_micros,
            clock: 1_000,
        }
    }

    /// The liveness rule, stated independently of `index::is_garbage`: every recipient is
    /// accounted for (at least one local mailbox or remote address), every remote address has
    /// a final result and every mailbox copy has a deletion.
    fn garbage_under(
        &self,
        id: QueueId,
        deletions: &HashSet<(String, QueueId)>,
        finals: &HashSet<Pair>,
    ) -> bool {
        let Some(p) = self.accepted.get(&id) else {
            return false;
        };
        let m = &p.meta;
        (!m.remote.is_empty() || !m.mailboxes.is_empty())
            && m.remote.iter().all(|r| finals.contains(&(id, r.clone())))
            && m.mailboxes
                .iter()
                .all(|mb| deletions.contains(&(mb.clone(), id)))
    }

    /// Garbage under everything accepted: the most that may be gone.
    fn may_be_gone(&self, id: QueueId) -> bool {
        self.garbage_under(id, &self.accepted_deletions, &self.accepted_finals)
    }

    fn accept_delivery(&mut self, d: &DeliveryRecord) {
        for r in &d.results {
            let pair = (r.id, r.recipient.clone());
            if r.outcome.is_final() {
                self.accepted_finals.insert(pair.clone());
            }
            self.accepted_results
                .entry(pair)
                .or_default()
                .push(r.clone());
        }
        self.accepted_markers.extend(d.dsn_sent.iter().cloned());
    }

    fn ack_delivery(&mut self, d: &DeliveryRecord) {
        for r in &d.results {
            let pair = (r.id, r.recipient.clone());
            if r.outcome.is_final() {
                self.acked_finals.insert(pair.clone());
            }
            self.acked_results.entry(pair).or_default().push(r.clone());
        }
        self.acked_markers.extend(d.dsn_sent.iter().cloned());
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
    let mut remote: Vec<String> = if rng.chance(1, 3) {
        REMOTES
            .iter()
            .filter(|_| rng.chance(1, 2))
            .map(|r| r.to_string())
            .collect()
    } else {
        Vec::new()
    };
    if !remote.is_empty() && rng.chance(1, 10) {
        // An address named twice is delivered once.
        remote.push(remote[0].clone());
    }
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
            placements: Vec::new(),
        }
        .into(),
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

/// Outbound delivery results: mostly the next attempt for an acknowledged message's remote
/// recipient (sometimes several recipients of one transaction sharing attempt and time, a
/// tie, or a result after a final one), sometimes a stray recipient or an unknown id; DSN
/// markers now and then.
fn delivery(rng: &mut SimRng, model: &mut Model) -> DeliveryRecord {
    let mut relayed: Vec<QueueId> = model
        .acked
        .iter()
        .copied()
        .filter(|id| !model.accepted[id].meta.remote.is_empty())
        .collect();
    relayed.sort();
    let mut d = DeliveryRecord::default();
    let transaction = rng.chance(1, 3);
    model.clock += 1 + rng.below(5);
    for _ in 0..1 + rng.below(4) {
        let (id, recipient) = if !relayed.is_empty() && rng.chance(7, 8) {
            let id = relayed[rng.below(relayed.len() as u64) as usize];
            let remote = &model.accepted[&id].meta.remote;
            let mut open: Vec<&String> = remote
                .iter()
                .filter(|r| {
                    !model
                        .acked_results
                        .get(&(id, (*r).clone()))
                        .is_some_and(|rs| rs.iter().any(|x| x.outcome.is_final()))
                })
                .collect();
            if open.is_empty() || rng.chance(1, 10) {
                open = remote.iter().collect();
            }
            (id, open[rng.below(open.len() as u64) as usize].clone())
        } else if rng.chance(1, 2) && !model.accepted.is_empty() {
            let mut all: Vec<QueueId> = model.accepted.keys().copied().collect();
            all.sort();
            let id = all[rng.below(all.len() as u64) as usize];
            (id, REMOTES[rng.below(3) as usize].to_string())
        } else {
            (QueueId::new(rng.below(1000), 0), REMOTES[0].to_string())
        };
        let previous = model
            .accepted_results
            .get(&(id, recipient.clone()))
            .map_or(0, |rs| rs.iter().map(|r| r.attempt).max().unwrap_or(0));
        let attempt = if rng.chance(1, 10) {
            previous.max(1)
        } else {
            previous + 1
        };
        if !transaction {
            model.clock += 1 + rng.below(5);
        }
        let outcome = match rng.below(20) {
            0..=10 => Outcome::Deferred,
            11..=15 => Outcome::Delivered,
            16..=18 => Outcome::Bounced,
            _ => Outcome::Expired,
        };
        let at = model.clock;
        d.results.push(DeliveryResult {
            id,
            recipient: recipient.clone(),
            outcome,
            reply: format!("{outcome:?} #{attempt} r{}", rng.below(1000)),
            attempt,
            at_unix_micros: at,
            next_attempt_unix_micros: (outcome == Outcome::Deferred)
                .then(|| at + 60_000_000 * u64::from(attempt)),
        });
        if rng.chance(1, 4) {
            d.dsn_sent.push(DsnSent {
                id,
                recipient,
                kind: match outcome {
                    Outcome::Deferred => DsnKind::Delay,
                    Outcome::Delivered => DsnKind::Success,
                    Outcome::Bounced | Outcome::Expired => DsnKind::Failure,
                },
                at_unix_micros: at,
                notice_id: rng
                    .chance(1, 2)
                    .then(|| QueueId::new(rng.below(1 << 40), 0)),
            });
        }
    }
    d
}

fn check_record(disk: &SimDisk, loc: &Location, p: &PendingMessage) -> Result<(), String> {
    let back = inspect::read_at(disk, loc).map_err(|e| e.to_string())?;
    if back.meta != MessageMeta::from(p.meta.clone()) {
        return Err("meta differs".into());
    }
    let mut body = p.received.clone();
    body.extend_from_slice(&p.body);
    if back.body != body {
        return Err("body differs".into());
    }
    Ok(())
}

fn entries(core_index: &super::index::LiveIndex) -> Vec<(QueueId, IndexEntry)> {
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
        if !indexed.contains(id) && !model.may_be_gone(*id) {
            return Err(format!("acknowledged live {id} lost"));
        }
    }
    let (accepted_finals, acked_finals) = (&model.accepted_finals, &model.acked_finals);
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
        for r in &e.remote {
            let pair = (*id, r.name.to_string());
            if acked_finals.contains(&pair) && !r.done {
                return Err(format!(
                    "acknowledged final result of {id} to {} lost",
                    r.name
                ));
            }
            if r.done && !accepted_finals.contains(&pair) {
                return Err(format!("{id} to {} final without a final result", r.name));
            }
            let accepted_keys: Vec<(u32, u64)> = model
                .accepted_results
                .get(&pair)
                .into_iter()
                .flatten()
                .filter(|x| !x.outcome.is_final())
                .map(|x| x.order_key())
                .collect();
            let acked_max = model
                .acked_results
                .get(&pair)
                .into_iter()
                .flatten()
                .filter(|x| !x.outcome.is_final())
                .map(|x| x.order_key())
                .max();
            match r.deferred {
                Some(k) if !accepted_keys.contains(&k) => {
                    return Err(format!("{id} to {}: deferred {k:?} never appended", r.name));
                }
                _ if r.deferred < acked_max => {
                    return Err(format!(
                        "{id} to {}: acknowledged deferred {acked_max:?} rolled back to {:?}",
                        r.name, r.deferred
                    ));
                }
                _ => {}
            }
        }
        let mut remote: Vec<&String> = Vec::new();
        for r in &p.meta.remote {
            if !remote.contains(&r) {
                remote.push(r);
            }
        }
        if e.remote
            .iter()
            .map(|r| &*r.name)
            .ne(remote.iter().map(|r| r.as_str()))
        {
            return Err(format!(
                "{id}: index remote recipients differ from the meta"
            ));
        }
        if e.is_garbage() != model.garbage_under(*id, &deleted_pairs(&all), &done_pairs(&all)) {
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
            check_replayed_delivery(m, &all, model)?;
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

/// The delivery state replay gives one live message: pending exactly the index's open
/// recipients (so between the model's bounds), each with its latest Deferred; finished
/// exactly the others, with accepted finals; markers accepted, none acknowledged missing.
fn check_replayed_delivery(
    m: &super::ReplayMessage,
    all: &[(QueueId, IndexEntry)],
    model: &Model,
) -> Result<(), String> {
    let id = m.id;
    let Some((_, e)) = all.iter().find(|(x, _)| *x == id) else {
        return Err(format!("replay lists {id}, not in the index"));
    };
    let open: Vec<&str> = e
        .remote
        .iter()
        .filter(|r| !r.done)
        .map(|r| &*r.name)
        .collect();
    let pending: Vec<&str> = m.pending.iter().map(|p| p.recipient.as_str()).collect();
    if pending != open {
        return Err(format!(
            "{id}: replay pending {pending:?} != index pending {open:?}"
        ));
    }
    let (accepted_finals, acked_finals) = (&model.accepted_finals, &model.acked_finals);
    for r in &m.remote {
        let pair = (id, r.clone());
        let is_pending = pending.contains(&r.as_str());
        if is_pending && acked_finals.contains(&pair) {
            return Err(format!(
                "{id}: {r} pending after an acknowledged final result"
            ));
        }
        if !is_pending && !accepted_finals.contains(&pair) {
            return Err(format!("{id}: {r} not pending without a final result"));
        }
    }
    for p in &m.pending {
        let state = e.remote.iter().find(|r| *r.name == *p.recipient);
        let key = state.and_then(|s| s.deferred);
        match key {
            None => {
                if p.attempts != 0 || p.last_reply.is_some() || p.next_attempt_unix_micros.is_some()
                {
                    return Err(format!("{id}: {} has a history from nowhere", p.recipient));
                }
            }
            Some(k) => {
                let matches = model
                    .accepted_results
                    .get(&(id, p.recipient.clone()))
                    .into_iter()
                    .flatten()
                    .any(|x| {
                        !x.outcome.is_final()
                            && x.order_key() == k
                            && (p.attempts, p.last_attempt_unix_micros) == (k.0, Some(k.1))
                            && p.last_reply.as_deref() == Some(x.reply.as_str())
                            && p.next_attempt_unix_micros == x.next_attempt_unix_micros
                    });
                if !matches {
                    return Err(format!(
                        "{id}: {} replayed {p:?}, not the latest deferred {k:?}",
                        p.recipient
                    ));
                }
            }
        }
    }
    let done: Vec<&str> = e
        .remote
        .iter()
        .filter(|r| r.done)
        .map(|r| &*r.name)
        .collect();
    let finished: Vec<&str> = m.finished.iter().map(|f| f.recipient.as_str()).collect();
    if finished != done {
        return Err(format!(
            "{id}: replay finished {finished:?} != index {done:?}"
        ));
    }
    for f in &m.finished {
        let ok = f.id == id
            && f.outcome.is_final()
            && model
                .accepted_results
                .get(&(id, f.recipient.clone()))
                .is_some_and(|rs| rs.contains(f));
        if !ok {
            return Err(format!("{id}: replayed final {f:?} was never appended"));
        }
    }
    for d in &m.dsn_sent {
        if d.id != id || !model.accepted_markers.contains(d) {
            return Err(format!("{id}: replayed marker {d:?} was never appended"));
        }
    }
    for d in model.acked_markers.iter().filter(|d| d.id == id) {
        if !m.dsn_sent.contains(d) {
            return Err(format!("{id}: acknowledged marker {d:?} lost"));
        }
    }
    Ok(())
}

fn deleted_pairs(all: &[(QueueId, IndexEntry)]) -> HashSet<(String, QueueId)> {
    all.iter()
        .flat_map(|(id, e)| {
            e.mailboxes
                .iter()
                .filter(|m| m.deleted)
                .map(move |m| (m.name.to_string(), *id))
        })
        .collect()
}

fn done_pairs(all: &[(QueueId, IndexEntry)]) -> HashSet<Pair> {
    all.iter()
        .flat_map(|(id, e)| {
            e.remote
                .iter()
                .filter(|r| r.done)
                .map(move |r| (*id, r.name.to_string()))
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
    let report = rec.report.clone();
    let io: Arc<dyn SegmentIo> = Arc::new(disk.clone());
    let (core, _, resume) = Core::new(io, rec, segment_size, true);
    let replay = core
        .replay()
        .map_err(|e| format!("replay after recovery failed: {e}"))?;
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
    cov.pending_replayed += replay
        .messages
        .iter()
        .flat_map(|m| &m.pending)
        .filter(|p| p.attempts > 0)
        .count() as u64;
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
                        cov.results_dropped += report.results_dropped;
                        // Everything live is still readable through the index.
                        if disk.is_alive() {
                            for id in &model.acked {
                                if model.may_be_gone(*id) {
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
            let batch: Vec<Pending> = if action < 8 {
                (0..1 + rng.below(3))
                    .map(|_| Pending::Deletion(deletion(&mut rng, &model)))
                    .collect()
            } else if action < 13 {
                let mut batch = Vec::new();
                for _ in 0..1 + rng.below(3) {
                    batch.push(Pending::Delivery(delivery(&mut rng, &mut model)));
                }
                batch
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
                        model.accepted.insert(m.meta.id.into(), m.clone());
                    }
                    Pending::Deletion(d) => {
                        for id in &d.ids {
                            model.accepted_deletions.insert((d.mailbox.clone(), *id));
                        }
                    }
                    Pending::Delivery(d) => model.accept_delivery(d),
                    Pending::State(_) => return Err("no state records here".into()),
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
                            if core.locate(m.meta.id.into()) != Some(loc) {
                                return Err("just committed, not located".into());
                            }
                            let body = core
                                .read_body(m.meta.id.into())
                                .map_err(|e| e.to_string())?;
                            if body.len() != m.received.len() + m.body.len() {
                                return Err("just committed, body differs".into());
                            }
                        }
                        model.acked.insert(m.meta.id.into());
                        cov.acked += 1;
                    }
                    (Pending::Deletion(d), Ok(_)) => {
                        for id in &d.ids {
                            model.acked_deletions.insert((d.mailbox.clone(), *id));
                        }
                        cov.deletions_acked += 1;
                    }
                    (Pending::Delivery(d), Ok(_)) => {
                        // Applied to the index before the reply.
                        if disk.is_alive() {
                            check_applied(&core, d)?;
                        }
                        model.ack_delivery(d);
                        cov.results_acked += 1;
                        cov.finals_acked +=
                            d.results.iter().filter(|r| r.outcome.is_final()).count() as u64;
                    }
                    (Pending::Message(_), Err(_)) => cov.failed += 1,
                    (Pending::Deletion(_), Err(_)) => cov.deletions_failed += 1,
                    (Pending::Delivery(_), Err(_)) => cov.results_failed += 1,
                    (Pending::State(_), _) => return Err("no state records here".into()),
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

/// A just acknowledged delivery record is in the live index already.
fn check_applied(core: &Core, d: &DeliveryRecord) -> Result<(), String> {
    for r in &d.results {
        let Some(e) = core.index.get(r.id) else {
            continue;
        };
        let Some(state) = e.remote.iter().find(|s| *s.name == *r.recipient) else {
            continue;
        };
        let applied = if r.outcome.is_final() {
            state.done
        } else {
            state.deferred >= Some(r.order_key())
        };
        if !applied {
            return Err(format!("just acknowledged, not applied: {r:?}"));
        }
    }
    Ok(())
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
    let side = disk_side_records(disk)?;
    let orphans = side
        .deletions
        .iter()
        .filter(|id| !again.index.contains(**id))
        .count();
    if orphans > 0 {
        return Err(format!(
            "{orphans} orphaned deletion(s) left after two full compactions"
        ));
    }
    let unneeded: Vec<&DeliveryResult> = side
        .results
        .iter()
        .filter(|r| !again.index.needs_result(r))
        .collect();
    if !unneeded.is_empty() {
        return Err(format!(
            "{} orphaned or superseded result(s) left after two full compactions: {:?}",
            unneeded.len(),
            unneeded.first()
        ));
    }
    let orphans = side
        .markers
        .iter()
        .filter(|m| !again.index.needs_marker(m))
        .count();
    if orphans > 0 {
        return Err(format!(
            "{orphans} orphaned DSN marker(s) left after two full compactions"
        ));
    }
    // Stated without the index's own `needs_result`: per indexed recipient, only Deferred
    // results of its latest key, and no result of an address the message does not have.
    for r in &side.results {
        let Some(e) = again.index.get(r.id) else {
            continue;
        };
        let Some(state) = e.remote.iter().find(|s| *s.name == *r.recipient) else {
            return Err(format!("result for a stray recipient kept: {r:?}"));
        };
        if !r.outcome.is_final() && state.deferred != Some(r.order_key()) {
            return Err(format!(
                "superseded Deferred kept (latest {:?}): {r:?}",
                state.deferred
            ));
        }
    }
    for (id, p) in &model.accepted {
        if !p.meta.remote.is_empty() && model.acked.contains(id) && !again.index.contains(*id) {
            cov.relayed_garbage_dropped += 1;
        }
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
            let batch: Vec<Pending> = if rng.chance(1, 4) && !model.acked.is_empty() {
                (0..1 + rng.below(3))
                    .map(|_| Pending::Deletion(deletion(&mut rng, &model)))
                    .collect()
            } else if rng.chance(1, 3) && !model.acked.is_empty() {
                let mut batch = Vec::new();
                for _ in 0..1 + rng.below(3) {
                    batch.push(Pending::Delivery(delivery(&mut rng, &mut model)));
                }
                batch
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
                        model.accepted.insert(m.meta.id.into(), m.clone());
                        model.acked.insert(m.meta.id.into());
                    }
                    Pending::Deletion(d) => {
                        for id in &d.ids {
                            model.accepted_deletions.insert((d.mailbox.clone(), *id));
                            model.acked_deletions.insert((d.mailbox.clone(), *id));
                        }
                    }
                    Pending::Delivery(d) => {
                        model.accept_delivery(d);
                        model.ack_delivery(d);
                    }
                    Pending::State(_) => return Err("no state records here".into()),
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

/// Every deletion id, delivery result and DSN marker on the disk.
#[derive(Default)]
struct SideRecords {
    deletions: Vec<QueueId>,
    results: Vec<DeliveryResult>,
    markers: Vec<DsnSent>,
}

fn disk_side_records(disk: &SimDisk) -> Result<SideRecords, String> {
    let mut side = SideRecords::default();
    for shard in disk.list_shards().map_err(|e| e.to_string())? {
        super::recovery::scan_shard(disk, shard, super::recovery::Mode::ReadOnly, &mut |v| {
            match v.record {
                Record::Deletion(d) => side.deletions.extend(d.ids),
                Record::Delivery(d) => {
                    side.results.extend(d.results);
                    side.markers.extend(d.dsn_sent);
                }
                Record::Message(_) | Record::State(_) => {}
            }
            std::ops::ControlFlow::Continue(())
        })
        .map_err(|e| e.to_string())?;
    }
    Ok(side)
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
            c.results_acked,
            c.results_failed,
            c.finals_acked,
            c.relayed_garbage_dropped,
            c.results_dropped,
            c.pending_replayed,
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
            model.accepted.insert(p.meta.id.into(), p.clone());
            model.acked.insert(p.meta.id.into());
            locations.push((p.meta.id.into(), loc));
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
