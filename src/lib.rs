//! `relay`: a high-throughput SMTP edge relay, thread-per-core on io_uring, with a durable
//! append-only spool. See README.md for the architecture and DESIGN notes.
//!
//! Module map:
//! - [`config`]: the typed TOML configuration, its defaults (each with its reason) and the
//!   checks that relate limits to each other.
//! - [`envelope`]: the envelope types shared by the SMTP session and the spool.
//! - [`smtp`]: the sans-IO SMTP server (and later client) protocol core.
//! - [`spool`]: the append-only, checksummed, group-committed message log.
//! - [`runtime`]: pinned per-core threads, the io_uring probe and the engine choice.
//! - [`net`]: listeners and connection tasks: the only code that moves bytes.
//! - [`tune`]: `relay tune`: the embedded kernel profiles compared with this machine.
//! - [`metrics`]: the Prometheus registry (per-core handles) and the `relay stat` summary.
//! - [`admin`]: the loopback HTTP listener (`/metrics`, `/stat`, queue control) and its client.

// No module needs unsafe code: io_uring comes through tokio-uring, SIMD through memchr and
// base64-simd, syscalls through std, socket2, core_affinity and rustix.
#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod delivery;
pub mod envelope;
pub mod mailbox;
pub mod metrics;
pub mod mime;
pub mod net;
pub mod pop3;
pub mod proto;
pub mod queue;
pub mod runtime;
pub mod server;
pub mod smtp;
pub mod spool;
pub mod tune;
