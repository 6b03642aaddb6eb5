//! `loadgen smtp`: the SMTP client load.
//!
//! Closed loop (default): each connection sends its next message as soon as the last one is
//! answered. Open loop (`--rate R`): messages are due at `start + n / R` over all
//! connections; an idle connection takes the next due message, waits for its time, and its
//! latency is measured from that scheduled time, so a slow server cannot hide its stalls by
//! slowing the client down (no coordinated omission).
//!
//! Per message, a connection encodes nothing new: MAIL and RCPT lines were encoded at start
//! with `relay::smtp::command::encode`, the body is shared, and the per-message headers go
//! into a reused buffer. Replies are parsed line by line with `Reply::parse_line`, which
//! allocates nothing.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use relay::smtp::command::{encode, Command};
use relay::smtp::reply::{Reply, ReplyCode, ReplyLine};
use serde::Serialize;

use crate::cli::SmtpArgs;
use crate::message::{Corpus, Recipients, Rng, DEFAULT_FROM};
use crate::runner::{self, Control};
use crate::stats::{per_second, CodeCounts, Latency, LatencySummary, Live};
use crate::target;
use crate::wire::{Conn, ErrorCounts, WireError};

/// A connection gives up after this many connection attempts in a row fail.
const CONNECT_FAILURES_MAX: u32 = 5;
/// Lines in one reply before it counts as a protocol error.
const REPLY_LINES_MAX: usize = 1000;

/// Everything the connections share, built once.
struct Plan {
    addr: SocketAddr,
    corpus: Corpus,
    recipients: Recipients,
    rcpts: usize,
    pipelining: bool,
    bdat: bool,
    bdat_chunk: usize,
    messages_per_connection: u64,
    rate: Option<f64>,
    messages: Option<u64>,
    issued: AtomicU64,
    io_timeout: Duration,
    ehlo: Vec<u8>,
    helo: Vec<u8>,
    data: Vec<u8>,
    rset: Vec<u8>,
    quit: Vec<u8>,
    control: Arc<Control>,
    live: Arc<Live>,
    /// `--starttls`: the client TLS configuration and the name sent as SNI.
    starttls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
}

impl Plan {
    /// The next message to send: its sequence number and, in open loop, when it is due.
    fn claim(&self) -> Option<(u64, Option<Instant>)> {
        if self.control.stopped() {
            return None;
        }
        let seq = self.issued.fetch_add(1, Ordering::Relaxed);
        if self.messages.is_some_and(|max| seq >= max) {
            return None;
        }
        let due = match self.rate {
            None => None,
            // A time too far away to represent is past every bound.
            Some(rate) => Some(
                Duration::try_from_secs_f64(seq as f64 / rate)
                    .ok()
                    .and_then(|offset| self.control.start.checked_add(offset))
                    .filter(|&due| due < self.control.hard_deadline)?,
            ),
        };
        if let (Some(due), Some(deadline)) = (due, self.control.deadline) {
            if due >= deadline {
                return None;
            }
        }
        Some((seq, due))
    }
}

/// One thread's counters (merged at the end).
#[derive(Debug, Default)]
pub struct SmtpStats {
    attempted: u64,
    accepted: u64,
    rejected: u64,
    failed: u64,
    bytes: u64,
    rcpts_accepted: u64,
    rcpts_rejected: u64,
    sessions: u64,
    /// Sessions that went on over TLS (`--starttls`).
    tls_sessions: u64,
    /// Of those, sessions that resumed an earlier one.
    tls_resumed: u64,
    replies: CodeCounts,
    errors: ErrorCounts,
    first_error: Option<String>,
    greeting: Latency,
    mail: Latency,
    data_end: Latency,
    transaction: Latency,
}

impl SmtpStats {
    fn error(&mut self, error: &WireError) {
        self.errors.count(error);
        if self.first_error.is_none() {
            self.first_error = Some(error.to_string());
        }
    }

