//! The cluster listener's queue-transfer conversation: what a draining peer speaks to us
//! (see [`crate::queue::xfer`] for the parameters, [`super::xfer_in`] for the storing).
//!
//! The drainer asks for it with the TLS ALPN protocol [`ALPN`] on the cluster listener's
//! mutual-TLS handshake; the listener hands such a connection to [`serve`]. The conversation
//! is SMTP: greeting, EHLO, then per message `MAIL FROM … XQUEUE=…`, `RCPT TO … XSCHED=…`,
//! `DATA`, and 250 only once [`super::xfer_in::import`] made it durable (451 otherwise: the
//! drainer keeps it). RSET, NOOP and QUIT as usual; anything else is 502.
//!
//! [`XferSession`] is the sans-IO state machine (lines in, replies out); [`serve`] drives it
//! over a connection. Limits: command lines [`LINE_MAX`] octets (XSCHED carries a reply
//! hex-encoded), [`RCPTS_MAX`] recipients, the body `smtp.message_size_max`.

use super::shard::ShardContext;
use super::xfer_in::{self, Imported, XferLog};
use crate::envelope::MailParams;
use crate::logsafe::Safe;
use crate::net::io::Connection;
use crate::queue::xfer::{self, Transfer, TransferRecipient, XQueue, XSched};
use crate::smtp::data::{BodyLimits, BodyReceiver};

/// The ALPN protocol name a drainer asks for.
pub const ALPN: &[u8] = crate::net::tls::XFER_ALPN;
/// Longest command line (an XSCHED with a 1 KiB reply, hex, in xtext).
pub const LINE_MAX: usize = 8192;
/// Recipients per transferred message.
pub const RCPTS_MAX: usize = 1000;

/// What the session wants done after a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Reply(String),
    /// Reply, then read the DATA body.
    Data(String),
    /// Reply, then close.
    Close(String),
}

#[derive(Debug, Default)]
enum State {
    #[default]
    Start,
    Ready,
    Mail(Box<Transfer>),
}

/// One transfer conversation, sans IO.
#[derive(Debug, Default)]
pub struct XferSession {
    state: State,
}

impl XferSession {
    pub fn new() -> XferSession {
        XferSession::default()
    }

    /// One command line (without CRLF).
    pub fn line(&mut self, line: &str, hostname: &str) -> Step {
        let verb = line.split(' ').next().unwrap_or("").to_ascii_uppercase();
        let ok = || Step::Reply("250 2.0.0 OK".into());
        match verb.as_str() {
            "EHLO" | "HELO" => {
                self.state = State::Ready;
                Step::Reply(format!("250-{hostname}\r\n250-PIPELINING\r\n250 8BITMIME"))
            }
            "NOOP" => ok(),
            "QUIT" => Step::Close("221 2.0.0 bye".into()),
            "RSET" => {
                if !matches!(self.state, State::Start) {
                    self.state = State::Ready;
                }
                ok()
            }
            "MAIL" => {
                if !matches!(self.state, State::Ready) {
                    return Step::Reply("503 5.5.1 EHLO first, one transaction at a time".into());
                }
                match parse_mail(line) {
                    Ok(t) => {
                        self.state = State::Mail(Box::new(t));
                        ok()
                    }
                    Err(e) => Step::Reply(format!("501 5.5.4 {e}")),
                }
            }
            "RCPT" => {
                let State::Mail(t) = &mut self.state else {
                    return Step::Reply("503 5.5.1 MAIL first".into());
                };
                if t.recipients.len() >= RCPTS_MAX {
                    return Step::Reply("452 4.5.3 too many recipients".into());
                }
                match parse_rcpt(line) {
                    Ok(r) => {
                        t.recipients.push(r);
                        ok()
                    }
                    Err(e) => Step::Reply(format!("501 5.5.4 {e}")),
                }
            }
            "DATA" => match &self.state {
                State::Mail(t) if !t.recipients.is_empty() => {
                    Step::Data("354 end with <CRLF>.<CRLF>".into())
                }
                _ => Step::Reply("503 5.5.1 MAIL and RCPT first".into()),
            },
            _ => Step::Reply("502 5.5.2 not on the transfer channel".into()),
        }
    }

