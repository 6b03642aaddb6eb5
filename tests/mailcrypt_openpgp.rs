//! OpenPGP against other implementations: keys made by GnuPG (`gpg --quick-gen-key`, v4
//! cv25519 and RSA-2048), Sequoia (`sq key generate`, v4) and OpenPGP.js (v6, npm `openpgp`
//! from tests/tools.sh) are parsed by `mailcrypt::openpgp::parse_key`; what `seal` makes is
//! decrypted by them back to exactly the sealed entity; signatures they make over a
//! PGP/MIME part are checked by `verify`. Every tool runs in its own temporary home; nothing
//! touches the network.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use mail_parser::MimeHeaders;
use relay::mailcrypt::{entity, openpgp, KeyError, Verdict};

const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

/// Runs `cmd` with `stdin`, asserting success; returns stdout.
fn run(cmd: &mut Command, stdin: &[u8]) -> Vec<u8> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A GnuPG home of its own.
struct Gpg {
    home: tempfile::TempDir,
}

impl Gpg {
    fn new() -> Gpg {
        let home = tempfile::tempdir().unwrap();
        std::fs::set_permissions(
            home.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        Gpg { home }
    }

    fn cmd(&self) -> Command {
        let mut cmd = Command::new("gpg");
        cmd.env("GNUPGHOME", self.home.path()).args([
            "--batch",
            "--quiet",
            "--no-tty",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
        ]);
        cmd
    }

    fn run(&self, args: &[&str], stdin: &[u8]) -> Vec<u8> {
        run(self.cmd().args(args), stdin)
    }

    /// A cv25519 key (ed25519 primary, cv25519 subkey) for `uid`, valid a year.
    fn cv25519(&self, uid: &str) {
        self.run(
            &["--quick-gen-key", uid, "future-default", "default", "1y"],
            b"",
        );
    }

    /// An RSA-2048 primary with an RSA-2048 encryption subkey, valid a year.
    fn rsa2048(&self, uid: &str) {
        self.run(&["--quick-gen-key", uid, "rsa2048", "sign,cert", "1y"], b"");
        let fpr = self.fingerprint(uid);
        self.run(&["--quick-add-key", &fpr, "rsa2048", "encr", "1y"], b"");
    }

    fn fingerprint(&self, uid: &str) -> String {
        let out = self.run(&["--with-colons", "--list-keys", uid], b"");
        let text = String::from_utf8(out).unwrap();
        let line = text.lines().find(|l| l.starts_with("fpr:")).unwrap();
        line.split(':').nth(9).unwrap().to_string()
    }

    fn export(&self, uid: &str) -> Vec<u8> {
        self.run(&["--armor", "--export", uid], b"")
    }
}

impl Drop for Gpg {
    /// Stops this home's gpg-agent rather than leaving it to notice its socket is gone.
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", self.home.path())
            .args(["--kill", "gpg-agent"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A message with the fields that must stay in clear.
fn message(to: &str, body: &str) -> Vec<u8> {
    format!(
        "Received: from mx.example.net by relay.example.org; Sat, 5 Dec 2026 10:00:00 +0000\r\n\
         From: Sender <sender@example.net>\r\n\
         To: <{to}>\r\n\
         Subject: the plans\r\n\
         Date: Sat, 5 Dec 2026 10:00:00 +0000\r\n\
         Message-ID: <plans@example.net>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\n\
         \r\n\
         {body}"
    )
    .into_bytes()
}

/// Checks the PGP/MIME structure of `sealed` (with mail-parser, not our code) and returns
/// the armoured OpenPGP message of its second part.
fn encrypted_part(sealed: &[u8]) -> Vec<u8> {
    assert!(
        !sealed.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r'),
        "bare LF"
    );
    let text = String::from_utf8(sealed.to_vec()).unwrap();
    for kept in [
        "Received: from mx.example.net by relay.example.org; Sat, 5 Dec 2026 10:00:00 +0000\r\n",
        "From: Sender <sender@example.net>\r\n",
        "Subject: the plans\r\n",
        "Date: Sat, 5 Dec 2026 10:00:00 +0000\r\n",
        "Message-ID: <plans@example.net>\r\n",
    ] {
        assert!(
            text.starts_with(kept) || text.contains(&format!("\r\n{kept}")),
            "{kept}"
        );
    }
    assert!(
        !text.contains("Content-Transfer-Encoding: 8bit"),
        "the inner fields leaked"
    );
    let parsed = mail_parser::MessageParser::default().parse(sealed).unwrap();
    assert!(parsed.to().is_some());
    let ct = parsed.content_type().unwrap();
    assert_eq!(ct.ctype(), "multipart");
    assert_eq!(ct.subtype(), Some("encrypted"));
    assert_eq!(ct.attribute("protocol"), Some("application/pgp-encrypted"));
    assert_eq!(parsed.parts.len(), 3, "root and two parts");
    let version = &parsed.parts[1];
    let vct = version.content_type().unwrap();
    assert_eq!(
        (vct.ctype(), vct.subtype()),
        ("application", Some("pgp-encrypted"))
    );
    assert!(String::from_utf8_lossy(version.contents()).contains("Version: 1"));
    let data = &parsed.parts[2];
    let dct = data.content_type().unwrap();
    assert_eq!(
        (dct.ctype(), dct.subtype()),
        ("application", Some("octet-stream"))
    );
    let armour = data.contents().to_vec();
    assert!(armour.starts_with(b"-----BEGIN PGP MESSAGE-----\r\n"));
    armour
}

/// Seals a message to `key`, returns (the expected inner entity, the armoured message).
fn seal_to(key: &openpgp::Key, to: &str) -> (Vec<u8>, Vec<u8>) {
    // Non-ASCII, a long line, and an LF-only line end to be canonicalised.
    let body = format!(
        "Grüße,\r\nthe plans are attached.\n{}\r\n",
        "x".repeat(3000)
    );
    let message = message(to, &body);
    let sealed = openpgp::seal(key, &message).unwrap();
    let inner = entity::split(&message).inner;
    assert!(inner.starts_with(b"Content-Type: text/plain; charset=utf-8\r\n"));
    (inner, encrypted_part(&sealed))
}

fn addrs(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn gpg_cv25519_key_round_trips() {
    let gpg = Gpg::new();
    gpg.cv25519("Alice <Alice@Example.org>");
    let armored = gpg.export("alice@example.org");
    let key =
        openpgp::parse_key(&armored, &addrs(&["alice@example.org"]), SystemTime::now()).unwrap();
    assert_eq!(key.fingerprint, gpg.fingerprint("alice@example.org"));
    assert_eq!(key.addresses, vec!["alice@example.org".to_string()]);
    // The binary form is what gpg itself exports, and it parses again.
    let binary = gpg.run(&["--export", "alice@example.org"], b"");
    assert_eq!(key.binary(), binary);
    // Pasted with text around it.
    let mut pasted = b"Here is my key:\n\n".to_vec();
    pasted.extend_from_slice(&armored);
    pasted.extend_from_slice(b"\nThanks.\n");
    let from_paste =
        openpgp::parse_key(&pasted, &addrs(&["alice@example.org"]), SystemTime::now()).unwrap();
    assert_eq!(from_paste.fingerprint, key.fingerprint);
    let again = openpgp::parse_key(
        &key.binary(),
        &addrs(&["ALICE@example.org"]),
        SystemTime::now(),
    )
    .unwrap();
    assert_eq!(again.fingerprint, key.fingerprint);
    let (inner, armour) = seal_to(&key, "alice@example.org");
    assert_eq!(gpg.run(&["--decrypt"], &armour), inner);
}

#[test]
fn gpg_rsa2048_key_round_trips() {
    let gpg = Gpg::new();
    gpg.rsa2048("Rob <rob@example.org>");
    let key = openpgp::parse_key(
        &gpg.export("rob@example.org"),
        &addrs(&["other@example.org", "rob@example.org"]),
        SystemTime::now(),
    )
    .unwrap();
    let (inner, armour) = seal_to(&key, "rob@example.org");
    assert_eq!(gpg.run(&["--decrypt"], &armour), inner);
}

#[test]
fn gpg_signing_only_key_is_refused() {
    let gpg = Gpg::new();
    gpg.run(
        &[
            "--quick-gen-key",
            "<sig@example.org>",
            "ed25519",
            "sign,cert",
            "1y",
        ],
        b"",
    );
    let err = openpgp::parse_key(
        &gpg.export("sig@example.org"),
        &addrs(&["sig@example.org"]),
        SystemTime::now(),
    )
    .unwrap_err();
    assert!(matches!(err, KeyError::NoEncryptionKey(_)), "{err:?}");

    // An encryption subkey valid for a day: usable now, expired the day after tomorrow,
    // while the primary key is still valid.
    let fpr = gpg.fingerprint("sig@example.org");
    gpg.run(&["--quick-add-key", &fpr, "cv25519", "encr", "1d"], b"");
    let exported = gpg.export("sig@example.org");
    let mine = addrs(&["sig@example.org"]);
    assert!(openpgp::parse_key(&exported, &mine, SystemTime::now()).is_ok());
    let later = SystemTime::now() + Duration::from_secs(2 * 86400);
    let err = openpgp::parse_key(&exported, &mine, later).unwrap_err();
    assert_eq!(
        err,
        KeyError::Expired("every encryption subkey expired".into())
    );
}

#[test]
fn gpg_refusals() {
    let gpg = Gpg::new();
    gpg.cv25519("Carol <carol@example.org>");
    let public = gpg.export("carol@example.org");
    let mine = addrs(&["carol@example.org"]);
    let now = SystemTime::now();

    let secret = gpg.run(
        &["--armor", "--export-secret-keys", "carol@example.org"],
        b"",
    );
    assert_eq!(
        openpgp::parse_key(&secret, &mine, now).unwrap_err(),
        KeyError::SecretKey
    );
    let secret_bin = gpg.run(&["--export-secret-keys", "carol@example.org"], b"");
    assert_eq!(
        openpgp::parse_key(&secret_bin, &mine, now).unwrap_err(),
        KeyError::SecretKey
    );

    let err = openpgp::parse_key(&public, &mine, now + 2 * YEAR).unwrap_err();
    assert!(matches!(err, KeyError::Expired(_)), "{err:?}");

    let err = openpgp::parse_key(&public, &addrs(&["mallory@example.org"]), now).unwrap_err();
    assert_eq!(err, KeyError::NoMatchingAddress("carol@example.org".into()));

    let mut garbage = public.clone();
    let mid = garbage.len() / 2;
    garbage.truncate(mid);
    assert!(matches!(
        openpgp::parse_key(&garbage, &mine, now),
        Err(KeyError::Unreadable(_))
    ));
    assert!(matches!(
        openpgp::parse_key(b"\x99\x00\x05hello", &mine, now),
        Err(KeyError::Unreadable(_))
    ));

    // A flipped byte in the middle of the binary key breaks a self-signature or the key.
    let mut binary = gpg.run(&["--export", "carol@example.org"], b"");
    let last = binary.len() - 10;
    binary[last] ^= 0x55;
    assert!(openpgp::parse_key(&binary, &mine, now).is_err());

    // A revoked user id no longer names its address.
    let fpr = gpg.fingerprint("carol@example.org");
    gpg.run(
        &["--quick-add-uid", &fpr, "Carol New <carol.new@example.org>"],
        b"",
    );
    gpg.run(&["--quick-revuid", &fpr, "Carol <carol@example.org>"], b"");
    let err = openpgp::parse_key(&gpg.export(&fpr), &mine, now).unwrap_err();
    assert_eq!(
        err,
        KeyError::NoMatchingAddress("carol.new@example.org".into())
    );
    let key =
        openpgp::parse_key(&gpg.export(&fpr), &addrs(&["Carol.New@example.org"]), now).unwrap();
    assert_eq!(key.addresses, vec!["carol.new@example.org".to_string()]);

    // GnuPG made a revocation certificate with the key; import it.
    let rev = std::fs::read_to_string(gpg.home.path().join(format!("openpgp-revocs.d/{fpr}.rev")))
        .unwrap();
    let rev = rev.replace(":-----BEGIN", "-----BEGIN");
    gpg.run(&["--import"], rev.as_bytes());
    let revoked = gpg.export(&fpr);
    assert_eq!(
        openpgp::parse_key(&revoked, &mine, now).unwrap_err(),
        KeyError::Revoked
    );
}

/// A Sequoia key and certificate in `dir`.
fn sq_key(dir: &Path, uid: &str) -> (PathBuf, Vec<u8>) {
    let key = dir.join("key.pgp");
    run(
        Command::new("sq")
            .args([
                "key",
                "generate",
                "--userid",
                uid,
                "--expires-in",
                "1y",
                "--export",
            ])
            .arg(&key),
        b"",
    );
    let cert = run(
        Command::new("sq").args(["key", "extract-cert"]).arg(&key),
        b"",
    );
    (key, cert)
}

#[test]
fn sequoia_key_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let (secret, cert) = sq_key(dir.path(), "Dave <dave@example.org>");
    let key = openpgp::parse_key(&cert, &addrs(&["dave@example.org"]), SystemTime::now()).unwrap();
    let (inner, armour) = seal_to(&key, "dave@example.org");
    assert_eq!(
        run(Command::new("sqop").arg("decrypt").arg(&secret), &armour),
        inner
    );
    // The secret key itself is refused.
    let err = openpgp::parse_key(
        &std::fs::read(&secret).unwrap(),
        &addrs(&["dave@example.org"]),
        SystemTime::now(),
    )
    .unwrap_err();
    assert_eq!(err, KeyError::SecretKey);
}

fn openpgp_js() -> PathBuf {
    let dir =
        std::env::var("RELAY_TEST_TOOLS").unwrap_or_else(|_| "/var/tmp/relay-test-tools".into());
    let path = PathBuf::from(dir).join("node_modules/openpgp");
    assert!(
        path.join("package.json").is_file(),
        "{} is missing: run `bash tests/tools.sh` (tests/run.sh does)",
        path.display()
    );
    path
}

/// Runs an OpenPGP.js script (CommonJS, `openpgp` bound) with `args` and `stdin`.
fn node(script: &str, args: &[&str], stdin: &[u8]) -> Vec<u8> {
    let lib = openpgp_js();
    let program = format!(
        "const openpgp = require({:?});\n(async () => {{\n{script}\n}})().catch(e => {{ console.error(e); process.exit(1); }});",
        lib.to_str().unwrap()
    );
    run(
        Command::new("node")
            .arg("-e")
            .arg(program)
            .arg("--")
            .args(args),
        stdin,
    )
}

/// An OpenPGP.js v6 key for `email`: (armoured secret key, armoured public key).
fn v6_key(email: &str) -> (String, String) {
    let out = node(
        "const { privateKey, publicKey } = await openpgp.generateKey({
            type: 'curve25519', userIDs: [{ name: 'Six', email: process.argv[1] }],
            format: 'armored', keyExpirationTime: 365 * 86400, config: { v6Keys: true } });
        process.stdout.write(JSON.stringify([privateKey, publicKey]));",
        &[email],
        b"",
    );
    let pair: Vec<String> = serde_json::from_slice(&out).unwrap();
    (pair[0].clone(), pair[1].clone())
}

const V6_DECRYPT: &str = "const fs = require('fs');
    const armoredKey = fs.readFileSync(process.argv[1], 'utf8');
    const decryptionKeys = await openpgp.readPrivateKey({ armoredKey });
    const armoredMessage = fs.readFileSync(0, 'utf8');
    const message = await openpgp.readMessage({ armoredMessage });
    const packets = message.packets.map(p => p.constructor.tag + ':' + (p.version ?? ''));
    const { data } = await openpgp.decrypt({ message, decryptionKeys, format: 'binary' });
    process.stderr.write(packets.join(',') + '\\n');
    process.stdout.write(Buffer.from(data));";

#[test]
fn openpgp_js_v6_key_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let (secret, public) = v6_key("six@example.org");
    assert!(public.contains("BEGIN PGP PUBLIC KEY BLOCK"));
    let key = openpgp::parse_key(
        public.as_bytes(),
        &addrs(&["six@example.org"]),
        SystemTime::now(),
    )
    .unwrap();
    // v6 fingerprints are 32 octets.
    assert_eq!(key.fingerprint.len(), 64);
    let (inner, armour) = seal_to(&key, "six@example.org");
    let path = dir.path().join("six.key");
    std::fs::write(&path, &secret).unwrap();
    assert_eq!(node(V6_DECRYPT, &[path.to_str().unwrap()], &armour), inner);
    // A v6 key gets SEIPDv2 (packet tag 18, version 2) behind a v6 PKESK.
    let packets = run(
        Command::new("node").arg("-e").arg(format!(
            "const openpgp = require({:?});
            (async () => {{
              const message = await openpgp.readMessage({{ armoredMessage: require('fs').readFileSync(0, 'utf8') }});
              process.stdout.write(message.packets.map(p => p.constructor.tag + ':' + p.version).join(','));
            }})();",
            openpgp_js().to_str().unwrap()
        )),
        &armour,
    );
    assert_eq!(String::from_utf8(packets).unwrap(), "1:6,18:2");
    // The secret key is refused; the key is refused after it expires.
    assert_eq!(
        openpgp::parse_key(
            secret.as_bytes(),
            &addrs(&["six@example.org"]),
            SystemTime::now()
        )
        .unwrap_err(),
        KeyError::SecretKey
    );
    let err = openpgp::parse_key(
        public.as_bytes(),
        &addrs(&["six@example.org"]),
        SystemTime::now() + 2 * YEAR,
    )
    .unwrap_err();
    assert!(matches!(err, KeyError::Expired(_)), "{err:?}");
}

/// A PGP/MIME signed message around `part` with the armoured `signature`.
fn signed_message(part: &[u8], signature: &[u8], from: &str) -> Vec<u8> {
    let mut m = format!(
        "From: <{from}>\r\nTo: <rcpt@example.org>\r\nSubject: signed\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/signed; micalg=pgp-sha256;\r\n \
         protocol=\"application/pgp-signature\"; boundary=\"sig-b\"\r\n\r\n\
         This is an OpenPGP/MIME signed message.\r\n--sig-b\r\n"
    )
    .into_bytes();
    m.extend_from_slice(part);
    m.extend_from_slice(
        b"\r\n--sig-b\r\nContent-Type: application/pgp-signature; name=\"signature.asc\"\r\n\r\n",
    );
    m.extend_from_slice(
        &signature
            .iter()
            .flat_map(|&b| {
                if b == b'\n' {
                    vec![b'\r', b'\n']
                } else if b == b'\r' {
                    vec![]
                } else {
                    vec![b]
                }
            })
            .collect::<Vec<u8>>(),
    );
    m.extend_from_slice(b"\r\n--sig-b--\r\n");
    m
}

const PART: &[u8] = b"Content-Type: text/plain; charset=utf-8\r\n\
Content-Transfer-Encoding: quoted-printable\r\n\r\nThe meeting is at noon.\r\n-- \r\nEve\r\n";

/// The same message with one octet of the signed body changed.
fn tampered(message: &[u8]) -> Vec<u8> {
    let text = String::from_utf8(message.to_vec()).unwrap();
    text.replacen("at noon.", "at none.", 1).into_bytes()
}

#[test]
fn gpg_signature_verifies_and_tampering_fails() {
    let gpg = Gpg::new();
    gpg.cv25519("Eve <eve@example.org>");
    let now = SystemTime::now();
    let key = openpgp::parse_key(
        &gpg.export("eve@example.org"),
        &addrs(&["eve@example.org"]),
        now,
    )
    .unwrap();
    let sig = gpg.run(&["--detach-sign", "--armor", "-u", "eve@example.org"], PART);
    let signed = signed_message(PART, &sig, "eve@example.org");
    assert_eq!(
        relay::mailcrypt::signature_kind(&signed),
        Some(relay::mailcrypt::SignatureKind::OpenPgp)
    );
    // GnuPG signs with the ed25519 primary and names its fingerprint.
    let issuers = openpgp::signers(&signed);
    assert!(!issuers.is_empty());
    assert!(issuers.contains(&key.fingerprint));
    assert_eq!(
        openpgp::verify(&signed, std::slice::from_ref(&key), now),
        Verdict::Pass {
            signer: "eve@example.org".into()
        }
    );
    let verdict = openpgp::verify(&tampered(&signed), std::slice::from_ref(&key), now);
    assert!(matches!(verdict, Verdict::Fail { .. }), "{verdict:?}");

    // A signer we have no key for.
    let other = Gpg::new();
    other.cv25519("Frank <frank@example.org>");
    let frank = openpgp::parse_key(
        &other.export("frank@example.org"),
        &addrs(&["frank@example.org"]),
        now,
    )
    .unwrap();
    assert!(!issuers.iter().any(|i| frank.matches_issuer(i)));
    assert!(issuers.iter().all(|i| key.matches_issuer(i)));
    let verdict = openpgp::verify(&signed, std::slice::from_ref(&frank), now);
    assert!(
        matches!(&verdict, Verdict::UnknownSigner { signer } if issuers.contains(signer)),
        "{verdict:?}"
    );
    // Malformed: no signature part.
    let broken = String::from_utf8(signed.clone()).unwrap().replace(
        "--sig-b\r\nContent-Type: application/pgp-signature",
        "--x\r\nContent-Type: application/pgp-signature",
    );
    let verdict = openpgp::verify(broken.as_bytes(), std::slice::from_ref(&key), now);
    assert!(matches!(verdict, Verdict::PermError { .. }), "{verdict:?}");
}

#[test]
fn gpg_rsa_signature_by_primary_verifies() {
    let gpg = Gpg::new();
    gpg.rsa2048("Rita <rita@example.org>");
    let now = SystemTime::now();
    let key = openpgp::parse_key(
        &gpg.export("rita@example.org"),
        &addrs(&["rita@example.org"]),
        now,
    )
    .unwrap();
    let sig = gpg.run(
        &["--detach-sign", "--armor", "-u", "rita@example.org"],
        PART,
    );
    // Signed by the primary key; the From is not one of the key's addresses.
    let signed = signed_message(PART, &sig, "someone@example.net");
    assert_eq!(
        openpgp::verify(&signed, std::slice::from_ref(&key), now),
        Verdict::Pass {
            signer: key.fingerprint.clone()
        }
    );
    let verdict = openpgp::verify(&tampered(&signed), std::slice::from_ref(&key), now);
    assert!(matches!(verdict, Verdict::Fail { .. }), "{verdict:?}");
}

#[test]
fn sqop_signature_verifies_and_tampering_fails() {
    let dir = tempfile::tempdir().unwrap();
    let (secret, cert) = sq_key(dir.path(), "<grace@example.org>");
    let now = SystemTime::now();
    let key = openpgp::parse_key(&cert, &addrs(&["grace@example.org"]), now).unwrap();
    let sig = run(Command::new("sqop").arg("sign").arg(&secret), PART);
    let signed = signed_message(PART, &sig, "grace@example.org");
    // Sequoia signs with a signing subkey: its issuer is not the primary.
    let issuers = openpgp::signers(&signed);
    assert!(
        !issuers.is_empty() && !issuers.contains(&key.fingerprint),
        "{issuers:?}"
    );
    assert!(issuers.iter().all(|i| key.matches_issuer(i)), "{issuers:?}");
    assert!(key.matches_issuer(&key.fingerprint.to_lowercase()));
    assert_eq!(
        openpgp::verify(&signed, std::slice::from_ref(&key), now),
        Verdict::Pass {
            signer: "grace@example.org".into()
        }
    );
    let verdict = openpgp::verify(&tampered(&signed), std::slice::from_ref(&key), now);
    assert!(matches!(verdict, Verdict::Fail { .. }), "{verdict:?}");
    assert!(matches!(
        openpgp::verify(&signed, &[], now),
        Verdict::UnknownSigner { .. }
    ));
}

#[test]
fn openpgp_js_v6_signature_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let (secret, public) = v6_key("sig6@example.org");
    let now = SystemTime::now();
    let key = openpgp::parse_key(public.as_bytes(), &addrs(&["sig6@example.org"]), now).unwrap();
    let path = dir.path().join("k");
    std::fs::write(&path, &secret).unwrap();
    let sig = node(
        "const fs = require('fs');
        const signingKeys = await openpgp.readPrivateKey({ armoredKey: fs.readFileSync(process.argv[1], 'utf8') });
        const message = await openpgp.createMessage({ binary: fs.readFileSync(0) });
        process.stdout.write(await openpgp.sign({ message, signingKeys, detached: true }));",
        &[path.to_str().unwrap()],
        PART,
    );
    let signed = signed_message(PART, &sig, "sig6@example.org");
    assert_eq!(
        openpgp::verify(&signed, std::slice::from_ref(&key), now),
        Verdict::Pass {
            signer: "sig6@example.org".into()
        }
    );
    let verdict = openpgp::verify(&tampered(&signed), std::slice::from_ref(&key), now);
    assert!(matches!(verdict, Verdict::Fail { .. }), "{verdict:?}");
}
