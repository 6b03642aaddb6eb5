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

/// The `.rs` files under `dirs` (relative to the crate root), with their text.
fn read_tree(dirs: &[&str]) -> Vec<(PathBuf, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in dirs {
        rust_files(&root.join(dir), &mut files);
    }
    files.sort();
    files
        .into_iter()
        .filter_map(|path| {
            let text = fs::read_to_string(&path).ok()?;
            let rel = path.strip_prefix(root).ok()?.to_path_buf();
            Some((rel, text))
        })
        .collect()
}

/// Production sources: test-only modules (`#[cfg(test)] mod tests;` files) may unwrap.
fn sources() -> Vec<(PathBuf, String)> {
    read_tree(&["src", "loadgen"])
        .into_iter()
        .filter(|(path, _)| {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name != "tests.rs" && !name.ends_with("_tests.rs")
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

/// What no protocol core may import.
const HIGHER_THAN_CORES: &[&str] = &[
    "runtime",
    "net",
    "server",
    "spool",
    "delivery",
    "queue",
    "mailbox",
    "config",
    "admin",
    "metrics",
    "tune",
    "init",
    "cli",
    "sender_auth",
    "mailstore",
    "imap",
    "cluster",
];

/// The layers, as the modules below `src/` (`src/<module>/…` or `src/<module>.rs`), each with
/// the modules it must never import, test code included: a test that needs a higher layer
/// belongs in that layer or under `tests/`. Imports point down: server → delivery →
/// queue/spool/mailbox/protocol cores → runtime/net (docs/ARCHITECTURE.md).
fn forbidden_imports() -> Vec<(&'static str, Vec<&'static str>)> {
    let cores = |also: &[&'static str]| [HIGHER_THAN_CORES, also].concat();
    let mut layers = vec![
        // The bottom: pinned shards, the engine, Phase. Knows no protocol, no delivery.
        (
            "runtime",
            vec![
                "net",
                "server",
                "delivery",
                "queue",
                "spool",
                "mailbox",
                "smtp",
                "pop3",
                "mime",
                "proto",
                "envelope",
                "config",
                "admin",
                "metrics",
                "tune",
                "init",
                "cli",
                "sender_auth",
                "mailstore",
                "imap",
            ],
        ),
        // Byte movement only.
        (
            "net",
            vec![
                "server",
                "delivery",
                "queue",
                "spool",
                "mailbox",
                "smtp",
                "pop3",
                "mime",
                "proto",
                "envelope",
                "config",
                "admin",
                "metrics",
                "tune",
                "init",
                "cli",
                "sender_auth",
                "mailstore",
                "imap",
            ],
        ),
        // Protocol cores: sans-IO, and no protocol imports another.
        ("proto", cores(&["smtp", "pop3", "mime", "envelope"])),
        ("envelope", cores(&["smtp", "pop3", "proto"])),
        ("mime", cores(&["smtp", "pop3", "proto"])),
        ("smtp", cores(&["pop3"])),
        ("pop3", cores(&["smtp"])),
        // The IMAP session: sans-IO; it speaks to the store through its own trait.
        (
            "imap",
            cores(&["smtp", "pop3"])
                .into_iter()
                .filter(|m| *m != "imap")
                .collect(),
        ),
        // The folder model: sans-IO over the spool's record types; no protocol, no sockets.
        (
            "mailstore",
            vec![
                "runtime",
                "net",
                "server",
                "delivery",
                "queue",
                "mailbox",
                "config",
                "admin",
                "metrics",
                "tune",
                "init",
                "cli",
                "sender_auth",
                "smtp",
                "pop3",
                "imap",
            ],
        ),
        // The log: no sockets, no runtime, no delivery decisions.
        (
            "spool",
            vec![
                "runtime",
                "net",
                "server",
                "delivery",
                "queue",
                "mailbox",
                "config",
                "admin",
                "tune",
                "init",
                "cli",
                "sender_auth",
                "mailstore",
                "imap",
            ],
        ),
        // Delivery decisions: pure, no I/O.
        (
            "queue",
            vec![
                "runtime",
                "net",
                "server",
                "delivery",
                "mailbox",
                "config",
                "admin",
                "metrics",
                "tune",
                "init",
                "cli",
                "sender_auth",
            ],
        ),
        (
            "mailbox",
            vec![
                "runtime",
                "net",
                "server",
                "delivery",
                "admin",
                "tune",
                "init",
                "cli",
                "sender_auth",
            ],
        ),
        ("delivery", vec!["server", "admin", "tune", "init", "cli"]),
        (
            "metrics",
            vec!["server", "delivery", "admin", "tune", "init", "cli"],
        ),
        ("admin", vec!["server", "tune", "init", "cli"]),
        ("config", vec!["server", "delivery", "net", "admin", "cli"]),
        ("tune", vec!["server", "delivery", "cli"]),
        ("server", vec!["init", "cli"]),
        // Sender authentication: keys, checks and reports over mail-auth and the resolver;
        // it is handed messages and answers, and knows nothing of shards, spool or queue.
        (
            "sender_auth",
            vec![
                "runtime",
                "server",
                "delivery",
                "queue",
                "spool",
                "mailbox",
                "config",
                "admin",
                "metrics",
                "tune",
                "init",
                "cli",
                "pop3",
                "mailstore",
                "imap",
            ],
        ),
        // OpenPGP and S/MIME for stored mail: keys, sealing and signature checks, sans-IO
        // over the MIME parser; handed bytes and keys, it knows no store and no socket.
        (
            "mailcrypt",
            vec![
                "runtime",
                "net",
                "server",
                "delivery",
                "queue",
                "spool",
                "mailbox",
                "mailstore",
                "config",
                "admin",
                "metrics",
                "tune",
                "init",
                "cli",
                "sender_auth",
                "smtp",
                "pop3",
                "imap",
                "web",
            ],
        ),
        // The first-run writer: config, users and certificate; nothing that serves.
        ("init", vec!["server", "delivery", "admin", "tune", "cli"]),
        // Web mail: pages and HTTP only; the store, the spool and submission are reached
        // through its `Backend` trait (answered in `server::web_store`), settings passed in.
        (
            "web",
            vec![
                "runtime",
                "net",
                "server",
                "delivery",
                "queue",
                "spool",
                "mailbox",
                "mailstore",
                "config",
                "admin",
                "metrics",
                "tune",
                "init",
                "cli",
                "sender_auth",
                "smtp",
                "pop3",
                "imap",
            ],
        ),
        // The cluster's shared state: Redis (limits, leases), PostgreSQL (the directory), the
        // node table. Clients of those services only: no protocol, no shard, no delivery.
        (
            "cluster",
            vec![
                "server",
                "delivery",
                "admin",
                "web",
                "tune",
                "init",
                "cli",
                "smtp",
                "pop3",
                "imap",
                "mime",
                "sender_auth",
                "mailcrypt",
            ],
        ),
    ];
    // Nothing below the assembly reaches the cluster's services (the delivery runtime may:
    // destination limits are shared).
    for (layer, forbidden) in &mut layers {
        if [
            "runtime",
            "net",
            "spool",
            "queue",
            "mailbox",
            "mailstore",
            "sender_auth",
            "mailcrypt",
            "web",
            "config",
        ]
        .contains(layer)
        {
            forbidden.push("cluster");
        }
    }
    layers
}

/// The top-level module a source path belongs to (`src/net/tls/mod.rs` → `net`).
fn module_of(path: &Path) -> Option<String> {
    let mut parts = path.strip_prefix("src").ok()?.components();
    let first = parts.next()?.as_os_str().to_str()?;
    Some(first.strip_suffix(".rs").unwrap_or(first).to_string())
}

/// Every top-level module a file names through `crate::` (paths and `use crate::{a, b}`).
fn crate_imports(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                // `crate::{a::b, c}`: only this line's part of the group is seen; rustfmt puts
                // long groups one item per line, each then read as a continuation below.
                for item in group.split([',', '}']) {
                    let name: String = item
                        .trim()
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() {
                        found.push((n + 1, name));
                    }
                }
            } else {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    found.push((n + 1, name));
                }
            }
        }
    }
    // Multi-line `use crate::{` groups: every line up to the closing brace names a module.
    let mut inside = false;
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.starts_with("use crate::{") && !trimmed.contains('}') {
            inside = true;
            continue;
        }
        if inside {
            if trimmed.starts_with('}') {
                inside = false;
                continue;
            }
            let name: String = trimmed
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.push((n + 1, name));
            }
        }
    }
    found
}

