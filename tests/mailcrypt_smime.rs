//! S/MIME against tools no one here wrote: certificates made by openssl 3 (`req`, `x509`,
//! `ca`); sealed messages opened by `openssl cms -decrypt` and by GnuPG's gpgsm; signed
//! messages made by `openssl cms -sign` and checked by `smime::verify`.
//!
//! Covered: each refusal of `parse_cert` with its error (garbage, size, private key, expired,
//! not yet valid, wrong key usage, wrong extended key usage, EC key, no matching address);
//! a sealed message decrypts byte-exactly to the entity `entity::split` cut, in both tools,
//! with the clear header kept outside; detached and opaque signatures pass, fail on one
//! changed byte, and are untrusted for a CA outside the store, an expired signer or a
//! server-only certificate.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use relay::mailcrypt::smime::{self, Cert, TrustStore};
use relay::mailcrypt::{entity, KeyError, Verdict};

/// The certificates and keys of one test run, made once: openssl key generation is the slow
/// part, and nothing here changes them.
struct Pki {
    dir: PathBuf,
}

const ALICE: &str = "alice@example.org";

fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(make_pki)
}

fn openssl(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .env("OPENSSL_CONF", "/dev/null")
        .stdin(Stdio::null())
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A CA and the certificates the tests need, each `NAME.pem` with `NAME.key`.
fn make_pki() -> Pki {
    let root = tempfile::Builder::new()
        .prefix("smime")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("temp dir")
        .keep();
    let dir = root.as_path();
    let ca = |name: &str| {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.pem"),
                "-days",
                "3650",
                "-subj",
                &format!("/CN={name}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
    };
    ca("ca");
    ca("otherca");
    let user = |name: &str, key: &str, issuer: &str, ext: &str| {
        std::fs::write(dir.join(format!("{name}.ext")), ext).expect("write ext");
        let newkey: Vec<&str> = if key == "ec" {
            vec!["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
        } else {
            vec!["-newkey", "rsa:2048"]
        };
        let mut args = vec!["req", "-nodes"];
        args.extend(newkey);
        let (k, csr) = (format!("{name}.key"), format!("{name}.csr"));
        let subj = format!("/CN={name}");
        args.extend(["-keyout", &k, "-out", &csr, "-subj", &subj]);
        openssl(dir, &args);
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &format!("{issuer}.pem"),
                "-CAkey",
                &format!("{issuer}.key"),
                "-CAcreateserial",
                "-days",
                "365",
                "-out",
                &format!("{name}.pem"),
                "-extfile",
                &format!("{name}.ext"),
            ],
        );
    };
    let mail = "subjectAltName=email:Alice@Example.org\nextendedKeyUsage=emailProtection\n\
keyUsage=critical,digitalSignature,keyEncipherment\nbasicConstraints=CA:FALSE\n";
    user("alice", "rsa", "ca", mail);
    user("stranger", "rsa", "otherca", mail);
    user("ec", "ec", "ca", "subjectAltName=email:alice@example.org\nextendedKeyUsage=emailProtection\nkeyUsage=critical,digitalSignature,keyAgreement\n");
    user(
        "server",
        "rsa",
        "ca",
        "subjectAltName=email:alice@example.org\nextendedKeyUsage=serverAuth\n",
    );
    user(
        "signonly",
        "rsa",
        "ca",
        "subjectAltName=email:alice@example.org\nkeyUsage=critical,digitalSignature\n",
    );
    // An intermediate CA under `ca`, and a user under it.
    user(
        "mid",
        "rsa",
        "ca",
        "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n",
    );
    user(
        "carol",
        "rsa",
        "mid",
        &mail.replace("Alice@Example.org", "carol@example.org"),
    );
    // An intermediate restricted to TLS servers, and a mail user under it.
    user(
        "tlsmid",
        "rsa",
        "ca",
        "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n\
extendedKeyUsage=serverAuth\n",
    );
    user("dave", "rsa", "tlsmid", mail);
    // No SAN: the address is only in the subject's emailAddress.
    std::fs::write(dir.join("legacy.ext"), "extendedKeyUsage=emailProtection\n").expect("ext");
    openssl(
        dir,
        &[
            "req",
            "-nodes",
            "-newkey",
            "rsa:2048",
            "-keyout",
            "legacy.key",
            "-out",
            "legacy.csr",
            "-subj",
            "/CN=legacy/emailAddress=Legacy@Example.org",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "legacy.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "365",
            "-out",
            "legacy.pem",
            "-extfile",
            "legacy.ext",
        ],
    );
    // Expired: `openssl ca` takes explicit dates; `x509 -req` in 3.0 does not.
    std::fs::write(dir.join("index.txt"), "").expect("index");
    std::fs::write(dir.join("serial.txt"), "1000\n").expect("serial");
    std::fs::write(
        dir.join("ca.cnf"),
        "[ca]\ndefault_ca=d\n[d]\ndatabase=index.txt\nnew_certs_dir=.\nserial=serial.txt\n\
policy=p\ndefault_md=sha256\n[p]\ncommonName=supplied\n",
    )
    .expect("ca.cnf");
    openssl(
        dir,
        &[
            "req",
            "-nodes",
            "-newkey",
            "rsa:2048",
            "-keyout",
            "expired.key",
            "-out",
            "expired.csr",
            "-subj",
            "/CN=expired",
        ],
    );
    std::fs::write(dir.join("expired.ext"), mail).expect("ext");
    openssl(
        dir,
        &[
            "ca",
            "-config",
            "ca.cnf",
            "-batch",
            "-notext",
            "-cert",
            "ca.pem",
            "-keyfile",
            "ca.key",
            "-in",
            "expired.csr",
            "-out",
            "expired.pem",
            "-startdate",
            "20200101000000Z",
            "-enddate",
            "20210101000000Z",
            "-extfile",
            "expired.ext",
        ],
    );
    Pki { dir: root }
}

impl Pki {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).expect("read fixture")
    }
    fn cert(&self, name: &str) -> Cert {
        smime::parse_cert(
            &self.read(&format!("{name}.pem")),
            &[ALICE.into()],
            SystemTime::now(),
        )
        .expect("parse_cert")
    }
}

