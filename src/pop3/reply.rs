//! Typed POP3 responses: the one place where status indicators, response codes and response
//! text live (docs/ARCHITECTURE.md §10).
//!
//! A response is `+OK` or `-ERR`, optionally an RFC 2449 §8 response code in brackets, and
//! text. Multi-line responses (CAPA, LIST, UIDL, the AUTH mechanism list) are a status line,
//! lines of data and a line holding a single `.` (RFC 1939 §3); their data lines are
//! byte-stuffed here. Message bodies for RETR and TOP are stuffed by [`super::stuff`](mod@super::stuff), after
//! the status line built here.
//!
//! Every response the server sends is built by a named constructor below, so its wording is
//! decided once and tests compare against the same constructor. Encoding appends to a caller
//! buffer, so the responses to a pipelined group leave in one write (RFC 2449 §6.6).
//!
//! Standards: RFC 1939 §3 (status indicators, multi-line responses, byte-stuffing), RFC 2449
//! §8 (extended response codes: `[IN-USE]`, `[LOGIN-DELAY]`), RFC 3206 (`[SYS/TEMP]`,
//! `[SYS/PERM]`, `[AUTH]`), RFC 5034 §4 (the `+ ` continuation of AUTH).
//!
//! Exposure: a few constructors embed text from the configuration or the maildrop (hostname,
//! unique ids). [`Response::encode`] replaces control characters so that no such text can end a
//! response line early or inject one of its own.

use std::borrow::Cow;
use std::fmt;

/// `+OK` or `-ERR` (RFC 1939 §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    Ok,
    Err,
}

impl Status {
    pub const fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "+OK",
            Status::Err => "-ERR",
        }
    }
}

/// An extended response code, sent in brackets after the status indicator (RFC 2449 §8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResponseCode {
    /// RFC 2449 §8.1.1: the maildrop is locked by another session.
    InUse,
    /// RFC 2449 §8.1.2: the user logged in too recently (not sent yet; the driver may add a
    /// login-delay policy).
    LoginDelay,
    /// RFC 3206 §4: the failure is temporary and on the server's side; try again later.
    SysTemp,
    /// RFC 3206 §4: the failure is permanent and on the server's side.
    SysPerm,
    /// RFC 3206 §5: the credentials were wrong (as opposed to a system failure).
    Auth,
}

impl ResponseCode {
    pub const fn as_str(self) -> &'static str {
        match self {
            ResponseCode::InUse => "IN-USE",
            ResponseCode::LoginDelay => "LOGIN-DELAY",
            ResponseCode::SysTemp => "SYS/TEMP",
            ResponseCode::SysPerm => "SYS/PERM",
            ResponseCode::Auth => "AUTH",
        }
    }
}

/// A capability announced by CAPA (RFC 2449 §5, §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capability {
    /// RFC 2449 §6.1.
    Top,
    /// RFC 2449 §6.2: USER/PASS is accepted.
    User,
    /// RFC 2449 §6.3, RFC 5034 §3: the SASL mechanisms, space-separated.
    Sasl(&'static [&'static str]),
    /// RFC 2449 §6.4.
    RespCodes,
    /// RFC 2449 §6.6.
    Pipelining,
    /// RFC 2449 §6.7.
    Uidl,
    /// RFC 2449 §6.9.
    Implementation,
    /// RFC 3206 §6: `[AUTH]` and `[SYS/*]` may follow a failed authentication.
    AuthRespCode,
    /// RFC 2595 §4: STLS is offered.
    Stls,
}

impl Capability {
    fn push(self, text: &mut String) {
        match self {
            Capability::Top => text.push_str("TOP"),
            Capability::User => text.push_str("USER"),
            Capability::Sasl(mechanisms) => {
                text.push_str("SASL");
                for mechanism in mechanisms {
                    text.push(' ');
                    text.push_str(mechanism);
                }
            }
            Capability::RespCodes => text.push_str("RESP-CODES"),
            Capability::Pipelining => text.push_str("PIPELINING"),
            Capability::Uidl => text.push_str("UIDL"),
            Capability::Implementation => text.push_str("IMPLEMENTATION relay"),
            Capability::AuthRespCode => text.push_str("AUTH-RESP-CODE"),
            Capability::Stls => text.push_str("STLS"),
        }
    }
}

/// One status line: `+OK text`, `-ERR [CODE] text`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    status: Status,
    code: Option<ResponseCode>,
    text: Cow<'static, str>,
}

/// A multi-line response: a positive status line, data lines, then `.` (RFC 1939 §3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MultiLine {
    head: Response,
    /// The data lines, each ending in `\n` (encoded as CRLF).
    lines: String,
}

