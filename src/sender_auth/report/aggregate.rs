//! The counts: per interval, per policy domain, per distinct row (RFC 7489 Appendix C
//! `record`: source, disposition, aligned and raw results, identifiers) → messages.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{AuthResult, Disposition, Observation, PublishedPolicy, ReportSettings};

/// Longest string a row keeps (a DNS name is at most 253 octets).
const TEXT_MAX: usize = 255;
/// DKIM results a row keeps: a message with more signatures is reported with the first ones.
const DKIM_MAX: usize = 8;
/// The counts file's format version.
const VERSION: u32 = 1;

#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub interval_secs: u64,
    pub max_records: usize,
    pub max_domains: usize,
}

impl Limits {
    pub fn of(settings: &ReportSettings) -> Limits {
        Limits {
            interval_secs: settings.interval.as_secs().max(1),
            max_records: settings.max_records,
            max_domains: settings.max_domains,
        }
    }
}

/// One aggregated row: everything the report distinguishes except the count.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Row {
    pub source_ip: IpAddr,
    pub disposition: Disposition,
    pub dkim_aligned: AuthResult,
    pub spf_aligned: AuthResult,
    pub header_from: String,
    pub envelope_from: String,
    /// (d=, s=, result) of each signature checked.
    pub dkim: Vec<(String, String, AuthResult)>,
    /// (domain, scope is HELO, result).
    pub spf: (String, bool, AuthResult),
}

/// One policy domain's rows in one interval.
#[derive(Debug, Clone)]
struct DomainRows {
    /// The record as last seen in the interval.
    policy: PublishedPolicy,
    rows: HashMap<Row, u64>,
}

/// One report to send: a policy domain's rows over `[begin, end)`.
#[derive(Debug, Clone, PartialEq)]
pub struct DueReport {
    pub begin: u64,
    pub end: u64,
    pub domain: String,
    pub policy: PublishedPolicy,
    /// Rows with their message counts, largest count first.
    pub rows: Vec<(Row, u64)>,
}

#[derive(Debug, Default)]
pub(super) struct Aggregate {
    /// Keyed by `(begin, end)`: an interval keeps its bounds when the configured length
    /// changes between restarts.
    intervals: BTreeMap<(u64, u64), BTreeMap<String, DomainRows>>,
    rows: usize,
}

