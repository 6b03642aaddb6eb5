//! What the line protocols share: the bounded command-line framer ([`line`](mod@line)),
//! SASL PLAIN with its strict base64 ([`sasl`]) and numbers written without `fmt`
//! ([`decimal`]). SMTP, POP3 and IMAP import these; none imports another.
#![forbid(unsafe_code)]

pub mod decimal;
pub mod line;
pub mod sasl;
