//! `relay generate man DIR` and `relay generate completions SHELL`: the man pages and shell
//! completions, rendered from the same clap definitions as `--help` (so the two cannot drift).
//! Hidden: it is for packaging/build-deb.sh, not for operators.
//!
//! A subcommand rather than build.rs because build.rs would need the clap definitions in a
//! file of their own that both it and the binary include, and its output would land in a
//! hashed OUT_DIR the packaging script would have to hunt for; the built binary already has
//! the definitions and writes where it is told.

use std::io::{self, Write};
use std::path::Path;

use clap::CommandFactory;
use clap_complete::Shell;

/// Writes `relay.1` and `relay-<sub>[-<sub>].1` for every visible subcommand into `dir`
/// (created if missing) and prints each file's name.
pub fn man<C: CommandFactory>(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    clap_mangen::generate_to(C::command(), dir)?;
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".1"))
        .collect();
    names.sort();
    let mut out = std::io::stdout().lock();
    for name in names {
        writeln!(out, "{}", dir.join(name).display())?;
    }
    Ok(())
}

/// Prints the completion script for `shell` on stdout.
pub fn completions<C: CommandFactory>(shell: Shell) -> io::Result<()> {
    let mut cmd = C::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "relay", &mut out);
    io::stdout().lock().write_all(&out)
}
