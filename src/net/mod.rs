//! Byte movement: the [`io::Connection`] seam with its io_uring and epoll engines, listening
//! sockets, bounded reads and writes that never leave an io_uring operation armed, the PROXY
//! protocol header, DNS lookups and TLS over any connection. No protocol decision is made here.
//!
//! Exposure: every byte comes from an untrusted network peer; this layer bounds what a peer
//! can hold (one read buffer per connection, timeouts on every wait).

pub mod conn;
pub mod dns;
pub mod https_get;
pub mod interfaces;
pub mod io;
pub mod listener;
pub mod proxy;
pub mod tls;
