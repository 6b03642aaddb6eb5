//! Typed SMTP replies: the one place where reply codes, enhanced status codes and reply text
//! live (docs/ARCHITECTURE.md §10).
//!
//! Every reply the server sends is built by a named constructor below, so a reply's wording is
//! decided once and a test can compare against the same constructor. Encoding appends to a
//! caller buffer, so a pipelined group's replies leave in one write (RFC 2920 §3.2).
//!
//! Standards: RFC 5321 §4.2 (reply syntax, multi-line replies), RFC 3463 (enhanced status
//! codes), RFC 2034 (enhanced codes go on every line of 2xx, 4xx and 5xx replies, never on 3xx).
//!
//! Exposure: a few constructors embed peer-supplied text (an address, a parameter keyword).
//! [`Reply::encode`] replaces control characters so that no peer text can end a reply line
//! early or inject a reply of its own.

use std::borrow::Cow;
use std::fmt;

/// A three-digit reply code (RFC 5321 §4.2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReplyCode(u16);

impl ReplyCode {
    pub const HELP: Self = Self(214);
    pub const SERVICE_READY: Self = Self(220);
    pub const CLOSING: Self = Self(221);
    pub const OK: Self = Self(250);
    pub const CANNOT_VRFY: Self = Self(252);
    pub const AUTH_SUCCEEDED: Self = Self(235);
    pub const AUTH_CONTINUE: Self = Self(334);
    pub const START_MAIL_INPUT: Self = Self(354);
    pub const SERVICE_NOT_AVAILABLE: Self = Self(421);
    pub const MAILBOX_BUSY: Self = Self(450);
    pub const LOCAL_ERROR: Self = Self(451);
    pub const INSUFFICIENT_STORAGE: Self = Self(452);
    pub const AUTH_TEMPORARY_FAILURE: Self = Self(454);
    pub const MAILBOX_UNAVAILABLE: Self = Self(550);
    pub const SYNTAX_ERROR: Self = Self(500);
    pub const PARAMETER_SYNTAX_ERROR: Self = Self(501);
    pub const NOT_IMPLEMENTED: Self = Self(502);
    pub const BAD_SEQUENCE: Self = Self(503);
    pub const PARAMETER_NOT_IMPLEMENTED: Self = Self(504);
    pub const EXCEEDED_STORAGE: Self = Self(552);
    pub const MAILBOX_NAME_NOT_ALLOWED: Self = Self(553);
    pub const TRANSACTION_FAILED: Self = Self(554);
    pub const PARAMETERS_NOT_RECOGNIZED: Self = Self(555);
    pub const AUTH_INVALID: Self = Self(535);
    pub const ENCRYPTION_REQUIRED: Self = Self(538);

    /// A reply code as RFC 5321 §4.2 allows it: first digit 2–5, second 0–5, third 0–9.
    pub const fn new(code: u16) -> Option<Self> {
        let first = code / 100;
        let second = (code / 10) % 10;
        if first >= 2 && first <= 5 && second <= 5 {
            Some(Self(code))
        } else {
            None
        }
    }

    pub const fn get(self) -> u16 {
        self.0
    }

    /// The first digit: 2 positive completion, 3 intermediate, 4 transient, 5 permanent.
    pub const fn class(self) -> u8 {
        (self.0 / 100) as u8
    }

    /// 4xx or 5xx.
    pub const fn is_negative(self) -> bool {
        self.class() >= 4
    }
}

impl fmt::Display for ReplyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An RFC 3463 enhanced status code `class.subject.detail`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EnhancedStatus {
    class: u8,
    subject: u16,
    detail: u16,
}

impl EnhancedStatus {
    /// RFC 3463 §2: class is 2, 4 or 5; subject and detail have one to three digits.
    pub const fn new(class: u8, subject: u16, detail: u16) -> Option<Self> {
        if (class == 2 || class == 4 || class == 5) && subject <= 999 && detail <= 999 {
            Some(Self {
                class,
                subject,
                detail,
            })
        } else {
            None
        }
    }

    /// For the constant table below, whose values are checked by a unit test.
    const fn known(class: u8, subject: u16, detail: u16) -> Self {
        Self {
            class,
            subject,
            detail,
        }
    }

    /// `X.0.0` for a reply code's class (2, 4 or 5; anything else reads as 5): the status a
    /// report gives a reply that came without one (RFC 3463 §3.1).
    pub const fn undefined(class: u8) -> Self {
        let class = if class == 2 || class == 4 { class } else { 5 };
        Self::known(class, 0, 0)
    }

    pub const fn class(self) -> u8 {
        self.class
    }
    pub const fn subject(self) -> u16 {
        self.subject
    }
    pub const fn detail(self) -> u16 {
        self.detail
    }

    fn encode(self, out: &mut Vec<u8>) {
        out.push(b'0' + self.class);
        out.push(b'.');
        crate::proto::decimal::push(out, u64::from(self.subject));
        out.push(b'.');
        crate::proto::decimal::push(out, u64::from(self.detail));
    }
}

impl fmt::Display for EnhancedStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

// The RFC 3463 codes this server uses, named after the RFC's titles.
/// 2.0.0 Other undefined status (success).
const S_2_0_0: EnhancedStatus = EnhancedStatus::known(2, 0, 0);
/// 2.1.0 Other address status (sender accepted).
/// 2.7.0 Other or undefined security status (authentication succeeded, RFC 4954 §6).
const S_2_7_0: EnhancedStatus = EnhancedStatus::known(2, 7, 0);
/// 5.7.8 Authentication credentials invalid (RFC 4954 §6).
const S_5_7_8: EnhancedStatus = EnhancedStatus::known(5, 7, 8);
/// 5.7.11 Encryption required for requested authentication mechanism (RFC 4954 §6).
const S_5_7_11: EnhancedStatus = EnhancedStatus::known(5, 7, 11);
/// 5.5.6 Authentication exchange line is too long (RFC 4954 §6).
const S_5_5_6: EnhancedStatus = EnhancedStatus::known(5, 5, 6);
const S_2_1_0: EnhancedStatus = EnhancedStatus::known(2, 1, 0);
/// 2.1.5 Destination address valid.
const S_2_1_5: EnhancedStatus = EnhancedStatus::known(2, 1, 5);
/// 2.5.2 with 252: sendmail's long-standing answer to a refused VRFY ("Cannot VRFY user; try
/// RCPT"); RFC 3463 defines X.5.2 only as a syntax status, so this pairing is convention.
const S_2_5_2: EnhancedStatus = EnhancedStatus::known(2, 5, 2);
/// 4.2.0 Other or undefined mailbox status.
const S_4_2_0: EnhancedStatus = EnhancedStatus::known(4, 2, 0);
/// 4.3.1 Mail system full.
const S_4_2_2: EnhancedStatus = EnhancedStatus::known(4, 2, 2);
const S_4_3_1: EnhancedStatus = EnhancedStatus::known(4, 3, 1);
/// 4.3.2 System not accepting network messages.
const S_4_3_2: EnhancedStatus = EnhancedStatus::known(4, 3, 2);
/// 4.3.0 Other or undefined mail system status (the relay abandoned a delivery).
const S_4_3_0: EnhancedStatus = EnhancedStatus::known(4, 3, 0);
/// 4.4.2 Bad connection (here: the peer went quiet, or the connection broke).
const S_4_4_2: EnhancedStatus = EnhancedStatus::known(4, 4, 2);
/// 4.5.0 Other or undefined protocol status (a next hop broke the protocol).
const S_4_5_0: EnhancedStatus = EnhancedStatus::known(4, 5, 0);
/// 4.5.3 Too many recipients.
const S_4_5_3: EnhancedStatus = EnhancedStatus::known(4, 5, 3);
/// 4.7.0 Other or undefined security status (too many errors: we stop talking to the peer).
const S_4_7_0: EnhancedStatus = EnhancedStatus::known(4, 7, 0);
/// 4.7.1 Delivery not authorized (here: this client is over its message rate; try later).
const S_4_7_1: EnhancedStatus = EnhancedStatus::known(4, 7, 1);
/// 5.1.3 Bad destination mailbox address syntax.
const S_5_1_1: EnhancedStatus = EnhancedStatus::known(5, 1, 1);
const S_5_1_3: EnhancedStatus = EnhancedStatus::known(5, 1, 3);
/// 5.1.7 Bad sender's mailbox address syntax.
const S_5_1_7: EnhancedStatus = EnhancedStatus::known(5, 1, 7);
/// 5.3.4 Message too big for system.
const S_5_3_4: EnhancedStatus = EnhancedStatus::known(5, 3, 4);
/// 5.5.1 Invalid command (also used for bad sequence, as Postfix does).
const S_5_5_1: EnhancedStatus = EnhancedStatus::known(5, 5, 1);
/// 5.5.2 Syntax error.
const S_5_5_2: EnhancedStatus = EnhancedStatus::known(5, 5, 2);
/// 5.5.4 Invalid command arguments.
const S_5_5_4: EnhancedStatus = EnhancedStatus::known(5, 5, 4);
/// 5.6.0 Other or undefined media error.
const S_5_6_0: EnhancedStatus = EnhancedStatus::known(5, 6, 0);
/// 5.6.3 Conversion required but not supported.
const S_5_6_3: EnhancedStatus = EnhancedStatus::known(5, 6, 3);
/// 5.6.7 Non-ASCII addresses not permitted (RFC 6531 §3.5 registers it).
const S_5_6_7: EnhancedStatus = EnhancedStatus::known(5, 6, 7);
/// 5.7.1 Delivery not authorized, message refused.
const S_5_7_1: EnhancedStatus = EnhancedStatus::known(5, 7, 1);
/// RFC 7372 §3.3: SPF validation failed.
const S_5_7_23: EnhancedStatus = EnhancedStatus::known(5, 7, 23);
/// 4.4.1 No answer from host (no connection to any address of the next hop).
const S_4_4_1: EnhancedStatus = EnhancedStatus::known(4, 4, 1);
/// 4.7.4 Security features not supported (RFC 3463): TLS required, the next hop has none.
const S_4_7_4: EnhancedStatus = EnhancedStatus::known(4, 7, 4);
/// 4.7.5 Cryptographic failure (RFC 3463): the TLS handshake with the next hop failed.
const S_4_7_5: EnhancedStatus = EnhancedStatus::known(4, 7, 5);
/// 4.4.5 System congestion (this relay's own delivery tables are full).
const S_4_4_5: EnhancedStatus = EnhancedStatus::known(4, 4, 5);
/// 5.4.6 Routing loop detected.
const S_5_4_6: EnhancedStatus = EnhancedStatus::known(5, 4, 6);
/// 5.4.7 Delivery time expired.
const S_5_4_7: EnhancedStatus = EnhancedStatus::known(5, 4, 7);
/// 5.0.0 Other undefined status (an operator's decision).
const S_5_0_0: EnhancedStatus = EnhancedStatus::known(5, 0, 0);

