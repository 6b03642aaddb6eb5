//! Routing: which next hop a recipient domain's mail goes to.
//!
//! **Role.** Compile the operator's `[[relay.routes]]` entries once, at config load, into a
//! [`Routes`] table; answer [`Routes::route`] for each recipient domain with a [`Route`]: a
//! static next hop (a smarthost; its addresses are looked up, never its MX) or `mx` (RFC 5321
//! §5.1 via DNS, see `resolve`). A domain no entry matches goes by `mx`.
//!
//! **Config.** The entries come from `[[relay.routes]]` (`config::routes`, where the TOML is
//! shown) as [`RouteSpec`]s.
//!
//! **Precedence: most specific wins, not file order.** An exact domain beats any `*.suffix`,
//! a longer suffix beats a shorter one, and `*` is the last resort; two entries with the same
//! pattern are a config error. This is the lookup order of Postfix's transport(5) tables
//! (domain, then parent domains, then `*`), which operators already know; and it makes the
//! table order-independent, so inserting an entry in the wrong place, or sorting the file,
//! can never silently reroute another domain's mail. File order would let an early `*` hide
//! every entry after it. The cost is a lookup of one hash probe per label of the domain.
//!
//! **Matching.** Domains compare case-insensitively (ASCII), a trailing dot is ignored.
//! `*.example.com` matches `a.example.com` and `a.b.example.com`, not `example.com` (write
//! both entries to route both, as in Postfix with `parent_domain_matches_subdomains` off).
//! Patterns must be ASCII (write internationalized domains as A-labels, `xn--…`): a U-label
//! recipient domain (SMTPUTF8) matches only `*`, since IDNA conversion is not done here.
//! An address-literal domain (`[192.0.2.1]`) matches only `*`.
//!
//! **TLS.** `tls` is acted on by delivery (`delivery::worker`, `smtp::client`):
//! `opportunistic` sends STARTTLS when the next hop offers it, accepts any certificate
//! (RFC 7435), and after a failed handshake delivers in plaintext (and skips STARTTLS to
//! that destination for `delivery.tls_failure_hold`); `required` verifies the certificate
//! (webpki roots plus `tls.ca_file`) against the next hop's host name, or its address for
//! an IP literal, and defers (4.7.4/4.7.5) when STARTTLS is missing, refused or fails;
//! `off` never sends STARTTLS. For an `mx` route the MX host name is checked.
//!
//! **Cluster nodes.** [`Route::node`] is the next hop for a local user homed on another
//! node: that node's cluster listener, `tls` = [`TlsMode::Cluster`] (mutual TLS, never
//! configurable in `[[relay.routes]]`). Its destination is keyed like any static hop, so
//! retries, throttles and DSNs are the relay's usual ones.
//!
//! **Exposure.** Patterns and hops are the operator's; the domain looked up comes from a
//! peer's RCPT TO (already syntax-checked by the session) and is only compared, never parsed
//! into anything else.
//!
//! **Limits.** At most [`ROUTES_MAX`] entries; patterns and host names at most 253 octets
//! (RFC 1035 §2.3.4) with labels of 1–63.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Route entries at most: far above any hand-written table, small enough to load instantly.
pub const ROUTES_MAX: usize = 10_000;
/// RFC 1035 §2.3.4: a name's text form is at most 253 octets, a label at most 63.
pub const NAME_MAX: usize = 253;
pub const LABEL_MAX: usize = 63;
/// The SMTP port (RFC 5321 §4.5.4.2 cites IANA port 25) for a `to` without one.
pub const DEFAULT_PORT: u16 = 25;

/// What `tls` says for a route (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// STARTTLS when the next hop offers it, plaintext otherwise (RFC 3207 as widely used).
    #[default]
    Opportunistic,
    /// STARTTLS or no delivery (defer).
    Required,
    /// Never STARTTLS (a next hop with broken TLS).
    Off,
    /// A cluster peer's listener: TLS from the first byte with this node's certificate,
    /// the peer's checked against the cluster CA alone. Set only by [`Route::node`], never
    /// written in a config.
    #[serde(skip)]
    Cluster,
}

