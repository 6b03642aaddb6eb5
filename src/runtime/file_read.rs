//! Positioned file reads that never block a shard's thread: the spool's body reads (POP3
//! RETR/TOP, IMAP FETCH, outbound delivery) move their bytes through here.
//!
//! Role: a message body that is not in the page cache takes a disk read (15–90 ms for 20 MiB
//! on the target VM); done with a synchronous `pread` on the shard thread it stalls every
//! connection of that core. [`FileReads`] moves the bytes off the thread, per engine:
//! - io_uring: a `read` on the shard's own ring (tokio-uring's `File::read_at`), straight into
//!   the spare capacity of the caller's buffer (nothing zeroed first, no copy). The kernel
//!   serves a cached page at submission and hands a cold one to its own workers.
//! - epoll: a small process-wide [`ReadPool`] of blocking reader threads. Its admission is
//!   bounded (`READ_POOL_QUEUE_MAX` jobs queued or running); a caller beyond the bound waits
//!   asynchronously for a slot (tokio's fair semaphore), never a backlog without end and never
//!   a blocked shard. The result comes back through a oneshot to the waiting task.
//! - `Inline`: the blocking read on the caller's thread, for tools and tests that run no
//!   shard runtime, and for sources that are not real files (the simulated disk).
//!
//! What is read (locations, checksums, parsing) is decided by the caller; this module only
//! moves bytes. The buffer is owned and passed in and out, as for sockets (`net::io`).
//! Never dropped in flight on purpose: the callers await every read to its end (a ring read
//! whose future is dropped still completes into its buffer, which tokio-uring keeps alive).
//!
//! Exposure: local files only (the spool's segments, trusted storage).
//!
//! Limits: `READ_POOL_THREADS` reader threads, `READ_POOL_QUEUE_MAX` admitted jobs; one read
//! moves at most one body (≤ 4 GiB − 1, the spool's limit).

use std::io;
use std::sync::{Arc, OnceLock};

use super::Engine;

/// Bytes one ring read asks for (a large body is read in a few requests, each by an io-wq
/// worker).
const RING_READ_STEP: usize = 4 << 20;

/// Reader threads of the epoll engine's pool: a few reads in flight keep an SSD's queue busy
/// (cold reads are device-bound, not CPU-bound) while staying small next to the shards.
pub const READ_POOL_THREADS: usize = 4;
/// Jobs admitted to the pool at once (queued or running). Each job owns one buffer that its
/// connection owned anyway; beyond this, callers wait for a slot without blocking.
pub const READ_POOL_QUEUE_MAX: usize = 64;

/// A file that can be read at an offset: blocking (for the pool and inline), or as a new
/// handle of the same open file for the ring.
pub trait ReadSource: Send + Sync + 'static {
    /// Reads up to `buf.len()` bytes at `offset`; fewer only at end of file.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
    /// A new handle of the same open file (`dup`), for a ring read; `None` when the source
    /// is not a real file (it is then read inline).
    fn duplicate(&self) -> Option<io::Result<std::fs::File>>;
    /// Reads what the page cache holds of the range without waiting for the disk
    /// (`RWF_NOWAIT`); possibly short. `None`: this source cannot tell (not a real file).
    fn read_at_cached(&self, _offset: u64, _buf: &mut [u8]) -> Option<io::Result<usize>> {
        None
    }
}

/// How this thread moves file bytes (see the module doc).
#[derive(Clone)]
pub enum FileReads {
    /// Through the current thread's tokio-uring ring (only on an io_uring shard).
    Ring,
    /// Through a bounded pool of reader threads (the epoll engine).
    Pool(Arc<ReadPool>),
    /// Blocking, on the caller's thread.
    Inline,
}

impl std::fmt::Debug for FileReads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FileReads::Ring => "Ring",
            FileReads::Pool(_) => "Pool",
            FileReads::Inline => "Inline",
        })
    }
}

/// Starts the epoll engine's shared pool now (from an unpinned thread: see `server::run`);
/// a failure is reported by the first shard that asks for it.
pub fn start_pool() {
    let _ = shared_pool();
}

/// The epoll engine's pool, started on first use and shared by every shard.
fn shared_pool() -> io::Result<Arc<ReadPool>> {
    static POOL: OnceLock<Arc<ReadPool>> = OnceLock::new();
    if let Some(pool) = POOL.get() {
        return Ok(Arc::clone(pool));
    }
    let pool = ReadPool::new(READ_POOL_THREADS, READ_POOL_QUEUE_MAX)?;
    // Two shards racing here: the loser's threads end when its pool is dropped.
    Ok(Arc::clone(POOL.get_or_init(|| pool)))
}