/// An ESMTP service extension advertised in the EHLO reply (RFC 5321 §4.1.1.1).
///
/// The session decides which to advertise in `Session::extensions`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Extension {
    /// RFC 4954: the SASL mechanisms offered.
    Auth(&'static [&'static str]),
    /// RFC 3030.
    BinaryMime,
    /// RFC 3030.
    Chunking,
    /// RFC 3461.
    Dsn,
    /// RFC 6152.
    EightBitMime,
    /// RFC 2034.
    EnhancedStatusCodes,
    /// Lists HELP as a keyword, as several MTAs do; RFC 5321 §4.1.1.8 requires HELP anyway.
    Help,
    /// RFC 2920.
    Pipelining,
    /// RFC 1870, with the fixed maximum in octets.
    Size(u64),
    /// RFC 6531.
    SmtpUtf8,
    /// RFC 3207: offered on a connection without TLS when the relay has a certificate.
    StartTls,
}

impl Extension {
    fn push_keyword(&self, text: &mut String) {
        let keyword = match self {
            Extension::Auth(mechanisms) => {
                text.push_str("AUTH");
                for mechanism in *mechanisms {
                    text.push(' ');
                    text.push_str(mechanism);
                }
                return;
            }
            Extension::BinaryMime => "BINARYMIME",
            Extension::Chunking => "CHUNKING",
            Extension::Dsn => "DSN",
            Extension::EightBitMime => "8BITMIME",
            Extension::EnhancedStatusCodes => "ENHANCEDSTATUSCODES",
            Extension::Help => "HELP",
            Extension::Pipelining => "PIPELINING",
            Extension::StartTls => "STARTTLS",
            Extension::Size(max) => {
                text.push_str("SIZE ");
                text.push_str(&max.to_string());
                return;
            }
            Extension::SmtpUtf8 => "SMTPUTF8",
        };
        text.push_str(keyword);
    }
}

/// One SMTP reply: a code, an optional enhanced status and text. A multi-line reply keeps its
/// lines separated by `\n` in `text`; encoding turns each into its own `ddd-` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    code: ReplyCode,
    status: Option<EnhancedStatus>,
    text: Cow<'static, str>,
}

