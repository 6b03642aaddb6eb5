//! `[encryption]`: users' public keys and the encryption of their stored mail.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{invalid, SectionError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EncryptionSection {
    /// Where users' public keys and their encryption choice are kept (one file each, written
    /// by `relay user key` and the web mail's settings page). Default: `keys` in the spool
    /// directory, so a backup of the spool carries them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keys_dir: Option<PathBuf>,
    /// Whether mail for a user with a key is encrypted when the user has not chosen. On:
    /// registering a key for one's own mailbox here is the opt-in.
    pub default: bool,
    /// Users cannot turn encryption off: mail for every user with a key is encrypted.
    pub required: bool,
}

impl Default for EncryptionSection {
    fn default() -> Self {
        EncryptionSection {
            keys_dir: None,
            default: true,
            required: false,
        }
    }
}

impl EncryptionSection {
    /// The keys directory for a spool in `spool_dir`.
    pub fn keys_dir(&self, spool_dir: &Path) -> PathBuf {
        self.keys_dir
            .clone()
            .unwrap_or_else(|| spool_dir.join("keys"))
    }

    pub fn check(&self) -> Result<(), SectionError> {
        if self
            .keys_dir
            .as_ref()
            .is_some_and(|dir| dir.as_os_str().is_empty())
        {
            return Err(invalid("encryption.keys_dir", "must not be empty"));
        }
        if self.required && !self.default {
            return Err(invalid(
                "encryption.default",
                "`required = true` encrypts for every user with a key; `default = false` contradicts it",
            ));
        }
        Ok(())
    }
}
