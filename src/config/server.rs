//! `[server]`: our name, the shards, the I/O engine, connection limits, how IPv6 clients are
//! grouped, the password-hash pool, the drain deadline and the name servers.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::{defaults, invalid, valid_domain, Interval, IoEngine, SectionError};

/// The queue id keeps 8 bits for the shard.
pub const MAX_SHARDS: usize = 256;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Our name in greetings and Received headers; the system hostname when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Shards (pinned threads); every available core when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cores: Option<usize>,
    pub io: IoEngine,
    pub drain_timeout: Interval,
    pub connections_per_core_max: usize,
    pub connections_per_ip_max: usize,
    /// A shard serving more connections than another hands each new one to the least busy
    /// shard (the kernel spreads them by a hash, which leaves a few long ones unevenly).
    pub spread_connections: bool,
    /// IPv6 clients are counted per prefix of this length in every per-client limit
    /// (connections, message rate, login failures); IPv4 clients per address.
    pub client_ipv6_prefix: u8,
    /// Threads checking password hashes for SMTP AUTH and POP3, shared by all shards and not
    /// pinned to their cores; `min(2, cores)` when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_hash_threads: Option<usize>,
    /// Password checks waiting for a hash thread; past this, logins get a temporary failure
    /// (`454 4.7.0`, `-ERR [SYS/TEMP]`) without being checked.
    pub auth_hash_queue_max: usize,
    /// Name servers for MX and block-list lookups instead of `/etc/resolv.conf`'s (e.g. a
    /// local caching resolver: public resolvers are refused by most block lists).
    pub dns_servers: Vec<SocketAddr>,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            hostname: None,
            cores: None,
            io: IoEngine::Auto,
            drain_timeout: defaults::DRAIN_TIMEOUT,
            connections_per_core_max: defaults::CONNECTIONS_PER_CORE_MAX,
            connections_per_ip_max: defaults::CONNECTIONS_PER_IP_MAX,
            spread_connections: true,
            client_ipv6_prefix: defaults::CLIENT_IPV6_PREFIX,
            auth_hash_threads: None,
            auth_hash_queue_max: defaults::AUTH_HASH_QUEUE_MAX,
            dns_servers: Vec::new(),
        }
    }
}

impl ServerSection {
    /// Checks each value and the relations between them.
    pub fn check(&self) -> Result<(), SectionError> {
        if let Some(cores) = self.cores {
            if !(1..=MAX_SHARDS).contains(&cores) {
                return Err(invalid(
                    "server.cores",
                    format!("must be between 1 and {MAX_SHARDS} (queue ids carry an 8-bit shard)"),
                ));
            }
        }
        if let Some(name) = &self.hostname {
            if !valid_domain(name) {
                return Err(invalid(
                    "server.hostname",
                    format!("`{name}` is not a valid host name (letters, digits, '-' and '.')"),
                ));
            }
        }
        if self.connections_per_core_max == 0 || self.connections_per_ip_max == 0 {
            return Err(invalid(
                "server.connections_per_core_max",
                "connections_per_core_max and connections_per_ip_max must be at least 1",
            ));
        }
        if !(16..=128).contains(&self.client_ipv6_prefix) {
            return Err(invalid(
                "server.client_ipv6_prefix",
                "must be between 16 and 128 (64 groups one subscriber's /64)",
            ));
        }
        if let Some(threads) = self.auth_hash_threads {
            if !(1..=64).contains(&threads) {
                return Err(invalid(
                    "server.auth_hash_threads",
                    "must be between 1 and 64 (each running check takes 19 MiB)",
                ));
            }
        }
        if !(1..=65_536).contains(&self.auth_hash_queue_max) {
            return Err(invalid(
                "server.auth_hash_queue_max",
                "must be between 1 and 65536",
            ));
        }
        if self.drain_timeout.0 > std::time::Duration::from_secs(3600) {
            return Err(invalid("server.drain_timeout", "must be at most 1h"));
        }
        Ok(())
    }

    /// Our name: the configured one, else the system's.
    pub fn hostname(&self) -> String {
        match &self.hostname {
            Some(name) => name.clone(),
            None => gethostname::gethostname()
                .into_string()
                .ok()
                .filter(|name| valid_domain(name))
                .unwrap_or_else(|| "localhost".to_string()),
        }
    }

    /// Password-hash threads: the configured count, else `min(2, cores)`.
    pub fn auth_hash_threads(&self) -> usize {
        self.auth_hash_threads
            .unwrap_or_else(|| self.cores().min(defaults::AUTH_HASH_THREADS_MAX))
    }

    /// Shards to run: the configured count, else one per available core.
    pub fn cores(&self) -> usize {
        self.cores.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .min(MAX_SHARDS)
        })
    }
}
