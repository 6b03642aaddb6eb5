//! The web pages' [`Backend`] answered by the server: a thread of its own (not a shard)
//! holds a shard-style context and runs each request there, so logins go through the
//! shared throttling and hash pool, reads and flag changes through the mail store (writes
//! durable in the user's turn), and sending through the same ingest as an authenticated
//! SMTP submission (DKIM-signed, durable in the spool before Ok, handed to delivery).
//!
//! Requests cross from the web runtime to this thread over a bounded channel; a full
//! channel makes the page wait, a stopped thread answers "unavailable".

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::SystemTime;

use imap_codec::imap_types::core::AString;
use imap_codec::imap_types::search::SearchKey;
use tokio::sync::{mpsc, oneshot};

use super::auth::{Denied, Proof};
use super::imap_store::UserStoreLink;
use super::shard::{Protocol, ShardContext};
use super::{Contexts, ServerError};
use crate::config::Config;
use crate::envelope::{Envelope, Origin, Recipient};
use crate::imap::search as imap_search;
use crate::imap::store as imap_store;
use crate::mailstore::Entry;
use crate::mailstore::FlagMode;
use crate::smtp::{Lookup, Password, Submission, SubmitError};
use crate::spool::state::{self as st, system_flag};
use crate::web::backend::BoxFuture;
use crate::web::{
    Action, Backend, BackendError, Client, FolderPage, FolderSummary, ListedMessage, LoginError,
    Outgoing, StoredMessage, WebListener, WebServer, WebSettings,
};

type Job = Box<dyn FnOnce(Rc<ShardContext>) -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// Requests waiting for the store thread.
const QUEUE: usize = 256;
/// The header section shown in a list is cut here (a list needs From, Subject, Date).
const LIST_HEADER_MAX: usize = 16 * 1024;

/// The web side when `[web]` listens: its runtime and the store thread behind it.
pub struct Web {
    server: WebServer,
    store: Option<std::thread::JoinHandle<()>>,
}

impl Web {
    /// Binds `[web]`'s listeners, starts the store thread (its context made like shard
    /// 0's, appending to shard 0's spool writer) and the web runtime.
    pub(super) fn start(
        config: &Config,
        contexts: &Arc<Contexts>,
    ) -> Result<Option<Web>, ServerError> {
        let web = &config.web;
        if !web.enabled() {
            return Ok(None);
        }
        let mut listeners = Vec::new();
        for (addrs, tls, name) in [
            (&web.listen, false, "http"),
            (&web.tls_listen, true, "https"),
        ] {
            for addr in addrs {
                let socket = std::net::TcpListener::bind(addr)
                    .map_err(|e| ServerError::Web(format!("cannot listen on {addr}: {e}")))?;
                let local = socket.local_addr().unwrap_or(*addr);
                tracing::info!(protocol = name, addr = %local, "listening");
                listeners.push(WebListener { socket, tls });
            }
        }
        let tls = contexts.server_tls.as_ref().map(|t| t.config());
        let (jobs, queue) = mpsc::channel::<Job>(QUEUE);
        let make = contexts.maker(0);
        let store = std::thread::Builder::new()
            .name("web-store".into())
            .spawn(move || run_store(make, queue))
            .map_err(ServerError::Thread)?;
        let domain = config
            .local
            .domains
            .first()
            .cloned()
            .unwrap_or_else(|| "localhost".into());
        let backend = Arc::new(StoreBackend {
            jobs,
            domain,
            message_size_max: config.smtp.message_size_max.0,
            local_domains: config.local.domains.clone(),
            homes: contexts.login_proxy.clone(),
        });
        let settings = WebSettings {
            threads: web.threads,
            sessions_max: web.sessions_max,
            session_idle: web.session_idle_timeout.0,
            session_absolute: web.session_absolute_timeout.0,
            page_size: web.page_size,
            body_max: usize::try_from(web.request_body_max.0).unwrap_or(usize::MAX),
            authserv_id: (config.verify.authserv_id.clone())
                .unwrap_or_else(|| contexts.hostname.clone()),
        };
        let server = WebServer::start(listeners, tls, backend, settings)
            .map_err(|e| ServerError::Web(e.to_string()))?;
        let _ = contexts.web_home.set(super::WebAtHome {
            sessions: server.sessions(),
            intake: server.intake(),
        });
        Ok(Some(Web {
            server,
            store: Some(store),
        }))
    }

    /// Stops the web runtime (dropping the last request sender), then joins the store
    /// thread: after this nothing of the web side holds the spool.
    pub fn stop(mut self) {
        self.server.stop();
        if let Some(store) = self.store.take() {
            let _ = store.join();
        }
    }
}

fn run_store(make: Box<dyn FnOnce() -> ShardContext + Send>, mut queue: mpsc::Receiver<Job>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(target: "relay::web", %error, "cannot start the web store thread");
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let ctx = Rc::new(make());
        while let Some(job) = queue.recv().await {
            tokio::task::spawn_local(job(Rc::clone(&ctx)));
        }
    });
}

