//! `loadgen maildrop`: a POP3 or IMAP server that gives every user the same `--messages`
//! messages of `--size` octets from memory, takes every login at once and does no other work.
//! What `loadgen pop3` and `loadgen imap`'s body fetches reach against it is what this client
//! can take on this machine: the ceiling a real server's figure is read against (a server
//! cannot be more than ceiling ÷ its rival's rate times faster, measured with this client).
//!
//! Every answer a fetch can ask for is encoded once at start, back to back in one buffer in
//! message order, so `RETR n` and `UID FETCH lo:hi BODY.PEEK[]` are one slice of it, written
//! without a copy. POP3 deletions are forgotten at QUIT (each session sees all messages);
//! IMAP mailboxes are read-only (`EXAMINE` and `SELECT` both give the same messages, UID n
//! = message n).
//!
//! Exposure: any client on the listen address. Command lines are bounded
//! (`COMMAND_LINE_MAX`); POP3 commands are parsed by the relay's parser, IMAP commands are
//! a handful of fixed forms matched by hand (everything else gets `BAD`); literals in
//! commands are not supported (`BAD`). Memory: the encoded mailbox plus 64 KiB per
//! connection. It stores nothing and is not a mail server: a benchmark reference only.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use relay::pop3::command::{parse, Command};
use serde::Serialize;

use crate::cli::{MaildropArgs, MaildropProtocol};
use crate::runner::{self, Control};
use crate::sink;
use crate::stats::per_second;
use crate::target;
use crate::wire::{Conn, WireError};

/// A command line longer than this ends the connection.
const COMMAND_LINE_MAX: usize = 4096;
/// The most messages the mailbox may hold (each a slice of one buffer in memory).
const MESSAGES_MAX: u32 = 10_000_000;
/// The most octets the encoded mailbox may take.
const MAILBOX_BYTES_MAX: u64 = 8 << 30;

/// The mailbox, encoded once: answer `n` (1-based) is `answers[ends[n - 1]..ends[n]]`.
pub struct Mailbox {
    protocol: MaildropProtocol,
    messages: u32,
    size: u64,
    answers: Vec<u8>,
    /// `ends[0] = 0`, `ends[n]` = end of answer n.
    ends: Vec<usize>,
}

impl Mailbox {
    /// `messages` messages of `size` octets each (a few header lines, then 76-character
    /// lines; no line starts with a dot, so POP3 needs no stuffing).
    pub fn new(protocol: MaildropProtocol, messages: u32, size: u64) -> Result<Mailbox, String> {
        if messages == 0 || messages > MESSAGES_MAX {
            return Err(format!("--messages must be 1 to {MESSAGES_MAX}"));
        }
        let total = u64::from(messages).saturating_mul(size.saturating_add(96));
        if total > MAILBOX_BYTES_MAX {
            return Err(format!(
                "--messages × --size is {total} octets encoded; at most {MAILBOX_BYTES_MAX}"
            ));
        }
        let mut answers = Vec::with_capacity(total as usize);
        let mut ends = Vec::with_capacity(messages as usize + 1);
        ends.push(0);
        let mut body = Vec::with_capacity(size as usize);
        for n in 1..=messages {
            message(n, size, &mut body);
            match protocol {
                MaildropProtocol::Pop3 => {
                    answers.extend_from_slice(format!("+OK {size} octets\r\n").as_bytes());
                    answers.extend_from_slice(&body);
                    answers.extend_from_slice(b".\r\n");
                }
                MaildropProtocol::Imap => {
                    answers.extend_from_slice(
                        format!("* {n} FETCH (UID {n} BODY[] {{{size}}}\r\n").as_bytes(),
                    );
                    answers.extend_from_slice(&body);
                    answers.extend_from_slice(b")\r\n");
                }
            }
            ends.push(answers.len());
        }
        Ok(Mailbox {
            protocol,
            messages,
            size,
            answers,
            ends,
        })
    }

