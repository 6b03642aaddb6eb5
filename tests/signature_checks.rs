//! Signature checks of arriving mail against the real server, with real tools: S/MIME
//! messages made by `openssl cms -sign` under a test CA (`[smime] ca_file`) and PGP/MIME
//! messages signed by `gpg`, sent by Python's smtplib to a local user. The stored message's
//! `Authentication-Results` field carries `smime=` (RFC 7281) or the OpenPGP method; the web
//! mail's read page shows the verdict next to the sender. OpenPGP keys come from the relay's
//! own users (`relay user key set`) or from a Web Key Directory on loopback (a small HTTPS
//! server with a test CA, `openpgp.wkd_resolve` pointing the WKD hosts at it).

#[macro_use]
mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{relay_cmd, repo_path, split_received, Engine, Relay, Settings, TEST_PASSWORD};

engine_tests! {
    smime_signatures_are_checked_against_the_trust_store: smime_uring, smime_epoll;
    openpgp_signatures_from_local_and_unknown_signers: openpgp_uring, openpgp_epoll;
    openpgp_keys_come_from_the_senders_wkd: wkd_uring, wkd_epoll;
    another_relays_wkd_serves_its_users_keys: relay_wkd_uring, relay_wkd_epoll;
}

fn run(command: &mut Command) -> Vec<u8> {
    let output = command.output().expect("run a tool");
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

fn openssl(dir: &Path, args: &[&str]) {
    run(Command::new("openssl").current_dir(dir).args(args));
}

/// A CA (`NAME-ca.pem`, `NAME-ca.key`) in `dir`.
fn make_ca(dir: &Path, name: &str) {
    let subject = format!("/CN=Test CA {name}");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "30",
            "-keyout",
            &format!("{name}-ca.key"),
            "-out",
            &format!("{name}-ca.pem"),
            "-subj",
            &subject,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

/// A certificate for `address` (e-mail protection, SAN email) issued by CA `ca`:
/// `USER.pem`, `USER.key`.
fn make_user_cert(dir: &Path, ca: &str, user: &str, address: &str) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{user}.key"),
            "-out",
            &format!("{user}.csr"),
            "-subj",
            &format!("/CN={user}"),
        ],
    );
    let ext = dir.join(format!("{user}.ext"));
    std::fs::write(
        &ext,
        format!(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage=emailProtection\nsubjectAltName=email:{address}\n"
        ),
    )
    .expect("write ext");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{user}.csr"),
            "-CA",
            &format!("{ca}-ca.pem"),
            "-CAkey",
            &format!("{ca}-ca.key"),
            "-CAcreateserial",
            "-days",
            "30",
            "-out",
            &format!("{user}.pem"),
            "-extfile",
            ext.to_str().expect("utf-8"),
        ],
    );
}

/// An S/MIME multipart/signed message from `from` made by `openssl cms -sign`.
fn smime_message(dir: &Path, user: &str, from: &str, subject: &str, text: &str) -> Vec<u8> {
    let content = dir.join(format!("{user}-content.txt"));
    std::fs::write(&content, text).expect("write content");
    let made = run(Command::new("openssl").current_dir(dir).args([
        "cms",
        "-sign",
        "-text",
        "-crlfeol",
        "-in",
        content.to_str().expect("utf-8"),
        "-signer",
        &format!("{user}.pem"),
        "-inkey",
        &format!("{user}.key"),
        "-from",
        from,
        "-to",
        "alice@example.test",
        "-subject",
        subject,
    ]));
    // Mail is CRLF (openssl writes some lines with LF alone).
    String::from_utf8(made)
        .expect("ASCII")
        .replace("\r\n", "\n")
        .replace('\n', "\r\n")
        .into_bytes()
}