fn cut(text: &str) -> String {
    let mut end = text.len().min(TEXT_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

fn row_of(o: Observation) -> Row {
    Row {
        source_ip: o.source_ip.to_canonical(),
        disposition: o.disposition,
        dkim_aligned: o.dkim_aligned,
        spf_aligned: o.spf_aligned,
        header_from: cut(&o.header_from.to_ascii_lowercase()),
        envelope_from: cut(&o.envelope_from.to_ascii_lowercase()),
        dkim: o
            .dkim
            .iter()
            .take(DKIM_MAX)
            .map(|(d, s, r)| (cut(&d.to_ascii_lowercase()), cut(s), *r))
            .collect(),
        spf: (cut(&o.spf.0.to_ascii_lowercase()), o.spf.1, o.spf.2),
    }
}

fn policy_of(policy: PublishedPolicy) -> PublishedPolicy {
    PublishedPolicy {
        domain: cut(&policy.domain.to_ascii_lowercase()),
        rua: policy.rua.iter().take(DKIM_MAX).map(|u| cut(u)).collect(),
        ..policy
    }
}

impl Aggregate {
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Counts `o`; false when the bounds refuse it (a new row or a new domain).
    pub fn add(&mut self, o: Observation, limits: &Limits) -> bool {
        let begin = o.unix_time - o.unix_time % limits.interval_secs;
        let end = begin.saturating_add(limits.interval_secs);
        let policy = policy_of(o.policy.clone());
        let row = row_of(o);
        self.add_row((begin, end), policy, row, 1, limits)
    }

    fn add_row(
        &mut self,
        interval: (u64, u64),
        policy: PublishedPolicy,
        row: Row,
        count: u64,
        limits: &Limits,
    ) -> bool {
        let full = self.rows >= limits.max_records;
        let domains = self.intervals.entry(interval).or_default();
        let known_domain = domains.contains_key(&policy.domain);
        if !known_domain && (full || domains.len() >= limits.max_domains) {
            if domains.is_empty() {
                self.intervals.remove(&interval);
            }
            return false;
        }
        let entry = domains
            .entry(policy.domain.clone())
            .or_insert_with(|| DomainRows {
                policy: policy.clone(),
                rows: HashMap::new(),
            });
        entry.policy = policy;
        match entry.rows.get_mut(&row) {
            Some(n) => {
                *n = n.saturating_add(count);
                true
            }
            // A known domain (a new one was refused above when full): nothing to undo.
            None if full => false,
            None => {
                entry.rows.insert(row, count);
                self.rows += 1;
                true
            }
        }
    }

    pub fn due(&self, now: u64) -> Vec<DueReport> {
        let mut due = Vec::new();
        for (&(begin, end), domains) in self.intervals.range(..=(now, u64::MAX)) {
            if end > now {
                continue;
            }
            for (domain, d) in domains {
                let mut rows: Vec<(Row, u64)> =
                    d.rows.iter().map(|(r, n)| (r.clone(), *n)).collect();
                rows.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                due.push(DueReport {
                    begin,
                    end,
                    domain: domain.clone(),
                    policy: d.policy.clone(),
                    rows,
                });
            }
        }
        due
    }

    pub fn next_end(&self) -> Option<u64> {
        self.intervals.keys().map(|&(_, end)| end).min()
    }

    pub fn remove(&mut self, begin: u64, end: u64, domain: &str) -> bool {
        let Some(domains) = self.intervals.get_mut(&(begin, end)) else {
            return false;
        };
        let Some(removed) = domains.remove(domain) else {
            return false;
        };
        self.rows -= removed.rows.len();
        if domains.is_empty() {
            self.intervals.remove(&(begin, end));
        }
        true
    }

    /// The counts as the file keeps them.
    pub fn save(&self) -> Vec<u8> {
        let saved = Saved {
            version: VERSION,
            intervals: self
                .intervals
                .iter()
                .map(|(&(begin, end), domains)| SavedInterval {
                    begin,
                    end,
                    domains: domains
                        .values()
                        .map(|d| SavedDomain {
                            policy: d.policy.clone(),
                            rows: d.rows.iter().map(|(r, n)| (r.clone(), *n)).collect(),
                        })
                        .collect(),
                })
                .collect(),
        };
        serde_json::to_vec(&saved).unwrap_or_default()
    }

    /// Adds the counts of a file; returns how many rows the bounds refused.
    pub fn restore(&mut self, text: &[u8], limits: &Limits) -> Result<u64, String> {
        let saved: Saved = serde_json::from_slice(text).map_err(|e| e.to_string())?;
        if saved.version != VERSION {
            return Err(format!(
                "format version {} (this relay writes {VERSION})",
                saved.version
            ));
        }
        let mut dropped = 0;
        for interval in saved.intervals {
            if interval.end <= interval.begin {
                return Err(format!(
                    "interval [{}, {}) is empty",
                    interval.begin, interval.end
                ));
            }
            for domain in interval.domains {
                let policy = policy_of(domain.policy);
                for (row, count) in domain.rows {
                    let kept = self.add_row(
                        (interval.begin, interval.end),
                        policy.clone(),
                        row,
                        count,
                        limits,
                    );
                    if !kept {
                        dropped += count;
                    }
                }
            }
        }
        Ok(dropped)
    }
}

#[derive(Serialize, Deserialize)]
struct Saved {
    version: u32,
    intervals: Vec<SavedInterval>,
}

#[derive(Serialize, Deserialize)]
struct SavedInterval {
    begin: u64,
    end: u64,
    domains: Vec<SavedDomain>,
}

#[derive(Serialize, Deserialize)]
struct SavedDomain {
    policy: PublishedPolicy,
    rows: Vec<(Row, u64)>,
}
