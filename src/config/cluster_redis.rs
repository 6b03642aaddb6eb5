//! `[cluster.redis]`: the Redis server holding the limits shared by the nodes and their
//! membership leases.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{invalid, Interval, SectionError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSection {
    /// `redis://host:port/db`, without a password (that goes in `password_file`). Absent:
    /// limits stay per node and there is no membership.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A 0600 file holding the password (`AUTH`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// How long one decision may wait for Redis before the failure policy applies.
    pub timeout: Interval,
    /// What a limit decides while Redis does not answer: `open` (admit, the node's own
    /// tables still apply) or `closed` (refuse with a temporary error).
    pub failure: FailurePolicy,
    /// `failure` for one kind of limit only (unset: `failure`): connections per client,
    /// messages per client, login failures per client, destination throttles (messages per
    /// minute and connections per destination).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_connections: Option<FailurePolicy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_messages: Option<FailurePolicy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_logins: Option<FailurePolicy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_destinations: Option<FailurePolicy>,
}

/// The kinds of shared limit, each with its own failure policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    Connections,
    Messages,
    Logins,
    /// `delivery.destination_messages_per_minute` and `destination_connections_max`.
    Destinations,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FailurePolicy {
    #[default]
    Open,
    Closed,
}

impl Default for RedisSection {
    fn default() -> Self {
        RedisSection {
            url: None,
            password_file: None,
            timeout: Interval(Duration::from_millis(200)),
            failure: FailurePolicy::Open,
            failure_connections: None,
            failure_messages: None,
            failure_logins: None,
            failure_destinations: None,
        }
    }
}

impl RedisSection {
    /// The failure policy of `kind`.
    pub fn failure_of(&self, kind: LimitKind) -> FailurePolicy {
        let specific = match kind {
            LimitKind::Connections => self.failure_connections,
            LimitKind::Messages => self.failure_messages,
            LimitKind::Logins => self.failure_logins,
            LimitKind::Destinations => self.failure_destinations,
        };
        specific.unwrap_or(self.failure)
    }

    pub fn check(&self) -> Result<(), SectionError> {
        if let Some(url) = &self.url {
            let Some(rest) = url.strip_prefix("redis://") else {
                return Err(invalid("cluster.redis.url", "must start with redis://"));
            };
            if rest.contains('@') {
                return Err(invalid(
                    "cluster.redis.url",
                    "must not carry credentials: put the password in cluster.redis.password_file",
                ));
            }
        }
        if self.timeout.0.is_zero() {
            return Err(invalid("cluster.redis.timeout", "must be above zero"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_falls_back_to_the_general_policy() {
        let section: RedisSection = toml::from_str(
            "url = \"redis://127.0.0.1:6379/0\"\nfailure = \"closed\"\nfailure_connections = \"open\"\n",
        )
        .unwrap();
        assert_eq!(
            section.failure_of(LimitKind::Connections),
            FailurePolicy::Open
        );
        assert_eq!(
            section.failure_of(LimitKind::Messages),
            FailurePolicy::Closed
        );
        assert_eq!(section.failure_of(LimitKind::Logins), FailurePolicy::Closed);
        assert_eq!(
            section.failure_of(LimitKind::Destinations),
            FailurePolicy::Closed
        );
        assert!(section.check().is_ok());
        let default = RedisSection::default();
        assert_eq!(default.failure_of(LimitKind::Logins), FailurePolicy::Open);
        assert!(toml::from_str::<RedisSection>("failure_messages = \"maybe\"").is_err());
        let closed: RedisSection = toml::from_str("failure_destinations = \"closed\"").unwrap();
        assert_eq!(
            closed.failure_of(LimitKind::Destinations),
            FailurePolicy::Closed
        );
        assert_eq!(closed.failure_of(LimitKind::Messages), FailurePolicy::Open);
    }
}