/// Sends `message` to alice by smtplib (AUTH PLAIN as `login` when given); returns the
/// queue id from the relay's `accepted` line.
fn send(relay: &Relay, login: Option<&str>, from: &str, message: &[u8]) -> String {
    let before = relay.accepted_ids().len();
    let file = relay.workdir().path().join("outgoing.eml");
    std::fs::write(&file, message).expect("write message");
    let addr = relay.listening("smtp").expect("smtp listener");
    let script = "import smtplib, sys\n\
        host, port, login, sender, path = sys.argv[1:6]\n\
        s = smtplib.SMTP(host, int(port), timeout=60)\n\
        s.ehlo('client.test')\n\
        if login:\n    s.login(login, 'password')\n\
        s.sendmail(sender, ['alice@example.test'], open(path, 'rb').read())\n\
        s.quit()\n";
    run(Command::new("python3").args([
        "-c",
        script,
        &addr.ip().to_string(),
        &addr.port().to_string(),
        login.unwrap_or(""),
        from,
        file.to_str().expect("utf-8"),
    ]));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ids = relay.accepted_ids();
        if ids.len() > before {
            return ids[before].clone();
        }
        assert!(Instant::now() < deadline, "no accepted line");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Our `Authentication-Results` field of stored message `id` (unfolded).
fn our_results(relay: &Relay, id: &str) -> String {
    let stored = relay.spool_cat(id);
    let text = String::from_utf8_lossy(&stored).into_owned();
    let head = text.split("\r\nReceived: from ").next().unwrap_or("");
    assert!(
        head.starts_with("Authentication-Results: relay.test;"),
        "no Authentication-Results of ours above our Received field:\n{text}"
    );
    head.replace("\r\n\t", " ").replace("\r\n ", " ")
}

fn settings_with(engine: Engine, extra: &str) -> Settings {
    let mut settings = Settings::new(engine);
    settings.smtp_toml = "allow_plaintext_auth = true\n".into();
    settings.extra_toml = format!("[web]\nlisten = [\"127.0.0.1:0\"]\n{extra}");
    settings
}

/// The read page of the message with `subject`, as alice's browser gets it.
fn read_page(relay: &Relay, subject: &str) -> String {
    let base = format!("http://{}", relay.listening("http").expect("web listener"));
    let out = run(Command::new("python3")
        .arg(repo_path("tests/py/web_client.py"))
        .args([base.as_str(), "read", "alice", TEST_PASSWORD, subject]));
    let text = String::from_utf8_lossy(&out).into_owned();
    let json = common::json::Json::parse(text.trim()).expect("json");
    json.get("message_body").str().to_string()
}

fn smime_signatures_are_checked_against_the_trust_store(engine: Engine) {
    let keys = tempfile::tempdir().expect("tempdir");
    let dir = keys.path();
    make_ca(dir, "ours");
    make_ca(dir, "theirs");
    make_user_cert(dir, "ours", "carol", "carol@remote.test");
    make_user_cert(dir, "theirs", "mallory", "mallory@remote.test");
    let ca_file = dir.join("ours-ca.pem");
    let relay = Relay::start(settings_with(
        engine,
        &format!(
            "[smime]\nca_file = {:?}\n",
            ca_file.to_str().expect("utf-8")
        ),
    ));

    let good = smime_message(
        dir,
        "carol",
        "carol@remote.test",
        "signed good",
        "Hello Alice\n",
    );
    let id = send(&relay, None, "carol@remote.test", &good);
    let results = our_results(&relay, &id);
    assert!(
        results.contains("smime=pass body.smime-part=1 body.smime-identifier=carol@remote.test"),
        "{results}"
    );
    // The message itself is stored as sent, below our fields.
    let stored = relay.spool_cat(&id);
    let at = common::find(&stored, b"Received: from ").expect("our Received");
    let (_, sent) = split_received(&stored[at..]);
    assert_eq!(sent, &good[..]);

    // One byte of the signed text changed.
    let text = String::from_utf8_lossy(&good).replacen("Hello Alice", "Jello Alice", 1);
    let text = text.replacen("signed good", "signed changed", 1);
    let id = send(&relay, None, "carol@remote.test", text.as_bytes());
    let results = our_results(&relay, &id);
    assert!(results.contains("smime=fail reason="), "{results}");

    // Signed under a CA the relay does not trust.
    let other = smime_message(
        dir,
        "mallory",
        "mallory@remote.test",
        "signed other",
        "Hi\n",
    );
    let id = send(&relay, None, "mallory@remote.test", &other);
    let results = our_results(&relay, &id);
    assert!(
        results.contains("smime=policy reason="),
        "an untrusted chain is `policy`: {results}"
    );
    assert!(!results.contains("smime=pass"), "{results}");

    // An unsigned message costs nothing and gets no signature result.
    let id = relay.deliver(
        &["alice@example.test"],
        b"From: x@remote.test\r\nSubject: plain\r\n\r\nhi\r\n",
    );
    assert!(
        !String::from_utf8_lossy(&relay.spool_cat(&id)).contains("smime="),
        "unsigned mail has no smime result"
    );

    let page = read_page(&relay, "signed good");
    assert!(
        page.contains("Signed by carol@remote.test — verified"),
        "the verdict next to the sender: {page}"
    );
    let page = read_page(&relay, "signed changed");
    assert!(page.contains("signature does not verify"), "{page}");
    let page = read_page(&relay, "signed other");
    assert!(page.contains("untrusted certificate"), "{page}");
}

/// A throw-away gpg home with one key for `address` (sign + encrypt subkeys).
struct Gpg {
    home: tempfile::TempDir,
}

impl Gpg {
    fn new(address: &str, name: &str) -> Gpg {
        let home = tempfile::Builder::new()
            .prefix("g")
            .tempdir_in("/tmp")
            .expect("gpg home");
        let gpg = Gpg { home };
        gpg.run(&[
            "--quick-gen-key",
            &format!("{name} <{address}>"),
            "default",
            "default",
            "never",
        ]);
        gpg
    }

    fn run(&self, args: &[&str]) -> Vec<u8> {
        run(Command::new("gpg")
            .env("GNUPGHOME", self.home.path())
            .args(["--batch", "--pinentry-mode", "loopback", "--passphrase", ""])
            .args(args))
    }

    /// The public key, binary (what WKD serves) or armoured.
    fn export(&self, address: &str, armor: bool) -> Vec<u8> {
        if armor {
            self.run(&["--armor", "--export", address])
        } else {
            self.run(&["--export", address])
        }
    }

    /// A PGP/MIME (RFC 3156) signed message from `from`.
    fn signed(&self, from: &str, subject: &str, text: &str) -> Vec<u8> {
        let part = format!("Content-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n");
        let file = self.home.path().join("part.txt");
        std::fs::write(&file, &part).expect("write part");
        let signature = self.run(&[
            "--armor",
            "--detach-sign",
            "--digest-algo",
            "SHA256",
            "-u",
            from,
            "-o",
            "-",
            file.to_str().expect("utf-8"),
        ]);
        let signature = String::from_utf8(signature)
            .expect("armoured")
            .replace("\r\n", "\n")
            .replace('\n', "\r\n");
        format!(
            "From: {from}\r\nTo: alice@example.test\r\nSubject: {subject}\r\nMIME-Version: 1.0\r\n\
             Content-Type: multipart/signed; micalg=pgp-sha256;\r\n protocol=\"application/pgp-signature\"; boundary=\"sig-b\"\r\n\r\n\
             --sig-b\r\n{part}\r\n--sig-b\r\nContent-Type: application/pgp-signature; name=\"signature.asc\"\r\n\r\n\
             {signature}\r\n--sig-b--\r\n"
        )
        .into_bytes()
    }
}

impl Drop for Gpg {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", self.home.path())
            .args(["--kill", "gpg-agent"])
            .status();
    }
}

