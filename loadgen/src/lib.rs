//! The relay's load generator: an SMTP client that sends messages as fast as a server takes
//! them (closed loop) or on a fixed schedule (open loop), a POP3 client that drains
//! mailboxes, an IMAP client that runs one workload (APPEND, FETCH, SEARCH, IDLE…) over
//! mailboxes, an SMTP sink that accepts everything, a maildrop that serves POP3 and IMAP
//! fetches from memory (the client's ceiling);
//! and `disk`, the write + fdatasync rates a spool on this disk could reach.
//!
//! **Role.** Produce load and measure it, and not be the bottleneck: `--threads` threads,
//! each a tokio current_thread runtime (epoll) owning its own connections; message bodies are
//! generated once at start and shared; per-message work is writing a few reused buffers.
//!
//! **Exposure.** It talks to servers (smtp, pop3, imap) and to clients (sink) that may be
//! anything, so every reply and command is parsed with the relay's own bounded parsers
//! (`relay::smtp::reply::Reply::parse_line`, `relay::smtp::command::parse`) or, for IMAP
//! responses, the bounded scanner [`imap::response`], and no peer byte can panic it. It is a load tool: targets and listen addresses must be on loopback unless
//! `--allow-remote` is given (checked before any packet is sent; host names other than
//! `localhost` are not even resolved without it), and every run is bounded by `--messages`,
//! `--duration` or the user list, and always by `--max-time`.
//!
//! **Standards.** RFC 5321 (SMTP), RFC 2920 (PIPELINING), RFC 3030 (CHUNKING), RFC 1870
//! (SIZE), RFC 2045–2046 (the `--mime` messages), RFC 1939 (POP3), RFC 3501 (IMAP4rev1),
//! RFC 7888 (LITERAL+), RFC 2177 (IDLE).
//!
//! Modules: [`cli`] (arguments), [`target`] (address checks), [`message`] (the pre-generated
//! corpus), [`wire`] (buffered connection with timeouts), [`stats`] (histograms and reports),
//! [`runner`] (threads, signals, progress), [`smtp`], [`pop3`], [`imap`], [`sink`], [`maildrop`], and
//! [`disk`] (what the disk allows a durable server, for the benchmarks to compare against).

pub mod cli;
pub mod disk;
pub mod imap;
pub mod maildrop;
pub mod message;
pub mod pop3;
pub mod runner;
pub mod sink;
pub mod smtp;
pub mod stats;
pub mod target;
pub mod wire;

use std::process::ExitCode;

/// Runs one subcommand; `Err` is a usage or setup error (exit status 2).
pub fn run(cli: cli::Cli) -> Result<ExitCode, String> {
    match cli.command {
        cli::Mode::Smtp(args) => smtp::run(args),
        cli::Mode::Pop3(args) => pop3::run(args),
        cli::Mode::Sink(args) => sink::run(args),
        cli::Mode::Imap(args) => imap::run(args),
        cli::Mode::Disk(args) => disk::run(args),
        cli::Mode::Maildrop(args) => maildrop::run(args),
    }
}
