//! Local mailboxes: who they are (users, aliases, lists), how their owners log in, and the
//! per-mailbox views over the spool that POP3 serves.
//!
//! Role: the seed document's receiving side. A mailbox is not a separate store: it is an
//! index over message records in the spool; only its owner can open it.
//!
//! Exposure: addresses and credentials from network peers; users and aliases from the
//! operator's config. Passwords exist here only as argon2id hashes.
//!
//! Standards: RFC 5321 §4.5.1 (postmaster), RFC 1939 §7 (APOP), RFC 9106 (argon2).
#![forbid(unsafe_code)]

pub mod directory;
pub mod local;
pub mod password;
pub mod store;

pub use directory::{Directory, DirectoryError, Resolution, User};
pub use local::LocalDelivery;
pub use store::{Entry, InUse, MailStore, MaildropLock};
