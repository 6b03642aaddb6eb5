//! Command-line arguments. Sizes and durations use the relay's config units (`10KiB`,
//! `1MiB`, `250ms`, `30s`, `5m`).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use relay::config::{ByteSize, Interval};

#[derive(Debug, Parser)]
#[command(
    name = "loadgen",
    version,
    about = "Load generator for SMTP, POP3 and IMAP servers, and a fast SMTP sink",
    long_about = "Load generator for SMTP, POP3 and IMAP servers, and a fast SMTP sink.\n\n\
        Every run is bounded (--messages, --duration, the user list; always --max-time) and \
        targets only loopback addresses unless --allow-remote is given. Ctrl-C stops a run \
        and prints the partial summary; a second Ctrl-C exits at once."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Mode,
}

#[derive(Debug, Subcommand)]
pub enum Mode {
    /// Send messages to an SMTP server and measure rates and latencies.
    Smtp(SmtpArgs),
    /// Log in to POP3 mailboxes, retrieve and delete every message.
    Pop3(Pop3Args),
    /// Accept SMTP mail as fast as possible and count it (optionally failing on a script).
    Sink(SinkArgs),
    /// Log in to IMAP mailboxes and run one workload (APPEND, SELECT, FETCH, STORE,
    /// EXPUNGE, SEARCH, a mix, or sessions held in IDLE).
    Imap(ImapArgs),
    /// Measure what a disk allows a durable server: batches of records, one write and one
    /// fdatasync each, from one or more writer threads.
    Disk(DiskArgs),
    /// Serve every user the same messages over POP3 or IMAP from memory, logins at once: the
    /// most this client can fetch on this machine, to read a server's figure against.
    Maildrop(MaildropArgs),
}

/// Options every mode has.
#[derive(Debug, Args, Clone)]
pub struct Common {
    /// Worker threads, each with its own runtime and connections (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print one JSON summary object on stdout (the human summary goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Hard limit on the run's length, whatever else is asked.
    #[arg(long, value_parser = duration, default_value = "10m")]
    pub max_time: Duration,
    /// Allow addresses other than loopback (only for hosts you operate).
    #[arg(long)]
    pub allow_remote: bool,
    /// Give up on a connection when the peer is silent this long.
    #[arg(long, value_parser = duration, default_value = "30s")]
    pub io_timeout: Duration,
}

impl Common {
    /// The thread count: as asked, else one per core, never more than `connections`.
    pub fn threads(&self, connections: usize) -> usize {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        self.threads.unwrap_or(cores).clamp(1, connections.max(1))
    }
}

#[derive(Debug, Args)]
pub struct SmtpArgs {
    /// The server, HOST:PORT.
    #[arg(long)]
    pub target: String,
    /// Concurrent connections.
    #[arg(long, default_value_t = 10)]
    pub connections: usize,
    /// Stop after this many messages.
    #[arg(long)]
    pub messages: Option<u64>,
    /// Stop after this long.
    #[arg(long, value_parser = duration)]
    pub duration: Option<Duration>,
    /// Message size (whole message, headers included).
    #[arg(long, value_parser = size, default_value = "10KiB", conflicts_with = "size_dist")]
    pub size: u64,
    /// Size distribution SIZE:WEIGHT,…, e.g. 1KiB:60,10KiB:30,1MiB:10.
    #[arg(long, value_parser = size_dist)]
    pub size_dist: Option<SizeDist>,
    /// Send this message file (headers and body, e.g. one signed by dkimsign) as it is,
    /// instead of generated messages: no per-message headers are added, so a signature over
    /// it stays valid. LF line ends become CRLF. The envelope sender is the address of its
    /// From field unless --from is given.
    #[arg(long, conflicts_with_all = ["size", "size_dist", "mime"])]
    pub message_file: Option<PathBuf>,
    /// Recipients per message.
    #[arg(long, default_value_t = 1)]
    pub rcpts: usize,
    /// Pipeline MAIL/RCPT/DATA (RFC 2920) when the server offers PIPELINING.
    #[arg(long)]
    pub pipelining: bool,
    /// STARTTLS after EHLO, then EHLO again and send over TLS (RFC 3207). Any certificate is
    /// accepted (a load tool measures, it does not authenticate); a server that does not
    /// offer STARTTLS fails the session.
    #[arg(long)]
    pub starttls: bool,
    /// Send messages with BDAT (RFC 3030 CHUNKING) when the server offers it.
    #[arg(long)]
    pub bdat: bool,
    /// With --bdat: chunk size (0: the whole message in one `BDAT n LAST`).
    #[arg(long, value_parser = size, default_value = "0")]
    pub bdat_chunk: u64,
    /// Messages per connection before QUIT and reconnect (0: unlimited).
    #[arg(long, default_value_t = 0)]
    pub messages_per_connection: u64,
    /// Recipient domains by weight DOMAIN:WEIGHT,… (overrides --to-domain).
    #[arg(long, value_parser = weights)]
    pub domain_weights: Option<Weights>,
    /// Multipart messages with a text part, an HTML part and a base64 attachment.
    #[arg(long)]
    pub mime: bool,
    /// Envelope sender [default: loadgen@loadgen.test, or with --message-file the address
    /// in the file's From field].
    #[arg(long)]
    pub from: Option<String>,
    /// Recipient domain.
    #[arg(long, default_value = "example.test")]
    pub to_domain: String,
    /// Recipient local parts are drawn from user0 … user{N-1}.
    #[arg(long, default_value_t = 1000)]
    pub users: u64,
    /// Open loop: start messages at this fixed rate (messages/s, over all connections) and
    /// measure latency from each message's scheduled time (no coordinated omission).
    #[arg(long)]
    pub rate: Option<f64>,
    /// The EHLO name.
    #[arg(long, default_value = "loadgen.test")]
    pub ehlo: String,
    #[command(flatten)]
    pub common: Common,
}

