//! Users' public keys (OpenPGP and S/MIME) and their encryption choice. Where they are
//! kept is a [`KeyBackend`]: one small file each in the keys directory ([`FileKeys`], the
//! default):
//!
//! ```text
//! keys/alice.openpgp.asc   the OpenPGP key, ASCII-armoured
//! keys/alice.smime.pem     the S/MIME certificate, PEM
//! keys/alice.encrypt       `on` or `off`: the user's own choice (absent: the server default)
//! ```
//!
//! or, with `[cluster.postgres]`, the cluster's directory (the same three entries per user,
//! rows of its `user_keys` table; `cluster::directory`).
//!
//! Every key is checked on entry (`mailcrypt`), written durably (files: temporary file,
//! fsync, rename, fsync of the directory; PostgreSQL: a committed transaction) and held in
//! memory as parsed keys, so delivery asks for a user's sealing key without touching the
//! disk or the network. The entries are read at start and on SIGHUP (and, from PostgreSQL,
//! on every directory change); `relay user key` writes them, and the web mail's settings
//! page writes them through the running relay's store.
//!
//! Exposure: key files come from users (checked: size, syntax, usage, validity, address);
//! a file that no longer passes the checks at load (expired since) is logged and not used.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use crate::mailcrypt::{openpgp, smime, KeyError, KeyKind, PublicKey};

use super::{Resolution, SharedDirectory};

/// Largest key file read (an OpenPGP key with many signatures stays far below).
pub const KEY_FILE_MAX: u64 = 1 << 20;

/// What one user registered.
#[derive(Clone, Debug, Default)]
pub struct UserKeys {
    pub openpgp: Option<openpgp::Key>,
    pub smime: Option<smime::Cert>,
    /// The user's own choice; `None`: the server default.
    pub encrypt: Option<bool>,
}

impl UserKeys {
    pub fn is_empty(&self) -> bool {
        self.openpgp.is_none() && self.smime.is_none() && self.encrypt.is_none()
    }
}

/// The server's rule (`[encryption]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncryptionPolicy {
    /// Encrypt for a user with a key who has not chosen.
    pub default: bool,
    /// Encrypt for every user with a key, whatever they chose.
    pub required: bool,
}

/// One of a user's stored entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Slot {
    OpenPgp,
    Smime,
    /// The choice: `on` or `off`.
    Encrypt,
}

impl Slot {
    /// The file suffix, and the `kind` of a `user_keys` row.
    pub fn name(self) -> &'static str {
        match self {
            Slot::OpenPgp => "openpgp",
            Slot::Smime => "smime",
            Slot::Encrypt => "encrypt",
        }
    }

    pub fn from_name(name: &str) -> Option<Slot> {
        [Slot::OpenPgp, Slot::Smime, Slot::Encrypt]
            .into_iter()
            .find(|s| s.name() == name)
    }

    fn of(kind: KeyKind) -> Slot {
        match kind {
            KeyKind::OpenPgp => Slot::OpenPgp,
            KeyKind::Smime => Slot::Smime,
        }
    }
}

/// Where users' keys are kept. Reads come at load only (the store keeps parsed keys);
/// writes are durable when they return.
pub trait KeyBackend: Send + Sync {
    /// The stored bytes of `user`'s `slot` (at most [`KEY_FILE_MAX`]); `None` when absent or
    /// unreadable (logged here).
    fn read(&self, user: &str, slot: Slot) -> Option<Vec<u8>>;
    /// Stores `bytes` (`Some`) or removes the entry (`None`); whether there was one before.
    fn write(&self, user: &str, slot: Slot, bytes: Option<&[u8]>) -> Result<bool, KeyStoreError>;
    /// Where the keys are, for the log.
    fn location(&self) -> String;
}

#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    #[error("no user `{0}`")]
    UnknownUser(String),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("encryption is required on this server; it cannot be turned off")]
    Required,
    /// A backend that keeps keys as text (PostgreSQL) was given binary.
    #[error("a stored key is text (ASCII-armoured or PEM)")]
    NotText,
}

