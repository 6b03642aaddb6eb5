//! `loadgen imap`: IMAP client load (RFC 3501 IMAP4rev1, which RFC 9051 servers also serve).
//!
//! `--connections` sessions run in parallel. Each takes a user (round robin over the list),
//! logs in with LOGIN, prepares what its workload needs (SELECT; for body fetches the UIDs
//! from `UID SEARCH ALL`) and runs operations of the `--workload` until the user's share
//! (`--count` operations per user) is used up, then logs out and takes the next user with
//! work left; `--duration` and `--max-time` bound the whole run. In open loop (`--rate`)
//! operations are due at `start + n / rate` and their latency counts from that time. The
//! `idle` workload instead holds every session in IDLE (RFC 2177) for `--duration` once all
//! have entered it, for measuring a server's memory per session.
//!
//! Body fetches can keep the server busy rather than the round trip: `--pipelining N` keeps
//! N commands in flight per session (sent in one write, the next sent as each is answered),
//! and `fetch-range` asks for `--range` consecutive messages per `UID FETCH lo:hi`. Both run
//! in [`pipelined`], closed loop only.
//!
//! Commands are a handful of fixed texts, so they are written by hand; the only variable
//! parts (user names, passwords, mailbox, search word) are checked to be printable ASCII and
//! sent as quoted strings. Responses are scanned by [`response`], which keeps what a load
//! client needs and skips literal data as it arrives.

pub mod response;

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cli::{ImapArgs, Workload};
use crate::message::{Corpus, Rng, DEFAULT_FROM};
use crate::runner::{self, Control};
use crate::smtp::{error_line, ErrorReport};
use crate::stats::{per_second, Latency, LatencySummary, Live};
use crate::target;
use crate::wire::{Conn, ErrorCounts, WireError};
use response::{Response, Status};

/// A connection gives up after this many failed session starts in a row.
const START_FAILURES_MAX: u32 = 5;
/// Sessions being set up (connect, LOGIN, SELECT) at once over the whole run: holding
/// thousands of sessions must not flood the server's accept queue or its password hashing.
const SETUP_CONCURRENCY: usize = 64;
/// Read buffer of an IDLE session (a held session needs little; responses stream through).
const IDLE_BUFFER: usize = 4096;
/// Every how many appended messages one carries the search word in a header.
const MARK_EVERY: u64 = 10;

/// A user and the operations left for it (`u64::MAX`: no `--count`).
struct UserSlot {
    name: String,
    password: String,
    to: Vec<u8>,
    left: AtomicU64,
    /// Messages appended for this user (numbers the marked ones).
    appended: AtomicU64,
    /// The next message body fetches and STOREs take: shared by the user's sessions, so
    /// that `--count` equal to the mailbox's size visits every message once.
    cursor: AtomicUsize,
}

impl UserSlot {
    /// Takes one operation of this user's share.
    fn claim(&self) -> bool {
        self.left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Gives back an operation that did not happen (its session failed).
    fn unclaim(&self) {
        let _ = self
            .left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_add(1));
    }

    fn exhaust(&self) {
        self.left.store(0, Ordering::Relaxed);
    }
}

/// What connections share, built once.
struct Plan {
    addr: SocketAddr,
    workload: Workload,
    users: Vec<UserSlot>,
    next_user: AtomicUsize,
    rate: Option<f64>,
    issued: AtomicU64,
    io_timeout: Duration,
    control: Arc<Control>,
    live: Arc<Live>,
    corpus: Corpus,
    /// `"mailbox"` and `"word"`, quoted.
    mailbox: Vec<u8>,
    search: Vec<u8>,
    search_word: String,
    connections: usize,
    /// fetch-bodies / fetch-range: commands in flight per session, messages per range.
    pipelining: usize,
    range: usize,
    /// `idle`: how long to hold, and sessions that have entered IDLE or given up.
    hold: Duration,
    settled: AtomicUsize,
    idling: AtomicUsize,
}

impl Plan {
    /// The next user with work left, starting from the shared cursor.
    fn pick_user(&self) -> Option<usize> {
        let n = self.users.len();
        let start = self.next_user.fetch_add(1, Ordering::Relaxed) % n;
        (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| self.users[i].left.load(Ordering::Relaxed) > 0)
    }

    /// When the next operation is due: `Ok(None)` now (closed loop), `Err(())` past the
    /// run's bounds.
    fn due(&self) -> Result<Option<Instant>, ()> {
        if self.control.stopped() {
            return Err(());
        }
        let Some(rate) = self.rate else {
            return Ok(None);
        };
        let seq = self.issued.fetch_add(1, Ordering::Relaxed);
        // A time too far away to represent is past every bound.
        let due = Duration::try_from_secs_f64(seq as f64 / rate)
            .ok()
            .and_then(|offset| self.control.start.checked_add(offset))
            .filter(|&due| due < self.control.hard_deadline)
            .ok_or(())?;
        if self
            .control
            .deadline
            .is_some_and(|deadline| due >= deadline)
        {
            return Err(());
        }
        Ok(Some(due))
    }
}

/// One thread's counters (merged at the end).
#[derive(Debug, Default)]
pub struct ImapStats {
    sessions: u64,
    logins_refused: u64,
    session_failures: u64,
    attempted: u64,
    ok: u64,
    no: u64,
    bad: u64,
    failed: u64,
    appended: u64,
    append_bytes: u64,
    selects: u64,
    fetched: u64,
    fetch_bytes: u64,
    bodies: u64,
    body_bytes: u64,
    /// fetch-range: bodies a range command should have returned but did not.
    bodies_missing: u64,
    stored: u64,
    expunged: u64,
    searches: u64,
    search_hits: u64,
    idling: u64,
    idle_done: u64,
    idle_failed: u64,
    errors: ErrorCounts,
    first_error: Option<String>,
    login: Latency,
    select: Latency,
    fetch_flags: Latency,
    fetch_body: Latency,
    fetch_range: Latency,
    store: Latency,
    expunge: Latency,
    append: Latency,
    search: Latency,
    idle: Latency,
    /// From the start of the first operation to the end of the last (logins and SELECTs
    /// outside it): the time the workload's operations ran in.
    window: Option<(Instant, Instant)>,
}

impl ImapStats {
    fn span(&mut self, start: Instant, end: Instant) {
        self.window = Some(match self.window {
            Some((a, b)) => (a.min(start), b.max(end)),
            None => (start, end),
        });
    }

    fn error(&mut self, error: &WireError) {
        self.errors.count(error);
        if self.first_error.is_none() {
            self.first_error = Some(error.to_string());
        }
    }