/// The mailbox users of the POP3 and IMAP modes.
#[derive(Debug, Args, Clone)]
pub struct UserArgs {
    /// A file of `user:password` lines (`#` starts a comment).
    #[arg(
        long,
        conflicts_with = "user_pattern",
        required_unless_present = "user_pattern"
    )]
    pub users: Option<PathBuf>,
    /// A pattern `NAME:PASSWORD` in which `{n}` stands for 0 … N-1 (see --user-count).
    #[arg(long, requires = "user_count")]
    pub user_pattern: Option<String>,
    /// How many users the pattern makes.
    #[arg(long)]
    pub user_count: Option<u64>,
}

#[derive(Debug, Args)]
pub struct Pop3Args {
    /// The server, HOST:PORT.
    #[arg(long)]
    pub target: String,
    #[command(flatten)]
    pub users: UserArgs,
    /// Parallel sessions; each takes the next mailbox until all are drained.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// When the server offers PIPELINING (RFC 2449 §6.6), send RETR n + DELE n for up to
    /// --window messages without waiting for their answers.
    #[arg(long)]
    pub pipelining: bool,
    /// Messages in flight with --pipelining (their RETR and DELE sent, answers not all
    /// read); refilled when half have been answered.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub window: u64,
    /// Stop after this long even if mailboxes are left.
    #[arg(long, value_parser = duration)]
    pub duration: Option<Duration>,
    #[command(flatten)]
    pub common: Common,
}

/// What `loadgen imap` does in each session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// APPEND generated messages of --size (LITERAL+ when offered); fills mailboxes.
    Append,
    /// SELECT the mailbox again and again.
    Select,
    /// `FETCH 1:* (FLAGS ENVELOPE)`.
    FetchFlags,
    /// `UID FETCH uid BODY.PEEK[]`, one message per operation, going round the mailbox
    /// (the user's sessions share the round: --count = mailbox size fetches each once).
    /// With --pipelining N, N such commands are in flight per session.
    FetchBodies,
    /// `UID FETCH lo:hi BODY.PEEK[]` over --range consecutive messages per operation, going
    /// round the mailbox (--count × --range = mailbox size fetches each once); the rate
    /// counts bodies. With --pipelining N, N such commands are in flight per session.
    FetchRange,
    /// `STORE n +FLAGS (\Flagged)`, going round the mailbox.
    Store,
    /// Mark the first message \Deleted and EXPUNGE it, until the mailbox is empty (the
    /// count is of EXPUNGE responses seen, other sessions' included).
    Expunge,
    /// `SEARCH TEXT word` (--search).
    SearchText,
    /// Body fetches 50%, STORE 20%, APPEND 15%, SEARCH 10%, SELECT 5%.
    Mixed,
    /// Hold --connections sessions in IDLE for --duration once all have entered it.
    Idle,
}

