//! The IMAP server session: a sans-IO state machine from client bytes to responses and
//! events.
//!
//! The driver calls [`Session::feed`] with the bytes it has read; the session consumes what
//! it can, appends responses to `Outbox::bytes` and events to `Outbox::events`, and returns
//! how many bytes it consumed. An event that needs an answer ([`Event::Authenticate`],
//! [`Event::StartTls`], [`Event::Store`]) stops consumption until the driver answers it
//! ([`Session::authenticated`], [`Session::tls_established`], [`Session::answer`]); then the
//! driver feeds the rest. A partial command is kept inside the session, bounded by
//! [`Limits`].
//!
//! States (RFC 9051 §3): not authenticated, authenticated, selected, logout; besides, a
//! session may be waiting for a SASL response line, for `DONE` (IDLE), or for the driver.
//!
//! The selected folder is a snapshot (UIDs, flags, modseqs) that changes only at command
//! boundaries: by the session's own STORE/EXPUNGE/MOVE answers, and by a `Changes` poll on
//! NOOP, CHECK, at the start of IDLE and when the driver calls [`Session::poll`] during IDLE
//! (untagged EXPUNGE, FETCH FLAGS, EXISTS). FETCH, STORE and SEARCH never announce expunges
//! (RFC 9051 §7.4.1). Message bodies are asked for one at a time, so a FETCH or a SEARCH on
//! text holds at most one body. Once QRESYNC is enabled, expunges are `VANISHED` UIDs.
//!
//! `\Recent` (IMAP4rev1 only; RFC 9051 removed it and the store does not keep it): a message
//! is `\Recent` to a rev1 session when it appeared in the folder while the session had it
//! selected, i.e. its UID is at or above the UIDNEXT of the SELECT. So SELECT always says
//! `0 RECENT`, a later `n EXISTS` is followed by `n RECENT`, and FETCH FLAGS and the
//! RECENT/NEW/OLD search keys follow that. STATUS RECENT is always 0 (no session owns
//! another folder's new messages).

use std::fmt;
use std::sync::Arc;

use imap_codec::decode::Decoder;
use imap_codec::imap_types::auth::AuthMechanism;
use imap_codec::imap_types::command::FetchModifier;
use imap_codec::imap_types::command::{Command, CommandBody, SelectParameter, StoreModifier};
use imap_codec::imap_types::core::AString;
use imap_codec::imap_types::extensions::enable::CapabilityEnable;
use imap_codec::imap_types::extensions::utf8::Utf8Kind;
use imap_codec::imap_types::fetch::{MacroOrMessageDataItemNames, MessageDataItemName, Section};
use imap_codec::imap_types::flag::{Flag, StoreResponse, StoreType};
use imap_codec::imap_types::mailbox::{ListMailbox, Mailbox};
use imap_codec::imap_types::search::SearchKey;
use imap_codec::imap_types::sequence::SequenceSet;
use imap_codec::imap_types::status::StatusDataItemName;
use imap_codec::CommandCodec;

use super::frame::{self, Framer, Limits, Rejection, Step};
use super::reply::{self, Status};
use super::search;
use super::store::{
    system_flag, Answer, Body, Changes, FlagOp, Flags, FolderId, FolderInfo, Request, SpecialUse,
    StoreError, View,
};
use super::structure::{self, PartPiece};
use super::utf7;
use crate::proto::sasl;
use imap_codec::imap_types::IntoStatic;

/// Client errors (BAD/NO it caused) before the session closes.
pub const ERRORS_MAX: u32 = 50;
/// Rejected credentials per session.
pub const AUTH_FAILURES_MAX: u32 = 3;
/// The hierarchy delimiter.
const DELIMITER: char = '/';

/// What every session of a listener shares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    pub hostname: String,
    pub limits: Limits,
    /// LOGIN and AUTHENTICATE are accepted without TLS (otherwise LOGINDISABLED).
    pub plaintext_auth: bool,
    /// STARTTLS is offered (the listener has a certificate).
    pub starttls: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            hostname: String::from("localhost"),
            limits: Limits::default(),
            plaintext_auth: false,
            starttls: true,
        }
    }
}

/// What a call produced.
#[derive(Debug, Default)]
pub struct Outbox {
    pub bytes: Vec<u8>,
    pub events: Vec<Event>,
    /// A body the session is done with (after a FETCH or SEARCH step): the driver may read
    /// the next one into it instead of into a new allocation.
    pub body_buffer: Option<Body>,
}

/// Something the driver must do after writing `Outbox::bytes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Check these credentials, then call [`Session::authenticated`].
    Authenticate(Credentials),
    /// Flush the bytes, drop whatever the client sent after STARTTLS, run the handshake, then
    /// call [`Session::tls_established`].
    StartTls,
    /// Ask the user's store, then call [`Session::answer`].
    Store(Request),
    /// Flush the bytes and close.
    Close(CloseReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    Logout,
    TooManyErrors,
    AuthFailuresExceeded,
    /// The greeting was BYE, or the server is stopping.
    Refused,
}

/// How a connection is greeted (RFC 9051 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Greeting {
    /// `* OK`: log in first.
    Ok,
    /// `* PREAUTH`: the driver has authenticated the connection already (e.g. by a client
    /// certificate or a local socket).
    PreAuth,
    /// `* BYE`: the server will not serve this connection (overload, blocked address).
    Bye,
}

/// Credentials from LOGIN or AUTHENTICATE PLAIN/LOGIN; `Debug` redacts the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub authzid: Option<String>,
    pub user: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("authzid", &self.authzid)
            .field("user", &self.user)
            .field("password", &format_args!("<redacted>"))
            .finish()
    }
}

/// Why a login with good credentials gets no session (the user's home node refused it,
/// `[cluster]`): the RFC 5530 response code of the `NO`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginRefused {
    /// `[INUSE]`: the mailbox is in use where it lives.
    InUse,
    /// `[UNAVAILABLE]`: a temporary failure.
    Unavailable,
    /// `[AUTHORIZATIONFAILED]`: the identity has no mailbox to act on there.
    AuthorizationFailed,
    /// `[LIMIT]`: over a limit of the server's.
    Limit,
    /// `[SERVERBUG]`: the servers did not understand each other.
    ServerBug,
}

/// The driver answered something the session was not waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("answer not expected in this state")]
pub struct Unexpected;

struct Selected {
    folder: FolderId,
    read_only: bool,
    /// UIDNEXT at SELECT: messages from here on appeared while selected (`\Recent`).
    first_new_uid: u32,
    uidnext: u32,
    highest_modseq: u64,
    messages: View,
}

impl Selected {
    fn seq_of(&self, uid: u32) -> Option<usize> {
        self.messages.binary_search_by_key(&uid, |m| m.uid).ok()
    }
}

enum State {
    NotAuthenticated,
    Authenticated,
    Selected(Box<Selected>),
    Logout,
}

/// What the session waits for.
enum Wait {
    None,
    /// The client's next line is a SASL response.
    SaslPlain {
        tag: String,
    },
    SaslLoginUser {
        tag: String,
    },
    SaslLoginPassword {
        tag: String,
        user: String,
    },
    /// `DONE` ends IDLE.
    Idle {
        tag: String,
    },
    /// The driver's answers.
    Auth {
        tag: String,
    },
    StartTls,
    Store(Job),
}

/// What to do with a store answer.
enum Job {
    List {
        tag: String,
        lsub: bool,
        patterns: Vec<String>,
        ret: ListReturn,
    },
    ListStatus {
        tag: String,
        lines: Vec<u8>,
        names: Vec<String>,
        items: Vec<StatusItem>,
    },
    Status {
        tag: String,
        name: String,
        items: Vec<StatusItem>,
    },
    Select {
        tag: String,
        read_only: bool,
        resync: Option<Box<Resync>>,
    },
    /// SELECT (QRESYNC ...): was anything expunged since the client's modseq?
    ResyncVanished {
        tag: String,
        read_only: bool,
        resync: Box<Resync>,
    },
    /// UID FETCH (CHANGEDSINCE m VANISHED): was anything expunged since m?
    FetchVanished(Box<FetchJob>, Vec<(u32, u32)>),
    /// GETQUOTAROOT: does the mailbox exist?
    QuotaRootOf {
        tag: String,
        mailbox: String,
    },
    Quota {
        tag: String,
        /// GETQUOTAROOT's mailbox, as the client wrote it; `None` for GETQUOTA.
        root_of: Option<String>,
    },
    Done {
        tag: String,
        what: &'static str,
    },
    Poll(AfterPoll),
    Fetch(Box<FetchJob>),
    Search(Box<SearchJob>),
    Store {
        tag: String,
        uid: bool,
        silent: bool,
        what: &'static str,
    },
    Copy {
        tag: String,
        remove: bool,
        uid: bool,
    },
    Expunge {
        tag: String,
        close: bool,
        what: &'static str,
    },
    Append {
        tag: String,
    },
}

/// RETURN options of LIST (RFC 5258, RFC 5819). CHILDREN and SPECIAL-USE attributes are
/// always sent, so only these two change the answer.
/// The client's view of the folder from SELECT (QRESYNC ...) (RFC 7162 §3.2.5).
struct Resync {
    uidvalidity: u32,
    modseq: u64,
    known: Option<SequenceSet>,
}

/// What follows the untagged updates of a poll.
enum AfterPoll {
    /// NOOP, CHECK, and APPEND into the selected folder (which then announces the new
    /// message before its tagged OK, RFC 9051 §6.3.12): the tagged OK, with its code.
    Complete {
        tag: String,
        code: Option<String>,
        what: &'static str,
    },
    /// IDLE (at its start, or woken by the driver): wait for DONE.
    Idle { tag: String },
}

#[derive(Default, Clone)]
struct ListReturn {
    subscribed: bool,
    status: Option<Vec<StatusItem>>,
    /// Selection option SUBSCRIBED: only subscribed folders.
    only_subscribed: bool,
    /// Selection option RECURSIVEMATCH: also parents of a selected folder, with CHILDINFO.
    recursive: bool,
    /// The patterns after the first of `LIST ref (p1 p2 ...)` (RFC 5258), as sent.
    more_patterns: Vec<Vec<u8>>,
}

#[derive(Clone, Copy)]
enum StatusItem {
    Messages,
    Recent,
    UidNext,
    UidValidity,
    Unseen,
    Deleted,
    DeletedStorage,
    Size,
    HighestModSeq,
}

struct SearchJob {
    tag: String,
    uid: bool,
    ret: Option<search::Return>,
    keys: Vec<SearchKey<'static>>,
    /// UIDs ascending with their verdict (`None`: needs the body); `next` is the one
    /// waiting for its body.
    candidates: Vec<(u32, Option<bool>)>,
    next: usize,
}

struct FetchJob {
    tag: String,
    uid: bool,
    items: Vec<Item>,
    /// UIDs to answer for, ascending; `next` is the one waiting for its body.
    uids: Vec<u32>,
    next: usize,
    needs_body: bool,
    /// Every item that needs the message is ENVELOPE, BODY or BODYSTRUCTURE: ask for the
    /// stored summary first, for the body only when there is none.
    summary_first: bool,
    mark_seen: Vec<u32>,
    /// A BINARY part had a transfer encoding we cannot undo: the FETCH ends `NO [UNKNOWN-CTE]`.
    unknown_cte: bool,
}

#[derive(Debug, Clone)]
enum Item {
    Uid,
    Flags,
    InternalDate,
    Size,
    ModSeq,
    Rfc822,
    Rfc822Header,
    Rfc822Text,
    Envelope,
    /// BODY (false) or BODYSTRUCTURE (true).
    Structure(bool),
    Body {
        section: BodySection,
        partial: Option<(u32, u32)>,
        peek: bool,
        binary: bool,
    },
    /// BINARY[path] of a part: its body with the transfer encoding undone (RFC 9051 §6.4.5).
    Binary {
        path: Vec<u32>,
        partial: Option<(u32, u32)>,
        peek: bool,
    },
    BinarySize(Vec<u32>),
}

#[derive(Debug, Clone)]
enum BodySection {
    Full,
    Header,
    Text,
    Fields { names: Vec<String>, not: bool },
    Part { path: Vec<u32>, piece: PartPiece },
}

/// The IMAP session of one connection.
pub struct Session {
    config: Arc<SessionConfig>,
    framer: Framer,
    state: State,
    wait: Wait,
    tls: bool,
    rev2: bool,
    condstore: bool,
    /// ENABLE QRESYNC (RFC 7162 §3.2.3); implies `condstore`.
    qresync: bool,
    /// ENABLE UTF8=ACCEPT (RFC 6855) or IMAP4rev2: mailbox names are UTF-8, not mUTF-7.
    utf8: bool,
    errors: u32,
    auth_failures: u32,
}

impl Session {
    /// A session on a new connection; writes the greeting. `tls`: the connection is already
    /// TLS (port 993).
    pub fn new(config: Arc<SessionConfig>, tls: bool, out: &mut Outbox) -> Self {
        Self::with_greeting(config, tls, Greeting::Ok, out)
    }

    /// A session greeted as `greeting` says; BYE comes with [`Event::Close`].
    pub fn with_greeting(
        config: Arc<SessionConfig>,
        tls: bool,
        greeting: Greeting,
        out: &mut Outbox,
    ) -> Self {
        let mut session = Session {
            framer: Framer::new(config.limits),
            config,
            state: State::NotAuthenticated,
            wait: Wait::None,
            tls,
            rev2: false,
            condstore: false,
            qresync: false,
            utf8: false,
            errors: 0,
            auth_failures: 0,
        };
        match greeting {
            Greeting::Bye => {
                reply::status(
                    &mut out.bytes,
                    None,
                    Status::Bye,
                    None,
                    "Service unavailable",
                );
                session.close(CloseReason::Refused, out);
            }
            Greeting::PreAuth => {
                session.state = State::Authenticated;
                let caps = format!("CAPABILITY {}", session.capabilities());
                let b = &mut out.bytes;
                reply::status(b, None, Status::PreAuth, Some(&caps), "Logged in");
            }
            Greeting::Ok => {
                let caps = format!("CAPABILITY {}", session.capabilities());
                let b = &mut out.bytes;
                reply::status(b, None, Status::Ok, Some(&caps), "relay IMAP ready");
            }
        }
        session
    }

