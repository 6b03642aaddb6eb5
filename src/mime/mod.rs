//! The MIME engine: a zero-copy structure parser, the Base64 and quoted-printable codecs, the
//! 8BITMIME down-conversion and the end-of-DATA content policy.
//!
//! **Role.** Tell the relay what a message is made of without copying it: [`parse`] turns the
//! spooled body bytes into a [`Message`], a tree of [`Part`]s that are byte ranges into the
//! original buffer. Header values, parameters and bodies are borrowed slices; only display
//! text (RFC 2047/2231 decoding) and decoded bodies allocate, and only when asked for. The
//! relay uses it twice: [`policy::Policy::check`] at end of DATA, and
//! [`downgrade::downgrade`] when a next hop lacks 8BITMIME. Like `smtp`, it is sans-IO and
//! synchronous (docs/ARCHITECTURE.md §10).
//!
//! **Exposure.** Every byte here comes from unauthenticated peers (the message body and
//! headers a client sent). Nothing may panic, loop or allocate without bound on any input:
//! the parser is iterative (no recursion, so no stack depth to attack), each multipart body is
//! scanned once per nesting level (so the work is at most `max_depth` passes over the
//! message), and the part list, header fields and nesting stop at [`Limits`]. Breaking a
//! limit is a typed [`LimitExceeded`], which the policy turns into a `554 5.7.1` reason.
//! Malformed-but-survivable input (missing close boundary, bad Content-Type, stray base64
//! bytes) is parsed the way RFC 2045/2046 tell a reader to, and noted as a [`Defect`].
//!
//! **Standards.** RFC 5322 §2.2 (header fields, folding), RFC 2045 (MIME headers,
//! Content-Type §5, Content-Transfer-Encoding §6, quoted-printable §6.7, base64 §6.8),
//! RFC 2046 §5.1 (multipart: boundaries, preamble, epilogue, transport padding, digest
//! default type), §5.2 (message/rfc822), RFC 2047 (encoded words), RFC 2231 (parameter
//! continuations, charset and language), RFC 2183 (Content-Disposition), RFC 6152 (8BITMIME),
//! RFC 6532 (message/global is parsed like message/rfc822).
//!
//! **Limits** (defaults in [`Limits::default`], each with its reason): nesting 32 levels,
//! 10,000 parts, 100 KiB and 1,000 fields per header block, 80,000 fields in all
//! ([`Limits::total_header_fields`]). Boundaries longer than
//! [`header::BOUNDARY_MAX`] octets are not boundaries (RFC 2046 allows 70).
//!
//! **Tolerance.** Line ends may be CRLF (what SMTP delivers) or LF alone (stored or foreign
//! text); the boundary scanner looks for `LF--boundary` and folds a preceding CR into the
//! delimiter, so one pass serves both.
//!
//! Modules: [`header`] (fields, Content-Type and its parameters, CTE, disposition),
//! [`encoded_word`] (RFC 2047 and charsets), [`boundary`] (the multipart splitter),
//! [`tree`] (the parser and the part tree), [`lines`] (line counts), [`base64`], [`qp`], [`downgrade`], [`policy`],
//! `fuzz` (with the `fuzzing` feature: the fuzz targets as plain functions, also run by
//! unit tests).
//!
//! [`downgrade`]: mod@downgrade
#![forbid(unsafe_code)]

pub mod base64;
pub mod boundary;
pub mod downgrade;
pub mod encoded_word;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;
pub mod header;
pub mod lines;
pub mod policy;
pub mod qp;
pub mod tree;

pub use downgrade::{downgrade, DowngradeError};
pub use header::{ContentType, Disposition, Field, TransferEncoding};
pub use policy::{MessageStats, Policy, PolicyViolation};
pub use tree::{parse, DecodeError, Defect, Message, Part, PartKind};

/// The bounds of one parse. Every one of them is a defence against a message built to make
/// the parser work or allocate too much.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Nesting levels below the top-level message (each multipart or message/rfc822 adds
    /// one). Each level is one more scan of the bytes it spans, so this bounds the parse work.
    pub max_depth: usize,
    /// Entities in the tree, the top-level message and containers included.
    pub max_parts: usize,
    /// Octets of one header block (the top-level header or one part's).
    pub max_header_bytes: usize,
    /// Fields in one header block.
    pub max_header_fields: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // Real mail nests 3–6 deep (a forwarded message with an alternative and related
            // parts); 32 is generous and keeps the worst case at 32 scans of the message.
            max_depth: 32,
            // Mailing-list digests reach a few hundred parts; beyond 10,000 a message is a
            // parser attack (100,000 tiny parts fit in a few megabytes).
            max_parts: 10_000,
            // Postfix's header_size_limit (102400): a header larger than this is a bomb.
            max_header_bytes: 100 * 1024,
            // RFC 5322 sets no count; 1,000 fields is above any real trace of Received lines.
            max_header_fields: 1_000,
        }
    }
}

/// A limit the message broke. It is a policy result (the message is refused), never a crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LimitExceeded {
    #[error("MIME nesting deeper than {limit} levels")]
    Depth { limit: usize },
    #[error("more than {limit} MIME parts")]
    Parts { limit: usize },
    #[error("header block larger than {limit} octets")]
    HeaderBytes { limit: usize },
    #[error("more than {limit} header fields in one block")]
    HeaderFields { limit: usize },
    #[error("more than {limit} header fields in the message")]
    TotalHeaderFields { limit: usize },
}

impl Limits {
    /// Header fields in the whole message: eight per part on average, and never fewer than
    /// one full block. Real parts carry 2–5 fields; the cap keeps the field arena (48 octets
    /// a field) proportional to the parts allowed instead of to the input size.
    pub fn total_header_fields(&self) -> usize {
        self.max_header_fields.max(self.max_parts.saturating_mul(8))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn defaults_are_sane() {
        let l = super::Limits::default();
        assert!(l.max_depth >= 8 && l.max_parts >= 100);
        assert!(l.max_header_bytes >= 998 && l.max_header_fields >= 100);
    }
}