    fn merge(&mut self, o: &ImapStats) {
        for (a, b) in [
            (&mut self.sessions, o.sessions),
            (&mut self.logins_refused, o.logins_refused),
            (&mut self.session_failures, o.session_failures),
            (&mut self.attempted, o.attempted),
            (&mut self.ok, o.ok),
            (&mut self.no, o.no),
            (&mut self.bad, o.bad),
            (&mut self.failed, o.failed),
            (&mut self.appended, o.appended),
            (&mut self.append_bytes, o.append_bytes),
            (&mut self.selects, o.selects),
            (&mut self.fetched, o.fetched),
            (&mut self.fetch_bytes, o.fetch_bytes),
            (&mut self.bodies, o.bodies),
            (&mut self.body_bytes, o.body_bytes),
            (&mut self.bodies_missing, o.bodies_missing),
            (&mut self.stored, o.stored),
            (&mut self.expunged, o.expunged),
            (&mut self.searches, o.searches),
            (&mut self.search_hits, o.search_hits),
            (&mut self.idling, o.idling),
            (&mut self.idle_done, o.idle_done),
            (&mut self.idle_failed, o.idle_failed),
        ] {
            *a += b;
        }
        self.errors.add(&o.errors);
        if self.first_error.is_none() {
            self.first_error.clone_from(&o.first_error);
        }
        self.login.add(&o.login);
        self.select.add(&o.select);
        self.fetch_flags.add(&o.fetch_flags);
        self.fetch_body.add(&o.fetch_body);
        self.fetch_range.add(&o.fetch_range);
        self.store.add(&o.store);
        self.expunge.add(&o.expunge);
        self.append.add(&o.append);
        self.search.add(&o.search);
        self.idle.add(&o.idle);
        if let Some((start, end)) = o.window {
            self.span(start, end);
        }
    }

    fn status(&mut self, status: Status) {
        match status {
            Status::Ok => self.ok += 1,
            Status::No => self.no += 1,
            Status::Bad => self.bad += 1,
        }
    }
}

/// A string argument as an IMAP quoted string (RFC 3501 §4.3): printable ASCII only, so
/// that no byte can end or split the command line.
fn quoted(what: &str, text: &str) -> Result<Vec<u8>, String> {
    if text.is_empty() || !text.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(format!(
            "{what} `{text}` must be non-empty printable ASCII (it is sent as a quoted string)"
        ));
    }
    let mut out = Vec::with_capacity(text.len() + 2);
    out.push(b'"');
    for b in text.bytes() {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
    Ok(out)
}

