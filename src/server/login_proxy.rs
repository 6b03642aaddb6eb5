//! POP3 and IMAP logins proxied to the user's home node (`[cluster]`; Dovecot's proxy
//! pattern). A client may connect to any node: once its credentials are checked here (the
//! same [`super::auth`] path as a local login, so a wrong password never reaches the home
//! node), a user whose directory entry names another node as `home` gets a session there,
//! and from then on bytes are relayed both ways until either side closes.
//!
//! **No password crosses, none is hashed twice.** The home node is reached at its cluster
//! listener (the node table's `cluster` address) over the cluster's mutual TLS: this node
//! presents its node certificate and asks, by ALPN, for the proxied-login conversation
//! ([`crate::cluster::login_wire`]): one request naming the protocol, the user and the
//! client's address; the home node trusts the certificate, checks that the user is homed
//! there and starts its own POP3 or IMAP session already logged in
//! ([`super::login_in`]). Its answer carries what the client's login answer needs: this
//! node writes the POP3 `+OK` (with the home node's maildrop text) or the IMAP tagged OK
//! with the home node's post-login `CAPABILITY` code (as Dovecot's proxy does, so the
//! client's view of capabilities is the home node's). APOP works the same way (the digest
//! was checked here). The home node's public POP3 and IMAP listeners play no part.
//!
//! A home node that is down, slow (over [`UPSTREAM_LOGIN_TIMEOUT`]) or unknown to the node
//! table is a temporary failure to the client (POP3 `-ERR [SYS/TEMP]`, IMAP `NO
//! [UNAVAILABLE]`), never a hang; the client may log in again. A home node that refuses
//! says why ([`Refusal`]) and the client gets the matching code ([`pop3_code`],
//! [`imap_refusal`]): a maildrop in use there is POP3 `[IN-USE]` (RFC 2449) and IMAP
//! `[INUSE]` (RFC 5530); a user the home node does not know is POP3 `[AUTH]` (RFC 3206)
//! and IMAP `[AUTHORIZATIONFAILED]`; over a limit there is IMAP `[LIMIT]`; a request it did
//! not understand is IMAP `[SERVERBUG]`; the rest (the directories disagree during a move,
//! the home node is shutting down, a reason this node does not know) are temporary. A node without the cluster TLS files
//! (`cluster.cert`, `key`, `ca`) cannot proxy: its logins of users homed elsewhere are
//! temporary failures. The relay keeps one bounded buffer per direction and the protocol's
//! idle timeout: no bytes either way for that long and both connections are closed; so are
//! they at shutdown.
//!
//! The sans-IO part is [`crate::cluster::login_wire::FrontLogin`] (the request, and what the
//! answer means for the client); the I/O runs on the shard's own engine.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::shard::ShardContext;
use crate::cluster::login_wire::{self, FrameError, FrontLogin, FrontStep, Protocol, Refusal};
use crate::config::cluster::ClusterSection;
use crate::logsafe::Safe;
use crate::mailbox::Directory;
use crate::net::conn::{flush, read_more, stop_requested, within, Read, IDLE_READ, READ_CHUNK};
use crate::net::io::epoll::EpollConnector;
use crate::net::io::uring::UringConnector;
use crate::net::io::{Connection, Connector};
use crate::net::tls::{ClusterTls, TlsConnection};
use crate::runtime::{Engine, Phase};

/// How long connecting to the home node, the TLS handshake and its answer may take in all.
pub const UPSTREAM_LOGIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The node table as the login proxies need it: which node this is, where the others'
/// cluster listeners are, and the client TLS to reach them.
#[derive(Debug, Clone)]
pub struct LoginProxy {
    node: String,
    nodes: Vec<crate::config::cluster::NodeEntry>,
    /// The cluster client TLS asking for the proxied-login conversation (`None`: this node
    /// has no cluster certificate and cannot proxy).
    tls: Option<Arc<rustls::ClientConfig>>,
    /// The same asking for a web session's requests ([`login_wire::WEB_ALPN`]).
    web_tls: Option<Arc<rustls::ClientConfig>>,
}

/// Another node holding a user's mailboxes.
#[derive(Debug, Clone)]
pub struct Home {
    pub node: String,
    /// Its cluster listener (proxied POP3, IMAP and web sessions all reach it there).
    pub cluster: Option<SocketAddr>,
}

