//! This node's cluster services, started with the server: the Redis client, the limits
//! seam ([`Limits`]) and the membership lease. Without `[cluster]` and `[cluster.redis]
//! url`, nothing is started and the limits stay local.

use std::sync::Mutex;

use crate::config::cluster::ClusterSection;

use super::limits::{Limits, RedisLimits};
use super::membership::{Figures, Membership};
use super::redis::{Redis, RedisError, RedisMetrics};

pub struct Node {
    pub limits: Limits,
    redis: Option<Redis>,
    membership: Mutex<Option<Membership>>,
}

impl Node {
    /// A relay on its own: local limits, no lease.
    pub fn local() -> Node {
        Node {
            limits: Limits::Local,
            redis: None,
            membership: Mutex::new(None),
        }
    }

    /// Starts the Redis client and the lease when `section` names this node and a Redis.
    pub fn start(
        section: &ClusterSection,
        metrics: RedisMetrics,
        figures: Figures,
    ) -> Result<Node, RedisError> {
        let (Some(node), Some(_)) = (&section.node, &section.redis.url) else {
            return Ok(Node::local());
        };
        let redis = Redis::start(&section.redis, metrics)?;
        let membership = Membership::start(redis.clone(), node, section.lease.0, figures);
        let limits = Limits::Redis(RedisLimits::new(
            redis.clone(),
            membership.instance().to_string(),
            &section.redis,
        ));
        Ok(Node {
            limits,
            redis: Some(redis),
            membership: Mutex::new(Some(membership)),
        })
    }

    pub fn redis(&self) -> Option<&Redis> {
        self.redis.as_ref()
    }

    /// Gives the lease back (a clean shutdown); later calls do nothing.
    pub fn stop(&self) {
        let membership = self
            .membership
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(membership) = membership {
            membership.stop();
        }
    }
}
