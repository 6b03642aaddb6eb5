//! Home nodes (issue 20): mail for a user homed on another node is relayed there over the
//! mutual-TLS cluster listener and stored there byte-exact, once, also when either node is
//! killed with SIGKILL mid-way. Real `relay serve` nodes on 127.0.0.2–127.0.0.4 with a test
//! CA (tests/common/cluster.rs), observed through SMTP, POP3 and their logs.

#[macro_use]
mod common;
mod imap_support;

use std::time::Duration;

use common::cluster::{Cluster, PeerClient, TestCa};
use common::smtp::message;
use common::{has_all, Engine, Relay};
use imap_support::{fetch_all, Py, A};

/// How long a cross-node delivery may take (retries at 300 ms included).
const HOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Users homed on each node (the test users without `home` are homed on every node), and
/// an alias with a member on each.
const USERS: &str = "\
[[local.users]]\nname = \"ada\"\npassword = \"$argon2id$v=19$m=19456,t=2,p=1$ZooLWEChpY79Z6TwJvyWWQ$/qbC5yKMqMV95V9N9XJPga/chMKFOMNMHdI7/CftPiw\"\nhome = \"a\"\n\
[[local.users]]\nname = \"bea\"\npassword = \"$argon2id$v=19$m=19456,t=2,p=1$ZooLWEChpY79Z6TwJvyWWQ$/qbC5yKMqMV95V9N9XJPga/chMKFOMNMHdI7/CftPiw\"\nhome = \"b\"\n\
[[local.users]]\nname = \"cid\"\npassword = \"$argon2id$v=19$m=19456,t=2,p=1$ZooLWEChpY79Z6TwJvyWWQ$/qbC5yKMqMV95V9N9XJPga/chMKFOMNMHdI7/CftPiw\"\nhome = \"c\"\n";

/// Retries quickly, so "B is down for a while" takes a second, not minutes.
const FAST_RETRY: &str =
    "[delivery]\nretry_intervals = [\"300ms\"]\nretry_every = \"300ms\"\nretry_jitter_percent = 0\n";

fn cluster(names: &[&str]) -> Cluster {
    Cluster::new(names, USERS)
}

fn start(cluster: &Cluster, name: &str, engine: Engine) -> Relay {
    let mut settings = cluster.settings(name, engine, FAST_RETRY);
    settings.aliases = vec![(
        "crew@example.test".into(),
        vec!["ada".into(), "bea".into(), "cid".into()],
    )];
    let relay = cluster.start(name, settings);
    relay
        .listening("cluster")
        .unwrap_or_else(|| panic!("node {name} has no cluster listener"));
    relay
}

/// Waits for node `relay`'s line "stored for a peer" naming the peer's queue id `peer_id`.
fn wait_stored_for_peer(relay: &Relay, peer_id: &str) -> String {
    let tag = format!(".{peer_id}");
    relay
        .log()
        .wait_for(HOP_TIMEOUT, |l| has_all(l, &["stored for a peer", &tag]))
        .unwrap_or_else(|| panic!("no message from queue id {peer_id} stored"))
}

/// Waits for the first node's delivery line `status="sent"` for `id`.
fn wait_sent(relay: &Relay, id: &str) -> String {
    relay
        .log()
        .wait_for(HOP_TIMEOUT, |l| {
            has_all(l, &["relay::delivery", id, "status=\"sent\""])
        })
        .unwrap_or_else(|| panic!("{id} not sent"))
}

/// The messages in `user`'s maildrop on `relay`, read over POP3.
fn mailbox(relay: &Relay, user: &str) -> Vec<Vec<u8>> {
    let mut pop3 = relay.pop3_login(user);
    let (count, _) = pop3.stat();
    let messages = (1..=count).map(|n| pop3.retr(n)).collect();
    pop3.ok("QUIT");
    messages
}

/// How many messages `user` has on `relay` itself, from its admin socket (`/mailbox`): POP3
/// logins for a user homed elsewhere are proxied to the home node, so they cannot show it.
fn stored_here(relay: &Relay, user: &str) -> i64 {
    let (status, body) = relay.admin_socket_get("/mailbox");
    assert_eq!(status, 200, "{body}");
    let rows = common::json::Json::parse(&body).expect("JSON");
    rows.array()
        .iter()
        .find(|row| row.get("user").str() == user)
        .map_or(0, |row| row.get("messages").int())
}

