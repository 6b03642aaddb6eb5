//! Who receives mail here: local users, aliases and small lists, resolved at RCPT time.
//!
//! Every local domain is equivalent (Postfix's `mydestination` model): `alice@example.test`
//! and `alice@localhost` are the same mailbox when both domains are local. Local parts are
//! compared case-insensitively, as every deployed MTA does for mailbox names.
//!
//! `postmaster` (any case, RFC 5321 §4.5.1) is never unknown: without a user or alias of that
//! name its mail goes to the built-in maildrop [`POSTMASTER`], which a user named `postmaster`
//! reads once one is defined (and `relay check` warns until someone receives it).
//!
//! Exposure: addresses come from network peers (already syntax-checked by the SMTP session);
//! users and aliases from the operator's config.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use super::password;

/// A mailbox owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Mailbox name and login (lower case).
    pub name: String,
    /// argon2id PHC string.
    pub password: String,
    /// Bytes the mailbox may hold; `None` is unlimited.
    pub quota: Option<u64>,
    /// Shared secret for APOP (RFC 1939 §7). APOP needs the secret in clear on the server,
    /// which is why it is opt-in per user.
    pub apop_secret: Option<String>,
    /// The cluster node whose spool holds this user's mailboxes (`[cluster]`); `None` is
    /// this node, and always so without a cluster.
    pub home: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectoryError {
    #[error("user `{0}`: a name is 1–64 characters of a-z, 0-9, '.', '-', '_'")]
    BadUserName(String),
    #[error("user `{0}` is defined twice")]
    DuplicateUser(String),
    #[error("user `{user}`: {source}")]
    BadPassword {
        user: String,
        source: password::PasswordError,
    },
    #[error("alias `{0}`: must be `local@domain` with a local domain, or a bare local part")]
    BadAlias(String),
    #[error("alias `{alias}` expands to `{target}`, which is neither a user, an alias nor a remote address")]
    UnknownTarget { alias: String, target: String },
    #[error("alias `{0}` expands into itself or nests deeper than {ALIAS_DEPTH_MAX} levels")]
    AliasLoop(String),
}

/// The local part every mail domain must accept (RFC 5321 §4.5.1), and the name of the
/// maildrop that keeps its mail while no user or alias of that name exists.
pub const POSTMASTER: &str = "postmaster";

/// The quota of the built-in postmaster maildrop while no user owns it: nobody reads it yet,
/// and anyone may send to postmaster, so it must not be able to fill the disk. Months of
/// bounce and abuse reports fit; past it RCPT gets `452 4.2.2` (a temporary failure: the
/// sender retries, and once a `postmaster` user exists, that user's own quota applies).
pub const POSTMASTER_UNOWNED_QUOTA: u64 = 100 << 20;

/// How deep aliases may nest (Postfix stops at 1000; lists of lists need only a few).
pub const ALIAS_DEPTH_MAX: usize = 8;

/// Where mail for one RCPT address goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// The domain is not ours: relay control decides.
    Remote,
    /// Local mailboxes (deduplicated, in order) plus remote addresses an alias points to.
    Local {
        mailboxes: Vec<String>,
        forward: Vec<String>,
    },
    /// A local domain without such a user or alias: 550 5.1.1.
    Unknown,
}

#[derive(Debug, Clone)]
pub struct Directory {
    domains: Vec<String>,
    users: HashMap<String, User>,
    /// Keyed by lower-case local part (aliases are domain-independent like users).
    aliases: HashMap<String, Vec<String>>,
    /// A real hash verified for unknown users so failures take the same time.
    dummy_hash: String,
}