    /// The transaction whose body was just read; the session is ready for the next one.
    pub fn take(&mut self) -> Option<Transfer> {
        match std::mem::replace(&mut self.state, State::Ready) {
            State::Mail(t) => Some(*t),
            other => {
                self.state = other;
                None
            }
        }
    }
}

/// `MAIL FROM:<path> params`, XQUEUE required.
fn parse_mail(line: &str) -> Result<Transfer, String> {
    let (path, rest) = path_and_params(line, "MAIL FROM:")?;
    let (rest, xq) = xfer::take_param(rest, xfer::XQUEUE);
    let xq = xq.ok_or("XQUEUE is required on the transfer channel")?;
    let origin = XQueue::decode(xq).map_err(|e| e.to_string())?;
    let mut params: MailParams =
        crate::smtp::params::parse_mail(&rest).map_err(|e| e.to_string())?;
    // Other cluster parameters mean nothing on the transfer channel.
    params.cluster.clear();
    Ok(Transfer {
        origin,
        reverse_path: path.to_string(),
        params,
        recipients: Vec::new(),
    })
}

/// `RCPT TO:<addr> params`, XSCHED required.
fn parse_rcpt(line: &str) -> Result<TransferRecipient, String> {
    let (path, rest) = path_and_params(line, "RCPT TO:")?;
    if path.is_empty() {
        return Err("empty recipient".into());
    }
    let (rest, xs) = xfer::take_param(rest, xfer::XSCHED);
    let xs = xs.ok_or("XSCHED is required on the transfer channel")?;
    let sched: XSched = XSched::decode(xs).map_err(|e| e.to_string())?;
    let p = crate::smtp::params::parse_rcpt(&rest).map_err(|e| e.to_string())?;
    Ok(TransferRecipient {
        address: path.to_string(),
        notify: p.notify,
        orcpt: p.orcpt,
        sched,
    })
}

/// The `<path>` after `prefix` (case-insensitive) and the parameter text after it.
fn path_and_params<'a>(line: &'a str, prefix: &str) -> Result<(&'a str, &'a str), String> {
    let head = line.get(..prefix.len()).unwrap_or("");
    if !head.eq_ignore_ascii_case(prefix) {
        return Err(format!("expected {prefix}<path>"));
    }
    let rest = &line[prefix.len()..];
    let rest = rest.strip_prefix('<').ok_or("expected <path>")?;
    let (path, params) = rest.split_once('>').ok_or("expected <path>")?;
    if path.len() > 512 || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err("bad path".into());
    }
    Ok((path, params))
}

