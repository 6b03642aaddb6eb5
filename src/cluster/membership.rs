//! Membership: each node keeps a lease in Redis, `relay:node:NAME`, a JSON [`Lease`] (name,
//! instance, start, version, the node's figures) expiring after `cluster.lease` and renewed
//! every third of it, with its instance's liveness key `relay:instance:ID` beside it (the
//! connection semaphores of [`super::limits`] drop the counts of instances whose key is gone).
//! A clean shutdown deletes both; a crashed node's expire. A node without a live lease is
//! down.
//!
//! Readers ([`leases`], [`live_nodes`]) take the node names from the config's node table and
//! read every lease in one pipeline.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::limits::INSTANCE_PREFIX;
use super::redis::{Redis, RedisError};

/// The figures a node publishes in its lease (summed by `relay stat --cluster`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeFigures {
    /// Recipients in the outbound queue.
    pub queue: i64,
    pub smtp_open: i64,
    pub pop3_open: i64,
    pub imap_open: i64,
    /// SMTP transactions queued (accepted) since start.
    pub messages: u64,
    /// Outbound delivery attempts since start.
    pub deliveries: u64,
}

impl NodeFigures {
    pub fn add(&mut self, other: &NodeFigures) {
        self.queue += other.queue;
        self.smtp_open += other.smtp_open;
        self.pop3_open += other.pop3_open;
        self.imap_open += other.imap_open;
        self.messages += other.messages;
        self.deliveries += other.deliveries;
    }
}

/// A node's lease as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub node: String,
    pub instance: String,
    /// Unix seconds.
    pub started: u64,
    /// Unix milliseconds of the last renewal.
    pub renewed: u64,
    pub version: String,
    #[serde(default)]
    pub figures: NodeFigures,
}

fn node_key(node: &str) -> String {
    format!("relay:node:{node}")
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// What the running node asks for its figures at each renewal.
pub type Figures = Arc<dyn Fn() -> NodeFigures + Send + Sync>;

/// This node's registration; [`Membership::stop`] deletes its lease.
pub struct Membership {
    redis: Redis,
    node: String,
    instance: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Membership {
    /// Registers `node` and renews its lease every `lease / 3` on the Redis thread. Redis
    /// down at start is not an error: the renewals go on trying.
    pub fn start(redis: Redis, node: &str, lease: Duration, figures: Figures) -> Membership {
        let started = SystemTime::now();
        let instance = format!("{node}-{}-{}", unix_ms(started), std::process::id());
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel();
        let renewer = {
            let redis = redis.clone();
            let node = node.to_string();
            let instance = instance.clone();
            async move {
                let every = (lease / 3).max(Duration::from_millis(100));
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = &mut stop_rx => return,
                    }
                    let record = Lease {
                        node: node.clone(),
                        instance: instance.clone(),
                        started: unix_ms(started) / 1000,
                        renewed: unix_ms(SystemTime::now()),
                        version: env!("CARGO_PKG_VERSION").to_string(),
                        figures: figures(),
                    };
                    let Ok(json) = serde_json::to_string(&record) else {
                        continue;
                    };
                    let ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
                    let mut pipe = redis::pipe();
                    pipe.cmd("SET")
                        .arg(node_key(&node))
                        .arg(json)
                        .arg("PX")
                        .arg(ms);
                    pipe.cmd("SET")
                        .arg(format!("{INSTANCE_PREFIX}{instance}"))
                        .arg(&node)
                        .arg("PX")
                        .arg(ms);
                    // A failure is counted and logged by the client; the next tick retries.
                    let _ = redis.pipeline(pipe).await;
                }
            }
        };
        let task = redis.runtime().spawn(renewer);
        tracing::info!(target: "relay::cluster", node, instance = %instance, lease = ?lease, "cluster membership lease kept in Redis");
        Membership {
            redis,
            node: node.to_string(),
            instance,
            stop: Some(stop_tx),
            task: Some(task),
        }
    }

    /// This process's instance name (node, start, pid).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Stops renewing and deletes the lease (a clean shutdown: peers see the node down at
    /// once rather than after the lease).
    pub fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let redis = self.redis.clone();
        let node = self.node.clone();
        let instance = self.instance.clone();
        let task = self.task.take();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        self.redis.runtime().spawn(async move {
            if let Some(task) = task {
                let _ = task.await;
            }
            let mut pipe = redis::pipe();
            // Only our own lease: a successor instance of this node may already hold it.
            pipe.cmd("DEL").arg(format!("{INSTANCE_PREFIX}{instance}"));
            let deleted = redis.pipeline(pipe).await;
            let current = read(&redis, std::slice::from_ref(&node)).await;
            if let Ok(leases) = current {
                if leases
                    .first()
                    .and_then(|(_, lease)| lease.as_ref())
                    .is_some_and(|lease| lease.instance == instance)
                {
                    let mut pipe = redis::pipe();
                    pipe.cmd("DEL").arg(node_key(&node));
                    let _ = redis.pipeline(pipe).await;
                }
            }
            let _ = done_tx.send(deleted.is_ok());
        });
        let wait = self.redis.timeout() * 4;
        match done_rx.recv_timeout(wait) {
            Ok(true) => {
                tracing::info!(target: "relay::cluster", node = %self.node, "cluster lease released")
            }
            _ => {
                tracing::warn!(target: "relay::cluster", node = %self.node, "cluster lease not released (Redis unavailable): it expires on its own")
            }
        }
    }
}

