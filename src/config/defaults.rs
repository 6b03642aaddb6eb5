//! Every default of the configuration, each next to the standard or the reason behind it.
//! The embedded default config (`relay serve` with no file) is exactly these values.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::units::{ByteSize, Interval};

/// Unprivileged port on loopback: a fresh install must not relay for the world or need root.
pub fn smtp_listen() -> Vec<SocketAddr> {
    vec![SocketAddr::from(([127, 0, 0, 1], 2525))]
}

/// RFC 5321 §4.5.3.1.4: a command line is at most 512 octets including CRLF.
pub const COMMAND_LINE_MAX: usize = 512;
/// RFC 5321 §4.5.3.1.6: a text line is at most 1000 octets including CRLF.
pub const TEXT_LINE_MAX: usize = 1000;
/// RFC 5321 §4.5.3.1.8: servers must accept at least 100 recipients per message.
pub const RECIPIENTS_MAX: usize = 100;
/// What the large mailbox providers accept; Postfix defaults to 10 MB, which is too small
/// for today's attachments once Base64 adds its third.
pub const MESSAGE_SIZE_MAX: ByteSize = ByteSize::mib(25);
/// Postfix's `hopcount_limit`: real mail crosses a handful of hops; fifty `Received:` fields
/// is a loop (each lap adds one), stopped long before the header size limit would.
pub const HOPCOUNT_LIMIT: usize = 50;
/// Postfix's `smtpd_hard_error_limit`: enough for a confused client, too few for a scanner.
pub const ERRORS_MAX: u32 = 20;
/// RFC 5321 §4.5.3.2.7: a server should wait at least 5 minutes for the next command.
pub const COMMAND_TIMEOUT: Interval = Interval::secs(300);
/// RFC 5321 §4.5.3.2: the client's data block timeout is 3 minutes; waiting 5 (Postfix's
/// `smtpd_timeout`) tolerates slow links without holding dead connections for long.
pub const DATA_TIMEOUT: Interval = Interval::secs(300);
/// Postfix 3.7's `smtpd_min_data_rate` (bytes per second): the data must arrive at least
/// this fast on top of `data_timeout`, so a client trickling its body is cut in about
/// `data_timeout` while a 25 MiB message on a slow link (far above 500 B/s) is not.
pub const DATA_RATE_MIN: ByteSize = ByteSize(500);
/// Bodies held in memory by all SMTP sessions together until the spool has them: room for
/// 20 messages of the largest default size, or tens of thousands of typical ones (10–100
/// KiB), at once; far above what the disk can take per second anyway (BENCHMARKS.md: the
/// 50-connection ingest keeps under 1 MiB in flight). A fixed value rather than a share of
/// the host's memory, so that `relay check` shows the same number on every host and a
/// config means the same thing everywhere; a small host lowers it (tuning/profiles/small-vps).
pub const BODY_MEMORY_MAX: ByteSize = ByteSize::mib(512);
/// Postfix's `smtpd_soft_error_limit`: a confused client makes a few errors; past ten,
/// each further error reply waits `ERROR_DELAY`.
pub const ERROR_DELAY_AFTER: u32 = 10;
/// Postfix's `smtpd_error_sleep_time`: a second per error costs a scanner its speed and a
/// real client nothing (it stopped erring long before).
pub const ERROR_DELAY: Interval = Interval::secs(1);
/// Postfix's `smtpd_junk_command_limit`: a real client sends a handful of NOOP/RSET/EHLO per
/// message; a hundred without delivering anything is a session kept open for nothing.
pub const JUNK_COMMANDS_MAX: u32 = 100;
/// 0: off, as Postfix's `smtpd_client_message_rate_limit`. An edge relay takes mail from big
/// providers whose few outbound addresses legitimately send thousands of messages a minute;
/// no fixed number fits them and a botnet host alike, so the operator picks one for the
/// listener's audience (a submission listener: e.g. 100 per minute).
pub const MESSAGES_PER_IP_MAX: u32 = 0;
/// Postfix's `anvil_rate_time_unit`.
pub const MESSAGE_RATE_WINDOW: Interval = Interval::secs(60);

