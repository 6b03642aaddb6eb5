#!/usr/bin/env bash
# One destination, every core: end to end through one static route (everything to one
# smarthost) with `delivery.destination_spread` on and off, alternating, and how much CPU each
# shard thread used during each run.
#
#   RELAY_BIN=… LOADGEN_BIN=… bash benches/destination_spread.sh
#
# Per run: a fresh spool, `server.cores = CORES`, `spool.fsync = true`, one route `*` to a
# `loadgen sink` on loopback; `loadgen smtp` sends SIZE messages over CONNECTIONS connections
# for DURATION; the script then waits until the relay has logged every accepted message as
# sent. It reads each thread's CPU time (utime + stime, /proc/PID/task/TID/stat) before the
# load and after the last delivery, and prints the shard threads' CPU seconds, their ratio
# (busiest / least busy), CPU microseconds per message for the whole process, and the end to
# end rate (delivered / time from the load's start to the last delivery), and how many
# deliveries each core made (`relay_deliveries_total` from the admin listener's /metrics).
#
# Knobs: ROUNDS=2 DURATION=10s CONNECTIONS=20 SIZE=10KiB CORES=2 PIPELINING=0 (1: loadgen
# --pipelining) WORK=$(mktemp -d) KEEP=0. Nothing listens beyond 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-20}
SIZE=${SIZE:-10KiB}
CORES=${CORES:-2}
PIPELINING=${PIPELINING:-0}
KEEP=${KEEP:-0}
: "${RELAY_BIN:?RELAY_BIN: a release relay}" "${LOADGEN_BIN:?LOADGEN_BIN: a release loadgen}"
WORK=${WORK:-$(mktemp -d)}
log() { echo "destination_spread: $*" >&2; }
cleanup() {
    [ -n "${RELAY_PID:-}" ] && kill "$RELAY_PID" 2>/dev/null || true
    [ -n "${SINK_PID:-}" ] && kill "$SINK_PID" 2>/dev/null || true
    wait 2>/dev/null || true
    [ "$KEEP" = 1 ] || rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Thread name → CPU ticks, for every thread of $1.
thread_ticks() {
    python3 - "$1" <<'EOF'
import os, sys
pid = sys.argv[1]
out = {}
for tid in os.listdir(f"/proc/{pid}/task"):
    try:
        stat = open(f"/proc/{pid}/task/{tid}/stat").read()
    except OSError:
        continue
    name = stat[stat.index("(") + 1:stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2:].split()
    out[f"{name}/{tid}"] = int(fields[11]) + int(fields[12])
print(" ".join(f"{k}={v}" for k, v in sorted(out.items())))
EOF
}

run_one() { # $1: round, $2: true|false
    local dir=$WORK/run-$1-$2 sink_port smtp_port
    mkdir -p "$dir"
    sink_port=$(free_port)
    "$LOADGEN_BIN" sink --listen "127.0.0.1:$sink_port" --quiet --duration 600s >"$dir/sink.out" 2>"$dir/sink.log" &
    SINK_PID=$!
    cat >"$dir/relay.toml" <<EOT
[server]
hostname = "relay.bench.test"
cores = $CORES
[smtp]
listen = ["127.0.0.1:0"]
[pop3]
listen = []
[imap]
listen = []
[spool]
dir = "$dir/spool"
fsync = true
[admin]
listen = "127.0.0.1:0"
[delivery]
destination_spread = $2
[[relay.routes]]
domain = "*"
to = "127.0.0.1:$sink_port"
EOT
    "$RELAY_BIN" serve --config "$dir/relay.toml" 2>"$dir/relay.log" &
    RELAY_PID=$!
    for _ in $(seq 100); do
        grep -q 'protocol="smtp" addr=' "$dir/relay.log" 2>/dev/null && break
        sleep 0.1
    done
    smtp_port=$(grep -o 'protocol="smtp" addr=[0-9.:]*' "$dir/relay.log" | head -1 | sed 's/.*://')
    [ -n "$smtp_port" ] || { log "relay did not listen: $(tail -3 "$dir/relay.log")"; exit 1; }
    local before after t0 t1 accepted got
    before=$(thread_ticks "$RELAY_PID")
    t0=$(date +%s.%N)
    "$LOADGEN_BIN" smtp --target "127.0.0.1:$smtp_port" --connections "$CONNECTIONS" --size "$SIZE" \
        --duration "$DURATION" $([ "$PIPELINING" = 1 ] && echo --pipelining) --json 2>/dev/null >"$dir/lg.json"
    accepted=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["messages"]["accepted"])' "$dir/lg.json")
    got=0
    for _ in $(seq 1200); do
        got=$(grep -c 'status="sent"' "$dir/relay.log" || true)
        [ "$got" -ge "$accepted" ] && break
        sleep 0.1
    done
    t1=$(date +%s.%N)
    after=$(thread_ticks "$RELAY_PID")
    local admin per_core
    admin=$(grep -o 'protocol="admin" addr=[0-9.:]*' "$dir/relay.log" | head -1 | sed 's/.*addr=//')
    per_core=$(curl -s "http://$admin/metrics" | python3 -c '
import sys
out = {}
for line in sys.stdin:
    if line.startswith("relay_deliveries_total{") and "result=\"delivered\"" in line:
        core = line.split("core=\"")[1].split("\"")[0]
        out[core] = out.get(core, 0) + int(float(line.rsplit(" ", 1)[1]))
print(" ".join(f"core{c}={n}" for c, n in sorted(out.items())))')
    kill "$RELAY_PID"; wait "$RELAY_PID" 2>/dev/null || true; RELAY_PID=""
    kill "$SINK_PID"; wait "$SINK_PID" 2>/dev/null || true; SINK_PID=""
    python3 - "$1" "$2" "$accepted" "$got" "$t0" "$t1" "$before" "$after" "$per_core" <<'EOF'
import os, sys
rnd, spread, accepted, got, t0, t1, before, after, per_core = sys.argv[1:]
hz = os.sysconf("SC_CLK_TCK")
parse = lambda s: {k: int(v) for k, v in (kv.split("=") for kv in s.split())}
b, a = parse(before), parse(after)
used = {k: (a[k] - b.get(k, 0)) / hz for k in a}
shards = sorted((k.split("/")[0], v) for k, v in used.items() if k.startswith("shard-"))
total = sum(used.values())
busiest, idlest = max(v for _, v in shards), min(v for _, v in shards)
ratio = busiest / idlest if idlest > 0 else float("inf")
e2e = int(got) / (float(t1) - float(t0))
print(f"round {rnd} spread={spread}: accepted {accepted} delivered {got} ({per_core}) e2e {e2e:.0f} msgs/s; "
      + " ".join(f"{n} {v:.2f}s" for n, v in shards)
      + f"; shard ratio {ratio:.2f}; process CPU {total:.2f}s = {1e6 * total / max(int(got), 1):.0f} us/msg")
EOF
}

log "work dir $WORK; $(uptime)"
for round in $(seq "$ROUNDS"); do
    if ((round % 2)); then order="true false"; else order="false true"; fi
    for spread in $order; do
        run_one "$round" "$spread"
    done
done