fn received_fields(message: &[u8]) -> usize {
    let text = String::from_utf8_lossy(message);
    let header = text.split("\r\n\r\n").next().unwrap_or("");
    header
        .lines()
        .filter(|l| l.starts_with("Received:"))
        .count()
}

fn home_node_stores_byte_exact(engine: Engine) {
    let cluster = cluster(&["a", "b", "c"]);
    let a = start(&cluster, "a", engine);
    let b = start(&cluster, "b", engine);
    let c = start(&cluster, "c", engine);

    // One transaction on A for a user local everywhere and one homed on B: A stores one
    // frame and relays it; B stores what A sent.
    let sent = message("home-1", &["for bea on b"]);
    let id = a.deliver(&["one@example.test", "bea@example.test"], &sent);
    wait_stored_for_peer(&b, &id);
    wait_sent(&a, &id);
    let on_a = mailbox(&a, "one");
    let on_b = mailbox(&b, "bea");
    assert_eq!(on_a.len(), 1);
    assert_eq!(on_b.len(), 1, "bea's mailbox on B");
    assert!(
        on_a[0] == on_b[0],
        "B stored other bytes than A:\n--- A ---\n{}\n--- B ---\n{}",
        String::from_utf8_lossy(&on_a[0]),
        String::from_utf8_lossy(&on_b[0])
    );
    assert_eq!(
        received_fields(&on_b[0]),
        1,
        "the cluster hop adds no Received field"
    );
    assert!(common::find(&on_b[0], b"marker home-1").is_some());
    // Not on A, not on C.
    assert_eq!(stored_here(&a, "bea"), 0, "bea's mail stayed on A");
    assert_eq!(stored_here(&c, "bea"), 0);
    assert_eq!(stored_here(&b, "bea"), 1);

    // An alias with a member on each node: one transaction per home node.
    let sent = message("crew-1", &["for the crew"]);
    let id = a.deliver(&["crew@example.test"], &sent);
    wait_stored_for_peer(&b, &id);
    wait_stored_for_peer(&c, &id);
    assert_eq!(mailbox(&a, "ada").len(), 1);
    assert_eq!(mailbox(&b, "bea").len(), 2);
    assert_eq!(mailbox(&c, "cid").len(), 1);
    for (node, user) in [
        (&a, "bea"),
        (&a, "cid"),
        (&b, "ada"),
        (&b, "cid"),
        (&c, "ada"),
        (&c, "bea"),
    ] {
        assert_eq!(
            stored_here(node, user),
            0,
            "{user} has mail on a node not their home"
        );
    }
    // The extra work of a cross-node message: one SMTP transaction per home node.
    let from_a = |relay: &Relay| {
        relay
            .log_lines()
            .iter()
            .filter(|l| l.contains("stored for a peer") && l.contains(&format!(".{id}")))
            .count()
    };
    assert_eq!((from_a(&b), from_a(&c)), (1, 1));
    let accepted_on_c: Vec<String> = c
        .log_lines()
        .into_iter()
        .filter(|l| has_all(l, &["relay::transaction", "accepted", "cluster=true"]))
        .collect();
    assert_eq!(accepted_on_c.len(), 1, "{accepted_on_c:?}");
    assert!(accepted_on_c[0].contains("rcpts=1"), "{}", accepted_on_c[0]);
}

engine_tests! {
    home_node_stores_byte_exact: home_node_stores_byte_exact_uring, home_node_stores_byte_exact_epoll;
}