struct StoreBackend {
    jobs: mpsc::Sender<Job>,
    domain: String,
    message_size_max: u64,
    local_domains: Vec<String>,
    /// `[cluster]`: where the sessions of users homed elsewhere are proxied.
    homes: Option<Arc<super::login_proxy::LoginProxy>>,
}

impl StoreBackend {
    /// Runs `work` on the store thread and waits for its answer.
    async fn run<T, W>(&self, work: W) -> Result<T, BackendError>
    where
        T: Send + 'static,
        W: FnOnce(Rc<ShardContext>) -> Pin<Box<dyn Future<Output = T>>> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |ctx| {
            Box::pin(async move {
                let _ = tx.send(work(ctx).await);
            })
        });
        self.jobs
            .send(job)
            .await
            .map_err(|_| BackendError::Unavailable)?;
        rx.await.map_err(|_| BackendError::Unavailable)
    }
}

impl Backend for StoreBackend {
    fn home_of(&self, user: String) -> BoxFuture<'_, Option<String>> {
        Box::pin(async move {
            self.homes.as_ref()?;
            self.run(move |ctx| {
                Box::pin(async move {
                    let proxy = ctx.login_proxy.as_ref()?;
                    proxy
                        .home_elsewhere(&ctx.auth.directory.current(), &user)
                        .map(|home| home.node)
                })
            })
            .await
            .ok()
            .flatten()
        })
    }

    fn home_login(
        &self,
        node: String,
        user: String,
        client: Client,
    ) -> BoxFuture<'_, Result<String, BackendError>> {
        Box::pin(async move {
            let Some(homes) = &self.homes else {
                return Err(BackendError::Unavailable);
            };
            super::web_proxy::login(homes, &node, &user, client.peer)
                .await
                .map_err(|error| {
                    tracing::debug!(target: "relay::web", %error, "login at the home node");
                    BackendError::Unavailable
                })
        })
    }

    fn home_forward(
        &self,
        node: String,
        request: axum::extract::Request,
    ) -> BoxFuture<'_, Result<axum::response::Response, axum::extract::Request>> {
        Box::pin(async move {
            match &self.homes {
                Some(homes) => super::web_proxy::forward(homes, &node, request).await,
                None => Err(request),
            }
        })
    }

    fn login(
        &self,
        client: Client,
        user: String,
        password: String,
    ) -> BoxFuture<'_, Result<String, LoginError>> {
        Box::pin(async move {
            let answer = self
                .run(move |ctx| {
                    Box::pin(async move {
                        let proof = Proof::Password {
                            authzid: None,
                            user,
                            password: Password::new(password),
                        };
                        // IMAP's policy: one failure count for the two ways into the
                        // folders, so a guesser gains nothing by switching.
                        let checked = ctx.auth.check(Protocol::Imap, client.peer.ip(), proof).await;
                        if let Ok(name) = &checked {
                            let now = unix_now();
                            let created = ctx
                                .mail_store
                                .change(&ctx.spool, name, |s| Ok((s.ensure_defaults(now), ())))
                                .await;
                            if let Err(error) = created {
                                tracing::warn!(target: "relay::web", %error, "default folders not created");
                            }
                        }
                        checked
                    })
                })
                .await;
            match answer {
                Ok(Ok(name)) => Ok(name),
                Ok(Err(Denied::Invalid)) => Err(LoginError::Invalid),
                Ok(Err(Denied::Locked)) => Err(LoginError::Locked),
                Ok(Err(Denied::Busy)) | Err(_) => Err(LoginError::Busy),
            }
        })
    }

    fn folders(&self, user: String) -> BoxFuture<'_, Result<Vec<FolderSummary>, BackendError>> {
        Box::pin(async move {
            self.run(move |ctx| {
                Box::pin(async move {
                    ctx.mail_store.folders().with(&user, |s| {
                        s.list()
                            .into_iter()
                            .filter_map(|e| {
                                let status = s.status(e.folder?).ok()?;
                                Some(FolderSummary {
                                    name: e.name,
                                    messages: status.messages,
                                    unseen: status.unseen,
                                })
                            })
                            .collect()
                    })
                })
            })
            .await
        })
    }

    fn page(
        &self,
        user: String,
        folder: String,
        skip: usize,
        count: usize,
    ) -> BoxFuture<'_, Result<FolderPage, BackendError>> {
        Box::pin(async move {
            self.run(move |ctx| {
                Box::pin(async move {
                    let picked = ctx.mail_store.folders().with(&user, |s| {
                        let id = s.folder_id(&folder).ok_or(BackendError::NoSuchFolder)?;
                        let (_, messages) =
                            s.visible(id).map_err(|_| BackendError::NoSuchFolder)?;
                        // Only the page's entries are copied, not the folder's.
                        let sorted = newest_first(messages);
                        let total = sorted.len();
                        let page: Vec<_> = sorted
                            .into_iter()
                            .skip(skip)
                            .take(count)
                            .map(|(uid, entry)| (uid, entry.clone()))
                            .collect();
                        Ok::<_, BackendError>((total, page))
                    })?;
                    let (total, page) = picked;
                    Ok(FolderPage {
                        total,
                        messages: listed(&ctx, page),
                    })
                })
            })
            .await?
        })
    }

    fn message(
        &self,
        user: String,
        folder: String,
        uid: u32,
        mark_seen: bool,
    ) -> BoxFuture<'_, Result<StoredMessage, BackendError>> {
        Box::pin(async move {
            self.run(move |ctx| {
                Box::pin(async move {
                    let found = ctx.mail_store.folders().with(&user, |s| {
                        let id = s.folder_id(&folder)?;
                        let entry = s.entry(id, uid)?;
                        let system = entry.flags.system;
                        Some((id, entry.id, system))
                    });
                    let (folder_id, queue_id, system) = found.ok_or(BackendError::NoSuchMessage)?;
                    let seen = system & system_flag::SEEN != 0;
                    let (read, body) = ctx
                        .store
                        .read_body_async(&ctx.reads, queue_id, Vec::new(), 0)
                        .await;
                    read.map_err(|error| {
                        tracing::warn!(target: "relay::web", %error, "cannot read a message");
                        BackendError::Unavailable
                    })?;
                    if mark_seen && !seen {
                        let flags = st::Flags {
                            system: system_flag::SEEN,
                            keywords: Vec::new(),
                        };
                        let marked = ctx
                            .mail_store
                            .change(&ctx.spool, &user, |s| {
                                let out =
                                    s.store_flags(folder_id, &[uid], FlagMode::Add, &flags, None)?;
                                Ok((out.record, ()))
                            })
                            .await;
                        if let Err(error) = marked {
                            tracing::warn!(target: "relay::web", %error, "not marked read");
                        }
                    }
                    Ok(StoredMessage {
                        raw: body,
                        flagged: system & system_flag::FLAGGED != 0,
                    })
                })
            })
            .await?
        })
    }

    fn act(
        &self,
        user: String,
        folder: String,
        uid: u32,
        action: Action,
    ) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move {
            self.run(move |ctx| {
                Box::pin(async move { act(&ctx, &user, &folder, uid, action).await })
            })
            .await?
        })
    }

    fn send(
        &self,
        client: Client,
        user: String,
        outgoing: Outgoing,
    ) -> BoxFuture<'_, Result<(), BackendError>> {
        let from = self.address_of(&user);
        Box::pin(async move {
            self.run(move |ctx| {
                Box::pin(async move { submit(&ctx, client, user, from, outgoing).await })
            })
            .await?
        })
    }

    fn message_size_max(&self) -> u64 {
        self.message_size_max
    }

    fn save_draft(
        &self,
        user: String,
        message: Vec<u8>,
        replaces: Option<u32>,
    ) -> BoxFuture<'_, Result<u32, BackendError>> {
        Box::pin(async move {
            self.run(move |ctx| {
                Box::pin(async move { save_draft(&ctx, &user, message, replaces).await })
            })
            .await?
        })
    }

    fn open_draft(&self, user: String, uid: u32) -> BoxFuture<'_, Result<Vec<u8>, BackendError>> {
        Box::pin(async move {
            self.run(move |ctx| {
                Box::pin(async move {
                    let found = ctx.mail_store.folders().with(&user, |s| {
                        let id = special(s, st::SpecialUse::Drafts)?.1;
                        Some(s.entry(id, uid)?.id)
                    });
                    let queue_id = found.ok_or(BackendError::NoSuchMessage)?;
                    let (read, draft) = ctx
                        .store
                        .read_body_async(&ctx.reads, queue_id, Vec::new(), 0)
                        .await;
                    read.map_err(|error| {
                        tracing::warn!(target: "relay::web", %error, "cannot read a draft");
                        BackendError::Unavailable
                    })?;
                    // The web mail keeps its own drafts in clear (`imap_store::append`), but
                    // a mail client may have put an encrypted one there: the server holds
                    // no private key, and its armour must not open as text to edit.
                    if crate::mailcrypt::is_encrypted(&draft) {
                        return Err(BackendError::Refused(
                            "This draft is encrypted; the web mail cannot decrypt it. \
                             Open it in a mail program that has your private key."
                                .into(),
                        ));
                    }
                    Ok(draft)
                })
            })
            .await?
        })
    }

    fn discard_draft(&self, user: String, uid: u32) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move {
            self.run(move |ctx| {
                Box::pin(async move {
                    let drafts = ctx.mail_store.folders().with(&user, |s| {
                        let id = special(s, st::SpecialUse::Drafts)?.1;
                        s.entry(id, uid)?;
                        Some(id)
                    });
                    let drafts = drafts.ok_or(BackendError::NoSuchMessage)?;
                    remove_for_good(&ctx, &user, drafts, uid).await
                })
            })
            .await?
        })
    }

    fn is_own_address(&self, user: &str, address: &str) -> bool {
        if address.eq_ignore_ascii_case(&self.address_of(user)) {
            return true;
        }
        // The user's name at any local domain (the directory's mailbox for it).
        let Some((local, domain)) = address.rsplit_once('@') else {
            return false;
        };
        !user.contains('@')
            && local.eq_ignore_ascii_case(user)
            && self
                .local_domains
                .iter()
                .any(|d| d.eq_ignore_ascii_case(domain))
    }

    fn address_of(&self, user: &str) -> String {
        if user.contains('@') {
            user.to_string()
        } else {
            format!("{user}@{}", self.domain)
        }
    }

    fn search(
        &self,
        user: String,
        folder: String,
        text: String,
        skip: usize,
        count: usize,
    ) -> BoxFuture<'_, Result<FolderPage, BackendError>> {
        Box::pin(async move {
            self.run(move |ctx| {
                Box::pin(async move { search(&ctx, &user, &folder, &text, skip, count).await })
            })
            .await?
        })
    }

    fn move_to(
        &self,
        user: String,
        folder: String,
        uid: u32,
        to: String,
    ) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move {
            self.run(move |ctx| {
                Box::pin(async move {
                    let found = ctx.mail_store.folders().with(&user, |s| {
                        let from = s.folder_id(&folder).ok_or(BackendError::NoSuchFolder)?;
                        s.entry(from, uid).ok_or(BackendError::NoSuchMessage)?;
                        let to = s.folder_id(&to).ok_or(BackendError::NoSuchFolder)?;
                        Ok::<_, BackendError>((from, to))
                    });
                    let (from, to) = found?;
                    if from == to {
                        return Ok(());
                    }
                    ctx.mail_store
                        .change(&ctx.spool, &user, |s| {
                            Ok((s.move_(from, &[uid], to)?.record, ()))
                        })
                        .await
                        .map_err(|e| self_failed(&user, e))
                })
            })
            .await?
        })
    }

    fn trash_folder(&self, user: String) -> BoxFuture<'_, Result<Option<String>, BackendError>> {
        Box::pin(async move {
            self.run(move |ctx| {
                Box::pin(async move {
                    ctx.mail_store
                        .folders()
                        .with(&user, |s| trash_of(s).map(|(name, _)| name))
                })
            })
            .await
        })
    }

    fn empty_trash(&self, user: String) -> BoxFuture<'_, Result<usize, BackendError>> {
        Box::pin(async move {
            self.run(move |ctx| Box::pin(async move { empty_trash(&ctx, &user).await }))
                .await?
        })
    }

    // Users' keys: the store's key table is shared (`Arc<KeyStore>`), so the store thread
    // only hands it over; lookups run here and the durable writes (fsync) on the web
    // runtime's blocking pool, never holding up the store thread.

    fn is_local_domain(&self, domain: &str) -> bool {
        self.local_domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(domain))
    }

    fn wkd_key(
        &self,
        domain: String,
        hash: String,
    ) -> BoxFuture<'_, Result<Option<Vec<u8>>, BackendError>> {
        Box::pin(async move {
            if !self.is_local_domain(&domain) {
                return Ok(None);
            }
            let keys = self.key_store().await?;
            // Every address at `domain` some registered key carries whose local part hashes
            // to `hash`; the key served is the one of the user the address reaches (a key
            // naming someone else's address is not served for it).
            let all = keys.all();
            let mut wanted: Vec<&str> = all
                .values()
                .filter_map(|k| k.openpgp.as_ref())
                .flat_map(|k| k.addresses.iter())
                .filter(|a| {
                    a.rsplit_once('@').is_some_and(|(local, d)| {
                        d.eq_ignore_ascii_case(&domain)
                            && crate::mailcrypt::wkd::hashed_local_part(local) == hash
                    })
                })
                .map(String::as_str)
                .collect();
            wanted.sort_unstable();
            wanted.dedup();
            Ok(wanted
                .into_iter()
                .find_map(|address| keys.openpgp_for_address(address))
                .map(|key| key.binary()))
        })
    }

    fn key_settings(
        &self,
        user: String,
    ) -> BoxFuture<'_, Result<crate::web::backend::KeySettings, BackendError>> {
        Box::pin(async move {
            let keys = self.key_store().await?;
            let registered = keys.get(&user);
            let policy = keys.policy();
            Ok(crate::web::backend::KeySettings {
                openpgp: registered
                    .openpgp
                    .as_ref()
                    .map(|k| crate::web::backend::OpenPgpSummary {
                        fingerprint: k.fingerprint.clone(),
                        addresses: k.addresses.clone(),
                    }),
                smime: registered
                    .smime
                    .as_ref()
                    .map(|c| crate::web::backend::SmimeSummary {
                        fingerprint: c.fingerprint.clone(),
                        addresses: c.addresses.clone(),
                        not_after: c.not_after,
                    }),
                choice: registered.encrypt,
                sealed_with: keys.seal_key(&user).map(|k| k.kind()),
                server_default: policy.default,
                server_required: policy.required,
            })
        })
    }

    fn set_key(
        &self,
        user: String,
        key: Vec<u8>,
    ) -> BoxFuture<'_, Result<crate::mailcrypt::KeyKind, BackendError>> {
        Box::pin(async move {
            let keys = self.key_store().await?;
            key_write(move || keys.set(&user, &key, None, SystemTime::now())).await
        })
    }

    fn remove_key(
        &self,
        user: String,
        kind: crate::mailcrypt::KeyKind,
    ) -> BoxFuture<'_, Result<bool, BackendError>> {
        Box::pin(async move {
            let keys = self.key_store().await?;
            key_write(move || keys.remove(&user, kind)).await
        })
    }

    fn set_encrypt(
        &self,
        user: String,
        choice: Option<bool>,
    ) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move {
            let keys = self.key_store().await?;
            key_write(move || keys.set_encrypt(&user, choice)).await
        })
    }
}

