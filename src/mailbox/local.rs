//! The real answer to the SMTP session's local-recipient question: the directory says who
//! the address is, the store says whether its mailbox has room.

use std::sync::Arc;

use super::directory::{Resolution, SharedDirectory};
use super::store::MailStore;
use crate::smtp::{LocalRecipients, Lookup};

pub struct LocalDelivery {
    directory: SharedDirectory,
    store: Arc<MailStore>,
}

impl LocalDelivery {
    pub fn new(directory: impl Into<SharedDirectory>, store: Arc<MailStore>) -> Self {
        LocalDelivery {
            directory: directory.into(),
            store,
        }
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
            Resolution::Local { mailboxes, forward } => {
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
    use crate::mailbox::{password, Directory, User};
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
