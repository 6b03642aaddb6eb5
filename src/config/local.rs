//! `[local]`: the domains whose mail ends here, their users and aliases.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{defaults, invalid, valid_domain, ByteSize, SectionError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalSection {
    /// Domains whose mail ends here (lower-cased at load).
    pub domains: Vec<String>,
    /// Mailbox owners; more can come from `users_file`.
    pub users: Vec<UserEntry>,
    /// A file of users, one per line: `name $argon2id$… [quota=1GiB] [apop=secret]`
    /// (what `relay user add` prints). Relative paths are relative to the config file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub users_file: Option<PathBuf>,
    /// `"list@domain" = ["alice", "bob@example.test", "someone@remote.test"]`.
    pub aliases: std::collections::BTreeMap<String, Vec<String>>,
}

impl Default for LocalSection {
    fn default() -> Self {
        LocalSection {
            domains: defaults::local_domains(),
            users: Vec::new(),
            users_file: None,
            aliases: std::collections::BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserEntry {
    pub name: String,
    /// argon2id PHC string (`relay user add` makes one); never a plaintext password.
    pub password: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<ByteSize>,
    /// Shared secret for APOP (RFC 1939 §7); APOP is offered only when a user has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apop_secret: Option<String>,
    /// The `[cluster]` node that holds this user's mailboxes (absent: this node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home: Option<String>,
}

impl LocalSection {
    /// Checks every domain, and that every alias has a target.
    pub fn check(&self) -> Result<(), SectionError> {
        for domain in &self.domains {
            if !valid_domain(domain) {
                return Err(invalid(
                    "local.domains",
                    format!("`{domain}` is not a valid domain"),
                ));
            }
        }
        // An alias that expands to nothing would accept mail (250) that no mailbox holds and
        // no delivery ends: it would stay in the spool forever.
        if let Some((alias, _)) = self.aliases.iter().find(|(_, targets)| targets.is_empty()) {
            return Err(invalid(
                "local.aliases",
                format!(
                    "alias `{alias}` has no targets: its mail would be accepted and kept forever; \
                     give it at least one target or remove it"
                ),
            ));
        }
        Ok(())
    }

    /// Domains compare lower-case, without the root's trailing dot.
    pub(super) fn normalize(&mut self) {
        for domain in &mut self.domains {
            *domain = domain.trim_end_matches('.').to_ascii_lowercase();
        }
    }
}
