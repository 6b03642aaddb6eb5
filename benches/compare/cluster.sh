#!/usr/bin/env bash
# Cluster scaling: two relay nodes with one core each against one node with one core, the
# same load client (loadgen) offering each node the same load, the limits shared through one
# Redis server (so every message takes a shared rate decision), in alternating rounds.
#
#   bash benches/compare/cluster.sh       # as root on Debian; installs redis-server if missing
#
# The workload is an MX's: mail from a client outside `relay.allowed_networks` for $USERS
# local mailboxes (clients inside the relay networks are exempt from the per-client rate, so
# an edge-relay workload would never ask Redis). Each node: `server.cores = 1`, pinned with
# taskset to its own CPU (node a: CPU 0, node b: CPU 1; the relay pins its shard to the CPUs
# it is allowed), fsync on, `[cluster]` with `[cluster.redis]`; `smtp.messages_per_ip_max`
# and `server.connections_per_ip_max` high enough never to refuse (the decisions are still
# made in Redis: one per message, one per connection). Per round:
#   one:  node a alone, `loadgen smtp --connections $CONNECTIONS --pipelining` for $DURATION;
#   two:  nodes a and b, one such loadgen against each at the same time; the sum.
# Prints msgs/s for both, the ratio, and Redis commands per accepted message (from Redis's
# INFO commandstats around each run). Medians over the rounds; raw figures in
# $WORK/results.jsonl. Nothing listens beyond 127.0.0.0/8.
#
# NODE_QUOTA=P caps each node at P% of one CPU (a cgroup CPU quota, v1 or v2): on a machine
# with two cores, "a core per node" leaves no CPU for the load clients and Redis once two
# nodes run, so the two-node run measures the clients' starvation rather than the shared
# state; with NODE_QUOTA=50 each node has half a core of its own and the other half of the
# machine serves loadgen and Redis in both setups. The question the ratio answers stays the
# same: does the shared state serialise the nodes?
#
# Knobs: ROUNDS=2 DURATION=10s CONNECTIONS=50 SIZE=10KiB USERS=20 NODE_QUOTA= (none) REDIS_RT=0
# SHARED=1 (Redis), 0 (in-process limits) or both (each round runs all four setups, so the
# shared state's cost is read off one run: two shared nodes against two unshared ones)
# WORK=/var/lib/relay-compare-cluster KEEP=0 RELAY_BIN LOADGEN_BIN (skip the build)
# CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/../.."

ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-50}
SIZE=${SIZE:-10KiB}
USERS=${USERS:-20}
WORK=${WORK:-/var/lib/relay-compare-cluster}
KEEP=${KEEP:-0}

log() { echo "cluster-bench: $*" >&2; }
die() { log "$*"; exit 1; }

command -v redis-server >/dev/null 2>&1 ||
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server redis-tools >/dev/null
if [ -z "${RELAY_BIN:-}" ] || [ -z "${LOADGEN_BIN:-}" ]; then
    log "building relay and loadgen (release)"
    cargo build --release --quiet -p relay -p loadgen
    TARGET=${CARGO_TARGET_DIR:-$PWD/target}
    RELAY_BIN=${RELAY_BIN:-$TARGET/release/relay}
    LOADGEN_BIN=${LOADGEN_BIN:-$TARGET/release/loadgen}
fi
[ -x "$RELAY_BIN" ] && [ -x "$LOADGEN_BIN" ] || die "no relay/loadgen binaries"

rm -rf "$WORK"
mkdir -p "$WORK"
RESULTS=$WORK/results.jsonl
: >"$RESULTS"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

REDIS_PORT=$(free_port)
REDIS_PID="" NODE_PIDS=()
cleanup() {
    set +e
    for pid in "${NODE_PIDS[@]}"; do kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; done
    [ -n "$REDIS_PID" ] && kill "$REDIS_PID" 2>/dev/null && wait "$REDIS_PID" 2>/dev/null
    for dir in "${CGROUPS[@]}"; do rmdir "$dir" 2>/dev/null; done
    if [ "$KEEP" != 1 ]; then rm -rf "$WORK"; else log "kept $WORK"; fi
}
trap cleanup EXIT