pub fn run(args: ImapArgs) -> Result<ExitCode, String> {
    if args.connections == 0 || args.connections > 100_000 {
        return Err("--connections must be between 1 and 100000".into());
    }
    let idle = args.workload == Workload::Idle;
    if idle && args.duration.is_none() {
        return Err("imap --workload idle: give --duration (how long to hold the sessions)".into());
    }
    if !idle && args.count.is_none() && args.duration.is_none() {
        return Err("imap: give --count N or --duration D (every run is bounded)".into());
    }
    if args.count == Some(0) {
        return Err("--count must be at least 1".into());
    }
    if args.pipelining == 0 || args.pipelining > 10_000 {
        return Err("--pipelining must be between 1 and 10000".into());
    }
    if args.range == 0 {
        return Err("--range must be at least 1".into());
    }
    if args.pipelining > 1 && args.rate.is_some() {
        return Err("--pipelining goes with the closed loop only (no --rate)".into());
    }
    if args.pipelining > 1 && !matches!(args.workload, Workload::FetchBodies | Workload::FetchRange)
    {
        return Err("--pipelining applies to fetch-bodies and fetch-range".into());
    }
    if let Some(rate) = args.rate {
        if !(rate.is_finite() && rate > 0.0) {
            return Err("--rate must be a positive number of operations per second".into());
        }
    }
    let addr = target::resolve(&args.target, "target", args.common.allow_remote)?;
    if !idle {
        runner::check_bounds(args.duration, args.common.max_time)?;
    } else if let Some(hold) = args.duration {
        runner::check_bounds(Some(hold), args.common.max_time)?;
    }
    let mut users = Vec::new();
    for (name, password) in crate::pop3::users(&args.users)? {
        quoted("user name", &name)?;
        quoted("password", &password)?;
        let to = if name.contains('@') {
            name.clone()
        } else {
            format!("{name}@loadgen.test")
        };
        users.push(UserSlot {
            to: to.into_bytes(),
            name,
            password,
            left: AtomicU64::new(if idle {
                u64::MAX
            } else {
                args.count.unwrap_or(u64::MAX)
            }),
            appended: AtomicU64::new(0),
            cursor: AtomicUsize::new(0),
        });
    }
    let user_count = users.len();
    // The idle run's bound is the hold after setup, enforced by the run itself.
    let control = Control::new(
        if idle { None } else { args.duration },
        args.common.max_time,
    );
    let live = Arc::new(Live::default());
    let plan = Arc::new(Plan {
        addr,
        workload: args.workload,
        users,
        next_user: AtomicUsize::new(0),
        rate: args.rate,
        issued: AtomicU64::new(0),
        io_timeout: args.common.io_timeout,
        control: Arc::clone(&control),
        live: Arc::clone(&live),
        corpus: Corpus::build(&[(args.size, 1)], false, DEFAULT_FROM)?,
        mailbox: quoted("--mailbox", &args.mailbox)?,
        search: quoted("--search", &args.search)?,
        search_word: args.search.clone(),
        connections: args.connections,
        pipelining: args.pipelining,
        range: args.range,
        hold: args.duration.unwrap_or_default(),
        settled: AtomicUsize::new(0),
        idling: AtomicUsize::new(0),
    });
    let connections = args.connections;
    let threads = args.common.threads(connections);
    let signal = runner::signals()?;
    eprintln!(
        "loadgen imap: started target={addr} workload={} users={user_count} connections={connections} threads={threads} pipelining={} loop={}",
        workload_name(args.workload),
        args.pipelining,
        match args.rate {
            Some(rate) => format!("open rate={rate}"),
            None => "closed".into(),
        }
    );
    let worker_plan = Arc::clone(&plan);
    let results = runner::run_threads(
        threads,
        &control,
        &live,
        &signal,
        "ops",
        move |thread, stats: Rc<RefCell<ImapStats>>| {
            let plan = Arc::clone(&worker_plan);
            async move {
                let setup = Rc::new(tokio::sync::Semaphore::new(
                    (SETUP_CONCURRENCY / threads).max(1),
                ));
                // One watcher per thread tells its sessions that the run stopped.
                let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
                let control = Arc::clone(&plan.control);
                let watcher = tokio::task::spawn_local(async move {
                    control.wait_stopped().await;
                    let _ = stop_tx.send(true);
                });
                let mut tasks = Vec::new();
                if idle && thread == 0 {
                    tasks.push(tokio::task::spawn_local(hold(Arc::clone(&plan))));
                }
                for id in (thread..connections).step_by(threads) {
                    let plan = Arc::clone(&plan);
                    let stats = Rc::clone(&stats);
                    let setup = Rc::clone(&setup);
                    let task = if idle {
                        let stop = stop_rx.clone();
                        tokio::task::spawn_local(async move {
                            idle_session(plan, stats, id, setup, stop).await;
                        })
                    } else {
                        tokio::task::spawn_local(async move {
                            connection(plan, stats, id, setup).await;
                        })
                    };
                    tasks.push(task);
                }
                for task in tasks {
                    let _ = task.await;
                }
                watcher.abort();
            }
        },
    )?;
    let elapsed = control.start.elapsed();
    let mut total = ImapStats::default();
    for stats in &results {
        total.merge(stats);
    }
    let report = ImapReport::new(&args, addr, user_count, threads, elapsed, &control, &total);
    report.print(args.common.json);
    Ok(if total.sessions == 0 && !control.interrupted() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn workload_name(workload: Workload) -> &'static str {
    match workload {
        Workload::Append => "append",
        Workload::Select => "select",
        Workload::FetchFlags => "fetch-flags",
        Workload::FetchBodies => "fetch-bodies",
        Workload::FetchRange => "fetch-range",
        Workload::Store => "store",
        Workload::Expunge => "expunge",
        Workload::SearchText => "search-text",
        Workload::Mixed => "mixed",
        Workload::Idle => "idle",
    }
}

/// One client session: the connection, the response being read and what it learnt.
struct Client {
    conn: Conn,
    response: Response,
    tag: Vec<u8>,
    next_tag: u64,
    cmd: Vec<u8>,
    exists: u32,
    literal_plus: Option<bool>,
    uids: Vec<u32>,
}

/// What the untagged responses to one command said.
#[derive(Debug, Default)]
struct Tally {
    fetches: u64,
    fetch_bytes: u64,
    bodies: u64,
    body_bytes: u64,
    expunged: u64,
    hits: u64,
}

impl Client {
    async fn connect(
        addr: SocketAddr,
        timeout: Duration,
        buffer: usize,
    ) -> Result<Client, WireError> {
        let conn = Conn::connect_with_buffer(addr, timeout, buffer).await?;
        let mut client = Client {
            conn,
            response: Response::default(),
            tag: Vec::with_capacity(16),
            next_tag: 0,
            cmd: Vec::with_capacity(256),
            exists: 0,
            literal_plus: None,
            uids: Vec::new(),
        };
        client.response.read(&mut client.conn).await?;
        let greeting = client.response.untagged().unwrap_or_default();
        if !(greeting.starts_with(b"OK") || greeting.starts_with(b"PREAUTH")) {
            return Err(WireError::Protocol(format!(
                "not an IMAP greeting: {}",
                client.response.shown()
            )));
        }
        client.note_capabilities();
        Ok(client)
    }

    fn note_capabilities(&mut self) {
        if let Some(plus) = self.response.capability(b"LITERAL+") {
            self.literal_plus = Some(plus);
        }
    }

    /// Starts a command: a new tag, then `text` in `self.cmd` (without the line end).
    fn begin(&mut self) {
        self.next_tag += 1;
        self.tag.clear();
        self.tag.push(b'a');
        self.tag
            .extend_from_slice(self.next_tag.to_string().as_bytes());
        self.cmd.clear();
        self.cmd.extend_from_slice(&self.tag);
        self.cmd.push(b' ');
    }

    /// Sends `self.cmd` (a CRLF is added) and reads up to its tagged response.
    async fn send(&mut self, tally: &mut Tally) -> Result<Status, WireError> {
        self.cmd.extend_from_slice(b"\r\n");
        self.conn.write_all(&self.cmd).await?;
        self.finish(tally).await
    }

    /// Reads responses up to the one tagged with the current tag.
    async fn finish(&mut self, tally: &mut Tally) -> Result<Status, WireError> {
        loop {
            self.response.read(&mut self.conn).await?;
            if let Some(status) = self.response.tagged(&self.tag) {
                self.note_capabilities();
                return status;
            }
            if self.response.is_continuation() {
                return Err(WireError::Protocol(format!(
                    "unexpected continuation: {}",
                    self.response.shown()
                )));
            }
            self.untagged(tally);
        }
    }

    fn untagged(&mut self, tally: &mut Tally) {
        let r = &mut self.response;
        if let Some((n, word)) = r.numbered() {
            if word.eq_ignore_ascii_case(b"EXISTS") {
                self.exists = n;
            } else if word.eq_ignore_ascii_case(b"EXPUNGE") {
                self.exists = self.exists.saturating_sub(1);
                tally.expunged += 1;
            } else if word.eq_ignore_ascii_case(b"FETCH") {
                tally.fetches += 1;
                tally.fetch_bytes += r.head().len() as u64 + r.literal_bytes;
                if r.literals > 0 {
                    tally.bodies += 1;
                    tally.body_bytes += r.literal_bytes;
                }
            }
        } else if let Some(rest) = r.untagged() {
            if rest.len() >= 6 && rest[..6].eq_ignore_ascii_case(b"SEARCH") {
                tally.hits += r.numbers;
                if r.collect {
                    let room = response::NUMBERS_MAX.saturating_sub(self.uids.len());
                    let take = r.collected.len().min(room);
                    self.uids.extend_from_slice(&r.collected[..take]);
                }
            } else {
                self.note_capabilities();
            }
        }
    }

    async fn login(&mut self, user: &UserSlot) -> Result<Status, WireError> {
        self.begin();
        self.cmd.extend_from_slice(b"LOGIN ");
        // Checked printable at start, so quoting cannot fail.
        let name = quoted("", &user.name).unwrap_or_default();
        let password = quoted("", &user.password).unwrap_or_default();
        self.cmd.extend_from_slice(&name);
        self.cmd.push(b' ');
        self.cmd.extend_from_slice(&password);
        self.send(&mut Tally::default()).await
    }

    async fn select(&mut self, mailbox: &[u8]) -> Result<Status, WireError> {
        self.begin();
        self.cmd.extend_from_slice(b"SELECT ");
        self.cmd.extend_from_slice(mailbox);
        self.exists = 0;
        self.send(&mut Tally::default()).await
    }

    /// Learns the mailbox's UIDs (for body fetches).
    async fn uids(&mut self) -> Result<Status, WireError> {
        self.uids.clear();
        self.begin();
        self.cmd.extend_from_slice(b"UID SEARCH ALL");
        self.response.collect = true;
        let status = self.send(&mut Tally::default()).await;
        self.response.collect = false;
        status
    }

    async fn capabilities(&mut self) -> Result<Status, WireError> {
        self.begin();
        self.cmd.extend_from_slice(b"CAPABILITY");
        self.send(&mut Tally::default()).await
    }

    async fn logout(&mut self) {
        self.begin();
        self.cmd.extend_from_slice(b"LOGOUT");
        let _ = self.send(&mut Tally::default()).await;
        self.conn.shutdown().await;
    }
}

/// What one operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Select,
    FetchFlags,
    FetchBody,
    FetchRange,
    Store,
    Expunge,
    Append,
    Search,
}