/// Narrow exceptions to [`forbidden_imports`]: (module, imported module, the one path of it
/// that may be named).
const ALLOWED_IMPORTS: &[(&str, &str, &str)] = &[
    // The spool hands the byte move of a body read to the runtime's file reads (the shard's
    // ring, or the epoll engine's reader pool); locating, checking and parsing stay its own,
    // and nothing else of the runtime is named.
    ("spool", "runtime", "crate::runtime::file_read::"),
];

/// The imports that break [`forbidden_imports`], as `path:line: module imports other`.
fn layering_violations(files: &[(PathBuf, String)]) -> Vec<String> {
    let rules = forbidden_imports();
    let mut found = Vec::new();
    for (path, text) in files {
        let Some(module) = module_of(path) else {
            continue;
        };
        let Some((_, forbidden)) = rules.iter().find(|(m, _)| *m == module) else {
            continue;
        };
        for (n, imported) in crate_imports(text) {
            let line = text.lines().nth(n.saturating_sub(1)).unwrap_or("");
            let allowed = ALLOWED_IMPORTS
                .iter()
                .any(|(m, i, path)| *m == module && *i == imported.as_str() && line.contains(path));
            if forbidden.contains(&imported.as_str()) && !allowed {
                found.push(format!(
                    "{}:{n}: {module} imports {imported}",
                    path.display()
                ));
            }
        }
    }
    found
}

