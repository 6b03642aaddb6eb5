//! What `relay cluster status` and `relay stat --cluster` show: every node of the config's
//! node table with its lease (up or down, how long ago it was renewed) and the figures it
//! published, and their sum. Read from Redis in one round trip.

use std::fmt::{self, Write as _};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::config::cluster::ClusterSection;

use super::membership::{self, Lease, NodeFigures};
use super::redis::{Redis, RedisError, RedisMetrics};

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("this config has no [cluster] node table")]
    NoCluster,
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error("cannot start a runtime: {0}")]
    Runtime(std::io::Error),
}

/// One node as the leases show it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    pub node: String,
    pub up: bool,
    /// Milliseconds since the lease was last renewed (absent when down).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease: Option<Lease>,
}

/// Reads every node's lease (a short-lived Redis client of its own).
pub fn read(section: &ClusterSection) -> Result<Vec<NodeStatus>, StatusError> {
    if section.nodes.is_empty() {
        return Err(StatusError::NoCluster);
    }
    let redis = Redis::start(&section.redis, RedisMetrics::default())?;
    let names: Vec<String> = section.nodes.iter().map(|n| n.name.clone()).collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(StatusError::Runtime)?;
    let leases = runtime.block_on(membership::leases(&redis, &names))?;
    let now = SystemTime::now();
    Ok(leases
        .into_iter()
        .map(|(node, lease)| NodeStatus {
            node,
            up: lease.is_some(),
            age_ms: lease
                .as_ref()
                .map(|l| u64::try_from(membership::age(l, now).as_millis()).unwrap_or(u64::MAX)),
            lease,
        })
        .collect())
}

/// The sum of the figures of the nodes that are up.
pub fn total(nodes: &[NodeStatus]) -> NodeFigures {
    let mut total = NodeFigures::default();
    for lease in nodes.iter().filter_map(|n| n.lease.as_ref()) {
        total.add(&lease.figures);
    }
    total
}

fn age(ms: Option<u64>) -> String {
    match ms {
        Some(ms) => format!("{:.1}s", Duration::from_millis(ms).as_secs_f64()),
        None => "-".into(),
    }
}

/// `relay cluster status`: one line per node.
pub fn render_status(nodes: &[NodeStatus]) -> Result<String, fmt::Error> {
    let mut out = String::new();
    writeln!(
        out,
        "{:<16} {:<5} {:>8} {:>8} {:>6} {:>6} {:>6}  VERSION",
        "NODE", "STATE", "RENEWED", "QUEUE", "SMTP", "POP3", "IMAP"
    )?;
    for node in nodes {
        let state = if node.up { "up" } else { "down" };
        match &node.lease {
            Some(lease) => writeln!(
                out,
                "{:<16} {:<5} {:>8} {:>8} {:>6} {:>6} {:>6}  {}",
                node.node,
                state,
                age(node.age_ms),
                lease.figures.queue,
                lease.figures.smtp_open,
                lease.figures.pop3_open,
                lease.figures.imap_open,
                lease.version
            )?,
            None => writeln!(
                out,
                "{:<16} {:<5} {:>8} {:>8} {:>6} {:>6} {:>6}  -",
                node.node, state, "-", "-", "-", "-", "-"
            )?,
        }
    }
    Ok(out)
}

/// `relay stat --cluster`: per node figures and the cluster's sum.
pub fn render_stat(nodes: &[NodeStatus]) -> Result<String, fmt::Error> {
    let mut out = String::new();
    let line = |out: &mut String, name: &str, f: &NodeFigures| {
        writeln!(
            out,
            "{:<16} {:>10} {:>10} {:>8} {:>6} {:>6} {:>6}",
            name, f.messages, f.deliveries, f.queue, f.smtp_open, f.pop3_open, f.imap_open
        )
    };
    writeln!(
        out,
        "{:<16} {:>10} {:>10} {:>8} {:>6} {:>6} {:>6}",
        "NODE", "ACCEPTED", "DELIVERIES", "QUEUE", "SMTP", "POP3", "IMAP"
    )?;
    for node in nodes {
        match &node.lease {
            Some(lease) => line(&mut out, &node.node, &lease.figures)?,
            None => writeln!(out, "{:<16} down", node.node)?,
        }
    }
    let up = nodes.iter().filter(|n| n.up).count();
    line(
        &mut out,
        &format!("cluster ({up}/{} up)", nodes.len()),
        &total(nodes),
    )?;
    Ok(out)
}

/// `--json` of `relay stat --cluster`.
#[derive(Debug, Serialize)]
pub struct ClusterStat<'a> {
    pub nodes: &'a [NodeStatus],
    pub total: NodeFigures,
}
