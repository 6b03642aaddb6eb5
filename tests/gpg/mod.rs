//! GnuPG in a throw-away home: generate a v4 key with an encryption subkey, export it,
//! import keys. For the tests that register users' keys (`tests/wkd.rs`,
//! `tests/web_settings.rs`; each uses part of it).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::common::{run_with_timeout, COMMAND_TIMEOUT};

pub struct Gpg {
    home: tempfile::TempDir,
}

impl Gpg {
    /// A fresh `GNUPGHOME` (0700, as gpg wants).
    pub fn new() -> Gpg {
        use std::os::unix::fs::PermissionsExt;
        let home = tempfile::Builder::new()
            .prefix("gpg-")
            .tempdir()
            .expect("a temporary GNUPGHOME");
        std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o700))
            .expect("chmod 700 GNUPGHOME");
        Gpg { home }
    }

    /// Runs gpg in this home; panics (with its stderr) when it fails.
    pub fn run(&self, args: &[&str]) -> Output {
        let output = run_with_timeout(
            Command::new("gpg")
                .env("GNUPGHOME", self.home.path())
                .args(["--batch", "--no-tty", "--passphrase", ""])
                .args(args),
            COMMAND_TIMEOUT,
        );
        assert!(
            output.status.success(),
            "gpg {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// Generates an ed25519 key for `uid` that never expires, with a cv25519 encryption
    /// subkey (`--quick-gen-key` with an algorithm makes the primary key only); its
    /// fingerprint.
    pub fn generate(&self, uid: &str) -> String {
        self.run(&["--quick-gen-key", uid, "ed25519", "default", "never"]);
        let fingerprint = self
            .fingerprints(uid)
            .into_iter()
            .next()
            .expect("the new key");
        self.run(&["--quick-add-key", &fingerprint, "cv25519", "encr", "never"]);
        fingerprint
    }

    /// The primary key fingerprints gpg lists for `who`.
    pub fn fingerprints(&self, who: &str) -> Vec<String> {
        let listed = self.run(&["--with-colons", "--list-keys", who]);
        let text = String::from_utf8_lossy(&listed.stdout).into_owned();
        let mut primary = false;
        let mut out = Vec::new();
        for line in text.lines() {
            let fields: Vec<&str> = line.split(':').collect();
            match fields.first() {
                Some(&"pub") => primary = true,
                Some(&"sub") => primary = false,
                Some(&"fpr") if primary => {
                    out.push(fields.get(9).unwrap_or(&"").to_string());
                    primary = false;
                }
                _ => {}
            }
        }
        out
    }

    /// `gpg --export who` (binary).
    pub fn export(&self, who: &str) -> Vec<u8> {
        self.run(&["--export", who]).stdout
    }

    /// Writes `gpg --export who` to a file in this home; its path.
    pub fn export_file(&self, who: &str) -> PathBuf {
        let path = self.home.path().join("export.gpg");
        std::fs::write(&path, self.export(who)).expect("write the exported key");
        path
    }

    /// `gpg --import` of `bytes` (a file in this home).
    pub fn import(&self, bytes: &[u8]) -> Output {
        let path = self.home.path().join("import.gpg");
        std::fs::write(&path, bytes).expect("write the key to import");
        self.run(&["--import", path.to_str().expect("a UTF-8 path")])
    }
}

impl Drop for Gpg {
    /// Stops the agent gpg started for this home.
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", self.home.path())
            .args(["--kill", "all"])
            .output();
    }
}

/// The path of `gpg-wks-client` (not on `PATH` in Debian's package).
pub fn wks_client() -> &'static str {
    if Path::new("/usr/lib/gnupg/gpg-wks-client").exists() {
        "/usr/lib/gnupg/gpg-wks-client"
    } else {
        "gpg-wks-client"
    }
}
