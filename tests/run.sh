#!/usr/bin/env bash
# The project's one test command: README and .ci/run call exactly this script.
# Extra arguments go to `cargo test` (e.g. `bash tests/run.sh -- --nocapture`).
#
# The integration tests drive the relay with independent clients: Python's smtplib and
# poplib (python3, stdlib only), curl, swaks and lettre, and deliver to Postfix's smtp-sink (Debian package
# postfix, installed without configuring or starting a Postfix). They are installed here when
# missing (Debian, as root).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v python3 >/dev/null 2>&1 || missing+=(python3)
command -v curl >/dev/null 2>&1 || missing+=(curl ca-certificates)
[ -x /usr/sbin/smtp-sink ] || command -v smtp-sink >/dev/null 2>&1 || missing+=(postfix)
# swaks drives STARTTLS and AUTH (tests/tls.rs); it needs Net::SSLeay for TLS.
command -v swaks >/dev/null 2>&1 || missing+=(swaks libnet-ssleay-perl)
# libseccomp's Python bindings (for /usr/bin/python3): tests/seccomp_fallback.rs denies io_uring
# as Docker's default seccomp profile does.
/usr/bin/python3 -c 'import seccomp' >/dev/null 2>&1 || missing+=(python3-seccomp)
# Sender authentication: dkimpy's dkimsign/dkimverify, authheaders (parses our
# Authentication-Results), xmllint (DMARC report schema), PyYAML (the SPF test suite), npm.
command -v dkimverify >/dev/null 2>&1 || missing+=(python3-dkim)
/usr/bin/python3 -c 'import authheaders' >/dev/null 2>&1 || missing+=(python3-authheaders)
command -v xmllint >/dev/null 2>&1 || missing+=(libxml2-utils)
/usr/bin/python3 -c 'import yaml' >/dev/null 2>&1 || missing+=(python3-yaml)
command -v npm >/dev/null 2>&1 || missing+=(npm)
# IMAP interop (tests/imap_*.rs): isync's mbsync, and Dovecot's IMAP server for the
# differential test (its own config on a loopback port; the system service is never started).
command -v mbsync >/dev/null 2>&1 || missing+=(isync)
# The cluster tests (tests/cluster_*.rs) start their own Redis and PostgreSQL on loopback
# ports with data in temporary directories (tests/common/services.rs); the system services
# are never started.
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server redis-tools)
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing+=(postgresql postgresql-client)
# interimap: the QRESYNC sync client of tests/imap_sync.rs.
command -v interimap >/dev/null 2>&1 || missing+=(interimap)
[ -x /usr/lib/dovecot/imap ] || missing+=(dovecot-core dovecot-imapd)
# Web mail in a real browser (tests/web_browser.rs): Debian's Chromium, driven by npm
# playwright-core (tests/tools.sh) with executablePath /usr/bin/chromium.
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
# OpenPGP and S/MIME interop (tests/mailcrypt_*.rs): GnuPG's gpg, gpgsm and gpg-wks-client,
# Sequoia's sq and sqop (v6 keys, which Debian 12's gpg lacks), and openssl's cms tool.
command -v gpg >/dev/null 2>&1 || missing+=(gnupg)
command -v gpgsm >/dev/null 2>&1 || missing+=(gpgsm)
[ -x /usr/lib/gnupg/gpg-wks-client ] || command -v gpg-wks-client >/dev/null 2>&1 || missing+=(gpg-wks-client)
command -v sq >/dev/null 2>&1 || missing+=(sq)
command -v sqop >/dev/null 2>&1 || missing+=(sqop)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if ((${#missing[@]} > 0)); then
    if [ "$(id -u)" -ne 0 ]; then
        echo "tests/run.sh: missing ${missing[*]}; install them (apt-get needs root)" >&2
        exit 1
    fi
    echo "tests/run.sh: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    # Postfix's installer asks how to configure the system's mail: "No configuration" (the
    # tests only run its smtp-sink and private instances).
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    apt-get update
    # Packages with daemons (dovecot-core) must not start their system service: the tests
    # run private instances on loopback ports. policy-rc.d (exit 101) forbids the start.
    policy_rc=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        policy_rc=/usr/sbin/policy-rc.d
    fi
    apt-get install -y --no-install-recommends "${missing[@]}"
    [ -z "$policy_rc" ] || rm -f "$policy_rc"
fi

# imapclient (PyPI; no Debian package) for the IMAP IDLE tests, for the python3 on PATH that
# the tests run.
python3 -c 'import imapclient' >/dev/null 2>&1 ||
    python3 -m pip install --quiet --break-system-packages imapclient==4.1.0

# npm mailauth, playwright-core and axe-core, and the RFC 7208 test suite (pinned; outside
# the repository).
bash tests/tools.sh

# No incremental state for a one-off build of every target: it doubled the debug target dir
# (about 14 GB of it) and a CI machine's disk is not ours to size.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
cargo build --all-targets
cargo test --all-targets --no-fail-fast "$@"
cargo test -p loadgen --no-fail-fast "$@"

# The Debian package: built (release), installed with apt-get, its config checked and served
# (root on Debian only; it says SKIPPED elsewhere). Installs cargo-deb 3.8.0 when missing.
# Built with the package-check profile (Cargo.toml says why); RELAY_DEB_PROFILE=release to
# check the shipped build.
RELAY_DEB_PROFILE="${RELAY_DEB_PROFILE:-package-check}" bash tests/package.sh

# Fuzz targets (MIME parser and decoders, SMTP server session) run briefly so regressions show; their seed corpora
# also run as unit tests above. cargo-fuzz needs nightly features: fuzz/run.sh enables them
# on the stable toolchain with RUSTC_BOOTSTRAP=1.
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
bash fuzz/run.sh "${RELAY_FUZZ_SECONDS:-10}"

# The container image: built and run only where a container engine answers.
bash tests/container.sh
