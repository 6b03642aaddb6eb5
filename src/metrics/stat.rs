//! The summary of the metrics that `/stat` serves as JSON and `relay stat` prints: per core
//! connections, transactions, POP3, deliveries and the spool shard; the queue per destination.
//!
//! The JSON is the interface between a running server and `relay stat` (possibly of another
//! build), so fields are only ever added, each with a default when absent.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Stat {
    pub uptime_seconds: u64,
    pub cores: Vec<CoreStat>,
    pub queues: Vec<QueueStat>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CoreStat {
    pub core: usize,
    pub smtp: ProtocolStat,
    pub pop3: ProtocolStat,
    pub imap: ProtocolStat,
    /// SMTP transactions by result: `queued`, `deferred`, `rejected`.
    pub transactions: BTreeMap<String, u64>,
    /// SMTP transactions by reply code.
    pub transaction_codes: BTreeMap<String, u64>,
    pub message_bytes: u64,
    pub pop3_sessions: u64,
    pub pop3_retrievals: u64,
    /// Outbound delivery outcomes by result.
    pub deliveries: BTreeMap<String, u64>,
    pub queue_entries: i64,
    /// This core's spool shard (absent when the server has no spool to read).
    pub spool: Option<SpoolStat>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProtocolStat {
    pub open: i64,
    pub total: u64,
    pub refused: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SpoolStat {
    pub records: u64,
    pub bytes: u64,
    pub commits: u64,
    pub failed_records: u64,
    pub segments: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct QueueStat {
    pub core: usize,
    pub destination: String,
    pub depth: i64,
    pub oldest_age_seconds: i64,
}

impl Stat {
    /// The JSON `/stat` serves.
    pub fn to_json(&self) -> Vec<u8> {
        // Plain maps, strings and numbers: serialising cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    pub fn from_json(bytes: &[u8]) -> Result<Stat, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

fn count(map: &BTreeMap<String, u64>, key: &str) -> u64 {
    map.get(key).copied().unwrap_or(0)
}

/// `k=v k=v` of a map's non-zero entries, or `-` when there are none.
fn pairs(map: &BTreeMap<String, u64>) -> String {
    let shown: Vec<String> = map
        .iter()
        .filter(|(_, v)| **v > 0)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if shown.is_empty() {
        return "-".into();
    }
    shown.join(" ")
}

/// The human summary `relay stat` prints.
impl fmt::Display for Stat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let up = humantime::format_duration(std::time::Duration::from_secs(self.uptime_seconds));
        writeln!(f, "relay: up {up}, {} core(s)", self.cores.len())?;
        writeln!(
            f,
            "{:>4}  {:>13}  {:>13}  {:>8} {:>8} {:>8}  {:>8} {:>8}  {:>9} {:>9} {:>9} {:>8}  {:>6}",
            "CORE",
            "SMTP open/all",
            "POP3 open/all",
            "queued",
            "deferred",
            "rejected",
            "pop3 ses",
            "RETR",
            "delivered",
            "dlv-defer",
            "bounced",
            "expired",
            "queue"
        )?;
        let mut total = CoreStat::default();
        for c in &self.cores {
            writeln!(
                f,
                "{:>4}  {:>13}  {:>13}  {:>8} {:>8} {:>8}  {:>8} {:>8}  {:>9} {:>9} {:>9} {:>8}  {:>6}",
                c.core,
                format!("{}/{}", c.smtp.open, c.smtp.total),
                format!("{}/{}", c.pop3.open, c.pop3.total),
                count(&c.transactions, "queued"),
                count(&c.transactions, "deferred"),
                count(&c.transactions, "rejected"),
                c.pop3_sessions,
                c.pop3_retrievals,
                count(&c.deliveries, "delivered"),
                count(&c.deliveries, "deferred"),
                count(&c.deliveries, "bounced"),
                count(&c.deliveries, "expired"),
                c.queue_entries,
            )?;
            total.smtp.bytes_received += c.smtp.bytes_received;
            total.smtp.bytes_sent += c.smtp.bytes_sent;
            total.pop3.bytes_received += c.pop3.bytes_received;
            total.pop3.bytes_sent += c.pop3.bytes_sent;
            total.imap.bytes_received += c.imap.bytes_received;
            total.imap.bytes_sent += c.imap.bytes_sent;
            total.imap.open += c.imap.open;
            total.imap.total += c.imap.total;
            total.message_bytes += c.message_bytes;
            total.smtp.refused += c.smtp.refused + c.pop3.refused + c.imap.refused;
            for (code, n) in &c.transaction_codes {
                *total.transaction_codes.entry(code.clone()).or_insert(0) += n;
            }
        }
        writeln!(
            f,
            "replies: {}; refused connections: {}",
            pairs(&total.transaction_codes),
            total.smtp.refused
        )?;
        writeln!(
            f,
            "bytes: smtp in {} out {}, pop3 in {} out {}, messages stored {}",
            total.smtp.bytes_received,
            total.smtp.bytes_sent,
            total.pop3.bytes_received,
            total.pop3.bytes_sent,
            total.message_bytes
        )?;
        writeln!(
            f,
            "imap: {} open, {} in all; bytes in {} out {}",
            total.imap.open, total.imap.total, total.imap.bytes_received, total.imap.bytes_sent
        )?;
        for c in &self.cores {
            if let Some(s) = &c.spool {
                writeln!(
                    f,
                    "spool shard {}: {} records, {} bytes, {} commits, {} failed, {} segment(s)",
                    c.core, s.records, s.bytes, s.commits, s.failed_records, s.segments
                )?;
            }
        }
        if self.queues.is_empty() {
            writeln!(f, "queue: empty")?;
        } else {
            writeln!(f, "queue: {} destination(s)", self.queues.len())?;
            for q in &self.queues {
                writeln!(
                    f,
                    "  core {} {}: {} queued, oldest {}",
                    q.core,
                    q.destination,
                    q.depth,
                    humantime::format_duration(std::time::Duration::from_secs(
                        q.oldest_age_seconds.max(0) as u64
                    ))
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trips_and_tolerates_missing_fields() {
        let mut stat = Stat {
            uptime_seconds: 61,
            ..Stat::default()
        };
        let mut core = CoreStat::default();
        core.transactions.insert("queued".into(), 3);
        core.spool = Some(SpoolStat {
            records: 4,
            ..SpoolStat::default()
        });
        stat.cores.push(core);
        stat.queues.push(QueueStat {
            core: 0,
            destination: "example.test".into(),
            depth: 2,
            oldest_age_seconds: 90,
        });
        let again = Stat::from_json(&stat.to_json()).expect("parses");
        assert_eq!(again, stat);
        let sparse = Stat::from_json(br#"{"cores":[{"core":1}],"later_field":true}"#)
            .expect("unknown and missing fields are fine");
        assert_eq!(sparse.cores[0].core, 1);
    }

    #[test]
    fn summary_shows_each_core_spool_and_queue() {
        let mut stat = Stat::default();
        for core in 0..2 {
            let mut c = CoreStat {
                core,
                ..CoreStat::default()
            };
            c.smtp.total = 5 + core as u64;
            c.transactions.insert("queued".into(), 7);
            c.transaction_codes.insert("250".into(), 7);
            c.spool = Some(SpoolStat {
                records: 9,
                segments: 1,
                ..SpoolStat::default()
            });
            stat.cores.push(c);
        }
        stat.queues.push(QueueStat {
            core: 1,
            destination: "example.test".into(),
            depth: 2,
            oldest_age_seconds: 90,
        });
        let text = stat.to_string();
        assert!(text.contains("2 core(s)"), "{text}");
        assert!(text.contains("0/6"), "{text}");
        assert!(text.contains("replies: 250=14;"), "{text}");
        assert!(Stat::default().to_string().contains("replies: -;"));
        assert!(text.contains("spool shard 1: 9 records"), "{text}");
        assert!(
            text.contains("core 1 example.test: 2 queued, oldest 1m 30s"),
            "{text}"
        );
    }
}
