//! The seam between the pages and the mail store: everything a page needs from the relay
//! (logins, folders, messages, submission) as one object-safe trait. The server answers it
//! from its store and spool (`server::web_store`); the pages' tests answer it from memory.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use crate::mailcrypt::KeyKind;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a login failed (the page says the same for the first two: no user enumeration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    #[error("invalid credentials")]
    Invalid,
    #[error("too many failures")]
    Locked,
    #[error("password checks are busy")]
    Busy,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    #[error("no such folder")]
    NoSuchFolder,
    #[error("no such message")]
    NoSuchMessage,
    /// The recipient or the message is refused, with a reason a person can read.
    #[error("{0}")]
    Refused(String),
    /// Storage or the store thread is not available: try again later.
    #[error("temporarily unavailable")]
    Unavailable,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderSummary {
    pub name: String,
    pub messages: u32,
    pub unseen: u32,
}

/// One message of a folder's list: its store metadata and the stored bytes of its header
/// section (the page decodes From, Subject and Date from them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedMessage {
    pub uid: u32,
    pub seen: bool,
    pub flagged: bool,
    pub size: u32,
    /// Seconds since the epoch (the store's internal date).
    pub internal_date: i64,
    pub header: Vec<u8>,
}

/// One page of a folder (or of a search in it), newest first by internal date.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderPage {
    pub total: usize,
    pub messages: Vec<ListedMessage>,
}

/// A change a reader asks for on one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Set (true) or clear \Seen.
    Seen(bool),
    /// Set (true) or clear \Flagged.
    Flagged(bool),
    /// Move to the Trash folder; in Trash, delete for good.
    Trash,
}

/// A stored message and the flags the reading page offers to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub raw: Vec<u8>,
    pub flagged: bool,
}

/// A message to submit: complete RFC 5322 bytes (CRLF) and its envelope recipients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub recipients: Vec<String>,
    pub message: Vec<u8>,
    /// Header fields (CRLF-terminated) put above the Sent folder's copy only: its Bcc,
    /// which the sender keeps and the recipients never see.
    pub sent_header: Vec<u8>,
}

/// A user's registered OpenPGP key, as the settings page shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenPgpSummary {
    pub fingerprint: String,
    pub addresses: Vec<String>,
}

/// A user's registered S/MIME certificate, as the settings page shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmimeSummary {
    pub fingerprint: String,
    pub addresses: Vec<String>,
    /// Not after, Unix seconds.
    pub not_after: u64,
}

/// What a user registered and how their stored mail is kept.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeySettings {
    pub openpgp: Option<OpenPgpSummary>,
    pub smime: Option<SmimeSummary>,
    /// The user's own choice; `None`: the server default.
    pub choice: Option<bool>,
    /// The kind of key mail stored for the user is sealed with now (`None`: not encrypted).
    pub sealed_with: Option<KeyKind>,
    /// `[encryption] default`: encrypt for a user with a key who has not chosen.
    pub server_default: bool,
    /// `[encryption] required`: encrypt for every user with a key, whatever they chose.
    pub server_required: bool,
}

/// Where a request came from and over what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    pub peer: SocketAddr,
    pub tls: bool,
}

