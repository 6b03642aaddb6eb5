//! Finding the hosts to deliver to: RFC 5321 §5.1 over a resolver seam.
//!
//! **Role.** Turn a [`Route`] and a recipient domain into a [`Resolution`]: the ordered
//! addresses to try, or a bounce, or a deferral. The decisions are pure functions of DNS
//! answers ([`plan_hops`] for the MX step, [`plan_targets`] for the address step), so every
//! RFC rule is unit-tested with literal answers. [`resolve`] is the thin async driver that
//! asks a [`Resolver`] and feeds the answers to them.
//!
//! **The rules** (RFC 5321 §5.1 unless noted):
//! - MX records are tried in preference order, lowest first; records of equal preference are
//!   shuffled (here deterministically from a seed, so a retry of the same message is
//!   reproducible while different messages spread over the hosts).
//! - No MX records (the name exists, NOERROR/NODATA): the domain itself is the one host, as
//!   an implicit MX of preference 0 ("A/AAAA fallback").
//! - Null MX (RFC 7505: a single MX whose exchange is the root `.`, preference 0): the domain
//!   accepts no mail. Bounce at once, no A/AAAA fallback, `556 5.1.10` (556 is RFC 7504's
//!   reply for it, X.1.10 "Recipient address has null MX" is RFC 7505's registration; the
//!   `550 5.7.27` of RFC 7505 is for a *sender* domain with null MX and is not ours). Any
//!   preference is accepted for the lone `.`; a `.` among real exchanges violates RFC 7505
//!   §3 and is skipped, the others are used.
//! - NXDOMAIN for the domain: bounce `550 5.1.2` (RFC 3463 X.1.2 "Bad destination system
//!   address").
//! - A temporary DNS failure (SERVFAIL, timeout, refused, no server reachable): defer
//!   `451 4.4.3` (X.4.3 "Directory server failure"); the retry schedule takes over.
//! - If our own name is among the MX hosts, records of its preference and worse are dropped;
//!   if none remain, bounce `554 5.4.6` ("Routing loop detected"), as Postfix does ("mail
//!   for … loops back to myself"). The same rule over the resolved *addresses* (an MX that
//!   is one of our addresses under another name, an address literal of ours, a static
//!   route to our own listener) is applied to the [`Resolution`] by `delivery::loops`.
//! - Address step: each host's A/AAAA addresses, in host order. No address for any host:
//!   defer 4.4.3 if any lookup failed temporarily, else bounce `550 5.4.4` ("Unable to
//!   route"); NXDOMAIN for the implicit-MX domain is `550 5.1.2` as above.
//! - Static routes (smarthosts) skip MX: their host's addresses, or the literal address.
//!   A recipient domain that is an address literal (`[192.0.2.1]`, `[IPv6:2001:db8::1]`,
//!   RFC 5321 §4.1.3) is delivered to that address directly.
//!
//! **The seam.** [`Resolver`] returns futures (the runtime is tokio-based and lookups wait on
//! the network) but its answers are plain data. [`ScriptedResolver`] answers from a table
//! for tests; [`SystemResolver`] uses `hickory-resolver` with the system configuration
//! (`/etc/resolv.conf`). The real one needs no test network of its own: everything it
//! decides is in [`plan_hops`]/[`plan_targets`], tested here with scripted answers, and what
//! it adds is only the mapping of hickory's errors to [`MxAnswer`]/[`AddrAnswer`] (NXDOMAIN,
//! NOERROR without records, anything else temporary) in [`classify`] (all three in `net::dns`).
//!
//! **Exposure.** DNS answers are remote data: exchange names are only compared and passed on
//! as host names to look up; their count is bounded ([`ResolveLimits`]); nothing is parsed
//! beyond what hickory parsed. The domain comes from a peer's RCPT TO.
//!
//! **Limits.** [`ResolveLimits`]: MX hosts looked up (default 10) and addresses returned
//! (default 5, Postfix's `smtp_mx_address_limit`), so a domain with 500 MX records costs 10
//! lookups, not 500.
//!
//! [`ScriptedResolver`]: crate::net::dns::ScriptedResolver
//! [`SystemResolver`]: crate::net::dns::SystemResolver
//! [`classify`]: crate::net::dns::classify
#![forbid(unsafe_code)]

