//! The seam between the relay's limits and where they are counted: [`Limits::Local`] (the
//! default: only each node's own tables in `server::admission` and the delivery throttles
//! apply, as on a single relay) or [`Limits::Redis`] (the same node tables, and on top of
//! them one count shared by every node in Redis).
//!
//! What Redis holds, one Lua script per decision (EVALSHA: one round trip, atomic on the
//! server; decisions made at the same time by one node share a pipeline):
//! - **message rate** per client (`smtp.messages_per_ip_max` per `message_rate_window`):
//!   GCRA ([`gcra`]) on the server's clock (`TIME`), so the nodes' clocks do not matter.
//!   Exact across nodes: one decision per MAIL, so the N+1th MAIL within the burst is
//!   refused whichever node it reaches. GCRA spreads the budget (one message back every
//!   `window / N`) where the node table counts fixed windows; the node table still applies.
//! - **connections** per client (`server.connections_per_ip_max`): a leased semaphore, a
//!   hash of count per node instance; an acquire drops the counts of instances whose
//!   membership lease ([`super::membership`]) has expired, so a crashed node's slots come back
//!   within `cluster.lease`. One round trip at connect; the release at disconnect is sent
//!   without waiting. Exact, with one bounded drift: an acquire that reached Redis after its
//!   caller's timeout counts until that node restarts (at most one slot per such timeout).
//! - **login failures** per client and protocol (`*.auth_failures_per_ip_max` per
//!   `auth_failure_window`): a counter with the window as its expiry, read before the
//!   password check and raised after a failure; a success clears it. Attempts in flight
//!   and the per-user delays stay per node.
//!
//! - **destination throttles** (`delivery.destination_messages_per_minute`,
//!   `destination_connections_max`): the same GCRA per destination (`relay:dest:rate:<key>`,
//!   with the node table's burst: a tenth of the rate, at least one), asked by the delivery
//!   worker before each message, and the same leased semaphore per destination
//!   (`relay:dest:conn:<key>`), held by a worker while its connection is open. A refusal
//!   puts the entry back without an attempt (`queue::scheduler::Scheduler::throttled`). The
//!   node's own per-destination limits in the queue's scheduler still apply.
//!
//! Redis slow or down: each decision waits at most `cluster.redis.timeout`, then follows
//! `cluster.redis.failure` (`open`: admit, the node's own tables still apply; `closed`:
//! refuse with a temporary error), with a metric and one log line per outage
//! ([`super::redis`]). Keys start with `relay:`; clients are named by their table key (IPv4
//! address or IPv6 prefix, as the node tables group them).

use std::sync::Arc;
use std::time::Duration;

use crate::config::cluster::{FailurePolicy, LimitKind, RedisSection};

use super::redis::{int, ints, Redis, RedisError};

/// A shared decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Admit,
    /// Over the shared limit.
    Refuse,
    /// Redis did not answer and `cluster.redis.failure = "closed"`.
    Unavailable,
}

impl Verdict {
    pub fn admits(self) -> bool {
        self == Verdict::Admit
    }
}

/// The seam: where the limits shared by the nodes are counted.
#[derive(Clone, Debug, Default)]
pub enum Limits {
    /// Only the node's own tables (a single relay, or a cluster without Redis).
    #[default]
    Local,
    Redis(Arc<RedisLimits>),
}

/// What a held connection slot gives back when dropped.
#[derive(Debug)]
pub struct ConnectionLease {
    limits: Arc<RedisLimits>,
    key: String,
}

impl Drop for ConnectionLease {
    fn drop(&mut self) {
        let limits = &self.limits;
        limits.redis.script_detached(
            &limits.scripts.release,
            vec![std::mem::take(&mut self.key)],
            vec![limits.instance.clone()],
        );
    }
}

impl Limits {
    pub fn is_shared(&self) -> bool {
        matches!(self, Limits::Redis(_))
    }

