//! The admin endpoint against the real relay:
//! the 0600 socket the CLI uses by default, the opt-in TCP listener that answers only to a
//! loopback `Host`, wants a bearer token for everything but `/metrics` and a JSON content
//! type for changes, two instances side by side, and a queue listing that does not re-read
//! the spool. HTTP is spoken by curl (an independent client), over TCP and `--unix-socket`.

#[macro_use]
mod common;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::{describe, relay_cmd, Engine, Relay, Settings};

const TOKEN: &str = "s3cr3t-admin-token-4f9a2c1e7b";

fn message(subject: &str, body_len: usize) -> Vec<u8> {
    let mut text =
        format!("From: sender@example.test\r\nTo: x@remote.test\r\nSubject: {subject}\r\n\r\n")
            .into_bytes();
    while text.len() < body_len {
        text.extend_from_slice(b"a line of the body to make the message larger\r\n");
    }
    text
}

/// `curl ARGS`: (HTTP status, body).
fn curl(args: &[&str]) -> (u16, String) {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "30", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("run curl");
    assert!(
        output.status.success(),
        "curl {args:?}: {}",
        describe(&output)
    );
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').expect("status line");
    (status.trim().parse().expect("status"), body.to_string())
}

fn tcp_url(relay: &Relay, path: &str) -> String {
    format!(
        "http://{}{path}",
        relay
            .admin_addr
            .expect("the relay has an admin TCP listener")
    )
}

/// `curl --unix-socket` to the relay's admin socket.
fn socket_curl(relay: &Relay, args: &[&str]) -> (u16, String) {
    let socket = relay.admin_socket.to_str().expect("utf-8 path").to_string();
    let mut all = vec!["--unix-socket", socket.as_str()];
    all.extend_from_slice(args);
    curl(&all)
}

/// A message to a remote domain (deferred: the default route is a closed port); its id.
fn queue_one(relay: &Relay, subject: &str) -> String {
    relay.deliver(&["x@remote.test"], &message(subject, 200))
}

fn shown_over_socket(relay: &Relay, id: &str) -> (u16, String) {
    socket_curl(relay, &[&format!("http://localhost/queue/show?id={id}")])
}

/// Without a token file the TCP listener serves `/metrics` and nothing else, and only to a
/// loopback `Host`: the cross-site form POST and the DNS-rebinding request of the issue are
/// refused, and nothing is removed.
fn tcp_listener_without_token(engine: Engine) {
    let relay = Relay::start(Settings::new(engine));
    let id = queue_one(&relay, "kept");
    // A browser's cross-site form, or a page on a rebound name: foreign Host, form body.
    let (status, _) = curl(&[
        "-X",
        "POST",
        "-H",
        "Host: evil.example",
        "-H",
        "Content-Type: application/x-www-form-urlencoded",
        "--data",
        &format!("id={id}"),
        &tcp_url(&relay, &format!("/queue/delete?id={id}")),
    ]);
    assert_eq!(status, 421, "POST with Host: evil.example");
    // The same with a loopback Host but no token.
    for content_type in ["application/x-www-form-urlencoded", "application/json"] {
        let (status, _) = curl(&[
            "-X",
            "POST",
            "-H",
            &format!("Content-Type: {content_type}"),
            "--data",
            &format!("{{\"id\": \"{id}\"}}"),
            &tcp_url(&relay, &format!("/queue/delete?id={id}")),
        ]);
        assert_eq!(status, 403, "POST {content_type} without a token");
    }
    // Reading the queue (headers of other users' mail) needs the token too.
    let (status, body) = curl(&[&tcp_url(&relay, &format!("/queue/show?id={id}"))]);
    assert_eq!(status, 403);
    assert!(!body.contains("Subject"), "{body}");
    assert_eq!(curl(&[&tcp_url(&relay, "/stat")]).0, 403);
    // Prometheus scrapes as before.
    let (status, body) = curl(&[&tcp_url(&relay, "/metrics")]);
    assert_eq!(status, 200);
    assert!(body.contains("relay_smtp_transactions_total"), "{body}");
    let (status, _) = curl(&["-H", "Host: evil.example", &tcp_url(&relay, "/metrics")]);
    assert_eq!(status, 421, "metrics over a rebound name");
    // Still queued.
    let (status, body) = shown_over_socket(&relay, &id);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Subject: kept"), "{body}");
    relay.stop();
}

engine_tests! {
    tcp_listener_without_token: tcp_listener_without_token_uring, tcp_listener_without_token_epoll;
}