impl MultiLine {
    pub fn head(&self) -> &Response {
        &self.head
    }

    /// The data lines, without stuffing or the terminating `.`.
    pub fn lines(&self) -> impl Iterator<Item = &str> {
        self.lines.lines()
    }

    /// Appends the wire form, data lines byte-stuffed (RFC 1939 §3), `.` line included.
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.head.encode(out);
        for line in self.lines.lines() {
            if line.starts_with('.') {
                out.push(b'.');
            }
            push_printable(out, line);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }

    fn push_line(&mut self, line: impl fmt::Display) {
        use fmt::Write;
        // Writing to a String cannot fail.
        let _ = writeln!(self.lines, "{line}");
    }
}

impl Response {
    /// A response with any status, code and text; prefer the named constructors below.
    pub fn new(
        status: Status,
        code: Option<ResponseCode>,
        text: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            status,
            code,
            text: text.into(),
        }
    }

    const fn ok(text: &'static str) -> Self {
        Self {
            status: Status::Ok,
            code: None,
            text: Cow::Borrowed(text),
        }
    }

    const fn err(text: &'static str) -> Self {
        Self {
            status: Status::Err,
            code: None,
            text: Cow::Borrowed(text),
        }
    }

    const fn err_code(code: ResponseCode, text: &'static str) -> Self {
        Self {
            status: Status::Err,
            code: Some(code),
            text: Cow::Borrowed(text),
        }
    }

    pub fn status(&self) -> Status {
        self.status
    }

    pub fn code(&self) -> Option<ResponseCode> {
        self.code
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn is_ok(&self) -> bool {
        self.status == Status::Ok
    }

    /// Appends the wire form (one line, CRLF included) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.status.as_str().as_bytes());
        if let Some(code) = self.code {
            out.extend_from_slice(b" [");
            out.extend_from_slice(code.as_str().as_bytes());
            out.push(b']');
        }
        if !self.text.is_empty() {
            out.push(b' ');
            push_printable(out, &self.text);
        }
        out.extend_from_slice(b"\r\n");
    }

    fn multi(self) -> MultiLine {
        MultiLine {
            head: self,
            lines: String::new(),
        }
    }

    // ---- Greeting and sign-off ----

    /// RFC 1939 §4: `+OK <hostname> POP3 ready [<timestamp>]`; the timestamp (angle brackets
    /// included) is there only when APOP is offered (RFC 1939 §7).
    pub fn greeting(hostname: &str, timestamp: Option<&str>) -> Self {
        let hostname = printable(hostname);
        let text = match timestamp {
            Some(timestamp) => format!("{hostname} POP3 ready {}", printable(timestamp)),
            None => format!("{hostname} POP3 ready"),
        };
        Self::new(Status::Ok, None, text)
    }

    /// QUIT without deletions (in AUTHORIZATION, or in TRANSACTION with nothing marked).
    pub fn signing_off(hostname: &str) -> Self {
        Self::new(
            Status::Ok,
            None,
            format!("{} POP3 server signing off", printable(hostname)),
        )
    }

    /// QUIT after the UPDATE state made the deletions durable (RFC 1939 §6).
    pub fn signing_off_deleted(hostname: &str, deleted: usize) -> Self {
        Self::new(
            Status::Ok,
            None,
            format!(
                "{} POP3 server signing off ({deleted} messages deleted)",
                printable(hostname)
            ),
        )
    }

    // ---- AUTHORIZATION ----

    /// USER accepted. Said whether or not the mailbox exists, so that USER reveals nothing.
    pub fn send_pass() -> Self {
        Self::ok("send PASS")
    }

    /// RFC 5034 §4: the continuation for AUTH PLAIN without an initial response. PLAIN's
    /// challenge is empty, so this is `+ ` and nothing else.
    pub fn sasl_continue(out: &mut Vec<u8>) {
        out.extend_from_slice(b"+ \r\n");
    }

    /// AUTH without a mechanism: the mechanisms, one per line (as CAPA's SASL line lists them;
    /// the RFC 1734 convention that clients such as Outlook probe with).
    pub fn mechanisms(mechanisms: &[&str]) -> MultiLine {
        let mut reply = Self::ok("SASL mechanisms follow").multi();
        for mechanism in mechanisms {
            reply.push_line(mechanism);
        }
        reply
    }

    /// The maildrop is locked and the session is in TRANSACTION (RFC 1939 §4, PASS).
    pub fn maildrop_ready(count: usize, size: u64) -> Self {
        Self::new(
            Status::Ok,
            None,
            format!("maildrop has {count} messages ({size} octets)"),
        )
    }

    /// RFC 3206 §5: the credentials were not accepted.
    pub fn auth_failed() -> Self {
        Self::err_code(ResponseCode::Auth, "authentication failed")
    }

    /// RFC 3206 §4: the credentials could not be checked now (the server's password checks
    /// are saturated); nothing was decided about them.
    pub fn auth_unavailable() -> Self {
        Self::err_code(
            ResponseCode::SysTemp,
            "authentication temporarily unavailable, try again later",
        )
    }

    /// The last allowed authentication failure of this session; the connection closes.
    pub fn auth_failures_exceeded() -> Self {
        Self::err_code(
            ResponseCode::Auth,
            "authentication failed; too many failures, closing connection",
        )
    }

    /// RFC 5034 §4: the client cancelled the exchange with `*`.
    pub fn auth_cancelled() -> Self {
        Self::err("authentication cancelled")
    }

    /// RFC 5034 §4: a response that is not base64 ends the exchange with -ERR.
    pub fn bad_base64() -> Self {
        Self::err("invalid base64 in SASL response")
    }

    /// RFC 4616 §2: not `[authzid] NUL authcid NUL passwd` in UTF-8.
    pub fn bad_plain_message() -> Self {
        Self::err("malformed PLAIN credentials")
    }

    pub fn unsupported_mechanism() -> Self {
        Self::err("unsupported SASL mechanism; use PLAIN")
    }

    /// USER/PASS or AUTH PLAIN on a connection without TLS where passwords may not cross
    /// in clear (Dovecot's wording and `[AUTH]` code for `disable_plaintext_auth`).
    pub fn plaintext_auth_disallowed() -> Self {
        Self::err_code(
            ResponseCode::Auth,
            "Plaintext authentication disallowed on non-secure (SSL/TLS) connections",
        )
    }

    /// USER/PASS is switched off by configuration (RFC 2449 §6.2: USER is not advertised).
    pub fn user_disabled() -> Self {
        Self::err("USER/PASS not available; use AUTH PLAIN")
    }

    /// APOP without a timestamp in the greeting (RFC 1939 §7).
    pub fn apop_disabled() -> Self {
        Self::err("APOP not available")
    }

    /// RFC 1939 §7: PASS is valid only right after a successful USER.
    pub fn pass_needs_user() -> Self {
        Self::err("send USER first")
    }

    /// RFC 2449 §8.1.1.
    pub fn in_use() -> Self {
        Self::err_code(ResponseCode::InUse, "maildrop is locked by another session")
    }

    /// A login checked here whose session the user's home node refused (`[cluster]`), by
    /// the code the driver chose: `[IN-USE]` (the maildrop is locked there, RFC 2449
    /// §8.1.1), `[AUTH]` (no such mailbox there, RFC 3206 §5), `[SYS/PERM]`, or else
    /// `[SYS/TEMP]` (RFC 3206 §4).
    pub fn login_refused(code: ResponseCode) -> Self {
        match code {
            ResponseCode::InUse => Self::in_use(),
            ResponseCode::Auth => Self::err_code(code, "no such mailbox"),
            ResponseCode::SysPerm => Self::err_code(code, "mailbox not available"),
            ResponseCode::LoginDelay | ResponseCode::SysTemp => Self::err_code(
                ResponseCode::SysTemp,
                "mailbox temporarily unavailable, try again later",
            ),
        }
    }

    /// RFC 3206 §4: the maildrop could not be opened for a reason on our side.
    pub fn maildrop_unavailable() -> Self {
        Self::err_code(
            ResponseCode::SysTemp,
            "maildrop unavailable, try again later",
        )
    }

    /// At connect, when the core or the client address has no connection slot left
    /// (RFC 3206 §4: temporary, on our side).
    pub fn too_many_connections() -> Self {
        Self::err_code(
            ResponseCode::SysTemp,
            "too many connections, try again later",
        )
    }

    /// Unauthenticated peers get a bounded number of commands.
    pub fn too_many_commands() -> Self {
        Self::err("too many commands without authentication, closing connection")
    }

    // ---- TRANSACTION ----

    /// STAT: exactly `+OK count size` (RFC 1939 §5, drop listing).
    pub fn stat(count: usize, size: u64) -> Self {
        Self::new(Status::Ok, None, format!("{count} {size}"))
    }

    /// LIST n: exactly `+OK n size` (RFC 1939 §5, scan listing).
    pub fn scan_listing(msg: usize, size: u64) -> Self {
        Self::new(Status::Ok, None, format!("{msg} {size}"))
    }

    /// LIST: one `n size` line per undeleted message.
    pub fn scan_listings(
        count: usize,
        size: u64,
        entries: impl IntoIterator<Item = (usize, u64)>,
    ) -> MultiLine {
        let mut reply = Self::maildrop_ready(count, size).multi();
        for (msg, size) in entries {
            reply.push_line(format_args!("{msg} {size}"));
        }
        reply
    }

    /// UIDL n: exactly `+OK n unique-id` (RFC 1939 §7).
    pub fn unique_id_listing(msg: usize, uid: &str) -> Self {
        Self::new(Status::Ok, None, format!("{msg} {}", unique_id(uid)))
    }

    /// UIDL: one `n unique-id` line per undeleted message.
    pub fn unique_id_listings<'a>(
        entries: impl IntoIterator<Item = (usize, &'a str)>,
    ) -> MultiLine {
        let mut reply = Self::ok("unique-id listing follows").multi();
        for (msg, uid) in entries {
            reply.push_line(format_args!("{msg} {}", unique_id(uid)));
        }
        reply
    }

    /// The status line before a RETR body; `size` is the unstuffed octet count.
    pub fn retr(size: u64) -> Self {
        Self::new(Status::Ok, None, format!("{size} octets"))
    }

    /// The status line before a TOP body.
    pub fn top() -> Self {
        Self::ok("top of message follows")
    }

    pub fn deleted(msg: usize) -> Self {
        Self::new(Status::Ok, None, format!("message {msg} deleted"))
    }

    pub fn noop() -> Self {
        Self::ok("")
    }

    /// RFC 1939 §5 lists "already deleted" apart; we answer one way for a number that is out
    /// of range and one that is deleted, as deleted messages are invisible.
    pub fn no_such_message() -> Self {
        Self::err("no such message")
    }

    /// RETR/TOP when the spool could not produce the message.
    pub fn message_unavailable() -> Self {
        Self::err_code(
            ResponseCode::SysTemp,
            "message unavailable, try again later",
        )
    }

    /// The UPDATE state could not make the deletions durable: nothing was deleted.
    pub fn update_failed() -> Self {
        Self::err_code(
            ResponseCode::SysTemp,
            "deletions not committed, no messages deleted",
        )
    }

    // ---- Both states ----

    /// CAPA (RFC 2449 §5).
    pub fn capabilities(capabilities: &[Capability]) -> MultiLine {
        let mut reply = Self::ok("capability list follows").multi();
        for capability in capabilities {
            let mut line = String::new();
            capability.push(&mut line);
            reply.push_line(line);
        }
        reply
    }

    pub fn unknown_command() -> Self {
        Self::err("unknown command")
    }

    /// A known command with bad arguments; `usage` is its syntax.
    pub fn syntax(usage: &'static str) -> Self {
        Self::new(Status::Err, None, format!("syntax: {usage}"))
    }

    /// A known command in a state where it is not valid (RFC 1939 §3).
    /// RFC 2595 §4: the client starts the handshake after this response.
    pub fn begin_tls() -> Self {
        Self::ok("Begin TLS negotiation")
    }

    /// STLS on a connection that already has TLS (RFC 2595 §4).
    pub fn tls_already_active() -> Self {
        Self::err("TLS already active")
    }

    /// STLS without a certificate configured.
    pub fn stls_unavailable() -> Self {
        Self::err("STLS not available")
    }

    pub fn wrong_state() -> Self {
        Self::err("command not valid in this state")
    }

    /// RFC 2449 §4: command lines are at most 255 octets, CRLF included.
    pub fn line_too_long() -> Self {
        Self::err("command line too long (255 octets at most)")
    }

    /// The session's error limit was reached.
    pub fn too_many_errors() -> Self {
        Self::err("too many errors, closing connection")
    }

    /// RFC 1939 §3 autologout: no UPDATE, deletions are dropped.
    pub fn autologout() -> Self {
        Self::err("autologout: idle for too long, no messages deleted")
    }

    pub fn shutting_down() -> Self {
        Self::err_code(ResponseCode::SysTemp, "server shutting down")
    }
}