# REDIS_RT=1 runs Redis with a real-time priority: in a cluster it has cores of its own, and
# here, on two cores shared with the nodes and the load clients, its single thread otherwise
# waits for a CPU between decisions, and every node waits on it.
REDIS_PREFIX=()
[ "${REDIS_RT:-0}" != 1 ] || REDIS_PREFIX=(chrt -f 10)
"${REDIS_PREFIX[@]}" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$WORK" >"$WORK/redis.log" 2>&1 &
REDIS_PID=$!
# `echo password | relay user add x`: the users' hash (argon2id; nobody logs in here).
HASH='$argon2id$v=19$m=19456,t=2,p=1$ZooLWEChpY79Z6TwJvyWWQ$/qbC5yKMqMV95V9N9XJPga/chMKFOMNMHdI7/CftPiw'
for _ in $(seq 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
redis_calls() { # "commands scripts": every command Redis executed (those inside Lua scripts
    # included), and the script calls (EVALSHA: one round trip each)
    redis-cli -p "$REDIS_PORT" info commandstats | tr -d '\r' |
        awk -F'[:=,]' '/^cmdstat_/ { n += $3 } /^cmdstat_evalsha:/ { e += $3 } END { print n + 0, e + 0 }'
}
delta() { # $1 $2: "commands scripts" before and after; prints the JSON fields
    local c0 e0 c1 e1
    read -r c0 e0 <<<"$1"
    read -r c1 e1 <<<"$2"
    echo "\"redis_calls\":$((c1 - c0)),\"redis_scripts\":$((e1 - e0))"
}

node_config() { # $1: name, $2: address
    cat <<TOML
[server]
hostname = "$1.bench.test"
cores = 1
connections_per_ip_max = 100000
[smtp]
listen = ["$2:2525"]
messages_per_ip_max = 100000000
[pop3]
listen = []
[imap]
listen = []
[spool]
dir = "$WORK/spool-$1"
fsync = true
[relay]
allowed_networks = []
[local]
domains = ["bench.test"]
[cluster]
node = "$1"
[[cluster.nodes]]
name = "a"
cluster = "127.0.0.2:2626"
[[cluster.nodes]]
name = "b"
cluster = "127.0.0.3:2626"
TOML
    # SHARED=0: the same nodes with their limits in-process (no Redis): the machine's own
    # scaling, which the shared run is compared with.
    [ "$NODE_SHARED" = 0 ] || printf '[cluster.redis]\nurl = "redis://127.0.0.1:%s/0"\n' "$REDIS_PORT"
    cat <<TOML
TOML
    for ((i = 0; i < USERS; i++)); do
        printf '[[local.users]]\nname = "user%d"\npassword = "%s"\n' "$i" "$HASH"
    done
}

CGROUPS=()
cap_cpu() { # $1: name, $2: pid; NODE_QUOTA% of one CPU
    local quota=$((NODE_QUOTA * 1000)) dir
    if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
        grep -qw cpu /sys/fs/cgroup/cgroup.subtree_control || echo +cpu >/sys/fs/cgroup/cgroup.subtree_control
        dir=/sys/fs/cgroup/relay-bench-$1
        mkdir -p "$dir"
        echo "$quota 100000" >"$dir/cpu.max"
    else
        dir=/sys/fs/cgroup/cpu/relay-bench-$1
        mkdir -p "$dir"
        echo 100000 >"$dir/cpu.cfs_period_us"
        echo "$quota" >"$dir/cpu.cfs_quota_us"
    fi
    echo "$2" >"$dir/cgroup.procs"
    CGROUPS+=("$dir")
}
cpu_seconds() { # $1: pid; user+system CPU of the process so far (s)
    awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15) / hz }' "/proc/$1/stat" 2>/dev/null || echo 0
}

start_node() { # $1: name, $2: address, $3: cpu
    rm -rf "$WORK/spool-$1"
    node_config "$1" "$2" >"$WORK/$1.toml"
    taskset -c "$3" "$RELAY_BIN" serve --config "$WORK/$1.toml" 2>"$WORK/$1.log" &
    NODE_PIDS+=($!)
    [ -z "${NODE_QUOTA:-}" ] || cap_cpu "$1" "${NODE_PIDS[-1]}"
    for _ in $(seq 200); do
        grep -q 'relay ready' "$WORK/$1.log" && return 0
        kill -0 "${NODE_PIDS[-1]}" 2>/dev/null || break
        sleep 0.05
    done
    die "node $1 did not start: $(tail -5 "$WORK/$1.log")"
}
stop_nodes() {
    for pid in "${NODE_PIDS[@]}"; do kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true; done
    NODE_PIDS=()
}
load() { # $1: HOST:PORT; the loadgen JSON summary
    "$LOADGEN_BIN" smtp --target "$1" --connections "$CONNECTIONS" --size "$SIZE" \
        --duration "$DURATION" --pipelining --to-domain bench.test --users "$USERS" \
        --json 2>/dev/null
}
rate() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["msgs_per_s"], d["messages"]["accepted"])'; }

