//! The cluster listener (`cluster.listen`): SMTP between nodes over mutual TLS, and by ALPN
//! the other conversations between nodes: the queue transfer (`relay-xfer`,
//! [`super::xfer_session`]), the user move (`relay-move`, [`super::move_in`]), proxied
//! POP3/IMAP/web logins (`relay-login`, [`super::login_in`]) and the requests of web
//! sessions proxied here (`relay-web`, [`super::web_in`]: HTTP/1.1 to this node's web
//! server inside the TLS).
//!
//! **Who may connect.** TLS from the first byte with [`crate::net::tls::ClusterTls`]'s server
//! side: the client must present a certificate that chains to `cluster.ca`, or the
//! handshake fails and the connection closes before any SMTP (logged, counted as an SMTP TLS
//! failure). A peer that passed is an authenticated node and is trusted like a relay network
//! client: it may relay (a draining peer hands over mail for anywhere), no message rate,
//! no block lists, and once verified its connection no longer counts against
//! `server.connections_per_ip_max` (a front node keeps one connection per proxied POP3/IMAP
//! session here); until then it does, like any client.
//!
//! **What it takes.** The SMTP driver (`server::smtp`) and session are the public
//! listener's, with the session configured by [`session_config`]: no STARTTLS and no AUTH
//! (TLS is already up), cluster MAIL parameters allowed, and local recipients resolved with
//! `Homes::Node { peer: true }`: a user homed here gets the mail; a user homed on another
//! node is `450 4.2.0` and an unknown address `550 5.1.1`. Neither stores anything, so two
//! nodes that disagree cannot pass a message back and forth; the temporary answer is the
//! choice for "the directory is changing" (a user move, a change not yet seen here): the
//! sender's queue retries until the directories agree (a lasting disagreement is a
//! misconfiguration, visible as deferrals, bounced at `delivery.max_age`).
//!
//! **How it stores.** [`accept`] replaces `ingest::accept`: no sender checks (the first
//! node ran SPF/DKIM/DMARC and removed forged `Authentication-Results` carrying our
//! authserv-id, which the nodes share), no DKIM signing and no Received field: the bytes
//! the peer sends are stored as they are, so a message for a user homed here is stored
//! exactly as the first node would have stored it (sealed for users whose mail is
//! encrypted, as on every path).
//!
//! **Hooks for the peers (MAIL parameters).** `XQUEUE=<node>.<queue id>` names the sender's
//! queue entry: the duplicate check below. Other `X…` parameters are parsed by the session
//! (`MailParams::cluster`) and reach [`accept`], where a queue transfer (node drain) reads
//! its own (schedule, attempts); parameters this node does not know are ignored.
//!
//! **Duplicates.** The sender records "delivered" only after our 250; if it dies in
//! between it sends again. [`Seen`] remembers `(XQUEUE, recipient)` for the last
//! [`SEEN_MAX`] recipients and answers a resent recipient 250 with its first queue id,
//! without storing it again. The key travels in the stored message itself: its origin is
//! `helo = XQUEUE tag`, `protocol = `[`ORIGIN_PROTOCOL`] (the peer's address is kept), so the
//! message and the fact that it came from that queue entry are one durable write. The
//! record is also appended to a file in the spool directory (`cluster-seen`, written after
//! the spool commit and before the 250, not fsynced): it keeps the window for messages that
//! have since left the spool (delivered onward, or deleted by their user and compacted). At
//! start [`Seen::open`] reads that file and then adds the keys of the live messages stored
//! for a peer since shortly before its newest entry, which covers a crash between the
//! commit and the file write (the message is there, its line is not). What is left is a
//! resend after a power loss that took the file's last lines of a message that is no
//! longer in the spool: the sender's retries come within minutes, the user's deletion and a
//! compaction would have to come first.
use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use super::admission::Permit;
use super::shard::ShardContext;
use crate::envelope::QueueId;
use crate::logsafe::Safe;
use crate::net::io::Connection;
use crate::net::tls::ClusterTls;
use crate::smtp::{Lookup, Mailboxes, SessionConfig, Submission, SubmitError};
use crate::spool::Spool;

/// Recipients remembered for the duplicate check: many hours of a node's cross-node mail;
/// a resend comes within the sender's retry schedule (minutes).
pub const SEEN_MAX: usize = 100_000;