impl fmt::Display for Response {
    /// The status line without CRLF, for logs and test messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.status.as_str())?;
        if let Some(code) = self.code {
            write!(f, " [{}]", code.as_str())?;
        }
        if !self.text.is_empty() {
            write!(f, " {}", self.text)?;
        }
        Ok(())
    }
}

/// RFC 1939 §7: a unique-id is 1 to 70 characters in 0x21..=0x7E. The maildrop supplies hex
/// queue ids; anything else is replaced so that a listing line stays one line.
fn unique_id(uid: &str) -> Cow<'_, str> {
    if !uid.is_empty() && uid.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        Cow::Borrowed(uid)
    } else if uid.is_empty() {
        Cow::Borrowed("?")
    } else {
        Cow::Owned(
            uid.chars()
                .map(|c| if ('!'..='~').contains(&c) { c } else { '?' })
                .collect(),
        )
    }
}

/// Appends a response line, replacing control characters so that text can never end the line.
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

/// Config text for a response: control characters become `?`.
fn printable(text: &str) -> Cow<'_, str> {
    if text.chars().any(char::is_control) {
        Cow::Owned(
            text.chars()
                .map(|c| if c.is_control() { '?' } else { c })
                .collect(),
        )
    } else {
        Cow::Borrowed(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(reply: &Response) -> String {
        let mut out = Vec::new();
        reply.encode(&mut out);
        String::from_utf8(out).unwrap()
    }

    fn wire_multi(reply: &MultiLine) -> String {
        let mut out = Vec::new();
        reply.encode(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn status_lines() {
        let table = [
            (Response::noop(), "+OK\r\n"),
            (Response::stat(2, 320), "+OK 2 320\r\n"),
            (Response::scan_listing(1, 120), "+OK 1 120\r\n"),
            (
                Response::unique_id_listing(2, "QhdPYR:00WBw1Ph7x7"),
                "+OK 2 QhdPYR:00WBw1Ph7x7\r\n",
            ),
            (Response::retr(10), "+OK 10 octets\r\n"),
            (Response::no_such_message(), "-ERR no such message\r\n"),
            (
                Response::auth_failed(),
                "-ERR [AUTH] authentication failed\r\n",
            ),
            (
                Response::in_use(),
                "-ERR [IN-USE] maildrop is locked by another session\r\n",
            ),
            (
                Response::maildrop_unavailable(),
                "-ERR [SYS/TEMP] maildrop unavailable, try again later\r\n",
            ),
            (
                Response::greeting("pop.test", Some("<1.2@pop.test>")),
                "+OK pop.test POP3 ready <1.2@pop.test>\r\n",
            ),
            (
                Response::greeting("pop.test", None),
                "+OK pop.test POP3 ready\r\n",
            ),
            (
                Response::signing_off_deleted("pop.test", 2),
                "+OK pop.test POP3 server signing off (2 messages deleted)\r\n",
            ),
            (
                Response::new(Status::Err, Some(ResponseCode::LoginDelay), "wait"),
                "-ERR [LOGIN-DELAY] wait\r\n",
            ),
            (
                Response::new(Status::Err, Some(ResponseCode::SysPerm), ""),
                "-ERR [SYS/PERM]\r\n",
            ),
        ];
        for (reply, expected) in table {
            assert_eq!(wire(&reply), expected);
            assert_eq!(format!("{reply}\r\n"), expected);
        }
    }

    #[test]
    fn multi_line_responses_are_stuffed_and_terminated() {
        let capa = Response::capabilities(&[
            Capability::Top,
            Capability::Sasl(&["PLAIN", "X"]),
            Capability::Implementation,
        ]);
        assert_eq!(
            wire_multi(&capa),
            "+OK capability list follows\r\nTOP\r\nSASL PLAIN X\r\nIMPLEMENTATION relay\r\n.\r\n"
        );
        let uidl = Response::unique_id_listings([(1, ".dot"), (3, "a\r\nb"), (4, "")]);
        assert_eq!(
            wire_multi(&uidl),
            "+OK unique-id listing follows\r\n1 .dot\r\n3 a??b\r\n4 ?\r\n.\r\n"
        );
        assert_eq!(
            wire_multi(&Response::mechanisms(&["PLAIN", ".X"])),
            "+OK SASL mechanisms follow\r\nPLAIN\r\n..X\r\n.\r\n"
        );
        assert_eq!(uidl.lines().count(), 3);
        let list = Response::scan_listings(0, 0, []);
        assert_eq!(
            wire_multi(&list),
            "+OK maildrop has 0 messages (0 octets)\r\n.\r\n"
        );
    }

    #[test]
    fn config_text_cannot_inject_lines() {
        assert_eq!(
            wire(&Response::greeting("a\r\n+OK b", None)),
            "+OK a??+OK b POP3 ready\r\n"
        );
    }

    #[test]
    fn continuation() {
        let mut out = Vec::new();
        Response::sasl_continue(&mut out);
        assert_eq!(out, b"+ \r\n");
    }
}