use std::net::{IpAddr, SocketAddr};

use crate::smtp::reply::{EnhancedStatus, Reply, ReplyCode};

use crate::net::dns::{AddrAnswer, MxAnswer, MxRecord, Resolver};
use crate::queue::routes::{Host, NextHop, Route, DEFAULT_PORT};
use crate::queue::{ResolveLimits, SplitMix64};

/// A host to look up, in the order to try.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hop {
    pub host: String,
    pub preference: u16,
    /// The domain itself, because it has no MX records.
    pub implicit: bool,
}

/// The MX step's verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HopPlan {
    /// Look these up, in this order.
    Hosts(Vec<Hop>),
    /// A permanent failure for every recipient at the domain.
    Bounce(Reply),
    /// A temporary failure: defer.
    Defer(Reply),
}

/// One address to connect to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The host name the address belongs to (Remote-MTA in a DSN, TLS name later).
    pub host: String,
    pub addr: SocketAddr,
    pub preference: u16,
}

/// The full verdict: where to connect, or why not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    Targets(Vec<Target>),
    Bounce(Reply),
    Defer(Reply),
}

// RFC 3463 / RFC 7505 codes used here; `EnhancedStatus::new` checks them, `status` keeps the
// fallback out of the way (the values are valid: a unit test pins each).
fn status(class: u8, subject: u16, detail: u16) -> Option<EnhancedStatus> {
    EnhancedStatus::new(class, subject, detail)
}

fn reply(code: u16, st: (u8, u16, u16), text: String) -> Reply {
    let code = ReplyCode::new(code).unwrap_or(ReplyCode::TRANSACTION_FAILED);
    Reply::new(code, status(st.0, st.1, st.2), text)
}

fn null_mx(domain: &str) -> Reply {
    reply(
        556,
        (5, 1, 10),
        format!("Recipient address has null MX: {domain} accepts no mail (RFC 7505)"),
    )
}

fn not_found(domain: &str) -> Reply {
    reply(
        550,
        (5, 1, 2),
        format!("Host or domain name not found: {domain} does not exist (NXDOMAIN)"),
    )
}

fn dns_temporary(name: &str, why: &str) -> Reply {
    reply(
        451,
        (4, 4, 3),
        format!("Temporary DNS failure for {name}: {why}"),
    )
}

fn loops_back(domain: &str) -> Reply {
    reply(
        554,
        (5, 4, 6),
        format!("Mail for {domain} loops back to myself (we are its best MX)"),
    )
}

fn unroutable(domain: &str) -> Reply {
    reply(
        550,
        (5, 4, 4),
        format!("Unable to route: no address for any mail exchanger of {domain}"),
    )
}

fn is_root(name: &str) -> bool {
    name.is_empty() || name == "."
}

fn same_host(a: &str, b: &str) -> bool {
    let a = a.strip_suffix('.').unwrap_or(a);
    let b = b.strip_suffix('.').unwrap_or(b);
    a.eq_ignore_ascii_case(b)
}

