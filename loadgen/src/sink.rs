//! `loadgen sink`: an SMTP server that accepts everything as fast as it can, counts messages
//! and bytes, and forgets them. Optional scripts answer every Nth command of a stage with a
//! given code, for fault tests (`--script rcpt:every=3:451`).
//!
//! Exposure: any SMTP client on the listen address. Commands are parsed by the relay's own
//! parser (`relay::smtp::command::parse`); lines are bounded; message data is scanned for
//! its end and discarded as it arrives, so memory per connection is one 64 KiB buffer.
//! Replies are the relay's (`relay::smtp::reply::Reply`), encoded once at start. Pipelined
//! commands are answered with one write per batch of input (RFC 2920 §3.2).
//!
//! It is not an MTA: no relay checks, no addresses validated beyond the syntax, nothing
//! stored. Each worker thread has its own SO_REUSEPORT listener on the same address.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use memchr::memmem;
use relay::smtp::command::{parse, Command};
use relay::smtp::reply::{EnhancedStatus, Extension, Reply, ReplyCode};
use serde::Serialize;
use socket2::{Domain, Protocol, Socket, Type};

use crate::cli::{Script, SinkArgs, Stage};
use crate::runner::{self, Control};
use crate::stats::per_second;
use crate::target;
use crate::wire::{Conn, WireError};

/// The SIZE the sink advertises.
const SIZE_MAX: u64 = 100 * 1024 * 1024;
/// A command line longer than this ends the connection.
const COMMAND_LINE_MAX: usize = 4096;

/// Counters shared by every connection.
#[derive(Debug, Default)]
struct Counters {
    messages: AtomicU64,
    bytes: AtomicU64,
    rejected: AtomicU64,
    recipients: AtomicU64,
    connections: AtomicU64,
}

/// The replies, encoded once.
struct Replies {
    greeting: Vec<u8>,
    ehlo: Vec<u8>,
    helo: Vec<u8>,
    ok: Vec<u8>,
    sender_ok: Vec<u8>,
    recipient_ok: Vec<u8>,
    start_mail_input: Vec<u8>,
    queued: Vec<u8>,
    closing: Vec<u8>,
    no_valid_recipients: Vec<u8>,
    not_implemented: Vec<u8>,
    line_too_long: Vec<u8>,
}

struct Scripted {
    script: Script,
    seen: AtomicU64,
    reply: Vec<u8>,
}

struct Shared {
    replies: Replies,
    scripts: Vec<Scripted>,
    counters: Counters,
}

impl Shared {
    fn new(host: &str, scripts: &[Script]) -> Shared {
        let replies = Replies {
            greeting: encoded(&Reply::greeting(host)),
            ehlo: encoded(&Reply::ehlo(
                host,
                &[
                    Extension::Pipelining,
                    Extension::Size(SIZE_MAX),
                    Extension::EightBitMime,
                    Extension::BinaryMime,
                    Extension::Chunking,
                    Extension::EnhancedStatusCodes,
                    Extension::SmtpUtf8,
                ],
            )),
            helo: encoded(&Reply::helo(host)),
            ok: encoded(&Reply::ok()),
            sender_ok: encoded(&Reply::sender_ok()),
            recipient_ok: encoded(&Reply::recipient_ok()),
            start_mail_input: encoded(&Reply::start_mail_input()),
            queued: encoded(&Reply::queued("sink")),
            closing: encoded(&Reply::closing()),
            no_valid_recipients: encoded(&Reply::no_valid_recipients()),
            not_implemented: encoded(&Reply::not_implemented()),
            line_too_long: encoded(&Reply::line_too_long()),
        };
        let scripts = scripts
            .iter()
            .map(|&script| {
                let code = ReplyCode::new(script.code).unwrap_or(ReplyCode::SERVICE_NOT_AVAILABLE);
                let status = EnhancedStatus::new(code.class(), 0, 0);
                Scripted {
                    script,
                    seen: AtomicU64::new(0),
                    reply: encoded(&Reply::new(code, status, "sink: scripted reply")),
                }
            })
            .collect();
        Shared {
            replies,
            scripts,
            counters: Counters::default(),
        }
    }

