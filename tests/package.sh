#!/usr/bin/env bash
# The Debian package, built and installed as an operator would (tests/run.sh calls this after
# the cargo tests): packaging/build-deb.sh, `apt-get install` of the .deb, then without
# systemd: the packaged config passes `relay check`, the installed binary serves it as the
# relay user for a few seconds (one EHLO/QUIT with Python's smtplib), the man pages and
# completions are there and non-empty, a reinstall keeps an edited config and the spool, and
# a purge keeps the spool.
#
# Needs root on Debian (it installs a package, creates the relay user and binds port 25);
# anywhere else it says so and exits 0. Leaves the machine as it found it: the package is
# purged at the end (and the user and spool it created removed) unless it was installed
# before the test.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ] || [ ! -f /etc/debian_version ] || ! command -v apt-get >/dev/null; then
    echo "tests/package.sh: SKIPPED: the package test needs root on Debian (apt-get install)"
    exit 0
fi

fail() {
    echo "tests/package.sh: FAILED: $*" >&2
    exit 1
}

if ! command -v cargo-deb >/dev/null 2>&1; then
    cargo install cargo-deb --version 3.8.0 --locked
fi

preinstalled=no
dpkg -s relay >/dev/null 2>&1 && preinstalled=yes

start=$(date +%s)
deb=$(bash packaging/build-deb.sh)
built=$(date +%s)
echo "tests/package.sh: built $deb in $((built - start)) s"

export DEBIAN_FRONTEND=noninteractive
apt-get install -y "$deb"

server=
cleanup() {
    if [ -n "$server" ] && kill -0 "$server" 2>/dev/null; then
        kill -TERM "$server" 2>/dev/null || true
        wait "$server" 2>/dev/null || true
    fi
    if [ "$preinstalled" = no ] && dpkg -s relay >/dev/null 2>&1; then
        apt-get purge -y relay >/dev/null
        rm -rf /var/spool/relay
        deluser --system relay >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT

# The layout the unit and the config expect.
[ -x /usr/bin/relay ] && [ -x /usr/bin/loadgen ] || fail "binaries missing"
getent passwd relay >/dev/null || fail "no relay user"
[ "$(stat -c '%a %U %G' /var/spool/relay)" = "700 relay relay" ] ||
    fail "spool is $(stat -c '%a %U %G' /var/spool/relay), want 700 relay relay"
grep -qx /etc/relay/relay.toml /var/lib/dpkg/info/relay.conffiles ||
    fail "/etc/relay/relay.toml is not a conffile"
[ -s /lib/systemd/system/relay.service ] || [ -s /usr/lib/systemd/system/relay.service ] ||
    fail "no systemd unit"
grep -q '^ExecStart=/usr/bin/relay serve --config /etc/relay/relay.toml$' \
    /lib/systemd/system/relay.service /usr/lib/systemd/system/relay.service 2>/dev/null ||
    fail "unit does not run /usr/bin/relay on /etc/relay/relay.toml"
[ -s /usr/share/relay/profiles/edge-relay.toml ] || fail "tuning profiles missing"

# Man pages (gzipped, one per command) and completions, non-empty.
for page in relay relay-serve relay-check relay-spool-ls relay-queue-list relay-user-add; do
    f=/usr/share/man/man1/$page.1.gz
    [ -s "$f" ] || fail "$f missing or empty"
    zcat "$f" | grep -q '^\.TH' || fail "$f is not a man page"
done
zcat /usr/share/man/man1/relay-generate.1.gz >/dev/null 2>&1 && fail "the hidden generate command has a man page"
for f in /usr/share/bash-completion/completions/relay /usr/share/zsh/vendor-completions/_relay \
    /usr/share/fish/vendor_completions.d/relay.fish; do
    [ -s "$f" ] || fail "$f missing or empty"
done
bash -n /usr/share/bash-completion/completions/relay || fail "bash completion does not parse"

relay check --config /etc/relay/relay.toml >/dev/null || fail "relay check rejects the packaged config"

# Serve the packaged config as the unit does: user relay with only CAP_NET_BIND_SERVICE
# (ambient, as AmbientCapabilities= grants it) for ports 25 and 110. systemd is not needed.
if python3 -c 'import socket; socket.create_connection(("127.0.0.1", 25), timeout=1)' 2>/dev/null; then
    fail "port 25 is in use on this machine; the packaged config listens there"
fi
log=$(mktemp)
setpriv --reuid=relay --regid=relay --init-groups \
    --inh-caps=+net_bind_service --ambient-caps=+net_bind_service \
    /usr/bin/relay serve --config /etc/relay/relay.toml >"$log" 2>&1 &
server=$!
python3 - <<'PY' || { cat "$log" >&2; fail "the installed relay does not answer SMTP on port 25"; }
import smtplib, socket, time
deadline = time.monotonic() + 30
while True:
    try:
        socket.create_connection(("127.0.0.1", 25), timeout=1).close()
        break
    except OSError:
        if time.monotonic() > deadline:
            raise SystemExit("port 25 not listening after 30 s")
        time.sleep(0.2)
s = smtplib.SMTP("127.0.0.1", 25, timeout=10)
code, _ = s.ehlo("package-test.example")
assert code == 250, code
code, _ = s.quit()
assert code == 221, code
PY
kill -TERM "$server"
status=0
wait "$server" || status=$?
server=
[ "$status" -eq 0 ] || { cat "$log" >&2; fail "relay exited $status on SIGTERM"; }
[ -z "$(find /var/spool/relay -maxdepth 0 ! -user relay)" ] || fail "spool changed owner"
echo "tests/package.sh: the installed relay served the packaged config; its log began:"
sed -n 1,5p "$log"
rm -f "$log"

# Upgrades keep the config (a conffile the operator edited) and the spool.
echo "# edited by tests/package.sh" >>/etc/relay/relay.toml
touch /var/spool/relay/package-test-marker
apt-get install -y --reinstall "$deb" >/dev/null
grep -q "edited by tests/package.sh" /etc/relay/relay.toml || fail "reinstall replaced the edited config"
[ -e /var/spool/relay/package-test-marker ] || fail "reinstall touched the spool"
if [ "$preinstalled" = no ]; then
    apt-get purge -y relay >/dev/null
    [ -e /var/spool/relay/package-test-marker ] || fail "purge deleted the spool"
    rm -rf /var/spool/relay
    deluser --system relay >/dev/null 2>&1 || true
else
    rm -f /var/spool/relay/package-test-marker
    sed -i '/^# edited by tests\/package.sh$/d' /etc/relay/relay.toml
fi

echo "tests/package.sh: package built, installed, checked and served in $(($(date +%s) - start)) s (build $((built - start)) s)"
