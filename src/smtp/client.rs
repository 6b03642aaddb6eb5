//! The outbound SMTP client: a sans-IO state machine that delivers messages to one next hop
//! over one connection (docs/ARCHITECTURE.md §10), the mirror of [`super::session`].
//!
//! **Role.** Turn "deliver this message to these recipients" into SMTP commands, and the next
//! hop's replies into one result per recipient: delivered, deferred (try again later) or
//! bounced (never). It does no I/O and reads no clock: the connection driver moves the bytes,
//! enforces the timeouts the client names, and records the results.
//!
//! **Driver contract.**
//! 1. Connect, then [`Client::new`]. Ask [`Client::next`] what to do, and repeat after every
//!    call: [`Next::Read`] — read with that timeout and pass everything buffered to
//!    [`Client::handle_input`], which returns how many octets it consumed (drop those, keep
//!    the rest); [`Next::Send`] — the connection is idle: hand over a message with
//!    [`Client::send`] or end with [`Client::quit`]; [`Next::Done`] — close the socket.
//! 2. After each call write [`Output::bytes`] completely (each write bounded by
//!    [`Timeouts::data_block`], RFC 5321 §4.5.3.2.5), then act on [`Output::events`]:
//!    [`ClientEvent::TransactionDone`] carries one [`RecipientResult`] per recipient of the
//!    message handed to `send`, in the order given; [`ClientEvent::Closed`] comes exactly
//!    once, last. [`ClientEvent::Ready`] repeats what `next()` says (idle again).
//! 3. If a read times out call [`Client::timed_out`]; if the peer closes or a read or write
//!    fails call [`Client::connection_lost`]. Both defer everything in flight.
//! 4. [`Next::StartTls`] (announced by [`ClientEvent::StartTls`]): the hop said 220 to
//!    STARTTLS. Drop every byte buffered and not consumed (it came before TLS and must not
//!    be read as a protected reply: RFC 3207 §6, the "response injection" of NO STARTTLS,
//!    USENIX Security 2021), run the TLS handshake on the connection, then call
//!    [`Client::tls_established`] (EHLO goes again) or [`Client::tls_failed`].
//!
//! **STARTTLS** (RFC 3207), per [`StartTlsPolicy`] given to [`Client::with_starttls`]:
//! after a 2xx EHLO that announces STARTTLS, the client sends it (never again once TLS is
//! up). On 220 the capabilities of the first EHLO are forgotten and EHLO is sent again over
//! TLS (§4.2). A 4xx/5xx to STARTTLS: `IfOffered` goes on in plaintext with the first EHLO's
//! capabilities (§4.1 lets the client continue; the hop's state is unchanged, so no
//! reconnect is needed); `Required` sends QUIT and fails the connection with a local
//! 421 4.7.4, as it does when the hop does not offer STARTTLS at all (also after a HELO
//! fallback). A failed handshake ([`Client::tls_failed`]) fails the connection with
//! 421 4.7.5. These failures are local 4xx so the driver defers, never bounces: a 5xx from
//! the hop to STARTTLS says nothing about the recipients. Whether a failed opportunistic
//! handshake is retried in plaintext is the driver's decision (a new connection with a
//! new client).
//!
//! **Mail loops.** With [`ClientConfig::own_hostname`] set, a greeting or an EHLO/HELO reply
//! whose first word is our own host name means the next hop is this relay reached another
//! way (NAT, a port forward, a second address): the client sends QUIT and fails the
//! connection with a local `554 5.4.6` ("host X greeted me with my own hostname Y", as
//! Postfix says), which the driver bounces rather than retrying a loop.
//!
//! **Consumption.** Only whole reply lines are consumed; a partial line stays with the driver,
//! which therefore buffers at most [`ReplyLimits::line_max`] octets before the client either
//! progresses or fails. While idle ([`Next::Send`]) nothing is consumed: bytes that arrive
//! then are read as the reply to the next command (an unsolicited 421 thus defers the next
//! transaction, which is what it means). After the close everything is consumed and dropped.
//!
//! **Delivery semantics (at least once).** A recipient is `Delivered` only on a 2xx reply to
//! the end of data. If the connection breaks or times out after the data was sent and before
//! that reply, the recipients are `Deferred` although the next hop may have taken the
//! message: a later retry may deliver it twice (RFC 5321 §4.1.1.4 and RFC 1047 accept this;
//! the alternative is losing mail).
//!
//! **Per transaction** (RFC 5321 §3.3, §4.1.1; RFC 2920; RFC 1870; RFC 6152; RFC 6531;
//! RFC 3461): checks before sending (SMTPUTF8 for non-ASCII addresses → 553 5.6.7; 8-bit data
//! for a hop without 8BITMIME → converted with [`crate::mime::downgrade()`], or 554 5.6.3 if
//! that fails; a message above the hop's SIZE → 552 5.3.4, all without sending), then MAIL,
//! RCPT…, DATA — in one write with PIPELINING, else one command per reply. MAIL parameters
//! only as the hop announced them (SIZE, BODY=8BITMIME, SMTPUTF8, and the DSN parameters
//! RET/ENVID/NOTIFY/ORCPT only with DSN, RFC 3461 §4). Recipient replies: 2xx accepted, 4xx
//! deferred, 5xx bounced; a 4xx/5xx to MAIL or DATA, and the reply to the end of data,
//! apply to every recipient they concern. More recipients than
//! `max_recipients_per_transaction`, and recipients answered 452 4.5.3 "too many recipients"
//! in a transaction that delivered to others (RFC 5321 §4.5.3.1.10), go in further
//! transactions on the same connection, each sending the message again. RSET precedes a transaction when the one
//! before did not end with a reply to its data. A 421 at any point ends the connection and
//! defers what is pending (RFC 5321 §3.8).
//!
//! **Exposure.** Replies come from a next hop that may be hostile. They are read by the
//! bounded [`ReplyParser`] (line length, lines per reply); a malformed reply, or one whose
//! code makes no sense where it came, ends the connection and defers what is pending.
//! Nothing here panics on any input (see the `fuzz` function and its target).
//!
//! **Not here** (deviations): the TLS handshake itself and certificate checks (the driver's,
//! `net::tls` and `tls::client`); BDAT/CHUNKING (RFC 3030) is not used, so a BINARYMIME message whose body
//! has bare CR or LF cannot be sent and bounces with 5.6.3; AUTH is not offered.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt;
use std::mem;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::address::{ForwardPath, Mailbox, ReversePath};
use super::command::{Command, MailKind};
use super::params::RcptParams;
use super::reply::{Reply, ReplyCode, ReplyLimits, ReplyParser};
use crate::envelope::{BodyType, MailParams, Recipient};
use crate::mime;

#[cfg(any(test, feature = "fuzzing"))]
mod harness;
#[cfg(any(test, feature = "fuzzing"))]
pub use harness::fuzz;

/// Octets of a next hop's reply text kept in a result (for the log and the DSN). A hop can
/// send `line_max * lines_max` octets in one reply, and a reply to MAIL or DATA is kept once
/// per recipient, so it is cut here.
pub const REPLY_TEXT_KEPT: usize = 1024;

