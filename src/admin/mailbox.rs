//! `/mailbox...`: the users' folders behind `relay mailbox ls`, on the admin listener.
//!
//! | method, path | answer |
//! |---|---|
//! | GET `/mailbox` | JSON list of users ([`UserRow`]): messages, usage, quota |
//! | GET `/mailbox/{user}` | JSON of one user ([`UserReport`]): every folder's counters |
//!
//! Users are those of the directory plus any the store holds mail for without being in it
//! (the built-in postmaster maildrop, a user removed from the users file): a user of the
//! directory with no mail yet shows INBOX only; any other name is 404. The name in the path
//! is percent-encoded ([`user_path`]) and must be a mailbox name once decoded (400
//! otherwise), so nothing the operator types reaches the store unchecked.
//!
//! Answers come from the in-memory model (each user's lock held for one read of its
//! folders), never from the spool.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{AdminRequest, AdminResponse, Handler};
use crate::logsafe::Safe;
use crate::mailbox::directory::valid_name;
use crate::mailbox::{Directory, MailStore, SharedDirectory};
use crate::mailstore::{Stores, UserStore};
use crate::spool::state::SpecialUse;

/// One user in the `/mailbox` list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRow {
    pub user: String,
    /// Whether the directory (users file, `[local]`) has this user.
    pub configured: bool,
    /// Messages in all folders (a copy in two folders counts twice).
    pub messages: u64,
    /// Bytes stored: each body once, however many folders hold a copy.
    pub usage: u64,
    /// From the directory; `None` is unlimited.
    pub quota: Option<u64>,
}

/// One folder, as IMAP STATUS would count it (hidden pending deliveries excluded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FolderRow {
    pub name: String,
    /// The SPECIAL-USE attribute (RFC 6154), e.g. `\Sent`.
    pub special_use: Option<String>,
    pub subscribed: bool,
    pub messages: u32,
    pub unseen: u32,
    pub deleted: u32,
    /// Bytes of the messages in this folder (copies counted in each folder).
    pub size: u64,
    pub uidvalidity: u32,
    pub uidnext: u32,
    pub highest_modseq: u64,
}

/// One user with every folder (`/mailbox/{user}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserReport {
    #[serde(flatten)]
    pub summary: UserRow,
    pub folders: Vec<FolderRow>,
}

/// The `/mailbox` routes' data: the folders and the directory the server runs with.
pub struct MailboxService {
    pub store: Arc<MailStore>,
    pub directory: SharedDirectory,
}

fn special_use_name(role: SpecialUse) -> &'static str {
    match role {
        SpecialUse::Sent => "\\Sent",
        SpecialUse::Drafts => "\\Drafts",
        SpecialUse::Trash => "\\Trash",
        SpecialUse::Junk => "\\Junk",
        SpecialUse::Archive => "\\Archive",
    }
}

fn summary(store: &UserStore, directory: &Directory) -> UserRow {
    UserRow {
        user: store.user().to_string(),
        configured: directory.user(store.user()).is_some(),
        messages: store.message_count() as u64,
        usage: store.usage(),
        quota: directory.quota(store.user()),
    }
}

fn report(store: &UserStore, directory: &Directory) -> UserReport {
    let folders = store
        .list()
        .into_iter()
        .filter_map(|entry| {
            // Names listed only for their inferiors are no folder: nothing to count.
            let status = store.status(entry.folder?).ok()?;
            Some(FolderRow {
                name: entry.name,
                special_use: entry.special_use.map(|r| special_use_name(r).to_string()),
                subscribed: entry.subscribed,
                messages: status.messages,
                unseen: status.unseen,
                deleted: status.deleted,
                size: status.size,
                uidvalidity: status.uidvalidity,
                uidnext: status.uidnext,
                highest_modseq: status.highest_modseq,
            })
        })
        .collect();
    UserReport {
        summary: summary(store, directory),
        folders,
    }
}

/// Every user the directory or the store knows, by name.
pub fn users(stores: &Stores, directory: &Directory) -> Vec<UserRow> {
    let names: BTreeSet<String> = directory
        .users()
        .map(|u| u.name.clone())
        .chain(stores.users())
        .collect();
    names
        .into_iter()
        .map(|name| {
            stores
                .with_existing(&name, |s| summary(s, directory))
                // A user without mail yet: what the store would create (INBOX only), without
                // creating it.
                .unwrap_or_else(|| summary(&UserStore::new(&name), directory))
        })
        .collect()
}

