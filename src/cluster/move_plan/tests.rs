//! The plan against a model of the target: applied, it makes the target equal the source
//! (names unique at every step), and planned again it is empty.

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;

use super::*;
use crate::mailstore::ExportedMessage;
use crate::spool::state::INBOX;

fn msg(uid: u32, body: u64, flags: u8, modseq: u64) -> ExportedMessage {
    ExportedMessage {
        uid,
        id: body,
        size: 100 + body,
        system_flags: flags,
        keywords: if flags & 1 == 1 {
            vec!["$Label1".into()]
        } else {
            vec![]
        },
        internal_date: 1_000 + body as i64,
        zone_minutes: 60,
        modseq,
    }
}

fn folder(
    id: FolderId,
    name: &str,
    uidvalidity: u32,
    messages: Vec<ExportedMessage>,
) -> ExportedFolder {
    let uidnext = messages.iter().map(|m| m.uid + 1).max().unwrap_or(1);
    let highest_modseq = messages.iter().map(|m| m.modseq).max().unwrap_or(0);
    ExportedFolder {
        id,
        name: name.into(),
        uidvalidity,
        special_use: None,
        uidnext,
        highest_modseq,
        messages,
    }
}

/// The target after `plan`, as the target's store would apply it; panics if two folders
/// ever share a name.
fn apply(target: &ExportedStore, plan: &Plan) -> ExportedStore {
    let mut folders: BTreeMap<FolderId, ExportedFolder> =
        target.folders.iter().map(|f| (f.id, f.clone())).collect();
    let mut subs: std::collections::BTreeSet<String> =
        target.subscriptions.iter().cloned().collect();
    let unique = |folders: &BTreeMap<FolderId, ExportedFolder>| {
        let mut names: Vec<&str> = folders.values().map(|f| f.name.as_str()).collect();
        names.sort();
        let n = names.len();
        names.dedup();
        assert_eq!(n, names.len(), "two folders share a name: {names:?}");
    };
    let sizes: HashMap<u64, u64> = target
        .folders
        .iter()
        .flat_map(|f| f.messages.iter().map(|m| (m.id, m.size)))
        .collect();
    for op in &plan.folders {
        match op {
            StateOp::DeleteFolder { folder } => {
                folders.remove(folder);
            }
            StateOp::CreateFolder {
                folder,
                name,
                uidvalidity,
                special_use,
            } => {
                let f = folders.entry(*folder).or_insert_with(|| ExportedFolder {
                    id: *folder,
                    name: name.clone(),
                    uidvalidity: *uidvalidity,
                    special_use: None,
                    uidnext: 1,
                    highest_modseq: 0,
                    messages: vec![],
                });
                f.name = name.clone();
                f.special_use = special_use.map(|r| r as u8);
                unique(&folders);
            }
            StateOp::Subscribe { name, subscribed } => {
                if *subscribed {
                    subs.insert(name.clone());
                } else {
                    subs.remove(name);
                }
            }
            other => panic!("not a folder op: {other:?}"),
        }
    }
    let place =
        |folders: &mut BTreeMap<FolderId, ExportedFolder>, id: u64, size: u64, p: &Placement| {
            let f = folders.get_mut(&p.folder).expect("folder created first");
            assert_eq!(f.uidvalidity, p.uidvalidity);
            f.messages.retain(|m| m.uid != p.uid);
            f.messages.push(ExportedMessage {
                uid: p.uid,
                id,
                size,
                system_flags: p.flags.system,
                keywords: p.flags.keywords.clone(),
                internal_date: p.internal_date,
                zone_minutes: p.zone_minutes,
                modseq: p.modseq,
            });
            f.messages.sort_by_key(|m| m.uid);
            f.uidnext = f.uidnext.max(p.uid + 1);
            f.highest_modseq = f.highest_modseq.max(p.modseq);
        };
    for (id, p) in &plan.copies {
        let size = *sizes.get(&id.0).expect("a copy of a body the target holds");
        place(&mut folders, id.0, size, p);
    }
    // New bodies get ids the target never used.
    let mut next_id = 1_000_000 + sizes.keys().max().copied().unwrap_or(0);
    for import in &plan.imports {
        next_id += 1;
        for p in &import.placements {
            place(&mut folders, next_id, import.size, p);
        }
    }
    for op in &plan.fixes {
        match op {
            StateOp::SetFlags {
                folder,
                uid,
                flags,
                modseq,
            } => {
                let f = folders.get_mut(folder).unwrap();
                let m = f.messages.iter_mut().find(|m| m.uid == *uid).unwrap();
                m.system_flags = flags.system;
                m.keywords = flags.keywords.clone();
                m.modseq = *modseq;
                f.highest_modseq = f.highest_modseq.max(*modseq);
            }
            StateOp::Expunge {
                folder,
                uids,
                modseq,
            } => {
                let f = folders.get_mut(folder).unwrap();
                f.messages.retain(|m| !uids.contains(&m.uid));
                f.highest_modseq = f.highest_modseq.max(*modseq);
            }
            StateOp::FolderCounters {
                folder,
                uidnext,
                highest_modseq,
            } => {
                let f = folders.get_mut(folder).unwrap();
                f.uidnext = f.uidnext.max(*uidnext);
                f.highest_modseq = f.highest_modseq.max(*highest_modseq);
            }
            other => panic!("not a fix: {other:?}"),
        }
    }
    ExportedStore {
        folders: folders.into_values().collect(),
        subscriptions: subs.into_iter().collect(),
        pending: 0,
    }
}

