//! The SMTP server session: a sans-IO state machine from peer bytes to replies and events.
//!
//! The connection driver (`server::smtp`) owns the socket and the read buffer. It calls
//! [`Session::handle_input`] with the buffered bytes, writes `Outbox::bytes` in one write,
//! then performs `Outbox::events` (store a message, log a rejection, close). The session
//! never reads a clock: `now` comes in as an argument.
//!
//! Consumption contract: in command mode only complete lines are consumed; a partial line
//! stays in the driver's buffer unless it is already longer than the command-line limit, in
//! which case it is discarded up to its LF and answered 500 5.5.2. In DATA everything up to
//! and including the terminator is consumed; in a BDAT chunk, up to the chunk's end.
//! Consumption stops right after a `Submit` (until [`Session::submitted`]) or a `Close`.
//!
//! States: each variant carries only what exists in it. A transaction
//! exists only from MAIL to its end; a body receiver only while data arrives; `Closed` is
//! terminal.
//!
//! Error accounting: every 4xx/5xx reply the client caused counts (Postfix
//! `smtpd_hard_error_limit`); at `errors_max` the session answers 421 4.7.0 and closes. Two
//! exceptions, both from Postfix: 452 "too many recipients" does not count for as many
//! surplus recipients as the limit again (RFC 5321 §4.5.3.1.10 tells clients to send the rest
//! in a later transaction, so the overshoot is normal), and a message accepted for delivery
//! resets the count ("errors ... without delivering mail"). Junk commands (NOOP, RSET, VRFY,
//! HELP, HELO, EHLO) past [`SessionConfig::junk_commands_max`] count as errors too (Postfix
//! `smtpd_junk_command_limit`), so no peer can keep a session busy without sending mail;
//! under the limit they are not errors, so a pipelined batch of them is never tarpitted.
//!
//! Tarpitting (Postfix `smtpd_soft_error_limit` / `smtpd_error_sleep_time`): once the count
//! passes `error_delay_after`, every further counted error asks the driver to wait
//! `error_delay` before writing its reply, through [`Outbox::delay`] (the session itself
//! never sleeps). Delays of one call add up, so pipelining bad commands buys no speed. A
//! scanner then costs its own time, not ours; the hard limit still ends it.
//!
//! Message rate: MAIL asks [`SessionConfig::message_rate`] (a table shared by all cores)
//! after every other check passed, and answers 450 4.7.1 when the client address is over
//! its rate. Clients in `relay_networks` are exempt (Postfix's default
//! `smtpd_client_event_limit_exceptions = $mynetworks`: the operator's own hosts);
//! authenticated sessions are not (as in Postfix): a stolen password is the common way spam
//! leaves a submission service, and the per-IP rate is the brake on it.
//!
//! Body memory: every body's buffer is reserved from [`SessionConfig::body_memory`], a byte
//! budget shared by all sessions, as it grows; the reservation is held until the driver has
//! answered the submission (the spool has the bytes) and given back when the body is
//! refused or dropped. MAIL answers 452 4.3.1 when the budget cannot cover the declared SIZE
//! (or, without one, a first buffer); a body that outgrows the budget is discarded as it
//! arrives and answered 452 4.3.1 at its end, and the session goes on.
//!
//! Output size: replies are appended to `Outbox::bytes` for all input consumed in one call.
//! The largest reply per input octet is EHLO's (about 20×), and junk and error limits end a
//! session that keeps asking, so a call's output stays within a small multiple of its input.

use std::mem;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use memchr::memchr;

use super::address::{ForwardPath, ReversePath};
use super::body_memory::Reservation;
use super::command::{self, Command};
use super::data::{BodyLimits, BodyReceiver, INITIAL_CAPACITY_MAX};
use super::params::RcptParams;
use super::received;
use super::recipients::{Lookup, Mailboxes};
use super::reply::{Extension, Reply};
use crate::envelope::{BodyType, Envelope, MailParams, Origin, QueueId, Recipient};
use crate::proto::line::{self, Frame, LineEnd};
use crate::proto::sasl;

/// RFC 5321 §4.5.3.1.4: a server must accept command lines of 512 octets (CRLF included).
pub const COMMAND_LINE_MIN: usize = 512;
/// RFC 5321 §4.5.3.1.6: a server must accept text lines of 1000 octets (CRLF included).
pub const TEXT_LINE_MIN: usize = 1000;

/// The default of [`SessionConfig::junk_commands_max`]: Postfix's `smtpd_junk_command_limit`.
pub const JUNK_COMMANDS_MAX: u32 = 100;

/// The SASL mechanisms AUTH offers (RFC 4954): PLAIN (RFC 4616) and LOGIN
/// (draft-murchison-sasl-login, what Outlook and many scripts still use).
pub const SASL_MECHANISMS: &[&str] = &["PLAIN", "LOGIN"];
/// RFC 4954 §4: a SASL response line (CRLF included) may be up to 12288 octets; longer ones
/// are answered 500 5.5.6 and end the exchange.
pub const SASL_LINE_MAX: usize = 12288;
/// RFC 4616 §2 (and LOGIN by analogy): a user name or password is at most 255 octets.
const SASL_FIELD_MAX: usize = 255;
/// LOGIN's challenges: base64 of "Username:" and "Password:".
const LOGIN_USERNAME: &str = "VXNlcm5hbWU6";
const LOGIN_PASSWORD: &str = "UGFzc3dvcmQ6";

/// What one session needs to know; shared by all sessions of a listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    /// Our name in the greeting, HELO/EHLO replies, 421s and Received headers.
    pub hostname: String,
    /// Octets including CRLF; at least [`COMMAND_LINE_MIN`].
    pub command_line_max: usize,
    /// Octets including CRLF; at least [`TEXT_LINE_MIN`].
    pub text_line_max: usize,
    pub recipients_max: usize,
    pub message_size_max: u64,
    pub errors_max: u32,
    /// Errors after which each further error reply is delayed by `error_delay`
    /// (tarpitting; see the module doc). At or above `errors_max` it never applies.
    pub error_delay_after: u32,
    pub error_delay: Duration,
    /// Junk commands (see `CommandSpec::counts_as_junk`) allowed without a delivered message
    /// before each further one counts as an error (`smtp.junk_commands_max`).
    pub junk_commands_max: u32,
    /// Domains we accept mail for from anyone; compared case-insensitively.
    pub local_domains: Vec<String>,
    /// Clients allowed to relay to any domain.
    pub relay_networks: Vec<ipnet::IpNet>,
    /// Who receives mail in the local domains. `None`: any local part is accepted and
    /// stored without a mailbox (a relay with no local users).
    pub mailboxes: Option<Mailboxes>,
    /// VRFY answers 250 for a local mailbox (else 252 for all: no address disclosure).
    pub vrfy: bool,
    /// EXPN lists a list's members (else 502).
    pub expn: bool,
    /// Content policy checked at the end of the data (MIME structure, attachments).
    pub policy: crate::mime::Policy,
    /// `Received:` fields a message may carry (Postfix's `hopcount_limit`); more are a
    /// mail loop and get `554 5.4.6`.
    pub hopcount_limit: usize,
    /// The outbound queue's backpressure; `None`: always accepting.
    pub ingest: Option<super::recipients::Gate>,
    /// The per-client-address message rate; `None`: unlimited.
    pub message_rate: Option<super::recipients::RateGate>,
    /// The byte budget for message bodies in memory, shared by every session; `None`: none.
    pub body_memory: Option<super::body_memory::MemoryGate>,
    /// Offer AUTH on connections without TLS (`smtp.allow_plaintext_auth`): for loopback
    /// testing only, since the password then crosses the network in clear (RFC 8314).
    pub allow_plaintext_auth: bool,
    /// Offer STARTTLS (RFC 3207) on connections without TLS: the relay has a certificate.
    pub starttls: bool,
    /// Take cluster-private MAIL parameters (`MailParams::cluster`): the cluster listener
    /// only, whose peers are authenticated nodes; elsewhere they are 555.
    pub cluster_params: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            hostname: String::from("localhost"),
            command_line_max: COMMAND_LINE_MIN,
            text_line_max: TEXT_LINE_MIN,
            // RFC 5321 §4.5.3.1.8: at least 100 recipients must be buffered.
            recipients_max: 100,
            message_size_max: 25 * 1024 * 1024,
            // Postfix smtpd_hard_error_limit.
            errors_max: 20,
            // Postfix smtpd_soft_error_limit and smtpd_error_sleep_time.
            error_delay_after: 10,
            error_delay: Duration::from_secs(1),
            junk_commands_max: JUNK_COMMANDS_MAX,
            local_domains: vec![String::from("localhost")],
            relay_networks: vec![
                ipnet::IpNet::V4(ipnet::Ipv4Net::new_assert(
                    std::net::Ipv4Addr::new(127, 0, 0, 0),
                    8,
                )),
                ipnet::IpNet::V6(ipnet::Ipv6Net::new_assert(
                    std::net::Ipv6Addr::LOCALHOST,
                    128,
                )),
            ],
            mailboxes: None,
            vrfy: false,
            expn: false,
            policy: crate::mime::Policy::default(),
            hopcount_limit: 50,
            ingest: None,
            message_rate: None,
            body_memory: None,
            allow_plaintext_auth: false,
            starttls: false,
            cluster_params: false,
        }
    }
}

/// A configuration the session cannot honour.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SessionConfigError {
    #[error("smtp.command_line_max must be at least {COMMAND_LINE_MIN} (RFC 5321 §4.5.3.1.4)")]
    CommandLineTooShort,
    #[error("smtp.errors_max must be at least 1")]
    NoErrorsAllowed,
    #[error("smtp.hostname must not be empty")]
    NoHostname,
    #[error("smtp.message_size_max must be at least 1")]
    NoMessageSize,
    #[error("smtp.recipients_max must be at least 1")]
    NoRecipients,
    #[error("smtp.text_line_max must be at least {TEXT_LINE_MIN} (RFC 5321 §4.5.3.1.6)")]
    TextLineTooShort,
}

impl SessionConfig {
    /// The relations the config loader must check before sessions start.
    pub fn check(&self) -> Result<(), SessionConfigError> {
        if self.hostname.is_empty() {
            return Err(SessionConfigError::NoHostname);
        }
        if self.command_line_max < COMMAND_LINE_MIN {
            return Err(SessionConfigError::CommandLineTooShort);
        }
        if self.text_line_max < TEXT_LINE_MIN {
            return Err(SessionConfigError::TextLineTooShort);
        }
        if self.recipients_max == 0 {
            return Err(SessionConfigError::NoRecipients);
        }
        if self.message_size_max == 0 {
            return Err(SessionConfigError::NoMessageSize);
        }
        if self.errors_max == 0 {
            return Err(SessionConfigError::NoErrorsAllowed);
        }
        Ok(())
    }

    fn body_limits(&self) -> BodyLimits {
        BodyLimits {
            size_max: self.message_size_max,
            line_max: self.text_line_max,
        }
    }
}

/// What a call produced: replies, encoded in order, and events for the driver.
#[derive(Debug, Default)]
pub struct Outbox {
    pub bytes: Vec<u8>,
    pub events: Vec<Event>,
    /// Tarpitting: how long the driver waits before writing `bytes` (then resets it).
    pub delay: Duration,
}

impl Outbox {
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.events.clear();
        self.delay = Duration::ZERO;
    }
}

/// Something the driver must do after writing `Outbox::bytes`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A message passed every check: store it, then call [`Session::submitted`].
    Submit(Box<Submission>),
    /// AUTH credentials to verify (with the failure limits and delay), then call
    /// [`Session::authenticated`].
    Authenticate(Credentials),
    /// MAIL passed every check of this node and the message rate is also counted across
    /// the cluster: ask it for this client, then call [`Session::rate_checked`].
    CheckRate(std::net::IpAddr),
    /// A transaction ended without a queue id: its data was refused, or storing it failed.
    /// One per such transaction, for the one-log-line-per-transaction rule.
    Rejected(TransactionSummary),
    /// STARTTLS was accepted: flush `bytes` (the 220), discard every byte the client sent
    /// after the command (RFC 3207 §5: pipelined plaintext must not reach the TLS session),
    /// run the handshake, then call [`Session::tls_established`] (or close on failure).
    StartTls,
    /// Flush `bytes`, then close the connection.
    Close(CloseReason),
}

/// What a client offered in AUTH PLAIN or LOGIN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    /// PLAIN's authorization identity when not empty (RFC 4616 §2); the driver refuses one
    /// that differs from `user`.
    pub authzid: Option<String>,
    pub user: String,
    pub password: Password,
}

/// A password from a SASL response: never shown by `Debug`, overwritten when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub fn new(password: String) -> Self {
        Password(password)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Drop for Password {
    fn drop(&mut self) {
        // Best effort without unsafe code: the bytes are zeroed before the allocation is
        // freed (copies made by earlier reallocations are out of reach).
        let mut bytes = mem::take(&mut self.0).into_bytes();
        bytes.fill(0);
        std::hint::black_box(&bytes);
    }
}

/// Why the driver refused credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthFailure {
    /// Wrong password, unknown user or a foreign authzid: 535 5.7.8 for all of them.
    Invalid,
    /// The client's address or the user name is over its failure limit: 454 4.7.0.
    Locked,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    Quit,
    ShuttingDown,
    TimedOut,
    TooManyErrors,
}

/// A message to store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Submission {
    pub envelope: Envelope,
    /// Local mailboxes the recipients resolved to (deduplicated): the message is delivered
    /// to them by the same durable write that stores it.
    pub mailboxes: Vec<String>,
    /// Addresses to deliver to other hosts: the remote RCPTs and what local aliases
    /// forward to (deduplicated). Empty when every recipient is local.
    pub remote: Vec<String>,
    /// MIME structure counts, for the transaction log.
    pub mime: crate::mime::MessageStats,
    pub origin: Origin,
    /// Unstuffed, CRLF line ends (BINARYMIME: as sent), without our Received header.
    pub body: Vec<u8>,
    /// When MAIL was accepted, for the log's duration.
    pub mail_at: SystemTime,
    /// The AUTH identity of the session, if it authenticated.
    pub authenticated: Option<String>,
    /// The client is in the relay networks (`relay.allowed_networks`): ours, like an
    /// authenticated one (its mail is signed, not checked).
    pub relay_client: bool,
    /// The TLS protocol and cipher of the session ("TLSv1.3 with cipher …"), if any.
    pub tls: Option<String>,
}

impl Submission {
    /// The Received header (ending in CRLF) to prepend when storing; see `smtp::received`.
    pub fn received_header(&self, id: QueueId, hostname: &str, now: SystemTime) -> String {
        received::received_header(
            &self.origin,
            self.tls.as_deref(),
            self.authenticated.as_deref(),
            &self.envelope.recipients,
            id,
            hostname,
            now,
        )
    }
}

/// A transaction that ended without a queue id, for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransactionSummary {
    /// Empty for the null sender.
    pub reverse_path: String,
    pub recipients: usize,
    /// Octets of data received (unstuffed), counted even when discarded.
    pub size: u64,
    pub reply: Reply,
}

/// Why the driver could not store a submission (an operating error, not the peer's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("the spool is applying backpressure")]
    Backpressure,
    #[error("the spool could not store the message")]
    Storage,
    /// A local recipient's copy could not be encrypted to their key: 451 4.3.0.
    #[error("a copy could not be encrypted")]
    Sealing,
    /// The sender checks could not finish (DNS failure, timeout): 451 4.7.0.
    #[error("the sender checks could not finish")]
    SenderCheckUnavailable,
    /// The From domain's DMARC policy refuses the message: 550 5.7.1.
    #[error("refused by the DMARC policy of the From domain")]
    DmarcRejected,
    /// SPF `fail` for the sender: 550 5.7.23.
    #[error("refused by SPF")]
    SpfRejected,
}

/// After HELO or EHLO.
#[derive(Debug)]
struct Helo {
    name: String,
    /// EHLO: ESMTP extensions (and their parameters) are available.
    extended: bool,
}

/// From an accepted MAIL to the end of its data.
#[derive(Debug)]
struct Transaction {
    envelope: Envelope,
    /// Local mailboxes the accepted recipients resolved to (deduplicated, in order).
    mailboxes: Vec<String>,
    /// Remote RCPTs and alias forwards.
    remote: Vec<String>,
    mail_at: SystemTime,
    /// 452 "too many recipients" answered so far (see the module doc).
    overshoot: usize,
}

/// Command-reading phases.
#[derive(Debug)]
enum Phase {
    /// Greeting sent, no HELO/EHLO yet.
    Greeted,
    Ready(Helo),
    /// MAIL accepted; RCPTs may follow.
    Mail(Helo, Transaction),
    /// Between BDAT chunks: the body so far is in the receiver.
    Chunked(Helo, Transaction, BodyReceiver),
}

/// Where an AUTH exchange is (RFC 4954 §4): the next line is a SASL response.
#[derive(Debug)]
enum SaslStep {
    /// `334 ` sent for PLAIN without an initial response.
    Plain,
    /// LOGIN: `334 Username:` sent.
    LoginUser,
    /// LOGIN: `334 Password:` sent.
    LoginPassword(String),
}