    /// One message from `client` (its table key) under `max` per `window`.
    pub async fn message(&self, client: &str, max: u32, window: Duration) -> Verdict {
        match self {
            Limits::Local => Verdict::Admit,
            Limits::Redis(limits) => {
                let key = format!("relay:rate:msg:{client}");
                limits.rate(key, max, window, LimitKind::Messages).await
            }
        }
    }

    /// A connection slot for `client` under `max` across the nodes. `Ok(None)`: admitted
    /// with nothing to give back (local, or Redis down with the policy open).
    pub async fn connection(
        &self,
        client: &str,
        max: usize,
    ) -> Result<Option<ConnectionLease>, Verdict> {
        let Limits::Redis(limits) = self else {
            return Ok(None);
        };
        limits
            .acquire(format!("relay:conn:{client}"), max, LimitKind::Connections)
            .await
    }

    /// One message to `destination` (its queue key) under `per_minute`, in bursts of at
    /// most `burst`, across the nodes. `Err(wait)`: not now, ask again after `wait` (over the
    /// limit, or Redis down with `failure_destinations` closed: [`UNAVAILABLE_WAIT`]).
    pub async fn destination_message(
        &self,
        destination: &str,
        per_minute: u32,
        burst: u32,
    ) -> Result<(), Duration> {
        let Limits::Redis(limits) = self else {
            return Ok(());
        };
        if per_minute == 0 {
            return Ok(());
        }
        let (interval, tolerance) = destination_gcra_parameters(per_minute, burst);
        let key = format!("relay:dest:rate:{destination}");
        match limits.gcra(key, interval, tolerance).await {
            Ok(None) => Ok(()),
            Ok(Some(wait)) => Err(wait),
            Err(_) => match limits.failure_verdict(LimitKind::Destinations) {
                Verdict::Admit => Ok(()),
                _ => Err(UNAVAILABLE_WAIT),
            },
        }
    }

    /// A connection slot to `destination` under `max` across the nodes, held until the
    /// lease is dropped (the connection closed). As [`Limits::connection`].
    pub async fn destination_connection(
        &self,
        destination: &str,
        max: usize,
    ) -> Result<Option<ConnectionLease>, Verdict> {
        let Limits::Redis(limits) = self else {
            return Ok(None);
        };
        limits
            .acquire(
                format!("relay:dest:conn:{destination}"),
                max,
                LimitKind::Destinations,
            )
            .await
    }
}

/// How long an entry waits when a destination decision could not be made (Redis down,
/// `failure_destinations = "closed"`).
pub const UNAVAILABLE_WAIT: Duration = Duration::from_secs(5);

/// GCRA's emission interval and tolerance (ms) for `per_minute` messages in bursts of at
/// most `burst` (the node table's `queue::destinations::RateLimiter` has the same shape).
pub fn destination_gcra_parameters(per_minute: u32, burst: u32) -> (f64, f64) {
    let interval = 60_000.0 / f64::from(per_minute.max(1));
    (interval, interval * f64::from(burst.max(1) - 1))
}

impl RedisLimits {
    /// The leased semaphore's acquire on `key` (see [`Limits::connection`]).
    async fn acquire(
        self: &Arc<Self>,
        key: String,
        max: usize,
        kind: LimitKind,
    ) -> Result<Option<ConnectionLease>, Verdict> {
        let limits = self;
        let answer = limits
            .redis
            .script(
                &limits.scripts.acquire,
                vec![key.clone()],
                vec![
                    max.to_string(),
                    limits.instance.clone(),
                    INSTANCE_PREFIX.to_string(),
                    CONNECTION_KEY_TTL_MS.to_string(),
                ],
            )
            .await
            .and_then(|v| int(&v));
        match answer {
            Ok(1) => Ok(Some(ConnectionLease {
                limits: Arc::clone(limits),
                key,
            })),
            Ok(_) => Err(Verdict::Refuse),
            Err(_) => match limits.failure_verdict(kind) {
                Verdict::Admit => Ok(None),
                other => Err(other),
            },
        }
    }
}