    fn merge(&mut self, o: &SmtpStats) {
        self.attempted += o.attempted;
        self.accepted += o.accepted;
        self.rejected += o.rejected;
        self.failed += o.failed;
        self.bytes += o.bytes;
        self.rcpts_accepted += o.rcpts_accepted;
        self.rcpts_rejected += o.rcpts_rejected;
        self.sessions += o.sessions;
        self.tls_sessions += o.tls_sessions;
        self.tls_resumed += o.tls_resumed;
        self.replies.add(&o.replies);
        self.errors.add(&o.errors);
        if self.first_error.is_none() {
            self.first_error.clone_from(&o.first_error);
        }
        self.greeting.add(&o.greeting);
        self.mail.add(&o.mail);
        self.data_end.add(&o.data_end);
        self.transaction.add(&o.transaction);
    }
}

/// What the server offered in its EHLO reply.
#[derive(Debug, Default, Clone, Copy)]
struct Capabilities {
    pipelining: bool,
    chunking: bool,
    size: bool,
    starttls: bool,
}

/// How a transaction ended (an `Err` is a broken connection instead).
enum Outcome {
    Accepted,
    Rejected,
    /// A 421: the server is closing the connection.
    Closing,
}

/// Buffers a connection reuses for every message.
struct Buffers {
    cmd: Vec<u8>,
    /// End offsets in `cmd` of MAIL and of each RCPT line.
    ends: Vec<usize>,
    headers: Vec<u8>,
    bdat: Vec<u8>,
}