#[derive(Debug)]
enum State {
    Command(Phase),
    /// Discarding the rest of an over-long line up to its LF, then sending the reply.
    DrainLine(Phase, Reply),
    /// AUTH after EHLO: reading SASL response lines.
    Sasl(Helo, SaslStep),
    /// An Authenticate event is out; waiting for [`Session::authenticated`].
    Authenticating(Helo),
    /// A CheckRate event is out; waiting for [`Session::rate_checked`].
    CheckingRate(Helo, Transaction),
    /// After 354: message data until CRLF.CRLF.
    Data(Helo, Transaction, BodyReceiver),
    /// Inside the octets of one BDAT chunk.
    Chunk(Chunk),
    /// A Submit event is out; waiting for [`Session::submitted`].
    Submitting(Helo, Pending),
    /// A StartTls event is out; waiting for [`Session::tls_established`].
    StartingTls,
    Closed,
}

#[derive(Debug)]
struct Chunk {
    size: u64,
    remaining: u64,
    last: bool,
    sink: ChunkSink,
}

#[derive(Debug)]
enum ChunkSink {
    Accept(Helo, Transaction, BodyReceiver),
    /// BDAT outside a usable transaction: RFC 3030 §2 still sends the octets, so they are
    /// read and dropped, then `reply` is sent and the session continues in `after`.
    Discard {
        after: Phase,
        reply: Reply,
    },
}

/// What the summary of a submitted transaction needs if storing it fails, and the body's
/// memory reservation: held until the driver answers, since the spool holds the body until
/// then.
#[derive(Debug)]
struct Pending {
    reverse_path: String,
    recipients: usize,
    size: u64,
    reservation: Reservation,
}

/// One SMTP server session.
#[derive(Debug)]
pub struct Session {
    config: Arc<SessionConfig>,
    peer: SocketAddr,
    /// The client is inside `relay_networks` (decided once, at connect).
    relay_client: bool,
    errors: u32,
    /// Junk commands so far; reset with `errors` when a message is accepted.
    junk: u32,
    /// The connection is protected by TLS (after STARTTLS, or on an implicit-TLS listener):
    /// its protocol and cipher, for the Received header. AUTH is offered when it is set or
    /// `allow_plaintext_auth` is.
    tls: Option<String>,
    /// The AUTH identity once authenticated: may relay anywhere, named in Received.
    authenticated: Option<String>,
    /// The DNS block list that lists the client (set by the driver before any input):
    /// its recipients are refused unless it may relay or has authenticated.
    listed_by: Option<String>,
    state: State,
}

impl Session {
    /// A session for a new connection; encodes the 220 greeting into `out`.
    pub fn new(
        config: Arc<SessionConfig>,
        peer: SocketAddr,
        now: SystemTime,
        out: &mut Outbox,
    ) -> Session {
        // The greeting carries no time; `now` is in the signature for symmetry with the other
        // entry points and for a future connect timestamp.
        let _ = now;
        debug_assert_eq!(config.check(), Ok(()));
        // Dual-stack sockets report IPv4 clients as ::ffff:a.b.c.d.
        let ip = peer.ip().to_canonical();
        let relay_client = config.relay_networks.iter().any(|net| net.contains(&ip));
        Reply::greeting(&config.hostname).encode(&mut out.bytes);
        Session {
            config,
            peer,
            relay_client,
            errors: 0,
            junk: 0,
            tls: None,
            authenticated: None,
            listed_by: None,
            state: State::Command(Phase::Greeted),
        }
    }

    /// Processes buffered input; returns how many octets were consumed (see the module doc).
    pub fn handle_input(&mut self, input: &[u8], now: SystemTime, out: &mut Outbox) -> usize {
        let mut consumed = 0;
        while let Some(octets) = self.step(&input[consumed..], now, out) {
            consumed += octets;
        }
        consumed
    }

    /// The driver's answer to `Event::Submit`.
    pub fn submitted(
        &mut self,
        result: Result<QueueId, SubmitError>,
        now: SystemTime,
        out: &mut Outbox,
    ) {
        let _ = now;
        if !self.awaiting_submission() {
            // After a close (timeout, shutdown) the answer has nowhere to go; anything else
            // is a driver bug.
            debug_assert!(self.is_closed(), "submitted without Submit");
            return;
        }
        let State::Submitting(helo, mut pending) = mem::replace(&mut self.state, State::Closed)
        else {
            return;
        };
        // Stored or failed, the spool is done with the body: its memory goes back.
        pending.reservation.release();
        self.state = State::Command(Phase::Ready(helo));
        match result {
            Ok(id) => {
                self.errors = 0;
                self.junk = 0;
                Reply::queued(id).encode(&mut out.bytes);
            }
            Err(error) => {
                // Not counted as the client's error: storage is ours, and a refused
                // message may be a forgery the client relays in good faith.
                let reply = match error {
                    SubmitError::Backpressure | SubmitError::Storage => {
                        Reply::insufficient_storage()
                    }
                    SubmitError::SenderCheckUnavailable => Reply::sender_check_unavailable(),
                    SubmitError::Sealing => Reply::cannot_seal(),
                    SubmitError::DmarcRejected => Reply::dmarc_rejected(),
                    SubmitError::SpfRejected => Reply::spf_rejected(),
                };
                reply.encode(&mut out.bytes);
                out.events.push(Event::Rejected(TransactionSummary {
                    reverse_path: pending.reverse_path,
                    recipients: pending.recipients,
                    size: pending.size,
                    reply,
                }));
            }
        }
    }

    /// The driver's answer to `Event::Authenticate`: the canonical user name, or why not.
    /// The driver applies the failure delay before calling with an error.
    pub fn authenticated(&mut self, result: Result<String, AuthFailure>, out: &mut Outbox) {
        if !self.awaiting_authentication() {
            debug_assert!(self.is_closed(), "authenticated without Authenticate");
            return;
        }
        let State::Authenticating(helo) = mem::replace(&mut self.state, State::Closed) else {
            return;
        };
        let phase = Phase::Ready(helo);
        match result {
            Ok(user) => {
                self.authenticated = Some(user);
                self.state = State::Command(phase);
                self.reply(&Reply::auth_succeeded(), out);
            }
            Err(AuthFailure::Invalid) => self.refuse(phase, Reply::auth_invalid(), out),
            Err(AuthFailure::Locked) => self.refuse(phase, Reply::auth_locked(), out),
        }
    }

    /// The driver's answer to `Event::CheckRate`: whether the cluster admits the message.
    pub fn rate_checked(&mut self, admitted: bool, out: &mut Outbox) {
        let State::CheckingRate(helo, transaction) = mem::replace(&mut self.state, State::Closed)
        else {
            debug_assert!(self.is_closed(), "rate_checked without CheckRate");
            return;
        };
        if !admitted {
            return self.refuse(Phase::Ready(helo), Reply::message_rate_exceeded(), out);
        }
        self.state = State::Command(Phase::Mail(helo, transaction));
        self.reply(&Reply::sender_ok(), out);
    }

    /// The driver's answer to `Event::StartTls` once the handshake is done, and the way an
    /// implicit-TLS listener marks its sessions before any input. After STARTTLS the session
    /// starts over as if just greeted (RFC 3207 §4.2: the client's EHLO and any AUTH are
    /// forgotten; no new greeting is sent); the error and junk counts carry over.
    pub fn tls_established(&mut self, summary: String) {
        if matches!(self.state, State::StartingTls) {
            self.state = State::Command(Phase::Greeted);
            self.authenticated = None;
        } else if self.is_closed() {
            return;
        }
        self.tls = Some(summary);
    }

    /// The driver found the client on the DNS block list `zone` (RFC 5782). As Postfix's
    /// `reject_rbl_client` after `permit_mynetworks, permit_sasl_authenticated`: RCPT is
    /// refused with 554 5.7.1, except for relay networks and authenticated clients (a
    /// submission user on a dynamic address listed by a policy list must still get in).
    pub fn client_listed(&mut self, zone: String) {
        self.listed_by = Some(zone);
    }

    /// A StartTls event is out and not yet answered.
    pub fn awaiting_tls(&self) -> bool {
        matches!(self.state, State::StartingTls)
    }

    /// The peer was silent for too long.
    pub fn timed_out(&mut self, out: &mut Outbox) {
        if self.is_closed() {
            return;
        }
        self.close(
            Reply::timeout(&self.config.hostname),
            CloseReason::TimedOut,
            out,
        );
    }

    /// The server is stopping.
    pub fn shutting_down(&mut self, out: &mut Outbox) {
        if self.is_closed() {
            return;
        }
        let reply = Reply::shutting_down(&self.config.hostname);
        self.close(reply, CloseReason::ShuttingDown, out);
    }

    /// MAIL was accepted and the transaction has not ended.
    pub fn in_transaction(&self) -> bool {
        match &self.state {
            State::Command(phase) | State::DrainLine(phase, _) => {
                matches!(phase, Phase::Mail(..) | Phase::Chunked(..))
            }
            State::Data(..) | State::Submitting(..) => true,
            State::Chunk(chunk) => matches!(chunk.sink, ChunkSink::Accept(..)),
            State::Sasl(..)
            | State::Authenticating(..)
            | State::CheckingRate(..)
            | State::StartingTls
            | State::Closed => false,
        }
    }

    /// Inside DATA or a BDAT chunk: the driver applies the data timeout.
    pub fn receiving_data(&self) -> bool {
        matches!(self.state, State::Data(..) | State::Chunk(..))
    }

    /// Whether input may be fed now: no event is out waiting for the driver's answer and
    /// the session is not closed.
    pub fn wants_input(&self) -> bool {
        !matches!(
            self.state,
            State::Submitting(..)
                | State::Authenticating(..)
                | State::CheckingRate(..)
                | State::StartingTls
                | State::Closed
        )
    }

    pub fn awaiting_submission(&self) -> bool {
        matches!(self.state, State::Submitting(..))
    }

    pub fn awaiting_authentication(&self) -> bool {
        matches!(self.state, State::Authenticating(..))
    }

    /// The AUTH identity, once authenticated.
    pub fn authenticated_user(&self) -> Option<&str> {
        self.authenticated.as_deref()
    }

    /// AUTH is offered: on TLS, or in clear when the config allows it.
    fn auth_offered(&self) -> bool {
        self.tls.is_some() || self.config.allow_plaintext_auth
    }

    /// The client is in `relay_networks` (block lists are not consulted for it).
    pub fn is_relay_client(&self) -> bool {
        self.relay_client
    }

    /// The session is protected by TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The EHLO keywords. STARTTLS (RFC 3207) only without TLS and with a certificate; AUTH
    /// (RFC 4954) only where it is offered (see `auth_offered`).
    pub fn extensions(&self) -> Vec<Extension> {
        let mut extensions = vec![
            Extension::Pipelining,
            Extension::Size(self.config.message_size_max),
            Extension::EightBitMime,
            Extension::BinaryMime,
            Extension::EnhancedStatusCodes,
            Extension::SmtpUtf8,
            Extension::Chunking,
            Extension::Dsn,
            Extension::Help,
        ];
        if self.config.starttls && self.tls.is_none() {
            extensions.insert(extensions.len() - 1, Extension::StartTls);
        }
        if self.auth_offered() && self.authenticated.is_none() {
            extensions.insert(extensions.len() - 1, Extension::Auth(SASL_MECHANISMS));
        }
        extensions
    }

    /// One unit of progress; `None` when nothing more can happen without more input (or at
    /// all). `Some(0)` is returned only together with a state change.
    fn step(&mut self, input: &[u8], now: SystemTime, out: &mut Outbox) -> Option<usize> {
        match &mut self.state {
            State::Closed
            | State::Submitting(..)
            | State::Authenticating(..)
            | State::CheckingRate(..)
            | State::StartingTls => None,
            State::Command(_) => self.command_line(input, now, out),
            State::Sasl(..) => self.sasl_line(input, out),
            State::DrainLine(..) => {
                if input.is_empty() {
                    return None;
                }
                let Some(lf) = memchr(b'\n', input) else {
                    return Some(input.len());
                };
                if let State::DrainLine(phase, reply) = mem::replace(&mut self.state, State::Closed)
                {
                    self.state = State::Command(phase);
                    self.reject(reply, out);
                }
                Some(lf + 1)
            }
            State::Data(_, _, body) => {
                if input.is_empty() {
                    return None;
                }
                let (consumed, done) = body.receive(input);
                if done {
                    self.end_of_data(out);
                }
                Some(consumed)
            }
            State::Chunk(chunk) => {
                if chunk.remaining == 0 {
                    self.end_of_chunk(out);
                    return Some(0);
                }
                if input.is_empty() {
                    return None;
                }
                let take = usize::try_from(chunk.remaining)
                    .unwrap_or(usize::MAX)
                    .min(input.len());
                if let ChunkSink::Accept(_, _, body) = &mut chunk.sink {
                    body.receive(&input[..take]);
                }
                chunk.remaining -= take as u64;
                Some(take)
            }
        }
    }

    /// Frames and handles one command line.
    fn command_line(&mut self, input: &[u8], now: SystemTime, out: &mut Outbox) -> Option<usize> {
        match line::frame(input, self.config.command_line_max) {
            Frame::Incomplete => None,
            Frame::TooLong { consumed, complete } => {
                if complete {
                    self.reject(Reply::line_too_long(), out);
                } else if let State::Command(phase) = mem::replace(&mut self.state, State::Closed) {
                    self.state = State::DrainLine(phase, Reply::line_too_long());
                }
                Some(consumed)
            }
            Frame::Line {
                line,
                ending,
                consumed,
            } => {
                match ending {
                    // RFC 5321 §2.3.8: a bare LF does not end a command line; it is refused
                    // rather than guessed at, as it is in message data.
                    LineEnd::BareLf => self.reject(Reply::bare_lf_in_command(), out),
                    LineEnd::CrLf => match command::parse(line) {
                        Ok(command) => self.command(command, now, out),
                        Err(error) => self.reject(error.reply(), out),
                    },
                }
                Some(consumed)
            }
        }
    }

    /// Takes the command phase out of the state (the state is `Closed` until put back).
    fn take_phase(&mut self) -> Phase {
        match mem::replace(&mut self.state, State::Closed) {
            State::Command(phase) => phase,
            other => {
                // Commands are dispatched only in `State::Command`.
                debug_assert!(false, "command outside command state: {other:?}");
                self.state = other;
                Phase::Greeted
            }
        }
    }

    fn command(&mut self, command: Command, now: SystemTime, out: &mut Outbox) {
        let junk = command.verb().spec().counts_as_junk;
        if junk {
            self.junk = self.junk.saturating_add(1);
        }
        self.dispatch(command, now, out);
        // Past the junk limit a junk command counts as an error after its (positive) reply,
        // as in Postfix.
        if junk && self.junk > self.config.junk_commands_max && !self.is_closed() {
            self.count_error(out);
        }
    }

    fn dispatch(&mut self, command: Command, now: SystemTime, out: &mut Outbox) {
        match command {
            Command::Helo { domain } => self.helo(domain, false, out),
            Command::Ehlo { domain } => self.helo(domain, true, out),
            Command::Mail { from, params, .. } => self.mail(from, params, now, out),
            Command::Rcpt { to, params } => self.rcpt(to, params, out),
            Command::Data => self.data(out),
            Command::Bdat { size, last } => self.bdat(size, last),
            Command::Rset => {
                let phase = self.take_phase();
                self.state = State::Command(reset(phase));
                self.reply(&Reply::ok(), out);
            }
            Command::Noop { .. } => self.reply(&Reply::ok(), out),
            Command::Help { .. } => self.reply(&Reply::help(), out),
            Command::Vrfy { argument } => self.vrfy(&argument, out),
            Command::Expn { argument } => self.expn(&argument, out),
            Command::Turn => self.reject(Reply::turn_not_implemented(), out),
            Command::Send { .. } => self.reject(Reply::send_not_implemented(), out),
            Command::StartTls => self.starttls(out),
            Command::Auth { argument } => self.auth(&argument, out),
            Command::Quit => self.close(Reply::closing(), CloseReason::Quit, out),
        }
    }

    /// HELO/EHLO: RFC 5321 §4.1.4 makes it a reset of any transaction.
    fn helo(&mut self, name: String, extended: bool, out: &mut Outbox) {
        let _ = self.take_phase();
        self.state = State::Command(Phase::Ready(Helo { name, extended }));
        let reply = if extended {
            Reply::ehlo(&self.config.hostname, &self.extensions())
        } else {
            Reply::helo(&self.config.hostname)
        };
        self.reply(&reply, out);
    }

    /// STARTTLS (RFC 3207 §4): 220, then nothing more is read until the handshake is done.
    fn starttls(&mut self, out: &mut Outbox) {
        if self.tls.is_some() {
            return self.reject(Reply::tls_already_active(), out);
        }
        if !self.config.starttls {
            return self.reject(Reply::not_implemented(), out);
        }
        match self.take_phase() {
            phase @ (Phase::Mail(..) | Phase::Chunked(..)) => {
                self.refuse(phase, Reply::tls_in_transaction(), out)
            }
            _ => {
                self.state = State::StartingTls;
                self.reply(&Reply::ready_to_start_tls(), out);
                out.events.push(Event::StartTls);
            }
        }
    }

