//! `[relay]`: who may relay to any domain, and where mail for a domain goes next.

use serde::{Deserialize, Serialize};

use super::{defaults, invalid, RoutesSection, SectionError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelaySection {
    /// Clients (CIDR) that may send to any domain; everyone else only to `local.domains`.
    pub allowed_networks: Vec<ipnet::IpNet>,
    /// `[[relay.routes]]`: where mail for a domain goes next (`routes.rs`); a domain no
    /// route matches goes to its MX hosts.
    pub routes: RoutesSection,
}

impl Default for RelaySection {
    fn default() -> Self {
        RelaySection {
            allowed_networks: defaults::relay_allowed_networks(),
            routes: RoutesSection::default(),
        }
    }
}

impl RelaySection {
    /// Checks that every route compiles.
    pub fn check(&self) -> Result<(), SectionError> {
        if let Err(error) = self.routes.compile() {
            return Err(invalid("relay.routes", error.to_string()));
        }
        Ok(())
    }
}
