//! DNS for the relay: the resolver seam ([`Resolver`]: MX, A/AAAA and A-only lookups returning
//! plain answers), its real implementation on `hickory-resolver` ([`SystemResolver`]) and a
//! table-driven one for tests ([`ScriptedResolver`]).
//!
//! What the answers mean for delivery (RFC 5321 §5.1 ordering, null MX, loops) is decided
//! above this layer, from these answers; this module only asks and maps hickory's errors
//! onto [`MxAnswer`]/[`AddrAnswer`] ([`classify`]).
//!
//! Exposure: answers are remote data. Names are only compared and looked up again; nothing
//! is parsed beyond what hickory parsed.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};

use hickory_resolver::proto::rr::RData;

/// One MX record as received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MxRecord {
    pub preference: u16,
    /// The exchange's name without a trailing dot; `"."` (or empty) is the root, a null MX.
    pub exchange: String,
}

/// The outcome of an MX query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MxAnswer {
    Records(Vec<MxRecord>),
    /// The name exists but has no MX records (NOERROR, empty answer).
    NoRecords,
    /// The name does not exist (NXDOMAIN).
    NxDomain,
    /// SERVFAIL, timeout, refused, no server: try again later. The text is for the log.
    TempFail(String),
}

/// The outcome of an A+AAAA query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AddrAnswer {
    Addresses(Vec<IpAddr>),
    NoRecords,
    NxDomain,
    TempFail(String),
}

/// The DNS seam. Futures, because real lookups wait on the network; no `Send` bound,
/// because each core resolves on its own thread.
pub trait Resolver {
    fn mx(&self, domain: &str) -> impl Future<Output = MxAnswer>;
    fn addresses(&self, host: &str) -> impl Future<Output = AddrAnswer>;
    /// A records only: DNS block lists answer in IPv4 (RFC 5782 §2.1), so no AAAA query.
    fn ipv4(&self, name: &str) -> impl Future<Output = AddrAnswer>;
}

/// A resolver answering from tables: for tests, and for a config-free dry run. Names are
/// compared case-insensitively without a trailing dot; an unknown name is NXDOMAIN.
#[derive(Clone, Debug, Default)]
pub struct ScriptedResolver {
    mx: std::collections::HashMap<String, MxAnswer>,
    addrs: std::collections::HashMap<String, AddrAnswer>,
    /// Every query asked, in order (`MX name` / `A name`), for tests to assert on.
    log: std::cell::RefCell<Vec<String>>,
}

fn key(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

impl ScriptedResolver {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_mx(mut self, domain: &str, answer: MxAnswer) -> Self {
        self.mx.insert(key(domain), answer);
        self
    }

    pub fn with_addrs(mut self, host: &str, answer: AddrAnswer) -> Self {
        self.addrs.insert(key(host), answer);
        self
    }

    /// The queries asked so far.
    pub fn queries(&self) -> Vec<String> {
        self.log.borrow().clone()
    }
}

impl Resolver for ScriptedResolver {
    fn mx(&self, domain: &str) -> impl Future<Output = MxAnswer> {
        self.log.borrow_mut().push(format!("MX {domain}"));
        let answer = self
            .mx
            .get(&key(domain))
            .cloned()
            .unwrap_or(MxAnswer::NxDomain);
        std::future::ready(answer)
    }

    fn addresses(&self, host: &str) -> impl Future<Output = AddrAnswer> {
        self.log.borrow_mut().push(format!("A {host}"));
        let answer = self
            .addrs
            .get(&key(host))
            .cloned()
            .unwrap_or(AddrAnswer::NxDomain);
        std::future::ready(answer)
    }

    fn ipv4(&self, name: &str) -> impl Future<Output = AddrAnswer> {
        self.log.borrow_mut().push(format!("A4 {name}"));
        let answer = match self.addrs.get(&key(name)).cloned() {
            Some(AddrAnswer::Addresses(all)) => {
                AddrAnswer::Addresses(all.into_iter().filter(IpAddr::is_ipv4).collect())
            }
            Some(other) => other,
            None => AddrAnswer::NxDomain,
        };
        std::future::ready(answer)
    }
}

/// How a failed lookup is read (see [`classify`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LookupFailure {
    NxDomain,
    NoRecords,
    Temporary(String),
}

/// Maps a hickory error: NXDOMAIN → does not exist; NOERROR with no records → no records;
/// everything else (SERVFAIL, REFUSED, timeouts, no connections, I/O) → temporary. Note
/// that hickory reports SERVFAIL as `NoRecordsFound` too, so the response code decides.
pub fn classify(err: &hickory_resolver::net::NetError) -> LookupFailure {
    use hickory_resolver::net::{DnsError, NetError};
    use hickory_resolver::proto::op::ResponseCode;
    if let NetError::Dns(DnsError::NoRecordsFound(no_records)) = err {
        match no_records.response_code {
            ResponseCode::NXDomain => return LookupFailure::NxDomain,
            ResponseCode::NoError => return LookupFailure::NoRecords,
            _ => {}
        }
    }
    LookupFailure::Temporary(err.to_string())
}

