//! `loadgen pop3`: drain mailboxes over POP3 (RFC 1939).
//!
//! `--connections` sessions run in parallel; each takes the next user from the list, logs in
//! (USER/PASS), asks STAT, retrieves and deletes every message, and QUITs (which commits the
//! deletions), then takes the next user, until every mailbox has been drained once. Commands
//! are encoded with `relay::pop3::command::encode`; bodies are scanned for their terminator
//! and discarded as they arrive.
//!
//! Without `--pipelining` every command waits for its answer (what poplib does). With it,
//! and when CAPA lists PIPELINING (RFC 2449 §6.6), `RETR n` + `DELE n` go out for up to
//! `--window` messages before their answers are read, refilled in one write whenever half of
//! the window has been answered. A RETR's latency runs from the write that carried it to the
//! end of its body, so with a window it includes the wait behind the answers before it.
//!
//! The report keeps the logins apart: each session's time from connect to logged in (an
//! argon2id hash at the server) and from logged in to QUIT answered (the retrieval) are
//! summed, and `msgs_per_s_retrieval` divides the messages by the retrieval time per
//! connection: the rate with the logins left out.

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
    window: u64,
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
    /// Summed over sessions: connect → logged in, and logged in → QUIT answered.
    login_time: Duration,
    retrieval_time: Duration,
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
        self.login_time += o.login_time;
        self.retrieval_time += o.retrieval_time;
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
        window: args.window,
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
    let per_connection = |sum: Duration| sum / u32::try_from(connections).unwrap_or(u32::MAX);
    let retrieval = per_connection(total.retrieval_time);
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
        pipelining: args.pipelining,
        window: if args.pipelining { args.window } else { 1 },
        login_s: per_connection(total.login_time).as_secs_f64(),
        retrieval_s: retrieval.as_secs_f64(),
        msgs_per_s_retrieval: per_second(total.retrieved, retrieval),
        mb_per_s_retrieval: per_second(total.bytes, retrieval) / 1e6,
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
    let logged_in = Instant::now();
    {
        let mut s = stats.borrow_mut();
        s.login.record(logged_in - started);
        s.login_time += logged_in - started;
    }
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
    let window = if pipelining { plan.window } else { 1 };
    let mut flight = Window::new(count, window);
    let mut deleted = 0u64;
    let mut buf = Vec::with_capacity(64);
    // When each message in flight was sent, oldest first.
    let mut sent = std::collections::VecDeque::with_capacity(window as usize);
    while let Some(msg) = flight.next_answer() {
        if !plan.control.stopped() {
            if let Some(range) = flight.refill() {
                buf.clear();
                for msg in range.clone() {
                    encode(&Command::Retr { msg }, &mut buf);
                    if pipelining {
                        encode(&Command::Dele { msg }, &mut buf);
                    }
                }
                let at = Instant::now();
                conn.write_all(&buf).await?;
                sent.extend(range.map(|_| at));
            }
        } else if flight.in_flight() == 0 {
            break;
        }
        let sent_at = sent.pop_front().unwrap_or_else(Instant::now);
        if status(&mut conn, stats).await? {
            let bytes = conn.skip_dot_body().await?;
            let mut s = stats.borrow_mut();
            s.retr.record(sent_at.elapsed());
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
        flight.answered();
    }
    conn.write_all(&line(Command::Quit)).await?;
    // RFC 1939 §6: deletions take effect only when QUIT is answered +OK.
    let committed = status(&mut conn, stats).await?;
    {
        let mut s = stats.borrow_mut();
        s.retrieval_time += logged_in.elapsed();
        if committed {
            s.deleted += deleted;
        }
    }
    conn.shutdown().await;
    Ok(committed)
}

/// Which messages of a mailbox of `count` are sent and answered: at most `window` in flight,
/// topped up to `window` once no more than half of it is outstanding (one write per refill,
/// not one per answer). With a window of 1 it is one message at a time.
#[derive(Debug)]
struct Window {
    count: u64,
    window: u64,
    /// Messages `1..next_send` are sent; `1..=answered` are answered.
    next_send: u64,
    answered: u64,
}

