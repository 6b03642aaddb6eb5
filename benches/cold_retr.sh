#!/usr/bin/env bash
# Greeting delay during cold 20 MiB RETRs on one core (issue 15, item 2): both engines, one
# RETR and ten at once, cold (page cache dropped for the spool's segments) and warm.
# RELAY_BIN names the binary (default: the release build). Run under the bench lock:
#   flock /work/bench.lock chrt -o 0 nice -n -5 bash benches/cold_retr.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
if [ -z "${RELAY_BIN:-}" ]; then
    cargo build --release --manifest-path "$root/Cargo.toml" --bin relay >&2
    RELAY_BIN="${CARGO_TARGET_DIR:-$root/target}/release/relay"
fi
export RELAY_BIN
for io in uring epoll; do
    for shape in "1 1" "5 2"; do
        for temp in cold warm; do
            # shellcheck disable=SC2086
            python3 "$root/benches/cold_retr.py" "$io" "$temp" $shape 20 "${ROUNDS:-3}"
        done
    done
done
