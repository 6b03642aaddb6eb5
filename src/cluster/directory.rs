//! The cluster's directory in PostgreSQL (`[cluster.postgres]`): users (argon2id hashes,
//! quotas, APOP secrets, home nodes), aliases and users' keys, shared by every node.
//!
//! Nodes never ask PostgreSQL during a login or an RCPT: each holds the whole directory as a
//! [`Directory`] snapshot in a [`SharedDirectory`] and replaces it when the database says it
//! changed. A statement trigger on each table NOTIFYs `relay_directory`; the node's
//! directory thread LISTENs on one connection and reloads the whole directory in one
//! statement (one round trip) per batch of notifications. Lost connection: the node keeps
//! serving the snapshot it has (logins and RCPT answer from it; users added meanwhile wait),
//! reconnects with backoff, and reloads on reconnect. Every snapshot is also written (0600,
//! durably) to `<spool.dir>/cluster-directory.json`, so a node restarted while PostgreSQL is
//! down starts from it; without that file it refuses to start.
//!
//! The entries of `[local]` (users, users file, aliases) still count, under those of
//! PostgreSQL (a name in both is PostgreSQL's); local domains stay in the config, where the
//! certificates and DKIM keys that go with them are. A row that cannot be used (an alias
//! into nothing, a loop) is left out with a warning instead of freezing the directory.
//!
//! Schema: versioned migrations ([`MIGRATIONS`], `relay cluster migrate`), each applied in
//! a transaction of its own and recorded in `schema_migrations`; a node refuses to start
//! against a schema other than the one it was built for.
//!
//! Exposure: rows come from operators (and users' key uploads, checked by `mailcrypt`);
//! the password is read from `cluster.postgres.password_file` and never logged.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use postgres::fallible_iterator::FallibleIterator;
use serde::{Deserialize, Serialize};

use crate::config::cluster::PostgresSection;
use crate::config::Config;
use crate::mailbox::directory::{valid_name, Directory, DirectoryError, SharedDirectory, User};
use crate::mailbox::{DirectoryEntries, KeyBackend, KeyStore, KeyStoreError, Slot};

/// The channel the tables' trigger NOTIFYs.
pub const CHANNEL: &str = "relay_directory";

/// The snapshot cache in the spool directory.
pub const CACHE_FILE: &str = "cluster-directory.json";

/// How long a connection attempt may take when the conninfo sets no `connect_timeout`, and
/// how long any statement may run (the directory's statements are small).
const TIMEOUT: Duration = Duration::from_secs(5);

/// Reconnection backoff: doubled after each failure, up to the maximum.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How often the directory thread looks up from waiting (to notice a stop).
const POLL: Duration = Duration::from_millis(500);

/// One schema migration, applied in a transaction and recorded in `schema_migrations`.
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, in order; the last one's version is the schema this relay runs on.
pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "directory",
    sql: include_str!("migrations/0001_directory.sql"),
}];

/// The schema version this relay needs.
pub fn schema_version() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Serialises migrators (any constant shared by every relay: "relaydir").
const MIGRATION_LOCK: i64 = 0x7265_6c61_7964_6972;

#[derive(Debug, thiserror::Error)]
pub enum ClusterDirectoryError {
    #[error("[cluster.postgres] conninfo is not set")]
    NotConfigured,
    #[error("cluster.postgres.conninfo: {0}")]
    Conninfo(String),
    #[error("cannot read cluster.postgres.password_file {path}: {source}")]
    PasswordFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("PostgreSQL: {}", describe(.0))]
    Postgres(#[from] postgres::Error),
    #[error("the PostgreSQL directory has no schema yet: run `relay cluster migrate`")]
    NoSchema,
    #[error("the PostgreSQL directory's schema is version {found}, this relay needs {needed}: run `relay cluster migrate`")]
    SchemaOld { found: i32, needed: i32 },
    #[error("the PostgreSQL directory's schema is version {found}, newer than this relay knows ({known}): upgrade this relay")]
    SchemaNew { found: i32, known: i32 },
    #[error("PostgreSQL is unreachable ({reason}) and there is no cached directory ({path}) from an earlier run: start PostgreSQL first")]
    NoCache { reason: String, path: PathBuf },
    #[error("cached directory {path}: {message}")]
    Cache { path: PathBuf, message: String },
    #[error("PostgreSQL answered a snapshot that does not parse: {0}")]
    Snapshot(String),
    #[error("no user `{0}`")]
    UnknownUser(String),
    #[error("user `{0}` exists already")]
    UserExists(String),
    #[error("`{0}` is not a valid mailbox name (1-64 of a-z 0-9 . - _)")]
    BadName(String),
    #[error("`{0}` is not a node name (1-32 of a-z 0-9 -)")]
    BadNode(String),
    #[error(transparent)]
    Directory(#[from] DirectoryError),
}

type Result<T, E = ClusterDirectoryError> = std::result::Result<T, E>;

/// The server's message (postgres::Error's own text is only "db error"), or the cause of a
/// failed connection.
fn describe(error: &postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        return format!("{} ({})", db.message(), db.code().code());
    }
    match std::error::Error::source(error) {
        Some(source) => format!("{error}: {source}"),
        None => error.to_string(),
    }
}

