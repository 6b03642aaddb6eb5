//! `relay init`: a starter installation in one directory, ready for `relay serve`.
//!
//! Writes `relay.toml` (commented, from `starter.toml`), `users` (one user whose password is
//! generated here from the OS's CSPRNG and stored only as its argon2id hash), a self-signed
//! certificate and its key under `tls/`, and the empty spool directory. `postmaster` and
//! `abuse` are aliases of that user. Files with secrets are 0600, the spool 0700.
//!
//! Never overwrites: every target is checked before anything is written, each file is
//! created exclusively (`O_EXCL`), and what was created is removed again when a later step
//! fails. The result is loaded back as `relay serve` loads it before success is reported.
//!
//! Exposure: operator input (the command line); no network.

use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rand_core::{OsRng, RngCore};

use crate::config::{valid_domain, Config};
use crate::mailbox::{directory, password, users_file};

/// The config file's name in the directory.
pub const CONFIG_FILE: &str = "relay.toml";
/// The first user's name unless `--user` says otherwise.
pub const DEFAULT_USER: &str = "admin";

const STARTER: &str = include_str!("starter.toml");
const USERS_FILE: &str = "users";
const TLS_DIR: &str = "tls";
const CERT_FILE: &str = "tls/cert.pem";
const KEY_FILE: &str = "tls/key.pem";
const SPOOL_DIR: &str = "spool";

/// What `relay init` was asked for.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where everything goes (created if missing).
    pub dir: PathBuf,
    /// The mail domain (besides `localhost`, which is always local).
    pub domain: Option<String>,
    /// `server.hostname`; without it the config leaves the system's host name.
    pub hostname: Option<String>,
    /// The first user (receives postmaster and abuse).
    pub user: String,
}

/// A generated password; shown once, never logged (`Debug` hides it).
pub struct Password(String);

impl Password {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// What was written.
#[derive(Debug)]
pub struct Initialized {
    /// The directory, absolute.
    pub dir: PathBuf,
    pub config: PathBuf,
    pub users: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub spool: PathBuf,
    pub user: String,
    pub password: Password,
    /// The names the certificate is for.
    pub cert_names: Vec<String>,
    /// The local domains.
    pub domains: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("`{0}` is not a valid domain")]
    BadDomain(String),
    #[error("`{0}` is not a valid host name")]
    BadHostname(String),
    #[error("`{0}` is not a valid user name (1-64 of a-z 0-9 . - _)")]
    BadUser(String),
    #[error("refusing to overwrite: {} already exist(s); nothing was written", list(.0))]
    Exists(Vec<PathBuf>),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot generate a password: {0}")]
    Random(String),
    #[error("cannot hash the password: {0}")]
    Hash(#[from] password::PasswordError),
    #[error("cannot make the certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("{0} is not valid UTF-8, which a TOML config cannot name")]
    NotUtf8(PathBuf),
    #[error("the written configuration does not load (a bug in `relay init`): {0}")]
    SelfCheck(String),
}

fn list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InitError + '_ {
    move |source| InitError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes the starter installation into `options.dir`.
pub fn init(options: &Options) -> Result<Initialized, InitError> {
    let domain = match &options.domain {
        Some(d) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            valid_domain(&d)
                .then_some(Some(d))
                .ok_or_else(|| InitError::BadDomain(options.domain.clone().unwrap_or_default()))?
        }
        None => None,
    };
    if let Some(host) = options.hostname.as_deref().filter(|h| !valid_domain(h)) {
        return Err(InitError::BadHostname(host.to_string()));
    }
    let user = options.user.to_ascii_lowercase();
    if !directory::valid_name(&user) {
        return Err(InitError::BadUser(options.user.clone()));
    }