impl StoreBackend {
    /// The users' key store the server shares (handed over by the store thread).
    async fn key_store(&self) -> Result<Arc<crate::mailbox::KeyStore>, BackendError> {
        self.run(|ctx| Box::pin(async move { Arc::clone(&ctx.keys) }))
            .await
    }
}

/// Runs a key store write (files written and synced) on the blocking pool; a refused key
/// or choice becomes the page's reason, a storage failure "unavailable".
async fn key_write<T: Send + 'static>(
    write: impl FnOnce() -> Result<T, crate::mailbox::KeyStoreError> + Send + 'static,
) -> Result<T, BackendError> {
    use crate::mailbox::KeyStoreError;
    match tokio::task::spawn_blocking(write).await {
        Ok(Ok(done)) => Ok(done),
        Ok(Err(KeyStoreError::Io { path, source })) => {
            tracing::warn!(target: "relay::web", path = %path.display(), error = %source, "key store not written");
            Err(BackendError::Unavailable)
        }
        Ok(Err(refused)) => Err(BackendError::Refused(refused.to_string())),
        Err(_) => Err(BackendError::Unavailable),
    }
}

/// A folder's visible messages newest first: by internal date (the order a reader expects
/// even where APPEND gave older dates to newer UIDs), then by UID. Borrowed, not copied.
fn newest_first<'a>(
    messages: impl DoubleEndedIterator<Item = (u32, &'a Entry)>,
) -> Vec<(u32, &'a Entry)> {
    let mut sorted: Vec<_> = messages.rev().collect();
    // Delivery order is date order almost always: then the folder is sorted already.
    let ordered = sorted
        .windows(2)
        .all(|w| w[0].1.internal_date >= w[1].1.internal_date);
    if !ordered {
        sorted.sort_by(|a, b| {
            b.1.internal_date
                .cmp(&a.1.internal_date)
                .then(b.0.cmp(&a.0))
        });
    }
    sorted
}