    /// The scripted reply for this occurrence of `stage`, if a script says so.
    fn script(&self, stage: Stage) -> Option<(&[u8], bool)> {
        for s in &self.scripts {
            if s.script.stage == stage {
                let n = s.seen.fetch_add(1, Ordering::Relaxed) + 1;
                if n % s.script.every == 0 {
                    return Some((&s.reply, s.script.code == 421));
                }
            }
        }
        None
    }
}

fn encoded(reply: &Reply) -> Vec<u8> {
    let mut out = Vec::new();
    reply.encode(&mut out);
    out
}

pub fn run(args: SinkArgs) -> Result<ExitCode, String> {
    let addr = target::resolve(&args.listen, "listen address", args.common.allow_remote)?;
    runner::check_bounds(args.duration, args.common.max_time)?;
    let threads = args.common.threads(usize::MAX);
    let listeners = bind(addr, threads)?;
    let local = listeners
        .first()
        .and_then(|l| l.local_addr().ok())
        .ok_or("no listener")?;
    let shared = Arc::new(Shared::new(&args.hostname, &args.scripts));
    let control = Control::new(args.duration, args.common.max_time);
    let signal = runner::signals()?;
    eprintln!("loadgen sink: listening addr={local} threads={threads}");
    start_threads(
        listeners,
        "sink",
        args.common.io_timeout,
        Arc::clone(&shared),
        |s| &s.counters.connections,
        |mut conn, shared| async move {
            let _ = serve(&mut conn, &shared).await;
            conn
        },
    )?;
    let c = &shared.counters;
    let mut last = (Instant::now(), 0u64, 0u64);
    let mut peak = 0f64;
    loop {
        std::thread::sleep(Duration::from_millis(50));
        if signal.load(Ordering::Relaxed) {
            control.interrupt();
        }
        let now = Instant::now();
        if now.duration_since(last.0) >= Duration::from_secs(1) || control.stopped() {
            let messages = c.messages.load(Ordering::Relaxed);
            let bytes = c.bytes.load(Ordering::Relaxed);
            let window = now.duration_since(last.0).as_secs_f64();
            let rate = (messages - last.1) as f64 / window;
            if window >= 0.5 {
                peak = peak.max(rate);
            }
            if !args.quiet && (messages > last.1 || !control.stopped()) {
                eprintln!(
                    "loadgen sink: t={:.0}s {:.0} msgs/s {:.2} MB/s total {} msgs {} bytes",
                    now.duration_since(control.start).as_secs_f64(),
                    rate,
                    (bytes - last.2) as f64 / window / 1e6,
                    messages,
                    bytes
                );
            }
            last = (now, messages, bytes);
        }
        if control.stopped() {
            break;
        }
    }
    let elapsed = control.start.elapsed();
    let messages = c.messages.load(Ordering::Relaxed);
    let bytes = c.bytes.load(Ordering::Relaxed);
    let report = SinkReport {
        mode: "sink",
        listen: local.to_string(),
        threads,
        elapsed_s: elapsed.as_secs_f64(),
        interrupted: control.interrupted(),
        messages,
        bytes,
        rejected: c.rejected.load(Ordering::Relaxed),
        recipients: c.recipients.load(Ordering::Relaxed),
        connections: c.connections.load(Ordering::Relaxed),
        msgs_per_s: per_second(messages, elapsed),
        mb_per_s: per_second(bytes, elapsed) / 1e6,
        peak_msgs_per_s: peak,
    };
    let text = format!(
        "loadgen sink on {}: {:.2} s{}\n  received {} messages, {} bytes ({:.1} msgs/s, {:.2} MB/s over the run; peak {:.0} msgs/s)\n  rejected by script {}  recipients {}  connections {}\n",
        report.listen,
        report.elapsed_s,
        if report.interrupted { " (stopped by signal)" } else { "" },
        report.messages,
        report.bytes,
        report.msgs_per_s,
        report.mb_per_s,
        report.peak_msgs_per_s,
        report.rejected,
        report.recipients,
        report.connections
    );
    crate::stats::print_summary(args.common.json, &text, &report);
    // The accept threads never end on their own; leaving main ends the process.
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Serialize)]
pub struct SinkReport {
    pub mode: &'static str,
    pub listen: String,
    pub threads: usize,
    pub elapsed_s: f64,
    pub interrupted: bool,
    pub messages: u64,
    pub bytes: u64,
    pub rejected: u64,
    pub recipients: u64,
    pub connections: u64,
    pub msgs_per_s: f64,
    pub mb_per_s: f64,
    pub peak_msgs_per_s: f64,
}

