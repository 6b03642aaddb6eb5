//! Real IMAP clients against the relay: curl (`imap://`, `imaps://`) and isync's mbsync
//! syncing a relay account both ways with a local Maildir; results checked over imaplib.

#[macro_use]
mod common;
mod imap_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::smtp::message;
use common::tls::TestCert;
use common::{
    describe, run_with_timeout, split_received, Engine, Relay, Settings, COMMAND_TIMEOUT,
    TEST_PASSWORD,
};
use imap_support::{fetch_all, Py, A};

engine_tests! {
    curl_fetch_by_uid_and_list: curl_fetch_by_uid_and_list_uring, curl_fetch_by_uid_and_list_epoll;
    mbsync_pull_and_push: mbsync_pull_and_push_uring, mbsync_pull_and_push_epoll;
}

fn imap_port(relay: &Relay) -> u16 {
    relay.listening("imap").expect("imap listener").port()
}

fn curl(args: &[&str]) -> Vec<u8> {
    let output = run_with_timeout(
        Command::new("curl")
            .args(["-sS", "--max-time", "30", "--user"])
            .arg(format!("bob:{TEST_PASSWORD}"))
            .args(args),
        COMMAND_TIMEOUT,
    );
    assert!(
        output.status.success(),
        "curl {args:?}: {}",
        describe(&output)
    );
    output.stdout
}

fn curl_fetch_by_uid_and_list(engine: Engine) {
    let dir = tempfile::tempdir().expect("temp dir");
    let cert = TestCert::generate(dir.path(), "relay");
    let mut settings = Settings::new(engine);
    settings.imap_toml = "tls_listen = [\"127.0.0.1:0\"]\n".into();
    settings.extra_toml = cert.toml();
    let relay = Relay::start(settings);
    let first = message("curl-1", &["one"]);
    let second = message("curl-2", &["two", "", "three"]);
    relay.deliver(&["bob@example.test"], &first);
    relay.deliver(&["bob@example.test"], &second);
    let mut py = Py::spawn();
    py.login("a", imap_port(&relay), "bob");
    py.ok("a", "select", &[A::S("INBOX")]);
    let stored = fetch_all(&mut py, "a");
    let uids: Vec<u64> = stored.keys().copied().collect();
    let imaps = relay.listening("imaps").expect("imaps listener").port();
    let cafile = cert.cert_path.to_str().expect("utf-8 path");

    let plain = curl(&[&format!(
        "imap://127.0.0.1:{}/INBOX;UID={}",
        imap_port(&relay),
        uids[1]
    )]);
    assert_eq!(plain, stored[&uids[1]].2, "curl imap:// UID fetch");
    assert_eq!(split_received(&plain).1, &second[..]);
    let tls = curl(&[
        "--cacert",
        cafile,
        &format!("imaps://127.0.0.1:{imaps}/INBOX;UID={}", uids[0]),
    ]);
    assert_eq!(tls, stored[&uids[0]].2, "curl imaps:// UID fetch");
    let starttls = curl(&[
        "--ssl-reqd",
        "--cacert",
        cafile,
        &format!(
            "imap://127.0.0.1:{}/INBOX;UID={}",
            imap_port(&relay),
            uids[0]
        ),
    ]);
    assert_eq!(starttls, stored[&uids[0]].2, "curl STARTTLS UID fetch");

    let list = String::from_utf8(curl(&[&format!("imap://127.0.0.1:{}/", imap_port(&relay))]))
        .expect("utf-8");
    for name in ["INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive"] {
        assert!(
            list.lines()
                .any(|l| l.starts_with("* LIST")
                    && l.trim_end().trim_end_matches('"').ends_with(name)),
            "{name} not listed by curl:\n{list}"
        );
    }
}

fn maildir_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for sub in ["new", "cur"] {
        if let Ok(entries) = std::fs::read_dir(dir.join(sub)) {
            out.extend(entries.flatten().map(|e| e.path()));
        }
    }
    out.sort();
    out
}

/// A message as the Maildir side holds it: mbsync stores LF line ends (CRLF on the IMAP
/// side) and may add an `X-TUID:` header to find a message again; compared in this form.
fn without_tuid(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&strip_tuid(bytes)).replace("\r\n", "\n")
}

fn strip_tuid(bytes: &[u8]) -> Vec<u8> {
    let text = bytes.to_vec();
    let mut out = Vec::new();
    let mut rest = &text[..];
    while !rest.is_empty() {
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .map_or(rest.len(), |p| p + 1);
        if !rest.starts_with(b"X-TUID: ") {
            out.extend_from_slice(&rest[..end]);
        }
        rest = &rest[end..];
    }
    out
}

