//! `[tls]`: the server certificate and the outbound trust anchors.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{defaults, invalid, Interval, SectionError};

/// `[tls]`: the server certificate for STARTTLS/STLS and the implicit-TLS listeners
/// (`smtp.tls_listen`, `pop3.tls_listen`), and what outbound delivery trusts. Without `cert`
/// and `key` the relay offers no TLS (STARTTLS is not advertised). Paths relative to the
/// config file are resolved next to it. SIGHUP reads the files again (see `server::run`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    /// PEM certificate chain, leaf first.
    pub cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, RSA or SEC1 EC) of the leaf certificate.
    pub key: Option<PathBuf>,
    /// How long a client may take to complete a handshake after STARTTLS/STLS or connect.
    pub handshake_timeout: Interval,
    /// Extra trust anchors (PEM) for outbound `tls = "required"`, added to the webpki roots.
    pub ca_file: Option<PathBuf>,
}

impl Default for TlsSection {
    fn default() -> Self {
        TlsSection {
            cert: None,
            key: None,
            handshake_timeout: defaults::TLS_HANDSHAKE_TIMEOUT,
            ca_file: None,
        }
    }
}

impl TlsSection {
    /// Checks each value and the relations between them.
    pub fn check(&self) -> Result<(), SectionError> {
        if self.cert.is_some() != self.key.is_some() {
            return Err(invalid(
                if self.cert.is_some() {
                    "tls.key"
                } else {
                    "tls.cert"
                },
                "tls.cert and tls.key go together: name both files or neither",
            ));
        }
        if self.handshake_timeout.0.is_zero() {
            return Err(invalid("tls.handshake_timeout", "must be more than 0"));
        }
        Ok(())
    }

    /// The server offers TLS (both files named).
    pub fn server_enabled(&self) -> bool {
        self.cert.is_some() && self.key.is_some()
    }
}
