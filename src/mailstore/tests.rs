use super::*;
use crate::envelope::QueueId;
use crate::spool::state::{system_flag, Flags, Placement, SpecialUse, StateOp, INBOX};

const NOW: i64 = 1_800_000_000;

fn id(n: u64) -> QueueId {
    QueueId::new(1_000_000 + n, 0)
}

fn flags(system: u8, keywords: &[&str]) -> Flags {
    Flags {
        system,
        keywords: keywords.iter().map(|k| k.to_string()).collect(),
    }
}

/// What the server does with a record: it commits, then the store applies it.
macro_rules! commit {
    ($s:ident, $record:expr) => {{
        let record: MailboxState = $record;
        $s.apply(&record);
        record
    }};
}

/// A whole delivery: allocate, commit the frame, delivered.
fn deliver(s: &mut UserStore, folder: u32, n: u64, size: u64) -> Placement {
    let p = s.allocate(folder, &Flags::default(), NOW, 60).unwrap();
    if let Some(r) = s.delivered(id(n), size, &p) {
        s.apply(&r);
    }
    p
}

fn create(s: &mut UserStore, name: &str) -> u32 {
    let r = s_create(s, name);
    s.apply(&r);
    s.folder_id(name).unwrap()
}

fn s_create(s: &mut UserStore, name: &str) -> MailboxState {
    s.create_folder(name, None, NOW).unwrap()
}

fn uids(s: &UserStore, folder: u32) -> Vec<u32> {
    s.snapshot(folder)
        .unwrap()
        .messages
        .iter()
        .map(|(u, _)| *u)
        .collect()
}

fn names_of(s: &UserStore) -> Vec<(String, bool, bool)> {
    s.list()
        .into_iter()
        .map(|e| (e.name.clone(), e.selectable(), e.has_children))
        .collect()
}

// ---- names and flags ----

#[test]
fn names_are_canonical_and_validated() {
    use names::canonical;
    assert_eq!(canonical("inbox").unwrap(), "INBOX");
    assert_eq!(canonical("Inbox/Sub").unwrap(), "INBOX/Sub");
    assert_eq!(canonical("InboxX").unwrap(), "InboxX");
    assert_eq!(canonical("a/b/").unwrap(), "a/b");
    assert_eq!(canonical("Ünïcødé").unwrap(), "Ünïcødé");
    assert!(matches!(canonical(""), Err(StoreError::InvalidName(_))));
    assert!(matches!(canonical("a//b"), Err(StoreError::InvalidName(_))));
    assert!(matches!(canonical("/a"), Err(StoreError::InvalidName(_))));
    assert!(matches!(canonical("a*"), Err(StoreError::InvalidName(_))));
    assert!(matches!(canonical("a%b"), Err(StoreError::InvalidName(_))));
    assert!(matches!(canonical("a\nb"), Err(StoreError::InvalidName(_))));
    let deep = vec!["x"; names::MAX_DEPTH + 1].join("/");
    assert!(matches!(canonical(&deep), Err(StoreError::InvalidName(_))));
    let long = "x".repeat(MAX_NAME_BYTES + 1);
    assert_eq!(
        canonical(&long),
        Err(StoreError::NameTooLong {
            max: MAX_NAME_BYTES
        })
    );
}

#[test]
fn flags_normalise_and_combine() {
    let f = names::normalize(&flags(0xff, &["$Junk", "foo", "FOO", ""])).unwrap();
    assert_eq!(f, flags(system_flag::ALL, &["$Junk", "foo"]));
    let cur = flags(system_flag::SEEN, &["a"]);
    let add = names::combine(
        &cur,
        FlagMode::Add,
        &flags(system_flag::FLAGGED, &["B", "A"]),
    )
    .unwrap();
    assert_eq!(
        add,
        flags(system_flag::SEEN | system_flag::FLAGGED, &["a", "B"])
    );
    let rem = names::combine(&add, FlagMode::Remove, &flags(system_flag::SEEN, &["b"])).unwrap();
    assert_eq!(rem, flags(system_flag::FLAGGED, &["a"]));
    let rep = names::combine(&add, FlagMode::Replace, &flags(0, &[])).unwrap();
    assert_eq!(rep, Flags::default());
    let many: Vec<String> = (0..=MAX_KEYWORDS).map(|i| format!("k{i}")).collect();
    let too_many = Flags {
        system: 0,
        keywords: many,
    };
    assert_eq!(
        names::normalize(&too_many),
        Err(StoreError::TooManyKeywords { max: MAX_KEYWORDS })
    );
    let long = flags(0, &[&"k".repeat(names::MAX_KEYWORD_BYTES + 1)]);
    assert!(matches!(
        names::normalize(&long),
        Err(StoreError::KeywordTooLong { .. })
    ));
}

// ---- folders ----

