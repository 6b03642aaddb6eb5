//! Connections spread evenly over the shards (`server.spread_connections`).
//!
//! SO_REUSEPORT picks a shard by a hash of the client's address and port, so a few long
//! connections often share a shard while another has none: four on two shards all land on
//! one 1 time in 8 and three on one half the time, and that core then does the work of all
//! of them while the other idles. A shard that accepts a connection while it serves more
//! connections than the least busy shard hands the socket to that shard before anything is
//! read or written, through a lock-free queue per pair of shards (`runtime::mesh`).
//!
//! "Busy" is the count of open connections (every protocol; what admission counts), plus
//! sockets sent to a shard and not yet taken: a count cannot see that one connection is
//! busier than another, but it needs no guess and it is what the kernel's hash gets wrong.
//! A full queue keeps the connection where it was accepted.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::runtime::mesh::Mesh;

use super::shard::Protocol;

/// Sockets in flight from one shard to another before the sender serves them itself.
const PAIR_CAPACITY: usize = 256;

/// An accepted socket on its way to the shard that will serve it.
pub struct Handoff {
    pub stream: std::net::TcpStream,
    pub peer: SocketAddr,
    pub protocol: Protocol,
    pub implicit_tls: bool,
}

/// The shards' connection counts and the queues between them; shared by every shard.
pub struct Balance {
    /// Open connections per shard (each shard's admission counts its own).
    open: Vec<Arc<AtomicUsize>>,
    /// Sockets sent to each shard and not yet taken by it.
    pending: Vec<AtomicUsize>,
    mesh: Mesh<Handoff, ()>,
}

impl Balance {
    pub fn new(shards: usize) -> Balance {
        Balance {
            open: (0..shards).map(|_| Arc::new(AtomicUsize::new(0))).collect(),
            pending: (0..shards).map(|_| AtomicUsize::new(0)).collect(),
            mesh: Mesh::new(shards, PAIR_CAPACITY),
        }
    }

    /// Shard `shard`'s open-connection count, for its admission to keep.
    pub fn open_count(&self, shard: usize) -> Arc<AtomicUsize> {
        self.open
            .get(shard)
            .cloned()
            .unwrap_or_else(|| Arc::new(AtomicUsize::new(0)))
    }

    fn load(&self, shard: usize) -> usize {
        let open = self
            .open
            .get(shard)
            .map_or(0, |n| n.load(Ordering::Relaxed));
        let pending = self
            .pending
            .get(shard)
            .map_or(0, |n| n.load(Ordering::Relaxed));
        open + pending
    }

    /// Serves `handoff` on the least busy shard if that is not `me`; gives it back when `me`
    /// should serve it (it is among the least busy, or the queue there is full).
    pub fn place(&self, me: usize, handoff: Handoff) -> Option<Handoff> {
        let loads: Vec<usize> = (0..self.open.len()).map(|s| self.load(s)).collect();
        let Some(to) = least_busy(&loads, me) else {
            return Some(handoff);
        };
        self.pending[to].fetch_add(1, Ordering::Relaxed);
        match self.mesh.send(me, to, handoff) {
            Ok(()) => None,
            Err(handoff) => {
                self.pending[to].fetch_sub(1, Ordering::Relaxed);
                Some(handoff)
            }
        }
    }

    /// Takes every socket other shards sent to `me`.
    pub fn take(&self, me: usize, mut serve: impl FnMut(Handoff)) {
        if let Some(inbox) = self.mesh.inbox(me) {
            inbox.drain(|handoff| {
                self.pending[me].fetch_sub(1, Ordering::Relaxed);
                serve(handoff);
            });
        }
    }

    /// Resolves after a socket was sent to `me` (at once if one was sent since the last wait).
    pub async fn sent_to(&self, me: usize) {
        if let Some(inbox) = self.mesh.inbox(me) {
            inbox.wake.notified().await;
        }
    }
}

/// The shard a new connection accepted on `me` should go to, given each shard's load: the
/// least busy one (the first of equals), unless `me` is as little busy.
fn least_busy(loads: &[usize], me: usize) -> Option<usize> {
    let mine = *loads.get(me)?;
    let (to, least) = loads
        .iter()
        .copied()
        .enumerate()
        .min_by_key(|&(shard, load)| (load, shard))?;
    (least < mine).then_some(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_moves_only_to_a_less_busy_shard() {
        assert_eq!(least_busy(&[0, 0], 0), None);
        assert_eq!(least_busy(&[1, 0], 0), Some(1));
        assert_eq!(least_busy(&[1, 1], 1), None);
        assert_eq!(least_busy(&[3, 1, 1, 2], 0), Some(1));
        assert_eq!(least_busy(&[3, 1, 1, 2], 2), None);
        assert_eq!(least_busy(&[3, 2, 0, 2], 3), Some(2));
        assert_eq!(least_busy(&[5], 0), None);
        assert_eq!(least_busy(&[], 0), None);
        assert_eq!(least_busy(&[1, 0], 7), None);
    }

    /// Accepting every connection on shard 0, as the kernel's hash may, and placing each:
    /// the shards end up within one connection of each other.
    #[test]
    fn connections_accepted_on_one_shard_end_up_spread() {
        let balance = Balance::new(3);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut clients = Vec::new();
        let mut served_here = 0;
        for _ in 0..10 {
            clients.push(std::net::TcpStream::connect(addr).unwrap());
            let (stream, peer) = listener.accept().unwrap();
            let handoff = Handoff {
                stream,
                peer,
                protocol: Protocol::Smtp,
                implicit_tls: false,
            };
            if balance.place(0, handoff).is_some() {
                // Served here: admission counts it.
                balance.open[0].fetch_add(1, Ordering::Relaxed);
                served_here += 1;
            }
        }
        assert_eq!(served_here, 4);
        let mut taken = [0; 3];
        for (shard, count) in taken.iter_mut().enumerate() {
            balance.take(shard, |handoff| {
                assert_eq!(handoff.peer.ip(), addr.ip());
                balance.open[shard].fetch_add(1, Ordering::Relaxed);
                *count += 1;
            });
        }
        assert_eq!(taken, [0, 3, 3]);
        assert_eq!(
            (0..3).map(|s| balance.load(s)).collect::<Vec<_>>(),
            [4, 3, 3]
        );
    }

    /// A full queue keeps the connection on the shard that accepted it.
    #[test]
    fn a_full_queue_gives_the_socket_back() {
        let balance = Balance::new(2);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        balance.open[0].store(PAIR_CAPACITY + 10, Ordering::Relaxed);
        let mut clients = Vec::new();
        let mut kept = 0;
        for _ in 0..PAIR_CAPACITY + 1 {
            clients.push(std::net::TcpStream::connect(addr).unwrap());
            let (stream, peer) = listener.accept().unwrap();
            let handoff = Handoff {
                stream,
                peer,
                protocol: Protocol::Pop3,
                implicit_tls: false,
            };
            if balance.place(0, handoff).is_some() {
                kept += 1;
            }
        }
        assert_eq!(kept, 1, "the queue took {PAIR_CAPACITY}, the last stayed");
        assert_eq!(
            balance.load(1),
            PAIR_CAPACITY,
            "only what was sent is pending"
        );
    }
}
