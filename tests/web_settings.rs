//! The web mail's settings page against the real server, with curl and a cookie jar: log
//! in through the form, upload alice's gpg-made key (then the key file is on disk, `relay
//! user key show` lists it, and the running relay serves it over WKD at once), upload
//! garbage (the refusal is shown, nothing stored), turn encryption off and back to the
//! default (the choice file follows), remove the key; the same for an openssl-made S/MIME
//! certificate; every form without its CSRF token
//! is refused and changes nothing; with `[encryption] required` "off" is refused.

#[macro_use]
mod common;
mod gpg;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{
    describe, relay_cmd, run_with_timeout, Engine, Relay, Settings, COMMAND_TIMEOUT, TEST_PASSWORD,
};
use gpg::Gpg;

engine_tests! {
    keys_and_the_encryption_choice_from_the_settings_page: settings_uring, settings_epoll;
    off_is_refused_where_encryption_is_required: required_uring, required_epoll;
}

/// alice's hashed local part (`gpg-wks-client --print-wkd-url alice@example.test`).
const ALICE_HASH: &str = "kei1q4tipxxu1yj79k9kfukdhfy631xe";

fn web_settings(engine: Engine, extra: &str) -> Settings {
    let mut settings = Settings::new(engine);
    settings
        .extra_toml
        .push_str("[web]\nlisten = [\"127.0.0.1:0\"]\n");
    settings.extra_toml.push_str(extra);
    settings
}

/// curl with a cookie jar in the relay's work directory: a browser stand-in.
struct Browser {
    base: String,
    jar: PathBuf,
    body: PathBuf,
}

struct Page {
    status: u16,
    body: String,
}

impl Browser {
    fn new(relay: &Relay) -> Browser {
        let addr = relay.listening("http").expect("an http listener");
        let dir = relay.workdir();
        Browser {
            base: format!("http://{addr}"),
            jar: dir.path().join("cookies.txt"),
            body: dir.path().join("page.html"),
        }
    }

    fn curl(&self, path: &str, args: &[&str]) -> Page {
        let _ = std::fs::remove_file(&self.body);
        let output = run_with_timeout(
            Command::new("curl")
                .args(["--silent", "--show-error", "--noproxy", "*"])
                .arg("--cookie")
                .arg(&self.jar)
                .arg("--cookie-jar")
                .arg(&self.jar)
                .arg("--output")
                .arg(&self.body)
                .args(["--write-out", "%{http_code}"])
                .args(args)
                .arg(format!("{}{path}", self.base)),
            COMMAND_TIMEOUT,
        );
        assert!(
            output.status.success(),
            "curl {path}: {}",
            describe(&output)
        );
        Page {
            status: String::from_utf8_lossy(&output.stdout)
                .trim()
                .parse()
                .expect("a status code"),
            body: std::fs::read_to_string(&self.body).unwrap_or_default(),
        }
    }

    fn get(&self, path: &str) -> Page {
        self.curl(path, &[])
    }

    /// A url-encoded POST of `fields`.
    fn post(&self, path: &str, fields: &[(&str, &str)]) -> Page {
        let pairs: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut args = Vec::new();
        for pair in &pairs {
            args.push("--data-urlencode");
            args.push(pair.as_str());
        }
        self.curl(path, &args)
    }

    /// A multipart POST: the token (when given) and the file as `key`.
    fn upload(&self, csrf: Option<&str>, file: &Path) -> Page {
        let token = csrf.map(|c| format!("csrf={c}"));
        let key = format!("key=@{}", file.display());
        let mut args = Vec::new();
        if let Some(token) = &token {
            args.extend(["--form-string", token.as_str()]);
        }
        args.extend(["--form", key.as_str()]);
        self.curl("/settings/key", &args)
    }

    fn login(&self, user: &str) {
        let form = self.get("/login");
        assert_eq!(form.status, 200);
        let token = csrf_of(&form.body);
        let done = self.post(
            "/login",
            &[
                ("user", user),
                ("password", TEST_PASSWORD),
                ("csrf", &token),
            ],
        );
        assert_eq!(done.status, 303, "{}", done.body);
    }

