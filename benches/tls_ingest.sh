#!/bin/bash
# What STARTTLS costs on ingest: the same release relay (with a certificate, fsync on, mail
# to a local mailbox so nothing leaves) driven by loadgen in plaintext and with --starttls,
# alternating, side by side in one run. Two shapes: long sessions (connection reuse, the
# cipher's cost) and one message per connection (a handshake per message, what an edge
# relay sees from many senders).
#   cargo build --release --workspace && bash benches/tls_ingest.sh
# Knobs: DUR=10s, ROUNDS=2, CONNECTIONS=50, SIZE=10KiB. Needs the openssl CLI for the
# throwaway certificate. Loopback only; every run is bounded by DUR.
set -euo pipefail
B=${B:-$(cd "$(dirname "$0")/.." && pwd)/target/release}
W=$(mktemp -d)
trap 'kill $RELAY 2>/dev/null || true; rm -rf "$W"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
    -subj /CN=bench.test -keyout "$W/key.pem" -out "$W/cert.pem" 2>/dev/null
HASH='$argon2id$v=19$m=19456,t=2,p=1$ZooLWEChpY79Z6TwJvyWWQ$/qbC5yKMqMV95V9N9XJPga/chMKFOMNMHdI7/CftPiw'
cat > "$W/relay.toml" <<EOT
[server]
hostname = "bench.test"
connections_per_ip_max = 1000
[smtp]
listen = ["127.0.0.1:0"]
[pop3]
listen = []
[imap]
listen = []
[spool]
dir = "$W/spool"
[admin]
enabled = false
[local]
domains = ["example.test"]
[[local.users]]
name = "user0"
password = '$HASH'
[tls]
cert = "cert.pem"
key = "key.pem"
EOT
"$B/relay" serve --config "$W/relay.toml" 2> "$W/relay.log" &
RELAY=$!
for _ in $(seq 100); do
    PORT=$(sed -n 's/.*protocol="smtp" addr=127\.0\.0\.1:\([0-9]*\).*/\1/p' "$W/relay.log" | head -1)
    [ -n "$PORT" ] && grep -q "relay ready" "$W/relay.log" && break
    sleep 0.1
done
run() { # $1 label, rest: extra loadgen args
    local label=$1; shift
    "$B/loadgen" smtp --target "127.0.0.1:$PORT" --connections "${CONNECTIONS:-50}" \
        --size "${SIZE:-10KiB}" --duration "${DUR:-10s}" --pipelining --to-domain example.test \
        --users 1 --json "$@" 2>/dev/null > "$W/lg.json"
    python3 - "$label" "$W/lg.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[2]))
l = r["latency_ms"]["transaction"]
print(f'{sys.argv[1]:<34} {r["msgs_per_s"]:>9.0f} msgs/s  p50 {l["p50_ms"]:>7.2f} ms  p99 {l["p99_ms"]:>7.2f} ms  sessions {r["sessions"]} (tls {r["tls_sessions"]}, resumed {r.get("tls_resumed", "?")})')
PY
}
for round in $(seq "${ROUNDS:-2}"); do
    echo "round $round"
    run "plaintext, reused connections"
    run "STARTTLS, reused connections" --starttls
    run "plaintext, 1 message/connection" --messages-per-connection 1
    run "STARTTLS, 1 message/connection" --messages-per-connection 1 --starttls
done
