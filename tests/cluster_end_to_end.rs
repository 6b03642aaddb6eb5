//! The cluster as one service, end to end (issue 20's first test): a message for a user homed
//! on node B, submitted to node A, crosses to B over the mutual-TLS cluster listener, and a
//! client connecting to node C reads it over POP3 (poplib) and IMAP (imaplib), byte for
//! byte what B itself serves and ending with exactly what was submitted. Three real
//! `relay serve` nodes on 127.0.0.2–127.0.0.4 with a test CA (tests/common/cluster.rs).

#[macro_use]
mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::cluster::{client, free_port, messages, Cluster};
use common::json::Json;
use common::smtp::message;
use common::{has_all, Engine, Relay, TEST_PASSWORD, TEST_PASSWORD_HASH};

/// How long the hop from A to B may take.
const HOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Each node's client listeners, fixed before any node starts: the node table names them.
struct Listeners {
    pop3: SocketAddr,
    imap: SocketAddr,
}

/// The node's config: the test template on its own address, its POP3 and IMAP listeners,
/// the `[cluster]` section with every node's cluster, POP3 and IMAP addresses, and bea homed
/// on B.
fn start(engine: Engine, cluster: &Cluster, listeners: &[Listeners], name: &str) -> Relay {
    let node = cluster.node(name);
    let mine = &listeners[cluster
        .nodes
        .iter()
        .position(|n| n.name == name)
        .expect("a node of the cluster")];
    let section = cluster.cluster_toml_with(name, |i| {
        format!(
            "pop3 = \"{}\"\nimap = \"{}\"\n",
            listeners[i].pop3, listeners[i].imap
        )
    });
    let mut settings = common::Settings::new(engine);
    settings.smtp_listen = format!("{}:{}", node.ip, free_port(node.ip));
    settings.extra_toml = format!(
        "[delivery]\nretry_intervals = [\"300ms\"]\nretry_every = \"300ms\"\n\
         retry_jitter_percent = 0\n{section}\
         [[local.users]]\nname = \"bea\"\npassword = \"{TEST_PASSWORD_HASH}\"\nhome = \"b\"\n"
    );
    let mut text = settings.render(&node.dir.path().join("spool"));
    text = text.replacen(
        "[pop3]\nlisten = [\"127.0.0.1:0\"]\n",
        &format!("[pop3]\nlisten = [\"{}\"]\n", mine.pop3),
        1,
    );
    text = text.replacen(
        "[imap]\nlisten = [\"127.0.0.1:0\"]\n",
        &format!("[imap]\nlisten = [\"{}\"]\n", mine.imap),
        1,
    );
    settings.raw_config = Some(text);
    let relay = Relay::start_in(Arc::clone(&node.dir), settings);
    assert_eq!(relay.listening("pop3"), Some(mine.pop3), "{name}'s POP3");
    assert_eq!(relay.listening("imap"), Some(mine.imap), "{name}'s IMAP");
    relay
}

/// Every message of `user` read with Python's poplib (RETR) or imaplib (FETCH BODY[]).
fn read(protocol: &str, addr: SocketAddr, user: &str) -> Vec<Vec<u8>> {
    messages(&client(protocol, addr, user, TEST_PASSWORD, &[]))
}

/// How many messages `user` has on `relay` itself (its admin socket's `/mailbox`): POP3 on a
/// node where the user is not homed is proxied, so it cannot tell.
fn stored_here(relay: &Relay, user: &str) -> i64 {
    let (status, body) = relay.admin_socket_get("/mailbox");
    assert_eq!(status, 200, "{body}");
    let rows = Json::parse(&body).expect("JSON");
    rows.array()
        .iter()
        .find(|row| row.get("user").str() == user)
        .map_or(0, |row| row.get("messages").int())
}

fn submitted_on_a_read_through_c(engine: Engine) {
    let cluster = Cluster::new(&["a", "b", "c"], "");
    let listeners: Vec<Listeners> = cluster
        .nodes
        .iter()
        .map(|n| Listeners {
            pop3: SocketAddr::new(n.ip, free_port(n.ip)),
            imap: SocketAddr::new(n.ip, free_port(n.ip)),
        })
        .collect();
    let a = start(engine, &cluster, &listeners, "a");
    let b = start(engine, &cluster, &listeners, "b");
    let c = start(engine, &cluster, &listeners, "c");

    let sent = message(
        "across-the-cluster",
        &[
            "submitted to A",
            "",
            ".a line starting with a dot",
            "homed on B",
        ],
    );
    let id = a.deliver(&["bea@example.test"], &sent);
    b.log()
        .wait_for(HOP_TIMEOUT, |l| {
            has_all(l, &["stored for a peer", &format!(".{id}")])
        })
        .unwrap_or_else(|| panic!("{id} never reached B:\n{}", b.log().render()));

    let on_b = read("pop3", listeners[1].pop3, "bea");
    assert_eq!(on_b.len(), 1, "bea's mailbox on B");
    assert!(
        on_b[0].ends_with(&sent),
        "B's copy does not end with the submitted message:\n{}",
        String::from_utf8_lossy(&on_b[0])
    );
    let pop3_via_c = read("pop3", listeners[2].pop3, "bea");
    let imap_via_c = read("imap", listeners[2].imap, "bea");
    assert_eq!(pop3_via_c, on_b, "POP3 through C");
    assert_eq!(imap_via_c, on_b, "IMAP through C");
    // C proxied both logins to B; A and C store nothing for bea.
    c.wait_log(&["login proxied"], HOP_TIMEOUT);
    assert_eq!(stored_here(&b, "bea"), 1);
    assert_eq!(stored_here(&a, "bea"), 0, "bea's mail stayed on A");
    assert_eq!(stored_here(&c, "bea"), 0, "bea's mail stored on C");
}

engine_tests! {
    submitted_on_a_read_through_c: submitted_on_a_read_through_c_uring, submitted_on_a_read_through_c_epoll;
}
