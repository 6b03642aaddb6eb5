//! `loadgen pop3`: drain mailboxes over POP3 (RFC 1939).
//!
//! `--connections` sessions run in parallel; each takes the next user from the list, logs in
//! (USER/PASS), asks STAT, retrieves and deletes every message, and QUITs (which commits the
//! deletions), then takes the next user, until every mailbox has been drained once. Commands
//! are encoded with `relay::pop3::command::encode`; bodies are scanned for their terminator
//! and discarded as they arrive.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use relay::pop3::command::{encode, Command};
use relay::pop3::reply::Status;
use serde::Serialize;

use crate::cli::{Pop3Args, UserArgs};
use crate::runner::{self, Control};
use crate::smtp::{error_line, ErrorReport};
use crate::stats::{per_second, Latency, LatencySummary, Live};
use crate::target;
use crate::wire::{Conn, ErrorCounts, WireError};

/// Users a pattern may generate.
const USERS_MAX: u64 = 10_000_000;

struct Plan {
    addr: SocketAddr,
    users: Vec<(String, String)>,
    next: AtomicUsize,
    pipelining: bool,
    io_timeout: Duration,
    control: Arc<Control>,
    live: Arc<Live>,
}

#[derive(Debug, Default)]
pub struct Pop3Stats {
    mailboxes: u64,
    mailboxes_failed: u64,
    logins_refused: u64,
    retrieved: u64,
    bytes: u64,
    deleted: u64,
    err_replies: u64,
    errors: ErrorCounts,
    first_error: Option<String>,
    login: Latency,
    retr: Latency,
    mailbox: Latency,
}

impl Pop3Stats {
    fn error(&mut self, error: &WireError) {
        self.errors.count(error);
        if self.first_error.is_none() {
            self.first_error = Some(error.to_string());
        }
    }

    fn merge(&mut self, o: &Pop3Stats) {
        self.mailboxes += o.mailboxes;
        self.mailboxes_failed += o.mailboxes_failed;
        self.logins_refused += o.logins_refused;
        self.retrieved += o.retrieved;
        self.bytes += o.bytes;
        self.deleted += o.deleted;
        self.err_replies += o.err_replies;
        self.errors.add(&o.errors);
        if self.first_error.is_none() {
            self.first_error.clone_from(&o.first_error);
        }
        self.login.add(&o.login);
        self.retr.add(&o.retr);
        self.mailbox.add(&o.mailbox);
    }
}

/// A user name or password as a POP3 argument: no spaces or control characters (they would
/// split or end the command line).
fn check_credential(what: &str, text: &str) -> Result<(), String> {
    if text.is_empty() || text.chars().any(|c| c.is_control() || c == ' ') {
        return Err(format!(
            "{what} `{text}` is empty or holds spaces or control characters"
        ));
    }
    Ok(())
}

fn parse_user(line: &str) -> Result<(String, String), String> {
    let (name, password) = line
        .split_once(':')
        .ok_or_else(|| format!("`{line}`: expected NAME:PASSWORD"))?;
    check_credential("user name", name)?;
    check_credential("password", password)?;
    Ok((name.to_string(), password.to_string()))
}

/// The users from `--users FILE` or `--user-pattern P --user-count N`.
pub fn users(args: &UserArgs) -> Result<Vec<(String, String)>, String> {
    let mut users = Vec::new();
    if let Some(path) = &args.users {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--users {}: {e}", path.display()))?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            users.push(parse_user(line).map_err(|e| format!("{}:{}: {e}", path.display(), n + 1))?);
        }
    } else if let (Some(pattern), Some(count)) = (&args.user_pattern, args.user_count) {
        if count > USERS_MAX {
            return Err(format!("--user-count must be at most {USERS_MAX}"));
        }
        for n in 0..count {
            users.push(parse_user(&pattern.replace("{n}", &n.to_string()))?);
        }
    }
    if users.is_empty() {
        return Err("no users (give --users FILE or --user-pattern with --user-count)".into());
    }
    Ok(users)
}

