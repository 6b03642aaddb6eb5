//! `[delivery]`: retry schedule, lifetime, notices, per-destination limits, backpressure and
//! DNS bounds.
//!
//! **Role.** [`DeliverySection::check`] checks each value and the relations between them once
//! at load and names the key at fault; the conversions hand the queue and the delivery
//! runtime their checked pieces ([`RetrySchedule`], [`DsnPolicy`], [`DestinationLimits`],
//! [`ResolveLimits`], the SMTP client's [`ClientConfig`]).
//!
//! **Config** (every key optional; these are the defaults):
//!
//! ```toml
//! [delivery]
//! retry_intervals = ["1m", "5m", "10m", "30m", "1h"]  # waits after the 1st, 2nd, … failure
//! retry_every = "2h"                # then this, until max_age
//! retry_jitter_percent = 10         # each wait ± up to 10%
//! max_age = "5d"                    # then bounce (enforced for every kind of wait)
//! delay_warning = "4h"              # one delay notice after this; "0" = never
//! delay_notice_without_notify = true  # delay notices for recipients without NOTIFY=
//! queued_messages_max = 1000000     # ingest answers 452 4.3.1 beyond this …
//! queued_bytes_max = "8GiB"         # … or beyond this
//! destination_connections_max = 20
//! destination_transactions_max = 20
//! destination_messages_per_minute = 0  # 0 = no rate limit
//! destination_spread = true         # every core may work a destination (each with a share of its limits)
//! destinations_max = 100000         # per core
//! dsn_original_max = "50kB"         # octets of the original returned in a notice
//! mx_hosts_max = 10                 # MX hosts looked up per destination
//! mx_addresses_max = 5              # addresses tried per delivery attempt
//! connect_timeout = "30s"           # per address tried
//! recipients_per_transaction_max = 100  # RCPTs in one outbound transaction
//! tls_failure_hold = "1h"           # plaintext to a destination whose opportunistic TLS failed; "0" = never hold
//! helo_name = "relay.example.com"   # our EHLO name; default: server.hostname
//! handoff_patience = "30s"          # a hand-off waits this long for room in a full mesh queue
//! notice_retry_interval = "5s"      # a notice the spool refused is stored again after this …
//! notice_attempts_max = 12          # … this many times, then the attempt is repeated later
//! reconcile_interval = "1m"         # after a drop, pending mail no core holds is queued again
//! ```
//!
//! **Exposure.** The operator's file; never network input.

use serde::{Deserialize, Serialize};

use super::{invalid, relation, valid_domain, ByteSize, Interval, SectionError};
use crate::queue::schedule::{ScheduleError, INTERVALS_MAX, INTERVAL_MIN};
use crate::queue::scheduler::Upkeep;
use crate::queue::{
    BackpressureLimits, DestinationLimits, DsnPolicy, ResolveLimits, RetrySchedule,
};
use crate::smtp::client::ClientConfig;

/// The defaults, each with its reason.
mod defaults {
    use crate::config::{ByteSize, Interval};