impl Reply {
    /// A reply with any code and text; prefer the named constructors below.
    pub fn new(
        code: ReplyCode,
        status: Option<EnhancedStatus>,
        text: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            code,
            status,
            text: text.into(),
        }
    }

    const fn fixed(code: ReplyCode, status: EnhancedStatus, text: &'static str) -> Self {
        Self {
            code,
            status: Some(status),
            text: Cow::Borrowed(text),
        }
    }

    pub fn code(&self) -> ReplyCode {
        self.code
    }

    pub fn status(&self) -> Option<EnhancedStatus> {
        self.status
    }

    /// The text, lines separated by `\n`.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Cuts the text to at most `max` octets (at a character boundary), marking the cut
    /// with "...". For keeping a peer's reply: a next hop may send a 400 KiB one, and it is
    /// kept once per recipient it concerns.
    pub fn truncate_text(&mut self, max: usize) {
        if self.text.len() <= max {
            return;
        }
        let mut end = max.saturating_sub(3);
        while !self.text.is_char_boundary(end) {
            end -= 1;
        }
        let mut text = self.text[..end].to_owned();
        text.push_str("...");
        self.text = Cow::Owned(text);
    }

    /// Appends the wire form (every line ending in CRLF) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut lines = self.text.split('\n').peekable();
        while let Some(line) = lines.next() {
            crate::proto::decimal::push(out, u64::from(self.code.0));
            out.push(if lines.peek().is_some() { b'-' } else { b' ' });
            if let Some(status) = self.status {
                status.encode(out);
                if !line.is_empty() {
                    out.push(b' ');
                }
            }
            push_printable(out, line);
            out.extend_from_slice(b"\r\n");
        }
    }

    // ---- Greeting, HELO, EHLO (no enhanced codes: RFC 2034 §3 applies them after EHLO) ----

    /// `220 <hostname> ESMTP relay` (RFC 5321 §4.3.1).
    pub fn greeting(hostname: &str) -> Self {
        Self::new(
            ReplyCode::SERVICE_READY,
            None,
            format!("{} ESMTP relay", printable(hostname)),
        )
    }

    /// The HELO reply (RFC 5321 §4.1.1.1).
    pub fn helo(hostname: &str) -> Self {
        Self::new(ReplyCode::OK, None, printable(hostname).into_owned())
    }

    /// The multi-line EHLO reply: our name, then one extension per line.
    pub fn ehlo(hostname: &str, extensions: &[Extension]) -> Self {
        let mut text = printable(hostname).into_owned();
        for extension in extensions {
            text.push('\n');
            extension.push_keyword(&mut text);
        }
        Self::new(ReplyCode::OK, None, text)
    }

    // ---- Positive replies ----

    pub fn ok() -> Self {
        Self::fixed(ReplyCode::OK, S_2_0_0, "Ok")
    }

    /// MAIL accepted.
    pub fn sender_ok() -> Self {
        Self::fixed(ReplyCode::OK, S_2_1_0, "Ok")
    }

    /// RCPT accepted.
    pub fn recipient_ok() -> Self {
        Self::fixed(ReplyCode::OK, S_2_1_5, "Ok")
    }

    /// DATA accepted: 354 carries no enhanced code (RFC 2034 §4: 2xx, 4xx, 5xx only).
    pub fn start_mail_input() -> Self {
        Self::new(
            ReplyCode::START_MAIL_INPUT,
            None,
            "End data with <CR><LF>.<CR><LF>",
        )
    }

    /// The message is on stable storage (docs/ARCHITECTURE.md §4).
    pub fn queued(id: impl fmt::Display) -> Self {
        Self::new(ReplyCode::OK, Some(S_2_0_0), format!("Ok: queued as {id}"))
    }

    /// A non-final BDAT chunk was received (RFC 3030 §4.2).
    pub fn chunk_received(octets: u64) -> Self {
        Self::new(
            ReplyCode::OK,
            Some(S_2_0_0),
            format!("Ok: {octets} octets received"),
        )
    }

    pub fn closing() -> Self {
        Self::fixed(ReplyCode::CLOSING, S_2_0_0, "Bye")
    }

    pub fn help() -> Self {
        Self::fixed(
            ReplyCode::HELP,
            S_2_0_0,
            "Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT HELP VRFY",
        )
    }

    /// RFC 5321 §3.5.3: 252 when we will not verify (no address disclosure) but will accept.
    pub fn cannot_vrfy() -> Self {
        Self::fixed(
            ReplyCode::CANNOT_VRFY,
            S_2_5_2,
            "Cannot VRFY user, but will accept message and attempt delivery",
        )
    }

    /// VRFY of a local mailbox when `smtp.vrfy` allows disclosure (RFC 5321 §3.5.2).
    pub fn verified(address: &str) -> Self {
        Self::new(
            ReplyCode::OK,
            Some(S_2_1_5),
            format!("<{}>", printable(address)),
        )
    }

    /// EXPN of a list when `smtp.expn` allows disclosure (RFC 5321 §3.5.2): one member per
    /// line.
    pub fn list_members(members: &[String]) -> Self {
        let text: Vec<String> = members
            .iter()
            .map(|m| format!("<{}>", printable(m)))
            .collect();
        Self::new(ReplyCode::OK, Some(S_2_1_5), text.join("\n"))
    }

    // ---- Transient negative replies ----

    /// 421 after too many client errors (Postfix `smtpd_hard_error_limit`).
    pub fn too_many_errors(hostname: &str) -> Self {
        Self::new(
            ReplyCode::SERVICE_NOT_AVAILABLE,
            Some(S_4_7_0),
            format!("{} Error: too many errors", printable(hostname)),
        )
    }

    /// 421 when the peer was silent for too long (RFC 5321 §4.5.3.2).
    pub fn timeout(hostname: &str) -> Self {
        Self::new(
            ReplyCode::SERVICE_NOT_AVAILABLE,
            Some(S_4_4_2),
            format!("{} Error: timeout exceeded", printable(hostname)),
        )
    }

    /// 421 when the server stops (RFC 5321 §3.8).
    pub fn shutting_down(hostname: &str) -> Self {
        Self::new(
            ReplyCode::SERVICE_NOT_AVAILABLE,
            Some(S_4_3_2),
            format!("{} Service shutting down", printable(hostname)),
        )
    }

    /// 421 at connect when this core already serves `server.connections_per_core_max`.
    pub fn too_many_connections(hostname: &str) -> Self {
        Self::new(
            ReplyCode::SERVICE_NOT_AVAILABLE,
            Some(S_4_7_0),
            format!(
                "{} Error: too many connections, try again later",
                printable(hostname)
            ),
        )
    }

    /// 421 at connect when this client address already holds
    /// `server.connections_per_ip_max` connections (Postfix's
    /// `smtpd_client_connection_count_limit`).
    pub fn too_many_connections_from_client(hostname: &str) -> Self {
        Self::new(
            ReplyCode::SERVICE_NOT_AVAILABLE,
            Some(S_4_7_0),
            format!(
                "{} Error: too many connections from your address",
                printable(hostname)
            ),
        )
    }

    /// RCPT to a local mailbox that is over its quota: try later (RFC 3463 4.2.2).
    pub fn mailbox_full(address: &str) -> Self {
        Self::new(
            ReplyCode::INSUFFICIENT_STORAGE,
            Some(S_4_2_2),
            format!("<{}>: Mailbox full", printable(address)),
        )
    }

    /// RCPT on the cluster listener for a user homed on another node: try later, once the
    /// nodes' directories agree (RFC 3463 4.2.0, other mailbox status).
    pub fn mailbox_elsewhere(address: &str) -> Self {
        Self::new(
            ReplyCode::MAILBOX_BUSY,
            Some(S_4_2_0),
            format!("<{}>: Mailbox is homed on another node", printable(address)),
        )
    }

    /// RFC 5321 §4.5.3.1.10: 452 for recipients beyond the limit; the client sends them in a
    /// later transaction.
    pub fn too_many_recipients() -> Self {
        Self::fixed(
            ReplyCode::INSUFFICIENT_STORAGE,
            S_4_5_3,
            "Error: too many recipients",
        )
    }

    /// The spool could not take the message (backpressure or storage error): try later.
    /// 450 at MAIL when this client address started `smtp.messages_per_ip_max` messages
    /// within `smtp.message_rate_window` (Postfix's `smtpd_client_message_rate_limit`, whose
    /// reply this follows): temporary, so a legitimate sender retries later.
    pub fn message_rate_exceeded() -> Self {
        Self::fixed(
            ReplyCode::MAILBOX_BUSY,
            S_4_7_1,
            "Error: too much mail from your address, try again later",
        )
    }

    pub fn insufficient_storage() -> Self {
        Self::fixed(
            ReplyCode::INSUFFICIENT_STORAGE,
            S_4_3_1,
            "Error: insufficient system storage",
        )
    }

    /// A local recipient's copy could not be encrypted to their key (encryption at rest):
    /// nothing was stored in clear; the client tries again later.
    pub fn cannot_seal() -> Self {
        Self::fixed(
            ReplyCode::LOCAL_ERROR,
            S_4_3_0,
            "Error: the message cannot be encrypted for a recipient now, try again later",
        )
    }

    /// The relay's budget for message bodies in memory (`smtp.body_memory_max`) cannot take
    /// this message now: at MAIL (the declared SIZE or a first buffer does not fit) or at the
    /// end of data (the body outgrew what was left). RFC 3463 4.3.1 "mail system full".
    pub fn body_memory_exhausted() -> Self {
        Self::fixed(
            ReplyCode::INSUFFICIENT_STORAGE,
            S_4_3_1,
            "Error: insufficient system storage for message data, try again later",
        )
    }

    /// The sender checks could not finish: a DNS failure or timeout (RFC 7208 §2.6.6,
    /// RFC 7489 §6.6.3); the client retries later.
    pub fn sender_check_unavailable() -> Self {
        Self::fixed(
            ReplyCode::LOCAL_ERROR,
            S_4_7_0,
            "Temporary DNS failure while checking the sender, try again later",
        )
    }

    /// The From domain's DMARC policy asks for rejection (RFC 7489 §6.6.1).
    pub fn dmarc_rejected() -> Self {
        Self::fixed(
            ReplyCode::MAILBOX_UNAVAILABLE,
            S_5_7_1,
            "Rejected by the DMARC policy of the From domain",
        )
    }

    /// The sender's domain does not allow this host to send for it (SPF `fail`).
    pub fn spf_rejected() -> Self {
        Self::fixed(
            ReplyCode::MAILBOX_UNAVAILABLE,
            S_5_7_23,
            "Rejected: SPF says this host may not send for the sender's domain",
        )
    }

    // ---- Permanent negative replies: syntax ----

    pub fn unknown_command() -> Self {
        Self::fixed(
            ReplyCode::SYNTAX_ERROR,
            S_5_5_1,
            "Error: command not recognized",
        )
    }

    /// A command line longer than the limit (RFC 5321 §4.5.3.1.4, §4.5.3.1.10).
    pub fn line_too_long() -> Self {
        Self::fixed(ReplyCode::SYNTAX_ERROR, S_5_5_2, "Error: line too long")
    }

    /// A command line ended in a bare LF.
    pub fn bare_lf_in_command() -> Self {
        Self::fixed(
            ReplyCode::SYNTAX_ERROR,
            S_5_5_2,
            "Error: bare <LF> received; command lines must end with <CR><LF> (RFC 5321 §2.3.8)",
        )
    }

    /// 501 with the command's usage.
    pub fn syntax(usage: &'static str) -> Self {
        Self::new(
            ReplyCode::PARAMETER_SYNTAX_ERROR,
            Some(S_5_5_4),
            format!("Syntax: {usage}"),
        )
    }

    pub fn bad_sender_syntax() -> Self {
        Self::fixed(
            ReplyCode::PARAMETER_SYNTAX_ERROR,
            S_5_1_7,
            "Bad sender address syntax",
        )
    }

    pub fn bad_recipient_syntax() -> Self {
        Self::fixed(
            ReplyCode::PARAMETER_SYNTAX_ERROR,
            S_5_1_3,
            "Bad recipient address syntax",
        )
    }

    /// A known MAIL/RCPT parameter with a value we cannot parse.
    pub fn bad_parameter_value(keyword: &'static str) -> Self {
        Self::new(
            ReplyCode::PARAMETER_SYNTAX_ERROR,
            Some(S_5_5_4),
            format!("Bad {keyword} parameter value"),
        )
    }

    /// RFC 5321 §4.1.1.11 does not allow a parameter twice.
    pub fn duplicate_parameter(keyword: &'static str) -> Self {
        Self::new(
            ReplyCode::PARAMETER_SYNTAX_ERROR,
            Some(S_5_5_4),
            format!("Duplicate {keyword} parameter"),
        )
    }

    /// RFC 5321 §4.1.1.11 and §4.2.3: an unrecognized or unimplemented MAIL/RCPT parameter is
    /// 555, not 504: the RFC reserves 504 for other commands.
    pub fn parameter_not_recognized(keyword: &str) -> Self {
        Self::new(
            ReplyCode::PARAMETERS_NOT_RECOGNIZED,
            Some(S_5_5_4),
            format!("Unsupported option: {}", printable(keyword)),
        )
    }

    /// ESMTP parameters after a plain HELO: the extensions were never negotiated (RFC 5321
    /// §4.1.1.1), so the parameters are not recognized (555 as above).
    pub fn parameters_need_ehlo() -> Self {
        Self::fixed(
            ReplyCode::PARAMETERS_NOT_RECOGNIZED,
            S_5_5_4,
            "Error: ESMTP parameters require EHLO",
        )
    }

    /// 504 for a command parameter this server does not implement. Unused by the server today:
    /// RFC 5321 sends unimplemented MAIL/RCPT parameters to 555; AUTH mechanisms will use it.
    pub fn parameter_not_implemented(what: &str) -> Self {
        Self::new(
            ReplyCode::PARAMETER_NOT_IMPLEMENTED,
            Some(S_5_5_4),
            format!("Unsupported parameter: {}", printable(what)),
        )
    }

    // ---- Permanent negative replies: commands we do not offer ----

    /// TURN (RFC 5321 §4.1.1.11 and Appendix F.1): it would hand the connection's direction
    /// to an unauthenticated peer, so RFC 2821 removed it.
    pub fn turn_not_implemented() -> Self {
        Self::fixed(
            ReplyCode::NOT_IMPLEMENTED,
            S_5_5_1,
            "Error: TURN is obsolete (RFC 5321 Appendix F.1)",
        )
    }

    /// EXPN would disclose list members (RFC 5321 §7.3).
    pub fn expn_not_implemented() -> Self {
        Self::fixed(
            ReplyCode::NOT_IMPLEMENTED,
            S_5_5_1,
            "Error: EXPN not available",
        )
    }

    /// SEND (and terminals in general) are obsolete (RFC 5321 Appendix F.6).
    pub fn send_not_implemented() -> Self {
        Self::fixed(
            ReplyCode::NOT_IMPLEMENTED,
            S_5_5_1,
            "Error: SEND is obsolete (RFC 5321 Appendix F.6)",
        )
    }

    // ---- STARTTLS (RFC 3207) ----

    /// RFC 3207 §4: the client starts the handshake after this reply.
    pub fn ready_to_start_tls() -> Self {
        Self::fixed(ReplyCode::SERVICE_READY, S_2_0_0, "Ready to start TLS")
    }

    /// STARTTLS on a connection that already has TLS (Postfix's wording and code).
    pub fn tls_already_active() -> Self {
        Self::fixed(
            ReplyCode::TRANSACTION_FAILED,
            S_5_5_1,
            "Error: TLS already active",
        )
    }

    /// STARTTLS inside a mail transaction: the handshake would split one transaction over
    /// two security contexts (RFC 3207 §4.2 resets the session), as Postfix refuses it.
    pub fn tls_in_transaction() -> Self {
        Self::fixed(
            ReplyCode::BAD_SEQUENCE,
            S_5_5_1,
            "Error: MAIL transaction in progress",
        )
    }

    /// STARTTLS where it is not offered (no certificate configured), and other commands
    /// this server does not implement.
    pub fn not_implemented() -> Self {
        Self::fixed(
            ReplyCode::NOT_IMPLEMENTED,
            S_5_5_1,
            "Error: command not implemented",
        )
    }

    // ---- AUTH (RFC 4954) ----

    /// `334 <base64 challenge>`: the server waits for the next SASL response line. The
    /// challenge is base64 (RFC 4954 §4), so it needs no sanitising; empty for PLAIN.
    pub fn auth_challenge(challenge: &'static str) -> Self {
        Self::new(ReplyCode::AUTH_CONTINUE, None, challenge)
    }

    /// RFC 4954 §6: authentication succeeded.
    pub fn auth_succeeded() -> Self {
        Self::fixed(
            ReplyCode::AUTH_SUCCEEDED,
            S_2_7_0,
            "Authentication successful",
        )
    }

    /// RFC 4954 §6: wrong password and unknown user alike (no user enumeration).
    pub fn auth_invalid() -> Self {
        Self::fixed(
            ReplyCode::AUTH_INVALID,
            S_5_7_8,
            "Error: authentication credentials invalid",
        )
    }

    /// RFC 4954 §6: the client's address or the user name is over its failure limit; the
    /// same reply whether or not the user exists.
    pub fn auth_locked() -> Self {
        Self::fixed(
            ReplyCode::AUTH_TEMPORARY_FAILURE,
            S_4_7_0,
            "Error: temporary authentication failure, try again later",
        )
    }

    /// RFC 4954 §6 and §4: plaintext mechanisms only over TLS (RFC 8314).
    pub fn auth_needs_encryption() -> Self {
        Self::fixed(
            ReplyCode::ENCRYPTION_REQUIRED,
            S_5_7_11,
            "Error: encryption required for requested authentication mechanism",
        )
    }

    /// RFC 4954 §4: the client cancelled the exchange with `*`.
    pub fn auth_cancelled() -> Self {
        Self::fixed(
            ReplyCode::PARAMETER_SYNTAX_ERROR,
            S_5_0_0,
            "Error: authentication cancelled",
        )
    }

    /// RFC 4954 §4: a response that is not base64 (or not a valid PLAIN message).
    pub fn auth_bad_response() -> Self {
        Self::fixed(
            ReplyCode::PARAMETER_SYNTAX_ERROR,
            S_5_5_2,
            "Error: cannot decode the authentication response",
        )
    }

    /// RFC 4954 §4: a mechanism we do not offer.
    pub fn auth_unknown_mechanism() -> Self {
        Self::fixed(
            ReplyCode::PARAMETER_NOT_IMPLEMENTED,
            S_5_5_4,
            "Error: unrecognized authentication mechanism",
        )
    }

    /// RFC 4954 §4: AUTH after a successful AUTH.
    pub fn already_authenticated() -> Self {
        Self::fixed(
            ReplyCode::BAD_SEQUENCE,
            S_5_5_1,
            "Error: already authenticated",
        )
    }

    /// RFC 4954 §4: AUTH is not permitted during a mail transaction.
    pub fn auth_in_transaction() -> Self {
        Self::fixed(
            ReplyCode::BAD_SEQUENCE,
            S_5_5_1,
            "Error: AUTH not permitted during a mail transaction",
        )
    }

    /// RFC 4954 §6: a SASL response line over the limit.
    pub fn auth_line_too_long() -> Self {
        Self::fixed(
            ReplyCode::SYNTAX_ERROR,
            S_5_5_6,
            "Error: authentication exchange line is too long",
        )
    }

    // ---- Permanent negative replies: sequence ----

    pub fn need_helo() -> Self {
        Self::fixed(
            ReplyCode::BAD_SEQUENCE,
            S_5_5_1,
            "Error: send HELO/EHLO first",
        )
    }

    pub fn need_mail() -> Self {
        Self::fixed(ReplyCode::BAD_SEQUENCE, S_5_5_1, "Error: need MAIL command")
    }

    pub fn need_recipient() -> Self {
        Self::fixed(ReplyCode::BAD_SEQUENCE, S_5_5_1, "Error: need RCPT command")
    }

    pub fn nested_mail() -> Self {
        Self::fixed(
            ReplyCode::BAD_SEQUENCE,
            S_5_5_1,
            "Error: nested MAIL command",
        )
    }

    /// RFC 3030 §3: DATA after BDAT in one transaction is 503.
    pub fn data_after_bdat() -> Self {
        Self::fixed(
            ReplyCode::BAD_SEQUENCE,
            S_5_5_1,
            "Error: DATA after BDAT in the same transaction (RFC 3030 §3)",
        )
    }

    /// RCPT once message data has started to arrive in BDAT chunks.
    pub fn recipient_after_bdat() -> Self {
        Self::fixed(
            ReplyCode::BAD_SEQUENCE,
            S_5_5_1,
            "Error: RCPT after BDAT in the same transaction",
        )
    }

    /// RFC 3030 §3: a BINARYMIME message must be sent with BDAT.
    pub fn binarymime_needs_bdat() -> Self {
        Self::fixed(
            ReplyCode::BAD_SEQUENCE,
            S_5_5_1,
            "Error: BODY=BINARYMIME requires BDAT (RFC 3030 §3)",
        )
    }

    // ---- Permanent negative replies: policy and content ----

    /// RFC 1870 §6: the declared or actual size exceeds the fixed maximum.
    pub fn message_too_large() -> Self {
        Self::fixed(
            ReplyCode::EXCEEDED_STORAGE,
            S_5_3_4,
            "Error: message size exceeds fixed limit",
        )
    }

    /// RFC 5321 §3.3: DATA when every RCPT was rejected.
    pub fn no_valid_recipients() -> Self {
        Self::fixed(
            ReplyCode::TRANSACTION_FAILED,
            S_5_5_1,
            "Error: no valid recipients",
        )
    }

    /// We are not an open relay: the recipient's domain is not ours and the client is not in
    /// a relay network.
    pub fn relay_denied(address: &str) -> Self {
        Self::new(
            ReplyCode::TRANSACTION_FAILED,
            Some(S_5_7_1),
            format!("<{}>: Relay access denied", printable(address)),
        )
    }

    /// The client's address is on a DNS block list (Postfix's wording for
    /// `reject_rbl_client`).
    pub fn client_blocklisted(ip: &std::net::IpAddr, zone: &str) -> Self {
        Self::new(
            ReplyCode::TRANSACTION_FAILED,
            Some(S_5_7_1),
            format!(
                "Service unavailable; Client host [{ip}] blocked using {}",
                printable(zone)
            ),
        )
    }

    /// The content policy refused the message (RFC 3463 5.7.1: delivery not authorized,
    /// message refused). `reason` is printable and bounded by the policy.
    pub fn content_refused(reason: &str) -> Self {
        Self::new(
            ReplyCode::TRANSACTION_FAILED,
            Some(S_5_7_1),
            format!("message refused: {}", printable(reason)),
        )
    }

    /// A local domain without such a mailbox (RFC 5321 §3.6.2, RFC 3463 5.1.1).
    pub fn unknown_mailbox(address: &str) -> Self {
        Self::new(
            ReplyCode::MAILBOX_UNAVAILABLE,
            Some(S_5_1_1),
            format!(
                "<{}>: Recipient address rejected: User unknown",
                printable(address)
            ),
        )
    }

    /// EXPN of an address that is not a list.
    pub fn not_a_list(address: &str) -> Self {
        Self::new(
            ReplyCode::MAILBOX_UNAVAILABLE,
            Some(S_5_1_1),
            format!("<{}>: not a mailing list", printable(address)),
        )
    }

    /// RFC 6531 §3.5: a UTF-8 address in a transaction without the SMTPUTF8 parameter.
    pub fn utf8_needs_smtputf8() -> Self {
        Self::fixed(
            ReplyCode::MAILBOX_NAME_NOT_ALLOWED,
            S_5_6_7,
            "Error: non-ASCII address requires the SMTPUTF8 parameter (RFC 6531)",
        )
    }

    /// RFC 5321 §2.3.8: only CRLF ends a line. A bare CR or LF in the data is how SMTP
    /// smuggling hides a second message from the next hop, so the message is refused.
    pub fn bare_line_end_in_data() -> Self {
        Self::fixed(
            ReplyCode::TRANSACTION_FAILED,
            S_5_5_2,
            "Error: bare <CR> or <LF> in message data (RFC 5321 §2.3.8)",
        )
    }

    /// A text line over the limit (RFC 5321 §4.5.3.1.6).
    ///
    /// Why 5.6.0 ("other or undefined media error"): the message cannot be relayed over SMTP
    /// as it is; the fault lies in the content, not in a command (5.5.x), not in its size
    /// (5.3.4, which clients read as "try a smaller message"), and RFC 3463 has no more
    /// specific media code for it. 554 because the transaction as a whole failed.
    pub fn text_line_too_long(max: usize) -> Self {
        Self::new(
            ReplyCode::TRANSACTION_FAILED,
            Some(S_5_6_0),
            format!(
                "Error: message has a line longer than {max} octets including CRLF (RFC 5321 §4.5.3.1.6)"
            ),
        )
    }

    // ---- Replies the outbound client synthesizes (`smtp::client`) ----
    //
    // When a delivery fails without a usable reply from the next hop (a check before
    // sending, a broken connection, a protocol violation), the client still reports a reply,
    // so that logs and delivery status notifications have one shape. These never go on the
    // wire.

    /// RFC 1870 §6: the next hop announced a fixed SIZE maximum below the message's size,
    /// so it would refuse the message for good; it is not sent.
    pub fn next_hop_size_exceeded(size: u64, max: u64) -> Self {
        Self::new(
            ReplyCode::EXCEEDED_STORAGE,
            Some(S_5_3_4),
            format!(
                "message size {size} exceeds the next hop's fixed maximum of {max} octets (RFC 1870)"
            ),
        )
    }

    /// RFC 6531 §3.2: a non-ASCII address cannot go to a next hop without SMTPUTF8.
    pub fn next_hop_lacks_smtputf8() -> Self {
        Self::fixed(
            ReplyCode::MAILBOX_NAME_NOT_ALLOWED,
            S_5_6_7,
            "non-ASCII address, and the next hop does not support SMTPUTF8 (RFC 6531 §3.2)",
        )
    }

    /// RFC 6152 §3: an 8-bit message for a next hop without 8BITMIME that could not be
    /// converted to 7 bits. `reason` is the converter's (printable, bounded) explanation.
    pub fn conversion_failed(reason: &str) -> Self {
        Self::new(
            ReplyCode::TRANSACTION_FAILED,
            Some(S_5_6_3),
            format!(
                "8-bit message cannot be converted to 7 bits for a next hop without 8BITMIME: {}",
                printable(reason)
            ),
        )
    }

    /// A stored reverse-path that no longer parses (the spool is trusted, but not blindly).
    pub fn bad_stored_sender(address: &str) -> Self {
        Self::new(
            ReplyCode::MAILBOX_NAME_NOT_ALLOWED,
            Some(S_5_1_7),
            format!("<{}>: bad sender address syntax", printable(address)),
        )
    }

    /// A stored recipient that no longer parses.
    pub fn bad_stored_recipient(address: &str) -> Self {
        Self::new(
            ReplyCode::MAILBOX_NAME_NOT_ALLOWED,
            Some(S_5_1_3),
            format!("<{}>: bad recipient address syntax", printable(address)),
        )
    }

    /// The connection to the next hop broke; `when` says where ("in reply to RCPT TO").
    pub fn next_hop_connection_lost(when: &str) -> Self {
        Self::new(
            ReplyCode::SERVICE_NOT_AVAILABLE,
            Some(S_4_4_2),
            format!("lost connection with the next hop {}", printable(when)),
        )
    }

    /// The next hop did not answer within the RFC 5321 §4.5.3.2 timeout.
    pub fn next_hop_timed_out(when: &str) -> Self {
        Self::new(
            ReplyCode::SERVICE_NOT_AVAILABLE,
            Some(S_4_4_2),
            format!("timed out waiting for the next hop {}", printable(when)),
        )
    }

    /// The next hop sent something that is not an SMTP reply (or one over our limits).
    pub fn next_hop_bad_reply(when: &str, error: &ReplyError) -> Self {
        Self::new(
            ReplyCode::SERVICE_NOT_AVAILABLE,
            Some(S_4_5_0),
            format!(
                "malformed reply from the next hop {}: {}",
                printable(when),
                error
            ),
        )
    }

    /// The next hop sent a well-formed reply that makes no sense where it came.
    pub fn next_hop_unexpected_reply(when: &str, reply: &Reply) -> Self {
        Self::new(
            ReplyCode::SERVICE_NOT_AVAILABLE,
            Some(S_4_5_0),
            format!(
                "unexpected reply from the next hop {}: {}",
                printable(when),
                reply.code()
            ),
        )
    }

    /// No connection could be made to any address of the next hop; `why` names the last
    /// attempt's target and error.
    pub fn next_hop_unreachable(why: &str) -> Self {
        Self::new(
            ReplyCode::SERVICE_NOT_AVAILABLE,
            Some(S_4_4_1),
            format!("connect to the next hop failed: {}", printable(why)),
        )
    }

    /// The route requires TLS and the next hop does not announce STARTTLS (RFC 3207).
    pub fn next_hop_lacks_starttls() -> Self {
        Self::fixed(
            ReplyCode::SERVICE_NOT_AVAILABLE,
            S_4_7_4,
            "TLS is required for this route, but the next hop does not offer STARTTLS",
        )
    }

    /// The route requires TLS and the next hop answered STARTTLS with `reply`.
    pub fn next_hop_refused_starttls(reply: &Reply) -> Self {
        Self::new(
            ReplyCode::SERVICE_NOT_AVAILABLE,
            Some(S_4_7_4),
            format!(
                "TLS is required for this route, but the next hop refused STARTTLS: {} {}",
                reply.code(),
                printable(reply.text().lines().next().unwrap_or(""))
            ),
        )
    }

    /// The TLS handshake after STARTTLS failed or timed out; `why` names the cause.
    pub fn next_hop_tls_failed(why: &str) -> Self {
        Self::new(
            ReplyCode::SERVICE_NOT_AVAILABLE,
            Some(S_4_7_5),
            format!("TLS handshake with the next hop failed: {}", printable(why)),
        )
    }

    /// The stored message could not be read back (an I/O error): retried later.
    pub fn spool_unreadable(why: &str) -> Self {
        Self::new(
            ReplyCode::SERVICE_NOT_AVAILABLE,
            Some(S_4_3_0),
            format!(
                "message could not be read from the spool: {}",
                printable(why)
            ),
        )
    }

    /// This core already tracks `delivery.destinations_max` destinations: retried later.
    pub fn destinations_full() -> Self {
        Self::fixed(
            ReplyCode::SERVICE_NOT_AVAILABLE,
            S_4_4_5,
            "too many destinations queued on this core (delivery.destinations_max)",
        )
    }

    /// `delivery.max_age` passed while the recipient was still deferred (RFC 5321
    /// §4.5.4.1 give-up time); `last` is the last temporary reason.
    pub fn delivery_expired(last: &str) -> Self {
        Self::new(
            ReplyCode::TRANSACTION_FAILED,
            Some(S_5_4_7),
            format!(
                "delivery time expired (delivery.max_age); last error: {}",
                printable(last)
            ),
        )
    }

    /// More `Received:` fields than `smtp.hopcount_limit` (Postfix's `hopcount_limit`):
    /// the message is going round in a loop.
    pub fn too_many_hops(count: usize, limit: usize) -> Self {
        Self::new(
            ReplyCode::TRANSACTION_FAILED,
            Some(S_5_4_6),
            format!("Too many hops: {count} Received headers, at most {limit} (mail loop?)"),
        )
    }

    /// The next hop for `what` (a domain, or a route's next hop) is this relay itself
    /// (Postfix's wording).
    pub fn loops_back_to_myself(what: &str) -> Self {
        Self::new(
            ReplyCode::TRANSACTION_FAILED,
            Some(S_5_4_6),
            format!("mail for {} loops back to myself", printable(what)),
        )
    }

    /// The next hop `host` greeted us (`when`: "greeted me", "replied to EHLO") with our
    /// own host name `name`: it is this relay, reached another way (Postfix's wording).
    pub fn greeted_with_own_name(host: &str, when: &str, name: &str) -> Self {
        Self::new(
            ReplyCode::TRANSACTION_FAILED,
            Some(S_5_4_6),
            format!(
                "mail loops: host {} {} with my own hostname {}",
                printable(host),
                when,
                printable(name)
            ),
        )
    }

    /// `relay queue bounce`: the operator returned the message to its sender.
    pub fn bounced_by_operator() -> Self {
        Self::fixed(
            ReplyCode::MAILBOX_UNAVAILABLE,
            S_5_0_0,
            "returned to sender by the relay's operator",
        )
    }

    /// `relay queue delete`: the operator removed the message without a notice.
    pub fn deleted_by_operator() -> Self {
        Self::fixed(
            ReplyCode::MAILBOX_UNAVAILABLE,
            S_5_0_0,
            "deleted by the relay's operator (no notice sent)",
        )
    }

    /// The relay abandoned a delivery in progress (the driver quit mid-transaction).
    pub fn delivery_aborted() -> Self {
        Self::fixed(
            ReplyCode::SERVICE_NOT_AVAILABLE,
            S_4_3_0,
            "delivery abandoned by the relay",
        )
    }
}

