#!/usr/bin/env bash
# Builds the Debian package: the release binaries (relay, loadgen), the man pages and shell
# completions rendered by the built relay from its clap definitions (`relay generate`), then
# `cargo deb --no-build` ([package.metadata.deb] in Cargo.toml). Prints the .deb's path last.
#
#   bash packaging/build-deb.sh            # profile release, into $CARGO_TARGET_DIR/debian
#   RELAY_DEB_PROFILE=NAME bash packaging/build-deb.sh   # another release-like profile
#
# Needs cargo-deb: `cargo install cargo-deb --version 3.8.0 --locked` (tests/run.sh does it).
set -euo pipefail
cd "$(dirname "$0")/.."

profile=${RELAY_DEB_PROFILE:-release}
target_dir=${CARGO_TARGET_DIR:-$PWD/target}
out="$target_dir/$profile"

cargo build --locked --profile "$profile" -p relay -p loadgen --bins >&2

# Generated assets live beside the binaries: cargo-deb maps the assets' `target/release/`
# prefix to this directory.
gen="$out/packaging"
rm -rf "$gen"
mkdir -p "$gen/man" "$gen/completions"
"$out/relay" generate man "$gen/man" >/dev/null
gzip -9n "$gen"/man/*.1
"$out/relay" generate completions bash >"$gen/completions/relay"
"$out/relay" generate completions zsh >"$gen/completions/_relay"
"$out/relay" generate completions fish >"$gen/completions/relay.fish"

mkdir -p "$target_dir/debian"
cargo deb --no-build --profile "$profile" -p relay --output "$target_dir/debian" >&2
ls -t "$target_dir"/debian/relay_*.deb | head -n 1
