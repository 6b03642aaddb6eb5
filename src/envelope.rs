//! The envelope: what SMTP says about a message besides its content.
//!
//! Role: the owned types shared by the SMTP session (which builds them from peer commands),
//! the spool (which converts them into its own record types, `spool::record`, to store
//! them) and the outbound client (which replays them to a next hop). They are plain data:
//! parsing and validation live in `smtp::`, durability in `spool::`. Nothing here defines
//! bytes on disk: a field may be added without touching the spool's format.
//!
//! Exposure: every string here came from a network peer. They were syntax-checked by the
//! session (RFC 5321 paths, RFC 3461 parameters) before they got here, but they are still
//! untrusted: never interpret them as paths or shell words.
//!
//! Standards: RFC 5321 §4.1.2 (paths), RFC 1870 (SIZE), RFC 6152 / RFC 3030 (BODY),
//! RFC 6531 (SMTPUTF8), RFC 3461 (DSN: RET, ENVID, NOTIFY, ORCPT).
#![forbid(unsafe_code)]

use std::fmt;
use std::str::FromStr;

/// A message's identity, unique across shards and restarts.
///
/// Layout: the high 56 bits are microseconds since the Unix epoch at allocation, made strictly
/// increasing per shard; the low 8 bits are the shard that stored it. So ids sort by arrival,
/// carry their shard (no lookup needed to find the segment directory) and need no
/// coordination between cores. 2^56 µs is ≈ 2,283 years; 256 shards covers the 64-core goal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId(pub u64);

impl QueueId {
    pub const SHARD_BITS: u32 = 8;

    pub fn new(micros: u64, shard: u8) -> Self {
        QueueId((micros << Self::SHARD_BITS) | u64::from(shard))
    }

    pub fn shard(self) -> u8 {
        (self.0 & 0xff) as u8
    }

    /// Microseconds since the Unix epoch at which the id was allocated.
    pub fn micros(self) -> u64 {
        self.0 >> Self::SHARD_BITS
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016X}", self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a queue id (expected 16 hexadecimal digits): {0:?}")]
pub struct BadQueueId(pub String);

impl FromStr for QueueId {
    type Err = BadQueueId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 16 {
            return Err(BadQueueId(s.to_string()));
        }
        u64::from_str_radix(s, 16)
            .map(QueueId)
            .map_err(|_| BadQueueId(s.to_string()))
    }
}

/// BODY= of MAIL FROM (RFC 6152 8BITMIME, RFC 3030 BINARYMIME). Absent means 7BIT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyType {
    #[default]
    SevenBit,
    EightBitMime,
    BinaryMime,
}

/// RET= of MAIL FROM (RFC 3461 §4.3): how much of the message a failure DSN returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DsnRet {
    Full,
    Headers,
}

/// NOTIFY= of RCPT TO (RFC 3461 §4.1) as a bit set. `NEVER` excludes the other three.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Notify(pub u8);

impl Notify {
    pub const NEVER: Notify = Notify(0b1000);
    pub const SUCCESS: Notify = Notify(0b0001);
    pub const FAILURE: Notify = Notify(0b0010);
    pub const DELAY: Notify = Notify(0b0100);

    pub fn contains(self, other: Notify) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn union(self, other: Notify) -> Notify {
        Notify(self.0 | other.0)
    }
}

/// MAIL FROM parameters the relay keeps (RFC 5321 §4.1.2 Mail-parameters).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MailParams {
    /// SIZE= as declared by the client (RFC 1870); the stored body length is authoritative.
    pub size: Option<u64>,
    pub body: BodyType,
    /// SMTPUTF8 was given (RFC 6531): addresses and headers may hold UTF-8.
    pub smtputf8: bool,
    pub ret: Option<DsnRet>,
    /// ENVID= as xtext-decoded text (RFC 3461 §4.4).
    pub envid: Option<String>,
    /// Cluster-private parameters (`X…=value`, keyword upper-cased, value xtext-decoded):
    /// what one node tells another about a message it hands over (its queue id for the
    /// receiver's duplicate check, a transferred queue's schedule). Only the cluster listener
    /// takes them (the session answers 555 elsewhere); never stored in the spool.
    pub cluster: ClusterParams,
}

