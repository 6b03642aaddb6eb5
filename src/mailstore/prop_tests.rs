//! Random operation sequences: the live store, and stores rebuilt from what it wrote (all
//! records, or the last checkpoint and what follows), must agree; UIDs only grow and are
//! never reused; HIGHESTMODSEQ never falls; pending UIDs hide what is above them; `released`
//! is exactly the bodies left with no copy.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use proptest::prelude::*;

use super::*;
use crate::envelope::QueueId;
use crate::spool::state::{system_flag, Flags, Placement, SpecialUse};

const NOW: i64 = 1_800_000_000;
const NAMES: [&str; 8] = ["a", "b", "a/b", "c/d", "INBOX/x", "Trash", "a/b/c", "z"];

#[derive(Debug, Clone)]
enum Op {
    Create(usize, bool),
    Rename(usize, usize),
    Delete(usize),
    Subscribe(usize, bool),
    Allocate(usize, u8),
    Deliver(usize),
    /// The frame commits; `delivered` has not run yet (a crash here leaves it so).
    Commit(usize),
    Abandon(usize),
    Store(usize, u8, u8, u8, Option<u8>),
    Copy(usize, u8, usize),
    Move(usize, u8, usize),
    Expunge(usize, Option<u8>),
    Checkpoint,
    Defaults,
}

fn op() -> impl Strategy<Value = Op> {
    let n = NAMES.len();
    prop_oneof![
        2 => (0..n, any::<bool>()).prop_map(|(a, b)| Op::Create(a, b)),
        1 => (0..n, 0..n).prop_map(|(a, b)| Op::Rename(a, b)),
        1 => (0..n).prop_map(Op::Delete),
        1 => (0..n, any::<bool>()).prop_map(|(a, b)| Op::Subscribe(a, b)),
        5 => (0..8usize, any::<u8>()).prop_map(|(f, fl)| Op::Allocate(f, fl)),
        4 => (0..8usize).prop_map(Op::Deliver),
        2 => (0..8usize).prop_map(Op::Commit),
        1 => (0..8usize).prop_map(Op::Abandon),
        4 => (0..8usize, any::<u8>(), 0..3u8, any::<u8>(), proptest::option::of(0..20u8))
            .prop_map(|(f, u, m, fl, s)| Op::Store(f, u, m, fl, s)),
        2 => (0..8usize, any::<u8>(), 0..8usize).prop_map(|(f, u, t)| Op::Copy(f, u, t)),
        2 => (0..8usize, any::<u8>(), 0..8usize).prop_map(|(f, u, t)| Op::Move(f, u, t)),
        2 => (0..8usize, proptest::option::of(any::<u8>())).prop_map(|(f, u)| Op::Expunge(f, u)),
        1 => Just(Op::Checkpoint),
        1 => Just(Op::Defaults),
    ]
}

fn flags_of(bits: u8) -> Flags {
    let words = ["$Junk", "work", "WORK", "later"];
    Flags {
        system: bits & system_flag::ALL,
        keywords: (0..3)
            .filter(|i| bits & (0x20 << i) != 0)
            .map(|i| words[i].to_string())
            .collect(),
    }
}

/// The live store and everything it wrote.
struct Run {
    s: UserStore,
    records: Vec<MailboxState>,
    frames: Vec<(QueueId, u64, Placement)>,
    /// Allocations not resolved, with their frame once it committed.
    pending: Vec<(Placement, Option<(QueueId, u64)>)>,
    next_id: u64,
    /// Per folder: every UID it ever showed, and the highest.
    shown: HashMap<u32, (BTreeSet<u32>, u32)>,
    highest: HashMap<u32, u64>,
}

impl Run {
    fn new() -> Self {
        Run {
            s: UserStore::new("u"),
            records: Vec::new(),
            frames: Vec::new(),
            pending: Vec::new(),
            next_id: 1,
            shown: HashMap::new(),
            highest: HashMap::new(),
        }
    }

    fn folder(&self, i: usize) -> u32 {
        let ids: Vec<u32> = self.s.list().iter().filter_map(|e| e.folder).collect();
        ids[i % ids.len()]
    }