impl FileReads {
    /// The reads of a shard running `engine` (call on the shard's thread). The pool's threads
    /// start with the first epoll shard; if they cannot, reads stay inline (logged once).
    pub fn for_engine(engine: Engine) -> FileReads {
        match engine {
            Engine::Uring => FileReads::Ring,
            Engine::Epoll => match shared_pool() {
                Ok(pool) => FileReads::Pool(pool),
                Err(error) => {
                    tracing::warn!(%error, "cannot start the spool reader threads; body reads block the shard");
                    FileReads::Inline
                }
            },
        }
    }

    /// Reads `len` bytes at `offset` of `source` into `buf[at..at + len]`: `buf` is cut to
    /// `at` first, then holds what was read. `Ok(n)`: `buf.len() == at + n`, with `n < len`
    /// only at end of file. On an error `buf.len() == at`.
    pub async fn read_at(
        &self,
        source: Arc<dyn ReadSource>,
        offset: u64,
        buf: Vec<u8>,
        at: usize,
        len: usize,
    ) -> (io::Result<usize>, Vec<u8>) {
        if matches!(self, FileReads::Inline) || len > CACHED_FIRST_MAX {
            return self.move_bytes(source, offset, buf, at, len).await;
        }
        let (cached, buf) = cached_read(source.as_ref(), offset, buf, at, len);
        if cached == len {
            return (Ok(len), buf);
        }
        let rest = len - cached;
        let (read, buf) = self
            .move_bytes(source, offset + cached as u64, buf, at + cached, rest)
            .await;
        match read {
            Ok(n) => (Ok(cached + n), buf),
            // The cached part stays out: on an error `buf.len() == at`.
            Err(e) => {
                let mut buf = buf;
                buf.truncate(at);
                (Err(e), buf)
            }
        }
    }

    /// [`FileReads::read_at`] without the first try from the page cache.
    async fn move_bytes(
        &self,
        source: Arc<dyn ReadSource>,
        offset: u64,
        buf: Vec<u8>,
        at: usize,
        len: usize,
    ) -> (io::Result<usize>, Vec<u8>) {
        match self {
            FileReads::Ring => match source.duplicate() {
                Some(Ok(file)) => ring_read(file, offset, buf, at, len).await,
                Some(Err(e)) => {
                    let mut buf = buf;
                    buf.truncate(at);
                    (Err(e), buf)
                }
                None => blocking_read(source.as_ref(), offset, buf, at, len),
            },
            FileReads::Pool(pool) => {
                let job = move || blocking_read(source.as_ref(), offset, buf, at, len);
                match pool.run(job).await {
                    Ok(done) => done,
                    // The buffer went down with the job: only at shutdown (threads gone).
                    Err(PoolGone) => (Err(io::Error::other(PoolGone)), Vec::new()),
                }
            }
            FileReads::Inline => blocking_read(source.as_ref(), offset, buf, at, len),
        }
    }
}

/// Reads of at most this many bytes first try the page cache on the caller's thread: a
/// cached small body (the common POP3 RETR and IMAP FETCH) then costs one `preadv2`, as a
/// plain `pread` did, instead of a ring submission with a `dup`/`close` or a round trip to a
/// pool thread. Larger reads always leave the thread: copying many cached megabytes would
/// hold it too.
const CACHED_FIRST_MAX: usize = RING_INLINE_MAX;

/// The first try of [`FileReads::read_at`]: reads what the page cache holds of the range
/// into `buf[at..]` without waiting for the disk; returns how many bytes that was (0 when
/// none were cached, the source cannot tell, or on any error: the caller then reads the
/// range the usual way and meets a real error there). `buf.len()` is `at` + that count.
fn cached_read(
    source: &dyn ReadSource,
    offset: u64,
    mut buf: Vec<u8>,
    at: usize,
    len: usize,
) -> (usize, Vec<u8>) {
    buf.truncate(at);
    let Some(end) = at.checked_add(len) else {
        return (0, buf);
    };
    buf.resize(end, 0);
    let n = match source.read_at_cached(offset, &mut buf[at..]) {
        Some(Ok(n)) => n.min(len),
        Some(Err(_)) | None => 0,
    };
    buf.truncate(at + n);
    (n, buf)
}

