//! `[[relay.routes]]`: where mail for a domain goes next, as the operator writes it. The
//! entries compile into `queue::Routes` (which explains matching, precedence and TLS); a
//! domain no entry matches goes to its MX hosts.
//!
//! ```toml
//! [[relay.routes]]
//! domain = "example.com"            # exactly this domain
//! to = "mx"                         # look up its MX records (the default for unmatched domains)
//!
//! [[relay.routes]]
//! domain = "*.corp.example"         # any subdomain of corp.example, not corp.example itself
//! to = "[2001:db8::25]:2525"        # IPv6 literal in brackets, then the port
//! tls = "required"
//!
//! [[relay.routes]]
//! domain = "corp.example"
//! to = "192.0.2.25"                 # port 25 when omitted
//!
//! [[relay.routes]]
//! domain = "*"                      # everything else: a smarthost
//! to = "smarthost.example.net:587"
//! tls = "opportunistic"             # the default; or "required", "off"
//! ```
//!

use serde::{Deserialize, Serialize};

use crate::queue::{RouteError, RouteSpec, Routes, TlsMode};

/// One `[[relay.routes]]` entry as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteEntry {
    /// `example.com`, `*.example.com` or `*`.
    pub domain: String,
    /// `mx`, or `host`, `host:port`, `192.0.2.1:25`, `[2001:db8::1]:25`.
    pub to: String,
    #[serde(default)]
    pub tls: TlsMode,
}

/// The `[[relay.routes]]` array (`routes` in `[relay]`), in file order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct RoutesSection(pub Vec<RouteEntry>);

impl RoutesSection {
    /// Compiles and checks every entry; the first bad one is the error.
    pub fn compile(&self) -> Result<Routes, RouteError> {
        let specs: Vec<RouteSpec<'_>> = self
            .0
            .iter()
            .map(|entry| RouteSpec {
                domain: &entry.domain,
                to: &entry.to,
                tls: entry.tls,
            })
            .collect();
        Routes::compile(&specs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::routes::{HopAddr, Host};
    use crate::queue::NextHop;
    use std::sync::Arc;

    fn hop(host: Host, port: u16) -> NextHop {
        NextHop::Static(Arc::new(HopAddr { host, port }))
    }

    fn name(n: &str) -> Host {
        Host::Name(n.into())
    }

    #[derive(Deserialize, Serialize, Debug, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Relay {
        #[serde(default)]
        routes: RoutesSection,
    }

    #[derive(Deserialize, Serialize, Debug, PartialEq)]
    struct File {
        relay: Relay,
    }

    /// The TOML of the module doc (`routes` in `[relay]`).
    const DOC_TOML: &str = r#"
[[relay.routes]]
domain = "example.com"
to = "mx"

[[relay.routes]]
domain = "*.corp.example"
to = "[2001:db8::25]:2525"
tls = "required"

[[relay.routes]]
domain = "corp.example"
to = "192.0.2.25"

[[relay.routes]]
domain = "*"
to = "smarthost.example.net:587"
tls = "opportunistic"
"#;

    #[test]
    fn the_documented_toml_parses_and_routes() {
        let file: File = toml::from_str(DOC_TOML).unwrap();
        assert_eq!(file.relay.routes.0.len(), 4);
        assert_eq!(file.relay.routes.0[1].tls, TlsMode::Required);
        assert_eq!(file.relay.routes.0[0].tls, TlsMode::Opportunistic);
        let routes = file.relay.routes.compile().unwrap();
        assert_eq!(routes.route("example.com").hop, NextHop::Mx);
        let r = routes.route("mail.corp.example");
        assert_eq!(r.tls, TlsMode::Required);
        assert_eq!(r.hop, hop(Host::Ip("2001:db8::25".parse().unwrap()), 2525));
        assert_eq!(
            routes.route("corp.example").hop,
            hop(Host::Ip("192.0.2.25".parse().unwrap()), 25)
        );
        assert_eq!(
            routes.route("gmail.com").hop,
            hop(name("smarthost.example.net"), 587)
        );
        // Round trip through serialization.
        let text = toml::to_string(&file).unwrap();
        assert_eq!(toml::from_str::<File>(&text).unwrap(), file);
    }

    #[test]
    fn unknown_keys_and_tls_values_are_errors() {
        let bad_key = "[[relay.routes]]\ndomain = \"a.test\"\nto = \"mx\"\nport = 25\n";
        let err = toml::from_str::<File>(bad_key).unwrap_err().to_string();
        assert!(err.contains("port"), "{err}");
        let bad_tls = "[[relay.routes]]\ndomain = \"a.test\"\nto = \"mx\"\ntls = \"maybe\"\n";
        let err = toml::from_str::<File>(bad_tls).unwrap_err().to_string();
        assert!(err.contains("maybe"), "{err}");
        let empty: File = toml::from_str("[relay]\n").unwrap();
        assert!(empty.relay.routes.0.is_empty());
    }
}