    /// AUTH (RFC 4954 §4): `AUTH mechanism [initial-response]`.
    fn auth(&mut self, argument: &str, out: &mut Outbox) {
        let helo = match self.take_phase() {
            Phase::Ready(helo) => helo,
            phase @ Phase::Greeted => return self.refuse(phase, Reply::need_helo(), out),
            phase => return self.refuse(phase, Reply::auth_in_transaction(), out),
        };
        if self.authenticated.is_some() {
            return self.refuse(Phase::Ready(helo), Reply::already_authenticated(), out);
        }
        if !self.auth_offered() {
            return self.refuse(Phase::Ready(helo), Reply::auth_needs_encryption(), out);
        }
        let argument = argument.trim();
        let (mechanism, initial) = match argument.split_once(' ') {
            Some((mechanism, initial)) => (mechanism, Some(initial.trim().as_bytes())),
            None => (argument, None),
        };
        if mechanism.is_empty() {
            let reply = Reply::syntax("AUTH mechanism [initial-response]");
            return self.refuse(Phase::Ready(helo), reply, out);
        }
        if mechanism.eq_ignore_ascii_case("PLAIN") {
            match initial {
                Some(response) => self.sasl_response(helo, SaslStep::Plain, response, out),
                None => {
                    self.state = State::Sasl(helo, SaslStep::Plain);
                    self.reply(&Reply::auth_challenge(""), out);
                }
            }
        } else if mechanism.eq_ignore_ascii_case("LOGIN") {
            match initial {
                Some(response) => self.sasl_response(helo, SaslStep::LoginUser, response, out),
                None => {
                    self.state = State::Sasl(helo, SaslStep::LoginUser);
                    self.reply(&Reply::auth_challenge(LOGIN_USERNAME), out);
                }
            }
        } else {
            self.refuse(Phase::Ready(helo), Reply::auth_unknown_mechanism(), out);
        }
    }

    /// Frames one SASL response line (bounded by [`SASL_LINE_MAX`]).
    fn sasl_line(&mut self, input: &[u8], out: &mut Outbox) -> Option<usize> {
        let frame = line::frame(input, SASL_LINE_MAX);
        if frame == Frame::Incomplete {
            return None;
        }
        let State::Sasl(helo, step) = mem::replace(&mut self.state, State::Closed) else {
            return None;
        };
        match frame {
            Frame::Incomplete => None,
            Frame::TooLong { consumed, complete } => {
                let reply = Reply::auth_line_too_long();
                if complete {
                    self.refuse(Phase::Ready(helo), reply, out);
                } else {
                    self.state = State::DrainLine(Phase::Ready(helo), reply);
                }
                Some(consumed)
            }
            Frame::Line {
                line,
                ending,
                consumed,
            } => {
                match ending {
                    LineEnd::BareLf => {
                        self.refuse(Phase::Ready(helo), Reply::bare_lf_in_command(), out)
                    }
                    LineEnd::CrLf => self.sasl_response(helo, step, line, out),
                }
                Some(consumed)
            }
        }
    }

    /// One SASL response (base64 text, or `*` to cancel).
    fn sasl_response(&mut self, helo: Helo, step: SaslStep, response: &[u8], out: &mut Outbox) {
        if response == b"*" {
            return self.refuse(Phase::Ready(helo), Reply::auth_cancelled(), out);
        }
        let credentials = match step {
            SaslStep::Plain => match sasl::decode_plain(response) {
                Ok(sasl::Plain {
                    authzid,
                    authcid,
                    password,
                }) => Credentials {
                    authzid,
                    user: authcid,
                    password: Password::new(password),
                },
                Err(_) => return self.refuse(Phase::Ready(helo), Reply::auth_bad_response(), out),
            },
            SaslStep::LoginUser => match login_field(response) {
                Some(user) => {
                    self.state = State::Sasl(helo, SaslStep::LoginPassword(user.expose().into()));
                    return self.reply(&Reply::auth_challenge(LOGIN_PASSWORD), out);
                }
                None => return self.refuse(Phase::Ready(helo), Reply::auth_bad_response(), out),
            },
            SaslStep::LoginPassword(user) => match login_field(response) {
                Some(password) => Credentials {
                    authzid: None,
                    user,
                    password,
                },
                None => return self.refuse(Phase::Ready(helo), Reply::auth_bad_response(), out),
            },
        };
        out.events.push(Event::Authenticate(credentials));
        self.state = State::Authenticating(helo);
    }

    fn mail(&mut self, from: ReversePath, params: MailParams, now: SystemTime, out: &mut Outbox) {
        let helo = match self.take_phase() {
            Phase::Ready(helo) => helo,
            phase @ Phase::Greeted => return self.refuse(phase, Reply::need_helo(), out),
            phase => return self.refuse(phase, Reply::nested_mail(), out),
        };
        let refusal = if !helo.extended && params != MailParams::default() {
            // Known gap: an explicit BODY=7BIT after HELO equals the default and passes.
            Some(Reply::parameters_need_ehlo())
        } else if let Some((keyword, _)) = params
            .cluster
            .first()
            .filter(|_| !self.config.cluster_params)
        {
            Some(Reply::parameter_not_recognized(keyword))
        } else if !params.smtputf8 && !from.is_ascii() {
            Some(Reply::utf8_needs_smtputf8())
        } else if params
            .size
            .is_some_and(|size| size > self.config.message_size_max)
        {
            // RFC 1870 §6.1: refuse a declared size over the limit before the data.
            Some(Reply::message_too_large())
        } else if self
            .config
            .ingest
            .as_ref()
            .is_some_and(|gate| !gate.0.accepting())
        {
            // The outbound queue is over its limits: before the data, not after it.
            Some(Reply::insufficient_storage())
        } else if !self.body_memory_admits(params.size) {
            Some(Reply::body_memory_exhausted())
        } else if !self.relay_client
            && self
                .config
                .message_rate
                .as_ref()
                .is_some_and(|gate| !gate.0.admit(self.peer.ip().to_canonical()))
        {
            // Last, so that a MAIL refused for another reason does not use up the rate.
            Some(Reply::message_rate_exceeded())
        } else {
            None
        };
        if let Some(reply) = refusal {
            return self.refuse(Phase::Ready(helo), reply, out);
        }
        let transaction = Transaction {
            envelope: Envelope {
                reverse_path: from.into_string(),
                params,
                recipients: Vec::new(),
            },
            mailboxes: Vec::new(),
            remote: Vec::new(),
            mail_at: now,
            overshoot: 0,
        };
        if !self.relay_client
            && self
                .config
                .message_rate
                .as_ref()
                .is_some_and(|gate| gate.0.shared())
        {
            out.events
                .push(Event::CheckRate(self.peer.ip().to_canonical()));
            self.state = State::CheckingRate(helo, transaction);
            return;
        }
        self.state = State::Command(Phase::Mail(helo, transaction));
        self.reply(&Reply::sender_ok(), out);
    }

    fn rcpt(&mut self, to: ForwardPath, params: RcptParams, out: &mut Outbox) {
        let (helo, mut transaction) = match self.take_phase() {
            Phase::Mail(helo, transaction) => (helo, transaction),
            phase @ Phase::Chunked(..) => {
                return self.refuse(phase, Reply::recipient_after_bdat(), out)
            }
            phase => return self.refuse(phase, Reply::need_mail(), out),
        };
        let refusal = if !helo.extended && params != RcptParams::default() {
            Some(Reply::parameters_need_ehlo())
        } else if !transaction.envelope.params.smtputf8 && !to.is_ascii() {
            Some(Reply::utf8_needs_smtputf8())
        } else if transaction.envelope.recipients.len() >= self.config.recipients_max {
            transaction.overshoot += 1;
            if transaction.overshoot <= self.config.recipients_max {
                self.state = State::Command(Phase::Mail(helo, transaction));
                return self.reply(&Reply::too_many_recipients(), out);
            }
            Some(Reply::too_many_recipients())
        } else if !self.may_relay_to(&to) {
            Some(Reply::relay_denied(to.as_str()))
        } else if let Some(zone) = self
            .listed_by
            .as_deref()
            .filter(|_| !self.relay_client && self.authenticated.is_none())
        {
            Some(Reply::client_blocklisted(
                &self.peer.ip().to_canonical(),
                zone,
            ))
        } else {
            match self.local_lookup(&to, transaction.envelope.params.size.unwrap_or(0)) {
                Some(Lookup::Unknown) => Some(Reply::unknown_mailbox(to.as_str())),
                Some(Lookup::Elsewhere) => {
                    self.state = State::Command(Phase::Mail(helo, transaction));
                    // The nodes disagree for now: the peer's queue retries.
                    return self.reply(&Reply::mailbox_elsewhere(to.as_str()), out);
                }
                Some(Lookup::OverQuota) => {
                    self.state = State::Command(Phase::Mail(helo, transaction));
                    // A full mailbox is the recipient's problem, not the client's error.
                    return self.reply(&Reply::mailbox_full(to.as_str()), out);
                }
                Some(Lookup::Deliver { mailboxes, forward }) => {
                    extend_unique(&mut transaction.mailboxes, mailboxes);
                    extend_unique(&mut transaction.remote, forward);
                    None
                }
                None => {
                    if self.config.mailboxes.is_some() && !self.is_local_forward_path(&to) {
                        extend_unique(&mut transaction.remote, vec![to.as_str().to_string()]);
                    }
                    None
                }
            }
        };
        if let Some(reply) = refusal {
            return self.refuse(Phase::Mail(helo, transaction), reply, out);
        }
        transaction.envelope.recipients.push(Recipient {
            address: to.into_string(),
            notify: params.notify,
            orcpt: params.orcpt,
        });
        self.state = State::Command(Phase::Mail(helo, transaction));
        self.reply(&Reply::recipient_ok(), out);
    }

    /// MAIL's question to the body budget: is there room for the declared size, or without
    /// one for the first buffer a body takes? Only asked, not reserved: a client that
    /// declares a size and then idles holds nothing (the body reserves as it arrives).
    fn body_memory_admits(&self, declared: Option<u64>) -> bool {
        let Some(gate) = &self.config.body_memory else {
            return true;
        };
        let first_buffer = (INITIAL_CAPACITY_MAX as u64).min(self.config.message_size_max);
        let fits = gate.0.available() >= declared.unwrap_or(0).max(first_buffer);
        if !fits {
            gate.0.refused(super::body_memory::Refusal::Mail);
        }
        fits
    }

    /// Resolves a local recipient through the mailbox seam; `None` for remote addresses
    /// or when no mailboxes are configured.
    fn local_lookup(&self, to: &ForwardPath, size: u64) -> Option<Lookup> {
        let mailboxes = self.config.mailboxes.as_ref()?;
        self.is_local_forward_path(to)
            .then(|| mailboxes.0.lookup(to.as_str(), size))
    }

    fn is_local_forward_path(&self, to: &ForwardPath) -> bool {
        to.domain()
            .is_none_or(|domain| self.is_local_domain(domain))
    }

    fn is_local_domain(&self, domain: &str) -> bool {
        self.config
            .local_domains
            .iter()
            .any(|local| local.eq_ignore_ascii_case(domain))
    }

    /// VRFY (RFC 5321 §3.5.2): no disclosure unless `vrfy` is on; then a local mailbox is
    /// confirmed, an unknown local address refused, anything else "cannot verify".
    fn vrfy(&mut self, argument: &str, out: &mut Outbox) {
        let address = argument
            .trim()
            .trim_start_matches('<')
            .trim_end_matches('>');
        if address.is_empty() {
            return self.reject(Reply::syntax("VRFY address"), out);
        }
        let answer = match (&self.config.mailboxes, self.config.vrfy) {
            (Some(mailboxes), true) if self.is_local_address(address) => {
                match mailboxes.0.verify(address) {
                    Some(canonical) => Some(Reply::verified(&canonical)),
                    None if mailboxes.0.lookup(address, 0) == Lookup::Unknown => {
                        return self.reject(Reply::unknown_mailbox(address), out)
                    }
                    None => None,
                }
            }
            _ => None,
        };
        self.reply(&answer.unwrap_or_else(Reply::cannot_vrfy), out);
    }

    /// EXPN (RFC 5321 §3.5.2): refused unless `expn` is on; then a list's members.
    fn expn(&mut self, argument: &str, out: &mut Outbox) {
        let address = argument
            .trim()
            .trim_start_matches('<')
            .trim_end_matches('>');
        match (&self.config.mailboxes, self.config.expn) {
            (Some(mailboxes), true) => match mailboxes.0.expand(address) {
                Some(members) if self.is_local_address(address) => {
                    self.reply(&Reply::list_members(&members), out)
                }
                _ => self.reject(Reply::not_a_list(address), out),
            },
            _ => self.reject(Reply::expn_not_implemented(), out),
        }
    }

    fn is_local_address(&self, address: &str) -> bool {
        match address.rsplit_once('@') {
            Some((_, domain)) => self.is_local_domain(domain),
            None => address.eq_ignore_ascii_case("postmaster"),
        }
    }

    /// Relay control: never an open relay. Local domains (and the bare postmaster, RFC 5321
    /// §4.5.1) take mail from anyone; other domains only from clients in `relay_networks`.
    fn may_relay_to(&self, to: &ForwardPath) -> bool {
        match to.domain() {
            None => true,
            Some(domain) => {
                self.relay_client
                    || self.authenticated.is_some()
                    || self
                        .config
                        .local_domains
                        .iter()
                        .any(|local| local.eq_ignore_ascii_case(domain))
            }
        }
    }

    fn data(&mut self, out: &mut Outbox) {
        let (helo, transaction) = match self.take_phase() {
            Phase::Mail(helo, transaction) => (helo, transaction),
            // RFC 3030 §3: DATA after BDAT is 503 and leaves the transaction undefined; we
            // end it, as a failed BDAT does.
            Phase::Chunked(helo, ..) => {
                return self.refuse(Phase::Ready(helo), Reply::data_after_bdat(), out)
            }
            phase => return self.refuse(phase, Reply::need_mail(), out),
        };
        if transaction.envelope.recipients.is_empty() {
            return self.refuse(
                Phase::Mail(helo, transaction),
                Reply::no_valid_recipients(),
                out,
            );
        }
        if transaction.envelope.params.body == BodyType::BinaryMime {
            let phase = Phase::Mail(helo, transaction);
            return self.refuse(phase, Reply::binarymime_needs_bdat(), out);
        }
        let body = BodyReceiver::dot(
            self.config.body_limits(),
            transaction.envelope.params.size,
            self.config.body_memory.clone(),
        );
        self.state = State::Data(helo, transaction, body);
        self.reply(&Reply::start_mail_input(), out);
    }

    /// BDAT: the chunk octets follow the command line whatever the answer will be (RFC 3030
    /// §2), so a BDAT that cannot be accepted still reads its chunk, then answers 503.
    fn bdat(&mut self, size: u64, last: bool) {
        let sink = match self.take_phase() {
            Phase::Mail(helo, transaction) if !transaction.envelope.recipients.is_empty() => {
                let params = &transaction.envelope.params;
                let text = params.body != BodyType::BinaryMime;
                let memory = self.config.body_memory.clone();
                let body =
                    BodyReceiver::chunks(self.config.body_limits(), text, params.size, memory);
                ChunkSink::Accept(helo, transaction, body)
            }
            Phase::Chunked(helo, transaction, body) => ChunkSink::Accept(helo, transaction, body),
            Phase::Greeted => ChunkSink::Discard {
                after: Phase::Greeted,
                reply: Reply::need_helo(),
            },
            Phase::Ready(helo) => ChunkSink::Discard {
                after: Phase::Ready(helo),
                reply: Reply::need_mail(),
            },
            // MAIL without an accepted RCPT: the failed BDAT ends the transaction.
            Phase::Mail(helo, _) => ChunkSink::Discard {
                after: Phase::Ready(helo),
                reply: Reply::need_recipient(),
            },
        };
        self.state = State::Chunk(Chunk {
            size,
            remaining: size,
            last,
            sink,
        });
    }

    fn end_of_chunk(&mut self, out: &mut Outbox) {
        let State::Chunk(chunk) = mem::replace(&mut self.state, State::Closed) else {
            return;
        };
        match chunk.sink {
            ChunkSink::Discard { after, reply } => self.refuse(after, reply, out),
            ChunkSink::Accept(helo, transaction, body) => {
                if let Some(error) = body.error() {
                    // Refuse now rather than after the last chunk: the client can stop.
                    self.refuse_message(helo, transaction, body.size(), error.reply(), out);
                } else if chunk.last {
                    self.finish_message(helo, transaction, body, out);
                } else {
                    self.state = State::Command(Phase::Chunked(helo, transaction, body));
                    self.reply(&Reply::chunk_received(chunk.size), out);
                }
            }
        }
    }

    fn end_of_data(&mut self, out: &mut Outbox) {
        if let State::Data(helo, transaction, body) = mem::replace(&mut self.state, State::Closed) {
            self.finish_message(helo, transaction, body, out);
        }
    }

    /// The data is complete: submit it, or refuse it if a check failed.
    fn finish_message(
        &mut self,
        helo: Helo,
        transaction: Transaction,
        body: BodyReceiver,
        out: &mut Outbox,
    ) {
        let size = body.size();
        let (mut body, reservation) = match body.finish() {
            Ok(stored) => stored,
            Err(error) => return self.refuse_message(helo, transaction, size, error.reply(), out),
        };
        // DATA content always ends in CRLF; BDAT content may not (RFC 3030 leaves it to the
        // client). Every stored message ends in CRLF, so a next hop's DATA and a POP3 RETR
        // can send it as stored and their octet counts are the stored length.
        if !body.is_empty() && !body.ends_with(b"\r\n") {
            body.extend_from_slice(b"\r\n");
        }
        // Content policy on the whole message (DATA and BDAT LAST alike): a violation is
        // refused here, so nothing of it is queued.
        let mime = match self.config.policy.check(&body) {
            Ok(stats) => stats,
            Err(violation) => {
                let reply = Reply::content_refused(&violation.reason());
                return self.refuse_message(helo, transaction, size, reply, out);
            }
        };
        if mime.received > self.config.hopcount_limit {
            let reply = Reply::too_many_hops(mime.received, self.config.hopcount_limit);
            return self.refuse_message(helo, transaction, size, reply, out);
        }
        let origin = self.origin(&helo, &transaction.envelope.params);
        let pending = Pending {
            reverse_path: transaction.envelope.reverse_path.clone(),
            recipients: transaction.envelope.recipients.len(),
            size,
            reservation,
        };
        out.events.push(Event::Submit(Box::new(Submission {
            envelope: transaction.envelope,
            mailboxes: transaction.mailboxes,
            remote: transaction.remote,
            mime,
            origin,
            body,
            mail_at: transaction.mail_at,
            authenticated: self.authenticated.clone(),
            relay_client: self.relay_client,
            tls: self.tls.clone(),
        })));
        self.state = State::Submitting(helo, pending);
    }

