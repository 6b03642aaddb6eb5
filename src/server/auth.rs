//! Credential checks for SMTP AUTH and POP3 logins, one path for both (and for IMAP when it
//! comes): the login limits of [`AuthFailures`] (per client, with attempts in flight
//! counted; a growing delay per user name), the password hash checked on the process's
//! bounded [`HashPool`] (argon2 takes tens of milliseconds and 19 MiB by design and must
//! neither stall a core nor multiply with the attempts), RFC 4616's authorization-identity
//! rule, a delay before a failure is answered, and the log lines.
//!
//! Unknown users and wrong passwords take the same path (the directory hashes a dummy for
//! unknown names) and get the same answer. Clients over a limit are refused without any
//! hashing; when the pool's queue is full the answer is a temporary failure. A check whose
//! future is dropped (the connection ended) before a pool thread takes it is not hashed.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::admission::AuthFailures;
use super::hashing::HashPool;
use super::shard::Protocol;
use crate::logsafe::Safe;
use crate::mailbox::{Directory, SharedDirectory};
use crate::smtp::Password;

/// What a shard needs to check logins: the users' directory, the hash pool and each
/// protocol's policy.
pub struct Auth {
    /// Read once per check: a directory replaced meanwhile applies to the next login.
    pub directory: SharedDirectory,
    pub pool: Arc<HashPool>,
    pub smtp: Policy,
    pub pop3: Policy,
    pub imap: Policy,
}

/// How one protocol's logins are limited.
pub struct Policy {
    /// Shared by all shards.
    pub failures: Arc<AuthFailures>,
    /// How long a failed or refused attempt waits before it is answered.
    pub failure_delay: Duration,
}

/// What a client offered to prove who it is.
pub enum Proof {
    /// A name and password: SMTP AUTH PLAIN and LOGIN, POP3 USER/PASS and AUTH PLAIN, with
    /// PLAIN's authorization identity when one was given.
    Password {
        authzid: Option<String>,
        user: String,
        password: Password,
    },
    /// POP3 APOP (RFC 1939 §7): `digest` should be MD5(`timestamp` + shared secret).
    Apop {
        user: String,
        timestamp: String,
        digest: String,
    },
}

impl Proof {
    fn user(&self) -> &str {
        match self {
            Proof::Password { user, .. } | Proof::Apop { user, .. } => user,
        }
    }

    /// The directory's name for the user, when the proof holds. Hashes: blocking.
    fn verify(self, directory: &Directory) -> Option<String> {
        match self {
            Proof::Password {
                authzid,
                user,
                password,
            } => {
                if !acts_as_self(authzid.as_deref(), &user) {
                    return None;
                }
                directory.verify(&user, password.expose())
            }
            Proof::Apop {
                user,
                timestamp,
                digest,
            } => directory.verify_apop(&user, &timestamp, &digest),
        }
    }
}

impl From<crate::smtp::Credentials> for Proof {
    fn from(credentials: crate::smtp::Credentials) -> Proof {
        let crate::smtp::Credentials {
            authzid,
            user,
            password,
        } = credentials;
        Proof::Password {
            authzid,
            user,
            password,
        }
    }
}

impl From<crate::imap::Credentials> for Proof {
    fn from(credentials: crate::imap::Credentials) -> Proof {
        let crate::imap::Credentials {
            authzid,
            user,
            password,
        } = credentials;
        Proof::Password {
            authzid,
            user,
            password: Password::new(password),
        }
    }
}

impl From<crate::pop3::Credentials> for Proof {
    fn from(credentials: crate::pop3::Credentials) -> Proof {
        match credentials {
            crate::pop3::Credentials::Plain {
                authzid,
                user,
                password,
            } => Proof::Password {
                authzid,
                user,
                password: Password::new(password),
            },
            crate::pop3::Credentials::Apop {
                user,
                timestamp,
                digest,
            } => Proof::Apop {
                user,
                timestamp,
                digest,
            },
        }
    }
}

/// RFC 4616 §2: acting as another identity is not offered; an empty authorization identity
/// means the login's own.
fn acts_as_self(authzid: Option<&str>, user: &str) -> bool {
    authzid.is_none_or(|authzid| authzid.is_empty() || authzid.eq_ignore_ascii_case(user))
}

/// Why a login was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// Wrong password, unknown user, foreign authorization identity or bad APOP digest.
    #[error("invalid credentials")]
    Invalid,
    /// The client is over its failure limit, or the user name's attempts are spaced out
    /// too far ahead.
    #[error("too many failures")]
    Locked,
    /// The hash pool's queue is full: a temporary failure, nothing was checked.
    #[error("password checks are busy")]
    Busy,
}

