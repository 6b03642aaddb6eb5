//! Pinned per-core shards, the io_uring probe and the engine choice.

pub mod probe;