impl LoginProxy {
    /// `None` without a cluster: every user is at home here. `tls`: this node's cluster
    /// TLS (`None` without its files).
    pub fn new(cluster: &ClusterSection, tls: Option<&ClusterTls>) -> Option<LoginProxy> {
        let asking = |alpn: &[u8]| {
            tls.map(|tls| {
                let mut config = (*tls.client()).clone();
                config.alpn_protocols = vec![alpn.to_vec()];
                Arc::new(config)
            })
        };
        Some(LoginProxy {
            node: cluster.node.clone()?,
            nodes: cluster.nodes.clone(),
            tls: asking(login_wire::ALPN),
            web_tls: asking(login_wire::WEB_ALPN),
        })
    }

    /// This node's name.
    pub fn this_node(&self) -> &str {
        &self.node
    }

    /// The cluster client TLS that asks for the proxied-login conversation.
    pub fn login_tls(&self) -> Option<Arc<rustls::ClientConfig>> {
        self.tls.clone()
    }

    /// The cluster client TLS that asks to carry a web session's requests.
    pub fn web_tls(&self) -> Option<Arc<rustls::ClientConfig>> {
        self.web_tls.clone()
    }

    fn home(&self, name: &str) -> Home {
        let entry = self.nodes.iter().find(|n| n.name == name);
        Home {
            node: name.to_string(),
            cluster: entry.map(|e| e.cluster),
        }
    }

    /// Another node of the table by name (`None`: this node or no such node).
    pub fn node(&self, name: &str) -> Option<Home> {
        if name == self.node || !self.nodes.iter().any(|n| n.name == name) {
            return None;
        }
        Some(self.home(name))
    }

    /// Where `user` lives when it is another node (an unknown node name yields a `Home`
    /// with no addresses: the login is then a temporary failure, not a local login into an
    /// empty mailbox).
    pub fn home_elsewhere(&self, directory: &Directory, user: &str) -> Option<Home> {
        let home = directory.user(user)?.home.as_deref()?;
        if home == self.node {
            return None;
        }
        Some(self.home(home))
    }
}

/// Why a proxied login did not happen (each is a temporary failure to the client).
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("the node table has no cluster address for the home node")]
    NoAddress,
    #[error("this node has no cluster certificate (cluster.cert, key, ca)")]
    NoTls,
    #[error("the home node's address is not one TLS can check")]
    BadName,
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("connection failed: {0}")]
    Io(String),
    #[error("the home node closed the connection")]
    Closed,
    #[error("no answer within the login timeout")]
    Timeout,
    #[error("the home node refused: {0}")]
    Refused(Refusal),
    #[error("unexpected answer from the home node: {0}")]
    Protocol(FrameError),
}

/// A session running at the home node over cluster TLS.
struct Established<B> {
    upstream: TlsConnection<B>,
    /// The client's answer to its login.
    reply: Vec<u8>,
    /// Bytes the home node sent after its answer (the client's, too).
    leftover: Vec<u8>,
}

/// Connects to `addr` with the cluster TLS `config`, sends `request` and reads the answer,
/// all within [`UPSTREAM_LOGIN_TIMEOUT`].
async fn establish<K: Connector>(
    connector: &K,
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    request: &login_wire::Request,
    tag: &str,
) -> Result<Established<K::Conn>, Failure> {
    let deadline = Instant::now() + UPSTREAM_LOGIN_TIMEOUT;
    let conn = connector
        .connect(addr, UPSTREAM_LOGIN_TIMEOUT)
        .await
        .map_err(|e| Failure::Connect(e.to_string()))?;
    // The peer's certificate must name the address dialled (the node table's).
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let upstream = match TlsConnection::client(conn, config, name) {
        Ok(tls) => tls,
        Err(error) => return Err(Failure::Tls(error.to_string())),
    };
    let limit = deadline.saturating_duration_since(Instant::now());
    match within(&upstream, limit, upstream.handshake()).await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => {
            upstream.shutdown();
            return Err(Failure::Tls(error.to_string()));
        }
        Err(_) => return Err(Failure::Timeout),
    }
    if upstream.alpn_protocol().as_deref() != Some(login_wire::ALPN) {
        // A node that does not know the conversation would take us for an SMTP peer.
        upstream.shutdown();
        return Err(Failure::Tls(
            "the home node does not offer proxied logins".into(),
        ));
    }
    let (frame, mut machine) = FrontLogin::start(request, tag);
    let limit = deadline.saturating_duration_since(Instant::now());
    match within(&upstream, limit, upstream.write_all(frame)).await {
        Ok((Ok(()), _)) => {}
        Ok((Err(error), _)) => {
            upstream.shutdown();
            return Err(Failure::Io(error.to_string()));
        }
        Err(_) => return Err(Failure::Timeout),
    }
    let mut input = Vec::with_capacity(IDLE_READ);
    loop {
        input.clear();
        let (read, buffer) = read_more(
            &upstream,
            input,
            deadline,
            std::future::pending::<()>(),
            |_| Vec::new(),
        )
        .await;
        input = buffer;
        match read {
            Read::Data(_) => {}
            Read::Closed => return Err(Failure::Closed),
            Read::Error(error) => return Err(Failure::Io(error.to_string())),
            Read::Expired(_) => return Err(Failure::Timeout),
        }
        match machine.feed(&input) {
            FrontStep::Wait => {}
            FrontStep::Ready { reply, leftover } => {
                return Ok(Established {
                    upstream,
                    reply,
                    leftover,
                })
            }
            FrontStep::Refused(reason) => {
                upstream.shutdown();
                return Err(Failure::Refused(reason));
            }
            FrontStep::Failed(error) => {
                upstream.shutdown();
                return Err(Failure::Protocol(error));
            }
            FrontStep::WebSession(_) => {
                upstream.shutdown();
                return Err(Failure::Protocol(FrameError::Invalid(
                    "a web answer to a mail login".into(),
                )));
            }
        }
    }
}