/// With `admin.token_file` the TCP listener serves every route to a request with the token,
/// a loopback Host and (for a change) a JSON body; the token never reaches the log.
#[test]
fn tcp_listener_with_a_token_file() {
    let dir = common::new_workdir();
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("write token");
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let mut settings = Settings::new(Engine::Epoll);
    settings.admin_toml = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = {:?}\n",
        token_file.to_str().expect("utf-8")
    );
    let relay = Relay::start_in(dir.clone(), settings.clone());
    let id = queue_one(&relay, "guarded");
    let bearer = format!("Authorization: Bearer {TOKEN}");
    let show = tcp_url(&relay, &format!("/queue/show?id={id}"));
    assert_eq!(curl(&[&show]).0, 401);
    let wrong = format!("Authorization: Bearer {}x", &TOKEN[..TOKEN.len() - 1]);
    assert_eq!(curl(&["-H", &wrong, &show]).0, 401);
    let (status, body) = curl(&["-H", &bearer, &show]);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Subject: guarded"), "{body}");
    let delete = tcp_url(&relay, "/queue/delete");
    let json_body = format!("{{\"id\": \"{id}\"}}");
    // A form POST with the token (a page cannot know it, but the rule is the content type).
    let (status, _) = curl(&[
        "-X",
        "POST",
        "-H",
        &bearer,
        "--data",
        &format!("id={id}"),
        &delete,
    ]);
    assert_eq!(status, 415, "form-encoded POST");
    let (status, _) = curl(&[
        "-X",
        "POST",
        "-H",
        &bearer,
        "-H",
        "Host: evil.example",
        "-H",
        "Content-Type: application/json",
        "--data",
        &json_body,
        &delete,
    ]);
    assert_eq!(status, 421, "foreign Host with the token");
    let (status, body) = curl(&[
        "-X",
        "POST",
        "-H",
        &bearer,
        "-H",
        "Content-Type: application/json",
        "--data",
        &json_body,
        &delete,
    ]);
    assert_eq!((status, body.as_str()), (200, "{\"removed\":1}"));
    relay.stop();
    assert!(
        relay.log().lines().iter().all(|l| !l.contains(TOKEN)),
        "the token is in the log"
    );

    // A token file others can read: the relay refuses to start, naming the key.
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let Err(failure) = Relay::try_start_in(dir, settings) else {
        panic!("the relay started with a token file others can read");
    };
    let text = failure.lines.join("\n");
    assert!(text.contains("admin.token_file"), "{text}");
    assert!(!text.contains(TOKEN), "{text}");
}

/// The default: a socket only the relay's user can use, which `relay stat` and `relay
/// queue` find through the config; a change over it still needs a JSON content type.
#[test]
fn the_admin_socket_is_0600_and_the_cli_uses_it() {
    let mut settings = Settings::new(Engine::Uring);
    settings.admin_toml = String::new();
    let relay = Relay::start(settings);
    assert_eq!(relay.admin_addr, None, "no TCP listener by default");
    let meta = std::fs::symlink_metadata(&relay.admin_socket).expect("the socket exists");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let id = queue_one(&relay, "via-socket");
    let config = relay.config_path.to_str().expect("utf-8").to_string();
    let run = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--config", &config]);
        let output = relay_cmd(all);
        assert!(output.status.success(), "{args:?}: {}", describe(&output));
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let stat = run(&["stat"]);
    assert!(stat.contains("2 core(s)"), "{stat}");
    let list = run(&["queue", "list"]);
    assert!(
        list.contains(&id) && list.contains("x@remote.test"),
        "{list}"
    );
    let shown = run(&["queue", "show", &id]);
    assert!(shown.contains("Subject: via-socket"), "{shown}");
    let (status, _) = socket_curl(
        &relay,
        &[
            "-X",
            "POST",
            "--data",
            &format!("id={id}"),
            "http://localhost/queue/delete",
        ],
    );
    assert_eq!(status, 415, "a form POST over the socket");
    let deleted = run(&["queue", "delete", &id]);
    assert!(deleted.contains("1 queued entries removed"), "{deleted}");
    let list = run(&["queue", "list"]);
    assert!(!list.contains(&id), "{list}");
    let socket = relay.admin_socket.clone();
    relay.stop();
    assert!(!socket.exists(), "the socket is removed at stop");
}

