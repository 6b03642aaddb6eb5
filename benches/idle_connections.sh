#!/usr/bin/env bash
# Memory per idle connection (targets: <= 8 KiB plaintext, <= 16 KiB inside TLS): builds the
# release relay (unless RELAY_BIN names one), then runs benches/idle_connections.py, which
# starts it on temporary spools, opens N idle connections (each reads the greeting, then
# stays silent; with `tls` inside a STARTTLS/STLS session) and reports the relay's RSS and
# PSS growth per connection from /proc.
# Descriptors: the script raises the hard nofile limit when it may (root with
# CAP_SYS_RESOURCE) and the soft one to it. Where the hard limit stays below N (a container
# without that capability), the Python script spreads the connections over several relay
# processes and sums their growth (the report names how many).
# Usage: benches/idle_connections.sh [N] [io] [plain|tls] [smtp|pop3|imap]
#        (default 10000 uring plain smtp; io: uring or epoll)
set -euo pipefail
n="${1:-10000}"
io="${2:-uring}"
mode="${3:-plain}"
protocol="${4:-smtp}"
root="$(cd "$(dirname "$0")/.." && pwd)"
want=$((n + 4096))
hard="$(ulimit -Hn)"
if [ "$hard" != unlimited ] && [ "$hard" -lt "$want" ]; then
    ulimit -Hn "$want" 2>/dev/null ||
        echo "note: the hard nofile limit stays at $hard (no CAP_SYS_RESOURCE): the connections are spread over several relays" >&2
fi
ulimit -Sn "$(ulimit -Hn)"
if [ -z "${RELAY_BIN:-}" ]; then
    cargo build --release --manifest-path "$root/Cargo.toml" --bin relay >&2
    RELAY_BIN="${CARGO_TARGET_DIR:-$root/target}/release/relay"
fi
export RELAY_BIN
exec python3 "$root/benches/idle_connections.py" "$n" "$io" "$mode" "$protocol"