/// Users' keys: where they are kept and their parsed form.
pub struct KeyStore {
    backend: Arc<dyn KeyBackend>,
    policy: EncryptionPolicy,
    directory: SharedDirectory,
    table: RwLock<Arc<HashMap<String, Arc<UserKeys>>>>,
}

impl KeyStore {
    /// Opens (creating, 0700) the keys directory and reads every user's files.
    pub fn open(
        dir: &Path,
        directory: impl Into<SharedDirectory>,
        policy: EncryptionPolicy,
        now: SystemTime,
    ) -> Result<KeyStore, KeyStoreError> {
        Ok(KeyStore::with_backend(
            Arc::new(FileKeys::open(dir)?),
            directory,
            policy,
            now,
        ))
    }

    /// A store over `backend`, every user's entries read.
    pub fn with_backend(
        backend: Arc<dyn KeyBackend>,
        directory: impl Into<SharedDirectory>,
        policy: EncryptionPolicy,
        now: SystemTime,
    ) -> KeyStore {
        let store = KeyStore {
            backend,
            policy,
            directory: directory.into(),
            table: RwLock::new(Arc::new(HashMap::new())),
        };
        store.reload(now);
        store
    }

    /// Where the keys are kept (the keys directory, or PostgreSQL), for the log.
    pub fn location(&self) -> String {
        self.backend.location()
    }

    pub fn policy(&self) -> EncryptionPolicy {
        self.policy
    }

    /// Reads every user's entries again (SIGHUP, a directory change); returns how many users
    /// have keys. An entry that is unreadable or fails the checks is logged and left out.
    pub fn reload(&self, now: SystemTime) -> usize {
        let mut table = HashMap::new();
        let directory = self.directory.current();
        let mut names: Vec<&str> = directory.users().map(|u| u.name.as_str()).collect();
        names.sort_unstable();
        for name in names {
            let keys = self.read_user(name, now);
            if !keys.is_empty() {
                table.insert(name.to_string(), Arc::new(keys));
            }
        }
        let count = table.len();
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(table);
        count
    }

    fn read_user(&self, name: &str, now: SystemTime) -> UserKeys {
        let addresses = self.directory.current().addresses_of(name);
        let mut keys = UserKeys::default();
        if let Some(bytes) = self.backend.read(name, Slot::OpenPgp) {
            match openpgp::parse_key(&bytes, &addresses, now) {
                Ok(key) => keys.openpgp = Some(key),
                Err(error) => tracing::warn!(user = name, %error, "OpenPGP key not used"),
            }
        }
        if let Some(bytes) = self.backend.read(name, Slot::Smime) {
            match smime::parse_cert(&bytes, &addresses, now) {
                Ok(cert) => keys.smime = Some(cert),
                Err(error) => tracing::warn!(user = name, %error, "S/MIME certificate not used"),
            }
        }
        if let Some(bytes) = self.backend.read(name, Slot::Encrypt) {
            match bytes.trim_ascii() {
                b"on" => keys.encrypt = Some(true),
                b"off" => keys.encrypt = Some(false),
                _ => tracing::warn!(
                    user = name,
                    "encryption choice file is neither `on` nor `off`"
                ),
            }
        }
        keys
    }

    fn user_name(&self, name: &str) -> Result<String, KeyStoreError> {
        self.directory
            .current()
            .user(name)
            .map(|u| u.name.clone())
            .ok_or_else(|| KeyStoreError::UnknownUser(name.to_string()))
    }

    /// What `name` registered (empty when nothing).
    pub fn get(&self, name: &str) -> Arc<UserKeys> {
        let table = Arc::clone(&self.table.read().unwrap_or_else(|e| e.into_inner()));
        table
            .get(&name.to_ascii_lowercase())
            .cloned()
            .unwrap_or_default()
    }