impl Op {
    fn of(workload: Workload, rng: &mut Rng) -> Op {
        match workload {
            Workload::Append => Op::Append,
            Workload::Select => Op::Select,
            Workload::FetchFlags => Op::FetchFlags,
            Workload::FetchBodies => Op::FetchBody,
            Workload::FetchRange => Op::FetchRange,
            Workload::Store => Op::Store,
            Workload::Expunge => Op::Expunge,
            Workload::SearchText => Op::Search,
            Workload::Mixed | Workload::Idle => match rng.below(100) {
                0..50 => Op::FetchBody,
                50..70 => Op::Store,
                70..85 => Op::Append,
                85..95 => Op::Search,
                _ => Op::Select,
            },
        }
    }
}

/// How an operation ended (a connection error is the `Err` beside it).
enum Outcome {
    Done(Status),
    /// Nothing to do in this mailbox (empty): the user's work is over.
    Nothing,
}

/// Logs in as `user` and prepares the workload; `Ok(None)` when the login was refused.
async fn start_session(
    plan: &Plan,
    stats: &RefCell<ImapStats>,
    user: &UserSlot,
    buffer: usize,
) -> Result<Option<Client>, WireError> {
    let started = Instant::now();
    let mut client = Client::connect(plan.addr, plan.io_timeout, buffer).await?;
    if client.login(user).await? != Status::Ok {
        stats.borrow_mut().logins_refused += 1;
        client.logout().await;
        return Ok(None);
    }
    {
        let mut s = stats.borrow_mut();
        s.login.record(started.elapsed());
        s.sessions += 1;
    }
    let workload = plan.workload;
    if matches!(workload, Workload::Append | Workload::Mixed) && client.literal_plus.is_none() {
        client.capabilities().await?;
    }
    if !matches!(workload, Workload::Append | Workload::Select) {
        let sent = Instant::now();
        let status = client.select(&plan.mailbox).await?;
        {
            let mut s = stats.borrow_mut();
            if status == Status::Ok {
                s.select.record(sent.elapsed());
                s.selects += 1;
            } else {
                s.status(status);
            }
        }
        if status != Status::Ok {
            // No mailbox to work on: nothing for this user.
            user.exhaust();
            client.logout().await;
            return Ok(None);
        }
    }
    if matches!(
        workload,
        Workload::FetchBodies | Workload::FetchRange | Workload::Mixed
    ) && client.exists > 0
    {
        client.uids().await?;
    }
    Ok(Some(client))
}

/// One connection's life: a user's session after another until no work is left.
async fn connection(
    plan: Arc<Plan>,
    stats: Rc<RefCell<ImapStats>>,
    id: usize,
    setup: Rc<tokio::sync::Semaphore>,
) {
    let mut rng = Rng::new(id as u64);
    let mut buf = Vec::with_capacity(512);
    let mut failures = 0u32;
    let mut user_index: Option<usize> = None;
    'session: while !plan.control.stopped() {
        let index = match user_index {
            Some(index) if plan.users[index].left.load(Ordering::Relaxed) > 0 => index,
            _ => match plan.pick_user() {
                Some(index) => index,
                None => break,
            },
        };
        user_index = Some(index);
        let user = &plan.users[index];
        let started = {
            let Ok(_permit) = setup.acquire().await else {
                break;
            };
            // Body fetches that keep the server busy read in larger pieces (fewer reads
            // per byte on the client, which shares the machine with the server).
            let buffer = if plan.pipelining > 1 || plan.workload == Workload::FetchRange {
                256 * 1024
            } else {
                64 * 1024
            };
            start_session(&plan, &stats, user, buffer).await
        };
        let mut client = match started {
            Ok(Some(client)) => {
                failures = 0;
                client
            }
            Ok(None) => {
                // Refused: this user's work cannot be done.
                user.exhaust();
                continue;
            }
            Err(error) => {
                plan.live.error();
                {
                    let mut s = stats.borrow_mut();
                    s.session_failures += 1;
                    s.error(&error);
                }
                failures += 1;
                if failures >= START_FAILURES_MAX {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50 << failures)).await;
                continue;
            }
        };
        if plan.pipelining > 1 || plan.workload == Workload::FetchRange {
            match pipelined(&mut client, &plan, &stats, user).await {
                Ok(()) => {
                    if client.uids.is_empty() {
                        // Nothing to fetch in this mailbox: the user's work is over.
                        user.exhaust();
                    }
                    client.logout().await;
                    if plan.control.stopped() {
                        break 'session;
                    }
                }
                Err(error) => {
                    plan.live.error();
                    let mut s = stats.borrow_mut();
                    s.error(&error);
                }
            }
            continue 'session;
        }
        loop {
            if !user.claim() {
                client.logout().await;
                continue 'session;
            }
            let Ok(due) = plan.due() else {
                user.unclaim();
                client.logout().await;
                break 'session;
            };
            if let Some(due) = due {
                tokio::time::sleep_until(due.into()).await;
            }
            let op = Op::of(plan.workload, &mut rng);
            stats.borrow_mut().attempted += 1;
            let op_start = due.unwrap_or_else(Instant::now);
            let outcome = operation(
                &mut client,
                &plan,
                &stats,
                user,
                op,
                due,
                &mut rng,
                &mut buf,
            )
            .await;
            match outcome {
                Ok(Outcome::Done(status)) => {
                    let mut s = stats.borrow_mut();
                    s.status(status);
                    s.span(op_start, Instant::now());
                }
                Ok(Outcome::Nothing) => {
                    stats.borrow_mut().attempted -= 1;
                    user.exhaust();
                    client.logout().await;
                    continue 'session;
                }
                Err(error) => {
                    user.unclaim();
                    plan.live.error();
                    let mut s = stats.borrow_mut();
                    s.failed += 1;
                    s.error(&error);
                    continue 'session;
                }
            }
        }
    }
}