#[derive(Debug, Args)]
pub struct DiskArgs {
    /// Directory on the disk to measure (a scratch directory is made in it and removed).
    #[arg(long)]
    pub dir: PathBuf,
    /// Message size; each record is this plus the spool's framing.
    #[arg(long, value_parser = size, default_value = "10KiB")]
    pub size: u64,
    /// Records per write + fdatasync.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Writer threads, each appending to its own file (a spool writer per shard).
    #[arg(long, default_value_t = 1)]
    pub writers: usize,
    /// Write into files zero-filled (and synced) beforehand, so no fdatasync has to record a
    /// new file size; the default appends to growing files, as a log does.
    #[arg(long)]
    pub prezeroed: bool,
    /// How long to write.
    #[arg(long, value_parser = duration, default_value = "3s")]
    pub duration: Duration,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct ImapArgs {
    /// The server, HOST:PORT.
    #[arg(long)]
    pub target: String,
    #[command(flatten)]
    pub users: UserArgs,
    /// What each operation is.
    #[arg(long, value_enum)]
    pub workload: Workload,
    /// Parallel sessions (with --workload idle: the sessions to hold). Users are shared
    /// out round robin.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Operations per user (with --workload append: messages appended to each mailbox).
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop after this long (with --workload idle: how long to hold once every session is
    /// in IDLE).
    #[arg(long, value_parser = duration)]
    pub duration: Option<Duration>,
    /// Open loop: start operations at this fixed rate (operations/s over all connections);
    /// latency is measured from each operation's scheduled time.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Size of appended messages (whole message, headers included).
    #[arg(long, value_parser = size, default_value = "10KiB")]
    pub size: u64,
    /// The word SEARCH TEXT looks for; appended messages carry `needle` in every tenth.
    #[arg(long, default_value = "needle")]
    pub search: String,
    /// The mailbox to work on.
    #[arg(long, default_value = "INBOX")]
    pub mailbox: String,
    /// fetch-bodies and fetch-range: commands sent before their answers are read, per
    /// session (RFC 9051 §5.5 lets a client send several tagged commands at once);
    /// closed loop only.
    #[arg(long, default_value_t = 1)]
    pub pipelining: usize,
    /// fetch-range: messages per `UID FETCH lo:hi` command.
    #[arg(long, default_value_t = 100)]
    pub range: usize,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct SinkArgs {
    /// Listen address, HOST:PORT (port 0 picks one; the address is printed on stderr).
    #[arg(long)]
    pub listen: String,
    /// Stop after this long (also on SIGINT/SIGTERM).
    #[arg(long, value_parser = duration)]
    pub duration: Option<Duration>,
    /// Fault script STAGE:every=N:CODE (stages: connect, ehlo, mail, rcpt, data, eom),
    /// e.g. rcpt:every=3:451 answers every third RCPT with 451. Repeatable.
    #[arg(long = "script", value_parser = script)]
    pub scripts: Vec<Script>,
    /// The name in the greeting and EHLO reply.
    #[arg(long, default_value = "sink.loadgen.test")]
    pub hostname: String,
    /// Do not print the per-second rate line.
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct MaildropArgs {
    /// Listen address, HOST:PORT (port 0 picks one; the address is printed on stderr).
    #[arg(long)]
    pub listen: String,
    /// The protocol served.
    #[arg(long, value_enum)]
    pub protocol: MaildropProtocol,
    /// Messages in every user's mailbox.
    #[arg(long, default_value_t = 1000)]
    pub messages: u32,
    /// Size of each message.
    #[arg(long, value_parser = size, default_value = "10KiB")]
    pub size: u64,
    /// Stop after this long (also on SIGINT/SIGTERM).
    #[arg(long, value_parser = duration)]
    pub duration: Option<Duration>,
    #[command(flatten)]
    pub common: Common,
}

/// What `loadgen maildrop` speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MaildropProtocol {
    Pop3,
    Imap,
}

/// Message sizes with weights.
#[derive(Debug, Clone, PartialEq)]
pub struct SizeDist(pub Vec<(u64, u32)>);

/// Names with weights.
#[derive(Debug, Clone, PartialEq)]
pub struct Weights(pub Vec<(String, u32)>);

/// Where a sink script applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Connect,
    Ehlo,
    Mail,
    Rcpt,
    Data,
    /// End of message: after the final dot or the last BDAT chunk.
    Eom,
}

/// `STAGE:every=N:CODE`: answer every Nth command of that stage (counted over the whole sink)
/// with CODE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Script {
    pub stage: Stage,
    pub every: u64,
    pub code: u16,
}

pub fn duration(text: &str) -> Result<Duration, String> {
    Interval::parse(text).map(|i| i.0)
}

pub fn size(text: &str) -> Result<u64, String> {
    ByteSize::parse(text).map(|s| s.0)
}

fn weighted<T>(
    text: &str,
    what: &str,
    item: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<(T, u32)>, String> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, weight) = part
            .rsplit_once(':')
            .ok_or_else(|| format!("`{part}`: expected {what}:WEIGHT"))?;
        let weight: u32 = weight
            .trim()
            .parse()
            .map_err(|_| format!("`{part}`: the weight must be a whole number"))?;
        if weight == 0 {
            continue;
        }
        out.push((item(name.trim())?, weight));
    }
    if out.is_empty() {
        return Err(format!("expected {what}:WEIGHT,… with a weight above 0"));
    }
    Ok(out)
}

pub fn size_dist(text: &str) -> Result<SizeDist, String> {
    weighted(text, "SIZE", size).map(SizeDist)
}

