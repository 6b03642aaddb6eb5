//! Starting one shard: a thread pinned to its core, running the chosen engine's
//! single-threaded runtime, and on it the future the caller builds there. The runtime knows
//! nothing of protocols or delivery: the server gives it the future.

use std::future::Future;
use std::pin::Pin;
use std::thread::JoinHandle;

use crossbeam::channel::Sender;

use super::Engine;

/// What a shard thread reports to the main thread.
#[derive(Debug)]
pub enum ShardEvent {
    Ready(usize),
    /// The runtime or the shard's own set-up failed; the message says why.
    Failed(usize, String),
    /// The shard's thread ended (sent on every exit path, panics included).
    Exited(usize),
}

/// Sends `Exited` however the thread ends.
struct ExitNotice {
    shard: usize,
    events: Sender<ShardEvent>,
}

impl Drop for ExitNotice {
    fn drop(&mut self) {
        let _ = self.events.send(ShardEvent::Exited(self.shard));
    }
}

/// Where a shard runs.
#[derive(Debug, Clone, Copy)]
pub struct Placement {
    pub index: usize,
    pub core: Option<core_affinity::CoreId>,
    pub engine: Engine,
}

/// The shard's half of the start-up handshake: the body says when it serves.
pub struct Ready {
    index: usize,
    events: Sender<ShardEvent>,
}

impl Ready {
    pub fn send(self) {
        let _ = self.events.send(ShardEvent::Ready(self.index));
    }
}

/// The shard's work: a future that is built on the shard's own thread (it may hold `Rc`s and
/// engine-bound sockets) and runs until the shard is done. An `Err` is reported as `Failed`.
pub type Body =
    Box<dyn FnOnce(Engine, Ready) -> Pin<Box<dyn Future<Output = Result<(), String>>>> + Send>;

/// Starts the shard's thread: pins it, builds the engine's runtime, runs `body` on it.
pub fn spawn(
    placement: Placement,
    events: Sender<ShardEvent>,
    body: Body,
) -> std::io::Result<JoinHandle<()>> {
    let Placement {
        index,
        core,
        engine,
    } = placement;
    std::thread::Builder::new()
        .name(format!("shard-{index}"))
        .spawn(move || {
            let _notice = ExitNotice {
                shard: index,
                events: events.clone(),
            };
            if let Some(core) = core {
                if !core_affinity::set_for_current(core) {
                    tracing::warn!(shard = index, "could not pin to core {}", core.id);
                }
            }
            let ready = Ready {
                index,
                events: events.clone(),
            };
            if let Err(message) = run(engine, ready, body) {
                let _ = events.send(ShardEvent::Failed(index, message));
            }
        })
}

fn run(engine: Engine, ready: Ready, body: Body) -> Result<(), String> {
    match engine {
        Engine::Uring => {
            let runtime = tokio_uring::Runtime::new(&tokio_uring::builder())
                .map_err(|e| format!("cannot start io_uring runtime: {e}"))?;
            runtime.block_on(body(engine, ready))
        }
        Engine::Epoll => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start epoll runtime: {e}"))?;
            let local = tokio::task::LocalSet::new();
            local.block_on(&runtime, body(engine, ready))
        }
    }
}
