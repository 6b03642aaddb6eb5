#!/usr/bin/env bash
# Test tools that come from the npm registry and PyPI rather than Debian, pinned, installed
# under $RELAY_TEST_TOOLS (default /var/tmp/relay-test-tools; never inside the repository):
#   node_modules/.bin/mailauth   npm `mailauth` (DKIM sign/verify, another implementation)
#   node_modules/playwright-core npm `playwright-core` (drives Debian's chromium; tests/web_browser.rs)
#   node_modules/axe-core        npm `axe-core` (accessibility checks in that browser)
#   node_modules/openpgp         npm `openpgp` (OpenPGP.js: v6 keys; tests/mailcrypt_openpgp.rs)
#   rfc7208-tests.yml            the SPF council's RFC 7208 test suite, from pyspf's sdist
# Idempotent: what is already there is kept. tests/run.sh calls it; so can a developer.
set -euo pipefail
dir="${RELAY_TEST_TOOLS:-/var/tmp/relay-test-tools}"
mkdir -p "$dir"

# 4.13.3: the newest mailauth that runs on Node.js 20 (5.x needs Node.js 22).
if [ ! -x "$dir/node_modules/.bin/mailauth" ]; then
    npm install --prefix "$dir" --no-audit --no-fund --silent mailauth@4.13.3
fi

# The browser tests' drivers (tests/browser/). Neither has dependencies of its own, so the exact
# versions pin everything. playwright-core 1.65.2 needs Node.js >= 20 and never downloads a
# browser (the tests launch /usr/bin/chromium); axe-core 4.14.1 runs inside the page.
npm_pinned() {
    local name="$1" version="$2"
    local have
    have="$(node -p "require('$dir/node_modules/$name/package.json').version" 2>/dev/null || true)"
    if [ "$have" != "$version" ]; then
        npm install --prefix "$dir" --no-audit --no-fund --silent --save-exact "$name@$version"
    fi
}
npm_pinned playwright-core 1.65.2
npm_pinned axe-core 4.14.1
# OpenPGP.js 6.3.2, the newest 6.x (Node.js >= 18, no dependencies): the only installed
# implementation that makes and reads RFC 9580 v6 keys (sequoia 1.12 and GnuPG 2.2 do not).
npm_pinned openpgp 6.3.2

if [ ! -f "$dir/rfc7208-tests.yml" ]; then
    tmp="$(mktemp -d)"
    python3 -m pip download --quiet --no-deps --no-binary :all: -d "$tmp" pyspf==2.0.14
    tar -xzf "$tmp/pyspf-2.0.14.tar.gz" -C "$tmp" pyspf-2.0.14/test/rfc7208-tests.yml
    mv "$tmp/pyspf-2.0.14/test/rfc7208-tests.yml" "$dir/rfc7208-tests.yml"
    rm -rf "$tmp"
fi
