//! Where loadgen may send traffic: loopback only, unless `--allow-remote`.
//!
//! The check happens before any socket exists. Without `--allow-remote` a host name other
//! than `localhost` is refused without being resolved, so not even a DNS query leaves the
//! machine.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

/// True for 127.0.0.0/8, ::1 and IPv4-mapped loopback (::ffff:127.x.y.z).
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Resolves `HOST:PORT` (`what` names it in errors: "target", "listen address").
pub fn resolve(text: &str, what: &str, allow_remote: bool) -> Result<SocketAddr, String> {
    let addr = match text.parse::<SocketAddr>() {
        Ok(addr) => addr,
        Err(_) => {
            let (host, port) = text
                .rsplit_once(':')
                .ok_or_else(|| format!("{what} `{text}`: expected HOST:PORT"))?;
            let port: u16 = port
                .parse()
                .map_err(|_| format!("{what} `{text}`: `{port}` is not a port"))?;
            if host.eq_ignore_ascii_case("localhost") {
                SocketAddr::from(([127, 0, 0, 1], port))
            } else if !allow_remote {
                return Err(format!(
                    "refusing {what} `{text}`: without --allow-remote only loopback addresses \
                     (127.0.0.0/8, [::1], localhost) are allowed, and host names are not resolved"
                ));
            } else {
                (host, port)
                    .to_socket_addrs()
                    .map_err(|e| format!("{what} `{text}`: {e}"))?
                    .next()
                    .ok_or_else(|| format!("{what} `{text}`: no address"))?
            }
        }
    };
    if !allow_remote && !is_loopback(addr.ip()) {
        return Err(format!(
            "refusing {what} {addr}: not a loopback address; pass --allow-remote to load a \
             host you operate"
        ));
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_only_by_default() {
        assert_eq!(
            resolve("127.0.0.1:25", "target", false),
            Ok("127.0.0.1:25".parse().unwrap())
        );
        assert!(resolve("127.3.4.5:25", "target", false).is_ok());
        assert!(resolve("[::1]:25", "target", false).is_ok());
        assert!(resolve("[::ffff:127.0.0.1]:25", "target", false).is_ok());
        assert_eq!(
            resolve("localhost:2525", "target", false),
            Ok("127.0.0.1:2525".parse().unwrap())
        );
        for remote in [
            "192.0.2.1:25",
            "0.0.0.0:25",
            "[::]:25",
            "10.0.0.1:25",
            "[2001:db8::1]:25",
            "mail.example.com:25",
        ] {
            let error = resolve(remote, "target", false).unwrap_err();
            assert!(error.contains("--allow-remote"), "{remote}: {error}");
        }
        assert!(resolve("192.0.2.1:25", "target", true).is_ok());
        assert!(resolve("127.0.0.1", "target", false).is_err());
        assert!(resolve("localhost:x", "target", false).is_err());
    }
}