pub fn run(args: SmtpArgs) -> Result<ExitCode, String> {
    if args.messages.is_none() && args.duration.is_none() {
        return Err("smtp: give --messages N or --duration D (every run is bounded)".into());
    }
    if args.connections == 0 || args.connections > 100_000 {
        return Err("--connections must be between 1 and 100000".into());
    }
    if args.rcpts == 0 || args.rcpts > 10_000 {
        return Err("--rcpts must be between 1 and 10000".into());
    }
    if let Some(rate) = args.rate {
        if !(rate.is_finite() && rate > 0.0) {
            return Err("--rate must be a positive number of messages per second".into());
        }
    }
    let addr = target::resolve(&args.target, "target", args.common.allow_remote)?;
    runner::check_bounds(args.duration, args.common.max_time)?;
    let sizes = match &args.size_dist {
        Some(dist) => dist.0.clone(),
        None => vec![(args.size, 1)],
    };
    let corpus = match &args.message_file {
        Some(path) => {
            let message = std::fs::read(path)
                .map_err(|e| format!("--message-file {}: {e}", path.display()))?;
            Corpus::from_message(&message, args.from.as_deref())
                .map_err(|e| format!("--message-file {}: {e}", path.display()))?
        }
        None => Corpus::build(
            &sizes,
            args.mime,
            args.from.as_deref().unwrap_or(DEFAULT_FROM),
        )?,
    };
    let domains = match &args.domain_weights {
        Some(weights) => weights.0.clone(),
        None => vec![(args.to_domain.clone(), 1)],
    };
    let recipients = Recipients::new(args.users, domains)?;
    let line = |command: Command| {
        let mut out = Vec::new();
        encode(&command, &mut out);
        out
    };
    let control = Control::new(args.duration, args.common.max_time);
    let live = Arc::new(Live::default());
    let plan = Arc::new(Plan {
        addr,
        corpus,
        recipients,
        rcpts: args.rcpts,
        pipelining: args.pipelining,
        bdat: args.bdat,
        bdat_chunk: usize::try_from(args.bdat_chunk).unwrap_or(usize::MAX),
        messages_per_connection: args.messages_per_connection,
        rate: args.rate,
        messages: args.messages,
        issued: AtomicU64::new(0),
        io_timeout: args.common.io_timeout,
        ehlo: line(Command::Ehlo {
            domain: args.ehlo.clone(),
        }),
        helo: line(Command::Helo {
            domain: args.ehlo.clone(),
        }),
        data: line(Command::Data),
        rset: line(Command::Rset),
        quit: line(Command::Quit),
        control: Arc::clone(&control),
        live: Arc::clone(&live),
        starttls: if args.starttls {
            // The relay's own opportunistic client configuration: any certificate, the
            // handshake signatures still checked.
            let tls = relay::net::tls::client::ClientTls::load(None)
                .map_err(|e| format!("--starttls: {e}"))?;
            let host = args.target.rsplit_once(':').map_or("localhost", |(h, _)| h);
            let name = relay::net::tls::client::server_name(host)
                .unwrap_or_else(|| rustls::pki_types::ServerName::from(addr.ip()));
            Some((tls.opportunistic(), name))
        } else {
            None
        },
    });
    let threads = args.common.threads(args.connections);
    let connections = args.connections;
    let signal = runner::signals()?;
    eprintln!(
        "loadgen smtp: started target={addr} connections={connections} threads={threads} loop={}",
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
        "msgs",
        move |thread, stats: Rc<RefCell<SmtpStats>>| {
            let plan = Arc::clone(&worker_plan);
            async move {
                let mut tasks = Vec::new();
                for id in (thread..connections).step_by(threads) {
                    let task = connection(Arc::clone(&plan), Rc::clone(&stats), id, thread);
                    tasks.push(tokio::task::spawn_local(task));
                }
                for task in tasks {
                    let _ = task.await;
                }
            }
        },
    )?;
    let elapsed = control.start.elapsed();
    let mut total = SmtpStats::default();
    for stats in &results {
        total.merge(stats);
    }
    let report = SmtpReport::new(&args, addr, threads, elapsed, control.interrupted(), &total);
    report.print(args.common.json);
    // Exit 1 when not one session could be started (a wrong port, a server refusing all).
    Ok(if total.sessions == 0 && !control.interrupted() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// One connection's life: connect, greet, send messages, QUIT, reconnect; until the plan
/// has no more messages.
async fn connection(plan: Arc<Plan>, stats: Rc<RefCell<SmtpStats>>, id: usize, thread: usize) {
    let mut rng = Rng::new(id as u64);
    let mut bufs = Buffers {
        cmd: Vec::with_capacity(4096),
        ends: Vec::with_capacity(plan.rcpts + 1),
        headers: Vec::with_capacity(512),
        bdat: Vec::with_capacity(256),
    };
    let mut connect_failures = 0u32;
    let mut start_failures = 0u32;
    // A message claimed but not sent because the session could not start.
    let mut pending: Option<(u64, Option<Instant>)> = None;
    'session: loop {
        if pending.is_none() {
            match plan.claim() {
                Some(ticket) => pending = Some(ticket),
                None => break,
            }
        }
        let started = Instant::now();
        let mut conn = match Conn::connect(plan.addr, plan.io_timeout).await {
            Ok(conn) => conn,
            Err(error) => {
                plan.live.error();
                stats.borrow_mut().error(&error);
                connect_failures += 1;
                if connect_failures >= CONNECT_FAILURES_MAX || plan.control.stopped() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50 << connect_failures)).await;
                continue;
            }
        };
        connect_failures = 0;
        let started_session = async {
            let caps = start_session(&mut conn, &plan, &stats, started).await?;
            match &plan.starttls {
                None => Ok((conn, caps)),
                Some((config, name)) => starttls(conn, caps, config, name, &plan, &stats).await,
            }
        };
        let (mut conn, caps) = match started_session.await {
            Ok(session) => {
                start_failures = 0;
                session
            }
            Err(error) => {
                plan.live.error();
                stats.borrow_mut().error(&error);
                // A server that refuses every session (or lacks STARTTLS) ends this
                // connection's loop instead of spinning until the time limit.
                start_failures += 1;
                if start_failures >= CONNECT_FAILURES_MAX || plan.control.stopped() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50 << start_failures)).await;
                continue;
            }
        };
        stats.borrow_mut().sessions += 1;
        let mut sent = 0u64;
        loop {
            if plan.messages_per_connection > 0 && sent >= plan.messages_per_connection {
                break;
            }
            let ticket = match pending.take() {
                Some(ticket) => ticket,
                None => match plan.claim() {
                    Some(ticket) => ticket,
                    None => {
                        quit(&mut conn, &plan, &stats).await;
                        break 'session;
                    }
                },
            };
            let (seq, due) = ticket;
            if let Some(due) = due {
                tokio::time::sleep_until(due.into()).await;
            }
            stats.borrow_mut().attempted += 1;
            sent += 1;
            match transaction(
                &mut conn, &plan, &stats, &mut rng, &mut bufs, caps, seq, due, thread,
            )
            .await
            {
                Ok(Outcome::Accepted | Outcome::Rejected) => {}
                Ok(Outcome::Closing) => continue 'session,
                Err(error) => {
                    plan.live.error();
                    let mut stats = stats.borrow_mut();
                    stats.failed += 1;
                    stats.error(&error);
                    continue 'session;
                }
            }
        }
        quit(&mut conn, &plan, &stats).await;
    }
}

