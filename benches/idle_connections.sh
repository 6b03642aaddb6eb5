#!/usr/bin/env bash
# Memory per idle SMTP connection (target: <= 32 KiB): builds the release relay, then
# runs benches/idle_connections.py, which starts it on a temporary spool, opens N idle
# connections (each reads the greeting, then stays silent) and reports the relay's RSS growth
# per connection from /proc/PID/status (VmRSS before and after).
# The client and the relay each need N descriptors plus headroom: the hard nofile limit must
# allow it (the script raises the soft one; the relay raises its own at start).
# Usage: benches/idle_connections.sh [N] [io] [tls]   (default 10000 uring; io: uring or epoll;
#        tls: each connection idles inside a STARTTLS session)
set -euo pipefail
n="${1:-10000}"
io="${2:-uring}"
root="$(cd "$(dirname "$0")/.." && pwd)"
hard="$(ulimit -Hn)"
if [ "$hard" != unlimited ] && [ "$hard" -lt $((n + 512)) ]; then
    echo "the hard nofile limit ($hard) is below $((n + 512)): raise it (ulimit -Hn, LimitNOFILE)" >&2
    exit 2
fi
ulimit -Sn "$hard"
cargo build --release --manifest-path "$root/Cargo.toml" --bin relay >&2
exec python3 "$root/benches/idle_connections.py" "$n" "$io" "${3:-}"