#[test]
fn inbox_always_exists_with_uidvalidity_one() {
    let s = UserStore::new("u");
    assert_eq!(s.folder_id("inbox"), Some(INBOX));
    let st = s.status(INBOX).unwrap();
    assert_eq!(
        (st.uidvalidity, st.uidnext, st.messages),
        (INBOX_UIDVALIDITY, 1, 0)
    );
}

#[test]
fn create_makes_missing_superiors_and_refuses_existing() {
    let mut s = UserStore::new("u");
    let r = s
        .create_folder("a/b/c", Some(SpecialUse::Archive), NOW)
        .unwrap();
    assert_eq!(r.ops.len(), 3);
    assert_eq!(r.seq, 1);
    assert!(r.released.is_empty());
    s.apply(&r);
    assert!(s.folder_id("a").is_some() && s.folder_id("a/b").is_some());
    let c = s.folder_id("a/b/c").unwrap();
    assert_eq!(
        s.list()
            .iter()
            .find(|e| e.name == "a/b/c")
            .unwrap()
            .special_use,
        Some(SpecialUse::Archive)
    );
    assert_eq!(s.status(c).unwrap().uidvalidity, NOW as u32 + 2);
    assert_eq!(
        s.create_folder("a/b", None, NOW),
        Err(StoreError::AlreadyExists)
    );
    assert_eq!(
        s.create_folder("INBOX", None, NOW),
        Err(StoreError::AlreadyExists)
    );
    assert_eq!(
        s.create_folder("iNbOx", None, NOW),
        Err(StoreError::AlreadyExists)
    );
    // INBOX as a parent is INBOX in any case.
    commit!(s, s.create_folder("inbox/x", None, NOW).unwrap());
    assert!(s.folder_id("INBOX/x").is_some());
}

#[test]
fn nothing_changes_before_apply() {
    let mut s = UserStore::new("u");
    let _ = s.create_folder("a", None, NOW).unwrap();
    assert_eq!(s.folder_id("a"), None);
    // The unapplied record's seq is not reused.
    let r = s.create_folder("b", None, NOW).unwrap();
    assert_eq!(r.seq, 2);
}

#[test]
fn too_many_folders_is_refused() {
    let mut s = UserStore::new("u");
    s.set_max_folders(3);
    create(&mut s, "a");
    assert_eq!(
        s.create_folder("b/c", None, NOW),
        Err(StoreError::TooManyFolders { max: 3 })
    );
    create(&mut s, "b");
    assert_eq!(
        s.create_folder("c", None, NOW),
        Err(StoreError::TooManyFolders { max: 3 })
    );
}

#[test]
fn a_recreated_name_gets_a_greater_uidvalidity_even_after_a_checkpoint() {
    let mut s = UserStore::new("u");
    let a = create(&mut s, "a");
    let old = s.status(a).unwrap().uidvalidity;
    commit!(s, s.delete_folder("a").unwrap());
    let cp = s.checkpoint();
    s.apply(&cp);
    // Rebuilt from the checkpoint alone: the deleted folder's counters survived it.
    let mut r = UserStore::new("u");
    r.replay_state(&cp);
    assert_eq!(r.finish_recovery(), None);
    for store in [&mut s, &mut r] {
        let rec = store.create_folder("a", None, NOW).unwrap();
        let StateOp::CreateFolder {
            folder,
            uidvalidity,
            ..
        } = rec.ops[0].clone()
        else {
            panic!("not a create: {rec:?}");
        };
        assert!(uidvalidity > old);
        assert!(folder > a, "folder id {folder} reused");
    }
}

#[test]
fn rename_moves_inferiors_and_creates_superiors() {
    let mut s = UserStore::new("u");
    let a = create(&mut s, "a/b");
    let a_parent = s.folder_id("a").unwrap();
    deliver(&mut s, a, 1, 10);
    let before = s.status(a).unwrap();
    commit!(s, s.rename_folder("a", "x/y", NOW).unwrap());
    assert_eq!(s.folder_id("x/y"), Some(a_parent));
    assert_eq!(s.folder_id("x/y/b"), Some(a));
    assert!(s.folder_id("x").is_some());
    assert_eq!(s.folder_id("a"), None);
    assert_eq!(s.folder_id("a/b"), None);
    assert_eq!(
        s.status(a).unwrap(),
        before,
        "renaming keeps UIDVALIDITY and messages"
    );
}

#[test]
fn rename_errors() {
    let mut s = UserStore::new("u");
    create(&mut s, "a/c");
    create(&mut s, "b");
    create(&mut s, "z/c");
    assert_eq!(
        s.rename_folder("nope", "q", NOW),
        Err(StoreError::NoSuchFolder)
    );
    assert_eq!(
        s.rename_folder("a", "b", NOW),
        Err(StoreError::AlreadyExists)
    );
    assert_eq!(
        s.rename_folder("a", "a/q", NOW),
        Err(StoreError::RenameIntoItself)
    );
    // z is a folder; its inferior z/c would collide with a/c renamed.
    commit!(s, s.delete_folder("z").unwrap());
    assert_eq!(
        s.rename_folder("a", "z", NOW),
        Err(StoreError::AlreadyExists)
    );
    assert_eq!(
        s.rename_folder("a", "inbox", NOW),
        Err(StoreError::AlreadyExists)
    );
}

