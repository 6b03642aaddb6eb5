//! `relay tune` and the files in `tuning/`, through the binary as an operator runs it.

#[allow(unused_macros)] // the engine_tests! macro is for the server tests
mod common;

use std::ffi::OsStr;

use common::{describe, relay_cmd, repo_path};

/// Every config profile is valid for `relay check`.
#[test]
fn every_config_profile_passes_check() {
    let dir = repo_path("tuning/profiles");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("tuning/profiles exists") {
        let path = entry.expect("directory entry").path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let output = relay_cmd([
            OsStr::new("check"),
            OsStr::new("--config"),
            path.as_os_str(),
        ]);
        assert!(
            output.status.success(),
            "{}: {}",
            path.display(),
            describe(&output)
        );
        seen += 1;
    }
    assert!(seen >= 4, "expected the four profiles, found {seen}");
}

/// The table's current value for a setting is what /proc says.
#[test]
fn check_reports_the_values_in_proc() {
    let output = relay_cmd(["tune", "check", "--profile", "edge-relay"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("verdict:"), "{}", describe(&output));
    for key in ["net.core.somaxconn", "fs.nr_open", "net.ipv4.tcp_rmem"] {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let expected = text.split_whitespace().collect::<Vec<_>>().join(" ");
        let line = stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(key))
            .unwrap_or_else(|| panic!("no row for {key}: {}", describe(&output)));
        let current = line[key.len()..].trim_start();
        assert!(
            current.starts_with(&format!("{expected} ")),
            "{key}: /proc says {expected:?}, row is {line:?}"
        );
    }
}

/// A connection limit no rlimit can meet is flagged, naming nofile, with a failing exit.
#[test]
fn connection_limit_above_nofile_is_flagged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("big.toml");
    std::fs::write(
        &config,
        "[server]\ncores = 2\nconnections_per_core_max = 100000000\n",
    )
    .expect("write config");
    let output = relay_cmd([
        OsStr::new("tune"),
        OsStr::new("check"),
        OsStr::new("--config"),
        config.as_os_str(),
    ]);
    assert!(!output.status.success(), "{}", describe(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let row = stdout
        .lines()
        .find(|l| l.starts_with("nofile"))
        .unwrap_or_else(|| panic!("no nofile row: {}", describe(&output)));
    assert!(row.contains("LOW!") && row.contains("200000064"), "{row}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("nofile"), "{}", describe(&output));
}

/// Without --yes, apply prints commands and leaves /proc alone.
#[test]
fn apply_without_yes_changes_nothing() {
    let path = "/proc/sys/net/core/somaxconn";
    let before = std::fs::read_to_string(path).ok();
    let output = relay_cmd(["tune", "apply", "--profile", "edge-relay"]);
    assert!(output.status.success(), "{}", describe(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let commands: Vec<&str> = stdout.lines().filter(|l| !l.starts_with('#')).collect();
    assert!(
        commands.iter().all(|l| l.starts_with("sysctl -w ")),
        "{}",
        describe(&output)
    );
    if before
        .as_deref()
        .and_then(|t| t.trim().parse::<u64>().ok())
        .is_some_and(|n| n < 65535)
    {
        assert!(
            commands
                .iter()
                .any(|l| l.starts_with("sysctl -w net.core.somaxconn=65535")),
            "{}",
            describe(&output)
        );
    }
    assert!(!stdout.contains("changed "), "{}", describe(&output));
    assert_eq!(std::fs::read_to_string(path).ok(), before);
}

#[test]
fn unknown_profile_is_an_error() {
    let output = relay_cmd(["tune", "apply", "--profile", "no-such-profile"]);
    assert!(!output.status.success(), "{}", describe(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("edge-relay"),
        "{}",
        describe(&output)
    );
}
