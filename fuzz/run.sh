#!/usr/bin/env bash
# Runs each fuzz target (MIME parser and decoders, the SMTP server session and client, the
# POP3 server session, the spool's segment decoder) for SECONDS (default 30) on its seed
# corpus in fuzz/corpus/<name>.
# cargo-fuzz needs nightly features; on a stable toolchain RUSTC_BOOTSTRAP=1 unlocks them.
# New inputs that libFuzzer finds go to a scratch corpus (not the repo's seeds); a crash
# leaves its input in fuzz/artifacts/<target>/ and makes this script fail.
# Usage: fuzz/run.sh [SECONDS]
set -euo pipefail
secs="${1:-30}"
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "cargo-fuzz not installed: cargo install cargo-fuzz" >&2
    exit 2
fi
# The default toolchain with RUSTC_BOOTSTRAP=1 (works on stable); FUZZ_TOOLCHAIN=nightly to
# use an installed nightly instead.
toolchain=()
if [ -n "${FUZZ_TOOLCHAIN:-}" ]; then
    toolchain=("+$FUZZ_TOOLCHAIN")
else
    export RUSTC_BOOTSTRAP=1
fi
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$here/target}"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
for pair in mime_parse:parse mime_base64:base64 mime_qp:qp smtp_session:smtp smtp_client:smtp_client pop3_session:pop3 imap_session:imap spool_frame:spool_frame; do
    target="${pair%%:*}"
    seeds="${pair##*:}"
    mkdir -p "$scratch/$target"
    echo "== $target for ${secs}s"
    cargo "${toolchain[@]}" fuzz run "$target" "$scratch/$target" "corpus/$seeds" -- \
        -max_total_time="$secs" -max_len=65536 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
done
echo "fuzz: all targets ran ${secs}s without a crash"
