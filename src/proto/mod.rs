//! What the line protocols share: the bounded command-line framer ([`line`]) and SASL PLAIN
//! with its strict base64 ([`sasl`]). SMTP, POP3 (and IMAP) import these; none imports another.
#![forbid(unsafe_code)]

pub mod line;
pub mod sasl;
