//! `[admin]`: the operator's HTTP listener (metrics, status, queue control).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::{defaults, invalid, SectionError};

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

impl AdminSection {
    /// Checks that the listener is on loopback.
    pub fn check(&self) -> Result<(), SectionError> {
        if !admin_listen_allowed(&self.listen) {
            return Err(invalid(
                "admin.listen",
                format!(
                    "{} is not a loopback address: the admin endpoint has no authentication, \
                     so it listens on 127.0.0.0/8 or [::1] only (use a reverse proxy to expose it)",
                    self.listen
                ),
            ));
        }
        Ok(())
    }
}

/// Loopback only: 127.0.0.0/8 or ::1 (the admin endpoint has no authentication).
pub fn admin_listen_allowed(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{defaults, Config, ConfigError};

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "test.toml")
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
}
