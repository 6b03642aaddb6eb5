//! The password-hash pool: a few threads of their own, shared by every shard, that run the
//! argon2 checks of SMTP AUTH and POP3 logins (tens of milliseconds and 19 MiB each by
//! design). Bounded in threads and in queued checks: when the queue is full the login is
//! answered with a temporary failure at once, so a flood of logins costs neither memory nor
//! the cores' time beyond the pool's size.
//!
//! The threads run on every CPU the process may use, not on a shard's core (a thread spawned
//! from a pinned thread would inherit its pin and compete with that shard alone), and at a
//! lower priority than the shards ([`NICE`]). A check whose client has gone before a thread
//! takes it is dropped unhashed.

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam::channel::{self, Receiver, Sender, TrySendError};
use tokio::sync::oneshot;

use crate::metrics::HashPoolMetrics;

/// The prefix of the pool threads' names (`/proc/PID/task/TID/comm`).
pub const THREAD_NAME: &str = "auth-hash";

/// How far below the shards' priority the pool threads run (nice value added to the one the
/// process started with, up to 19). A hash holds a CPU for tens of milliseconds; at the shards'
/// priority it takes that time slice from every session served on the CPU, which showed as
/// the relay's POP3 RETR p99.9 going from 0.2-0.6 ms to 3.8 ms while other clients logged in
/// (BENCHMARKS.md, session 15). At 10 the scheduler gives a shard about ten times a hash
/// thread's share when both want a CPU, so a login waits longer on a busy machine and the
/// sessions already in do not.
pub const NICE: i32 = 10;

type Job = Box<dyn FnOnce() + Send>;

/// Every thread is busy and the queue is full: try again later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the password-hash queue is full")]
pub struct Busy;

/// The pool; dropping it ends the threads once the queued checks are done.
#[derive(Debug)]
pub struct HashPool {
    jobs: Sender<Job>,
    metrics: HashPoolMetrics,
    _threads: Vec<JoinHandle<()>>,
}

impl HashPool {
    /// `threads` hashing threads and at most `queue_max` checks waiting for one.
    pub fn start(
        threads: usize,
        queue_max: usize,
        metrics: HashPoolMetrics,
    ) -> std::io::Result<Arc<HashPool>> {
        let (jobs, queue) = channel::bounded::<Job>(queue_max);
        let cpus = process_cpus();
        let handles = (0..threads.max(1))
            .map(|index| {
                let queue = queue.clone();
                let metrics = metrics.clone();
                std::thread::Builder::new()
                    .name(format!("{THREAD_NAME}-{index}"))
                    .spawn(move || work(&queue, &metrics, cpus.as_ref()))
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Arc::new(HashPool {
            jobs,
            metrics,
            _threads: handles,
        }))
    }

    /// Queues `check`; its result arrives through the returned receiver. Dropping the
    /// receiver before a thread takes the check abandons it (nothing is hashed).
    pub fn submit<T: Send + 'static>(
        &self,
        check: impl FnOnce() -> T + Send + 'static,
    ) -> Result<oneshot::Receiver<T>, Busy> {
        let (result, receiver) = oneshot::channel();
        let abandoned = self.metrics.abandoned.clone();
        let run = self.metrics.run.clone();
        let job: Job = Box::new(move || {
            if result.is_closed() {
                abandoned.inc();
                return;
            }
            run.inc();
            let _ = result.send(check());
        });
        // Counted before the send, so a thread that takes the job at once cannot decrement
        // first.
        self.metrics.queued.inc();
        match self.jobs.try_send(job) {
            Ok(()) => Ok(receiver),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.metrics.queued.dec();
                self.metrics.refused.inc();
                Err(Busy)
            }
        }
    }
}