/// One SO_REUSEPORT listener per thread on the same address (port 0: the first picks it).
pub(crate) fn bind(addr: SocketAddr, threads: usize) -> Result<Vec<StdListener>, String> {
    let mut listeners = Vec::new();
    let mut addr = addr;
    for _ in 0..threads {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
            .and_then(|s| {
                s.set_reuse_address(true)?;
                s.set_reuse_port(true)?;
                s.set_nonblocking(true)?;
                s.bind(&addr.into())?;
                s.listen(1024)?;
                Ok(s)
            })
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let listener: StdListener = socket.into();
        if addr.port() == 0 {
            addr = listener
                .local_addr()
                .map_err(|e| format!("cannot read the bound address: {e}"))?;
        }
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Starts one thread per listener, named `{name}-N`, each accepting with
/// [`accept_thread`]: every connection is counted in `count(shared)` and served by `serve`
/// (the sink's and the maildrop's threads).
pub(crate) fn start_threads<S, F, Fut>(
    listeners: Vec<StdListener>,
    name: &'static str,
    io_timeout: Duration,
    shared: Arc<S>,
    count: fn(&S) -> &AtomicU64,
    serve: F,
) -> Result<(), String>
where
    S: Send + Sync + 'static,
    F: Fn(Conn, Arc<S>) -> Fut + Send + Clone + 'static,
    Fut: std::future::Future<Output = Conn> + 'static,
{
    for (thread, listener) in listeners.into_iter().enumerate() {
        let shared = Arc::clone(&shared);
        let serve = serve.clone();
        std::thread::Builder::new()
            .name(format!("{name}-{thread}"))
            .spawn(move || {
                let counted = Arc::clone(&shared);
                let counting = move || {
                    count(&counted).fetch_add(1, Ordering::Relaxed);
                };
                accept_thread(listener, name, io_timeout, counting, move |conn| {
                    serve(conn, Arc::clone(&shared))
                });
            })
            .map_err(|e| format!("cannot start a thread: {e}"))?;
    }
    Ok(())
}

/// Runs a current-thread runtime on this thread that accepts on `listener`, calls
/// `connections` for each connection and runs `serve` on it, then shuts it; `name` (after
/// "loadgen ") starts its error lines.
fn accept_thread<F, Fut>(
    listener: StdListener,
    name: &str,
    io_timeout: Duration,
    connections: impl Fn() + 'static,
    serve: F,
) where
    F: Fn(Conn) -> Fut + 'static,
    Fut: std::future::Future<Output = Conn> + 'static,
{
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("loadgen {name}: cannot start a runtime: {e}");
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(e) => {
                eprintln!("loadgen {name}: {e}");
                return;
            }
        };
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    connections();
                    let served = serve(Conn::new(stream, io_timeout));
                    tokio::task::spawn_local(async move {
                        served.await.shutdown().await;
                    });
                }
                // Out of descriptors and the like: wait a little instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    });
}

/// The transaction in progress.
#[derive(Default)]
struct Tx {
    recipients: u64,
    /// Bytes of the BDAT chunks so far.
    bdat: u64,
}

/// Where a connection is.
enum State {
    Command,
    /// After 354: data until CRLF.CRLF. `started` is false until the first bytes are looked
    /// at (an empty message is just ".\r\n").
    Data {
        started: bool,
        size: u64,
    },
    /// Inside a BDAT chunk.
    Bdat {
        remaining: u64,
        last: bool,
        size: u64,
    },
}

/// What one step over the buffered input did.
enum Step {
    /// Consumed input (or changed state); go on.
    Progress,
    /// Needs more input.
    More,
    /// Close after flushing the replies.
    Close,
}

