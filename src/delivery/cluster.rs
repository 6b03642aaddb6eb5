//! Next hop = a cluster node. A local user homed on another node (the directory's `home`)
//! arrives here as a forward `user@domain` (see `mailbox::local`); its destination is the
//! home node's cluster listener ([`crate::queue::Route::node`]), reached over mutual TLS
//! from the first byte. The message is sent as stored (our Received field and
//! Authentication-Results on top), so the home node stores the bytes this node would have
//! stored; MAIL carries `XQUEUE=<node>.<queue id>` for the home node's duplicate check
//! (`server::cluster_listener`). One SMTP transaction per home node per message: the
//! recipients homed on one node share a destination, so they go in one transaction.
//!
//! The routing is decided from the directory at hand-off, at every restart and at every
//! retry of a node route (`Core::rerouted`: the recipients whose home moved to another node
//! go to that node's destination with their attempts kept), so a user moved meanwhile
//! follows their new home; a user whose home is this node again (or a
//! node missing from the table) is handled like any unknown next hop: the attempt defers.

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::mailbox::{home_elsewhere, SharedDirectory};
use crate::net::tls::ClusterTls;
use crate::queue::Route;

/// The MAIL parameter that names the sending node and its queue id.
pub const XQUEUE: &str = "XQUEUE";

/// What delivery needs to route to cluster nodes.
pub struct ClusterRoutes {
    /// This node's name.
    pub node: String,
    /// Every node's cluster listener.
    pub nodes: HashMap<String, SocketAddr>,
    /// The directory in force (a user moved meanwhile follows their new home).
    pub directory: SharedDirectory,
    pub tls: ClusterTls,
}

impl ClusterRoutes {
    /// The route of `address` when it is a local user homed on another node.
    pub fn route(&self, address: &str) -> Option<Route> {
        let directory = self.directory.current();
        let home = home_elsewhere(&directory, &self.node, address)?;
        // A node missing from the table gets an address nothing listens on: the attempts
        // defer (and bounce at max_age) rather than the mail looping through MX.
        let addr = self
            .nodes
            .get(home)
            .copied()
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        Some(Route::node(addr))
    }

    /// The MAIL parameters of a message handed to a peer.
    pub fn mail_params(&self, id: crate::envelope::QueueId) -> Vec<(String, String)> {
        vec![(XQUEUE.to_string(), format!("{}.{id}", self.node))]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mailbox::{password, Directory, User};
    use crate::queue::TlsMode;
    use std::collections::BTreeMap;

    #[test]
    fn users_homed_elsewhere_route_to_their_node() {
        let hash = password::hash("pw").unwrap();
        let user = |name: &str, home: Option<&str>| User {
            name: name.into(),
            password: hash.clone(),
            quota: None,
            apop_secret: None,
            home: home.map(str::to_string),
        };
        let directory = Directory::new(
            vec!["example.test".into()],
            vec![
                user("ann", None),
                user("bob", Some("b")),
                user("abe", Some("a")),
                user("zed", Some("z")),
            ],
            &BTreeMap::new(),
        )
        .unwrap();
        let b: SocketAddr = "127.0.0.3:2526".parse().unwrap();
        let routes = ClusterRoutes {
            node: "a".into(),
            nodes: HashMap::from([
                ("a".to_string(), "127.0.0.2:2526".parse().unwrap()),
                ("b".to_string(), b),
            ]),
            directory: directory.into(),
            tls: test_tls(),
        };
        assert_eq!(routes.route("bob@example.test"), Some(Route::node(b)));
        assert_eq!(
            routes.route("BOB@Example.Test").map(|r| r.tls),
            Some(TlsMode::Cluster)
        );
        assert_eq!(routes.route("ann@example.test"), None);
        assert_eq!(routes.route("abe@example.test"), None);
        assert_eq!(routes.route("bob@elsewhere.test"), None);
        let unknown = routes.route("zed@example.test").unwrap();
        assert_eq!(unknown, Route::node(SocketAddr::from(([0, 0, 0, 0], 0))));
        let id = crate::envelope::QueueId(42);
        assert_eq!(
            routes.mail_params(id),
            vec![("XQUEUE".to_string(), format!("a.{id}"))]
        );
    }

    fn test_tls() -> ClusterTls {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let node = rcgen::CertificateParams::new(vec!["a".to_string()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let paths = ["a.pem", "a.key", "ca.pem"].map(|f| dir.path().join(f));
        std::fs::write(&paths[0], node.pem()).unwrap();
        std::fs::write(&paths[1], key.serialize_pem()).unwrap();
        std::fs::write(&paths[2], ca.pem()).unwrap();
        ClusterTls::load(&paths[0], &paths[1], &paths[2]).unwrap()
    }
}
