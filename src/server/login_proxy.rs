//! POP3 and IMAP logins proxied to the user's home node (`[cluster]`; Dovecot's proxy
//! pattern). A client may connect to any node: once its credentials are checked here (the
//! same [`super::auth`] path as a local login, so a wrong password never reaches the home
//! node), a user whose directory entry names another node as `home` is logged in there with
//! the same credentials, the client gets the home node's answer to its login, and from then
//! on bytes are relayed both ways until either side closes.
//!
//! The home node is reached at the node table's `pop3`/`imap` address in plain TCP (the
//! nodes' client listeners on a private network or loopback; the home node must accept
//! passwords in clear from its peers: loopback, or `allow_plaintext_auth`). The login there
//! is POP3 `AUTH PLAIN` with an initial response (or `APOP` with the user's stored secret
//! when the client used APOP: the digest is recomputed for the home node's own greeting)
//! and IMAP `AUTHENTICATE PLAIN` (with SASL-IR when the greeting offers it). The client's
//! IMAP tagged OK carries the home node's post-login `CAPABILITY` code, as Dovecot's
//! proxy does, so the client's view of capabilities is the home node's.
//!
//! A home node that is down, slow (over [`UPSTREAM_LOGIN_TIMEOUT`]) or that refuses the
//! login is a temporary failure to the client (POP3 `-ERR [SYS/TEMP]`, IMAP
//! `NO [UNAVAILABLE]`), never a hang; the client may log in again. The relay keeps one
//! bounded buffer per direction and the protocol's idle timeout: no bytes either way for
//! that long and both connections are closed; so are they at shutdown.
//!
//! The sans-IO parts are [`Pop3Upstream`] and [`ImapUpstream`] (what to send the home node,
//! how to read its answers); the I/O runs on the shard's own engine.

use std::net::SocketAddr;
use std::ops::Range;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::shard::ShardContext;
use crate::config::cluster::ClusterSection;
use crate::logsafe::Safe;
use crate::mailbox::Directory;
use crate::net::conn::{flush, read_more, stop_requested, within, Read, IDLE_READ, READ_CHUNK};
use crate::net::io::epoll::EpollConnector;
use crate::net::io::uring::UringConnector;
use crate::net::io::{Connection, Connector};
use crate::runtime::{Engine, Phase};
use crate::smtp::Password;

