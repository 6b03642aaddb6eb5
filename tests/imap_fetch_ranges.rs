//! Body FETCH over a real socket, byte for byte: a `UID FETCH lo:hi BODY.PEEK[]` of many
//! messages, the same messages fetched one command each, and those commands pipelined (all
//! sent in one write before any answer is read) get the same bytes; and while the relay
//! streams a range far larger than its output buffer, its memory does not grow with the
//! range.
//!
//! The client here is a plain socket reader (what the bytes are is the point); imaplib,
//! mbsync and the other real clients run in the other imap_* tests.

#[macro_use]
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{Engine, Relay, Settings, TEST_PASSWORD};

engine_tests! {
    range_single_and_pipelined_fetches_send_the_same_bytes: range_single_and_pipelined_fetches_send_the_same_bytes_uring, range_single_and_pipelined_fetches_send_the_same_bytes_epoll;
}

/// A raw IMAP connection.
struct Raw {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    tag: u32,
}

impl Raw {
    fn connect(port: u16) -> Raw {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let writer = stream.try_clone().unwrap();
        let mut raw = Raw {
            reader: BufReader::with_capacity(1 << 16, stream),
            writer,
            tag: 0,
        };
        let greeting = raw.response();
        assert!(greeting.starts_with(b"* OK"), "{}", show(&greeting));
        raw
    }

    /// One whole response: its lines and the literals they announce.
    fn response(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let start = out.len();
            let n = self.reader.read_until(b'\n', &mut out).expect("read");
            assert!(n > 0, "connection closed after {}", show(&out));
            let line = &out[start..];
            let Some(size) = literal_size(line) else {
                return out;
            };
            let at = out.len();
            out.resize(at + size, 0);
            self.reader.read_exact(&mut out[at..]).expect("literal");
        }
    }

    fn next_tag(&mut self) -> String {
        self.tag += 1;
        format!("t{}", self.tag)
    }

    /// Sends one command; returns the untagged responses' bytes and the tagged line.
    fn command(&mut self, text: &str) -> (Vec<u8>, Vec<u8>) {
        let tag = self.next_tag();
        self.writer
            .write_all(format!("{tag} {text}\r\n").as_bytes())
            .unwrap();
        self.until_tagged(&tag)
    }

    fn until_tagged(&mut self, tag: &str) -> (Vec<u8>, Vec<u8>) {
        let mut untagged = Vec::new();
        loop {
            let response = self.response();
            if response.starts_with(format!("{tag} ").as_bytes()) {
                return (untagged, response);
            }
            assert!(
                response.starts_with(b"* "),
                "unexpected while waiting for {tag}: {}",
                show(&response)
            );
            untagged.extend_from_slice(&response);
        }
    }

    fn ok(&mut self, text: &str) -> Vec<u8> {
        let (untagged, tagged) = self.command(text);
        assert!(
            tagged.split(|&b| b == b' ').nth(1) == Some(b"OK"),
            "{text}: {}",
            show(&tagged)
        );
        untagged
    }
}

/// `{n}` (or `{n+}`) at the end of a line.
fn literal_size(line: &[u8]) -> Option<usize> {
    let line = line.strip_suffix(b"\r\n")?.strip_suffix(b"}")?;
    let open = line.iter().rposition(|&b| b == b'{')?;
    let digits = &line[open + 1..];
    let digits = digits.strip_suffix(b"+").unwrap_or(digits);
    std::str::from_utf8(digits).ok()?.parse().ok()
}

fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned()
}

/// The relay's peak resident memory (KiB).
fn vm_hwm(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// Message `n`: sizes from a few hundred bytes to ~420 KB, lines of varied text.
fn message(n: usize) -> Vec<u8> {
    let mut m = format!(
        "From: sender{n}@example.test\r\nTo: one@example.test\r\nSubject: message {n}\r\n\r\n"
    )
    .into_bytes();
    let size = 300 + (n * 104_729) % 420_000;
    let mut x = n as u64 + 1;
    while m.len() < size {
        for _ in 0..70 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            m.push(b" abcdefghijklmnopqrstuvwxyz0123456789.,()"[(x >> 58) as usize % 41]);
        }
        m.extend_from_slice(b"\r\n");
    }
    m
}