/// `a` and `b` are the same store, body ids aside; copies of one body on one side are
/// copies of one body on the other.
fn assert_same(a: &ExportedStore, b: &ExportedStore) {
    let strip = |s: &ExportedStore| {
        let mut s = s.clone();
        for f in &mut s.folders {
            for m in &mut f.messages {
                m.id = 0;
            }
        }
        s.pending = 0;
        s
    };
    assert_eq!(strip(a), strip(b));
    let mut forward: HashMap<u64, u64> = HashMap::new();
    let mut backward: HashMap<u64, u64> = HashMap::new();
    for (fa, fb) in a.folders.iter().zip(&b.folders) {
        for (ma, mb) in fa.messages.iter().zip(&fb.messages) {
            assert_eq!(
                *forward.entry(ma.id).or_insert(mb.id),
                mb.id,
                "one body became two"
            );
            assert_eq!(
                *backward.entry(mb.id).or_insert(ma.id),
                ma.id,
                "two bodies became one"
            );
        }
    }
}

fn converges(source: &ExportedStore, target: &ExportedStore) {
    let p = plan(source, target).expect("no conflict");
    let after = apply(target, &p);
    assert_same(source, &after);
    let again = plan(source, &after).expect("no conflict");
    assert!(again.is_empty(), "a second plan: {again:?}");
}

fn sample() -> ExportedStore {
    ExportedStore {
        folders: vec![
            folder(
                INBOX,
                "INBOX",
                1,
                vec![msg(1, 1, 0, 3), msg(2, 2, 1, 4), msg(4, 3, 2, 9)],
            ),
            folder(
                3,
                "Work",
                1_700_000_000,
                vec![msg(1, 2, 0, 1), msg(2, 4, 8, 2)],
            ),
        ],
        subscriptions: vec!["Work".into()],
        pending: 0,
    }
}

#[test]
fn an_empty_target_gets_everything_each_body_once() {
    let source = sample();
    let target = ExportedStore {
        folders: vec![folder(INBOX, "INBOX", 1, vec![])],
        subscriptions: vec![],
        pending: 0,
    };
    let p = plan(&source, &target).unwrap();
    // Body 2 is in INBOX and Work: one import with two placements.
    assert_eq!(p.imports.len(), 4);
    assert_eq!(p.messages(), 5);
    assert!(p.copies.is_empty());
    assert_eq!(
        p.folders,
        vec![
            StateOp::CreateFolder {
                folder: 3,
                name: "Work".into(),
                uidvalidity: 1_700_000_000,
                special_use: None
            },
            StateOp::Subscribe {
                name: "Work".into(),
                subscribed: true
            }
        ]
    );
    converges(&source, &target);
}

#[test]
fn a_rerun_copies_a_held_body_and_fixes_flags_and_expunges() {
    let source = sample();
    let mut target = source.clone();
    // The target got INBOX's body 2 but not Work's copy of it, an old flag set, and a
    // message the source expunged since.
    target.folders[1].messages.clear();
    target.folders[0].messages[1].system_flags = 0;
    target.folders[0].messages[1].keywords.clear();
    target.folders[0].messages.insert(2, msg(3, 9, 0, 5));
    for f in &mut target.folders {
        for m in &mut f.messages {
            m.id += 500;
        }
    }
    let p = plan(&source, &target).unwrap();
    assert_eq!(p.copies.len(), 1, "{p:?}");
    assert_eq!(p.copies[0].0, QueueId(502));
    assert_eq!(p.imports.len(), 1);
    assert!(p.fixes.contains(&StateOp::Expunge {
        folder: INBOX,
        uids: vec![3],
        modseq: 9
    }));
    converges(&source, &target);
}

#[test]
fn swapped_names_pass_through_names_of_their_own() {
    let mut source = sample();
    source
        .folders
        .push(folder(4, "Play", 1_700_000_001, vec![]));
    let mut target = source.clone();
    target.folders[1].name = "Play".into();
    target.folders[2].name = "Work".into();
    // And a folder the source deleted since, holding the name a new one takes.
    target
        .folders
        .push(folder(5, "New", 1_700_000_002, vec![msg(1, 7, 0, 1)]));
    source.folders.push(folder(6, "New", 1_700_000_003, vec![]));
    converges(&source, &target);
}

