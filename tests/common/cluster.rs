//! Several relay nodes in one test: a test CA (rcgen, made at test time: no key is
//! committed), one certificate per node naming its loopback address, and a `[cluster]`
//! section per node with the whole node table. Each node runs on its own loopback address
//! (127.0.0.2, 127.0.0.3, …: the kernel routes all of 127/8 to `lo`, no setup needed), with
//! its cluster listener on a port picked free before the nodes start (the node table must
//! name every peer's port up front) and its other listeners on port 0.
//!
//! Usage: `let cluster = Cluster::new(&["a", "b", "c"], users_toml);` then
//! `let a = cluster.start("a", settings)`; `cluster.node("b").restart_settings()` etc.
//! Tests add their own `[delivery]` or `[cluster.redis]` TOML through `Settings::extra_toml`
//! (appended after the cluster section by [`Cluster::settings`]).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use super::json::Json;
use super::{
    describe, new_workdir, repo_path, run_with_timeout, Engine, Relay, Settings, COMMAND_TIMEOUT,
};

/// A certificate authority for a test cluster, with its PEM files in a directory.
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub cert_path: PathBuf,
    dir: PathBuf,
}

/// A node's certificate and key files.
#[derive(Clone)]
pub struct NodeCert {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

impl TestCa {
    /// A fresh CA named `name`, written to `dir/{name}-ca.pem`.
    pub fn generate(dir: &Path, name: &str) -> TestCa {
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} test CA"));
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let cert = params.self_signed(&key).expect("self-sign CA");
        let cert_path = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&cert_path, cert.pem()).expect("write CA");
        TestCa {
            issuer: rcgen::Issuer::new(params, key),
            cert_path,
            dir: dir.to_path_buf(),
        }
    }

    /// A certificate for node `name` at `ip` (DNS SAN = the name, IP SAN = the address),
    /// usable as a server and a client certificate.
    pub fn node_cert(&self, name: &str, ip: IpAddr) -> NodeCert {
        let key = rcgen::KeyPair::generate().expect("node key");
        let mut params =
            rcgen::CertificateParams::new(vec![name.to_string()]).expect("node params");
        params.subject_alt_names.push(rcgen::SanType::IpAddress(ip));
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name.to_string());
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer).expect("sign node");
        let stem = format!(
            "{name}-{}",
            self.cert_path
                .file_stem()
                .map_or("ca".into(), |s| s.to_string_lossy())
        );
        let cert_path = self.dir.join(format!("{stem}.pem"));
        let key_path = self.dir.join(format!("{stem}.key"));
        std::fs::write(&cert_path, cert.pem()).expect("write node cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write node key");
        NodeCert {
            cert_path,
            key_path,
        }
    }
}

/// One node of a test cluster: its name, address, cluster port, files and work directory.
pub struct Node {
    pub name: String,
    pub ip: IpAddr,
    /// Its cluster listener.
    pub cluster: SocketAddr,
    pub cert: NodeCert,
    /// Its spool and config (kept across restarts).
    pub dir: Arc<tempfile::TempDir>,
}

/// The nodes of a test cluster and their CA.
pub struct Cluster {
    pub ca: TestCa,
    pub nodes: Vec<Node>,
    /// Where the CA and certificates are.
    pub files: Arc<tempfile::TempDir>,
    /// TOML every node gets after its `[cluster]` section (users with `home`, …).
    pub common_toml: String,
}

/// The loopback address of the `index`th node: 127.0.0.2, 127.0.0.3, …
pub fn node_ip(index: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        127,
        0,
        0,
        2 + u8::try_from(index).expect("few nodes"),
    ))
}

/// A port free on `ip` now (bound and released: the node binds it a moment later), and
/// never handed out before in this process: tests run in parallel threads, and a port
/// released here could otherwise come back from the kernel for another node's listener
/// before the first node binds it. Nodes bind no port 0 on their addresses for the same
/// reason (their SMTP port comes from here too).
pub fn free_port(ip: IpAddr) -> u16 {
    static GIVEN: std::sync::Mutex<Vec<(IpAddr, u16)>> = std::sync::Mutex::new(Vec::new());
    loop {
        let listener = TcpListener::bind(SocketAddr::new(ip, 0)).expect("bind a free port");
        let port = listener.local_addr().expect("local addr").port();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&(ip, port)) {
            given.push((ip, port));
            return port;
        }
    }
}

