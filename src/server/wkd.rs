//! The Web Key Directory client (draft-koch-openpgp-webkey-service §3.1): a sender's key by
//! HTTPS from its domain, the advanced method (`openpgpkey.` host) first and the direct one
//! only when the advanced host does not resolve or accepts no connection, as the draft
//! asks; the whole lookup within `openpgp.wkd_timeout`; answers (a key, or none) kept for
//! `openpgp.wkd_cache_ttl` in a table shared by every core, bounded in entries.
//!
//! Exposure: the key comes from a remote server; it is at most [`KEY_MAX`] bytes and is
//! checked by `mailcrypt::openpgp::parse_key` for the sender's address before use.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::mailcrypt::{openpgp, wkd};
use crate::net::dns::{AddrAnswer, Resolver};
use crate::net::https_get::{self, GetError};

/// Largest key accepted from a directory.
pub const KEY_MAX: usize = 64 * 1024;

/// What a lookup found.
#[derive(Clone, Debug)]
pub enum Lookup {
    Found(openpgp::Key),
    /// The directory has no usable key for the address (404, a key for someone else, or no
    /// directory at all).
    NotFound(String),
    /// Try again later (timeout, server error, network failure); never cached.
    Failed(String),
}

/// The shared client: settings, trust anchors and the answer cache.
pub struct WkdClient {
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
    ttl: Duration,
    max: usize,
    /// `openpgp.wkd_resolve`: when not empty, the only hosts there are.
    resolve: BTreeMap<String, SocketAddr>,
    cache: Mutex<HashMap<String, (Instant, Lookup)>>,
}

/// Why one method gave no answer.
enum Miss {
    /// The host does not resolve or accepts no connection: the next method may be tried.
    NoHost(String),
    /// An answer that settles it: no key here.
    NotFound(String),
    Failed(String),
}

impl WkdClient {
    pub fn new(
        tls: Arc<rustls::ClientConfig>,
        timeout: Duration,
        ttl: Duration,
        max: usize,
        resolve: BTreeMap<String, SocketAddr>,
    ) -> WkdClient {
        WkdClient {
            tls,
            timeout,
            ttl,
            max: max.max(1),
            resolve,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The key of `address` from its domain's directory (cached).
    pub async fn lookup<R: Resolver>(
        &self,
        resolver: &R,
        address: &str,
        now: SystemTime,
    ) -> Lookup {
        let key = address.to_ascii_lowercase();
        if let Some(hit) = self.cached(&key) {
            return hit;
        }
        let found =
            match tokio::time::timeout(self.timeout, self.fetch(resolver, address, now)).await {
                Ok(found) => found,
                Err(_) => Lookup::Failed(format!("WKD gave no answer within {:?}", self.timeout)),
            };
        if !matches!(found, Lookup::Failed(_)) {
            self.remember(key, found.clone());
        }
        found
    }

    fn cached(&self, key: &str) -> Option<Lookup> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let (at, lookup) = cache.get(key)?;
        (at.elapsed() < self.ttl).then(|| lookup.clone())
    }

    fn remember(&self, key: String, lookup: Lookup) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= self.max && !cache.contains_key(&key) {
            // Expired entries first; if none, the oldest one.
            cache.retain(|_, (at, _)| at.elapsed() < self.ttl);
            if cache.len() >= self.max {
                if let Some(oldest) = cache
                    .iter()
                    .min_by_key(|(_, (at, _))| *at)
                    .map(|(k, _)| k.clone())
                {
                    cache.remove(&oldest);
                }
            }
        }
        cache.insert(key, (Instant::now(), lookup));
    }

    async fn fetch<R: Resolver>(&self, resolver: &R, address: &str, now: SystemTime) -> Lookup {
        let Some(urls) = wkd::urls(address) else {
            return Lookup::NotFound("not an address".into());
        };
        let mut last = String::new();
        for url in urls {
            match self.method(resolver, &url, address, now).await {
                Ok(key) => return Lookup::Found(key),
                Err(Miss::NoHost(why)) => last = why,
                Err(Miss::NotFound(why)) => return Lookup::NotFound(why),
                Err(Miss::Failed(why)) => return Lookup::Failed(why),
            }
        }
        Lookup::NotFound(last)
    }