/// Reads one complete reply; calls `on_line` for each of its lines. Returns its code.
async fn read_reply(
    conn: &mut Conn,
    mut on_line: impl FnMut(&ReplyLine<'_>),
) -> Result<ReplyCode, WireError> {
    let mut code = None;
    for _ in 0..REPLY_LINES_MAX {
        let line = conn.read_line().await?;
        let parsed = Reply::parse_line(line).map_err(|e| {
            let shown = String::from_utf8_lossy(&line[..line.len().min(80)]).into_owned();
            WireError::Protocol(format!("{e}: {shown:?}"))
        })?;
        if *code.get_or_insert(parsed.code) != parsed.code {
            return Err(WireError::Protocol(
                "the lines of a multi-line reply carry different codes".into(),
            ));
        }
        on_line(&parsed);
        if parsed.last {
            return Ok(parsed.code);
        }
    }
    Err(WireError::Protocol("reply has too many lines".into()))
}

/// Reads a reply and counts its code.
async fn reply(conn: &mut Conn, stats: &RefCell<SmtpStats>) -> Result<ReplyCode, WireError> {
    let code = read_reply(conn, |_| {}).await?;
    stats.borrow_mut().replies.count(code.get());
    Ok(code)
}

/// Greeting and EHLO (HELO if EHLO is refused).
async fn start_session(
    conn: &mut Conn,
    plan: &Plan,
    stats: &RefCell<SmtpStats>,
    started: Instant,
) -> Result<Capabilities, WireError> {
    let greeting = reply(conn, stats).await?;
    stats.borrow_mut().greeting.record(started.elapsed());
    if greeting.class() != 2 {
        return Err(WireError::Refused(greeting.get()));
    }
    ehlo(conn, plan, stats).await
}

/// STARTTLS on a started session, the handshake, and EHLO again over TLS (RFC 3207 §4.2:
/// the capabilities from before are void).
async fn starttls(
    mut conn: Conn,
    caps: Capabilities,
    config: &Arc<rustls::ClientConfig>,
    name: &rustls::pki_types::ServerName<'static>,
    plan: &Plan,
    stats: &RefCell<SmtpStats>,
) -> Result<(Conn, Capabilities), WireError> {
    if !caps.starttls {
        return Err(WireError::Protocol(
            "the server does not offer STARTTLS".into(),
        ));
    }
    conn.write_all(b"STARTTLS\r\n").await?;
    let code = reply(&mut conn, stats).await?;
    if code != ReplyCode::SERVICE_READY {
        return Err(WireError::Refused(code.get()));
    }
    let mut conn = conn.into_tls(Arc::clone(config), name.clone()).await?;
    let caps = ehlo(&mut conn, plan, stats).await?;
    let resumed = conn.tls_resumed();
    let mut counts = stats.borrow_mut();
    counts.tls_sessions += 1;
    counts.tls_resumed += u64::from(resumed);
    drop(counts);
    Ok((conn, caps))
}

/// EHLO (HELO if EHLO is refused); the capabilities it names.
async fn ehlo(
    conn: &mut Conn,
    plan: &Plan,
    stats: &RefCell<SmtpStats>,
) -> Result<Capabilities, WireError> {
    conn.write_all(&plan.ehlo).await?;
    let mut caps = Capabilities::default();
    let code = read_reply(conn, |line| {
        let keyword = line.text.split(|&b| b == b' ').next().unwrap_or(&[]);
        if keyword.eq_ignore_ascii_case(b"PIPELINING") {
            caps.pipelining = true;
        } else if keyword.eq_ignore_ascii_case(b"CHUNKING") {
            caps.chunking = true;
        } else if keyword.eq_ignore_ascii_case(b"SIZE") {
            caps.size = true;
        } else if keyword.eq_ignore_ascii_case(b"STARTTLS") {
            caps.starttls = true;
        }
    })
    .await?;
    stats.borrow_mut().replies.count(code.get());
    if code.class() == 2 {
        return Ok(caps);
    }
    if code == ReplyCode::SERVICE_NOT_AVAILABLE {
        return Err(WireError::Refused(code.get()));
    }
    conn.write_all(&plan.helo).await?;
    let code = reply(conn, stats).await?;
    if code.class() != 2 {
        return Err(WireError::Refused(code.get()));
    }
    Ok(Capabilities::default())
}

async fn quit(conn: &mut Conn, plan: &Plan, stats: &RefCell<SmtpStats>) {
    if conn.write_all(&plan.quit).await.is_ok() {
        let _ = reply(conn, stats).await;
    }
    conn.shutdown().await;
}

/// Appends to `out` the pieces of `[a, b]` (seen as one byte string) in `from..to`.
fn pieces<'a>(a: &'a [u8], b: &'a [u8], from: usize, to: usize, out: &mut Vec<&'a [u8]>) {
    if from < a.len() {
        out.push(&a[from..to.min(a.len())]);
    }
    if to > a.len() {
        out.push(&b[from.saturating_sub(a.len())..to - a.len()]);
    }
}