    /// The settings page, checked, and its CSRF token.
    fn settings(&self) -> (Page, String) {
        let page = self.get("/settings");
        assert_eq!(page.status, 200, "{}", page.body);
        let token = csrf_of(&page.body);
        (page, token)
    }
}

/// The first form's CSRF token on a page.
fn csrf_of(page: &str) -> String {
    let start = page
        .find("name=\"csrf\" value=\"")
        .unwrap_or_else(|| panic!("no CSRF field in {page}"))
        + "name=\"csrf\" value=\"".len();
    page[start..]
        .split('"')
        .next()
        .unwrap_or_default()
        .to_string()
}

fn key_show(relay: &Relay, user: &str) -> String {
    let shown = relay_cmd([
        "user".as_ref(),
        "key".as_ref(),
        "show".as_ref(),
        user.as_ref(),
        "--config".as_ref(),
        relay.config_path.as_os_str(),
    ]);
    assert!(shown.status.success(), "{}", describe(&shown));
    String::from_utf8_lossy(&shown.stdout).into_owned()
}

fn keys_dir(relay: &Relay) -> PathBuf {
    relay.spool_dir.join("keys")
}

fn wkd_status(relay: &Relay) -> u16 {
    let addr = relay.listening("http").expect("an http listener");
    let output = run_with_timeout(
        Command::new("curl")
            .args(["--silent", "--noproxy", "*", "--output", "/dev/null"])
            .args([
                "--write-out",
                "%{http_code}",
                "--header",
                "Host: example.test",
            ])
            .arg(format!(
                "http://{addr}/.well-known/openpgpkey/hu/{ALICE_HASH}"
            )),
        COMMAND_TIMEOUT,
    );
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

fn keys_and_the_encryption_choice_from_the_settings_page(engine: Engine) {
    let relay = Relay::start(web_settings(engine, ""));
    let browser = Browser::new(&relay);
    // Not logged in: to the login page.
    assert_eq!(browser.get("/settings").status, 303);
    browser.login("alice");
    let (page, token) = browser.settings();
    assert!(page.body.contains("<h1>Settings</h1>"), "{}", page.body);
    assert!(
        page.body.contains("href=\"/settings\""),
        "the chrome links it"
    );
    assert!(page.body.contains("No OpenPGP key is registered."));
    assert!(page.body.contains("you have no key registered"));

    let alice = Gpg::new();
    let fingerprint = alice.generate("Alice <alice@example.test>");
    let key_file = alice.export_file("alice@example.test");
    let garbage = relay.workdir().path().join("garbage.asc");
    std::fs::write(&garbage, b"<b>not a key</b>\n").unwrap();
    let stored = keys_dir(&relay).join("alice.openpgp.asc");

    // Garbage: the reason is shown (escaped), nothing is stored.
    let refused = browser.upload(Some(&token), &garbage);
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert!(
        refused
            .body
            .contains("role=\"alert\">not an OpenPGP public key"),
        "{}",
        refused.body
    );
    assert!(!stored.exists());

    // The right key without the token: refused, nothing stored.
    let forged = browser.upload(None, &key_file);
    assert_eq!(forged.status, 403);
    let forged = browser.upload(Some("0000"), &key_file);
    assert_eq!(forged.status, 403);
    assert!(!stored.exists());
    assert_eq!(wkd_status(&relay), 404);

    // Registered: on disk, listed by the CLI, used by the running relay at once.
    let done = browser.upload(Some(&token), &key_file);
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(
        done.body.contains("Your OpenPGP key is registered."),
        "{}",
        done.body
    );
    assert!(done.body.contains(&fingerprint), "{}", done.body);
    assert!(done.body.contains("alice@example.test"));
    assert!(
        done.body.contains("encrypted to your OpenPGP key"),
        "{}",
        done.body
    );
    assert!(stored.exists());
    let shown = key_show(&relay, "alice");
    assert!(shown.contains(&fingerprint), "{shown}");
    assert_eq!(wkd_status(&relay), 200);

    // Encryption off (without the token first: refused, nothing written).
    let choice = keys_dir(&relay).join("alice.encrypt");
    let forged = browser.post("/settings/encrypt", &[("choice", "off")]);
    assert_eq!(forged.status, 403);
    assert!(!choice.exists());
    let off = browser.post("/settings/encrypt", &[("csrf", &token), ("choice", "off")]);
    assert_eq!(off.status, 200, "{}", off.body);
    assert!(off.body.contains("Encryption of your stored mail is off."));
    assert!(off.body.contains("you turned it off"), "{}", off.body);
    assert_eq!(std::fs::read_to_string(&choice).unwrap().trim(), "off");
    assert!(key_show(&relay, "alice").contains("\"choice\":\"off\""));
    // Back to the server's default: the file goes.
    let back = browser.post(
        "/settings/encrypt",
        &[("csrf", &token), ("choice", "default")],
    );
    assert_eq!(back.status, 200, "{}", back.body);
    assert!(!choice.exists());

    // Removed (without the token first: refused, still there).
    let forged = browser.post("/settings/remove", &[("kind", "openpgp")]);
    assert_eq!(forged.status, 403);
    assert!(stored.exists());
    let removed = browser.post("/settings/remove", &[("csrf", &token), ("kind", "openpgp")]);
    assert_eq!(removed.status, 200, "{}", removed.body);
    assert!(removed.body.contains("Your OpenPGP key is removed."));
    assert!(!stored.exists());
    assert!(!key_show(&relay, "alice").contains(&fingerprint));
    assert_eq!(wkd_status(&relay), 404);

    // An S/MIME certificate (openssl-made, for alice's address): shown with its expiry,
    // stored, listed, removed.
    let cert = smime_cert(&relay.workdir().path().join("smime"));
    let done = browser.upload(Some(&token), &cert);
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(
        done.body.contains("Your S/MIME certificate is registered."),
        "{}",
        done.body
    );
    assert!(done.body.contains("Valid until"), "{}", done.body);
    assert!(
        done.body.contains("encrypted to your S/MIME certificate"),
        "{}",
        done.body
    );
    let stored = keys_dir(&relay).join("alice.smime.pem");
    assert!(stored.exists());
    assert!(key_show(&relay, "alice").contains("\"not_after\""));
    let removed = browser.post("/settings/remove", &[("csrf", &token), ("kind", "smime")]);
    assert_eq!(removed.status, 200, "{}", removed.body);
    assert!(removed.body.contains("Your S/MIME certificate is removed."));
    assert!(!stored.exists());
    relay.stop();
}

/// A self-signed e-mail protection certificate for alice@example.test (RSA: sealing does
/// RSA key transport), PEM; its path.
fn smime_cert(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let output = run_with_timeout(
        Command::new("openssl")
            .current_dir(dir)
            .args(["req", "-x509", "-nodes", "-newkey", "rsa:2048"])
            .args(["-keyout", "alice.key", "-out", "alice.pem", "-days", "365"])
            .args(["-subj", "/CN=Alice"])
            .args(["-addext", "subjectAltName=email:alice@example.test"])
            .args(["-addext", "extendedKeyUsage=emailProtection"])
            .args([
                "-addext",
                "keyUsage=critical,digitalSignature,keyEncipherment",
            ])
            .args(["-addext", "basicConstraints=CA:FALSE"]),
        COMMAND_TIMEOUT,
    );
    assert!(output.status.success(), "openssl: {}", describe(&output));
    dir.join("alice.pem")
}

fn off_is_refused_where_encryption_is_required(engine: Engine) {
    let relay = Relay::start(web_settings(engine, "[encryption]\nrequired = true\n"));
    let browser = Browser::new(&relay);
    browser.login("bob");
    let (page, token) = browser.settings();
    assert!(
        page.body.contains("value=\"off\" disabled"),
        "{}",
        page.body
    );
    let refused = browser.post("/settings/encrypt", &[("csrf", &token), ("choice", "off")]);
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert!(
        refused
            .body
            .contains("encryption is required on this server"),
        "{}",
        refused.body
    );
    assert!(!keys_dir(&relay).join("bob.encrypt").exists());
    relay.stop();
}
