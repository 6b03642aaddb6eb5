//! `[smtp]`: the SMTP listeners and what each session may do: line and message limits,
//! error tarpitting, timeouts, rates, block lists, VRFY/EXPN, PROXY protocol and AUTH.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{defaults, invalid, relation, valid_domain, ByteSize, Interval, SectionError};
use crate::smtp::SessionConfig;

/// The connection's read buffer must hold a whole command line.
pub const COMMAND_LINE_CEILING: usize = 16 * 1024;
/// The spool frame stores the body length in 32 bits.
pub const MESSAGE_SIZE_CEILING: u64 = (u32::MAX as u64) - 64 * ByteSize::KIB;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpSection {
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
    /// `Received:` fields a message may carry (Postfix's `hopcount_limit`); a message
    /// with more is in a mail loop and gets `554 5.4.6`.
    pub hopcount_limit: usize,
    /// Bytes of message bodies all sessions together may hold in memory until the spool has
    /// them; past it MAIL and the end of data answer 452 4.3.1. At least twice
    /// `message_size_max`, so one message of the largest size never shuts out the rest.
    pub body_memory_max: ByteSize,
    pub errors_max: u32,
    /// Tarpitting: past this many errors, each further error reply waits `error_delay`.
    pub error_delay_after: u32,
    pub error_delay: Interval,
    /// Junk commands (NOOP, RSET, VRFY, HELP, HELO, EHLO) a session may send without a
    /// delivered message before each further one counts as an error (Postfix
    /// `smtpd_junk_command_limit`). Under it, junk is never an error and never tarpitted.
    pub junk_commands_max: u32,
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
    /// A PROXY v1 `UNKNOWN` / v2 `LOCAL` connection (the balancer's own, naming no client)
    /// keeps the socket's address, with its relay rights; off: it is the unspecified
    /// address (see `defaults.rs`).
    pub allow_proxy_local_trust: bool,
    /// Offer AUTH without TLS (passwords in clear: loopback testing only; see `defaults.rs`).
    pub allow_plaintext_auth: bool,
    /// Wait before answering a failed AUTH (slows guessing).
    pub auth_failure_delay: Interval,
    /// Failed AUTHs per client within `auth_failure_window` before further attempts are
    /// answered 454 4.7.0 without checking the password; per user name, before each further
    /// attempt for it waits a growing delay (not from a client that logged in as it before).
    pub auth_failures_per_ip_max: u32,
    pub auth_failures_per_user_max: u32,
    pub auth_failure_window: Interval,
}

impl Default for SmtpSection {
    fn default() -> Self {
        SmtpSection {
            listen: defaults::smtp_listen(),
            tls_listen: Vec::new(),
            dnsbl_zones: Vec::new(),
            dnsbl_timeout: defaults::DNSBL_TIMEOUT,
            command_line_max: defaults::COMMAND_LINE_MAX,
            text_line_max: defaults::TEXT_LINE_MAX,
            recipients_max: defaults::RECIPIENTS_MAX,
            message_size_max: defaults::MESSAGE_SIZE_MAX,
            hopcount_limit: defaults::HOPCOUNT_LIMIT,
            body_memory_max: defaults::BODY_MEMORY_MAX,
            errors_max: defaults::ERRORS_MAX,
            error_delay_after: defaults::ERROR_DELAY_AFTER,
            error_delay: defaults::ERROR_DELAY,
            junk_commands_max: defaults::JUNK_COMMANDS_MAX,
            command_timeout: defaults::COMMAND_TIMEOUT,
            data_timeout: defaults::DATA_TIMEOUT,
            data_rate_min: defaults::DATA_RATE_MIN,
            messages_per_ip_max: defaults::MESSAGES_PER_IP_MAX,
            message_rate_window: defaults::MESSAGE_RATE_WINDOW,
            vrfy: false,
            expn: false,
            proxy_protocol: defaults::PROXY_PROTOCOL,
            allow_proxy_local_trust: defaults::ALLOW_PROXY_LOCAL_TRUST,
            allow_plaintext_auth: defaults::ALLOW_PLAINTEXT_AUTH,
            auth_failure_delay: defaults::AUTH_FAILURE_DELAY,
            auth_failures_per_ip_max: defaults::AUTH_FAILURES_PER_IP_MAX,
            auth_failures_per_user_max: defaults::AUTH_FAILURES_PER_USER_MAX,
            auth_failure_window: defaults::AUTH_FAILURE_WINDOW,
        }
    }
}

