//! Shared harness of the integration and crash tests: the real `relay` binary, started on
//! port 0 (SMTP and POP3) in a temporary directory, observed only through what an operator or
//! a client sees (its log on stderr, SMTP replies, POP3 responses, `relay spool ls|cat`, exit
//! status, /proc).
//!
//! Rule (docs/ARCHITECTURE.md §11): nothing sleeps to wait for an event. Waits are on the event
//! itself (a log line, a reply, EOF, a child's exit), each with a deadline, so a broken relay
//! fails a test instead of hanging it. The only polling is where the kernel gives no event to
//! wait on, always bounded: /proc (fd counts), admission retries, POP3 logins retried while a
//! finished session's maildrop lock is released (`-ERR [IN-USE]`, see `pop3.rs`), and the
//! spool directory in the compaction crash test.
//!
//! Every relay's stderr is kept; when a test panics, `Drop` prints it, so a failure shows what
//! the relay said.

#![allow(dead_code)]

pub mod cluster;
pub mod dns;
pub mod json;
pub mod pop3;
pub mod services;
pub mod sinks;
pub mod smtp;
pub mod tls;

use std::ffi::OsStr;
use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub use smtp::Client;

/// How long the relay may take to start (recovery of a crash-test spool included).
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopped relay may take to exit.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on one run of a helper command (`relay spool ls`, `curl`, `python3`).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a POP3 session that ended (QUIT, dropped connection) may keep its maildrop
/// lock: the server notices the close asynchronously, so a new login retries until then.
pub const LOCK_RELEASE_TIMEOUT: Duration = Duration::from_secs(20);

/// The path of the binary under test, built by cargo for the integration tests; or
/// `RELAY_TEST_BIN` when set (a target directory shared by several worktrees holds whichever
/// `relay` was linked last, so a run can pin a copy of its own).
pub fn relay_bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("RELAY_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_relay").into())
    })
}

/// Path of a file in the repository (tests/py/…).
pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

// ---------------------------------------------------------------------------------------------
// Engines and configuration

/// The I/O engine a test runs on; every integration test runs once per engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Uring,
    Epoll,
}

impl Engine {
    /// The `server.io` value that forces this engine.
    pub fn io(self) -> &'static str {
        match self {
            Engine::Uring => "uring",
            Engine::Epoll => "epoll",
        }
    }

    /// How the `relay ready` line names it (`engine=…`).
    pub fn ready_name(self) -> &'static str {
        match self {
            Engine::Uring => "io_uring",
            Engine::Epoll => "epoll",
        }
    }
}

/// Generates one `#[test]` per engine from a test body `fn body(engine: Engine)`:
/// `engine_tests! { body: body_uring, body_epoll; }` (the test file says `#[macro_use] mod common;`).
macro_rules! engine_tests {
    ($($body:ident: $uring:ident, $epoll:ident;)*) => {$(
        #[test]
        fn $uring() {
            $body($crate::common::Engine::Uring)
        }
        #[test]
        fn $epoll() {
            $body($crate::common::Engine::Epoll)
        }
    )*};
}

