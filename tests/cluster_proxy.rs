//! Logins proxied to the home node (issue 20, "Home nodes"): two `relay serve` nodes, B on
//! 127.0.0.3 and C on 127.0.0.4, share a users file in which carol and erin live on B. Python's
//! poplib and imaplib connect to C and see B's mailbox byte for byte; deletions through C
//! happen on B; a wrong password is refused by C alone; with B killed, C answers with a
//! temporary error at once.
//!
//! The session reaches B over the cluster listener's mutual TLS, already logged in: B
//! hashes no password for it (its `auth_hash_run_total` does not move), its public POP3
//! and IMAP listeners need not be in the node table, a client without a cluster
//! certificate cannot ask for a session, and a user B does not home is refused (the client
//! gets a temporary error).

#[macro_use]
mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::cluster::{client, messages, NodeCert, TestCa};
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
    /// The `web` address the node table names for it (its own web listener unless a test
    /// says otherwise: the address is no longer used).
    table_web: SocketAddr,
    cert: NodeCert,
}

/// A port free on `ip` right now, never handed out before in this process
/// (`common::cluster::free_port`).
fn free_port(ip: &str) -> SocketAddr {
    let ip = ip.parse().expect("an IP address");
    SocketAddr::new(ip, common::cluster::free_port(ip))
}

fn node(ca: &TestCa, name: &'static str, ip: &'static str) -> NodeAddrs {
    let web = free_port(ip);
    NodeAddrs {
        name,
        ip,
        cluster: free_port(ip),
        pop3: free_port(ip),
        imap: free_port(ip),
        web,
        table_web: web,
        cert: ca.node_cert(name, ip.parse().expect("an IP address")),
    }
}

const USERS_FILE: &str = "cluster-users";

