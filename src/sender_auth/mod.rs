//! Sender authentication: DKIM signing of our own outbound mail (RFC 6376, RFC 8463), and
//! the checks of mail arriving from elsewhere (SPF RFC 7208, DKIM, DMARC RFC 7489, ARC
//! verification) summarised in one `Authentication-Results` header (RFC 8601), with DMARC
//! aggregate reports (RFC 7489 §7).
//!
//! Role: the cryptography, record parsing and evaluation are `mail-auth`'s, except DMARC's
//! discovery, alignment and policy ([`dmarc`], RFC 7489 rather than mail-auth's DMARCbis);
//! this module holds what is ours: which keys sign what, the policy that turns results into a reply,
//! the header we write and the ones we remove, and the bounded report store.
//!
//! Exposure: message headers and DNS answers are remote data; keys are local secrets (0600
//! files, never logged).
#![forbid(unsafe_code)]

pub mod authres;
pub mod body_hash;
pub mod cache;
pub mod dmarc;
pub mod junk_mark;
pub mod keys;
pub mod message;
pub mod policy;
pub mod report;
pub mod sign;
pub mod spf;
pub mod verify;
