//! A raw POP3 client over std `TcpStream`: byte-exact (multi-line bodies are returned exactly
//! as the server meant them, unstuffed, CRLFs kept), every read bounded by a timeout, and
//! every I/O error returned (the crash tests expect them when the relay is killed).

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Bound on one response (QUIT with deletions waits for an fdatasync on a shared disk).
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Pop3 {
    stream: TcpStream,
    buf: Vec<u8>,
    /// The greeting line (without CRLF).
    pub greeting: String,
}

impl Pop3 {
    /// Connects and reads the greeting (any status).
    pub fn connect(addr: SocketAddr) -> io::Result<Pop3> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        stream.set_read_timeout(Some(RESPONSE_TIMEOUT))?;
        stream.set_write_timeout(Some(RESPONSE_TIMEOUT))?;
        stream.set_nodelay(true)?;
        let mut client = Pop3 {
            stream,
            buf: Vec::new(),
            greeting: String::new(),
        };
        client.greeting = client.line()?;
        Ok(client)
    }

    /// Connects; the greeting must be `+OK relay.test POP3 ready…`.
    pub fn greeted(addr: SocketAddr) -> Pop3 {
        let client = Pop3::connect(addr).unwrap_or_else(|e| panic!("pop3 connect {addr}: {e}"));
        assert!(
            client.greeting.starts_with("+OK relay.test POP3 ready"),
            "POP3 greeting: {:?}",
            client.greeting
        );
        client
    }

    /// USER/PASS on a new connection until the maildrop lock is ours: `-ERR [IN-USE]` (a
    /// session that ended but whose close the server has not processed yet) is retried until
    /// `timeout`; any other answer panics.
    pub fn login_retrying(addr: SocketAddr, user: &str, password: &str, timeout: Duration) -> Pop3 {
        let deadline = Instant::now() + timeout;
        loop {
            let mut client = Pop3::greeted(addr);
            let reply = client
                .login(user, password)
                .unwrap_or_else(|e| panic!("login {user}: {e}"));
            if reply.starts_with("+OK") {
                return client;
            }
            assert!(
                reply.starts_with("-ERR [IN-USE]"),
                "login {user}: unexpected {reply:?}"
            );
            assert!(
                Instant::now() < deadline,
                "login {user}: maildrop still locked after {timeout:?}"
            );
            let _ = client.quit();
            // No event tells us when the other session's close was processed (the retry
            // itself is the probe); a short pause keeps the loop from spinning.
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    fn fill(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 16 * 1024];
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

    /// One raw line, CRLF included.
    fn raw_line(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                if !line.ends_with(b"\r\n") {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("line without CRLF: {:?}", String::from_utf8_lossy(&line)),
                    ));
                }
                return Ok(line);
            }
            self.fill()?;
        }
    }

    /// One status line without its CRLF.
    pub fn line(&mut self) -> io::Result<String> {
        let line = self.raw_line()?;
        Ok(String::from_utf8_lossy(&line[..line.len() - 2]).into_owned())
    }

    /// Sends `line` + CRLF and reads a one-line response.
    pub fn cmd(&mut self, line: &str) -> io::Result<String> {
        self.send(format!("{line}\r\n").as_bytes())?;
        self.line()
    }

    /// Like `cmd`, but panics unless the response starts with `+OK`.
    pub fn ok(&mut self, line: &str) -> String {
        let reply = self.cmd(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        assert!(reply.starts_with("+OK"), "{line:?} → {reply:?}");
        reply
    }

    /// The body of a multi-line response after its status line: unstuffed, CRLFs kept,
    /// without the terminating ".\r\n".
    pub fn read_body(&mut self) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line = self.raw_line()?;
            if line == b".\r\n" {
                return Ok(body);
            }
            let line = if line.starts_with(b".") {
                &line[1..]
            } else {
                &line[..]
            };
            body.extend_from_slice(line);
        }
    }

    /// The raw bytes of a multi-line body as sent (stuffed), up to and including the
    /// terminating CRLF.CRLF, for bodies that may hold bare LFs (BINARYMIME). The
    /// terminator is recognised only after a CRLF, as RFC 1939 §3 defines it.
    pub fn read_raw_body(&mut self) -> io::Result<Vec<u8>> {
        loop {
            let end = if self.buf.starts_with(b".\r\n") {
                Some(3)
            } else {
                find_bytes(&self.buf, b"\r\n.\r\n").map(|at| at + 5)
            };
            if let Some(end) = end {
                return Ok(self.buf.drain(..end).collect());
            }
            self.fill()?;
        }
    }

    /// Sends a command with a multi-line response: the status line and, after `+OK`, the
    /// body (see [`Pop3::read_body`]).
    pub fn multi(&mut self, line: &str) -> io::Result<(String, Option<Vec<u8>>)> {
        let status = self.cmd(line)?;
        if status.starts_with("+OK") {
            let body = self.read_body()?;
            Ok((status, Some(body)))
        } else {
            Ok((status, None))
        }
    }

    /// Like `multi`, but panics unless `+OK`.
    pub fn multi_ok(&mut self, line: &str) -> (String, Vec<u8>) {
        match self.multi(line) {
            Ok((status, Some(body))) => (status, body),
            Ok((status, None)) => panic!("{line:?} → {status:?}"),
            Err(e) => panic!("{line:?}: {e}"),
        }
    }

    /// USER then PASS; returns the response to PASS (or to USER when that failed).
    pub fn login(&mut self, user: &str, password: &str) -> io::Result<String> {
        let reply = self.cmd(&format!("USER {user}"))?;
        if !reply.starts_with("+OK") {
            return Ok(reply);
        }
        self.cmd(&format!("PASS {password}"))
    }

    /// STAT → (messages, octets).
    pub fn stat(&mut self) -> (usize, u64) {
        let reply = self.ok("STAT");
        let mut words = reply.split_whitespace().skip(1);
        let count = words.next().and_then(|w| w.parse().ok());
        let size = words.next().and_then(|w| w.parse().ok());
        match (count, size) {
            (Some(count), Some(size)) => (count, size),
            _ => panic!("bad STAT response {reply:?}"),
        }
    }

    /// LIST → (message number, octets) of every undeleted message.
    pub fn list(&mut self) -> Vec<(usize, u64)> {
        let (_, body) = self.multi_ok("LIST");
        pairs(&body)
            .into_iter()
            .map(|(n, size)| {
                (
                    n,
                    size.parse()
                        .unwrap_or_else(|_| panic!("bad LIST size {size:?}")),
                )
            })
            .collect()
    }

    /// UIDL → (message number, unique id) of every undeleted message.
    pub fn uidl(&mut self) -> Vec<(usize, String)> {
        let (_, body) = self.multi_ok("UIDL");
        pairs(&body)
    }

    /// The unique ids, in message-number order.
    pub fn uids(&mut self) -> Vec<String> {
        self.uidl().into_iter().map(|(_, uid)| uid).collect()
    }

    /// RETR n: the message bytes.
    pub fn retr(&mut self, n: usize) -> Vec<u8> {
        self.multi_ok(&format!("RETR {n}")).1
    }

    pub fn top(&mut self, n: usize, lines: usize) -> Vec<u8> {
        self.multi_ok(&format!("TOP {n} {lines}")).1
    }

    pub fn dele(&mut self, n: usize) -> String {
        self.ok(&format!("DELE {n}"))
    }

    /// QUIT: the response (the server closes the connection after it).
    pub fn quit(mut self) -> io::Result<String> {
        let reply = self.cmd("QUIT");
        let _ = self.stream.shutdown(Shutdown::Both);
        reply
    }

    /// Drops the connection without QUIT (FIN, as a client that dies would leave it).
    pub fn drop_connection(self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// Reads until the server closes the connection, within `timeout`.
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
                return Err(io::Error::new(io::ErrorKind::TimedOut, "no EOF in time"));
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
}

