//! IMAP summaries with the real server: FETCH ENVELOPE / BODY / BODYSTRUCTURE served from the
//! summary stored in each message's spool frame is byte for byte what the parse of the body
//! gives (the path every FETCH took before summaries, still taken when a FETCH also needs the
//! body), for mail delivered over SMTP and for APPEND; and still is after a restart and an
//! offline `relay spool compact` that moved the frames. The spool, opened offline, holds a
//! summary for every message with a local mailbox.

#[macro_use]
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{describe, relay_cmd, Engine, Relay, Settings, TEST_PASSWORD};
use relay::imap::structure::Summary;

engine_tests! {
    summaries_match_the_parse_across_restart_and_compaction: summaries_match_the_parse_uring, summaries_match_the_parse_epoll;
}

/// A multipart message with an enclosed message, encoded words, groups and every field the
/// envelope and the extended structure carry.
const NESTED: &str = "From: =?utf-8?b?w4VzYQ==?= <asa@example.se>\r\n\
To: \"Team\": a@x.org, \"B, Q\" <b@y.org>;, c@z.org\r\n\
Cc: undisclosed-recipients:;\r\n\
Subject: =?utf-8?q?n=C3=A4stad?= and\r\n folded\r\n\
Date: Tue, 4 Mar 2025 10:00:00 +0100\r\n\
Message-ID: <n@example.se>\r\n\
In-Reply-To: <p@example.se>\r\n\
Reply-To: r@example.se\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"outer b\"\r\n\
\r\n\
preamble\r\n\
--outer b\r\n\
Content-Type: text/plain; charset=utf-8; format=flowed\r\n\
Content-ID: <c1@example.se>\r\n\
Content-Description: the text\r\n\
Content-Transfer-Encoding: quoted-printable\r\n\
\r\n\
H=C3=A4lsningar\r\n\
--outer b\r\n\
Content-Type: message/rfc822\r\n\
Content-Disposition: inline\r\n\
\r\n\
From: Inner <i@example.org>\r\n\
Subject: inner\r\n\
Content-Type: multipart/alternative; boundary=alt\r\n\
\r\n\
--alt\r\n\
Content-Type: text/plain\r\n\
\r\n\
plain\r\n\
--alt\r\n\
Content-Type: text/html\r\n\
\r\n\
<p>html</p>\r\n\
--alt--\r\n\
--outer b\r\n\
Content-Type: application/octet-stream; name=\"a b.bin\"\r\n\
Content-Transfer-Encoding: base64\r\n\
Content-Disposition: attachment; filename=\"a b.bin\"\r\n\
\r\n\
AAEC\r\n\
--outer b--\r\n";

const PLAIN: &str = "From: Ann <ann@example.org>\r\nTo: one@example.test\r\nSubject: plain\r\n\
Date: Wed, 5 Mar 2025 08:00:00 +0000\r\nMessage-ID: <plain@example.org>\r\n\r\nline one\r\nline two\r\n";

const ALTERNATIVE: &str = "From: =?iso-8859-1?q?J=FCrgen?= <j@example.org>\r\nTo: one@example.test\r\n\
Subject: =?iso-8859-1?q?Gr=FC=DFe?=\r\nDate: Mon, 3 Mar 2025 23:30:00 -0500\r\nMessage-ID: <alt@example.org>\r\n\
Content-Type: multipart/alternative; boundary=b\r\n\r\n--b\r\n\
Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n\
Sch=F6ne Gr=FC=DFe\r\n--b\r\nContent-Type: text/html\r\nContent-Transfer-Encoding: base64\r\n\r\n\
PGI+Ym9sZDwvYj4=\r\n--b--\r\n";

const APPENDED: &str = "From: Me <one@example.test>\r\nSubject: draft\r\nMessage-ID: <d@example.test>\r\n\
Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nContent-Type: text/plain\r\n\r\nd\r\n--x--\r\n";

/// A raw IMAP connection: bytes out, bytes in up to the tagged reply.
struct Imap {
    stream: TcpStream,
    seen: Vec<u8>,
}

impl Imap {
    fn connect(relay: &Relay) -> Imap {
        let addr = relay.listening("imap").expect("imap listener");
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut imap = Imap {
            stream,
            seen: Vec::new(),
        };
        let greeting = imap.read_until(b"\r\n");
        assert!(greeting.starts_with(b"* OK"), "{greeting:?}");
        imap.command("l", &format!("LOGIN one {TEST_PASSWORD}"));
        imap
    }

    fn read_until(&mut self, end: &[u8]) -> Vec<u8> {
        let mut buf = [0u8; 8192];
        loop {
            if let Some(at) = self.seen.windows(end.len()).position(|w| w == end) {
                return self.seen.drain(..at + end.len()).collect();
            }
            let n = self.stream.read(&mut buf).expect("read");
            assert!(
                n > 0,
                "connection closed; got {:?}",
                String::from_utf8_lossy(&self.seen)
            );
            self.seen.extend_from_slice(&buf[..n]);
        }
    }

    /// Everything the server sent for the command, its tagged OK included.
    fn command(&mut self, tag: &str, command: &str) -> Vec<u8> {
        self.stream
            .write_all(format!("{tag} {command}\r\n").as_bytes())
            .expect("write");
        self.tagged(tag, command)
    }

