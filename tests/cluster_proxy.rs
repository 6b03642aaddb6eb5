//! Logins proxied to the home node (issue 20, "Home nodes"): two `relay serve` nodes, B on
//! 127.0.0.3 and C on 127.0.0.4, share a users file in which carol and erin live on B. Python's
//! poplib and imaplib connect to C and see B's mailbox byte for byte; deletions through C
//! happen on B; a wrong password is refused by C alone; with B killed, C answers with a
//! temporary error at once.

#[macro_use]
mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::cluster::{client, messages};
use common::json::Json;
use common::smtp::message;
use common::{new_workdir, Engine, Relay, Settings, TEST_PASSWORD, TEST_PASSWORD_HASH};

/// One node's addresses, fixed before any node starts (the node table names them all).
struct NodeAddrs {
    name: &'static str,
    ip: &'static str,
    cluster: SocketAddr,
    pop3: SocketAddr,
    imap: SocketAddr,
    web: SocketAddr,
}

/// A port free on `ip` right now (each node has a loopback address of its own, so another
/// test taking it in between is unlikely).
fn free_port(ip: &str) -> SocketAddr {
    std::net::TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| panic!("bind {ip}: {e}"))
}

fn node(name: &'static str, ip: &'static str) -> NodeAddrs {
    NodeAddrs {
        name,
        ip,
        cluster: free_port(ip),
        pop3: free_port(ip),
        imap: free_port(ip),
        web: free_port(ip),
    }
}

const USERS_FILE: &str = "cluster-users";

/// The node's config: the test template with its own addresses, the shared users file and
/// the `[cluster]` node table.
fn start(engine: Engine, this: &NodeAddrs, nodes: &[&NodeAddrs], users: &str) -> Relay {
    let mut settings = Settings::new(engine);
    settings.smtp_listen = format!("{}:0", this.ip);
    let mut cluster = format!("[cluster]\nnode = {:?}\n", this.name);
    for n in nodes {
        cluster.push_str(&format!(
            "[[cluster.nodes]]\nname = {:?}\ncluster = \"{}\"\npop3 = \"{}\"\nimap = \"{}\"\nweb = \"{}\"\n",
            n.name, n.cluster, n.pop3, n.imap, n.web
        ));
    }
    settings.extra_toml = format!("[web]\nlisten = [\"{}\"]\n{cluster}", this.web);
    let dir = new_workdir();
    let mut text = settings.render(&dir.path().join("spool"));
    let pop3 = format!("[pop3]\nlisten = [\"{}\"]\n", this.pop3);
    let imap = format!("[imap]\nlisten = [\"{}\"]\n", this.imap);
    text = text.replacen("[pop3]\nlisten = [\"127.0.0.1:0\"]\n", &pop3, 1);
    text = text.replacen("[imap]\nlisten = [\"127.0.0.1:0\"]\n", &imap, 1);
    text = text.replacen(
        "[local]\n",
        &format!("[local]\nusers_file = {users:?}\n"),
        1,
    );
    settings.raw_config = Some(text);
    Relay::start_in(dir, settings)
}

fn error(answer: &Json) -> String {
    assert_eq!(answer.get("ok"), &Json::Bool(false), "{answer:?}");
    answer.get("error").str().to_string()
}

fn count(relay: &Relay, needle: &str) -> usize {
    relay
        .log_lines()
        .iter()
        .filter(|l| l.contains(needle))
        .count()
}

