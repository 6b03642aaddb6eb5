//! Credential checks for SMTP AUTH and POP3 logins, one path for both: failure limits per
//! client address (and per user name where the protocol's [`Policy`] says so), the password
//! hash checked on tokio's blocking pool (argon2 takes tens of milliseconds by design and
//! must not stall the other connections of a core), RFC 4616's authorization-identity rule,
//! a delay before a failure is answered, and the log lines.
//!
//! Unknown users and wrong passwords take the same path (the directory hashes a dummy for
//! unknown names) and get the same answer. Clients over a limit are refused without any
//! hashing.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::admission::AuthFailures;
use super::shard::Protocol;
use crate::mailbox::Directory;
use crate::smtp::Password;

/// What a shard needs to check logins: the users' directory and each protocol's policy.
pub struct Auth {
    pub directory: Arc<Directory>,
    pub smtp: Policy,
    pub pop3: Policy,
}

/// How one protocol's logins are limited.
pub struct Policy {
    /// Shared by all shards.
    pub failures: Arc<AuthFailures>,
    /// Failures count per attempted user name too (SMTP AUTH), not only per address (POP3).
    pub per_user: bool,
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
    /// The client's address (or the user name, where counted) is over its failure limit.
    #[error("too many failures")]
    Locked,
}

impl From<Denied> for crate::smtp::AuthFailure {
    fn from(denied: Denied) -> Self {
        match denied {
            Denied::Invalid => crate::smtp::AuthFailure::Invalid,
            Denied::Locked => crate::smtp::AuthFailure::Locked,
        }
    }
}

impl Auth {
    fn policy(&self, protocol: Protocol) -> &Policy {
        match protocol {
            Protocol::Smtp => &self.smtp,
            Protocol::Pop3 => &self.pop3,
        }
    }

    /// Checks `proof` from `client` under `protocol`'s policy: the directory's name for the
    /// user, or why not (answered only after the policy's failure delay).
    pub async fn check(
        &self,
        protocol: Protocol,
        client: IpAddr,
        proof: Proof,
    ) -> Result<String, Denied> {
        let policy = self.policy(protocol);
        let failures = &policy.failures;
        let attempted = proof.user().to_string();
        if failures.blocked(client, Instant::now())
            || (policy.per_user && failures.user_blocked(&attempted, Instant::now()))
        {
            log_refused(protocol, client, &attempted);
            tokio::time::sleep(policy.failure_delay).await;
            return Err(Denied::Locked);
        }
        let directory = Arc::clone(&self.directory);
        let verified = tokio::task::spawn_blocking(move || proof.verify(&directory))
            .await
            .ok()
            .flatten();
        match verified {
            Some(user) => {
                failures.record_success(client);
                if policy.per_user {
                    failures.record_user_success(&attempted);
                }
                log_success(protocol, client, &user);
                Ok(user)
            }
            None => {
                failures.record_failure(client, Instant::now());
                if policy.per_user {
                    failures.record_user_failure(&attempted, Instant::now());
                }
                log_failure(protocol, client, &attempted);
                tokio::time::sleep(policy.failure_delay).await;
                Err(Denied::Invalid)
            }
        }
    }
}

// The log lines keep each protocol's own target and wording. The attempted name is logged,
// never the password.

fn log_refused(protocol: Protocol, client: IpAddr, attempted: &str) {
    match protocol {
        Protocol::Smtp => {
            tracing::info!(target: "relay::smtp", client = %client, user = %attempted, "auth refused: too many failures")
        }
        Protocol::Pop3 => {
            tracing::info!(target: "relay::pop3", client = %client, "login refused: too many failures")
        }
    }
}

fn log_failure(protocol: Protocol, client: IpAddr, attempted: &str) {
    match protocol {
        Protocol::Smtp => {
            tracing::info!(target: "relay::smtp", client = %client, user = %attempted, "auth failed")
        }
        Protocol::Pop3 => {
            tracing::info!(target: "relay::pop3", client = %client, user = %attempted, "login failed")
        }
    }
}

/// POP3 logs its login once the maildrop is locked (with the message count), not here.
fn log_success(protocol: Protocol, client: IpAddr, user: &str) {
    if protocol == Protocol::Smtp {
        tracing::info!(target: "relay::smtp", client = %client, user = %user, "authenticated");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mailbox::User;
    use std::collections::BTreeMap;

    const WINDOW: Duration = Duration::from_secs(60);

    fn directory() -> Arc<Directory> {
        let alice = User {
            name: "alice".into(),
            password: crate::mailbox::password::hash("secret").unwrap(),
            quota: None,
            apop_secret: Some("apop-secret".into()),
        };
        Arc::new(
            Directory::new(vec!["example.test".into()], vec![alice], &BTreeMap::new()).unwrap(),
        )
    }

    /// SMTP counts per address (3) and per user (2); POP3 per address (3) only, with a
    /// table that could count users (1) so that counting them would show.
    fn auth() -> Auth {
        Auth {
            directory: directory(),
            smtp: Policy {
                failures: AuthFailures::with_users(3, 2, WINDOW),
                per_user: true,
                failure_delay: Duration::ZERO,
            },
            pop3: Policy {
                failures: AuthFailures::with_users(3, 1, WINDOW),
                per_user: false,
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
    fn user_names_are_counted_only_where_the_policy_says() {
        run(async {
            let auth = auth();
            // SMTP: two failures for alice from one address lock the name for every address.
            for _ in 0..2 {
                let failed = auth.check(Protocol::Smtp, A, password(None, "alice", "guess"));
                assert_eq!(failed.await, Err(Denied::Invalid));
            }
            let locked = auth.check(Protocol::Smtp, B, password(None, "ALICE", "secret"));
            assert_eq!(locked.await, Err(Denied::Locked));
            // POP3: its table would lock the name after one failure, but names are not counted.
            let failed = auth.check(Protocol::Pop3, A, password(None, "alice", "guess"));
            assert_eq!(failed.await, Err(Denied::Invalid));
            let ok = auth.check(Protocol::Pop3, B, password(None, "alice", "secret"));
            assert_eq!(ok.await, Ok("alice".into()));
        })
    }

    #[test]
    fn failures_and_refusals_are_answered_after_the_delay() {
        run(async {
            let delay = Duration::from_millis(50);
            let auth = Auth {
                pop3: Policy {
                    failures: AuthFailures::new(1, WINDOW),
                    per_user: false,
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