/// The cluster listener takes only peers with a certificate from the cluster CA, and only
/// mail for users homed on its node.
#[test]
fn cluster_listener_refuses_strangers_and_other_nodes_users() {
    let cluster = cluster(&["a", "b"]);
    let b = start(&cluster, "b", Engine::Epoll);
    let addr = cluster.node("b").cluster;
    let ca = &cluster.ca.cert_path;

    // A node's certificate: greeted.
    let (mut peer, greeting) =
        PeerClient::connect(addr, ca, Some(&cluster.node("a").cert)).expect("peer a connects");
    assert!(greeting.starts_with("220 "), "{greeting}");
    let ehlo = peer.cmd("EHLO a").unwrap();
    // TLS is up before the greeting.
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    assert!(peer
        .cmd("MAIL FROM:<s@example.test> XQUEUE=a.0000000000000001")
        .unwrap()
        .starts_with("250"));
    // Homed on another node: refused for now (the directories may be changing), nothing
    // stored, so a message cannot circle between nodes; unknown: refused for good.
    let other = peer.cmd("RCPT TO:<cid@example.test>").unwrap();
    assert!(other.starts_with("450 4.2.0"), "{other}");
    let ada = peer.cmd("RCPT TO:<ada@example.test>").unwrap();
    assert!(ada.starts_with("450 4.2.0"), "{ada}");
    let nobody = peer.cmd("RCPT TO:<nobody@example.test>").unwrap();
    assert!(nobody.starts_with("550 5.1.1"), "{nobody}");
    assert!(peer
        .cmd("RCPT TO:<bea@example.test>")
        .unwrap()
        .starts_with("250"));
    assert!(peer.cmd("RSET").unwrap().starts_with("250"));
    // Unknown X parameters elsewhere: the public listener answers 555.
    let mut public = b.client();
    public.ehlo();
    let reply = public
        .cmd("MAIL FROM:<s@example.test> XQUEUE=a.0000000000000001")
        .unwrap();
    assert_eq!(reply.code, 555, "{reply}");

    // A certificate from another CA: refused at the handshake, no greeting. Each stranger
    // connects from an address of its own, which the refusal's log line names.
    let refusal = |source: &str| {
        b.wait_log(
            &[
                "cluster peer refused at the TLS handshake",
                &format!("client={source}"),
            ],
            HOP_TIMEOUT,
        )
    };
    let stranger_ca = TestCa::generate(cluster.files.path(), "stranger");
    let stranger = stranger_ca.node_cert("a", cluster.node("a").ip);
    let source = "127.0.0.51";
    let refused =
        PeerClient::connect_from(Some(source.parse().unwrap()), addr, ca, Some(&stranger));
    assert!(refused.is_err(), "a foreign certificate was greeted");
    refusal(source);
    // No certificate at all.
    let source = "127.0.0.52";
    let refused = PeerClient::connect_from(Some(source.parse().unwrap()), addr, ca, None);
    assert!(refused.is_err(), "a peer without a certificate was greeted");
    refusal(source);
    // Plain SMTP (swaks without TLS): the listener speaks TLS first; no greeting comes.
    let source = "127.0.0.53";
    let output = common::run_with_timeout(
        std::process::Command::new("swaks").args([
            "--server",
            &addr.ip().to_string(),
            "--port",
            &addr.port().to_string(),
            "--local-interface",
            source,
            "--to",
            "bea@example.test",
            "--timeout",
            "3",
        ]),
        common::COMMAND_TIMEOUT,
    );
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(
        !output.status.success(),
        "swaks delivered in plaintext: {said}"
    );
    assert!(
        !said.contains("<-  220"),
        "plain client was greeted: {said}"
    );
    refusal(source);
    assert!(mailbox(&b, "bea").is_empty());
    peer.cmd("QUIT").unwrap();
}

/// Sends `content` to node `to`'s cluster listener as node a does: `XQUEUE=tag`, each of
/// `rcpts`; the reply to the end of data (which must be 250).
fn send_as_a(cluster: &Cluster, to: &str, tag: &str, rcpts: &[&str], content: &[u8]) -> String {
    let ca = &cluster.ca.cert_path;
    let cert = &cluster.node("a").cert;
    let (mut peer, _) =
        PeerClient::connect(cluster.node(to).cluster, ca, Some(cert)).expect("connect");
    peer.cmd("EHLO a").unwrap();
    let mail = peer
        .cmd(&format!("MAIL FROM:<s@example.test> XQUEUE={tag}"))
        .unwrap();
    assert!(mail.starts_with("250"), "{mail}");
    for rcpt in rcpts {
        let reply = peer.cmd(&format!("RCPT TO:<{rcpt}>")).unwrap();
        assert!(reply.starts_with("250"), "{reply}");
    }
    let reply = peer.data(content).unwrap();
    assert!(reply.starts_with("250"), "{reply}");
    peer.cmd("QUIT").unwrap();
    reply
}

