//! The receiving side of a queue transfer (`relay node drain` on a peer): a message that
//! comes over the cluster listener with `XQUEUE` is stored with its schedule and queued to
//! retry when the drainer would have, not now.
//!
//! **Durable before 250.** [`import`] stores the message (its origin names the drainer's
//! `node:queue-id`, protocol `XFER`), then the schedule record (one Deferred result per tried
//! recipient, a Delay marker where the notice went out: what recovery rebuilds the queue
//! from, [`crate::queue::xfer`]), then the key in the transfer log, and only then answers.
//! A crash between the message and its schedule leaves a message that is retried at once
//! (earlier than planned, never lost).
//!
//! **Dedup.** A drainer that died between our 250 and its own record sends the message
//! again. [`XferLog`] answers "seen" for every key it holds: keys are appended to
//! `<spool.dir>/xfer-seen.log` (fdatasync) after the message is durable, and at start the
//! keys of live spool messages imported here are added too (a crash between the message and
//! the log line is covered by the message itself, whose origin holds the key; such a
//! message is not handed to delivery before its key is logged). The log keeps the newest
//! [`SEEN_MAX`] keys (rewritten, tmp + fsync + rename, when twice that is reached): a drainer
//! repeats a transfer within seconds, far inside that window.

use std::collections::{HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::delivery::DeliveryShared;
use crate::envelope::{Origin, QueueId};
use crate::queue::xfer::Transfer;
use crate::spool::{NewMessage, ShardHandle, Spool, SpoolError};

/// Keys kept in the transfer log.
pub const SEEN_MAX: usize = 100_000;
/// The origin protocol of an imported message.
pub const PROTOCOL: &str = "XFER";
const FILE: &str = "xfer-seen.log";

/// Why an import failed (answered 451: the drainer keeps the message and tries again).
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("spool: {0}")]
    Spool(#[from] SpoolError),
    #[error("the spool stopped")]
    Closed,
    #[error("transfer log {path}: {source}")]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// How an import ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Imported {
    /// Stored here as this queue id.
    Stored(QueueId),
    /// Already stored by an earlier transfer: nothing done.
    Duplicate,
}

/// The keys of transfers stored here (bounded, durable).
pub struct XferLog {
    path: PathBuf,
    inner: Mutex<Seen>,
}

struct Seen {
    set: HashSet<String>,
    order: VecDeque<String>,
    file: File,
    lines: usize,
}

impl XferLog {
    /// Opens (or creates) the log in `dir` and adds the keys of live imported messages in
    /// `spool` (read once, at start).
    pub fn open(dir: &Path, spool: Option<&Spool>) -> Result<XferLog, ImportError> {
        let path = dir.join(FILE);
        let err = |source| ImportError::Log {
            path: path.clone(),
            source,
        };
        let mut order = VecDeque::new();
        let mut set = HashSet::new();
        let mut lines = 0;
        let mut torn = false;
        if let Ok(text) = std::fs::read(&path) {
            // A torn last line (crash mid-append) is not a key we answered for.
            torn = !text.is_empty() && !text.ends_with(b"\n");
            for line in text.split(|&b| b == b'\n') {
                let Ok(line) = std::str::from_utf8(line) else {
                    continue;
                };
                lines += 1;
                if valid_key(line) && set.insert(line.to_string()) {
                    order.push_back(line.to_string());
                }
            }
            if torn {
                if let Some(last) = order.back() {
                    if text.ends_with(last.as_bytes()) {
                        let last = order.pop_back().unwrap_or_default();
                        set.remove(&last);
                    }
                }
            }
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(err)?;
        if torn {
            // The next key starts on a line of its own.
            file.write_all(b"\n").map_err(err)?;
        }
        let log = XferLog {
            path: path.clone(),
            inner: Mutex::new(Seen {
                set,
                order,
                file,
                lines,
            }),
        };
        if let Some(spool) = spool {
            for key in imported_keys(spool) {
                if !log.seen(&key) {
                    log.record(&key)?;
                }
            }
        }
        Ok(log)
    }

    pub fn seen(&self, key: &str) -> bool {
        lock(&self.inner).set.contains(key)
    }

    /// Adds `key`, durably (append + fdatasync) before returning.
    pub fn record(&self, key: &str) -> Result<(), ImportError> {
        let err = |source| ImportError::Log {
            path: self.path.clone(),
            source,
        };
        let mut s = lock(&self.inner);
        if !s.set.insert(key.to_string()) {
            return Ok(());
        }
        s.order.push_back(key.to_string());
        while s.order.len() > SEEN_MAX {
            if let Some(old) = s.order.pop_front() {
                s.set.remove(&old);
            }
        }
        s.file
            .write_all(format!("{key}\n").as_bytes())
            .and_then(|()| s.file.sync_data())
            .map_err(err)?;
        s.lines += 1;
        if s.lines > 2 * SEEN_MAX {
            let keep: Vec<String> = s.order.iter().cloned().collect();
            s.file = rewrite(&self.path, &keep).map_err(err)?;
            s.lines = keep.len();
        }
        Ok(())
    }
}

/// The log with only `keys`: tmp + fsync + rename + directory fsync; the new file to append.
fn rewrite(path: &Path, keys: &[String]) -> std::io::Result<File> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        for k in keys {
            f.write_all(k.as_bytes())?;
            f.write_all(b"\n")?;
        }
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    OpenOptions::new().append(true).open(path)
}