impl Cluster {
    /// A CA and one certificate per node; `common_toml` goes into every node's config.
    pub fn new(names: &[&str], common_toml: &str) -> Cluster {
        let files = new_workdir();
        let ca = TestCa::generate(files.path(), "cluster");
        let nodes = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let ip = node_ip(i);
                Node {
                    name: name.to_string(),
                    ip,
                    cluster: SocketAddr::new(ip, free_port(ip)),
                    cert: ca.node_cert(name, ip),
                    dir: new_workdir(),
                }
            })
            .collect();
        Cluster {
            ca,
            nodes,
            files,
            common_toml: common_toml.to_string(),
        }
    }

    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// The `[cluster]` section of node `name`: this node, its listener and files, the table.
    pub fn cluster_toml(&self, name: &str) -> String {
        self.cluster_toml_with(name, |_| String::new())
    }

    /// As [`Cluster::cluster_toml`], with `more(i)`'s lines (e.g. the `i`th node's `pop3` and
    /// `imap` addresses) in each node's table entry.
    pub fn cluster_toml_with(&self, name: &str, more: impl Fn(usize) -> String) -> String {
        let node = self.node(name);
        let mut text = format!(
            "[cluster]\nnode = {:?}\nlisten = \"{}\"\ncert = {:?}\nkey = {:?}\nca = {:?}\n",
            node.name,
            node.cluster,
            node.cert.cert_path.to_str().expect("utf-8 path"),
            node.cert.key_path.to_str().expect("utf-8 path"),
            self.ca.cert_path.to_str().expect("utf-8 path"),
        );
        for (i, n) in self.nodes.iter().enumerate() {
            text.push_str(&format!(
                "[[cluster.nodes]]\nname = {:?}\ncluster = \"{}\"\n{}",
                n.name,
                n.cluster,
                more(i)
            ));
        }
        text
    }

    /// The test template for node `name` on `engine`: SMTP on its address (port 0), its
    /// `[cluster]` section, then `common_toml`, then `extra` (a `[delivery]` section, …).
    pub fn settings(&self, name: &str, engine: Engine, extra: &str) -> Settings {
        let node = self.node(name);
        let mut settings = Settings::new(engine);
        settings.smtp_listen = format!("{}:{}", node.ip, free_port(node.ip));
        settings.extra_toml = format!("{}{}{extra}", self.cluster_toml(name), self.common_toml);
        settings
    }

    /// Starts node `name` in its directory (a restart finds its spool).
    pub fn start(&self, name: &str, settings: Settings) -> Relay {
        Relay::start_in(Arc::clone(&self.node(name).dir), settings)
    }
}

/// A node's client TLS settings as a test peer uses them: trusting `ca`, presenting `cert`
/// (or no certificate).
pub fn peer_tls_config(ca: &Path, cert: Option<&NodeCert>) -> rustls::ClientConfig {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_file_iter(ca)
        .expect("read CA")
        .flatten()
    {
        roots.add(der).expect("CA certificate");
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots);
    match cert {
        Some(cert) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_file_iter(&cert.cert_path)
                    .expect("read cert")
                    .flatten()
                    .collect();
            let key = PrivateKeyDer::from_pem_file(&cert.key_path).expect("read key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client cert")
        }
        None => builder.with_no_client_auth(),
    }
}

/// A blocking SMTP client over TLS to a cluster listener, as a peer would connect: trusting
/// `ca`, presenting `cert` (or none).
pub struct PeerClient {
    stream: rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>,
}

impl PeerClient {
    /// Connects and completes the handshake, then reads the greeting. An error (or EOF)
    /// instead of a `220` means the listener refused the peer.
    pub fn connect(
        addr: SocketAddr,
        ca: &Path,
        cert: Option<&NodeCert>,
    ) -> std::io::Result<(PeerClient, String)> {
        PeerClient::connect_from(None, addr, ca, cert)
    }

