//! Redis and PostgreSQL servers for the cluster tests: Debian's `redis-server` and
//! PostgreSQL 15, each on a free loopback port with its data in a temporary directory,
//! started as child processes (never the system services) and killed on drop. `stop` and
//! `start` again on the same port let a test take a service away mid-run.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{run_with_timeout, Log, Process, COMMAND_TIMEOUT};

const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A port nobody listens on now (the kernel's choice for port 0, released again).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("local addr").port()
}

/// Waits until `addr` accepts a TCP connection.
fn wait_listening(addr: SocketAddr, log: &Log, what: &str) {
    let deadline = Instant::now() + START_TIMEOUT;
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on {addr}:\n{}",
            log.render()
        );
        // No event to wait on for "the port is open" but the output line, whose wording
        // changes between versions; poll, bounded by the deadline.
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn spawn(mut command: Command, what: &str) -> (Process, Arc<Log>) {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e} (tests/run.sh installs it)"));
    let log = Log::new();
    log.follow(child.stdout.take().expect("stdout"));
    log.follow(child.stderr.take().expect("stderr"));
    (Process::new(child), log)
}

/// A Redis server without persistence (the tests need none), optionally with a password.
pub struct Redis {
    dir: tempfile::TempDir,
    pub port: u16,
    password: Option<String>,
    process: Option<(Process, Arc<Log>)>,
}

impl Redis {
    pub fn start() -> Redis {
        Self::start_with_password(None)
    }

    pub fn start_with_password(password: Option<&str>) -> Redis {
        let mut redis = Redis {
            dir: tempfile::tempdir().expect("tempdir"),
            port: free_port(),
            password: password.map(str::to_string),
            process: None,
        };
        redis.resume();
        redis
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts it again (same port) after [`Redis::stop`].
    pub fn resume(&mut self) {
        assert!(self.process.is_none(), "redis is running");
        let mut command = Command::new("redis-server");
        command.args([
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
        ]);
        command.arg(self.dir.path());
        if let Some(password) = &self.password {
            command.args(["--requirepass", password]);
        }
        let (process, log) = spawn(command, "redis-server");
        wait_listening(self.addr(), &log, "redis-server");
        self.process = Some((process, log));
    }

    /// Kills it (SIGKILL: an outage, not a shutdown).
    pub fn stop(&mut self) {
        if let Some((process, _)) = self.process.take() {
            process.signal(libc::SIGKILL);
            process.wait_exit(START_TIMEOUT);
        }
    }

    /// `redis-cli ARGS…` against this server; its stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut command = Command::new("redis-cli");
        command.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some(password) = &self.password {
            command.env("REDISCLI_AUTH", password);
        }
        command.args(args);
        let output = run_with_timeout(&mut command, COMMAND_TIMEOUT);
        assert!(output.status.success(), "redis-cli {args:?} failed");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// PostgreSQL 15 in its own data directory, trust authentication on loopback for the
/// superuser `postgres`, and a database `relay`. Root runs it as the `postgres` user
/// (PostgreSQL refuses to run as root).
pub struct Postgres {
    dir: tempfile::TempDir,
    pub port: u16,
    process: Option<(Process, Arc<Log>)>,
}

fn pg_bin(name: &str) -> PathBuf {
    for version in ["17", "16", "15"] {
        let path = PathBuf::from(format!("/usr/lib/postgresql/{version}/bin/{name}"));
        if path.exists() {
            return path;
        }
    }
    PathBuf::from(name)
}

/// The uid and gid to run PostgreSQL as: `postgres` when we are root, else ourselves.
fn pg_ids() -> Option<(u32, u32)> {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        return None;
    }
    let id = |flag: &str| {
        let output = run_with_timeout(Command::new("id").args([flag, "postgres"]), COMMAND_TIMEOUT);
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse::<u32>()
            .expect("the postgres user (Debian's postgresql package creates it)")
    };
    Some((id("-u"), id("-g")))
}

fn as_postgres(command: &mut Command) {
    if let Some((uid, gid)) = pg_ids() {
        command.uid(uid).gid(gid);
    }
}

impl Postgres {
    pub fn start() -> Postgres {
        let dir = tempfile::tempdir().expect("tempdir");
        if let Some((uid, gid)) = pg_ids() {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown");
        }
        let data = dir.path().join("data");
        let mut initdb = Command::new(pg_bin("initdb"));
        initdb
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
                "-D",
            ])
            .arg(&data);
        as_postgres(&mut initdb);
        let output = run_with_timeout(&mut initdb, COMMAND_TIMEOUT);
        assert!(
            output.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let mut postgres = Postgres {
            dir,
            port: free_port(),
            process: None,
        };
        postgres.resume();
        postgres.psql("postgres", "CREATE DATABASE relay");
        postgres
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The relay's `cluster.postgres.conninfo` for the database `relay`.
    pub fn conninfo(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=relay",
            self.port
        )
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn resume(&mut self) {
        assert!(self.process.is_none(), "postgres is running");
        let mut command = Command::new(pg_bin("postgres"));
        command
            .arg("-D")
            .arg(self.data())
            .args([
                "-p",
                &self.port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
            ])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.dir.path().display()
            ));
        as_postgres(&mut command);
        let (process, log) = spawn(command, "postgres");
        let ready = log.wait_for(START_TIMEOUT, |line| {
            line.contains("ready to accept connections")
        });
        assert!(ready.is_some(), "postgres did not start:\n{}", log.render());
        self.process = Some((process, log));
    }

    /// SIGKILL: an outage (PostgreSQL recovers from its WAL at the next start).
    pub fn stop(&mut self) {
        if let Some((process, _)) = self.process.take() {
            process.signal(libc::SIGKILL);
            process.wait_exit(START_TIMEOUT);
        }
        // A killed postmaster leaves its children and shared memory for a moment; the next
        // start waits for them through its own lock file checks.
    }

    /// `psql` on `database`: runs `sql`, returns its unaligned, tuples-only output.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let mut command = Command::new("psql");
        command
            .args(["-X", "-v", "ON_ERROR_STOP=1", "-A", "-t", "-h", "127.0.0.1"])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                database,
                "-c",
                sql,
            ]);
        let output = run_with_timeout(&mut command, COMMAND_TIMEOUT);
        assert!(
            output.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}