    /// 1m, 5m, 10m, 30m, 1h: early retries clear greylisting (typically 1–5 min).
    pub fn retry_intervals() -> Vec<Interval> {
        [60, 300, 600, 1800, 3600]
            .into_iter()
            .map(Interval::secs)
            .collect()
    }
    /// Then every 2h (Postfix's maximal_backoff_time is 4000s; 2h halves the
    /// attempts on long outages).
    pub const RETRY_EVERY: Interval = Interval::secs(2 * 3600);
    /// ±10%: enough to spread the mail of one outage, small enough to keep the schedule.
    pub const RETRY_JITTER_PERCENT: u8 = 10;
    /// RFC 5321 §4.5.4.1: the give-up time "needs to be at least 4-5 days"; Postfix's
    /// maximal_queue_lifetime is 5d.
    pub const MAX_AGE: Interval = Interval::secs(5 * 24 * 3600);
    /// sendmail's Timeout.queuewarn (4h): senders learn of a delay the same working day.
    pub const DELAY_WARNING: Interval = Interval::secs(4 * 3600);
    /// The design target: a million queued messages must be affordable.
    pub const QUEUED_MESSAGES_MAX: u64 = 1_000_000;
    /// Bytes queued in the spool; raise it with the spool's disk.
    pub const QUEUED_BYTES_MAX: ByteSize = ByteSize(8 * ByteSize::GIB);
    /// Postfix's default_destination_concurrency_limit.
    pub const DESTINATION_CONNECTIONS_MAX: u32 = 20;
    pub const DESTINATION_TRANSACTIONS_MAX: u32 = 20;
    /// Postfix's default_destination_rate_delay = 0s: no rate limit unless asked.
    pub const DESTINATION_MESSAGES_PER_MINUTE: u32 = 0;
    /// Distinct destinations one core tracks at once (≈ 200 octets each).
    pub const DESTINATIONS_MAX: usize = 100_000;
    /// Postfix's bounce_size_limit (50000).
    pub const DSN_ORIGINAL_MAX: ByteSize = ByteSize(50_000);
    pub const MX_HOSTS_MAX: usize = 10;
    /// Postfix's smtp_mx_address_limit.
    pub const MX_ADDRESSES_MAX: usize = 5;
    /// Postfix's smtp_connect_timeout (30s): a dead address costs at most this per attempt.
    pub const CONNECT_TIMEOUT: Interval = Interval::secs(30);
    /// RFC 5321 §4.5.3.1.8: a server must accept at least 100 recipients per transaction.
    pub const RECIPIENTS_PER_TRANSACTION_MAX: usize = 100;
    /// An hour: long enough that a hop with broken TLS costs one failed handshake per hour,
    /// not one per connection; short enough that a fixed hop is encrypted again the same day.
    pub const TLS_FAILURE_HOLD: Interval = Interval::secs(3600);
    /// Long enough to ride out a burst at the owner core; the message is already durable and
    /// acknowledged, so a longer wait only delays its delivery.
    pub const HANDOFF_PATIENCE: Interval = Interval::secs(30);
    /// A refused append (backpressure) usually clears within a group commit or two; 5s keeps
    /// a struggling spool from being hammered.
    pub const NOTICE_RETRY_INTERVAL: Interval = Interval::secs(5);
    /// With 5s between them, a minute of tries before the attempt is repeated at its first
    /// retry interval instead.
    pub const NOTICE_ATTEMPTS_MAX: u32 = 12;
    /// A dropped entry waits at most about this long; the comparison only runs after a drop.
    pub const RECONCILE_INTERVAL: Interval = Interval::secs(60);
}

/// The `[delivery]` section (see the module doc for the TOML).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliverySection {
    pub retry_intervals: Vec<Interval>,
    pub retry_every: Interval,
    pub retry_jitter_percent: u8,
    pub max_age: Interval,
    /// `0`: no delay notices.
    pub delay_warning: Interval,
    pub delay_notice_without_notify: bool,
    pub queued_messages_max: u64,
    pub queued_bytes_max: ByteSize,
    pub destination_connections_max: u32,
    pub destination_transactions_max: u32,
    /// `0`: no limit.
    pub destination_messages_per_minute: u32,
    /// Every core (up to the smallest limit) works each destination, each with a share of
    /// its limits; `false`: one core per destination (`queue::spread`).
    pub destination_spread: bool,
    pub destinations_max: usize,
    pub dsn_original_max: ByteSize,
    pub mx_hosts_max: usize,
    pub mx_addresses_max: usize,
    pub connect_timeout: Interval,
    pub recipients_per_transaction_max: usize,
    /// The name in our EHLO; `None`: `server.hostname`.
    pub helo_name: Option<String>,
    /// After an opportunistic TLS handshake to a destination fails, its connections skip
    /// STARTTLS this long (`0`: only the connection that failed goes on in plaintext).
    pub tls_failure_hold: Interval,
    /// How long a hand-off to another core waits for room in a full mesh queue (in the
    /// background: the 250 does not wait); then the reconciliation queues the recipients.
    pub handoff_patience: Interval,
    /// The wait before a notice (DSN) the spool refused is stored again; the results it
    /// reports are recorded only after it.
    pub notice_retry_interval: Interval,
    /// Tries to store one attempt's notices; then nothing is recorded and the attempt is
    /// repeated at its first retry interval.
    pub notice_attempts_max: u32,
    /// After an entry was dropped from memory (hand-off given up, destination table full, an
    /// unreadable message at expiry), pending recipients no core holds are queued again, at
    /// most this often.
    pub reconcile_interval: Interval,
}

