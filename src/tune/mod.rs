//! `relay tune`: compares this machine with a tuning profile and says what to change.
//!
//! Role: the kernel profiles in `tuning/kernel/` are embedded at compile time, so the binary
//! checks a box without the repository. Parsing a profile, comparing values and deciding the
//! verdict are pure functions ([`parse_sysctl`], [`compare`], [`evaluate`]); only
//! [`HostFacts::gather`], [`read_current`] and [`write_sysctl`] touch the system.
//!
//! Exposure: profiles are our own text; /proc values come from the kernel.

use std::fmt;
use std::path::PathBuf;

use crate::config::{Config, IoEngine};

/// The embedded kernel profiles: name and `sysctl.d` text.
pub const PROFILES: [(&str, &str); 3] = [
    (
        "edge-relay",
        include_str!("../../tuning/kernel/edge-relay.conf"),
    ),
    (
        "max-throughput",
        include_str!("../../tuning/kernel/max-throughput.conf"),
    ),
    (
        "low-latency",
        include_str!("../../tuning/kernel/low-latency.conf"),
    ),
];

/// The profile `relay tune check` uses when none is named.
pub const DEFAULT_PROFILE: &str = "edge-relay";

/// File descriptors the relay needs beyond its connections: listeners, spool segments,
/// the lock file, logging.
pub const NOFILE_HEADROOM: u64 = 64;

#[derive(Debug, thiserror::Error)]
pub enum TuneError {
    #[error("unknown profile `{name}` (known: {known})")]
    UnknownProfile { name: String, known: String },
    #[error("profile {profile}, line {line}: {message}")]
    Syntax {
        profile: String,
        line: usize,
        message: String,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One `key = value` line of a profile with the comment line above it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub key: String,
    pub value: String,
    pub why: String,
}

/// The embedded profile text by name.
pub fn profile_text(name: &str) -> Result<&'static str, TuneError> {
    PROFILES
        .iter()
        .find(|(known, _)| *known == name)
        .map(|(_, text)| *text)
        .ok_or_else(|| TuneError::UnknownProfile {
            name: name.to_string(),
            known: PROFILES
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// The settings of an embedded profile.
pub fn profile(name: &str) -> Result<Vec<Setting>, TuneError> {
    parse_sysctl(profile_text(name)?, name)
}

/// Parses `sysctl.d` text: `key = value` lines, each preceded by a one-line `#` comment
/// saying why (a setting without one is an error: every line must say why).
pub fn parse_sysctl(text: &str, origin: &str) -> Result<Vec<Setting>, TuneError> {
    let syntax = |line: usize, message: &str| TuneError::Syntax {
        profile: origin.to_string(),
        line,
        message: message.to_string(),
    };
    let mut settings = Vec::new();
    let mut comment: Option<String> = None;
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() {
            comment = None;
            continue;
        }
        if let Some(rest) = line.strip_prefix('#').or_else(|| line.strip_prefix(';')) {
            comment = Some(rest.trim().to_string());
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| syntax(index + 1, "expected `key = value`"))?;
        let key = key.trim().trim_start_matches('-');
        let value = value.split_whitespace().collect::<Vec<_>>().join(" ");
        if key.is_empty() || value.is_empty() || key.contains(['/', ' ']) {
            return Err(syntax(index + 1, "expected `key = value`"));
        }
        let why = comment
            .take()
            .ok_or_else(|| syntax(index + 1, "a setting needs a comment line above it"))?;
        settings.push(Setting {
            key: key.to_string(),
            value,
            why,
        });
    }
    Ok(settings)
}

/// How a current value relates to the recommended one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Low,
    High,
    /// Not readable here (another namespace, an older kernel).
    Unknown,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Ok => "OK",
            Status::Low => "LOW",
            Status::High => "HIGH",
            Status::Unknown => "?",
        })
    }
}

/// What "good enough" means for a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    /// Every field at least the recommended one (limits, buffers, backlogs).
    AtLeast,
    /// Every field at most the recommended one (timeouts, the io_uring switch).
    AtMost,
    /// A range that must contain the recommended one (the ephemeral port range).
    Contains,
    /// The recommended value exactly (writeback tuning, flags).
    Exact,
}