    /// A session for a user already authenticated elsewhere (a login proxied from another
    /// cluster node, which checked the credentials and answers the client's login itself
    /// with [`Session::capabilities`] of this session): no greeting, in the authenticated
    /// state. `tls`: the connection is protected.
    pub fn preauthenticated(config: Arc<SessionConfig>, tls: bool) -> Self {
        Session {
            framer: Framer::new(config.limits),
            config,
            state: State::Authenticated,
            wait: Wait::None,
            tls,
            rev2: false,
            condstore: false,
            qresync: false,
            utf8: false,
            errors: 0,
            auth_failures: 0,
        }
    }

    /// The server is stopping: `* BYE` and [`Event::Close`] (the driver calls this between
    /// commands, or gives up waiting on a store answer first).
    pub fn shut_down(&mut self, out: &mut Outbox) {
        if !self.is_closed() {
            reply::status(
                &mut out.bytes,
                None,
                Status::Bye,
                None,
                "Server shutting down",
            );
            self.close(CloseReason::Refused, out);
        }
    }

    /// Whether an event is waiting for the driver's answer (nothing is consumed until then).
    pub fn awaiting(&self) -> bool {
        matches!(
            self.wait,
            Wait::Auth { .. } | Wait::StartTls | Wait::Store(_)
        )
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Logout)
    }

    /// Whether the session is in IDLE (the driver may then call [`Session::poll`] when the
    /// folder changes).
    pub fn idling(&self) -> bool {
        matches!(self.wait, Wait::Idle { .. })
    }

    /// The capabilities in the current state.
    pub fn capabilities(&self) -> String {
        let mut caps = String::from("IMAP4rev2 IMAP4rev1");
        let authenticated = !matches!(self.state, State::NotAuthenticated);
        if !authenticated {
            if !self.tls && self.config.starttls {
                caps.push_str(" STARTTLS");
            }
            if self.tls || self.config.plaintext_auth {
                caps.push_str(" AUTH=PLAIN AUTH=LOGIN SASL-IR");
            } else {
                caps.push_str(" LOGINDISABLED");
            }
        }
        caps.push_str(
            " LITERAL+ ENABLE IDLE NAMESPACE ID UIDPLUS MOVE UNSELECT SPECIAL-USE LIST-EXTENDED LIST-STATUS CONDSTORE \
             QRESYNC ESEARCH BINARY STATUS=SIZE QUOTA QUOTA=RES-STORAGE UTF8=ACCEPT",
        );
        caps.push_str(&format!(" APPENDLIMIT={}", self.config.limits.append_max));
        caps
    }

    /// Consumes client bytes; returns how many.
    pub fn feed(&mut self, input: &[u8], out: &mut Outbox) -> usize {
        let mut used = 0;
        while used < input.len() && !self.awaiting() && !self.is_closed() {
            let (n, step) = self.framer.push(&input[used..]);
            used += n;
            match step {
                Step::Need => break,
                Step::Continue => reply::continuation(&mut out.bytes, "Ready for literal data"),
                Step::Rejected { tag, why } => {
                    self.framer.clear();
                    self.rejected(tag, why, out);
                }
                Step::Command => {
                    let command = self.framer.take_command();
                    self.line(&command, out);
                }
            }
        }
        used
    }

    fn rejected(&mut self, tag: Option<String>, why: Rejection, out: &mut Outbox) {
        // A rejected line also ends a SASL exchange or IDLE.
        let waited = std::mem::replace(&mut self.wait, Wait::None);
        let tag = match waited {
            Wait::SaslPlain { tag }
            | Wait::SaslLoginUser { tag }
            | Wait::SaslLoginPassword { tag, .. }
            | Wait::Idle { tag } => Some(tag),
            _ => tag,
        };
        let (status, code) = match why {
            Rejection::AppendTooLarge => (Status::No, Some("TOOBIG")),
            Rejection::LiteralTooLarge | Rejection::CommandTooLong => (Status::Bad, Some("TOOBIG")),
            Rejection::LineTooLong => (Status::Bad, None),
        };
        reply::status(
            &mut out.bytes,
            tag.as_deref(),
            status,
            code,
            &why.to_string(),
        );
        self.error(out);
    }

    fn error(&mut self, out: &mut Outbox) {
        self.errors += 1;
        if self.errors >= ERRORS_MAX {
            reply::status(&mut out.bytes, None, Status::Bye, None, "Too many errors");
            self.close(CloseReason::TooManyErrors, out);
        }
    }

    fn close(&mut self, reason: CloseReason, out: &mut Outbox) {
        self.state = State::Logout;
        self.wait = Wait::None;
        out.events.push(Event::Close(reason));
    }

    fn bad(&mut self, tag: Option<&str>, text: &str, out: &mut Outbox) {
        reply::status(&mut out.bytes, tag, Status::Bad, None, text);
        self.error(out);
    }

    fn no(&mut self, tag: &str, code: Option<&str>, text: &str, out: &mut Outbox) {
        reply::status(&mut out.bytes, Some(tag), Status::No, code, text);
    }

    fn ok(&mut self, tag: &str, code: Option<&str>, text: &str, out: &mut Outbox) {
        reply::status(&mut out.bytes, Some(tag), Status::Ok, code, text);
    }

    /// One complete line (with its literals).
    fn line(&mut self, line: &[u8], out: &mut Outbox) {
        match std::mem::replace(&mut self.wait, Wait::None) {
            Wait::None => self.command(line, out),
            Wait::SaslPlain { tag } => match sasl_line(line) {
                None => self.no(&tag, None, "Authentication cancelled", out),
                Some(text) => self.sasl_plain(&tag, text, out),
            },
            Wait::SaslLoginUser { tag } => match sasl_line(line).map(sasl::decode_base64) {
                Some(Ok(user)) => {
                    self.wait = Wait::SaslLoginPassword {
                        tag,
                        user: String::from_utf8_lossy(&user).into_owned(),
                    };
                    reply::continuation(&mut out.bytes, "UGFzc3dvcmQ6");
                }
                None => self.no(&tag, None, "Authentication cancelled", out),
                Some(Err(_)) => self.bad(Some(&tag), "Invalid base64", out),
            },
            Wait::SaslLoginPassword { tag, user } => {
                match sasl_line(line).map(sasl::decode_base64) {
                    Some(Ok(password)) => match String::from_utf8(password) {
                        Ok(password) => self.authenticate(
                            tag,
                            Credentials {
                                authzid: None,
                                user,
                                password,
                            },
                            out,
                        ),
                        Err(_) => self.bad(Some(&tag), "Invalid password encoding", out),
                    },
                    None => self.no(&tag, None, "Authentication cancelled", out),
                    Some(Err(_)) => self.bad(Some(&tag), "Invalid base64", out),
                }
            }
            Wait::Idle { tag } => {
                let text = line.strip_suffix(b"\r\n").unwrap_or(line);
                if text.eq_ignore_ascii_case(b"DONE") {
                    self.ok(&tag, None, "IDLE terminated", out);
                } else {
                    self.bad(Some(&tag), "Expected DONE", out);
                }
            }
            other => {
                // Unreachable: feed stops while the driver owes an answer.
                self.wait = other;
            }
        }
    }

    fn command(&mut self, line: &[u8], out: &mut Outbox) {
        let (line, list_return) = split_list_return(line);
        let (line, search_return) = match search::split_return(&line) {
            (std::borrow::Cow::Owned(stripped), ret) => (std::borrow::Cow::Owned(stripped), ret),
            (std::borrow::Cow::Borrowed(_), ret) => (line, ret),
        };
        let line = match split_append_utf8(&line) {
            Some(rewritten) => std::borrow::Cow::Owned(rewritten),
            None => line,
        };
        let command = match CommandCodec::default().decode(&line) {
            Ok((_, command)) => command,
            Err(_) => {
                let tag = frame::tag_of(&line);
                let text = if tag.is_some() {
                    "Syntax error or unknown command"
                } else {
                    "Missing or invalid tag"
                };
                self.bad(tag.as_deref(), text, out);
                return;
            }
        };
        let tag = command.tag.inner().to_string();
        if let Some(ret) = list_return {
            match ret {
                Some(ret) => return self.list_command(&tag, command, ret, out),
                None => return self.bad(Some(&tag), "Invalid RETURN options", out),
            }
        }
        let search_return = match search_return {
            Some(Some(ret)) => Some(ret),
            Some(None) => return self.bad(Some(&tag), "Invalid RETURN options", out),
            None => None,
        };
        self.dispatch(tag, command, search_return, out);
    }

    fn dispatch(
        &mut self,
        tag: String,
        command: Command<'_>,
        search_return: Option<search::Return>,
        out: &mut Outbox,
    ) {
        let authenticated = !matches!(self.state, State::NotAuthenticated);
        let selected = matches!(self.state, State::Selected(_));
        let name = command.body.name();
        match command.body {
            CommandBody::Capability => {
                let caps = format!("CAPABILITY {}", self.capabilities());
                reply::untagged(&mut out.bytes, &caps);
                reply::end(&mut out.bytes);
                self.ok(&tag, None, "CAPABILITY completed", out);
            }
            CommandBody::Noop | CommandBody::Check => {
                let what = if matches!(command.body, CommandBody::Noop) {
                    "NOOP completed"
                } else {
                    "CHECK completed"
                };
                if selected {
                    self.poll_for(
                        AfterPoll::Complete {
                            tag,
                            code: None,
                            what,
                        },
                        out,
                    );
                } else {
                    self.ok(&tag, None, what, out);
                }
            }
            CommandBody::Logout => {
                reply::status(&mut out.bytes, None, Status::Bye, None, "Logging out");
                self.ok(&tag, None, "LOGOUT completed", out);
                self.close(CloseReason::Logout, out);
            }
            CommandBody::Id { .. } => {
                reply::untagged(&mut out.bytes, "ID (\"name\" \"relay\")");
                reply::end(&mut out.bytes);
                self.ok(&tag, None, "ID completed", out);
            }
            CommandBody::StartTLS if !authenticated => {
                if self.tls || !self.config.starttls {
                    self.bad(Some(&tag), "STARTTLS not available", out);
                } else {
                    self.ok(&tag, None, "Begin TLS negotiation now", out);
                    self.wait = Wait::StartTls;
                    out.events.push(Event::StartTls);
                }
            }
            CommandBody::Login { username, password } if !authenticated => {
                if !self.auth_allowed() {
                    return self.no(&tag, Some("PRIVACYREQUIRED"), "LOGIN needs TLS", out);
                }
                let user = String::from_utf8_lossy(username.as_ref()).into_owned();
                let password = password.declassify();
                match std::str::from_utf8(password.as_ref()) {
                    Ok(password) => {
                        let credentials = Credentials {
                            authzid: None,
                            user,
                            password: password.to_string(),
                        };
                        self.authenticate(tag, credentials, out);
                    }
                    Err(_) => self.bad(Some(&tag), "Password is not UTF-8", out),
                }
            }
            CommandBody::Authenticate {
                mechanism,
                initial_response,
            } if !authenticated => {
                if !self.auth_allowed() {
                    return self.no(&tag, Some("PRIVACYREQUIRED"), "AUTHENTICATE needs TLS", out);
                }
                let initial = initial_response.map(|r| r.declassify().to_vec());
                match mechanism {
                    AuthMechanism::Plain => match initial {
                        // imap-codec hands the initial response decoded.
                        Some(bytes) => self.plain_message(&tag, &bytes, out),
                        None => {
                            reply::continuation(&mut out.bytes, "");
                            self.wait = Wait::SaslPlain { tag };
                        }
                    },
                    AuthMechanism::Login => match initial {
                        Some(user) => {
                            self.wait = Wait::SaslLoginPassword {
                                tag,
                                user: String::from_utf8_lossy(&user).into_owned(),
                            };
                            reply::continuation(&mut out.bytes, "UGFzc3dvcmQ6");
                        }
                        None => {
                            self.wait = Wait::SaslLoginUser { tag };
                            reply::continuation(&mut out.bytes, "VXNlcm5hbWU6");
                        }
                    },
                    _ => self.no(&tag, None, "Unsupported mechanism", out),
                }
            }
            CommandBody::StartTLS
            | CommandBody::Login { .. }
            | CommandBody::Authenticate { .. } => {
                self.bad(Some(&tag), "Already authenticated", out);
            }
            _ if !authenticated => self.bad(Some(&tag), "Log in first", out),
            CommandBody::Enable { capabilities } => {
                let mut enabled = String::from("ENABLED");
                for cap in capabilities.as_ref() {
                    match cap {
                        CapabilityEnable::CondStore if !self.condstore => {
                            self.condstore = true;
                            enabled.push_str(" CONDSTORE");
                        }
                        CapabilityEnable::Utf8(Utf8Kind::Accept) if !self.utf8 => {
                            self.utf8 = true;
                            enabled.push_str(" UTF8=ACCEPT");
                        }
                        CapabilityEnable::Other(_) => {
                            let name = cap.to_string();
                            if name.eq_ignore_ascii_case("IMAP4rev2") && !self.rev2 {
                                self.rev2 = true;
                                // RFC 9051 §6.3.1: IMAP4rev2 names are UTF-8.
                                self.utf8 = true;
                                enabled.push_str(" IMAP4rev2");
                            } else if name.eq_ignore_ascii_case("QRESYNC") && !self.qresync {
                                self.qresync = true;
                                self.condstore = true;
                                enabled.push_str(" QRESYNC");
                            }
                        }
                        _ => {}
                    }
                }
                reply::untagged(&mut out.bytes, &enabled);
                reply::end(&mut out.bytes);
                self.ok(&tag, None, "ENABLE completed", out);
            }
            CommandBody::Namespace => {
                reply::untagged(&mut out.bytes, "NAMESPACE ((\"\" \"/\")) NIL NIL");
                reply::end(&mut out.bytes);
                self.ok(&tag, None, "NAMESPACE completed", out);
            }
            CommandBody::List { .. } | CommandBody::Lsub { .. } => {
                self.list_command(&tag, command, ListReturn::default(), out);
            }
            CommandBody::Status {
                mailbox,
                item_names,
            } => {
                let Some(name) = self.name_or_no(&tag, &mailbox, out) else {
                    return;
                };
                let items = status_items(&item_names);
                self.request(
                    Request::Status(name.clone()),
                    Job::Status { tag, name, items },
                    out,
                );
            }
            CommandBody::Create { mailbox } => {
                let Some(name) = self.name_or_no(&tag, &mailbox, out) else {
                    return;
                };
                let name = name.trim_end_matches(DELIMITER).to_string();
                if name.eq_ignore_ascii_case("INBOX") {
                    return self.no(&tag, Some("ALREADYEXISTS"), "INBOX exists", out);
                }
                let job = Job::Done {
                    tag,
                    what: "CREATE completed",
                };
                self.request(Request::Create(name), job, out);
            }
            CommandBody::Delete { mailbox } => {
                let Some(name) = self.name_or_no(&tag, &mailbox, out) else {
                    return;
                };
                let job = Job::Done {
                    tag,
                    what: "DELETE completed",
                };
                self.request(Request::Delete(name), job, out);
            }
            CommandBody::Rename { from, to } => {
                let Some(from) = self.name_or_no(&tag, &from, out) else {
                    return;
                };
                let Some(to) = self.name_or_no(&tag, &to, out) else {
                    return;
                };
                let job = Job::Done {
                    tag,
                    what: "RENAME completed",
                };
                self.request(Request::Rename { from, to }, job, out);
            }
            CommandBody::Subscribe { mailbox } | CommandBody::Unsubscribe { mailbox } => {
                let subscribed = name == "SUBSCRIBE";
                let Some(folder) = self.name_or_no(&tag, &mailbox, out) else {
                    return;
                };
                let what = if subscribed {
                    "SUBSCRIBE completed"
                } else {
                    "UNSUBSCRIBE completed"
                };
                self.request(
                    Request::Subscribe {
                        name: folder,
                        subscribed,
                    },
                    Job::Done { tag, what },
                    out,
                );
            }
            CommandBody::Select {
                mailbox,
                parameters,
            }
            | CommandBody::Examine {
                mailbox,
                parameters,
            } => {
                let read_only = name == "EXAMINE";
                let Some(folder) = self.name_or_no(&tag, &mailbox, out) else {
                    return;
                };
                let mut resync = None;
                for p in &parameters {
                    if let SelectParameter::QResync {
                        uid_validity,
                        mod_sequence_value,
                        known_uids,
                        ..
                    } = p
                    {
                        if !self.qresync {
                            return self.bad(Some(&tag), "QRESYNC is not enabled", out);
                        }
                        resync = Some(Box::new(Resync {
                            uidvalidity: uid_validity.get(),
                            modseq: mod_sequence_value.get(),
                            known: known_uids.clone(),
                        }));
                    }
                }
                if parameters
                    .iter()
                    .any(|p| matches!(p, SelectParameter::CondStore))
                {
                    self.condstore = true;
                }
                if let State::Selected(_) = self.state {
                    self.state = State::Authenticated;
                    reply::status(
                        &mut out.bytes,
                        None,
                        Status::Ok,
                        Some("CLOSED"),
                        "Previous mailbox closed",
                    );
                }
                self.request(
                    Request::Select(folder.clone()),
                    Job::Select {
                        tag,
                        read_only,
                        resync,
                    },
                    out,
                );
            }
            CommandBody::Append {
                mailbox,
                flags,
                date,
                message,
            } => {
                let Some(to) = self.name_or_no(&tag, &mailbox, out) else {
                    return;
                };
                let Some(flags) = flags_of(&flags) else {
                    return self.bad(Some(&tag), "Invalid flag", out);
                };
                let date = date.map(|d| {
                    let d = d.as_ref();
                    let zone = d.offset().local_minus_utc() / 60;
                    (d.timestamp(), i16::try_from(zone).unwrap_or(0))
                });
                let message = match message {
                    imap_codec::imap_types::extensions::binary::LiteralOrLiteral8::Literal(l) => {
                        l.data().to_vec()
                    }
                    imap_codec::imap_types::extensions::binary::LiteralOrLiteral8::Literal8(l) => {
                        l.data.to_vec()
                    }
                };
                let request = Request::Append {
                    to,
                    flags,
                    date,
                    message,
                };
                self.request(request, Job::Append { tag }, out);
            }
            CommandBody::GetQuotaRoot { mailbox } => {
                let Some(name) = self.name_or_no(&tag, &mailbox, out) else {
                    return;
                };
                let mailbox = match &mailbox {
                    Mailbox::Inbox => "INBOX".to_string(),
                    Mailbox::Other(o) => String::from_utf8_lossy(o.inner().as_ref()).into_owned(),
                };
                // RFC 9208 §4.3: only for a mailbox that exists.
                let job = Job::QuotaRootOf { tag, mailbox };
                self.request(Request::Status(name), job, out);
            }
            CommandBody::GetQuota { root } => {
                if !root.as_ref().is_empty() {
                    return self.no(&tag, Some("NONEXISTENT"), "No such quota root", out);
                }
                self.request(Request::Quota, Job::Quota { tag, root_of: None }, out);
            }
            CommandBody::SetQuota { .. } => {
                self.no(
                    &tag,
                    Some("NOPERM"),
                    "Quotas are set by the administrator",
                    out,
                );
            }
            CommandBody::Idle => {
                reply::continuation(&mut out.bytes, "idling");
                self.poll_for(AfterPoll::Idle { tag }, out);
            }
            _ if !selected => self.bad(Some(&tag), "No mailbox selected", out),
            CommandBody::Close => {
                let read_only = self.selected().is_some_and(|s| s.read_only);
                if read_only {
                    self.state = State::Authenticated;
                    self.ok(&tag, None, "CLOSE completed", out);
                } else {
                    self.expunge(tag, None, true, "CLOSE completed", out);
                }
            }
            CommandBody::Unselect => {
                self.state = State::Authenticated;
                self.ok(&tag, None, "UNSELECT completed", out);
            }
            CommandBody::Expunge => self.expunge(tag, None, false, "EXPUNGE completed", out),
            CommandBody::ExpungeUid { sequence_set } => {
                let Some(uids) = self.resolve(&sequence_set, true) else {
                    return self.bad(Some(&tag), "Invalid sequence set", out);
                };
                self.expunge(tag, Some(uids), false, "UID EXPUNGE completed", out);
            }
            CommandBody::Fetch {
                sequence_set,
                macro_or_item_names,
                uid,
                modifiers,
            } => self.fetch(
                tag,
                &sequence_set,
                macro_or_item_names,
                uid,
                &modifiers,
                out,
            ),
            CommandBody::Store {
                sequence_set,
                kind,
                response,
                flags,
                uid,
                modifiers,
            } => {
                if self.selected().is_some_and(|s| s.read_only) {
                    return self.no(&tag, Some("READ-ONLY"), "Mailbox is read-only", out);
                }
                let Some(uids) = self.resolve(&sequence_set, uid) else {
                    return self.bad(Some(&tag), "Invalid sequence set", out);
                };
                let Some(flags) = flags_of(&flags) else {
                    return self.bad(Some(&tag), "Invalid flag", out);
                };
                let unchanged_since = modifiers
                    .iter()
                    .map(|m| match m {
                        StoreModifier::UnchangedSince(n) => *n,
                    })
                    .next();
                if unchanged_since.is_some() {
                    self.condstore = true;
                }
                let op = match kind {
                    StoreType::Replace => FlagOp::Replace,
                    StoreType::Add => FlagOp::Add,
                    StoreType::Remove => FlagOp::Remove,
                };
                let Some(folder) = self.selected().map(|s| s.folder) else {
                    return;
                };
                let request = Request::StoreFlags {
                    folder,
                    uids,
                    op,
                    flags,
                    unchanged_since,
                };
                let job = Job::Store {
                    tag,
                    uid,
                    silent: matches!(response, StoreResponse::Silent),
                    what: "STORE completed",
                };
                self.request(request, job, out);
            }
            CommandBody::Copy {
                sequence_set,
                mailbox,
                uid,
            }
            | CommandBody::Move {
                sequence_set,
                mailbox,
                uid,
            } => {
                let remove = name == "MOVE";
                if remove && self.selected().is_some_and(|s| s.read_only) {
                    return self.no(&tag, Some("READ-ONLY"), "Mailbox is read-only", out);
                }
                let Some(uids) = self.resolve(&sequence_set, uid) else {
                    return self.bad(Some(&tag), "Invalid sequence set", out);
                };
                let Some(to) = self.name_or_no(&tag, &mailbox, out) else {
                    return;
                };
                let Some(folder) = self.selected().map(|s| s.folder) else {
                    return;
                };
                if uids.is_empty() {
                    let what = if remove {
                        "MOVE completed"
                    } else {
                        "COPY completed"
                    };
                    return self.ok(&tag, None, what, out);
                }
                let request = Request::Copy {
                    folder,
                    uids,
                    to,
                    remove,
                };
                self.request(request, Job::Copy { tag, remove, uid }, out);
            }
            CommandBody::Search {
                charset,
                criteria,
                uid,
            } => {
                if let Some(charset) = charset {
                    let name = match &charset {
                        imap_codec::imap_types::core::Charset::Atom(a) => a.inner().to_string(),
                        imap_codec::imap_types::core::Charset::Quoted(q) => q.inner().to_string(),
                    };
                    if !name.eq_ignore_ascii_case("UTF-8") && !name.eq_ignore_ascii_case("US-ASCII")
                    {
                        return self.no(
                            &tag,
                            Some("BADCHARSET (UTF-8 US-ASCII)"),
                            "Unsupported charset",
                            out,
                        );
                    }
                }
                let keys = criteria
                    .into_inner()
                    .into_iter()
                    .map(IntoStatic::into_static)
                    .collect();
                self.search(tag, keys, uid, search_return, out);
            }
            _ => self.bad(Some(&tag), "Command not supported", out),
        }
    }

    fn auth_allowed(&self) -> bool {
        self.tls || self.config.plaintext_auth
    }

    fn selected(&self) -> Option<&Selected> {
        match &self.state {
            State::Selected(s) => Some(s),
            _ => None,
        }
    }

    fn name_or_no(&mut self, tag: &str, mailbox: &Mailbox<'_>, out: &mut Outbox) -> Option<String> {
        match mailbox_name(mailbox, self.utf8) {
            Some(name) => Some(name),
            None => {
                self.no(tag, Some("CANNOT"), "Invalid mailbox name", out);
                None
            }
        }
    }

    fn request(&mut self, request: Request, job: Job, out: &mut Outbox) {
        self.wait = Wait::Store(job);
        out.events.push(Event::Store(request));
    }

    fn authenticate(&mut self, tag: String, credentials: Credentials, out: &mut Outbox) {
        self.wait = Wait::Auth { tag };
        out.events.push(Event::Authenticate(credentials));
    }

    fn sasl_plain(&mut self, tag: &str, text: &[u8], out: &mut Outbox) {
        match sasl::decode_base64(text) {
            Ok(bytes) => self.plain_message(tag, &bytes, out),
            Err(_) => self.bad(Some(tag), "Invalid base64", out),
        }
    }

    fn plain_message(&mut self, tag: &str, bytes: &[u8], out: &mut Outbox) {
        let encoded = base64_simd::STANDARD.encode_to_string(bytes);
        match sasl::decode_plain(encoded.as_bytes()) {
            Ok(plain) => self.authenticate(
                tag.to_string(),
                Credentials {
                    authzid: plain.authzid,
                    user: plain.authcid,
                    password: plain.password,
                },
                out,
            ),
            Err(_) => self.bad(Some(tag), "Invalid PLAIN message", out),
        }
    }

    /// The driver's verdict on [`Event::Authenticate`].
    pub fn authenticated(&mut self, ok: bool, out: &mut Outbox) -> Result<(), Unexpected> {
        let Wait::Auth { tag } = std::mem::replace(&mut self.wait, Wait::None) else {
            return Err(Unexpected);
        };
        if ok {
            self.state = State::Authenticated;
            let caps = format!("CAPABILITY {}", self.capabilities());
            self.ok(&tag, Some(&caps), "Logged in", out);
        } else {
            self.auth_failures += 1;
            self.no(
                &tag,
                Some("AUTHENTICATIONFAILED"),
                "Authentication failed",
                out,
            );
            if self.auth_failures >= AUTH_FAILURES_MAX {
                reply::status(&mut out.bytes, None, Status::Bye, None, "Too many failures");
                self.close(CloseReason::AuthFailuresExceeded, out);
            }
        }
        Ok(())
    }

    /// The tag of the login the driver is checking (for a login proxied to the user's home
    /// node, whose answer the driver writes itself under this tag).
    pub fn login_tag(&self) -> Option<&str> {
        match &self.wait {
            Wait::Auth { tag } => Some(tag),
            _ => None,
        }
    }

    /// The driver's answer to `Event::Authenticate` when the login could not be completed
    /// now (the user's home node is unreachable): `NO [UNAVAILABLE]` (RFC 5530), still not
    /// authenticated, not counted as a failure.
    pub fn authentication_unavailable(&mut self, out: &mut Outbox) -> Result<(), Unexpected> {
        self.login_refused(LoginRefused::Unavailable, out)
    }

    /// The driver's answer to `Event::Authenticate` when the credentials were good but the
    /// user's home node refused the session (`[cluster]`): `NO` with `why`'s RFC 5530 code,
    /// still not authenticated, not counted as a failure.
    pub fn login_refused(&mut self, why: LoginRefused, out: &mut Outbox) -> Result<(), Unexpected> {
        let Wait::Auth { tag } = std::mem::replace(&mut self.wait, Wait::None) else {
            return Err(Unexpected);
        };
        let (code, text) = match why {
            LoginRefused::InUse => ("INUSE", "Mailbox in use, try again later"),
            LoginRefused::Unavailable => (
                "UNAVAILABLE",
                "Mailbox temporarily unavailable, try again later",
            ),
            LoginRefused::AuthorizationFailed => ("AUTHORIZATIONFAILED", "No such mailbox"),
            LoginRefused::Limit => ("LIMIT", "Too many sessions or requests, try again later"),
            LoginRefused::ServerBug => ("SERVERBUG", "Internal error, try again later"),
        };
        self.no(&tag, Some(code), text, out);
        Ok(())
    }

    /// The TLS handshake after [`Event::StartTls`] succeeded.
    pub fn tls_established(&mut self) -> Result<(), Unexpected> {
        if !matches!(self.wait, Wait::StartTls) {
            return Err(Unexpected);
        }
        self.wait = Wait::None;
        self.tls = true;
        // RFC 9051 §6.2.1: forget everything learnt before TLS.
        self.framer.clear();
        Ok(())
    }

    /// During IDLE: the selected folder may have changed; asks the store what changed.
    pub fn poll(&mut self, out: &mut Outbox) {
        if let Wait::Idle { tag } = std::mem::replace(&mut self.wait, Wait::None) {
            self.poll_for(AfterPoll::Idle { tag }, out);
        }
    }

    fn poll_for(&mut self, after: AfterPoll, out: &mut Outbox) {
        let Some(s) = self.selected() else {
            return self.after_poll(after, out);
        };
        let request = Request::Changes {
            folder: s.folder,
            modseq: s.highest_modseq,
            uidnext: s.uidnext,
        };
        self.request(request, Job::Poll(after), out);
    }

    fn after_poll(&mut self, after: AfterPoll, out: &mut Outbox) {
        match after {
            AfterPoll::Complete { tag, code, what } => self.ok(&tag, code.as_deref(), what, out),
            AfterPoll::Idle { tag } => self.wait = Wait::Idle { tag },
        }
    }

    /// The store's answer to the last [`Event::Store`].
    pub fn answer(&mut self, answer: Answer, out: &mut Outbox) -> Result<(), Unexpected> {
        let Wait::Store(job) = std::mem::replace(&mut self.wait, Wait::None) else {
            return Err(Unexpected);
        };
        match (job, answer) {
            (
                Job::List {
                    tag,
                    lsub,
                    patterns,
                    ret,
                },
                Answer::List(r),
            ) => match r {
                Ok(folders) => self.list_answer(tag, lsub, &patterns, ret, &folders, out),
                Err(e) => self.store_error(&tag, e, out),
            },
            (
                Job::ListStatus {
                    tag,
                    mut lines,
                    mut names,
                    items,
                },
                Answer::Status(r),
            ) => {
                if let (Ok(status), Some(name)) = (r, names.pop()) {
                    status_line(&mut lines, &name, &items, &status, self.utf8);
                }
                if let Some(name) = names.last().cloned() {
                    self.request(
                        Request::Status(name),
                        Job::ListStatus {
                            tag,
                            lines,
                            names,
                            items,
                        },
                        out,
                    );
                } else {
                    out.bytes.extend_from_slice(&lines);
                    self.ok(&tag, None, "LIST completed", out);
                }
            }
            (Job::Status { tag, name, items }, Answer::Status(r)) => match r {
                Ok(status) => {
                    status_line(&mut out.bytes, &name, &items, &status, self.utf8);
                    self.ok(&tag, None, "STATUS completed", out);
                }
                Err(e) => self.store_error(&tag, e, out),
            },
            (
                Job::Select {
                    tag,
                    read_only,
                    resync,
                },
                Answer::Select(r),
            ) => match r {
                Ok(snapshot) => {
                    let b = &mut out.bytes;
                    reply::untagged(b, &format!("{} EXISTS", snapshot.messages.len()));
                    reply::end(b);
                    if !self.rev2 {
                        reply::untagged(b, "0 RECENT");
                        reply::end(b);
                    }
                    reply::untagged(b, "FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)");
                    reply::end(b);
                    let perm = if read_only {
                        "PERMANENTFLAGS ()"
                    } else {
                        "PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)"
                    };
                    reply::status(b, None, Status::Ok, Some(perm), "Limited");
                    if !self.rev2 {
                        let unseen = snapshot
                            .messages
                            .iter()
                            .position(|m| m.flags.system & system_flag::SEEN == 0);
                        if let Some(i) = unseen {
                            let code = format!("UNSEEN {}", i + 1);
                            reply::status(b, None, Status::Ok, Some(&code), "First unseen");
                        }
                    }
                    let code = format!("UIDVALIDITY {}", snapshot.uidvalidity);
                    reply::status(b, None, Status::Ok, Some(&code), "UIDs valid");
                    let code = format!("UIDNEXT {}", snapshot.uidnext);
                    reply::status(b, None, Status::Ok, Some(&code), "Predicted next UID");
                    let code = format!("HIGHESTMODSEQ {}", wire_modseq(snapshot.highest_modseq));
                    reply::status(b, None, Status::Ok, Some(&code), "Highest");
                    let folder = snapshot.folder;
                    let uidvalidity = snapshot.uidvalidity;
                    self.state = State::Selected(Box::new(Selected {
                        folder: snapshot.folder,
                        read_only,
                        first_new_uid: snapshot.uidnext,
                        uidnext: snapshot.uidnext,
                        highest_modseq: snapshot.highest_modseq,
                        messages: snapshot.messages,
                    }));
                    match resync {
                        // RFC 7162 §3.2.5: a stale UIDVALIDITY makes it a plain SELECT.
                        Some(resync) if resync.uidvalidity == uidvalidity => {
                            let request = Request::ExpungedSince {
                                folder,
                                modseq: resync.modseq,
                            };
                            let job = Job::ResyncVanished {
                                tag,
                                read_only,
                                resync,
                            };
                            self.request(request, job, out);
                        }
                        _ => self.select_done(&tag, read_only, out),
                    }
                }
                Err(e) => self.store_error(&tag, e, out),
            },
            (
                Job::ResyncVanished {
                    tag,
                    read_only,
                    resync,
                },
                Answer::ExpungedSince(r),
            ) => {
                // Not knowing is answered as "maybe": over-reporting is allowed.
                if r.unwrap_or(true) {
                    let ranges = self.known_ranges(resync.known.as_ref());
                    self.vanished_earlier(&ranges, out);
                }
                self.changed_since(resync.modseq, out);
                self.select_done(&tag, read_only, out);
            }
            (Job::FetchVanished(job, ranges), Answer::ExpungedSince(r)) => {
                if r.unwrap_or(true) {
                    self.vanished_earlier(&ranges, out);
                }
                self.fetch_step(job, out);
            }
            (Job::QuotaRootOf { tag, mailbox }, Answer::Status(r)) => match r {
                Ok(_) => {
                    let root_of = Some(mailbox);
                    self.request(Request::Quota, Job::Quota { tag, root_of }, out);
                }
                Err(e) => self.store_error(&tag, e, out),
            },
            (Job::Quota { tag, root_of }, Answer::Quota(r)) => match r {
                Ok(quota) => self.quota_answer(&tag, root_of, quota, out),
                Err(e) => self.store_error(&tag, e, out),
            },
            (Job::Done { tag, what }, Answer::Done(r)) => match r {
                Ok(()) => self.ok(&tag, None, what, out),
                Err(e) => self.store_error(&tag, e, out),
            },
            (Job::Poll(after), Answer::Changes(r)) => {
                // A failed poll only delays the updates to the next one.
                if let Ok(changes) = &r {
                    self.apply_changes(changes, out);
                }
                self.after_poll(after, out);
            }
            (Job::Fetch(job), Answer::Body(r)) => self.fetch_body(job, r, out),
            (Job::Fetch(job), Answer::Summary(r)) => self.fetch_summary(job, r, out),
            (Job::Search(job), Answer::Body(r)) => self.search_body(job, r, out),
            (
                Job::Store {
                    tag,
                    uid,
                    silent,
                    what,
                },
                Answer::StoreFlags(r),
            ) => match r {
                Ok(stored) => self.store_answer(&tag, uid, silent, what, stored, out),
                Err(e) => self.store_error(&tag, e, out),
            },
            (Job::Copy { tag, remove, uid }, Answer::Copy(r)) => match r {
                Ok(copied) => self.copy_answer(&tag, remove, uid, copied, out),
                Err(StoreError::NonExistent) => {
                    self.no(&tag, Some("TRYCREATE"), "No such mailbox", out)
                }
                Err(e) => self.store_error(&tag, e, out),
            },
            (Job::Expunge { tag, close, what }, Answer::Expunge(r)) => match r {
                Ok(uids) => {
                    if close {
                        self.state = State::Authenticated;
                    } else {
                        self.expunged(&uids, out);
                    }
                    self.ok(&tag, None, what, out);
                }
                Err(e) => self.store_error(&tag, e, out),
            },
            (Job::Append { tag }, Answer::Append(r)) => match r {
                Ok(c) => {
                    let uid = c.destination.first().copied().unwrap_or(0);
                    let code = format!("APPENDUID {} {}", c.uidvalidity, uid);
                    // Whatever folder it went to: a poll of an unchanged folder costs one
                    // lookup, and one the message went into announces it at once.
                    if self.selected().is_some() {
                        let after = AfterPoll::Complete {
                            tag,
                            code: Some(code),
                            what: "APPEND completed",
                        };
                        self.poll_for(after, out);
                    } else {
                        self.ok(&tag, Some(&code), "APPEND completed", out);
                    }
                }
                Err(StoreError::NonExistent) => {
                    self.no(&tag, Some("TRYCREATE"), "No such mailbox", out)
                }
                Err(e) => self.store_error(&tag, e, out),
            },
            (job, _) => {
                self.wait = Wait::Store(job);
                return Err(Unexpected);
            }
        }
        Ok(())
    }

    fn store_error(&mut self, tag: &str, e: StoreError, out: &mut Outbox) {
        let code = match e {
            StoreError::NonExistent => "NONEXISTENT",
            StoreError::AlreadyExists => "ALREADYEXISTS",
            StoreError::Cannot => "CANNOT",
            StoreError::OverQuota => "OVERQUOTA",
            StoreError::Unavailable => "UNAVAILABLE",
        };
        let text = e.to_string();
        self.no(tag, Some(code), &text, out);
    }

    fn list_command(&mut self, tag: &str, command: Command<'_>, ret: ListReturn, out: &mut Outbox) {
        if matches!(self.state, State::NotAuthenticated) {
            return self.bad(Some(tag), "Log in first", out);
        }
        let (reference, wildcard, lsub) = match command.body {
            CommandBody::List {
                reference,
                mailbox_wildcard,
            } => (reference, mailbox_wildcard, false),
            CommandBody::Lsub {
                reference,
                mailbox_wildcard,
            } => (reference, mailbox_wildcard, true),
            _ => return self.bad(Some(tag), "RETURN only with LIST", out),
        };
        let Some(reference) = mailbox_name(&reference, self.utf8) else {
            return self.no(tag, Some("CANNOT"), "Invalid reference", out);
        };
        let first: &[u8] = match &wildcard {
            ListMailbox::Token(t) => t.as_ref(),
            ListMailbox::String(s) => s.as_ref(),
        };
        let utf8 = self.utf8;
        let decode = |pattern: &[u8]| match std::str::from_utf8(pattern) {
            Ok(p) if !utf8 && p.is_ascii() => {
                utf7::decode(p.as_bytes()).unwrap_or_else(|| p.to_string())
            }
            _ => String::from_utf8_lossy(pattern).into_owned(),
        };
        let pattern = decode(first);
        if pattern.is_empty() && !lsub && ret.more_patterns.is_empty() {
            let b = &mut out.bytes;
            reply::untagged(b, "LIST (\\Noselect) \"/\" \"\"");
            reply::end(b);
            return self.ok(tag, None, "LIST completed", out);
        }
        let patterns = std::iter::once(pattern)
            .chain(ret.more_patterns.iter().map(|p| decode(p)))
            .map(|p| format!("{reference}{p}"))
            .collect();
        let job = Job::List {
            tag: tag.to_string(),
            lsub,
            patterns,
            ret,
        };
        self.request(Request::List, job, out);
    }

    fn list_answer(
        &mut self,
        tag: String,
        lsub: bool,
        patterns: &[String],
        ret: ListReturn,
        folders: &[FolderInfo],
        out: &mut Outbox,
    ) {
        let mut lines = Vec::new();
        let mut status_names = Vec::new();
        // Levels that are no folder but have folders below them (a parent deleted, or never
        // created) are listed as not selectable (RFC 3501 §6.3.8, RFC 9051 §6.3.9).
        let existing: std::collections::BTreeSet<&str> =
            folders.iter().map(|f| f.name.as_str()).collect();
        let mut levels: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
        for f in folders {
            let mut at = 0;
            while let Some(i) = f.name[at..].find(DELIMITER) {
                let level = &f.name[..at + i];
                if !existing.contains(level) {
                    levels.insert(level.to_string());
                }
                at += i + 1;
            }
        }
        let levels: Vec<FolderInfo> = levels
            .into_iter()
            .map(|name| FolderInfo {
                name,
                special_use: None,
                subscribed: false,
            })
            .collect();
        for f in folders.iter().chain(levels.iter()) {
            let matches = patterns.iter().any(|p| list_match(p, &f.name));
            if !matches || (lsub && !f.subscribed) {
                continue;
            }
            let prefix = format!("{}{DELIMITER}", f.name);
            let selected = !ret.only_subscribed || f.subscribed;
            // RECURSIVEMATCH: a parent not selected itself, for its subscribed descendants.
            let childinfo = ret.recursive
                && !selected
                && folders
                    .iter()
                    .any(|c| c.subscribed && c.name.starts_with(&prefix));
            if !selected && !childinfo {
                continue;
            }
            let noselect = !existing.contains(f.name.as_str());
            let children = folders.iter().any(|c| c.name.starts_with(&prefix));
            let mut attrs: Vec<&str> = Vec::new();
            if noselect {
                attrs.push("\\Noselect");
            }
            if !lsub {
                attrs.push(if children {
                    "\\HasChildren"
                } else {
                    "\\HasNoChildren"
                });
                if ret.subscribed && f.subscribed {
                    attrs.push("\\Subscribed");
                }
                if let Some(u) = f.special_use {
                    attrs.push(match u {
                        SpecialUse::Sent => "\\Sent",
                        SpecialUse::Drafts => "\\Drafts",
                        SpecialUse::Trash => "\\Trash",
                        SpecialUse::Junk => "\\Junk",
                        SpecialUse::Archive => "\\Archive",
                    });
                }
            }
            let kind = if lsub { "LSUB" } else { "LIST" };
            reply::untagged(&mut lines, &format!("{kind} ({}) \"/\" ", attrs.join(" ")));
            reply::astring(&mut lines, wire_name(&f.name, self.utf8).as_bytes());
            if childinfo {
                reply::raw(&mut lines, " (\"CHILDINFO\" (\"SUBSCRIBED\"))");
            }
            reply::end(&mut lines);
            status_names.push(f.name.clone());
        }
        let what = if lsub {
            "LSUB completed"
        } else {
            "LIST completed"
        };
        match ret.status {
            Some(items) if !status_names.is_empty() => {
                status_names.reverse();
                if let Some(name) = status_names.last().cloned() {
                    self.request(
                        Request::Status(name),
                        Job::ListStatus {
                            tag,
                            lines,
                            names: status_names,
                            items,
                        },
                        out,
                    );
                }
            }
            _ => {
                out.bytes.extend_from_slice(&lines);
                self.ok(&tag, None, what, out);
            }
        }
    }

    /// Untagged EXPUNGE (or VANISHED), FETCH, EXISTS and RECENT for the difference between
    /// what the session shows and the folder now; then shows the folder as it is now.
    fn apply_changes(&mut self, changes: &Changes, out: &mut Outbox) {
        let (condstore, rev2, qresync) = (self.condstore, self.rev2, self.qresync);
        let State::Selected(s) = &mut self.state else {
            return;
        };
        s.uidnext = s.uidnext.max(changes.uidnext);
        s.highest_modseq = s.highest_modseq.max(changes.highest_modseq);
        let Some(now) = &changes.view else {
            return;
        };
        let old = &s.messages;
        // Both lists ascend by UID: one merge finds what went, what changed and what came.
        let mut gone = Vec::new();
        let mut kept = Vec::new(); // (number after the expunges, old index, new index)
        let mut came = 0usize;
        let (mut i, mut j) = (0, 0);
        while i < old.len() || j < now.len() {
            match (old.get(i), now.get(j)) {
                (Some(a), Some(b)) if a.uid == b.uid => {
                    kept.push((kept.len() + 1, i, j));
                    i += 1;
                    j += 1;
                }
                (Some(a), b) if b.is_none_or(|b| a.uid < b.uid) => {
                    gone.push(i);
                    i += 1;
                }
                _ => {
                    came += 1;
                    j += 1;
                }
            }
        }
        let b = &mut out.bytes;
        if qresync && !gone.is_empty() {
            // RFC 7162 §3.2.10: with QRESYNC, expunges are VANISHED UIDs.
            let uids: Vec<u32> = gone.iter().map(|&i| old[i].uid).collect();
            reply::untagged(b, "VANISHED ");
            reply::sequence_set(b, &uids);
            reply::end(b);
        } else {
            // Highest first keeps every announced number valid without shifting the rest.
            for &i in gone.iter().rev() {
                reply::untagged(b, &format!("{} EXPUNGE", i + 1));
                reply::end(b);
            }
        }
        for &(seq, i, j) in &kept {
            let (was, m) = (&old[i], &now[j]);
            if was.flags != m.flags || (condstore && was.modseq != m.modseq) {
                reply::untagged(b, &format!("{seq} FETCH (FLAGS "));
                reply::flags(b, &m.flags, !rev2 && m.uid >= s.first_new_uid);
                reply::raw(b, &format!(" UID {}", m.uid));
                if condstore {
                    reply::raw(b, &format!(" MODSEQ ({})", m.modseq));
                }
                reply::raw(b, ")");
                reply::end(b);
            }
        }
        if came > 0 {
            reply::untagged(b, &format!("{} EXISTS", now.len()));
            reply::end(b);
            if !rev2 {
                let old = now.partition_point(|m| m.uid < s.first_new_uid);
                reply::untagged(b, &format!("{} RECENT", now.len() - old));
                reply::end(b);
            }
        }
        s.messages = Arc::clone(now);
    }

    /// FETCH responses for every message changed after `modseq` (QRESYNC's SELECT, RFC
    /// 7162 §3.2.5), in UID order.
    fn changed_since(&mut self, modseq: u64, out: &mut Outbox) {
        let rev2 = self.rev2;
        let Some(s) = self.selected() else {
            return;
        };
        let b = &mut out.bytes;
        for (i, m) in s.messages.iter().enumerate() {
            if m.modseq <= modseq {
                continue;
            }
            reply::untagged(b, &format!("{} FETCH (FLAGS ", i + 1));
            reply::flags(b, &m.flags, !rev2 && m.uid >= s.first_new_uid);
            reply::raw(b, &format!(" UID {} MODSEQ ({}))", m.uid, m.modseq));
            reply::end(b);
        }
    }

    fn expunged(&mut self, uids: &[u32], out: &mut Outbox) {
        let qresync = self.qresync;
        let State::Selected(s) = &mut self.state else {
            return;
        };
        let mut uids = uids.to_vec();
        uids.sort_unstable();
        uids.dedup();
        let mut gone = Vec::new();
        // Highest first keeps every announced number valid without shifting the rest.
        for uid in uids.iter().rev() {
            if let Some(i) = s.seq_of(*uid) {
                Arc::make_mut(&mut s.messages).remove(i);
                if qresync {
                    gone.push(*uid);
                } else {
                    reply::untagged(&mut out.bytes, &format!("{} EXPUNGE", i + 1));
                    reply::end(&mut out.bytes);
                }
            }
        }
        // RFC 7162 §3.2.10: with QRESYNC, expunges are VANISHED UIDs.
        if !gone.is_empty() {
            gone.reverse();
            reply::untagged(&mut out.bytes, "VANISHED ");
            reply::sequence_set(&mut out.bytes, &gone);
            reply::end(&mut out.bytes);
        }
    }

    fn expunge(
        &mut self,
        tag: String,
        only: Option<Vec<u32>>,
        close: bool,
        what: &'static str,
        out: &mut Outbox,
    ) {
        let Some(s) = self.selected() else {
            return;
        };
        if s.read_only {
            return self.no(&tag, Some("READ-ONLY"), "Mailbox is read-only", out);
        }
        let uids: Vec<u32> = s
            .messages
            .iter()
            .filter(|m| m.flags.system & system_flag::DELETED != 0)
            .map(|m| m.uid)
            .filter(|u| only.as_ref().is_none_or(|o| o.contains(u)))
            .collect();
        if uids.is_empty() {
            if close {
                self.state = State::Authenticated;
            }
            return self.ok(&tag, None, what, out);
        }
        let folder = s.folder;
        self.request(
            Request::Expunge { folder, uids },
            Job::Expunge { tag, close, what },
            out,
        );
    }

    /// A sequence set as UIDs of the snapshot (`None`: a message number out of range).
    fn resolve(&self, set: &SequenceSet, uid: bool) -> Option<Vec<u32>> {
        let s = self.selected()?;
        let n = s.messages.len() as u32;
        let mut picked = vec![false; s.messages.len()];
        let last_uid = s.messages.last().map_or(0, |m| m.uid);
        for seq in set.0.as_ref() {
            let (lo, hi) = if uid {
                let (lo, hi) = search::bounds(seq, last_uid);
                // UIDs ascend: the messages in [lo, hi] are one run.
                let from = s.messages.partition_point(|m| m.uid < lo);
                let to = s.messages.partition_point(|m| m.uid <= hi);
                (from + 1, to)
            } else {
                let (lo, hi) = search::bounds(seq, n);
                if hi > n || lo == 0 {
                    return None;
                }
                (lo as usize, hi as usize)
            };
            if lo <= hi {
                for p in &mut picked[lo - 1..hi] {
                    *p = true;
                }
            }
        }
        Some(
            s.messages
                .iter()
                .zip(picked)
                .filter(|(_, p)| *p)
                .map(|(m, _)| m.uid)
                .collect(),
        )
    }

    fn store_answer(
        &mut self,
        tag: &str,
        uid: bool,
        silent: bool,
        what: &'static str,
        stored: super::store::Stored,
        out: &mut Outbox,
    ) {
        let condstore = self.condstore;
        let rev2 = self.rev2;
        let State::Selected(s) = &mut self.state else {
            return;
        };
        for (u, flags, modseq) in &stored.updated {
            let Some(i) = s.seq_of(*u) else {
                continue;
            };
            let m = &mut Arc::make_mut(&mut s.messages)[i];
            m.flags = flags.clone();
            m.modseq = *modseq;
            s.highest_modseq = s.highest_modseq.max(*modseq);
            if silent && !condstore {
                continue;
            }
            let b = &mut out.bytes;
            reply::untagged(b, &format!("{} FETCH (", i + 1));
            let mut sep = "";
            if !silent {
                reply::raw(b, "FLAGS ");
                reply::flags(b, flags, !rev2 && *u >= s.first_new_uid);
                sep = " ";
            }
            if uid {
                reply::raw(b, &format!("{sep}UID {u}"));
                sep = " ";
            }
            if condstore {
                reply::raw(b, &format!("{sep}MODSEQ ({modseq})"));
            }
            reply::raw(b, ")");
            reply::end(b);
        }
        if stored.modified.is_empty() {
            self.ok(tag, None, what, out);
        } else {
            let mut numbers: Vec<u32> = if uid {
                stored.modified.clone()
            } else {
                stored
                    .modified
                    .iter()
                    .filter_map(|u| s.seq_of(*u).map(|i| i as u32 + 1))
                    .collect()
            };
            numbers.sort_unstable();
            let mut code = b"MODIFIED ".to_vec();
            reply::sequence_set(&mut code, &numbers);
            let code = String::from_utf8_lossy(&code).into_owned();
            self.ok(tag, Some(&code), "Conditional STORE failed", out);
        }
    }

    fn copy_answer(
        &mut self,
        tag: &str,
        remove: bool,
        _uid: bool,
        copied: super::store::Copied,
        out: &mut Outbox,
    ) {
        let mut code = format!("COPYUID {} ", copied.uidvalidity).into_bytes();
        reply::sequence_set(&mut code, &copied.source);
        code.push(b' ');
        let mut dest = copied.destination.clone();
        // COPYUID pairs the two sets in order; source is ascending, so is the allocation.
        dest.sort_unstable();
        reply::sequence_set(&mut code, &dest);
        let code = String::from_utf8_lossy(&code).into_owned();
        if remove {
            reply::status(&mut out.bytes, None, Status::Ok, Some(&code), "Moved");
            self.expunged(&copied.source, out);
            self.ok(tag, None, "MOVE completed", out);
        } else {
            self.ok(tag, Some(&code), "COPY completed", out);
        }
    }

    fn fetch(
        &mut self,
        tag: String,
        set: &SequenceSet,
        names: MacroOrMessageDataItemNames<'_>,
        uid: bool,
        modifiers: &[FetchModifier],
        out: &mut Outbox,
    ) {
        let Some(mut uids) = self.resolve(set, uid) else {
            return self.bad(Some(&tag), "Invalid sequence set", out);
        };
        let names = match names {
            MacroOrMessageDataItemNames::Macro(m) => m
                .expand()
                .into_iter()
                .map(|n| n.into_static_name())
                .collect(),
            MacroOrMessageDataItemNames::MessageDataItemNames(n) => n,
        };
        let mut items = Vec::new();
        for name in &names {
            match fetch_item(name) {
                Some(item) => items.push(item),
                None => return self.bad(Some(&tag), "Unsupported FETCH item", out),
            }
        }
        let mut changed_since = None;
        let mut vanished = false;
        for m in modifiers {
            match m {
                FetchModifier::ChangedSince(n) => changed_since = Some(n.get()),
                FetchModifier::Vanished => vanished = true,
            }
        }
        // RFC 7162 §3.2.6: VANISHED only with UID FETCH, CHANGEDSINCE and QRESYNC enabled.
        if vanished && !(uid && self.qresync && changed_since.is_some()) {
            return self.bad(
                Some(&tag),
                "VANISHED needs QRESYNC, UID and CHANGEDSINCE",
                out,
            );
        }
        if changed_since.is_some() || items.iter().any(|i| matches!(i, Item::ModSeq)) {
            self.condstore = true;
        }
        if self.condstore
            && changed_since.is_some()
            && !items.iter().any(|i| matches!(i, Item::ModSeq))
        {
            items.push(Item::ModSeq);
        }
        if uid && !items.iter().any(|i| matches!(i, Item::Uid)) {
            items.insert(0, Item::Uid);
        }
        let Some(s) = self.selected() else {
            return;
        };
        if let Some(since) = changed_since {
            uids.retain(|u| s.seq_of(*u).is_some_and(|i| s.messages[i].modseq > since));
        }
        let needs_body = items.iter().any(|i| {
            matches!(
                i,
                Item::Rfc822
                    | Item::Rfc822Header
                    | Item::Rfc822Text
                    | Item::Body { .. }
                    | Item::Envelope
                    | Item::Structure(_)
                    | Item::Binary { .. }
                    | Item::BinarySize(_)
            )
        });
        let summary_first = needs_body
            && items.iter().all(|i| {
                matches!(
                    i,
                    Item::Uid
                        | Item::Flags
                        | Item::InternalDate
                        | Item::Size
                        | Item::ModSeq
                        | Item::Envelope
                        | Item::Structure(_)
                )
            });
        let sets_seen = !s.read_only
            && items.iter().any(|i| {
                matches!(
                    i,
                    Item::Rfc822
                        | Item::Rfc822Text
                        | Item::Body { peek: false, .. }
                        | Item::Binary { peek: false, .. }
                )
            });
        let mark_seen = if sets_seen {
            uids.iter()
                .copied()
                .filter(|u| {
                    s.seq_of(*u)
                        .is_some_and(|i| s.messages[i].flags.system & system_flag::SEEN == 0)
                })
                .collect()
        } else {
            Vec::new()
        };
        let job = Box::new(FetchJob {
            tag,
            uid,
            items,
            uids,
            next: 0,
            needs_body,
            summary_first,
            mark_seen,
            unknown_cte: false,
        });
        match changed_since {
            Some(modseq) if vanished => {
                let ranges = self.set_ranges(set);
                let folder = s.folder;
                let request = Request::ExpungedSince { folder, modseq };
                self.request(request, Job::FetchVanished(job, ranges), out);
            }
            _ => self.fetch_step(job, out),
        }
    }

    /// Answers as many messages as possible; asks for the next body when one is needed.
    fn fetch_step(&mut self, mut job: Box<FetchJob>, out: &mut Outbox) {
        while job.next < job.uids.len() {
            let uid = job.uids[job.next];
            if job.needs_body {
                let summary = job.summary_first;
                return self.fetch_request(job, summary, out);
            }
            if !self.fetch_line(&job, uid, None, None, out) {
                job.unknown_cte = true;
            }
            job.next += 1;
        }
        self.fetch_done(*job, out);
    }

    fn fetch_body(
        &mut self,
        mut job: Box<FetchJob>,
        body: Result<Body, StoreError>,
        out: &mut Outbox,
    ) {
        let uid = job.uids.get(job.next).copied().unwrap_or(0);
        match body {
            Ok(body) => {
                if !self.fetch_line(&job, uid, Some(&body), None, out) {
                    job.unknown_cte = true;
                }
                out.body_buffer = Some(body);
            }
            // Expunged by another session meanwhile: nothing to say about it (RFC 9051 §7.4.1).
            Err(StoreError::NonExistent) => {}
            Err(e) => return self.store_error(&job.tag, e, out),
        }
        self.fetch_next(job, out);
    }

    fn fetch_summary(
        &mut self,
        job: Box<FetchJob>,
        summary: Result<Option<Vec<u8>>, StoreError>,
        out: &mut Outbox,
    ) {
        let uid = job.uids.get(job.next).copied().unwrap_or(0);
        match summary {
            Ok(stored) => match stored.as_deref().and_then(structure::Summary::decode) {
                Some(summary) => {
                    // Only ENVELOPE / BODY / BODYSTRUCTURE: nothing that can fail.
                    self.fetch_line(&job, uid, None, Some(&summary), out);
                }
                // None kept, or of another rendering version: parse the body as ever.
                None => return self.fetch_request(job, false, out),
            },
            Err(StoreError::NonExistent) => {}
            Err(e) => return self.store_error(&job.tag, e, out),
        }
        self.fetch_next(job, out);
    }

    /// After one message: on to the next, or done.
    fn fetch_next(&mut self, mut job: Box<FetchJob>, out: &mut Outbox) {
        job.next += 1;
        if job.next < job.uids.len() {
            let summary = job.summary_first;
            self.fetch_request(job, summary, out);
        } else {
            self.fetch_done(*job, out);
        }
    }

    /// Asks for the summary (`summary`) or the body of the message `job` is at.
    fn fetch_request(&mut self, job: Box<FetchJob>, summary: bool, out: &mut Outbox) {
        let Some(folder) = self.selected().map(|s| s.folder) else {
            return;
        };
        let uid = job.uids[job.next];
        let request = if summary {
            Request::Summary { folder, uid }
        } else {
            Request::Body { folder, uid }
        };
        self.request(request, Job::Fetch(job), out);
    }

    fn fetch_done(&mut self, job: FetchJob, out: &mut Outbox) {
        let what = if job.uid {
            "UID FETCH completed"
        } else {
            "FETCH completed"
        };
        if job.unknown_cte {
            let text = "Cannot decode a part's transfer encoding";
            return self.no(&job.tag, Some("UNKNOWN-CTE"), text, out);
        }
        if job.mark_seen.is_empty() {
            return self.ok(&job.tag, None, what, out);
        }
        let Some(folder) = self.selected().map(|s| s.folder) else {
            return;
        };
        let flags = Flags {
            system: system_flag::SEEN,
            keywords: Vec::new(),
        };
        let request = Request::StoreFlags {
            folder,
            uids: job.mark_seen,
            op: FlagOp::Add,
            flags,
            unchanged_since: None,
        };
        let job = Job::Store {
            tag: job.tag,
            uid: job.uid,
            silent: false,
            what,
        };
        self.request(request, job, out);
    }

    /// `false`: a BINARY part could not be decoded; nothing was written.
    fn fetch_line(
        &mut self,
        job: &FetchJob,
        uid: u32,
        body: Option<&[u8]>,
        summary: Option<&structure::Summary>,
        out: &mut Outbox,
    ) -> bool {
        let Some(s) = self.selected() else {
            return true;
        };
        let Some(i) = s.seq_of(uid) else {
            return true;
        };
        let m = &s.messages[i];
        let whole = body.unwrap_or_default();
        let needs_tree = job.items.iter().any(|i| {
            matches!(
                i,
                Item::Envelope
                    | Item::Structure(_)
                    | Item::Binary { .. }
                    | Item::BinarySize(_)
                    | Item::Body {
                        section: BodySection::Part { .. },
                        ..
                    }
            )
        });
        let tree = if needs_tree && summary.is_none() {
            structure::parse(whole)
        } else {
            None
        };
        // Decoded parts first: one that cannot be decoded fails the FETCH before any output.
        let mut decoded = Vec::new();
        for item in &job.items {
            if let Item::Binary { path, .. } | Item::BinarySize(path) = item {
                match tree.as_ref().map(|t| binary_part(t, path)) {
                    Some(Ok(data)) => decoded.push(data),
                    Some(Err(BinaryError::UnknownCte)) => return false,
                    Some(Err(BinaryError::NoPart)) | None => decoded.push(None),
                }
            }
        }
        let mut decoded = decoded.into_iter();
        let b = &mut out.bytes;
        reply::untagged(b, "");
        reply::number(b, i as u64 + 1);
        reply::raw(b, " FETCH (");
        for (n, item) in job.items.iter().enumerate() {
            if n > 0 {
                reply::raw(b, " ");
            }
            match item {
                Item::Uid => {
                    reply::raw(b, "UID ");
                    reply::number(b, u64::from(m.uid));
                }
                Item::Flags => {
                    reply::raw(b, "FLAGS ");
                    reply::flags(b, &m.flags, self.is_recent(s, m.uid));
                }
                Item::InternalDate => {
                    reply::raw(b, "INTERNALDATE ");
                    reply::date_time(b, m.internal_date, m.zone_minutes);
                }
                Item::Size => {
                    reply::raw(b, "RFC822.SIZE ");
                    reply::number(b, u64::from(m.size));
                }
                Item::ModSeq => {
                    reply::raw(b, "MODSEQ (");
                    reply::number(b, m.modseq);
                    reply::raw(b, ")");
                }
                Item::Rfc822 => {
                    reply::raw(b, "RFC822 ");
                    reply::literal(b, body.unwrap_or_default());
                }
                Item::Rfc822Header => {
                    reply::raw(b, "RFC822.HEADER ");
                    reply::literal(b, split_header(body.unwrap_or_default()).0);
                }
                Item::Rfc822Text => {
                    reply::raw(b, "RFC822.TEXT ");
                    reply::literal(b, split_header(body.unwrap_or_default()).1);
                }
                Item::Envelope => {
                    reply::raw(b, "ENVELOPE ");
                    match summary {
                        Some(summary) => b.extend_from_slice(&summary.envelope),
                        None => structure::envelope(b, tree.as_ref(), 0),
                    }
                }
                Item::Structure(extended) => {
                    reply::raw(b, if *extended { "BODYSTRUCTURE " } else { "BODY " });
                    match (summary, extended) {
                        (Some(summary), true) => b.extend_from_slice(&summary.body_structure),
                        (Some(summary), false) => b.extend_from_slice(&summary.body),
                        (None, _) => structure::body_structure(b, tree.as_ref(), whole, *extended),
                    }
                }
                Item::Body {
                    section: BodySection::Part { path, piece },
                    partial,
                    ..
                } => {
                    let mut spec: Vec<String> = path.iter().map(u32::to_string).collect();
                    match piece {
                        PartPiece::Body => {}
                        PartPiece::Mime => spec.push("MIME".into()),
                        PartPiece::Header => spec.push("HEADER".into()),
                        PartPiece::Text => spec.push("TEXT".into()),
                    }
                    reply::raw(b, &format!("BODY[{}]", spec.join(".")));
                    let data = tree
                        .as_ref()
                        .and_then(|t| structure::section(t, path, *piece));
                    match data {
                        Some(data) => {
                            let data = match partial {
                                Some((start, len)) => {
                                    reply::raw(b, &format!("<{start}>"));
                                    let start = (*start as usize).min(data.len());
                                    let end = start.saturating_add(*len as usize).min(data.len());
                                    &data[start..end]
                                }
                                None => data,
                            };
                            reply::raw(b, " ");
                            reply::literal(b, data);
                        }
                        None => reply::raw(b, " NIL"),
                    }
                }
                Item::Body {
                    section,
                    partial,
                    binary,
                    ..
                } => {
                    let (header, text) = split_header(whole);
                    let (spec, data): (String, std::borrow::Cow<'_, [u8]>) = match section {
                        BodySection::Full => (String::new(), whole.into()),
                        BodySection::Header => ("HEADER".into(), header.into()),
                        BodySection::Text => ("TEXT".into(), text.into()),
                        BodySection::Fields { names, not } => {
                            let spec = format!(
                                "HEADER.FIELDS{} ({})",
                                if *not { ".NOT" } else { "" },
                                names.join(" ")
                            );
                            (spec, header_fields(header, names, *not).into())
                        }
                        BodySection::Part { .. } => (String::new(), whole.into()),
                    };
                    let prefix = if *binary { "BINARY" } else { "BODY" };
                    reply::raw(b, &format!("{prefix}[{spec}]"));
                    let data: &[u8] = match partial {
                        Some((start, len)) => {
                            reply::raw(b, &format!("<{start}>"));
                            let start = (*start as usize).min(data.len());
                            let end = start.saturating_add(*len as usize).min(data.len());
                            &data[start..end]
                        }
                        None => &data,
                    };
                    reply::raw(b, " ");
                    reply::literal(b, data);
                }
                Item::Binary { path, partial, .. } => {
                    let spec: Vec<String> = path.iter().map(u32::to_string).collect();
                    reply::raw(b, &format!("BINARY[{}]", spec.join(".")));
                    match decoded.next().flatten() {
                        Some(data) => {
                            let data: &[u8] = match partial {
                                Some((start, len)) => {
                                    reply::raw(b, &format!("<{start}>"));
                                    let start = (*start as usize).min(data.len());
                                    let end = start.saturating_add(*len as usize).min(data.len());
                                    &data[start..end]
                                }
                                None => &data,
                            };
                            reply::raw(b, " ");
                            // RFC 3516 §4.2: NUL octets need literal8.
                            if data.contains(&0) {
                                reply::raw(b, "~");
                            }
                            reply::literal(b, data);
                        }
                        None => reply::raw(b, " NIL"),
                    }
                }
                Item::BinarySize(path) => {
                    let spec: Vec<String> = path.iter().map(u32::to_string).collect();
                    let size = decoded.next().flatten().map_or(0, |d| d.len());
                    reply::raw(b, &format!("BINARY.SIZE[{}] {size}", spec.join(".")));
                }
            }
        }
        reply::raw(b, ")");
        reply::end(b);
        true
    }

    fn search(
        &mut self,
        tag: String,
        keys: Vec<SearchKey<'static>>,
        uid: bool,
        ret: Option<search::Return>,
        out: &mut Outbox,
    ) {
        if !keys.iter().all(search::supported) {
            return self.no(&tag, Some("CANNOT"), "Search key not supported", out);
        }
        let Some(s) = self.selected() else {
            return;
        };
        let mut candidates = Vec::new();
        for (i, m) in s.messages.iter().enumerate() {
            let ctx = self.search_ctx(s, i);
            match search::all(&keys, &ctx, None) {
                Some(false) => {}
                verdict => candidates.push((m.uid, verdict)),
            }
        }
        let job = SearchJob {
            tag,
            uid,
            ret,
            keys,
            candidates,
            next: 0,
        };
        self.search_step(Box::new(job), out);
    }

    fn search_ctx<'s>(&self, s: &'s Selected, i: usize) -> search::Ctx<'s> {
        let m = &s.messages[i];
        search::Ctx {
            seq: i as u32 + 1,
            meta: m,
            recent: self.is_recent(s, m.uid),
            last_seq: s.messages.len() as u32,
            last_uid: s.messages.last().map_or(0, |m| m.uid),
        }
    }

    /// Asks for the body of the next undecided message, or answers.
    fn search_step(&mut self, mut job: Box<SearchJob>, out: &mut Outbox) {
        while let Some(&(uid, verdict)) = job.candidates.get(job.next) {
            if verdict.is_none() {
                let Some(folder) = self.selected().map(|s| s.folder) else {
                    return;
                };
                self.request(Request::Body { folder, uid }, Job::Search(job), out);
                return;
            }
            job.next += 1;
        }
        self.search_done(*job, out);
    }

    fn search_body(
        &mut self,
        mut job: Box<SearchJob>,
        body: Result<Body, StoreError>,
        out: &mut Outbox,
    ) {
        let Some(&(uid, _)) = job.candidates.get(job.next) else {
            return self.search_done(*job, out);
        };
        let verdict = match body {
            Ok(body) => {
                let verdict = self.selected().and_then(|s| {
                    let i = s.seq_of(uid)?;
                    let content = search::Content::new(&body);
                    search::all(&job.keys, &self.search_ctx(s, i), Some(&content))
                });
                out.body_buffer = Some(body);
                verdict
            }
            // Expunged by another session meanwhile: it matches nothing.
            Err(StoreError::NonExistent) => Some(false),
            Err(e) => return self.store_error(&job.tag, e, out),
        };
        job.candidates[job.next].1 = Some(verdict == Some(true));
        job.next += 1;
        self.search_step(job, out);
    }

    fn search_done(&mut self, job: SearchJob, out: &mut Outbox) {
        let Some(s) = self.selected() else {
            return;
        };
        let mut hits = Vec::with_capacity(job.candidates.len());
        let mut max_modseq = 0;
        for (u, _) in job.candidates.iter().filter(|(_, v)| *v == Some(true)) {
            if let Some(i) = s.seq_of(*u) {
                hits.push(if job.uid { *u } else { i as u32 + 1 });
                max_modseq = max_modseq.max(s.messages[i].modseq);
            }
        }
        let uses_modseq = job.keys.iter().any(search::has_modseq);
        let b = &mut out.bytes;
        // A rev2 session always gets ESEARCH; a rev1 one only when it asked with RETURN.
        let ret = match (job.ret, self.rev2) {
            (Some(ret), _) => Some(ret),
            (None, true) => Some(search::Return {
                all: true,
                ..Default::default()
            }),
            (None, false) => None,
        };
        match ret {
            Some(ret) => {
                reply::untagged(b, "ESEARCH (TAG ");
                reply::string(b, job.tag.as_bytes());
                reply::raw(b, ")");
                if job.uid {
                    reply::raw(b, " UID");
                }
                if let (Some(first), Some(last)) = (hits.first(), hits.last()) {
                    if ret.min {
                        reply::raw(b, &format!(" MIN {first}"));
                    }
                    if ret.max {
                        reply::raw(b, &format!(" MAX {last}"));
                    }
                    if ret.all {
                        reply::raw(b, " ALL ");
                        reply::sequence_set(b, &hits);
                    }
                }
                if ret.count {
                    reply::raw(b, &format!(" COUNT {}", hits.len()));
                }
                if uses_modseq && !hits.is_empty() {
                    reply::raw(b, &format!(" MODSEQ {max_modseq}"));
                }
            }
            None => {
                reply::untagged(b, "SEARCH");
                for h in &hits {
                    reply::raw(b, &format!(" {h}"));
                }
                if uses_modseq && !hits.is_empty() {
                    reply::raw(b, &format!(" (MODSEQ {max_modseq})"));
                }
            }
        }
        reply::end(b);
        let what = if job.uid {
            "UID SEARCH completed"
        } else {
            "SEARCH completed"
        };
        self.ok(&job.tag, None, what, out);
    }

    /// `\Recent` to this rev1 session: the message appeared while the folder was selected.
    fn is_recent(&self, s: &Selected, uid: u32) -> bool {
        !self.rev2 && uid >= s.first_new_uid
    }

    fn select_done(&mut self, tag: &str, read_only: bool, out: &mut Outbox) {
        let (code, what) = if read_only {
            ("READ-ONLY", "EXAMINE completed")
        } else {
            ("READ-WRITE", "SELECT completed")
        };
        self.ok(tag, Some(code), what, out);
    }

    /// A UID set as sorted, merged ranges below the folder's UIDNEXT (`*` is the last UID
    /// there can be).
    fn set_ranges(&self, set: &SequenceSet) -> Vec<(u32, u32)> {
        let last = self.selected().map_or(0, |s| s.uidnext.saturating_sub(1));
        let mut ranges: Vec<(u32, u32)> = set
            .0
            .as_ref()
            .iter()
            .map(|seq| search::bounds(seq, last))
            .filter(|&(lo, _)| lo <= last)
            .map(|(lo, hi)| (lo, hi.min(last)))
            .collect();
        ranges.sort_unstable();
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(ranges.len());
        for (lo, hi) in ranges {
            match merged.last_mut() {
                Some(prev) if lo <= prev.1.saturating_add(1) => prev.1 = prev.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        merged
    }

    /// The client's known UIDs of SELECT (QRESYNC ...), by default every UID below UIDNEXT.
    fn known_ranges(&self, known: Option<&SequenceSet>) -> Vec<(u32, u32)> {
        match known {
            Some(set) => self.set_ranges(set),
            None => {
                let last = self.selected().map_or(0, |s| s.uidnext.saturating_sub(1));
                if last == 0 {
                    Vec::new()
                } else {
                    vec![(1, last)]
                }
            }
        }
    }

    /// `* VANISHED (EARLIER)` for the UIDs in `ranges` that this session does not see: the
    /// store may only know that something was expunged, not what, so this can name UIDs
    /// that never existed, which RFC 7162 §3.2.5.1 allows within the client's set.
    fn vanished_earlier(&self, ranges: &[(u32, u32)], out: &mut Outbox) {
        let Some(s) = self.selected() else {
            return;
        };
        let mut gaps: Vec<(u32, u32)> = Vec::new();
        for &(lo, hi) in ranges {
            let mut next = lo;
            let from = s.messages.partition_point(|m| m.uid < lo);
            for m in s.messages[from..].iter().take_while(|m| m.uid <= hi) {
                if m.uid > next {
                    gaps.push((next, m.uid - 1));
                }
                next = m.uid.saturating_add(1);
            }
            if next <= hi && next != 0 {
                gaps.push((next, hi));
            }
        }
        if gaps.is_empty() {
            return;
        }
        let b = &mut out.bytes;
        reply::untagged(b, "VANISHED (EARLIER) ");
        let text: Vec<String> = gaps
            .iter()
            .map(|&(lo, hi)| {
                if lo == hi {
                    lo.to_string()
                } else {
                    format!("{lo}:{hi}")
                }
            })
            .collect();
        reply::raw(b, &text.join(","));
        reply::end(b);
    }

    fn quota_answer(
        &mut self,
        tag: &str,
        root_of: Option<String>,
        quota: super::store::Quota,
        out: &mut Outbox,
    ) {
        let b = &mut out.bytes;
        let what = match &root_of {
            Some(mailbox) => {
                reply::untagged(b, "QUOTAROOT ");
                reply::astring(b, mailbox.as_bytes());
                // One root, "", for all of the user's folders; none without a limit.
                if quota.storage_limit_bytes.is_some() {
                    reply::raw(b, " \"\"");
                }
                reply::end(b);
                "GETQUOTAROOT completed"
            }
            None => "GETQUOTA completed",
        };
        match quota.storage_limit_bytes {
            Some(limit) => {
                // RFC 9208 §5.1: STORAGE counts units of 1024 octets.
                let used = quota.storage_used_bytes.div_ceil(1024);
                let limit = limit / 1024;
                reply::untagged(b, &format!("QUOTA \"\" (STORAGE {used} {limit})"));
                reply::end(b);
            }
            None if root_of.is_none() => {
                return self.no(tag, Some("NONEXISTENT"), "No such quota root", out);
            }
            None => {}
        }
        self.ok(tag, None, what, out);
    }
}

trait IntoStaticName {
    fn into_static_name(self) -> MessageDataItemName<'static>;
}

impl IntoStaticName for MessageDataItemName<'_> {
    fn into_static_name(self) -> MessageDataItemName<'static> {
        use imap_codec::imap_types::IntoStatic;
        self.into_static()
    }
}