/// One mail transaction. `Ok` when the server answered everything (accepted or not).
#[allow(clippy::too_many_arguments)]
async fn transaction(
    conn: &mut Conn,
    plan: &Plan,
    stats: &RefCell<SmtpStats>,
    rng: &mut Rng,
    bufs: &mut Buffers,
    caps: Capabilities,
    seq: u64,
    due: Option<Instant>,
    thread: usize,
) -> Result<Outcome, WireError> {
    let variant = plan.corpus.pick(rng);
    let Buffers {
        cmd,
        ends,
        headers,
        bdat,
    } = bufs;
    cmd.clear();
    ends.clear();
    cmd.extend_from_slice(if caps.size {
        &variant.mail_with_size
    } else {
        &variant.mail_plain
    });
    ends.push(cmd.len());
    let mut to = 0..0;
    for i in 0..plan.rcpts {
        let span = plan.recipients.push(rng, cmd);
        if i == 0 {
            to = span;
        }
        ends.push(cmd.len());
    }
    plan.corpus.write_headers(headers, &cmd[to], seq, thread);
    let (cmd, headers): (&[u8], &[u8]) = (cmd, headers);
    let content: &[u8] = &variant.content;
    // DATA sends the dot-stuffed form where it differs (a message file); BDAT the content.
    let data_content: &[u8] = variant.data_content.as_deref().unwrap_or(content);
    let size = headers.len() + content.len();
    let pipelining = plan.pipelining && caps.pipelining;
    let use_bdat = plan.bdat && caps.chunking;
    // The BDAT chunks: command lines in `bdat`, (line end, data from, data to) per chunk.
    let chunk = if plan.bdat_chunk == 0 {
        size.max(1)
    } else {
        plan.bdat_chunk
    };
    let mut chunks: Vec<(usize, usize, usize)> = Vec::new();
    if use_bdat {
        bdat.clear();
        let mut from = 0;
        loop {
            let to = (from + chunk).min(size);
            let last = to == size;
            encode(
                &Command::Bdat {
                    size: (to - from) as u64,
                    last,
                },
                bdat,
            );
            chunks.push((bdat.len(), from, to));
            if last {
                break;
            }
            from = to;
        }
    }
    let bdat: &[u8] = bdat;
    let count_reply = |code: ReplyCode| stats.borrow_mut().replies.count(code.get());

    let t_mail = Instant::now();
    let t0 = due.unwrap_or(t_mail);
    let mut accepted_rcpts = 0u64;
    let mut rejected_rcpts = 0u64;
    let closing = Cell::new(false);
    let note = |code: ReplyCode| {
        count_reply(code);
        if code == ReplyCode::SERVICE_NOT_AVAILABLE {
            closing.set(true);
        }
    };

    // Envelope: MAIL and RCPT, pipelined with what follows or one by one.
    let mail_ok;
    let final_code;
    let mut t_eod = Instant::now();
    if pipelining {
        let mut parts: Vec<&[u8]> = vec![cmd];
        if use_bdat {
            let mut line_start = 0;
            for &(line_end, from, to) in &chunks {
                parts.push(&bdat[line_start..line_end]);
                pieces(headers, content, from, to, &mut parts);
                line_start = line_end;
            }
        } else {
            parts.push(&plan.data);
        }
        conn.write_all_vectored(&parts).await?;
        if use_bdat {
            t_eod = Instant::now();
        }
        let code = read_reply(conn, |_| {}).await?;
        stats.borrow_mut().mail.record(t_mail.elapsed());
        note(code);
        mail_ok = code.class() == 2;
        for _ in 0..plan.rcpts {
            let code = read_reply(conn, |_| {}).await?;
            note(code);
            if code.class() == 2 {
                accepted_rcpts += 1;
            } else {
                rejected_rcpts += 1;
            }
        }
        if use_bdat {
            let mut last = ReplyCode::OK;
            for _ in &chunks {
                let code = read_reply(conn, |_| {}).await?;
                note(code);
                last = if last.class() == 2 { code } else { last };
            }
            final_code = Some(last);
        } else {
            let code = read_reply(conn, |_| {}).await?;
            note(code);
            if code == ReplyCode::START_MAIL_INPUT {
                if mail_ok && accepted_rcpts > 0 {
                    conn.write_all_vectored(&[headers, data_content, b".\r\n"])
                        .await?;
                } else {
                    // RFC 2920 §3.1: nothing to send, but the 354 must be ended.
                    conn.write_all(b".\r\n").await?;
                }
                t_eod = Instant::now();
                let code = read_reply(conn, |_| {}).await?;
                note(code);
                final_code = Some(code).filter(|_| mail_ok && accepted_rcpts > 0);
            } else {
                final_code = None;
            }
        }
    } else {
        conn.write_all(&cmd[..ends[0]]).await?;
        let code = read_reply(conn, |_| {}).await?;
        stats.borrow_mut().mail.record(t_mail.elapsed());
        note(code);
        mail_ok = code.class() == 2;
        if mail_ok {
            for window in ends.windows(2) {
                conn.write_all(&cmd[window[0]..window[1]]).await?;
                let code = read_reply(conn, |_| {}).await?;
                note(code);
                if code.class() == 2 {
                    accepted_rcpts += 1;
                } else {
                    rejected_rcpts += 1;
                }
                if closing.get() {
                    break;
                }
            }
        }
        final_code = if !mail_ok || accepted_rcpts == 0 || closing.get() {
            None
        } else if use_bdat {
            let mut line_start = 0;
            let mut last = None;
            for &(line_end, from, to) in &chunks {
                let mut parts: Vec<&[u8]> = vec![&bdat[line_start..line_end]];
                pieces(headers, content, from, to, &mut parts);
                conn.write_all_vectored(&parts).await?;
                t_eod = Instant::now();
                let code = read_reply(conn, |_| {}).await?;
                note(code);
                last = Some(code);
                if code.class() != 2 {
                    break;
                }
                line_start = line_end;
            }
            last
        } else {
            conn.write_all(&plan.data).await?;
            let code = read_reply(conn, |_| {}).await?;
            note(code);
            if code == ReplyCode::START_MAIL_INPUT {
                conn.write_all_vectored(&[headers, data_content, b".\r\n"])
                    .await?;
                t_eod = Instant::now();
                let code = read_reply(conn, |_| {}).await?;
                note(code);
                Some(code)
            } else {
                None
            }
        };
    }

    let now = Instant::now();
    let outcome = {
        let mut s = stats.borrow_mut();
        s.rcpts_accepted += accepted_rcpts;
        s.rcpts_rejected += rejected_rcpts;
        match final_code {
            Some(code) if code.class() == 2 => {
                s.accepted += 1;
                s.bytes += size as u64;
                s.data_end.record(now - t_eod);
                s.transaction.record(now - t0);
                plan.live.add(1, size as u64);
                Outcome::Accepted
            }
            _ => {
                s.rejected += 1;
                if let Some(code) = final_code {
                    s.data_end.record(now - t_eod);
                    if code == ReplyCode::SERVICE_NOT_AVAILABLE {
                        closing.set(true);
                    }
                }
                Outcome::Rejected
            }
        }
    };
    if closing.get() {
        return Ok(Outcome::Closing);
    }
    // A refused transaction may still be open (MAIL accepted, no final reply): reset it.
    if matches!(outcome, Outcome::Rejected) && mail_ok {
        conn.write_all(&plan.rset).await?;
        let code = read_reply(conn, |_| {}).await?;
        count_reply(code);
    }
    Ok(outcome)
}

