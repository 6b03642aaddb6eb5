//! A raw SMTP client over std `TcpStream`: byte-exact, every read bounded by a timeout, and
//! every I/O error returned (the crash tests expect them when the relay is killed).

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Default bound on one reply (a 250 after DATA waits for an fdatasync on a shared disk).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(20);

/// One SMTP reply: the code and the text of each line (after `ddd-` / `ddd `).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    /// The first line's text, e.g. `2.0.0 Ok: queued as 0123456789abcdef`.
    pub fn text(&self) -> &str {
        self.lines.first().map(String::as_str).unwrap_or("")
    }

    /// The enhanced status code of the first line (`2.0.0`), if any.
    pub fn enhanced(&self) -> Option<&str> {
        let first = self.text().split_whitespace().next()?;
        let parts: Vec<&str> = first.split('.').collect();
        (parts.len() == 3
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())))
        .then_some(first)
    }

    /// `code` and the enhanced status code both match.
    pub fn is(&self, code: u16, enhanced: &str) -> bool {
        self.code == code && self.enhanced() == Some(enhanced)
    }

    /// The queue id of `250 2.0.0 Ok: queued as <16 hex>`.
    pub fn queue_id(&self) -> Option<String> {
        let text = self.text();
        let at = text.find("queued as ")? + "queued as ".len();
        let id: String = text[at..]
            .chars()
            .take_while(|c| c.is_ascii_hexdigit())
            .collect();
        super::is_queue_id(&id).then_some(id)
    }

    /// Every EHLO keyword (upper-cased first word of the lines after the first).
    pub fn ehlo_keywords(&self) -> Vec<String> {
        self.lines
            .iter()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next())
            .map(|w| w.to_ascii_uppercase())
            .collect()
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i + 1 == self.lines.len() { ' ' } else { '-' };
            if i > 0 {
                f.write_str(" / ")?;
            }
            write!(f, "{}{sep}{line}", self.code)?;
        }
        Ok(())
    }
}