impl Default for DeliverySection {
    fn default() -> Self {
        DeliverySection {
            retry_intervals: defaults::retry_intervals(),
            retry_every: defaults::RETRY_EVERY,
            retry_jitter_percent: defaults::RETRY_JITTER_PERCENT,
            max_age: defaults::MAX_AGE,
            delay_warning: defaults::DELAY_WARNING,
            delay_notice_without_notify: true,
            queued_messages_max: defaults::QUEUED_MESSAGES_MAX,
            queued_bytes_max: defaults::QUEUED_BYTES_MAX,
            destination_connections_max: defaults::DESTINATION_CONNECTIONS_MAX,
            destination_transactions_max: defaults::DESTINATION_TRANSACTIONS_MAX,
            destination_messages_per_minute: defaults::DESTINATION_MESSAGES_PER_MINUTE,
            destination_spread: true,
            destinations_max: defaults::DESTINATIONS_MAX,
            dsn_original_max: defaults::DSN_ORIGINAL_MAX,
            mx_hosts_max: defaults::MX_HOSTS_MAX,
            mx_addresses_max: defaults::MX_ADDRESSES_MAX,
            connect_timeout: defaults::CONNECT_TIMEOUT,
            recipients_per_transaction_max: defaults::RECIPIENTS_PER_TRANSACTION_MAX,
            helo_name: None,
            tls_failure_hold: defaults::TLS_FAILURE_HOLD,
            handoff_patience: defaults::HANDOFF_PATIENCE,
            notice_retry_interval: defaults::NOTICE_RETRY_INTERVAL,
            notice_attempts_max: defaults::NOTICE_ATTEMPTS_MAX,
            reconcile_interval: defaults::RECONCILE_INTERVAL,
        }
    }
}

/// A returned original larger than this would make notices as big as the mail itself.
const DSN_ORIGINAL_CEILING: u64 = 64 * ByteSize::MIB;

