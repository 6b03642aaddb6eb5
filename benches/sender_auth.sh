#!/usr/bin/env bash
# Ingest with sender verification on, side by side with it off: the cost of the SPF, DKIM and
# DMARC checks (`[verify]`) at ingest.
#
#   bash benches/sender_auth.sh
#
# What it does:
#   1. Builds relay and loadgen in release mode (unless RELAY_BIN and LOADGEN_BIN are given).
#   2. Makes an RSA DKIM key (dknewkey: 2048 bits) and a 10 KiB message From bench@sender.test,
#      signed by dkimsign (dkimpy: relaxed/relaxed, rsa-sha256), and serves on loopback
#      (tests/py/dns_server.py) its key, an SPF record (`ip4:127.0.0.1 -all`, for MAIL FROM
#      and the HELO name) and a DMARC record (`p=reject`, no rua: reports are not measured).
#   3. Runs, ROUNDS times, alternating which goes first: the relay (fresh spool,
#      `spool.fsync = true`, resolving through that DNS server, loopback not a relay network so
#      the client is checked, mail for local mailboxes) with `[verify] enabled = false`, then
#      `true`; each time `loadgen smtp --message-file` sends the signed message over
#      CONNECTIONS connections for DURATION.
#   4. Prints msgs/s per run, the medians, and the ratio on/off (goal: at least 0.80).
#
# A relay whose `[verify]` section has no `enabled` key (the skeleton before the checks land)
# cannot switch them on: the script says so and runs both sides unchanged (ratio about 1).
# Every accepted message of a run with verification on must carry our Authentication-Results
# header; the script checks one stored message per run and says what it found.
#
# Knobs (environment): ROUNDS=2 DURATION=10s CONNECTIONS=50 SIZE_KIB=10 USERS=20
# WORK=$(mktemp -d) KEEP=0 (keep WORK) RELAY_BIN LOADGEN_BIN (skip the build) CARGO_TARGET_DIR
# CARGO_PROFILE=release. Nothing listens beyond 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-50}
SIZE_KIB=${SIZE_KIB:-10}
USERS=${USERS:-20}
KEEP=${KEEP:-0}
CARGO_PROFILE=${CARGO_PROFILE:-release}
PY=/usr/bin/python3 # Debian's, with python3-dkim
# The argon2id hash of "password" that relay's tests use (m=19456 KiB, t=2, p=1).
HASH='$argon2id$v=19$m=19456,t=2,p=1$ZooLWEChpY79Z6TwJvyWWQ$/qbC5yKMqMV95V9N9XJPga/chMKFOMNMHdI7/CftPiw'
DOMAIN=sender.test
SELECTOR=bench
HELO=mail.$DOMAIN

log() { echo "sender_auth: $*" >&2; }
die() {
    log "$*"
    exit 1
}

command -v dkimsign >/dev/null && command -v dknewkey >/dev/null ||
    die "dkimsign/dknewkey missing: apt-get install python3-dkim (tests/run.sh does)"
[ -x "$PY" ] || die "$PY is needed (Debian python3 with python3-dkim)"

if [ -z "${RELAY_BIN:-}" ] || [ -z "${LOADGEN_BIN:-}" ]; then
    log "building relay and loadgen ($CARGO_PROFILE)"
    cargo build --profile "$CARGO_PROFILE" --quiet -p relay -p loadgen
    TARGET=${CARGO_TARGET_DIR:-$REPO/target}
    RELAY_BIN=${RELAY_BIN:-$TARGET/$CARGO_PROFILE/relay}
    LOADGEN_BIN=${LOADGEN_BIN:-$TARGET/$CARGO_PROFILE/loadgen}
fi
[ -x "$RELAY_BIN" ] && [ -x "$LOADGEN_BIN" ] || die "no relay/loadgen binaries"