    /// Every user with something registered, by name.
    pub fn all(&self) -> Arc<HashMap<String, Arc<UserKeys>>> {
        Arc::clone(&self.table.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Checks `bytes` as a key of `kind` (or whichever it is, with `None`) for user `name`,
    /// stores it durably and uses it from now on. Returns its kind.
    pub fn set(
        &self,
        name: &str,
        bytes: &[u8],
        kind: Option<KeyKind>,
        now: SystemTime,
    ) -> Result<KeyKind, KeyStoreError> {
        let name = self.user_name(name)?;
        if bytes.len() as u64 > KEY_FILE_MAX {
            return Err(KeyError::TooLarge(bytes.len(), KEY_FILE_MAX as usize).into());
        }
        let addresses = self.directory.current().addresses_of(&name);
        let key = match kind {
            None => parse_either(bytes, &addresses, now)?,
            Some(KeyKind::OpenPgp) => {
                PublicKey::OpenPgp(openpgp::parse_key(bytes, &addresses, now)?)
            }
            Some(KeyKind::Smime) => PublicKey::Smime(smime::parse_cert(bytes, &addresses, now)?),
        };
        let kind = key.kind();
        let stored = match &key {
            PublicKey::OpenPgp(key) => key.armored.as_bytes(),
            PublicKey::Smime(cert) => cert.pem.as_bytes(),
        };
        self.backend.write(&name, Slot::of(kind), Some(stored))?;
        self.update(&name, |keys| match key {
            PublicKey::OpenPgp(key) => keys.openpgp = Some(key),
            PublicKey::Smime(cert) => keys.smime = Some(cert),
        });
        Ok(kind)
    }

    /// Removes user `name`'s key of `kind`; false when there was none.
    pub fn remove(&self, name: &str, kind: KeyKind) -> Result<bool, KeyStoreError> {
        let name = self.user_name(name)?;
        let removed = self.backend.write(&name, Slot::of(kind), None)?;
        self.update(&name, |keys| match kind {
            KeyKind::OpenPgp => keys.openpgp = None,
            KeyKind::Smime => keys.smime = None,
        });
        Ok(removed)
    }

    /// Records user `name`'s choice (`None`: follow the server default).
    pub fn set_encrypt(&self, name: &str, choice: Option<bool>) -> Result<(), KeyStoreError> {
        let name = self.user_name(name)?;
        if self.policy.required && choice == Some(false) {
            return Err(KeyStoreError::Required);
        }
        let stored: Option<&[u8]> = choice.map(|on| if on { &b"on\n"[..] } else { b"off\n" });
        self.backend.write(&name, Slot::Encrypt, stored)?;
        self.update(&name, |keys| keys.encrypt = choice);
        Ok(())
    }

    /// Whether mail for `name` is encrypted now (it has a key and the rule says so).
    pub fn encrypts(&self, name: &str) -> bool {
        self.seal_key(name).is_some()
    }

    /// The key mail for `name` is sealed with, when it is: OpenPGP when the user has both
    /// (it protects more of the message's structure and every client here reads it).
    pub fn seal_key(&self, name: &str) -> Option<PublicKey> {
        let keys = self.get(name);
        let on = self.policy.required || keys.encrypt.unwrap_or(self.policy.default);
        if !on {
            return None;
        }
        if let Some(key) = &keys.openpgp {
            return Some(PublicKey::OpenPgp(key.clone()));
        }
        keys.smime
            .as_ref()
            .map(|cert| PublicKey::Smime(cert.clone()))
    }

    /// The OpenPGP key registered for `address` (a user's address at a local domain).
    pub fn openpgp_for_address(&self, address: &str) -> Option<openpgp::Key> {
        let (_, domain) = address.rsplit_once('@')?;
        let directory = self.directory.current();
        if !directory.is_local_domain(domain) {
            return None;
        }
        let Resolution::Local { mailboxes, forward } = directory.resolve(address) else {
            return None;
        };
        if mailboxes.len() != 1 || !forward.is_empty() {
            return None;
        }
        let key = self.get(&mailboxes[0]).openpgp.clone()?;
        key.addresses
            .iter()
            .any(|a| a.eq_ignore_ascii_case(address))
            .then_some(key)
    }

    /// Publishes a change to one user's entry (copy on write of the table).
    fn update(&self, name: &str, change: impl FnOnce(&mut UserKeys)) {
        let mut guard = self.table.write().unwrap_or_else(|e| e.into_inner());
        let mut table = HashMap::clone(&guard);
        let mut keys = table
            .get(name)
            .map(|k| UserKeys::clone(k))
            .unwrap_or_default();
        change(&mut keys);
        if keys.is_empty() {
            table.remove(name);
        } else {
            table.insert(name.to_string(), Arc::new(keys));
        }
        *guard = Arc::new(table);
    }
}

/// Keys in files of the keys directory (the default backend).
pub struct FileKeys {
    dir: PathBuf,
}

impl FileKeys {
    /// Opens the keys directory, creating it (0700) when missing.
    pub fn open(dir: &Path) -> Result<FileKeys, KeyStoreError> {
        create_dir(dir)?;
        Ok(FileKeys {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, name: &str, slot: Slot) -> PathBuf {
        let suffix = match slot {
            Slot::OpenPgp => "openpgp.asc",
            Slot::Smime => "smime.pem",
            Slot::Encrypt => "encrypt",
        };
        self.dir.join(format!("{name}.{suffix}"))
    }
}

impl KeyBackend for FileKeys {
    fn read(&self, user: &str, slot: Slot) -> Option<Vec<u8>> {
        use std::io::Read;
        let path = self.path(user, slot);
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "cannot read key file");
                return None;
            }
        };
        let mut bytes = Vec::new();
        match file.take(KEY_FILE_MAX + 1).read_to_end(&mut bytes) {
            Ok(_) if bytes.len() as u64 <= KEY_FILE_MAX => Some(bytes),
            Ok(_) => {
                tracing::warn!(path = %path.display(), "key file too large; not used");
                None
            }
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "cannot read key file");
                None
            }
        }
    }

    fn write(&self, user: &str, slot: Slot, bytes: Option<&[u8]>) -> Result<bool, KeyStoreError> {
        let path = self.path(user, slot);
        match bytes {
            Some(bytes) => {
                let existed = path.exists();
                write_durably(&self.dir, &path, bytes)?;
                Ok(existed)
            }
            None => remove_durably(&path),
        }
    }

    fn location(&self) -> String {
        self.dir.display().to_string()
    }
}