impl Limits {
    /// Whether `client` may try a `protocol` login (its failures below `max`).
    pub async fn login(&self, protocol: &str, client: &str, max: u32) -> Verdict {
        let Limits::Redis(limits) = self else {
            return Verdict::Admit;
        };
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(login_key(protocol, client));
        let answer = limits.redis.pipeline(pipe).await.and_then(|v| match v {
            redis::Value::Array(items) => match items.first() {
                Some(redis::Value::Nil) | None => Ok(0),
                Some(redis::Value::BulkString(b)) => std::str::from_utf8(b)
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok())
                    .ok_or_else(|| RedisError::Answer("login count".into())),
                Some(other) => int(other),
            },
            other => Err(RedisError::Answer(format!("{other:?}"))),
        });
        match answer {
            Ok(n) if n < i64::from(max) => Verdict::Admit,
            Ok(_) => Verdict::Refuse,
            Err(_) => limits.failure_verdict(LimitKind::Logins),
        }
    }

    /// A `protocol` login from `client` failed: counted for `window` from the first.
    pub async fn login_failed(&self, protocol: &str, client: &str, window: Duration) {
        if let Limits::Redis(limits) = self {
            let _ = limits
                .redis
                .script(
                    &limits.scripts.count,
                    vec![login_key(protocol, client)],
                    vec![window.as_millis().max(1).to_string()],
                )
                .await;
        }
    }

    /// [`Limits::login_failed`] without waiting for Redis (from a synchronous caller).
    pub fn login_failed_detached(&self, protocol: &str, client: &str, window: Duration) {
        if let Limits::Redis(limits) = self {
            limits.redis.script_detached(
                &limits.scripts.count,
                vec![login_key(protocol, client)],
                vec![window.as_millis().max(1).to_string()],
            );
        }
    }

    /// A `protocol` login from `client` succeeded: its failures are forgiven everywhere.
    pub fn login_succeeded(&self, protocol: &str, client: &str) {
        if let Limits::Redis(limits) = self {
            limits.redis.script_detached(
                &limits.scripts.forget,
                vec![login_key(protocol, client)],
                Vec::new(),
            );
        }
    }
}

fn login_key(protocol: &str, client: &str) -> String {
    format!("relay:auth:{protocol}:{client}")
}

/// The prefix of each node instance's liveness key (kept by [`super::membership`]).
pub const INSTANCE_PREFIX: &str = "relay:instance:";

/// A client's connection hash is dropped a day after its last acquire (a key left by
/// nodes that all crashed would otherwise stay forever).
const CONNECTION_KEY_TTL_MS: u64 = 86_400_000;

/// The Redis side of [`Limits`].
#[derive(Debug)]
pub struct RedisLimits {
    redis: Redis,
    /// This process's instance (node name and start): the field its connection counts go in.
    instance: String,
    /// `cluster.redis.failure` and its per-kind overrides.
    failure: RedisSection,
    scripts: Scripts,
}

#[derive(Debug)]
struct Scripts {
    gcra: Arc<redis::Script>,
    acquire: Arc<redis::Script>,
    release: Arc<redis::Script>,
    count: Arc<redis::Script>,
    forget: Arc<redis::Script>,
}

/// GCRA on the server's clock, in milliseconds. ARGV: interval (ms per message), tolerance
/// (ms: interval × (burst − 1)). Answers {1, 0} admitted, or {0, ms until the next would be}.
/// The arithmetic is [`gcra`]'s; the theoretical arrival time is written with three decimals
/// (Lua's default number format would round a millisecond timestamp).
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
if tat - now > tolerance then
  return {0, math.ceil(tat - tolerance - now)}
end
local new = tat + interval
redis.call('SET', KEYS[1], string.format('%.3f', new), 'PX', math.max(1, math.ceil(new - now)))
return {1, 0}
"#;

