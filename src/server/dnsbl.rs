//! DNS block lists (RFC 5782), checked once per connection before the greeting.
//!
//! The query for client 192.0.2.99 in zone `bl.example` is `99.2.0.192.bl.example` (§2.1);
//! an IPv6 client is queried by its 32 nibbles, least significant first (§2.4). Listed
//! means an A record in 127.0.0.0/8 (§2.3: 127.0.0.2 is the usual code); NXDOMAIN means not
//! listed. Not listings: 127.0.0.1, which §5 forbids as a code (a list answering it is
//! broken or wildcarded), and 127.255.255.0/24, the list refusing the query (Spamhaus's
//! codes for "public resolver" or "over quota"); both are logged, not acted on. A lookup
//! that fails or is slower than `smtp.dnsbl_timeout` lets the client in: a broken DNS must
//! not stop mail, and the other checks still apply. The zones are asked at once, each within
//! the timeout, so one slow list does not hide the others.
//!
//! What happens to a listed client is the SMTP session's decision
//! ([`crate::smtp::Session::client_listed`]).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::net::dns::{AddrAnswer, Resolver};

/// The name to query for `ip` in `zone`.
pub fn query_name(ip: IpAddr, zone: &str) -> String {
    let zone = zone.trim_end_matches('.');
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}.{zone}")
        }
        IpAddr::V6(v6) => {
            let mut name = String::with_capacity(64 + zone.len());
            for byte in v6.octets().iter().rev() {
                name.push(nibble(byte & 0x0f));
                name.push('.');
                name.push(nibble(byte >> 4));
                name.push('.');
            }
            name.push_str(zone);
            name
        }
    }
}

fn nibble(value: u8) -> char {
    char::from_digit(u32::from(value), 16).unwrap_or('0')
}

/// What one zone said about the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Listed, with the list's return code (127.0.0.x).
    Listed(Ipv4Addr),
    NotListed,
    /// The list refused the query or the lookup failed: treated as not listed.
    Unknown(String),
}

/// Reads an A answer (RFC 5782 §2.3).
pub fn verdict(answer: AddrAnswer) -> Verdict {
    match answer {
        AddrAnswer::Addresses(addresses) => {
            let codes: Vec<Ipv4Addr> = addresses
                .into_iter()
                .filter_map(|ip| match ip {
                    IpAddr::V4(v4) => Some(v4),
                    IpAddr::V6(_) => None,
                })
                .collect();
            let listing = |c: &&Ipv4Addr| {
                c.octets()[0] == 127 && c.octets()[1..3] != [255, 255] && **c != Ipv4Addr::LOCALHOST
            };
            if let Some(code) = codes.iter().find(listing) {
                return Verdict::Listed(*code);
            }
            match codes.first() {
                Some(code) if code.octets()[..3] == [127, 255, 255] => {
                    Verdict::Unknown(format!("the list refused the query (code {code})"))
                }
                Some(code) if *code == Ipv4Addr::LOCALHOST => Verdict::Unknown(
                    "answer 127.0.0.1 is not a list code (RFC 5782 §5): a broken or wildcarded zone"
                        .to_string(),
                ),
                Some(code) => Verdict::Unknown(format!("answer {code} is not a list code")),
                None => Verdict::NotListed,
            }
        }
        AddrAnswer::NxDomain | AddrAnswer::NoRecords => Verdict::NotListed,
        AddrAnswer::TempFail(why) => Verdict::Unknown(why),
    }
}

/// The first of `zones` (in their configured order) that lists `ip`, with its code. All
/// zones are asked at once, each within `limit`; undecidable answers are logged and skipped.
pub async fn check<R: Resolver>(
    resolver: &R,
    ip: IpAddr,
    zones: &[String],
    limit: Duration,
) -> Option<(String, Ipv4Addr)> {
    let lookups = zones.iter().map(|zone| async move {
        let name = query_name(ip, zone);
        match tokio::time::timeout(limit, resolver.ipv4(&name)).await {
            Ok(answer) => verdict(answer),
            Err(_) => Verdict::Unknown(format!("no answer within {limit:?}")),
        }
    });
    let verdicts = futures_util::future::join_all(lookups).await;
    let mut found = None;
    for (zone, verdict) in zones.iter().zip(verdicts) {
        match verdict {
            Verdict::Listed(code) => {
                found = found.or(Some((zone.clone(), code)));
            }
            Verdict::NotListed => {}
            Verdict::Unknown(why) => {
                tracing::warn!(target: "relay::smtp", client = %ip, zone = %zone, reason = %why, "block list lookup gave no answer; not treated as listed");
            }
        }
    }
    found
}

