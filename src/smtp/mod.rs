//! The SMTP protocol core: server session now, outbound client later.
//!
//! **Role.** Turn the bytes a network peer sends into replies and typed events (store this
//! message, log this rejection, close), and nothing else. It is sans-IO and synchronous
//! (DESIGN.md §3.1): no sockets, no async, no clock reads; the connection driver in `net/`
//! moves the bytes and passes `now` in. Tests therefore drive it with byte slices split at
//! every possible offset.
//!
//! **Exposure.** Everything here parses untrusted bytes from unauthenticated network peers,
//! at the relay's privilege. Nothing may panic on any input, and nothing grows without a
//! bound: command lines stop at `command_line_max`, bodies at `message_size_max` (the rest is
//! counted and discarded), recipients at `recipients_max`, errors at `errors_max`. Peer text
//! that reaches a reply or a header is sanitised where it is written (`reply`, `received`).
//!
//! **Standards.** RFC 5321 (SMTP), RFC 3463 and RFC 2034 (enhanced status codes), RFC 2920
//! (PIPELINING), RFC 1870 (SIZE), RFC 6152 (8BITMIME), RFC 3030 (CHUNKING, BINARYMIME),
//! RFC 6531 (SMTPUTF8), RFC 3461 (DSN parameters), RFC 3848 (Received "with" keywords),
//! RFC 5322 (date-time in Received). SMTP smuggling defence: only CRLF.CRLF ends DATA, and
//! bare CR or LF anywhere in message data refuses the message (RFC 5321 §2.3.8).
//!
//! **Limits** (defaults in [`SessionConfig`]): command line 512 octets, text line 1000 octets
//! (both including CRLF), 100 recipients, 25 MiB per message, 20 errors per session; paths
//! 256 octets, local parts 64, domains 255; ENVID 100, ORCPT 500.
//!
//! Modules: [`reply`] (every reply code and text), [`command`] (the `Command` type shared with
//! the client and loadgen), [`address`] and [`params`] (MAIL/RCPT arguments), [`line`] (the
//! command-line framer), [`data`] (the DATA/BDAT receiver), [`received`] (the trace header),
//! [`session`] (the state machine).
#![forbid(unsafe_code)]

pub mod address;
pub mod client;
pub mod command;
pub mod data;
pub mod fuzz;
pub mod line;
pub mod params;
pub mod received;
pub mod recipients;
pub mod reply;
pub mod session;

pub use address::{AddressError, ForwardPath, Mailbox, ReversePath};
pub use command::{encode, parse, Command, CommandSpec, MailKind, ParseError, Verb, COMMANDS};
pub use data::{BodyError, BodyLimits, BodyReceiver};
pub use params::{ParamError, RcptParams};
pub use recipients::{LocalRecipients, Lookup, Mailboxes};
pub use reply::{EnhancedStatus, Extension, Reply, ReplyCode};
pub use session::{
    CloseReason, Event, Outbox, Session, SessionConfig, SessionConfigError, Submission,
    SubmitError, TransactionSummary,
};

#[cfg(test)]
mod tidy {
    //! Mechanical style checks for this module (DESIGN.md §3.4, §3.5; model-codebases §15).

    /// Every source file of the module, without its `#[cfg(test)]` part.
    const SOURCES: [(&str, &str); 11] = [
        ("address.rs", include_str!("address.rs")),
        ("client.rs", include_str!("client.rs")),
        ("client/harness.rs", include_str!("client/harness.rs")),
        ("command.rs", include_str!("command.rs")),
        ("data.rs", include_str!("data.rs")),
        ("line.rs", include_str!("line.rs")),
        ("mod.rs", include_str!("mod.rs")),
        ("params.rs", include_str!("params.rs")),
        ("received.rs", include_str!("received.rs")),
        ("reply.rs", include_str!("reply.rs")),
        ("session.rs", include_str!("session.rs")),
    ];

    fn production(source: &str) -> &str {
        source.split("#[cfg(test)]").next().unwrap_or(source)
    }

    /// `"250 `, `"554-` ...: a reply written by hand instead of by `reply.rs`.
    fn has_reply_literal(code: &str) -> bool {
        let bytes = code.as_bytes();
        bytes.windows(5).any(|w| {
            w[0] == b'"'
                && (b'2'..=b'5').contains(&w[1])
                && w[2].is_ascii_digit()
                && w[3].is_ascii_digit()
                && (w[4] == b' ' || w[4] == b'-')
        })
    }

    #[test]
    fn replies_are_written_only_in_reply_rs() {
        for (name, source) in SOURCES {
            if name != "reply.rs" {
                assert!(
                    !has_reply_literal(production(source)),
                    "{name}: reply literal outside reply.rs; add a constructor to reply.rs"
                );
            }
        }
        assert!(has_reply_literal("x = \"250 ok\""));
    }

    #[test]
    fn no_unwrap_or_expect_outside_tests() {
        for (name, source) in SOURCES {
            let code = production(source);
            for banned in [".unwrap()", ".expect("] {
                assert!(
                    !code.contains(banned),
                    "{name}: {banned} outside tests; peer input must never panic (return an error)"
                );
            }
        }
    }

    #[test]
    fn unsafe_is_forbidden() {
        assert!(production(SOURCES[6].1).contains("#![forbid(unsafe_code)]"));
    }
}