/// The duplicate record's file in the spool directory.
pub const SEEN_FILE: &str = "cluster-seen";

/// The origin protocol of a message stored for a peer with `XQUEUE` (its origin's `helo` is
/// the tag).
pub const ORIGIN_PROTOCOL: &str = "XCLUSTER";

/// How far before the record's newest entry [`Seen::open`] looks for messages stored for a
/// peer: a queue id is taken just before the spool append, so a message committed after
/// the last line was written has an id at most one slow commit older than that line.
const RESCAN_MARGIN_MICROS: u64 = 10 * 60 * 1_000_000;

/// What every shard's cluster listener shares.
pub struct ClusterListener {
    pub node: String,
    pub tls: ClusterTls,
    /// The listener's side of `tls`, with the ALPN protocols of the queue transfer and of
    /// the user move ([`server_tls`]).
    pub server_tls: Arc<rustls::ServerConfig>,
    pub session: Arc<SessionConfig>,
    pub seen: Seen,
    /// The spool directory (the duplicate record and the test seam live there).
    pub spool_dir: PathBuf,
    /// Queue transfers stored here (`relay node drain` on a peer): the duplicate record.
    pub xfer: Arc<super::xfer_in::XferLog>,
}

/// The cluster listener's TLS: `tls`'s server side that also offers the user-move
/// conversation (`relay user move` on a peer, [`super::move_in`]), the proxied login
/// (a peer's POP3, IMAP or web client, [`super::login_in`]) and a proxied web session's
/// requests ([`super::web_in`]).
pub fn server_tls(tls: &ClusterTls) -> Arc<rustls::ServerConfig> {
    let mut config = (*tls.server()).clone();
    for alpn in [
        crate::cluster::move_wire::ALPN,
        crate::cluster::login_wire::ALPN,
        crate::cluster::login_wire::WEB_ALPN,
    ] {
        config.alpn_protocols.push(alpn.to_vec());
    }
    Arc::new(config)
}

/// The cluster listener's session settings, from the public ones: peers are relay clients
/// (authenticated by their certificate), STARTTLS and AUTH are off (TLS is up before the
/// greeting), cluster MAIL parameters are on, and `mailboxes` answers for users homed here
/// only.
pub fn session_config(public: &SessionConfig, mailboxes: Mailboxes) -> SessionConfig {
    SessionConfig {
        relay_networks: vec![
            ipnet::IpNet::V4(ipnet::Ipv4Net::new_assert(
                std::net::Ipv4Addr::UNSPECIFIED,
                0,
            )),
            ipnet::IpNet::V6(ipnet::Ipv6Net::new_assert(
                std::net::Ipv6Addr::UNSPECIFIED,
                0,
            )),
        ],
        mailboxes: Some(mailboxes),
        starttls: false,
        allow_plaintext_auth: false,
        cluster_params: true,
        message_rate: None,
        ..public.clone()
    }
}

/// Serves one connection on the cluster listener: the mutual-TLS handshake, then the SMTP
/// driver over it.
pub async fn serve<C: Connection>(
    conn: C,
    peer: SocketAddr,
    ctx: Rc<ShardContext>,
    permit: Permit,
) {
    let Some(cluster) = ctx.cluster.as_ref() else {
        conn.shutdown();
        return;
    };
    let config = Arc::clone(&cluster.server_tls);
    match crate::net::tls::accept(conn, config, &[], ctx.tls_handshake_timeout).await {
        Ok((tls, summary)) => {
            ctx.metrics.smtp.tls_handshakes.inc();
            let permit = permit.peer_verified();
            if tls.alpn_protocol().as_deref() == Some(crate::cluster::move_wire::ALPN) {
                // A peer moves one of its users here (`relay user move`).
                super::move_in::serve(&tls, &ctx, peer).await;
                drop(permit);
                return;
            }
            if tls.alpn_protocol().as_deref() == Some(crate::cluster::login_wire::ALPN) {
                // A peer's client logged in there; its session runs here.
                super::login_in::serve(&tls, &ctx, peer).await;
                drop(permit);
                return;
            }
            if tls.alpn_protocol().as_deref() == Some(crate::cluster::login_wire::WEB_ALPN) {
                // A peer forwards a request of a web session proxied here.
                super::web_in::serve(&tls, &ctx, peer).await;
                drop(permit);
                return;
            }
            if tls.alpn_protocol().as_deref() == Some(crate::net::tls::XFER_ALPN) {
                // A draining peer hands over its queue (`relay node drain`).
                super::xfer_session::serve(&tls, &ctx, &cluster.xfer, peer).await;
                drop(permit);
                return;
            }
            tracing::debug!(client = %peer, version = %summary.version, "cluster peer authenticated");
            super::smtp::serve_peer(tls, summary, peer, ctx, permit).await;
        }
        Err(failure) => {
            ctx.metrics.smtp.tls_failures.inc();
            tracing::info!(target: "relay::cluster", client = %peer.ip(), failure = %Safe(&failure), "cluster peer refused at the TLS handshake");
        }
    }
}

