//! `[cluster]`: several relays acting as one service. Off unless `node` is set; a single relay
//! needs no external service.
//!
//! This node's name, the node table (where each node's cluster listener and client-facing
//! listeners are), the cluster listener's mutual-TLS files, and the shared state:
//! `[cluster.redis]` (limits, membership leases) and `[cluster.postgres]` (the directory).
//! Secrets (the Redis and PostgreSQL passwords) live in files named here, never in this file,
//! so `relay check` can print the section whole.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{invalid, Interval, SectionError};

pub use super::cluster_postgres::PostgresSection;
pub use super::cluster_redis::{FailurePolicy, LimitKind, RedisSection};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// This node's name (1–32 of a-z 0-9 -); the cluster is on when it is set, and it must be
    /// one of `nodes`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The cluster listener (SMTP between nodes, mutual TLS): mail for users homed here and
    /// queues handed over by draining peers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// This node's certificate and key for the cluster listener and for connecting to peers,
    /// and the CA that signed every node's certificate (peers are trusted by it alone).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// How long a node's membership lease lasts without renewal (renewed at a third of it).
    pub lease: Interval,
    /// Every node of the cluster, this one included.
    pub nodes: Vec<NodeEntry>,
    pub redis: RedisSection,
    pub postgres: PostgresSection,
}

/// One node: where its peers and the login proxies reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
    pub name: String,
    /// Its cluster listener.
    pub cluster: SocketAddr,
    /// Its POP3 and IMAP listeners: no longer used (proxied POP3 and IMAP logins reach the
    /// home node at its cluster listener, `server::login_proxy`); accepted so that older
    /// configs still load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pop3: Option<SocketAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imap: Option<SocketAddr>,
    /// Its web listener: no longer used either (the requests of a web session proxied to
    /// it reach it at its cluster listener, inside the mutual TLS, `server::web_proxy`);
    /// accepted so that older configs still load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web: Option<SocketAddr>,
}

/// A node name: 1–32 of a-z, 0-9 and '-' (it appears in Redis keys, SMTP parameters and
/// users-file lines).
pub fn valid_node_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl ClusterSection {
    /// Whether this relay is a cluster node.
    pub fn enabled(&self) -> bool {
        self.node.is_some()
    }

    /// The node entry of `name`.
    pub fn node_entry(&self, name: &str) -> Option<&NodeEntry> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// This node's entry (`None` without a cluster).
    pub fn this_node(&self) -> Option<&NodeEntry> {
        self.node.as_deref().and_then(|name| self.node_entry(name))
    }

    pub fn check(&self) -> Result<(), SectionError> {
        for node in &self.nodes {
            if !valid_node_name(&node.name) {
                return Err(invalid(
                    "cluster.nodes",
                    format!(
                        "`{}` is not a node name (1-32 of a-z 0-9 -)",
                        node.name.escape_debug()
                    ),
                ));
            }
            if self.nodes.iter().filter(|n| n.name == node.name).count() > 1 {
                return Err(invalid(
                    "cluster.nodes",
                    format!("node `{}` is listed twice", node.name),
                ));
            }
        }
        let Some(node) = &self.node else {
            return Ok(());
        };
        if !valid_node_name(node) {
            return Err(invalid("cluster.node", "a node name is 1-32 of a-z 0-9 -"));
        }
        if self.node_entry(node).is_none() {
            return Err(invalid(
                "cluster.node",
                format!("`{node}` is not one of cluster.nodes"),
            ));
        }
        if self.listen.is_some() && (self.cert.is_none() || self.key.is_none() || self.ca.is_none())
        {
            return Err(invalid(
                "cluster.listen",
                "the cluster listener is mutual TLS: set cluster.cert, cluster.key and cluster.ca",
            ));
        }
        if self.lease.0.as_secs() < 2 {
            return Err(invalid("cluster.lease", "must be at least 2s"));
        }
        self.redis.check()?;
        self.postgres.check()?;
        Ok(())
    }
}

impl Default for ClusterSection {
    fn default() -> Self {
        ClusterSection {
            node: None,
            listen: None,
            cert: None,
            key: None,
            ca: None,
            lease: Interval(std::time::Duration::from_secs(15)),
            nodes: Vec::new(),
            redis: RedisSection::default(),
            postgres: PostgresSection::default(),
        }
    }
}
