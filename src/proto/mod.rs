//! What the line protocols share: the bounded command-line framer ([`line`](mod@line)) and
//! SASL PLAIN with its strict base64 ([`sasl`]). SMTP and POP3 import these; neither imports
//! the other.
#![forbid(unsafe_code)]

pub mod line;
pub mod sasl;