/// Serves one transfer connection (after its TLS handshake) until QUIT, EOF or an error.
pub async fn serve<C: Connection>(
    conn: &C,
    ctx: &ShardContext,
    log: &XferLog,
    peer: std::net::SocketAddr,
) {
    let peer = peer.to_string();
    let size_max = ctx.session_config.message_size_max;
    let mut session = XferSession::new();
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    if !send(conn, format!("220 {} relay transfer channel", ctx.hostname)).await {
        return;
    }
    loop {
        let line = match read_line(conn, &mut buf).await {
            Some(Ok(l)) => l,
            Some(Err(())) => {
                let _ = send(conn, "500 5.5.6 line too long".into()).await;
                return;
            }
            None => return,
        };
        match session.line(&line, &ctx.hostname) {
            Step::Reply(r) => {
                if !send(conn, r).await {
                    return;
                }
            }
            Step::Close(r) => {
                let _ = send(conn, r).await;
                conn.finish().await;
                return;
            }
            Step::Data(r) => {
                if !send(conn, r).await {
                    return;
                }
                let limits = BodyLimits {
                    size_max,
                    line_max: 1000,
                };
                let mut body = BodyReceiver::dot(limits, None, None);
                // Bytes after the command line.
                let mut done = false;
                if !buf.is_empty() {
                    let (used, end) = body.receive(&buf);
                    buf.drain(..used);
                    done = end;
                }
                while !done {
                    let (res, b) = conn.read_into(std::mem::take(&mut buf)).await;
                    buf = b;
                    match res {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    let (used, end) = body.receive(&buf);
                    buf.drain(..used);
                    if buf.capacity() - buf.len() < 4096 {
                        buf.reserve(16 * 1024);
                    }
                    done = end;
                }
                let Some(transfer) = session.take() else {
                    return;
                };
                let reply = match body.finish() {
                    Err(e) => format!("{}", e.reply()),
                    Ok((bytes, _reservation)) => {
                        match xfer_in::import(
                            &ctx.spool,
                            log,
                            &ctx.delivery,
                            ctx.shard,
                            &transfer,
                            bytes,
                        )
                        .await
                        {
                            Ok(Imported::Stored(id)) => format!("250 2.0.0 {id} queued"),
                            Ok(Imported::Duplicate) => "250 2.0.0 already queued here".into(),
                            Err(e) => {
                                tracing::error!(peer = %Safe(&peer), key = %transfer.key(), "transfer not stored: {e}");
                                "451 4.3.0 not stored, try again".into()
                            }
                        }
                    }
                };
                if !send(conn, reply).await {
                    return;
                }
            }
        }
    }
}

async fn send<C: Connection>(conn: &C, mut reply: String) -> bool {
    reply.push_str("\r\n");
    conn.write_all(reply.into_bytes()).await.0.is_ok()
}

/// The next CRLF- (or LF-) ended line from `buf`, reading as needed. `None`: EOF or error;
/// `Some(Err)`: longer than [`LINE_MAX`].
async fn read_line<C: Connection>(conn: &C, buf: &mut Vec<u8>) -> Option<Result<String, ()>> {
    loop {
        if let Some(at) = memchr::memchr(b'\n', buf) {
            let mut line: Vec<u8> = buf.drain(..=at).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Some(Ok(String::from_utf8_lossy(&line).into_owned()));
        }
        if buf.len() > LINE_MAX {
            return Some(Err(()));
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        let (res, b) = conn.read_into(std::mem::take(buf)).await;
        *buf = b;
        match res {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::QueueId;
    use crate::queue::xfer::{commands, export, ExportInput};

    #[test]
    fn a_transaction_from_the_drainers_own_command_lines() {
        let envelope = crate::envelope::Envelope {
            reverse_path: "s@a.test".into(),
            params: MailParams::default(),
            recipients: vec![],
        };
        let t = export(ExportInput {
            node: "a",
            id: QueueId::new(1_764_000_000_000_000, 1),
            arrival_unix_micros: 1_764_000_000_000_000,
            envelope: &envelope,
            pending: vec![(
                "r@x.test".into(),
                XSched {
                    attempts: 2,
                    next_attempt_unix_micros: Some(1_764_000_600_000_000),
                    last_attempt_unix_micros: Some(1_764_000_060_000_000),
                    last_reply: Some("421 4.4.2 down".into()),
                    delay_noticed: false,
                },
            )],
        });
        let (mail, rcpts) = commands(&t);
        let mut s = XferSession::new();
        assert!(matches!(s.line(&mail, "b"), Step::Reply(r) if r.starts_with("503")));
        assert!(matches!(s.line("EHLO a", "b"), Step::Reply(r) if r.starts_with("250-b")));
        assert!(matches!(s.line("DATA", "b"), Step::Reply(r) if r.starts_with("503")));
        assert_eq!(s.line(&mail, "b"), Step::Reply("250 2.0.0 OK".into()));
        assert!(matches!(s.line("MAIL FROM:<x@y>", "b"), Step::Reply(r) if r.starts_with("503")));
        for r in &rcpts {
            assert_eq!(s.line(r, "b"), Step::Reply("250 2.0.0 OK".into()));
        }
        assert!(matches!(s.line("DATA", "b"), Step::Data(_)));
        assert_eq!(s.take(), Some(t));
        assert!(s.take().is_none());
        assert!(matches!(s.line("QUIT", "b"), Step::Close(_)));
    }

    #[test]
    fn lines_without_the_transfer_parameters_are_refused() {
        let mut s = XferSession::new();
        s.line("EHLO a", "b");
        assert!(
            matches!(s.line("MAIL FROM:<s@a.test>", "b"), Step::Reply(r) if r.starts_with("501"))
        );
        assert!(
            matches!(s.line("RCPT TO:<r@x.test>", "b"), Step::Reply(r) if r.starts_with("503"))
        );
        assert!(matches!(s.line("VRFY x", "b"), Step::Reply(r) if r.starts_with("502")));
        assert!(path_and_params("MAIL FROM:<a b>", "MAIL FROM:").is_err());
        assert!(path_and_params("MAIL FROM:<a>", "MAIL FROM:").is_ok());
    }
}