/// How to reach the database: the conninfo, the password from its file, bounded timeouts.
#[derive(Clone)]
pub struct PgSettings {
    config: postgres::Config,
}

impl PgSettings {
    /// From `[cluster.postgres]`; `node` names the connections (`application_name`).
    pub fn new(section: &PostgresSection, node: Option<&str>) -> Result<PgSettings> {
        let conninfo = section
            .conninfo
            .as_deref()
            .ok_or(ClusterDirectoryError::NotConfigured)?;
        let mut config = postgres::Config::from_str(conninfo)
            .map_err(|e| ClusterDirectoryError::Conninfo(e.to_string()))?;
        if let Some(path) = &section.password_file {
            let text = std::fs::read_to_string(path).map_err(|source| {
                ClusterDirectoryError::PasswordFile {
                    path: path.clone(),
                    source,
                }
            })?;
            config.password(text.trim_end_matches(['\r', '\n']));
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(TIMEOUT);
        }
        // A dead peer is noticed without traffic of ours; statements cannot hang forever.
        let timeout = format!("-c statement_timeout={}", TIMEOUT.as_millis());
        let options = match config.get_options() {
            Some(theirs) => format!("{theirs} {timeout}"),
            None => timeout,
        };
        config
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .options(&options)
            .application_name(&match node {
                Some(node) => format!("relay {node}"),
                None => "relay".to_string(),
            });
        Ok(PgSettings { config })
    }

    pub fn from_config(config: &Config) -> Result<PgSettings> {
        PgSettings::new(&config.cluster.postgres, config.cluster.node.as_deref())
    }

    pub fn connect(&self) -> Result<postgres::Client> {
        Ok(self.config.connect(postgres::NoTls)?)
    }
}