/// One line of a reply as a client reads it (RFC 5321 §4.2): the code, whether the line ends
/// its reply (`ddd SP text` or a bare `ddd`) or continues it (`ddd-text`), the enhanced status
/// when the text starts with one whose class agrees with the code (RFC 2034 §3), and the rest
/// of the text as sent (a client should not reject a reply for odd bytes in its text).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyLine<'a> {
    pub code: ReplyCode,
    pub last: bool,
    pub status: Option<EnhancedStatus>,
    pub text: &'a [u8],
}

/// Why bytes from a server are not a reply. Exposure: the client side (outbound delivery,
/// loadgen) parses what remote servers send; nothing here panics on any input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplyParseError {
    #[error("reply line does not start with a reply code")]
    Code,
    #[error("reply code not followed by a space, a hyphen or the line end")]
    Separator,
    #[error("the lines of a multi-line reply carry different codes")]
    MixedCodes,
    #[error("reply longer than {} octets", REPLY_MAX)]
    TooLong,
}

/// The longest reply [`Reply::parse`] waits for. RFC 5321 §4.5.3.1.5 bounds a reply line at
/// 512 octets; an EHLO reply has one line per extension, so a generous multiple of that.
pub const REPLY_MAX: usize = 64 * 1024;

impl EnhancedStatus {
    /// `class.subject.detail` (RFC 3463 §2) at the start of `text`, ended by a space or the
    /// end of `text`; returns the status and the rest after that space.
    fn parse_prefix(text: &[u8]) -> Option<(Self, &[u8])> {
        let end = memchr::memchr(b' ', text).unwrap_or(text.len());
        let mut parts = text[..end].split(|&b| b == b'.');
        let mut number = |max_digits: usize| -> Option<u16> {
            let digits = parts.next()?;
            if digits.is_empty()
                || digits.len() > max_digits
                || !digits.iter().all(u8::is_ascii_digit)
            {
                return None;
            }
            Some(
                digits
                    .iter()
                    .fold(0u16, |n, &d| n * 10 + u16::from(d - b'0')),
            )
        };
        let class = number(1)?;
        let subject = number(3)?;
        let detail = number(3)?;
        if parts.next().is_some() {
            return None;
        }
        let status = Self::new(class as u8, subject, detail)?;
        Some((status, text.get(end + 1..).unwrap_or(&[])))
    }
}