fn valid_key(k: &str) -> bool {
    !k.is_empty() && k.len() <= 64 && k.contains(':') && k.is_ascii()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// The keys of live messages imported here (their origin's HELO holds `node:queue-id`).
fn imported_keys(spool: &Spool) -> Vec<String> {
    let Ok(queued) = spool.queued(usize::MAX) else {
        return Vec::new();
    };
    queued
        .iter()
        .filter_map(|m| spool.locate(m.id))
        .filter_map(|l| spool.read_message(&l).ok())
        .filter(|m| m.meta.origin.protocol == PROTOCOL)
        .map(|m| m.meta.origin.helo)
        .filter(|k| valid_key(k))
        .collect()
}

/// Stores a transferred message with its schedule and queues it (see the module doc).
/// `core`: the calling shard's index (for the hand-off to the destinations' cores).
pub async fn import(
    shard: &ShardHandle,
    log: &XferLog,
    delivery: &Arc<DeliveryShared>,
    core: usize,
    transfer: &Transfer,
    body: Vec<u8>,
) -> Result<Imported, ImportError> {
    let key = transfer.key();
    if log.seen(&key) {
        tracing::info!(key = %key, "transfer already stored here; answered again");
        return Ok(Imported::Duplicate);
    }
    let id = shard.next_id(std::time::SystemTime::now());
    let size = body.len() as u64;
    let peer = transfer.origin.node.clone();
    let message = NewMessage {
        id,
        arrival_unix_micros: transfer.origin.arrival_unix_micros,
        origin: Origin {
            client_ip: String::new(),
            client_port: 0,
            helo: key.clone(),
            protocol: PROTOCOL.into(),
        },
        envelope: transfer.envelope(),
        received_header: Vec::new(),
        body,
        mailboxes: Vec::new(),
        remote: transfer.remote(),
        placements: Vec::new(),
    };
    shard
        .append_message(message)?
        .await
        .map_err(|_| ImportError::Closed)??;
    shard
        .append_delivery(transfer.schedule_record(id))?
        .await
        .map_err(|_| ImportError::Closed)??;
    log.record(&key)?;
    crate::delivery::control::enqueue_transferred(delivery, core, id, size, transfer);
    tracing::info!(target: "relay::delivery", queue_id = %id, from = %peer, key = %key, recipients = transfer.recipients.len(), "transfer stored with its schedule");
    Ok(Imported::Stored(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_remembers_across_reopen_and_ignores_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let log = XferLog::open(dir.path(), None).unwrap();
        assert!(!log.seen("a:0000000000000001"));
        log.record("a:0000000000000001").unwrap();
        log.record("a:0000000000000001").unwrap();
        assert!(log.seen("a:0000000000000001"));
        drop(log);
        // A crash mid-append leaves a partial line without its newline: not a key.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join(FILE))
            .unwrap();
        f.write_all(b"b:00000000000000").unwrap();
        drop(f);
        let log = XferLog::open(dir.path(), None).unwrap();
        assert!(log.seen("a:0000000000000001"));
        assert!(!log.seen("b:00000000000000"));
        log.record("c:0000000000000003").unwrap();
        drop(log);
        let log = XferLog::open(dir.path(), None).unwrap();
        assert!(
            log.seen("c:0000000000000003"),
            "a key after a torn line is whole"
        );
    }
}