/// Long enough for a 25 MiB message on a slow link to finish after SIGTERM, short enough for
/// systemd's default 90 s stop timeout.
pub const DRAIN_TIMEOUT: Interval = Interval::secs(30);
/// Each idle SMTP connection costs ≤ 32 KiB (the target); 10,000 per core is ≈ 320 MiB at
/// the worst, and within a default `nofile` hard limit of 524,288 on current systemd.
pub const CONNECTIONS_PER_CORE_MAX: usize = 10_000;
/// Postfix's `smtpd_client_connection_count_limit`: one client cannot take every slot.
pub const CONNECTIONS_PER_IP_MAX: usize = 50;
/// An IPv6 client is its /64 in every per-client limit (connections, message rate, logins):
/// one subscriber or host gets a /64 and may rotate through all of it (RFC 6177 §2).
pub const CLIENT_IPV6_PREFIX: u8 = 64;
/// Password-hash threads when `server.auth_hash_threads` is absent: at most two, so argon2
/// (19 MiB and tens of milliseconds per check) never takes more than two cores' worth of time
/// or more than about 40 MiB, however many logins arrive at once.
pub const AUTH_HASH_THREADS_MAX: usize = 2;
/// Password checks waiting for a hash thread before logins get a temporary failure: about a
/// second of work for two threads. A queued check costs a few bytes; only running ones cost
/// the hash's memory.
pub const AUTH_HASH_QUEUE_MAX: usize = 64;
/// Off: a PROXY header from a client that is not a trusted proxy would let it claim any
/// address, and with it relay rights (`relay.allowed_networks`) and others' per-IP limits.
/// Turn it on only for listeners that nothing but the load balancer can reach.
pub const PROXY_PROTOCOL: bool = false;
/// Off: a PROXY v1 `UNKNOWN` or v2 `LOCAL` header names no client, and the socket's address
/// is the balancer's, which on the same host is 127.0.0.1 (relay rights, plaintext login).
/// Such connections are the unspecified address instead (0.0.0.0 or ::): no relay rights,
/// not loopback.
pub const ALLOW_PROXY_LOCAL_TRUST: bool = false;

/// Relative to the working directory, so a first `relay serve` needs no setup.
pub fn spool_dir() -> PathBuf {
    PathBuf::from("spool")
}
/// 0: a lone message is synced at once; concurrent ones share the next fdatasync anyway
/// (group commit), so a window only helps when sessions are few and the disk is slow.
pub const COMMIT_WINDOW: Interval = Interval::secs(0);
/// Big enough that rollover is rare (a few seconds at full speed), small enough that
/// compaction can rewrite one quickly.
pub const SEGMENT_SIZE: ByteSize = ByteSize::mib(64);
/// A bounded hand-off queue per shard: when the disk falls behind, sessions get 452 4.3.1
/// instead of the relay buffering without bound.
pub const APPENDS_PENDING_MAX: usize = 4096;
/// Measured (docs/ARCHITECTURE.md §4): 64–256 records per fdatasync reach the device's sequential
/// write speed; more only adds latency.
pub const COMMIT_RECORDS_MAX: usize = 256;

/// Dead records cost only disk until then; a minute keeps the scan cheap and space
/// returns soon after POP3 users delete their mail.
pub const COMPACT_INTERVAL: Interval = Interval::secs(60);