/// How long connecting to the home node and logging in there may take in all.
pub const UPSTREAM_LOGIN_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest line the home node may send before the login is done (an IMAP CAPABILITY
/// line is the long one).
const LINE_MAX: usize = 16 * 1024;
/// Untagged IMAP lines kept while the login is answered (forwarded to the client after it).
const UNTAGGED_MAX: usize = 16 * 1024;

/// The node table as the login proxies need it: which node this is and where the others'
/// POP3 and IMAP listeners are.
#[derive(Debug, Clone)]
pub struct LoginProxy {
    node: String,
    nodes: Vec<crate::config::cluster::NodeEntry>,
}

/// Another node holding a user's mailboxes.
#[derive(Debug, Clone)]
pub struct Home {
    pub node: String,
    pub pop3: Option<SocketAddr>,
    pub imap: Option<SocketAddr>,
    pub web: Option<SocketAddr>,
}

impl LoginProxy {
    /// `None` without a cluster: every user is at home here.
    pub fn new(cluster: &ClusterSection) -> Option<LoginProxy> {
        Some(LoginProxy {
            node: cluster.node.clone()?,
            nodes: cluster.nodes.clone(),
        })
    }

    /// Another node of the table by name (`None`: this node or no such node).
    pub fn node(&self, name: &str) -> Option<Home> {
        if name == self.node {
            return None;
        }
        let entry = self.nodes.iter().find(|n| n.name == name)?;
        Some(Home {
            node: entry.name.clone(),
            pop3: entry.pop3,
            imap: entry.imap,
            web: entry.web,
        })
    }

    /// Where `user` lives when it is another node (an unknown node name yields a `Home`
    /// with no addresses: the login is then a temporary failure, not a local login into an
    /// empty mailbox).
    pub fn home_elsewhere(&self, directory: &Directory, user: &str) -> Option<Home> {
        let home = directory.user(user)?.home.as_deref()?;
        if home == self.node {
            return None;
        }
        let entry = self.nodes.iter().find(|n| n.name == home);
        Some(Home {
            node: home.to_string(),
            pop3: entry.and_then(|e| e.pop3),
            imap: entry.and_then(|e| e.imap),
            web: entry.and_then(|e| e.web),
        })
    }
}

/// What the client proved itself with, kept for the login at the home node.
pub enum Offered {
    Password(Password),
    /// POP3 APOP: the home node gets an APOP of its own from the stored secret.
    Apop,
}

impl Offered {
    pub fn pop3(credentials: &crate::pop3::Credentials) -> Offered {
        match credentials {
            crate::pop3::Credentials::Plain { password, .. } => {
                Offered::Password(Password::new(password.clone()))
            }
            crate::pop3::Credentials::Apop { .. } => Offered::Apop,
        }
    }

    pub fn imap(credentials: &crate::imap::Credentials) -> Offered {
        Offered::Password(Password::new(credentials.password.clone()))
    }

    /// The login for the home node, as the directory's `user`; `None` for APOP without a
    /// stored secret (a verified APOP always has one).
    pub fn login(self, directory: &Directory, user: &str) -> Option<Login> {
        let secret = match self {
            Offered::Password(password) => Secret::Password(password),
            Offered::Apop => {
                Secret::Apop(Password::new(directory.user(user)?.apop_secret.clone()?))
            }
        };
        Some(Login {
            user: user.to_string(),
            secret,
        })
    }
}

/// A user name and what proves it at the home node.
pub struct Login {
    user: String,
    secret: Secret,
}

enum Secret {
    Password(Password),
    /// The APOP shared secret.
    Apop(Password),
}

impl Login {
    #[cfg(test)]
    fn password(user: &str, password: &str) -> Login {
        Login {
            user: user.into(),
            secret: Secret::Password(Password::new(password.into())),
        }
    }

    /// RFC 4616's message, base64: no authorization identity, the user, the password.
    fn plain_response(&self, password: &Password) -> String {
        let mut message = Vec::with_capacity(self.user.len() + password.expose().len() + 2);
        message.push(0);
        message.extend_from_slice(self.user.as_bytes());
        message.push(0);
        message.extend_from_slice(password.expose().as_bytes());
        let encoded = base64_simd::STANDARD.encode_to_string(&message);
        message.fill(0);
        encoded
    }
}

/// What the home-node login does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Read another line.
    Wait,
    /// Write these bytes to the home node, then read on.
    Send(Vec<u8>),
    /// Logged in: write these bytes to the client (the answer to its login), then relay.
    Ready(Vec<u8>),
    Fail(Failure),
}

/// Why a proxied login did not happen (each is a temporary failure to the client).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("the node table has no {0} address for the home node")]
    NoAddress(&'static str),
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("connection failed: {0}")]
    Io(String),
    #[error("the home node closed the connection")]
    Closed,
    #[error("no answer within the login timeout")]
    Timeout,
    #[error("the home node refused the login")]
    Refused,
    #[error("the home node's greeting offers no APOP")]
    NoApop,
    #[error("unexpected answer from the home node")]
    Protocol,
    #[error("line too long from the home node")]
    LineTooLong,
}

/// A sans-IO login at the home node, fed its lines one at a time (CRLF removed).
pub trait Upstream {
    fn line(&mut self, line: &[u8]) -> Step;
    /// Lines sent to the home node so far: each is one round trip (the connection and its
    /// greeting are one more).
    fn commands_sent(&self) -> u32;
}

/// POP3 at the home node: greeting, then `AUTH PLAIN <initial response>` (RFC 5034) or
/// `APOP` (RFC 1939 §7); its `+OK` line is the client's answer.
pub struct Pop3Upstream {
    login: Login,
    state: Pop3State,
    sent: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pop3State {
    Greeting,
    Authenticating,
    Done,
}

impl Pop3Upstream {
    pub fn new(login: Login) -> Pop3Upstream {
        Pop3Upstream {
            login,
            state: Pop3State::Greeting,
            sent: 0,
        }
    }

