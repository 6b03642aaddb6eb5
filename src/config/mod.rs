//! The typed configuration: one TOML file, one section per owner (`[server] [smtp] [spool]
//! [relay] [local] [pop3] [imap] [policy] [delivery] [admin] [tls] [dkim] [verify] [dmarc] [web] [encryption] [smime] [openpgp] [cluster]`), each in its own file here.
//!
//! Role: turn operator text into values the rest of the relay can trust. Every key has a
//! default (see `defaults.rs` and each section, where each keeps its RFC or reason); unknown
//! keys and bad values are errors naming the key and line, never silent defaults. Each
//! section checks its own values and converts itself into the settings its consumer takes
//! (`SpoolSection::spool_config`, `DeliverySection::schedule`, …); the relations between
//! sections are checked here, once, at load (`Config::validate`).
//!
//! Exposure: a local file written by the operator; never network input.

pub mod admin;
pub mod cluster;
mod cluster_postgres;
mod cluster_redis;
mod defaults;
pub mod delivery;
pub mod dkim;
pub mod dmarc;
pub mod encryption;
pub mod imap;
pub mod local;
pub mod openpgp;
pub mod policy;
pub mod pop3;
pub mod relay;
pub mod routes;
pub mod server;
pub mod smime;
pub mod smtp;
pub mod spool;
pub mod tls;
pub mod units;
pub mod verify;
pub mod web;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::runtime::IoEngine;
pub use admin::{admin_listen_allowed, AdminSection};
pub use delivery::DeliverySection;
pub use dkim::DkimSection;
pub use dmarc::DmarcSection;
pub use encryption::EncryptionSection;
pub use imap::ImapSection;
pub use local::{LocalSection, UserEntry};
pub use policy::PolicySection;
pub use pop3::Pop3Section;
pub use relay::RelaySection;
pub use routes::{RouteEntry, RoutesSection};
pub use server::{ServerSection, MAX_SHARDS};
pub use smtp::{SmtpSection, COMMAND_LINE_CEILING, MESSAGE_SIZE_CEILING};
pub use spool::SpoolSection;
pub use tls::TlsSection;
pub use units::{ByteSize, Interval};
pub use verify::VerifySection;
pub use web::WebSection;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("{origin}{}: `{key}`: {message}", line.map(|n| format!(", line {n}")).unwrap_or_default())]
    Invalid {
        origin: String,
        key: &'static str,
        /// Where the key is set; `None` when the (default) value is not in the file.
        line: Option<usize>,
        message: String,
    },
}

/// What `relay check` shows instead of a secret.
pub const REDACTED: &str = "<redacted>";

/// A section's value out of range: the key at fault (`section.key`) and why. The loader
/// turns it into [`ConfigError::Invalid`], adding the file and the line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{key}`: {message}")]
pub struct SectionError {
    pub key: &'static str,
    /// The other key of a relation between two keys (`key` must be below `related`, …). When
    /// the file sets only `related`, the error is reported against it and its line: the
    /// operator never wrote `key`, whose default broke the relation.
    pub related: Option<&'static str>,
    pub message: String,
}

fn invalid(key: &'static str, message: impl Into<String>) -> SectionError {
    SectionError {
        key,
        related: None,
        message: message.into(),
    }
}

/// A relation between `key` and `related` broken; `message` names both.
fn relation(key: &'static str, related: &'static str, message: impl Into<String>) -> SectionError {
    SectionError {
        key,
        related: Some(related),
        message: message.into(),
    }
}

