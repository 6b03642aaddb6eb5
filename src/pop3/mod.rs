//! The POP3 protocol core: the server session that serves a maildrop from the spool.
//!
//! **Role.** Turn the bytes a POP3 client sends into responses and typed events (verify these
//! credentials, lock this maildrop, fetch this message, make these deletions durable, close),
//! and nothing else. It is sans-IO and synchronous (docs/ARCHITECTURE.md §10): no sockets, no
//! async, no clock, no files, no password hashing. The driver (`server::pop3`) moves the bytes,
//! answers the events from `mailbox/` and the spool, and applies the idle timeout and the
//! authentication failure delay. Tests therefore drive it with byte slices split at every
//! possible offset, against a fake maildrop.
//!
//! **Exposure.** Command lines come from unauthenticated network peers; message bodies come
//! from the spool (that is, from anyone who could send mail). Nothing may panic on any input
//! and nothing grows without bound. Credentials pass through in [`Event::Authenticate`];
//! their `Debug` (and that of [`Command`]) redacts passwords, AUTH responses and APOP
//! digests, so events and commands can be logged. Message contents are only ever copied to
//! the output buffer, never into events or errors.
//!
//! **Standards.** RFC 1939 (POP3: USER, PASS, APOP, STAT, LIST, RETR, DELE, NOOP, RSET, TOP,
//! UIDL, QUIT; byte-stuffing; UPDATE only on QUIT), RFC 2449 (CAPA; TOP, UIDL, USER, SASL,
//! RESP-CODES, PIPELINING, IMPLEMENTATION capabilities; `[IN-USE]`, `[LOGIN-DELAY]`; 255-octet
//! command lines), RFC 3206 (`[SYS/TEMP]`, `[SYS/PERM]`, `[AUTH]`, AUTH-RESP-CODE), RFC 5034
//! (AUTH with initial response or `+ ` continuation, `*` to cancel), RFC 4616 (SASL PLAIN),
//! RFC 4648 (base64). STLS (RFC 2595) comes with TLS.
//!
//! **Limits** (constants in [`session`]): command line 255 octets including CRLF (RFC 2449
//! §4), AUTH response line 2048, 20 client errors per session, 3 authentication failures per
//! session, 50 commands before authentication; PLAIN fields 255 octets each (RFC 4616).
//!
//! Modules: [`reply`] (every response: status, response code, text), [`command`] (the
//! `Command` type shared with the load generator), [`stuff`](mod@stuff) (byte-stuffing, TOP,
//! the octet count RETR sends), [`uidl`] (UIDL syntax, and UIDLs kept from another node),
//! [`session`] (the state machine). The line framer and SASL
//! PLAIN are shared with SMTP: [`crate::proto::line::frame`] (POP3 also accepts a bare LF as a
//! line end) and [`crate::proto::sasl`].
#![forbid(unsafe_code)]

pub mod command;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;
pub mod reply;
pub mod session;
pub mod stuff;
pub mod uidl;

pub use command::{encode, parse, Command, ParseError, Verb, VERBS};
pub use reply::{Capability, MultiLine, Response, ResponseCode, Status};
pub use session::{
    CloseReason, Credentials, Event, LockResult, MaildropEntry, NotStored, Outbox, Retrieval,
    Session, SessionConfig, Unavailable,
};
pub use stuff::{retr_size, stuff, stuff_in_place, top};
pub use uidl::{Uidl, UidlError};
