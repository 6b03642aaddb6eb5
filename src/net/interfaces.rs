//! The machine's own interface addresses, for the mail-loop check of delivery: a listener
//! on `0.0.0.0` or `::` is reachable at each of them, so a next hop at one of them is this
//! relay. Read with getifaddrs(3) through the `if-addrs` crate (the FFI call is unsafe,
//! which this crate forbids); read once at start, like Postfix's `inet_addr_local`.
#![forbid(unsafe_code)]

use std::net::IpAddr;

/// Every address of every interface (up or not: an address that comes up later is still
/// ours), loopback included, without duplicates.
pub fn addresses() -> std::io::Result<Vec<IpAddr>> {
    let mut out: Vec<IpAddr> = Vec::new();
    for interface in if_addrs::get_if_addrs()? {
        let ip = interface.ip();
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_is_among_the_interface_addresses() {
        let all = super::addresses().unwrap();
        assert!(all.iter().any(|ip| ip.is_loopback()), "{all:?}");
    }
}
