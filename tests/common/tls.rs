//! Test certificates, made at test time with rcgen (no private key is committed), and a
//! blocking rustls client for the tests that need byte-level control of a TLS session.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};

/// The name every test certificate carries (plus `localhost` and 127.0.0.1).
pub const TLS_NAME: &str = "relay.test";

/// A self-signed certificate and its key, written as PEM files in a directory.
pub struct TestCert {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub der: CertificateDer<'static>,
}

impl TestCert {
    /// Generates a fresh key and certificate into `dir/{stem}.pem` and `dir/{stem}.key`.
    pub fn generate(dir: &Path, stem: &str) -> TestCert {
        let key = rcgen::KeyPair::generate().expect("generate key");
        let mut params =
            rcgen::CertificateParams::new(vec![TLS_NAME.to_string(), "localhost".to_string()])
                .expect("certificate params");
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress("127.0.0.1".parse().expect("ip")));
        let cert = params.self_signed(&key).expect("self-sign");
        let cert_path = dir.join(format!("{stem}.pem"));
        let key_path = dir.join(format!("{stem}.key"));
        std::fs::write(&cert_path, cert.pem()).expect("write cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        TestCert {
            cert_path,
            key_path,
            der: cert.der().clone(),
        }
    }

    /// The `[tls]` section naming these files.
    pub fn toml(&self) -> String {
        format!(
            "[tls]\ncert = {:?}\nkey = {:?}\n",
            self.cert_path.to_str().expect("utf-8 path"),
            self.key_path.to_str().expect("utf-8 path")
        )
    }

    /// A client config trusting only this certificate.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).expect("add root");
        Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
        )
    }
}

/// A blocking line client over TLS on an already connected socket.
pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// Runs a client handshake on `socket` trusting `config`; returns the stream and the
/// certificate the server presented.
pub fn client_handshake(
    socket: TcpStream,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<(TlsStream, CertificateDer<'static>)> {
    socket.set_read_timeout(Some(Duration::from_secs(20)))?;
    let name = ServerName::try_from(TLS_NAME).expect("server name");
    let connection = rustls::ClientConnection::new(config, name).map_err(std::io::Error::other)?;
    let mut stream = rustls::StreamOwned::new(connection, socket);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    let presented = stream
        .conn
        .peer_certificates()
        .and_then(|chain| chain.first())
        .cloned()
        .ok_or_else(|| std::io::Error::other("no server certificate"))?;
    Ok((stream, presented))
}

/// Reads one reply (SMTP multi-line replies until the line without `-`, or one POP3 line).
pub fn read_reply<R: Read>(stream: &mut R) -> String {
    let mut reply = String::new();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(1) => {}
            Ok(_) => panic!("connection closed; got so far: {reply:?}"),
            Err(e) => panic!("read failed ({e}); got so far: {reply:?}"),
        }
        line.push(byte[0]);
        if line.ends_with(b"\r\n") {
            let text = String::from_utf8_lossy(&line).into_owned();
            reply.push_str(&text);
            let continued = text.len() > 3 && text.as_bytes()[3] == b'-';
            line.clear();
            if !continued {
                return reply;
            }
        }
    }
}

/// Connects in plaintext and reads the greeting.
pub fn connect(addr: SocketAddr) -> (TcpStream, String) {
    let mut socket = TcpStream::connect(addr).expect("connect");
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let greeting = read_reply(&mut socket);
    (socket, greeting)
}

/// Writes all of `bytes`.
pub fn send<W: Write>(stream: &mut W, bytes: &str) {
    stream.write_all(bytes.as_bytes()).expect("write");
    stream.flush().expect("flush");
}