impl SectionError {
    /// The loader's error: `text` (the file) gives the line of the key that was written.
    fn at(self, origin: &str, text: Option<&str>) -> ConfigError {
        let SectionError {
            key,
            related,
            message,
        } = self;
        let written = |key: &str| text.and_then(|text| locate_key(text, key));
        let (key, line) = match (written(key), related) {
            (Some(line), _) => (key, Some(line)),
            (None, Some(related)) => match written(related) {
                Some(line) => (related, Some(line)),
                None => (key, None),
            },
            (None, None) => (key, None),
        };
        ConfigError::Invalid {
            origin: origin.to_string(),
            key,
            line,
            message,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerSection,
    pub smtp: SmtpSection,
    pub spool: SpoolSection,
    pub relay: RelaySection,
    pub local: LocalSection,
    pub pop3: Pop3Section,
    pub imap: ImapSection,
    pub policy: PolicySection,
    /// Outbound delivery: retries, lifetime, notices, per-destination limits.
    pub delivery: DeliverySection,
    pub admin: AdminSection,
    pub tls: TlsSection,
    /// DKIM signing keys for our own domains.
    pub dkim: DkimSection,
    /// SPF, DKIM, DMARC and ARC checks of arriving mail.
    pub verify: VerifySection,
    /// DMARC aggregate reports.
    pub dmarc: DmarcSection,
    /// Web mail.
    pub web: WebSection,
    /// Users' public keys and the encryption of their stored mail.
    pub encryption: EncryptionSection,
    /// S/MIME signature checks of arriving mail.
    pub smime: smime::SmimeSection,
    /// OpenPGP signature checks of arriving mail, and WKD lookups.
    pub openpgp: openpgp::OpenpgpSection,
    /// Several relays as one service: shared limits, directory, home nodes (off by default).
    pub cluster: cluster::ClusterSection,
    /// The file this was loaded from (`Config::load`), read again on SIGHUP for `[dkim]`.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

impl Config {
    /// Read, parse and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Config::parse(&text, &path.display().to_string())?;
        config.source = Some(path.to_path_buf());
        // Files named relative to the config live next to it.
        if let Some(dir) = path.parent() {
            for file in [
                &mut config.local.users_file,
                &mut config.tls.cert,
                &mut config.tls.key,
                &mut config.tls.ca_file,
                &mut config.admin.token_file,
                &mut config.encryption.keys_dir,
                &mut config.smime.ca_file,
                &mut config.openpgp.wkd_ca_file,
                &mut config.cluster.cert,
                &mut config.cluster.key,
                &mut config.cluster.ca,
                &mut config.cluster.redis.password_file,
                &mut config.cluster.postgres.password_file,
            ] {
                if let Some(relative) = file.as_ref().filter(|f| f.is_relative()) {
                    *file = Some(dir.join(relative));
                }
            }
            for entry in &mut config.dkim.sign {
                if entry.key_file.is_relative() {
                    entry.key_file = dir.join(&entry.key_file);
                }
            }
        }
        Ok(config)
    }

    /// Parse and validate config text; `origin` names it in errors (a path, "embedded").
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        config.normalize();
        config
            .check()
            .map_err(|error| error.at(origin, Some(text)))?;
        Ok(config)
    }

    /// The effective config as TOML, every key shown (for `relay check`), secrets redacted:
    /// password hashes (an offline guessing target) and APOP secrets (plaintext-equivalent)
    /// are replaced by [`REDACTED`].
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        for user in &mut shown.local.users {
            user.password = REDACTED.to_string();
            if let Some(secret) = &mut user.apop_secret {
                *secret = REDACTED.to_string();
            }
        }
        toml::to_string(&shown).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }

    /// Files holding secrets that group or others may read: the users file (password
    /// hashes, APOP secrets) and the TLS private key. One line per file, for the operator
    /// (`relay serve` logs them, `relay check` prints them); the relay still starts.
    pub fn permission_warnings(&self) -> Vec<String> {
        use std::os::unix::fs::PermissionsExt;
        let mut warnings = Vec::new();
        for (key, path) in [
            ("local.users_file", &self.local.users_file),
            ("tls.key", &self.tls.key),
            ("cluster.key", &self.cluster.key),
            (
                "cluster.redis.password_file",
                &self.cluster.redis.password_file,
            ),
            (
                "cluster.postgres.password_file",
                &self.cluster.postgres.password_file,
            ),
        ] {
            let Some(path) = path else { continue };
            // A file that cannot be read is reported where it is loaded.
            let Ok(metadata) = std::fs::metadata(path) else {
                continue;
            };
            let mode = metadata.permissions().mode();
            if mode & 0o044 != 0 {
                warnings.push(format!(
                    "{key} {} is readable by group or others (mode {:o}): it holds secrets; \
                     chmod 600 it",
                    path.display(),
                    mode & 0o777
                ));
            }
        }
        warnings
    }

    fn normalize(&mut self) {
        self.local.normalize();
    }

    /// Our name: the configured one, else the system's.
    pub fn hostname(&self) -> String {
        self.server.hostname()
    }

    /// Shards to run: the configured count, else one per available core.
    pub fn cores(&self) -> usize {
        self.server.cores()
    }