#[derive(Debug, Serialize)]
pub struct SmtpReport {
    pub mode: &'static str,
    pub target: String,
    #[serde(rename = "loop")]
    pub loop_kind: &'static str,
    pub rate: Option<f64>,
    pub connections: usize,
    pub threads: usize,
    pub elapsed_s: f64,
    pub interrupted: bool,
    pub messages: Messages,
    pub recipients: Counts,
    pub bytes: u64,
    pub msgs_per_s: f64,
    pub mb_per_s: f64,
    pub sessions: u64,
    /// Sessions that went on over TLS (`--starttls`).
    pub tls_sessions: u64,
    /// Of those, sessions that resumed an earlier one.
    pub tls_resumed: u64,
    pub replies: BTreeMap<String, u64>,
    pub connection_errors: ErrorReport,
    pub first_error: Option<String>,
    pub latency_ms: SmtpLatency,
}

#[derive(Debug, Serialize)]
pub struct Messages {
    pub attempted: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub failed: u64,
    pub unfinished: u64,
}

#[derive(Debug, Serialize)]
pub struct Counts {
    pub accepted: u64,
    pub rejected: u64,
}

#[derive(Debug, Serialize)]
pub struct ErrorReport {
    #[serde(flatten)]
    pub counts: ErrorCounts,
    pub total: u64,
}