impl DeliverySection {
    /// Checks every value and the relations between them.
    pub fn check(&self) -> Result<(), SectionError> {
        if self.retry_intervals.len() > INTERVALS_MAX
            || self.retry_intervals.iter().any(|i| i.0 < INTERVAL_MIN)
        {
            return Err(invalid(
                "delivery.retry_intervals",
                format!("at most {INTERVALS_MAX} intervals, each at least {INTERVAL_MIN:?}"),
            ));
        }
        if self.retry_every.0 < INTERVAL_MIN {
            return Err(invalid(
                "delivery.retry_every",
                format!("must be at least {INTERVAL_MIN:?}"),
            ));
        }
        match self.schedule().check() {
            Ok(()) => {}
            Err(e @ ScheduleError::JitterTooLarge(_)) => {
                return Err(invalid("delivery.retry_jitter_percent", e.to_string()))
            }
            Err(e @ ScheduleError::MaxAgeTooShort) => {
                return Err(invalid("delivery.max_age", e.to_string()))
            }
            // Ruled out above; reported against the list if the rules ever diverge.
            Err(e) => return Err(invalid("delivery.retry_intervals", e.to_string())),
        }
        if !self.delay_warning.0.is_zero() && self.delay_warning.0 >= self.max_age.0 {
            return Err(relation(
                "delivery.delay_warning",
                "delivery.max_age",
                format!(
                    "delivery.delay_warning ({}) is not shorter than delivery.max_age ({}): no notice could be sent; use \"0\" to turn notices off",
                    self.delay_warning, self.max_age
                ),
            ));
        }
        if self.queued_messages_max == 0 {
            return Err(invalid(
                "delivery.queued_messages_max",
                "must be at least 1",
            ));
        }
        if self.queued_bytes_max.0 == 0 {
            return Err(invalid(
                "delivery.queued_bytes_max",
                "must be at least 1 octet",
            ));
        }
        if self.destination_connections_max == 0 {
            return Err(invalid(
                "delivery.destination_connections_max",
                "must be at least 1",
            ));
        }
        if self.destination_transactions_max == 0 {
            return Err(invalid(
                "delivery.destination_transactions_max",
                "must be at least 1",
            ));
        }
        if self.destination_transactions_max > self.destination_connections_max {
            return Err(relation(
                "delivery.destination_transactions_max",
                "delivery.destination_connections_max",
                format!(
                    "delivery.destination_transactions_max ({}) is more than delivery.destination_connections_max ({}): each transaction needs its own connection",
                    self.destination_transactions_max, self.destination_connections_max
                ),
            ));
        }
        if self.destinations_max == 0 {
            return Err(invalid("delivery.destinations_max", "must be at least 1"));
        }
        if self.dsn_original_max.0 > DSN_ORIGINAL_CEILING {
            return Err(invalid(
                "delivery.dsn_original_max",
                format!("at most {}", ByteSize(DSN_ORIGINAL_CEILING)),
            ));
        }
        if self.mx_hosts_max == 0 || self.mx_hosts_max > 100 {
            return Err(invalid("delivery.mx_hosts_max", "must be 1–100"));
        }
        if self.mx_addresses_max == 0 || self.mx_addresses_max > 100 {
            return Err(invalid("delivery.mx_addresses_max", "must be 1–100"));
        }
        if self.connect_timeout.0.is_zero()
            || self.connect_timeout.0 > std::time::Duration::from_secs(600)
        {
            return Err(invalid(
                "delivery.connect_timeout",
                "must be more than 0 and at most 10m",
            ));
        }
        if self.recipients_per_transaction_max == 0 || self.recipients_per_transaction_max > 10_000
        {
            return Err(invalid(
                "delivery.recipients_per_transaction_max",
                "must be 1–10000",
            ));
        }
        let ten_minutes = std::time::Duration::from_secs(600);
        for (key, value) in [
            ("delivery.handoff_patience", self.handoff_patience.0),
            (
                "delivery.notice_retry_interval",
                self.notice_retry_interval.0,
            ),
        ] {
            if value.is_zero() || value > ten_minutes {
                return Err(invalid(key, "must be more than 0 and at most 10m"));
            }
        }
        if self.notice_attempts_max == 0 || self.notice_attempts_max > 1000 {
            return Err(invalid("delivery.notice_attempts_max", "must be 1–1000"));
        }
        if self.reconcile_interval.0 < std::time::Duration::from_secs(1)
            || self.reconcile_interval.0 > std::time::Duration::from_secs(3600)
        {
            return Err(invalid(
                "delivery.reconcile_interval",
                "must be at least 1s and at most 1h",
            ));
        }
        if let Some(name) = &self.helo_name {
            if !valid_domain(name) {
                return Err(invalid(
                    "delivery.helo_name",
                    format!("`{name}` is not a valid host name (letters, digits, '-' and '.')"),
                ));
            }
        }
        Ok(())
    }

    pub fn schedule(&self) -> RetrySchedule {
        RetrySchedule {
            intervals: self.retry_intervals.iter().map(|i| i.0).collect(),
            repeat: self.retry_every.0,
            jitter_percent: self.retry_jitter_percent,
            max_age: self.max_age.0,
            delay_warning: (!self.delay_warning.0.is_zero()).then_some(self.delay_warning.0),
        }
    }