/// Block-list settings and this core's resolver for them.
pub struct Dnsbl {
    pub zones: Vec<String>,
    pub timeout: Duration,
    pub dns_servers: Vec<SocketAddr>,
    /// Built on first use, on the core's runtime (hickory spawns its tasks there).
    pub resolver: std::cell::OnceCell<crate::net::dns::SystemResolver>,
    /// After a failed build: not before this instant again.
    pub retry_at: std::cell::Cell<Option<std::time::Instant>>,
}

/// How long a core waits before building its block-list resolver again after a failure
/// (an unreadable `/etc/resolv.conf` at start is usually fixed by the operator soon).
const RESOLVER_RETRY: Duration = Duration::from_secs(60);

impl Dnsbl {
    pub fn new(zones: Vec<String>, timeout: Duration, dns_servers: Vec<SocketAddr>) -> Dnsbl {
        Dnsbl {
            zones,
            timeout,
            dns_servers,
            resolver: std::cell::OnceCell::new(),
            retry_at: std::cell::Cell::new(None),
        }
    }

    /// The resolver, built now if needed; `None` while it cannot be built (clients are then
    /// let in unchecked: the lists fail open), retried every `RESOLVER_RETRY` (a minute).
    pub fn resolver(&self) -> Option<&crate::net::dns::SystemResolver> {
        if let Some(resolver) = self.resolver.get() {
            return Some(resolver);
        }
        let now = std::time::Instant::now();
        if self.retry_at.get().is_some_and(|at| now < at) {
            return None;
        }
        match crate::net::dns::SystemResolver::new(&self.dns_servers) {
            Ok(resolver) => Some(self.resolver.get_or_init(|| resolver)),
            Err(error) => {
                tracing::warn!(%error, retry = ?RESOLVER_RETRY, "no DNS resolver for block lists; clients are not checked until it can be built");
                self.retry_at.set(Some(now + RESOLVER_RETRY));
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::dns::ScriptedResolver;

    #[test]
    fn query_names_follow_rfc_5782() {
        assert_eq!(
            query_name("192.0.2.99".parse().unwrap(), "bl.example"),
            "99.2.0.192.bl.example"
        );
        // A v4-mapped client (dual-stack socket) is queried as IPv4.
        assert_eq!(
            query_name("::ffff:192.0.2.99".parse().unwrap(), "bl.example."),
            "99.2.0.192.bl.example"
        );
        // RFC 5782 §2.4's example.
        assert_eq!(
            query_name("2001:db8:1:2:3:4:567:89ab".parse().unwrap(), "ugly.example"),
            "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.ugly.example"
        );
    }

    #[test]
    fn answers_are_read_as_list_codes() {
        let addrs = |list: &[&str]| {
            AddrAnswer::Addresses(list.iter().map(|a| a.parse().unwrap()).collect())
        };
        assert_eq!(
            verdict(addrs(&["127.0.0.2"])),
            Verdict::Listed(Ipv4Addr::new(127, 0, 0, 2))
        );
        assert_eq!(
            verdict(addrs(&["127.255.255.254", "127.0.0.10"])),
            Verdict::Listed(Ipv4Addr::new(127, 0, 0, 10))
        );
        assert!(matches!(
            verdict(addrs(&["127.255.255.254"])),
            Verdict::Unknown(_)
        ));
        assert!(matches!(
            verdict(addrs(&["192.0.2.1"])),
            Verdict::Unknown(_)
        ));
        assert!(matches!(
            verdict(addrs(&["127.0.0.1"])),
            Verdict::Unknown(_)
        ));
        assert_eq!(verdict(AddrAnswer::NxDomain), Verdict::NotListed);
        assert_eq!(verdict(AddrAnswer::NoRecords), Verdict::NotListed);
        assert!(matches!(
            verdict(AddrAnswer::TempFail("SERVFAIL".into())),
            Verdict::Unknown(_)
        ));
    }

    #[test]
    fn the_first_listing_zone_wins_and_failures_are_skipped() {
        let resolver = ScriptedResolver::new()
            .with_addrs(
                "2.0.0.127.broken.test",
                AddrAnswer::TempFail("SERVFAIL".into()),
            )
            .with_addrs(
                "2.0.0.127.second.test",
                AddrAnswer::Addresses(vec!["127.0.0.4".parse().unwrap()]),
            );
        let zones = ["broken.test", "clean.test", "second.test", "never.test"].map(String::from);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let found = runtime.block_on(check(
            &resolver,
            "127.0.0.2".parse().unwrap(),
            &zones,
            Duration::from_secs(5),
        ));
        assert_eq!(
            found,
            Some(("second.test".to_string(), Ipv4Addr::new(127, 0, 0, 4)))
        );
        // Every zone is asked (at once); the first listing one in config order wins.
        assert_eq!(
            resolver.queries(),
            [
                "A4 2.0.0.127.broken.test",
                "A4 2.0.0.127.clean.test",
                "A4 2.0.0.127.second.test",
                "A4 2.0.0.127.never.test"
            ]
        );
    }
}
