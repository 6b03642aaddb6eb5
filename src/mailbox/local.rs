//! The real answer to the SMTP session's local-recipient question: the directory says who
//! the address is, the store says whether its mailbox has room.
//!
//! In a cluster ([`Homes`]) a user homed on another node is not a mailbox here: on the
//! public listeners their address becomes a forward (`user@domain`, which delivery routes
//! to the home node, see [`home_elsewhere`]); on the cluster listener, where peers send only
//! mail for users they believe are homed here, it is unknown (5xx), so a message never
//! circles between nodes that disagree.

use std::sync::Arc;

use super::directory::{Directory, Resolution};
use super::store::MailStore;
use crate::smtp::{LocalRecipients, Lookup};

pub struct LocalDelivery {
    directory: Arc<Directory>,
    store: Arc<MailStore>,
    homes: Homes,
}

/// Which users' mailboxes are here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Homes {
    /// No cluster: every user's.
    All,
    /// A cluster node: users homed on `node` (or with no home); others are forwarded to
    /// their home node (`peer: false`) or refused (`peer: true`, the cluster listener).
    Node { node: String, peer: bool },
}

/// The node other than `node` where the one user `address` names is homed: a forward that
/// delivery routes to that node's cluster listener. `None` for anything else (remote
/// addresses, lists, users homed on `node`).
pub fn home_elsewhere<'a>(directory: &'a Directory, node: &str, address: &str) -> Option<&'a str> {
    match directory.resolve(address) {
        Resolution::Local { mailboxes, forward } if mailboxes.len() == 1 && forward.is_empty() => {
            let home = directory.user(&mailboxes[0])?.home.as_deref()?;
            (home != node).then_some(home)
        }
        _ => None,
    }
}

impl LocalDelivery {
    pub fn new(directory: Arc<Directory>, store: Arc<MailStore>) -> Self {
        LocalDelivery::with_homes(directory, store, Homes::All)
    }

    pub fn with_homes(directory: Arc<Directory>, store: Arc<MailStore>, homes: Homes) -> Self {
        LocalDelivery {
            directory,
            store,
            homes,
        }
    }

    /// Whether `mailbox` lives on another node (never without a cluster).
    fn elsewhere(&self, mailbox: &str) -> bool {
        let Homes::Node { node, .. } = &self.homes else {
            return false;
        };
        self.directory
            .user(mailbox)
            .and_then(|u| u.home.as_deref())
            .is_some_and(|home| home != node)
    }

    fn over_quota(&self, mailbox: &str, size: u64) -> bool {
        let quota = self.directory.quota(mailbox);
        // Checked at RCPT with the declared SIZE: a message may overshoot by its own size,
        // which is how every MTA with RCPT-time quotas behaves.
        quota.is_some_and(|q| self.store.usage(mailbox).saturating_add(size) > q)
    }
}

impl LocalRecipients for LocalDelivery {
    fn lookup(&self, address: &str, size: u64) -> Lookup {
        match self.directory.resolve(address) {
            Resolution::Local {
                mut mailboxes,
                mut forward,
            } => {
                if mailboxes.iter().any(|m| self.elsewhere(m)) {
                    if matches!(self.homes, Homes::Node { peer: true, .. }) {
                        return Lookup::Unknown;
                    }
                    // The address's own domain is local (the session asks only about local
                    // addresses); a bare `postmaster` takes the first local domain.
                    let domain = address
                        .rsplit_once('@')
                        .map(|(_, d)| d.to_ascii_lowercase())
                        .or_else(|| self.directory.domains().first().cloned())
                        .unwrap_or_default();
                    let (away, here): (Vec<String>, Vec<String>) =
                        mailboxes.into_iter().partition(|m| self.elsewhere(m));
                    forward.extend(away.into_iter().map(|m| format!("{m}@{domain}")));
                    mailboxes = here;
                }
                // Quotas of users homed elsewhere are their home node's to check.
                if mailboxes.iter().any(|m| self.over_quota(m, size)) {
                    Lookup::OverQuota
                } else {
                    Lookup::Deliver { mailboxes, forward }
                }
            }
            Resolution::Unknown => Lookup::Unknown,
            // The session asks only about local addresses; answer safely all the same.
            Resolution::Remote => Lookup::Deliver {
                mailboxes: Vec::new(),
                forward: vec![address.to_string()],
            },
        }
    }

    fn verify(&self, address: &str) -> Option<String> {
        match self.directory.resolve(address) {
            Resolution::Local { mailboxes, forward }
                if mailboxes.len() == 1 && forward.is_empty() =>
            {
                self.directory.user(&mailboxes[0])?;
                Some(address.to_ascii_lowercase())
            }
            _ => None,
        }
    }

    fn expand(&self, address: &str) -> Option<Vec<String>> {
        self.directory.list_members(address).map(<[String]>::to_vec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::QueueId;
    use crate::mailbox::{password, User};
    use std::collections::BTreeMap;

    fn setup() -> (LocalDelivery, Arc<MailStore>) {
        let hash = password::hash("pw").unwrap();
        let user = |name: &str, quota| User {
            name: name.into(),
            password: hash.clone(),
            quota,
            apop_secret: None,
            home: None,
        };
        let mut aliases = BTreeMap::new();
        aliases.insert(
            "team".to_string(),
            vec!["alice".to_string(), "bob".to_string()],
        );
        let directory = Directory::new(
            vec!["example.test".into()],
            vec![user("alice", Some(1000)), user("bob", None)],
            &aliases,
        )
        .unwrap();
        let store = MailStore::new();
        (
            LocalDelivery::new(Arc::new(directory), Arc::clone(&store)),
            store,
        )
    }

    #[test]
    fn quota_is_checked_against_usage_plus_declared_size() {
        let (local, store) = setup();
        assert!(matches!(
            local.lookup("alice@example.test", 900),
            Lookup::Deliver { .. }
        ));
        store.deliver_now("alice", QueueId(1), 600);
        assert_eq!(local.lookup("alice@example.test", 500), Lookup::OverQuota);
        assert_eq!(local.lookup("team@example.test", 500), Lookup::OverQuota);
        assert!(matches!(
            local.lookup("bob@example.test", 1 << 30),
            Lookup::Deliver { .. }
        ));
    }

    #[test]
    fn postmaster_without_a_user_is_accepted_within_its_quota() {
        let (local, store) = setup();
        assert_eq!(
            local.lookup("Postmaster@example.test", 1000),
            Lookup::Deliver {
                mailboxes: vec!["postmaster".into()],
                forward: vec![]
            }
        );
        store.deliver_now(
            "postmaster",
            QueueId(1),
            crate::mailbox::directory::POSTMASTER_UNOWNED_QUOTA,
        );
        assert_eq!(local.lookup("postmaster", 1), Lookup::OverQuota);
    }

    #[test]
    fn vrfy_and_expn_answers() {
        let (local, _) = setup();
        assert_eq!(
            local.verify("Alice@example.test"),
            Some("alice@example.test".into())
        );
        assert_eq!(local.verify("team@example.test"), None);
        assert_eq!(local.verify("nobody@example.test"), None);
        assert_eq!(local.lookup("nobody@example.test", 0), Lookup::Unknown);
        assert_eq!(
            local.expand("team@example.test"),
            Some(vec!["alice".to_string(), "bob".to_string()])
        );
        assert_eq!(local.expand("alice@example.test"), None);
    }
}
