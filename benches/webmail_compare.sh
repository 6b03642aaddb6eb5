#!/usr/bin/env bash
# Web mail side by side: relay's web mail against Roundcube (Debian's roundcube-core, served by
# nginx and php-fpm, reading the mail from Dovecot over IMAP), both holding the same
# $MESSAGES-message INBOX, driven by the same HTTP load client (wrk) on this machine.
#
#   bash benches/webmail_compare.sh          # as root on Debian; installs what is missing
#
# What it does:
#   1. Installs, when missing (apt-get, with a policy-rc.d that keeps every packaged service
#      from starting): roundcube-core, roundcube-sqlite3 (Roundcube's database is SQLite: its
#      sessions and users live there), php-fpm, php-sqlite3, nginx-light, dovecot-imapd,
#      sqlite3 and wrk. Builds relay and loadgen in release mode unless RELAY_BIN and
#      LOADGEN_BIN are given.
#   2. Starts on 127.0.0.1 only, with configs in $WORK: `loadgen sink` (the next hop of every
#      sent message, both sides); relay (fsync on, `[web] listen`, one user user0 with the
#      tests' argon2id hash, remote mail routed to the sink); Dovecot (passwd-file user user0,
#      Maildir, Sent created on demand); php-fpm (own master, a static pool of $PHP_CHILDREN
#      on a unix socket, ROUNDCUBE_CONFIG_DIR pointing at $WORK's Roundcube config); nginx
#      ($NGINX_WORKERS workers, no access log) in front of it.
#   3. Fills both INBOXes with the same $MESSAGES messages of $SIZE bytes of text (message i
#      dated 2026-01-01 + i minutes) by IMAP APPEND over 8 connections (the last 200 in order over one) (benches/webmail/
#      client.py), then logs one browser session in on each side.
#   4. Runs ROUNDS rounds, alternating which server goes first, each measuring for DURATION:
#        - the INBOX list, first page (50 rows both, newest first): relay GET /mail?folder=INBOX
#          (the whole page); Roundcube its list request (_action=list&_remote=1, the JSON the
#          page's script asks for; its HTML shell is a separate request not counted);
#        - a message view (the newest message): relay GET /read; Roundcube _action=show;
#        both with wrk -t$WRK_THREADS -c$CONNECTIONS and benches/webmail/check.lua, which
#        counts any answer that is not a 200 carrying the expected subject;
#        - sending: Roundcube's send needs a fresh compose id per message (its compose page,
#          then the POST), which wrk cannot drive well, so sends are measured for both by a
#          Python loop (client.py send): $SEND_THREADS sessions each looping compose page →
#          send POST to a remote address for DURATION; the figure is compose+send pairs per
#          second and their p99. Each sent message is durable (relay: spool + Sent; Roundcube:
#          handed to the sink over SMTP + APPENDed to Sent in Dovecot).
#   5. Memory: logs in $SESSIONS sessions on each side (sequential, Python stdlib, never
#      logged out) and takes the PSS/RSS of the server's processes (relay: its process;
#      Roundcube: nginx, php-fpm and Dovecot process trees) and the size of Roundcube's SQLite
#      files after a quarter of them and after all: the difference per added session.
#   6. Prints one table (medians over the rounds; all figures with the 1-minute load average
#      at their start are in $WORK/results.jsonl) and stops everything it started.
#
# Not equal on purpose, in Roundcube's favour: Dovecot's password is {PLAIN} (Roundcube logs
# in to IMAP again on every request; relay's argon2id is paid once per session, at the logins
# that precede the measurements), and Dovecot runs its login and imap processes in
# high-performance mode (service_count = 0). Password hashing cost is not part of any
# figure except the login phase of the memory step, which is not timed.
#
# Knobs (environment): ROUNDS=3 DURATION=10s CONNECTIONS=8 WRK_THREADS=2 MESSAGES=10000
# SIZE=4096 (body bytes) SEND_THREADS=4 SESSIONS=1000 PHP_CHILDREN=8 NGINX_WORKERS=2
# WEB_THREADS=2 (relay's [web] threads) WORK=/var/lib/relay-webmail-compare KEEP=0 (keep
# $WORK) RELAY_BIN LOADGEN_BIN (skip the build) CARGO_TARGET_DIR. Nothing listens beyond
# 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-8}
WRK_THREADS=${WRK_THREADS:-2}
MESSAGES=${MESSAGES:-10000}
SIZE=${SIZE:-4096}
SEND_THREADS=${SEND_THREADS:-4}
SESSIONS=${SESSIONS:-1000}
PHP_CHILDREN=${PHP_CHILDREN:-8}
NGINX_WORKERS=${NGINX_WORKERS:-2}
WEB_THREADS=${WEB_THREADS:-2}
WORK=${WORK:-/var/lib/relay-webmail-compare}
KEEP=${KEEP:-0}
PASSWORD=password
# The argon2id hash of "password" that relay's tests use (m=19456 KiB, t=2, p=1).
HASH='$argon2id$v=19$m=19456,t=2,p=1$ZooLWEChpY79Z6TwJvyWWQ$/qbC5yKMqMV95V9N9XJPga/chMKFOMNMHdI7/CftPiw'
CLIENT=$REPO/benches/webmail/client.py
LUA=$REPO/benches/webmail/check.lua
SECONDS_RUN=${DURATION%s}

