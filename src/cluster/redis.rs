//! The relay's Redis client: one thread with its own tokio runtime owns a multiplexed
//! connection (redis-rs's `ConnectionManager`, which reconnects on its own), and a cloneable
//! [`Redis`] handle sends it requests over a bounded channel and awaits a oneshot answer.
//! The handle works from any runtime (the tokio-uring shards, the epoll fallback's
//! current_thread runtimes, a CLI's runtime): the shards never touch a Redis socket.
//!
//! Every call is bounded by `cluster.redis.timeout`, counted from the caller's side (queueing
//! on the channel included). Requests in flight at the same time go out on the one
//! connection as a pipeline (the multiplexer writes what is queued in one go), so a busy node
//! pays one round trip per batch, not per decision.
//!
//! Health: a failed or late call counts in `relay_cluster_redis_failures_total`; the first
//! failure of an outage and the first success after it are logged once each (never per
//! decision), and `relay_cluster_redis_up` says which side of that the node is on.

use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, Value};
use tokio::sync::{mpsc, oneshot};

use crate::config::cluster::RedisSection;

/// Requests queued for the Redis thread at most; past it a call fails at once (the failure
/// policy decides) instead of growing a queue behind a slow server.
pub const QUEUE_MAX: usize = 16_384;

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("cluster.redis.url is not set")]
    NoUrl,
    #[error("cluster.redis.url: {0}")]
    Url(String),
    #[error("cannot read cluster.redis.password_file {path}: {error}")]
    PasswordFile { path: String, error: std::io::Error },
    #[error("cannot start the Redis thread: {0}")]
    Thread(std::io::Error),
    #[error("no answer from Redis within {0:?}")]
    Timeout(Duration),
    #[error("the Redis request queue is full")]
    Busy,
    #[error("the Redis thread has stopped")]
    Stopped,
    #[error("Redis: {0}")]
    Server(String),
    #[error("unexpected answer from Redis: {0}")]
    Answer(String),
}

/// One request for the Redis thread.
enum Op {
    /// EVALSHA, with SCRIPT LOAD and a retry when the server does not know the script yet
    /// (after a restart).
    Script {
        script: Arc<redis::Script>,
        keys: Vec<String>,
        args: Vec<String>,
    },
    Pipeline(redis::Pipeline),
}

struct Request {
    op: Op,
    reply: oneshot::Sender<redis::RedisResult<Value>>,
}

/// The handles of `relay_cluster_redis_failures_total` and `relay_cluster_redis_up`.
#[derive(Clone, Debug, Default)]
pub struct RedisMetrics {
    pub failures: Counter,
    pub up: Gauge,
}

const UNKNOWN: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;
/// Failed before it ever answered: its first answer is "connected", not "again".
const NEVER_UP: u8 = 3;

/// Whether Redis answered the last call, with the once-per-outage log.
#[derive(Debug)]
struct Health {
    state: AtomicU8,
    metrics: RedisMetrics,
}

impl Health {
    fn succeeded(&self) {
        if let Some(line) = self.up_again() {
            tracing::info!(target: "relay::cluster", "{line}");
        }
        self.metrics.up.set(1);
    }

    /// Marks Redis up; the line to log when that is news.
    fn up_again(&self) -> Option<&'static str> {
        match self.state.swap(UP, Ordering::Relaxed) {
            DOWN => Some("Redis answers again: shared limits apply again"),
            UNKNOWN | NEVER_UP => Some("Redis connected"),
            _ => None,
        }
    }

    fn failed(&self, error: &RedisError) {
        self.metrics.failures.inc();
        self.metrics.up.set(0);
        let before = self.state.load(Ordering::Relaxed);
        let next = if matches!(before, UNKNOWN | NEVER_UP) {
            NEVER_UP
        } else {
            DOWN
        };
        if self.state.swap(next, Ordering::Relaxed) != next {
            tracing::warn!(target: "relay::cluster", %error, "Redis unavailable: limits follow cluster.redis.failure until it answers (logged once per outage)");
        }
    }
}

/// A cloneable handle on the Redis thread.
#[derive(Clone)]
pub struct Redis {
    tx: mpsc::Sender<Request>,
    timeout: Duration,
    health: Arc<Health>,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The password in `path`: its first line (a trailing newline is not part of it).
fn read_password(path: &Path) -> Result<String, RedisError> {
    let text = std::fs::read_to_string(path).map_err(|error| RedisError::PasswordFile {
        path: path.display().to_string(),
        error,
    })?;
    Ok(text.lines().next().unwrap_or_default().to_string())
}

impl Redis {
    /// Starts the Redis thread for `[cluster.redis]`. It connects lazily: a Redis that is
    /// down at start is a failure of the first calls, not of the start.
    pub fn start(section: &RedisSection, metrics: RedisMetrics) -> Result<Redis, RedisError> {
        let url = section.url.as_deref().ok_or(RedisError::NoUrl)?;
        let mut info = url
            .into_connection_info()
            .map_err(|e| RedisError::Url(e.to_string()))?;
        if let Some(path) = &section.password_file {
            let password = read_password(path)?;
            info = info
                .clone()
                .set_redis_settings(info.redis_settings().clone().set_password(password));
        }
        let client = redis::Client::open(info).map_err(|e| RedisError::Url(e.to_string()))?;
        let timeout = section.timeout.0;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1));
        let (tx, rx) = mpsc::channel(QUEUE_MAX);
        let (runtime_tx, runtime_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("relay-redis".into())
            .spawn(move || serve(client, config, rx, runtime_tx))
            .map_err(RedisError::Thread)?;
        let runtime = runtime_rx
            .recv()
            .map_err(|_| RedisError::Stopped)?
            .map_err(RedisError::Thread)?;
        Ok(Redis {
            tx,
            timeout,
            health: Arc::new(Health {
                state: AtomicU8::new(UNKNOWN),
                metrics,
            }),
            runtime,
        })
    }