#[derive(Debug, Serialize)]
pub struct SmtpLatency {
    pub connect_to_greeting: LatencySummary,
    pub mail_to_reply: LatencySummary,
    pub end_of_data_to_reply: LatencySummary,
    pub transaction: LatencySummary,
}

impl SmtpReport {
    fn new(
        args: &SmtpArgs,
        addr: SocketAddr,
        threads: usize,
        elapsed: Duration,
        interrupted: bool,
        s: &SmtpStats,
    ) -> SmtpReport {
        SmtpReport {
            mode: "smtp",
            target: addr.to_string(),
            loop_kind: if args.rate.is_some() {
                "open"
            } else {
                "closed"
            },
            rate: args.rate,
            connections: args.connections,
            threads,
            elapsed_s: elapsed.as_secs_f64(),
            interrupted,
            messages: Messages {
                attempted: s.attempted,
                accepted: s.accepted,
                rejected: s.rejected,
                failed: s.failed,
                unfinished: s
                    .attempted
                    .saturating_sub(s.accepted + s.rejected + s.failed),
            },
            recipients: Counts {
                accepted: s.rcpts_accepted,
                rejected: s.rcpts_rejected,
            },
            bytes: s.bytes,
            msgs_per_s: per_second(s.accepted, elapsed),
            mb_per_s: per_second(s.bytes, elapsed) / 1e6,
            sessions: s.sessions,
            tls_sessions: s.tls_sessions,
            tls_resumed: s.tls_resumed,
            replies: s.replies.to_map(),
            connection_errors: ErrorReport {
                counts: s.errors,
                total: s.errors.total(),
            },
            first_error: s.first_error.clone(),
            latency_ms: SmtpLatency {
                connect_to_greeting: s.greeting.summary(),
                mail_to_reply: s.mail.summary(),
                end_of_data_to_reply: s.data_end.summary(),
                transaction: s.transaction.summary(),
            },
        }
    }