pub fn run(args: Pop3Args) -> Result<ExitCode, String> {
    if args.connections == 0 || args.connections > 100_000 {
        return Err("--connections must be between 1 and 100000".into());
    }
    let addr = target::resolve(&args.target, "target", args.common.allow_remote)?;
    runner::check_bounds(args.duration, args.common.max_time)?;
    let users = users(&args.users)?;
    let user_count = users.len();
    let connections = args.connections.min(user_count);
    let control = Control::new(args.duration, args.common.max_time);
    let live = Arc::new(Live::default());
    let plan = Arc::new(Plan {
        addr,
        users,
        next: AtomicUsize::new(0),
        pipelining: args.pipelining,
        io_timeout: args.common.io_timeout,
        control: Arc::clone(&control),
        live: Arc::clone(&live),
    });
    let threads = args.common.threads(connections);
    let signal = runner::signals()?;
    eprintln!(
        "loadgen pop3: started target={addr} users={user_count} connections={connections} threads={threads}"
    );
    let worker_plan = Arc::clone(&plan);
    let results = runner::run_threads(
        threads,
        &control,
        &live,
        &signal,
        "msgs",
        move |thread, stats: Rc<RefCell<Pop3Stats>>| {
            let plan = Arc::clone(&worker_plan);
            async move {
                let mut tasks = Vec::new();
                for _ in (thread..connections).step_by(threads) {
                    let task = session_loop(Arc::clone(&plan), Rc::clone(&stats));
                    tasks.push(tokio::task::spawn_local(task));
                }
                for task in tasks {
                    let _ = task.await;
                }
            }
        },
    )?;
    let elapsed = control.start.elapsed();
    let mut total = Pop3Stats::default();
    for stats in &results {
        total.merge(stats);
    }
    let report = Pop3Report {
        mode: "pop3",
        target: addr.to_string(),
        users: user_count,
        connections,
        threads,
        elapsed_s: elapsed.as_secs_f64(),
        interrupted: control.interrupted(),
        mailboxes: Mailboxes {
            drained: total.mailboxes,
            failed: total.mailboxes_failed,
            logins_refused: total.logins_refused,
        },
        messages: Retrieved {
            retrieved: total.retrieved,
            deleted: total.deleted,
        },
        bytes: total.bytes,
        msgs_per_s: per_second(total.retrieved, elapsed),
        mb_per_s: per_second(total.bytes, elapsed) / 1e6,
        err_replies: total.err_replies,
        connection_errors: ErrorReport {
            counts: total.errors,
            total: total.errors.total(),
        },
        first_error: total.first_error.clone(),
        latency_ms: Pop3Latency {
            login: total.login.summary(),
            retr: total.retr.summary(),
            mailbox: total.mailbox.summary(),
        },
    };
    report.print(args.common.json);
    Ok(if total.mailboxes == 0 && !control.interrupted() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

async fn session_loop(plan: Arc<Plan>, stats: Rc<RefCell<Pop3Stats>>) {
    while !plan.control.stopped() {
        let index = plan.next.fetch_add(1, Ordering::Relaxed);
        let Some((name, password)) = plan.users.get(index) else {
            break;
        };
        let started = Instant::now();
        match drain(&plan, &stats, name, password, started).await {
            Ok(true) => {
                let mut s = stats.borrow_mut();
                s.mailboxes += 1;
                s.mailbox.record(started.elapsed());
            }
            Ok(false) => stats.borrow_mut().mailboxes_failed += 1,
            Err(error) => {
                plan.live.error();
                let mut s = stats.borrow_mut();
                s.mailboxes_failed += 1;
                s.error(&error);
            }
        }
    }
}

/// Reads a status line; true for `+OK`, false for `-ERR`.
async fn status(conn: &mut Conn, stats: &RefCell<Pop3Stats>) -> Result<bool, WireError> {
    let line = conn.read_line().await?;
    if line.starts_with(Status::Ok.as_str().as_bytes()) {
        Ok(true)
    } else if line.starts_with(Status::Err.as_str().as_bytes()) {
        stats.borrow_mut().err_replies += 1;
        Ok(false)
    } else {
        let shown = String::from_utf8_lossy(&line[..line.len().min(80)]).into_owned();
        Err(WireError::Protocol(format!(
            "not a POP3 status line: {shown:?}"
        )))
    }
}

fn line(command: Command) -> Vec<u8> {
    let mut out = Vec::new();
    encode(&command, &mut out);
    out
}

/// One mailbox: log in, STAT, RETR + DELE each message, QUIT. `Ok(false)` when the server
/// refused something (login, STAT, QUIT).
async fn drain(
    plan: &Plan,
    stats: &RefCell<Pop3Stats>,
    name: &str,
    password: &str,
    started: Instant,
) -> Result<bool, WireError> {
    let mut conn = Conn::connect(plan.addr, plan.io_timeout).await?;
    if !status(&mut conn, stats).await? {
        return Err(WireError::Refused(0));
    }
    conn.write_all(&line(Command::User { name: name.into() }))
        .await?;
    let user_ok = status(&mut conn, stats).await?;
    conn.write_all(&line(Command::Pass {
        password: password.into(),
    }))
    .await?;
    if !(status(&mut conn, stats).await? && user_ok) {
        stats.borrow_mut().logins_refused += 1;
        quit(&mut conn).await;
        return Ok(false);
    }
    stats.borrow_mut().login.record(started.elapsed());
    let mut pipelining = false;
    if plan.pipelining {
        conn.write_all(&line(Command::Capa)).await?;
        if status(&mut conn, stats).await? {
            loop {
                let capability = conn.read_line().await?;
                let capability = capability.strip_suffix(b"\r").unwrap_or(capability);
                if capability == b"." {
                    break;
                }
                pipelining |= capability.eq_ignore_ascii_case(b"PIPELINING");
            }
        }
    }
    conn.write_all(&line(Command::Stat)).await?;
    let stat = conn.read_line().await?;
    let count = parse_stat(stat).ok_or_else(|| {
        let shown = String::from_utf8_lossy(&stat[..stat.len().min(80)]).into_owned();
        WireError::Protocol(format!("bad STAT reply: {shown:?}"))
    })?;
    let mut deleted = 0u64;
    let mut buf = Vec::with_capacity(64);
    for msg in 1..=count {
        if plan.control.stopped() {
            break;
        }
        buf.clear();
        encode(&Command::Retr { msg }, &mut buf);
        if pipelining {
            encode(&Command::Dele { msg }, &mut buf);
        }
        let sent = Instant::now();
        conn.write_all(&buf).await?;
        if status(&mut conn, stats).await? {
            let bytes = conn.skip_dot_body().await?;
            let mut s = stats.borrow_mut();
            s.retr.record(sent.elapsed());
            s.retrieved += 1;
            s.bytes += bytes;
            drop(s);
            plan.live.add(1, bytes);
        }
        if !pipelining {
            buf.clear();
            encode(&Command::Dele { msg }, &mut buf);
            conn.write_all(&buf).await?;
        }
        if status(&mut conn, stats).await? {
            deleted += 1;
        }
    }
    conn.write_all(&line(Command::Quit)).await?;
    // RFC 1939 §6: deletions take effect only when QUIT is answered +OK.
    let committed = status(&mut conn, stats).await?;
    if committed {
        stats.borrow_mut().deleted += deleted;
    }
    conn.shutdown().await;
    Ok(committed)
}

/// `+OK n size` → n.
fn parse_stat(line: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(line).ok()?;
    let rest = text.trim_end().strip_prefix(Status::Ok.as_str())?;
    rest.split_whitespace().next()?.parse().ok()
}

async fn quit(conn: &mut Conn) {
    if conn.write_all(&line(Command::Quit)).await.is_ok() {
        let _ = conn.read_line().await;
    }
    conn.shutdown().await;
}

#[derive(Debug, Serialize)]
pub struct Pop3Report {
    pub mode: &'static str,
    pub target: String,
    pub users: usize,
    pub connections: usize,
    pub threads: usize,
    pub elapsed_s: f64,
    pub interrupted: bool,
    pub mailboxes: Mailboxes,
    pub messages: Retrieved,
    pub bytes: u64,
    pub msgs_per_s: f64,
    pub mb_per_s: f64,
    pub err_replies: u64,
    pub connection_errors: ErrorReport,
    pub first_error: Option<String>,
    pub latency_ms: Pop3Latency,
}

#[derive(Debug, Serialize)]
pub struct Mailboxes {
    pub drained: u64,
    pub failed: u64,
    pub logins_refused: u64,
}

#[derive(Debug, Serialize)]
pub struct Retrieved {
    pub retrieved: u64,
    pub deleted: u64,
}

#[derive(Debug, Serialize)]
pub struct Pop3Latency {
    pub login: LatencySummary,
    pub retr: LatencySummary,
    pub mailbox: LatencySummary,
}

impl Pop3Report {
    fn print(&self, json: bool) {
        let mut text = format!(
            "loadgen pop3 → {}: {:.2} s, {} users, {} connections, {} threads{}\n",
            self.target,
            self.elapsed_s,
            self.users,
            self.connections,
            self.threads,
            if self.interrupted {
                " (interrupted)"
            } else {
                ""
            },
        );
        text += &format!(
            "  mailboxes  drained {}  failed {}  logins refused {}\n",
            self.mailboxes.drained, self.mailboxes.failed, self.mailboxes.logins_refused
        );
        text += &format!(
            "  messages   retrieved {}  deleted {}  (-ERR replies {})\n",
            self.messages.retrieved, self.messages.deleted, self.err_replies
        );
        text += &format!(
            "  rate       {:.1} msgs/s  {:.2} MB/s  ({} bytes)\n",
            self.msgs_per_s, self.mb_per_s, self.bytes
        );
        text += &format!("  errors     {}\n", error_line(&self.connection_errors));
        if let Some(first) = &self.first_error {
            text += &format!("  first error: {first}\n");
        }
        text += &LatencySummary::header();
        text.push('\n');
        for (name, summary) in [
            ("connect→logged in", &self.latency_ms.login),
            ("RETR", &self.latency_ms.retr),
            ("whole mailbox", &self.latency_ms.mailbox),
        ] {
            text += &summary.row(name);
            text.push('\n');
        }
        if json {
            eprint!("{text}");
            match serde_json::to_string(self) {
                Ok(line) => println!("{line}"),
                Err(e) => eprintln!("loadgen: cannot encode the JSON summary: {e}"),
            }
        } else {
            print!("{text}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_and_users() {
        assert_eq!(parse_stat(b"+OK 3 1200\r"), Some(3));
        assert_eq!(parse_stat(b"+OK 0 0"), Some(0));
        assert_eq!(parse_stat(b"-ERR no"), None);
        assert_eq!(parse_stat(b"+OK many"), None);
        assert_eq!(
            parse_user("user1:pass:word"),
            Ok(("user1".into(), "pass:word".into()))
        );
        assert!(parse_user("nopassword").is_err());
        assert!(parse_user("a b:c").is_err());
        assert!(parse_user("a:b\rUSER x").is_err());
    }
}