/// The MX step of RFC 5321 §5.1 (see the module doc). `local_names` are this relay's own
/// host names (for the loop rule); `seed` orders equal preferences.
pub fn plan_hops(
    domain: &str,
    mx: MxAnswer,
    seed: u64,
    local_names: &[String],
    limits: &ResolveLimits,
) -> HopPlan {
    let records = match mx {
        MxAnswer::NxDomain => return HopPlan::Bounce(not_found(domain)),
        MxAnswer::TempFail(why) => return HopPlan::Defer(dns_temporary(domain, &why)),
        MxAnswer::NoRecords => Vec::new(),
        MxAnswer::Records(records) => records,
    };
    if records.is_empty() {
        return HopPlan::Hosts(vec![Hop {
            host: domain.to_string(),
            preference: 0,
            implicit: true,
        }]);
    }
    if records.iter().all(|r| is_root(&r.exchange)) {
        return HopPlan::Bounce(null_mx(domain));
    }
    let mut records: Vec<MxRecord> = records
        .into_iter()
        .filter(|r| !is_root(&r.exchange))
        .collect();
    // Sort by preference, then shuffle each run of equal preference.
    records.sort_by_key(|r| r.preference);
    let mut rng = SplitMix64::new(seed);
    let mut start = 0;
    while start < records.len() {
        let pref = records[start].preference;
        let end = records[start..]
            .iter()
            .position(|r| r.preference != pref)
            .map_or(records.len(), |n| start + n);
        let run = &mut records[start..end];
        for i in (1..run.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            run.swap(i, j);
        }
        start = end;
    }
    // The loop rule: drop our own preference level and everything worse.
    let own = records
        .iter()
        .filter(|r| local_names.iter().any(|n| same_host(n, &r.exchange)))
        .map(|r| r.preference)
        .min();
    if let Some(own) = own {
        records.retain(|r| r.preference < own);
        if records.is_empty() {
            return HopPlan::Bounce(loops_back(domain));
        }
    }
    // Duplicate exchanges are looked up once, at their best preference.
    let mut hops: Vec<Hop> = Vec::new();
    for r in records {
        if hops.len() >= limits.hosts_max {
            break;
        }
        if !hops.iter().any(|h| same_host(&h.host, &r.exchange)) {
            hops.push(Hop {
                host: r
                    .exchange
                    .strip_suffix('.')
                    .unwrap_or(&r.exchange)
                    .to_string(),
                preference: r.preference,
                implicit: false,
            });
        }
    }
    HopPlan::Hosts(hops)
}

/// Addresses that can never be a next hop.
fn usable(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !(v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast()),
        IpAddr::V6(v6) => !(v6.is_unspecified() || v6.is_multicast()),
    }
}

/// The address step: each hop with its A/AAAA answer (in hop order) → targets, or why
/// there are none. `port` is 25 for MX hops, the route's port for a smarthost.
pub fn plan_targets(
    domain: &str,
    answers: Vec<(Hop, AddrAnswer)>,
    port: u16,
    limits: &ResolveLimits,
) -> Resolution {
    let mut targets = Vec::new();
    let mut temporary: Option<String> = None;
    let mut implicit_nx = false;
    for (hop, answer) in answers {
        match answer {
            AddrAnswer::Addresses(addrs) => {
                for ip in addrs.into_iter().filter(usable) {
                    if targets.len() >= limits.addresses_max {
                        break;
                    }
                    let addr = SocketAddr::new(ip, port);
                    if !targets.iter().any(|t: &Target| t.addr == addr) {
                        targets.push(Target {
                            host: hop.host.clone(),
                            addr,
                            preference: hop.preference,
                        });
                    }
                }
            }
            AddrAnswer::TempFail(why) => {
                temporary.get_or_insert_with(|| format!("{}: {why}", hop.host));
            }
            AddrAnswer::NxDomain => implicit_nx |= hop.implicit,
            AddrAnswer::NoRecords => {}
        }
    }
    if !targets.is_empty() {
        Resolution::Targets(targets)
    } else if let Some(why) = temporary {
        Resolution::Defer(dns_temporary(domain, &why))
    } else if implicit_nx {
        Resolution::Bounce(not_found(domain))
    } else {
        Resolution::Bounce(unroutable(domain))
    }
}

/// `[192.0.2.1]` or `[IPv6:2001:db8::1]` (RFC 5321 §4.1.3) as an address.
pub fn address_literal(domain: &str) -> Option<IpAddr> {
    let inner = domain.strip_prefix('[')?.strip_suffix(']')?;
    match inner.get(..5) {
        Some(tag) if tag.eq_ignore_ascii_case("IPv6:") => inner[5..]
            .parse::<std::net::Ipv6Addr>()
            .ok()
            .map(IpAddr::V6),
        _ => inner.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4),
    }
}