fn rule(key: &str) -> Rule {
    match key {
        "net.ipv4.tcp_fin_timeout" | "kernel.io_uring_disabled" => Rule::AtMost,
        "net.ipv4.ip_local_port_range" => Rule::Contains,
        k if k.starts_with("vm.") || k == "net.ipv4.tcp_tw_reuse" => Rule::Exact,
        _ => Rule::AtLeast,
    }
}

fn numbers(value: &str) -> Option<Vec<u64>> {
    value.split_whitespace().map(|f| f.parse().ok()).collect()
}

/// Compares a current value with the recommended one under the key's rule.
pub fn compare(key: &str, current: Option<&str>, recommended: &str) -> Status {
    let Some(current) = current else {
        return Status::Unknown;
    };
    let (Some(cur), Some(rec)) = (numbers(current), numbers(recommended)) else {
        return if current
            .split_whitespace()
            .eq(recommended.split_whitespace())
        {
            Status::Ok
        } else {
            Status::Unknown
        };
    };
    if cur.len() != rec.len() {
        return Status::Unknown;
    }
    let pairs = || cur.iter().zip(&rec);
    match rule(key) {
        Rule::AtLeast if pairs().all(|(c, r)| c >= r) => Status::Ok,
        Rule::AtLeast => Status::Low,
        Rule::AtMost if pairs().all(|(c, r)| c <= r) => Status::Ok,
        Rule::AtMost => Status::High,
        Rule::Contains if cur.len() == 2 && cur[0] <= rec[0] && cur[1] >= rec[1] => Status::Ok,
        // Narrower than recommended: too few ports.
        Rule::Contains => Status::Low,
        Rule::Exact => match pairs().find(|(c, r)| c != r) {
            None => Status::Ok,
            Some((c, r)) if c < r => Status::Low,
            Some(_) => Status::High,
        },
    }
}

/// What the relay needs from the process and machine rather than from sysctl.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    /// The soft RLIMIT_NOFILE; `None` is unlimited.
    pub nofile: Option<u64>,
    pub cpus: usize,
    /// `Err` carries the probe's cause.
    pub uring: Result<(), String>,
}

impl HostFacts {
    /// Reads the rlimit, the CPU count and the io_uring probe of this process.
    pub fn gather() -> HostFacts {
        // rustix: getrlimit without `unsafe` (the crate forbids it; libc would need it).
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        HostFacts {
            nofile: limit.current,
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            uring: crate::runtime::probe::probe().map_err(|cause| cause.to_string()),
        }
    }
}

/// One row of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub setting: String,
    pub current: String,
    pub recommended: String,
    pub why: String,
    pub status: Status,
    /// Set when this row makes the configuration unsafe to run: the reason.
    pub unsafe_because: Option<String>,
}

/// The table and its verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub profile: String,
    pub rows: Vec<Row>,
}

impl Report {
    /// The reasons the configuration cannot run safely here (empty: safe).
    pub fn unsafe_reasons(&self) -> Vec<&str> {
        self.rows
            .iter()
            .filter_map(|row| row.unsafe_because.as_deref())
            .collect()
    }

    /// Rows that differ from the profile without making the config unsafe.
    pub fn advisories(&self) -> usize {
        self.rows
            .iter()
            .filter(|row| {
                row.unsafe_because.is_none() && matches!(row.status, Status::Low | Status::High)
            })
            .count()
    }