log() { echo "webmail_compare: $*" >&2; }
die() {
    log "$*"
    exit 1
}

[ "$(id -u)" -eq 0 ] || die "run as root (it installs packages and starts nginx, php-fpm and Dovecot)"
command -v python3 >/dev/null || die "python3 is needed"

# ---------------------------------------------------------------------------------------------
# 1. Install and build

PHP_FPM=$(command -v php-fpm8.2 || ls /usr/sbin/php-fpm* 2>/dev/null | head -1 || true)
if [ ! -e /usr/share/roundcube/index.php ] || [ ! -e /usr/share/roundcube/SQL/sqlite.initial.sql ] ||
    [ -z "$PHP_FPM" ] || ! command -v php >/dev/null || ! php -r 'exit(extension_loaded("pdo_sqlite") ? 0 : 1);' 2>/dev/null || ! command -v nginx >/dev/null ||
    [ ! -x /usr/lib/dovecot/imap ] || ! command -v wrk >/dev/null || ! command -v sqlite3 >/dev/null; then
    log "installing roundcube-core roundcube-sqlite3 php-fpm php-sqlite3 nginx-light dovecot-imapd sqlite3 wrk"
    export DEBIAN_FRONTEND=noninteractive
    # Roundcube's package would set up a database through dbconfig-common: not here (the
    # bench makes its own SQLite database in $WORK).
    echo "roundcube-core roundcube/dbconfig-install boolean false" | debconf-set-selections
    created_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        created_policy=1
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends roundcube-core roundcube-sqlite3 php-fpm \
        php-sqlite3 nginx-light dovecot-core dovecot-imapd sqlite3 wrk >/dev/null
    if [ "$created_policy" -eq 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
    PHP_FPM=$(command -v php-fpm8.2 || ls /usr/sbin/php-fpm* 2>/dev/null | head -1)
fi
[ -n "$PHP_FPM" ] || die "no php-fpm binary"

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
[ -x "$RELAY_BIN" ] && [ -x "$LOADGEN_BIN" ] || die "no relay/loadgen binaries"

# ---------------------------------------------------------------------------------------------
# 2. Work directory, ports, cleanup

rm -rf "$WORK"
mkdir -p -m 755 "$WORK"
RESULTS=$WORK/results.jsonl
: >"$RESULTS"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

SINK_PID="" RELAY_PID="" FPM_PID="" NGINX_PID="" DV_CONF=$WORK/dovecot/dovecot.conf
cleanup() {
    set +e
    [ -n "$NGINX_PID" ] && kill "$NGINX_PID" 2>/dev/null && wait "$NGINX_PID" 2>/dev/null
    [ -n "$FPM_PID" ] && kill "$FPM_PID" 2>/dev/null && wait "$FPM_PID" 2>/dev/null
    [ -n "$RELAY_PID" ] && kill "$RELAY_PID" 2>/dev/null && wait "$RELAY_PID" 2>/dev/null
    [ -f "$DV_CONF" ] && dovecot -c "$DV_CONF" stop >/dev/null 2>&1
    [ -n "$SINK_PID" ] && kill -INT "$SINK_PID" 2>/dev/null && wait "$SINK_PID" 2>/dev/null
    if [ "$KEEP" != 1 ]; then rm -rf "$WORK"; else log "kept $WORK"; fi
}
trap cleanup EXIT

# Memory of process trees: "PSS_KIB RSS_KIB PROCESSES".
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

load1() { cut -d' ' -f1 /proc/loadavg; }

record() { # $1: name, $2: round, $3: JSON object; adds the load average
    python3 -c 'import json,sys; d=json.loads(sys.argv[3]); d.update(name=sys.argv[1], round=int(sys.argv[2]), load1=float(sys.argv[4])); print(json.dumps(d))' \
        "$1" "$2" "$3" "$4" >>"$RESULTS"
}

jget() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }

# ---------------------------------------------------------------------------------------------
# 3. The sink, relay, Dovecot, php-fpm, nginx

SINK_PORT=$(free_port)
"$LOADGEN_BIN" sink --listen "127.0.0.1:$SINK_PORT" --duration 3h --max-time 3h \
    >"$WORK/sink.out" 2>"$WORK/sink.log" &
SINK_PID=$!

RELAY_IMAP_PORT=$(free_port)
RELAY_WEB_PORT=$(free_port)
{
    printf '[server]\nhostname = "relay.bench.test"\nconnections_per_ip_max = %s\n' "$((SESSIONS + 1000))"
    printf '[smtp]\nlisten = ["127.0.0.1:0"]\n'
    printf '[imap]\nlisten = ["127.0.0.1:%s"]\nauth_failures_per_ip_max = %s\n' "$RELAY_IMAP_PORT" "$((SESSIONS + 1000))"
    printf '[web]\nlisten = ["127.0.0.1:%s"]\nthreads = %s\n' "$RELAY_WEB_PORT" "$WEB_THREADS"
    printf '[spool]\ndir = "%s"\nfsync = true\n' "$WORK/relay-spool"
    printf '[local]\ndomains = ["bench.test"]\n'
    printf '[[relay.routes]]\ndomain = "*"\nto = "127.0.0.1:%s"\n' "$SINK_PORT"
    printf '[[local.users]]\nname = "user0"\npassword = "%s"\n' "$HASH"
} >"$WORK/relay.toml"
"$RELAY_BIN" serve --config "$WORK/relay.toml" 2>"$WORK/relay.log" &
RELAY_PID=$!
for _ in $(seq 200); do
    grep -q 'relay ready' "$WORK/relay.log" && break
    kill -0 "$RELAY_PID" 2>/dev/null || break
    sleep 0.05
done
grep -q 'relay ready' "$WORK/relay.log" || die "relay did not start: $(tail -5 "$WORK/relay.log")"
grep -q 'protocol="http"' "$WORK/relay.log" || die "relay has no web listener: $(tail -5 "$WORK/relay.log")"

DV_PORT=$(free_port)
d=$WORK/dovecot
mkdir -p -m 755 "$d" "$d/run" "$d/state" "$WORK/maildirs"
chown nobody:nogroup "$WORK/maildirs"
echo "user0:{PLAIN}$PASSWORD" >"$d/users"
cat >"$DV_CONF" <<EOF
# relay's web mail comparison: Roundcube's IMAP server, on loopback, over Maildirs.
protocols = imap
listen = 127.0.0.1
instance_name = relay-webmail-compare
base_dir = $d/run
state_dir = $d/state
log_path = $d/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:$WORK/maildirs/%u
first_valid_uid = 1
default_client_limit = 4096
passdb {
  driver = passwd-file
  args = $d/users
}
userdb {
  driver = static
  args = uid=nobody gid=nogroup home=$WORK/maildirs/%u
}
namespace inbox {
  inbox = yes
  mailbox Sent {
    auto = create
    special_use = \\Sent
  }
  mailbox Drafts {
    auto = create
    special_use = \\Drafts
  }
  mailbox Trash {
    auto = create
    special_use = \\Trash
  }
}
# High-performance mode (processes reused across connections): Roundcube connects and logs
# in again on every HTTP request.
service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = $DV_PORT
  }
  inet_listener imaps {
    port = 0
  }
  service_count = 0
  process_min_avail = 2
}
service imap {
  service_count = 0
  process_limit = 1024
}
protocol imap {
  mail_max_userip_connections = 1000
}
EOF
dovecot -c "$DV_CONF" || die "dovecot did not start (see $d/dovecot.log)"
DV_MASTER_PID() { cat "$WORK/dovecot/run/master.pid" 2>/dev/null; }