/// A resend with the same `XQUEUE` and recipient (the sender died between our 250 and its
/// record) is answered 250 with the first queue id and not stored again, also after a
/// SIGKILL of the home node.
#[test]
fn a_resent_message_is_stored_once() {
    let cluster = cluster(&["a", "b"]);
    let b = start(&cluster, "b", Engine::Epoll);
    let send = |tag: &str, rcpts: &[&str], marker: &str| -> String {
        send_as_a(&cluster, "b", tag, rcpts, &message(marker, &[]))
    };
    let first = send("a.00000000000000AA", &["bea@example.test"], "dup-1");
    let again = send("a.00000000000000AA", &["bea@example.test"], "dup-1");
    assert_eq!(
        first, again,
        "the resend is answered with the first queue id"
    );
    assert_eq!(mailbox(&b, "bea").len(), 1);
    // Durable enough: the record survives a SIGKILL of the home node.
    b.kill9();
    let b = b.restart(b.settings.clone());
    let after = send("a.00000000000000AA", &["bea@example.test"], "dup-1");
    assert_eq!(first, after);
    assert_eq!(mailbox(&b, "bea").len(), 1);
    // A resend that adds a recipient stores the message for that one only.
    send(
        "a.00000000000000AA",
        &["bea@example.test", "one@example.test"],
        "dup-1",
    );
    assert_eq!(mailbox(&b, "bea").len(), 1);
    assert_eq!(mailbox(&b, "one").len(), 1);
    // Another queue id is another message.
    send("a.00000000000000AB", &["bea@example.test"], "dup-2");
    assert_eq!(mailbox(&b, "bea").len(), 2);
}

/// The first node's sender checks filed the message in Junk (`X-Relay-Junk`, which the
/// first node removes from everything arriving from outside): the home node files it in
/// the user's Junk folder too, not INBOX; a message without the field goes to INBOX.
#[test]
fn a_message_marked_junk_by_the_first_node_is_filed_in_junk_at_home() {
    let cluster = cluster(&["a", "b"]);
    let b = start(&cluster, "b", Engine::Epoll);
    let send = |tag: &str, content: &[u8]| {
        send_as_a(&cluster, "b", tag, &["bea@example.test"], content);
    };
    let mut junk = b"Authentication-Results: a.test; dmarc=fail header.from=quar.test\r\nX-Relay-Junk: dmarc\r\n".to_vec();
    junk.extend_from_slice(&message("junk-hop", &["pay this"]));
    send("a.00000000000000C1", &junk);
    send("a.00000000000000C2", &message("inbox-hop", &["hello"]));

    let mut py = Py::spawn();
    py.login("a", b.listening("imap").expect("imap").port(), "bea");
    py.ok("a", "select", &[A::S("Junk")]);
    let in_junk: Vec<Vec<u8>> = fetch_all(&mut py, "a").into_values().map(|m| m.2).collect();
    assert_eq!(
        in_junk,
        vec![junk],
        "the marked message, byte-exact, in Junk"
    );
    py.ok("a", "select", &[A::S("INBOX")]);
    let in_inbox: Vec<Vec<u8>> = fetch_all(&mut py, "a").into_values().map(|m| m.2).collect();
    assert_eq!(in_inbox.len(), 1);
    assert!(common::find(&in_inbox[0], b"marker inbox-hop").is_some());
    assert_eq!(mailbox(&b, "bea").len(), 1, "POP3 shows INBOX only");
}

/// A verified peer's connections do not count against `connections_per_ip_max` (a front
/// node holds one per proxied session); a stranger's still do until it is refused.
#[test]
fn verified_peers_are_not_capped_per_address() {
    let cluster = cluster(&["a", "b"]);
    let mut settings = cluster.settings("b", Engine::Epoll, FAST_RETRY);
    settings.connections_per_ip_max = 2;
    let b = cluster.start("b", settings);
    let addr = cluster.node("b").cluster;
    let ca = cluster.ca.cert_path.clone();
    let cert = cluster.node("a").cert.clone();
    let peers: Vec<PeerClient> = (0..5)
        .map(|n| {
            let (mut peer, greeting) = PeerClient::connect(addr, &ca, Some(&cert))
                .unwrap_or_else(|e| panic!("peer connection {n}: {e}"));
            assert!(greeting.starts_with("220"), "connection {n}: {greeting}");
            let reply = peer.cmd("EHLO a").expect("EHLO");
            assert!(reply.starts_with("250"), "connection {n}: {reply}");
            peer
        })
        .collect();
    assert_eq!(peers.len(), 5);
    drop(peers);
    drop(b);
}