fn alice() -> Vec<String> {
    vec![ALICE.to_string()]
}

#[test]
fn a_good_certificate_is_accepted_in_pem_and_der() {
    let pki = pki();
    let now = SystemTime::now();
    let pem = pki.read("alice.pem");
    // Addresses compare without regard to case.
    let cert = smime::parse_cert(&pem, &["ALICE@example.ORG".into()], now).expect("pem");
    assert_eq!(cert.addresses, vec![ALICE.to_string()]);
    let der = openssl(&pki.dir, &["x509", "-in", "alice.pem", "-outform", "DER"]);
    let from_der = smime::parse_cert(&der, &alice(), now).expect("der");
    assert_eq!(from_der.fingerprint, cert.fingerprint);

    let fp = String::from_utf8(openssl(
        &pki.dir,
        &[
            "x509",
            "-in",
            "alice.pem",
            "-noout",
            "-fingerprint",
            "-sha256",
        ],
    ))
    .expect("utf-8");
    let fp = fp
        .trim()
        .rsplit('=')
        .next()
        .expect("fingerprint")
        .replace(':', "");
    assert_eq!(cert.fingerprint, fp);

    let end = String::from_utf8(openssl(
        &pki.dir,
        &[
            "x509",
            "-in",
            "alice.pem",
            "-noout",
            "-enddate",
            "-dateopt",
            "iso_8601",
        ],
    ))
    .expect("utf-8");
    let days = (cert.not_after
        - now
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("clock")
            .as_secs())
        / 86_400;
    assert!((363..=365).contains(&days), "{end}: {days} days");
    // The stored PEM is the same certificate.
    let again = smime::parse_cert(cert.pem.as_bytes(), &alice(), now).expect("pem again");
    assert_eq!(again.fingerprint, cert.fingerprint);

    // Subject emailAddress counts when there is no SAN.
    let legacy = smime::parse_cert(&pki.read("legacy.pem"), &["legacy@example.org".into()], now)
        .expect("legacy");
    assert_eq!(legacy.addresses, vec!["legacy@example.org".to_string()]);
}