fn openpgp_signatures_from_local_and_unknown_signers(engine: Engine) {
    // No WKD: an unknown signer stays unknown, and no lookup leaves the machine.
    let relay = Relay::start(settings_with(engine, "[openpgp]\nwkd = false\n"));
    let bob = Gpg::new("bob@example.test", "Bob");
    let key = relay.workdir().path().join("bob.asc");
    std::fs::write(&key, bob.export("bob@example.test", true)).expect("write key");
    let config = relay.workdir().path().join("relay.toml");
    let output = relay_cmd([
        "user",
        "key",
        "set",
        "bob",
        "--openpgp",
        key.to_str().expect("utf-8"),
        "--config",
        config.to_str().expect("utf-8"),
    ]);
    assert!(output.status.success(), "{}", common::describe(&output));
    relay.sighup();
    relay.wait_log(&["users' keys reloaded"], Duration::from_secs(20));

    // Bob (a local user) sends by authenticated submission; alice reads the verdict too.
    let message = bob.signed("bob@example.test", "pgp from bob", "Hello Alice");
    let id = send(&relay, Some("bob"), "bob@example.test", &message);
    let results = our_results(&relay, &id);
    let method = relay::mailcrypt::openpgp::METHOD;
    assert!(
        results.contains(&format!("{method}=pass header.from=bob@example.test")),
        "{results}"
    );

    // Changed in transit.
    let changed = String::from_utf8_lossy(&message)
        .replacen("Hello Alice", "Hello Alicf", 1)
        .replacen("pgp from bob", "pgp changed", 1);
    let id = send(&relay, Some("bob"), "bob@example.test", changed.as_bytes());
    let results = our_results(&relay, &id);
    assert!(results.contains(&format!("{method}=fail")), "{results}");

    // A signer whose key the relay does not have.
    let dave = Gpg::new("dave@remote.test", "Dave");
    let message = dave.signed("dave@remote.test", "pgp from dave", "Hi");
    let id = send(&relay, None, "dave@remote.test", &message);
    let results = our_results(&relay, &id);
    assert!(
        results.contains(&format!("{method}=neutral reason=")),
        "unknown signer: {results}"
    );

    assert!(read_page(&relay, "pgp from bob").contains("Signed by bob@example.test — verified"));
    assert!(read_page(&relay, "pgp from dave").contains("signer unknown"));
}

