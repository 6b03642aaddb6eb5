//! Who may use which admin route, decided per request before any handler runs.
//!
//! - **The socket** (mode 0600, in the spool directory by default): whoever can connect is the
//!   relay's user or root; every route.
//! - **The TCP listener** (loopback): any local process and, through DNS rebinding or a
//!   cross-site request, any web page a local browser shows. So: the `Host` header must name
//!   loopback (`localhost`, `127.x.x.x`, `[::1]`, any port), else 421; `/metrics` needs
//!   nothing more; every other route needs `Authorization: Bearer <token>` (compared in
//!   constant time), else 401 (403 when no token is configured).
//! - **Both**: a POST must carry `Content-Type: application/json`, else 415: an HTML form can
//!   only send form or text types, and a script's JSON POST to another origin needs a CORS
//!   preflight, which this server never answers with permission.
//!
//! The token never reaches a log line or an error message.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use super::AdminResponse;

/// The path the TCP listener serves without a token (Prometheus scrapes).
pub const OPEN_PATH: &str = "/metrics";

/// Shortest token accepted (bytes): a guessable token would make the check decoration.
pub const TOKEN_LEN_MIN: usize = 16;

/// The bearer token of the TCP listener; its bytes are never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(Vec<u8>);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("admin.token_file {path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "admin.token_file {path}: mode {mode:04o} lets group or others read it; \
         `chmod 600 {path}` (the token guards the queue and its mail headers)"
    )]
    Exposed { path: PathBuf, mode: u32 },
    #[error(
        "admin.token_file {path}: the token must be at least {TOKEN_LEN_MIN} printable \
         ASCII characters without spaces (e.g. `openssl rand -hex 32`)"
    )]
    Weak { path: PathBuf },
}

impl AdminToken {
    /// Reads the token from `path`: one line of at least [`TOKEN_LEN_MIN`] visible ASCII
    /// characters; the file must not be accessible to group or others.
    pub fn load(path: &Path) -> Result<AdminToken, TokenError> {
        use std::os::unix::fs::PermissionsExt;
        let read = |source| TokenError::Read {
            path: path.to_path_buf(),
            source,
        };
        let mode = std::fs::metadata(path).map_err(read)?.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(TokenError::Exposed {
                path: path.to_path_buf(),
                mode,
            });
        }
        let bytes = std::fs::read(path).map_err(read)?;
        AdminToken::from_bytes(bytes.trim_ascii()).ok_or_else(|| TokenError::Weak {
            path: path.to_path_buf(),
        })
    }

    /// A token of at least [`TOKEN_LEN_MIN`] visible ASCII characters.
    pub fn from_bytes(bytes: &[u8]) -> Option<AdminToken> {
        (bytes.len() >= TOKEN_LEN_MIN && bytes.iter().all(|b| b.is_ascii_graphic()))
            .then(|| AdminToken(bytes.to_vec()))
    }

    /// Constant time in the content (the length is not secret).
    fn matches(&self, presented: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        self.0.len() == presented.len() && bool::from(self.0.ct_eq(presented))
    }
}

/// Where a request arrived.
#[derive(Debug, Clone)]
pub enum Transport {
    /// The 0600 Unix socket.
    Socket,
    /// The loopback TCP listener, with the token that opens routes other than `/metrics`.
    Tcp { token: Option<AdminToken> },
}

/// The request facts the decision needs.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub host: Option<&'a str>,
    pub authorization: Option<&'a str>,
    pub content_type: Option<&'a str>,
}

/// `Ok` when the request may reach its handler, else the answer to send instead.
pub fn check(transport: &Transport, facts: &Facts<'_>) -> Result<(), AdminResponse> {
    if let Transport::Tcp { token } = transport {
        if !facts.host.is_some_and(loopback_host) {
            return Err(AdminResponse::text(
                421,
                "misdirected request: the admin listener answers only to a loopback Host \
                 (localhost, 127.0.0.1, [::1])\n",
            ));
        }
        if facts.path != OPEN_PATH {
            let Some(token) = token else {
                return Err(AdminResponse::text(
                    403,
                    "only /metrics is served over TCP without admin.token_file; use the admin \
                     socket (relay stat, relay queue)\n",
                ));
            };
            let presented = facts.authorization.and_then(bearer);
            if !presented.is_some_and(|p| token.matches(p.as_bytes())) {
                let mut response = AdminResponse::text(401, "a valid bearer token is required\n");
                response.www_authenticate = true;
                return Err(response);
            }
        }
    }
    if facts.method == "POST" && !facts.content_type.is_some_and(json_content_type) {
        return Err(AdminResponse::text(
            415,
            "a POST must have Content-Type: application/json\n",
        ));
    }
    Ok(())
}

/// The credentials of `Bearer <token>` (scheme case-insensitive, RFC 6750 §2.1).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim())
        .filter(|t| !t.is_empty())
}