/// Two relays with different spools and the default `[admin]` start side by side (each has
/// its own socket); a TCP port that is taken names the key to change.
#[test]
fn two_instances_with_the_default_admin_config_start_side_by_side() {
    let mut settings = Settings::new(Engine::Epoll);
    settings.admin_toml = String::new();
    let first = Relay::start(settings.clone());
    let second = Relay::start(settings.clone());
    assert_ne!(first.admin_socket, second.admin_socket);
    for relay in [&first, &second] {
        let output = relay_cmd([
            "stat",
            "--config",
            relay.config_path.to_str().expect("utf-8"),
        ]);
        assert!(output.status.success(), "{}", describe(&output));
    }
    // Pointed at a live relay's socket, a third one refuses to start rather than steal it.
    settings.admin_toml = format!("[admin]\nsocket = {:?}\n", first.admin_socket);
    let Err(failure) = Relay::try_start_in(common::new_workdir(), settings.clone()) else {
        panic!("the relay took over a live relay's admin socket");
    };
    let text = failure.lines.join("\n");
    assert!(
        text.contains("admin.socket") && text.contains("another relay answers"),
        "{text}"
    );
    let output = relay_cmd([
        "stat",
        "--config",
        first.config_path.to_str().expect("utf-8"),
    ]);
    assert!(output.status.success(), "{}", describe(&output));
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr");
    settings.admin_toml = format!("[admin]\nlisten = \"{port}\"\n");
    let Err(failure) = Relay::try_start_in(common::new_workdir(), settings) else {
        panic!("the relay started on a taken admin port");
    };
    let text = failure.lines.join("\n");
    assert!(
        text.contains("admin.listen") && text.contains(&port.to_string()),
        "{text}"
    );
    first.stop();
    second.stop();
}

/// The read system calls' byte count of process `pid` (`rchar`: files and sockets alike).
fn read_bytes(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).expect("read /proc/PID/io");
    io.lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .and_then(|n| n.trim().parse().ok())
        .expect("rchar")
}

fn spool_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for shard in std::fs::read_dir(dir).expect("spool").flatten() {
        if shard.path().is_dir() {
            for seg in std::fs::read_dir(shard.path()).expect("shard").flatten() {
                total += seg.metadata().map_or(0, |m| m.len());
            }
        }
    }
    total
}

/// `/queue` and `/queue/show` are served from memory: twenty requests read less than the
/// spool once (before, every request read every segment).
#[test]
fn queue_requests_do_not_reread_the_spool() {
    let mut settings = Settings::new(Engine::Epoll);
    settings.admin_toml = String::new();
    settings.segment_size = Some("1MiB".into());
    let relay = Relay::start(settings);
    let ids: Vec<String> = (0..24)
        .map(|n| relay.deliver(&["x@remote.test"], &message(&format!("big-{n}"), 200_000)))
        .collect();
    let spool = spool_bytes(&relay.spool_dir);
    assert!(spool > 4_000_000, "spool of {spool} bytes");
    // The first request builds the view (one pass over the log).
    let (status, list) = socket_curl(&relay, &["http://localhost/queue?limit=1000"]);
    assert_eq!(status, 200);
    assert!(ids.iter().all(|id| list.contains(id.as_str())), "{list}");
    let before = read_bytes(relay.pid());
    for id in ids.iter().take(10) {
        let (status, list) = socket_curl(&relay, &["http://localhost/queue?limit=1000"]);
        assert_eq!(status, 200);
        assert!(list.contains(id.as_str()));
        let (status, _) = socket_curl(&relay, &[&format!("http://localhost/queue/show?id={id}")]);
        assert_eq!(status, 200);
    }
    let read = read_bytes(relay.pid()) - before;
    eprintln!("20 admin requests read {read} bytes; the spool holds {spool} bytes");
    // Ten `show`s read their own message (about 2 MB together); ten listings nothing.
    assert!(
        read < spool,
        "20 requests read {read} bytes; the spool is {spool} bytes"
    );
    relay.stop();
}

/// A removal is answered once it is written: a listing read right after the answer never
/// shows a message the operator was told is gone (and a crash after the answer cannot bring
/// it back). Each round queues a message, deletes it over the socket and lists at once.
#[test]
fn a_deleted_message_is_gone_from_the_listing_when_the_delete_is_answered() {
    let mut settings = Settings::new(Engine::Uring);
    settings.admin_toml = String::new();
    let relay = Relay::start(settings);
    let timeout = std::time::Duration::from_secs(30);
    for round in 0..10 {
        let id = queue_one(&relay, &format!("round {round}"));
        // A message out for an attempt is not removed ("removed": 0): ask again.
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let (status, body) = relay::admin::client::request_with_body(
                relay.admin_socket.clone(),
                "POST",
                &format!("/queue/delete?id={id}"),
                b"{}",
                timeout,
            )
            .expect("POST /queue/delete");
            let body = String::from_utf8_lossy(&body);
            assert_eq!(status, 200, "{body}");
            if body.contains("\"removed\":1") {
                break;
            }
            assert!(
                body.contains("\"removed\":0") && std::time::Instant::now() < deadline,
                "round {round}: {body}"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let (status, list) = relay.admin_socket_get("/queue");
        assert_eq!(status, 200, "{list}");
        assert!(
            !list.contains(&id),
            "round {round}: {id} is listed after its removal was answered: {list}"
        );
    }
}