    /// The SMTP session settings: `[smtp]`'s own, with the local domains, the relay
    /// networks, the content policy, STARTTLS when there is a certificate, and `mailboxes`.
    /// The gates (ingest backpressure, message rate) are the server's to add.
    pub fn session_config(
        &self,
        hostname: &str,
        mailboxes: Option<crate::smtp::Mailboxes>,
    ) -> crate::smtp::SessionConfig {
        crate::smtp::SessionConfig {
            local_domains: self.local.domains.clone(),
            relay_networks: self.relay.allowed_networks.clone(),
            mailboxes,
            policy: self.policy.mime_policy(),
            starttls: self.tls.server_enabled(),
            ..self.smtp.session_config(hostname)
        }
    }

    /// Checks each section, then the relations between sections.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        self.check().map_err(|error| error.at(origin, None))
    }

    fn check(&self) -> Result<(), SectionError> {
        self.smtp.check()?;
        self.spool.check()?;
        self.server.check()?;
        self.delivery.check()?;
        self.dkim.check()?;
        self.verify.check()?;
        self.dmarc.check()?;
        self.relay.check()?;
        self.policy.check()?;
        self.pop3.check()?;
        self.imap.check()?;
        self.tls.check()?;
        self.web.check()?;
        self.encryption.check()?;
        self.smime.check()?;
        self.openpgp.check()?;
        self.cluster.check()?;
        // Implicit TLS needs the certificate of `[tls]`.
        if !self.tls.server_enabled() {
            for (key, listen) in [
                ("smtp.tls_listen", &self.smtp.tls_listen),
                ("pop3.tls_listen", &self.pop3.tls_listen),
                ("imap.tls_listen", &self.imap.tls_listen),
                ("web.tls_listen", &self.web.tls_listen),
            ] {
                if !listen.is_empty() {
                    return Err(invalid(
                        key,
                        "implicit-TLS listeners need a certificate: set tls.cert and tls.key",
                    ));
                }
            }
        }
        self.admin.check()?;
        self.local.check()?;
        Ok(())
    }
}

/// The 1-based line that sets `section.key` in TOML text written in the usual
/// `[section]` / `key = value` form (what a validation error should point at).
fn locate_key(text: &str, dotted: &str) -> Option<usize> {
    let (section, key) = dotted.split_once('.')?;
    let mut current = "";
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(header) = line.strip_prefix('[') {
            current = header
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or("")
                .trim();
            continue;
        }
        let assigned = line
            .split_once('=')
            .map(|(name, _)| name.trim().trim_matches('"'));
        if current == section && assigned == Some(key) {
            return Some(index + 1);
        }
        if current.is_empty() && assigned == Some(dotted) {
            return Some(index + 1);
        }
    }
    None
}