fn work(queue: &Receiver<Job>, metrics: &HashPoolMetrics, cpus: Option<&rustix::thread::CpuSet>) {
    if let Some(cpus) = cpus {
        if let Err(error) = rustix::thread::sched_setaffinity(None, cpus) {
            tracing::warn!(%error, "password-hash thread: could not widen its CPU affinity");
        }
    }
    // On Linux a nice value belongs to the thread (task) named, not to the whole process.
    let me = rustix::thread::gettid();
    let lowered = rustix::process::getpriority_process(Some(me))
        .and_then(|inherited| rustix::process::setpriority_process(Some(me), below(inherited)));
    if let Err(error) = lowered {
        tracing::warn!(%error, "password-hash thread: could not lower its priority");
    }
    while let Ok(job) = queue.recv() {
        metrics.queued.dec();
        // A panicking check must not take the thread with it (the pool would shrink to
        // nothing); its login sees the dropped result as a temporary failure.
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
            tracing::error!("a password check panicked");
        }
    }
}

/// The pool threads' nice value when the process runs at `inherited`.
fn below(inherited: i32) -> i32 {
    inherited.saturating_add(NICE).min(19)
}

/// The CPUs of the process as a whole (its main thread's set, which no shard pin narrows).
fn process_cpus() -> Option<rustix::thread::CpuSet> {
    let main = rustix::process::getpid();
    match rustix::thread::sched_getaffinity(Some(main)) {
        Ok(cpus) => Some(cpus),
        Err(error) => {
            tracing::warn!(%error, "could not read the process's CPU affinity");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    fn metrics() -> HashPoolMetrics {
        crate::metrics::Metrics::new(1, None).hash_pool()
    }

    /// Every pool thread runs [`NICE`] below the process's priority; the thread that started the pool keeps its own.
    #[test]
    fn pool_threads_run_below_the_shards_priority() {
        let before = rustix::process::getpriority_process(None).unwrap();
        assert!(before < 19, "run the tests above the lowest priority");
        let pool = HashPool::start(2, 4, metrics()).unwrap();
        // Each check reports the nice value of the thread it ran on, read from /proc.
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let seen: Vec<(String, i32)> = rt.block_on(async {
            let mut seen = Vec::new();
            for _ in 0..4 {
                let check = pool
                    .submit(|| {
                        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
                        let comm = std::fs::read_to_string("/proc/thread-self/comm")
                            .unwrap()
                            .trim()
                            .to_string();
                        // Field 19 (nice), the 17th after the parenthesised name.
                        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
                        let nice: i32 = after_name.split(' ').nth(16).unwrap().parse().unwrap();
                        (comm, nice)
                    })
                    .unwrap();
                seen.push(check.await.unwrap());
            }
            seen
        });
        for (comm, nice) in seen {
            assert!(comm.starts_with(THREAD_NAME), "{comm}");
            assert_eq!(nice, below(before), "{comm}");
        }
        assert_eq!(rustix::process::getpriority_process(None).unwrap(), before);
    }

    #[test]
    fn a_full_queue_refuses_and_an_abandoned_check_is_not_run() {
        let metrics = metrics();
        let pool = HashPool::start(1, 2, metrics.clone()).unwrap();
        // Hold the one thread until released.
        let (release, held) = crossbeam::channel::bounded::<()>(0);
        let (started_tx, started) = crossbeam::channel::bounded::<()>(1);
        let busy = pool
            .submit(move || {
                let _ = started_tx.send(());
                let _ = held.recv();
            })
            .unwrap();
        started.recv().unwrap();
        let ran = Arc::new(AtomicUsize::new(0));
        let counted = |ran: &Arc<AtomicUsize>| {
            let ran = Arc::clone(ran);
            move || {
                ran.fetch_add(1, Ordering::SeqCst);
            }
        };
        let kept = pool.submit(counted(&ran)).unwrap();
        let gone = pool.submit(counted(&ran)).unwrap();
        assert_eq!(metrics.queued.get(), 2);
        assert_eq!(pool.submit(counted(&ran)).err(), Some(Busy));
        assert_eq!(metrics.refused.get(), 1);
        drop(gone);
        release.send(()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            busy.await.unwrap();
            kept.await.unwrap();
        });
        // The thread took the abandoned one after `kept` (FIFO): wait for it to be counted.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while metrics.abandoned.get() == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(metrics.abandoned.get(), 1);
        assert_eq!(ran.load(Ordering::SeqCst), 1);
        assert_eq!(metrics.queued.get(), 0);
    }
}
