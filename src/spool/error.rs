//! The spool's one error type.
//!
//! Every variant is an operating error (docs/ARCHITECTURE.md §10): the connection driver maps
//! `Backpressure`, `Io`, `Closed` and `TooLarge` to `452 4.3.1` (or `552` for `TooLarge`), and
//! `Recovery` / `Config` to one clear startup line. The error is `Clone` because one failed
//! group commit answers every waiter of its batch with the same error (hence `Arc<io::Error>`).

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::envelope::QueueId;

#[derive(Debug, Clone, thiserror::Error)]
pub enum SpoolError {
    /// The shard's append queue is full: answer `452 4.3.1` and let the client retry later.
    #[error("spool shard queue is full (backpressure)")]
    Backpressure,

    /// Another process holds the spool's lock (a running relay, or an offline compaction).
    #[error("spool lock {} is held by another process (is a relay already running on this spool?)", path.display())]
    Locked { path: PathBuf },

    /// The spool is shutting down (or its writer stopped): nothing was stored.
    #[error("spool is closed")]
    Closed,

    /// A file operation failed. For an append this means the message is NOT stored.
    #[error("spool {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },

    /// The spool on disk cannot be opened without a human decision (unknown record version or
    /// kind, unreadable segment header, misnamed file). Nothing was modified.
    #[error("spool recovery stopped at {} offset {offset}: {reason}", path.display())]
    Recovery {
        path: PathBuf,
        offset: u64,
        reason: String,
    },

    /// The stored body (Received header + message) or the metadata does not fit a frame.
    #[error("message of {len} bytes exceeds the spool record limit of {max} bytes")]
    TooLarge { len: u64, max: u64 },

    /// Bytes read back from a segment do not match their checksum (media damage). Nothing is
    /// served; the message needs an operator (`relay spool cat` shows the same error).
    #[error("spool data damaged in {} at offset {offset}: {reason}", path.display())]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },

    /// A record could not be encoded or decoded (rkyv); with a path when read from a file.
    #[error("spool record codec: {0}")]
    Codec(String),

    /// `inspect::cat` or a location lookup found no such record.
    #[error("no message {0} in the spool")]
    NotFound(QueueId),

    /// The configuration (or the shard count) is out of range.
    #[error("invalid spool configuration: {0}")]
    Config(String),
}

impl SpoolError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        SpoolError::Io {
            op,
            path: path.into(),
            source: Arc::new(source),
        }
    }
}