/// Parses `bytes` as whichever it is: an S/MIME certificate (PEM `CERTIFICATE` or DER
/// starting with a SEQUENCE that is not an OpenPGP packet), else an OpenPGP key.
pub fn parse_either(
    bytes: &[u8],
    addresses: &[String],
    now: SystemTime,
) -> Result<PublicKey, KeyError> {
    if looks_like_certificate(bytes) {
        smime::parse_cert(bytes, addresses, now).map(PublicKey::Smime)
    } else {
        openpgp::parse_key(bytes, addresses, now).map(PublicKey::OpenPgp)
    }
}

fn looks_like_certificate(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(4096)]);
    text.contains("-----BEGIN CERTIFICATE-----")
        || text.contains("-----BEGIN X509 CERTIFICATE-----")
        // DER: SEQUENCE with a long-form length (an OpenPGP packet tag has bit 7 set, 0x30 not).
        || (bytes.len() > 4 && bytes[0] == 0x30 && matches!(bytes[1], 0x81..=0x84))
}

fn create_dir(dir: &Path) -> Result<(), KeyStoreError> {
    use std::os::unix::fs::DirBuilderExt;
    let io = |source| KeyStoreError::Io {
        path: dir.to_path_buf(),
        source,
    };
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io)?;
    // Made by root for a relay that runs as its own user (`relay user key` under sudo): the
    // directory belongs to whoever owns the spool directory above it.
    if let Some(parent) = dir.parent() {
        crate::durable::same_owner(parent, dir).map_err(io)?;
    }
    Ok(())
}