/// The test config template (see the test brief), with the knobs tests turn.
#[derive(Clone)]
pub struct Settings {
    /// `server.io`: "uring", "epoll" or "auto".
    pub io: String,
    /// The engine the `relay ready` line must name (None: do not check).
    pub expect_engine: Option<&'static str>,
    pub cores: usize,
    pub drain_timeout: String,
    pub connections_per_ip_max: usize,
    pub command_timeout: String,
    pub data_timeout: String,
    pub message_size_max: String,
    pub recipients_max: usize,
    pub allowed_networks: Vec<String>,
    pub local_domains: Vec<String>,
    pub segment_size: Option<String>,
    /// `spool.compact_interval` (the relay's default when None).
    pub compact_interval: Option<String>,
    /// `smtp.vrfy` / `smtp.expn` (the relay's defaults, false, when None).
    pub vrfy: Option<bool>,
    pub expn: Option<bool>,
    /// `smtp.proxy_protocol` / `pop3.proxy_protocol` (the relay's defaults, false, when None).
    pub proxy_protocol: Option<bool>,
    pub pop3_proxy_protocol: Option<bool>,
    /// `[local.aliases]`: `("team@example.test", ["alice", "bob"])`.
    pub aliases: Vec<(String, Vec<String>)>,
    /// The quota of [`QUOTA_USER`] (`[[local.users]] quota`).
    pub quota_user_quota: String,
    /// `pop3.auth_failure_delay`: short, so failed logins do not slow the tests down.
    pub pop3_auth_failure_delay: String,
    /// `pop3.auth_failures_per_ip_max` / `pop3.auth_failure_window` (defaults when None).
    pub pop3_auth_failures_per_ip_max: Option<u32>,
    pub pop3_auth_failure_window: Option<String>,
    /// `policy.blocked_extensions` (not written when empty).
    pub blocked_extensions: Vec<String>,
    /// `(user, secret)`: `apop_secret` of these test users (APOP is offered only when one
    /// is set).
    pub apop_secrets: Vec<(String, String)>,
    /// `RELAY_LOG` for the process ("info"; "debug" or "trace" to check what those say).
    pub log_level: &'static str,
    /// Run in the child between fork and exec (rlimits, seccomp). Must be async-signal-safe.
    pub pre_exec: Option<fn() -> std::io::Result<()>>,
    /// A command the relay is started through (it must exec its last arguments, the relay's
    /// command line), e.g. `tests/py/seccomp_exec.py --`; empty: the relay itself.
    pub wrapper: Vec<String>,
    /// The whole config file instead of the rendered template (e.g. a shipped config with
    /// its addresses and `spool.dir` (`<workdir>/spool`) substituted); the knobs above then
    /// do nothing.
    pub raw_config: Option<String>,
    /// `[[relay.routes]]` as `(domain, to)`. The default sends every remote domain to a
    /// closed loopback port: tests never make DNS queries or leave the machine.
    pub routes: Vec<(String, String)>,
    /// TOML appended at the end (e.g. a `[delivery]` section).
    pub extra_toml: String,
    /// TOML lines inside the `[smtp]` section (e.g. `allow_plaintext_auth = true`).
    pub smtp_toml: String,
    /// TOML lines inside the `[pop3]` section (e.g. `tls_listen = [...]`).
    pub pop3_toml: String,
    /// TOML lines inside the `[imap]` section (e.g. `tls_listen = [...]`).
    pub imap_toml: String,
    /// TOML lines inside the `[server]` section (e.g. `dns_servers = [...]`).
    pub server_toml: String,
    /// `smtp.listen`: one address (port 0 picks a free port).
    pub smtp_listen: String,
    /// The `[admin]` section: by default the TCP listener on port 0 (for `/metrics`; found
    /// from its `listening` line) besides the socket in the spool; empty for the default
    /// config (socket only).
    pub admin_toml: String,
}

/// Local mailboxes every test relay has, all with the password [`TEST_PASSWORD`].
pub const TEST_USERS: [&str; 7] = ["one", "two", "three", "sink", "postmaster", "alice", "bob"];
/// One more mailbox, with the small quota `Settings::quota_user_quota` (same password).
pub const QUOTA_USER: &str = "small";
pub const TEST_PASSWORD: &str = "password";
/// `echo password | relay user add x` (argon2id, so the config holds no plaintext).
pub const TEST_PASSWORD_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$ZooLWEChpY79Z6TwJvyWWQ$/qbC5yKMqMV95V9N9XJPga/chMKFOMNMHdI7/CftPiw";

impl Settings {
    pub fn new(engine: Engine) -> Settings {
        Settings {
            io: engine.io().to_string(),
            expect_engine: Some(engine.ready_name()),
            cores: 2,
            drain_timeout: "10s".into(),
            connections_per_ip_max: 50,
            command_timeout: "5m".into(),
            data_timeout: "5m".into(),
            message_size_max: "25MiB".into(),
            recipients_max: 100,
            allowed_networks: vec!["127.0.0.0/8".into(), "::1/128".into()],
            local_domains: vec!["localhost".into(), "example.test".into()],
            segment_size: None,
            compact_interval: None,
            vrfy: None,
            expn: None,
            proxy_protocol: None,
            pop3_proxy_protocol: None,
            aliases: Vec::new(),
            quota_user_quota: "1KiB".into(),
            pop3_auth_failure_delay: "50ms".into(),
            pop3_auth_failures_per_ip_max: None,
            pop3_auth_failure_window: None,
            blocked_extensions: Vec::new(),
            apop_secrets: Vec::new(),
            log_level: "info",
            pre_exec: None,
            wrapper: Vec::new(),
            raw_config: None,
            routes: vec![("*".into(), "127.0.0.1:1".into())],
            extra_toml: String::new(),
            smtp_toml: String::new(),
            pop3_toml: String::new(),
            imap_toml: String::new(),
            server_toml: String::new(),
            smtp_listen: "127.0.0.1:0".into(),
            admin_toml: "[admin]\nlisten = \"127.0.0.1:0\"\n".into(),
        }
    }

    /// `io = "auto"`: the engine is whatever the probe allows, so it is not checked.
    pub fn auto() -> Settings {
        Settings {
            io: "auto".into(),
            expect_engine: None,
            ..Settings::new(Engine::Epoll)
        }
    }

