//! The `relay` binary: see `cli.rs` for its commands.

use mimalloc::MiMalloc;

mod cli;

// Thread-local heaps suit one thread per core, and mimalloc avoids glibc's slow memcpy
// layouts for back-to-back 10 KB buffers (docs/ARCHITECTURE.md §12).
#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