    fn command(&mut self, line: String) -> Step {
        self.sent += 1;
        self.state = Pop3State::Authenticating;
        Step::Send(line.into_bytes())
    }
}

impl Upstream for Pop3Upstream {
    fn line(&mut self, line: &[u8]) -> Step {
        match self.state {
            Pop3State::Greeting => {
                if !line.starts_with(b"+OK") {
                    self.state = Pop3State::Done;
                    return Step::Fail(Failure::Protocol);
                }
                match &self.login.secret {
                    Secret::Password(password) => {
                        let response = self.login.plain_response(password);
                        self.command(format!("AUTH PLAIN {response}\r\n"))
                    }
                    Secret::Apop(secret) => {
                        let Some(timestamp) = apop_timestamp(line) else {
                            self.state = Pop3State::Done;
                            return Step::Fail(Failure::NoApop);
                        };
                        let digest = apop_digest(timestamp, secret.expose());
                        let user = self.login.user.clone();
                        self.command(format!("APOP {user} {digest}\r\n"))
                    }
                }
            }
            Pop3State::Authenticating => {
                self.state = Pop3State::Done;
                if line.starts_with(b"+OK") {
                    let mut reply = line.to_vec();
                    reply.extend_from_slice(b"\r\n");
                    Step::Ready(reply)
                } else if line.starts_with(b"-ERR") {
                    Step::Fail(Failure::Refused)
                } else {
                    Step::Fail(Failure::Protocol)
                }
            }
            Pop3State::Done => Step::Fail(Failure::Protocol),
        }
    }

