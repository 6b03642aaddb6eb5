#!/usr/bin/env bash
# Side-by-side benchmark: relay against Postfix (SMTP edge relay) and Dovecot (POP3, IMAP),
# all driven by the same load client (loadgen) on this machine, in alternating runs.
#
#   bash benches/compare/run.sh            # as root on Debian/Ubuntu; installs what is missing
#
# What it does:
#   1. Installs Debian's postfix and dovecot-pop3d when missing (DEBIAN_FRONTEND=noninteractive,
#      Postfix as "No configuration", with services kept from starting during the install), and
#      builds relay and loadgen in release mode.
#   2. Starts `loadgen sink` on loopback; Postfix (own config directory, default durability:
#      queue files are fsynced) listens on a loopback port and relays everything to the sink;
#      Dovecot (own config file) serves Maildirs over POP3 on a loopback port with argon2id
#      passwords of the same cost as relay's (the very same hash string).
#   3. Runs, ROUNDS times, alternating which server goes first:
#        - SMTP ingest: loadgen smtp --connections $CONNECTIONS --size $SIZE --duration $DURATION
#          against relay (fsync on, fresh spool) and against Postfix, both relaying everything
#          to the same loadgen sink; for both the end-to-end rate (until the sink has every
#          accepted message), and for relay the delivery latency (250 after DATA → the
#          next hop's 250, from relay's log);
#        - POP3: each workload of $POP3_WORKLOADS (NAME:MAILBOXES:MESSAGES:SIZE; by default
#          `login`, $USERS × $PER_USER × $SIZE, where the argon2id logins are most of the run;
#          `retrieval`, 20 × 1000 × 10 KiB; `large`, 20 × 10 × 1 MiB), filled afresh (relay
#          through SMTP into a fresh spool, Dovecot's Maildirs written directly) and drained
#          by loadgen pop3 --connections $POP3_CONNECTIONS (login, STAT, RETR + DELE all,
#          QUIT), once one command at a time and once with --pipelining --window
#          $POP3_WINDOW (both servers offer PIPELINING); the rate is also given without the
#          logins (loadgen's `msgs_per_s_retrieval`);
#      plus loadgen → loadgen sink with the same SMTP workload (the client's own ceiling),
#      and (MAILDROP=1) each POP3 run against `loadgen maildrop`, which serves the same
#      mailboxes from memory and takes logins at once: the most this client can retrieve, so
#      ceiling ÷ Dovecot is the most any server could show against Dovecot here.
#   3b. IMAP (IMAP=1), relay against a second Dovecot (own config, Maildirs, same argon2id
#      hash) on loopback ports: $IMAP_USERS mailboxes filled with $IMAP_MESSAGES messages of
#      $IMAP_SIZE each by `loadgen imap --workload append` (the APPEND rate), then per round:
#      SELECT of the full mailbox, `FETCH 1:* (FLAGS ENVELOPE)`, body FETCH of every message
#      three ways (msgs/s and MiB/s; the literal bytes checked against what was appended):
#      `UID FETCH n BODY.PEEK[]` one round trip per message (the client's and the schedulers'
#      wake-ups dominate), the same with $IMAP_PIPELINING commands in flight per connection,
#      and `UID FETCH lo:hi BODY.PEEK[]` over $IMAP_RANGE messages per command with
#      $IMAP_RANGE_DEPTH in flight (server work dominates); `SEARCH TEXT needle`, and memory per
#      session in IDLE (RSS and PSS of the server's processes while a quarter of $IMAP_IDLE
#      sessions and while all $IMAP_IDLE hold IDLE: the slope between the two; Dovecot forks
#      one imap process per session, so its figure is the sum over its process tree). $IMAP_IDLE is lowered to
#      what the open-file limit allows (said on stderr). Relay's side is skipped, with a
#      message, when relay does not greet on its IMAP port (a relay without an IMAP server).
#      Each body fetch goes over every mailbox $IMAP_PASSES times (one pass of a 10,000-message
#      mailbox lasts a fraction of a second: the sessions' start and end would weigh on the
#      rate); with MAILDROP=1 the three body fetches also run against `loadgen maildrop`
#      (the same mailboxes from memory: the client's ceiling, as for POP3).
#   4. Prints one table (medians over the rounds; every run's figures are in $WORK/results.jsonl)
#      and stops Postfix, Dovecot, relay and the sink. Nothing listens beyond 127.0.0.1.
#
# Knobs (environment): ROUNDS=2 DURATION=10s CONNECTIONS=50 SIZE=10KiB USERS=20 PER_USER=50
# POP3_CONNECTIONS=4 POP3_WORKLOADS (see 3.) POP3_MODES="plain pipelined" POP3_WINDOW=32
# POP3_ONLY=0 (1: only the POP3 section, no SMTP ingest or IMAP)
# WORK=/var/lib/relay-compare KEEP=0 (keep $WORK) RELAY_BIN LOADGEN_BIN
# (skip the build) CARGO_TARGET_DIR; IMAP=1 (0 skips the IMAP section) IMAP_ONLY=0 (1: only
# the IMAP section, no Postfix, sink or POP3; RELAY_BIN=none then runs Dovecot's side alone)
# IMAP_USERS=4 IMAP_MESSAGES=10000 (per mailbox) IMAP_SIZE=$SIZE IMAP_CONNECTIONS=4
# IMAP_IDLE=10000 (sessions held in IDLE) IMAP_PIPELINING=16 IMAP_RANGE=500
# IMAP_RANGE_DEPTH=2 IMAP_FETCH_ONLY=0 (1: the rounds run only the body fetches)
# IMAP_PASSES=3 (body fetches over each mailbox) MAILDROP=1 (0: no client-ceiling runs).
# DISK=1: the disk measured in the same run (`loadgen disk`, records of $SIZE plus framing, one
# write + one fdatasync per batch): the fdatasync latency (batches of 1, one writer), the raw
# group-commit ceiling (one writer per core, $DISK_CEILING_BATCH records per fdatasync), the
# fdatasync latency into a pre-zeroed file (what a spool that never grows its file would pay) and, for
# each sweep point C, what the disk allows C transactions in flight (min(C, cores) writers, C
# records per round of fdatasyncs); DISK_DURATION=3s.
# SWEEP="1 5 20 50 200": SMTP ingest into relay and Postfix at each of these connection counts,
# SWEEP_MODES="plain pipelined", SWEEP_DURATION=5s each, printed beside the disk's allowance at
# that concurrency (SWEEP="" skips it). INGEST_ONLY=1: only SMTP ingest (the $CONNECTIONS-
# connection runs, the disk, the sweep and the sink reference; no TLS, POP3 or IMAP).
# TLS=1: relay and Postfix also get one throwaway certificate (P-256, openssl) and the rounds
# add SMTP ingest over STARTTLS, long sessions and one message per connection (a handshake
# each, resumed where the server allows it: both with their defaults), same loadgen;
# TLS_ONLY=1 runs only those (no plaintext ingest, POP3 or IMAP).
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD

ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-50}
SIZE=${SIZE:-10KiB}
USERS=${USERS:-20}
PER_USER=${PER_USER:-50}
POP3_CONNECTIONS=${POP3_CONNECTIONS:-4}
POP3_WORKLOADS=${POP3_WORKLOADS:-login:$USERS:$PER_USER:$SIZE retrieval:20:1000:10KiB large:20:10:1MiB}
POP3_MODES=${POP3_MODES:-plain pipelined}
POP3_WINDOW=${POP3_WINDOW:-32}
POP3_ONLY=${POP3_ONLY:-0}
[ "$POP3_ONLY" = 1 ] && IMAP=0
# The mailboxes the largest POP3 workload needs (both servers know that many users).
POP3_USERS_MAX=$(for w in $POP3_WORKLOADS; do echo "$w" | cut -d: -f2; done | sort -n | tail -1)
WORK=${WORK:-/var/lib/relay-compare}
KEEP=${KEEP:-0}
IMAP=${IMAP:-1}
IMAP_ONLY=${IMAP_ONLY:-0}
IMAP_USERS=${IMAP_USERS:-4}
IMAP_MESSAGES=${IMAP_MESSAGES:-10000}
IMAP_SIZE=${IMAP_SIZE:-$SIZE}
IMAP_CONNECTIONS=${IMAP_CONNECTIONS:-4}
IMAP_IDLE=${IMAP_IDLE:-10000}
IMAP_PIPELINING=${IMAP_PIPELINING:-16}
IMAP_RANGE=${IMAP_RANGE:-500}
IMAP_RANGE_DEPTH=${IMAP_RANGE_DEPTH:-2}
IMAP_FETCH_ONLY=${IMAP_FETCH_ONLY:-0}
IMAP_PASSES=${IMAP_PASSES:-3}
MAILDROP=${MAILDROP:-1}
TLS=${TLS:-1}
TLS_ONLY=${TLS_ONLY:-0}
DISK=${DISK:-1}
DISK_DURATION=${DISK_DURATION:-3s}
DISK_CEILING_BATCH=${DISK_CEILING_BATCH:-128}
SWEEP=${SWEEP-1 5 20 50 200}
SWEEP_MODES=${SWEEP_MODES:-plain pipelined}
SWEEP_DURATION=${SWEEP_DURATION:-5s}
INGEST_ONLY=${INGEST_ONLY:-0}
if [ "$INGEST_ONLY" = 1 ]; then TLS=0 IMAP=0 POP3_ONLY=0; fi
if [ "$TLS_ONLY" = 1 ] || [ "$POP3_ONLY" = 1 ]; then DISK=0 SWEEP=""; fi
CORES=$(nproc)
if [ "$TLS_ONLY" = 1 ]; then TLS=1 IMAP=0; fi
[ "$IMAP_ONLY" = 1 ] && IMAP=1
[ "${RELAY_BIN:-}" != none ] || [ "$IMAP_ONLY" = 1 ] || {
    echo "compare: RELAY_BIN=none only goes with IMAP_ONLY=1" >&2
    exit 1
}
# The argon2id hash of "password" that relay's tests use (m=19456 KiB, t=2, p=1).
HASH='$argon2id$v=19$m=19456,t=2,p=1$ZooLWEChpY79Z6TwJvyWWQ$/qbC5yKMqMV95V9N9XJPga/chMKFOMNMHdI7/CftPiw'