impl Directory {
    /// `aliases` keys are `local@localdomain` or bare local parts; targets are users,
    /// other aliases (any local domain) or remote addresses.
    pub fn new(
        domains: Vec<String>,
        users: Vec<User>,
        aliases: &BTreeMap<String, Vec<String>>,
    ) -> Result<Directory, DirectoryError> {
        let domains: Vec<String> = domains.iter().map(|d| d.to_ascii_lowercase()).collect();
        let mut by_name = HashMap::new();
        for mut user in users {
            user.name = user.name.to_ascii_lowercase();
            if !valid_name(&user.name) {
                return Err(DirectoryError::BadUserName(user.name));
            }
            password::validate(&user.password).map_err(|source| DirectoryError::BadPassword {
                user: user.name.clone(),
                source,
            })?;
            if by_name.contains_key(&user.name) {
                return Err(DirectoryError::DuplicateUser(user.name));
            }
            by_name.insert(user.name.clone(), user);
        }
        let mut directory = Directory {
            domains,
            users: by_name,
            aliases: HashMap::new(),
            dummy_hash: password::hash("relay dummy password for timing").map_err(|source| {
                DirectoryError::BadPassword {
                    user: "(dummy)".into(),
                    source,
                }
            })?,
        };
        for (alias, targets) in aliases {
            let local = directory
                .local_part_of(alias)
                .ok_or_else(|| DirectoryError::BadAlias(alias.clone()))?;
            let targets = targets.iter().map(|t| t.to_ascii_lowercase()).collect();
            directory.aliases.insert(local, targets);
        }
        for alias in directory.aliases.keys() {
            directory.expand(alias, 0).map_err(|e| match e {
                Expand::Loop => DirectoryError::AliasLoop(alias.clone()),
                Expand::Unknown(target) => DirectoryError::UnknownTarget {
                    alias: alias.clone(),
                    target,
                },
            })?;
        }
        Ok(directory)
    }

    pub fn is_local_domain(&self, domain: &str) -> bool {
        let domain = domain.trim_end_matches('.');
        self.domains.iter().any(|d| d.eq_ignore_ascii_case(domain))
    }

    /// The lower-case local part if `address` is local (`postmaster` alone counts).
    fn local_part_of(&self, address: &str) -> Option<String> {
        match address.rsplit_once('@') {
            Some((local, domain)) if self.is_local_domain(domain) && !local.is_empty() => {
                Some(local.to_ascii_lowercase())
            }
            Some(_) => None,
            None if !address.is_empty() => Some(address.to_ascii_lowercase()),
            None => None,
        }
    }

    /// Resolves one RCPT address.
    pub fn resolve(&self, address: &str) -> Resolution {
        let Some(local) = self.local_part_of(address) else {
            return Resolution::Remote;
        };
        match self.expand(&local, 0) {
            Ok((mailboxes, forward)) => Resolution::Local { mailboxes, forward },
            Err(_) => Resolution::Unknown,
        }
    }

    fn expand(&self, local: &str, depth: usize) -> Result<(Vec<String>, Vec<String>), Expand> {
        if depth > ALIAS_DEPTH_MAX {
            return Err(Expand::Loop);
        }
        if self.users.contains_key(local) {
            return Ok((vec![local.to_string()], Vec::new()));
        }
        let Some(targets) = self.aliases.get(local) else {
            // RFC 5321 §4.5.1: postmaster is never refused for lack of a user.
            if local == POSTMASTER {
                return Ok((vec![POSTMASTER.to_string()], Vec::new()));
            }
            return Err(Expand::Unknown(local.to_string()));
        };
        let (mut mailboxes, mut forward) = (Vec::new(), Vec::new());
        for target in targets {
            match self.local_part_of(target) {
                Some(inner) => {
                    let (m, f) = self.expand(&inner, depth + 1)?;
                    mailboxes.extend(m);
                    forward.extend(f);
                }
                None => forward.push(target.clone()),
            }
        }
        dedup_in_order(&mut mailboxes);
        dedup_in_order(&mut forward);
        Ok((mailboxes, forward))
    }

    /// EXPN: the members of a list (an alias with targets), as configured.
    pub fn list_members(&self, address: &str) -> Option<&[String]> {
        let local = self.local_part_of(address)?;
        self.aliases.get(&local).map(Vec::as_slice)
    }

