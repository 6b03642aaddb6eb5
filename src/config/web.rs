//! `[web]`: the web mail listeners (plain HTTP on loopback only, HTTPS with the `[tls]`
//! certificate), the session timers and the bounds of what a browser may send.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{invalid, ByteSize, Interval, SectionError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSection {
    /// Plain HTTP listeners; loopback addresses only (a password over plain HTTP beyond the
    /// machine would be readable on the wire). Empty (the default): off.
    pub listen: Vec<SocketAddr>,
    /// HTTPS listeners with the certificate of `[tls]`.
    pub tls_listen: Vec<SocketAddr>,
    /// A session unused this long ends.
    pub session_idle_timeout: Interval,
    /// A session ends this long after its login, used or not.
    pub session_absolute_timeout: Interval,
    /// Logged-in sessions kept at once; a login beyond it ends the least recently used one.
    pub sessions_max: usize,
    /// Threads of the web runtime (HTTP only; the store work runs on its own thread).
    pub threads: usize,
    /// Messages on one page of a folder's list.
    pub page_size: usize,
    /// One request body (a login or a composed message).
    pub request_body_max: ByteSize,
}

impl Default for WebSection {
    fn default() -> Self {
        WebSection {
            listen: Vec::new(),
            tls_listen: Vec::new(),
            session_idle_timeout: Interval(Duration::from_secs(30 * 60)),
            session_absolute_timeout: Interval(Duration::from_secs(12 * 3600)),
            sessions_max: 10_000,
            threads: 2,
            page_size: 50,
            request_body_max: ByteSize(ByteSize::MIB * 25),
        }
    }
}

impl WebSection {
    pub fn enabled(&self) -> bool {
        !self.listen.is_empty() || !self.tls_listen.is_empty()
    }

    /// Checks each value and the relations between them (`tls_listen` against `[tls]` is
    /// checked with the other implicit-TLS listeners).
    pub fn check(&self) -> Result<(), SectionError> {
        if let Some(addr) = self.listen.iter().find(|a| !a.ip().is_loopback()) {
            return Err(invalid(
                "web.listen",
                format!(
                    "{addr} is not a loopback address: plain HTTP would carry passwords in clear; use web.tls_listen"
                ),
            ));
        }
        if self.session_idle_timeout.0.is_zero() {
            return Err(invalid("web.session_idle_timeout", "must be more than 0"));
        }
        if self.session_absolute_timeout.0 < self.session_idle_timeout.0 {
            return Err(invalid(
                "web.session_absolute_timeout",
                "must be at least web.session_idle_timeout",
            ));
        }
        if self.sessions_max == 0 {
            return Err(invalid("web.sessions_max", "must be at least 1"));
        }
        if !(1..=4).contains(&self.threads) {
            return Err(invalid(
                "web.threads",
                "must be 1 to 4 (the web runtime stays small beside the shards)",
            ));
        }
        if !(1..=1000).contains(&self.page_size) {
            return Err(invalid("web.page_size", "must be 1 to 1000"));
        }
        if self.request_body_max.0 < ByteSize::KIB {
            return Err(invalid("web.request_body_max", "must be at least 1KiB"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_on_loopback() {
        let mut web = WebSection {
            listen: vec!["127.0.0.1:8080".parse().unwrap()],
            ..WebSection::default()
        };
        assert!(web.check().is_ok());
        web.listen = vec!["[::1]:8080".parse().unwrap()];
        assert!(web.check().is_ok());
        web.listen = vec!["0.0.0.0:8080".parse().unwrap()];
        let error = web.check().unwrap_err();
        assert_eq!(error.key, "web.listen");
        web.listen = Vec::new();
        web.tls_listen = vec!["0.0.0.0:8443".parse().unwrap()];
        assert!(web.check().is_ok());
    }

    #[test]
    fn timeouts_relate() {
        let web = WebSection {
            session_idle_timeout: Interval(Duration::from_secs(600)),
            session_absolute_timeout: Interval(Duration::from_secs(60)),
            ..WebSection::default()
        };
        assert_eq!(web.check().unwrap_err().key, "web.session_absolute_timeout");
        assert!(!WebSection::default().enabled());
    }
}