    fn uids(&self, folder: u32, mask: u8) -> Vec<u32> {
        let snap = self
            .s
            .snapshot(folder)
            .map(|s| s.messages)
            .unwrap_or_default();
        snap.iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << (i % 8)) != 0)
            .map(|(_, (u, _))| *u)
            .collect()
    }

    fn new_frame(&mut self, p: &Placement) -> (QueueId, u64) {
        let id = QueueId::new(1_000 + self.next_id, 3);
        let size = 100 + self.next_id;
        self.next_id += 1;
        self.frames.push((id, size, p.clone()));
        (id, size)
    }

    /// Commits and applies a record, checking `released`.
    fn commit(&mut self, record: Option<MailboxState>) -> Result<(), TestCaseError> {
        let Some(record) = record else {
            return Ok(());
        };
        let before: BTreeSet<QueueId> = self.all_ids();
        self.s.apply(&record);
        let after = self.all_ids();
        let gone: Vec<QueueId> = before.difference(&after).copied().collect();
        if !record.ops.is_empty() {
            prop_assert_eq!(&record.released, &gone, "released of {:?}", record);
        }
        for id in &record.released {
            prop_assert!(!self.s.holds(*id));
        }
        self.records.push(record);
        Ok(())
    }

    fn all_ids(&self) -> BTreeSet<QueueId> {
        self.s
            .folders
            .values()
            .flat_map(|f| f.messages.values().map(|e| e.id))
            .collect()
    }

    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match op {
            Op::Create(n, special) => {
                let role = special.then_some(SpecialUse::Archive);
                if let Ok(r) = self.s.create_folder(NAMES[*n], role, NOW) {
                    self.commit(Some(r))?;
                }
            }
            Op::Rename(a, b) => {
                let from = if *a == 0 { "INBOX" } else { NAMES[*a] };
                if let Ok(r) = self.s.rename_folder(from, NAMES[*b], NOW) {
                    self.commit(Some(r))?;
                }
            }
            Op::Delete(n) => {
                if let Ok(r) = self.s.delete_folder(NAMES[*n]) {
                    self.commit(Some(r))?;
                }
            }
            Op::Subscribe(n, on) => {
                let r = self.s.subscribe(NAMES[*n], *on);
                prop_assert!(r.is_ok());
                self.commit(r.ok().flatten())?;
            }
            Op::Allocate(f, bits) => {
                let folder = self.folder(*f);
                let p = self.s.allocate(folder, &flags_of(*bits), NOW + 7, -120);
                prop_assert!(p.is_ok());
                if let Ok(p) = p {
                    self.pending.push((p, None));
                }
            }
            Op::Commit(i) => {
                if self.pending.is_empty() {
                    return Ok(());
                }
                let at = i % self.pending.len();
                if self.pending[at].1.is_none() {
                    let frame = self.new_frame(&self.pending[at].0.clone());
                    self.pending[at].1 = Some(frame);
                }
            }
            Op::Deliver(i) | Op::Abandon(i) => {
                if self.pending.is_empty() {
                    return Ok(());
                }
                let (p, frame) = self.pending.remove(i % self.pending.len());
                let r = match (op, frame) {
                    (Op::Abandon(_), None) => self.s.abandoned(p.folder, p.uid),
                    (_, Some((id, size))) => self.s.delivered(id, size, &p),
                    (_, None) => {
                        let (id, size) = self.new_frame(&p);
                        self.s.delivered(id, size, &p)
                    }
                };
                self.commit(r)?;
            }
            Op::Store(f, mask, mode, bits, since) => {
                let folder = self.folder(*f);
                let uids = self.uids(folder, *mask);
                let mode = [FlagMode::Add, FlagMode::Remove, FlagMode::Replace][*mode as usize];
                let out =
                    self.s
                        .store_flags(folder, &uids, mode, &flags_of(*bits), since.map(u64::from));
                prop_assert!(out.is_ok());
                if let Ok(out) = out {
                    for uid in &out.failed {
                        prop_assert!(uids.contains(uid));
                    }
                    self.commit(out.record)?;
                }
            }
            Op::Copy(f, mask, t) | Op::Move(f, mask, t) => {
                let (from, to) = (self.folder(*f), self.folder(*t));
                let uids = self.uids(from, *mask);
                let out = if matches!(op, Op::Copy(..)) {
                    self.s.copy(from, &uids, to)
                } else {
                    self.s.move_(from, &uids, to)
                };
                prop_assert!(out.is_ok());
                if let Ok(out) = out {
                    let srcs: Vec<u32> = out.pairs.iter().map(|(s, _)| *s).collect();
                    prop_assert_eq!(srcs, uids);
                    self.commit(out.record)?;
                }
            }
            Op::Expunge(f, mask) => {
                let folder = self.folder(*f);
                let subset = mask.map(|m| self.uids(folder, m));
                let out = self.s.expunge(folder, subset.as_deref());
                prop_assert!(out.is_ok());
                if let Ok(out) = out {
                    self.commit(out.record)?;
                }
            }
            Op::Checkpoint => {
                let r = self.s.checkpoint();
                self.commit(Some(r))?;
            }
            Op::Defaults => {
                let r = self.s.ensure_defaults(NOW);
                self.commit(r)?;
            }
        }
        self.check_invariants()
    }

    fn check_invariants(&mut self) -> Result<(), TestCaseError> {
        for entry in self.s.list() {
            let Some(folder) = entry.folder else { continue };
            let snap = self
                .s
                .snapshot(folder)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let key = folder;
            let (shown, max) = self.shown.entry(key).or_default();
            for (uid, e) in &snap.messages {
                if !shown.contains(uid) {
                    prop_assert!(*uid > *max, "UID {} shown after {} in {}", uid, max, folder);
                    shown.insert(*uid);
                    *max = *uid;
                }
                prop_assert!(e.modseq <= snap.highest_modseq);
            }
            prop_assert!(snap.messages.last().is_none_or(|(u, _)| *u < snap.uidnext));
            for (p, _) in self.pending.iter().filter(|(p, _)| p.folder == folder) {
                prop_assert!(snap.messages.iter().all(|(u, _)| u < &p.uid));
                prop_assert!(snap.uidnext <= p.uid);
            }
            let h = self.highest.entry(folder).or_default();
            prop_assert!(
                snap.highest_modseq >= *h,
                "HIGHESTMODSEQ fell in {}",
                folder
            );
            *h = snap.highest_modseq;
        }
        Ok(())
    }
}