/// The queue tag of `XQUEUE=`: `node.QUEUEID` (a node name and 16 hex digits), or `None`.
fn queue_tag(params: &[(String, String)]) -> Option<&str> {
    let (_, value) = params
        .iter()
        .find(|(k, _)| k == crate::delivery::cluster::XQUEUE)?;
    let (node, id) = value.split_once('.')?;
    (crate::config::cluster::valid_node_name(node) && id.parse::<QueueId>().is_ok())
        .then_some(value.as_str())
}

/// Stores one message from a peer (see the module doc): the duplicate check, then the
/// spool as sent.
pub async fn accept(
    ctx: &ShardContext,
    mut submission: Submission,
    peer: SocketAddr,
) -> Result<QueueId, SubmitError> {
    let Some(cluster) = ctx.cluster.as_ref() else {
        return Err(SubmitError::Storage);
    };
    let params = std::mem::take(&mut submission.envelope.params.cluster);
    let tag = queue_tag(params.as_slice()).map(str::to_string);
    let Some(tag) = tag else {
        return super::ingest::store_as_sent(ctx, submission, peer).await;
    };
    let key = |address: &str| seen_key(&tag, address);
    let recipients = &submission.envelope.recipients;
    let before: Vec<Option<QueueId>> = recipients
        .iter()
        .map(|r| cluster.seen.get(&key(&r.address)))
        .collect();
    if let Some(Some(first)) = before
        .first()
        .filter(|_| before.iter().all(Option::is_some))
    {
        tracing::info!(
            target: "relay::transaction",
            client = %peer.ip(),
            peer_queue = %Safe(&tag),
            queue_id = %first,
            rcpts = recipients.len(),
            result = "duplicate",
            "already stored; not stored again"
        );
        return Ok(*first);
    }
    if before.iter().any(Option::is_some) {
        narrow(&cluster.session, &mut submission, &before);
    }
    let keys: Vec<String> = submission
        .envelope
        .recipients
        .iter()
        .map(|r| key(&r.address))
        .collect();
    submission.origin.helo = tag.clone();
    submission.origin.protocol = ORIGIN_PROTOCOL.into();
    let id = super::ingest::store_as_sent(ctx, submission, peer).await?;
    pause_after_commit(&cluster.spool_dir, &tag);
    cluster.seen.record(&keys, id);
    tracing::info!(target: "relay::cluster", queue_id = %id, client = %peer.ip(), peer_queue = %Safe(&tag), rcpts = keys.len(), "stored for a peer");
    Ok(id)
}