/// One route entry as the operator wrote it: the pattern, the next hop and the TLS mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteSpec<'a> {
    /// `example.com`, `*.example.com` or `*`.
    pub domain: &'a str,
    /// `mx`, or `host`, `host:port`, `192.0.2.1:25`, `[2001:db8::1]:25`.
    pub to: &'a str,
    pub tls: TlsMode,
}

/// A host to connect to: an address, or a name whose A/AAAA records are looked up.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    Ip(IpAddr),
    /// Lower-case, no trailing dot.
    Name(String),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}"),
            Host::Name(name) => f.write_str(name),
        }
    }
}

/// A static next hop.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HopAddr {
    pub host: Host,
    pub port: u16,
}

impl fmt::Display for HopAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Where mail goes next.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NextHop {
    /// The recipient domain's MX hosts (RFC 5321 §5.1).
    Mx,
    /// A fixed host and port; shared (`Arc`) so a lookup costs no allocation.
    Static(Arc<HopAddr>),
}

/// The answer of [`Routes::route`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Route {
    pub hop: NextHop,
    pub tls: TlsMode,
    /// The index of the matching entry in the config, `None` for the implicit `mx` default
    /// (for logs and `relay queue show`).
    pub rule: Option<usize>,
}

impl Route {
    /// The route of a domain no entry matches.
    pub const DEFAULT: Route = Route {
        hop: NextHop::Mx,
        tls: TlsMode::Opportunistic,
        rule: None,
    };

    /// Next hop = a cluster node: its cluster listener's address (from the node table), over
    /// mutual TLS. Used for local users homed on another node (the directory's `home`), so
    /// it is decided per recipient, not by the domain table.
    pub fn node(cluster: std::net::SocketAddr) -> Route {
        Route {
            hop: NextHop::Static(Arc::new(HopAddr {
                host: Host::Ip(cluster.ip()),
                port: cluster.port(),
            })),
            tls: TlsMode::Cluster,
            rule: None,
        }
    }
}

/// A domain pattern, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    Exact(String),
    /// `*.suffix`: holds `suffix`.
    Subdomains(String),
    Any,
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Exact(d) => f.write_str(d),
            Pattern::Subdomains(d) => write!(f, "*.{d}"),
            Pattern::Any => f.write_str("*"),
        }
    }
}

/// A route entry that does not compile. `index` is the entry's position (0-based) in
/// `[[relay.routes]]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("more than {ROUTES_MAX} routes")]
    TooMany,
    #[error("route {index}: `domain = {pattern:?}`: {reason}")]
    BadPattern {
        index: usize,
        pattern: String,
        reason: String,
    },
    #[error("route {index}: `to = {to:?}`: {reason}")]
    BadNextHop {
        index: usize,
        to: String,
        reason: String,
    },
    #[error("route {index}: `domain = {pattern:?}` repeats route {first} (order does not matter, so one must go)")]
    Duplicate {
        index: usize,
        first: usize,
        pattern: String,
    },
}

/// The compiled route table.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    exact: HashMap<String, Route>,
    subdomains: HashMap<String, Route>,
    any: Option<Route>,
    patterns: Vec<Pattern>,
}

