//! `relay`: a high-throughput SMTP edge relay with POP3 and IMAP, thread-per-core on io_uring,
//! with a durable append-only spool. The layers, the import rule and the design notes are in
//! docs/ARCHITECTURE.md; imports point down this list (server → delivery → queue, spool,
//! mailbox, protocol cores → runtime, net).
//!
//! Module map:
//! - [`server`]: the assembly (start, serve, drain), per-shard accept loops, admission, DNSBL,
//!   the SMTP, POP3 and IMAP connection drivers and STARTTLS.
//! - [`delivery`]: the per-core outbound runtime: scheduler, workers, notices, the cross-core
//!   mesh, queue control, MX planning.
//! - [`queue`]: the pure delivery decisions: retry schedule, routes, outcomes, DSNs, the
//!   per-destination queues.
//! - [`spool`]: the append-only, checksummed, group-committed message log.
//! - [`mailbox`]: users, aliases and passwords; every user's mail over the spool, with the
//!   per-user write turn and change signal.
//! - [`mailcrypt`]: OpenPGP and S/MIME for stored mail: users' public keys, sealing to them,
//!   signature checks of arriving mail, Web Key Directory names (sans-IO).
//! - [`mailstore`]: every user's folders, UIDs, flags and modseqs over the spool (sans-IO).
//! - [`smtp`]: the sans-IO SMTP protocol core: server session and outbound client.
//! - [`pop3`]: the sans-IO POP3 server session.
//! - [`imap`]: the sans-IO IMAP4rev2/IMAP4rev1 server session.
//! - [`sender_auth`]: DKIM signing; SPF, DKIM, DMARC and ARC checks of arriving mail;
//!   `Authentication-Results`; DMARC aggregate reports.
//! - [`mime`]: the zero-copy MIME parser, Base64 and quoted-printable, 8BITMIME downgrade,
//!   the content policy.
//! - [`proto`]: what the line protocols share: the command-line framer and SASL PLAIN.
//! - [`envelope`]: the envelope types shared by the SMTP session and the spool.
//! - [`logsafe`]: peer text escaped and bounded for log lines.
//! - [`runtime`]: pinned per-core shards, the io_uring probe, the engine choice, `Phase`.
//! - [`net`]: the only code that moves bytes: connections on both engines, bounded waits,
//!   listeners, PROXY protocol, DNS, TLS.
//! - [`config`]: the typed TOML configuration, its defaults (each with its reason) and the
//!   checks that relate limits to each other.
//! - [`metrics`]: the Prometheus registry (per-core handles) and the `relay stat` summary.
//! - [`admin`]: the admin endpoint (`/metrics`, `/stat`, queue control) on a 0600 Unix socket
//!   and an opt-in loopback TCP listener, and its client.
//! - [`tune`]: `relay tune`: the embedded kernel profiles compared with this machine.
//! - [`init`]: `relay init`: a starter config, first user, certificate and spool.

// No module needs unsafe code: io_uring comes through tokio-uring, SIMD through memchr and
// base64-simd, syscalls through std, socket2, core_affinity and rustix.
#![forbid(unsafe_code)]

pub mod admin;
pub mod cluster;
pub mod config;
pub mod delivery;
pub mod durable;
pub mod envelope;
pub mod imap;
pub mod init;
pub mod logsafe;
pub mod mailbox;
pub mod mailcrypt;
pub mod mailstore;
pub mod metrics;
pub mod mime;
pub mod net;
pub mod pop3;
pub mod proto;
pub mod queue;
pub mod runtime;
pub mod sender_auth;
pub mod server;
pub mod smtp;
pub mod spool;
pub mod tune;
pub mod web;
