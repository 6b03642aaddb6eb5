//! The `Received:` trace header the relay prepends to every message it accepts.
//!
//! Exposure: the HELO/EHLO name is whatever the peer sent, so it is reduced to characters
//! that are safe where a domain stands (no CR, LF, parentheses or semicolons) and bounded in
//! length: it can never add a header line or end the clause early. The recipient was parsed
//! as an RFC 5321 path, so it holds no control characters.
//!
//! Standards: RFC 5321 §4.4 (Time-stamp-line: `from`, `by`, `with`, `id`, `for`, then `;`
//! date-time), RFC 3848 and RFC 6531 §4.3 ("with" keywords: SMTP, ESMTP, UTF8SMTP ...),
//! RFC 5322 §3.3 (date-time, numeric zone "+0000", never "GMT") and §2.2.3 (folding with
//! CRLF followed by white space).

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Datelike, Utc};

use crate::envelope::{Origin, QueueId, Recipient};

/// RFC 5321 §4.5.3.1.2: a domain has at most 255 octets; a longer HELO is cut there.
const HELO_MAX: usize = 255;

/// Builds the header, ending in CRLF, for prepending to the stored body. `for <rcpt>` appears
/// only with exactly one recipient: listing several would disclose Bcc recipients to each
/// other (RFC 5321 §7.2). An AUTH identity is written as Postfix writes it,
/// `(Authenticated sender: name)` after the `from` clause (a comment: RFC 5321 §4.4 has no
/// clause for it; RFC 3848's `ESMTPA` says that AUTH was used).
pub fn received_header(
    origin: &Origin,
    tls: Option<&str>,
    authenticated: Option<&str>,
    recipients: &[Recipient],
    id: QueueId,
    hostname: &str,
    now: SystemTime,
) -> String {
    let mut header = String::with_capacity(200);
    header.push_str("Received: from ");
    header.push_str(&sanitize(&origin.helo, HELO_MAX));
    header.push_str(" (");
    header.push_str(&ip_literal(&origin.client_ip));
    header.push(')');
    if let Some(tls) = tls {
        // Postfix's comment: `(using TLSv1.3 with cipher …)`; the text is ours (the driver's
        // protocol and cipher names), still bounded and sanitised.
        header.push_str("\r\n\t(using ");
        header.push_str(&sanitize_comment(tls, true));
        header.push(')');
    }
    if let Some(user) = authenticated {
        header.push_str("\r\n\t(Authenticated sender: ");
        header.push_str(&sanitize_comment(user, false));
        header.push(')');
    }
    header.push_str("\r\n\tby ");
    header.push_str(&sanitize(hostname, HELO_MAX));
    header.push_str(" (relay) with ");
    header.push_str(&sanitize(&origin.protocol, 16));
    header.push_str(" id ");
    header.push_str(&id.to_string());
    match recipients {
        [only] => {
            header.push_str("\r\n\tfor <");
            header.push_str(&only.address);
            header.push_str(">; ");
        }
        _ => header.push_str(";\r\n\t"),
    }
    header.push_str(&rfc5322_date(now));
    header.push_str("\r\n");
    header
}

/// `[192.0.2.1]` or `[IPv6:2001:db8::1]` (RFC 5321 §4.1.3), the TCP-info of §4.4.
fn ip_literal(ip: &str) -> String {
    match ip.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => format!("[{v4}]"),
        Ok(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => format!("[{v4}]"),
            None => format!("[IPv6:{v6}]"),
        },
        // The driver fills this from a SocketAddr; anything else is a bug, but it must still
        // not break the header.
        Err(_) => format!("[{}]", sanitize(ip, 64)),
    }
}

/// Keeps what may appear in a domain or address literal (and `_`, which real HELO names
/// contain); everything else becomes `?`. Empty text becomes `unknown`.
fn sanitize(text: &str, max: usize) -> String {
    if text.is_empty() {
        return String::from("unknown");
    }
    text.chars()
        .take(max)
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_' | ':' | '[' | ']' => c,
            _ => '?',
        })
        .collect()
}

/// Text inside a comment: printable ASCII (and spaces where `spaces`) without parentheses
/// or backslash, which would end or escape the comment (RFC 5322 §3.2.2), at most 255
/// characters. A user name keeps no spaces; the TLS description does.
fn sanitize_comment(text: &str, spaces: bool) -> String {
    text.chars()
        .take(HELO_MAX)
        .map(|c| match c {
            '(' | ')' | '\\' => '?',
            ' ' if spaces => ' ',
            c if c.is_ascii_graphic() => c,
            _ => '?',
        })
        .collect()
}

