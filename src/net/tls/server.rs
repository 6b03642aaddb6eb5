//! The server side: one certificate chain and key for every listener, read from PEM files.
//! Connections take the certificate current at their handshake; [`ServerTls::reload`]
//! replaces it for later handshakes without touching connections already up.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::sessions::SessionTable;
use super::TlsError;

/// Sessions kept for resumption (rustls's default keeps 256): each connection leaves two
/// TLS 1.3 tickets or one TLS 1.2 session id, an entry of a few hundred bytes each (about
/// 4 MiB when full); the oldest go first ([`SessionTable`]: rustls's own table scans its
/// eviction order on every resumption, too slow at this size).
const SESSION_CACHE_ENTRIES: usize = 16_384;

/// The server's TLS settings, shared by every shard.
#[derive(Debug, Clone)]
pub struct ServerTls {
    config: Arc<rustls::ServerConfig>,
    certificate: Arc<CurrentCertificate>,
}

/// The certificate handed to each new handshake, and where it came from.
#[derive(Debug)]
struct CurrentCertificate {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for CurrentCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // A poisoned lock means a reload panicked mid-swap; the value is still a whole Arc.
        let current = match self.current.read() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        Some(Arc::clone(&current))
    }
}

impl ServerTls {
    /// Loads the chain (leaf first) and its key; errors name the file.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<ServerTls, TlsError> {
        let provider = super::provider();
        let key = load_certified_key(cert_path, key_path, &provider)?;
        let certificate = Arc::new(CurrentCertificate {
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            current: RwLock::new(Arc::new(key)),
        });
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&certificate) as Arc<dyn ResolvesServerCert>);
        // Resumption: a client back while its session is kept skips the certificate
        // signature, the dearest part of a handshake for mail that comes one message per
        // connection. Stateful (TLS 1.3 tickets and TLS 1.2 session ids name entries of one
        // table shared by the cores): measured side by side, stateless tickets cost one
        // message per connection about 20% of its rate (BENCHMARKS.md, session 13), and the
        // table is large enough for thousands of returning senders.
        config.session_storage = Arc::new(SessionTable::new(SESSION_CACHE_ENTRIES));
        Ok(ServerTls {
            config: Arc::new(config),
            certificate,
        })
    }

    /// Reads the files again; on success later handshakes use the new certificate, on error
    /// the old one stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let key = load_certified_key(
            &self.certificate.cert_path,
            &self.certificate.key_path,
            &super::provider(),
        )?;
        let mut current = match self.certificate.current.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        *current = Arc::new(key);
        Ok(())
    }

    pub fn config(&self) -> Arc<rustls::ServerConfig> {
        Arc::clone(&self.config)
    }

    pub fn cert_path(&self) -> &Path {
        &self.certificate.cert_path
    }
}

fn load_certified_key(
    cert_path: &Path,
    key_path: &Path,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let read_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TlsError::Read { path, source }
    };
    let chain = CertificateDer::pem_file_iter(cert_path)
        .map_err(read_error(cert_path))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_error(cert_path))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_path.to_path_buf(),
        });
    }
    let key = match PrivateKeyDer::from_pem_file(key_path) {
        Ok(key) => key,
        Err(rustls::pki_types::pem::Error::NoItemsFound) => {
            return Err(TlsError::NoKey {
                path: key_path.to_path_buf(),
            })
        }
        Err(source) => return Err(read_error(key_path)(source)),
    };
    CertifiedKey::from_der(chain, key, provider).map_err(|source| TlsError::Unusable {
        cert: cert_path.to_path_buf(),
        key: key_path.to_path_buf(),
        source,
    })
}
