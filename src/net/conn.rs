//! Connection plumbing shared by the protocol drivers: bounded I/O waits that never leave an
//! operation armed, the shutdown signal, reply flushing and read-buffer management.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;

use super::io::Connection;
use crate::runtime::Phase;

/// Bytes read per call. Command lines are at most `smtp.command_line_max`, so a partial line
/// plus one chunk always fits; an idle connection holds one such buffer (target: ≤ 32 KiB
/// per idle connection, docs/ARCHITECTURE.md §12).
pub const READ_CHUNK: usize = 16 * 1024;
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

/// Writes the encoded replies, if any, in one write; keeps the allocation for the next ones.
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
            *bytes = buffer;
            Ok(())
        }
        _ => Err(Expired),
    }
}

/// Moves the unconsumed tail to the front and makes room for one more read.
pub fn compact(input: &mut Vec<u8>, consumed: &mut usize) {
    if *consumed > 0 {
        input.drain(..*consumed);
        *consumed = 0;
    }
    if input.capacity() - input.len() < READ_CHUNK / 4 {
        input.reserve(READ_CHUNK);
    }
}