# Roundcube: its config directory (the package's defaults plus ours), SQLite database, temp
# and log directories, all owned by www-data (php-fpm's pool user).
RC=$WORK/roundcube
mkdir -p -m 755 "$RC/config" "$RC/db" "$RC/temp" "$RC/logs"
cp /etc/roundcube/defaults.inc.php /etc/roundcube/mimetypes.php "$RC/config/" 2>/dev/null ||
    cp /usr/share/roundcube/config/defaults.inc.php "$RC/config/"
cat >"$RC/config/config.inc.php" <<EOF
<?php
// relay's web mail comparison: Roundcube against Dovecot on loopback, SQLite database.
\$config = [];
\$config['db_dsnw'] = 'sqlite:///$RC/db/roundcube.sqlite?mode=0640';
\$config['imap_host'] = '127.0.0.1:$DV_PORT';
\$config['smtp_host'] = '127.0.0.1:$SINK_PORT';
\$config['smtp_user'] = '';
\$config['smtp_pass'] = '';
\$config['mail_domain'] = 'bench.test';
\$config['des_key'] = 'benchBENCHbenchBENCH1234';
\$config['plugins'] = [];
\$config['skin'] = 'elastic';
\$config['enable_spellcheck'] = false;
\$config['temp_dir'] = '$RC/temp/';
\$config['log_dir'] = '$RC/logs/';
\$config['login_rate_limit'] = 0;
\$config['session_lifetime'] = 240;
\$config['mail_pagesize'] = 50;
\$config['message_sort_col'] = 'date';
\$config['message_sort_order'] = 'DESC';
\$config['enable_installer'] = false;
EOF
sqlite3 "$RC/db/roundcube.sqlite" </usr/share/roundcube/SQL/sqlite.initial.sql
chown -R www-data:www-data "$RC"

FPM_SOCK=$WORK/php-fpm.sock
cat >"$WORK/php-fpm.conf" <<EOF
[global]
pid = $WORK/php-fpm.pid
error_log = $WORK/php-fpm.log
daemonize = no

[roundcube]
user = www-data
group = www-data
listen = $FPM_SOCK
listen.mode = 0666
pm = static
pm.max_children = $PHP_CHILDREN
env[ROUNDCUBE_CONFIG_DIR] = $RC/config
php_admin_value[error_log] = $RC/logs/php.log
php_admin_flag[log_errors] = on
EOF
"$PHP_FPM" --nodaemonize --fpm-config "$WORK/php-fpm.conf" 2>>"$WORK/php-fpm.log" &
FPM_PID=$!

NG=$WORK/nginx
RC_PORT=$(free_port)
mkdir -p -m 755 "$NG/tmp"
cat >"$NG/nginx.conf" <<EOF
# relay's web mail comparison: Roundcube through php-fpm, on loopback.
user www-data;
worker_processes $NGINX_WORKERS;
daemon off;
pid $NG/nginx.pid;
error_log $NG/error.log;
events {
    worker_connections 4096;
}
http {
    access_log off;
    client_body_temp_path $NG/tmp/body;
    fastcgi_temp_path $NG/tmp/fastcgi;
    proxy_temp_path $NG/tmp/proxy;
    uwsgi_temp_path $NG/tmp/uwsgi;
    scgi_temp_path $NG/tmp/scgi;
    include /etc/nginx/mime.types;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$RC_PORT;
        root /var/lib/roundcube;
        index index.php;
        location ~ \.php\$ {
            include /etc/nginx/fastcgi_params;
            fastcgi_param SCRIPT_FILENAME \$document_root\$fastcgi_script_name;
            fastcgi_pass unix:$FPM_SOCK;
        }
    }
}
EOF
nginx -c "$NG/nginx.conf" -p "$NG" -e "$NG/error.log" &
NGINX_PID=$!

