//! `loadgen`: the relay's load generator. See `loadgen --help` and the README's "Load
//! generator" section.

use std::process::ExitCode;

use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = loadgen::cli::Cli::parse();
    match loadgen::run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("loadgen: {error}");
            ExitCode::from(2)
        }
    }
}