fn fetch_item(name: &MessageDataItemName<'_>) -> Option<Item> {
    Some(match name {
        MessageDataItemName::Uid => Item::Uid,
        MessageDataItemName::Flags => Item::Flags,
        MessageDataItemName::InternalDate => Item::InternalDate,
        MessageDataItemName::Rfc822Size => Item::Size,
        MessageDataItemName::ModSeq => Item::ModSeq,
        MessageDataItemName::Rfc822 => Item::Rfc822,
        MessageDataItemName::Rfc822Header => Item::Rfc822Header,
        MessageDataItemName::Rfc822Text => Item::Rfc822Text,
        MessageDataItemName::Envelope => Item::Envelope,
        MessageDataItemName::Body => Item::Structure(false),
        MessageDataItemName::BodyStructure => Item::Structure(true),
        MessageDataItemName::BodyExt {
            section,
            partial,
            peek,
        } => Item::Body {
            section: body_section(section.as_ref())?,
            partial: partial.map(|(a, b)| (a, b.get())),
            peek: *peek,
            binary: false,
        },
        MessageDataItemName::Binary {
            section,
            partial,
            peek,
        } if section.is_empty() => Item::Body {
            section: BodySection::Full,
            partial: partial.map(|(a, b)| (a, b.get())),
            peek: *peek,
            binary: true,
        },
        MessageDataItemName::Binary {
            section,
            partial,
            peek,
        } => Item::Binary {
            path: section.iter().map(|n| n.get()).collect(),
            partial: partial.map(|(a, b)| (a, b.get())),
            peek: *peek,
        },
        MessageDataItemName::BinarySize { section } => {
            Item::BinarySize(section.iter().map(|n| n.get()).collect())
        }
    })
}