    pub fn render(&self, spool_dir: &Path) -> String {
        let list = |items: &[String]| {
            items
                .iter()
                .map(|s| format!("{s:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut text = format!(
            "[server]\n\
             io = {io:?}\n\
             cores = {cores}\n\
             hostname = \"relay.test\"\n\
             drain_timeout = {drain:?}\n\
             connections_per_ip_max = {per_ip}\n\
             [smtp]\n\
             listen = [{listen:?}]\n\
             command_timeout = {cmd:?}\n\
             data_timeout = {data:?}\n\
             message_size_max = {size:?}\n\
             recipients_max = {rcpts}\n\
             [spool]\n\
             dir = {dir:?}\n\
             fsync = true\n",
            io = self.io,
            cores = self.cores,
            drain = self.drain_timeout,
            per_ip = self.connections_per_ip_max,
            listen = self.smtp_listen,
            cmd = self.command_timeout,
            data = self.data_timeout,
            size = self.message_size_max,
            rcpts = self.recipients_max,
            dir = spool_dir.to_str().expect("utf-8 temp path"),
        );
        // [smtp] keys go before [spool]: insert them at the end of the [smtp] section.
        let mut smtp_extra = String::new();
        if let Some(vrfy) = self.vrfy {
            smtp_extra.push_str(&format!("vrfy = {vrfy}\n"));
        }
        if let Some(expn) = self.expn {
            smtp_extra.push_str(&format!("expn = {expn}\n"));
        }
        if let Some(proxy) = self.proxy_protocol {
            smtp_extra.push_str(&format!("proxy_protocol = {proxy}\n"));
        }
        smtp_extra.push_str(&self.smtp_toml);
        if !self.server_toml.is_empty() {
            let at = text.find("[smtp]\n").expect("template has [smtp]");
            text.insert_str(at, &self.server_toml);
        }
        if !smtp_extra.is_empty() {
            let at = text.find("[spool]\n").expect("template has [spool]");
            text.insert_str(at, &smtp_extra);
        }
        if let Some(size) = &self.segment_size {
            text.push_str(&format!("segment_size = {size:?}\n"));
        }
        if let Some(interval) = &self.compact_interval {
            text.push_str(&format!("compact_interval = {interval:?}\n"));
        }
        // POP3 on port 0 too (the embedded default is 127.0.0.1:1110, which parallel test
        // relays would share through SO_REUSEPORT).
        text.push_str(&format!(
            "[pop3]\nlisten = [\"127.0.0.1:0\"]\nauth_failure_delay = {:?}\n",
            self.pop3_auth_failure_delay
        ));
        if let Some(max) = self.pop3_auth_failures_per_ip_max {
            text.push_str(&format!("auth_failures_per_ip_max = {max}\n"));
        }
        if let Some(window) = &self.pop3_auth_failure_window {
            text.push_str(&format!("auth_failure_window = {window:?}\n"));
        }
        if let Some(proxy) = self.pop3_proxy_protocol {
            text.push_str(&format!("proxy_protocol = {proxy}\n"));
        }
        text.push_str(&self.pop3_toml);
        // IMAP on port 0 too, for the same reason.
        text.push_str(&format!(
            "[imap]\nlisten = [\"127.0.0.1:0\"]\nauth_failure_delay = {:?}\n",
            self.pop3_auth_failure_delay
        ));
        text.push_str(&self.imap_toml);
        if !self.blocked_extensions.is_empty() {
            text.push_str(&format!(
                "[policy]\nblocked_extensions = [{}]\n",
                list(&self.blocked_extensions)
            ));
        }
        text.push_str(&self.admin_toml);
        text.push_str(&format!(
            "[relay]\nallowed_networks = [{}]\n[local]\ndomains = [{}]\n",
            list(&self.allowed_networks),
            list(&self.local_domains)
        ));
        // The mailboxes the tests send to; every local recipient must exist (550 5.1.1).
        for name in TEST_USERS {
            text.push_str(&format!(
                "[[local.users]]\nname = {name:?}\npassword = {TEST_PASSWORD_HASH:?}\n"
            ));
            if let Some((_, secret)) = self.apop_secrets.iter().find(|(user, _)| user == name) {
                text.push_str(&format!("apop_secret = {secret:?}\n"));
            }
        }
        text.push_str(&format!(
            "[[local.users]]\nname = {QUOTA_USER:?}\npassword = {TEST_PASSWORD_HASH:?}\nquota = {:?}\n",
            self.quota_user_quota
        ));
        if !self.aliases.is_empty() {
            text.push_str("[local.aliases]\n");
            for (alias, targets) in &self.aliases {
                text.push_str(&format!("{alias:?} = [{}]\n", list(targets)));
            }
        }
        for (domain, to) in &self.routes {
            text.push_str(&format!(
                "[[relay.routes]]\ndomain = {domain:?}\nto = {to:?}\n"
            ));
        }
        text.push_str(&self.extra_toml);
        text
    }
}

// ---------------------------------------------------------------------------------------------
// The relay's log

/// Every stderr line of one relay process, kept for waits, assertions and failure reports.
pub struct Log {
    state: Mutex<LogState>,
    changed: Condvar,
}

struct LogState {
    lines: Vec<String>,
    /// stderr reached EOF: no more lines will come.
    closed: bool,
}

impl Log {
    fn new() -> Arc<Log> {
        Arc::new(Log {
            state: Mutex::new(LogState {
                lines: Vec::new(),
                closed: false,
            }),
            changed: Condvar::new(),
        })
    }

    /// Reads `stderr` to EOF on its own thread.
    fn follow(self: &Arc<Log>, stderr: impl Read + Send + 'static) {
        let log = Arc::clone(self);
        std::thread::Builder::new()
            .name("relay-stderr".into())
            .spawn(move || {
                let mut reader = BufReader::new(stderr);
                let mut raw = Vec::new();
                loop {
                    raw.clear();
                    match reader.read_until(b'\n', &mut raw) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let line = strip_ansi(&String::from_utf8_lossy(&raw));
                            let line = line.trim_end_matches(['\r', '\n']).to_string();
                            log.state.lock().unwrap().lines.push(line);
                            log.changed.notify_all();
                        }
                    }
                }
                log.state.lock().unwrap().closed = true;
                log.changed.notify_all();
            })
            .expect("spawn stderr reader");
    }