/// Test seam (debug builds only): while `<spool>/cluster-pause-stored` exists, a message
/// stored for a peer waits between its spool commit and its duplicate record, so a test can
/// kill the node in that window.
fn pause_after_commit(dir: &Path, tag: &str) {
    if !cfg!(debug_assertions) {
        return;
    }
    let file = dir.join("cluster-pause-stored");
    if file.exists() {
        tracing::warn!(target: "relay::cluster", peer_queue = %Safe(tag), "paused between the spool commit and the duplicate record");
        while file.exists() {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

/// The duplicate keys of one recipient: `XQUEUE tag` and the address, lowercased.
fn seen_key(tag: &str, address: &str) -> String {
    format!("{tag}\t{}", address.to_ascii_lowercase())
}

/// Keeps only the recipients not stored before, and resolves them again (mailboxes and
/// remote addresses as the session would have).
fn narrow(session: &SessionConfig, submission: &mut Submission, before: &[Option<QueueId>]) {
    let recipients = std::mem::take(&mut submission.envelope.recipients);
    submission.envelope.recipients = recipients
        .into_iter()
        .zip(before)
        .filter(|(_, seen)| seen.is_none())
        .map(|(r, _)| r)
        .collect();
    let (mut mailboxes, mut remote) = (Vec::new(), Vec::new());
    for r in &submission.envelope.recipients {
        let local = match r.address.rsplit_once('@') {
            None => true,
            Some((_, domain)) => session
                .local_domains
                .iter()
                .any(|d| d.eq_ignore_ascii_case(domain)),
        };
        let lookup = session
            .mailboxes
            .as_ref()
            .filter(|_| local)
            .map(|m| m.0.lookup(&r.address, 0));
        match lookup {
            Some(Lookup::Deliver {
                mailboxes: m,
                forward,
            }) => {
                push_unique(&mut mailboxes, m);
                push_unique(&mut remote, forward);
            }
            // Accepted at RCPT a moment ago; a directory change since is the next try's.
            Some(Lookup::Unknown | Lookup::OverQuota | Lookup::Elsewhere) => {}
            None => push_unique(&mut remote, vec![r.address.clone()]),
        }
    }
    submission.mailboxes = mailboxes;
    submission.remote = remote;
}

fn push_unique(list: &mut Vec<String>, items: Vec<String>) {
    for item in items {
        if !list.contains(&item) {
            list.push(item);
        }
    }
}

/// The duplicate record: `(XQUEUE, recipient)` → the queue id it was stored under, for the
/// last [`SEEN_MAX`] recipients (module doc). One lock for every shard: taken for a lookup
/// per recipient and one append per message from a peer.
pub struct Seen {
    inner: Mutex<SeenInner>,
}

struct SeenInner {
    map: HashMap<String, QueueId>,
    order: VecDeque<String>,
    path: PathBuf,
    file: Option<File>,
    /// Lines in the file: past twice the limit it is rewritten with the current ones.
    lines: usize,
}

/// Why the duplicate record could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct SeenError {
    path: PathBuf,
    source: std::io::Error,
}

impl Seen {
    /// Reads `dir/cluster-seen` (absent: empty), adds the keys of the live messages in
    /// `spool` stored for a peer since [`RESCAN_MARGIN_MICROS`] before the file's newest
    /// entry (all of them when the file is empty), keeps the last [`SEEN_MAX`] entries and
    /// rewrites the file with them.
    pub fn open(dir: &Path, spool: Option<&Spool>) -> Result<Seen, SeenError> {
        let path = dir.join(SEEN_FILE);
        let failed = |source| SeenError {
            path: path.clone(),
            source,
        };
        let mut inner = SeenInner {
            map: HashMap::new(),
            order: VecDeque::new(),
            path: path.clone(),
            file: None,
            lines: 0,
        };
        let mut newest: Option<u64> = None;
        match File::open(&path) {
            Ok(file) => {
                for line in BufReader::new(file).lines() {
                    // A torn last line (a crash mid-write) is skipped.
                    let Ok(line) = line else { break };
                    if let Some((key, id)) = line.rsplit_once('\t') {
                        if let Ok(id) = id.parse::<QueueId>() {
                            newest = newest.max(Some(id.micros()));
                            inner.insert(key.to_string(), id);
                        }
                    }
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(failed(error)),
        }
        if let Some(spool) = spool {
            let since = newest.map_or(0, |m| m.saturating_sub(RESCAN_MARGIN_MICROS));
            for (key, id) in stored_for_peers(spool, since) {
                inner.insert(key, id);
            }
        }
        inner.rewrite().map_err(failed)?;
        Ok(Seen {
            inner: Mutex::new(inner),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SeenInner> {
        // A panic mid-update leaves a usable map (at worst one entry short).
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn get(&self, key: &str) -> Option<QueueId> {
        self.lock().map.get(key).copied()
    }

    /// Remembers `keys` as stored under `id`; a write error is logged (the cost is a
    /// possible duplicate, never a loss).
    pub fn record(&self, keys: &[String], id: QueueId) {
        let mut inner = self.lock();
        let mut text = String::new();
        for key in keys {
            inner.insert(key.clone(), id);
            text.push_str(&format!("{key}\t{id}\n"));
        }
        inner.lines += keys.len();
        let written = match inner.file.as_mut() {
            Some(file) => file.write_all(text.as_bytes()),
            None => Err(std::io::Error::other("not open")),
        };
        if let Err(error) = written {
            tracing::warn!(target: "relay::cluster", %error, "cannot write the cluster duplicate record; a resend may be stored twice");
        }
        if inner.lines > 2 * SEEN_MAX {
            if let Err(error) = inner.rewrite() {
                tracing::warn!(target: "relay::cluster", %error, "cannot rewrite the cluster duplicate record");
            }
        }
    }
}

/// The duplicate keys of the live messages in `spool` stored for a peer (origin protocol
/// [`ORIGIN_PROTOCOL`]) whose queue id is from `since_micros` on, oldest first. A message
/// that cannot be read is skipped (recovery has already reported it).
fn stored_for_peers(spool: &Spool, since_micros: u64) -> Vec<(String, QueueId)> {
    let mut ids = Vec::new();
    spool.live_view(|m| {
        if m.id.micros() >= since_micros {
            ids.push(m.id);
        }
    });
    ids.sort_unstable_by_key(|id| id.micros());
    let mut keys = Vec::new();
    for id in ids {
        let Some(message) = spool.locate(id).and_then(|at| spool.read_message(&at).ok()) else {
            continue;
        };
        let origin = &message.meta.origin;
        if origin.protocol != ORIGIN_PROTOCOL {
            continue;
        }
        for r in &message.meta.envelope.recipients {
            keys.push((seen_key(&origin.helo, &r.address), id));
        }
    }
    keys
}

impl SeenInner {
    fn insert(&mut self, key: String, id: QueueId) {
        if self.map.insert(key.clone(), id).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > SEEN_MAX {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
    }

    /// Writes the current entries to a new file and renames it over the old one.
    fn rewrite(&mut self) -> std::io::Result<()> {
        let tmp = self.path.with_extension("new");
        let mut out = std::io::BufWriter::new(File::create(&tmp)?);
        for key in &self.order {
            if let Some(id) = self.map.get(key) {
                writeln!(out, "{key}\t{id}")?;
            }
        }
        out.into_inner().map_err(|e| e.into_error())?.sync_data()?;
        std::fs::rename(&tmp, &self.path)?;
        self.file = Some(OpenOptions::new().append(true).open(&self.path)?);
        self.lines = self.order.len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_tag_is_a_node_and_a_queue_id() {
        let tag = |v: &str| vec![("XQUEUE".to_string(), v.to_string())];
        assert_eq!(
            queue_tag(&tag("a.00000000000000FF")),
            Some("a.00000000000000FF")
        );
        assert_eq!(queue_tag(&tag("A.00000000000000FF")), None);
        assert_eq!(queue_tag(&tag("a.xyz")), None);
        assert_eq!(queue_tag(&tag("a b.00000000000000FF")), None);
        assert_eq!(
            queue_tag(&[("XOTHER".to_string(), "a.00000000000000FF".to_string())]),
            None
        );
    }

    #[test]
    fn seen_survives_a_reopen_and_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let seen = Seen::open(dir.path(), None).unwrap();
        assert_eq!(seen.get("a.1\tx@y"), None);
        seen.record(&["a.1\tx@y".into(), "a.1\tz@y".into()], QueueId(7));
        assert_eq!(seen.get("a.1\tz@y"), Some(QueueId(7)));
        drop(seen);
        // A torn line at the end (a crash mid-write) is skipped.
        let mut file = OpenOptions::new()
            .append(true)
            .open(dir.path().join(SEEN_FILE))
            .unwrap();
        file.write_all(b"a.2\tq@y\t00").unwrap();
        let seen = Seen::open(dir.path(), None).unwrap();
        assert_eq!(seen.get("a.1\tx@y"), Some(QueueId(7)));
        assert_eq!(seen.get("a.2\tq@y"), None);
        let mut inner = seen.lock();
        for i in 0..SEEN_MAX + 5 {
            inner.insert(format!("k{i}"), QueueId(1));
        }
        assert_eq!(inner.map.len(), SEEN_MAX);
        assert!(!inner.map.contains_key("a.1\tx@y"));
        assert!(inner.map.contains_key(&format!("k{}", SEEN_MAX + 4)));
    }
}
