//! The runtime layer: pinned per-core shards that run the future the server gives them, the
//! io_uring probe, the engine choice and [`Phase`], the server's life as the shards see it.
//!
//! Role: one thread per core, each pinned and running its own single-threaded runtime:
//! tokio-uring (io_uring) or, as the fallback, tokio current-thread (epoll). Nothing is
//! shared between shards on the hot path except bounded queues (docs/ARCHITECTURE.md §3).
//!
//! Exposure: none to the network directly; reads /proc for the io_uring probe.

pub mod clock;
pub mod file_read;
pub mod mesh;
pub mod probe;
pub mod shard;

pub use probe::UringUnavailable;

/// Which kernel interface moves the bytes (`server.io`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum IoEngine {
    /// io_uring when the probe succeeds, else epoll with one warning naming the cause.
    #[default]
    Auto,
    /// io_uring or refuse to start.
    Uring,
    /// Force the epoll fallback (tokio current-thread runtimes).
    Epoll,
}

/// Where a shard is in the server's life. Sent from the main thread to every shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Running,
    /// Stop accepting; idle connections get 421 and close; transactions may finish.
    Draining,
    /// The drain deadline passed: every connection closes now.
    Stopping,
}

/// The kernel interface the shards use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Uring,
    Epoll,
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Engine::Uring => "io_uring",
            Engine::Epoll => "epoll",
        })
    }
}

/// Applies `server.io`: `auto` falls back to epoll with one warning naming the cause,
/// `uring` refuses to start without io_uring, `epoll` forces the fallback.
pub fn choose_engine(
    wanted: IoEngine,
    probe: impl FnOnce() -> Result<(), UringUnavailable>,
) -> Result<Engine, UringUnavailable> {
    match wanted {
        IoEngine::Epoll => Ok(Engine::Epoll),
        IoEngine::Uring => probe().map(|()| Engine::Uring),
        IoEngine::Auto => match probe() {
            Ok(()) => Ok(Engine::Uring),
            Err(cause) => {
                tracing::warn!("io_uring unavailable, using epoll: {cause}");
                Ok(Engine::Epoll)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_choice_follows_the_config() {
        let works = || Ok(());
        let denied = || Err(UringUnavailable::Denied);
        assert_eq!(choose_engine(IoEngine::Auto, works), Ok(Engine::Uring));
        assert_eq!(choose_engine(IoEngine::Auto, denied), Ok(Engine::Epoll));
        assert_eq!(choose_engine(IoEngine::Uring, works), Ok(Engine::Uring));
        assert_eq!(
            choose_engine(IoEngine::Uring, denied),
            Err(UringUnavailable::Denied)
        );
        assert_eq!(
            choose_engine(IoEngine::Epoll, || panic!("epoll must not probe")),
            Ok(Engine::Epoll)
        );
    }
}