/// The node's config: the test template with its own addresses, the users file and the
/// `[cluster]` section (its listener and certificate, the node table; the table names the
/// nodes' public POP3 and IMAP listeners only when `public`).
fn start(
    engine: Engine,
    ca: &TestCa,
    this: &NodeAddrs,
    nodes: &[&NodeAddrs],
    users: &str,
    public: bool,
) -> Relay {
    let mut settings = Settings::new(engine);
    settings.smtp_listen = free_port(this.ip).to_string();
    let mut cluster = format!(
        "[cluster]\nnode = {:?}\nlisten = \"{}\"\ncert = {:?}\nkey = {:?}\nca = {:?}\n",
        this.name,
        this.cluster,
        this.cert.cert_path.to_str().expect("utf-8 path"),
        this.cert.key_path.to_str().expect("utf-8 path"),
        ca.cert_path.to_str().expect("utf-8 path"),
    );
    for n in nodes {
        cluster.push_str(&format!(
            "[[cluster.nodes]]\nname = {:?}\ncluster = \"{}\"\nweb = \"{}\"\n",
            n.name, n.cluster, n.table_web
        ));
        if public {
            cluster.push_str(&format!("pop3 = \"{}\"\nimap = \"{}\"\n", n.pop3, n.imap));
        }
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

/// The value of an unlabelled metric on `relay`'s `/metrics`.
fn metric(relay: &Relay, name: &str) -> f64 {
    let (status, body) = relay.admin_get("/metrics");
    assert_eq!(status, 200);
    body.lines()
        .find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{body}"))
}

const HASHES: &str = "relay_auth_hash_run_total";

fn logins_on_any_node_reach_the_home_node(engine: Engine) {
    let shared = new_workdir();
    let ca = TestCa::generate(shared.path(), "proxy");
    let b = node(&ca, "b", "127.0.0.3");
    let c = node(&ca, "c", "127.0.0.4");
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
    let node_b = start(engine, &ca, &b, &[&b, &c], users, true);
    let node_c = start(engine, &ca, &c, &[&b, &c], users, true);
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
    // The proxied logins hash the password once, on C (B has hashed its own logins only).
    let (b_hashes, c_hashes) = (metric(&node_b, HASHES), metric(&node_c, HASHES));
    let through_c = client("pop3", c.pop3, "carol", TEST_PASSWORD, &["--dele", "2"]);
    assert_eq!(metric(&node_b, HASHES), b_hashes);
    assert_eq!(metric(&node_c, HASHES), c_hashes + 1.0);
    let through_c_hashes = metric(&node_c, HASHES);
    assert_eq!(messages(&through_c), at_b);
    assert!(
        through_c.get("login").str().starts_with("+OK"),
        "{through_c:?}"
    );
    // The deletion through C happened on B.
    let after = messages(&client("pop3", b_pop3, "carol", TEST_PASSWORD, &[]));
    assert_eq!(after, vec![at_b[0].clone(), at_b[2].clone()]);

    // APOP through C: checked on C (its own timestamp); B needs no secret.
    let b_hashes = metric(&node_b, HASHES);
    let apop = client("pop3", c.pop3, "erin", "erin-secret", &["--apop"]);
    assert_eq!(messages(&apop).len(), 1);
    assert_eq!(metric(&node_b, HASHES), b_hashes);
    assert_eq!(metric(&node_c, HASHES), through_c_hashes + 1.0);

    // IMAP through C: B's post-login capabilities in the tagged OK, bodies byte for byte,
    // EXPUNGE through C effective on B.
    let imap_b = client("imap", b_imap, "carol", TEST_PASSWORD, &[]);
    let bodies = messages(&imap_b);
    assert_eq!(bodies, after);
    let b_hashes = metric(&node_b, HASHES);
    let imap_c = client("imap", c.imap, "carol", TEST_PASSWORD, &["--expunge", "1"]);
    assert_eq!(messages(&imap_c), bodies);
    assert_eq!(metric(&node_b, HASHES), b_hashes);
    assert_eq!(imap_c.get("capability"), imap_b.get("capability"));
    let caps = imap_c.get("capability").str();
    assert!(
        caps.contains("IMAP4rev2") && !caps.contains("AUTH="),
        "{caps}"
    );
    let left = messages(&client("imap", b_imap, "carol", TEST_PASSWORD, &[]));
    assert_eq!(left, vec![bodies[1].clone()]);

    // Every proxied login (POP3 carol, POP3 erin, IMAP carol) was served by B over the
    // cluster listener, for the client's own address.
    assert_eq!(count(&node_c, "relay::cluster: login proxied"), 3);
    let served = node_b
        .log_lines()
        .into_iter()
        .filter(|l| l.contains("proxied login served"))
        .collect::<Vec<_>>();
    assert_eq!(served.len(), 3, "{served:?}");
    assert!(
        served
            .iter()
            .all(|l| l.contains("from=c") && l.contains("client=127.")),
        "{served:?}"
    );

    // Web mail through C: a browser logs in on C and sees B's INBOX (C's own mailbox for
    // carol is empty); its logout ends the session on B and both cookies. B starts the
    // session for C's word over the cluster listener: it hashes no password.
    let b_hashes = metric(&node_b, HASHES);
    let web = client("web", c.web, "carol", TEST_PASSWORD, &[]);
    assert_eq!(metric(&node_b, HASHES), b_hashes);
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

/// Opens `addr`'s cluster listener as a peer asking (ALPN `relay-login`) for a proxied
/// login, presenting `cert` (or none), sends `frame` and reads until the listener closes:
/// what came back, or the error that ended the connection (a refused handshake).
fn ask_login(
    addr: SocketAddr,
    ca: &std::path::Path,
    cert: Option<&NodeCert>,
    frame: &[u8],
) -> std::io::Result<Vec<u8>> {
    ask(addr, ca, cert, b"relay-login", frame)
}

/// A request frame as a front node sends it.
fn login_request(protocol: &str, user: &str) -> Vec<u8> {
    let json = format!(
        r#"{{"protocol":"{protocol}","user":"{user}","client":"192.0.2.1:4000","from":"c"}}"#
    );
    let mut frame = u32::try_from(json.len()).unwrap().to_be_bytes().to_vec();
    frame.extend_from_slice(json.as_bytes());
    frame
}

fn proxied_logins_need_no_password_and_no_public_listener_at_home(engine: Engine) {
    let shared = new_workdir();
    let ca = TestCa::generate(shared.path(), "proxy");
    let b = node(&ca, "b", "127.0.0.3");
    let c = node(&ca, "c", "127.0.0.4");
    // C sends carol and dave to B; B homes carol only (dave has just moved to C, and C's
    // directory does not know yet).
    let write_users = |name: &str, dave_home: &str| {
        let path = shared.path().join(name);
        std::fs::write(
            &path,
            format!(
                "carol {TEST_PASSWORD_HASH} home=b\n\
                 dave {TEST_PASSWORD_HASH} home={dave_home}\n"
            ),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        path.to_str().unwrap().to_string()
    };
    let users_b = write_users("users-b", "c");
    let users_c = write_users("users-c", "b");
    // The node table names no POP3 or IMAP listener: only the cluster listeners.
    let node_b = start(engine, &ca, &b, &[&b, &c], &users_b, false);
    let node_c = start(engine, &ca, &c, &[&b, &c], &users_c, false);
    let sent: Vec<Vec<u8>> = (0..2)
        .map(|i| message(&format!("preauth-{i}"), &["a line", ".dot"]))
        .collect();
    for m in &sent {
        node_b.deliver(&["carol@example.test"], m);
    }

    let b_hashes = metric(&node_b, HASHES);
    let pop3 = client("pop3", c.pop3, "carol", TEST_PASSWORD, &[]);
    let got = messages(&pop3);
    assert_eq!(got.len(), 2, "{pop3:?}");
    for (stored, sent) in got.iter().zip(&sent) {
        assert!(stored.ends_with(sent));
    }
    assert!(
        pop3.get("login")
            .str()
            .starts_with("+OK maildrop has 2 messages"),
        "{pop3:?}"
    );
    let imap = client("imap", c.imap, "carol", TEST_PASSWORD, &[]);
    assert_eq!(messages(&imap), got);
    let caps = imap.get("capability").str();
    assert!(
        caps.contains("IMAP4rev2") && caps.contains("IDLE") && !caps.contains("AUTH="),
        "{caps}"
    );
    let web = client("web", c.web, "carol", TEST_PASSWORD, &[]);
    assert_eq!(web.get("login_status").int(), 200, "{web:?}");
    assert!(web.get("page").str().contains("preauth-1"), "{web:?}");
    // B verified no password for any of the three sessions.
    assert_eq!(metric(&node_b, HASHES), b_hashes);
    assert_eq!(count(&node_b, "proxied login served"), 3);

    // dave: C sends him to B, which does not home him: a temporary error, and B says why.
    let dave = client("pop3", c.pop3, "dave", TEST_PASSWORD, &[]);
    assert!(error(&dave).contains("-ERR [SYS/TEMP]"), "{dave:?}");
    let dave = client("imap", c.imap, "dave", TEST_PASSWORD, &[]);
    assert!(error(&dave).contains("[UNAVAILABLE]"), "{dave:?}");
    let refused = node_b
        .log_lines()
        .into_iter()
        .filter(|l| l.contains("proxied login refused"))
        .collect::<Vec<_>>();
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(
        refused
            .iter()
            .all(|l| l.contains("homed on another node") && l.contains("user=dave")),
        "{refused:?}"
    );
    assert_eq!(count(&node_c, "proxied login failed"), 2);

    // Without a cluster certificate, or with one from another CA, no request is even read:
    // the handshake fails.
    let handshake_refusals = count(&node_b, "cluster peer refused at the TLS handshake");
    let bare = ask_login(
        b.cluster,
        &ca.cert_path,
        None,
        &login_request("pop3", "carol"),
    );
    assert!(bare.is_err(), "{bare:?}");
    let other_ca = TestCa::generate(shared.path(), "other");
    let stranger = other_ca.node_cert("c", "127.0.0.4".parse().unwrap());
    let forged = ask_login(
        b.cluster,
        &ca.cert_path,
        Some(&stranger),
        &login_request("pop3", "carol"),
    );
    assert!(forged.is_err(), "{forged:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while count(&node_b, "cluster peer refused at the TLS handshake") < handshake_refusals + 2
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        count(&node_b, "cluster peer refused at the TLS handshake"),
        handshake_refusals + 2
    );
    assert_eq!(count(&node_b, "proxied login served"), 3);

    // A node with a certificate: a request that is not one is refused (never a panic), and
    // a user not homed on B is refused with the reason.
    let garbage = ask_login(
        b.cluster,
        &ca.cert_path,
        Some(&c.cert),
        b"\xff\xff\xff\xffjunk",
    )
    .expect("an answer");
    assert!(
        String::from_utf8_lossy(&garbage).contains("bad_request"),
        "{garbage:?}"
    );
    let not_here = ask_login(
        b.cluster,
        &ca.cert_path,
        Some(&c.cert),
        &login_request("imap", "dave"),
    )
    .expect("an answer");
    assert!(
        String::from_utf8_lossy(&not_here).contains("not_homed_here"),
        "{not_here:?}"
    );
    // And B still serves carol afterwards.
    let again = client("pop3", c.pop3, "carol", TEST_PASSWORD, &[]);
    assert_eq!(messages(&again).len(), 2);
    assert_eq!(metric(&node_b, HASHES), b_hashes);
}

/// Nodes B and C whose users file homes carol on B; the node table names `table_web` as
/// both nodes' web address.
struct CarolOnB {
    shared: std::sync::Arc<tempfile::TempDir>,
    ca: TestCa,
    b: NodeAddrs,
    c: NodeAddrs,
    node_b: Relay,
    node_c: Relay,
}

fn carol_on_b(engine: Engine, table_web: SocketAddr) -> CarolOnB {
    let shared = new_workdir();
    let ca = TestCa::generate(shared.path(), "proxy");
    let mut b = node(&ca, "b", "127.0.0.3");
    let mut c = node(&ca, "c", "127.0.0.4");
    b.table_web = table_web;
    c.table_web = table_web;
    let users = shared.path().join(USERS_FILE);
    std::fs::write(&users, format!("carol {TEST_PASSWORD_HASH} home=b\n")).unwrap();
    std::fs::set_permissions(&users, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let users = users.to_str().unwrap();
    let node_b = start(engine, &ca, &b, &[&b, &c], users, false);
    let node_c = start(engine, &ca, &c, &[&b, &c], users, false);
    CarolOnB {
        shared,
        ca,
        b,
        c,
        node_b,
        node_c,
    }
}

/// Web mail through C for carol, homed on B, while the node table names as B's (and C's)
/// web address a listener of the test's own: the login, the INBOX, a message and a sent
/// message all work, and that listener never sees a connection (the forwarded requests go
/// to B's cluster listener, inside the mutual TLS). A client with a node certificate of
/// another CA cannot ask for `relay-web`.
fn web_requests_reach_the_home_node_inside_the_cluster_tls(engine: Engine) {
    // Where an old front node would have sent B's requests in plain HTTP.
    let decoy = std::net::TcpListener::bind("127.0.0.3:0").unwrap();
    decoy.set_nonblocking(true).unwrap();
    let CarolOnB {
        shared,
        ca,
        b,
        c,
        node_b,
        node_c,
    } = carol_on_b(engine, decoy.local_addr().unwrap());
    node_b.deliver(
        &["carol@example.test"],
        &message("web-tls-0", &["read through c"]),
    );

    // Login, INBOX and the message, through C.
    let web = client("web", c.web, "carol", TEST_PASSWORD, &[]);
    assert_eq!(web.get("login_status").int(), 200, "{web:?}");
    assert!(web.get("page").str().contains("web-tls-0"), "{web:?}");
    assert_eq!(web.get("read_status").int(), 200, "{web:?}");
    assert!(web.get("read").str().contains("read through c"), "{web:?}");
    assert_eq!(web.get("logout_status").int(), 200, "{web:?}");

    // Sending through C: the compose form and its multipart post are B's.
    let spec = shared.path().join("spec.json");
    std::fs::write(
        &spec,
        r#"{"to": "carol@example.test", "subject": "web-tls-sent", "body": "sent through c"}"#,
    )
    .unwrap();
    let mut command = std::process::Command::new("python3");
    command
        .arg(common::repo_path("tests/py/web_compose_client.py"))
        .arg(format!("http://{}", c.web))
        .args(["send", "carol", TEST_PASSWORD, "-"])
        .arg(&spec);
    let output = command.output().expect("python3 web_compose_client.py");
    assert!(output.status.success(), "{output:?}");
    let sent = Json::parse(String::from_utf8_lossy(&output.stdout).trim()).unwrap();
    assert_eq!(sent.get("status").int(), 200, "{sent:?}");
    assert!(
        sent.get("form").get("fields").get("csrf").str().len() > 10,
        "{sent:?}"
    );
    // It reaches carol's mailbox on B.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let at_b = messages(&client("pop3", b.pop3, "carol", TEST_PASSWORD, &[]));
        if at_b
            .iter()
            .any(|m| String::from_utf8_lossy(m).contains("Subject: web-tls-sent"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "the sent message never arrived");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Nothing came to the table's web address, and C forwarded without a failure.
    match decoy.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("a plain HTTP connection to the table's web address: {other:?}"),
    }
    assert_eq!(count(&node_c, "proxied request failed"), 0);
    assert_eq!(count(&node_c, "relay::web: login proxied"), 2);

    // `relay-web` wants a node certificate of the cluster's CA, like the other ALPNs.
    let refusals = count(&node_b, "cluster peer refused at the TLS handshake");
    let other_ca = TestCa::generate(shared.path(), "other");
    let stranger = other_ca.node_cert("c", "127.0.0.4".parse().unwrap());
    let forged = ask(
        b.cluster,
        &ca.cert_path,
        Some(&stranger),
        b"relay-web",
        b"GET /mail HTTP/1.1\r\nHost: b\r\n\r\n",
    );
    assert!(forged.is_err(), "{forged:?}");
    let bare = ask(
        b.cluster,
        &ca.cert_path,
        None,
        b"relay-web",
        b"GET /mail HTTP/1.1\r\nHost: b\r\n\r\n",
    );
    assert!(bare.is_err(), "{bare:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while count(&node_b, "cluster peer refused at the TLS handshake") < refusals + 2 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }
    // With the cluster's certificate it is B's web server (no session cookie: to the login).
    let answer = ask(
        b.cluster,
        &ca.cert_path,
        Some(&c.cert),
        b"relay-web",
        b"GET /mail HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n",
    )
    .expect("an answer");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 303"), "{answer}");
    assert!(answer.contains("location: /login"), "{answer}");
}

/// A POP3 login through C while carol's maildrop is held by a POP3 session on B: C answers
/// `-ERR [IN-USE]` (RFC 2449), not a bare temporary failure; once B's session ends, the
/// login through C works.
fn a_maildrop_in_use_at_home_is_in_use_through_the_front(engine: Engine) {
    use std::io::{BufRead, BufReader, Write};
    let CarolOnB {
        shared: _shared,
        ca: _ca,
        b,
        c,
        node_b,
        node_c: _node_c,
    } = carol_on_b(engine, free_port("127.0.0.3"));
    node_b.deliver(&["carol@example.test"], &message("in-use-0", &["x"]));

    // A POP3 session on B holds the maildrop.
    let holder = std::net::TcpStream::connect(b.pop3).unwrap();
    holder
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut reader = BufReader::new(holder.try_clone().unwrap());
    let mut writer = holder;
    let mut line = String::new();
    let mut say = |command: &str| {
        if !command.is_empty() {
            writer.write_all(command.as_bytes()).unwrap();
        }
        line.clear();
        reader.read_line(&mut line).unwrap();
        line.clone()
    };
    assert!(say("").starts_with("+OK"));
    assert!(say("USER carol\r\n").starts_with("+OK"));
    let locked = say(&format!("PASS {TEST_PASSWORD}\r\n"));
    assert!(locked.starts_with("+OK"), "{locked}");

    let refused = client("pop3", c.pop3, "carol", TEST_PASSWORD, &[]);
    assert!(error(&refused).starts_with("-ERR [IN-USE]"), "{refused:?}");
    let logged = node_b.wait_log(
        &["proxied login refused", "maildrop is in use"],
        Duration::from_secs(10),
    );
    assert!(logged.contains("user=carol"), "{logged}");

    assert!(say("QUIT\r\n").starts_with("+OK"));
    let again = client("pop3", c.pop3, "carol", TEST_PASSWORD, &[]);
    assert_eq!(messages(&again).len(), 1, "{again:?}");
}

/// Opens `addr`'s cluster listener asking for `alpn`, presenting `cert` (or none), sends
/// `bytes` and reads until the listener closes.
fn ask(
    addr: SocketAddr,
    ca: &std::path::Path,
    cert: Option<&NodeCert>,
    alpn: &[u8],
    bytes: &[u8],
) -> std::io::Result<Vec<u8>> {
    use rustls::pki_types::ServerName;
    use std::io::{Read, Write};
    use std::sync::Arc;
    let mut config = common::cluster::peer_tls_config(ca, cert);
    config.alpn_protocols = vec![alpn.to_vec()];
    let socket = std::net::TcpStream::connect(addr)?;
    socket.set_read_timeout(Some(Duration::from_secs(20)))?;
    let name = ServerName::IpAddress(addr.ip().into());
    let connection =
        rustls::ClientConnection::new(Arc::new(config), name).map_err(std::io::Error::other)?;
    let mut stream = rustls::StreamOwned::new(connection, socket);
    stream.write_all(bytes)?;
    stream.flush()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    Ok(answer)
}

engine_tests! {
    web_requests_reach_the_home_node_inside_the_cluster_tls: web_over_cluster_tls_uring,
        web_over_cluster_tls_epoll;
    a_maildrop_in_use_at_home_is_in_use_through_the_front: in_use_uring, in_use_epoll;
    logins_on_any_node_reach_the_home_node: proxied_logins_uring, proxied_logins_epoll;
    proxied_logins_need_no_password_and_no_public_listener_at_home:
        preauthenticated_uring, preauthenticated_epoll;
}
