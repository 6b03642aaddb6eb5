//! Command line: `serve`, `check`, `init`, `spool ls`, `spool cat`, `user`, `tune check|apply`, `stat`,
//! `dkim keygen`, `mailbox ls`.
//!
//! `anyhow` lives here only: library modules return typed errors, and this is the one
//! place they become a line on stderr and an exit status.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use relay::config::Config;
use relay::envelope::QueueId;
use relay::spool::inspect;

/// `print!`/`println!` that return an error instead of panicking when stdout is gone
/// (`relay stat | head -1`); [`main`] ends quietly on a broken pipe.
macro_rules! out {
    ($($arg:tt)*) => {
        write!(std::io::stdout().lock(), $($arg)*)?
    };
}
macro_rules! outln {
    ($($arg:tt)*) => {
        writeln!(std::io::stdout().lock(), $($arg)*)?
    };
}

mod generate;

#[derive(Parser)]
#[command(name = "relay", version, about = "High-throughput SMTP edge relay")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay (on the embedded default config when no file is given).
    Serve {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a config file and print the effective config (every key, defaults included).
    Check {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Write a starter installation into a directory: a commented config, a first user with a
    /// generated password (printed once; only its argon2id hash is stored), postmaster and
    /// abuse aliases to that user, a self-signed certificate and the spool. Overwrites nothing.
    Init {
        /// Where to write `relay.toml`, `users`, `tls/` and `spool/` (created if missing).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The mail domain (`localhost` is always local too).
        #[arg(long)]
        domain: Option<String>,
        /// `server.hostname`, the name in the greeting (default: the system's, at run time).
        #[arg(long)]
        hostname: Option<String>,
        /// The first user's name.
        #[arg(long, default_value = relay::init::DEFAULT_USER)]
        user: String,
    },
    /// Inspect the spool (works while the server runs: it only reads).
    Spool {
        #[command(subcommand)]
        command: SpoolCommand,
    },
    /// The outbound queue: list, show, flush, delete, bounce. Talks to the running server's
    /// admin socket; with the server stopped, `list` and `show` read the spool directly.
    Queue {
        #[command(subcommand)]
        command: QueueCommand,
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        /// The running server's admin socket, when not the config's (`admin.socket`, default
        /// `<spool.dir>/admin.sock`).
        #[arg(long, global = true)]
        socket: Option<PathBuf>,
    },
    /// Users' IMAP folders and usage, as the running server holds them (over its admin
    /// socket).
    Mailbox {
        #[command(subcommand)]
        command: MailboxCommand,
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        /// The running server's admin socket, when not the config's (`admin.socket`, default
        /// `<spool.dir>/admin.sock`).
        #[arg(long, global = true)]
        socket: Option<PathBuf>,
    },
    /// This cluster node: `drain` hands its queue to the live peers and refuses new client
    /// connections until `resume` (or a restart). Talks to the running server's admin socket.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        /// The running server's admin socket, when not the config's.
        #[arg(long, global = true)]
        socket: Option<PathBuf>,
    },
    /// Manage mailbox users (passwords are read from stdin, stored as argon2id hashes).
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// The cluster (`[cluster]`): nodes and their leases; the PostgreSQL directory's schema
    /// migrations.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Compare this machine with a tuning profile (tuning/kernel) and the config.
    Tune {
        #[command(subcommand)]
        command: TuneCommand,
    },
    /// Print a summary of the running server's metrics (per core: connections, transactions,
    /// deliveries; spool; queue), read from its admin socket (`admin.socket`, default
    /// `<spool.dir>/admin.sock`).
    Stat {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The running server's admin socket, when not the config's.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Print the JSON the server sent instead of the summary.
        #[arg(long)]
        json: bool,
        /// The cluster's figures instead: every node's, as published in its lease in Redis,
        /// and their sum.
        #[arg(long)]
        cluster: bool,
    },
    /// DKIM signing keys.
    Dkim {
        #[command(subcommand)]
        command: DkimCommand,
    },
    /// Man pages and shell completions from these definitions (for packaging).
    #[command(hide = true)]
    Generate {
        #[command(subcommand)]
        command: GenerateCommand,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Every node of the config's node table: up (a live lease in Redis) or down, when its
    /// lease was renewed, its queue and connections.
    Status {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Apply the pending schema migrations of the `[cluster.postgres]` directory, in order,
    /// each in a transaction (idempotent: nothing to do prints so).
    Migrate {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum DkimCommand {
    /// Make a signing key: write the private key (0600; never over an existing file) and
    /// print the DNS TXT record to publish at SELECTOR._domainkey.DOMAIN.
    Keygen {
        domain: String,
        selector: String,
        /// An Ed25519 key (RFC 8463) instead of RSA-2048.
        #[arg(long)]
        ed25519: bool,
        /// Where to write the private key (default: DOMAIN.SELECTOR.key here).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum GenerateCommand {
    /// Write relay.1 and one page per subcommand into DIR.
    Man { dir: PathBuf },
    /// Print the completion script for SHELL on stdout.
    Completions { shell: clap_complete::Shell },
}

#[derive(Subcommand)]
enum TuneCommand {
    /// Print sysctl values, rlimits, CPUs and io_uring against the profile; exit non-zero
    /// when a setting makes the config unsafe to run here.
    Check {
        #[arg(long, default_value = relay::tune::DEFAULT_PROFILE)]
        profile: String,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Print the `sysctl -w` commands that bring this machine to the profile; with `--yes`
    /// write them to /proc/sys (root) and say what changed.
    Apply {
        #[arg(long)]
        profile: String,
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Stop taking client connections and transfer the whole outbound queue to live peers
    /// (schedules kept); prints progress, ends when the queue is empty or reports what
    /// remains (exit status 1).
    Drain {
        /// How long to wait for the drain to end.
        #[arg(long, default_value = "600")]
        timeout_secs: u64,
    },
    /// End a drain: take client connections again and queue what the drain left.
    Resume,
}

#[derive(Subcommand)]
enum QueueCommand {
    /// Queued messages: id, size, age, sender; per recipient attempts, next try, last reply.
    List {
        /// At most this many messages.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// One message: its recipients' state and its header.
    Show { id: String },
    /// Retry now: one message, one destination (`--domain`), or everything.
    Flush {
        id: Option<String>,
        #[arg(long)]
        domain: Option<String>,
    },
    /// Remove a message from the queue without a notice to its sender.
    Delete { id: String },
    /// Return a message to its sender now (a failure notice, NOTIFY permitting).
    Bounce { id: String },
}

#[derive(Subcommand)]
enum MailboxCommand {
    /// Without USER: every user with messages, usage and quota. With USER: the user's usage
    /// and quota, and per folder its role, subscription, messages, unseen, deleted, size,
    /// UIDVALIDITY, UIDNEXT and HIGHESTMODSEQ.
    Ls {
        user: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Hash a password read from stdin and print the users-file line (or append it); with a
    /// config that has `[cluster.postgres]`, add the user to the cluster's directory.
    Add {
        name: String,
        /// Append the line to this users file (created 0600) instead of printing it.
        #[arg(long, conflicts_with = "config")]
        file: Option<PathBuf>,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Set a user's password (read from stdin) in the cluster's directory.
    Passwd {
        name: String,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Remove a user (with their keys and the aliases that name them) from the cluster's
    /// directory.
    Del {
        name: String,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Set the node whose spool holds a user's mailboxes, in the cluster's directory.
    Home {
        name: String,
        node: String,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Move a user's mailboxes to another cluster node: copy, switch the home in the
    /// PostgreSQL directory, delete here. Run against the user's current home node (its
    /// running relay does the move); run it again after any failure.
    Move {
        name: String,
        /// The node to move to (one of cluster.nodes).
        #[arg(long)]
        to: String,
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The admin socket of the running relay (default: the config's).
        #[arg(long)]
        socket: Option<PathBuf>,
        /// How long to wait for the move to end.
        #[arg(long = "timeout", default_value_t = 3600)]
        timeout_secs: u64,
    },
    /// Check a password read from stdin against the configured user (exit 0 if it matches).
    Check {
        name: String,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Every user: quota, registered keys and whether their stored mail is encrypted.
    Ls {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// A user's OpenPGP key or S/MIME certificate, and the encryption of their stored mail.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Register a public key (checked: usable for encryption, not expired, naming one of the
    /// user's addresses). A running relay uses it after SIGHUP (`systemctl reload relay`).
    Set {
        name: String,
        /// An OpenPGP public key (armoured or binary), v4 or v6.
        #[arg(long, conflicts_with = "smime", required_unless_present = "smime")]
        openpgp: Option<PathBuf>,
        /// An S/MIME certificate (PEM or DER) with the e-mail protection usage.
        #[arg(long)]
        smime: Option<PathBuf>,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// What a user registered, and whether their mail is encrypted.
    Show {
        name: String,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Remove a user's OpenPGP key or S/MIME certificate.
    Remove {
        name: String,
        #[arg(long, conflicts_with = "smime", required_unless_present = "smime")]
        openpgp: bool,
        #[arg(long)]
        smime: bool,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Turn the encryption of a user's stored mail on or off, or back to the server default.
    Encrypt {
        name: String,
        #[arg(value_enum)]
        choice: EncryptChoice,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum EncryptChoice {
    On,
    Off,
    Default,
}

#[derive(Subcommand)]
enum SpoolCommand {
    /// List stored messages: queue id, arrival, sender, recipients, size.
    Ls {
        /// Spool directory (default: the config's `spool.dir`).
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Rewrite segments whose live bytes fell below half (run with the server stopped;
    /// the running server compacts by itself every `spool.compact_interval`).
    Compact {
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Print one stored message (Received header and content) as stored.
    Cat {
        id: String,
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => serve(config.as_deref()),
        Command::Check { config } => check(config.as_deref()),
        Command::Init {
            dir,
            domain,
            hostname,
            user,
        } => init(relay::init::Options {
            dir,
            domain,
            hostname,
            user,
        }),
        Command::Spool { command } => spool(command),
        Command::Queue {
            command,
            config,
            socket,
        } => queue(command, config.as_deref(), socket),
        Command::Mailbox {
            command,
            config,
            socket,
        } => mailbox(command, config.as_deref(), socket),
        Command::Node {
            command,
            config,
            socket,
        } => node(command, config.as_deref(), socket),
        Command::User { command } => user(command),
        Command::Cluster { command } => cluster(command),
        Command::Tune { command } => tune(command),
        Command::Stat {
            config,
            json,
            cluster: true,
            ..
        } => cluster_stat(config.as_deref(), json),
        Command::Stat {
            config,
            json,
            socket,
            cluster: false,
        } => stat(config.as_deref(), json, socket),
        Command::Dkim { command } => dkim(command),
        Command::Generate { command } => match command {
            GenerateCommand::Man { dir } => generate::man::<Cli>(&dir)
                .with_context(|| format!("cannot write man pages to {}", dir.display())),
            GenerateCommand::Completions { shell } => {
                generate::completions::<Cli>(shell).context("cannot write completions")
            }
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`relay stat | head -1`): end quietly with the status a
        // process killed by SIGPIPE has, as other command-line tools do.
        Err(error) if broken_pipe(&error) => ExitCode::from(141),
        Err(error) => {
            eprintln!("relay: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn load(path: Option<&Path>) -> Result<Config> {
    Ok(match path {
        Some(path) => Config::load(path)?,
        None => Config::parse("", "embedded default")?,
    })
}

fn serve(path: Option<&Path>) -> Result<()> {
    init_logging();
    let config = load(path)?;
    for warning in config.permission_warnings() {
        tracing::warn!("{warning}");
    }
    // The server loads the users again itself; a file it cannot load fails there.
    if let Some(warning) = relay::mailbox::load_directory(&config)
        .ok()
        .and_then(|d| d.postmaster_warning())
    {
        tracing::warn!("{warning}");
    }
    relay::server::run(config)?;
    Ok(())
}

fn check(path: Option<&Path>) -> Result<()> {
    let config = load(path)?;
    let origin = path.map_or("embedded default".to_string(), |p| p.display().to_string());
    // The files the config names must load as `serve` would load them: a key that does not
    // match its certificate is found here, not at the next restart.
    if let (Some(cert), Some(key)) = (&config.tls.cert, &config.tls.key) {
        relay::net::tls::ServerTls::load(cert, key).context("tls.cert / tls.key")?;
    }
    relay::net::tls::client::ClientTls::load(config.tls.ca_file.as_deref())
        .context("tls.ca_file")?;
    // DKIM keys: readable by their owner only and valid for their algorithm.
    relay::sender_auth::sign::KeySet::load(&config.dkim.key_settings()).context("dkim.sign")?;
    // The users and aliases must load as `serve` loads them; nobody receiving postmaster's
    // mail (RFC 5321 §4.5.1) is worth a warning, not a refusal.
    let directory = relay::mailbox::load_directory(&config)?;
    for warning in config
        .permission_warnings()
        .into_iter()
        .chain(directory.postmaster_warning())
    {
        eprintln!("relay: warning: {warning}");
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "# {origin}: valid; effective configuration (secrets redacted):"
    )?;
    write!(out, "{}", config.to_toml())?;
    Ok(())
}

fn init(options: relay::init::Options) -> Result<()> {
    let done = relay::init::init(&options)?;
    let mut out = std::io::stdout().lock();
    let row = |path: &Path, what: &str| format!("  {:<28} {what}", path.display().to_string());
    writeln!(
        out,
        "wrote a starter installation into {}:",
        done.dir.display()
    )?;
    for line in [
        row(&done.config, "the config; every choice in it is explained"),
        row(
            &done.users,
            &format!(
                "user `{}`: only its password's argon2id hash (0600)",
                done.user
            ),
        ),
        row(
            &done.cert,
            &format!(
                "self-signed certificate for {}, 127.0.0.1, ::1",
                done.cert_names.join(", ")
            ),
        ),
        row(&done.key, "its private key (0600)"),
        row(&done.spool, "the message store (0700)"),
    ] {
        writeln!(out, "{line}")?;
    }
    writeln!(
        out,
        "local domains: {}; postmaster@ and abuse@ go to `{}`.",
        done.domains.join(", "),
        done.user
    )?;
    writeln!(
        out,
        "The password of `{}`, shown only now (`relay user add` makes a new one):",
        done.user
    )?;
    writeln!(out, "password: {}", done.password.expose())?;
    writeln!(out, "Next: relay serve --config {}", done.config.display())?;
    Ok(())
}

fn spool(command: SpoolCommand) -> Result<()> {
    match command {
        SpoolCommand::Ls { dir, config } => {
            let dir = spool_dir(dir, config.as_deref())?;
            let messages = inspect::list(&dir)
                .with_context(|| format!("cannot read spool {}", dir.display()))?;
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "{:<16}  {:<20}  {:>9}  {:<30}  RECIPIENTS",
                "QUEUE ID", "ARRIVAL (UTC)", "SIZE", "SENDER"
            )?;
            for m in &messages {
                let arrival = chrono::DateTime::from_timestamp_micros(m.arrival_unix_micros as i64)
                    .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                    .unwrap_or_else(|| "?".into());
                let sender = if m.sender.is_empty() {
                    "<>"
                } else {
                    m.sender.as_str()
                };
                writeln!(
                    out,
                    "{:<16}  {:<20}  {:>9}  {:<30}  {}",
                    m.id.to_string(),
                    arrival,
                    m.size,
                    sender,
                    m.recipients.join(", ")
                )?;
            }
            writeln!(out, "-- {} message(s)", messages.len())?;
        }
        SpoolCommand::Compact { dir, config } => {
            let dir = spool_dir(dir, config.as_deref())?;
            let report = relay::spool::compact_offline(&dir)
                .with_context(|| format!("cannot compact spool {}", dir.display()))?;
            outln!("{report}");
        }
        SpoolCommand::Cat { id, dir, config } => {
            let dir = spool_dir(dir, config.as_deref())?;
            let id: QueueId = id.parse()?;
            let body = inspect::cat(&dir, id)
                .with_context(|| format!("cannot read message {id} from {}", dir.display()))?;
            std::io::stdout().lock().write_all(&body)?;
        }
    }
    Ok(())
}

fn cluster(command: ClusterCommand) -> Result<()> {
    match command {
        ClusterCommand::Status { config, json } => cluster_status(config.as_deref(), json)?,
        ClusterCommand::Migrate { config } => {
            let config = load(config.as_deref())?;
            anyhow::ensure!(
                config.cluster.postgres.conninfo.is_some(),
                "no [cluster.postgres] conninfo in the config: nothing to migrate"
            );
            let applied = relay::cluster::directory::migrate(&config.cluster.postgres)?;
            if applied.is_empty() {
                outln!(
                    "schema is current (version {})",
                    relay::cluster::directory::schema_version()
                );
            }
            for (version, name) in applied {
                outln!("applied {version:04} {name}");
            }
        }
    }
    Ok(())
}

/// The config of `relay user` commands that write the cluster's directory; an error naming
/// the users file when it has no `[cluster.postgres]`.
fn postgres_config(config: Option<&Path>, what: &str) -> Result<Config> {
    let config = load(config)?;
    anyhow::ensure!(
        config.cluster.postgres.conninfo.is_some(),
        "`relay user {what}` writes the cluster's directory ([cluster.postgres]); without one, edit the users file (`relay user add` prints its lines)"
    );
    Ok(config)
}

/// The directory `relay user` reads: the cluster's (PostgreSQL over `[local]`) when the
/// config has `[cluster.postgres]`, else the file directory.
fn directory_of(config: &Config) -> Result<Arc<relay::mailbox::Directory>> {
    if config.cluster.postgres.conninfo.is_some() {
        return Ok(relay::cluster::directory::load_once(config)?.0);
    }
    Ok(relay::mailbox::load_directory(config)?)
}

fn user(command: UserCommand) -> Result<()> {
    match command {
        UserCommand::Add {
            name,
            file: None,
            config: Some(config),
        } if load(Some(&config))?.cluster.postgres.conninfo.is_some() => {
            let config = load(Some(&config))?;
            let password = read_password()?;
            let phc = relay::mailbox::password::hash(&password)?;
            relay::cluster::directory::add_user(&config.cluster.postgres, &name, &phc)?;
            eprintln!("added {name} to the cluster directory");
        }
        UserCommand::Add { name, file, .. } => {
            let name = name.to_ascii_lowercase();
            anyhow::ensure!(
                relay::mailbox::directory::valid_name(&name),
                "`{name}` is not a valid mailbox name (1-64 of a-z 0-9 . - _)"
            );
            let password = read_password()?;
            let phc = relay::mailbox::password::hash(&password)?;
            let line = relay::mailbox::users_file::line(&name, &phc);
            match file {
                None => outln!("{line}"),
                Some(path) => {
                    use std::os::unix::fs::OpenOptionsExt;
                    let mut f = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .mode(0o600)
                        .open(&path)
                        .with_context(|| format!("cannot open {}", path.display()))?;
                    writeln!(f, "{line}")?;
                    eprintln!("added {name} to {}", path.display());
                }
            }
        }
        UserCommand::Passwd { name, config } => {
            let config = postgres_config(config.as_deref(), "passwd")?;
            let password = read_password()?;
            let phc = relay::mailbox::password::hash(&password)?;
            relay::cluster::directory::set_password(&config.cluster.postgres, &name, &phc)?;
            eprintln!("password of {name} changed");
        }
        UserCommand::Del { name, config } => {
            let config = postgres_config(config.as_deref(), "del")?;
            relay::cluster::directory::delete_user(
                &config.cluster.postgres,
                &name,
                &config.local.domains,
            )?;
            eprintln!("removed {name} from the cluster directory");
        }
        UserCommand::Home { name, node, config } => {
            let config = postgres_config(config.as_deref(), "home")?;
            anyhow::ensure!(
                config.cluster.nodes.is_empty() || config.cluster.node_entry(&node).is_some(),
                "`{node}` is not one of cluster.nodes"
            );
            relay::cluster::directory::set_home(&config.cluster.postgres, &name, Some(&node))?;
            eprintln!("{name} is homed on {node}");
        }
        UserCommand::Move {
            name,
            to,
            config,
            socket,
            timeout_secs,
        } => user_move(&name, &to, config.as_deref(), socket, timeout_secs)?,
        UserCommand::Ls { config, json } => user_ls(config, json)?,
        UserCommand::Key { command } => user_key(command)?,
        UserCommand::Check { name, config } => {
            let config = load(config.as_deref())?;
            let directory = directory_of(&config)?;
            let password = read_password()?;
            match directory.verify(&name, &password) {
                Some(user) => outln!("{user}: password matches"),
                None => anyhow::bail!("{name}: unknown user or wrong password"),
            }
        }
    }
    Ok(())
}

/// The directory and the key store of `config`.
fn key_store(
    config: Option<&Path>,
) -> Result<(Arc<relay::mailbox::Directory>, relay::mailbox::KeyStore)> {
    let config = load(config)?;
    if config.cluster.postgres.conninfo.is_some() {
        let (directory, backend) = relay::cluster::directory::load_once(&config)?;
        let keys = relay::mailbox::KeyStore::with_backend(
            backend,
            Arc::clone(&directory),
            relay::mailbox::keys::policy(&config),
            std::time::SystemTime::now(),
        );
        return Ok((directory, keys));
    }
    let directory = relay::mailbox::load_directory(&config)?;
    let keys = relay::mailbox::keys::open(
        &config,
        Arc::clone(&directory),
        std::time::SystemTime::now(),
    )?;
    Ok((directory, keys))
}

/// One user's keys and encryption state, for `user ls` and `user key show`.
fn key_summary(keys: &relay::mailbox::KeyStore, name: &str) -> serde_json::Value {
    let registered = keys.get(name);
    serde_json::json!({
        "openpgp": registered.openpgp.as_ref().map(|k| serde_json::json!({
            "fingerprint": k.fingerprint,
            "addresses": k.addresses,
        })),
        "smime": registered.smime.as_ref().map(|c| serde_json::json!({
            "fingerprint": c.fingerprint,
            "addresses": c.addresses,
            "not_after": c.not_after,
        })),
        "choice": match registered.encrypt {
            None => "default",
            Some(true) => "on",
            Some(false) => "off",
        },
        "encrypted": keys.seal_key(name).map(|k| k.kind().name()),
    })
}

fn user_ls(config: Option<PathBuf>, json: bool) -> Result<()> {
    let (directory, keys) = key_store(config.as_deref())?;
    let mut users: Vec<&relay::mailbox::User> = directory.users().collect();
    users.sort_by(|a, b| a.name.cmp(&b.name));
    if json {
        let list: Vec<serde_json::Value> = users
            .iter()
            .map(|u| {
                let mut entry = key_summary(&keys, &u.name);
                entry["name"] = u.name.clone().into();
                entry["quota"] = u.quota.into();
                entry["home"] = u.home.clone().into();
                entry["addresses"] = directory.addresses_of(&u.name).into();
                entry
            })
            .collect();
        outln!("{}", serde_json::Value::Array(list));
        return Ok(());
    }
    outln!(
        "{:<24} {:>10}  {:<8} {:<6} {:<10}",
        "USER",
        "QUOTA",
        "OPENPGP",
        "SMIME",
        "ENCRYPTED"
    );
    for user in users {
        let registered = keys.get(&user.name);
        let quota = user
            .quota
            .map(|q| relay::config::ByteSize(q).to_string())
            .unwrap_or_else(|| "-".into());
        let yes = |b: bool| if b { "yes" } else { "-" };
        let encrypted = match keys.seal_key(&user.name) {
            Some(key) => key.kind().name(),
            None => "no",
        };
        outln!(
            "{:<24} {:>10}  {:<8} {:<6} {:<10}",
            user.name,
            quota,
            yes(registered.openpgp.is_some()),
            yes(registered.smime.is_some()),
            encrypted
        );
    }
    Ok(())
}

fn user_key(command: KeyCommand) -> Result<()> {
    use relay::mailcrypt::KeyKind;
    const RELOAD: &str = "a running relay uses it after SIGHUP (systemctl reload relay)";
    match command {
        KeyCommand::Set {
            name,
            openpgp,
            smime,
            config,
        } => {
            let (kind, path) = match (openpgp, smime) {
                (Some(path), None) => (KeyKind::OpenPgp, path),
                (None, Some(path)) => (KeyKind::Smime, path),
                _ => anyhow::bail!("give one of --openpgp FILE or --smime FILE"),
            };
            let (_, keys) = key_store(config.as_deref())?;
            let bytes =
                std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            keys.set(&name, &bytes, Some(kind), std::time::SystemTime::now())
                .with_context(|| format!("{} not registered for {name}", path.display()))?;
            outln!("{}", key_summary(&keys, &name));
            eprintln!("registered the {} key of {name}; {RELOAD}", kind.name());
        }
        KeyCommand::Show { name, config } => {
            let (directory, keys) = key_store(config.as_deref())?;
            anyhow::ensure!(directory.user(&name).is_some(), "no user `{name}`");
            outln!("{}", key_summary(&keys, &name));
        }
        KeyCommand::Remove {
            name,
            openpgp,
            smime,
            config,
        } => {
            let kind = match (openpgp, smime) {
                (true, false) => KeyKind::OpenPgp,
                (false, true) => KeyKind::Smime,
                _ => anyhow::bail!("give one of --openpgp or --smime"),
            };
            let (_, keys) = key_store(config.as_deref())?;
            if keys.remove(&name, kind)? {
                eprintln!("removed the {} key of {name}; {RELOAD}", kind.name());
            } else {
                anyhow::bail!("{name} has no {} key", kind.name());
            }
        }
        KeyCommand::Encrypt {
            name,
            choice,
            config,
        } => {
            let (_, keys) = key_store(config.as_deref())?;
            let choice = match choice {
                EncryptChoice::On => Some(true),
                EncryptChoice::Off => Some(false),
                EncryptChoice::Default => None,
            };
            keys.set_encrypt(&name, choice)?;
            outln!("{}", key_summary(&keys, &name));
            eprintln!("{RELOAD}");
        }
    }
    Ok(())
}

fn dkim(command: DkimCommand) -> Result<()> {
    use relay::sender_auth::{keys, sign::Algorithm};
    let DkimCommand::Keygen {
        domain,
        selector,
        ed25519,
        out,
    } = command;
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    anyhow::ensure!(
        relay::config::valid_domain(&domain),
        "`{domain}` is not a domain name"
    );
    anyhow::ensure!(
        relay::config::valid_domain(&selector),
        "`{selector}` is not a selector (dot-separated labels)"
    );
    let algorithm = if ed25519 {
        Algorithm::Ed25519Sha256
    } else {
        Algorithm::RsaSha256
    };
    let path = out.unwrap_or_else(|| PathBuf::from(format!("{domain}.{selector}.key")));
    // Checked before the (slow, for RSA) generation; `create_new` below is the real guard.
    anyhow::ensure!(
        !path.exists(),
        "{} exists: not overwriting a key (choose another --out)",
        path.display()
    );
    let key = keys::generate(algorithm)?;
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        file.write_all(key.pem.as_bytes())
            .and_then(|()| file.sync_all())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    outln!("{}", keys::zone_line(&domain, &selector, &key.record));
    eprintln!(
        "wrote the private key to {} (0600). Publish the record above, then add:\n\
         [[dkim.sign]]\ndomain = \"{domain}\"\nselector = \"{selector}\"\n\
         key_file = \"{}\"\nalgorithm = \"{}\"",
        path.display(),
        path.display(),
        algorithm.name()
    );
    Ok(())
}

fn tune(command: TuneCommand) -> Result<()> {
    use relay::tune;
    match command {
        TuneCommand::Check { profile, config } => {
            let settings = tune::profile(&profile)?;
            let config = load(config.as_deref())?;
            let host = tune::HostFacts::gather();
            let report = tune::evaluate(&profile, &settings, tune::read_current, &host, &config);
            out!("{report}");
            let reasons = report.unsafe_reasons();
            anyhow::ensure!(
                reasons.is_empty(),
                "this machine cannot run the config safely: {}",
                reasons.join("; ")
            );
        }
        TuneCommand::Apply { profile, yes } => {
            let settings = tune::profile(&profile)?;
            let changes = tune::plan(&settings, tune::read_current);
            if changes.is_empty() {
                outln!("# nothing to change: this machine already meets profile {profile}");
                return Ok(());
            }
            if !yes {
                outln!(
                    "# {} setting(s) fall short of profile {profile}; run these as root \
                     (or `relay tune apply --profile {profile} --yes`), nothing was changed:",
                    changes.len()
                );
                for change in &changes {
                    outln!("{}  # now {}", change.command(), change.from);
                }
                return Ok(());
            }
            let mut failed = 0;
            for change in &changes {
                match tune::write_sysctl(change) {
                    Ok(()) => outln!("changed {}: {} -> {}", change.key, change.from, change.to),
                    Err(error) => {
                        failed += 1;
                        eprintln!("relay: {error}");
                    }
                }
            }
            outln!(
                "# these last until reboot; install tuning/kernel/{profile}.conf in /etc/sysctl.d \
                 to keep them"
            );
            anyhow::ensure!(failed == 0, "{failed} setting(s) could not be written");
        }
    }
    Ok(())
}

/// How long `relay stat` waits for the server's answer.
const STAT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The admin socket to ask: `--socket`, else the config's (`None` when the config turns the
/// admin endpoint off).
fn admin_socket(config: &Config, socket: Option<PathBuf>) -> Option<PathBuf> {
    match socket {
        Some(path) => Some(path),
        None if config.admin.enabled => Some(config.admin.socket_path(&config.spool.dir)),
        None => None,
    }
}

fn stat(path: Option<&Path>, json: bool, socket: Option<PathBuf>) -> Result<()> {
    let config = load(path)?;
    let socket = admin_socket(&config, socket).ok_or_else(|| {
        anyhow::anyhow!("the admin endpoint is disabled in this config (admin.enabled = false)")
    })?;
    let endpoint = relay::admin::client::Endpoint::Socket(socket);
    let (status, body) =
        relay::admin::client::request(endpoint.clone(), "GET", "/stat", STAT_TIMEOUT)?;
    anyhow::ensure!(
        status == 200,
        "{endpoint} answered /stat with HTTP {status}: {}",
        String::from_utf8_lossy(&body).trim()
    );
    if json {
        std::io::stdout().lock().write_all(&body)?;
        return Ok(());
    }
    let stat = relay::metrics::Stat::from_json(&body)
        .with_context(|| format!("{endpoint} answered /stat with something other than its JSON"))?;
    out!("{stat}");
    Ok(())
}

/// `relay cluster status`.
fn cluster_status(path: Option<&Path>, json: bool) -> Result<()> {
    let config = load(path)?;
    let nodes = relay::cluster::status::read(&config.cluster)?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&nodes)?);
    } else {
        out!("{}", relay::cluster::status::render_status(&nodes)?);
    }
    Ok(())
}

/// `relay stat --cluster`.
fn cluster_stat(path: Option<&Path>, json: bool) -> Result<()> {
    let config = load(path)?;
    let nodes = relay::cluster::status::read(&config.cluster)?;
    if json {
        let stat = relay::cluster::status::ClusterStat {
            total: relay::cluster::status::total(&nodes),
            nodes: &nodes,
        };
        outln!("{}", serde_json::to_string_pretty(&stat)?);
    } else {
        out!("{}", relay::cluster::status::render_stat(&nodes)?);
    }
    Ok(())
}

/// One line from stdin without its line end; never echoed or logged.
fn read_password() -> Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("cannot read the password from stdin")?;
    let password = line.trim_end_matches(['\r', '\n']).to_string();
    anyhow::ensure!(!password.is_empty(), "empty password");
    Ok(password)
}

fn parse_id(id: &str) -> Result<relay::envelope::QueueId> {
    id.parse().map_err(|_| {
        anyhow::anyhow!("`{id}` is not a queue id (16 hex digits, as `relay queue list` prints)")
    })
}

/// `relay user move` over the admin socket: starts the move on the running relay and
/// prints its steps until it ends.
fn user_move(
    name: &str,
    to: &str,
    path: Option<&Path>,
    socket: Option<PathBuf>,
    timeout_secs: u64,
) -> Result<()> {
    use relay::admin::client::{call, Call, Endpoint};
    let config = load(path)?;
    anyhow::ensure!(
        config.cluster.postgres.conninfo.is_some(),
        "the directory is not PostgreSQL ([cluster.postgres]): a user's home can only be moved where every node sees the change in one write"
    );
    anyhow::ensure!(
        config.cluster.node_entry(to).is_some(),
        "`{to}` is not one of cluster.nodes"
    );
    let socket = admin_socket(&config, socket)
        .context("the admin endpoint is off (admin.enabled = false): nothing to ask")?;
    let endpoint = Endpoint::Socket(socket);
    let name = name.to_ascii_lowercase();
    let timeout = std::time::Duration::from_secs(30);
    let ask = |request: Call| -> Result<serde_json::Value> {
        let (status, body) = call(&endpoint, &request)?;
        anyhow::ensure!(status == 200, "{}", String::from_utf8_lossy(&body).trim());
        Ok(serde_json::from_slice(&body)?)
    };
    let query = format!("/user/move?user={name}&to={to}");
    ask(Call::post(&query, b"", timeout))?;
    outln!("moving {name} to {to}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(timeout_secs);
    let mut last = String::new();
    loop {
        let p = ask(Call::get(&format!("/user/move?user={name}"), timeout))?;
        let line = format!(
            "{}: {} messages copied in {} batches",
            p["step"].as_str().unwrap_or("?"),
            p["copied"],
            p["batches"]
        );
        if line != last {
            outln!("{line}");
            last = line;
        }
        if p["running"] == serde_json::Value::Bool(false) {
            if let Some(error) = p["error"].as_str() {
                anyhow::bail!(
                    "the move stopped: {error}; run `relay user move {name} --to {to}` again"
                );
            }
            outln!(
                "{name} is homed on {to}; {} messages deleted here",
                p["deleted"]
            );
            return Ok(());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the move is still running after {timeout_secs}s"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// `relay node drain|resume` over the admin socket.
fn node(command: NodeCommand, path: Option<&Path>, socket: Option<PathBuf>) -> Result<()> {
    use relay::admin::client::{call, Call, Endpoint};
    let config = load(path)?;
    let socket = admin_socket(&config, socket)
        .context("the admin endpoint is off (admin.enabled = false): nothing to ask")?;
    let endpoint = Endpoint::Socket(socket);
    let ask = |request: Call| -> Result<serde_json::Value> {
        let (status, body) = call(&endpoint, &request)?;
        anyhow::ensure!(
            status == 200,
            "{endpoint}: {}",
            String::from_utf8_lossy(&body).trim()
        );
        Ok(serde_json::from_slice(&body)?)
    };
    let timeout = std::time::Duration::from_secs(30);
    match command {
        NodeCommand::Resume => {
            ask(Call::post("/node/resume", b"{}", timeout))?;
            outln!("resumed: client connections are taken again");
            Ok(())
        }
        NodeCommand::Drain { timeout_secs } => {
            ask(Call::post("/node/drain", b"{}", timeout))?;
            outln!("draining: client connections refused, the queue goes to peers");
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(timeout_secs);
            let mut last = String::new();
            loop {
                let p = ask(Call::get("/node/drain", timeout))?;
                let line = format!(
                    "pass {}: {} transferred ({} recipients), {} remaining, {} failed attempts",
                    p["passes"], p["transferred"], p["recipients"], p["remaining"], p["failed"]
                );
                if line != last {
                    outln!("{line}");
                    last = line;
                }
                if p["running"] == serde_json::Value::Bool(false) {
                    if let Some(peers) = p["per_peer"].as_array() {
                        for pair in peers {
                            outln!("  to {}: {}", pair[0].as_str().unwrap_or("?"), pair[1]);
                        }
                    }
                    let remaining = p["remaining"].as_u64().unwrap_or(0);
                    if remaining == 0 {
                        outln!("drained: the queue is empty (the node stays draining until `relay node resume` or a restart)");
                        return Ok(());
                    }
                    anyhow::bail!(
                        "{remaining} messages remain in the queue (last error: {}); run `relay node drain` again",
                        p["last_error"].as_str().unwrap_or("none")
                    );
                }
                anyhow::ensure!(
                    std::time::Instant::now() < deadline,
                    "the drain is still running after {timeout_secs}s"
                );
                std::thread::sleep(std::time::Duration::from_millis(300));
            }
        }
    }
}

fn queue(command: QueueCommand, path: Option<&Path>, socket: Option<PathBuf>) -> Result<()> {
    let config = load(path)?;
    if let Some(answer) = queue_online(&config, &command, socket)? {
        out!("{answer}");
        return Ok(());
    }
    // The server is not running: read the spool directly (this takes the spool's lock, so a
    // server starting meanwhile waits for nothing and refuses with one line).
    let (spool, _) = relay::spool::Spool::open(config.spool.spool_config(), config.cores())
        .context("the relay's admin endpoint does not answer, and the spool cannot be opened")?;
    let replay = spool.replay()?;
    let now = std::time::SystemTime::now();
    let text = match command {
        QueueCommand::List { limit, json } => {
            let list = relay::delivery::control::listing(&replay, None, limit);
            if json {
                format!("{}\n", serde_json::to_string_pretty(&list)?)
            } else {
                relay::admin::queue_text::render(&list, now)
            }
        }
        QueueCommand::Show { id } => {
            let id = parse_id(&id)?;
            let shown = relay::delivery::control::show(&replay, None, id, |id| {
                let location = spool.locate(id)?;
                spool.read_message(&location).ok().map(|m| m.body)
            })
            .ok_or_else(|| anyhow::anyhow!("{id}: no such message in the spool"))?;
            relay::admin::queue_text::render_shown(&shown, now)
        }
        QueueCommand::Flush { .. } | QueueCommand::Delete { .. } | QueueCommand::Bounce { .. } => {
            spool.close()?;
            anyhow::bail!("the relay is not running: flush, delete and bounce act on the running server's queue (start it with `relay serve`)");
        }
    };
    spool.close()?;
    out!("{text}");
    Ok(())
}

/// How long `relay queue` waits for the server (its first listing reads the spool's log once).
const QUEUE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Asks the running server over its admin socket; `None` when nothing answers there.
fn queue_online(
    config: &Config,
    command: &QueueCommand,
    socket: Option<PathBuf>,
) -> Result<Option<String>> {
    use relay::admin::client::{call, AdminClientError, Call, Endpoint};
    use relay::admin::queue_text::{render, render_shown};
    use relay::delivery::control::{ListedMessage, ShownMessage};
    let Some(socket) = admin_socket(config, socket) else {
        // No endpoint to ask: the spool's lock tells whether a server runs.
        return Ok(None);
    };
    let endpoint = Endpoint::Socket(socket);
    let query = |pairs: &[(&str, &str)]| {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (k, v) in pairs {
            q.append_pair(k, v);
        }
        q.finish()
    };
    let object = |pairs: &[(&str, &str)]| {
        let map: serde_json::Map<String, serde_json::Value> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
            .collect();
        serde_json::Value::Object(map).to_string()
    };
    // Reads are GETs with a query; changes are POSTs with a JSON object.
    let (target, json) = match command {
        QueueCommand::List { limit, .. } => (
            format!("/queue?{}", query(&[("limit", &limit.to_string())])),
            None,
        ),
        QueueCommand::Show { id } => (format!("/queue/show?{}", query(&[("id", id)])), None),
        QueueCommand::Flush { id, domain } => {
            let mut pairs = Vec::new();
            if let Some(id) = id {
                pairs.push(("id", id.as_str()));
            }
            if let Some(domain) = domain {
                pairs.push(("domain", domain.as_str()));
            }
            ("/queue/flush".to_string(), Some(object(&pairs)))
        }
        QueueCommand::Delete { id } => ("/queue/delete".to_string(), Some(object(&[("id", id)]))),
        QueueCommand::Bounce { id } => ("/queue/bounce".to_string(), Some(object(&[("id", id)]))),
    };
    let request = match &json {
        Some(body) => Call::post(&target, body.as_bytes(), QUEUE_TIMEOUT),
        None => Call::get(&target, QUEUE_TIMEOUT),
    };
    let (status, body) = match call(&endpoint, &request) {
        Ok(answer) => answer,
        Err(AdminClientError::NotRunning(_)) => return Ok(None),
        Err(error) => return Err(error.into()),
    };
    anyhow::ensure!(
        status == 200,
        "{endpoint}: {}",
        String::from_utf8_lossy(&body).trim()
    );
    let now = std::time::SystemTime::now();
    Ok(Some(match command {
        QueueCommand::List { json: true, .. } => format!("{}\n", String::from_utf8_lossy(&body)),
        QueueCommand::List { .. } => {
            let list: Vec<ListedMessage> = serde_json::from_slice(&body)?;
            render(&list, now)
        }
        QueueCommand::Show { .. } => {
            let shown: ShownMessage = serde_json::from_slice(&body)?;
            render_shown(&shown, now)
        }
        QueueCommand::Flush { .. } => {
            let v: serde_json::Value = serde_json::from_slice(&body)?;
            format!("{} queued entries to be retried now\n", v["flushed"])
        }
        QueueCommand::Delete { id } | QueueCommand::Bounce { id } => {
            let v: serde_json::Value = serde_json::from_slice(&body)?;
            let n = v["removed"].as_u64().unwrap_or(0);
            anyhow::ensure!(n > 0, "{id}: not in the queue (unknown, already delivered, or in the middle of a delivery attempt: try again)");
            format!("{id}: {n} queued entries removed\n")
        }
    }))
}

/// How long `relay mailbox` waits for the server (a read of the in-memory folders).
const MAILBOX_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// `relay mailbox ls [USER]`: asks the running server (`/mailbox`, `/mailbox/{user}`). No
/// offline fallback: the folders live in the server's memory, rebuilt from the spool at start.
fn mailbox(command: MailboxCommand, path: Option<&Path>, socket: Option<PathBuf>) -> Result<()> {
    use relay::admin::client::{call, AdminClientError, Call, Endpoint};
    use relay::admin::mailbox::{render_user, render_users, user_path, UserReport, UserRow};
    let config = load(path)?;
    let MailboxCommand::Ls { user, json } = command;
    let socket = admin_socket(&config, socket).ok_or_else(|| {
        anyhow::anyhow!("the admin endpoint is disabled in this config (admin.enabled = false)")
    })?;
    let endpoint = Endpoint::Socket(socket);
    let target = match &user {
        Some(name) => user_path(&name.to_ascii_lowercase()),
        None => "/mailbox".to_string(),
    };
    let (status, body) = match call(&endpoint, &Call::get(&target, MAILBOX_TIMEOUT)) {
        Ok(answer) => answer,
        Err(error @ AdminClientError::NotRunning(_)) => {
            return Err(anyhow::Error::new(error)
                .context("relay mailbox asks the running server (its folders are in memory)"))
        }
        Err(error) => return Err(error.into()),
    };
    anyhow::ensure!(
        status == 200,
        "{endpoint}: {}",
        String::from_utf8_lossy(&body).trim()
    );
    let bad = || format!("{endpoint} answered {target} with something other than its JSON");
    let text = match (&user, json) {
        (_, true) => {
            // Parsed before printing, so a script never reads an error page as data.
            let value: serde_json::Value = serde_json::from_slice(&body).with_context(bad)?;
            format!("{}\n", serde_json::to_string_pretty(&value)?)
        }
        (Some(_), false) => {
            render_user(&serde_json::from_slice::<UserReport>(&body).with_context(bad)?)
        }
        (None, false) => {
            render_users(&serde_json::from_slice::<Vec<UserRow>>(&body).with_context(bad)?)
        }
    };
    out!("{text}");
    Ok(())
}

fn spool_dir(dir: Option<PathBuf>, config: Option<&Path>) -> Result<PathBuf> {
    match dir {
        Some(dir) => Ok(dir),
        None => Ok(load(config)?.spool.dir),
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("RELAY_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(true)
        .init();
}
