//! Mail that would loop back to this relay: who "myself" is, and what a resolved next hop
//! that turns out to be myself means (Postfix's `smtp_find_self`, "mail for X loops back to
//! myself", `5.4.6`).
//!
//! **Myself** ([`OwnAddresses`]) is the SMTP listeners' bound addresses (known at assembly,
//! passed down as data) and the machine's interface addresses (`net::interfaces`). A
//! listener on `0.0.0.0` (`::`) is reachable at every IPv4 (IPv6) interface address and at
//! loopback; a listener on a loopback address makes the whole loopback net ours (every
//! `127.0.0.0/8` address reaches the host itself, and an operator who routes mail to
//! `127.0.0.2` rarely means another MTA).
//!
//! **The rules.** MX hosts and address literals are reached on port 25 whatever port we
//! listen on, so they are compared by address alone (as Postfix does): the first preference
//! at which we appear and everything worse are dropped, since the hosts there would send the
//! mail back to us or to a better MX (RFC 5321 §5.1); if nothing better remains the domain
//! bounces. Static routes name their port, and a relay commonly hands mail to a content
//! filter or another MTA on its own address at another port, so a static target is ours
//! only when address and port reach one of our listeners; such targets are dropped, and a
//! route with nothing else bounces. A next hop that is us by another way (NAT, a port
//! forward, a second address) is caught by its greeting (`smtp::client`, own host name).
//!
//! **Exposure.** DNS answers (remote data) are only compared with our addresses.
#![forbid(unsafe_code)]

use std::net::{IpAddr, SocketAddr};

use super::resolve::{Resolution, Target};
use crate::smtp::reply::Reply;

/// This relay's own addresses, for the loop checks (module doc).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OwnAddresses {
    listeners: Vec<SocketAddr>,
    interfaces: Vec<IpAddr>,
}

/// IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`) reach the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

impl OwnAddresses {
    /// `listeners`: the bound SMTP listening addresses (ports resolved); `interfaces`: the
    /// machine's interface addresses.
    pub fn new(listeners: Vec<SocketAddr>, interfaces: Vec<IpAddr>) -> OwnAddresses {
        let listeners = listeners
            .into_iter()
            .map(|a| SocketAddr::new(canonical(a.ip()), a.port()))
            .collect();
        let interfaces = interfaces.into_iter().map(canonical).collect();
        OwnAddresses {
            listeners,
            interfaces,
        }
    }

    /// Does a listener bound to `listen` accept connections to `target`?
    fn reaches(&self, listen: IpAddr, target: IpAddr) -> bool {
        let same_family = listen.is_ipv4() == target.is_ipv4();
        if listen.is_unspecified() {
            // Listeners set IPV6_V6ONLY, so `::` is IPv6 only and `0.0.0.0` IPv4 only.
            return same_family && (target.is_loopback() || self.interfaces.contains(&target));
        }
        listen == target || (same_family && listen.is_loopback() && target.is_loopback())
    }

    /// Is `ip` this host, as far as the relay's SMTP service goes (any port): for MX hosts
    /// and address literals.
    pub fn is_own_host(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.listeners.iter().any(|l| self.reaches(l.ip(), ip))
    }

    /// Does a connection to `addr` reach one of our listeners: for static routes.
    pub fn is_own_listener(&self, addr: SocketAddr) -> bool {
        let ip = canonical(addr.ip());
        self.listeners
            .iter()
            .any(|l| l.port() == addr.port() && self.reaches(l.ip(), ip))
    }
}

/// How a destination's targets are compared with ourselves (module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// MX hosts or an address literal: by address, and by preference.
    Mx,
    /// A static route: by address and port.
    Static,
}