/// RFC 1035 host name syntax (LDH labels), which is also what a greeting may carry safely.
pub fn valid_domain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "test.toml")
    }

    #[test]
    fn empty_file_is_the_embedded_default() {
        let config = parse("").expect("empty config is valid");
        assert_eq!(config, Config::default());
        assert_eq!(config.smtp.listen, defaults::smtp_listen());
        assert_eq!(config.spool.dir, PathBuf::from("spool"));
        assert_eq!(config.local.domains, vec!["localhost".to_string()]);
        assert!(config.spool.fsync);
    }

    #[test]
    fn values_carry_units() {
        let config = parse(
            "[smtp]\nmessage_size_max = \"10MiB\"\ncommand_timeout = \"30s\"\n\
             [spool]\ncommit_window = \"2ms\"\nsegment_size = \"128MiB\"\n",
        )
        .expect("valid");
        assert_eq!(config.smtp.message_size_max, ByteSize::mib(10));
        assert_eq!(config.smtp.command_timeout, Interval::secs(30));
        assert_eq!(
            config.spool.commit_window,
            Interval(std::time::Duration::from_millis(2))
        );
        assert_eq!(config.spool.segment_size, ByteSize::mib(128));
    }

    #[test]
    fn proxy_protocol_is_off_unless_enabled_per_listener() {
        let config = parse("").expect("valid");
        assert!(!config.smtp.proxy_protocol && !config.pop3.proxy_protocol);
        let config = parse("[smtp]\nproxy_protocol = true\n").expect("valid");
        assert!(config.smtp.proxy_protocol && !config.pop3.proxy_protocol);
        let config = parse("[pop3]\nproxy_protocol = true\n").expect("valid");
        assert!(!config.smtp.proxy_protocol && config.pop3.proxy_protocol);
        let err = parse("[smtp]\nproxy_protocol = \"yes\"\n").expect_err("not a bool");
        assert!(err.to_string().contains("proxy_protocol"), "{err}");
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let err = parse("[smtp]\nlisten = [\"127.0.0.1:25\"]\nrecipient_max = 5\n")
            .expect_err("unknown key");
        let text = err.to_string();
        assert!(text.contains("recipient_max"), "{text}");
        assert!(text.contains("line 3"), "{text}");
    }

    #[test]
    fn unknown_section_is_an_error() {
        let err = parse("[smpt]\nlisten = []\n").expect_err("unknown section");
        assert!(err.to_string().contains("smpt"), "{err}");
    }

    #[test]
    fn bad_unit_names_line() {
        let err = parse("[spool]\n\nsegment_size = \"12 parsecs\"\n").expect_err("bad unit");
        let text = err.to_string();
        assert!(
            text.contains("line 3") && text.contains("parsecs"),
            "{text}"
        );
    }

    #[test]
    fn bad_types_are_errors() {
        for text in [
            "[smtp]\nrecipients_max = \"many\"\n",
            "[server]\nio = \"kqueue\"\n",
            "[relay]\nallowed_networks = [\"10.0.0.0/33\"]\n",
            "[smtp]\nlisten = [\"localhost\"]\n",
            "[smtp]\ncommand_timeout = 5\n",
        ] {
            assert!(
                matches!(parse(text), Err(ConfigError::Parse { .. })),
                "{text}"
            );
        }
    }

    #[test]
    fn limit_relations_are_checked() {
        let cases = [
            ("[smtp]\ncommand_line_max = 100\n", "smtp.command_line_max"),
            ("[smtp]\ntext_line_max = 80\n", "smtp.text_line_max"),
            ("[smtp]\nrecipients_max = 0\n", "smtp.recipients_max"),
            ("[smtp]\nhopcount_limit = 0\n", "smtp.hopcount_limit"),
            (
                "[smtp]\nmessage_size_max = \"8GiB\"\n",
                "smtp.message_size_max",
            ),
            ("[smtp]\nlisten = []\n", "smtp.listen"),
            ("[spool]\nsegment_size = \"4KiB\"\n", "spool.segment_size"),
            ("[spool]\ncommit_window = \"5s\"\n", "spool.commit_window"),
            ("[server]\ncores = 0\n", "server.cores"),
            ("[server]\ncores = 300\n", "server.cores"),
            ("[server]\nhostname = \"bad host\"\n", "server.hostname"),
            ("[local]\ndomains = [\"ex ample.test\"]\n", "local.domains"),
            ("[smtp]\ncommand_timeout = \"0s\"\n", "smtp.command_timeout"),
            ("[smtp]\nerror_delay_after = 20\n", "smtp.error_delay_after"),
            ("[smtp]\nerror_delay = \"1m\"\n", "smtp.error_delay"),
            (
                "[smtp]\nmessages_per_ip_max = 5\nmessage_rate_window = \"0s\"\n",
                "smtp.message_rate_window",
            ),
            (
                "[pop3]\ncommand_timeout = \"11m\"\n",
                "pop3.command_timeout",
            ),
            ("[admin]\nlisten = \"0.0.0.0:9025\"\n", "admin.listen"),
        ];
        for (text, key) in cases {
            match parse(text) {
                Err(ConfigError::Invalid { key: got, .. }) => assert_eq!(got, key, "{text}"),
                other => panic!("{text}: expected Invalid({key}), got {other:?}"),
            }
        }
    }

    #[test]
    fn range_errors_name_the_line() {
        let err = parse(
            "[server]\ncores = 2\n\n[smtp]\nlisten = [\"127.0.0.1:25\"]\nrecipients_max = 0\n",
        )
        .expect_err("invalid");
        match &err {
            ConfigError::Invalid { key, line, .. } => {
                assert_eq!((*key, *line), ("smtp.recipients_max", Some(6)));
            }
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains("line 6"), "{err}");
    }

    #[test]
    fn relation_errors_name_both_keys_and_the_line_written() {
        // Only errors_max is in the file: the error points at it, not at the default of
        // error_delay_after the operator never wrote.
        let err = parse("[server]\ncores = 1\n[smtp]\nerrors_max = 5\n").expect_err("invalid");
        match &err {
            ConfigError::Invalid { key, line, .. } => {
                assert_eq!((*key, *line), ("smtp.errors_max", Some(4)), "{err}");
            }
            other => panic!("{other:?}"),
        }
        let text = err.to_string();
        assert!(
            text.contains("smtp.error_delay_after") && text.contains("smtp.errors_max"),
            "{text}"
        );
        assert!(text.contains("line 4"), "{text}");
        assert!(!text.contains("  "), "a run of spaces: {text:?}");
        // Both written: the first key of the relation, on its own line.
        let err = parse("[smtp]\nerror_delay_after = 30\nerrors_max = 30\n").expect_err("invalid");
        assert!(
            matches!(
                err,
                ConfigError::Invalid {
                    key: "smtp.error_delay_after",
                    line: Some(2),
                    ..
                }
            ),
            "{err}"
        );
        // The same for the relations between delivery limits.
        let err = parse("[delivery]\nmax_age = \"3h\"\n").expect_err("invalid");
        let text = err.to_string();
        assert!(
            matches!(
                err,
                ConfigError::Invalid {
                    key: "delivery.max_age",
                    line: Some(2),
                    ..
                }
            ) && text.contains("delivery.delay_warning"),
            "{text}"
        );
        let err = parse("[delivery]\ndestination_connections_max = 1\n").expect_err("invalid");
        assert!(
            matches!(
                err,
                ConfigError::Invalid {
                    key: "delivery.destination_connections_max",
                    line: Some(2),
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn an_alias_without_targets_is_refused() {
        let err = parse(
            "[local.aliases]\n\"team@localhost\" = [\"postmaster\"]\n\"void@localhost\" = []\n",
        )
        .expect_err("an alias with no targets");
        let text = err.to_string();
        assert!(
            matches!(
                err,
                ConfigError::Invalid {
                    key: "local.aliases",
                    ..
                }
            ),
            "{text}"
        );
        assert!(
            text.contains("void@localhost") && text.contains("no targets"),
            "{text}"
        );
    }

    #[test]
    fn secrets_readable_by_others_are_warned_about() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let users = dir.path().join("users");
        let key = dir.path().join("key.pem");
        for path in [&users, &key] {
            std::fs::write(path, "x").expect("write");
        }
        let mut config = Config::default();
        config.local.users_file = Some(users.clone());
        config.tls.key = Some(key.clone());
        for (users_mode, key_mode, warned) in [
            (0o600, 0o600, 0),
            (0o400, 0o640, 1),
            (0o604, 0o600, 1),
            (0o644, 0o644, 2),
        ] {
            let chmod = |path: &Path, mode| {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                    .expect("chmod")
            };
            chmod(&users, users_mode);
            chmod(&key, key_mode);
            let warnings = config.permission_warnings();
            assert_eq!(
                warnings.len(),
                warned,
                "{users_mode:o} {key_mode:o}: {warnings:?}"
            );
        }
        assert!(config.permission_warnings()[0].contains("local.users_file"));
    }

    #[test]
    fn check_output_redacts_secrets() {
        let mut config = Config::default();
        config.local.users.push(UserEntry {
            name: "alice".into(),
            password: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$ZGlnZXN0ZGlnZXN0".into(),
            quota: None,
            apop_secret: Some("tanstaaf".into()),
            home: None,
        });
        let shown = config.to_toml();
        assert!(
            !shown.contains("argon2id") && !shown.contains("tanstaaf"),
            "{shown}"
        );
        assert!(
            shown.contains("alice") && shown.contains(REDACTED),
            "{shown}"
        );
    }

    #[test]
    fn domains_are_normalized() {
        let config = parse("[local]\ndomains = [\"Example.TEST.\"]\n").expect("valid");
        assert_eq!(config.local.domains, vec!["example.test".to_string()]);
    }

    #[test]
    fn effective_config_round_trips() {
        let config = parse(
            "[server]\ncores = 2\nio = \"epoll\"\nhostname = \"mx.example.test\"\n\
             [smtp]\nlisten = [\"127.0.0.1:0\", \"[::1]:2525\"]\n",
        )
        .expect("valid");
        let shown = config.to_toml();
        let again = parse(&shown).expect("printed config parses");
        assert_eq!(again, config);
    }

    #[test]
    fn hostnames_are_checked() {
        assert!(valid_domain("mx1.example.test"));
        assert!(valid_domain("localhost"));
        for bad in ["", "a..b", "-a.b", "a b", "a\r\nb", "é.test"] {
            assert!(!valid_domain(bad), "{bad:?}");
        }
    }
}