/// How long to wait for each reply (RFC 5321 §4.5.3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// The 220 greeting: 5 minutes (§4.5.3.2.1).
    pub greeting: Duration,
    /// The reply to EHLO or HELO: 5 minutes (as MAIL; the RFC names none).
    pub ehlo: Duration,
    /// The reply to MAIL: 5 minutes (§4.5.3.2.2).
    pub mail: Duration,
    /// Each reply to RCPT: 5 minutes (§4.5.3.2.3).
    pub rcpt: Duration,
    /// The 354 to DATA: 2 minutes (§4.5.3.2.4).
    pub data_init: Duration,
    /// Each write of message data: 3 minutes (§4.5.3.2.5). The driver applies it to every
    /// write; it is never returned by [`Client::next`].
    pub data_block: Duration,
    /// The reply to the end of data: 10 minutes (§4.5.3.2.6).
    pub data_end: Duration,
    /// The reply to RSET: 20 seconds (Postfix `smtp_rset_timeout`; the RFC names none).
    pub rset: Duration,
    /// The reply to QUIT: 5 minutes (Postfix `smtp_quit_timeout`).
    pub quit: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        let minutes = |m: u64| Duration::from_secs(60 * m);
        Self {
            greeting: minutes(5),
            ehlo: minutes(5),
            mail: minutes(5),
            rcpt: minutes(5),
            data_init: minutes(2),
            data_block: minutes(3),
            data_end: minutes(10),
            rset: Duration::from_secs(20),
            quit: minutes(5),
        }
    }
}

/// What one connection needs to know; shared by the connections of a core.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// Our name in EHLO/HELO (RFC 5321 §4.1.1.1: a domain or an address literal).
    pub helo_name: String,
    pub timeouts: Timeouts,
    /// RCPTs per SMTP transaction; more go in further transactions (RFC 5321 §4.5.3.1.8
    /// obliges servers to take 100).
    pub max_recipients_per_transaction: usize,
    /// Bounds on what the next hop may send as one reply.
    pub reply_limits: ReplyLimits,
    /// Bounds on the MIME parse of an 8-bit message converted for a 7-bit hop.
    pub mime_limits: mime::Limits,
    /// Our own host name (`server.hostname`): a next hop whose greeting or EHLO/HELO reply
    /// names it is this relay reached another way, a mail loop (Postfix's check). `None`:
    /// no check.
    pub own_hostname: Option<String>,
    /// Puts our DKIM signatures back on a message this client down-converted (8BITMIME):
    /// the conversion changed what they signed. Filled by the delivery side.
    pub resign: Resign,
}

/// `fn(original, converted) -> Some(converted message, re-signed)`, or `None` when the
/// original carried no signature of ours. A seam: the client knows nothing of keys.
#[derive(Clone, Default)]
pub struct Resign(pub Option<Arc<ResignFn>>);

pub type ResignFn = dyn Fn(&[u8], &[u8]) -> Option<Vec<u8>> + Send + Sync;

impl std::fmt::Debug for Resign {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Resign(set)"
        } else {
            "Resign(none)"
        })
    }
}

impl PartialEq for Resign {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for Resign {}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            helo_name: String::from("localhost"),
            timeouts: Timeouts::default(),
            max_recipients_per_transaction: 100,
            reply_limits: ReplyLimits::default(),
            mime_limits: mime::Limits::default(),
            own_hostname: None,
            resign: Resign::default(),
        }
    }
}

/// A configuration the client cannot honour.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientConfigError {
    #[error("the HELO name must be a non-empty word of printable ASCII")]
    BadHeloName,
    #[error("max_recipients_per_transaction must be at least 1")]
    NoRecipients,
    #[error("reply limits must allow a line of at least 512 octets and at least one line (RFC 5321 §4.5.3.1.5)")]
    ReplyLimits,
}

impl ClientConfig {
    /// The relations the config loader must check before clients start.
    pub fn check(&self) -> Result<(), ClientConfigError> {
        let name_ok =
            !self.helo_name.is_empty() && self.helo_name.bytes().all(|b| b.is_ascii_graphic());
        if !name_ok {
            return Err(ClientConfigError::BadHeloName);
        }
        if self.max_recipients_per_transaction == 0 {
            return Err(ClientConfigError::NoRecipients);
        }
        if self.reply_limits.line_max < 512 || self.reply_limits.lines_max == 0 {
            return Err(ClientConfigError::ReplyLimits);
        }
        Ok(())
    }
}

/// What the next hop announced in its EHLO reply (all false after a HELO fallback).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// EHLO succeeded: ESMTP parameters may be used at all.
    pub esmtp: bool,
    /// RFC 2920.
    pub pipelining: bool,
    /// RFC 1870: `Some(0)` announced without a fixed maximum, `Some(n)` at most n octets.
    pub size: Option<u64>,
    /// RFC 6152.
    pub eight_bit_mime: bool,
    /// RFC 6531.
    pub smtputf8: bool,
    /// RFC 3461.
    pub dsn: bool,
    /// RFC 3030 (recorded; the client sends DATA).
    pub chunking: bool,
    /// RFC 3030 (recorded).
    pub binary_mime: bool,
    /// RFC 2034.
    pub enhanced_status_codes: bool,
    /// RFC 3207.
    pub starttls: bool,
}

impl Capabilities {
    /// Reads the extension lines of a 2xx EHLO reply (every line after the first).
    /// Keywords are case-insensitive; unknown ones are ignored.
    pub fn from_ehlo(reply: &Reply) -> Self {
        let mut caps = Capabilities {
            esmtp: true,
            ..Capabilities::default()
        };
        for line in reply.text().split('\n').skip(1) {
            let mut words = line.split(' ').filter(|w| !w.is_empty());
            let Some(keyword) = words.next() else {
                continue;
            };
            let is = |name: &str| keyword.eq_ignore_ascii_case(name);
            if is("PIPELINING") {
                caps.pipelining = true;
            } else if is("SIZE") {
                // RFC 1870 §4: an absent or zero value means no fixed maximum; a value we
                // cannot read is treated the same (the hop will still say 552 if it must).
                let max = words
                    .next()
                    .filter(|v| v.bytes().all(|b| b.is_ascii_digit()))
                    .map(|v| v.parse::<u64>().unwrap_or(u64::MAX))
                    .unwrap_or(0);
                caps.size = Some(max);
            } else if is("8BITMIME") {
                caps.eight_bit_mime = true;
            } else if is("SMTPUTF8") {
                caps.smtputf8 = true;
            } else if is("DSN") {
                caps.dsn = true;
            } else if is("CHUNKING") {
                caps.chunking = true;
            } else if is("BINARYMIME") {
                caps.binary_mime = true;
            } else if is("ENHANCEDSTATUSCODES") {
                caps.enhanced_status_codes = true;
            } else if is("STARTTLS") {
                caps.starttls = true;
            }
        }
        caps
    }
}

/// One message for this next hop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    /// The reverse-path mailbox without brackets; empty for the null sender `<>`.
    pub reverse_path: String,
    /// The MAIL parameters as received. SIZE is recomputed; the rest is passed on only as
    /// far as the hop announced support.
    pub params: MailParams,
    /// The recipients for this hop (NOTIFY/ORCPT passed on only with DSN).
    pub recipients: Vec<Recipient>,
    /// The stored message: CRLF line ends, ending in CRLF, not dot-stuffed.
    pub body: Bytes,
    /// The body has octets above 127 (`mime::has_8bit`). With `params.body` it decides
    /// BODY=8BITMIME; for a hop without 8BITMIME the body is checked again regardless.
    pub eight_bit: bool,
}