/// How a proxied login ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proxied {
    /// The session ran at the home node and is over: the connection is closed.
    Done,
    /// No session at the home node, for this reason (the home node's refusal, or
    /// [`Refusal::Unavailable`] when it could not be asked): the driver answers with
    /// [`pop3_code`] or [`imap_refusal`] and the session goes on (the client may try
    /// again).
    Refused(Refusal),
}

/// The POP3 response code of a refused proxied login (RFC 2449, RFC 3206).
///
/// A home node that does not know the user is not an authentication failure: this node has
/// already checked the password against the directory, so the home node's copy of it lags
/// (or the node table is wrong). `[AUTH]` would make the client ask its user for a password
/// that is right; it is a temporary failure.
pub fn pop3_code(reason: Refusal) -> crate::pop3::ResponseCode {
    use crate::pop3::ResponseCode;
    match reason {
        Refusal::InUse => ResponseCode::InUse,
        Refusal::UnknownUser
        | Refusal::NotHomedHere
        | Refusal::Unavailable
        | Refusal::BadRequest
        | Refusal::OverLimit
        | Refusal::ShuttingDown
        | Refusal::Other => ResponseCode::SysTemp,
    }
}

/// The IMAP answer to a refused proxied login (RFC 5530 codes); an unknown user at the
/// home node is `[UNAVAILABLE]`, as in [`pop3_code`].
pub fn imap_refusal(reason: Refusal) -> crate::imap::LoginRefused {
    use crate::imap::LoginRefused;
    match reason {
        Refusal::InUse => LoginRefused::InUse,
        Refusal::OverLimit => LoginRefused::Limit,
        Refusal::BadRequest => LoginRefused::ServerBug,
        Refusal::UnknownUser
        | Refusal::NotHomedHere
        | Refusal::Unavailable
        | Refusal::ShuttingDown
        | Refusal::Other => LoginRefused::Unavailable,
    }
}

/// What one proxied session needs besides the client's connection.
pub struct Session<'a> {
    pub ctx: &'a ShardContext,
    pub peer: SocketAddr,
    pub home: Home,
    /// The directory's name of the user authenticated here.
    pub user: &'a str,
    /// Answers the client has not been sent yet (they go before the login's).
    pub pending: &'a mut Vec<u8>,
    /// What the client sent after its login command (for the home node).
    pub input: &'a [u8],
}

/// A POP3 login proxied to `session.home`.
pub async fn pop3<C: Connection>(client: &C, session: Session<'_>) -> Proxied {
    let idle = session.ctx.pop3.idle_timeout;
    proxy(client, session, Protocol::Pop3, "", idle).await
}

/// An IMAP login proxied to `session.home`; `tag` is the client's login command's.
pub async fn imap<C: Connection>(client: &C, session: Session<'_>, tag: &str) -> Proxied {
    let idle = session.ctx.imap.idle_timeout;
    proxy(client, session, Protocol::Imap, tag, idle).await
}