    /// Ends a transaction whose data was refused.
    fn refuse_message(
        &mut self,
        helo: Helo,
        transaction: Transaction,
        size: u64,
        reply: Reply,
        out: &mut Outbox,
    ) {
        out.events.push(Event::Rejected(TransactionSummary {
            reverse_path: transaction.envelope.reverse_path,
            recipients: transaction.envelope.recipients.len(),
            size,
            reply: reply.clone(),
        }));
        self.refuse(Phase::Ready(helo), reply, out);
    }

    fn origin(&self, helo: &Helo, params: &MailParams) -> Origin {
        // RFC 3848 and RFC 6531 §4.3 "with" keywords: S for TLS, A for AUTH.
        let mut protocol = String::from(match (helo.extended, params.smtputf8) {
            (false, _) => "SMTP",
            (true, false) => "ESMTP",
            (true, true) => "UTF8SMTP",
        });
        if helo.extended {
            if self.tls.is_some() {
                protocol.push('S');
            }
            if self.authenticated.is_some() {
                protocol.push('A');
            }
        }
        Origin {
            client_ip: self.peer.ip().to_canonical().to_string(),
            client_port: self.peer.port(),
            helo: helo.name.clone(),
            protocol,
        }
    }

    /// Sends a positive (or otherwise uncounted) reply.
    fn reply(&mut self, reply: &Reply, out: &mut Outbox) {
        reply.encode(&mut out.bytes);
    }

    /// Puts `phase` back and sends a refusal the client caused.
    fn refuse(&mut self, phase: Phase, reply: Reply, out: &mut Outbox) {
        self.state = State::Command(phase);
        self.reject(reply, out);
    }

    /// Sends a reply the client caused and counts it if negative; closes at the limit.
    fn reject(&mut self, reply: Reply, out: &mut Outbox) {
        reply.encode(&mut out.bytes);
        if reply.code().is_negative() {
            self.count_error(out);
        }
    }

    fn count_error(&mut self, out: &mut Outbox) {
        self.errors = self.errors.saturating_add(1);
        if self.errors > self.config.error_delay_after {
            out.delay = out.delay.saturating_add(self.config.error_delay);
        }
        if self.errors >= self.config.errors_max.max(1) {
            let reply = Reply::too_many_errors(&self.config.hostname);
            self.close(reply, CloseReason::TooManyErrors, out);
        }
    }

    fn close(&mut self, reply: Reply, reason: CloseReason, out: &mut Outbox) {
        reply.encode(&mut out.bytes);
        out.events.push(Event::Close(reason));
        self.state = State::Closed;
    }
}

/// RSET (RFC 5321 §4.1.1.5): the transaction ends, HELO/EHLO stays.
fn extend_unique(into: &mut Vec<String>, items: Vec<String>) {
    for item in items {
        if !into.contains(&item) {
            into.push(item);
        }
    }
}

/// A LOGIN response: base64 of a UTF-8 user name or password, 1 to 255 octets.
fn login_field(response: &[u8]) -> Option<Password> {
    let bytes = sasl::decode_base64(response).ok()?;
    let text = match String::from_utf8(bytes) {
        Ok(text) => Password::new(text),
        Err(error) => {
            let mut bytes = error.into_bytes();
            bytes.fill(0);
            return None;
        }
    };
    (!text.expose().is_empty() && text.expose().len() <= SASL_FIELD_MAX).then_some(text)
}