fn find_bytes(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Undoes RFC 1939 byte-stuffing of a raw body from [`Pop3::read_raw_body`]: drops the
/// terminator and the extra "." after any LF (or at the start).
pub fn unstuff(raw: &[u8]) -> Vec<u8> {
    let body = raw
        .strip_suffix(b".\r\n")
        .expect("raw body ends with the terminator");
    let mut out = Vec::with_capacity(body.len());
    let mut line_start = true;
    let mut i = 0;
    while i < body.len() {
        let b = body[i];
        if line_start && b == b'.' {
            // The stuffed dot; the next byte is the body's own.
            i += 1;
            line_start = false;
            continue;
        }
        out.push(b);
        line_start = b == b'\n';
        i += 1;
    }
    out
}

/// `n value` lines of a LIST/UIDL body.
fn pairs(body: &[u8]) -> Vec<(usize, String)> {
    let text = String::from_utf8_lossy(body);
    text.split("\r\n")
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (n, value) = l
                .split_once(' ')
                .unwrap_or_else(|| panic!("bad listing line {l:?}"));
            (
                n.parse()
                    .unwrap_or_else(|_| panic!("bad message number in {l:?}")),
                value.to_string(),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Whole-maildrop helpers on a running relay

use std::collections::{BTreeMap, BTreeSet};

use super::Relay;

/// Every message of `user`'s maildrop, uid → bytes: login (retrying a lock still held by an
/// ending session), UIDL, LIST, RETR each (its length must be LIST's octet count), QUIT
/// without deleting anything.
pub fn fetch_mailbox(relay: &Relay, user: &str) -> BTreeMap<String, Vec<u8>> {
    let mut pop = relay.pop3_login(user);
    let uidl = pop.uidl();
    let list = pop.list();
    assert_eq!(uidl.len(), list.len(), "{user}: UIDL and LIST disagree");
    let mut out = BTreeMap::new();
    for ((n, uid), (n2, size)) in uidl.into_iter().zip(list) {
        assert_eq!(n, n2, "{user}: UIDL and LIST number the same messages");
        let bytes = pop.retr(n);
        assert_eq!(
            bytes.len() as u64,
            size,
            "{user} message {n} ({uid}): LIST says {size} octets, RETR sent {}",
            bytes.len()
        );
        assert!(
            out.insert(uid.clone(), bytes).is_none(),
            "{user}: UIDL {uid} twice"
        );
    }
    let reply = pop.quit().expect("QUIT");
    assert!(
        reply.starts_with("+OK") && !reply.contains("deleted"),
        "QUIT: {reply}"
    );
    out
}

/// The unique ids of `user`'s maildrop.
pub fn uid_set(relay: &Relay, user: &str) -> BTreeSet<String> {
    let mut pop = relay.pop3_login(user);
    let uids = pop.uids().into_iter().collect();
    pop.quit().expect("QUIT");
    uids
}

/// DELE the messages with these uids and QUIT; panics unless QUIT answers `+OK` with the
/// count. Returns the QUIT response.
pub fn delete_uids(relay: &Relay, user: &str, uids: &BTreeSet<String>) -> String {
    let mut pop = relay.pop3_login(user);
    let marked = mark_deleted(&mut pop, user, uids);
    let reply = pop.quit().expect("QUIT after DELE");
    assert!(
        reply.starts_with("+OK") && reply.contains(&format!("({marked} messages deleted)")),
        "QUIT after {marked} DELE: {reply:?}"
    );
    reply
}

/// DELE (in this session) every message whose uid is in `uids`; all must be listed.
pub fn mark_deleted(pop: &mut Pop3, user: &str, uids: &BTreeSet<String>) -> usize {
    let mut marked = 0;
    for (n, uid) in pop.uidl() {
        if uids.contains(&uid) {
            pop.dele(n);
            marked += 1;
        }
    }
    assert_eq!(
        marked,
        uids.len(),
        "{user}: not every uid to delete is listed"
    );
    marked
}