    /// The local domains, lower case, in config order.
    pub fn domains(&self) -> &[String] {
        &self.domains
    }

    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.get(&name.to_ascii_lowercase())
    }

    /// Bytes `mailbox` may hold: its user's quota, or the built-in postmaster maildrop's
    /// while no user owns it; `None` is unlimited.
    pub fn quota(&self, mailbox: &str) -> Option<u64> {
        match self.user(mailbox) {
            Some(user) => user.quota,
            None if mailbox.eq_ignore_ascii_case(POSTMASTER) => Some(POSTMASTER_UNOWNED_QUOTA),
            None => None,
        }
    }

    /// The warning `relay check` prints (and `relay serve` logs) when nobody receives
    /// postmaster's mail; `None` when someone does.
    pub fn postmaster_warning(&self) -> Option<String> {
        (!self.postmaster_received()).then(|| {
            "no user receives mail for postmaster (RFC 5321 §4.5.1): it is accepted and kept in \
             the built-in `postmaster` mailbox, which only a user named `postmaster` can read \
             (POP3); add that user (`relay user add postmaster --file USERS_FILE`), or alias \
             postmaster to a user (`[local.aliases]` `postmaster = [\"alice\"]`; mail kept \
             before stays for a `postmaster` user)"
                .to_string()
        })
    }

    /// Whether some user (or a remote address) receives mail for postmaster. `false` when
    /// it is kept in the built-in maildrop that no user reads yet, which `relay check` and
    /// `relay serve` warn about.
    pub fn postmaster_received(&self) -> bool {
        match self.expand(POSTMASTER, 0) {
            Ok((mailboxes, forward)) => {
                !forward.is_empty() || mailboxes.iter().any(|m| self.users.contains_key(m))
            }
            Err(_) => false,
        }
    }

    /// Checks a login. Takes as long for an unknown user as for a wrong password.
    pub fn verify(&self, name: &str, password: &str) -> Option<String> {
        match self.user(name) {
            Some(user) if password::verify(&user.password, password) => Some(user.name.clone()),
            Some(_) => None,
            None => {
                let _ = password::verify(&self.dummy_hash, password);
                None
            }
        }
    }

    /// APOP (RFC 1939 §7): `digest` is hex MD5 of `timestamp` followed by the shared secret.
    pub fn verify_apop(&self, name: &str, timestamp: &str, digest: &str) -> Option<String> {
        use md5::{Digest, Md5};
        let user = self.user(name)?;
        let secret = user.apop_secret.as_deref()?;
        let mut md5 = Md5::new();
        md5.update(timestamp.as_bytes());
        md5.update(secret.as_bytes());
        let expected: String = md5.finalize().iter().map(|b| format!("{b:02x}")).collect();
        constant_time_eq(expected.as_bytes(), digest.to_ascii_lowercase().as_bytes())
            .then(|| user.name.clone())
    }

    /// Whether any user has an APOP secret (APOP is advertised only then).
    pub fn apop_available(&self) -> bool {
        self.users.values().any(|u| u.apop_secret.is_some())
    }

    /// The addresses whose mail reaches user `name` alone: the name at every local domain,
    /// and every alias that expands to that user only. A key registered for the user must
    /// name one of them.
    pub fn addresses_of(&self, name: &str) -> Vec<String> {
        let name = name.to_ascii_lowercase();
        if !self.users.contains_key(&name) {
            return Vec::new();
        }
        let mut locals = vec![name.clone()];
        let mut aliases: Vec<&String> = self.aliases.keys().collect();
        aliases.sort();
        for alias in aliases {
            if matches!(self.expand(alias, 0), Ok((m, f)) if f.is_empty() && m == [name.as_str()]) {
                locals.push(alias.clone());
            }
        }
        let mut addresses = Vec::new();
        for local in &locals {
            for domain in &self.domains {
                addresses.push(format!("{local}@{domain}"));
            }
        }
        addresses
    }

    pub fn users(&self) -> impl Iterator<Item = &User> {
        self.users.values()
    }
}

/// The directory the running relay answers from, replaceable while it runs: the cluster's
/// PostgreSQL directory publishes a new snapshot on every change, and the next RCPT or login
/// sees it. Readers take the snapshot of the moment ([`SharedDirectory::current`]: a read
/// lock held for one `Arc` clone) and keep it for the whole of one decision, so a change
/// never shows half-applied. Clones share the same slot.
#[derive(Clone)]
pub struct SharedDirectory {
    slot: Arc<RwLock<Arc<Directory>>>,
}

impl SharedDirectory {
    pub fn new(directory: Arc<Directory>) -> SharedDirectory {
        SharedDirectory {
            slot: Arc::new(RwLock::new(directory)),
        }
    }