    pub fn lines(&self) -> Vec<String> {
        self.state.lock().unwrap().lines.clone()
    }

    /// Waits for a line satisfying `pred` (lines already read count). None when the deadline
    /// passes or stderr closes without such a line.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut state = self.state.lock().unwrap();
        let mut seen = 0;
        loop {
            if let Some(line) = state.lines[seen..].iter().find(|l| pred(l)) {
                return Some(line.clone());
            }
            seen = state.lines.len();
            if state.closed {
                return None;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            state = self.changed.wait_timeout(state, left).unwrap().0;
        }
    }

    /// Waits until stderr is closed (the process and its threads have exited).
    pub fn wait_closed(&self, timeout: Duration) -> bool {
        let state = self.state.lock().unwrap();
        let (state, _) = self
            .changed
            .wait_timeout_while(state, timeout, |s| !s.closed)
            .unwrap();
        state.closed
    }

    pub fn render(&self) -> String {
        self.lines().join("\n")
    }
}

/// tracing's fmt layer colours its output when it believes it writes to a terminal; we set
/// NO_COLOR, and strip escapes anyway so matching never depends on it.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// True when every needle occurs in `line`.
pub fn has_all(line: &str, needles: &[&str]) -> bool {
    needles.iter().all(|n| line.contains(n))
}

// ---------------------------------------------------------------------------------------------
// A child process we can wait on with a deadline and signal without racing its reaping

/// The child is reaped by a waiter thread only after it is known to have exited
/// (`waitid(WNOWAIT)`), and signals are sent under the same lock, so a signal can never reach
/// a recycled pid.
pub struct Process {
    pid: u32,
    state: Arc<(Mutex<ProcState>, Condvar)>,
}

struct ProcState {
    child: Child,
    status: Option<ExitStatus>,
}

impl Process {
    fn new(child: Child) -> Process {
        let pid = child.id();
        let state = Arc::new((
            Mutex::new(ProcState {
                child,
                status: None,
            }),
            Condvar::new(),
        ));
        let shared = Arc::clone(&state);
        std::thread::Builder::new()
            .name(format!("wait-{pid}"))
            .spawn(move || {
                loop {
                    // SAFETY: plain syscall on our own child; siginfo is a valid out-buffer.
                    let rc = unsafe {
                        let mut info: libc::siginfo_t = std::mem::zeroed();
                        libc::waitid(
                            libc::P_PID,
                            pid as libc::id_t,
                            &mut info,
                            libc::WEXITED | libc::WNOWAIT,
                        )
                    };
                    if rc == 0
                        || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR)
                    {
                        break;
                    }
                }
                let (lock, cv) = &*shared;
                let mut state = lock.lock().unwrap();
                if let Ok(status) = state.child.wait() {
                    state.status = Some(status);
                }
                cv.notify_all();
            })
            .expect("spawn waiter");
        Process { pid, state }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends `signal` unless the child has already been reaped. True when sent.
    pub fn signal(&self, signal: libc::c_int) -> bool {
        let state = self.state.0.lock().unwrap();
        if state.status.is_some() {
            return false;
        }
        // SAFETY: the child is not reaped (we hold the lock the reaper needs), so the pid is
        // still ours (at worst a zombie).
        unsafe { libc::kill(self.pid as libc::pid_t, signal) == 0 }
    }

    pub fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let (lock, cv) = &*self.state;
        let state = lock.lock().unwrap();
        let (state, _) = cv
            .wait_timeout_while(state, timeout, |s| s.status.is_none())
            .unwrap();
        state.status
    }

    pub fn status(&self) -> Option<ExitStatus> {
        self.state.0.lock().unwrap().status
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.signal(libc::SIGKILL) {
            let _ = self.wait_exit(Duration::from_secs(10));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The relay under test

/// A relay that exited before saying `relay ready`.
pub struct StartFailure {
    pub status: Option<ExitStatus>,
    pub lines: Vec<String>,
}

impl fmt::Debug for StartFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "relay exited before ready with {:?}; stderr:\n{}",
            self.status,
            self.lines.join("\n")
        )
    }
}

