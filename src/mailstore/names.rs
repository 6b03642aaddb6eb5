//! Folder names and flag sets in their canonical form, so equal things compare equal.

use super::error::StoreError;
use crate::spool::state::{system_flag, Flags};

/// The hierarchy delimiter (RFC 9051 §5.1.1). Names are UTF-8 here: modified UTF-7 is the
/// protocol's concern.
pub const DELIMITER: char = '/';
pub const INBOX_NAME: &str = "INBOX";
/// A whole name, in bytes: bounds LIST output and the records.
pub const MAX_NAME_BYTES: usize = 512;
pub const MAX_DEPTH: usize = 32;
/// Keywords per message and bytes per keyword: a client must not grow a record without bound.
pub const MAX_KEYWORDS: usize = 64;
pub const MAX_KEYWORD_BYTES: usize = 128;

/// The name as stored: one trailing delimiter dropped (RFC 9051 CREATE allows it as a hint),
/// a first level spelled INBOX in any case made `INBOX` (the name is case-insensitive, and
/// so is it as a parent).
pub fn canonical(name: &str) -> Result<String, StoreError> {
    let name = name.strip_suffix(DELIMITER).unwrap_or(name);
    if name.is_empty() {
        return Err(StoreError::InvalidName("empty"));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(StoreError::NameTooLong {
            max: MAX_NAME_BYTES,
        });
    }
    if name.chars().any(char::is_control) {
        return Err(StoreError::InvalidName("control character"));
    }
    // LIST's wildcards could never match the name exactly.
    if name.contains(['*', '%']) {
        return Err(StoreError::InvalidName("wildcard character"));
    }
    let mut levels = 0;
    for level in name.split(DELIMITER) {
        levels += 1;
        if level.is_empty() {
            return Err(StoreError::InvalidName("empty hierarchy level"));
        }
    }
    if levels > MAX_DEPTH {
        return Err(StoreError::InvalidName("too deep"));
    }
    let first = name.split(DELIMITER).next().unwrap_or(name);
    if first.eq_ignore_ascii_case(INBOX_NAME) && first != INBOX_NAME {
        return Ok(format!("{INBOX_NAME}{}", &name[first.len()..]));
    }
    Ok(name.to_string())
}

/// The superior names of a canonical name, outermost first (`a/b/c` → `a`, `a/b`).
pub fn superiors(name: &str) -> impl Iterator<Item = &str> {
    name.match_indices(DELIMITER).map(move |(i, _)| &name[..i])
}

/// Whether `name` is strictly below `parent` in the hierarchy.
pub fn is_inferior(name: &str, parent: &str) -> bool {
    name.len() > parent.len() + 1
        && name.starts_with(parent)
        && name[parent.len()..].starts_with(DELIMITER)
}

/// Flags as stored: unknown system bits dropped, keywords deduplicated case-insensitively
/// (the first spelling kept) and sorted, so two sets are equal exactly when they mean the same.
pub fn normalize(flags: &Flags) -> Result<Flags, StoreError> {
    let mut keywords: Vec<String> = Vec::with_capacity(flags.keywords.len());
    for k in &flags.keywords {
        if k.is_empty() {
            continue;
        }
        if k.len() > MAX_KEYWORD_BYTES {
            return Err(StoreError::KeywordTooLong {
                max: MAX_KEYWORD_BYTES,
            });
        }
        if !keywords.iter().any(|have| have.eq_ignore_ascii_case(k)) {
            keywords.push(k.clone());
        }
        if keywords.len() > MAX_KEYWORDS {
            return Err(StoreError::TooManyKeywords { max: MAX_KEYWORDS });
        }
    }
    keywords.sort_by_key(|k| k.to_ascii_lowercase());
    Ok(Flags {
        system: flags.system & system_flag::ALL,
        keywords,
    })
}

/// How a STORE combines the given flags with a message's (RFC 9051 §6.4.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagMode {
    Replace,
    Add,
    Remove,
}

/// `current` changed by `given` (both normalised); the result is normalised.
pub fn combine(current: &Flags, mode: FlagMode, given: &Flags) -> Result<Flags, StoreError> {
    let merged = match mode {
        FlagMode::Replace => given.clone(),
        FlagMode::Add => Flags {
            system: current.system | given.system,
            keywords: current
                .keywords
                .iter()
                .chain(&given.keywords)
                .cloned()
                .collect(),
        },
        FlagMode::Remove => Flags {
            system: current.system & !given.system,
            keywords: current
                .keywords
                .iter()
                .filter(|k| !given.keywords.iter().any(|g| g.eq_ignore_ascii_case(k)))
                .cloned()
                .collect(),
        },
    };
    normalize(&merged)
}