    /// The snapshot in force now.
    pub fn current(&self) -> Arc<Directory> {
        // A writer that panicked left a whole snapshot in the slot (the swap is one store).
        Arc::clone(&self.slot.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Puts `directory` in force for every later [`SharedDirectory::current`].
    pub fn replace(&self, directory: impl Into<Arc<Directory>>) {
        *self.slot.write().unwrap_or_else(|e| e.into_inner()) = directory.into();
    }
}

impl From<Arc<Directory>> for SharedDirectory {
    fn from(directory: Arc<Directory>) -> SharedDirectory {
        SharedDirectory::new(directory)
    }
}

impl From<Directory> for SharedDirectory {
    fn from(directory: Directory) -> SharedDirectory {
        SharedDirectory::new(Arc::new(directory))
    }
}

impl std::fmt::Debug for SharedDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedDirectory")
            .field("users", &self.current().users.len())
            .finish()
    }
}

enum Expand {
    Loop,
    Unknown(String),
}

fn dedup_in_order(items: &mut Vec<String>) {
    let mut seen = std::collections::HashSet::new();
    items.retain(|item| seen.insert(item.clone()));
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Mailbox names are also file-system-safe and log-safe identifiers.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::OnceLock;

    fn phc() -> &'static str {
        static HASH: OnceLock<String> = OnceLock::new();
        HASH.get_or_init(|| password::hash("secret").unwrap())
    }

    fn user(name: &str) -> User {
        User {
            name: name.into(),
            password: phc().into(),
            quota: None,
            apop_secret: None,
            home: None,
        }
    }

    fn directory(aliases: &[(&str, &[&str])]) -> Result<Directory, DirectoryError> {
        let aliases: BTreeMap<String, Vec<String>> = aliases
            .iter()
            .map(|(a, t)| (a.to_string(), t.iter().map(|s| s.to_string()).collect()))
            .collect();
        Directory::new(
            vec!["example.test".into(), "localhost".into()],
            vec![user("alice"), user("bob"), user("postmaster")],
            &aliases,
        )
    }

    fn local(mailboxes: &[&str], forward: &[&str]) -> Resolution {
        Resolution::Local {
            mailboxes: mailboxes.iter().map(|s| s.to_string()).collect(),
            forward: forward.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn users_in_every_local_domain() {
        let d = directory(&[]).unwrap();
        assert_eq!(d.resolve("alice@example.test"), local(&["alice"], &[]));
        assert_eq!(d.resolve("Alice@LOCALHOST"), local(&["alice"], &[]));
        assert_eq!(d.resolve("postmaster"), local(&["postmaster"], &[]));
        assert_eq!(d.resolve("carol@example.test"), Resolution::Unknown);
        assert_eq!(d.resolve("alice@elsewhere.test"), Resolution::Remote);
    }

    #[test]
    fn postmaster_is_never_unknown() {
        // No user or alias named postmaster: the built-in maildrop takes its mail, whatever
        // the case of the local part and in every local domain.
        let d = Directory::new(
            vec!["example.test".into(), "localhost".into()],
            vec![user("alice")],
            &BTreeMap::new(),
        )
        .unwrap();
        for address in [
            "postmaster@example.test",
            "PostMaster@LOCALHOST",
            "POSTMASTER",
            "postmaster",
        ] {
            assert_eq!(d.resolve(address), local(&["postmaster"], &[]), "{address}");
        }
        assert_eq!(d.resolve("postmistress@example.test"), Resolution::Unknown);
        assert_eq!(d.resolve("postmaster@remote.test"), Resolution::Remote);
        assert!(!d.postmaster_received());
        assert!(d.postmaster_warning().is_some());
        assert_eq!(d.quota("postmaster"), Some(POSTMASTER_UNOWNED_QUOTA));
        assert_eq!(d.quota("alice"), None);
        // An alias may name it (abuse reports to the same place).
        let mut aliases = BTreeMap::new();
        aliases.insert("abuse".to_string(), vec!["Postmaster".to_string()]);
        let d = Directory::new(vec!["localhost".into()], vec![], &aliases).unwrap();
        assert_eq!(d.resolve("abuse@localhost"), local(&["postmaster"], &[]));
    }

    #[test]
    fn postmaster_received_by_a_user_an_alias_or_a_forward() {
        // A user of that name owns the built-in maildrop (and its quota is the user's).
        let d = directory(&[]).unwrap();
        assert!(d.postmaster_received() && d.postmaster_warning().is_none());
        assert_eq!(d.quota("postmaster"), None);
        let alias = |targets: &[&str]| {
            let mut aliases = BTreeMap::new();
            aliases.insert(
                "postmaster@localhost".to_string(),
                targets.iter().map(|t| t.to_string()).collect(),
            );
            Directory::new(vec!["localhost".into()], vec![user("alice")], &aliases).unwrap()
        };
        let d = alias(&["alice"]);
        assert_eq!(d.resolve("POSTMASTER@localhost"), local(&["alice"], &[]));
        assert!(d.postmaster_received());
        let d = alias(&["ops@remote.test"]);
        assert_eq!(d.resolve("postmaster"), local(&[], &["ops@remote.test"]));
        assert!(d.postmaster_received());
    }

    #[test]
    fn lists_expand_deduplicated_with_remote_members() {
        let d = directory(&[
            ("team@example.test", &["alice@example.test", "bob", "ops"]),
            ("ops", &["alice@localhost", "oncall@remote.test"]),
        ])
        .unwrap();
        assert_eq!(
            d.resolve("team@localhost"),
            local(&["alice", "bob"], &["oncall@remote.test"])
        );
        assert_eq!(
            d.list_members("team@example.test").map(|m| m.len()),
            Some(3)
        );
        assert_eq!(d.list_members("alice@example.test"), None);
    }

    #[test]
    fn alias_errors_are_found_at_load() {
        assert!(matches!(
            directory(&[("a", &["b"]), ("b", &["a"])]),
            Err(DirectoryError::AliasLoop(_))
        ));
        assert!(matches!(
            directory(&[("team", &["nobody"])]),
            Err(DirectoryError::UnknownTarget { .. })
        ));
        assert!(matches!(
            directory(&[("team@remote.test", &["alice"])]),
            Err(DirectoryError::BadAlias(_))
        ));
    }

    #[test]
    fn bad_users_are_refused() {
        let aliases = BTreeMap::new();
        let mut plain = user("carol");
        plain.password = "hunter2".into();
        assert!(matches!(
            Directory::new(vec![], vec![plain], &aliases),
            Err(DirectoryError::BadPassword { .. })
        ));
        assert!(matches!(
            Directory::new(vec![], vec![user("a b")], &aliases),
            Err(DirectoryError::BadUserName(_))
        ));
        assert!(matches!(
            Directory::new(vec![], vec![user("x"), user("X")], &aliases),
            Err(DirectoryError::DuplicateUser(_))
        ));
    }

    #[test]
    fn a_replaced_directory_applies_to_the_next_reader_only() {
        let shared = SharedDirectory::from(directory(&[]).unwrap());
        let before = shared.current();
        let clone = shared.clone();
        clone.replace(
            Directory::new(
                vec!["example.test".into()],
                vec![user("carol")],
                &BTreeMap::new(),
            )
            .unwrap(),
        );
        // A decision in flight keeps its snapshot; the next one sees the new directory.
        assert_eq!(before.resolve("alice@example.test"), local(&["alice"], &[]));
        assert_eq!(
            shared.current().resolve("alice@example.test"),
            Resolution::Unknown
        );
        assert_eq!(
            shared.current().resolve("carol@example.test"),
            local(&["carol"], &[])
        );
    }

    #[test]
    fn logins() {
        let d = directory(&[]).unwrap();
        assert_eq!(d.verify("ALICE", "secret"), Some("alice".into()));
        assert_eq!(d.verify("alice", "wrong"), None);
        assert_eq!(d.verify("nobody", "secret"), None);
    }

    #[test]
    fn apop_digest() {
        let mut alice = user("alice");
        alice.apop_secret = Some("tanstaaf".into());
        let d = Directory::new(vec![], vec![alice], &BTreeMap::new()).unwrap();
        assert!(d.apop_available());
        // The example of RFC 1939 §7.
        let ts = "<1896.697170952@dbc.mtview.ca.us>";
        assert_eq!(
            d.verify_apop("alice", ts, "c4c9334bac560ecc979e58001b3e22fb"),
            Some("alice".into())
        );
        assert_eq!(
            d.verify_apop("alice", ts, "00000000000000000000000000000000"),
            None
        );
        assert_eq!(
            d.verify_apop("bob", ts, "c4c9334bac560ecc979e58001b3e22fb"),
            None
        );
    }
}