/// What must survive a restart: everything but counters that may only grow.
type View = (
    BTreeMap<
        u32,
        (
            String,
            u32,
            Option<SpecialUse>,
            Vec<(u32, QueueId, u64, Flags, i64, i16)>,
        ),
    >,
    Vec<String>,
    u64,
);

fn view(s: &UserStore) -> View {
    let folders = s
        .folders
        .iter()
        .map(|(id, f)| {
            let msgs = f
                .messages
                .iter()
                .map(|(u, e)| {
                    let flags = names::normalize(&e.flags).unwrap_or_default();
                    (*u, e.id, e.size, flags, e.internal_date, e.zone_minutes)
                })
                .collect();
            (*id, (f.name.clone(), f.uidvalidity, f.special_use, msgs))
        })
        .collect();
    (
        folders,
        s.subscriptions().map(str::to_string).collect(),
        s.usage(),
    )
}

fn rebuilt_agrees(
    live: &UserStore,
    rebuilt: &mut UserStore,
    frames: &[(QueueId, u64, Placement)],
    records: &[MailboxState],
) -> Result<(), TestCaseError> {
    let cp = rebuilt.finish_recovery();
    if let Some(cp) = &cp {
        prop_assert!(
            cp.released.is_empty(),
            "nothing should be left to release: {:?}",
            cp
        );
    }
    prop_assert_eq!(view(rebuilt), view(live));
    for (id, f) in &live.folders {
        let r = &rebuilt.folders[id];
        prop_assert!(r.highest_modseq >= f.highest_modseq);
        prop_assert!(r.uidnext <= f.uidnext);
        for (_, _, p) in frames.iter().filter(|(_, _, p)| p.folder == *id) {
            prop_assert!(
                p.uid < r.uidnext,
                "UID {} of a frame could be given again",
                p.uid
            );
        }
        prop_assert!(r.messages.keys().next_back().is_none_or(|u| *u < r.uidnext));
        for (uid, e) in &f.messages {
            prop_assert!(r.messages[uid].modseq >= e.modseq);
        }
    }
    // What recovery wrote reads back to the same store.
    if let Some(cp) = cp {
        let mut again = UserStore::new("u");
        again.replay_state(&cp);
        for r in records.iter().filter(|r| !r.released.is_empty()) {
            again.replay_state(r);
        }
        for (id, size, p) in frames {
            again.replay_delivery(*id, *size, NOW, Some(p));
        }
        prop_assert_eq!(again.finish_recovery(), None);
        prop_assert_eq!(view(&again), view(rebuilt));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn live_and_rebuilt_stores_agree(ops in proptest::collection::vec(op(), 1..80)) {
        let mut run = Run::new();
        for op in &ops {
            run.step(op)?;
        }
        // Every allocation resolves before the "restart": a frame not committed is not there.
        while !run.pending.is_empty() {
            run.step(&Op::Deliver(0))?;
        }

        // From every record, in reverse order, frames last.
        let mut all = UserStore::new("u");
        for r in run.records.iter().rev() {
            all.replay_state(r);
        }
        for (id, size, p) in &run.frames {
            all.replay_delivery(*id, *size, NOW, Some(p));
        }
        rebuilt_agrees(&run.s, &mut all, &run.frames, &run.records)?;

        // As compaction leaves it: the last checkpoint, what follows, and earlier records
        // only where they release something; every frame still on disk.
        let last_cp = run.records.iter().rposition(MailboxState::is_checkpoint);
        if let Some(at) = last_cp {
            let mut compacted = UserStore::new("u");
            for (id, size, p) in &run.frames {
                compacted.replay_delivery(*id, *size, NOW, Some(p));
            }
            for (i, r) in run.records.iter().enumerate() {
                if i >= at || !r.released.is_empty() {
                    compacted.replay_state(r);
                }
            }
            rebuilt_agrees(&run.s, &mut compacted, &run.frames, &run.records)?;
        }
    }

    #[test]
    fn a_record_applied_twice_changes_nothing(ops in proptest::collection::vec(op(), 1..60)) {
        let mut run = Run::new();
        for op in &ops {
            run.step(op)?;
        }
        while !run.pending.is_empty() {
            run.step(&Op::Deliver(0))?;
        }
        let mut once = UserStore::new("u");
        let mut twice = UserStore::new("u");
        for (id, size, p) in &run.frames {
            once.replay_delivery(*id, *size, NOW, Some(p));
            twice.replay_delivery(*id, *size, NOW, Some(p));
        }
        for (k, r) in run.records.iter().enumerate() {
            once.replay_state(r);
            // The same ops under two seqs: both are applied, the second must change nothing.
            for extra in 0..2 {
                let mut dup = r.clone();
                dup.seq = 2 * k as u64 + extra + 1;
                twice.replay_state(&dup);
            }
        }
        let a = once.finish_recovery().map(|r| r.released);
        let b = twice.finish_recovery().map(|r| r.released);
        prop_assert_eq!(a, b);
        prop_assert_eq!(view(&once), view(&twice));
        prop_assert_eq!(view(&once), view(&run.s));
    }

    /// A crash at any point: frames committed whose `delivered` never ran come back, and a
    /// client that synced with the live store (what it showed, and its HIGHESTMODSEQ) learns
    /// every difference with CHANGEDSINCE that HIGHESTMODSEQ.
    #[test]
    fn a_client_misses_nothing_across_a_crash(ops in proptest::collection::vec(op(), 1..80)) {
        let mut run = Run::new();
        for op in &ops {
            run.step(op)?;
        }
        let mut rebuilt = UserStore::new("u");
        for r in &run.records {
            rebuilt.replay_state(r);
        }
        for (id, size, p) in &run.frames {
            rebuilt.replay_delivery(*id, *size, NOW, Some(p));
        }
        // Only a frame whose `delivered` never ran can be left for recovery to release (its
        // folder was deleted meanwhile).
        let unresolved: BTreeSet<QueueId> =
            run.pending.iter().filter_map(|(_, f)| f.map(|(id, _)| id)).collect();
        if let Some(cp) = rebuilt.finish_recovery() {
            for id in &cp.released {
                prop_assert!(unresolved.contains(id) && !rebuilt.holds(*id));
            }
        }
        for entry in run.s.list() {
            let Some(folder) = entry.folder else { continue };
            let live = run.s.snapshot(folder).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let after = rebuilt.snapshot(folder).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(after.uidvalidity, live.uidvalidity);
            prop_assert!(after.highest_modseq >= live.highest_modseq);
            prop_assert!(after.uidnext >= live.uidnext);
            let seen: BTreeMap<u32, &Entry> = live.messages.iter().map(|(u, e)| (*u, e)).collect();
            for (uid, e) in &after.messages {
                match seen.get(uid) {
                    Some(was) => {
                        prop_assert_eq!(e.id, was.id);
                        prop_assert_eq!(&e.flags, &was.flags);
                    }
                    None => prop_assert!(
                        e.modseq > live.highest_modseq,
                        "UID {} in {} appears with modseq {} <= {}",
                        uid, folder, e.modseq, live.highest_modseq
                    ),
                }
            }
            for uid in seen.keys() {
                prop_assert!(after.messages.iter().any(|(u, _)| u == uid), "UID {} lost", uid);
            }
        }
    }
}