/// Runs one operation; its latency counts from `due` (open loop) or from now.
#[allow(clippy::too_many_arguments)]
async fn operation(
    client: &mut Client,
    plan: &Plan,
    stats: &RefCell<ImapStats>,
    user: &UserSlot,
    op: Op,
    due: Option<Instant>,
    rng: &mut Rng,
    buf: &mut Vec<u8>,
) -> Result<Outcome, WireError> {
    let started = due.unwrap_or_else(Instant::now);
    let mut tally = Tally::default();
    match op {
        Op::Select => {
            let status = client.select(&plan.mailbox).await?;
            let mut s = stats.borrow_mut();
            if status == Status::Ok {
                s.select.record(started.elapsed());
                s.selects += 1;
            }
            drop(s);
            plan.live.add(1, 0);
            Ok(Outcome::Done(status))
        }
        Op::FetchFlags => {
            if client.exists == 0 {
                return Ok(Outcome::Nothing);
            }
            client.begin();
            client.cmd.extend_from_slice(b"FETCH 1:* (FLAGS ENVELOPE)");
            let status = client.send(&mut tally).await?;
            let mut s = stats.borrow_mut();
            if status == Status::Ok {
                s.fetch_flags.record(started.elapsed());
            }
            s.fetched += tally.fetches;
            s.fetch_bytes += tally.fetch_bytes;
            drop(s);
            plan.live.add(tally.fetches, tally.fetch_bytes);
            Ok(Outcome::Done(status))
        }
        Op::FetchBody | Op::FetchRange => {
            if client.uids.is_empty() {
                return Ok(Outcome::Nothing);
            }
            let range = if op == Op::FetchRange { plan.range } else { 1 };
            let (lo, hi, _) = next_range(&client.uids, &user.cursor, range);
            client.begin();
            fetch_command(&mut client.cmd, lo, hi);
            let status = client.send(&mut tally).await?;
            let mut s = stats.borrow_mut();
            if status == Status::Ok {
                if op == Op::FetchRange {
                    s.fetch_range.record(started.elapsed());
                } else {
                    s.fetch_body.record(started.elapsed());
                }
            }
            s.bodies += tally.bodies;
            s.body_bytes += tally.body_bytes;
            drop(s);
            plan.live.add(tally.bodies, tally.body_bytes);
            Ok(Outcome::Done(status))
        }
        Op::Store => {
            if client.exists == 0 {
                return Ok(Outcome::Nothing);
            }
            let seq = user.cursor.fetch_add(1, Ordering::Relaxed) % client.exists as usize + 1;
            client.begin();
            client.cmd.extend_from_slice(b"STORE ");
            client.cmd.extend_from_slice(seq.to_string().as_bytes());
            client.cmd.extend_from_slice(b" +FLAGS (\\Flagged)");
            let status = client.send(&mut tally).await?;
            let mut s = stats.borrow_mut();
            if status == Status::Ok {
                s.store.record(started.elapsed());
                s.stored += 1;
            }
            drop(s);
            plan.live.add(1, 0);
            Ok(Outcome::Done(status))
        }
        Op::Expunge => {
            if client.exists == 0 {
                return Ok(Outcome::Nothing);
            }
            client.begin();
            client
                .cmd
                .extend_from_slice(b"STORE 1 +FLAGS.SILENT (\\Deleted)");
            let marked = client.send(&mut tally).await?;
            if marked != Status::Ok {
                return Ok(Outcome::Done(marked));
            }
            client.begin();
            client.cmd.extend_from_slice(b"EXPUNGE");
            let status = client.send(&mut tally).await?;
            let mut s = stats.borrow_mut();
            if status == Status::Ok {
                s.expunge.record(started.elapsed());
            }
            s.expunged += tally.expunged;
            drop(s);
            plan.live.add(tally.expunged, 0);
            Ok(Outcome::Done(status))
        }
        Op::Search => {
            client.begin();
            client.cmd.extend_from_slice(b"SEARCH TEXT ");
            client.cmd.extend_from_slice(&plan.search);
            let status = client.send(&mut tally).await?;
            let mut s = stats.borrow_mut();
            if status == Status::Ok {
                s.search.record(started.elapsed());
                s.searches += 1;
                s.search_hits += tally.hits;
            }
            drop(s);
            plan.live.add(1, 0);
            Ok(Outcome::Done(status))
        }
        Op::Append => {
            let (status, bytes) = append(client, plan, user, rng, buf).await?;
            let mut s = stats.borrow_mut();
            if status == Status::Ok {
                s.append.record(started.elapsed());
                s.appended += 1;
                s.append_bytes += bytes;
            }
            drop(s);
            if status == Status::Ok {
                plan.live.add(1, bytes);
            }
            Ok(Outcome::Done(status))
        }
    }
}

/// The next `range` UIDs of the user's round over `uids` (sorted, as `UID SEARCH ALL`
/// answers): `(lo, hi, messages)`. A range does not wrap past the mailbox's end.
fn next_range(uids: &[u32], cursor: &AtomicUsize, range: usize) -> (u32, u32, u64) {
    let start = cursor.fetch_add(range, Ordering::Relaxed) % uids.len();
    let end = (start + range).min(uids.len());
    (uids[start], uids[end - 1], (end - start) as u64)
}

/// Appends `UID FETCH lo[:hi] BODY.PEEK[]` (after the tag `begin` wrote).
fn fetch_command(cmd: &mut Vec<u8>, lo: u32, hi: u32) {
    cmd.extend_from_slice(b"UID FETCH ");
    cmd.extend_from_slice(lo.to_string().as_bytes());
    if hi != lo {
        cmd.push(b':');
        cmd.extend_from_slice(hi.to_string().as_bytes());
    }
    cmd.extend_from_slice(b" BODY.PEEK[]");
}