/// Where in the conversation something happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    Greeting,
    Ehlo,
    Helo,
    /// The reply to STARTTLS and the TLS handshake after it.
    StartTls,
    /// Checks before any command of the transaction was sent.
    Prepare,
    Rset,
    Mail,
    Rcpt,
    Data,
    /// The message data and its final reply.
    EndOfData,
    Quit,
    /// Between transactions.
    Idle,
}

impl Stage {
    /// For reply texts and logs: "in reply to RCPT TO", as Postfix writes it.
    pub fn describe(self) -> &'static str {
        match self {
            Stage::Greeting => "while receiving the initial greeting",
            Stage::Ehlo => "in reply to EHLO",
            Stage::Helo => "in reply to HELO",
            Stage::StartTls => "in reply to STARTTLS",
            Stage::Prepare => "before sending the message",
            Stage::Rset => "in reply to RSET",
            Stage::Mail => "in reply to MAIL FROM",
            Stage::Rcpt => "in reply to RCPT TO",
            Stage::Data => "in reply to DATA",
            Stage::EndOfData => "in reply to the end of the message data",
            Stage::Quit => "in reply to QUIT",
            Stage::Idle => "while idle between transactions",
        }
    }
}

/// Why a recipient was not delivered, or why the connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Diagnostic {
    /// The next hop's own reply (for a DSN's Diagnostic-Code: smtp; ...).
    Remote { stage: Stage, reply: Reply },
    /// Decided here; the reply is synthesized (by `reply.rs`) and never went on the wire.
    Local { stage: Stage, reply: Reply },
}

impl Diagnostic {
    pub fn reply(&self) -> &Reply {
        match self {
            Diagnostic::Remote { reply, .. } | Diagnostic::Local { reply, .. } => reply,
        }
    }

    pub fn stage(&self) -> Stage {
        match self {
            Diagnostic::Remote { stage, .. } | Diagnostic::Local { stage, .. } => *stage,
        }
    }

    pub fn is_remote(&self) -> bool {
        matches!(self, Diagnostic::Remote { .. })
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Diagnostic::Remote { stage, reply } => {
                write!(f, "next hop said: {reply} ({})", stage.describe())
            }
            Diagnostic::Local { reply, .. } => write!(f, "{reply}"),
        }
    }
}

/// The fate of one recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecipientResult {
    /// The next hop took responsibility: its reply to the end of data.
    Delivered(Reply),
    /// Try again later.
    Deferred(Diagnostic),
    /// Permanent failure at this hop: a DSN is due (subject to NOTIFY).
    Bounced(Diagnostic),
}

/// The results of one [`Client::send`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransactionOutcome {
    /// One per recipient, in the order of [`Outgoing::recipients`].
    pub results: Vec<RecipientResult>,
    /// The body was converted to 7 bits for this hop (RFC 6152).
    pub downgraded: bool,
    /// SMTP transactions (MAIL commands) it took: 0 when nothing was sent.
    pub transactions: u32,
}

/// How the connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectionOutcome {
    /// QUIT (whether or not the 221 came) or a close the driver asked for while idle.
    Quit,
    /// The hop refused service, broke the protocol, went silent or away. Messages the driver
    /// meant to send on this connection and never handed over should be deferred.
    Failed(Diagnostic),
}

/// Something the driver must act on (after writing [`Output::bytes`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientEvent {
    /// Idle: call [`Client::send`] or [`Client::quit`].
    Ready,
    /// The hop agreed to STARTTLS: see [`Next::StartTls`].
    StartTls,
    TransactionDone(TransactionOutcome),
    /// The last event: close the connection.
    Closed(ConnectionOutcome),
}

/// What the driver does next; see the module doc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Wait for the next hop's reply, at most this long (RFC 5321 §4.5.3.2 per stage).
    Read(Duration),
    /// Idle: hand over a message or quit.
    Send,
    /// Discard the unconsumed input, run the TLS handshake, then call
    /// [`Client::tls_established`] or [`Client::tls_failed`] (module doc, step 4).
    StartTls,
    /// Closed: close the socket.
    Done,
}

/// What one call produced.
#[derive(Debug, Default)]
pub struct Output {
    /// Commands and message data, to be written in order (one write per call).
    pub bytes: Vec<u8>,
    pub events: Vec<ClientEvent>,
}

impl Output {
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.events.clear();
    }
}

/// When the client asks for TLS (RFC 3207); see the module doc.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StartTlsPolicy {
    /// Never send STARTTLS.
    #[default]
    Never,
    /// STARTTLS when the hop announces it; plaintext when it does not or refuses.
    IfOffered,
    /// STARTTLS or no delivery: the connection fails with a local 4xx.
    Required,
}

/// A command whose reply is awaited, or that waits to be sent (without PIPELINING).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sent {
    Rset,
    Mail,
    Rcpt(usize),
    Data,
    /// `discard`: only "." was sent because DATA was accepted without a recipient (RFC 2920
    /// §3.1); the reply concerns no one.
    EndOfData {
        discard: bool,
    },
}

impl Sent {
    fn stage(self) -> Stage {
        match self {
            Sent::Rset => Stage::Rset,
            Sent::Mail => Stage::Mail,
            Sent::Rcpt(_) => Stage::Rcpt,
            Sent::Data => Stage::Data,
            Sent::EndOfData { .. } => Stage::EndOfData,
        }
    }
}

/// One SMTP transaction (MAIL to the final reply) of a delivery.
#[derive(Debug, Default)]
struct Round {
    /// Written; replies awaited, in order.
    owed: VecDeque<Sent>,
    /// Not yet written (lock-step without PIPELINING).
    unsent: VecDeque<Sent>,
    /// Recipients with a 2xx to RCPT.
    accepted: Vec<usize>,
    /// Recipients answered 452 (too many recipients): sent again in the next transaction if
    /// this one delivered to someone, else deferred.
    retry: Vec<(usize, Reply)>,
    /// The end of data was answered 2xx.
    delivered: bool,
    /// MAIL was refused: later replies of this transaction concern no one.
    mail_failed: bool,
}

/// A delivery in progress: one message, possibly several SMTP transactions.
struct Delivery {
    from: ReversePath,
    /// The MAIL parameters for this hop.
    params: MailParams,
    recipients: Vec<Recipient>,
    /// Parsed forward-paths (`None`: unparsable, already bounced).
    paths: Vec<Option<ForwardPath>>,
    body: Bytes,
    results: Vec<Option<RecipientResult>>,
    /// Recipients for later transactions, in order.
    queue: VecDeque<usize>,
    downgraded: bool,
    transactions: u32,
    round: Round,
}

impl fmt::Debug for Delivery {
    /// Without the body: a client's debug output must not dump megabytes of message.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("from", &self.from)
            .field("params", &self.params)
            .field("recipients", &self.recipients.len())
            .field("body", &self.body.len())
            .field("results", &self.results)
            .field("queue", &self.queue)
            .field("downgraded", &self.downgraded)
            .field("transactions", &self.transactions)
            .field("round", &self.round)
            .finish()
    }
}

impl Delivery {
    fn outcome(self, fill: impl Fn() -> RecipientResult) -> TransactionOutcome {
        TransactionOutcome {
            results: self
                .results
                .into_iter()
                .map(|r| r.unwrap_or_else(&fill))
                .collect(),
            downgraded: self.downgraded,
            transactions: self.transactions,
        }
    }