/// The blocking read (pool threads and inline): the new part of `buf` is zeroed first (safe
/// Rust reads only into initialised bytes), then one positioned read fills it.
fn blocking_read(
    source: &dyn ReadSource,
    offset: u64,
    mut buf: Vec<u8>,
    at: usize,
    len: usize,
) -> (io::Result<usize>, Vec<u8>) {
    let Some(end) = at.checked_add(len) else {
        buf.truncate(at);
        return (Err(io::Error::other("read length overflows")), buf);
    };
    buf.resize(end, 0);
    match source.read_at(offset, &mut buf[at..]) {
        Ok(n) => {
            buf.truncate(at + n);
            (Ok(n), buf)
        }
        Err(e) => {
            buf.truncate(at);
            (Err(e), buf)
        }
    }
}

/// One or more ring reads of the range, put after `at` (a short read goes on from where it
/// stopped; 0 is the end of the file).
///
/// A large read is submitted with `IOSQE_ASYNC`: the kernel's io-wq workers do it. Without
/// the flag, a buffered read of cold pages starts its readahead (up to `read_ahead_kb`, 8 MiB
/// here) in the submitting thread, which then waits for free block-device requests: seen as
/// 50–600 ms stalls of the shard during ten cold 20 MiB reads. A small read (at most
/// `RING_INLINE_MAX`) is submitted plainly: served at submission when cached, and its
/// readahead is small when not.
async fn ring_read(
    file: std::fs::File,
    offset: u64,
    mut buf: Vec<u8>,
    at: usize,
    len: usize,
) -> (io::Result<usize>, Vec<u8>) {
    use io_uring::{opcode, squeue, types};
    use std::os::fd::AsRawFd;
    buf.truncate(at);
    let fd = types::Fd(file.as_raw_fd());
    let flags = if len > RING_INLINE_MAX {
        squeue::Flags::ASYNC
    } else {
        squeue::Flags::empty()
    };
    // The kernel writes into initialised bytes (the crate forbids `unsafe`, so no read into
    // spare capacity): a zeroed allocation (fresh pages from `calloc`, touched first by the
    // kernel's writes), moved or copied after `at` at the end. It goes into the operation with
    // the file: both stay alive (the fd open) until the kernel is done, even if this future
    // were dropped.
    let mut data = (vec![0u8; len], file);
    let mut done = 0;
    while done < len {
        let step = (len - done).min(RING_READ_STEP);
        let into = data.0[done..].as_mut_ptr();
        let sqe = opcode::Read::new(fd, into, step as u32)
            .offset(offset + done as u64)
            .build()
            .flags(flags);
        let (read, back) = tokio_uring::UnsubmittedOneshot::new(data, ReadDone, sqe)
            .submit()
            .await;
        data = back;
        match read {
            Ok(0) => break,
            Ok(n) => done += n.min(step),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (Err(e), buf),
        }
    }
    // `file` (a dup) closes on drop.
    let (mut body, _) = data;
    body.truncate(done);
    if at == 0 && buf.capacity() <= body.capacity() {
        return (Ok(done), body);
    }
    buf.extend_from_slice(&body);
    (Ok(done), buf)
}

/// Requests up to this size are submitted without `IOSQE_ASYNC` (see [`ring_read`]).
const RING_INLINE_MAX: usize = 64 << 10;

/// The completion of one ring read: the byte count, and the buffer and file back.
struct ReadDone;

impl tokio_uring::OneshotOutputTransform for ReadDone {
    type Output = (io::Result<usize>, (Vec<u8>, std::fs::File));
    type StoredData = (Vec<u8>, std::fs::File);

    fn transform_oneshot_output(
        self,
        data: Self::StoredData,
        cqe: io_uring::cqueue::Entry,
    ) -> Self::Output {
        let result = cqe.result();
        let read = if result < 0 {
            Err(io::Error::from_raw_os_error(-result))
        } else {
            Ok(result as usize)
        };
        (read, data)
    }
}

/// The pool's threads are gone (the process is shutting down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the spool reader threads are gone")]
pub struct PoolGone;

type Job = Box<dyn FnOnce() + Send>;

/// A bounded pool of blocking worker threads. At most `queue_max` jobs are admitted (queued
/// or running) at once; [`ReadPool::run`] waits asynchronously for a slot beyond that.
pub struct ReadPool {
    jobs: crossbeam::channel::Sender<Job>,
    slots: Arc<tokio::sync::Semaphore>,
    queue_max: usize,
}

