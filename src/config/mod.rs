//! The typed configuration: one TOML file, grouped by owner (`[server] [smtp] [spool]
//! [relay] [local] [pop3] [policy] [delivery] [admin] [tls]`).
//!
//! Role: turn operator text into values the rest of the relay can trust. Every key has a
//! default (see `defaults.rs`, where each cites its RFC or reason); unknown keys and bad
//! values are errors naming the key and line, never silent defaults; limits that depend on
//! each other are checked here, once, at load (`Config::validate`).
//!
//! Exposure: a local file written by the operator; never network input.

mod defaults;
pub mod units;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use units::{ByteSize, Interval};

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

/// Which kernel interface moves the bytes (docs/ARCHITECTURE.md §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum IoEngine {
    /// io_uring when the probe succeeds, else epoll with one warning naming the cause.
    #[default]
    Auto,
    /// io_uring or refuse to start.
    Uring,
    /// Force the epoll fallback (tokio current-thread runtimes).
    Epoll,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub smtp: SmtpConfig,
    pub spool: SpoolSection,
    pub relay: RelayConfig,
    pub local: LocalConfig,
    pub pop3: Pop3Config,
    pub policy: PolicySection,
    /// Outbound delivery: retries, lifetime, notices, per-destination limits (`queue::settings`).
    pub delivery: crate::queue::DeliveryConfig,
    pub admin: AdminSection,
    pub tls: TlsSection,
}

/// `[tls]`: the server certificate for STARTTLS/STLS and the implicit-TLS listeners
/// (`smtp.tls_listen`, `pop3.tls_listen`), and what outbound delivery trusts. Without `cert`
/// and `key` the relay offers no TLS (STARTTLS is not advertised). Paths relative to the
/// config file are resolved next to it. SIGHUP reads the files again (see `crate::server`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    /// PEM certificate chain, leaf first.
    pub cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, RSA or SEC1 EC) of the leaf certificate.
    pub key: Option<PathBuf>,
    /// How long a client may take to complete a handshake after STARTTLS/STLS or connect.
    pub handshake_timeout: Interval,
    /// Extra trust anchors (PEM) for outbound `tls = "required"`, added to the webpki roots.
    pub ca_file: Option<PathBuf>,
}

impl Default for TlsSection {
    fn default() -> Self {
        TlsSection {
            cert: None,
            key: None,
            handshake_timeout: defaults::TLS_HANDSHAKE_TIMEOUT,
            ca_file: None,
        }
    }
}

impl TlsSection {
    /// The server offers TLS (both files named).
    pub fn server_enabled(&self) -> bool {
        self.cert.is_some() && self.key.is_some()
    }
}

/// `[admin]`: the operator's HTTP listener, `/metrics` (Prometheus text), `/stat` (what
/// `relay stat` prints) and the queue control. It has no authentication, so it listens on
/// loopback only: `listen` must be in 127.0.0.0/8 or `::1` (put a reverse proxy with
/// authentication in front of it to scrape from elsewhere). Port 0 picks a free port (logged
/// as `listening protocol="admin"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    /// `false` runs no admin listener (no metrics endpoint; `relay stat` cannot reach it).
    pub enabled: bool,
    pub listen: SocketAddr,
}

impl Default for AdminSection {
    fn default() -> Self {
        AdminSection {
            enabled: true,
            listen: defaults::admin_listen(),
        }
    }
}

/// Loopback only: 127.0.0.0/8 or ::1 (the admin endpoint has no authentication).
pub fn admin_listen_allowed(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// Content policy applied at the end of DATA (violations get 554 5.7.1, nothing queued).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicySection {
    /// MIME entities per message, the message itself included.
    pub max_parts: usize,
    /// Nesting levels of multiparts and enclosed messages.
    pub max_nesting: usize,
    /// Attachment file extensions refused, e.g. `["exe", "scr", "js"]` (opt-in).
    pub blocked_extensions: Vec<String>,
    /// Media types refused, `type/subtype` or `type/*` (opt-in).
    pub blocked_types: Vec<String>,
}