impl Routes {
    /// Compiles and checks every entry; the first bad one is the error.
    pub fn compile(entries: &[RouteSpec<'_>]) -> Result<Routes, RouteError> {
        if entries.len() > ROUTES_MAX {
            return Err(RouteError::TooMany);
        }
        let mut routes = Routes::default();
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (index, entry) in entries.iter().enumerate() {
            let pattern = parse_pattern(entry.domain).map_err(|reason| RouteError::BadPattern {
                index,
                pattern: entry.domain.to_string(),
                reason,
            })?;
            let hop = parse_next_hop(entry.to).map_err(|reason| RouteError::BadNextHop {
                index,
                to: entry.to.to_string(),
                reason,
            })?;
            let canonical = pattern.to_string();
            if let Some(&first) = seen.get(&canonical) {
                return Err(RouteError::Duplicate {
                    index,
                    first,
                    pattern: entry.domain.to_string(),
                });
            }
            seen.insert(canonical, index);
            let route = Route {
                hop,
                tls: entry.tls,
                rule: Some(index),
            };
            match &pattern {
                Pattern::Exact(d) => {
                    routes.exact.insert(d.clone(), route);
                }
                Pattern::Subdomains(d) => {
                    routes.subdomains.insert(d.clone(), route);
                }
                Pattern::Any => routes.any = Some(route),
            }
            routes.patterns.push(pattern);
        }
        Ok(routes)
    }

    /// The route for a recipient domain: exact entry, else the longest `*.suffix` that the
    /// domain is a subdomain of, else `*`, else [`Route::DEFAULT`] (`mx`).
    pub fn route(&self, domain: &str) -> Route {
        let domain = normalize(domain);
        if let Some(route) = self.exact.get(domain.as_ref()) {
            return route.clone();
        }
        // Each proper suffix after a dot, longest first.
        let mut rest: &str = &domain;
        while let Some(dot) = rest.find('.') {
            rest = &rest[dot + 1..];
            if let Some(route) = self.subdomains.get(rest) {
                return route.clone();
            }
        }
        self.any.clone().unwrap_or(Route::DEFAULT)
    }

    /// The compiled patterns in config order (for `relay check` output).
    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }
}

/// Lower-case ASCII letters and drop one trailing dot, without allocating when unchanged.
fn normalize(domain: &str) -> std::borrow::Cow<'_, str> {
    let trimmed = domain.strip_suffix('.').unwrap_or(domain);
    if trimmed.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(trimmed.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(trimmed)
    }
}

fn parse_pattern(text: &str) -> Result<Pattern, String> {
    let text = text.trim();
    if text == "*" {
        return Ok(Pattern::Any);
    }
    if let Some(suffix) = text.strip_prefix("*.") {
        check_name(suffix)?;
        return Ok(Pattern::Subdomains(normalize(suffix).into_owned()));
    }
    if text.contains('*') {
        return Err("`*` may only stand alone or begin the pattern as `*.`".into());
    }
    check_name(text)?;
    Ok(Pattern::Exact(normalize(text).into_owned()))
}

/// A DNS host name: ASCII letters, digits, `-` and `_` (seen in internal names), labels of
/// 1–63, at most 253 octets, one optional trailing dot.
fn check_name(name: &str) -> Result<(), String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return Err("empty domain".into());
    }
    if name.len() > NAME_MAX {
        return Err(format!("longer than {NAME_MAX} octets"));
    }
    if !name.is_ascii() {
        return Err("not ASCII: write internationalized names as A-labels (xn--…)".into());
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > LABEL_MAX {
            return Err(format!(
                "label {label:?} must have 1–{LABEL_MAX} characters"
            ));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "label {label:?} may hold only letters, digits, `-` and `_`"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label {label:?} may not begin or end with `-`"));
        }
    }
    Ok(())
}

/// `mx` | `host[:port]` | `a.b.c.d[:port]` | `[ipv6][:port]`.
pub fn parse_next_hop(text: &str) -> Result<NextHop, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("mx") {
        return Ok(NextHop::Mx);
    }
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (inside, after) = rest
            .split_once(']')
            .ok_or("`[` without its `]` (write IPv6 as [2001:db8::1]:25)")?;
        let ip: IpAddr = inside
            .parse()
            .map_err(|_| format!("{inside:?} in brackets is not an IP address"))?;
        let port = match after {
            "" => DEFAULT_PORT,
            _ => parse_port(
                after
                    .strip_prefix(':')
                    .ok_or("after `]` only `:port` may follow")?,
            )?,
        };
        (Host::Ip(ip), port)
    } else {
        if text.parse::<Ipv6Addr>().is_ok() {
            return Err("put an IPv6 address in brackets: [2001:db8::1]:25".into());
        }
        let (host, port) = match text.rsplit_once(':') {
            Some((host, port)) => (host, parse_port(port)?),
            None => (text, DEFAULT_PORT),
        };
        match host.parse::<IpAddr>() {
            Ok(ip) => (Host::Ip(ip), port),
            Err(_) => {
                if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
                    return Err(format!("{host:?} is not a valid IPv4 address"));
                }
                check_name(host)?;
                (Host::Name(normalize(host).into_owned()), port)
            }
        }
    };
    Ok(NextHop::Static(Arc::new(HopAddr { host, port })))
}

