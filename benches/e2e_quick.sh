#!/bin/bash
# A quick end-to-end run: loadgen smtp → release relay → loadgen sink, one run, in the
# current directory. Knobs: DUR=10s, RATE (open loop, msgs/s), EXTRA (more relay TOML).
#   cargo build --release --workspace && bash benches/e2e_quick.sh
set -e
B=${B:-$(cd "$(dirname "$0")/.." && pwd)/target/release}
SINKP=25301
$B/loadgen sink --listen 127.0.0.1:$SINKP --quiet --duration 300s > sink.out 2> sink.log &
SINK=$!
W=${W:-$PWD}; rm -rf "$W/spool"
cat > relay.toml <<EOT
[server]
hostname = "relay.bench.test"
[smtp]
listen = ["127.0.0.1:25300"]
[pop3]
listen = []
[imap]
listen = []
[spool]
dir = "$W/spool"
[admin]
listen = "127.0.0.1:0"
[[relay.routes]]
domain = "*"
to = "127.0.0.1:$SINKP"
${EXTRA:-}
EOT
$B/relay serve --config relay.toml 2> relay.log &
RELAY=$!
sleep 1
t0=$(date +%s.%N)
$B/loadgen smtp --target 127.0.0.1:25300 --connections 50 --size 10KiB --duration ${DUR:-10s} --pipelining ${RATE:+--rate $RATE} --json 2>/dev/null > lg.json
accepted=$(python3 -c 'import json; print(json.load(open("lg.json"))["messages"]["accepted"])')
ingest=$(python3 -c 'import json; print(round(json.load(open("lg.json"))["msgs_per_s"]))')
for i in $(seq 1200); do
  got=$(grep -c 'status="sent"' relay.log || true)
  [ "$got" -ge "$accepted" ] && break
  sleep 0.1
done
t1=$(date +%s.%N)
python3 -c "print('ingest', $ingest, 'accepted', $accepted, 'delivered', $got, 'e2e msgs/s', round($got/($t1-$t0)))"
python3 "$(dirname "$0")/compare/delivery_latency.py" relay.log
kill $RELAY; wait $RELAY || true
kill -INT $SINK; wait $SINK || true
