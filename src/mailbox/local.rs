//! The real answer to the SMTP session's local-recipient question: the directory says who
//! the address is, the store says whether its mailbox has room.
//!
//! In a cluster ([`Homes`]) a user homed on another node is not a mailbox here: on the
//! public listeners their address becomes a forward (`user@domain`, which delivery routes
//! to the home node, see [`home_elsewhere`]); on the cluster listener, where peers send only
//! mail for users they believe are homed here, it is refused for now ([`Lookup::Elsewhere`],
//! 4xx, nothing stored), so a message never circles between nodes that disagree.

use std::sync::Arc;

use super::directory::{Directory, Resolution, SharedDirectory};
use super::store::MailStore;
use crate::smtp::{LocalRecipients, Lookup};

pub struct LocalDelivery {
    directory: SharedDirectory,
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
    pub fn new(directory: impl Into<SharedDirectory>, store: Arc<MailStore>) -> Self {
        LocalDelivery::with_homes(directory, store, Homes::All)
    }

    pub fn with_homes(
        directory: impl Into<SharedDirectory>,
        store: Arc<MailStore>,
        homes: Homes,
    ) -> Self {
        LocalDelivery {
            directory: directory.into(),
            store,
            homes,
        }
    }

    /// Whether `mailbox` lives on another node (never without a cluster).
    fn elsewhere(&self, directory: &Directory, mailbox: &str) -> bool {
        let Homes::Node { node, .. } = &self.homes else {
            return false;
        };
        directory
            .user(mailbox)
            .and_then(|u| u.home.as_deref())
            .is_some_and(|home| home != node)
    }

    fn over_quota(&self, quota: Option<u64>, mailbox: &str, size: u64) -> bool {
        // Checked at RCPT with the declared SIZE: a message may overshoot by its own size,
        // which is how every MTA with RCPT-time quotas behaves.
        quota.is_some_and(|q| self.store.usage(mailbox).saturating_add(size) > q)
    }
}

impl LocalRecipients for LocalDelivery {
    fn lookup(&self, address: &str, size: u64) -> Lookup {
        let directory = self.directory.current();
        match directory.resolve(address) {
            Resolution::Local {
                mut mailboxes,
                mut forward,
            } => {
                if mailboxes.iter().any(|m| self.elsewhere(&directory, m)) {
                    if matches!(self.homes, Homes::Node { peer: true, .. }) {
                        return Lookup::Elsewhere;
                    }
                    // The address's own domain is local (the session asks only about local
                    // addresses); a bare `postmaster` takes the first local domain.
                    let domain = address
                        .rsplit_once('@')
                        .map(|(_, d)| d.to_ascii_lowercase())
                        .or_else(|| directory.domains().first().cloned())
                        .unwrap_or_default();
                    let (away, here): (Vec<String>, Vec<String>) = mailboxes
                        .into_iter()
                        .partition(|m| self.elsewhere(&directory, m));
                    forward.extend(away.into_iter().map(|m| format!("{m}@{domain}")));
                    mailboxes = here;
                }
                // Quotas of users homed elsewhere are their home node's to check.
                if mailboxes
                    .iter()
                    .any(|m| self.over_quota(directory.quota(m), m, size))
                {
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
        let directory = self.directory.current();
        match directory.resolve(address) {
            Resolution::Local { mailboxes, forward }
                if mailboxes.len() == 1 && forward.is_empty() =>
            {
                directory.user(&mailboxes[0])?;
                Some(address.to_ascii_lowercase())
            }
            _ => None,
        }
    }

    fn expand(&self, address: &str) -> Option<Vec<String>> {
        self.directory
            .current()
            .list_members(address)
            .map(<[String]>::to_vec)
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
        (LocalDelivery::new(directory, Arc::clone(&store)), store)
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
    fn users_homed_elsewhere_are_forwarded_or_refused() {
        let hash = password::hash("pw").unwrap();
        let user = |name: &str, home: Option<&str>| User {
            name: name.into(),
            password: hash.clone(),
            quota: Some(10),
            apop_secret: None,
            home: home.map(str::to_string),
        };
        let mut aliases = BTreeMap::new();
        aliases.insert(
            "crew".to_string(),
            vec![
                "ada".to_string(),
                "bea".to_string(),
                "x@remote.test".to_string(),
            ],
        );
        let directory = Arc::new(
            Directory::new(
                vec!["example.test".into()],
                vec![
                    user("ada", Some("a")),
                    user("bea", Some("b")),
                    user("one", None),
                ],
                &aliases,
            )
            .unwrap(),
        );
        let store = MailStore::new();
        let node = |peer| Homes::Node {
            node: "a".into(),
            peer,
        };
        let public =
            LocalDelivery::with_homes(Arc::clone(&directory), Arc::clone(&store), node(false));
        // bea's quota is her home node's to check: a size over it is still forwarded.
        assert_eq!(
            public.lookup("Bea@Example.Test", 1000),
            Lookup::Deliver {
                mailboxes: vec![],
                forward: vec!["bea@example.test".into()]
            }
        );
        assert_eq!(
            public.lookup("crew@example.test", 0),
            Lookup::Deliver {
                mailboxes: vec!["ada".into()],
                forward: vec!["x@remote.test".into(), "bea@example.test".into()]
            }
        );
        assert_eq!(public.lookup("ada@example.test", 1000), Lookup::OverQuota);
        assert!(matches!(
            public.lookup("one@example.test", 0),
            Lookup::Deliver { .. }
        ));
        // The cluster listener: only users homed here.
        let peer =
            LocalDelivery::with_homes(Arc::clone(&directory), Arc::clone(&store), node(true));
        assert_eq!(peer.lookup("bea@example.test", 0), Lookup::Elsewhere);
        assert_eq!(peer.lookup("nobody@example.test", 0), Lookup::Unknown);
        assert_eq!(
            peer.lookup("ada@example.test", 0),
            Lookup::Deliver {
                mailboxes: vec!["ada".into()],
                forward: vec![]
            }
        );
        // Without a cluster every user is here, whatever their `home`.
        let single = LocalDelivery::new(Arc::clone(&directory), store);
        assert!(matches!(
            single.lookup("bea@example.test", 0),
            Lookup::Deliver { mailboxes, .. } if mailboxes == vec!["bea".to_string()]
        ));
        assert_eq!(
            home_elsewhere(&directory, "a", "bea@example.test"),
            Some("b")
        );
        assert_eq!(home_elsewhere(&directory, "b", "bea@example.test"), None);
        assert_eq!(home_elsewhere(&directory, "a", "crew@example.test"), None);
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