WORK=${WORK:-$(mktemp -d /tmp/relay-sender-auth.XXXXXX)}
mkdir -p "$WORK"
DNS_PID=""
RELAY_PID=""
cleanup() {
    if [ -n "$RELAY_PID" ]; then kill "$RELAY_PID" 2>/dev/null && wait "$RELAY_PID" 2>/dev/null; fi
    if [ -n "$DNS_PID" ]; then kill "$DNS_PID" 2>/dev/null && wait "$DNS_PID" 2>/dev/null; fi
    if [ "$KEEP" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

# ---------------------------------------------------------------------------------------------
# 1. The key, the signed message, the DNS

dknewkey --ktype rsa "$WORK/$SELECTOR" >/dev/null
"$PY" - "$WORK/message.eml" "$SIZE_KIB" "$DOMAIN" <<'EOF'
import email.utils, sys
path, kib, domain = sys.argv[1], int(sys.argv[2]), sys.argv[3]
head = (
    f"From: Bench Sender <bench@{domain}>\r\n"
    "To: Someone <user0@bench.test>\r\n"
    "Subject: sender authentication benchmark\r\n"
    f"Date: {email.utils.formatdate()}\r\n"
    f"Message-ID: <bench.{kib}k@{domain}>\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: text/plain; charset=us-ascii\r\n\r\n"
)
line = "The quick brown fox jumps over the lazy dog, and the relay checks who sent it.\r\n"
body = line * max(1, (kib * 1024 - len(head) - 600) // len(line))  # ~600: the signature
open(path, "w", newline="").write(head + body)
EOF
dkimsign --hcanon relaxed --bcanon relaxed "$SELECTOR" "$DOMAIN" "$WORK/$SELECTOR.key" \
    <"$WORK/message.eml" >"$WORK/signed.eml"
grep -q '^DKIM-Signature:' "$WORK/signed.eml" || die "dkimsign wrote no signature"
log "signed message: $(wc -c <"$WORK/signed.eml") bytes"

{
    # dknewkey's .dns file holds the TXT text (one line; dns_server.py splits it into strings).
    printf '%s._domainkey.%s=txt:%s\n' "$SELECTOR" "$DOMAIN" "$(tr -d '\n"' <"$WORK/$SELECTOR.dns")"
    printf '%s=txt:v=spf1 ip4:127.0.0.1 -all\n' "$DOMAIN"
    printf '%s=txt:v=spf1 ip4:127.0.0.1 -all\n' "$HELO"
    printf '%s=127.0.0.1\n' "$HELO"
    printf '_dmarc.%s=txt:v=DMARC1; p=reject; adkim=r; aspf=r\n' "$DOMAIN"
} >"$WORK/zone.txt"
python3 tests/py/dns_server.py --zone "$WORK/zone.txt" >"$WORK/dns.log" &
DNS_PID=$!
for _ in $(seq 100); do
    grep -q '^PORT ' "$WORK/dns.log" 2>/dev/null && break
    sleep 0.05
done
DNS_PORT=$(sed -n 's/^PORT //p' "$WORK/dns.log")
[ -n "$DNS_PORT" ] || die "dns_server.py did not start"

# dkimpy checks its own signature against the served key (its DNS through dnsfunc).
"$PY" - "$WORK/signed.eml" "$WORK/zone.txt" <<'EOF' || die "dkimverify does not accept the signed message"
import dkim, sys
records = {}
for line in open(sys.argv[2]):
    name, _, answer = line.rstrip("\n").partition("=")
    if answer.startswith("txt:"):
        records[name + "."] = answer[4:].encode()
ok = dkim.verify(open(sys.argv[1], "rb").read(), dnsfunc=lambda n, timeout=5: records.get(n.decode() if isinstance(n, bytes) else n))
sys.exit(0 if ok else 1)
EOF

# ---------------------------------------------------------------------------------------------
# 2. The relay, on or off

write_config() { # $1: verify section text
    rm -rf "$WORK/spool"
    {
        printf '[server]\nhostname = "relay.bench.test"\ndns_servers = ["127.0.0.1:%s"]\n' "$DNS_PORT"
        printf '[smtp]\nlisten = ["127.0.0.1:0"]\n[pop3]\nlisten = []\n[imap]\nlisten = []\n'
        printf '[spool]\ndir = "%s"\nfsync = true\n' "$WORK/spool"
        # Loopback is no relay network here: the client is checked, and mails local users.
        printf '[relay]\nallowed_networks = []\n'
        printf '[local]\ndomains = ["bench.test"]\n'
        for ((i = 0; i < USERS; i++)); do
            printf '[[local.users]]\nname = "user%d"\npassword = "%s"\n' "$i" "$HASH"
        done
        printf '%s' "$1"
    } >"$WORK/relay.toml"
}

VERIFY_ON=$'[verify]\nenabled = true\n'
VERIFY_OFF=$'[verify]\nenabled = false\n'
write_config "$VERIFY_ON"
if ! "$RELAY_BIN" check --config "$WORK/relay.toml" >"$WORK/check.log" 2>&1; then
    if grep -q 'enabled' "$WORK/check.log"; then
        log "NOTE: this relay has no [verify] enabled key (the skeleton): both sides run without"
        log "      verification, so the ratio only shows the noise of the measurement (about 1)"
        VERIFY_ON=""
        VERIFY_OFF=""
    else
        die "relay check refused the config: $(tail -5 "$WORK/check.log")"
    fi
fi

start_relay() { # $1: verify section text
    write_config "$1"
    "$RELAY_BIN" serve --config "$WORK/relay.toml" 2>"$WORK/relay.log" &
    RELAY_PID=$!
    for _ in $(seq 200); do
        grep -q 'relay ready' "$WORK/relay.log" && break
        sleep 0.05
    done
    grep -q 'relay ready' "$WORK/relay.log" || die "relay did not start: $(tail -5 "$WORK/relay.log")"
    RELAY_SMTP=$(grep -o 'protocol="smtp" addr=[0-9.:]*' "$WORK/relay.log" | sed 's/.*addr=//')
}
stop_relay() {
    kill "$RELAY_PID" && wait "$RELAY_PID" || true
    RELAY_PID=""
}

run() { # $1: round, $2: on|off
    local section=$VERIFY_OFF
    [ "$2" = on ] && section=$VERIFY_ON
    start_relay "$section"
    local json
    json=$("$LOADGEN_BIN" smtp --target "$RELAY_SMTP" --connections "$CONNECTIONS" \
        --duration "$DURATION" --pipelining --message-file "$WORK/signed.eml" \
        --ehlo "$HELO" --to-domain bench.test --users "$USERS" --json 2>"$WORK/loadgen.log")
    # One stored message: does it carry our Authentication-Results, and what does it say?
    local ar
    ar=$("$RELAY_BIN" spool ls --config "$WORK/relay.toml" 2>/dev/null | awk 'NR==2 {print $1}' |
        xargs -r -I{} "$RELAY_BIN" spool cat --config "$WORK/relay.toml" {} 2>/dev/null |
        "$PY" -c 'import sys,re
m = re.search(rb"^Authentication-Results:[^\n]*(\n[ \t][^\n]*)*", sys.stdin.buffer.read(), re.M)
print(re.sub(rb"\s+", b" ", m.group(0)).decode("ascii", "replace") if m else "none")' || echo "?")
    stop_relay
    echo "$json" | "$PY" -c '
import json, sys
r = json.load(sys.stdin)
m = r["messages"]
print(json.dumps({"round": int(sys.argv[1]), "verify": sys.argv[2], "msgs_per_s": r["msgs_per_s"],
    "accepted": m["accepted"], "rejected": m["rejected"], "failed": m["failed"],
    "replies": r["replies"], "auth_results": sys.argv[3]}))' "$1" "$2" "$ar" >>"$WORK/results.jsonl"
    log "round $1 verify=$2: $(tail -1 "$WORK/results.jsonl")"
}

: >"$WORK/results.jsonl"
for ((round = 1; round <= ROUNDS; round++)); do
    if ((round % 2)); then
        run "$round" off
        run "$round" on
    else
        run "$round" on
        run "$round" off
    fi
done

"$PY" - "$WORK/results.jsonl" "$CONNECTIONS" "$DURATION" "$SIZE_KIB" "${VERIFY_ON:+real}" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
med = lambda v: statistics.median(r["msgs_per_s"] for r in rows if r["verify"] == v)
off, on = med("off"), med("on")
print(f"sender_auth ingest: {sys.argv[4]} KiB signed messages, {sys.argv[2]} connections, "
      f"{sys.argv[3]} per run, spool.fsync = true")
for r in rows:
    print(f"  round {r['round']} verify={r['verify']:<3} {r['msgs_per_s']:>9.1f} msgs/s  "
          f"accepted {r['accepted']} rejected {r['rejected']} failed {r['failed']}")
print(f"  median off {off:.1f} msgs/s, on {on:.1f} msgs/s, ratio on/off {on / off:.3f} (goal >= 0.80)")
if not sys.argv[5]:
    print("  (verification could not be switched on in this relay: the ratio is noise)")
ar = {r["auth_results"] for r in rows if r["verify"] == "on"}
print(f"  Authentication-Results seen with verification on: {sorted(ar)}")
EOF