#[test]
fn each_refusal_has_its_error() {
    let pki = pki();
    let now = SystemTime::now();
    let parse = |name: &str| smime::parse_cert(&pki.read(name), &alice(), now);

    assert!(matches!(
        smime::parse_cert(b"not a certificate", &alice(), now),
        Err(KeyError::Unreadable(_))
    ));
    let mut big = pki.read("alice.pem");
    big.resize(64 * 1024 + 1, b'\n');
    assert_eq!(
        smime::parse_cert(&big, &alice(), now).unwrap_err(),
        KeyError::TooLarge(64 * 1024 + 1, 64 * 1024)
    );
    assert_eq!(parse("alice.key").unwrap_err(), KeyError::SecretKey);
    let mut both = pki.read("alice.pem");
    both.extend(pki.read("alice.key"));
    assert_eq!(
        smime::parse_cert(&both, &alice(), now).unwrap_err(),
        KeyError::SecretKey
    );
    assert!(matches!(parse("expired.pem"), Err(KeyError::Expired(_))));
    let before = now - Duration::from_secs(3 * 86_400);
    assert!(matches!(
        smime::parse_cert(&pki.read("alice.pem"), &alice(), before),
        Err(KeyError::Expired(_))
    ));
    let later = now + Duration::from_secs(400 * 86_400);
    assert!(matches!(
        smime::parse_cert(&pki.read("alice.pem"), &alice(), later),
        Err(KeyError::Expired(_))
    ));
    assert!(matches!(parse("server.pem"), Err(KeyError::WrongUsage(_))));
    assert!(matches!(
        parse("signonly.pem"),
        Err(KeyError::WrongUsage(_))
    ));
    match parse("ec.pem") {
        Err(KeyError::Unsupported(why)) => assert!(why.contains("RSA key transport"), "{why}"),
        other => panic!("EC: {other:?}"),
    }
    assert!(matches!(
        smime::parse_cert(&pki.read("alice.pem"), &["bob@example.org".into()], now),
        Err(KeyError::NoMatchingAddress(_))
    ));
}

const MESSAGE: &[u8] = b"Received: from mx.example.net by relay\r\n\
From: Bob <bob@example.net>\r\nTo: alice@example.org\r\nSubject: the plan\r\n\
MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\
Content-Transfer-Encoding: 8bit\r\nMessage-ID: <1@example.net>\r\n\r\n\
Gr\xc3\xbc\xc3\x9fe,\r\nthe plan is in the attachment.\n.\r\nFrom here on\r\n";

/// The stored message's outer header and its base64 body, decoded.
fn unwrap_stored(stored: &[u8]) -> (String, Vec<u8>) {
    let end = stored
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header end");
    let header = String::from_utf8(stored[..end + 2].to_vec()).expect("ascii header");
    let body = &stored[end + 4..];
    for line in body.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        assert!(line.ends_with(b"\r"), "CRLF line ends");
        assert!(line.len() <= 77, "76 columns at most");
    }
    let b64: Vec<u8> = body
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64 body");
    (header, der)
}