fn parse_port(text: &str) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("{text:?} is not a port (1–65535)")),
        Ok(port) => Ok(port),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn entry<'a>(domain: &'a str, to: &'a str) -> RouteSpec<'a> {
        RouteSpec {
            domain,
            to,
            tls: TlsMode::default(),
        }
    }

    fn hop(host: Host, port: u16) -> NextHop {
        NextHop::Static(Arc::new(HopAddr { host, port }))
    }

    fn name(n: &str) -> Host {
        Host::Name(n.into())
    }

    #[test]
    fn a_node_route_is_its_cluster_address_over_cluster_tls() {
        let route = Route::node("127.0.0.3:2526".parse().unwrap());
        assert_eq!(
            route.hop,
            hop(Host::Ip(Ipv4Addr::new(127, 0, 0, 3).into()), 2526)
        );
        assert_eq!(route.tls, TlsMode::Cluster);
        assert_eq!(route.rule, None);
        // An operator cannot write it: the cluster's TLS belongs to node routes alone.
        #[derive(Deserialize)]
        struct Entry {
            #[allow(dead_code)]
            tls: TlsMode,
        }
        assert!(toml::from_str::<Entry>("tls = \"cluster\"").is_err());
        assert!(toml::from_str::<Entry>("tls = \"required\"").is_ok());
    }

    #[test]
    fn next_hop_syntax_table() {
        let v4 = |a, b, c, d| Host::Ip(IpAddr::V4(Ipv4Addr::new(a, b, c, d)));
        let v6: Host = Host::Ip("2001:db8::1".parse().unwrap());
        let good: Vec<(&str, NextHop)> = vec![
            ("mx", NextHop::Mx),
            ("MX", NextHop::Mx),
            ("smtp.example.net:587", hop(name("smtp.example.net"), 587)),
            ("Smtp.Example.NET.", hop(name("smtp.example.net"), 25)),
            ("192.0.2.1:2525", hop(v4(192, 0, 2, 1), 2525)),
            ("192.0.2.1", hop(v4(192, 0, 2, 1), 25)),
            ("[2001:db8::1]:25", hop(v6.clone(), 25)),
            ("[2001:db8::1]", hop(v6, 25)),
            ("[192.0.2.1]:26", hop(v4(192, 0, 2, 1), 26)),
            ("localhost:10025", hop(name("localhost"), 10025)),
            ("relay_1.internal:25", hop(name("relay_1.internal"), 25)),
        ];
        for (text, want) in good {
            assert_eq!(parse_next_hop(text), Ok(want), "{text}");
        }
        for bad in [
            "",
            "2001:db8::1",
            "2001:db8::1:25",
            "[2001:db8::1",
            "[2001:db8::1]25",
            "[mail.example]:25",
            "host:0",
            "host:65536",
            "host:",
            "host:port",
            "999.1.1.1:25",
            "bad host:25",
            "-dash.example:25",
            "a..b:25",
            "mx.exämple.com:25",
        ] {
            assert!(parse_next_hop(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn most_specific_pattern_wins_whatever_the_order() {
        let entries = vec![
            entry("*", "smart.example.net:587"),
            entry("*.example.com", "10.0.0.1:25"),
            entry("*.deep.example.com", "10.0.0.2:25"),
            entry("exact.deep.example.com", "mx"),
            entry("example.com", "10.0.0.3:25"),
        ];
        let check = |routes: &Routes| {
            let to = |d: &str| routes.route(d);
            assert_eq!(to("exact.deep.example.com").hop, NextHop::Mx);
            assert!(to("exact.deep.example.com").rule.is_some());
            assert_eq!(
                to("a.deep.example.com").hop,
                hop(Host::Ip("10.0.0.2".parse().unwrap()), 25)
            );
            assert_eq!(
                to("x.y.deep.example.com").hop,
                hop(Host::Ip("10.0.0.2".parse().unwrap()), 25)
            );
            // deep.example.com itself is not "*.deep.example.com": the shorter suffix.
            assert_eq!(
                to("deep.example.com").hop,
                hop(Host::Ip("10.0.0.1".parse().unwrap()), 25)
            );
            assert_eq!(
                to("example.com").hop,
                hop(Host::Ip("10.0.0.3".parse().unwrap()), 25)
            );
            assert_eq!(to("other.org").hop, hop(name("smart.example.net"), 587));
            assert_eq!(
                to("notexample.com").hop,
                hop(name("smart.example.net"), 587)
            );
        };
        check(&Routes::compile(&entries).unwrap());
        let mut reversed = entries.clone();
        reversed.reverse();
        check(&Routes::compile(&reversed).unwrap());
    }

    #[test]
    fn unmatched_domains_go_by_mx() {
        let routes = Routes::compile(&[entry("example.com", "192.0.2.1")]).unwrap();
        assert_eq!(routes.route("other.example"), Route::DEFAULT);
        assert_eq!(Routes::default().route("anything.test"), Route::DEFAULT);
        assert_eq!(routes.route(""), Route::DEFAULT);
        assert_eq!(routes.route("[192.0.2.1]"), Route::DEFAULT);
    }

    #[test]
    fn lookups_ignore_case_and_a_trailing_dot() {
        let routes =
            Routes::compile(&[entry("Example.COM", "mx"), entry("*.Sub.Test", "h:26")]).unwrap();
        assert_eq!(routes.route("EXAMPLE.com.").rule, Some(0));
        assert_eq!(routes.route("a.SUB.test").rule, Some(1));
        assert_eq!(routes.patterns()[1], Pattern::Subdomains("sub.test".into()));
    }

    #[test]
    fn bad_patterns_and_duplicates_are_refused_with_their_index() {
        for bad in [
            "",
            "*.",
            "a.*.b",
            "ex*ample.com",
            "**",
            "*example.com",
            "a b.com",
        ] {
            let err = Routes::compile(&[entry("ok.test", "mx"), entry(bad, "mx")]).unwrap_err();
            assert!(
                matches!(err, RouteError::BadPattern { index: 1, .. }),
                "{bad:?}: {err}"
            );
        }
        let err = Routes::compile(&[entry("ok.test", "mx"), entry("OK.test.", "h:25")]);
        assert_eq!(
            err.unwrap_err(),
            RouteError::Duplicate {
                index: 1,
                first: 0,
                pattern: "OK.test.".into()
            }
        );
        let err = Routes::compile(&[entry("*", "mx"), entry("*", "h:25")]).unwrap_err();
        assert!(matches!(err, RouteError::Duplicate { .. }));
        let err = Routes::compile(&[entry("a.test", "[::1")]).unwrap_err();
        assert!(matches!(err, RouteError::BadNextHop { index: 0, .. }));
        assert!(err.to_string().contains("route 0"), "{err}");
    }

    #[test]
    fn too_many_routes() {
        let domains: Vec<String> = (0..=ROUTES_MAX).map(|i| format!("d{i}.test")).collect();
        let entries: Vec<RouteSpec> = domains.iter().map(|d| entry(d, "mx")).collect();
        assert_eq!(Routes::compile(&entries).unwrap_err(), RouteError::TooMany);
    }

    #[test]
    fn host_display() {
        assert_eq!(
            HopAddr {
                host: Host::Ip("2001:db8::1".parse().unwrap()),
                port: 25
            }
            .to_string(),
            "[2001:db8::1]:25"
        );
        assert_eq!(
            HopAddr {
                host: name("a.test"),
                port: 587
            }
            .to_string(),
            "a.test:587"
        );
    }
}