    /// The encoded answers for messages `lo..=hi` (clamped to the mailbox; empty when the
    /// range holds none).
    fn answers(&self, lo: u32, hi: u32) -> &[u8] {
        let lo = lo.max(1);
        let hi = hi.min(self.messages);
        if lo > hi {
            return &[];
        }
        &self.answers[self.ends[lo as usize - 1]..self.ends[hi as usize]]
    }
}

/// Message `n`: `size` octets ending in CRLF (when `size` allows), no line starting with a dot.
fn message(n: u32, size: u64, out: &mut Vec<u8>) {
    out.clear();
    let size = size as usize;
    let header = format!(
        "From: <maildrop@loadgen.test>\r\nTo: <user@loadgen.test>\r\nSubject: message {n}\r\n\r\n"
    );
    out.extend_from_slice(header.as_bytes());
    let line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcd\r\n";
    while out.len() < size {
        out.extend_from_slice(line);
    }
    out.truncate(size);
    if size >= 2 {
        out[size - 2..].copy_from_slice(b"\r\n");
    } else if size == 1 {
        out[0] = b'x';
    }
}

/// Counters shared by every connection.
#[derive(Debug, Default)]
struct Counters {
    messages: AtomicU64,
    bytes: AtomicU64,
    connections: AtomicU64,
}

struct Shared {
    mailbox: Mailbox,
    counters: Counters,
}

pub fn run(args: MaildropArgs) -> Result<ExitCode, String> {
    let addr = target::resolve(&args.listen, "listen address", args.common.allow_remote)?;
    runner::check_bounds(args.duration, args.common.max_time)?;
    let mailbox = Mailbox::new(args.protocol, args.messages, args.size)?;
    let threads = args.common.threads(usize::MAX);
    let listeners = sink::bind(addr, threads)?;
    let local = listeners
        .first()
        .and_then(|l| l.local_addr().ok())
        .ok_or("no listener")?;
    let shared = Arc::new(Shared {
        mailbox,
        counters: Counters::default(),
    });
    let control = Control::new(args.duration, args.common.max_time);
    let signal = runner::signals()?;
    eprintln!(
        "loadgen maildrop: listening addr={local} threads={threads} protocol={} messages={} size={}",
        protocol_name(args.protocol),
        args.messages,
        args.size
    );
    sink::start_threads(
        listeners,
        "maildrop",
        args.common.io_timeout,
        Arc::clone(&shared),
        |s| &s.counters.connections,
        |mut conn, shared| async move {
            let _ = serve(&mut conn, &shared).await;
            conn
        },
    )?;
    while !control.stopped() {
        std::thread::sleep(Duration::from_millis(50));
        if signal.load(Ordering::Relaxed) {
            control.interrupt();
        }
    }
    let elapsed = control.start.elapsed();
    let c = &shared.counters;
    let report = MaildropReport {
        mode: "maildrop",
        protocol: protocol_name(args.protocol),
        listen: local.to_string(),
        threads,
        elapsed_s: elapsed.as_secs_f64(),
        interrupted: control.interrupted(),
        messages_served: c.messages.load(Ordering::Relaxed),
        bytes_served: c.bytes.load(Ordering::Relaxed),
        connections: c.connections.load(Ordering::Relaxed),
        msgs_per_s: per_second(c.messages.load(Ordering::Relaxed), elapsed),
    };
    let text = format!(
        "loadgen maildrop ({}) on {}: {:.2} s{}\n  served {} messages, {} octets, over {} connections\n",
        report.protocol,
        report.listen,
        report.elapsed_s,
        if report.interrupted { " (stopped by signal)" } else { "" },
        report.messages_served,
        report.bytes_served,
        report.connections,
    );
    crate::stats::print_summary(args.common.json, &text, &report);
    // The accept threads never end on their own; leaving main ends the process.
    Ok(ExitCode::SUCCESS)
}