/// The WKD server: python's https server over `root`, with `name`'s certificate.
struct WkdServer {
    child: Child,
    port: u16,
}

impl WkdServer {
    fn start(root: &Path, cert: &Path, key: &Path) -> WkdServer {
        let mut child = Command::new("python3")
            .arg(repo_path("tests/py/wkd_server.py"))
            .args([root, cert, key])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 wkd_server.py");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
            .expect("port line");
        let port = line.trim().parse().expect("a port");
        WkdServer { child, port }
    }
}

impl Drop for WkdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where the key of `local@domain` goes under a WKD root (advanced or direct layout).
fn wkd_path(root: &Path, local: &str, domain: &str, advanced: bool) -> PathBuf {
    let hash = relay::mailcrypt::wkd::hashed_local_part(local);
    let dir = if advanced {
        root.join(".well-known/openpgpkey").join(domain).join("hu")
    } else {
        root.join(".well-known/openpgpkey/hu")
    };
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir.join(hash)
}

fn openpgp_keys_come_from_the_senders_wkd(engine: Engine) {
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path();
    make_ca(dir, "web");
    // The directory's certificate, for the advanced host of wkd.test and the direct one of
    // direct.test.
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "wkd.key",
            "-out",
            "wkd.csr",
            "-subj",
            "/CN=openpgpkey.wkd.test",
        ],
    );
    std::fs::write(
        dir.join("wkd.ext"),
        "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n\
         subjectAltName=DNS:openpgpkey.wkd.test,DNS:direct.test\n",
    )
    .expect("ext");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "wkd.csr",
            "-CA",
            "web-ca.pem",
            "-CAkey",
            "web-ca.key",
            "-CAcreateserial",
            "-days",
            "30",
            "-out",
            "wkd.pem",
            "-extfile",
            "wkd.ext",
        ],
    );
    let root = dir.join("root");
    let erin = Gpg::new("erin@wkd.test", "Erin");
    std::fs::write(
        wkd_path(&root, "erin", "wkd.test", true),
        erin.export("erin@wkd.test", false),
    )
    .expect("publish erin");
    let frank = Gpg::new("frank@direct.test", "Frank");
    std::fs::write(
        wkd_path(&root, "frank", "direct.test", false),
        frank.export("frank@direct.test", false),
    )
    .expect("publish frank");
    let server = WkdServer::start(&root, &dir.join("wkd.pem"), &dir.join("wkd.key"));
    // A directory that accepts connections and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_addr = silent.local_addr().expect("addr");

    let extra = format!(
        "[openpgp]\nwkd_timeout = \"2s\"\nwkd_ca_file = {:?}\n[openpgp.wkd_resolve]\n\
         \"openpgpkey.wkd.test\" = \"127.0.0.1:{port}\"\n\"direct.test\" = \"127.0.0.1:{port}\"\n\
         \"openpgpkey.slow.test\" = \"{silent_addr}\"\n\
         \"openpgpkey.example.test\" = \"{silent_addr}\"\n",
        dir.join("web-ca.pem").to_str().expect("utf-8"),
        port = server.port,
    );
    let relay = Relay::start(settings_with(engine, &extra));
    let method = relay::mailcrypt::openpgp::METHOD;

    // The advanced method.
    let message = erin.signed("erin@wkd.test", "pgp via wkd", "Hello");
    let id = send(&relay, None, "erin@wkd.test", &message);
    let results = our_results(&relay, &id);
    assert!(
        results.contains(&format!("{method}=pass header.from=erin@wkd.test")),
        "{results}"
    );
    // The direct method: openpgpkey.direct.test does not resolve.
    let message = frank.signed("frank@direct.test", "pgp via direct wkd", "Hello");
    let id = send(&relay, None, "frank@direct.test", &message);
    let results = our_results(&relay, &id);
    assert!(
        results.contains(&format!("{method}=pass header.from=frank@direct.test")),
        "{results}"
    );

    // A directory that never answers: temperror within the timeout, the mail delivered.
    let grace = Gpg::new("grace@slow.test", "Grace");
    let message = grace.signed("grace@slow.test", "pgp via slow wkd", "Hello");
    let started = Instant::now();
    let id = send(&relay, None, "grace@slow.test", &message);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(
        took >= Duration::from_secs(2),
        "the timeout was waited: {took:?}"
    );
    let results = our_results(&relay, &id);
    assert!(
        results.contains(&format!("{method}=temperror reason=")),
        "{results}"
    );
    assert!(read_page(&relay, "pgp via slow wkd").contains("not checked"));

    // Our own domain's keys are those registered here: no WKD lookup (which would hang).
    let one = Gpg::new("one@example.test", "One");
    let message = one.signed("one@example.test", "pgp from a local user", "Hello");
    let started = Instant::now();
    let id = send(&relay, None, "one@example.test", &message);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "no lookup was waited for"
    );
    let results = our_results(&relay, &id);
    assert!(
        results.contains(&format!("{method}=neutral reason=")),
        "{results}"
    );
    assert!(read_page(&relay, "pgp via wkd").contains("Signed by erin@wkd.test — verified"));
    drop(silent);
}