fn mbsync(config: &Path) {
    let output = run_with_timeout(
        Command::new("mbsync").arg("-c").arg(config).arg("-a"),
        COMMAND_TIMEOUT,
    );
    assert!(output.status.success(), "mbsync: {}", describe(&output));
}

fn mbsync_pull_and_push(engine: Engine) {
    if Command::new("mbsync").arg("--version").output().is_err() {
        eprintln!("SKIPPED: mbsync (isync) is not installed");
        return;
    }
    let relay = Relay::start(Settings::new(engine));
    let sent: Vec<Vec<u8>> = (0..3)
        .map(|i| message(&format!("mbsync-{i}"), &["body"]))
        .collect();
    for m in &sent {
        relay.deliver(&["one@example.test"], m);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let maildir = dir.path().join("mail");
    std::fs::create_dir_all(&maildir).expect("mkdir");
    let config = dir.path().join("mbsyncrc");
    std::fs::write(
        &config,
        format!(
            "IMAPAccount relay\nHost 127.0.0.1\nPort {port}\nUser one\nPass {TEST_PASSWORD}\nSSLType None\nAuthMechs LOGIN\n\n\
             IMAPStore relay-far\nAccount relay\n\n\
             MaildirStore local\nPath {md}/\nInbox {md}/INBOX\nSubFolders Verbatim\n\n\
             Channel relay\nFar :relay-far:\nNear :local:\nPatterns *\nCreate Both\nExpunge Both\nSyncState *\nSync All\n",
            port = imap_port(&relay),
            md = maildir.display()
        ),
    )
    .expect("write mbsyncrc");

    // Pull: the three messages, byte for byte, and the special-use folders.
    mbsync(&config);
    let inbox = maildir.join("INBOX");
    let files = maildir_files(&inbox);
    assert_eq!(files.len(), 3, "{files:?}");
    let mut pulled: Vec<String> = files
        .iter()
        .map(|f| without_tuid(&std::fs::read(f).expect("read")))
        .collect();
    pulled.sort();
    let mut py = Py::spawn();
    py.login("a", imap_port(&relay), "one");
    py.ok("a", "select", &[A::S("INBOX")]);
    let mut on_relay: Vec<String> = fetch_all(&mut py, "a")
        .into_values()
        .map(|(_, _, b)| without_tuid(&b))
        .collect();
    on_relay.sort();
    assert_eq!(
        pulled, on_relay,
        "mbsync pulled other bytes than the relay serves"
    );
    for folder in ["Sent", "Archive", "Trash"] {
        assert!(
            maildir.join(folder).join("cur").is_dir(),
            "{folder} not created locally"
        );
    }

    // Push: flags set locally (\Flagged \Seen on one message) and a locally appended message.
    let target = &files[0];
    let target_body = std::fs::read(target).expect("read");
    let name = target
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let base = name.split(":2,").next().expect("base").to_string();
    std::fs::rename(target, inbox.join("cur").join(format!("{base}:2,FS"))).expect("rename");
    let local = b"From: me@example.test\nSubject: written locally\n\nlocal body\n".to_vec();
    std::fs::write(inbox.join("new").join("1700000000.local.host"), &local).expect("write");
    let archived = b"From: me@example.test\nSubject: archived locally\n\nkeep\n".to_vec();
    std::fs::write(
        maildir
            .join("Archive")
            .join("new")
            .join("1700000001.local.host"),
        &archived,
    )
    .expect("write");
    mbsync(&config);

    py.ok("a", "noop", &[]);
    let now = fetch_all(&mut py, "a");
    assert_eq!(now.len(), 4, "{now:?}");
    let flagged: Vec<_> = now
        .values()
        .filter(|(f, _, _)| f.contains("\\Flagged"))
        .collect();
    assert_eq!(flagged.len(), 1, "{now:?}");
    assert!(flagged[0].0.contains("\\Seen"));
    assert_eq!(without_tuid(&flagged[0].2), without_tuid(&target_body));
    assert!(
        now.values().any(|(_, _, b)| strip_tuid(b)
            == b"From: me@example.test\r\nSubject: written locally\r\n\r\nlocal body\r\n"),
        "the locally written message is not on the relay"
    );
    py.ok("a", "select", &[A::S("Archive")]);
    let archive = fetch_all(&mut py, "a");
    assert_eq!(archive.len(), 1);
    assert_eq!(
        without_tuid(&archive.values().next().expect("one").2),
        without_tuid(&archived)
    );

    // Delete on the relay, expunge locally on the next sync.
    py.ok("a", "select", &[A::S("INBOX")]);
    py.ok(
        "a",
        "store",
        &[A::S("1"), A::S("+FLAGS.SILENT"), A::S("(\\Deleted)")],
    );
    py.ok("a", "expunge", &[]);
    mbsync(&config);
    assert_eq!(maildir_files(&inbox).len(), 3);
}
