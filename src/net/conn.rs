//! Connection plumbing shared by the protocol drivers: bounded I/O waits that never leave an
//! operation armed, the shutdown signal, reply flushing and read-buffer management.

use std::future::Future;
use std::io;
use std::time::Duration;

use tokio::sync::watch;

use super::io::Connection;
use crate::runtime::Phase;

/// Bytes read per call while data flows. Command lines are at most `smtp.command_line_max`,
/// so a partial line plus one chunk always fits.
pub const READ_CHUNK: usize = 16 * 1024;
/// The buffer a connection waits for its next command with. A waiting read owns its buffer
/// (io_uring holds it until the read completes), so this, not [`READ_CHUNK`], is what every
/// idle connection costs: a command line or a pipelined group fits, and a read that fills it
/// grows the buffer to a chunk for the next one (target: ≤ 8 KiB per idle connection,
/// docs/ARCHITECTURE.md §12).
pub const IDLE_READ: usize = 512;
/// How long a goodbye (421) may take to write before the socket is simply shut.
pub const GOODBYE_WRITE_LIMIT: Duration = Duration::from_secs(2);

/// The I/O wait ended without the operation's result.
pub struct Expired;

/// Runs an I/O future with a time limit. On expiry the connection is shut down and the
/// future is still awaited to completion (it completes at once after the shutdown), so no
/// operation is left armed in the kernel.
pub async fn within<C: Connection, F: Future>(
    conn: &C,
    limit: Duration,
    io: F,
) -> Result<F::Output, Expired> {
    tokio::pin!(io);
    tokio::select! {
        biased;
        out = &mut io => Ok(out),
        _ = tokio::time::sleep(limit) => {
            conn.shutdown();
            let _ = io.await;
            Err(Expired)
        }
    }
}

/// How a [`read_more`] ended.
#[derive(Debug)]
pub enum Read {
    /// This many bytes were appended to the buffer.
    Data(usize),
    /// The peer closed its side.
    Closed,
    Error(io::Error),
    /// The deadline passed or the stop signal came first.
    Expired(Expiry),
}

/// Which wait ended a read before any bytes came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    Deadline,
    Stop,
}

/// Reads once into the spare capacity of `buf`, until `deadline` or until `stop` resolves,
/// whichever comes first (a read that completes wins a tie). The one place that keeps the
/// io_uring rule for reads (never drop an armed operation; docs/ARCHITECTURE.md §7): when
/// the wait ends first, `goodbye` is asked for the last bytes to send (an empty vector:
/// none), they are written while the read is still armed (within [`GOODBYE_WRITE_LIMIT`]),
/// then the connection is shut down and the pending read is awaited to completion. Whatever ends it but [`Read::Data`], the
/// connection is shut down on return and no operation is left armed; the buffer comes back
/// in every case.
pub async fn read_more<C: Connection>(
    conn: &C,
    buf: Vec<u8>,
    deadline: tokio::time::Instant,
    stop: impl Future,
    goodbye: impl FnOnce(Expiry) -> Vec<u8>,
) -> (Read, Vec<u8>) {
    let read = conn.read_into(buf);
    tokio::pin!(read);
    let expiry = tokio::select! {
        biased;
        (result, buf) = &mut read => {
            let read = match result {
                Ok(0) => Read::Closed,
                Ok(n) => return (Read::Data(n), buf),
                Err(error) => Read::Error(error),
            };
            conn.shutdown();
            return (read, buf);
        }
        _ = tokio::time::sleep_until(deadline) => Expiry::Deadline,
        _ = stop => Expiry::Stop,
    };
    let _ = flush(conn, &mut goodbye(expiry), GOODBYE_WRITE_LIMIT).await;
    conn.shutdown();
    let (_, buf) = read.await;
    (Read::Expired(expiry), buf)
}

/// Resolves when this connection must end because of shutdown: at once when stopping, and
/// when draining only if no transaction is in flight (in-flight ones may finish).
pub async fn stop_requested(phase: &mut watch::Receiver<Phase>, in_transaction: bool) {
    loop {
        let now = *phase.borrow_and_update();
        if now == Phase::Stopping || (now == Phase::Draining && !in_transaction) {
            return;
        }
        if phase.changed().await.is_err() {
            // The server side of the channel is gone only at process exit.
            std::future::pending::<()>().await;
        }
    }
}

