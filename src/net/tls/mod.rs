//! TLS configuration: the server's certificate (loaded from PEM, swapped on SIGHUP) and the
//! client configurations of outbound delivery. rustls with the `ring` provider does the
//! cryptography; [`connection`] drives it over the engine's connections.
//!
//! Exposure: the PEM files are the operator's; a bad file is a start-up error naming the
//! path, and a bad file at reload keeps the certificate already in use.

pub mod client;
pub mod cluster;
pub mod connection;
pub mod server;
pub mod sessions;

use std::path::PathBuf;
use std::sync::Arc;

pub use client::ClientTls;
pub use cluster::{ClusterTls, XFER_ALPN};
pub use connection::{accept, HandshakeFailure, TlsConnection, TlsSummary};
pub use server::ServerTls;

/// Why a certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{path}: no certificate in the file (PEM \"BEGIN CERTIFICATE\" expected)")]
    NoCertificate { path: PathBuf },
    #[error("{path}: no private key in the file (PEM PKCS#8, RSA or EC key expected)")]
    NoKey { path: PathBuf },
    #[error("{cert} and {key}: {source}")]
    Unusable {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error("{path}: not a usable CA certificate: {source}")]
    BadCa {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The cryptography provider: ring (no C toolchain beyond `cc`, no cmake).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
