//! `[pop3]`: the POP3 listeners, the autologout and command timers, and login limits.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::{defaults, invalid, Interval, SectionError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Pop3Section {
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
    /// Failed logins per user name within `auth_failure_window` after which each further
    /// attempt for that name waits a delay that doubles with each failure (1 s up to 60 s),
    /// except from a client that logged in as that user before.
    pub auth_failures_per_user_max: u32,
    pub auth_failure_window: Interval,
    /// As `smtp.proxy_protocol`, for the POP3 listeners.
    pub proxy_protocol: bool,
    /// As `smtp.allow_proxy_local_trust`: off, a PROXY `UNKNOWN` / `LOCAL` connection is not
    /// loopback for plaintext logins.
    pub allow_proxy_local_trust: bool,
    /// Accept USER/PASS and AUTH PLAIN from clients outside loopback before TLS (passwords
    /// in clear). Off: such clients must STLS first, or use POP3S or APOP.
    pub allow_plaintext_auth: bool,
}

impl Default for Pop3Section {
    fn default() -> Self {
        Pop3Section {
            listen: defaults::pop3_listen(),
            tls_listen: Vec::new(),
            idle_timeout: defaults::POP3_IDLE_TIMEOUT,
            command_timeout: defaults::POP3_COMMAND_TIMEOUT,
            auth_failure_delay: defaults::AUTH_FAILURE_DELAY,
            auth_failures_per_ip_max: defaults::AUTH_FAILURES_PER_IP_MAX,
            auth_failures_per_user_max: defaults::AUTH_FAILURES_PER_USER_MAX,
            auth_failure_window: defaults::AUTH_FAILURE_WINDOW,
            proxy_protocol: defaults::PROXY_PROTOCOL,
            allow_proxy_local_trust: defaults::ALLOW_PROXY_LOCAL_TRUST,
            allow_plaintext_auth: defaults::ALLOW_PLAINTEXT_AUTH,
        }
    }
}

impl Pop3Section {
    /// Checks each value and the relations between them.
    pub fn check(&self) -> Result<(), SectionError> {
        if self.idle_timeout.0 < std::time::Duration::from_secs(600) && !self.listen.is_empty() {
            return Err(invalid(
                "pop3.idle_timeout",
                "must be at least 10m (RFC 1939 §3 autologout timer)",
            ));
        }
        if self.command_timeout.0.is_zero() || self.command_timeout.0 > self.idle_timeout.0 {
            return Err(invalid(
                "pop3.command_timeout",
                "must be more than 0 and at most pop3.idle_timeout",
            ));
        }
        if self.auth_failure_delay.0 > std::time::Duration::from_secs(30) {
            return Err(invalid("pop3.auth_failure_delay", "must be at most 30s"));
        }
        if self.auth_failures_per_ip_max == 0 {
            return Err(invalid(
                "pop3.auth_failures_per_ip_max",
                "must be at least 1",
            ));
        }
        if self.auth_failures_per_user_max == 0 {
            return Err(invalid(
                "pop3.auth_failures_per_user_max",
                "must be at least 1",
            ));
        }
        Ok(())
    }

    /// The session settings for a relay named `hostname`: APOP when some user has a secret,
    /// STLS when the relay has a certificate.
    pub fn session_config(
        &self,
        hostname: &str,
        apop: bool,
        stls: bool,
    ) -> crate::pop3::SessionConfig {
        crate::pop3::SessionConfig {
            hostname: hostname.to_string(),
            apop,
            user_command: true,
            stls,
        }
    }

    /// A listener beyond loopback: clients there may need TLS (or APOP) to log in.
    pub fn listens_remotely(&self) -> bool {
        self.listen.iter().any(|addr| !addr.ip().is_loopback())
    }
}