fn reset(phase: Phase) -> Phase {
    match phase {
        Phase::Greeted => Phase::Greeted,
        Phase::Ready(helo) | Phase::Mail(helo, _) | Phase::Chunked(helo, ..) => Phase::Ready(helo),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::time::{Duration, UNIX_EPOCH};

    const NOW: Duration = Duration::from_secs(1_700_000_000);
    const OUTSIDE: &str = "192.0.2.1:40000";
    const INSIDE: &str = "127.0.0.1:40000";
    const GREETING: &str = "220 mx.test ESMTP relay";
    const EHLO_REPLY: [&str; 10] = [
        "250-mx.test",
        "250-PIPELINING",
        "250-SIZE 26214400",
        "250-8BITMIME",
        "250-BINARYMIME",
        "250-ENHANCEDSTATUSCODES",
        "250-SMTPUTF8",
        "250-CHUNKING",
        "250-DSN",
        "250 HELP",
    ];

    fn now() -> SystemTime {
        UNIX_EPOCH + NOW
    }

    fn config() -> SessionConfig {
        SessionConfig {
            hostname: "mx.test".into(),
            local_domains: vec!["localhost".into(), "Example.NET".into()],
            ..SessionConfig::default()
        }
    }

    /// A connection driver as `server::smtp` is: it keeps unconsumed bytes, re-presents them with
    /// the next read, answers Submit events and stops at Close.
    struct Driver {
        session: Session,
        buffer: Vec<u8>,
        output: Vec<u8>,
        events: Vec<Event>,
        outcomes: VecDeque<Result<QueueId, SubmitError>>,
        next_id: u64,
    }

    impl Driver {
        fn new(config: &SessionConfig, peer: &str) -> Self {
            let mut out = Outbox::default();
            let peer = peer.parse().unwrap();
            let session = Session::new(Arc::new(config.clone()), peer, now(), &mut out);
            assert!(out.events.is_empty());
            Self {
                session,
                buffer: Vec::new(),
                output: out.bytes,
                events: Vec::new(),
                outcomes: VecDeque::new(),
                next_id: 0,
            }
        }

        fn feed(&mut self, chunk: &[u8]) {
            self.buffer.extend_from_slice(chunk);
            loop {
                let mut out = Outbox::default();
                let consumed = self.session.handle_input(&self.buffer, now(), &mut out);
                assert!(consumed <= self.buffer.len());
                self.buffer.drain(..consumed);
                self.output.extend_from_slice(&out.bytes);
                let mut again = consumed > 0;
                for event in out.events {
                    let submit = matches!(event, Event::Submit(_));
                    if let Event::Authenticate(credentials) = &event {
                        assert!(self.session.awaiting_authentication());
                        let result = test_verify(credentials);
                        let mut out = Outbox::default();
                        self.session.authenticated(result, &mut out);
                        self.output.extend_from_slice(&out.bytes);
                        self.events.extend(out.events);
                        again = true;
                    }
                    self.events.push(event);
                    if submit {
                        assert!(self.session.awaiting_submission());
                        self.next_id += 1;
                        let result = self
                            .outcomes
                            .pop_front()
                            .unwrap_or(Ok(QueueId(self.next_id)));
                        let mut out = Outbox::default();
                        self.session.submitted(result, now(), &mut out);
                        self.output.extend_from_slice(&out.bytes);
                        self.events.extend(out.events);
                        again = true;
                    }
                }
                if !again || self.session.is_closed() {
                    break;
                }
            }
        }

        fn lines(&self) -> Vec<String> {
            let text = String::from_utf8_lossy(&self.output);
            text.split_inclusive("\r\n")
                .map(|line| {
                    assert!(line.ends_with("\r\n"), "unterminated reply {line:?}");
                    line.trim_end_matches("\r\n").to_owned()
                })
                .collect()
        }
    }

    /// The tests' directory: alice/secret; "locked" is over its failure limit.
    fn test_verify(credentials: &Credentials) -> Result<String, AuthFailure> {
        match (credentials.user.as_str(), credentials.password.expose()) {
            ("locked", _) => Err(AuthFailure::Locked),
            (_, _) if credentials.authzid.as_deref().is_some_and(|z| z != "alice") => {
                Err(AuthFailure::Invalid)
            }
            ("alice", "secret") => Ok("alice".into()),
            _ => Err(AuthFailure::Invalid),
        }
    }

    struct Run {
        lines: Vec<String>,
        events: Vec<Event>,
        unconsumed: Vec<u8>,
    }

    /// Runs `input` in one piece, then split at every offset and byte by byte, and checks
    /// that the output, the events and what is left unconsumed never depend on the split.
    fn run_with(
        config: &SessionConfig,
        peer: &str,
        input: &[u8],
        outcomes: &[Result<QueueId, SubmitError>],
    ) -> Run {
        let drive = |pieces: &[&[u8]]| {
            let mut driver = Driver::new(config, peer);
            driver.outcomes = outcomes.iter().copied().collect();
            for piece in pieces {
                driver.feed(piece);
            }
            driver
        };
        let whole = drive(&[input]);
        let splits = (0..=input.len()).map(|k| {
            let (a, b) = input.split_at(k);
            (format!("split at {k}"), drive(&[a, b]))
        });
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        let byte_by_byte = std::iter::once((String::from("byte by byte"), drive(&bytes)));
        for (how, other) in splits.chain(byte_by_byte) {
            assert_eq!(
                String::from_utf8_lossy(&other.output),
                String::from_utf8_lossy(&whole.output),
                "{how}"
            );
            assert_eq!(other.events, whole.events, "{how}");
            assert_eq!(other.buffer, whole.buffer, "{how}");
        }
        Run {
            lines: whole.lines(),
            events: whole.events,
            unconsumed: whole.buffer,
        }
    }

    fn run(input: &str) -> Run {
        run_with(&config(), OUTSIDE, input.as_bytes(), &[])
    }

    /// The replies after the greeting and the EHLO reply.
    fn after_ehlo(run: &Run) -> Vec<&str> {
        assert_eq!(run.lines[0], GREETING);
        for (line, expected) in run.lines[1..11].iter().zip(EHLO_REPLY) {
            // SIZE follows the configured limit.
            if !expected.starts_with("250-SIZE ") {
                assert_eq!(line, expected);
            }
        }
        run.lines[11..].iter().map(String::as_str).collect()
    }

    fn submissions(run: &Run) -> Vec<&Submission> {
        run.events
            .iter()
            .filter_map(|e| match e {
                Event::Submit(s) => Some(&**s),
                _ => None,
            })
            .collect()
    }

    fn rejections(run: &Run) -> Vec<&TransactionSummary> {
        run.events
            .iter()
            .filter_map(|e| match e {
                Event::Rejected(r) => Some(r),
                _ => None,
            })
            .collect()
    }

    fn closes(run: &Run) -> Vec<CloseReason> {
        run.events
            .iter()
            .filter_map(|e| match e {
                Event::Close(reason) => Some(*reason),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn pipelined_transaction_replies_in_order() {
        let run = run(concat!(
            "EHLO client.example\r\n",
            "MAIL FROM:<alice@client.example> SIZE=100 BODY=8BITMIME\r\n",
            "RCPT TO:<bob@localhost> NOTIFY=FAILURE ORCPT=rfc822;bob@localhost\r\n",
            "RCPT TO:<carol@EXAMPLE.net>\r\n",
            "DATA\r\n",
            "Subject: hi\r\n",
            "\r\n",
            "..leading dot\r\n",
            ".\r\n",
            "QUIT\r\n",
        ));
        assert_eq!(
            after_ehlo(&run),
            [
                "250 2.1.0 Ok",
                "250 2.1.5 Ok",
                "250 2.1.5 Ok",
                "354 End data with <CR><LF>.<CR><LF>",
                "250 2.0.0 Ok: queued as 0000000000000001",
                "221 2.0.0 Bye",
            ]
        );
        let submitted = submissions(&run);
        assert_eq!(submitted.len(), 1);
        let submission = submitted[0];
        assert_eq!(submission.body, b"Subject: hi\r\n\r\n.leading dot\r\n");
        assert_eq!(submission.envelope.reverse_path, "alice@client.example");
        assert_eq!(submission.envelope.params.size, Some(100));
        assert_eq!(submission.envelope.params.body, BodyType::EightBitMime);
        assert_eq!(
            submission.envelope.recipients,
            [
                Recipient {
                    address: "bob@localhost".into(),
                    notify: Some(crate::envelope::Notify::FAILURE),
                    orcpt: Some("rfc822;bob@localhost".into()),
                },
                Recipient {
                    address: "carol@EXAMPLE.net".into(),
                    notify: None,
                    orcpt: None,
                },
            ]
        );
        assert_eq!(
            submission.origin,
            Origin {
                client_ip: "192.0.2.1".into(),
                client_port: 40000,
                helo: "client.example".into(),
                protocol: "ESMTP".into(),
            }
        );
        assert_eq!(submission.mail_at, now());
        assert_eq!(closes(&run), [CloseReason::Quit]);
        assert!(run.unconsumed.is_empty());
    }

    #[test]
    fn several_transactions_in_one_session() {
        let run = run(concat!(
            "EHLO c\r\n",
            "MAIL FROM:<>\r\nRCPT TO:<a@localhost>\r\nDATA\r\nfirst\r\n.\r\n",
            "MAIL FROM:<b@c>\r\nRCPT TO:<postmaster>\r\nDATA\r\nsecond\r\n.\r\n",
            "RSET\r\nNOOP\r\n",
        ));
        assert_eq!(
            after_ehlo(&run),
            [
                "250 2.1.0 Ok",
                "250 2.1.5 Ok",
                "354 End data with <CR><LF>.<CR><LF>",
                "250 2.0.0 Ok: queued as 0000000000000001",
                "250 2.1.0 Ok",
                "250 2.1.5 Ok",
                "354 End data with <CR><LF>.<CR><LF>",
                "250 2.0.0 Ok: queued as 0000000000000002",
                "250 2.0.0 Ok",
                "250 2.0.0 Ok",
            ]
        );
        let submitted = submissions(&run);
        assert_eq!(submitted[0].envelope.reverse_path, "");
        assert_eq!(submitted[0].body, b"first\r\n");
        assert_eq!(submitted[1].envelope.recipients[0].address, "postmaster");
        assert_eq!(submitted[1].body, b"second\r\n");
    }

    #[test]
    fn submission_stops_consumption_until_submitted() {
        let mut out = Outbox::default();
        let peer = OUTSIDE.parse().unwrap();
        let mut session = Session::new(Arc::new(config()), peer, now(), &mut out);
        let input =
            b"HELO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<x@localhost>\r\nDATA\r\nhi\r\n.\r\nNOOP\r\n";
        out.clear();
        assert!(!session.in_transaction());
        let consumed = session.handle_input(input, now(), &mut out);
        assert_eq!(&input[consumed..], b"NOOP\r\n");
        assert!(session.awaiting_submission());
        assert!(session.in_transaction());
        assert!(!session.receiving_data());
        assert!(matches!(out.events.as_slice(), [Event::Submit(_)]));
        // Nothing more is consumed until the driver answers.
        assert_eq!(session.handle_input(b"NOOP\r\n", now(), &mut out), 0);
        out.clear();
        session.submitted(Err(SubmitError::Backpressure), now(), &mut out);
        assert_eq!(
            out.bytes,
            b"452 4.3.1 Error: insufficient system storage\r\n"
        );
        assert_eq!(
            out.events,
            [Event::Rejected(TransactionSummary {
                reverse_path: "a@b".into(),
                recipients: 1,
                size: 4,
                reply: Reply::insufficient_storage(),
            })]
        );
        assert!(!session.in_transaction());
        out.clear();
        assert_eq!(session.handle_input(b"NOOP\r\n", now(), &mut out), 6);
        assert_eq!(out.bytes, b"250 2.0.0 Ok\r\n");
    }

    #[test]
    fn a_closed_ingest_gate_answers_452_at_mail_and_opens_again() {
        use std::sync::atomic::{AtomicBool, Ordering};
        struct Switch(AtomicBool);
        impl crate::smtp::IngestGate for Switch {
            fn accepting(&self) -> bool {
                self.0.load(Ordering::Relaxed)
            }
        }
        let switch = Arc::new(Switch(AtomicBool::new(false)));
        let config = SessionConfig {
            ingest: Some(crate::smtp::Gate(switch.clone())),
            ..config()
        };
        let mut out = Outbox::default();
        let mut session = Session::new(Arc::new(config), OUTSIDE.parse().unwrap(), now(), &mut out);
        session.handle_input(b"EHLO c\r\n", now(), &mut out);
        out.clear();
        session.handle_input(b"MAIL FROM:<a@b>\r\n", now(), &mut out);
        assert_eq!(
            out.bytes,
            b"452 4.3.1 Error: insufficient system storage\r\n"
        );
        assert!(!session.in_transaction());
        switch.0.store(true, Ordering::Relaxed);
        out.clear();
        session.handle_input(b"MAIL FROM:<a@b>\r\n", now(), &mut out);
        assert_eq!(out.bytes, b"250 2.1.0 Ok\r\n");
    }

    /// The body budget (`SessionConfig::body_memory`): 452 4.3.1 at MAIL and at the end of
    /// data, reservations given back at every way a body ends.
    mod body_memory {
        use super::*;
        use crate::smtp::body_memory::tests::Counted;
        use crate::smtp::BodyMemory;
        use std::sync::atomic::Ordering;

        const KIB: u64 = 1024;
        const EXHAUSTED: &str =
            "452 4.3.1 Error: insufficient system storage for message data, try again later";

        fn budgeted(max: u64) -> (Arc<Counted>, SessionConfig) {
            let (budget, gate) = Counted::gate(max);
            let config = SessionConfig {
                body_memory: Some(gate),
                ..config()
            };
            (budget, config)
        }

        /// `octets` of body in 64-octet lines.
        fn body(octets: usize) -> String {
            let line = format!("{}\r\n", "b".repeat(62));
            line.repeat(octets / line.len())
        }

        #[test]
        fn mail_refuses_a_declared_size_or_a_first_buffer_the_budget_cannot_cover() {
            let (budget, config) = budgeted(100 * KIB);
            let mut driver = Driver::new(&config, OUTSIDE);
            driver.feed(b"EHLO c\r\n");
            driver.output.clear();
            driver.feed(b"MAIL FROM:<a@b> SIZE=200000\r\n");
            driver.feed(b"MAIL FROM:<a@b> SIZE=100000\r\nRSET\r\n");
            driver.feed(b"MAIL FROM:<a@b>\r\nRSET\r\n");
            // Another session's body takes 40 KiB: a first buffer (64 KiB) no longer fits.
            assert!(budget.take(40 * KIB));
            driver.feed(b"MAIL FROM:<a@b>\r\nMAIL FROM:<a@b> SIZE=1000\r\n");
            assert_eq!(
                driver.lines(),
                [
                    EXHAUSTED,
                    "250 2.1.0 Ok",
                    "250 2.0.0 Ok",
                    "250 2.1.0 Ok",
                    "250 2.0.0 Ok",
                    EXHAUSTED,
                    EXHAUSTED,
                ]
            );
            assert_eq!(budget.refused_mail.load(Ordering::SeqCst), 3);
            assert_eq!(
                budget.in_flight(),
                40 * KIB,
                "MAIL asks, it does not reserve"
            );
            budget.give_back(40 * KIB);
            driver.output.clear();
            driver.feed(b"MAIL FROM:<a@b>\r\n");
            assert_eq!(driver.lines(), ["250 2.1.0 Ok"], "open again once it frees");
        }

        #[test]
        fn data_past_the_budget_is_refused_at_its_end_and_the_session_goes_on() {
            // MAIL passes (a first buffer of 64 KiB fits); the body outgrows the budget.
            let (budget, config) = budgeted(80 * KIB);
            let mut driver = Driver::new(&config, OUTSIDE);
            driver.feed(b"EHLO c\r\n");
            driver.output.clear();
            let big = body(120 * KIB as usize);
            let input = format!(
                "MAIL FROM:<a@b>\r\nRCPT TO:<x@localhost>\r\nDATA\r\n{big}.\r\n\
                 MAIL FROM:<a@b>\r\nRCPT TO:<x@localhost>\r\nDATA\r\nsmall\r\n.\r\n"
            );
            // In reads of 4 KiB, as from a socket.
            for piece in input.as_bytes().chunks(4096) {
                driver.feed(piece);
            }
            assert_eq!(
                driver.lines(),
                [
                    "250 2.1.0 Ok",
                    "250 2.1.5 Ok",
                    "354 End data with <CR><LF>.<CR><LF>",
                    EXHAUSTED,
                    "250 2.1.0 Ok",
                    "250 2.1.5 Ok",
                    "354 End data with <CR><LF>.<CR><LF>",
                    "250 2.0.0 Ok: queued as 0000000000000001",
                ]
            );
            let rejected: Vec<_> = driver
                .events
                .iter()
                .filter_map(|e| match e {
                    Event::Rejected(summary) => Some(summary),
                    _ => None,
                })
                .collect();
            assert_eq!(rejected.len(), 1);
            assert_eq!(
                rejected[0].size,
                big.len() as u64,
                "counted though discarded"
            );
            assert_eq!(rejected[0].reply, Reply::body_memory_exhausted());
            assert_eq!(budget.refused_data.load(Ordering::SeqCst), 1);
            assert_eq!(budget.in_flight(), 0, "every reservation given back");

            // A body refused while another session holds part of the budget is accepted
            // once that part is given back.
            let (budget, config) = budgeted(200 * KIB);
            assert!(budget.take(100 * KIB));
            let mut driver = Driver::new(&config, OUTSIDE);
            let mail =
                format!("EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<x@localhost>\r\nDATA\r\n{big}.\r\n");
            driver.feed(mail.as_bytes());
            assert_eq!(driver.lines().last().map(String::as_str), Some(EXHAUSTED));
            budget.give_back(100 * KIB);
            driver.output.clear();
            driver.feed(
                mail.as_bytes()
                    .strip_prefix(b"EHLO c\r\n")
                    .unwrap_or_default(),
            );
            assert_eq!(
                driver.lines().last().map(String::as_str),
                Some("250 2.0.0 Ok: queued as 0000000000000001")
            );
            assert_eq!(budget.in_flight(), 0);
        }

        #[test]
        fn bdat_past_the_budget_is_refused_at_the_end_of_its_chunk() {
            let (budget, config) = budgeted(80 * KIB);
            let mut driver = Driver::new(&config, OUTSIDE);
            let big = body(100 * KIB as usize);
            let input = format!(
                "EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<x@localhost>\r\nBDAT 10\r\n0123456789\
                 BDAT {} LAST\r\n{big}RSET\r\n\
                 MAIL FROM:<a@b>\r\nRCPT TO:<x@localhost>\r\nBDAT 7 LAST\r\nsmall\r\n",
                big.len()
            );
            driver.feed(input.as_bytes());
            assert_eq!(
                driver.lines()[11..],
                [
                    "250 2.1.0 Ok",
                    "250 2.1.5 Ok",
                    "250 2.0.0 Ok: 10 octets received",
                    EXHAUSTED,
                    "250 2.0.0 Ok",
                    "250 2.1.0 Ok",
                    "250 2.1.5 Ok",
                    "250 2.0.0 Ok: queued as 0000000000000001",
                ]
            );
            assert_eq!(budget.in_flight(), 0);
        }

        #[test]
        fn a_reservation_lasts_until_the_submission_is_answered_or_the_body_dropped() {
            let (budget, config) = budgeted(64 * KIB);
            let config = Arc::new(config);
            let mut out = Outbox::default();
            let mut session = Session::new(
                Arc::clone(&config),
                OUTSIDE.parse().unwrap(),
                now(),
                &mut out,
            );
            let input =
                b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<x@localhost>\r\nDATA\r\nhi\r\n.\r\n";
            session.handle_input(input, now(), &mut out);
            assert!(session.awaiting_submission());
            let held = budget.in_flight();
            assert!(
                held >= 4,
                "the stored body is still reserved while the spool has it"
            );
            session.submitted(Ok(QueueId(1)), now(), &mut out);
            assert_eq!(budget.in_flight(), 0, "given back once stored");

            // In the middle of DATA, then the connection drops.
            session.handle_input(
                b"MAIL FROM:<a@b>\r\nRCPT TO:<x@localhost>\r\nDATA\r\nsome text\r\n",
                now(),
                &mut out,
            );
            assert!(session.receiving_data());
            assert!(budget.in_flight() > 0);
            drop(session);
            assert_eq!(budget.in_flight(), 0, "given back when the connection ends");

            // Between BDAT chunks, then RSET; and a timeout.
            let mut session = Session::new(
                Arc::clone(&config),
                OUTSIDE.parse().unwrap(),
                now(),
                &mut out,
            );
            session.handle_input(
                b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<x@localhost>\r\nBDAT 4\r\nabcd",
                now(),
                &mut out,
            );
            assert!(budget.in_flight() > 0);
            session.handle_input(b"RSET\r\n", now(), &mut out);
            assert_eq!(budget.in_flight(), 0, "given back at RSET");
            session.handle_input(
                b"MAIL FROM:<a@b>\r\nRCPT TO:<x@localhost>\r\nDATA\r\nx\r\n",
                now(),
                &mut out,
            );
            assert!(budget.in_flight() > 0);
            session.timed_out(&mut out);
            assert_eq!(budget.in_flight(), 0, "given back at a timeout");
        }
    }

    #[test]
    fn error_delay_is_requested_exactly_past_the_soft_limit() {
        let config = SessionConfig {
            errors_max: 5,
            error_delay_after: 2,
            error_delay: Duration::from_millis(300),
            ..config()
        };
        let mut out = Outbox::default();
        let mut session = Session::new(Arc::new(config), OUTSIDE.parse().unwrap(), now(), &mut out);
        out.clear();
        // Successes never ask for a delay, nor do errors up to the soft limit.
        for (line, delayed) in [
            ("EHLO c", false),
            ("BOGUS 1", false),
            ("NOOP", false),
            ("BOGUS 2", false),
            ("NOOP", false),
            ("BOGUS 3", true),
            ("NOOP", false),
            ("BOGUS 4", true),
        ] {
            let input = format!("{line}\r\n");
            assert_eq!(
                session.handle_input(input.as_bytes(), now(), &mut out),
                input.len()
            );
            let expect = if delayed {
                Duration::from_millis(300)
            } else {
                Duration::ZERO
            };
            assert_eq!(out.delay, expect, "{line}");
            out.clear();
        }
        // The error at the hard limit is delayed too; nothing after the close is read.
        session.handle_input(b"BOGUS 5\r\nBOGUS 6\r\n", now(), &mut out);
        assert_eq!(out.delay, Duration::from_millis(300));
        assert_eq!(out.events, [Event::Close(CloseReason::TooManyErrors)]);
    }

    #[test]
    fn pipelined_errors_add_up_and_a_delivery_resets_the_count() {
        let config = SessionConfig {
            error_delay_after: 1,
            error_delay: Duration::from_secs(1),
            ..config()
        };
        let mut out = Outbox::default();
        let mut session = Session::new(Arc::new(config), OUTSIDE.parse().unwrap(), now(), &mut out);
        out.clear();
        session.handle_input(b"EHLO c\r\nX\r\nX\r\nX\r\n", now(), &mut out);
        assert_eq!(out.delay, Duration::from_secs(2));
        out.clear();
        session.handle_input(
            b"MAIL FROM:<a@b>\r\nRCPT TO:<x@localhost>\r\nDATA\r\nhi\r\n.\r\n",
            now(),
            &mut out,
        );
        assert!(session.awaiting_submission());
        session.submitted(Ok(QueueId(1)), now(), &mut out);
        out.clear();
        // Accepted mail forgives: the next error is within the soft limit again.
        session.handle_input(b"X\r\n", now(), &mut out);
        assert_eq!(out.delay, Duration::ZERO);
    }

    #[test]
    fn cluster_parameters_only_where_configured() {
        let mut out = Outbox::default();
        let peer: SocketAddr = "192.0.2.1:1000".parse().unwrap();
        let now = SystemTime::UNIX_EPOCH;
        for (cluster_params, expected) in [(false, "555 "), (true, "250 ")] {
            let config = Arc::new(SessionConfig {
                cluster_params,
                ..config()
            });
            let mut session = Session::new(config, peer, now, &mut out);
            session.handle_input(b"EHLO c\r\n", now, &mut out);
            out.bytes.clear();
            session.handle_input(b"MAIL FROM:<> XQUEUE=a.0000000000000001\r\n", now, &mut out);
            let reply = String::from_utf8_lossy(&out.bytes).into_owned();
            assert!(reply.starts_with(expected), "{cluster_params}: {reply}");
            out.bytes.clear();
        }
    }

    #[test]
    fn message_rate_answers_450_at_mail_except_for_relay_clients() {
        use std::sync::atomic::{AtomicU32, Ordering};
        /// Admits `0` more messages, then refuses; counts the questions.
        struct Budget(AtomicU32, AtomicU32);
        impl crate::smtp::MessageRateGate for Budget {
            fn admit(&self, _client: std::net::IpAddr) -> bool {
                self.1.fetch_add(1, Ordering::Relaxed);
                self.0
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_ok()
            }
        }
        let budget = Arc::new(Budget(AtomicU32::new(1), AtomicU32::new(0)));
        let config = SessionConfig {
            message_rate: Some(crate::smtp::RateGate(budget.clone())),
            ..config()
        };
        let mut out = Outbox::default();
        let mut session = Session::new(
            Arc::new(config.clone()),
            OUTSIDE.parse().unwrap(),
            now(),
            &mut out,
        );
        session.handle_input(b"EHLO c\r\n", now(), &mut out);
        out.clear();
        // A MAIL refused for its own reasons does not ask (nor use up the budget).
        session.handle_input(b"MAIL FROM:<a@b> SIZE=999999999999\r\n", now(), &mut out);
        assert_eq!(budget.1.load(Ordering::Relaxed), 0);
        out.clear();
        session.handle_input(b"MAIL FROM:<a@b>\r\nRSET\r\n", now(), &mut out);
        assert_eq!(out.bytes, b"250 2.1.0 Ok\r\n250 2.0.0 Ok\r\n");
        out.clear();
        session.handle_input(b"MAIL FROM:<a@b>\r\n", now(), &mut out);
        assert_eq!(
            out.bytes,
            b"450 4.7.1 Error: too much mail from your address, try again later\r\n"
        );
        assert!(!session.in_transaction());
        assert_eq!(budget.1.load(Ordering::Relaxed), 2);
        // The operator's own networks are exempt: the gate is not even asked.
        let mut out = Outbox::default();
        let mut inside = Session::new(Arc::new(config), INSIDE.parse().unwrap(), now(), &mut out);
        inside.handle_input(b"EHLO c\r\nMAIL FROM:<a@b>\r\n", now(), &mut out);
        assert!(inside.in_transaction());
        assert_eq!(budget.1.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_shared_rate_asks_the_driver_after_the_nodes_own_gate() {
        /// Admits everything here; the cluster decides (`shared`).
        struct Shared;
        impl crate::smtp::MessageRateGate for Shared {
            fn admit(&self, _client: std::net::IpAddr) -> bool {
                true
            }
            fn shared(&self) -> bool {
                true
            }
        }
        let config = SessionConfig {
            message_rate: Some(crate::smtp::RateGate(Arc::new(Shared))),
            ..config()
        };
        let mut out = Outbox::default();
        let mut session = Session::new(
            Arc::new(config.clone()),
            OUTSIDE.parse().unwrap(),
            now(),
            &mut out,
        );
        session.handle_input(b"EHLO c\r\n", now(), &mut out);
        out.clear();
        // Pipelined RCPT waits behind the question: no reply until the driver answers.
        let input = b"MAIL FROM:<a@b>\r\nRCPT TO:<x@localhost>\r\n";
        let taken = session.handle_input(input, now(), &mut out);
        assert_eq!(taken, "MAIL FROM:<a@b>\r\n".len());
        assert!(out.bytes.is_empty());
        let client: std::net::IpAddr = OUTSIDE.parse::<SocketAddr>().unwrap().ip();
        assert_eq!(out.events, [Event::CheckRate(client)]);
        assert!(!session.wants_input());
        out.clear();
        session.rate_checked(true, &mut out);
        assert_eq!(out.bytes, b"250 2.1.0 Ok\r\n");
        assert!(session.in_transaction());
        session.handle_input(&input[taken..], now(), &mut out);
        out.clear();
        session.handle_input(b"RSET\r\nMAIL FROM:<a@b>\r\n", now(), &mut out);
        out.clear();
        session.rate_checked(false, &mut out);
        assert_eq!(
            out.bytes,
            b"450 4.7.1 Error: too much mail from your address, try again later\r\n"
        );
        assert!(!session.in_transaction());
        assert!(session.wants_input());
        // The operator's own networks are not asked about.
        let mut out = Outbox::default();
        let mut inside = Session::new(Arc::new(config), INSIDE.parse().unwrap(), now(), &mut out);
        inside.handle_input(b"EHLO c\r\nMAIL FROM:<a@b>\r\n", now(), &mut out);
        assert!(inside.in_transaction());
        assert!(out.events.is_empty());
    }

    #[test]
    fn storage_failure_answers_452_and_the_session_goes_on() {
        let input = concat!(
            "EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<x@localhost>\r\nDATA\r\nhi\r\n.\r\n",
            "MAIL FROM:<a@b>\r\nRCPT TO:<x@localhost>\r\nDATA\r\nagain\r\n.\r\n",
        );
        let run = run_with(
            &config(),
            OUTSIDE,
            input.as_bytes(),
            &[Err(SubmitError::Storage)],
        );
        let replies = after_ehlo(&run);
        assert_eq!(replies[3], "452 4.3.1 Error: insufficient system storage");
        assert_eq!(replies[7], "250 2.0.0 Ok: queued as 0000000000000002");
        assert_eq!(rejections(&run).len(), 1);
        assert_eq!(submissions(&run).len(), 2);
    }

    #[test]
    fn flags_follow_the_states() {
        let mut out = Outbox::default();
        let peer = OUTSIDE.parse().unwrap();
        let mut session = Session::new(Arc::new(config()), peer, now(), &mut out);
        let mut feed =
            |session: &mut Session, input: &[u8]| session.handle_input(input, now(), &mut out);
        assert_eq!(feed(&mut session, b"EHLO c\r\nMAIL FROM:<a@b>\r\n"), 25);
        assert!(session.in_transaction() && !session.receiving_data());
        assert_eq!(
            feed(&mut session, b"RCPT TO:<x@localhost>\r\nDATA\r\npartial"),
            36
        );
        assert!(session.receiving_data());
        assert_eq!(feed(&mut session, b"\r\n.\r"), 4);
        assert!(session.receiving_data());
        assert_eq!(feed(&mut session, b"\nRSET\r\n"), 1);
        assert!(session.awaiting_submission());
    }

    #[test]
    fn helo_is_plain_smtp_without_extensions() {
        let run = run(concat!(
            "HELO client.example\r\n",
            "MAIL FROM:<a@b> SIZE=10\r\n",
            "MAIL FROM:<a@b>\r\n",
            "RCPT TO:<c@localhost> NOTIFY=NEVER\r\n",
            "RCPT TO:<c@localhost>\r\n",
            "DATA\r\n.\r\n",
        ));
        assert_eq!(
            run.lines,
            [
                GREETING,
                "250 mx.test",
                "555 5.5.4 Error: ESMTP parameters require EHLO",
                "250 2.1.0 Ok",
                "555 5.5.4 Error: ESMTP parameters require EHLO",
                "250 2.1.5 Ok",
                "354 End data with <CR><LF>.<CR><LF>",
                "250 2.0.0 Ok: queued as 0000000000000001",
            ]
        );
        assert_eq!(submissions(&run)[0].origin.protocol, "SMTP");
        assert_eq!(submissions(&run)[0].body, b"");
    }

    #[test]
    fn sequence_errors() {
        let run = run(concat!(
            "MAIL FROM:<a@b>\r\n",
            "RCPT TO:<a@localhost>\r\n",
            "DATA\r\n",
            "EHLO c\r\n",
            "RCPT TO:<a@localhost>\r\n",
            "DATA\r\n",
            "MAIL FROM:<a@b>\r\n",
            "MAIL FROM:<a@b>\r\n",
            "DATA\r\n",
            "RCPT TO:<a@localhost>\r\n",
            "RSET\r\n",
            "RCPT TO:<a@localhost>\r\n",
        ));
        assert_eq!(
            run.lines[..4],
            [
                GREETING,
                "503 5.5.1 Error: send HELO/EHLO first",
                "503 5.5.1 Error: need MAIL command",
                "503 5.5.1 Error: need MAIL command",
            ]
        );
        assert_eq!(
            run.lines[14..],
            [
                "503 5.5.1 Error: need MAIL command",
                "503 5.5.1 Error: need MAIL command",
                "250 2.1.0 Ok",
                "503 5.5.1 Error: nested MAIL command",
                "554 5.5.1 Error: no valid recipients",
                "250 2.1.5 Ok",
                "250 2.0.0 Ok",
                "503 5.5.1 Error: need MAIL command",
            ]
        );
    }

    #[test]
    fn helo_resets_the_transaction() {
        let run = run("EHLO a\r\nMAIL FROM:<a@b>\r\nEHLO b\r\nRCPT TO:<x@localhost>\r\n");
        assert_eq!(run.lines[12..22], EHLO_REPLY);
        assert_eq!(run.lines[22], "503 5.5.1 Error: need MAIL command");
    }

    #[test]
    fn other_commands() {
        let run = run(concat!(
            "EHLO c\r\n",
            "NOOP\r\nNOOP anything at all\r\nHELP\r\nHELP DATA\r\nVRFY root\r\nVRFY\r\n",
            "EXPN staff\r\nTURN\r\nSEND FROM:<a@b>\r\nSTARTTLS\r\nAUTH PLAIN\r\nFOO\r\n",
            "SOML FROM:<a@b>\r\nRSET\r\nsaml from:<a@b>\r\n",
        ));
        assert_eq!(
            after_ehlo(&run),
            [
                "250 2.0.0 Ok",
                "250 2.0.0 Ok",
                "214 2.0.0 Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT HELP VRFY",
                "214 2.0.0 Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT HELP VRFY",
                "252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery",
                "501 5.5.4 Syntax: VRFY address",
                "502 5.5.1 Error: EXPN not available",
                "502 5.5.1 Error: TURN is obsolete (RFC 5321 Appendix F.1)",
                "502 5.5.1 Error: SEND is obsolete (RFC 5321 Appendix F.6)",
                "502 5.5.1 Error: command not implemented",
                // AUTH without TLS (and without allow_plaintext_auth): RFC 4954 §6.
                "538 5.7.11 Error: encryption required for requested authentication mechanism",
                "500 5.5.1 Error: command not recognized",
                "250 2.1.0 Ok",
                "250 2.0.0 Ok",
                "250 2.1.0 Ok",
            ]
        );
    }

    #[test]
    fn parameters_and_addresses() {
        let run = run(concat!(
            "EHLO c\r\n",
            "MAIL FROM:<a@b> FOO=BAR\r\n",
            "MAIL FROM:<a@b> SIZE=abc\r\n",
            "MAIL FROM:<a@@b>\r\n",
            "MAIL FROM: <a@b> SIZE=26214401\r\n",
            "MAIL FROM: <a@b> SIZE=26214400 RET=HDRS ENVID=x+2By\r\n",
            "RCPT TO:<x@localhost> FOO\r\n",
            "RCPT TO:<x@@localhost>\r\n",
            "RCPT TO:<x@localhost> NOTIFY=NEVER,DELAY\r\n",
            "RCPT TO: <x@localhost> NOTIFY=never\r\n",
        ));
        assert_eq!(
            after_ehlo(&run),
            [
                "555 5.5.4 Unsupported option: FOO",
                "501 5.5.4 Bad SIZE parameter value",
                "501 5.1.7 Bad sender address syntax",
                "552 5.3.4 Error: message size exceeds fixed limit",
                "250 2.1.0 Ok",
                "555 5.5.4 Unsupported option: FOO",
                "501 5.1.3 Bad recipient address syntax",
                "501 5.5.4 Bad NOTIFY parameter value",
                "250 2.1.5 Ok",
            ]
        );
    }

    #[test]
    fn utf8_addresses_need_smtputf8() {
        let run = run(concat!(
            "EHLO c\r\n",
            "MAIL FROM:<jörg@b.example>\r\n",
            "MAIL FROM:<a@b.example>\r\n",
            "RCPT TO:<jörg@localhost>\r\n",
            "RSET\r\n",
            "MAIL FROM:<jörg@b.example> SMTPUTF8\r\n",
            "RCPT TO:<jörg@localhost>\r\n",
            "DATA\r\nSubject: é\r\n.\r\n",
        ));
        assert_eq!(
            after_ehlo(&run),
            [
                "553 5.6.7 Error: non-ASCII address requires the SMTPUTF8 parameter (RFC 6531)",
                "250 2.1.0 Ok",
                "553 5.6.7 Error: non-ASCII address requires the SMTPUTF8 parameter (RFC 6531)",
                "250 2.0.0 Ok",
                "250 2.1.0 Ok",
                "250 2.1.5 Ok",
                "354 End data with <CR><LF>.<CR><LF>",
                "250 2.0.0 Ok: queued as 0000000000000001",
            ]
        );
        let submission = submissions(&run)[0];
        assert_eq!(submission.origin.protocol, "UTF8SMTP");
        assert_eq!(submission.envelope.recipients[0].address, "jörg@localhost");
        assert!(submission.envelope.params.smtputf8);
    }

    #[test]
    fn relay_control() {
        let input = concat!(
            "EHLO c\r\nMAIL FROM:<a@b>\r\n",
            "RCPT TO:<x@localhost>\r\n",
            "RCPT TO:<x@LOCALHOST>\r\n",
            "RCPT TO:<x@example.net>\r\n",
            "RCPT TO:<postmaster>\r\n",
            "RCPT TO:<x@elsewhere.example>\r\n",
            "RCPT TO:<x@localhost.elsewhere.example>\r\n",
            "RCPT TO:<x@[127.0.0.1]>\r\n",
            "RCPT TO:<@localhost:x@elsewhere.example>\r\n",
        );
        let denied = |address: &str| format!("554 5.7.1 <{address}>: Relay access denied");
        let outside = run_with(&config(), OUTSIDE, input.as_bytes(), &[]);
        assert_eq!(
            after_ehlo(&outside),
            [
                "250 2.1.0 Ok".to_owned(),
                "250 2.1.5 Ok".to_owned(),
                "250 2.1.5 Ok".to_owned(),
                "250 2.1.5 Ok".to_owned(),
                "250 2.1.5 Ok".to_owned(),
                denied("x@elsewhere.example"),
                denied("x@localhost.elsewhere.example"),
                denied("x@[127.0.0.1]"),
                denied("x@elsewhere.example"),
            ]
        );
        for inside in [INSIDE, "[::1]:25", "[::ffff:127.0.0.2]:25"] {
            let run = run_with(&config(), inside, input.as_bytes(), &[]);
            assert!(
                after_ehlo(&run)[1..].iter().all(|r| *r == "250 2.1.5 Ok"),
                "{inside}"
            );
        }
        let mut no_relay = config();
        no_relay.relay_networks.clear();
        let run = run_with(&no_relay, INSIDE, input.as_bytes(), &[]);
        assert_eq!(after_ehlo(&run)[5], denied("x@elsewhere.example"));
    }

    #[test]
    fn recipient_limit_answers_452_without_counting_errors() {
        let mut config = config();
        config.recipients_max = 2;
        config.errors_max = 2;
        let input = concat!(
            "EHLO c\r\nMAIL FROM:<a@b>\r\n",
            "RCPT TO:<1@localhost>\r\nRCPT TO:<2@localhost>\r\n",
            "RCPT TO:<3@localhost>\r\nRCPT TO:<4@localhost>\r\n",
            "DATA\r\nx\r\n.\r\n",
            "MAIL FROM:<a@b>\r\n",
            "RCPT TO:<1@localhost>\r\nRCPT TO:<2@localhost>\r\nRCPT TO:<3@localhost>\r\n",
            "RCPT TO:<4@localhost>\r\nRCPT TO:<5@localhost>\r\nRCPT TO:<6@localhost>\r\n",
        );
        let run = run_with(&config, OUTSIDE, input.as_bytes(), &[]);
        let replies = after_ehlo(&run);
        assert_eq!(replies[3], "452 4.5.3 Error: too many recipients");
        assert_eq!(replies[4], "452 4.5.3 Error: too many recipients");
        assert_eq!(replies[6], "250 2.0.0 Ok: queued as 0000000000000001");
        assert_eq!(submissions(&run)[0].envelope.recipients.len(), 2);
        // Overshoot beyond the limit again counts: two more 452s reach errors_max.
        assert_eq!(
            replies[10..],
            [
                "452 4.5.3 Error: too many recipients",
                "452 4.5.3 Error: too many recipients",
                "452 4.5.3 Error: too many recipients",
                "452 4.5.3 Error: too many recipients",
                "421 4.7.0 mx.test Error: too many errors",
            ]
        );
        assert_eq!(closes(&run), [CloseReason::TooManyErrors]);
    }

    #[test]
    fn too_many_errors_closes_and_stops_consuming() {
        let mut config = config();
        config.errors_max = 3;
        let input = b"FOO\r\nBAR\r\nNOOP\r\nBAZ\r\nNOOP\r\nQUIT\r\n";
        let run = run_with(&config, OUTSIDE, input, &[]);
        assert_eq!(
            run.lines,
            [
                GREETING,
                "500 5.5.1 Error: command not recognized",
                "500 5.5.1 Error: command not recognized",
                "250 2.0.0 Ok",
                "500 5.5.1 Error: command not recognized",
                "421 4.7.0 mx.test Error: too many errors",
            ]
        );
        assert_eq!(closes(&run), [CloseReason::TooManyErrors]);
        assert_eq!(run.unconsumed, b"NOOP\r\nQUIT\r\n");
    }

    #[test]
    fn accepted_message_resets_the_error_count() {
        let mut config = config();
        config.errors_max = 2;
        let input = concat!(
            "EHLO c\r\nFOO\r\nMAIL FROM:<a@b>\r\nRCPT TO:<x@localhost>\r\nDATA\r\n.\r\n",
            "FOO\r\nNOOP\r\n",
        );
        let run = run_with(&config, OUTSIDE, input.as_bytes(), &[]);
        assert_eq!(after_ehlo(&run).last(), Some(&"250 2.0.0 Ok"));
        assert!(closes(&run).is_empty());
    }

    #[test]
    fn junk_commands_count_as_errors_past_their_limit() {
        let mut config = config();
        config.errors_max = 3;
        // EHLO is junk too: EHLO, 98 NOOPs and RSET make 100.
        let junk = "NOOP\r\n".repeat(JUNK_COMMANDS_MAX as usize - 2);
        let input = format!("EHLO c\r\n{junk}RSET\r\nVRFY x\r\nHELP\r\nNOOP\r\nNOOP\r\n");
        let run = run_with(&config, OUTSIDE, input.as_bytes(), &[]);
        let replies = after_ehlo(&run);
        assert_eq!(replies.len(), JUNK_COMMANDS_MAX as usize + 3);
        assert_eq!(
            replies[JUNK_COMMANDS_MAX as usize - 2..],
            [
                "250 2.0.0 Ok",
                "252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery",
                "214 2.0.0 Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT HELP VRFY",
                "250 2.0.0 Ok",
                "421 4.7.0 mx.test Error: too many errors",
            ]
        );
        assert_eq!(run.unconsumed, b"NOOP\r\n");
        // An accepted message resets the junk count.
        let message = "MAIL FROM:<a@b>\r\nRCPT TO:<x@localhost>\r\nDATA\r\n.\r\n";
        let input = format!("EHLO c\r\n{junk}{message}{junk}QUIT\r\n");
        let run = run_with(&config, OUTSIDE, input.as_bytes(), &[]);
        assert_eq!(closes(&run), [CloseReason::Quit]);
    }

    #[test]
    fn command_line_limit() {
        let at_limit = format!("NOOP {}\r\n", "x".repeat(COMMAND_LINE_MIN - 7));
        assert_eq!(at_limit.len(), COMMAND_LINE_MIN);
        let over = format!("NOOP {}\r\n", "x".repeat(COMMAND_LINE_MIN - 6));
        let huge = format!("MAIL FROM:<{}@localhost>\r\n", "x".repeat(5000));
        let input = format!("EHLO c\r\n{at_limit}{over}{huge}MAIL FROM:<a@b>\r\n");
        let run = run_with(&config(), OUTSIDE, input.as_bytes(), &[]);
        assert_eq!(
            after_ehlo(&run),
            [
                "250 2.0.0 Ok",
                "500 5.5.2 Error: line too long",
                "500 5.5.2 Error: line too long",
                "250 2.1.0 Ok",
            ]
        );
    }

    #[test]
    fn overlong_partial_line_is_consumed_and_answered_at_its_end() {
        let mut out = Outbox::default();
        let peer = OUTSIDE.parse().unwrap();
        let mut session = Session::new(Arc::new(config()), peer, now(), &mut out);
        out.clear();
        // Below the limit a partial line is left for the driver to re-present.
        assert_eq!(session.handle_input(&[b'x'; 511], now(), &mut out), 0);
        // At the limit without LF it is consumed; nothing is answered yet.
        assert_eq!(session.handle_input(&[b'x'; 600], now(), &mut out), 600);
        assert_eq!(
            session.handle_input(&[b'y'; 10_000], now(), &mut out),
            10_000
        );
        assert!(out.bytes.is_empty());
        assert_eq!(
            session.handle_input(b"zz\r\nNOOP\r\nNO", now(), &mut out),
            10
        );
        assert_eq!(
            out.bytes,
            b"500 5.5.2 Error: line too long\r\n250 2.0.0 Ok\r\n".to_vec()
        );
    }

    #[test]
    fn bare_lf_ends_no_command_line() {
        let run = run("EHLO c\nEHLO c\r\nNOOP\nRSET\r\n");
        assert_eq!(
            run.lines[..2],
            [
                GREETING,
                "500 5.5.2 Error: bare <LF> received; command lines must end with <CR><LF> (RFC 5321 §2.3.8)",
            ]
        );
        assert_eq!(run.lines[2..12], EHLO_REPLY);
        assert_eq!(run.lines[12], run.lines[1]);
        assert_eq!(run.lines[13], "250 2.0.0 Ok");
    }

    const START: &str = "EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<x@localhost>\r\nDATA\r\n";

    /// Runs one message through DATA followed by NOOP; returns the replies after 354.
    #[test]
    fn content_policy_refuses_blocked_attachments_and_the_session_goes_on() {
        let mut cfg = config();
        cfg.policy.blocked_extensions = vec!["exe".into()];
        let body = concat!(
            "Content-Type: multipart/mixed; boundary=b\r\n\r\n",
            "--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n",
            "--b\r\nContent-Type: application/octet-stream\r\n",
            "Content-Disposition: attachment; filename=\"setup.EXE\"\r\n\r\nMZ\r\n",
            "--b--\r\n.\r\n"
        );
        let (replies, run) = data_replies(&cfg, body.as_bytes());
        assert_eq!(replies.len(), 2, "{replies:?}");
        assert!(
            replies[0].starts_with("554 5.7.1 message refused:") && replies[0].contains("exe"),
            "{replies:?}"
        );
        assert_eq!(replies[1], "250 2.0.0 Ok");
        assert!(submissions(&run).is_empty());
        assert_eq!(rejections(&run).len(), 1);
    }

    #[test]
    fn more_received_fields_than_the_hop_limit_are_a_loop() {
        let mut cfg = config();
        cfg.hopcount_limit = 3;
        let body = |hops: usize| {
            format!(
                "{}Subject: x\r\n\r\nhi\r\n.\r\n",
                "Received: x\r\n".repeat(hops)
            )
        };
        let (replies, run) = data_replies(&cfg, body(3).as_bytes());
        assert!(
            replies[0].starts_with("250 2.0.0 Ok: queued"),
            "{replies:?}"
        );
        assert_eq!(submissions(&run)[0].mime.received, 3);
        let (replies, run) = data_replies(&cfg, body(4).as_bytes());
        assert!(
            replies[0].starts_with("554 5.4.6 Too many hops: 4 "),
            "{replies:?}"
        );
        assert!(submissions(&run).is_empty());
        assert_eq!(rejections(&run).len(), 1);
    }

    #[test]
    fn accepted_messages_carry_their_mime_counts() {
        let body = concat!(
            "Content-Type: multipart/mixed; boundary=b\r\n\r\n",
            "--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n",
            "--b\r\nContent-Disposition: attachment; filename=a.pdf\r\n\r\n%PDF\r\n",
            "--b--\r\n.\r\n"
        );
        let (_, run) = data_replies(&config(), body.as_bytes());
        let submitted = submissions(&run);
        assert_eq!(submitted.len(), 1);
        assert_eq!(
            (submitted[0].mime.parts, submitted[0].mime.attachments),
            (3, 1)
        );
    }

    fn data_replies(config: &SessionConfig, body: &[u8]) -> (Vec<String>, Run) {
        let mut input = START.as_bytes().to_vec();
        input.extend_from_slice(body);
        input.extend_from_slice(b"NOOP\r\n");
        let run = run_with(config, OUTSIDE, &input, &[]);
        let replies = after_ehlo(&run);
        assert_eq!(
            replies[..3],
            [
                "250 2.1.0 Ok",
                "250 2.1.5 Ok",
                "354 End data with <CR><LF>.<CR><LF>"
            ]
        );
        let rest = replies[3..].iter().map(|s| s.to_string()).collect();
        (rest, run)
    }

    #[test]
    fn smuggling_attempts_are_refused_and_the_session_goes_on() {
        const BARE: &str = "554 5.5.2 Error: bare <CR> or <LF> in message data (RFC 5321 §2.3.8)";
        let table: &[&[u8]] = &[
            b"a\r\n\n.\nMAIL FROM:<evil@x>\r\n.\r\n",
            b"a\r\n\r.\rMAIL FROM:<evil@x>\r\n.\r\n",
            b"a\r\n.\nMAIL FROM:<evil@x>\r\n.\r\n",
            b"a\n.\r\nMAIL FROM:<evil@x>\r\n.\r\n",
            b"a\r\n.\rMAIL FROM:<evil@x>\r\n.\r\n",
            b"Subject: x\nBcc: y\r\n\r\nbody\r\n.\r\n",
            b"Subject: x\rBcc: y\r\n\r\nbody\r\n.\r\n",
            b"Subject: x\r\n\r\nbody\nmore\r\n.\r\n",
            b"Subject: x\r\n\r\nbody\rmore\r\n.\r\n",
            b"Subject: x\r\n\r\nend\r\r\n.\r\n",
            b"x\r\n\n\r\n.\r\n",
        ];
        for body in table {
            let shown = String::from_utf8_lossy(body);
            let (replies, run) = data_replies(&config(), body);
            assert_eq!(replies, [BARE, "250 2.0.0 Ok"], "{shown:?}");
            assert!(submissions(&run).is_empty(), "{shown:?}");
            let rejected = rejections(&run);
            assert_eq!(rejected.len(), 1, "{shown:?}");
            assert_eq!(rejected[0].reply, Reply::bare_line_end_in_data());
            assert_eq!(rejected[0].reverse_path, "a@b");
            assert_eq!(rejected[0].recipients, 1);
        }
    }

    #[test]
    fn text_line_limit_in_data() {
        let ok = format!("{}\r\n.\r\n", "x".repeat(TEXT_LINE_MIN - 2));
        let (replies, run) = data_replies(&config(), ok.as_bytes());
        assert_eq!(
            replies,
            ["250 2.0.0 Ok: queued as 0000000000000001", "250 2.0.0 Ok"]
        );
        assert_eq!(submissions(&run)[0].body.len(), TEXT_LINE_MIN);
        let over = format!("{}\r\n.\r\n", "x".repeat(TEXT_LINE_MIN - 1));
        let (replies, run) = data_replies(&config(), over.as_bytes());
        assert_eq!(
            replies,
            [
                "554 5.6.0 Error: message has a line longer than 1000 octets including CRLF (RFC 5321 §4.5.3.1.6)",
                "250 2.0.0 Ok"
            ]
        );
        assert_eq!(rejections(&run)[0].size, TEXT_LINE_MIN as u64 + 1);
    }

    #[test]
    fn message_size_limit_in_data() {
        let mut config = config();
        config.message_size_max = 1000;
        let line = format!("{}\r\n", "y".repeat(98));
        let ok = format!("{}.\r\n", line.repeat(10));
        let (replies, _) = data_replies(&config, ok.as_bytes());
        assert_eq!(replies[0], "250 2.0.0 Ok: queued as 0000000000000001");
        let over = format!("{}z\r\n.\r\n", line.repeat(10));
        let (replies, run) = data_replies(&config, over.as_bytes());
        assert_eq!(
            replies,
            [
                "552 5.3.4 Error: message size exceeds fixed limit",
                "250 2.0.0 Ok"
            ]
        );
        assert_eq!(rejections(&run)[0].size, 1003);
    }

    fn bdat(input: &str) -> Run {
        run(&format!("EHLO c\r\n{input}"))
    }

    #[test]
    fn bdat_chunks() {
        let run = bdat(concat!(
            "MAIL FROM:<a@b>\r\nRCPT TO:<x@localhost>\r\n",
            "BDAT 5\r\nhello",
            "BDAT 9\r\n, world\r\n",
            "BDAT 0 LAST\r\n",
            "MAIL FROM:<a@b>\r\nRCPT TO:<x@localhost>\r\n",
            "BDAT 7 LAST\r\n.\r\nQUIT",
            "NOOP\r\n",
        ));
        assert_eq!(
            after_ehlo(&run),
            [
                "250 2.1.0 Ok",
                "250 2.1.5 Ok",
                "250 2.0.0 Ok: 5 octets received",
                "250 2.0.0 Ok: 9 octets received",
                "250 2.0.0 Ok: queued as 0000000000000001",
                "250 2.1.0 Ok",
                "250 2.1.5 Ok",
                "250 2.0.0 Ok: queued as 0000000000000002",
                "250 2.0.0 Ok",
            ]
        );
        let submitted = submissions(&run);
        assert_eq!(submitted[0].body, b"hello, world\r\n");
        // No dot-stuffing with BDAT: ".\r\n" is content; a missing final CRLF is added.
        assert_eq!(submitted[1].body, b".\r\nQUIT\r\n");
    }

    #[test]
    fn bdat_without_transaction_consumes_its_chunk_then_503() {
        let run = run("BDAT 6\r\nQUIT\r\nEHLO c\r\nBDAT 6 LAST\r\nQUIT\r\nMAIL FROM:<a@b>\r\nBDAT 6\r\nQUIT\r\nRCPT TO:<x@localhost>\r\nNOOP\r\n");
        assert_eq!(
            run.lines[..2],
            [GREETING, "503 5.5.1 Error: send HELO/EHLO first"]
        );
        assert_eq!(
            run.lines[12..],
            [
                "503 5.5.1 Error: need MAIL command",
                "250 2.1.0 Ok",
                "503 5.5.1 Error: need RCPT command",
                // The failed BDAT ended the transaction.
                "503 5.5.1 Error: need MAIL command",
                "250 2.0.0 Ok",
            ]
        );
        assert!(closes(&run).is_empty());
    }

    #[test]
    fn bdat_mixing_rules() {
        let run = bdat(concat!(
            "MAIL FROM:<a@b>\r\nRCPT TO:<x@localhost>\r\nBDAT 3\r\nabc",
            "RCPT TO:<y@localhost>\r\n",
            "DATA\r\n",
            // DATA after BDAT ended the transaction.
            "RCPT TO:<y@localhost>\r\n",
            "MAIL FROM:<a@b> BODY=BINARYMIME\r\nRCPT TO:<x@localhost>\r\n",
            "DATA\r\n",
            "BDAT 4 LAST\r\n\r\n.\n",
        ));
        assert_eq!(
            after_ehlo(&run),
            [
                "250 2.1.0 Ok",
                "250 2.1.5 Ok",
                "250 2.0.0 Ok: 3 octets received",
                "503 5.5.1 Error: RCPT after BDAT in the same transaction",
                "503 5.5.1 Error: DATA after BDAT in the same transaction (RFC 3030 §3)",
                "503 5.5.1 Error: need MAIL command",
                "250 2.1.0 Ok",
                "250 2.1.5 Ok",
                "503 5.5.1 Error: BODY=BINARYMIME requires BDAT (RFC 3030 §3)",
                "250 2.0.0 Ok: queued as 0000000000000001",
            ]
        );
        // BINARYMIME content is opaque: bare line ends are allowed.
        assert_eq!(submissions(&run)[0].body, b"\r\n.\n\r\n");
        assert_eq!(
            submissions(&run)[0].envelope.params.body,
            BodyType::BinaryMime
        );
    }

    #[test]
    fn bdat_text_bodies_get_the_data_checks() {
        let run = bdat(concat!(
            "MAIL FROM:<a@b>\r\nRCPT TO:<x@localhost>\r\n",
            "BDAT 4\r\na\nb.",
            // The failed BDAT ended the transaction: this chunk is read and refused.
            "BDAT 3 LAST\r\nc\r\n",
            "MAIL FROM:<a@b>\r\nRCPT TO:<x@localhost>\r\n",
            "BDAT 2\r\nx\r",
            "BDAT 2 LAST\r\ny\n",
            "MAIL FROM:<a@b>\r\nRCPT TO:<x@localhost>\r\n",
            "BDAT 3 LAST\r\nab\r",
            "NOOP\r\n",
        ));
        const BARE: &str = "554 5.5.2 Error: bare <CR> or <LF> in message data (RFC 5321 §2.3.8)";
        assert_eq!(
            after_ehlo(&run),
            [
                "250 2.1.0 Ok",
                "250 2.1.5 Ok",
                BARE,
                "503 5.5.1 Error: need MAIL command",
                "250 2.1.0 Ok",
                "250 2.1.5 Ok",
                "250 2.0.0 Ok: 2 octets received",
                BARE,
                "250 2.1.0 Ok",
                "250 2.1.5 Ok",
                BARE,
                "250 2.0.0 Ok",
            ]
        );
        assert!(submissions(&run).is_empty());
        assert_eq!(rejections(&run).len(), 3);
    }

    #[test]
    fn bdat_size_limit() {
        let mut config = config();
        config.message_size_max = 10;
        let input = concat!(
            "EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<x@localhost>\r\n",
            "BDAT 6\r\n123456",
            "BDAT 6 LAST\r\n789012",
            "NOOP\r\n",
        );
        let run = run_with(&config, OUTSIDE, input.as_bytes(), &[]);
        assert_eq!(
            after_ehlo(&run),
            [
                "250 2.1.0 Ok",
                "250 2.1.5 Ok",
                "250 2.0.0 Ok: 6 octets received",
                "552 5.3.4 Error: message size exceeds fixed limit",
                "250 2.0.0 Ok",
            ]
        );
        assert_eq!(rejections(&run)[0].size, 12);
    }

    #[test]
    fn huge_bdat_chunk_is_read_without_storing_it() {
        let mut out = Outbox::default();
        let peer = OUTSIDE.parse().unwrap();
        let mut config = config();
        config.message_size_max = 100;
        let mut session = Session::new(Arc::new(config), peer, now(), &mut out);
        let start = b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<x@localhost>\r\nBDAT 18446744073709551615 LAST\r\n";
        assert_eq!(session.handle_input(start, now(), &mut out), start.len());
        let block = vec![b'x'; 1 << 16];
        for _ in 0..64 {
            assert_eq!(session.handle_input(&block, now(), &mut out), block.len());
        }
        assert!(session.receiving_data());
        out.clear();
        session.timed_out(&mut out);
        assert_eq!(out.bytes, b"421 4.4.2 mx.test Error: timeout exceeded\r\n");
        assert_eq!(out.events, [Event::Close(CloseReason::TimedOut)]);
        assert!(session.is_closed());
        assert_eq!(session.handle_input(b"NOOP\r\n", now(), &mut out), 0);
        out.clear();
        session.timed_out(&mut out);
        session.shutting_down(&mut out);
        assert!(out.bytes.is_empty() && out.events.is_empty());
    }

    #[test]
    fn shutting_down_closes() {
        let mut out = Outbox::default();
        let peer = OUTSIDE.parse().unwrap();
        let mut session = Session::new(Arc::new(config()), peer, now(), &mut out);
        out.clear();
        session.shutting_down(&mut out);
        assert_eq!(out.bytes, b"421 4.3.2 mx.test Service shutting down\r\n");
        assert_eq!(out.events, [Event::Close(CloseReason::ShuttingDown)]);
        assert!(session.is_closed());
    }

    #[test]
    fn received_header_of_a_submission() {
        let run =
            run("EHLO client.example\r\nMAIL FROM:<a@b>\r\nRCPT TO:<x@localhost>\r\nDATA\r\n.\r\n");
        let header = submissions(&run)[0].received_header(QueueId(1), "mx.test", now());
        assert_eq!(
            header,
            "Received: from client.example ([192.0.2.1])\r\n\
             \tby mx.test (relay) with ESMTP id 0000000000000001\r\n\
             \tfor <x@localhost>; Tue, 14 Nov 2023 22:13:20 +0000\r\n"
        );
    }

    #[test]
    fn default_config_is_valid_and_checked() {
        let config = SessionConfig::default();
        assert_eq!(config.check(), Ok(()));
        assert_eq!(config.command_line_max, 512);
        assert_eq!(config.text_line_max, 1000);
        assert_eq!(config.recipients_max, 100);
        assert_eq!(config.message_size_max, 25 * 1024 * 1024);
        assert_eq!(config.errors_max, 20);
        assert_eq!(config.local_domains, ["localhost"]);
        assert_eq!(
            config.relay_networks,
            [
                "127.0.0.0/8".parse().unwrap(),
                "::1/128".parse::<ipnet::IpNet>().unwrap()
            ]
        );
        let short = SessionConfig {
            command_line_max: 511,
            ..SessionConfig::default()
        };
        assert_eq!(short.check(), Err(SessionConfigError::CommandLineTooShort));
    }

    #[test]
    fn wants_input_unless_an_event_is_out_or_closed() {
        let config = SessionConfig {
            allow_plaintext_auth: true,
            starttls: true,
            ..config()
        };
        let mut out = Outbox::default();
        let peer = OUTSIDE.parse().unwrap();
        let mut session = Session::new(Arc::new(config), peer, now(), &mut out);
        assert!(session.wants_input());
        // Inside DATA input is still wanted; once the body is complete, not until stored.
        session.handle_input(
            b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<x@localhost>\r\nDATA\r\nhi\r\n",
            now(),
            &mut out,
        );
        assert!(session.receiving_data() && session.wants_input());
        session.handle_input(b".\r\n", now(), &mut out);
        assert!(session.awaiting_submission() && !session.wants_input());
        session.submitted(Ok(QueueId(1)), now(), &mut out);
        assert!(session.wants_input());
        // base64 of "\0alice\0secret".
        session.handle_input(b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n", now(), &mut out);
        assert!(session.awaiting_authentication() && !session.wants_input());
        session.authenticated(Err(AuthFailure::Invalid), &mut out);
        assert!(session.wants_input());
        session.handle_input(b"STARTTLS\r\n", now(), &mut out);
        assert!(session.awaiting_tls() && !session.wants_input());
        session.tls_established("TLSv1.3".into());
        assert!(session.wants_input());
        session.timed_out(&mut out);
        assert!(session.is_closed() && !session.wants_input());
    }

    mod auth {
        use super::*;

        // base64 of "\0alice\0secret", "alice", "secret", "\0alice\0wrong".
        const PLAIN_OK: &str = "AGFsaWNlAHNlY3JldA==";
        const PLAIN_WRONG: &str = "AGFsaWNlAHdyb25n";
        const ALICE: &str = "YWxpY2U=";
        const SECRET: &str = "c2VjcmV0";

        fn auth_config() -> SessionConfig {
            SessionConfig {
                allow_plaintext_auth: true,
                ..config()
            }
        }

        fn auth_run(input: &str) -> Run {
            run_with(&auth_config(), OUTSIDE, input.as_bytes(), &[])
        }

        /// The replies after the greeting and an EHLO reply that lists AUTH.
        fn after_auth_ehlo(run: &Run) -> Vec<&str> {
            assert_eq!(run.lines[0], GREETING);
            assert_eq!(run.lines[10], "250-AUTH PLAIN LOGIN");
            assert_eq!(run.lines[11], "250 HELP");
            run.lines[12..].iter().map(String::as_str).collect()
        }

        fn authentications(run: &Run) -> Vec<&Credentials> {
            run.events
                .iter()
                .filter_map(|e| match e {
                    Event::Authenticate(c) => Some(c),
                    _ => None,
                })
                .collect()
        }

        #[test]
        fn without_tls_auth_is_not_offered_and_answers_538() {
            let run = run("EHLO c\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\nAUTH LOGIN\r\n");
            assert!(
                run.lines.iter().all(|l| !l.contains("AUTH")),
                "{:?}",
                run.lines
            );
            assert_eq!(
                after_ehlo(&run),
                [
                    "538 5.7.11 Error: encryption required for requested authentication mechanism",
                    "538 5.7.11 Error: encryption required for requested authentication mechanism",
                ]
            );
            assert!(authentications(&run).is_empty());
        }

        #[test]
        fn plain_with_initial_response() {
            let run = auth_run(&format!("EHLO c\r\nAUTH PLAIN {PLAIN_OK}\r\nNOOP\r\n"));
            assert_eq!(
                after_auth_ehlo(&run),
                ["235 2.7.0 Authentication successful", "250 2.0.0 Ok"]
            );
            let creds = authentications(&run);
            assert_eq!(creds.len(), 1);
            assert_eq!(
                (creds[0].user.as_str(), creds[0].authzid.as_deref()),
                ("alice", None)
            );
            assert_eq!(creds[0].password.expose(), "secret");
        }

        #[test]
        fn plain_after_an_empty_challenge() {
            let run = auth_run(&format!("EHLO c\r\nauth plain\r\n{PLAIN_OK}\r\nNOOP\r\n"));
            assert_eq!(
                after_auth_ehlo(&run),
                [
                    "334 ",
                    "235 2.7.0 Authentication successful",
                    "250 2.0.0 Ok"
                ]
            );
        }

        #[test]
        fn login_in_two_steps_and_with_an_initial_user() {
            let run = auth_run(&format!(
                "EHLO c\r\nAUTH LOGIN\r\n{ALICE}\r\n{SECRET}\r\nNOOP\r\n"
            ));
            assert_eq!(
                after_auth_ehlo(&run),
                [
                    "334 VXNlcm5hbWU6",
                    "334 UGFzc3dvcmQ6",
                    "235 2.7.0 Authentication successful",
                    "250 2.0.0 Ok"
                ]
            );
            let run = auth_run(&format!("EHLO c\r\nAUTH LOGIN {ALICE}\r\n{SECRET}\r\n"));
            assert_eq!(
                after_auth_ehlo(&run),
                ["334 UGFzc3dvcmQ6", "235 2.7.0 Authentication successful"]
            );
        }

        #[test]
        fn wrong_password_unknown_user_and_foreign_authzid_get_the_same_535() {
            // "\0nobody\0secret" and "bob\0alice\0secret".
            let run = auth_run(&format!(
                "EHLO c\r\nAUTH PLAIN {PLAIN_WRONG}\r\nAUTH PLAIN AG5vYm9keQBzZWNyZXQ=\r\n\
                 AUTH PLAIN Ym9iAGFsaWNlAHNlY3JldA==\r\nAUTH LOGIN {ALICE}\r\nd3Jvbmc=\r\n"
            ));
            const INVALID: &str = "535 5.7.8 Error: authentication credentials invalid";
            assert_eq!(
                after_auth_ehlo(&run),
                [INVALID, INVALID, INVALID, "334 UGFzc3dvcmQ6", INVALID]
            );
            assert_eq!(authentications(&run).len(), 4);
        }

        #[test]
        fn a_locked_out_name_gets_454() {
            // "\0locked\0x"
            let run = auth_run("EHLO c\r\nAUTH PLAIN AGxvY2tlZAB4\r\nNOOP\r\n");
            assert_eq!(
                after_auth_ehlo(&run),
                [
                    "454 4.7.0 Error: temporary authentication failure, try again later",
                    "250 2.0.0 Ok"
                ]
            );
        }

        #[test]
        fn cancel_bad_base64_and_unknown_mechanism() {
            let run = auth_run(concat!(
                "EHLO c\r\n",
                "AUTH PLAIN\r\n*\r\n",
                "AUTH LOGIN\r\n*\r\n",
                "AUTH LOGIN\r\nYWxpY2U=\r\n*\r\n",
                "AUTH PLAIN not-base64\r\n",
                "AUTH PLAIN\r\nAGFsaWNl#\r\n",
                "AUTH PLAIN =\r\n",
                "AUTH LOGIN\r\n=\r\n",
                "AUTH CRAM-MD5\r\n",
                "AUTH\r\n",
                "NOOP\r\n",
            ));
            const CANCELLED: &str = "501 5.0.0 Error: authentication cancelled";
            const BAD: &str = "501 5.5.2 Error: cannot decode the authentication response";
            const UNKNOWN: &str = "504 5.5.4 Error: unrecognized authentication mechanism";
            assert_eq!(
                after_auth_ehlo(&run),
                [
                    "334 ",
                    CANCELLED,
                    "334 VXNlcm5hbWU6",
                    CANCELLED,
                    "334 VXNlcm5hbWU6",
                    "334 UGFzc3dvcmQ6",
                    CANCELLED,
                    BAD,
                    "334 ",
                    BAD,
                    BAD,
                    "334 VXNlcm5hbWU6",
                    BAD,
                    UNKNOWN,
                    "501 5.5.4 Syntax: AUTH mechanism [initial-response]",
                    "250 2.0.0 Ok",
                ]
            );
            assert!(authentications(&run).is_empty());
        }

        #[test]
        fn sequence_errors() {
            let run = auth_run(&format!(
                "AUTH PLAIN {PLAIN_OK}\r\nEHLO c\r\nMAIL FROM:<a@b>\r\nAUTH PLAIN {PLAIN_OK}\r\n\
                 RSET\r\nAUTH PLAIN {PLAIN_OK}\r\nAUTH PLAIN {PLAIN_OK}\r\nEHLO c\r\n"
            ));
            assert_eq!(run.lines[1], "503 5.5.1 Error: send HELO/EHLO first");
            let rest: Vec<&str> = run.lines[13..].iter().map(String::as_str).collect();
            assert_eq!(
                rest[..5],
                [
                    "250 2.1.0 Ok",
                    "503 5.5.1 Error: AUTH not permitted during a mail transaction",
                    "250 2.0.0 Ok",
                    "235 2.7.0 Authentication successful",
                    "503 5.5.1 Error: already authenticated",
                ]
            );
            // Once authenticated, EHLO no longer lists AUTH; the identity stays.
            assert!(rest[5..].iter().all(|l| !l.contains("AUTH")), "{rest:?}");
            assert_eq!(rest.last(), Some(&"250 HELP"));
        }

        #[test]
        fn an_overlong_response_is_answered_500_5_5_6() {
            let long = "A".repeat(SASL_LINE_MAX);
            let input = format!("EHLO c\r\nAUTH PLAIN\r\n{long}\r\nNOOP\r\n");
            let run = auth_run(&input);
            assert_eq!(
                after_auth_ehlo(&run),
                [
                    "334 ",
                    "500 5.5.6 Error: authentication exchange line is too long",
                    "250 2.0.0 Ok"
                ]
            );
            // A response of exactly the limit is read (and refused as a bad PLAIN message).
            let fits = "A".repeat(SASL_LINE_MAX - 2);
            let run = auth_run(&format!("EHLO c\r\nAUTH PLAIN\r\n{fits}\r\n"));
            assert_eq!(
                after_auth_ehlo(&run)[1],
                "501 5.5.2 Error: cannot decode the authentication response"
            );
        }

        #[test]
        fn authenticated_clients_relay_and_are_named_in_received() {
            let input = format!(
                "EHLO client.example\r\nMAIL FROM:<a@b>\r\nRCPT TO:<x@remote.example>\r\nRSET\r\n\
                 AUTH PLAIN {PLAIN_OK}\r\nMAIL FROM:<a@b>\r\nRCPT TO:<x@remote.example>\r\n\
                 DATA\r\nhi\r\n.\r\n"
            );
            let run = auth_run(&input);
            assert_eq!(
                after_auth_ehlo(&run),
                [
                    "250 2.1.0 Ok",
                    "554 5.7.1 <x@remote.example>: Relay access denied",
                    "250 2.0.0 Ok",
                    "235 2.7.0 Authentication successful",
                    "250 2.1.0 Ok",
                    "250 2.1.5 Ok",
                    "354 End data with <CR><LF>.<CR><LF>",
                    "250 2.0.0 Ok: queued as 0000000000000001",
                ]
            );
            let submitted = submissions(&run);
            assert_eq!(submitted[0].authenticated.as_deref(), Some("alice"));
            assert_eq!(submitted[0].origin.protocol, "ESMTPA");
            let header = submitted[0].received_header(QueueId(1), "mx.test", now());
            assert!(
                header.contains("(Authenticated sender: alice)") && header.contains("with ESMTPA"),
                "{header}"
            );
        }

        #[test]
        fn debug_never_shows_the_password() {
            let credentials = Credentials {
                authzid: None,
                user: "alice".into(),
                password: Password::new("hunter2".into()),
            };
            let shown = format!("{:?}", Event::Authenticate(credentials));
            assert!(
                shown.contains("alice") && !shown.contains("hunter2"),
                "{shown}"
            );
        }

        #[test]
        fn authenticated_before_the_event_is_ignored_when_closed() {
            let mut out = Outbox::default();
            let peer = OUTSIDE.parse().unwrap();
            let mut session = Session::new(Arc::new(auth_config()), peer, now(), &mut out);
            let input = format!("EHLO c\r\nAUTH PLAIN {PLAIN_OK}\r\nNOOP\r\n");
            let consumed = session.handle_input(input.as_bytes(), now(), &mut out);
            assert_eq!(&input.as_bytes()[consumed..], b"NOOP\r\n");
            assert!(session.awaiting_authentication() && !session.in_transaction());
            assert_eq!(session.handle_input(b"NOOP\r\n", now(), &mut out), 0);
            session.timed_out(&mut out);
            out.clear();
            session.authenticated(Ok("alice".into()), &mut out);
            assert!(out.bytes.is_empty() && session.authenticated_user().is_none());
        }
    }

    /// STARTTLS (RFC 3207). The driver discards what was pipelined after the command, so
    /// these runs are not split-invariant and use a driver of their own.
    mod starttls {
        use super::*;

        const TLS: &str = "TLSv1.3 with cipher TLS13_AES_128_GCM_SHA256";

        fn tls_config() -> SessionConfig {
            SessionConfig {
                starttls: true,
                ..config()
            }
        }

        /// Feeds `before`; at StartTls checks that nothing after the command was consumed,
        /// drops it (as the driver does), marks the session TLS and feeds `after`.
        fn run_tls(config: &SessionConfig, before: &str, after: &str) -> (Vec<String>, Vec<Event>) {
            let mut out = Outbox::default();
            let mut session = Session::new(
                Arc::new(config.clone()),
                OUTSIDE.parse().unwrap(),
                now(),
                &mut out,
            );
            let mut events = Vec::new();
            let consumed = session.handle_input(before.as_bytes(), now(), &mut out);
            let started = out.events.contains(&Event::StartTls);
            events.append(&mut out.events);
            if started {
                let line_end = before.rfind("STARTTLS\r\n").unwrap() + "STARTTLS\r\n".len();
                assert_eq!(consumed, line_end, "nothing after STARTTLS may be consumed");
                assert!(session.awaiting_tls());
                assert_eq!(session.handle_input(b"NOOP\r\n", now(), &mut out), 0);
                session.tls_established(TLS.to_string());
                assert!(session.is_tls());
                session.handle_input(after.as_bytes(), now(), &mut out);
                events.append(&mut out.events);
            }
            let lines = String::from_utf8(out.bytes)
                .unwrap()
                .split_terminator("\r\n")
                .map(str::to_owned)
                .collect();
            (lines, events)
        }

        #[test]
        fn offered_only_with_a_certificate() {
            let (lines, events) = run_tls(&config(), "EHLO c\r\nSTARTTLS\r\n", "");
            assert!(!lines.iter().any(|l| l.contains("STARTTLS")), "{lines:?}");
            assert_eq!(
                lines.last().unwrap(),
                "502 5.5.1 Error: command not implemented"
            );
            assert!(events.is_empty());

            let (lines, _) = run_tls(&tls_config(), "EHLO c\r\nQUIT\r\n", "");
            assert!(lines.contains(&"250-STARTTLS".to_string()), "{lines:?}");
        }

        #[test]
        fn pipelined_commands_after_starttls_are_not_taken() {
            // CVE-2011-0411: an attacker in the middle appends plaintext commands; they must
            // not run inside the TLS session.
            let (lines, events) = run_tls(
                &tls_config(),
                "EHLO c\r\nSTARTTLS\r\nMAIL FROM:<evil@x>\r\nRCPT TO:<a@localhost>\r\n",
                "MAIL FROM:<a@b>\r\nEHLO c\r\nMAIL FROM:<a@b>\r\n",
            );
            let after_ehlo: Vec<&str> = lines[12..].iter().map(String::as_str).collect();
            assert_eq!(
                after_ehlo,
                [
                    "220 2.0.0 Ready to start TLS",
                    // The session starts over: no greeting, EHLO needed again.
                    "503 5.5.1 Error: send HELO/EHLO first",
                    "250-mx.test",
                    "250-PIPELINING",
                    "250-SIZE 26214400",
                    "250-8BITMIME",
                    "250-BINARYMIME",
                    "250-ENHANCEDSTATUSCODES",
                    "250-SMTPUTF8",
                    "250-CHUNKING",
                    "250-DSN",
                    "250-AUTH PLAIN LOGIN",
                    "250 HELP",
                    "250 2.1.0 Ok",
                ]
            );
            assert_eq!(events, [Event::StartTls]);
        }

        #[test]
        fn refused_inside_a_transaction_and_once_active() {
            let (lines, events) = run_tls(
                &tls_config(),
                "EHLO c\r\nMAIL FROM:<a@b>\r\nSTARTTLS\r\nRSET\r\nSTARTTLS\r\n",
                "EHLO c\r\nSTARTTLS\r\nSTARTTLS now\r\n",
            );
            let tail: Vec<&str> = lines[13..].iter().map(String::as_str).collect();
            assert_eq!(tail[0], "503 5.5.1 Error: MAIL transaction in progress");
            assert_eq!(tail[1], "250 2.0.0 Ok");
            assert_eq!(tail[2], "220 2.0.0 Ready to start TLS");
            assert!(
                !tail.contains(&"250-STARTTLS"),
                "not offered twice: {tail:?}"
            );
            assert_eq!(
                tail[tail.len() - 2..],
                [
                    "554 5.5.1 Error: TLS already active",
                    "501 5.5.4 Syntax: STARTTLS",
                ]
            );
            assert_eq!(events, [Event::StartTls]);
        }

        #[test]
        fn authentication_before_starttls_is_forgotten() {
            let config = SessionConfig {
                allow_plaintext_auth: true,
                ..tls_config()
            };
            let (lines, events) = run_tls(
                &config,
                "EHLO c\r\nSTARTTLS\r\n",
                "EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<x@far.example>\r\n",
            );
            // Before STARTTLS: AUTH offered (plaintext allowed); after it nobody is
            // authenticated, so relaying is refused.
            assert!(lines.iter().any(|l| l == "250-AUTH PLAIN LOGIN"));
            assert!(lines.last().unwrap().starts_with("554 5.7.1"), "{lines:?}");
            assert_eq!(events, [Event::StartTls]);
        }

        #[test]
        fn received_header_names_the_tls_session() {
            let (_, events) = run_tls(
                &tls_config(),
                "EHLO c\r\nSTARTTLS\r\n",
                "EHLO c.example\r\nMAIL FROM:<a@b>\r\nRCPT TO:<x@localhost>\r\nDATA\r\n.\r\n",
            );
            let Some(Event::Submit(submission)) = events.last() else {
                panic!("no submission: {events:?}");
            };
            let header = submission.received_header(QueueId(1), "mx.test", now());
            assert_eq!(
                header,
                "Received: from c.example ([192.0.2.1])\r\n\
                 \t(using TLSv1.3 with cipher TLS13_AES_128_GCM_SHA256)\r\n\
                 \tby mx.test (relay) with ESMTPS id 0000000000000001\r\n\
                 \tfor <x@localhost>; Tue, 14 Nov 2023 22:13:20 +0000\r\n"
            );
        }

        #[test]
        fn implicit_tls_marks_the_session_from_the_start() {
            let mut out = Outbox::default();
            let mut session = Session::new(
                Arc::new(tls_config()),
                OUTSIDE.parse().unwrap(),
                now(),
                &mut out,
            );
            session.tls_established(TLS.to_string());
            session.handle_input(b"EHLO c\r\n", now(), &mut out);
            let text = String::from_utf8(out.bytes).unwrap();
            assert!(
                text.starts_with("220 mx.test ESMTP relay\r\n"),
                "greeting kept: {text}"
            );
            assert!(!text.contains("STARTTLS"), "{text}");
            assert!(text.contains("250-AUTH PLAIN LOGIN"), "{text}");
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn fragment() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                Just(b"EHLO c\r\n".to_vec()),
                Just(b"HELO c\r\n".to_vec()),
                Just(b"MAIL FROM:<a@b>\r\n".to_vec()),
                Just(b"RCPT TO:<x@localhost>\r\n".to_vec()),
                Just(b"RCPT TO:<x@elsewhere>\r\n".to_vec()),
                Just(b"DATA\r\n".to_vec()),
                Just(b"BDAT 3\r\n".to_vec()),
                Just(b"BDAT 2 LAST\r\n".to_vec()),
                Just(b"RSET\r\n".to_vec()),
                Just(b".\r\n".to_vec()),
                Just(b"\r\n".to_vec()),
                Just(b"\n".to_vec()),
                Just(b"\r".to_vec()),
                Just(b".".to_vec()),
                prop::collection::vec(any::<u8>(), 0..20),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            #[test]
            fn any_input_in_any_split_gives_the_same_result(
                fragments in prop::collection::vec(fragment(), 0..30),
            ) {
                let mut config = config();
                config.errors_max = 1000;
                let input: Vec<u8> = fragments.concat();
                // run_with asserts split invariance and never panics.
                run_with(&config, OUTSIDE, &input, &[]);
            }

            #[test]
            fn random_bytes_never_panic(input in prop::collection::vec(any::<u8>(), 0..2000)) {
                let mut driver = Driver::new(&config(), OUTSIDE);
                driver.feed(&input);
                prop_assert!(driver.buffer.len() <= input.len());
            }
        }
    }
}