/// `application/json`, parameters allowed (`; charset=utf-8`).
fn json_content_type(value: &str) -> bool {
    value
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

/// A `Host` header naming loopback: `localhost`, an IPv4 address in 127.0.0.0/8, or `[::1]`,
/// each with or without a port.
pub fn loopback_host(value: &str) -> bool {
    let value = value.trim();
    let (host_ok, port) = if let Some(rest) = value.strip_prefix('[') {
        let Some((inside, after)) = rest.split_once(']') else {
            return false;
        };
        let port = match after {
            "" => None,
            after => match after.strip_prefix(':') {
                Some(port) => Some(port),
                None => return false,
            },
        };
        let ok = inside.parse::<Ipv6Addr>().is_ok_and(|ip| ip.is_loopback());
        (ok, port)
    } else {
        let (host, port) = match value.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (value, None),
        };
        let ok = host.eq_ignore_ascii_case("localhost")
            || host.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback());
        (ok, port)
    };
    host_ok
        && port
            .is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123";

    fn tcp() -> Transport {
        Transport::Tcp {
            token: AdminToken::from_bytes(TOKEN.as_bytes()),
        }
    }

    fn facts<'a>(method: &'a str, path: &'a str) -> Facts<'a> {
        Facts {
            method,
            path,
            host: Some("127.0.0.1:9025"),
            authorization: None,
            content_type: None,
        }
    }

    fn status(transport: &Transport, facts: Facts<'_>) -> u16 {
        match check(transport, &facts) {
            Ok(()) => 200,
            Err(response) => response.status,
        }
    }

    #[test]
    fn loopback_hosts_with_or_without_port() {
        for good in [
            "localhost",
            "LOCALHOST:9025",
            "127.0.0.1",
            "127.0.0.1:9025",
            "127.8.9.10:1",
            "[::1]",
            "[::1]:9025",
            " localhost ",
        ] {
            assert!(loopback_host(good), "{good}");
        }
        for bad in [
            "",
            "evil.example",
            "evil.example:9025",
            "localhost.evil.example",
            "127.0.0.1.evil.example",
            "10.0.0.1:9025",
            "[::2]:9025",
            "[::ffff:127.0.0.1]",
            "::1",
            "[::1",
            "[::1]x",
            "[::1]:",
            "localhost:",
            "localhost:abc",
            "localhost:99999999",
            "127.0.0.1:9025:1",
        ] {
            assert!(!loopback_host(bad), "{bad:?}");
        }
    }

    #[test]
    fn tcp_needs_a_loopback_host_and_the_token_except_for_metrics() {
        let t = tcp();
        assert_eq!(status(&t, facts("GET", "/metrics")), 200);
        let evil = Facts {
            host: Some("evil.example"),
            ..facts("GET", "/metrics")
        };
        assert_eq!(status(&t, evil), 421);
        let no_host = Facts {
            host: None,
            ..facts("GET", "/metrics")
        };
        assert_eq!(status(&t, no_host), 421);
        assert_eq!(status(&t, facts("GET", "/stat")), 401);
        assert_eq!(status(&t, facts("GET", "/queue/show")), 401);
        assert_eq!(status(&t, facts("GET", "/metrics/x")), 401);
        let bearer = format!("Bearer {TOKEN}");
        let with = |auth: &'static str| Facts {
            authorization: Some(auth),
            ..facts("GET", "/queue")
        };
        assert_eq!(
            status(
                &t,
                Facts {
                    authorization: Some(&bearer),
                    ..facts("GET", "/queue")
                }
            ),
            200
        );
        assert_eq!(status(&t, with("Bearer 0123456789abcdef0124")), 401);
        assert_eq!(status(&t, with("Bearer 0123456789abcdef012")), 401);
        assert_eq!(status(&t, with("Basic 0123456789abcdef0123")), 401);
        assert_eq!(status(&t, with("Bearer")), 401);
        let lower = format!("bearer  {TOKEN} ");
        assert_eq!(
            status(
                &t,
                Facts {
                    authorization: Some(&lower),
                    ..facts("GET", "/queue")
                }
            ),
            200
        );
        // No token configured: only /metrics.
        let open = Transport::Tcp { token: None };
        assert_eq!(status(&open, facts("GET", "/metrics")), 200);
        assert_eq!(
            status(
                &open,
                Facts {
                    authorization: Some(&bearer),
                    ..facts("GET", "/stat")
                }
            ),
            403
        );
    }

    #[test]
    fn posts_need_a_json_content_type_on_both_transports() {
        let bearer = format!("Bearer {TOKEN}");
        for transport in [Transport::Socket, tcp()] {
            let post = |content_type| Facts {
                authorization: Some(&bearer),
                content_type,
                ..facts("POST", "/queue/delete")
            };
            assert_eq!(status(&transport, post(None)), 415);
            for bad in [
                "application/x-www-form-urlencoded",
                "multipart/form-data; boundary=x",
                "text/plain",
                "application/jsonx",
            ] {
                assert_eq!(status(&transport, post(Some(bad))), 415, "{bad}");
            }
            for good in ["application/json", "Application/JSON; charset=utf-8"] {
                assert_eq!(status(&transport, post(Some(good))), 200, "{good}");
            }
        }
        // The socket needs neither Host nor token.
        let bare = Facts {
            host: None,
            ..facts("GET", "/queue/show")
        };
        assert_eq!(status(&Transport::Socket, bare), 200);
    }

    #[test]
    fn tokens_are_loaded_from_private_files_only_and_never_printed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("token");
        std::fs::write(&path, format!("{TOKEN}\n")).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let err = AdminToken::load(&path).expect_err("group-readable");
        assert!(err.to_string().contains("0640"), "{err}");
        assert!(!err.to_string().contains(TOKEN), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let token = AdminToken::load(&path).expect("private");
        assert!(token.matches(TOKEN.as_bytes()));
        assert!(!format!("{token:?}").contains(TOKEN));
        std::fs::write(&path, "short\n").expect("write");
        let err = AdminToken::load(&path).expect_err("weak");
        assert!(matches!(err, TokenError::Weak { .. }), "{err}");
        assert!(matches!(
            AdminToken::load(&dir.path().join("missing")),
            Err(TokenError::Read { .. })
        ));
    }
}