/// The number of a tag this client wrote (`a<n>`), if `head` is a tagged response.
fn tag_number(head: &[u8]) -> Option<u64> {
    let rest = head.strip_prefix(b"a")?;
    let end = rest.iter().position(|&b| b == b' ')?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// A command in flight: its tag's number, when it was sent, the bodies it should return.
struct InFlight {
    tag: u64,
    sent: Instant,
    expected: u64,
}

/// fetch-bodies with `--pipelining` and fetch-range: keeps up to `plan.pipelining` body
/// fetches in flight on this session until the user's share is used up or the run stops;
/// new commands go out together in one write as earlier ones are answered. `Err` on a
/// connection error (the commands in flight are given back to the user's share).
async fn pipelined(
    client: &mut Client,
    plan: &Plan,
    stats: &RefCell<ImapStats>,
    user: &UserSlot,
) -> Result<(), WireError> {
    let range = if plan.workload == Workload::FetchRange {
        plan.range
    } else {
        1
    };
    let mut inflight: VecDeque<InFlight> = VecDeque::with_capacity(plan.pipelining);
    let mut batch = Vec::with_capacity(64 * plan.pipelining.min(1024));
    let mut tally = Tally::default();
    // Bodies answered OK commands asked for, and bodies seen: compared once the session's
    // commands are done. Not per command: a server may run pipelined FETCHes at once and
    // interleave their untagged answers (Dovecot does), so the bodies seen before a tagged
    // OK are not all that command's; each command's own come before its OK, so the totals
    // match when nothing is missing.
    let (mut expected_ok, mut seen) = (0u64, 0u64);
    let mut draining = client.uids.is_empty();
    let result: Result<(), WireError> = async {
        loop {
            batch.clear();
            while !draining && inflight.len() < plan.pipelining {
                if plan.control.stopped() || !user.claim() {
                    draining = true;
                    break;
                }
                let (lo, hi, expected) = next_range(&client.uids, &user.cursor, range);
                client.begin();
                fetch_command(&mut client.cmd, lo, hi);
                client.cmd.extend_from_slice(b"\r\n");
                batch.extend_from_slice(&client.cmd);
                inflight.push_back(InFlight {
                    tag: client.next_tag,
                    sent: Instant::now(),
                    expected,
                });
                stats.borrow_mut().attempted += 1;
            }
            if !batch.is_empty() {
                client.conn.write_all(&batch).await?;
            }
            if inflight.is_empty() {
                return Ok(());
            }
            client.response.read(&mut client.conn).await?;
            let Some(number) = tag_number(client.response.head()) else {
                if client.response.is_continuation() {
                    return Err(WireError::Protocol(format!(
                        "unexpected continuation: {}",
                        client.response.shown()
                    )));
                }
                client.untagged(&mut tally);
                continue;
            };
            let Some(at) = inflight.iter().position(|c| c.tag == number) else {
                return Err(WireError::Protocol(format!(
                    "answer to a command not sent: {}",
                    client.response.shown()
                )));
            };
            let done = inflight.remove(at).unwrap_or(InFlight {
                tag: number,
                sent: Instant::now(),
                expected: 0,
            });
            let tag = format!("a{number}");
            let status = client
                .response
                .tagged(tag.as_bytes())
                .unwrap_or(Ok(Status::Bad))?;
            let end = Instant::now();
            let mut s = stats.borrow_mut();
            s.status(status);
            s.span(done.sent, end);
            if status == Status::Ok {
                if range > 1 {
                    s.fetch_range.record(end - done.sent);
                } else {
                    s.fetch_body.record(end - done.sent);
                }
                expected_ok += done.expected;
            }
            seen += tally.bodies;
            s.bodies += tally.bodies;
            s.body_bytes += tally.body_bytes;
            drop(s);
            plan.live.add(tally.bodies, tally.body_bytes);
            tally = Tally::default();
        }
    }
    .await;
    stats.borrow_mut().bodies_missing += expected_ok.saturating_sub(seen);
    if result.is_err() {
        for _ in &inflight {
            user.unclaim();
        }
        stats.borrow_mut().failed += inflight.len() as u64;
    }
    result
}

/// APPENDs one generated message; returns the status and the message's size. With
/// LITERAL+ (RFC 7888) the command and the message go in one write, else the message
/// waits for the server's continuation.
async fn append(
    client: &mut Client,
    plan: &Plan,
    user: &UserSlot,
    rng: &mut Rng,
    headers: &mut Vec<u8>,
) -> Result<(Status, u64), WireError> {
    let number = user.appended.fetch_add(1, Ordering::Relaxed);
    let variant = plan.corpus.pick(rng);
    plan.corpus
        .write_headers(headers, &user.to, rng.next_u64(), 0);
    if number.is_multiple_of(MARK_EVERY) {
        headers.extend_from_slice(b"X-Loadgen-Mark: ");
        headers.extend_from_slice(plan.search_word.as_bytes());
        headers.extend_from_slice(b"\r\n");
    }
    let size = (headers.len() + variant.content.len()) as u64;
    let plus = client.literal_plus == Some(true);
    client.begin();
    client.cmd.extend_from_slice(b"APPEND ");
    client.cmd.extend_from_slice(&plan.mailbox);
    client.cmd.extend_from_slice(b" {");
    client.cmd.extend_from_slice(size.to_string().as_bytes());
    if plus {
        client.cmd.push(b'+');
    }
    client.cmd.extend_from_slice(b"}\r\n");
    let mut tally = Tally::default();
    if !plus {
        client.conn.write_all(&client.cmd).await?;
        loop {
            client.response.read(&mut client.conn).await?;
            if client.response.is_continuation() {
                break;
            }
            if let Some(status) = client.response.tagged(&client.tag) {
                return Ok((status?, size));
            }
            client.untagged(&mut tally);
        }
        client
            .conn
            .write_all_vectored(&[headers, &variant.content, b"\r\n"])
            .await?;
    } else {
        client
            .conn
            .write_all_vectored(&[&client.cmd, headers, &variant.content, b"\r\n"])
            .await?;
    }
    let status = client.finish(&mut tally).await?;
    Ok((status, size))
}

/// `idle`: waits until every session has entered IDLE (or given up), says so on stderr,
/// holds for `--duration`, then stops the run.
async fn hold(plan: Arc<Plan>) {
    while plan.settled.load(Ordering::Relaxed) < plan.connections {
        if plan.control.stopped() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "loadgen imap: {} sessions idling ({} failed) after {:.1} s; holding for {:.1} s",
        plan.idling.load(Ordering::Relaxed),
        plan.connections - plan.idling.load(Ordering::Relaxed),
        plan.control.start.elapsed().as_secs_f64(),
        plan.hold.as_secs_f64()
    );
    let until = Instant::now() + plan.hold;
    while Instant::now() < until && !plan.control.stopped() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    plan.control.stop();
}

/// One session held in IDLE: LOGIN, SELECT, IDLE; then, once the run stops, DONE and LOGOUT.
async fn idle_session(
    plan: Arc<Plan>,
    stats: Rc<RefCell<ImapStats>>,
    id: usize,
    setup: Rc<tokio::sync::Semaphore>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let user = &plan.users[id % plan.users.len()];
    let mut failures = 0u32;
    let entered = loop {
        if plan.control.stopped() {
            break None;
        }
        let attempt = async {
            let Some(mut client) = start_session(&plan, &stats, user, IDLE_BUFFER).await? else {
                return Ok(None);
            };
            let sent = Instant::now();
            client.begin();
            client.cmd.extend_from_slice(b"IDLE\r\n");
            client.conn.write_all(&client.cmd).await?;
            let mut tally = Tally::default();
            loop {
                client.response.read(&mut client.conn).await?;
                if client.response.is_continuation() {
                    stats.borrow_mut().idle.record(sent.elapsed());
                    return Ok(Some(client));
                }
                if let Some(status) = client.response.tagged(&client.tag) {
                    status?;
                    return Err(WireError::Protocol(format!(
                        "IDLE refused: {}",
                        client.response.shown()
                    )));
                }
                client.untagged(&mut tally);
            }
        };
        let result = {
            let Ok(_permit) = setup.acquire().await else {
                break None;
            };
            attempt.await
        };
        match result {
            Ok(client) => break client,
            Err(error) => {
                plan.live.error();
                {
                    let mut s = stats.borrow_mut();
                    s.session_failures += 1;
                    s.error(&error);
                }
                failures += 1;
                if failures >= START_FAILURES_MAX {
                    break None;
                }
                tokio::time::sleep(Duration::from_millis(50 << failures)).await;
            }
        }
    };
    if entered.is_some() {
        plan.idling.fetch_add(1, Ordering::Relaxed);
    }
    plan.settled.fetch_add(1, Ordering::Relaxed);
    let Some(mut client) = entered else {
        stats.borrow_mut().idle_failed += 1;
        return;
    };
    stats.borrow_mut().idling += 1;
    plan.live.add(1, 0);
    // Held: whatever the server says meanwhile (EXISTS, "OK still here") is read and
    // dropped; the read timeout does not apply to an idle session.
    let held: Result<(), WireError> = async {
        loop {
            tokio::select! {
                _ = stop.wait_for(|&stopped| stopped) => return Ok(()),
                read = client.conn.fill() => match read {
                    Ok(_) | Err(WireError::Timeout) => {
                        let complete = client
                            .conn
                            .buffered()
                            .iter()
                            .rposition(|&b| b == b'\n')
                            .map_or(0, |at| at + 1);
                        client.conn.consume(complete);
                    }
                    Err(error) => return Err(error),
                },
            }
        }
    }
    .await;
    if let Err(error) = held {
        plan.live.error();
        stats.borrow_mut().error(&error);
        return;
    }
    let done = async {
        client.conn.write_all(b"DONE\r\n").await?;
        client.finish(&mut Tally::default()).await
    }
    .await;
    match done {
        Ok(Status::Ok) => stats.borrow_mut().idle_done += 1,
        Ok(status) => stats.borrow_mut().status(status),
        Err(error) => {
            stats.borrow_mut().error(&error);
            return;
        }
    }
    client.logout().await;
}

#[derive(Debug, Serialize)]
pub struct ImapReport {
    pub mode: &'static str,
    pub workload: Workload,
    pub target: String,
    #[serde(rename = "loop")]
    pub loop_kind: &'static str,
    pub rate: Option<f64>,
    pub users: usize,
    pub connections: usize,
    pub threads: usize,
    pub elapsed_s: f64,
    pub interrupted: bool,
    pub sessions: Sessions,
    pub operations: Operations,
    pub appended: Bytes,
    pub selected: u64,
    pub fetched: Fetched,
    pub stored: u64,
    pub expunged: u64,
    pub searched: Searched,
    pub idle: Idle,
    /// fetch-bodies / fetch-range: commands in flight per session, messages per range.
    pub pipelining: usize,
    pub range: Option<usize>,
    pub ops_per_s: f64,
    /// Messages per second: appended, bodies fetched, or messages in FETCH 1:* answers,
    /// as the workload goes (operations for the others).
    pub msgs_per_s: f64,
    /// Seconds from the start of the first operation to the end of the last: without the
    /// logins (an argon2id hash each) and SELECTs before the first.
    pub ops_window_s: f64,
    /// `msgs_per_s` over `ops_window_s`: the workload's rate with the logins left out.
    pub msgs_per_s_ops_window: f64,
    pub mib_per_s: f64,
    pub connection_errors: ErrorReport,
    pub first_error: Option<String>,
    pub latency_ms: ImapLatency,
}

#[derive(Debug, Serialize)]
pub struct Sessions {
    pub logged_in: u64,
    pub logins_refused: u64,
    pub failed: u64,
}

#[derive(Debug, Serialize)]
pub struct Operations {
    pub attempted: u64,
    pub ok: u64,
    pub no: u64,
    pub bad: u64,
    pub failed: u64,
    pub unfinished: u64,
}

#[derive(Debug, Serialize)]
pub struct Bytes {
    pub messages: u64,
    pub bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct Fetched {
    /// FETCH responses to `FETCH 1:* (FLAGS ENVELOPE)` and their bytes.
    pub flags_envelope: u64,
    pub flags_envelope_bytes: u64,
    /// Bodies fetched (responses with a literal) and the literals' bytes.
    pub bodies: u64,
    pub body_bytes: u64,
    /// Bodies that answered range and body fetches should have held but did not.
    pub bodies_missing: u64,
}

#[derive(Debug, Serialize)]
pub struct Searched {
    pub searches: u64,
    pub hits: u64,
    pub word: String,
}

#[derive(Debug, Serialize)]
pub struct Idle {
    pub idling: u64,
    pub done: u64,
    pub failed: u64,
}

#[derive(Debug, Serialize)]
pub struct ImapLatency {
    pub login: LatencySummary,
    pub select: LatencySummary,
    pub fetch_flags: LatencySummary,
    pub fetch_body: LatencySummary,
    pub fetch_range: LatencySummary,
    pub store: LatencySummary,
    pub expunge: LatencySummary,
    pub append: LatencySummary,
    pub search: LatencySummary,
    pub idle: LatencySummary,
}

impl ImapReport {
    fn new(
        args: &ImapArgs,
        addr: SocketAddr,
        users: usize,
        threads: usize,
        elapsed: Duration,
        control: &Control,
        s: &ImapStats,
    ) -> ImapReport {
        let (msgs, bytes) = match args.workload {
            Workload::Append => (s.appended, s.append_bytes),
            Workload::FetchBodies | Workload::FetchRange => (s.bodies, s.body_bytes),
            Workload::FetchFlags => (s.fetched, s.fetch_bytes),
            Workload::Mixed => (s.ok, s.body_bytes + s.append_bytes),
            _ => (s.ok, 0),
        };
        let window = s.window.map(|(a, b)| b - a).unwrap_or_default();
        ImapReport {
            mode: "imap",
            workload: args.workload,
            target: addr.to_string(),
            loop_kind: if args.rate.is_some() {
                "open"
            } else {
                "closed"
            },
            rate: args.rate,
            users,
            connections: args.connections,
            threads,
            elapsed_s: elapsed.as_secs_f64(),
            interrupted: control.interrupted(),
            sessions: Sessions {
                logged_in: s.sessions,
                logins_refused: s.logins_refused,
                failed: s.session_failures,
            },
            operations: Operations {
                attempted: s.attempted,
                ok: s.ok,
                no: s.no,
                bad: s.bad,
                failed: s.failed,
                unfinished: s.attempted.saturating_sub(s.ok + s.no + s.bad + s.failed),
            },
            appended: Bytes {
                messages: s.appended,
                bytes: s.append_bytes,
            },
            selected: s.selects,
            fetched: Fetched {
                flags_envelope: s.fetched,
                flags_envelope_bytes: s.fetch_bytes,
                bodies: s.bodies,
                body_bytes: s.body_bytes,
                bodies_missing: s.bodies_missing,
            },
            stored: s.stored,
            expunged: s.expunged,
            searched: Searched {
                searches: s.searches,
                hits: s.search_hits,
                word: args.search.clone(),
            },
            idle: Idle {
                idling: s.idling,
                done: s.idle_done,
                failed: s.idle_failed,
            },
            pipelining: args.pipelining,
            range: (args.workload == Workload::FetchRange).then_some(args.range),
            ops_per_s: per_second(s.ok, elapsed),
            msgs_per_s: per_second(msgs, elapsed),
            ops_window_s: window.as_secs_f64(),
            msgs_per_s_ops_window: per_second(msgs, window),
            mib_per_s: per_second(bytes, elapsed) / f64::from(1 << 20),
            connection_errors: ErrorReport {
                counts: s.errors,
                total: s.errors.total(),
            },
            first_error: s.first_error.clone(),
            latency_ms: ImapLatency {
                login: s.login.summary(),
                select: s.select.summary(),
                fetch_flags: s.fetch_flags.summary(),
                fetch_body: s.fetch_body.summary(),
                fetch_range: s.fetch_range.summary(),
                store: s.store.summary(),
                expunge: s.expunge.summary(),
                append: s.append.summary(),
                search: s.search.summary(),
                idle: s.idle.summary(),
            },
        }
    }

    fn human(&self) -> String {
        let o = &self.operations;
        let mut text =
            format!(
            "loadgen imap {} → {}: {:.2} s, {} users, {} connections, {} threads, {} loop{}{}\n",
            workload_name(self.workload),
            self.target,
            self.elapsed_s,
            self.users,
            self.connections,
            self.threads,
            self.loop_kind,
            self.rate.map(|r| format!(" at {r} ops/s")).unwrap_or_default(),
            if self.interrupted { " (interrupted)" } else { "" },
        );
        text += &format!(
            "  sessions   logged in {}  logins refused {}  failed {}\n",
            self.sessions.logged_in, self.sessions.logins_refused, self.sessions.failed
        );
        text += &format!(
            "  operations attempted {}  ok {}  no {}  bad {}  failed {}  unfinished {}\n",
            o.attempted, o.ok, o.no, o.bad, o.failed, o.unfinished
        );
        text += &format!(
            "  done       appended {} ({} bytes)  selected {}  FETCH flags/envelope {}  bodies {} ({} bytes, {} missing)\n",
            self.appended.messages,
            self.appended.bytes,
            self.selected,
            self.fetched.flags_envelope,
            self.fetched.bodies,
            self.fetched.body_bytes,
            self.fetched.bodies_missing
        );
        if self.pipelining > 1 || self.range.is_some() {
            text += &format!(
                "  fetching   {} commands in flight per session{}\n",
                self.pipelining,
                self.range
                    .map(|r| format!(", {r} messages per UID FETCH lo:hi"))
                    .unwrap_or_default()
            );
        }
        text += &format!(
            "             stored {}  expunged {}  searches {} ({} hits for {:?})  idling {} (done {}, failed {})\n",
            self.stored,
            self.expunged,
            self.searched.searches,
            self.searched.hits,
            self.searched.word,
            self.idle.idling,
            self.idle.done,
            self.idle.failed
        );
        text += &format!(
            "  rate       {:.1} ops/s  {:.1} msgs/s  {:.2} MiB/s\n",
            self.ops_per_s, self.msgs_per_s, self.mib_per_s
        );
        text += &format!("  errors     {}\n", error_line(&self.connection_errors));
        if let Some(first) = &self.first_error {
            text += &format!("  first error: {first}\n");
        }
        text += &LatencySummary::header();
        text.push('\n');
        let l = &self.latency_ms;
        for (name, summary) in [
            ("connect→logged in", &l.login),
            ("SELECT", &l.select),
            ("FETCH 1:* FLAGS ENV", &l.fetch_flags),
            ("UID FETCH BODY[]", &l.fetch_body),
            ("UID FETCH lo:hi BODY[]", &l.fetch_range),
            ("STORE", &l.store),
            ("STORE+EXPUNGE", &l.expunge),
            ("APPEND", &l.append),
            ("SEARCH TEXT", &l.search),
            ("IDLE→continuation", &l.idle),
        ] {
            if summary.count > 0 {
                text += &summary.row(name);
                text.push('\n');
            }
        }
        text
    }

    fn print(&self, json: bool) {
        let text = self.human();
        crate::stats::print_summary(json, &text, self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quoted("x", "user0").unwrap(), b"\"user0\"");
        assert_eq!(quoted("x", r#"a"b\c"#).unwrap(), br#""a\"b\\c""#);
        assert!(quoted("x", "").is_err());
        assert!(quoted("x", "a\r\nb").is_err());
        assert!(quoted("x", "pässword").is_err());
    }

    #[test]
    fn mixed_picks_every_operation() {
        let mut rng = Rng::new(1);
        let mut seen = Vec::new();
        for _ in 0..1000 {
            let op = Op::of(Workload::Mixed, &mut rng);
            if !seen.contains(&op) {
                seen.push(op);
            }
        }
        assert_eq!(seen.len(), 5, "{seen:?}");
        assert_eq!(Op::of(Workload::Append, &mut rng), Op::Append);
    }

    #[test]
    fn user_shares() {
        let slot = UserSlot {
            name: "u".into(),
            password: "p".into(),
            to: Vec::new(),
            left: AtomicU64::new(2),
            appended: AtomicU64::new(0),
            cursor: AtomicUsize::new(0),
        };
        assert!(slot.claim());
        assert!(slot.claim());
        assert!(!slot.claim());
        slot.unclaim();
        assert!(slot.claim());
        slot.exhaust();
        assert!(!slot.claim());
    }
}