pub fn weights(text: &str) -> Result<Weights, String> {
    weighted(text, "DOMAIN", |d| {
        if relay::smtp::address::is_domain(d) {
            Ok(d.to_string())
        } else {
            Err(format!("`{d}` is not a domain"))
        }
    })
    .map(Weights)
}

pub fn script(text: &str) -> Result<Script, String> {
    let usage = || format!("`{text}`: expected STAGE:every=N:CODE, e.g. rcpt:every=3:451");
    let mut parts = text.split(':');
    let (Some(stage), Some(every), Some(code), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(usage());
    };
    let stage = match stage.to_ascii_lowercase().as_str() {
        "connect" => Stage::Connect,
        "ehlo" => Stage::Ehlo,
        "mail" => Stage::Mail,
        "rcpt" => Stage::Rcpt,
        "data" => Stage::Data,
        "eom" => Stage::Eom,
        other => {
            return Err(format!(
                "`{other}`: unknown stage (connect, ehlo, mail, rcpt, data, eom)"
            ))
        }
    };
    let every = every
        .strip_prefix("every=")
        .and_then(|n| n.parse::<u64>().ok())
        .filter(|&n| n > 0)
        .ok_or_else(usage)?;
    let code = code
        .parse::<u16>()
        .ok()
        .and_then(relay::smtp::ReplyCode::new)
        .filter(|c| c.is_negative())
        .ok_or_else(|| format!("`{code}`: the code must be a 4xx or 5xx reply code"))?
        .get();
    Ok(Script { stage, every, code })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_distributions() {
        assert_eq!(size("10KiB"), Ok(10240));
        assert_eq!(
            size_dist("1KiB:60, 10KiB:30,1MiB:10"),
            Ok(SizeDist(vec![(1024, 60), (10240, 30), (1 << 20, 10)]))
        );
        assert!(size_dist("1KiB").is_err());
        assert!(size_dist("1KiB:x").is_err());
        assert!(size_dist("1KiB:0").is_err());
        assert!(size_dist("1XB:3").is_err());
    }

    #[test]
    fn domain_weights() {
        assert_eq!(
            weights("gmail.test:50,yahoo.test:30"),
            Ok(Weights(vec![
                ("gmail.test".into(), 50),
                ("yahoo.test".into(), 30)
            ]))
        );
        assert!(weights("bad domain:1").is_err());
    }

    #[test]
    fn scripts() {
        assert_eq!(
            script("rcpt:every=3:451"),
            Ok(Script {
                stage: Stage::Rcpt,
                every: 3,
                code: 451
            })
        );
        for bad in [
            "rcpt:3:451",
            "rcpt:every=0:451",
            "rcpt:every=3:250",
            "rcpt:every=3:999",
            "helo:every=1:550",
            "rcpt:every=1",
            "rcpt:every=1:550:x",
        ] {
            assert!(script(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cli_parses() {
        let cli = Cli::try_parse_from([
            "loadgen",
            "smtp",
            "--target",
            "127.0.0.1:25",
            "--messages",
            "5",
            "--size-dist",
            "1KiB:1",
        ])
        .unwrap();
        assert!(matches!(cli.command, Mode::Smtp(a) if a.messages == Some(5)));
        assert!(Cli::try_parse_from([
            "loadgen",
            "smtp",
            "--target",
            "x:1",
            "--size",
            "1KiB",
            "--size-dist",
            "1KiB:1"
        ])
        .is_err());
        assert!(Cli::try_parse_from(["loadgen", "pop3", "--target", "x:1"]).is_err());
        let imap = [
            "loadgen",
            "imap",
            "--target",
            "x:1",
            "--user-pattern",
            "u{n}:p",
        ];
        let cli = Cli::try_parse_from(imap.iter().chain(&[
            "--user-count",
            "2",
            "--workload",
            "fetch-bodies",
            "--count",
            "5",
        ]))
        .unwrap();
        assert!(matches!(cli.command, Mode::Imap(a)
            if a.workload == Workload::FetchBodies && a.count == Some(5) && a.users.user_count == Some(2)
                && a.pipelining == 1 && a.range == 100));
        let cli = Cli::try_parse_from(imap.iter().chain(&[
            "--user-count",
            "2",
            "--workload",
            "fetch-range",
            "--count",
            "5",
            "--range",
            "50",
            "--pipelining",
            "8",
        ]))
        .unwrap();
        assert!(matches!(cli.command, Mode::Imap(a)
            if a.workload == Workload::FetchRange && a.range == 50 && a.pipelining == 8));
        // A workload is required, and only the known ones.
        assert!(Cli::try_parse_from(imap.iter().chain(&["--user-count", "2"])).is_err());
        assert!(Cli::try_parse_from(imap.iter().chain(&[
            "--user-count",
            "2",
            "--workload",
            "list"
        ]))
        .is_err());
    }
}