fn protocol_name(protocol: MaildropProtocol) -> &'static str {
    match protocol {
        MaildropProtocol::Pop3 => "pop3",
        MaildropProtocol::Imap => "imap",
    }
}

#[derive(Debug, Serialize)]
pub struct MaildropReport {
    pub mode: &'static str,
    pub protocol: &'static str,
    pub listen: String,
    pub threads: usize,
    pub elapsed_s: f64,
    pub interrupted: bool,
    pub messages_served: u64,
    pub bytes_served: u64,
    pub connections: u64,
    pub msgs_per_s: f64,
}

/// What a session answers next: short replies built in `out`, message answers as slices of
/// the shared mailbox, in order.
#[derive(Default)]
struct Output {
    out: Vec<u8>,
    /// `(at, lo, hi)`: the answers of messages `lo..=hi` go after `out[..at]`.
    slices: Vec<(usize, u32, u32)>,
}

/// A session's state: logged in or not, and (POP3) the messages deleted in it.
#[derive(Default)]
struct Session {
    logged_in: bool,
    deleted: Vec<bool>,
}

async fn serve(conn: &mut Conn, shared: &Shared) -> Result<(), WireError> {
    let mailbox = &shared.mailbox;
    let greeting: &[u8] = match mailbox.protocol {
        MaildropProtocol::Pop3 => b"+OK loadgen maildrop\r\n",
        MaildropProtocol::Imap => {
            b"* OK [CAPABILITY IMAP4rev1 LITERAL+ UIDPLUS] loadgen maildrop\r\n"
        }
    };
    conn.write_all(greeting).await?;
    let mut session = Session {
        deleted: vec![false; mailbox.messages as usize],
        ..Session::default()
    };
    let mut output = Output::default();
    loop {
        let mut close = false;
        loop {
            let input = conn.buffered();
            let Some(lf) = memchr::memchr(b'\n', input) else {
                if input.len() > COMMAND_LINE_MAX {
                    output.out.extend_from_slice(match mailbox.protocol {
                        MaildropProtocol::Pop3 => b"-ERR line too long\r\n".as_slice(),
                        MaildropProtocol::Imap => b"* BYE line too long\r\n".as_slice(),
                    });
                    close = true;
                }
                break;
            };
            let line = &input[..lf];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            close = match mailbox.protocol {
                MaildropProtocol::Pop3 => pop3(line, mailbox, &mut session, &mut output),
                MaildropProtocol::Imap => imap(line, mailbox, &mut output),
            };
            conn.consume(lf + 1);
            if close {
                break;
            }
        }
        flush(conn, shared, &mut output).await?;
        if close {
            return Ok(());
        }
        conn.fill().await?;
    }
}

/// Writes what `output` holds in one vectored write and counts the messages served.
async fn flush(conn: &mut Conn, shared: &Shared, output: &mut Output) -> Result<(), WireError> {
    if output.out.is_empty() && output.slices.is_empty() {
        return Ok(());
    }
    let mailbox = &shared.mailbox;
    let mut parts: Vec<&[u8]> = Vec::with_capacity(output.slices.len() * 2 + 1);
    let mut from = 0;
    let mut messages = 0u64;
    let mut bytes = 0u64;
    for &(at, lo, hi) in &output.slices {
        if at > from {
            parts.push(&output.out[from..at]);
        }
        from = at;
        let answers = mailbox.answers(lo, hi);
        if !answers.is_empty() {
            parts.push(answers);
            messages += u64::from(hi.min(mailbox.messages) - lo.max(1) + 1);
            bytes += (answers.len()) as u64;
        }
    }
    if from < output.out.len() {
        parts.push(&output.out[from..]);
    }
    conn.write_all_vectored(&parts).await?;
    let c = &shared.counters;
    c.messages.fetch_add(messages, Ordering::Relaxed);
    c.bytes.fetch_add(bytes, Ordering::Relaxed);
    output.out.clear();
    output.slices.clear();
    Ok(())
}

