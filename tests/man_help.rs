//! The man pages (`relay generate man`, shipped in the Debian package) say what `--help` says:
//! for `relay` and every subcommand found by walking `--help`'s own command lists, the page
//! exists, carries the help's description and names every long option the help lists. Both
//! sides are read from the built binary's output, not from the clap definitions.

use std::path::Path;
use std::process::Command;

fn relay(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_relay"))
        .args(args)
        .output()
        .expect("run relay");
    assert!(
        out.status.success(),
        "relay {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Collapses runs of whitespace, so wrapping differences do not matter.
fn words(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Roff escapes clap_mangen writes, back to plain text.
fn unroff(s: &str) -> String {
    let s = s
        .replace("\\*(Aq", "'")
        .replace("\\(aq", "'")
        .replace("\\fB", "")
        .replace("\\fI", "")
        .replace("\\fR", "")
        .replace("\\-", "-")
        .replace("\\\\", "\\");
    words(&s)
}

/// The help's description: everything before `Usage:`.
fn description(help: &str) -> String {
    words(help.split("\nUsage:").next().unwrap_or_default())
}

/// Subcommand names from the help's `Commands:` section (without clap's `help`).
fn subcommands(help: &str) -> Vec<String> {
    let Some(section) = help.split("\nCommands:\n").nth(1) else {
        return Vec::new();
    };
    section
        .lines()
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect()
}

/// Long options (`--name`) the help lists in its `Options:` section.
fn long_options(help: &str) -> Vec<String> {
    let Some(section) = help.split("\nOptions:\n").nth(1) else {
        return Vec::new();
    };
    section
        .split_whitespace()
        .filter(|w| w.starts_with("--"))
        .map(|w| w.trim_end_matches(',').to_string())
        .collect()
}

fn check_page(dir: &Path, path: &[String], checked: &mut Vec<String>) {
    let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
    args.push("--help");
    let help = relay(&args);
    let page_name = if path.is_empty() {
        "relay.1".to_string()
    } else {
        format!("relay-{}.1", path.join("-"))
    };
    let page = std::fs::read_to_string(dir.join(&page_name))
        .unwrap_or_else(|e| panic!("no man page {page_name} for `relay {path:?}`: {e}"));
    let page = unroff(&page);
    let about = description(&help);
    assert!(
        !about.is_empty(),
        "`relay {path:?} --help` has no description"
    );
    assert!(
        page.contains(&about),
        "{page_name} does not carry the help's description {about:?}:\n{page}"
    );
    for option in long_options(&help) {
        assert!(
            page.contains(&option),
            "{page_name} does not name {option}, which `relay {path:?} --help` lists"
        );
    }
    checked.push(page_name);
    for sub in subcommands(&help) {
        let mut deeper = path.to_vec();
        deeper.push(sub);
        check_page(dir, &deeper, checked);
    }
}

#[test]
fn every_man_page_says_what_help_says() {
    let dir = tempfile::tempdir().expect("tempdir");
    relay(&["generate", "man", dir.path().to_str().expect("utf-8 path")]);
    let mut checked = Vec::new();
    check_page(dir.path(), &[], &mut checked);
    // relay, its top-level commands and their subcommands: a walk that found nothing to
    // compare would pass vacuously.
    assert!(checked.len() >= 15, "too few pages checked: {checked:?}");
    // No page for a command the help does not list (the hidden `generate` among them).
    let mut written: Vec<String> = std::fs::read_dir(dir.path())
        .expect("read man dir")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    written.sort();
    checked.sort();
    assert_eq!(
        written, checked,
        "man pages without a help page, or the reverse"
    );
}

#[test]
fn completions_are_generated_for_every_packaged_shell() {
    for (shell, marker) in [
        ("bash", "complete"),
        ("zsh", "#compdef relay"),
        ("fish", "complete -c relay"),
    ] {
        let script = relay(&["generate", "completions", shell]);
        assert!(
            script.contains(marker),
            "{shell} completion lacks {marker:?}"
        );
        // Every visible top-level command is completed.
        assert!(
            script.contains("serve") && script.contains("queue"),
            "{shell}: {script}"
        );
    }
}