/// Runs `f` on a thread of its own: the synchronous client runs a tokio runtime of its own,
/// which must not start inside another's context (a caller's async task).
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| match scope.spawn(f).join() {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

/// The whole directory as PostgreSQL holds it (and as the cache file keeps it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub schema: i32,
    pub users: Vec<UserRow>,
    pub aliases: Vec<AliasRow>,
    pub keys: Vec<KeyRow>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRow {
    pub name: String,
    pub password: String,
    pub quota: Option<i64>,
    pub apop_secret: Option<String>,
    pub home: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AliasRow {
    pub alias: String,
    pub targets: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRow {
    pub name: String,
    pub kind: String,
    pub data: String,
}

/// The whole directory in one statement (one round trip, one consistent view).
const SNAPSHOT_SQL: &str = concat!(
    "SELECT json_build_object(",
    " 'schema', (SELECT coalesce(max(version), 0) FROM schema_migrations),",
    " 'users', coalesce((SELECT json_agg(json_build_object('name', name,",
    " 'password', password, 'quota', quota, 'apop_secret', apop_secret, 'home', home)",
    " ORDER BY name) FROM users), '[]'),",
    " 'aliases', coalesce((SELECT json_agg(json_build_object('alias', alias,",
    " 'targets', targets) ORDER BY alias) FROM (SELECT alias,",
    " json_agg(target ORDER BY position) AS targets FROM aliases GROUP BY alias) grouped),",
    " '[]'),",
    " 'keys', coalesce((SELECT json_agg(json_build_object('name', name, 'kind', kind,",
    " 'data', data) ORDER BY name, kind) FROM user_keys), '[]'))::text"
);

/// The schema version recorded in the database (0: none).
fn recorded_version(client: &mut postgres::Client) -> Result<i32> {
    match client.query_one(
        "SELECT coalesce(max(version), 0) FROM schema_migrations",
        &[],
    ) {
        Ok(row) => Ok(row.try_get(0)?),
        Err(e) if e.code() == Some(&postgres::error::SqlState::UNDEFINED_TABLE) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// Whether `found` is the schema this relay runs on.
pub fn check_version(found: i32) -> Result<()> {
    let needed = schema_version();
    match found {
        0 => Err(ClusterDirectoryError::NoSchema),
        found if found < needed => Err(ClusterDirectoryError::SchemaOld { found, needed }),
        found if found > needed => Err(ClusterDirectoryError::SchemaNew {
            found,
            known: needed,
        }),
        _ => Ok(()),
    }
}

/// LISTENs and checks the schema (one round trip), then loads the snapshot (one more).
fn listen_and_load(client: &mut postgres::Client, counter: &AtomicU64) -> Result<Snapshot> {
    let mut version = None;
    counter.fetch_add(1, Ordering::Relaxed);
    let messages = client.simple_query(&format!(
        "LISTEN {CHANNEL}; SELECT coalesce(max(version), 0) FROM schema_migrations"
    ));
    match messages {
        Ok(messages) => {
            for message in messages {
                if let postgres::SimpleQueryMessage::Row(row) = message {
                    version = row.get(0).and_then(|v| v.parse::<i32>().ok());
                }
            }
        }
        Err(e) if e.code() == Some(&postgres::error::SqlState::UNDEFINED_TABLE) => {
            return Err(ClusterDirectoryError::NoSchema)
        }
        Err(e) => return Err(e.into()),
    }
    check_version(version.unwrap_or(0))?;
    load_snapshot(client, counter)
}

fn load_snapshot(client: &mut postgres::Client, counter: &AtomicU64) -> Result<Snapshot> {
    counter.fetch_add(1, Ordering::Relaxed);
    let messages = client.simple_query(SNAPSHOT_SQL)?;
    let text = messages
        .iter()
        .find_map(|m| match m {
            postgres::SimpleQueryMessage::Row(row) => row.get(0),
            _ => None,
        })
        .ok_or_else(|| ClusterDirectoryError::Snapshot("no row".into()))?;
    let snapshot: Snapshot =
        serde_json::from_str(text).map_err(|e| ClusterDirectoryError::Snapshot(e.to_string()))?;
    check_version(snapshot.schema)?;
    Ok(snapshot)
}

/// The file directory's entries with the snapshot's over them (a name in both is the
/// snapshot's).
pub fn merge(base: &DirectoryEntries, snapshot: &Snapshot) -> DirectoryEntries {
    let mut users: BTreeMap<String, User> = base
        .users
        .iter()
        .map(|u| (u.name.to_ascii_lowercase(), u.clone()))
        .collect();
    for row in &snapshot.users {
        users.insert(
            row.name.to_ascii_lowercase(),
            User {
                name: row.name.clone(),
                password: row.password.clone(),
                quota: row.quota.and_then(|q| u64::try_from(q).ok()),
                apop_secret: row.apop_secret.clone(),
                home: row.home.clone(),
            },
        );
    }
    let mut aliases = base.aliases.clone();
    for row in &snapshot.aliases {
        aliases.insert(row.alias.clone(), row.targets.clone());
    }
    DirectoryEntries {
        domains: base.domains.clone(),
        users: users.into_values().collect(),
        aliases,
    }
}

/// Builds the directory from `entries`, leaving out (with a warning) each user or alias that
/// stops it from building: one bad row must not freeze every node's directory.
pub fn build_tolerant(mut entries: DirectoryEntries) -> Directory {
    let local = |alias: &str| {
        alias
            .rsplit_once('@')
            .map_or(alias, |(local, _)| local)
            .to_ascii_lowercase()
    };
    loop {
        let error = match entries.build() {
            Ok(directory) => return directory,
            Err(error) => error,
        };
        tracing::warn!(%error, "cluster directory: entry left out");
        let before = (entries.users.len(), entries.aliases.len());
        match &error {
            DirectoryError::BadUserName(name)
            | DirectoryError::DuplicateUser(name)
            | DirectoryError::BadPassword { user: name, .. } => {
                entries.users.retain(|u| !u.name.eq_ignore_ascii_case(name));
            }
            DirectoryError::BadAlias(alias) => {
                entries.aliases.remove(alias);
            }
            DirectoryError::UnknownTarget { alias, .. } | DirectoryError::AliasLoop(alias) => {
                entries.aliases.retain(|key, _| local(key) != *alias);
            }
        }
        if (entries.users.len(), entries.aliases.len()) == before {
            // Nothing left to drop (the dummy hash failed): the domains alone.
            entries.users.clear();
            entries.aliases.clear();
            if let Ok(directory) = entries.build() {
                return directory;
            }
            entries.domains.clear();
        }
    }
}

/// Users' keys in PostgreSQL: read from the snapshot in memory, written through to the
/// `user_keys` table (the write's own NOTIFY then reloads every node).
pub struct PgKeys {
    settings: PgSettings,
    table: RwLock<Arc<RawKeys>>,
}

/// Each user's stored entries, as the last snapshot (or this node's own write) has them.
type RawKeys = HashMap<(String, Slot), Vec<u8>>;

impl PgKeys {
    pub fn new(settings: PgSettings, snapshot: &Snapshot) -> PgKeys {
        let keys = PgKeys {
            settings,
            table: RwLock::new(Arc::default()),
        };
        keys.publish(snapshot);
        keys
    }

    /// Takes the keys of a new snapshot.
    fn publish(&self, snapshot: &Snapshot) {
        let table = snapshot
            .keys
            .iter()
            .filter_map(|row| {
                let slot = Slot::from_name(&row.kind)?;
                Some(((row.name.clone(), slot), row.data.clone().into_bytes()))
            })
            .collect();
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(table);
    }

    fn store(&self, user: &str, slot: Slot, data: Option<&str>) -> Result<bool> {
        off_runtime(|| {
            let mut client = self.settings.connect()?;
            let changed = match data {
                Some(data) => {
                    let existed = client.query_opt(
                        "SELECT 1 FROM user_keys WHERE name = $1 AND kind = $2",
                        &[&user, &slot.name()],
                    )?;
                    client.execute(
                        "INSERT INTO user_keys (name, kind, data) VALUES ($1, $2, $3) \
                         ON CONFLICT (name, kind) DO UPDATE SET data = EXCLUDED.data",
                        &[&user, &slot.name(), &data],
                    )?;
                    existed.is_some()
                }
                None => {
                    client.execute(
                        "DELETE FROM user_keys WHERE name = $1 AND kind = $2",
                        &[&user, &slot.name()],
                    )? > 0
                }
            };
            Ok(changed)
        })
    }
}

impl KeyBackend for PgKeys {
    fn read(&self, user: &str, slot: Slot) -> Option<Vec<u8>> {
        let table = Arc::clone(&self.table.read().unwrap_or_else(|e| e.into_inner()));
        table.get(&(user.to_string(), slot)).cloned()
    }

    fn write(&self, user: &str, slot: Slot, bytes: Option<&[u8]>) -> Result<bool, KeyStoreError> {
        // Keys are armoured or PEM text, the choice `on`/`off`.
        let text = match bytes {
            Some(bytes) => Some(std::str::from_utf8(bytes).map_err(|_| KeyStoreError::NotText)?),
            None => None,
        };
        let existed = self
            .store(user, slot, text)
            .map_err(|e| KeyStoreError::Io {
                // The web side reports an Io error as "unavailable"; the path names the store.
                path: PathBuf::from("cluster.postgres"),
                source: std::io::Error::other(e.to_string()),
            })?;
        let mut guard = self.table.write().unwrap_or_else(|e| e.into_inner());
        let mut table = HashMap::clone(&guard);
        match bytes {
            Some(bytes) => table.insert((user.to_string(), slot), bytes.to_vec()),
            None => table.remove(&(user.to_string(), slot)),
        };
        *guard = Arc::new(table);
        Ok(existed)
    }

    fn location(&self) -> String {
        "PostgreSQL (cluster directory)".to_string()
    }
}

/// A node's directory from PostgreSQL (or from the cache while PostgreSQL is down), before
/// its thread starts.
pub struct ClusterDirectory {
    settings: PgSettings,
    base: DirectoryEntries,
    shared: SharedDirectory,
    keys: Arc<PgKeys>,
    cache: PathBuf,
    snapshot: Snapshot,
    /// The connection the snapshot came over, LISTENing already (`None`: from the cache).
    client: Option<postgres::Client>,
    round_trips: Arc<AtomicU64>,
}

impl ClusterDirectory {
    /// The node's directory when `[cluster.postgres]` is configured (`None` otherwise):
    /// loaded from PostgreSQL, or from the cache file when PostgreSQL cannot be reached.
    /// Refuses a schema other than this relay's, and an unreachable PostgreSQL without a
    /// cache.
    pub fn open(config: &Config) -> Result<Option<ClusterDirectory>> {
        if config.cluster.postgres.conninfo.is_none() {
            return Ok(None);
        }
        let settings = PgSettings::from_config(config)?;
        let base =
            crate::mailbox::file_entries(config).map_err(|e| ClusterDirectoryError::Cache {
                path: PathBuf::from("[local]"),
                message: e.to_string(),
            })?;
        let cache = config.spool.dir.join(CACHE_FILE);
        let round_trips = Arc::new(AtomicU64::new(0));
        let connected = off_runtime(|| {
            let mut client = settings.connect()?;
            let snapshot = listen_and_load(&mut client, &round_trips)?;
            Ok::<_, ClusterDirectoryError>((client, snapshot))
        });
        let (client, snapshot) = match connected {
            Ok((client, snapshot)) => {
                tracing::info!(
                    users = snapshot.users.len(),
                    aliases = snapshot.aliases.len(),
                    schema = snapshot.schema,
                    round_trips = round_trips.load(Ordering::Relaxed),
                    "cluster directory loaded from PostgreSQL"
                );
                (Some(client), snapshot)
            }
            Err(ClusterDirectoryError::Postgres(error)) if error.code().is_none() => {
                // Not an answer but no answer: the cache, if a previous run left one.
                let snapshot = read_cache(&cache).map_err(|e| match e {
                    CacheRead::Missing => ClusterDirectoryError::NoCache {
                        reason: error.to_string(),
                        path: cache.clone(),
                    },
                    CacheRead::Bad(message) => ClusterDirectoryError::Cache {
                        path: cache.clone(),
                        message,
                    },
                })?;
                check_version(snapshot.schema)?;
                tracing::warn!(
                    %error,
                    cache = %cache.display(),
                    users = snapshot.users.len(),
                    "PostgreSQL unreachable: serving the cached cluster directory until it is back"
                );
                (None, snapshot)
            }
            Err(error) => return Err(error),
        };
        let directory = build_tolerant(merge(&base, &snapshot));
        Ok(Some(ClusterDirectory {
            keys: Arc::new(PgKeys::new(settings.clone(), &snapshot)),
            settings,
            base,
            shared: SharedDirectory::new(Arc::new(directory)),
            cache,
            snapshot,
            client,
            round_trips,
        }))
    }

    /// The directory the node serves from (replaced on every change).
    pub fn directory(&self) -> SharedDirectory {
        self.shared.clone()
    }

    /// Users' keys in PostgreSQL, for the node's [`KeyStore`].
    pub fn key_backend(&self) -> Arc<dyn KeyBackend> {
        Arc::clone(&self.keys) as Arc<dyn KeyBackend>
    }

    /// Starts the directory thread: it writes the cache, follows the changes and reconnects.
    pub fn start(self, keys: Arc<KeyStore>) -> Result<Refresher, std::io::Error> {
        let stop = Arc::new(AtomicBool::new(false));
        let follower = Follower {
            settings: self.settings,
            base: self.base,
            shared: self.shared,
            pg_keys: self.keys,
            keys,
            cache: self.cache,
            current: self.snapshot,
            round_trips: self.round_trips,
            stop: Arc::clone(&stop),
        };
        let client = self.client;
        if client.is_some() {
            follower.save_cache();
        }
        let thread = std::thread::Builder::new()
            .name("cluster-directory".into())
            .spawn(move || follower.run(client))?;
        Ok(Refresher {
            stop,
            thread: Some(thread),
        })
    }
}

/// The running directory thread; dropping it asks the thread to stop (it does within
/// [`POLL`], or when its connection attempt times out).
pub struct Refresher {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Refresher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Not joined: a connection attempt may take its whole timeout, and the process is
        // ending; the thread holds nothing that needs closing.
        drop(self.thread.take());
    }
}

struct Follower {
    settings: PgSettings,
    base: DirectoryEntries,
    shared: SharedDirectory,
    pg_keys: Arc<PgKeys>,
    keys: Arc<KeyStore>,
    cache: PathBuf,
    current: Snapshot,
    round_trips: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Follower {
    fn run(mut self, mut client: Option<postgres::Client>) {
        let mut backoff = BACKOFF_MIN;
        while !self.stop.load(Ordering::Relaxed) {
            let connection = match client.take() {
                Some(client) => Ok(client),
                None => self.reconnect(),
            };
            match connection {
                Ok(client) => {
                    backoff = BACKOFF_MIN;
                    if let Err(error) = self.follow(client) {
                        tracing::warn!(%error, "cluster directory: PostgreSQL connection lost; serving the cached directory, reconnecting");
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?backoff, "cluster directory: cannot load from PostgreSQL; serving the cached directory");
                    self.sleep(backoff);
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    fn sleep(&self, total: Duration) {
        let deadline = std::time::Instant::now() + total;
        while !self.stop.load(Ordering::Relaxed) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return;
            }
            std::thread::sleep(left.min(POLL));
        }
    }

    /// Connects, LISTENs and reloads (changes made while disconnected are in it).
    fn reconnect(&mut self) -> Result<postgres::Client> {
        let mut client = self.settings.connect()?;
        let snapshot = listen_and_load(&mut client, &self.round_trips)?;
        tracing::info!("cluster directory: PostgreSQL reconnected");
        self.publish(snapshot);
        Ok(client)
    }

    /// Waits for notifications; reloads once per batch. Returns on a stop or an error.
    fn follow(&mut self, mut client: postgres::Client) -> Result<()> {
        while !self.stop.load(Ordering::Relaxed) {
            let first = client.notifications().timeout_iter(POLL).next()?;
            if first.is_none() {
                continue;
            }
            // The rest of the batch, without waiting: one reload covers them all.
            let mut more = 0usize;
            while client.notifications().iter().next()?.is_some() {
                more += 1;
            }
            let snapshot = load_snapshot(&mut client, &self.round_trips)?;
            tracing::debug!(notifications = more + 1, "cluster directory changed");
            self.publish(snapshot);
        }
        Ok(())
    }

    /// Puts a new snapshot in force: directory, keys, cache.
    fn publish(&mut self, snapshot: Snapshot) {
        if snapshot == self.current {
            return;
        }
        let directory = build_tolerant(merge(&self.base, &snapshot));
        self.shared.replace(directory);
        self.pg_keys.publish(&snapshot);
        let keyed = self.keys.reload(SystemTime::now());
        tracing::info!(
            users = snapshot.users.len(),
            aliases = snapshot.aliases.len(),
            keys = keyed,
            round_trips = self.round_trips.load(Ordering::Relaxed),
            "cluster directory reloaded from PostgreSQL"
        );
        self.current = snapshot;
        self.save_cache();
    }

    fn save_cache(&self) {
        if let Err(error) = write_cache(&self.cache, &self.current) {
            tracing::warn!(%error, path = %self.cache.display(), "cannot write the cluster directory cache");
        }
    }
}

enum CacheRead {
    Missing,
    Bad(String),
}

fn read_cache(path: &Path) -> Result<Snapshot, CacheRead> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(CacheRead::Missing),
        Err(e) => return Err(CacheRead::Bad(e.to_string())),
    };
    serde_json::from_str(&text).map_err(|e| CacheRead::Bad(e.to_string()))
}

/// Writes the cache so that a crash leaves the old one or the new one, whole; 0600 (it
/// holds password hashes and APOP secrets).
pub fn write_cache(path: &Path, snapshot: &Snapshot) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(&serde_json::to_vec(snapshot).map_err(std::io::Error::other)?)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// The directory of `config` as `relay user …` sees it: PostgreSQL's merged over `[local]`,
/// and its keys' backend.
pub fn load_once(config: &Config) -> Result<(Arc<Directory>, Arc<PgKeys>)> {
    let settings = PgSettings::from_config(config)?;
    let base = crate::mailbox::file_entries(config).map_err(|e| ClusterDirectoryError::Cache {
        path: PathBuf::from("[local]"),
        message: e.to_string(),
    })?;
    let snapshot = off_runtime(|| {
        let mut client = settings.connect()?;
        check_version(recorded_version(&mut client)?)?;
        load_snapshot(&mut client, &AtomicU64::new(0))
    })?;
    let directory = Arc::new(build_tolerant(merge(&base, &snapshot)));
    Ok((directory, Arc::new(PgKeys::new(settings, &snapshot))))
}

/// Applies the pending migrations in order, each in a transaction of its own; returns the
/// ones applied (none when the schema is current). Safe to run from several hosts at once.
pub fn migrate(section: &PostgresSection) -> Result<Vec<(i32, &'static str)>> {
    let settings = PgSettings::new(section, None)?;
    off_runtime(|| {
        let mut client = settings.connect()?;
        let mut applied = Vec::new();
        let found = {
            let mut tx = client.transaction()?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (\
                 version integer PRIMARY KEY, name text NOT NULL, \
                 applied_at timestamptz NOT NULL DEFAULT now())",
            )?;
            let found: i32 = tx
                .query_one(
                    "SELECT coalesce(max(version), 0) FROM schema_migrations",
                    &[],
                )?
                .try_get(0)?;
            tx.commit()?;
            found
        };
        if found > schema_version() {
            return Err(ClusterDirectoryError::SchemaNew {
                found,
                known: schema_version(),
            });
        }
        for migration in MIGRATIONS {
            let mut tx = client.transaction()?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
            let done = tx.query_opt(
                "SELECT 1 FROM schema_migrations WHERE version = $1",
                &[&migration.version],
            )?;
            if done.is_some() {
                continue;
            }
            tx.batch_execute(migration.sql)?;
            tx.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                &[&migration.version, &migration.name],
            )?;
            tx.commit()?;
            applied.push((migration.version, migration.name));
        }
        Ok(applied)
    })
}

/// Runs `f` on a connection to a database of the current schema.
fn with_client<T: Send>(
    section: &PostgresSection,
    f: impl FnOnce(&mut postgres::Client) -> Result<T> + Send,
) -> Result<T> {
    let settings = PgSettings::new(section, None)?;
    off_runtime(|| {
        let mut client = settings.connect()?;
        check_version(recorded_version(&mut client)?)?;
        f(&mut client)
    })
}

/// Adds a user (`password`: an argon2id PHC string).
pub fn add_user(section: &PostgresSection, name: &str, password: &str) -> Result<()> {
    let name = checked_name(name)?;
    crate::mailbox::password::validate(password).map_err(|source| DirectoryError::BadPassword {
        user: name.clone(),
        source,
    })?;
    with_client(section, |client| {
        match client.execute(
            "INSERT INTO users (name, password) VALUES ($1, $2)",
            &[&name, &password],
        ) {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION) => {
                Err(ClusterDirectoryError::UserExists(name.clone()))
            }
            Err(e) => Err(e.into()),
        }
    })
}

/// Replaces a user's password hash.
pub fn set_password(section: &PostgresSection, name: &str, password: &str) -> Result<()> {
    let name = checked_name(name)?;
    crate::mailbox::password::validate(password).map_err(|source| DirectoryError::BadPassword {
        user: name.clone(),
        source,
    })?;
    update_user(
        section,
        &name,
        "UPDATE users SET password = $2 WHERE name = $1",
        password,
    )
}

/// Moves a user's home to `node` (`None`: every node serves it as its own, which only a
/// single node may do). The user-move procedure calls this at its switch-over.
pub fn set_home(section: &PostgresSection, name: &str, node: Option<&str>) -> Result<()> {
    let name = checked_name(name)?;
    if let Some(node) = node {
        if !crate::config::cluster::valid_node_name(node) {
            return Err(ClusterDirectoryError::BadNode(node.to_string()));
        }
    }
    with_client(section, |client| {
        let updated = client.execute(
            "UPDATE users SET home = $2 WHERE name = $1",
            &[&name, &node],
        )?;
        if updated == 0 {
            return Err(ClusterDirectoryError::UnknownUser(name.clone()));
        }
        Ok(())
    })
}

/// Removes a user, their keys and the alias entries that name them (at a local domain of
/// `domains`, or bare), in one transaction.
pub fn delete_user(section: &PostgresSection, name: &str, domains: &[String]) -> Result<()> {
    let name = checked_name(name)?;
    let mut targets = vec![name.clone()];
    targets.extend(
        domains
            .iter()
            .map(|d| format!("{name}@{}", d.to_ascii_lowercase())),
    );
    with_client(section, |client| {
        let mut tx = client.transaction()?;
        let deleted = tx.execute("DELETE FROM users WHERE name = $1", &[&name])?;
        if deleted == 0 {
            return Err(ClusterDirectoryError::UnknownUser(name.clone()));
        }
        tx.execute("DELETE FROM user_keys WHERE name = $1", &[&name])?;
        tx.execute(
            "DELETE FROM aliases WHERE lower(target) = ANY($1)",
            &[&targets],
        )?;
        tx.commit()?;
        Ok(())
    })
}

fn update_user(section: &PostgresSection, name: &str, sql: &str, value: &str) -> Result<()> {
    with_client(section, |client| {
        if client.execute(sql, &[&name, &value])? == 0 {
            return Err(ClusterDirectoryError::UnknownUser(name.to_string()));
        }
        Ok(())
    })
}

fn checked_name(name: &str) -> Result<String> {
    let name = name.to_ascii_lowercase();
    if !valid_name(&name) {
        return Err(ClusterDirectoryError::BadName(name));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash() -> String {
        crate::mailbox::password::hash("pw").unwrap()
    }

    fn row(name: &str, password: &str) -> UserRow {
        UserRow {
            name: name.into(),
            password: password.into(),
            quota: Some(1000),
            apop_secret: None,
            home: Some("b".into()),
        }
    }

    fn base(password: &str) -> DirectoryEntries {
        DirectoryEntries {
            domains: vec!["example.test".into()],
            users: vec![User {
                name: "alice".into(),
                password: password.into(),
                quota: None,
                apop_secret: None,
                home: None,
            }],
            aliases: BTreeMap::from([("abuse".to_string(), vec!["alice".to_string()])]),
        }
    }

    #[test]
    fn postgres_entries_go_over_the_files() {
        let hash = hash();
        let snapshot = Snapshot {
            schema: 1,
            users: vec![row("alice", &hash), row("bob", &hash)],
            aliases: vec![AliasRow {
                alias: "abuse".into(),
                targets: vec!["bob".into()],
            }],
            keys: vec![],
        };
        let directory = merge(&base(&hash), &snapshot).build().unwrap();
        let alice = directory.user("alice").unwrap();
        assert_eq!(
            (alice.quota, alice.home.as_deref()),
            (Some(1000), Some("b"))
        );
        assert_eq!(
            directory.resolve("abuse@example.test"),
            crate::mailbox::Resolution::Local {
                mailboxes: vec!["bob".into()],
                forward: vec![]
            }
        );
    }

    #[test]
    fn a_bad_row_is_left_out_not_the_directory() {
        let hash = hash();
        let snapshot = Snapshot {
            schema: 1,
            users: vec![row("carol", "not a hash"), row("bob", &hash)],
            aliases: vec![
                AliasRow {
                    alias: "team".into(),
                    targets: vec!["nobody".into()],
                },
                AliasRow {
                    alias: "loop@example.test".into(),
                    targets: vec!["loop".into()],
                },
                AliasRow {
                    alias: "ok".into(),
                    targets: vec!["bob".into()],
                },
            ],
            keys: vec![],
        };
        let directory = build_tolerant(merge(&base(&hash), &snapshot));
        assert!(directory.user("carol").is_none());
        assert!(directory.user("bob").is_some() && directory.user("alice").is_some());
        assert_eq!(
            directory.resolve("team@example.test"),
            crate::mailbox::Resolution::Unknown
        );
        assert_eq!(
            directory.resolve("loop@example.test"),
            crate::mailbox::Resolution::Unknown
        );
        assert!(matches!(
            directory.resolve("ok@example.test"),
            crate::mailbox::Resolution::Local { .. }
        ));
    }

    #[test]
    fn only_this_relays_schema_is_accepted() {
        assert!(matches!(
            check_version(0),
            Err(ClusterDirectoryError::NoSchema)
        ));
        assert!(check_version(schema_version()).is_ok());
        let newer = check_version(schema_version() + 1).unwrap_err();
        assert!(matches!(newer, ClusterDirectoryError::SchemaNew { .. }));
        assert!(newer.to_string().contains("upgrade"));
        assert!(ClusterDirectoryError::NoSchema
            .to_string()
            .contains("relay cluster migrate"));
        // Versions are consecutive from 1, so "pending" is well defined.
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i32 + 1, "{}", m.name);
        }
    }

    #[test]
    fn the_cache_is_private_durable_and_reads_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CACHE_FILE);
        assert!(matches!(read_cache(&path), Err(CacheRead::Missing)));
        let snapshot = Snapshot {
            schema: 1,
            users: vec![row("alice", "$argon2id$x")],
            aliases: vec![],
            keys: vec![KeyRow {
                name: "alice".into(),
                kind: "encrypt".into(),
                data: "on\n".into(),
            }],
        };
        write_cache(&path, &snapshot).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(read_cache(&path).is_ok_and(|s| s == snapshot));
        std::fs::write(&path, b"{").unwrap();
        assert!(matches!(read_cache(&path), Err(CacheRead::Bad(_))));
    }

    #[test]
    fn settings_take_the_password_from_its_file_and_bound_the_connection() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        let section = PostgresSection {
            conninfo: Some("host=127.0.0.1 port=1 user=relay dbname=relay".into()),
            password_file: Some(file),
        };
        let settings = PgSettings::new(&section, Some("a")).unwrap();
        assert_eq!(settings.config.get_password(), Some(&b"s3cret"[..]));
        assert_eq!(settings.config.get_connect_timeout(), Some(&TIMEOUT));
        assert_eq!(settings.config.get_application_name(), Some("relay a"));
        let missing = PostgresSection {
            password_file: Some(dir.path().join("absent")),
            ..section
        };
        assert!(matches!(
            PgSettings::new(&missing, None),
            Err(ClusterDirectoryError::PasswordFile { .. })
        ));
    }
}