#[test]
fn renaming_inbox_moves_its_messages_and_leaves_it_empty() {
    let mut s = UserStore::new("u");
    let child = create(&mut s, "INBOX/keep");
    deliver(&mut s, INBOX, 1, 10);
    deliver(&mut s, INBOX, 2, 20);
    let r = commit!(s, s.rename_folder("INBOX", "Old", NOW).unwrap());
    assert!(r.released.is_empty());
    let old = s.folder_id("Old").unwrap();
    assert_eq!(uids(&s, old), vec![1, 2]);
    assert_eq!(uids(&s, INBOX), Vec::<u32>::new());
    assert_eq!(s.folder_id("INBOX/keep"), Some(child));
    assert_eq!(
        s.status(INBOX).unwrap().uidnext,
        3,
        "UIDNEXT does not go back"
    );
    assert_eq!(s.usage(), 30);
    assert_eq!(deliver(&mut s, INBOX, 3, 1).uid, 3);
}

#[test]
fn delete_refuses_inbox_and_names_that_are_not_folders() {
    let mut s = UserStore::new("u");
    create(&mut s, "p/c");
    assert_eq!(
        s.delete_folder("inbox"),
        Err(StoreError::InboxCannotBeDeleted)
    );
    assert_eq!(s.delete_folder("nope"), Err(StoreError::NoSuchFolder));
    commit!(s, s.delete_folder("p").unwrap());
    // p now only has an inferior: listed, not selectable, and not deletable (\Noselect).
    assert_eq!(
        names_of(&s),
        vec![
            ("INBOX".into(), true, false),
            ("p".into(), false, true),
            ("p/c".into(), true, false)
        ]
    );
    assert_eq!(s.delete_folder("p"), Err(StoreError::NoSuchFolder));
    commit!(s, s.delete_folder("p/c").unwrap());
    assert_eq!(names_of(&s), vec![("INBOX".into(), true, false)]);
}

#[test]
fn delete_releases_only_bodies_with_no_copy_left() {
    let mut s = UserStore::new("u");
    let a = create(&mut s, "a");
    deliver(&mut s, a, 1, 10);
    deliver(&mut s, a, 2, 20);
    commit!(s, s.copy(a, &[1], INBOX).unwrap().record.unwrap());
    let r = commit!(s, s.delete_folder("a").unwrap());
    assert_eq!(r.released, vec![id(2)]);
    assert!(s.holds(id(1)) && !s.holds(id(2)));
    assert_eq!(s.usage(), 10);
    assert_eq!(s.status(a), Err(StoreError::NoSuchFolderId(a)));
}

#[test]
fn subscriptions_are_names_and_outlive_folders() {
    let mut s = UserStore::new("u");
    let a = create(&mut s, "a");
    commit!(s, s.subscribe("a", true).unwrap().unwrap());
    assert_eq!(s.subscribe("a", true), Ok(None));
    commit!(s, s.subscribe("ghost", true).unwrap().unwrap());
    commit!(s, s.delete_folder("a").unwrap());
    assert_eq!(s.subscriptions().collect::<Vec<_>>(), vec!["a", "ghost"]);
    commit!(s, s.subscribe("a", false).unwrap().unwrap());
    assert_eq!(s.subscriptions().collect::<Vec<_>>(), vec!["ghost"]);
    assert!(s.subscribe("a*", true).is_err());
    let _ = a;
}

#[test]
fn list_marks_children_subscriptions_and_roles() {
    let mut s = UserStore::new("u");
    commit!(s, s.ensure_defaults(NOW).unwrap());
    create(&mut s, "Work/2026");
    create(&mut s, "Work 2");
    let list = s.list();
    let work = list.iter().find(|e| e.name == "Work").unwrap();
    assert!(work.has_children && work.selectable() && !work.subscribed);
    assert!(
        !list
            .iter()
            .find(|e| e.name == "Work 2")
            .unwrap()
            .has_children
    );
    let sent = list.iter().find(|e| e.name == "Sent").unwrap();
    assert_eq!(sent.special_use, Some(SpecialUse::Sent));
    assert!(sent.subscribed);
}