/// The resolver could not be set up (unreadable `/etc/resolv.conf`).
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the DNS resolver from the system configuration: {0}")]
pub struct ResolverInitError(#[source] hickory_resolver::net::NetError);

/// The real resolver: `hickory-resolver` on tokio, configured from `/etc/resolv.conf`
/// (name servers, timeouts, attempts) and `/etc/hosts`. Queries are made for the absolute
/// name (`domain.`), so `search`/`ndots` in resolv.conf never turn a recipient domain into
/// a local one. Build it inside the core's runtime: hickory spawns its connection tasks on
/// the current tokio runtime.
pub struct SystemResolver {
    inner: hickory_resolver::TokioResolver,
}

impl SystemResolver {
    pub fn from_system_conf() -> Result<Self, ResolverInitError> {
        Self::new(&[])
    }

    /// With `servers` (`server.dns_servers`: a local caching resolver, or a test's) instead
    /// of those in `/etc/resolv.conf`; the system's when empty.
    pub fn new(servers: &[SocketAddr]) -> Result<Self, ResolverInitError> {
        use hickory_resolver::config::{
            ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolverConfig,
        };
        use hickory_resolver::net::runtime::TokioRuntimeProvider;
        let mut builder = if servers.is_empty() {
            hickory_resolver::TokioResolver::builder_tokio().map_err(ResolverInitError)?
        } else {
            let name_servers = servers
                .iter()
                .map(|addr| {
                    // UDP first, TCP for truncated answers (RFC 7766), both on the given port.
                    let mut udp = ConnectionConfig::udp();
                    udp.port = addr.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = addr.port();
                    NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
                })
                .collect();
            hickory_resolver::TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(name_servers),
                TokioRuntimeProvider::default(),
            )
        };
        // Both families, so IPv6-only and IPv4-only MX hosts both work.
        builder.options_mut().ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        Ok(SystemResolver {
            inner: builder.build().map_err(ResolverInitError)?,
        })
    }

    /// The hickory resolver itself, for lookups this seam does not cover (the TXT, PTR and
    /// address queries of sender authentication share its cache and timeouts).
    pub fn hickory(&self) -> &hickory_resolver::TokioResolver {
        &self.inner
    }
}

fn absolute(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

fn exchange_text(name: &hickory_resolver::proto::rr::Name) -> String {
    if name.is_root() {
        ".".to_string()
    } else {
        let text = name.to_ascii();
        text.strip_suffix('.').unwrap_or(&text).to_string()
    }
}

impl Resolver for SystemResolver {
    async fn mx(&self, domain: &str) -> MxAnswer {
        match self.inner.mx_lookup(absolute(domain)).await {
            Ok(lookup) => MxAnswer::Records(
                lookup
                    .answers()
                    .iter()
                    .filter_map(|record| match &record.data {
                        RData::MX(mx) => Some(MxRecord {
                            preference: mx.preference,
                            exchange: exchange_text(&mx.exchange),
                        }),
                        _ => None,
                    })
                    .collect(),
            ),
            Err(err) => match classify(&err) {
                LookupFailure::NxDomain => MxAnswer::NxDomain,
                LookupFailure::NoRecords => MxAnswer::NoRecords,
                LookupFailure::Temporary(why) => MxAnswer::TempFail(why),
            },
        }
    }

    async fn ipv4(&self, name: &str) -> AddrAnswer {
        match self.inner.ipv4_lookup(absolute(name)).await {
            Ok(lookup) => AddrAnswer::Addresses(
                lookup
                    .answers()
                    .iter()
                    .filter_map(|record| match &record.data {
                        RData::A(a) => Some(IpAddr::V4(a.0)),
                        _ => None,
                    })
                    .collect(),
            ),
            Err(err) => match classify(&err) {
                LookupFailure::NxDomain => AddrAnswer::NxDomain,
                LookupFailure::NoRecords => AddrAnswer::NoRecords,
                LookupFailure::Temporary(why) => AddrAnswer::TempFail(why),
            },
        }
    }

    async fn addresses(&self, host: &str) -> AddrAnswer {
        match self.inner.lookup_ip(absolute(host)).await {
            Ok(lookup) => AddrAnswer::Addresses(lookup.iter().collect()),
            Err(err) => match classify(&err) {
                LookupFailure::NxDomain => AddrAnswer::NxDomain,
                LookupFailure::NoRecords => AddrAnswer::NoRecords,
                LookupFailure::Temporary(why) => AddrAnswer::TempFail(why),
            },
        }
    }
}

/// Without a system resolver (it could not be built) every lookup is a temporary failure:
/// MX mail defers, and static routes with an address still work.
impl Resolver for Option<SystemResolver> {
    async fn mx(&self, domain: &str) -> MxAnswer {
        match self {
            Some(resolver) => resolver.mx(domain).await,
            None => MxAnswer::TempFail("no DNS resolver available".into()),
        }
    }

    async fn addresses(&self, host: &str) -> AddrAnswer {
        match self {
            Some(resolver) => resolver.addresses(host).await,
            None => AddrAnswer::TempFail("no DNS resolver available".into()),
        }
    }

    async fn ipv4(&self, name: &str) -> AddrAnswer {
        match self {
            Some(resolver) => resolver.ipv4(name).await,
            None => AddrAnswer::TempFail("no DNS resolver available".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_resolver_type_checks_as_a_resolver() {
        // No lookups here (no network in tests): only that the real implementation satisfies
        // the seam the runtime uses.
        fn is_resolver<R: Resolver>() {}
        is_resolver::<SystemResolver>();
        is_resolver::<ScriptedResolver>();
    }
}