    /// Reads up to the end of the line that starts with `tag ` (no message here has a line
    /// starting with a tag), and checks that it is an OK.
    fn tagged(&mut self, tag: &str, what: &str) -> Vec<u8> {
        let mut reply = Vec::new();
        loop {
            let line = self.read_until(b"\r\n");
            let done = line.starts_with(format!("{tag} ").as_bytes());
            reply.extend(line);
            if done {
                break;
            }
        }
        let text = String::from_utf8_lossy(&reply);
        let last = text.trim_end().rsplit("\r\n").next().unwrap_or_default();
        assert!(last.starts_with(&format!("{tag} OK")), "{what}: {text}");
        reply
    }

    fn append(&mut self, message: &str) {
        self.stream
            .write_all(format!("p APPEND INBOX {{{}+}}\r\n{message}\r\n", message.len()).as_bytes())
            .expect("write");
        self.tagged("p", "APPEND");
    }
}

/// `FETCH 1:* (ENVELOPE BODYSTRUCTURE BODY)` answered from summaries, and the same answered
/// from the parse (a `BINARY.SIZE[1]` in front needs the body; it is cut out again).
fn fetch_both(imap: &mut Imap) -> (String, String) {
    let from_summary = imap.command("f", "FETCH 1:* (ENVELOPE BODYSTRUCTURE BODY)");
    let from_parse = imap.command(
        "f",
        "FETCH 1:* (BINARY.SIZE[1] ENVELOPE BODYSTRUCTURE BODY)",
    );
    let mut parsed = String::from_utf8_lossy(&from_parse).into_owned();
    while let Some(at) = parsed.find("BINARY.SIZE[1] ") {
        let rest = &parsed[at + "BINARY.SIZE[1] ".len()..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        parsed.replace_range(at..at + "BINARY.SIZE[1] ".len() + digits + 1, "");
    }
    (String::from_utf8_lossy(&from_summary).into_owned(), parsed)
}

fn summaries_match_the_parse_across_restart_and_compaction(engine: Engine) {
    let relay = Relay::start(Settings::new(engine));
    for body in [NESTED, PLAIN, ALTERNATIVE] {
        relay.deliver(&["one@example.test"], body.as_bytes());
    }
    // Filler for another user, deleted below: garbage, so compaction rewrites the segment
    // and moves the frames of one's messages.
    for n in 0..12 {
        let filler =
            format!("Subject: filler {n}\r\n\r\n") + &format!("{}\r\n", "y".repeat(78)).repeat(50);
        relay.deliver(&["two@example.test"], filler.as_bytes());
    }
    let mut imap = Imap::connect(&relay);
    imap.append(APPENDED);
    imap.command("s", "EXAMINE INBOX");
    let (first, parsed) = fetch_both(&mut imap);
    assert_eq!(first, parsed);
    assert_eq!(first.matches("* ").count(), 4, "{first}");
    assert!(first.contains("(NIL NIL \"Team\" NIL)"), "{first}");
    assert!(first.contains("\"MESSAGE\" \"RFC822\""), "{first}");
    assert!(
        first.contains("\"=?utf-8?q?n=C3=A4stad?= and folded\""),
        "{first}"
    );
    imap.command("o", "LOGOUT");
    let mut pop = relay.pop3_login("two");
    let (count, _) = pop.stat();
    assert_eq!(count, 12);
    for n in 1..=count {
        pop.dele(n);
    }
    pop.quit().expect("quit");
    relay.stop();

    let compact = relay_cmd([
        "spool".as_ref(),
        "compact".as_ref(),
        "--dir".as_ref(),
        relay.spool_dir.as_os_str(),
    ]);
    assert!(compact.status.success(), "{}", describe(&compact));
    let report = String::from_utf8_lossy(&compact.stdout).into_owned()
        + &String::from_utf8_lossy(&compact.stderr);
    let copied: u64 = report
        .split(" message(s) copied")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no copy count in {report}"));
    assert!(copied >= 4, "compaction moved nothing: {report}");

    // Offline: every message of one's carries a summary, and it is what FETCH sent.
    let shards = std::fs::read_dir(&relay.spool_dir)
        .expect("spool dir")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("shard-"))
        })
        .count();
    let (spool, _) =
        relay::spool::Spool::open(relay::spool::SpoolConfig::new(&relay.spool_dir), shards)
            .expect("open spool");
    let replay = spool.replay().expect("replay");
    let mine: Vec<_> = replay
        .messages
        .iter()
        .filter(|m| m.mailboxes == ["one"])
        .collect();
    assert_eq!(mine.len(), 4);
    for m in mine {
        let stored = spool.read_summary(m.id).expect("read").expect("a summary");
        let summary = Summary::decode(&stored).expect("this build's summary");
        let body = spool.read_body(m.id).expect("body");
        assert_eq!(summary, Summary::of(&body));
        for part in [&summary.envelope, &summary.body_structure, &summary.body] {
            assert!(first.contains(&*String::from_utf8_lossy(part)), "{first}");
        }
    }
    spool.close().expect("close");

    let relay = relay.restart(Settings::new(engine));
    let mut imap = Imap::connect(&relay);
    imap.command("s", "EXAMINE INBOX");
    let (again, parsed) = fetch_both(&mut imap);
    assert_eq!(again, first);
    assert_eq!(parsed, first);
}