/// The stored lease of each of `nodes` (`None`: no live lease), in one round trip.
async fn read(redis: &Redis, nodes: &[String]) -> Result<Vec<(String, Option<Lease>)>, RedisError> {
    if nodes.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for node in nodes {
        pipe.cmd("GET").arg(node_key(node));
    }
    let answer = redis.pipeline(pipe).await?;
    let redis::Value::Array(items) = answer else {
        return Err(RedisError::Answer("leases".into()));
    };
    Ok(nodes
        .iter()
        .zip(items.iter().map(Some).chain(std::iter::repeat(None)))
        .map(|(node, item)| {
            let lease = match item {
                Some(redis::Value::BulkString(bytes)) => serde_json::from_slice(bytes).ok(),
                _ => None,
            };
            (node.clone(), lease)
        })
        .collect())
}

/// The lease of each of `nodes`, in their order (`None`: down).
pub async fn leases(
    redis: &Redis,
    nodes: &[String],
) -> Result<Vec<(String, Option<Lease>)>, RedisError> {
    read(redis, nodes).await
}

/// The names among `nodes` with a live lease.
pub async fn live_nodes(redis: &Redis, nodes: &[String]) -> Result<Vec<String>, RedisError> {
    Ok(read(redis, nodes)
        .await?
        .into_iter()
        .filter_map(|(node, lease)| lease.map(|_| node))
        .collect())
}

/// How long ago `lease` was renewed, at `now`.
pub fn age(lease: &Lease, now: SystemTime) -> Duration {
    Duration::from_millis(unix_ms(now).saturating_sub(lease.renewed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_reads_back_and_tolerates_added_fields() {
        let lease = Lease {
            node: "a".into(),
            instance: "a-1-2".into(),
            started: 10,
            renewed: 20_000,
            version: "0.1.0".into(),
            figures: NodeFigures {
                queue: 3,
                smtp_open: 1,
                ..NodeFigures::default()
            },
        };
        let json = serde_json::to_string(&lease).unwrap();
        assert_eq!(serde_json::from_str::<Lease>(&json).unwrap(), lease);
        let newer = json.replace("\"queue\":3", "\"queue\":3,\"later\":1");
        assert_eq!(serde_json::from_str::<Lease>(&newer).unwrap(), lease);
        assert_eq!(
            age(&lease, UNIX_EPOCH + Duration::from_secs(25)),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn figures_sum() {
        let mut total = NodeFigures::default();
        let one = NodeFigures {
            queue: 2,
            smtp_open: 1,
            pop3_open: 0,
            imap_open: 4,
            messages: 10,
            deliveries: 3,
        };
        total.add(&one);
        total.add(&one);
        assert_eq!((total.queue, total.imap_open, total.messages), (4, 8, 20));
    }
}
