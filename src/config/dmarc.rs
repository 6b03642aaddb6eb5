//! `[dmarc]`: the aggregate reports we send to domains that ask for them.

use serde::{Deserialize, Serialize};

use super::SectionError;

/// `[dmarc]`: aggregate reports (RFC 7489 §7.2), off by default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct DmarcSection {}

impl DmarcSection {
    pub fn check(&self) -> Result<(), SectionError> {
        Ok(())
    }
}