impl Default for PolicySection {
    fn default() -> Self {
        let policy = crate::mime::Policy::default();
        PolicySection {
            max_parts: policy.max_parts,
            max_nesting: policy.max_nesting,
            blocked_extensions: Vec::new(),
            blocked_types: Vec::new(),
        }
    }
}

impl PolicySection {
    pub fn to_policy(&self) -> crate::mime::Policy {
        crate::mime::Policy {
            max_parts: self.max_parts,
            max_nesting: self.max_nesting,
            blocked_extensions: self.blocked_extensions.clone(),
            blocked_types: self.blocked_types.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Our name in greetings and Received headers; the system hostname when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Shards (pinned threads); every available core when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cores: Option<usize>,
    pub io: IoEngine,
    pub drain_timeout: Interval,
    pub connections_per_core_max: usize,
    pub connections_per_ip_max: usize,
    /// Name servers for MX and block-list lookups instead of `/etc/resolv.conf`'s (e.g. a
    /// local caching resolver: public resolvers are refused by most block lists).
    pub dns_servers: Vec<SocketAddr>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            hostname: None,
            cores: None,
            io: IoEngine::Auto,
            drain_timeout: defaults::DRAIN_TIMEOUT,
            connections_per_core_max: defaults::CONNECTIONS_PER_CORE_MAX,
            connections_per_ip_max: defaults::CONNECTIONS_PER_IP_MAX,
            dns_servers: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    pub listen: Vec<SocketAddr>,
    /// Implicit-TLS listeners (submissions, RFC 8314 §3.3: port 465); need `[tls]`.
    pub tls_listen: Vec<SocketAddr>,
    /// DNS block lists (RFC 5782) checked for each client at connect, e.g.
    /// `["zen.spamhaus.org"]`; a listed client's recipients get 554 5.7.1 unless it is in
    /// `relay.allowed_networks` or has authenticated. Empty: no lookups.
    pub dnsbl_zones: Vec<String>,
    /// How long the block-list lookups may take; past it the client is not treated as
    /// listed (a slow DNS must not stop mail).
    pub dnsbl_timeout: Interval,
    pub command_line_max: usize,
    pub text_line_max: usize,
    pub recipients_max: usize,
    pub message_size_max: ByteSize,
    pub errors_max: u32,
    /// Tarpitting: past this many errors, each further error reply waits `error_delay`.
    pub error_delay_after: u32,
    pub error_delay: Interval,
    /// The deadline for a whole command line, from when the relay starts waiting for it
    /// (bytes trickling in do not extend it).
    pub command_timeout: Interval,
    /// The longest wait for the next read in DATA/BDAT.
    pub data_timeout: Interval,
    /// Bytes per second the data must keep up on top of `data_timeout`; 0: no rate check.
    pub data_rate_min: ByteSize,
    /// Messages (MAIL commands) per client address per `message_rate_window`, across all
    /// cores; 0: unlimited. Clients in `relay.allowed_networks` are exempt.
    pub messages_per_ip_max: u32,
    pub message_rate_window: Interval,
    /// VRFY confirms local mailboxes (address disclosure: off by default, RFC 5321 §3.5.3).
    pub vrfy: bool,
    /// EXPN lists the members of local lists (off by default: spammers harvest them).
    pub expn: bool,
    /// Every connection must start with a PROXY protocol header (v1 or v2) naming the
    /// client; only for listeners behind a trusted load balancer (see `defaults.rs`).
    pub proxy_protocol: bool,
    /// Offer AUTH without TLS (passwords in clear: loopback testing only; see `defaults.rs`).
    pub allow_plaintext_auth: bool,
    /// Wait before answering a failed AUTH (slows guessing).
    pub auth_failure_delay: Interval,
    /// Failed AUTHs per client address, and per user name, within `auth_failure_window`
    /// before further attempts are answered 454 4.7.0 without checking the password.
    pub auth_failures_per_ip_max: u32,
    pub auth_failures_per_user_max: u32,
    pub auth_failure_window: Interval,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        SmtpConfig {
            listen: defaults::smtp_listen(),
            tls_listen: Vec::new(),
            dnsbl_zones: Vec::new(),
            dnsbl_timeout: defaults::DNSBL_TIMEOUT,
            command_line_max: defaults::COMMAND_LINE_MAX,
            text_line_max: defaults::TEXT_LINE_MAX,
            recipients_max: defaults::RECIPIENTS_MAX,
            message_size_max: defaults::MESSAGE_SIZE_MAX,
            errors_max: defaults::ERRORS_MAX,
            error_delay_after: defaults::ERROR_DELAY_AFTER,
            error_delay: defaults::ERROR_DELAY,
            command_timeout: defaults::COMMAND_TIMEOUT,
            data_timeout: defaults::DATA_TIMEOUT,
            data_rate_min: defaults::DATA_RATE_MIN,
            messages_per_ip_max: defaults::MESSAGES_PER_IP_MAX,
            message_rate_window: defaults::MESSAGE_RATE_WINDOW,
            vrfy: false,
            expn: false,
            proxy_protocol: defaults::PROXY_PROTOCOL,
            allow_plaintext_auth: defaults::ALLOW_PLAINTEXT_AUTH,
            auth_failure_delay: defaults::AUTH_FAILURE_DELAY,
            auth_failures_per_ip_max: defaults::AUTH_FAILURES_PER_IP_MAX,
            auth_failures_per_user_max: defaults::AUTH_FAILURES_PER_USER_MAX,
            auth_failure_window: defaults::AUTH_FAILURE_WINDOW,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolSection {
    pub dir: PathBuf,
    /// `false` is for benchmarks only: a 250 then no longer means the message is on disk.
    pub fsync: bool,
    pub commit_window: Interval,
    pub segment_size: ByteSize,
    pub appends_pending_max: usize,
    pub commit_records_max: usize,
    /// How often sealed segments with mostly dead records are rewritten (in the
    /// background; ingest and POP3 go on).
    pub compact_interval: Interval,
}

impl Default for SpoolSection {
    fn default() -> Self {
        SpoolSection {
            dir: defaults::spool_dir(),
            fsync: true,
            commit_window: defaults::COMMIT_WINDOW,
            segment_size: defaults::SEGMENT_SIZE,
            appends_pending_max: defaults::APPENDS_PENDING_MAX,
            commit_records_max: defaults::COMMIT_RECORDS_MAX,
            compact_interval: defaults::COMPACT_INTERVAL,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// Clients (CIDR) that may send to any domain; everyone else only to `local.domains`.
    pub allowed_networks: Vec<ipnet::IpNet>,
    /// `[[relay.routes]]`: where mail for a domain goes next (`queue::routes`); a domain no
    /// route matches goes to its MX hosts.
    pub routes: crate::queue::RoutesConfig,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            allowed_networks: defaults::relay_allowed_networks(),
            routes: crate::queue::RoutesConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalConfig {
    /// Domains whose mail ends here (lower-cased at load).
    pub domains: Vec<String>,
    /// Mailbox owners; more can come from `users_file`.
    pub users: Vec<UserConfig>,
    /// A file of users, one per line: `name $argon2id$… [quota=1GiB] [apop=secret]`
    /// (what `relay user add` prints). Relative paths are relative to the config file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub users_file: Option<PathBuf>,
    /// `"list@domain" = ["alice", "bob@example.test", "someone@remote.test"]`.
    pub aliases: std::collections::BTreeMap<String, Vec<String>>,
}

impl Default for LocalConfig {
    fn default() -> Self {
        LocalConfig {
            domains: defaults::local_domains(),
            users: Vec::new(),
            users_file: None,
            aliases: std::collections::BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    /// argon2id PHC string (`relay user add` makes one); never a plaintext password.
    pub password: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<ByteSize>,
    /// Shared secret for APOP (RFC 1939 §7); APOP is offered only when a user has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apop_secret: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Pop3Config {
    /// Addresses; empty disables POP3.
    pub listen: Vec<SocketAddr>,
    /// Implicit-TLS listeners (POP3S, RFC 8314 §3.3: port 995); need `[tls]`.
    pub tls_listen: Vec<SocketAddr>,
    /// RFC 1939 §3: the autologout timer must be at least 10 minutes.
    pub idle_timeout: Interval,
    /// A command line must be complete this long after its first byte arrived (trickled
    /// bytes do not extend it); at most `idle_timeout`.
    pub command_timeout: Interval,
    /// Wait before answering a failed login (slows guessing; Dovecot waits 2s).
    pub auth_failure_delay: Interval,
    /// Failed logins per client address within `auth_failure_window` before further
    /// attempts from it are refused outright.
    pub auth_failures_per_ip_max: u32,
    pub auth_failure_window: Interval,
    /// As `smtp.proxy_protocol`, for the POP3 listeners.
    pub proxy_protocol: bool,
    /// Accept USER/PASS and AUTH PLAIN from clients outside loopback before TLS (passwords
    /// in clear). Off: such clients must STLS first, or use POP3S or APOP.
    pub allow_plaintext_auth: bool,
}

impl Default for Pop3Config {
    fn default() -> Self {
        Pop3Config {
            listen: defaults::pop3_listen(),
            tls_listen: Vec::new(),
            idle_timeout: defaults::POP3_IDLE_TIMEOUT,
            command_timeout: defaults::POP3_COMMAND_TIMEOUT,
            auth_failure_delay: defaults::AUTH_FAILURE_DELAY,
            auth_failures_per_ip_max: defaults::AUTH_FAILURES_PER_IP_MAX,
            auth_failure_window: defaults::AUTH_FAILURE_WINDOW,
            proxy_protocol: defaults::PROXY_PROTOCOL,
            allow_plaintext_auth: defaults::ALLOW_PLAINTEXT_AUTH,
        }
    }
}

impl Config {
    /// Read, parse and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Config::parse(&text, &path.display().to_string())?;
        // Files named relative to the config live next to it.
        if let Some(dir) = path.parent() {
            for file in [
                &mut config.local.users_file,
                &mut config.tls.cert,
                &mut config.tls.key,
                &mut config.tls.ca_file,
            ] {
                if let Some(relative) = file.as_ref().filter(|f| f.is_relative()) {
                    *file = Some(dir.join(relative));
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
        config.validate(origin).map_err(|error| match error {
            ConfigError::Invalid {
                origin,
                key,
                message,
                ..
            } => ConfigError::Invalid {
                origin,
                key,
                line: locate_key(text, key),
                message,
            },
            other => other,
        })?;
        Ok(config)
    }

    /// The effective config as TOML, every key shown (for `relay check`).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }

    fn normalize(&mut self) {
        for domain in &mut self.local.domains {
            *domain = domain.trim_end_matches('.').to_ascii_lowercase();
        }
    }

    /// Our name: the configured one, else the system's.
    pub fn hostname(&self) -> String {
        match &self.server.hostname {
            Some(name) => name.clone(),
            None => gethostname::gethostname()
                .into_string()
                .ok()
                .filter(|name| valid_domain(name))
                .unwrap_or_else(|| "localhost".to_string()),
        }
    }

    /// Shards to run: the configured count, else one per available core.
    pub fn cores(&self) -> usize {
        self.server.cores.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .min(MAX_SHARDS)
        })
    }

    /// Checks each value and the relations between limits.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, message: String| ConfigError::Invalid {
            origin: origin.to_string(),
            key,
            line: None,
            message,
        };
        let s = &self.smtp;
        if s.listen.is_empty() {
            return Err(invalid(
                "smtp.listen",
                "at least one address is needed".into(),
            ));
        }
        if !(defaults::COMMAND_LINE_MAX..=COMMAND_LINE_CEILING).contains(&s.command_line_max) {
            return Err(invalid(
                "smtp.command_line_max",
                format!(
                    "must be between {} (RFC 5321 §4.5.3.1.4) and {COMMAND_LINE_CEILING} (the read buffer)",
                    defaults::COMMAND_LINE_MAX
                ),
            ));
        }
        if s.text_line_max < defaults::TEXT_LINE_MAX {
            return Err(invalid(
                "smtp.text_line_max",
                format!(
                    "must be at least {} (RFC 5321 §4.5.3.1.6)",
                    defaults::TEXT_LINE_MAX
                ),
            ));
        }
        if s.recipients_max == 0 {
            return Err(invalid("smtp.recipients_max", "must be at least 1".into()));
        }
        if s.message_size_max.0 < ByteSize::KIB || s.message_size_max.0 > MESSAGE_SIZE_CEILING {
            return Err(invalid(
                "smtp.message_size_max",
                format!(
                    "must be between 1KiB and {} (the spool frame's 32-bit body length)",
                    ByteSize(MESSAGE_SIZE_CEILING)
                ),
            ));
        }
        if s.errors_max == 0 {
            return Err(invalid("smtp.errors_max", "must be at least 1".into()));
        }
        if s.error_delay_after >= s.errors_max && !s.error_delay.0.is_zero() {
            return Err(invalid(
                "smtp.error_delay_after",
                format!(
                    "must be less than smtp.errors_max ({}), or tarpitting never starts                      (set smtp.error_delay = \"0s\" to turn it off)",
                    s.errors_max
                ),
            ));
        }
        if s.messages_per_ip_max > 0 && s.message_rate_window.0 < std::time::Duration::from_secs(1)
        {
            return Err(invalid(
                "smtp.message_rate_window",
                "must be at least 1s when smtp.messages_per_ip_max is set".into(),
            ));
        }
        if s.auth_failure_delay.0 > std::time::Duration::from_secs(30) {
            return Err(invalid(
                "smtp.auth_failure_delay",
                "must be at most 30s".into(),
            ));
        }
        if s.auth_failures_per_ip_max == 0 {
            return Err(invalid(
                "smtp.auth_failures_per_ip_max",
                "must be at least 1".into(),
            ));
        }
        if s.auth_failures_per_user_max == 0 {
            return Err(invalid(
                "smtp.auth_failures_per_user_max",
                "must be at least 1".into(),
            ));
        }
        for (key, value) in [
            ("smtp.command_timeout", s.command_timeout),
            ("smtp.data_timeout", s.data_timeout),
        ] {
            if value.0.is_zero() {
                return Err(invalid(key, "must be more than 0".into()));
            }
        }
        // RFC 5321 §4.5.3.2 clients wait minutes for a reply; 30s keeps a tarpitted slot short.
        if s.error_delay.0 > std::time::Duration::from_secs(30) {
            return Err(invalid("smtp.error_delay", "must be at most 30s".into()));
        }
        let sp = &self.spool;
        if sp.segment_size.0 < ByteSize::MIB {
            return Err(invalid(
                "spool.segment_size",
                "must be at least 1MiB".into(),
            ));
        }
        if sp.commit_window.0 > std::time::Duration::from_secs(1) {
            return Err(invalid(
                "spool.commit_window",
                "must be at most 1s: every 250 after DATA waits up to this long".into(),
            ));
        }
        if sp.appends_pending_max == 0 || sp.commit_records_max == 0 {
            return Err(invalid(
                "spool.appends_pending_max",
                "appends_pending_max and commit_records_max must be at least 1".into(),
            ));
        }
        if sp.compact_interval.0 < std::time::Duration::from_secs(1) {
            return Err(invalid(
                "spool.compact_interval",
                "must be at least 1s".into(),
            ));
        }
        if sp.dir.as_os_str().is_empty() {
            return Err(invalid("spool.dir", "must not be empty".into()));
        }
        let sv = &self.server;
        if let Some(cores) = sv.cores {
            if !(1..=MAX_SHARDS).contains(&cores) {
                return Err(invalid(
                    "server.cores",
                    format!("must be between 1 and {MAX_SHARDS} (queue ids carry an 8-bit shard)"),
                ));
            }
        }
        if let Some(name) = &sv.hostname {
            if !valid_domain(name) {
                return Err(invalid(
                    "server.hostname",
                    format!("`{name}` is not a valid host name (letters, digits, '-' and '.')"),
                ));
            }
        }
        if sv.connections_per_core_max == 0 || sv.connections_per_ip_max == 0 {
            return Err(invalid(
                "server.connections_per_core_max",
                "connections_per_core_max and connections_per_ip_max must be at least 1".into(),
            ));
        }
        if sv.drain_timeout.0 > std::time::Duration::from_secs(3600) {
            return Err(invalid("server.drain_timeout", "must be at most 1h".into()));
        }
        if let Err(error) = self.delivery.check() {
            return Err(invalid(delivery_key(error.key), error.message));
        }
        if let Some(name) = &self.delivery.helo_name {
            if !valid_domain(name) {
                return Err(invalid(
                    "delivery.helo_name",
                    format!("`{name}` is not a valid host name (letters, digits, '-' and '.')"),
                ));
            }
        }
        if let Err(error) = self.relay.routes.compile() {
            return Err(invalid("relay.routes", error.to_string()));
        }
        let po = &self.policy;
        if po.max_parts == 0 || po.max_nesting == 0 {
            return Err(invalid(
                "policy.max_parts",
                "max_parts and max_nesting must be at least 1".into(),
            ));
        }
        if let Some(bad) = po.blocked_types.iter().find(|t| !t.contains('/')) {
            return Err(invalid(
                "policy.blocked_types",
                format!("`{bad}` is not a media type (write `type/subtype` or `type/*`)"),
            ));
        }
        if let Some(bad) = po
            .blocked_extensions
            .iter()
            .find(|e| e.trim_start_matches('.').is_empty() || e.contains('/') || !e.is_ascii())
        {
            return Err(invalid(
                "policy.blocked_extensions",
                format!("`{bad}` is not a file extension"),
            ));
        }
        let p = &self.pop3;
        if p.idle_timeout.0 < std::time::Duration::from_secs(600) && !p.listen.is_empty() {
            return Err(invalid(
                "pop3.idle_timeout",
                "must be at least 10m (RFC 1939 §3 autologout timer)".into(),
            ));
        }
        if p.command_timeout.0.is_zero() || p.command_timeout.0 > p.idle_timeout.0 {
            return Err(invalid(
                "pop3.command_timeout",
                "must be more than 0 and at most pop3.idle_timeout".into(),
            ));
        }
        if p.auth_failure_delay.0 > std::time::Duration::from_secs(30) {
            return Err(invalid(
                "pop3.auth_failure_delay",
                "must be at most 30s".into(),
            ));
        }
        if p.auth_failures_per_ip_max == 0 {
            return Err(invalid(
                "pop3.auth_failures_per_ip_max",
                "must be at least 1".into(),
            ));
        }
        if let Some(bad) = s.dnsbl_zones.iter().find(|z| !valid_domain(z)) {
            return Err(invalid(
                "smtp.dnsbl_zones",
                format!("`{bad}` is not a DNS zone name"),
            ));
        }
        if s.dnsbl_timeout.0.is_zero() || s.dnsbl_timeout.0 > std::time::Duration::from_secs(30) {
            return Err(invalid(
                "smtp.dnsbl_timeout",
                "must be more than 0 and at most 30s (the greeting waits for it)".into(),
            ));
        }
        let t = &self.tls;
        if t.cert.is_some() != t.key.is_some() {
            return Err(invalid(
                if t.cert.is_some() {
                    "tls.key"
                } else {
                    "tls.cert"
                },
                "tls.cert and tls.key go together: name both files or neither".into(),
            ));
        }
        if !t.server_enabled() {
            for (key, listen) in [
                ("smtp.tls_listen", &self.smtp.tls_listen),
                ("pop3.tls_listen", &self.pop3.tls_listen),
            ] {
                if !listen.is_empty() {
                    return Err(invalid(
                        key,
                        "implicit-TLS listeners need a certificate: set tls.cert and tls.key"
                            .into(),
                    ));
                }
            }
        }
        if t.handshake_timeout.0.is_zero() {
            return Err(invalid(
                "tls.handshake_timeout",
                "must be more than 0".into(),
            ));
        }
        if !admin_listen_allowed(&self.admin.listen) {
            return Err(invalid(
                "admin.listen",
                format!(
                    "{} is not a loopback address: the admin endpoint has no authentication, \
                     so it listens on 127.0.0.0/8 or [::1] only (use a reverse proxy to expose it)",
                    self.admin.listen
                ),
            ));
        }
        for domain in &self.local.domains {
            if !valid_domain(domain) {
                return Err(invalid(
                    "local.domains",
                    format!("`{domain}` is not a valid domain"),
                ));
            }
        }
        Ok(())
    }
}

/// The 1-based line that sets `section.key` in TOML text written in the usual
/// `[section]` / `key = value` form (what a validation error should point at).
/// `delivery.<key>` as a static string, for the error's line lookup.
fn delivery_key(key: &str) -> &'static str {
    const KEYS: &[&str] = &[
        "delivery.retry_intervals",
        "delivery.retry_every",
        "delivery.retry_jitter_percent",
        "delivery.max_age",
        "delivery.delay_warning",
        "delivery.delay_notice_without_notify",
        "delivery.queued_messages_max",
        "delivery.queued_bytes_max",
        "delivery.destination_connections_max",
        "delivery.destination_transactions_max",
        "delivery.destination_messages_per_minute",
        "delivery.destinations_max",
        "delivery.dsn_original_max",
        "delivery.mx_hosts_max",
        "delivery.mx_addresses_max",
        "delivery.connect_timeout",
        "delivery.recipients_per_transaction_max",
        "delivery.helo_name",
    ];
    KEYS.iter()
        .find(|k| k.strip_prefix("delivery.") == Some(key))
        .copied()
        .unwrap_or("delivery")
}

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

/// The queue id keeps 8 bits for the shard.
pub const MAX_SHARDS: usize = 256;
/// The connection's read buffer must hold a whole command line.
pub const COMMAND_LINE_CEILING: usize = 16 * 1024;
/// The spool frame stores the body length in 32 bits.
pub const MESSAGE_SIZE_CEILING: u64 = (u32::MAX as u64) - 64 * ByteSize::KIB;

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
    fn admin_listens_on_loopback_only() {
        let config = parse("").expect("default");
        assert_eq!(config.admin.listen, defaults::admin_listen());
        assert!(config.admin.enabled);
        for good in ["127.0.0.1:0", "127.1.2.3:9025", "[::1]:9025"] {
            let text = format!("[admin]\nlisten = {good:?}\n");
            let config = parse(&text).unwrap_or_else(|e| panic!("{good}: {e}"));
            assert_eq!(
                config.admin.listen,
                good.parse::<SocketAddr>().expect("addr")
            );
        }
        for bad in [
            "0.0.0.0:9025",
            "192.168.1.10:9025",
            "[::]:9025",
            "[::ffff:127.0.0.1]:9025",
            "[2001:db8::1]:9025",
        ] {
            let text = format!("[server]\ncores = 1\n[admin]\nenabled = true\nlisten = {bad:?}\n");
            match parse(&text) {
                Err(
                    err @ ConfigError::Invalid {
                        key: "admin.listen",
                        line: Some(5),
                        ..
                    },
                ) => {
                    assert!(err.to_string().contains("loopback"), "{err}");
                }
                other => panic!("{bad}: expected admin.listen on line 5, got {other:?}"),
            }
        }
        let off = parse("[admin]\nenabled = false\n").expect("valid");
        assert!(!off.admin.enabled);
        assert!(matches!(
            parse("[admin]\nlisten = [\"127.0.0.1:1\"]\n"),
            Err(ConfigError::Parse { .. })
        ));
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