impl Window {
    fn new(count: u64, window: u64) -> Window {
        Window {
            count,
            window: window.max(1),
            next_send: 1,
            answered: 0,
        }
    }

    fn in_flight(&self) -> u64 {
        self.next_send - 1 - self.answered
    }

    /// The message whose answers come next, while any is left to send or to read.
    fn next_answer(&self) -> Option<u64> {
        (self.answered < self.count).then_some(self.answered + 1)
    }

    /// The messages to send now, if it is time to top the window up.
    fn refill(&mut self) -> Option<std::ops::RangeInclusive<u64>> {
        if self.next_send > self.count || self.in_flight() > self.window / 2 {
            return None;
        }
        let first = self.next_send;
        let last = (self.answered + self.window).min(self.count);
        self.next_send = last + 1;
        Some(first..=last)
    }

    fn answered(&mut self) {
        debug_assert!(self.in_flight() > 0, "an answer to a message not sent");
        self.answered += 1;
    }
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
    /// Whether --pipelining was asked (the server may still not offer it) and the window.
    pub pipelining: bool,
    pub window: u64,
    /// Per connection: the time spent logging in (connect → logged in) and retrieving
    /// (logged in → QUIT answered), summed over its sessions.
    pub login_s: f64,
    pub retrieval_s: f64,
    /// `msgs_per_s` and `mb_per_s` over `retrieval_s`: the rate with the logins left out.
    pub msgs_per_s_retrieval: f64,
    pub mb_per_s_retrieval: f64,
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
        text += &format!(
            "  per conn.  logging in {:.2} s, retrieving {:.2} s: {:.1} msgs/s  {:.2} MB/s without the logins (window {})\n",
            self.login_s, self.retrieval_s, self.msgs_per_s_retrieval, self.mb_per_s_retrieval, self.window
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
        crate::stats::print_summary(json, &text, self);
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

    /// Sends and answers in order, never more than the window in flight, refills only once
    /// half of it is answered, and ends after the last answer.
    fn schedule(count: u64, window: u64) -> Vec<(u64, Vec<u64>)> {
        let mut flight = Window::new(count, window);
        let mut steps = Vec::new();
        while let Some(msg) = flight.next_answer() {
            let sent: Vec<u64> = flight.refill().map(Iterator::collect).unwrap_or_default();
            assert!(flight.in_flight() <= window.max(1), "{flight:?}");
            assert!(flight.in_flight() >= 1, "{flight:?}");
            steps.push((msg, sent));
            flight.answered();
        }
        assert_eq!(flight.in_flight(), 0);
        steps
    }

    #[test]
    fn window_schedule() {
        assert_eq!(schedule(0, 4), vec![]);
        assert_eq!(
            schedule(3, 1),
            vec![(1, vec![1]), (2, vec![2]), (3, vec![3])]
        );
        assert_eq!(
            schedule(7, 4),
            vec![
                (1, vec![1, 2, 3, 4]),
                (2, vec![]),
                // Two outstanding (3 and 4): half the window, topped up to four.
                (3, vec![5, 6]),
                (4, vec![]),
                (5, vec![7]),
                (6, vec![]),
                (7, vec![]),
            ]
        );
        // A window larger than the mailbox sends everything at once.
        assert_eq!(schedule(2, 64), vec![(1, vec![1, 2]), (2, vec![])]);
        // Every message is sent once and answered once, in order.
        for (count, window) in [(100, 32), (99, 7), (5, 2)] {
            let steps = schedule(count, window);
            let sent: Vec<u64> = steps.iter().flat_map(|(_, s)| s.clone()).collect();
            assert_eq!(sent, (1..=count).collect::<Vec<_>>());
            let answered: Vec<u64> = steps.iter().map(|(m, _)| *m).collect();
            assert_eq!(answered, (1..=count).collect::<Vec<_>>());
        }
    }
}