fn logins_on_any_node_reach_the_home_node(engine: Engine) {
    let b = node("b", "127.0.0.3");
    let c = node("c", "127.0.0.4");
    let shared = new_workdir();
    let users = shared.path().join(USERS_FILE);
    std::fs::write(
        &users,
        format!(
            "carol {TEST_PASSWORD_HASH} home=b\n\
             erin {TEST_PASSWORD_HASH} apop=erin-secret home=b\n\
             frank {TEST_PASSWORD_HASH} home=nowhere\n"
        ),
    )
    .unwrap();
    // It holds password hashes and an APOP secret: the relay wants it private.
    std::fs::set_permissions(&users, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let users = users.to_str().unwrap();
    let node_b = start(engine, &b, &[&b, &c], users);
    let node_c = start(engine, &c, &[&b, &c], users);
    let (b_pop3, b_imap) = (b.pop3, b.imap);
    assert_eq!(node_c.listening("pop3"), Some(c.pop3));

    // Mail for carol goes to B directly (relaying between nodes is the cluster listener's).
    let sent: Vec<Vec<u8>> = (0..3)
        .map(|i| {
            message(
                &format!("proxied-{i}"),
                &["a line", "", ".starts with a dot"],
            )
        })
        .collect();
    for m in &sent {
        node_b.deliver(&["carol@example.test"], m);
    }
    node_b.deliver(&["erin@example.test"], &sent[0]);

    // POP3 through C reads what B itself serves, byte for byte.
    let at_b = messages(&client("pop3", b_pop3, "carol", TEST_PASSWORD, &[]));
    assert_eq!(at_b.len(), 3);
    for (stored, sent) in at_b.iter().zip(&sent) {
        assert!(
            stored.ends_with(sent),
            "stored message does not end with the sent one"
        );
    }
    let through_c = client("pop3", c.pop3, "carol", TEST_PASSWORD, &["--dele", "2"]);
    assert_eq!(messages(&through_c), at_b);
    assert!(
        through_c.get("login").str().starts_with("+OK"),
        "{through_c:?}"
    );
    // The deletion through C happened on B.
    let after = messages(&client("pop3", b_pop3, "carol", TEST_PASSWORD, &[]));
    assert_eq!(after, vec![at_b[0].clone(), at_b[2].clone()]);

    // APOP through C: C logs in at B with the stored secret and B's own timestamp.
    let apop = client("pop3", c.pop3, "erin", "erin-secret", &["--apop"]);
    assert_eq!(messages(&apop).len(), 1);

    // IMAP through C: B's post-login capabilities in the tagged OK, bodies byte for byte,
    // EXPUNGE through C effective on B.
    let imap_b = client("imap", b_imap, "carol", TEST_PASSWORD, &[]);
    let bodies = messages(&imap_b);
    assert_eq!(bodies, after);
    let imap_c = client("imap", c.imap, "carol", TEST_PASSWORD, &["--expunge", "1"]);
    assert_eq!(messages(&imap_c), bodies);
    assert_eq!(imap_c.get("capability"), imap_b.get("capability"));
    let caps = imap_c.get("capability").str();
    assert!(
        caps.contains("IMAP4rev2") && !caps.contains("AUTH="),
        "{caps}"
    );
    let left = messages(&client("imap", b_imap, "carol", TEST_PASSWORD, &[]));
    assert_eq!(left, vec![bodies[1].clone()]);

    // Every proxied login (POP3 carol, POP3 erin, IMAP carol) took two round trips to B:
    // the connection with its greeting, and the login.
    let proxied = node_c
        .log_lines()
        .into_iter()
        .filter(|l| l.contains("relay::cluster: login proxied"))
        .collect::<Vec<_>>();
    assert_eq!(proxied.len(), 3, "{proxied:?}");
    assert!(
        proxied.iter().all(|l| l.contains("round_trips=2")),
        "{proxied:?}"
    );

    // Web mail through C: a browser logs in on C and sees B's INBOX (C's own mailbox for
    // carol is empty); its logout ends the session on B and both cookies.
    let web = client("web", c.web, "carol", TEST_PASSWORD, &[]);
    assert_eq!(web.get("login_status").int(), 200, "{web:?}");
    assert!(
        web.get("url").str().ends_with("/mail?folder=INBOX"),
        "{web:?}"
    );
    let page = web.get("page").str();
    assert!(
        page.contains("proxied-2") && !page.contains("proxied-0"),
        "{page}"
    );
    let cookies: Vec<&str> = web.get("cookies").array().iter().map(Json::str).collect();
    assert_eq!(cookies, vec!["relay_home=b", "relay_session=*"], "{web:?}");
    assert_eq!(web.get("logout_status").int(), 200, "{web:?}");
    // Only the login page's own token is left (the logout redirected there).
    let left: Vec<&str> = web
        .get("cookies_after_logout")
        .array()
        .iter()
        .map(Json::str)
        .collect();
    assert_eq!(left, vec!["relay_login"], "{web:?}");
    assert!(
        web.get("after_logout_url").str().ends_with("/login"),
        "{web:?}"
    );
    assert_eq!(count(&node_c, "relay::web: login proxied"), 1);
    assert_eq!(count(&node_b, "relay::web: login client"), 1);

    // A wrong password is refused by C without contacting B.
    let b_failures = count(&node_b, "login failed");
    let wrong = client("pop3", c.pop3, "carol", "wrong", &[]);
    assert!(error(&wrong).contains("-ERR [AUTH]"), "{wrong:?}");
    let wrong = client("imap", c.imap, "carol", "wrong", &[]);
    assert!(error(&wrong).contains("AUTHENTICATIONFAILED"), "{wrong:?}");
    let wrong = client("web", c.web, "carol", "wrong", &[]);
    assert_eq!(wrong.get("login_status").int(), 401, "{wrong:?}");
    assert_eq!(count(&node_c, "login failed"), 3);
    assert_eq!(count(&node_b, "login failed"), b_failures);
    assert_eq!(count(&node_c, "relay::cluster: login proxied"), 3);
    assert_eq!(count(&node_c, "proxied login failed"), 0);

    // A home node missing from the node table: a temporary failure, not a local login.
    let nowhere = client("pop3", c.pop3, "frank", TEST_PASSWORD, &[]);
    assert!(error(&nowhere).contains("[SYS/TEMP]"), "{nowhere:?}");

    // B killed: C answers with a temporary failure at once, for all three.
    node_b.kill9();
    let started = Instant::now();
    let down = client("pop3", c.pop3, "carol", TEST_PASSWORD, &[]);
    assert!(error(&down).contains("-ERR [SYS/TEMP]"), "{down:?}");
    let down = client("imap", c.imap, "carol", TEST_PASSWORD, &[]);
    assert!(error(&down).contains("[UNAVAILABLE]"), "{down:?}");
    let down = client("web", c.web, "carol", TEST_PASSWORD, &[]);
    assert_eq!(down.get("login_status").int(), 503, "{down:?}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    // frank, then POP3, IMAP and web with B down.
    assert_eq!(count(&node_c, "proxied login failed"), 4);
}

engine_tests! {
    logins_on_any_node_reach_the_home_node: proxied_logins_uring, proxied_logins_epoll;
}