impl Reply {
    /// Parses one reply line without its line end (a trailing CR is ignored, so a bare-LF
    /// server still parses). Allocates nothing: the hot path of a client.
    pub fn parse_line(line: &[u8]) -> Result<ReplyLine<'_>, ReplyParseError> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let digits = line.get(..3).ok_or(ReplyParseError::Code)?;
        if !digits.iter().all(u8::is_ascii_digit) {
            return Err(ReplyParseError::Code);
        }
        let number = digits
            .iter()
            .fold(0u16, |n, &d| n * 10 + u16::from(d - b'0'));
        let code = ReplyCode::new(number).ok_or(ReplyParseError::Code)?;
        let (last, text) = match line.get(3) {
            None => (true, &line[3..]),
            Some(b' ') => (true, &line[4..]),
            Some(b'-') => (false, &line[4..]),
            Some(_) => return Err(ReplyParseError::Separator),
        };
        let (status, text) = match EnhancedStatus::parse_prefix(text) {
            Some((status, rest)) if status.class() == code.class() => (Some(status), rest),
            _ => (None, text),
        };
        Ok(ReplyLine {
            code,
            last,
            status,
            text,
        })
    }

    /// Parses one complete reply, single- or multi-line, from the start of `input`: the reply
    /// and the octets it took, or `None` if its last line has not arrived yet. The enhanced
    /// status of the first line becomes the reply's; each line's own copy of it is removed.
    /// Text that is not UTF-8 is replaced (U+FFFD), as it only ever reaches logs and reports.
    /// `parse(encode(r)) == r` for every reply this module builds.
    pub fn parse(input: &[u8]) -> Result<Option<(Reply, usize)>, ReplyParseError> {
        let mut offset = 0;
        let mut head: Option<(ReplyCode, Option<EnhancedStatus>)> = None;
        let mut text = String::new();
        while let Some(lf) = memchr::memchr(b'\n', &input[offset..]) {
            let raw = &input[offset..offset + lf];
            offset += lf + 1;
            let line = Self::parse_line(raw)?;
            let (code, status) = match head {
                None => {
                    head = Some((line.code, line.status));
                    (line.code, line.status)
                }
                Some((code, status)) => {
                    if line.code != code {
                        return Err(ReplyParseError::MixedCodes);
                    }
                    text.push('\n');
                    (code, status)
                }
            };
            // A line loses only the reply's own status; any other text stays whole.
            let line_text = if line.status.is_some() && line.status == status {
                line.text
            } else {
                let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
                raw.get(4..).unwrap_or(&[])
            };
            text.push_str(&String::from_utf8_lossy(line_text));
            if line.last {
                return Ok(Some((Reply::new(code, status, text), offset)));
            }
        }
        if input.len() > REPLY_MAX {
            return Err(ReplyParseError::TooLong);
        }
        Ok(None)
    }
}