run_one() {
    start_node a 127.0.0.2 0
    local before after out
    before=$(redis_calls)
    local cpu0 cpu1
    cpu0=$(cpu_seconds "${NODE_PIDS[0]}")
    out=$(load 127.0.0.2:2525 | rate)
    cpu1=$(cpu_seconds "${NODE_PIDS[0]}")
    after=$(redis_calls)
    stop_nodes
    echo "{\"run\":\"one$NODE_SHARED\",\"round\":$1,\"msgs_per_s\":${out% *},\"accepted\":${out#* },\"node_cpu_s\":$(python3 -c "print(round($cpu1 - $cpu0, 2))"),$(delta "$before" "$after")}" >>"$RESULTS"
    log "round $1 shared $NODE_SHARED one node: ${out% *} msgs/s, node CPU $(python3 -c "print(round($cpu1 - $cpu0, 2))") s"
}
run_two() {
    start_node a 127.0.0.2 0
    start_node b 127.0.0.3 1
    local before after a0 b0 a1 b1
    before=$(redis_calls)
    a0=$(cpu_seconds "${NODE_PIDS[0]}")
    b0=$(cpu_seconds "${NODE_PIDS[1]}")
    load 127.0.0.2:2525 | rate >"$WORK/a.rate" &
    local pa=$!
    load 127.0.0.3:2525 | rate >"$WORK/b.rate" &
    local pb=$!
    wait "$pa" "$pb"
    a1=$(cpu_seconds "${NODE_PIDS[0]}")
    b1=$(cpu_seconds "${NODE_PIDS[1]}")
    after=$(redis_calls)
    stop_nodes
    read -r ra na <"$WORK/a.rate"
    read -r rb nb <"$WORK/b.rate"
    echo "{\"run\":\"two$NODE_SHARED\",\"round\":$1,\"msgs_per_s\":$(python3 -c "print($ra + $rb)"),\"a\":$ra,\"b\":$rb,\"node_cpu_s\":$(python3 -c "print(round($a1 - $a0 + $b1 - $b0, 2))"),\"accepted\":$((na + nb)),$(delta "$before" "$after")}" >>"$RESULTS"
    log "round $1 shared $NODE_SHARED two nodes: a $ra + b $rb msgs/s, node CPU a $(python3 -c "print(round($a1 - $a0, 2))") s, b $(python3 -c "print(round($b1 - $b0, 2))") s"
}

log "load average $(cut -d' ' -f1-3 /proc/loadavg); node quota ${NODE_QUOTA:-none}; shared ${SHARED:-1}; redis rt ${REDIS_RT:-0}; commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
case "${SHARED:-1}" in both) SETTINGS=(1 0) ;; 0) SETTINGS=(0) ;; *) SETTINGS=(1) ;; esac
for ((round = 1; round <= ROUNDS; round++)); do
    for NODE_SHARED in "${SETTINGS[@]}"; do
        if ((round % 2)); then run_one "$round"; run_two "$round"; else run_two "$round"; run_one "$round"; fi
    done
    # The next round starts with the other setting.
    SETTINGS=($(printf '%s\n' "${SETTINGS[@]}" | tac))
done

# Redis's own time per script call (its CPU per decision, without the network), for the
# model of where one Redis saturates.
log "redis: $(redis-cli -p "$REDIS_PORT" info commandstats | tr -d '\r' | grep '^cmdstat_evalsha:')"
python3 - "$RESULTS" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
def med(name, key):
    return statistics.median(r[key] for r in runs if r["run"] == name)
def per_msg(name, key):
    return statistics.median(r[key] / max(r["accepted"], 1) for r in runs if r["run"] == name)
present = [s for s in ("1", "0") if any(r["run"] == "one" + s for r in runs)]
rounds = sum(1 for r in runs if r["run"] == "one" + present[0])
print(f"| setup | msgs/s (median of {rounds}) | node CPU s (median) | Redis round trips (script calls) per message | Redis commands per message |")
print("|---|---|---|---|---|")
for shared in present:
    what = "limits in Redis" if shared == "1" else "limits in-process"
    for name, label in (("one", "one node, one core"), ("two", "two nodes, one core each")):
        key = name + shared
        cpu = med(key, "node_cpu_s")
        print(f"| {label}, {what} | {med(key, 'msgs_per_s'):,.0f} | {cpu:.2f} | {per_msg(key, 'redis_scripts'):.2f} | {per_msg(key, 'redis_calls'):.2f} |")
    print(f"| ratio two/one, {what} | {med('two' + shared, 'msgs_per_s') / med('one' + shared, 'msgs_per_s'):.2f}x | | | |")
if len(present) == 2:
    print(f"| two nodes in Redis / two nodes in-process | {med('two1', 'msgs_per_s') / med('two0', 'msgs_per_s'):.2f} | | | |")
PY
