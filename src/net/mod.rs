//! Listeners and connection tasks: the only code that moves bytes.
//!
//! Role: accept connections on each shard, admit or refuse them, and drive the sans-IO
//! protocol sessions with bytes from the socket. No protocol decision is made here.
//!
//! Exposure: every byte comes from an untrusted network peer. This layer bounds what a peer
//! can hold: one read buffer per connection, connection counts per core and per client IP,
//! and timeouts on every wait.

pub mod conn;
pub mod delivery;
pub mod dnsbl;
pub mod io;
pub mod limits;
pub mod listener;
pub mod pop3_conn;
pub mod proxy;
pub mod shard;
pub mod smtp_conn;
pub mod starttls;
pub mod tls;