#[test]
fn sealed_mail_opens_in_openssl_and_gpgsm_to_the_exact_entity() {
    let pki = pki();
    let cert = pki.cert("alice");
    let split = entity::split(MESSAGE);
    let stored = smime::seal(&cert, MESSAGE).expect("seal");
    assert!(relay::mailcrypt::is_encrypted(&stored));
    assert!(stored.starts_with(&split.outer));
    let (header, der) = unwrap_stored(&stored);
    let added = &header[split.outer.len()..];
    assert_eq!(
        added,
        "MIME-Version: 1.0\r\nContent-Type: application/pkcs7-mime; smime-type=enveloped-data; \
name=\"smime.p7m\"\r\nContent-Transfer-Encoding: base64\r\n\
Content-Disposition: attachment; filename=\"smime.p7m\"\r\n"
    );
    assert!(!header.contains("plan is"));

    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp");
    std::fs::write(work.path().join("stored.eml"), &stored).expect("write");
    std::fs::write(work.path().join("stored.p7m"), &der).expect("write");

    // openssl reads the whole stored message (S/MIME input) and the DER.
    let recip = pki.path("alice.pem");
    let key = pki.path("alice.key");
    for (file, form) in [("stored.eml", "SMIME"), ("stored.p7m", "DER")] {
        let out = openssl(
            work.path(),
            &[
                "cms",
                "-decrypt",
                "-inform",
                form,
                "-in",
                file,
                "-recip",
                recip.to_str().expect("utf-8"),
                "-inkey",
                key.to_str().expect("utf-8"),
                "-binary",
            ],
        );
        assert_eq!(out, split.inner, "openssl {form}");
    }
    let info = String::from_utf8(openssl(
        work.path(),
        &[
            "cms",
            "-cmsout",
            "-print",
            "-inform",
            "DER",
            "-in",
            "stored.p7m",
        ],
    ))
    .expect("utf-8");
    assert!(info.contains("aes-256-cbc"), "{info}");
    assert!(info.contains("rsaEncryption"), "{info}");

    // gpgsm, with the user's key imported from PKCS #12 into a fresh home.
    let home = Gpgsm::new(work.path());
    let p12 = work.path().join("alice.p12");
    openssl(
        work.path(),
        &[
            "pkcs12",
            "-export",
            "-inkey",
            key.to_str().expect("utf-8"),
            "-in",
            recip.to_str().expect("utf-8"),
            "-out",
            p12.to_str().expect("utf-8"),
            "-passout",
            "pass:",
            "-keypbe",
            "PBE-SHA1-3DES",
            "-certpbe",
            "PBE-SHA1-3DES",
            "-macalg",
            "sha1",
        ],
    );
    home.run(&["--import", pki.path("ca.pem").to_str().expect("utf-8")]);
    home.run(&["--import", p12.to_str().expect("utf-8")]);
    let out = home.run(&["--decrypt", "stored.p7m"]);
    assert_eq!(out, split.inner, "gpgsm");

    // A message with bare LFs and no Content-Type opens to the canonical entity too.
    let plain = b"From: bob@example.net\nSubject: x\n\nline one\nline two\n";
    let stored = smime::seal(&cert, plain).expect("seal");
    let (_, der) = unwrap_stored(&stored);
    std::fs::write(work.path().join("plain.p7m"), &der).expect("write");
    let out = home.run(&["--decrypt", "plain.p7m"]);
    assert_eq!(
        out,
        b"Content-Type: text/plain; charset=us-ascii\r\n\r\nline one\r\nline two\r\n".to_vec()
    );
}

/// A GnuPG home of its own; its agent is stopped when the test ends.
struct Gpgsm {
    home: PathBuf,
    cwd: PathBuf,
}

impl Gpgsm {
    fn new(work: &Path) -> Gpgsm {
        let home = work.join("gnupg");
        std::fs::create_dir(&home).expect("GNUPGHOME");
        std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .expect("chmod");
        std::fs::write(home.join("gpg-agent.conf"), "allow-loopback-pinentry\n").expect("conf");
        Gpgsm {
            home,
            cwd: work.to_path_buf(),
        }
    }