impl SmtpSection {
    /// Checks each value and the relations between them.
    pub fn check(&self) -> Result<(), SectionError> {
        if self.listen.is_empty() {
            return Err(invalid("smtp.listen", "at least one address is needed"));
        }
        if !(defaults::COMMAND_LINE_MAX..=COMMAND_LINE_CEILING).contains(&self.command_line_max) {
            return Err(invalid(
                "smtp.command_line_max",
                format!(
                    "must be between {} (RFC 5321 §4.5.3.1.4) and {COMMAND_LINE_CEILING} (the read buffer)",
                    defaults::COMMAND_LINE_MAX
                ),
            ));
        }
        if self.text_line_max < defaults::TEXT_LINE_MAX {
            return Err(invalid(
                "smtp.text_line_max",
                format!(
                    "must be at least {} (RFC 5321 §4.5.3.1.6)",
                    defaults::TEXT_LINE_MAX
                ),
            ));
        }
        if self.recipients_max == 0 {
            return Err(invalid("smtp.recipients_max", "must be at least 1"));
        }
        if self.message_size_max.0 < ByteSize::KIB || self.message_size_max.0 > MESSAGE_SIZE_CEILING
        {
            return Err(invalid(
                "smtp.message_size_max",
                format!(
                    "must be between 1KiB and {} (the spool frame's 32-bit body length)",
                    ByteSize(MESSAGE_SIZE_CEILING)
                ),
            ));
        }
        if self.hopcount_limit == 0 {
            return Err(invalid("smtp.hopcount_limit", "must be at least 1"));
        }
        if self.body_memory_max.0 < self.message_size_max.0.saturating_mul(2) {
            return Err(invalid(
                "smtp.body_memory_max",
                format!(
                    "must be at least twice smtp.message_size_max ({}), or one message of the largest size shuts out every other",
                    self.message_size_max
                ),
            ));
        }
        if self.errors_max == 0 {
            return Err(invalid("smtp.errors_max", "must be at least 1"));
        }
        if self.error_delay_after >= self.errors_max && !self.error_delay.0.is_zero() {
            return Err(relation(
                "smtp.error_delay_after",
                "smtp.errors_max",
                format!(
                    "smtp.error_delay_after ({}) must be less than smtp.errors_max ({}), or \
                     tarpitting never starts (smtp.error_delay = \"0s\" turns it off)",
                    self.error_delay_after, self.errors_max
                ),
            ));
        }
        if self.junk_commands_max == 0 {
            return Err(invalid(
                "smtp.junk_commands_max",
                "must be at least 1 (EHLO itself counts)",
            ));
        }
        if self.messages_per_ip_max > 0
            && self.message_rate_window.0 < std::time::Duration::from_secs(1)
        {
            return Err(relation(
                "smtp.message_rate_window",
                "smtp.messages_per_ip_max",
                "smtp.message_rate_window must be at least 1s when smtp.messages_per_ip_max is set",
            ));
        }
        if self.auth_failure_delay.0 > std::time::Duration::from_secs(30) {
            return Err(invalid("smtp.auth_failure_delay", "must be at most 30s"));
        }
        if self.auth_failures_per_ip_max == 0 {
            return Err(invalid(
                "smtp.auth_failures_per_ip_max",
                "must be at least 1",
            ));
        }
        if self.auth_failures_per_user_max == 0 {
            return Err(invalid(
                "smtp.auth_failures_per_user_max",
                "must be at least 1",
            ));
        }
        for (key, value) in [
            ("smtp.command_timeout", self.command_timeout),
            ("smtp.data_timeout", self.data_timeout),
        ] {
            if value.0.is_zero() {
                return Err(invalid(key, "must be more than 0"));
            }
        }
        // RFC 5321 §4.5.3.2 clients wait minutes for a reply; 30s keeps a tarpitted slot short.
        if self.error_delay.0 > std::time::Duration::from_secs(30) {
            return Err(invalid("smtp.error_delay", "must be at most 30s"));
        }
        if let Some(bad) = self.dnsbl_zones.iter().find(|z| !valid_domain(z)) {
            return Err(invalid(
                "smtp.dnsbl_zones",
                format!("`{bad}` is not a DNS zone name"),
            ));
        }
        if self.dnsbl_timeout.0.is_zero()
            || self.dnsbl_timeout.0 > std::time::Duration::from_secs(30)
        {
            return Err(invalid(
                "smtp.dnsbl_timeout",
                "must be more than 0 and at most 30s (the greeting waits for it)",
            ));
        }
        Ok(())
    }

    /// The session settings this section owns, for a relay named `hostname`; the domains,
    /// networks, policy, mailboxes, TLS and gates come from elsewhere (`Config::session_config`).
    pub fn session_config(&self, hostname: &str) -> SessionConfig {
        SessionConfig {
            hostname: hostname.to_string(),
            command_line_max: self.command_line_max,
            text_line_max: self.text_line_max,
            recipients_max: self.recipients_max,
            message_size_max: self.message_size_max.0,
            hopcount_limit: self.hopcount_limit,
            errors_max: self.errors_max,
            error_delay_after: self.error_delay_after,
            error_delay: self.error_delay.0,
            junk_commands_max: self.junk_commands_max,
            vrfy: self.vrfy,
            expn: self.expn,
            allow_plaintext_auth: self.allow_plaintext_auth,
            ..SessionConfig::default()
        }
    }

    /// Messages per client address and the window they are counted in; `None`: unlimited.
    pub fn message_rate(&self) -> Option<(u32, Duration)> {
        (self.messages_per_ip_max > 0)
            .then_some((self.messages_per_ip_max, self.message_rate_window.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_budget_holds_two_messages_of_the_largest_size() {
        let section = |budget: u64, size: u64| SmtpSection {
            body_memory_max: ByteSize::mib(budget),
            message_size_max: ByteSize::mib(size),
            ..SmtpSection::default()
        };
        assert_eq!(SmtpSection::default().check().map_err(|e| e.key), Ok(()));
        assert_eq!(section(50, 25).check().map_err(|e| e.key), Ok(()));
        let error = section(49, 25).check().expect_err("too small");
        assert_eq!(error.key, "smtp.body_memory_max");
        assert!(
            error.message.contains("smtp.message_size_max (25MiB)"),
            "{}",
            error.message
        );
    }
}