/// `MailParams::cluster`: `(KEYWORD, value)` pairs, boxed so that a message's metadata (and
/// the spool's record enum holding it) does not grow for a field almost always empty.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
// One pointer wide: a `Vec` (or a boxed slice) would tip the spool's `Record` enum over
// clippy's large-variant threshold; the extra allocation happens only between nodes.
#[allow(clippy::box_collection)]
pub struct ClusterParams(Option<Box<Vec<(String, String)>>>);

impl ClusterParams {
    pub fn iter(&self) -> std::slice::Iter<'_, (String, String)> {
        self.as_slice().iter()
    }

    pub fn as_slice(&self) -> &[(String, String)] {
        self.0.as_deref().map_or(&[], Vec::as_slice)
    }

    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    pub fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }

    pub fn first(&self) -> Option<&(String, String)> {
        self.as_slice().first()
    }

    pub fn push(&mut self, pair: (String, String)) {
        self.0.get_or_insert_with(Default::default).push(pair);
    }

    pub fn clear(&mut self) {
        self.0 = None;
    }
}

impl From<Vec<(String, String)>> for ClusterParams {
    fn from(pairs: Vec<(String, String)>) -> ClusterParams {
        ClusterParams((!pairs.is_empty()).then(|| Box::new(pairs)))
    }
}

/// One accepted RCPT TO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// The forward-path mailbox without angle brackets or source route: `local@domain`,
    /// or `postmaster` (RFC 5321 §4.5.1 requires accepting it without a domain).
    pub address: String,
    /// NOTIFY= (RFC 3461 §4.1); `None` when absent (the next hop's default applies).
    pub notify: Option<Notify>,
    /// ORCPT= as `addr-type;xtext-decoded-address` (RFC 3461 §4.2).
    pub orcpt: Option<String>,
}

/// Sender, parameters and recipients of one transaction.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Envelope {
    /// The reverse-path mailbox without angle brackets; empty for the null sender `<>`.
    pub reverse_path: String,
    pub params: MailParams,
    pub recipients: Vec<Recipient>,
}

/// RFC 1939 §7: "The unique-id of a message is ... from 1 to 70 characters".
pub const UIDL_MAX: usize = 70;

/// Why a string cannot be a UIDL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UidlError {
    #[error("an empty UIDL")]
    Empty,
    #[error("a UIDL of {0} octets (at most {UIDL_MAX})")]
    TooLong(usize),
    #[error("octet 0x{0:02x} in a UIDL (only 0x21..0x7E)")]
    BadOctet(u8),
}

/// A checked POP3 UIDL (RFC 1939 §7): 1–70 octets, each in 0x21..0x7E. What a maildrop
/// shows is decided in `pop3::uidl`; this is the syntax, shared with the user move's wire.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct Uidl(String);

impl Uidl {
    pub fn new(text: impl Into<String>) -> Result<Uidl, UidlError> {
        let text = text.into();
        if text.is_empty() {
            return Err(UidlError::Empty);
        }
        if text.len() > UIDL_MAX {
            return Err(UidlError::TooLong(text.len()));
        }
        if let Some(b) = text.bytes().find(|b| !(0x21..=0x7e).contains(b)) {
            return Err(UidlError::BadOctet(b));
        }
        Ok(Uidl(text))
    }

    /// The UIDL of a message stored on the node that shows it: its queue id in hex.
    pub fn of_id(id: QueueId) -> Uidl {
        Uidl(id.to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Uidl {
    type Error = UidlError;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        Uidl::new(text)
    }
}

impl From<Uidl> for String {
    fn from(u: Uidl) -> String {
        u.0
    }
}

impl std::fmt::Display for Uidl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// How the message reached us, for the Received header, the log and later policy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Origin {
    /// The client's IP address as text (`192.0.2.1`, `2001:db8::1`).
    pub client_ip: String,
    pub client_port: u16,
    /// The HELO/EHLO argument as the client sent it.
    pub helo: String,
    /// RFC 3848 / RFC 6531 §4.3 "with" keyword: SMTP, ESMTP, UTF8SMTP (ESMTPS/ESMTPA and
    /// UTF8SMTPS/UTF8SMTPA with TLS/AUTH).
    pub protocol: String,
}

impl Origin {
    /// The protocol of a message imported by a user move (`server::move_in`).
    pub const MOVED: &'static str = "MOVE";

