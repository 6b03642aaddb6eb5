//! Mechanical style rules (docs/ARCHITECTURE.md §10–11). Each failure says what to
//! use instead.
//!
//! - no `unwrap()`/`expect()` in library code outside tests: input a peer, a file or a config
//!   controls must become a typed error; a true invariant says so with
//!   `// tidy: invariant: <why>` on the same line;
//! - `tokio_uring` only under `src/runtime/` and `src/net/`: everything else must be testable
//!   without io_uring;
//! - `anyhow` only in the binary's CLI;
//! - no `todo!`/`unimplemented!`;
//! - replies are written only by their `reply.rs` (docs/ARCHITECTURE.md §10): an SMTP reply
//!   literal (`"250 `, `"554-`) anywhere else in `src/smtp`, or a POP3 one (`"+OK`,
//!   `"-ERR`) anywhere else in `src/pop3`, is refused;
//! - `unsafe` is forbidden crate-wide (`#![forbid(unsafe_code)]` in `src/lib.rs`).

use std::fs;
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The lines of a file before its `#[cfg(test)]` module (tests live at the bottom).
fn production_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .take_while(|(_, line)| line.trim() != "#[cfg(test)]")
        .map(|(i, line)| (i + 1, line))
        .filter(|(_, line)| !line.trim_start().starts_with("//"))
}

fn sources() -> Vec<(PathBuf, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    rust_files(&root.join("loadgen"), &mut files);
    files.sort();
    files
        .into_iter()
        // Test-only modules (`#[cfg(test)] mod tests;` files) may unwrap.
        .filter(|path| {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name != "tests.rs" && !name.ends_with("_tests.rs")
        })
        .filter_map(|path| {
            let text = fs::read_to_string(&path).ok()?;
            let rel = path.strip_prefix(root).ok()?.to_path_buf();
            Some((rel, text))
        })
        .collect()
}

#[test]
fn no_unwrap_outside_tests() {
    let mut found = Vec::new();
    for (path, text) in sources() {
        for (n, line) in production_lines(&text) {
            let hit = line.contains(".unwrap()") || line.contains(".expect(");
            if hit && !line.contains("tidy: invariant:") {
                found.push(format!("{}:{n}: {}", path.display(), line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "unwrap()/expect() in library code; return a typed error, or mark a real invariant \
         with `// tidy: invariant: <why>`:\n{}",
        found.join("\n")
    );
}

#[test]
fn tokio_uring_stays_in_runtime_and_net() {
    let mut found = Vec::new();
    for (path, text) in sources() {
        let allowed = path.starts_with("src/runtime") || path.starts_with("src/net");
        if !allowed && text.contains("tokio_uring") {
            found.push(path.display().to_string());
        }
    }
    assert!(
        found.is_empty(),
        "tokio_uring used outside src/runtime and src/net (keep the rest testable without \
         io_uring; go through net::io::Connection): {found:?}"
    );
}

#[test]
fn anyhow_only_in_the_cli() {
    let mut found = Vec::new();
    for (path, text) in sources() {
        let allowed = path == Path::new("src/cli.rs") || path.starts_with("loadgen");
        if !allowed && text.contains("anyhow") {
            found.push(path.display().to_string());
        }
    }
    assert!(
        found.is_empty(),
        "anyhow outside the CLI; use a thiserror enum at the module boundary: {found:?}"
    );
}

#[test]
fn no_stubs() {
    let mut found = Vec::new();
    for (path, text) in sources() {
        for (n, line) in production_lines(&text) {
            if line.contains("todo!(") || line.contains("unimplemented!(") {
                found.push(format!("{}:{n}", path.display()));
            }
        }
    }
    assert!(found.is_empty(), "stubs left in the code: {found:?}");
}

/// `"250 `, `"554-` ...: an SMTP reply written by hand.
fn has_smtp_reply_literal(code: &str) -> bool {
    code.as_bytes().windows(5).any(|w| {
        w[0] == b'"'
            && (b'2'..=b'5').contains(&w[1])
            && w[2].is_ascii_digit()
            && w[3].is_ascii_digit()
            && (w[4] == b' ' || w[4] == b'-')
    })
}

/// `"+OK`, `"-ERR`, `"+ `: a POP3 response written by hand.
fn has_pop3_reply_literal(code: &str) -> bool {
    code.contains("\"+OK") || code.contains("\"-ERR") || code.contains("\"+ ")
}

#[test]
fn replies_are_written_only_in_reply_rs() {
    assert!(has_smtp_reply_literal("x = \"250 ok\""));
    assert!(has_pop3_reply_literal("x = \"-ERR no\""));
    let mut found = Vec::new();
    for (path, text) in sources() {
        let rule: fn(&str) -> bool = if path.starts_with("src/smtp") {
            has_smtp_reply_literal
        } else if path.starts_with("src/pop3") {
            has_pop3_reply_literal
        } else {
            continue;
        };
        if path.file_name().is_some_and(|n| n == "reply.rs") {
            continue;
        }
        for (n, line) in production_lines(&text) {
            if rule(line) {
                found.push(format!("{}:{n}: {}", path.display(), line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "reply literal outside reply.rs; add a named constructor there:\n{}",
        found.join("\n")
    );
}

#[test]
fn unsafe_is_forbidden_crate_wide() {
    let lib = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs"))
        .expect("src/lib.rs");
    assert!(lib.contains("#![forbid(unsafe_code)]"));
}