    let dir_existed = options.dir.exists();
    std::fs::create_dir_all(&options.dir).map_err(io(&options.dir))?;
    let dir = std::fs::canonicalize(&options.dir).map_err(io(&options.dir))?;
    let at = |name: &str| dir.join(name);
    let targets = [CONFIG_FILE, USERS_FILE, CERT_FILE, KEY_FILE, SPOOL_DIR].map(at);
    let existing: Vec<PathBuf> = targets
        .iter()
        .filter(|p| std::fs::symlink_metadata(p).is_ok())
        .cloned()
        .collect();
    if !existing.is_empty() {
        return Err(InitError::Exists(existing));
    }

    let mut domains: Vec<String> = domain.iter().cloned().collect();
    if !domains.iter().any(|d| d == "localhost") {
        domains.push("localhost".into());
    }
    let mut cert_names = vec!["localhost".to_string()];
    for name in options.hostname.iter().chain(domain.iter()) {
        let name = name.to_ascii_lowercase();
        if !cert_names.contains(&name) {
            cert_names.push(name);
        }
    }

    let password = generate_password()?;
    let phc = password::hash(password.expose())?;
    let (cert_pem, key_pem) = self_signed(&cert_names)?;
    let spool = at(SPOOL_DIR);
    let config_path = at(CONFIG_FILE);
    let config_text = render(&RenderInput {
        config: &config_path,
        spool: &spool,
        users: &at(USERS_FILE),
        domains: &domains,
        hostname: options.hostname.as_deref(),
        user: &user,
        cert_names: &cert_names,
    })?;

    let mut created = Created::default();
    let result = (|| {
        created.file(&config_path, config_text.as_bytes(), 0o644)?;
        let users = format!(
            "# Mailbox users: `name $argon2id$…hash [quota=SIZE] [apop=SECRET]`, one per line.\n\
             # Add one with `relay user add NAME --file {}`.\n{}\n",
            at(USERS_FILE).display(),
            users_file::line(&user, &phc)
        );
        created.file(&at(USERS_FILE), users.as_bytes(), 0o600)?;
        created.dir(&at(TLS_DIR), 0o755)?;
        created.file(&at(CERT_FILE), cert_pem.as_bytes(), 0o644)?;
        created.file(&at(KEY_FILE), key_pem.as_bytes(), 0o600)?;
        created.dir(&spool, 0o700)?;
        self_check(&config_path)
    })();
    if let Err(error) = result {
        created.undo();
        if !dir_existed {
            let _ = std::fs::remove_dir(&dir);
        }
        return Err(error);
    }
    Ok(Initialized {
        config: config_path,
        users: at(USERS_FILE),
        cert: at(CERT_FILE),
        key: at(KEY_FILE),
        spool,
        dir,
        user,
        password,
        cert_names,
        domains,
    })
}

struct RenderInput<'a> {
    config: &'a Path,
    spool: &'a Path,
    users: &'a Path,
    domains: &'a [String],
    hostname: Option<&'a str>,
    user: &'a str,
    cert_names: &'a [String],
}