fn body_section(section: Option<&Section<'_>>) -> Option<BodySection> {
    let names = |list: &[AString<'_>]| -> Vec<String> {
        list.iter()
            .map(|n| String::from_utf8_lossy(n.as_ref()).to_ascii_uppercase())
            .collect()
    };
    Some(match section {
        None => BodySection::Full,
        Some(Section::Header(None)) => BodySection::Header,
        Some(Section::Text(None)) => BodySection::Text,
        Some(Section::HeaderFields(None, list)) => BodySection::Fields {
            names: names(list.as_ref()),
            not: false,
        },
        Some(Section::HeaderFieldsNot(None, list)) => BodySection::Fields {
            names: names(list.as_ref()),
            not: true,
        },
        Some(Section::Part(part)) => BodySection::Part {
            path: part.0.as_ref().iter().map(|n| n.get()).collect(),
            piece: PartPiece::Body,
        },
        Some(Section::Mime(part)) => BodySection::Part {
            path: part.0.as_ref().iter().map(|n| n.get()).collect(),
            piece: PartPiece::Mime,
        },
        Some(Section::Header(Some(part))) => BodySection::Part {
            path: part.0.as_ref().iter().map(|n| n.get()).collect(),
            piece: PartPiece::Header,
        },
        Some(Section::Text(Some(part))) => BodySection::Part {
            path: part.0.as_ref().iter().map(|n| n.get()).collect(),
            piece: PartPiece::Text,
        },
        // HEADER.FIELDS of an enclosed message.
        Some(_) => return None,
    })
}

