//! The admin socket's file: created mode 0600 without a window in which anyone else could
//! connect, replacing a stale file left by a killed relay, never a live one.
//!
//! The socket is bound inside a fresh private directory (0700) next to its final path, made
//! 0600, then renamed into place: `rename(2)` swaps it in atomically, so a client sees either
//! the old (dead) file or the new one, and nobody could connect while the mode was still the
//! umask's. At stop the file is removed only if it is still ours (same inode).

use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Why the admin socket could not be set up; each names `admin.socket`.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error(
        "admin.socket {0}: another relay answers on this socket; stop it, or give this \
         instance its own spool.dir or admin.socket"
    )]
    InUse(PathBuf),
    #[error("admin.socket {0}: exists and is not a socket; remove it or set admin.socket")]
    NotASocket(PathBuf),
    #[error("admin.socket {path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("admin.socket {0}: {1}")]
    Path(PathBuf, String),
}

/// A bound admin socket and the identity of its file.
#[derive(Debug)]
pub struct BoundSocket {
    pub listener: UnixListener,
    pub path: PathBuf,
    dev_ino: (u64, u64),
}

/// Binds `path` (see the module doc).
pub fn bind(path: &Path) -> Result<BoundSocket, SocketError> {
    let io = |what: &'static str| {
        move |source| SocketError::Io {
            path: path.to_path_buf(),
            what,
            source,
        }
    };
    crate::config::admin::check_socket_path(path)
        .map_err(|m| SocketError::Path(path.to_path_buf(), m))?;
    refuse_if_live(path)?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // Short, so that it fits `sun_path` whenever the final path does not need much more.
    let private = parent.join(format!(".admin-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(io("cannot create a private directory next to it"))?;
    let staged = private.join("s");
    let result = (|| {
        crate::config::admin::check_socket_path(&staged)
            .map_err(|m| SocketError::Path(path.to_path_buf(), m))?;
        let listener = UnixListener::bind(&staged).map_err(io("cannot bind"))?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))
            .map_err(io("cannot make it 0600"))?;
        std::fs::rename(&staged, path).map_err(io("cannot move it into place"))?;
        let meta = std::fs::symlink_metadata(path).map_err(io("cannot stat"))?;
        Ok(BoundSocket {
            listener,
            path: path.to_path_buf(),
            dev_ino: (meta.dev(), meta.ino()),
        })
    })();
    let _ = std::fs::remove_dir_all(&private);
    result
}

impl BoundSocket {
    /// Removes the socket file if it is still the one this process bound.
    pub fn remove(&self) {
        if let Ok(meta) = std::fs::symlink_metadata(&self.path) {
            if (meta.dev(), meta.ino()) == self.dev_ino {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// An existing socket file someone answers on is another relay's: refuse. A dead one is
/// replaced by the rename; anything but a socket is refused.
fn refuse_if_live(path: &Path) -> Result<(), SocketError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(SocketError::Io {
                path: path.to_path_buf(),
                what: "cannot stat",
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(SocketError::NotASocket(path.to_path_buf()));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(SocketError::InUse(path.to_path_buf())),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(SocketError::Io {
            path: path.to_path_buf(),
            what: "exists and belongs to someone else",
            source: e,
        }),
        // Refused (nobody listens) or vanished meanwhile: stale.
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_is_0600_replaces_a_stale_file_and_refuses_a_live_one() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("admin.sock");
        // A stale socket file: bound, then its listener dropped.
        drop(UnixListener::bind(&path).expect("stale"));
        let bound = bind(&path).expect("replaces the stale file");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        UnixStream::connect(&path).expect("connectable");
        let err = bind(&path).expect_err("live");
        assert!(matches!(err, SocketError::InUse(_)), "{err}");
        assert!(err.to_string().contains("admin.socket"), "{err}");
        // Nothing left next to it.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("admin.sock")]);
        bound.remove();
        assert!(!path.exists());

        std::fs::write(&path, "not a socket").expect("file");
        assert!(matches!(bind(&path), Err(SocketError::NotASocket(_))));
    }
}