impl fmt::Display for Reply {
    /// One log-friendly line: `554 5.5.2 text` with multi-line text joined by `/`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(status) = self.status {
            write!(f, " {status}")?;
        }
        for (i, line) in self.text.split('\n').enumerate() {
            f.write_str(if i == 0 { " " } else { " / " })?;
            f.write_str(line)?;
        }
        Ok(())
    }
}

/// Appends a reply line, replacing control characters so that text can never end the line.
fn push_printable(out: &mut Vec<u8>, line: &str) {
    if line.bytes().all(|b| !b.is_ascii_control()) {
        out.extend_from_slice(line.as_bytes());
    } else {
        out.extend(
            line.bytes()
                .map(|b| if b.is_ascii_control() { b'?' } else { b }),
        );
    }
}

/// Peer or config text for a reply: control characters (CR, LF, TAB, ...) become `?`.
pub(crate) fn printable(text: &str) -> Cow<'_, str> {
    if text.chars().any(|c| c.is_control()) {
        Cow::Owned(
            text.chars()
                .map(|c| if c.is_control() { '?' } else { c })
                .collect(),
        )
    } else {
        Cow::Borrowed(text)
    }
}

/// Bounds on one reply read from a next hop (the outbound client's side). A hostile next
/// hop can make the client hold at most `line_max * lines_max` octets of reply text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyLimits {
    /// Octets of one reply line, CRLF included. RFC 5321 §4.5.3.1.5 sets 512; real servers
    /// write longer EHLO and rejection lines, so the default is 4096.
    pub line_max: usize,
    /// Lines of one reply (a multi-line EHLO reply has one per extension).
    pub lines_max: usize,
}

impl Default for ReplyLimits {
    fn default() -> Self {
        Self {
            line_max: 4096,
            lines_max: 100,
        }
    }
}

/// Why bytes from a next hop are not a reply. Any of them ends the connection: after it
/// nothing tells where the next reply starts.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("reply line longer than {max} octets")]
    LineTooLong { max: usize },
    #[error("reply longer than {max} lines")]
    TooManyLines { max: usize },
    #[error("a reply line must start with a code 200-559 and then SP, '-' or CRLF")]
    Malformed,
    #[error("a multi-line reply changed its code from {first} to {then}")]
    MixedCodes { first: u16, then: u16 },
}

/// The incremental reply reader of the outbound client (RFC 5321 §4.2).
///
/// It consumes whole lines only: a partial line stays in the caller's buffer, which thus
/// never needs more than [`ReplyLimits::line_max`] octets before an error or progress. The
/// lines of a multi-line reply already read are kept here, so a reply may be split at any
/// octet.
///
/// Leniency: a bare LF ends a line too (a reply cannot smuggle anything), and a first line's
/// text that starts with `class.subject.detail` of the reply's class is read as the RFC
/// 3463 enhanced status code, whether or not ENHANCEDSTATUSCODES was announced; on later
/// lines the same code, if present, is dropped. Control characters in the text become `?`,
/// and text that is not UTF-8 is converted lossily, so a reply is safe to log.
#[derive(Clone, Debug, Default)]
pub struct ReplyParser {
    /// The code of the first line of the reply being read, if any.
    code: Option<ReplyCode>,
    status: Option<EnhancedStatus>,
    text: String,
    lines: usize,
}

impl ReplyParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Lines of an unfinished multi-line reply are held.
    pub fn in_progress(&self) -> bool {
        self.code.is_some()
    }

    /// Reads whole lines from `input` until a reply is complete. Returns the octets consumed
    /// and the reply, or `None` once only a partial line (or nothing) is left.
    pub fn parse(
        &mut self,
        input: &[u8],
        limits: &ReplyLimits,
    ) -> Result<(usize, Option<Reply>), ReplyError> {
        let mut consumed = 0;
        loop {
            let rest = &input[consumed..];
            let window = &rest[..rest.len().min(limits.line_max)];
            let Some(lf) = memchr::memchr(b'\n', window) else {
                if rest.len() >= limits.line_max {
                    return Err(ReplyError::LineTooLong {
                        max: limits.line_max,
                    });
                }
                return Ok((consumed, None));
            };
            consumed += lf + 1;
            let line = &rest[..lf];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if let Some(reply) = self.line(line, limits)? {
                return Ok((consumed, Some(reply)));
            }
        }
    }

    /// One line without its line end; the reply when it was the last line.
    fn line(&mut self, line: &[u8], limits: &ReplyLimits) -> Result<Option<Reply>, ReplyError> {
        let (code, last, text) = split_reply_line(line)?;
        self.lines += 1;
        if self.lines > limits.lines_max {
            return Err(ReplyError::TooManyLines {
                max: limits.lines_max,
            });
        }
        let text = String::from_utf8_lossy(text);
        let text = printable(&text);
        match self.code {
            None => {
                self.code = Some(code);
                let (status, rest) = split_status(&text, code.class());
                self.status = status;
                self.text.push_str(rest);
            }
            Some(first) if first != code => {
                return Err(ReplyError::MixedCodes {
                    first: first.get(),
                    then: code.get(),
                })
            }
            Some(_) => {
                let rest = match split_status(&text, code.class()) {
                    (Some(status), rest) if Some(status) == self.status => rest,
                    _ => &text,
                };
                self.text.push('\n');
                self.text.push_str(rest);
            }
        }
        if !last {
            return Ok(None);
        }
        let taken = std::mem::take(self);
        Ok(Some(Reply::new(code, taken.status, taken.text)))
    }
}

/// `code (SP / "-" / end) text` (RFC 5321 §4.2: `Reply-code [ SP textstring ]`, and
/// `Reply-code "-" [ textstring ]` for all but the last line).
fn split_reply_line(line: &[u8]) -> Result<(ReplyCode, bool, &[u8]), ReplyError> {
    let digits = line.get(..3).ok_or(ReplyError::Malformed)?;
    let mut value = 0u16;
    for &d in digits {
        if !d.is_ascii_digit() {
            return Err(ReplyError::Malformed);
        }
        value = value * 10 + u16::from(d - b'0');
    }
    let code = ReplyCode::new(value).ok_or(ReplyError::Malformed)?;
    match line.get(3) {
        None => Ok((code, true, &[])),
        Some(b' ') => Ok((code, true, &line[4..])),
        Some(b'-') => Ok((code, false, &line[4..])),
        Some(_) => Err(ReplyError::Malformed),
    }
}