impl From<Denied> for crate::smtp::AuthFailure {
    fn from(denied: Denied) -> Self {
        match denied {
            Denied::Invalid => crate::smtp::AuthFailure::Invalid,
            // RFC 4954 §6: both are 454 4.7.0, "temporary authentication failure".
            Denied::Locked | Denied::Busy => crate::smtp::AuthFailure::Locked,
        }
    }
}

impl Auth {
    fn policy(&self, protocol: Protocol) -> &Policy {
        match protocol {
            // The cluster listener has no AUTH; its peers are authenticated by certificate.
            Protocol::Smtp | Protocol::Cluster => &self.smtp,
            Protocol::Pop3 => &self.pop3,
            Protocol::Imap => &self.imap,
        }
    }

    /// Checks `proof` from `client` under `protocol`'s policy: the directory's name for the
    /// user, or why not (a refusal or a failure is answered only after the policy's failure
    /// delay). Dropping the future before the hash runs abandons it.
    pub async fn check(
        &self,
        protocol: Protocol,
        client: IpAddr,
        proof: Proof,
    ) -> Result<String, Denied> {
        let policy = self.policy(protocol);
        let attempted = proof.user().to_string();
        // Reserved before hashing: counted in flight against the client's limit.
        let attempt = match policy.failures.begin(client, &attempted, Instant::now()) {
            Ok(attempt) => attempt,
            Err(_) => {
                log_refused(protocol, client, &attempted);
                tokio::time::sleep(policy.failure_delay).await;
                return Err(Denied::Locked);
            }
        };
        if !attempt.wait.is_zero() {
            tokio::time::sleep(attempt.wait).await;
        }
        let directory = self.directory.current();
        let Ok(hashed) = self.pool.submit(move || proof.verify(&directory)) else {
            log_busy(protocol, client, &attempted);
            return Err(Denied::Busy);
        };
        let Ok(verified) = hashed.await else {
            // The pool dropped the check unrun (it is shutting down): nothing was decided.
            return Err(Denied::Busy);
        };
        match verified {
            Some(user) => {
                attempt.succeeded(Instant::now());
                log_success(protocol, client, &user);
                Ok(user)
            }
            None => {
                attempt.failed(Instant::now());
                log_failure(protocol, client, &attempted);
                tokio::time::sleep(policy.failure_delay).await;
                Err(Denied::Invalid)
            }
        }
    }
}

// The log lines keep each protocol's own target and wording. The attempted name is logged
// (escaped: it is the peer's text), never the password.

fn log_refused(protocol: Protocol, client: IpAddr, attempted: &str) {
    match protocol {
        Protocol::Smtp | Protocol::Cluster => {
            tracing::info!(target: "relay::smtp", client = %client, user = %Safe(attempted), "auth refused: too many failures")
        }
        Protocol::Pop3 => {
            tracing::info!(target: "relay::pop3", client = %client, user = %Safe(attempted), "login refused: too many failures")
        }
        Protocol::Imap => {
            tracing::info!(target: "relay::imap", client = %client, user = %Safe(attempted), "login refused: too many failures")
        }
    }
}

fn log_failure(protocol: Protocol, client: IpAddr, attempted: &str) {
    match protocol {
        Protocol::Smtp | Protocol::Cluster => {
            tracing::info!(target: "relay::smtp", client = %client, user = %Safe(attempted), "auth failed")
        }
        Protocol::Pop3 => {
            tracing::info!(target: "relay::pop3", client = %client, user = %Safe(attempted), "login failed")
        }
        Protocol::Imap => {
            tracing::info!(target: "relay::imap", client = %client, user = %Safe(attempted), "login failed")
        }
    }
}

fn log_busy(protocol: Protocol, client: IpAddr, attempted: &str) {
    let protocol = match protocol {
        Protocol::Smtp | Protocol::Cluster => "smtp",
        Protocol::Pop3 => "pop3",
        Protocol::Imap => "imap",
    };
    tracing::warn!(target: "relay::auth", protocol, client = %client, user = %Safe(attempted), "login refused: password-hash queue full");
}