    /// The origin of a message imported by a user move from node `from`, where it was stored
    /// as `source` and showed POP3 UIDL `uidl`: `helo` is `from:SOURCE UIDL` (a node name
    /// and a UIDL hold no space). Moves before UIDLs were kept wrote `from:SOURCE` only.
    pub fn moved(from: &str, source: QueueId, uidl: &str) -> Origin {
        Origin {
            client_ip: String::new(),
            client_port: 0,
            helo: format!("{from}:{source} {uidl}"),
            protocol: Self::MOVED.into(),
        }
    }

    /// The POP3 UIDL a moved message keeps ([`Origin::moved`]), unchecked; `None` for any
    /// other message and for one moved before UIDLs were kept.
    pub fn kept_uidl(&self) -> Option<&str> {
        if self.protocol != Self::MOVED {
            return None;
        }
        self.helo.split_once(' ').map(|(_, uidl)| uidl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_syntax_is_rfc_1939s() {
        assert!(Uidl::new("a").is_ok());
        assert!(Uidl::new("~!".repeat(35)).is_ok());
        assert_eq!(Uidl::new(""), Err(UidlError::Empty));
        assert_eq!(Uidl::new("x".repeat(71)), Err(UidlError::TooLong(71)));
        assert_eq!(Uidl::new("a b"), Err(UidlError::BadOctet(b' ')));
        assert_eq!(Uidl::new("a\u{7f}"), Err(UidlError::BadOctet(0x7f)));
        assert_eq!(Uidl::new("é"), Err(UidlError::BadOctet(0xc3)));
        assert_eq!(Uidl::new("a\r\n"), Err(UidlError::BadOctet(b'\r')));
        let id = QueueId::new(1_764_000_000_000_000, 3);
        assert_eq!(Uidl::of_id(id).as_str(), id.to_string());
        assert_eq!(Uidl::of_id(id).as_str().len(), 16);
    }

    #[test]
    fn json_refuses_a_bad_uidl() {
        let u: Uidl = serde_json::from_str("\"0123ABC\"").unwrap();
        assert_eq!(u.as_str(), "0123ABC");
        assert_eq!(serde_json::to_string(&u).unwrap(), "\"0123ABC\"");
        for bad in ["\"\"", "\"a b\"", "12", "null"] {
            assert!(serde_json::from_str::<Uidl>(bad).is_err(), "{bad}");
        }
        let long = format!("\"{}\"", "x".repeat(71));
        assert!(serde_json::from_str::<Uidl>(&long).is_err());
    }

    #[test]
    fn a_moved_origin_keeps_its_uidl() {
        let id = QueueId::new(1_764_000_000_000_000, 7);
        let o = Origin::moved("node-a", id, "0001ABC");
        assert_eq!(o.helo, format!("node-a:{id} 0001ABC"));
        assert_eq!(o.kept_uidl(), Some("0001ABC"));
        let old = Origin {
            helo: format!("node-a:{id}"),
            protocol: Origin::MOVED.into(),
            ..Origin::default()
        };
        assert_eq!(old.kept_uidl(), None);
        let smtp = Origin {
            helo: "mx.example x".into(),
            protocol: "ESMTP".into(),
            ..Origin::default()
        };
        assert_eq!(smtp.kept_uidl(), None);
    }

    #[test]
    fn queue_id_packs_time_and_shard() {
        let id = QueueId::new(1_764_000_000_000_000, 7);
        assert_eq!(id.shard(), 7);
        assert_eq!(id.micros(), 1_764_000_000_000_000);
        let text = id.to_string();
        assert_eq!(text.len(), 16);
        assert_eq!(text.parse::<QueueId>(), Ok(id));
    }

    #[test]
    fn queue_id_rejects_malformed_text() {
        for bad in ["", "12", "XYZ0000000000000", "00000000000000000"] {
            assert_eq!(bad.parse::<QueueId>(), Err(BadQueueId(bad.to_string())));
        }
    }

    #[test]
    fn notify_never_is_exclusive_of_the_others() {
        let all = Notify::SUCCESS.union(Notify::FAILURE).union(Notify::DELAY);
        assert!(all.contains(Notify::FAILURE));
        assert!(!all.contains(Notify::NEVER));
        assert!(!Notify::NEVER.contains(Notify::SUCCESS));
    }
}