    /// Hand-off patience, notice retries and the reconciliation, for the delivery runtime.
    pub fn upkeep(&self) -> Upkeep {
        Upkeep {
            handoff_patience: self.handoff_patience.0,
            notice_retry: self.notice_retry_interval.0,
            notice_attempts_max: self.notice_attempts_max,
            reconcile_every: self.reconcile_interval.0,
        }
    }

    pub fn destination_limits(&self) -> DestinationLimits {
        DestinationLimits {
            connections_max: self.destination_connections_max,
            transactions_max: self.destination_transactions_max,
            messages_per_minute: self.destination_messages_per_minute,
        }
    }

    /// The limits for one of `cores` cores: an equal share, at least one message each.
    pub fn backpressure_limits(&self, cores: usize) -> BackpressureLimits {
        let cores = u64::try_from(cores.max(1)).unwrap_or(u64::MAX);
        BackpressureLimits {
            messages_max: (self.queued_messages_max / cores).max(1),
            bytes_max: (self.queued_bytes_max.0 / cores).max(1),
        }
    }

    pub fn dsn_policy(&self) -> DsnPolicy {
        DsnPolicy {
            delay_without_notify: self.delay_notice_without_notify,
        }
    }

    pub fn dsn_return_max(&self) -> usize {
        usize::try_from(self.dsn_original_max.0).unwrap_or(usize::MAX)
    }

    pub fn resolve_limits(&self) -> ResolveLimits {
        ResolveLimits {
            hosts_max: self.mx_hosts_max,
            addresses_max: self.mx_addresses_max,
        }
    }

