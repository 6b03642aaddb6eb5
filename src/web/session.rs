//! The server-side session table: sans-IO (every decision takes `now`), bounded in count,
//! with an idle and an absolute timeout. The cookie holds only the random session id; the
//! user name and the CSRF token stay here.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use subtle::ConstantTimeEq;

/// Random bytes in a session id or CSRF token (hex on the wire).
pub const TOKEN_BYTES: usize = 32;

/// A fresh random token, hex-encoded (the OS generator, as the rest of the relay's secrets).
pub fn random_token() -> String {
    use rand_core::RngCore;
    let mut bytes = [0u8; TOKEN_BYTES];
    rand_core::OsRng.fill_bytes(&mut bytes);
    hex(&bytes)
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

/// Equal tokens, compared in constant time (a timing difference must not reveal a prefix).
pub fn tokens_match(given: &str, expected: &str) -> bool {
    given.len() == expected.len() && bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
}

/// What a request learns about its session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionView {
    pub user: String,
    pub csrf: String,
}

#[derive(Debug)]
struct Entry {
    user: String,
    csrf: String,
    created: Instant,
    last_used: Instant,
}

#[derive(Debug)]
pub struct SessionTable {
    sessions: HashMap<String, Entry>,
    max: usize,
    idle: Duration,
    absolute: Duration,
}

impl SessionTable {
    pub fn new(max: usize, idle: Duration, absolute: Duration) -> Self {
        SessionTable {
            sessions: HashMap::new(),
            max: max.max(1),
            idle,
            absolute,
        }
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Starts a session for `user` under the random `id` and `csrf`. When the table is
    /// full, expired sessions go first, then the least recently used one.
    pub fn start(&mut self, user: String, id: String, csrf: String, now: Instant) {
        if self.sessions.len() >= self.max {
            self.sweep(now);
        }
        if self.sessions.len() >= self.max {
            let oldest = self
                .sessions
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(id, _)| id.clone());
            if let Some(oldest) = oldest {
                self.sessions.remove(&oldest);
            }
        }
        self.sessions.insert(
            id,
            Entry {
                user,
                csrf,
                created: now,
                last_used: now,
            },
        );
    }

    /// The live session `id` names (its idle timer restarts), or `None`: unknown, or
    /// expired (and then forgotten).
    pub fn get(&mut self, id: &str, now: Instant) -> Option<SessionView> {
        let (idle, absolute) = (self.idle, self.absolute);
        let entry = self.sessions.get_mut(id)?;
        if expired_by(entry, now, idle, absolute) {
            self.sessions.remove(id);
            return None;
        }
        entry_touch(entry, now);
        Some(SessionView {
            user: entry.user.clone(),
            csrf: entry.csrf.clone(),
        })
    }

    /// Logout: the id is worthless from now on, whoever holds the cookie.
    pub fn end(&mut self, id: &str) -> bool {
        self.sessions.remove(id).is_some()
    }

    /// Forgets every expired session.
    pub fn sweep(&mut self, now: Instant) {
        let (idle, absolute) = (self.idle, self.absolute);
        self.sessions
            .retain(|_, e| !expired_by(e, now, idle, absolute));
    }
}

fn entry_touch(entry: &mut Entry, now: Instant) {
    entry.last_used = entry.last_used.max(now);
}

fn expired_by(entry: &Entry, now: Instant, idle: Duration, absolute: Duration) -> bool {
    now.saturating_duration_since(entry.last_used) >= idle
        || now.saturating_duration_since(entry.created) >= absolute
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(max: usize) -> SessionTable {
        SessionTable::new(max, Duration::from_secs(60), Duration::from_secs(300))
    }

    #[test]
    fn a_session_lives_while_used_and_dies_when_idle() {
        let t0 = Instant::now();
        let mut t = table(10);
        t.start("alice".into(), "id1".into(), "c1".into(), t0);
        let view = t.get("id1", t0 + Duration::from_secs(59)).unwrap();
        assert_eq!(view.user, "alice");
        assert_eq!(view.csrf, "c1");
        // Used at 59 s: alive until 119 s.
        assert!(t.get("id1", t0 + Duration::from_secs(118)).is_some());
        assert!(t.get("id1", t0 + Duration::from_secs(178)).is_none());
        assert!(t.is_empty(), "an expired session is forgotten");
        assert!(t.get("nope", t0).is_none());
    }

    #[test]
    fn the_absolute_timeout_ends_even_a_busy_session() {
        let t0 = Instant::now();
        let mut t = table(10);
        t.start("alice".into(), "id".into(), "c".into(), t0);
        for s in (30..300).step_by(30) {
            assert!(
                t.get("id", t0 + Duration::from_secs(s)).is_some(),
                "at {s}s"
            );
        }
        assert!(t.get("id", t0 + Duration::from_secs(300)).is_none());
    }

    #[test]
    fn logout_ends_the_session() {
        let t0 = Instant::now();
        let mut t = table(10);
        t.start("alice".into(), "id".into(), "c".into(), t0);
        assert!(t.end("id"));
        assert!(t.get("id", t0).is_none());
        assert!(!t.end("id"));
    }

    #[test]
    fn a_full_table_drops_expired_then_least_recently_used() {
        let t0 = Instant::now();
        let mut t = table(2);
        t.start("a".into(), "a".into(), "c".into(), t0);
        t.start(
            "b".into(),
            "b".into(),
            "c".into(),
            t0 + Duration::from_secs(1),
        );
        assert!(t.get("a", t0 + Duration::from_secs(2)).is_some());
        t.start(
            "c".into(),
            "c".into(),
            "c".into(),
            t0 + Duration::from_secs(3),
        );
        assert_eq!(t.len(), 2);
        assert!(
            t.get("b", t0 + Duration::from_secs(3)).is_none(),
            "b was least recently used"
        );
        assert!(t.get("a", t0 + Duration::from_secs(3)).is_some());
        // Both expire; a new login finds room without evicting a live one.
        let later = t0 + Duration::from_secs(100);
        t.start("d".into(), "d".into(), "c".into(), later);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn tokens_are_random_and_compare_exactly() {
        let a = random_token();
        let b = random_token();
        assert_eq!(a.len(), TOKEN_BYTES * 2);
        assert_ne!(a, b);
        assert!(tokens_match(&a, &a.clone()));
        assert!(!tokens_match(&a, &b));
        assert!(!tokens_match("", &a));
        assert!(!tokens_match(&a[..10], &a));
    }
}
