//! Mutual TLS between cluster nodes (`[cluster]` `cert`, `key`, `ca`): the cluster listener
//! asks every client for a certificate and accepts only one that chains to the cluster CA;
//! a node connecting to a peer presents its own certificate and trusts the cluster CA alone
//! (never the webpki roots), checking the peer's certificate against the peer's cluster
//! address (an IP SAN: the node table names nodes by address, so that is the name a node
//! dials). A peer without a valid certificate fails the handshake, before any SMTP.
//!
//! Exposure: the PEM files are the operator's; a bad file is a start-up error naming the
//! path. Certificates are read once at start (a rotation restarts the node).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

use super::TlsError;

/// The ALPN protocol of the queue transfer (`relay node drain`) on the cluster listener.
pub const XFER_ALPN: &[u8] = b"relay-xfer";

/// Both ends of the cluster's mutual TLS, built once and shared by every core.
#[derive(Debug, Clone)]
pub struct ClusterTls {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

impl ClusterTls {
    /// This node's chain (leaf first) and key, and the CA every node's certificate chains to.
    pub fn load(cert: &Path, key: &Path, ca: &Path) -> Result<ClusterTls, TlsError> {
        let provider = super::provider();
        let roots = Arc::new(load_roots(ca)?);
        let chain = load_chain(cert)?;
        let private = load_key(key)?;
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider))
                .build()
                .map_err(|e| TlsError::Config(rustls::Error::General(e.to_string())))?;
        let unusable = |source| TlsError::Unusable {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            source,
        };
        let mut server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), private.clone_key())
            .map_err(unusable)?;
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, private)
            .map_err(unusable)?;
        // A draining peer asks for the queue-transfer conversation (server::xfer_session);
        // a client that names no protocol gets the SMTP session as before.
        server.alpn_protocols = vec![XFER_ALPN.to_vec()];
        Ok(ClusterTls {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }

    /// For the cluster listener: a client certificate signed by the cluster CA is required.
    pub fn server(&self) -> Arc<rustls::ServerConfig> {
        Arc::clone(&self.server)
    }

    /// For connecting to a peer's cluster listener: presents this node's certificate.
    pub fn client(&self) -> Arc<rustls::ClientConfig> {
        Arc::clone(&self.client)
    }
}

fn load_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read_error = |source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    };
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(read_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_error)?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(chain)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    match PrivateKeyDer::from_pem_file(path) {
        Ok(key) => Ok(key),
        Err(rustls::pki_types::pem::Error::NoItemsFound) => Err(TlsError::NoKey {
            path: path.to_path_buf(),
        }),
        Err(source) => Err(TlsError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn load_roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_chain(path)? {
        roots.add(cert).map_err(|source| TlsError::BadCa {
            path: path.to_path_buf(),
            source,
        })?;
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_that_are_not_certificates_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not PEM\n").unwrap();
        let error = ClusterTls::load(&junk, &junk, &junk).unwrap_err();
        assert!(matches!(error, TlsError::NoCertificate { .. }), "{error}");
        assert!(error.to_string().contains("junk.pem"), "{error}");
    }

    #[test]
    fn a_node_certificate_and_ca_load() {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["a".to_string()]).unwrap();
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress("127.0.0.2".parse().unwrap()));
        let node = params.signed_by(&key, &issuer).unwrap();
        let (cert_path, key_path, ca_path) = (
            dir.path().join("a.pem"),
            dir.path().join("a.key"),
            dir.path().join("ca.pem"),
        );
        std::fs::write(&cert_path, node.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        std::fs::write(&ca_path, ca.pem()).unwrap();
        let tls = ClusterTls::load(&cert_path, &key_path, &ca_path).unwrap();
        assert!(tls.client().client_auth_cert_resolver.has_certs());
        // The key does not match the certificate: refused at start, naming both files.
        let other = dir.path().join("other.key");
        std::fs::write(&other, rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
        let error = ClusterTls::load(&cert_path, &other, &ca_path).unwrap_err();
        assert!(matches!(error, TlsError::Unusable { .. }), "{error}");
    }
}