    /// The one-line verdict.
    pub fn verdict(&self) -> String {
        let reasons = self.unsafe_reasons();
        let advisories = self.advisories();
        if !reasons.is_empty() {
            format!("UNSAFE for this config: {}", reasons.join("; "))
        } else if advisories > 0 {
            format!(
                "safe for this config; {advisories} setting(s) differ from profile {} \
                 (`relay tune apply --profile {}` shows the commands)",
                self.profile, self.profile
            )
        } else {
            format!("safe for this config; matches profile {}", self.profile)
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = |pick: fn(&Row) -> &str, title: &str| {
            self.rows
                .iter()
                .map(|r| pick(r).len())
                .chain([title.len()])
                .max()
                .unwrap_or(0)
        };
        let ws = width(|r| &r.setting, "SETTING");
        let wc = width(|r| &r.current, "CURRENT");
        let wr = width(|r| &r.recommended, "RECOMMENDED");
        writeln!(
            f,
            "{:<ws$}  {:<wc$}  {:<wr$}  {:<6}  WHY",
            "SETTING", "CURRENT", "RECOMMENDED", "STATUS"
        )?;
        for row in &self.rows {
            let status = match row.unsafe_because {
                Some(_) => format!("{}!", row.status),
                None => row.status.to_string(),
            };
            writeln!(
                f,
                "{:<ws$}  {:<wc$}  {:<wr$}  {:<6}  {}",
                row.setting, row.current, row.recommended, status, row.why
            )?;
        }
        writeln!(f, "verdict: {}", self.verdict())
    }
}

/// Builds the report from a profile, the current sysctl values (`current(key)`), the host
/// facts and the configuration. Pure: everything read from the system is passed in.
pub fn evaluate(
    profile_name: &str,
    settings: &[Setting],
    current: impl Fn(&str) -> Option<String>,
    host: &HostFacts,
    config: &Config,
) -> Report {
    let mut rows: Vec<Row> = settings
        .iter()
        .map(|s| {
            let now = current(&s.key);
            let status = compare(&s.key, now.as_deref(), &s.value);
            let uring_off = s.key == "kernel.io_uring_disabled" && status == Status::High;
            Row {
                setting: s.key.clone(),
                current: now.unwrap_or_else(|| "unreadable".into()),
                recommended: s.value.clone(),
                why: s.why.clone(),
                status,
                unsafe_because: (uring_off && config.server.io == IoEngine::Uring).then(|| {
                    "kernel.io_uring_disabled is set while server.io = \"uring\"".to_string()
                }),
            }
        })
        .collect();

    let cores = config.cores() as u64;
    let per_core = config.server.connections_per_core_max as u64;
    let needed = per_core
        .saturating_mul(cores)
        .saturating_add(NOFILE_HEADROOM);
    let nofile_ok = host.nofile.is_none_or(|n| n >= needed);
    rows.push(Row {
        setting: "nofile (RLIMIT_NOFILE)".into(),
        current: host
            .nofile
            .map_or("unlimited".into(), |n: u64| n.to_string()),
        recommended: format!(">= {needed}"),
        why: format!(
            "server.connections_per_core_max {per_core} x {cores} core(s) + {NOFILE_HEADROOM}; \
             raise LimitNOFILE= in the unit"
        ),
        status: if nofile_ok { Status::Ok } else { Status::Low },
        unsafe_because: (!nofile_ok).then(|| {
            format!(
                "nofile limit {} is below the {needed} descriptors the connection limits need",
                host.nofile.unwrap_or(0)
            )
        }),
    });

    rows.push(Row {
        setting: "cpus".into(),
        current: host.cpus.to_string(),
        recommended: format!(">= {cores}"),
        why: "server.cores shards, each pinned to a core; more shards than CPUs share cores".into(),
        status: if host.cpus >= cores as usize {
            Status::Ok
        } else {
            Status::Low
        },
        unsafe_because: None,
    });

    let wants_uring = config.server.io != IoEngine::Epoll;
    let (current, status) = match &host.uring {
        Ok(()) => ("available".to_string(), Status::Ok),
        Err(cause) if wants_uring => (format!("unavailable: {cause}"), Status::Low),
        Err(cause) => (format!("unavailable: {cause}"), Status::Ok),
    };
    rows.push(Row {
        setting: "io_uring".into(),
        current,
        recommended: if wants_uring {
            "available".into()
        } else {
            "not needed (server.io = \"epoll\")".into()
        },
        why: "server.io = \"auto\" falls back to epoll without it; \"uring\" refuses to start"
            .into(),
        status,
        unsafe_because: (host.uring.is_err() && config.server.io == IoEngine::Uring)
            .then(|| "io_uring is unavailable while server.io = \"uring\"".to_string()),
    });

    Report {
        profile: profile_name.to_string(),
        rows,
    }
}

/// The /proc/sys path of a dotted sysctl key.
pub fn proc_path(key: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(key.replace('.', "/"))
}

/// The current value of a sysctl, whitespace normalised; `None` when unreadable.
pub fn read_current(key: &str) -> Option<String> {
    let text = std::fs::read_to_string(proc_path(key)).ok()?;
    Some(text.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// One change `relay tune apply` would make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub key: String,
    pub from: String,
    pub to: String,
}

impl Change {
    /// The exact command an operator can run instead.
    pub fn command(&self) -> String {
        if self.to.contains(' ') {
            format!("sysctl -w {}=\"{}\"", self.key, self.to)
        } else {
            format!("sysctl -w {}={}", self.key, self.to)
        }
    }
}

/// The changes that bring this machine to the profile: only settings whose current value
/// is not already good enough (a larger backlog than recommended is left alone).
pub fn plan(settings: &[Setting], current: impl Fn(&str) -> Option<String>) -> Vec<Change> {
    settings
        .iter()
        .filter_map(|s| {
            let now = current(&s.key);
            match compare(&s.key, now.as_deref(), &s.value) {
                Status::Ok => None,
                _ => Some(Change {
                    key: s.key.clone(),
                    from: now.unwrap_or_else(|| "unreadable".into()),
                    to: s.value.clone(),
                }),
            }
        })
        .collect()
}

/// Writes one value to /proc/sys (needs root, and a writable /proc/sys).
pub fn write_sysctl(change: &Change) -> Result<(), TuneError> {
    let path = proc_path(&change.key);
    std::fs::write(&path, format!("{}\n", change.to))
        .map_err(|source| TuneError::Write { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> HostFacts {
        HostFacts {
            nofile: Some(1_048_576),
            cpus: 4,
            uring: Ok(()),
        }
    }

    fn config(text: &str) -> Config {
        Config::parse(text, "test").expect("valid config")
    }

    #[test]
    fn every_embedded_profile_parses_and_says_why() {
        for (name, _) in PROFILES {
            let settings = profile(name).expect("profile parses");
            assert!(settings.len() >= 15, "{name}");
            for s in &settings {
                assert!(s.why.contains("Costs:"), "{name}: {} has no cost", s.key);
            }
            assert!(settings.iter().any(|s| s.key == "net.core.somaxconn"));
            assert!(settings
                .iter()
                .any(|s| s.key == "kernel.io_uring_disabled" && s.value == "0"));
        }
        assert!(matches!(
            profile("nope"),
            Err(TuneError::UnknownProfile { .. })
        ));
    }

    #[test]
    fn parser_takes_the_comment_above() {
        let text = "# header\n\n# why a\nnet.core.somaxconn = 4096\n; why b\n\
                    net.ipv4.tcp_rmem =  4096   131072 16777216 \n";
        let settings = parse_sysctl(text, "t").expect("parses");
        assert_eq!(
            settings,
            vec![
                Setting {
                    key: "net.core.somaxconn".into(),
                    value: "4096".into(),
                    why: "why a".into()
                },
                Setting {
                    key: "net.ipv4.tcp_rmem".into(),
                    value: "4096 131072 16777216".into(),
                    why: "why b".into()
                },
            ]
        );
    }

    #[test]
    fn parser_refuses_bad_lines() {
        for (text, line) in [
            ("# why\nnot a setting\n", 2),
            ("# why\nkey =\n", 2),
            ("net.core.somaxconn = 1\n", 1),
            ("# why\n\nnet.core.somaxconn = 1\n", 3),
        ] {
            match parse_sysctl(text, "t") {
                Err(TuneError::Syntax { line: got, .. }) => assert_eq!(got, line, "{text}"),
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn comparison_follows_the_rule_of_each_key() {
        let c = compare;
        assert_eq!(c("net.core.somaxconn", Some("4096"), "65535"), Status::Low);
        assert_eq!(c("net.core.somaxconn", Some("65535"), "65535"), Status::Ok);
        assert_eq!(c("net.core.somaxconn", Some("100000"), "65535"), Status::Ok);
        assert_eq!(
            c(
                "net.ipv4.tcp_rmem",
                Some("4096 131072 6291456"),
                "4096 131072 16777216"
            ),
            Status::Low
        );
        assert_eq!(
            c("net.ipv4.tcp_fin_timeout", Some("60"), "15"),
            Status::High
        );
        assert_eq!(c("net.ipv4.tcp_fin_timeout", Some("10"), "15"), Status::Ok);
        let range = "net.ipv4.ip_local_port_range";
        assert_eq!(c(range, Some("32768 60999"), "10000 65535"), Status::Low);
        assert_eq!(c(range, Some("1024 65535"), "10000 65535"), Status::Ok);
        assert_eq!(c("vm.dirty_ratio", Some("20"), "10"), Status::High);
        assert_eq!(c("vm.dirty_ratio", Some("5"), "10"), Status::Low);
        assert_eq!(c("kernel.io_uring_disabled", Some("2"), "0"), Status::High);
        assert_eq!(c("kernel.io_uring_disabled", None, "0"), Status::Unknown);
        assert_eq!(
            c("net.core.somaxconn", Some("1 2"), "4096"),
            Status::Unknown
        );
        assert_eq!(c("some.text", Some("bbr"), "bbr"), Status::Ok);
    }

    #[test]
    fn nofile_below_the_connection_limit_is_unsafe() {
        let settings = profile(DEFAULT_PROFILE).expect("profile");
        let cfg = config("[server]\ncores = 4\nconnections_per_core_max = 10000\n");
        let mut facts = host();
        facts.nofile = Some(20_000);
        let report = evaluate("edge-relay", &settings, |_| None, &facts, &cfg);
        let reasons = report.unsafe_reasons();
        assert_eq!(reasons.len(), 1, "{reasons:?}");
        assert!(reasons[0].contains("nofile") && reasons[0].contains("40064"));
        assert!(report.to_string().contains("UNSAFE"));

        facts.nofile = Some(40_064);
        let report = evaluate("edge-relay", &settings, |_| None, &facts, &cfg);
        assert!(report.unsafe_reasons().is_empty(), "{report}");
        facts.nofile = None;
        let report = evaluate("edge-relay", &settings, |_| None, &facts, &cfg);
        assert!(report.unsafe_reasons().is_empty(), "{report}");
    }

    #[test]
    fn io_uring_off_is_unsafe_only_when_required() {
        let settings = profile(DEFAULT_PROFILE).expect("profile");
        let off = |key: &str| (key == "kernel.io_uring_disabled").then(|| "2".to_string());
        let mut facts = host();
        facts.uring = Err("disabled by sysctl".into());
        let uring = config("[server]\ncores = 1\nio = \"uring\"\n");
        let report = evaluate("edge-relay", &settings, off, &facts, &uring);
        assert_eq!(report.unsafe_reasons().len(), 2, "{report}");
        for io in ["auto", "epoll"] {
            let cfg = config(&format!("[server]\ncores = 1\nio = \"{io}\"\n"));
            let report = evaluate("edge-relay", &settings, off, &facts, &cfg);
            assert!(report.unsafe_reasons().is_empty(), "{io}: {report}");
            assert!(report.advisories() >= 1, "{io}: {report}");
        }
    }

    #[test]
    fn a_matching_machine_is_safe_and_quiet() {
        let settings = profile(DEFAULT_PROFILE).expect("profile");
        let exact = |key: &str| {
            settings
                .iter()
                .find(|s| s.key == key)
                .map(|s| s.value.clone())
        };
        let cfg = config("[server]\ncores = 2\n");
        let report = evaluate("edge-relay", &settings, exact, &host(), &cfg);
        assert_eq!(report.advisories(), 0, "{report}");
        assert!(report.verdict().contains("matches profile"), "{report}");
        assert!(plan(&settings, exact).is_empty());
    }

    #[test]
    fn plan_lists_only_what_falls_short_as_commands() {
        let settings = parse_sysctl(
            "# a\nnet.core.somaxconn = 65535\n# b\nnet.ipv4.tcp_rmem = 4096 131072 16777216\n\
             # c\nnet.ipv4.tcp_max_syn_backlog = 1024\n",
            "t",
        )
        .expect("parses");
        let now = |key: &str| {
            Some(
                match key {
                    "net.core.somaxconn" => "4096",
                    "net.ipv4.tcp_rmem" => "4096 131072 6291456",
                    _ => "4096",
                }
                .to_string(),
            )
        };
        let commands: Vec<String> = plan(&settings, now).iter().map(Change::command).collect();
        assert_eq!(
            commands,
            vec![
                "sysctl -w net.core.somaxconn=65535".to_string(),
                "sysctl -w net.ipv4.tcp_rmem=\"4096 131072 16777216\"".to_string(),
            ]
        );
    }

    #[test]
    fn proc_paths_use_slashes() {
        assert_eq!(
            proc_path("net.ipv4.tcp_rmem"),
            PathBuf::from("/proc/sys/net/ipv4/tcp_rmem")
        );
    }
}
