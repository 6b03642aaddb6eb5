//! The operator's text views of the queue: `relay queue list` (Postfix `mailq` style) and
//! `relay queue show`, rendered from the listings the delivery side produces (from the
//! spool's replay or from the running server's answer on the admin listener).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::delivery::control::{ListedMessage, ShownMessage};

/// The `relay queue show` text.
pub fn render_shown(shown: &ShownMessage, now: SystemTime) -> String {
    use std::fmt::Write;
    let mut s = render(std::slice::from_ref(&shown.message), now);
    for (address, outcome, reply) in &shown.finished {
        let _ = writeln!(s, "    {address}  {outcome}\n        ({reply})");
    }
    if !shown.local_mailboxes.is_empty() {
        let _ = writeln!(
            s,
            "    local mailboxes: {}",
            shown.local_mailboxes.join(", ")
        );
    }
    let _ = writeln!(s, "\n{}", shown.headers.trim_end());
    s
}

fn age(from_micros: u64, now: SystemTime) -> String {
    let then = UNIX_EPOCH + Duration::from_micros(from_micros);
    let secs = now.duration_since(then).unwrap_or_default().as_secs();
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

fn when(micros: Option<u64>, now: SystemTime) -> String {
    match micros {
        None => "now".into(),
        Some(us) => {
            let at = UNIX_EPOCH + Duration::from_micros(us);
            match at.duration_since(now) {
                Ok(d) => format!(
                    "in {}",
                    humantime::format_duration(Duration::from_secs(d.as_secs()))
                ),
                Err(_) => "now".into(),
            }
        }
    }
}

/// The `relay queue list` text: one block per message (Postfix `mailq` style).
pub fn render(messages: &[ListedMessage], now: SystemTime) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    if messages.is_empty() {
        s.push_str("queue is empty\n");
        return s;
    }
    let _ = writeln!(s, "{:<17} {:>9} {:>10}  sender", "queue id", "size", "age");
    for m in messages {
        let sender = if m.sender.is_empty() { "<>" } else { &m.sender };
        let _ = writeln!(
            s,
            "{:<17} {:>9} {:>10}  {}",
            m.id,
            m.size,
            age(m.arrival_unix_micros, now),
            sender
        );
        for r in &m.recipients {
            let _ = writeln!(
                s,
                "    {}  attempts={} next={}{}{}",
                r.address,
                r.attempts,
                when(r.next_attempt_unix_micros, now),
                r.destination
                    .as_deref()
                    .map(|d| format!(" via={d}"))
                    .unwrap_or_default(),
                if r.in_flight { " (in progress)" } else { "" }
            );
            if let Some(reply) = &r.last_reply {
                let _ = writeln!(s, "        ({reply})");
            }
        }
    }
    let recipients: usize = messages.iter().map(|m| m.recipients.len()).sum();
    let _ = writeln!(
        s,
        "-- {} messages, {} recipients",
        messages.len(),
        recipients
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::control::ListedRecipient;

    fn listed() -> ListedMessage {
        ListedMessage {
            id: "0000000001-0001".into(),
            arrival_unix_micros: 1_764_000_000_000_000,
            sender: "s@here.test".into(),
            size: 1234,
            recipients: vec![ListedRecipient {
                address: "b@y.test".into(),
                attempts: 2,
                last_reply: Some("451 4.7.1 greylisted".into()),
                next_attempt_unix_micros: Some(1_764_000_360_000_000),
                destination: Some("y.test".into()),
                ready: false,
                in_flight: false,
            }],
        }
    }

    #[test]
    fn the_list_shows_each_recipient_with_its_next_try_and_last_reply() {
        let now = UNIX_EPOCH + Duration::from_micros(1_764_000_120_000_000);
        let text = render(&[listed()], now);
        assert!(
            text.contains("b@y.test  attempts=2 next=in 4m via=y.test"),
            "{text}"
        );
        assert!(text.contains("(451 4.7.1 greylisted)"), "{text}");
        assert!(text.contains("s@here.test"), "{text}");
        assert!(text.contains("2m"), "age of the message: {text}");
        assert!(text.ends_with("-- 1 messages, 1 recipients\n"), "{text}");
        assert_eq!(render(&[], now), "queue is empty\n");
    }

    #[test]
    fn show_adds_finished_recipients_mailboxes_and_headers() {
        let shown = ShownMessage {
            message: listed(),
            finished: vec![("c@z.test".into(), "delivered".into(), "250 ok".into())],
            local_mailboxes: vec!["alice".into()],
            headers: "Subject: hi\r\n".into(),
        };
        let text = render_shown(&shown, UNIX_EPOCH + Duration::from_secs(1_764_000_120));
        assert!(
            text.contains("c@z.test  delivered\n        (250 ok)"),
            "{text}"
        );
        assert!(text.contains("local mailboxes: alice"), "{text}");
        assert!(text.trim_end().ends_with("Subject: hi"), "{text}");
    }
}