/// One POP3 command; true when the session ends.
fn pop3(line: &[u8], mailbox: &Mailbox, session: &mut Session, output: &mut Output) -> bool {
    let out = &mut output.out;
    let number = |msg: u64, session: &Session| -> Option<u32> {
        let n = u32::try_from(msg).ok()?;
        (n >= 1 && n <= mailbox.messages && !session.deleted[n as usize - 1]).then_some(n)
    };
    match parse(line) {
        Ok(Command::Capa) => {
            out.extend_from_slice(b"+OK\r\nUSER\r\nUIDL\r\nPIPELINING\r\n.\r\n");
        }
        Ok(Command::User { .. }) => out.extend_from_slice(b"+OK\r\n"),
        Ok(Command::Pass { .. }) => {
            session.logged_in = true;
            out.extend_from_slice(b"+OK maildrop ready\r\n");
        }
        Ok(Command::Quit) => {
            out.extend_from_slice(b"+OK bye\r\n");
            return true;
        }
        Ok(_) if !session.logged_in => out.extend_from_slice(b"-ERR log in first\r\n"),
        Ok(Command::Stat) => {
            let left = session.deleted.iter().filter(|d| !**d).count() as u64;
            out.extend_from_slice(format!("+OK {left} {}\r\n", left * mailbox.size).as_bytes());
        }
        Ok(Command::Retr { msg }) => match number(msg, session) {
            Some(n) => output.slices.push((out.len(), n, n)),
            None => out.extend_from_slice(b"-ERR no such message\r\n"),
        },
        Ok(Command::Dele { msg }) => match number(msg, session) {
            Some(n) => {
                session.deleted[n as usize - 1] = true;
                out.extend_from_slice(b"+OK deleted\r\n");
            }
            None => out.extend_from_slice(b"-ERR no such message\r\n"),
        },
        Ok(Command::Noop) => out.extend_from_slice(b"+OK\r\n"),
        Ok(Command::Rset) => {
            session.deleted.iter_mut().for_each(|d| *d = false);
            out.extend_from_slice(b"+OK\r\n");
        }
        Ok(_) => out.extend_from_slice(b"-ERR not served by the maildrop\r\n"),
        Err(_) => out.extend_from_slice(b"-ERR unknown command\r\n"),
    }
    false
}

/// One IMAP command (the forms loadgen's session set-up and body fetches send); true when the
/// session ends.
fn imap(line: &[u8], mailbox: &Mailbox, output: &mut Output) -> bool {
    let out = &mut output.out;
    let Some(space) = memchr::memchr(b' ', line) else {
        out.extend_from_slice(b"* BAD no tag\r\n");
        return false;
    };
    let (tag, rest) = (&line[..space], &line[space + 1..]);
    if tag.is_empty() || !tag.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'.') {
        out.extend_from_slice(b"* BAD bad tag\r\n");
        return false;
    }
    let (verb, args) = match memchr::memchr(b' ', rest) {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &b""[..]),
    };
    let tagged = |out: &mut Vec<u8>, text: &[u8]| {
        out.extend_from_slice(tag);
        out.push(b' ');
        out.extend_from_slice(text);
        out.extend_from_slice(b"\r\n");
    };
    if line.ends_with(b"}") {
        tagged(out, b"BAD literals are not served by the maildrop");
        return false;
    }
    let is = |word: &[u8]| verb.eq_ignore_ascii_case(word);
    if is(b"CAPABILITY") {
        out.extend_from_slice(b"* CAPABILITY IMAP4rev1 LITERAL+ UIDPLUS\r\n");
        tagged(out, b"OK done");
    } else if is(b"NOOP") {
        tagged(out, b"OK done");
    } else if is(b"LOGOUT") {
        out.extend_from_slice(b"* BYE bye\r\n");
        tagged(out, b"OK done");
        return true;
    } else if is(b"LOGIN") {
        tagged(out, b"OK logged in");
    } else if is(b"SELECT") || is(b"EXAMINE") {
        out.extend_from_slice(
            format!(
                "* {} EXISTS\r\n* FLAGS (\\Seen \\Deleted)\r\n* OK [UIDVALIDITY 1] UIDs valid\r\n* OK [UIDNEXT {}] next\r\n",
                mailbox.messages,
                u64::from(mailbox.messages) + 1
            )
            .as_bytes(),
        );
        tagged(out, b"OK [READ-ONLY] selected");
    } else if is(b"UID") {
        let (sub, rest) = match memchr::memchr(b' ', args) {
            Some(at) => (&args[..at], &args[at + 1..]),
            None => (args, &b""[..]),
        };
        if sub.eq_ignore_ascii_case(b"SEARCH") && rest.eq_ignore_ascii_case(b"ALL") {
            out.extend_from_slice(b"* SEARCH");
            for n in 1..=mailbox.messages {
                out.push(b' ');
                out.extend_from_slice(n.to_string().as_bytes());
            }
            out.extend_from_slice(b"\r\n");
            tagged(out, b"OK searched");
        } else if sub.eq_ignore_ascii_case(b"FETCH") {
            match fetch_range(rest, mailbox.messages) {
                Some((lo, hi)) => {
                    output.slices.push((out.len(), lo, hi));
                    tagged(out, b"OK fetched");
                }
                None => tagged(
                    out,
                    b"BAD the maildrop serves UID FETCH lo[:hi] BODY.PEEK[]",
                ),
            }
        } else {
            tagged(out, b"BAD not served by the maildrop");
        }
    } else {
        tagged(out, b"BAD not served by the maildrop");
    }
    false
}

