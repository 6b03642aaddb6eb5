//! `[smime]`: checks of S/MIME-signed arriving mail (RFC 8551 signatures, RFC 7281 results).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::SectionError;

/// `[smime]`: S/MIME signatures of mail for local users are checked and the result written
/// into our `Authentication-Results` field (`smime=`). A signature never refuses mail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmimeSection {
    /// Check S/MIME signatures of mail for local users.
    pub verify: bool,
    /// Extra trust anchors (PEM certificates) for signers' chains, added to the web PKI
    /// roots (`webpki-roots`): an organisation's own CA. Relative to the config file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

impl Default for SmimeSection {
    fn default() -> Self {
        SmimeSection {
            verify: true,
            ca_file: None,
        }
    }
}

impl SmimeSection {
    pub fn check(&self) -> Result<(), SectionError> {
        if self
            .ca_file
            .as_ref()
            .is_some_and(|file| file.as_os_str().is_empty())
        {
            return Err(super::invalid("smime.ca_file", "must not be empty"));
        }
        Ok(())
    }
}