/// `resolution` without the targets that are this relay; a bounce `5.4.6` ("mail for
/// `what` loops back to myself") when none is left.
pub fn without_myself(
    resolution: Resolution,
    what: &str,
    route: Route,
    own: &OwnAddresses,
) -> Resolution {
    let Resolution::Targets(mut targets) = resolution else {
        return resolution;
    };
    match route {
        Route::Mx => {
            let ours = targets
                .iter()
                .filter(|t| own.is_own_host(t.addr.ip()))
                .map(|t| t.preference)
                .min();
            if let Some(ours) = ours {
                targets.retain(|t: &Target| t.preference < ours);
            }
        }
        Route::Static => targets.retain(|t| !own.is_own_listener(t.addr)),
    }
    if targets.is_empty() {
        Resolution::Bounce(Reply::loops_back_to_myself(what))
    } else {
        Resolution::Targets(targets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn own(listeners: &[&str]) -> OwnAddresses {
        OwnAddresses::new(
            listeners.iter().map(|l| sa(l)).collect(),
            vec![
                ip("127.0.0.1"),
                ip("::1"),
                ip("192.0.2.10"),
                ip("2001:db8::10"),
            ],
        )
    }

    fn target(addr: &str, preference: u16) -> Target {
        Target {
            host: format!("mx{preference}"),
            addr: sa(addr),
            preference,
        }
    }

    fn addrs(r: &Resolution) -> Vec<String> {
        match r {
            Resolution::Targets(t) => t.iter().map(|t| t.addr.to_string()).collect(),
            other => vec![format!("{other:?}")],
        }
    }

    #[test]
    fn wildcard_listeners_are_every_interface_address_of_their_family_and_loopback() {
        let v4 = own(&["0.0.0.0:25"]);
        for yes in ["192.0.2.10", "127.0.0.1", "127.8.9.1", "::ffff:192.0.2.10"] {
            assert!(v4.is_own_host(ip(yes)), "{yes}");
        }
        for no in ["192.0.2.11", "2001:db8::10", "::1", "198.51.100.1"] {
            assert!(!v4.is_own_host(ip(no)), "{no}");
        }
        let v6 = own(&["[::]:25"]);
        assert!(v6.is_own_host(ip("2001:db8::10")) && v6.is_own_host(ip("::1")));
        assert!(!v6.is_own_host(ip("192.0.2.10")));
    }

    #[test]
    fn a_specific_listener_is_its_address_and_loopback_is_the_whole_loopback_net() {
        let specific = own(&["192.0.2.10:2525"]);
        assert!(specific.is_own_host(ip("192.0.2.10")));
        assert!(
            !specific.is_own_host(ip("127.0.0.1")),
            "not listening there"
        );
        let lo = own(&["127.0.0.1:2525"]);
        assert!(lo.is_own_host(ip("127.0.0.1")) && lo.is_own_host(ip("127.0.0.2")));
        assert!(!lo.is_own_host(ip("192.0.2.10")) && !lo.is_own_host(ip("::1")));
        assert!(!OwnAddresses::default().is_own_host(ip("127.0.0.1")));
    }

    #[test]
    fn a_listener_match_needs_the_port_too() {
        let me = own(&["127.0.0.1:2525", "0.0.0.0:587"]);
        assert!(me.is_own_listener(sa("127.0.0.1:2525")));
        assert!(me.is_own_listener(sa("127.0.0.3:2525")));
        assert!(me.is_own_listener(sa("192.0.2.10:587")));
        assert!(
            !me.is_own_listener(sa("127.0.0.1:10025")),
            "a filter beside us"
        );
        assert!(!me.is_own_listener(sa("192.0.2.10:2525")));
    }

    #[test]
    fn mx_targets_are_cut_at_our_own_preference() {
        let me = own(&["0.0.0.0:25"]);
        let r = Resolution::Targets(vec![
            target("198.51.100.1:25", 10),
            target("192.0.2.10:25", 20),
            target("198.51.100.2:25", 20),
            target("198.51.100.3:25", 30),
        ]);
        assert_eq!(
            addrs(&without_myself(r, "d.test", Route::Mx, &me)),
            ["198.51.100.1:25"]
        );
        let best = Resolution::Targets(vec![
            target("127.0.0.1:25", 10),
            target("198.51.100.3:25", 30),
        ]);
        let Resolution::Bounce(reply) = without_myself(best, "d.test", Route::Mx, &me) else {
            panic!("we are the best MX")
        };
        assert_eq!(
            reply.to_string(),
            "554 5.4.6 mail for d.test loops back to myself"
        );
        // Someone else's MX is left alone, and so are answers that are not targets.
        let other = Resolution::Targets(vec![target("198.51.100.1:25", 0)]);
        assert_eq!(without_myself(other.clone(), "d", Route::Mx, &me), other);
        let defer = Resolution::Defer(Reply::loops_back_to_myself("x"));
        assert_eq!(without_myself(defer.clone(), "d", Route::Mx, &me), defer);
    }

    #[test]
    fn static_targets_that_are_our_listener_are_dropped() {
        let me = own(&["127.0.0.1:2525"]);
        let r = Resolution::Targets(vec![
            target("127.0.0.1:2525", 0),
            target("127.0.0.1:10025", 0),
        ]);
        assert_eq!(
            addrs(&without_myself(r, "h:2525", Route::Static, &me)),
            ["127.0.0.1:10025"]
        );
        let only = Resolution::Targets(vec![target("127.0.0.1:2525", 0)]);
        assert!(matches!(
            without_myself(only, "127.0.0.1:2525", Route::Static, &me),
            Resolution::Bounce(ref r) if r.to_string().contains("mail for 127.0.0.1:2525 loops back")
        ));
    }
}