    fn commands_sent(&self) -> u32 {
        self.sent
    }
}

/// RFC 1939 §7: the greeting's `<…>` timestamp, brackets included.
fn apop_timestamp(greeting: &[u8]) -> Option<&str> {
    let start = greeting.iter().position(|&b| b == b'<')?;
    let end = start + greeting[start..].iter().position(|&b| b == b'>')?;
    std::str::from_utf8(&greeting[start..=end]).ok()
}

fn apop_digest(timestamp: &str, secret: &str) -> String {
    use md5::{Digest, Md5};
    let mut hasher = Md5::new();
    hasher.update(timestamp.as_bytes());
    hasher.update(secret.as_bytes());
    let digest = hasher.finalize();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// IMAP at the home node: greeting, `AUTHENTICATE PLAIN` (initial response with SASL-IR,
/// else after the `+`), then the client's tagged OK with the home node's post-login
/// capabilities (asked with CAPABILITY only when its OK carries none).
pub struct ImapUpstream {
    login: Login,
    client_tag: String,
    state: ImapState,
    /// Post-login capabilities, once known.
    capabilities: Option<String>,
    /// The OK's text, kept while CAPABILITY is asked.
    text: String,
    untagged: Vec<u8>,
    sent: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ImapState {
    Greeting,
    /// `initial`: the response went with the command (SASL-IR).
    Authenticating {
        initial: bool,
    },
    Capability,
    Done,
}

const AUTH_TAG: &str = "P1";
const CAPABILITY_TAG: &str = "P2";

impl ImapUpstream {
    /// `client_tag`: the tag of the client's login, which the answer carries.
    pub fn new(login: Login, client_tag: String) -> ImapUpstream {
        ImapUpstream {
            login,
            client_tag,
            state: ImapState::Greeting,
            capabilities: None,
            text: String::new(),
            untagged: Vec::new(),
            sent: 0,
        }
    }

    fn send(&mut self, line: String, state: ImapState) -> Step {
        self.sent += 1;
        self.state = state;
        Step::Send(line.into_bytes())
    }

    fn fail(&mut self, failure: Failure) -> Step {
        self.state = ImapState::Done;
        Step::Fail(failure)
    }

    fn ready(&mut self) -> Step {
        self.state = ImapState::Done;
        let Some(caps) = &self.capabilities else {
            return Step::Fail(Failure::Protocol);
        };
        let mut reply = std::mem::take(&mut self.untagged);
        let text = if self.text.is_empty() {
            "Logged in"
        } else {
            &self.text
        };
        reply.extend_from_slice(
            format!("{} OK [CAPABILITY {caps}] {text}\r\n", self.client_tag).as_bytes(),
        );
        Step::Ready(reply)
    }

    fn password(&self) -> Option<&Password> {
        match &self.login.secret {
            Secret::Password(password) => Some(password),
            Secret::Apop(_) => None,
        }
    }

    /// An untagged line while the login is answered: CAPABILITY is noted, the rest kept for
    /// the client.
    fn untagged(&mut self, line: &[u8]) -> Step {
        if let Some(caps) = strip_prefix_ci(line, b"* CAPABILITY ") {
            self.capabilities = Some(String::from_utf8_lossy(caps).into_owned());
            return Step::Wait;
        }
        if self.untagged.len() + line.len() + 2 > UNTAGGED_MAX {
            return self.fail(Failure::LineTooLong);
        }
        self.untagged.extend_from_slice(line);
        self.untagged.extend_from_slice(b"\r\n");
        Step::Wait
    }
}

impl Upstream for ImapUpstream {
    fn line(&mut self, line: &[u8]) -> Step {
        match self.state {
            ImapState::Greeting => {
                let Some(rest) = strip_prefix_ci(line, b"* OK") else {
                    // PREAUTH, BYE or nonsense: not a node to log in at.
                    return self.fail(Failure::Protocol);
                };
                let initial = response_code(rest)
                    .and_then(|code| strip_prefix_ci(code, b"CAPABILITY "))
                    .is_some_and(|caps| {
                        caps.split(|&b| b == b' ')
                            .any(|c| c.eq_ignore_ascii_case(b"SASL-IR"))
                    });
                let Some(password) = self.password() else {
                    return self.fail(Failure::Protocol);
                };
                let line = if initial {
                    let response = self.login.plain_response(password);
                    format!("{AUTH_TAG} AUTHENTICATE PLAIN {response}\r\n")
                } else {
                    format!("{AUTH_TAG} AUTHENTICATE PLAIN\r\n")
                };
                self.send(line, ImapState::Authenticating { initial })
            }
            ImapState::Authenticating { initial } => {
                if line.first() == Some(&b'+') {
                    if initial {
                        return self.fail(Failure::Protocol);
                    }
                    let Some(password) = self.password() else {
                        return self.fail(Failure::Protocol);
                    };
                    let response = self.login.plain_response(password);
                    return self.send(
                        format!("{response}\r\n"),
                        ImapState::Authenticating { initial: true },
                    );
                }
                if line.starts_with(b"* ") {
                    return self.untagged(line);
                }
                let Some(status) = tagged(line, AUTH_TAG) else {
                    return self.fail(Failure::Protocol);
                };
                let Some(rest) = strip_prefix_ci(status, b"OK") else {
                    return self.fail(Failure::Refused);
                };
                let rest = rest.strip_prefix(b" ").unwrap_or(rest);
                let mut text = rest;
                if let Some(code) = response_code(rest) {
                    if let Some(caps) = strip_prefix_ci(code, b"CAPABILITY ") {
                        self.capabilities = Some(String::from_utf8_lossy(caps).into_owned());
                    }
                    text = &rest[code.len() + 2..];
                }
                self.text = String::from_utf8_lossy(text.trim_ascii()).into_owned();
                if self.capabilities.is_some() {
                    return self.ready();
                }
                self.send(
                    format!("{CAPABILITY_TAG} CAPABILITY\r\n"),
                    ImapState::Capability,
                )
            }
            ImapState::Capability => {
                if line.starts_with(b"* ") {
                    return self.untagged(line);
                }
                match tagged(line, CAPABILITY_TAG) {
                    Some(status) if strip_prefix_ci(status, b"OK").is_some() => self.ready(),
                    _ => self.fail(Failure::Protocol),
                }
            }
            ImapState::Done => Step::Fail(Failure::Protocol),
        }
    }

    fn commands_sent(&self) -> u32 {
        self.sent
    }
}

fn strip_prefix_ci<'a>(line: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    (line.len() >= prefix.len() && line[..prefix.len()].eq_ignore_ascii_case(prefix))
        .then(|| &line[prefix.len()..])
}

/// The status after `tag ` of a tagged response.
fn tagged<'a>(line: &'a [u8], tag: &str) -> Option<&'a [u8]> {
    line.strip_prefix(tag.as_bytes())?.strip_prefix(b" ")
}

/// The text inside a leading `[…]` (after optional spaces).
fn response_code(rest: &[u8]) -> Option<&[u8]> {
    let rest = rest.trim_ascii_start();
    let inner = rest.strip_prefix(b"[")?;
    let end = inner.iter().position(|&b| b == b']')?;
    Some(&inner[..end])
}

/// The next complete line in `input[*consumed..]` (its range without CRLF), or `None` for
/// a partial one.
fn next_line(input: &[u8], consumed: &mut usize) -> Result<Option<Range<usize>>, Failure> {
    let rest = &input[*consumed..];
    match memchr::memchr(b'\n', rest) {
        Some(at) => {
            let start = *consumed;
            let mut end = start + at;
            if end > start && input[end - 1] == b'\r' {
                end -= 1;
            }
            *consumed += at + 1;
            Ok(Some(start..end))
        }
        None if rest.len() > LINE_MAX => Err(Failure::LineTooLong),
        None => Ok(None),
    }
}