#[test]
fn layers_import_only_downwards() {
    let found = layering_violations(&read_tree(&["src"]));
    assert!(
        found.is_empty(),
        "a lower layer imports a higher one (see forbidden_imports in tests/tidy.rs and \
         docs/ARCHITECTURE.md); move the code up, or pass what it needs down:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_layering_check_catches_wrong_imports() {
    let file = |path: &str, text: &str| (PathBuf::from(path), text.to_string());
    let wrong = [
        file("src/net/io.rs", "use crate::server::shard::ShardContext;\n"),
        file("src/runtime/mod.rs", "    let x = crate::delivery::run;\n"),
        file(
            "src/smtp/session.rs",
            "use crate::{envelope::Envelope, pop3::Response};\n",
        ),
        file(
            "src/queue/mod.rs",
            "use crate::{\n    envelope::QueueId,\n    net::dns,\n};\n",
        ),
        file(
            "src/proto/sasl.rs",
            "fn f() { crate::spool::Spool::open(); }\n",
        ),
        file("src/web/http.rs", "use crate::mailbox::MailStore;\n"),
        // The spool's one exception is the runtime's file reads, nothing else of it.
        file("src/spool/io.rs", "use crate::runtime::probe::probe;\n"),
    ];
    let found = layering_violations(&wrong);
    assert_eq!(
        found,
        [
            "src/net/io.rs:1: net imports server",
            "src/runtime/mod.rs:1: runtime imports delivery",
            "src/smtp/session.rs:1: smtp imports pop3",
            "src/queue/mod.rs:3: queue imports net",
            "src/proto/sasl.rs:1: proto imports spool",
            "src/web/http.rs:1: web imports mailbox",
            "src/spool/io.rs:1: spool imports runtime",
        ]
    );
    let fine = [
        file(
            "src/spool/mod.rs",
            "use crate::runtime::file_read::ReadSource;\n",
        ),
        file(
            "src/server/mod.rs",
            "use crate::delivery::Core;\nuse crate::net::io;\n",
        ),
        file(
            "src/smtp/session.rs",
            "use crate::proto::line; // crate::pop3 in a comment\n",
        ),
        file(
            "src/delivery/mod.rs",
            "use crate::{net::io::Connector, queue::QueueEntry};\n",
        ),
        file(
            "src/server/web_store.rs",
            "use crate::web::{Backend, WebServer};\n",
        ),
    ];
    assert_eq!(layering_violations(&fine), Vec::<String>::new());
}