/// Writes `bytes` to `path` so that a crash leaves the old file or the new one, whole.
fn write_durably(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), KeyStoreError> {
    crate::durable::replace_owned_like(path, bytes, dir).map_err(|source| KeyStoreError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Removes `path` durably; false when it did not exist.
fn remove_durably(path: &Path) -> Result<bool, KeyStoreError> {
    crate::durable::remove(path).map_err(|source| KeyStoreError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The server's rule from `[encryption]`.
pub fn policy(config: &crate::config::Config) -> EncryptionPolicy {
    EncryptionPolicy {
        default: config.encryption.default,
        required: config.encryption.required,
    }
}

/// Opens the keys directory `config` names.
pub fn open(
    config: &crate::config::Config,
    directory: impl Into<SharedDirectory>,
    now: SystemTime,
) -> Result<KeyStore, KeyStoreError> {
    let dir = config.encryption.keys_dir(&config.spool.dir);
    KeyStore::open(&dir, directory, policy(config), now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mailbox::Directory;
    use std::collections::BTreeMap;

    fn directory() -> Arc<Directory> {
        let hash = crate::mailbox::password::hash("pw").unwrap();
        let users = ["alice", "bob"]
            .iter()
            .map(|name| crate::mailbox::User {
                name: name.to_string(),
                password: hash.clone(),
                quota: None,
                apop_secret: None,
                home: None,
            })
            .collect();
        let mut aliases = BTreeMap::new();
        aliases.insert("al".to_string(), vec!["alice".to_string()]);
        aliases.insert(
            "both".to_string(),
            vec!["alice".to_string(), "bob".to_string()],
        );
        Arc::new(
            Directory::new(
                vec!["example.test".into(), "localhost".into()],
                users,
                &aliases,
            )
            .unwrap(),
        )
    }

    fn policy(default: bool, required: bool) -> EncryptionPolicy {
        EncryptionPolicy { default, required }
    }

    #[test]
    fn a_users_addresses_are_every_domain_and_single_target_aliases() {
        let addresses = directory().addresses_of("Alice");
        assert_eq!(
            addresses,
            [
                "alice@example.test",
                "alice@localhost",
                "al@example.test",
                "al@localhost"
            ]
        );
        assert!(directory().addresses_of("nobody").is_empty());
    }

    #[test]
    fn the_encryption_choice_is_durable_and_follows_the_rule() {
        let dir = tempfile::tempdir().unwrap();
        let keys_dir = dir.path().join("keys");
        let now = SystemTime::now();
        let store = KeyStore::open(&keys_dir, directory(), policy(true, false), now).unwrap();
        store.set_encrypt("alice", Some(false)).unwrap();
        assert_eq!(store.get("alice").encrypt, Some(false));
        let again = KeyStore::open(&keys_dir, directory(), policy(true, false), now).unwrap();
        assert_eq!(again.get("alice").encrypt, Some(false));
        again.set_encrypt("alice", None).unwrap();
        assert!(again.get("alice").is_empty());
        assert!(matches!(
            again.set_encrypt("carol", Some(true)),
            Err(KeyStoreError::UnknownUser(_))
        ));
        let required = KeyStore::open(&keys_dir, directory(), policy(true, true), now).unwrap();
        assert!(matches!(
            required.set_encrypt("alice", Some(false)),
            Err(KeyStoreError::Required)
        ));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&keys_dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn garbage_is_refused_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::open(
            dir.path(),
            directory(),
            policy(true, false),
            SystemTime::now(),
        )
        .unwrap();
        assert!(matches!(
            store.set("alice", b"not a key", None, SystemTime::now()),
            Err(KeyStoreError::Key(_))
        ));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        assert!(store.seal_key("alice").is_none());
    }
}