fn range_single_and_pipelined_fetches_send_the_same_bytes(engine: Engine) {
    let relay = Relay::start(Settings::new(engine));
    let port = relay.listening("imap").expect("imap listener").port();
    let mut c = Raw::connect(port);
    c.ok(&format!("LOGIN one {TEST_PASSWORD}"));
    const MESSAGES: usize = 100;
    let mut total = 0;
    for n in 0..MESSAGES {
        let m = message(n);
        total += m.len();
        let tag = c.next_tag();
        c.writer
            .write_all(format!("{tag} APPEND INBOX {{{}+}}\r\n", m.len()).as_bytes())
            .unwrap();
        c.writer.write_all(&m).unwrap();
        c.writer.write_all(b"\r\n").unwrap();
        let (_, tagged) = c.until_tagged(&tag);
        assert!(
            tagged.starts_with(format!("{tag} OK").as_bytes()),
            "{}",
            show(&tagged)
        );
    }
    assert!(total > 16 << 20, "{total}");
    let selected = c.ok("SELECT INBOX");
    assert!(
        String::from_utf8_lossy(&selected).contains(&format!("* {MESSAGES} EXISTS")),
        "{}",
        show(&selected)
    );
    let (uids, _) = c.command("UID SEARCH ALL");
    let uids: Vec<u32> = String::from_utf8_lossy(&uids)
        .trim()
        .trim_start_matches("* SEARCH")
        .split_whitespace()
        .map(|u| u.parse().unwrap())
        .collect();
    assert_eq!(uids.len(), MESSAGES);

    // The whole mailbox in one command, more than 16 MiB of literals: the relay writes as
    // it reads, so its peak memory grows by far less than the range.
    let before = vm_hwm(relay.pid());
    let range = c.ok(&format!(
        "UID FETCH {}:{} BODY.PEEK[]",
        uids[0],
        uids[MESSAGES - 1]
    ));
    let grown = vm_hwm(relay.pid()).saturating_sub(before);
    assert!(
        grown < 8 << 10,
        "peak memory grew by {grown} KiB over a {} KiB range",
        total >> 10
    );

    // One command per message.
    let mut single = Vec::new();
    for (n, uid) in uids.iter().enumerate() {
        let answer = c.ok(&format!("UID FETCH {uid} BODY.PEEK[]"));
        // What was appended comes back, exactly.
        let m = message(n);
        let head = format!("* {} FETCH (UID {uid} BODY[] {{{}}}\r\n", n + 1, m.len());
        assert!(answer.starts_with(head.as_bytes()), "{}", show(&answer));
        assert_eq!(
            &answer[head.len()..head.len() + m.len()],
            &m[..],
            "message {n}"
        );
        assert_eq!(&answer[head.len() + m.len()..], b")\r\n");
        single.extend_from_slice(&answer);
    }
    assert!(
        range == single,
        "the range FETCH differs from the single ones"
    );

    // All the single commands in one write, then every answer, in order.
    let mut batch = Vec::new();
    let mut tags = Vec::new();
    for uid in &uids {
        let tag = c.next_tag();
        batch.extend_from_slice(format!("{tag} UID FETCH {uid} BODY.PEEK[]\r\n").as_bytes());
        tags.push(tag);
    }
    c.writer.write_all(&batch).unwrap();
    let mut pipelined = Vec::new();
    for tag in &tags {
        let (untagged, tagged) = c.until_tagged(tag);
        assert!(
            tagged.starts_with(format!("{tag} OK").as_bytes()),
            "{}",
            show(&tagged)
        );
        pipelined.extend_from_slice(&untagged);
    }
    assert!(
        pipelined == single,
        "the pipelined FETCHes differ from the single ones"
    );

    // Ranges in pieces, pipelined, with a gap: the same bytes for the messages asked.
    let (lo, hi) = (uids[10], uids[39]);
    let expunge_uid = uids[20];
    c.ok(&format!(
        "UID STORE {expunge_uid} +FLAGS.SILENT (\\Deleted)"
    ));
    c.ok(&format!("UID EXPUNGE {expunge_uid}"));
    let t1 = c.next_tag();
    let t2 = c.next_tag();
    c.writer
        .write_all(
            format!(
                "{t1} UID FETCH {lo}:{} BODY.PEEK[]\r\n{t2} UID FETCH {}:{hi} BODY.PEEK[]\r\n",
                uids[24], uids[25]
            )
            .as_bytes(),
        )
        .unwrap();
    let (mut pieces, _) = c.until_tagged(&t1);
    pieces.extend_from_slice(&c.until_tagged(&t2).0);
    let mut expected = Vec::new();
    for (n, uid) in uids.iter().enumerate().take(40).skip(10) {
        if *uid == expunge_uid {
            continue;
        }
        let m = message(n);
        // Sequence numbers after the expunged message moved down by one.
        let seq = if *uid > expunge_uid { n } else { n + 1 };
        expected.extend_from_slice(
            format!("* {seq} FETCH (UID {uid} BODY[] {{{}}}\r\n", m.len()).as_bytes(),
        );
        expected.extend_from_slice(&m);
        expected.extend_from_slice(b")\r\n");
    }
    assert!(pieces == expected, "{}", show(&pieces));
    c.ok("LOGOUT");
}