/// The list rows of `page`: its entries and each one's header section.
fn listed(ctx: &ShardContext, page: Vec<(u32, Entry)>) -> Vec<ListedMessage> {
    let mut messages = Vec::with_capacity(page.len());
    for (uid, entry) in page {
        // The header section only: a list of large messages must not read their bodies.
        let mut header = match ctx.store.read_body_prefix(entry.id, LIST_HEADER_MAX) {
            Ok(body) => body,
            Err(error) => {
                tracing::warn!(target: "relay::web", %error, "cannot read a message");
                Vec::new()
            }
        };
        header.truncate(header_end(&header).min(LIST_HEADER_MAX));
        messages.push(ListedMessage {
            uid,
            seen: entry.flags.system & system_flag::SEEN != 0,
            flagged: entry.flags.system & system_flag::FLAGGED != 0,
            size: u32::try_from(entry.size).unwrap_or(u32::MAX),
            internal_date: entry.internal_date,
            header,
        });
    }
    messages
}

/// The web's search box as an IMAP search: `OR FROM t OR TO t OR SUBJECT t BODY t`, judged
/// by the IMAP server's own evaluator (`imap::search`), one stored body at a time.
async fn search(
    ctx: &ShardContext,
    user: &str,
    folder: &str,
    text: &str,
    skip: usize,
    count: usize,
) -> Result<FolderPage, BackendError> {
    let needle = AString::try_from(text.to_string())
        .map_err(|_| BackendError::Refused("This search text cannot be used.".into()))?;
    let key = |make: fn(AString<'static>) -> SearchKey<'static>| make(needle.clone());
    let key = SearchKey::Or(
        Box::new(key(SearchKey::From)),
        Box::new(SearchKey::Or(
            Box::new(key(SearchKey::To)),
            Box::new(SearchKey::Or(
                Box::new(key(SearchKey::Subject)),
                Box::new(key(SearchKey::Body)),
            )),
        )),
    );
    // The candidates, newest first (a copy of their metadata: the bodies are read with
    // the user's folders unlocked).
    let candidates = ctx.mail_store.folders().with(user, |s| {
        let id = s.folder_id(folder).ok_or(BackendError::NoSuchFolder)?;
        let (_, messages) = s.visible(id).map_err(|_| BackendError::NoSuchFolder)?;
        Ok::<_, BackendError>(
            newest_first(messages)
                .into_iter()
                .map(|(uid, entry)| (uid, entry.clone()))
                .collect::<Vec<_>>(),
        )
    })?;
    let last_uid = candidates.iter().map(|(uid, _)| *uid).max().unwrap_or(0);
    let mut total = 0;
    let mut page = Vec::new();
    for (n, (uid, entry)) in candidates.into_iter().enumerate() {
        if n % 64 == 63 {
            // Other pages' requests share this thread.
            tokio::task::yield_now().await;
        }
        let (read, raw) = ctx
            .store
            .read_body_async(&ctx.reads, entry.id, Vec::new(), 0)
            .await;
        match read {
            Ok(()) => {}
            Err(error) => {
                tracing::warn!(target: "relay::web", %error, "cannot read a message");
                continue;
            }
        };
        let meta = imap_store::MessageMeta {
            uid,
            flags: imap_store::Flags {
                system: entry.flags.system,
                keywords: entry.flags.keywords.clone(),
            },
            size: u32::try_from(entry.size).unwrap_or(u32::MAX),
            internal_date: entry.internal_date,
            zone_minutes: entry.zone_minutes,
            modseq: entry.modseq,
        };
        let judged = imap_search::Ctx {
            seq: 0,
            meta: &meta,
            recent: false,
            last_seq: 0,
            last_uid,
        };
        let content = imap_search::Content::new(&raw);
        if imap_search::eval(&key, &judged, Some(&content)) == Some(true) {
            if total >= skip && page.len() < count {
                page.push((uid, entry));
            }
            total += 1;
        }
    }
    Ok(FolderPage {
        total,
        messages: listed(ctx, page),
    })
}

/// The Trash folder (special use) of a user's store: its name and id.
fn trash_of(s: &crate::mailstore::UserStore) -> Option<(String, st::FolderId)> {
    s.list()
        .into_iter()
        .find(|e| e.special_use == Some(st::SpecialUse::Trash))
        .and_then(|e| Some((e.name, e.folder?)))
}

/// Every message in Trash marked \Deleted and expunged, as an IMAP client empties it; each
/// step durable in the user's turn. Only the messages there when it starts go.
async fn empty_trash(ctx: &ShardContext, user: &str) -> Result<usize, BackendError> {
    let trash = ctx.mail_store.folders().with(user, |s| trash_of(s));
    let Some((_, id)) = trash else {
        return Err(BackendError::NoSuchFolder);
    };
    let flags = st::Flags {
        system: system_flag::DELETED,
        keywords: Vec::new(),
    };
    let uids = ctx
        .mail_store
        .change(&ctx.spool, user, |s| {
            let (_, messages) = s.visible(id)?;
            let uids: Vec<u32> = messages.map(|(uid, _)| uid).collect();
            if uids.is_empty() {
                return Ok((None, uids));
            }
            let out = s.store_flags(id, &uids, FlagMode::Add, &flags, None)?;
            Ok((out.record, uids))
        })
        .await
        .map_err(|e| self_failed(user, e))?;
    if uids.is_empty() {
        return Ok(0);
    }
    ctx.mail_store
        .change(&ctx.spool, user, |s| {
            let out = s.expunge(id, Some(&uids))?;
            let gone = out.uids.len();
            Ok((out.record, gone))
        })
        .await
        .map_err(|e| self_failed(user, e))
}

/// One reader's change to one message, each step durable in the user's turn.
async fn act(
    ctx: &ShardContext,
    user: &str,
    folder: &str,
    uid: u32,
    action: Action,
) -> Result<(), BackendError> {
    let found = ctx.mail_store.folders().with(user, |s| {
        let id = s.folder_id(folder)?;
        s.entry(id, uid)?;
        let trash = s
            .list()
            .into_iter()
            .find(|e| e.special_use == Some(st::SpecialUse::Trash))
            .and_then(|e| e.folder);
        Some((id, trash))
    });
    let (id, trash) = found.ok_or(BackendError::NoSuchMessage)?;
    let flag = |bit: u8, mode: FlagMode| {
        let flags = st::Flags {
            system: bit,
            keywords: Vec::new(),
        };
        ctx.mail_store.change(&ctx.spool, user, move |s| {
            let out = s.store_flags(id, &[uid], mode, &flags, None)?;
            Ok((out.record, ()))
        })
    };
    let mode = |on: bool| if on { FlagMode::Add } else { FlagMode::Remove };
    let done = match action {
        Action::Seen(on) => flag(system_flag::SEEN, mode(on)).await,
        Action::Flagged(on) => flag(system_flag::FLAGGED, mode(on)).await,
        Action::Trash => match trash {
            Some(trash) if trash != id => {
                ctx.mail_store
                    .change(&ctx.spool, user, |s| {
                        Ok((s.move_(id, &[uid], trash)?.record, ()))
                    })
                    .await
            }
            // In Trash (or without one): gone for good, as an IMAP client's delete.
            _ => {
                flag(system_flag::DELETED, FlagMode::Add)
                    .await
                    .map_err(|e| self_failed(user, e))?;
                ctx.mail_store
                    .change(&ctx.spool, user, |s| {
                        Ok((s.expunge(id, Some(&[uid]))?.record, ()))
                    })
                    .await
            }
        },
    };
    done.map_err(|e| self_failed(user, e))
}

fn self_failed(user: &str, error: crate::mailbox::ChangeError) -> BackendError {
    match error {
        crate::mailbox::ChangeError::Refused(e) => BackendError::Refused(e.to_string()),
        error => {
            tracing::warn!(target: "relay::web", user = %crate::logsafe::Safe(user), %error, "change not stored");
            BackendError::Unavailable
        }
    }
}

/// The authenticated-submission path for a message composed in the browser, then its copy
/// in Sent.
async fn submit(
    ctx: &ShardContext,
    client: Client,
    user: String,
    from: String,
    outgoing: Outgoing,
) -> Result<(), BackendError> {
    let config = &ctx.session_config;
    let size = outgoing.message.len() as u64;
    if size > config.message_size_max {
        return Err(BackendError::Refused(format!(
            "The message is larger than this server accepts ({} bytes).",
            config.message_size_max
        )));
    }
    if outgoing.recipients.len() > config.recipients_max {
        return Err(BackendError::Refused(format!(
            "At most {} recipients.",
            config.recipients_max
        )));
    }
    let mime = config
        .policy
        .check(&outgoing.message)
        .map_err(|e| BackendError::Refused(format!("Refused by policy: {e}")))?;
    let mut mailboxes: Vec<String> = Vec::new();
    let mut remote: Vec<String> = Vec::new();
    for address in &outgoing.recipients {
        let domain = address.rsplit_once('@').map_or("", |(_, d)| d);
        let local = config
            .local_domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(domain));
        match (&config.mailboxes, local) {
            (Some(known), true) => match known.0.lookup(address, size) {
                Lookup::Deliver {
                    mailboxes: to,
                    forward,
                } => {
                    mailboxes.extend(to);
                    remote.extend(forward);
                }
                Lookup::Unknown => {
                    return Err(BackendError::Refused(format!(
                        "No such user here: {address}"
                    )))
                }
                Lookup::OverQuota => {
                    return Err(BackendError::Refused(format!(
                        "The mailbox of {address} is full."
                    )))
                }
                // Only the cluster listener's lookup answers this.
                Lookup::Elsewhere => {
                    return Err(BackendError::Refused(format!(
                        "No such user here: {address}"
                    )))
                }
            },
            (None, true) => {
                return Err(BackendError::Refused(format!(
                    "No such user here: {address}"
                )))
            }
            (_, false) => remote.push(address.clone()),
        }
    }
    mailboxes.sort();
    mailboxes.dedup();
    remote.sort();
    remote.dedup();
    let message = outgoing.message.clone();
    let submission = Submission {
        envelope: Envelope {
            reverse_path: from,
            params: Default::default(),
            recipients: outgoing
                .recipients
                .iter()
                .map(|address| Recipient {
                    address: address.clone(),
                    notify: None,
                    orcpt: None,
                })
                .collect(),
        },
        mailboxes,
        remote,
        mime,
        origin: Origin {
            client_ip: client.peer.ip().to_string(),
            client_port: client.peer.port(),
            helo: "webmail".into(),
            protocol: if client.tls { "HTTPS" } else { "HTTP" }.into(),
        },
        body: outgoing.message,
        mail_at: SystemTime::now(),
        authenticated: Some(user.clone()),
        relay_client: false,
        tls: None,
    };
    super::ingest::accept(ctx, submission, client.peer)
        .await
        .map_err(|error| match error {
            SubmitError::Backpressure | SubmitError::Storage => BackendError::Unavailable,
            other => BackendError::Refused(other.to_string()),
        })?;
    let mut copy = outgoing.sent_header;
    copy.extend_from_slice(&message);
    keep_in_sent(ctx, &user, client.peer, copy).await;
    Ok(())
}