/// The leased semaphore's acquire. KEYS[1]: hash instance -> count. ARGV: max, this
/// instance, the liveness-key prefix, the hash's expiry (ms). Counts of instances without
/// a live lease are dropped first.
const ACQUIRE: &str = r#"
local max = tonumber(ARGV[1])
local fields = redis.call('HGETALL', KEYS[1])
local total = 0
for i = 1, #fields, 2 do
  local instance = fields[i]
  local n = tonumber(fields[i + 1])
  if instance ~= ARGV[2] and redis.call('EXISTS', ARGV[3] .. instance) == 0 then
    redis.call('HDEL', KEYS[1], instance)
  else
    total = total + n
  end
end
if total >= max then return 0 end
redis.call('HINCRBY', KEYS[1], ARGV[2], 1)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"#;

const RELEASE: &str = r#"
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
if n <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
return n
"#;

/// A counter over a fixed window from its first count. ARGV: the window (ms).
const COUNT: &str = r#"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n
"#;

const FORGET: &str = "return redis.call('DEL', KEYS[1])";

impl RedisLimits {
    pub fn new(redis: Redis, instance: String, failure: &RedisSection) -> Arc<Self> {
        let script = |code: &str| Arc::new(redis::Script::new(code));
        Arc::new(RedisLimits {
            redis,
            instance,
            failure: failure.clone(),
            scripts: Scripts {
                gcra: script(GCRA),
                acquire: script(ACQUIRE),
                release: script(RELEASE),
                count: script(COUNT),
                forget: script(FORGET),
            },
        })
    }

    pub fn redis(&self) -> &Redis {
        &self.redis
    }

    fn failure_verdict(&self, kind: LimitKind) -> Verdict {
        match self.failure.failure_of(kind) {
            FailurePolicy::Open => Verdict::Admit,
            FailurePolicy::Closed => Verdict::Unavailable,
        }
    }

    async fn rate(&self, key: String, max: u32, window: Duration, kind: LimitKind) -> Verdict {
        if max == 0 {
            return Verdict::Admit;
        }
        let (interval, tolerance) = gcra_parameters(max, window);
        match self.gcra(key, interval, tolerance).await {
            Ok(None) => Verdict::Admit,
            Ok(Some(_)) => Verdict::Refuse,
            Err(_) => self.failure_verdict(kind),
        }
    }

    /// One GCRA decision on `key`: `Ok(None)` admitted, `Ok(Some(wait))` refused until then.
    async fn gcra(
        &self,
        key: String,
        interval: f64,
        tolerance: f64,
    ) -> Result<Option<Duration>, RedisError> {
        let answer = self
            .redis
            .script(
                &self.scripts.gcra,
                vec![key],
                vec![format!("{interval:.3}"), format!("{tolerance:.3}")],
            )
            .await
            .and_then(|v| ints(&v))?;
        Ok(gcra_answer(&answer))
    }
}

/// GCRA's emission interval and tolerance (ms) for a burst of `max` per `window`: one
/// message per `window / max`, and up to `max` at once.
pub fn gcra_parameters(max: u32, window: Duration) -> (f64, f64) {
    let interval = window.as_secs_f64() * 1000.0 / f64::from(max.max(1));
    (interval, interval * f64::from(max.max(1) - 1))
}

/// One GCRA decision (the script's arithmetic): the stored theoretical arrival time `tat`
/// (0 when absent), `now`, and the parameters of [`gcra_parameters`], all in ms. `Ok(new
/// tat)` admits; `Err(wait)` refuses, the next would be admitted `wait` ms later.
pub fn gcra(tat: f64, now: f64, interval: f64, tolerance: f64) -> Result<f64, f64> {
    let tat = tat.max(now);
    if tat - now > tolerance {
        return Err((tat - tolerance - now).ceil());
    }
    Ok(tat + interval)
}