/// The home node is killed after its spool commit and before its duplicate record (the
/// debug-build seam `cluster-pause-stored` holds it there; no 250 was sent): the sender's
/// resend is recognised from the stored message itself and not stored a second time.
#[test]
fn killed_between_its_commit_and_its_record_stores_a_resend_once() {
    let cluster = cluster(&["a", "b"]);
    let b = start(&cluster, "b", Engine::Epoll);
    let addr = cluster.node("b").cluster;
    let ca = cluster.ca.cert_path.clone();
    let cert = cluster.node("a").cert.clone();
    let tag = "a.00000000000000C1";
    let send = move |ca: std::path::PathBuf, cert: common::cluster::NodeCert| {
        let (mut peer, _) = PeerClient::connect(addr, &ca, Some(&cert))?;
        peer.cmd("EHLO a")?;
        let mail = peer.cmd(&format!("MAIL FROM:<s@example.test> XQUEUE={tag}"))?;
        assert!(mail.starts_with("250"), "{mail}");
        let rcpt = peer.cmd("RCPT TO:<bea@example.test>")?;
        assert!(rcpt.starts_with("250"), "{rcpt}");
        peer.data(&message("window-1", &[]))
    };
    let pause = b.spool_dir.join("cluster-pause-stored");
    std::fs::write(&pause, b"").unwrap();
    let first = {
        let (ca, cert) = (ca.clone(), cert.clone());
        std::thread::spawn(move || send(ca, cert))
    };
    b.wait_log(
        &[
            "paused between the spool commit and the duplicate record",
            tag,
        ],
        HOP_TIMEOUT,
    );
    b.kill9();
    let answer = first.join().expect("sender thread");
    assert!(
        answer.as_ref().map_or(true, |r| !r.starts_with("250")),
        "no 250 may reach the sender before the record: {answer:?}"
    );
    std::fs::remove_file(&pause).unwrap();
    let b = b.restart(b.settings.clone());
    let again = send(ca, cert).expect("resend");
    assert!(again.starts_with("250"), "{again}");
    // The resend is recognised as a duplicate (the log line may follow the 250).
    b.wait_log(&["already stored; not stored again", tag], HOP_TIMEOUT);
    let messages = mailbox(&b, "bea");
    assert_eq!(messages.len(), 1, "exactly once in bea's mailbox");
    assert!(common::find(&messages[0], b"marker window-1").is_some());
}

/// B is down for a while: A queues and retries; A is killed after its 250 and before the
/// delivery to B: after its restart the message reaches B exactly once.
#[test]
fn first_node_killed_after_its_250_delivers_once() {
    let cluster = cluster(&["a", "b"]);
    let a = start(&cluster, "a", Engine::Epoll);
    let id = a.deliver(&["bea@example.test"], &message("crash-a", &[]));
    // B is not running: the attempts defer, again and again.
    for attempt in ["attempt=1", "attempt=2"] {
        a.wait_log(
            &["relay::delivery", &id, attempt, "status=\"deferred\""],
            HOP_TIMEOUT,
        );
    }
    a.kill9();
    let b = start(&cluster, "b", Engine::Epoll);
    let a = a.restart(a.settings.clone());
    wait_stored_for_peer(&b, &id);
    wait_sent(&a, &id);
    let messages = mailbox(&b, "bea");
    assert_eq!(messages.len(), 1);
    assert!(common::find(&messages[0], b"marker crash-a").is_some());
    // Once recorded as sent on A, nothing more comes.
    a.stop();
    let a = a.restart(a.settings.clone());
    a.wait_log(&["relay ready"], HOP_TIMEOUT);
    assert_eq!(mailbox(&b, "bea").len(), 1);
}

/// B is killed while A delivers to it (a large message, killed once A's connection is up):
/// A retries after B's restart and B holds the message exactly once.
#[test]
fn home_node_killed_during_delivery_gets_it_once() {
    let cluster = cluster(&["a", "b"]);
    let mut settings_b = cluster.settings("b", Engine::Epoll, FAST_RETRY);
    settings_b.log_level = "debug";
    let b = cluster.start("b", settings_b.clone());
    let a = start(&cluster, "a", Engine::Epoll);
    let lines: Vec<String> = (0..40_000)
        .map(|i| format!("line {i:06} of a large message, so the transfer takes a moment"))
        .collect();
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let id = a.deliver(&["bea@example.test"], &message("crash-b", &lines));
    b.wait_log(&["cluster peer authenticated"], HOP_TIMEOUT);
    b.kill9();
    a.wait_log(&["relay::delivery", &id, "attempt=1"], HOP_TIMEOUT);
    let b = b.restart(settings_b);
    wait_sent(&a, &id);
    let messages = mailbox(&b, "bea");
    assert_eq!(messages.len(), 1, "exactly once in bea's mailbox");
    assert!(common::find(&messages[0], b"line 039999").is_some());
}