/// The name and id of the user's folder with special use `role`.
fn special(
    s: &crate::mailstore::UserStore,
    role: st::SpecialUse,
) -> Option<(String, st::FolderId)> {
    s.list()
        .into_iter()
        .find(|e| e.special_use == Some(role))
        .and_then(|e| Some((e.name, e.folder?)))
}

/// A draft kept: appended to Drafts flagged \Draft and \Seen as IMAP APPEND stores it
/// (durable in the user's turn), then the draft it replaces removed.
async fn save_draft(
    ctx: &ShardContext,
    user: &str,
    message: Vec<u8>,
    replaces: Option<u32>,
) -> Result<u32, BackendError> {
    if message.len() as u64 > ctx.session_config.message_size_max {
        return Err(BackendError::Refused(format!(
            "The draft is larger than this server accepts ({} bytes).",
            ctx.session_config.message_size_max
        )));
    }
    let drafts = ctx
        .mail_store
        .folders()
        .with(user, |s| special(s, st::SpecialUse::Drafts));
    let Some((name, folder)) = drafts else {
        return Err(BackendError::Refused("There is no Drafts folder.".into()));
    };
    let mut link = UserStoreLink::new(user.to_string(), ([127, 0, 0, 1], 0).into());
    let request = imap_store::Request::Append {
        to: name,
        flags: imap_store::Flags {
            system: imap_store::system_flag::SEEN | imap_store::system_flag::DRAFT,
            keywords: Vec::new(),
        },
        date: None,
        message,
    };
    let uid = match link.serve(ctx, request).await {
        imap_store::Answer::Append(Ok(copied)) => copied
            .destination
            .first()
            .copied()
            .ok_or(BackendError::Unavailable)?,
        imap_store::Answer::Append(Err(error)) => {
            tracing::warn!(target: "relay::web", user = %crate::logsafe::Safe(user), ?error, "draft not kept");
            return Err(BackendError::Refused(format!(
                "The draft was not kept: {error}"
            )));
        }
        _ => return Err(BackendError::Unavailable),
    };
    if let Some(old) = replaces.filter(|old| *old != uid) {
        let exists = ctx
            .mail_store
            .folders()
            .with(user, |s| s.entry(folder, old).is_some());
        if exists {
            remove_for_good(ctx, user, folder, old).await?;
        }
    }
    Ok(uid)
}

