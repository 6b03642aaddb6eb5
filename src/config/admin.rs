//! `[admin]`: the operator's endpoint (metrics, status, queue control): a Unix socket by
//! default, a loopback TCP listener on request.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{invalid, SectionError};

/// The file name of the admin socket inside `spool.dir` when `admin.socket` is not set.
pub const DEFAULT_SOCKET_NAME: &str = "admin.sock";

/// Longest path a Unix socket can be bound to (`sun_path` is 108 bytes with its NUL).
pub const SOCKET_PATH_MAX: usize = 107;

/// `[admin]`: `/metrics` (Prometheus text), `/stat` (what `relay stat` prints) and the queue
/// control (`relay queue`).
///
/// - `socket` (default `<spool.dir>/admin.sock`): a Unix socket, mode 0600, so only the
///   relay's own user (and root) can connect; `relay stat` and `relay queue` use it. Every
///   route, no token.
/// - `listen` (default: none): a loopback TCP listener, for Prometheus. `/metrics` answers
///   anyone who can connect; every other route needs `Authorization: Bearer <token>` with the
///   token from `token_file` (without one they answer 403). Every request must name a
///   loopback host (`Host: localhost`, `127.0.0.1:9025`, `[::1]`; DNS rebinding) and a change
///   must be a POST with `Content-Type: application/json` (a cross-site form cannot send
///   that). Port 0 picks a free port (logged as `listening protocol="admin"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    /// `false` runs neither the socket nor the listener (no metrics endpoint; `relay stat`
    /// cannot reach the server; `relay queue list|show` read the spool only when it stops).
    pub enabled: bool,
    /// The admin socket's path (default `<spool.dir>/admin.sock`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
    /// The TCP listener: one loopback address (127.0.0.0/8 or `[::1]`); none by default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// A file holding the bearer token for the TCP listener's routes other than `/metrics`
    /// (mode 0600 or stricter: the relay refuses to start otherwise). Read at start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

impl Default for AdminSection {
    fn default() -> Self {
        AdminSection {
            enabled: true,
            socket: None,
            listen: None,
            token_file: None,
        }
    }
}

impl AdminSection {
    /// Checks that the listener is on loopback and that a socket path fits `sun_path`.
    pub fn check(&self) -> Result<(), SectionError> {
        if let Some(listen) = &self.listen {
            if !admin_listen_allowed(listen) {
                return Err(invalid(
                    "admin.listen",
                    format!(
                        "{listen} is not a loopback address: the admin listener serves \
                         /metrics without authentication, so it listens on 127.0.0.0/8 or \
                         [::1] only (use a reverse proxy to expose it)"
                    ),
                ));
            }
        }
        if let Some(socket) = &self.socket {
            check_socket_path(socket).map_err(|message| invalid("admin.socket", message))?;
        }
        Ok(())
    }

    /// Where the admin socket is: `admin.socket`, or `admin.sock` in the spool directory.
    pub fn socket_path(&self, spool_dir: &Path) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(|| spool_dir.join(DEFAULT_SOCKET_NAME))
    }
}

/// A path a Unix socket can be bound to: not empty, not a directory name, short enough.
pub fn check_socket_path(path: &Path) -> Result<(), String> {
    let len = path.as_os_str().len();
    if len == 0 || path.file_name().is_none() {
        return Err(format!("{:?} does not name a file", path.display()));
    }
    if len > SOCKET_PATH_MAX {
        return Err(format!(
            "{} is {len} bytes long; a Unix socket path has at most {SOCKET_PATH_MAX} \
             (set admin.socket to a shorter path)",
            path.display()
        ));
    }
    Ok(())
}

/// Loopback only: 127.0.0.0/8 or ::1 (`/metrics` has no authentication).
pub fn admin_listen_allowed(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ConfigError};

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "test.toml")
    }

    #[test]
    fn the_default_is_the_socket_in_the_spool_and_no_tcp_listener() {
        let config = parse("").expect("default");
        assert!(config.admin.enabled);
        assert_eq!(config.admin.listen, None);
        assert_eq!(config.admin.token_file, None);
        assert_eq!(
            config.admin.socket_path(&config.spool.dir),
            config.spool.dir.join("admin.sock")
        );
        let set = parse("[admin]\nsocket = \"/run/relay/admin.sock\"\n").expect("valid");
        assert_eq!(
            set.admin.socket_path(Path::new("/elsewhere")),
            PathBuf::from("/run/relay/admin.sock")
        );
        let long = format!("[admin]\nsocket = \"/{}\"\n", "x".repeat(200));
        assert!(matches!(
            parse(&long),
            Err(ConfigError::Invalid {
                key: "admin.socket",
                ..
            })
        ));
    }

    #[test]
    fn admin_listens_on_loopback_only() {
        for good in ["127.0.0.1:0", "127.1.2.3:9025", "[::1]:9025"] {
            let text = format!("[admin]\nlisten = {good:?}\n");
            let config = parse(&text).unwrap_or_else(|e| panic!("{good}: {e}"));
            assert_eq!(
                config.admin.listen,
                Some(good.parse::<SocketAddr>().expect("addr"))
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