/// Writes the encoded replies, if any, in one write; keeps a small allocation for the next ones.
pub async fn flush<C: Connection>(
    conn: &C,
    bytes: &mut Vec<u8>,
    limit: Duration,
) -> Result<(), Expired> {
    if bytes.is_empty() {
        return Ok(());
    }
    let pending = std::mem::take(bytes);
    match within(conn, limit, conn.write_all(pending)).await {
        Ok((Ok(()), mut buffer)) => {
            buffer.clear();
            // Keep a reply-sized allocation, not the one a large answer (a RETR) grew.
            if buffer.capacity() <= READ_CHUNK {
                *bytes = buffer;
            }
            Ok(())
        }
        _ => Err(Expired),
    }
}

/// Moves the unconsumed tail to the front and makes room for one more read. `waiting`: the
/// session waits for a command (not inside a message), so the buffer stays small:
/// [`IDLE_READ`] when empty, and doubling only while a partial line fills it (a command line
/// is bounded by the session, which consumes an over-long one as it discards it, so the
/// growth is too); a large buffer left from a message is given back. Otherwise (message
/// data) the read gets a whole [`READ_CHUNK`].
pub fn compact(input: &mut Vec<u8>, consumed: &mut usize, waiting: bool) {
    if *consumed > 0 {
        input.drain(..*consumed);
        *consumed = 0;
    }
    if waiting {
        if input.is_empty() {
            if input.capacity() != IDLE_READ {
                *input = Vec::with_capacity(IDLE_READ);
            }
            return;
        }
        let wanted = (2 * input.len()).max(IDLE_READ);
        if input.capacity() > 4 * wanted {
            // What a message grew, with only the start of the next command in it.
            input.shrink_to(wanted);
        }
        if input.capacity() - input.len() < IDLE_READ / 2 {
            // Doubles: a line arriving in pieces costs a logarithmic number of moves.
            input.reserve(input.capacity().max(IDLE_READ));
        }
        return;
    }
    if input.capacity() - input.len() < READ_CHUNK / 4 {
        input.reserve(READ_CHUNK);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::io::epoll::EpollConnector;
    use crate::net::io::uring::UringConnector;
    use crate::net::io::Connector;
    use std::cell::Cell;
    use std::io::{Read as _, Write as _};
    use std::net::TcpStream;

    const LONG: Duration = Duration::from_secs(30);
    /// Bounds every blocking wait of the peer, so a broken primitive fails instead of hanging.
    const PEER_WAIT: Duration = Duration::from_secs(5);

    /// Our side (through the engine) and the peer's (a blocking std socket) of one loopback
    /// connection.
    async fn pair<K: Connector>(connector: K) -> (K::Conn, TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let conn = connector.connect(addr, PEER_WAIT).await.unwrap();
        let (peer, _) = listener.accept().unwrap();
        peer.set_read_timeout(Some(PEER_WAIT)).unwrap();
        (conn, peer)
    }

    fn far() -> tokio::time::Instant {
        tokio::time::Instant::now() + LONG
    }

    /// Fails the test instead of hanging when a read that should end does not.
    async fn bounded<F: Future>(io: F) -> F::Output {
        tokio::time::timeout(PEER_WAIT, io)
            .await
            .expect("the read ended")
    }

    fn no_goodbye(_: Expiry) -> Vec<u8> {
        Vec::new()
    }

    /// Everything the peer receives until our side's end of stream.
    fn received(peer: &mut TcpStream) -> Vec<u8> {
        let mut got = Vec::new();
        peer.read_to_end(&mut got).unwrap();
        got
    }

    async fn data<K: Connector>(connector: K) {
        let (conn, mut peer) = pair(connector).await;
        peer.write_all(b"EHLO x\r\n").unwrap();
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(b"kept");
        let (read, buf) = bounded(read_more(
            &conn,
            buf,
            far(),
            std::future::pending::<()>(),
            no_goodbye,
        ))
        .await;
        assert!(matches!(read, Read::Data(8)), "{read:?}");
        assert_eq!(buf, b"keptEHLO x\r\n");
        // Data leaves the connection open: the next read gets the next bytes.
        peer.write_all(b"QUIT\r\n").unwrap();
        let (read, buf) = bounded(read_more(
            &conn,
            buf,
            far(),
            std::future::pending::<()>(),
            no_goodbye,
        ))
        .await;
        assert!(matches!(read, Read::Data(6)), "{read:?}");
        assert_eq!(buf, b"keptEHLO x\r\nQUIT\r\n");
    }

    async fn empty_buffer<K: Connector>(connector: K) {
        // An empty buffer may be given back while the read waits (epoll): the caller gets
        // one of the capacity it reserved, holding what came.
        let (conn, mut peer) = pair(connector).await;
        peer.write_all(b"NOOP\r\n").unwrap();
        let (read, buf) = bounded(read_more(
            &conn,
            Vec::with_capacity(IDLE_READ),
            far(),
            std::future::pending::<()>(),
            no_goodbye,
        ))
        .await;
        assert!(matches!(read, Read::Data(6)), "{read:?}");
        assert_eq!(buf, b"NOOP\r\n");
        assert!(buf.capacity() >= IDLE_READ, "{}", buf.capacity());
    }

    async fn peer_close<K: Connector>(connector: K) {
        let (conn, peer) = pair(connector).await;
        drop(peer);
        let asked = Cell::new(false);
        let goodbye = |_| {
            asked.set(true);
            b"421 bye\r\n".to_vec()
        };
        let (read, buf) = bounded(read_more(
            &conn,
            Vec::with_capacity(64),
            far(),
            std::future::pending::<()>(),
            goodbye,
        ))
        .await;
        assert!(matches!(read, Read::Closed), "{read:?}");
        assert!(buf.is_empty());
        assert!(!asked.get(), "no goodbye to a peer that left");
    }

    async fn deadline<K: Connector>(connector: K) {
        let (conn, mut peer) = pair(connector).await;
        let started = tokio::time::Instant::now();
        let limit = Duration::from_millis(100);
        let asked = Cell::new(None);
        let goodbye = |expiry| {
            asked.set(Some(expiry));
            b"421 4.4.2 timeout\r\n".to_vec()
        };
        let (read, _) = bounded(read_more(
            &conn,
            Vec::with_capacity(64),
            started + limit,
            std::future::pending::<()>(),
            goodbye,
        ))
        .await;
        assert!(matches!(read, Read::Expired(Expiry::Deadline)), "{read:?}");
        assert!(started.elapsed() >= limit);
        assert_eq!(asked.get(), Some(Expiry::Deadline));
        // `conn` is still open here: the end of stream comes from the shutdown, after the
        // goodbye.
        assert_eq!(received(&mut peer), b"421 4.4.2 timeout\r\n");
        // Bytes sent now are not taken by a read left armed: our side's next read sees
        // the shut socket at once.
        let _ = peer.write_all(b"late\r\n");
        let next = tokio::time::timeout(PEER_WAIT, conn.read_into(Vec::with_capacity(64))).await;
        let (result, buf) = next.expect("a read on the shut socket completes");
        // End of stream or a reset (the kernel answers data for a shut socket with RST);
        // never the late bytes, and never a wait.
        assert!(!matches!(result, Ok(n) if n > 0), "{result:?}");
        assert!(buf.is_empty());
    }

    async fn stop<K: Connector>(connector: K) {
        let (conn, mut peer) = pair(connector).await;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let asked = Cell::new(None);
        let goodbye = |expiry| {
            asked.set(Some(expiry));
            b"421 4.3.2 shutting down\r\n".to_vec()
        };
        // The signal comes while the read is armed (read_more is polled first).
        let ((read, _), _) = tokio::join!(
            bounded(read_more(&conn, Vec::with_capacity(64), far(), rx, goodbye)),
            async move { tx.send(()) }
        );
        assert!(matches!(read, Read::Expired(Expiry::Stop)), "{read:?}");
        assert_eq!(asked.get(), Some(Expiry::Stop));
        assert_eq!(received(&mut peer), b"421 4.3.2 shutting down\r\n");
    }

    async fn silent_expiry<K: Connector>(connector: K) {
        let (conn, mut peer) = pair(connector).await;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(20);
        let (read, _) = bounded(read_more(
            &conn,
            Vec::with_capacity(64),
            deadline,
            std::future::pending::<()>(),
            no_goodbye,
        ))
        .await;
        assert!(matches!(read, Read::Expired(Expiry::Deadline)), "{read:?}");
        assert_eq!(received(&mut peer), b"");
    }

    /// One test per case and engine: `uring::data`, `epoll::data`, ...
    macro_rules! on_both_engines {
        ($($case:ident),*) => {
            mod uring {
                $(#[test]
                fn $case() {
                    let runtime = tokio_uring::Runtime::new(&tokio_uring::builder()).unwrap();
                    runtime.block_on(super::$case(super::UringConnector));
                })*
            }
            mod epoll {
                $(#[test]
                fn $case() {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    runtime.block_on(super::$case(super::EpollConnector));
                })*
            }
        };
    }

    on_both_engines!(
        data,
        empty_buffer,
        peer_close,
        deadline,
        stop,
        silent_expiry
    );

    #[test]
    fn a_waiting_connection_holds_a_small_buffer_and_data_gets_a_chunk() {
        // After a 10 KiB message the session waits for its next command.
        let mut input = Vec::with_capacity(READ_CHUNK);
        input.extend_from_slice(&[b'x'; 10 * 1024]);
        let mut consumed = input.len();
        compact(&mut input, &mut consumed, true);
        assert_eq!((input.len(), input.capacity()), (0, IDLE_READ));
        // The small read filled up with part of a command line: the buffer doubles, no more.
        input.extend_from_slice(&[b'a'; IDLE_READ]);
        compact(&mut input, &mut 0, true);
        assert_eq!(input.len(), IDLE_READ, "the partial line is kept");
        assert!(input.capacity() >= 2 * IDLE_READ && input.capacity() < READ_CHUNK);
        // Inside a message the read gets a chunk, and an emptied buffer is not shrunk.
        compact(&mut input, &mut 0, false);
        assert!(input.capacity() - input.len() >= READ_CHUNK / 4);
        let mut consumed = input.len();
        let before = input.capacity();
        compact(&mut input, &mut consumed, false);
        assert_eq!((input.len(), input.capacity()), (0, before));
        // A fresh connection's empty buffer gets the small one too.
        let mut input = Vec::new();
        compact(&mut input, &mut 0, true);
        assert_eq!(input.capacity(), IDLE_READ);
    }

    /// What a session does with command lines, reduced to the part that bounds the buffer:
    /// takes every complete line; a partial line longer than `limit` is consumed as it is
    /// discarded (up to its LF), and answered with one error.
    struct Lines {
        limit: usize,
        discarding: bool,
        lines: Vec<Vec<u8>>,
        too_long: usize,
    }

    impl Lines {
        fn new(limit: usize) -> Lines {
            Lines {
                limit,
                discarding: false,
                lines: Vec::new(),
                too_long: 0,
            }
        }

        fn take(&mut self, input: &[u8]) -> usize {
            let mut at = 0;
            loop {
                let rest = &input[at..];
                match rest.iter().position(|&b| b == b'\n') {
                    Some(end) => {
                        if self.discarding {
                            self.discarding = false;
                        } else if end + 1 > self.limit {
                            self.too_long += 1;
                        } else {
                            self.lines.push(rest[..=end].to_vec());
                        }
                        at += end + 1;
                    }
                    None if self.discarding || rest.len() > self.limit => {
                        if !self.discarding {
                            self.too_long += 1;
                            self.discarding = true;
                        }
                        return input.len();
                    }
                    None => return at,
                }
            }
        }
    }

    /// One read as `Connection::read_into` does it: into the spare capacity only, at most
    /// `max` of what the peer sent.
    fn read_some(input: &mut Vec<u8>, peer: &mut &[u8], max: usize) {
        let spare = input.capacity() - input.len();
        assert!(spare > 0, "a read needs spare capacity");
        let n = spare.min(max).min(peer.len());
        input.extend_from_slice(&peer[..n]);
        *peer = &peer[n..];
    }

    /// Feeds `sent` to `lines` in reads of at most `max`, as a driver does while waiting for
    /// commands; the largest capacity the buffer reached.
    fn drive_commands(sent: &[u8], max: usize, lines: &mut Lines) -> usize {
        let mut peer = sent;
        let (mut input, mut consumed, mut largest) = (Vec::new(), 0, 0);
        while !peer.is_empty() {
            compact(&mut input, &mut consumed, true);
            largest = largest.max(input.capacity());
            read_some(&mut input, &mut peer, max);
            consumed += lines.take(&input[consumed..]);
        }
        compact(&mut input, &mut consumed, true);
        assert_eq!(input.capacity(), IDLE_READ, "idle again after the commands");
        largest
    }

    #[test]
    fn a_command_split_across_many_small_reads_is_whole_and_small() {
        let command = b"MAIL FROM:<someone@example.test> SIZE=1000\r\n";
        let sent: Vec<u8> = command.repeat(20);
        for max in [1, 2, 3, 7, 64] {
            let mut lines = Lines::new(512);
            let largest = drive_commands(&sent, max, &mut lines);
            assert_eq!(lines.lines.len(), 20, "reads of {max}");
            assert!(lines.lines.iter().all(|l| l == command));
            assert_eq!(
                largest, IDLE_READ,
                "reads of {max}: never past the small buffer"
            );
        }
    }

    #[test]
    fn a_line_longer_than_the_small_buffer_grows_it_within_the_line_limit() {
        // A 2,000-octet line is still a command when the limit allows it.
        let long = [vec![b'x'; 1998], b"\r\n".to_vec()].concat();
        let mut lines = Lines::new(4096);
        let largest = drive_commands(
            &[long.clone(), b"QUIT\r\n".to_vec()].concat(),
            300,
            &mut lines,
        );
        assert_eq!(lines.lines, vec![long, b"QUIT\r\n".to_vec()]);
        assert!((2000..=4 * 2000).contains(&largest), "{largest}");
    }

    #[test]
    fn an_over_long_line_is_refused_and_the_buffer_stays_bounded() {
        // 1 MiB without a line end, over reads of every size: the limit is what bounds the
        // buffer, not the line.
        let limit = 512;
        let sent = [vec![b'y'; 1 << 20], b"\r\nNOOP\r\n".to_vec()].concat();
        for max in [100, 1000, READ_CHUNK] {
            let mut lines = Lines::new(limit);
            let largest = drive_commands(&sent, max, &mut lines);
            assert_eq!(lines.too_long, 1, "one error for the line (reads of {max})");
            assert_eq!(
                lines.lines,
                vec![b"NOOP\r\n".to_vec()],
                "the next command is whole"
            );
            assert!(
                largest <= 4 * (limit + IDLE_READ),
                "reads of {max}: {largest}"
            );
        }
    }

    #[test]
    fn several_mib_of_data_read_in_chunks_then_the_buffer_is_given_back() {
        let body = vec![b'z'; 5 << 20];
        let mut peer = &body[..];
        let (mut input, mut consumed, mut got, mut reads) = (Vec::new(), 0, 0usize, 0);
        while !peer.is_empty() {
            compact(&mut input, &mut consumed, false);
            assert!(input.capacity() <= 2 * READ_CHUNK, "{}", input.capacity());
            read_some(&mut input, &mut peer, usize::MAX);
            reads += 1;
            // The session takes all but a possible partial line's worth.
            let take = (input.len() - consumed).saturating_sub(100);
            got += take;
            consumed += take;
        }
        got += input.len() - consumed;
        consumed = input.len();
        assert_eq!(got, body.len());
        assert!(reads <= body.len() / (READ_CHUNK / 4), "{reads} reads");
        // The next command: a partial one in the large buffer shrinks it, then empty: small.
        input.extend_from_slice(b"QU");
        compact(&mut input, &mut consumed, true);
        assert!(input.capacity() < READ_CHUNK, "{}", input.capacity());
        consumed = input.len();
        compact(&mut input, &mut consumed, true);
        assert_eq!(input.capacity(), IDLE_READ);
    }
}