impl ReadPool {
    /// Starts `threads` threads (`spool-read-N`); they end when the pool is dropped.
    pub fn new(threads: usize, queue_max: usize) -> io::Result<Arc<ReadPool>> {
        let queue_max = queue_max.max(1);
        // Never full: a job enters only with a slot, and there are `queue_max` slots.
        let (jobs, rx) = crossbeam::channel::bounded::<Job>(queue_max);
        for n in 0..threads.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("spool-read-{n}"))
                .spawn(move || {
                    while let Ok(job) = rx.recv() {
                        job();
                    }
                })?;
        }
        Ok(Arc::new(ReadPool {
            jobs,
            slots: Arc::new(tokio::sync::Semaphore::new(queue_max)),
            queue_max,
        }))
    }

    /// Runs `job` on a pool thread and returns its value; waits (without blocking the
    /// thread) while `queue_max` jobs are admitted. A job whose caller went away still runs
    /// to its end and then frees its slot.
    pub async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, PoolGone> {
        let slot = Arc::clone(&self.slots)
            .acquire_owned()
            .await
            .map_err(|_| PoolGone)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let value = job();
            drop(slot);
            let _ = tx.send(value);
        });
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(crossbeam::channel::TrySendError::Disconnected(_)) => return Err(PoolGone),
            Err(crossbeam::channel::TrySendError::Full(_)) => {
                // A slot was held, so the channel has room: a broken invariant.
                debug_assert!(false, "read pool channel full with a slot held");
                return Err(PoolGone);
            }
        }
        rx.await.map_err(|_| PoolGone)
    }

    /// Jobs admitted now (queued or running).
    pub fn admitted(&self) -> usize {
        self.queue_max - self.slots.available_permits()
    }

    /// The admission bound.
    pub fn queue_max(&self) -> usize {
        self.queue_max
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll};

    fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
        let waker = std::task::Waker::noop();
        std::pin::Pin::new(f).poll(&mut Context::from_waker(waker))
    }

    /// With 1 thread and 2 slots, a third job waits for a slot (its future is pending and
    /// nothing more is admitted) until one finishes; every job then runs, in order.
    #[test]
    fn pool_admission_is_bounded() {
        let pool = ReadPool::new(1, 2).unwrap();
        let (release_tx, release_rx) = crossbeam::channel::unbounded::<()>();
        let ran = Arc::new(AtomicUsize::new(0));
        let job = |n: usize| {
            let release = release_rx.clone();
            let ran = Arc::clone(&ran);
            move || {
                release.recv().unwrap();
                ran.fetch_add(1, Ordering::SeqCst);
                n
            }
        };
        let mut first = Box::pin(pool.run(job(1)));
        let mut second = Box::pin(pool.run(job(2)));
        let mut third = Box::pin(pool.run(job(3)));
        assert!(poll_once(&mut first).is_pending());
        assert!(poll_once(&mut second).is_pending());
        assert_eq!(pool.admitted(), 2);
        // The bound: the third waits for a slot, not in the queue.
        assert!(poll_once(&mut third).is_pending());
        assert_eq!(
            pool.admitted(),
            2,
            "a third job was admitted past the bound"
        );
        assert!(pool.jobs.len() <= 2, "nothing queued past the bound");
        release_tx.send(()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(rt.block_on(first), Ok(1));
        // The third is admitted once a slot is free; release the other two.
        release_tx.send(()).unwrap();
        release_tx.send(()).unwrap();
        assert_eq!(rt.block_on(second), Ok(2));
        assert_eq!(rt.block_on(third), Ok(3));
        assert_eq!(ran.load(Ordering::SeqCst), 3);
        assert_eq!(pool.admitted(), 0);
        assert_eq!(pool.queue_max(), 2);
    }

    /// Many callers at once through a pool of 2 slots: never more than 2 admitted.
    #[test]
    fn pool_never_admits_past_its_bound() {
        let pool = ReadPool::new(2, 2).unwrap();
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        let total = local.block_on(&rt, async {
            let mut tasks = Vec::new();
            for n in 0..50usize {
                let shared = Arc::clone(&pool);
                let (running, peak) = (Arc::clone(&running), Arc::clone(&peak));
                tasks.push(tokio::task::spawn_local(async move {
                    shared
                        .run(move || {
                            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                            peak.fetch_max(now, Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_micros(200));
                            running.fetch_sub(1, Ordering::SeqCst);
                            n
                        })
                        .await
                }));
                assert!(pool.admitted() <= 2);
            }
            let mut total = 0;
            for t in tasks {
                total += t.await.unwrap().unwrap();
            }
            total
        });
        assert_eq!(total, (0..50).sum::<usize>());
        assert!(peak.load(Ordering::SeqCst) <= 2);
    }

    struct Bytes(Vec<u8>);
    impl ReadSource for Bytes {
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
            let from = (offset as usize).min(self.0.len());
            let n = buf.len().min(self.0.len() - from);
            buf[..n].copy_from_slice(&self.0[from..from + n]);
            Ok(n)
        }
        fn duplicate(&self) -> Option<io::Result<std::fs::File>> {
            None
        }
    }

    /// Every engine's read puts the bytes after `at`, keeps what was before, and stops at
    /// the end of the file.
    #[test]
    fn reads_land_after_at_on_every_engine() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        struct Real(std::fs::File);
        impl ReadSource for Real {
            fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
                std::os::unix::fs::FileExt::read_at(&self.0, buf, offset)
            }
            fn duplicate(&self) -> Option<io::Result<std::fs::File>> {
                Some(self.0.try_clone())
            }
        }
        let real: Arc<dyn ReadSource> = Arc::new(Real(std::fs::File::open(&path).unwrap()));
        let fake: Arc<dyn ReadSource> = Arc::new(Bytes(data.clone()));
        let data = Arc::new(data);
        let check = |reads: FileReads, source: Arc<dyn ReadSource>| {
            let data = Arc::clone(&data);
            async move {
                let buf = b"status\r\nstale stale stale".to_vec();
                let (n, buf) = reads.read_at(Arc::clone(&source), 10, buf, 8, 5000).await;
                assert_eq!(n.unwrap(), 5000);
                assert_eq!(&buf[..8], b"status\r\n");
                assert_eq!(&buf[8..], &data[10..5010]);
                let (n, buf) = reads.read_at(source, 99_990, buf, 0, 100).await;
                assert_eq!(n.unwrap(), 10, "short only at the end of the file");
                assert_eq!(buf, &data[99_990..]);
            }
        };
        let pool = FileReads::Pool(ReadPool::new(1, 1).unwrap());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(check(pool.clone(), Arc::clone(&real)));
        rt.block_on(check(pool, Arc::clone(&fake)));
        rt.block_on(check(FileReads::Inline, Arc::clone(&real)));
        if crate::runtime::probe::probe().is_ok() {
            tokio_uring::start(check(FileReads::Ring, Arc::clone(&real)));
            // Not a real file: read inline even on the ring.
            tokio_uring::start(check(FileReads::Ring, fake));
        }
    }

    /// A source whose page cache holds the first `cached` bytes of what is asked
    /// (`usize::MAX`: all; 0: none, `EAGAIN`), counting its ordinary reads.
    struct Cache {
        data: Vec<u8>,
        cached: usize,
        ordinary: AtomicUsize,
    }
    impl ReadSource for Cache {
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
            self.ordinary.fetch_add(1, Ordering::SeqCst);
            Bytes(self.data.clone()).read_at(offset, buf)
        }
        fn duplicate(&self) -> Option<io::Result<std::fs::File>> {
            None
        }
        fn read_at_cached(&self, offset: u64, buf: &mut [u8]) -> Option<io::Result<usize>> {
            if self.cached == 0 {
                return Some(Err(io::ErrorKind::WouldBlock.into()));
            }
            let n = buf.len().min(self.cached);
            Some(Bytes(self.data.clone()).read_at(offset, &mut buf[..n]))
        }
    }

    /// A small read the page cache holds whole never leaves the thread; a partly cached one
    /// reads the rest the usual way, after the cached part; an uncached one reads it all the
    /// usual way. Large reads never try the cache. Every time the bytes land after `at`.
    #[test]
    fn small_reads_try_the_page_cache_first() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
        let pool = FileReads::Pool(ReadPool::new(1, 1).unwrap());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let cases = [
            (usize::MAX, 3000, 0),
            (1000, 3000, 1),
            (0, 3000, 1),
            (usize::MAX, CACHED_FIRST_MAX + 1, 1),
        ];
        for (cached, len, ordinary) in cases {
            let source = Arc::new(Cache {
                data: data.clone(),
                cached,
                ordinary: AtomicUsize::new(0),
            });
            let shared: Arc<dyn ReadSource> = source.clone();
            let (n, buf) = rt.block_on(pool.read_at(shared, 7, b"head".to_vec(), 4, len));
            assert_eq!(n.unwrap(), len, "cached {cached}, len {len}");
            assert_eq!(&buf[..4], b"head");
            assert_eq!(&buf[4..], &data[7..7 + len], "cached {cached}, len {len}");
            assert_eq!(
                source.ordinary.load(Ordering::SeqCst),
                ordinary,
                "ordinary reads for cached {cached}, len {len}"
            );
        }
        // At the end of the file: a cached short read, then the usual read finds the end.
        let source: Arc<dyn ReadSource> = Arc::new(Cache {
            data: data.clone(),
            cached: usize::MAX,
            ordinary: AtomicUsize::new(0),
        });
        let (n, buf) = rt.block_on(pool.read_at(source, 199_990, Vec::new(), 0, 100));
        assert_eq!(n.unwrap(), 10);
        assert_eq!(buf, &data[199_990..]);
    }
}