    fn print(&self, json: bool) {
        let text = self.human();
        crate::stats::print_summary(json, &text, self);
    }

    fn human(&self) -> String {
        let m = &self.messages;
        let mut out = format!(
            "loadgen smtp → {}: {:.2} s, {} connections, {} threads, {} loop{}{}\n",
            self.target,
            self.elapsed_s,
            self.connections,
            self.threads,
            self.loop_kind,
            self.rate
                .map(|r| format!(" at {r} msgs/s"))
                .unwrap_or_default(),
            if self.interrupted {
                " (interrupted)"
            } else {
                ""
            },
        );
        out += &format!(
            "  messages   attempted {}  accepted {}  rejected {}  failed {}  unfinished {}\n",
            m.attempted, m.accepted, m.rejected, m.failed, m.unfinished
        );
        out += &format!(
            "  recipients accepted {}  rejected {}\n",
            self.recipients.accepted, self.recipients.rejected
        );
        out += &format!(
            "  rate       {:.1} msgs/s  {:.2} MB/s  ({} bytes, {} sessions, {} over TLS, {} resumed)\n",
            self.msgs_per_s,
            self.mb_per_s,
            self.bytes,
            self.sessions,
            self.tls_sessions,
            self.tls_resumed
        );
        let replies: Vec<String> = self
            .replies
            .iter()
            .map(|(code, n)| format!("{code}:{n}"))
            .collect();
        out += &format!("  replies    {}\n", replies.join(" "));
        out += &format!("  errors     {}\n", error_line(&self.connection_errors));
        if let Some(first) = &self.first_error {
            out += &format!("  first error: {first}\n");
        }
        out += &LatencySummary::header();
        out.push('\n');
        let l = &self.latency_ms;
        for (name, summary) in [
            ("connect→greeting", &l.connect_to_greeting),
            ("MAIL→reply", &l.mail_to_reply),
            ("end of data→reply", &l.end_of_data_to_reply),
            ("transaction", &l.transaction),
        ] {
            out += &summary.row(name);
            out.push('\n');
        }
        out
    }
}

pub fn error_line(e: &ErrorReport) -> String {
    if e.total == 0 {
        return "none".into();
    }
    let c = &e.counts;
    format!(
        "{} (connect {}, refused {}, timeout {}, closed {}, i/o {}, protocol {})",
        e.total, c.connect, c.refused, c.timeout, c.closed, c.io, c.protocol
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_split_a_virtual_concatenation() {
        let (a, b) = (b"abc".as_slice(), b"defgh".as_slice());
        let cases = [
            (0, 8, vec!["abc", "defgh"]),
            (0, 2, vec!["ab"]),
            (2, 5, vec!["c", "de"]),
            (3, 8, vec!["defgh"]),
            (5, 7, vec!["fg"]),
        ];
        for (from, to, expected) in cases {
            let mut out = Vec::new();
            pieces(a, b, from, to, &mut out);
            let got: Vec<&str> = out
                .iter()
                .map(|p| std::str::from_utf8(p).unwrap())
                .collect();
            assert_eq!(got, expected, "{from}..{to}");
        }
    }
}