    /// Applies a reply to a recipient that has no result yet, by its class.
    fn resolve(&mut self, index: usize, stage: Stage, reply: &Reply) {
        let Some(slot) = self.results.get_mut(index) else {
            return;
        };
        if slot.is_some() {
            return;
        }
        let diagnostic = || Diagnostic::Remote {
            stage,
            reply: reply.clone(),
        };
        *slot = Some(match reply.code().class() {
            2 => RecipientResult::Delivered(reply.clone()),
            5 => RecipientResult::Bounced(diagnostic()),
            _ => RecipientResult::Deferred(diagnostic()),
        });
    }
}

/// Connection states: each variant carries only what exists in it.
#[derive(Debug)]
enum State {
    /// Connected; the 220 is awaited.
    Greeting,
    /// EHLO sent.
    Ehlo,
    /// HELO sent after EHLO was refused.
    Helo,
    /// STARTTLS sent; its reply is awaited.
    StartTls,
    /// 220 to STARTTLS: the driver runs the handshake.
    Handshake,
    /// Idle between deliveries; `rset`: the last transaction did not end cleanly.
    Ready {
        rset: bool,
    },
    Delivering(Box<Delivery>),
    /// QUIT sent; the outcome is reported when its reply (or the close) comes.
    Quit(ConnectionOutcome),
    Closed,
}

/// One outbound SMTP connection.
#[derive(Debug)]
pub struct Client {
    config: Arc<ClientConfig>,
    parser: ReplyParser,
    caps: Capabilities,
    state: State,
    starttls: StartTlsPolicy,
    /// The TLS handshake succeeded on this connection.
    encrypted: bool,
    /// The next hop as the driver names it, for the loop diagnostic.
    peer: String,
}

impl Client {
    /// A client for a new connection that never asks for TLS. It writes nothing until the
    /// greeting comes.
    pub fn new(config: Arc<ClientConfig>) -> Client {
        Client::with_starttls(config, StartTlsPolicy::Never)
    }

    /// A client for a new connection that asks for TLS as `starttls` says.
    pub fn with_starttls(config: Arc<ClientConfig>, starttls: StartTlsPolicy) -> Client {
        debug_assert_eq!(config.check(), Ok(()));
        Client {
            config,
            parser: ReplyParser::new(),
            caps: Capabilities::default(),
            state: State::Greeting,
            starttls,
            encrypted: false,
            peer: String::from("the next hop"),
        }
    }

    /// Names the next hop (`host[address]`) in a loop diagnostic.
    pub fn for_peer(mut self, peer: &str) -> Client {
        self.peer = peer.to_string();
        self
    }

    /// A mail loop: the first word of `reply` (the host name a greeting or an EHLO/HELO
    /// reply starts with, RFC 5321 §4.2) is our own host name. The connection is refused
    /// with a local `554 5.4.6`, which the driver bounces.
    fn names_myself(&self, reply: &Reply, stage: Stage) -> Option<Diagnostic> {
        let own = self.config.own_hostname.as_deref()?;
        let first = reply.text().split([' ', '\n']).next().unwrap_or("");
        let first = first.strip_suffix('.').unwrap_or(first);
        let own = own.strip_suffix('.').unwrap_or(own);
        if own.is_empty() || !first.eq_ignore_ascii_case(own) {
            return None;
        }
        let when = match stage {
            Stage::Greeting => "greeted me",
            Stage::Helo => "replied to HELO",
            _ => "replied to EHLO",
        };
        let reply = Reply::greeted_with_own_name(&self.peer, when, own);
        Some(Diagnostic::Local { stage, reply })
    }

    /// The conversation runs over TLS ([`Client::tls_established`] was called).
    pub fn is_encrypted(&self) -> bool {
        self.encrypted
    }

    /// The handshake after STARTTLS succeeded: EHLO goes again (RFC 3207 §4.2). Only after
    /// [`Next::StartTls`]; ignored elsewhere.
    pub fn tls_established(&mut self, out: &mut Output) {
        if matches!(self.state, State::Handshake) {
            self.encrypted = true;
            self.ehlo(out);
        }
    }

    /// The handshake after STARTTLS failed (`why`: for the diagnostic): the connection is
    /// unusable, so it fails with a local 421 4.7.5 and no QUIT.
    pub fn tls_failed(&mut self, why: &str, out: &mut Output) {
        let stage = self.stage();
        let reply = Reply::next_hop_tls_failed(why);
        self.lost(Diagnostic::Local { stage, reply }, out);
    }

