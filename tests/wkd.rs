//! The Web Key Directory on the web listener against GnuPG: alice's gpg-made key,
//! registered with `relay user key set` and picked up on SIGHUP, is fetched (with curl) at
//! the URL `gpg-wks-client --print-wkd-url` names, in the advanced and the direct form, and
//! is the very key `gpg --export` gives; a fresh gpg imports it. Everything else (no key,
//! unknown user, an alias the key does not name, a domain not ours) is 404; each local
//! domain's policy file is there.

#[macro_use]
mod common;
mod gpg;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::{describe, relay_cmd, run_with_timeout, Engine, Relay, Settings, COMMAND_TIMEOUT};
use gpg::Gpg;

engine_tests! {
    wkd_serves_registered_keys_to_gnupg: wkd_uring, wkd_epoll;
}

fn web_settings(engine: Engine) -> Settings {
    let mut settings = Settings::new(engine);
    settings
        .extra_toml
        .push_str("[web]\nlisten = [\"127.0.0.1:0\"]\n");
    // An alias of alice's that her key does not name.
    settings
        .aliases
        .push(("al@example.test".into(), vec!["alice".into()]));
    settings
}

fn web_addr(relay: &Relay) -> SocketAddr {
    relay
        .listening("http")
        .expect("a `listening protocol=\"http\"` line")
}

/// One answer from the web listener: status, header lines (lower-case names), body.
struct Fetched {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Fetched {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// GET `path` from the relay's web listener as `host` (the `Host` header, with the port
/// as a browser sends it).
fn fetch(relay: &Relay, host: &str, path: &str) -> Fetched {
    let addr = web_addr(relay);
    let dir = relay.workdir();
    let body_path = dir.path().join("curl-body");
    let head_path = dir.path().join("curl-head");
    let _ = std::fs::remove_file(&body_path);
    // `--resolve` sends the name as given (and `Host: name:port`), so the request is the
    // one a client of that domain makes, on loopback.
    let output = run_with_timeout(
        Command::new("curl")
            .args(["--silent", "--show-error", "--noproxy", "*"])
            .arg("--resolve")
            .arg(format!("{host}:{}:{}", addr.port(), addr.ip()))
            .arg("--dump-header")
            .arg(&head_path)
            .arg("--output")
            .arg(&body_path)
            .args(["--write-out", "%{http_code}"])
            .arg(format!("http://{host}:{}{path}", addr.port())),
        COMMAND_TIMEOUT,
    );
    assert!(
        output.status.success(),
        "curl {path}: {}",
        describe(&output)
    );
    let status = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .expect("curl's status code");
    let head = std::fs::read_to_string(&head_path).expect("curl's header dump");
    let headers = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Fetched {
        status,
        headers,
        body: std::fs::read(&body_path).unwrap_or_default(),
    }
}

/// The advanced URL gpg-wks-client prints for `address`, split into host and path (with
/// its `?l=`), and the direct form's host and path made from it (§3.1).
fn wkd_urls(address: &str) -> [(String, String); 2] {
    let output = run_with_timeout(
        Command::new(gpg::wks_client()).args(["--print-wkd-url", address]),
        COMMAND_TIMEOUT,
    );
    assert!(output.status.success(), "{}", describe(&output));
    let url = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let rest = url.strip_prefix("https://").expect("an https URL");
    let (host, path) = rest.split_once('/').expect("a path");
    let path = format!("/{path}");
    let domain = host
        .strip_prefix("openpgpkey.")
        .expect("the advanced method's host");
    let prefix = format!("/.well-known/openpgpkey/{domain}/hu/");
    let direct_path = path
        .strip_prefix(&prefix)
        .map(|tail| format!("/.well-known/openpgpkey/hu/{tail}"))
        .unwrap_or_else(|| panic!("{url} is not the advanced form"));
    [(host.to_string(), path), (domain.to_string(), direct_path)]
}

fn assert_missing(relay: &Relay, host: &str, path: &str) {
    let got = fetch(relay, host, path);
    assert_eq!(got.status, 404, "{host}{path}");
}

fn wkd_serves_registered_keys_to_gnupg(engine: Engine) {
    let relay = Relay::start(web_settings(engine));
    let [advanced, direct] = wkd_urls("alice@example.test");

    // No key yet.
    assert_missing(&relay, &advanced.0, &advanced.1);
    assert_missing(&relay, &direct.0, &direct.1);

    let alice = Gpg::new();
    let fingerprint = alice.generate("Alice <alice@example.test>");
    let file = alice.export_file("alice@example.test");
    let set = relay_cmd([
        "user".as_ref(),
        "key".as_ref(),
        "set".as_ref(),
        "alice".as_ref(),
        "--openpgp".as_ref(),
        file.as_os_str(),
        "--config".as_ref(),
        relay.config_path.as_os_str(),
    ]);
    assert!(set.status.success(), "{}", describe(&set));
    relay.sighup();
    relay.wait_log(&["users' keys reloaded"], Duration::from_secs(20));

    let exported = alice.export("alice@example.test");
    for (host, path) in [&advanced, &direct] {
        let got = fetch(&relay, host, path);
        assert_eq!(got.status, 200, "{host}{path}");
        assert_eq!(
            got.header("content-type"),
            Some("application/octet-stream"),
            "{host}{path}"
        );
        assert_eq!(got.header("access-control-allow-origin"), Some("*"));
        assert_eq!(got.header("set-cookie"), None, "no cookie on {path}");
        assert!(
            got.body == exported,
            "{host}{path}: {} bytes served, {} exported",
            got.body.len(),
            exported.len()
        );
        // A fresh gpg reads it as alice's key.
        let reader = Gpg::new();
        reader.import(&got.body);
        assert_eq!(
            reader.fingerprints("alice@example.test"),
            [fingerprint.as_str()]
        );
    }
    // Without `l=` (it is informational) and with the host's case changed.
    let bare = direct.1.split('?').next().unwrap_or_default().to_string();
    assert_eq!(fetch(&relay, "EXAMPLE.test", &bare).status, 200);

    // bob has no key; nobody is no user; al reaches alice but her key does not name it.
    for address in ["bob@example.test", "nobody@example.test", "al@example.test"] {
        let [advanced, direct] = wkd_urls(address);
        assert_missing(&relay, &advanced.0, &advanced.1);
        assert_missing(&relay, &direct.0, &direct.1);
    }
    // alice's local part at a domain that is not ours, both ways.
    let [advanced, direct] = wkd_urls("alice@elsewhere.test");
    assert_missing(&relay, &advanced.0, &advanced.1);
    assert_missing(&relay, &direct.0, &direct.1);
    // Not a hash.
    assert_missing(&relay, "example.test", "/.well-known/openpgpkey/hu/alice");

    // The policy files of local domains, empty; none for others.
    for (host, path) in [
        ("example.test", "/.well-known/openpgpkey/policy"),
        (
            "openpgpkey.example.test",
            "/.well-known/openpgpkey/example.test/policy",
        ),
        ("localhost", "/.well-known/openpgpkey/policy"),
    ] {
        let got = fetch(&relay, host, path);
        assert_eq!(got.status, 200, "{host}{path}");
        assert!(got.body.is_empty(), "{host}{path}");
        assert_eq!(got.header("set-cookie"), None);
    }
    assert_missing(&relay, "elsewhere.test", "/.well-known/openpgpkey/policy");
    assert_missing(
        &relay,
        "openpgpkey.elsewhere.test",
        "/.well-known/openpgpkey/elsewhere.test/policy",
    );
    relay.stop();
}