    /// [`PeerClient::connect`] from the source address `source` (so the listener's log line
    /// about this connection can be told apart: it names the client's address).
    pub fn connect_from(
        source: Option<IpAddr>,
        addr: SocketAddr,
        ca: &Path,
        cert: Option<&NodeCert>,
    ) -> std::io::Result<(PeerClient, String)> {
        use rustls::pki_types::ServerName;
        let config = peer_tls_config(ca, cert);
        let socket = match source {
            None => std::net::TcpStream::connect(addr)?,
            Some(ip) => {
                let socket = socket2::Socket::new(
                    socket2::Domain::for_address(addr),
                    socket2::Type::STREAM,
                    None,
                )?;
                socket.bind(&SocketAddr::new(ip, 0).into())?;
                socket.connect(&addr.into())?;
                socket.into()
            }
        };
        socket.set_read_timeout(Some(std::time::Duration::from_secs(20)))?;
        let name = ServerName::IpAddress(addr.ip().into());
        let connection =
            rustls::ClientConnection::new(Arc::new(config), name).map_err(std::io::Error::other)?;
        let mut client = PeerClient {
            stream: rustls::StreamOwned::new(connection, socket),
        };
        while client.stream.conn.is_handshaking() {
            client.stream.conn.complete_io(&mut client.stream.sock)?;
        }
        let greeting = client.reply()?;
        Ok((client, greeting))
    }

    /// Reads one SMTP reply (all its lines); EOF before a whole reply is an error.
    pub fn reply(&mut self) -> std::io::Result<String> {
        use std::io::Read;
        let mut text = String::new();
        let mut line = Vec::new();
        loop {
            let mut byte = [0u8; 1];
            if self.stream.read(&mut byte)? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("closed after {text:?}"),
                ));
            }
            line.push(byte[0]);
            if line.ends_with(b"\r\n") {
                let l = String::from_utf8_lossy(&line).into_owned();
                text.push_str(&l);
                line.clear();
                if l.as_bytes().get(3) != Some(&b'-') {
                    return Ok(text);
                }
            }
        }
    }

    /// Sends `line` (CRLF added) and reads the reply.
    pub fn cmd(&mut self, line: &str) -> std::io::Result<String> {
        use std::io::Write;
        self.stream.write_all(format!("{line}\r\n").as_bytes())?;
        self.stream.flush()?;
        self.reply()
    }

    /// Sends a message body after DATA's 354 (dot-stuffed here) and reads the final reply.
    pub fn data(&mut self, message: &[u8]) -> std::io::Result<String> {
        use std::io::Write;
        let reply = self.cmd("DATA")?;
        if !reply.starts_with("354") {
            return Ok(reply);
        }
        // dot_stuff adds the final dot line.
        self.stream.write_all(&super::smtp::dot_stuff(message))?;
        self.stream.flush()?;
        self.reply()
    }
}

/// Runs tests/py/cluster_proxy_client.py (Python's poplib, imaplib or urllib as the client):
/// its JSON answer.
pub fn client(
    protocol: &str,
    addr: SocketAddr,
    user: &str,
    password: &str,
    extra: &[&str],
) -> Json {
    let mut command = Command::new("python3");
    command
        .arg(repo_path("tests/py/cluster_proxy_client.py"))
        .arg(protocol)
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .arg(user)
        .arg(password)
        .args(extra);
    let output = run_with_timeout(&mut command, COMMAND_TIMEOUT);
    assert!(output.status.success(), "{protocol}: {}", describe(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    Json::parse(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// The messages of a successful answer, decoded.
pub fn messages(answer: &Json) -> Vec<Vec<u8>> {
    use base64::Engine as _;
    assert_eq!(answer.get("ok"), &Json::Bool(true), "{answer:?}");
    answer
        .get("messages")
        .array()
        .iter()
        .map(|m| {
            base64::engine::general_purpose::STANDARD
                .decode(m.str())
                .expect("base64")
        })
        .collect()
}