#[test]
fn a_store_that_did_not_come_from_here_is_refused() {
    let source = sample();
    let mut other = source.clone();
    other.folders[1].uidvalidity = 5;
    assert!(matches!(
        plan(&source, &other),
        Err(Conflict::UidValidity { target: 5, .. })
    ));
    let mut other = source.clone();
    other.folders[0].messages.push(msg(9, 9, 0, 1));
    assert!(matches!(
        plan(&source, &other),
        Err(Conflict::UnknownUid { uid: 9, .. })
    ));
    let mut other = source.clone();
    other.folders[0].messages[0].size = 1;
    assert!(matches!(
        plan(&source, &other),
        Err(Conflict::OtherMessage { uid: 1, .. })
    ));
    assert!(plan(&source, &source).unwrap().is_empty());
}

/// A source store, and a target that holds part of an earlier state of it.
fn stores() -> impl Strategy<Value = (ExportedStore, ExportedStore)> {
    let message = (1u32..30, 0u64..12, 0u8..32, 1u64..40, any::<bool>(), 0u8..4);
    let folder_spec = (prop::collection::vec(message, 0..12), 0u8..4, any::<bool>());
    (prop::collection::vec(folder_spec, 1..5), 0u8..16, 0u8..4).prop_map(|(specs, subs, gone)| {
        let mut source = ExportedStore::default();
        let mut target = ExportedStore::default();
        for (i, (messages, state, rename)) in specs.into_iter().enumerate() {
            let id = i as FolderId;
            let uidvalidity = if id == INBOX { 1 } else { 100 + id };
            let mut mine = Vec::new();
            let mut theirs = Vec::new();
            let mut uids = std::collections::BTreeSet::new();
            for (uid, body, flags, modseq, held, how) in messages {
                if !uids.insert(uid) {
                    continue;
                }
                let m = msg(uid, body, flags & 31, modseq);
                match how {
                    // Expunged on the source since the target got it.
                    0 if held => theirs.push(ExportedMessage {
                        id: m.id + 500,
                        ..m
                    }),
                    _ => {
                        if held {
                            let mut t = m.clone();
                            t.id += 500;
                            if how == 1 {
                                t.system_flags ^= 1;
                                t.modseq = t.modseq.saturating_sub(1);
                            }
                            theirs.push(t);
                        }
                        mine.push(m);
                    }
                }
            }
            mine.sort_by_key(|m| m.uid);
            theirs.sort_by_key(|m| m.uid);
            let name = if id == INBOX {
                "INBOX".to_string()
            } else {
                format!("f{id}")
            };
            let mut f = folder(id, &name, uidvalidity, mine);
            // UIDNEXT and HIGHESTMODSEQ above every message, as after expunges.
            f.uidnext = f.uidnext.max(31);
            f.highest_modseq = f.highest_modseq.max(40);
            let mut t = folder(id, &name, uidvalidity, theirs);
            t.uidnext = t.uidnext.min(f.uidnext);
            t.highest_modseq = t.highest_modseq.min(f.highest_modseq);
            if subs & (1 << (i % 4)) != 0 {
                source.subscriptions.push(name.clone());
            }
            if subs & (1 << ((i + 1) % 4)) != 0 {
                target.subscriptions.push(name.clone());
            }
            if rename && id != INBOX {
                t.name = format!("old{id}");
            }
            source.folders.push(f);
            // state 0: the folder is not on the target yet (INBOX always is).
            if state != 0 || id == INBOX {
                target.folders.push(t);
            }
        }
        for g in 0..gone {
            let id = 50 + FolderId::from(g);
            target.folders.push(folder(
                id,
                &format!("gone{g}"),
                900 + id,
                vec![msg(1, 40 + u64::from(g), 0, 1)],
            ));
        }
        // A rename into another folder's old name: swap two targets' names.
        let renamable: Vec<usize> = (0..target.folders.len())
            .filter(|i| target.folders[*i].id != INBOX && target.folders[*i].id < 50)
            .collect();
        if let [a, b, ..] = renamable[..] {
            let name_a = target.folders[a].name.clone();
            target.folders[a].name = target.folders[b].name.clone();
            target.folders[b].name = name_a;
        }
        (source, target)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_plan_makes_the_target_the_source_and_a_rerun_plans_nothing((source, target) in stores()) {
        // Bodies the target holds are those it had; copies share them.
        converges(&source, &target);
    }

    #[test]
    fn a_partial_apply_then_a_rerun_converges((source, target) in stores(), cut in 0usize..20) {
        let p = plan(&source, &target).unwrap();
        // A crash after some imports: only the first `cut` bodies landed.
        let partial = Plan {
            imports: p.imports.iter().take(cut).cloned().collect(),
            copies: p.copies.clone(),
            folders: p.folders.clone(),
            fixes: Vec::new(),
        };
        let middle = apply(&target, &partial);
        converges(&source, &middle);
    }
}