async fn proxy<C: Connection>(
    client: &C,
    session: Session<'_>,
    protocol: Protocol,
    tag: &str,
    idle: Duration,
) -> Proxied {
    match session.ctx.engine {
        Engine::Uring => run(&UringConnector, client, session, protocol, tag, idle).await,
        Engine::Epoll => run(&EpollConnector, client, session, protocol, tag, idle).await,
    }
}

async fn run<K: Connector, C: Connection>(
    connector: &K,
    client: &C,
    session: Session<'_>,
    protocol: Protocol,
    tag: &str,
    idle: Duration,
) -> Proxied {
    let Session {
        ctx,
        peer,
        home,
        user,
        pending,
        input,
    } = session;
    let proxy = ctx.login_proxy.as_deref();
    let request = login_wire::Request {
        protocol,
        user: user.to_string(),
        client: peer,
        from: proxy.map(|p| p.node.clone()).unwrap_or_default(),
        version: login_wire::VERSION,
    };
    let established = match (home.cluster, proxy.and_then(|p| p.tls.clone())) {
        (None, _) => Err(Failure::NoAddress),
        (_, None) => Err(Failure::NoTls),
        (Some(addr), Some(tls)) => establish(connector, addr, tls, &request, tag).await,
    };
    let Established {
        upstream,
        reply,
        leftover,
    } = match established {
        Ok(established) => established,
        Err(Failure::Refused(reason)) => {
            tracing::warn!(target: "relay::cluster", protocol = protocol.name(), client = %peer.ip(), home = %Safe(&home.node), %reason, "proxied login failed: refused by the home node");
            return Proxied::Refused(reason);
        }
        Err(failure) => {
            tracing::warn!(target: "relay::cluster", protocol = protocol.name(), client = %peer.ip(), home = %Safe(&home.node), error = %Safe(&failure.to_string()), "proxied login failed: home node unavailable");
            return Proxied::Refused(Refusal::Unavailable);
        }
    };
    tracing::info!(target: "relay::cluster", protocol = protocol.name(), client = %peer.ip(), home = %Safe(&home.node), user = %Safe(user), "login proxied");
    pending.extend_from_slice(&reply);
    pending.extend_from_slice(&leftover);
    let mut forward = input.to_vec();
    if flush(client, pending, idle).await.is_err()
        || flush(&upstream, &mut forward, idle).await.is_err()
    {
        client.shutdown();
        upstream.shutdown();
        return Proxied::Done;
    }
    let (up, down) = relay(client, &upstream, idle, ctx.phase.clone()).await;
    tracing::debug!(target: "relay::cluster", protocol = protocol.name(), client = %peer, to_home = up, from_home = down, "proxied session closed");
    Proxied::Done
}

/// Moves bytes both ways until either side closes, nothing moved for `idle`, or shutdown.
/// Both connections are shut down on return and no operation is left armed. Returns the
/// bytes moved (client → home, home → client).
async fn relay<A: Connection, B: Connection>(
    client: &A,
    upstream: &B,
    idle: Duration,
    mut phase: watch::Receiver<Phase>,
) -> (u64, u64) {
    let last = std::cell::Cell::new(Instant::now());
    let pumps = async {
        tokio::join!(
            pump(client, upstream, &last, client, upstream),
            pump(upstream, client, &last, client, upstream)
        )
    };
    tokio::pin!(pumps);
    tokio::select! {
        biased;
        moved = &mut pumps => moved,
        () = quiet_or_stopped(&last, idle, &mut phase) => {
            client.shutdown();
            upstream.shutdown();
            pumps.await
        }
    }
}

/// Resolves once nothing has moved for `idle` since `last`, or at shutdown (a relay's
/// watchdog: the caller then shuts its connections down and awaits its pumps).
pub(super) async fn quiet_or_stopped(
    last: &std::cell::Cell<Instant>,
    idle: Duration,
    phase: &mut watch::Receiver<Phase>,
) {
    let quiet = async {
        loop {
            let until = last.get() + idle;
            if Instant::now() >= until {
                return;
            }
            tokio::time::sleep_until(until).await;
        }
    };
    tokio::select! {
        () = quiet => {}
        () = stop_requested(phase, false) => {}
    }
}

