//! Small files replaced whole: after a crash at any point the reader finds the old contents
//! or the new, never a mix or nothing. The new bytes go to a temporary file beside the target
//! (same directory, so the rename stays on one file system), which is fsynced, renamed over the
//! target (`rename(2)` is atomic), and then the directory is fsynced so the rename itself
//! survives a power loss.
//!
//! Every file written here is 0600: they hold keys, password hashes and report state.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Replaces `path` with `bytes` durably (the module's contract).
pub fn replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace_inner(path, bytes, None)
}

/// [`replace`], the new file given the owner of `owner_of` first (a file written by root for a
/// relay that runs as its own user must stay readable by the relay; only root can chown, and
/// for anyone else the owners already match).
pub fn replace_owned_like(path: &Path, bytes: &[u8], owner_of: &Path) -> io::Result<()> {
    replace_inner(path, bytes, Some(owner_of))
}

/// Removes `path` durably; false when it did not exist.
pub fn remove(path: &Path) -> io::Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => {
            sync_dir(parent(path))?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Makes the entries of `dir` (files created, renamed or removed in it) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Gives `path` the owner of `like` when they differ.
pub fn same_owner(like: &Path, path: &Path) -> io::Result<()> {
    let want = std::fs::metadata(like)?;
    let have = std::fs::metadata(path)?;
    if (want.uid(), want.gid()) != (have.uid(), have.gid()) {
        std::os::unix::fs::chown(path, Some(want.uid()), Some(want.gid()))?;
    }
    Ok(())
}

/// The temporary file's name: the target's with `.tmp` appended (not swapped for its
/// extension: `a.json` and `a.pem` in one directory must not share one).
fn temporary(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn replace_inner(path: &Path, bytes: &[u8], owner_of: Option<&Path>) -> io::Result<()> {
    let tmp = temporary(path);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    if let Some(like) = owner_of {
        same_owner(like, &tmp)?;
    }
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    sync_dir(parent(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replace_writes_whole_files_0600_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        replace(&path, b"one").unwrap();
        replace(&path, b"two, longer").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two, longer");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
    }

    #[test]
    fn a_stale_temporary_from_a_crash_does_not_matter() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(dir.path().join("keys.tmp"), b"half writ").unwrap();
        replace(&path, b"whole").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"whole");
        assert!(!dir.path().join("keys.tmp").exists());
    }

    #[test]
    fn files_differing_only_in_extension_use_different_temporaries() {
        assert_ne!(
            temporary(Path::new("/d/a.json")),
            temporary(Path::new("/d/a.pem"))
        );
        assert_eq!(temporary(Path::new("a")), PathBuf::from("a.tmp"));
    }

    #[test]
    fn remove_says_whether_there_was_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        assert!(!remove(&path).unwrap());
        replace(&path, b"x").unwrap();
        assert!(remove(&path).unwrap());
        assert!(!path.exists());
    }

    #[test]
    fn a_relative_name_uses_the_current_directory() {
        assert_eq!(parent(Path::new("file")), Path::new("."));
        assert_eq!(parent(Path::new("/d/file")), Path::new("/d"));
    }
}