/// A leading RFC 3463 code of class `class`, then the text after one space.
fn split_status(text: &str, class: u8) -> (Option<EnhancedStatus>, &str) {
    let end = text.find(' ').unwrap_or(text.len());
    let mut parts = text[..end].split('.');
    let mut number = |max_digits: usize| -> Option<u16> {
        let part = parts.next()?;
        if part.is_empty() || part.len() > max_digits || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let status = (|| {
        let first = number(1)?;
        let subject = number(3)?;
        let detail = number(3)?;
        let status = EnhancedStatus::new(u8::try_from(first).ok()?, subject, detail)?;
        (status.class() == class).then_some(status)
    })();
    if parts.next().is_some() {
        return (None, text);
    }
    match status {
        Some(status) => {
            let rest = &text[end..];
            (Some(status), rest.strip_prefix(' ').unwrap_or(rest))
        }
        None => (None, text),
    }
}

/// Parses exactly one complete reply (tests and tools; the client uses [`ReplyParser`]).
pub fn parse_reply(bytes: &[u8], limits: &ReplyLimits) -> Result<Reply, ReplyError> {
    match ReplyParser::new().parse(bytes, limits)? {
        (consumed, Some(reply)) if consumed == bytes.len() => Ok(reply),
        _ => Err(ReplyError::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(reply: &Reply) -> String {
        let mut out = Vec::new();
        reply.encode(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn single_line_with_enhanced_status() {
        assert_eq!(wire(&Reply::ok()), "250 2.0.0 Ok\r\n");
        assert_eq!(
            wire(&Reply::too_many_recipients()),
            "452 4.5.3 Error: too many recipients\r\n"
        );
    }

    #[test]
    fn greeting_and_helo_have_no_enhanced_status() {
        assert_eq!(
            wire(&Reply::greeting("mx.example")),
            "220 mx.example ESMTP relay\r\n"
        );
        assert_eq!(wire(&Reply::helo("mx.example")), "250 mx.example\r\n");
        assert_eq!(
            wire(&Reply::start_mail_input()),
            "354 End data with <CR><LF>.<CR><LF>\r\n"
        );
    }

    #[test]
    fn multi_line_marks_all_but_the_last_line_with_a_dash() {
        let reply = Reply::ehlo(
            "mx.example",
            &[Extension::Pipelining, Extension::Size(1000), Extension::Dsn],
        );
        assert_eq!(
            wire(&reply),
            "250-mx.example\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250 DSN\r\n"
        );
        let with_status = Reply::new(ReplyCode::OK, EnhancedStatus::new(2, 0, 0), "a\nb");
        assert_eq!(wire(&with_status), "250-2.0.0 a\r\n250 2.0.0 b\r\n");
    }

    #[test]
    fn peer_text_cannot_inject_lines() {
        let reply = Reply::relay_denied("a\r\n250 ok@x");
        assert_eq!(
            wire(&reply),
            "554 5.7.1 <a??250 ok@x>: Relay access denied\r\n"
        );
        let raw = Reply::new(ReplyCode::OK, None, "x\ry");
        assert_eq!(wire(&raw), "250 x?y\r\n");
    }

    #[test]
    fn codes_are_validated() {
        assert_eq!(ReplyCode::new(250), Some(ReplyCode::OK));
        assert_eq!(ReplyCode::new(199), None);
        assert_eq!(ReplyCode::new(260), None);
        assert_eq!(ReplyCode::new(600), None);
        assert!(ReplyCode::new(554).is_some_and(ReplyCode::is_negative));
        assert!(!ReplyCode::OK.is_negative());
        assert_eq!(EnhancedStatus::new(3, 0, 0), None);
        assert_eq!(EnhancedStatus::new(5, 1000, 0), None);
        for status in [
            S_2_0_0, S_2_1_0, S_2_1_5, S_2_5_2, S_4_2_0, S_4_2_2, S_4_3_1, S_4_3_2, S_4_4_2,
            S_4_5_3, S_4_7_0, S_5_1_1, S_5_1_3, S_5_1_7, S_5_3_4, S_5_5_1, S_5_5_2, S_5_5_4,
            S_5_6_0, S_5_6_7, S_5_7_1, S_4_3_0, S_4_5_0, S_5_6_3, S_4_7_1,
        ] {
            assert_eq!(
                EnhancedStatus::new(status.class(), status.subject(), status.detail()),
                Some(status)
            );
        }
    }

    /// Every constructor that carries an enhanced status.
    fn with_status() -> Vec<Reply> {
        vec![
            Reply::ok(),
            Reply::sender_ok(),
            Reply::recipient_ok(),
            Reply::queued("X"),
            Reply::chunk_received(1),
            Reply::closing(),
            Reply::help(),
            Reply::cannot_vrfy(),
            Reply::too_many_errors("h"),
            Reply::timeout("h"),
            Reply::shutting_down("h"),
            Reply::too_many_recipients(),
            Reply::insufficient_storage(),
            Reply::body_memory_exhausted(),
            Reply::message_rate_exceeded(),
            Reply::unknown_command(),
            Reply::line_too_long(),
            Reply::bare_lf_in_command(),
            Reply::syntax("X"),
            Reply::bad_sender_syntax(),
            Reply::bad_recipient_syntax(),
            Reply::bad_parameter_value("X"),
            Reply::duplicate_parameter("X"),
            Reply::parameter_not_recognized("X"),
            Reply::parameters_need_ehlo(),
            Reply::parameter_not_implemented("X"),
            Reply::turn_not_implemented(),
            Reply::expn_not_implemented(),
            Reply::send_not_implemented(),
            Reply::not_implemented(),
            Reply::need_helo(),
            Reply::need_mail(),
            Reply::need_recipient(),
            Reply::nested_mail(),
            Reply::data_after_bdat(),
            Reply::recipient_after_bdat(),
            Reply::binarymime_needs_bdat(),
            Reply::message_too_large(),
            Reply::no_valid_recipients(),
            Reply::relay_denied("a@b"),
            Reply::utf8_needs_smtputf8(),
            Reply::bare_line_end_in_data(),
            Reply::text_line_too_long(1000),
            Reply::next_hop_size_exceeded(2, 1),
            Reply::next_hop_lacks_smtputf8(),
            Reply::next_hop_lacks_starttls(),
            Reply::next_hop_refused_starttls(&Reply::new(
                ReplyCode::AUTH_TEMPORARY_FAILURE,
                EnhancedStatus::new(4, 7, 0),
                "no TLS\nsecond line",
            )),
            Reply::next_hop_tls_failed("x\r\ny"),
            Reply::conversion_failed("x"),
            Reply::bad_stored_sender("x"),
            Reply::bad_stored_recipient("x"),
            Reply::next_hop_connection_lost("x"),
            Reply::next_hop_timed_out("x"),
            Reply::next_hop_bad_reply("x", &ReplyError::Malformed),
            Reply::next_hop_unexpected_reply("x", &Reply::ok()),
            Reply::delivery_aborted(),
        ]
    }

    #[test]
    fn enhanced_class_matches_reply_class() {
        // RFC 3463 §2: the class digit of the enhanced code agrees with the reply's first digit.
        for reply in with_status() {
            let status = reply.status().unwrap();
            assert_eq!(status.class(), reply.code().class(), "{reply}");
        }
    }

    fn read(bytes: &[u8]) -> Result<Reply, ReplyError> {
        parse_reply(bytes, &ReplyLimits::default())
    }

    #[test]
    fn parses_replies() {
        type Case<'a> = (&'a [u8], u16, Option<(u8, u16, u16)>, &'a str);
        let table: &[Case<'_>] = &[
            (b"250 2.0.0 Ok\r\n", 250, Some((2, 0, 0)), "Ok"),
            (b"250 Ok\r\n", 250, None, "Ok"),
            (b"250\r\n", 250, None, ""),
            (b"250 \r\n", 250, None, ""),
            (
                b"354 End data with <CR><LF>.<CR><LF>\r\n",
                354,
                None,
                "End data with <CR><LF>.<CR><LF>",
            ),
            // A status of another class is text (RFC 3463 §2: the classes agree).
            (b"550 4.1.1 no\r\n", 550, None, "4.1.1 no"),
            (b"550 5.1.1\r\n", 550, Some((5, 1, 1)), ""),
            (b"550 5.1.10 x\r\n", 550, Some((5, 1, 10)), "x"),
            (b"550 5.1.1000 x\r\n", 550, None, "5.1.1000 x"),
            (b"550 5.1 x\r\n", 550, None, "5.1 x"),
            (b"550 5.1.1.1 x\r\n", 550, None, "5.1.1.1 x"),
            (
                b"250-mx.example\r\n250-PIPELINING\r\n250 SIZE 100\r\n",
                250,
                None,
                "mx.example\nPIPELINING\nSIZE 100",
            ),
            (
                b"451-4.7.1 one\r\n451-4.7.1 two\r\n451 three\r\n",
                451,
                Some((4, 7, 1)),
                "one\ntwo\nthree",
            ),
            (b"250-\r\n250 x\r\n", 250, None, "\nx"),
            // Lenient: a bare LF ends a line; control characters and bad UTF-8 are defused.
            (b"250 ok\n", 250, None, "ok"),
            (b"250 a\x00b\tc\xffd\r\n", 250, None, "a?b?c\u{fffd}d"),
        ];
        for (wire, code, status, text) in table {
            let reply = read(wire).unwrap_or_else(|e| panic!("{wire:?}: {e}"));
            assert_eq!(reply.code().get(), *code, "{wire:?}");
            assert_eq!(
                reply.status(),
                status.and_then(|(c, s, d)| EnhancedStatus::new(c, s, d)),
                "{wire:?}"
            );
            assert_eq!(reply.text(), *text, "{wire:?}");
        }
    }

    #[test]
    fn refuses_malformed_replies() {
        let table: &[(&[u8], ReplyError)] = &[
            (b"25 x\r\n", ReplyError::Malformed),
            (b"\r\n", ReplyError::Malformed),
            (b"2500 x\r\n", ReplyError::Malformed),
            (b"250x\r\n", ReplyError::Malformed),
            (b"abc x\r\n", ReplyError::Malformed),
            (b"199 x\r\n", ReplyError::Malformed),
            (b"260 x\r\n", ReplyError::Malformed),
            (b"600 x\r\n", ReplyError::Malformed),
            (
                b"250-a\r\n550 b\r\n",
                ReplyError::MixedCodes {
                    first: 250,
                    then: 550,
                },
            ),
            (b"250-a\r\n", ReplyError::Malformed),
        ];
        for (wire, error) in table {
            assert_eq!(read(wire), Err(error.clone()), "{wire:?}");
        }
    }

    #[test]
    fn reply_reading_is_bounded_and_incremental() {
        let limits = ReplyLimits {
            line_max: 16,
            lines_max: 3,
        };
        let mut long = Reply::new(ReplyCode::OK, None, "abcdef\u{e9}gh!");
        long.truncate_text(11);
        assert_eq!(long.text(), "abcdef\u{e9}gh!");
        // The cut falls inside the two octets of the e-acute: it moves back before it.
        long.truncate_text(10);
        assert_eq!(long.text(), "abcdef...");
        let mut parser = ReplyParser::new();
        // A partial line under the limit waits; at the limit it is an error.
        assert_eq!(parser.parse(b"250 abc", &limits), Ok((0, None)));
        assert_eq!(
            parser.parse(&[b'x'; 16], &limits),
            Err(ReplyError::LineTooLong { max: 16 })
        );
        assert_eq!(
            ReplyParser::new().parse(b"250 0123456789abcdef\r\n", &limits),
            Err(ReplyError::LineTooLong { max: 16 })
        );
        let mut parser = ReplyParser::new();
        assert_eq!(
            parser.parse(b"250-a\r\n250-b\r\n250-c\r\n250-d\r\n", &limits),
            Err(ReplyError::TooManyLines { max: 3 })
        );
        // Whole lines are consumed as they come; the reply is returned with its last line.
        let mut parser = ReplyParser::new();
        assert_eq!(parser.parse(b"250-a\r\n250 b", &limits), Ok((7, None)));
        assert!(parser.in_progress());
        let (n, reply) = parser.parse(b"250 b\r\n221 next\r\n", &limits).unwrap();
        assert_eq!(n, 7);
        assert_eq!(reply.unwrap().text(), "a\nb");
        assert!(!parser.in_progress());
    }

    #[test]
    fn every_split_gives_the_same_replies() {
        let wire: &[u8] = b"220 mx ESMTP\r\n250-mx\r\n250-PIPELINING\r\n250 8BITMIME\r\n550-5.1.1 a\r\n550 5.1.1 b\r\n";
        let limits = ReplyLimits::default();
        let run = |pieces: &[&[u8]]| {
            let mut parser = ReplyParser::new();
            let mut buffer = Vec::new();
            let mut replies = Vec::new();
            for piece in pieces {
                buffer.extend_from_slice(piece);
                loop {
                    let (n, reply) = parser.parse(&buffer, &limits).unwrap();
                    buffer.drain(..n);
                    match reply {
                        Some(reply) => replies.push(reply),
                        None => break,
                    }
                }
            }
            assert!(buffer.is_empty());
            replies
        };
        let whole = run(&[wire]);
        assert_eq!(whole.len(), 3);
        for k in 0..=wire.len() {
            let (a, b) = wire.split_at(k);
            assert_eq!(run(&[a, b]), whole, "split at {k}");
        }
        let bytes: Vec<&[u8]> = wire.chunks(1).collect();
        assert_eq!(run(&bytes), whole);
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        fn reply() -> impl Strategy<Value = Reply> {
            let code = (2u16..=5, 0u16..=5, 0u16..=9).prop_map(|(a, b, c)| a * 100 + b * 10 + c);
            // The first text line must not itself look like an enhanced status code.
            let first = "([ -/:-~][ -~]{0,30})?";
            let more = proptest::collection::vec("[ -~]{0,30}", 0..4);
            (code, any::<bool>(), 0u16..=999, 0u16..=999, first, more).prop_map(
                |(code, with_status, subject, detail, first, more)| {
                    let code = ReplyCode::new(code).unwrap();
                    let status = if with_status {
                        EnhancedStatus::new(code.class(), subject, detail)
                    } else {
                        None
                    };
                    let mut text = first;
                    for line in more {
                        text.push('\n');
                        text.push_str(&line);
                    }
                    Reply::new(code, status, text)
                },
            )
        }

        proptest! {
            #[test]
            fn parse_of_encode_is_identity(reply in reply()) {
                let mut wire = Vec::new();
                reply.encode(&mut wire);
                let parsed = parse_reply(&wire, &ReplyLimits::default());
                prop_assert_eq!(parsed, Ok(reply));
            }
        }
    }

    #[test]
    fn parse_inverts_encode_for_every_constructor() {
        let mut all = with_status();
        all.extend([
            Reply::greeting("mx.example"),
            Reply::helo("mx.example"),
            Reply::ehlo(
                "mx.example",
                &[
                    Extension::Pipelining,
                    Extension::Size(1000),
                    Extension::Chunking,
                ],
            ),
            Reply::start_mail_input(),
            Reply::list_members(&["a@b".into(), "c@d".into()]),
            Reply::new(ReplyCode::OK, EnhancedStatus::new(2, 0, 0), ""),
            Reply::new(ReplyCode::OK, EnhancedStatus::new(2, 0, 0), "a\n\nb"),
        ]);
        for reply in all {
            let bytes = wire(&reply).into_bytes();
            assert_eq!(
                Reply::parse(&bytes),
                Ok(Some((reply.clone(), bytes.len()))),
                "{reply}"
            );
            // Every shorter prefix is incomplete, never an error or a different reply.
            for cut in 0..bytes.len() {
                assert_eq!(
                    Reply::parse(&bytes[..cut]),
                    Ok(None),
                    "{reply} cut at {cut}"
                );
            }
            // What follows the reply (the next pipelined reply) is left alone.
            let mut two = bytes.clone();
            two.extend_from_slice(b"354 go on\r\n");
            assert_eq!(Reply::parse(&two), Ok(Some((reply, bytes.len()))));
        }
    }

    #[test]
    fn parse_line_table() {
        let s = |c, d, e| EnhancedStatus::new(c, d, e);
        type Expected<'a> = Result<(u16, bool, Option<EnhancedStatus>, &'a [u8]), ReplyParseError>;
        let table: &[(&[u8], Expected<'_>)] = &[
            (b"250 2.0.0 Ok", Ok((250, true, s(2, 0, 0), b"Ok"))),
            (b"250-PIPELINING", Ok((250, false, None, b"PIPELINING"))),
            (b"250 2.1.5 Ok\r", Ok((250, true, s(2, 1, 5), b"Ok"))),
            (b"220", Ok((220, true, None, b""))),
            (b"250 2.0.0", Ok((250, true, s(2, 0, 0), b""))),
            (b"250-", Ok((250, false, None, b""))),
            // A status whose class disagrees with the code is text (RFC 3463 §2).
            (b"451 2.0.0 odd", Ok((451, true, None, b"2.0.0 odd"))),
            (
                b"554 5.7.1 <a@b>: no",
                Ok((554, true, s(5, 7, 1), b"<a@b>: no")),
            ),
            (
                b"250 2.0 not a status",
                Ok((250, true, None, b"2.0 not a status")),
            ),
            (
                b"250 2.0.0000 long",
                Ok((250, true, None, b"2.0.0000 long")),
            ),
            (b"250 \xff\xfe", Ok((250, true, None, b"\xff\xfe"))),
            (b"", Err(ReplyParseError::Code)),
            (b"25", Err(ReplyParseError::Code)),
            (b"abc def", Err(ReplyParseError::Code)),
            (b"199 too low", Err(ReplyParseError::Code)),
            (b"600 too high", Err(ReplyParseError::Code)),
            (b"2500 x", Err(ReplyParseError::Separator)),
            (b"250_x", Err(ReplyParseError::Separator)),
        ];
        for (line, expected) in table {
            let got = Reply::parse_line(line).map(|l| (l.code.get(), l.last, l.status, l.text));
            assert_eq!(&got, expected, "{:?}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn parse_rejects_mixed_codes_and_endless_replies() {
        assert_eq!(
            Reply::parse(b"250-a\r\n251 b\r\n"),
            Err(ReplyParseError::MixedCodes)
        );
        let endless = b"250-x\r\n".repeat(REPLY_MAX / 7 + 1);
        assert_eq!(Reply::parse(&endless), Err(ReplyParseError::TooLong));
        // Bare LF line ends and non-UTF-8 text still parse.
        let (reply, used) = Reply::parse(b"250-a\n250 b\xff\n").unwrap().unwrap();
        assert_eq!((reply.text(), used), ("a\nb\u{fffd}", 13));
    }

    #[test]
    fn display_is_one_line() {
        assert_eq!(
            Reply::ehlo("h", &[Extension::Help]).to_string(),
            "250 h / HELP"
        );
        assert_eq!(Reply::ok().to_string(), "250 2.0.0 Ok");
    }
}