/// One running `relay serve`, in its own temporary directory (shared across restarts).
pub struct Relay {
    process: Process,
    log: Arc<Log>,
    dir: Arc<tempfile::TempDir>,
    /// The SMTP listener, as the relay reported it.
    pub addr: SocketAddr,
    /// The POP3 listener, as the relay reported it (`listening protocol="pop3"`).
    pub pop3_addr: SocketAddr,
    /// The admin TCP listener (`/metrics`), as the relay reported it (`listening
    /// protocol="admin" addr=`); `None` when the config has none.
    pub admin_addr: Option<SocketAddr>,
    /// The admin socket (`relay stat`, `relay queue`): `admin.sock` in the spool directory.
    pub admin_socket: PathBuf,
    /// The `relay ready` line.
    pub ready_line: String,
    pub spool_dir: PathBuf,
    pub config_path: PathBuf,
    pub settings: Settings,
}

pub fn new_workdir() -> Arc<tempfile::TempDir> {
    Arc::new(
        tempfile::Builder::new()
            .prefix("relay-test-")
            .tempdir()
            .expect("create temp dir"),
    )
}

impl Relay {
    /// Starts a relay in a fresh directory and waits until it is ready.
    pub fn start(settings: Settings) -> Relay {
        Relay::start_in(new_workdir(), settings)
    }

    /// Starts a relay in `dir` (its spool is `dir/spool`: a restart finds the old one).
    pub fn start_in(dir: Arc<tempfile::TempDir>, settings: Settings) -> Relay {
        match Relay::try_start_in(dir, settings) {
            Ok(relay) => relay,
            Err(failure) => panic!("{failure:?}"),
        }
    }

