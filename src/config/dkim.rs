//! `[dkim]`: the keys that sign our outbound mail.

use serde::{Deserialize, Serialize};

use super::SectionError;

/// `[dkim]`: signing keys (`[[dkim.sign]]`), none by default (nothing is signed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct DkimSection {}

impl DkimSection {
    pub fn check(&self) -> Result<(), SectionError> {
        Ok(())
    }
}
