//! `[imap]`: the IMAP listeners, the autologout and command timers, login limits and the
//! size bounds of commands.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::{defaults, invalid, ByteSize, Interval, SectionError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImapSection {
    /// Addresses (STARTTLS offered when `[tls]` has a certificate); empty disables them.
    pub listen: Vec<SocketAddr>,
    /// Implicit-TLS listeners (IMAPS, RFC 8314 §3.3: port 993); need `[tls]`.
    pub tls_listen: Vec<SocketAddr>,
    /// RFC 9051 §5.4: the autologout timer must be at least 30 minutes (IDLE included: a
    /// client re-issues IDLE within it).
    pub idle_timeout: Interval,
    /// A command must be complete this long after its first byte arrived (literals
    /// included); at most `idle_timeout`.
    pub command_timeout: Interval,
    pub auth_failure_delay: Interval,
    pub auth_failures_per_ip_max: u32,
    pub auth_failures_per_user_max: u32,
    pub auth_failure_window: Interval,
    /// As `smtp.proxy_protocol`, for the IMAP listeners.
    pub proxy_protocol: bool,
    pub allow_proxy_local_trust: bool,
    /// Accept LOGIN and AUTHENTICATE from clients outside loopback before TLS (passwords in
    /// clear). Off: such clients see LOGINDISABLED until STARTTLS.
    pub allow_plaintext_auth: bool,
    /// One command line.
    pub line_max: ByteSize,
    /// One literal in a command other than APPEND.
    pub literal_max: ByteSize,
    /// One APPEND message (advertised as APPENDLIMIT).
    pub append_max: ByteSize,
    /// Folders per user.
    pub folders_max: usize,
}

impl Default for ImapSection {
    fn default() -> Self {
        ImapSection {
            listen: defaults::imap_listen(),
            tls_listen: Vec::new(),
            idle_timeout: defaults::IMAP_IDLE_TIMEOUT,
            command_timeout: defaults::IMAP_COMMAND_TIMEOUT,
            auth_failure_delay: defaults::AUTH_FAILURE_DELAY,
            auth_failures_per_ip_max: defaults::AUTH_FAILURES_PER_IP_MAX,
            auth_failures_per_user_max: defaults::AUTH_FAILURES_PER_USER_MAX,
            auth_failure_window: defaults::AUTH_FAILURE_WINDOW,
            proxy_protocol: defaults::PROXY_PROTOCOL,
            allow_proxy_local_trust: defaults::ALLOW_PROXY_LOCAL_TRUST,
            allow_plaintext_auth: defaults::ALLOW_PLAINTEXT_AUTH,
            line_max: ByteSize(defaults::IMAP_LINE_MAX),
            literal_max: ByteSize(defaults::IMAP_LITERAL_MAX),
            append_max: ByteSize(defaults::IMAP_APPEND_MAX),
            folders_max: crate::mailstore::DEFAULT_MAX_FOLDERS,
        }
    }
}

impl ImapSection {
    /// Checks each value and the relations between them.
    pub fn check(&self) -> Result<(), SectionError> {
        let serving = !self.listen.is_empty() || !self.tls_listen.is_empty();
        if serving && self.idle_timeout.0 < std::time::Duration::from_secs(30 * 60) {
            return Err(invalid(
                "imap.idle_timeout",
                "must be at least 30m (RFC 9051 §5.4 autologout timer)",
            ));
        }
        if self.command_timeout.0.is_zero() || self.command_timeout.0 > self.idle_timeout.0 {
            return Err(invalid(
                "imap.command_timeout",
                "must be more than 0 and at most imap.idle_timeout",
            ));
        }
        if self.auth_failure_delay.0 > std::time::Duration::from_secs(30) {
            return Err(invalid("imap.auth_failure_delay", "must be at most 30s"));
        }
        if self.auth_failures_per_ip_max == 0 {
            return Err(invalid(
                "imap.auth_failures_per_ip_max",
                "must be at least 1",
            ));
        }
        if self.auth_failures_per_user_max == 0 {
            return Err(invalid(
                "imap.auth_failures_per_user_max",
                "must be at least 1",
            ));
        }
        // RFC 9051 §4: a client may send lines of 8,000 octets.
        if self.line_max.0 < 8_000 || self.line_max.0 > 1 << 20 {
            return Err(invalid("imap.line_max", "must be between 8000 and 1MiB"));
        }
        if self.literal_max.0 < 1024 || self.literal_max.0 > 16 << 20 {
            return Err(invalid(
                "imap.literal_max",
                "must be between 1KiB and 16MiB",
            ));
        }
        if self.append_max.0 < 1024 || self.append_max.0 > crate::spool::MAX_PART_LEN {
            return Err(invalid(
                "imap.append_max",
                "must be at least 1KiB and at most what the spool stores in one message",
            ));
        }
        if self.folders_max < crate::mailstore::DEFAULT_FOLDERS.len() + 1 {
            return Err(invalid(
                "imap.folders_max",
                "must leave room for INBOX and the default folders (6)",
            ));
        }
        Ok(())
    }

    /// The session settings: STARTTLS when the relay has a certificate.
    pub fn session_config(&self, hostname: &str, starttls: bool) -> crate::imap::SessionConfig {
        let line_max = usize::try_from(self.line_max.0).unwrap_or(usize::MAX);
        crate::imap::SessionConfig {
            hostname: hostname.to_string(),
            limits: crate::imap::Limits {
                line_max,
                literal_max: self.literal_max.0,
                // A command may hold a few literals (LOGIN's two, a SEARCH's strings).
                command_max: line_max.saturating_mul(4).max(
                    usize::try_from(self.literal_max.0)
                        .unwrap_or(usize::MAX)
                        .saturating_add(line_max),
                ),
                append_max: self.append_max.0,
            },
            plaintext_auth: false,
            starttls,
        }
    }

    pub fn listens_remotely(&self) -> bool {
        self.listen.iter().any(|addr| !addr.ip().is_loopback())
    }
}