/// The header (through its blank line) and the text of a message.
pub(super) fn split_header(message: &[u8]) -> (&[u8], &[u8]) {
    let mut at = 0;
    while at < message.len() {
        let end = memchr::memchr(b'\n', &message[at..]).map_or(message.len(), |i| at + i + 1);
        let line = &message[at..end];
        if line == b"\r\n" || line == b"\n" {
            return (&message[..end], &message[end..]);
        }
        at = end;
    }
    (message, &[])
}

/// The header fields named (or not named) in `names`, with the closing blank line.
pub(super) fn header_fields(header: &[u8], names: &[String], not: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut keep = false;
    let mut at = 0;
    while at < header.len() {
        let end = memchr::memchr(b'\n', &header[at..]).map_or(header.len(), |i| at + i + 1);
        let line = &header[at..end];
        at = end;
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        if !line.starts_with(b" ") && !line.starts_with(b"\t") {
            let name = line.split(|&b| b == b':').next().unwrap_or_default();
            let named = names
                .iter()
                .any(|n| n.as_bytes().eq_ignore_ascii_case(name.trim_ascii()));
            keep = named != not;
        }
        if keep {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

fn status_items(names: &[StatusDataItemName]) -> Vec<StatusItem> {
    names
        .iter()
        .map(|n| match n {
            StatusDataItemName::Messages => StatusItem::Messages,
            StatusDataItemName::Recent => StatusItem::Recent,
            StatusDataItemName::UidNext => StatusItem::UidNext,
            StatusDataItemName::UidValidity => StatusItem::UidValidity,
            StatusDataItemName::Unseen => StatusItem::Unseen,
            StatusDataItemName::Deleted => StatusItem::Deleted,
            StatusDataItemName::DeletedStorage => StatusItem::DeletedStorage,
            StatusDataItemName::Size => StatusItem::Size,
            StatusDataItemName::HighestModSeq => StatusItem::HighestModSeq,
        })
        .collect()
}

fn status_line(
    out: &mut Vec<u8>,
    name: &str,
    items: &[StatusItem],
    st: &super::store::FolderStatus,
    utf8: bool,
) {
    reply::untagged(out, "STATUS ");
    reply::astring(out, wire_name(name, utf8).as_bytes());
    let parts: Vec<String> = items
        .iter()
        .map(|i| match i {
            StatusItem::Messages => format!("MESSAGES {}", st.messages),
            StatusItem::Recent => "RECENT 0".to_string(),
            StatusItem::UidNext => format!("UIDNEXT {}", st.uidnext),
            StatusItem::UidValidity => format!("UIDVALIDITY {}", st.uidvalidity),
            StatusItem::Unseen => format!("UNSEEN {}", st.unseen),
            StatusItem::Deleted => format!("DELETED {}", st.deleted),
            StatusItem::DeletedStorage => {
                format!("DELETED-STORAGE {}", st.deleted_size.div_ceil(1024))
            }
            StatusItem::Size => format!("SIZE {}", st.size),
            StatusItem::HighestModSeq => {
                format!("HIGHESTMODSEQ {}", wire_modseq(st.highest_modseq))
            }
        })
        .collect();
    reply::raw(out, &format!(" ({})", parts.join(" ")));
    reply::end(out);
}

/// A mailbox name as the store spells it (`INBOX` case-folded), UTF-8 only.
/// `utf8`: the session enabled UTF8=ACCEPT or IMAP4rev2; otherwise names are modified
/// UTF-7, though 8-bit UTF-8 is accepted from clients that send it anyway.
fn mailbox_name(mailbox: &Mailbox<'_>, utf8: bool) -> Option<String> {
    match mailbox {
        Mailbox::Inbox => Some("INBOX".to_string()),
        Mailbox::Other(other) => {
            let raw = other.inner().as_ref();
            let name = match std::str::from_utf8(raw).ok()? {
                name if utf8 || !name.is_ascii() => name.to_string(),
                name => utf7::decode(name.as_bytes())?,
            };
            if name.chars().any(|c| c.is_control()) {
                return None;
            }
            Some(name)
        }
    }
}

/// A store name as this session writes it: modified UTF-7 unless UTF-8 is enabled.
fn wire_name(name: &str, utf8: bool) -> std::borrow::Cow<'_, str> {
    if utf8 || name.is_ascii() && !name.contains('&') {
        name.into()
    } else {
        utf7::encode(name).into()
    }
}

/// Whether `name` matches a LIST pattern (`*` anything, `%` anything but the delimiter).
fn list_match(pattern: &str, name: &str) -> bool {
    let p = pattern.as_bytes();
    let n = name.as_bytes();
    // Iterative wildcard matching with one backtrack point per wildcard kind.
    fn go(p: &[u8], n: &[u8]) -> bool {
        let (mut pi, mut ni) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while ni < n.len() {
            if pi < p.len() && p[pi] == b'*' {
                star = Some((pi, ni));
                pi += 1;
            } else if pi < p.len() && p[pi] == b'%' {
                // `%` may take zero or more non-delimiter octets.
                let mut k = ni;
                loop {
                    if go(&p[pi + 1..], &n[k..]) {
                        return true;
                    }
                    if k >= n.len() || n[k] == b'/' {
                        break;
                    }
                    k += 1;
                }
                return match star {
                    Some((sp, sn)) if sn < n.len() => go(&p[sp..], &n[sn + 1..]),
                    _ => false,
                };
            } else if pi < p.len() && p[pi] == n[ni] {
                pi += 1;
                ni += 1;
            } else if let Some((sp, sn)) = star {
                pi = sp + 1;
                ni = sn + 1;
                star = Some((sp, sn + 1));
            } else {
                return false;
            }
        }
        p[pi..].iter().all(|&c| c == b'*' || c == b'%')
    }
    if name.eq_ignore_ascii_case("INBOX") && pattern.eq_ignore_ascii_case("INBOX") {
        return true;
    }
    go(p, n)
}

/// A SASL response line without its line end; `None`: the client cancelled (`*`).
fn sasl_line(line: &[u8]) -> Option<&[u8]> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    (line != b"*").then_some(line)
}

fn flags_of(flags: &[Flag<'_>]) -> Option<Flags> {
    let mut out = Flags::default();
    for f in flags {
        match f {
            Flag::Seen => out.system |= system_flag::SEEN,
            Flag::Answered => out.system |= system_flag::ANSWERED,
            Flag::Flagged => out.system |= system_flag::FLAGGED,
            Flag::Deleted => out.system |= system_flag::DELETED,
            Flag::Draft => out.system |= system_flag::DRAFT,
            Flag::Keyword(k) => {
                if !out.has_keyword(k.inner()) {
                    out.keywords.push(k.inner().to_string());
                }
            }
            Flag::Extension(_) => return None,
        }
    }
    Some(out)
}

/// A folder's HIGHESTMODSEQ as sent: at least 1. The store counts a folder that never
/// changed as 0, but the SELECT response code is a mod-sequence-value (RFC 7162 §7: 1 or
/// more), and clients take 0 for "unknown" (interimap then resyncs the folder forever). STATUS
/// says the same so that both agree.
fn wire_modseq(highest: u64) -> u64 {
    highest.max(1)
}

/// Takes `RETURN (...)` off a LIST command (imap-codec does not parse RFC 5258 yet).
/// Returns the line without it, and `Some(options)` if there was one (`Some(None)`: invalid).
fn split_list_return(line: &[u8]) -> (std::borrow::Cow<'_, [u8]>, Option<Option<ListReturn>>) {
    let (line, ret) = split_list_options(line);
    let Some((rewritten, more)) = split_pattern_list(&line) else {
        return (line, ret);
    };
    let ret = match ret {
        None => Some(ListReturn {
            more_patterns: more,
            ..ListReturn::default()
        }),
        Some(r) => r.map(|r| ListReturn {
            more_patterns: more,
            ..r
        }),
    };
    (rewritten.into(), Some(ret))
}

/// `tag LIST ref (p1 p2 ...)` (RFC 5258 §3): the line with `p1` alone, and the other patterns
/// unquoted. `None`: not such a line (a literal reference is left to the parser).
fn split_pattern_list(line: &[u8]) -> Option<(Vec<u8>, Vec<Vec<u8>>)> {
    let mut words = line.splitn(3, |&b| b == b' ');
    let (_, name, rest) = (words.next()?, words.next()?, words.next()?);
    if !name.eq_ignore_ascii_case(b"LIST") {
        return None;
    }
    let head = &line[..line.len() - rest.len()];
    // One quoted string or atom from the start of `text`: (its content, its length as sent).
    let token = |text: &[u8]| -> Option<(Vec<u8>, usize)> {
        if text.first() == Some(&b'"') {
            let mut content = Vec::new();
            let mut i = 1;
            loop {
                match *text.get(i)? {
                    b'\\' => {
                        content.push(*text.get(i + 1)?);
                        i += 2;
                    }
                    b'"' => return Some((content, i + 1)),
                    b => {
                        content.push(b);
                        i += 1;
                    }
                }
            }
        }
        let n = text
            .iter()
            .position(|&b| matches!(b, b' ' | b'(' | b')' | b'{' | b'\r' | b'\n'))
            .unwrap_or(text.len());
        (n > 0).then(|| (text[..n].to_vec(), n))
    };
    let (_, reference_len) = token(rest)?;
    let list = rest[reference_len..].strip_prefix(b" (")?;
    let mut at = 0;
    let mut first = None;
    let mut more = Vec::new();
    loop {
        let (content, n) = token(&list[at..])?;
        match first {
            None => first = Some(&list[at..at + n]),
            Some(_) => more.push(content),
        }
        at += n;
        match list.get(at)? {
            b' ' => at += 1,
            b')' if &list[at + 1..] == b"\r\n" => break,
            _ => return None,
        }
    }
    let mut rewritten = head.to_vec();
    rewritten.extend_from_slice(&rest[..reference_len + 1]);
    rewritten.extend_from_slice(first?);
    rewritten.extend_from_slice(b"\r\n");
    Some((rewritten, more))
}

/// Selection options and RETURN options off a LIST line, as [`split_list_return`] answers.
fn split_list_options(line: &[u8]) -> (std::borrow::Cow<'_, [u8]>, Option<Option<ListReturn>>) {
    let mut words = line.splitn(3, |&b| b == b' ');
    let (_, Some(name)) = (words.next(), words.next()) else {
        return (line.into(), None);
    };
    if !name.eq_ignore_ascii_case(b"LIST") {
        return (line.into(), None);
    }
    let mut ret = ListReturn::default();
    let mut ok = true;
    // RFC 5258 selection options right after LIST: `LIST (SUBSCRIBED) "" *`.
    let head_len = line.len() - words.next().map_or(0, <[u8]>::len);
    let line: std::borrow::Cow<'_, [u8]> = match line.get(head_len) {
        Some(b'(') => {
            let Some(end) = line[head_len..].iter().position(|&b| b == b')') else {
                return (line.into(), Some(None));
            };
            let options = line[head_len + 1..head_len + end].to_ascii_uppercase();
            for word in options.split(|&b| b == b' ').filter(|w| !w.is_empty()) {
                match word {
                    b"SUBSCRIBED" => {
                        ret.only_subscribed = true;
                        ret.subscribed = true;
                    }
                    // No remote folders here (RFC 2193): nothing to add.
                    b"REMOTE" => {}
                    b"RECURSIVEMATCH" => ret.recursive = true,
                    _ => ok = false,
                }
            }
            // RECURSIVEMATCH alone is an error (RFC 5258 §3).
            ok &= !ret.recursive || ret.only_subscribed;
            let mut rest = line[..head_len].to_vec();
            let after = &line[head_len + end + 1..];
            rest.extend_from_slice(after.strip_prefix(b" ").unwrap_or(after));
            rest.into()
        }
        _ => line.into(),
    };
    let selection = ret.only_subscribed || !ok;
    let Some(body) = line.strip_suffix(b")\r\n") else {
        return (line, selection.then_some(ok.then_some(ret)));
    };
    let upper = body.to_ascii_uppercase();
    let Some(at) = memchr::memmem::rfind(&upper, b" RETURN (") else {
        return (line, selection.then_some(ok.then_some(ret)));
    };
    let options = &upper[at + 9..];
    let mut in_status = false;
    let words = options
        .split(|&b| b == b' ' || b == b'(' || b == b')')
        .filter(|w| !w.is_empty());
    for word in words {
        let item = match word {
            b"SUBSCRIBED" => {
                ret.subscribed = true;
                continue;
            }
            b"CHILDREN" | b"SPECIAL-USE" => continue,
            b"STATUS" => {
                in_status = true;
                ret.status.get_or_insert_with(Vec::new);
                continue;
            }
            b"MESSAGES" => StatusItem::Messages,
            b"RECENT" => StatusItem::Recent,
            b"UIDNEXT" => StatusItem::UidNext,
            b"UIDVALIDITY" => StatusItem::UidValidity,
            b"UNSEEN" => StatusItem::Unseen,
            b"DELETED" => StatusItem::Deleted,
            b"DELETED-STORAGE" => StatusItem::DeletedStorage,
            b"SIZE" => StatusItem::Size,
            b"HIGHESTMODSEQ" => StatusItem::HighestModSeq,
            _ => {
                ok = false;
                continue;
            }
        };
        match (&mut ret.status, in_status) {
            (Some(items), true) => items.push(item),
            _ => ok = false,
        }
    }
    let mut stripped = line[..at].to_vec();
    stripped.extend_from_slice(b"\r\n");
    (stripped.into(), Some(ok.then_some(ret)))
}

/// Rewrites RFC 6855 `APPEND ... UTF8 (~{n}\r\n<message>)` as the plain literal8 APPEND
/// imap-codec parses (it has no grammar for the UTF8 data item); `None`: not such a line.
fn split_append_utf8(line: &[u8]) -> Option<Vec<u8>> {
    let mut words = line.splitn(3, |&b| b == b' ');
    let (_, name) = (words.next(), words.next()?);
    if !name.eq_ignore_ascii_case(b"APPEND") {
        return None;
    }
    let upper_at = |i: usize, w: &[u8]| {
        line.get(i..i + w.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(w))
    };
    let at = (0..line.len()).find(|&i| upper_at(i, b" UTF8 (~{"))?;
    let digits_at = at + b" UTF8 (~{".len();
    let digits = line[digits_at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    let n: usize = std::str::from_utf8(&line[digits_at..digits_at + digits])
        .ok()?
        .parse()
        .ok()?;
    let mut i = digits_at + digits;
    if line.get(i) == Some(&b'+') {
        i += 1;
    }
    if !upper_at(i, b"}\r\n") {
        return None;
    }
    let data = line.get(i + 3..(i + 3).checked_add(n)?)?;
    if line.get(i + 3 + n..)? != b")\r\n" {
        return None;
    }
    let mut out = line[..at].to_vec();
    out.extend_from_slice(format!(" ~{{{n}}}\r\n").as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    Some(out)
}

enum BinaryError {
    NoPart,
    UnknownCte,
}

/// A part's body with its transfer encoding undone, for BINARY (`Ok(None)`: no such part).
fn binary_part(
    msg: &crate::mime::Message<'_>,
    path: &[u32],
) -> Result<Option<Vec<u8>>, BinaryError> {
    let Some(index) = structure::part_index(msg, path) else {
        return Err(BinaryError::NoPart);
    };
    let part = &msg.parts[index];
    if part.encoding == crate::mime::TransferEncoding::Other {
        return Err(BinaryError::UnknownCte);
    }
    match msg.decoded_lenient(index) {
        Ok(data) => Ok(Some(data.into_owned())),
        // A container: its octets as they are (they carry no transfer encoding of their own).
        Err(_) => Ok(Some(msg.body(index).to_vec())),
    }
}