for _ in $(seq 100); do
    [ -S "$FPM_SOCK" ] && python3 -c "import socket; socket.create_connection(('127.0.0.1',$RC_PORT),1)" 2>/dev/null && break
    sleep 0.1
done
kill -0 "$FPM_PID" 2>/dev/null || die "php-fpm did not start: $(tail -3 "$WORK/php-fpm.log")"
kill -0 "$NGINX_PID" 2>/dev/null || die "nginx did not start: $(tail -3 "$NG/error.log")"

RELAY_URL=http://127.0.0.1:$RELAY_WEB_PORT
RC_URL=http://127.0.0.1:$RC_PORT

# ---------------------------------------------------------------------------------------------
# 4. The same mail on both sides

for side in relay dovecot; do
    port=$RELAY_IMAP_PORT
    [ "$side" = dovecot ] && port=$DV_PORT
    log "$side: appending $MESSAGES messages of $SIZE bytes (load $(load1))"
    json=$(python3 "$CLIENT" append 127.0.0.1 "$port" user0 "$PASSWORD" "$MESSAGES" "$SIZE" 8)
    [ "$(jget "$json" appended)" -eq "$MESSAGES" ] || die "$side: appended $(jget "$json" appended) of $MESSAGES"
    record "$side-append" 0 "$json" "$(load1)"
    log "$side: $(jget "$json" msgs_per_s) APPENDs/s"
done

RELAY_INFO=$(python3 "$CLIENT" login relay "$RELAY_URL" user0 "$PASSWORD") ||
    die "relay: web login failed: $(tail -5 "$WORK/relay.log")"
RC_INFO=$(python3 "$CLIENT" login roundcube "$RC_URL" user0 "$PASSWORD") ||
    die "roundcube: login failed: $(tail -5 "$RC/logs/errors.log" 2>/dev/null) $(tail -3 "$RC/logs/php.log" 2>/dev/null)"
for info in "$RELAY_INFO" "$RC_INFO"; do
    [ "$(jget "$info" list_rows)" -eq 50 ] || log "warning: a first page of $(jget "$info" list_rows) rows, not 50"
done
NEWEST=$(jget "$RELAY_INFO" subject)
[ "$NEWEST" = "$(jget "$RC_INFO" subject)" ] ||
    die "the newest message differs: relay '$NEWEST', Roundcube '$(jget "$RC_INFO" subject)'"
log "both list '$NEWEST' first"

wrk_run() { # $1: name, $2: round, $3: URL, $4: marker, then wrk -H headers
    local name=$1 round=$2 url=$3 marker=$4 load json
    shift 4
    load=$(load1)
    json=$(wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$DURATION" --timeout 10s "$@" -s "$LUA" "$url" -- "$marker" |
        sed -n 's/^JSON //p')
    [ -n "$json" ] || die "$name: no result from wrk"
    record "$name" "$round" "$json" "$load"
    log "round $round $name: $(jget "$json" per_s) req/s, p99 $(jget "$json" p99_ms) ms, $(jget "$json" bad) bad, $(jget "$json" errors) errors (load $load)"
}

send_run() { # $1: relay|roundcube, $2: round, $3: URL
    local load json
    load=$(load1)
    json=$(python3 "$CLIENT" send "$1" "$3" user0 "$PASSWORD" rcpt@remote.test "$SECONDS_RUN" "$SEND_THREADS")
    record "$1-send" "$2" "$json" "$load"
    log "round $2 $1-send: $(jget "$json" per_s) sends/s, p99 $(jget "$json" p99_ms) ms, $(jget "$json" failed) failed (load $load)"
}

