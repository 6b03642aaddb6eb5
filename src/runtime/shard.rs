//! Starting one shard: a thread pinned to its core, running the chosen engine's runtime.

use std::rc::Rc;
use std::thread::JoinHandle;

use crossbeam::channel::Sender;

use super::Engine;
use crate::net::delivery::{self, Core};
use crate::net::io::{
    epoll::EpollConnector, epoll::EpollListener, uring::UringConnector, uring::UringListener,
    Connector,
};
use crate::net::shard::{self as net_shard, Bound, Protocol, ShardContext};

/// What a shard thread reports to the main thread.
#[derive(Debug)]
pub enum ShardEvent {
    Ready(usize),
    /// The runtime could not be built; the message says why.
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

/// The parts of a shard built on the main thread (everything `Send`); the `Rc` context is
/// assembled on the shard's own thread.
pub struct ShardSeed {
    pub index: usize,
    pub core: Option<core_affinity::CoreId>,
    pub engine: Engine,
    /// Listening sockets, their protocol and whether they are implicit-TLS.
    pub sockets: Vec<(std::net::TcpListener, Protocol, bool)>,
    /// The delivery queue this core owns, rebuilt from the spool.
    pub startup: Vec<crate::net::delivery::Job>,
    pub make_context: Box<dyn FnOnce() -> ShardContext + Send>,
}

pub fn spawn(seed: ShardSeed, events: Sender<ShardEvent>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("shard-{}", seed.index))
        .spawn(move || {
            let _notice = ExitNotice {
                shard: seed.index,
                events: events.clone(),
            };
            if let Some(core) = seed.core {
                if !core_affinity::set_for_current(core) {
                    tracing::warn!(shard = seed.index, "could not pin to core {}", core.id);
                }
            }
            let index = seed.index;
            if let Err(message) = run(seed, &events) {
                let _ = events.send(ShardEvent::Failed(index, message));
            }
        })
}

fn run(seed: ShardSeed, events: &Sender<ShardEvent>) -> Result<(), String> {
    let ShardSeed {
        index,
        engine,
        sockets,
        make_context,
        startup,
        ..
    } = seed;
    let duplicates = sockets
        .iter()
        .map(|(s, _, _)| s.try_clone())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cannot duplicate listening socket: {e}"))?;
    let ctx = Rc::new(make_context());
    match engine {
        Engine::Uring => {
            let runtime = tokio_uring::Runtime::new(&tokio_uring::builder())
                .map_err(|e| format!("cannot start io_uring runtime: {e}"))?;
            runtime.block_on(async move {
                let listeners = sockets
                    .into_iter()
                    .zip(duplicates)
                    .map(|((socket, protocol, implicit_tls), dup)| Bound {
                        listener: UringListener::from_std(socket),
                        socket: dup,
                        protocol,
                        implicit_tls,
                    })
                    .collect();
                let core = delivery_core(&ctx, UringConnector);
                let delivery = tokio::task::spawn_local(delivery::run(core, startup));
                let _ = events.send(ShardEvent::Ready(index));
                net_shard::run(ctx, listeners).await;
                let _ = delivery.await;
            });
        }
        Engine::Epoll => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start epoll runtime: {e}"))?;
            let local = tokio::task::LocalSet::new();
            local.block_on(&runtime, async move {
                let mut listeners = Vec::new();
                for ((socket, protocol, implicit_tls), dup) in sockets.into_iter().zip(duplicates) {
                    let listener = EpollListener::from_std(socket)
                        .map_err(|e| format!("cannot register listener with epoll: {e}"))?;
                    listeners.push(Bound {
                        listener,
                        socket: dup,
                        protocol,
                        implicit_tls,
                    });
                }
                let core = delivery_core(&ctx, EpollConnector);
                let delivery = tokio::task::spawn_local(delivery::run(core, startup));
                let _ = events.send(ShardEvent::Ready(index));
                net_shard::run(ctx, listeners).await;
                let _ = delivery.await;
                Ok::<(), String>(())
            })?;
        }
    }
    Ok(())
}

fn delivery_core<C: Connector + 'static>(ctx: &ShardContext, connector: C) -> Rc<Core<C>> {
    Core::new(
        ctx.shard,
        std::sync::Arc::clone(&ctx.delivery),
        connector,
        ctx.spool.clone(),
        std::sync::Arc::clone(&ctx.store),
        std::sync::Arc::clone(&ctx.mail_store),
        ctx.phase.clone(),
        Some(ctx.metrics.clone()),
    )
}