/// `lo[:hi] BODY.PEEK[]` (or `BODY[]`, either in parentheses) → the range, `*` standing for the last message.
fn fetch_range(args: &[u8], last: u32) -> Option<(u32, u32)> {
    let at = memchr::memchr(b' ', args)?;
    let (set, items) = (&args[..at], &args[at + 1..]);
    let items = items
        .strip_prefix(b"(")
        .and_then(|i| i.strip_suffix(b")"))
        .unwrap_or(items);
    if !(items.eq_ignore_ascii_case(b"BODY.PEEK[]") || items.eq_ignore_ascii_case(b"BODY[]")) {
        return None;
    }
    let number = |s: &[u8]| -> Option<u32> {
        if s == b"*" {
            return Some(last);
        }
        std::str::from_utf8(s).ok()?.parse().ok()
    };
    let (lo, hi) = match memchr::memchr(b':', set) {
        Some(colon) => (number(&set[..colon])?, number(&set[colon + 1..])?),
        None => {
            let n = number(set)?;
            (n, n)
        }
    };
    Some((lo.min(hi), lo.max(hi)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answers(mailbox: &Mailbox, output: &Output) -> Vec<u8> {
        let mut all = Vec::new();
        let mut from = 0;
        for &(at, lo, hi) in &output.slices {
            all.extend_from_slice(&output.out[from..at]);
            all.extend_from_slice(mailbox.answers(lo, hi));
            from = at;
        }
        all.extend_from_slice(&output.out[from..]);
        all
    }

    #[test]
    fn messages_have_the_size_asked_for_and_no_line_starts_with_a_dot() {
        let mut body = Vec::new();
        for size in [0u64, 1, 2, 3, 80, 200, 10 * 1024] {
            message(7, size, &mut body);
            assert_eq!(body.len() as u64, size);
            assert!(!body.windows(3).any(|w| w == b"\n.\r" || w[..2] == *b"\n."));
            if size >= 2 {
                assert!(body.ends_with(b"\r\n"));
            }
        }
    }

    #[test]
    fn imap_range_fetch_is_every_message_once_in_uid_order() {
        let mailbox = Mailbox::new(MaildropProtocol::Imap, 5, 100).unwrap();
        let mut output = Output::default();
        assert!(!imap(
            b"a1 UID FETCH 2:4 BODY.PEEK[]",
            &mailbox,
            &mut output
        ));
        assert!(!imap(b"a2 UID FETCH 5 BODY.PEEK[]", &mailbox, &mut output));
        assert!(!imap(
            b"a3 UID FETCH 9:* BODY.PEEK[]",
            &mailbox,
            &mut output
        ));
        let text = answers(&mailbox, &output);
        let heads: Vec<&[u8]> = text
            .split(|b| *b == b'\n')
            .filter(|l| l.starts_with(b"* ") || l.starts_with(b"a"))
            .collect();
        assert_eq!(
            heads,
            [
                &b"* 2 FETCH (UID 2 BODY[] {100}\r"[..],
                b"* 3 FETCH (UID 3 BODY[] {100}\r",
                b"* 4 FETCH (UID 4 BODY[] {100}\r",
                b"a1 OK fetched\r",
                b"* 5 FETCH (UID 5 BODY[] {100}\r",
                b"a2 OK fetched\r",
                b"* 5 FETCH (UID 5 BODY[] {100}\r",
                b"a3 OK fetched\r",
            ]
        );
        // 9:* is 5:9 (RFC 3501 §6.4.8): the last message, which is 5.
        assert_eq!(output.slices.last(), Some(&(output.out.len() - 15, 5, 9)));
        assert_eq!(mailbox.answers(6, 9), b"");
    }

    #[test]
    fn imap_refuses_what_it_does_not_serve() {
        let mailbox = Mailbox::new(MaildropProtocol::Imap, 2, 10).unwrap();
        let mut output = Output::default();
        for line in [
            &b"a1 APPEND INBOX {10}"[..],
            b"a2 UID FETCH 1 (FLAGS)",
            b"a3 UID FETCH x:2 BODY[]",
            b"a4 STORE 1 +FLAGS (\\Seen)",
        ] {
            imap(line, &mailbox, &mut output);
        }
        imap(b"no-tag", &mailbox, &mut output);
        let text = String::from_utf8(answers(&mailbox, &output)).unwrap();
        assert_eq!(text.matches(" BAD ").count(), 5, "{text}");
        assert!(output.slices.is_empty());
    }

    #[test]
    fn pop3_retrieves_deletes_and_forgets_nothing_within_a_session() {
        let mailbox = Mailbox::new(MaildropProtocol::Pop3, 3, 200).unwrap();
        let mut session = Session {
            deleted: vec![false; 3],
            ..Session::default()
        };
        let mut output = Output::default();
        for line in [
            &b"RETR 1"[..],
            b"USER u",
            b"PASS p",
            b"STAT",
            b"RETR 2",
            b"DELE 2",
        ] {
            assert!(!pop3(line, &mailbox, &mut session, &mut output));
        }
        for line in [&b"RETR 2"[..], b"DELE 2", b"RETR 4", b"STAT"] {
            assert!(!pop3(line, &mailbox, &mut session, &mut output));
        }
        assert!(pop3(b"QUIT", &mailbox, &mut session, &mut output));
        let text = String::from_utf8(answers(&mailbox, &output)).unwrap();
        let firsts: Vec<&str> = text
            .split("\r\n")
            .filter(|l| l.starts_with('+') || l.starts_with('-'))
            .collect();
        assert_eq!(
            firsts,
            [
                "-ERR log in first",
                "+OK",
                "+OK maildrop ready",
                "+OK 3 600",
                "+OK 200 octets",
                "+OK deleted",
                "-ERR no such message",
                "-ERR no such message",
                "-ERR no such message",
                "+OK 2 400",
                "+OK bye",
            ]
        );
        assert!(text.contains("Subject: message 2\r\n"));
    }

    #[test]
    fn a_mailbox_too_large_is_refused_before_it_is_built() {
        assert!(Mailbox::new(MaildropProtocol::Imap, 0, 10).is_err());
        assert!(Mailbox::new(MaildropProtocol::Imap, MESSAGES_MAX, 1 << 20).is_err());
    }
}