    /// What the next hop announced (meaningful from the first [`Next::Send`]).
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    pub fn next(&self) -> Next {
        let t = &self.config.timeouts;
        match &self.state {
            State::Greeting => Next::Read(t.greeting),
            // STARTTLS has no timeout of its own in RFC 5321; it is answered like EHLO.
            State::Ehlo | State::Helo | State::StartTls => Next::Read(t.ehlo),
            State::Handshake => Next::StartTls,
            State::Ready { .. } => Next::Send,
            State::Delivering(delivery) => Next::Read(match delivery.round.owed.front() {
                Some(Sent::Rset) => t.rset,
                Some(Sent::Mail) => t.mail,
                Some(Sent::Rcpt(_)) => t.rcpt,
                Some(Sent::Data) => t.data_init,
                Some(Sent::EndOfData { .. }) | None => t.data_end,
            }),
            State::Quit(_) => Next::Read(t.quit),
            State::Closed => Next::Done,
        }
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Reads replies from the buffered input; returns the octets consumed (module doc).
    pub fn handle_input(&mut self, input: &[u8], out: &mut Output) -> usize {
        let mut consumed = 0;
        loop {
            match self.state {
                State::Closed => return input.len(),
                // After the 220 to STARTTLS nothing more is read: the rest came before TLS.
                State::Ready { .. } | State::Handshake => return consumed,
                _ => {}
            }
            let rest = &input[consumed..];
            match self.parser.parse(rest, &self.config.reply_limits) {
                Ok((n, Some(reply))) => {
                    consumed += n;
                    self.reply(reply, out);
                }
                Ok((n, None)) => return consumed + n,
                Err(error) => {
                    let stage = self.stage();
                    let reply = Reply::next_hop_bad_reply(stage.describe(), &error);
                    self.fail(Diagnostic::Local { stage, reply }, out);
                    return input.len();
                }
            }
        }
    }

    /// Starts delivering `message`. Only when idle ([`Next::Send`]); otherwise the message
    /// is handed back untouched (boxed: it is large).
    pub fn send(&mut self, message: Outgoing, out: &mut Output) -> Result<(), Box<Outgoing>> {
        let State::Ready { rset } = self.state else {
            return Err(Box::new(message));
        };
        let mut delivery = Box::new(self.prepare(message));
        delivery.queue = (0..delivery.results.len())
            .filter(|&i| delivery.results[i].is_none())
            .collect();
        if delivery.queue.is_empty() {
            out.events.push(ClientEvent::TransactionDone(
                delivery.outcome(|| RecipientResult::Deferred(aborted(Stage::Prepare))),
            ));
            out.events.push(ClientEvent::Ready);
            return Ok(());
        }
        self.start_round(delivery, rset, out);
        Ok(())
    }

    /// Ends the connection. Idle: QUIT is sent and its reply awaited. Anywhere else the
    /// connection is dropped at once, and a delivery in progress is deferred.
    pub fn quit(&mut self, out: &mut Output) {
        match mem::replace(&mut self.state, State::Closed) {
            State::Ready { .. } => {
                Command::Quit.encode(&mut out.bytes);
                self.state = State::Quit(ConnectionOutcome::Quit);
            }
            State::Closed => {}
            State::Quit(outcome) => self.state = State::Quit(outcome),
            state @ State::Delivering(_) => {
                self.state = state;
                self.fail(aborted(self.stage()), out);
            }
            State::Greeting | State::Ehlo | State::Helo | State::StartTls | State::Handshake => {
                out.events
                    .push(ClientEvent::Closed(ConnectionOutcome::Quit));
            }
        }
    }

    /// The driver's read timed out ([`Next::Read`]'s duration passed without a reply).
    pub fn timed_out(&mut self, out: &mut Output) {
        let stage = self.stage();
        let reply = Reply::next_hop_timed_out(stage.describe());
        self.lost(Diagnostic::Local { stage, reply }, out);
    }

    /// The connection closed or failed.
    pub fn connection_lost(&mut self, out: &mut Output) {
        let stage = self.stage();
        let reply = Reply::next_hop_connection_lost(stage.describe());
        self.lost(Diagnostic::Local { stage, reply }, out);
    }

    fn lost(&mut self, diagnostic: Diagnostic, out: &mut Output) {
        match mem::replace(&mut self.state, State::Closed) {
            State::Closed => {}
            // After QUIT nothing is pending: the hop need not answer before closing.
            State::Quit(outcome) => out.events.push(ClientEvent::Closed(outcome)),
            state => {
                self.state = state;
                self.fail(diagnostic, out);
            }
        }
    }

    /// Where the conversation stands, for diagnostics.
    fn stage(&self) -> Stage {
        match &self.state {
            State::Greeting => Stage::Greeting,
            State::Ehlo => Stage::Ehlo,
            State::Helo => Stage::Helo,
            State::StartTls | State::Handshake => Stage::StartTls,
            State::Ready { .. } | State::Closed => Stage::Idle,
            State::Delivering(delivery) => delivery
                .round
                .owed
                .front()
                .map_or(Stage::EndOfData, |sent| sent.stage()),
            State::Quit(_) => Stage::Quit,
        }
    }

    /// Defers everything pending and closes without QUIT (the stream cannot be trusted).
    fn fail(&mut self, diagnostic: Diagnostic, out: &mut Output) {
        if let State::Delivering(delivery) = mem::replace(&mut self.state, State::Closed) {
            let outcome = delivery.outcome(|| RecipientResult::Deferred(diagnostic.clone()));
            out.events.push(ClientEvent::TransactionDone(outcome));
        }
        out.events
            .push(ClientEvent::Closed(ConnectionOutcome::Failed(diagnostic)));
    }

    /// Sends QUIT after a refusal and reports `diagnostic` when the connection ends.
    fn refused(&mut self, diagnostic: Diagnostic, out: &mut Output) {
        Command::Quit.encode(&mut out.bytes);
        self.state = State::Quit(ConnectionOutcome::Failed(diagnostic));
    }

    fn unexpected(&mut self, stage: Stage, reply: &Reply, out: &mut Output) {
        let reply = Reply::next_hop_unexpected_reply(stage.describe(), reply);
        self.fail(Diagnostic::Local { stage, reply }, out);
    }

    fn reply(&mut self, mut reply: Reply, out: &mut Output) {
        let stage = self.stage();
        // A reply may be kept once per recipient it concerns: bounded, whatever the hop sent
        // (only the EHLO reply is read in full, for its extensions).
        if stage != Stage::Ehlo {
            reply.truncate_text(REPLY_TEXT_KEPT);
        }
        // RFC 5321 §3.8: 421 means the hop is closing the channel, whatever was asked.
        if reply.code() == ReplyCode::SERVICE_NOT_AVAILABLE && !matches!(self.state, State::Quit(_))
        {
            return self.fail(Diagnostic::Remote { stage, reply }, out);
        }
        match mem::replace(&mut self.state, State::Closed) {
            State::Greeting => match reply.code().class() {
                2 if reply.code() == ReplyCode::SERVICE_READY => {
                    if let Some(diagnostic) = self.names_myself(&reply, stage) {
                        return self.refused(diagnostic, out);
                    }
                    self.ehlo(out);
                }
                // RFC 5321 §3.1: a 554 (or any refusal) greeting means no service here; the
                // hop waits for QUIT. Deferred, not bounced: it says nothing about the
                // recipients (Postfix's smtp_skip_5xx_greeting).
                4 | 5 => self.refused(Diagnostic::Remote { stage, reply }, out),
                _ => self.unexpected(stage, &reply, out),
            },
            State::Ehlo => match reply.code().class() {
                2 => {
                    if let Some(diagnostic) = self.names_myself(&reply, stage) {
                        return self.refused(diagnostic, out);
                    }
                    self.caps = Capabilities::from_ehlo(&reply);
                    if self.starttls != StartTlsPolicy::Never && !self.encrypted {
                        if self.caps.starttls {
                            Command::StartTls.encode(&mut out.bytes);
                            self.state = State::StartTls;
                            return;
                        }
                        if self.starttls == StartTlsPolicy::Required {
                            let reply = Reply::next_hop_lacks_starttls();
                            return self.refused(Diagnostic::Local { stage, reply }, out);
                        }
                    }
                    self.ready(false, out);
                }
                // RFC 5321 §4.1.4 / §3.2: a server without EHLO answers 5xx; fall back.
                5 => {
                    Command::Helo {
                        domain: self.config.helo_name.clone(),
                    }
                    .encode(&mut out.bytes);
                    self.state = State::Helo;
                }
                4 => self.refused(Diagnostic::Remote { stage, reply }, out),
                _ => self.unexpected(stage, &reply, out),
            },
            State::Helo => match reply.code().class() {
                2 => {
                    if let Some(diagnostic) = self.names_myself(&reply, stage) {
                        return self.refused(diagnostic, out);
                    }
                    self.caps = Capabilities::default();
                    if self.starttls == StartTlsPolicy::Required && !self.encrypted {
                        let reply = Reply::next_hop_lacks_starttls();
                        return self.refused(Diagnostic::Local { stage, reply }, out);
                    }
                    self.ready(false, out);
                }
                4 | 5 => self.refused(Diagnostic::Remote { stage, reply }, out),
                _ => self.unexpected(stage, &reply, out),
            },
            State::StartTls => match reply.code().class() {
                2 if reply.code() == ReplyCode::SERVICE_READY => {
                    // RFC 3207 §4.2: what the hop said before TLS may have been forged.
                    self.caps = Capabilities::default();
                    self.state = State::Handshake;
                    out.events.push(ClientEvent::StartTls);
                }
                4 | 5 => match self.starttls {
                    StartTlsPolicy::Required => {
                        let reply = Reply::next_hop_refused_starttls(&reply);
                        self.refused(Diagnostic::Local { stage, reply }, out);
                    }
                    // RFC 3207 §4.1: the session goes on as before STARTTLS.
                    StartTlsPolicy::IfOffered | StartTlsPolicy::Never => self.ready(false, out),
                },
                _ => self.unexpected(stage, &reply, out),
            },
            State::Delivering(delivery) => self.delivery_reply(delivery, reply, out),
            State::Quit(outcome) => out.events.push(ClientEvent::Closed(outcome)),
            // Not reached: input is not read in these states.
            state @ (State::Ready { .. } | State::Handshake | State::Closed) => self.state = state,
        }
    }

    fn ehlo(&mut self, out: &mut Output) {
        Command::Ehlo {
            domain: self.config.helo_name.clone(),
        }
        .encode(&mut out.bytes);
        self.state = State::Ehlo;
    }

    fn ready(&mut self, rset: bool, out: &mut Output) {
        self.state = State::Ready { rset };
        out.events.push(ClientEvent::Ready);
    }

    /// The checks before sending and the MAIL parameters for this hop.
    fn prepare(&self, message: Outgoing) -> Delivery {
        let caps = &self.caps;
        let n = message.recipients.len();
        let mut results: Vec<Option<RecipientResult>> = (0..n).map(|_| None).collect();
        let bounce_all = |results: &mut Vec<Option<RecipientResult>>, reply: Reply| {
            for slot in results.iter_mut().filter(|s| s.is_none()) {
                *slot = Some(RecipientResult::Bounced(Diagnostic::Local {
                    stage: Stage::Prepare,
                    reply: reply.clone(),
                }));
            }
        };
        let from = if message.reverse_path.is_empty() {
            ReversePath::Null
        } else {
            match Mailbox::parse(&message.reverse_path) {
                Ok(mailbox) => ReversePath::Mailbox(mailbox),
                Err(_) => {
                    bounce_all(
                        &mut results,
                        Reply::bad_stored_sender(&message.reverse_path),
                    );
                    ReversePath::Null
                }
            }
        };
        let mut paths = Vec::with_capacity(n);
        for (i, recipient) in message.recipients.iter().enumerate() {
            let path = if recipient.address.eq_ignore_ascii_case("postmaster") {
                Some(ForwardPath::Postmaster)
            } else {
                Mailbox::parse(&recipient.address)
                    .ok()
                    .map(ForwardPath::Mailbox)
            };
            let bounce = match &path {
                None => Some(Reply::bad_stored_recipient(&recipient.address)),
                // RFC 6531 §3.2: no UTF-8 address to a hop without SMTPUTF8.
                Some(path) if !path.is_ascii() && !caps.smtputf8 => {
                    Some(Reply::next_hop_lacks_smtputf8())
                }
                Some(_) => None,
            };
            if let Some(reply) = bounce {
                if let Some(slot) = results.get_mut(i) {
                    *slot = Some(RecipientResult::Bounced(Diagnostic::Local {
                        stage: Stage::Prepare,
                        reply,
                    }));
                }
            }
            paths.push(path);
        }
        if !from.is_ascii() && !caps.smtputf8 {
            bounce_all(&mut results, Reply::next_hop_lacks_smtputf8());
        }
        // RFC 6531 §3.4: SMTPUTF8 whenever an address needs it, even if the stored envelope
        // did not say so.
        let utf8_addresses =
            !from.is_ascii() || paths.iter().flatten().any(|path| !path.is_ascii());

        // RFC 6152 §3: never 8-bit data to a hop without 8BITMIME.
        let declared_8bit = message.eight_bit || message.params.body != BodyType::SevenBit;
        let mut body = message.body;
        let mut downgraded = false;
        let body_type = if caps.eight_bit_mime {
            if declared_8bit {
                BodyType::EightBitMime
            } else {
                BodyType::SevenBit
            }
        } else {
            if declared_8bit || mime::downgrade::has_8bit(&body) {
                match mime::downgrade(&body, &self.config.mime_limits) {
                    Ok(Cow::Borrowed(_)) => {}
                    Ok(Cow::Owned(converted)) => {
                        let resigned = self
                            .config
                            .resign
                            .0
                            .as_ref()
                            .and_then(|resign| resign(&body, &converted));
                        body = Bytes::from(resigned.unwrap_or(converted));
                        downgraded = true;
                    }
                    Err(error) => {
                        let reply = match error {
                            mime::downgrade::DowngradeError::EightBitAddress { .. } => {
                                Reply::next_hop_lacks_smtputf8()
                            }
                            other => Reply::conversion_failed(&other.to_string()),
                        };
                        bounce_all(&mut results, reply);
                    }
                }
                if mime::downgrade::has_8bit(&body) {
                    bounce_all(
                        &mut results,
                        Reply::conversion_failed("8-bit octets remain after conversion"),
                    );
                }
            }
            BodyType::SevenBit
        };
        // DATA can carry only CRLF-delimited lines; a BINARYMIME body may hold bare CR or LF,
        // which would need BDAT (not implemented) and could smuggle a second message.
        if message.params.body == BodyType::BinaryMime && has_bare_line_end(&body) {
            bounce_all(
                &mut results,
                Reply::conversion_failed("binary content needs BDAT (RFC 3030)"),
            );
        }
        let size = body.len() as u64;
        if let Some(max) = caps.size.filter(|&max| max > 0 && size > max) {
            bounce_all(&mut results, Reply::next_hop_size_exceeded(size, max));
        }

        let params = if caps.esmtp {
            MailParams {
                size: caps.size.map(|_| size),
                body: body_type,
                smtputf8: (message.params.smtputf8 || utf8_addresses) && caps.smtputf8,
                ret: message.params.ret.filter(|_| caps.dsn),
                envid: message.params.envid.filter(|_| caps.dsn),
                // Set only for a cluster peer, whose listener takes them.
                cluster: message.params.cluster,
            }
        } else {
            MailParams::default()
        };
        Delivery {
            from,
            params,
            recipients: message.recipients,
            paths,
            body,
            results,
            queue: VecDeque::new(),
            downgraded,
            transactions: 0,
            round: Round::default(),
        }
    }

    /// Starts one SMTP transaction with the next recipients of the queue.
    fn start_round(&mut self, mut delivery: Box<Delivery>, rset: bool, out: &mut Output) {
        let take = self
            .config
            .max_recipients_per_transaction
            .max(1)
            .min(delivery.queue.len());
        let mut round = Round::default();
        if rset {
            round.unsent.push_back(Sent::Rset);
        }
        round.unsent.push_back(Sent::Mail);
        round
            .unsent
            .extend(delivery.queue.drain(..take).map(Sent::Rcpt));
        round.unsent.push_back(Sent::Data);
        delivery.round = round;
        delivery.transactions += 1;
        if self.caps.pipelining {
            // RFC 2920 §3.1: RSET, MAIL and RCPT may be grouped; DATA ends the group.
            while let Some(sent) = delivery.round.unsent.pop_front() {
                self.write(&mut delivery, sent, out);
            }
        } else if let Some(sent) = delivery.round.unsent.pop_front() {
            self.write(&mut delivery, sent, out);
        }
        self.state = State::Delivering(delivery);
    }

    fn write(&self, delivery: &mut Delivery, sent: Sent, out: &mut Output) {
        let command = match sent {
            Sent::Rset => Command::Rset,
            Sent::Mail => Command::Mail {
                kind: MailKind::Mail,
                from: delivery.from.clone(),
                params: delivery.params.clone(),
            },
            Sent::Rcpt(i) => {
                let (Some(Some(to)), Some(recipient)) =
                    (delivery.paths.get(i), delivery.recipients.get(i))
                else {
                    return;
                };
                let params = if self.caps.dsn {
                    RcptParams {
                        notify: recipient.notify,
                        orcpt: recipient.orcpt.clone(),
                    }
                } else {
                    RcptParams::default()
                };
                Command::Rcpt {
                    to: to.clone(),
                    params,
                }
            }
            Sent::Data => Command::Data,
            Sent::EndOfData { .. } => return,
        };
        command.encode(&mut out.bytes);
        delivery.round.owed.push_back(sent);
    }

    fn delivery_reply(&mut self, mut delivery: Box<Delivery>, reply: Reply, out: &mut Output) {
        let Some(sent) = delivery.round.owed.pop_front() else {
            // Not reached: a delivery always awaits a reply.
            self.state = State::Delivering(delivery);
            return self.unexpected(Stage::Idle, &reply, out);
        };
        let stage = sent.stage();
        let class = reply.code().class();
        self.state = State::Delivering(delivery);
        let State::Delivering(delivery) = &mut self.state else {
            return;
        };
        let mut clean = false;
        match sent {
            Sent::Rset => {
                if class != 2 {
                    // RSET cannot fail on a sane server; do not guess at its state.
                    return self.fail(Diagnostic::Remote { stage, reply }, out);
                }
            }
            Sent::Mail => match class {
                2 => {}
                4 | 5 => {
                    // A refused MAIL concerns every recipient of the delivery.
                    // (those queued for later transactions included).
                    delivery.round.mail_failed = true;
                    delivery.round.unsent.clear();
                    delivery.queue.clear();
                    for i in 0..delivery.results.len() {
                        delivery.resolve(i, stage, &reply);
                    }
                }
                _ => return self.unexpected(stage, &reply, out),
            },
            Sent::Rcpt(i) => {
                if !delivery.round.mail_failed {
                    match class {
                        2 => delivery.round.accepted.push(i),
                        4 if too_many_recipients(&reply) => delivery.round.retry.push((i, reply)),
                        4 | 5 => delivery.resolve(i, stage, &reply),
                        _ => return self.unexpected(stage, &reply, out),
                    }
                }
            }
            Sent::Data => {
                if reply.code() == ReplyCode::START_MAIL_INPUT {
                    let round = &mut delivery.round;
                    if round.mail_failed || round.accepted.is_empty() {
                        // RFC 2920 §3.1: DATA accepted although no recipient was: send an
                        // empty message (just the dot) and ignore its reply.
                        out.bytes.extend_from_slice(b".\r\n");
                        round.owed.push_back(Sent::EndOfData { discard: true });
                    } else {
                        dot_stuff(&delivery.body, &mut out.bytes);
                        round.owed.push_back(Sent::EndOfData { discard: false });
                    }
                    return;
                }
                match class {
                    4 | 5 => {
                        if !delivery.round.mail_failed {
                            for i in mem::take(&mut delivery.round.accepted) {
                                delivery.resolve(i, stage, &reply);
                            }
                        }
                    }
                    _ => return self.unexpected(stage, &reply, out),
                }
            }
            Sent::EndOfData { discard } => match class {
                2 | 4 | 5 => {
                    if !discard {
                        for i in delivery.round.accepted.clone() {
                            delivery.resolve(i, stage, &reply);
                        }
                        delivery.round.delivered = class == 2;
                    }
                    clean = !discard;
                }
                _ => return self.unexpected(stage, &reply, out),
            },
        }
        if !delivery.round.owed.is_empty() {
            return;
        }
        // Lock-step: the next command, if it still makes sense.
        let round = &mut delivery.round;
        if round.unsent.front() == Some(&Sent::Data) && round.accepted.is_empty() {
            round.unsent.clear();
        }
        if let Some(next) = delivery.round.unsent.pop_front() {
            let State::Delivering(mut delivery) = mem::replace(&mut self.state, State::Closed)
            else {
                return;
            };
            self.write(&mut delivery, next, out);
            self.state = State::Delivering(delivery);
            return;
        }
        self.end_round(clean, out);
    }

    /// One SMTP transaction is over: start the next or report the delivery.
    fn end_round(&mut self, clean: bool, out: &mut Output) {
        let State::Delivering(mut delivery) = mem::replace(&mut self.state, State::Closed) else {
            return;
        };
        let round = mem::take(&mut delivery.round);
        if round.delivered {
            // The hop took the message for someone, so the recipients it had no room for
            // go in the next transaction (RFC 5321 §4.5.3.1.10), ahead of those not tried
            // yet. Each such transaction delivers to at least one recipient: this ends.
            for (i, _) in round.retry.iter().rev() {
                delivery.queue.push_front(*i);
            }
        } else {
            for (i, reply) in &round.retry {
                delivery.resolve(*i, Stage::Rcpt, reply);
            }
        }
        if !delivery.queue.is_empty() {
            return self.start_round(delivery, !clean, out);
        }
        let outcome = delivery.outcome(|| RecipientResult::Deferred(aborted(Stage::Idle)));
        out.events.push(ClientEvent::TransactionDone(outcome));
        self.ready(!clean, out);
    }
}

/// RFC 5321 §4.5.3.1.10: 452 "too many recipients" (4.5.3 when the hop gives enhanced
/// codes; other 452s, such as 4.2.2 mailbox full, are ordinary transient failures).
fn too_many_recipients(reply: &Reply) -> bool {
    reply.code() == ReplyCode::INSUFFICIENT_STORAGE
        && reply
            .status()
            .is_none_or(|s| s.subject() == 5 && s.detail() == 3)
}

fn aborted(stage: Stage) -> Diagnostic {
    Diagnostic::Local {
        stage,
        reply: Reply::delivery_aborted(),
    }
}

/// A CR or LF that is not part of a CRLF pair.
fn has_bare_line_end(body: &[u8]) -> bool {
    memchr::memchr2_iter(b'\r', b'\n', body).any(|i| match body[i] {
        b'\r' => body.get(i + 1) != Some(&b'\n'),
        _ => i == 0 || body[i - 1] != b'\r',
    })
}

/// Appends `body` as DATA content (RFC 5321 §4.5.2): a "." at the start of a line is
/// doubled, then CRLF "." CRLF ends it (with a CRLF first if the body lacks its last one).
///
/// A line start here is the start of the body or any octet after CR or LF, not only after
/// CRLF: stored messages have no bare CR or LF, but if one ever did, no next hop, lenient or
/// strict about bare line ends, could read an end of data inside it.
pub fn dot_stuff(body: &[u8], out: &mut Vec<u8>) {
    out.reserve(body.len() + body.len() / 64 + 5);
    if body.first() == Some(&b'.') {
        out.push(b'.');
    }
    // Only line ends followed by a dot matter: search for those two octets (rare) rather than
    // stopping at every CR and LF (two stops per line).
    let mut after_lf = memchr::memmem::find_iter(body, b"\n.").peekable();
    let mut after_cr = memchr::memmem::find_iter(body, b"\r.").peekable();
    let mut start = 0;
    loop {
        // The two patterns never start at the same octet: merge them in order.
        let i = match (after_lf.peek(), after_cr.peek()) {
            (Some(&lf), Some(&cr)) if lf < cr => after_lf.next(),
            (Some(_), Some(_)) | (None, Some(_)) => after_cr.next(),
            (Some(_), None) => after_lf.next(),
            (None, None) => None,
        };
        let Some(i) = i else { break };
        out.extend_from_slice(&body[start..=i]);
        out.push(b'.');
        start = i + 1;
    }
    out.extend_from_slice(&body[start..]);
    if !body.is_empty() && !body.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stuffed(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        dot_stuff(body, &mut out);
        out
    }

    #[test]
    fn dot_stuffing() {
        let table: &[(&[u8], &[u8])] = &[
            (b"", b".\r\n"),
            (b"a\r\n", b"a\r\n.\r\n"),
            (b".\r\n", b"..\r\n.\r\n"),
            (b"a\r\n.b\r\n..\r\n", b"a\r\n..b\r\n...\r\n.\r\n"),
            (b"no end", b"no end\r\n.\r\n"),
            (b"x\n.\r\n", b"x\n..\r\n.\r\n"),
            (b"x\r.y\r\n", b"x\r..y\r\n.\r\n"),
        ];
        for (body, wire) in table {
            assert_eq!(stuffed(body), *wire, "{:?}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn dot_stuffing_agrees_with_a_stop_at_every_line_end() {
        fn reference(body: &[u8]) -> Vec<u8> {
            let mut out = Vec::new();
            for (i, &b) in body.iter().enumerate() {
                let line_start = i == 0 || matches!(body[i - 1], b'\r' | b'\n');
                if line_start && b == b'.' {
                    out.push(b'.');
                }
                out.push(b);
            }
            if !body.is_empty() && !body.ends_with(b"\r\n") {
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b".\r\n");
            out
        }
        // Every body of up to 6 octets over the alphabet that matters, and longer mixes.
        let alphabet = [b'.', b'\r', b'\n', b'a'];
        for len in 0..=6u32 {
            for n in 0..4usize.pow(len) {
                let body: Vec<u8> = (0..len).map(|k| alphabet[n / 4usize.pow(k) % 4]).collect();
                assert_eq!(stuffed(&body), reference(&body), "{body:?}");
            }
        }
        let long = b"line one\r\n.dot\r\n\r\n..\r\nx\r.y\n.z".repeat(50);
        assert_eq!(stuffed(&long), reference(&long));
    }

    #[test]
    fn bare_line_ends() {
        assert!(!has_bare_line_end(b"a\r\nb\r\n"));
        assert!(has_bare_line_end(b"a\nb"));
        assert!(has_bare_line_end(b"\n"));
        assert!(has_bare_line_end(b"a\rb"));
        assert!(has_bare_line_end(b"a\r"));
    }

    #[test]
    fn ehlo_capabilities() {
        let reply = Reply::new(
            ReplyCode::OK,
            None,
            "mx.example greets you\nPIPELINING\nsize 1000\n8bitmime\nSMTPUTF8\nDSN\nCHUNKING\nBINARYMIME\nENHANCEDSTATUSCODES\nSTARTTLS\nAUTH PLAIN\nX-UNKNOWN",
        );
        let caps = Capabilities::from_ehlo(&reply);
        assert_eq!(
            caps,
            Capabilities {
                esmtp: true,
                pipelining: true,
                size: Some(1000),
                eight_bit_mime: true,
                smtputf8: true,
                dsn: true,
                chunking: true,
                binary_mime: true,
                enhanced_status_codes: true,
                starttls: true,
            }
        );
        let bare = Capabilities::from_ehlo(&Reply::new(ReplyCode::OK, None, "mx\nSIZE"));
        assert_eq!(bare.size, Some(0));
        let junk = Capabilities::from_ehlo(&Reply::new(ReplyCode::OK, None, "mx\nSIZE x1"));
        assert_eq!(junk.size, Some(0));
        let huge = Capabilities::from_ehlo(&Reply::new(
            ReplyCode::OK,
            None,
            "mx\nSIZE 99999999999999999999999",
        ));
        assert_eq!(huge.size, Some(u64::MAX));
    }

    #[test]
    fn config_checks() {
        assert_eq!(ClientConfig::default().check(), Ok(()));
        let bad = ClientConfig {
            helo_name: "a b".into(),
            ..ClientConfig::default()
        };
        assert_eq!(bad.check(), Err(ClientConfigError::BadHeloName));
        let none = ClientConfig {
            max_recipients_per_transaction: 0,
            ..ClientConfig::default()
        };
        assert_eq!(none.check(), Err(ClientConfigError::NoRecipients));
    }

    /// Runs a client that knows itself as `relay.test` through `replies` (one at a time);
    /// returns what it wrote and its last event.
    fn run_against(replies: &[&str], own: Option<&str>) -> (String, Option<ClientEvent>) {
        let config = Arc::new(ClientConfig {
            own_hostname: own.map(String::from),
            ..ClientConfig::default()
        });
        let mut client = Client::new(config).for_peer("mx.test[192.0.2.1]");
        let mut out = Output::default();
        let mut written = Vec::new();
        for reply in replies {
            client.handle_input(reply.as_bytes(), &mut out);
            written.append(&mut out.bytes);
        }
        (String::from_utf8(written).unwrap(), out.events.pop())
    }

    fn loop_reply(event: Option<ClientEvent>) -> String {
        match event {
            Some(ClientEvent::Closed(ConnectionOutcome::Failed(d))) => {
                assert!(!d.is_remote(), "our own decision");
                d.reply().to_string()
            }
            other => panic!("expected a failed connection, got {other:?}"),
        }
    }

    #[test]
    fn a_greeting_with_our_own_name_is_a_loop() {
        let me = Some("relay.test");
        let (written, event) = run_against(&["220 Relay.Test. ESMTP ready\r\n"], me);
        assert_eq!(written, "QUIT\r\n");
        assert_eq!(event, None, "the outcome comes with the reply to QUIT");
        let (_, event) = run_against(&["220 relay.test ESMTP\r\n", "221 bye\r\n"], me);
        assert_eq!(
            loop_reply(event),
            "554 5.4.6 mail loops: host mx.test[192.0.2.1] greeted me with my own hostname relay.test"
        );
    }

    #[test]
    fn an_ehlo_or_helo_reply_with_our_own_name_is_a_loop() {
        let me = Some("relay.test");
        let ehlo = [
            "220 other.test ESMTP\r\n",
            "250-relay.test hello\r\n250 PIPELINING\r\n",
            "221 bye\r\n",
        ];
        let (written, event) = run_against(&ehlo, me);
        assert_eq!(written, "EHLO localhost\r\nQUIT\r\n");
        assert!(loop_reply(event).contains("replied to EHLO with my own hostname relay.test"));
        let helo = [
            "220 other.test\r\n",
            "502 no EHLO\r\n",
            "250 RELAY.TEST\r\n",
            "221 bye\r\n",
        ];
        let (_, event) = run_against(&helo, me);
        assert!(loop_reply(event).starts_with("554 5.4.6 "));
    }

    #[test]
    fn other_names_and_no_own_name_are_no_loop() {
        for (replies, own) in [
            (
                ["220 other.test relay.test\r\n", "250 other.test\r\n"],
                Some("relay.test"),
            ),
            (
                ["220 relay.tester\r\n", "250 relay.test.example\r\n"],
                Some("relay.test"),
            ),
            (["220 relay.test\r\n", "250 relay.test\r\n"], None),
        ] {
            let (written, event) = run_against(&replies, own);
            assert_eq!(written, "EHLO localhost\r\n", "{replies:?}");
            assert_eq!(event, Some(ClientEvent::Ready), "{replies:?}");
        }
    }
}