/// Serves one connection until QUIT, EOF, an error or a scripted 421.
async fn serve(conn: &mut Conn, shared: &Shared) -> Result<(), WireError> {
    let r = &shared.replies;
    if let Some((reply, _)) = shared.script(Stage::Connect) {
        conn.write_all(reply).await?;
        return Ok(());
    }
    conn.write_all(&r.greeting).await?;
    let finder = memmem::Finder::new(b"\r\n.\r\n");
    let mut out = Vec::with_capacity(4096);
    let mut state = State::Command;
    let mut tx = Tx::default();
    loop {
        let close = loop {
            match step(conn, shared, &finder, &mut state, &mut tx, &mut out) {
                Step::Progress => continue,
                Step::More => break false,
                Step::Close => break true,
            }
        };
        if !out.is_empty() {
            conn.write_all(&out).await?;
            out.clear();
        }
        if close {
            return Ok(());
        }
        conn.fill().await?;
    }
}

/// Processes buffered input as far as it goes, appending replies to `out`.
fn step(
    conn: &mut Conn,
    shared: &Shared,
    finder: &memmem::Finder<'_>,
    state: &mut State,
    tx: &mut Tx,
    out: &mut Vec<u8>,
) -> Step {
    let r = &shared.replies;
    let input = conn.buffered();
    match state {
        State::Command => {
            let Some(lf) = memchr::memchr(b'\n', input) else {
                if input.len() > COMMAND_LINE_MAX {
                    out.extend_from_slice(&r.line_too_long);
                    return Step::Close;
                }
                return Step::More;
            };
            let line = &input[..lf];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let command = parse(line);
            conn.consume(lf + 1);
            let scripted = |stage: Stage, out: &mut Vec<u8>| match shared.script(stage) {
                Some((reply, close)) => {
                    out.extend_from_slice(reply);
                    Some(close)
                }
                None => None,
            };
            match command {
                Ok(Command::Ehlo { .. }) => match scripted(Stage::Ehlo, out) {
                    Some(true) => return Step::Close,
                    Some(false) => {}
                    None => out.extend_from_slice(&r.ehlo),
                },
                Ok(Command::Helo { .. }) => out.extend_from_slice(&r.helo),
                Ok(Command::Mail { .. }) => {
                    *tx = Tx::default();
                    match scripted(Stage::Mail, out) {
                        Some(true) => return Step::Close,
                        Some(false) => {}
                        None => out.extend_from_slice(&r.sender_ok),
                    }
                }
                Ok(Command::Rcpt { .. }) => match scripted(Stage::Rcpt, out) {
                    Some(true) => return Step::Close,
                    Some(false) => {}
                    None => {
                        tx.recipients += 1;
                        out.extend_from_slice(&r.recipient_ok);
                    }
                },
                Ok(Command::Data) => {
                    if tx.recipients == 0 {
                        out.extend_from_slice(&r.no_valid_recipients);
                    } else {
                        match scripted(Stage::Data, out) {
                            Some(true) => return Step::Close,
                            Some(false) => {}
                            None => {
                                out.extend_from_slice(&r.start_mail_input);
                                *state = State::Data {
                                    started: false,
                                    size: 0,
                                };
                            }
                        }
                    }
                }
                Ok(Command::Bdat { size, last }) => {
                    *state = State::Bdat {
                        remaining: size,
                        last,
                        size,
                    };
                }
                Ok(Command::Rset) => {
                    *tx = Tx::default();
                    out.extend_from_slice(&r.ok);
                }
                Ok(Command::Noop { .. }) => out.extend_from_slice(&r.ok),
                Ok(Command::Quit) => {
                    out.extend_from_slice(&r.closing);
                    return Step::Close;
                }
                Ok(_) => out.extend_from_slice(&r.not_implemented),
                Err(error) => error.reply().encode(out),
            }
            Step::Progress
        }
        State::Data { started, size } => {
            if !*started {
                if input.len() < 3 && b".\r\n".starts_with(input) {
                    return Step::More;
                }
                *started = true;
                if input.starts_with(b".\r\n") {
                    conn.consume(3);
                    end_of_message(shared, out, 0, tx);
                    *state = State::Command;
                    return Step::Progress;
                }
            }
            if let Some(at) = finder.find(input) {
                let total = *size + at as u64 + 2;
                conn.consume(at + 5);
                let close = end_of_message(shared, out, total, tx);
                *state = State::Command;
                return if close { Step::Close } else { Step::Progress };
            }
            // Keep the last 4 bytes: the terminator may straddle two reads.
            let done = input.len().saturating_sub(4);
            *size += done as u64;
            conn.consume(done);
            Step::More
        }
        State::Bdat {
            remaining,
            last,
            size,
        } => {
            let take = (input.len() as u64).min(*remaining);
            conn.consume(take as usize);
            *remaining -= take;
            if *remaining > 0 {
                return Step::More;
            }
            let (last, size) = (*last, *size);
            *state = State::Command;
            if tx.recipients == 0 {
                out.extend_from_slice(&r.no_valid_recipients);
            } else if last {
                let total = tx.bdat + size;
                if end_of_message(shared, out, total, tx) {
                    return Step::Close;
                }
            } else {
                tx.bdat += size;
                Reply::chunk_received(size).encode(out);
            }
            Step::Progress
        }
    }
}