/// A server certificate for `names` issued by CA `ca`: `FILE.pem`, `FILE.key`.
fn server_cert(dir: &Path, ca: &str, file: &str, names: &[&str]) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{file}.key"),
            "-out",
            &format!("{file}.csr"),
            "-subj",
            &format!("/CN={}", names[0]),
        ],
    );
    let sans: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
    std::fs::write(
        dir.join(format!("{file}.ext")),
        format!(
            "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\nsubjectAltName={}\n",
            sans.join(",")
        ),
    )
    .expect("ext");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{file}.csr"),
            "-CA",
            &format!("{ca}-ca.pem"),
            "-CAkey",
            &format!("{ca}-ca.key"),
            "-CAcreateserial",
            "-days",
            "30",
            "-out",
            &format!("{file}.pem"),
            "-extfile",
            &format!("{file}.ext"),
        ],
    );
}

/// Relay B serves its users' keys by WKD on its web listener (HTTPS); relay A, checking
/// mail from B's user, fetches the key from there.
fn another_relays_wkd_serves_its_users_keys(engine: Engine) {
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path();
    make_ca(dir, "web");
    server_cert(dir, "web", "b", &["openpgpkey.b.test", "b.test"]);
    let mut b_settings = Settings::new(engine);
    b_settings.local_domains = vec!["localhost".into(), "b.test".into()];
    b_settings.extra_toml = format!(
        "[tls]\ncert = {:?}\nkey = {:?}\n[web]\ntls_listen = [\"127.0.0.1:0\"]\n",
        dir.join("b.pem").to_str().expect("utf-8"),
        dir.join("b.key").to_str().expect("utf-8"),
    );
    let b = Relay::start(b_settings);
    let bob = Gpg::new("bob@b.test", "Bob");
    let key = b.workdir().path().join("bob.asc");
    std::fs::write(&key, bob.export("bob@b.test", true)).expect("write key");
    let config = b.workdir().path().join("relay.toml");
    let output = relay_cmd([
        "user",
        "key",
        "set",
        "bob",
        "--openpgp",
        key.to_str().expect("utf-8"),
        "--config",
        config.to_str().expect("utf-8"),
    ]);
    assert!(output.status.success(), "{}", common::describe(&output));
    b.sighup();
    b.wait_log(&["users' keys reloaded"], Duration::from_secs(20));
    let https = b.listening("https").expect("B's https listener");

    let extra = format!(
        "[openpgp]\nwkd_ca_file = {:?}\n[openpgp.wkd_resolve]\n\"openpgpkey.b.test\" = \"{https}\"\n",
        dir.join("web-ca.pem").to_str().expect("utf-8"),
    );
    let a = Relay::start(settings_with(engine, &extra));
    let method = relay::mailcrypt::openpgp::METHOD;
    let message = bob.signed("bob@b.test", "pgp via relay wkd", "Hello from B");
    let id = send(&a, None, "bob@b.test", &message);
    let results = our_results(&a, &id);
    assert!(
        results.contains(&format!("{method}=pass header.from=bob@b.test")),
        "{results}"
    );
    // Someone B has no key for: B's directory answers 404, so the signer is unknown.
    let carl = Gpg::new("carl@b.test", "Carl");
    let message = carl.signed("carl@b.test", "pgp from carl", "Hi");
    let id = send(&a, None, "carl@b.test", &message);
    let results = our_results(&a, &id);
    assert!(
        results.contains(&format!("{method}=neutral reason=")),
        "{results}"
    );
}