/// Deletes one message for good (\Deleted, then expunged: each step durable).
async fn remove_for_good(
    ctx: &ShardContext,
    user: &str,
    folder: st::FolderId,
    uid: u32,
) -> Result<(), BackendError> {
    let flags = st::Flags {
        system: system_flag::DELETED,
        keywords: Vec::new(),
    };
    ctx.mail_store
        .change(&ctx.spool, user, |s| {
            let out = s.store_flags(folder, &[uid], FlagMode::Add, &flags, None)?;
            Ok((out.record, ()))
        })
        .await
        .map_err(|e| self_failed(user, e))?;
    ctx.mail_store
        .change(&ctx.spool, user, |s| {
            Ok((s.expunge(folder, Some(&[uid]))?.record, ()))
        })
        .await
        .map_err(|e| self_failed(user, e))
}

/// The copy in the user's Sent folder (the special-use one), as IMAP APPEND stores it. The
/// message is on its way already, so a failure here is logged, not shown as "not sent".
async fn keep_in_sent(ctx: &ShardContext, user: &str, peer: SocketAddr, message: Vec<u8>) {
    let sent = ctx.mail_store.folders().with(user, |s| {
        s.list()
            .into_iter()
            .find(|e| e.special_use == Some(st::SpecialUse::Sent))
            .map(|e| e.name)
    });
    let Some(sent) = sent else {
        tracing::warn!(target: "relay::web", user = %crate::logsafe::Safe(user), "no Sent folder; no copy kept");
        return;
    };
    let mut link = UserStoreLink::new(user.to_string(), peer);
    let request = imap_store::Request::Append {
        to: sent,
        flags: imap_store::Flags {
            system: imap_store::system_flag::SEEN,
            keywords: Vec::new(),
        },
        date: None,
        message,
    };
    if let imap_store::Answer::Append(Err(error)) = link.serve(ctx, request).await {
        tracing::warn!(target: "relay::web", user = %crate::logsafe::Safe(user), ?error, "copy not kept in Sent");
    }
}

