//! `[policy]`: the content policy applied at the end of DATA.

use serde::{Deserialize, Serialize};

use super::{invalid, SectionError};

/// Content policy applied at the end of DATA (violations get 554 5.7.1, nothing queued).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicySection {
    /// MIME entities per message, the message itself included.
    pub max_parts: usize,
    /// Nesting levels of multiparts and enclosed messages.
    pub max_nesting: usize,
    /// Attachment file extensions refused, e.g. `["exe", "scr", "js"]` (opt-in).
    pub blocked_extensions: Vec<String>,
    /// Media types refused, `type/subtype` or `type/*` (opt-in).
    pub blocked_types: Vec<String>,
}

impl Default for PolicySection {
    fn default() -> Self {
        let policy = crate::mime::Policy::default();
        PolicySection {
            max_parts: policy.max_parts,
            max_nesting: policy.max_nesting,
            blocked_extensions: Vec::new(),
            blocked_types: Vec::new(),
        }
    }
}

impl PolicySection {
    /// Checks each value and the relations between them.
    pub fn check(&self) -> Result<(), SectionError> {
        if self.max_parts == 0 || self.max_nesting == 0 {
            return Err(invalid(
                "policy.max_parts",
                "max_parts and max_nesting must be at least 1",
            ));
        }
        if let Some(bad) = self.blocked_types.iter().find(|t| !t.contains('/')) {
            return Err(invalid(
                "policy.blocked_types",
                format!("`{bad}` is not a media type (write `type/subtype` or `type/*`)"),
            ));
        }
        if let Some(bad) = self
            .blocked_extensions
            .iter()
            .find(|e| e.trim_start_matches('.').is_empty() || e.contains('/') || !e.is_ascii())
        {
            return Err(invalid(
                "policy.blocked_extensions",
                format!("`{bad}` is not a file extension"),
            ));
        }
        Ok(())
    }

    /// The content policy as the MIME checker takes it.
    pub fn mime_policy(&self) -> crate::mime::Policy {
        crate::mime::Policy {
            max_parts: self.max_parts,
            max_nesting: self.max_nesting,
            blocked_extensions: self.blocked_extensions.clone(),
            blocked_types: self.blocked_types.clone(),
        }
    }
}
