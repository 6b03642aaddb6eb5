//! `[spool]`: where and how the append-only log commits.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{defaults, invalid, ByteSize, Interval, SectionError};
use crate::spool::SpoolConfig;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolSection {
    pub dir: PathBuf,
    /// `false` is for benchmarks only: a 250 then no longer means the message is on disk.
    pub fsync: bool,
    pub commit_window: Interval,
    pub segment_size: ByteSize,
    pub appends_pending_max: usize,
    pub commit_records_max: usize,
    /// How often sealed segments with mostly dead records are rewritten (in the
    /// background; ingest and POP3 go on).
    pub compact_interval: Interval,
}

impl Default for SpoolSection {
    fn default() -> Self {
        SpoolSection {
            dir: defaults::spool_dir(),
            fsync: true,
            commit_window: defaults::COMMIT_WINDOW,
            segment_size: defaults::SEGMENT_SIZE,
            appends_pending_max: defaults::APPENDS_PENDING_MAX,
            commit_records_max: defaults::COMMIT_RECORDS_MAX,
            compact_interval: defaults::COMPACT_INTERVAL,
        }
    }
}

impl SpoolSection {
    /// Checks each value and the relations between them.
    pub fn check(&self) -> Result<(), SectionError> {
        if self.segment_size.0 < ByteSize::MIB {
            return Err(invalid("spool.segment_size", "must be at least 1MiB"));
        }
        if self.commit_window.0 > std::time::Duration::from_secs(1) {
            return Err(invalid(
                "spool.commit_window",
                "must be at most 1s: every 250 after DATA waits up to this long",
            ));
        }
        if self.appends_pending_max == 0 || self.commit_records_max == 0 {
            return Err(invalid(
                "spool.appends_pending_max",
                "appends_pending_max and commit_records_max must be at least 1",
            ));
        }
        if self.compact_interval.0 < std::time::Duration::from_secs(1) {
            return Err(invalid("spool.compact_interval", "must be at least 1s"));
        }
        if self.dir.as_os_str().is_empty() {
            return Err(invalid("spool.dir", "must not be empty"));
        }
        Ok(())
    }

    /// The settings the spool itself takes (`compact_interval` is the compactor's).
    pub fn spool_config(&self) -> SpoolConfig {
        SpoolConfig {
            dir: self.dir.clone(),
            fsync: self.fsync,
            commit_window: self.commit_window.0,
            segment_size: self.segment_size.0,
            appends_pending_max: self.appends_pending_max,
            commit_records_max: self.commit_records_max,
        }
    }
}