measure() { # $1: relay|roundcube, $2: round
    local info cookie headers=()
    if [ "$1" = relay ]; then info=$RELAY_INFO url=$RELAY_URL; else info=$RC_INFO url=$RC_URL; fi
    cookie=$(jget "$info" cookie)
    headers=(-H "Cookie: $cookie")
    [ "$1" = roundcube ] && headers+=(-H "X-Roundcube-Request: $(jget "$info" token)")
    wrk_run "$1-list" "$2" "$url$(jget "$info" list_path)" "$NEWEST" "${headers[@]}"
    wrk_run "$1-view" "$2" "$url$(jget "$info" view_path)" "$NEWEST" "${headers[@]}"
    send_run "$1" "$2" "$url"
}

# Warm-up (opcache, Dovecot's sort index, relay's caches), not recorded.
for url_info in "relay" "roundcube"; do
    if [ "$url_info" = relay ]; then info=$RELAY_INFO url=$RELAY_URL; else info=$RC_INFO url=$RC_URL; fi
    h=(-H "Cookie: $(jget "$info" cookie)")
    [ "$url_info" = roundcube ] && h+=(-H "X-Roundcube-Request: $(jget "$info" token)")
    wrk -t1 -c2 -d2s "${h[@]}" "$url$(jget "$info" list_path)" >/dev/null
    wrk -t1 -c2 -d2s "${h[@]}" "$url$(jget "$info" view_path)" >/dev/null
done

# ---------------------------------------------------------------------------------------------
# 5. The rounds

for ((r = 1; r <= ROUNDS; r++)); do
    if ((r % 2 == 1)); then order=(relay roundcube); else order=(roundcube relay); fi
    for side in "${order[@]}"; do measure "$side" "$r"; done
done

# ---------------------------------------------------------------------------------------------
# 6. Memory for $SESSIONS logged-in sessions

rc_files() { du -sk --apparent-size "$RC/db" | cut -f1; }