    /// Like `start_in`, but a relay that exits during start-up is a value, not a panic.
    pub fn try_start_in(
        dir: Arc<tempfile::TempDir>,
        settings: Settings,
    ) -> Result<Relay, StartFailure> {
        let spool_dir = dir.path().join("spool");
        let config_path = dir.path().join("relay.toml");
        let config = match &settings.raw_config {
            Some(text) => text.clone(),
            None => settings.render(&spool_dir),
        };
        std::fs::write(&config_path, config).expect("write config");

        let mut command = match settings.wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(relay_bin());
                command
            }
            None => Command::new(relay_bin()),
        };
        command
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .current_dir(dir.path())
            .env("RELAY_LOG", settings.log_level)
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(hook) = settings.pre_exec {
            // SAFETY: the hooks in this harness only make raw syscalls (setrlimit, signal,
            // prctl) on data already on the stack: async-signal-safe.
            unsafe {
                command.pre_exec(hook);
            }
        }
        let mut child = command.spawn().expect("spawn relay");
        let log = Log::new();
        log.follow(child.stderr.take().expect("stderr piped"));
        let process = Process::new(child);

        let ready = log.wait_for(READY_TIMEOUT, |l| l.contains("relay ready"));
        let Some(ready_line) = ready else {
            if log.wait_closed(Duration::from_secs(10)) {
                let status = process.wait_exit(EXIT_TIMEOUT);
                return Err(StartFailure {
                    status,
                    lines: log.lines(),
                });
            }
            panic!(
                "relay (pid {}) not ready within {READY_TIMEOUT:?}; stderr:\n{}",
                process.pid(),
                log.render()
            );
        };
        let find = |protocol: &str| {
            log.lines()
                .iter()
                .filter(|l| field_value(l, "protocol").as_deref() == Some(protocol))
                .find_map(|l| listen_addr(l))
                .unwrap_or_else(|| {
                    panic!(
                        "no `listening protocol={protocol:?} addr=` line before ready; stderr:\n{}",
                        log.render()
                    )
                })
        };
        let addr = find("smtp");
        let pop3_addr = find("pop3");
        let admin_addr = log
            .lines()
            .iter()
            .filter(|l| field_value(l, "protocol").as_deref() == Some("admin"))
            .find_map(|l| listen_addr(l));
        let admin_socket = spool_dir.join("admin.sock");
        let relay = Relay {
            process,
            log,
            dir,
            addr,
            pop3_addr,
            admin_addr,
            admin_socket,
            ready_line,
            spool_dir,
            config_path,
            settings,
        };
        if let Some(engine) = relay.settings.expect_engine {
            assert!(
                relay.ready_line.contains(&format!("engine={engine}")),
                "io = {:?} but the ready line is: {}",
                relay.settings.io,
                relay.ready_line
            );
        }
        Ok(relay)
    }

    /// Starts a new relay on this one's directory and spool (this one must have exited).
    pub fn restart(&self, settings: Settings) -> Relay {
        assert!(
            self.process.status().is_some(),
            "restart while the previous relay still runs"
        );
        Relay::start_in(Arc::clone(&self.dir), settings)
    }

    /// The address a listener reported (`listening protocol="smtps"` ...), if it did.
    pub fn listening(&self, protocol: &str) -> Option<SocketAddr> {
        self.log
            .lines()
            .iter()
            .filter(|l| field_value(l, "protocol").as_deref() == Some(protocol))
            .find_map(|l| listen_addr(l))
    }

    pub fn workdir(&self) -> Arc<tempfile::TempDir> {
        Arc::clone(&self.dir)
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn sigterm(&self) {
        assert!(self.process.signal(libc::SIGTERM), "relay already exited");
    }

    pub fn sighup(&self) {
        assert!(self.process.signal(libc::SIGHUP), "relay already exited");
    }

    pub fn sigint(&self) {
        assert!(self.process.signal(libc::SIGINT), "relay already exited");
    }

    /// kill -9 and wait for the exit.
    pub fn kill9(&self) -> ExitStatus {
        self.process.signal(libc::SIGKILL);
        self.wait_exit(EXIT_TIMEOUT)
    }

    /// Waits for the process to exit; panics (with the log) past the deadline.
    pub fn wait_exit(&self, timeout: Duration) -> ExitStatus {
        match self.process.wait_exit(timeout) {
            Some(status) => {
                // The reader thread sees EOF right after; take every last line.
                self.log.wait_closed(Duration::from_secs(10));
                status
            }
            None => panic!(
                "relay (pid {}) did not exit within {timeout:?}; stderr:\n{}",
                self.pid(),
                self.log.render()
            ),
        }
    }

    /// SIGTERM, then expect a clean exit (status 0 and the durable-spool line).
    pub fn stop(&self) {
        self.sigterm();
        let status = self.wait_exit(EXIT_TIMEOUT);
        assert!(status.success(), "exit after SIGTERM: {status:?}");
        assert!(
            self.log_contains("stopped: spool is durable"),
            "no `stopped: spool is durable` line"
        );
    }

    pub fn log(&self) -> &Arc<Log> {
        &self.log
    }

    pub fn log_lines(&self) -> Vec<String> {
        self.log.lines()
    }

    pub fn log_contains(&self, needle: &str) -> bool {
        self.log.lines().iter().any(|l| l.contains(needle))
    }

    /// Waits for a log line containing every needle; panics with the log past the deadline.
    pub fn wait_log(&self, needles: &[&str], timeout: Duration) -> String {
        self.log
            .wait_for(timeout, |l| has_all(l, needles))
            .unwrap_or_else(|| {
                panic!(
                    "no log line with {needles:?} within {timeout:?}; stderr:\n{}",
                    self.log.render()
                )
            })
    }

    /// Waits for the `accepted` line of queue id `id`.
    pub fn wait_accepted(&self, id: &str) -> String {
        let field = format!("queue_id={id}");
        self.wait_log(&["accepted", &field], Duration::from_secs(20))
    }

    /// Queue ids of every `accepted` line so far.
    pub fn accepted_ids(&self) -> Vec<String> {
        self.log
            .lines()
            .iter()
            .filter(|l| l.contains("accepted"))
            .filter_map(|l| field_value(l, "queue_id"))
            .collect()
    }

    /// Open file descriptors of the relay process.
    pub fn fd_count(&self) -> usize {
        fd_count(self.pid())
    }

    pub fn spool_ls(&self) -> Vec<SpoolEntry> {
        spool_ls(&self.spool_dir)
    }

    pub fn spool_cat(&self, id: &str) -> Vec<u8> {
        spool_cat(&self.spool_dir, id)
    }

    /// A new client connection whose 220 greeting has been read.
    pub fn client(&self) -> Client {
        Client::greeted(self.addr)
    }

    /// One SMTP transaction on a new connection; panics unless 250. Returns the queue id,
    /// once the `accepted` line is logged.
    pub fn deliver(&self, rcpts: &[&str], content: &[u8]) -> String {
        let mut client = self.client();
        client.ehlo();
        let reply = client
            .transaction("sender@example.test", rcpts, content)
            .unwrap_or_else(|e| panic!("deliver to {rcpts:?}: {e}"));
        assert_eq!(reply.code, 250, "deliver to {rcpts:?}: {reply}");
        let id = reply
            .queue_id()
            .unwrap_or_else(|| panic!("no queue id: {reply}"));
        client.quit();
        self.wait_accepted(&id);
        id
    }

    /// `GET path` on the admin TCP listener (`/metrics`): (status, body). Panics when the
    /// request fails or the config has no listener.
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        let addr = self
            .admin_addr
            .expect("the relay has an admin TCP listener");
        let (status, body) = relay::admin::client::request(addr, "GET", path, COMMAND_TIMEOUT)
            .unwrap_or_else(|e| panic!("GET {path} from {addr}: {e}"));
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// `GET path` on the admin socket (every route): (status, body).
    pub fn admin_socket_get(&self, path: &str) -> (u16, String) {
        let (status, body) =
            relay::admin::client::request(self.admin_socket.clone(), "GET", path, COMMAND_TIMEOUT)
                .unwrap_or_else(|e| panic!("GET {path} from {}: {e}", self.admin_socket.display()));
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// A new POP3 connection whose `+OK` greeting has been read.
    pub fn pop3(&self) -> pop3::Pop3 {
        pop3::Pop3::greeted(self.pop3_addr)
    }

    /// A POP3 session logged in as `user` (password [`TEST_PASSWORD`]) that holds the
    /// maildrop lock; a lock still held by an ending session is retried for
    /// [`LOCK_RELEASE_TIMEOUT`].
    pub fn pop3_login(&self, user: &str) -> pop3::Pop3 {
        pop3::Pop3::login_retrying(self.pop3_addr, user, TEST_PASSWORD, LOCK_RELEASE_TIMEOUT)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- relay pid {} ({}), status {:?}, stderr ----\n{}\n---- end of relay stderr ----",
                self.pid(),
                self.config_path.display(),
                self.process.status(),
                self.log.render()
            );
        }
        // Process::drop kills the child if it still runs.
    }
}

