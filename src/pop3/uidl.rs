//! POP3 unique-id listings (RFC 1939 §7): the one syntax rule of a UIDL, and the rule that
//! keeps a maildrop's UIDLs unique when some of them came from another node.
//!
//! A message stored here shows its queue id in hex (16 characters). A message imported by a
//! user move (`relay user move`) shows the UIDL the source node showed for it (a "kept"
//! UIDL, stored in its message frame's origin), so a client that leaves mail on the server
//! does not fetch the mailbox again after the move.
//!
//! **Exposure.** A kept UIDL arrives from a peer node (the move conversation) and is read
//! back from the spool; [`Uidl::new`] checks it both times (1–70 octets of 0x21..0x7E; the
//! type is in [`crate::envelope`], where the move's wire can name it).
//!
//! **Uniqueness.** Queue ids are unique within a node, and a source's UIDLs were unique
//! within its maildrop, but two nodes can give the same queue id (same microsecond, same
//! shard number), so a kept UIDL can equal the queue id of a message stored here. Such a
//! twin never shows twice: in maildrop order (UID order, oldest first) the first keeps the
//! string, a later one shows its own queue id, or `QUEUEID-UID` if that is taken too (then a
//! counter). Only a message with a twin can show another UIDL in a later session (when the
//! twin is deleted); every other message's UIDL depends on nothing but itself.

use std::collections::HashSet;

use crate::envelope::QueueId;

pub use crate::envelope::{Uidl, UidlError, UIDL_MAX};

/// One message of a maildrop, in maildrop order: its INBOX UID, its queue id here, and the
/// UIDL it keeps from another node, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listed<'a> {
    pub uid: u32,
    pub id: QueueId,
    pub kept: Option<&'a str>,
}

/// The UIDL each message shows, parallel to `messages` (module doc: unique, a kept one
/// preferred, a later twin disambiguated).
pub fn shown(messages: &[Listed<'_>]) -> Vec<String> {
    // Every preferred string first, so a later twin avoids the strings of later messages
    // too; bounded: each message adds at most one string, and a counter ends each search.
    let preferred: Vec<String> = messages
        .iter()
        .map(|m| match m.kept {
            Some(k) if Uidl::new(k).is_ok() => k.to_string(),
            _ => m.id.to_string(),
        })
        .collect();
    // Queue ids are unique here: with nothing kept there is nothing to check.
    if messages.iter().all(|m| m.kept.is_none()) {
        return preferred;
    }
    let mut counts: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for p in &preferred {
        *counts.entry(p.as_str()).or_default() += 1;
    }
    if counts.values().all(|&n| n == 1) {
        return preferred;
    }
    let taken_elsewhere: HashSet<&str> = preferred.iter().map(String::as_str).collect();
    let mut seen: HashSet<String> = HashSet::with_capacity(messages.len());
    let mut out = Vec::with_capacity(messages.len());
    for (m, p) in messages.iter().zip(&preferred) {
        let mut choice = p.clone();
        if seen.contains(&choice) {
            let own = m.id.to_string();
            choice = if !seen.contains(&own) && !taken_elsewhere.contains(own.as_str()) {
                own
            } else {
                let base = format!("{own}-{}", m.uid);
                let mut candidate = base.clone();
                let mut n = 0u64;
                while seen.contains(&candidate) || taken_elsewhere.contains(candidate.as_str()) {
                    n += 1;
                    candidate = format!("{base}-{n}");
                }
                candidate
            };
        }
        seen.insert(choice.clone());
        out.push(choice);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> QueueId {
        QueueId::new(1_000 + n, 0)
    }

    #[test]
    fn kept_uidls_show_and_others_show_their_queue_id() {
        let m = [
            Listed {
                uid: 1,
                id: id(1),
                kept: Some("FROM-A-1"),
            },
            Listed {
                uid: 2,
                id: id(2),
                kept: None,
            },
            // A kept value that is not a UIDL (a damaged frame): the queue id.
            Listed {
                uid: 3,
                id: id(3),
                kept: Some("a b"),
            },
        ];
        assert_eq!(
            shown(&m),
            vec!["FROM-A-1".to_string(), id(2).to_string(), id(3).to_string()]
        );
    }

    #[test]
    fn a_twin_never_shows_twice() {
        // A kept UIDL equal to the queue id of a later local message, and two kept twins.
        let twin = id(7).to_string();
        let m = [
            Listed {
                uid: 1,
                id: id(1),
                kept: Some(&twin),
            },
            Listed {
                uid: 2,
                id: id(7),
                kept: None,
            },
            Listed {
                uid: 3,
                id: id(3),
                kept: Some(&twin),
            },
            Listed {
                uid: 4,
                id: id(4),
                kept: Some("X"),
            },
            Listed {
                uid: 5,
                id: id(4), // not possible (one id, one INBOX copy), but still unique
                kept: Some("X"),
            },
        ];
        let s = shown(&m);
        assert_eq!(s[0], twin, "the first keeps it");
        assert_eq!(s[1], format!("{}-2", id(7)), "its own id is taken");
        assert_eq!(s[2], id(3).to_string());
        assert_eq!(s[3], "X");
        assert_eq!(s[4], id(4).to_string());
        let unique: HashSet<&String> = s.iter().collect();
        assert_eq!(unique.len(), s.len());
        assert!(s.iter().all(|u| Uidl::new(u.clone()).is_ok()));
    }
}