/// A logged-in connection to the home node.
struct Established<B> {
    upstream: B,
    /// The client's answer to its login.
    reply: Vec<u8>,
    /// Bytes the home node sent after its answer (the client's, too).
    leftover: Vec<u8>,
    round_trips: u32,
}

/// Connects to `addr` and runs `machine` there, all within [`UPSTREAM_LOGIN_TIMEOUT`].
async fn establish<K: Connector, U: Upstream>(
    connector: &K,
    addr: SocketAddr,
    machine: &mut U,
) -> Result<Established<K::Conn>, Failure> {
    let deadline = Instant::now() + UPSTREAM_LOGIN_TIMEOUT;
    let upstream = connector
        .connect(addr, UPSTREAM_LOGIN_TIMEOUT)
        .await
        .map_err(|e| Failure::Connect(e.to_string()))?;
    let mut input = Vec::with_capacity(IDLE_READ);
    let mut consumed = 0;
    loop {
        loop {
            let line = match next_line(&input, &mut consumed) {
                Ok(Some(line)) => line,
                Ok(None) => break,
                Err(failure) => {
                    upstream.shutdown();
                    return Err(failure);
                }
            };
            match machine.line(&input[line]) {
                Step::Wait => {}
                Step::Send(bytes) => {
                    let limit = deadline.saturating_duration_since(Instant::now());
                    match within(&upstream, limit, upstream.write_all(bytes)).await {
                        Ok((Ok(()), _)) => {}
                        Ok((Err(error), _)) => {
                            upstream.shutdown();
                            return Err(Failure::Io(error.to_string()));
                        }
                        Err(_) => return Err(Failure::Timeout),
                    }
                }
                Step::Ready(reply) => {
                    return Ok(Established {
                        upstream,
                        reply,
                        leftover: input[consumed..].to_vec(),
                        round_trips: machine.commands_sent() + 1,
                    })
                }
                Step::Fail(failure) => {
                    upstream.shutdown();
                    return Err(failure);
                }
            }
        }
        input.drain(..consumed);
        consumed = 0;
        if input.capacity() - input.len() < IDLE_READ {
            input.reserve(READ_CHUNK);
        }
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
    }
}

/// How a proxied login ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proxied {
    /// The session ran at the home node and is over: the connection is closed.
    Done,
    /// No login at the home node: the driver answers with a temporary failure and the
    /// session goes on (the client may try again).
    Unavailable,
}

/// What one proxied session needs besides the client's connection.
pub struct Session<'a> {
    pub ctx: &'a ShardContext,
    pub peer: SocketAddr,
    pub home: Home,
    /// Answers the client has not been sent yet (they go before the login's).
    pub pending: &'a mut Vec<u8>,
    /// What the client sent after its login command (for the home node).
    pub input: &'a [u8],
}

/// A POP3 login proxied to `session.home`.
pub async fn pop3<C: Connection>(client: &C, session: Session<'_>, login: Login) -> Proxied {
    let idle = session.ctx.pop3.idle_timeout;
    let addr = session.home.pop3;
    let machine = Pop3Upstream::new(login);
    proxy(client, session, addr, machine, idle, "pop3").await
}

/// An IMAP login proxied to `session.home`; `tag` is the client's login command's.
pub async fn imap<C: Connection>(
    client: &C,
    session: Session<'_>,
    login: Login,
    tag: String,
) -> Proxied {
    let idle = session.ctx.imap.idle_timeout;
    let addr = session.home.imap;
    let machine = ImapUpstream::new(login, tag);
    proxy(client, session, addr, machine, idle, "imap").await
}

async fn proxy<C: Connection, U: Upstream>(
    client: &C,
    session: Session<'_>,
    addr: Option<SocketAddr>,
    machine: U,
    idle: Duration,
    protocol: &'static str,
) -> Proxied {
    match session.ctx.engine {
        Engine::Uring => {
            run(
                &UringConnector,
                client,
                session,
                addr,
                machine,
                idle,
                protocol,
            )
            .await
        }
        Engine::Epoll => {
            run(
                &EpollConnector,
                client,
                session,
                addr,
                machine,
                idle,
                protocol,
            )
            .await
        }
    }
}