    fn run(&self, args: &[&str]) -> Vec<u8> {
        let out = Command::new("gpgsm")
            .args(["--batch", "--pinentry-mode", "loopback", "--passphrase", ""])
            .args(args)
            .env("GNUPGHOME", &self.home)
            .current_dir(&self.cwd)
            .stdin(Stdio::null())
            .output()
            .expect("run gpgsm");
        assert!(
            out.status.success(),
            "gpgsm {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }
}

impl Drop for Gpgsm {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .args(["--kill", "gpg-agent"])
            .env("GNUPGHOME", &self.home)
            .status();
    }
}

/// The message signed by `openssl cms -sign` as `signer` (`NAME.pem`, `NAME.key`).
fn sign(signer: &str, extra: &[&str]) -> Vec<u8> {
    let pki = pki();
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp");
    std::fs::write(work.path().join("in.eml"), SIGNED_CONTENT).expect("write");
    let cert = pki.path(&format!("{signer}.pem"));
    let key = pki.path(&format!("{signer}.key"));
    let mut args = vec![
        "cms",
        "-sign",
        "-in",
        "in.eml",
        "-signer",
        cert.to_str().expect("utf-8"),
        "-inkey",
        key.to_str().expect("utf-8"),
    ];
    args.extend_from_slice(extra);
    openssl(work.path(), &args)
}

const SIGNED_CONTENT: &[u8] =
    b"Content-Type: text/plain; charset=us-ascii\r\n\r\nhello, signed world\r\n";

/// Every line end CRLF, as the message is stored after SMTP (openssl writes LF headers).
fn crlf(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 32);
    for (i, &b) in message.iter().enumerate() {
        if b == b'\n' && (i == 0 || message[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

fn store() -> TrustStore {
    TrustStore::with_pem(&pki().read("ca.pem")).expect("trust store")
}

fn pass(signer: &str) -> Verdict {
    Verdict::Pass {
        signer: signer.to_string(),
    }
}

/// `message` with its first `from` replaced by `to`.
fn replace(message: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let at = message
        .windows(from.len())
        .position(|w| w == from)
        .expect("text to replace");
    let mut out = message.to_vec();
    out[at..at + from.len()].copy_from_slice(to);
    out
}

/// The opaque message with `from` replaced by `to` inside its (base64) signed data.
fn tamper_opaque(message: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let (header, der) = split_body(message);
    let der = replace(&der, from, to);
    let mut out = header;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    for line in b64.as_bytes().chunks(64) {
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn split_body(message: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let message = crlf(message);
    let end = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header end")
        + 4;
    let b64: Vec<u8> = message[end..]
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64");
    (message[..end].to_vec(), der)
}

#[test]
fn detached_and_opaque_signatures_pass() {
    // After the certificates are made: they are valid from the second they were issued.
    let trust = store();
    let now = SystemTime::now();
    let detached = sign("alice", &["-md", "sha256"]);
    assert_eq!(
        relay::mailcrypt::signature_kind(&detached),
        Some(relay::mailcrypt::SignatureKind::Smime)
    );
    // As openssl wrote it (LF headers, CRLF content) and as stored (CRLF throughout).
    assert_eq!(smime::verify(&detached, &trust, now), pass(ALICE));
    let verdict = smime::verify(&crlf(&detached), &trust, now);
    assert_eq!(verdict, pass(ALICE));
    assert_eq!(smime::verdict_result(&verdict), "pass");

    let opaque = sign("alice", &["-md", "sha256", "-nodetach"]);
    assert_eq!(smime::verify(&crlf(&opaque), &trust, now), pass(ALICE));
    let sha384 = sign("alice", &["-md", "sha384", "-nodetach"]);
    assert_eq!(smime::verify(&sha384, &trust, now), pass(ALICE));
    let sha512 = sign("alice", &["-md", "sha512"]);
    assert_eq!(smime::verify(&sha512, &trust, now), pass(ALICE));
    // ECDSA P-256.
    let ec = sign("ec", &["-md", "sha256"]);
    assert_eq!(smime::verify(&crlf(&ec), &trust, now), pass(ALICE));
    // Through an intermediate CA the message carries.
    let mid = pki().path("mid.pem");
    let carol = sign("carol", &["-certfile", mid.to_str().expect("utf-8")]);
    assert_eq!(
        smime::verify(&carol, &trust, now),
        pass("carol@example.org")
    );
}

#[test]
fn one_changed_byte_fails() {
    // After the certificates are made: they are valid from the second they were issued.
    let trust = store();
    let now = SystemTime::now();
    let detached = crlf(&sign("alice", &["-md", "sha256"]));
    let changed = replace(&detached, b"hello, signed", b"jello, signed");
    let verdict = smime::verify(&changed, &trust, now);
    assert!(matches!(verdict, Verdict::Fail { .. }), "{verdict:?}");
    assert_eq!(smime::verdict_result(&verdict), "fail");
    // An added line in the signed part.
    let added = replace(&detached, b"\r\n\r\nhello", b"\r\n\r\nHello");
    assert!(matches!(
        smime::verify(&added, &trust, now),
        Verdict::Fail { .. }
    ));

    let opaque = sign("alice", &["-md", "sha256", "-nodetach"]);
    assert_eq!(
        smime::verify(&tamper_opaque(&opaque, b"world", b"world"), &trust, now),
        pass(ALICE)
    );
    let changed = tamper_opaque(&opaque, b"hello, signed", b"hellO, signed");
    assert!(matches!(
        smime::verify(&changed, &trust, now),
        Verdict::Fail { .. }
    ));

    // The content intact but a signed attribute changed (one digit of signingTime): the
    // digest still matches, the signature over the attributes does not.
    let (header, mut der) = split_body(&opaque);
    let signing_time = [
        0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x05,
    ];
    let at = der
        .windows(signing_time.len())
        .position(|w| w == signing_time)
        .expect("signingTime attribute");
    // OID, SET header, UTCTime header, then YYMMDDHHMMSS: the last second digit.
    let digit = at + signing_time.len() + 2 + 2 + 11;
    assert_eq!(der[digit + 1], b'Z');
    der[digit] = if der[digit] == b'0' { b'1' } else { b'0' };
    let mut changed = header;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    for line in b64.as_bytes().chunks(64) {
        changed.extend_from_slice(line);
        changed.extend_from_slice(b"\r\n");
    }
    match smime::verify(&changed, &trust, now) {
        Verdict::Fail { reason } => assert!(reason.contains("signature"), "{reason}"),
        other => panic!("changed attribute: {other:?}"),
    }

    // RFC 8551 §2.1: SHA-1 is refused even when it verifies.
    let sha1 = sign("alice", &["-md", "sha1"]);
    assert!(matches!(
        smime::verify(&sha1, &trust, now),
        Verdict::Fail { .. }
    ));
}

#[test]
fn untrusted_signers_are_policy_results() {
    // After the certificates are made: they are valid from the second they were issued.
    let trust = store();
    let now = SystemTime::now();
    let untrusted =
        |message: &[u8], trust: &TrustStore, now: SystemTime, why: &str| match smime::verify(
            message, trust, now,
        ) {
            Verdict::Untrusted { signer, reason } => {
                assert_eq!(signer, ALICE);
                assert!(reason.contains(why), "{reason}");
            }
            other => panic!("{why}: {other:?}"),
        };
    // A CA outside the store.
    let stranger = sign("stranger", &["-md", "sha256"]);
    untrusted(&stranger, &trust, now, "trust anchor");
    assert_eq!(
        smime::verdict_result(&smime::verify(&stranger, &trust, now)),
        "policy"
    );
    // The web roots alone do not know the test CA.
    let alice = sign("alice", &["-md", "sha256"]);
    untrusted(
        &alice,
        &TrustStore::with_pem(&pki().read("otherca.pem")).expect("store"),
        now,
        "trust anchor",
    );
    // Expired, and checked at a time after the certificate's end.
    untrusted(&sign("expired", &["-md", "sha256"]), &trust, now, "expired");
    untrusted(
        &alice,
        &trust,
        now + Duration::from_secs(400 * 86_400),
        "expired",
    );
    // Only for TLS servers.
    untrusted(
        &sign("server", &["-md", "sha256"]),
        &trust,
        now,
        "e-mail protection",
    );
    // Without extended key usage at all.
    untrusted(
        &sign("signonly", &["-md", "sha256"]),
        &trust,
        now,
        "e-mail protection",
    );
    // Under an intermediate CA restricted to TLS servers.
    let tlsmid = pki().path("tlsmid.pem");
    untrusted(
        &sign("dave", &["-certfile", tlsmid.to_str().expect("utf-8")]),
        &trust,
        now,
        "CA certificate is not for e-mail protection",
    );
    // The intermediate left out of the message.
    let carol = sign("carol", &["-md", "sha256"]);
    match smime::verify(&carol, &trust, now) {
        Verdict::Untrusted { signer, reason } => {
            assert_eq!(signer, "carol@example.org");
            assert!(reason.contains("trust anchor"), "{reason}");
        }
        other => panic!("no intermediate: {other:?}"),
    }
}

#[test]
fn malformed_signatures_are_permerrors() {
    // After the certificates are made: they are valid from the second they were issued.
    let trust = store();
    let now = SystemTime::now();
    let detached = crlf(&sign("alice", &["-md", "sha256"]));
    let at = detached
        .windows(b"filename=\"smime.p7s\"\r\n\r\n".len())
        .position(|w| w == b"filename=\"smime.p7s\"\r\n\r\n")
        .expect("signature part")
        + b"filename=\"smime.p7s\"\r\n\r\n".len();
    let mut broken = detached.clone();
    broken[at..at + 8].copy_from_slice(b"AAAAAAAA");
    let verdict = smime::verify(&broken, &trust, now);
    assert!(matches!(verdict, Verdict::PermError { .. }), "{verdict:?}");
    assert_eq!(smime::verdict_result(&verdict), "permerror");
    assert!(TrustStore::with_pem(&pki().read("alice.key")).is_err());
}