/// `addr=127.0.0.1:PORT` of a `listening` line.
pub fn listen_addr(line: &str) -> Option<SocketAddr> {
    if !line.contains("listening") {
        return None;
    }
    field_value(line, "addr")?.parse().ok()
}

/// The value of `key=value` in a tracing fmt line (quotes removed).
pub fn field_value(line: &str, key: &str) -> Option<String> {
    let needle = format!("{key}=");
    let mut from = 0;
    while let Some(at) = line[from..].find(&needle) {
        let start = from + at;
        // Only a whole field name: preceded by start or a space.
        if start == 0 || line.as_bytes()[start - 1] == b' ' {
            let value = &line[start + needle.len()..];
            let end = value.find(char::is_whitespace).unwrap_or(value.len());
            return Some(value[..end].trim_matches('"').to_string());
        }
        from = start + needle.len();
    }
    None
}

pub fn is_queue_id(s: &str) -> bool {
    s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/PID/fd")
        .count()
}

/// Polls `/proc` (no event exists for "the server closed its descriptor") until the relay has
/// at most `target` descriptors open, or the deadline passes. Returns the last count seen.
pub fn wait_fd_count_at_most(pid: u32, target: usize, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        let now = fd_count(pid);
        if now <= target || Instant::now() >= deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// Helper commands

/// Runs a command to completion with a deadline; its stdout and stderr are captured.
pub fn run_with_timeout(command: &mut Command, timeout: Duration) -> Output {
    let description = format!("{command:?}");
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {description}: {e}"));
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(output) => output.unwrap_or_else(|e| panic!("{description}: {e}")),
        Err(_) => {
            // SAFETY: the child has not been reaped (wait_with_output has not returned).
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
            panic!("{description} did not finish within {timeout:?}");
        }
    }
}

pub fn relay_cmd<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut command = Command::new(relay_bin());
    command.args(args).env("NO_COLOR", "1");
    run_with_timeout(&mut command, COMMAND_TIMEOUT)
}

