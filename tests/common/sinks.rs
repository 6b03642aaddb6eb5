//! Next hops for the delivery tests, on loopback: Postfix's `smtp-sink` (an SMTP server no one
//! here wrote, from Debian's postfix package) and a scripted Python sink
//! (`tests/py/scripted_sink.py`) for fault injection. Each is killed when dropped.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Sink {
    child: Child,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port nothing listens on right now (for a sink started later).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("local addr").port()
}

fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("sink on {addr} never listened");
}

impl Sink {
    /// The scripted sink on `port` (0: any), with its script options.
    pub fn scripted(port: u16, options: &[&str]) -> Sink {
        let tmp = tempfile::Builder::new()
            .prefix("relay-sink-")
            .tempdir()
            .expect("temp dir");
        let dir = tmp.path().join("mail");
        std::fs::create_dir(&dir).expect("mail dir");
        let mut child = Command::new("python3")
            .arg(super::repo_path("tests/py/scripted_sink.py"))
            .arg(&dir)
            .args(["--port", &port.to_string()])
            .args(options)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 tests/py/scripted_sink.py");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("sink's first line");
        let port: u16 = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("sink said {line:?}"));
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        Sink {
            child,
            addr,
            dir,
            _tmp: tmp,
        }
    }

    /// Postfix's `smtp-sink`, dumping each transaction to a file in `dir`.
    pub fn postfix_smtp_sink() -> Sink {
        let tmp = tempfile::Builder::new()
            .prefix("relay-smtp-sink-")
            .tempdir()
            .expect("temp dir");
        let dir = tmp.path().join("dump");
        std::fs::create_dir(&dir).expect("dump dir");
        // smtp-sink drops privileges to -u when run as root; that user must write the dumps.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let port = free_port();
        let mut command = Command::new(smtp_sink_bin());
        command.arg("-d").arg(format!("{}/%H%M%S.", dir.display()));
        // SAFETY: getuid has no preconditions.
        if unsafe { libc::getuid() } == 0 {
            command.args(["-u", "nobody"]);
        }
        let child = command
            .arg(format!("127.0.0.1:{port}"))
            .arg("100")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("smtp-sink (Debian package postfix; tests/run.sh installs it)");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_listening(addr);
        Sink {
            child,
            addr,
            dir,
            _tmp: tmp,
        }
    }

    /// Kills the sink process, keeping the messages it wrote.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Every message file so far (complete ones only).
    pub fn messages(&self) -> Vec<Vec<u8>> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        names.retain(|p| p.extension().is_none_or(|e| e != "tmp"));
        names.sort();
        names.iter().filter_map(|p| std::fs::read(p).ok()).collect()
    }

    /// Waits until at least `n` messages arrived; returns them.
    pub fn wait_messages(&self, n: usize, timeout: Duration) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.messages();
            if got.len() >= n {
                // smtp-sink writes a dump while the transaction runs: a file is whole once
                // it stops changing (no event marks the end, so this polls, bounded).
                std::thread::sleep(Duration::from_millis(100));
                if self.messages() == got {
                    return got;
                }
                continue;
            }
            if Instant::now() > deadline {
                panic!(
                    "sink got {} messages, wanted {n}, within {timeout:?}",
                    got.len()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn smtp_sink_bin() -> &'static str {
    for candidate in ["/usr/sbin/smtp-sink", "/usr/bin/smtp-sink"] {
        if Path::new(candidate).exists() {
            return candidate;
        }
    }
    "smtp-sink"
}

/// The envelope lines (`MAIL:`/`RCPT:`) and the data of a scripted sink's message file.
pub fn split_scripted(file: &[u8]) -> (Vec<String>, Vec<u8>) {
    let at = super::find(file, b"\n\n").expect("header separator");
    let head = String::from_utf8_lossy(&file[..at])
        .lines()
        .map(str::to_string)
        .collect();
    (head, file[at + 2..].to_vec())
}