/// Resolves where mail for `domain` goes by `route`: the async driver around
/// [`plan_hops`] and [`plan_targets`]. Lookups run one after another, at most
/// `limits.hosts_max + 1` of them.
pub async fn resolve<R: Resolver>(
    resolver: &R,
    route: &Route,
    domain: &str,
    seed: u64,
    local_names: &[String],
    limits: &ResolveLimits,
) -> Resolution {
    let (hops, port) = match &route.hop {
        NextHop::Static(hop) => {
            let host = match &hop.host {
                Host::Ip(ip) => {
                    return Resolution::Targets(vec![Target {
                        host: ip.to_string(),
                        addr: SocketAddr::new(*ip, hop.port),
                        preference: 0,
                    }])
                }
                Host::Name(name) => name.clone(),
            };
            let hop_entry = Hop {
                host,
                preference: 0,
                implicit: false,
            };
            (vec![hop_entry], hop.port)
        }
        NextHop::Mx => {
            if let Some(ip) = address_literal(domain) {
                return Resolution::Targets(vec![Target {
                    host: domain.to_string(),
                    addr: SocketAddr::new(ip, DEFAULT_PORT),
                    preference: 0,
                }]);
            }
            match plan_hops(domain, resolver.mx(domain).await, seed, local_names, limits) {
                HopPlan::Hosts(hops) => (hops, DEFAULT_PORT),
                HopPlan::Bounce(reply) => return Resolution::Bounce(reply),
                HopPlan::Defer(reply) => return Resolution::Defer(reply),
            }
        }
    };
    let mut answers = Vec::with_capacity(hops.len());
    for hop in hops {
        let answer = match hop.host.parse::<IpAddr>() {
            Ok(ip) => AddrAnswer::Addresses(vec![ip]),
            Err(_) => resolver.addresses(&hop.host).await,
        };
        answers.push((hop, answer));
    }
    plan_targets(domain, answers, port, limits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::dns::ScriptedResolver;
    use crate::queue::routes::{parse_next_hop, TlsMode};
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    /// Runs a future that never waits (the scripted resolver's are ready at once).
    fn now<F: Future>(f: F) -> F::Output {
        let mut f = pin!(f);
        match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(v) => v,
            Poll::Pending => panic!("a scripted lookup must not wait"),
        }
    }

    fn mx(pref: u16, host: &str) -> MxRecord {
        MxRecord {
            preference: pref,
            exchange: host.into(),
        }
    }

    fn hosts(plan: &HopPlan) -> Vec<(u16, &str)> {
        match plan {
            HopPlan::Hosts(h) => h.iter().map(|h| (h.preference, h.host.as_str())).collect(),
            other => panic!("expected hosts, got {other:?}"),
        }
    }

    fn code(reply: &Reply) -> String {
        format!(
            "{} {}",
            reply.code(),
            reply.status().map(|s| s.to_string()).unwrap_or_default()
        )
    }

    const L: ResolveLimits = ResolveLimits {
        hosts_max: 10,
        addresses_max: 5,
    };

    #[test]
    fn the_codes_are_valid() {
        assert_eq!(code(&null_mx("d")), "556 5.1.10");
        assert_eq!(code(&not_found("d")), "550 5.1.2");
        assert_eq!(code(&dns_temporary("d", "x")), "451 4.4.3");
        assert_eq!(code(&loops_back("d")), "554 5.4.6");
        assert_eq!(code(&unroutable("d")), "550 5.4.4");
    }

    #[test]
    fn mx_records_go_in_preference_order() {
        let answer = MxAnswer::Records(vec![
            mx(20, "b.example"),
            mx(10, "a.example."),
            mx(30, "c.example"),
        ]);
        let plan = plan_hops("example.com", answer, 0, &[], &L);
        assert_eq!(
            hosts(&plan),
            [(10, "a.example"), (20, "b.example"), (30, "c.example")]
        );
    }

    #[test]
    fn equal_preferences_are_shuffled_by_seed_and_only_among_themselves() {
        let answer = MxAnswer::Records(vec![
            mx(10, "a"),
            mx(10, "b"),
            mx(10, "c"),
            mx(10, "d"),
            mx(5, "first"),
            mx(50, "last"),
        ]);
        let mut orders = std::collections::BTreeSet::new();
        for seed in 0..64 {
            let plan = plan_hops("d.test", answer.clone(), seed, &[], &L);
            let h = hosts(&plan);
            assert_eq!(h[0], (5, "first"));
            assert_eq!(h[5], (50, "last"));
            let mut middle: Vec<&str> = h[1..5].iter().map(|x| x.1).collect();
            orders.insert(middle.join(","));
            middle.sort();
            assert_eq!(middle, ["a", "b", "c", "d"]);
            // Deterministic per seed.
            assert_eq!(plan, plan_hops("d.test", answer.clone(), seed, &[], &L));
        }
        assert!(orders.len() > 10, "seeds spread the order: {orders:?}");
    }

    #[test]
    fn no_mx_falls_back_to_the_domain_itself() {
        for answer in [MxAnswer::NoRecords, MxAnswer::Records(vec![])] {
            let plan = plan_hops("example.org", answer, 0, &[], &L);
            assert_eq!(
                plan,
                HopPlan::Hosts(vec![Hop {
                    host: "example.org".into(),
                    preference: 0,
                    implicit: true
                }])
            );
        }
    }

    #[test]
    fn null_mx_bounces_with_556_5_1_10() {
        for exchange in [".", ""] {
            let plan = plan_hops(
                "nomail.test",
                MxAnswer::Records(vec![mx(0, exchange)]),
                0,
                &[],
                &L,
            );
            let HopPlan::Bounce(reply) = plan else {
                panic!("{plan:?}")
            };
            assert_eq!(code(&reply), "556 5.1.10");
            assert!(reply.text().contains("nomail.test"));
        }
        // A `.` among real exchanges is skipped, not a null MX.
        let plan = plan_hops(
            "mixed.test",
            MxAnswer::Records(vec![mx(0, "."), mx(10, "mx.mixed.test")]),
            0,
            &[],
            &L,
        );
        assert_eq!(hosts(&plan), [(10, "mx.mixed.test")]);
    }

    #[test]
    fn nxdomain_bounces_and_temporary_failure_defers() {
        let HopPlan::Bounce(r) = plan_hops("gone.test", MxAnswer::NxDomain, 0, &[], &L) else {
            panic!()
        };
        assert_eq!(code(&r), "550 5.1.2");
        let HopPlan::Defer(r) = plan_hops(
            "flaky.test",
            MxAnswer::TempFail("SERVFAIL".into()),
            0,
            &[],
            &L,
        ) else {
            panic!()
        };
        assert_eq!(code(&r), "451 4.4.3");
        assert!(r.text().contains("SERVFAIL"));
    }

    #[test]
    fn our_own_name_in_the_mx_list_cuts_it() {
        let me = vec!["relay.example.net".to_string()];
        let answer = MxAnswer::Records(vec![
            mx(10, "primary.example"),
            mx(20, "Relay.Example.NET."),
            mx(20, "peer.example"),
            mx(30, "backup.example"),
        ]);
        assert_eq!(
            hosts(&plan_hops("d.test", answer, 0, &me, &L)),
            [(10, "primary.example")]
        );
        let best = MxAnswer::Records(vec![mx(10, "relay.example.net"), mx(20, "other")]);
        let HopPlan::Bounce(r) = plan_hops("d.test", best, 0, &me, &L) else {
            panic!()
        };
        assert_eq!(code(&r), "554 5.4.6");
    }

    #[test]
    fn host_count_is_bounded_and_duplicates_collapse() {
        let many: Vec<MxRecord> = (0..500).map(|i| mx(i as u16, &format!("mx{i}"))).collect();
        let plan = plan_hops("big.test", MxAnswer::Records(many), 0, &[], &L);
        assert_eq!(hosts(&plan).len(), 10);
        let dup = MxAnswer::Records(vec![mx(10, "a"), mx(20, "A."), mx(30, "b")]);
        assert_eq!(
            hosts(&plan_hops("d", dup, 0, &[], &L)),
            [(10, "a"), (30, "b")]
        );
    }

    fn hop(host: &str, pref: u16, implicit: bool) -> Hop {
        Hop {
            host: host.into(),
            preference: pref,
            implicit,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn targets_follow_hop_order_and_are_bounded() {
        let answers = vec![
            (
                hop("a", 10, false),
                AddrAnswer::Addresses(vec![ip("192.0.2.1"), ip("2001:db8::1"), ip("0.0.0.0")]),
            ),
            (hop("b", 20, false), AddrAnswer::TempFail("timeout".into())),
            (
                hop("c", 30, false),
                AddrAnswer::Addresses(vec![
                    ip("192.0.2.1"),
                    ip("192.0.2.3"),
                    ip("192.0.2.4"),
                    ip("192.0.2.5"),
                    ip("192.0.2.6"),
                ]),
            ),
        ];
        let Resolution::Targets(t) = plan_targets("d", answers, 25, &L) else {
            panic!()
        };
        let got: Vec<String> = t.iter().map(|t| format!("{} {}", t.host, t.addr)).collect();
        assert_eq!(
            got,
            [
                "a 192.0.2.1:25",
                "a [2001:db8::1]:25",
                "c 192.0.2.3:25",
                "c 192.0.2.4:25",
                "c 192.0.2.5:25"
            ]
        );
    }

    #[test]
    fn no_addresses_defer_or_bounce() {
        let temp = vec![
            (hop("a", 10, false), AddrAnswer::NoRecords),
            (hop("b", 20, false), AddrAnswer::TempFail("timeout".into())),
        ];
        let Resolution::Defer(r) = plan_targets("d", temp, 25, &L) else {
            panic!()
        };
        assert_eq!(code(&r), "451 4.4.3");
        let none = vec![
            (hop("a", 10, false), AddrAnswer::NoRecords),
            (hop("b", 20, false), AddrAnswer::NxDomain),
        ];
        let Resolution::Bounce(r) = plan_targets("d", none, 25, &L) else {
            panic!()
        };
        assert_eq!(code(&r), "550 5.4.4");
        let implicit = vec![(hop("d", 0, true), AddrAnswer::NxDomain)];
        let Resolution::Bounce(r) = plan_targets("d", implicit, 25, &L) else {
            panic!()
        };
        assert_eq!(code(&r), "550 5.1.2");
        let unusable = vec![(
            hop("d", 0, true),
            AddrAnswer::Addresses(vec![ip("0.0.0.0"), ip("ff02::1")]),
        )];
        assert!(matches!(
            plan_targets("d", unusable, 25, &L),
            Resolution::Bounce(_)
        ));
    }

    fn mx_route() -> Route {
        Route::DEFAULT
    }

    #[test]
    fn resolve_mx_domain_end_to_end_with_the_scripted_resolver() {
        let dns = ScriptedResolver::new()
            .with_mx(
                "example.com",
                MxAnswer::Records(vec![mx(20, "mx2.example.com"), mx(10, "mx1.example.com")]),
            )
            .with_addrs(
                "mx1.example.com",
                AddrAnswer::Addresses(vec![ip("192.0.2.10")]),
            )
            .with_addrs(
                "mx2.example.com",
                AddrAnswer::Addresses(vec![ip("192.0.2.20")]),
            );
        let r = now(resolve(&dns, &mx_route(), "example.com", 1, &[], &L));
        let Resolution::Targets(t) = r else {
            panic!("{r:?}")
        };
        assert_eq!(t[0].addr, sa("192.0.2.10:25"));
        assert_eq!(t[0].host, "mx1.example.com");
        assert_eq!(t[1].addr, sa("192.0.2.20:25"));
        assert_eq!(
            dns.queries(),
            ["MX example.com", "A mx1.example.com", "A mx2.example.com"]
        );
    }

    #[test]
    fn resolve_no_mx_uses_the_domain_address() {
        let dns = ScriptedResolver::new()
            .with_mx("plain.test", MxAnswer::NoRecords)
            .with_addrs("plain.test", AddrAnswer::Addresses(vec![ip("2001:db8::5")]));
        let r = now(resolve(&dns, &mx_route(), "plain.test", 0, &[], &L));
        assert_eq!(
            r,
            Resolution::Targets(vec![Target {
                host: "plain.test".into(),
                addr: sa("[2001:db8::5]:25"),
                preference: 0
            }])
        );
    }

    #[test]
    fn resolve_null_mx_never_looks_up_addresses() {
        let dns = ScriptedResolver::new()
            .with_mx("nomail.test", MxAnswer::Records(vec![mx(0, ".")]))
            .with_addrs("nomail.test", AddrAnswer::Addresses(vec![ip("192.0.2.1")]));
        let r = now(resolve(&dns, &mx_route(), "nomail.test", 0, &[], &L));
        assert!(matches!(r, Resolution::Bounce(ref reply) if code(reply) == "556 5.1.10"));
        assert_eq!(dns.queries(), ["MX nomail.test"]);
    }

    #[test]
    fn resolve_unknown_domain_and_servfail() {
        let dns =
            ScriptedResolver::new().with_mx("flaky.test", MxAnswer::TempFail("SERVFAIL".into()));
        let r = now(resolve(&dns, &mx_route(), "nowhere.test", 0, &[], &L));
        assert!(matches!(r, Resolution::Bounce(ref reply) if code(reply) == "550 5.1.2"));
        let r = now(resolve(&dns, &mx_route(), "flaky.test", 0, &[], &L));
        assert!(matches!(r, Resolution::Defer(ref reply) if code(reply) == "451 4.4.3"));
    }

    #[test]
    fn static_routes_skip_mx() {
        let route = |to: &str| Route {
            hop: parse_next_hop(to).unwrap(),
            tls: TlsMode::Required,
            rule: Some(0),
        };
        let dns = ScriptedResolver::new()
            .with_addrs("smart.test", AddrAnswer::Addresses(vec![ip("192.0.2.7")]));
        let r = now(resolve(
            &dns,
            &route("smart.test:587"),
            "any.test",
            0,
            &[],
            &L,
        ));
        assert_eq!(
            r,
            Resolution::Targets(vec![Target {
                host: "smart.test".into(),
                addr: sa("192.0.2.7:587"),
                preference: 0
            }])
        );
        assert_eq!(dns.queries(), ["A smart.test"]);
        let r = now(resolve(&dns, &route("[::1]:2525"), "any.test", 0, &[], &L));
        assert!(matches!(r, Resolution::Targets(ref t) if t[0].addr == sa("[::1]:2525")));
        assert_eq!(dns.queries().len(), 1, "a literal needs no lookup");
        let r = now(resolve(
            &dns,
            &route("gone.test:25"),
            "any.test",
            0,
            &[],
            &L,
        ));
        assert!(matches!(r, Resolution::Bounce(_)));
    }

    #[test]
    fn address_literal_domains_go_straight_to_the_address() {
        assert_eq!(address_literal("[192.0.2.1]"), Some(ip("192.0.2.1")));
        assert_eq!(
            address_literal("[IPv6:2001:db8::1]"),
            Some(ip("2001:db8::1"))
        );
        assert_eq!(address_literal("[ipv6:::1]"), Some(ip("::1")));
        assert_eq!(address_literal("[2001:db8::1]"), None);
        assert_eq!(address_literal("example.com"), None);
        assert_eq!(address_literal("[]"), None);
        let dns = ScriptedResolver::new();
        let r = now(resolve(&dns, &mx_route(), "[192.0.2.9]", 0, &[], &L));
        assert!(matches!(r, Resolution::Targets(ref t) if t[0].addr == sa("192.0.2.9:25")));
        assert!(dns.queries().is_empty());
    }

    #[test]
    fn an_mx_that_is_an_ip_literal_is_used_as_is() {
        // Not RFC-conformant, but seen; no lookup of "192.0.2.1" as a name.
        let dns = ScriptedResolver::new()
            .with_mx("odd.test", MxAnswer::Records(vec![mx(10, "192.0.2.1")]));
        let r = now(resolve(&dns, &mx_route(), "odd.test", 0, &[], &L));
        assert!(matches!(r, Resolution::Targets(ref t) if t[0].addr == sa("192.0.2.1:25")));
        assert_eq!(dns.queries(), ["MX odd.test"]);
    }
}
