//! Local mailboxes: who they are (users, aliases, lists), how their owners log in, and the
//! per-mailbox views over the spool that POP3 serves.
//!
//! Role: the relay's receiving side. A mailbox is not a separate store: it is an
//! index over message records in the spool; only its owner can open it.
//!
//! Exposure: addresses and credentials from network peers; users and aliases from the
//! operator's config. Passwords exist here only as argon2id hashes.
//!
//! Standards: RFC 5321 §4.5.1 (postmaster), RFC 1939 §7 (APOP), RFC 9106 (argon2).
#![forbid(unsafe_code)]

pub mod directory;
pub mod keys;
pub mod local;
pub mod password;
pub mod sealing;
pub mod store;
pub mod users_file;

pub use directory::{Directory, DirectoryError, Resolution, SharedDirectory, User};
pub use keys::{KeyBackend, KeyStore, KeyStoreError, Slot, UserKeys};
pub use local::{home_elsewhere, Homes, LocalDelivery};
pub use store::{ChangeError, Filing, InUse, MailStore, MaildropItem, MaildropLock};

use std::sync::Arc;

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read users file {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("users file {path}: {source}")]
    UsersFile {
        path: std::path::PathBuf,
        source: users_file::UsersFileError,
    },
    #[error(transparent)]
    Directory(#[from] DirectoryError),
}

/// What a directory is built from: the local domains, the users and the aliases (the
/// file directory's, or those merged with the cluster's PostgreSQL directory).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DirectoryEntries {
    pub domains: Vec<String>,
    pub users: Vec<User>,
    pub aliases: std::collections::BTreeMap<String, Vec<String>>,
}

impl DirectoryEntries {
    pub fn build(&self) -> Result<Directory, DirectoryError> {
        Directory::new(self.domains.clone(), self.users.clone(), &self.aliases)
    }
}

/// The file directory's entries from `[local]`: inline users, the users file, aliases.
pub fn file_entries(config: &Config) -> Result<DirectoryEntries, LoadError> {
    let mut users: Vec<User> = config
        .local
        .users
        .iter()
        .map(|u| User {
            name: u.name.clone(),
            password: u.password.clone(),
            quota: u.quota.map(|q| q.0),
            apop_secret: u.apop_secret.clone(),
            home: u.home.clone(),
        })
        .collect();
    if let Some(path) = &config.local.users_file {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            path: path.clone(),
            source,
        })?;
        users.extend(
            users_file::parse(&text).map_err(|source| LoadError::UsersFile {
                path: path.clone(),
                source,
            })?,
        );
    }
    Ok(DirectoryEntries {
        domains: config.local.domains.clone(),
        users,
        aliases: config.local.aliases.clone(),
    })
}

/// Builds the file directory from `[local]`: inline users, the users file, aliases.
pub fn load_directory(config: &Config) -> Result<Arc<Directory>, LoadError> {
    Ok(Arc::new(file_entries(config)?.build()?))
}