/// The names of the folders a record creates.
fn created(r: &MailboxState) -> Vec<&str> {
    r.ops
        .iter()
        .filter_map(|op| match op {
            StateOp::CreateFolder { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect()
}

#[test]
fn ensure_defaults_creates_missing_roles_once() {
    let mut s = UserStore::new("u");
    create(&mut s, "Trash");
    let r = commit!(s, s.ensure_defaults(NOW).unwrap());
    assert_eq!(created(&r), vec!["Sent", "Drafts", "Junk", "Archive"]);
    assert_eq!(s.ensure_defaults(NOW), None);
    s.set_max_folders(1);
    let mut t = UserStore::new("t");
    t.set_max_folders(3);
    let r = t.ensure_defaults(NOW).unwrap();
    assert_eq!(
        r.ops
            .iter()
            .filter(|op| matches!(op, StateOp::CreateFolder { .. }))
            .count(),
        2
    );
}

// ---- messages ----

#[test]
fn store_flags_modes_modseq_and_unchanged_since() {
    let mut s = UserStore::new("u");
    for n in 1..=3 {
        deliver(&mut s, INBOX, n, 1);
    }
    let base = s.status(INBOX).unwrap().highest_modseq;
    let out = s
        .store_flags(
            INBOX,
            &[1, 2, 9],
            FlagMode::Add,
            &flags(system_flag::SEEN, &["Work"]),
            None,
        )
        .unwrap();
    assert!(out.failed.is_empty());
    let r = commit!(s, out.record.unwrap());
    assert_eq!(r.ops.len(), 2);
    let snap = s.snapshot(INBOX).unwrap();
    assert_eq!(snap.highest_modseq, base + 1);
    assert_eq!(snap.messages[0].1.modseq, base + 1);
    assert_eq!(
        snap.messages[1].1.flags,
        flags(system_flag::SEEN, &["Work"])
    );
    assert_eq!(s.status(INBOX).unwrap().unseen, 1);
    // Nothing changes: no record.
    let again = s
        .store_flags(INBOX, &[1], FlagMode::Add, &flags(0, &["work"]), None)
        .unwrap();
    assert_eq!(again.record, None);
    // UNCHANGEDSINCE below message 1's modseq fails it; 3 is older and changes.
    let cond = s
        .store_flags(
            INBOX,
            &[1, 3],
            FlagMode::Replace,
            &flags(system_flag::DELETED, &[]),
            Some(base),
        )
        .unwrap();
    assert_eq!(cond.failed, vec![1]);
    commit!(s, cond.record.unwrap());
    assert_eq!(s.status(INBOX).unwrap().deleted, 1);
    let removed = s
        .store_flags(
            INBOX,
            &[2],
            FlagMode::Remove,
            &flags(system_flag::SEEN, &["WORK"]),
            None,
        )
        .unwrap();
    commit!(s, removed.record.unwrap());
    assert_eq!(
        s.snapshot(INBOX).unwrap().messages[1].1.flags,
        Flags::default()
    );
    let changed = s.changes_since(INBOX, base + 1).unwrap();
    assert_eq!(
        changed.changed.iter().map(|(u, _)| *u).collect::<Vec<_>>(),
        vec![2, 3]
    );
    assert!(!changed.expunged);
    assert_eq!(
        s.store_flags(77, &[1], FlagMode::Add, &Flags::default(), None),
        Err(StoreError::NoSuchFolderId(77))
    );
}

#[test]
fn copy_keeps_flags_and_counts_the_body_once() {
    let mut s = UserStore::new("u");
    let a = create(&mut s, "a");
    let p = s
        .allocate(INBOX, &flags(system_flag::FLAGGED, &["k"]), NOW - 5, -300)
        .unwrap();
    s.delivered(id(1), 100, &p);
    deliver(&mut s, INBOX, 2, 50);
    deliver(&mut s, a, 3, 7);
    let out = s.copy(INBOX, &[2, 1, 99], a).unwrap();
    assert_eq!(out.pairs, vec![(1, 2), (2, 3)]);
    let r = commit!(s, out.record.unwrap());
    assert!(r.released.is_empty());
    let copied = &s.snapshot(a).unwrap().messages[1].1;
    assert_eq!(copied.flags, flags(system_flag::FLAGGED, &["k"]));
    assert_eq!((copied.internal_date, copied.zone_minutes), (NOW - 5, -300));
    assert_eq!(s.usage(), 157);
    assert_eq!(s.status(a).unwrap().size, 157);
    assert_eq!(s.copy(INBOX, &[99], a).unwrap().record, None);
    assert_eq!(s.copy(INBOX, &[1], 42), Err(StoreError::NoSuchFolderId(42)));
}

#[test]
fn move_is_one_record_with_copy_and_expunge() {
    let mut s = UserStore::new("u");
    let a = create(&mut s, "a");
    deliver(&mut s, INBOX, 1, 10);
    deliver(&mut s, INBOX, 2, 10);
    let out = s.move_(INBOX, &[2], a).unwrap();
    assert_eq!(out.pairs, vec![(2, 1)]);
    let r = commit!(s, out.record.unwrap());
    assert!(r.released.is_empty());
    assert!(matches!(r.ops.last(), Some(StateOp::Expunge { .. })));
    assert_eq!(uids(&s, INBOX), vec![1]);
    assert_eq!(uids(&s, a), vec![1]);
    assert!(s.changes_since(INBOX, 0).unwrap().expunged);
}

#[test]
fn expunge_takes_only_deleted_messages() {
    let mut s = UserStore::new("u");
    let a = create(&mut s, "a");
    for n in 1..=4 {
        deliver(&mut s, INBOX, n, 1);
    }
    commit!(s, s.copy(INBOX, &[2], a).unwrap().record.unwrap());
    let del = s
        .store_flags(
            INBOX,
            &[1, 2, 3],
            FlagMode::Add,
            &flags(system_flag::DELETED, &[]),
            None,
        )
        .unwrap();
    commit!(s, del.record.unwrap());
    let sub = s.expunge(INBOX, Some(&[1, 4])).unwrap();
    assert_eq!(sub.uids, vec![1]);
    let r = commit!(s, sub.record.unwrap());
    assert_eq!(r.released, vec![id(1)]);
    let all = s.expunge(INBOX, None).unwrap();
    assert_eq!(all.uids, vec![2, 3]);
    let r = commit!(s, all.record.unwrap());
    assert_eq!(r.released, vec![id(3)], "2 still has a copy in a");
    assert_eq!(uids(&s, INBOX), vec![4]);
    assert_eq!(s.expunge(INBOX, None).unwrap().record, None);
}

#[test]
fn highestmodseq_and_uidnext_survive_an_emptied_folder_and_a_checkpoint() {
    let mut s = UserStore::new("u");
    deliver(&mut s, INBOX, 1, 1);
    let del = s
        .store_flags(
            INBOX,
            &[1],
            FlagMode::Add,
            &flags(system_flag::DELETED, &[]),
            None,
        )
        .unwrap();
    commit!(s, del.record.unwrap());
    let expunged = commit!(s, s.expunge(INBOX, None).unwrap().record.unwrap());
    let before = s.status(INBOX).unwrap();
    let cp = commit!(s, s.checkpoint());
    assert_eq!(s.status(INBOX).unwrap(), before);
    let mut r = UserStore::new("u");
    r.replay_delivery(
        id(1),
        1,
        NOW,
        Some(&Placement {
            folder: INBOX,
            uidvalidity: 1,
            uid: 1,
            flags: Flags::default(),
            internal_date: NOW,
            zone_minutes: 0,
            modseq: 1,
        }),
    );
    r.replay_state(&cp);
    // Kept by compaction: it releases a message whose frame is still on disk.
    r.replay_state(&expunged);
    assert_eq!(
        r.finish_recovery(),
        None,
        "the expunged delivery is not resurrected"
    );
    assert_eq!(r.status(INBOX).unwrap(), before);
}

// ---- deliveries ----

#[test]
fn pending_uids_hide_everything_above_them() {
    let mut s = UserStore::new("u");
    let p1 = s.allocate(INBOX, &Flags::default(), NOW, 0).unwrap();
    let p2 = s.allocate(INBOX, &Flags::default(), NOW, 0).unwrap();
    let p3 = s.allocate(INBOX, &Flags::default(), NOW, 0).unwrap();
    assert_eq!((p1.uid, p2.uid, p3.uid), (1, 2, 3));
    assert!(p1.modseq < p2.modseq && p2.modseq < p3.modseq);
    let c0 = s.change_counter(INBOX).unwrap();
    assert_eq!(s.delivered(id(2), 5, &p2), None);
    assert_eq!(uids(&s, INBOX), Vec::<u32>::new());
    assert_eq!(s.status(INBOX).unwrap().uidnext, 1);
    // 1 commits: 1 and 2 appear; 2 was hidden, so it gets a fresh modseq.
    let r = s.delivered(id(1), 5, &p1).unwrap();
    assert_eq!(uids(&s, INBOX), vec![1, 2]);
    assert!(s.change_counter(INBOX).unwrap() > c0);
    assert_eq!(r.ops.len(), 1);
    let StateOp::SetFlags { uid: 2, modseq, .. } = r.ops[0] else {
        panic!("{r:?}");
    };
    assert!(modseq > p3.modseq);
    s.apply(&r);
    assert_eq!(s.snapshot(INBOX).unwrap().messages[1].1.modseq, modseq);
    assert_eq!(s.status(INBOX).unwrap().uidnext, 3);
    // 3 fails: a hole, not given again while the store lives; UIDNEXT stays at what the
    // log holds (a restart must not take it back).
    assert_eq!(s.abandoned(INBOX, 3), None);
    assert_eq!(s.status(INBOX).unwrap().uidnext, 3);
    assert_eq!(s.allocate(INBOX, &Flags::default(), NOW, 0).unwrap().uid, 4);
}

#[test]
fn a_hidden_message_revealed_by_an_abandoned_uid_gets_a_fresh_modseq() {
    let mut s = UserStore::new("u");
    let p1 = s.allocate(INBOX, &Flags::default(), NOW, 0).unwrap();
    let p2 = s.allocate(INBOX, &Flags::default(), NOW, 0).unwrap();
    assert_eq!(s.delivered(id(2), 5, &p2), None);
    let r = s.abandoned(INBOX, p1.uid).unwrap();
    assert!(matches!(r.ops[..], [StateOp::SetFlags { uid: 2, .. }]));
    assert_eq!(uids(&s, INBOX), vec![2]);
    assert_eq!(s.abandoned(INBOX, p1.uid), None, "already resolved");
}

#[test]
fn a_lone_delivery_needs_no_record() {
    let mut s = UserStore::new("u");
    let p = s.allocate(INBOX, &Flags::default(), NOW, 0).unwrap();
    assert_eq!(s.delivered(id(1), 5, &p), None);
    assert_eq!(s.status(INBOX).unwrap().highest_modseq, p.modseq);
}

#[test]
fn a_delivery_to_a_deleted_folder_is_released() {
    let mut s = UserStore::new("u");
    let a = create(&mut s, "a");
    let p = s.allocate(a, &Flags::default(), NOW, 0).unwrap();
    commit!(s, s.delete_folder("a").unwrap());
    let r = s.delivered(id(1), 5, &p).unwrap();
    assert!(r.ops.is_empty());
    assert_eq!(r.released, vec![id(1)]);
    assert!(!s.holds(id(1)));
    assert_eq!(
        s.allocate(a, &Flags::default(), NOW, 0),
        Err(StoreError::NoSuchFolderId(a))
    );
}

#[test]
fn uids_run_out_at_the_top() {
    let mut s = UserStore::new("u");
    let mut cp = s.checkpoint();
    for op in &mut cp.ops {
        if let StateOp::FolderCounters { uidnext, .. } = op {
            *uidnext = u32::MAX - 1;
        }
    }
    s.apply(&cp);
    assert_eq!(
        s.allocate(INBOX, &Flags::default(), NOW, 0).unwrap().uid,
        u32::MAX - 1
    );
    assert_eq!(
        s.allocate(INBOX, &Flags::default(), NOW, 0),
        Err(StoreError::UidsExhausted)
    );
}

// ---- apply ----

#[test]
fn applying_a_record_twice_or_late_changes_nothing() {
    let mut s = UserStore::new("u");
    let a = create(&mut s, "a");
    deliver(&mut s, INBOX, 1, 3);
    let copy = s.copy(INBOX, &[1], a).unwrap().record.unwrap();
    s.apply(&copy);
    let st = s.status(a).unwrap();
    s.apply(&copy);
    assert_eq!(s.status(a).unwrap(), st);
    assert_eq!(s.usage(), 3);
    // The same ops under a later seq (a record replayed from two logs) are idempotent too.
    let mut again = copy.clone();
    again.seq = 99;
    s.apply(&again);
    assert_eq!(s.status(a).unwrap(), st);
    let mut stale = s.subscribe("x", true).unwrap().unwrap();
    stale.seq = 1;
    s.apply(&stale);
    assert_eq!(s.subscriptions().count(), 0);
}

#[test]
fn a_checkpoint_applied_live_keeps_pending_uids_and_counters() {
    let mut s = UserStore::new("u");
    deliver(&mut s, INBOX, 1, 1);
    let p = s.allocate(INBOX, &Flags::default(), NOW, 0).unwrap();
    let cp = s.checkpoint();
    let restated = cp.ops.iter().find_map(|op| match op {
        StateOp::FolderCounters {
            folder: 0, uidnext, ..
        } => Some(*uidnext),
        _ => None,
    });
    assert_eq!(
        restated,
        Some(p.uid),
        "UIDNEXT restated below the pending UID"
    );
    s.apply(&cp);
    assert_eq!(
        s.allocate(INBOX, &Flags::default(), NOW, 0).unwrap().uid,
        p.uid + 1
    );
    assert_eq!(s.delivered(id(2), 1, &p), None);
    assert_eq!(uids(&s, INBOX), vec![1, 2]);
}

#[test]
fn needs_checkpoint_after_many_records() {
    let mut s = UserStore::new("u");
    deliver(&mut s, INBOX, 1, 1);
    for i in 0..=1000u32 {
        let mode = if i % 2 == 0 {
            FlagMode::Add
        } else {
            FlagMode::Remove
        };
        let out = s
            .store_flags(INBOX, &[1], mode, &flags(system_flag::SEEN, &[]), None)
            .unwrap();
        commit!(s, out.record.unwrap());
    }
    assert!(s.needs_checkpoint());
    commit!(s, s.checkpoint());
    assert!(!s.needs_checkpoint());
}

// ---- recovery ----

fn placement(folder: u32, uidvalidity: u32, uid: u32, modseq: u64) -> Placement {
    Placement {
        folder,
        uidvalidity,
        uid,
        flags: Flags::default(),
        internal_date: NOW,
        zone_minutes: 0,
        modseq,
    }
}

#[test]
fn v1_deliveries_get_inbox_uids_in_queue_id_order_and_keep_them() {
    let mut r = UserStore::new("u");
    r.replay_delivery(id(1), 10, NOW, Some(&placement(INBOX, 1, 1, 1)));
    r.replay_delivery(id(9), 30, NOW + 9, None);
    r.replay_delivery(id(5), 20, NOW + 5, None);
    r.replay_delivery(id(7), 20, NOW + 7, None);
    r.replay_pop3_deletion(&[id(7)]);
    let cp = r.finish_recovery().unwrap();
    assert!(cp.is_checkpoint());
    assert!(cp.released.is_empty());
    let snap = r.snapshot(INBOX).unwrap();
    let got: Vec<(u32, QueueId, i64)> = snap
        .messages
        .iter()
        .map(|(u, e)| (*u, e.id, e.internal_date))
        .collect();
    assert_eq!(
        got,
        vec![(1, id(1), NOW), (2, id(5), NOW + 5), (3, id(9), NOW + 9)]
    );
    // The next recovery reads the checkpoint: same UIDs, nothing to write.
    let mut again = UserStore::new("u");
    again.replay_delivery(id(9), 30, NOW + 9, None);
    again.replay_state(&cp);
    again.replay_delivery(id(1), 10, NOW, Some(&placement(INBOX, 1, 1, 1)));
    again.replay_delivery(id(5), 20, NOW + 5, None);
    assert_eq!(again.finish_recovery(), None);
    assert_eq!(again.snapshot(INBOX).unwrap().messages, snap.messages);
}

#[test]
fn recovery_sorts_records_by_seq_and_starts_at_the_last_checkpoint() {
    let mut s = UserStore::new("u");
    let a = create(&mut s, "a");
    let mut log = vec![];
    let mut frames = vec![];
    for n in 1..=3 {
        let p = deliver(&mut s, INBOX, n, n);
        frames.push((id(n), n, p));
    }
    log.push(s.checkpoint());
    s.apply(&log[0]);
    let out = s.move_(INBOX, &[2], a).unwrap();
    log.push(commit!(s, out.record.unwrap()));
    let st = s
        .store_flags(a, &[1], FlagMode::Add, &flags(system_flag::SEEN, &[]), None)
        .unwrap();
    log.push(commit!(s, st.record.unwrap()));
    let p = deliver(&mut s, a, 4, 4);
    frames.push((id(4), 4, p));
    let mut r = UserStore::new("u");
    for rec in log.iter().rev() {
        r.replay_state(rec);
    }
    for (i, n, p) in &frames {
        r.replay_delivery(*i, *n, NOW, Some(p));
    }
    assert_eq!(r.finish_recovery(), None);
    for f in [INBOX, a] {
        assert_eq!(
            r.snapshot(f).unwrap().messages,
            s.snapshot(f).unwrap().messages
        );
        assert_eq!(r.status(f).unwrap(), s.status(f).unwrap());
    }
}

#[test]
fn recovery_ignores_placements_of_deleted_folders_and_releases_them() {
    let mut s = UserStore::new("u");
    let create_rec = s.create_folder("a", None, NOW).unwrap();
    s.apply(&create_rec);
    let a = s.folder_id("a").unwrap();
    let p = s.allocate(a, &Flags::default(), NOW, 0).unwrap();
    let delete_rec = commit!(s, s.delete_folder("a").unwrap());
    // The frame committed after the delete; the crash lost the release record.
    let mut r = UserStore::new("u");
    r.replay_delivery(id(1), 5, NOW, Some(&p));
    r.replay_state(&create_rec);
    r.replay_state(&delete_rec);
    let cp = r.finish_recovery().unwrap();
    assert_eq!(cp.released, vec![id(1)]);
    assert!(!r.holds(id(1)));
    // A placement with another folder incarnation's UIDVALIDITY lands nowhere either.
    let mut t = UserStore::new("u");
    t.replay_delivery(id(2), 5, NOW, Some(&placement(INBOX, 7, 1, 1)));
    assert_eq!(t.finish_recovery().unwrap().released, vec![id(2)]);
}

#[test]
fn recovery_drops_places_whose_body_is_gone() {
    let mut s = UserStore::new("u");
    deliver(&mut s, INBOX, 1, 5);
    deliver(&mut s, INBOX, 2, 5);
    let cp = s.checkpoint();
    let mut r = UserStore::new("u");
    r.replay_state(&cp);
    r.replay_delivery(id(2), 5, NOW, None);
    let fixed = r.finish_recovery().unwrap();
    assert_eq!(uids(&r, INBOX), vec![2]);
    assert_eq!(
        fixed
            .ops
            .iter()
            .filter(|op| matches!(op, StateOp::Place { .. }))
            .count(),
        1
    );
}

#[test]
fn a_placement_older_than_a_later_change_gets_a_fresh_modseq_at_recovery() {
    let mut s = UserStore::new("u");
    let p1 = s.allocate(INBOX, &Flags::default(), NOW, 0).unwrap();
    let p2 = s.allocate(INBOX, &Flags::default(), NOW, 0).unwrap();
    s.delivered(id(2), 1, &p2);
    let st = s
        .store_flags(
            INBOX,
            &[2],
            FlagMode::Add,
            &flags(system_flag::SEEN, &[]),
            None,
        )
        .unwrap();
    assert_eq!(st.record, None, "2 is hidden");
    // Crash before 1's delivered(): its frame and 2's are on disk.
    let mut r = UserStore::new("u");
    r.replay_delivery(id(1), 1, NOW, Some(&p1));
    r.replay_delivery(id(2), 1, NOW, Some(&p2));
    let cp = r.finish_recovery().unwrap();
    // 1 was pending, 2 hidden: both may be older than a HIGHESTMODSEQ a client saw.
    let snap = r.snapshot(INBOX).unwrap();
    assert!(snap.highest_modseq > p2.modseq);
    assert_eq!(snap.messages[0].1.modseq, snap.highest_modseq);
    assert_eq!(snap.messages[1].1.modseq, snap.highest_modseq);
    assert!(cp.released.is_empty());
}

#[test]
fn pop3_deletions_expunge_from_inbox_and_raise_highestmodseq() {
    let mut s = UserStore::new("u");
    deliver(&mut s, INBOX, 1, 1);
    deliver(&mut s, INBOX, 2, 1);
    let before = s.status(INBOX).unwrap().highest_modseq;
    s.pop3_expunge(&[id(1), id(8)]);
    assert_eq!(uids(&s, INBOX), vec![2]);
    assert!(s.status(INBOX).unwrap().highest_modseq > before);
    assert!(s.changes_since(INBOX, before).unwrap().expunged);
    assert!(!s.holds(id(1)));
}

#[test]
fn pop3_delete_releases_only_what_no_folder_still_holds() {
    let mut s = UserStore::new("u");
    let a = create(&mut s, "a");
    deliver(&mut s, INBOX, 1, 1);
    deliver(&mut s, INBOX, 2, 1);
    commit!(s, s.copy(INBOX, &[2], a).unwrap().record.unwrap());
    let r = commit!(s, s.pop3_delete(&[id(1), id(2), id(9)]).unwrap().unwrap());
    assert_eq!(r.released, vec![id(1)]);
    assert_eq!(uids(&s, INBOX), Vec::<u32>::new());
    assert!(s.holds(id(2)));
    assert_eq!(s.pop3_delete(&[id(1)]), Ok(None));
}

// ---- Stores ----

#[test]
fn stores_hold_one_store_per_user() {
    let stores = Stores::new();
    stores.set_max_folders(2);
    assert_eq!(stores.with_existing("a", |_| ()), None);
    let rec = stores
        .with("a", |s| s.create_folder("x", None, NOW))
        .unwrap();
    stores.with("a", |s| s.apply(&rec));
    assert_eq!(
        stores.with_existing("a", |s| s.folder_id("x")),
        Some(Some(1))
    );
    assert_eq!(
        stores.with("a", |s| s.create_folder("y", None, NOW)),
        Err(StoreError::TooManyFolders { max: 2 })
    );
    stores.with("b", |s| s.replay_delivery(id(1), 1, NOW, None));
    let cps = stores.finish_recovery();
    assert_eq!(cps.len(), 1);
    assert_eq!(cps[0].user, "b");
    let mut users = stores.users();
    users.sort();
    assert_eq!(users, vec!["a", "b"]);
}

#[test]
fn ensure_role_creates_only_that_folder_and_role_folder_finds_it() {
    let mut s = UserStore::new("u");
    assert_eq!(s.role_folder(SpecialUse::Junk), None);
    let r = commit!(s, s.ensure_role(SpecialUse::Junk, NOW).unwrap());
    assert_eq!(created(&r), vec!["Junk"]);
    let junk = s.folder_id("Junk").expect("Junk");
    assert_eq!(s.role_folder(SpecialUse::Junk), Some(junk));
    assert_eq!(s.ensure_role(SpecialUse::Junk, NOW), None);
    // The first login's defaults leave it alone.
    let r = commit!(s, s.ensure_defaults(NOW).unwrap());
    assert!(!r
        .ops
        .iter()
        .any(|op| matches!(op, StateOp::CreateFolder { name, .. } if name == "Junk")));

    // A "Junk" the user made without the role is where junk goes; none is created beside it.
    let mut t = UserStore::new("t");
    create(&mut t, "Junk");
    let theirs = t.folder_id("Junk").expect("Junk");
    assert_eq!(t.ensure_role(SpecialUse::Junk, NOW), None);
    assert_eq!(t.role_folder(SpecialUse::Junk), Some(theirs));

    // The role on a folder of another name wins.
    let mut v = UserStore::new("v");
    commit!(
        v,
        v.create_folder("Spam", Some(SpecialUse::Junk), NOW)
            .expect("create")
    );
    assert_eq!(v.ensure_role(SpecialUse::Junk, NOW), None);
    assert_eq!(v.role_folder(SpecialUse::Junk), v.folder_id("Spam"));

    // No room: nothing to create, and nowhere to file.
    let mut w = UserStore::new("w");
    w.set_max_folders(1);
    assert_eq!(w.ensure_role(SpecialUse::Junk, NOW), None);
    assert_eq!(w.role_folder(SpecialUse::Junk), None);
}