# A slope, as benches/compare does for IMAP: the memory with a quarter of the sessions
# logged in, then with all of them; the difference over the 3/4 added. (The first logins
# grow the allocators' high-water mark, relay's argon2id buffers among them: not per session.)
mem_sessions() { # $1: relay|roundcube
    local first=$((SESSIONS / 4)) rest before after files_before files_after load json json2 roots
    rest=$((SESSIONS - first))
    if [ "$1" = relay ]; then roots=("$RELAY_PID") url=$RELAY_URL; else
        roots=("$NGINX_PID" "$FPM_PID" "$(DV_MASTER_PID)") url=$RC_URL
    fi
    load=$(load1)
    log "$1: logging in $SESSIONS sessions (load $load)"
    python3 "$CLIENT" sessions "$1" "$url" user0 "$PASSWORD" "$first" >/dev/null
    sleep 1
    files_before=$(rc_files)
    before=$(mem_tree "${roots[@]}")
    json=$(python3 "$CLIENT" sessions "$1" "$url" user0 "$PASSWORD" "$rest")
    sleep 1
    after=$(mem_tree "${roots[@]}")
    files_after=$(rc_files)
    [ "$1" = relay ] && files_after=$files_before
    json=$(python3 -c '
import json, sys
d = json.loads(sys.argv[1]); b = sys.argv[2].split(); a = sys.argv[3].split()
n = max(d["sessions"], 1)
d.update(pss_before_kib=int(b[0]), pss_after_kib=int(a[0]), rss_before_kib=int(b[1]), rss_after_kib=int(a[1]),
         processes=int(a[2]), pss_per_session_kib=(int(a[0]) - int(b[0])) / n,
         rss_per_session_kib=(int(a[1]) - int(b[1])) / n,
         files_per_session_kib=(int(sys.argv[5]) - int(sys.argv[4])) / n)
print(json.dumps(d))' "$json" "$before" "$after" "$files_before" "$files_after")
    record "$1-sessions" 1 "$json" "$load"
    log "$1: $(jget "$json" sessions) more sessions ($(jget "$json" failed) failed): PSS $(jget "$json" pss_before_kib) → $(jget "$json" pss_after_kib) KiB, $(jget "$json" pss_per_session_kib) KiB/session, files $(jget "$json" files_per_session_kib) KiB/session"
}
mem_sessions relay
mem_sessions roundcube

# ---------------------------------------------------------------------------------------------
# 7. The table

python3 - "$RESULTS" "$CONNECTIONS" "$WRK_THREADS" "$DURATION" "$SEND_THREADS" "$MESSAGES" "$SIZE" "$SESSIONS" <<'EOF'
import json, statistics, sys
path, conns, wthreads, duration, sthreads, messages, size, sessions = sys.argv[1:]
runs = [json.loads(l) for l in open(path)]

def med(name, key):
    vals = [r[key] for r in runs if r["name"] == name and r.get(key) is not None]
    return statistics.median(vals) if vals else None

def loads(name):
    vals = [r["load1"] for r in runs if r["name"] == name]
    return f"{min(vals):.1f}–{max(vals):.1f}" if vals else ""

def f(v, d=0):
    return "–" if v is None else f"{v:,.{d}f}"

rows = []
for what, label in (("list", f"INBOX list, first page of 50 ({messages} messages)"), ("view", "message view (newest message)")):
    a, b = med(f"relay-{what}", "per_s"), med(f"roundcube-{what}", "per_s")
    rows.append((f"{label}, wrk -t{wthreads} -c{conns} {duration} (req/s)", f(a), f(b), f"{a / b:.1f}×" if a and b else "–",
                 f"{loads(f'relay-{what}')} / {loads(f'roundcube-{what}')}"))
    a, b = med(f"relay-{what}", "p99_ms"), med(f"roundcube-{what}", "p99_ms")
    rows.append((f"  p99 (ms)", f(a, 2), f(b, 2), f"{b / a:.1f}× lower" if a and b else "–", ""))
    bad = sum(r["bad"] + r["errors"] for r in runs if r["name"] in (f"relay-{what}", f"roundcube-{what}"))
    if bad:
        rows.append((f"  answers without the expected page or errors (all runs)", str(sum(r['bad'] + r['errors'] for r in runs if r['name'] == f'relay-{what}')),
                     str(sum(r['bad'] + r['errors'] for r in runs if r['name'] == f'roundcube-{what}')), "", ""))
a, b = med("relay-send", "per_s"), med("roundcube-send", "per_s")
rows.append((f"send: compose page + send POST, {sthreads} Python sessions, {duration} (sends/s)", f(a, 1), f(b, 1),
             f"{a / b:.1f}×" if a and b else "–", f"{loads('relay-send')} / {loads('roundcube-send')}"))
a, b = med("relay-send", "p99_ms"), med("roundcube-send", "p99_ms")
rows.append(("  p99 of the pair (ms)", f(a, 1), f(b, 1), f"{b / a:.1f}× lower" if a and b else "–", ""))
failed = [sum(r["failed"] for r in runs if r["name"] == n) for n in ("relay-send", "roundcube-send")]
if any(failed):
    rows.append(("  sends that failed (all runs)", str(failed[0]), str(failed[1]), "", ""))
for key, label in (("pss_per_session_kib", "PSS"), ("rss_per_session_kib", "RSS")):
    a, b = med("relay-sessions", key), med("roundcube-sessions", key)
    rows.append((f"memory per logged-in session, {sessions} sessions (slope over the last 3/4), {label} (KiB)", f(a, 1), f(b, 1), "–",
                 f"{loads('relay-sessions')} / {loads('roundcube-sessions')}" if label == "PSS" else ""))
a, b = med("relay-sessions", "files_per_session_kib"), med("roundcube-sessions", "files_per_session_kib")
rows.append(("  + session storage on disk (KiB; Roundcube: SQLite)", f(a, 1), f(b, 1), "–", ""))
a, b = med("relay-append", "msgs_per_s"), med("dovecot-append", "msgs_per_s")
rows.append((f"(prefill) IMAP APPEND, {messages} × {size} B, 8 conns (msgs/s; relay vs Dovecot)", f(a), f(b), "", ""))

head = ("", "relay", "Roundcube", "ratio", "load avg (relay / Roundcube)")
widths = [max(len(r[i]) for r in rows + [head]) for i in range(5)]
line = lambda r: "| " + " | ".join(c.ljust(widths[i]) for i, c in enumerate(r)) + " |"
print(line(head))
print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
for r in rows:
    print(line(r))
EOF
