//! The sans-IO IMAP4rev2 (RFC 9051) server session, serving IMAP4rev1 (RFC 3501) clients too:
//! bytes in, responses and store requests out.
//!
//! **Design.** Like `pop3`, the session is sans-IO and synchronous: [`Session::feed`] takes
//! client bytes and returns responses and [`Event`]s. Everything it needs from the user's
//! store goes out as [`Event::Store`] carrying a [`store::Request`], and the session stops
//! consuming until the driver calls [`Session::answer`] with the [`store::Answer`]. Writes
//! must be durable before their tagged OK and the real store commits them on another task,
//! so the session cannot call a synchronous store itself; the [`store::Mailboxes`] trait
//! says what a store must offer, and [`store::serve`] answers a request from any
//! implementation of it (the tests use [`store::memory::Memory`]). Passwords are checked
//! by the driver ([`Event::Authenticate`]), TLS is run by the driver ([`Event::StartTls`]).
//!
//! **Exposure.** Commands come from unauthenticated peers; [`frame`] bounds every command
//! (line, literal, APPEND and command sizes, [`frame::Limits`]) before imap-codec parses it,
//! and skips a refused command exactly, literal data included.
//!
//! **Standards.** RFC 9051 and RFC 3501 (IMAP4rev2/rev1, per session with ENABLE), RFC 7888
//! (LITERAL+), RFC 4315 (UIDPLUS), RFC 6851 (MOVE), RFC 7162 (CONDSTORE, QRESYNC), RFC 2177 (IDLE),
//! RFC 5161 (ENABLE), RFC 2971 (ID), RFC 2342 (NAMESPACE), RFC 6154 (SPECIAL-USE), RFC 8438
//! (STATUS=SIZE), RFC 7889 (APPENDLIMIT), RFC 4959 (SASL-IR), RFC 4616 (PLAIN), RFC 4731
//! (ESEARCH), RFC 9208 (QUOTA, one root `""` over all folders), RFC 6855 (UTF8=ACCEPT;
//! before it, mailbox names are modified UTF-7, [`utf7`]), RFC 3516 (BINARY), RFC 5258
//! (LIST-EXTENDED) and RFC 5819 (LIST-STATUS).
#![forbid(unsafe_code)]

pub mod frame;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;
pub mod reply;
pub(crate) mod search;
pub mod session;
pub mod store;
pub mod structure;
#[cfg(test)]
mod tests;
pub mod utf7;

pub use frame::Limits;
pub use session::{
    CloseReason, Credentials, Event, Greeting, LoginRefused, Outbox, Session, SessionConfig,
    Unexpected,
};
