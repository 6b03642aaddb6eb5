//! Several relays as one service (`[cluster]`; off unless configured). Each node keeps its
//! own durable spool, so the fastest path never waits on the network; only the state the
//! nodes must agree on is shared: limits and membership leases in Redis, the directory
//! (users, aliases, quotas, keys, home nodes) in PostgreSQL, and the node table from the
//! config. This layer holds the clients of those services; the server wires them in.
//!
//! Design notes: docs/ARCHITECTURE.md §17.

pub mod directory;
pub mod limits;
pub mod login_wire;
pub mod membership;
pub mod move_plan;
pub mod move_wire;
pub mod node;
pub mod redis;
pub mod status;
