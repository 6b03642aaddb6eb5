//! The SMTP protocol core: the server session and the outbound client.
//!
//! **Role.** Turn the bytes a network peer sends into replies and typed events (store this
//! message, log this rejection, close), and nothing else. It is sans-IO and synchronous
//! (docs/ARCHITECTURE.md §10): no sockets, no async, no clock reads; the connection drivers
//! (`server::smtp`, the delivery workers) move the bytes and pass `now` in. Tests therefore
//! drive it with byte slices split at every possible offset.
//!
//! **Exposure.** Everything here parses untrusted bytes from unauthenticated network peers,
//! at the relay's privilege. Nothing may panic on any input, and nothing grows without a
//! bound: command lines stop at `command_line_max`, bodies at `message_size_max` (the rest is
//! counted and discarded) and all bodies together at the budget of [`body_memory`], recipients at `recipients_max`, errors at `errors_max`. Peer text
//! that reaches a reply or a header is sanitised where it is written (`reply`, `received`).
//!
//! **Standards.** RFC 5321 (SMTP), RFC 3463 and RFC 2034 (enhanced status codes), RFC 2920
//! (PIPELINING), RFC 1870 (SIZE), RFC 6152 (8BITMIME), RFC 3030 (CHUNKING, BINARYMIME),
//! RFC 6531 (SMTPUTF8), RFC 3461 (DSN parameters), RFC 3848 (Received "with" keywords),
//! RFC 5322 (date-time in Received), RFC 4954 (AUTH; PLAIN per RFC 4616, and LOGIN). SMTP smuggling defence: only CRLF.CRLF ends DATA, and
//! bare CR or LF anywhere in message data refuses the message (RFC 5321 §2.3.8).
//!
//! **Limits** (defaults in [`SessionConfig`]): command line 512 octets, text line 1000 octets
//! (both including CRLF), 100 recipients, 25 MiB per message, 20 errors per session; paths
//! 256 octets, local parts 64, domains 255; ENVID 100, ORCPT 500.
//!
//! Modules: [`reply`] (every reply code and text), [`command`] (the `Command` type shared with
//! the client and loadgen), [`address`] and [`params`] (MAIL/RCPT arguments), [`data`] (the
//! DATA/BDAT receiver), [`body_memory`] (the budget a body's buffer is reserved from),
//! [`received`] (the trace header), [`recipients`] (what RCPT asks the relay), [`session`] (the server state machine), [`client`] (the outbound client). The
//! command-line framer is shared with POP3: [`crate::proto::line`](mod@crate::proto::line).
#![forbid(unsafe_code)]

pub mod address;
pub mod body_memory;
pub mod client;
pub mod command;
pub mod data;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;
pub mod params;
pub mod received;
pub mod recipients;
pub mod reply;
pub mod session;

pub use address::{AddressError, ForwardPath, Mailbox, ReversePath};
pub use body_memory::{BodyMemory, MemoryGate, Refusal, Reservation};
pub use command::{encode, parse, Command, CommandSpec, MailKind, ParseError, Verb, COMMANDS};
pub use data::{BodyError, BodyLimits, BodyReceiver};
pub use params::{ParamError, RcptParams};
pub use recipients::{
    Gate, IngestGate, LocalRecipients, Lookup, Mailboxes, MessageRateGate, RateGate,
};
pub use reply::{EnhancedStatus, Extension, Reply, ReplyCode};
pub use session::{
    AuthFailure, CloseReason, Credentials, Event, Outbox, Password, Session, SessionConfig,
    SessionConfigError, Submission, SubmitError, TransactionSummary,
};