/// RFC 5322 date-time in UTC with a "+0000" zone, e.g. `Tue, 1 Jul 2003 10:52:37 +0000`.
fn rfc5322_date(now: SystemTime) -> String {
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX);
    let date = DateTime::<Utc>::from_timestamp(seconds, 0)
        // RFC 5322 needs a four-digit year; chrono's formatter would panic beyond it.
        .filter(|d| d.year() <= 9999)
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
    date.to_rfc2822()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn origin(helo: &str, ip: &str) -> Origin {
        Origin {
            client_ip: ip.into(),
            client_port: 40000,
            helo: helo.into(),
            protocol: "ESMTP".into(),
        }
    }

    fn recipient(address: &str) -> Recipient {
        Recipient {
            address: address.into(),
            notify: None,
            orcpt: None,
        }
    }

    const NOW: Duration = Duration::from_secs(1_700_000_000);
    const ID: QueueId = QueueId(0x0123_4567_89AB_CDEF);

    #[test]
    fn one_recipient_gets_a_for_clause() {
        let header = received_header(
            &origin("client.example", "192.0.2.1"),
            None,
            None,
            &[recipient("a@b.example")],
            ID,
            "mx.example",
            UNIX_EPOCH + NOW,
        );
        assert_eq!(
            header,
            "Received: from client.example ([192.0.2.1])\r\n\
             \tby mx.example (relay) with ESMTP id 0123456789ABCDEF\r\n\
             \tfor <a@b.example>; Tue, 14 Nov 2023 22:13:20 +0000\r\n"
        );
    }

    #[test]
    fn several_recipients_are_not_disclosed() {
        let header = received_header(
            &origin("[IPv6:2001:db8::1]", "2001:db8::1"),
            None,
            None,
            &[recipient("a@b"), recipient("c@d")],
            ID,
            "mx.example",
            UNIX_EPOCH + NOW,
        );
        assert_eq!(
            header,
            "Received: from [IPv6:2001:db8::1] ([IPv6:2001:db8::1])\r\n\
             \tby mx.example (relay) with ESMTP id 0123456789ABCDEF;\r\n\
             \tTue, 14 Nov 2023 22:13:20 +0000\r\n"
        );
        assert!(!header.contains("GMT"));
    }

    #[test]
    fn helo_cannot_inject_header_lines() {
        let evil = "x\r\nBcc: victim@example.com (y); z\u{7f}é";
        let header = received_header(
            &origin(evil, "::ffff:192.0.2.9"),
            None,
            None,
            &[],
            ID,
            "mx",
            UNIX_EPOCH,
        );
        assert_eq!(
            header,
            "Received: from x??Bcc:?victim?example.com??y???z?? ([192.0.2.9])\r\n\
             \tby mx (relay) with ESMTP id 0123456789ABCDEF;\r\n\
             \tThu, 1 Jan 1970 00:00:00 +0000\r\n"
        );
        let long = "h".repeat(2000);
        let header = received_header(
            &origin(&long, "192.0.2.1"),
            None,
            None,
            &[],
            ID,
            "mx",
            UNIX_EPOCH,
        );
        let first_line = header.split("\r\n").next().unwrap();
        assert_eq!(
            first_line.len(),
            "Received: from ".len() + HELO_MAX + " ([192.0.2.1])".len()
        );
        // Every line ends in CRLF and every continuation starts with a TAB.
        for (i, line) in header.split_inclusive("\r\n").enumerate() {
            assert!(line.ends_with("\r\n"));
            assert_eq!(i > 0, line.starts_with('\t'));
            assert!(line.len() <= 998);
        }
    }

    #[test]
    fn dates_outside_the_format_do_not_panic() {
        assert_eq!(
            rfc5322_date(UNIX_EPOCH + Duration::from_secs(400_000_000_000)),
            "Thu, 1 Jan 1970 00:00:00 +0000"
        );
        assert_eq!(rfc5322_date(UNIX_EPOCH), "Thu, 1 Jan 1970 00:00:00 +0000");
    }

    #[test]
    fn an_authenticated_sender_and_the_tls_session_are_named_in_comments() {
        let mut origin = origin("client.example", "192.0.2.1");
        origin.protocol = "ESMTPA".into();
        let header = received_header(
            &origin,
            Some("TLSv1.3 (with) cipher\r\nX"),
            Some("al(ice)\\\r\n"),
            &[recipient("a@b.example")],
            ID,
            "mx.example",
            UNIX_EPOCH + NOW,
        );
        assert_eq!(
            header,
            "Received: from client.example ([192.0.2.1])\r\n\
             \t(using TLSv1.3 ?with? cipher??X)\r\n\
             \t(Authenticated sender: al?ice????)\r\n\
             \tby mx.example (relay) with ESMTPA id 0123456789ABCDEF\r\n\
             \tfor <a@b.example>; Tue, 14 Nov 2023 22:13:20 +0000\r\n"
        );
    }
}