/// Counts a complete message (or answers it with a script); true if the script says 421.
fn end_of_message(shared: &Shared, out: &mut Vec<u8>, size: u64, tx: &mut Tx) -> bool {
    let c = &shared.counters;
    let rcpts = std::mem::take(tx).recipients;
    if let Some((reply, close)) = shared.script(Stage::Eom) {
        out.extend_from_slice(reply);
        c.rejected.fetch_add(1, Ordering::Relaxed);
        return close;
    }
    c.messages.fetch_add(1, Ordering::Relaxed);
    c.bytes.fetch_add(size, Ordering::Relaxed);
    c.recipients.fetch_add(rcpts, Ordering::Relaxed);
    out.extend_from_slice(&shared.replies.queued);
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A whole session written one byte at a time (so every terminator and every line is
    /// split across reads), with an empty message, a dot-stuffed line, BDAT chunks and a
    /// scripted refusal; the counters must come out exact.
    #[test]
    fn session_split_at_every_byte() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&runtime, async {
            let scripts = [Script {
                stage: Stage::Rcpt,
                every: 4,
                code: 450,
            }];
            let shared = Arc::new(Shared::new("sink.test", &scripts));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let server = {
                let shared = Arc::clone(&shared);
                tokio::task::spawn_local(async move {
                    let (stream, _) = listener.accept().await.unwrap();
                    let mut conn = Conn::new(stream, Duration::from_secs(10));
                    serve(&mut conn, &shared).await.unwrap();
                })
            };
            let session: &[u8] = b"EHLO c\r\n\
                MAIL FROM:<a@b>\r\nRCPT TO:<x@y>\r\nDATA\r\n.\r\n\
                MAIL FROM:<a@b>\r\nRCPT TO:<x@y>\r\nDATA\r\nab\r\n..c\r\n\r\n.\r\n\
                MAIL FROM:<a@b>\r\nRCPT TO:<x@y>\r\nRCPT TO:<z@y>\r\n\
                BDAT 3\r\nxyzBDAT 4 LAST\r\n1234\
                RSET\r\nNOOP\r\nQUIT\r\n";
            let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
            client.set_nodelay(true).unwrap();
            for byte in session {
                client.write_all(std::slice::from_ref(byte)).await.unwrap();
            }
            let mut replies = String::new();
            client.read_to_string(&mut replies).await.unwrap();
            server.await.unwrap();
            let codes: Vec<&str> = replies.lines().map(|l| &l[..4]).collect();
            let expected = [
                "220 ", "250-", "250-", "250-", "250-", "250-", "250-", "250-",
                "250 ", // EHLO
                "250 ", "250 ", "354 ", "250 ", // empty message
                "250 ", "250 ", "354 ", "250 ", // stuffed line
                "250 ", "250 ", "450 ", "250 ", "250 ", // 4th RCPT refused, BDAT
                "250 ", "250 ", "221 ",
            ];
            assert_eq!(codes, expected, "{replies}");
            let c = &shared.counters;
            assert_eq!(c.messages.load(Ordering::Relaxed), 3);
            // 0 + "ab\r\n..c\r\n\r\n" (11, as received: the sink does not unstuff) + 3 + 4.
            assert_eq!(c.bytes.load(Ordering::Relaxed), 11 + 7);
            assert_eq!(c.recipients.load(Ordering::Relaxed), 3);
        });
    }
}