/// Never an open relay: only the host itself may send to other domains until an operator
/// names its networks.
pub fn relay_allowed_networks() -> Vec<ipnet::IpNet> {
    ["127.0.0.0/8", "::1/128"]
        .iter()
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// The embedded default accepts mail for the host itself only.
pub fn local_domains() -> Vec<String> {
    vec!["localhost".to_string()]
}

/// The conventional unprivileged POP3 port on loopback (995/110 need root and TLS).
pub fn pop3_listen() -> Vec<SocketAddr> {
    vec![SocketAddr::from(([127, 0, 0, 1], 1110))]
}
/// The conventional unprivileged IMAP port on loopback (993/143 need root; 993 needs TLS).
pub fn imap_listen() -> Vec<SocketAddr> {
    vec![SocketAddr::from(([127, 0, 0, 1], 1143))]
}
/// RFC 9051 §5.4: "an inactivity autologout timer MUST be of at least 30 minutes' duration".
pub const IMAP_IDLE_TIMEOUT: Interval = Interval::secs(30 * 60);
/// A begun command (literals included) must be complete within this: long enough for an
/// APPEND of `imap.append_max` over a slow link, far below the autologout timer.
pub const IMAP_COMMAND_TIMEOUT: Interval = Interval::secs(5 * 60);
/// RFC 9051 §4 asks servers to take lines of at least 8,000 octets; 64 KiB leaves room for
/// long UID sets that sync clients send.
pub const IMAP_LINE_MAX: u64 = 64 * 1024;
/// A literal outside APPEND (a LOGIN password, a SEARCH string).
pub const IMAP_LITERAL_MAX: u64 = 64 * 1024;
/// One APPEND: what SMTP accepts by default (`smtp.message_size_max`).
pub const IMAP_APPEND_MAX: u64 = 25 * 1024 * 1024;
/// RFC 1939 §3: "the autologout timer MUST be of at least 10 minutes' duration".
pub const POP3_IDLE_TIMEOUT: Interval = Interval::secs(600);
/// A command line that has begun must be complete within this (255 octets at most, RFC 2449
/// §4): RFC 1939's 10-minute autologout is for idle clients, and a client trickling a line a
/// byte at a time is not idle. A minute is ages for one line on any real link.
pub const POP3_COMMAND_TIMEOUT: Interval = Interval::secs(60);
/// Dovecot's `auth_failure_delay`: long enough to slow guessing, short for a typo.
pub const AUTH_FAILURE_DELAY: Interval = Interval::secs(2);
/// Failed logins per client address per window: a person mistypes a few times, a
/// guesser hundreds.
pub const AUTH_FAILURES_PER_IP_MAX: u32 = 10;
pub const AUTH_FAILURE_WINDOW: Interval = Interval::secs(600);
/// Failed logins per user name per window (SMTP AUTH and POP3) before each further attempt
/// for the name waits a delay that doubles per failure (1 s to 60 s): counted for names that
/// do not exist too, so the delay never tells whether a user exists. Bounds a guesser that
/// spreads over many addresses to about one try a minute; a client that logged in as the user
/// before is not delayed, so the guesser cannot lock the owner out.
pub const AUTH_FAILURES_PER_USER_MAX: u32 = 10;
/// RFC 4954 §4 and RFC 8314: credentials must not cross the network in clear, so SMTP AUTH
/// is offered only on TLS connections (`true` is for loopback testing), and POP3 takes
/// passwords before STLS only from loopback (as Dovecot's `disable_plaintext_auth`).
pub const ALLOW_PLAINTEXT_AUTH: bool = false;

/// A handshake is a few round trips; a minute covers a slow link, as Postfix's
/// `smtpd_starttls_timeout` is bounded by its command timeout, without letting a silent
/// peer hold a slot for the whole command timeout.
pub const TLS_HANDSHAKE_TIMEOUT: Interval = Interval::secs(60);
/// Block-list answers come from a nearby resolver in milliseconds; 5s covers a cold cache
/// and a retry, and the greeting waits for it (Postfix's `postscreen_dnsbl_timeout` is 10s,
/// but postscreen does not hold the greeting).
pub const DNSBL_TIMEOUT: Interval = Interval::secs(5);