/// One user's folders; `None` when neither the directory nor the store knows `user`.
pub fn user(stores: &Stores, directory: &Directory, user: &str) -> Option<UserReport> {
    if let Some(found) = stores.with_existing(user, |s| report(s, directory)) {
        return Some(found);
    }
    directory
        .user(user)
        .map(|u| report(&UserStore::new(&u.name), directory))
}

/// The request path for one user: `/mailbox/` and the name with every byte but `a-z 0-9 _ -`
/// percent-encoded (dots too, so no name becomes a `.`/`..` path segment).
pub fn user_path(user: &str) -> String {
    let mut path = String::from("/mailbox/");
    for b in user.bytes() {
        if b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-' {
            path.push(char::from(b));
        } else {
            path.push_str(&format!("%{b:02X}"));
        }
    }
    path
}

/// A percent-encoded path segment, decoded; `None` for a bad escape or non-UTF-8.
fn decode_segment(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn json(value: &impl Serialize) -> AdminResponse {
    match serde_json::to_vec(value) {
        Ok(body) => AdminResponse::json(200, body),
        Err(error) => AdminResponse::text(500, format!("cannot encode: {error}\n")),
    }
}

fn handle(service: &MailboxService, request: &AdminRequest) -> AdminResponse {
    let stores = service.store.folders();
    let rest = match request.path.as_str() {
        "/mailbox" | "/mailbox/" => None,
        path => match path.strip_prefix("/mailbox/") {
            Some(rest) if !rest.contains('/') => Some(rest),
            _ => return AdminResponse::not_found(),
        },
    };
    if request.method != "GET" {
        return AdminResponse::method_not_allowed();
    }
    let Some(segment) = rest else {
        return json(&users(stores, &service.directory.current()));
    };
    let Some(name) = decode_segment(segment).map(|n| n.to_ascii_lowercase()) else {
        return AdminResponse::text(400, "the user name is not valid percent-encoded UTF-8\n");
    };
    if !valid_name(&name) {
        return AdminResponse::text(
            400,
            format!(
                "`{}` is not a mailbox name (1-64 of a-z 0-9 . - _)\n",
                Safe(&name)
            ),
        );
    }
    match user(stores, &service.directory.current(), &name) {
        Some(report) => json(&report),
        None => AdminResponse::text(
            404,
            format!("{name}: no such user (not in the users file, and no mail stored)\n"),
        ),
    }
}

/// The `/mailbox` routes for [`super::Admin::start`].
pub fn mailbox_routes(
    store: Arc<MailStore>,
    directory: SharedDirectory,
) -> Vec<(&'static str, Handler)> {
    let service = MailboxService { store, directory };
    vec![(
        "/mailbox",
        Arc::new(move |request: &AdminRequest| handle(&service, request)),
    )]
}

/// Control characters of a name shown escaped (a server's answer reaches a terminal).
fn shown(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

fn quota_text(usage: u64, quota: Option<u64>) -> String {
    match quota {
        None => "unlimited".to_string(),
        Some(0) => "0 (100%)".to_string(),
        Some(q) => format!("{q} ({:.1}% used)", usage as f64 * 100.0 / q as f64),
    }
}

/// The `relay mailbox ls` text: one line per user.
pub fn render_users(rows: &[UserRow]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    if rows.is_empty() {
        s.push_str("no users\n");
        return s;
    }
    let width = rows
        .iter()
        .map(|r| shown(&r.user).chars().count())
        .max()
        .unwrap_or(0)
        .max(4);
    let _ = writeln!(
        s,
        "{:<width$}  {:>8}  {:>12}  quota",
        "user", "messages", "usage"
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{:<width$}  {:>8}  {:>12}  {}{}",
            shown(&r.user),
            r.messages,
            r.usage,
            quota_text(r.usage, r.quota),
            if r.configured {
                ""
            } else {
                "  (not in the users file)"
            }
        );
    }
    let messages: u64 = rows.iter().map(|r| r.messages).sum();
    let usage: u64 = rows.iter().map(|r| r.usage).sum();
    let _ = writeln!(
        s,
        "-- {} users, {messages} messages, {usage} bytes",
        rows.len()
    );
    s
}

/// The `relay mailbox ls USER` text: the user's totals, then one line per folder.
pub fn render_user(report: &UserReport) -> String {
    use std::fmt::Write;
    let u = &report.summary;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "user {}: {} messages, {} bytes used, quota {}{}",
        shown(&u.user),
        u.messages,
        u.usage,
        quota_text(u.usage, u.quota),
        if u.configured {
            ""
        } else {
            " (not in the users file)"
        }
    );
    let width = report
        .folders
        .iter()
        .map(|f| shown(&f.name).chars().count())
        .max()
        .unwrap_or(0)
        .max(6);
    let _ = writeln!(
        s,
        "{:<width$}  {:<8}  {:<3}  {:>8}  {:>6}  {:>7}  {:>12}  {:>11}  {:>7}  {:>13}",
        "folder",
        "role",
        "sub",
        "messages",
        "unseen",
        "deleted",
        "size",
        "uidvalidity",
        "uidnext",
        "highestmodseq"
    );
    for f in &report.folders {
        let _ = writeln!(
            s,
            "{:<width$}  {:<8}  {:<3}  {:>8}  {:>6}  {:>7}  {:>12}  {:>11}  {:>7}  {:>13}",
            shown(&f.name),
            f.special_use.as_deref().map_or("-".to_string(), shown),
            if f.subscribed { "yes" } else { "no" },
            f.messages,
            f.unseen,
            f.deleted,
            f.size,
            f.uidvalidity,
            f.uidnext,
            f.highest_modseq
        );
    }
    let _ = writeln!(s, "-- {} folders", report.folders.len());
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::QueueId;
    use crate::mailbox::{password, User};
    use crate::spool::state::{system_flag, Flags, INBOX};
    use std::collections::BTreeMap;

    const NOW: i64 = 1_800_000_000;

    fn directory() -> Directory {
        let phc = password::hash("secret").expect("hash");
        let user = |name: &str, quota| User {
            name: name.into(),
            password: phc.clone(),
            quota,
            apop_secret: None,
            home: None,
        };
        Directory::new(
            vec!["example.test".into()],
            vec![user("alice", Some(10_000)), user("bob", None)],
            &BTreeMap::new(),
        )
        .expect("directory")
    }

    fn deliver(s: &mut UserStore, folder: u32, n: u64, size: u64, system: u8) {
        let flags = Flags {
            system,
            keywords: Default::default(),
        };
        let p = s.allocate(folder, &flags, NOW, 0).expect("allocate");
        if let Some(r) = s.delivered(QueueId::new(1_000_000 + n, 0), size, &p) {
            s.apply(&r);
        }
    }

    /// alice: INBOX with two messages (one seen), Sent (subscribed) with one deleted message;
    /// carol: mail for a name the directory does not have.
    fn stores() -> Stores {
        let stores = Stores::new();
        stores.with("alice", |s| {
            deliver(s, INBOX, 1, 100, 0);
            deliver(s, INBOX, 2, 50, system_flag::SEEN);
            let r = s
                .create_folder("Sent", Some(SpecialUse::Sent), NOW)
                .expect("create");
            s.apply(&r);
            let r = s
                .subscribe("Sent", true)
                .expect("subscribe")
                .expect("change");
            s.apply(&r);
            let sent = s.folder_id("Sent").expect("sent");
            deliver(s, sent, 3, 7, system_flag::SEEN | system_flag::DELETED);
        });
        stores.with("carol", |s| deliver(s, INBOX, 4, 9, 0));
        stores
    }

    #[test]
    fn one_user_shows_every_folder_with_its_counters_and_the_quota() {
        let directory = directory();
        let report = user(&stores(), &directory, "alice").expect("alice");
        assert_eq!(
            report.summary,
            UserRow {
                user: "alice".into(),
                configured: true,
                messages: 3,
                usage: 157,
                quota: Some(10_000),
            }
        );
        let names: Vec<&str> = report.folders.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["INBOX", "Sent"]);
        let inbox = &report.folders[0];
        assert_eq!(
            (inbox.messages, inbox.unseen, inbox.deleted, inbox.size),
            (2, 1, 0, 150)
        );
        assert_eq!((inbox.uidvalidity, inbox.uidnext), (1, 3));
        assert!(!inbox.subscribed && inbox.special_use.is_none());
        let sent = &report.folders[1];
        assert_eq!(sent.special_use.as_deref(), Some("\\Sent"));
        assert!(sent.subscribed);
        assert_eq!(
            (sent.messages, sent.unseen, sent.deleted, sent.size),
            (1, 0, 1, 7)
        );
        assert!(sent.uidvalidity > 1 && sent.highest_modseq > 0, "{sent:?}");
        // Through JSON and back (the CLI reads what the route writes).
        let text = serde_json::to_string(&report).expect("json");
        assert!(text.contains("\"user\":\"alice\""), "{text}");
        assert_eq!(
            serde_json::from_str::<UserReport>(&text).expect("parse"),
            report
        );
        let table = render_user(&report);
        assert!(
            table.starts_with("user alice: 3 messages, 157 bytes used, quota 10000 (1.6% used)\n"),
            "{table}"
        );
        assert!(table.contains("\\Sent"), "{table}");
        assert!(table.ends_with("-- 2 folders\n"), "{table}");
    }

    #[test]
    fn a_configured_user_without_mail_has_inbox_only_and_strangers_are_none() {
        let directory = directory();
        let stores = stores();
        let bob = user(&stores, &directory, "bob").expect("bob");
        assert_eq!(bob.folders.len(), 1);
        assert_eq!(
            (bob.folders[0].name.as_str(), bob.folders[0].messages),
            ("INBOX", 0)
        );
        assert!(bob.summary.configured && bob.summary.quota.is_none());
        assert!(
            stores.with_existing("bob", |_| ()).is_none(),
            "asking creates no store"
        );
        let carol = user(&stores, &directory, "carol").expect("carol has mail");
        assert!(!carol.summary.configured);
        assert_eq!(user(&stores, &directory, "nobody"), None);
    }

    #[test]
    fn the_list_has_directory_and_store_users_by_name() {
        let rows = users(&stores(), &directory());
        let got: Vec<(&str, bool, u64, u64)> = rows
            .iter()
            .map(|r| (r.user.as_str(), r.configured, r.messages, r.usage))
            .collect();
        assert_eq!(
            got,
            [
                ("alice", true, 3, 157),
                ("bob", true, 0, 0),
                ("carol", false, 1, 9)
            ]
        );
        let text = render_users(&rows);
        assert!(text.contains("(not in the users file)"), "{text}");
        assert!(
            text.ends_with("-- 3 users, 4 messages, 166 bytes\n"),
            "{text}"
        );
    }

    #[test]
    fn names_are_percent_encoded_and_the_route_checks_them() {
        assert_eq!(user_path("alice"), "/mailbox/alice");
        assert_eq!(user_path("a.b"), "/mailbox/a%2Eb");
        assert_eq!(user_path("../x y"), "/mailbox/%2E%2E%2Fx%20y");
        assert_eq!(decode_segment("a%2Eb").as_deref(), Some("a.b"));
        assert_eq!(decode_segment("%2E%2E%2Fx%20y").as_deref(), Some("../x y"));
        assert_eq!(decode_segment("%2"), None);
        assert_eq!(decode_segment("%zz"), None);
        assert_eq!(decode_segment("%FF"), None);

        let store = MailStore::new();
        store
            .folders()
            .with("alice", |s| deliver(s, INBOX, 1, 10, 0));
        let service = MailboxService {
            store,
            directory: directory().into(),
        };
        let get = |path: &str| {
            let response = handle(
                &service,
                &AdminRequest {
                    method: "GET".into(),
                    path: path.into(),
                    query: Vec::new(),
                    body: Vec::new(),
                },
            );
            (
                response.status,
                String::from_utf8_lossy(&response.body).into_owned(),
            )
        };
        assert_eq!(get(&user_path("alice")).0, 200);
        assert_eq!(
            get(&user_path("ALICE")).0,
            200,
            "names are case-insensitive"
        );
        assert_eq!(get("/mailbox").0, 200);
        let (status, text) = get(&user_path("nobody"));
        assert_eq!(status, 404);
        assert!(text.contains("nobody: no such user"), "{text}");
        let (status, text) = get(&user_path("a\x1b[31m"));
        assert_eq!(status, 400);
        assert!(!text.contains('\x1b'), "{text:?}");
        assert_eq!(get("/mailbox/%zz").0, 400);
        assert_eq!(get("/mailbox/alice/x").0, 404);
        assert_eq!(get("/mailboxes").0, 404);
        let post = handle(
            &service,
            &AdminRequest {
                method: "POST".into(),
                path: "/mailbox".into(),
                query: Vec::new(),
                body: Vec::new(),
            },
        );
        assert_eq!(post.status, 405);
    }
}