/// One direction: read a chunk, write it, until end of stream or an error; then both
/// connections are shut down (the other direction's pending read completes at once).
async fn pump<R: Connection, W: Connection, A: Connection, B: Connection>(
    from: &R,
    to: &W,
    last: &std::cell::Cell<Instant>,
    client: &A,
    upstream: &B,
) -> u64 {
    let mut moved = 0u64;
    let mut buffer = Vec::with_capacity(READ_CHUNK);
    loop {
        let (read, filled) = from.read_into(buffer).await;
        match read {
            Ok(n) if n > 0 => {}
            _ => break,
        }
        last.set(Instant::now());
        moved += filled.len() as u64;
        let (written, mut emptied) = to.write_all(filled).await;
        if written.is_err() {
            break;
        }
        last.set(Instant::now());
        emptied.clear();
        buffer = emptied;
    }
    client.shutdown();
    upstream.shutdown();
    moved
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_refusal_gets_its_response_code() {
        use crate::imap::LoginRefused;
        let pop3 = |reason| {
            let mut out = Vec::new();
            crate::pop3::Response::login_refused(pop3_code(reason)).encode(&mut out);
            String::from_utf8(out).unwrap()
        };
        let temp = "-ERR [SYS/TEMP] mailbox temporarily unavailable, try again later\r\n";
        for (reason, pop3_reply, imap) in [
            (
                Refusal::InUse,
                "-ERR [IN-USE] maildrop is locked by another session\r\n",
                LoginRefused::InUse,
            ),
            (Refusal::UnknownUser, temp, LoginRefused::Unavailable),
            (Refusal::NotHomedHere, temp, LoginRefused::Unavailable),
            (Refusal::Unavailable, temp, LoginRefused::Unavailable),
            (Refusal::BadRequest, temp, LoginRefused::ServerBug),
            (Refusal::OverLimit, temp, LoginRefused::Limit),
            (Refusal::ShuttingDown, temp, LoginRefused::Unavailable),
            (Refusal::Other, temp, LoginRefused::Unavailable),
        ] {
            assert_eq!(pop3(reason), pop3_reply, "{reason:?}");
            assert_eq!(imap_refusal(reason), imap, "{reason:?}");
        }
    }

    #[test]
    fn relay_moves_bytes_both_ways_and_ends_when_one_side_closes() {
        use crate::net::io::epoll::EpollConnector;
        use std::io::{Read as _, Write as _};
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // Two loopback peers: "client" and "home"; the relay connects to both.
        let client_side = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let home_side = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (client_addr, home_addr) = (
            client_side.local_addr().unwrap(),
            home_side.local_addr().unwrap(),
        );
        let peers = std::thread::spawn(move || {
            let (mut client, _) = client_side.accept().unwrap();
            let (mut home, _) = home_side.accept().unwrap();
            client.write_all(b"LIST\r\n").unwrap();
            let mut got = [0u8; 6];
            home.read_exact(&mut got).unwrap();
            assert_eq!(&got, b"LIST\r\n");
            let big = vec![b'm'; 100_000];
            home.write_all(&big).unwrap();
            let mut back = vec![0u8; big.len()];
            client.read_exact(&mut back).unwrap();
            assert_eq!(back, big);
            drop(home);
            // The relay closes the client's side once the home node has.
            let mut rest = Vec::new();
            client.read_to_end(&mut rest).unwrap();
            rest.len()
        });
        let (_stop, phase) = watch::channel(Phase::Running);
        let moved = runtime.block_on(async {
            let limit = Duration::from_secs(5);
            let client = EpollConnector.connect(client_addr, limit).await.unwrap();
            let home = EpollConnector.connect(home_addr, limit).await.unwrap();
            relay(&client, &home, Duration::from_secs(10), phase).await
        });
        assert_eq!(moved, (6, 100_000));
        assert_eq!(peers.join().unwrap(), 0);
    }

    #[test]
    fn relay_closes_both_sides_when_idle() {
        use crate::net::io::epoll::EpollConnector;
        use std::io::Read as _;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (a_addr, b_addr) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let peers = std::thread::spawn(move || {
            let (mut a, _) = a.accept().unwrap();
            let (mut b, _) = b.accept().unwrap();
            let mut rest = Vec::new();
            a.read_to_end(&mut rest).unwrap();
            b.read_to_end(&mut rest).unwrap();
            rest.len()
        });
        let (_stop, phase) = watch::channel(Phase::Running);
        let started = std::time::Instant::now();
        runtime.block_on(async {
            let limit = Duration::from_secs(5);
            let a = EpollConnector.connect(a_addr, limit).await.unwrap();
            let b = EpollConnector.connect(b_addr, limit).await.unwrap();
            relay(&a, &b, Duration::from_millis(200), phase).await
        });
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(peers.join().unwrap(), 0);
    }
}