/// POP3 and IMAP log their logins themselves (POP3 once the maildrop is locked, with the
/// message count), not here.
fn log_success(protocol: Protocol, client: IpAddr, user: &str) {
    if protocol == Protocol::Smtp {
        tracing::info!(target: "relay::smtp", client = %client, user = %Safe(user), "authenticated");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mailbox::User;
    use crate::server::admission::{ClientPrefix, USER_DELAY_BASE};
    use std::collections::BTreeMap;

    const WINDOW: Duration = Duration::from_secs(60);

    fn directory() -> Arc<Directory> {
        let alice = User {
            name: "alice".into(),
            password: crate::mailbox::password::hash("secret").unwrap(),
            quota: None,
            apop_secret: Some("apop-secret".into()),
            home: None,
        };
        Arc::new(
            Directory::new(vec!["example.test".into()], vec![alice], &BTreeMap::new()).unwrap(),
        )
    }

    fn pool() -> Arc<HashPool> {
        let metrics = crate::metrics::Metrics::new(1, None).hash_pool();
        HashPool::start(2, 16, metrics).unwrap()
    }

    /// SMTP and POP3 count per address (3) and per user (2), each in its own table.
    fn auth() -> Auth {
        let prefix = ClientPrefix::default();
        Auth {
            directory: directory().into(),
            pool: pool(),
            smtp: Policy {
                failures: AuthFailures::new(3, 2, WINDOW, prefix),
                failure_delay: Duration::ZERO,
            },
            pop3: Policy {
                failures: AuthFailures::new(3, 2, WINDOW, prefix),
                failure_delay: Duration::ZERO,
            },
            imap: Policy {
                failures: AuthFailures::new(3, 2, WINDOW, prefix),
                failure_delay: Duration::ZERO,
            },
        }
    }

    fn password(authzid: Option<&str>, user: &str, password: &str) -> Proof {
        Proof::Password {
            authzid: authzid.map(str::to_owned),
            user: user.into(),
            password: Password::new(password.into()),
        }
    }

    fn run<F: std::future::Future>(test: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(test)
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn authorization_identity_must_be_the_login_itself() {
        assert!(acts_as_self(None, "alice"));
        assert!(acts_as_self(Some(""), "alice"));
        assert!(acts_as_self(Some("ALICE"), "alice"));
        assert!(!acts_as_self(Some("bob"), "alice"));
    }

    #[test]
    fn right_and_wrong_passwords() {
        run(async {
            let auth = auth();
            for protocol in [Protocol::Smtp, Protocol::Pop3] {
                let ok = auth
                    .check(protocol, A, password(None, "Alice", "secret"))
                    .await;
                assert_eq!(ok, Ok("alice".to_string()));
                let wrong = auth
                    .check(protocol, A, password(None, "alice", "guess"))
                    .await;
                assert_eq!(wrong, Err(Denied::Invalid));
                let unknown = auth
                    .check(protocol, A, password(None, "nobody", "secret"))
                    .await;
                assert_eq!(unknown, Err(Denied::Invalid));
                // The success forgave the two failures: the address is not locked yet.
                let own = auth.check(protocol, A, password(Some("alice"), "alice", "secret"));
                assert_eq!(own.await, Ok("alice".to_string()));
                let foreign = auth.check(protocol, A, password(Some("bob"), "alice", "secret"));
                assert_eq!(foreign.await, Err(Denied::Invalid));
            }
        })
    }

    #[test]
    fn apop_digest() {
        use md5::{Digest, Md5};
        run(async {
            let auth = auth();
            let timestamp = "<1.2@example.test>".to_string();
            let digest = format!("{:x}", Md5::digest(format!("{timestamp}apop-secret")));
            let proof = crate::pop3::Credentials::Apop {
                user: "alice".into(),
                timestamp: timestamp.clone(),
                digest,
            };
            assert_eq!(
                auth.check(Protocol::Pop3, A, proof.into()).await,
                Ok("alice".into())
            );
            let bad = crate::pop3::Credentials::Apop {
                user: "alice".into(),
                timestamp,
                digest: "0".repeat(32),
            };
            let denied = auth.check(Protocol::Pop3, A, bad.into()).await;
            assert_eq!(denied, Err(Denied::Invalid));
        })
    }

    #[test]
    fn an_address_over_its_limit_is_refused_even_the_right_password() {
        run(async {
            let auth = auth();
            for user in ["x", "y", "z"] {
                let failed = auth
                    .check(Protocol::Pop3, A, password(None, user, "guess"))
                    .await;
                assert_eq!(failed, Err(Denied::Invalid));
            }
            let locked = auth.check(Protocol::Pop3, A, password(None, "alice", "secret"));
            assert_eq!(locked.await, Err(Denied::Locked));
            // Another address is not affected, nor the other protocol's table.
            let other = auth.check(Protocol::Pop3, B, password(None, "alice", "secret"));
            assert_eq!(other.await, Ok("alice".into()));
            let smtp = auth.check(Protocol::Smtp, A, password(None, "alice", "secret"));
            assert_eq!(smtp.await, Ok("alice".into()));
        })
    }

    #[test]
    fn user_name_failures_delay_others_but_not_the_owners_address() {
        run(async {
            let auth = auth();
            for protocol in [Protocol::Smtp, Protocol::Pop3] {
                // Alice logged in from A before; B then fails twice as alice.
                let ok = auth.check(protocol, A, password(None, "alice", "secret"));
                assert_eq!(ok.await, Ok("alice".into()));
                for _ in 0..2 {
                    let failed = auth.check(protocol, B, password(None, "alice", "guess"));
                    assert_eq!(failed.await, Err(Denied::Invalid));
                }
                // From A she is neither refused nor delayed.
                let started = Instant::now();
                let ok = auth.check(protocol, A, password(None, "ALICE", "secret"));
                assert_eq!(ok.await, Ok("alice".into()));
                assert!(started.elapsed() < USER_DELAY_BASE, "{protocol:?}");
            }
        })
    }

    #[test]
    fn a_user_over_the_limit_is_delayed_elsewhere_not_refused() {
        run(async {
            let auth = auth();
            for _ in 0..2 {
                let failed = auth.check(Protocol::Pop3, A, password(None, "alice", "guess"));
                assert_eq!(failed.await, Err(Denied::Invalid));
            }
            let started = Instant::now();
            let ok = auth.check(Protocol::Pop3, B, password(None, "alice", "secret"));
            assert_eq!(ok.await, Ok("alice".into()));
            assert!(started.elapsed() >= USER_DELAY_BASE);
        })
    }

    #[test]
    fn a_full_hash_queue_is_a_temporary_failure_that_counts_nothing() {
        run(async {
            let metrics = crate::metrics::Metrics::new(1, None).hash_pool();
            let pool = HashPool::start(1, 1, metrics.clone()).unwrap();
            // Hold the thread, then fill the one queue place.
            let (release, held) = crossbeam::channel::bounded::<()>(0);
            let busy = pool.submit(move || held.recv()).unwrap();
            let deadline = Instant::now() + Duration::from_secs(5);
            while metrics.queued.get() != 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            let filler = pool.submit(|| ()).unwrap();
            let auth = Auth { pool, ..auth() };
            for _ in 0..5 {
                let refused = auth.check(Protocol::Pop3, A, password(None, "alice", "secret"));
                assert_eq!(refused.await, Err(Denied::Busy));
            }
            assert_eq!(metrics.refused.get(), 5);
            assert!(!auth.pop3.failures.blocked(A, Instant::now()));
            release.send(()).unwrap();
            let _ = (busy.await, filler.await);
            let ok = auth.check(Protocol::Pop3, A, password(None, "alice", "secret"));
            assert_eq!(ok.await, Ok("alice".into()));
        })
    }

    #[test]
    fn failures_and_refusals_are_answered_after_the_delay() {
        run(async {
            let delay = Duration::from_millis(50);
            let auth = Auth {
                pop3: Policy {
                    failures: AuthFailures::new(1, 100, WINDOW, ClientPrefix::default()),
                    failure_delay: delay,
                },
                ..auth()
            };
            for expected in [Denied::Invalid, Denied::Locked] {
                let started = Instant::now();
                let denied = auth.check(Protocol::Pop3, A, password(None, "alice", "guess"));
                assert_eq!(denied.await, Err(expected));
                assert!(started.elapsed() >= delay, "{expected:?}");
            }
        })
    }

    #[test]
    fn a_success_forgives_earlier_failures() {
        run(async {
            let auth = auth();
            for _ in 0..2 {
                let failed = auth.check(Protocol::Pop3, A, password(None, "x", "guess"));
                assert_eq!(failed.await, Err(Denied::Invalid));
            }
            let ok = auth.check(Protocol::Pop3, A, password(None, "alice", "secret"));
            assert_eq!(ok.await, Ok("alice".into()));
            for _ in 0..2 {
                let failed = auth.check(Protocol::Pop3, A, password(None, "x", "guess"));
                assert_eq!(failed.await, Err(Denied::Invalid));
            }
            let ok = auth.check(Protocol::Pop3, A, password(None, "alice", "secret"));
            assert_eq!(ok.await, Ok("alice".into()));
        })
    }
}