pub trait Backend: Send + Sync + 'static {
    /// Checks a name and password under the relay's login limits; the directory's name for
    /// the user on success (the default folders exist from then on).
    fn login(
        &self,
        client: Client,
        user: String,
        password: String,
    ) -> BoxFuture<'_, Result<String, LoginError>>;

    /// `[cluster]`: the node holding `user`'s mailboxes when it is another one (that
    /// user's web session is then proxied there); `None`: here.
    fn home_of(&self, _user: String) -> BoxFuture<'_, Option<String>> {
        Box::pin(async { None })
    }

    /// Starts a session for `user` (whose password was checked here) at `node`, for
    /// `client`; the session cookie's value there.
    fn home_login(
        &self,
        _node: String,
        _user: String,
        _client: Client,
    ) -> BoxFuture<'_, Result<String, BackendError>> {
        Box::pin(async { Err(BackendError::Unavailable) })
    }

    /// Forwards a request of a session held by `node` and answers with its response (a
    /// 503 page when that node is down); the request back when `node` is not another node
    /// of the cluster.
    fn home_forward(
        &self,
        _node: String,
        request: axum::extract::Request,
    ) -> BoxFuture<'_, Result<axum::response::Response, axum::extract::Request>> {
        Box::pin(async { Err(request) })
    }

    /// The user's folders with their counts, in the store's order.
    fn folders(&self, user: String) -> BoxFuture<'_, Result<Vec<FolderSummary>, BackendError>>;

    /// `count` messages of `folder` from the `skip`-th newest on.
    fn page(
        &self,
        user: String,
        folder: String,
        skip: usize,
        count: usize,
    ) -> BoxFuture<'_, Result<FolderPage, BackendError>>;

    /// A whole stored message; `mark_seen` sets \Seen (durable before the answer).
    fn message(
        &self,
        user: String,
        folder: String,
        uid: u32,
        mark_seen: bool,
    ) -> BoxFuture<'_, Result<StoredMessage, BackendError>>;

    /// Applies `action` to one message (durable before Ok).
    fn act(
        &self,
        user: String,
        folder: String,
        uid: u32,
        action: Action,
    ) -> BoxFuture<'_, Result<(), BackendError>>;

    /// Submits as the user (the authenticated-submission path: durable in the spool before
    /// Ok), then keeps a copy in the Sent folder.
    fn send(
        &self,
        client: Client,
        user: String,
        outgoing: Outgoing,
    ) -> BoxFuture<'_, Result<(), BackendError>>;

    /// The largest message the user may send (`smtp.message_size_max`): compose stops
    /// reading an upload past it.
    fn message_size_max(&self) -> u64;

    /// Stores `message` in the user's Drafts folder flagged \Draft (durable before Ok),
    /// then removes the draft it `replaces`; the new draft's UID.
    fn save_draft(
        &self,
        user: String,
        message: Vec<u8>,
        replaces: Option<u32>,
    ) -> BoxFuture<'_, Result<u32, BackendError>>;

    /// A draft's stored bytes.
    fn open_draft(&self, user: String, uid: u32) -> BoxFuture<'_, Result<Vec<u8>, BackendError>>;

    /// Removes a draft for good (it was sent; durable before Ok).
    fn discard_draft(&self, user: String, uid: u32) -> BoxFuture<'_, Result<(), BackendError>>;

    /// Whether `address` reaches this user (a reply to all leaves it out).
    fn is_own_address(&self, user: &str, address: &str) -> bool;

    /// The address the user sends from (`From:` and the envelope sender).
    fn address_of(&self, user: &str) -> String;

    /// The messages of `folder` whose From, To, Subject or text contains `text` (matched as
    /// IMAP SEARCH matches: decoded, case-insensitive), newest first: `count` of them from
    /// the `skip`-th on, and how many match.
    fn search(
        &self,
        user: String,
        folder: String,
        text: String,
        skip: usize,
        count: usize,
    ) -> BoxFuture<'_, Result<FolderPage, BackendError>>;

    /// Moves one message from `folder` to `to` (durable before Ok).
    fn move_to(
        &self,
        user: String,
        folder: String,
        uid: u32,
        to: String,
    ) -> BoxFuture<'_, Result<(), BackendError>>;

    /// The name of the user's Trash folder (by its special use), if there is one.
    fn trash_folder(&self, user: String) -> BoxFuture<'_, Result<Option<String>, BackendError>>;

    /// Deletes every message in the user's Trash folder for good (durable before Ok); how
    /// many went.
    fn empty_trash(&self, user: String) -> BoxFuture<'_, Result<usize, BackendError>>;

    /// Whether `domain` is one of the relay's local domains (case-insensitive).
    fn is_local_domain(&self, domain: &str) -> bool {
        let _ = domain;
        false
    }

    /// The Web Key Directory answer for `hash` (the z-base-32 hashed local part) at local
    /// `domain`: the binary OpenPGP key of the user the address reaches, when their key
    /// carries that address; `None` for anything else.
    fn wkd_key(
        &self,
        domain: String,
        hash: String,
    ) -> BoxFuture<'_, Result<Option<Vec<u8>>, BackendError>> {
        let _ = (domain, hash);
        Box::pin(async { Ok(None) })
    }

    /// What the user registered and whether their stored mail is encrypted.
    fn key_settings(&self, user: String) -> BoxFuture<'_, Result<KeySettings, BackendError>> {
        let _ = user;
        Box::pin(async { Err(BackendError::Unavailable) })
    }

    /// Checks `key` (an OpenPGP public key or an S/MIME certificate, whichever it is) as
    /// `relay user key set` does and registers it for the user (durable before Ok); its
    /// kind. A refused key is [`BackendError::Refused`] with the reason.
    fn set_key(&self, user: String, key: Vec<u8>) -> BoxFuture<'_, Result<KeyKind, BackendError>> {
        let _ = (user, key);
        Box::pin(async { Err(BackendError::Unavailable) })
    }

    /// Removes the user's key of `kind` (durable before Ok); false when there was none.
    fn remove_key(&self, user: String, kind: KeyKind) -> BoxFuture<'_, Result<bool, BackendError>> {
        let _ = (user, kind);
        Box::pin(async { Err(BackendError::Unavailable) })
    }

    /// Records the user's encryption choice (`None`: the server default; durable before
    /// Ok). Turning it off where the server requires it is [`BackendError::Refused`].
    fn set_encrypt(
        &self,
        user: String,
        choice: Option<bool>,
    ) -> BoxFuture<'_, Result<(), BackendError>> {
        let _ = (user, choice);
        Box::pin(async { Err(BackendError::Unavailable) })
    }
}
