//! `[openpgp]`: checks of PGP/MIME-signed arriving mail (RFC 3156 §5) against the relay's
//! own users' keys and the sender domain's Web Key Directory.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::units::Interval;
use super::{invalid, SectionError};

/// `[openpgp]`: OpenPGP signatures of mail for local users are checked against the key the
/// From address has here (`relay user key`) or, for other senders, the key its domain
/// publishes by WKD (draft-koch-openpgp-webkey-service); the result goes into our
/// `Authentication-Results` field. A signature never refuses mail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpenpgpSection {
    /// Check OpenPGP signatures of mail for local users.
    pub verify: bool,
    /// Look the signer's key up in its domain's Web Key Directory when the relay does not
    /// hold it (one HTTPS GET, advanced method first).
    pub wkd: bool,
    /// How long one WKD lookup may take, both methods together; past it the result is
    /// `temperror` and the message is delivered all the same.
    pub wkd_timeout: Interval,
    /// How long a WKD answer is kept: a key found, and "no key" (positive and negative).
    /// Failures (timeouts, server errors) are not kept.
    pub wkd_cache_ttl: Interval,
    /// Addresses whose answers are kept at most (the oldest go first).
    pub wkd_cache_max: usize,
    /// For private deployments and tests: extra trust anchors (PEM) for the WKD servers'
    /// certificates, added to the web PKI roots. Relative to the config file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wkd_ca_file: Option<PathBuf>,
    /// For private deployments and tests: WKD host name → socket address, instead of DNS
    /// and port 443. When set, only these hosts are asked: any other host counts as one
    /// that does not resolve.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub wkd_resolve: BTreeMap<String, SocketAddr>,
}

impl Default for OpenpgpSection {
    fn default() -> Self {
        OpenpgpSection {
            verify: true,
            wkd: true,
            wkd_timeout: Interval::secs(5),
            wkd_cache_ttl: Interval::secs(3600),
            wkd_cache_max: 10_000,
            wkd_ca_file: None,
            wkd_resolve: BTreeMap::new(),
        }
    }
}

impl OpenpgpSection {
    pub fn check(&self) -> Result<(), SectionError> {
        if self.wkd_timeout.0.is_zero() || self.wkd_timeout.0 > Duration::from_secs(60) {
            return Err(invalid(
                "openpgp.wkd_timeout",
                "must be more than 0 and at most 1m (the sender waits for the reply)",
            ));
        }
        if self.wkd_cache_max == 0 || self.wkd_cache_max > 1_000_000 {
            return Err(invalid("openpgp.wkd_cache_max", "must be 1 to 1000000"));
        }
        if self
            .wkd_ca_file
            .as_ref()
            .is_some_and(|file| file.as_os_str().is_empty())
        {
            return Err(invalid("openpgp.wkd_ca_file", "must not be empty"));
        }
        if let Some(host) = self
            .wkd_resolve
            .keys()
            .find(|host| !super::valid_domain(host))
        {
            return Err(invalid(
                "openpgp.wkd_resolve",
                format!("`{host}` is not a host name"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError};

    #[test]
    fn defaults_and_values() {
        let config = Config::parse("", "t").expect("valid");
        assert!(config.openpgp.verify && config.openpgp.wkd && config.smime.verify);
        assert_eq!(config.openpgp.wkd_timeout.0.as_secs(), 5);
        let config = Config::parse(
            "[openpgp]\nwkd_timeout = \"2s\"\nwkd_cache_ttl = \"10m\"\n\
             [openpgp.wkd_resolve]\n\"openpgpkey.example.net\" = \"127.0.0.1:8443\"\n\
             [smime]\nca_file = \"ca.pem\"\n",
            "t",
        )
        .expect("valid");
        assert_eq!(config.openpgp.wkd_cache_ttl.0.as_secs(), 600);
        assert_eq!(
            config.openpgp.wkd_resolve["openpgpkey.example.net"].port(),
            8443
        );
        assert!(config.smime.ca_file.is_some());
        let again = Config::parse(&config.to_toml(), "t").expect("round trip");
        assert_eq!(again, config);
    }

    #[test]
    fn bad_values_name_the_key() {
        for (text, key) in [
            ("[openpgp]\nwkd_timeout = \"0s\"\n", "openpgp.wkd_timeout"),
            ("[openpgp]\nwkd_cache_max = 0\n", "openpgp.wkd_cache_max"),
            (
                "[openpgp.wkd_resolve]\n\"bad host\" = \"127.0.0.1:1\"\n",
                "openpgp.wkd_resolve",
            ),
        ] {
            match Config::parse(text, "t") {
                Err(ConfigError::Invalid { key: got, .. }) => assert_eq!(got, key, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
    }
}