    /// The SMTP client's settings: our EHLO name (`helo_name`, else `hostname`) and the
    /// recipients per transaction; the rest are the client's own defaults.
    pub fn client_config(&self, hostname: &str) -> ClientConfig {
        ClientConfig {
            helo_name: self
                .helo_name
                .clone()
                .unwrap_or_else(|| hostname.to_string()),
            max_recipients_per_transaction: self.recipients_per_transaction_max,
            own_hostname: Some(hostname.to_string()),
            ..ClientConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[derive(Deserialize, Serialize, Debug, PartialEq)]
    struct File {
        #[serde(default)]
        delivery: DeliverySection,
    }

    /// The module doc's TOML, verbatim.
    const DOC_TOML: &str = r#"
[delivery]
retry_intervals = ["1m", "5m", "10m", "30m", "1h"]  # waits after the 1st, 2nd, … failure
retry_every = "2h"                # then this, until max_age
retry_jitter_percent = 10         # each wait ± up to 10%
max_age = "5d"                    # then bounce (enforced for every kind of wait)
delay_warning = "4h"              # one delay notice after this; "0" = never
delay_notice_without_notify = true  # delay notices for recipients without NOTIFY=
queued_messages_max = 1000000     # ingest answers 452 4.3.1 beyond this …
queued_bytes_max = "8GiB"         # … or beyond this
destination_connections_max = 20
destination_transactions_max = 20
destination_messages_per_minute = 0  # 0 = no rate limit
destination_spread = true         # every core may work a destination (each with a share of its limits)
destinations_max = 100000         # per core
dsn_original_max = "50kB"         # octets of the original returned in a notice
mx_hosts_max = 10                 # MX hosts looked up per destination
mx_addresses_max = 5              # addresses tried per delivery attempt
connect_timeout = "30s"           # per address tried
recipients_per_transaction_max = 100  # RCPTs in one outbound transaction
tls_failure_hold = "1h"           # plaintext to a destination whose opportunistic TLS failed; "0" = never hold
handoff_patience = "30s"          # a hand-off waits this long for room in a full mesh queue
notice_retry_interval = "5s"      # a notice the spool refused is stored again after this …
notice_attempts_max = 12          # … this many times, then the attempt is repeated later
reconcile_interval = "1m"         # after a drop, pending mail no core holds is queued again
"#;

    #[test]
    fn the_documented_toml_is_the_default() {
        let file: File = toml::from_str(DOC_TOML).unwrap();
        assert_eq!(file.delivery, DeliverySection::default());
        assert_eq!(file.delivery.check(), Ok(()));
        assert_eq!(file.delivery.schedule(), RetrySchedule::default());
        let empty: File = toml::from_str("").unwrap();
        assert_eq!(empty.delivery, DeliverySection::default());
        let text = toml::to_string(&file).unwrap();
        assert_eq!(toml::from_str::<File>(&text).unwrap(), file);
    }

    #[test]
    fn a_short_test_schedule_is_accepted() {
        let file: File = toml::from_str(
            "[delivery]\nretry_intervals = [\"200ms\", \"1s\"]\nretry_every = \"2s\"\nmax_age = \"30s\"\ndelay_warning = \"0\"\n",
        )
        .unwrap();
        assert_eq!(file.delivery.check(), Ok(()));
        let s = file.delivery.schedule();
        assert_eq!(
            s.intervals,
            [Duration::from_millis(200), Duration::from_secs(1)]
        );
        assert_eq!(s.delay_warning, None);
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = toml::from_str::<File>("[delivery]\nmax_lifetime = \"5d\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_lifetime"), "{err}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases: Vec<(&str, DeliverySection)> = vec![
            (
                "retry_intervals",
                DeliverySection {
                    retry_intervals: vec![Interval(Duration::from_millis(1))],
                    ..Default::default()
                },
            ),
            (
                "retry_intervals",
                DeliverySection {
                    retry_intervals: vec![Interval::secs(60); 33],
                    ..Default::default()
                },
            ),
            (
                "retry_every",
                DeliverySection {
                    retry_every: Interval(Duration::ZERO),
                    ..Default::default()
                },
            ),
            (
                "retry_jitter_percent",
                DeliverySection {
                    retry_jitter_percent: 60,
                    ..Default::default()
                },
            ),
            (
                "max_age",
                DeliverySection {
                    max_age: Interval::secs(30),
                    ..Default::default()
                },
            ),
            (
                "delay_warning",
                DeliverySection {
                    delay_warning: Interval::secs(6 * 24 * 3600),
                    ..Default::default()
                },
            ),
            (
                "queued_messages_max",
                DeliverySection {
                    queued_messages_max: 0,
                    ..Default::default()
                },
            ),
            (
                "destination_transactions_max",
                DeliverySection {
                    destination_transactions_max: 21,
                    ..Default::default()
                },
            ),
            (
                "dsn_original_max",
                DeliverySection {
                    dsn_original_max: ByteSize(ByteSize::GIB),
                    ..Default::default()
                },
            ),
            (
                "mx_addresses_max",
                DeliverySection {
                    mx_addresses_max: 0,
                    ..Default::default()
                },
            ),
            (
                "handoff_patience",
                DeliverySection {
                    handoff_patience: Interval(Duration::ZERO),
                    ..Default::default()
                },
            ),
            (
                "notice_retry_interval",
                DeliverySection {
                    notice_retry_interval: Interval::secs(3600),
                    ..Default::default()
                },
            ),
            (
                "notice_attempts_max",
                DeliverySection {
                    notice_attempts_max: 0,
                    ..Default::default()
                },
            ),
            (
                "reconcile_interval",
                DeliverySection {
                    reconcile_interval: Interval(Duration::from_millis(10)),
                    ..Default::default()
                },
            ),
        ];
        for (key, config) in cases {
            let err = config.check().unwrap_err();
            assert_eq!(err.key, format!("delivery.{key}"), "{err}");
            assert!(err.to_string().starts_with(&format!("`delivery.{key}`")));
        }
    }

    #[test]
    fn backpressure_is_split_over_cores() {
        let c = DeliverySection::default();
        assert_eq!(c.backpressure_limits(4).messages_max, 250_000);
        assert_eq!(c.backpressure_limits(0).messages_max, 1_000_000);
        assert_eq!(c.backpressure_limits(4).bytes_max, 2 * ByteSize::GIB);
        let tiny = DeliverySection {
            queued_messages_max: 1,
            ..Default::default()
        };
        assert_eq!(tiny.backpressure_limits(64).messages_max, 1);
    }
}
