//! The session's question about local recipients, behind a seam: "where does mail for this
//! local address go?". The real answer comes from the mailbox directory and the mailbox
//! store's usage (`mailbox::LocalRecipients`); tests use small tables. The session stays
//! sans-IO: lookups are in-memory and immediate.

use std::fmt;
use std::sync::Arc;

/// Where mail for one local address goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Local mailboxes, plus remote addresses an alias forwards to.
    Deliver {
        mailboxes: Vec<String>,
        forward: Vec<String>,
    },
    /// No such user or alias: 550 5.1.1.
    Unknown,
    /// A mailbox is over its quota: 452 4.2.2 (the client retries later).
    OverQuota,
    /// A user homed on another cluster node, asked on the cluster listener (a peer thinks
    /// the user is homed here): 450 4.2.0, nothing stored, so no loop; the directories
    /// converge (a user move, a change not yet seen here) and the peer retries.
    Elsewhere,
}

/// Answers for addresses in the local domains (and the bare `postmaster`).
pub trait LocalRecipients: Send + Sync {
    /// `address` is `local@domain` with a local domain, or `postmaster`; `size` is the
    /// declared SIZE (0 when absent), for the quota check.
    fn lookup(&self, address: &str, size: u64) -> Lookup;
    /// VRFY: the mailbox's canonical address when `address` is exactly one local mailbox.
    fn verify(&self, address: &str) -> Option<String>;
    /// EXPN: a list's members.
    fn expand(&self, address: &str) -> Option<Vec<String>>;
}

/// Shared handle to the seam, comparable by identity so `SessionConfig` stays `Eq`.
#[derive(Clone)]
pub struct Mailboxes(pub Arc<dyn LocalRecipients>);

impl fmt::Debug for Mailboxes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Mailboxes(..)")
    }
}

impl PartialEq for Mailboxes {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Mailboxes {}

/// The session's question about the outbound queue: "may another message come in?". The
/// real answer is the delivery runtime's queue gauge (`delivery::QueueGauge`); `false`
/// makes MAIL answer 452 4.3.1 (RFC 5321 §4.5.3.1.10 style backpressure: the client retries
/// later) instead of the queue growing without bound.
pub trait IngestGate: Send + Sync {
    fn accepting(&self) -> bool;
}

/// Shared handle to the gate, comparable by identity so `SessionConfig` stays `Eq`.
#[derive(Clone)]
pub struct Gate(pub Arc<dyn IngestGate>);

impl fmt::Debug for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Gate(..)")
    }
}

impl PartialEq for Gate {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Gate {}

/// The session's question about the client's message rate: "may this address start another
/// message now?" (Postfix anvil's `smtpd_client_message_rate_limit`). The real answer is a
/// table shared by every core (`server::admission::MessageRate`), since SO_REUSEPORT spreads one
/// client over all of them; `false` makes MAIL answer 450 4.7.1. Asking counts the attempt,
/// so the session asks once per MAIL that passed every other check.
pub trait MessageRateGate: Send + Sync {
    fn admit(&self, client: std::net::IpAddr) -> bool;

    /// Whether a count shared by the cluster's nodes follows this node's (`Event::CheckRate`).
    fn shared(&self) -> bool {
        false
    }
}

/// Shared handle to the rate seam, comparable by identity so `SessionConfig` stays `Eq`.
#[derive(Clone)]
pub struct RateGate(pub Arc<dyn MessageRateGate>);

impl fmt::Debug for RateGate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RateGate(..)")
    }
}

impl PartialEq for RateGate {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for RateGate {}