pub struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    /// Connects (bounded) with read and write timeouts of `REPLY_TIMEOUT`.
    pub fn connect(addr: SocketAddr) -> io::Result<Client> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
        stream.set_write_timeout(Some(REPLY_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Client {
            stream,
            buf: Vec::new(),
        })
    }

    /// Connects and reads the greeting, which must be `220 relay.test ESMTP …`.
    pub fn greeted(addr: SocketAddr) -> Client {
        let mut client = Client::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        let greeting = client
            .read_reply()
            .unwrap_or_else(|e| panic!("greeting from {addr}: {e}"));
        assert_eq!(greeting.code, 220, "greeting: {greeting}");
        assert!(
            greeting.text().starts_with("relay.test ESMTP"),
            "greeting must be `220 relay.test ESMTP …`: {greeting}"
        );
        client
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    pub fn set_read_timeout(&self, timeout: Duration) -> io::Result<()> {
        self.stream.set_read_timeout(Some(timeout))
    }

    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Sends `line` + CRLF and reads the reply.
    pub fn cmd(&mut self, line: &str) -> io::Result<Reply> {
        self.send(format!("{line}\r\n").as_bytes())?;
        self.read_reply()
    }

    /// Like `cmd`, but panics unless the reply has `code`.
    pub fn expect(&mut self, line: &str, code: u16) -> Reply {
        let reply = self.cmd(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        assert_eq!(reply.code, code, "{line:?} → {reply}");
        reply
    }

    /// EHLO; panics unless 250.
    pub fn ehlo(&mut self) -> Reply {
        self.expect("EHLO client.test", 250)
    }

    fn fill(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 4096];
        // EINTR: reads with SO_RCVTIMEO are not restarted after a stop/continue of the process
        // (signal(7)); that is no event of the relay's, so read again.
        let n = loop {
            match self.stream.read(&mut chunk) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "connection closed by the server (unparsed: {:?})",
                    String::from_utf8_lossy(&self.buf)
                ),
            ));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// One line without its CRLF. Replies must end lines with CRLF.
    pub fn read_line(&mut self) -> io::Result<String> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                if !line.ends_with(b"\r\n") {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "reply line without CRLF: {:?}",
                            String::from_utf8_lossy(&line)
                        ),
                    ));
                }
                return Ok(String::from_utf8_lossy(&line[..line.len() - 2]).into_owned());
            }
            self.fill()?;
        }
    }

    /// One (possibly multi-line) reply.
    pub fn read_reply(&mut self) -> io::Result<Reply> {
        let mut lines = Vec::new();
        let mut code = None;
        loop {
            let line = self.read_line()?;
            let bad = || {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad reply line {line:?}"),
                )
            };
            if line.len() < 3 || !line.as_bytes()[..3].iter().all(u8::is_ascii_digit) {
                return Err(bad());
            }
            let this: u16 = line[..3].parse().map_err(|_| bad())?;
            if *code.get_or_insert(this) != this {
                return Err(bad());
            }
            let sep = line.as_bytes().get(3).copied();
            lines.push(line.get(4..).unwrap_or("").to_string());
            match sep {
                None | Some(b' ') => return Ok(Reply { code: this, lines }),
                Some(b'-') => continue,
                Some(_) => return Err(bad()),
            }
        }
    }

    /// Reads until the server closes the connection, within `timeout`. Err when bytes
    /// arrive instead or the deadline passes. A reset counts as closed.
    pub fn expect_eof(&mut self, timeout: Duration) -> io::Result<()> {
        if !self.buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "unread bytes before EOF: {:?}",
                    String::from_utf8_lossy(&self.buf)
                ),
            ));
        }
        let deadline = Instant::now() + timeout;
        let mut chunk = [0u8; 1024];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no EOF before the deadline",
                ));
            }
            self.stream.set_read_timeout(Some(left))?;
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "expected EOF, got {:?}",
                            String::from_utf8_lossy(&chunk[..n])
                        ),
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// One transaction, command by command (no pipelining). Returns the first reply that is
    /// not the expected 250/354, or the reply to the end of data.
    pub fn transaction(&mut self, from: &str, rcpts: &[&str], message: &[u8]) -> io::Result<Reply> {
        let reply = self.cmd(&format!("MAIL FROM:<{from}>"))?;
        if reply.code != 250 {
            return Ok(reply);
        }
        for rcpt in rcpts {
            let reply = self.cmd(&format!("RCPT TO:<{rcpt}>"))?;
            if reply.code != 250 {
                return Ok(reply);
            }
        }
        let reply = self.cmd("DATA")?;
        if reply.code != 354 {
            return Ok(reply);
        }
        self.send(&dot_stuff(message))?;
        self.read_reply()
    }

    /// One transaction with MAIL, RCPT… and DATA pipelined in one write (RFC 2920).
    pub fn transaction_pipelined(
        &mut self,
        from: &str,
        rcpts: &[&str],
        message: &[u8],
    ) -> io::Result<Reply> {
        let mut group = format!("MAIL FROM:<{from}>\r\n");
        for rcpt in rcpts {
            group.push_str(&format!("RCPT TO:<{rcpt}>\r\n"));
        }
        group.push_str("DATA\r\n");
        self.send(group.as_bytes())?;
        let mut failed = None;
        for _ in 0..=rcpts.len() {
            let reply = self.read_reply()?;
            if reply.code != 250 && failed.is_none() {
                failed = Some(reply);
            }
        }
        let data = self.read_reply()?;
        if let Some(reply) = failed {
            if data.code == 354 {
                // Cannot happen with a correct server (no valid recipient, no DATA), but do
                // not leave it waiting for a body.
                self.send(b".\r\n")?;
                let _ = self.read_reply()?;
            }
            return Ok(reply);
        }
        if data.code != 354 {
            return Ok(data);
        }
        self.send(&dot_stuff(message))?;
        self.read_reply()
    }

    pub fn quit(mut self) {
        let _ = self.cmd("QUIT");
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

/// RFC 5321 §4.5.2 transparency plus the terminator: every line starting with '.' gets one
/// more; `message` must end with CRLF (it is sent as is otherwise).
pub fn dot_stuff(message: &[u8]) -> Vec<u8> {
    assert!(
        message.ends_with(b"\r\n"),
        "test message must end with CRLF"
    );
    let mut out = Vec::with_capacity(message.len() + 16);
    let mut line_start = true;
    for &b in message {
        if line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        line_start = b == b'\n';
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// A small RFC 5322 message with CRLF line ends, identified by `marker`.
pub fn message(marker: &str, body_lines: &[&str]) -> Vec<u8> {
    let mut text = format!(
        "From: <sender@example.test>\r\n\
         To: <rcpt@example.test>\r\n\
         Subject: {marker}\r\n\
         Message-ID: <{marker}@client.test>\r\n\
         \r\n\
         marker {marker}\r\n"
    );
    for line in body_lines {
        text.push_str(line);
        text.push_str("\r\n");
    }
    text.into_bytes()
}
