#!/bin/bash
# Run as: bash benches/million_deferred.sh (release build first; N=... for fewer).
# 1M queued messages to a dead next hop: relay RSS with them queued, and after a restart
# (queue rebuilt from the spool, every entry deferred).
set -e
B=${B:-$(cd "$(dirname "$0")/.." && pwd)/target/release}
W=/var/tmp/relay-million
rm -rf $W; mkdir -p $W
cat > $W/relay.toml <<EOT
[server]
hostname = "relay.bench.test"
[smtp]
listen = ["127.0.0.1:25400"]
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
to = "127.0.0.1:1"
[delivery]
retry_intervals = ["1h"]
retry_every = "2h"
queued_messages_max = 2000000
queued_bytes_max = "64GiB"
EOT
rss() { grep VmRSS /proc/$1/status | awk '{print $2/1024 " MiB"}'; }
$B/relay serve --config $W/relay.toml 2> $W/relay1.log &
R=$!; sleep 1
echo "RSS empty: $(rss $R)"
$B/loadgen smtp --target 127.0.0.1:25400 --connections 50 --size 1KiB --messages ${N:-1000000} --pipelining --json 2>/dev/null > $W/lg.json
python3 -c "import json; d=json.load(open('$W/lg.json')); print('accepted', d['messages']['accepted'], 'msgs/s', round(d['msgs_per_s']))"
sleep 2
echo "RSS with the queue in memory (ready behind a held destination): $(rss $R)"
kill $R; wait $R || true
$B/relay serve --config $W/relay.toml 2> $W/relay2.log &
R=$!
for i in $(seq 600); do grep -q "relay ready" $W/relay2.log && break; sleep 0.5; done
echo "restart ready after ${i} polls; RSS: $(rss $R)"
# wait until every entry has its deferred record (the dead destination settles them all)
for i in $(seq 600); do
  n=$(grep -c 'status="deferred"' $W/relay2.log || true)
  # the first message was tried before the restart: it waits for its retry time
  [ "$n" -ge "$(( ${N:-1000000} - 1 ))" ] && break; sleep 1
done
echo "deferred records after restart: $n"
sleep 3
echo "RSS with every entry in the deferred index: $(rss $R)"
kill $R; wait $R || true
$B/relay serve --config $W/relay.toml 2> $W/relay3.log &
R=$!
for i in $(seq 600); do grep -q "relay ready" $W/relay3.log && break; sleep 0.5; done
sleep 5
echo "second restart (all deferred, nothing due): RSS $(rss $R)"
grep "delivery queue rebuilt" $W/relay3.log | head -2
du -sh $W/spool
kill $R; wait $R || true