    /// One method: resolve, connect (each address in turn), GET, parse.
    async fn method<R: Resolver>(
        &self,
        resolver: &R,
        url: &str,
        address: &str,
        now: SystemTime,
    ) -> Result<openpgp::Key, Miss> {
        let Some(rest) = url.strip_prefix("https://") else {
            return Err(Miss::Failed(format!("not an HTTPS URL: {url}")));
        };
        let (host, target) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let addrs: Vec<SocketAddr> = if self.resolve.is_empty() {
            match resolver.addresses(host).await {
                AddrAnswer::Addresses(ips) => {
                    ips.into_iter().map(|ip| SocketAddr::new(ip, 443)).collect()
                }
                AddrAnswer::NxDomain | AddrAnswer::NoRecords => Vec::new(),
                AddrAnswer::TempFail(why) => {
                    return Err(Miss::Failed(format!("resolving {host}: {why}")))
                }
            }
        } else {
            self.resolve.get(host).copied().into_iter().collect()
        };
        if addrs.is_empty() {
            return Err(Miss::NoHost(format!("{host} does not resolve")));
        }
        let mut refused = String::new();
        for addr in addrs {
            match https_get::get(Arc::clone(&self.tls), addr, host, target, KEY_MAX).await {
                Ok(response) => return answer(response, host, address, now),
                Err(error @ GetError::Connect(..)) => refused = error.to_string(),
                Err(error) => return Err(Miss::Failed(format!("{host}: {error}"))),
            }
        }
        Err(Miss::NoHost(refused))
    }
}

/// What one directory's answer means.
fn answer(
    response: https_get::Response,
    host: &str,
    address: &str,
    now: SystemTime,
) -> Result<openpgp::Key, Miss> {
    match response.status {
        200 => openpgp::parse_key(&response.body, &[address.to_ascii_lowercase()], now)
            .map_err(|e| Miss::NotFound(format!("{host}: the key is not usable: {e}"))),
        404 | 410 => Err(Miss::NotFound(format!("{host} has no key for the address"))),
        status if status >= 500 => Err(Miss::Failed(format!("{host} answered {status}"))),
        status => Err(Miss::NotFound(format!("{host} answered {status}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(ttl: Duration, max: usize) -> WkdClient {
        let tls = crate::net::tls::ClientTls::load(None).unwrap().verified();
        WkdClient::new(tls, Duration::from_secs(1), ttl, max, BTreeMap::new())
    }

    fn none(why: &str) -> Lookup {
        Lookup::NotFound(why.into())
    }

    #[test]
    fn the_cache_is_bounded_and_expires() {
        let wkd = client(Duration::from_secs(60), 2);
        wkd.remember("a@x".into(), none("a"));
        std::thread::sleep(Duration::from_millis(2));
        wkd.remember("b@x".into(), none("b"));
        std::thread::sleep(Duration::from_millis(2));
        wkd.remember("c@x".into(), none("c"));
        assert!(wkd.cached("a@x").is_none(), "the oldest went first");
        assert!(matches!(wkd.cached("b@x"), Some(Lookup::NotFound(w)) if w == "b"));
        assert!(wkd.cached("c@x").is_some());
        let wkd = client(Duration::ZERO, 2);
        wkd.remember("a@x".into(), none("a"));
        assert!(wkd.cached("a@x").is_none(), "expired at once");
    }

    #[test]
    fn answers_are_read_by_status() {
        let now = SystemTime::now();
        let response = |status, body: &[u8]| https_get::Response {
            status,
            body: body.to_vec(),
        };
        assert!(matches!(
            answer(response(404, b""), "h", "a@x", now),
            Err(Miss::NotFound(_))
        ));
        assert!(matches!(
            answer(response(503, b""), "h", "a@x", now),
            Err(Miss::Failed(_))
        ));
        assert!(matches!(
            answer(response(200, b"not a key"), "h", "a@x", now),
            Err(Miss::NotFound(_))
        ));
    }

    #[test]
    fn unmapped_hosts_do_not_resolve_when_a_table_is_set() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let tls = crate::net::tls::ClientTls::load(None).unwrap().verified();
        let mut table = BTreeMap::new();
        table.insert("elsewhere.test".to_string(), "127.0.0.1:1".parse().unwrap());
        let wkd = WkdClient::new(
            tls,
            Duration::from_secs(5),
            Duration::from_secs(60),
            10,
            table,
        );
        let resolver = crate::net::dns::ScriptedResolver::new();
        let found = runtime.block_on(wkd.lookup(&resolver, "a@example.test", SystemTime::now()));
        assert!(matches!(found, Lookup::NotFound(_)), "{found:?}");
        // Kept as a negative answer.
        assert!(matches!(
            wkd.cached("a@example.test"),
            Some(Lookup::NotFound(_))
        ));
    }
}