/// The GCRA script's answer: `None` admitted, `Some(wait)` refused (at least 1 ms, so a
/// refusal never means "now").
fn gcra_answer(answer: &[i64]) -> Option<Duration> {
    match answer {
        [1, ..] => None,
        [_, wait, ..] => Some(Duration::from_millis(
            u64::try_from(*wait).unwrap_or(0).max(1),
        )),
        _ => Some(Duration::from_millis(1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `times` (ms) through GCRA from an empty key; the admitted ones.
    fn run(max: u32, window: Duration, times: &[f64]) -> Vec<bool> {
        let (interval, tolerance) = gcra_parameters(max, window);
        let mut tat = 0.0;
        times
            .iter()
            .map(|&now| match gcra(tat, now, interval, tolerance) {
                Ok(new) => {
                    tat = new;
                    true
                }
                Err(_) => false,
            })
            .collect()
    }

    #[test]
    fn a_burst_of_n_passes_and_the_next_is_refused() {
        let t = 1_764_950_000_000.0;
        let got = run(3, Duration::from_secs(60), &[t, t, t, t, t + 19_999.0]);
        assert_eq!(got, [true, true, true, false, false]);
    }

    #[test]
    fn one_message_comes_back_per_interval() {
        let t = 1_764_950_000_000.0;
        // 3 per minute: one every 20 s after the burst.
        let got = run(
            3,
            Duration::from_secs(60),
            &[
                t,
                t,
                t,
                t + 20_000.0,
                t + 20_001.0,
                t + 40_000.0,
                t + 100_000.0,
            ],
        );
        assert_eq!(got, [true, true, true, true, false, true, true]);
    }

    #[test]
    fn refusals_do_not_push_the_schedule_out() {
        let (interval, tolerance) = gcra_parameters(1, Duration::from_secs(10));
        assert_eq!((interval, tolerance), (10_000.0, 0.0));
        let tat = gcra(0.0, 1000.0, interval, tolerance).unwrap();
        assert_eq!(tat, 11_000.0);
        assert_eq!(gcra(tat, 5000.0, interval, tolerance), Err(6000.0));
        assert_eq!(gcra(tat, 11_000.0, interval, tolerance), Ok(21_000.0));
    }

    #[test]
    fn idle_time_does_not_bank_more_than_the_burst() {
        let t = 1_000_000.0;
        let later = t + 3_600_000.0;
        let got = run(2, Duration::from_secs(60), &[t, later, later, later]);
        assert_eq!(got, [true, true, true, false]);
    }

    #[test]
    fn millisecond_timestamps_survive_the_scripts_number_format() {
        // The script writes `%.3f`; what it reads back must be the same instant.
        let tat = 1_764_950_000_123.5_f64;
        let written = format!("{tat:.3}");
        assert_eq!(written.parse::<f64>().unwrap(), tat);
    }

    #[test]
    fn destination_parameters_match_the_node_table() {
        // 12 a minute in bursts of 1: one every 5 s, nothing banked.
        assert_eq!(destination_gcra_parameters(12, 1), (5_000.0, 0.0));
        // 100 a minute in bursts of 10 (the node table's tenth).
        assert_eq!(destination_gcra_parameters(100, 10), (600.0, 5_400.0));
        let (interval, tolerance) = destination_gcra_parameters(12, 1);
        let t = 1_764_950_000_000.0;
        let tat = gcra(0.0, t, interval, tolerance).unwrap();
        assert_eq!(gcra(tat, t + 1.0, interval, tolerance), Err(4_999.0));
    }

    #[test]
    fn a_refusal_names_a_wait_of_at_least_a_millisecond() {
        assert_eq!(gcra_answer(&[1, 0]), None);
        assert_eq!(gcra_answer(&[0, 4_999]), Some(Duration::from_millis(4_999)));
        assert_eq!(gcra_answer(&[0, 0]), Some(Duration::from_millis(1)));
        assert_eq!(gcra_answer(&[0, -3]), Some(Duration::from_millis(1)));
        assert_eq!(gcra_answer(&[]), Some(Duration::from_millis(1)));
    }
}
