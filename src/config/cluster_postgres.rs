//! `[cluster.postgres]`: the PostgreSQL database holding the cluster's directory (users,
//! password hashes, aliases, quotas, keys, home nodes).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{invalid, SectionError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresSection {
    /// A libpq-style connection string without a password, e.g.
    /// `host=127.0.0.1 port=5432 user=relay dbname=relay`. Absent: the directory is `[local]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conninfo: Option<String>,
    /// A 0600 file holding the password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
}

impl PostgresSection {
    pub fn check(&self) -> Result<(), SectionError> {
        if let Some(conninfo) = &self.conninfo {
            if conninfo
                .split_whitespace()
                .any(|kv| kv.to_ascii_lowercase().starts_with("password="))
                || conninfo.contains("://")
            {
                return Err(invalid(
                    "cluster.postgres.conninfo",
                    "write `key=value` pairs without a password: put it in cluster.postgres.password_file",
                ));
            }
        }
        Ok(())
    }
}