    /// The Redis thread's runtime, for background work (lease renewal) next to the
    /// connection.
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether the last call was answered.
    pub fn is_up(&self) -> bool {
        self.health.state.load(Ordering::Relaxed) == UP
    }

    /// Runs `script` (EVALSHA, loading it once when the server lacks it).
    pub async fn script(
        &self,
        script: &Arc<redis::Script>,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Value, RedisError> {
        self.call(Op::Script {
            script: Arc::clone(script),
            keys,
            args,
        })
        .await
    }

    /// Sends the commands of `pipeline` in one round trip.
    pub async fn pipeline(&self, pipeline: redis::Pipeline) -> Result<Value, RedisError> {
        self.call(Op::Pipeline(pipeline)).await
    }

    /// Queues a script without waiting for its answer (releases: the caller has nothing to
    /// decide). A failure still counts in the metrics.
    pub fn script_detached(
        &self,
        script: &Arc<redis::Script>,
        keys: Vec<String>,
        args: Vec<String>,
    ) {
        let handle = self.clone();
        let script = Arc::clone(script);
        self.runtime.spawn(async move {
            let _ = handle.script(&script, keys, args).await;
        });
    }

    async fn call(&self, op: Op) -> Result<Value, RedisError> {
        let result = self.exchange(op).await;
        match &result {
            Ok(_) => self.health.succeeded(),
            Err(error) => self.health.failed(error),
        }
        result
    }

    async fn exchange(&self, op: Op) -> Result<Value, RedisError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .try_send(Request { op, reply })
            .map_err(|error| match error {
                mpsc::error::TrySendError::Full(_) => RedisError::Busy,
                mpsc::error::TrySendError::Closed(_) => RedisError::Stopped,
            })?;
        match tokio::time::timeout(self.timeout, answer).await {
            Err(_) => Err(RedisError::Timeout(self.timeout)),
            Ok(Err(_)) => Err(RedisError::Stopped),
            Ok(Ok(Err(error))) => Err(RedisError::Server(error.to_string())),
            Ok(Ok(Ok(value))) => Ok(value),
        }
    }
}

/// The Redis thread: a current_thread runtime running one task per request on clones of
/// the one multiplexed connection. It ends when every handle is gone.
fn serve(
    client: redis::Client,
    config: ConnectionManagerConfig,
    mut rx: mpsc::Receiver<Request>,
    runtime_tx: std::sync::mpsc::Sender<std::io::Result<tokio::runtime::Handle>>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            let _ = runtime_tx.send(Err(error));
            return;
        }
    };
    let _ = runtime_tx.send(Ok(runtime.handle().clone()));
    runtime.block_on(async move {
        let manager = match ConnectionManager::new_lazy_with_config(client, config) {
            Ok(manager) => manager,
            Err(error) => {
                tracing::error!(target: "relay::cluster", %error, "cannot set up the Redis connection");
                return;
            }
        };
        while let Some(request) = rx.recv().await {
            let mut connection = manager.clone();
            tokio::spawn(async move {
                let result = match request.op {
                    Op::Script { script, keys, args } => {
                        let mut invocation = script.prepare_invoke();
                        for key in keys {
                            invocation.key(key);
                        }
                        for arg in args {
                            invocation.arg(arg);
                        }
                        invocation.invoke_async(&mut connection).await
                    }
                    Op::Pipeline(pipeline) => pipeline.query_async(&mut connection).await,
                };
                // The caller may have given up (timeout): nothing to tell then.
                let _ = request.reply.send(result);
            });
        }
    });
}

/// An integer from a script's answer.
pub fn int(value: &Value) -> Result<i64, RedisError> {
    match value {
        Value::Int(n) => Ok(*n),
        other => Err(RedisError::Answer(format!("{other:?}"))),
    }
}

/// The integers of an array answer.
pub fn ints(value: &Value) -> Result<Vec<i64>, RedisError> {
    match value {
        Value::Array(items) => items.iter().map(int).collect(),
        other => Err(RedisError::Answer(format!("{other:?}"))),
    }
}

#[cfg(test)]
mod health_tests {
    use super::*;

    #[test]
    fn the_first_answer_is_connected_even_after_a_failed_first_contact() {
        let health = Health {
            state: AtomicU8::new(UNKNOWN),
            metrics: RedisMetrics::default(),
        };
        health.failed(&RedisError::Busy);
        health.failed(&RedisError::Busy);
        assert_eq!(health.up_again(), Some("Redis connected"));
        assert_eq!(health.up_again(), None);
        health.failed(&RedisError::Busy);
        assert_eq!(
            health.up_again(),
            Some("Redis answers again: shared limits apply again")
        );
        let fresh = Health {
            state: AtomicU8::new(UNKNOWN),
            metrics: RedisMetrics::default(),
        };
        assert_eq!(fresh.up_again(), Some("Redis connected"));
    }
}
