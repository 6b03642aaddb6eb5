//! `X-Relay-Junk`: the sender checks' `junk` decision, carried in the stored message.
//!
//! The node that ran the checks files its local recipients' copies in Junk itself; a
//! recipient homed on another node of the cluster gets the message over the cluster
//! listener, which runs no checks, so the decision travels with the bytes: the home node
//! files a message with this field in Junk. The field is ours alone: it is removed from
//! everything arriving from outside the cluster (authenticated clients and web mail
//! included) before anything of ours is added, so no sender can file mail in someone's
//! Junk, or keep it out.

use super::authres;
use super::policy::Refusal;

/// The field's name.
pub const NAME: &str = "X-Relay-Junk";

/// The field (CRLF-terminated) for a message filed in Junk because of `why`, which the
/// reader sees too.
pub fn field(why: Refusal) -> String {
    let why = match why {
        Refusal::Dmarc => "dmarc",
        Refusal::Spf => "spf",
    };
    format!("{NAME}: {why}\r\n")
}

/// Whether `message` carries the field (in its header section).
pub fn present(message: &[u8]) -> bool {
    authres::has_field(message, NAME)
}

/// `message` without the field, or `None` when it has none (nothing is copied then).
pub fn remove(message: &[u8]) -> Option<Vec<u8>> {
    authres::remove_fields(message, |name, _| {
        name.eq_ignore_ascii_case(NAME.as_bytes())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn found_only_in_the_header_section_and_removed_with_its_folds() {
        let marked = format!(
            "{}Subject: hi\r\nx-relay-JUNK : spf\r\n\tfolded\r\nTo: b@example.org\r\n\r\nX-Relay-Junk: dmarc\r\n",
            field(Refusal::Dmarc)
        );
        assert!(present(marked.as_bytes()));
        let kept = remove(marked.as_bytes()).expect("removed");
        assert_eq!(
            String::from_utf8(kept.clone()).expect("utf-8"),
            "Subject: hi\r\nTo: b@example.org\r\n\r\nX-Relay-Junk: dmarc\r\n"
        );
        // In the body it is text, not a field.
        assert!(!present(&kept));
        assert_eq!(remove(&kept), None);
        assert!(!present(b"X-Relay-Junked: no\r\n\r\n"));
        assert!(present(b"X-Relay-Junk: spf"));
        assert_eq!(field(Refusal::Spf), "X-Relay-Junk: spf\r\n");
    }
}
