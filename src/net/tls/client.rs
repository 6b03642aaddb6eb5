//! The client side: the two rustls configurations of outbound delivery, built once at start
//! and shared by every core.
//!
//! - **Verified** (`tls = "required"`): the webpki roots (Mozilla's set, compiled in by
//!   `webpki-roots`, so no system store is read) plus the PEM certificates of `tls.ca_file`;
//!   the certificate must chain to one of them and name the next hop (its MX or route host
//!   name, or its IP address when the route names an address).
//! - **Opportunistic** (`tls = "opportunistic"`, RFC 7435): any certificate is accepted,
//!   since an MX host's certificate rarely matches and refusing it would only push the mail
//!   to plaintext. The handshake signature is still checked against the certificate's key,
//!   so the session is encrypted to whoever holds that key rather than to no one in
//!   particular; what is given up is only the name check, i.e. protection from an active
//!   attacker, which opportunistic security never claimed.
//!
//! Exposure: the CA file is the operator's; a bad file is a start-up error naming the path.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::TlsError;

/// What outbound delivery uses for STARTTLS.
#[derive(Debug, Clone)]
pub struct ClientTls {
    verified: Arc<rustls::ClientConfig>,
    opportunistic: Arc<rustls::ClientConfig>,
}

impl ClientTls {
    /// Builds both configurations; `ca_file` adds trust anchors to the webpki roots.
    pub fn load(ca_file: Option<&Path>) -> Result<ClientTls, TlsError> {
        let provider = super::provider();
        let mut roots =
            rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = ca_file {
            let read_error = |source| TlsError::Read {
                path: path.to_path_buf(),
                source,
            };
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(read_error)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(read_error)?;
            if certs.is_empty() {
                return Err(TlsError::NoCertificate {
                    path: path.to_path_buf(),
                });
            }
            for cert in certs {
                roots.add(cert).map_err(|source| TlsError::BadCa {
                    path: path.to_path_buf(),
                    source,
                })?;
            }
        }
        let verified = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let any = AnyCertificate {
            algorithms: provider.signature_verification_algorithms,
        };
        let opportunistic = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(any))
            .with_no_client_auth();
        Ok(ClientTls {
            verified: Arc::new(verified),
            opportunistic: Arc::new(opportunistic),
        })
    }

    /// For `tls = "required"`: the certificate must verify for the next hop's name.
    pub fn verified(&self) -> Arc<rustls::ClientConfig> {
        Arc::clone(&self.verified)
    }

    /// For `tls = "opportunistic"`: any certificate, signatures still checked.
    pub fn opportunistic(&self) -> Arc<rustls::ClientConfig> {
        Arc::clone(&self.opportunistic)
    }
}

/// The name a next hop's certificate is checked against (and sent as SNI): a host name, or
/// an IP address when the route names one (checked against the certificate's IP SANs;
/// rustls sends no SNI for it). `None` for something that is neither.
pub fn server_name(host: &str) -> Option<ServerName<'static>> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).ok()
}

/// RFC 7435 opportunistic security: every certificate is taken, the handshake's signatures
/// are verified with the provider's algorithms.
#[derive(Debug)]
struct AnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_addresses() {
        assert!(matches!(
            server_name("mx.example.com"),
            Some(ServerName::DnsName(_))
        ));
        assert!(matches!(
            server_name("192.0.2.1"),
            Some(ServerName::IpAddress(_))
        ));
        assert!(matches!(
            server_name("[2001:db8::1]"),
            Some(ServerName::IpAddress(_))
        ));
        assert_eq!(server_name("bad name!"), None);
    }

    #[test]
    fn a_ca_file_without_certificates_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let error = ClientTls::load(Some(&path)).unwrap_err();
        assert!(matches!(error, TlsError::NoCertificate { .. }), "{error}");
        assert!(ClientTls::load(None).is_ok());
        let missing = ClientTls::load(Some(&dir.path().join("absent.pem"))).unwrap_err();
        assert!(matches!(missing, TlsError::Read { .. }), "{missing}");
    }
}