async fn run<K: Connector, C: Connection, U: Upstream>(
    connector: &K,
    client: &C,
    session: Session<'_>,
    addr: Option<SocketAddr>,
    mut machine: U,
    idle: Duration,
    protocol: &'static str,
) -> Proxied {
    let Session {
        ctx,
        peer,
        home,
        pending,
        input,
    } = session;
    let established = match addr {
        Some(addr) => establish(connector, addr, &mut machine).await,
        None => Err(Failure::NoAddress(protocol)),
    };
    let Established {
        upstream,
        reply,
        leftover,
        round_trips,
    } = match established {
        Ok(established) => established,
        Err(failure) => {
            tracing::warn!(target: "relay::cluster", protocol, client = %peer.ip(), home = %home.node, error = %Safe(&failure.to_string()), "proxied login failed: home node unavailable");
            return Proxied::Unavailable;
        }
    };
    tracing::info!(target: "relay::cluster", protocol, client = %peer.ip(), home = %home.node, round_trips, "login proxied");
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
    tracing::debug!(target: "relay::cluster", protocol, client = %peer, to_home = up, from_home = down, "proxied session closed");
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
    let watchdog = async {
        loop {
            let until = last.get() + idle;
            if Instant::now() >= until {
                return;
            }
            tokio::time::sleep_until(until).await;
        }
    };
    tokio::select! {
        biased;
        moved = &mut pumps => moved,
        () = watchdog => {
            client.shutdown();
            upstream.shutdown();
            pumps.await
        }
        () = stop_requested(&mut phase, false) => {
            client.shutdown();
            upstream.shutdown();
            pumps.await
        }
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

    fn b64(text: &[u8]) -> String {
        base64_simd::STANDARD.encode_to_string(text)
    }

    fn lines(machine: &mut impl Upstream, lines: &[&str]) -> Vec<Step> {
        lines.iter().map(|l| machine.line(l.as_bytes())).collect()
    }

    #[test]
    fn pop3_logs_in_with_auth_plain_and_answers_with_the_home_nodes_ok() {
        let mut pop3 = Pop3Upstream::new(Login::password("alice", "s3cret"));
        let steps = lines(
            &mut pop3,
            &[
                "+OK relay ready <1.2@b>",
                "+OK maildrop has 2 messages (30 octets)",
            ],
        );
        let auth = format!("AUTH PLAIN {}\r\n", b64(b"\0alice\0s3cret"));
        assert_eq!(
            steps,
            vec![
                Step::Send(auth.into_bytes()),
                Step::Ready(b"+OK maildrop has 2 messages (30 octets)\r\n".to_vec()),
            ]
        );
        assert_eq!(pop3.commands_sent(), 1);
    }

    #[test]
    fn pop3_refusal_and_bad_greeting_fail() {
        let mut pop3 = Pop3Upstream::new(Login::password("alice", "x"));
        let steps = lines(&mut pop3, &["+OK hi", "-ERR [AUTH] no"]);
        assert_eq!(steps[1], Step::Fail(Failure::Refused));
        let mut pop3 = Pop3Upstream::new(Login::password("alice", "x"));
        assert_eq!(
            pop3.line(b"-ERR [SYS/TEMP] busy"),
            Step::Fail(Failure::Protocol)
        );
        // A continuation where the initial response was given: not a server to trust.
        let mut pop3 = Pop3Upstream::new(Login::password("alice", "x"));
        assert_eq!(
            lines(&mut pop3, &["+OK", "+ "])[1],
            Step::Fail(Failure::Protocol)
        );
    }

    #[test]
    fn pop3_apop_uses_the_home_nodes_timestamp_and_the_stored_secret() {
        let login = Login {
            user: "alice".into(),
            secret: Secret::Apop(Password::new("tanstaaf".into())),
        };
        let mut pop3 = Pop3Upstream::new(login);
        // RFC 1939's own example.
        let step = pop3.line(b"+OK POP3 server ready <1896.697170952@dbc.mtview.ca.us>");
        assert_eq!(
            step,
            Step::Send(b"APOP alice c4c9334bac560ecc979e58001b3e22fb\r\n".to_vec())
        );
        assert_eq!(pop3.line(b"+OK"), Step::Ready(b"+OK\r\n".to_vec()));
        let login = Login {
            user: "alice".into(),
            secret: Secret::Apop(Password::new("x".into())),
        };
        let mut pop3 = Pop3Upstream::new(login);
        assert_eq!(pop3.line(b"+OK no stamp"), Step::Fail(Failure::NoApop));
    }

    #[test]
    fn imap_with_sasl_ir_takes_the_capabilities_from_the_tagged_ok() {
        let mut imap = ImapUpstream::new(Login::password("alice", "pw"), "a001".into());
        let steps = lines(
            &mut imap,
            &[
                "* OK [CAPABILITY IMAP4rev2 AUTH=PLAIN SASL-IR] ready",
                "P1 OK [CAPABILITY IMAP4rev2 IDLE MOVE] Logged in",
            ],
        );
        let auth = format!("P1 AUTHENTICATE PLAIN {}\r\n", b64(b"\0alice\0pw"));
        assert_eq!(
            steps,
            vec![
                Step::Send(auth.into_bytes()),
                Step::Ready(b"a001 OK [CAPABILITY IMAP4rev2 IDLE MOVE] Logged in\r\n".to_vec()),
            ]
        );
        assert_eq!(imap.commands_sent(), 1);
    }

    #[test]
    fn imap_without_sasl_ir_or_capability_code_takes_two_more_round_trips() {
        let mut imap = ImapUpstream::new(Login::password("alice", "pw"), "x7".into());
        let steps = lines(
            &mut imap,
            &[
                "* OK ready",
                "+ ",
                "* NOTE something",
                "P1 OK done",
                "* CAPABILITY IMAP4rev1 IDLE",
                "P2 OK CAPABILITY completed",
            ],
        );
        assert_eq!(
            steps,
            vec![
                Step::Send(b"P1 AUTHENTICATE PLAIN\r\n".to_vec()),
                Step::Send(format!("{}\r\n", b64(b"\0alice\0pw")).into_bytes()),
                Step::Wait,
                Step::Send(b"P2 CAPABILITY\r\n".to_vec()),
                Step::Wait,
                Step::Ready(
                    b"* NOTE something\r\nx7 OK [CAPABILITY IMAP4rev1 IDLE] done\r\n".to_vec()
                ),
            ]
        );
        assert_eq!(imap.commands_sent(), 3);
    }

    #[test]
    fn imap_refusals_and_odd_greetings_fail() {
        let mut imap = ImapUpstream::new(Login::password("a", "b"), "t".into());
        let steps = lines(
            &mut imap,
            &[
                "* OK [CAPABILITY SASL-IR] hi",
                "P1 NO [AUTHENTICATIONFAILED] no",
            ],
        );
        assert_eq!(steps[1], Step::Fail(Failure::Refused));
        for greeting in ["* PREAUTH hi", "* BYE busy", "hello"] {
            let mut imap = ImapUpstream::new(Login::password("a", "b"), "t".into());
            assert_eq!(
                imap.line(greeting.as_bytes()),
                Step::Fail(Failure::Protocol)
            );
        }
        // An unexpected tag.
        let mut imap = ImapUpstream::new(Login::password("a", "b"), "t".into());
        let steps = lines(&mut imap, &["* OK [CAPABILITY SASL-IR] hi", "Q9 OK what"]);
        assert_eq!(steps[1], Step::Fail(Failure::Protocol));
    }

    #[test]
    fn imap_untagged_lines_are_bounded() {
        let mut imap = ImapUpstream::new(Login::password("a", "b"), "t".into());
        imap.line(b"* OK [CAPABILITY SASL-IR] hi");
        let long = format!("* {}", "x".repeat(1000));
        let mut failed = false;
        for _ in 0..(UNTAGGED_MAX / 1000 + 2) {
            if imap.line(long.as_bytes()) == Step::Fail(Failure::LineTooLong) {
                failed = true;
                break;
            }
        }
        assert!(failed);
    }

    #[test]
    fn lines_are_split_and_bounded() {
        let input = b"+OK a\r\n+OK b\npart";
        let mut consumed = 0;
        let first = next_line(input, &mut consumed).unwrap().unwrap();
        assert_eq!(&input[first], b"+OK a");
        let second = next_line(input, &mut consumed).unwrap().unwrap();
        assert_eq!(&input[second], b"+OK b");
        assert_eq!(next_line(input, &mut consumed), Ok(None));
        let long = vec![b'x'; LINE_MAX + 1];
        assert_eq!(next_line(&long, &mut 0), Err(Failure::LineTooLong));
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