/// The starter config with this installation's values (TOML-quoted where they are values).
fn render(input: &RenderInput) -> Result<String, InitError> {
    let quoted = |path: &Path| {
        path.to_str()
            .map(|s| toml::Value::String(s.to_string()).to_string())
            .ok_or_else(|| InitError::NotUtf8(path.to_path_buf()))
    };
    let hostname_line = match input.hostname {
        Some(host) => format!("hostname = \"{host}\""),
        None => "# hostname = \"mail.example.com\"".to_string(),
    };
    let domains = format!(
        "[{}]",
        input
            .domains
            .iter()
            .map(|d| format!("\"{d}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(STARTER
        .replace("{{DOMAIN}}", &input.domains[0])
        .replace("{{CONFIG}}", &input.config.display().to_string())
        .replace("{{HOSTNAME_LINE}}", &hostname_line)
        .replace("{{SPOOL_DIR}}", &quoted(input.spool)?)
        .replace("{{DOMAINS}}", &domains)
        .replace("{{USERS}}", &input.users.display().to_string())
        .replace("{{USER}}", input.user)
        .replace("{{CERT_NAMES}}", &input.cert_names.join(", ")))
}

/// The written config must load as `relay serve` loads it: the file, its users, its aliases.
fn self_check(config_path: &Path) -> Result<(), InitError> {
    let config = Config::load(config_path).map_err(|e| InitError::SelfCheck(e.to_string()))?;
    let directory =
        crate::mailbox::load_directory(&config).map_err(|e| InitError::SelfCheck(e.to_string()))?;
    if let Some(warning) = directory.postmaster_warning() {
        return Err(InitError::SelfCheck(warning));
    }
    crate::net::tls::ServerTls::load(
        config.tls.cert.as_deref().unwrap_or(Path::new("")),
        config.tls.key.as_deref().unwrap_or(Path::new("")),
    )
    .map_err(|e| InitError::SelfCheck(e.to_string()))?;
    Ok(())
}

/// Characters of a generated password: no 0/o, 1/l/i, so it can be read aloud and typed.
const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
/// Four groups of six: 24 characters of 31 kinds, about 119 bits.
const GROUPS: usize = 4;
const GROUP_LEN: usize = 6;

/// A password from the OS's CSPRNG (getrandom), uniform over [`ALPHABET`] (rejection
/// sampling, no modulo bias), grouped with dashes.
fn generate_password() -> Result<Password, InitError> {
    let mut chars = Vec::with_capacity(GROUPS * GROUP_LEN);
    // The largest multiple of the alphabet's size that fits a byte: bytes at or above it
    // are drawn again.
    let limit = (256 / ALPHABET.len() * ALPHABET.len()) as u8;
    let mut buffer = [0u8; 64];
    while chars.len() < GROUPS * GROUP_LEN {
        OsRng
            .try_fill_bytes(&mut buffer)
            .map_err(|e| InitError::Random(e.to_string()))?;
        for &b in buffer.iter().filter(|&&b| b < limit) {
            if chars.len() == GROUPS * GROUP_LEN {
                break;
            }
            chars.push(ALPHABET[b as usize % ALPHABET.len()]);
        }
    }
    let text = chars
        .chunks(GROUP_LEN)
        .map(|group| String::from_utf8_lossy(group).into_owned())
        .collect::<Vec<_>>()
        .join("-");
    Ok(Password(text))
}

/// A self-signed certificate (ECDSA P-256) for `names`, 127.0.0.1 and ::1: PEM chain, PEM key.
fn self_signed(names: &[String]) -> Result<(String, String), InitError> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(names.to_vec())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("{} (relay init, self-signed)", names[0]),
    );
    for ip in [
        std::net::IpAddr::from([127, 0, 0, 1]),
        std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
    ] {
        params.subject_alt_names.push(rcgen::SanType::IpAddress(ip));
    }
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// What this run created, removed again in reverse order if a later step fails.
#[derive(Default)]
struct Created {
    paths: Vec<(PathBuf, bool)>,
}

impl Created {
    /// Creates `path` exclusively with `mode` (set again after creation: the umask only
    /// narrows it, and 0644 must stay readable), writes and syncs it.
    fn file(&mut self, path: &Path, content: &[u8], mode: u32) -> Result<(), InitError> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .map_err(io(path))?;
        self.paths.push((path.to_path_buf(), false));
        file.write_all(content).map_err(io(path))?;
        file.sync_all().map_err(io(path))?;
        set_mode(path, mode)
    }

    /// Creates the directory `path` with `mode`; one that exists already (only `tls/` may)
    /// is left as it is.
    fn dir(&mut self, path: &Path, mode: u32) -> Result<(), InitError> {
        match DirBuilder::new().mode(mode).create(path) {
            Ok(()) => {
                self.paths.push((path.to_path_buf(), true));
                set_mode(path, mode)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
            Err(e) => Err(io(path)(e)),
        }
    }

    fn undo(self) {
        for (path, is_dir) in self.paths.into_iter().rev() {
            let _ = if is_dir {
                std::fs::remove_dir(&path)
            } else {
                std::fs::remove_file(&path)
            };
        }
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<(), InitError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn options(dir: &Path) -> Options {
        Options {
            dir: dir.to_path_buf(),
            domain: Some("Example.TEST".into()),
            hostname: Some("mail.example.test".into()),
            user: "Alice".into(),
        }
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn writes_a_config_that_loads_with_its_user_aliases_and_certificate() {
        let tmp = tempfile::tempdir().unwrap();
        let done = init(&options(&tmp.path().join("new"))).unwrap();
        assert_eq!(done.user, "alice");
        assert_eq!(done.domains, ["example.test", "localhost"]);
        let config = Config::load(&done.config).unwrap();
        assert_eq!(config.local.domains, ["example.test", "localhost"]);
        assert_eq!(config.server.hostname.as_deref(), Some("mail.example.test"));
        assert_eq!(config.spool.dir, done.spool);
        assert!(config.spool.dir.is_absolute());
        let directory = crate::mailbox::load_directory(&config).unwrap();
        // The printed password is the one whose hash is stored, and it is not stored itself.
        assert_eq!(
            directory.verify("alice", done.password.expose()),
            Some("alice".into())
        );
        let users = std::fs::read_to_string(&done.users).unwrap();
        assert!(!users.contains(done.password.expose()));
        for address in ["postmaster@example.test", "ABUSE@localhost", "postmaster"] {
            assert_eq!(
                directory.resolve(address),
                directory::Resolution::Local {
                    mailboxes: vec!["alice".into()],
                    forward: vec![]
                },
                "{address}"
            );
        }
        assert!(directory.postmaster_warning().is_none());
        assert_eq!(mode(&done.users), 0o600);
        assert_eq!(mode(&done.key), 0o600);
        assert_eq!(mode(&done.spool), 0o700);
        assert!(std::fs::read_dir(&done.spool).unwrap().next().is_none());
        assert!(config.permission_warnings().is_empty());
        assert_eq!(
            done.cert_names,
            ["localhost", "mail.example.test", "example.test"]
        );
        assert!(!format!("{done:?}").contains(done.password.expose()));
    }

    #[test]
    fn refuses_to_overwrite_and_writes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("tls")).unwrap();
        std::fs::write(tmp.path().join("tls/key.pem"), "mine").unwrap();
        let err = init(&options(tmp.path())).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, InitError::Exists(ref p) if p.len() == 1),
            "{text}"
        );
        assert!(text.contains("tls/key.pem"), "{text}");
        let mut left: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        left.sort();
        assert_eq!(left, ["tls"]);
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("tls/key.pem")).unwrap(),
            "mine"
        );
    }

    #[test]
    fn bad_names_are_refused_before_anything_is_written() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("x");
        for (domain, hostname, user) in [
            ("bad domain", "h.test", "alice"),
            ("d.test", "bad host", "alice"),
            ("d.test", "h.test", "a b"),
        ] {
            let result = init(&Options {
                dir: dir.clone(),
                domain: Some(domain.into()),
                hostname: Some(hostname.into()),
                user: user.into(),
            });
            assert!(result.is_err(), "{domain} {hostname} {user}");
        }
        assert!(!dir.exists());
    }

    #[test]
    fn passwords_are_uniform_over_the_alphabet_and_differ() {
        let a = generate_password().unwrap();
        let b = generate_password().unwrap();
        assert_ne!(a.expose(), b.expose());
        let text = a.expose();
        assert_eq!(text.len(), GROUPS * GROUP_LEN + GROUPS - 1);
        assert!(text
            .split('-')
            .all(|g| g.len() == GROUP_LEN && g.bytes().all(|c| ALPHABET.contains(&c))));
    }
}