log() { echo "compare: $*" >&2; }
die() { log "$*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (it installs packages and starts Postfix and Dovecot)"
command -v python3 >/dev/null || die "python3 is needed for the JSON and the table"

# ---------------------------------------------------------------------------------------------
# 1. Install and build

if ! command -v postfix >/dev/null || ! command -v dovecot >/dev/null ||
    [ ! -e /usr/lib/dovecot/pop3 ] || { [ "$IMAP" = 1 ] && [ ! -e /usr/lib/dovecot/imap ]; }; then
    log "installing postfix, dovecot-pop3d and dovecot-imapd"
    export DEBIAN_FRONTEND=noninteractive
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    # Keep the packages' own services from starting (they would listen on all interfaces).
    created_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        created_policy=1
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends postfix dovecot-core dovecot-pop3d \
        dovecot-imapd >/dev/null
    if [ "$created_policy" -eq 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
fi

build=()
[ -n "${RELAY_BIN:-}" ] || build+=(-p relay)
[ -n "${LOADGEN_BIN:-}" ] || build+=(-p loadgen)
if [ ${#build[@]} -gt 0 ]; then
    log "building ${build[*]} (release)"
    cargo build --release --quiet "${build[@]}"
    TARGET=${CARGO_TARGET_DIR:-$REPO/target}
    RELAY_BIN=${RELAY_BIN:-$TARGET/release/relay}
    LOADGEN_BIN=${LOADGEN_BIN:-$TARGET/release/loadgen}
fi
{ [ "$RELAY_BIN" = none ] || [ -x "$RELAY_BIN" ]; } && [ -x "$LOADGEN_BIN" ] ||
    die "no relay/loadgen binaries"

# ---------------------------------------------------------------------------------------------
# 2. Work directory, ports, cleanup

rm -rf "$WORK"
mkdir -p -m 755 "$WORK"
RESULTS=$WORK/results.jsonl
: >"$RESULTS"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

SINK_PID="" RELAY_PID="" MAILDROP_PID="" PF_DIR=$WORK/postfix DV_CONF=$WORK/dovecot/dovecot.conf
DVI_CONF=$WORK/dovecot-imap/dovecot.conf IDLE_PID="" INOTIFY_WAS=""
cleanup() {
    set +e
    if [ -n "$INOTIFY_WAS" ]; then echo "$INOTIFY_WAS" >/proc/sys/fs/inotify/max_user_instances; fi
    [ -n "$IDLE_PID" ] && kill "$IDLE_PID" 2>/dev/null && wait "$IDLE_PID" 2>/dev/null
    [ -n "$RELAY_PID" ] && kill "$RELAY_PID" 2>/dev/null && wait "$RELAY_PID" 2>/dev/null
    [ -n "$MAILDROP_PID" ] && kill "$MAILDROP_PID" 2>/dev/null && wait "$MAILDROP_PID" 2>/dev/null
    [ -f "$PF_DIR/main.cf" ] && postfix -c "$PF_DIR" stop >/dev/null 2>&1
    [ -f "$DV_CONF" ] && dovecot -c "$DV_CONF" stop >/dev/null 2>&1
    [ -f "$DVI_CONF" ] && dovecot -c "$DVI_CONF" stop >/dev/null 2>&1
    [ -n "$SINK_PID" ] && kill -INT "$SINK_PID" 2>/dev/null && wait "$SINK_PID" 2>/dev/null
    if [ "$KEEP" != 1 ]; then rm -rf "$WORK"; else log "kept $WORK"; fi
}
trap cleanup EXIT

# The sum of PSS (MiB) of a process and its children: what it costs in memory.
pss_tree() {
    python3 - "$@" <<'EOF'
import os, sys
roots = {int(p) for p in sys.argv[1:] if p}
children = {}
for pid in os.listdir("/proc"):
    if pid.isdigit():
        try:
            stat = open(f"/proc/{pid}/stat").read()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(pid))
        except OSError:
            pass
todo, seen = list(roots), set()
while todo:
    p = todo.pop()
    if p not in seen:
        seen.add(p)
        todo.extend(children.get(p, []))
total = 0
for p in seen:
    try:
        for line in open(f"/proc/{p}/smaps_rollup"):
            if line.startswith("Pss:"):
                total += int(line.split()[1])
    except OSError:
        pass
print(f"{total/1024:.1f} {len(seen)}")
EOF
}

# Memory of a process tree: "PSS_KIB RSS_KIB PROCESSES" (RSS counts shared pages once per
# process, PSS shares them out: Dovecot's one-process-per-session shows the difference).
mem_tree() {
    python3 - "$@" <<'EOF'
import os, sys
roots = {int(p) for p in sys.argv[1:] if p}
children = {}
for pid in os.listdir("/proc"):
    if pid.isdigit():
        try:
            stat = open(f"/proc/{pid}/stat").read()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(pid))
        except OSError:
            pass
todo, seen = list(roots), set()
while todo:
    p = todo.pop()
    if p not in seen:
        seen.add(p)
        todo.extend(children.get(p, []))
pss = rss = 0
for p in seen:
    try:
        for line in open(f"/proc/{p}/smaps_rollup"):
            if line.startswith("Pss:"):
                pss += int(line.split()[1])
            elif line.startswith("Rss:"):
                rss += int(line.split()[1])
    except OSError:
        pass
print(pss, rss, len(seen))
EOF
}

# Appends one result line: {"run": NAME, "round": R, ...loadgen JSON..., extra fields}.
record() {
    local name=$1 round=$2 json=$3
    shift 3
    python3 - "$name" "$round" "$json" "$@" >>"$RESULTS" <<'EOF'
import json, sys
name, rnd, text, *extra = sys.argv[1:]
d = json.loads(text)
d["run"], d["round"] = name, int(rnd)
for kv in extra:
    k, v = kv.split("=", 1)
    d[k] = float(v)
print(json.dumps(d))
EOF
}

# ---------------------------------------------------------------------------------------------
# 3. The sink, Postfix, Dovecot

SINK_PORT=$(free_port)
"$LOADGEN_BIN" sink --listen "127.0.0.1:$SINK_PORT" --duration 3h --max-time 3h \
    >"$WORK/sink.out" 2>"$WORK/sink.log" &
SINK_PID=$!
sink_total() { grep -o 'total [0-9]*' "$WORK/sink.log" | tail -1 | cut -d' ' -f2; }

if [ "$TLS" = 1 ]; then
    mkdir -p -m 755 "$WORK/tls"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
        -subj /CN=bench.test -keyout "$WORK/tls/key.pem" -out "$WORK/tls/cert.pem" 2>/dev/null ||
        die "openssl could not make the test certificate"
    chmod 644 "$WORK/tls/key.pem" # Postfix reads it as root, relay as root: a throwaway key
fi

if [ "$IMAP_ONLY" != 1 ]; then
PF_PORT=$(free_port)
mkdir -p -m 755 "$PF_DIR"
master_src=/usr/share/postfix/master.cf.dist
[ -f "$master_src" ] || master_src=/etc/postfix/master.cf
# The stock master.cf with its smtp listener moved to a loopback port.
sed -E "s|^smtp +inet .*|127.0.0.1:$PF_PORT inet n - y - - smtpd|" "$master_src" >"$PF_DIR/master.cf"
cat >"$PF_DIR/main.cf" <<EOF
# relay's comparison: an edge relay on loopback forwarding everything to loadgen sink.
compatibility_level = 3.6
queue_directory = $WORK/postfix-queue
data_directory = $WORK/postfix-data
myhostname = postfix.bench.test
mydomain = bench.test
myorigin = \$myhostname
inet_interfaces = loopback-only
inet_protocols = ipv4
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
relayhost = [127.0.0.1]:$SINK_PORT
smtp_tls_security_level = none
smtpd_tls_security_level = $([ "$TLS" = 1 ] && echo may || echo none)
$([ "$TLS" = 1 ] && printf 'smtpd_tls_cert_file = %s\nsmtpd_tls_key_file = %s\n' "$WORK/tls/cert.pem" "$WORK/tls/key.pem")
maillog_file = $WORK/postfix.log
biff = no
EOF
mkdir -p -m 755 "$WORK/postfix-queue" "$WORK/postfix-data"
chown postfix "$WORK/postfix-data"
# No chroot: the stock master.cf chroots smtpd and smtp, which needs /etc files copied in.
postconf -c "$PF_DIR" -F '*/*/chroot = n'
postfix -c "$PF_DIR" check >/dev/null 2>&1 || die "postfix check failed (see $WORK/postfix.log)"
postfix -c "$PF_DIR" start >/dev/null 2>&1 || die "postfix did not start (see $WORK/postfix.log)"
PF_MASTER_PID() { head -1 "$WORK/postfix-queue/pid/master.pid" 2>/dev/null | tr -d ' '; }

DV_PORT=$(free_port)
mkdir -p -m 755 "$WORK/dovecot" "$WORK/dovecot/run" "$WORK/dovecot/state" "$WORK/maildirs"
: >"$WORK/dovecot/users"
for ((i = 0; i < POP3_USERS_MAX; i++)); do echo "user$i:{ARGON2ID}$HASH" >>"$WORK/dovecot/users"; done
cat >"$DV_CONF" <<EOF
# relay's comparison: POP3 on loopback over Maildirs.
protocols = pop3
listen = 127.0.0.1
base_dir = $WORK/dovecot/run
state_dir = $WORK/dovecot/state
log_path = $WORK/dovecot/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
mail_location = maildir:$WORK/maildirs/%u
first_valid_uid = 1
passdb {
  driver = passwd-file
  args = scheme=ARGON2ID $WORK/dovecot/users
}
userdb {
  driver = static
  args = uid=nobody gid=nogroup home=$WORK/maildirs/%u
}
service pop3-login {
  inet_listener pop3 {
    address = 127.0.0.1
    port = $DV_PORT
  }
  inet_listener pop3s {
    port = 0
  }
}
protocol pop3 {
  pop3_uidl_format = %08Xu%08Xv
}
EOF
dovecot -c "$DV_CONF" || die "dovecot did not start (see $WORK/dovecot/dovecot.log)"
DV_MASTER_PID() { cat "$WORK/dovecot/run/master.pid" 2>/dev/null; }
fi

# ---------------------------------------------------------------------------------------------
# 4. The runs

relay_config() { # $1: local domain, $2: users, $3: IMAP port (none when empty)
    printf '[server]\nhostname = "relay.bench.test"\n'
    # Every bench client is 127.0.0.1: the per-address caps would refuse the IDLE
    # sessions (Dovecot's side has no such cap configured).
    if [ -n "${3:-}" ]; then printf 'connections_per_ip_max = %s\n' "$((IMAP_IDLE + 100))"; fi
    printf '[smtp]\nlisten = ["127.0.0.1:0"]\n[pop3]\nlisten = ["127.0.0.1:0"]\n'
    # Logins in flight count against the per-address failure cap (a guessing defence);
    # hundreds of simultaneous logins from one address are the bench, not an attack.
    if [ -n "${3:-}" ]; then
        printf '[imap]\nlisten = ["127.0.0.1:%s"]\nauth_failures_per_ip_max = %s\n' "$3" "$((IMAP_IDLE + 100))"
    fi
    printf '[spool]\ndir = "%s"\nfsync = true\n' "$WORK/relay-spool"
    if [ "$TLS" = 1 ]; then
        printf '[tls]\ncert = "%s"\nkey = "%s"\n' "$WORK/tls/cert.pem" "$WORK/tls/key.pem"
    fi
    printf '[local]\ndomains = ["%s"]\n' "$1"
    printf '[[relay.routes]]\ndomain = "*"\nto = "127.0.0.1:%s"\n' "$SINK_PORT"
    for ((i = 0; i < $2; i++)); do
        printf '[[local.users]]\nname = "user%d"\npassword = "%s"\n' "$i" "$HASH"
    done
}

launch_relay() { # as relay_config; false when relay did not come up
    rm -rf "$WORK/relay-spool"
    relay_config "$@" >"$WORK/relay.toml"
    "$RELAY_BIN" serve --config "$WORK/relay.toml" 2>"$WORK/relay.log" &
    RELAY_PID=$!
    for _ in $(seq 600); do # 30 s: a loaded machine starts slowly
        grep -q 'relay ready' "$WORK/relay.log" && break
        kill -0 "$RELAY_PID" 2>/dev/null || break
        sleep 0.05
    done
    grep -q 'relay ready' "$WORK/relay.log"
}

start_relay() { # $1: local domain for mailboxes
    launch_relay "$1" "$USERS" || die "relay did not start: $(tail -5 "$WORK/relay.log")"
    RELAY_SMTP=$(grep -o 'protocol="smtp" addr=[0-9.:]*' "$WORK/relay.log" | sed 's/.*addr=//')
    RELAY_POP3=$(grep -o 'protocol="pop3" addr=[0-9.:]*' "$WORK/relay.log" | sed 's/.*addr=//')
}
stop_relay() {
    kill "$RELAY_PID" && wait "$RELAY_PID" || true
    RELAY_PID=""
}

ingest() { # $1: HOST:PORT; prints the JSON summary
    "$LOADGEN_BIN" smtp --target "$1" --connections "$CONNECTIONS" --size "$SIZE" \
        --duration "$DURATION" --pipelining --json 2>/dev/null
}

# End to end: waits until the sink's total reaches $1 (at most 120 s).
wait_sink() {
    for _ in $(seq 1200); do
        [ "$(sink_total)" -ge "$1" ] && break
        sleep 0.1
    done
}

run_relay_ingest() {
    start_relay localhost
    local json pss before t0 accepted target done_at delivered e2e lat
    before=$(sink_total)
    before=${before:-0}
    t0=$(date +%s.%N)
    json=$(ingest "$RELAY_SMTP")
    pss=$(pss_tree "$RELAY_PID")
    accepted=$(echo "$json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["messages"]["accepted"])')
    target=$((before + accepted))
    wait_sink "$target"
    done_at=$(date +%s.%N)
    delivered=$(($(sink_total) - before))
    e2e=$(python3 -c "print($delivered / ($done_at - $t0))")
    stop_relay
    # Delivery latency per message: its `accepted` line (250 sent) → its `status="sent"` line.
    lat=$(python3 "$REPO/benches/compare/delivery_latency.py" "$WORK/relay.log")
    record relay-ingest "$1" "$json" "pss_mib=${pss% *}" "processes=${pss#* }" \
        "e2e_msgs_per_s=$e2e" "delivered=$delivered" $lat
    log "round $1 relay ingest: $(echo "$json" | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["msgs_per_s"]), "msgs/s")'), end to end $(printf %.0f "$e2e") msgs/s, $lat"
}

run_postfix_ingest() {
    local before json pss t0 accepted done_at target
    before=$(sink_total)
    before=${before:-0}
    t0=$(date +%s.%N)
    json=$(ingest "127.0.0.1:$PF_PORT")
    pss=$(pss_tree "$(PF_MASTER_PID)")
    accepted=$(echo "$json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["messages"]["accepted"])')
    target=$((before + accepted))
    wait_sink "$target"
    done_at=$(date +%s.%N)
    local delivered=$(($(sink_total) - before))
    local e2e
    e2e=$(python3 -c "print($delivered / ($done_at - $t0))")
    record postfix-ingest "$1" "$json" "pss_mib=${pss% *}" "processes=${pss#* }" \
        "e2e_msgs_per_s=$e2e" "delivered=$delivered"
    log "round $1 postfix ingest: $(echo "$json" | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["msgs_per_s"]), "msgs/s")'), end to end $(printf %.0f "$e2e") msgs/s"
}

run_sink_ingest() {
    local json
    json=$(ingest "127.0.0.1:$SINK_PORT")
    record sink-ingest "$1" "$json"
}

# What the disk allows: $1 run name, $2 writers, $3 records per fdatasync, $4 round.
run_disk() {
    local json
    json=$("$LOADGEN_BIN" disk --dir "$WORK" --size "$SIZE" --writers "$2" --batch "$3" \
        --duration "$DISK_DURATION" --json "${@:5}" 2>/dev/null) || die "loadgen disk failed"
    record "$1" "$4" "$json" "msgs_per_s=$(jget "$json" records_per_s)"
    log "round $4 disk, $2 writer(s), $3 per fdatasync: $(printf %.0f "$(jget "$json" records_per_s)") records/s, write+fdatasync p50 $(jget "$json" batch_latency/p50_ms) ms"
}

disk_round() { # $1: round
    local c w
    run_disk disk-sync 1 1 "$1"
    run_disk disk-sync-prezeroed 1 1 "$1" --prezeroed
    run_disk disk-ceiling "$CORES" "$DISK_CEILING_BATCH" "$1"
    for c in $SWEEP; do
        w=$((c < CORES ? c : CORES))
        run_disk "disk-c$c" "$w" $(((c + w - 1) / w)) "$1"
    done
}

# Ingest at one concurrency: $1 relay|postfix, $2 connections, $3 plain|pipelined, $4 round.
# The relay is started once per server and sweep (run_sweep); Postfix runs throughout.
run_sweep_point() {
    local server=$1 c=$2 mode=$3 round=$4 target json
    local args=()
    [ "$mode" = pipelined ] && args=(--pipelining)
    if [ "$server" = relay ]; then target=$RELAY_SMTP; else target=127.0.0.1:$PF_PORT; fi
    json=$("$LOADGEN_BIN" smtp --target "$target" --connections "$c" --size "$SIZE" \
        --duration "$SWEEP_DURATION" --json "${args[@]}" 2>/dev/null)
    record "$server-sweep-c$c-$mode" "$round" "$json"
    log "round $round $server ingest at $c connections, $mode: $(printf %.0f "$(jget "$json" msgs_per_s)") msgs/s, transaction p50 $(jget "$json" latency_ms/transaction/p50_ms) ms"
}

sweep_round() { # $1: round; the servers alternate first
    local order c mode server
    if (($1 % 2 == 1)); then order="relay postfix"; else order="postfix relay"; fi
    for server in $order; do
        [ "$server" = relay ] && start_relay localhost
        for c in $SWEEP; do
            for mode in $SWEEP_MODES; do run_sweep_point "$server" "$c" "$mode" "$1"; done
        done
        [ "$server" = relay ] && stop_relay
    done
    return 0
}

# SMTP ingest over STARTTLS: $1 relay|postfix, $2 round, $3 long|single (one message per
# connection). Recorded as "<server>-tls-<shape>"; end to end is not waited for.
run_tls_ingest() {
    local server=$1 round=$2 shape=$3 target json
    local extra=(--starttls)
    [ "$shape" = single ] && extra+=(--messages-per-connection 1)
    if [ "$server" = relay ]; then
        start_relay localhost
        target=$RELAY_SMTP
    else
        target=127.0.0.1:$PF_PORT
    fi
    json=$("$LOADGEN_BIN" smtp --target "$target" --connections "$CONNECTIONS" --size "$SIZE" \
        --duration "$DURATION" --pipelining --json "${extra[@]}" 2>/dev/null)
    [ "$server" = relay ] && stop_relay
    record "$server-tls-$shape" "$round" "$json"
    log "round $round $server STARTTLS ingest ($shape): $(printf %.0f "$(jget "$json" msgs_per_s)") msgs/s, $(jget "$json" tls_sessions) TLS sessions, $(jget "$json" tls_resumed) resumed"
}

tls_round() { # $1: round; the servers alternate first
    local shape first second
    if (($1 % 2 == 1)); then first=relay second=postfix; else first=postfix second=relay; fi
    for shape in long single; do
        run_tls_ingest "$first" "$1" "$shape"
        run_tls_ingest "$second" "$1" "$shape"
    done
}

# One POP3 run: $1 relay|dovecot, $2 workload NAME:MAILBOXES:MESSAGES:SIZE, $3 plain|pipelined,
# $4 round. Recorded as "<server>-pop3-<name>-<mode>".
run_pop3() {
    local server=$1 workload=$2 mode=$3 round=$4 name users per size target pss json
    IFS=: read -r name users per size <<<"$workload"
    if [ "$server" = relay ]; then
        launch_relay bench.test "$users" || die "relay did not start: $(tail -5 "$WORK/relay.log")"
        RELAY_SMTP=$(grep -o 'protocol="smtp" addr=[0-9.:]*' "$WORK/relay.log" | sed 's/.*addr=//')
        target=$(grep -o 'protocol="pop3" addr=[0-9.:]*' "$WORK/relay.log" | sed 's/.*addr=//')
        # Fill the mailboxes through SMTP (recipients drawn at random from user0..).
        local filled
        filled=$("$LOADGEN_BIN" smtp --target "$RELAY_SMTP" --connections 8 --size "$size" \
            --messages $((users * per)) --to-domain bench.test --users "$users" \
            --pipelining --json --max-time 1h 2>/dev/null |
            python3 -c 'import json,sys; print(json.load(sys.stdin)["messages"]["accepted"])')
        [ "$filled" -eq $((users * per)) ] || die "relay accepted only $filled messages for the mailboxes"
    elif [ "$server" = maildrop ]; then
        start_maildrop pop3 "$per" "$size"
        target=$MAILDROP_ADDR
    else
        fill_maildirs "$users" "$per" "$size"
        target=127.0.0.1:$DV_PORT
    fi
    local args=()
    if [ "$mode" = pipelined ]; then args=(--pipelining --window "$POP3_WINDOW"); fi
    json=$("$LOADGEN_BIN" pop3 --target "$target" --connections "$POP3_CONNECTIONS" \
        --user-pattern 'user{n}:password' --user-count "$users" --json --max-time 1h \
        "${args[@]}" 2>>"$WORK/pop3-loadgen.log")
    if [ "$server" = relay ]; then
        pss=$(pss_tree "$RELAY_PID")
        stop_relay
    elif [ "$server" = maildrop ]; then
        pss=$(pss_tree "$MAILDROP_PID")
        stop_maildrop
    else
        pss=$(pss_tree "$(DV_MASTER_PID)")
    fi
    [ "$(jget "$json" messages/retrieved)" -eq $((users * per)) ] ||
        log "pop3: $server retrieved $(jget "$json" messages/retrieved) of $((users * per)) ($name, $mode)"
    record "$server-pop3-$name-$mode" "$round" "$json" "pss_mib=${pss% *}"
    log "round $round $server pop3 $name $mode: $(printf %.0f "$(jget "$json" msgs_per_s)") msgs/s, $(printf %.0f "$(jget "$json" msgs_per_s_retrieval)") without the logins, RETR p50/p99/p99.9 $(jget "$json" latency_ms/retr/p50_ms)/$(jget "$json" latency_ms/retr/p99_ms)/$(jget "$json" latency_ms/retr/p99_9_ms) ms"
}

# Starts `loadgen maildrop` ($1: pop3|imap, $2: messages per mailbox, $3: size) on a free
# loopback port; MAILDROP_ADDR is its HOST:PORT once it listens.
start_maildrop() {
    local port
    port=$(free_port)
    "$LOADGEN_BIN" maildrop --listen "127.0.0.1:$port" --protocol "$1" --messages "$2" \
        --size "$3" --max-time 2h >/dev/null 2>"$WORK/maildrop.log" &
    MAILDROP_PID=$!
    for _ in $(seq 600); do
        grep -q 'listening' "$WORK/maildrop.log" && break
        kill -0 "$MAILDROP_PID" 2>/dev/null || break
        sleep 0.05
    done
    grep -q 'listening' "$WORK/maildrop.log" || die "loadgen maildrop did not start: $(cat "$WORK/maildrop.log")"
    MAILDROP_ADDR=127.0.0.1:$port
}
stop_maildrop() {
    kill "$MAILDROP_PID" && wait "$MAILDROP_PID" || true
    MAILDROP_PID=""
}

fill_maildirs() { # $1: mailboxes, $2: messages each, $3: size
    rm -rf "$WORK/maildirs"
    python3 - "$WORK/maildirs" "$1" "$2" "$3" <<'EOF'
import os, sys, random
root, users, per_user, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
units = {"KiB": 1024, "MiB": 1 << 20, "kB": 1000, "KB": 1000, "MB": 10**6, "B": 1}
num = int("".join(c for c in size if c.isdigit()))
unit = size[len(str(num)):] or "B"
size = num * units[unit]
words = "relay spool message queue delivery server client mailbox segment commit".split()
rng = random.Random(1)
for u in range(users):
    box = os.path.join(root, f"user{u}")
    for d in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(box, d), exist_ok=True)
    for m in range(per_user):
        head = (f"From: <loadgen@loadgen.test>\r\nTo: <user{u}@bench.test>\r\n"
                f"Subject: message {m}\r\nMessage-ID: <{u}.{m}@loadgen.test>\r\n\r\n")
        body, n = [], len(head)
        while n < size:
            line = " ".join(rng.choice(words) for _ in range(9))[:72] + "\r\n"
            body.append(line)
            n += len(line)
        with open(os.path.join(box, "new", f"{1700000000 + m}.M{m}P{u}.bench"), "w", newline="") as f:
            f.write(head + "".join(body))
EOF
    chown -R nobody:nogroup "$WORK/maildirs"
}

# Every POP3 workload and mode, relay and Dovecot alternating which goes first.
pop3_round() { # $1: round
    local workload mode
    for workload in $POP3_WORKLOADS; do
        for mode in $POP3_MODES; do
            if (($1 % 2 == 1)); then
                run_pop3 relay "$workload" "$mode" "$1"
                run_pop3 dovecot "$workload" "$mode" "$1"
            else
                run_pop3 dovecot "$workload" "$mode" "$1"
                run_pop3 relay "$workload" "$mode" "$1"
            fi
            if [ "$MAILDROP" = 1 ]; then run_pop3 maildrop "$workload" "$mode" "$1"; fi
        done
    done
}

# ---------------------------------------------------------------------------------------------
# 4b. IMAP: relay and a second Dovecot, filled and loaded by loadgen imap

jget() { # $1: JSON text, $2: a/b/c; prints the value
    python3 - "$1" "$2" <<'EOF'
import json, sys
v = json.loads(sys.argv[1])
for k in sys.argv[2].split("/"):
    v = v[k]
print(v)
EOF
}

imap_greets() { # $1: port; true when an IMAP server greets there within 5 s
    python3 - "$1" <<'EOF'
import socket, sys
try:
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
    ok = s.recv(4) == b"* OK"
    s.sendall(b"x LOGOUT\r\n")
except OSError:
    ok = False
sys.exit(0 if ok else 1)
EOF
}

# Lowers IMAP_IDLE to what this machine allows: loadgen (and relay) hold a descriptor per
# session, Dovecot a process per session. Raises the soft open-file limit to the hard one
# first (the servers started after this inherit it).
imap_idle_limit() {
    local hard soft room procs
    hard=$(ulimit -Hn)
    if [ "$hard" != unlimited ]; then ulimit -n "$hard" 2>/dev/null || true; fi
    soft=$(ulimit -n)
    if [ "$soft" != unlimited ]; then
        room=$((soft - 256))
        if ((IMAP_IDLE > room)); then
            log "imap: IMAP_IDLE=$IMAP_IDLE does not fit the open-file limit (ulimit -n $soft, hard $hard): holding $room sessions"
            IMAP_IDLE=$room
        fi
    fi
    procs=$(($(cat /proc/sys/kernel/pid_max) - $(find /proc -maxdepth 1 -name '[0-9]*' | wc -l) - 1000))
    if ((IMAP_IDLE > procs)); then
        log "imap: IMAP_IDLE=$IMAP_IDLE leaves too few process ids for Dovecot's process per session (kernel.pid_max): holding $procs sessions"
        IMAP_IDLE=$procs
    fi
    ((IMAP_IDLE >= 1)) || die "imap: no room for sessions in IDLE"
    # Each of Dovecot's imap processes in IDLE watches its Maildir with an inotify instance,
    # all as user nobody; past the limit it falls back to polling and logs a warning. The
    # limit is raised for the run and restored on exit.
    local inotify=/proc/sys/fs/inotify/max_user_instances want=$((IMAP_IDLE + 256))
    if [ -r "$inotify" ] && (($(cat "$inotify") < want)); then
        INOTIFY_WAS=$(cat "$inotify")
        if echo "$want" >"$inotify" 2>/dev/null; then
            log "imap: fs.inotify.max_user_instances $INOTIFY_WAS → $want for the run"
        else
            log "imap: cannot raise fs.inotify.max_user_instances ($INOTIFY_WAS): Dovecot's IDLE sessions past it poll instead"
            INOTIFY_WAS=""
        fi
    fi
    log "imap: $IMAP_IDLE sessions in IDLE (ulimit -n $soft)"
}

DVI_PORT=""
start_dovecot_imap() {
    local d=$WORK/dovecot-imap limit=$((IMAP_IDLE + 100))
    DVI_PORT=$(free_port)
    mkdir -p -m 755 "$d" "$d/run" "$d/state" "$WORK/imap-maildirs"
    chown nobody:nogroup "$WORK/imap-maildirs"
    : >"$d/users"
    for ((i = 0; i < IMAP_USERS; i++)); do echo "user$i:{ARGON2ID}$HASH" >>"$d/users"; done
    cat >"$DVI_CONF" <<EOF
# relay's comparison: IMAP on loopback over Maildirs, with room for $IMAP_IDLE sessions.
protocols = imap
listen = 127.0.0.1
instance_name = relay-compare-imap
base_dir = $d/run
state_dir = $d/state
log_path = $d/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:$WORK/imap-maildirs/%u
first_valid_uid = 1
default_client_limit = $((2 * limit))
passdb {
  driver = passwd-file
  args = scheme=ARGON2ID $d/users
}
userdb {
  driver = static
  args = uid=nobody gid=nogroup home=$WORK/imap-maildirs/%u
}
service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = $DVI_PORT
  }
  inet_listener imaps {
    port = 0
  }
}
service imap {
  process_limit = $limit
}
protocol imap {
  mail_max_userip_connections = $limit
}
EOF
    dovecot -c "$DVI_CONF" || die "dovecot (IMAP) did not start (see $d/dovecot.log)"
    for _ in $(seq 100); do
        imap_greets "$DVI_PORT" && return 0
        sleep 0.1
    done
    die "dovecot (IMAP) does not greet on 127.0.0.1:$DVI_PORT (see $d/dovecot.log)"
}
DVI_MASTER_PID() { cat "$WORK/dovecot-imap/run/master.pid" 2>/dev/null; }

RELAY_IMAP=""
start_relay_imap() { # false (after saying why) when relay has no IMAP server to measure
    if [ "$RELAY_BIN" = none ]; then
        log "imap: RELAY_BIN=none: relay's IMAP side skipped"
        return 1
    fi
    local port
    port=$(free_port)
    if ! launch_relay bench.test "$IMAP_USERS" "$port"; then
        log "imap: relay did not start with [imap] listen = [\"127.0.0.1:$port\"]; relay's IMAP side skipped: $(tail -3 "$WORK/relay.log")"
        stop_relay
        return 1
    fi
    if ! imap_greets "$port"; then
        log "imap: relay does not answer IMAP on 127.0.0.1:$port; relay's IMAP side skipped"
        stop_relay
        return 1
    fi
    RELAY_IMAP=127.0.0.1:$port
}

imap_load() { # $1: HOST:PORT, then loadgen imap options; prints the JSON summary
    local target=$1
    shift
    "$LOADGEN_BIN" imap --target "$target" --user-pattern 'user{n}:password' \
        --user-count "$IMAP_USERS" --json --max-time 1h "$@" 2>>"$WORK/imap-loadgen.log"
}

imap_prefill() { # $1: relay|dovecot, $2: HOST:PORT
    local json want=$((IMAP_USERS * IMAP_MESSAGES))
    json=$(imap_load "$2" --workload append --count "$IMAP_MESSAGES" --size "$IMAP_SIZE" \
        --connections "$IMAP_CONNECTIONS")
    record "$1-imap-append" 1 "$json"
    [ "$(jget "$json" appended/messages)" -eq "$want" ] ||
        die "imap: $1 took $(jget "$json" appended/messages) of $want APPENDs (see $WORK/imap-loadgen.log)"
    # What every whole-mailbox body fetch must send back, literal bytes exactly.
    printf -v "IMAP_APPENDED_$1" %s "$(jget "$json" appended/bytes)"
    log "$1 imap: appended $want messages at $(printf %.0f "$(jget "$json" msgs_per_s)") msgs/s"
}

# Holds $2 sessions of loadgen's idle workload against $1 and prints the server's memory
# ("PSS_KIB RSS_KIB PROCESSES" of the trees $4…) and the sessions idling once all are in IDLE.
# $3 names the run's files.
idle_hold() {
    local target=$1 sessions=$2 tag=$3 mem idling
    shift 3
    "$LOADGEN_BIN" imap --target "$target" --user-pattern 'user{n}:password' \
        --user-count "$IMAP_USERS" --workload idle --connections "$sessions" --duration 5s \
        --json --max-time 1h >"$WORK/idle-$tag.json" 2>"$WORK/idle-$tag.log" &
    IDLE_PID=$!
    while kill -0 "$IDLE_PID" 2>/dev/null && ! grep -q 'sessions idling' "$WORK/idle-$tag.log"; do
        sleep 0.2
    done
    sleep 1
    mem=$(mem_tree "$@")
    wait "$IDLE_PID" || true
    IDLE_PID=""
    idling=$(grep -o '[0-9]* sessions idling' "$WORK/idle-$tag.log" | cut -d' ' -f1)
    echo "$mem ${idling:-0}"
}

# Memory per session in IDLE as a slope: the server's memory while a quarter of
# $IMAP_IDLE sessions idle and while all of them do, the difference divided by the
# difference in sessions. A plain before/after difference is dominated by what the
# allocator gives back of earlier work meanwhile (it purges lazily: the relay's figure came
# out negative), and that cancels out of the slope.
imap_idle() { # $1: relay|dovecot, $2: HOST:PORT, $3: round, $4…: the server's root pids
    local name=$1 target=$2 round=$3 few many sessions
    shift 3
    few=$(idle_hold "$target" $(((IMAP_IDLE + 3) / 4)) few "$@")
    many=$(idle_hold "$target" "$IMAP_IDLE" many "$@")
    set -- $few $many
    sessions=$(($8 - $4))
    ((sessions > 0)) || die "imap: the $name IDLE runs held $4 and $8 sessions: $(tail -3 "$WORK/idle-many.log")"
    record "$name-imap-idle" "$round" "$(cat "$WORK/idle-many.json")" "idle_sessions=$8" \
        "pss_kib_per_session=$((($5 - $1) / sessions))" "rss_kib_per_session=$((($6 - $2) / sessions))" \
        "processes_few=$3" "processes_many=$7"
    log "round $round $name imap idle: $4 → $8 sessions, PSS +$((($5 - $1) / sessions)) KiB and RSS +$((($6 - $2) / sessions)) KiB per session ($3 → $7 processes)"
}

# Checks the body fetches: every message $IMAP_PASSES times, the literal bytes those appended
# (the maildrop's messages are its own).
imap_bodies_check() { # $1: relay|dovecot|maildrop, $2: what, $3: the JSON summary
    local appended=IMAP_APPENDED_$1 want=$((IMAP_USERS * IMAP_MESSAGES * IMAP_PASSES))
    [ "$(jget "$3" fetched/bodies)" -eq "$want" ] ||
        log "imap: $1 $2 returned $(jget "$3" fetched/bodies) bodies of $want"
    [ "$1" = maildrop ] || [ "$(jget "$3" fetched/body_bytes)" -eq $((${!appended} * IMAP_PASSES)) ] ||
        log "imap: $1 $2 returned $(jget "$3" fetched/body_bytes) literal bytes, $((${!appended} * IMAP_PASSES)) appended"
}

imap_round() { # $1: relay|dovecot|maildrop, $2: HOST:PORT, $3: round, $4…: the server's root pids
    local name=$1 target=$2 round=$3 json fetch_only=$IMAP_FETCH_ONLY
    shift 3
    # The maildrop serves body fetches only.
    [ "$name" != maildrop ] || fetch_only=1
    if [ "$fetch_only" != 1 ]; then
    json=$(imap_load "$target" --workload select --count 3 --connections "$IMAP_CONNECTIONS")
    record "$name-imap-select" "$round" "$json"
    json=$(imap_load "$target" --workload fetch-flags --count 1 --connections "$IMAP_CONNECTIONS")
    record "$name-imap-fetch-flags" "$round" "$json"
    fi
    json=$(imap_load "$target" --workload fetch-bodies --count $((IMAP_MESSAGES * IMAP_PASSES)) \
        --connections "$IMAP_CONNECTIONS")
    record "$name-imap-fetch-bodies" "$round" "$json"
    imap_bodies_check "$name" "UID FETCH n" "$json"
    log "round $round $name imap: body FETCH, one per round trip, $(printf %.0f "$(jget "$json" msgs_per_s_ops_window)") msgs/s ($(printf %.0f "$(jget "$json" msgs_per_s)") with the logins)"
    json=$(imap_load "$target" --workload fetch-bodies --count $((IMAP_MESSAGES * IMAP_PASSES)) \
        --connections "$IMAP_CONNECTIONS" --pipelining "$IMAP_PIPELINING")
    record "$name-imap-fetch-pipelined" "$round" "$json"
    imap_bodies_check "$name" "pipelined UID FETCH n" "$json"
    log "round $round $name imap: body FETCH, $IMAP_PIPELINING in flight, $(printf %.0f "$(jget "$json" msgs_per_s_ops_window)") msgs/s"
    json=$(imap_load "$target" --workload fetch-range --range "$IMAP_RANGE" \
        --count $(((IMAP_MESSAGES + IMAP_RANGE - 1) / IMAP_RANGE * IMAP_PASSES)) \
        --connections "$IMAP_CONNECTIONS" --pipelining "$IMAP_RANGE_DEPTH")
    record "$name-imap-fetch-range" "$round" "$json"
    imap_bodies_check "$name" "UID FETCH lo:hi" "$json"
    log "round $round $name imap: body FETCH, $IMAP_RANGE per UID FETCH lo:hi, $(printf %.0f "$(jget "$json" msgs_per_s_ops_window)") msgs/s, $(printf %.1f "$(jget "$json" mib_per_s)") MiB/s"
    [ "$fetch_only" != 1 ] || return 0
    json=$(imap_load "$target" --workload search-text --count 3 --connections "$IMAP_CONNECTIONS")
    record "$name-imap-search" "$round" "$json"
    imap_idle "$name" "$target" "$round" "$@"
}

log "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
if [ "$IMAP_ONLY" != 1 ]; then
for ((round = 1; round <= ROUNDS; round++)); do
    if [ "$POP3_ONLY" != 1 ] && [ "$TLS_ONLY" != 1 ]; then
        if ((round % 2 == 1)); then
            run_relay_ingest "$round"
            run_postfix_ingest "$round"
        else
            run_postfix_ingest "$round"
            run_relay_ingest "$round"
        fi
    fi
    if [ "$DISK" = 1 ]; then disk_round "$round"; fi
    if [ -n "$SWEEP" ]; then sweep_round "$round"; fi
    if [ "$TLS" = 1 ] && [ "$POP3_ONLY" != 1 ]; then tls_round "$round"; fi
    if [ "$TLS_ONLY" != 1 ] && [ "$INGEST_ONLY" != 1 ]; then pop3_round "$round"; fi
done
if [ "$POP3_ONLY" != 1 ] && [ "$TLS_ONLY" != 1 ]; then run_sink_ingest 1; fi
fi

if [ "$IMAP" = 1 ]; then
    imap_idle_limit
    start_dovecot_imap
    relay_imap=0
    start_relay_imap && relay_imap=1
    if [ "$relay_imap" = 1 ]; then imap_prefill relay "$RELAY_IMAP"; fi
    imap_prefill dovecot "127.0.0.1:$DVI_PORT"
    if [ "$MAILDROP" = 1 ]; then start_maildrop imap "$IMAP_MESSAGES" "$IMAP_SIZE"; fi
    for ((round = 1; round <= ROUNDS; round++)); do
        if ((round % 2 == 1)) && [ "$relay_imap" = 1 ]; then
            imap_round relay "$RELAY_IMAP" "$round" "$RELAY_PID"
        fi
        imap_round dovecot "127.0.0.1:$DVI_PORT" "$round" "$(DVI_MASTER_PID)"
        if ((round % 2 == 0)) && [ "$relay_imap" = 1 ]; then
            imap_round relay "$RELAY_IMAP" "$round" "$RELAY_PID"
        fi
        if [ "$MAILDROP" = 1 ]; then imap_round maildrop "$MAILDROP_ADDR" "$round"; fi
    done
    if [ "$relay_imap" = 1 ]; then stop_relay; fi
    if [ "$MAILDROP" = 1 ]; then stop_maildrop; fi
fi
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------------------------------------
# 5. The table

python3 - "$RESULTS" "$ROUNDS" "$DURATION" "$CONNECTIONS" "$SIZE" "$USERS" "$PER_USER" \
    "$POP3_CONNECTIONS" "$LOAD_AFTER" "$(postconf -d -h mail_version 2>/dev/null || echo '?')" \
    "$(dovecot --version 2>/dev/null | cut -d' ' -f1)" "$IMAP_USERS" "$IMAP_MESSAGES" \
    "$IMAP_SIZE" "$IMAP_CONNECTIONS" "$POP3_WORKLOADS" "$POP3_MODES" "$POP3_WINDOW" \
    "$SWEEP" "$SWEEP_MODES" "$SWEEP_DURATION" "$CORES" <<'EOF'
import json, statistics, sys
(path, rounds, duration, conns, size, users, per_user, pconns, load, pf_ver, dv_ver,
 iusers, imsgs, isize, iconns, pop3_workloads, pop3_modes, pop3_window,
 sweep, sweep_modes, sweep_duration, cores) = sys.argv[1:]
runs = [json.loads(l) for l in open(path)]
def med(name, key):
    vals = []
    for r in runs:
        if r["run"] == name:
            v = r
            for k in key.split("/"):
                v = v[k]
            vals.append(v)
    return statistics.median(vals) if vals else None
def f(v, digits=0):
    return "–" if v is None else f"{v:,.{digits}f}"
def ratio(a, b):
    return "–" if not a or not b else f"**{a / b:.1f}×**"
rows = []
ri, pi = med("relay-ingest", "msgs_per_s"), med("postfix-ingest", "msgs_per_s")
rows.append((f"SMTP ingest, {size}, {conns} conns, {duration} (msgs/s)", f(ri), f(pi), ratio(ri, pi)))
re_, pe = med("relay-ingest", "e2e_msgs_per_s"), med("postfix-ingest", "e2e_msgs_per_s")
rows.append(("end to end → sink (msgs/s)", f(re_), f(pe), ratio(re_, pe)))
for q in ("p50", "p99"):
    rows.append((f"relay delivery latency {q}, 250 after DATA → next hop's 250 (ms)", f(med("relay-ingest", f"delivery_{q}_ms"), 1), "", ""))
for q in ("p50_ms", "p99_ms"):
    a, b = med("relay-ingest", f"latency_ms/transaction/{q}"), med("postfix-ingest", f"latency_ms/transaction/{q}")
    rows.append((f"SMTP transaction {q[:3]} (ms)", f(a, 2), f(b, 2), ratio(b, a) + " lower" if a and b else "–"))
a, b = med("relay-ingest", "pss_mib"), med("postfix-ingest", "pss_mib")
if a is not None or b is not None:
    rows.append(("memory after ingest, PSS (MiB; processes)", f"{f(a, 1)} (1)", f"{f(b, 1)} ({f(med('postfix-ingest', 'processes'))})", "–"))
for shape, what in (("long", "long sessions"), ("single", "one message per connection")):
    a, b = med(f"relay-tls-{shape}", "msgs_per_s"), med(f"postfix-tls-{shape}", "msgs_per_s")
    if a is None and b is None:
        continue
    rows.append((f"SMTP ingest over STARTTLS, {what}, {size}, {conns} conns (msgs/s)", f(a), f(b), ratio(a, b)))
    a, b = med(f"relay-tls-{shape}", "tls_resumed"), med(f"postfix-tls-{shape}", "tls_resumed")
    sa, sb = med(f"relay-tls-{shape}", "tls_sessions"), med(f"postfix-tls-{shape}", "tls_sessions")
    rows.append(("  TLS sessions, of which resumed", f"{f(sa)}, {f(a)}", f"{f(sb)}, {f(b)}", "–"))
    for q in ("p50_ms", "p99_ms"):
        a, b = med(f"relay-tls-{shape}", f"latency_ms/transaction/{q}"), med(f"postfix-tls-{shape}", f"latency_ms/transaction/{q}")
        rows.append((f"  SMTP transaction {q[:3]} (ms)", f(a, 2), f(b, 2), ratio(b, a) + " lower" if a and b else "–"))
for workload in pop3_workloads.split():
    wname, wusers, wper, wsize = workload.split(":")
    for mode in pop3_modes.split():
        r, d = f"relay-pop3-{wname}-{mode}", f"dovecot-pop3-{wname}-{mode}"
        how = f"window {pop3_window}" if mode == "pipelined" else "one command at a time"
        label = f"POP3 {wname}: RETR+DELE, {wusers}×{wper} × {wsize}, {pconns} clients, {how}"
        a, b = med(r, "msgs_per_s"), med(d, "msgs_per_s")
        rows.append((f"{label} (msgs/s)", f(a), f(b), ratio(a, b)))
        a, b = med(r, "msgs_per_s_retrieval"), med(d, "msgs_per_s_retrieval")
        rows.append(("  the same without the logins (msgs/s)", f(a), f(b), ratio(a, b)))
        c = med(f"maildrop-pop3-{wname}-{mode}", "msgs_per_s_retrieval")
        rows.append(("  client ceiling without the logins: loadgen maildrop, from memory (msgs/s; ratio: the most any server could show)", f(c), f(b), ratio(c, b)))
        a, b = med(r, "mb_per_s_retrieval"), med(d, "mb_per_s_retrieval")
        rows.append(("  the same without the logins (MB/s)", f(a, 1), f(b, 1), ratio(a, b)))
        for q in ("p50_ms", "p99_ms", "p99_9_ms"):
            a, b = med(r, f"latency_ms/retr/{q}"), med(d, f"latency_ms/retr/{q}")
            rows.append((f"  RETR {q[:-3].replace('_', '.')} (ms)", f(a, 2), f(b, 2), ratio(b, a) + " lower" if a and b else "–"))
        a, b = med(r, "latency_ms/login/p50_ms"), med(d, "latency_ms/login/p50_ms")
        rows.append(("  connect→logged in p50 (ms, argon2id m=19 MiB t=2)", f(a, 1), f(b, 1), "–"))
        a, b = med(r, "login_s"), med(d, "login_s")
        rows.append(("  time logging in / retrieving per connection (s)", f"{f(a, 2)} / {f(med(r, 'retrieval_s'), 2)}", f"{f(b, 2)} / {f(med(d, 'retrieval_s'), 2)}", "–"))
def lower(a, b):
    return ratio(b, a) + " lower" if a and b else "–"
a, b = med("relay-imap-append", "msgs_per_s"), med("dovecot-imap-append", "msgs_per_s")
rows.append((f"IMAP APPEND (prefill), {iusers}×{imsgs} × {isize}, {iconns} conns (msgs/s)", f(a), f(b), ratio(a, b)))
for run, key, label in [
    ("select", "latency_ms/select/p50_ms", f"IMAP SELECT of a {imsgs}-message mailbox, p50 (ms)"),
    ("fetch-flags", "latency_ms/fetch_flags/p50_ms", "IMAP FETCH 1:* (FLAGS ENVELOPE), whole mailbox, p50 (ms)"),
    ("search", "latency_ms/search/p50_ms", "IMAP SEARCH TEXT, whole mailbox, p50 (ms)"),
]:
    a, b = med(f"relay-imap-{run}", key), med(f"dovecot-imap-{run}", key)
    rows.append((label, f(a, 1), f(b, 1), lower(a, b)))
a, b = med("relay-imap-fetch-bodies", "msgs_per_s_ops_window"), med("dovecot-imap-fetch-bodies", "msgs_per_s_ops_window")
rows.append((f"IMAP UID FETCH BODY.PEEK[], every message, {iconns} conns, logins left out (msgs/s)", f(a), f(b), ratio(a, b)))
def ceiling_row(run):
    c, b = med(f"maildrop-imap-{run}", "msgs_per_s_ops_window"), med(f"dovecot-imap-{run}", "msgs_per_s_ops_window")
    rows.append(("  client ceiling: loadgen maildrop, from memory (msgs/s; ratio: the most any server could show)", f(c), f(b), ratio(c, b)))
ceiling_row("fetch-bodies")
a, b = med("relay-imap-fetch-bodies", "msgs_per_s"), med("dovecot-imap-fetch-bodies", "msgs_per_s")
rows.append((f"the same over the whole run, {iconns} argon2id logins included (msgs/s)", f(a), f(b), ratio(a, b)))
a, b = med("relay-imap-fetch-bodies", "mib_per_s"), med("dovecot-imap-fetch-bodies", "mib_per_s")
rows.append(("IMAP body FETCH (MiB/s)", f(a, 1), f(b, 1), ratio(a, b)))
a, b = med("relay-imap-fetch-bodies", "latency_ms/fetch_body/p50_ms"), med("dovecot-imap-fetch-bodies", "latency_ms/fetch_body/p50_ms")
rows.append(("IMAP body FETCH p50 (ms)", f(a, 2), f(b, 2), lower(a, b)))
a, b = med("relay-imap-fetch-pipelined", "msgs_per_s_ops_window"), med("dovecot-imap-fetch-pipelined", "msgs_per_s_ops_window")
pl = med("relay-imap-fetch-pipelined", "pipelining") or med("dovecot-imap-fetch-pipelined", "pipelining")
rows.append((f"IMAP UID FETCH n BODY.PEEK[], {f(pl)} in flight per conn, logins left out (msgs/s)", f(a), f(b), ratio(a, b)))
ceiling_row("fetch-pipelined")
a, b = med("relay-imap-fetch-range", "msgs_per_s_ops_window"), med("dovecot-imap-fetch-range", "msgs_per_s_ops_window")
rg = med("relay-imap-fetch-range", "range") or med("dovecot-imap-fetch-range", "range")
rd = med("relay-imap-fetch-range", "pipelining") or med("dovecot-imap-fetch-range", "pipelining")
rows.append((f"IMAP UID FETCH lo:hi BODY.PEEK[], {f(rg)} per command, {f(rd)} in flight, logins left out (msgs/s)", f(a), f(b), ratio(a, b)))
ceiling_row("fetch-range")
a, b = med("relay-imap-fetch-range", "mib_per_s"), med("dovecot-imap-fetch-range", "mib_per_s")
rows.append(("the same (MiB/s of literals, logins included)", f(a, 1), f(b, 1), ratio(a, b)))
a, b = med("relay-imap-fetch-range", "fetched/body_bytes"), med("dovecot-imap-fetch-range", "fetched/body_bytes")
rows.append(("literal bytes of the range fetches (each = what that server was appended × passes)", f(a), f(b), "–"))
sessions = med("dovecot-imap-idle", "idle_sessions") or med("relay-imap-idle", "idle_sessions")
for key, what in (("pss_kib_per_session", "PSS"), ("rss_kib_per_session", "RSS")):
    a, b = med("relay-imap-idle", key), med("dovecot-imap-idle", key)
    rows.append((f"IMAP memory per session in IDLE, {f(sessions)} sessions, {what} (KiB)", f(a), f(b), lower(a, b)))
si = med("sink-ingest", "msgs_per_s")
rows.append(("reference: loadgen → loadgen sink, same SMTP load (msgs/s)", f(si), "", ""))
ceiling, sync = med("disk-ceiling", "records_per_s"), med("disk-sync", "batch_latency/p50_ms")
if ceiling:
    batch = med("disk-ceiling", "batch")
    rows.append((f"disk: raw group-commit ceiling, {cores} writers × {f(batch)} records of {size} per fdatasync (records/s)", f(ceiling), "", ""))
    rows.append(("disk: one record per write + fdatasync, p50 / p99 (ms)", f"{f(sync, 3)} / {f(med('disk-sync', 'batch_latency/p99_ms'), 3)}", "", ""))
    pz = med("disk-sync-prezeroed", "batch_latency/p50_ms")
    rows.append(("disk: the same into a pre-zeroed file (no new size to record), p50 / p99 (ms)", f"{f(pz, 3)} / {f(med('disk-sync-prezeroed', 'batch_latency/p99_ms'), 3)}", "", ""))
    rows.append((f"relay ingest at {conns} conns, pipelined: share of the raw ceiling / of the sink rate", f"{ri / ceiling:.0%}" if ri else "–", f"{ri / si:.0%}" if ri and si else "–", ""))
sweep_rows = []
for c in sweep.split():
    allow = med(f"disk-c{c}", "records_per_s")
    for mode in sweep_modes.split():
        a, b = med(f"relay-sweep-c{c}-{mode}", "msgs_per_s"), med(f"postfix-sweep-c{c}-{mode}", "msgs_per_s")
        if a is None and b is None:
            continue
        p50 = med(f"relay-sweep-c{c}-{mode}", "latency_ms/transaction/p50_ms")
        sweep_rows.append((c, mode, f(a), f(b), ratio(a, b), f(allow), f"{allow / a:.2f}×" if a and allow else "–", f(p50, 2)))
print(f"\nrelay vs Postfix {pf_ver} / Dovecot {dv_ver}; medians of {rounds} alternating rounds; load average after: {load}\n")
print("| workload | relay | Postfix / Dovecot | ratio relay/peer |")
print("|---|---|---|---|")
for r in rows:
    if any(ch.isdigit() for ch in r[1] + r[2]):  # else a section this run left out
        print("| " + " | ".join(r) + " |")
print()
if sweep_rows:
    print(f"SMTP ingest by concurrency, {size}, {sweep_duration} per point; the disk's allowance is what `loadgen disk` writes durably with that many records per round of fdatasyncs (min(C, {cores}) writers); a transaction cannot finish before its fdatasync\n")
    print("| connections | mode | relay (msgs/s) | Postfix (msgs/s) | relay/Postfix | disk allows (records/s) | allowance/relay | relay transaction p50 (ms) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in sweep_rows:
        print("| " + " | ".join(str(x) for x in r) + " |")
    print()
print("per run:")
for r in runs:
    extra = f" e2e {r['e2e_msgs_per_s']:.0f}" if "e2e_msgs_per_s" in r else ""
    if "rss_kib_per_session" in r:
        extra = f" {r['idle_sessions']:.0f} sessions in IDLE: PSS {r['pss_kib_per_session']:.0f} KiB, RSS {r['rss_kib_per_session']:.0f} KiB per session"
    print(f"  round {r['round']} {r['run']:<26} {r['msgs_per_s']:>9.1f} msgs/s{extra}")
EOF