/// Describes an Output for assertion messages.
pub fn describe(output: &Output) -> String {
    format!(
        "status {:?} (signal {:?})\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status.code(),
        output.status.signal(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// One line of `relay spool ls`.
#[derive(Debug, Clone)]
pub struct SpoolEntry {
    pub id: String,
    /// The whole line (arrival, size, sender, recipients follow the id).
    pub line: String,
}

/// `relay spool ls --dir DIR`, parsed and checked against its own `-- N message(s)` footer.
pub fn spool_ls(dir: &Path) -> Vec<SpoolEntry> {
    let output = relay_cmd([
        OsStr::new("spool"),
        OsStr::new("ls"),
        OsStr::new("--dir"),
        dir.as_os_str(),
    ]);
    assert!(
        output.status.success(),
        "relay spool ls: {}",
        describe(&output)
    );
    let text = String::from_utf8(output.stdout.clone()).expect("spool ls prints UTF-8");
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    assert!(
        !header.is_empty() && !is_queue_id(header.split_whitespace().next().unwrap_or("")),
        "spool ls has no header line: {text}"
    );
    let mut entries = Vec::new();
    let mut footer = None;
    for line in lines {
        if let Some(rest) = line.strip_prefix("-- ") {
            let n: usize = rest
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("bad footer {line:?}"));
            footer = Some(n);
            continue;
        }
        assert!(
            footer.is_none(),
            "spool ls: line after the footer: {line:?}\n{text}"
        );
        let id = line.split_whitespace().next().unwrap_or("");
        assert!(
            is_queue_id(id),
            "spool ls line without a queue id: {line:?}\n{text}"
        );
        entries.push(SpoolEntry {
            id: id.to_string(),
            line: line.to_string(),
        });
    }
    assert_eq!(
        footer,
        Some(entries.len()),
        "spool ls footer must count the listed messages:\n{text}"
    );
    entries
}

/// `relay spool cat ID --dir DIR`: the stored bytes.
pub fn spool_cat(dir: &Path, id: &str) -> Vec<u8> {
    let output = relay_cmd([
        OsStr::new("spool"),
        OsStr::new("cat"),
        OsStr::new(id),
        OsStr::new("--dir"),
        dir.as_os_str(),
    ]);
    assert!(
        output.status.success(),
        "relay spool cat {id}: {}",
        describe(&output)
    );
    output.stdout
}

/// Splits stored bytes into the prepended `Received:` header (with its CRLF) and the message
/// as the client sent it. Panics when the stored bytes do not start with one.
pub fn split_received(stored: &[u8]) -> (&[u8], &[u8]) {
    assert!(
        stored.starts_with(b"Received: from "),
        "stored message does not start with `Received: from `: {:?}",
        String::from_utf8_lossy(&stored[..stored.len().min(200)])
    );
    let mut at = 0;
    while let Some(pos) = find(&stored[at..], b"\r\n") {
        let end = at + pos + 2;
        match stored.get(end) {
            Some(b' ') | Some(b'\t') => at = end, // folded continuation
            _ => return stored.split_at(end),
        }
    }
    panic!(
        "Received header not ended by CRLF: {:?}",
        String::from_utf8_lossy(stored)
    );
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Asserts that `id` is stored and holds exactly `sent` after the Received header.
pub fn assert_stored(dir: &Path, id: &str, sent: &[u8]) {
    let stored = spool_cat(dir, id);
    let (received, message) = split_received(&stored);
    assert!(
        message == sent,
        "message {id}: stored bytes differ from the sent ones\n--- received header ---\n{}\n--- sent ---\n{:?}\n--- stored ---\n{:?}",
        String::from_utf8_lossy(received),
        String::from_utf8_lossy(sent),
        String::from_utf8_lossy(message)
    );
    let bare = received.iter().enumerate().any(|(i, &b)| match b {
        b'\r' => received.get(i + 1) != Some(&b'\n'),
        b'\n' => i == 0 || received[i - 1] != b'\r',
        _ => false,
    });
    assert!(
        !bare,
        "Received header has a bare CR or LF: {:?}",
        String::from_utf8_lossy(received)
    );
}

/// Every file under `dir` whose name ends with `.seg`.
pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension() == Some(OsStr::new("seg")) {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// A listing of a directory tree, for failure messages.
pub fn tree(dir: &Path) -> String {
    let mut out = String::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
            out.push_str(&format!("{} ({len} B)\n", path.display()));
            if path.is_dir() {
                stack.push(path);
            }
        }
    }
    out
}

/// A small deterministic generator (no rand dependency): xorshift64*.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn seeded_from_time(salt: u64) -> Rng {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        Rng::new(now ^ salt.rotate_left(17) ^ u64::from(std::process::id()))
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn hex(&mut self) -> String {
        format!("{:016x}", self.next())
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// pre_exec hooks (run in the forked child: raw syscalls only)

/// RLIMIT_FSIZE = 200 KiB with SIGXFSZ ignored: writes past it fail with EFBIG.
pub fn limit_file_size_200k() -> std::io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: 200 * 1024,
        rlim_max: 200 * 1024,
    };
    // SAFETY: raw syscalls on valid stack data.
    unsafe {
        if libc::signal(libc::SIGXFSZ, libc::SIG_IGN) == libc::SIG_ERR {
            return Err(std::io::Error::last_os_error());
        }
        if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A seccomp filter that makes `io_uring_setup` fail with EPERM, as Docker's default profile
/// does; every other system call is allowed.
#[cfg(target_arch = "x86_64")]
pub fn deny_io_uring() -> std::io::Result<()> {
    const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
    const SYS_IO_URING_SETUP: u32 = 425;
    const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const BPF_JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const BPF_RET_K: u16 = 0x06; // BPF_RET | BPF_K
    const OFFSET_NR: u32 = 0; // struct seccomp_data { int nr; __u32 arch; ... }
    const OFFSET_ARCH: u32 = 4;
    let stmt = |code, k| libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |k, jt, jf| libc::sock_filter {
        code: BPF_JEQ_K,
        jt,
        jf,
        k,
    };
    let mut filter = [
        stmt(BPF_LD_W_ABS, OFFSET_ARCH),
        jump(AUDIT_ARCH_X86_64, 0, 3), // other arch: allow
        stmt(BPF_LD_W_ABS, OFFSET_NR),
        jump(SYS_IO_URING_SETUP, 0, 1),
        stmt(BPF_RET_K, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
        stmt(BPF_RET_K, libc::SECCOMP_RET_ALLOW),
    ];
    let program = libc::sock_fprog {
        len: filter.len() as libc::c_ushort,
        filter: filter.as_mut_ptr(),
    };
    const PR_SET_NO_NEW_PRIVS: libc::c_int = 38;
    const PR_SET_SECCOMP: libc::c_int = 22;
    // SAFETY: raw prctl calls; `program` points at `filter`, both alive across the calls.
    unsafe {
        if libc::prctl(PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::prctl(
            PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &program as *const libc::sock_fprog,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