/// Where the header section ends (after its blank line), or the whole length.
fn header_end(message: &[u8]) -> usize {
    memchr::memmem::find(message, b"\r\n\r\n").map_or(message.len(), |at| at + 4)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::QueueId;

    fn entry(date: i64) -> Entry {
        Entry {
            id: QueueId(1),
            size: 1,
            flags: st::Flags::default(),
            internal_date: date,
            zone_minutes: 0,
            modseq: 1,
        }
    }

    #[test]
    fn newest_first_is_by_internal_date_then_uid() {
        let entries = [
            (1, entry(200)),
            (2, entry(100)),
            (3, entry(300)),
            (4, entry(200)),
        ];
        let sorted = newest_first(entries.iter().map(|(uid, e)| (*uid, e)));
        let uids: Vec<u32> = sorted.iter().map(|(uid, _)| *uid).collect();
        assert_eq!(uids, [3, 4, 1, 2]);
        // Already in date order: UIDs descending.
        let entries = [(1, entry(100)), (2, entry(100)), (3, entry(300))];
        let sorted = newest_first(entries.iter().map(|(uid, e)| (*uid, e)));
        let uids: Vec<u32> = sorted.iter().map(|(uid, _)| *uid).collect();
        assert_eq!(uids, [3, 2, 1]);
    }
}
